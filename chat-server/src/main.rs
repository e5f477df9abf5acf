//! The `chat-server` command: `serve` runs the server; `useradd`, `passwd`,
//! `userdel` and `users` manage accounts in its database; `migrate-db`
//! copies a whole database into another (SQLite to PostgreSQL and back).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use chat_server::server::{client_urls, ServeConfig, Server};
use chat_server::store::{Database, Durability};
use chat_server::tls::Tls;
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

/// How `serve` offers TLS: not at all (plain `ws://`), with a certificate
/// and key given as PEM files, or with a self-signed pair it makes itself.
#[derive(clap::Args)]
struct TlsArgs {
    /// Serve wss:// with this PEM certificate chain (with --tls-key).
    #[arg(
        long,
        env = "CHAT_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key",
        conflicts_with = "tls_self_signed"
    )]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "CHAT_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve wss:// with a self-signed certificate, made on the first start
    /// and kept next to the database (clients confirm its fingerprint once).
    #[arg(long)]
    tls_self_signed: bool,
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
        /// Rooms the server holds at most; joining a new room past it is
        /// refused (0: no limit).
        #[arg(long, default_value_t = 10_000)]
        max_rooms: u64,
        /// Rooms one user (not an admin) may create per hour (0: no limit).
        #[arg(long, default_value_t = 50)]
        room_quota: u32,
        /// full: an acknowledged message survives a power cut; relaxed: it
        /// survives a crash of the server, and commits are cheaper.
        #[arg(long, value_enum, default_value_t = Durability::Full)]
        durability: Durability,
        /// Burst of messages above the rate.
        #[arg(long, default_value_t = chat_proto::limits::SEND_BURST)]
        send_burst: u32,
        /// text: a line a person reads; json: one JSON object a line, for
        /// log shippers (level, time, target, message and fields).
        #[arg(long, env = "CHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        #[command(flatten)]
        tls: TlsArgs,
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
    /// Write a room's whole history, with edits, deletions and reactions
    /// applied, to standard output.
    Export {
        room: String,
        /// jsonl: one JSON message per line; markdown: a readable document.
        #[arg(long, value_enum, default_value_t)]
        format: chat_server::admin::ExportFormat,
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

/// `~/.local/share/chat-server` (or the platform's equivalent).
fn default_data_dir() -> Option<PathBuf> {
    dirs::data_dir().map(|dir| dir.join("chat-server"))
}

fn db_path(arg: DbArg) -> Result<Database> {
    match arg.db {
        Some(value) => parse_db(&value),
        None => default_data_dir()
            .map(|dir| Database::Sqlite(dir.join("chat.db")))
            .context("no data folder on this system: pass --db PATH"),
    }
}

/// Where `--tls-self-signed` keeps its pair: next to the SQLite database,
/// or in the default data folder when the database is PostgreSQL.
fn tls_dir(db: &Database) -> Result<PathBuf> {
    match db {
        Database::Sqlite(path) => Ok(path
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), |dir| dir.to_owned())),
        Database::Postgres(_) => default_data_dir().context(
            "no data folder on this system for the self-signed certificate: \
             pass --tls-cert and --tls-key",
        ),
    }
}

/// The TLS identity the flags ask for; `None` for plain `ws://`. Whether it
/// was made self-signed goes with it, for the banner.
fn load_tls(args: TlsArgs, db: &Database) -> Result<Option<(Tls, bool)>> {
    match (args.tls_cert, args.tls_key, args.tls_self_signed) {
        (Some(cert), Some(key), _) => Ok(Some((Tls::from_pem_files(&cert, &key)?, false))),
        (_, _, true) => {
            let made = Tls::self_signed(&tls_dir(db)?)?;
            if made.created {
                tracing::info!(
                    cert = %made.cert_path.display(),
                    "made a self-signed TLS certificate; it is reused from now on"
                );
            }
            Ok(Some((made.tls, true)))
        }
        // clap requires --tls-cert and --tls-key together.
        _ => Ok(None),
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
            max_rooms,
            room_quota,
            log_format,
            tls,
        } => db_path(db).and_then(|db| {
            serve(
                listen,
                log_format,
                ServeConfig {
                    db,
                    durability,
                    max_rooms,
                    room_quota,
                    open_registration,
                    max_connections,
                    max_connections_per_ip,
                    send_rate,
                    send_burst,
                    redis,
                    tls: None,
                },
                tls,
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
        Command::Export { room, format, db } => db_path(db).and_then(|db| {
            chat_server::admin::export(&db, &room, format, std::io::stdout().lock()).map(|_| ())
        }),
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

/// How `serve` writes its log to standard error.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn serve(
    listen: SocketAddr,
    log_format: LogFormat,
    mut config: ServeConfig,
    tls: TlsArgs,
) -> Result<()> {
    tune_malloc();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,deadpool=error"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log_format {
        LogFormat::Text => log
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // JSON escapes every control character itself: peer text stays
        // one line there too.
        LogFormat::Json => log.json().with_current_span(false).init(),
    }
    // Said once the server is up: a start-up failure stays one line.
    let mut lowered = None;
    match chat_server::fdlimit::settle(config.max_connections) {
        Ok(settled) if settled.lowered => {
            lowered = Some(format!(
                "--max-connections lowered from {} to {}: that is what fits under the open-files limit ({}) besides the server's own files; raise the limit (ulimit -n, LimitNOFILE=) to serve more",
                config.max_connections, settled.max_connections, settled.limit
            ));
            config.max_connections = settled.max_connections;
        }
        Ok(_) => {}
        Err(err) => lowered = Some(format!("cannot read the open-files limit: {err}")),
    }
    // After the log is set up: tightening a kept key's permissions warns.
    let tls = load_tls(tls, &config.db)?;
    let self_signed = tls.as_ref().is_some_and(|(_, self_signed)| *self_signed);
    config.tls = tls.map(|(tls, _)| tls);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let db = config.db.clone();
        let fingerprint = config.tls.as_ref().map(|tls| tls.fingerprint().to_owned());
        let server = Server::start(config).await?;
        if let Some(lowered) = lowered {
            tracing::warn!("{lowered}");
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let urls: Vec<String> = client_urls(addr)
            .into_iter()
            .map(|url| match fingerprint {
                Some(_) => url.replacen("ws://", "wss://", 1),
                None => url,
            })
            .collect();
        // The first line names the URL (scripts and the tests read it).
        if addr.ip().is_unspecified() {
            println!("listening on {addr}; clients on the LAN can connect to:");
            for url in &urls {
                println!("  {url}");
            }
        } else {
            println!("listening on {}", urls.join(" "));
        }
        // The browser client is served at the same address.
        for url in &urls {
            let page = url
                .replacen("ws", "http", 1)
                .trim_end_matches("ws")
                .to_owned();
            println!("  open {page} in a browser");
        }
        match &fingerprint {
            Some(fingerprint) if self_signed => println!(
                "  certificate {fingerprint} (self-signed: clients are asked to \
                 confirm this fingerprint on their first connection)"
            ),
            Some(fingerprint) => println!("  certificate {fingerprint}"),
            None if !addr.ip().is_loopback() => tracing::warn!(
                "plain ws:// on the network: passwords travel in clear; \
                 serve wss:// with --tls-self-signed or --tls-cert and --tls-key"
            ),
            None => {}
        }
        if addr.ip().is_loopback() {
            println!(
                "  (this machine only: use --listen 0.0.0.0:{} to accept the LAN)",
                addr.port()
            );
        }
        if let Some(fingerprint) = &fingerprint {
            tracing::info!(%fingerprint, "serving wss:// (TLS)");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_self_signed_pair_lives_next_to_the_database() {
        let dir = |db: &str| tls_dir(&Database::parse(db).unwrap()).unwrap();
        assert_eq!(dir("/srv/chat/chat.db"), PathBuf::from("/srv/chat"));
        assert_eq!(dir("chat.db"), PathBuf::from("."));
        assert_eq!(dir("data/chat.db"), PathBuf::from("data"));
        if let Some(default) = default_data_dir() {
            assert_eq!(dir("postgres://chat@db.lan/chat"), default);
        }
    }

    #[test]
    fn tls_flags_go_together() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["chat-server", "serve"].iter().chain(args)).map(|_| ())
        };
        assert!(parse(&["--tls-self-signed"]).is_ok());
        assert!(parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).is_ok());
        assert!(parse(&["--tls-cert", "c.pem"]).is_err());
        assert!(parse(&["--tls-key", "k.pem"]).is_err());
        assert!(parse(&["--tls-cert", "c", "--tls-key", "k", "--tls-self-signed"]).is_err());
    }
}
