//! The state machine, driven by events without a terminal or a socket.

use super::*;
use crate::clock;
use crate::net::Session;
use crossterm::event::{KeyEventState, MouseButton};

const BASE_TS: i64 = 1_764_000_000_000;

fn app() -> App {
    let mut app = App::new("alice", "ws://127.0.0.1:8765/ws", clock::utc);
    app.size = (80, 24);
    app
}

fn msg(room: &str, seq: u64, user: &str, text: &str) -> MessageRecord {
    MessageRecord {
        room: room.into(),
        seq,
        user: user.into(),
        text: text.into(),
        ts: BASE_TS + seq as i64 * 60_000,
        ..Default::default()
    }
}

fn key(code: KeyCode) -> Event {
    Event::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn ctrl(c: char) -> Event {
    Event::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
}

fn alt(code: KeyCode) -> Event {
    Event::Key(KeyEvent::new(code, KeyModifiers::ALT))
}

fn net(app: &mut App, event: NetEvent) -> Option<Action> {
    update(app, Event::Net(event))
}

fn type_str(app: &mut App, text: &str) {
    for c in text.chars() {
        update(app, key(KeyCode::Char(c)));
    }
}

fn enter(app: &mut App, line: &str) -> Option<Action> {
    type_str(app, line);
    update(app, key(KeyCode::Enter))
}

/// Joins `room` and delivers its first backlog (`count` messages from bob,
/// seqs 1..=count, newest page only when `has_more`).
fn join_with(app: &mut App, room: &str, count: u64, has_more: bool) {
    let action = app.join(room);
    assert_eq!(
        action,
        Some(Action::Net(NetCommand::Join { room: room.into() }))
    );
    net(
        app,
        NetEvent::Joined {
            room: room.into(),
            last_seq: count,
            members: vec!["alice".into(), "bob".into()],
        },
    );
    let first = if has_more {
        count.saturating_sub(49).max(1)
    } else {
        1
    };
    let messages = (first..=count)
        .map(|seq| msg(room, seq, "bob", &format!("message {seq}")))
        .collect();
    net(
        app,
        NetEvent::Backlog {
            room: room.into(),
            messages,
            has_more,
            resumed: false,
        },
    );
}

#[test]
fn join_command_opens_the_room_and_joins() {
    let mut app = app();
    let action = enter(&mut app, "/join general");
    assert_eq!(
        action,
        Some(Action::Net(NetCommand::Join {
            room: "general".into()
        }))
    );
    assert_eq!(app.rooms.len(), 1);
    assert!(!app.rooms[0].joined);
    net(
        &mut app,
        NetEvent::Joined {
            room: "general".into(),
            last_seq: 2,
            members: vec!["alice".into(), "bob".into()],
        },
    );
    net(
        &mut app,
        NetEvent::Backlog {
            room: "general".into(),
            messages: vec![
                msg("general", 1, "bob", "hi"),
                msg("general", 2, "bob", "yo"),
            ],
            has_more: false,
            resumed: false,
        },
    );
    let room = &app.rooms[0];
    assert!(room.joined);
    assert_eq!(room.log.len(), 2);
    assert_eq!(room.unread, 0, "history is not unread");
    assert_eq!(room.members.len(), 2);
    // Joining again only switches to it.
    assert_eq!(enter(&mut app, "/join #general"), None);
    assert_eq!(app.rooms.len(), 1);
}

#[test]
fn bad_room_names_are_refused_locally() {
    let mut app = app();
    assert_eq!(enter(&mut app, "/join no/slash"), None);
    assert!(app.rooms.is_empty());
    assert!(app.notice.as_ref().is_some_and(|n| n.error));
}

#[test]
fn sending_shows_pending_until_ack() {
    let mut app = app();
    join_with(&mut app, "general", 0, false);
    let action = enter(&mut app, "hello there  ");
    let Some(Action::Net(NetCommand::Send { id, room, text })) = action else {
        panic!("expected a send, got {action:?}");
    };
    assert_eq!(room, "general");
    assert_eq!(text, "hello there", "trailing whitespace trimmed");
    assert_eq!(app.rooms[0].pending.len(), 1);
    assert!(app.input.is_empty());
    net(
        &mut app,
        NetEvent::Ack {
            id,
            room: "general".into(),
            seq: 1,
            ts: BASE_TS,
        },
    );
    assert!(app.rooms[0].pending.is_empty());
    net(
        &mut app,
        NetEvent::Message(msg("general", 1, "alice", "hello there")),
    );
    let entry = &app.rooms[0].log[&1];
    assert!(entry.own);
    assert_eq!(app.rooms[0].unread, 0);
}

#[test]
fn pending_lines_are_known_by_id_so_identical_lines_stay_apart() {
    let mut app = app();
    join_with(&mut app, "general", 0, false);
    let ids: Vec<String> = (0..2)
        .map(|_| match enter(&mut app, "same") {
            Some(Action::Net(NetCommand::Send { id, .. })) => id,
            other => panic!("no send: {other:?}"),
        })
        .collect();
    assert_eq!(app.rooms[0].pending.len(), 2);
    // The network task acknowledges the second (at its echo, or its ack):
    // exactly that one goes, though both say the same.
    net(
        &mut app,
        NetEvent::Ack {
            id: ids[1].clone(),
            room: "general".into(),
            seq: 2,
            ts: BASE_TS,
        },
    );
    let left: Vec<&str> = app.rooms[0].pending.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(left, [ids[0].as_str()]);
    // An echo of our own line changes nothing here: its ack does.
    net(
        &mut app,
        NetEvent::Message(msg("general", 2, "alice", "same")),
    );
    assert_eq!(app.rooms[0].pending.len(), 1);
    net(
        &mut app,
        NetEvent::Ack {
            id: ids[0].clone(),
            room: "general".into(),
            seq: 1,
            ts: BASE_TS,
        },
    );
    assert!(app.rooms[0].pending.is_empty());
}

#[test]
fn send_without_room_is_a_hint_and_keeps_the_text() {
    let mut app = app();
    assert_eq!(enter(&mut app, "hello"), None);
    assert_eq!(app.input.text(), "hello");
    assert!(app.notice.is_some());
}

#[test]
fn too_long_text_is_not_sent() {
    let mut app = app();
    join_with(&mut app, "general", 0, false);
    let long = "x".repeat(chat_proto::limits::MAX_TEXT_BYTES + 1);
    update(&mut app, Event::Paste(long.clone()));
    assert_eq!(update(&mut app, key(KeyCode::Enter)), None);
    assert_eq!(app.input.text(), long, "kept for editing");
    assert!(app.rooms[0].pending.is_empty());
}

#[test]
fn unread_counts_mentions_and_the_new_messages_line() {
    let mut app = app();
    join_with(&mut app, "general", 3, false);
    join_with(&mut app, "random", 0, false);
    assert_eq!(app.current, 1);
    net(
        &mut app,
        NetEvent::Message(msg("general", 4, "bob", "anyone?")),
    );
    net(
        &mut app,
        NetEvent::Message(msg("general", 5, "carol", "hey @Alice, look")),
    );
    net(
        &mut app,
        NetEvent::Message(msg("general", 6, "alice", "from my phone")),
    );
    let general = &app.rooms[0];
    assert_eq!(general.unread, 2, "own messages are not unread");
    assert!(general.mentioned);
    // Back to general: counts reset, the marker sits above the first unread.
    update(&mut app, alt(KeyCode::Char('1')));
    assert_eq!(app.current, 0);
    let general = &app.rooms[0];
    assert_eq!(general.unread, 0);
    assert!(!general.mentioned);
    assert_eq!(general.marker, Some(4));
    // Leaving and coming back with nothing new: no marker.
    update(&mut app, ctrl('n'));
    update(&mut app, ctrl('p'));
    assert_eq!(app.rooms[0].marker, None);
}

#[test]
fn mention_matching() {
    assert!(mentions("hi alice", "alice"));
    assert!(mentions("@ALICE: look", "alice"));
    assert!(mentions("thanks alice.", "alice"));
    assert!(!mentions("malice aforethought", "alice"));
    assert!(!mentions("alice_b is here", "alice"));
    assert!(!mentions("", "alice"));
}

#[test]
fn duplicates_and_unknown_rooms_are_ignored() {
    let mut app = app();
    join_with(&mut app, "general", 2, false);
    join_with(&mut app, "random", 0, false);
    net(
        &mut app,
        NetEvent::Message(msg("general", 2, "bob", "again")),
    );
    assert_eq!(app.rooms[0].log[&2].text, "message 2");
    assert_eq!(app.rooms[0].unread, 0);
    // Events for rooms not joined, acks for unknown ids: no panic, no change.
    net(&mut app, NetEvent::Message(msg("elsewhere", 1, "bob", "x")));
    net(
        &mut app,
        NetEvent::Ack {
            id: "nope".into(),
            room: "nowhere".into(),
            seq: 1,
            ts: 0,
        },
    );
    net(
        &mut app,
        NetEvent::Typing {
            room: "nowhere".into(),
            user: "bob".into(),
        },
    );
    net(
        &mut app,
        NetEvent::Left {
            room: "nowhere".into(),
        },
    );
    assert_eq!(app.rooms.len(), 2);
}

#[test]
fn text_from_others_is_sanitized_on_arrival() {
    let mut app = app();
    join_with(&mut app, "general", 0, false);
    net(
        &mut app,
        NetEvent::Message(msg(
            "general",
            1,
            "bob\u{1b}[31m",
            "\u{1b}[2J\u{1b}]0;pwned\u{7}hi",
        )),
    );
    let entry = &app.rooms[0].log[&1];
    assert_eq!(entry.text, "␛[2J␛]0;pwned␇hi");
    assert_eq!(entry.user, "bob␛[31m");
}

#[test]
fn unknown_command_is_a_hint_not_a_message() {
    let mut app = app();
    join_with(&mut app, "general", 0, false);
    assert_eq!(enter(&mut app, "/frobnicate now"), None);
    assert!(app.rooms[0].pending.is_empty());
    assert_eq!(app.input.text(), "/frobnicate now");
    let notice = app.notice.clone().unwrap();
    assert!(notice.error && notice.text.contains("/help"), "{notice:?}");
    // A doubled slash sends a line that starts with one.
    app.input.submit();
    let action = enter(&mut app, "//shrug");
    assert!(matches!(action, Some(Action::Net(NetCommand::Send { text, .. })) if text == "/shrug"));
}

#[test]
fn leave_and_delete() {
    let mut app = app();
    join_with(&mut app, "general", 0, false);
    join_with(&mut app, "random", 0, false);
    assert_eq!(
        enter(&mut app, "/leave"),
        Some(Action::Net(NetCommand::Leave {
            room: "random".into()
        }))
    );
    assert_eq!(app.rooms.len(), 1);
    assert_eq!(app.current, 0);
    // Not an admin: refused without asking the server.
    assert_eq!(enter(&mut app, "/delete general"), None);
    assert!(app.notice.as_ref().unwrap().text.contains("admin"));
    app.admin = true;
    assert_eq!(
        enter(&mut app, "/delete general"),
        Some(Action::Net(NetCommand::DeleteRoom {
            room: "general".into()
        }))
    );
    net(
        &mut app,
        NetEvent::RoomDeleted {
            room: "general".into(),
        },
    );
    assert!(app.rooms.is_empty());
    assert_eq!(enter(&mut app, "/leave"), None);
}

#[test]
fn leaving_and_joining_again_survives_the_late_left() {
    let mut app = app();
    join_with(&mut app, "general", 0, false);
    enter(&mut app, "/leave");
    assert!(enter(&mut app, "/join general").is_some());
    net(
        &mut app,
        NetEvent::Left {
            room: "general".into(),
        },
    );
    assert_eq!(app.rooms.len(), 1);
}

#[test]
fn room_browser_lists_and_joins() {
    let mut app = app();
    assert_eq!(
        enter(&mut app, "/rooms"),
        Some(Action::Net(NetCommand::Rooms))
    );
    assert!(matches!(
        app.overlay,
        Some(Overlay::Rooms { list: None, .. })
    ));
    let summary = |name: &str, members, last_seq| RoomSummary {
        name: name.into(),
        members,
        last_seq,
        last_ts: None,
    };
    net(
        &mut app,
        NetEvent::Rooms(vec![
            summary("quiet", 0, 3),
            summary("busy", 5, 900),
            summary("bustling", 5, 1200),
        ]),
    );
    let Some(Overlay::Rooms {
        list: Some(list), ..
    }) = &app.overlay
    else {
        panic!("no list");
    };
    let order: Vec<&str> = filter_rooms(list, "")
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(order, ["bustling", "busy", "quiet"]);
    update(&mut app, key(KeyCode::Down));
    let action = update(&mut app, key(KeyCode::Enter));
    assert_eq!(
        action,
        Some(Action::Net(NetCommand::Join {
            room: "busy".into()
        }))
    );
    assert!(app.overlay.is_none());
    // Typing filters.
    enter(&mut app, "/rooms");
    net(
        &mut app,
        NetEvent::Rooms(vec![summary("quiet", 0, 3), summary("busy", 5, 9)]),
    );
    type_str(&mut app, "qu");
    let action = update(&mut app, key(KeyCode::Enter));
    assert_eq!(
        action,
        Some(Action::Net(NetCommand::Join {
            room: "quiet".into()
        }))
    );
}

#[test]
fn help_overlay_opens_and_closes() {
    let mut app = app();
    update(&mut app, key(KeyCode::F(1)));
    assert_eq!(app.overlay, Some(Overlay::Help));
    // Typing does not reach the input under the overlay.
    update(&mut app, key(KeyCode::Char('x')));
    assert!(app.input.is_empty());
    update(&mut app, key(KeyCode::Esc));
    assert_eq!(app.overlay, None);
    enter(&mut app, "/help");
    assert_eq!(app.overlay, Some(Overlay::Help));
}

#[test]
fn quitting() {
    let mut app = app();
    assert_eq!(update(&mut app, ctrl('c')), Some(Action::Quit));
    assert_eq!(enter(&mut app, "/quit"), Some(Action::Quit));
    // Ctrl+C works under an overlay too.
    update(&mut app, key(KeyCode::F(1)));
    assert_eq!(update(&mut app, ctrl('c')), Some(Action::Quit));
}

#[test]
fn only_key_presses_count() {
    let mut app = app();
    let mut release = KeyEvent::new(KeyCode::Char('x'), KeyModifiers::NONE);
    release.kind = KeyEventKind::Release;
    release.state = KeyEventState::NONE;
    update(&mut app, Event::Key(release));
    assert!(app.input.is_empty());
}

#[test]
fn line_editing_keys() {
    let mut app = app();
    join_with(&mut app, "general", 0, false);
    type_str(&mut app, "first");
    update(&mut app, alt(KeyCode::Enter));
    type_str(&mut app, "second word");
    assert_eq!(app.input.text(), "first\nsecond word");
    update(&mut app, ctrl('w'));
    assert_eq!(app.input.text(), "first\nsecond ");
    update(&mut app, ctrl('u'));
    assert_eq!(app.input.text(), "first\n");
    update(&mut app, key(KeyCode::Backspace));
    update(&mut app, key(KeyCode::Home));
    update(&mut app, key(KeyCode::Delete));
    update(&mut app, key(KeyCode::Right));
    update(&mut app, key(KeyCode::Char('X')));
    assert_eq!(app.input.text(), "iXrst");
    update(&mut app, key(KeyCode::Enter));
    update(
        &mut app,
        Event::Key(KeyEvent::new(KeyCode::Up, KeyModifiers::CONTROL)),
    );
    assert_eq!(app.input.text(), "iXrst");
    update(&mut app, key(KeyCode::Down));
    assert_eq!(app.input.text(), "");
}

#[test]
fn switching_rooms() {
    let mut app = app();
    for room in ["a", "b", "c"] {
        join_with(&mut app, room, 0, false);
    }
    assert_eq!(app.current, 2);
    update(&mut app, ctrl('n'));
    assert_eq!(app.current, 0, "wraps around");
    update(&mut app, ctrl('p'));
    assert_eq!(app.current, 2);
    update(&mut app, ctrl('n'));
    assert_eq!(app.current, 0);
    update(&mut app, alt(KeyCode::Char('2')));
    assert_eq!(app.current, 1);
    update(&mut app, alt(KeyCode::Char('9')));
    assert_eq!(app.current, 1, "no room 9");
    // A click on the room list (wide enough to show it) switches too.
    app.size = (100, 30);
    update(
        &mut app,
        Event::Mouse(MouseEvent {
            kind: MouseEventKind::Down(MouseButton::Left),
            column: 3,
            row: 3,
            modifiers: KeyModifiers::NONE,
        }),
    );
    assert_eq!(app.current, 2);
}

#[test]
fn offline_lines_stay_pending() {
    let mut app = app();
    join_with(&mut app, "general", 0, false);
    net(
        &mut app,
        NetEvent::Disconnected {
            reason: "connection closed".into(),
            retry_in: Some(Duration::from_secs(4)),
        },
    );
    assert!(matches!(app.link, Link::Reconnecting { .. }));
    assert!(!app.rooms[0].joined);
    let action = enter(&mut app, "typed offline");
    let Some(Action::Net(NetCommand::Send { id, .. })) = action else {
        panic!("the line goes to the network task's queue");
    };
    assert_eq!(app.rooms[0].pending.len(), 1);
    net(&mut app, NetEvent::Connecting);
    assert_eq!(app.link, Link::Connecting);
    net(
        &mut app,
        NetEvent::Connected(Session {
            user: "alice".into(),
            admin: false,
            server: "chat-server".into(),
            rooms: Vec::new(),
            features: Vec::new(),
        }),
    );
    assert_eq!(app.link, Link::Connected);
    net(
        &mut app,
        NetEvent::Ack {
            id,
            room: "general".into(),
            seq: 1,
            ts: BASE_TS,
        },
    );
    assert!(app.rooms[0].pending.is_empty());
    // Refused login on a reconnect: offline until asked.
    net(
        &mut app,
        NetEvent::Disconnected {
            reason: "login failed".into(),
            retry_in: None,
        },
    );
    assert!(matches!(app.link, Link::Offline { .. }));
    assert_eq!(
        enter(&mut app, "/reconnect"),
        Some(Action::Net(NetCommand::Reconnect))
    );
}

#[test]
fn resumed_backlog_counts_as_new() {
    let mut app = app();
    join_with(&mut app, "general", 3, false);
    join_with(&mut app, "random", 0, false);
    net(
        &mut app,
        NetEvent::Backlog {
            room: "general".into(),
            messages: vec![
                msg("general", 4, "bob", "missed"),
                msg("general", 5, "bob", "me too"),
            ],
            has_more: true,
            resumed: true,
        },
    );
    let general = &app.rooms[0];
    assert_eq!(general.unread, 2);
    assert!(!general.has_more, "a resume says nothing about older pages");
}

#[test]
fn failed_sends_are_marked() {
    let mut app = app();
    join_with(&mut app, "general", 0, false);
    let Some(Action::Net(NetCommand::Send { id, .. })) = enter(&mut app, "hi") else {
        panic!("no send");
    };
    net(
        &mut app,
        NetEvent::SendFailed {
            id,
            room: "general".into(),
            code: Some(ErrorCode::RateLimited),
            message: "slow down".into(),
        },
    );
    assert_eq!(
        app.rooms[0].pending[0].failed.as_deref(),
        Some("too fast, slow down")
    );
    // The next line sent clears the failed ones away.
    enter(&mut app, "again");
    assert_eq!(app.rooms[0].pending.len(), 1);
    assert!(app.rooms[0].pending[0].failed.is_none());
}

#[test]
fn server_errors_become_notices() {
    let mut app = app();
    net(
        &mut app,
        NetEvent::Error {
            code: Some(ErrorCode::Forbidden),
            message: "admins only".into(),
        },
    );
    let notice = app.notice.clone().unwrap();
    assert_eq!(notice.text, "forbidden: admins only");
    net(
        &mut app,
        NetEvent::JoinFailed {
            room: "x".into(),
            code: ErrorCode::InvalidName,
            message: "bad".into(),
        },
    );
    assert!(app.notice.unwrap().text.contains("cannot join"));
}

#[test]
fn presence_and_typing() {
    let mut app = app();
    join_with(&mut app, "general", 0, false);
    net(
        &mut app,
        NetEvent::Presence {
            room: "general".into(),
            user: "carol".into(),
            state: PresenceState::Joined,
        },
    );
    assert!(app.rooms[0].members.contains("carol"));
    net(
        &mut app,
        NetEvent::Typing {
            room: "general".into(),
            user: "carol".into(),
        },
    );
    let now = app.now;
    assert_eq!(app.rooms[0].typing_now("alice", now), ["carol"]);
    assert!(
        app.rooms[0]
            .typing_now("alice", now + TYPING_FADE)
            .is_empty(),
        "fades"
    );
    // A message from carol ends her typing at once.
    net(
        &mut app,
        NetEvent::Typing {
            room: "general".into(),
            user: "carol".into(),
        },
    );
    net(
        &mut app,
        NetEvent::Message(msg("general", 1, "carol", "done")),
    );
    assert!(app.rooms[0].typing_now("alice", now).is_empty());
    net(
        &mut app,
        NetEvent::Presence {
            room: "general".into(),
            user: "carol".into(),
            state: PresenceState::Left,
        },
    );
    assert!(!app.rooms[0].members.contains("carol"));
}

#[test]
fn typing_notices_are_throttled() {
    let mut app = app();
    join_with(&mut app, "general", 0, false);
    let typing = Some(Action::Net(NetCommand::Typing {
        room: "general".into(),
    }));
    assert_eq!(update(&mut app, key(KeyCode::Char('h'))), typing);
    assert_eq!(update(&mut app, key(KeyCode::Char('i'))), None);
    app.now += TYPING_EVERY;
    assert_eq!(update(&mut app, key(KeyCode::Char('!'))), typing);
    // Commands are not typing.
    app.input.submit();
    app.now += TYPING_EVERY;
    assert_eq!(update(&mut app, key(KeyCode::Char('/'))), None);
}

#[test]
fn tab_completes_names() {
    let mut app = app();
    join_with(&mut app, "general", 0, false);
    type_str(&mut app, "bo");
    update(&mut app, key(KeyCode::Tab));
    assert_eq!(app.input.text(), "bob: ");
    type_str(&mut app, "hi @b");
    update(&mut app, key(KeyCode::Tab));
    assert_eq!(app.input.text(), "bob: hi @bob ");
}

#[test]
fn scrolling_back_fetches_older_pages_and_keeps_the_view() {
    let mut app = app();
    // Messages 51..=100 loaded, older ones on the server.
    join_with(&mut app, "general", 100, true);
    assert_eq!(app.rooms[0].oldest_seq(), Some(51));
    let (width, height) = app.message_pane();
    let user = app.user.clone();
    let mut fetch = None;
    for _ in 0..10 {
        if let Some(action) = update(&mut app, key(KeyCode::PageUp)) {
            fetch = Some(action);
            break;
        }
    }
    assert_eq!(
        fetch,
        Some(Action::Net(NetCommand::History {
            room: "general".into(),
            before: Some(51),
            limit: PAGE_SIZE,
        }))
    );
    assert!(app.rooms[0].loading_older);
    // No second request while the first is out.
    assert_eq!(update(&mut app, key(KeyCode::PageUp)), None);
    let top = timeline::view_top(&app.rooms[0], &user, width, height).unwrap();
    assert!(app.rooms[0].anchor.is_some());
    let page = (1..=50)
        .map(|seq| msg("general", seq, "bob", &format!("message {seq}")))
        .collect();
    let action = net(
        &mut app,
        NetEvent::Page {
            room: "general".into(),
            before: Some(51),
            messages: page,
            has_more: false,
        },
    );
    assert_eq!(action, None, "nothing older to fetch");
    let room = &app.rooms[0];
    assert_eq!(room.oldest_seq(), Some(1));
    assert!(!room.has_more);
    assert!(!room.loading_older);
    // The same message stays on top; only the day separator that was above
    // it moved up to the older messages of the same day.
    assert_eq!(top.offset, -1);
    let top = Pos {
        seq: top.seq,
        offset: 0,
    };
    assert_eq!(
        timeline::view_top(room, &user, width, height),
        Some(top),
        "the same line stays at the top"
    );
    // New messages while scrolled back are counted below, not jumped to.
    net(
        &mut app,
        NetEvent::Message(msg("general", 101, "bob", "new")),
    );
    assert_eq!(app.rooms[0].unseen_below, 1);
    assert_eq!(
        timeline::view_top(&app.rooms[0], &user, width, height),
        Some(top)
    );
    // End (with the cursor at the end of an empty input) follows again.
    update(&mut app, key(KeyCode::End));
    assert_eq!(app.rooms[0].anchor, None);
    assert_eq!(app.rooms[0].unseen_below, 0);
}

#[test]
fn scrolling_down_returns_to_following() {
    let mut app = app();
    join_with(&mut app, "general", 200, false);
    update(&mut app, key(KeyCode::PageUp));
    update(&mut app, key(KeyCode::PageUp));
    assert!(app.rooms[0].anchor.is_some());
    update(&mut app, key(KeyCode::PageDown));
    update(&mut app, key(KeyCode::PageDown));
    assert_eq!(app.rooms[0].anchor, None);
    // The wheel scrolls three lines.
    let wheel = |kind| {
        Event::Mouse(MouseEvent {
            kind,
            column: 40,
            row: 10,
            modifiers: KeyModifiers::NONE,
        })
    };
    update(&mut app, wheel(MouseEventKind::ScrollUp));
    let anchor = app.rooms[0].anchor.expect("scrolled");
    update(&mut app, wheel(MouseEventKind::ScrollUp));
    let (width, _) = app.message_pane();
    let moved = timeline::scroll_down(
        &app.rooms[0],
        app.rooms[0].anchor.unwrap(),
        WHEEL_LINES,
        width,
    );
    assert_eq!(moved, Some(anchor));
    update(&mut app, wheel(MouseEventKind::ScrollDown));
    update(&mut app, wheel(MouseEventKind::ScrollDown));
    assert_eq!(app.rooms[0].anchor, None);
}

#[test]
fn end_moves_the_cursor_before_it_jumps() {
    let mut app = app();
    join_with(&mut app, "general", 200, false);
    update(&mut app, key(KeyCode::PageUp));
    type_str(&mut app, "abc");
    update(&mut app, key(KeyCode::Home));
    update(&mut app, key(KeyCode::End));
    assert!(app.input.at_end());
    assert!(app.rooms[0].anchor.is_some(), "first End moves the cursor");
    update(&mut app, key(KeyCode::End));
    assert!(app.rooms[0].anchor.is_none());
}

#[test]
fn memory_per_room_is_capped() {
    let mut app = app();
    join_with(&mut app, "general", 0, false);
    let messages: Vec<MessageRecord> = (1..=MAX_LOADED as u64 + 10)
        .map(|seq| msg("general", seq, "bob", "x"))
        .collect();
    net(
        &mut app,
        NetEvent::Backlog {
            room: "general".into(),
            messages,
            has_more: false,
            resumed: true,
        },
    );
    let room = &app.rooms[0];
    assert_eq!(room.log.len(), MAX_LOADED);
    assert_eq!(room.oldest_seq(), Some(11));
    assert!(room.has_more, "dropped messages can be fetched again");
}

#[test]
fn the_accounts_rooms_open_with_their_unread_counts() {
    let mut app = app();
    let joins = app.open_account_rooms(&[
        AccountRoom {
            name: "alice+bob".into(),
            last_seq: 4,
            read: 4,
            private: true,
        },
        AccountRoom {
            name: "general".into(),
            last_seq: 10,
            read: 7,
            private: false,
        },
        AccountRoom {
            name: "ops".into(),
            last_seq: 0,
            read: 0,
            private: true,
        },
    ]);
    assert_eq!(
        joins,
        ["alice+bob", "general", "ops"].map(|room| NetCommand::Join { room: room.into() })
    );
    let labels: Vec<String> = app.rooms.iter().map(|r| r.label("alice")).collect();
    assert_eq!(labels, ["@bob", "general", "*ops"]);
    let unread: Vec<usize> = app.rooms.iter().map(|r| r.unread).collect();
    assert_eq!(unread, [0, 3, 0]);
    // A room already open (from the config file) is not opened twice.
    assert!(app
        .open_account_rooms(&[AccountRoom {
            name: "general".into(),
            last_seq: 12,
            read: 7,
            private: false,
        }])
        .is_empty());
}

#[test]
fn a_read_marker_goes_out_once_the_newest_line_is_in_view() {
    let mut app = app();
    app.link = Link::Connected;
    join_with(&mut app, "general", 3, false);
    // The join's own update already sent it, or the next one does.
    app.rooms[0].read = 0;
    assert_eq!(
        update(&mut app, Event::Tick),
        Some(Action::Net(NetCommand::Read {
            room: "general".into(),
            seq: 3,
        }))
    );
    assert_eq!(update(&mut app, Event::Tick), None, "sent once");
    // A new message in view moves it on.
    let action = net(&mut app, NetEvent::Message(msg("general", 4, "bob", "hi")));
    assert_eq!(
        action,
        Some(Action::Net(NetCommand::Read {
            room: "general".into(),
            seq: 4,
        }))
    );
    // Scrolled back, the newest line is not in view: nothing is sent.
    for seq in 5..=60 {
        net(
            &mut app,
            NetEvent::Message(msg("general", seq, "bob", "more")),
        );
    }
    update(&mut app, key(KeyCode::PageUp));
    assert!(app.rooms[0].anchor.is_some());
    assert_eq!(
        net(
            &mut app,
            NetEvent::Message(msg("general", 61, "bob", "unseen"))
        ),
        None
    );
    // Offline, nothing either.
    update(&mut app, key(KeyCode::End));
    app.link = Link::Connecting;
    assert_eq!(update(&mut app, Event::Tick), None);
}

#[test]
fn a_read_on_another_device_clears_the_unread_count() {
    let mut app = app();
    join_with(&mut app, "general", 1, false);
    join_with(&mut app, "random", 1, false);
    app.switch_to(1);
    for seq in 2..=4 {
        net(
            &mut app,
            NetEvent::Message(msg("general", seq, "bob", "@alice look")),
        );
    }
    assert_eq!((app.rooms[0].unread, app.rooms[0].mentioned), (3, true));
    // Read up to 3 elsewhere: one left.
    net(
        &mut app,
        NetEvent::Read {
            room: "general".into(),
            seq: 3,
        },
    );
    assert_eq!(app.rooms[0].unread, 1);
    net(
        &mut app,
        NetEvent::Read {
            room: "general".into(),
            seq: 4,
        },
    );
    assert_eq!((app.rooms[0].unread, app.rooms[0].mentioned), (0, false));
    // An older marker does not bring anything back.
    net(
        &mut app,
        NetEvent::Read {
            room: "general".into(),
            seq: 1,
        },
    );
    assert_eq!(app.rooms[0].unread, 0);
}

#[test]
fn direct_conversations_private_rooms_and_invitations() {
    let mut app = app();
    // /dm opens the conversation's room and asks for it.
    assert_eq!(
        enter(&mut app, "/dm bob"),
        Some(Action::Net(NetCommand::Dm {
            user: "bob".into(),
            room: "alice+bob".into(),
        }))
    );
    assert_eq!(app.current_room().unwrap().label("alice"), "@bob");
    assert_eq!(enter(&mut app, "/dm alice"), None, "not with oneself");
    assert_eq!(enter(&mut app, "/dm bob"), None, "already open");
    // Invitations only into private rooms.
    assert_eq!(enter(&mut app, "/invite carol"), None, "not into a DM");
    assert_eq!(
        enter(&mut app, "/private ops"),
        Some(Action::Net(NetCommand::CreatePrivate {
            room: "ops".into()
        }))
    );
    assert_eq!(
        enter(&mut app, "/invite carol"),
        Some(Action::Net(NetCommand::Invite {
            room: "ops".into(),
            user: "carol".into(),
        }))
    );
    join_with(&mut app, "general", 0, false);
    assert_eq!(
        enter(&mut app, "/invite carol"),
        None,
        "not into a public room"
    );
    // Someone opens a conversation with us: it opens, without switching.
    let current = app.current;
    assert_eq!(
        net(
            &mut app,
            NetEvent::Invited {
                room: "alice+dave".into(),
                user: "alice".into(),
                by: "dave".into(),
            },
        ),
        Some(Action::Net(NetCommand::Join {
            room: "alice+dave".into()
        }))
    );
    assert_eq!(app.current, current);
    assert_eq!(app.rooms.last().unwrap().label("alice"), "@dave");
    // Another member's invitation is news, not a room to open.
    let rooms = app.rooms.len();
    assert_eq!(
        net(
            &mut app,
            NetEvent::Invited {
                room: "ops".into(),
                user: "carol".into(),
                by: "alice".into(),
            },
        ),
        None
    );
    assert_eq!(app.rooms.len(), rooms);
}

#[test]
fn leave_asks_and_leave_bang_forgets_everywhere() {
    let mut app = app();
    join_with(&mut app, "general", 0, false);
    join_with(&mut app, "random", 0, false);
    assert_eq!(
        enter(&mut app, "/leave random"),
        Some(Action::Net(NetCommand::Leave {
            room: "random".into()
        }))
    );
    // Asked whether to forget it too: `n` keeps it.
    assert!(app.notice.as_ref().unwrap().text.contains("y/n"));
    assert_eq!(update(&mut app, key(KeyCode::Char('n'))), None);
    assert_eq!(app.input.text(), "", "the answer is not typed");
    // Asked once: a `y` now is text.
    update(&mut app, key(KeyCode::Char('y')));
    assert_eq!(app.input.text(), "y");
    update(&mut app, key(KeyCode::Backspace));
    // `y` forgets it everywhere.
    join_with(&mut app, "random", 0, false);
    enter(&mut app, "/leave");
    assert_eq!(
        update(&mut app, key(KeyCode::Char('y'))),
        Some(Action::Net(NetCommand::Forget {
            room: "random".into()
        }))
    );
    // Another key lets the question go and does its usual work.
    join_with(&mut app, "random", 0, false);
    enter(&mut app, "/leave");
    update(&mut app, key(KeyCode::Char('h')));
    assert_eq!(app.input.text(), "h");
    update(&mut app, key(KeyCode::Backspace));
    assert_eq!(
        enter(&mut app, "/leave! random"),
        Some(Action::Net(NetCommand::Forget {
            room: "random".into()
        })),
        "a room left here can still be forgotten"
    );
    // Forgotten on another device: gone here too.
    net(
        &mut app,
        NetEvent::Forgotten {
            room: "general".into(),
        },
    );
    assert!(app.rooms.is_empty());
}

#[test]
fn which_messages_ring_for_the_user() {
    let mut app = app();
    join_with(&mut app, "general", 0, false);
    enter(&mut app, "/dm bob");
    net(
        &mut app,
        NetEvent::Joined {
            room: "alice+bob".into(),
            last_seq: 0,
            members: vec!["alice".into()],
        },
    );
    app.switch_to(0);
    let alerts = |app: &mut App| -> Vec<(String, String)> {
        app.alerts.drain(..).map(|a| (a.room, a.text)).collect()
    };
    // A DM not in view, a mention, but not chatter nor one's own lines.
    net(
        &mut app,
        NetEvent::Message(msg("alice+bob", 1, "bob", "lunch?")),
    );
    net(
        &mut app,
        NetEvent::Message(msg("general", 1, "bob", "hi all")),
    );
    net(
        &mut app,
        NetEvent::Message(msg("general", 2, "alice", "@alice me")),
    );
    assert_eq!(alerts(&mut app), [("@bob".into(), "lunch?".into())]);
    // The room in view, followed, in a focused terminal: seen, no ring.
    net(
        &mut app,
        NetEvent::Message(msg("general", 3, "bob", "@alice look")),
    );
    assert!(alerts(&mut app).is_empty());
    // Unfocused, the same rings.
    update(&mut app, Event::Focus(false));
    net(
        &mut app,
        NetEvent::Message(msg("general", 4, "bob", "@alice now")),
    );
    assert_eq!(alerts(&mut app), [("general".into(), "@alice now".into())]);
    update(&mut app, Event::Focus(true));
    // Muted: nothing from that room.
    app.switch_to(1);
    enter(&mut app, "/mute");
    app.switch_to(0);
    net(
        &mut app,
        NetEvent::Message(msg("alice+bob", 2, "bob", "hello?")),
    );
    assert!(alerts(&mut app).is_empty());
    // Backlog replayed at a reconnect never rings.
    net(
        &mut app,
        NetEvent::Backlog {
            room: "alice+bob".into(),
            messages: vec![msg("alice+bob", 3, "bob", "while you were away")],
            has_more: false,
            resumed: true,
        },
    );
    assert!(alerts(&mut app).is_empty());
    // Mentions only: DMs stay quiet.
    app.switch_to(1);
    enter(&mut app, "/mute");
    app.switch_to(0);
    app.notify_level = notify::Level::Mentions;
    net(
        &mut app,
        NetEvent::Message(msg("alice+bob", 4, "bob", "ping")),
    );
    assert!(alerts(&mut app).is_empty());
    net(
        &mut app,
        NetEvent::Message(msg("alice+bob", 5, "bob", "ping @alice")),
    );
    assert_eq!(alerts(&mut app).len(), 1);
    app.notify_level = notify::Level::Off;
    net(
        &mut app,
        NetEvent::Message(msg("alice+bob", 6, "bob", "ping @alice")),
    );
    assert!(alerts(&mut app).is_empty());
}

#[test]
fn tab_completes_user_names_in_dm_and_invite() {
    let mut app = app();
    join_with(&mut app, "general", 1, false);
    join_with(&mut app, "random", 0, false);
    net(
        &mut app,
        NetEvent::Presence {
            room: "general".into(),
            user: "carol".into(),
            state: PresenceState::Joined,
        },
    );
    // carol is in general, not in the room in view: a command finds her.
    type_str(&mut app, "/dm ca");
    update(&mut app, key(KeyCode::Tab));
    assert_eq!(app.input.text(), "/dm carol ");
    app.input.set_text(String::new());
    // In a line to the room, only the room's own people complete.
    type_str(&mut app, "hi ca");
    update(&mut app, key(KeyCode::Tab));
    assert_eq!(app.input.text(), "hi ca");
    app.input.set_text(String::new());
    type_str(&mut app, "/invite b");
    update(&mut app, key(KeyCode::Tab));
    assert_eq!(app.input.text(), "/invite bob ");
}

// ---- Part 2: edits, deletions, reactions, replies, search, export ----

fn app_part2() -> App {
    let mut app = app();
    app.features = [
        chat_proto::features::EDIT,
        chat_proto::features::REACT,
        chat_proto::features::REPLY,
        chat_proto::features::SEARCH,
    ]
    .iter()
    .map(|f| f.to_string())
    .collect();
    app
}

/// Joins "general" with: 1 bob, 2 alice (own), 3 bob.
fn general(app: &mut App) {
    app.join("general");
    net(
        app,
        NetEvent::Joined {
            room: "general".into(),
            last_seq: 3,
            members: vec!["alice".into(), "bob".into()],
        },
    );
    net(
        app,
        NetEvent::Backlog {
            room: "general".into(),
            messages: vec![
                msg("general", 1, "bob", "hello"),
                msg("general", 2, "alice", "hi bob"),
                msg("general", 3, "bob", "deploy done"),
            ],
            has_more: false,
            resumed: false,
        },
    );
}

fn entry(app: &App, seq: u64) -> &Entry {
    &app.rooms[app.current].log[&seq]
}

#[test]
fn live_changes_apply_to_loaded_messages_only() {
    let mut app = app_part2();
    general(&mut app);
    net(
        &mut app,
        NetEvent::Edited {
            room: "general".into(),
            seq: 1,
            text: "hello \u{1b}[2J all".into(),
            edited_ts: BASE_TS,
        },
    );
    assert_eq!(entry(&app, 1).text, "hello ␛[2J all", "sanitized");
    assert!(entry(&app, 1).edited);
    net(
        &mut app,
        NetEvent::Reaction {
            room: "general".into(),
            seq: 3,
            user: "alice".into(),
            emoji: "🎉".into(),
            on: true,
        },
    );
    assert_eq!(entry(&app, 3).reactions.users("🎉"), ["alice".to_owned()]);
    net(
        &mut app,
        NetEvent::Reaction {
            room: "general".into(),
            seq: 3,
            user: "alice".into(),
            emoji: "🎉".into(),
            on: false,
        },
    );
    assert!(entry(&app, 3).reactions.is_empty());
    net(
        &mut app,
        NetEvent::Deleted {
            room: "general".into(),
            seq: 2,
        },
    );
    assert!(entry(&app, 2).deleted);
    assert_eq!(entry(&app, 2).text, "");
    // A resume's changes replace the stored state; unknown seqs are ignored.
    let mut changed = msg("general", 3, "bob", "deploy done, really");
    changed.edited_ts = Some(BASE_TS);
    changed.reply_to = Some(1);
    changed.reactions.set("👍", "carol", true);
    net(
        &mut app,
        NetEvent::Changes {
            room: "general".into(),
            messages: vec![changed, msg("general", 99, "bob", "not loaded")],
        },
    );
    let three = entry(&app, 3);
    assert_eq!(three.text, "deploy done, really");
    assert!(three.edited);
    assert_eq!(three.reply_to, Some(1));
    assert_eq!(three.reactions.users("👍"), ["carol".to_owned()]);
    assert_eq!(app.rooms[0].log.len(), 3, "seq 99 was not loaded: ignored");
    net(
        &mut app,
        NetEvent::Edited {
            room: "general".into(),
            seq: 42,
            text: "x".into(),
            edited_ts: BASE_TS,
        },
    );
    assert_eq!(app.rooms[0].log.len(), 3);
}

#[test]
fn up_on_an_empty_input_selects_messages() {
    let mut app = app_part2();
    general(&mut app);
    update(&mut app, key(KeyCode::Up));
    assert_eq!(app.rooms[0].selected, Some(3), "newest first");
    update(&mut app, key(KeyCode::Up));
    update(&mut app, alt(KeyCode::Up));
    assert_eq!(app.rooms[0].selected, Some(1));
    update(&mut app, key(KeyCode::Up));
    assert_eq!(app.rooms[0].selected, Some(1), "stays on the oldest");
    update(&mut app, alt(KeyCode::Down));
    assert_eq!(app.rooms[0].selected, Some(2));
    update(&mut app, key(KeyCode::Esc));
    assert_eq!(app.rooms[0].selected, None);
    // Past the newest, the selection ends.
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Down));
    assert_eq!(app.rooms[0].selected, None);
    // With text in the input, Up recalls instead.
    type_str(&mut app, "draft");
    update(&mut app, key(KeyCode::Up));
    assert_eq!(app.rooms[0].selected, None);
}

#[test]
fn selecting_an_old_message_scrolls_it_into_view() {
    let mut app = app_part2();
    join_with(&mut app, "general", 100, false);
    let (_, height) = app.message_pane();
    for _ in 0..60 {
        update(&mut app, key(KeyCode::Up));
    }
    assert_eq!(app.rooms[0].selected, Some(41));
    let anchor = app.rooms[0].anchor.expect("scrolled back");
    assert!(anchor.seq <= 41 && 41 < anchor.seq + u64::from(height));
    // Back down to the newest: the view follows again.
    for _ in 0..59 {
        update(&mut app, key(KeyCode::Down));
    }
    assert_eq!(app.rooms[0].selected, Some(100));
    assert_eq!(app.rooms[0].anchor, None);
}

#[test]
fn e_edits_own_messages_and_enter_saves() {
    let mut app = app_part2();
    general(&mut app);
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Char('e')));
    assert_eq!(app.compose, None, "bob's message");
    assert!(app.notice.as_ref().is_some_and(|n| n.error));
    assert_eq!(app.input.text(), "");
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Char('e')));
    assert_eq!(
        app.compose,
        Some(Compose::Edit {
            room: "general".into(),
            seq: 2
        })
    );
    assert_eq!(app.input.text(), "hi bob");
    type_str(&mut app, "!");
    assert_eq!(
        update(&mut app, key(KeyCode::Enter)),
        Some(Action::Net(NetCommand::Edit {
            room: "general".into(),
            seq: 2,
            text: "hi bob!".into()
        }))
    );
    assert_eq!(app.compose, None);
    // Esc cancels an edit and clears its text.
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Char('e')));
    update(&mut app, key(KeyCode::Esc));
    assert_eq!(app.compose, None);
    assert_eq!(app.input.text(), "");
}

#[test]
fn d_asks_before_deleting() {
    let mut app = app_part2();
    general(&mut app);
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Char('d')));
    assert!(app
        .notice
        .as_ref()
        .is_some_and(|n| n.text == "delete this message? y/n"));
    assert_eq!(update(&mut app, key(KeyCode::Char('n'))), None);
    assert_eq!(app.delete_offer, None);
    update(&mut app, key(KeyCode::Char('d')));
    assert_eq!(
        update(&mut app, key(KeyCode::Char('y'))),
        Some(Action::Net(NetCommand::Delete {
            room: "general".into(),
            seq: 2
        }))
    );
    // Someone else's message: only an admin may.
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Char('d')));
    assert_eq!(app.delete_offer, None);
    app.admin = true;
    update(&mut app, key(KeyCode::Char('d')));
    assert_eq!(app.delete_offer, Some(("general".into(), 3)));
}

#[test]
fn r_replies_and_esc_cancels() {
    let mut app = app_part2();
    general(&mut app);
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Char('r')));
    assert_eq!(
        app.compose,
        Some(Compose::Reply {
            room: "general".into(),
            seq: 3
        })
    );
    update(&mut app, key(KeyCode::Esc));
    assert_eq!(app.compose, None);
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Char('r')));
    let action = enter(&mut app, "nice");
    assert_eq!(
        action,
        Some(Action::Net(NetCommand::Reply {
            id: "s1".into(),
            room: "general".into(),
            text: "nice".into(),
            reply_to: 3
        }))
    );
    assert_eq!(app.compose, None);
    assert_eq!(app.rooms[0].pending.len(), 1);
}

#[test]
fn plus_opens_the_reaction_picker() {
    let mut app = app_part2();
    general(&mut app);
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Char('+')));
    assert!(matches!(app.overlay, Some(Overlay::React { seq: 3, .. })));
    let react = |emoji: &str| {
        Some(Action::Net(NetCommand::React {
            room: "general".into(),
            seq: 3,
            emoji: emoji.into(),
        }))
    };
    assert_eq!(update(&mut app, key(KeyCode::Char('4'))), react("🎉"));
    assert_eq!(app.overlay, None);
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Char('+')));
    update(&mut app, key(KeyCode::Right));
    assert_eq!(update(&mut app, key(KeyCode::Enter)), react("👎"));
    // Typed: validated before it is sent.
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Char('+')));
    type_str(&mut app, "a b");
    assert_eq!(update(&mut app, key(KeyCode::Enter)), None);
    assert!(app.overlay.is_some(), "stays open to be corrected");
    update(&mut app, key(KeyCode::Backspace));
    update(&mut app, key(KeyCode::Backspace));
    type_str(&mut app, "🦀");
    assert_eq!(update(&mut app, key(KeyCode::Enter)), react("a🦀"));
}

#[test]
fn message_commands() {
    let mut app = app_part2();
    general(&mut app);
    assert_eq!(
        enter(&mut app, "/edit hi bob, again"),
        Some(Action::Net(NetCommand::Edit {
            room: "general".into(),
            seq: 2,
            text: "hi bob, again".into()
        }))
    );
    assert_eq!(enter(&mut app, "/delete"), None);
    assert_eq!(app.delete_offer, Some(("general".into(), 2)));
    update(&mut app, key(KeyCode::Char('n')));
    // /react: the last message not by the user, or the selected one.
    assert_eq!(
        enter(&mut app, "/react 👍"),
        Some(Action::Net(NetCommand::React {
            room: "general".into(),
            seq: 3,
            emoji: "👍".into()
        }))
    );
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Up));
    assert_eq!(
        enter(&mut app, "/react 🎉"),
        Some(Action::Net(NetCommand::React {
            room: "general".into(),
            seq: 1,
            emoji: "🎉".into()
        }))
    );
    assert!(matches!(
        enter(&mut app, "/reply sure"),
        Some(Action::Net(NetCommand::Reply { reply_to: 3, .. }))
    ));
    // A server without the features: nothing is sent, the user is told.
    app.features.clear();
    assert_eq!(enter(&mut app, "/edit again"), None);
    assert!(app
        .notice
        .as_ref()
        .is_some_and(|n| n.error && n.text.contains("does not support")));
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Char('+')));
    assert_eq!(app.overlay, None);
}

#[test]
fn enter_on_a_reply_jumps_to_the_message_it_answers() {
    let mut app = app_part2();
    join_with(&mut app, "general", 300, true);
    assert_eq!(app.rooms[0].oldest_seq(), Some(251));
    let mut reply = msg("general", 301, "bob", "about that");
    reply.reply_to = Some(40);
    net(&mut app, NetEvent::Message(reply));
    update(&mut app, key(KeyCode::Up));
    assert_eq!(app.rooms[0].selected, Some(301));
    let action = update(&mut app, key(KeyCode::Enter));
    assert_eq!(
        action,
        Some(Action::Net(NetCommand::History {
            room: "general".into(),
            before: Some(251),
            limit: 200
        }))
    );
    let page = |from: u64, to: u64| NetEvent::Page {
        room: "general".into(),
        before: Some(to + 1),
        messages: (from..=to)
            .map(|seq| msg("general", seq, "bob", &format!("message {seq}")))
            .collect(),
        has_more: from > 1,
    };
    // Not there yet: the next page is asked for.
    let action = net(&mut app, page(51, 250));
    assert!(matches!(
        action,
        Some(Action::Net(NetCommand::History {
            before: Some(51),
            ..
        }))
    ));
    assert_eq!(net(&mut app, page(1, 50)), None);
    assert_eq!(app.rooms[0].selected, Some(40));
    assert_eq!(app.jump, None);
    assert!(app.rooms[0].anchor.is_some(), "scrolled to it");
}

#[test]
fn search_overlay_pages_and_jumps() {
    let mut app = app_part2();
    general(&mut app);
    assert_eq!(
        enter(&mut app, "/search Deplo"),
        Some(Action::Net(NetCommand::Search {
            query: "Deplo".into(),
            cursor: None
        }))
    );
    let hits = |room: &str, seqs: std::ops::Range<u64>| -> Vec<MessageRecord> {
        seqs.rev()
            .map(|seq| msg(room, seq, "bob", "deployed it\nsecond line"))
            .collect()
    };
    // An answer to another query is not ours.
    net(
        &mut app,
        NetEvent::SearchResults {
            query: "other".into(),
            messages: hits("general", 1..3),
            next: None,
        },
    );
    let Some(Overlay::Search(view)) = &app.overlay else {
        panic!("search overlay")
    };
    assert!(view.hits.is_empty() && view.loading);
    net(
        &mut app,
        NetEvent::SearchResults {
            query: "Deplo".into(),
            messages: hits("random", 10..15),
            next: Some("c1".into()),
        },
    );
    let Some(Overlay::Search(view)) = &app.overlay else {
        panic!("search overlay")
    };
    assert_eq!(view.hits.len(), 5);
    assert_eq!(view.words, ["deplo"]);
    assert_eq!(view.hits[0].text, "deployed it second line");
    update(&mut app, key(KeyCode::Down));
    assert_eq!(
        update(&mut app, key(KeyCode::Down)),
        Some(Action::Net(NetCommand::Search {
            query: "Deplo".into(),
            cursor: Some("c1".into())
        })),
        "near the end: the next page"
    );
    assert_eq!(update(&mut app, key(KeyCode::Down)), None, "already asked");
    // Enter on a result in a room not joined: joins it, then jumps.
    let action = update(&mut app, key(KeyCode::Enter));
    assert_eq!(
        action,
        Some(Action::Net(NetCommand::Join {
            room: "random".into()
        }))
    );
    assert_eq!(app.overlay, None);
    assert_eq!(
        app.jump,
        Some(Jump {
            room: "random".into(),
            seq: 11
        })
    );
    net(
        &mut app,
        NetEvent::Joined {
            room: "random".into(),
            last_seq: 20,
            members: vec![],
        },
    );
    net(
        &mut app,
        NetEvent::Backlog {
            room: "random".into(),
            messages: (1..=20).map(|s| msg("random", s, "bob", "x")).collect(),
            has_more: false,
            resumed: false,
        },
    );
    assert_eq!(app.current_room().map(|r| r.name.as_str()), Some("random"));
    assert_eq!(app.current_room().and_then(|r| r.selected), Some(11));
}

#[test]
fn ctrl_f_prompts_for_the_words() {
    let mut app = app_part2();
    general(&mut app);
    update(&mut app, ctrl('f'));
    assert!(matches!(&app.overlay, Some(Overlay::Search(v)) if v.prompt));
    type_str(&mut app, "hello");
    assert_eq!(
        update(&mut app, key(KeyCode::Enter)),
        Some(Action::Net(NetCommand::Search {
            query: "hello".into(),
            cursor: None
        }))
    );
    // A refused search stops waiting and says why.
    net(
        &mut app,
        NetEvent::Error {
            code: Some(ErrorCode::BadRequest),
            message: "the query has no words".into(),
        },
    );
    assert!(matches!(&app.overlay, Some(Overlay::Search(v)) if !v.loading));
    assert!(app.notice.as_ref().is_some_and(|n| n.error));
    update(&mut app, key(KeyCode::Esc));
    assert_eq!(app.overlay, None);
}

#[test]
fn server_refusals_of_message_changes_show_in_the_status_bar() {
    let mut app = app_part2();
    general(&mut app);
    net(
        &mut app,
        NetEvent::Error {
            code: Some(ErrorCode::NoSuchMessage),
            message: "no message 9 in general".into(),
        },
    );
    assert!(app
        .notice
        .as_ref()
        .is_some_and(|n| n.error && n.text == "no_such_message: no message 9 in general"));
}

#[test]
fn export_writes_in_the_background_and_reports() {
    let mut app = app_part2();
    general(&mut app);
    let action = enter(&mut app, "/export /tmp/general.md");
    assert_eq!(
        action,
        Some(Action::Net(NetCommand::Export {
            room: "general".into(),
            path: "/tmp/general.md".into()
        }))
    );
    let Some(Action::Net(NetCommand::Export { path, .. })) = enter(&mut app, "/export") else {
        panic!("export")
    };
    let name = path.display().to_string();
    assert!(
        name.starts_with("./general-") && name.ends_with(".md"),
        "{name}"
    );
    assert!(app.notice.as_ref().is_some_and(|n| n.text.contains(&name)));
    net(
        &mut app,
        NetEvent::Exported {
            room: "general".into(),
            path: path.clone(),
            messages: 3,
        },
    );
    assert!(app
        .notice
        .as_ref()
        .is_some_and(|n| !n.error && n.text.contains("exported 3 messages")));
    net(
        &mut app,
        NetEvent::ExportFailed {
            room: "general".into(),
            path,
            reason: "Permission denied".into(),
        },
    );
    assert!(app
        .notice
        .as_ref()
        .is_some_and(|n| n.error && n.text.contains("Permission denied")));
}
