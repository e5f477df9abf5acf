//! `chat-server`: a WebSocket chat server with rooms, stored history
//! (SQLite or PostgreSQL) and optional Redis fan-out between several nodes.
//!
//! The binary (`main.rs`) is a thin command line over these modules, started
//! in this order: [`store`] (the `Store` trait and its backends), [`fanout`]
//! (local, or [`cluster`] over Redis), [`hub`] (rooms + fan-out + store and
//! the rules between them), [`server`] (accept loop, limits, shutdown) and
//! [`session`] (one connection: frames in, hub calls, frames out).
//! [`rooms`] is this node's membership and in-order delivery, [`auth`]
//! argon2 off the runtime, [`admin`] the account subcommands and
//! `migrate-db`, [`fdlimit`] the open-files limit, [`tls`] the certificate and the TLS side of `wss://`,
//! [`untrusted`] peer text on its way into logs, [`wire`] a connection's
//! frames after the handshake (tungstenite reads, one queue writes).

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod fanout;
pub mod fdlimit;
pub mod hub;
pub mod rooms;
pub mod server;
pub mod session;
pub mod store;
pub mod tls;
pub mod untrusted;
pub mod web;
pub mod wire;
