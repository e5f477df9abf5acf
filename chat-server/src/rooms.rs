//! Rooms on this server process: who is a member, and delivery of events to
//! them in order.
//!
//! Each session has a bounded outbox; the room pushes ready-made frames into
//! it without waiting, and the session takes all that is there in one go. A message is encoded once into a complete WebSocket
//! frame (see [`crate::wire`]) and the same bytes (a reference-counted
//! buffer) go to every member. A member whose
//! outbox is full is told to close with 1013 instead of slowing the room.
//!
//! A room's events (messages, and edits, deletions and reactions) are
//! delivered strictly in the order they were stored: each stands at a
//! [`Position`] (the room's `seq` and `rev` after it), and their index
//! `seq + rev` counts them 1, 2, 3, … A room with members remembers the
//! position it delivered up to; an event from further ahead (possible in
//! cluster mode, where events also arrive through Redis, or after a join
//! raced a commit) is held back while the missing ones are read from the
//! store, and one already delivered is dropped. A member is registered at
//! the room's current delivery point, so `joined.last_seq` and `joined.rev`
//! split a room cleanly: older messages come from the store as `history`
//! (and older changes as `changes`), newer ones live.
//!
//! A room is known here only while it has members, and by its store id as
//! well as its name: ids are never reused, so events of a deleted room can
//! never be mistaken for those of a new room with the same name.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chat_proto::{PresenceState, ServerEvent};
use futures_util::task::AtomicWaker;
use tokio::sync::{mpsc, Notify};

use crate::store::{Position, RoomEvent, RoomId, SessionId, Stored};
pub use crate::wire::Frame;

/// Frames a session may have waiting in its outbox before it counts as
/// fallen behind.
pub const OUTBOX_FRAMES: usize = 4096;

/// Shortest time between two `typing` relays of one user in one room.
pub const TYPING_EVERY: Duration = Duration::from_secs(2);

/// Encodes an event once into a frame every recipient can share.
pub fn frame(event: &ServerEvent) -> Frame {
    crate::wire::text_frame(event)
}

/// The frame every member gets for a stored event.
fn event_frame(stored: &Stored) -> Frame {
    match &stored.event {
        RoomEvent::Message(message) => frame(&ServerEvent::Message(message.clone())),
        _ => frame(&stored.to_server_event()),
    }
}

/// What rooms put in a session's outbox.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A `message` (with its `seq`) or `room_deleted` (without) of one room,
    /// tagged so that the session can skip what it already sent as
    /// `history`, what belongs to a room it has left, and what belongs to an
    /// earlier room of the same name.
    Room {
        room_id: RoomId,
        seq: Option<u64>,
        frame: Frame,
    },
    /// An `edited`, `deleted` or `reaction` of one room, with the room's
    /// `rev` after it: skipped by a session that already holds that state
    /// (from `changes`) or has left the room.
    Change {
        room_id: RoomId,
        rev: u64,
        frame: Frame,
    },
    /// A `presence` or `typing` of one room: dropped by a session that has
    /// left the room by the time it would write it.
    RoomEvent { room_id: RoomId, frame: Frame },
    /// Any other event.
    Event(Frame),
    /// `left` for a room the user left for good from another connection:
    /// the session stops counting itself a member.
    Left { room: String, frame: Frame },
    /// Wakes the session to close it (see [`SessionHandle::close`]).
    Close,
}

/// The part of a session that rooms talk to.
///
/// The outbox is a plain list behind a lock rather than a channel: a push is
/// one uncontended lock and at most one wake-up (the waker is taken by the
/// first push after the session went to sleep), the session takes the whole
/// list at once, and an idle session holds no list at all.
pub struct SessionHandle {
    /// Unique per connection in this process.
    pub id: SessionId,
    /// The logged-in user.
    pub user: Arc<str>,
    outbox: Mutex<Outbox>,
    /// The session waiting for its outbox.
    waiting: AtomicWaker,
    capacity: usize,
    /// Set once when the outbox overflows; the session then closes with 1013.
    overflowed: AtomicBool,
    /// Wakes the session, even in the middle of a stalled write, when it
    /// must close.
    pub kicked: Notify,
    /// Set when the session must close for a reason of the server's (the
    /// account was deleted, its password changed, the server is stopping):
    /// the code and reason. The first reason given stands. Read on every
    /// wake-up of the session, so a plain atomic load.
    closing: OnceLock<(u16, &'static str)>,
}

#[derive(Default)]
struct Outbox {
    items: Vec<Outbound>,
    /// The session ended: nothing more is kept.
    ended: bool,
}

impl SessionHandle {
    /// A handle with an outbox of [`OUTBOX_FRAMES`].
    pub fn new(id: SessionId, user: Arc<str>) -> SessionHandle {
        Self::with_capacity(id, user, OUTBOX_FRAMES)
    }

    /// A handle whose outbox holds `capacity` frames.
    pub fn with_capacity(id: SessionId, user: Arc<str>, capacity: usize) -> SessionHandle {
        SessionHandle {
            id,
            user,
            outbox: Mutex::default(),
            waiting: AtomicWaker::new(),
            capacity,
            overflowed: AtomicBool::new(false),
            kicked: Notify::new(),
            closing: OnceLock::new(),
        }
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the session to close with `code` and `reason` as soon as it
    /// can (at once if it is stalled in a write).
    pub fn close(&self, code: u16, reason: &'static str) {
        let _ = self.closing.set((code, reason));
        // Wakes the session's loop; a full outbox closes it anyway.
        self.push(Outbound::Close);
        self.kicked.notify_one();
    }

    /// The close asked for by [`SessionHandle::close`], if any.
    pub fn closing(&self) -> Option<(u16, &'static str)> {
        self.closing.get().copied()
    }

    /// Queues a frame without waiting. A full outbox means the client fell
    /// too far behind: the session is told to close.
    pub fn push(&self, item: Outbound) {
        {
            let mut outbox = self.outbox();
            // After a dropped frame nothing more is taken: what came after
            // the gap must not reach the client.
            if outbox.ended || self.overflowed.load(Ordering::Relaxed) {
                return;
            }
            if outbox.items.len() >= self.capacity {
                self.overflowed.store(true, Ordering::Relaxed);
                drop(outbox);
                self.kicked.notify_one();
                self.waiting.wake();
                return;
            }
            outbox.items.push(item);
        }
        self.waiting.wake();
    }

    /// Everything in the outbox, in order, once there is something.
    pub fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Vec<Outbound>> {
        // Registered before looking, so that a push right after the look
        // wakes us.
        self.waiting.register(cx.waker());
        match self.take_now() {
            Some(items) => Poll::Ready(items),
            None => Poll::Pending,
        }
    }

    /// Everything in the outbox, if anything.
    pub fn take_now(&self) -> Option<Vec<Outbound>> {
        let mut outbox = self.outbox();
        (!outbox.items.is_empty()).then(|| std::mem::take(&mut outbox.items))
    }

    /// The session ended: what is queued is dropped, and so is what comes.
    pub fn end(&self) {
        let mut outbox = self.outbox();
        outbox.ended = true;
        outbox.items = Vec::new();
    }

    /// True once the outbox overflowed.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }
}

/// A request to read the events of a room after position `after`, up to
/// event index `upto`, from the store and deliver them: sent when a room
/// sees a gap.
#[derive(Debug)]
pub struct GapFill {
    pub room: String,
    pub room_id: RoomId,
    pub after: Position,
    pub upto: u64,
}

struct RoomState {
    /// The room's id in the store.
    room_id: RoomId,
    /// The room's name.
    name: String,
    members: Vec<Arc<SessionHandle>>,
    /// Every event up to here has been delivered.
    delivered: Position,
    /// Events that arrived ahead of a gap, by index, waiting for it to be
    /// filled.
    ahead: BTreeMap<u64, Stored>,
    /// A gap fill for this room is under way.
    filling: bool,
    /// Everything up to here is known to be stored and must be delivered.
    fill_upto: u64,
    /// When each user's last `typing` was relayed: at most one per
    /// [`TYPING_EVERY`], so a client cannot make the room fan out at will.
    typing: HashMap<Arc<str>, Instant>,
}

impl RoomState {
    fn fan_out(&self, frame: &Frame, except_user: Option<&str>) {
        for member in &self.members {
            if except_user != Some(&*member.user) {
                member.push(Outbound::RoomEvent {
                    room_id: self.room_id,
                    frame: frame.clone(),
                });
            }
        }
    }

    fn has_user(&self, user: &str) -> bool {
        self.members.iter().any(|m| &*m.user == user)
    }

    fn distinct_users(&self) -> Vec<String> {
        let mut users: Vec<String> = self.members.iter().map(|m| m.user.to_string()).collect();
        users.sort();
        users.dedup();
        users
    }

    /// The index of the next event to deliver.
    fn next_index(&self) -> u64 {
        self.delivered.index() + 1
    }

    /// Delivers `stored`, the next in order, as `frame`. The session that
    /// asked for a change gets its copy with the request's `re`: that copy
    /// is the answer.
    fn deliver_in_order(&mut self, stored: &Stored, frame: Frame) {
        let item = |frame: Frame| match &stored.event {
            RoomEvent::Message(message) => Outbound::Room {
                room_id: self.room_id,
                seq: Some(message.seq),
                frame,
            },
            _ => Outbound::Change {
                room_id: self.room_id,
                rev: stored.at.rev,
                frame,
            },
        };
        let shared = item(frame);
        for member in &self.members {
            match &stored.answer {
                Some(answer) if answer.session == member.id => {
                    member.push(item(answer_frame(stored)));
                }
                _ => member.push(shared.clone()),
            }
        }
        self.delivered = stored.at;
    }

    fn flush_ahead(&mut self) {
        while let Some(next) = self.ahead.remove(&self.next_index()) {
            let frame = event_frame(&next);
            self.deliver_in_order(&next, frame);
        }
    }
}

/// A change as the session that asked for it gets it: with `re`.
fn answer_frame(stored: &Stored) -> Frame {
    let mut event = stored.to_server_event();
    if let (
        ServerEvent::Edited { re, .. }
        | ServerEvent::Deleted { re, .. }
        | ServerEvent::Reaction { re, .. },
        Some(answer),
    ) = (&mut event, &stored.answer)
    {
        re.clone_from(&answer.re);
    }
    frame(&event)
}

/// How a gap fill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillOutcome {
    /// The store could not be read: the fill is asked for again.
    Failed,
    /// Everything the store had in the range was delivered. `stored_last`
    /// is the room's newest stored position, read after the range when the
    /// store lacked part of it (`None`: the room is gone, or nothing was
    /// missing).
    Read { stored_last: Option<Position> },
}

/// What [`Rooms::join`] tells the session.
pub struct JoinPoint {
    /// Newest message the joiner gets from the store; later ones come live.
    pub last_seq: u64,
    /// Changes up to this `rev` are in the store's state of the messages;
    /// later ones come live.
    pub rev: u64,
    /// This is the user's first connection in the room on this process.
    pub first_local: bool,
    /// The session was not a member before.
    pub added: bool,
}

/// All rooms with members on this process.
pub struct Rooms {
    rooms: Mutex<HashMap<String, RoomState>>,
    gaps: mpsc::UnboundedSender<GapFill>,
}

impl Rooms {
    /// Rooms, and the receiving end of gap-fill requests (to be served by a
    /// task that reads the store and calls [`Rooms::deliver`]).
    pub fn new() -> (Rooms, mpsc::UnboundedReceiver<GapFill>) {
        let (gaps, gap_requests) = mpsc::unbounded_channel();
        (
            Rooms {
                rooms: Mutex::new(HashMap::new()),
                gaps,
            },
            gap_requests,
        )
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, RoomState>> {
        // A panic elsewhere while holding the lock must not take every room
        // down with it: the map stays usable.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a session to the room `room_id` named `room`, whose newest stored
    /// position was `stored` when read just before. `None` when the room
    /// was meanwhile replaced by a newer one of the same name: read again.
    pub fn join(
        &self,
        room: &str,
        room_id: RoomId,
        session: &Arc<SessionHandle>,
        stored: Position,
    ) -> Option<JoinPoint> {
        let mut rooms = self.lock();
        if let Some(state) = rooms.get(room) {
            if state.room_id > room_id {
                return None;
            }
            if state.room_id < room_id {
                // Its deletion has not reached us yet; it is gone all the same.
                Self::drop_room(&mut rooms, room, Some(session.id));
            }
        }
        let state = rooms.entry(room.to_owned()).or_insert_with(|| RoomState {
            room_id,
            name: room.to_owned(),
            members: Vec::new(),
            delivered: stored,
            ahead: BTreeMap::new(),
            filling: false,
            fill_upto: 0,
            typing: HashMap::new(),
        });
        let first_local = !state.has_user(&session.user);
        let added = !state.members.iter().any(|m| m.id == session.id);
        if added {
            state.members.push(session.clone());
        }
        Some(JoinPoint {
            last_seq: state.delivered.seq,
            rev: state.delivered.rev,
            first_local,
            added,
        })
    }

    /// Removes a session from a room. `None` when it was not a member;
    /// otherwise whether that was the user's last connection in the room.
    pub fn leave(&self, room: &str, session_id: SessionId) -> Option<bool> {
        let mut rooms = self.lock();
        let state = rooms.get_mut(room)?;
        let at = state.members.iter().position(|m| m.id == session_id)?;
        let gone = state.members.swap_remove(at);
        let last_of_user = !state.has_user(&gone.user);
        if last_of_user {
            state.typing.remove(&gone.user);
        }
        if state.members.is_empty() {
            // Nobody left to deliver to: a later join starts afresh from the
            // store instead of from a delivery point that stopped moving.
            rooms.remove(room);
        }
        Some(last_of_user)
    }

    /// True when the session is a member of the room.
    #[cfg(test)]
    pub fn is_member(&self, room: &str, session_id: SessionId) -> bool {
        self.lock()
            .get(room)
            .is_some_and(|s| s.members.iter().any(|m| m.id == session_id))
    }

    /// Users with a connection in the room on this process, sorted.
    pub fn local_users(&self, room: &str) -> Vec<String> {
        self.lock()
            .get(room)
            .map(RoomState::distinct_users)
            .unwrap_or_default()
    }

    /// For every room with members here: its distinct users.
    pub fn local_members(&self) -> HashMap<String, Vec<String>> {
        self.lock()
            .iter()
            .map(|(name, s)| (name.clone(), s.distinct_users()))
            .collect()
    }

    /// Names and ids of the rooms that have members on this process.
    pub fn occupied(&self) -> Vec<(String, RoomId)> {
        self.lock()
            .iter()
            .map(|(name, s)| (name.clone(), s.room_id))
            .collect()
    }

    /// Sends an event to every member of the room, except the connections
    /// of `except_user`.
    pub fn broadcast(&self, room: &str, frame: &Frame, except_user: Option<&str>) {
        if let Some(state) = self.lock().get(room) {
            state.fan_out(frame, except_user);
        }
    }

    /// Tells the room's other members that `user` arrived or left; returns
    /// the event (for other nodes).
    pub fn announce_presence(&self, room: &str, user: &str, state: PresenceState) -> ServerEvent {
        let event = ServerEvent::Presence {
            room: room.to_owned(),
            user: user.to_owned(),
            state,
        };
        self.broadcast(room, &frame(&event), Some(user));
        event
    }

    /// Tells the other members of room `room_id` that `user` is typing,
    /// unless they were told less than [`TYPING_EVERY`] ago; returns the
    /// event when it was relayed (for other nodes).
    pub fn announce_typing(
        &self,
        room: &str,
        room_id: RoomId,
        user: &Arc<str>,
    ) -> Option<ServerEvent> {
        let mut rooms = self.lock();
        let state = rooms.get_mut(room).filter(|s| s.room_id == room_id)?;
        let now = Instant::now();
        if state
            .typing
            .get(user)
            .is_some_and(|last| now.duration_since(*last) < TYPING_EVERY)
        {
            return None;
        }
        state.typing.insert(user.clone(), now);
        let event = ServerEvent::Typing {
            room: room.to_owned(),
            user: user.to_string(),
        };
        state.fan_out(&frame(&event), Some(user));
        Some(event)
    }

    /// Forgets a room (deleted) and tells its members, but `except_session`.
    fn drop_room(
        rooms: &mut HashMap<String, RoomState>,
        room: &str,
        except_session: Option<SessionId>,
    ) {
        if let Some(state) = rooms.remove(room) {
            let item = Outbound::Room {
                room_id: state.room_id,
                seq: None,
                frame: frame(&ServerEvent::RoomDeleted {
                    room: room.to_owned(),
                    re: None,
                }),
            };
            for member in &state.members {
                if Some(member.id) != except_session {
                    member.push(item.clone());
                }
            }
        }
    }

    /// Forgets the deleted room `room_id` (or an older one of that name);
    /// its members (but `except_session`) receive `room_deleted`.
    pub fn remove(&self, room: &str, room_id: RoomId, except_session: Option<SessionId>) {
        let mut rooms = self.lock();
        if rooms.get(room).is_some_and(|s| s.room_id <= room_id) {
            Self::drop_room(&mut rooms, room, except_session);
        }
    }

    /// Delivers a stored event to the room's members, in order.
    pub fn deliver(&self, stored: &Stored) {
        self.deliver_all(std::slice::from_ref(stored));
    }

    /// Delivers stored events (of any rooms) to their rooms' members, each
    /// room in order.
    pub fn deliver_all(&self, batch: &[Stored]) {
        // Encoded before the lock is taken, which every room's delivery and
        // every join and leave share: an event nobody here wants (rare) is
        // encoded for nothing.
        let frames: Vec<Frame> = batch.iter().map(event_frame).collect();
        let mut rooms = self.lock();
        for (stored, frame) in batch.iter().zip(frames) {
            self.deliver_locked(&mut rooms, stored, frame);
        }
    }

    fn deliver_locked(
        &self,
        rooms: &mut HashMap<String, RoomState>,
        stored: &Stored,
        frame: Frame,
    ) {
        let Some(state) = rooms.get_mut(&stored.room) else {
            return; // nobody here to tell
        };
        if state.room_id != stored.room_id {
            if state.room_id < stored.room_id {
                // A newer room of that name exists: ours was deleted.
                Self::drop_room(rooms, &stored.room, None);
            }
            return;
        }
        let index = stored.at.index();
        let next = state.next_index();
        if index < next {
            // Already delivered (read back by a gap fill before its commit
            // was announced). The session that asked for it still gets its
            // answer, even if that makes a second copy.
            if let Some(answer) = &stored.answer {
                if let Some(member) = state.members.iter().find(|m| m.id == answer.session) {
                    member.push(Outbound::Event(answer_frame(stored)));
                }
            }
            return;
        }
        if index > next {
            state.ahead.insert(index, stored.clone());
            self.request_fill(state, index - 1);
            return;
        }
        state.deliver_in_order(stored, frame);
        state.flush_ahead();
    }

    /// Called when a gap fill up to `upto` finished, its messages already
    /// passed to [`Rooms::deliver`]. After a store error the fill is
    /// requested again. What the store did not have is settled by
    /// [`FillOutcome::Read`].
    pub fn gap_filled(&self, room: &str, room_id: RoomId, upto: u64, outcome: FillOutcome) {
        let mut rooms = self.lock();
        let Some(state) = rooms.get_mut(room).filter(|s| s.room_id == room_id) else {
            return;
        };
        state.filling = false;
        match outcome {
            FillOutcome::Failed => {}
            FillOutcome::Read { stored_last } => {
                // Up to here the store has (or had) every event.
                let stored_upto = stored_last.map_or(upto, |last| last.index().min(upto));
                if state.next_index() <= stored_upto {
                    tracing::warn!(
                        room = %crate::untrusted::Untrusted(room),
                        from = state.next_index(),
                        to = stored_upto,
                        "messages or changes missing from the store; skipping"
                    );
                    // Where the skip lands is known exactly when it lands
                    // on the store's head; otherwise (the room is gone)
                    // the skipped events are counted as messages.
                    state.delivered = match stored_last {
                        Some(last) if last.index() == stored_upto => last,
                        _ => Position {
                            seq: state.delivered.seq + (stored_upto + 1 - state.next_index()),
                            rev: state.delivered.rev,
                        },
                    };
                    let next = state.next_index();
                    state.ahead.retain(|&index, _| index >= next);
                    state.flush_ahead();
                }
                if let Some(last) = stored_last
                    .map(Position::index)
                    .filter(|&last| last <= upto)
                {
                    // The event that asked for this fill (index upto + 1)
                    // arrived before the fill began, yet the store, read
                    // after, does not have it: nobody stored it. Dropped,
                    // or a forged position far ahead would make the room
                    // skip the real events it claims to be after.
                    if state.ahead.remove(&(upto + 1)).is_some() {
                        tracing::warn!(
                            room = %crate::untrusted::Untrusted(room),
                            index = upto + 1,
                            stored = last,
                            "discarding a message the store does not have, or a change"
                        );
                    }
                    // A wider fill asked for meanwhile (by a join that read a
                    // newer head) stands.
                    if state.fill_upto <= upto {
                        state.fill_upto = state.fill_upto.min(last);
                    }
                }
            }
        }
        let wanted = state
            .ahead
            .keys()
            .next()
            .map_or(state.fill_upto, |&first| first - 1)
            .max(state.fill_upto);
        if wanted >= state.next_index() {
            self.request_fill(state, wanted);
        }
    }

    /// Makes sure every event up to index `upto` (known to be stored) gets
    /// delivered, reading from the store what has not arrived.
    pub fn catch_up(&self, room: &str, room_id: RoomId, upto: u64) {
        let mut rooms = self.lock();
        if let Some(state) = rooms.get_mut(room).filter(|s| s.room_id == room_id) {
            if state.next_index() <= upto {
                self.request_fill(state, upto);
            }
        }
    }

    fn request_fill(&self, state: &mut RoomState, upto: u64) {
        state.fill_upto = state.fill_upto.max(upto);
        if !state.filling {
            state.filling = true;
            let _ = self.gaps.send(GapFill {
                room: state.name.clone(),
                room_id: state.room_id,
                after: state.delivered,
                upto: state.fill_upto,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member whose outbox holds 4 frames, and a second handle on it
    /// for reading the outbox.
    fn member(id: u64, user: &str) -> (Arc<SessionHandle>, Arc<SessionHandle>) {
        let handle = Arc::new(SessionHandle::with_capacity(SessionId(id), user.into(), 4));
        (handle.clone(), handle)
    }

    fn msg(room_id: i64, seq: u64) -> Stored {
        msg_at(room_id, seq, 0)
    }

    /// Message `seq`, stored when the room's rev was `rev`.
    fn msg_at(room_id: i64, seq: u64, rev: u64) -> Stored {
        Stored {
            room_id: RoomId(room_id),
            room: "r".into(),
            at: Position { seq, rev },
            event: RoomEvent::Message(chat_proto::MessageRecord {
                room: "r".into(),
                seq,
                user: "u".into(),
                text: format!("m{seq}"),
                ts: 0,
                ..Default::default()
            }),
            answer: None,
        }
    }

    /// A deletion of message 1 making the room's rev `rev`, when its
    /// newest message was `seq`.
    fn change_at(seq: u64, rev: u64) -> Stored {
        Stored {
            room_id: RoomId(1),
            room: "r".into(),
            at: Position { seq, rev },
            event: RoomEvent::Deleted { seq: 1 },
            answer: None,
        }
    }

    fn at(seq: u64) -> Position {
        Position { seq, rev: 0 }
    }

    fn seqs(rx: &mut Arc<SessionHandle>) -> Vec<u64> {
        let mut out = Vec::new();
        for item in rx.take_now().unwrap_or_default() {
            if let Outbound::Room {
                seq: Some(seq),
                frame,
                ..
            } = item
            {
                assert!(matches!(
                    chat_proto::decode_server(crate::wire::payload(&frame)),
                    Ok(ServerEvent::Message(m)) if m.seq == seq
                ));
                out.push(seq);
            }
        }
        out
    }

    fn events(rx: &mut Arc<SessionHandle>) -> Vec<ServerEvent> {
        let mut out = Vec::new();
        for item in rx.take_now().unwrap_or_default() {
            let frame = match item {
                Outbound::Event(frame)
                | Outbound::Left { frame, .. }
                | Outbound::RoomEvent { frame, .. } => frame,
                Outbound::Room {
                    seq: None, frame, ..
                } => frame,
                Outbound::Room { .. } | Outbound::Change { .. } | Outbound::Close => continue,
            };
            out.push(chat_proto::decode_server(crate::wire::payload(&frame)).unwrap());
        }
        out
    }

    #[test]
    fn delivers_in_order_and_drops_duplicates() {
        let (rooms, mut gaps) = Rooms::new();
        let (alice, mut rx) = member(1, "alice");
        assert_eq!(
            rooms.join("r", RoomId(1), &alice, at(2)).unwrap().last_seq,
            2
        );
        rooms.deliver(&msg(1, 2)); // older than the join point
        rooms.deliver(&msg(1, 3));
        rooms.deliver(&msg(1, 3));
        rooms.deliver(&msg(1, 5)); // ahead of a gap: held
        rooms.deliver(&msg(1, 7));
        assert_eq!(seqs(&mut rx), vec![3]);
        let gap = gaps.try_recv().unwrap();
        assert_eq!((gap.after.index(), gap.upto), (3, 4));
        assert!(gaps.try_recv().is_err(), "one fill at a time");
        rooms.deliver(&msg(1, 4));
        rooms.gap_filled("r", RoomId(1), 4, FillOutcome::Read { stored_last: None });
        assert_eq!(seqs(&mut rx), vec![4, 5]);
        // 6 is still missing: another fill is asked for.
        let gap = gaps.try_recv().unwrap();
        assert_eq!((gap.after.index(), gap.upto), (5, 6));
        // The store has lost 6 (room deleted): skip rather than stall.
        rooms.gap_filled("r", RoomId(1), 6, FillOutcome::Read { stored_last: None });
        assert_eq!(seqs(&mut rx), vec![7]);
    }

    #[test]
    fn changes_and_messages_are_delivered_in_one_order() {
        let (rooms, mut gaps) = Rooms::new();
        let (alice, rx) = member(1, "alice");
        let point = rooms.join("r", RoomId(1), &alice, at(1)).unwrap();
        assert_eq!((point.last_seq, point.rev), (1, 0));
        // Stored in this order: change rev 1 (room at seq 1), message 2,
        // change rev 2. Message 2 arrives first: held until rev 1 is in.
        rooms.deliver(&msg_at(1, 2, 1));
        let gap = gaps.try_recv().unwrap();
        assert_eq!((gap.after, gap.upto), (at(1), 2));
        rooms.deliver(&change_at(2, 2));
        rooms.deliver(&change_at(1, 1));
        let order: Vec<(Option<u64>, Option<u64>)> = rx
            .take_now()
            .unwrap()
            .into_iter()
            .map(|item| match item {
                Outbound::Room { seq, .. } => (seq, None),
                Outbound::Change { rev, .. } => (None, Some(rev)),
                _ => (None, None),
            })
            .collect();
        assert_eq!(
            order,
            vec![(None, Some(1)), (Some(2), None), (None, Some(2))]
        );
        // A later joiner starts after all three.
        let (bob, _) = member(2, "bob");
        let point = rooms.join("r", RoomId(1), &bob, at(1)).unwrap();
        assert_eq!((point.last_seq, point.rev), (2, 2));
        // The one who asked gets its copy with its request's id.
        let mut asked = change_at(2, 3);
        asked.answer = Some(crate::store::Answer {
            session: SessionId(2),
            re: Some("d1".into()),
        });
        rooms.deliver(&asked);
        let frames = |h: &Arc<SessionHandle>| -> Vec<String> {
            h.take_now()
                .unwrap()
                .into_iter()
                .filter_map(|item| match item {
                    Outbound::Change { frame, .. } => Some(crate::wire::payload(&frame).to_owned()),
                    _ => None,
                })
                .collect()
        };
        assert!(frames(&bob)[0].contains(r#""re":"d1""#));
        assert!(!frames(&alice)[0].contains(r#""re""#));
    }

    #[test]
    fn a_failed_fill_is_asked_for_again() {
        let (rooms, mut gaps) = Rooms::new();
        let (alice, mut rx) = member(1, "alice");
        rooms.join("r", RoomId(1), &alice, at(0));
        rooms.catch_up("r", RoomId(1), 3);
        assert_eq!(gaps.try_recv().unwrap().upto, 3);
        rooms.catch_up("r", RoomId(1), 4); // while the first is under way
        rooms.gap_filled("r", RoomId(1), 3, FillOutcome::Failed);
        let again = gaps.try_recv().unwrap();
        assert_eq!((again.after.index(), again.upto), (0, 4));
        for seq in 1..=4 {
            rooms.deliver(&msg(1, seq));
        }
        rooms.gap_filled("r", RoomId(1), 4, FillOutcome::Read { stored_last: None });
        assert_eq!(seqs(&mut rx), vec![1, 2, 3, 4]);
        assert!(gaps.try_recv().is_err());
    }

    #[test]
    fn a_message_the_store_does_not_have_cannot_make_the_room_skip() {
        let (rooms, mut gaps) = Rooms::new();
        let (alice, mut rx) = member(1, "alice");
        rooms.join("r", RoomId(1), &alice, at(2));
        // A forged seq far ahead (from a hostile Redis).
        rooms.deliver(&msg(1, 1000));
        let gap = gaps.try_recv().unwrap();
        assert_eq!((gap.after.index(), gap.upto), (2, 999));
        // The store has nothing past 2: the forged message is dropped and
        // nothing is skipped.
        rooms.gap_filled(
            "r",
            RoomId(1),
            999,
            FillOutcome::Read {
                stored_last: Some(at(2)),
            },
        );
        assert!(gaps.try_recv().is_err(), "nothing left to fill");
        rooms.deliver(&msg(1, 3));
        rooms.deliver(&msg(1, 4));
        assert_eq!(seqs(&mut rx), vec![3, 4]);
        rooms.deliver(&msg(1, 1000));
        assert!(seqs(&mut rx).is_empty());
    }

    #[test]
    fn rooms_are_told_apart_by_id() {
        let (rooms, _gaps) = Rooms::new();
        let (alice, mut rx) = member(1, "alice");
        rooms.join("r", RoomId(2), &alice, at(10));
        rooms.deliver(&msg(1, 11)); // from the deleted room 1
        assert!(seqs(&mut rx).is_empty());
        assert!(
            rooms.join("r", RoomId(1), &alice, at(10)).is_none(),
            "stale read"
        );
        rooms.remove("r", RoomId(1), None); // late deletion of room 1
        assert!(rooms.is_member("r", SessionId(1)));
        rooms.deliver(&msg(3, 1)); // room 2 was deleted, 3 replaced it
        assert!(matches!(
            events(&mut rx).as_slice(),
            [ServerEvent::RoomDeleted { .. }]
        ));
        assert!(!rooms.is_member("r", SessionId(1)));
    }

    #[test]
    fn a_waiting_session_is_woken_once_and_takes_everything_in_order() {
        use futures_util::task::{waker, ArcWake};
        use std::sync::atomic::AtomicUsize;

        struct Count(AtomicUsize);
        impl ArcWake for Count {
            fn wake_by_ref(this: &Arc<Self>) {
                this.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let waker = waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let (handle, _) = member(1, "alice");
        assert!(handle.poll_take(&mut cx).is_pending());
        let event = |n: u64| Outbound::Room {
            room_id: RoomId(1),
            seq: Some(n),
            frame: Frame::new(),
        };
        handle.push(event(1));
        handle.push(event(2));
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1, "one wake-up for both");
        let Poll::Ready(items) = handle.poll_take(&mut cx) else {
            panic!("the outbox had two frames");
        };
        let seqs: Vec<_> = items
            .iter()
            .map(|i| match i {
                Outbound::Room { seq, .. } => *seq,
                _ => None,
            })
            .collect();
        assert_eq!(seqs, vec![Some(1), Some(2)]);
        assert!(handle.take_now().is_none());
        // Once ended, nothing more is kept.
        handle.end();
        handle.push(event(3));
        assert!(handle.take_now().is_none());
    }

    #[test]
    fn full_outbox_kicks_the_member_only() {
        let (rooms, _gaps) = Rooms::new();
        let (slow, _slow_rx) = member(1, "slow");
        let (fast, mut fast_rx) = member(2, "fast");
        rooms.join("r", RoomId(1), &slow, at(0));
        rooms.join("r", RoomId(1), &fast, at(0));
        for seq in 1..=4 {
            rooms.deliver(&msg(1, seq));
            seqs(&mut fast_rx);
        }
        assert!(!slow.overflowed());
        rooms.deliver(&msg(1, 5));
        assert!(slow.overflowed());
        assert!(!fast.overflowed());
        // Once a frame was dropped, nothing after the gap is kept, even
        // with room again: the client resumes from what it has.
        assert_eq!(slow.take_now().map(|items| items.len()), Some(4));
        rooms.deliver(&msg(1, 6));
        assert!(slow.take_now().is_none());
    }

    #[test]
    fn presence_counts_connections_per_user_and_empty_rooms_are_forgotten() {
        let (rooms, _gaps) = Rooms::new();
        let (a1, _r1) = member(1, "alice");
        let (a2, _r2) = member(2, "alice");
        assert!(rooms.join("r", RoomId(1), &a1, at(0)).unwrap().first_local);
        assert!(!rooms.join("r", RoomId(1), &a2, at(0)).unwrap().first_local);
        assert!(!rooms.join("r", RoomId(1), &a2, at(0)).unwrap().first_local);
        assert_eq!(rooms.local_users("r"), vec!["alice"]);
        assert_eq!(rooms.leave("r", SessionId(1)), Some(false));
        assert_eq!(rooms.leave("r", SessionId(1)), None);
        assert_eq!(rooms.leave("r", SessionId(2)), Some(true));
        assert!(rooms.occupied().is_empty());
        // A later join starts from the store's view, not a stale one.
        assert_eq!(
            rooms.join("r", RoomId(1), &a1, at(40)).unwrap().last_seq,
            40
        );
    }
}
