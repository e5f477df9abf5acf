//! `/export`: a room's whole history as a Markdown file, in the same format
//! `chat-server export` writes (both use [`chat_proto::export`]). The
//! network task gathers the pages ([`crate::net::NetCommand::Export`]);
//! this module turns them into the file's text and picks the default name.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chat_proto::export::{civil_from_days, markdown_header, markdown_message};
use chat_proto::MessageRecord;

use crate::clock::{LocalTime, ZoneFn};

/// The Markdown export of `room` from its messages by seq, oldest first. A
/// reply quotes the message it answers when that one is in the set.
pub fn markdown(room: &str, messages: &BTreeMap<u64, MessageRecord>) -> String {
    let mut out = markdown_header(room);
    for message in messages.values() {
        let replied = message.reply_to.and_then(|seq| messages.get(&seq));
        out.push_str(&markdown_message(message, replied));
    }
    out
}

/// `./ROOM-YYYYMMDD-HHMM.md` at local time `now_ms`. A direct
/// conversation's `+` is a valid file name character; room names hold
/// nothing else that is not.
pub fn default_path(room: &str, now_ms: i64, zone: ZoneFn) -> PathBuf {
    let time = LocalTime::at(now_ms, zone);
    let (y, m, d) = civil_from_days(i64::from(time.day));
    let hhmm = time.hhmm().replace(':', "");
    PathBuf::from(format!("./{room}-{y:04}{m:02}{d:02}-{hhmm}.md"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock;

    fn record(seq: u64, user: &str, text: &str) -> MessageRecord {
        MessageRecord {
            room: "general".into(),
            seq,
            user: user.into(),
            text: text.into(),
            ts: 1_764_080_000_000 + seq as i64 * 60_000,
            ..Default::default()
        }
    }

    #[test]
    fn markdown_quotes_replies_found_in_the_export() {
        let mut messages = BTreeMap::new();
        messages.insert(1, record(1, "bob", "first\nsecond"));
        let mut reply = record(2, "alice", "yes");
        reply.reply_to = Some(1);
        messages.insert(2, reply);
        let mut orphan = record(3, "alice", "and this");
        orphan.reply_to = Some(0);
        messages.insert(3, orphan);
        let text = markdown("general", &messages);
        assert_eq!(
            text,
            "# general\n\n\
             **bob** · 2025-11-25 14:14 UTC · #1\nfirst\nsecond\n\n\
             **alice** · 2025-11-25 14:15 UTC · #2\n> ↪ #1 bob: first\nyes\n\n\
             **alice** · 2025-11-25 14:16 UTC · #3\n> ↪ #0\nand this\n\n"
        );
    }

    #[test]
    fn default_path_names_the_room_and_the_minute() {
        let path = default_path("general", 1_764_080_000_000, clock::utc);
        assert_eq!(path, PathBuf::from("./general-20251125-1413.md"));
    }
}
