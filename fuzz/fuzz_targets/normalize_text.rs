//! `normalize_text`, the rule every message passes before it is stored and
//! fanned out to other members' terminals.
//!
//! Checks, on any text (bytes that are not UTF-8 are replaced, so every
//! input is a test):
//!
//! - it never panics;
//! - accepted text is not empty, at most `MAX_TEXT_BYTES`, holds no control
//!   character other than `\n` and `\t` (no `\r`, no ESC, no C1), and has no
//!   trailing whitespace;
//! - it is idempotent: normalizing accepted text again gives the same text;
//! - a refusal names what is wrong: a `ControlCharacter` that is in the
//!   input and is a control, a `TooLarge` size over the limit.

#![no_main]

use chat_proto::limits::MAX_TEXT_BYTES;
use chat_proto::validate::{normalize_text, TextError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match normalize_text(&text) {
        Ok(out) => {
            assert!(!out.is_empty());
            assert!(out.len() <= MAX_TEXT_BYTES, "{} bytes accepted", out.len());
            if let Some(c) = out
                .chars()
                .find(|&c| c.is_control() && c != '\n' && c != '\t')
            {
                panic!("accepted text holds U+{:04X}", c as u32);
            }
            assert_eq!(out.trim_end(), out, "trailing whitespace kept");
            assert_eq!(
                normalize_text(&out).as_deref(),
                Ok(out.as_str()),
                "not idempotent"
            );
        }
        Err(TextError::ControlCharacter(code)) => {
            let c = char::from_u32(code).expect("a refused character is a char");
            assert!(c.is_control() && c != '\n' && c != '\t' && c != '\r');
            assert!(
                text.contains(c),
                "refused U+{code:04X}, which is not in the input"
            );
        }
        Err(TextError::TooLarge(size)) => {
            assert!(size > MAX_TEXT_BYTES && size <= text.len());
        }
        Err(TextError::Empty) => assert!(text.trim_end().is_empty()),
    }
});
