//! The numbers of the protocol: sizes, counts and rates that both ends rely
//! on. Changing one of these changes the public contract.

/// Version of the wire protocol spoken by this crate, sent in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest accepted WebSocket message, after reassembling fragments. Exactly
/// this size is accepted; one byte more closes the connection with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// User and room names: 1 to this many characters.
pub const MAX_NAME_CHARS: usize = 32;

/// Message text, after trimming trailing whitespace: 1 to this many bytes.
pub const MAX_TEXT_BYTES: usize = 4096;

/// A request's `id`: at most this many characters.
pub const MAX_ID_CHARS: usize = 64;

/// Password length bounds for `register`, in bytes.
pub const MIN_PASSWORD_BYTES: usize = 8;
/// See [`MIN_PASSWORD_BYTES`].
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Messages in the `history` event that follows a `join` without `since`.
pub const JOIN_HISTORY: usize = 50;

/// Default and largest `limit` of a `history` request, and the largest page
/// of the backlog sent after `join` with `since`.
pub const DEFAULT_PAGE: usize = 50;
/// See [`DEFAULT_PAGE`].
pub const MAX_PAGE: usize = 200;

/// Seconds a new connection has to log in before it is closed with 1008.
pub const LOGIN_TIMEOUT_SECS: u64 = 10;
/// Most rooms in one `rooms` answer (the default and the maximum of
/// `limit`).
pub const MAX_ROOMS_PAGE: usize = 1000;

/// A reaction's emoji: 1 to this many bytes.
pub const MAX_EMOJI_BYTES: usize = 32;

/// Default and largest `limit` of a `search`.
pub const DEFAULT_SEARCH: usize = 20;
/// See [`DEFAULT_SEARCH`].
pub const MAX_SEARCH: usize = 100;
/// A search query: at most this many bytes, and at most
/// [`MAX_SEARCH_WORDS`] words, so one request cannot ask for unbounded work.
pub const MAX_QUERY_BYTES: usize = 512;
/// See [`MAX_QUERY_BYTES`].
pub const MAX_SEARCH_WORDS: usize = 16;

/// Most messages in one `changes` event.
pub const MAX_CHANGES_PAGE: usize = 200;

/// Failed logins on one connection before it is closed with 1008.
pub const MAX_LOGIN_FAILURES: u32 = 3;

/// Default send rate limit per connection: sustained rate and burst.
pub const SEND_RATE_PER_SEC: u32 = 20;
/// See [`SEND_RATE_PER_SEC`].
pub const SEND_BURST: u32 = 40;

/// Default TCP port of the server.
pub const DEFAULT_PORT: u16 = 8765;

/// WebSocket close codes used by the server.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Policy: login timeout or too many failed logins.
    pub const POLICY: u16 = 1008;
    /// A message larger than [`super::MAX_FRAME_BYTES`].
    pub const TOO_LARGE: u16 = 1009;
    /// The client fell too far behind: reconnect and `join` with `since`.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}
