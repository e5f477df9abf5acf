//! Tests of the PostgreSQL store on a real PostgreSQL: the one the `tests`
//! crate's harness starts for this test process (initdb in a temporary
//! folder, a free port, never 5432), one fresh database per test.
//!
//! They cover what the store's statements decide in the database (seq and
//! rev allocation, the change checks, reactions' order, gap fills, search
//! and its index, the schema upgrade of existing data); the server's tests
//! in `tests/` run the same operations end to end on both backends.

use chat_e2e::TestPostgres;
use chat_proto::MessageRecord;
use tokio::sync::mpsc;

use super::super::{Store, COMMIT_QUEUE};
use super::*;

/// A store on a new database of the shared test PostgreSQL, its feed, and
/// the database's URL (for looking at the tables with `psql`).
async fn open_store() -> (PostgresStore, mpsc::Receiver<Commit>, String) {
    let postgres = TestPostgres::shared();
    let url = postgres.url(&postgres.create_database());
    // Roomier than the server's: the tests read it only now and then.
    let (feed_tx, feed) = mpsc::channel(10_000);
    let store = PostgresStore::open(&url, feed_tx)
        .await
        .expect("open store");
    (store, feed, url)
}

/// Every event announced so far.
fn announced(feed: &mut mpsc::Receiver<Commit>) -> Vec<Stored> {
    let mut events = Vec::new();
    while let Ok(commit) = feed.try_recv() {
        if let Commit::Events(batch) = commit {
            events.extend(batch);
        }
    }
    events
}

fn react(emoji: &str) -> Change {
    Change::React {
        emoji: emoji.into(),
    }
}

fn edit(text: &str) -> Change {
    Change::Edit { text: text.into() }
}

fn reactions(message: &MessageRecord) -> Vec<(&str, Vec<&str>)> {
    message
        .reactions
        .0
        .iter()
        .map(|(e, users)| (e.as_str(), users.iter().map(String::as_str).collect()))
        .collect()
}

fn psql(url: &str, sql: &str) -> String {
    chat_e2e::psql(url, sql)
}

#[tokio::test]
async fn changes_are_checked_applied_logged_and_announced() {
    let (store, mut feed, url) = open_store().await;
    let room = store.open_room("lobby").await.unwrap();
    assert_eq!((room.last_seq, room.rev), (0, 0));
    let id = room.id;
    assert_eq!(
        store
            .append(id, "ann", "first secret", None)
            .await
            .unwrap()
            .seq,
        1
    );
    assert_eq!(
        store
            .append(id, "bob", "second", Some(1))
            .await
            .unwrap()
            .seq,
        2
    );
    assert!(matches!(
        store.append(id, "bob", "to nothing", Some(9)).await,
        Err(StoreError::NoSuchMessage)
    ));

    // Edits: the author only.
    assert!(matches!(
        store.change(id, 1, "bob", true, edit("x"), None).await,
        Err(StoreError::NotAuthor)
    ));
    // The asker's copy of the change goes out on the feed marked for it.
    let asker = Answer {
        session: SessionId(7),
        re: Some("e1".into()),
    };
    let edited = store
        .change(
            id,
            1,
            "ann",
            false,
            edit("first, edited secret"),
            Some(asker.clone()),
        )
        .await
        .unwrap();
    assert_eq!(edited.rev, 1);
    // Reactions toggle; emoji in order of first reaction, users in order.
    for (user, emoji, rev, on) in [
        ("bob", "👍", 2, true),
        ("ann", "👍", 3, true),
        ("bob", "🎉", 4, true),
        ("bob", "👍", 5, false),
        ("cat", "👍", 6, true),
    ] {
        let changed = store
            .change(id, 1, user, false, react(emoji), None)
            .await
            .unwrap();
        assert_eq!((changed.rev, changed.on), (rev, on), "{user} {emoji}");
    }
    assert_eq!(store.append(id, "cat", "third", None).await.unwrap().seq, 3);
    let head = store.room("lobby").await.unwrap().unwrap();
    assert_eq!((head.last_seq, head.rev), (3, 6));

    let messages = store.range(id, "lobby", 0, 3, 10).await.unwrap();
    assert_eq!(messages[0].text, "first, edited secret");
    assert_eq!(messages[0].edited_ts, Some(edited.ts));
    assert_eq!(
        reactions(&messages[0]),
        [("👍", vec!["ann", "cat"]), ("🎉", vec!["bob"])]
    );
    assert_eq!(messages[1].reply_to, Some(1));
    assert_eq!(messages[1].edited_ts, None);
    let page = store.history("lobby", None, 10).await.unwrap();
    assert_eq!(page.messages, messages);

    // Deletion: the author or an admin; the text leaves storage.
    assert!(matches!(
        store
            .change(id, 1, "bob", false, Change::Delete, None)
            .await,
        Err(StoreError::NotAuthor)
    ));
    let deleted = store
        .change(id, 1, "bob", true, Change::Delete, None)
        .await
        .unwrap();
    assert_eq!(deleted.rev, 7);
    for change in [edit("again"), react("👍"), Change::Delete] {
        assert!(matches!(
            store.change(id, 1, "ann", true, change, None).await,
            Err(StoreError::NoSuchMessage)
        ));
    }
    assert!(matches!(
        store.change(id, 99, "ann", true, react("👍"), None).await,
        Err(StoreError::NoSuchMessage)
    ));
    assert!(matches!(
        store.append(id, "bob", "re", Some(1)).await,
        Err(StoreError::NoSuchMessage)
    ));
    let first = &store.range(id, "lobby", 0, 1, 1).await.unwrap()[0];
    assert!(first.deleted && first.text.is_empty() && first.reactions.is_empty());
    assert_eq!(
        psql(
            &url,
            "SELECT (SELECT count(*) FROM messages WHERE text LIKE '%secret%')
                  + (SELECT count(*) FROM room_changes WHERE text LIKE '%secret%')
                  + (SELECT count(*) FROM reactions WHERE seq = 1)"
        ),
        "0"
    );

    // The feed: every event once, in order, its index one more each time.
    let events = announced(&mut feed);
    let indices: Vec<u64> = events.iter().map(|e| e.at.index()).collect();
    assert_eq!(indices, (1..=10).collect::<Vec<_>>());
    assert!(matches!(
        &events[2].event,
        RoomEvent::Edited { seq: 1, text, .. } if text == "first, edited secret"
    ));
    assert_eq!(events[2].answer, Some(asker));
    assert!(events.iter().filter(|e| e.answer.is_some()).count() == 1);
    assert!(matches!(
        &events[6].event,
        RoomEvent::Reaction { seq: 1, user, emoji, on: false } if user == "bob" && emoji == "👍"
    ));
    assert_eq!(events[8].at, Position { seq: 3, rev: 6 });
    assert!(matches!(events[9].event, RoomEvent::Deleted { seq: 1 }));
    assert_eq!(events[9].at, Position { seq: 3, rev: 7 });

    // A gap fill gives the same events (messages in their current state).
    let filled = store
        .events(id, "lobby", Position::default(), 10, 100)
        .await
        .unwrap();
    let positions = |events: &[Stored]| events.iter().map(|e| e.at).collect::<Vec<_>>();
    assert_eq!(positions(&filled), positions(&events));
    for (filled, announced) in filled.iter().zip(&events) {
        match (&filled.event, &announced.event) {
            (RoomEvent::Message(now), RoomEvent::Message(then)) => assert_eq!(now.seq, then.seq),
            // Edits logged before the deletion lost their text with it.
            (RoomEvent::Edited { seq: 1, text, .. }, RoomEvent::Edited { .. }) => {
                assert_eq!(text, "")
            }
            (now, then) => assert_eq!(now, then),
        }
    }
    // From the middle, bounded by `upto` and by `limit`.
    let after = events[3].at;
    let some = store.events(id, "lobby", after, 8, 100).await.unwrap();
    assert_eq!(positions(&some), positions(&events[4..8]));
    let some = store.events(id, "lobby", after, 10, 2).await.unwrap();
    assert_eq!(positions(&some), positions(&events[4..6]));
    assert!(store
        .events(id, "lobby", after, 4, 10)
        .await
        .unwrap()
        .is_empty());

    // What changed after rev 4, up to seq 2: message 1 only (message 3 is
    // past `upto`), as it is now, with the rev of the same moment.
    let (changed, rev) = store.changed_since(id, "lobby", 4, 0, 2, 10).await.unwrap();
    assert_eq!(rev, 7);
    assert_eq!(changed.len(), 1);
    assert!(changed[0].deleted && changed[0].seq == 1);
    let (changed, rev) = store.changed_since(id, "lobby", 7, 0, 3, 10).await.unwrap();
    assert!(changed.is_empty());
    assert_eq!(rev, 7);
    store.close().await;
}

#[tokio::test]
async fn reactions_are_capped_per_message() {
    let (store, _feed, _) = open_store().await;
    let id = store.open_room("r").await.unwrap().id;
    store.append(id, "ann", "hi", None).await.unwrap();
    for n in 0..MAX_REACTIONS_PER_MESSAGE {
        store
            .change(id, 1, "ann", false, react(&format!("e{n}")), None)
            .await
            .unwrap();
    }
    assert!(matches!(
        store
            .change(id, 1, "bob", false, react("one too many"), None)
            .await,
        Err(StoreError::TooManyReactions)
    ));
    // One of those already there still counts once more, or less.
    assert!(
        store
            .change(id, 1, "bob", false, react("e7"), None)
            .await
            .unwrap()
            .on
    );
    assert!(
        !store
            .change(id, 1, "ann", false, react("e7"), None)
            .await
            .unwrap()
            .on
    );
    let head = store.room("r").await.unwrap().unwrap();
    assert_eq!(head.rev, MAX_REACTIONS_PER_MESSAGE as u64 + 2);
    store.close().await;
}

#[tokio::test]
async fn concurrent_changes_share_batches_and_number_without_holes() {
    let (store, mut feed, _) = open_store().await;
    let store = std::sync::Arc::new(store);
    let id = store.open_room("busy").await.unwrap().id;
    store.append(id, "ann", "hi", None).await.unwrap();
    let mut tasks = Vec::new();
    for n in 0..200 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("u{}", n % 40);
            if n % 3 == 0 {
                store
                    .append(id, &user, "more", Some(1))
                    .await
                    .map(|a| a.seq)
            } else {
                store
                    .change(id, 1, &user, false, react(&format!("e{}", n % 5)), None)
                    .await
                    .map(|c| c.rev)
            }
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let head = store.room("busy").await.unwrap().unwrap();
    assert_eq!(head.last_seq + head.rev, 201);
    let events = announced(&mut feed);
    let indices: Vec<u64> = events.iter().map(|e| e.at.index()).collect();
    assert_eq!(indices, (1..=201).collect::<Vec<_>>());
    let filled = store
        .events(id, "busy", Position::default(), 201, 1000)
        .await
        .unwrap();
    let positions = |events: &[Stored]| events.iter().map(|e| e.at).collect::<Vec<_>>();
    assert_eq!(positions(&filled), positions(&events));
    store.close().await;
}

#[tokio::test]
async fn changes_queued_together_apply_in_order_across_rooms() {
    let (store, mut feed, url) = open_store().await;
    let a = store.open_room("a").await.unwrap().id;
    let b = store.open_room("b").await.unwrap().id;
    store.append(a, "ann", "one", None).await.unwrap();
    store.append(a, "bob", "two", None).await.unwrap();
    store.append(b, "ann", "secret", None).await.unwrap();
    announced(&mut feed);
    // Queued in this order in one go (each call queues its job when first
    // polled), so most likely one batch; the outcomes are the same however
    // the writer cuts them: each change sees the ones before it.
    let thumbs = || react("👍");
    let calls = [
        (a, 1, "ann", false, thumbs()),
        (a, 1, "bob", false, edit("not mine")),
        (b, 1, "ann", false, edit("more secret")),
        (a, 1, "ann", false, thumbs()),
        (a, 2, "bob", false, Change::Delete),
        (a, 2, "bob", false, thumbs()),
        (a, 1, "bob", false, react("🎉")),
        (b, 1, "cat", true, Change::Delete),
        (a, 9, "ann", false, thumbs()),
        (a, 1, "cat", false, thumbs()),
    ];
    let results = futures_util::future::join_all(calls.into_iter().map(
        |(room, seq, user, admin, change)| store.change(room, seq, user, admin, change, None),
    ))
    .await;
    let summary: Vec<Result<(u64, bool), String>> = results
        .into_iter()
        .map(|r| r.map(|c| (c.rev, c.on)).map_err(|e| e.to_string()))
        .collect();
    let no_message = Err(StoreError::NoSuchMessage.to_string());
    assert_eq!(
        summary,
        [
            Ok((1, true)),
            Err(StoreError::NotAuthor.to_string()),
            Ok((1, false)),
            Ok((2, false)),
            Ok((3, false)),
            no_message.clone(),
            Ok((4, true)),
            Ok((2, false)),
            no_message,
            Ok((5, true)),
        ]
    );
    let head = |name| {
        let store = &store;
        async move {
            let head = store.room(name).await.unwrap().unwrap();
            (head.last_seq, head.rev)
        }
    };
    assert_eq!(head("a").await, (2, 5));
    assert_eq!(head("b").await, (1, 2));
    let messages = store.range(a, "a", 0, 2, 10).await.unwrap();
    assert_eq!(
        reactions(&messages[0]),
        [("🎉", vec!["bob"]), ("👍", vec!["cat"])]
    );
    assert!(messages[1].deleted && messages[1].text.is_empty());
    let gone = &store.range(b, "b", 0, 1, 10).await.unwrap()[0];
    assert!(gone.deleted && gone.edited_ts.is_some());
    assert_eq!(
        psql(
            &url,
            "SELECT string_agg(coalesce(text, '-'), ',' ORDER BY room_id, rev) FROM room_changes"
        ),
        "-,-,-,-,-,,-"
    );

    // Per room, the feed's events in rev order, one index after another, and
    // a gap fill gives the same positions.
    let events = announced(&mut feed);
    for (room, name, count) in [(a, "a", 5), (b, "b", 2)] {
        let mine: Vec<Position> = events
            .iter()
            .filter(|e| e.room_id == room)
            .map(|e| e.at)
            .collect();
        let last_seq = if name == "a" { 2 } else { 1 };
        let expected: Vec<Position> = (1..=count)
            .map(|rev| Position { seq: last_seq, rev })
            .collect();
        assert_eq!(mine, expected, "{name}");
        let after = Position {
            seq: last_seq,
            rev: 0,
        };
        let filled = store
            .events(room, name, after, last_seq + count, 100)
            .await
            .unwrap();
        let filled: Vec<Position> = filled.iter().map(|e| e.at).collect();
        assert_eq!(filled, expected, "{name}");
    }
    store.close().await;
}

#[tokio::test]
async fn search_matches_prefixes_of_every_word_in_readable_rooms() {
    let (store, _feed, _) = open_store().await;
    store.create_user("ann", "h", false).await.unwrap();
    store.create_user("bob", "h", false).await.unwrap();
    let public = store.open_room("public").await.unwrap().id;
    let other = store.open_room("other").await.unwrap().id;
    let private = store
        .create_private_room("secret", &["ann"])
        .await
        .unwrap()
        .unwrap()
        .id;
    for (room, text) in [
        (public, "Deploying the Release today"),    // 1
        (other, "release notes at example.com/v2"), // 2
        (private, "release keys are here"),         // 3
        (public, "nothing to see"),                 // 4
        (public, "Café releases"),                  // 5
        (public, "to be deleted: release"),         // 6
        (public, "old words"),                      // 7
    ] {
        store.append(room, "ann", text, None).await.unwrap();
    }
    store
        .change(public, 4, "ann", false, Change::Delete, None)
        .await
        .unwrap();
    store
        .change(public, 4, "ann", false, Change::Delete, None)
        .await
        .unwrap_err();
    let page = store
        .search(&SearchQuery {
            words: vec!["rel".into()],
            room: None,
            viewer: "bob".into(),
            before: None,
            limit: 10,
        })
        .await
        .unwrap();
    let texts = |page: &SearchPage| {
        page.messages
            .iter()
            .map(|m| (m.room.clone(), m.text.clone()))
            .collect::<Vec<_>>()
    };
    // Newest first; the private room is not bob's; "to be deleted" was
    // deleted (public's 4th message).
    assert_eq!(
        texts(&page),
        [
            ("public".to_owned(), "Café releases".to_owned()),
            (
                "other".to_owned(),
                "release notes at example.com/v2".to_owned()
            ),
            (
                "public".to_owned(),
                "Deploying the Release today".to_owned()
            ),
        ]
    );
    assert_eq!(page.next, None);
    let search = |words: &[&str], room: Option<RoomId>, viewer: &str, before, limit| {
        let store = &store;
        let query = SearchQuery {
            words: words.iter().map(|w| (*w).to_owned()).collect(),
            room,
            viewer: viewer.into(),
            before,
            limit,
        };
        async move { store.search(&query).await.unwrap() }
    };
    // A member reads the private room; pages go by the cursor.
    let first = search(&["release"], None, "ann", None, 2).await;
    assert_eq!(first.messages.len(), 2);
    assert_eq!(first.messages[1].text, "release keys are here");
    let next = first.next.expect("a next page");
    let second = search(&["release"], None, "ann", Some(next), 2).await;
    assert_eq!(
        second
            .messages
            .iter()
            .map(|m| m.text.as_str())
            .collect::<Vec<_>>(),
        [
            "release notes at example.com/v2",
            "Deploying the Release today"
        ]
    );
    assert_eq!(second.next, None);
    // Every word must match, each as a prefix; punctuation splits words.
    assert_eq!(
        search(&["com", "not"], None, "bob", None, 10)
            .await
            .messages
            .len(),
        1
    );
    assert_eq!(
        search(&["v2"], None, "bob", None, 10).await.messages.len(),
        1
    );
    assert_eq!(
        search(&["café"], None, "bob", None, 10)
            .await
            .messages
            .len(),
        1
    );
    assert!(search(&["release", "zebra"], None, "bob", None, 10)
        .await
        .messages
        .is_empty());
    assert!(search(&["eleas"], None, "bob", None, 10)
        .await
        .messages
        .is_empty());
    // One room only.
    let one = search(&["release"], Some(public), "bob", None, 10).await;
    assert_eq!(one.messages.len(), 2);
    assert!(one.messages.iter().all(|m| m.room == "public"));
    // Edits move a message's words.
    store
        .change(public, 5, "ann", false, edit("brand new words"), None)
        .await
        .unwrap();
    assert!(search(&["old"], None, "bob", None, 10)
        .await
        .messages
        .is_empty());
    let found = search(&["brand", "word"], None, "bob", None, 10).await;
    assert_eq!(found.messages.len(), 1);
    assert!(found.messages[0].edited_ts.is_some());
    store.close().await;
}

#[tokio::test]
async fn deleting_a_room_takes_its_reactions_and_changes() {
    let (store, _feed, url) = open_store().await;
    let id = store.open_room("gone").await.unwrap().id;
    let kept = store.open_room("kept").await.unwrap().id;
    for room in [id, kept] {
        store.append(room, "ann", "hi", None).await.unwrap();
        store
            .change(room, 1, "bob", false, react("👍"), None)
            .await
            .unwrap();
        store
            .change(room, 1, "ann", false, edit("hello"), None)
            .await
            .unwrap();
    }
    store.delete_room("gone", SessionId(1)).await.unwrap();
    assert_eq!(
        psql(
            &url,
            "SELECT (SELECT count(*) FROM reactions) || ' ' || (SELECT count(*) FROM room_changes)
                    || ' ' || (SELECT count(*) FROM messages)"
        ),
        "1 2 1"
    );
    assert!(matches!(
        store.change(id, 1, "ann", false, react("👍"), None).await,
        Err(StoreError::NoSuchMessage)
    ));
    assert!(store
        .events(id, "gone", Position::default(), 9, 9)
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        store.changed_since(id, "gone", 0, 0, 9, 9).await,
        Err(StoreError::NoSuchRoom)
    ));
    store.close().await;
}

#[tokio::test]
async fn imports_keep_the_state_of_messages() {
    let (store, _feed, _) = open_store().await;
    let room = RoomRecord {
        id: RoomId(0),
        name: "copied".into(),
        last_seq: 3,
        private: false,
        last_activity: 5,
        rev: 5,
    };
    let id = store.import_room(&room).await.unwrap();
    let mut messages = vec![
        MessageRecord {
            room: "copied".into(),
            seq: 1,
            user: "ann".into(),
            text: String::new(),
            ts: 1,
            deleted: true,
            ..Default::default()
        },
        MessageRecord {
            room: "copied".into(),
            seq: 2,
            user: "bob".into(),
            text: "edited reply".into(),
            ts: 2,
            reply_to: Some(1),
            edited_ts: Some(4),
            ..Default::default()
        },
        MessageRecord {
            room: "copied".into(),
            seq: 3,
            user: "cat".into(),
            text: "plain".into(),
            ts: 3,
            ..Default::default()
        },
    ];
    for (emoji, user) in [("🎉", "cat"), ("👍", "ann"), ("🎉", "bob")] {
        messages[1].reactions.set(emoji, user, true);
    }
    store.import_messages(id, &messages).await.unwrap();
    assert_eq!(store.range(id, "copied", 0, 3, 10).await.unwrap(), messages);
    // Imported messages are searchable and can be changed like others.
    let found = store
        .search(&SearchQuery {
            words: vec!["edit".into()],
            room: Some(id),
            viewer: "ann".into(),
            before: None,
            limit: 5,
        })
        .await
        .unwrap();
    assert_eq!(found.messages, [messages[1].clone()]);
    // The room keeps its rev; a reaction made after the copy comes after
    // the copied ones.
    let rooms = store.list_rooms(None, 10, None).await.unwrap();
    assert_eq!(rooms[0].rev, 5);
    let changed = store
        .change(id, 2, "dan", false, react("👍"), None)
        .await
        .unwrap();
    assert_eq!(changed.rev, 6);
    messages[1].reactions.set("👍", "dan", true);
    let now = store.range(id, "copied", 1, 2, 1).await.unwrap();
    assert_eq!(
        reactions(&now[0]),
        [("🎉", vec!["cat", "bob"]), ("👍", vec!["ann", "dan"])]
    );
    let changed = store
        .change(id, 3, "cat", false, edit("changed"), None)
        .await
        .unwrap();
    assert_eq!(changed.rev, 7);
    let last = store.append(id, "ann", "new", None).await.unwrap();
    assert_eq!(last.seq, 4);
    store.close().await;
}

#[tokio::test]
async fn the_upgrade_numbers_and_indexes_existing_messages() {
    let postgres = TestPostgres::shared();
    let url = postgres.url(&postgres.create_database());
    // A database as the previous release left it: schema version 4.
    let mut sql = String::from(
        "CREATE TABLE schema_version (version integer PRIMARY KEY, applied_at bigint NOT NULL);",
    );
    for (i, migration) in MIGRATIONS[..4].iter().enumerate() {
        sql.push_str(migration);
        sql.push_str(&format!(
            ";INSERT INTO schema_version VALUES ({}, 0);",
            i + 1
        ));
    }
    sql.push_str(
        "INSERT INTO rooms (name, last_seq, last_activity) VALUES ('a', 2, 0), ('b', 1, 0);
         INSERT INTO messages (room_id, seq, \"user\", text, ts) VALUES
             (1, 1, 'ann', 'apples early', 10),
             (1, 2, 'ann', 'apples late', 30),
             (2, 1, 'bob', 'apples between', 20);",
    );
    psql(&url, &sql);
    let (feed_tx, _feed) = mpsc::channel(COMMIT_QUEUE);
    let store = PostgresStore::open(&url, feed_tx).await.unwrap();
    assert_eq!(
        psql(
            &url,
            "SELECT string_agg(text, ',' ORDER BY gid) FROM messages"
        ),
        "apples early,apples between,apples late"
    );
    let head = store.room("a").await.unwrap().unwrap();
    assert_eq!((head.last_seq, head.rev), (2, 0));
    store
        .append(head.id, "cat", "apples newest", None)
        .await
        .unwrap();
    let found = store
        .search(&SearchQuery {
            words: vec!["appl".into()],
            room: None,
            viewer: "cat".into(),
            before: None,
            limit: 10,
        })
        .await
        .unwrap();
    let texts: Vec<&str> = found.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "apples newest",
            "apples late",
            "apples between",
            "apples early"
        ]
    );
    // The planner may use the index (it does once the table is large; here
    // it is told to when it can).
    let plan = psql(
        &url,
        &format!(
            "SET enable_seqscan = off; EXPLAIN SELECT 1 FROM messages m
              WHERE {} @@ to_tsquery('simple', 'appl:*') AND NOT m.deleted",
            search_document!()
        ),
    );
    assert!(plan.contains("messages_search"), "{plan}");
    store.close().await;
}

#[tokio::test]
async fn the_rare_word_plan_finds_what_the_usual_one_does() {
    let (store, _feed, _) = open_store().await;
    store.create_user("ann", "h", false).await.unwrap();
    let public = store.open_room("public").await.unwrap().id;
    let other = store.open_room("other").await.unwrap().id;
    let private = store
        .create_private_room("secret", &["ann"])
        .await
        .unwrap()
        .unwrap()
        .id;
    let rooms = [public, other, private];
    for n in 0..90u64 {
        let mut text = String::from("the common words");
        if n % 7 == 0 {
            text.push_str(" rarely");
        }
        if n % 3 == 0 {
            text.push_str(" thematic");
        }
        store
            .append(rooms[n as usize % 3], "ann", &text, None)
            .await
            .unwrap();
    }
    // Deleted messages never match, whichever plan.
    store
        .change(public, 1, "ann", false, Change::Delete, None)
        .await
        .unwrap();
    let conn = store.pool.get().await.unwrap();
    let usual = conn.prepare(SEARCH).await.unwrap();
    let rare = conn.prepare(SEARCH_RARE).await.unwrap();
    let gids = |rows: Vec<Row>| rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>();
    for (words, room, viewer, before) in [
        (&["the", "rar"][..], None, "ann", i64::MAX),
        (&["th", "rarely"][..], None, "bob", i64::MAX),
        (
            &["com", "the", "rarely"][..],
            Some(public.0),
            "ann",
            i64::MAX,
        ),
        (&["them", "rarely"][..], None, "ann", 60),
        (&["words", "nothing"][..], None, "ann", i64::MAX),
    ] {
        let words: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
        let terms = tsquery(&words);
        let limit = 5i64;
        let expected = gids(
            conn.query(&usual, &[&terms, &before, &room, &viewer, &limit])
                .await
                .unwrap(),
        );
        for word in &words {
            let one = tsquery(std::slice::from_ref(word));
            let found = gids(
                conn.query(&rare, &[&terms, &before, &room, &viewer, &limit, &one])
                    .await
                    .unwrap(),
            );
            assert_eq!(found, expected, "{words:?} read by {word}");
        }
    }
    drop(conn);
    store.close().await;
}
