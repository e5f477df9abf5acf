//! End-to-end tests of the terminal client's network layer
//! (`chat_tui::net`) against the real `chat-server` binary: first login and
//! its failures, join, send, receive, paging back through history, and the
//! promises the app builds on across a server restart: every message once,
//! in order, with no gap, and lines typed while offline delivered once.
//! The client cannot tell the store backends apart: these run on SQLite.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chat_e2e::*;
use chat_proto::{ErrorCode, PresenceState};
use chat_tui::net::{ConnectError, NetClient, NetCommand, NetConfig, NetEvent};
use serde_json::json;
use tokio::time::timeout;

fn config(server: &TestServer, user: &str) -> NetConfig {
    let mut config = NetConfig::new(server.url(), user, PASSWORD);
    config.backoff_min = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(400);
    config.timeout = Duration::from_secs(5);
    config
}

async fn connect(server: &TestServer, user: &str) -> NetClient {
    NetClient::connect(config(server, user))
        .await
        .unwrap_or_else(|err| panic!("{user} cannot connect: {err}\n{}", server.log()))
}

/// The next event, within the harness timeout.
async fn next(client: &mut NetClient) -> NetEvent {
    let event = timeout(TIMEOUT, client.recv())
        .await
        .expect("no event within the timeout")
        .expect("the network task ended");
    event
}

/// Skips events until `wanted` picks one.
async fn wait_for<T>(client: &mut NetClient, mut wanted: impl FnMut(NetEvent) -> Option<T>) -> T {
    loop {
        if let Some(found) = wanted(next(client).await) {
            return found;
        }
    }
}

/// Joins `room` and returns the seqs of its first backlog.
async fn join(client: &mut NetClient, room: &str) -> Vec<u64> {
    client.send(NetCommand::Join { room: room.into() });
    wait_for(client, |event| match event {
        NetEvent::Backlog {
            room: r, messages, ..
        } if r == room => Some(messages.iter().map(|m| m.seq).collect()),
        _ => None,
    })
    .await
}

/// Seqs delivered per room by `Backlog` and `Message` events.
type Seen = BTreeMap<String, Vec<u64>>;

/// Collects delivered seqs of every room until `room` has `upto`. Fails on
/// a duplicate.
async fn seqs_until(client: &mut NetClient, room: &str, upto: u64, seen: &mut Seen) {
    while !seen.get(room).is_some_and(|s| s.contains(&upto)) {
        let (r, fresh): (String, Vec<u64>) = match next(client).await {
            NetEvent::Backlog { room, messages, .. } => {
                (room, messages.iter().map(|m| m.seq).collect())
            }
            NetEvent::Message(m) => (m.room, vec![m.seq]),
            _ => continue,
        };
        let list = seen.entry(r.clone()).or_default();
        for seq in fresh {
            assert!(
                !list.contains(&seq),
                "{r}: seq {seq} delivered twice: {list:?}"
            );
            list.push(seq);
        }
    }
}

/// Another user posting through a plain WebSocket client.
async fn poster(server: &TestServer, user: &str, room: &str) -> Client {
    let mut client = Client::login(&server.url(), user, PASSWORD).await;
    client.join(room, None).await;
    client
}

#[tokio::test]
async fn first_login_failures_are_clear() {
    let server = TestServer::with_users(Backend::Sqlite, Options::default());
    let mut wrong = config(&server, "alice");
    wrong.password = "not the password".into();
    let err = NetClient::connect(wrong).await.err().expect("refused");
    assert_eq!(err, ConnectError::AuthFailed);

    let mut nobody = config(&server, "mallory");
    nobody.password = PASSWORD.into();
    assert_eq!(
        NetClient::connect(nobody).await.err(),
        Some(ConnectError::AuthFailed)
    );

    let mut bad_path = config(&server, "alice");
    bad_path.url = format!("ws://127.0.0.1:{}/nope", server.port());
    assert_eq!(
        NetClient::connect(bad_path).await.err(),
        Some(ConnectError::Http(404))
    );

    let mut closed = config(&server, "alice");
    closed.url = format!("ws://127.0.0.1:{}/ws", free_port());
    let err = NetClient::connect(closed).await.err().expect("unreachable");
    assert!(
        matches!(err, ConnectError::Unreachable(_)),
        "{err:?}: {err}"
    );
}

#[tokio::test]
async fn join_send_receive_typing_presence() {
    let server = TestServer::with_users(Backend::Sqlite, Options::default());
    let mut alice = connect(&server, "alice").await;
    assert_eq!(alice.session.user, "alice");
    assert!(!alice.session.admin);
    assert!(join(&mut alice, "general").await.is_empty());

    let mut bob = connect(&server, "bob").await;
    join(&mut bob, "general").await;
    let presence = wait_for(&mut alice, |event| match event {
        NetEvent::Presence { room, user, state } if room == "general" => Some((user, state)),
        _ => None,
    })
    .await;
    assert_eq!(presence, ("bob".to_owned(), PresenceState::Joined));

    alice.send(NetCommand::Send {
        id: "s1".into(),
        room: "general".into(),
        text: "hello bob  ".into(),
    });
    let ack = wait_for(&mut alice, |event| match event {
        NetEvent::Ack { id, seq, .. } => Some((id, seq)),
        _ => None,
    })
    .await;
    assert_eq!(ack, ("s1".to_owned(), 1));
    let got = wait_for(&mut bob, |event| match event {
        NetEvent::Message(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(
        (got.seq, got.user.as_str(), got.text.as_str()),
        (1, "alice", "hello bob")
    );

    alice.send(NetCommand::Typing {
        room: "general".into(),
    });
    let typing = wait_for(&mut bob, |event| match event {
        NetEvent::Typing { room, user } => Some((room, user)),
        _ => None,
    })
    .await;
    assert_eq!(typing, ("general".to_owned(), "alice".to_owned()));

    // Refused sends end in SendFailed, with the server's or the client's code.
    alice.send(NetCommand::Send {
        id: "s2".into(),
        room: "elsewhere".into(),
        text: "nobody here".into(),
    });
    alice.send(NetCommand::Send {
        id: "s3".into(),
        room: "general".into(),
        text: "x".repeat(5000),
    });
    for (want_id, want_code) in [("s2", ErrorCode::NotJoined), ("s3", ErrorCode::TooLarge)] {
        let (id, code) = wait_for(&mut alice, |event| match event {
            NetEvent::SendFailed { id, code, .. } => Some((id, code)),
            _ => None,
        })
        .await;
        assert_eq!((id.as_str(), code), (want_id, Some(want_code)));
    }

    alice.send(NetCommand::Rooms);
    let rooms = wait_for(&mut alice, |event| match event {
        NetEvent::Rooms(rooms) => Some(rooms),
        _ => None,
    })
    .await;
    let general = rooms.iter().find(|r| r.name == "general").expect("listed");
    assert_eq!((general.members, general.last_seq), (2, 1));

    bob.send(NetCommand::Leave {
        room: "general".into(),
    });
    let left = wait_for(&mut alice, |event| match event {
        NetEvent::Presence { user, state, .. } => Some((user, state)),
        _ => None,
    })
    .await;
    assert_eq!(left, ("bob".to_owned(), PresenceState::Left));
    alice.shutdown().await;
    bob.shutdown().await;
}

#[tokio::test]
async fn history_pages_back_to_the_first_message() {
    let server = TestServer::with_users(Backend::Sqlite, Options::unlimited());
    let mut bob = poster(&server, "bob", "general").await;
    for i in 1..=120 {
        bob.say("general", &format!("m{i}")).await;
    }
    let mut alice = connect(&server, "alice").await;
    alice.send(NetCommand::Join {
        room: "general".into(),
    });
    let (first, has_more) = wait_for(&mut alice, |event| match event {
        NetEvent::Backlog {
            messages, has_more, ..
        } => Some((messages, has_more)),
        _ => None,
    })
    .await;
    assert_eq!(first.first().map(|m| m.seq), Some(71));
    assert_eq!(first.last().map(|m| m.seq), Some(120));
    assert!(has_more);

    let mut before = 71;
    let mut all: Vec<u64> = first.iter().map(|m| m.seq).collect();
    loop {
        alice.send(NetCommand::History {
            room: "general".into(),
            before: Some(before),
            limit: 50,
        });
        let (page, has_more) = wait_for(&mut alice, |event| match event {
            NetEvent::Page {
                messages,
                has_more,
                before: b,
                ..
            } if b == Some(before) => Some((messages, has_more)),
            _ => None,
        })
        .await;
        let seqs: Vec<u64> = page.iter().map(|m| m.seq).collect();
        assert!(seqs.iter().all(|&s| s < before));
        all.splice(0..0, seqs);
        before = page.first().map_or(before, |m| m.seq);
        if !has_more {
            break;
        }
    }
    assert_eq!(all, (1..=120).collect::<Vec<u64>>());

    alice.send(NetCommand::History {
        room: "nowhere".into(),
        before: None,
        limit: 10,
    });
    let failed = wait_for(&mut alice, |event| match event {
        NetEvent::PageFailed { room, reason, .. } => Some((room, reason)),
        _ => None,
    })
    .await;
    assert_eq!(failed.0, "nowhere");
    assert!(failed.1.contains("no_such_room"), "{}", failed.1);
}

#[tokio::test]
async fn server_restart_resumes_with_no_gap_and_no_duplicate() {
    let mut server = TestServer::with_users(Backend::Sqlite, Options::unlimited());
    let mut config = config(&server, "alice");
    // Alice stays offline until told to reconnect, so that what bob posts
    // meanwhile can only reach her through the resume.
    config.backoff_min = Duration::from_secs(600);
    config.backoff_max = Duration::from_secs(600);
    let mut alice = NetClient::connect(config).await.expect("connect");
    join(&mut alice, "general").await;
    join(&mut alice, "random").await;

    let mut bob = poster(&server, "bob", "general").await;
    for i in 1..=5 {
        bob.say("general", &format!("before {i}")).await;
    }
    let mut seen = Seen::new();
    seqs_until(&mut alice, "general", 5, &mut seen).await;

    server.kill();
    let retry = wait_for(&mut alice, |event| match event {
        NetEvent::Disconnected { retry_in, .. } => Some(retry_in),
        _ => None,
    })
    .await;
    assert!(retry.is_some(), "a lost connection is retried");

    server.restart();
    let mut bob = poster(&server, "bob", "general").await;
    for i in 6..=12 {
        bob.say("general", &format!("while away {i}")).await;
    }
    let mut root_client = poster(&server, "root", "random").await;
    root_client.say("random", "news in random").await;

    alice.send(NetCommand::Reconnect);
    wait_for(&mut alice, |event| match event {
        NetEvent::Connected(session) => Some(session),
        _ => None,
    })
    .await;
    // Live messages after the resume, while the seam is fresh.
    for i in 13..=15 {
        bob.say("general", &format!("after {i}")).await;
    }
    seqs_until(&mut alice, "general", 15, &mut seen).await;
    seqs_until(&mut alice, "random", 1, &mut seen).await;
    assert_eq!(
        seen["general"],
        (1..=15).collect::<Vec<u64>>(),
        "every message once, in order"
    );
    // The other room resumed too.
    assert_eq!(seen["random"], [1]);
    alice.shutdown().await;
}

#[tokio::test]
async fn lines_typed_offline_are_delivered_once() {
    let mut server = TestServer::with_users(Backend::Sqlite, Options::default());
    let mut alice = connect(&server, "alice").await;
    join(&mut alice, "general").await;
    alice.send(NetCommand::Send {
        id: "s0".into(),
        room: "general".into(),
        text: "online".into(),
    });
    wait_for(&mut alice, |event| match event {
        NetEvent::Ack { id, .. } if id == "s0" => Some(()),
        _ => None,
    })
    .await;

    server.kill();
    wait_for(&mut alice, |event| match event {
        NetEvent::Disconnected { .. } => Some(()),
        _ => None,
    })
    .await;
    for i in 1..=3 {
        alice.send(NetCommand::Send {
            id: format!("s{i}"),
            room: "general".into(),
            text: format!("offline {i}"),
        });
    }
    server.restart();

    let mut acked = Vec::new();
    while acked.len() < 3 {
        match next(&mut alice).await {
            NetEvent::Ack { id, seq, .. } => acked.push((id, seq)),
            NetEvent::SendFailed { id, message, .. } => panic!("{id} failed: {message}"),
            _ => {}
        }
    }
    assert_eq!(
        acked,
        [("s1".into(), 2), ("s2".into(), 3), ("s3".into(), 4)],
        "queued lines sent in order once reconnected"
    );

    // The server holds each line exactly once.
    let mut reader = Client::login(&server.url(), "bob", PASSWORD).await;
    let page = reader
        .request(json!({"type":"history","room":"general","limit":50}))
        .await;
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(texts, ["online", "offline 1", "offline 2", "offline 3"]);

    // And no stray ack or failure follows.
    alice.send(NetCommand::Send {
        id: "s4".into(),
        room: "general".into(),
        text: "back".into(),
    });
    let next_ack = wait_for(&mut alice, |event| match event {
        NetEvent::Ack { id, seq, .. } => Some((id, seq)),
        NetEvent::SendFailed { id, .. } => panic!("{id} failed"),
        _ => None,
    })
    .await;
    assert_eq!(next_ack, ("s4".into(), 5));
    alice.shutdown().await;
}

#[tokio::test]
async fn admin_deletes_a_room_members_are_told() {
    let server = TestServer::with_users(Backend::Sqlite, Options::default());
    let mut alice = connect(&server, "alice").await;
    join(&mut alice, "doomed").await;
    let mut root = connect(&server, "root").await;
    assert!(root.session.admin);
    join(&mut root, "doomed").await;

    alice.send(NetCommand::DeleteRoom {
        room: "doomed".into(),
    });
    let refused = wait_for(&mut alice, |event| match event {
        NetEvent::Error { code, .. } => Some(code),
        _ => None,
    })
    .await;
    assert_eq!(refused, Some(ErrorCode::Forbidden));

    root.send(NetCommand::DeleteRoom {
        room: "doomed".into(),
    });
    for client in [&mut alice, &mut root] {
        let room = wait_for(client, |event| match event {
            NetEvent::RoomDeleted { room } => Some(room),
            _ => None,
        })
        .await;
        assert_eq!(room, "doomed");
    }
    // Forgotten: sending there now fails locally.
    alice.send(NetCommand::Send {
        id: "x".into(),
        room: "doomed".into(),
        text: "hello?".into(),
    });
    let code = wait_for(&mut alice, |event| match event {
        NetEvent::SendFailed { code, .. } => Some(code),
        _ => None,
    })
    .await;
    assert_eq!(code, Some(ErrorCode::NotJoined));
}

#[tokio::test]
async fn the_accounts_rooms_dms_invitations_and_read_markers() {
    let server = TestServer::with_users(Backend::Sqlite, Options::default());
    server.add_user("carol", PASSWORD, false);
    // Alice's rooms from another device come with the login, read markers
    // and all.
    let mut phone = Client::login(&server.url(), "alice", PASSWORD).await;
    phone.join("general", None).await;
    phone.say("general", "one").await;
    phone.say("general", "two").await;
    phone
        .send(json!({"type":"read","room":"general","seq":1}))
        .await;
    // Answered in order: once the ping is, the marker is stored.
    phone.request(json!({"type":"ping"})).await;
    let mut alice = connect(&server, "alice").await;
    assert_eq!(
        alice.session.rooms,
        [chat_proto::AccountRoom {
            name: "general".into(),
            last_seq: 2,
            read: 1,
            private: false,
        }]
    );
    join(&mut alice, "general").await;

    // A read marker from this client reaches the other device, and one
    // from there reaches this client.
    alice.send(NetCommand::Read {
        room: "general".into(),
        seq: 2,
    });
    let read = phone.recv_type("read").await;
    assert_eq!(read, json!({"type":"read","room":"general","seq":2}));
    phone.say("general", "three").await;
    phone
        .send(json!({"type":"read","room":"general","seq":3}))
        .await;
    let seq = wait_for(&mut alice, |event| match event {
        NetEvent::Read { room, seq } if room == "general" => Some(seq),
        _ => None,
    })
    .await;
    assert_eq!(seq, 3);

    // Bob opens a conversation: this client hears of it, joins it, and
    // gets its messages.
    let mut bob = Client::login(&server.url(), "bob", PASSWORD).await;
    let joined = bob.request(json!({"type":"dm","user":"alice"})).await;
    assert_eq!(joined["room"], "alice+bob", "{joined}");
    let (room, by) = wait_for(&mut alice, |event| match event {
        NetEvent::Invited { room, user, by } if user == "alice" => Some((room, by)),
        _ => None,
    })
    .await;
    assert_eq!((room.as_str(), by.as_str()), ("alice+bob", "bob"));
    join(&mut alice, "alice+bob").await;
    bob.say("alice+bob", "psst").await;
    let text = wait_for(&mut alice, |event| match event {
        NetEvent::Message(m) if m.room == "alice+bob" => Some(m.text),
        _ => None,
    })
    .await;
    assert_eq!(text, "psst");

    // This client opens one with carol, and a private room it invites
    // her into.
    alice.send(NetCommand::Dm {
        user: "carol".into(),
        room: "alice+carol".into(),
    });
    wait_for(&mut alice, |event| match event {
        NetEvent::Joined { room, .. } if room == "alice+carol" => Some(()),
        _ => None,
    })
    .await;
    let mut carol = Client::login(&server.url(), "carol", PASSWORD).await;
    alice.send(NetCommand::CreatePrivate { room: "ops".into() });
    wait_for(&mut alice, |event| match event {
        NetEvent::Joined { room, .. } if room == "ops" => Some(()),
        _ => None,
    })
    .await;
    alice.send(NetCommand::Invite {
        room: "ops".into(),
        user: "carol".into(),
    });
    let invited = carol.recv_type("invited").await;
    assert_eq!(
        invited,
        json!({"type":"invited","room":"ops","user":"carol","by":"alice"})
    );

    // Forgotten on the other device: this client is told and stops.
    phone
        .request(json!({"type":"leave","room":"general","forget":true}))
        .await;
    wait_for(&mut alice, |event| match event {
        NetEvent::Forgotten { room } if room == "general" => Some(()),
        _ => None,
    })
    .await;
    alice.shutdown().await;
}

/// Driven in tmux as a person uses it: a direct message from a WebSocket
/// client opens in the terminal client as `@bob`, and since that room is not
/// the one in view, the bell and the desktop notification sequence reach the
/// terminal (read from the raw bytes of the pane).
#[test]
fn a_dm_opens_in_the_terminal_and_rings_the_bell_when_not_in_view() {
    let server = TestServer::with_users(Backend::Sqlite, Options::default());
    let home = tempfile::tempdir().expect("temp dir");
    let config = home.path().join("config");
    std::fs::create_dir_all(config.join("chat-tui")).unwrap();
    std::fs::write(
        config.join("chat-tui").join("config.toml"),
        "notify = \"mentions-and-dms\"\n",
    )
    .unwrap();
    let tmux = Tmux::start(
        home.path(),
        &[
            ("HOME", home.path()),
            ("XDG_CONFIG_HOME", &config),
            ("CHAT_PASSWORD", std::path::Path::new(PASSWORD)),
        ],
    );
    let raw = home.path().join("pane.raw");
    tmux.run(&[
        "pipe-pane",
        "-o",
        "-t",
        Tmux::SESSION,
        &format!("cat >> '{}'", raw.display()),
    ]);
    tmux.type_line(&format!(
        "'{}' {} --user alice --join general",
        tui_binary().display(),
        server.url()
    ));
    tmux.wait_for(&["general", "alice"]);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut bob = Client::login(&server.url(), "bob", PASSWORD).await;
        let joined = bob.request(json!({"type":"dm","user":"alice"})).await;
        assert_eq!(joined["room"], "alice+bob", "{joined}");
        bob.recv_type("history").await;
        // Once alice's client is in the conversation (live, not reading a
        // backlog), bob says something. Her client may have joined before
        // bob's own join was answered: then she is among its members and
        // no presence follows.
        let members = joined["members"].as_array().cloned().unwrap_or_default();
        if !members.contains(&json!("alice")) {
            bob.recv_matching(TIMEOUT, |e| e["type"] == "presence" && e["user"] == "alice")
                .await;
        }
        bob.say("alice+bob", "psst, lunch?").await;
    });
    tmux.wait_for(&["@bob"]);
    let expected = "\x07\x1b]777;notify;bob in @bob;psst, lunch?\x07";
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let bytes = std::fs::read(&raw).unwrap_or_default();
        if String::from_utf8_lossy(&bytes).contains(expected) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no bell and notification in the pane's output: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    tmux.run(&["send-keys", "-t", Tmux::SESSION, "C-c"]);
}

/// The terminal client edits a message with the keys a person uses (Up to
/// select it, `e`, more text, Enter), and a plain WebSocket client in the
/// room sees the edit arrive; that client's reaction and its deletion of
/// its own message then show in the terminal.
#[test]
fn an_edit_typed_in_the_terminal_reaches_a_websocket_client_and_back() {
    let server = TestServer::with_users(Backend::Sqlite, Options::default());
    let home = tempfile::tempdir().expect("temp dir");
    let tmux = Tmux::start(
        home.path(),
        &[
            ("HOME", home.path()),
            ("XDG_CONFIG_HOME", &home.path().join("config")),
            ("CHAT_PASSWORD", std::path::Path::new(PASSWORD)),
        ],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut bob = runtime.block_on(async {
        let mut bob = Client::login(&server.url(), "bob", PASSWORD).await;
        bob.join("general", None).await;
        bob
    });
    tmux.type_line(&format!(
        "'{}' {} --user alice --join general",
        tui_binary().display(),
        server.url()
    ));
    // What only the client draws (the command line typed into the shell
    // names the user and the room too).
    tmux.wait_for(&["● connected", "#general"]);
    tmux.type_line("lunch at noon");
    runtime.block_on(async {
        let message = bob
            .recv_matching(TIMEOUT, |e| e["type"] == "message" && e["user"] == "alice")
            .await;
        assert_eq!(message["text"], "lunch at noon");
    });
    tmux.wait_for(&["alice: lunch at noon"]);
    // Up on the empty input selects the newest message; `e` edits it.
    tmux.run(&["send-keys", "-t", Tmux::SESSION, "Up"]);
    tmux.run(&["send-keys", "-t", Tmux::SESSION, "e"]);
    tmux.type_line(", moved to one");
    runtime.block_on(async {
        let edited = bob.recv_type("edited").await;
        assert_eq!(
            (edited["seq"].clone(), edited["text"].clone()),
            (json!(1), json!("lunch at noon, moved to one"))
        );
        assert!(edited.get("re").is_none(), "{edited}");
    });
    tmux.wait_for(&["lunch at noon, moved to one", "(edited)"]);
    // Bob reacts to it, and says and withdraws something.
    runtime.block_on(async {
        let answer = bob
            .request(json!({"type":"react","room":"general","seq":1,"emoji":"👍"}))
            .await;
        assert_eq!(answer["on"], true, "{answer}");
        bob.say("general", "oops wrong room").await;
    });
    tmux.wait_for(&["👍 1", "bob: oops wrong room"]);
    runtime.block_on(async {
        let answer = bob
            .request(json!({"type":"delete","room":"general","seq":2}))
            .await;
        assert_eq!(answer["type"], "deleted", "{answer}");
    });
    let screen = tmux.wait_for(&["message deleted"]);
    assert!(!screen.contains("oops wrong room"), "{screen}");
    tmux.run(&["send-keys", "-t", Tmux::SESSION, "C-c"]);
}
