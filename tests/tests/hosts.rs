//! Nodes on different hosts: each node runs in a network namespace of its
//! own (a test host), and shares nothing with the other but the PostgreSQL
//! and Redis URLs, both served from the test's namespace over the hosts'
//! links. A client on each node sees every message once and in order, and
//! presence crosses between the hosts.

use chat_e2e::{
    seqs, Backend, Client, Options, Scratch, TestHosts, TestPostgres, TestRedis, TestServer,
    PASSWORD,
};
use serde_json::json;

const EACH: u64 = 100;

#[tokio::test]
async fn nodes_on_two_hosts_share_rooms_through_postgres_and_redis() {
    let hosts = TestHosts::new(2);
    let postgres = TestPostgres::start_reachable(&hosts.gateways(), Some(&hosts.network));
    let redis = TestRedis::start_reachable(&hosts.gateways());
    let database = postgres.create_database();
    let nodes: Vec<TestServer> = hosts
        .hosts
        .iter()
        .map(|host| {
            // Each host reaches the shared parts at its own gateway.
            let scratch =
                Scratch::with_db(Backend::Postgres, postgres.url_at(host.gateway, &database));
            TestServer::start_with(
                scratch,
                Options {
                    redis: Some(redis.url_at(host.gateway)),
                    host: Some((host.netns.clone(), host.addr)),
                    ..Options::unlimited()
                },
            )
        })
        .collect();
    // Accounts made on one host are there for the other.
    nodes[0].add_user("alice", PASSWORD, false);
    nodes[1].add_user("bob", PASSWORD, false);

    let mut alice = Client::login(&nodes[0].url(), "alice", PASSWORD).await;
    let mut bob = Client::login(&nodes[1].url(), "bob", PASSWORD).await;
    alice.join("lan", None).await;
    let (joined, _) = bob.join("lan", None).await;
    assert_eq!(joined["members"], json!(["alice", "bob"]), "{joined}");
    // Presence crosses from bob's host to alice's.
    let arrived = alice.recv_type("presence").await;
    assert_eq!(
        arrived,
        json!({"type":"presence","room":"lan","user":"bob","state":"joined"})
    );

    // Both send at once, pipelined; seq stays contiguous across the hosts.
    for i in 0..EACH {
        alice
            .send(json!({"type":"send","room":"lan","text":format!("a{i}")}))
            .await;
        bob.send(json!({"type":"send","room":"lan","text":format!("b{i}")}))
            .await;
    }
    let total = 2 * EACH;
    let seen_by_alice = alice.messages_until("lan", total).await;
    let seen_by_bob = bob.messages_until("lan", total).await;
    let every: Vec<u64> = (1..=total).collect();
    assert_eq!(seqs(&seen_by_alice), every, "alice: once each, in order");
    assert_eq!(seqs(&seen_by_bob), every, "bob: once each, in order");
    // Same messages on both hosts, each sender's in the order sent.
    assert_eq!(seen_by_alice, seen_by_bob);
    for who in ["a", "b"] {
        let texts: Vec<&str> = seen_by_alice
            .iter()
            .filter(|m| m["text"].as_str().unwrap().starts_with(who))
            .map(|m| m["text"].as_str().unwrap())
            .collect();
        let sent: Vec<String> = (0..EACH).map(|i| format!("{who}{i}")).collect();
        assert_eq!(texts, sent);
    }

    // Leaving on one host is announced on the other.
    let left = bob.request(json!({"type":"leave","room":"lan"})).await;
    assert_eq!(left["type"], "left");
    let gone = alice.recv_type("presence").await;
    assert_eq!(
        gone,
        json!({"type":"presence","room":"lan","user":"bob","state":"left"})
    );
}
