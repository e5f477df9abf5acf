//! A private PostgreSQL for tests of the PostgreSQL store: `initdb` into a
//! temporary folder, then `postgres` on a free port of 127.0.0.1 with its
//! unix socket in that folder, never the machine's own server on 5432.
//!
//! Two ways to get one:
//! - [`TestPostgres::shared`]: one server per test process, started on first
//!   use; each test takes a fresh database of its own from it
//!   ([`TestPostgres::create_database`]). Starting PostgreSQL costs about a
//!   second, a database a few milliseconds. Statics are never dropped, so an
//!   `atexit` hook stops the shared server when the test process exits.
//! - [`TestPostgres::start`]: an instance the test owns, for tests that stop
//!   and restart PostgreSQL under a running chat-server.
//!
//! PostgreSQL refuses to run as root, so as root (CI) `initdb` and `postgres`
//! run as the `postgres` OS user, and the folder is handed to that user.
//!
//! A test process killed outright (SIGKILL, a `timeout`, Ctrl-C) runs no
//! `atexit` and drops nothing; so on Linux every postmaster also gets
//! SIGQUIT, PostgreSQL's immediate shutdown, when the test process dies
//! (`PR_SET_PDEATHSIG`, see [`spawn_tied_to_process`]).

use std::ffi::CString;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{free_port, output_within, TIMEOUT};

/// The superuser `initdb` creates; authentication is `trust`, no password.
const SUPERUSER: &str = "postgres";

/// Tests run in parallel and every chat-server node opens a pool: the
/// default of 100 connections runs out.
const MAX_CONNECTIONS: u32 = 300;

/// `initdb` writes a whole cluster: allow it more than one test wait.
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);

/// The shared server of this process, stopped by [`stop_shared_at_exit`].
static SHARED: OnceLock<TestPostgres> = OnceLock::new();

/// A PostgreSQL server of the tests' own, stopped by pid when dropped.
pub struct TestPostgres {
    /// Holds `data/` (the cluster), the unix socket and `postgres.log`.
    dir: tempfile::TempDir,
    port: u16,
    /// The postmaster, started directly (not through `pg_ctl`) so that its
    /// pid is ours to signal and to reap.
    child: Option<Child>,
    /// `uid` and `gid` of the `postgres` OS user when we are root.
    run_as: Option<(u32, u32)>,
    /// Addresses it listens on besides 127.0.0.1 (for test hosts in network
    /// namespaces).
    also_listen: Vec<IpAddr>,
}

impl TestPostgres {
    /// The PostgreSQL shared by the tests of this process, started on first
    /// use and stopped when the process exits.
    pub fn shared() -> &'static TestPostgres {
        SHARED.get_or_init(|| {
            let postgres = TestPostgres::start();
            // SAFETY: registers a plain `extern "C" fn` that never unwinds.
            let registered = unsafe { libc::atexit(stop_shared_at_exit) };
            assert_eq!(registered, 0, "atexit refused the PostgreSQL stop hook");
            postgres
        })
    }

    /// A PostgreSQL of the caller's own: a new cluster on a free port.
    pub fn start() -> TestPostgres {
        Self::start_reachable(&[], None)
    }

    /// A PostgreSQL of the caller's own that also listens on `also_listen`
    /// and lets clients from the `clients` network (CIDR) in without a
    /// password, for test hosts in network namespaces.
    pub fn start_reachable(also_listen: &[IpAddr], clients: Option<&str>) -> TestPostgres {
        let run_as = server_user();
        let dir = tempfile::Builder::new()
            .prefix("chat-e2e-pg-")
            .tempdir()
            .expect("temp dir for PostgreSQL");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("hand the PostgreSQL temp dir to the postgres user");
        }
        let mut postgres = TestPostgres {
            dir,
            port: free_port(),
            child: None,
            run_as,
            also_listen: also_listen.to_vec(),
        };
        postgres.initdb();
        if let Some(clients) = clients {
            let hba = postgres.data().join("pg_hba.conf");
            let mut rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
            rules.push_str(&format!("host all all {clients} trust\n"));
            std::fs::write(&hba, rules).expect("write pg_hba.conf");
        }
        postgres.spawn();
        postgres
    }

    /// Port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Pid of the postmaster, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The folder that holds the cluster, its socket and its log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `postgres://postgres@127.0.0.1:PORT/DATABASE`, the form
    /// `chat-server --db` takes.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// `postgres://postgres@ADDR:PORT/DATABASE`: the URL for a client that
    /// reaches it at `addr` (one of the addresses it also listens on).
    pub fn url_at(&self, addr: IpAddr, database: &str) -> String {
        format!("postgres://{SUPERUSER}@{addr}:{}/{database}", self.port)
    }

    /// Creates a database no other test uses; returns its name.
    pub fn create_database(&self) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let name = format!("t_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// Runs `sql` as the superuser in `database`; returns what it printed
    /// (unaligned, rows only). Panics on any error.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        psql(&self.url(database), sql)
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops the server (a fast shutdown: clients are cut off, nothing
    /// acknowledged is lost). The cluster stays for [`TestPostgres::restart`].
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            shut_down(child.id() as libc::pid_t);
        }
    }

    /// Starts the server again on the same port and cluster.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A command for one of the server binaries, run as the postgres user
    /// when we are root.
    fn server_command(&self, program: &str) -> Command {
        let mut command = Command::new(bindir().join(program));
        command.current_dir(self.dir.path());
        if let Some((uid, gid)) = self.run_as {
            // std drops the supplementary groups of root along with these.
            std::os::unix::process::CommandExt::uid(&mut command, uid);
            std::os::unix::process::CommandExt::gid(&mut command, gid);
        }
        command
    }

    fn initdb(&self) {
        let mut command = self.server_command("initdb");
        command
            .arg("-D")
            .arg(self.data())
            .args(["-U", SUPERUSER, "--auth=trust", "--encoding=UTF8"])
            // C locale: the same collation on every machine; --no-sync:
            // the cluster is thrown away.
            .args(["--locale=C", "--no-sync"]);
        let out = output_within(&mut command, INITDB_TIMEOUT, "initdb").expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the postmaster and waits until it answers a query over TCP.
    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open postgres.log");
        let mut command = self.server_command("postgres");
        command
            .arg("-D")
            .arg(self.data())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .arg("-c")
            .arg(format!(
                "listen_addresses={}",
                std::iter::once("127.0.0.1".to_owned())
                    .chain(self.also_listen.iter().map(IpAddr::to_string))
                    .collect::<Vec<_>>()
                    .join(",")
            ))
            .arg("-c")
            .arg(format!("max_connections={MAX_CONNECTIONS}"))
            // No fsync, for speed: the data is thrown away and the machine
            // never crashes under a test. synchronous_commit stays on, so a
            // commit has reached the OS before it is acknowledged and a
            // stopped or killed PostgreSQL still has it after a restart.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone postgres.log handle"))
            .stderr(log);
        let child = spawn_tied_to_process(command).expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                panic!(
                    "postgres exited at start-up ({status}); log:\n{}",
                    self.log()
                );
            }
            if try_psql(&self.url("postgres"), "SELECT 1").status.success() {
                return;
            }
            if Instant::now() > deadline {
                self.stop();
                panic!(
                    "postgres not ready within {TIMEOUT:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `command` (the postmaster) so that it gets SIGQUIT when this
/// process dies, however it dies.
///
/// The kernel sends the parent-death signal when the *thread* that forked
/// the child ends, and test threads end with their test: so every
/// postmaster is forked by one thread that lives as long as the process.
#[cfg(target_os = "linux")]
fn spawn_tied_to_process(mut command: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;

    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("postgres-parent".into())
            // The sender sits in a static: this loop never ends, and the
            // thread lives until the process does.
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("start the thread that forks postgres");
        requests
    });
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and calls only
    // prctl(2) and getppid(2), both async-signal-safe. std runs it after
    // switching to the postgres user, which would clear the setting.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The test process died between fork and prctl: do not start.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the test process is gone"));
            }
            Ok(())
        });
    }
    let (reply, answer) = mpsc::channel();
    keeper
        .send((command, reply))
        .expect("the thread that forks postgres runs");
    answer
        .recv()
        .expect("the thread that forks postgres answers")
}

/// Elsewhere only `atexit` and `Drop` stop PostgreSQL.
#[cfg(not(target_os = "linux"))]
fn spawn_tied_to_process(mut command: Command) -> std::io::Result<Child> {
    command.spawn()
}

/// Runs `sql` on the database at `url`; returns what it printed. Panics on
/// any error.
pub fn psql(url: &str, sql: &str) -> String {
    let out = try_psql(url, sql);
    assert!(
        out.status.success(),
        "psql {url} -c {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

fn try_psql(url: &str, sql: &str) -> Output {
    let mut command = Command::new(bindir().join("psql"));
    // Settings of the machine's own PostgreSQL users must not leak in.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            command.env_remove(key);
        }
    }
    command.env("PGCONNECT_TIMEOUT", "5").args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        url,
        "-c",
        sql,
    ]);
    output_within(&mut command, TIMEOUT, "psql").expect("run psql")
}

/// Stops the shared server when the test process exits (statics are never
/// dropped) and removes its folder.
extern "C" fn stop_shared_at_exit() {
    if let Some(postgres) = SHARED.get() {
        if let Some(child) = &postgres.child {
            shut_down(child.id() as libc::pid_t);
        }
        let _ = std::fs::remove_dir_all(postgres.dir.path());
    }
}

/// Stops the postmaster `pid`, a child of ours not yet reaped, and reaps it:
/// a fast shutdown first (SIGINT: sessions cut off; SIGTERM, the "smart"
/// one, would wait for every connected chat-server to hang up), then an
/// immediate one (SIGQUIT), then SIGKILL, each step bounded. Never panics:
/// it runs in `atexit`.
fn shut_down(pid: libc::pid_t) {
    let steps = [
        (libc::SIGINT, TIMEOUT),
        (libc::SIGQUIT, Duration::from_secs(5)),
        (libc::SIGKILL, Duration::from_secs(5)),
    ];
    for (signal, grace) in steps {
        // SAFETY: kill(2) on our own child; until we reap it the pid cannot
        // name another process.
        unsafe {
            libc::kill(pid, signal);
        }
        if reaped_within(pid, grace) {
            return;
        }
    }
}

fn reaped_within(pid: libc::pid_t, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) on our own child, WNOHANG.
        let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        // < 0: not (or no longer) our child, nothing left to wait for.
        if reaped == pid || reaped < 0 {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The folder of the PostgreSQL server binaries (`initdb`, `postgres`,
/// `psql`): the newest of Debian's `/usr/lib/postgresql/*/bin`, else
/// `pg_config --bindir`, else the `PATH`.
fn bindir() -> &'static Path {
    static BINDIR: OnceLock<PathBuf> = OnceLock::new();
    BINDIR.get_or_init(|| {
        find_bindir().unwrap_or_else(|| {
            panic!(
                "no PostgreSQL server binaries (initdb) in /usr/lib/postgresql/*/bin, \
                 `pg_config --bindir` or PATH: install the postgresql package (see .ci/run)"
            )
        })
    })
}

fn find_bindir() -> Option<PathBuf> {
    // Debian installs major versions side by side, named "15", "16"…
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let from_pg_config = output_within(
        Command::new("pg_config").arg("--bindir"),
        TIMEOUT,
        "pg_config",
    )
    .ok()
    .filter(|out| out.status.success())
    .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    .filter(|bin| bin.join("initdb").is_file());
    from_pg_config.or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?).find(|dir| dir.join("initdb").is_file())
    })
}

/// `uid` and `gid` of the `postgres` OS user when we run as root, since
/// PostgreSQL refuses to run as root; `None` otherwise.
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let user = lookup_user("postgres").unwrap_or_else(|| {
        panic!(
            "running as root, PostgreSQL must run as the postgres OS user, \
             which does not exist: install the postgresql package (see .ci/run)"
        )
    });
    Some(user)
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
