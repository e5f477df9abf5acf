//! The chat wire protocol, version 1: the contract between `chat-server` and
//! every client (`chat-tui`, `chat-bench`, the end-to-end tests, websocat).
//!
//! Every WebSocket text frame carries one JSON object, an *event*, tagged by
//! its `type` field. [`ClientEvent`] is what clients send, [`ServerEvent`]
//! what the server sends. Names, text and ids are checked by the functions in
//! [`validate`]; the limits live in [`limits`]. This crate does no I/O.
//!
//! The users' reference for the protocol is `docs/protocol.md` at the root of
//! the workspace; the golden tests in `tests/golden.rs` pin every event's wire
//! form to it.

pub mod event;
pub mod export;
pub mod limits;
pub mod validate;

pub use event::{
    decode_client, decode_server, encode, AccountRoom, ClientEvent, DecodeError, ErrorCode,
    MessageRecord, PresenceState, Reactions, Request, RoomSummary, ServerEvent,
};
pub use limits::PROTOCOL_VERSION;

/// Names of the part-2 features, as `welcome.features` lists them.
pub mod features {
    /// The account's rooms in `welcome`, `read` markers, `leave` with `forget`.
    pub const READ: &str = "read";
    /// `rooms` with `after` and `limit`, and `has_more`.
    pub const ROOMS_PAGING: &str = "rooms_paging";
    /// `join` with `private`, and `invite`.
    pub const PRIVATE: &str = "private";
    /// `dm`.
    pub const DM: &str = "dm";
    /// `edit` and `delete`, `rev`, `since_rev` and `changes`.
    pub const EDIT: &str = "edit";
    /// `react`.
    pub const REACT: &str = "react";
    /// `send` with `reply_to`.
    pub const REPLY: &str = "reply";
    /// `search`.
    pub const SEARCH: &str = "search";
}
