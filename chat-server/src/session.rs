//! One client connection, from the WebSocket handshake to the close.
//!
//! A session is a single task running one `select!` over: the socket, its
//! outbox (frames pushed by rooms), acknowledgements of its own sends coming
//! back from the store, the keep-alive timer, and the server's shutdown
//! signal. Requests are answered in the order they arrive, except that sends
//! are pipelined: the next request is read while a send waits for its commit,
//! and acks go out in send order.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_proto::limits::{close, DEFAULT_PAGE, JOIN_HISTORY, MAX_PAGE};
use chat_proto::validate::{is_valid_name, is_valid_password, normalize_text, TextError};
use chat_proto::{
    decode_client, ClientEvent, ErrorCode, MessageRecord, Request, RoomSummary, ServerEvent,
    PROTOCOL_VERSION,
};
use futures_util::stream::FuturesOrdered;
use futures_util::{Future, FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as HttpRequest, Response,
};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::rooms::{JoinPoint, Outbound, SessionHandle};
use crate::server::ServerState;
use crate::store::StoreError;

/// Frames a session may have queued before it counts as fallen behind.
const OUTBOX_FRAMES: usize = 4096;
/// Frames written per flush when draining the outbox.
const WRITE_BATCH: usize = 256;
/// A write that makes no progress for this long drops the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive: a ping this often, and a drop after this much silence.
const PING_EVERY: Duration = Duration::from_secs(30);
const SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// Sends waiting for their commit before the session stops reading.
const MAX_PENDING_SENDS: usize = 256;

type Socket = WebSocketStream<TcpStream>;
type PendingAck = Pin<Box<dyn Future<Output = ServerEvent> + Send>>;

/// WebSocket settings sized for thousands of mostly idle connections.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        // Small buffers: the tungstenite defaults (128 KiB each) would cost
        // gigabytes at 10,000 connections.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .max_message_size(Some(chat_proto::limits::MAX_FRAME_BYTES))
        .max_frame_size(Some(chat_proto::limits::MAX_FRAME_BYTES))
}

/// Why the session loop ended, and what the peer is told.
enum Ending {
    /// The peer closed or vanished: nothing more to send.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// The account a session is logged in as.
struct Account {
    admin: bool,
    handle: Arc<SessionHandle>,
}

/// Token bucket for sends.
struct RateLimit {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(per_sec: u32, burst: u32) -> RateLimit {
        RateLimit {
            per_sec: per_sec as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: Instant::now(),
        }
    }

    /// Takes a token; false when the bucket is empty. A rate of 0 disables
    /// the limit.
    fn allow(&mut self) -> bool {
        if self.per_sec <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Accepts the WebSocket upgrade on `/ws` (or `/`) and runs the session.
pub async fn serve(stream: TcpStream, peer: SocketAddr, state: Arc<ServerState>) {
    let _ = stream.set_nodelay(true);
    // The callback's error type is tungstenite's HTTP response; its size is
    // not ours to choose.
    #[allow(clippy::result_large_err)]
    let check_path = |request: &HttpRequest, response: Response| match request.uri().path() {
        "/ws" | "/" => Ok(response),
        _ => {
            let mut refusal = ErrorResponse::new(Some("not found: connect to /ws\n".into()));
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            Err(refusal)
        }
    };
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        check_path,
        Some(websocket_config()),
    );
    let socket = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(socket)) => socket,
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "handshake refused");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "handshake timed out");
            return;
        }
    };
    let id = state.next_session_id.fetch_add(1, Ordering::Relaxed);
    let (outbox, inbox) = mpsc::channel(OUTBOX_FRAMES);
    let session = Session {
        id,
        peer,
        socket,
        state: state.clone(),
        account: None,
        outbox,
        inbox,
        failures: 0,
        rate: RateLimit::new(state.config.send_rate, state.config.send_burst),
        joined: Vec::new(),
        pending_acks: FuturesOrdered::new(),
        last_heard: Instant::now(),
    };
    session.run(state.shutdown.clone()).await;
}

/// A room as this session joined it.
struct JoinedRoom {
    name: String,
    /// Which room of that name (ids are never reused).
    room_id: i64,
    /// Newest `seq` written to the client.
    newest: u64,
}

struct Session {
    id: u64,
    peer: SocketAddr,
    socket: Socket,
    state: Arc<ServerState>,
    account: Option<Account>,
    /// Kept to build the handle at login; rooms push into it.
    outbox: mpsc::Sender<Outbound>,
    inbox: mpsc::Receiver<Outbound>,
    failures: u32,
    rate: RateLimit,
    /// Rooms this session joined, each with the newest `seq` written to the
    /// client: messages at or below it (already sent as history) are
    /// skipped, and so are messages of rooms left. [`crate::rooms::Rooms`]
    /// is the truth about membership (a room can be deleted under us). A
    /// short list searched by room id: no hashing on the delivery path.
    joined: Vec<JoinedRoom>,
    pending_acks: FuturesOrdered<PendingAck>,
    last_heard: Instant,
}

impl Session {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let login_deadline =
            tokio::time::sleep(Duration::from_secs(chat_proto::limits::LOGIN_TIMEOUT_SECS));
        tokio::pin!(login_deadline);
        let mut keepalive = tokio::time::interval(PING_EVERY);
        keepalive.reset();
        // Created once, not per turn of the loop: every session waits on the
        // same watch, and registering with it on each wake-up cost a lock
        // shared by all of them on the fan-out path.
        let shutdown = shutdown.changed();
        tokio::pin!(shutdown);
        let ending = loop {
            // A full outbox sets this flag, and a full outbox also makes the
            // next turn's `inbox.recv()` ready, so a flag read here closes the
            // session as promptly as awaiting `kicked` would, without
            // registering a waiter on every wake-up. (A write stalled on a
            // client that stopped reading watches `kicked` itself.)
            if self.overflowed() {
                break Ending::Close(
                    close::TRY_AGAIN_LATER,
                    "too far behind: reconnect and join with since",
                );
            }
            let reading = self.pending_acks.len() < MAX_PENDING_SENDS;
            let step = tokio::select! {
                _ = &mut shutdown => break self.shutting_down().await,
                Some(item) = self.inbox.recv() => self.write_outbox(Some(item), None).await,
                Some(ack) = self.pending_acks.next(), if !self.pending_acks.is_empty() => self.write_outbox(None, Some(ack)).await,
                incoming = self.socket.next(), if reading => self.on_incoming(incoming).await,
                _ = &mut login_deadline, if self.account.is_none() => Err(Ending::Close(close::POLICY, "login timeout")),
                _ = keepalive.tick() => self.keepalive().await,
            };
            if let Err(ending) = step {
                break ending;
            }
        };
        self.finish(ending).await;
    }

    fn overflowed(&self) -> bool {
        self.account
            .as_ref()
            .is_some_and(|account| account.handle.overflowed())
    }

    /// The server is stopping: sends already taken are still answered (the
    /// store commits everything queued before it stops), then the client is
    /// told with 1001.
    async fn shutting_down(&mut self) -> Ending {
        let answers = async {
            while let Some(ack) = self.pending_acks.next().await {
                if self.write_outbox(None, Some(ack)).await.is_err() {
                    return;
                }
            }
            while let Ok(item) = self.inbox.try_recv() {
                if self.write_outbox(Some(item), None).await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), answers).await;
        Ending::Close(close::GOING_AWAY, "server shutting down")
    }

    async fn finish(mut self, ending: Ending) {
        if let Ending::Close(code, reason) = ending {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            // Best effort: a peer that stopped reading must not hold us.
            let _ =
                tokio::time::timeout(Duration::from_secs(2), self.socket.close(Some(frame))).await;
        }
        if let Some(account) = &self.account {
            for room in std::mem::take(&mut self.joined) {
                let room = room.name;
                if let Some(true) = self.state.rooms.leave(&room, self.id) {
                    self.state
                        .broker
                        .user_left(&room, &account.handle.user)
                        .await;
                }
            }
            tracing::debug!(peer = %self.peer, user = %account.handle.user, "session ended");
        }
    }

    async fn keepalive(&mut self) -> Result<(), Ending> {
        if self.last_heard.elapsed() > SILENCE_LIMIT {
            return Err(Ending::Gone);
        }
        self.write(Message::Ping(Default::default())).await
    }

    async fn write(&mut self, message: Message) -> Result<(), Ending> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.socket.send(message)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Ending::Gone),
        }
    }

    /// Sends an event right away.
    async fn reply(&mut self, event: &ServerEvent) -> Result<(), Ending> {
        self.write(Message::Text(chat_proto::encode(event).into()))
            .await
    }

    async fn error(
        &mut self,
        code: ErrorCode,
        message: impl Into<String>,
        re: Option<String>,
    ) -> Result<(), Ending> {
        self.reply(&ServerEvent::error(code, message, re)).await
    }

    /// Writes an item from the outbox or the answer to one of this session's
    /// sends, and whatever else of both is ready behind it, with one flush.
    /// Acks are not flushed one by one: under pipelined sends a commit
    /// answers dozens at once, and one write for all of them (and for the
    /// session's own copies of the messages) saves a syscall each.
    async fn write_outbox(
        &mut self,
        item: Option<Outbound>,
        ack: Option<ServerEvent>,
    ) -> Result<(), Ending> {
        let handle = self.account.as_ref().map(|a| a.handle.clone());
        let kicked = async {
            match &handle {
                Some(handle) => handle.kicked.notified().await,
                None => std::future::pending().await,
            }
        };
        let batch = async {
            if let Some(item) = item {
                self.feed(item).await?;
            }
            if let Some(ack) = ack {
                let text = chat_proto::encode(&ack);
                self.socket.feed(Message::Text(text.into())).await?;
            }
            for _ in 1..WRITE_BATCH {
                let mut fed = false;
                if let Ok(item) = self.inbox.try_recv() {
                    self.feed(item).await?;
                    fed = true;
                }
                // Polled without a waker: the main loop polls `pending_acks`
                // again with its own before it sleeps. Acks stay in order.
                if let Some(Some(ack)) = self.pending_acks.next().now_or_never() {
                    let text = chat_proto::encode(&ack);
                    self.socket.feed(Message::Text(text.into())).await?;
                    fed = true;
                }
                if !fed {
                    break;
                }
            }
            self.socket.flush().await
        };

        tokio::select! {
            written = tokio::time::timeout(WRITE_TIMEOUT, batch) => match written {
                Ok(Ok(())) => Ok(()),
                _ => Err(Ending::Gone),
            },
            // The client stopped reading and its outbox overflowed meanwhile:
            // give up on this write now rather than at the timeout.
            _ = kicked => Err(Ending::Close(close::TRY_AGAIN_LATER, "too far behind: reconnect and join with since")),
        }
    }

    /// Feeds one outbox item to the socket, unless it is a message the
    /// client already has or no longer wants.
    async fn feed(&mut self, item: Outbound) -> Result<(), WsError> {
        let frame = match item {
            Outbound::Event(frame) => frame,
            Outbound::Room {
                room_id,
                seq,
                frame,
                ..
            } => match self.joined.iter().position(|j| j.room_id == room_id) {
                Some(at) => match seq {
                    Some(seq) if seq > self.joined[at].newest => {
                        self.joined[at].newest = seq;
                        frame
                    }
                    Some(_) => return Ok(()),
                    None => {
                        // room_deleted: the session is no longer a member.
                        self.joined.swap_remove(at);
                        frame
                    }
                },
                None => return Ok(()),
            },
        };
        self.socket.feed(Message::Text(frame)).await
    }

    async fn on_incoming(
        &mut self,
        incoming: Option<Result<Message, WsError>>,
    ) -> Result<(), Ending> {
        let message = match incoming {
            None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                return Err(Ending::Gone)
            }
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                return Err(Ending::Close(
                    close::TOO_LARGE,
                    "message larger than 64 KiB",
                ))
            }
            Some(Err(err)) => {
                tracing::debug!(peer = %self.peer, error = %err, "connection error");
                return Err(Ending::Gone);
            }
            Some(Ok(message)) => message,
        };
        self.last_heard = Instant::now();
        match message {
            Message::Text(text) => self.on_text(&text).await,
            Message::Binary(_) => {
                self.error(
                    ErrorCode::BadRequest,
                    "binary frames are not supported: send JSON text",
                    None,
                )
                .await
            }
            Message::Close(_) => Err(Ending::Gone),
            // Pings are answered by tungstenite; pongs only prove liveness.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Ending> {
        let Request { id, event } = match decode_client(text) {
            Ok(request) => request,
            Err(err) => return self.error(ErrorCode::BadRequest, err.reason, err.id).await,
        };
        let Some(account) = &self.account else {
            return match event {
                ClientEvent::Login { user, password } => self.login(user, password, id).await,
                ClientEvent::Register { user, password } => self.register(user, password, id).await,
                _ => {
                    self.error(ErrorCode::AuthRequired, "log in first", id)
                        .await
                }
            };
        };
        let (admin, handle) = (account.admin, account.handle.clone());
        // Every request that names a room: a malformed name is refused first.
        let room = match &event {
            ClientEvent::Join { room, .. }
            | ClientEvent::Leave { room }
            | ClientEvent::Send { room, .. }
            | ClientEvent::History { room, .. }
            | ClientEvent::Typing { room }
            | ClientEvent::DeleteRoom { room } => Some(room),
            _ => None,
        };
        if room.is_some_and(|room| !is_valid_name(room)) {
            return self.invalid_room(id).await;
        }
        match event {
            ClientEvent::Login { .. } | ClientEvent::Register { .. } => {
                self.error(ErrorCode::BadRequest, "already logged in", id)
                    .await
            }
            ClientEvent::Rooms => self.rooms(id).await,
            ClientEvent::Join { room, since } => self.join(&handle, room, since, id).await,
            ClientEvent::Leave { room } => self.leave(&handle, room, id).await,
            ClientEvent::Send { room, text } => self.send(&handle, room, text, id).await,
            ClientEvent::History {
                room,
                before,
                limit,
            } => self.history(room, before, limit, id).await,
            ClientEvent::Typing { room } => {
                if !self.state.rooms.is_member(&room, self.id) {
                    return self
                        .error(ErrorCode::NotJoined, format!("join {room} first"), id)
                        .await;
                }
                self.state.broker.typing(&room, &handle.user).await;
                Ok(())
            }
            ClientEvent::DeleteRoom { room } => self.delete_room(admin, room, id).await,
            ClientEvent::Ping => self.reply(&ServerEvent::Pong { re: id }).await,
        }
    }

    async fn login(
        &mut self,
        user: String,
        password: String,
        id: Option<String>,
    ) -> Result<(), Ending> {
        let record = if is_valid_name(&user) {
            match self.state.store.user(&user).await {
                Ok(record) => record,
                Err(err) => return self.internal(err, id).await,
            }
        } else {
            None
        };
        let (hash, admin) = match record {
            Some(r) => (Some(r.password_hash), r.admin),
            None => (None, false),
        };
        if self.state.auth.verify(password, hash).await {
            return self.welcome(user, admin, id).await;
        }
        self.failures += 1;
        tracing::info!(peer = %self.peer, user = %user, "login failed");
        self.error(ErrorCode::AuthFailed, "wrong user name or password", id)
            .await?;
        if self.failures >= chat_proto::limits::MAX_LOGIN_FAILURES {
            return Err(Ending::Close(close::POLICY, "too many failed logins"));
        }
        Ok(())
    }

    async fn register(
        &mut self,
        user: String,
        password: String,
        id: Option<String>,
    ) -> Result<(), Ending> {
        if !self.state.config.open_registration {
            return self
                .error(
                    ErrorCode::RegistrationClosed,
                    "registration is closed: ask an admin for an account",
                    id,
                )
                .await;
        }
        if !is_valid_name(&user) {
            return self
                .error(
                    ErrorCode::InvalidName,
                    "user names are 1 to 32 characters from A-Z a-z 0-9 _ - .",
                    id,
                )
                .await;
        }
        if !is_valid_password(&password) {
            return self
                .error(ErrorCode::BadRequest, "passwords are 8 to 1024 bytes", id)
                .await;
        }
        let Some(hash) = self.state.auth.hash(password).await else {
            return self
                .error(ErrorCode::Internal, "could not hash the password", id)
                .await;
        };
        match self.state.store.create_user(&user, hash).await {
            Ok(()) => {
                tracing::info!(peer = %self.peer, user = %user, "user registered");
                self.welcome(user, false, id).await
            }
            Err(StoreError::UserExists) => {
                self.error(
                    ErrorCode::UserExists,
                    format!("the name {user} is taken"),
                    id,
                )
                .await
            }
            Err(err) => self.internal(err, id).await,
        }
    }

    async fn welcome(
        &mut self,
        user: String,
        admin: bool,
        id: Option<String>,
    ) -> Result<(), Ending> {
        tracing::info!(peer = %self.peer, user = %user, "logged in");
        let handle = Arc::new(SessionHandle::new(
            self.id,
            user.as_str().into(),
            self.outbox.clone(),
        ));
        self.account = Some(Account { admin, handle });
        self.reply(&ServerEvent::Welcome {
            user,
            admin,
            protocol: PROTOCOL_VERSION,
            server: format!("chat-server {}", env!("CARGO_PKG_VERSION")),
            re: id,
        })
        .await
    }

    async fn internal(&mut self, err: StoreError, id: Option<String>) -> Result<(), Ending> {
        tracing::error!(peer = %self.peer, error = %err, "request failed");
        self.error(
            ErrorCode::Internal,
            "the server could not complete the request",
            id,
        )
        .await
    }

    async fn rooms(&mut self, id: Option<String>) -> Result<(), Ending> {
        let stored = match self.state.store.rooms().await {
            Ok(rooms) => rooms,
            Err(err) => return self.internal(err, id).await,
        };
        let counts = self.state.broker.member_counts().await;
        let rooms = stored
            .into_iter()
            .map(|r| RoomSummary {
                members: counts.get(&r.name).copied().unwrap_or(0),
                name: r.name,
                last_seq: r.last_seq,
                last_ts: (r.last_seq > 0).then_some(r.last_activity),
            })
            .collect();
        self.reply(&ServerEvent::Rooms { rooms, re: id }).await
    }

    async fn join(
        &mut self,
        handle: &Arc<SessionHandle>,
        room: String,
        since: Option<u64>,
        id: Option<String>,
    ) -> Result<(), Ending> {
        if !is_valid_name(&room) {
            return self.invalid_room(id).await;
        }
        // A deletion (and re-creation) of the room can race the steps below;
        // then they are simply taken again.
        let mut attempts = 0;
        let (room_id, point) = loop {
            attempts += 1;
            let (room_id, stored_last_seq) = match self.state.store.open_room(&room).await {
                Ok(found) => found,
                Err(err) => return self.internal(err, id).await,
            };
            let Some(point) = self
                .state
                .rooms
                .join(&room, room_id, handle, stored_last_seq)
            else {
                continue;
            };
            // Subscribed (cluster mode) only now that the room has a member
            // here, so a concurrent last leave cannot unsubscribe it; then
            // whatever was stored since the first read, and whose delivery
            // this process may have missed, is read from the store.
            self.state.broker.watch_room(&room).await;
            match self.state.store.room(&room).await {
                Ok(Some((current_id, last_seq))) if current_id == room_id => {
                    self.state.rooms.catch_up(&room, room_id, last_seq);
                    break (room_id, point);
                }
                Ok(_) if attempts < 3 => {
                    self.undo_join(&room, &point);
                }
                Ok(_) => {
                    self.undo_join(&room, &point);
                    return self
                        .error(
                            ErrorCode::NoSuchRoom,
                            "the room was deleted while joining",
                            id,
                        )
                        .await;
                }
                Err(err) => {
                    self.undo_join(&room, &point);
                    return self.internal(err, id).await;
                }
            }
        };
        // Live messages up to the join point (or up to what the client says
        // it holds) are already in the history below: the outbox filter
        // skips them.
        self.forget_joined(&room);
        self.joined.push(JoinedRoom {
            name: room.clone(),
            room_id,
            newest: point.last_seq.max(since.unwrap_or(0)),
        });
        if point.first_local {
            self.state.broker.user_joined(&room, &handle.user).await;
        }
        let members = self.state.broker.members(&room).await;
        self.reply(&ServerEvent::Joined {
            room: room.clone(),
            last_seq: point.last_seq,
            members,
            re: id,
        })
        .await?;
        // Without `since`, the newest page; with it, everything after it.
        let since = since.unwrap_or(point.last_seq.saturating_sub(JOIN_HISTORY as u64));
        self.send_backlog(room_id, &room, since, point.last_seq)
            .await
    }

    fn forget_joined(&mut self, room: &str) {
        self.joined.retain(|j| j.name != room);
    }

    /// Takes back a membership that a failed join added (a session that was
    /// already a member stays one).
    fn undo_join(&mut self, room: &str, point: &JoinPoint) {
        if point.added {
            self.state.rooms.leave(room, self.id);
            self.forget_joined(room);
        }
    }

    /// Every message with `since < seq <= last_seq`, in pages of at most 200.
    async fn send_backlog(
        &mut self,
        room_id: i64,
        room: &str,
        since: u64,
        last_seq: u64,
    ) -> Result<(), Ending> {
        let mut after = since;
        loop {
            let page = match self
                .state
                .store
                .range(room_id, room, after, last_seq, MAX_PAGE)
                .await
            {
                Ok(page) => page,
                Err(err) => return self.internal(err, None).await,
            };
            let Some(newest) = page.last().map(|m| m.seq) else {
                if after == since {
                    // Nothing missing: one empty history says so.
                    return self
                        .send_history(room, Vec::new(), since > 0 && last_seq > 0)
                        .await;
                }
                return Ok(());
            };
            let has_more = page.first().is_some_and(|m| m.seq > 1);
            self.send_history(room, page, has_more).await?;
            if newest >= last_seq {
                return Ok(());
            }
            after = newest;
        }
    }

    async fn send_history(
        &mut self,
        room: &str,
        messages: Vec<MessageRecord>,
        has_more: bool,
    ) -> Result<(), Ending> {
        self.reply(&ServerEvent::History {
            room: room.to_owned(),
            messages,
            has_more,
            re: None,
        })
        .await
    }

    async fn invalid_room(&mut self, id: Option<String>) -> Result<(), Ending> {
        self.error(
            ErrorCode::InvalidName,
            "room names are 1 to 32 characters from A-Z a-z 0-9 _ - .",
            id,
        )
        .await
    }

    async fn leave(
        &mut self,
        handle: &Arc<SessionHandle>,
        room: String,
        id: Option<String>,
    ) -> Result<(), Ending> {
        self.forget_joined(&room);
        match self.state.rooms.leave(&room, self.id) {
            None => {
                self.error(ErrorCode::NotJoined, format!("you are not in {room}"), id)
                    .await
            }
            Some(last) => {
                if last {
                    self.state.broker.user_left(&room, &handle.user).await;
                }
                self.reply(&ServerEvent::Left { room, re: id }).await
            }
        }
    }

    async fn send(
        &mut self,
        handle: &Arc<SessionHandle>,
        room: String,
        text: String,
        id: Option<String>,
    ) -> Result<(), Ending> {
        let room_id = match self.joined.iter().find(|j| j.name == room) {
            Some(joined) if self.state.rooms.is_member(&room, self.id) => joined.room_id,
            _ => {
                return self
                    .error(
                        ErrorCode::NotJoined,
                        format!("join {room} before sending to it"),
                        id,
                    )
                    .await
            }
        };
        let text = match normalize_text(&text) {
            Ok(text) => text,
            Err(err @ TextError::TooLarge(_)) => {
                return self.error(ErrorCode::TooLarge, err.to_string(), id).await
            }
            Err(err) => return self.error(ErrorCode::BadRequest, err.to_string(), id).await,
        };
        if !self.rate.allow() {
            let message = format!(
                "slow down: {} messages per second",
                self.state.config.send_rate
            );
            return self.error(ErrorCode::RateLimited, message, id).await;
        }
        let store = self.state.store.clone();
        let user = handle.user.clone();
        let peer = self.peer;
        self.pending_acks.push_back(Box::pin(async move {
            match store.append(room_id, &user, text).await {
                Ok(stored) => ServerEvent::Ack {
                    re: id,
                    room,
                    seq: stored.seq,
                    ts: stored.ts,
                },
                Err(StoreError::NoSuchRoom) => {
                    ServerEvent::error(ErrorCode::NoSuchRoom, format!("{room} was deleted"), id)
                }
                Err(err) => {
                    tracing::error!(%peer, error = %err, "storing a message failed");
                    ServerEvent::error(ErrorCode::Internal, "the message could not be stored", id)
                }
            }
        }));
        Ok(())
    }

    async fn history(
        &mut self,
        room: String,
        before: Option<u64>,
        limit: Option<u64>,
        id: Option<String>,
    ) -> Result<(), Ending> {
        if !is_valid_name(&room) {
            return self.invalid_room(id).await;
        }
        let limit = match limit {
            None => DEFAULT_PAGE,
            Some(0) => {
                return self
                    .error(ErrorCode::BadRequest, "limit must be at least 1", id)
                    .await
            }
            Some(n) => n.min(MAX_PAGE as u64) as usize,
        };
        match self.state.store.history(&room, before, None, limit).await {
            Ok(page) => {
                self.reply(&ServerEvent::History {
                    room,
                    messages: page.messages,
                    has_more: page.has_more,
                    re: id,
                })
                .await
            }
            Err(StoreError::NoSuchRoom) => {
                self.error(
                    ErrorCode::NoSuchRoom,
                    format!("there is no room {room}"),
                    id,
                )
                .await
            }
            Err(err) => self.internal(err, id).await,
        }
    }

    async fn delete_room(
        &mut self,
        admin: bool,
        room: String,
        id: Option<String>,
    ) -> Result<(), Ending> {
        if !admin {
            return self
                .error(ErrorCode::Forbidden, "only admins can delete rooms", id)
                .await;
        }
        match self.state.store.delete_room(&room, self.id).await {
            Ok(()) => {
                tracing::info!(peer = %self.peer, room = %room, "room deleted");
                self.forget_joined(&room);
                self.state.broker.room_deleted(&room).await;
                self.reply(&ServerEvent::RoomDeleted { room, re: id }).await
            }
            Err(StoreError::NoSuchRoom) => {
                self.error(
                    ErrorCode::NoSuchRoom,
                    format!("there is no room {room}"),
                    id,
                )
                .await
            }
            Err(err) => self.internal(err, id).await,
        }
    }
}
