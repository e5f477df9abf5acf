//! End-to-end tests of cluster mode: several real `chat-server` processes
//! sharing one database (a SQLite file, or a PostgreSQL database) and a real
//! `redis-server` that the test starts on a free port.

use std::time::Duration;

use chat_e2e::*;
use serde_json::{json, Value};

// Each runs as `sqlite::NAME` and `postgres::NAME`.
backend_tests! {
    every_client_on_every_node_sees_every_message_once_in_order,
    members_presence_typing_and_deletion_cross_nodes,
    redis_outage_loses_nothing_and_duplicates_nothing,
    a_killed_node_has_its_users_leave_within_30_seconds,
    bad_or_unreachable_redis_stops_start_up_with_one_line,
    a_room_emptied_on_a_node_then_joined_again_resumes_from_the_store,
    a_deletion_during_a_redis_outage_still_reaches_other_nodes,
    forged_envelopes_from_redis_are_refused_and_skip_nothing,
    read_markers_and_forgotten_rooms_reach_the_users_devices_on_other_nodes,
    direct_and_private_conversations_cross_nodes,
    messages_and_their_changes_cross_nodes_in_one_order,
}

struct Cluster {
    redis: TestRedis,
    nodes: Vec<TestServer>,
}

/// `size` nodes on one database of `backend`, joined by one redis-server.
fn cluster(backend: Backend, size: usize) -> Cluster {
    let redis = TestRedis::start();
    let scratch = Scratch::new(backend);
    let options = Options {
        redis: Some(redis.url()),
        ..Options::unlimited()
    };
    let nodes: Vec<TestServer> = (0..size)
        .map(|_| TestServer::start_with(scratch.clone(), options.clone()))
        .collect();
    for user in ["alice", "bob", "carol"] {
        nodes[0].add_user(user, PASSWORD, false);
    }
    nodes[0].add_user("root", PASSWORD, true);
    Cluster { redis, nodes }
}

fn is_presence(user: &'static str, state: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["type"] == "presence" && e["user"] == user && e["state"] == state
}

async fn every_client_on_every_node_sees_every_message_once_in_order(backend: Backend) {
    let cluster = cluster(backend, 3);
    let mut watchers = Vec::new();
    for node in &cluster.nodes {
        let mut watcher = Client::login(&node.url(), "root", PASSWORD).await;
        watcher.join("all", None).await;
        watchers.push(watcher);
    }
    let per_sender = 80;
    let mut senders = Vec::new();
    for (n, node) in cluster.nodes.iter().enumerate() {
        let url = node.url();
        senders.push(tokio::spawn(async move {
            let user = ["alice", "bob", "carol"][n];
            let mut client = Client::login(&url, user, PASSWORD).await;
            client.join("all", None).await;
            // Pipelined: several sends in flight on every node at once.
            for i in 0..per_sender {
                client
                    .send(json!({"type":"send","room":"all","text":format!("{user} {i}"),"id":format!("{i}")}))
                    .await;
            }
            let mut acked = Vec::new();
            while acked.len() < per_sender {
                let event = client.recv().await;
                if event["type"] == "ack" {
                    acked.push(event["seq"].as_u64().unwrap());
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for sender in senders {
        acked.extend(sender.await.unwrap());
    }
    let total = 3 * per_sender as u64;
    acked.sort();
    assert_eq!(
        acked,
        (1..=total).collect::<Vec<_>>(),
        "seq contiguous across nodes"
    );
    for watcher in &mut watchers {
        let seen = seqs(&watcher.messages_until("all", total).await);
        assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    }
}

async fn members_presence_typing_and_deletion_cross_nodes(backend: Backend) {
    let cluster = cluster(backend, 3);
    let (one, two, three) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    let mut alice = Client::login(&one.url(), "alice", PASSWORD).await;
    alice.join("lobby", None).await;
    let mut bob = Client::login(&two.url(), "bob", PASSWORD).await;
    let (joined, _) = bob.join("lobby", None).await;
    assert_eq!(joined["members"], json!(["alice", "bob"]));
    let presence = alice.recv_type("presence").await;
    assert_eq!(
        presence,
        json!({"type":"presence","room":"lobby","user":"bob","state":"joined"})
    );

    // A second connection of bob on another node is not a new arrival.
    let mut bob_again = Client::login(&three.url(), "bob", PASSWORD).await;
    bob_again.join("lobby", None).await;

    let mut root = Client::login(&three.url(), "root", PASSWORD).await;
    let rooms = root.request(json!({"type":"rooms"})).await;
    assert_eq!(
        rooms["rooms"],
        json!([{"name":"lobby","members":2,"last_seq":0}])
    );

    bob.send(json!({"type":"typing","room":"lobby"})).await;
    assert_eq!(
        alice.recv_type("typing").await,
        json!({"type":"typing","room":"lobby","user":"bob"})
    );

    // Bob leaves on one node but stays on another: no departure yet.
    drop(bob);
    let mut carol = Client::login(&one.url(), "carol", PASSWORD).await;
    carol.join("lobby", None).await;
    let presence = alice.recv_type("presence").await;
    assert_eq!(presence["user"], "carol", "bob is still online: {presence}");
    bob_again
        .request(json!({"type":"leave","room":"lobby"}))
        .await;
    let presence = alice.recv_type("presence").await;
    assert_eq!(presence["state"], "left", "{presence}");
    assert_eq!(presence["user"], "bob");

    let deleted = root
        .request(json!({"type":"delete_room","room":"lobby","id":"d"}))
        .await;
    assert_eq!(deleted["type"], "room_deleted");
    assert_eq!(
        alice.recv_type("room_deleted").await,
        json!({"type":"room_deleted","room":"lobby"})
    );
}

async fn redis_outage_loses_nothing_and_duplicates_nothing(backend: Backend) {
    let mut cluster = cluster(backend, 2);
    let mut sender = Client::login(&cluster.nodes[0].url(), "alice", PASSWORD).await;
    sender.join("steady", None).await;
    let mut local = Client::login(&cluster.nodes[0].url(), "carol", PASSWORD).await;
    local.join("steady", None).await;
    let mut remote = Client::login(&cluster.nodes[1].url(), "bob", PASSWORD).await;
    remote.join("steady", None).await;

    for i in 1..=50 {
        sender.say("steady", &format!("before {i}")).await;
    }
    cluster.redis.stop();
    // Sends still get stored, acked and delivered on the sender's node.
    for i in 1..=50 {
        sender.say("steady", &format!("during {i}")).await;
    }
    assert_eq!(
        seqs(&local.messages_until("steady", 100).await),
        (1..=100).collect::<Vec<_>>()
    );
    cluster.redis.restart();
    for i in 1..=50 {
        sender.say("steady", &format!("after {i}")).await;
    }
    let seen = seqs(&remote.messages_until("steady", 150).await);
    assert_eq!(seen, (1..=150).collect::<Vec<_>>());
    assert_eq!(
        seqs(&local.messages_until("steady", 150).await),
        (101..=150).collect::<Vec<_>>()
    );
}

async fn a_killed_node_has_its_users_leave_within_30_seconds(backend: Backend) {
    let mut cluster = cluster(backend, 2);
    let mut alice = Client::login(&cluster.nodes[0].url(), "alice", PASSWORD).await;
    alice.join("watch", None).await;
    let mut bob = Client::login(&cluster.nodes[1].url(), "bob", PASSWORD).await;
    bob.join("watch", None).await;
    alice
        .recv_matching(Duration::from_secs(10), is_presence("bob", "joined"))
        .await;
    cluster.nodes[1].kill();
    alice
        .recv_matching(Duration::from_secs(30), is_presence("bob", "left"))
        .await;
    let (joined, _) = alice.join("watch", None).await;
    assert_eq!(joined["members"], json!(["alice"]));
}

async fn bad_or_unreachable_redis_stops_start_up_with_one_line(backend: Backend) {
    let scratch = Scratch::new(backend);
    let unreachable = format!("redis://127.0.0.1:{}/", free_port());
    for url in ["not a url", unreachable.as_str()] {
        let out = run_admin(
            scratch.db(),
            &["serve", "--listen", "127.0.0.1:0", "--redis", url],
            false,
            None,
        );
        assert!(!out.status.success(), "{url}");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{}", out.stderr);
        assert!(lines[0].contains(url), "{}", lines[0]);
    }
}

async fn a_room_emptied_on_a_node_then_joined_again_resumes_from_the_store(backend: Backend) {
    let cluster = cluster(backend, 2);
    let (one, two) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut alice = Client::login(&one.url(), "alice", PASSWORD).await;
    alice.join("quiet", None).await;
    let mut bob = Client::login(&two.url(), "bob", PASSWORD).await;
    bob.join("quiet", None).await;
    for i in 1..=5 {
        bob.say("quiet", &format!("b{i}")).await;
    }
    // Node two has nobody in the room now, and hears nothing of it.
    bob.request(json!({"type":"leave","room":"quiet"})).await;
    for i in 1..=100 {
        alice.say("quiet", &format!("a{i}")).await;
    }
    let mut carol = Client::login(&two.url(), "carol", PASSWORD).await;
    let (joined, history) = carol.join("quiet", None).await;
    assert_eq!(joined["last_seq"], 105);
    assert_eq!(seqs(&history), (56..=105).collect::<Vec<_>>());
    alice.say("quiet", "fresh").await;
    let next = carol.recv().await;
    assert_eq!(next["type"], "message", "{next}");
    assert_eq!(next["seq"], 106, "nothing old replayed live");

    // Deleted on one node and created again on the other: a new room.
    let mut root = Client::login(&one.url(), "root", PASSWORD).await;
    root.request(json!({"type":"delete_room","room":"quiet"}))
        .await;
    assert_eq!(carol.recv_type("room_deleted").await["room"], "quiet");
    let (joined, history) = carol.join("quiet", None).await;
    assert_eq!(joined["last_seq"], 0);
    assert!(history.is_empty());
    alice.recv_type("room_deleted").await;
    alice.join("quiet", None).await;
    for i in 1..=3 {
        alice.say("quiet", &format!("new {i}")).await;
    }
    assert_eq!(seqs(&carol.messages_until("quiet", 3).await), vec![1, 2, 3]);
}

async fn a_deletion_during_a_redis_outage_still_reaches_other_nodes(backend: Backend) {
    let mut cluster = cluster(backend, 2);
    let mut carol = Client::login(&cluster.nodes[1].url(), "carol", PASSWORD).await;
    carol.join("gone", None).await;
    let mut root = Client::login(&cluster.nodes[0].url(), "root", PASSWORD).await;
    cluster.redis.stop();
    let answer = root
        .request(json!({"type":"delete_room","room":"gone"}))
        .await;
    assert_eq!(answer["type"], "room_deleted");
    cluster.redis.restart();
    assert_eq!(
        carol.recv_type("room_deleted").await,
        json!({"type":"room_deleted","room":"gone"})
    );
    let answer = carol
        .request(json!({"type":"send","room":"gone","text":"anyone?"}))
        .await;
    assert_eq!(answer["code"], "not_joined");
}

async fn forged_envelopes_from_redis_are_refused_and_skip_nothing(backend: Backend) {
    let cluster = cluster(backend, 1);
    let node = &cluster.nodes[0];
    // Bob only watches; alice talks.
    let mut bob = Client::login(&node.url(), "bob", PASSWORD).await;
    bob.join("lan", None).await;
    let mut alice = Client::login(&node.url(), "alice", PASSWORD).await;
    alice.join("lan", None).await;
    alice.say("lan", "one").await;
    alice.say("lan", "two").await;
    let forge = |message: Value| {
        json!({"kind":"message","origin":"mallory","room_id":1,"message":message}).to_string()
    };
    // Malformed names and text are refused outright.
    let bad_user = forge(json!({"room":"lan","seq":3,"user":"m\u{1b}[2J","text":"x","ts":0}));
    let bad_text =
        forge(json!({"room":"lan","seq":3,"user":"mallory","text":"\u{1b}]52;c;aGk=\u{7}","ts":0}));
    let other_room = forge(json!({"room":"elsewhere","seq":3,"user":"mallory","text":"x","ts":0}));
    for payload in [bad_user, bad_text, other_room] {
        assert_eq!(cluster.redis.publish("chat:room:lan", &payload), 1);
    }
    node.wait_for_log("ignoring an invalid cluster message", 3)
        .await;
    // A well-formed message far ahead, that nobody stored: dropped once the
    // store says so, instead of making the room skip to it.
    let ahead = forge(json!({"room":"lan","seq":1000,"user":"mallory","text":"forged","ts":0}));
    assert_eq!(cluster.redis.publish("chat:room:lan", &ahead), 1);
    node.wait_for_log("discarding a message the store does not have", 1)
        .await;
    assert_eq!(alice.say("lan", "three").await["seq"], 3);
    assert_eq!(alice.say("lan", "four").await["seq"], 4);
    // Bob saw every real message once, in order, and nothing forged.
    let mut seen = Vec::new();
    while seen.last().and_then(|m: &Value| m["seq"].as_u64()) != Some(4) {
        let event = bob.recv().await;
        assert_ne!(event["user"], "mallory", "{event}");
        if event["type"] == "message" {
            seen.push(event);
        }
    }
    assert_eq!(seqs(&seen), vec![1, 2, 3, 4]);
}

async fn read_markers_and_forgotten_rooms_reach_the_users_devices_on_other_nodes(backend: Backend) {
    let cluster = cluster(backend, 2);
    let (one, two) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut laptop = Client::login(&one.url(), "alice", PASSWORD).await;
    let mut phone = Client::login(&two.url(), "alice", PASSWORD).await;
    laptop.join("general", None).await;
    phone.join("general", None).await;
    laptop.say("general", "one").await;
    laptop.say("general", "two").await;

    // Read on one node, told on the other; the marker is the store's.
    laptop
        .send(json!({"type":"read","room":"general","seq":2}))
        .await;
    let read = phone.recv_type("read").await;
    assert_eq!(read, json!({"type":"read","room":"general","seq":2}));
    let mut tablet = Client::connect(&two.url()).await;
    let welcome = tablet
        .request(json!({"type":"login","user":"alice","password":PASSWORD}))
        .await;
    assert_eq!(
        welcome["rooms"],
        json!([{"name":"general","last_seq":2,"read":2,"private":false}])
    );

    // Forgotten on the other node: every device there leaves the room.
    let left = phone
        .request(json!({"type":"leave","room":"general","forget":true,"id":"f"}))
        .await;
    assert_eq!(left, json!({"type":"left","room":"general","re":"f"}));
    let told = laptop.recv_type("left").await;
    assert_eq!(told, json!({"type":"left","room":"general"}));
    let answer = laptop
        .request(json!({"type":"send","room":"general","text":"gone?"}))
        .await;
    assert_eq!(answer["code"], "not_joined", "{answer}");
    let told = tablet.recv_type("left").await;
    assert_eq!(told["room"], "general");

    // What arrives on the users' channel is checked like client input: a
    // forged event with a room name no client could send is dropped, and
    // the well-formed one published after it is the next thing delivered.
    let forged = json!({"kind":"user","origin":"elsewhere","user":"alice",
                        "event":{"kind":"read","room":"\u{1b}[2Jgeneral","seq":1}});
    let fine = json!({"kind":"user","origin":"elsewhere","user":"alice",
                      "event":{"kind":"read","room":"general","seq":1}});
    cluster.redis.publish("chat:users", &forged.to_string());
    cluster.redis.publish("chat:users", &fine.to_string());
    let read = laptop.recv_type("read").await;
    assert_eq!(read, json!({"type":"read","room":"general","seq":1}));
    one.wait_for_log("ignoring an invalid cluster user event", 1)
        .await;
}

async fn direct_and_private_conversations_cross_nodes(backend: Backend) {
    let cluster = cluster(backend, 2);
    let (one, two) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut alice = Client::login(&one.url(), "alice", PASSWORD).await;
    let mut bob = Client::login(&two.url(), "bob", PASSWORD).await;
    let mut carol = Client::login(&two.url(), "carol", PASSWORD).await;

    // A direct conversation opened on one node reaches the other user on
    // the other, and its messages cross in both directions.
    let joined = alice.request(json!({"type":"dm","user":"bob"})).await;
    assert_eq!(joined["room"], "alice+bob", "{joined}");
    alice.recv_type("history").await;
    let told = bob.recv_type("invited").await;
    assert_eq!(
        told,
        json!({"type":"invited","room":"alice+bob","user":"bob","by":"alice"})
    );
    bob.join("alice+bob", None).await;
    let ack = alice.say("alice+bob", "from node one").await;
    let seen = bob
        .messages_until("alice+bob", ack["seq"].as_u64().unwrap())
        .await;
    assert_eq!(seen.last().unwrap()["text"], "from node one");
    let ack = bob.say("alice+bob", "from node two").await;
    let seen = alice
        .messages_until("alice+bob", ack["seq"].as_u64().unwrap())
        .await;
    assert_eq!(seen.last().unwrap()["text"], "from node two");

    // A private room: the invitation crosses nodes, non-members are
    // refused on either node.
    let joined = alice
        .request(json!({"type":"join","room":"ops","private":true}))
        .await;
    assert_eq!(joined["type"], "joined", "{joined}");
    let answer = carol.request(json!({"type":"join","room":"ops"})).await;
    assert_eq!(answer["code"], "forbidden", "{answer}");
    alice
        .request(json!({"type":"invite","room":"ops","user":"carol"}))
        .await;
    let told = carol.recv_type("invited").await;
    assert_eq!(told["room"], "ops");
    let (joined, _) = carol.join("ops", None).await;
    assert_eq!(joined["members"], json!(["alice", "carol"]));
    let answer = bob.request(json!({"type":"history","room":"ops"})).await;
    assert_eq!(answer["code"], "forbidden", "{answer}");
}

async fn messages_and_their_changes_cross_nodes_in_one_order(backend: Backend) {
    let cluster = cluster(backend, 2);
    let (one, two) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut watchers = Vec::new();
    for node in [one, two] {
        let mut watcher = Client::login(&node.url(), "root", PASSWORD).await;
        watcher.join("live", None).await;
        watchers.push(watcher);
    }
    let mut alice = Client::login(&one.url(), "alice", PASSWORD).await;
    alice.join("live", None).await;
    let mut bob = Client::login(&two.url(), "bob", PASSWORD).await;
    bob.join("live", None).await;
    alice.say("live", "first").await;
    // Alice writes on one node while bob reacts to and she edits what is
    // there, from both nodes at once.
    let writer = tokio::spawn(async move {
        for i in 2..=40 {
            alice.say("live", &format!("line {i}")).await;
            if i % 5 == 0 {
                let edited = alice
                    .request(json!({"type":"edit","room":"live","seq":i - 1,"text":format!("line {} fixed", i - 1)}))
                    .await;
                assert_eq!(edited["type"], "edited", "{edited}");
            }
        }
        alice
    });
    // Bob reacts to the first twenty once they are there, while alice
    // goes on writing and editing.
    bob.recv_matching(Duration::from_secs(10), |e| {
        e["type"] == "message" && e["seq"] == 20
    })
    .await;
    let mut reactions = 0;
    for seq in 1..=20u64 {
        let answer = bob
            .request(json!({"type":"react","room":"live","seq":seq,"emoji":"👍"}))
            .await;
        assert_eq!(answer["type"], "reaction", "{answer}");
        reactions += 1;
    }
    let mut alice = writer.await.unwrap();
    let changes = reactions + 8;
    // Every watcher, on either node, sees messages 1..=40 and changes
    // 1..=28 once each, each numbering without a hole, and no change
    // before the message it changes.
    for watcher in &mut watchers {
        let (mut seq, mut rev) = (0, 0);
        while seq < 40 || rev < changes {
            let event = watcher.recv().await;
            match event["type"].as_str().unwrap() {
                "message" => {
                    seq += 1;
                    assert_eq!(event["seq"], seq, "{event}");
                }
                "edited" | "reaction" => {
                    rev += 1;
                    assert_eq!(event["rev"], rev, "{event}");
                    assert!(
                        event["seq"].as_u64().unwrap() <= seq,
                        "{event} before its message"
                    );
                }
                _ => {}
            }
        }
    }
    // A resume on the other node learns the changes made on this one.
    let mut carol = Client::login(&two.url(), "carol", PASSWORD).await;
    let joined = carol
        .request(json!({"type":"join","room":"live","since":40,"since_rev":0}))
        .await;
    assert_eq!(
        (joined["last_seq"].clone(), joined["rev"].clone()),
        (json!(40), json!(changes))
    );
    let snapshot = carol.recv().await;
    assert_eq!(snapshot["type"], "changes", "{snapshot}");
    assert_eq!(snapshot["rev"], changes);
    let changed = snapshot["messages"].as_array().unwrap();
    // Messages 1 to 20 have reactions; 4, 9, …, 39 were edited.
    let changed_seqs: Vec<u64> = changed.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    let mut expected: Vec<u64> = (1..=20).chain([24, 29, 34, 39]).collect();
    expected.sort();
    assert_eq!(changed_seqs, expected);
    assert_eq!(changed[3]["text"], "line 4 fixed");
    assert_eq!(changed[3]["reactions"], json!({"👍":["bob"]}));
    // Search on either node sees the edits.
    let found = carol
        .request(json!({"type":"search","query":"fixed","room":"live"}))
        .await;
    assert_eq!(found["messages"].as_array().unwrap().len(), 8, "{found}");
    let gone = alice
        .request(json!({"type":"delete","room":"live","seq":4}))
        .await;
    assert_eq!(gone["type"], "deleted");
    let seen = carol
        .recv_matching(Duration::from_secs(10), |e| e["type"] == "deleted")
        .await;
    assert_eq!(
        (seen["seq"].clone(), seen["rev"].clone()),
        (json!(4), json!(changes + 1))
    );

    // A forged change from Redis is refused and skips nothing.
    let forged = json!({"kind":"change","origin":"mallory","room_id":1,"seq":40,"rev":changes + 2,
                        "change":{"kind":"reaction","seq":4,"user":"m\u{1b}[2J","emoji":"x","on":true}});
    assert_eq!(
        cluster.redis.publish("chat:room:live", &forged.to_string()),
        2
    );
    two.wait_for_log("ignoring an invalid cluster message", 1)
        .await;
    let answer = bob
        .request(json!({"type":"react","room":"live","seq":5,"emoji":"🎉"}))
        .await;
    assert_eq!(answer["rev"], changes + 2, "{answer}");
    let seen = carol
        .recv_matching(Duration::from_secs(10), |e| e["type"] == "reaction")
        .await;
    assert_eq!(
        (seen["user"].clone(), seen["rev"].clone()),
        (json!("bob"), json!(changes + 2))
    );
}
