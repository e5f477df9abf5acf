//! Where each part of the screen goes: pure geometry over the app's state.
//! The app owns it (scrolling by pages needs the message pane's height, a
//! click needs to know what is under it) and the renderer draws into it;
//! neither asks the other. The pane is not a size set once on resize: the
//! room list's width follows the longest room label, and the input grows
//! with what is typed, so it is worked out from the state each time.

use std::ops::Range;

use ratatui::layout::Rect;

use crate::app::App;
use crate::wrap::{self, graphemes};

/// Most lines the input grows to before it scrolls.
pub const MAX_INPUT_LINES: usize = 6;
/// Narrower terminals get no room list.
pub const ROOM_LIST_MIN_WIDTH: u16 = 60;
/// The input prompt.
pub const PROMPT: &str = "› ";

/// Where each part of the screen goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Areas {
    /// The room list (empty on narrow terminals).
    pub rooms: Rect,
    pub header: Rect,
    pub messages: Rect,
    /// The "bob is typing…" line.
    pub typing: Rect,
    /// "replying to bob: …" or "editing …" above the input, while one is
    /// being written (else empty).
    pub compose: Rect,
    pub input: Rect,
    pub status: Rect,
}

/// Splits the screen. Used by [`crate::ui::render`] and by the app to know how tall a
/// page is.
pub fn layout(area: Rect, app: &App) -> Areas {
    let status_height = area.height.min(1);
    let status = Rect::new(
        area.x,
        area.bottom() - status_height,
        area.width,
        status_height,
    );
    let body_height = area.height - status_height;
    let list_width = if area.width >= ROOM_LIST_MIN_WIDTH {
        let longest = app
            .rooms
            .iter()
            .map(|r| wrap::width(&r.label(&app.user)))
            .max()
            .unwrap_or(8);
        ((longest + 10) as u16).clamp(18, 28).min(area.width / 3)
    } else {
        0
    };
    let rooms = Rect::new(area.x, area.y, list_width, body_height);
    let main = Rect::new(
        area.x + list_width,
        area.y,
        area.width - list_width,
        body_height,
    );
    let text_width = usize::from(main.width.saturating_sub(PROMPT.chars().count() as u16)).max(1);
    let (rows, _) = input_rows(app.input.text(), app.input.cursor(), text_width);
    let input_height = (rows.len().clamp(1, MAX_INPUT_LINES) as u16).min(main.height);
    let header_height = 2.min(main.height.saturating_sub(input_height));
    let typing_height = 1.min(main.height.saturating_sub(input_height + header_height));
    let compose_height = u16::from(app.compose.is_some())
        .min(main.height - input_height - header_height - typing_height);
    let messages_height =
        main.height - input_height - header_height - typing_height - compose_height;
    let header = Rect::new(main.x, main.y, main.width, header_height);
    let messages = Rect::new(main.x, header.bottom(), main.width, messages_height);
    let typing = Rect::new(main.x, messages.bottom(), main.width, typing_height);
    let compose = Rect::new(main.x, typing.bottom(), main.width, compose_height);
    let input = Rect::new(main.x, compose.bottom(), main.width, input_height);
    Areas {
        rooms,
        header,
        messages,
        typing,
        compose,
        input,
        status,
    }
}

/// Rows of the input at `width` columns (hard wrap, `\n` breaks) and the
/// cursor's (row, column).
pub fn input_rows(text: &str, cursor: usize, width: usize) -> (Vec<Range<usize>>, (usize, usize)) {
    let width = width.max(1);
    let mut rows = Vec::new();
    let mut cursor_at = None;
    let mut row_start = 0;
    let mut col = 0;
    let mut para_start = 0;
    for para in text.split('\n') {
        for (offset, _, w) in graphemes(para) {
            let at = para_start + offset;
            if col + w > width && col > 0 {
                rows.push(row_start..at);
                row_start = at;
                col = 0;
            }
            if at == cursor {
                cursor_at = Some((rows.len(), col));
            }
            col += w;
        }
        let end = para_start + para.len();
        if cursor_at.is_none() && cursor == end {
            if col >= width {
                rows.push(row_start..end);
                row_start = end;
                col = 0;
            }
            cursor_at = Some((rows.len(), col));
        }
        rows.push(row_start..end);
        para_start = end + 1;
        row_start = para_start;
        col = 0;
    }
    (rows, cursor_at.unwrap_or((0, 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_rows_wrap_and_track_the_cursor() {
        let (rows, cursor) = input_rows("abcdef", 6, 4);
        assert_eq!(rows, [0..4, 4..6]);
        assert_eq!(cursor, (1, 2));
        let (rows, cursor) = input_rows("abcd", 4, 4);
        assert_eq!(rows, [0..4, 4..4]);
        assert_eq!(cursor, (1, 0));
        let (_, cursor) = input_rows("a日本", 1, 4);
        assert_eq!(cursor, (0, 1));
        let (rows, cursor) = input_rows("", 0, 4);
        assert_eq!(rows.len(), 1);
        assert!(rows[0].is_empty());
        assert_eq!(cursor, (0, 0));
    }
}
