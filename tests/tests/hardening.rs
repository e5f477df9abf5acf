//! Attacks tried against the running server: what a hostile client sends
//! must not reach the operator's terminal raw.

use chat_e2e::{Backend, Client, Options, TestServer};
use serde_json::json;

#[tokio::test]
async fn peer_text_in_logs_is_escaped_and_truncated() {
    let server = TestServer::with_users(Backend::Sqlite, Options::default());
    let mut mallory = Client::connect(&server.url()).await;
    // A forged log line, a clipboard write through OSC 52, and bulk.
    let name = format!(
        "x\n2026-01-01T00:00:00Z  INFO chat_server: FORGED\u{1b}]52;c;aGk=\u{7}{}",
        "A".repeat(5000)
    );
    let answer = mallory
        .request(json!({"type":"login","user":name,"password":"whatever1"}))
        .await;
    assert_eq!(answer["code"], "auth_failed", "{answer}");
    // The server logs the failure before answering it.
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("login failed"))
        .unwrap_or_else(|| panic!("no login failure logged:\n{log}"));
    assert!(
        !log.lines()
            .any(|l| l.contains("FORGED") && !l.contains("login failed")),
        "a forged line:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}') && !log.contains('\u{7}'),
        "raw control characters:\n{log}"
    );
    assert!(
        line.contains("\\u{1b}]52"),
        "escaped, still readable: {line}"
    );
    assert!(line.len() < 400, "truncated: {} bytes", line.len());
}
