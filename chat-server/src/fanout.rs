//! Fan-out: how room events reach members, on this node and on the others.
//!
//! One interface, two implementations picked once at start:
//! - [`LocalFanout`]: a single node; every member is in this process's
//!   [`Rooms`].
//! - [`crate::cluster::Cluster`]: one node of several sharing rooms through
//!   Redis; presence and member lists cover every node.
//!
//! Stored messages reach local members through the hub's delivery of the
//! store's commit feed; [`Fanout::publish`] then carries the same commit to
//! the other nodes (a no-op when there are none).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chat_proto::PresenceState;
use serde::{Deserialize, Serialize};

use crate::rooms::Rooms;
use crate::store::{Commit, RoomId};

/// An event for every connection of one user, wherever it is connected
/// (protocol part 2): another device of theirs moved a read marker, or left
/// a room for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UserEvent {
    /// The user's read marker of `room` is now `seq`.
    Read { room: String, seq: u64 },
    /// The user left `room` for good: every connection leaves it.
    Forgot { room: String },
    /// The user became a member of the private room `room`, by `by`.
    Invited { room: String, by: String },
}

/// Where room events go besides this node's members.
#[async_trait]
pub trait Fanout: Send + Sync + 'static {
    /// Makes sure this node hears about the room's events from other nodes
    /// before a local member joins it.
    async fn watch_room(&self, room: &str);
    /// A user's first connection on this node joined `room`: announce it.
    async fn user_joined(&self, room: &str, user: &str);
    /// A user's last connection on this node left `room`: announce it.
    async fn user_left(&self, room: &str, user: &str);
    /// Users online in the room, on every node, sorted.
    async fn members(&self, room: &str) -> Vec<String>;
    /// Online users per room, on every node (rooms with nobody are absent).
    async fn member_counts(&self) -> HashMap<String, u64>;
    /// Relays `typing` to the other members of room `room_id`, here and
    /// elsewhere, at most once per user per [`crate::rooms::TYPING_EVERY`].
    async fn typing(&self, room: &str, room_id: RoomId, user: &Arc<str>);
    /// A commit of this node, already delivered here: tell the other nodes.
    /// Must not wait (it runs on the delivery path).
    fn publish(&self, commit: &Commit);
    /// Bookkeeping after this node deleted a room (its members here were
    /// told when the deletion committed).
    async fn room_deleted(&self, room: &str);
    /// Carries `event` to the user's connections on the other nodes (this
    /// node's were told by the hub). Must not wait.
    fn to_user(&self, user: &str, event: &UserEvent);
}

/// Fan-out of a single node: everything stays in [`Rooms`].
pub struct LocalFanout {
    rooms: Arc<Rooms>,
}

impl LocalFanout {
    pub fn new(rooms: Arc<Rooms>) -> LocalFanout {
        LocalFanout { rooms }
    }
}

#[async_trait]
impl Fanout for LocalFanout {
    async fn watch_room(&self, _room: &str) {}

    async fn user_joined(&self, room: &str, user: &str) {
        self.rooms
            .announce_presence(room, user, PresenceState::Joined);
    }

    async fn user_left(&self, room: &str, user: &str) {
        self.rooms
            .announce_presence(room, user, PresenceState::Left);
    }

    async fn members(&self, room: &str) -> Vec<String> {
        self.rooms.local_users(room)
    }

    async fn member_counts(&self) -> HashMap<String, u64> {
        self.rooms
            .local_members()
            .into_iter()
            .map(|(room, users)| (room, users.len() as u64))
            .collect()
    }

    async fn typing(&self, room: &str, room_id: RoomId, user: &Arc<str>) {
        self.rooms.announce_typing(room, room_id, user);
    }

    fn publish(&self, _commit: &Commit) {}

    async fn room_deleted(&self, _room: &str) {}

    fn to_user(&self, _user: &str, _event: &UserEvent) {}
}
