//! Smoke test of `chat-bench`: every scenario runs for a few seconds with
//! small numbers (`--smoke`) against the debug build, and its JSON line must
//! report sane figures: traffic flowed, every acked message reached every
//! member exactly once, nothing failed. Never timings: the machine is shared
//! and CI is not a benchmark.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest one smoke scenario may run.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// Builds chat-bench and chat-server (debug) once; the path of chat-bench.
fn bench_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "chat-bench", "-p", "chat-server"])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building chat-bench failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        target.join("debug").join("chat-bench")
    })
}

/// Runs `chat-bench SCENARIO --smoke ARGS…` and returns its JSON line.
fn smoke(scenario: &str, args: &[&str]) -> Value {
    let mut child = Command::new(bench_binary())
        .arg(scenario)
        .arg("--smoke")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chat-bench");
    let started = Instant::now();
    while child.try_wait().expect("wait for chat-bench").is_none() {
        if started.elapsed() > SCENARIO_TIMEOUT {
            let _ = child.kill();
            panic!("chat-bench {scenario} --smoke ran longer than {SCENARIO_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("chat-bench output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "chat-bench {scenario} failed:\n{stdout}\n{stderr}"
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line from chat-bench {scenario}:\n{stdout}"));
    let report: Value = serde_json::from_str(line).expect("the JSON line parses");
    assert_eq!(report["scenario"], scenario);
    report
}

fn num(report: &Value, key: &str) -> f64 {
    report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing from {report}"))
}

/// Room traffic: something flowed, every sent message was acked, and every
/// acked message reached every member of its room exactly once.
fn assert_exactly_once(report: &Value, prefix: &str, members_per_room: f64) {
    let key = |k: &str| format!("{prefix}{k}");
    let acked = num(report, &key("acked"));
    assert!(acked > 0.0, "nothing acked: {report}");
    assert_eq!(num(report, &key("sent")), acked, "{report}");
    assert_eq!(
        num(report, &key("delivered")),
        acked * members_per_room,
        "{report}"
    );
    for zero in ["lost", "duplicates", "gaps", "error_events", "closed"] {
        assert_eq!(num(report, &key(zero)), 0.0, "{zero}: {report}");
    }
}

fn assert_phase_sane(report: &Value, phase: &str) {
    assert!(num(report, &format!("{phase}_delivered_per_sec")) > 0.0);
    assert!(num(report, &format!("{phase}_latency_count")) > 0.0);
    let p50 = num(report, &format!("{phase}_latency_p50_ms"));
    let p99 = num(report, &format!("{phase}_latency_p99_ms"));
    let max = num(report, &format!("{phase}_latency_max_ms"));
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{report}");
}

#[test]
fn fanout_smoke() {
    let report = smoke("fanout", &[]);
    let members = num(&report, "members_per_room");
    assert_exactly_once(&report, "", members);
    assert_phase_sane(&report, "full");
    assert_phase_sane(&report, "half");
    assert!(num(&report, "server_rss_mib") > 0.0);
    assert!(num(&report, "full_server_cores") > 0.0);
}

#[test]
fn rooms_smoke() {
    let report = smoke("rooms", &[]);
    assert!(num(&report, "rooms") > 1.0);
    assert_exactly_once(&report, "", num(&report, "members_per_room"));
    assert_phase_sane(&report, "full");
}

#[test]
fn ingest_smoke() {
    let report = smoke("ingest", &[]);
    assert_exactly_once(&report, "", num(&report, "members_per_room"));
    assert!(num(&report, "full_acked_per_sec") > 0.0);
    assert!(num(&report, "full_ack_latency_count") > 0.0);
}

#[test]
fn ingest_with_changes_smoke() {
    let report = smoke("ingest", &["--changes", "0.2"]);
    // Edits and reactions were acked besides the sends, and every message
    // still arrived once.
    let sent = num(&report, "sent");
    assert!(sent > 0.0 && num(&report, "acked") > sent, "{report}");
    assert_eq!(
        num(&report, "delivered"),
        sent * num(&report, "members_per_room"),
        "{report}"
    );
    for zero in ["lost", "duplicates", "gaps", "error_events", "closed"] {
        assert_eq!(num(&report, zero), 0.0, "{zero}: {report}");
    }
}

#[test]
fn search_smoke() {
    let report = smoke("search", &[]);
    assert_eq!(num(&report, "searches"), 100.0, "{report}");
    // The seeded words are found: most searches fill their page.
    assert!(num(&report, "results_per_search") > 10.0, "{report}");
    let p99 = num(&report, "search_latency_p99_ms");
    assert!(p99 > 0.0 && p99 <= num(&report, "search_latency_max_ms"));
}

#[test]
fn connections_smoke() {
    let report = smoke("connections", &[]);
    let requested = num(&report, "requested");
    assert!(requested > 0.0);
    assert_eq!(num(&report, "connected"), requested, "{report}");
    assert_eq!(num(&report, "alive_at_end"), requested, "{report}");
    assert_eq!(num(&report, "failed"), 0.0);
    assert!(num(&report, "server_rss_after_mib") > 0.0);
}

#[test]
fn history_smoke() {
    let report = smoke("history", &[]);
    assert!(num(&report, "pages") > 0.0);
    assert_eq!(num(&report, "bad_pages"), 0.0, "{report}");
    let p99 = num(&report, "page_latency_p99_ms");
    assert!(p99 > 0.0 && p99 <= num(&report, "page_latency_max_ms"));
}

#[test]
fn login_smoke() {
    let report = smoke("login", &[]);
    assert!(num(&report, "logins") > 0.0, "{report}");
    assert_eq!(num(&report, "login_failures"), 0.0, "{report}");
    let acked = num(&report, "chat_acked");
    assert!(acked > 0.0);
    assert_eq!(num(&report, "chat_delivered"), acked * 10.0, "{report}");
    for zero in ["lost", "duplicates", "gaps", "error_events", "closed"] {
        assert_eq!(num(&report, zero), 0.0, "{zero}: {report}");
    }
    assert!(num(&report, "quiet_latency_count") > 0.0);
    assert!(num(&report, "flood_latency_count") > 0.0);
}

#[test]
fn cluster_smoke() {
    // Needs redis-server on the PATH, as the cluster tests do (.ci/run
    // installs it); the scenario starts its own on a free port.
    let report = smoke("cluster", &[]);
    let members = num(&report, "members_per_room");
    for topology in ["one_node_", "two_nodes_"] {
        assert_exactly_once(&report, topology, members);
        assert_phase_sane(&report, &format!("{topology}full"));
    }
}

#[test]
fn web_smoke() {
    let report = smoke("web", &[]);
    // Every load reached a message on screen, and scrolling up reached the
    // room's first message with the page's window bounded.
    assert_eq!(num(&report, "load_to_first_message_count"), 2.0);
    assert!(
        num(&report, "submit_to_welcome_p50_ms") <= num(&report, "submit_to_first_message_p50_ms")
    );
    assert_eq!(num(&report, "messages_scrolled_through"), 1000.0);
    let kept = num(&report, "messages_kept_in_page");
    assert!((50.0..1000.0).contains(&kept), "a bounded window: {report}");
    assert!(num(&report, "cold_load_bytes") > 0.0);
}
