//! Rooms on this server process: who is a member, and delivery of events to
//! them in order.
//!
//! Each session has a bounded outbox; the room pushes ready-made frames into
//! it without waiting. A message is serialized to JSON once and the same
//! bytes (a reference-counted buffer) go to every member. A member whose
//! outbox is full is told to close with 1013 instead of slowing the room.
//!
//! Messages are delivered strictly in `seq` order. Each room remembers the
//! next `seq` it will deliver; a message from further ahead (possible only in
//! cluster mode, where messages also arrive through Redis) is held back while
//! the missing ones are read from the store, and one already delivered is
//! dropped. Because a member is registered at the room's current delivery
//! point, `joined.last_seq` splits a room cleanly: older messages come from
//! the store as `history`, newer ones live, none twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chat_proto::{encode, MessageRecord, ServerEvent};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A frame ready to write: JSON text shared by every recipient.
pub type Frame = Utf8Bytes;

/// Encodes an event once into a shareable frame.
pub fn frame(event: &ServerEvent) -> Frame {
    Utf8Bytes::from(encode(event))
}

/// The part of a session that rooms talk to.
pub struct SessionHandle {
    /// Unique per connection in this process.
    pub id: u64,
    /// The logged-in user.
    pub user: Arc<str>,
    outbox: mpsc::Sender<Frame>,
    /// Set once when the outbox overflows; the session then closes with 1013.
    overflowed: AtomicBool,
    /// Wakes the session when it must close.
    pub kicked: Notify,
}

impl SessionHandle {
    /// A handle whose frames go to `outbox`.
    pub fn new(id: u64, user: Arc<str>, outbox: mpsc::Sender<Frame>) -> SessionHandle {
        SessionHandle {
            id,
            user,
            outbox,
            overflowed: AtomicBool::new(false),
            kicked: Notify::new(),
        }
    }

    /// Queues a frame without waiting. A full outbox means the client fell
    /// too far behind: the session is told to close.
    pub fn push(&self, frame: Frame) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.outbox.try_send(frame) {
            if !self.overflowed.swap(true, Ordering::Relaxed) {
                self.kicked.notify_one();
            }
        }
    }

    /// True once the outbox overflowed.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }
}

/// A request to read messages `after < seq <= upto` of a room from the store
/// and deliver them: sent when a room sees a gap.
#[derive(Debug)]
pub struct GapFill {
    pub room: String,
    pub after: u64,
    pub upto: u64,
}

#[derive(Default)]
struct RoomState {
    members: Vec<Arc<SessionHandle>>,
    /// Every message below this has been delivered.
    next_seq: u64,
    /// Messages that arrived ahead of a gap, waiting for it to be filled.
    ahead: BTreeMap<u64, MessageRecord>,
    /// A gap fill for this room is under way.
    filling: bool,
}

impl RoomState {
    fn fan_out(&self, frame: &Frame, except_user: Option<&str>) {
        for member in &self.members {
            if except_user != Some(&*member.user) {
                member.push(frame.clone());
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
}

/// What [`Rooms::join`] tells the session.
pub struct JoinPoint {
    /// Newest message the joiner gets from the store; later ones come live.
    pub last_seq: u64,
    /// This is the user's first connection in the room on this process.
    pub first_local: bool,
}

/// All rooms with state on this process.
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

    /// Adds a session to a room. `stored_last_seq` is the room's newest
    /// stored `seq`, read before this call.
    pub fn join(
        &self,
        room: &str,
        session: &Arc<SessionHandle>,
        stored_last_seq: u64,
    ) -> JoinPoint {
        let mut rooms = self.lock();
        let state = rooms.entry(room.to_owned()).or_insert_with(|| RoomState {
            next_seq: stored_last_seq + 1,
            ..RoomState::default()
        });
        let first_local = !state.has_user(&session.user);
        if !state.members.iter().any(|m| m.id == session.id) {
            state.members.push(session.clone());
        }
        JoinPoint {
            last_seq: state.next_seq - 1,
            first_local,
        }
    }

    /// Removes a session from a room. `None` when it was not a member;
    /// otherwise whether that was the user's last connection in the room.
    pub fn leave(&self, room: &str, session_id: u64) -> Option<bool> {
        let mut rooms = self.lock();
        let state = rooms.get_mut(room)?;
        let at = state.members.iter().position(|m| m.id == session_id)?;
        let gone = state.members.swap_remove(at);
        Some(!state.has_user(&gone.user))
    }

    /// True when the session is a member of the room.
    pub fn is_member(&self, room: &str, session_id: u64) -> bool {
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
            .filter(|(_, s)| !s.members.is_empty())
            .map(|(name, s)| (name.clone(), s.distinct_users()))
            .collect()
    }

    /// Names of the rooms that have members on this process.
    pub fn occupied(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, s)| !s.members.is_empty())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Sends a frame to every member of the room, except the connections of
    /// `except_user`.
    pub fn broadcast(&self, room: &str, frame: &Frame, except_user: Option<&str>) {
        if let Some(state) = self.lock().get(room) {
            state.fan_out(frame, except_user);
        }
    }

    /// Forgets a deleted room; its members (but `except_session`) receive
    /// `frame`. Returns whether anyone was a member.
    pub fn remove(&self, room: &str, frame: &Frame, except_session: Option<u64>) {
        if let Some(state) = self.lock().remove(room) {
            for member in &state.members {
                if Some(member.id) != except_session {
                    member.push(frame.clone());
                }
            }
        }
    }

    /// Delivers a stored message to the room's members, in `seq` order.
    pub fn deliver(&self, message: &MessageRecord) {
        let mut rooms = self.lock();
        let state = rooms
            .entry(message.room.clone())
            .or_insert_with(|| RoomState {
                next_seq: message.seq,
                ..RoomState::default()
            });
        if message.seq < state.next_seq {
            return; // already delivered
        }
        if message.seq > state.next_seq {
            state.ahead.insert(message.seq, message.clone());
            self.request_fill(&message.room, state, message.seq - 1);
            return;
        }
        Self::deliver_in_order(state, message);
        while let Some(next) = state.ahead.remove(&state.next_seq) {
            Self::deliver_in_order(state, &next);
        }
    }

    fn deliver_in_order(state: &mut RoomState, message: &MessageRecord) {
        if !state.members.is_empty() {
            state.fan_out(&frame(&ServerEvent::Message(message.clone())), None);
        }
        state.next_seq = message.seq + 1;
    }

    /// Called when a gap fill up to `upto` finished (its messages already
    /// passed to [`Rooms::deliver`]). If the store did not have them (the
    /// room was deleted meanwhile), delivery skips past them rather than
    /// stall; if messages further ahead still wait behind a gap, another fill
    /// is requested.
    pub fn gap_filled(&self, room: &str, upto: u64) {
        let mut rooms = self.lock();
        let Some(state) = rooms.get_mut(room) else {
            return;
        };
        state.filling = false;
        if state.next_seq <= upto {
            tracing::warn!(
                room,
                from = state.next_seq,
                to = upto,
                "messages missing from the store; skipping"
            );
            state.next_seq = upto + 1;
        }
        state.ahead.retain(|&seq, _| seq >= state.next_seq);
        while let Some(next) = state.ahead.remove(&state.next_seq) {
            Self::deliver_in_order(state, &next);
        }
        if let Some(&first_ahead) = state.ahead.keys().next() {
            self.request_fill(room, state, first_ahead - 1);
        }
    }

    /// Makes sure everything up to `upto` (known to be stored) gets
    /// delivered, reading from the store what has not arrived.
    pub fn catch_up(&self, room: &str, upto: u64) {
        let mut rooms = self.lock();
        if let Some(state) = rooms.get_mut(room) {
            if state.next_seq <= upto {
                self.request_fill(room, state, upto);
            }
        }
    }

    fn request_fill(&self, room: &str, state: &mut RoomState, upto: u64) {
        if !state.filling {
            state.filling = true;
            let _ = self.gaps.send(GapFill {
                room: room.to_owned(),
                after: state.next_seq - 1,
                upto,
            });
        }
    }

    /// Next `seq` the room will deliver (for catch-up after a Redis outage).
    pub fn next_seq(&self, room: &str) -> Option<u64> {
        self.lock().get(room).map(|s| s.next_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, user: &str) -> (Arc<SessionHandle>, mpsc::Receiver<Frame>) {
        let (tx, rx) = mpsc::channel(4);
        (Arc::new(SessionHandle::new(id, user.into(), tx)), rx)
    }

    fn msg(seq: u64) -> MessageRecord {
        MessageRecord {
            room: "r".into(),
            seq,
            user: "u".into(),
            text: format!("m{seq}"),
            ts: 0,
        }
    }

    fn seqs(rx: &mut mpsc::Receiver<Frame>) -> Vec<u64> {
        let mut out = Vec::new();
        while let Ok(frame) = rx.try_recv() {
            if let Ok(ServerEvent::Message(m)) = chat_proto::decode_server(&frame) {
                out.push(m.seq);
            }
        }
        out
    }

    #[test]
    fn delivers_in_order_and_drops_duplicates() {
        let (rooms, mut gaps) = Rooms::new();
        let (alice, mut rx) = member(1, "alice");
        assert_eq!(rooms.join("r", &alice, 2).last_seq, 2);
        rooms.deliver(&msg(2)); // older than the join point
        rooms.deliver(&msg(3));
        rooms.deliver(&msg(3));
        rooms.deliver(&msg(5)); // ahead of a gap: held
        assert_eq!(seqs(&mut rx), vec![3]);
        let gap = gaps.try_recv().unwrap();
        assert_eq!((gap.after, gap.upto), (3, 4));
        rooms.deliver(&msg(4));
        rooms.gap_filled("r", 4);
        assert_eq!(seqs(&mut rx), vec![4, 5]);
    }

    #[test]
    fn full_outbox_kicks_the_member_only() {
        let (rooms, _gaps) = Rooms::new();
        let (slow, _slow_rx) = member(1, "slow");
        let (fast, mut fast_rx) = member(2, "fast");
        rooms.join("r", &slow, 0);
        rooms.join("r", &fast, 0);
        for seq in 1..=4 {
            rooms.deliver(&msg(seq));
            seqs(&mut fast_rx);
        }
        assert!(!slow.overflowed());
        rooms.deliver(&msg(5));
        assert!(slow.overflowed());
        assert!(!fast.overflowed());
    }

    #[test]
    fn presence_counts_connections_per_user() {
        let (rooms, _gaps) = Rooms::new();
        let (a1, _r1) = member(1, "alice");
        let (a2, _r2) = member(2, "alice");
        assert!(rooms.join("r", &a1, 0).first_local);
        assert!(!rooms.join("r", &a2, 0).first_local);
        assert!(!rooms.join("r", &a2, 0).first_local);
        assert_eq!(rooms.local_users("r"), vec!["alice"]);
        assert_eq!(rooms.leave("r", 1), Some(false));
        assert_eq!(rooms.leave("r", 1), None);
        assert_eq!(rooms.leave("r", 2), Some(true));
    }
}
