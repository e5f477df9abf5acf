//! What every scenario needs before it sends load: its servers (started here
//! on a fresh database of the chosen backend, or given with `--url`), the
//! options shared by all subcommands, and a fresh name prefix so runs never
//! meet each other's rooms and accounts.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use rand::Rng;

use crate::client::Target;
use crate::postgres::{PgStats, PostgresProc, Sampler, PROFILE_SETTINGS};
use crate::procs::{self, ProcSample, RedisProc, ServerOptions, ServerProc};
use crate::report::Report;

/// Longest `migrate-db` may take to copy a seeded database into PostgreSQL
/// (a million messages take a few seconds).
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Where the servers a run starts keep their data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// A SQLite file in a temporary folder.
    #[default]
    Sqlite,
    /// A private PostgreSQL started for the run (initdb in a temporary
    /// folder, a free port of 127.0.0.1, default durability settings).
    Postgres,
}

/// Options every scenario takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Use a running server instead of starting one (loopback only). Its
    /// send rate limit must be off (`--send-rate 0`) and registration open.
    #[arg(long)]
    pub url: Option<String>,
    /// Pid of the server given with --url, for its CPU and memory figures.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The chat-server binary [default: next to this executable].
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// A few seconds with small numbers: checks that the scenario works,
    /// measures nothing worth quoting (CI runs this).
    #[arg(long)]
    pub smoke: bool,
    /// The database of the servers this run starts [default: sqlite].
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// With --backend postgres: a PostgreSQL setting NAME=VALUE on top of
    /// the defaults (repeatable), e.g. fsync=off to see what WAL flushes cost.
    #[arg(long = "pg-set", value_name = "NAME=VALUE")]
    pub pg_settings: Vec<String>,
    /// With --backend postgres: load pg_stat_statements, time WAL flushes
    /// and I/O, and report the statements that took the most time.
    #[arg(long)]
    pub pg_profile: bool,
    /// An argument added to every `chat-server serve` this run starts
    /// (repeatable), e.g. `--server-arg=--durability=relaxed`.
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
}

impl Common {
    /// The backend of the servers this run starts; refuses PostgreSQL
    /// options that would have no effect.
    pub fn backend(&self) -> Result<Backend> {
        let backend = self.backend.unwrap_or_default();
        if self.url.is_some() && self.backend.is_some() {
            bail!("--backend is for the servers chat-bench starts: a --url server has its own database");
        }
        if self.url.is_some() && !self.server_args.is_empty() {
            bail!("--server-arg is for the servers chat-bench starts, not a --url server");
        }
        if backend != Backend::Postgres && (!self.pg_settings.is_empty() || self.pg_profile) {
            bail!("--pg-set and --pg-profile need --backend postgres");
        }
        Ok(backend)
    }
}

/// The database behind the servers of one scenario; it outlives them
/// (fields of [`Servers`] drop in order, the servers first).
pub enum Database {
    Sqlite {
        /// Holds the file (and its WAL).
        _dir: tempfile::TempDir,
        file: PathBuf,
    },
    Postgres {
        server: PostgresProc,
        /// The `--db` URL of the database made for this scenario.
        url: String,
        /// Its name, for statistics.
        name: String,
    },
}

impl Database {
    /// A fresh, empty database of `common`'s backend.
    pub fn create(common: &Common) -> Result<Database> {
        match common.backend()? {
            Backend::Sqlite => {
                let dir = tempfile::tempdir()?;
                let file = dir.path().join("bench.db");
                Ok(Database::Sqlite { _dir: dir, file })
            }
            Backend::Postgres => {
                let mut settings = common.pg_settings.clone();
                if common.pg_profile {
                    settings.extend(PROFILE_SETTINGS.iter().map(|s| s.to_string()));
                }
                let server = PostgresProc::start(&settings)?;
                let url = server.create_database()?;
                let name = url.rsplit('/').next().unwrap_or_default().to_owned();
                Ok(Database::Postgres { server, url, name })
            }
        }
    }

    /// The `--db` argument of `chat-server`.
    pub fn arg(&self) -> OsString {
        match self {
            Database::Sqlite { file, .. } => file.clone().into(),
            Database::Postgres { url, .. } => url.into(),
        }
    }

    /// Copies the SQLite database `file` into this (PostgreSQL) one with
    /// the server's own `chat-server migrate-db`, so the benchmark never
    /// needs to know the PostgreSQL schema, then settles it as a table that
    /// has been live a while is: `VACUUM (ANALYZE)` sets planner
    /// statistics, hint bits and the visibility map (a fresh copy would
    /// have its first reads dirty every page, and autovacuum scan it
    /// mid-run), and a `CHECKPOINT` writes out the copy's dirty pages now
    /// rather than during the measurement. The SQLite seed ends with a WAL
    /// checkpoint for the same reason.
    pub fn load_sqlite(&self, binary: &Path, file: &Path) -> Result<()> {
        let Database::Postgres { server, url, name } = self else {
            bail!("only a PostgreSQL database is loaded from a SQLite file");
        };
        let mut migrate = Command::new(binary);
        migrate
            .args(["migrate-db", "--from"])
            .arg(file)
            .args(["--to", url])
            .env("RUST_LOG", "warn");
        let out = procs::output_within(&mut migrate, MIGRATE_TIMEOUT, "chat-server migrate-db")?;
        if !out.status.success() {
            bail!(
                "chat-server migrate-db into PostgreSQL failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        server.psql(name, "VACUUM (ANALYZE)")?;
        server.psql(name, "CHECKPOINT")?;
        Ok(())
    }

    /// The size of the database on disk, when it can be read.
    pub fn size_bytes(&self) -> Option<u64> {
        match self {
            Database::Sqlite { file, .. } => std::fs::metadata(file).ok().map(|m| m.len()),
            Database::Postgres { server, name, .. } => server
                .psql(name, "SELECT pg_database_size(current_database())")
                .ok()
                .and_then(|size| size.parse().ok()),
        }
    }

    /// PostgreSQL's counters, now; `None` for SQLite (or when they cannot
    /// be read: the figures are extras, never a reason to fail a run).
    pub fn stats(&self) -> Option<PgStats> {
        match self {
            Database::Sqlite { .. } => None,
            Database::Postgres { server, name, .. } => match server.stats(name) {
                Ok(stats) => Some(stats),
                Err(err) => {
                    eprintln!("chat-bench: cannot read PostgreSQL statistics: {err:#}");
                    None
                }
            },
        }
    }

    /// With `--pg-profile`: a sampler of what the servers' PostgreSQL
    /// backends do, until it is finished.
    pub fn sampler(&self) -> Option<Sampler> {
        let Database::Postgres { server, name, .. } = self else {
            return None;
        };
        server.start_sampler(name).unwrap_or_else(|err| {
            eprintln!("chat-bench: cannot sample pg_stat_activity: {err:#}");
            None
        })
    }

    /// Adds `--pg-profile`'s top statements to the report (nothing
    /// otherwise).
    pub fn report_profile(&self, report: &mut Report, tag: &str) {
        let Database::Postgres { server, name, .. } = self else {
            return;
        };
        match server.profile(name, 8) {
            Ok(lines) => {
                for (i, line) in lines.into_iter().enumerate() {
                    report.set(format!("{tag}pg_top_statement_{}", i + 1), line);
                }
            }
            Err(err) => eprintln!("chat-bench: cannot read pg_stat_statements: {err:#}"),
        }
    }

    /// The backend's name, for the report.
    pub fn backend(&self) -> &'static str {
        match self {
            Database::Sqlite { .. } => "sqlite",
            Database::Postgres { .. } => "postgres",
        }
    }
}

/// The servers of one scenario and what is needed to reach them.
pub struct Servers {
    pub targets: Vec<Target>,
    pub pids: Vec<u32>,
    /// Declared before what they use: fields drop in order, so the servers
    /// stop before their Redis and their database.
    pub procs: Vec<ServerProc>,
    _redis: Option<RedisProc>,
    /// `None` for a `--url` server.
    pub database: Option<Database>,
}

impl Servers {
    /// One server: the `--url` one, or a fresh one on a fresh database.
    pub fn single(common: &Common) -> Result<Servers> {
        Servers::single_with(common, ServerOptions::default())
    }

    /// [`Servers::single`] with `options` (`--server-arg`s are added to
    /// its `args`).
    pub fn single_with(common: &Common, mut options: ServerOptions) -> Result<Servers> {
        if let Some(url) = &common.url {
            common.backend()?;
            return Ok(Servers {
                targets: vec![Target::parse(url)?],
                pids: common.server_pid.into_iter().collect(),
                procs: Vec::new(),
                _redis: None,
                database: None,
            });
        }
        let database = Database::create(common)?;
        let binary = procs::server_binary(common.server_bin.as_deref())?;
        options.args.extend(common.server_args.iter().cloned());
        let server = ServerProc::start(&binary, database.arg(), &options)?;
        Ok(Servers {
            targets: vec![Target::parse(server.url())?],
            pids: vec![server.pid()],
            procs: vec![server],
            _redis: None,
            database: Some(database),
        })
    }

    /// `nodes` servers sharing one fresh database through a private Redis.
    pub fn cluster(common: &Common, nodes: usize) -> Result<Servers> {
        if common.url.is_some() {
            bail!("the cluster scenario starts its own nodes: --url is not supported");
        }
        let database = Database::create(common)?;
        let binary = procs::server_binary(common.server_bin.as_deref())?;
        let redis = RedisProc::start()?;
        let options = ServerOptions {
            redis: Some(redis.url()),
            args: common.server_args.clone(),
            address_limits: false,
        };
        let db = database.arg();
        let mut servers = Servers {
            targets: Vec::new(),
            pids: Vec::new(),
            procs: Vec::new(),
            _redis: Some(redis),
            database: Some(database),
        };
        for _ in 0..nodes {
            let server = ServerProc::start(&binary, &db, &options)?;
            servers.targets.push(Target::parse(server.url())?);
            servers.pids.push(server.pid());
            servers.procs.push(server);
        }
        Ok(servers)
    }

    /// With `--pg-profile`: samples what PostgreSQL's backends do until
    /// finished.
    pub fn db_sampler(&self) -> Option<Sampler> {
        self.database.as_ref().and_then(Database::sampler)
    }

    /// `sqlite` or `postgres`; `None` for a `--url` server.
    pub fn backend(&self) -> Option<&'static str> {
        self.database.as_ref().map(Database::backend)
    }

    /// The database's counters (PostgreSQL only).
    pub fn db_stats(&self) -> Option<PgStats> {
        self.database.as_ref().and_then(Database::stats)
    }

    /// Resident memory of the first server, when its pid is known.
    pub fn rss_bytes(&self) -> Option<u64> {
        self.pids
            .first()
            .and_then(|pid| ProcSample::of(*pid))
            .map(|s| s.rss_bytes)
    }

    /// Stops the servers this run started; their log tails go to stderr if
    /// one failed to stop cleanly.
    pub fn stop(self) -> Result<()> {
        // The database and Redis stay up until the servers have stopped
        // (they drop with `self`, after this loop).
        for server in self.procs {
            let log = server.log();
            if let Err(err) = server.stop() {
                eprintln!("chat-bench: {err:#}; server log:\n{log}");
            }
        }
        Ok(())
    }
}

/// A fresh prefix for room and user names: `b` and six hex digits.
pub fn prefix() -> String {
    format!("b{:06x}", rand::thread_rng().gen::<u32>() & 0xff_ffff)
}
