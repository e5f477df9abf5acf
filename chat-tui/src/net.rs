//! The network side of the client: one task owns the WebSocket. It logs in,
//! keeps the rooms the user wants joined, reconnects with backoff when the
//! connection drops, resumes every room with `join` + `since` so the app sees
//! each message exactly once, and holds the lines typed while offline until
//! they can be sent. The app talks to it over two unbounded channels of
//! typed values ([`NetCommand`] in, [`NetEvent`] out), so the UI never waits
//! on the network.
//!
//! Delivery rules the app relies on, per room:
//! - `Backlog` and `Message` events carry only messages newer than any
//!   delivered before, in `seq` order: no duplicate, and across a reconnect
//!   no gap (the resume backlog holds everything after the last seq held).
//! - `Page` events answer `History` commands and hold older messages.
//! - every `Send` ends in exactly one `Ack` or `SendFailed`. A send that was
//!   on the wire when the connection dropped is not sent twice: if the
//!   server stored it (it shows up among the messages after the seam) it is
//!   acknowledged from there, otherwise it is sent again.
//! - `Edited`, `Deleted`, `Reaction` and `Changes` change messages already
//!   delivered. A resume carries `since_rev`, the room's change counter as
//!   far as every change is known: `joined.rev` after a first join, the
//!   newest live change's `rev` after that, and a resume's `joined.rev` only
//!   once a live event shows its `changes` are all in. A change may thus be
//!   delivered twice, never lost; each carries the whole new state, so a
//!   second copy changes nothing.
//! - `Export` pages backwards through a room's history on this connection
//!   and writes the file on a blocking thread.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::time::Duration;

use chat_proto::limits::close;
use chat_proto::validate::{is_valid_id, normalize_text, TextError};
use chat_proto::{
    decode_server, encode, features, AccountRoom, ClientEvent, ErrorCode, MessageRecord,
    PresenceState, Request, RoomSummary, ServerEvent,
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::sanitize::sanitize_line;
use crate::tls::{CertificateError, Trust};

/// A WebSocket over plain TCP (`ws://`) or TLS (`wss://`).
type Ws = WebSocketStream<crate::tls::Stream>;

/// Where to connect, as whom, and how patiently.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// A `ws://` or `wss://` URL (see [`crate::config::server_url`]).
    pub url: String,
    pub user: String,
    pub password: String,
    /// Create the account with `register` on the first connection.
    pub register: bool,
    /// First reconnect delay; doubles on each failure.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Limit for connecting and logging in, and for silence on a live
    /// connection before it is considered dead (after a ping).
    pub timeout: Duration,
    /// Which `wss://` certificates to accept besides those an authority
    /// vouches for.
    pub trust: Trust,
}

impl NetConfig {
    /// The defaults: backoff from 1 s doubling to 30 s, 10 s timeouts.
    pub fn new(
        url: impl Into<String>,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        NetConfig {
            url: url.into(),
            user: user.into(),
            password: password.into(),
            register: false,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            trust: Trust::default(),
        }
    }
}

/// What the app asks of the network task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetCommand {
    /// Join a room (and keep it joined across reconnects).
    Join { room: String },
    /// Leave a room.
    Leave { room: String },
    /// Leave a room for good: it leaves the account's rooms, on every
    /// device (whether or not it is joined here).
    Forget { room: String },
    /// Create the private room `room` (or join it, when it exists and the
    /// user is a member), and keep it joined like `Join`.
    CreatePrivate { room: String },
    /// Open the direct conversation with `user`, whose room is `room`, and
    /// keep it joined like `Join`.
    Dm { user: String, room: String },
    /// Make `user` a member of the private room `room`.
    Invite { room: String, user: String },
    /// The user has seen `room` up to `seq`: move the read marker.
    Read { room: String, seq: u64 },
    /// Post a message. `id` is chosen by the app (at most 64 characters) and
    /// comes back in exactly one `Ack` or `SendFailed`.
    Send {
        id: String,
        room: String,
        text: String,
    },
    /// Post a message that answers message `reply_to` of the same room;
    /// otherwise exactly like `Send`.
    Reply {
        id: String,
        room: String,
        text: String,
        reply_to: u64,
    },
    /// Replace the text of the user's message `seq`.
    Edit {
        room: String,
        seq: u64,
        text: String,
    },
    /// Delete message `seq` (the user's own, or any for an admin).
    Delete { room: String, seq: u64 },
    /// Toggle the user's reaction `emoji` on message `seq`.
    React {
        room: String,
        seq: u64,
        emoji: String,
    },
    /// Search every room the user may read; `cursor` is the previous
    /// answer's `next`, for the following page.
    Search {
        query: String,
        cursor: Option<String>,
    },
    /// Write the whole history of `room` to `path` as Markdown, paging
    /// through it in the background; ends in `Exported` or `ExportFailed`.
    Export { room: String, path: PathBuf },
    /// Fetch a page of older messages: `seq < before`, at most `limit`.
    History {
        room: String,
        before: Option<u64>,
        limit: u64,
    },
    /// List every room on the server.
    Rooms,
    /// Tell the room the user is typing.
    Typing { room: String },
    /// Delete a room (admins only).
    DeleteRoom { room: String },
    /// Skip the rest of the reconnect delay and try now.
    Reconnect,
    /// Close the connection and end the task.
    Shutdown,
}

/// Who the server says we are, from `welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub admin: bool,
    /// The server's name and version.
    pub server: String,
    /// The account's rooms, with read markers (empty from a server without
    /// protocol part 2).
    pub rooms: Vec<AccountRoom>,
    /// What the server supports of part 2 ([`chat_proto::features`]).
    pub features: Vec<String>,
}

/// What the network task tells the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// Dialing the server after a disconnect.
    Connecting,
    /// Logged in (again); every room is being rejoined.
    Connected(Session),
    /// The connection is gone. `retry_in` is the delay before the next
    /// attempt; `None` means the task gave up (login refused) until a
    /// `Reconnect` command.
    Disconnected {
        reason: String,
        retry_in: Option<Duration>,
    },
    /// A room was joined (or rejoined) with these members online.
    Joined {
        room: String,
        last_seq: u64,
        members: Vec<String>,
    },
    /// Messages that follow a join: the newest page after a first join
    /// (`resumed` false, `has_more` tells whether older ones exist), or what
    /// was missed while disconnected (`resumed` true).
    Backlog {
        room: String,
        messages: Vec<MessageRecord>,
        has_more: bool,
        resumed: bool,
    },
    /// A new message.
    Message(MessageRecord),
    /// The answer to a `History` command.
    Page {
        room: String,
        before: Option<u64>,
        messages: Vec<MessageRecord>,
        has_more: bool,
    },
    /// A `History` command that could not be answered.
    PageFailed {
        room: String,
        before: Option<u64>,
        reason: String,
    },
    /// A `Send` was stored by the server as `seq`.
    Ack {
        id: String,
        room: String,
        seq: u64,
        ts: i64,
    },
    /// A `Send` was refused; it will not be retried.
    SendFailed {
        id: String,
        room: String,
        code: Option<ErrorCode>,
        message: String,
    },
    /// A `Join` was refused; the room is forgotten.
    JoinFailed {
        room: String,
        code: ErrorCode,
        message: String,
    },
    /// The server confirmed a `Leave`.
    Left {
        room: String,
    },
    /// Another device of the user left `room` for good; it is forgotten
    /// here too.
    Forgotten {
        room: String,
    },
    /// Another device of the user has read `room` up to `seq`.
    Read {
        room: String,
        seq: u64,
    },
    /// `user` became a member of the private room `room`, invited by `by`
    /// (`user` is this user when someone invited us, or opened a direct
    /// conversation with us).
    Invited {
        room: String,
        user: String,
        by: String,
    },
    /// The room was deleted by an admin; it is forgotten.
    RoomDeleted {
        room: String,
    },
    Presence {
        room: String,
        user: String,
        state: PresenceState,
    },
    Typing {
        room: String,
        user: String,
    },
    /// Message `seq` has a new text.
    Edited {
        room: String,
        seq: u64,
        text: String,
        edited_ts: i64,
    },
    /// Message `seq` was deleted.
    Deleted {
        room: String,
        seq: u64,
    },
    /// `user` turned reaction `emoji` on message `seq` on or off.
    Reaction {
        room: String,
        seq: u64,
        user: String,
        emoji: String,
        on: bool,
    },
    /// The current state of messages changed while disconnected: each
    /// replaces the loaded message with its seq.
    Changes {
        room: String,
        messages: Vec<MessageRecord>,
    },
    /// The answer to `Search` for `query`, newest first; `next` asks for
    /// more.
    SearchResults {
        query: String,
        messages: Vec<MessageRecord>,
        next: Option<String>,
    },
    /// An `Export` is written: `messages` messages of `room` in `path`.
    Exported {
        room: String,
        path: PathBuf,
        messages: usize,
    },
    /// An `Export` could not be finished; nothing or a partial file is
    /// left at `path`.
    ExportFailed {
        room: String,
        path: PathBuf,
        reason: String,
    },
    /// The answer to `Rooms`.
    Rooms(Vec<RoomSummary>),
    /// Any other error, from the server (`code`) or local (no code).
    Error {
        code: Option<ErrorCode>,
        message: String,
    },
}

/// Why the first connection failed. Each displays as one line for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The URL could not be used.
    BadUrl(String),
    /// No TCP connection or WebSocket handshake.
    Unreachable(String),
    /// The server answered the handshake with an HTTP error status.
    Http(u16),
    /// Wrong user name or password.
    AuthFailed,
    /// The server refused the login or registration for another reason.
    Refused(ErrorCode, String),
    /// The connection closed before `welcome`.
    Closed(String),
    /// No `welcome` within the timeout.
    Timeout(Duration),
    /// The `wss://` server's certificate was not accepted.
    Certificate(CertificateError),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::BadUrl(reason) => write!(f, "bad server address: {reason}"),
            ConnectError::Unreachable(reason) => write!(f, "cannot reach the server: {reason}"),
            ConnectError::Http(404) => {
                f.write_str("the server answered HTTP 404: no chat server at that path (try /ws)")
            }
            ConnectError::Http(status) => {
                write!(
                    f,
                    "the server answered HTTP {status} instead of a WebSocket"
                )
            }
            ConnectError::AuthFailed => f.write_str("login failed: wrong user name or password"),
            ConnectError::Refused(code, message) => write!(f, "login refused ({code}): {message}"),
            ConnectError::Closed(reason) => {
                write!(f, "the server closed the connection during login: {reason}")
            }
            ConnectError::Timeout(limit) => {
                write!(f, "no answer from the server within {} s", limit.as_secs())
            }
            ConnectError::Certificate(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for ConnectError {}

/// A logged-in client: the command sender, the event receiver and the
/// session of the first login. The task behind it runs until `Shutdown` or
/// until this value (and every clone of the sender) is dropped.
pub struct NetClient {
    /// The session of the first login.
    pub session: Session,
    commands: mpsc::UnboundedSender<NetCommand>,
    events: mpsc::UnboundedReceiver<NetEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl NetClient {
    /// Connects and logs in, then hands the connection to a new task. Fails
    /// (with a reason for the user) when the first attempt fails; later
    /// disconnects are retried by the task.
    pub async fn connect(mut config: NetConfig) -> Result<NetClient, ConnectError> {
        let (ws, session) = connect_and_login(&config).await?;
        // The account exists now: reconnects log in.
        config.register = false;
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let worker = Worker {
            config,
            commands: command_rx,
            events: event_tx,
            session: session.clone(),
            rooms: BTreeMap::new(),
            requests: HashMap::new(),
            next_id: 0,
            bucket: TokenBucket::new(),
            next_flush: None,
        };
        let task = tokio::spawn(worker.run(ws));
        Ok(NetClient {
            session,
            commands: command_tx,
            events: event_rx,
            task,
        })
    }

    /// Queues a command for the task. Never blocks; a command sent after the
    /// task ended is dropped.
    pub fn send(&self, command: NetCommand) {
        let _ = self.commands.send(command);
    }

    /// A sender for commands, for whoever else needs one.
    pub fn sender(&self) -> mpsc::UnboundedSender<NetCommand> {
        self.commands.clone()
    }

    /// The next event; `None` once the task has ended.
    pub async fn recv(&mut self) -> Option<NetEvent> {
        self.events.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<NetEvent> {
        self.events.try_recv().ok()
    }

    /// Asks the task to close the connection and waits (at most two
    /// seconds) for it to end.
    pub async fn shutdown(self) {
        let _ = self.commands.send(NetCommand::Shutdown);
        let mut task = self.task;
        if timeout(Duration::from_secs(2), &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Dials the server and logs in (or registers).
async fn connect_and_login(config: &NetConfig) -> Result<(Ws, Session), ConnectError> {
    // The server's reason, while it answers `busy`.
    let mut busy_message: Option<String> = None;
    let busy = &mut busy_message;
    let attempt = async {
        let stream = crate::tls::dial(&config.url, &config.trust).await?;
        let (mut ws, _response) = tokio_tungstenite::client_async(config.url.as_str(), stream)
            .await
            .map_err(|err| connect_error(&config.url, err))?;
        let credentials = if config.register {
            ClientEvent::Register {
                user: config.user.clone(),
                password: config.password.clone(),
            }
        } else {
            ClientEvent::Login {
                user: config.user.clone(),
                password: config.password.clone(),
            }
        };
        let login = Message::text(encode(&Request::with_id(credentials, "login")));
        ws.send(login.clone())
            .await
            .map_err(|err| ConnectError::Closed(err.to_string()))?;
        let mut tries: u32 = 0;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => match decode_server(text.as_str()) {
                    Ok(ServerEvent::Welcome {
                        user,
                        admin,
                        server,
                        rooms,
                        features,
                        ..
                    }) => {
                        return Ok((
                            ws,
                            Session {
                                user,
                                admin,
                                server,
                                rooms,
                                features,
                            },
                        ))
                    }
                    Ok(ServerEvent::Error {
                        code: ErrorCode::AuthFailed,
                        ..
                    }) => return Err(ConnectError::AuthFailed),
                    Ok(ServerEvent::Error {
                        code: ErrorCode::Busy,
                        message,
                        ..
                    }) => {
                        // Too many logins waiting at the server: ask again
                        // on the same connection after a growing pause,
                        // within this attempt's time limit.
                        tries += 1;
                        *busy = Some(sanitize_line(&message));
                        sleep(busy_backoff(tries)).await;
                        ws.send(login.clone())
                            .await
                            .map_err(|err| ConnectError::Closed(err.to_string()))?;
                    }
                    // The server's words are printed on the user's
                    // terminal before the screen is set up: no escapes.
                    Ok(ServerEvent::Error { code, message, .. }) => {
                        return Err(ConnectError::Refused(code, sanitize_line(&message)))
                    }
                    // Anything else before `welcome` is not for us.
                    Ok(_) | Err(_) => {}
                },
                Some(Ok(Message::Close(frame))) => {
                    return Err(ConnectError::Closed(close_reason(frame)))
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    return Err(ConnectError::Closed(sanitize_line(&err.to_string())))
                }
                None => return Err(ConnectError::Closed("connection closed".into())),
            }
        }
    };
    let result = timeout(config.timeout, attempt).await;
    match (result, busy_message) {
        (Ok(done), _) => done,
        (Err(_), Some(message)) => Err(ConnectError::Refused(ErrorCode::Busy, message)),
        (Err(_), None) => Err(ConnectError::Timeout(config.timeout)),
    }
}

/// The pause before asking again after `busy` answer number `tries`:
/// 250 ms doubling to 4 s, with ±20% jitter so that clients turned away
/// together do not come back together.
pub fn busy_backoff(tries: u32) -> Duration {
    let base = Duration::from_millis(250)
        .saturating_mul(1u32 << tries.saturating_sub(1).min(4))
        .min(Duration::from_secs(4));
    base.mul_f64(0.8 + 0.4 * random_unit())
}

/// A failed WebSocket handshake, for the user. Whatever the peer answered
/// is sanitized: it reaches the terminal.
fn connect_error(url: &str, err: tungstenite::Error) -> ConnectError {
    match err {
        tungstenite::Error::Http(response) => ConnectError::Http(response.status().as_u16()),
        tungstenite::Error::Url(err) => ConnectError::BadUrl(err.to_string()),
        // A plain ws:// client on a wss:// port gets a TLS alert or a
        // hang-up instead of an HTTP answer.
        err if url.starts_with("ws://") => ConnectError::Unreachable(format!(
            "{} (if the server serves wss://, use a wss:// address)",
            sanitize_line(&err.to_string())
        )),
        err => ConnectError::Unreachable(sanitize_line(&err.to_string())),
    }
}

fn close_reason(frame: Option<tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        None => "connection closed".into(),
        Some(frame) => {
            let code = u16::from(frame.code);
            let what = match code {
                close::NORMAL => "closed by the server",
                close::GOING_AWAY => "server shutting down",
                close::POLICY => "closed by server policy",
                close::TOO_LARGE => "message too large",
                close::TRY_AGAIN_LATER => "fell behind the server",
                _ => "closed",
            };
            let reason = crate::sanitize::sanitize_line(frame.reason.as_str());
            if reason.is_empty() {
                format!("{what} ({code})")
            } else {
                format!("{what} ({code}: {reason})")
            }
        }
    }
}

/// A line waiting to be sent or acknowledged.
#[derive(Debug, Clone)]
struct Outgoing {
    id: String,
    text: String,
    /// The message this line answers.
    reply_to: Option<u64>,
    /// Sent on a connection that dropped before its `ack`: the server may
    /// have stored it.
    maybe_sent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not joined on the current connection (or no connection).
    Idle,
    /// `join` sent, waiting for `joined`.
    Joining,
    /// `joined` received; the backlog up to `target` is arriving.
    Backlog { target: u64 },
    /// Everything up to the seam is delivered; sends may flow.
    Live,
}

/// The network task's view of one room the user wants joined.
#[derive(Debug)]
struct RoomSync {
    /// Newest seq delivered to the app; `since` of the next resume.
    last_seq: Option<u64>,
    phase: Phase,
    /// Whether the current join carried `since`.
    resuming: bool,
    /// Live messages that arrived before the backlog was complete.
    held: Vec<MessageRecord>,
    /// Lines not sent on this connection yet, oldest first.
    queue: VecDeque<Outgoing>,
    /// Lines sent on this connection, awaiting `ack`, oldest first.
    inflight: VecDeque<Outgoing>,
    /// The room's change counter as far as the app has every change:
    /// `since_rev` of the next resume. `None` before the first `joined`.
    rev: Option<u64>,
    /// `joined.rev` of a resume, taken as `rev` only once the first live
    /// event shows that the `changes` before it are all in: a connection
    /// that drops in the middle of them resumes from the old `rev` again.
    join_rev: Option<u64>,
}

impl RoomSync {
    fn new() -> Self {
        RoomSync {
            last_seq: None,
            phase: Phase::Idle,
            resuming: false,
            held: Vec::new(),
            queue: VecDeque::new(),
            inflight: VecDeque::new(),
            rev: None,
            join_rev: None,
        }
    }

    /// A live event arrived (with its own `rev`, for changes): every
    /// `changes` event of the join came before it.
    fn live(&mut self, rev: Option<u64>) {
        let joined = self.join_rev.take();
        self.rev = self.rev.max(joined).max(rev);
    }

    /// Applies a change to a live message held back during a resume, so
    /// that it is not lost before the message reaches the app.
    fn change_held(&mut self, seq: u64, change: impl FnOnce(&mut MessageRecord)) {
        if let Some(message) = self.held.iter_mut().find(|m| m.seq == seq) {
            change(message);
        }
    }
}

/// An `Export` under way: the messages fetched so far, by seq.
#[derive(Debug, Clone)]
struct Export {
    room: String,
    path: PathBuf,
    messages: BTreeMap<u64, MessageRecord>,
}

/// How a room is joined the first time.
#[derive(Debug, Clone, PartialEq, Eq)]
enum JoinAs {
    Plain,
    /// Created as a private room when it does not exist.
    Private,
    /// The direct conversation with this user (`dm`).
    Dm(String),
}

/// What a request id on the wire was for.
#[derive(Debug, Clone)]
enum Pending {
    Join {
        room: String,
    },
    Page {
        room: String,
        before: Option<u64>,
    },
    /// The room list, page after page: the rooms of the pages so far.
    Rooms(Vec<RoomSummary>),
    Search,
    /// A page of an export.
    Export(Export),
    Other,
}

/// Results asked for per search page.
const SEARCH_PAGE: u64 = chat_proto::limits::DEFAULT_SEARCH as u64;

/// Paces sends below the server's rate limit so that a long offline queue
/// is delivered rather than refused.
#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    // Below the server's 20/s, burst 40, to leave room for clock skew and
    // frames bunching up on the way.
    const RATE: f64 = 15.0;
    const BURST: f64 = 20.0;

    fn new() -> Self {
        TokenBucket {
            tokens: Self::BURST,
            updated: Instant::now(),
        }
    }

    /// Takes a token, or says when the next one will be there.
    fn take(&mut self) -> Result<(), Instant> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * Self::RATE).min(Self::BURST);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(now + Duration::from_secs_f64((1.0 - self.tokens) / Self::RATE))
        }
    }

    /// Empties the bucket after the server said we were too fast.
    fn drain(&mut self) {
        self.tokens = 0.0;
        self.updated = Instant::now();
    }
}

/// How a connection ended.
enum End {
    Lost(String),
    Shutdown,
}

type Sent = Result<(), String>;

struct Worker {
    config: NetConfig,
    commands: mpsc::UnboundedReceiver<NetCommand>,
    events: mpsc::UnboundedSender<NetEvent>,
    session: Session,
    rooms: BTreeMap<String, RoomSync>,
    /// Requests on the current connection awaiting an answer, by id.
    requests: HashMap<String, Pending>,
    next_id: u64,
    bucket: TokenBucket,
    /// When the queue should be looked at again (waiting for a token).
    next_flush: Option<Instant>,
}

impl Worker {
    async fn run(mut self, first: Ws) {
        let mut ws = first;
        loop {
            let reason = match self.serve(&mut ws).await {
                End::Shutdown => return,
                End::Lost(reason) => reason,
            };
            self.connection_lost();
            match self.reconnect(reason).await {
                Some(next) => ws = next,
                None => return,
            }
        }
    }

    fn emit(&self, event: NetEvent) {
        let _ = self.events.send(event);
    }

    fn new_id(&mut self, prefix: char) -> String {
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }

    /// Retries with backoff until logged in again. `None`: shut down.
    async fn reconnect(&mut self, mut reason: String) -> Option<Ws> {
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let delay = backoff(&self.config, attempt);
            self.emit(NetEvent::Disconnected {
                reason: reason.clone(),
                retry_in: Some(delay),
            });
            if !self.wait_offline(Some(Instant::now() + delay)).await {
                return None;
            }
            self.emit(NetEvent::Connecting);
            let config = self.config.clone();
            let dial = connect_and_login(&config);
            tokio::pin!(dial);
            let result = loop {
                tokio::select! {
                    result = &mut dial => break result,
                    command = self.commands.recv() => match command {
                        None | Some(NetCommand::Shutdown) => return None,
                        Some(command) => self.offline_command(command),
                    },
                }
            };
            match result {
                Ok((ws, session)) => {
                    self.session = session.clone();
                    self.emit(NetEvent::Connected(session));
                    return Some(ws);
                }
                Err(ConnectError::AuthFailed) => {
                    // Retrying a refused password only earns lockouts.
                    self.emit(NetEvent::Disconnected {
                        reason: ConnectError::AuthFailed.to_string(),
                        retry_in: None,
                    });
                    if !self.wait_offline(None).await {
                        return None;
                    }
                    attempt = 0;
                    reason = "reconnecting".into();
                }
                Err(err) => reason = err.to_string(),
            }
        }
    }

    /// Handles commands while disconnected, until `until` (or a `Reconnect`
    /// command). False when the task should end.
    async fn wait_offline(&mut self, until: Option<Instant>) -> bool {
        loop {
            let command = match until {
                Some(deadline) => tokio::select! {
                    _ = sleep_until(deadline) => return true,
                    command = self.commands.recv() => command,
                },
                None => self.commands.recv().await,
            };
            match command {
                None | Some(NetCommand::Shutdown) => return false,
                Some(NetCommand::Reconnect) => return true,
                Some(command) => self.offline_command(command),
            }
        }
    }

    fn offline_command(&mut self, command: NetCommand) {
        match command {
            NetCommand::Join { room } => {
                self.rooms.entry(room).or_insert_with(RoomSync::new);
            }
            NetCommand::Leave { room } => self.forget_room(&room, "left the room"),
            NetCommand::Send { id, room, text } => self.enqueue(id, room, text, None),
            NetCommand::Reply {
                id,
                room,
                text,
                reply_to,
            } => self.enqueue(id, room, text, Some(reply_to)),
            NetCommand::Forget { room } => {
                self.forget_room(&room, "left the room");
                self.emit(NetEvent::Error {
                    code: None,
                    message: format!(
                        "not connected: {} stays in your rooms on other devices",
                        sanitize_line(&room)
                    ),
                });
            }
            // Membership is made online only: these wait for the user to
            // ask again.
            NetCommand::CreatePrivate { .. }
            | NetCommand::Dm { .. }
            | NetCommand::Invite { .. } => self.emit(NetEvent::Error {
                code: None,
                message: "not connected; try again once reconnected".into(),
            }),
            // A marker not sent now is sent with the next one.
            NetCommand::Read { .. } => {}
            // Changes to messages are made online only, like membership.
            NetCommand::Edit { .. }
            | NetCommand::Delete { .. }
            | NetCommand::React { .. }
            | NetCommand::Search { .. } => self.emit(NetEvent::Error {
                code: None,
                message: "not connected; try again once reconnected".into(),
            }),
            NetCommand::Export { room, path } => self.emit(NetEvent::ExportFailed {
                room,
                path,
                reason: "not connected".into(),
            }),
            NetCommand::History { room, before, .. } => self.emit(NetEvent::PageFailed {
                room,
                before,
                reason: "not connected".into(),
            }),
            NetCommand::Rooms | NetCommand::DeleteRoom { .. } => self.emit(NetEvent::Error {
                code: None,
                message: "not connected; try again once reconnected".into(),
            }),
            NetCommand::Typing { .. } | NetCommand::Reconnect | NetCommand::Shutdown => {}
        }
    }

    /// Validates a line and puts it in its room's queue; the caller flushes.
    fn enqueue(&mut self, id: String, room: String, text: String, reply_to: Option<u64>) {
        let fail = |code: ErrorCode, message: String| NetEvent::SendFailed {
            id: id.clone(),
            room: room.clone(),
            code: Some(code),
            message,
        };
        if !is_valid_id(&id) {
            self.emit(fail(ErrorCode::BadRequest, "id too long".into()));
            return;
        }
        let text = match normalize_text(&text) {
            Ok(text) => text,
            Err(err) => {
                let code = match err {
                    TextError::TooLarge(_) => ErrorCode::TooLarge,
                    _ => ErrorCode::BadRequest,
                };
                self.emit(fail(code, err.to_string()));
                return;
            }
        };
        let Some(sync) = self.rooms.get_mut(&room) else {
            self.emit(fail(ErrorCode::NotJoined, format!("not in room {room}")));
            return;
        };
        sync.queue.push_back(Outgoing {
            id,
            text,
            reply_to,
            maybe_sent: false,
        });
    }

    /// Drops a room and fails whatever was waiting to be sent to it.
    fn forget_room(&mut self, room: &str, why: &str) {
        if let Some(sync) = self.rooms.remove(room) {
            for line in sync.inflight.into_iter().chain(sync.queue) {
                self.emit(NetEvent::SendFailed {
                    id: line.id,
                    room: room.to_owned(),
                    code: Some(ErrorCode::NotJoined),
                    message: why.to_owned(),
                });
            }
        }
    }

    /// Puts every room back to `Idle`, unsent lines back in their queues,
    /// and fails the requests that died with the connection.
    fn connection_lost(&mut self) {
        for sync in self.rooms.values_mut() {
            sync.phase = Phase::Idle;
            sync.held.clear();
            // An echoed line was acknowledged at its echo: what is still in
            // flight may or may not have been stored.
            while let Some(mut line) = sync.inflight.pop_back() {
                line.maybe_sent = true;
                sync.queue.push_front(line);
            }
        }
        for (_, pending) in std::mem::take(&mut self.requests) {
            match pending {
                Pending::Page { room, before } => self.emit(NetEvent::PageFailed {
                    room,
                    before,
                    reason: "connection lost".into(),
                }),
                Pending::Export(job) => self.emit(NetEvent::ExportFailed {
                    room: job.room,
                    path: job.path,
                    reason: "connection lost".into(),
                }),
                _ => {}
            }
        }
        self.next_flush = None;
    }

    /// One connection's life: joins every room, then serves the socket and
    /// the app's commands until the connection ends.
    async fn serve(&mut self, ws: &mut Ws) -> End {
        let names: Vec<String> = self.rooms.keys().cloned().collect();
        for room in names {
            if let Err(reason) = self.send_join(ws, &room).await {
                return End::Lost(reason);
            }
        }
        let silence = self.config.timeout;
        let mut last_heard = Instant::now();
        let mut pinged = false;
        let mut ticker = tokio::time::interval(silence / 4);
        loop {
            let flush_at = self.next_flush;
            let step: Sent = tokio::select! {
                frame = ws.next() => {
                    last_heard = Instant::now();
                    pinged = false;
                    match frame {
                        Some(Ok(Message::Text(text))) => match decode_server(text.as_str()) {
                            Ok(event) => self.on_server_event(ws, event).await,
                            // A newer server's events are not our concern.
                            Err(_) => Ok(()),
                        },
                        Some(Ok(Message::Close(frame))) => Err(close_reason(frame)),
                        Some(Ok(_)) => Ok(()),
                        Some(Err(err)) => Err(err.to_string()),
                        None => Err("connection closed".into()),
                    }
                }
                command = self.commands.recv() => match command {
                    None | Some(NetCommand::Shutdown) => {
                        let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
                        return End::Shutdown;
                    }
                    Some(command) => self.online_command(ws, command).await,
                },
                _ = sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                    self.next_flush = None;
                    self.flush(ws).await
                }
                _ = ticker.tick() => {
                    let quiet = last_heard.elapsed();
                    if quiet >= silence * 2 {
                        Err("no answer from the server".into())
                    } else if quiet >= silence && !pinged {
                        pinged = true;
                        let id = self.new_id('p');
                        send(ws, Request::with_id(ClientEvent::Ping, id)).await
                    } else {
                        Ok(())
                    }
                }
            };
            if let Err(reason) = step {
                return End::Lost(reason);
            }
        }
    }

    async fn send_join(&mut self, ws: &mut Ws, room: &str) -> Sent {
        self.send_join_as(ws, room, JoinAs::Plain).await
    }

    /// Joins `room` as [`Worker::send_join`] does; the first time, as a new
    /// private room or a direct conversation's `dm`, whose answer is the
    /// same `joined`.
    async fn send_join_as(&mut self, ws: &mut Ws, room: &str, how: JoinAs) -> Sent {
        let Some(sync) = self.rooms.get_mut(room) else {
            return Ok(());
        };
        sync.phase = Phase::Joining;
        sync.resuming = sync.last_seq.is_some();
        let since = sync.last_seq;
        // Only a server that counts changes understands `since_rev`.
        let counts_changes = self.session.features.iter().any(|f| f == features::EDIT);
        let since_rev = sync.rev.filter(|_| since.is_some() && counts_changes);
        let id = self.new_id('j');
        self.requests.insert(
            id.clone(),
            Pending::Join {
                room: room.to_owned(),
            },
        );
        let join = match how {
            JoinAs::Plain | JoinAs::Private => ClientEvent::Join {
                room: room.to_owned(),
                since,
                private: how == JoinAs::Private,
                since_rev,
            },
            JoinAs::Dm(user) => ClientEvent::Dm { user },
        };
        send(ws, Request::with_id(join, id)).await
    }

    async fn online_command(&mut self, ws: &mut Ws, command: NetCommand) -> Sent {
        match command {
            NetCommand::Join { room } => {
                if self.rooms.contains_key(&room) {
                    return Ok(());
                }
                self.rooms.insert(room.clone(), RoomSync::new());
                self.send_join(ws, &room).await
            }
            NetCommand::Leave { room } => {
                let joined = self.rooms.contains_key(&room);
                self.forget_room(&room, "left the room");
                if !joined {
                    return Ok(());
                }
                let id = self.new_id('l');
                self.requests.insert(id.clone(), Pending::Other);
                let leave = ClientEvent::Leave {
                    room,
                    forget: false,
                };
                send(ws, Request::with_id(leave, id)).await
            }
            NetCommand::Send { id, room, text } => {
                self.enqueue(id, room, text, None);
                self.flush(ws).await
            }
            NetCommand::Reply {
                id,
                room,
                text,
                reply_to,
            } => {
                self.enqueue(id, room, text, Some(reply_to));
                self.flush(ws).await
            }
            NetCommand::Edit { room, seq, text } => {
                self.request(ws, 'e', ClientEvent::Edit { room, seq, text })
                    .await
            }
            NetCommand::Delete { room, seq } => {
                self.request(ws, 'x', ClientEvent::Delete { room, seq })
                    .await
            }
            NetCommand::React { room, seq, emoji } => {
                self.request(ws, 'a', ClientEvent::React { room, seq, emoji })
                    .await
            }
            NetCommand::Search { query, cursor } => {
                let id = self.new_id('q');
                self.requests.insert(id.clone(), Pending::Search);
                let search = ClientEvent::Search {
                    query,
                    room: None,
                    limit: Some(SEARCH_PAGE),
                    cursor,
                };
                send(ws, Request::with_id(search, id)).await
            }
            NetCommand::Export { room, path } => {
                let job = Export {
                    room,
                    path,
                    messages: BTreeMap::new(),
                };
                self.export_page(ws, job, None).await
            }
            NetCommand::History {
                room,
                before,
                limit,
            } => {
                let id = self.new_id('h');
                self.requests.insert(
                    id.clone(),
                    Pending::Page {
                        room: room.clone(),
                        before,
                    },
                );
                let limit = Some(limit.clamp(1, chat_proto::limits::MAX_PAGE as u64));
                let page = ClientEvent::History {
                    room,
                    before,
                    limit,
                };
                send(ws, Request::with_id(page, id)).await
            }
            NetCommand::Rooms => {
                let id = self.new_id('r');
                self.requests.insert(id.clone(), Pending::Rooms(Vec::new()));
                let first = ClientEvent::Rooms {
                    after: None,
                    limit: None,
                };
                send(ws, Request::with_id(first, id)).await
            }
            NetCommand::Typing { room } => {
                let live = self
                    .rooms
                    .get(&room)
                    .is_some_and(|sync| sync.phase == Phase::Live);
                if !live {
                    return Ok(());
                }
                send(ws, Request::new(ClientEvent::Typing { room })).await
            }
            NetCommand::DeleteRoom { room } => {
                let id = self.new_id('d');
                self.requests.insert(id.clone(), Pending::Other);
                send(ws, Request::with_id(ClientEvent::DeleteRoom { room }, id)).await
            }
            NetCommand::Forget { room } => {
                self.forget_room(&room, "left the room");
                let id = self.new_id('l');
                self.requests.insert(id.clone(), Pending::Other);
                let leave = ClientEvent::Leave { room, forget: true };
                send(ws, Request::with_id(leave, id)).await
            }
            NetCommand::CreatePrivate { room } => {
                if self.rooms.contains_key(&room) {
                    return Ok(());
                }
                self.rooms.insert(room.clone(), RoomSync::new());
                self.send_join_as(ws, &room, JoinAs::Private).await
            }
            NetCommand::Dm { user, room } => {
                if self.rooms.contains_key(&room) {
                    return Ok(());
                }
                self.rooms.insert(room.clone(), RoomSync::new());
                self.send_join_as(ws, &room, JoinAs::Dm(user)).await
            }
            NetCommand::Invite { room, user } => {
                let id = self.new_id('i');
                self.requests.insert(id.clone(), Pending::Other);
                send(ws, Request::with_id(ClientEvent::Invite { room, user }, id)).await
            }
            // No answer comes (the other devices are told).
            NetCommand::Read { room, seq } => {
                send(ws, Request::new(ClientEvent::Read { room, seq })).await
            }
            NetCommand::Reconnect | NetCommand::Shutdown => Ok(()),
        }
    }

    /// Forgets the request an answer is for.
    fn answered(&mut self, re: Option<String>) {
        if let Some(id) = re {
            self.requests.remove(&id);
        }
    }

    /// Sends a request whose only possible trouble is an `error` for the
    /// status bar (edit, delete, react: their answer is the broadcast).
    async fn request(&mut self, ws: &mut Ws, prefix: char, event: ClientEvent) -> Sent {
        let id = self.new_id(prefix);
        self.requests.insert(id.clone(), Pending::Other);
        send(ws, Request::with_id(event, id)).await
    }

    /// Asks for the page of an export before `before` (the newest first).
    async fn export_page(&mut self, ws: &mut Ws, job: Export, before: Option<u64>) -> Sent {
        let id = self.new_id('x');
        let page = ClientEvent::History {
            room: job.room.clone(),
            before,
            limit: Some(chat_proto::limits::MAX_PAGE as u64),
        };
        self.requests.insert(id.clone(), Pending::Export(job));
        send(ws, Request::with_id(page, id)).await
    }

    /// Writes a finished export on a blocking thread, so neither the
    /// socket nor the screen waits on the disk, and reports how it went.
    fn write_export(&self, job: Export) {
        let events = self.events.clone();
        tokio::task::spawn_blocking(move || {
            let text = crate::export::markdown(&job.room, &job.messages);
            let event = match std::fs::write(&job.path, text) {
                Ok(()) => NetEvent::Exported {
                    room: job.room,
                    path: job.path,
                    messages: job.messages.len(),
                },
                Err(err) => NetEvent::ExportFailed {
                    room: job.room,
                    path: job.path,
                    reason: err.to_string(),
                },
            };
            let _ = events.send(event);
        });
    }

    /// Sends queued lines of live rooms, oldest first, as the rate allows.
    async fn flush(&mut self, ws: &mut Ws) -> Sent {
        loop {
            let next = self
                .rooms
                .iter()
                .find(|(_, sync)| sync.phase == Phase::Live && !sync.queue.is_empty())
                .map(|(name, _)| name.clone());
            let Some(room) = next else {
                return Ok(());
            };
            if let Err(at) = self.bucket.take() {
                self.next_flush = Some(at);
                return Ok(());
            }
            let Some(sync) = self.rooms.get_mut(&room) else {
                return Ok(());
            };
            let Some(line) = sync.queue.pop_front() else {
                continue;
            };
            let request = Request::with_id(
                ClientEvent::Send {
                    room: room.clone(),
                    text: line.text.clone(),
                    reply_to: line.reply_to,
                },
                line.id.clone(),
            );
            sync.inflight.push_back(line);
            send(ws, request).await?;
        }
    }

    async fn on_server_event(&mut self, ws: &mut Ws, event: ServerEvent) -> Sent {
        match event {
            ServerEvent::Joined {
                room,
                last_seq,
                members,
                rev,
                re,
            } => {
                if let Some(id) = re {
                    self.requests.remove(&id);
                }
                let Some(sync) = self.rooms.get_mut(&room) else {
                    return Ok(());
                };
                sync.phase = Phase::Backlog { target: last_seq };
                // A first join's history holds the messages as they are
                // now; a resume's `changes` bring the older ones up to it.
                if sync.resuming {
                    sync.join_rev = Some(rev);
                } else {
                    sync.rev = Some(rev);
                    sync.join_rev = None;
                }
                self.emit(NetEvent::Joined {
                    room,
                    last_seq,
                    members,
                });
                Ok(())
            }
            ServerEvent::History {
                room,
                messages,
                has_more,
                re: Some(id),
            } => {
                match self.requests.remove(&id) {
                    Some(Pending::Page {
                        room: asked,
                        before,
                    }) if asked == room => {
                        self.emit(NetEvent::Page {
                            room,
                            before,
                            messages,
                            has_more,
                        });
                    }
                    Some(Pending::Join { .. }) => {
                        return self.on_backlog(ws, room, messages, has_more).await
                    }
                    Some(Pending::Export(mut job)) if job.room == room => {
                        let oldest = messages.iter().map(|m| m.seq).min();
                        job.messages
                            .extend(messages.into_iter().map(|m| (m.seq, m)));
                        return match oldest.filter(|_| has_more) {
                            Some(before) => self.export_page(ws, job, Some(before)).await,
                            None => {
                                self.write_export(job);
                                Ok(())
                            }
                        };
                    }
                    _ => {}
                }
                Ok(())
            }
            ServerEvent::History {
                room,
                messages,
                has_more,
                re: None,
            } => self.on_backlog(ws, room, messages, has_more).await,
            ServerEvent::Message(message) => {
                self.on_message(message);
                Ok(())
            }
            ServerEvent::Ack { re, room, seq, ts } => {
                let Some(id) = re else { return Ok(()) };
                if let Some(sync) = self.rooms.get_mut(&room) {
                    if let Some(at) = sync.inflight.iter().position(|line| line.id == id) {
                        sync.inflight.remove(at);
                        self.emit(NetEvent::Ack { id, room, seq, ts });
                    }
                }
                Ok(())
            }
            ServerEvent::Error { code, message, re } => {
                self.on_error(code, message, re);
                Ok(())
            }
            ServerEvent::Left { room, re: Some(id) } => {
                self.requests.remove(&id);
                self.emit(NetEvent::Left { room });
                Ok(())
            }
            // Another device of ours left it for good.
            ServerEvent::Left { room, re: None } => {
                self.forget_room(&room, "left the room on another device");
                self.emit(NetEvent::Forgotten { room });
                Ok(())
            }
            ServerEvent::Read { room, seq } => {
                self.emit(NetEvent::Read { room, seq });
                Ok(())
            }
            ServerEvent::Invited { room, user, by, re } => {
                if let Some(id) = re {
                    self.requests.remove(&id);
                }
                self.emit(NetEvent::Invited { room, user, by });
                Ok(())
            }
            ServerEvent::RoomDeleted { room, re } => {
                if let Some(id) = re {
                    self.requests.remove(&id);
                }
                self.forget_room(&room, "the room was deleted");
                self.emit(NetEvent::RoomDeleted { room });
                Ok(())
            }
            ServerEvent::Presence { room, user, state } => {
                if self.rooms.contains_key(&room) {
                    self.emit(NetEvent::Presence { room, user, state });
                }
                Ok(())
            }
            ServerEvent::Typing { room, user } => {
                if self.rooms.contains_key(&room) {
                    self.emit(NetEvent::Typing { room, user });
                }
                Ok(())
            }
            ServerEvent::Rooms {
                rooms,
                has_more,
                re,
            } => {
                let mut all = match re.and_then(|id| self.requests.remove(&id)) {
                    Some(Pending::Rooms(so_far)) => so_far,
                    _ => Vec::new(),
                };
                all.extend(rooms);
                // A server with more rooms than one answer holds: ask for
                // the next page, and show the list once it is whole.
                match all.last().map(|r| r.name.clone()).filter(|_| has_more) {
                    Some(after) => {
                        let id = self.new_id('r');
                        self.requests.insert(id.clone(), Pending::Rooms(all));
                        let next = ClientEvent::Rooms {
                            after: Some(after),
                            limit: None,
                        };
                        send(ws, Request::with_id(next, id)).await
                    }
                    None => {
                        self.emit(NetEvent::Rooms(all));
                        Ok(())
                    }
                }
            }
            ServerEvent::Pong { re } => {
                if let Some(id) = re {
                    self.requests.remove(&id);
                }
                Ok(())
            }
            ServerEvent::Welcome { .. } => Ok(()),
            ServerEvent::Edited {
                room,
                seq,
                text,
                edited_ts,
                rev,
                re,
            } => {
                self.answered(re);
                let Some(sync) = self.rooms.get_mut(&room) else {
                    return Ok(());
                };
                sync.live(Some(rev));
                sync.change_held(seq, |m| {
                    m.text = text.clone();
                    m.edited_ts = Some(edited_ts);
                });
                self.emit(NetEvent::Edited {
                    room,
                    seq,
                    text,
                    edited_ts,
                });
                Ok(())
            }
            ServerEvent::Deleted { room, seq, rev, re } => {
                self.answered(re);
                let Some(sync) = self.rooms.get_mut(&room) else {
                    return Ok(());
                };
                sync.live(Some(rev));
                sync.change_held(seq, |m| {
                    m.text.clear();
                    m.deleted = true;
                });
                self.emit(NetEvent::Deleted { room, seq });
                Ok(())
            }
            ServerEvent::Reaction {
                room,
                seq,
                user,
                emoji,
                on,
                rev,
                re,
            } => {
                self.answered(re);
                let Some(sync) = self.rooms.get_mut(&room) else {
                    return Ok(());
                };
                sync.live(Some(rev));
                sync.change_held(seq, |m| m.reactions.set(&emoji, &user, on));
                self.emit(NetEvent::Reaction {
                    room,
                    seq,
                    user,
                    emoji,
                    on,
                });
                Ok(())
            }
            // Part of a resume: `rev` is taken at the first live event
            // (see `RoomSync::join_rev`).
            ServerEvent::Changes { room, messages, .. } => {
                if self.rooms.contains_key(&room) {
                    self.emit(NetEvent::Changes { room, messages });
                }
                Ok(())
            }
            ServerEvent::SearchResults {
                query,
                messages,
                next,
                re,
            } => {
                if let Some(Pending::Search) = re.and_then(|id| self.requests.remove(&id)) {
                    self.emit(NetEvent::SearchResults {
                        query,
                        messages,
                        next,
                    });
                }
                Ok(())
            }
        }
    }

    /// A `history` that follows a `join`.
    async fn on_backlog(
        &mut self,
        ws: &mut Ws,
        room: String,
        messages: Vec<MessageRecord>,
        has_more: bool,
    ) -> Sent {
        let me = self.session.user.clone();
        let Some(sync) = self.rooms.get_mut(&room) else {
            return Ok(());
        };
        let floor = sync.last_seq.unwrap_or(0);
        let first_join = sync.last_seq.is_none();
        let mut fresh: Vec<MessageRecord> = messages
            .into_iter()
            .filter(|m| first_join || m.seq > floor)
            .collect();
        fresh.sort_by_key(|m| m.seq);
        fresh.dedup_by_key(|m| m.seq);
        let newest = fresh.last().map_or(floor, |m| m.seq.max(floor));
        sync.last_seq = Some(newest);
        // Lines that were on the wire when the connection dropped and are
        // among the messages after the seam were stored: don't send again.
        let mut acks = Vec::new();
        for message in fresh.iter().filter(|m| m.user == me) {
            if let Some(at) = sync
                .queue
                .iter()
                .position(|line| line.maybe_sent && line.text == message.text)
            {
                if let Some(line) = sync.queue.remove(at) {
                    acks.push(NetEvent::Ack {
                        id: line.id,
                        room: room.clone(),
                        seq: message.seq,
                        ts: message.ts,
                    });
                }
            }
        }
        let complete = match sync.phase {
            Phase::Backlog { target } => !sync.resuming || fresh.is_empty() || newest >= target,
            _ => true,
        };
        let resumed = sync.resuming;
        let mut held = Vec::new();
        if complete {
            sync.phase = Phase::Live;
            held = std::mem::take(&mut sync.held);
            // What is still marked maybe-sent was not stored: send it again.
            for line in &mut sync.queue {
                line.maybe_sent = false;
            }
        }
        // Acknowledged before their messages arrive in the app, as live
        // echoes are.
        for ack in acks {
            self.emit(ack);
        }
        self.emit(NetEvent::Backlog {
            room,
            messages: fresh,
            has_more,
            resumed,
        });
        held.sort_by_key(|m| m.seq);
        for message in held {
            self.on_message(message);
        }
        if complete {
            self.flush(ws).await
        } else {
            Ok(())
        }
    }

    fn on_message(&mut self, message: MessageRecord) {
        let me = &self.session.user;
        let Some(sync) = self.rooms.get_mut(&message.room) else {
            return;
        };
        match sync.phase {
            Phase::Joining | Phase::Backlog { .. } if sync.resuming => {
                sync.held.push(message);
                return;
            }
            _ => {}
        }
        if sync.last_seq.is_some_and(|last| message.seq <= last) {
            return;
        }
        sync.last_seq = Some(message.seq);
        if sync.phase == Phase::Live {
            sync.live(None);
        }
        // Our own line back from the server is stored: it is acknowledged
        // now (the `ack` that follows finds nothing in flight). The oldest
        // line in flight with its text is the one: this connection's sends
        // are stored in order. This is the one place where a line is
        // matched to a message; the app knows its lines by id only.
        if &message.user == me {
            if let Some(at) = sync
                .inflight
                .iter()
                .position(|line| line.text == message.text)
            {
                if let Some(line) = sync.inflight.remove(at) {
                    self.emit(NetEvent::Ack {
                        id: line.id,
                        room: message.room.clone(),
                        seq: message.seq,
                        ts: message.ts,
                    });
                }
            }
        }
        self.emit(NetEvent::Message(message));
    }

    fn on_error(&mut self, code: ErrorCode, message: String, re: Option<String>) {
        let Some(id) = re else {
            self.emit(NetEvent::Error {
                code: Some(code),
                message,
            });
            return;
        };
        // A refused send?
        for (room, sync) in &mut self.rooms {
            let Some(at) = sync.inflight.iter().position(|line| line.id == id) else {
                continue;
            };
            let room = room.clone();
            if code == ErrorCode::RateLimited {
                // Too fast after all: back in line, and wait for the bucket.
                if let Some(line) = sync.inflight.remove(at) {
                    sync.queue.push_front(line);
                }
                self.bucket.drain();
                self.next_flush = Some(Instant::now() + Duration::from_secs(1));
                return;
            }
            sync.inflight.remove(at);
            self.emit(NetEvent::SendFailed {
                id,
                room,
                code: Some(code),
                message,
            });
            return;
        }
        match self.requests.remove(&id) {
            Some(Pending::Join { room }) => {
                self.forget_room(&room, "could not join the room");
                self.emit(NetEvent::JoinFailed {
                    room,
                    code,
                    message,
                });
            }
            Some(Pending::Page { room, before }) => self.emit(NetEvent::PageFailed {
                room,
                before,
                reason: format!("{code}: {message}"),
            }),
            Some(Pending::Export(job)) => self.emit(NetEvent::ExportFailed {
                room: job.room,
                path: job.path,
                reason: format!("{code}: {message}"),
            }),
            Some(Pending::Other) | Some(Pending::Rooms(_)) | Some(Pending::Search) | None => self
                .emit(NetEvent::Error {
                    code: Some(code),
                    message,
                }),
        }
    }
}

async fn send(ws: &mut Ws, request: Request) -> Sent {
    ws.send(Message::text(encode(&request)))
        .await
        .map_err(|err| err.to_string())
}

/// The delay before reconnect attempt `attempt` (1-based): `backoff_min`
/// doubling up to `backoff_max`, then ±20% jitter so that clients dropped
/// together do not come back together.
pub fn backoff(config: &NetConfig, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(16);
    let base = config
        .backoff_min
        .saturating_mul(1 << exp)
        .min(config.backoff_max);
    let jitter = 0.8 + 0.4 * random_unit();
    base.mul_f64(jitter).min(config.backoff_max)
}

/// A number in [0, 1) that differs between calls; jitter needs no more.
fn random_unit() -> f64 {
    let bits = RandomState::new().hash_one(std::time::SystemTime::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let config = NetConfig::new("ws://x", "u", "p");
        for (attempt, base) in [
            (1, 1.0),
            (2, 2.0),
            (3, 4.0),
            (5, 16.0),
            (6, 30.0),
            (40, 30.0),
        ] {
            for _ in 0..20 {
                let d = backoff(&config, attempt).as_secs_f64();
                assert!(
                    d >= base * 0.8 - 1e-9 && d <= (base * 1.2f64).min(30.0) + 1e-9,
                    "{attempt}: {d}"
                );
            }
        }
    }

    #[test]
    fn connect_errors_read_well() {
        assert_eq!(
            ConnectError::AuthFailed.to_string(),
            "login failed: wrong user name or password"
        );
        assert!(ConnectError::Http(404).to_string().contains("/ws"));
    }
}
