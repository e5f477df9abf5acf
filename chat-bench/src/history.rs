//! `history`: latency of 50-message pages at random positions of a room
//! with a million messages.
//!
//! Seeding a million messages through the protocol would take minutes, so
//! the database is seeded directly: the server is started once on a SQLite
//! file to create its schema, stopped, and the rows are inserted with
//! SQLite in one transaction, exactly as the server stores them
//! (`rooms.last_seq`, `messages` keyed by `(room_id, seq)`). Then the server
//! is started again on that file. With `--backend postgres` the seeded file
//! is copied into the private PostgreSQL ([`Database::load_sqlite`]).

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use chat_proto::{ClientEvent, Request, ServerEvent};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio_tungstenite::tungstenite::Message;

use crate::client;
use crate::procs::{self, ProcSample, ServerProc};
use crate::report::Report;
use crate::setup::{prefix, Common, Database};
use crate::traffic::histogram;

#[derive(Args, Clone, Debug)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub common: Common,
    /// Messages in the room [default: 1000000; smoke: 5000].
    #[arg(long)]
    pub messages: Option<u64>,
    /// Pages requested [default: 20000; smoke: 200].
    #[arg(long)]
    pub requests: Option<u64>,
    /// Messages per page.
    #[arg(long, default_value_t = 50)]
    pub limit: u64,
    /// Connections asking at once (each waits for its answer).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// With --url: the already seeded room to read.
    #[arg(long)]
    pub room: Option<String>,
}

/// Inserts `count` messages into a new room `room` of the database at `db`.
pub fn seed(db: &Path, room: &str, count: u64) -> Result<()> {
    let mut conn = rusqlite::Connection::open(db)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let tx = conn.transaction()?;
    let ts0: i64 = 1_764_000_000_000;
    tx.execute(
        "INSERT INTO rooms (name, last_seq, last_activity) VALUES (?1, ?2, ?3)",
        rusqlite::params![room, count, ts0 + count as i64],
    )?;
    let room_id = tx.last_insert_rowid();
    {
        let mut insert = tx.prepare(
            "INSERT INTO messages (room_id, seq, user, text, ts, gid) VALUES (?1, ?2, ?3, ?4, ?5, ?2)",
        )?;
        for seq in 1..=count {
            let user = format!("user{}", seq % 97);
            let text = format!("message number {seq} of the history benchmark, some words");
            insert.execute(rusqlite::params![
                room_id,
                seq,
                user,
                text,
                ts0 + seq as i64
            ])?;
        }
    }
    // Searchable, as the server would have left it (and marked so).
    tx.execute(
        "INSERT INTO messages_fts (rowid, text, room)
         SELECT gid, text, 'r' || room_id FROM messages WHERE room_id = ?1",
        [room_id],
    )?;
    tx.execute("UPDATE search_indexed SET upto = ?1", [count])?;
    tx.commit()?;
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
    Ok(())
}

pub async fn history(args: HistoryArgs) -> Result<()> {
    let smoke = args.common.smoke;
    let count = args
        .messages
        .unwrap_or(if smoke { 5000 } else { 1_000_000 });
    let requests = args.requests.unwrap_or(if smoke { 200 } else { 20_000 });
    let limit = args.limit.clamp(1, 200);
    if count <= limit {
        bail!("--messages must be larger than --limit");
    }
    let mut report = Report::new("history");
    let room = format!("{}big", prefix());
    let seeded = match &args.common.url {
        Some(url) => Seeded::running(
            url,
            args.common.server_pid,
            args.room
                .clone()
                .context("with --url, name the seeded room with --room")?,
        )?,
        None => {
            let name = room.clone();
            Seeded::start(&args.common, &mut report, room, move |file| {
                seed(file, &name, count)
            })
            .await?
        }
    };
    let (target, pid, room) = (seeded.target.clone(), seeded.pid, seeded.room.clone());

    let user = format!("{}reader", prefix());
    let mut readers = Vec::new();
    for i in 0..args.concurrency.max(1) {
        let mut ws = client::connect(&target, None, 16 * 1024).await?;
        client::login(&mut ws, &user, i == 0).await?;
        readers.push(ws);
    }
    let server_before = pid.and_then(ProcSample::of);
    let client_before = ProcSample::me();
    let started = Instant::now();
    let per_reader = requests.div_ceil(readers.len() as u64);
    let mut tasks = tokio::task::JoinSet::new();
    for mut ws in readers {
        let room = room.clone();
        tasks.spawn(async move {
            let mut latency = histogram();
            let mut bad_pages = 0u64;
            for _ in 0..per_reader {
                let before = rand::thread_rng().gen_range(limit + 1..=count + 1);
                let request = Request::with_id(
                    ClientEvent::History {
                        room: room.clone(),
                        before: Some(before),
                        limit: Some(limit),
                    },
                    "h",
                );
                let asked = Instant::now();
                ws.send(Message::text(chat_proto::encode(&request))).await?;
                let text = loop {
                    let frame = tokio::time::timeout(client::STEP_TIMEOUT, ws.next())
                        .await
                        .map_err(|_| anyhow!("no history page within the timeout"))?;
                    match frame {
                        Some(Ok(Message::Text(text))) => break text,
                        Some(Ok(_)) => continue,
                        Some(Err(err)) => return Err(err.into()),
                        None => bail!("connection closed"),
                    }
                };
                latency.saturating_record((asked.elapsed().as_micros() as u64).max(1));
                // Checked after timing: the page must be exactly the range
                // asked for.
                let good = match chat_proto::decode_server(&text) {
                    Ok(ServerEvent::History { messages, .. }) => {
                        messages.len() as u64 == limit
                            && messages
                                .iter()
                                .zip(before - limit..before)
                                .all(|(m, seq)| m.seq == seq)
                    }
                    _ => false,
                };
                if !good {
                    bad_pages += 1;
                }
            }
            anyhow::Ok((latency, bad_pages))
        });
    }
    let mut latency = histogram();
    let mut bad_pages = 0;
    while let Some(done) = tasks.join_next().await {
        let (h, bad) = done??;
        latency.add(&h).ok();
        bad_pages += bad;
    }
    let secs = started.elapsed().as_secs_f64();
    report.set("messages_in_room", count);
    report.set("page_limit", limit);
    report.set("concurrency", args.concurrency.max(1));
    report.set("pages", latency.len());
    report.set("bad_pages", bad_pages);
    report.set("pages_per_sec", latency.len() as f64 / secs.max(1e-9));
    report.latency("page_latency", &latency);
    if let (Some(after), Some(before)) = (ProcSample::me(), client_before) {
        report.set("client_cores", after.cores_since(&before));
    }
    if let (Some(after), Some(before)) = (pid.and_then(ProcSample::of), server_before) {
        report.set("server_cores", after.cores_since(&before));
        report.set("server_rss_mib", after.rss_bytes as f64 / 1048576.0);
    }
    seeded.finish(&mut report)?;
    report.print();
    Ok(())
}

/// A server on a database seeded directly (or one given with `--url`), for
/// the read scenarios (`history`, `search`).
pub struct Seeded {
    pub target: client::Target,
    pub pid: Option<u32>,
    /// The room (or, for `search`, the first room) seeded.
    pub room: String,
    // Dropped in this order: the server stops before its database goes.
    server: Option<ServerProc>,
    database: Option<Database>,
    _seed_dir: Option<tempfile::TempDir>,
}

impl Seeded {
    /// A running server given with `--url`, its room seeded already.
    pub fn running(url: &str, pid: Option<u32>, room: String) -> Result<Seeded> {
        Ok(Seeded {
            target: client::Target::parse(url)?,
            pid,
            room,
            server: None,
            database: None,
            _seed_dir: None,
        })
    }

    /// Creates the schema with a first start of the server, fills the
    /// SQLite file with `seed` (then copies it into PostgreSQL with
    /// `--backend postgres`), and starts the server on it.
    pub async fn start(
        common: &Common,
        report: &mut Report,
        room: String,
        seed: impl FnOnce(&Path) -> Result<()> + Send + 'static,
    ) -> Result<Seeded> {
        let db = Database::create(common)?;
        report.set("backend", db.backend());
        // SQLite is seeded in place; PostgreSQL from a seeded file.
        let seed_dir = tempfile::tempdir()?;
        let seed_file = match &db {
            Database::Sqlite { file, .. } => file.clone(),
            Database::Postgres { .. } => seed_dir.path().join("seed.db"),
        };
        let binary = procs::server_binary(common.server_bin.as_deref())?;
        // First start creates the schema.
        ServerProc::start(&binary, &seed_file, &Default::default())?.stop()?;
        let seeding = Instant::now();
        let file = seed_file.clone();
        tokio::task::spawn_blocking(move || seed(&file)).await??;
        report.set("seed_secs", seeding.elapsed().as_secs_f64());
        if let Database::Postgres { .. } = &db {
            let copying = Instant::now();
            tokio::task::block_in_place(|| db.load_sqlite(&binary, &seed_file))?;
            report.set("migrate_secs", copying.elapsed().as_secs_f64());
        }
        if let Some(bytes) = tokio::task::block_in_place(|| db.size_bytes()) {
            report.set("db_mib", bytes as f64 / 1048576.0);
        }
        let started = ServerProc::start(&binary, db.arg(), &Default::default())?;
        Ok(Seeded {
            target: client::Target::parse(started.url())?,
            pid: Some(started.pid()),
            room,
            server: Some(started),
            database: Some(db),
            _seed_dir: Some(seed_dir),
        })
    }

    /// The database's profile, then the server stops.
    pub fn finish(mut self, report: &mut Report) -> Result<()> {
        if let Some(database) = &self.database {
            tokio::task::block_in_place(|| database.report_profile(report, ""));
        }
        if let Some(server) = self.server.take() {
            server.stop()?;
        }
        Ok(())
    }
}
