//! The hub: rooms, fan-out and store behind one set of chat operations.
//!
//! Sessions turn frames into calls on the hub (join, leave, send, history,
//! delete, typing, the room list, accounts) and its answers back into
//! frames; they never talk to the store, the rooms or the fan-out directly.
//! The ordering rules between those three live here and only here:
//! - a commit is delivered to local members in commit order, then published
//!   to other nodes ([`Hub::new`] owns the store's commit feed);
//! - a join registers the member *before* reading the room again, so no
//!   message falls between the history it gets and the live ones;
//! - a gap in a room's delivery is filled from the store.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_proto::limits::close;
use chat_proto::{AccountRoom, MessageRecord, RoomSummary, ServerEvent};
use tokio::sync::mpsc;

use crate::fanout::{Fanout, UserEvent};
use crate::rooms::{frame, FillOutcome, GapFill, JoinPoint, Outbound, Rooms, SessionHandle};
use crate::store::{
    Answer, Appended, Change, Changed, Commit, CommitFeed, HistoryPage, RoomHead, RoomId,
    SearchPage, SearchQuery, SessionId, Store, StoreError, UserRecord,
};
use crate::untrusted::Untrusted;
use chat_proto::validate::{dm_room, dm_users};

/// User events from other nodes waiting to be delivered here; past this,
/// they are dropped (see `cluster`).
pub const USER_EVENTS_QUEUE: usize = 4096;

/// Why the hub did not do what was asked, for the session to put in words.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no such room")]
    NoSuchRoom,
    #[error("not a member of the room")]
    NotJoined,
    #[error("the room was deleted while joining")]
    DeletedWhileJoining,
    #[error("the name is taken")]
    UserExists,
    /// The user created their quota of rooms in the last hour.
    #[error("room creation quota reached")]
    RoomQuota(u32),
    /// The server holds as many rooms as it may.
    #[error("too many rooms")]
    TooManyRooms(u64),
    /// A private room (or direct conversation) of which the user is not a
    /// member, or a request its members may not make.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The request named a user that does not exist.
    #[error("no such user")]
    NoSuchUser,
    /// The request named a message that does not exist or was deleted.
    #[error("no such message")]
    NoSuchMessage,
    /// A request that cannot be made as asked.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The store failed (logged where it happened); nothing was done, or
    /// for a send nothing was acknowledged.
    #[error("store unavailable: {0}")]
    Unavailable(StoreError),
}

impl From<StoreError> for Refusal {
    fn from(err: StoreError) -> Refusal {
        match err {
            StoreError::NoSuchRoom => Refusal::NoSuchRoom,
            StoreError::UserExists => Refusal::UserExists,
            StoreError::NoSuchUser => Refusal::NoSuchUser,
            StoreError::NoSuchMessage => Refusal::NoSuchMessage,
            StoreError::NotAuthor => Refusal::Forbidden("only its author may change a message"),
            StoreError::TooManyReactions => {
                Refusal::BadRequest("the message has as many different reactions as it may")
            }
            other => Refusal::Unavailable(other),
        }
    }
}

/// A successful join.
pub struct Joined {
    pub room_id: RoomId,
    /// Newest message the joiner gets from the store; later ones come live.
    pub last_seq: u64,
    /// The room's `rev` at the join point: later changes come live.
    pub rev: u64,
    /// Users online in the room, on every node.
    pub members: Vec<String>,
}

/// The window of the per-user room creation quota.
const ROOM_QUOTA_WINDOW: Duration = Duration::from_secs(3600);

/// How often the store's account counter is read: account changes reach
/// live sessions within about this long, on every node.
const ACCOUNT_POLL: Duration = Duration::from_secs(2);

/// How many rooms may be created.
#[derive(Debug, Clone, Copy)]
pub struct RoomLimits {
    /// Rooms in all (0: no limit).
    pub max_rooms: u64,
    /// Rooms one (non-admin) user may create in an hour (0: no limit).
    pub per_user_per_hour: u32,
}

/// Rooms, fan-out and store, with the rules between them.
pub struct Hub {
    store: Arc<dyn Store>,
    rooms: Arc<Rooms>,
    fanout: Arc<dyn Fanout>,
    accounts: Arc<Accounts>,
    limits: RoomLimits,
    /// When each user created rooms in the last hour, on this node.
    created: std::sync::Mutex<HashMap<Arc<str>, std::collections::VecDeque<Instant>>>,
}

/// A logged-in session and the password hash it logged in with.
type LiveSession = (Arc<SessionHandle>, String);

/// The logged-in sessions of this node, by user.
#[derive(Default)]
struct Accounts {
    live: std::sync::Mutex<HashMap<Arc<str>, Vec<LiveSession>>>,
}

impl Accounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Vec<LiveSession>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Hub {
    /// The hub over an open store (and its commit feed), this node's rooms
    /// (and their gap-fill requests) and a fan-out. Starts the delivery and
    /// gap-filling tasks: call inside the runtime.
    pub fn new(
        store: Arc<dyn Store>,
        feed: CommitFeed,
        rooms: Arc<Rooms>,
        gap_requests: mpsc::UnboundedReceiver<GapFill>,
        fanout: Arc<dyn Fanout>,
        from_other_nodes: mpsc::Receiver<(String, UserEvent)>,
        limits: RoomLimits,
    ) -> Arc<Hub> {
        tokio::spawn(deliver_commits(feed, rooms.clone(), fanout.clone()));
        tokio::spawn(fill_gaps(gap_requests, store.clone(), rooms.clone()));
        let accounts = Arc::new(Accounts::default());
        tokio::spawn(watch_accounts(store.clone(), Arc::downgrade(&accounts)));
        let hub = Arc::new(Hub {
            store,
            rooms,
            fanout,
            accounts,
            limits,
            created: Default::default(),
        });
        tokio::spawn(deliver_user_events(from_other_nodes, Arc::downgrade(&hub)));
        hub
    }

    /// Registers a session that just logged in with `password_hash`, so an
    /// account change can reach it.
    pub fn logged_in(&self, session: &Arc<SessionHandle>, password_hash: String) {
        self.accounts
            .lock()
            .entry(session.user.clone())
            .or_default()
            .push((session.clone(), password_hash));
    }

    /// Tells every logged-in session to close with `code` and `reason`.
    pub fn close_all(&self, code: u16, reason: &'static str) {
        for sessions in self.accounts.lock().values() {
            for (session, _) in sessions {
                session.close(code, reason);
            }
        }
    }

    /// Forgets a session that ended.
    pub fn logged_out(&self, session: &SessionHandle) {
        let mut live = self.accounts.lock();
        if let Some(sessions) = live.get_mut(&session.user) {
            sessions.retain(|(s, _)| s.id != session.id);
            if sessions.is_empty() {
                live.remove(&session.user);
            }
        }
    }

    // ---- Accounts. ----

    /// Looks an account up by name.
    pub async fn user(&self, name: &str) -> Result<Option<UserRecord>, Refusal> {
        Ok(self.store.find_user(name).await?)
    }

    /// Creates a (non-admin) account; `UserExists` when the name is taken.
    pub async fn register(&self, name: &str, password_hash: &str) -> Result<(), Refusal> {
        Ok(self.store.create_user(name, password_hash, false).await?)
    }

    /// Number of accounts.
    pub async fn user_count(&self) -> Result<u64, Refusal> {
        Ok(self.store.count_users().await?)
    }

    // ---- Rooms. ----

    /// A page of rooms in name order after `after` (at most `limit`), each
    /// with its newest message and how many are online, and whether more
    /// follow.
    /// The rooms `viewer` may see, in name order (private rooms only when
    /// a member).
    pub async fn rooms(
        &self,
        viewer: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<RoomSummary>, bool), Refusal> {
        let mut stored = self
            .store
            .list_rooms(after, limit + 1, Some(viewer))
            .await?;
        let has_more = stored.len() > limit;
        stored.truncate(limit);
        let counts: HashMap<String, u64> = self.fanout.member_counts().await;
        let rooms = stored
            .into_iter()
            .map(|r| RoomSummary {
                members: counts.get(&r.name).copied().unwrap_or(0),
                last_ts: (r.last_seq > 0).then_some(r.last_activity),
                last_seq: r.last_seq,
                name: r.name,
            })
            .collect();
        Ok((rooms, has_more))
    }

    /// Before `user` creates a room: the server-wide cap, then the user's
    /// hourly quota (admins, read from the store now, are exempt).
    async fn may_create_room(&self, user: &Arc<str>) -> Result<(), Refusal> {
        let RoomLimits {
            max_rooms,
            per_user_per_hour,
        } = self.limits;
        if max_rooms > 0 && self.store.count_rooms().await? >= max_rooms {
            return Err(Refusal::TooManyRooms(max_rooms));
        }
        if per_user_per_hour == 0 || self.store.find_user(user).await?.is_some_and(|u| u.admin) {
            return Ok(());
        }
        let now = Instant::now();
        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        // Forget users whose hour has passed, so the map stays small.
        created.retain(|_, times| {
            times.retain(|t| now.duration_since(*t) < ROOM_QUOTA_WINDOW);
            !times.is_empty()
        });
        let times = created.entry(user.clone()).or_default();
        if times.len() >= per_user_per_hour as usize {
            return Err(Refusal::RoomQuota(per_user_per_hour));
        }
        times.push_back(now);
        Ok(())
    }

    /// Makes `session` a member of `room` (created if needed) and announces
    /// the user's arrival when it is their first connection there.
    pub async fn join(
        &self,
        session: &Arc<SessionHandle>,
        room: &str,
        private: bool,
    ) -> Result<Joined, Refusal> {
        // A deletion (and re-creation) of the room can race the steps below;
        // then they are simply taken again.
        let mut attempts = 0;
        if self.store.room(room).await?.is_none() {
            // Direct conversations are opened with `dm`, which makes both
            // users members.
            if dm_users(room).is_some() {
                return Err(Refusal::NoSuchRoom);
            }
            self.may_create_room(&session.user).await?;
            if private {
                // With its creator as member, in one transaction. When
                // another join created the room first, that one stands
                // (and says who may enter).
                self.store
                    .create_private_room(room, &[&session.user])
                    .await?;
            }
        }
        let (room_id, point) = loop {
            attempts += 1;
            let head = self.store.open_room(room).await?;
            if head.private && !self.store.is_member(&session.user, head.id).await? {
                return Err(Refusal::Forbidden("the room is private"));
            }
            let Some(point) = self.rooms.join(room, head.id, session, head.position()) else {
                continue;
            };
            // Subscribed (cluster mode) only now that the room has a member
            // here, so a concurrent last leave cannot unsubscribe it; then
            // whatever was stored since the first read, and whose delivery
            // this node may have missed, is read from the store.
            self.fanout.watch_room(room).await;
            match self.store.room(room).await {
                Ok(Some(now)) if now.id == head.id => {
                    self.rooms.catch_up(room, head.id, now.position().index());
                    break (head.id, point);
                }
                Ok(_) => {
                    self.undo_join(room, session.id, &point);
                    if attempts >= 3 {
                        return Err(Refusal::DeletedWhileJoining);
                    }
                }
                Err(err) => {
                    self.undo_join(room, session.id, &point);
                    return Err(err.into());
                }
            }
        };
        // The room becomes one of the account's (part 2), before the join
        // is answered: a `welcome` on another device lists it from now on.
        if let Err(err) = self.store.remember_room(&session.user, room_id).await {
            self.undo_join(room, session.id, &point);
            return Err(err.into());
        }
        if point.first_local {
            self.fanout.user_joined(room, &session.user).await;
        }
        Ok(Joined {
            room_id,
            last_seq: point.last_seq,
            rev: point.rev,
            members: self.fanout.members(room).await,
        })
    }

    /// Takes back a membership that a failed join added (a session that was
    /// already a member stays one).
    fn undo_join(&self, room: &str, session: SessionId, point: &JoinPoint) {
        if point.added {
            self.rooms.leave(room, session);
        }
    }

    /// Ends `session`'s membership of `room`, announcing the user's
    /// departure when it was their last connection there.
    pub async fn leave(&self, room: &str, session: SessionId, user: &str) -> Result<(), Refusal> {
        match self.rooms.leave(room, session) {
            None => Err(Refusal::NotJoined),
            Some(last) => {
                if last {
                    self.fanout.user_left(room, user).await;
                }
                Ok(())
            }
        }
    }

    // ---- Private rooms and direct conversations (part 2). ----

    /// Refuses `user` when `room` is private and they are not a member.
    async fn may_read(&self, user: &str, room: &RoomHead) -> Result<(), Refusal> {
        if room.private && !self.store.is_member(user, room.id).await? {
            return Err(Refusal::Forbidden("the room is private"));
        }
        Ok(())
    }

    /// Refuses `user` when `room` is private and they are not a member
    /// (nothing to say about a room that does not exist).
    pub async fn may_enter(&self, user: &str, room: &str) -> Result<(), Refusal> {
        match self.store.room(room).await? {
            Some(head) => self.may_read(user, &head).await,
            None => Ok(()),
        }
    }

    /// Makes `user` a member of the private room `room`, at the request of
    /// `session`'s user, a member; `user`'s connections, on every node, are
    /// told.
    pub async fn invite(
        &self,
        session: &SessionHandle,
        room: &str,
        user: &str,
    ) -> Result<(), Refusal> {
        let head = self.store.room(room).await?.ok_or(Refusal::NoSuchRoom)?;
        self.may_read(&session.user, &head).await?;
        if dm_users(room).is_some() {
            return Err(Refusal::Forbidden(
                "nobody can be invited into a direct conversation",
            ));
        }
        if !head.private {
            return Err(Refusal::BadRequest(
                "only private rooms take invitations: anyone may join this one",
            ));
        }
        if self.store.find_user(user).await?.is_none() {
            return Err(Refusal::NoSuchUser);
        }
        self.store.remember_room(user, head.id).await?;
        let event = UserEvent::Invited {
            room: room.to_owned(),
            by: session.user.to_string(),
        };
        self.to_user_here(user, &event, None).await;
        self.fanout.to_user(user, &event);
        Ok(())
    }

    /// Opens the direct conversation of `session`'s user with `user`,
    /// creating it (both members) the first time; returns its room name.
    /// `user`'s connections are told when they become a member.
    pub async fn dm(&self, session: &SessionHandle, user: &str) -> Result<String, Refusal> {
        if user == &*session.user {
            return Err(Refusal::BadRequest(
                "a direct conversation needs another user",
            ));
        }
        if self.store.find_user(user).await?.is_none() {
            return Err(Refusal::NoSuchUser);
        }
        let room = dm_room(&session.user, user);
        let newly_theirs = match self.store.room(&room).await? {
            None => {
                let created = self
                    .store
                    .create_private_room(&room, &[&session.user, user])
                    .await?;
                // Raced with the other user's `dm`: theirs made us both
                // members.
                created.is_some()
            }
            Some(head) => {
                // Either of the two may have left it for good: the first
                // `dm` again brings each back.
                let theirs = self.store.is_member(user, head.id).await?;
                self.store.remember_room(&session.user, head.id).await?;
                self.store.remember_room(user, head.id).await?;
                !theirs
            }
        };
        if newly_theirs {
            let event = UserEvent::Invited {
                room: room.clone(),
                by: session.user.to_string(),
            };
            self.to_user_here(user, &event, None).await;
            self.fanout.to_user(user, &event);
        }
        Ok(room)
    }

    // ---- The account's rooms and read markers (part 2). ----

    /// The rooms of `user`'s account, for `welcome`.
    pub async fn account_rooms(&self, user: &str) -> Result<Vec<AccountRoom>, Refusal> {
        Ok(self
            .store
            .account_rooms(user)
            .await?
            .into_iter()
            .map(|r| AccountRoom {
                name: r.name,
                last_seq: r.last_seq,
                read: r.read,
                private: r.private,
            })
            .collect())
    }

    /// Moves the read marker of `session`'s user in `room` forward to `seq`
    /// (capped at the room's newest); when it moved, the user's other
    /// connections, on every node, are told.
    pub async fn read(&self, session: &SessionHandle, room: &str, seq: u64) -> Result<(), Refusal> {
        let head = self.store.room(room).await?.ok_or(Refusal::NoSuchRoom)?;
        self.may_read(&session.user, &head).await?;
        if let Some(marker) = self.store.mark_read(&session.user, head.id, seq).await? {
            let event = UserEvent::Read {
                room: room.to_owned(),
                seq: marker,
            };
            self.to_user_here(&session.user, &event, Some(session.id))
                .await;
            self.fanout.to_user(&session.user, &event);
        }
        Ok(())
    }

    /// Removes `room` from the account of `session`'s user; the user's other
    /// connections, on every node, leave it and are told `left`. (The
    /// session itself leaves it before asking.)
    pub async fn forget(&self, session: &SessionHandle, room: &str) -> Result<(), Refusal> {
        let head = self.store.room(room).await?.ok_or(Refusal::NoSuchRoom)?;
        self.store.forget_room(&session.user, head.id).await?;
        let event = UserEvent::Forgot {
            room: room.to_owned(),
        };
        self.to_user_here(&session.user, &event, Some(session.id))
            .await;
        self.fanout.to_user(&session.user, &event);
        Ok(())
    }

    /// Delivers `event` to `user`'s connections on this node, but `except`.
    async fn to_user_here(&self, user: &str, event: &UserEvent, except: Option<SessionId>) {
        let sessions: Vec<Arc<SessionHandle>> = match self.accounts.lock().get(user) {
            Some(live) => live
                .iter()
                .filter(|(s, _)| Some(s.id) != except)
                .map(|(s, _)| s.clone())
                .collect(),
            None => return,
        };
        match event {
            UserEvent::Read { room, seq } => {
                let frame = frame(&ServerEvent::Read {
                    room: room.clone(),
                    seq: *seq,
                });
                for session in sessions {
                    session.push(Outbound::Event(frame.clone()));
                }
            }
            UserEvent::Invited { room, by } => {
                let frame = frame(&ServerEvent::Invited {
                    room: room.clone(),
                    user: user.to_owned(),
                    by: by.clone(),
                    re: None,
                });
                for session in sessions {
                    session.push(Outbound::Event(frame.clone()));
                }
            }
            UserEvent::Forgot { room } => {
                let frame = frame(&ServerEvent::Left {
                    room: room.clone(),
                    re: None,
                });
                for session in sessions {
                    // Not a member of it on that connection is fine.
                    let _ = self.leave(room, session.id, &session.user).await;
                    session.push(Outbound::Left {
                        room: room.clone(),
                        frame: frame.clone(),
                    });
                }
            }
        }
    }

    /// Deletes a room and its history. Its members are told when the
    /// deletion commits, except `session`, which asked and gets the answer.
    pub async fn delete_room(&self, room: &str, session: SessionId) -> Result<(), Refusal> {
        self.store.delete_room(room, session).await?;
        self.fanout.room_deleted(room).await;
        Ok(())
    }

    /// Relays that `user` is typing in room `room_id` to its other members
    /// (at most once per user per [`crate::rooms::TYPING_EVERY`]; the rest
    /// are dropped).
    pub async fn typing(&self, room: &str, room_id: RoomId, user: &Arc<str>) {
        self.fanout.typing(room, room_id, user).await;
    }

    // ---- Messages. ----

    /// Stores a message (a reply to `reply_to` when given); resolves once
    /// committed (then it is on its way to every member). Owns what it
    /// needs, so sessions can pipeline sends.
    pub fn send(
        self: &Arc<Self>,
        room: RoomId,
        user: Arc<str>,
        text: String,
        reply_to: Option<u64>,
    ) -> impl Future<Output = Result<Appended, Refusal>> + Send + 'static {
        let hub = self.clone();
        async move { Ok(hub.store.append(room, &user, &text, reply_to).await?) }
    }

    /// Edits, deletes or reacts to message `seq` of room `room_id`, for
    /// `session`'s user; resolves once committed. The session's copy of
    /// the resulting event, delivered with the room's other events, is the
    /// answer (with `re`). Deleting another's message needs the user to be
    /// an admin now (read from the store).
    pub fn change(
        self: &Arc<Self>,
        session: &SessionHandle,
        room_id: RoomId,
        seq: u64,
        change: Change,
        re: Option<String>,
    ) -> impl Future<Output = Result<Changed, Refusal>> + Send + 'static {
        let hub = self.clone();
        let user = session.user.clone();
        let answer = Answer {
            session: session.id,
            re,
        };
        async move {
            let admin = match change {
                Change::Delete => hub.store.find_user(&user).await?.is_some_and(|u| u.admin),
                _ => false,
            };
            Ok(hub
                .store
                .change(room_id, seq, &user, admin, change, Some(answer))
                .await?)
        }
    }

    /// The current state of the messages of a joined room with
    /// `after_seq < seq <= upto_seq` changed after `after_rev` (at most
    /// `limit`), and the room's `rev` they are the state at.
    pub async fn changed_since(
        &self,
        room_id: RoomId,
        room: &str,
        after_rev: u64,
        after_seq: u64,
        upto_seq: u64,
        limit: usize,
    ) -> Result<(Vec<MessageRecord>, u64), Refusal> {
        Ok(self
            .store
            .changed_since(room_id, room, after_rev, after_seq, upto_seq, limit)
            .await?)
    }

    /// Messages matching every word of `words`, newest first, in `room` (which
    /// `viewer` must be allowed to read) or every room they may read.
    pub async fn search(
        &self,
        viewer: &str,
        words: Vec<String>,
        room: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<SearchPage, Refusal> {
        let room = match room {
            Some(room) => {
                let head = self.store.room(room).await?.ok_or(Refusal::NoSuchRoom)?;
                self.may_read(viewer, &head).await?;
                Some(head.id)
            }
            None => None,
        };
        Ok(self
            .store
            .search(&SearchQuery {
                words,
                room,
                viewer: viewer.to_owned(),
                before,
                limit,
            })
            .await?)
    }

    /// A page of history before `before` (the newest page without it).
    pub async fn history(
        &self,
        viewer: &str,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, Refusal> {
        let head = self.store.room(room).await?.ok_or(Refusal::NoSuchRoom)?;
        self.may_read(viewer, &head).await?;
        Ok(self.store.history(room, before, limit).await?)
    }

    /// Messages of room `room_id` with `after < seq <= upto`, at most
    /// `limit`, ascending: a joiner's backlog.
    pub async fn backlog(
        &self,
        room_id: RoomId,
        room: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, Refusal> {
        Ok(self.store.range(room_id, room, after, upto, limit).await?)
    }

    /// Lets the store finish every queued write.
    pub async fn close(&self) {
        self.store.close().await;
    }
}

/// Closes the live sessions of accounts that changed: deleted (all of
/// them), or with a new password (those that logged in with the old one).
/// Reads the store's account counter every [`ACCOUNT_POLL`]; the admin
/// commands of another process bump it too. Ends with the hub.
async fn watch_accounts(store: Arc<dyn Store>, accounts: std::sync::Weak<Accounts>) {
    let mut seen = None;
    let mut tick = tokio::time::interval(ACCOUNT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(version) = store.account_version().await else {
            continue; // the store logs its own outage
        };
        if seen.replace(version).is_none_or(|old| old == version) {
            continue;
        }
        let Some(accounts) = accounts.upgrade() else {
            return;
        };
        let users: Vec<Arc<str>> = accounts.lock().keys().cloned().collect();
        for user in users {
            let Ok(record) = store.find_user(&user).await else {
                seen = None; // look again next time
                continue;
            };
            let live = accounts.lock().get(&user).cloned().unwrap_or_default();
            for (session, hash) in live {
                match &record {
                    None => session.close(close::POLICY, "account deleted"),
                    Some(r) if r.password_hash != hash => {
                        session.close(close::POLICY, "password changed: log in again")
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

/// Delivers the store's commits to local members, then publishes them to
/// the other nodes, in commit order: one task, one queue.
async fn deliver_commits(mut feed: CommitFeed, rooms: Arc<Rooms>, fanout: Arc<dyn Fanout>) {
    while let Some(commit) = feed.recv().await {
        match &commit {
            Commit::Events(events) => rooms.deliver_all(events),
            Commit::RoomDeleted {
                name,
                id,
                requested_by,
            } => {
                // The admin who asked is answered directly, with `re`.
                rooms.remove(name, *id, Some(*requested_by));
            }
        }
        fanout.publish(&commit);
    }
}

/// Delivers user events from the other nodes to this node's connections of
/// their users, while the hub lives.
async fn deliver_user_events(
    mut events: mpsc::Receiver<(String, UserEvent)>,
    hub: std::sync::Weak<Hub>,
) {
    while let Some((user, event)) = events.recv().await {
        let Some(hub) = hub.upgrade() else {
            return;
        };
        hub.to_user_here(&user, &event, None).await;
    }
}

/// Serves gap-fill requests from the rooms: reads the missing messages from
/// the store and delivers them in order. After a store error the request
/// comes back (through [`Rooms::gap_filled`]) after a pause.
async fn fill_gaps(
    mut requests: mpsc::UnboundedReceiver<GapFill>,
    store: Arc<dyn Store>,
    rooms: Arc<Rooms>,
) {
    while let Some(gap) = requests.recv().await {
        let outcome = match fill_gap(&gap, store.as_ref(), &rooms).await {
            Ok(outcome) => outcome,
            Err(err) => {
                tracing::error!(room = %Untrusted(&gap.room), error = %err, "reading missing messages failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                FillOutcome::Failed
            }
        };
        rooms.gap_filled(&gap.room, gap.room_id, gap.upto, outcome);
    }
}

/// Reads and delivers one gap. When the store lacks part of it, the room's
/// newest stored position is read too, so the rooms can tell a deleted room
/// from an event nobody stored.
async fn fill_gap(
    gap: &GapFill,
    store: &dyn Store,
    rooms: &Rooms,
) -> Result<FillOutcome, StoreError> {
    let mut after = gap.after;
    while after.index() < gap.upto {
        let events = store
            .events(gap.room_id, &gap.room, after, gap.upto, 1000)
            .await?;
        let Some(last) = events.last().map(|e| e.at) else {
            break;
        };
        after = last;
        rooms.deliver_all(&events);
    }
    if after.index() >= gap.upto {
        return Ok(FillOutcome::Read { stored_last: None });
    }
    let stored_last = match store.room(&gap.room).await? {
        Some(head) if head.id == gap.room_id => Some(head.position()),
        _ => None,
    };
    Ok(FillOutcome::Read { stored_last })
}
