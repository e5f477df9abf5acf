//! `chat-server`: a WebSocket chat server with rooms, SQLite history and
//! optional Redis fan-out between several processes.
//!
//! The binary (`main.rs`) is a thin command line over these modules:
//! [`server`] (accept loop, limits, shutdown), [`session`] (one connection),
//! [`rooms`] (membership and in-order fan-out), [`store`] (SQLite, one writer
//! with group commit), [`auth`] (argon2 off the runtime), [`broker`] and
//! [`cluster`] (how events reach other processes), [`admin`] (user
//! management subcommands).

pub mod admin;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod rooms;
pub mod server;
pub mod session;
pub mod store;
