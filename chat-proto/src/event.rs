//! The events of the protocol, named by direction: [`ClientEvent`] (client to
//! server, wrapped in a [`Request`] with its optional `id`) and
//! [`ServerEvent`] (server to client). Encoding and decoding with errors that
//! say what was wrong, and keep the request's `id` when it could be read.

use serde::{Deserialize, Serialize};

use crate::limits::MAX_ID_CHARS;
use crate::validate::is_valid_id;

/// A request from a client: an event plus the optional `id` the server
/// echoes back as `re` in its direct answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the client, at most 64 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What the client asks for.
    #[serde(flatten)]
    pub event: ClientEvent,
}

impl Request {
    /// A request without an `id`.
    pub fn new(event: ClientEvent) -> Self {
        Request { id: None, event }
    }

    /// A request with an `id`.
    pub fn with_id(event: ClientEvent, id: impl Into<String>) -> Self {
        Request {
            id: Some(id.into()),
            event,
        }
    }
}

/// Everything a client can ask of the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientEvent {
    /// Log in to an existing account.
    Login { user: String, password: String },
    /// Create an account and log in (servers with open registration only).
    Register { user: String, password: String },
    /// List the server's rooms in name order: those after `after`, at most
    /// `limit` (default and maximum [`crate::limits::MAX_ROOMS_PAGE`]).
    Rooms {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
    },
    /// Join a room, creating it if needed. With `since`, resume: receive
    /// every message with `seq > since`.
    Join {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        /// Create the room as private when it does not exist (part 2).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        private: bool,
    },
    /// Make `user` a member of the private room `room` (part 2).
    Invite { room: String, user: String },
    /// Open the direct conversation with `user` (part 2).
    Dm { user: String },
    /// Leave a joined room. With `forget`, also remove it from the
    /// account's rooms (part 2), on every device.
    Leave {
        room: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        forget: bool,
    },
    /// Move the user's read marker of `room` forward to `seq` (part 2).
    Read { room: String, seq: u64 },
    /// Post a message to a joined room.
    Send { room: String, text: String },
    /// Page backwards through a room's history.
    History {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
    },
    /// Tell the other members that the user is typing.
    Typing { room: String },
    /// Delete a room and its history (admins only).
    DeleteRoom { room: String },
    /// Liveness check; answered by `pong`.
    Ping,
}

/// One stored message, as it appears inside `history` and (with `type`) as a
/// `message` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub room: String,
    /// Position in the room: 1, 2, 3, … with no holes.
    pub seq: u64,
    pub user: String,
    pub text: String,
    /// Milliseconds since the Unix epoch, when the server stored it.
    pub ts: i64,
}

/// One line of the `rooms` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSummary {
    pub name: String,
    /// Users online in the room right now.
    pub members: u64,
    /// Newest `seq` of the room, 0 when empty.
    pub last_seq: u64,
    /// `ts` of the newest message; absent when the room is empty. (An
    /// optional addition to protocol version 1.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ts: Option<i64>,
}

/// One of the account's rooms, in `welcome` (part 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRoom {
    pub name: String,
    /// Newest `seq` of the room, 0 when empty.
    pub last_seq: u64,
    /// The user's read marker: unread messages are `last_seq - read`.
    pub read: u64,
    /// Whether only its members may see it.
    #[serde(default)]
    pub private: bool,
}

/// Whether a `presence` event announces an arrival or a departure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    Joined,
    Left,
}

/// Everything the server sends. `re` is the `id` of the request this event
/// directly answers, when it had one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerEvent {
    Welcome {
        user: String,
        admin: bool,
        protocol: u32,
        server: String,
        /// What the server supports of part 2 ([`crate::features`]).
        #[serde(default)]
        features: Vec<String>,
        /// The account's rooms (part 2).
        #[serde(default)]
        rooms: Vec<AccountRoom>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        re: Option<String>,
    },
    Rooms {
        rooms: Vec<RoomSummary>,
        /// More rooms follow: ask again with `after` the last name.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        has_more: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        re: Option<String>,
    },
    Joined {
        room: String,
        last_seq: u64,
        members: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        re: Option<String>,
    },
    History {
        room: String,
        messages: Vec<MessageRecord>,
        has_more: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        re: Option<String>,
    },
    Message(MessageRecord),
    Ack {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        re: Option<String>,
        room: String,
        seq: u64,
        ts: i64,
    },
    Left {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        re: Option<String>,
    },
    /// The user's read marker of `room` moved (from another connection of
    /// the same user).
    Read {
        room: String,
        seq: u64,
    },
    /// `user` became a member of the private room `room`, invited by `by`.
    Invited {
        room: String,
        user: String,
        by: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        re: Option<String>,
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
    RoomDeleted {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        re: Option<String>,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        re: Option<String>,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        re: Option<String>,
    },
}

impl ServerEvent {
    /// An `error` event.
    pub fn error(code: ErrorCode, message: impl Into<String>, re: Option<String>) -> Self {
        ServerEvent::Error {
            code,
            message: message.into(),
            re,
        }
    }
}

/// The protocol's error codes; clients match on these, not on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    AuthRequired,
    AuthFailed,
    RegistrationClosed,
    UserExists,
    InvalidName,
    TooLarge,
    NotJoined,
    NoSuchRoom,
    Forbidden,
    RateLimited,
    Internal,
    /// The server cannot take this request now (too many logins waiting):
    /// try again in a moment. The connection stays open.
    Busy,
    /// The request named a user that does not exist (part 2).
    NoSuchUser,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::AuthRequired => "auth_required",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::RegistrationClosed => "registration_closed",
            ErrorCode::UserExists => "user_exists",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::NoSuchRoom => "no_such_room",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::Busy => "busy",
            ErrorCode::NoSuchUser => "no_such_user",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A frame that is not a valid request. The server answers it with
/// `bad_request`, echoing `id` when it could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct DecodeError {
    /// The request's `id`, when the frame was a JSON object with a valid one.
    pub id: Option<String>,
    /// What was wrong, for the error's `message`.
    pub reason: String,
}

/// Decodes one text frame from a client.
pub fn decode_client(text: &str) -> Result<Request, DecodeError> {
    match serde_json::from_str::<Request>(text) {
        Ok(request) => match &request.id {
            Some(id) if !is_valid_id(id) => Err(DecodeError {
                id: None,
                reason: format!("id is longer than {MAX_ID_CHARS} characters"),
            }),
            _ => Ok(request),
        },
        Err(err) => Err(DecodeError {
            id: readable_id(text),
            reason: describe(err),
        }),
    }
}

/// Decodes one text frame from the server.
pub fn decode_server(text: &str) -> Result<ServerEvent, DecodeError> {
    serde_json::from_str(text).map_err(|err| DecodeError {
        id: None,
        reason: describe(err),
    })
}

/// Encodes any event as the text of one frame.
pub fn encode<T: Serialize>(event: &T) -> String {
    // Serializing these types cannot fail: every map key is a string and no
    // custom Serialize impl returns an error.
    serde_json::to_string(event).unwrap_or_else(|_| String::from("{}"))
}

/// The `id` of a frame that failed to decode, when it is an object with a
/// valid string `id`: only the error path pays for this second parse.
fn readable_id(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct JustId {
        id: Option<serde_json::Value>,
    }
    let parsed: JustId = serde_json::from_str(text).ok()?;
    match parsed.id? {
        serde_json::Value::String(id) if is_valid_id(&id) => Some(id),
        _ => None,
    }
}

fn describe(err: serde_json::Error) -> String {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof => format!("malformed JSON: {err}"),
        Category::Data => format!("invalid request: {err}"),
        Category::Io => format!("unreadable request: {err}"),
    }
}
