//! End-to-end tests of private rooms and direct conversations (protocol
//! part 2): a non-member is refused on every path (`join`, `join` with
//! `since`, `history`, `send`, `typing`, `read`, `invite`) and does not see
//! the room in `rooms`; invitations; `dm`; and what deleting a user leaves.
//! On each store backend; across two cluster nodes in `cluster.rs`.

use chat_e2e::*;
use serde_json::{json, Value};

backend_tests! {
    a_private_room_is_closed_to_non_members_on_every_path,
    direct_conversations_between_two_users,
}

async fn code(client: &mut Client, request: Value) -> Value {
    let answer = client.request(request).await;
    assert_eq!(answer["type"], "error", "{answer}");
    answer["code"].clone()
}

fn room_names(rooms: &Value) -> Vec<String> {
    rooms["rooms"]
        .as_array()
        .expect("a rooms list")
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect()
}

async fn a_private_room_is_closed_to_non_members_on_every_path(backend: Backend) {
    let server = TestServer::with_users(backend, Options::default());
    server.add_user("carol", PASSWORD, false);
    let url = server.url();
    let mut alice = Client::login(&url, "alice", PASSWORD).await;
    let mut bob = Client::login(&url, "bob", PASSWORD).await;

    let (joined, _) = {
        let joined = alice
            .request(json!({"type":"join","room":"ops","private":true}))
            .await;
        assert_eq!(joined["type"], "joined", "{joined}");
        let history = alice.recv_type("history").await;
        (joined, history)
    };
    assert_eq!(joined["members"], json!(["alice"]));
    alice.say("ops", "the secret").await;
    alice.join("general", None).await;

    // Every path is closed to a non-member, with `forbidden`.
    for request in [
        json!({"type":"join","room":"ops"}),
        json!({"type":"join","room":"ops","since":0}),
        json!({"type":"join","room":"ops","private":true}),
        json!({"type":"history","room":"ops"}),
        json!({"type":"send","room":"ops","text":"let me in"}),
        json!({"type":"typing","room":"ops","id":"t"}),
        json!({"type":"read","room":"ops","seq":1}),
        json!({"type":"invite","room":"ops","user":"carol"}),
    ] {
        assert_eq!(
            code(&mut bob, request.clone()).await,
            "forbidden",
            "{request}"
        );
    }
    // Nor is it listed to them.
    let listed = bob.request(json!({"type":"rooms"})).await;
    assert_eq!(room_names(&listed), ["general"]);
    let listed = alice.request(json!({"type":"rooms"})).await;
    assert_eq!(room_names(&listed), ["general", "ops"]);
    // Not a member of a public room is still `not_joined`.
    let answer = code(
        &mut bob,
        json!({"type":"send","room":"general","text":"hi"}),
    )
    .await;
    assert_eq!(answer, "not_joined");

    // Invitations: by a member, of an existing user, into a private room.
    assert_eq!(
        code(
            &mut alice,
            json!({"type":"invite","room":"ops","user":"nobody"})
        )
        .await,
        "no_such_user"
    );
    assert_eq!(
        code(
            &mut alice,
            json!({"type":"invite","room":"ops","user":"bad name!"})
        )
        .await,
        "invalid_name"
    );
    assert_eq!(
        code(
            &mut alice,
            json!({"type":"invite","room":"general","user":"bob"})
        )
        .await,
        "bad_request"
    );
    let invited = alice
        .request(json!({"type":"invite","room":"ops","user":"bob","id":"i"}))
        .await;
    assert_eq!(
        invited,
        json!({"type":"invited","room":"ops","user":"bob","by":"alice","re":"i"})
    );
    let told = bob.recv_type("invited").await;
    assert_eq!(
        told,
        json!({"type":"invited","room":"ops","user":"bob","by":"alice"})
    );
    // Now bob is a member: the room, its history, and his account's rooms.
    let (_, mut history) = bob.join("ops", Some(0)).await;
    if history.is_empty() {
        // Joined before the message's delivery reached the room: live.
        history = bob.messages_until("ops", 1).await;
    }
    assert_eq!(history[0]["text"], "the secret");
    let mut again = Client::connect(&url).await;
    let welcome = again
        .request(json!({"type":"login","user":"bob","password":PASSWORD}))
        .await;
    assert!(
        welcome["rooms"]
            .as_array()
            .unwrap()
            .contains(&json!({"name":"ops","last_seq":1,"read":0,"private":true})),
        "{welcome}"
    );

    // `private` on a room that exists changes nothing: general stays open.
    let mut carol = Client::login(&url, "carol", PASSWORD).await;
    let joined = carol
        .request(json!({"type":"join","room":"general","private":true}))
        .await;
    assert_eq!(joined["type"], "joined", "{joined}");

    // An admin may delete a private room without being able to read it.
    let mut root = Client::login(&url, "root", PASSWORD).await;
    assert_eq!(
        code(&mut root, json!({"type":"history","room":"ops"})).await,
        "forbidden"
    );
    let deleted = root
        .request(json!({"type":"delete_room","room":"ops"}))
        .await;
    assert_eq!(deleted["type"], "room_deleted", "{deleted}");
}

async fn direct_conversations_between_two_users(backend: Backend) {
    let server = TestServer::with_users(backend, Options::default());
    server.add_user("carol", PASSWORD, false);
    let url = server.url();
    let mut alice = Client::login(&url, "alice", PASSWORD).await;
    let mut bob = Client::login(&url, "bob", PASSWORD).await;

    // `dm` is answered as a join of the conversation's room.
    let joined = alice
        .request(json!({"type":"dm","user":"bob","id":"d"}))
        .await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["room"], "alice+bob");
    assert_eq!(joined["re"], "d");
    alice.recv_type("history").await;
    let told = bob.recv_type("invited").await;
    assert_eq!(
        told,
        json!({"type":"invited","room":"alice+bob","user":"bob","by":"alice"})
    );
    alice.say("alice+bob", "just us").await;
    // Bob's `dm` opens the same room, and so does joining it by name.
    let joined = bob.request(json!({"type":"dm","user":"alice"})).await;
    assert_eq!(joined["room"], "alice+bob", "{joined}");
    // Stored before, so in the history; unless its delivery had not reached
    // the room's members yet when bob joined: then it comes live, after.
    let history = bob.recv_type("history").await;
    let mut seen = history["messages"].as_array().cloned().unwrap_or_default();
    if seen.is_empty() {
        seen = bob.messages_until("alice+bob", 1).await;
    }
    assert_eq!(seen[0]["text"], "just us");
    alice.recv_type("presence").await;
    let ack = bob.say("alice+bob", "hi alice").await;
    let seen = alice
        .messages_until("alice+bob", ack["seq"].as_u64().unwrap())
        .await;
    assert_eq!(seen.last().unwrap()["text"], "hi alice");

    // Nobody else gets in, or can be invited in.
    let mut carol = Client::login(&url, "carol", PASSWORD).await;
    for request in [
        json!({"type":"join","room":"alice+bob"}),
        json!({"type":"history","room":"alice+bob"}),
        json!({"type":"send","room":"alice+bob","text":"hello?"}),
    ] {
        assert_eq!(
            code(&mut carol, request.clone()).await,
            "forbidden",
            "{request}"
        );
    }
    assert_eq!(
        code(
            &mut alice,
            json!({"type":"invite","room":"alice+bob","user":"carol"})
        )
        .await,
        "forbidden"
    );
    let listed = carol.request(json!({"type":"rooms"})).await;
    assert!(!room_names(&listed).contains(&"alice+bob".to_owned()));

    // Bad requests.
    assert_eq!(
        code(&mut alice, json!({"type":"dm","user":"alice"})).await,
        "bad_request"
    );
    assert_eq!(
        code(&mut alice, json!({"type":"dm","user":"nobody"})).await,
        "no_such_user"
    );
    // A conversation that was never opened is not created by `join`, and
    // a name that is no pair of users is no room name.
    assert_eq!(
        code(&mut carol, json!({"type":"join","room":"carol+dave"})).await,
        "no_such_room"
    );
    assert_eq!(
        code(&mut carol, json!({"type":"join","room":"bob+alice"})).await,
        "invalid_name"
    );

    // Deleting bob takes him out of his rooms; alice keeps the
    // conversation and its history.
    drop(bob);
    let out = run_admin(server.db(), &["userdel", "bob"], false, None);
    assert!(out.status.success(), "{}", out.stderr);
    let mut phone = Client::connect(&url).await;
    let welcome = phone
        .request(json!({"type":"login","user":"alice","password":PASSWORD}))
        .await;
    assert!(
        welcome["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "alice+bob" && r["private"] == true),
        "{welcome}"
    );
    let history = phone
        .request(json!({"type":"history","room":"alice+bob"}))
        .await;
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        2,
        "{history}"
    );
}
