//! Acting on single messages: selecting one (Up on an empty input, or
//! Alt+Up), editing, deleting, reacting and replying, by key or command;
//! jumping to a message, which loads older pages until it is there; and
//! the search overlay, whose results jump the same way. Each is offered
//! only when the server lists its feature in `welcome.features`.
//!
//! Pages are always fetched backwards from the oldest loaded message, so a
//! room's loaded messages stay one run without holes (scrolling, the
//! "older messages" fetch and the timeline all rely on that).

use chat_proto::features;
use chat_proto::limits::MAX_PAGE;
use chat_proto::validate::{is_valid_emoji, search_words};

use super::*;

/// Search results left below the selection when the next page is asked for.
const SEARCH_AHEAD: usize = 3;

impl App {
    /// Changes the loaded message `seq` of `room` in place (a message not
    /// loaded is ignored: it arrives in its current state when paged in).
    pub(super) fn change(&mut self, room: &str, seq: u64, change: impl FnOnce(&mut Entry, &str)) {
        let user = self.user.clone();
        let Some(entry) = self.room_mut(room).and_then(|r| r.log.get_mut(&seq)) else {
            return;
        };
        change(entry, &user);
        entry.height.set((0, 0));
    }

    /// The selected message of the current room.
    pub fn selected_entry(&self) -> Option<&Entry> {
        let room = self.current_room()?;
        room.log.get(&room.selected?)
    }

    /// Selects message `seq` of the current room and scrolls it into view.
    fn select(&mut self, seq: u64) {
        if let Some(room) = self.current_room_mut() {
            room.selected = Some(seq);
        }
        self.reveal(seq);
    }

    /// Scrolls the current room so that message `seq` is in view: at the
    /// top when it is above the view, at the bottom when below.
    fn reveal(&mut self, seq: u64) {
        let (width, height) = self.message_pane();
        let user = self.user.clone();
        let Some(room) = self.rooms.get_mut(self.current) else {
            return;
        };
        let Some(entry) = room.log.get(&seq) else {
            return;
        };
        let Some(top) = timeline::view_top(room, &user, width, height) else {
            return;
        };
        let prev = room.log.range(..seq).next_back().map(|(_, e)| e);
        let header = timeline::header_height(room, entry, prev);
        let block = timeline::text_height(entry, width);
        let new_top = if seq < top.seq || (seq == top.seq && top.offset > -header) {
            Pos {
                seq,
                offset: -header,
            }
        } else {
            let limit = i32::from(height) + 1;
            if timeline::lines_to(room, top, seq, width, limit) + block <= i32::from(height) {
                return;
            }
            let end = Pos { seq, offset: block };
            timeline::scroll_up(room, end, i32::from(height), width).0
        };
        room.anchor = Some(new_top).filter(|t| above_bottom(room, &user, *t, width, height));
        if room.anchor.is_none() {
            room.unseen_below = 0;
        }
    }

    /// Moves the selection one message older (`-1`) or newer (`1`); past
    /// the newest the selection ends. Near the top an older page loads.
    fn move_selection(&mut self, step: i32) -> Option<Action> {
        let room = self.current_room_mut()?;
        let next = match (room.selected, step < 0) {
            (None, _) => room.newest_seq(),
            (Some(seq), true) => room
                .log
                .range(..seq)
                .next_back()
                .map(|(s, _)| *s)
                .or(Some(seq)),
            (Some(seq), false) => room.log.range(seq + 1..).next().map(|(s, _)| *s),
        };
        match next {
            Some(seq) => {
                self.select(seq);
                self.maybe_fetch_older()
            }
            None => {
                room.selected = None;
                self.follow();
                None
            }
        }
    }

    /// Loads older pages of the jump's room until its message is there,
    /// then selects it. Called when the jump starts and after each page.
    pub(super) fn advance_jump(&mut self) -> Option<Action> {
        let jump = self.jump.clone()?;
        let Some(index) = self.room_index(&jump.room) else {
            self.jump = None;
            return None;
        };
        let room = &mut self.rooms[index];
        if room.log.contains_key(&jump.seq) {
            self.jump = None;
            if index == self.current {
                self.select(jump.seq);
            }
            return None;
        }
        // A join's first page or an older page is on its way.
        if room.loading_older || (!room.joined && room.log.is_empty()) {
            return None;
        }
        let oldest = room.oldest_seq();
        if !room.has_more || oldest.is_some_and(|o| o <= jump.seq) {
            self.jump = None;
            let text = format!(
                "message #{} is not in #{}",
                jump.seq,
                sanitize_line(&jump.room)
            );
            self.notify(text, true);
            return None;
        }
        room.loading_older = true;
        Some(Action::Net(NetCommand::History {
            room: jump.room,
            before: oldest,
            limit: MAX_PAGE as u64,
        }))
    }

    /// Starts a jump to message `seq` of the current room.
    fn jump_to(&mut self, seq: u64) -> Option<Action> {
        let room = self.current_room()?.name.clone();
        self.jump = Some(Jump { room, seq });
        self.advance_jump()
    }

    /// The newest message of the current room that matches `keep`.
    fn newest_where(&self, keep: impl Fn(&Entry) -> bool) -> Option<u64> {
        let room = self.current_room()?;
        room.log.values().rev().find(|e| keep(e)).map(|e| e.seq)
    }

    /// Puts message `seq`'s text in the input, to save with Enter.
    fn start_edit(&mut self, seq: u64) {
        if !self.offers(features::EDIT, "editing messages") {
            return;
        }
        let Some(room) = self.current_room_mut() else {
            return;
        };
        let Some(entry) = room.log.get(&seq) else {
            return;
        };
        if entry.deleted {
            self.notify("that message is deleted", true);
            return;
        }
        if !entry.own {
            self.notify("only your own messages can be edited", true);
            return;
        }
        let text = entry.text.clone();
        let name = room.name.clone();
        room.selected = None;
        self.input.set_text(text);
        self.compose = Some(Compose::Edit { room: name, seq });
    }

    /// Asks whether to delete message `seq`; `y` does.
    fn offer_delete(&mut self, seq: u64) {
        if !self.offers(features::EDIT, "deleting messages") {
            return;
        }
        let admin = self.admin;
        let Some(room) = self.current_room() else {
            return;
        };
        let Some(entry) = room.log.get(&seq) else {
            return;
        };
        if entry.deleted {
            self.notify("that message is already deleted", true);
            return;
        }
        if !entry.own && !admin {
            self.notify("only your own messages can be deleted", true);
            return;
        }
        self.delete_offer = Some((room.name.clone(), seq));
        self.notify("delete this message? y/n", false);
    }

    /// Makes the next line an answer to message `seq`.
    fn start_reply(&mut self, seq: u64) {
        if !self.offers(features::REPLY, "replies") {
            return;
        }
        let Some(room) = self.current_room_mut() else {
            return;
        };
        room.selected = None;
        let name = room.name.clone();
        self.compose = Some(Compose::Reply { room: name, seq });
    }

    /// Opens the reaction picker on message `seq`.
    fn open_picker(&mut self, seq: u64) {
        if !self.offers(features::REACT, "reactions") {
            return;
        }
        let Some(room) = self.current_room() else {
            return;
        };
        if room.log.get(&seq).is_none_or(|e| e.deleted) {
            return;
        }
        self.overlay = Some(Overlay::React {
            room: room.name.clone(),
            seq,
            choice: 0,
            typed: String::new(),
        });
    }

    /// Toggles the user's reaction `emoji` on message `seq` of `room`.
    fn react(&mut self, room: String, seq: u64, emoji: &str) -> Option<Action> {
        if !is_valid_emoji(emoji) {
            self.notify(
                "a reaction is 1 to 32 bytes, without spaces or control characters",
                true,
            );
            return None;
        }
        Some(Action::Net(NetCommand::React {
            room,
            seq,
            emoji: emoji.to_owned(),
        }))
    }

    /// Opens the search overlay on `query` and asks for its first page.
    fn search(&mut self, query: &str) -> Option<Action> {
        if !self.offers(features::SEARCH, "search") {
            return None;
        }
        let words = match search_words(query) {
            Ok(words) => words,
            Err(err) => {
                self.notify(err.to_string(), true);
                self.overlay = Some(Overlay::Search(SearchView {
                    query: query.to_owned(),
                    prompt: true,
                    ..SearchView::default()
                }));
                return None;
            }
        };
        self.overlay = Some(Overlay::Search(SearchView {
            query: query.to_owned(),
            prompt: false,
            words,
            loading: true,
            ..SearchView::default()
        }));
        Some(Action::Net(NetCommand::Search {
            query: query.to_owned(),
            cursor: None,
        }))
    }

    /// A page of search results; ignored unless the overlay still waits
    /// for that query.
    pub(super) fn search_results(
        &mut self,
        query: &str,
        messages: Vec<MessageRecord>,
        next: Option<String>,
    ) -> Option<Action> {
        let Some(Overlay::Search(view)) = &mut self.overlay else {
            return None;
        };
        if view.prompt || !view.loading || view.query != query {
            return None;
        }
        view.loading = false;
        view.next = next;
        view.hits.extend(messages.into_iter().map(|m| Hit {
            user: sanitize_line(&m.user),
            text: sanitize(&m.text, true).replace('\n', " "),
            room: m.room,
            seq: m.seq,
            ts: m.ts,
        }));
        None
    }
}

/// The next page of results when the selection is near the end of those
/// loaded.
fn more_results(view: &mut SearchView) -> Option<Action> {
    if view.loading || view.selected + SEARCH_AHEAD < view.hits.len() {
        return None;
    }
    let cursor = view.next.clone()?;
    view.loading = true;
    Some(Action::Net(NetCommand::Search {
        query: view.query.clone(),
        cursor: Some(cursor),
    }))
}

/// Keys while the status bar asks "delete this message? y/n": `y` deletes,
/// any other key keeps it (and does nothing else).
pub(super) fn answer_delete_offer(app: &mut App, key: KeyEvent) -> Option<Option<Action>> {
    let (room, seq) = app.delete_offer.take()?;
    if key.code == KeyCode::Char('y') && key.modifiers.difference(KeyModifiers::SHIFT).is_empty() {
        app.notice = None;
        if let Some(r) = app.room_mut(&room) {
            r.selected = None;
        }
        return Some(Some(Action::Net(NetCommand::Delete { room, seq })));
    }
    app.notify("not deleted", false);
    Some(None)
}

/// Keys for selecting and acting on messages, and Ctrl+F; `None` when the
/// key is not one of them (it then edits the input as usual).
pub(super) fn on_message_key(
    app: &mut App,
    key: KeyEvent,
    ctrl: bool,
    alt: bool,
) -> Option<Option<Action>> {
    let selected = app.current_room().and_then(|r| r.selected);
    let plain = !ctrl && !alt;
    match key.code {
        KeyCode::Char('f') if ctrl => {
            if app.offers(features::SEARCH, "search") {
                app.overlay = Some(Overlay::Search(SearchView {
                    prompt: true,
                    ..SearchView::default()
                }));
            }
            Some(None)
        }
        KeyCode::Esc if selected.is_some() => {
            if let Some(room) = app.current_room_mut() {
                room.selected = None;
            }
            Some(None)
        }
        KeyCode::Esc if app.compose.is_some() => {
            if let Some(Compose::Edit { .. }) = app.compose.take() {
                app.input.set_text(String::new());
            }
            Some(None)
        }
        KeyCode::Up if alt || (plain && (selected.is_some() || app.input.is_empty())) => {
            Some(app.move_selection(-1))
        }
        KeyCode::Down if selected.is_some() && (alt || plain) => Some(app.move_selection(1)),
        _ if selected.is_none() || !plain || !app.input.is_empty() => None,
        KeyCode::Char('e') => {
            app.start_edit(selected?);
            Some(None)
        }
        KeyCode::Char('d') => {
            app.offer_delete(selected?);
            Some(None)
        }
        KeyCode::Char('r') => {
            app.start_reply(selected?);
            Some(None)
        }
        KeyCode::Char('+') => {
            app.open_picker(selected?);
            Some(None)
        }
        KeyCode::Enter => {
            let target = app.selected_entry()?.reply_to;
            Some(target.and_then(|seq| app.jump_to(seq)))
        }
        _ => None,
    }
}

/// Keys of the reaction picker: 1-8 or arrows and Enter pick one of
/// [`REACTIONS`]; anything typed is a reaction of its own, sent with Enter.
pub(super) fn on_picker_key(app: &mut App, key: KeyEvent) -> Option<Action> {
    let Some(Overlay::React {
        room,
        seq,
        choice,
        typed,
    }) = &mut app.overlay
    else {
        return None;
    };
    let (room, seq) = (room.clone(), *seq);
    let pick = match key.code {
        KeyCode::Esc => {
            app.overlay = None;
            return None;
        }
        KeyCode::Char(c @ '1'..='8') if typed.is_empty() => {
            REACTIONS[c as usize - '1' as usize].to_owned()
        }
        KeyCode::Left | KeyCode::Up if typed.is_empty() => {
            *choice = (*choice + REACTIONS.len() - 1) % REACTIONS.len();
            return None;
        }
        KeyCode::Right | KeyCode::Down if typed.is_empty() => {
            *choice = (*choice + 1) % REACTIONS.len();
            return None;
        }
        KeyCode::Backspace => {
            typed.pop();
            return None;
        }
        KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => {
            typed.push(c);
            return None;
        }
        KeyCode::Enter if typed.is_empty() => REACTIONS[*choice].to_owned(),
        KeyCode::Enter => typed.clone(),
        _ => return None,
    };
    let action = app.react(room, seq, &pick);
    // A refused reaction stays in the picker to be corrected.
    if action.is_some() {
        app.overlay = None;
        if let Some(r) = app.current_room_mut() {
            r.selected = None;
        }
    }
    action
}

/// Keys of the search overlay: typing the words, then moving through the
/// results; Enter on one opens its room at the message.
pub(super) fn on_search_key(app: &mut App, key: KeyEvent) -> Option<Action> {
    let Some(Overlay::Search(view)) = &mut app.overlay else {
        return None;
    };
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    match key.code {
        KeyCode::Esc => app.overlay = None,
        KeyCode::Enter if view.prompt => {
            let query = view.query.clone();
            if query.trim().is_empty() {
                app.overlay = None;
                return None;
            }
            return app.search(&query);
        }
        KeyCode::Backspace => {
            view.prompt = true;
            view.query.pop();
        }
        KeyCode::Char(c) if !ctrl => {
            view.prompt = true;
            view.query.push(c);
        }
        KeyCode::Up if !view.prompt => view.selected = view.selected.saturating_sub(1),
        KeyCode::Down if !view.prompt => {
            view.selected = (view.selected + 1).min(view.hits.len().saturating_sub(1));
            return more_results(view);
        }
        KeyCode::PageDown if !view.prompt => {
            view.selected = (view.selected + 10).min(view.hits.len().saturating_sub(1));
            return more_results(view);
        }
        KeyCode::PageUp if !view.prompt => view.selected = view.selected.saturating_sub(10),
        KeyCode::Enter => {
            let hit = view.hits.get(view.selected)?.clone();
            app.overlay = None;
            app.jump = Some(Jump {
                room: hit.room.clone(),
                seq: hit.seq,
            });
            if let Some(index) = app.room_index(&hit.room) {
                app.switch_to(index);
                return app.advance_jump();
            }
            let join = app.join(&hit.room);
            if join.is_none() {
                app.jump = None;
            }
            return join;
        }
        _ => {}
    }
    None
}

/// Enter while editing: the input is the new text of message `seq`.
pub(super) fn save_edit(app: &mut App, room: String, seq: u64, line: String) -> Option<Action> {
    let text = match normalize_text(&line) {
        Ok(text) => text,
        Err(TextError::Empty) => {
            app.notify(
                "an edit needs some text (d on the message deletes it)",
                true,
            );
            return None;
        }
        Err(err) => {
            app.notify(format!("not saved: {err}"), true);
            app.input.set_text(line);
            return None;
        }
    };
    app.compose = None;
    Some(Action::Net(NetCommand::Edit { room, seq, text }))
}

/// The message commands: `/edit`, `/delete` without a room, `/react`,
/// `/reply`, `/search`, `/export`. `None` for any other command.
pub(super) fn message_command(app: &mut App, name: &str, line: &str) -> Option<Option<Action>> {
    let rest = line.trim_start()[name.len()..].trim_start();
    let selected = app.current_room().and_then(|r| r.selected);
    let in_room = app.current_room().is_some();
    if !in_room && matches!(name, "/edit" | "/react" | "/reply" | "/export") {
        app.notify("join a room first", true);
        return Some(None);
    }
    let action = match name {
        "/edit" => {
            let Some(seq) = app.newest_where(|e| e.own && !e.deleted) else {
                app.notify("no message of yours to edit here", true);
                return Some(None);
            };
            if rest.trim().is_empty() {
                app.start_edit(seq);
                return Some(None);
            }
            if !app.offers(features::EDIT, "editing messages") {
                return Some(None);
            }
            let room = app.current_room()?.name.clone();
            save_edit(app, room, seq, rest.to_owned())
        }
        "/delete" if rest.is_empty() => {
            match app.newest_where(|e| e.own && !e.deleted) {
                Some(seq) => app.offer_delete(seq),
                None => app.notify("no message of yours to delete here", true),
            }
            None
        }
        "/react" => {
            let emoji = rest.trim();
            if emoji.is_empty() {
                app.notify("usage: /react EMOJI", true);
                return Some(None);
            }
            let target = selected.or_else(|| app.newest_where(|e| !e.own && !e.deleted));
            let Some(seq) = target else {
                app.notify("no message to react to here", true);
                return Some(None);
            };
            if !app.offers(features::REACT, "reactions") {
                return Some(None);
            }
            let room = app.current_room()?.name.clone();
            let action = app.react(room, seq, emoji);
            if action.is_some() {
                app.current_room_mut()?.selected = None;
            }
            action
        }
        "/reply" => {
            let Some(seq) = selected.or_else(|| app.newest_where(|e| !e.deleted)) else {
                app.notify("no message to reply to here", true);
                return Some(None);
            };
            app.start_reply(seq);
            if rest.trim().is_empty() || app.compose.is_none() {
                return Some(None);
            }
            send_text(app, rest.to_owned(), line.to_owned(), Some(seq))
        }
        "/search" => {
            if rest.trim().is_empty() {
                if app.offers(features::SEARCH, "search") {
                    app.overlay = Some(Overlay::Search(SearchView {
                        prompt: true,
                        ..SearchView::default()
                    }));
                }
                return Some(None);
            }
            app.search(rest)
        }
        "/export" => {
            let room = app.current_room()?.name.clone();
            let path = match rest.trim() {
                "" => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                    crate::export::default_path(&room, now, app.zone)
                }
                path => std::path::PathBuf::from(path),
            };
            app.notify(
                format!(
                    "exporting #{} to {}…",
                    sanitize_line(&room),
                    sanitize_line(&path.display().to_string())
                ),
                false,
            );
            Some(Action::Net(NetCommand::Export { room, path }))
        }
        _ => return None,
    };
    Some(action)
}
