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
        /// With `since`: also receive, as `changes`, the current state of
        /// every message up to `since` changed after this `rev` (part 2).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_rev: Option<u64>,
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
    /// Post a message to a joined room, optionally as a reply to message
    /// `reply_to` of the same room (part 2).
    Send {
        room: String,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<u64>,
    },
    /// Replace the text of one's own message `seq` (part 2).
    Edit {
        room: String,
        seq: u64,
        text: String,
    },
    /// Delete message `seq`: its author or an admin (part 2).
    Delete { room: String, seq: u64 },
    /// Toggle the caller's reaction `emoji` on message `seq` (part 2).
    React {
        room: String,
        seq: u64,
        emoji: String,
    },
    /// Find messages containing every word of `query` (as prefixes), in
    /// `room` or in every room the user may read, newest first (part 2).
    Search {
        query: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
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

/// One stored message, as it appears inside `history`, `changes` and
/// `search_results` and (with `type`) as a `message` event. The part-2
/// fields appear only when they apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub room: String,
    /// Position in the room: 1, 2, 3, … with no holes.
    pub seq: u64,
    pub user: String,
    /// Empty once the message is deleted.
    pub text: String,
    /// Milliseconds since the Unix epoch, when the server stored it.
    pub ts: i64,
    /// The message of the same room this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// When the text was last edited, milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_ts: Option<i64>,
    /// The message was deleted: its `seq` stays taken, its text is gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// Who reacted with what.
    #[serde(default, skip_serializing_if = "Reactions::is_empty")]
    pub reactions: Reactions,
}

/// The reactions on a message: each emoji with the users who chose it, in
/// the order they reacted; emoji in the order of their first reaction. On
/// the wire a JSON object (`{"👍":["alice","bob"]}`) whose key order is
/// kept both ways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reactions(pub Vec<(String, Vec<String>)>);

impl Reactions {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The users who reacted with `emoji`.
    pub fn users(&self, emoji: &str) -> &[String] {
        self.0
            .iter()
            .find(|(e, _)| e == emoji)
            .map_or(&[], |(_, users)| users.as_slice())
    }

    /// Records that `user` turned reaction `emoji` on (`on`) or off.
    pub fn set(&mut self, emoji: &str, user: &str, on: bool) {
        let at = self.0.iter().position(|(e, _)| e == emoji);
        match (at, on) {
            (Some(at), true) => {
                if !self.0[at].1.iter().any(|u| u == user) {
                    self.0[at].1.push(user.to_owned());
                }
            }
            (None, true) => self.0.push((emoji.to_owned(), vec![user.to_owned()])),
            (Some(at), false) => {
                self.0[at].1.retain(|u| u != user);
                if self.0[at].1.is_empty() {
                    self.0.remove(at);
                }
            }
            (None, false) => {}
        }
    }
}

impl Serialize for Reactions {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (emoji, users) in &self.0 {
            map.serialize_entry(emoji, users)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Reactions {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> serde::de::Visitor<'de> for InOrder {
            type Value = Reactions;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of emoji to lists of user names")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Reactions, A::Error> {
                let mut out = Vec::new();
                while let Some((emoji, users)) = map.next_entry::<String, Vec<String>>()? {
                    out.push((emoji, users));
                }
                Ok(Reactions(out))
            }
        }
        deserializer.deserialize_map(InOrder)
    }
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
        /// The room's change counter (part 2): every edit, deletion and
        /// reaction adds one.
        #[serde(default)]
        rev: u64,
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
    /// Message `seq` has a new text (part 2).
    Edited {
        room: String,
        seq: u64,
        text: String,
        edited_ts: i64,
        rev: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        re: Option<String>,
    },
    /// Message `seq` was deleted (part 2).
    Deleted {
        room: String,
        seq: u64,
        rev: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        re: Option<String>,
    },
    /// `user` turned reaction `emoji` on message `seq` on or off (part 2).
    Reaction {
        room: String,
        seq: u64,
        user: String,
        emoji: String,
        on: bool,
        rev: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        re: Option<String>,
    },
    /// After a `join` with `since_rev`: the current state of messages
    /// changed while the client was away, as of the room's `rev`.
    Changes {
        room: String,
        messages: Vec<MessageRecord>,
        rev: u64,
    },
    /// The answer to `search`: newest first; `next`, when present, is the
    /// `cursor` of the following page.
    SearchResults {
        query: String,
        messages: Vec<MessageRecord>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
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
    /// The request named a message that does not exist or was deleted
    /// (part 2).
    NoSuchMessage,
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
            ErrorCode::NoSuchMessage => "no_such_message",
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
