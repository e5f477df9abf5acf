//! Cluster mode: several server processes (nodes) share rooms through Redis.
//!
//! What travels through Redis:
//! - Pub/sub, one channel per room (`chat:room:NAME`): every stored message
//!   (published once, by the node that stored it), presence changes, typing
//!   and room deletions. A node subscribes once per room that has members on
//!   it, and unsubscribes when the last one leaves.
//! - Presence: a hash per room (`chat:presence:NAME`) with one field per
//!   (node, user). Lua scripts update it atomically and say whether a user's
//!   first connection in the cluster arrived or last one left.
//! - Pub/sub, one channel for every node (`chat:users`): events for all the
//!   connections of one user (a read marker moved, a room left for good),
//!   which every node delivers to that user's connections on it.
//! - Liveness: each node refreshes `chat:node:ID` (15 s TTL) every 5 s. A
//!   node whose key expired is reaped by one surviving node (a `SET NX`
//!   lock): its presence fields are removed and `left` is announced.
//!
//! What does not: messages themselves live in the shared SQLite file, which
//! numbers them. Redis only carries notifications, so a node that misses
//! some (Redis down, a late subscription) reads them from the store; the
//! rooms' in-order delivery ([`crate::rooms`]) turns gaps into store reads.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chat_proto::validate::{is_valid_emoji, is_valid_name, is_valid_room, normalize_text};
use chat_proto::{MessageRecord, PresenceState, ServerEvent};
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::fanout::{Fanout, UserEvent};
use crate::rooms::{frame, Rooms};
use crate::store::{Commit, Position, RoomEvent, RoomId, Store, Stored};
use crate::untrusted::{untrusted, Untrusted};

/// Bound on every Redis round trip: an outage must not stall a session.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
const NODE_TTL_MS: u64 = 15_000;
/// Envelopes waiting for the publisher before new ones are dropped.
const PUBLISH_QUEUE: usize = 65_536;
/// Most messages published in one pipeline.
const PUBLISH_BATCH: usize = 512;

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid Redis URL {url}: {source}")]
    BadUrl {
        url: String,
        source: redis::RedisError,
    },
    #[error("cannot reach Redis at {url}: {reason}")]
    Unreachable { url: String, reason: String },
}

/// What a node publishes on a room's channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Envelope {
    /// A message stored by `origin` in the room with id `room_id`, when
    /// the room's change counter was `rev`.
    Message {
        origin: String,
        room_id: i64,
        message: MessageRecord,
        #[serde(default)]
        rev: u64,
    },
    /// An edit, deletion or reaction stored by `origin` in the room with id
    /// `room_id`, which then stood at `seq` and `rev`.
    Change {
        origin: String,
        room_id: i64,
        seq: u64,
        rev: u64,
        change: RoomEvent,
    },
    /// An event for the room's members (presence, typing). `local_done`: the
    /// origin already delivered it to its own members.
    Event {
        origin: String,
        local_done: bool,
        except_user: Option<String>,
        event: ServerEvent,
    },
    /// An event for every connection of `user` (on `chat:users`).
    User {
        origin: String,
        user: String,
        event: UserEvent,
    },
    /// The room `room_id` was deleted by an admin on `origin`.
    Deleted {
        origin: String,
        room: String,
        room_id: i64,
    },
}

enum Subscription {
    Watch(String, oneshot::Sender<()>),
    Unwatch(String),
}

/// This node's link to the cluster.
pub struct Cluster {
    node: String,
    url: String,
    client: redis::Client,
    conn: ConnectionManager,
    rooms: Arc<Rooms>,
    /// Messages to publish, queued from the delivery path (never waits).
    publish: mpsc::Sender<(String, String)>,
    /// Set while the publish queue is full, so that is logged once.
    publish_full: AtomicBool,
    /// Requests to the subscriber task.
    subscriptions: mpsc::UnboundedSender<Subscription>,
    /// Set while Redis is unreachable, so the outage is logged once.
    down: AtomicBool,
    /// User events from other nodes, for the hub to deliver here.
    user_events: mpsc::Sender<(String, UserEvent)>,
    join_script: Script,
    leave_script: Script,
    reap_script: Script,
}

/// What is wrong with an envelope that arrived on the channel of `room`.
fn check_envelope(envelope: &Envelope, room: &str) -> Result<(), &'static str> {
    let name = |name: &str, what: &'static str| {
        if is_valid_name(name) {
            Ok(())
        } else {
            Err(what)
        }
    };
    if !is_valid_room(room) {
        return Err("not a room's channel");
    }
    // Text a client could not have sent (control characters, oversized)
    // is refused, not repaired.
    let text = |text: &str| {
        if normalize_text(text).as_deref() == Ok(text) {
            Ok(())
        } else {
            Err("invalid text")
        }
    };
    match envelope {
        Envelope::Message { message, .. } => {
            if message.room != room {
                return Err("a message for another room");
            }
            name(&message.user, "invalid user name")?;
            if message.seq == 0 {
                return Err("seq 0");
            }
            // Only a new message is published: nothing has changed it yet.
            if message.deleted || message.edited_ts.is_some() || !message.reactions.is_empty() {
                return Err("a message published with changes");
            }
            if message
                .reply_to
                .is_some_and(|to| to == 0 || to >= message.seq)
            {
                return Err("a reply to a later message");
            }
            text(&message.text)
        }
        Envelope::Change {
            seq, rev, change, ..
        } => {
            let target = match change {
                RoomEvent::Edited { seq, text: t, .. } => {
                    text(t)?;
                    *seq
                }
                RoomEvent::Deleted { seq } => *seq,
                RoomEvent::Reaction {
                    seq, user, emoji, ..
                } => {
                    name(user, "invalid user name")?;
                    if !is_valid_emoji(emoji) {
                        return Err("invalid emoji");
                    }
                    *seq
                }
                RoomEvent::Message(_) => return Err("a message as a change"),
            };
            if *rev == 0 || target == 0 || target > *seq {
                return Err("a change of a message that cannot exist");
            }
            Ok(())
        }
        Envelope::Event {
            event, except_user, ..
        } => {
            if let Some(user) = except_user {
                name(user, "invalid user name")?;
            }
            match event {
                ServerEvent::Presence { room: r, user, .. }
                | ServerEvent::Typing { room: r, user } => {
                    if r != room {
                        return Err("an event for another room");
                    }
                    name(user, "invalid user name")
                }
                _ => Err("not a room event"),
            }
        }
        Envelope::Deleted { room: r, .. } => {
            if r != room {
                return Err("a deletion for another room");
            }
            Ok(())
        }
        // On `chat:users`, checked by `check_user_envelope`.
        Envelope::User { .. } => Err("a user event on a room's channel"),
    }
}

/// Checks what arrived on [`USERS_CHANNEL`] as [`check_envelope`] does for
/// rooms.
fn check_user_envelope(envelope: &Envelope) -> Result<(), &'static str> {
    let Envelope::User { user, event, .. } = envelope else {
        return Err("not a user event");
    };
    if !is_valid_name(user) {
        return Err("invalid user name");
    }
    let (UserEvent::Read { room, .. }
    | UserEvent::Forgot { room }
    | UserEvent::Invited { room, .. }) = event;
    if !is_valid_room(room) {
        return Err("invalid room name");
    }
    if let UserEvent::Invited { by, .. } = event {
        if !is_valid_name(by) {
            return Err("invalid user name");
        }
    }
    Ok(())
}

/// The channel of user events, which every node subscribes to.
const USERS_CHANNEL: &str = "chat:users";

fn room_channel(room: &str) -> String {
    format!("chat:room:{room}")
}

fn presence_key(room: &str) -> String {
    format!("chat:presence:{room}")
}

fn node_rooms_key(node: &str) -> String {
    format!("chat:noderooms:{node}")
}

fn node_key(node: &str) -> String {
    format!("chat:node:{node}")
}

/// Presence fields are `NODE|USER`; `|` appears in neither.
const COUNT_USER: &str = r"
local n = 0
local suffix = '|' .. ARGV[2]
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, -#suffix) == suffix then n = n + 1 end
end
return n";

impl Cluster {
    /// Connects to Redis at `url` and starts the background tasks
    /// (publisher, subscriber, heartbeat and reaper); fails with one clear
    /// line when the URL is malformed or Redis does not answer. `rooms` are
    /// this node's members; `store` tells, after an outage, what was missed.
    pub async fn connect(
        url: &str,
        rooms: Arc<Rooms>,
        store: Arc<dyn Store>,
        user_events: mpsc::Sender<(String, UserEvent)>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let client = redis::Client::open(url).map_err(|source| ClusterError::BadUrl {
            url: url.to_owned(),
            source,
        })?;
        let unreachable = |reason: String| ClusterError::Unreachable {
            url: url.to_owned(),
            reason,
        };
        let conn = tokio::time::timeout(REDIS_TIMEOUT * 2, client.get_connection_manager())
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let mut ping = conn.clone();
        let _: String =
            tokio::time::timeout(REDIS_TIMEOUT, redis::cmd("PING").query_async(&mut ping))
                .await
                .map_err(|_| unreachable("timed out".into()))?
                .map_err(|e| unreachable(e.to_string()))?;
        let (publish, publish_queue) = mpsc::channel(PUBLISH_QUEUE);
        let (subscriptions, subscription_queue) = mpsc::unbounded_channel();
        let node = format!("{:016x}", rand::random::<u64>());
        tracing::info!(node = %node, redis = %url, "cluster mode: connected to Redis");
        let cluster = Arc::new(Cluster {
            node,
            url: url.to_owned(),
            client,
            conn,
            rooms,
            publish,
            publish_full: AtomicBool::new(false),
            subscriptions,
            down: AtomicBool::new(false),
            user_events,
            join_script: Script::new(&format!(
                "redis.call('HSET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], '1')
                 redis.call('SADD', KEYS[2], ARGV[3]){COUNT_USER}"
            )),
            leave_script: Script::new(&format!(
                "redis.call('HDEL', KEYS[1], ARGV[1] .. '|' .. ARGV[2]){COUNT_USER}"
            )),
            reap_script: Script::new(
                r"
local prefix = ARGV[1] .. '|'
local gone = {}
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[1], f)
    gone[#gone + 1] = string.sub(f, #prefix + 1)
  end
end
local absent = {}
for _, user in ipairs(gone) do
  local present = false
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(f, -(#user + 1)) == '|' .. user then present = true end
  end
  if not present then absent[#absent + 1] = user end
end
return absent",
            ),
        });
        tokio::spawn(cluster.clone().publisher(publish_queue));
        tokio::spawn(cluster.clone().subscriber(subscription_queue, store));
        tokio::spawn(cluster.clone().heartbeat());
        Ok(cluster)
    }

    fn went_down(&self, what: &str, err: &dyn std::fmt::Display) {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::error!(redis = %self.url, error = %err, "Redis unreachable ({what}); serving local clients only until it returns");
        }
    }

    fn came_back(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(redis = %self.url, "Redis is back");
        }
    }

    /// Runs one Redis command future with the timeout; errors are logged once
    /// per outage.
    async fn call<T>(
        &self,
        what: &str,
        command: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(REDIS_TIMEOUT, command).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(err)) => {
                self.went_down(what, &err);
                None
            }
            Err(_) => {
                self.went_down(what, &"timed out");
                None
            }
        }
    }

    fn envelope_text(envelope: &Envelope) -> String {
        serde_json::to_string(envelope).unwrap_or_default()
    }

    async fn publish_envelope(&self, room: &str, envelope: &Envelope) -> bool {
        let mut conn = self.conn.clone();
        let text = Self::envelope_text(envelope);
        self.call(
            "publish",
            conn.publish::<_, _, ()>(room_channel(room), text),
        )
        .await
        .is_some()
    }

    /// Queues stored events for publishing (never waits).
    fn publish_events(&self, events: &[Stored]) {
        for stored in events {
            let envelope = match &stored.event {
                RoomEvent::Message(message) => Envelope::Message {
                    origin: self.node.clone(),
                    room_id: stored.room_id.0,
                    message: message.clone(),
                    rev: stored.at.rev,
                },
                change => Envelope::Change {
                    origin: self.node.clone(),
                    room_id: stored.room_id.0,
                    seq: stored.at.seq,
                    rev: stored.at.rev,
                    change: change.clone(),
                },
            };
            let channel = room_channel(&stored.room);
            self.queue_publish(channel, Self::envelope_text(&envelope));
        }
    }

    /// Queues the news of a room's deletion, behind its last messages.
    fn publish_deleted(&self, room: &str, room_id: RoomId) {
        let envelope = Envelope::Deleted {
            origin: self.node.clone(),
            room: room.to_owned(),
            room_id: room_id.0,
        };
        self.queue_publish(room_channel(room), Self::envelope_text(&envelope));
    }

    /// Queues one envelope for the publisher without waiting. A full queue
    /// (Redis far slower than this node's commits) drops it: the other
    /// nodes read what they missed from the store when the room's next
    /// message shows them the gap.
    fn queue_publish(&self, channel: String, text: String) {
        match self.publish.try_send((channel, text)) {
            Ok(()) => {
                if self.publish_full.swap(false, Ordering::Relaxed) {
                    tracing::info!("cluster publish queue drained");
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.publish_full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        queued = PUBLISH_QUEUE,
                        "cluster publish queue full: dropping notifications (other nodes catch up from the store)"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    async fn publisher(self: Arc<Self>, mut queue: mpsc::Receiver<(String, String)>) {
        let mut conn = self.conn.clone();
        while let Some((channel, text)) = queue.recv().await {
            // Everything queued meanwhile goes in one pipeline: one round
            // trip to Redis per batch instead of per message, so a busy room
            // does not queue behind the round trips. Order is kept.
            let mut pipe = redis::pipe();
            pipe.publish(channel, text).ignore();
            for _ in 1..PUBLISH_BATCH {
                match queue.try_recv() {
                    Ok((channel, text)) => {
                        pipe.publish(channel, text).ignore();
                    }
                    Err(_) => break,
                }
            }
            // Lost publishes are recovered by the receivers' gap fills: each
            // node reads from the store what it did not hear about.
            if self
                .call("publish", pipe.query_async::<()>(&mut conn))
                .await
                .is_some()
            {
                self.came_back();
            }
        }
    }

    /// Publishes an event that this node already delivered locally.
    async fn publish_event(&self, room: &str, event: &ServerEvent) {
        let except_user = match event {
            ServerEvent::Typing { user, .. } | ServerEvent::Presence { user, .. } => {
                Some(user.clone())
            }
            _ => None,
        };
        let envelope = Envelope::Event {
            origin: self.node.clone(),
            local_done: true,
            except_user,
            event: event.clone(),
        };
        self.publish_envelope(room, &envelope).await;
    }

    fn announce_locally(&self, room: &str, user: &str, state: PresenceState) {
        self.rooms.announce_presence(room, user, state);
    }

    async fn announce(&self, room: &str, user: &str, state: PresenceState) {
        let event = ServerEvent::Presence {
            room: room.to_owned(),
            user: user.to_owned(),
            state,
        };
        let envelope = Envelope::Event {
            origin: self.node.clone(),
            local_done: false,
            except_user: Some(user.to_owned()),
            event,
        };
        if !self.publish_envelope(room, &envelope).await {
            self.announce_locally(room, user, state);
        }
    }

    fn users_of(fields: Vec<String>) -> impl Iterator<Item = String> {
        fields
            .into_iter()
            .filter_map(|f| f.split_once('|').map(|(_, user)| user.to_owned()))
    }

    /// Handles what arrived on `channel`. Envelopes are checked like client
    /// input before anything is delivered: whatever can write to Redis must
    /// not be able to put malformed names or text on clients' screens.
    fn on_envelope(&self, channel: &str, payload: &str) {
        let envelope: Envelope = match serde_json::from_str(payload) {
            Ok(envelope) => envelope,
            Err(err) => {
                tracing::warn!(error = %untrusted(&err), "ignoring a malformed cluster message");
                return;
            }
        };
        if channel == USERS_CHANNEL {
            if let Err(problem) = check_user_envelope(&envelope) {
                tracing::warn!(problem, "ignoring an invalid cluster user event");
                return;
            }
            if let Envelope::User {
                origin,
                user,
                event,
            } = envelope
            {
                // A full queue (a flood through Redis) drops the event: read
                // markers are in the store, and the next `welcome` has them.
                if origin != self.node && self.user_events.try_send((user, event)).is_err() {
                    tracing::warn!("user events from other nodes are piling up; dropping one");
                }
            }
            return;
        }
        let room = channel.strip_prefix("chat:room:").unwrap_or_default();
        if let Err(problem) = check_envelope(&envelope, room) {
            tracing::warn!(
                channel = %Untrusted(channel),
                problem,
                "ignoring an invalid cluster message"
            );
            return;
        }
        match envelope {
            Envelope::Message {
                origin,
                room_id,
                message,
                rev,
            } => {
                if origin != self.node {
                    self.rooms.deliver(&Stored {
                        room_id: RoomId(room_id),
                        room: message.room.clone(),
                        at: Position {
                            seq: message.seq,
                            rev,
                        },
                        event: RoomEvent::Message(message),
                        answer: None,
                    });
                }
            }
            Envelope::Change {
                origin,
                room_id,
                seq,
                rev,
                change,
            } => {
                if origin != self.node {
                    self.rooms.deliver(&Stored {
                        room_id: RoomId(room_id),
                        room: room.to_owned(),
                        at: Position { seq, rev },
                        event: change,
                        answer: None,
                    });
                }
            }
            Envelope::Event {
                origin,
                local_done,
                except_user,
                event,
            } => {
                if origin == self.node && local_done {
                    return;
                }
                let room = match &event {
                    ServerEvent::Presence { room, .. } | ServerEvent::Typing { room, .. } => {
                        room.clone()
                    }
                    _ => return,
                };
                self.rooms
                    .broadcast(&room, &frame(&event), except_user.as_deref());
            }
            Envelope::User { .. } => {}
            Envelope::Deleted {
                origin,
                room,
                room_id,
            } => {
                if origin != self.node {
                    self.rooms.remove(&room, RoomId(room_id), None);
                    let _ = self.subscriptions.send(Subscription::Unwatch(room));
                }
            }
        }
    }

    async fn subscriber(
        self: Arc<Self>,
        mut commands: mpsc::UnboundedReceiver<Subscription>,
        store: Arc<dyn Store>,
    ) {
        loop {
            let pubsub =
                match tokio::time::timeout(REDIS_TIMEOUT, self.client.get_async_pubsub()).await {
                    Ok(Ok(pubsub)) => pubsub,
                    Ok(Err(err)) => {
                        self.went_down("subscribe", &err);
                        self.wait_answering(&mut commands).await;
                        continue;
                    }
                    Err(_) => {
                        self.went_down("subscribe", &"timed out");
                        self.wait_answering(&mut commands).await;
                        continue;
                    }
                };
            let (mut sink, mut stream) = pubsub.split();
            let mut subscribed = HashSet::new();
            // User events are not caught up after an outage: a read marker
            // is in the store (and in the next `welcome`), and a forgotten
            // room's other connections keep it until they reconnect.
            let mut healthy = sink.subscribe(USERS_CHANNEL).await.is_ok();
            for (room, _) in self.rooms.occupied() {
                if sink.subscribe(room_channel(&room)).await.is_err() {
                    healthy = false;
                    break;
                }
                subscribed.insert(room);
            }
            if !healthy {
                self.wait_answering(&mut commands).await;
                continue;
            }
            self.came_back();
            // Whatever happened while we were not listening, from the store:
            // messages to catch up on, or the room's deletion (whose notice
            // may have been lost with Redis).
            for (room, room_id) in self.rooms.occupied() {
                match store.room(&room).await {
                    Ok(Some(head)) if head.id == room_id => {
                        self.rooms.catch_up(&room, room_id, head.last_seq);
                    }
                    Ok(_) => self.rooms.remove(&room, room_id, None),
                    Err(err) => {
                        tracing::error!(room = %Untrusted(&room), error = %err, "reading a room after reconnecting failed");
                    }
                }
            }
            loop {
                tokio::select! {
                    command = commands.recv() => match command {
                        None => return,
                        Some(Subscription::Watch(room, done)) => {
                            if !subscribed.contains(&room) {
                                if sink.subscribe(room_channel(&room)).await.is_err() {
                                    let _ = done.send(());
                                    break;
                                }
                                subscribed.insert(room);
                            }
                            let _ = done.send(());
                        }
                        Some(Subscription::Unwatch(room)) => {
                            if subscribed.contains(&room) && self.rooms.local_users(&room).is_empty() {
                                if sink.unsubscribe(room_channel(&room)).await.is_err() {
                                    break;
                                }
                                subscribed.remove(&room);
                            }
                        }
                    },
                    message = stream.next() => match message {
                        Some(message) => {
                            if let Ok(payload) = message.get_payload::<String>() {
                                self.on_envelope(message.get_channel_name(), &payload);
                            }
                        }
                        None => break,
                    },
                }
            }
            self.went_down("subscription", &"connection lost");
        }
    }

    /// Waits a second before reconnecting, answering subscription requests
    /// meanwhile so that joins do not wait for Redis.
    async fn wait_answering(&self, commands: &mut mpsc::UnboundedReceiver<Subscription>) {
        let pause = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => return,
                command = commands.recv() => match command {
                    Some(Subscription::Watch(_, done)) => { let _ = done.send(()); }
                    Some(Subscription::Unwatch(_)) => {}
                    None => return,
                }
            }
        }
    }

    /// Keeps this node alive in Redis (re-asserting its presence, which a
    /// restarted Redis has forgotten) and reaps nodes that died.
    async fn heartbeat(self: Arc<Self>) {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        loop {
            tick.tick().await;
            let mut conn = self.conn.clone();
            // `GET` returns the key's previous value: none means this node's
            // key was gone — Redis restarted empty, or another node took it
            // for dead and reaped its presence. Only then is the presence
            // written again (re-writing it on every beat could resurrect an
            // entry that a leave removed a moment before).
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(node_key(&self.node))
                .arg(1)
                .arg("PX")
                .arg(NODE_TTL_MS)
                .arg("GET")
                .sadd("chat:nodes", &self.node)
                .ignore();
            let Some((previous,)) = self
                .call(
                    "heartbeat",
                    pipe.query_async::<(Option<String>,)>(&mut conn),
                )
                .await
            else {
                continue;
            };
            self.came_back();
            if previous.is_none() {
                self.reassert_presence().await;
            }
            self.reap_dead_nodes().await;
        }
    }

    async fn reassert_presence(&self) {
        let mut pipe = redis::pipe();
        for (room, users) in self.rooms.local_members() {
            for user in users {
                pipe.hset(presence_key(&room), format!("{}|{}", self.node, user), 1)
                    .ignore();
            }
            pipe.sadd(node_rooms_key(&self.node), room).ignore();
        }
        let mut conn = self.conn.clone();
        self.call("presence", pipe.query_async::<()>(&mut conn))
            .await;
    }

    async fn reap_dead_nodes(&self) {
        let mut conn = self.conn.clone();
        let Some(nodes) = self
            .call("reap", conn.smembers::<_, Vec<String>>("chat:nodes"))
            .await
        else {
            return;
        };
        for node in nodes.into_iter().filter(|n| *n != self.node) {
            let alive: Option<bool> = self.call("reap", conn.exists(node_key(&node))).await;
            if alive != Some(false) {
                continue;
            }
            let lock: Option<Option<String>> = self
                .call(
                    "reap",
                    redis::cmd("SET")
                        .arg(format!("chat:reap:{node}"))
                        .arg(&self.node)
                        .arg("NX")
                        .arg("PX")
                        .arg(60_000)
                        .query_async(&mut conn),
                )
                .await;
            if !matches!(lock, Some(Some(_))) {
                continue; // another node is reaping it
            }
            tracing::warn!(node = %Untrusted(&node), "a cluster node stopped answering; its users are offline");
            let rooms: Vec<String> = self
                .call("reap", conn.smembers(node_rooms_key(&node)))
                .await
                .unwrap_or_default();
            for room in rooms {
                let mut invocation = self.reap_script.prepare_invoke();
                invocation.key(presence_key(&room)).arg(&node);
                let absent: Vec<String> = self
                    .call("reap", invocation.invoke_async(&mut conn))
                    .await
                    .unwrap_or_default();
                for user in absent {
                    self.announce(&room, &user, PresenceState::Left).await;
                }
            }
            let _: Option<()> = self.call("reap", conn.del(node_rooms_key(&node))).await;
            let _: Option<()> = self.call("reap", conn.srem("chat:nodes", &node)).await;
        }
    }
}

#[async_trait]
impl Fanout for Cluster {
    async fn watch_room(&self, room: &str) {
        let (done, subscribed) = oneshot::channel();
        if self
            .subscriptions
            .send(Subscription::Watch(room.to_owned(), done))
            .is_ok()
        {
            let _ = tokio::time::timeout(REDIS_TIMEOUT, subscribed).await;
        }
    }

    async fn user_joined(&self, room: &str, user: &str) {
        let mut conn = self.conn.clone();
        let mut invocation = self.join_script.prepare_invoke();
        invocation
            .key(presence_key(room))
            .key(node_rooms_key(&self.node))
            .arg(&self.node)
            .arg(user)
            .arg(room);
        match self
            .call("presence", invocation.invoke_async::<u64>(&mut conn))
            .await
        {
            Some(1) => self.announce(room, user, PresenceState::Joined).await,
            Some(_) => {}
            None => self.announce_locally(room, user, PresenceState::Joined),
        }
    }

    async fn user_left(&self, room: &str, user: &str) {
        let mut conn = self.conn.clone();
        let mut invocation = self.leave_script.prepare_invoke();
        invocation.key(presence_key(room)).arg(&self.node).arg(user);
        match self
            .call("presence", invocation.invoke_async::<u64>(&mut conn))
            .await
        {
            Some(0) => self.announce(room, user, PresenceState::Left).await,
            Some(_) => {}
            None => self.announce_locally(room, user, PresenceState::Left),
        }
        if self.rooms.local_users(room).is_empty() {
            let _ = self
                .subscriptions
                .send(Subscription::Unwatch(room.to_owned()));
        }
    }

    async fn members(&self, room: &str) -> Vec<String> {
        let mut conn = self.conn.clone();
        let mut users = self.rooms.local_users(room);
        if let Some(fields) = self
            .call("members", conn.hkeys::<_, Vec<String>>(presence_key(room)))
            .await
        {
            users.extend(Self::users_of(fields));
        }
        users.sort();
        users.dedup();
        users
    }

    async fn member_counts(&self) -> HashMap<String, u64> {
        let mut users: HashMap<String, HashSet<String>> = self
            .rooms
            .local_members()
            .into_iter()
            .map(|(room, users)| (room, users.into_iter().collect()))
            .collect();
        let mut conn = self.conn.clone();
        let keys: Option<Vec<String>> = self
            .call("members", async {
                let mut keys = Vec::new();
                let mut iter = conn.scan_match::<_, String>("chat:presence:*").await?;
                while let Some(key) = iter.next_item().await {
                    keys.push(key?);
                }
                Ok(keys)
            })
            .await;
        if let Some(keys) = keys.filter(|k| !k.is_empty()) {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.hkeys(key);
            }
            let mut conn = self.conn.clone();
            if let Some(all) = self
                .call("members", pipe.query_async::<Vec<Vec<String>>>(&mut conn))
                .await
            {
                for (key, fields) in keys.iter().zip(all) {
                    let room = key.trim_start_matches("chat:presence:").to_owned();
                    users
                        .entry(room)
                        .or_default()
                        .extend(Self::users_of(fields));
                }
            }
        }
        users
            .into_iter()
            .filter(|(_, u)| !u.is_empty())
            .map(|(room, u)| (room, u.len() as u64))
            .collect()
    }

    async fn typing(&self, room: &str, room_id: RoomId, user: &Arc<str>) {
        if let Some(event) = self.rooms.announce_typing(room, room_id, user) {
            self.publish_event(room, &event).await;
        }
    }

    fn publish(&self, commit: &Commit) {
        match commit {
            Commit::Events(events) => self.publish_events(events),
            Commit::RoomDeleted { name, id, .. } => self.publish_deleted(name, *id),
        }
    }

    fn to_user(&self, user: &str, event: &UserEvent) {
        let envelope = Envelope::User {
            origin: self.node.clone(),
            user: user.to_owned(),
            event: event.clone(),
        };
        self.queue_publish(USERS_CHANNEL.to_owned(), Self::envelope_text(&envelope));
    }

    async fn room_deleted(&self, room: &str) {
        let mut conn = self.conn.clone();
        self.call("presence", conn.del::<_, ()>(presence_key(room)))
            .await;
        let _ = self
            .subscriptions
            .send(Subscription::Unwatch(room.to_owned()));
    }
}
