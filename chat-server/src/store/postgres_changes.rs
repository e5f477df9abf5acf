//! How the PostgreSQL writer applies a batch's edits, deletions and
//! reactions: the messages they change (and their rooms) are read once,
//! every change is checked and applied here in queue order, and what they
//! came to is written back in a few statements over arrays.
//!
//! Changes in one batch often depend on each other: a sender's window holds
//! several reactions to one message, a deletion refuses the edits after it,
//! a toggle undoes the one before, the reaction cap counts the ones the
//! batch added. One statement per change (the earlier way) paid a whole
//! statement's cost for each; one set-based statement cannot check a change
//! against what an earlier one in the same statement did. Working them out
//! here is exact and costs one more round trip per batch with changes.
//!
//! This is sound because the writer reads after locking every room the
//! batch changes (`LOCK_ROOMS`), and messages and reactions are written only
//! under their room's lock: nothing can change what was read before the
//! batch commits.

use std::collections::{BTreeMap, BTreeSet};

use super::{Change, Position, MAX_REACTIONS_PER_MESSAGE};

/// A message a batch changes, as it was before the batch (messages deleted
/// before it are left out: no change can touch them).
#[derive(Debug, Clone, Default)]
pub(super) struct Target {
    pub author: String,
    /// Its reactions, as (emoji, user).
    pub reactions: Vec<(String, String)>,
}

/// A room a batch changes, as it was after the batch's appends.
#[derive(Debug, Clone)]
pub(super) struct Head {
    pub name: String,
    pub last_seq: u64,
    pub rev: u64,
}

/// One change of the batch.
#[derive(Debug, Clone, Copy)]
pub(super) struct Request<'a> {
    pub room: i64,
    pub seq: u64,
    pub user: &'a str,
    pub admin: bool,
    pub change: &'a Change,
}

/// Why a change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// No such message, or it was deleted (maybe earlier in the batch).
    NoMessage,
    NotAuthor,
    TooManyReactions,
    /// The message is there but its room is not: not expected.
    NoRoom,
}

/// What one change came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict<'a> {
    Refused(Refusal),
    /// Applied in room `name` at position `at`; `had`: a reaction that was
    /// on before (and is now off).
    Done {
        name: &'a str,
        at: Position,
        had: bool,
    },
}

/// The writes that carry out a batch's changes, as the arrays the writer's
/// statements take. Each list is one statement's, empty when it has
/// nothing to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Writes<'a> {
    /// Each changed room's `rev` after the batch.
    pub room_ids: Vec<i64>,
    pub room_revs: Vec<i64>,
    /// Messages edited or deleted: their new text, their `edited_ts` if
    /// the batch edited them (else it stays), whether deleted.
    pub message_rooms: Vec<i64>,
    pub message_seqs: Vec<i64>,
    pub message_texts: Vec<&'a str>,
    pub message_edited: Vec<Option<i64>>,
    pub message_deleted: Vec<bool>,
    /// Reaction rows from before the batch that go: one (emoji, user), or
    /// every one of the message when both are NULL (a deletion).
    pub drop_rooms: Vec<i64>,
    pub drop_seqs: Vec<i64>,
    pub drop_emoji: Vec<Option<&'a str>>,
    pub drop_users: Vec<Option<&'a str>>,
    /// Reaction rows the batch leaves on, with the `rev` of the change that
    /// last turned each on (reactions are listed in that order).
    pub add_rooms: Vec<i64>,
    pub add_seqs: Vec<i64>,
    pub add_emoji: Vec<&'a str>,
    pub add_users: Vec<&'a str>,
    pub add_revs: Vec<i64>,
    /// One `room_changes` row per change applied, in order.
    pub log_rooms: Vec<i64>,
    pub log_revs: Vec<i64>,
    pub log_at_seqs: Vec<i64>,
    pub log_seqs: Vec<i64>,
    pub log_kinds: Vec<&'static str>,
    pub log_users: Vec<&'a str>,
    pub log_texts: Vec<Option<&'a str>>,
    pub log_emoji: Vec<Option<&'a str>>,
    pub log_turned_on: Vec<Option<bool>>,
    /// Deleted messages, whose logged edits lose their text (those this
    /// batch logs included: the statement runs after the log's insert).
    pub unlog_rooms: Vec<i64>,
    pub unlog_seqs: Vec<i64>,
}

/// A changed message while the batch is worked out.
struct Working<'a> {
    author: &'a str,
    deleted: bool,
    /// The last edit's text.
    edited: Option<&'a str>,
    /// The reactions on now: `None` for a row from before, untouched;
    /// `Some(rev)` for one the batch turned on at that `rev`.
    on: BTreeMap<(&'a str, &'a str), Option<u64>>,
    /// Rows from before that the batch turned off at some point: they go
    /// (and come back as new rows if turned on again, with the new `rev`).
    off: BTreeSet<(&'a str, &'a str)>,
}

fn db(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Checks and applies `requests` in order, each seeing what the ones
/// before it did, from the state before the batch: `targets` by (room,
/// seq), `heads` by room id. Gives each change's verdict, in order, and the
/// writes for them all.
///
/// The rules are [`Store::change`](super::Store::change)'s: the message
/// must be there and not deleted; only its author edits it; its author or
/// an admin deletes it; a reaction toggles, and a message carries at most
/// [`MAX_REACTIONS_PER_MESSAGE`] different emoji. A change applied takes
/// the next `rev` of its room, and its position is the room's `last_seq`
/// with that `rev`.
pub(super) fn apply<'a>(
    requests: &[Request<'a>],
    targets: &'a BTreeMap<(i64, u64), Target>,
    heads: &'a BTreeMap<i64, Head>,
    ts: i64,
) -> (Vec<Verdict<'a>>, Writes<'a>) {
    let mut working: BTreeMap<(i64, u64), Working<'a>> = targets
        .iter()
        .map(|(&key, target)| {
            let on = target
                .reactions
                .iter()
                .map(|(emoji, user)| ((emoji.as_str(), user.as_str()), None))
                .collect();
            let message = Working {
                author: &target.author,
                deleted: false,
                edited: None,
                on,
                off: BTreeSet::new(),
            };
            (key, message)
        })
        .collect();
    let mut revs: BTreeMap<i64, u64> = BTreeMap::new();
    let mut writes = Writes::default();
    let mut verdicts = Vec::with_capacity(requests.len());
    for request in requests {
        let verdict = match working.get_mut(&(request.room, request.seq)) {
            Some(message) if !message.deleted => {
                one(request, message, heads, &mut revs, &mut writes)
            }
            _ => Verdict::Refused(Refusal::NoMessage),
        };
        verdicts.push(verdict);
    }
    for ((room, seq), message) in &working {
        let (room, seq) = (*room, db(*seq));
        if message.deleted {
            writes.push_message(room, seq, "", message.edited.map(|_| ts), true);
            writes.drop_rooms.push(room);
            writes.drop_seqs.push(seq);
            writes.drop_emoji.push(None);
            writes.drop_users.push(None);
            writes.unlog_rooms.push(room);
            writes.unlog_seqs.push(seq);
            continue;
        }
        if let Some(text) = message.edited {
            writes.push_message(room, seq, text, Some(ts), false);
        }
        for &(emoji, user) in &message.off {
            writes.drop_rooms.push(room);
            writes.drop_seqs.push(seq);
            writes.drop_emoji.push(Some(emoji));
            writes.drop_users.push(Some(user));
        }
        for (&(emoji, user), rev) in &message.on {
            if let Some(rev) = rev {
                writes.add_rooms.push(room);
                writes.add_seqs.push(seq);
                writes.add_emoji.push(emoji);
                writes.add_users.push(user);
                writes.add_revs.push(db(*rev));
            }
        }
    }
    for (room, rev) in revs {
        writes.room_ids.push(room);
        writes.room_revs.push(db(rev));
    }
    (verdicts, writes)
}

/// Checks and applies one change to a message that is there.
fn one<'a>(
    request: &Request<'a>,
    message: &mut Working<'a>,
    heads: &'a BTreeMap<i64, Head>,
    revs: &mut BTreeMap<i64, u64>,
    writes: &mut Writes<'a>,
) -> Verdict<'a> {
    let user = request.user;
    let mine = message.author == user;
    let had = match request.change {
        Change::Edit { .. } if !mine => return Verdict::Refused(Refusal::NotAuthor),
        Change::Delete if !mine && !request.admin => return Verdict::Refused(Refusal::NotAuthor),
        Change::Edit { .. } | Change::Delete => false,
        Change::React { emoji } => {
            let had = message.on.contains_key(&(emoji.as_str(), user));
            if !had && !message.on.keys().any(|(e, _)| *e == emoji) {
                let kinds: BTreeSet<&str> = message.on.keys().map(|(e, _)| *e).collect();
                if kinds.len() >= MAX_REACTIONS_PER_MESSAGE {
                    return Verdict::Refused(Refusal::TooManyReactions);
                }
            }
            had
        }
    };
    let Some(head) = heads.get(&request.room) else {
        return Verdict::Refused(Refusal::NoRoom);
    };
    let rev = revs.entry(request.room).or_insert(head.rev);
    *rev += 1;
    let rev = *rev;
    let (kind, text, emoji) = match request.change {
        Change::Edit { text } => {
            message.edited = Some(text);
            ("edit", Some(text.as_str()), None)
        }
        Change::Delete => {
            message.deleted = true;
            ("delete", None, None)
        }
        Change::React { emoji } => {
            let key = (emoji.as_str(), user);
            if had {
                // A row from before goes; one this batch added just is not
                // written.
                if message.on.remove(&key) == Some(None) {
                    message.off.insert(key);
                }
            } else {
                message.on.insert(key, Some(rev));
            }
            ("react", None, Some(emoji.as_str()))
        }
    };
    writes.log_rooms.push(request.room);
    writes.log_revs.push(db(rev));
    writes.log_at_seqs.push(db(head.last_seq));
    writes.log_seqs.push(db(request.seq));
    writes.log_kinds.push(kind);
    writes.log_users.push(user);
    writes.log_texts.push(text);
    writes.log_emoji.push(emoji);
    writes
        .log_turned_on
        .push(matches!(request.change, Change::React { .. }).then_some(!had));
    Verdict::Done {
        name: &head.name,
        at: Position {
            seq: head.last_seq,
            rev,
        },
        had,
    }
}

impl<'a> Writes<'a> {
    fn push_message(
        &mut self,
        room: i64,
        seq: i64,
        text: &'a str,
        edited: Option<i64>,
        deleted: bool,
    ) {
        self.message_rooms.push(room);
        self.message_seqs.push(seq);
        self.message_texts.push(text);
        self.message_edited.push(edited);
        self.message_deleted.push(deleted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(author: &str, reactions: &[(&str, &str)]) -> Target {
        Target {
            author: author.into(),
            reactions: reactions
                .iter()
                .map(|(e, u)| ((*e).into(), (*u).into()))
                .collect(),
        }
    }

    fn head(name: &str, last_seq: u64, rev: u64) -> Head {
        Head {
            name: name.into(),
            last_seq,
            rev,
        }
    }

    fn req<'a>(room: i64, seq: u64, user: &'a str, change: &'a Change) -> Request<'a> {
        Request {
            room,
            seq,
            user,
            admin: false,
            change,
        }
    }

    fn done(name: &str, seq: u64, rev: u64, had: bool) -> Verdict<'_> {
        Verdict::Done {
            name,
            at: Position { seq, rev },
            had,
        }
    }

    #[test]
    fn a_refusal_in_the_middle_takes_no_rev_and_stops_nothing() {
        let targets = BTreeMap::from([((1, 5), target("ann", &[])), ((1, 6), target("bob", &[]))]);
        let heads = BTreeMap::from([(1, head("lobby", 9, 3))]);
        let edit = Change::Edit { text: "new".into() };
        let thumbs = Change::React {
            emoji: "👍".into()
        };
        let requests = [
            req(1, 5, "ann", &edit),
            req(1, 6, "ann", &edit),
            req(1, 7, "ann", &thumbs),
            req(1, 6, "ann", &thumbs),
        ];
        let (verdicts, writes) = apply(&requests, &targets, &heads, 100);
        assert_eq!(
            verdicts,
            [
                done("lobby", 9, 4, false),
                Verdict::Refused(Refusal::NotAuthor),
                Verdict::Refused(Refusal::NoMessage),
                done("lobby", 9, 5, false),
            ]
        );
        assert_eq!((writes.room_ids, writes.room_revs), (vec![1], vec![5]));
        assert_eq!(writes.log_revs, [4, 5]);
        assert_eq!(writes.log_kinds, ["edit", "react"]);
        assert_eq!(writes.log_turned_on, [None, Some(true)]);
        assert_eq!(writes.message_seqs, [5]);
        assert_eq!(writes.message_texts, ["new"]);
        assert_eq!(writes.message_edited, [Some(100)]);
        assert_eq!(writes.add_seqs, [6]);
        assert_eq!(writes.add_revs, [5]);
        assert!(writes.drop_rooms.is_empty() && writes.unlog_rooms.is_empty());
    }

    #[test]
    fn each_room_counts_its_own_revs_in_queue_order() {
        let targets = BTreeMap::from([
            ((1, 1), target("ann", &[])),
            ((2, 1), target("ann", &[])),
            ((3, 4), target("ann", &[])),
        ]);
        let heads = BTreeMap::from([
            (1, head("one", 1, 0)),
            (2, head("two", 7, 10)),
            (3, head("three", 4, 2)),
        ]);
        let thumbs = Change::React {
            emoji: "👍".into()
        };
        let requests = [
            req(2, 1, "ann", &thumbs),
            req(1, 1, "ann", &thumbs),
            req(2, 1, "bob", &thumbs),
            req(3, 4, "ann", &thumbs),
            req(1, 1, "ann", &thumbs),
        ];
        let (verdicts, writes) = apply(&requests, &targets, &heads, 0);
        assert_eq!(
            verdicts,
            [
                done("two", 7, 11, false),
                done("one", 1, 1, false),
                done("two", 7, 12, false),
                done("three", 4, 3, false),
                // The toggle back off sees the one before.
                done("one", 1, 2, true),
            ]
        );
        assert_eq!(writes.room_ids, [1, 2, 3]);
        assert_eq!(writes.room_revs, [2, 12, 3]);
        assert_eq!(writes.log_rooms, [2, 1, 2, 3, 1]);
        assert_eq!(writes.log_revs, [11, 1, 12, 3, 2]);
        // Turned on and off again: no row either way.
        assert_eq!(writes.add_rooms, [2, 2, 3]);
        assert_eq!(writes.add_users, ["ann", "bob", "ann"]);
        assert_eq!(writes.add_revs, [11, 12, 3]);
        assert!(writes.drop_rooms.is_empty());
    }

    #[test]
    fn toggles_of_rows_from_before_replace_them() {
        let targets = BTreeMap::from([((1, 1), target("ann", &[("👍", "bob"), ("🎉", "cat")]))]);
        let heads = BTreeMap::from([(1, head("r", 1, 2))]);
        let thumbs = Change::React {
            emoji: "👍".into()
        };
        let party = Change::React {
            emoji: "🎉".into()
        };
        // bob's 👍 off then on again (a new row, listed after cat's); cat's
        // 🎉 off.
        let requests = [
            req(1, 1, "bob", &thumbs),
            req(1, 1, "cat", &party),
            req(1, 1, "bob", &thumbs),
        ];
        let (verdicts, writes) = apply(&requests, &targets, &heads, 0);
        assert_eq!(
            verdicts,
            [
                done("r", 1, 3, true),
                done("r", 1, 4, true),
                done("r", 1, 5, false),
            ]
        );
        // Both rows from before go (listed by emoji).
        assert_eq!(writes.drop_emoji, [Some("🎉"), Some("👍")]);
        assert_eq!(writes.drop_users, [Some("cat"), Some("bob")]);
        assert_eq!(
            (writes.add_emoji, writes.add_users, writes.add_revs),
            (vec!["👍"], vec!["bob"], vec![5])
        );
        assert_eq!(writes.log_turned_on, [Some(false), Some(false), Some(true)]);
    }

    #[test]
    fn the_cap_counts_what_the_batch_added_and_removed() {
        let emoji: Vec<(String, String)> = (1..MAX_REACTIONS_PER_MESSAGE)
            .map(|n| (format!("e{n}"), "ann".to_owned()))
            .collect();
        let pairs: Vec<(&str, &str)> = emoji
            .iter()
            .map(|(e, u)| (e.as_str(), u.as_str()))
            .collect();
        let targets = BTreeMap::from([((1, 1), target("ann", &pairs))]);
        let heads = BTreeMap::from([(1, head("r", 1, 0))]);
        let last = Change::React {
            emoji: "last".into(),
        };
        let more = Change::React {
            emoji: "more".into(),
        };
        let e1 = Change::React { emoji: "e1".into() };
        let requests = [
            req(1, 1, "bob", &last),
            req(1, 1, "bob", &more),
            // An emoji already there is always allowed.
            req(1, 1, "bob", &e1),
            // ann's e1 off: e1 is still on (bob's), so still 50 kinds.
            req(1, 1, "ann", &e1),
            req(1, 1, "cat", &more),
            req(1, 1, "bob", &e1),
            // Now e1 is gone: room for one more.
            req(1, 1, "cat", &more),
        ];
        let (verdicts, _) = apply(&requests, &targets, &heads, 0);
        let refused: Vec<bool> = verdicts
            .iter()
            .map(|v| *v == Verdict::Refused(Refusal::TooManyReactions))
            .collect();
        assert_eq!(refused, [false, true, false, false, true, false, false]);
    }

    #[test]
    fn a_deletion_refuses_what_follows_and_takes_the_reactions() {
        let targets = BTreeMap::from([((1, 3), target("ann", &[("👍", "bob")]))]);
        let heads = BTreeMap::from([(1, head("r", 3, 0))]);
        let edit = Change::Edit {
            text: "secret".into(),
        };
        let thumbs = Change::React {
            emoji: "👍".into()
        };
        let requests = [
            req(1, 3, "ann", &edit),
            req(1, 3, "cat", &thumbs),
            req(1, 3, "bob", &Change::Delete),
            req(1, 3, "ann", &Change::Delete),
            req(1, 3, "ann", &edit),
            req(1, 3, "ann", &Change::Delete),
        ];
        let (verdicts, writes) = apply(&requests, &targets, &heads, 7);
        assert_eq!(
            verdicts,
            [
                done("r", 3, 1, false),
                done("r", 3, 2, false),
                Verdict::Refused(Refusal::NotAuthor),
                done("r", 3, 3, false),
                Verdict::Refused(Refusal::NoMessage),
                Verdict::Refused(Refusal::NoMessage),
            ]
        );
        // Blank text, deleted, edited_ts of the edit before; every reaction
        // row goes; the log's edits are blanked.
        assert_eq!(writes.message_texts, [""]);
        assert_eq!(writes.message_edited, [Some(7)]);
        assert_eq!(writes.message_deleted, [true]);
        assert_eq!(writes.drop_emoji, [None]);
        assert!(writes.add_rooms.is_empty());
        assert_eq!((writes.unlog_rooms, writes.unlog_seqs), (vec![1], vec![3]));
        assert_eq!(writes.log_kinds, ["edit", "react", "delete"]);

        let mut by_admin = req(1, 3, "bob", &Change::Delete);
        by_admin.admin = true;
        let (verdicts, _) = apply(&[by_admin], &targets, &heads, 7);
        assert_eq!(verdicts, [done("r", 3, 1, false)]);
    }
}
