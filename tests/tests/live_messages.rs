//! End-to-end tests of messages that live (protocol part 2) on each store
//! backend: replies, edits, deletions and reactions as answered, as history
//! and resume give them back, and search. They check what the two stores
//! must agree on through the real server; the stores' own tests cover the
//! details.

use chat_e2e::*;
use serde_json::{json, Value};

// Each runs as `sqlite::NAME` and `postgres::NAME`.
backend_tests! {
    changes_are_answered_kept_in_history_and_resumed,
    search_finds_word_prefixes_in_readable_rooms_only,
}

/// Waits for the next event of type `kind`, skipping others.
async fn next_of(client: &mut Client, kind: &str) -> Value {
    loop {
        let event = client.recv().await;
        if event["type"] == kind {
            return event;
        }
    }
}

async fn changes_are_answered_kept_in_history_and_resumed(backend: Backend) {
    let server = TestServer::with_users(backend, Options::unlimited());
    let url = server.url();
    let mut alice = Client::login(&url, "alice", PASSWORD).await;
    let mut bob = Client::login(&url, "bob", PASSWORD).await;
    // Root only watches (a client's requests skip the events before
    // their answer).
    let mut root = Client::login(&url, "root", PASSWORD).await;
    root.join("talk", None).await;
    alice.join("talk", None).await;
    bob.join("talk", None).await;
    alice.say("talk", "one").await;
    alice.say("talk", "two, soon gone").await;
    let reply = bob
        .request(json!({"type":"send","room":"talk","text":"about one","reply_to":1}))
        .await;
    assert_eq!(
        (reply["type"].as_str(), reply["seq"].as_u64()),
        (Some("ack"), Some(3)),
        "{reply}"
    );
    let nowhere = bob
        .request(json!({"type":"send","room":"talk","text":"?","reply_to":9}))
        .await;
    assert_eq!(nowhere["type"], "error", "{nowhere}");

    let edited = alice
        .request(json!({"type":"edit","room":"talk","seq":1,"text":"one, edited"}))
        .await;
    assert_eq!(
        (edited["type"].as_str(), edited["rev"].as_u64()),
        (Some("edited"), Some(1)),
        "{edited}"
    );
    let refused = bob
        .request(json!({"type":"edit","room":"talk","seq":1,"text":"mine now"}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let reacted = bob
        .request(json!({"type":"react","room":"talk","seq":1,"emoji":"👍"}))
        .await;
    assert_eq!(
        (reacted["type"].as_str(), reacted["on"].as_bool()),
        (Some("reaction"), Some(true)),
        "{reacted}"
    );
    assert_eq!(reacted["rev"], 2, "{reacted}");
    let deleted = alice
        .request(json!({"type":"delete","room":"talk","seq":2}))
        .await;
    assert_eq!(
        (deleted["type"].as_str(), deleted["rev"].as_u64()),
        (Some("deleted"), Some(3)),
        "{deleted}"
    );
    let again = alice
        .request(json!({"type":"react","room":"talk","seq":2,"emoji":"👍"}))
        .await;
    assert_eq!(again["type"], "error", "{again}");
    // The watcher saw every change live, in order.
    assert_eq!(next_of(&mut root, "edited").await["rev"], 1);
    let reaction = next_of(&mut root, "reaction").await;
    assert_eq!(
        (reaction["rev"].as_u64(), reaction["user"].as_str()),
        (Some(2), Some("bob"))
    );
    assert_eq!(next_of(&mut root, "deleted").await["rev"], 3);

    // History gives every message as it is now.
    let history = bob.request(json!({"type":"history","room":"talk"})).await;
    let messages = history["messages"].as_array().expect("messages").clone();
    assert_eq!(seqs(&messages), [1, 2, 3], "{history}");
    assert_eq!(messages[0]["text"], "one, edited");
    assert!(messages[0]["edited_ts"].is_i64(), "{}", messages[0]);
    assert_eq!(messages[0]["reactions"], json!({"👍":["bob"]}));
    assert_eq!(messages[1]["deleted"], true);
    assert_eq!(messages[1]["text"], "");
    assert_eq!(messages[2]["reply_to"], 1);

    // A device that had seq 2 at rev 0 resumes: message 3, and the current
    // state of the messages up to 2 that changed since, with the rev.
    let mut device = Client::login(&url, "alice", PASSWORD).await;
    let joined = device
        .request(json!({"type":"join","room":"talk","since":2,"since_rev":0}))
        .await;
    assert_eq!(
        (joined["type"].as_str(), joined["rev"].as_u64()),
        (Some("joined"), Some(3)),
        "{joined}"
    );
    let changes = next_of(&mut device, "changes").await;
    assert_eq!(changes["rev"], 3, "{changes}");
    let changed = changes["messages"].as_array().expect("messages").clone();
    assert_eq!(seqs(&changed), [1, 2], "{changes}");
    assert_eq!(changed[0]["text"], "one, edited");
    assert_eq!(changed[1]["deleted"], true);
}

async fn search_finds_word_prefixes_in_readable_rooms_only(backend: Backend) {
    let server = TestServer::with_users(backend, Options::unlimited());
    let url = server.url();
    let mut alice = Client::login(&url, "alice", PASSWORD).await;
    let mut bob = Client::login(&url, "bob", PASSWORD).await;
    alice.join("open", None).await;
    alice.say("open", "Deploying the release today").await;
    alice.say("open", "lunch?").await;
    let private = alice
        .request(json!({"type":"join","room":"hidden","private":true}))
        .await;
    assert_eq!(private["type"], "joined", "{private}");
    alice.say("hidden", "release keys").await;
    alice.say("open", "release notes at example.com").await;

    let texts = |answer: &Value| -> Vec<String> {
        answer["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| m["text"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    // Newest first; bob does not read the private room.
    let found = bob.request(json!({"type":"search","query":"REL"})).await;
    assert_eq!(found["type"], "search_results", "{found}");
    assert_eq!(
        texts(&found),
        [
            "release notes at example.com",
            "Deploying the release today"
        ]
    );
    let found = alice.request(json!({"type":"search","query":"rel"})).await;
    assert_eq!(texts(&found).len(), 3, "{found}");
    // Every word, each a prefix; pages by cursor.
    let found = alice
        .request(json!({"type":"search","query":"release exam"}))
        .await;
    assert_eq!(texts(&found), ["release notes at example.com"]);
    let first = alice
        .request(json!({"type":"search","query":"release","limit":2}))
        .await;
    assert_eq!(texts(&first).len(), 2, "{first}");
    let cursor = first["next"].as_str().expect("a next page").to_owned();
    let rest = alice
        .request(json!({"type":"search","query":"release","limit":2,"cursor":cursor}))
        .await;
    assert_eq!(texts(&rest), ["Deploying the release today"], "{rest}");
    // An edit moves the words; a deletion takes them away.
    let edited = alice
        .request(json!({"type":"edit","room":"open","seq":2,"text":"dinner!"}))
        .await;
    assert_eq!(edited["type"], "edited", "{edited}");
    let lunch = alice
        .request(json!({"type":"search","query":"lunch"}))
        .await;
    assert_eq!(texts(&lunch), Vec::<String>::new());
    let dinner = alice.request(json!({"type":"search","query":"dinn"})).await;
    assert_eq!(texts(&dinner), ["dinner!"]);
    alice
        .request(json!({"type":"delete","room":"open","seq":2}))
        .await;
    let dinner = alice
        .request(json!({"type":"search","query":"dinner"}))
        .await;
    assert_eq!(texts(&dinner), Vec::<String>::new());
}
