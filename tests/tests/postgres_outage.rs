//! A node that loses PostgreSQL keeps its connections, answers sends with
//! `internal` (neither stored nor acknowledged), and recovers by itself when
//! PostgreSQL returns, logging the outage and the recovery once each.

use std::time::{Duration, Instant};

use chat_e2e::{seqs, Client, Options, Scratch, TestPostgres, TestServer, PASSWORD, TIMEOUT};
use serde_json::json;

#[tokio::test]
async fn losing_postgres_refuses_sends_keeps_connections_and_recovers() {
    let mut postgres = TestPostgres::start();
    let server = TestServer::start_with(Scratch::on(&postgres), Options::unlimited());
    server.add_user("alice", PASSWORD, false);
    server.add_user("bob", PASSWORD, false);
    let mut alice = Client::login(&server.url(), "alice", PASSWORD).await;
    let mut bob = Client::login(&server.url(), "bob", PASSWORD).await;
    alice.join("ops", None).await;
    bob.join("ops", None).await;
    assert_eq!(alice.say("ops", "before").await["seq"], 1);

    postgres.stop();
    // Several sends while it is down: each is refused, none is lost
    // silently, and the connection stays open.
    for n in 0..3 {
        let answer = alice
            .request(json!({"type":"send","room":"ops","text":format!("during {n}")}))
            .await;
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["code"], "internal", "{answer}");
    }
    let pong = alice.request(json!({"type":"ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");

    postgres.restart();
    // The node reconnects on its own: a send goes through again, bounded.
    let deadline = Instant::now() + TIMEOUT;
    let ack = loop {
        let answer = alice
            .request(json!({"type":"send","room":"ops","text":"after"}))
            .await;
        if answer["type"] == "ack" {
            break answer;
        }
        assert_eq!(answer["code"], "internal", "{answer}");
        assert!(
            Instant::now() < deadline,
            "no recovery after PostgreSQL came back; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Refused sends took no seq: the numbering has no hole. Bob, idle
    // through the outage, is still connected and gets both, once, in order.
    assert_eq!(ack["seq"], 2, "{ack}");
    let seen = bob.messages_until("ops", 2).await;
    assert_eq!(seqs(&seen), vec![1, 2]);
    assert_eq!(seen[1]["text"], "after");

    server.wait_for_log("PostgreSQL is back", 1).await;
    let log = server.log();
    assert_eq!(log.matches("lost PostgreSQL").count(), 1, "log:\n{log}");
    assert_eq!(log.matches("PostgreSQL is back").count(), 1, "log:\n{log}");
}
