//! The processes a benchmark runs against: `chat-server` nodes started from
//! the same build as this binary, a private `redis-server` for the cluster
//! scenario, bounded runs of helper commands, and CPU and memory figures
//! read from `/proc`. (The private PostgreSQL lives in [`crate::postgres`].)
//!
//! Every child is stopped by its pid (SIGTERM, then SIGKILL after a bounded
//! wait) when its handle drops, so an early `?` never leaves a server behind.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Longest a child may take to start or to stop.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a child's stderr kept for error messages.
const LOG_TAIL: usize = 16 * 1024;

/// How to start a `chat-server serve`.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// `--redis URL` for a cluster node.
    pub redis: Option<String>,
    /// Extra arguments after the standard ones.
    pub args: Vec<String>,
    /// Keep the server's own per-address connection limit (the default 64)
    /// instead of turning it off: for the scenarios that measure the limits.
    pub address_limits: bool,
}

/// A `chat-server serve` child process.
pub struct ServerProc {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
}

/// The `chat-server` binary of the same build: it sits next to this one in
/// the target directory (`target/release` or `target/debug`).
pub fn server_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    let me = std::env::current_exe().context("cannot locate the chat-bench executable")?;
    let dir = me
        .parent()
        .ok_or_else(|| anyhow!("chat-bench has no parent folder"))?;
    let candidate = dir.join("chat-server");
    if candidate.exists() {
        return Ok(candidate);
    }
    // Under `cargo test` this binary may run from target/*/deps.
    if let Some(up) = dir.parent().map(|d| d.join("chat-server")) {
        if up.exists() {
            return Ok(up);
        }
    }
    bail!(
        "no chat-server next to {}: build it with `cargo build --release -p chat-server` (or pass --server-bin)",
        me.display()
    )
}

impl ServerProc {
    /// Starts `chat-server serve` on a free port of 127.0.0.1 with `db` (a
    /// SQLite file or a `postgres://` URL), open registration and no send
    /// rate limit, and waits for its "listening on" line.
    pub fn start(
        binary: &Path,
        db: impl AsRef<OsStr>,
        options: &ServerOptions,
    ) -> Result<ServerProc> {
        let mut command = Command::new(binary);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(db)
            // The benchmark measures the server, not the per-connection
            // flood protection: every scenario runs with the limit off.
            .args(["--send-rate", "0", "--open-registration"])
            .args(if options.address_limits {
                Vec::new()
            } else {
                unlimited_connections(binary)?
            })
            .args(&options.args)
            // Logging every login would cost CPU during the floods.
            .env(
                "RUST_LOG",
                std::env::var("BENCH_SERVER_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(redis) = &options.redis {
            command.arg("--redis").arg(redis);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            keep_tail(stderr, log.clone());
        }
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout from chat-server"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let mut server = ServerProc {
            child,
            url: String::new(),
            log,
        };
        let line = rx.recv_timeout(START_TIMEOUT).map_err(|_| {
            anyhow!(
                "chat-server did not start within {START_TIMEOUT:?}; its log:\n{}",
                server.log()
            )
        })?;
        let url = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .filter(|url| url.starts_with("ws://127.0.0.1:"))
            .ok_or_else(|| anyhow!("unexpected first line from chat-server: {line:?}"))?;
        server.url = url.to_owned();
        Ok(server)
    }

    /// `ws://127.0.0.1:PORT/ws`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The tail of the server's log.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Stops the server gracefully (SIGTERM) and waits for it.
    pub fn stop(mut self) -> Result<()> {
        stop_child(&mut self.child)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = stop_child(&mut self.child);
    }
}

/// `--max-connections-per-ip 0` when `binary` knows that option: all the
/// bench's connections come from a few loopback addresses, which the
/// server would otherwise cap at 64 each. Builds from before the option (an
/// older `--server-bin` for an A/B run) have no cap and get nothing.
fn unlimited_connections(binary: &Path) -> Result<Vec<&'static str>> {
    let mut help = Command::new(binary);
    help.args(["serve", "--help"]);
    let out = output_within(&mut help, START_TIMEOUT, "chat-server serve --help")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(if text.contains("--max-connections-per-ip") {
        vec!["--max-connections-per-ip", "0"]
    } else {
        Vec::new()
    })
}

/// A private `redis-server` on a free port, no persistence.
pub struct RedisProc {
    child: Child,
    port: u16,
}

impl RedisProc {
    pub fn start() -> Result<RedisProc> {
        let port = free_port()?;
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server (is it installed?)")?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > START_TIMEOUT {
                let _ = stop_child(&mut child);
                bail!("redis-server did not listen on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(RedisProc { child, port })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = stop_child(&mut self.child);
    }
}

/// A port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs `command` to completion within `limit`, its output captured (both
/// pipes read meanwhile, so it never blocks on a full one); past the limit
/// it is killed and this fails.
pub fn output_within(command: &mut Command, limit: Duration, what: &str) -> Result<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn stop_child(child: &mut Child) -> Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let started = Instant::now();
    while started.elapsed() < STOP_TIMEOUT {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    child.wait()?;
    bail!("child {} ignored SIGTERM and was killed", child.id())
}

fn keep_tail(mut stderr: impl Read + Send + 'static, log: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut log) = log.lock() {
                log.push_str(&String::from_utf8_lossy(&buf[..n]));
                if log.len() > 2 * LOG_TAIL {
                    let mut cut = log.len() - LOG_TAIL;
                    while !log.is_char_boundary(cut) {
                        cut += 1;
                    }
                    log.drain(..cut);
                }
            }
        }
    });
}

/// CPU time and resident memory of a process, from `/proc`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// User plus system CPU seconds since the process started.
    pub cpu_secs: f64,
    pub rss_bytes: u64,
    pub at: Option<Instant>,
}

impl ProcSample {
    /// `None` when the process is gone or `/proc` is unreadable.
    pub fn of(pid: u32) -> Option<ProcSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, cpu_secs) = ppid_and_cpu(&stat)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())?;
        Some(ProcSample {
            cpu_secs,
            rss_bytes: rss_kib * 1024,
            at: Some(Instant::now()),
        })
    }

    pub fn me() -> Option<ProcSample> {
        ProcSample::of(std::process::id())
    }

    /// CPU cores used on average between two samples (1.0 = one core busy).
    pub fn cores_since(&self, earlier: &ProcSample) -> f64 {
        match (self.at, earlier.at) {
            (Some(now), Some(then)) if now > then => {
                (self.cpu_secs - earlier.cpu_secs) / now.duration_since(then).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// The parent pid and the user plus system CPU seconds in a
/// `/proc/PID/stat` line.
pub fn ppid_and_cpu(stat: &str) -> Option<(u32, f64)> {
    // The command name (field 2) may hold spaces; fields after it are
    // plain: state, ppid, … utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((ppid, (utime + stime) / ticks))
}

/// Raises the open-files limit to its hard maximum (children inherit it);
/// returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to and read from the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_stat() {
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let line = "42 (post gres: a) S 7 42 42 0 -1 4194560 1 0 0 0 30 20 0 0 20 0 1 0";
        assert_eq!(ppid_and_cpu(line), Some((7, 50.0 / ticks)));
        assert_eq!(ppid_and_cpu("garbage"), None);
    }
}
