//! Attacks tried against the running server and its files: what a hostile
//! client sends must not reach the operator's terminal raw, and the
//! database is private and complete on its own.

use chat_e2e::{Backend, Client, Options, Scratch, TestServer, PASSWORD};
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

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn the_database_is_private_and_complete_on_its_own_after_a_clean_stop() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().expect("temp dir");
    let folder = home.path().join("data").join("chat-server");
    let db = folder.join("chat.db");
    let scratch = Scratch::with_db(Backend::Sqlite, db.to_string_lossy().into_owned());
    let mut server = TestServer::start_with(scratch, Options::unlimited());
    assert_eq!(mode(&folder), 0o700, "the data folder is the owner's");
    assert_eq!(mode(&home.path().join("data")), 0o700);
    assert_eq!(mode(&db), 0o600, "the database is the owner's");
    server.add_user("alice", PASSWORD, false);
    let mut alice = Client::login(&server.url(), "alice", PASSWORD).await;
    alice.join("kept", None).await;
    for i in 1..=11 {
        alice.say("kept", &format!("k{i}")).await;
    }
    drop(alice);
    assert!(server.terminate().success());
    // The WAL was folded into the file at shutdown.
    let wal = folder.join("chat.db-wal");
    assert!(
        std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
        "{} still holds {} bytes",
        wal.display(),
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0)
    );

    // A copy of the file alone, made readable by everyone on the way: it is
    // complete, and made private again (with a warning) when opened.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let copy = elsewhere.path().join("copy.db");
    std::fs::copy(&db, &copy).expect("copy the database");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let scratch = Scratch::with_db(Backend::Sqlite, copy.to_string_lossy().into_owned());
    let server = TestServer::start_with(scratch, Options::unlimited());
    assert_eq!(mode(&copy), 0o600);
    assert!(
        server.log().contains("made it private"),
        "a warning: {}",
        server.log()
    );
    let mut alice = Client::login(&server.url(), "alice", PASSWORD).await;
    let (joined, history) = alice.join("kept", Some(0)).await;
    assert_eq!(joined["last_seq"], 11);
    assert_eq!(history.len(), 11);
}

#[tokio::test]
async fn typing_is_relayed_at_most_once_per_two_seconds_per_user() {
    let server = TestServer::with_users(Backend::Sqlite, Options::unlimited());
    let mut alice = Client::login(&server.url(), "alice", PASSWORD).await;
    let mut bob = Client::login(&server.url(), "bob", PASSWORD).await;
    alice.join("quiet", None).await;
    bob.join("quiet", None).await;
    for _ in 0..50 {
        alice.send(json!({"type":"typing","room":"quiet"})).await;
    }
    // A marker behind the flood: everything relayed of it arrived before.
    alice.say("quiet", "marker").await;
    let mut typing = 0;
    loop {
        let event = bob.recv().await;
        match event["type"].as_str() {
            Some("typing") => typing += 1,
            Some("message") => break,
            _ => {}
        }
    }
    assert_eq!(typing, 1, "one relayed, the rest dropped silently");
    // Typing in a room one is not in is refused.
    let answer = alice
        .request(json!({"type":"typing","room":"elsewhere"}))
        .await;
    assert_eq!(answer["code"], "not_joined");
}
