//! End-to-end tests of messages that live (protocol part 2): `edit`,
//! `delete`, `react`, `send` with `reply_to`, each with its refusals; the
//! room's change counter `rev` and resume with `since_rev` at the seam;
//! `search` with its cursors; and `chat-server export` against history. On
//! each store backend; across two cluster nodes in `cluster.rs`.

use std::collections::BTreeMap;

use chat_e2e::*;
use serde_json::{json, Value};

backend_tests! {
    edits_deletions_reactions_and_replies_with_their_refusals,
    a_resume_with_since_rev_learns_every_change_once_at_the_seam,
    search_finds_prefixes_in_readable_rooms_newest_first_in_pages,
    export_writes_the_history_as_stored,
}

async fn error_code(client: &mut Client, request: Value) -> String {
    let answer = client.request(request.clone()).await;
    assert_eq!(answer["type"], "error", "{request} -> {answer}");
    answer["code"].as_str().unwrap_or_default().to_owned()
}

/// The next event of one of the change types.
async fn next_change(client: &mut Client) -> Value {
    loop {
        let event = client.recv().await;
        if ["edited", "deleted", "reaction"].contains(&event["type"].as_str().unwrap_or("")) {
            return event;
        }
    }
}

async fn history(client: &mut Client, room: &str) -> Vec<Value> {
    let page = client
        .request(json!({"type":"history","room":room,"limit":200}))
        .await;
    assert_eq!(page["type"], "history", "{page}");
    page["messages"].as_array().cloned().unwrap_or_default()
}

async fn edits_deletions_reactions_and_replies_with_their_refusals(backend: Backend) {
    let server = TestServer::with_users(backend, Options::unlimited());
    let url = server.url();
    let mut alice = Client::login(&url, "alice", PASSWORD).await;
    let mut bob = Client::login(&url, "bob", PASSWORD).await;
    let (joined, _) = alice.join("general", None).await;
    assert_eq!(joined["rev"], 0, "{joined}");
    bob.join("general", None).await;
    alice.say("general", "deploy at noon").await;
    bob.say("general", "ok").await;

    // An edit: the author's copy is the answer; every member gets it.
    let edited = alice
        .request(
            json!({"type":"edit","room":"general","seq":1,"text":"deploy at one\r\n","id":"e1"}),
        )
        .await;
    assert_eq!(edited["type"], "edited", "{edited}");
    assert_eq!(edited["text"], "deploy at one");
    assert_eq!(edited["rev"], 1);
    assert!(edited["edited_ts"].as_i64().unwrap() > 0);
    let seen = next_change(&mut bob).await;
    assert_eq!(seen["type"], "edited");
    assert!(seen.get("re").is_none(), "{seen}");
    assert_eq!(
        (seen["seq"].clone(), seen["rev"].clone()),
        (json!(1), json!(1))
    );

    // A reply, and a reaction toggled on, then off, then on again.
    let ack = bob
        .request(json!({"type":"send","room":"general","text":"noted","reply_to":1}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let reply = alice
        .recv_matching(std::time::Duration::from_secs(10), |e| {
            e["type"] == "message" && e["seq"] == 3
        })
        .await;
    assert_eq!(reply["reply_to"], 1, "{reply}");
    for (who, emoji, on, rev) in [
        ("bob", "👍", true, 2),
        ("alice", "🎉", true, 3),
        ("alice", "👍", true, 4),
        ("bob", "👍", false, 5),
        ("bob", "👍", true, 6),
    ] {
        let client = if who == "bob" { &mut bob } else { &mut alice };
        let answer = client
            .request(json!({"type":"react","room":"general","seq":1,"emoji":emoji}))
            .await;
        assert_eq!(answer["type"], "reaction", "{answer}");
        assert_eq!(
            (
                answer["user"].as_str(),
                answer["on"].as_bool(),
                answer["rev"].as_u64()
            ),
            (Some(who), Some(on), Some(rev)),
            "{answer}"
        );
    }
    let messages = history(&mut alice, "general").await;
    assert_eq!(messages[0]["text"], "deploy at one");
    assert!(messages[0]["edited_ts"].is_i64());
    // Users in the order they reacted; emoji in the order of their first.
    assert_eq!(
        messages[0]["reactions"].to_string(),
        json!({"👍":["alice","bob"],"🎉":["alice"]}).to_string()
    );
    assert_eq!(messages[2]["reply_to"], 1);
    assert!(messages[1].get("reactions").is_none() && messages[1].get("deleted").is_none());

    // Refusals.
    let edit = |seq: u64| json!({"type":"edit","room":"general","seq":seq,"text":"x"});
    assert_eq!(
        error_code(&mut bob, edit(1)).await,
        "forbidden",
        "not the author"
    );
    assert_eq!(error_code(&mut alice, edit(99)).await, "no_such_message");
    assert_eq!(
        error_code(&mut bob, json!({"type":"delete","room":"general","seq":1})).await,
        "forbidden"
    );
    assert_eq!(
        error_code(
            &mut bob,
            json!({"type":"send","room":"general","text":"?","reply_to":42})
        )
        .await,
        "no_such_message"
    );
    for emoji in ["", "a b", "\u{1b}[2J", &"x".repeat(33)] {
        assert_eq!(
            error_code(
                &mut bob,
                json!({"type":"react","room":"general","seq":1,"emoji":emoji})
            )
            .await,
            "bad_request"
        );
    }
    assert_eq!(
        error_code(
            &mut alice,
            json!({"type":"edit","room":"general","seq":1,"text":" \n"})
        )
        .await,
        "bad_request"
    );
    assert_eq!(
        error_code(
            &mut alice,
            json!({"type":"edit","room":"random","seq":1,"text":"x"})
        )
        .await,
        "not_joined"
    );

    // The author deletes; the text is gone, the seq stays.
    let deleted = alice
        .request(json!({"type":"delete","room":"general","seq":1}))
        .await;
    assert_eq!(deleted["type"], "deleted", "{deleted}");
    assert_eq!(deleted["rev"], 7);
    for request in [
        edit(1),
        json!({"type":"delete","room":"general","seq":1}),
        json!({"type":"react","room":"general","seq":1,"emoji":"👍"}),
        json!({"type":"send","room":"general","text":"re","reply_to":1}),
    ] {
        assert_eq!(
            error_code(&mut alice, request).await,
            "no_such_message",
            "on a deleted message"
        );
    }
    let messages = history(&mut bob, "general").await;
    assert_eq!(
        (
            messages[0]["seq"].clone(),
            messages[0]["text"].clone(),
            messages[0]["deleted"].clone()
        ),
        (json!(1), json!(""), json!(true))
    );
    assert!(messages[0].get("reactions").is_none(), "{}", messages[0]);

    // An admin may delete anyone's message; nobody else may.
    let mut root = Client::login(&url, "root", PASSWORD).await;
    root.join("general", None).await;
    let gone = root
        .request(json!({"type":"delete","room":"general","seq":2}))
        .await;
    assert_eq!(
        (gone["type"].clone(), gone["rev"].clone()),
        (json!("deleted"), json!(8))
    );

    // A private room: a non-member is refused whatever they ask.
    alice
        .request(json!({"type":"join","room":"ops","private":true}))
        .await;
    alice.recv_type("history").await;
    alice.say("ops", "secret").await;
    for request in [
        json!({"type":"edit","room":"ops","seq":1,"text":"x"}),
        json!({"type":"delete","room":"ops","seq":1}),
        json!({"type":"react","room":"ops","seq":1,"emoji":"👍"}),
    ] {
        assert_eq!(error_code(&mut bob, request).await, "forbidden");
    }
    // A rejoin says where the room's changes stand.
    let (joined, _) = bob.join("general", None).await;
    assert_eq!(joined["rev"], 8, "{joined}");
}

/// A client's view of a room: each message's state by seq.
type View = BTreeMap<u64, Value>;

fn apply(view: &mut View, event: &Value) {
    let seq = event["seq"].as_u64().unwrap();
    let Some(message) = view.get_mut(&seq) else {
        return;
    };
    match event["type"].as_str().unwrap() {
        "edited" => {
            message["text"] = event["text"].clone();
            message["edited_ts"] = event["edited_ts"].clone();
        }
        "deleted" => {
            message["text"] = json!("");
            message["deleted"] = json!(true);
            message.as_object_mut().unwrap().remove("reactions");
        }
        "reaction" => {
            let emoji = event["emoji"].as_str().unwrap();
            let user = event["user"].clone();
            let reactions = message
                .as_object_mut()
                .unwrap()
                .entry("reactions")
                .or_insert(json!({}));
            let users = reactions
                .as_object_mut()
                .unwrap()
                .entry(emoji)
                .or_insert(json!([]));
            let list = users.as_array_mut().unwrap();
            list.retain(|u| *u != user);
            if event["on"] == true {
                list.push(user);
            }
            if list.is_empty() {
                reactions.as_object_mut().unwrap().remove(emoji);
            }
            if reactions.as_object().unwrap().is_empty() {
                message.as_object_mut().unwrap().remove("reactions");
            }
        }
        other => panic!("not a change: {other}"),
    }
}

async fn a_resume_with_since_rev_learns_every_change_once_at_the_seam(backend: Backend) {
    let server = TestServer::with_users(backend, Options::unlimited());
    let url = server.url();
    let mut alice = Client::login(&url, "alice", PASSWORD).await;
    let mut bob = Client::login(&url, "bob", PASSWORD).await;
    alice.join("team", None).await;
    bob.join("team", None).await;
    for i in 1..=20 {
        bob.say("team", &format!("line {i}")).await;
    }
    for seq in [3, 4] {
        bob.request(json!({"type":"edit","room":"team","seq":seq,"text":"early edit"}))
            .await;
    }
    // Alice holds everything up to here, then goes away.
    let (joined, messages) = alice.join("team", Some(0)).await;
    let since_rev = joined["rev"].as_u64().unwrap();
    assert_eq!(since_rev, 2);
    let mut view: View = messages
        .into_iter()
        .map(|m| (m["seq"].as_u64().unwrap(), m))
        .collect();
    drop(alice);

    // While she is away, and while she rejoins, bob keeps changing old
    // messages (and sending new ones).
    for seq in 1..=5 {
        bob.request(json!({"type":"react","room":"team","seq":seq,"emoji":"👀"}))
            .await;
    }
    let changer = tokio::spawn({
        let url = url.clone();
        async move {
            let mut bob = Client::login(&url, "bob", PASSWORD).await;
            bob.join("team", None).await;
            let mut last_rev = 0;
            for round in 0..30u64 {
                let seq = 1 + round % 20;
                let answer = if round % 3 == 0 {
                    bob.request(json!({"type":"edit","room":"team","seq":seq,"text":format!("edit {round}")}))
                        .await
                } else {
                    bob.request(json!({"type":"react","room":"team","seq":seq,"emoji":"🎉"}))
                        .await
                };
                last_rev = answer["rev"].as_u64().expect("a change answer");
                if round == 10 {
                    bob.say("team", "a new one").await;
                }
            }
            last_rev
        }
    });
    let mut alice = Client::login(&url, "alice", PASSWORD).await;
    let joined = alice
        .request(json!({"type":"join","room":"team","since":20,"since_rev":since_rev}))
        .await;
    assert_eq!(joined["type"], "joined", "{joined}");
    let join_rev = joined["rev"].as_u64().unwrap();
    // `changes` come before any live event, then the history backlog.
    let changes = alice.recv().await;
    assert_eq!(changes["type"], "changes", "{changes}");
    let snapshot_rev = changes["rev"].as_u64().unwrap();
    assert!(snapshot_rev >= join_rev, "{snapshot_rev} < {join_rev}");
    let changed: Vec<u64> = changes["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert!(
        changed.windows(2).all(|w| w[0] < w[1]),
        "ascending: {changed:?}"
    );
    assert!(
        changed.iter().all(|&seq| seq <= 20),
        "only messages up to since"
    );
    for m in changes["messages"].as_array().unwrap() {
        view.insert(m["seq"].as_u64().unwrap(), m.clone());
    }
    let last_rev = changer.await.unwrap();
    // Every later change arrives live, once, in rev order with no hole.
    let mut next_rev = snapshot_rev + 1;
    while next_rev <= last_rev {
        let event = alice.recv().await;
        match event["type"].as_str().unwrap() {
            "edited" | "deleted" | "reaction" => {
                assert_eq!(event["rev"].as_u64(), Some(next_rev), "{event}");
                next_rev += 1;
                apply(&mut view, &event);
            }
            "message" | "history" => {
                let new: Vec<Value> = if event["type"] == "history" {
                    event["messages"].as_array().cloned().unwrap_or_default()
                } else {
                    vec![event.clone()]
                };
                for mut m in new {
                    m.as_object_mut().unwrap().remove("type");
                    view.insert(m["seq"].as_u64().unwrap(), m);
                }
            }
            _ => {}
        }
    }
    // Her view is the stored one.
    let stored = history(&mut alice, "team").await;
    for m in stored {
        let seq = m["seq"].as_u64().unwrap();
        let mut mine = view.get(&seq).cloned().expect("every message");
        mine.as_object_mut().unwrap().remove("type");
        assert_eq!(mine, m, "message {seq}");
    }
}

async fn search_page(client: &mut Client, request: Value) -> (Vec<Value>, Option<String>) {
    let answer = client.request(request.clone()).await;
    assert_eq!(answer["type"], "search_results", "{request} -> {answer}");
    assert_eq!(answer["query"], request["query"]);
    (
        answer["messages"].as_array().cloned().unwrap_or_default(),
        answer["next"].as_str().map(str::to_owned),
    )
}

fn texts(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn search_finds_prefixes_in_readable_rooms_newest_first_in_pages(backend: Backend) {
    let server = TestServer::with_users(backend, Options::unlimited());
    let url = server.url();
    let mut alice = Client::login(&url, "alice", PASSWORD).await;
    let mut bob = Client::login(&url, "bob", PASSWORD).await;
    alice.join("general", None).await;
    alice.say("general", "We DEPLOYED the build").await; // 1
    alice.say("general", "deploying again tomorrow").await; // 2
    alice.say("general", "nothing to see").await; // 3
    alice.say("general", "redeploy is not a prefix match").await; // 4
    alice.say("general", "Déploiement fini").await; // 5
                                                    // A private room bob is not in.
    alice
        .request(json!({"type":"join","room":"ops","private":true}))
        .await;
    alice.recv_type("history").await;
    alice.say("ops", "deploy keys rotated").await;

    // Prefix, any case, newest first; rooms only as readable.
    let (found, next) = search_page(&mut bob, json!({"type":"search","query":"deplo"})).await;
    assert_eq!(
        texts(&found),
        ["deploying again tomorrow", "We DEPLOYED the build"]
    );
    assert_eq!(next, None);
    assert!(found.iter().all(|m| m["room"] == "general"));
    let (found, _) = search_page(&mut alice, json!({"type":"search","query":"DEPLO"})).await;
    assert_eq!(
        texts(&found),
        [
            "deploy keys rotated",
            "deploying again tomorrow",
            "We DEPLOYED the build"
        ]
    );
    // Every word must match.
    let (found, _) = search_page(&mut alice, json!({"type":"search","query":"deplo build"})).await;
    assert_eq!(texts(&found), ["We DEPLOYED the build"]);
    // One room; a private one is refused to a non-member.
    let (found, _) = search_page(
        &mut alice,
        json!({"type":"search","query":"deplo","room":"ops"}),
    )
    .await;
    assert_eq!(texts(&found), ["deploy keys rotated"]);
    assert_eq!(
        error_code(
            &mut bob,
            json!({"type":"search","query":"deplo","room":"ops"})
        )
        .await,
        "forbidden"
    );

    // Edited ones match their new text only; deleted ones never.
    alice
        .request(json!({"type":"edit","room":"general","seq":3,"text":"deployment notes"}))
        .await;
    alice
        .request(json!({"type":"delete","room":"general","seq":2}))
        .await;
    let (found, _) = search_page(&mut bob, json!({"type":"search","query":"deplo"})).await;
    assert_eq!(texts(&found), ["deployment notes", "We DEPLOYED the build"]);
    assert!(found[0]["edited_ts"].is_i64());
    let (found, _) = search_page(&mut bob, json!({"type":"search","query":"nothing"})).await;
    assert!(found.is_empty());
    let (found, _) = search_page(&mut bob, json!({"type":"search","query":"again"})).await;
    assert!(found.is_empty(), "a deleted message matched: {found:?}");

    // Cursor paging across three pages, no overlap, no gap.
    alice.join("busy", None).await;
    for i in 0..25 {
        alice.say("busy", &format!("status report {i}")).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut request = json!({"type":"search","query":"report","limit":10});
        if let Some(cursor) = &cursor {
            request["cursor"] = json!(cursor);
        }
        let (found, next) = search_page(&mut bob, request).await;
        pages += 1;
        seen.extend(found.iter().map(|m| m["seq"].as_u64().unwrap()));
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (1..=25).rev().collect::<Vec<u64>>());

    // Bad queries are answered.
    for request in [
        json!({"type":"search","query":"  ;; "}),
        json!({"type":"search","query":"x".repeat(513)}),
        json!({"type":"search","query":"report","cursor":"not-a-cursor"}),
        json!({"type":"search","query":"report","limit":0}),
    ] {
        assert_eq!(error_code(&mut bob, request).await, "bad_request");
    }
    assert_eq!(
        error_code(
            &mut bob,
            json!({"type":"search","query":"x","room":"nowhere"})
        )
        .await,
        "no_such_room"
    );
}

async fn export_writes_the_history_as_stored(backend: Backend) {
    let server = TestServer::with_users(backend, Options::unlimited());
    let url = server.url();
    let mut alice = Client::login(&url, "alice", PASSWORD).await;
    alice.join("big", None).await;
    // 10,000 messages, pipelined, then some changes.
    const COUNT: u64 = 10_000;
    for i in 0..COUNT {
        alice
            .send(json!({"type":"send","room":"big","text":format!("message {i}"),"id":format!("s{i}")}))
            .await;
    }
    let mut acked = 0;
    while acked < COUNT {
        let event = alice.recv().await;
        match event["type"].as_str().unwrap() {
            "ack" => acked += 1,
            "error" => panic!("{event}"),
            _ => {}
        }
    }
    alice
        .request(json!({"type":"edit","room":"big","seq":10,"text":"edited ten"}))
        .await;
    alice
        .request(json!({"type":"delete","room":"big","seq":11}))
        .await;
    alice
        .request(json!({"type":"react","room":"big","seq":12,"emoji":"👍"}))
        .await;
    alice
        .request(json!({"type":"send","room":"big","text":"answer","reply_to":10}))
        .await;

    let out = run_admin(server.db(), &["export", "big"], false, None);
    assert!(out.status.success(), "{}", out.stderr);
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len() as u64, COUNT + 1);
    // The same as history, page by page from the end.
    let mut from_history = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut request = json!({"type":"history","room":"big","limit":200});
        if let Some(before) = before {
            request["before"] = json!(before);
        }
        let page = alice.request(request).await;
        let messages = page["messages"].as_array().cloned().unwrap_or_default();
        before = messages.first().and_then(|m| m["seq"].as_u64());
        from_history.splice(0..0, messages);
        if page["has_more"] != true {
            break;
        }
    }
    assert_eq!(lines, from_history);

    let out = run_admin(
        server.db(),
        &["export", "big", "--format", "markdown"],
        false,
        None,
    );
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stdout.starts_with("# big\n\n**alice** · "));
    assert!(out.stdout.contains(" · #10 · (edited)\nedited ten\n"));
    assert!(out.stdout.contains(" · #11\n_message deleted_\n"));
    assert!(out.stdout.contains("message 11\n👍 alice\n"));
    assert!(out.stdout.contains("> ↪ #10 alice: edited ten\nanswer\n"));
    let out = run_admin(server.db(), &["export", "nowhere"], false, None);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("there is no room nowhere"),
        "{}",
        out.stderr
    );
}
