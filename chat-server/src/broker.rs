//! The broker: how events reach members on other server processes.
//!
//! Standalone (the default) there are no other processes and everything is
//! delivered through [`Rooms`] directly. In cluster mode ([`crate::cluster`])
//! messages, presence, typing and room deletions also travel through Redis,
//! and member lists are read from Redis so they cover every node. The
//! session code calls the same methods either way.
//!
//! The store's writer thread hands each commit to the broker, which queues
//! it for one delivery task on the runtime: the writer goes straight back to
//! committing and answering acks, and the wake-ups of a fan-out to many
//! members are scheduled from a runtime thread (cheap, local) rather than
//! from outside it. One task, one queue: commit order is kept.

use std::collections::HashMap;
use std::sync::Arc;

use chat_proto::{PresenceState, ServerEvent};
use tokio::sync::mpsc;

use crate::cluster::Cluster;
use crate::rooms::{frame, Rooms};
use crate::store::{CommitListener, Stored};

/// Commits (batches of messages) waiting for delivery before the store's
/// writer waits.
const COMMIT_QUEUE: usize = 64;

/// Routes room events to local members and, in cluster mode, to other nodes.
pub struct Broker {
    rooms: Arc<Rooms>,
    cluster: Option<Arc<Cluster>>,
    /// Commits waiting for the delivery task, in commit order.
    commits: mpsc::Sender<Commit>,
}

/// What the store committed, for delivery.
enum Commit {
    Messages(Vec<Stored>),
    Deleted {
        room: String,
        room_id: i64,
        requested_by: u64,
    },
}

impl Broker {
    /// A broker for this process, standalone (`cluster` is `None`) or one
    /// node of a cluster. Starts its delivery task: call inside the runtime.
    pub fn new(rooms: Arc<Rooms>, cluster: Option<Arc<Cluster>>) -> Broker {
        let (commits, queue) = mpsc::channel(COMMIT_QUEUE);
        tokio::spawn(deliver_commits(queue, rooms.clone(), cluster.clone()));
        Broker {
            rooms,
            cluster,
            commits,
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
    fn messages_stored(&self, messages: Vec<Stored>) {
        // Blocking here (the writer is a plain thread) when delivery falls
        // behind slows acks down: backpressure on senders instead of a
        // queue that grows without bound.
        let _ = self
            .commits
            .blocking_send(Commit::Messages(messages.to_vec()));
    }

    fn room_deleted(&self, room: &str, room_id: i64, requested_by: u64) {
        let _ = self.commits.blocking_send(Commit::Deleted {
            room: room.to_owned(),
            room_id,
            requested_by,
        });
    }
}

/// Delivers commits to local members and publishes them to the cluster, in
/// commit order.
async fn deliver_commits(
    mut queue: mpsc::Receiver<Commit>,
    rooms: Arc<Rooms>,
    cluster: Option<Arc<Cluster>>,
) {
    while let Some(commit) = queue.recv().await {
        match commit {
            Commit::Messages(messages) => {
                for stored in &messages {
                    rooms.deliver(stored);
                }
                if let Some(cluster) = &cluster {
                    cluster.publish_messages(&messages);
                }
            }
            Commit::Deleted {
                room,
                room_id,
                requested_by,
            } => {
                // The admin who asked is answered directly, with `re`.
                rooms.remove(&room, room_id, Some(requested_by));
                if let Some(cluster) = &cluster {
                    cluster.publish_deleted(&room, room_id);
                }
            }
        }
    }
}
