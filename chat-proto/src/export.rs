//! The two formats a room's history is exported in, shared by
//! `chat-server export` and chat-tui's `/export`, so both write the same
//! file for the same room:
//! - JSON lines: one MESSAGE object (as in `history`) per line;
//! - Markdown: a heading, then one block per message with its author, time
//!   (UTC), seq, and its edits, deletion, reply and reactions applied.
//!
//! Text is written as the users typed it (chat text is often Markdown
//! already); the server refused control characters when it was sent.

use crate::event::{encode, MessageRecord};

/// One line of the JSON-lines export, newline included.
pub fn jsonl_line(message: &MessageRecord) -> String {
    let mut line = encode(message);
    line.push('\n');
    line
}

/// The start of a Markdown export of `room`.
pub fn markdown_header(room: &str) -> String {
    format!("# {room}\n\n")
}

/// One message as a Markdown block, blank line included. `replied` is the
/// message it answers, when the caller has it at hand (a quote of its first
/// line is written; otherwise only its seq).
pub fn markdown_message(message: &MessageRecord, replied: Option<&MessageRecord>) -> String {
    let mut out = format!(
        "**{}** · {} · #{}",
        message.user,
        utc_minute(message.ts),
        message.seq
    );
    if message.edited_ts.is_some() && !message.deleted {
        out.push_str(" · (edited)");
    }
    out.push('\n');
    if let Some(seq) = message.reply_to {
        match replied.filter(|r| r.seq == seq) {
            Some(r) if r.deleted => {
                out.push_str(&format!("> ↪ #{seq} {}: message deleted\n", r.user))
            }
            Some(r) => {
                let first = r.text.lines().next().unwrap_or_default();
                out.push_str(&format!("> ↪ #{seq} {}: {first}\n", r.user));
            }
            None => out.push_str(&format!("> ↪ #{seq}\n")),
        }
    }
    if message.deleted {
        out.push_str("_message deleted_\n");
    } else {
        out.push_str(&message.text);
        out.push('\n');
    }
    if !message.reactions.is_empty() {
        let parts: Vec<String> = message
            .reactions
            .0
            .iter()
            .map(|(emoji, users)| format!("{emoji} {}", users.join(", ")))
            .collect();
        out.push_str(&parts.join(" · "));
        out.push('\n');
    }
    out.push('\n');
    out
}

/// `2026-11-30 16:56 UTC` for a timestamp in milliseconds.
pub fn utc_minute(ts_ms: i64) -> String {
    let secs = ts_ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let of_day = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        of_day / 3600,
        of_day % 3600 / 60
    )
}

/// Proleptic Gregorian (year, month 1-12, day 1-31) of a day number counted
/// from 1970-01-01 (H. Hinnant's `civil_from_days`).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Reactions;

    #[test]
    fn markdown_applies_edits_deletions_replies_and_reactions() {
        let first = MessageRecord {
            room: "general".into(),
            seq: 1,
            user: "alice".into(),
            text: "shipping it\nsecond line".into(),
            ts: 1_764_080_000_000,
            ..Default::default()
        };
        let mut reactions = Reactions::default();
        reactions.set("👍", "alice", true);
        reactions.set("👍", "carol", true);
        reactions.set("🎉", "bob", true);
        let reply = MessageRecord {
            room: "general".into(),
            seq: 2,
            user: "bob".into(),
            text: "great".into(),
            ts: 1_764_080_060_000,
            reply_to: Some(1),
            edited_ts: Some(1_764_080_070_000),
            reactions,
            ..Default::default()
        };
        assert_eq!(markdown_header("general"), "# general\n\n");
        assert_eq!(
            markdown_message(&first, None),
            "**alice** · 2025-11-25 14:13 UTC · #1\nshipping it\nsecond line\n\n"
        );
        assert_eq!(
            markdown_message(&reply, Some(&first)),
            "**bob** · 2025-11-25 14:14 UTC · #2 · (edited)\n> ↪ #1 alice: shipping it\ngreat\n👍 alice, carol · 🎉 bob\n\n"
        );
        assert!(markdown_message(&reply, None).contains("> ↪ #1\n"));
        let gone = MessageRecord {
            deleted: true,
            text: String::new(),
            ..first.clone()
        };
        assert_eq!(
            markdown_message(&gone, None),
            "**alice** · 2025-11-25 14:13 UTC · #1\n_message deleted_\n\n"
        );
        assert_eq!(
            jsonl_line(&first),
            "{\"room\":\"general\",\"seq\":1,\"user\":\"alice\",\"text\":\"shipping it\\nsecond line\",\"ts\":1764080000000}\n"
        );
    }

    #[test]
    fn days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(utc_minute(-1), "1969-12-31 23:59 UTC");
    }
}
