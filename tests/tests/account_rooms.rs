//! End-to-end tests of the account's rooms and read markers (protocol part
//! 2): `welcome.rooms`, `read`, and `leave` with `forget`, seen from several
//! devices of one user, on each store backend. The same across two cluster
//! nodes is in `cluster.rs`.

use chat_e2e::*;
use serde_json::{json, Value};

backend_tests! {
    read_markers_follow_the_account_to_every_device_and_a_restart,
    leave_with_forget_reaches_every_device,
}

/// Logs in and returns the client with its `welcome`.
async fn device(url: &str, user: &str) -> (Client, Value) {
    let mut client = Client::connect(url).await;
    let welcome = client
        .request(json!({"type":"login","user":user,"password":PASSWORD}))
        .await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (client, welcome)
}

/// Proves that nothing else reached `client` before now: the answer to a
/// ping is the next event.
async fn nothing_else_came(client: &mut Client) {
    client.send(json!({"type":"ping","id":"quiet"})).await;
    let next = client.recv().await;
    assert_eq!(
        next,
        json!({"type":"pong","re":"quiet"}),
        "unexpected event"
    );
}

async fn read_markers_follow_the_account_to_every_device_and_a_restart(backend: Backend) {
    let mut server = TestServer::with_users(backend, Options::default());
    let url = server.url();

    let (mut laptop, welcome) = device(&url, "alice").await;
    assert_eq!(welcome["rooms"], json!([]));
    laptop.join("general", None).await;
    laptop.join("random", None).await;
    for text in ["one", "two", "three"] {
        laptop.say("general", text).await;
    }

    // A second device starts with the same rooms and unread counts.
    let (mut desktop, welcome) = device(&url, "alice").await;
    assert_eq!(
        welcome["rooms"],
        json!([
            {"name":"general","last_seq":3,"read":0,"private":false},
            {"name":"random","last_seq":0,"read":0,"private":false},
        ])
    );
    // Someone else's account does not have them.
    let (_bob, welcome) = device(&url, "bob").await;
    assert_eq!(welcome["rooms"], json!([]));

    // Reading on the desktop clears the count on the laptop. `read` has no
    // answer; the desktop itself is not told.
    desktop
        .send(json!({"type":"read","room":"general","seq":2}))
        .await;
    let read = laptop.recv_type("read").await;
    assert_eq!(read, json!({"type":"read","room":"general","seq":2}));
    nothing_else_came(&mut desktop).await;

    // A marker never moves back: an older `read` is ignored.
    laptop
        .send(json!({"type":"read","room":"general","seq":1}))
        .await;
    nothing_else_came(&mut laptop).await;
    nothing_else_came(&mut desktop).await;

    // Past the newest message it is capped.
    desktop
        .send(json!({"type":"read","room":"general","seq":99}))
        .await;
    let read = laptop.recv_type("read").await;
    assert_eq!(read, json!({"type":"read","room":"general","seq":3}));

    // Bad requests are answered.
    let answer = desktop
        .request(json!({"type":"read","room":"nowhere","seq":1}))
        .await;
    assert_eq!(answer["code"], "no_such_room", "{answer}");
    let answer = desktop
        .request(json!({"type":"read","room":"bad name!","seq":1}))
        .await;
    assert_eq!(answer["code"], "invalid_name", "{answer}");
    let answer = desktop
        .request(json!({"type":"read","room":"general"}))
        .await;
    assert_eq!(answer["code"], "bad_request", "{answer}");

    // The account's rooms and markers are stored: they survive a restart.
    drop((laptop, desktop));
    server.restart();
    let (_phone, welcome) = device(&server.url(), "alice").await;
    assert_eq!(
        welcome["rooms"],
        json!([
            {"name":"general","last_seq":3,"read":3,"private":false},
            {"name":"random","last_seq":0,"read":0,"private":false},
        ])
    );
}

async fn leave_with_forget_reaches_every_device(backend: Backend) {
    let server = TestServer::with_users(backend, Options::default());
    let url = server.url();
    let (mut laptop, _) = device(&url, "alice").await;
    let (mut desktop, _) = device(&url, "alice").await;
    laptop.join("general", None).await;
    desktop.join("general", None).await;
    desktop.join("random", None).await;

    // A plain leave is part 1's: the room stays the account's.
    let left = desktop
        .request(json!({"type":"leave","room":"random","id":"p"}))
        .await;
    assert_eq!(left, json!({"type":"left","room":"random","re":"p"}));
    let (_, welcome) = device(&url, "alice").await;
    let names: Vec<&str> = welcome["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["general", "random"]);

    // Forgetting on the laptop: its answer, then `left` on the desktop,
    // which is out of the room from then on.
    let left = laptop
        .request(json!({"type":"leave","room":"general","forget":true,"id":"f"}))
        .await;
    assert_eq!(left, json!({"type":"left","room":"general","re":"f"}));
    let told = desktop.recv_type("left").await;
    assert_eq!(told, json!({"type":"left","room":"general"}));
    let answer = desktop
        .request(json!({"type":"send","room":"general","text":"still here?"}))
        .await;
    assert_eq!(answer["code"], "not_joined", "{answer}");

    // A room this connection is not in can be forgotten too.
    let left = laptop
        .request(json!({"type":"leave","room":"random","forget":true,"id":"g"}))
        .await;
    assert_eq!(left, json!({"type":"left","room":"random","re":"g"}));
    desktop.recv_type("left").await;
    let (_, welcome) = device(&url, "alice").await;
    assert_eq!(welcome["rooms"], json!([]));

    // Forgetting a room that does not exist is refused.
    let answer = laptop
        .request(json!({"type":"leave","room":"nowhere","forget":true}))
        .await;
    assert_eq!(answer["code"], "no_such_room", "{answer}");

    // Joining again makes it the account's again.
    laptop.join("general", None).await;
    let (_, welcome) = device(&url, "alice").await;
    assert_eq!(welcome["rooms"][0]["name"], "general");
}
