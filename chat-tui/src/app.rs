//! The client's state and its one entry point, [`update`]: an [`Event`] in
//! (a key, the mouse, a paste, a resize, a clock tick, or news from the
//! network task), the state changed, and at most one [`Action`] out for the
//! caller to carry out. No terminal and no socket here, so every behaviour
//! of the client can be tested by feeding events and looking at the state.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chat_proto::validate::{dm_room, dm_users, is_valid_name, normalize_text, TextError};
use chat_proto::{AccountRoom, ErrorCode, MessageRecord, PresenceState, Reactions, RoomSummary};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEvent, MouseEventKind};
use ratatui::layout::Rect;

use crate::clock::{LocalTime, ZoneFn};
use crate::input::LineEditor;
use crate::net::{NetCommand, NetEvent};
use crate::notify::{self, Alert, Arrival};
use crate::sanitize::{sanitize, sanitize_line};
use crate::timeline::{self, Pos};

/// Messages kept per room. Past this the oldest are dropped (and fetched
/// again if the user scrolls back to them).
pub const MAX_LOADED: usize = 100_000;
/// Messages asked for per older page.
pub const PAGE_SIZE: u64 = 100;
/// How long "bob is typing…" stays after bob's last keystroke.
pub const TYPING_FADE: Duration = Duration::from_secs(5);
/// Least time between two `typing` notices sent for the user.
pub const TYPING_EVERY: Duration = Duration::from_secs(3);
/// How long a notice stays in the status bar.
pub const NOTICE_FOR: Duration = Duration::from_secs(8);
/// Lines one mouse wheel step scrolls.
const WHEEL_LINES: i32 = 3;
/// Failed lines kept visible per room.
const MAX_FAILED: usize = 5;

/// Something that happened, for [`update`].
#[derive(Debug, Clone)]
pub enum Event {
    Key(KeyEvent),
    Mouse(MouseEvent),
    /// Text pasted into the terminal (bracketed paste).
    Paste(String),
    /// The terminal's new size.
    Resize(u16, u16),
    /// Time passed: typing lines fade, countdowns move.
    Tick,
    /// The terminal gained (true) or lost focus, where it reports it.
    Focus(bool),
    Net(NetEvent),
}

/// What the caller must do after an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Hand this command to the network task.
    Net(NetCommand),
    /// Leave the program.
    Quit,
}

/// The state of the connection, as the status bar shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    Connected,
    Connecting,
    /// Waiting to retry at `at`.
    Reconnecting {
        at: Instant,
        reason: String,
    },
    /// Not retrying until the user asks (`/reconnect`).
    Offline {
        reason: String,
    },
}

/// One message held for display. Text from the server is sanitized once,
/// here, so drawing never meets a control character.
#[derive(Debug)]
pub struct Entry {
    pub seq: u64,
    pub user: String,
    pub text: String,
    pub ts: i64,
    pub time: LocalTime,
    /// Written by this user.
    pub own: bool,
    /// Mentions this user by name.
    pub mention: bool,
    /// The message of the same room this one answers.
    pub reply_to: Option<u64>,
    /// The text was edited since it was sent.
    pub edited: bool,
    /// The message was deleted: `text` is empty.
    pub deleted: bool,
    /// Who reacted with what, as the server sent it: user names are
    /// compared with the user's own, emoji sent back to toggle, so both
    /// are sanitized where they are drawn.
    pub reactions: Reactions,
    /// (width, lines) of the last wrap; see [`timeline::text_height`].
    pub(crate) height: Cell<(u16, u16)>,
}

impl Entry {
    /// Takes the state of `message` (edited, deleted, reactions) in place
    /// of its own; the wrap is measured again.
    fn apply(&mut self, message: &MessageRecord, me: &str) {
        self.text = sanitize(&message.text, true);
        self.mention = !self.own && mentions(&self.text, me);
        self.reply_to = message.reply_to;
        self.edited = message.edited_ts.is_some();
        self.deleted = message.deleted;
        self.reactions = message.reactions.clone();
        self.height.set((0, 0));
    }
}

/// A line the user sent that the server has not acknowledged yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: String,
    pub text: String,
    /// Why it was refused, once it was.
    pub failed: Option<String>,
}

/// A joined room and everything shown about it.
#[derive(Debug)]
pub struct Room {
    pub name: String,
    /// Joined on the current connection (false while joining or rejoining).
    pub joined: bool,
    /// Users online in the room.
    pub members: BTreeSet<String>,
    /// Loaded messages by seq.
    pub log: BTreeMap<u64, Entry>,
    /// Older messages exist on the server before the first loaded one.
    pub has_more: bool,
    /// A page of older messages has been asked for.
    pub loading_older: bool,
    /// Messages from others since the user last looked at the room.
    pub unread: usize,
    /// One of those mentions the user.
    pub mentioned: bool,
    /// The oldest unread message, where the "new messages" line will go.
    first_unread: Option<u64>,
    /// The "new messages" line is drawn above this message.
    pub marker: Option<u64>,
    /// Who is typing, and when they last said so.
    pub typing: BTreeMap<String, Instant>,
    /// Lines sent but not acknowledged, oldest first.
    pub pending: Vec<Pending>,
    /// Top line of the view when scrolled back; `None` follows the newest.
    pub anchor: Option<Pos>,
    /// Messages that arrived below the view while scrolled back.
    pub unseen_below: usize,
    /// Only its members see it (a private room, or a direct conversation).
    pub private: bool,
    /// The read marker as the server has it (sent by this client, or moved
    /// by another device of the user).
    pub read: u64,
    /// No notifications from this room (`/mute`).
    pub muted: bool,
    /// The message picked with Up (on an empty input) or Alt+Up, which
    /// e, d, r, + and the message commands act on.
    pub selected: Option<u64>,
}

impl Room {
    /// A room being joined.
    pub fn new(name: impl Into<String>) -> Self {
        Room {
            name: name.into(),
            joined: false,
            members: BTreeSet::new(),
            log: BTreeMap::new(),
            has_more: false,
            loading_older: false,
            unread: 0,
            mentioned: false,
            first_unread: None,
            marker: None,
            typing: BTreeMap::new(),
            pending: Vec::new(),
            anchor: None,
            unseen_below: 0,
            private: false,
            read: 0,
            muted: false,
            selected: None,
        }
    }

    /// A private room (or direct conversation) being joined.
    pub fn new_private(name: impl Into<String>) -> Self {
        Room {
            private: true,
            ..Room::new(name)
        }
    }

    /// How the room is named on screen for `me`: a direct conversation as
    /// `@` and the other user, a private room with a `*` in front.
    pub fn label(&self, me: &str) -> String {
        match dm_users(&self.name) {
            Some((a, b)) => format!("@{}", if a == me { b } else { a }),
            None if self.private => format!("*{}", self.name),
            None => self.name.clone(),
        }
    }

    /// Newest loaded seq.
    pub fn newest_seq(&self) -> Option<u64> {
        self.log.keys().next_back().copied()
    }

    /// Oldest loaded seq.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.log.keys().next().copied()
    }

    /// Users typing right now, sorted, without `me`.
    pub fn typing_now(&self, me: &str, now: Instant) -> Vec<&str> {
        self.typing
            .iter()
            .filter(|(user, at)| {
                user.as_str() != me && now.saturating_duration_since(**at) < TYPING_FADE
            })
            .map(|(user, _)| user.as_str())
            .collect()
    }
}

/// A window drawn over the screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlay {
    Help,
    /// Every room on the server; `list` is `None` until the answer arrives.
    Rooms {
        list: Option<Vec<RoomSummary>>,
        selected: usize,
        filter: String,
    },
    /// Who is in the current room.
    Who,
    /// The reaction picker for message `seq` of `room`: `choice` among
    /// [`REACTIONS`], or `typed` when the user writes one.
    React {
        room: String,
        seq: u64,
        choice: usize,
        typed: String,
    },
    /// Search across rooms.
    Search(SearchView),
}

/// The reactions the picker offers, chosen with 1-8.
pub const REACTIONS: [&str; 8] = ["👍", "👎", "😄", "🎉", "😕", "❤️", "🚀", "👀"];

/// The search overlay: the words typed, then the results as they come.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SearchView {
    pub query: String,
    /// Still typing the words (Ctrl+F); Enter searches.
    pub prompt: bool,
    /// The query's words, lowercased, to highlight in the results.
    pub words: Vec<String>,
    pub hits: Vec<Hit>,
    pub selected: usize,
    /// The cursor of the next page, while there is one.
    pub next: Option<String>,
    /// A page has been asked for.
    pub loading: bool,
}

/// One search result, sanitized for display on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub room: String,
    pub seq: u64,
    pub user: String,
    /// The text on one line (line breaks as spaces).
    pub text: String,
    pub ts: i64,
}

/// What the input is for besides a new message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compose {
    /// Enter saves the input as the new text of message `seq`.
    Edit { room: String, seq: u64 },
    /// Enter sends the input as an answer to message `seq`.
    Reply { room: String, seq: u64 },
}

/// A message to show and select once it is loaded: older pages are asked
/// for until it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    pub room: String,
    pub seq: u64,
}

/// A short message in the status bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub text: String,
    pub error: bool,
    pub at: Instant,
}

/// The whole state of the client.
#[derive(Debug)]
pub struct App {
    pub user: String,
    /// The server's URL, for the status bar.
    pub server: String,
    pub admin: bool,
    pub link: Link,
    /// Joined rooms in the order they were joined.
    pub rooms: Vec<Room>,
    /// Index of the room shown.
    pub current: usize,
    pub input: LineEditor,
    pub overlay: Option<Overlay>,
    /// A room just left with `/leave`, and when: the status bar asks
    /// whether to forget it on every device, and `y` (on an empty input,
    /// while the question shows) does.
    pub forget_offer: Option<(String, Instant)>,
    pub notice: Option<Notice>,
    /// The clock as of the latest event; set by the caller.
    pub now: Instant,
    /// Local time zone for message times.
    pub zone: ZoneFn,
    /// Terminal size, for scrolling by pages.
    pub size: (u16, u16),
    /// Which messages interrupt the user (`notify` in the config file).
    pub notify_level: notify::Level,
    /// Whether the terminal has focus. True until the terminal says
    /// otherwise: not every terminal reports focus.
    pub focused: bool,
    /// Interruptions to make, in order; the caller takes them after each
    /// update (they are side effects on the terminal, not state).
    pub alerts: Vec<Alert>,
    /// What the server supports of part 2 (`welcome.features`): the
    /// message commands are offered only when their feature is listed.
    pub features: BTreeSet<String>,
    /// An edit or a reply being written.
    pub compose: Option<Compose>,
    /// A message the user asked to delete: `y` confirms.
    pub delete_offer: Option<(String, u64)>,
    /// A message being loaded to jump to.
    pub jump: Option<Jump>,
    next_id: u64,
    last_typing_sent: Option<(String, Instant)>,
}

impl App {
    /// A client for `user` connected to `server`.
    pub fn new(user: impl Into<String>, server: impl Into<String>, zone: ZoneFn) -> Self {
        App {
            user: user.into(),
            server: server.into(),
            admin: false,
            link: Link::Connected,
            rooms: Vec::new(),
            current: 0,
            input: LineEditor::new(),
            overlay: None,
            forget_offer: None,
            notice: None,
            now: Instant::now(),
            zone,
            size: (80, 24),
            notify_level: notify::Level::default(),
            focused: true,
            alerts: Vec::new(),
            features: BTreeSet::new(),
            compose: None,
            delete_offer: None,
            jump: None,
            next_id: 0,
            last_typing_sent: None,
        }
    }

    /// The room shown, if any.
    pub fn current_room(&self) -> Option<&Room> {
        self.rooms.get(self.current)
    }

    fn current_room_mut(&mut self) -> Option<&mut Room> {
        self.rooms.get_mut(self.current)
    }

    fn room_index(&self, name: &str) -> Option<usize> {
        self.rooms.iter().position(|r| r.name == name)
    }

    fn room_mut(&mut self, name: &str) -> Option<&mut Room> {
        self.rooms.iter_mut().find(|r| r.name == name)
    }

    /// Shows a notice in the status bar.
    pub fn notify(&mut self, text: impl Into<String>, error: bool) {
        self.notice = Some(Notice {
            text: text.into(),
            error,
            at: self.now,
        });
    }

    /// Opens a room (or switches to it if already open) and returns the
    /// command that joins it.
    pub fn join(&mut self, name: &str) -> Option<Action> {
        let name = name.strip_prefix('#').unwrap_or(name);
        if !is_valid_name(name) {
            self.notify(
                format!(
                    "'{}' is not a room name: 1 to 32 of A-Z a-z 0-9 _ - .",
                    sanitize_line(name)
                ),
                true,
            );
            return None;
        }
        if let Some(index) = self.room_index(name) {
            self.switch_to(index);
            return None;
        }
        self.rooms.push(Room::new(name));
        self.switch_to(self.rooms.len() - 1);
        Some(Action::Net(NetCommand::Join {
            room: name.to_owned(),
        }))
    }

    /// Shows room `index`, marking where the user left off there.
    pub fn switch_to(&mut self, index: usize) {
        if index >= self.rooms.len() {
            return;
        }
        if let Some(old) = self.rooms.get_mut(self.current) {
            if self.current != index {
                old.marker = None;
                old.selected = None;
            }
        }
        if self.current != index {
            // An edit or a reply belongs to the room it was started in.
            if let Some(Compose::Edit { .. }) = self.compose.take() {
                self.input.set_text(String::new());
            }
            self.compose = None;
            self.delete_offer = None;
        }
        self.current = index;
        let room = &mut self.rooms[index];
        if room.unread > 0 {
            room.marker = room.first_unread;
        }
        room.unread = 0;
        room.mentioned = false;
        room.first_unread = None;
    }

    fn remove_room(&mut self, name: &str) {
        let Some(index) = self.room_index(name) else {
            return;
        };
        self.rooms.remove(index);
        if index < self.current || self.current >= self.rooms.len() {
            self.current = self.current.saturating_sub(1);
        }
        let current = self.current;
        self.switch_to(current);
    }

    /// The message pane's size (width, height) at the current terminal size.
    pub fn message_pane(&self) -> (u16, u16) {
        let areas = crate::layout::layout(Rect::new(0, 0, self.size.0, self.size.1), self);
        (areas.messages.width, areas.messages.height)
    }

    fn next_id(&mut self) -> String {
        self.next_id += 1;
        format!("s{}", self.next_id)
    }

    /// Adds a message to a room unless it is there already. Returns whether
    /// it was new.
    fn insert(&mut self, room_index: usize, message: MessageRecord) -> bool {
        let zone = self.zone;
        let own = message.user == self.user;
        let room = &mut self.rooms[room_index];
        if room.log.contains_key(&message.seq) {
            return false;
        }
        let mut entry = Entry {
            seq: message.seq,
            user: sanitize_line(&message.user),
            time: LocalTime::at(message.ts, zone),
            ts: message.ts,
            text: String::new(),
            own,
            mention: false,
            reply_to: None,
            edited: false,
            deleted: false,
            reactions: Reactions::default(),
            height: Cell::new((0, 0)),
        };
        entry.apply(&message, &self.user);
        room.log.insert(message.seq, entry);
        true
    }

    /// Whether the server offers `feature`; if not, says so.
    fn offers(&mut self, feature: &str, what: &str) -> bool {
        if self.features.contains(feature) {
            return true;
        }
        self.notify(format!("this server does not support {what}"), true);
        false
    }

    /// Keeps a room under [`MAX_LOADED`] messages by dropping the oldest,
    /// unless the user is reading them.
    fn trim(&mut self, room_index: usize) {
        let room = &mut self.rooms[room_index];
        while room.log.len() > MAX_LOADED {
            let Some(oldest) = room.oldest_seq() else {
                break;
            };
            if room.anchor.is_some_and(|a| a.seq <= oldest + PAGE_SIZE) {
                break;
            }
            room.log.remove(&oldest);
            room.has_more = true;
        }
    }

    /// Opens the account's rooms (from `welcome`) that are not open yet,
    /// with their unread counts; returns the joins to send.
    pub fn open_account_rooms(&mut self, rooms: &[AccountRoom]) -> Vec<NetCommand> {
        let mut joins = Vec::new();
        for account in rooms {
            if self.room_index(&account.name).is_some() {
                continue;
            }
            let mut room = Room::new(account.name.clone());
            room.private = account.private;
            room.read = account.read;
            room.unread = usize::try_from(account.last_seq.saturating_sub(account.read))
                .unwrap_or(usize::MAX);
            if room.unread > 0 {
                room.first_unread = Some(account.read + 1);
            }
            self.rooms.push(room);
            joins.push(NetCommand::Join {
                room: account.name.clone(),
            });
        }
        joins
    }

    /// The read marker to send, when the user is looking at the newest
    /// message of the current room and the server's marker is behind it.
    pub fn read_to_send(&mut self) -> Option<Action> {
        if self.link != Link::Connected || self.overlay.is_some() || !self.focused {
            return None;
        }
        let room = self.rooms.get_mut(self.current)?;
        let newest = room.newest_seq()?;
        if !room.joined || room.anchor.is_some() || newest <= room.read {
            return None;
        }
        room.read = newest;
        Some(Action::Net(NetCommand::Read {
            room: room.name.clone(),
            seq: newest,
        }))
    }

    /// Another device of the user read `room` up to `seq`.
    fn read_elsewhere(&mut self, room_index: usize, seq: u64) {
        let is_current = room_index == self.current;
        let room = &mut self.rooms[room_index];
        room.read = room.read.max(seq);
        if is_current {
            return;
        }
        let read = room.read;
        room.unread = room.log.range(read + 1..).filter(|(_, e)| !e.own).count();
        if room.unread == 0 {
            room.mentioned = false;
            room.first_unread = None;
        }
    }

    /// A new message for the user: counts, mentions, echo of a pending
    /// line, and (when `live`) whether it interrupts the user.
    fn arrived(&mut self, room_index: usize, seq: u64, live: bool) {
        let is_current = room_index == self.current;
        let room = &mut self.rooms[room_index];
        let Some(entry) = room.log.get(&seq) else {
            return;
        };
        let arrival = Arrival {
            own: entry.own,
            mention: entry.mention,
            dm: dm_users(&room.name).is_some(),
            backlog: !live,
            in_view: is_current && room.anchor.is_none() && self.focused,
            muted: room.muted,
        };
        if notify::should_alert(self.notify_level, arrival) {
            let user = self.user.clone();
            self.alerts.push(Alert {
                room: room.label(&user),
                user: entry.user.clone(),
                text: entry.text.replace('\n', " "),
            });
        }
        room.typing.remove(&entry.user);
        // Our own line: its pending copy went with its `Ack`, which the
        // network task sends before the echo.
        if entry.own {
            return;
        }
        if is_current {
            if room.anchor.is_some() {
                room.unseen_below += 1;
            }
        } else {
            if room.unread == 0 {
                room.first_unread = Some(seq);
            }
            room.unread += 1;
            room.mentioned |= entry.mention;
        }
    }

    /// Scrolls the current room up by `lines`, asking for an older page
    /// when the view gets near the top of what is loaded.
    fn scroll_up(&mut self, lines: i32) -> Option<Action> {
        let (width, height) = self.message_pane();
        let user = self.user.clone();
        let room = self.rooms.get_mut(self.current)?;
        if let Some(top) = timeline::view_top(room, &user, width, height) {
            let (top, _) = timeline::scroll_up(room, top, lines, width);
            room.anchor = Some(top).filter(|top| above_bottom(room, &user, *top, width, height));
        }
        self.maybe_fetch_older()
    }

    fn scroll_down(&mut self, lines: i32) {
        let (width, height) = self.message_pane();
        let user = self.user.clone();
        let Some(room) = self.rooms.get_mut(self.current) else {
            return;
        };
        let Some(anchor) = room.anchor else { return };
        room.anchor = timeline::scroll_down(room, anchor, lines, width)
            .filter(|top| above_bottom(room, &user, *top, width, height));
        if room.anchor.is_none() {
            room.unseen_below = 0;
        }
    }

    /// Back to the newest message.
    fn follow(&mut self) {
        if let Some(room) = self.current_room_mut() {
            room.anchor = None;
            room.unseen_below = 0;
        }
        let current = self.current;
        if current < self.rooms.len() {
            self.trim(current);
        }
    }

    /// Asks for the page before the oldest loaded message when the view is
    /// within a screen of it.
    fn maybe_fetch_older(&mut self) -> Option<Action> {
        let (width, height) = self.message_pane();
        let user = self.user.clone();
        let room = self.rooms.get_mut(self.current)?;
        if !room.has_more || room.loading_older || (!room.joined && room.log.is_empty()) {
            return None;
        }
        let near_top = match timeline::view_top(room, &user, width, height) {
            Some(top) => {
                timeline::lines_above(room, top, width, i32::from(height)) < i32::from(height)
            }
            None => true,
        };
        if !near_top {
            return None;
        }
        room.loading_older = true;
        Some(Action::Net(NetCommand::History {
            room: room.name.clone(),
            before: room.oldest_seq(),
            limit: PAGE_SIZE,
        }))
    }
}

/// True when a view starting at `top` does not reach the newest line: more
/// lines follow it than the pane holds. At the bottom the view follows.
fn above_bottom(room: &Room, user: &str, top: Pos, width: u16, height: u16) -> bool {
    timeline::fills_pane(room, user, top, width, height.saturating_add(1))
}

/// True when `text` mentions `user` as a word (`alice`, `@alice`, `Alice:`),
/// ignoring case.
pub fn mentions(text: &str, user: &str) -> bool {
    if user.is_empty() {
        return false;
    }
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    let lower = text.to_lowercase();
    let user = user.to_lowercase();
    let mut from = 0;
    while let Some(found) = lower[from..].find(&user) {
        let start = from + found;
        let end = start + user.len();
        let before_ok = lower[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !is_name_char(c));
        // A trailing '.' ends a sentence, not the name.
        let after = lower[end..].trim_start_matches('.');
        let after_ok = after.chars().next().is_none_or(|c| !is_name_char(c));
        if before_ok && after_ok {
            return true;
        }
        from = start + lower[start..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

/// Applies one event to the state; returns what the caller must do next.
pub fn update(app: &mut App, event: Event) -> Option<Action> {
    match event {
        Event::Key(key) if key.kind == KeyEventKind::Press => on_key(app, key),
        Event::Key(_) => None,
        Event::Mouse(mouse) => on_mouse(app, mouse),
        Event::Paste(text) => {
            if app.overlay.is_none() {
                app.input.insert_str(&text);
            }
            None
        }
        Event::Resize(width, height) => {
            app.size = (width, height);
            None
        }
        Event::Tick => None,
        Event::Focus(focused) => {
            app.focused = focused;
            None
        }
        Event::Net(event) => on_net(app, event),
    }
    // Whatever moved the view (a key, a new message, a room switch), a read
    // marker goes out once the newest line is in sight; when this update
    // already has an action, the next one (a tick at the latest) sends it.
    .or_else(|| app.read_to_send())
}

fn on_key(app: &mut App, key: KeyEvent) -> Option<Action> {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    let alt = key.modifiers.contains(KeyModifiers::ALT);
    if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('C')) {
        return Some(Action::Quit);
    }
    if key.code == KeyCode::F(1) {
        app.overlay = match app.overlay {
            Some(Overlay::Help) => None,
            _ => Some(Overlay::Help),
        };
        return None;
    }
    if app.overlay.is_some() {
        return on_overlay_key(app, key);
    }
    if let Some(action) = answer_forget_offer(app, key, ctrl || alt) {
        return action;
    }
    if let Some(action) = messages::answer_delete_offer(app, key) {
        return action;
    }
    if let Some(action) = messages::on_message_key(app, key, ctrl, alt) {
        return action;
    }
    let (_, pane_height) = app.message_pane();
    let page = i32::from(pane_height).saturating_sub(1).max(1);
    match key.code {
        KeyCode::Enter if alt => app.input.insert_char('\n'),
        KeyCode::Enter => return submit(app),
        KeyCode::Char('p') if ctrl => cycle_room(app, -1),
        KeyCode::Char('n') if ctrl => cycle_room(app, 1),
        KeyCode::Char(c @ '1'..='9') if alt => {
            app.switch_to(c as usize - '1' as usize);
        }
        KeyCode::PageUp => return app.scroll_up(page),
        KeyCode::PageDown => app.scroll_down(page),
        KeyCode::End if ctrl || app.input.at_end() => app.follow(),
        KeyCode::End => app.input.end(),
        KeyCode::Home => app.input.home(),
        KeyCode::Esc => app.follow(),
        KeyCode::Left if ctrl || alt => app.input.word_left(),
        KeyCode::Right if ctrl || alt => app.input.word_right(),
        KeyCode::Left => app.input.left(),
        KeyCode::Right => app.input.right(),
        KeyCode::Up => app.input.recall_prev(),
        KeyCode::Down => app.input.recall_next(),
        KeyCode::Backspace if alt || ctrl => app.input.delete_word(),
        KeyCode::Backspace => app.input.backspace(),
        KeyCode::Delete => app.input.delete(),
        KeyCode::Char('w') if ctrl => app.input.delete_word(),
        KeyCode::Char('u') if ctrl => app.input.kill_to_start(),
        KeyCode::Char('k') if ctrl => app.input.kill_to_end(),
        KeyCode::Char('a') if ctrl => app.input.home(),
        KeyCode::Char('e') if ctrl => app.input.end(),
        KeyCode::Char('l') if ctrl => {}
        KeyCode::Tab => complete_name(app),
        KeyCode::Char(c) if !ctrl && !alt => {
            app.input.insert_char(c);
            return typing(app);
        }
        _ => {}
    }
    None
}

fn on_overlay_key(app: &mut App, key: KeyEvent) -> Option<Action> {
    let overlay = app.overlay.as_mut()?;
    match overlay {
        Overlay::React { .. } => messages::on_picker_key(app, key),
        Overlay::Search(_) => messages::on_search_key(app, key),
        Overlay::Help | Overlay::Who => {
            if matches!(key.code, KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q')) {
                app.overlay = None;
            }
            None
        }
        Overlay::Rooms {
            list,
            selected,
            filter,
        } => {
            let shown = list.as_ref().map_or(0, |l| filter_rooms(l, filter).len());
            match key.code {
                KeyCode::Esc => app.overlay = None,
                KeyCode::Up => *selected = selected.saturating_sub(1),
                KeyCode::Down => *selected = (*selected + 1).min(shown.saturating_sub(1)),
                KeyCode::PageUp => *selected = selected.saturating_sub(10),
                KeyCode::PageDown => *selected = (*selected + 10).min(shown.saturating_sub(1)),
                KeyCode::Backspace => {
                    filter.pop();
                    *selected = 0;
                }
                KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => {
                    filter.push(c);
                    *selected = 0;
                }
                KeyCode::Enter => {
                    let name = list.as_ref().and_then(|l| {
                        filter_rooms(l, filter)
                            .get(*selected)
                            .map(|r| r.name.clone())
                    });
                    app.overlay = None;
                    return name.and_then(|name| app.join(&name));
                }
                _ => {}
            }
            None
        }
    }
}

/// The rooms of the browser that match the filter, busiest first.
pub fn filter_rooms<'a>(list: &'a [RoomSummary], filter: &str) -> Vec<&'a RoomSummary> {
    let filter = filter.to_lowercase();
    let mut rooms: Vec<&RoomSummary> = list
        .iter()
        .filter(|r| r.name.to_lowercase().contains(&filter))
        .collect();
    rooms.sort_by(|a, b| {
        b.members
            .cmp(&a.members)
            .then(b.last_seq.cmp(&a.last_seq))
            .then(a.name.cmp(&b.name))
    });
    rooms
}

fn on_mouse(app: &mut App, mouse: MouseEvent) -> Option<Action> {
    if app.overlay.is_some() {
        return None;
    }
    match mouse.kind {
        MouseEventKind::ScrollUp => app.scroll_up(WHEEL_LINES),
        MouseEventKind::ScrollDown => {
            app.scroll_down(WHEEL_LINES);
            None
        }
        MouseEventKind::Down(_) => {
            let areas = crate::layout::layout(Rect::new(0, 0, app.size.0, app.size.1), app);
            let list = areas.rooms;
            if mouse.column >= list.x
                && mouse.column < list.right()
                && mouse.row > list.y
                && mouse.row < list.bottom()
            {
                let index = usize::from(mouse.row - list.y - 1);
                app.switch_to(index);
            }
            None
        }
        _ => None,
    }
}

fn cycle_room(app: &mut App, step: isize) {
    let count = app.rooms.len() as isize;
    if count == 0 {
        return;
    }
    let next = (app.current as isize + step).rem_euclid(count);
    app.switch_to(next as usize);
}

/// Completes the user name before the cursor from the room's members.
/// The answer to "forget it on every device too?" after `/leave`: `y`
/// forgets, `n` or Esc keeps; only on an empty input and while the
/// question shows. `None`: the key is not an answer (the question lapses
/// and the key does what it always does).
fn answer_forget_offer(app: &mut App, key: KeyEvent, modified: bool) -> Option<Option<Action>> {
    let (room, at) = app.forget_offer.take()?;
    let showing = app.now.saturating_duration_since(at) < NOTICE_FOR;
    if !showing || modified || !app.input.text().is_empty() {
        return None;
    }
    match key.code {
        KeyCode::Char('y' | 'Y') => {
            app.notify(
                format!("forgot {} on every device", sanitize_line(&room)),
                false,
            );
            Some(Some(Action::Net(NetCommand::Forget { room })))
        }
        KeyCode::Char('n' | 'N') | KeyCode::Esc => {
            app.notify(
                format!("{} stays in your rooms", sanitize_line(&room)),
                false,
            );
            Some(None)
        }
        _ => None,
    }
}

fn complete_name(app: &mut App) {
    let text = app.input.text();
    if !app.input.at_end() {
        return;
    }
    let start = text.rfind(char::is_whitespace).map_or(0, |i| i + 1);
    let word = &text[start..];
    let (at, prefix) = match word.strip_prefix('@') {
        Some(rest) => ("@", rest),
        None => ("", word),
    };
    if prefix.is_empty() {
        return;
    }
    let lower = prefix.to_lowercase();
    // The current room's people first; for a command that names a user
    // (`/dm`, `/invite`), everyone of every open room, and the other user
    // of each direct conversation.
    let command = start > 0
        && ["/dm ", "/msg ", "/invite "]
            .iter()
            .any(|c| text.starts_with(c));
    let current = app.current_room().into_iter();
    let others = app.rooms.iter().filter(|_| command);
    let Some(name) = current
        .chain(others)
        .flat_map(|room| people(room, &app.user))
        .find(|name| name.to_lowercase().starts_with(&lower) && *name != app.user)
        .map(str::to_owned)
    else {
        return;
    };
    let suffix = if start == 0 { ": " } else { " " };
    let completed = format!("{}{at}{name}{suffix}", &text[..start]);
    app.input.set_text(completed);
}

/// The people of `room` for name completion: members online, recent
/// authors, and the other user of a direct conversation.
fn people<'a>(room: &'a Room, me: &str) -> Vec<&'a str> {
    let partner = dm_users(&room.name).map(|(a, b)| if a == me { b } else { a });
    room.members
        .iter()
        .map(String::as_str)
        .chain(room.log.values().rev().take(200).map(|e| e.user.as_str()))
        .chain(partner)
        .collect()
}

/// Tells the room the user is typing, at most every few seconds.
fn typing(app: &mut App) -> Option<Action> {
    if app.input.text().starts_with('/') {
        return None;
    }
    let now = app.now;
    let room = app.current_room().filter(|r| r.joined)?.name.clone();
    if let Some((last_room, at)) = &app.last_typing_sent {
        if *last_room == room && now.saturating_duration_since(*at) < TYPING_EVERY {
            return None;
        }
    }
    app.last_typing_sent = Some((room.clone(), now));
    Some(Action::Net(NetCommand::Typing { room }))
}

fn submit(app: &mut App) -> Option<Action> {
    let line = app.input.submit();
    if let Some(Compose::Edit { room, seq }) = app.compose.clone() {
        return messages::save_edit(app, room, seq, line);
    }
    if line.trim().is_empty() {
        return None;
    }
    if let Some(rest) = line.strip_prefix("//") {
        let reply_to = match &app.compose {
            Some(Compose::Reply { seq, .. }) => Some(*seq),
            _ => None,
        };
        return send_text(app, format!("/{rest}"), line, reply_to);
    }
    if line.starts_with('/') {
        return command(app, line);
    }
    let reply_to = match &app.compose {
        Some(Compose::Reply { seq, .. }) => Some(*seq),
        _ => None,
    };
    send_text(app, line.clone(), line, reply_to)
}

/// Sends `text` to the current room (as an answer to `reply_to`).
fn send_text(app: &mut App, text: String, typed: String, reply_to: Option<u64>) -> Option<Action> {
    let Some(room) = app.current_room() else {
        app.notify("join a room first: /join ROOM, or /rooms to browse", true);
        app.input.set_text(typed);
        return None;
    };
    let room_name = room.name.clone();
    let text = match normalize_text(&text) {
        Ok(text) => text,
        Err(TextError::Empty) => return None,
        Err(err) => {
            app.notify(format!("not sent: {err}"), true);
            app.input.set_text(typed);
            return None;
        }
    };
    let id = app.next_id();
    app.last_typing_sent = None;
    let room = app.current_room_mut()?;
    room.pending.retain(|p| p.failed.is_none());
    room.pending.push(Pending {
        id: id.clone(),
        text: text.clone(),
        failed: None,
    });
    room.anchor = None;
    room.unseen_below = 0;
    room.selected = None;
    app.compose = None;
    Some(Action::Net(match reply_to {
        Some(reply_to) => NetCommand::Reply {
            id,
            room: room_name,
            text,
            reply_to,
        },
        None => NetCommand::Send {
            id,
            room: room_name,
            text,
        },
    }))
}

fn command(app: &mut App, line: String) -> Option<Action> {
    let mut words = line.split_whitespace();
    let name = words.next().unwrap_or("/");
    let arg = words.next();
    let extra = words.next().is_some();
    let usage = |app: &mut App, usage: &str| {
        app.notify(format!("usage: {usage}"), true);
        app.input.set_text(line.clone());
        None
    };
    if let Some(action) = messages::message_command(app, name, &line) {
        return action;
    }
    match (name, arg, extra) {
        ("/join" | "/j", Some(room), false) => app.join(room),
        ("/join" | "/j", _, _) => usage(app, "/join ROOM"),
        ("/leave" | "/part" | "/leave!", room, false) => {
            let forget = name == "/leave!";
            let name = match room {
                Some(room) => room.strip_prefix('#').unwrap_or(room).to_owned(),
                None => app.current_room()?.name.clone(),
            };
            if app.room_index(&name).is_none() && !forget {
                app.notify(format!("not in room {}", sanitize_line(&name)), true);
                return None;
            }
            app.remove_room(&name);
            if forget {
                app.notify(
                    format!("left {} for good, on every device", sanitize_line(&name)),
                    false,
                );
                return Some(Action::Net(NetCommand::Forget { room: name }));
            }
            app.notify(
                format!(
                    "left {}. Forget it on every device too? y/n (it stays in your rooms otherwise)",
                    sanitize_line(&name)
                ),
                false,
            );
            app.forget_offer = Some((name.clone(), app.now));
            Some(Action::Net(NetCommand::Leave { room: name }))
        }
        ("/dm" | "/msg", Some(user), false) => {
            if !is_valid_name(user) {
                app.notify(
                    format!("'{}' is not a user name", sanitize_line(user)),
                    true,
                );
                return None;
            }
            if user == app.user {
                app.notify("a direct conversation needs another user", true);
                return None;
            }
            let room = dm_room(&app.user, user);
            if let Some(index) = app.room_index(&room) {
                app.switch_to(index);
                return None;
            }
            app.rooms.push(Room::new_private(room.clone()));
            app.switch_to(app.rooms.len() - 1);
            Some(Action::Net(NetCommand::Dm {
                user: user.to_owned(),
                room,
            }))
        }
        ("/dm" | "/msg", _, _) => usage(app, "/dm USER"),
        ("/private", Some(room), false) => {
            let room = room.strip_prefix('#').unwrap_or(room);
            if !is_valid_name(room) {
                app.notify(
                    format!("'{}' is not a room name", sanitize_line(room)),
                    true,
                );
                return None;
            }
            if let Some(index) = app.room_index(room) {
                app.switch_to(index);
                return None;
            }
            app.rooms.push(Room::new_private(room));
            app.switch_to(app.rooms.len() - 1);
            Some(Action::Net(NetCommand::CreatePrivate {
                room: room.to_owned(),
            }))
        }
        ("/private", _, _) => usage(app, "/private ROOM"),
        ("/invite", Some(user), false) => {
            let Some(room) = app.current_room() else {
                app.notify("join a private room first", true);
                return None;
            };
            if !room.private || dm_users(&room.name).is_some() {
                app.notify(
                    "only private rooms take invitations (/private ROOM makes one)",
                    true,
                );
                return None;
            }
            Some(Action::Net(NetCommand::Invite {
                room: room.name.clone(),
                user: user.to_owned(),
            }))
        }
        ("/invite", _, _) => usage(app, "/invite USER"),
        ("/mute", None, _) => {
            let label = {
                let user = app.user.clone();
                let room = app.current_room_mut()?;
                room.muted = !room.muted;
                (room.label(&user), room.muted)
            };
            let text = match label {
                (label, true) => {
                    format!("muted {label}: no notifications from it (/mute again to undo)")
                }
                (label, false) => format!("unmuted {label}"),
            };
            app.notify(text, false);
            None
        }
        ("/mute", _, _) => usage(app, "/mute"),
        ("/rooms" | "/list", None, _) => {
            app.overlay = Some(Overlay::Rooms {
                list: None,
                selected: 0,
                filter: String::new(),
            });
            Some(Action::Net(NetCommand::Rooms))
        }
        ("/who" | "/names", None, _) => {
            if app.current_room().is_none() {
                app.notify("join a room first", true);
                return None;
            }
            app.overlay = Some(Overlay::Who);
            None
        }
        ("/delete", Some(room), false) => {
            if !app.admin {
                app.notify("only admins can delete rooms", true);
                return None;
            }
            let room = room.strip_prefix('#').unwrap_or(room).to_owned();
            Some(Action::Net(NetCommand::DeleteRoom { room }))
        }
        ("/delete", _, _) => usage(app, "/delete ROOM"),
        ("/help" | "/h" | "/?", _, _) => {
            app.overlay = Some(Overlay::Help);
            None
        }
        ("/quit" | "/exit" | "/q", _, _) => Some(Action::Quit),
        ("/reconnect", _, _) => Some(Action::Net(NetCommand::Reconnect)),
        ("/leave" | "/leave!" | "/part" | "/rooms" | "/list" | "/who" | "/names", _, _) => {
            usage(app, name)
        }
        _ => {
            app.notify(
                format!(
                    "unknown command {}: /help lists them (start with // to send a line beginning with /)",
                    sanitize_line(name)
                ),
                true,
            );
            app.input.set_text(line.clone());
            None
        }
    }
}

fn on_net(app: &mut App, event: NetEvent) -> Option<Action> {
    match event {
        NetEvent::Connecting => app.link = Link::Connecting,
        NetEvent::Connected(session) => {
            app.link = Link::Connected;
            app.admin = session.admin;
            app.features = session.features.into_iter().collect();
            for room in &mut app.rooms {
                room.joined = false;
            }
        }
        NetEvent::Disconnected { reason, retry_in } => {
            let reason = sanitize_line(&reason);
            app.link = match retry_in {
                Some(delay) => Link::Reconnecting {
                    at: app.now + delay,
                    reason,
                },
                None => Link::Offline { reason },
            };
            for room in &mut app.rooms {
                room.joined = false;
                room.loading_older = false;
                room.typing.clear();
            }
        }
        NetEvent::Joined { room, members, .. } => {
            let room = app.room_mut(&room)?;
            room.joined = true;
            room.members = members.iter().map(|m| sanitize_line(m)).collect();
        }
        NetEvent::Backlog {
            room,
            messages,
            has_more,
            resumed,
        } => {
            let index = app.room_index(&room)?;
            let was_empty = app.rooms[index].log.is_empty();
            for message in messages {
                let seq = message.seq;
                if app.insert(index, message) && resumed {
                    app.arrived(index, seq, false);
                }
            }
            if !resumed || was_empty {
                app.rooms[index].has_more = has_more;
            }
            app.trim(index);
            if app.jump.as_ref().is_some_and(|j| j.room == room) {
                return app.advance_jump();
            }
        }
        NetEvent::Message(message) => {
            let index = app.room_index(&message.room)?;
            let seq = message.seq;
            if app.insert(index, message) {
                app.arrived(index, seq, true);
                app.trim(index);
            }
        }
        NetEvent::Page {
            room,
            before,
            messages,
            has_more,
        } => {
            let index = app.room_index(&room)?;
            let oldest_before = app.rooms[index].oldest_seq();
            let oldest_in_page = messages.iter().map(|m| m.seq).min();
            for message in messages {
                app.insert(index, message);
            }
            let room = &mut app.rooms[index];
            room.loading_older = false;
            match oldest_in_page {
                None if before == oldest_before => room.has_more = false,
                Some(seq) if oldest_before.is_none_or(|old| seq < old) => room.has_more = has_more,
                _ => {}
            }
            app.trim(index);
            if app
                .jump
                .as_ref()
                .is_some_and(|j| j.room == app.rooms[index].name)
            {
                return app.advance_jump();
            }
            // Keep going if the page did not fill the screen above the view.
            if index == app.current {
                return app.maybe_fetch_older();
            }
        }
        NetEvent::PageFailed { room, reason, .. } => {
            if app.jump.as_ref().is_some_and(|j| j.room == room) {
                app.jump = None;
            }
            let room = app.room_mut(&room)?;
            room.loading_older = false;
            app.notify(
                format!("could not load older messages: {}", sanitize_line(&reason)),
                true,
            );
        }
        NetEvent::Ack { id, room, .. } => {
            let room = app.room_mut(&room)?;
            room.pending.retain(|p| p.id != id);
        }
        NetEvent::SendFailed {
            id,
            room,
            code,
            message,
        } => {
            let reason = match code {
                Some(ErrorCode::RateLimited) => "too fast, slow down".to_owned(),
                Some(ErrorCode::TooLarge) => "too long".to_owned(),
                Some(ErrorCode::NotJoined) => "not in the room".to_owned(),
                _ => sanitize_line(&message),
            };
            if let Some(r) = app.room_mut(&room) {
                if let Some(p) = r.pending.iter_mut().find(|p| p.id == id) {
                    p.failed = Some(reason.clone());
                }
                let failed = r.pending.iter().filter(|p| p.failed.is_some()).count();
                if failed > MAX_FAILED {
                    if let Some(at) = r.pending.iter().position(|p| p.failed.is_some()) {
                        r.pending.remove(at);
                    }
                }
            }
            app.notify(
                format!("not sent to #{}: {reason}", sanitize_line(&room)),
                true,
            );
        }
        NetEvent::JoinFailed {
            room,
            code,
            message,
        } => {
            app.remove_room(&room);
            app.notify(
                format!(
                    "cannot join #{} ({code}): {}",
                    sanitize_line(&room),
                    sanitize_line(&message)
                ),
                true,
            );
        }
        // The room left the list when the user typed /leave; by now it may
        // have been joined again.
        NetEvent::Left { .. } => {}
        NetEvent::Forgotten { room } => {
            if app.room_index(&room).is_some() {
                app.remove_room(&room);
                app.notify(
                    format!("left {} on another device", sanitize_line(&room)),
                    false,
                );
            }
        }
        NetEvent::Read { room, seq } => {
            let index = app.room_index(&room)?;
            app.read_elsewhere(index, seq);
        }
        NetEvent::Invited { room, user, by } => {
            let by = sanitize_line(&by);
            if user != app.user {
                app.notify(
                    format!(
                        "{} is in #{} now",
                        sanitize_line(&user),
                        sanitize_line(&room)
                    ),
                    false,
                );
                return None;
            }
            let dm = dm_users(&room).is_some();
            app.notify(
                if dm {
                    format!("{by} started a conversation with you")
                } else {
                    format!("{by} invited you to #{}", sanitize_line(&room))
                },
                false,
            );
            if app.room_index(&room).is_some() {
                return None;
            }
            // Opened without taking the user away from what they read.
            app.rooms.push(Room::new_private(room.clone()));
            return Some(Action::Net(NetCommand::Join { room }));
        }
        NetEvent::RoomDeleted { room } => {
            app.remove_room(&room);
            app.notify(format!("room #{} was deleted", sanitize_line(&room)), false);
        }
        NetEvent::Presence { room, user, state } => {
            let room = app.room_mut(&room)?;
            let user = sanitize_line(&user);
            match state {
                PresenceState::Joined => {
                    room.members.insert(user);
                }
                PresenceState::Left => {
                    room.typing.remove(&user);
                    room.members.remove(&user);
                }
            }
        }
        NetEvent::Typing { room, user } => {
            let now = app.now;
            let room = app.room_mut(&room)?;
            room.typing.insert(sanitize_line(&user), now);
        }
        NetEvent::Edited {
            room,
            seq,
            text,
            edited_ts,
        } => {
            // When it was edited is not shown, only that it was.
            let _ = edited_ts;
            app.change(&room, seq, |entry, me| {
                entry.text = sanitize(&text, true);
                entry.mention = !entry.own && mentions(&entry.text, me);
                entry.edited = true;
            })
        }
        NetEvent::Deleted { room, seq } => app.change(&room, seq, |entry, _| {
            entry.text.clear();
            entry.mention = false;
            entry.deleted = true;
            entry.reactions = Reactions::default();
        }),
        NetEvent::Reaction {
            room,
            seq,
            user,
            emoji,
            on,
        } => app.change(&room, seq, |entry, _| {
            entry.reactions.set(&emoji, &user, on)
        }),
        NetEvent::Changes { room, messages } => {
            for message in messages {
                app.change(&room, message.seq, |entry, me| entry.apply(&message, me));
            }
        }
        NetEvent::SearchResults {
            query,
            messages,
            next,
        } => return app.search_results(&query, messages, next),
        NetEvent::Exported {
            room,
            path,
            messages,
        } => app.notify(
            format!(
                "exported {messages} messages of #{} to {}",
                sanitize_line(&room),
                sanitize_line(&path.display().to_string())
            ),
            false,
        ),
        NetEvent::ExportFailed { room, path, reason } => app.notify(
            format!(
                "export of #{} to {} failed: {}",
                sanitize_line(&room),
                sanitize_line(&path.display().to_string()),
                sanitize_line(&reason)
            ),
            true,
        ),
        NetEvent::Rooms(rooms) => {
            if let Some(Overlay::Rooms { list, .. }) = &mut app.overlay {
                *list = Some(rooms);
            }
        }
        NetEvent::Error { code, message } => {
            // A refused search (or anything else) must not leave the search
            // overlay waiting for an answer that will not come.
            if let Some(Overlay::Search(view)) = &mut app.overlay {
                view.loading = false;
            }
            let text = match code {
                Some(code) => format!("{code}: {}", sanitize_line(&message)),
                None => sanitize_line(&message),
            };
            app.notify(text, true);
        }
    }
    None
}

mod messages;
#[cfg(test)]
mod tests;
