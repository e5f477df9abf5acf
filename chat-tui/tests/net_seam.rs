//! The network task at the reconnect seam, against a scripted in-process
//! server: the cases a real server cannot be made to produce on demand,
//! such as a connection that drops after a message was stored but before
//! its `ack`. A line must then be acknowledged from what the server holds,
//! never sent twice, and a line the server never got must be sent again.
//! Also: a resume asks for the changes (edits, deletions, reactions) missed
//! since the last `rev` it is sure of, and `/export` pages through history.

use std::time::Duration;

use chat_proto::{decode_client, encode, ClientEvent, MessageRecord, Request, ServerEvent};
use chat_tui::net::{NetClient, NetCommand, NetConfig, NetEvent};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const LIMIT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<TcpStream>;

async fn accept(listener: &TcpListener) -> Ws {
    let (stream, _) = timeout(LIMIT, listener.accept())
        .await
        .expect("no connection in time")
        .expect("accept");
    tokio_tungstenite::accept_async(stream)
        .await
        .expect("handshake")
}

async fn recv(ws: &mut Ws) -> Request {
    loop {
        let message = timeout(LIMIT, ws.next())
            .await
            .expect("no request in time")
            .expect("client closed")
            .expect("socket error");
        if let Message::Text(text) = message {
            return decode_client(text.as_str()).expect("valid request");
        }
    }
}

async fn send(ws: &mut Ws, event: ServerEvent) {
    ws.send(Message::text(encode(&event))).await.expect("send");
}

fn record(seq: u64, user: &str, text: &str) -> MessageRecord {
    MessageRecord {
        room: "general".into(),
        seq,
        user: user.into(),
        text: text.into(),
        ts: 1_764_000_000_000 + seq as i64,
        ..Default::default()
    }
}

/// Answers the login, and the join with `joined` + one `history`; returns
/// the join's `since`.
async fn login_and_join(ws: &mut Ws, last_seq: u64, backlog: Vec<MessageRecord>) -> Option<u64> {
    let login = recv(ws).await;
    assert!(
        matches!(login.event, ClientEvent::Login { .. }),
        "{login:?}"
    );
    send(
        ws,
        ServerEvent::Welcome {
            user: "alice".into(),
            admin: false,
            protocol: 1,
            server: "fake".into(),
            features: Vec::new(),
            rooms: Vec::new(),
            re: login.id,
        },
    )
    .await;
    let join = recv(ws).await;
    let ClientEvent::Join { room, since, .. } = join.event else {
        panic!("expected join, got {join:?}");
    };
    assert_eq!(room, "general");
    send(
        ws,
        ServerEvent::Joined {
            room: room.clone(),
            last_seq,
            members: vec!["alice".into()],
            rev: 0,
            re: join.id,
        },
    )
    .await;
    send(
        ws,
        ServerEvent::History {
            room,
            messages: backlog,
            has_more: false,
            re: None,
        },
    )
    .await;
    since
}

/// The next `send` request: (id, text).
async fn recv_send(ws: &mut Ws) -> (String, String) {
    loop {
        let request = recv(ws).await;
        if let ClientEvent::Send { text, .. } = request.event {
            return (request.id.expect("sends carry an id"), text);
        }
    }
}

async fn start() -> (TcpListener, NetConfig) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut config = NetConfig::new(format!("ws://127.0.0.1:{port}/ws"), "alice", "password");
    config.backoff_min = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(100);
    (listener, config)
}

async fn acks(client: &mut NetClient, count: usize) -> Vec<(String, u64)> {
    let mut acks = Vec::new();
    while acks.len() < count {
        let event = timeout(LIMIT, client.recv())
            .await
            .expect("no event in time")
            .expect("task ended");
        match event {
            NetEvent::Ack { id, seq, .. } => acks.push((id, seq)),
            NetEvent::SendFailed { id, message, .. } => panic!("{id} failed: {message}"),
            _ => {}
        }
    }
    acks
}

fn send_command(id: &str, text: &str) -> NetCommand {
    NetCommand::Send {
        id: id.into(),
        room: "general".into(),
        text: text.into(),
    }
}

#[tokio::test]
async fn echoed_line_is_acknowledged_and_unechoed_line_is_resent() {
    let (listener, config) = start().await;
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        assert_eq!(login_and_join(&mut ws, 0, vec![]).await, None);
        let (id, text) = recv_send(&mut ws).await;
        assert_eq!((id.as_str(), text.as_str()), ("s1", "stored"));
        // Stored and broadcast, but the connection dies before the ack.
        send(&mut ws, ServerEvent::Message(record(1, "alice", "stored"))).await;
        let (id, _) = recv_send(&mut ws).await;
        assert_eq!(id, "s2");
        drop(ws);

        let mut ws = accept(&listener).await;
        assert_eq!(login_and_join(&mut ws, 1, vec![]).await, Some(1));
        let (id, text) = recv_send(&mut ws).await;
        assert_eq!(
            (id.as_str(), text.as_str()),
            ("s2", "lost"),
            "only the lost line again"
        );
        send(
            &mut ws,
            ServerEvent::Ack {
                re: Some(id),
                room: "general".into(),
                seq: 2,
                ts: 0,
            },
        )
        .await;
        ws
    });
    let mut client = NetClient::connect(config).await.expect("connect");
    client.send(NetCommand::Join {
        room: "general".into(),
    });
    client.send(send_command("s1", "stored"));
    client.send(send_command("s2", "lost"));
    assert_eq!(
        acks(&mut client, 2).await,
        [("s1".into(), 1), ("s2".into(), 2)]
    );
    let _ws = timeout(LIMIT, server)
        .await
        .expect("server done")
        .expect("server ok");
}

#[tokio::test]
async fn line_stored_before_the_drop_is_found_in_the_resume() {
    let (listener, config) = start().await;
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        login_and_join(&mut ws, 3, vec![record(3, "bob", "old")]).await;
        let (id, _) = recv_send(&mut ws).await;
        assert_eq!(id, "s1");
        // Stored as seq 4, then the connection dies: no echo, no ack.
        drop(ws);

        let mut ws = accept(&listener).await;
        let since = login_and_join(
            &mut ws,
            5,
            vec![record(4, "alice", "maybe"), record(5, "bob", "reply")],
        )
        .await;
        assert_eq!(since, Some(3));
        // The next send must be the new line, not "maybe" again.
        let (id, text) = recv_send(&mut ws).await;
        assert_eq!((id.as_str(), text.as_str()), ("s2", "next"));
        send(
            &mut ws,
            ServerEvent::Ack {
                re: Some(id),
                room: "general".into(),
                seq: 6,
                ts: 0,
            },
        )
        .await;
        ws
    });
    let mut client = NetClient::connect(config).await.expect("connect");
    client.send(NetCommand::Join {
        room: "general".into(),
    });
    client.send(send_command("s1", "maybe"));
    assert_eq!(acks(&mut client, 1).await, [("s1".into(), 4)]);
    client.send(send_command("s2", "next"));
    assert_eq!(acks(&mut client, 1).await, [("s2".into(), 6)]);
    let _ws = timeout(LIMIT, server)
        .await
        .expect("server done")
        .expect("server ok");
}

#[tokio::test]
async fn backlog_overlapping_live_messages_is_not_delivered_twice() {
    let (listener, config) = start().await;
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        login_and_join(
            &mut ws,
            2,
            vec![record(1, "bob", "a"), record(2, "bob", "b")],
        )
        .await;
        send(&mut ws, ServerEvent::Message(record(3, "bob", "c"))).await;
        // A message repeated (as after a fan-out retry) is dropped too.
        send(&mut ws, ServerEvent::Message(record(3, "bob", "c"))).await;
        drop(ws);
        let mut ws = accept(&listener).await;
        // A careless server resending what the client holds.
        let since = login_and_join(
            &mut ws,
            4,
            vec![
                record(2, "bob", "b"),
                record(3, "bob", "c"),
                record(4, "bob", "d"),
            ],
        )
        .await;
        assert_eq!(since, Some(3));
        send(&mut ws, ServerEvent::Message(record(5, "bob", "e"))).await;
        ws
    });
    let mut client = NetClient::connect(config).await.expect("connect");
    client.send(NetCommand::Join {
        room: "general".into(),
    });
    let mut seqs = Vec::new();
    while !seqs.contains(&5) {
        let event = timeout(LIMIT, client.recv())
            .await
            .expect("no event in time")
            .expect("task ended");
        match event {
            NetEvent::Backlog { messages, .. } => seqs.extend(messages.iter().map(|m| m.seq)),
            NetEvent::Message(m) => seqs.push(m.seq),
            _ => {}
        }
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let _ws = timeout(LIMIT, server)
        .await
        .expect("server done")
        .expect("server ok");
}

#[tokio::test]
async fn a_busy_server_is_asked_again_after_a_pause() {
    let (listener, config) = start().await;
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        for _ in 0..2 {
            let login = recv(&mut ws).await;
            assert!(matches!(login.event, ClientEvent::Login { .. }));
            send(
                &mut ws,
                ServerEvent::error(
                    chat_proto::ErrorCode::Busy,
                    "too many logins waiting: try again in a moment",
                    login.id,
                ),
            )
            .await;
        }
        // The third time, on the same connection, it works.
        let login = recv(&mut ws).await;
        assert!(matches!(login.event, ClientEvent::Login { .. }));
        send(
            &mut ws,
            ServerEvent::Welcome {
                user: "alice".into(),
                admin: false,
                protocol: 1,
                server: "fake".into(),
                features: Vec::new(),
                rooms: Vec::new(),
                re: login.id,
            },
        )
        .await;
        ws
    });
    let started = std::time::Instant::now();
    let client = timeout(LIMIT, NetClient::connect(config))
        .await
        .expect("connect in time")
        .expect("logged in after two busy answers");
    // Two pauses of 250 ms and 500 ms (-20% at least) came before the third
    // try: a lower bound, which a slow machine can only exceed.
    assert!(started.elapsed() >= Duration::from_millis(550));
    assert_eq!(client.session.user, "alice");
    let _ws = server.await.expect("server script");
}

#[tokio::test]
async fn identical_lines_in_flight_are_acknowledged_one_each() {
    let (listener, config) = start().await;
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        login_and_join(&mut ws, 0, vec![]).await;
        let (first, _) = recv_send(&mut ws).await;
        let (second, _) = recv_send(&mut ws).await;
        // The first comes back before its ack, then both acks arrive.
        send(&mut ws, ServerEvent::Message(record(1, "alice", "same"))).await;
        for (id, seq) in [(first, 1), (second, 2)] {
            send(
                &mut ws,
                ServerEvent::Ack {
                    re: Some(id),
                    room: "general".into(),
                    seq,
                    ts: 0,
                },
            )
            .await;
        }
        send(&mut ws, ServerEvent::Message(record(2, "alice", "same"))).await;
        ws
    });
    let mut client = NetClient::connect(config).await.expect("connect");
    client.send(NetCommand::Join {
        room: "general".into(),
    });
    client.send(send_command("s1", "same"));
    client.send(send_command("s2", "same"));
    // One acknowledgement each, the first at its echo: never twice, never
    // the second for the first's echo. The last echo comes after both acks
    // on the wire, so every event up to it tells.
    let mut acks = Vec::new();
    loop {
        let event = timeout(LIMIT, client.recv())
            .await
            .expect("no event in time")
            .expect("task ended");
        match event {
            NetEvent::Ack { id, seq, .. } => acks.push((id, seq)),
            NetEvent::Message(m) if m.seq == 2 => break,
            _ => {}
        }
    }
    assert_eq!(acks, [("s1".to_owned(), 1), ("s2".to_owned(), 2)]);
    let _ws = timeout(LIMIT, server)
        .await
        .expect("server done")
        .expect("server ok");
}

/// Answers the login (from a server that counts changes) and the join
/// with `joined` carrying `rev` and one `history`; returns the join's
/// `since` and `since_rev`.
async fn login_and_join_at_rev(
    ws: &mut Ws,
    last_seq: u64,
    rev: u64,
    backlog: Vec<MessageRecord>,
) -> (Option<u64>, Option<u64>) {
    let login = recv(ws).await;
    send(
        ws,
        ServerEvent::Welcome {
            user: "alice".into(),
            admin: false,
            protocol: 1,
            server: "fake".into(),
            features: vec!["edit".into()],
            rooms: Vec::new(),
            re: login.id,
        },
    )
    .await;
    let join = recv(ws).await;
    let ClientEvent::Join {
        room,
        since,
        since_rev,
        ..
    } = join.event
    else {
        panic!("expected join, got {join:?}");
    };
    send(
        ws,
        ServerEvent::Joined {
            room: room.clone(),
            last_seq,
            members: vec!["alice".into()],
            rev,
            re: join.id,
        },
    )
    .await;
    send(
        ws,
        ServerEvent::History {
            room,
            messages: backlog,
            has_more: false,
            re: None,
        },
    )
    .await;
    (since, since_rev)
}

/// The next event that `pick` keeps.
async fn next_where<T>(client: &mut NetClient, pick: impl Fn(NetEvent) -> Option<T>) -> T {
    loop {
        let event = timeout(LIMIT, client.recv())
            .await
            .expect("no event in time")
            .expect("task ended");
        if let Some(found) = pick(event) {
            return found;
        }
    }
}

#[tokio::test]
async fn resume_asks_for_the_changes_missed_since_the_last_rev() {
    let (listener, config) = start().await;
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        let first = vec![record(1, "bob", "hello"), record(2, "bob", "typo")];
        assert_eq!(
            login_and_join_at_rev(&mut ws, 2, 5, first).await,
            (None, None)
        );
        send(
            &mut ws,
            ServerEvent::Edited {
                room: "general".into(),
                seq: 2,
                text: "fixed".into(),
                edited_ts: 1,
                rev: 6,
                re: None,
            },
        )
        .await;
        // Frames arrive in order: the client reads the edit, then the drop.
        drop(ws);

        // The resume carries the rev of the last live change.
        let mut ws = accept(&listener).await;
        let (since, since_rev) = login_and_join_at_rev(&mut ws, 2, 9, vec![]).await;
        assert_eq!((since, since_rev), (Some(2), Some(6)));
        let mut gone = record(1, "bob", "");
        gone.deleted = true;
        send(
            &mut ws,
            ServerEvent::Changes {
                room: "general".into(),
                messages: vec![gone],
                rev: 9,
            },
        )
        .await;
        // Dropped before any live event: were the changes all in? The next
        // resume asks again from the same rev.
        drop(ws);

        let mut ws = accept(&listener).await;
        let (since, since_rev) = login_and_join_at_rev(&mut ws, 2, 9, vec![]).await;
        assert_eq!((since, since_rev), (Some(2), Some(6)));
        send(&mut ws, ServerEvent::Message(record(3, "bob", "live"))).await;
        send(
            &mut ws,
            ServerEvent::Reaction {
                room: "general".into(),
                seq: 3,
                user: "bob".into(),
                emoji: "🎉".into(),
                on: true,
                rev: 10,
                re: None,
            },
        )
        .await;
        drop(ws);

        // After live events the resume starts from the newest rev.
        let mut ws = accept(&listener).await;
        let (since, since_rev) = login_and_join_at_rev(&mut ws, 3, 10, vec![]).await;
        assert_eq!((since, since_rev), (Some(3), Some(10)));
        ws
    });
    let mut client = NetClient::connect(config).await.expect("connect");
    client.send(NetCommand::Join {
        room: "general".into(),
    });
    let edited = next_where(&mut client, |e| match e {
        NetEvent::Edited { seq, text, .. } => Some((seq, text)),
        _ => None,
    })
    .await;
    assert_eq!(edited, (2, "fixed".to_owned()));
    let changes = next_where(&mut client, |e| match e {
        NetEvent::Changes { room, messages } => Some((room, messages)),
        _ => None,
    })
    .await;
    assert_eq!(changes.0, "general");
    assert!(changes.1[0].deleted);
    let reaction = next_where(&mut client, |e| match e {
        NetEvent::Reaction { seq, emoji, on, .. } => Some((seq, emoji, on)),
        _ => None,
    })
    .await;
    assert_eq!(reaction, (3, "🎉".to_owned(), true));
    let _ws = timeout(LIMIT, server)
        .await
        .expect("server done")
        .expect("server ok");
}

#[tokio::test]
async fn export_pages_through_the_whole_history_into_the_file() {
    let (listener, config) = start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("general.md");
    let mut older = vec![record(1, "bob", "first"), record(2, "alice", "second")];
    let mut reply = record(3, "bob", "answer");
    reply.reply_to = Some(1);
    reply.reactions.set("👍", "alice", true);
    let newer = vec![reply, record(4, "alice", "last")];
    let all: std::collections::BTreeMap<u64, MessageRecord> = older
        .iter()
        .chain(newer.iter())
        .map(|m| (m.seq, m.clone()))
        .collect();
    let server = tokio::spawn(async move {
        let mut ws = accept(&listener).await;
        let login = recv(&mut ws).await;
        send(
            &mut ws,
            ServerEvent::Welcome {
                user: "alice".into(),
                admin: false,
                protocol: 1,
                server: "fake".into(),
                features: Vec::new(),
                rooms: Vec::new(),
                re: login.id,
            },
        )
        .await;
        for (expect_before, page, has_more) in [
            (None, newer, true),
            (Some(3), std::mem::take(&mut older), false),
        ] {
            let request = recv(&mut ws).await;
            let ClientEvent::History { room, before, .. } = request.event else {
                panic!("expected history, got {request:?}");
            };
            assert_eq!((room.as_str(), before), ("general", expect_before));
            send(
                &mut ws,
                ServerEvent::History {
                    room,
                    messages: page,
                    has_more,
                    re: request.id,
                },
            )
            .await;
        }
        ws
    });
    let mut client = NetClient::connect(config).await.expect("connect");
    client.send(NetCommand::Export {
        room: "general".into(),
        path: path.clone(),
    });
    let (written, count) = next_where(&mut client, |e| match e {
        NetEvent::Exported { path, messages, .. } => Some((path, messages)),
        NetEvent::ExportFailed { reason, .. } => panic!("export failed: {reason}"),
        _ => None,
    })
    .await;
    assert_eq!((written, count), (path.clone(), 4));
    let text = std::fs::read_to_string(&path).expect("export file");
    assert_eq!(text, chat_tui::export::markdown("general", &all));
    assert!(
        text.contains("> ↪ #1 bob: first\nanswer\n👍 alice\n"),
        "{text}"
    );
    let _ws = timeout(LIMIT, server)
        .await
        .expect("server done")
        .expect("server ok");
}
