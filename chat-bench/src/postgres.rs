//! The private PostgreSQL of a `--backend postgres` run: `initdb` into a
//! temporary folder, `postgres` on a free port of 127.0.0.1 with its unix
//! socket in that folder (never the machine's own server on 5432), one
//! fresh database per set of chat-server nodes, and figures read from its
//! statistics views. Stopped by pid when dropped, so an early `?` never
//! leaves a postmaster behind.
//!
//! The durability settings are PostgreSQL's defaults (`fsync`,
//! `synchronous_commit` and `full_page_writes` on): the figures are those of
//! a server that keeps what it acknowledged through a power cut. `--pg-set
//! NAME=VALUE` changes any setting for an experiment (`fsync=off` shows the
//! share of the WAL flushes), and `--pg-profile` loads
//! `pg_stat_statements` and times WAL and I/O.
//!
//! PostgreSQL refuses to run as root, so as root `initdb` and `postgres` run
//! as the `postgres` OS user (set on the child itself rather than through
//! `runuser`: the pid we hold is then the postmaster's own, which is what
//! gets signalled at the end), and the folder is handed to that user.

use std::ffi::CString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::procs::{free_port, output_within, ppid_and_cpu};

/// The superuser `initdb` creates; authentication is `trust` on 127.0.0.1
/// and on the private socket, no password.
const SUPERUSER: &str = "postgres";
/// The port of the machine's own PostgreSQL, which a run must never touch.
const DEFAULT_PORT: u16 = 5432;
/// `initdb` writes a whole cluster.
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest the postmaster may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one client tool (`createdb`, `psql`, `pg_isready`) may run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long each stop signal is given before the next, harder one.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Bytes of the server log quoted in error messages.
const LOG_TAIL: usize = 4096;

/// Settings added by `--pg-profile`: per-statement figures and timings of
/// WAL writes, flushes and data-file I/O, read back by [`PostgresProc::profile`].
pub const PROFILE_SETTINGS: &[&str] = &[
    "shared_preload_libraries=pg_stat_statements",
    "pg_stat_statements.track=all",
    "track_wal_io_timing=on",
    "track_io_timing=on",
];

/// A PostgreSQL server of this run's own.
pub struct PostgresProc {
    /// Holds `data/` (the cluster), the unix socket and `postgres.log`.
    dir: tempfile::TempDir,
    port: u16,
    bindir: PathBuf,
    /// The postmaster, started directly (not through `pg_ctl`) so that its
    /// pid is ours to signal and to reap.
    child: Child,
    /// Databases made so far, for fresh names.
    databases: AtomicU32,
    /// Whether pg_stat_statements was loaded (`--pg-profile`).
    profiling: bool,
}

impl PostgresProc {
    /// Creates a cluster and starts it with `settings` (`NAME=VALUE` each)
    /// on top of the defaults; waits until it accepts connections.
    pub fn start(settings: &[String]) -> Result<PostgresProc> {
        let bindir = bindir()?;
        let run_as = server_user()?;
        let dir = tempfile::Builder::new()
            .prefix("chat-bench-pg-")
            .tempdir()?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .context("cannot hand the PostgreSQL folder to the postgres user")?;
        }
        let data = dir.path().join("data");
        let server_command = |program: &str| {
            let mut command = Command::new(bindir.join(program));
            command.current_dir(dir.path()).env_clear_pg();
            if let Some((uid, gid)) = run_as {
                // std also drops root's supplementary groups with these.
                std::os::unix::process::CommandExt::uid(&mut command, uid);
                std::os::unix::process::CommandExt::gid(&mut command, gid);
            }
            command
        };

        let mut initdb = server_command("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "--auth=trust", "--encoding=UTF8"])
            // C locale: the same collation on every machine. --no-sync only
            // skips syncing initdb's own files (the cluster is thrown away);
            // the server below runs with fsync on.
            .args(["--locale=C", "--no-sync"]);
        let out = output_within(&mut initdb, INITDB_TIMEOUT, "initdb")?;
        if !out.status.success() {
            bail!("initdb failed ({}): {}", out.status, both(&out));
        }

        let port = loop {
            let port = free_port()?;
            if port != DEFAULT_PORT {
                break port;
            }
        };
        let log_path = dir.path().join("postgres.log");
        let log = File::create(&log_path)?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&log_path, Some(uid), Some(gid))?;
        }
        let profiling = settings
            .iter()
            .any(|s| s.contains("shared_preload_libraries") && s.contains("pg_stat_statements"));
        let mut postgres = server_command("postgres");
        postgres
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"]);
        for setting in settings {
            check_setting(setting)?;
            postgres.arg("-c").arg(setting);
        }
        let child = postgres
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bindir.join("postgres").display()))?;
        let mut server = PostgresProc {
            dir,
            port,
            bindir,
            child,
            databases: AtomicU32::new(0),
            profiling,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Polls (bounded) until the postmaster accepts connections on its port.
    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "postgres exited at start ({status}); its log:\n{}",
                    self.log_tail()
                );
            }
            let mut isready = self.tool("pg_isready");
            isready.args(["-q", "-t", "1"]);
            if output_within(&mut isready, TOOL_TIMEOUT, "pg_isready")?
                .status
                .success()
            {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "postgres did not accept connections within {READY_TIMEOUT:?}; its log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates an empty database no other part of the run uses; returns its
    /// URL, the form `chat-server --db` takes.
    pub fn create_database(&self) -> Result<String> {
        let name = format!("bench{}", self.databases.fetch_add(1, Ordering::Relaxed));
        let mut createdb = self.tool("createdb");
        createdb.arg(&name);
        let out = output_within(&mut createdb, TOOL_TIMEOUT, "createdb")?;
        if !out.status.success() {
            bail!("createdb {name} failed: {}", both(&out));
        }
        if self.profiling {
            self.psql(&name, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")?;
        }
        Ok(self.url(&name))
    }

    /// `postgres://postgres@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// The postmaster's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `sql` in `database`; returns the rows it printed, unaligned with
    /// `|` between fields.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let mut psql = self.tool("psql");
        psql.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            database,
            "-c",
            sql,
        ]);
        let out = output_within(&mut psql, TOOL_TIMEOUT, "psql")?;
        if !out.status.success() {
            bail!("psql failed on {sql:?}: {}", both(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    /// The cumulative counters of `database` and of the WAL, now.
    pub fn stats(&self, database: &str) -> Result<PgStats> {
        // PostgreSQL 15 publishes a backend's counters when its transaction
        // ends, at most once a second: a 10 s phase is right to about 10%.
        let row = self.psql(
            database,
            "SELECT d.xact_commit, d.tup_inserted, w.wal_records, w.wal_bytes, \
                    w.wal_write, w.wal_sync, w.wal_sync_time \
             FROM pg_stat_database d, pg_stat_wal w \
             WHERE d.datname = current_database()",
        )?;
        let mut stats =
            PgStats::parse(&row).ok_or_else(|| anyhow!("unexpected statistics row {row:?}"))?;
        stats.cpu_secs = self.cpu_secs();
        Ok(stats)
    }

    /// CPU seconds used so far by the postmaster and its children (the
    /// backends serving chat-server, the WAL writer, the checkpointer…).
    /// Children that already exited are not counted, which is fine for the
    /// long-lived backends of a connection pool.
    fn cpu_secs(&self) -> f64 {
        let postmaster = self.pid();
        let mut total = 0.0;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if let Some((ppid, secs)) = ppid_and_cpu(&stat) {
                if pid == postmaster || ppid == postmaster {
                    total += secs;
                }
            }
        }
        total
    }

    /// With `--pg-profile`: the statements that took the most server time
    /// in `database`, one line each (calls, rows, total, mean and max ms,
    /// text).
    pub fn profile(&self, database: &str, top: usize) -> Result<Vec<String>> {
        if !self.profiling {
            return Ok(Vec::new());
        }
        let rows = self.psql(
            database,
            &format!(
                "SELECT calls, rows, round(total_exec_time::numeric, 1), \
                        round(mean_exec_time::numeric, 4), \
                        round(max_exec_time::numeric, 3), \
                        regexp_replace(query, '\\s+', ' ', 'g') \
                 FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
                 WHERE d.datname = current_database() \
                 ORDER BY total_exec_time DESC LIMIT {top}"
            ),
        )?;
        Ok(rows
            .lines()
            .map(|row| {
                let f: Vec<&str> = row.splitn(6, '|').collect();
                match f.as_slice() {
                    [calls, rows, total, mean, max, query] => format!(
                        "calls {calls}, rows {rows}, total {total} ms, mean {mean} ms, \
                         max {max} ms: {}",
                        query.chars().take(160).collect::<String>()
                    ),
                    _ => row.to_owned(),
                }
            })
            .collect())
    }

    /// With `--pg-profile`: starts sampling, every 5 ms until
    /// [`Sampler::finish`], what each of chat-server's backends in
    /// `database` is doing (`pg_stat_activity`). `None` without
    /// `--pg-profile`.
    ///
    /// The samples are taken from the `postgres` database, so that they
    /// count in neither the bench database's commits nor its statements,
    /// and each is its own autocommit statement: one long transaction would
    /// hold back the cleanup of the rooms' updated rows and change what is
    /// measured. Each costs PostgreSQL a fraction of a millisecond.
    pub fn start_sampler(&self, database: &str) -> Result<Option<Sampler>> {
        if !self.profiling {
            return Ok(None);
        }
        // `database` is a name this module made (`benchN`): no quoting needed.
        let sample = format!(
            "SELECT pid, state, coalesce(wait_event, '') FROM pg_stat_activity \
             WHERE datname = '{database}' AND application_name = 'chat-server';\n"
        );
        let mut psql = self.tool("psql");
        psql.args(["-X", "-q", "-A", "-t", "-d", "postgres", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = psql.spawn().context("cannot start psql")?;
        let mut stdin = child.stdin.take().context("no stdin for psql")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        // Paced here rather than with pg_sleep: closing psql's input is then
        // a clean end, and psql flushes what it printed.
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                if std::io::Write::write_all(&mut stdin, sample.as_bytes()).is_err() {
                    break;
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        let stdout = child.stdout.take().context("no stdout from psql")?;
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut { stdout }, &mut text);
            text
        });
        Ok(Some(Sampler {
            child,
            stop,
            reader: Some(reader),
        }))
    }

    /// A client tool (`psql`, `createdb`, …) aimed at this server over TCP.
    fn tool(&self, program: &str) -> Command {
        let mut command = Command::new(self.bindir.join(program));
        command.env_clear_pg().env("PGCONNECT_TIMEOUT", "5").args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            SUPERUSER,
        ]);
        command
    }

    /// The end of the server's log.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default();
        let mut cut = log.len().saturating_sub(LOG_TAIL);
        while !log.is_char_boundary(cut) {
            cut += 1;
        }
        log[cut..].to_owned()
    }
}

impl Drop for PostgresProc {
    fn drop(&mut self) {
        // Immediate shutdown first: the cluster is thrown away, so the
        // shutdown checkpoint a fast shutdown writes would only cost time.
        // Then SIGKILL. The backends notice their postmaster is gone.
        for signal in [libc::SIGQUIT, libc::SIGKILL] {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            if let Ok(pid) = i32::try_from(self.child.id()) {
                // SAFETY: kill(2) on our own child, not reaped yet, so the
                // pid cannot name another process.
                unsafe { libc::kill(pid, signal) };
            }
            let started = Instant::now();
            while started.elapsed() < STOP_GRACE {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Time between two samples of [`PostgresProc::start_sampler`].
const SAMPLE_EVERY: Duration = Duration::from_millis(5);

/// A running `pg_stat_activity` sampler.
pub struct Sampler {
    child: Child,
    /// Tells the thread feeding psql to stop and close its input.
    stop: Arc<AtomicBool>,
    /// Collects psql's output; taken by [`Sampler::finish`].
    reader: Option<std::thread::JoinHandle<String>>,
}

impl Sampler {
    /// Waits for the samples; returns, for the backend that was busiest
    /// (under load, a node's store writer), the share of samples in each
    /// state: `running`, a wait event (`WALSync`: flushing the WAL at
    /// commit, `WALWrite`, …), `idle` (between transactions: waiting for
    /// chat-server's next batch) or `idle_in_transaction` (waiting
    /// mid-transaction for the next statement).
    pub fn finish(mut self) -> Result<Vec<(String, f64)>> {
        self.stop.store(true, Ordering::Relaxed);
        let started = Instant::now();
        while self.child.try_wait()?.is_none() {
            if started.elapsed() > TOOL_TIMEOUT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("the pg_stat_activity sampler did not finish");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = self
            .reader
            .take()
            .map(|reader| reader.join())
            .transpose()
            .map_err(|_| anyhow!("the sampler's reader panicked"))?
            .unwrap_or_default();
        Ok(busiest_backend_shares(&text))
    }
}

impl Drop for Sampler {
    /// A sampler dropped on an error path stops its psql too (after
    /// [`Sampler::finish`] it has exited already).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// From `pid|state|wait_event` lines: the busiest backend's share of
/// samples per state, plus its sample count.
fn busiest_backend_shares(samples: &str) -> Vec<(String, f64)> {
    let mut per_pid: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for line in samples.lines() {
        let mut fields = line.splitn(3, '|');
        let (Some(pid), Some(state), Some(wait)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let label = match (state, wait) {
            ("active", "") => "running".to_owned(),
            ("active", wait) => wait.to_owned(),
            (state, _) => state.replace(' ', "_"),
        };
        per_pid.entry(pid).or_default().push(label);
    }
    let busy = |labels: &Vec<String>| labels.iter().filter(|l| !l.starts_with("idle")).count();
    let Some(labels) = per_pid.into_values().max_by_key(busy) else {
        return Vec::new();
    };
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for label in &labels {
        *counts.entry(label.clone()).or_default() += 1;
    }
    let mut shares: Vec<(String, f64)> = counts
        .into_iter()
        .map(|(label, n)| (label, n as f64 / labels.len() as f64))
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    shares.push(("samples".into(), labels.len() as f64));
    shares
}

/// Cumulative counters of one database and of the WAL.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PgStats {
    /// Transactions committed in the database (reads included).
    pub commits: u64,
    pub rows_inserted: u64,
    pub wal_records: u64,
    pub wal_bytes: u64,
    /// WAL `write(2)`s and flushes (`fdatasync`) of the whole server.
    pub wal_writes: u64,
    pub wal_syncs: u64,
    /// Milliseconds spent flushing WAL (0 unless `track_wal_io_timing`).
    pub wal_sync_ms: f64,
    /// CPU seconds of the postmaster and its children.
    pub cpu_secs: f64,
}

impl PgStats {
    /// Reads one `psql -A -t` row of the query in [`PostgresProc::stats`].
    fn parse(row: &str) -> Option<PgStats> {
        let f: Vec<&str> = row.trim().split('|').collect();
        let [commits, rows, records, bytes, writes, syncs, sync_ms] = f.as_slice() else {
            return None;
        };
        Some(PgStats {
            commits: commits.parse().ok()?,
            rows_inserted: rows.parse().ok()?,
            wal_records: records.parse().ok()?,
            wal_bytes: bytes.parse().ok()?,
            wal_writes: writes.parse().ok()?,
            wal_syncs: syncs.parse().ok()?,
            wal_sync_ms: sync_ms.parse().ok()?,
            cpu_secs: 0.0,
        })
    }

    /// Rates between `earlier` and `self`, `secs` apart, as report fields.
    pub fn rates_since(&self, earlier: &PgStats, secs: f64) -> Vec<(String, f64)> {
        let secs = secs.max(1e-9);
        let per_sec = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
        let commits = self.commits.saturating_sub(earlier.commits);
        let rows = self.rows_inserted.saturating_sub(earlier.rows_inserted);
        let syncs = self.wal_syncs.saturating_sub(earlier.wal_syncs);
        let rates: Vec<(&str, f64)> = vec![
            ("pg_commits_per_sec", per_sec(self.commits, earlier.commits)),
            (
                "pg_rows_inserted_per_sec",
                per_sec(self.rows_inserted, earlier.rows_inserted),
            ),
            ("pg_rows_per_commit", rows as f64 / commits.max(1) as f64),
            (
                "pg_wal_syncs_per_sec",
                per_sec(self.wal_syncs, earlier.wal_syncs),
            ),
            (
                "pg_wal_writes_per_sec",
                per_sec(self.wal_writes, earlier.wal_writes),
            ),
            ("pg_rows_per_wal_sync", rows as f64 / syncs.max(1) as f64),
            (
                "pg_wal_mib_per_sec",
                per_sec(self.wal_bytes, earlier.wal_bytes) / 1048576.0,
            ),
            (
                "pg_wal_bytes_per_row",
                self.wal_bytes.saturating_sub(earlier.wal_bytes) as f64 / rows.max(1) as f64,
            ),
            (
                "pg_wal_sync_ms_per_sec",
                (self.wal_sync_ms - earlier.wal_sync_ms).max(0.0) / secs,
            ),
            (
                "pg_cores",
                (self.cpu_secs - earlier.cpu_secs).max(0.0) / secs,
            ),
        ];
        rates
            .into_iter()
            // Only measured with track_wal_io_timing (--pg-profile).
            .filter(|(name, value)| *name != "pg_wal_sync_ms_per_sec" || *value > 0.0)
            .map(|(name, value)| (name.to_owned(), value))
            .collect()
    }
}

/// `NAME=VALUE` with a plain setting name: refused early with a clear
/// message rather than by the postmaster's log.
fn check_setting(setting: &str) -> Result<()> {
    match setting.split_once('=') {
        Some((name, _))
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') =>
        {
            Ok(())
        }
        _ => bail!("--pg-set takes NAME=VALUE, e.g. fsync=off (got {setting:?})"),
    }
}

/// Settings of the machine's own PostgreSQL users (`PGHOST`, `PGPORT`, …)
/// must not steer our tools elsewhere.
trait ClearPgEnv {
    fn env_clear_pg(&mut self) -> &mut Self;
}

impl ClearPgEnv for Command {
    fn env_clear_pg(&mut self) -> &mut Command {
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                self.env_remove(key);
            }
        }
        self
    }
}

fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The folder of the PostgreSQL server binaries: the newest of Debian's
/// `/usr/lib/postgresql/*/bin` (major versions live side by side, named
/// "15", "16", …), else the `PATH`.
fn bindir() -> Result<PathBuf> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = version_of(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| is_bindir(dir)))
        .ok_or_else(|| {
            anyhow!(
                "no PostgreSQL server binaries (initdb, postgres) in /usr/lib/postgresql/*/bin \
                 or on the PATH: install the postgresql package"
            )
        })
}

fn is_bindir(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("postgres").is_file()
}

/// "15" → [15], "9.6" → [9, 6]; anything else is not a version folder.
fn version_of(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// `uid` and `gid` of the `postgres` OS user when we run as root;
/// `None` otherwise.
fn server_user() -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    lookup_user("postgres").map(Some).ok_or_else(|| {
        anyhow!(
            "running as root, PostgreSQL must run as the postgres OS user, \
             which does not exist: install the postgresql package"
        )
    })
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let name = CString::new(name).ok()?;
    // SAFETY: passwd is plain old data; all-zero is a valid value.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, and the strings `entry`
    // points into live in `buffer`, which outlives the only use of `entry`.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some((entry.pw_uid, entry.pw_gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_version_folders() {
        assert_eq!(version_of("15"), Some(vec![15]));
        assert_eq!(version_of("9.6"), Some(vec![9, 6]));
        assert_eq!(version_of("common"), None);
        assert!(version_of("16") > version_of("9.6"));
    }

    #[test]
    fn picks_the_busiest_backend() {
        let samples = "7|idle|ClientRead\n8|active|\n7|idle|ClientRead\n8|active|WALSync\n\
                       8|idle|ClientRead\n8|active|\n";
        let shares: std::collections::HashMap<_, _> =
            busiest_backend_shares(samples).into_iter().collect();
        assert_eq!(shares["running"], 0.5);
        assert_eq!(shares["WALSync"], 0.25);
        assert_eq!(shares["idle"], 0.25);
        assert_eq!(shares["samples"], 4.0);
        assert!(busiest_backend_shares("").is_empty());
    }

    #[test]
    fn checks_settings() {
        assert!(check_setting("fsync=off").is_ok());
        assert!(check_setting("pg_stat_statements.track=all").is_ok());
        assert!(check_setting("fsync").is_err());
        assert!(check_setting("=off").is_err());
        assert!(check_setting("a b=1").is_err());
    }

    #[test]
    fn parses_statistics_and_rates() {
        let before = PgStats::parse("10|100|200|20000|5|4|1.5").unwrap();
        let after = PgStats::parse("20|1100|1200|120000|15|14|11.5\n").unwrap();
        let rates: std::collections::HashMap<_, _> =
            after.rates_since(&before, 2.0).into_iter().collect();
        assert_eq!(rates["pg_commits_per_sec"], 5.0);
        assert_eq!(rates["pg_rows_per_commit"], 100.0);
        assert_eq!(rates["pg_rows_per_wal_sync"], 100.0);
        assert_eq!(rates["pg_wal_bytes_per_row"], 100.0);
        assert_eq!(rates["pg_wal_sync_ms_per_sec"], 5.0);
        let idle = PgStats::parse("10|100|200|20000|5|4|0").unwrap();
        let rates: std::collections::HashMap<_, _> =
            idle.rates_since(&idle, 1.0).into_iter().collect();
        assert!(!rates.contains_key("pg_wal_sync_ms_per_sec"));
        assert!(PgStats::parse("1|2|3").is_none());
    }

    /// Starts a real PostgreSQL when the machine has one (CI installs it),
    /// makes a database, queries it, and checks the postmaster is gone
    /// once dropped.
    #[test]
    fn starts_and_stops_a_private_server() {
        if bindir().is_err() {
            eprintln!("no PostgreSQL binaries here: skipped");
            return;
        }
        let server = PostgresProc::start(&[]).expect("start PostgreSQL");
        assert_ne!(server.port, DEFAULT_PORT);
        let url = server.create_database().expect("createdb");
        let database = url.rsplit('/').next().unwrap().to_owned();
        assert_eq!(server.psql(&database, "SELECT 1 + 1").unwrap(), "2");
        assert_eq!(server.psql(&database, "SHOW fsync").unwrap(), "on");
        // Counters are published asynchronously: only their shape is checked.
        server.stats(&database).expect("statistics");
        let pid = server.pid() as libc::pid_t;
        let dir = server.dir.path().to_owned();
        drop(server);
        // SAFETY: signal 0 only asks whether the pid exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "postmaster {pid} still running");
        assert!(!dir.exists());
    }
}
