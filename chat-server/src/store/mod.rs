//! The message store: users, rooms and history, behind one interface with
//! two backends.
//!
//! - [`sqlite`]: one file, zero setup, the default for a single box.
//! - [`postgres`]: a PostgreSQL server, so that nodes on several hosts share
//!   one truth.
//!
//! Both keep the same promises, and the rest of the server relies on them:
//! - `seq` is allocated inside the storing transaction, so a room is
//!   numbered 1, 2, 3, … with no holes even with many writers;
//! - an [`Store::append`] returns only after its transaction committed
//!   (acks never run ahead of durability);
//! - many writes queued together share one transaction (group commit);
//! - every commit that stored messages or deleted a room is announced on the
//!   [`CommitFeed`] handed out by [`open`], in commit order, after the
//!   commit. Delivery reads that feed, so members never see a message that
//!   is not stored and never see a room's messages reordered.
//!
//! [`StoreError`] says nothing of either database: callers map it to a
//! protocol error, and the backend logs the details.

mod jobs;
pub mod postgres;
pub mod sqlite;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chat_proto::MessageRecord;
use tokio::sync::mpsc;

/// Committed batches waiting for delivery before the store's writer waits:
/// a delivery backlog slows acks down instead of growing without bound.
pub const COMMIT_QUEUE: usize = 64;

/// A room's id in the store. Never reused, so it tells a room from a later
/// one that took its name after a deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoomId(pub i64);

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One connection to this server process, from login to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which room, and how far its messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomHead {
    pub id: RoomId,
    /// Newest `seq` stored (0: no messages yet).
    pub last_seq: u64,
    /// The room's change counter: edits, deletions and reactions so far.
    pub rev: u64,
    /// Only its members (the account rooms that hold it) may see it.
    pub private: bool,
}

/// Where and when a message was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
}

impl RoomHead {
    /// Where the room's newest event stands.
    pub fn position(&self) -> Position {
        Position {
            seq: self.last_seq,
            rev: self.rev,
        }
    }
}

/// Where an event stands in its room: the room's newest `seq` and `rev`
/// once it was stored. A message moves `seq` by one, a change `rev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub seq: u64,
    pub rev: u64,
}

impl Position {
    /// The event's number in its room: 1, 2, 3, … over messages and changes
    /// together, with no holes.
    pub fn index(self) -> u64 {
        self.seq + self.rev
    }
}

/// What an edit, deletion or reaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    /// The room's change counter after it.
    pub rev: u64,
    /// When it was stored, milliseconds (an edit's `edited_ts`).
    pub ts: i64,
    /// For a reaction: on (added) or off (taken back).
    pub on: bool,
}

/// A change to a stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Edit { text: String },
    Delete,
    React { emoji: String },
}

/// Where a search looks, and from where.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// Lowercased words, each matched as a word prefix; all must match.
    pub words: Vec<String>,
    /// Only this room (the caller checked the user may read it).
    pub room: Option<RoomId>,
    /// Rooms the user may read: every public one and these private ones.
    pub viewer: String,
    /// Only messages older than this cursor (from an earlier page).
    pub before: Option<i64>,
    pub limit: usize,
}

/// A page of search results, newest first, and the cursor of the next page.
#[derive(Debug, Clone, Default)]
pub struct SearchPage {
    pub messages: Vec<MessageRecord>,
    pub next: Option<i64>,
}

/// Most distinct reactions one message can carry (Slack's limit too): a
/// message cannot be made to grow without bound.
pub const MAX_REACTIONS_PER_MESSAGE: usize = 50;

/// What can go wrong in the store, in the chat's words. The backends log the
/// database's own error before turning it into [`StoreError::Unavailable`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("no such room")]
    NoSuchRoom,
    #[error("user already exists")]
    UserExists,
    #[error("no such user")]
    NoSuchUser,
    /// No message of that seq, or it was deleted.
    #[error("no such message")]
    NoSuchMessage,
    /// Only the author (or, to delete, an admin) may change a message.
    #[error("not the author of the message")]
    NotAuthor,
    /// The message carries [`MAX_REACTIONS_PER_MESSAGE`] different ones.
    #[error("too many different reactions on the message")]
    TooManyReactions,
    #[error("the target database is not empty")]
    NotEmpty,
    /// The database could not be reached or refused the operation; the
    /// operation did not happen (or, for a write, its outcome is unknown
    /// and it was not acknowledged).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database could not be opened or set up at start.
    #[error("{0}")]
    Open(String),
    #[error("the store has shut down")]
    Closed,
}

/// A user account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub admin: bool,
    /// Milliseconds since the Unix epoch.
    pub created: i64,
}

/// A room as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecord {
    pub id: RoomId,
    pub name: String,
    pub last_seq: u64,
    pub private: bool,
    /// Time of the newest message (or of creation), milliseconds.
    pub last_activity: i64,
    /// The room's change counter (kept by `migrate-db`, so that clients
    /// resuming with `since_rev` stay right).
    pub rev: u64,
}

/// One of an account's rooms: joined from some device and not forgotten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRoomRecord {
    pub room_id: RoomId,
    pub name: String,
    pub last_seq: u64,
    /// The user's read marker, at most `last_seq`.
    pub read: u64,
    pub private: bool,
}

/// One account-room row as `migrate-db` copies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRoomRow {
    pub user: String,
    pub room: String,
    pub read: u64,
}

/// One page of history, ascending.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub messages: Vec<MessageRecord>,
    pub has_more: bool,
}

/// One event of a room as a commit stored it (or a gap fill read it back).
#[derive(Debug, Clone)]
pub struct Stored {
    pub room_id: RoomId,
    /// The room's name.
    pub room: String,
    /// Where it stands in the room.
    pub at: Position,
    pub event: RoomEvent,
    /// The session that asked for this change, which gets its copy as the
    /// answer (with its request's `id`). Local to the node that stored it:
    /// never published, never read back.
    pub answer: Option<Answer>,
}

/// Who is waiting for a change to be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub session: SessionId,
    /// The request's `id`, echoed as `re`.
    pub re: Option<String>,
}

/// What happened in a room: a new message, or a change to one. (Also the
/// form in which nodes of a cluster pass changes to each other.)
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RoomEvent {
    Message(MessageRecord),
    Edited {
        seq: u64,
        text: String,
        edited_ts: i64,
    },
    Deleted {
        seq: u64,
    },
    Reaction {
        seq: u64,
        user: String,
        emoji: String,
        on: bool,
    },
}

impl Stored {
    /// The event as members receive it.
    pub fn to_server_event(&self) -> chat_proto::ServerEvent {
        use chat_proto::ServerEvent;
        let room = self.room.clone();
        let rev = self.at.rev;
        match &self.event {
            RoomEvent::Message(message) => ServerEvent::Message(message.clone()),
            RoomEvent::Edited {
                seq,
                text,
                edited_ts,
            } => ServerEvent::Edited {
                room,
                seq: *seq,
                text: text.clone(),
                edited_ts: *edited_ts,
                rev,
                re: None,
            },
            RoomEvent::Deleted { seq } => ServerEvent::Deleted {
                room,
                seq: *seq,
                rev,
                re: None,
            },
            RoomEvent::Reaction {
                seq,
                user,
                emoji,
                on,
            } => ServerEvent::Reaction {
                room,
                seq: *seq,
                user: user.clone(),
                emoji: emoji.clone(),
                on: *on,
                rev,
                re: None,
            },
        }
    }
}

/// One committed transaction's effects, as announced on the feed.
#[derive(Debug)]
pub enum Commit {
    /// Messages and changes just made durable, in order per room.
    Events(Vec<Stored>),
    /// A room was just deleted; `requested_by` is the session that asked
    /// (answered directly, so not told again).
    RoomDeleted {
        name: String,
        id: RoomId,
        requested_by: SessionId,
    },
}

/// The stream of commits, in commit order. Whoever opened the store owns
/// it; dropping it is fine (the admin commands do).
pub type CommitFeed = mpsc::Receiver<Commit>;

/// Every operation of the store. Both backends implement all of it.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // ---- Users. ----

    /// Looks a user up by name.
    async fn find_user(&self, name: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Adds a user; `UserExists` when the name is taken.
    async fn create_user(
        &self,
        name: &str,
        password_hash: &str,
        admin: bool,
    ) -> Result<(), StoreError>;
    /// Replaces a user's password hash; `NoSuchUser` when absent.
    async fn set_password(&self, name: &str, password_hash: &str) -> Result<(), StoreError>;
    /// Removes an account (their messages stay); `NoSuchUser` when absent.
    async fn delete_user(&self, name: &str) -> Result<(), StoreError>;
    /// Every user, by name.
    async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError>;
    /// Number of accounts.
    async fn count_users(&self) -> Result<u64, StoreError>;
    /// A number that grows whenever an account's password or admin flag
    /// changes or an account is deleted, by any process. Cheap: polled.
    async fn account_version(&self) -> Result<u64, StoreError>;

    // ---- Rooms. ----

    /// The room's head, creating the room when it does not exist.
    async fn open_room(&self, name: &str) -> Result<RoomHead, StoreError>;
    /// The room's head, or `None` when it does not exist.
    async fn room(&self, name: &str) -> Result<Option<RoomHead>, StoreError>;
    /// Rooms in name order (bytewise), those after `after`, at most
    /// `limit`. With `viewer`, only the rooms that user may see: every
    /// public room, and the private ones among the user's account rooms.
    async fn list_rooms(
        &self,
        after: Option<&str>,
        limit: usize,
        viewer: Option<&str>,
    ) -> Result<Vec<RoomRecord>, StoreError>;
    /// Creates the private room `name` with `members` (the account rooms of
    /// each), in one transaction. `None` when a room of that name exists
    /// (nothing is changed then).
    async fn create_private_room(
        &self,
        name: &str,
        members: &[&str],
    ) -> Result<Option<RoomHead>, StoreError>;
    /// Number of rooms.
    async fn count_rooms(&self) -> Result<u64, StoreError>;
    /// Deletes a room and its history; `NoSuchRoom` when absent. The feed
    /// announces it, in commit order with messages.
    async fn delete_room(&self, name: &str, requested_by: SessionId) -> Result<RoomId, StoreError>;

    // ---- The account's rooms and read markers. ----

    /// The rooms `user` joined and did not forget, by name, with their read
    /// markers. Deleted rooms and deleted accounts have none.
    async fn account_rooms(&self, user: &str) -> Result<Vec<AccountRoomRecord>, StoreError>;
    /// Adds `room` to the rooms of `user` (nothing when it is there). For a
    /// private room this makes the user a member.
    async fn remember_room(&self, user: &str, room: RoomId) -> Result<(), StoreError>;
    /// Whether `room` is one of the rooms of `user` (for a private room:
    /// whether the user is a member).
    async fn is_member(&self, user: &str, room: RoomId) -> Result<bool, StoreError>;
    /// Removes `room` from the rooms of `user`, read marker included.
    async fn forget_room(&self, user: &str, room: RoomId) -> Result<(), StoreError>;
    /// Moves the read marker of `user` in `room` forward to `seq`, capped at
    /// the room's newest `seq` (and adds the room to the account's rooms).
    /// Returns the new marker when it moved; `None` when it was already
    /// there or past it. `NoSuchRoom` when the room is gone.
    async fn mark_read(
        &self,
        user: &str,
        room: RoomId,
        seq: u64,
    ) -> Result<Option<u64>, StoreError>;

    // ---- Messages. ----

    /// Stores a message in the room `room` (by id: a send for a deleted
    /// room must not land in a new room of the same name). Returns once
    /// committed; `NoSuchRoom` when the room is gone. The write is
    /// queued, without waiting, the first time the future is polled, so
    /// appends first polled in order (a session's pipelined sends) get
    /// increasing seqs. When the outcome is unknown (the database stopped
    /// answering mid-commit) the error is `Unavailable` and the message may
    /// still be in history; delivery then finds it through `range`.
    /// `reply_to`, when given, must be a message of the room that is not
    /// deleted (`NoSuchMessage` otherwise).
    async fn append(
        &self,
        room: RoomId,
        user: &str,
        text: &str,
        reply_to: Option<u64>,
    ) -> Result<Appended, StoreError>;
    /// Applies `change` by `user` to message `seq` of room `room`, as one
    /// more step of the room's `rev`, queued and committed like
    /// [`Store::append`] (and announced on the feed in order with
    /// messages). Refusals: `NoSuchMessage` (unknown or deleted),
    /// `NotAuthor` (an edit by another user, or a deletion by someone who
    /// is neither the author nor `admin`), `TooManyReactions`, `NoSuchRoom`.
    async fn change(
        &self,
        room: RoomId,
        seq: u64,
        user: &str,
        admin: bool,
        change: Change,
        answer: Option<Answer>,
    ) -> Result<Changed, StoreError>;
    /// The current state of the messages of room `room` (named `name`)
    /// with `after_seq < seq <= upto_seq` changed after `after_rev`,
    /// ascending, at most `limit`; and the room's `rev` read with them.
    async fn changed_since(
        &self,
        room: RoomId,
        name: &str,
        after_rev: u64,
        after_seq: u64,
        upto_seq: u64,
        limit: usize,
    ) -> Result<(Vec<MessageRecord>, u64), StoreError>;
    /// Events of room `room` (named `name`) after position `after`, in
    /// order, up to event index `upto` (at most `limit`): what a gap fill
    /// delivers. Messages come in their current state.
    async fn events(
        &self,
        room: RoomId,
        name: &str,
        after: Position,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError>;
    /// Messages matching every word, newest first; deleted ones never.
    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError>;
    /// Up to `limit` messages of the room named `name` with `seq < before`
    /// (the newest when `before` is `None`), ascending. `NoSuchRoom` for an
    /// unknown room.
    async fn history(
        &self,
        name: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, StoreError>;
    /// Messages of room `room` (named `name`) with `after < seq <= upto`,
    /// ascending, at most `limit`. A deleted room has none.
    async fn range(
        &self,
        room: RoomId,
        name: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, StoreError>;

    // ---- Copying a whole store (`migrate-db`). ----

    /// True when there are no users and no rooms.
    async fn is_empty(&self) -> Result<bool, StoreError>;
    /// Adds a user exactly as given (hash, admin flag and creation time).
    async fn import_user(&self, user: &UserRecord) -> Result<(), StoreError>;
    /// Adds a room with its counters as given; returns its new id.
    async fn import_room(&self, room: &RoomRecord) -> Result<RoomId, StoreError>;
    /// Adds messages (seq and ts kept) to an imported room, in one
    /// transaction. They never reach the commit feed.
    async fn import_messages(
        &self,
        room: RoomId,
        messages: &[MessageRecord],
    ) -> Result<(), StoreError>;

    /// Every account-room row, by user then room (for `migrate-db`).
    async fn all_account_rooms(&self) -> Result<Vec<AccountRoomRow>, StoreError>;
    /// Adds an account-room row as given (for `migrate-db`).
    async fn import_account_room(
        &self,
        user: &str,
        room: RoomId,
        read: u64,
    ) -> Result<(), StoreError>;

    /// Finishes every queued write, then stops. Later calls get `Closed`
    /// (reads too).
    async fn close(&self);
}

/// How hard a commit works before a send is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Durability {
    /// An acknowledged message survives a power cut (the default: acked
    /// means durably stored).
    #[default]
    Full,
    /// An acknowledged message survives a crash of the server, but a power
    /// cut may lose the newest ones (SQLite `synchronous=NORMAL`,
    /// PostgreSQL `synchronous_commit=off`). Faster on slow disks.
    Relaxed,
}

/// Where the data lives, from `--db` / `CHAT_DB`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A `postgres://` or `postgresql://` URL.
    Postgres(String),
}

impl Database {
    /// Reads a `--db` value: a URL of a supported scheme, or a file path.
    /// A string that looks like a URL of another scheme is refused rather
    /// than taken for a file name.
    pub fn parse(value: &str) -> Result<Database, StoreError> {
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            return Ok(Database::Postgres(value.to_owned()));
        }
        if let Some((scheme, _)) = value.split_once("://") {
            if !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            {
                return Err(StoreError::Open(format!(
                    "unsupported database URL scheme {scheme:?}: use a file path or postgres://"
                )));
            }
        }
        Ok(Database::Sqlite(PathBuf::from(value)))
    }
}

impl fmt::Display for Database {
    /// The path, or the URL without its password: safe for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => f.write_str(&postgres::redact(url)),
        }
    }
}

/// Opens the store (creating and upgrading its schema as needed) and hands
/// out its commit feed.
pub async fn open(
    db: &Database,
    durability: Durability,
) -> Result<(Arc<dyn Store>, CommitFeed), StoreError> {
    let (feed_tx, feed) = mpsc::channel(COMMIT_QUEUE);
    let store: Arc<dyn Store> = match db {
        Database::Sqlite(path) => Arc::new(sqlite::SqliteStore::open(path, durability, feed_tx)?),
        Database::Postgres(url) => {
            Arc::new(postgres::PostgresStore::open_with(url, durability, feed_tx).await?)
        }
    };
    Ok((store, feed))
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The history page rule shared by both backends: given the room's newest
/// `seq`, which range `first..=last` holds the page before `before`.
/// `None` when the page is empty (then `has_more` is `last > 0`).
pub fn page_range(last_seq: u64, before: Option<u64>, limit: usize) -> (u64, Option<u64>) {
    let mut last = last_seq;
    if let Some(before) = before {
        last = last.min(before.saturating_sub(1));
    }
    if last == 0 || limit == 0 {
        return (last, None);
    }
    // seq has no holes, so the page is a plain range.
    (last, Some(last.saturating_sub(limit as u64 - 1).max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_db_values() {
        assert_eq!(
            Database::parse("/var/lib/chat.db").unwrap(),
            Database::Sqlite("/var/lib/chat.db".into())
        );
        assert_eq!(
            Database::parse("chat.db").unwrap(),
            Database::Sqlite("chat.db".into())
        );
        assert!(matches!(
            Database::parse("postgres://u@h/db").unwrap(),
            Database::Postgres(_)
        ));
        assert!(matches!(
            Database::parse("postgresql://u@h/db").unwrap(),
            Database::Postgres(_)
        ));
        assert!(Database::parse("mysql://u@h/db").is_err());
    }

    #[test]
    fn pages_are_ranges() {
        assert_eq!(page_range(0, None, 50), (0, None));
        assert_eq!(page_range(120, None, 50), (120, Some(71)));
        assert_eq!(page_range(120, Some(71), 50), (70, Some(21)));
        assert_eq!(page_range(120, Some(21), 50), (20, Some(1)));
        assert_eq!(page_range(120, Some(1), 50), (0, None));
    }
}
