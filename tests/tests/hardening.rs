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
    // The server logs the failure before answering it; the harness reads
    // its log on a thread of its own, so wait for the line.
    server.wait_for_log("login failed", 1).await;
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
    server.wait_for_log("made it private", 1).await;
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

/// Another "machine": the per-address limits apply to it, not to 127.0.0.1.
const ATTACKER: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 2);

#[tokio::test]
async fn logins_of_closed_connections_are_dropped_and_one_address_cannot_lock_out_another() {
    let server = TestServer::with_users(Backend::Sqlite, Options::default());
    // A burst of connections that each pipeline three wrong logins and hang
    // up at once.
    for _ in 0..40 {
        let mut attacker = Client::try_connect_from(&server.url(), ATTACKER)
            .await
            .expect("connect");
        for _ in 0..3 {
            attacker
                .send(json!({"type":"login","user":"alice","password":"wrong guess"}))
                .await;
        }
        drop(attacker);
    }
    // A real user from another address gets in.
    let mut alice = Client::login(&server.url(), "alice", PASSWORD).await;
    assert_eq!(alice.request(json!({"type":"ping"})).await["type"], "pong");
    // Of the 120 wrong passwords, only a bounded few were ever checked:
    // logins of closed connections are dropped, and the address ran out of
    // failures (10 a minute, plus at most 8 already under way).
    let log = server.log();
    let checked = log
        .lines()
        .filter(|l| l.contains("login failed") && l.contains("127.0.0.2"))
        .count();
    assert!(checked <= 18, "{checked} wrong passwords hashed:\n{log}");
}

#[tokio::test]
async fn an_address_out_of_failures_gets_busy_and_keeps_its_connection() {
    let server = TestServer::with_users(Backend::Sqlite, Options::default());
    let mut answers = Vec::new();
    // Two wrong logins per connection (three would close it).
    while answers.len() < 12 {
        let mut attacker = Client::try_connect_from(&server.url(), ATTACKER)
            .await
            .expect("connect");
        for _ in 0..2 {
            let answer = attacker
                .request(json!({"type":"login","user":"bob","password":"wrong guess"}))
                .await;
            answers.push(answer["code"].as_str().unwrap_or_default().to_owned());
        }
        if answers.last().map(String::as_str) == Some("busy") {
            // Busy leaves the connection open; even the right password
            // waits for the budget to refill.
            let answer = attacker
                .request(json!({"type":"login","user":"bob","password":PASSWORD}))
                .await;
            assert_eq!(answer["code"], "busy", "{answer}");
        }
    }
    assert_eq!(&answers[..10], vec!["auth_failed"; 10].as_slice());
    assert_eq!(&answers[10..], ["busy", "busy"]);
    // Bob, from his own address, logs in at once.
    Client::login(&server.url(), "bob", PASSWORD).await;
}

#[tokio::test]
async fn connections_are_limited_per_address() {
    let server = TestServer::with_users(
        Backend::Sqlite,
        Options {
            args: vec!["--max-connections-per-ip".into(), "3".into()],
            ..Options::default()
        },
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            Client::try_connect_from(&server.url(), ATTACKER)
                .await
                .expect("under the limit"),
        );
    }
    match Client::try_connect_from(&server.url(), ATTACKER).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        Err(other) => panic!("expected HTTP 503, got {other}"),
        Ok(_) => panic!("a fourth connection from one address was let in"),
    }
    // Other addresses are not affected.
    Client::login(&server.url(), "alice", PASSWORD).await;
    // A closed connection frees its slot.
    drop(held.pop());
    let deadline = std::time::Instant::now() + chat_e2e::TIMEOUT;
    while Client::try_connect_from(&server.url(), ATTACKER)
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn registration_checks_the_name_first_and_counts_failures() {
    let server = TestServer::with_users(
        Backend::Sqlite,
        Options {
            open_registration: true,
            ..Options::default()
        },
    );
    let mut mallory = Client::connect(&server.url()).await;
    for _ in 0..2 {
        let answer = mallory
            .request(json!({"type":"register","user":"alice","password":"long enough"}))
            .await;
        assert_eq!(answer["code"], "user_exists", "{answer}");
    }
    mallory
        .send(json!({"type":"register","user":"bob","password":"long enough"}))
        .await;
    assert_eq!(mallory.recv().await["code"], "user_exists");
    assert_eq!(mallory.closed().await, chat_e2e::Closed::Code(1008));
}

#[tokio::test]
async fn connections_are_capped_to_fit_the_open_files_limit() {
    let server = TestServer::with_users(
        Backend::Sqlite,
        Options {
            max_open_files: Some(100),
            ..Options::unlimited()
        },
    );
    // 100 descriptors, 64 kept for the server's own files: 36 connections.
    server
        .wait_for_log("--max-connections lowered from 20000 to 36", 1)
        .await;
    let mut alice = Client::login(&server.url(), "alice", PASSWORD).await;
    alice.join("full", None).await;
    let mut held = Vec::new();
    for _ in 1..36 {
        held.push(Client::connect(&server.url()).await);
    }
    match Client::try_connect(&server.url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        Err(other) => panic!("expected HTTP 503, got {other}"),
        Ok(_) => panic!("a connection over the limit was let in"),
    }
    // The store still has the descriptors it needs.
    for i in 0..20 {
        alice.say("full", &format!("still here {i}")).await;
    }
    let page = alice
        .request(json!({"type":"history","room":"full","limit":5}))
        .await;
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(5), "{page}");
}

#[tokio::test]
async fn a_client_that_asks_for_history_and_never_reads_is_closed_with_1013() {
    let server = TestServer::with_users(Backend::Sqlite, Options::unlimited());
    let mut alice = Client::login(&server.url(), "alice", PASSWORD).await;
    alice.join("big", None).await;
    let text = "x".repeat(4000);
    for i in 0..120 {
        alice
            .send(json!({"type":"send","room":"big","text":text,"id":format!("b{i}")}))
            .await;
    }
    let mut acked = 0;
    while acked < 120 {
        if alice.recv().await["type"] == "ack" {
            acked += 1;
        }
    }
    // Mallory asks for the whole history (about 480 KB a page) and reads
    // nothing: once the socket buffers are full, the answer cannot be
    // written and the server gives up on her instead of holding it.
    let mut mallory = Client::login(&server.url(), "bob", PASSWORD).await;
    for _ in 0..60 {
        mallory
            .send(json!({"type":"history","room":"big","limit":200}))
            .await;
    }
    server.wait_for_log("too far behind", 1).await;
    assert_eq!(mallory.closed().await, chat_e2e::Closed::Code(1013));
    // Everyone else is fine.
    assert_eq!(alice.request(json!({"type":"ping"})).await["type"], "pong");
}
