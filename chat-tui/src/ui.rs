//! Drawing: [`render`] paints the whole screen from an [`App`] and nothing
//! else, so what is on screen is a function of the state and can be tested
//! with ratatui's `TestBackend`.
//!
//! ```text
//!  Rooms          │ #general  3 online: alice, bob, carol
//!  1 general      │──────────────────────────────────────
//!  2 random    @2 │── Tuesday 25 November 2025 ──────────
//!                 │14:02 alice: hi all
//!                 │14:03 bob: a long line wraps under its
//!                 │           own text
//!                 │bob is typing…
//!                 │› _
//!  ● connected │ alice @ 192.168.1.23:8765          F1 help
//! ```

use std::ops::Range;

use chat_proto::RoomSummary;
use ratatui::layout::{Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph};
use ratatui::Frame;

use crate::app::{
    filter_rooms, App, Compose, Entry, Link, Overlay, Pending, Room, SearchView, NOTICE_FOR,
    REACTIONS,
};
use crate::clock::format_day;
use crate::layout::{input_rows, layout, PROMPT, ROOM_LIST_MIN_WIDTH};
use crate::sanitize::sanitize_line;
use crate::timeline::{self, DELETED, TIME_WIDTH};
use crate::wrap::{self, graphemes};

/// Paints the screen.
pub fn render(app: &App, frame: &mut Frame) {
    let area = frame.area();
    let areas = layout(area, app);
    render_rooms(app, frame, areas.rooms);
    render_header(app, frame, areas.header);
    render_messages(app, frame, areas.messages);
    render_typing(app, frame, areas.typing);
    render_compose(app, frame, areas.compose);
    render_input(app, frame, areas.input);
    render_status(app, frame, areas.status);
    match &app.overlay {
        None => {}
        Some(Overlay::Help) => render_help(frame, area),
        Some(Overlay::Who) => render_who(app, frame, area),
        Some(Overlay::Rooms {
            list,
            selected,
            filter,
        }) => render_browser(app, frame, area, list.as_deref(), *selected, filter),
        Some(Overlay::React { choice, typed, .. }) => render_picker(frame, area, *choice, typed),
        Some(Overlay::Search(view)) => render_search(app, frame, area, view),
    }
}

/// The background of the selected message's lines.
pub const SELECTED: Style = Style::new().bg(Color::Indexed(237));

/// A reaction the user is among.
pub fn own_reaction() -> Style {
    Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED)
}

/// A search word found in a result.
pub fn found() -> Style {
    Style::default()
        .fg(Color::Yellow)
        .add_modifier(Modifier::BOLD)
}

/// A user's colour: stable across runs and machines (a hash of the name).
pub fn user_color(user: &str) -> Color {
    const PALETTE: [Color; 12] = [
        Color::Red,
        Color::Green,
        Color::Yellow,
        Color::Blue,
        Color::Magenta,
        Color::Cyan,
        Color::LightRed,
        Color::LightGreen,
        Color::LightYellow,
        Color::LightBlue,
        Color::LightMagenta,
        Color::LightCyan,
    ];
    // FNV-1a: fixed, unlike the std hasher's random keys.
    let hash = user.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    PALETTE[(hash % PALETTE.len() as u64) as usize]
}

fn dim() -> Style {
    Style::default().fg(Color::DarkGray)
}

/// Cuts `text` to at most `width` columns, ending in `…` when cut.
fn fit(text: &str, width: usize) -> String {
    if wrap::width(text) <= width {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    for (_, g, w) in graphemes(text) {
        if used + w + 1 > width {
            break;
        }
        out.push_str(g);
        used += w;
    }
    if width > 0 {
        out.push('…');
    }
    out
}

fn render_rooms(app: &App, frame: &mut Frame, area: Rect) {
    if area.width == 0 || area.height == 0 {
        return;
    }
    let block = Block::default().borders(Borders::RIGHT).border_style(dim());
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = usize::from(inner.width);
    let mut lines = vec![Line::from(Span::styled(
        " Rooms",
        Style::default().add_modifier(Modifier::BOLD),
    ))];
    for (i, room) in app.rooms.iter().enumerate() {
        let number = if i < 9 {
            format!(" {} ", i + 1)
        } else {
            "   ".to_owned()
        };
        let mut badge = String::new();
        if room.mentioned {
            badge.push('@');
        }
        if room.unread > 0 {
            badge.push_str(&room.unread.to_string());
        }
        if !badge.is_empty() {
            badge = format!(" {badge} ");
        }
        let name_room = width.saturating_sub(number.len() + badge.len());
        let name = fit(&room.label(&app.user), name_room);
        let pad = name_room.saturating_sub(wrap::width(&name));
        let mut style = Style::default();
        if room.unread > 0 {
            style = style.add_modifier(Modifier::BOLD);
        }
        if i == app.current {
            style = style.add_modifier(Modifier::REVERSED);
        }
        let badge_style = if room.mentioned {
            style.fg(Color::Yellow).add_modifier(Modifier::BOLD)
        } else {
            style.fg(Color::Cyan)
        };
        lines.push(Line::from(vec![
            Span::styled(number, style.fg(Color::DarkGray)),
            Span::styled(format!("{name}{}", " ".repeat(pad)), style),
            Span::styled(badge, badge_style),
        ]));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

fn render_header(app: &App, frame: &mut Frame, area: Rect) {
    if area.height == 0 {
        return;
    }
    let width = usize::from(area.width);
    let line = match app.current_room() {
        None => Line::from(Span::styled(" no room", dim())),
        Some(room) => {
            let title = match room.label(&app.user) {
                label if label.starts_with('@') => format!(" {label}"),
                _ if room.private => format!(" #{} (private)", room.name),
                _ => format!(" #{}", room.name),
            };
            let rest = if !room.joined {
                match app.link {
                    Link::Connected => "  joining…".to_owned(),
                    _ => "  offline".to_owned(),
                }
            } else {
                let names: Vec<&str> = room.members.iter().map(String::as_str).collect();
                format!("  {} online: {}", names.len(), names.join(", "))
            };
            // Without the room list, say where unread messages wait.
            let hidden = app.size.0 < ROOM_LIST_MIN_WIDTH;
            let unread: usize = app.rooms.iter().map(|r| r.unread).sum();
            let mention = app.rooms.iter().any(|r| r.mentioned);
            let rest = if hidden && unread > 0 {
                let at = if mention { "@" } else { "" };
                format!("  ({at}{unread} unread elsewhere){rest}")
            } else {
                rest
            };
            let rest = fit(&rest, width.saturating_sub(wrap::width(&title)));
            Line::from(vec![
                Span::styled(title, Style::default().add_modifier(Modifier::BOLD)),
                Span::styled(rest, dim()),
            ])
        }
    };
    let mut lines = vec![line];
    if area.height > 1 {
        lines.push(Line::from(Span::styled("─".repeat(width), dim())));
    }
    frame.render_widget(Paragraph::new(lines), area);
}

/// The screen lines of one message: its header lines (day separator, new
/// messages marker), then its wrapped text. Must agree with
/// [`timeline::header_height`] and [`timeline::text_height`].
fn message_lines(
    me: &str,
    room: &Room,
    entry: &Entry,
    prev: Option<&Entry>,
    width: usize,
) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    if timeline::starts_day(entry, prev) {
        let label = format!("── {} ", format_day(entry.time.day));
        let fill = width.saturating_sub(wrap::width(&label));
        lines.push(Line::from(Span::styled(
            format!("{label}{}", "─".repeat(fill)),
            dim(),
        )));
    }
    if room.marker == Some(entry.seq) {
        let label = "── new messages ";
        let fill = width.saturating_sub(wrap::width(label));
        lines.push(Line::from(Span::styled(
            format!("{label}{}", "─".repeat(fill)),
            Style::default().fg(Color::Red),
        )));
    }
    let mut name_style = Style::default()
        .fg(user_color(&entry.user))
        .add_modifier(Modifier::BOLD);
    if entry.own {
        name_style = name_style.add_modifier(Modifier::REVERSED);
    }
    let mut time_style = dim();
    let mut text_style = Style::default();
    if entry.mention {
        time_style = Style::default()
            .fg(Color::Yellow)
            .add_modifier(Modifier::BOLD);
        text_style = text_style.add_modifier(Modifier::BOLD);
    }
    let block_start = lines.len();
    if let Some(target) = entry.reply_to {
        lines.push(quote_line(room, target, width));
    }
    let prefix = vec![
        Span::styled(format!("{} ", entry.time.hhmm()), time_style),
        Span::styled(entry.user.clone(), name_style),
        Span::raw(": "),
    ];
    let body = timeline::body(entry);
    // "(edited)" and "message deleted" are the client's words, drawn dim.
    let own_text = if entry.deleted { 0 } else { entry.text.len() };
    let ranges = timeline::wrap_message(&entry.user, &body, width);
    push_text_lines(
        &mut lines,
        prefix,
        &entry.user,
        (&body, own_text),
        &ranges,
        width,
        text_style,
    );
    if !entry.reactions.is_empty() {
        lines.push(reactions_line(me, entry));
    }
    if room.selected == Some(entry.seq) {
        for line in &mut lines[block_start..] {
            line.style = SELECTED;
        }
    }
    lines
}

/// `↪ bob: first line of what it answers…`, or `↪ #N` when that message
/// is not loaded.
fn quote_line(room: &Room, target: u64, width: usize) -> Line<'static> {
    let quote = match room.log.get(&target) {
        Some(t) if t.deleted => format!("↪ {}: {DELETED}", t.user),
        Some(t) => format!("↪ {}: {}", t.user, t.text.lines().next().unwrap_or("")),
        None => format!("↪ #{target}"),
    };
    let indent = TIME_WIDTH.min(width);
    Line::from(vec![
        Span::raw(" ".repeat(indent)),
        Span::styled(fit(&quote, width - indent), dim()),
    ])
}

/// `👍 2  🎉 1` under a message, the ones the user is among highlighted.
fn reactions_line(me: &str, entry: &Entry) -> Line<'static> {
    let mut spans = vec![Span::raw(" ".repeat(TIME_WIDTH))];
    for (i, (emoji, users)) in entry.reactions.0.iter().enumerate() {
        if i > 0 {
            spans.push(Span::raw("  "));
        }
        let style = if users.iter().any(|u| u == me) {
            own_reaction()
        } else {
            Style::default()
        };
        let label = format!("{} {}", sanitize_line(emoji), users.len());
        spans.push(Span::styled(label, style));
    }
    Line::from(spans)
}

/// Pushes a message's wrapped lines. `text.1` is where the sender's own
/// text ends; what follows it is the client's (drawn dim).
fn push_text_lines(
    lines: &mut Vec<Line<'static>>,
    prefix: Vec<Span<'static>>,
    user: &str,
    (text, own): (&str, usize),
    ranges: &[Range<usize>],
    width: usize,
    text_style: Style,
) {
    let indent = " ".repeat(timeline::indent(user, width));
    for (i, range) in ranges.iter().enumerate() {
        let mut body = Vec::new();
        let split = own.clamp(range.start, range.end);
        if split > range.start {
            body.push(Span::styled(
                text[range.start..split].to_owned(),
                text_style,
            ));
        }
        if range.end > split {
            body.push(Span::styled(text[split..range.end].to_owned(), dim()));
        }
        if i == 0 {
            // With no room after the prefix, the range is empty and the
            // text starts on the next line.
            let mut spans = prefix.clone();
            spans.extend(body);
            lines.push(Line::from(spans));
        } else {
            let mut spans = vec![Span::raw(indent.clone())];
            spans.extend(body);
            lines.push(Line::from(spans));
        }
    }
}

fn pending_lines(app: &App, pending: &Pending, width: usize) -> Vec<Line<'static>> {
    let (mark, style) = match pending.failed {
        Some(_) => ("  ✗   ", Style::default().fg(Color::Red)),
        None => ("  ⋯   ", dim()),
    };
    let prefix = vec![
        Span::styled(mark.to_owned(), style),
        Span::styled(app.user.clone(), style.add_modifier(Modifier::BOLD)),
        Span::styled(": ".to_owned(), style),
    ];
    let ranges = timeline::wrap_message(&app.user, &pending.text, width);
    let mut lines = Vec::new();
    push_text_lines(
        &mut lines,
        prefix,
        &app.user,
        (&pending.text, pending.text.len()),
        &ranges,
        width,
        style,
    );
    lines
}

fn render_messages(app: &App, frame: &mut Frame, area: Rect) {
    if area.width == 0 || area.height == 0 {
        return;
    }
    let Some(room) = app.current_room() else {
        let hint = vec![
            Line::raw(""),
            Line::raw("  You are not in any room."),
            Line::raw("  /join ROOM joins (or creates) one; /rooms lists them all."),
            Line::raw("  F1 shows every key and command."),
        ];
        frame.render_widget(Paragraph::new(hint).style(dim()), area);
        return;
    };
    let width = usize::from(area.width);
    let height = usize::from(area.height);
    let mut out: Vec<Line<'static>> = Vec::with_capacity(height);
    if let Some(top) = timeline::view_top(room, &app.user, area.width, area.height) {
        let mut prev = room.log.range(..top.seq).next_back().map(|(_, e)| e);
        let mut skip = None;
        for (_, entry) in room.log.range(top.seq..) {
            let lines = message_lines(&app.user, room, entry, prev, width);
            let header = timeline::header_height(room, entry, prev);
            let skip_now = skip.take().unwrap_or((top.offset + header).max(0) as usize);
            out.extend(lines.into_iter().skip(skip_now).take(height - out.len()));
            skip = Some(0);
            prev = Some(entry);
            if out.len() >= height {
                break;
            }
        }
    } else if room.pending.is_empty() {
        let text = if room.joined {
            format!("  No messages in #{} yet. Say hello!", room.name)
        } else {
            "  Joining…".to_owned()
        };
        out.push(Line::raw(""));
        out.push(Line::from(Span::styled(text, dim())));
    }
    for pending in &room.pending {
        if out.len() >= height {
            break;
        }
        let lines = pending_lines(app, pending, width);
        out.extend(lines.into_iter().take(height - out.len()));
    }
    frame.render_widget(Paragraph::new(out), area);
}

fn render_typing(app: &App, frame: &mut Frame, area: Rect) {
    if area.height == 0 {
        return;
    }
    let Some(room) = app.current_room() else {
        return;
    };
    let typing = room.typing_now(&app.user, app.now);
    let left = match typing.as_slice() {
        [] => String::new(),
        [one] => format!("{one} is typing…"),
        [a, b] => format!("{a} and {b} are typing…"),
        [a, b, c] => format!("{a}, {b} and {c} are typing…"),
        more => format!("{} people are typing…", more.len()),
    };
    let right = if room.loading_older {
        "loading older messages… ".to_owned()
    } else if room.unseen_below > 0 {
        format!("↓ {} new · End ", room.unseen_below)
    } else if room.anchor.is_some() {
        "↑ scrolled back · End ".to_owned()
    } else {
        String::new()
    };
    let width = usize::from(area.width);
    let right_width = wrap::width(&right);
    let left = fit(&left, width.saturating_sub(right_width + 1));
    let pad = width.saturating_sub(wrap::width(&left) + right_width);
    let line = Line::from(vec![
        Span::styled(left, dim().add_modifier(Modifier::ITALIC)),
        Span::raw(" ".repeat(pad)),
        Span::styled(right, Style::default().fg(Color::Yellow)),
    ]);
    frame.render_widget(Paragraph::new(line), area);
}

/// "replying to bob: …" or "editing your message" above the input.
fn render_compose(app: &App, frame: &mut Frame, area: Rect) {
    if area.height == 0 {
        return;
    }
    let width = usize::from(area.width);
    let hint = "  Esc cancels";
    let what = match &app.compose {
        None => return,
        Some(Compose::Edit { .. }) => "editing your message · Enter saves".to_owned(),
        Some(Compose::Reply { room, seq }) => {
            let entry = app
                .rooms
                .iter()
                .find(|r| &r.name == room)
                .and_then(|r| r.log.get(seq));
            match entry {
                Some(e) if e.deleted => format!("replying to {}: {DELETED}", e.user),
                Some(e) => format!(
                    "replying to {}: {}",
                    e.user,
                    e.text.lines().next().unwrap_or("")
                ),
                None => format!("replying to #{seq}"),
            }
        }
    };
    let what = fit(&what, width.saturating_sub(hint.len()));
    let line = Line::from(vec![
        Span::styled(what, Style::default().fg(Color::Cyan)),
        Span::styled(hint, dim()),
    ]);
    frame.render_widget(Paragraph::new(line), area);
}

fn render_input(app: &App, frame: &mut Frame, area: Rect) {
    if area.height == 0 || area.width == 0 {
        return;
    }
    let prompt_width = PROMPT.chars().count() as u16;
    let text_width = usize::from(area.width.saturating_sub(prompt_width)).max(1);
    let text = app.input.text();
    if text.is_empty() && app.overlay.is_none() {
        let hint = match app.current_room() {
            Some(room) => format!(
                "Message #{}  (Enter sends, Alt+Enter new line, F1 help)",
                room.name
            ),
            None => "/join ROOM to start  (F1 help)".to_owned(),
        };
        let line = Line::from(vec![
            Span::styled(PROMPT, Style::default().fg(Color::Cyan)),
            Span::styled(fit(&hint, text_width), dim()),
        ]);
        frame.render_widget(Paragraph::new(line), area);
        frame.set_cursor_position(Position::new(area.x + prompt_width, area.y));
        return;
    }
    let (rows, (cursor_row, cursor_col)) = input_rows(text, app.input.cursor(), text_width);
    let visible = usize::from(area.height);
    let first = (cursor_row + 1).saturating_sub(visible);
    let lines: Vec<Line> = rows
        .iter()
        .enumerate()
        .skip(first)
        .take(visible)
        .map(|(i, range)| {
            let lead = if i == 0 { PROMPT } else { "  " };
            Line::from(vec![
                Span::styled(lead, Style::default().fg(Color::Cyan)),
                Span::raw(&text[range.clone()]),
            ])
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), area);
    if app.overlay.is_none() {
        let x = area.x + prompt_width + cursor_col.min(text_width) as u16;
        let y = area.y + (cursor_row - first) as u16;
        frame.set_cursor_position(Position::new(x.min(area.right().saturating_sub(1)), y));
    }
}

/// The server's address without the `ws://` and `/ws` everyone knows.
fn short_server(url: &str) -> &str {
    let s = url.strip_prefix("ws://").unwrap_or(url);
    s.strip_suffix("/ws").unwrap_or(s)
}

fn render_status(app: &App, frame: &mut Frame, area: Rect) {
    if area.height == 0 {
        return;
    }
    let bar = Style::default().bg(Color::DarkGray).fg(Color::White);
    let (state, state_style) = match &app.link {
        Link::Connected => ("● connected".to_owned(), bar.fg(Color::LightGreen)),
        Link::Connecting => ("◌ connecting…".to_owned(), bar.fg(Color::LightYellow)),
        Link::Reconnecting { at, .. } => {
            let left = at.saturating_duration_since(app.now);
            let secs = left.as_millis().div_ceil(1000);
            (
                format!("↻ reconnecting in {secs} s"),
                bar.fg(Color::LightYellow),
            )
        }
        Link::Offline { reason } => (format!("✗ offline: {reason}"), bar.fg(Color::LightRed)),
    };
    let mut spans = vec![
        Span::styled(
            format!(" {state}"),
            state_style.add_modifier(Modifier::BOLD),
        ),
        Span::styled(
            format!(" │ {} @ {}", app.user, short_server(&app.server)),
            bar,
        ),
    ];
    if app.link != Link::Connected {
        let queued: usize = app
            .rooms
            .iter()
            .map(|r| r.pending.iter().filter(|p| p.failed.is_none()).count())
            .sum();
        if queued > 0 {
            spans.push(Span::styled(format!(" │ {queued} queued"), bar));
        }
    }
    let notice = app
        .notice
        .as_ref()
        .filter(|n| app.now.saturating_duration_since(n.at) < NOTICE_FOR);
    if let (None, Link::Reconnecting { reason, .. }) = (notice, &app.link) {
        spans.push(Span::styled(format!(" │ {reason}"), bar.fg(Color::Gray)));
    }
    if let Some(notice) = notice {
        let style = if notice.error {
            bar.fg(Color::LightRed).add_modifier(Modifier::BOLD)
        } else {
            bar.fg(Color::LightCyan)
        };
        spans.push(Span::styled(" │ ", bar));
        spans.push(Span::styled(notice.text.clone(), style));
    }
    let help = " F1 help ";
    let used: usize = spans.iter().map(|s| s.width()).sum();
    let width = usize::from(area.width);
    if used + help.len() <= width {
        spans.push(Span::styled(" ".repeat(width - used - help.len()), bar));
        spans.push(Span::styled(help, bar.fg(Color::Gray)));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)).style(bar), area);
}

/// A box of `width` x `height` centered in `area`, clipped to it.
fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect::new(
        area.x + (area.width - width) / 2,
        area.y + (area.height - height) / 2,
        width,
        height,
    )
}

/// The key table of the help overlay (also in `docs/tui.md`).
pub const HELP: &[(&str, &str)] = &[
    ("Enter", "send the line"),
    ("Alt+Enter", "new line in the message"),
    ("Ctrl+P/N", "previous / next room"),
    ("Alt+1..9", "jump to room 1..9"),
    ("PageUp/PageDown, wheel", "scroll; older pages load"),
    ("End, Esc", "jump to the newest message"),
    ("Left/Right, Home/End", "move (Ctrl: by word)"),
    ("Backspace/Delete", "delete a character"),
    ("Ctrl+W, Ctrl+U, Ctrl+K", "delete word/to start/to end"),
    ("Ctrl+Up/Down", "recall sent lines"),
    ("Up (empty), Alt+Up", "select a message; Esc leaves"),
    ("e  d  r  +", "edit, delete, reply, react"),
    ("Enter on a reply", "jump to the message it answers"),
    ("Ctrl+F", "search every room"),
    ("Tab", "complete a user name"),
    ("F1", "this help"),
    ("Ctrl+C", "quit"),
    ("", ""),
    ("/join ROOM", "join or create a room"),
    ("/leave, /leave!", "leave; ! forgets it on every device"),
    ("/dm USER", "talk with USER alone (shown as @USER)"),
    ("/private ROOM", "create a private room (shown as *ROOM)"),
    ("/invite USER", "let USER into this private room"),
    ("/mute", "no notifications from this room"),
    ("/rooms, /who", "browse rooms; who is in this room"),
    ("/edit TEXT", "edit your last message here"),
    ("/delete", "delete your last message here"),
    ("/react EMOJI", "react to the selected or last message"),
    ("/reply TEXT", "reply to the selected or last message"),
    ("/search WORDS", "search every room"),
    ("/export [PATH]", "save this room as Markdown"),
    ("/delete ROOM", "delete a room (admins only)"),
    ("/reconnect", "reconnect now"),
    ("/help, /quit", "this help, quit"),
    ("//text", "send a line starting with /"),
];

/// Widths of the key and text columns of help entries.
fn help_widths(entries: &[(&str, &str)]) -> (usize, usize) {
    let key = entries
        .iter()
        .map(|(k, _)| wrap::width(k))
        .max()
        .unwrap_or(0);
    let text = entries
        .iter()
        .map(|(_, t)| wrap::width(t))
        .max()
        .unwrap_or(0);
    (key, text)
}

fn help_entry(
    entry: Option<&(&str, &str)>,
    (key_width, text_width): (usize, usize),
) -> Vec<Span<'static>> {
    let (key, what) = entry.copied().unwrap_or(("", ""));
    vec![
        Span::styled(
            format!(" {key:<key_width$}  "),
            Style::default()
                .fg(Color::Cyan)
                .add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!("{what:<text_width$} ")),
    ]
}

fn render_help(frame: &mut Frame, area: Rect) {
    // Keys, then commands; side by side when the screen is too short for
    // one column but wide enough for two.
    let split = HELP
        .iter()
        .position(|(k, _)| k.is_empty())
        .unwrap_or(HELP.len());
    let (keys, commands) = (&HELP[..split], &HELP[(split + 1).min(HELP.len())..]);
    let (left, right) = (help_widths(keys), help_widths(commands));
    let two_width = left.0 + left.1 + right.0 + right.1 + 11;
    let two_columns =
        usize::from(area.height) < HELP.len() + 2 && usize::from(area.width) >= two_width;
    let (lines, width): (Vec<Line>, usize) = if two_columns {
        let lines = (0..keys.len().max(commands.len()))
            .map(|i| {
                let mut spans = help_entry(keys.get(i), left);
                spans.push(Span::styled("│", dim()));
                spans.extend(help_entry(commands.get(i), right));
                Line::from(spans)
            })
            .collect();
        (lines, two_width)
    } else {
        let widths = help_widths(HELP);
        let lines = HELP
            .iter()
            .map(|e| Line::from(help_entry(Some(e), widths)))
            .collect();
        (lines, widths.0 + widths.1 + 6)
    };
    let rect = centered(area, width as u16, lines.len() as u16 + 2);
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" Keys and commands · Esc closes "),
        ),
        rect,
    );
}

fn render_who(app: &App, frame: &mut Frame, area: Rect) {
    let Some(room) = app.current_room() else {
        return;
    };
    let mut lines: Vec<Line> = room
        .members
        .iter()
        .map(|m| {
            let you = if *m == app.user { "  (you)" } else { "" };
            Line::from(vec![
                Span::styled(format!(" {m}"), Style::default().fg(user_color(m))),
                Span::styled(you, dim()),
            ])
        })
        .collect();
    if lines.is_empty() {
        lines.push(Line::from(Span::styled(" nobody online", dim())));
    }
    let title = format!(" #{} · {} online · Esc ", room.name, room.members.len());
    let width = (wrap::width(&title) + 4).max(30) as u16;
    let rect = centered(
        area,
        width,
        (lines.len() as u16 + 2).min(area.height.saturating_sub(2)),
    );
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(title)),
        rect,
    );
}

fn render_browser(
    app: &App,
    frame: &mut Frame,
    area: Rect,
    list: Option<&[RoomSummary]>,
    selected: usize,
    filter: &str,
) {
    let rect = centered(area, 60, area.height.saturating_sub(4).max(8));
    frame.render_widget(Clear, rect);
    let block = Block::default()
        .borders(Borders::ALL)
        .title(" Rooms on the server · Enter joins · Esc closes ");
    let inner = block.inner(rect);
    frame.render_widget(block, rect);
    let mut lines = vec![
        Line::from(vec![
            Span::styled(" filter: ", dim()),
            Span::raw(filter.to_owned()),
            Span::styled("▏", Style::default().fg(Color::Cyan)),
        ]),
        Line::from(Span::styled(
            format!(
                " {:<24} {:>6} {:>8}  {}",
                "room", "online", "messages", "last message"
            ),
            Style::default().add_modifier(Modifier::BOLD),
        )),
    ];
    match list {
        None => lines.push(Line::from(Span::styled(" loading…", dim()))),
        Some(list) => {
            let rooms = filter_rooms(list, filter);
            if rooms.is_empty() {
                lines.push(Line::from(Span::styled(" no room matches", dim())));
            }
            let rows = usize::from(inner.height).saturating_sub(2).max(1);
            let first = (selected + 1).saturating_sub(rows);
            for (i, room) in rooms.iter().enumerate().skip(first).take(rows) {
                let joined = if app.rooms.iter().any(|r| r.name == room.name) {
                    "✓"
                } else {
                    " "
                };
                let last = room.last_ts.map_or_else(
                    || "—".to_owned(),
                    |ts| crate::clock::format_short(ts, app.zone),
                );
                let text = format!(
                    "{joined}{:<24} {:>6} {:>8}  {last}",
                    fit(&crate::sanitize::sanitize_line(&room.name), 24),
                    room.members,
                    room.last_seq
                );
                let style = if i == selected {
                    Style::default().add_modifier(Modifier::REVERSED)
                } else {
                    Style::default()
                };
                lines.push(Line::from(Span::styled(text, style)));
            }
        }
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

/// The reaction picker: the common eight, numbered, or one typed.
fn render_picker(frame: &mut Frame, area: Rect, choice: usize, typed: &str) {
    let mut spans = vec![Span::raw(" ")];
    for (i, emoji) in REACTIONS.iter().enumerate() {
        let style = if typed.is_empty() && i == choice {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
        };
        spans.push(Span::styled(format!("{} {emoji}", i + 1), style));
        spans.push(Span::raw("  "));
    }
    let lines = vec![
        Line::from(spans),
        Line::from(vec![
            Span::styled(" or type one: ", dim()),
            Span::raw(sanitize_line(typed)),
            Span::styled("▏", Style::default().fg(Color::Cyan)),
        ]),
    ];
    let rect = centered(area, 50, 4);
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" React · 1-8, or arrows and Enter · Esc "),
        ),
        rect,
    );
}

/// `text` in spans, with every word that starts with one of `words`
/// (lowercase) highlighted: the server's rule, a query word matches as a
/// prefix, case-insensitively.
pub fn highlight(text: &str, words: &[String], style: Style) -> Vec<Span<'static>> {
    let mut spans = Vec::new();
    let mut plain = String::new();
    let mut rest = text;
    while !rest.is_empty() {
        let word_len = rest
            .find(|c: char| !c.is_alphanumeric())
            .unwrap_or(rest.len());
        if word_len == 0 {
            let c = rest.chars().next().map_or(1, char::len_utf8);
            plain.push_str(&rest[..c]);
            rest = &rest[c..];
            continue;
        }
        let word = &rest[..word_len];
        let lower = word.to_lowercase();
        if words.iter().any(|w| lower.starts_with(w.as_str())) {
            if !plain.is_empty() {
                spans.push(Span::styled(std::mem::take(&mut plain), style));
            }
            spans.push(Span::styled(word.to_owned(), style.patch(found())));
        } else {
            plain.push_str(word);
        }
        rest = &rest[word_len..];
    }
    if !plain.is_empty() {
        spans.push(Span::styled(plain, style));
    }
    spans
}

/// The search overlay: the words, then one line per result (time, room,
/// sender, text with the words highlighted).
fn render_search(app: &App, frame: &mut Frame, area: Rect, view: &SearchView) {
    let width = area.width.saturating_sub(4).min(110);
    let rect = centered(area, width, area.height.saturating_sub(4).max(6));
    frame.render_widget(Clear, rect);
    let block = Block::default()
        .borders(Borders::ALL)
        .title(" Search every room · Enter opens · Esc closes ");
    let inner = block.inner(rect);
    frame.render_widget(block, rect);
    let mut lines = vec![Line::from(vec![
        Span::styled(" search: ", dim()),
        Span::raw(sanitize_line(&view.query)),
        Span::styled(
            if view.prompt { "▏" } else { "" },
            Style::default().fg(Color::Cyan),
        ),
    ])];
    let rows = usize::from(inner.height).saturating_sub(2).max(1);
    if view.prompt {
        lines.push(Line::from(Span::styled(
            " type words to find (each as the start of a word), Enter searches",
            dim(),
        )));
    } else if view.hits.is_empty() {
        let text = if view.loading {
            " searching…"
        } else {
            " no messages match"
        };
        lines.push(Line::from(Span::styled(text, dim())));
    } else {
        let first = (view.selected + 1).saturating_sub(rows);
        for (i, hit) in view.hits.iter().enumerate().skip(first).take(rows) {
            let style = if i == view.selected {
                Style::default().add_modifier(Modifier::REVERSED)
            } else {
                Style::default()
            };
            let mut spans = vec![
                Span::styled(
                    format!(" {} ", crate::clock::format_short(hit.ts, app.zone)),
                    style.patch(dim()),
                ),
                Span::styled(format!("#{} ", sanitize_line(&hit.room)), style),
                Span::styled(
                    hit.user.clone(),
                    style.fg(user_color(&hit.user)).add_modifier(Modifier::BOLD),
                ),
                Span::styled(": ", style),
            ];
            spans.extend(highlight(&hit.text, &view.words, style));
            lines.push(Line::from(spans));
        }
        if view.loading {
            lines.push(Line::from(Span::styled(" loading more…", dim())));
        }
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

#[cfg(test)]
mod tests;
