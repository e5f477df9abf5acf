//! `chat-tui`, the terminal client of the chat: a library so that the
//! binary, the tests and the end-to-end suite share one implementation.
//!
//! - [`app`]: the state and `update(&mut App, Event) -> Option<Action>`.
//! - [`ui`]: the pure `render(&App, &mut Frame)`, into the areas of
//!   [`layout`].
//! - [`net`]: the task that owns the WebSocket (login, reconnect, resume,
//!   offline queue), spoken to over channels.
//! - [`tls`]: dialing `ws://` and `wss://`, and which certificates to
//!   trust (authorities, known servers, a pinned fingerprint).
//! - [`notify`]: which messages interrupt the user, and how.
//! - [`input`], [`wrap`], [`sanitize`], [`timeline`], [`clock`],
//!   [`config`]: the pieces they are built from.
//! - [`export`]: the Markdown file `/export` writes.
//! - [`bench`]: the render-time measurement behind `--bench-render`.

pub mod app;
pub mod bench;
pub mod clock;
pub mod config;
pub mod export;
pub mod input;
pub mod layout;
pub mod net;
pub mod notify;
pub mod sanitize;
pub mod timeline;
pub mod tls;
pub mod ui;
pub mod wrap;
