//! Geometry of the message pane: how many screen lines each message takes
//! at a given width, and where the view's top line is. Only the messages
//! near the view are ever measured, and each message caches its wrapped
//! height for the last width it was measured at, so a room holding 100,000
//! messages scrolls and redraws in time proportional to the pane, not the
//! room.
//!
//! A message's block is its reply quote (when it answers one), its wrapped
//! text (with "(edited)" after it, or "message deleted" instead of it) and
//! its reactions line (when it has reactions).
//!
//! A line is addressed by a [`Pos`]: the seq of its message and its offset
//! from the first line of the message's block. Header lines above the text (a day
//! separator, the "new messages" marker) have negative offsets. Addressing
//! by seq keeps the view on the same line when older pages are loaded above.

use std::borrow::Cow;
use std::ops::Range;

use crate::app::{Entry, Pending, Room};
use crate::wrap;

/// Columns of the `HH:MM ` time column.
pub const TIME_WIDTH: usize = 6;

/// A line of the message pane: `offset` lines below the first text line of
/// message `seq` (negative: its header lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub seq: u64,
    pub offset: i32,
}

/// Width of `HH:MM name: `, the prefix of a message's first line.
pub fn prefix_width(user: &str) -> usize {
    TIME_WIDTH + wrap::width(user) + 2
}

/// Column where continuation lines start: under the text when the prefix is
/// short enough, else under the name.
pub fn indent(user: &str, width: usize) -> usize {
    let prefix = prefix_width(user);
    if prefix <= width / 2 {
        prefix
    } else {
        TIME_WIDTH.min(width.saturating_sub(1))
    }
}

/// The wrapped lines of a message's text at pane width `width`.
pub fn wrap_message(user: &str, text: &str, width: usize) -> Vec<Range<usize>> {
    let first = width.saturating_sub(prefix_width(user));
    let rest = width.saturating_sub(indent(user, width)).max(1);
    wrap::wrap(text, first, rest)
}

/// Shown after the text of an edited message.
pub const EDITED: &str = " (edited)";
/// Shown in place of the text of a deleted message.
pub const DELETED: &str = "message deleted";

/// The text a message shows: its own, with [`EDITED`] after it, or
/// [`DELETED`]. The part past `entry.text.len()` (all of it when deleted)
/// is drawn dim.
pub fn body(entry: &Entry) -> Cow<'_, str> {
    if entry.deleted {
        Cow::Borrowed(DELETED)
    } else if entry.edited {
        Cow::Owned(format!("{}{EDITED}", entry.text))
    } else {
        Cow::Borrowed(&entry.text)
    }
}

/// Lines of a message's block at `width` (quote, text, reactions), from
/// its cache when it was last measured at the same width.
pub fn text_height(entry: &Entry, width: u16) -> i32 {
    let (cached_width, cached_lines) = entry.height.get();
    if cached_width == width && cached_lines > 0 {
        return i32::from(cached_lines);
    }
    let lines = wrap_message(&entry.user, &body(entry), usize::from(width)).len()
        + usize::from(entry.reply_to.is_some())
        + usize::from(!entry.reactions.is_empty());
    let lines = u16::try_from(lines).unwrap_or(u16::MAX).max(1);
    entry.height.set((width, lines));
    i32::from(lines)
}

/// Whether a day separator goes above `entry`.
pub fn starts_day(entry: &Entry, prev: Option<&Entry>) -> bool {
    prev.is_none_or(|p| p.time.day != entry.time.day)
}

/// Header lines above a message's text: day separator, new-messages marker.
pub fn header_height(room: &Room, entry: &Entry, prev: Option<&Entry>) -> i32 {
    i32::from(starts_day(entry, prev)) + i32::from(room.marker == Some(entry.seq))
}

fn prev_entry(room: &Room, seq: u64) -> Option<&Entry> {
    room.log.range(..seq).next_back().map(|(_, e)| e)
}

fn next_entry(room: &Room, seq: u64) -> Option<&Entry> {
    room.log.range(seq + 1..).next().map(|(_, e)| e)
}

/// Header and text lines of the message `entry`.
fn block(room: &Room, entry: &Entry, width: u16) -> (i32, i32) {
    (
        header_height(room, entry, prev_entry(room, entry.seq)),
        text_height(entry, width),
    )
}

/// Lines of one pending (not yet acknowledged) line.
pub fn pending_height(user: &str, pending: &Pending, width: u16) -> i32 {
    let lines = wrap_message(user, &pending.text, usize::from(width)).len();
    i32::try_from(lines).unwrap_or(i32::MAX)
}

/// Lines below the newest message: the pending lines.
pub fn tail_height(room: &Room, user: &str, width: u16) -> i32 {
    room.pending
        .iter()
        .map(|p| pending_height(user, p, width))
        .sum()
}

/// The top line of a view that shows the newest lines at the bottom.
/// `None` when the room holds no message (the pane shows only the tail).
pub fn bottom_top(room: &Room, user: &str, width: u16, height: u16) -> Option<Pos> {
    let mut remaining = i32::from(height) - tail_height(room, user, width);
    let mut first = None;
    for (&seq, entry) in room.log.iter().rev() {
        let (header, text) = block(room, entry, width);
        if remaining <= header + text {
            return Some(Pos {
                seq,
                offset: (text - remaining).max(-header),
            });
        }
        remaining -= header + text;
        first = Some(Pos {
            seq,
            offset: -header,
        });
    }
    first
}

/// `pos` moved onto an existing line: header lines come and go (a day
/// separator disappears when an older page of the same day is loaded above,
/// the marker when the user looks away), and a position on a header line
/// that is gone moves to the message's first remaining line.
pub fn clamp(room: &Room, pos: Pos) -> Pos {
    match room.log.get(&pos.seq) {
        Some(entry) => {
            let header = header_height(room, entry, prev_entry(room, pos.seq));
            Pos {
                seq: pos.seq,
                offset: pos.offset.max(-header),
            }
        }
        None => pos,
    }
}

/// The top line of the view as it will be drawn: the anchor when the room
/// is scrolled and enough lines follow it to fill the pane, else the bottom.
pub fn view_top(room: &Room, user: &str, width: u16, height: u16) -> Option<Pos> {
    match room.anchor.map(|anchor| clamp(room, anchor)) {
        Some(anchor) if fills_pane(room, user, anchor, width, height) => Some(anchor),
        _ => bottom_top(room, user, width, height),
    }
}

/// True when at least `height` lines start at `top`.
pub fn fills_pane(room: &Room, user: &str, top: Pos, width: u16, height: u16) -> bool {
    let top = clamp(room, top);
    let Some(entry) = room.log.get(&top.seq) else {
        return false;
    };
    let mut lines = text_height(entry, width) - top.offset;
    let mut seq = top.seq;
    while lines < i32::from(height) {
        match next_entry(room, seq) {
            Some(next) => {
                let (header, text) = block(room, next, width);
                lines += header + text;
                seq = next.seq;
            }
            None => return lines + tail_height(room, user, width) >= i32::from(height),
        }
    }
    true
}

/// Moves `top` up by `lines`. Returns the new top and whether it reached
/// the first loaded line.
pub fn scroll_up(room: &Room, top: Pos, lines: i32, width: u16) -> (Pos, bool) {
    let top = clamp(room, top);
    let Some(mut entry) = room.log.get(&top.seq) else {
        return (top, true);
    };
    let mut offset = top.offset - lines;
    loop {
        let prev = prev_entry(room, entry.seq);
        let header = header_height(room, entry, prev);
        if offset >= -header {
            return (
                Pos {
                    seq: entry.seq,
                    offset,
                },
                false,
            );
        }
        match prev {
            Some(p) => {
                offset = text_height(p, width) - (-header - offset);
                entry = p;
            }
            None => {
                return (
                    Pos {
                        seq: entry.seq,
                        offset: -header,
                    },
                    true,
                )
            }
        }
    }
}

/// Moves `top` down by `lines`; `None` when that passes the newest line.
pub fn scroll_down(room: &Room, top: Pos, lines: i32, width: u16) -> Option<Pos> {
    let top = clamp(room, top);
    let mut entry = room.log.get(&top.seq)?;
    let mut offset = top.offset + lines;
    loop {
        let text = text_height(entry, width);
        if offset < text {
            return Some(Pos {
                seq: entry.seq,
                offset,
            });
        }
        let next = next_entry(room, entry.seq)?;
        offset = offset - text - header_height(room, next, Some(entry));
        entry = next;
    }
}

/// Lines from `top` down to the first line of message `seq`'s block (its
/// header lines included), for `seq` at or below `top`; counting stops
/// past `limit`.
pub fn lines_to(room: &Room, top: Pos, seq: u64, width: u16, limit: i32) -> i32 {
    let top = clamp(room, top);
    let mut lines = -top.offset;
    let Some(mut prev) = room.log.get(&top.seq) else {
        return lines;
    };
    if seq <= top.seq {
        return lines;
    }
    for (_, entry) in room.log.range(top.seq + 1..=seq) {
        if lines > limit {
            break;
        }
        lines += text_height(prev, width) + header_height(room, entry, Some(prev));
        prev = entry;
    }
    lines
}

/// Lines between the top of the loaded history and `top`, counted up to
/// `limit`: how close the view is to needing an older page.
pub fn lines_above(room: &Room, top: Pos, width: u16, limit: i32) -> i32 {
    let top = clamp(room, top);
    let Some(entry) = room.log.get(&top.seq) else {
        return 0;
    };
    let mut prev = prev_entry(room, entry.seq);
    let mut lines = top.offset + header_height(room, entry, prev);
    while lines < limit {
        let Some(p) = prev else { break };
        prev = prev_entry(room, p.seq);
        lines += text_height(p, width) + header_height(room, p, prev);
    }
    lines
}
