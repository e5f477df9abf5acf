//! The input line: a small line editor with grapheme-aware cursor movement,
//! readline-style kills and a history of sent lines to recall with Up/Down.
//! It may hold several lines (Alt+Enter inserts a newline).

use crate::wrap::graphemes;

/// Sent lines remembered for recall.
const HISTORY_LIMIT: usize = 500;

/// The text being typed, the cursor in it, and the lines sent before.
#[derive(Debug, Default, Clone)]
pub struct LineEditor {
    text: String,
    /// Byte offset of the cursor, always on a grapheme boundary.
    cursor: usize,
    history: Vec<String>,
    /// Index in `history` while recalling; `None` while editing a new line.
    recalled: Option<usize>,
    /// What was being typed before recall started, restored past the newest.
    draft: String,
}

impl LineEditor {
    /// An empty editor.
    pub fn new() -> Self {
        Self::default()
    }

    /// The text as typed.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Byte offset of the cursor in [`Self::text`].
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// True when nothing is typed.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// True when the cursor is after the last character.
    pub fn at_end(&self) -> bool {
        self.cursor == self.text.len()
    }

    /// Inserts one character at the cursor.
    pub fn insert_char(&mut self, c: char) {
        self.text.insert(self.cursor, c);
        self.cursor += c.len_utf8();
        self.recalled = None;
    }

    /// Inserts pasted text at the cursor; `\r\n` and `\r` become `\n`, tabs
    /// become spaces and other control characters are dropped.
    pub fn insert_str(&mut self, s: &str) {
        let clean: String = s
            .replace("\r\n", "\n")
            .replace('\r', "\n")
            .replace('\t', "    ")
            .chars()
            .filter(|&c| c == '\n' || !c.is_control())
            .collect();
        self.text.insert_str(self.cursor, &clean);
        self.cursor += clean.len();
        self.recalled = None;
    }

    /// Deletes the grapheme before the cursor.
    pub fn backspace(&mut self) {
        let prev = self.prev_boundary();
        self.text.replace_range(prev..self.cursor, "");
        self.cursor = prev;
    }

    /// Deletes the grapheme under the cursor.
    pub fn delete(&mut self) {
        let next = self.next_boundary();
        self.text.replace_range(self.cursor..next, "");
    }

    /// Moves one grapheme left.
    pub fn left(&mut self) {
        self.cursor = self.prev_boundary();
    }

    /// Moves one grapheme right.
    pub fn right(&mut self) {
        self.cursor = self.next_boundary();
    }

    /// Moves to the start of the current line.
    pub fn home(&mut self) {
        self.cursor = self.line_start();
    }

    /// Moves to the end of the current line.
    pub fn end(&mut self) {
        self.cursor = self.text[self.cursor..]
            .find('\n')
            .map_or(self.text.len(), |i| self.cursor + i);
    }

    /// Moves to the start of the previous word.
    pub fn word_left(&mut self) {
        self.cursor = self.word_start_before();
    }

    /// Moves past the end of the next word.
    pub fn word_right(&mut self) {
        let rest = &self.text[self.cursor..];
        let skip_space = rest.len() - rest.trim_start().len();
        let word = rest[skip_space..]
            .find(char::is_whitespace)
            .unwrap_or(rest.len() - skip_space);
        self.cursor += skip_space + word;
    }

    /// Deletes the word before the cursor (Ctrl+W).
    pub fn delete_word(&mut self) {
        let start = self.word_start_before();
        self.text.replace_range(start..self.cursor, "");
        self.cursor = start;
    }

    /// Deletes from the start of the current line to the cursor (Ctrl+U).
    pub fn kill_to_start(&mut self) {
        let start = self.line_start();
        self.text.replace_range(start..self.cursor, "");
        self.cursor = start;
    }

    /// Deletes from the cursor to the end of the current line (Ctrl+K).
    pub fn kill_to_end(&mut self) {
        let cursor = self.cursor;
        self.end();
        self.text.replace_range(cursor..self.cursor, "");
        self.cursor = cursor;
    }

    /// Replaces the text with the previous line from the history.
    pub fn recall_prev(&mut self) {
        let index = match self.recalled {
            None if self.history.is_empty() => return,
            None => {
                self.draft = std::mem::take(&mut self.text);
                self.history.len() - 1
            }
            Some(0) => return,
            Some(i) => i - 1,
        };
        self.recalled = Some(index);
        self.set_text(self.history[index].clone());
    }

    /// Replaces the text with the next line from the history, or the draft
    /// past the newest.
    pub fn recall_next(&mut self) {
        match self.recalled {
            None => {}
            Some(i) if i + 1 < self.history.len() => {
                self.recalled = Some(i + 1);
                self.set_text(self.history[i + 1].clone());
            }
            Some(_) => {
                self.recalled = None;
                let draft = std::mem::take(&mut self.draft);
                self.set_text(draft);
            }
        }
    }

    /// Takes the text out to send it, remembering it for recall.
    pub fn submit(&mut self) -> String {
        let text = std::mem::take(&mut self.text);
        self.cursor = 0;
        self.recalled = None;
        self.draft.clear();
        if !text.trim().is_empty() && self.history.last() != Some(&text) {
            self.history.push(text.clone());
            if self.history.len() > HISTORY_LIMIT {
                self.history.remove(0);
            }
        }
        text
    }

    /// Replaces the text and puts the cursor at its end.
    pub fn set_text(&mut self, text: String) {
        self.cursor = text.len();
        self.text = text;
    }

    fn prev_boundary(&self) -> usize {
        let before = &self.text[..self.cursor];
        match before.chars().next_back() {
            None => 0,
            Some('\n') => self.cursor - 1,
            Some(_) => {
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                graphemes(&before[line_start..])
                    .last()
                    .map_or(self.cursor - 1, |&(offset, _, _)| line_start + offset)
            }
        }
    }

    fn next_boundary(&self) -> usize {
        let after = &self.text[self.cursor..];
        match after.chars().next() {
            None => self.cursor,
            Some('\n') => self.cursor + 1,
            Some(c) => {
                let line = after.split('\n').next().unwrap_or("");
                graphemes(line)
                    .first()
                    .map_or(self.cursor + c.len_utf8(), |&(_, g, _)| {
                        self.cursor + g.len()
                    })
            }
        }
    }

    fn line_start(&self) -> usize {
        self.text[..self.cursor].rfind('\n').map_or(0, |i| i + 1)
    }

    fn word_start_before(&self) -> usize {
        let before = &self.text[..self.cursor];
        let trimmed = before.trim_end();
        trimmed.rfind(char::is_whitespace).map_or(0, |i| {
            i + trimmed[i..].chars().next().map_or(1, char::len_utf8)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(s: &str) -> LineEditor {
        let mut e = LineEditor::new();
        for c in s.chars() {
            e.insert_char(c);
        }
        e
    }

    #[test]
    fn typing_and_moving() {
        let mut e = typed("helo");
        e.left();
        e.insert_char('l');
        assert_eq!(e.text(), "hello");
        e.home();
        e.delete();
        assert_eq!(e.text(), "ello");
        e.end();
        e.backspace();
        assert_eq!(e.text(), "ell");
        assert!(e.at_end());
    }

    #[test]
    fn cursor_moves_over_whole_graphemes() {
        let mut e = typed("a日👨\u{200d}👩b");
        e.left();
        e.left();
        assert_eq!(&e.text()[e.cursor()..], "👨\u{200d}👩b");
        e.backspace();
        assert_eq!(e.text(), "a👨\u{200d}👩b");
        e.delete();
        assert_eq!(e.text(), "ab");
    }

    #[test]
    fn kills() {
        let mut e = typed("one two  three");
        e.delete_word();
        assert_eq!(e.text(), "one two  ");
        e.delete_word();
        assert_eq!(e.text(), "one ");
        e.kill_to_start();
        assert_eq!(e.text(), "");
        let mut e = typed("abc def");
        e.home();
        e.word_right();
        e.kill_to_end();
        assert_eq!(e.text(), "abc");
    }

    #[test]
    fn multiline_home_end() {
        let mut e = typed("first");
        e.insert_char('\n');
        e.insert_str("second");
        e.home();
        assert_eq!(&e.text()[e.cursor()..], "second");
        e.left();
        e.home();
        assert_eq!(e.cursor(), 0);
        e.end();
        assert_eq!(e.cursor(), 5);
    }

    #[test]
    fn paste_normalizes() {
        let mut e = LineEditor::new();
        e.insert_str("a\r\nb\tc\u{1b}[2J");
        assert_eq!(e.text(), "a\nb    c[2J");
    }

    #[test]
    fn history_recall() {
        let mut e = typed("first");
        assert_eq!(e.submit(), "first");
        e.insert_str("second");
        e.submit();
        e.insert_str("draft");
        e.recall_prev();
        assert_eq!(e.text(), "second");
        e.recall_prev();
        assert_eq!(e.text(), "first");
        e.recall_prev();
        assert_eq!(e.text(), "first");
        e.recall_next();
        assert_eq!(e.text(), "second");
        e.recall_next();
        assert_eq!(e.text(), "draft");
    }
}
