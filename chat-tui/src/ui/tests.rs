//! Rendering, checked line by line on ratatui's `TestBackend`.

use super::*;
use std::time::Duration;

use crate::app::{update, Event, Room};
use crate::clock;
use crate::net::NetEvent;
use chat_proto::MessageRecord;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

const BASE_TS: i64 = 1_764_080_000_000; // Tuesday 25 November 2025 14:13:20 UTC

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

fn app(width: u16, height: u16) -> App {
    let mut app = App::new("alice", "ws://192.168.1.23:8765/ws", clock::utc);
    app.size = (width, height);
    app
}

fn join(app: &mut App, room: &str, messages: Vec<MessageRecord>) {
    app.rooms.push(Room::new(room));
    let index = app.rooms.len() - 1;
    app.switch_to(index);
    update(
        app,
        Event::Net(NetEvent::Joined {
            room: room.into(),
            last_seq: 0,
            members: vec!["alice".into(), "bob".into()],
        }),
    );
    update(
        app,
        Event::Net(NetEvent::Backlog {
            room: room.into(),
            messages,
            has_more: false,
            resumed: false,
        }),
    );
}

fn terminal(app: &App) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(app.size.0, app.size.1)).unwrap();
    terminal.draw(|frame| render(app, frame)).unwrap();
    terminal
}

/// The screen as text, one string per row, trailing spaces cut.
fn screen(app: &App) -> Vec<String> {
    let terminal = terminal(app);
    let buffer = terminal.backend().buffer();
    (0..buffer.area.height)
        .map(|y| {
            let mut row = String::new();
            let mut hidden = 0;
            for x in 0..buffer.area.width {
                // The cells covered by a wide character hold a blank.
                if hidden > 0 {
                    hidden -= 1;
                    continue;
                }
                let symbol = buffer[(x, y)].symbol();
                hidden = wrap::width(symbol).saturating_sub(1);
                row.push_str(symbol);
            }
            row.trim_end().to_owned()
        })
        .collect()
}

fn key(code: KeyCode) -> Event {
    Event::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn net(app: &mut App, event: NetEvent) {
    update(app, Event::Net(event));
}

#[test]
fn whole_screen() {
    let mut app = app(64, 12);
    join(
        &mut app,
        "general",
        vec![
            msg("general", 1, "bob", "hello"),
            msg(
                "general",
                2,
                "alice",
                "hi bob, a longer line that wraps in the pane",
            ),
        ],
    );
    net(
        &mut app,
        NetEvent::Typing {
            room: "general".into(),
            user: "bob".into(),
        },
    );
    assert_eq!(
        screen(&app),
        [
            " Rooms           │ #general  2 online: alice, bob",
            " 1 general       │──────────────────────────────────────────────",
            "                 │── Tuesday 25 November 2025 ──────────────────",
            "                 │14:14 bob: hello",
            "                 │14:15 alice: hi bob, a longer line that wraps",
            "                 │             in the pane",
            "                 │",
            "                 │",
            "                 │",
            "                 │bob is typing…",
            "                 │› Message #general  (Enter sends, Alt+Enter n…",
            " ● connected │ alice @ 192.168.1.23:8765                F1 help",
        ]
    );
}

#[test]
fn room_list_shows_unread_counts_and_mentions() {
    let mut app = app(80, 10);
    join(&mut app, "general", vec![]);
    join(&mut app, "random", vec![]);
    join(&mut app, "a-very-long-room-name-indeed", vec![]);
    app.switch_to(0);
    net(&mut app, NetEvent::Message(msg("random", 1, "bob", "one")));
    net(&mut app, NetEvent::Message(msg("random", 2, "bob", "two")));
    net(
        &mut app,
        NetEvent::Message(msg("a-very-long-room-name-indeed", 1, "bob", "hey @alice")),
    );
    let rows = screen(&app);
    let list: Vec<String> = rows[..5]
        .iter()
        .map(|r| r.split('│').next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        list,
        [
            " Rooms                   ",
            " 1 general               ",
            " 2 random              2 ",
            " 3 a-very-long-room-… @1 ",
            "                         ",
        ]
    );
    // The current room is highlighted, the mention badge stands out.
    let buffer = terminal(&app).backend().buffer().clone();
    assert!(buffer[(4, 1)].modifier.contains(Modifier::REVERSED));
    assert!(!buffer[(4, 2)].modifier.contains(Modifier::REVERSED));
    assert!(
        buffer[(4, 2)].modifier.contains(Modifier::BOLD),
        "unread rooms are bold"
    );
    assert_eq!(buffer[(22, 3)].symbol(), "@");
    assert_eq!(buffer[(22, 3)].fg, Color::Yellow);
}

#[test]
fn long_and_wide_text_wraps_to_the_pane() {
    let mut app = app(50, 14);
    join(
        &mut app,
        "general",
        vec![
            msg(
                "general",
                1,
                "bob",
                "supercalifragilisticexpialidocious-and-then-some-more",
            ),
            msg(
                "general",
                2,
                "carol",
                "日本語のテキストは正しく折り返されますか",
            ),
            msg(
                "general",
                3,
                "dave",
                "crabs 🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀 everywhere",
            ),
        ],
    );
    // 50 columns without the room list: the pane is the whole width.
    let rows = screen(&app);
    assert_eq!(
        &rows[3..10],
        [
            "14:14 bob: supercalifragilisticexpialidocious-and-",
            "           then-some-more",
            "14:15 carol: 日本語のテキストは正しく折り返されま",
            "             すか",
            "14:16 dave: crabs 🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀",
            "            everywhere",
            "",
        ]
    );
    // Every row fits in the width, wide characters counted twice.
    for row in rows {
        assert!(wrap::width(&row) <= 50, "{row}");
    }
}

#[test]
fn scrolled_view_with_older_pages_loaded() {
    let mut app = app(40, 12);
    app.rooms.push(Room::new("general"));
    net(
        &mut app,
        NetEvent::Joined {
            room: "general".into(),
            last_seq: 100,
            members: vec!["alice".into()],
        },
    );
    let page = |from: u64, to: u64| -> Vec<MessageRecord> {
        (from..=to)
            .map(|seq| msg("general", seq, "bob", &format!("message {seq}")))
            .collect()
    };
    net(
        &mut app,
        NetEvent::Backlog {
            room: "general".into(),
            messages: page(91, 100),
            has_more: true,
            resumed: false,
        },
    );
    // Page up until the client asks for what is before 91.
    let mut asked = None;
    for _ in 0..5 {
        if let Some(action) = update(&mut app, key(KeyCode::PageUp)) {
            asked = Some(action);
            break;
        }
    }
    assert!(matches!(
        asked,
        Some(crate::app::Action::Net(crate::net::NetCommand::History {
            before: Some(91),
            ..
        }))
    ));
    let before = screen(&app);
    assert_eq!(before[2], "── Tuesday 25 November 2025 ────────────");
    assert_eq!(before[3], "15:44 bob: message 91");
    assert!(
        before[9].contains("loading older messages"),
        "{:?}",
        before[9]
    );
    net(
        &mut app,
        NetEvent::Page {
            room: "general".into(),
            before: Some(91),
            messages: page(61, 90),
            has_more: true,
        },
    );
    let after = screen(&app);
    // Same line on top; the day separator moved up to the older messages.
    assert_eq!(after[2], "15:44 bob: message 91");
    assert_eq!(after[3], "15:45 bob: message 92");
    update(&mut app, key(KeyCode::PageUp));
    let older = screen(&app);
    assert_eq!(older[2], "15:38 bob: message 85");
    assert_eq!(older[8], "15:44 bob: message 91");
    assert!(older[9].contains("scrolled back"), "{:?}", older[9]);
}

#[test]
fn help_overlay_lists_keys_and_commands() {
    let mut app = app(80, 40);
    join(&mut app, "general", vec![]);
    update(&mut app, key(KeyCode::F(1)));
    let rows = screen(&app).join("\n");
    for needle in [
        "Keys and commands",
        "Alt+Enter",
        "new line in the message",
        "Alt+1..9",
        "PageUp/PageDown",
        "Ctrl+W, Ctrl+U",
        "/join ROOM",
        "/rooms",
        "/delete ROOM",
        "/quit",
        "Ctrl+F",
        "edit, delete, reply, react",
        "/edit TEXT",
        "/react EMOJI",
        "/reply TEXT",
        "/search WORDS",
        "/export [PATH]",
    ] {
        assert!(rows.contains(needle), "help lacks {needle}");
    }
}

#[test]
fn status_bar_while_reconnecting() {
    let mut app = app(80, 8);
    join(&mut app, "general", vec![]);
    net(
        &mut app,
        NetEvent::Disconnected {
            reason: "connection reset".into(),
            retry_in: Some(Duration::from_millis(3500)),
        },
    );
    update(&mut app, Event::Paste("queued line".into()));
    update(&mut app, key(KeyCode::Enter));
    let rows = screen(&app);
    assert_eq!(
        rows[7],
        " ↻ reconnecting in 4 s │ alice @ 192.168.1.23:8765 │ 1 queued │ connection reset"
    );
    assert!(rows[0].contains("#general  offline"), "{}", rows[0]);
    assert!(rows[2].contains("⋯   alice: queued line"), "{rows:#?}");
    app.now += Duration::from_secs(2);
    assert!(screen(&app)[7].starts_with(" ↻ reconnecting in 2 s"));
    net(
        &mut app,
        NetEvent::Disconnected {
            reason: "login failed: wrong user name or password".into(),
            retry_in: None,
        },
    );
    assert!(screen(&app)[7].starts_with(" ✗ offline: login failed"));
    net(&mut app, NetEvent::Connecting);
    assert!(screen(&app)[7].starts_with(" ◌ connecting…"));
}

#[test]
fn escape_sequences_are_shown_not_obeyed() {
    let mut app = app(56, 8);
    join(
        &mut app,
        "general",
        vec![msg(
            "general",
            1,
            "mallory",
            "\u{1b}[2J\u{1b}]0;owned\u{7}\u{9b}31mgotcha\u{202e}txt",
        )],
    );
    let rows = screen(&app);
    assert_eq!(rows[3], "14:14 mallory: ␛[2J␛]0;owned␇�31mgotchatxt");
    let buffer = terminal(&app).backend().buffer().clone();
    for cell in buffer.content() {
        assert!(
            !cell.symbol().chars().any(char::is_control),
            "control in {:?}",
            cell.symbol()
        );
    }
}

#[test]
fn own_messages_and_mentions_stand_out() {
    let mut app = app(50, 8);
    join(
        &mut app,
        "general",
        vec![
            msg("general", 1, "alice", "mine"),
            msg("general", 2, "bob", "hi alice"),
        ],
    );
    let buffer = terminal(&app).backend().buffer().clone();
    // "14:14 alice: mine" starts at column 0 (no room list under 60 columns).
    assert_eq!(buffer[(6, 3)].symbol(), "a");
    assert!(buffer[(6, 3)].modifier.contains(Modifier::REVERSED));
    assert_eq!(buffer[(6, 4)].symbol(), "b");
    assert!(!buffer[(6, 4)].modifier.contains(Modifier::REVERSED));
    assert_eq!(buffer[(6, 4)].fg, user_color("bob"));
    assert_eq!(
        buffer[(0, 4)].fg,
        Color::Yellow,
        "mention: the time is highlighted"
    );
}

#[test]
fn user_colours_are_stable() {
    assert_eq!(user_color("bob"), user_color("bob"));
    let distinct: std::collections::BTreeSet<String> =
        ["alice", "bob", "carol", "dave", "erin", "frank"]
            .iter()
            .map(|u| format!("{:?}", user_color(u)))
            .collect();
    assert!(distinct.len() >= 4);
}

#[test]
fn multi_line_input_grows_and_places_the_cursor() {
    let mut app = app(40, 10);
    join(&mut app, "general", vec![]);
    update(&mut app, Event::Paste("first line\nsecond".into()));
    let mut terminal = terminal(&app);
    let rows = screen(&app);
    assert_eq!(rows[7], "› first line");
    assert_eq!(rows[8], "  second");
    terminal.backend_mut().assert_cursor_position((8, 8));
}

#[test]
fn room_browser_and_who() {
    let mut app = app(80, 16);
    join(&mut app, "general", vec![]);
    app.overlay = Some(Overlay::Rooms {
        list: None,
        selected: 0,
        filter: String::new(),
    });
    assert!(screen(&app).join("\n").contains("loading…"));
    net(
        &mut app,
        NetEvent::Rooms(vec![
            chat_proto::RoomSummary {
                name: "general".into(),
                members: 2,
                last_seq: 40,
                last_ts: Some(1_764_000_000_000),
            },
            chat_proto::RoomSummary {
                name: "random".into(),
                members: 0,
                last_seq: 7,
                last_ts: None,
            },
        ]),
    );
    let rows = screen(&app).join("\n");
    assert!(rows.contains("✓general"), "{rows}");
    assert!(rows.contains(" random"), "{rows}");
    assert!(rows.contains("40  24 Nov 16:00"), "newest activity: {rows}");
    assert!(rows.contains("7  —"), "{rows}");
    app.overlay = Some(Overlay::Who);
    let rows = screen(&app).join("\n");
    assert!(rows.contains("#general · 2 online"), "{rows}");
    assert!(rows.contains("alice  (you)"), "{rows}");
}

#[test]
fn tiny_terminals_do_not_panic() {
    for (w, h) in [(0, 0), (1, 1), (5, 3), (10, 2), (20, 5), (200, 1)] {
        let mut app = app(w, h);
        join(
            &mut app,
            "general",
            vec![msg("general", 1, "bob", "hello 日本 🦀 world")],
        );
        update(&mut app, Event::Paste("some input".into()));
        let _ = screen(&app);
        app.overlay = Some(Overlay::Help);
        let _ = screen(&app);
    }
}

#[test]
fn help_fits_short_terminals_in_two_columns() {
    let mut app = app(120, 21);
    app.overlay = Some(Overlay::Help);
    let rows = screen(&app).join("\n");
    assert!(rows.contains("Ctrl+C"), "{rows}");
    assert!(rows.contains("//text"), "{rows}");
}

#[test]
fn narrow_screens_tell_of_unread_rooms_in_the_header() {
    let mut app = app(50, 8);
    join(&mut app, "general", vec![]);
    join(&mut app, "random", vec![]);
    net(
        &mut app,
        NetEvent::Message(msg("general", 1, "bob", "psst alice")),
    );
    let rows = screen(&app);
    assert_eq!(
        rows[0],
        " #random  (@1 unread elsewhere)  2 online: alice,…"
    );
}

#[test]
fn direct_conversations_and_private_rooms_are_marked() {
    let mut app = app(80, 8);
    join(&mut app, "general", vec![]);
    join(&mut app, "alice+bob", vec![]);
    join(&mut app, "ops", vec![]);
    app.rooms[1].private = true;
    app.rooms[2].private = true;
    app.switch_to(1);
    let rows = screen(&app);
    let (list, titles): (Vec<String>, Vec<String>) = rows[..4]
        .iter()
        .map(|r| {
            let (list, pane) = r.split_once('│').unwrap_or((r, ""));
            (list.trim_end().to_owned(), pane.to_owned())
        })
        .unzip();
    assert_eq!(list, [" Rooms", " 1 general", " 2 @bob", " 3 *ops"]);
    // The title names the conversation by the other user.
    assert!(titles[0].starts_with(" @bob "), "{rows:#?}");
    app.switch_to(2);
    let rows = screen(&app);
    let title = rows[0].split_once('│').unwrap().1;
    assert!(title.starts_with(" #ops (private) "), "{rows:#?}");
}

// ---- Part 2: edits, deletions, reactions, replies, selection, search ----

fn part2_app() -> App {
    let mut app = app(64, 16);
    app.features = ["edit", "react", "reply", "search"]
        .iter()
        .map(|f| f.to_string())
        .collect();
    let mut first = msg("general", 1, "bob", "hello");
    first.reactions.set("👍", "alice", true);
    first.reactions.set("👍", "bob", true);
    first.reactions.set("🎉", "bob", true);
    let mut edited = msg("general", 2, "alice", "fixed the typo");
    edited.edited_ts = Some(BASE_TS);
    let mut deleted = msg("general", 3, "bob", "");
    deleted.deleted = true;
    let mut reply = msg("general", 4, "carol", "me too");
    reply.reply_to = Some(1);
    let mut orphan = msg("general", 5, "carol", "and that");
    orphan.reply_to = Some(0);
    join(
        &mut app,
        "general",
        vec![first, edited, deleted, reply, orphan],
    );
    app
}

/// The column where `needle` starts in row `y` of the screen.
fn column_of(rows: &[String], y: usize, needle: &str) -> u16 {
    let at = rows[y].find(needle).expect("needle on the row");
    wrap::width(&rows[y][..at]) as u16
}

#[test]
fn edits_deletions_reactions_and_replies_show() {
    let app = part2_app();
    let rows = screen(&app);
    assert_eq!(
        rows[2..11],
        [
            "                 │── Tuesday 25 November 2025 ──────────────────",
            "                 │14:14 bob: hello",
            "                 │      👍 2  🎉 1",
            "                 │14:15 alice: fixed the typo (edited)",
            "                 │14:16 bob: message deleted",
            "                 │      ↪ bob: hello",
            "                 │14:17 carol: me too",
            "                 │      ↪ #0",
            "                 │14:18 carol: and that",
        ]
    );
    let terminal = terminal(&app);
    let buffer = terminal.backend().buffer();
    // Own reaction highlighted, the other not.
    let thumbs = buffer[(column_of(&rows, 4, "👍"), 4)].style();
    assert!(thumbs.add_modifier.contains(Modifier::REVERSED));
    let party = buffer[(column_of(&rows, 4, "🎉"), 4)].style();
    assert!(!party.add_modifier.contains(Modifier::REVERSED));
    // "(edited)", "message deleted" and the quote are dim; the text is not.
    let dim_fg = Color::DarkGray;
    assert_eq!(buffer[(column_of(&rows, 5, "(edited)"), 5)].fg, dim_fg);
    assert_ne!(buffer[(column_of(&rows, 5, "fixed"), 5)].fg, dim_fg);
    assert_eq!(
        buffer[(column_of(&rows, 6, "message deleted"), 6)].fg,
        dim_fg
    );
    assert_eq!(buffer[(column_of(&rows, 7, "↪"), 7)].fg, dim_fg);
}

#[test]
fn the_selected_message_is_highlighted() {
    let mut app = part2_app();
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Up));
    let rows = screen(&app);
    let terminal = terminal(&app);
    let buffer = terminal.backend().buffer();
    // Message 4: its quote and its text.
    for y in [7u16, 8] {
        let x = column_of(&rows, usize::from(y), if y == 7 { "↪" } else { "me too" });
        assert_eq!(buffer[(x, y)].bg, Color::Indexed(237), "row {y}");
    }
    let x = column_of(&rows, 10, "and that");
    assert_ne!(buffer[(x, 10)].bg, Color::Indexed(237));
}

#[test]
fn replying_line_above_the_input() {
    let mut app = part2_app();
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Char('r')));
    let rows = screen(&app);
    assert_eq!(
        rows[13],
        "                 │replying to carol: me too  Esc cancels"
    );
    assert!(rows[14].contains("› Message #general"));
}

#[test]
fn reaction_picker() {
    let mut app = part2_app();
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Char('+')));
    update(&mut app, key(KeyCode::Right));
    let rows = screen(&app).join("\n");
    assert!(rows.contains("React · 1-8"), "{rows}");
    assert!(rows.contains("1 👍  2 👎  3 😄  4 🎉"), "{rows}");
    assert!(rows.contains("or type one:"), "{rows}");
}

#[test]
fn search_overlay_highlights_the_words() {
    let mut app = part2_app();
    app.size = (80, 16);
    for c in "/search deplo".chars() {
        update(&mut app, key(KeyCode::Char(c)));
    }
    update(&mut app, key(KeyCode::Enter));
    net(
        &mut app,
        NetEvent::SearchResults {
            query: "deplo".into(),
            messages: vec![msg("random", 7, "bob", "we Deployed \u{1b}[2J it")],
            next: None,
        },
    );
    let rows = screen(&app);
    let y = rows
        .iter()
        .position(|r| r.contains("#random bob: we Deployed ␛[2J it"))
        .expect("result row");
    assert!(rows[y].contains("25 Nov 14:20"), "{}", rows[y]);
    let terminal = terminal(&app);
    let buffer = terminal.backend().buffer();
    let word = buffer[(column_of(&rows, y, "Deployed"), y as u16)].style();
    assert_eq!(word.fg, Some(Color::Yellow));
    assert!(word.add_modifier.contains(Modifier::BOLD));
    let other = buffer[(column_of(&rows, y, "we D"), y as u16)].style();
    assert_ne!(other.fg, Some(Color::Yellow));
}

#[test]
fn highlight_matches_word_prefixes_ignoring_case() {
    let spans = highlight(
        "Deploying the deploy, redeploy",
        &["deplo".into()],
        Style::default(),
    );
    let found: Vec<&str> = spans
        .iter()
        .filter(|s| s.style == found())
        .map(|s| s.content.as_ref())
        .collect();
    assert_eq!(found, ["Deploying", "deploy"]);
}
