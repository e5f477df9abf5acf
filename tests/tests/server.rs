//! End-to-end tests of one `chat-server` process: every request, answer and
//! error code of the protocol, over real WebSockets against the real binary,
//! on each store backend: a real SQLite file and a real PostgreSQL database.

use chat_e2e::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

// Each runs as `sqlite::NAME` and `postgres::NAME`. Only what is about the
// SQLite file itself is a plain test further down.
backend_tests! {
    login_welcome_and_failures,
    registration_open_and_closed,
    rooms_messages_presence_and_typing,
    history_pages_backwards,
    resume_with_since_has_no_gap_and_no_duplicate,
    concurrent_senders_get_contiguous_seqs_seen_once_by_everyone,
    acked_messages_survive_kill_9,
    joining_again_on_one_connection_during_traffic_sends_each_message_once,
    shutdown_answers_every_send_it_stored,
    sigterm_closes_clients_with_1001_and_exits_0,
    bad_input_gets_errors_and_the_connection_stays_usable,
    sends_are_rate_limited,
    admins_delete_rooms,
    a_room_deleted_and_joined_again_at_once_is_a_new_room,
    login_must_come_within_10_seconds,
    only_ws_paths_upgrade_and_connections_are_capped,
    a_member_that_stops_reading_is_closed_with_1013_and_the_room_goes_on,
    admin_commands,
    account_changes_reach_live_sessions,
    rooms_are_paged_and_their_creation_is_limited,
}

async fn login_welcome_and_failures(backend: Backend) {
    let server = TestServer::with_users(backend, Options::default());
    let url = server.url();

    let mut c = Client::connect(&url).await;
    let answer = c.request(json!({"type":"rooms","id":"x"})).await;
    assert_eq!(answer["code"], "auth_required");
    let welcome = c
        .request(json!({"type":"login","user":"alice","password":PASSWORD,"id":"l1"}))
        .await;
    // Part 1's fields exactly, then part 2's (which part-1 clients ignore):
    // a new account has no rooms yet.
    let mut part_2 = welcome.clone();
    let part_2 = part_2.as_object_mut().unwrap();
    let features = part_2.remove("features");
    let rooms = part_2.remove("rooms");
    assert_eq!(
        json!(part_2),
        json!({"type":"welcome","user":"alice","admin":false,"protocol":1,
               "server":format!("chat-server {}", env!("CARGO_PKG_VERSION")),"re":"l1"})
    );
    assert_eq!(
        features,
        Some(json!([
            "read",
            "rooms_paging",
            "private",
            "dm",
            "edit",
            "react",
            "reply",
            "search"
        ]))
    );
    assert_eq!(rooms, Some(json!([])));

    let admin = Client::login(&url, "root", PASSWORD).await;
    drop(admin);

    // Wrong password, unknown user and malformed name: the same answer.
    let mut c = Client::connect(&url).await;
    for (user, password) in [
        ("alice", "wrong password"),
        ("nobody", PASSWORD),
        ("bad name!", PASSWORD),
    ] {
        let answer = c
            .request(json!({"type":"login","user":user,"password":password}))
            .await;
        assert_eq!(answer["type"], "error");
        assert_eq!(answer["code"], "auth_failed", "{user}");
    }
    // The third failure closes the connection.
    assert_eq!(c.closed().await, Closed::Code(1008));
}

async fn registration_open_and_closed(backend: Backend) {
    let closed = TestServer::start(backend);
    let mut c = Client::connect(&closed.url()).await;
    let answer = c
        .request(json!({"type":"register","user":"carol","password":"battery staple"}))
        .await;
    assert_eq!(answer["code"], "registration_closed");

    let open = TestServer::start_with(
        Scratch::new(backend),
        Options {
            open_registration: true,
            ..Options::default()
        },
    );
    let mut c = Client::connect(&open.url()).await;
    let answer = c
        .request(json!({"type":"register","user":"no spaces","password":"battery staple"}))
        .await;
    assert_eq!(answer["code"], "invalid_name");
    let answer = c
        .request(json!({"type":"register","user":"carol","password":"short"}))
        .await;
    assert_eq!(answer["code"], "bad_request");
    let answer = c
        .request(json!({"type":"register","user":"carol","password":"battery staple"}))
        .await;
    assert_eq!(answer["type"], "welcome");
    assert_eq!(answer["user"], "carol");

    let mut d = Client::connect(&open.url()).await;
    let answer = d
        .request(json!({"type":"register","user":"carol","password":"battery staple"}))
        .await;
    assert_eq!(answer["code"], "user_exists");
    // The registered account can log in later.
    Client::login(&open.url(), "carol", "battery staple").await;
}

async fn rooms_messages_presence_and_typing(backend: Backend) {
    let server = TestServer::with_users(backend, Options::default());
    let url = server.url();
    let mut alice = Client::login(&url, "alice", PASSWORD).await;
    let mut bob = Client::login(&url, "bob", PASSWORD).await;

    let (joined, history) = alice.join("general", None).await;
    assert_eq!(joined["last_seq"], 0);
    assert_eq!(joined["members"], json!(["alice"]));
    assert!(joined.get("re").is_some());
    assert!(history.is_empty());

    let (joined, _) = bob.join("general", None).await;
    assert_eq!(joined["members"], json!(["alice", "bob"]));
    let presence = alice.recv_type("presence").await;
    assert_eq!(
        presence,
        json!({"type":"presence","room":"general","user":"bob","state":"joined"})
    );

    // A message reaches every member, the sender included; the sender gets
    // an ack with the same seq.
    alice
        .send(json!({"type":"send","room":"general","text":"hello\r\nworld  \n","id":"c1"}))
        .await;
    let mut ack = None;
    let mut own = None;
    while ack.is_none() || own.is_none() {
        let event = alice.recv().await;
        match event["type"].as_str() {
            Some("ack") => ack = Some(event),
            Some("message") => own = Some(event),
            _ => {}
        }
    }
    let (ack, own) = (ack.unwrap(), own.unwrap());
    assert_eq!(ack["re"], "c1");
    assert_eq!(ack["seq"], 1);
    assert_eq!(own["text"], "hello\nworld");
    assert_eq!(own["ts"], ack["ts"]);
    let seen = bob.recv_type("message").await;
    assert_eq!(seen, own);
    assert!(seen.get("re").is_none());
    assert_eq!(
        seen.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["room", "seq", "text", "ts", "type", "user"]
    );

    // Typing goes to the others only.
    bob.send(json!({"type":"typing","room":"general"})).await;
    assert_eq!(
        alice.recv_type("typing").await,
        json!({"type":"typing","room":"general","user":"bob"})
    );
    // The next thing bob sees is the answer to his ping: no typing echo.
    bob.send(json!({"type":"ping","id":"t"})).await;
    assert_eq!(bob.recv().await, json!({"type":"pong","re":"t"}));

    // rooms lists counts of online users.
    alice.join("empty-room", None).await;
    let rooms = alice.request(json!({"type":"rooms"})).await;
    assert_eq!(
        rooms["rooms"],
        json!([
            {"name":"empty-room","members":1,"last_seq":0},
            {"name":"general","members":2,"last_seq":1,"last_ts":own["ts"]}
        ])
    );

    // Leaving: left for the leaver, presence for the others.
    let left = bob.request(json!({"type":"leave","room":"general"})).await;
    assert_eq!(left["type"], "left");
    assert_eq!(left["room"], "general");
    assert_eq!(
        alice.recv_type("presence").await,
        json!({"type":"presence","room":"general","user":"bob","state":"left"})
    );
    let answer = bob.request(json!({"type":"leave","room":"general"})).await;
    assert_eq!(answer["code"], "not_joined");
    let answer = bob
        .request(json!({"type":"send","room":"general","text":"hi"}))
        .await;
    assert_eq!(answer["code"], "not_joined");
    let answer = bob.request(json!({"type":"typing","room":"general"})).await;
    assert_eq!(answer["code"], "not_joined");

    // Joining twice answers as the first time, without a second presence.
    alice.join("general", None).await;
    let (joined, history) = alice.join("general", None).await;
    assert_eq!(joined["members"], json!(["alice"]));
    assert_eq!(seqs(&history), vec![1]);

    // A disconnect counts as leaving.
    bob.join("general", None).await;
    alice.recv_type("presence").await;
    drop(bob);
    let presence = alice.recv_type("presence").await;
    assert_eq!(presence["state"], "left");
}

async fn history_pages_backwards(backend: Backend) {
    let server = TestServer::with_users(backend, Options::unlimited());
    let url = server.url();
    let mut alice = Client::login(&url, "alice", PASSWORD).await;
    alice.join("log", None).await;
    for i in 1..=130 {
        alice.say("log", &format!("line {i}")).await;
    }

    // join without since: the newest 50.
    let mut bob = Client::login(&url, "bob", PASSWORD).await;
    let (joined, history) = bob.join("log", None).await;
    assert_eq!(joined["last_seq"], 130);
    assert_eq!(seqs(&history), (81..=130).collect::<Vec<_>>());

    // Page back through all of it, 50 at a time: 3 pages.
    let mut before = None;
    let mut all = Vec::new();
    let mut pages = 0;
    loop {
        let mut request = json!({"type":"history","room":"log","limit":50});
        if let Some(before) = before {
            request["before"] = json!(before);
        }
        let page = bob.request(request).await;
        assert_eq!(page["type"], "history");
        pages += 1;
        let messages = page["messages"].as_array().unwrap().clone();
        let page_seqs = seqs(&messages);
        assert!(page_seqs.windows(2).all(|w| w[1] == w[0] + 1), "ascending");
        assert_eq!(page["has_more"], page_seqs[0] > 1);
        before = Some(page_seqs[0]);
        all.splice(0..0, messages);
        if page["has_more"] == false {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seqs(&all), (1..=130).collect::<Vec<_>>());
    assert_eq!(all[0]["text"], "line 1");
    assert_eq!(all[0]["user"], "alice");

    // Default limit 50, at most 200, and a page below 1 is empty.
    let page = bob.request(json!({"type":"history","room":"log"})).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 50);
    let page = bob
        .request(json!({"type":"history","room":"log","limit":1000}))
        .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 130);
    let page = bob
        .request(json!({"type":"history","room":"log","before":1}))
        .await;
    assert_eq!(page["messages"], json!([]));
    assert_eq!(page["has_more"], false);

    let answer = bob
        .request(json!({"type":"history","room":"nowhere"}))
        .await;
    assert_eq!(answer["code"], "no_such_room");
}

async fn resume_with_since_has_no_gap_and_no_duplicate(backend: Backend) {
    let server = TestServer::with_users(backend, Options::unlimited());
    let url = server.url();
    let mut alice = Client::login(&url, "alice", PASSWORD).await;
    alice.join("busy", None).await;
    for i in 1..=250 {
        alice.say("busy", &format!("m{i}")).await;
    }

    // Bob held up to 10, reconnects while alice keeps talking.
    let writer = tokio::spawn(async move {
        for i in 251..=400 {
            alice.say("busy", &format!("m{i}")).await;
        }
        alice
    });
    let mut bob = Client::login(&url, "bob", PASSWORD).await;
    let (joined, backlog) = bob.join("busy", Some(10)).await;
    let last_seq = joined["last_seq"].as_u64().unwrap();
    assert!(last_seq >= 250);
    assert_eq!(seqs(&backlog), (11..=last_seq).collect::<Vec<_>>());
    let mut all = seqs(&backlog);
    if last_seq < 400 {
        all.extend(seqs(&bob.messages_until("busy", 400).await));
    }
    assert_eq!(all, (11..=400).collect::<Vec<_>>());
    writer.await.unwrap();

    // Nothing missing: one empty history.
    let mut carol_view = Client::login(&url, "bob", PASSWORD).await;
    carol_view
        .send(json!({"type":"join","room":"busy","since":400}))
        .await;
    assert_eq!(carol_view.recv_type("joined").await["last_seq"], 400);
    let history = carol_view.recv().await;
    assert_eq!(history["type"], "history");
    assert_eq!(history["messages"], json!([]));
}

async fn concurrent_senders_get_contiguous_seqs_seen_once_by_everyone(backend: Backend) {
    let server = TestServer::with_users(backend, Options::unlimited());
    let url = server.url();
    let mut watcher = Client::login(&url, "root", PASSWORD).await;
    watcher.join("race", None).await;

    let mut senders = Vec::new();
    for (n, user) in ["alice", "bob", "alice", "bob"].into_iter().enumerate() {
        let url = url.clone();
        senders.push(tokio::spawn(async move {
            let mut client = Client::login(&url, user, PASSWORD).await;
            client.join("race", None).await;
            let mut acked = Vec::new();
            for i in 0..50 {
                let ack = client.say("race", &format!("{n}-{i}")).await;
                acked.push(ack["seq"].as_u64().unwrap());
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for sender in senders {
        acked.extend(sender.await.unwrap());
    }
    acked.sort();
    assert_eq!(acked, (1..=200).collect::<Vec<_>>(), "seq contiguous");
    let seen = seqs(&watcher.messages_until("race", 200).await);
    assert_eq!(seen, (1..=200).collect::<Vec<_>>(), "each once, in order");
}

async fn acked_messages_survive_kill_9(backend: Backend) {
    let mut server = TestServer::with_users(backend, Options::unlimited());
    let mut alice = Client::login(&server.url(), "alice", PASSWORD).await;
    alice.join("durable", None).await;
    // Pipelined sends: many share a commit.
    for i in 1..=300 {
        alice
            .send(
                json!({"type":"send","room":"durable","text":format!("d{i}"),"id":format!("s{i}")}),
            )
            .await;
    }
    let mut acked = 0;
    while acked < 300 {
        if alice.recv().await["type"] == "ack" {
            acked += 1;
        }
    }
    server.kill();
    server.restart();
    let mut bob = Client::login(&server.url(), "bob", PASSWORD).await;
    let (joined, backlog) = bob.join("durable", Some(0)).await;
    assert_eq!(joined["last_seq"], 300);
    let texts: Vec<String> = backlog
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        texts,
        (1..=300).map(|i| format!("d{i}")).collect::<Vec<_>>()
    );
}

async fn joining_again_on_one_connection_during_traffic_sends_each_message_once(backend: Backend) {
    let server = TestServer::with_users(backend, Options::unlimited());
    let url = server.url();
    let mut alice = Client::login(&url, "alice", PASSWORD).await;
    alice.join("again", None).await;
    let writer = tokio::spawn(async move {
        for i in 1..=300 {
            alice.say("again", &format!("a{i}")).await;
        }
    });
    let mut bob = Client::login(&url, "bob", PASSWORD).await;
    let (_, first) = bob.join("again", Some(0)).await;
    let mut held = seqs(&first);
    // Read some live traffic, then join again from the start while more
    // arrives: what was queued live up to the new join point must not come
    // a second time after the new backlog.
    // (On a busy machine alice may be nearly done by the time bob is in.)
    let newest = held.last().copied().unwrap_or(0);
    if newest < 300 {
        held.extend(seqs(
            &bob.messages_until("again", (newest + 20).min(300)).await,
        ));
    }
    let (joined, backlog) = bob.join("again", Some(0)).await;
    let again = seqs(&backlog);
    let last_seq = joined["last_seq"].as_u64().unwrap();
    assert_eq!(again, (1..=last_seq).collect::<Vec<_>>());
    let mut after = again;
    if last_seq < 300 {
        after.extend(seqs(&bob.messages_until("again", 300).await));
    }
    assert_eq!(after, (1..=300).collect::<Vec<_>>(), "no duplicate, no gap");
    writer.await.unwrap();
    // After leaving, nothing more of the room arrives.
    let left = bob.request(json!({"type":"leave","room":"again"})).await;
    assert_eq!(left["type"], "left");
    let mut carol = Client::login(&url, "root", PASSWORD).await;
    carol.join("again", None).await;
    carol.say("again", "after bob left").await;
    bob.send(json!({"type":"ping","id":"after"})).await;
    assert_eq!(bob.recv().await, json!({"type":"pong","re":"after"}));
}

async fn shutdown_answers_every_send_it_stored(backend: Backend) {
    let mut server = TestServer::with_users(backend, Options::unlimited());
    let mut alice = Client::login(&server.url(), "alice", PASSWORD).await;
    alice.join("last", None).await;
    for i in 1..=300 {
        alice
            .send(json!({"type":"send","room":"last","text":format!("l{i}"),"id":format!("l{i}")}))
            .await;
    }
    let status = server.terminate();
    assert!(status.success());
    let mut acked = Vec::new();
    loop {
        match alice.recv_or_close().await {
            Ok(event) if event["type"] == "ack" => acked.push(event["seq"].as_u64().unwrap()),
            Ok(_) => {}
            Err(closed) => {
                assert_eq!(closed, Closed::Code(1001));
                break;
            }
        }
    }
    server.restart();
    let mut bob = Client::login(&server.url(), "bob", PASSWORD).await;
    let (joined, _) = bob.join("last", None).await;
    let stored = joined["last_seq"].as_u64().unwrap();
    assert_eq!(
        acked,
        (1..=stored).collect::<Vec<_>>(),
        "every stored send acked"
    );
}

async fn sigterm_closes_clients_with_1001_and_exits_0(backend: Backend) {
    let mut server = TestServer::with_users(backend, Options::default());
    let mut alice = Client::login(&server.url(), "alice", PASSWORD).await;
    alice.join("general", None).await;
    alice.say("general", "last words").await;
    let status = server.terminate();
    assert_eq!(alice.closed().await, Closed::Code(1001));
    assert!(status.success(), "exit status {status:?}");
    server.restart();
    let mut bob = Client::login(&server.url(), "bob", PASSWORD).await;
    let (_, history) = bob.join("general", None).await;
    assert_eq!(history[0]["text"], "last words");
}

async fn bad_input_gets_errors_and_the_connection_stays_usable(backend: Backend) {
    let server = TestServer::with_users(backend, Options::default());
    let mut c = Client::login(&server.url(), "alice", PASSWORD).await;
    c.join("general", None).await;

    c.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(c.recv().await["code"], "bad_request");
    c.send_raw(Message::Text("{not json".into())).await;
    assert_eq!(c.recv().await["code"], "bad_request");
    c.send_raw(Message::Text("[]".into())).await;
    assert_eq!(c.recv().await["code"], "bad_request");

    let cases = [
        (json!({"type":"fly","id":"e1"}), "bad_request"),
        (json!({"type":"join","id":"e2"}), "bad_request"),
        (json!({"type":"join","room":7,"id":"e3"}), "bad_request"),
        (
            json!({"type":"join","room":"a b","id":"e4"}),
            "invalid_name",
        ),
        (
            json!({"type":"join","room":"x".repeat(33),"id":"e5"}),
            "invalid_name",
        ),
        (
            json!({"type":"send","room":"general","text":"  \n ","id":"e6"}),
            "bad_request",
        ),
        (
            json!({"type":"send","room":"general","text":"\u{1b}[2J","id":"e7"}),
            "bad_request",
        ),
        (
            json!({"type":"send","room":"general","text":"x".repeat(4097),"id":"e8"}),
            "too_large",
        ),
        (
            json!({"type":"history","room":"general","limit":0,"id":"e9"}),
            "bad_request",
        ),
        (
            json!({"type":"history","room":"general","before":-3,"id":"e10"}),
            "bad_request",
        ),
        (
            json!({"type":"delete_room","room":"general","id":"e11"}),
            "forbidden",
        ),
        (
            json!({"type":"login","user":"alice","password":PASSWORD,"id":"e12"}),
            "bad_request",
        ),
    ];
    for (request, code) in cases {
        let id = request["id"].clone();
        c.send(request.clone()).await;
        let answer = c.recv_type("error").await;
        assert_eq!(answer["code"], code, "{request}");
        assert_eq!(answer["re"], id, "{request}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // An id that is too long is itself a bad request, without `re`.
    c.send(json!({"type":"ping","id":"i".repeat(65)})).await;
    let answer = c.recv().await;
    assert_eq!(answer["code"], "bad_request");
    assert!(answer.get("re").is_none());

    // 4096 bytes of text is fine; so is a frame of exactly 64 KiB.
    let ack = c.say("general", &"é".repeat(2048)).await;
    assert_eq!(ack["seq"], 1);
    let pad = 64 * 1024 - json!({"type":"ping","id":"big","pad":""}).to_string().len();
    let frame = json!({"type":"ping","id":"big","pad":"p".repeat(pad)}).to_string();
    assert_eq!(frame.len(), 64 * 1024);
    c.send_raw(Message::Text(frame.into())).await;
    assert_eq!(c.recv_type("pong").await, json!({"type":"pong","re":"big"}));

    // Nothing above killed the session.
    assert_eq!(
        c.request(json!({"type":"ping","id":"p"})).await["type"],
        "pong"
    );

    // One byte more than 64 KiB closes with 1009.
    let frame = json!({"type":"ping","pad":"p".repeat(pad + 1),"id":"big"}).to_string();
    assert_eq!(frame.len(), 64 * 1024 + 1);
    c.send_raw(Message::Text(frame.into())).await;
    assert_eq!(c.closed().await, Closed::Code(1009));

    // Other users were not affected.
    let mut bob = Client::login(&server.url(), "bob", PASSWORD).await;
    assert_eq!(bob.request(json!({"type":"ping"})).await["type"], "pong");
}

async fn sends_are_rate_limited(backend: Backend) {
    let server = TestServer::with_users(backend, Options::default());
    let mut c = Client::login(&server.url(), "alice", PASSWORD).await;
    c.join("flood", None).await;
    for i in 0..100 {
        c.send(json!({"type":"send","room":"flood","text":format!("f{i}"),"id":format!("f{i}")}))
            .await;
    }
    let (mut acks, mut limited) = (0, 0);
    while acks + limited < 100 {
        let event = c.recv().await;
        match (event["type"].as_str(), event["code"].as_str()) {
            (Some("ack"), _) => acks += 1,
            (Some("error"), Some("rate_limited")) => {
                assert!(event["re"].as_str().is_some_and(|r| r.starts_with('f')));
                limited += 1;
            }
            _ => {}
        }
    }
    assert!(limited > 0, "a burst of 100 must hit the limit");
    assert!(acks >= 40, "the burst of 40 passes");
    // Refused sends were not stored.
    let page = c
        .request(json!({"type":"history","room":"flood","limit":200}))
        .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), acks);
}

async fn admins_delete_rooms(backend: Backend) {
    let server = TestServer::with_users(backend, Options::default());
    let url = server.url();
    let mut root = Client::login(&url, "root", PASSWORD).await;
    let mut alice = Client::login(&url, "alice", PASSWORD).await;
    alice.join("doomed", None).await;
    alice.say("doomed", "soon gone").await;
    root.join("doomed", None).await;

    let answer = alice
        .request(json!({"type":"delete_room","room":"doomed"}))
        .await;
    assert_eq!(answer["code"], "forbidden");
    let answer = root
        .request(json!({"type":"delete_room","room":"nowhere"}))
        .await;
    assert_eq!(answer["code"], "no_such_room");

    let answer = root
        .request(json!({"type":"delete_room","room":"doomed","id":"d1"}))
        .await;
    assert_eq!(
        answer,
        json!({"type":"room_deleted","room":"doomed","re":"d1"})
    );
    assert_eq!(
        alice.recv_type("room_deleted").await,
        json!({"type":"room_deleted","room":"doomed"})
    );
    // Alice is no longer a member; the name starts afresh.
    let answer = alice
        .request(json!({"type":"send","room":"doomed","text":"hello?"}))
        .await;
    assert_eq!(answer["code"], "not_joined");
    let (joined, history) = alice.join("doomed", None).await;
    assert_eq!(joined["last_seq"], 0);
    assert!(history.is_empty());
    let rooms = root.request(json!({"type":"rooms"})).await;
    assert_eq!(
        rooms["rooms"],
        json!([{"name":"doomed","members":1,"last_seq":0}])
    );
}

async fn a_room_deleted_and_joined_again_at_once_is_a_new_room(backend: Backend) {
    let server = TestServer::with_users(backend, Options::unlimited());
    let url = server.url();
    for round in 0..5 {
        let room = format!("churn{round}");
        let mut alice = Client::login(&url, "alice", PASSWORD).await;
        alice.join(&room, None).await;
        let mut root = Client::login(&url, "root", PASSWORD).await;
        root.join(&room, None).await;
        // Messages of the old room are still on their way to root when it
        // deletes the room and, in the same breath, joins the name again.
        let sender = tokio::spawn({
            let room = room.clone();
            async move {
                for i in 1..=2000 {
                    alice
                        .send(json!({"type":"send","room":room,"text":format!("old {i}")}))
                        .await;
                }
                alice
            }
        });
        root.recv_type("message").await;
        root.send(json!({"type":"delete_room","room":room,"id":"d"}))
            .await;
        root.send(json!({"type":"join","room":room,"id":"j"})).await;
        for i in 1..=3 {
            root.send(json!({"type":"send","room":room,"text":format!("new {i}")}))
                .await;
        }
        let mut joined = false;
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let event = root.recv().await;
            match event["type"].as_str() {
                Some("joined") => {
                    assert_eq!(event["last_seq"], 0, "{event}");
                    joined = true;
                }
                Some("message") if joined => {
                    assert!(
                        event["text"].as_str().unwrap().starts_with("new"),
                        "a message of the deleted room after joining the new one: {event}"
                    );
                    seen.push(event["seq"].as_u64().unwrap());
                }
                Some("room_deleted") if joined => {
                    panic!("the new room is not deleted: {event}")
                }
                _ => {}
            }
        }
        assert_eq!(seen, vec![1, 2, 3]);
        sender.await.unwrap();
    }
}

async fn login_must_come_within_10_seconds(backend: Backend) {
    let server = TestServer::start(backend);
    let mut c = Client::connect(&server.url()).await;
    assert_eq!(c.closed().await, Closed::Code(1008));
}

async fn only_ws_paths_upgrade_and_connections_are_capped(backend: Backend) {
    let server = TestServer::with_users(
        backend,
        Options {
            args: vec!["--max-connections".into(), "2".into()],
            ..Options::default()
        },
    );
    let root = format!("ws://127.0.0.1:{}/", server.port());
    let _first = Client::login(&root, "alice", PASSWORD).await;
    let other = format!("ws://127.0.0.1:{}/elsewhere", server.port());
    match tokio_tungstenite::connect_async(&other).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 404)
        }
        other => panic!("expected HTTP 404, got {other:?}"),
    }
    // The refused connection holds its slot until the server has closed it:
    // a second client gets in once that happened.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let _second = loop {
        match Client::try_connect(&server.url()).await {
            Ok(mut second) => {
                let welcome = second
                    .request(json!({"type":"login","user":"bob","password":PASSWORD}))
                    .await;
                assert_eq!(welcome["type"], "welcome");
                break second;
            }
            Err(_) if std::time::Instant::now() < deadline => tokio::task::yield_now().await,
            Err(err) => panic!("second connection refused: {err}"),
        }
    };
    match tokio_tungstenite::connect_async(&server.url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected HTTP 503, got {other:?}"),
    }
}

async fn a_member_that_stops_reading_is_closed_with_1013_and_the_room_goes_on(backend: Backend) {
    let server = TestServer::with_users(backend, Options::unlimited());
    let url = server.url();
    let mut sleeper = Client::login(&url, "bob", PASSWORD).await;
    sleeper.join("fast", None).await;
    let mut alice = Client::login(&url, "alice", PASSWORD).await;
    alice.join("fast", None).await;
    let text = "x".repeat(4000);
    // Far more than the outbox and the socket buffers hold, pipelined; alice
    // reads everything, bob nothing.
    let total = 9000u64;
    let mut sent = 0;
    let mut acked = 0;
    while acked < total {
        while sent < total && sent - acked < 200 {
            sent += 1;
            alice
                .send(json!({"type":"send","room":"fast","text":text}))
                .await;
        }
        if alice.recv().await["type"] == "ack" {
            acked += 1;
        }
    }
    assert_eq!(sleeper.closed().await, Closed::Code(1013));
    assert_eq!(alice.request(json!({"type":"ping"})).await["type"], "pong");
}

async fn admin_commands(backend: Backend) {
    let scratch = Scratch::new(backend);
    let db = scratch.db();
    let out = run_admin(db, &["useradd", "dora"], true, Some("long enough"));
    assert!(out.status.success(), "{}", out.stderr);
    let out = run_admin(db, &["useradd", "dora"], false, Some("long enough"));
    assert!(!out.status.success());
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1);
    let out = run_admin(db, &["useradd", "bad/name"], false, Some("long enough"));
    assert!(!out.status.success());
    assert!(out.stderr.contains("invalid user name"), "{}", out.stderr);
    let out = run_admin(db, &["useradd", "eve"], false, Some("short"));
    assert!(!out.status.success());
    assert!(out.stderr.contains("8 to 1024"), "{}", out.stderr);
    let out = run_admin(db, &["useradd", "eve"], false, Some("long enough too"));
    assert!(out.status.success());

    let out = run_admin(db, &["users"], false, None);
    assert!(out.status.success());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("NAME"));
    assert!(lines[1].starts_with("dora") && lines[1].contains("yes"));
    assert!(lines[2].starts_with("eve") && lines[2].contains("no"));

    let out = run_admin(db, &["passwd", "eve"], false, Some("a new password"));
    assert!(out.status.success(), "{}", out.stderr);
    let out = run_admin(db, &["userdel", "eve"], false, None);
    assert!(out.status.success());
    let out = run_admin(db, &["userdel", "eve"], false, None);
    assert!(!out.status.success());
    assert!(out.stderr.contains("no user eve"));

    // A store that cannot be opened: one line, and no success.
    let unreachable = match backend {
        Backend::Sqlite => "/proc/nope/chat.db".to_owned(),
        Backend::Postgres => format!("postgres://postgres@127.0.0.1:{}/chat", free_port()),
    };
    let out = run_admin(&unreachable, &["users"], false, None);
    assert!(!out.status.success());
    assert!(out.stderr.starts_with("chat-server: "), "{}", out.stderr);
}

/// SQLite only: the file itself, created with its folders and readable by
/// its owner alone (it holds password hashes).
#[test]
fn admin_commands_create_the_sqlite_file_private() {
    let scratch = Scratch::new(Backend::Sqlite);
    let db = scratch.path().join("nested").join("chat.db");
    let db = db.to_str().expect("the temp dir path is UTF-8");
    let out = run_admin(db, &["useradd", "dora"], true, Some("long enough"));
    assert!(out.status.success(), "{}", out.stderr);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(db)
            .expect("useradd created the file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

async fn account_changes_reach_live_sessions(backend: Backend) {
    let server = TestServer::with_users(backend, Options::default());
    let url = server.url();
    let mut alice_laptop = Client::login(&url, "alice", PASSWORD).await;
    let mut alice_desktop = Client::login(&url, "alice", PASSWORD).await;
    let mut bob = Client::login(&url, "bob", PASSWORD).await;
    let mut root = Client::login(&url, "root", PASSWORD).await;
    root.join("kept", None).await;

    // A password changed by the admin command (another process) closes
    // the sessions that logged in with the old one.
    let out = run_admin(
        server.db(),
        &["passwd", "alice"],
        false,
        Some("a new password"),
    );
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(alice_laptop.closed().await, Closed::Code(1008));
    assert_eq!(alice_desktop.closed().await, Closed::Code(1008));
    // The new password works; the old one does not.
    let mut alice = Client::login(&url, "alice", "a new password").await;

    // A deleted account's sessions are closed.
    let out = run_admin(server.db(), &["userdel", "bob"], false, None);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(bob.closed().await, Closed::Code(1008));

    // A deleted admin cannot delete rooms, even before its session is
    // closed: either the request is refused or the connection is gone.
    let out = run_admin(server.db(), &["userdel", "root"], false, None);
    assert!(out.status.success(), "{}", out.stderr);
    root.send(json!({"type":"delete_room","room":"kept","id":"d"}))
        .await;
    match root.recv_or_close().await {
        Ok(answer) => assert_eq!(answer["code"], "forbidden", "{answer}"),
        Err(closed) => assert_eq!(closed, Closed::Code(1008)),
    }
    let rooms = alice.request(json!({"type":"rooms"})).await;
    assert!(
        rooms["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "kept"),
        "{rooms}"
    );
    // Alice, unaffected by the others' changes, is still connected.
    assert_eq!(alice.request(json!({"type":"ping"})).await["type"], "pong");
}

async fn rooms_are_paged_and_their_creation_is_limited(backend: Backend) {
    let server = TestServer::with_users(
        backend,
        Options {
            args: vec![
                "--room-quota".into(),
                "3".into(),
                "--max-rooms".into(),
                "5".into(),
            ],
            ..Options::default()
        },
    );
    let url = server.url();
    let mut alice = Client::login(&url, "alice", PASSWORD).await;
    for room in ["r1", "r2", "r3"] {
        alice.join(room, None).await;
    }
    // A fourth new room within the hour is refused; existing ones are not.
    let answer = alice.request(json!({"type":"join","room":"r4"})).await;
    assert_eq!(answer["code"], "rate_limited", "{answer}");
    alice.join("r1", None).await;
    // Admins have no quota, but the server-wide cap holds for everyone.
    let mut root = Client::login(&url, "root", PASSWORD).await;
    root.join("a1", None).await;
    root.join("a2", None).await;
    let answer = root.request(json!({"type":"join","room":"a3"})).await;
    assert_eq!(answer["code"], "forbidden", "{answer}");

    // A client of part 1 gets every room in one answer, without has_more.
    let all = alice.request(json!({"type":"rooms"})).await;
    let names: Vec<&str> = all["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a1", "a2", "r1", "r2", "r3"]);
    assert!(all.get("has_more").is_none(), "{all}");
    // Pages of two, in name order, until has_more is gone.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut request = json!({"type":"rooms","limit":2});
        if let Some(after) = &after {
            request["after"] = json!(after);
        }
        let page = alice.request(request).await;
        let rooms = page["rooms"].as_array().unwrap().clone();
        assert!(rooms.len() <= 2, "{page}");
        paged.extend(rooms.iter().map(|r| r["name"].as_str().unwrap().to_owned()));
        if page["has_more"] != true {
            break;
        }
        after = paged.last().cloned();
    }
    assert_eq!(paged, names);
    let zero = alice.request(json!({"type":"rooms","limit":0})).await;
    assert_eq!(zero["code"], "bad_request", "{zero}");
}

/// `--log-format json`: every line of the log is one JSON object, for log
/// shippers.
#[tokio::test]
async fn the_log_can_be_json_lines() {
    let server = TestServer::with_users(
        Backend::Sqlite,
        Options {
            args: vec!["--log-format".into(), "json".into()],
            ..Options::default()
        },
    );
    // The start-up lines are logged before the first client gets in.
    let _alice = Client::login(&server.url(), "alice", PASSWORD).await;
    server.wait_for_log("\"database\"", 1).await;
    let log = server.log();
    let mut lines = 0;
    for line in log.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
        assert!(event["level"].is_string(), "{line}");
        assert!(event["timestamp"].is_string(), "{line}");
        lines += 1;
    }
    assert!(lines > 0);
    assert!(log.contains("\"message\":\"database\""), "{log}");
}
