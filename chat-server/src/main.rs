//! The `chat-server` command: `serve` runs the server; `useradd`, `passwd`,
//! `userdel` and `users` manage accounts in its database; `migrate-db`
//! copies a whole database into another (SQLite to PostgreSQL and back).

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, Result};
use chat_server::server::{client_urls, ServeConfig, Server};
use chat_server::store::{Database, Durability};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "chat-server",
    version,
    about = "Terminal chat server: rooms, history, WebSocket"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct DbArg {
    /// SQLite database file, or postgres://USER@HOST:PORT/NAME
    /// [default: ~/.local/share/chat-server/chat.db]
    #[arg(long, env = "CHAT_DB", global = true)]
    db: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Address to listen on; 0.0.0.0:8765 to reach it from the LAN.
        #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:8765")]
        listen: SocketAddr,
        #[command(flatten)]
        db: DbArg,
        /// Let anyone create an account with `register`.
        #[arg(long)]
        open_registration: bool,
        /// Connections served at once; more are refused with HTTP 503.
        #[arg(long, default_value_t = 20_000)]
        max_connections: usize,
        /// Connections served at once from one address (IPv6: one /64);
        /// 0 for no limit.
        #[arg(long, default_value_t = 64)]
        max_connections_per_ip: usize,
        /// Redis URL: run as one node of a cluster sharing the database
        /// (a PostgreSQL URL, or one SQLite file on one host).
        #[arg(long, env = "CHAT_REDIS_URL")]
        redis: Option<String>,
        /// Messages per second one connection may send (0: no limit).
        #[arg(long, default_value_t = chat_proto::limits::SEND_RATE_PER_SEC)]
        send_rate: u32,
        /// full: an acknowledged message survives a power cut; relaxed: it
        /// survives a crash of the server, and commits are cheaper.
        #[arg(long, value_enum, default_value_t = Durability::Full)]
        durability: Durability,
        /// Burst of messages above the rate.
        #[arg(long, default_value_t = chat_proto::limits::SEND_BURST)]
        send_burst: u32,
    },
    /// Create a user (password prompted, or one line on standard input).
    Useradd {
        name: String,
        /// Allow the user to delete rooms.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        db: DbArg,
    },
    /// Change a user's password.
    Passwd {
        name: String,
        #[command(flatten)]
        db: DbArg,
    },
    /// Delete a user (their messages stay).
    Userdel {
        name: String,
        #[command(flatten)]
        db: DbArg,
    },
    /// List users.
    Users {
        #[command(flatten)]
        db: DbArg,
    },
    /// Copy every user, room and message into an empty database (stop the
    /// servers first).
    MigrateDb {
        /// The database to copy: a SQLite file or a postgres:// URL.
        #[arg(long)]
        from: String,
        /// The empty database to fill: a SQLite file or a postgres:// URL.
        #[arg(long)]
        to: String,
    },
}

fn db_path(arg: DbArg) -> Result<Database> {
    match arg.db {
        Some(value) => parse_db(&value),
        None => dirs::data_dir()
            .map(|dir| Database::Sqlite(dir.join("chat-server").join("chat.db")))
            .context("no data folder on this system: pass --db PATH"),
    }
}

fn parse_db(value: &str) -> Result<Database> {
    Ok(Database::parse(value)?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            listen,
            db,
            open_registration,
            max_connections,
            max_connections_per_ip,
            redis,
            send_rate,
            send_burst,
            durability,
        } => db_path(db).and_then(|db| {
            serve(
                listen,
                ServeConfig {
                    db,
                    durability,
                    open_registration,
                    max_connections,
                    max_connections_per_ip,
                    send_rate,
                    send_burst,
                    redis,
                },
            )
        }),
        Command::Useradd { name, admin, db } => {
            db_path(db).and_then(|db| chat_server::admin::useradd(&db, &name, admin))
        }
        Command::Passwd { name, db } => {
            db_path(db).and_then(|db| chat_server::admin::passwd(&db, &name))
        }
        Command::Userdel { name, db } => {
            db_path(db).and_then(|db| chat_server::admin::userdel(&db, &name))
        }
        Command::Users { db } => db_path(db).and_then(|db| chat_server::admin::users(&db)),
        Command::MigrateDb { from, to } => parse_db(&from)
            .and_then(|from| Ok((from, parse_db(&to)?)))
            .and_then(|(from, to)| chat_server::admin::migrate_db(&from, &to).map(|_| ())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("chat-server: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Makes glibc's malloc return large blocks to the system when freed.
///
/// Every argon2 hash allocates a 19 MiB block. Left to itself, glibc raises
/// its mmap threshold after the first such block is freed and serves the
/// next ones from the heap, where small session allocations then pin the
/// freed space: measured at 8 GiB of RSS after 1,000 logins. A fixed 1 MiB
/// threshold keeps those blocks mmapped (freed at once) and the heap dense:
/// 118 MiB after 10,000 logins, about 11 KiB per idle connection.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called once before
    // any thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn serve(listen: SocketAddr, config: ServeConfig) -> Result<()> {
    tune_malloc();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let db = config.db.clone();
        let server = Server::start(config).await?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let urls = client_urls(addr);
        if addr.ip().is_unspecified() {
            println!("listening on {addr}; clients on the LAN can connect to:");
            for url in &urls {
                println!("  {url}");
            }
        } else {
            println!("listening on {}", urls.join(" "));
            if addr.ip().is_loopback() {
                println!(
                    "  (this machine only: use --listen 0.0.0.0:{} to accept the LAN)",
                    addr.port()
                );
            }
        }
        tracing::info!(db = %db, "database");
        if let Ok(0) = server.state().hub.user_count().await {
            println!("no users yet: create one with  chat-server useradd NAME --admin --db {db}");
        }
        server.run(listener, shutdown_signal()).await;
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
