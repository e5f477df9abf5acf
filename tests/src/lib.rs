//! End-to-end test harness: starts real `chat-server` processes (and, for
//! cluster tests, a real `redis-server`) on free ports with temporary
//! databases, and talks to them over real WebSockets.
//!
//! Every server test can run on either store [`Backend`]: a SQLite file in a
//! temp dir, or a fresh database on a PostgreSQL the harness starts itself
//! ([`TestPostgres`], in `postgres.rs`). [`backend_tests!`] runs one test
//! body on both.
//!
//! Every wait is bounded by [`TIMEOUT`]; nothing sleeps where an event can
//! be awaited. Child processes are killed by pid when their handle drops.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod browser;
mod netns;
mod postgres;

pub use browser::Browser;
pub use netns::{TestHost, TestHosts};
pub use postgres::{psql, TestPostgres};

/// Longest any single wait in a test may take.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Password used by [`TestServer::add_user`] callers that do not care.
pub const PASSWORD: &str = "correct horse";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// Path of the `chat-server` binary, built once per test process.
pub fn server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "chat-server",
                "--bin",
                "chat-server",
            ])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building chat-server failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        target.join("debug").join("chat-server")
    })
}

/// A free TCP port on 127.0.0.1 (the OS picks it).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Which store a server under test keeps its data in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the test's temp dir.
    Sqlite,
    /// A database of the test's own on the shared [`TestPostgres`].
    Postgres,
}

/// The temp dir and the database of one test: servers started on the same
/// scratch (the nodes of a cluster, a restarted server) share the database.
pub struct Scratch {
    dir: tempfile::TempDir,
    backend: Backend,
    /// The `--db` argument: a file in `dir`, or a PostgreSQL URL.
    db: String,
}

impl Scratch {
    /// A fresh database on `backend`: a SQLite file in a new temp dir, or a
    /// new database on the PostgreSQL shared by this test process.
    pub fn new(backend: Backend) -> Arc<Scratch> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = match backend {
            Backend::Sqlite => dir
                .path()
                .join("chat.db")
                .into_os_string()
                .into_string()
                .expect("the temp dir path is UTF-8"),
            Backend::Postgres => {
                let postgres = TestPostgres::shared();
                postgres.url(&postgres.create_database())
            }
        };
        Arc::new(Scratch { dir, backend, db })
    }

    /// A fresh database on a PostgreSQL the test owns (and may stop and
    /// restart under the servers).
    pub fn on(postgres: &TestPostgres) -> Arc<Scratch> {
        Arc::new(Scratch {
            dir: tempfile::tempdir().expect("temp dir"),
            backend: Backend::Postgres,
            db: postgres.url(&postgres.create_database()),
        })
    }

    /// A temp dir for servers that use the database `db` (a `--db` value
    /// built by the test, such as a URL reachable from other test hosts).
    pub fn with_db(backend: Backend, db: String) -> Arc<Scratch> {
        Arc::new(Scratch {
            dir: tempfile::tempdir().expect("temp dir"),
            backend,
            db,
        })
    }

    /// The temp dir; servers on this scratch run in it.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The `--db` argument: a SQLite file path or a PostgreSQL URL.
    pub fn db(&self) -> &str {
        &self.db
    }
}

/// Runs each listed test on both store backends. Each name is an
/// `async fn NAME(backend: Backend)` of the calling file; the macro makes the
/// tests `sqlite::NAME` and `postgres::NAME` of it, so that
/// `cargo test -p chat-e2e postgres::` picks one backend. The bodies stay
/// plain functions, formatted and checked like any other code.
///
/// ```ignore
/// backend_tests! { history_pages_backwards, admin_commands }
///
/// async fn history_pages_backwards(backend: Backend) {
///     let server = TestServer::with_users(backend, Options::unlimited());
///     // …
/// }
/// ```
#[macro_export]
macro_rules! backend_tests {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        /// The tests on a SQLite file.
        mod sqlite {
            $(
                $(#[$attr])*
                #[::tokio::test]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await
                }
            )*
        }

        /// The tests on a PostgreSQL database.
        mod postgres {
            $(
                $(#[$attr])*
                #[::tokio::test]
                async fn $name() {
                    super::$name($crate::Backend::Postgres).await
                }
            )*
        }
    };
}

/// How to start a server.
#[derive(Clone, Default)]
pub struct Options {
    pub open_registration: bool,
    pub redis: Option<String>,
    /// Run it on another test host: inside this network namespace,
    /// listening on this address of it.
    pub host: Option<(String, IpAddr)>,
    /// Start it with this open-files limit (soft and hard).
    pub max_open_files: Option<u64>,
    /// Extra `serve` arguments.
    pub args: Vec<String>,
}

impl Options {
    /// No send rate limit (`--send-rate 0`), for tests that send in bulk.
    pub fn unlimited() -> Options {
        Options {
            args: vec!["--send-rate".into(), "0".into()],
            ..Options::default()
        }
    }
}

/// A running `chat-server serve` process.
pub struct TestServer {
    child: Option<Child>,
    port: u16,
    scratch: Arc<Scratch>,
    options: Options,
    /// Lines the server printed to stderr (its log), for failure messages.
    log: Arc<std::sync::Mutex<String>>,
}

impl TestServer {
    /// A standalone server with a fresh database on `backend`.
    pub fn start(backend: Backend) -> TestServer {
        Self::start_with(Scratch::new(backend), Options::default())
    }

    /// A server with a fresh database on `backend` and the users alice, bob
    /// and root (admin), all with [`PASSWORD`].
    pub fn with_users(backend: Backend, options: Options) -> TestServer {
        let server = Self::start_with(Scratch::new(backend), options);
        server.add_user("alice", PASSWORD, false);
        server.add_user("bob", PASSWORD, false);
        server.add_user("root", PASSWORD, true);
        server
    }

    /// A server on the database of `scratch` (shared by cluster nodes).
    pub fn start_with(scratch: Arc<Scratch>, options: Options) -> TestServer {
        let mut server = TestServer {
            child: None,
            port: 0,
            scratch,
            options,
            log: Default::default(),
        };
        let listen = match &server.options.host {
            Some((_, addr)) => format!("{addr}:0"),
            None => "127.0.0.1:0".into(),
        };
        server.spawn(listen);
        server
    }

    fn spawn(&mut self, listen: String) {
        let mut command = match &self.options.host {
            // `ip netns exec` execs the server in place: the child's pid
            // is the server's, to signal and reap as usual.
            Some((netns, _)) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(server_binary());
                command
            }
            None => Command::new(server_binary()),
        };
        command
            .arg("serve")
            .arg("--listen")
            .arg(&listen)
            .arg("--db")
            .arg(self.scratch.db())
            .current_dir(self.scratch.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.options.open_registration {
            command.arg("--open-registration");
        }
        if let Some(redis) = &self.options.redis {
            command.arg("--redis").arg(redis);
        }
        command.args(&self.options.args);
        if let Some(files) = self.options.max_open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and only touches the
            // child about to exec.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: files as libc::rlim_t,
                        rlim_max: files as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command.spawn().expect("start chat-server");
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut log) = log.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        // The first stdout line names the URL: "listening on ws://ADDR/ws".
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx.recv_timeout(TIMEOUT).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("chat-server did not start; log:\n{}", self.log())
        });
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches("/ws").parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        self.port = port;
        self.child = Some(child);
        assert_url_not_taken_for_a_path(self.scratch.path(), self.scratch.db());
    }

    /// `ws://127.0.0.1:PORT/ws`, or the address on its test host.
    pub fn url(&self) -> String {
        match &self.options.host {
            Some((_, addr)) => format!("ws://{addr}:{}/ws", self.port),
            None => format!("ws://127.0.0.1:{}/ws", self.port),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `--db` argument: a SQLite file path or a PostgreSQL URL.
    pub fn db(&self) -> &str {
        self.scratch.db()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Creates a user with the `useradd` subcommand (password on stdin).
    pub fn add_user(&self, name: &str, password: &str, admin: bool) {
        let out = run_admin(self.db(), &["useradd", name], admin, Some(password));
        assert!(
            out.status.success(),
            "useradd {name} failed: {}",
            out.stderr
        );
    }

    /// Kills the process with SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        wait_exit(&mut child)
    }

    /// Waits (bounded) until the log holds `needle` at least `times` times:
    /// the log is read on a thread of its own, a moment behind the server.
    pub async fn wait_for_log(&self, needle: &str, times: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.log().matches(needle).count() < times {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts the server again on the same port and database.
    pub fn restart(&mut self) {
        self.kill();
        let listen = format!("127.0.0.1:{}", self.port);
        let deadline = Instant::now() + TIMEOUT;
        // The old socket may linger a moment; retry the bind.
        loop {
            if StdListener::bind(&listen).is_ok() || Instant::now() > deadline {
                break;
            }
            std::thread::yield_now();
        }
        self.spawn(listen);
    }

    /// The shared scratch folder.
    pub fn scratch(&self) -> Arc<Scratch> {
        self.scratch.clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Output of an admin subcommand.
pub struct AdminOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `chat-server ARGS --db DB`, feeding `stdin` as one line. `db` is a
/// SQLite file path or a PostgreSQL URL ([`Scratch::db`]).
pub fn run_admin(db: &str, args: &[&str], admin: bool, stdin: Option<&str>) -> AdminOutput {
    // A relative path, or a URL that a server without PostgreSQL support
    // takes for one, lands in a folder removed afterwards, never the tree.
    let cwd = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(server_binary());
    command
        .args(args)
        .arg("--db")
        .arg(db)
        .current_dir(cwd.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if admin {
        command.arg("--admin");
    }
    let mut child = command.spawn().expect("run chat-server");
    if let Some(mut input) = child.stdin.take() {
        if let Some(line) = stdin {
            let _ = writeln!(input, "{line}");
        }
    }
    let out = finish_within(child, TIMEOUT, "chat-server");
    assert_url_not_taken_for_a_path(cwd.path(), db);
    AdminOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A server without PostgreSQL support takes `postgres://…` for a relative
/// SQLite path, creates `postgres:/…` in its working folder and passes every
/// test on SQLite. That must fail the test instead.
fn assert_url_not_taken_for_a_path(cwd: &Path, db: &str) {
    if !db.contains("://") {
        return;
    }
    if let Some(first) = Path::new(db).components().next() {
        assert!(
            !cwd.join(first).exists(),
            "chat-server took --db {db} for a file path (it created {}): \
             no PostgreSQL support in this build",
            cwd.join(first).display()
        );
    }
}

/// Runs `command` to its end within `limit`, stdout and stderr captured and
/// stdin empty; `Err` when it cannot start. See [`finish_within`].
pub(crate) fn output_within(
    command: &mut Command,
    limit: Duration,
    what: &str,
) -> std::io::Result<Output> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    Ok(finish_within(child, limit, what))
}

/// Waits for `child` (stdout and stderr piped) within `limit`, reading both
/// pipes meanwhile so that it never blocks on a full one; past the limit it
/// is killed and the test fails.
pub(crate) fn finish_within(mut child: Child, limit: Duration, what: &str) -> Output {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {limit:?}");
            }
        }
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// A `redis-server` of the test's own, on a free port, stopped by pid.
pub struct TestRedis {
    child: Option<Child>,
    port: u16,
    /// Addresses it listens on besides 127.0.0.1.
    also_listen: Vec<IpAddr>,
}

impl TestRedis {
    pub fn start() -> TestRedis {
        Self::start_reachable(&[])
    }

    /// A redis-server that also listens on `also_listen`, for test hosts in
    /// network namespaces.
    pub fn start_reachable(also_listen: &[IpAddr]) -> TestRedis {
        let mut redis = TestRedis {
            child: None,
            port: free_port(),
            also_listen: also_listen.to_vec(),
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let mut bind = vec!["127.0.0.1".to_owned()];
        bind.extend(self.also_listen.iter().map(IpAddr::to_string));
        let child = Command::new("redis-server")
            .arg("--bind")
            .args(&bind)
            // Explicit addresses and no password: protected mode would
            // refuse the test hosts.
            .args(["--protected-mode", "no", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (see .ci/run)");
        self.child = Some(child);
        let deadline = Instant::now() + TIMEOUT;
        while !self.answers_ping() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Publishes `payload` on `channel`, as anything that can write to
    /// Redis could; returns the number of subscribers that got it.
    pub fn publish(&self, channel: &str, payload: &str) -> u64 {
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let command = format!(
            "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${}\r\n{payload}\r\n",
            channel.len(),
            payload.len()
        );
        stream.write_all(command.as_bytes()).expect("send PUBLISH");
        let mut reply = String::new();
        BufReader::new(stream)
            .read_line(&mut reply)
            .expect("PUBLISH reply");
        reply
            .trim()
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected PUBLISH reply {reply:?}"))
    }

    /// The URL for a client that reaches it at `addr`.
    pub fn url_at(&self, addr: IpAddr) -> String {
        format!("redis://{addr}:{}/", self.port)
    }

    /// Stops it (SIGKILL): everything it held is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// A close frame with this code.
    Code(u16),
    /// The socket ended without a close frame.
    NoFrame,
}

/// A WebSocket client speaking JSON events.
pub struct Client {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Client {
        let (socket, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect");
        Client { socket }
    }

    /// Connects to `url` (a `ws://127.0.0.1:PORT/…` one) from another
    /// loopback address, such as 127.0.0.2: another "machine" to the
    /// server's per-address limits. Says why the server refused.
    pub async fn try_connect_from(
        url: &str,
        local: std::net::Ipv4Addr,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let port: u16 = url
            .trim_start_matches("ws://127.0.0.1:")
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a ws://127.0.0.1:PORT URL");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind((local, 0).into())
            .expect("bind a local loopback address");
        let stream = tokio::time::timeout(TIMEOUT, socket.connect(([127, 0, 0, 1], port).into()))
            .await
            .expect("connect timed out")
            .expect("connect");
        let (socket, _) = tokio::time::timeout(
            TIMEOUT,
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)),
        )
        .await
        .expect("handshake timed out")?;
        Ok(Client { socket })
    }

    /// Connects, or says why the server refused.
    pub async fn try_connect(url: &str) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (socket, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")?;
        Ok(Client { socket })
    }

    /// Connects and logs in; panics unless `welcome` comes back.
    pub async fn login(url: &str, user: &str, password: &str) -> Client {
        let mut client = Client::connect(url).await;
        let welcome = client
            .request(json!({"type":"login","user":user,"password":password}))
            .await;
        assert_eq!(welcome["type"], "welcome", "login of {user}: {welcome}");
        client
    }

    /// Sends one event.
    pub async fn send(&mut self, event: Value) {
        self.send_raw(Message::Text(event.to_string().into())).await;
    }

    /// Sends any WebSocket message.
    pub async fn send_raw(&mut self, message: Message) {
        tokio::time::timeout(TIMEOUT, self.socket.send(message))
            .await
            .expect("send timed out")
            .expect("send");
    }

    /// Next event (pings and pongs skipped); panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(TIMEOUT, self.socket.next())
                .await
                .expect("no event within the timeout")
                .expect("connection ended")
                .expect("connection error");
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(&text).expect("server sent valid JSON")
                }
                Message::Close(frame) => panic!("closed by server: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Next event of type `kind`, skipping others; panics on timeout.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let event = self.recv().await;
            if event["type"] == kind {
                return event;
            }
        }
    }

    /// Next event matching `wanted` within `limit` (for waits longer than
    /// [`TIMEOUT`], such as presence expiry).
    pub async fn recv_matching(
        &mut self,
        limit: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Value {
        tokio::time::timeout(limit, async {
            loop {
                let message = self
                    .socket
                    .next()
                    .await
                    .expect("connection ended")
                    .expect("connection error");
                if let Message::Text(text) = message {
                    let event: Value = serde_json::from_str(&text).expect("valid JSON");
                    if wanted(&event) {
                        return event;
                    }
                }
            }
        })
        .await
        .expect("no matching event within the limit")
    }

    /// Sends a request and returns the first event that carries its `re`
    /// (an `id` is added when missing).
    pub async fn request(&mut self, mut event: Value) -> Value {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        if event.get("id").is_none() {
            let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            event["id"] = json!(format!("r{id}"));
        }
        let id = event["id"].clone();
        self.send(event).await;
        loop {
            let answer = self.recv().await;
            if answer["re"] == id {
                return answer;
            }
        }
    }

    /// Next event, or how the connection closed.
    pub async fn recv_or_close(&mut self) -> Result<Value, Closed> {
        loop {
            let next = tokio::time::timeout(TIMEOUT, self.socket.next())
                .await
                .expect("nothing within the timeout");
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Ok(serde_json::from_str(&text).expect("valid JSON"))
                }
                Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => {
                    return Err(Closed::Code(code.into()))
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                    return Err(Closed::NoFrame)
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Waits for the server to close the connection; returns how.
    pub async fn closed(&mut self) -> Closed {
        loop {
            let next = tokio::time::timeout(TIMEOUT, self.socket.next())
                .await
                .expect("connection not closed within the timeout");
            match next {
                Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => {
                    return Closed::Code(code.into())
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Closed::NoFrame,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Joins a room; returns `joined` and the `history` events up to
    /// `joined.last_seq` (the whole backlog).
    pub async fn join(&mut self, room: &str, since: Option<u64>) -> (Value, Vec<Value>) {
        let mut request = json!({"type":"join","room":room});
        if let Some(since) = since {
            request["since"] = json!(since);
        }
        let joined = self.request(request).await;
        assert_eq!(joined["type"], "joined", "{joined}");
        let last_seq = joined["last_seq"].as_u64().unwrap_or(0);
        let mut messages = Vec::new();
        loop {
            // The backlog follows `joined` directly, and is no answer itself.
            let history = self.recv().await;
            assert_eq!(history["type"], "history", "after joined: {history}");
            assert!(history.get("re").is_none(), "{history}");
            let page = history["messages"].as_array().cloned().unwrap_or_default();
            let done = page.is_empty()
                || since.is_none()
                || page.last().and_then(|m| m["seq"].as_u64()) >= Some(last_seq);
            messages.extend(page);
            if done {
                break;
            }
        }
        (joined, messages)
    }

    /// Sends a message and waits for its `ack`; returns the ack.
    pub async fn say(&mut self, room: &str, text: &str) -> Value {
        let ack = self
            .request(json!({"type":"send","room":room,"text":text}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        ack
    }

    /// Collects `message` events of `room` until one with `seq >= upto`.
    pub async fn messages_until(&mut self, room: &str, upto: u64) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let event = self.recv().await;
            if event["type"] == "message" && event["room"] == room {
                let seq = event["seq"].as_u64().unwrap_or(0);
                seen.push(event);
                if seq >= upto {
                    return seen;
                }
            }
        }
    }
}

/// Seqs of a list of message objects.
pub fn seqs(messages: &[Value]) -> Vec<u64> {
    messages.iter().filter_map(|m| m["seq"].as_u64()).collect()
}

/// Path of the `chat-tui` binary, built once per test process (as
/// [`server_binary`] builds the server).
pub fn tui_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "chat-tui", "--bin", "chat-tui"])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building chat-tui failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        target.join("debug").join("chat-tui")
    })
}

/// Runs `chat-tui ARGS` to its end without a terminal (stdin empty), with
/// `home` as its HOME and config folder, so that its known servers file is
/// the test's own, and with `env` set.
pub fn run_tui(args: &[&str], env: &[(&str, &str)], home: &Path) -> AdminOutput {
    let mut command = Command::new(tui_binary());
    command
        .args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .envs(env.iter().copied())
        .current_dir(home);
    let out = output_within(&mut command, TIMEOUT, "chat-tui").expect("start chat-tui");
    AdminOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl TestServer {
    /// `wss://127.0.0.1:PORT/ws`, for a server started with TLS flags.
    pub fn wss_url(&self) -> String {
        self.url().replacen("ws://", "wss://", 1)
    }
}

/// A tmux server of the test's own (its own socket, no config file),
/// killed when dropped, with one session running `sh`.
pub struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    pub const SESSION: &'static str = "chat";

    pub fn start(dir: &Path, env: &[(&str, &Path)]) -> Tmux {
        let tmux = Tmux {
            socket: dir.join("tmux.sock"),
        };
        // The server inherits this command's environment: HOME and
        // XDG_CONFIG_HOME point into the test's folder.
        let mut command = tmux.command();
        command
            .args([
                "new-session",
                "-d",
                "-s",
                Self::SESSION,
                "-x",
                "200",
                "-y",
                "50",
                "sh",
            ])
            .envs(env.iter().copied())
            .env("PS1", "$ ");
        let status = command
            .status()
            .expect("tmux must be installed (see .ci/run)");
        assert!(status.success(), "tmux new-session failed");
        tmux
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command
            .arg("-S")
            .arg(&self.socket)
            .args(["-f", "/dev/null"]);
        command
    }

    pub fn run(&self, args: &[&str]) {
        let out = self
            .command()
            .args(args)
            .stdout(Stdio::null())
            .output()
            .expect("run tmux");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
    }

    /// Types `line` into the session and presses Enter.
    pub fn type_line(&self, line: &str) {
        self.run(&["send-keys", "-t", Self::SESSION, "-l", line]);
        self.run(&["send-keys", "-t", Self::SESSION, "Enter"]);
    }

    pub fn screen(&self) -> String {
        let out = self
            .command()
            .args(["capture-pane", "-p", "-J", "-t", Self::SESSION])
            .output()
            .expect("run tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits (bounded) until the screen shows every one of `parts`.
    pub fn wait_for(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let screen = self.screen();
            if parts.iter().all(|part| screen.contains(part)) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {parts:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Clears the screen, and waits until it is.
    pub fn clear(&self) {
        self.type_line("clear");
        let deadline = Instant::now() + TIMEOUT;
        while self.screen().contains("exit=") {
            assert!(Instant::now() < deadline, "the screen was not cleared");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .command()
            .arg("kill-server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
