//! Self-test of the harness's PostgreSQL ([`TestPostgres`]): the shared
//! server hands out databases that are distinct and usable, runs where and
//! how the tests rely on (its own port and folder, not as root), a dedicated
//! one stops and restarts with its data, and nothing of either is left
//! running once its owner is gone: not after a failing test process, not
//! even after one killed with SIGKILL.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chat_e2e::*;

/// Set for the child test process of `no_postgres_outlives_its_test_process`:
/// where it reports "PID DIR" of each PostgreSQL it started.
const REPORT: &str = "CHAT_E2E_PG_REPORT";
/// How that child ends: "passes", "fails" (a panic: exit status 101) or
/// "killed" (SIGKILL: no `atexit`, no drop).
const ENDING: &str = "CHAT_E2E_PG_ENDING";

#[test]
fn the_shared_postgres_hands_out_distinct_usable_databases() {
    let postgres = TestPostgres::shared();
    assert!(
        std::ptr::eq(postgres, TestPostgres::shared()),
        "one per process"
    );
    assert_ne!(postgres.port(), 5432, "never the machine's own server");

    let a = postgres.create_database();
    let b = postgres.create_database();
    assert_ne!(a, b);
    postgres.psql(
        &a,
        "CREATE TABLE marker (v text); INSERT INTO marker VALUES ('in a')",
    );
    assert_eq!(postgres.psql(&a, "SELECT v FROM marker"), "in a");
    assert_eq!(
        postgres.psql(&b, "SELECT to_regclass('marker') IS NULL"),
        "t"
    );
    // Through the URL a server is given, over TCP.
    assert_eq!(psql(&postgres.url(&b), "SELECT current_database()"), b);
    assert_eq!(
        postgres.url(&b),
        format!("postgres://postgres@127.0.0.1:{}/{b}", postgres.port())
    );

    // Two scratches on PostgreSQL: two databases of the shared server.
    let (one, two) = (
        Scratch::new(Backend::Postgres),
        Scratch::new(Backend::Postgres),
    );
    assert_eq!(one.backend(), Backend::Postgres);
    assert_ne!(one.db(), two.db());
    let server_url = postgres.url("");
    assert!(one.db().starts_with(&server_url), "{}", one.db());
    assert_eq!(
        psql(
            one.db(),
            "SELECT count(*) FROM pg_class WHERE relname = 'marker'"
        ),
        "0"
    );

    let setting = |name: &str| postgres.psql("postgres", &format!("SHOW {name}"));
    assert_eq!(setting("listen_addresses"), "127.0.0.1");
    assert_eq!(setting("port"), postgres.port().to_string());
    assert_eq!(setting("max_connections"), "300");
    assert_eq!(setting("fsync"), "off");
    assert_eq!(
        setting("synchronous_commit"),
        "on",
        "acked commits survive a stop"
    );
    let dir = postgres.dir().to_str().expect("UTF-8 temp dir");
    assert_eq!(setting("unix_socket_directories"), dir);
    assert!(setting("data_directory").starts_with(dir));

    // PostgreSQL refuses root; as root the harness runs it as postgres.
    let pid = postgres.pid().expect("the shared server runs");
    let uid = proc_status_uid(pid);
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_ne!(uid, 0, "postgres runs as root");
    }
}

#[test]
fn a_dedicated_postgres_stops_and_restarts_with_its_data() {
    let mut postgres = TestPostgres::start();
    let scratch = Scratch::on(&postgres);
    psql(
        scratch.db(),
        "CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)",
    );
    let port = postgres.port();
    let first = postgres.pid().expect("running");

    postgres.stop();
    assert_eq!(postgres.pid(), None);
    assert!(!alive(first), "postmaster {first} still there after stop");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still answers after stop"
    );

    postgres.restart();
    let second = postgres.pid().expect("running again");
    assert_ne!(first, second);
    assert_eq!(postgres.port(), port, "same port, so servers reconnect");
    assert_eq!(psql(scratch.db(), "SELECT v FROM kept"), "7");

    let dir = postgres.dir().to_owned();
    drop(postgres);
    assert!(!alive(second), "postmaster {second} still there after drop");
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert_eq!(processes_mentioning(&dir), Vec::<u32>::new());
}

#[test]
fn no_postgres_outlives_its_test_process() {
    for ending in ["passes", "fails", "killed"] {
        let scratch = tempfile::tempdir().expect("temp dir");
        let report = scratch.path().join("report");
        let mut child = Command::new(std::env::current_exe().expect("own test binary"));
        child
            .args(["--exact", "postgres_of_a_child_process", "--ignored"])
            .args(["--test-threads", "1"])
            .env(REPORT, &report)
            .env(ENDING, ending)
            .stdin(Stdio::null())
            .stdout(file(&scratch.path().join("stdout")))
            .stderr(file(&scratch.path().join("stderr")));
        let mut child = child.spawn().expect("run the test binary again");
        let deadline = Instant::now() + 3 * TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the test process") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the child test process ran past {:?}", 3 * TIMEOUT);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = || {
            let read =
                |name| std::fs::read_to_string(scratch.path().join(name)).unwrap_or_default();
            format!("{}{}", read("stdout"), read("stderr"))
        };
        match ending {
            "passes" => assert!(status.success(), "{}", output()),
            "fails" => assert_eq!(status.code(), Some(101), "{}", output()),
            _ => assert_eq!(status.signal(), Some(libc::SIGKILL), "{}", output()),
        }
        let report = std::fs::read_to_string(&report)
            .unwrap_or_else(|_| panic!("no report from the child:\n{}", output()));
        let instances: Vec<(u32, PathBuf)> = report
            .lines()
            .map(|line| {
                let (pid, dir) = line
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("report line {line:?}"));
                (pid.parse().expect("pid in the report"), PathBuf::from(dir))
            })
            .collect();
        assert!(!instances.is_empty(), "{ending}: empty report");
        for (pid, dir) in instances {
            // SIGKILL runs nothing in the test process: the postmaster
            // shuts itself down on the parent-death signal, which takes a
            // moment.
            let deadline = Instant::now() + TIMEOUT;
            while (alive(pid) || !processes_mentioning(&dir).is_empty())
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let leftovers = processes_mentioning(&dir);
            // A failing check must not leak the server it found running.
            for &leftover in &leftovers {
                // SAFETY: kill(2) on a process whose command line names
                // our own temp dir: the PostgreSQL the child started.
                unsafe {
                    libc::kill(leftover as libc::pid_t, libc::SIGQUIT);
                }
            }
            assert_eq!(leftovers, Vec::<u32>::new(), "{ending}: outlived the test");
            assert!(!alive(pid), "{ending}: postmaster {pid} outlived the test");
            if ending == "killed" {
                // Nothing ran to remove it; the shutdown itself is checked.
                let _ = std::fs::remove_dir_all(&dir);
            } else {
                assert!(!dir.exists(), "{ending}: {} left behind", dir.display());
            }
        }
    }
}

/// Run (only) by the test above, in a process of its own: starts the shared
/// PostgreSQL (and, to be killed, a dedicated one), reports them, and ends
/// as told.
#[test]
#[ignore = "run by no_postgres_outlives_its_test_process"]
fn postgres_of_a_child_process() {
    let (Some(report), Ok(ending)) = (std::env::var_os(REPORT), std::env::var(ENDING)) else {
        return;
    };
    let shared = TestPostgres::shared();
    let mut lines = format!("{} {}\n", running(shared), shared.dir().display());
    let dedicated = (ending == "killed").then(TestPostgres::start);
    if let Some(dedicated) = &dedicated {
        lines += &format!("{} {}\n", running(dedicated), dedicated.dir().display());
    }
    std::fs::write(report, lines).expect("write the report");
    match ending.as_str() {
        "fails" => panic!("failing on purpose: the stop at exit must run all the same"),
        "killed" => {
            // SAFETY: raise(3) with SIGKILL: this process ends here.
            unsafe {
                libc::raise(libc::SIGKILL);
            }
        }
        _ => {}
    }
}

fn running(postgres: &TestPostgres) -> u32 {
    postgres.pid().expect("PostgreSQL runs")
}

fn file(path: &Path) -> std::fs::File {
    std::fs::File::create(path).expect("create an output file")
}

/// Whether process `pid` runs. A zombie does not: it has exited, and is
/// only waiting for whoever inherited it to reap it.
fn alive(pid: u32) -> bool {
    // The state follows the ")" that closes the command name.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// The real uid of process `pid`.
fn proc_status_uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
        .expect("a Uid line in /proc status")
}

/// Pids of processes whose command line names `dir`: what `pgrep -f DIR`
/// finds.
fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}
