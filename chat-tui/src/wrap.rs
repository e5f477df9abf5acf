//! Word wrapping by display width. Widths come from the same grapheme
//! segmentation and cell-width rules ratatui uses when it draws, so a wrapped
//! line of CJK or emoji text fits its pane exactly as it will be painted.

use std::ops::Range;

use ratatui::buffer::CellWidth;
use ratatui::style::Style;
use ratatui::text::Span;

/// The graphemes of `text` with their byte offsets and display widths.
/// Control characters are skipped, as ratatui skips them when drawing.
pub fn graphemes(text: &str) -> Vec<(usize, &str, usize)> {
    let base = text.as_ptr() as usize;
    let span = Span::raw(text);
    span.styled_graphemes(Style::default())
        .map(|g| {
            let offset = g.symbol.as_ptr() as usize - base;
            let width = usize::from(g.symbol.cell_width());
            (offset, &text[offset..offset + g.symbol.len()], width)
        })
        .collect()
}

/// Display width of `text` on one line.
pub fn width(text: &str) -> usize {
    if text.is_ascii() && !text.bytes().any(|b| b.is_ascii_control()) {
        return text.len();
    }
    graphemes(text).iter().map(|&(_, _, w)| w).sum()
}

/// Wraps `text` into lines of at most `first_width` columns for the first
/// line and `width` for the others, breaking at spaces where it can and
/// inside words (or between CJK characters) where it must. `\n` always
/// breaks. Returns the byte range of each line in `text`, trailing spaces
/// excluded. Never returns an empty list.
pub fn wrap(text: &str, first_width: usize, width: usize) -> Vec<Range<usize>> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut para_start = 0;
    for para in text.split('\n') {
        wrap_paragraph(text, para_start, para, first_width, width, &mut lines);
        para_start += para.len() + 1;
    }
    lines
}

/// The symbols of `text` (ASCII bytes, or graphemes) with their offsets
/// and widths.
fn symbols(text: &str) -> Vec<(usize, &str, usize)> {
    if text.is_ascii() {
        (0..text.len()).map(|i| (i, &text[i..i + 1], 1)).collect()
    } else {
        graphemes(text)
    }
}

fn wrap_paragraph(
    text: &str,
    start: usize,
    para: &str,
    first_width: usize,
    width: usize,
    lines: &mut Vec<Range<usize>>,
) {
    let avail = |lines: &Vec<Range<usize>>| {
        if lines.is_empty() {
            first_width
        } else {
            width
        }
    };
    let mut line_start = start;
    let mut line_width = 0;
    // Where the current line may end at a space: (end of text on the line,
    // start of the next line, width up to and including the space).
    let mut last_break: Option<(usize, usize, usize)> = None;
    for (offset, symbol, w) in symbols(para) {
        let at = start + offset;
        let next = at + symbol.len();
        if symbol == " " {
            if line_width + w > avail(lines) {
                push_line(text, line_start..at, lines);
                line_start = next;
                line_width = 0;
                last_break = None;
                continue;
            }
            line_width += w;
            last_break = Some((at, next, line_width));
            continue;
        }
        while line_width > 0 && line_width + w > avail(lines) {
            match last_break.take() {
                Some((end, next_start, break_width)) => {
                    push_line(text, line_start..end, lines);
                    line_start = next_start;
                    line_width -= break_width;
                }
                None => {
                    // What is on the line may be wider than this line: a
                    // word carried over from a wider first line. Cut off
                    // as much as fits (at least one symbol), and go on.
                    let room = avail(lines);
                    let mut cut = line_start;
                    let mut used = 0;
                    for (offset, carried, cw) in symbols(&text[line_start..at]) {
                        if used > 0 && used + cw > room {
                            break;
                        }
                        used += cw;
                        cut = line_start + offset + carried.len();
                    }
                    push_line(text, line_start..cut, lines);
                    line_start = cut;
                    // Measured again rather than subtracted: a slice can
                    // split into symbols of other widths than the whole
                    // paragraph did (found by fuzzing).
                    line_width = symbols(&text[cut..at]).iter().map(|s| s.2).sum();
                }
            }
        }
        if line_width == 0 && w > avail(lines) && avail(lines) == 0 {
            // No room at all on the first line (the prefix filled it).
            push_line(text, line_start..line_start, lines);
        }
        line_width += w;
    }
    push_line(text, line_start..start + para.len(), lines);
}

fn push_line(text: &str, range: Range<usize>, lines: &mut Vec<Range<usize>>) {
    let trimmed = text[range.clone()].trim_end_matches(' ').len();
    lines.push(range.start..range.start + trimmed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sanitize::sanitize;

    fn lines(text: &str, first: usize, rest: usize) -> Vec<&str> {
        wrap(text, first, rest)
            .into_iter()
            .map(|r| &text[r])
            .collect()
    }

    #[test]
    fn a_word_carried_from_a_wider_first_line_is_cut_to_the_next_width() {
        // Found by fuzzing: "bcd" used to come out 3 wide in 2 columns.
        assert_eq!(lines("a bcde", 5, 2), ["a", "bc", "de"]);
        assert_eq!(lines("xy ééééé", 7, 2), ["xy", "éé", "éé", "é"]);
        for (first, rest) in [(6, 1), (5, 2), (9, 3)] {
            for line in lines("a bcdefgh ijklmnop q", first, rest).iter().skip(1) {
                assert!(line.len() <= rest, "{line:?} in {rest}");
            }
        }
    }

    #[test]
    fn control_characters_beside_wide_ones_do_not_upset_the_widths() {
        // Found by fuzzing: a slice measured wider than its part of the
        // paragraph made the width underflow.
        for (first, rest) in [(0, 2), (0, 1), (3, 2)] {
            let text = "\n\u{5}\u{1b}]4;\u{1f468}c";
            let wrapped = wrap(text, first, rest);
            assert_eq!(wrapped.last().map(|r| r.end), Some(text.len()));
        }
    }

    #[test]
    fn short_text_is_one_line() {
        assert_eq!(lines("hello", 10, 10), ["hello"]);
        assert_eq!(lines("", 10, 10), [""]);
    }

    #[test]
    fn breaks_at_spaces() {
        assert_eq!(
            lines("the quick brown fox jumps", 10, 10),
            ["the quick", "brown fox", "jumps"]
        );
        assert_eq!(lines("aaaa bbbb", 4, 10), ["aaaa", "bbbb"]);
    }

    #[test]
    fn first_line_may_be_narrower() {
        assert_eq!(lines("aa bb cc dd", 5, 8), ["aa bb", "cc dd"]);
        assert_eq!(lines("aaa bbb", 2, 8), ["aa", "a bbb"]);
    }

    #[test]
    fn long_words_are_cut() {
        assert_eq!(lines("abcdefghij", 4, 4), ["abcd", "efgh", "ij"]);
        assert_eq!(lines("ab cdefghij", 4, 4), ["ab", "cdef", "ghij"]);
    }

    #[test]
    fn newlines_break() {
        assert_eq!(lines("a\n\nb", 10, 10), ["a", "", "b"]);
    }

    #[test]
    fn wide_characters_take_two_columns() {
        // Five ideographs are ten columns: four fit in nine columns (8), the
        // fifth moves to the next line.
        assert_eq!(lines("日本語日本", 9, 9), ["日本語日", "本"]);
        assert_eq!(width("日本語"), 6);
        assert_eq!(lines("🦀🦀🦀", 5, 5), ["🦀🦀", "🦀"]);
        // A wide character never straddles the edge of a narrow line.
        assert_eq!(lines("a日", 2, 2), ["a", "日"]);
    }

    #[test]
    fn emoji_sequences_stay_whole() {
        let family = "👨\u{200d}👩\u{200d}👧";
        let text = format!("{family}{family}");
        let got = lines(&text, 3, 3);
        assert_eq!(got, [family, family]);
    }

    #[test]
    fn no_room_on_the_first_line() {
        assert_eq!(lines("abc", 0, 5), ["", "abc"]);
    }

    #[test]
    fn every_line_fits() {
        let text = "Lorem ipsum dolor sit amet, 日本語のテキスト consectetur 🦀🦀 adipiscing elit";
        for w in 2..40 {
            for r in wrap(text, w, w) {
                assert!(width(&text[r]) <= w, "width {w}");
            }
        }
    }

    // Text from other users reaches `wrap` sanitized; these check that what
    // is wrapped is then what is drawn.

    #[test]
    fn line_separators_break_once_sanitized() {
        let text = sanitize("one\u{2028}two\u{2029}three", true);
        assert_eq!(lines(&text, 20, 20), ["one", "two", "three"]);
    }

    #[test]
    fn invisible_characters_take_no_part_in_lines() {
        // Zero-width spaces, a bidi override, tags and a word joiner inside
        // words: the lines are the visible words.
        let text = sanitize(
            "ab\u{200b}cd \u{202e}ef\u{e0041}\u{e0042}gh \u{2060}ij",
            true,
        );
        assert_eq!(lines(&text, 5, 5), ["abcd", "efgh", "ij"]);
    }

    #[test]
    fn combining_floods_wrap_by_their_bases() {
        let zalgo = |base: &str| format!("{base}{}", "\u{301}\u{316}".repeat(40));
        let word: String = ["a", "b", "c"].map(zalgo).concat();
        let text = sanitize(&format!("{word} {word} {word}"), true);
        let got = lines(&text, 7, 7);
        assert_eq!(got.len(), 2);
        for line in got {
            assert!(width(line) <= 7);
            // Each base keeps its allowance and no more.
            assert!(line.chars().count() <= width(line) * 4, "{line:?}");
        }
    }

    #[test]
    fn sanitized_width_is_the_sum_of_what_is_drawn() {
        // A soft hyphen and a Hangul filler measure 0 but many terminals
        // draw them a cell or two wide, and a run of six joined men measures
        // 2 where a terminal that does not know it draws 12: sanitized, the
        // fillers are gone and the men are two pictures, so the width ratatui
        // reserves is the width drawn.
        let men = ["👨"; 6].join("\u{200d}");
        let text = sanitize(&format!("x{men}y\u{ad}z\u{3164}"), true);
        let drawn: usize = graphemes(&text).iter().map(|&(_, _, w)| w).sum();
        assert_eq!(width(&text), drawn);
        assert_eq!(width(&text), 1 + 2 + 2 + 1 + 1);
    }
}
