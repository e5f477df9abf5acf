//! One client connection, from the WebSocket handshake to the close: this
//! file moves frames; [`handlers`] turns requests into hub calls.
//!
//! A session is a single task running one `select!` over: the socket, its
//! outbox (frames pushed by rooms), acknowledgements of its own sends coming
//! back from the store, the keep-alive timer, and the server's shutdown
//! signal. Requests are answered in the order they arrive, except that sends
//! are pipelined: the next request is read while a send waits for its commit,
//! and acks go out in send order.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_proto::limits::close;
use chat_proto::{ErrorCode, ServerEvent};
use futures_util::stream::FuturesOrdered;
use futures_util::{Future, FutureExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as HttpRequest, Response,
};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::rooms::{Outbound, SessionHandle};
use crate::server::ServerState;
use crate::store::{RoomId, SessionId};
use crate::tls::Stream;
use crate::untrusted::{untrusted, Untrusted};
use crate::web;
use crate::wire::{self, Connection};

mod handlers;
use handlers::RateLimit;

/// Acks queued per write.
const WRITE_BATCH: usize = 256;
/// An answer the socket cannot take for this long closes the session with
/// 1013: the client stopped reading.
const REPLY_STALL: Duration = Duration::from_secs(5);
/// A write that makes no progress for this long drops the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a close frame may take to get out.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// Time allowed for the TLS and WebSocket handshakes together.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive: a ping this often, and a drop after this much silence.
const PING_EVERY: Duration = Duration::from_secs(30);
const SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// Frames read and held while a login is checked.
const MAX_HELD: usize = 4;
/// Sends waiting for their commit before the session stops reading.
const MAX_PENDING_SENDS: usize = 256;

/// The answer to a send (its ack or error) or to a change (an error; a
/// success is answered through the outbox), once the store has spoken.
type PendingAck = Pin<Box<dyn Future<Output = Option<ServerEvent>> + Send>>;

/// WebSocket settings sized for thousands of mostly idle connections.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        // tungstenite's read buffer holds only what it parses next (the
        // socket is read in larger chunks, see `wire`); it writes nothing
        // but control frames, at once.
        .read_buffer_size(wire::READ_CHUNK)
        .write_buffer_size(0)
        .max_message_size(Some(chat_proto::limits::MAX_FRAME_BYTES))
        .max_frame_size(Some(chat_proto::limits::MAX_FRAME_BYTES))
}

/// The close for a client that stopped reading.
fn behind() -> Ending {
    Ending::Close(
        close::TRY_AGAIN_LATER,
        "too far behind: reconnect and join with since",
    )
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
    handle: Arc<SessionHandle>,
}

/// Runs the TLS handshake when the server serves `wss://`, answers the
/// browser client's plain HTTP requests ([`web`]), accepts the WebSocket
/// upgrade on `/ws` (or `/`), and runs the session.
///
/// Both phases run boxed, one after the other, and nothing else is kept
/// across them: this future, allocated for every connection for its whole
/// life, then holds two pointers, and the session's own future (most of an
/// idle connection's memory) only what a logged-in session waits with.
pub async fn serve(stream: TcpStream, peer: SocketAddr, state: Arc<ServerState>) {
    let session = match Box::pin(handshakes(stream, peer, &state)).await {
        Some(socket) => Box::pin(Session::new(socket, peer, state).run()),
        None => return,
    };
    session.await;
}

/// The TLS (for `wss://`) and WebSocket handshakes, each under a time
/// limit, with the web client's HTTP requests between them; a connection
/// that fails either (a plain `ws://` client on a TLS port, a port scanner,
/// a wrong path) is dropped with a debug line and touches nothing else.
async fn handshakes(
    stream: TcpStream,
    peer: SocketAddr,
    state: &ServerState,
) -> Option<Connection> {
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
    let stream = match &state.config.tls {
        None => Stream::Plain(stream),
        Some(tls) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                tracing::debug!(%peer, error = %untrusted(&err), "TLS handshake failed");
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return None;
            }
        },
    };
    // Plain HTTP requests (the browser client's files) are answered first;
    // each must arrive within `web::IDLE`.
    let mut stream = stream;
    let read = match web::serve(&mut stream).await {
        web::Outcome::Upgrade(read) => read,
        web::Outcome::Done => return None,
    };
    let upgrade = Connection::accept(stream, read, check_path, websocket_config());
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade).await {
        Ok(Ok(socket)) => Some(socket),
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %untrusted(&err), "handshake refused");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "handshake timed out");
            None
        }
    }
}

/// A room as this session joined it.
struct JoinedRoom {
    name: String,
    /// Which room of that name (ids are never reused).
    room_id: RoomId,
    /// Newest `seq` written to the client.
    newest: u64,
    /// Changes up to this `rev` are in what the client was sent.
    newest_rev: u64,
}

struct Session {
    id: SessionId,
    peer: SocketAddr,
    /// Frames in (tungstenite) and out (one queue of ready frames).
    socket: Connection,
    state: Arc<ServerState>,
    account: Option<Account>,
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
    /// A login must succeed before this.
    login_deadline: tokio::time::Instant,
    /// Frames read while a login was being checked (to notice the
    /// connection closing), answered after it in order.
    held: VecDeque<Message>,
}

impl Session {
    fn new(socket: Connection, peer: SocketAddr, state: Arc<ServerState>) -> Session {
        Session {
            id: SessionId(state.next_session_id.fetch_add(1, Ordering::Relaxed)),
            peer,
            socket,
            account: None,
            failures: 0,
            rate: RateLimit::new(state.config.send_rate, state.config.send_burst),
            joined: Vec::new(),
            pending_acks: FuturesOrdered::new(),
            last_heard: Instant::now(),
            login_deadline: tokio::time::Instant::now()
                + Duration::from_secs(chat_proto::limits::LOGIN_TIMEOUT_SECS),
            held: VecDeque::new(),
            state,
        }
    }

    async fn run(mut self) {
        // The phases that run once are boxed, and so is the handling of a
        // request: the session's future then holds, while it waits, only
        // what waiting needs (an idle connection's memory is mostly this
        // future).
        let ending = match Box::pin(self.log_in()).await {
            Ok(()) => self.serve_requests().await,
            Err(ending) => ending,
        };
        Box::pin(self.finish(ending)).await;
    }

    /// The first phase: only `login` and `register` are served, until one
    /// succeeds, within the login deadline. Nothing is queued for a session
    /// that is not logged in, so only the socket is watched.
    async fn log_in(&mut self) -> Result<(), Ending> {
        let mut shutdown = self.state.shutdown.clone();
        let shutdown = shutdown.changed();
        tokio::pin!(shutdown);
        let deadline = tokio::time::sleep_until(self.login_deadline);
        tokio::pin!(deadline);
        while self.account.is_none() {
            if let Some(message) = self.held.pop_front() {
                self.on_message(message).await?;
                continue;
            }
            tokio::select! {
                _ = &mut shutdown => return Err(Ending::Close(close::GOING_AWAY, "server shutting down")),
                incoming = self.socket.next() => self.on_incoming(incoming).await?,
                _ = &mut deadline => return Err(Ending::Close(close::POLICY, "login timeout")),
            }
        }
        Ok(())
    }

    /// The main phase, logged in: requests, deliveries to the outbox, acks
    /// of pipelined sends, keep-alive and shutdown.
    ///
    /// The server's shutdown reaches a logged-in session as a close of its
    /// handle ([`crate::hub::Hub::close_all`]), not through the shutdown
    /// watch: every session would poll that one shared watch on every
    /// wake-up, and each poll takes its lock.
    async fn serve_requests(&mut self) -> Ending {
        // Requests that came in behind the login, answered in order.
        while let Some(message) = self.held.pop_front() {
            if let Err(ending) = Box::pin(self.on_message(message)).await {
                return ending;
            }
        }
        let Some(handle) = self.account.as_ref().map(|a| a.handle.clone()) else {
            return Ending::Gone;
        };
        // Logged in after the server's close of every session went round.
        if *self.state.shutdown.borrow() {
            return Box::pin(self.shutting_down()).await;
        }
        let mut keepalive = tokio::time::interval(PING_EVERY);
        keepalive.reset();
        loop {
            // A full outbox sets this flag and wakes the outbox's waiter, so
            // a flag read here closes the session as promptly as awaiting
            // `kicked` would, without registering a waiter on every wake-up. (A write stalled on a
            // client that stopped reading watches `kicked` itself.)
            if let Some(ending) = self.must_close() {
                if let Ending::Close(close::GOING_AWAY, _) = ending {
                    return Box::pin(self.shutting_down()).await;
                }
                return ending;
            }
            let reading = self.pending_acks.len() < MAX_PENDING_SENDS;
            let step = tokio::select! {
                items = std::future::poll_fn(|cx| handle.poll_take(cx)) => Box::pin(self.write_outbox(items, None)).await,
                Some(ack) = self.pending_acks.next(), if !self.pending_acks.is_empty() => Box::pin(self.write_outbox(Vec::new(), ack)).await,
                incoming = self.socket.next(), if reading => Box::pin(self.on_incoming(incoming)).await,
                _ = keepalive.tick() => Box::pin(self.keepalive()).await,
            };
            if let Err(ending) = step {
                return ending;
            }
        }
    }

    /// Runs a login's slow part (waiting for and doing the password hash)
    /// while watching the connection and the login deadline: a login whose
    /// connection closed or whose time ran out is dropped, unhashed if it
    /// was still waiting. Frames read meanwhile are held (a few at most:
    /// then reading pauses) and answered after it.
    async fn while_logging_in<T>(&mut self, work: impl Future<Output = T>) -> Result<T, Ending> {
        tokio::pin!(work);
        let deadline = tokio::time::sleep_until(self.login_deadline);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                done = &mut work => return Ok(done),
                _ = &mut deadline => return Err(Ending::Close(close::POLICY, "login timeout")),
                incoming = self.socket.next(), if self.held.len() < MAX_HELD => {
                    let message = self.frame_or_ending(incoming)?;
                    if let Message::Close(_) = message {
                        return Err(Ending::Gone);
                    }
                    self.held.push_back(message);
                }
            }
        }
    }

    /// Why the session must close now, if it must: the server asked (the
    /// account changed), or the client fell too far behind.
    fn must_close(&self) -> Option<Ending> {
        let handle = &self.account.as_ref()?.handle;
        // Overflow first: a session that lost a frame must not be drained
        // as for a shutdown (frames after the gap, then 1001), but told to
        // resume from what it has (1013).
        if handle.overflowed() {
            return Some(behind());
        }
        handle
            .closing()
            .map(|(code, reason)| Ending::Close(code, reason))
    }

    /// The server is stopping: sends already taken are still answered (the
    /// store commits everything queued before it stops), then the client is
    /// told with 1001.
    async fn shutting_down(&mut self) -> Ending {
        let answers = async {
            while let Some(ack) = self.pending_acks.next().await {
                if self.write_outbox(Vec::new(), ack).await.is_err() {
                    return;
                }
            }
            let queued = self.account.as_ref().and_then(|a| a.handle.take_now());
            if let Some(items) = queued {
                let _ = self.write_outbox(items, None).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), answers).await;
        Ending::Close(close::GOING_AWAY, "server shutting down")
    }

    async fn finish(mut self, ending: Ending) {
        if let Some(account) = &self.account {
            account.handle.end();
        }
        if let Ending::Close(code, reason) = ending {
            if code != close::GOING_AWAY {
                tracing::info!(peer = %self.peer, code, reason, "closing the connection");
            }
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            // Best effort, bounded: a peer that stopped reading must not hold
            // us for long. The bound is not shorter because the close frame
            // of a client dropped with 1013 sits behind megabytes of socket
            // buffers, and is only delivered once the client reads again:
            // it deserves to learn why (and that it should resume).
            let socket = &mut self.socket;
            let closing = async {
                // Behind whatever is still queued, and behind a pong
                // tungstenite still owes (tungstenite would put it after
                // the close): the close comes last.
                socket.queue_owed().await;
                if socket.queue_close(frame).await.is_ok() && socket.flush().await.is_ok() {
                    // The closing handshake: what the peer sent meanwhile
                    // is read and dropped until its close arrives. Dropping
                    // a socket with unread input would reset the connection
                    // and destroy the frames it has not read yet, the close
                    // frame among them.
                    while let Some(Ok(message)) = socket.next().await {
                        if let Message::Close(_) = message {
                            break;
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, closing).await;
        } else {
            // The peer closed: tungstenite owes it the answer to its close
            // frame, which completes the closing handshake.
            let socket = &mut self.socket;
            let answer = async {
                socket.queue_owed().await;
                socket.flush().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
        }
        if let Some(account) = &self.account {
            self.state.hub.logged_out(&account.handle);
            for room in std::mem::take(&mut self.joined) {
                let room = room.name;
                // Not a member any more (the room was deleted) is fine.
                let _ = self
                    .state
                    .hub
                    .leave(&room, self.id, &account.handle.user)
                    .await;
            }
            tracing::debug!(peer = %self.peer, user = %Untrusted(&account.handle.user), "session ended");
        }
    }

    async fn keepalive(&mut self) -> Result<(), Ending> {
        if self.last_heard.elapsed() > SILENCE_LIMIT {
            return Err(Ending::Gone);
        }
        if self
            .socket
            .queue_control(Message::Ping(Default::default()))
            .await
            .is_err()
        {
            return Err(Ending::Gone);
        }
        self.write_now().await
    }

    /// Writes what is queued now (an answer, a ping). An answer that the
    /// socket cannot take means the client has stopped reading with
    /// megabytes already waiting for it (a history page is up to 1.6 MB):
    /// like an overflowing outbox, that closes the session with 1013 after
    /// [`REPLY_STALL`] rather than pinning the page for the whole write
    /// timeout. A close the server asked for (or an overflow meanwhile)
    /// ends the wait at once.
    async fn write_now(&mut self) -> Result<(), Ending> {
        self.write_queued(REPLY_STALL, behind()).await
    }

    /// Writes the queue within `limit` (then ends with `late`), or until the
    /// session must close.
    async fn write_queued(&mut self, limit: Duration, late: Ending) -> Result<(), Ending> {
        let account = &self.account;
        let kicked = async {
            match account {
                Some(account) => account.handle.kicked.notified().await,
                None => std::future::pending().await,
            }
        };
        let written = tokio::select! {
            // Most writes complete at once: `kicked` is then never polled,
            // and no waiter is registered with its lock.
            biased;
            written = tokio::time::timeout(limit, self.socket.flush()) => written,
            // The client stopped reading and its outbox overflowed
            // meanwhile, or the server wants it gone: give up on this write
            // now rather than at the limit.
            _ = kicked => return Err(self.must_close().unwrap_or(behind())),
        };
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Ending::Gone),
            Err(_) => Err(late),
        }
    }

    /// Sends an event right away.
    async fn reply(&mut self, event: &ServerEvent) -> Result<(), Ending> {
        self.socket.queue(wire::text_frame(event));
        self.write_now().await
    }

    async fn error(
        &mut self,
        code: ErrorCode,
        message: impl Into<String>,
        re: Option<String>,
    ) -> Result<(), Ending> {
        self.reply(&ServerEvent::error(code, message, re)).await
    }

    /// Writes what was in the outbox or the answer to one of this session's
    /// sends, and the other answers ready behind them, with one flush.
    /// Acks are not flushed one by one: under pipelined sends a commit
    /// answers dozens at once, and one write for all of them (and for the
    /// session's own copies of the messages) saves a syscall each.
    async fn write_outbox(
        &mut self,
        items: Vec<Outbound>,
        ack: Option<ServerEvent>,
    ) -> Result<(), Ending> {
        for item in items {
            self.feed(item);
        }
        if let Some(ack) = ack {
            self.socket.queue(wire::text_frame(&ack));
        }
        // Polled without a waker: the main loop polls `pending_acks` again
        // with its own before it sleeps. Acks stay in order.
        for _ in 1..WRITE_BATCH {
            match self.pending_acks.next().now_or_never() {
                Some(Some(Some(ack))) => self.socket.queue(wire::text_frame(&ack)),
                Some(Some(None)) => {}
                _ => break,
            }
        }
        // A client that stops reading is noticed by its outbox overflowing
        // (1013); the timeout only drops a connection that makes no progress
        // at all.
        self.write_queued(WRITE_TIMEOUT, Ending::Gone).await
    }

    /// Queues one outbox item, unless it is a message the client already
    /// has or no longer wants.
    fn feed(&mut self, item: Outbound) {
        let frame = match item {
            Outbound::Event(frame) => frame,
            Outbound::RoomEvent { room_id, frame } => {
                if !self.joined.iter().any(|j| j.room_id == room_id) {
                    return;
                }
                frame
            }
            Outbound::Change {
                room_id,
                rev,
                frame,
            } => match self.joined.iter_mut().find(|j| j.room_id == room_id) {
                Some(joined) if rev > joined.newest_rev => {
                    joined.newest_rev = rev;
                    frame
                }
                _ => return,
            },
            Outbound::Left { room, frame } => {
                self.forget_joined(&room);
                frame
            }
            // Only a wake-up: the main loop reads why.
            Outbound::Close => return,
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
                    Some(_) => return,
                    None => {
                        // room_deleted: the session is no longer a member.
                        self.joined.swap_remove(at);
                        frame
                    }
                },
                None => return,
            },
        };
        self.socket.queue(frame);
    }

    async fn on_incoming(
        &mut self,
        incoming: Option<Result<Message, WsError>>,
    ) -> Result<(), Ending> {
        let message = self.frame_or_ending(incoming)?;
        self.on_message(message).await
    }

    /// A frame read from the socket, or how the connection ended.
    fn frame_or_ending(
        &mut self,
        incoming: Option<Result<Message, WsError>>,
    ) -> Result<Message, Ending> {
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
                tracing::debug!(peer = %self.peer, error = %untrusted(&err), "connection error");
                return Err(Ending::Gone);
            }
            Some(Ok(message)) => message,
        };
        self.last_heard = Instant::now();
        Ok(message)
    }

    async fn on_message(&mut self, message: Message) -> Result<(), Ending> {
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
}
