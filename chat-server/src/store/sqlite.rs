//! The SQLite backend: users, rooms and history in one file, zero setup.
//!
//! Every write that a client waits for goes through one writer thread that
//! batches whatever is queued into a single transaction (group commit):
//! under load, hundreds of sends share one fsync. A send is answered only
//! after its transaction committed. Right after each commit the writer puts
//! the stored messages (and deletions), in commit order, on the commit feed.
//!
//! Reads (history pages, backlogs, logins) run on a small pool of read-only
//! connections on tokio's blocking threads; WAL mode lets them proceed while
//! the writer commits. Rare writes (account changes from the admin
//! commands, `migrate-db` imports) take a connection of their own: SQLite's
//! lock orders them with the writer.
//!
//! `seq` is allocated inside the storing transaction from `rooms.last_seq`,
//! and write transactions start with `BEGIN IMMEDIATE`, so several server
//! processes sharing the file (the one-host cluster) still number a room
//! 1, 2, 3, … with no holes.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use async_trait::async_trait;
use chat_proto::MessageRecord;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use rusqlite_migration::{Migrations, M};
use tokio::sync::{mpsc as async_mpsc, oneshot};

use super::jobs::{answer, Outcome, WriteJob};
use super::{
    now_ms, page_range, AccountRoomRecord, AccountRoomRow, Answer, Appended, Change, Changed,
    Commit, Durability, HistoryPage, Position, RoomEvent, RoomHead, RoomId, RoomRecord, SearchPage,
    SearchQuery, SessionId, Store, StoreError, Stored, UserRecord, MAX_REACTIONS_PER_MESSAGE,
};

/// Most jobs folded into one transaction.
const MAX_BATCH: usize = 1024;
/// How long a write waits for another process holding the database lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Read connections kept open for reuse.
const READ_POOL: usize = 8;

/// A database error, logged here and reported in the chat's words.
fn unavailable(err: impl std::fmt::Display) -> StoreError {
    tracing::error!(error = %err, "sqlite error");
    StoreError::Unavailable(err.to_string())
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> StoreError {
        unavailable(err)
    }
}

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(
            "CREATE TABLE users (
             id INTEGER PRIMARY KEY,
             name TEXT NOT NULL UNIQUE,
             password_hash TEXT NOT NULL,
             admin INTEGER NOT NULL DEFAULT 0,
             created_at INTEGER NOT NULL
         );
         CREATE TABLE rooms (
             id INTEGER PRIMARY KEY,
             name TEXT NOT NULL UNIQUE,
             last_seq INTEGER NOT NULL DEFAULT 0,
             last_activity INTEGER NOT NULL
         );
         -- Clustered on (room_id, seq): a history page is one range scan,
         -- whatever the size of the table.
         CREATE TABLE messages (
             room_id INTEGER NOT NULL,
             seq INTEGER NOT NULL,
             user TEXT NOT NULL,
             text TEXT NOT NULL,
             ts INTEGER NOT NULL,
             PRIMARY KEY (room_id, seq)
         ) WITHOUT ROWID;",
        ),
        // Room ids must never be reused: a deleted room's id could otherwise
        // come back for a new room of the same name, and delivery would
        // mistake one for the other.
        M::up(
            "CREATE TABLE rooms_v2 (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 name TEXT NOT NULL UNIQUE,
                 last_seq INTEGER NOT NULL DEFAULT 0,
                 last_activity INTEGER NOT NULL
             );
             INSERT INTO rooms_v2 (id, name, last_seq, last_activity)
                 SELECT id, name, last_seq, last_activity FROM rooms;
             DROP TABLE rooms;
             ALTER TABLE rooms_v2 RENAME TO rooms;",
        ),
        // A counter of account changes (password, admin flag, deletion),
        // kept by triggers so that every writer bumps it, including the
        // admin commands of another process: servers poll it to act on
        // live sessions.
        M::up(
            "CREATE TABLE account_changes (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 version INTEGER NOT NULL
             );
             INSERT INTO account_changes (id, version) VALUES (1, 0);
             CREATE TRIGGER users_updated AFTER UPDATE ON users BEGIN
                 UPDATE account_changes SET version = version + 1 WHERE id = 1;
             END;
             CREATE TRIGGER users_deleted AFTER DELETE ON users BEGIN
                 UPDATE account_changes SET version = version + 1 WHERE id = 1;
             END;",
        ),
        // The account's rooms and read markers (protocol part 2). Rows go
        // with their room or account, by triggers: every writer (the
        // server, the admin commands) deletes through them.
        M::up(
            "CREATE TABLE account_rooms (
                 user TEXT NOT NULL,
                 room_id INTEGER NOT NULL,
                 read_seq INTEGER NOT NULL DEFAULT 0,
                 PRIMARY KEY (user, room_id)
             ) WITHOUT ROWID;
             CREATE INDEX account_rooms_by_room ON account_rooms (room_id);
             CREATE TRIGGER rooms_deleted_from_accounts AFTER DELETE ON rooms BEGIN
                 DELETE FROM account_rooms WHERE room_id = OLD.id;
             END;
             CREATE TRIGGER users_deleted_from_rooms AFTER DELETE ON users BEGIN
                 DELETE FROM account_rooms WHERE user = OLD.name;
             END;",
        ),
        // Private rooms and direct messages: their members are the
        // accounts whose rooms hold them.
        M::up("ALTER TABLE rooms ADD COLUMN private INTEGER NOT NULL DEFAULT 0;"),
        // Messages that live (protocol part 2): edits, deletions,
        // reactions and replies, each change a step of the room's `rev`
        // logged in `room_changes` (what resume and gap fills read back);
        // and full-text search.
        //
        // `gid` numbers all messages in the order they were stored: the
        // search index's rowid, so that "newest first" is the index's own
        // order and a search stops after its page. Existing messages are
        // numbered by time and indexed here.
        //
        // The index is contentless (the text lives in `messages` only) with
        // `contentless_delete`, so an edit or deletion takes a message's
        // old words out of it by rowid. The `room` column holds `r<id>`, so
        // a search within one room is a lookup in the index too. Diacritics
        // are kept (`deplo` does not find `déploiement`), as PostgreSQL's
        // `simple` configuration keeps them: both backends find the same.
        // Every query word is a prefix: without an index of prefixes, FTS5
        // merges the lists of every word starting with it before it can
        // return the newest, which for a common word is most of the table
        // (87 ms at p99 over a million messages). With prefixes of 2 to 4
        // letters indexed, a search reads the newest entries of one list
        // and stops (p99 3 ms); longer words are rarer, and few words
        // share them. (Prefixes up to 6 letters searched no faster and
        // cost ingest 4% more.)
        M::up(
            "ALTER TABLE rooms ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE messages ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE messages ADD COLUMN reply_to INTEGER;
             ALTER TABLE messages ADD COLUMN edited_ts INTEGER;
             ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE messages ADD COLUMN gid INTEGER;
             UPDATE messages SET gid = numbered.n
                 FROM (SELECT room_id AS r, seq AS s,
                              row_number() OVER (ORDER BY ts, room_id, seq) AS n
                       FROM messages) AS numbered
                 WHERE messages.room_id = numbered.r AND messages.seq = numbered.s;
             CREATE UNIQUE INDEX messages_by_gid ON messages (gid);
             CREATE TABLE reactions (
                 room_id INTEGER NOT NULL,
                 seq INTEGER NOT NULL,
                 emoji TEXT NOT NULL,
                 user TEXT NOT NULL,
                 rev INTEGER NOT NULL,
                 PRIMARY KEY (room_id, seq, emoji, user)
             ) WITHOUT ROWID;
             CREATE TABLE room_changes (
                 room_id INTEGER NOT NULL,
                 rev INTEGER NOT NULL,
                 at_seq INTEGER NOT NULL,
                 seq INTEGER NOT NULL,
                 kind TEXT NOT NULL,
                 user TEXT NOT NULL,
                 text TEXT,
                 emoji TEXT,
                 on_ INTEGER,
                 ts INTEGER NOT NULL,
                 PRIMARY KEY (room_id, rev)
             ) WITHOUT ROWID;
             CREATE VIRTUAL TABLE messages_fts USING fts5(
                 text, room, content='', contentless_delete=1,
                 tokenize='unicode61 remove_diacritics 0',
                 prefix='2 3 4'
             );
             INSERT INTO messages_fts (rowid, text, room)
                 SELECT gid, text, 'r' || room_id FROM messages;
             -- The index holds every message up to `upto` (see
             -- `index_backlog`), but those on the backlog: changed since.
             CREATE TABLE search_indexed (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 upto INTEGER NOT NULL
             );
             INSERT INTO search_indexed (id, upto)
                 SELECT 1, COALESCE(MAX(gid), 0) FROM messages;
             CREATE TABLE search_backlog (gid INTEGER PRIMARY KEY);",
        ),
    ])
}

/// Opens (creating if needed) the database at `path`, upgrades its schema and
/// sets the connection up for writing.
fn open_writer(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let cannot = |what: &dyn std::fmt::Display| {
        StoreError::Open(format!("cannot open database {}: {what}", path.display()))
    };
    prepare_file(path)?;
    let mut conn = Connection::open(path).map_err(|e| cannot(&e))?;
    let setup = |conn: &mut Connection| -> Result<(), rusqlite::Error> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL syncs the WAL at every commit: an acknowledged message
        // survives a power cut, so its seq is never handed out twice. Group
        // commit pays for it (one sync per batch). NORMAL survives a crash
        // of the process (kill -9) but a power cut may undo the newest
        // commits.
        conn.pragma_update(
            None,
            "synchronous",
            match durability {
                Durability::Full => "FULL",
                Durability::Relaxed => "NORMAL",
            },
        )
    };
    setup(&mut conn).map_err(|e| cannot(&e))?;
    migrations()
        .to_latest(&mut conn)
        .map_err(|e| cannot(&format!("schema upgrade failed: {e}")))?;
    Ok(conn)
}

/// The file holds password hashes: its folder, when we create it, is the
/// owner's only (0700), and the file is created 0600 from its first byte
/// (an empty file is a valid new database). An existing file that others
/// can read is tightened, with a warning.
#[cfg(unix)]
fn prepare_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let fail = |what: &str, e: std::io::Error| {
        StoreError::Open(format!("cannot {what} {}: {e}", path.display()))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    StoreError::Open(format!(
                        "cannot create database folder {}: {e}",
                        dir.display()
                    ))
                })?;
        }
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(path)
                .map_err(|e| fail("read the permissions of", e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| fail("make private", e))?;
                tracing::warn!(
                    db = %path.display(),
                    was = format!("{:o}", mode & 0o777),
                    "the database was readable by other users; made it private (0600)"
                );
            }
            Ok(())
        }
        Err(e) => Err(fail("create", e)),
    }
}

#[cfg(not(unix))]
fn prepare_file(path: &Path) -> Result<(), StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Open(format!(
                "cannot create database folder {}: {e}",
                dir.display()
            ))
        })?;
    }
    Ok(())
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

fn user_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        name: row.get(0)?,
        password_hash: row.get(1)?,
        admin: row.get(2)?,
        created: row.get(3)?,
    })
}

fn find_user(conn: &Connection, name: &str) -> Result<Option<UserRecord>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT name, password_hash, admin, created_at FROM users WHERE name = ?1")?
        .query_row([name], user_from_row)
        .optional()?)
}

/// Adds a user; `UserExists` when the name is taken.
fn insert_user(conn: &Connection, user: &UserRecord) -> Result<(), StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO users (name, password_hash, admin, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO NOTHING",
        )?
        .execute(params![
            user.name,
            user.password_hash,
            user.admin,
            user.created
        ])?;
    if inserted == 0 {
        return Err(StoreError::UserExists);
    }
    Ok(())
}

fn room_head(conn: &Connection, name: &str) -> Result<Option<RoomHead>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT id, last_seq, private, rev FROM rooms WHERE name = ?1")?
        .query_row([name], |row| {
            Ok(RoomHead {
                id: RoomId(row.get(0)?),
                last_seq: row.get(1)?,
                private: row.get(2)?,
                rev: row.get(3)?,
            })
        })
        .optional()?)
}

/// The columns [`message_from_row`] reads, in its order.
const MESSAGE_COLUMNS: &str = "seq, user, text, ts, reply_to, edited_ts, deleted";

fn message_from_row(room: &str, row: &rusqlite::Row<'_>) -> rusqlite::Result<MessageRecord> {
    Ok(MessageRecord {
        room: room.to_owned(),
        seq: row.get(0)?,
        user: row.get(1)?,
        text: row.get(2)?,
        ts: row.get(3)?,
        reply_to: row.get(4)?,
        edited_ts: row.get(5)?,
        deleted: row.get(6)?,
        reactions: Default::default(),
    })
}

/// Fills in the reactions of `messages`, ascending by seq, of room `room`.
fn attach_reactions(
    conn: &Connection,
    room: RoomId,
    messages: &mut [MessageRecord],
) -> Result<(), StoreError> {
    let (Some(first), Some(last)) = (messages.first(), messages.last()) else {
        return Ok(());
    };
    let mut stmt = conn.prepare_cached(
        "SELECT seq, emoji, user FROM reactions
         WHERE room_id = ?1 AND seq >= ?2 AND seq <= ?3 ORDER BY seq, rev",
    )?;
    let mut rows = stmt.query(params![room.0, first.seq, last.seq])?;
    while let Some(row) = rows.next()? {
        let seq: u64 = row.get(0)?;
        if let Ok(at) = messages.binary_search_by_key(&seq, |m| m.seq) {
            let (emoji, user): (String, String) = (row.get(1)?, row.get(2)?);
            messages[at].reactions.set(&emoji, &user, true);
        }
    }
    Ok(())
}

/// One message of a room, in its current state.
fn read_message(
    conn: &Connection,
    name: &str,
    room: RoomId,
    seq: u64,
) -> Result<Option<MessageRecord>, StoreError> {
    let mut found = read_range(conn, name, room, seq, seq)?;
    Ok(found.pop())
}

fn read_range(
    conn: &Connection,
    name: &str,
    room: RoomId,
    first: u64,
    last: u64,
) -> Result<Vec<MessageRecord>, StoreError> {
    Ok(read_range_with_revs(conn, name, room, first, last)?
        .into_iter()
        .map(|(message, _)| message)
        .collect())
}

/// [`read_range`], each message with the room's `rev` when it was stored
/// (its position, for gap fills).
fn read_range_with_revs(
    conn: &Connection,
    name: &str,
    room: RoomId,
    first: u64,
    last: u64,
) -> Result<Vec<(MessageRecord, u64)>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS}, rev FROM messages
         WHERE room_id = ?1 AND seq >= ?2 AND seq <= ?3 ORDER BY seq"
    ))?;
    let rows = stmt.query_map(params![room.0, first, last], |row| {
        Ok((message_from_row(name, row)?, row.get::<_, u64>(7)?))
    })?;
    let (mut messages, revs): (Vec<MessageRecord>, Vec<u64>) =
        rows.collect::<Result<Vec<_>, _>>()?.into_iter().unzip();
    attach_reactions(conn, room, &mut messages)?;
    Ok(messages.into_iter().zip(revs).collect())
}

/// The events of a room after `after`, up to event index `upto`, at most
/// `limit`, in order: messages (in their current state) and logged
/// changes merged by position.
fn read_events(
    conn: &Connection,
    name: &str,
    room: RoomId,
    after: Position,
    upto: u64,
    limit: usize,
) -> Result<Vec<Stored>, StoreError> {
    let wanted = upto.saturating_sub(after.index()).min(limit as u64);
    if wanted == 0 {
        return Ok(Vec::new());
    }
    let messages = read_range_with_revs(conn, name, room, after.seq + 1, after.seq + wanted)?;
    let mut stmt = conn.prepare_cached(
        "SELECT rev, at_seq, seq, kind, user, text, emoji, on_, ts FROM room_changes
         WHERE room_id = ?1 AND rev > ?2 ORDER BY rev LIMIT ?3",
    )?;
    let changes = stmt.query_map(params![room.0, after.rev, wanted], |row| {
        let at = Position {
            seq: row.get(1)?,
            rev: row.get(0)?,
        };
        let seq: u64 = row.get(2)?;
        let kind: String = row.get(3)?;
        let event = match kind.as_str() {
            "edit" => RoomEvent::Edited {
                seq,
                text: row.get::<_, Option<String>>(5)?.unwrap_or_default(),
                edited_ts: row.get(8)?,
            },
            "delete" => RoomEvent::Deleted { seq },
            _ => RoomEvent::Reaction {
                seq,
                user: row.get(4)?,
                emoji: row.get::<_, Option<String>>(6)?.unwrap_or_default(),
                on: row.get::<_, Option<bool>>(7)?.unwrap_or(false),
            },
        };
        Ok((at, event))
    })?;
    let mut events: Vec<Stored> = Vec::new();
    for change in changes {
        let (at, event) = change?;
        events.push(Stored {
            room_id: room,
            room: name.to_owned(),
            at,
            event,
            answer: None,
        });
    }
    for (message, rev) in messages {
        events.push(Stored {
            room_id: room,
            room: name.to_owned(),
            at: Position {
                seq: message.seq,
                rev,
            },
            event: RoomEvent::Message(message),
            answer: None,
        });
    }
    events.sort_by_key(|e| e.at.index());
    events.retain(|e| e.at.index() <= upto);
    events.truncate(wanted as usize);
    Ok(events)
}

/// The FTS5 query for `words`: each a quoted prefix (the words are letters
/// and digits only, so nothing in them is FTS5 syntax), all required, in
/// the text column, and within one room when asked.
fn fts_query(words: &[String], room: Option<RoomId>) -> String {
    let terms: Vec<String> = words.iter().map(|w| format!("\"{w}\"*")).collect();
    let text = format!("text : ({})", terms.join(" AND "));
    match room {
        Some(room) => format!("room : \"r{}\" AND {text}", room.0),
        None => text,
    }
}

fn search(conn: &Connection, query: &SearchQuery) -> Result<SearchPage, StoreError> {
    if query.words.is_empty() || query.limit == 0 {
        return Ok(SearchPage::default());
    }
    // The index yields rowids (gids) newest first and SQLite stops after
    // the page; rooms the viewer may not read are skipped on the way.
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT m.gid, m.room_id, r.name, {columns}
         FROM messages_fts
         JOIN messages m ON m.gid = messages_fts.rowid
         JOIN rooms r ON r.id = m.room_id
         WHERE messages_fts MATCH ?1 AND messages_fts.rowid < ?2
           AND (NOT r.private OR EXISTS (
                SELECT 1 FROM account_rooms a WHERE a.user = ?3 AND a.room_id = r.id))
         ORDER BY messages_fts.rowid DESC LIMIT ?4",
        columns = MESSAGE_COLUMNS
            .split(", ")
            .map(|c| format!("m.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))?;
    let limit = query.limit + 1;
    let mut rows = stmt.query(params![
        fts_query(&query.words, query.room),
        query.before.unwrap_or(i64::MAX),
        query.viewer,
        limit as i64
    ])?;
    let mut found: Vec<(i64, RoomId, MessageRecord)> = Vec::new();
    while let Some(row) = rows.next()? {
        let name: String = row.get(2)?;
        let message = MessageRecord {
            room: name,
            seq: row.get(3)?,
            user: row.get(4)?,
            text: row.get(5)?,
            ts: row.get(6)?,
            reply_to: row.get(7)?,
            edited_ts: row.get(8)?,
            deleted: row.get(9)?,
            reactions: Default::default(),
        };
        found.push((row.get(0)?, RoomId(row.get(1)?), message));
    }
    let next = (found.len() > query.limit).then(|| found[query.limit - 1].0);
    found.truncate(query.limit);
    let mut messages = Vec::with_capacity(found.len());
    for (_, room, message) in found {
        let mut one = [message];
        attach_reactions(conn, room, &mut one)?;
        let [message] = one;
        messages.push(message);
    }
    Ok(SearchPage { messages, next })
}

// ---- The writer thread. ----

/// Adds a stored event to the batch's announcements, after whatever came
/// before it in the same transaction.
fn announce(commits: &mut Vec<Commit>, stored: Stored) {
    match commits.last_mut() {
        Some(Commit::Events(events)) => events.push(stored),
        _ => commits.push(Commit::Events(vec![stored])),
    }
}

/// The author of message `seq` of room `room`, unless it is unknown or
/// deleted.
fn live_author(tx: &Connection, room: RoomId, seq: u64) -> Result<Option<String>, StoreError> {
    Ok(tx
        .prepare_cached(
            "SELECT user FROM messages WHERE room_id = ?1 AND seq = ?2 AND NOT deleted",
        )?
        .query_row(params![room.0, seq], |row| row.get(0))
        .optional()?)
}

/// The newest message's `gid` (0: none). Written as a bare `MAX()`: only
/// that form is answered from the index's last entry; wrapped in another
/// expression, SQLite scans the whole table (ingest fell from 146k to 17k
/// messages a second).
fn last_gid(tx: &Connection) -> Result<i64, StoreError> {
    let last: Option<i64> = tx
        .prepare_cached("SELECT MAX(gid) FROM messages")?
        .query_row([], |row| row.get(0))?;
    Ok(last.unwrap_or(0))
}

/// A message the index holds changed (edited, deleted, or its room
/// deleted): it goes on the backlog, for the next [`index_backlog`] pass.
/// One the index does not hold yet needs nothing: that pass reads its text
/// as it is then.
fn mark_stale(tx: &Connection, gid: Option<i64>) -> Result<(), StoreError> {
    // (A message without a `gid` was written by hand, not by the server: it
    // is not in the index.)
    let Some(gid) = gid else {
        return Ok(());
    };
    tx.prepare_cached(
        "INSERT INTO search_backlog (gid)
         SELECT ?1 WHERE ?1 <= (SELECT upto FROM search_indexed WHERE id = 1)
         ON CONFLICT(gid) DO NOTHING",
    )?
    .execute([gid])?;
    Ok(())
}

/// Brings the search index up to date, in one transaction, for at most
/// `limit` changed messages and `limit` new ones, oldest first; returns how
/// many it took.
///
/// The index is updated in passes like this one, off the path of acks,
/// rather than in the transactions that store messages: FTS5 flushes its
/// pending entries to disk at every statement that writes to it and then
/// merges what it flushed, so indexing each message where it is stored cut
/// ingest several times over. New messages need no bookkeeping: they are
/// the ones past `search_indexed.upto`. `search` runs a pass first, so it
/// sees every message stored before it was asked.
fn index_backlog(conn: &mut Connection, limit: usize) -> Result<usize, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let limit = limit as i64;
    // Changed ones: out of the index one by one (FTS5 does not look the
    // rowids of an `IN (…)` up, it scans the whole index for them), then
    // back in with their text now, unless deleted.
    let stale: Vec<i64> = tx
        .prepare_cached("SELECT gid FROM search_backlog ORDER BY gid LIMIT ?1")?
        .query_map([limit], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    if let Some(&stale_upto) = stale.last() {
        let mut forget = tx.prepare_cached("DELETE FROM messages_fts WHERE rowid = ?1")?;
        for gid in &stale {
            forget.execute([gid])?;
        }
        drop(forget);
        // CROSS JOIN: the backlog must be the outer loop; left to itself
        // SQLite walks every message up to `stale_upto` by gid.
        tx.prepare_cached(
            "INSERT INTO messages_fts (rowid, text, room)
             SELECT m.gid, m.text, 'r' || m.room_id
             FROM search_backlog b CROSS JOIN messages m ON m.gid = b.gid
             WHERE b.gid <= ?1 AND NOT m.deleted",
        )?
        .execute([stale_upto])?;
        tx.prepare_cached("DELETE FROM search_backlog WHERE gid <= ?1")?
            .execute([stale_upto])?;
    }
    // New ones.
    let upto: i64 = tx
        .prepare_cached("SELECT upto FROM search_indexed WHERE id = 1")?
        .query_row([], |row| row.get(0))?;
    let newest = last_gid(&tx)?.min(upto + limit);
    if newest > upto {
        tx.prepare_cached(
            "INSERT INTO messages_fts (rowid, text, room)
             SELECT gid, text, 'r' || room_id FROM messages
             WHERE gid > ?1 AND gid <= ?2 AND NOT deleted",
        )?
        .execute([upto, newest])?;
        tx.prepare_cached("UPDATE search_indexed SET upto = ?1 WHERE id = 1")?
            .execute([newest])?;
    }
    tx.commit()?;
    Ok(stale.len().max((newest - upto).max(0) as usize))
}

/// Applies one change inside the batch's transaction: checks it, moves the
/// room's `rev`, updates the message (and the search index), logs it.
/// The inner error is a refusal of this job alone.
fn apply_change(
    tx: &Connection,
    room: RoomId,
    seq: u64,
    user: &str,
    admin: bool,
    change: &Change,
) -> Result<Result<(Stored, Changed), StoreError>, StoreError> {
    let Some(author) = live_author(tx, room, seq)? else {
        return Ok(Err(StoreError::NoSuchMessage));
    };
    let may = match change {
        Change::Edit { .. } => author == user,
        Change::Delete => author == user || admin,
        Change::React { .. } => true,
    };
    if !may {
        return Ok(Err(StoreError::NotAuthor));
    }
    let ts = now_ms();
    let mut on = false;
    if let Change::React { emoji } = change {
        let taken_back = tx
            .prepare_cached(
                "DELETE FROM reactions WHERE room_id = ?1 AND seq = ?2 AND emoji = ?3 AND user = ?4",
            )?
            .execute(params![room.0, seq, emoji, user])?;
        on = taken_back == 0;
        if on {
            let (kinds, this_kind): (usize, bool) = tx
                .prepare_cached(
                    "SELECT COUNT(DISTINCT emoji), COALESCE(MAX(emoji = ?3), 0) FROM reactions
                     WHERE room_id = ?1 AND seq = ?2",
                )?
                .query_row(params![room.0, seq, emoji], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
            if !this_kind && kinds >= MAX_REACTIONS_PER_MESSAGE {
                return Ok(Err(StoreError::TooManyReactions));
            }
        }
    }
    let moved: Option<(String, u64, u64)> = tx
        .prepare_cached(
            "UPDATE rooms SET rev = rev + 1 WHERE id = ?1 RETURNING name, last_seq, rev",
        )?
        .query_row([room.0], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .optional()?;
    let Some((name, at_seq, rev)) = moved else {
        return Ok(Err(StoreError::NoSuchRoom));
    };
    let gid: Option<i64> = tx
        .prepare_cached("SELECT gid FROM messages WHERE room_id = ?1 AND seq = ?2")?
        .query_row(params![room.0, seq], |row| row.get(0))?;
    let (kind, text, emoji, event) = match change {
        Change::Edit { text } => {
            tx.prepare_cached(
                "UPDATE messages SET text = ?3, edited_ts = ?4 WHERE room_id = ?1 AND seq = ?2",
            )?
            .execute(params![room.0, seq, text, ts])?;
            mark_stale(tx, gid)?;
            let event = RoomEvent::Edited {
                seq,
                text: text.clone(),
                edited_ts: ts,
            };
            ("edit", Some(text.as_str()), None, event)
        }
        Change::Delete => {
            // The text goes from storage, not only from answers.
            tx.prepare_cached(
                "UPDATE messages SET text = '', deleted = 1 WHERE room_id = ?1 AND seq = ?2",
            )?
            .execute(params![room.0, seq])?;
            tx.prepare_cached("DELETE FROM reactions WHERE room_id = ?1 AND seq = ?2")?
                .execute(params![room.0, seq])?;
            // Its earlier edits' texts go from the change log too (a gap
            // fill replays those edits empty, before the deletion).
            tx.prepare_cached(
                "UPDATE room_changes SET text = '' WHERE room_id = ?1 AND seq = ?2 AND kind = 'edit'",
            )?
            .execute(params![room.0, seq])?;
            mark_stale(tx, gid)?;
            ("delete", None, None, RoomEvent::Deleted { seq })
        }
        Change::React { emoji } => {
            if on {
                tx.prepare_cached(
                    "INSERT INTO reactions (room_id, seq, emoji, user, rev) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![room.0, seq, emoji, user, rev])?;
            }
            let event = RoomEvent::Reaction {
                seq,
                user: user.to_owned(),
                emoji: emoji.clone(),
                on,
            };
            ("react", None, Some(emoji.as_str()), event)
        }
    };
    tx.prepare_cached(
        "INSERT INTO room_changes (room_id, rev, at_seq, seq, kind, user, text, emoji, on_, ts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        room.0,
        rev,
        at_seq,
        seq,
        kind,
        user,
        text,
        emoji,
        matches!(change, Change::React { .. }).then_some(on),
        ts
    ])?;
    let stored = Stored {
        room_id: room,
        room: name,
        at: Position { seq: at_seq, rev },
        event,
        answer: None,
    };
    Ok(Ok((stored, Changed { rev, ts, on })))
}

/// Runs one job inside the batch's transaction. What it stored or deleted is
/// added to `commits`, announced only if the transaction commits.
/// `next_gid` is the `gid` the batch's next message takes, once known: read
/// once per transaction, not once per message.
fn run_job(
    tx: &rusqlite::Transaction<'_>,
    job: &WriteJob,
    commits: &mut Vec<Commit>,
    next_gid: &mut Option<i64>,
) -> Result<Outcome, StoreError> {
    match job {
        WriteJob::Append {
            room,
            user,
            text,
            reply_to,
            ..
        } => {
            if let Some(target) = reply_to {
                if live_author(tx, *room, *target)?.is_none() {
                    return Ok(Outcome::Refused(StoreError::NoSuchMessage));
                }
            }
            let ts = now_ms();
            let allocated: Option<(String, u64, u64)> = tx
                .prepare_cached(
                    "UPDATE rooms SET last_seq = last_seq + 1, last_activity = ?2
                     WHERE id = ?1 RETURNING name, last_seq, rev",
                )?
                .query_row(params![room.0, ts], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()?;
            let Some((name, seq, rev)) = allocated else {
                return Ok(Outcome::Refused(StoreError::NoSuchRoom));
            };
            let gid = match *next_gid {
                Some(gid) => gid,
                None => last_gid(tx)? + 1,
            };
            *next_gid = Some(gid + 1);
            tx.prepare_cached(
                "INSERT INTO messages (room_id, seq, user, text, ts, rev, reply_to, gid)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![room.0, seq, user, text, ts, rev, reply_to, gid])?;
            announce(
                commits,
                Stored {
                    room_id: *room,
                    room: name.clone(),
                    at: Position { seq, rev },
                    answer: None,
                    event: RoomEvent::Message(MessageRecord {
                        room: name,
                        seq,
                        user: user.clone(),
                        text: text.clone(),
                        ts,
                        reply_to: *reply_to,
                        ..Default::default()
                    }),
                },
            );
            Ok(Outcome::Appended(Appended { seq, ts }))
        }
        WriteJob::Change {
            room,
            seq,
            user,
            admin,
            change,
            answer,
            ..
        } => match apply_change(tx, *room, *seq, user, *admin, change)? {
            Ok((mut stored, changed)) => {
                stored.answer = answer.clone();
                announce(commits, stored);
                Ok(Outcome::Changed(changed))
            }
            Err(refusal) => Ok(Outcome::Refused(refusal)),
        },
        WriteJob::OpenRoom { name, .. } => {
            tx.prepare_cached(
                "INSERT INTO rooms (name, last_seq, last_activity) VALUES (?1, 0, ?2)
                 ON CONFLICT(name) DO NOTHING",
            )?
            .execute(params![name, now_ms()])?;
            match room_head(tx, name)? {
                Some(head) => Ok(Outcome::Opened(head)),
                None => Ok(Outcome::Refused(StoreError::NoSuchRoom)),
            }
        }
        WriteJob::DeleteRoom {
            name, requested_by, ..
        } => {
            let Some(head) = room_head(tx, name)? else {
                return Ok(Outcome::Refused(StoreError::NoSuchRoom));
            };
            // The index forgets them in its next pass.
            tx.execute(
                "INSERT INTO search_backlog (gid)
                 SELECT gid FROM messages
                 WHERE room_id = ?1 AND NOT deleted
                   AND gid <= (SELECT upto FROM search_indexed WHERE id = 1)
                 ON CONFLICT(gid) DO NOTHING",
                [head.id.0],
            )?;
            tx.execute("DELETE FROM reactions WHERE room_id = ?1", [head.id.0])?;
            tx.execute("DELETE FROM room_changes WHERE room_id = ?1", [head.id.0])?;
            tx.execute("DELETE FROM messages WHERE room_id = ?1", [head.id.0])?;
            tx.execute("DELETE FROM rooms WHERE id = ?1", [head.id.0])?;
            commits.push(Commit::RoomDeleted {
                name: name.clone(),
                id: head.id,
                requested_by: *requested_by,
            });
            Ok(Outcome::Deleted(head.id))
        }
        WriteJob::CreateUser { user, .. } => match insert_user(tx, user) {
            Err(StoreError::UserExists) => Ok(Outcome::Refused(StoreError::UserExists)),
            other => other.map(|()| Outcome::Done),
        },
    }
}

/// What a committed batch answers, and what it announces.
type BatchResult = (Vec<Result<Outcome, StoreError>>, Vec<Commit>);

/// Runs one batch in one transaction.
fn commit_batch(conn: &mut Connection, batch: &[WriteJob]) -> Result<BatchResult, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut commits = Vec::new();
    let mut next_gid = None;
    for job in batch {
        outcomes.push(Ok(run_job(&tx, job, &mut commits, &mut next_gid)?));
    }
    tx.commit()?;
    Ok((outcomes, commits))
}

/// What the writer thread is asked to do.
enum Work {
    /// A write a client waits for, batched with others.
    Job(WriteJob),
    /// A search is about to run: bring the index up to date, then answer.
    Index(oneshot::Sender<()>),
}

/// Messages indexed by one pass while writes are waiting, so a busy writer
/// pauses acks for a bounded time.
const INDEX_CHUNK: usize = 20_000;
/// Stored or changed messages after which an index pass runs even though
/// writes are waiting (otherwise: whenever the queue is empty).
const INDEX_EVERY: usize = 5_000;
/// How long the writer waits for work before indexing what another process
/// sharing the file left unindexed.
const INDEX_IDLE: Duration = Duration::from_millis(500);

/// One index pass (see [`index_backlog`]), logged when it fails: the
/// backlog stays for the next one.
fn run_index_pass(conn: &mut Connection, limit: usize) -> usize {
    match index_backlog(conn, limit) {
        Ok(taken) => taken,
        Err(err) => {
            tracing::error!(error = %err, "updating the search index failed; retrying later");
            0
        }
    }
}

fn writer_loop(mut conn: Connection, work: mpsc::Receiver<Work>, feed: async_mpsc::Sender<Commit>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut searches: Vec<oneshot::Sender<()>> = Vec::new();
    // Messages stored or changed since the last index pass (by this
    // process).
    let mut unindexed = 0;
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(first) => first,
            None => match work.recv_timeout(INDEX_IDLE) {
                Ok(first) => first,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    while run_index_pass(&mut conn, INDEX_CHUNK) == INDEX_CHUNK {}
                    unindexed = 0;
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
        };
        let mut item = Some(first);
        while let Some(taken) = item.take() {
            match taken {
                Work::Job(job) => batch.push(job),
                Work::Index(reply) => searches.push(reply),
            }
            if batch.len() < MAX_BATCH {
                item = work.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            unindexed += batch
                .iter()
                .filter(|job| matches!(job, WriteJob::Append { .. } | WriteJob::Change { .. }))
                .count();
            commit_and_answer(&mut conn, &mut batch, &feed);
        }
        if !searches.is_empty() {
            while run_index_pass(&mut conn, INDEX_CHUNK) == INDEX_CHUNK {}
            unindexed = 0;
            for search in searches.drain(..) {
                let _ = search.send(());
            }
            continue;
        }
        if unindexed == 0 {
            continue;
        }
        // Indexed when nothing is waiting, or when enough piled up.
        match work.try_recv() {
            Ok(item) => {
                next = Some(item);
                if unindexed >= INDEX_EVERY {
                    run_index_pass(&mut conn, INDEX_CHUNK);
                    unindexed = 0;
                }
            }
            Err(_) => {
                run_index_pass(&mut conn, INDEX_CHUNK);
                unindexed = 0;
            }
        }
    }
    // The index holds everything before the server stops (and after a
    // `migrate-db` import).
    while run_index_pass(&mut conn, INDEX_CHUNK) == INDEX_CHUNK {}
    // Everything in the WAL goes into the database file, and the WAL is
    // emptied: once the server has stopped, the file alone is complete (a
    // copy of it is a backup).
    if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::warn!(error = %err, "could not checkpoint the database at shutdown");
    }
    tracing::debug!("store writer finished");
}

/// Commits one batch, announces what it stored, then answers its jobs.
fn commit_and_answer(
    conn: &mut Connection,
    batch: &mut Vec<WriteJob>,
    feed: &async_mpsc::Sender<Commit>,
) {
    match commit_batch(conn, batch) {
        Ok((outcomes, commits)) => {
            // Announced before the acks, in commit order (deletions in
            // their place among messages). Blocking here (the writer is
            // a plain thread) when delivery falls behind slows acks
            // down: backpressure on senders instead of a queue that
            // grows without bound. A dropped feed (admin commands) is
            // fine.
            for commit in commits {
                let _ = feed.blocking_send(commit);
            }
            for (job, outcome) in batch.drain(..).zip(outcomes) {
                answer(job, outcome);
            }
        }
        Err(err) => {
            tracing::error!(error = %err, jobs = batch.len(), "write transaction failed");
            for job in batch.drain(..) {
                answer(job, Err(err.clone()));
            }
        }
    }
}

// ---- The backend. ----

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<Work>>>,
    writer: Mutex<Option<thread::JoinHandle<()>>>,
    readers: Arc<Mutex<Vec<Connection>>>,
}

impl SqliteStore {
    /// Opens the database and starts the writer thread, which announces its
    /// commits on `feed`.
    pub fn open(
        path: &Path,
        durability: Durability,
        feed: async_mpsc::Sender<Commit>,
    ) -> Result<SqliteStore, StoreError> {
        let conn = open_writer(path, durability)?;
        let (tx, rx) = mpsc::channel();
        let writer = thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(conn, rx, feed))
            .map_err(|e| StoreError::Open(format!("cannot start the store writer: {e}")))?;
        Ok(SqliteStore {
            path: path.to_owned(),
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            readers: Arc::new(Mutex::new(Vec::new())),
        })
    }

    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteJob,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        {
            let jobs = self.jobs.lock().map_err(|_| StoreError::Closed)?;
            let jobs = jobs.as_ref().ok_or(StoreError::Closed)?;
            jobs.send(Work::Job(make(reply)))
                .map_err(|_| StoreError::Closed)?;
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.jobs.lock().map_or(true, |jobs| jobs.is_none()) {
            return Err(StoreError::Closed);
        }
        let path = self.path.clone();
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = readers.lock().ok().and_then(|mut pool| pool.pop());
            let conn = match pooled {
                Some(conn) => conn,
                None => open_reader(&path)?,
            };
            let result = query(&conn);
            if let Ok(mut pool) = readers.lock() {
                if pool.len() < READ_POOL {
                    pool.push(conn);
                }
            }
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// A rare write on a connection of its own, in one immediate
    /// transaction.
    async fn write_alone<T: Send + 'static>(
        &self,
        work: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.jobs.lock().map_or(true, |jobs| jobs.is_none()) {
            return Err(StoreError::Closed);
        }
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = Connection::open(&path)?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = work(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn find_user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| find_user(conn, &name)).await
    }

    async fn create_user(
        &self,
        name: &str,
        password_hash: &str,
        admin: bool,
    ) -> Result<(), StoreError> {
        let user = UserRecord {
            name: name.to_owned(),
            password_hash: password_hash.to_owned(),
            admin,
            created: now_ms(),
        };
        self.write(|reply| WriteJob::CreateUser { user, reply })
            .await
    }

    async fn set_password(&self, name: &str, password_hash: &str) -> Result<(), StoreError> {
        let (name, hash) = (name.to_owned(), password_hash.to_owned());
        self.write_alone(move |tx| {
            let changed = tx.execute(
                "UPDATE users SET password_hash = ?2 WHERE name = ?1",
                params![name, hash],
            )?;
            if changed == 0 {
                return Err(StoreError::NoSuchUser);
            }
            Ok(())
        })
        .await
    }

    async fn delete_user(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write_alone(move |tx| {
            if tx.execute("DELETE FROM users WHERE name = ?1", [&name])? == 0 {
                return Err(StoreError::NoSuchUser);
            }
            Ok(())
        })
        .await
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT name, password_hash, admin, created_at FROM users ORDER BY name",
            )?;
            let rows = stmt.query_map([], user_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn count_users(&self) -> Result<u64, StoreError> {
        self.read(|conn| Ok(conn.query_row("SELECT COUNT(*) FROM users", [], |row| row.get(0))?))
            .await
    }

    async fn account_version(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            Ok(conn.query_row(
                "SELECT version FROM account_changes WHERE id = 1",
                [],
                |row| row.get(0),
            )?)
        })
        .await
    }

    async fn open_room(&self, name: &str) -> Result<RoomHead, StoreError> {
        if let Some(head) = self.room(name).await? {
            return Ok(head);
        }
        let name = name.to_owned();
        self.write(|reply| WriteJob::OpenRoom { name, reply }).await
    }

    async fn room(&self, name: &str) -> Result<Option<RoomHead>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| room_head(conn, &name)).await
    }

    async fn list_rooms(
        &self,
        after: Option<&str>,
        limit: usize,
        viewer: Option<&str>,
    ) -> Result<Vec<RoomRecord>, StoreError> {
        let after = after.map(str::to_owned);
        let viewer = viewer.map(str::to_owned);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            // BINARY collation: byte order, as PostgreSQL's "C".
            let mut stmt = conn.prepare_cached(
                "SELECT id, name, last_seq, last_activity, private, rev FROM rooms r
                 WHERE (?1 IS NULL OR name > ?1)
                   AND (?3 IS NULL OR NOT private OR EXISTS (
                        SELECT 1 FROM account_rooms a WHERE a.user = ?3 AND a.room_id = r.id))
                 ORDER BY name LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit, viewer], |row| {
                Ok(RoomRecord {
                    id: RoomId(row.get(0)?),
                    name: row.get(1)?,
                    last_seq: row.get(2)?,
                    private: row.get(4)?,
                    last_activity: row.get(3)?,
                    rev: row.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn count_rooms(&self) -> Result<u64, StoreError> {
        self.read(|conn| Ok(conn.query_row("SELECT COUNT(*) FROM rooms", [], |row| row.get(0))?))
            .await
    }

    async fn delete_room(&self, name: &str, requested_by: SessionId) -> Result<RoomId, StoreError> {
        let name = name.to_owned();
        self.write(|reply| WriteJob::DeleteRoom {
            name,
            requested_by,
            reply,
        })
        .await
    }

    async fn append(
        &self,
        room: RoomId,
        user: &str,
        text: &str,
        reply_to: Option<u64>,
    ) -> Result<Appended, StoreError> {
        let (user, text) = (user.to_owned(), text.to_owned());
        self.write(|reply| WriteJob::Append {
            room,
            user,
            text,
            reply_to,
            reply,
        })
        .await
    }

    async fn change(
        &self,
        room: RoomId,
        seq: u64,
        user: &str,
        admin: bool,
        change: Change,
        answer: Option<Answer>,
    ) -> Result<Changed, StoreError> {
        let user = user.to_owned();
        self.write(|reply| WriteJob::Change {
            room,
            seq,
            user,
            admin,
            change,
            answer,
            reply,
        })
        .await
    }

    async fn changed_since(
        &self,
        room: RoomId,
        name: &str,
        after_rev: u64,
        after_seq: u64,
        upto_seq: u64,
        limit: usize,
    ) -> Result<(Vec<MessageRecord>, u64), StoreError> {
        let name = name.to_owned();
        self.read(move |conn| {
            // One read transaction: the messages and the rev are of the
            // same moment.
            let tx = conn.unchecked_transaction()?;
            let rev: u64 = tx
                .prepare_cached("SELECT rev FROM rooms WHERE id = ?1")?
                .query_row([room.0], |row| row.get(0))
                .optional()?
                .ok_or(StoreError::NoSuchRoom)?;
            let seqs: Vec<u64> = tx
                .prepare_cached(
                    "SELECT DISTINCT seq FROM room_changes
                     WHERE room_id = ?1 AND rev > ?2 AND seq > ?3 AND seq <= ?4
                     ORDER BY seq LIMIT ?5",
                )?
                .query_map(
                    params![room.0, after_rev, after_seq, upto_seq, limit],
                    |row| row.get(0),
                )?
                .collect::<Result<_, _>>()?;
            let mut messages = Vec::with_capacity(seqs.len());
            for seq in seqs {
                if let Some(message) = read_message(&tx, &name, room, seq)? {
                    messages.push(message);
                }
            }
            Ok((messages, rev))
        })
        .await
    }

    async fn events(
        &self,
        room: RoomId,
        name: &str,
        after: Position,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| {
            let tx = conn.unchecked_transaction()?;
            read_events(&tx, &name, room, after, upto, limit)
        })
        .await
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        // Every message stored before the search was asked is indexed
        // first (a pass of the writer's, usually short).
        let (indexed, done) = oneshot::channel();
        {
            let jobs = self.jobs.lock().map_err(|_| StoreError::Closed)?;
            let jobs = jobs.as_ref().ok_or(StoreError::Closed)?;
            jobs.send(Work::Index(indexed))
                .map_err(|_| StoreError::Closed)?;
        }
        done.await.map_err(|_| StoreError::Closed)?;
        let query = query.clone();
        self.read(move |conn| search(conn, &query)).await
    }

    async fn history(
        &self,
        name: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| {
            let head = room_head(conn, &name)?.ok_or(StoreError::NoSuchRoom)?;
            let (last, first) = page_range(head.last_seq, before, limit);
            let Some(first) = first else {
                return Ok(HistoryPage {
                    messages: Vec::new(),
                    has_more: last > 0,
                });
            };
            let messages = read_range(conn, &name, head.id, first, last)?;
            Ok(HistoryPage {
                has_more: messages.first().is_some_and(|m| m.seq > 1),
                messages,
            })
        })
        .await
    }

    async fn range(
        &self,
        room: RoomId,
        name: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| {
            let last = upto.min(after.saturating_add(limit as u64));
            if last <= after {
                return Ok(Vec::new());
            }
            read_range(conn, &name, room, after + 1, last)
        })
        .await
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        self.read(|conn| {
            Ok(conn.query_row(
                "SELECT NOT EXISTS (SELECT 1 FROM users) AND NOT EXISTS (SELECT 1 FROM rooms)",
                [],
                |row| row.get(0),
            )?)
        })
        .await
    }

    async fn import_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let user = user.clone();
        self.write_alone(move |tx| insert_user(tx, &user)).await
    }

    async fn import_room(&self, room: &RoomRecord) -> Result<RoomId, StoreError> {
        let room = room.clone();
        self.write_alone(move |tx| {
            let id = tx.query_row(
                "INSERT INTO rooms (name, last_seq, last_activity, private, rev)
                 VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
                params![
                    room.name,
                    room.last_seq,
                    room.last_activity,
                    room.private,
                    room.rev
                ],
                |row| row.get(0),
            )?;
            Ok(RoomId(id))
        })
        .await
    }

    async fn import_messages(
        &self,
        room: RoomId,
        messages: &[MessageRecord],
    ) -> Result<(), StoreError> {
        let messages = messages.to_vec();
        self.write_alone(move |tx| {
            let mut gid = last_gid(tx)?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (room_id, seq, user, text, ts, reply_to, edited_ts, deleted, gid)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let mut react = tx.prepare_cached(
                "INSERT INTO reactions (room_id, seq, emoji, user, rev) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for m in &messages {
                gid += 1;
                insert.execute(params![
                    room.0,
                    m.seq,
                    m.user,
                    m.text,
                    m.ts,
                    m.reply_to,
                    m.edited_ts,
                    m.deleted,
                    gid
                ])?;
                // The copy has no change log: the reactions' order is kept
                // by ranks below any real rev (which start at 1).
                let count: usize = m.reactions.0.iter().map(|(_, users)| users.len()).sum();
                let mut rank = -(count as i64);
                for (emoji, users) in &m.reactions.0 {
                    for user in users {
                        react.execute(params![room.0, m.seq, emoji, user, rank])?;
                        rank += 1;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    async fn account_rooms(&self, user: &str) -> Result<Vec<AccountRoomRecord>, StoreError> {
        let user = user.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT r.id, r.name, r.last_seq, a.read_seq, r.private
                 FROM account_rooms a JOIN rooms r ON r.id = a.room_id
                 WHERE a.user = ?1 ORDER BY r.name",
            )?;
            let rows = stmt.query_map([&user], |row| {
                let last_seq: u64 = row.get(2)?;
                let read: u64 = row.get(3)?;
                Ok(AccountRoomRecord {
                    room_id: RoomId(row.get(0)?),
                    name: row.get(1)?,
                    last_seq,
                    read: read.min(last_seq),
                    private: row.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn remember_room(&self, user: &str, room: RoomId) -> Result<(), StoreError> {
        // Most joins are of rooms the account has: a read then, not a
        // write transaction (and its sync) per join.
        if self.is_member(user, room).await? {
            return Ok(());
        }
        let user = user.to_owned();
        self.write_alone(move |tx| {
            tx.execute(
                "INSERT OR IGNORE INTO account_rooms (user, room_id) VALUES (?1, ?2)",
                params![user, room.0],
            )?;
            Ok(())
        })
        .await
    }

    async fn is_member(&self, user: &str, room: RoomId) -> Result<bool, StoreError> {
        let user = user.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT 1 FROM account_rooms WHERE user = ?1 AND room_id = ?2")?
                .exists(params![user, room.0])?)
        })
        .await
    }

    async fn create_private_room(
        &self,
        name: &str,
        members: &[&str],
    ) -> Result<Option<RoomHead>, StoreError> {
        let name = name.to_owned();
        let members: Vec<String> = members.iter().map(|m| (*m).to_owned()).collect();
        self.write_alone(move |tx| {
            let created = tx.execute(
                "INSERT INTO rooms (name, last_seq, last_activity, private) VALUES (?1, 0, ?2, 1)
                 ON CONFLICT(name) DO NOTHING",
                params![name, now_ms()],
            )?;
            if created == 0 {
                return Ok(None);
            }
            let head = room_head(tx, &name)?.ok_or(StoreError::NoSuchRoom)?;
            for member in &members {
                tx.execute(
                    "INSERT OR IGNORE INTO account_rooms (user, room_id) VALUES (?1, ?2)",
                    params![member, head.id.0],
                )?;
            }
            Ok(Some(head))
        })
        .await
    }

    async fn forget_room(&self, user: &str, room: RoomId) -> Result<(), StoreError> {
        let user = user.to_owned();
        self.write_alone(move |tx| {
            tx.execute(
                "DELETE FROM account_rooms WHERE user = ?1 AND room_id = ?2",
                params![user, room.0],
            )?;
            Ok(())
        })
        .await
    }

    async fn mark_read(
        &self,
        user: &str,
        room: RoomId,
        seq: u64,
    ) -> Result<Option<u64>, StoreError> {
        let user = user.to_owned();
        self.write_alone(move |tx| {
            let last_seq: Option<u64> = tx
                .query_row(
                    "SELECT last_seq FROM rooms WHERE id = ?1",
                    [room.0],
                    |row| row.get(0),
                )
                .optional()?;
            let last_seq = last_seq.ok_or(StoreError::NoSuchRoom)?;
            let target = seq.min(last_seq);
            tx.execute(
                "INSERT OR IGNORE INTO account_rooms (user, room_id) VALUES (?1, ?2)",
                params![user, room.0],
            )?;
            let moved = tx.execute(
                "UPDATE account_rooms SET read_seq = ?3
                 WHERE user = ?1 AND room_id = ?2 AND read_seq < ?3",
                params![user, room.0, target],
            )?;
            Ok((moved > 0).then_some(target))
        })
        .await
    }

    async fn all_account_rooms(&self) -> Result<Vec<AccountRoomRow>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT a.user, r.name, a.read_seq
                 FROM account_rooms a JOIN rooms r ON r.id = a.room_id
                 ORDER BY a.user, r.name",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok(AccountRoomRow {
                    user: row.get(0)?,
                    room: row.get(1)?,
                    read: row.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn import_account_room(
        &self,
        user: &str,
        room: RoomId,
        read: u64,
    ) -> Result<(), StoreError> {
        let user = user.to_owned();
        self.write_alone(move |tx| {
            tx.execute(
                "INSERT INTO account_rooms (user, room_id, read_seq) VALUES (?1, ?2, ?3)",
                params![user, room.0, read],
            )?;
            Ok(())
        })
        .await
    }

    async fn close(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}
