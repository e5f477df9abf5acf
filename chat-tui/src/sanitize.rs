//! Makes text from other users safe to print. The server refuses control
//! characters, but the client does not trust the server (or whatever is
//! listening at the URL it was given): anything that could move the cursor,
//! start an escape sequence or reorder the line is made visible or dropped
//! before it reaches the screen.

/// Columns a tab expands to. Tabs are expanded here so that width
/// computations never meet a control character.
const TAB: &str = "    ";

/// Returns `text` with every control character made visible: C0 controls as
/// their Unicode control pictures (ESC becomes `␛`), DEL as `␡`, C1 controls
/// as `�`. Newlines are kept when `keep_newlines` is true (message bodies),
/// shown as `␤` otherwise (names, one-line fields). Tabs become spaces.
/// Bidirectional overrides and isolates are dropped, so text cannot appear
/// in an order other than the one it was written in.
pub fn sanitize(text: &str, keep_newlines: bool) -> String {
    if text.chars().all(is_plain) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' if keep_newlines => out.push('\n'),
            '\n' => out.push('\u{2424}'),
            '\r' if keep_newlines => {
                // \r\n and a lone \r both mean a line break, as the server stores them.
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
            }
            '\t' => out.push_str(TAB),
            '\u{00}'..='\u{1f}' => {
                out.push(char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}'));
            }
            '\u{7f}' => out.push('\u{2421}'),
            '\u{80}'..='\u{9f}' => out.push('\u{fffd}'),
            c if is_bidi_control(c) => {}
            c => out.push(c),
        }
    }
    out
}

/// Sanitizes a one-line field such as a user or room name.
pub fn sanitize_line(text: &str) -> String {
    sanitize(text, false)
}

fn is_plain(c: char) -> bool {
    !(c.is_control() || is_bidi_control(c))
}

/// Embedding, override and isolate controls (the "Trojan source" set).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(sanitize("héllo 世界 🦀", true), "héllo 世界 🦀");
        assert_eq!(sanitize("a\nb", true), "a\nb");
    }

    #[test]
    fn escape_sequences_are_made_visible() {
        assert_eq!(sanitize("\u{1b}[2Jhi", true), "\u{241b}[2Jhi");
        assert_eq!(sanitize("\u{1b}]0;title\u{7}", true), "␛]0;title␇");
        assert_eq!(sanitize("a\u{9b}31mb", true), "a\u{fffd}31mb");
        assert_eq!(sanitize("x\u{7f}", true), "x␡");
        assert_eq!(sanitize("\u{0}", true), "␀");
    }

    #[test]
    fn newlines_tabs_and_carriage_returns() {
        assert_eq!(sanitize("a\r\nb\rc", true), "a\nb\nc");
        assert_eq!(sanitize("a\tb", true), "a    b");
        assert_eq!(sanitize_line("a\nb"), "a␤b");
    }

    #[test]
    fn bidi_overrides_are_dropped() {
        assert_eq!(sanitize("abc\u{202e}def\u{2066}", true), "abcdef");
    }

    #[test]
    fn output_never_holds_a_control_character() {
        let all: String = (0u32..0x250).filter_map(char::from_u32).collect();
        let out = sanitize(&all, true);
        assert!(out.chars().all(|c| c == '\n' || !c.is_control()));
    }
}
