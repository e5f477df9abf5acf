//! The broker: how events reach members on other server processes.
//!
//! Standalone (the default) there are no other processes and everything is
//! delivered through [`Rooms`] directly. In cluster mode ([`crate::cluster`])
//! messages, presence, typing and room deletions also travel through Redis,
//! and member lists are read from Redis so they cover every node. The
//! session code calls the same methods either way.

use std::collections::HashMap;
use std::sync::Arc;

use chat_proto::{PresenceState, ServerEvent};

use crate::cluster::Cluster;
use crate::rooms::{frame, Rooms};
use crate::store::{CommitListener, Stored};

/// Routes room events to local members and, in cluster mode, to other nodes.
pub struct Broker {
    rooms: Arc<Rooms>,
    cluster: Option<Arc<Cluster>>,
}

impl Broker {
    /// A standalone broker: this process is the whole server.
    pub fn standalone(rooms: Arc<Rooms>) -> Broker {
        Broker {
            rooms,
            cluster: None,
        }
    }

    /// A broker for one node of a cluster.
    pub fn clustered(rooms: Arc<Rooms>, cluster: Arc<Cluster>) -> Broker {
        Broker {
            rooms,
            cluster: Some(cluster),
        }
    }

    /// Makes sure this node hears about the room's events from other nodes
    /// before a local member joins it.
    pub async fn watch_room(&self, room: &str) {
        if let Some(cluster) = &self.cluster {
            cluster.watch_room(room).await;
        }
    }

    /// A user's first connection on this node joined `room`.
    pub async fn user_joined(&self, room: &str, user: &str) {
        match &self.cluster {
            None => self.announce(room, user, PresenceState::Joined),
            Some(cluster) => cluster.user_joined(room, user).await,
        }
    }

    /// A user's last connection on this node left `room`.
    pub async fn user_left(&self, room: &str, user: &str) {
        match &self.cluster {
            None => self.announce(room, user, PresenceState::Left),
            Some(cluster) => cluster.user_left(room, user).await,
        }
    }

    fn announce(&self, room: &str, user: &str, state: PresenceState) {
        let event = ServerEvent::Presence {
            room: room.to_owned(),
            user: user.to_owned(),
            state,
        };
        self.rooms.broadcast(room, &frame(&event), Some(user));
    }

    /// Users online in the room, on every node, sorted.
    pub async fn members(&self, room: &str) -> Vec<String> {
        match &self.cluster {
            None => self.rooms.local_users(room),
            Some(cluster) => cluster.members(room).await,
        }
    }

    /// Online users per room, on every node (rooms with nobody are absent).
    pub async fn member_counts(&self) -> HashMap<String, u64> {
        match &self.cluster {
            None => self
                .rooms
                .local_members()
                .into_iter()
                .map(|(room, users)| (room, users.len() as u64))
                .collect(),
            Some(cluster) => cluster.member_counts().await,
        }
    }

    /// Relays `typing` to the room's other members.
    pub async fn typing(&self, room: &str, user: &str) {
        let event = ServerEvent::Typing {
            room: room.to_owned(),
            user: user.to_owned(),
        };
        self.rooms.broadcast(room, &frame(&event), Some(user));
        if let Some(cluster) = &self.cluster {
            cluster.publish_event(room, &event).await;
        }
    }

    /// Cluster bookkeeping after an admin deleted a room (its members here
    /// were told when the deletion committed).
    pub async fn room_deleted(&self, room: &str) {
        if let Some(cluster) = &self.cluster {
            cluster.forget_room(room).await;
        }
    }
}

impl CommitListener for Broker {
    fn messages_stored(&self, messages: &[Stored]) {
        for stored in messages {
            self.rooms.deliver(stored);
        }
        if let Some(cluster) = &self.cluster {
            cluster.publish_messages(messages);
        }
    }

    fn room_deleted(&self, room: &str, room_id: i64, requested_by: u64) {
        // The admin who asked is answered directly, with `re`.
        self.rooms.remove(room, room_id, Some(requested_by));
        if let Some(cluster) = &self.cluster {
            cluster.publish_deleted(room, room_id);
        }
    }
}
