//! `chat-bench`: a load generator for `chat-server` that speaks the wire
//! protocol like any client and reports what users feel: delivered messages
//! a second, publish-to-receive latency, logins a second, memory per
//! connection, history page latency, and the CPU each side used.
//!
//! Every scenario starts its own server from the same build (the
//! `chat-server` next to this executable) on a fresh database (a temporary
//! SQLite file, or with `--backend postgres` a private PostgreSQL), with
//! the send rate limit off, or uses `--url` for a running one. Each prints a
//! table and then one line of JSON; `--smoke` runs it for a few seconds with
//! small numbers (what CI does). See BENCHMARKS.md for the method and the
//! figures.

mod attack;
mod client;
mod connections;
mod history;
mod load;
mod login;
mod postgres;
mod procs;
mod report;
mod search;
mod setup;
mod traffic;
mod web;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chat-bench", version, about = "Load generator for chat-server")]
struct Cli {
    /// Client runtime threads [default: the machine's cores].
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// C clients in one room; S senders at full speed, then at half that.
    Fanout(load::LoadArgs),
    /// Many small rooms (100 x 10), every member talking.
    Rooms(load::LoadArgs),
    /// N logged-in idle connections: connect time and server memory each.
    Connections(connections::ConnectionsArgs),
    /// 50-message pages at random positions of a 1,000,000-message room.
    History(history::HistoryArgs),
    /// 20-result searches over 1,000,000 messages in ten rooms.
    Search(search::SearchArgs),
    /// A flood of logins while connected users chat; with --attack, a
    /// wrong-password flood from one address against a user's logins.
    Login(login::LoginArgs),
    /// Acked messages a second from many senders in many rooms.
    Ingest(load::LoadArgs),
    /// Fan-out across two nodes through Redis, against one node.
    Cluster(load::LoadArgs),
    /// The browser client in a headless Chromium: page load to the first
    /// message on screen, and the page's memory after scrolling through
    /// 10,000 messages.
    Web(web::WebArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = cli.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("chat-bench: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.scenario {
            Scenario::Fanout(args) => load::fanout(args).await,
            Scenario::Rooms(args) => load::rooms(args).await,
            Scenario::Connections(args) => connections::connections(args).await,
            Scenario::History(args) => history::history(args).await,
            Scenario::Search(args) => search::search(args).await,
            Scenario::Login(args) => login::login(args).await,
            Scenario::Ingest(args) => load::ingest(args).await,
            Scenario::Cluster(args) => load::cluster(args).await,
            Scenario::Web(args) => web::web(args).await,
        }
    });
    // Idle connection tasks may still be parked: do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("chat-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
