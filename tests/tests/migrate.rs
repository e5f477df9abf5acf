//! `chat-server migrate-db`: a single-box SQLite install moves to PostgreSQL
//! and back with one command each, keeping users (and their password
//! hashes), rooms, seqs and timestamps, so a client resumes with `since` as
//! if nothing happened. A non-empty target is refused.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use chat_e2e::{seqs, Backend, Client, Options, Scratch, TestServer, PASSWORD};
use serde_json::{json, Value};

const MESSAGES: u64 = 10_000;
/// Sends in flight at once: below the server's pipelining limit and well
/// below the outbox, so the client never falls behind its own echoes.
const CHUNK: u64 = 200;

/// Runs `chat-server migrate-db --from FROM --to TO`, bounded in time.
fn migrate(from: &str, to: &str) -> Output {
    let mut child = Command::new(chat_e2e::server_binary())
        .args(["migrate-db", "--from", from, "--to", to])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chat-server migrate-db");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("wait for migrate-db").is_some() {
            return child.wait_with_output().expect("migrate-db output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("migrate-db did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Sends `count` messages to `room`, pipelined in chunks; returns the acks'
/// `(seq, ts)` in order.
async fn send_many(client: &mut Client, room: &str, count: u64) -> Vec<(u64, i64)> {
    let mut acks = Vec::new();
    let mut sent = 0;
    while sent < count {
        let chunk = CHUNK.min(count - sent);
        for i in 0..chunk {
            let n = sent + i;
            client
                .send(json!({"type":"send","room":room,"text":format!("message {n}"),"id":format!("m{n}")}))
                .await;
        }
        let mut answered = 0;
        while answered < chunk {
            let event = client.recv().await;
            match event["type"].as_str() {
                Some("ack") => {
                    acks.push((
                        event["seq"].as_u64().expect("ack seq"),
                        event["ts"].as_i64().expect("ack ts"),
                    ));
                    answered += 1;
                }
                Some("message") | Some("presence") => {}
                _ => panic!("unexpected answer to a send: {event}"),
            }
        }
        sent += chunk;
    }
    acks
}

/// Joins `room` with `since` and reads the whole backlog.
async fn backlog(client: &mut Client, room: &str, since: u64) -> (Value, Vec<Value>) {
    client.join(room, Some(since)).await
}

#[tokio::test]
async fn sqlite_to_postgres_to_sqlite_keeps_everything_and_resume_has_no_gap() {
    // A single-box install with history in two rooms.
    let mut original = TestServer::with_users(Backend::Sqlite, Options::unlimited());
    let mut alice = Client::login(&original.url(), "alice", PASSWORD).await;
    alice.join("big", None).await;
    let acks = send_many(&mut alice, "big", MESSAGES).await;
    assert_eq!(
        acks.iter().map(|a| a.0).collect::<Vec<_>>(),
        (1..=MESSAGES).collect::<Vec<_>>()
    );
    // Messages that lived: an edit, a deletion, reactions in an order.
    for change in [
        json!({"type":"edit","room":"big","seq":1,"text":"message 0, edited"}),
        json!({"type":"delete","room":"big","seq":2}),
        json!({"type":"react","room":"big","seq":3,"emoji":"🎉"}),
        json!({"type":"react","room":"big","seq":3,"emoji":"👍"}),
    ] {
        let answer = alice.request(change).await;
        assert_ne!(answer["type"], "error", "{answer}");
    }
    let (joined, lived) = alice.join("big", Some(0)).await;
    assert_eq!(joined["rev"], 4);
    let lived: Vec<Value> = lived.into_iter().take(3).collect();
    assert_eq!(lived[1]["deleted"], true);
    alice.join("small", None).await;
    alice.say("small", "the only one").await;
    // A read marker, which the copies keep with the account's rooms.
    alice
        .send(json!({"type":"read","room":"big","seq":MESSAGES - 100}))
        .await;
    // Requests are answered in order: once the ping is, the marker is stored.
    alice.request(json!({"type":"ping"})).await;
    let mut check = Client::connect(&original.url()).await;
    let welcome = check
        .request(json!({"type":"login","user":"alice","password":PASSWORD}))
        .await;
    assert_eq!(welcome["rooms"][0]["read"], MESSAGES - 100, "{welcome}");
    drop((alice, check));
    let sqlite = original.scratch().db().to_owned();
    assert!(original.terminate().success());

    // To PostgreSQL, then back into a new SQLite file.
    let postgres = Scratch::new(Backend::Postgres);
    let there = migrate(&sqlite, postgres.db());
    assert!(there.status.success(), "{}", text(&there));
    assert!(
        String::from_utf8_lossy(&there.stdout).contains("3 users, 2 rooms and 10001 messages"),
        "{}",
        text(&there)
    );
    // A second copy into the now non-empty target is refused, and changes
    // nothing there.
    let again = migrate(&sqlite, postgres.db());
    assert!(!again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("empty"),
        "{}",
        text(&again)
    );
    let back = Scratch::new(Backend::Sqlite);
    let home = migrate(postgres.db(), back.db());
    assert!(home.status.success(), "{}", text(&home));

    // Each copy serves the same history: the PostgreSQL one, then the
    // SQLite one that went there and back.
    for scratch in [postgres, back] {
        let server = TestServer::start_with(scratch, Options::unlimited());
        // Password hashes were copied: the old password still works. The
        // account's rooms and read markers came along.
        let mut alice = Client::connect(&server.url()).await;
        let welcome = alice
            .request(json!({"type":"login","user":"alice","password":PASSWORD}))
            .await;
        assert_eq!(
            welcome["rooms"],
            json!([
                {"name":"big","last_seq":MESSAGES,"read":MESSAGES - 100,"private":false},
                {"name":"small","last_seq":1,"read":0,"private":false},
            ])
        );
        // A client that had everything up to 9990 resumes: exactly the rest.
        let (joined, missed) = backlog(&mut alice, "big", MESSAGES - 10).await;
        assert_eq!(joined["last_seq"], MESSAGES, "{joined}");
        assert_eq!(seqs(&missed), (MESSAGES - 9..=MESSAGES).collect::<Vec<_>>());
        // Every message, from the start, with its original seq and ts.
        let (joined, all) = backlog(&mut alice, "big", 0).await;
        // Edits, deletions and reactions (in their order) came along, and
        // so did the room's change counter.
        assert_eq!(joined["rev"], 4, "{joined}");
        assert_eq!(all[..3], lived[..]);
        let found = alice
            .request(json!({"type":"search","query":"edited"}))
            .await;
        assert_eq!(found["messages"][0]["seq"], 1, "{found}");
        let kept: Vec<(u64, i64)> = all
            .iter()
            .map(|m| (m["seq"].as_u64().unwrap(), m["ts"].as_i64().unwrap()))
            .collect();
        assert_eq!(kept, acks, "seqs and timestamps survive the copies");
        assert!(all.iter().all(|m| m["user"] == "alice"));
        assert_eq!(all[41]["text"], "message 41");
        // The numbering goes on where it stopped.
        let ack = alice.say("big", "after the move").await;
        assert_eq!(ack["seq"], MESSAGES + 1);
        let (_, small) = backlog(&mut alice, "small", 0).await;
        assert_eq!(small.len(), 1);
        assert_eq!(small[0]["text"], "the only one");
        // Admins stay admins.
        let mut root = Client::login(&server.url(), "root", PASSWORD).await;
        let deleted = root
            .request(json!({"type":"delete_room","room":"small"}))
            .await;
        assert_eq!(deleted["type"], "room_deleted", "{deleted}");
    }
}

#[tokio::test]
async fn migrate_db_refuses_bad_arguments_in_one_line() {
    let scratch = Scratch::new(Backend::Sqlite);
    let same = migrate(scratch.db(), scratch.db());
    assert!(!same.status.success(), "{}", text(&same));
    let unreachable = migrate(scratch.db(), "postgres://nobody@127.0.0.1:1/none");
    assert!(!unreachable.status.success(), "{}", text(&unreachable));
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{}", text(&unreachable));
    let scheme = migrate(scratch.db(), "mysql://u@h/db");
    assert!(!scheme.status.success(), "{}", text(&scheme));
    assert!(
        String::from_utf8_lossy(&scheme.stderr).contains("mysql"),
        "{}",
        text(&scheme)
    );
}

/// The state of messages that live (part 2) survives both copies: edits,
/// deletions, reactions and replies; the copies index the text for search
/// and take further changes.
#[tokio::test]
async fn edits_deletions_reactions_and_replies_survive_copies_both_ways() {
    let mut original = TestServer::with_users(Backend::Sqlite, Options::unlimited());
    let mut alice = Client::login(&original.url(), "alice", PASSWORD).await;
    let mut bob = Client::login(&original.url(), "bob", PASSWORD).await;
    alice.join("talk", None).await;
    bob.join("talk", None).await;
    for text in ["one", "two, a secret", "three"] {
        alice.say("talk", text).await;
    }
    let reply = alice
        .request(json!({"type":"send","room":"talk","text":"about one","reply_to":1}))
        .await;
    assert_eq!(reply["seq"], 4, "{reply}");
    for (who, request) in [
        (
            "alice",
            json!({"type":"edit","room":"talk","seq":3,"text":"three, edited"}),
        ),
        (
            "alice",
            json!({"type":"react","room":"talk","seq":1,"emoji":"👍"}),
        ),
        (
            "bob",
            json!({"type":"react","room":"talk","seq":1,"emoji":"🎉"}),
        ),
        (
            "alice",
            json!({"type":"react","room":"talk","seq":1,"emoji":"🎉"}),
        ),
        ("alice", json!({"type":"delete","room":"talk","seq":2})),
    ] {
        let client = if who == "alice" { &mut alice } else { &mut bob };
        let answer = client.request(request.clone()).await;
        assert_ne!(answer["type"], "error", "{request} got {answer}");
    }
    drop((alice, bob));
    let sqlite = original.scratch().db().to_owned();
    assert!(original.terminate().success());

    let postgres = Scratch::new(Backend::Postgres);
    let there = migrate(&sqlite, postgres.db());
    assert!(there.status.success(), "{}", text(&there));
    let back = Scratch::new(Backend::Sqlite);
    let home = migrate(postgres.db(), back.db());
    assert!(home.status.success(), "{}", text(&home));

    for scratch in [postgres, back] {
        let backend = scratch.backend();
        let server = TestServer::start_with(scratch, Options::unlimited());
        let mut alice = Client::login(&server.url(), "alice", PASSWORD).await;
        let (_, all) = backlog(&mut alice, "talk", 0).await;
        assert_eq!(seqs(&all), [1, 2, 3, 4], "{backend:?}");
        assert_eq!(all[0]["reactions"]["👍"], json!(["alice"]), "{backend:?}");
        assert_eq!(
            all[0]["reactions"]["🎉"],
            json!(["bob", "alice"]),
            "{backend:?}"
        );
        assert_eq!(all[1]["deleted"], true, "{backend:?}");
        assert_eq!(all[1]["text"], "", "{backend:?}");
        assert_eq!(all[2]["text"], "three, edited", "{backend:?}");
        assert!(all[2]["edited_ts"].is_i64(), "{backend:?}: {}", all[2]);
        assert_eq!(all[3]["reply_to"], 1, "{backend:?}");
        // Searchable: the edited text, never the deleted one.
        let found = alice.request(json!({"type":"search","query":"edit"})).await;
        assert_eq!(found["type"], "search_results", "{backend:?}: {found}");
        assert_eq!(found["messages"][0]["seq"], 3, "{backend:?}: {found}");
        let none = alice
            .request(json!({"type":"search","query":"secret"}))
            .await;
        assert_eq!(none["messages"], json!([]), "{backend:?}: {none}");
        // And copied messages take changes like any other.
        let edited = alice
            .request(json!({"type":"edit","room":"talk","seq":1,"text":"one, edited after"}))
            .await;
        assert_eq!(edited["type"], "edited", "{backend:?}: {edited}");
    }
}
