//! Validation of what users type: names, message text, passwords and request
//! ids. The server applies these to every request; clients may use them to
//! refuse bad input before it reaches the network.

use crate::limits::{
    MAX_EMOJI_BYTES, MAX_ID_CHARS, MAX_NAME_CHARS, MAX_PASSWORD_BYTES, MAX_QUERY_BYTES,
    MAX_SEARCH_WORDS, MAX_TEXT_BYTES, MIN_PASSWORD_BYTES,
};

/// Why a piece of text was refused; each maps to one protocol error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// Nothing left after trimming trailing whitespace.
    #[error("message text is empty")]
    Empty,
    /// More than [`MAX_TEXT_BYTES`] after trimming.
    #[error("message text is {0} bytes; at most {MAX_TEXT_BYTES} are allowed")]
    TooLarge(usize),
    /// A control character that could repaint a reader's terminal.
    #[error("message text contains control character U+{0:04X}")]
    ControlCharacter(u32),
}

/// True when `name` is a valid user or room name: 1 to 32 characters from
/// `A-Z a-z 0-9 _ - .`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_CHARS
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The room of the direct conversation between users `a` and `b` (part
/// 2): the two names sorted bytewise, joined by `+`, which no user or room
/// name contains.
pub fn dm_room(a: &str, b: &str) -> String {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    format!("{first}+{second}")
}

/// The two users of a direct-conversation room name, when `room` is one:
/// two different valid names, sorted, joined by `+`.
pub fn dm_users(room: &str) -> Option<(&str, &str)> {
    let (a, b) = room.split_once('+')?;
    (is_valid_name(a) && is_valid_name(b) && a < b).then_some((a, b))
}

/// True when `room` may name a room in a request: a valid name, or a
/// direct conversation's.
pub fn is_valid_room(room: &str) -> bool {
    is_valid_name(room) || dm_users(room).is_some()
}

/// True when `id` may be used as a request id.
pub fn is_valid_id(id: &str) -> bool {
    id.chars().count() <= MAX_ID_CHARS
}

/// True when a password has an acceptable length for `register`.
pub fn is_valid_password(password: &str) -> bool {
    (MIN_PASSWORD_BYTES..=MAX_PASSWORD_BYTES).contains(&password.len())
}

/// Normalizes message text the way the server stores it: trailing whitespace
/// and newlines trimmed, `\r\n` and lone `\r` turned into `\n`; refuses empty
/// text, text over [`MAX_TEXT_BYTES`] and control characters other than
/// newline and tab.
pub fn normalize_text(text: &str) -> Result<String, TextError> {
    let trimmed = text.trim_end();
    let mut out = String::with_capacity(trimmed.len());
    let mut chars = trimmed.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
            }
            '\n' | '\t' => out.push(c),
            c if is_forbidden_control(c) => return Err(TextError::ControlCharacter(c as u32)),
            c => out.push(c),
        }
    }
    if out.is_empty() {
        return Err(TextError::Empty);
    }
    if out.len() > MAX_TEXT_BYTES {
        return Err(TextError::TooLarge(out.len()));
    }
    Ok(out)
}

/// A reaction: 1 to [`MAX_EMOJI_BYTES`] bytes, with no whitespace and no
/// control characters (so it cannot repaint a terminal or hide in a line).
pub fn is_valid_emoji(emoji: &str) -> bool {
    (1..=MAX_EMOJI_BYTES).contains(&emoji.len())
        && !emoji
            .chars()
            .any(|c| c.is_whitespace() || is_forbidden_control(c) || is_invisible_format(c))
}

/// Format characters that draw nothing on their own (bidi overrides and
/// the like) but may sit inside emoji sequences: the zero-width joiner
/// (U+200D) and variation selectors are allowed, the others not.
fn is_invisible_format(c: char) -> bool {
    matches!(c as u32, 0x200B | 0x200E | 0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0xFEFF)
}

/// Why a search query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the query has no words to search for")]
    Empty,
    #[error("the query is longer than {MAX_QUERY_BYTES} bytes")]
    TooLong,
    #[error("the query has more than {MAX_SEARCH_WORDS} words")]
    TooManyWords,
}

/// The words of a search query, lowercased: runs of letters and digits
/// (anything else separates words). Both store backends match each as a
/// prefix.
pub fn search_words(query: &str) -> Result<Vec<String>, QueryError> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(QueryError::TooLong);
    }
    let mut words: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    words.sort();
    words.dedup();
    if words.is_empty() {
        return Err(QueryError::Empty);
    }
    if words.len() > MAX_SEARCH_WORDS {
        return Err(QueryError::TooManyWords);
    }
    Ok(words)
}

/// C0 and C1 control characters and DEL: the ones that can move a terminal's
/// cursor or start an escape sequence.
pub fn is_forbidden_control(c: char) -> bool {
    matches!(c as u32, 0x00..=0x1F | 0x7F..=0x9F)
}

#[cfg(test)]
mod tests {
    #[test]
    fn direct_conversations_have_one_name_per_pair() {
        assert_eq!(dm_room("bob", "alice"), "alice+bob");
        assert_eq!(dm_room("alice", "bob"), "alice+bob");
        assert_eq!(dm_users("alice+bob"), Some(("alice", "bob")));
        // Unsorted, one user twice, a third part, bad names: not a DM.
        for room in [
            "bob+alice",
            "alice+alice",
            "a+b+c",
            "+bob",
            "alice+",
            "al ice+bob",
        ] {
            assert_eq!(dm_users(room), None, "{room}");
            assert!(!is_valid_room(room), "{room}");
        }
        assert!(is_valid_room("general") && is_valid_room("alice+bob"));
    }

    use super::*;

    #[test]
    fn emoji_and_search_words() {
        for ok in [
            "👍",
            "🎉",
            "+1",
            "👨\u{200D}👩\u{200D}👧",
            "❤\u{FE0F}",
            ":tada:",
        ] {
            assert!(is_valid_emoji(ok), "{ok:?}");
        }
        for bad in ["", "a b", "\u{1b}[2J", "👍\n", "\u{202E}x", &"x".repeat(33)] {
            assert!(!is_valid_emoji(bad), "{bad:?}");
        }
        assert_eq!(
            search_words("Deplo, the-BUILD!").unwrap(),
            ["build", "deplo", "the"]
        );
        assert_eq!(search_words("  ,;  "), Err(QueryError::Empty));
        assert_eq!(search_words(&"a ".repeat(17)).unwrap(), ["a"]);
        let many: String = (0..17).map(|i| format!("w{i} ")).collect();
        assert_eq!(search_words(&many), Err(QueryError::TooManyWords));
        assert_eq!(search_words(&"x".repeat(513)), Err(QueryError::TooLong));
    }

    #[test]
    fn names() {
        assert!(is_valid_name("alice"));
        assert!(is_valid_name("A-b_c.9"));
        assert!(is_valid_name(&"x".repeat(32)));
        assert!(!is_valid_name(&"x".repeat(33)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("al ice"));
        assert!(!is_valid_name("é"));
        assert!(!is_valid_name("a/b"));
    }

    #[test]
    fn text_is_trimmed_and_newlines_normalized() {
        assert_eq!(normalize_text("hi \n\t ").unwrap(), "hi");
        assert_eq!(normalize_text("a\r\nb\rc\td").unwrap(), "a\nb\nc\td");
        assert_eq!(normalize_text("  lead").unwrap(), "  lead");
    }

    #[test]
    fn text_refusals() {
        assert_eq!(normalize_text(" \n "), Err(TextError::Empty));
        assert_eq!(
            normalize_text("a\u{1b}[2J"),
            Err(TextError::ControlCharacter(0x1b))
        );
        assert_eq!(
            normalize_text("a\u{85}b"),
            Err(TextError::ControlCharacter(0x85))
        );
        assert!(normalize_text(&"é".repeat(2048)).is_ok());
        assert_eq!(
            normalize_text(&"x".repeat(4097)),
            Err(TextError::TooLarge(4097))
        );
        // Trailing whitespace does not count against the limit.
        assert!(normalize_text(&format!("{}   ", "x".repeat(4096))).is_ok());
    }

    #[test]
    fn ids_and_passwords() {
        assert!(is_valid_id(&"i".repeat(64)));
        assert!(!is_valid_id(&"i".repeat(65)));
        assert!(!is_valid_password("short"));
        assert!(is_valid_password("12345678"));
        assert!(!is_valid_password(&"p".repeat(1025)));
    }
}
