//! Text from peers (user names that failed validation, error messages that
//! quote a request, envelopes from Redis) on its way into a log line.
//!
//! Logs end up on an operator's terminal. Raw, such text could forge log
//! lines (newlines), drive the terminal (escape sequences: colours, titles,
//! even the clipboard through OSC 52) or fill the disk (any length). So it is
//! written in Rust's `Debug` form, which escapes every control character,
//! and cut to [`MAX_CHARS`] characters.

use std::fmt;

/// Longest peer text shown in a log line, in characters.
pub const MAX_CHARS: usize = 64;

/// Displays peer-controlled text escaped and truncated: `"ab\u{1b}[31m"…`.
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(MAX_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

/// Displays any error or value whose text may quote a peer, escaped and
/// truncated like [`Untrusted`].
pub fn untrusted(value: &impl fmt::Display) -> String {
    Untrusted(&value.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_truncates() {
        let shown = Untrusted("evil\nFORGED\u{1b}]52;c;aGk=\u{7}").to_string();
        assert!(!shown.contains('\n') && !shown.contains('\u{1b}') && !shown.contains('\u{7}'));
        assert!(shown.contains("\\n") && shown.contains("\\u{1b}"));
        let long = "é".repeat(1000);
        let shown = Untrusted(&long).to_string();
        assert!(shown.chars().count() < MAX_CHARS + 20, "{shown}");
        assert!(shown.ends_with("(2000 bytes)"));
        assert_eq!(Untrusted("alice").to_string(), "\"alice\"");
    }
}
