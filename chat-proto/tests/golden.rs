//! Golden-JSON tests: every event's wire form, as written in the protocol
//! contract (`shared/protocol.md`, mirrored in `docs/protocol.md`).

use chat_proto::*;
use serde_json::{json, Value};

fn wire<T: serde::Serialize>(event: &T) -> Value {
    serde_json::from_str(&encode(event)).expect("encode gives JSON")
}

#[test]
fn client_events_decode_from_the_documented_json() {
    let cases: Vec<(&str, Request)> = vec![
        (
            r#"{"type":"login","user":"alice","password":"correct horse"}"#,
            Request::new(ClientEvent::Login {
                user: "alice".into(),
                password: "correct horse".into(),
            }),
        ),
        (
            r#"{"type":"register","user":"bob","password":"battery staple"}"#,
            Request::new(ClientEvent::Register {
                user: "bob".into(),
                password: "battery staple".into(),
            }),
        ),
        (
            r#"{"type":"rooms"}"#,
            Request::new(ClientEvent::Rooms {
                after: None,
                limit: None,
            }),
        ),
        (
            r#"{"type":"rooms","after":"general","limit":100}"#,
            Request::new(ClientEvent::Rooms {
                after: Some("general".into()),
                limit: Some(100),
            }),
        ),
        (
            r#"{"type":"join","room":"general"}"#,
            Request::new(ClientEvent::Join {
                room: "general".into(),
                since: None,
                since_rev: None,
                private: false,
            }),
        ),
        (
            r#"{"type":"join","room":"ops","private":true}"#,
            Request::new(ClientEvent::Join {
                room: "ops".into(),
                since: None,
                since_rev: None,
                private: true,
            }),
        ),
        (
            r#"{"type":"invite","room":"ops","user":"bob","id":"i1"}"#,
            Request::with_id(
                ClientEvent::Invite {
                    room: "ops".into(),
                    user: "bob".into(),
                },
                "i1",
            ),
        ),
        (
            r#"{"type":"dm","user":"bob"}"#,
            Request::new(ClientEvent::Dm { user: "bob".into() }),
        ),
        (
            r#"{"type":"join","room":"general","since":41}"#,
            Request::new(ClientEvent::Join {
                room: "general".into(),
                since: Some(41),
                since_rev: None,
                private: false,
            }),
        ),
        (
            r#"{"type":"leave","room":"general"}"#,
            Request::new(ClientEvent::Leave {
                room: "general".into(),
                forget: false,
            }),
        ),
        (
            r#"{"type":"leave","room":"general","forget":true,"id":"f1"}"#,
            Request::with_id(
                ClientEvent::Leave {
                    room: "general".into(),
                    forget: true,
                },
                "f1",
            ),
        ),
        (
            r#"{"type":"read","room":"general","seq":120}"#,
            Request::new(ClientEvent::Read {
                room: "general".into(),
                seq: 120,
            }),
        ),
        (
            r#"{"type":"send","room":"general","text":"hello","id":"c1"}"#,
            Request::with_id(
                ClientEvent::Send {
                    room: "general".into(),
                    text: "hello".into(),
                    reply_to: None,
                },
                "c1",
            ),
        ),
        (
            r#"{"type":"send","room":"general","text":"on it","reply_to":7,"id":"c2"}"#,
            Request::with_id(
                ClientEvent::Send {
                    room: "general".into(),
                    text: "on it".into(),
                    reply_to: Some(7),
                },
                "c2",
            ),
        ),
        (
            r#"{"type":"edit","room":"general","seq":7,"text":"deployed, finally","id":"e1"}"#,
            Request::with_id(
                ClientEvent::Edit {
                    room: "general".into(),
                    seq: 7,
                    text: "deployed, finally".into(),
                },
                "e1",
            ),
        ),
        (
            r#"{"type":"delete","room":"general","seq":8}"#,
            Request::new(ClientEvent::Delete {
                room: "general".into(),
                seq: 8,
            }),
        ),
        (
            r#"{"type":"react","room":"general","seq":7,"emoji":"👍"}"#,
            Request::new(ClientEvent::React {
                room: "general".into(),
                seq: 7,
                emoji: "👍".into(),
            }),
        ),
        (
            r#"{"type":"search","query":"deplo"}"#,
            Request::new(ClientEvent::Search {
                query: "deplo".into(),
                room: None,
                limit: None,
                cursor: None,
            }),
        ),
        (
            r#"{"type":"search","query":"deplo fri","room":"general","limit":50,"cursor":"41","id":"s2"}"#,
            Request::with_id(
                ClientEvent::Search {
                    query: "deplo fri".into(),
                    room: Some("general".into()),
                    limit: Some(50),
                    cursor: Some("41".into()),
                },
                "s2",
            ),
        ),
        (
            r#"{"type":"join","room":"general","since":41,"since_rev":9}"#,
            Request::new(ClientEvent::Join {
                room: "general".into(),
                since: Some(41),
                since_rev: Some(9),
                private: false,
            }),
        ),
        (
            r#"{"type":"history","room":"general","before":120,"limit":50}"#,
            Request::new(ClientEvent::History {
                room: "general".into(),
                before: Some(120),
                limit: Some(50),
            }),
        ),
        (
            r#"{"type":"typing","room":"general"}"#,
            Request::new(ClientEvent::Typing {
                room: "general".into(),
            }),
        ),
        (
            r#"{"type":"delete_room","room":"general"}"#,
            Request::new(ClientEvent::DeleteRoom {
                room: "general".into(),
            }),
        ),
        (
            r#"{"type":"ping","id":"p1"}"#,
            Request::with_id(ClientEvent::Ping, "p1"),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(decode_client(text).unwrap(), expected, "{text}");
        // And the client side encodes to the same JSON.
        assert_eq!(
            wire(&expected),
            serde_json::from_str::<Value>(text).unwrap()
        );
    }
}

#[test]
fn server_events_encode_to_the_documented_json() {
    let message = MessageRecord {
        room: "general".into(),
        seq: 121,
        user: "alice".into(),
        text: "hello".into(),
        ts: 1764000000000,
        ..Default::default()
    };
    let mut reactions = Reactions::default();
    reactions.set("👍", "alice", true);
    reactions.set("🎉", "carol", true);
    reactions.set("👍", "bob", true);
    let lived = MessageRecord {
        room: "general".into(),
        seq: 7,
        user: "bob".into(),
        text: "deployed, finally".into(),
        ts: 1764000000000,
        reply_to: Some(5),
        edited_ts: Some(1764000060000),
        deleted: false,
        reactions,
    };
    let deleted = MessageRecord {
        room: "general".into(),
        seq: 8,
        user: "bob".into(),
        text: String::new(),
        ts: 1764000000000,
        deleted: true,
        ..Default::default()
    };
    let cases: Vec<(ServerEvent, Value)> = vec![
        (
            ServerEvent::Edited {
                room: "general".into(),
                seq: 7,
                text: "deployed, finally".into(),
                edited_ts: 1764000060000,
                rev: 12,
                re: Some("e1".into()),
            },
            json!({"type":"edited","room":"general","seq":7,"text":"deployed, finally",
                   "edited_ts":1764000060000u64,"rev":12,"re":"e1"}),
        ),
        (
            ServerEvent::Deleted {
                room: "general".into(),
                seq: 8,
                rev: 13,
                re: None,
            },
            json!({"type":"deleted","room":"general","seq":8,"rev":13}),
        ),
        (
            ServerEvent::Reaction {
                room: "general".into(),
                seq: 7,
                user: "bob".into(),
                emoji: "👍".into(),
                on: false,
                rev: 14,
                re: None,
            },
            json!({"type":"reaction","room":"general","seq":7,"user":"bob","emoji":"👍","on":false,"rev":14}),
        ),
        (
            ServerEvent::Changes {
                room: "general".into(),
                messages: vec![lived.clone(), deleted],
                rev: 14,
            },
            json!({"type":"changes","room":"general","rev":14,"messages":[
                {"room":"general","seq":7,"user":"bob","text":"deployed, finally","ts":1764000000000u64,
                 "reply_to":5,"edited_ts":1764000060000u64,"reactions":{"👍":["alice","bob"],"🎉":["carol"]}},
                {"room":"general","seq":8,"user":"bob","text":"","ts":1764000000000u64,"deleted":true}
            ]}),
        ),
        (
            ServerEvent::SearchResults {
                query: "deplo".into(),
                messages: vec![lived],
                next: Some("41".into()),
                re: Some("s1".into()),
            },
            json!({"type":"search_results","query":"deplo","next":"41","re":"s1","messages":[
                {"room":"general","seq":7,"user":"bob","text":"deployed, finally","ts":1764000000000u64,
                 "reply_to":5,"edited_ts":1764000060000u64,"reactions":{"👍":["alice","bob"],"🎉":["carol"]}}
            ]}),
        ),
        (
            ServerEvent::SearchResults {
                query: "nothing".into(),
                messages: vec![],
                next: None,
                re: None,
            },
            json!({"type":"search_results","query":"nothing","messages":[]}),
        ),
        (
            ServerEvent::Welcome {
                user: "alice".into(),
                admin: false,
                protocol: PROTOCOL_VERSION,
                server: "chat-server 0.1.0".into(),
                features: vec!["read".into(), "rooms_paging".into()],
                rooms: vec![AccountRoom {
                    name: "general".into(),
                    last_seq: 120,
                    read: 118,
                    private: false,
                }],
                re: Some("l1".into()),
            },
            json!({"type":"welcome","user":"alice","admin":false,"protocol":1,"server":"chat-server 0.1.0",
                   "features":["read","rooms_paging"],
                   "rooms":[{"name":"general","last_seq":120,"read":118,"private":false}],"re":"l1"}),
        ),
        (
            ServerEvent::Read {
                room: "general".into(),
                seq: 120,
            },
            json!({"type":"read","room":"general","seq":120}),
        ),
        (
            ServerEvent::Invited {
                room: "ops".into(),
                user: "bob".into(),
                by: "alice".into(),
                re: Some("i1".into()),
            },
            json!({"type":"invited","room":"ops","user":"bob","by":"alice","re":"i1"}),
        ),
        (
            ServerEvent::Invited {
                room: "alice+bob".into(),
                user: "bob".into(),
                by: "alice".into(),
                re: None,
            },
            json!({"type":"invited","room":"alice+bob","user":"bob","by":"alice"}),
        ),
        (
            ServerEvent::Rooms {
                rooms: vec![RoomSummary {
                    name: "general".into(),
                    members: 3,
                    last_seq: 120,
                    last_ts: None,
                }],
                has_more: false,
                re: None,
            },
            json!({"type":"rooms","rooms":[{"name":"general","members":3,"last_seq":120}]}),
        ),
        (
            ServerEvent::Rooms {
                rooms: vec![RoomSummary {
                    name: "general".into(),
                    members: 0,
                    last_seq: 120,
                    last_ts: Some(1764000000000),
                }],
                has_more: true,
                re: Some("r".into()),
            },
            json!({"type":"rooms","rooms":[{"name":"general","members":0,"last_seq":120,"last_ts":1764000000000u64}],"has_more":true,"re":"r"}),
        ),
        (
            ServerEvent::Joined {
                room: "general".into(),
                last_seq: 120,
                members: vec!["alice".into(), "bob".into()],
                rev: 3,
                re: None,
            },
            json!({"type":"joined","room":"general","last_seq":120,"members":["alice","bob"],"rev":3}),
        ),
        (
            ServerEvent::History {
                room: "general".into(),
                messages: vec![message.clone()],
                has_more: true,
                re: None,
            },
            json!({"type":"history","room":"general","messages":[
                {"room":"general","seq":121,"user":"alice","text":"hello","ts":1764000000000u64}
            ],"has_more":true}),
        ),
        (
            ServerEvent::Message(message),
            json!({"type":"message","room":"general","seq":121,"user":"alice","text":"hello","ts":1764000000000u64}),
        ),
        (
            ServerEvent::Ack {
                re: Some("c1".into()),
                room: "general".into(),
                seq: 121,
                ts: 1764000000000,
            },
            json!({"type":"ack","re":"c1","room":"general","seq":121,"ts":1764000000000u64}),
        ),
        (
            ServerEvent::Left {
                room: "general".into(),
                re: None,
            },
            json!({"type":"left","room":"general"}),
        ),
        (
            ServerEvent::Presence {
                room: "general".into(),
                user: "bob".into(),
                state: PresenceState::Joined,
            },
            json!({"type":"presence","room":"general","user":"bob","state":"joined"}),
        ),
        (
            ServerEvent::Presence {
                room: "general".into(),
                user: "bob".into(),
                state: PresenceState::Left,
            },
            json!({"type":"presence","room":"general","user":"bob","state":"left"}),
        ),
        (
            ServerEvent::Typing {
                room: "general".into(),
                user: "bob".into(),
            },
            json!({"type":"typing","room":"general","user":"bob"}),
        ),
        (
            ServerEvent::RoomDeleted {
                room: "general".into(),
                re: None,
            },
            json!({"type":"room_deleted","room":"general"}),
        ),
        (
            ServerEvent::Pong {
                re: Some("p1".into()),
            },
            json!({"type":"pong","re":"p1"}),
        ),
        (
            ServerEvent::error(
                ErrorCode::RateLimited,
                "slow down: 20 messages per second",
                Some("c1".into()),
            ),
            json!({"type":"error","code":"rate_limited","message":"slow down: 20 messages per second","re":"c1"}),
        ),
    ];
    for (event, expected) in cases {
        assert_eq!(wire(&event), expected);
        // Clients decode what the server encodes.
        assert_eq!(decode_server(&encode(&event)).unwrap(), event);
    }
}

#[test]
fn reactions_keep_their_order_both_ways() {
    // Not alphabetical: the order of first reaction.
    let text = r#"{"type":"message","room":"r","seq":1,"user":"a","text":"t","ts":1,
                   "reactions":{"🎉":["bob"],"👍":["carol","alice"]}}"#;
    let ServerEvent::Message(m) = decode_server(text).unwrap() else {
        panic!("not a message");
    };
    assert_eq!(m.reactions.0[0].0, "🎉");
    assert_eq!(m.reactions.users("👍"), ["carol", "alice"]);
    assert!(encode(&ServerEvent::Message(m))
        .contains(r#""reactions":{"🎉":["bob"],"👍":["carol","alice"]}"#));
    let mut r = Reactions::default();
    r.set("👍", "a", true);
    r.set("👍", "a", true);
    assert_eq!(r.users("👍"), ["a"]);
    r.set("👍", "a", false);
    assert!(r.is_empty());
}

#[test]
fn a_part_1_welcome_still_decodes() {
    // From a server without part 2: no `features`, no `rooms`.
    let event = decode_server(
        r#"{"type":"welcome","user":"alice","admin":false,"protocol":1,"server":"old"}"#,
    )
    .unwrap();
    let ServerEvent::Welcome {
        features, rooms, ..
    } = event
    else {
        panic!("not a welcome: {event:?}");
    };
    assert!(features.is_empty() && rooms.is_empty());
}

#[test]
fn every_error_code_has_its_documented_name() {
    let codes = [
        (ErrorCode::BadRequest, "bad_request"),
        (ErrorCode::AuthRequired, "auth_required"),
        (ErrorCode::AuthFailed, "auth_failed"),
        (ErrorCode::RegistrationClosed, "registration_closed"),
        (ErrorCode::UserExists, "user_exists"),
        (ErrorCode::InvalidName, "invalid_name"),
        (ErrorCode::TooLarge, "too_large"),
        (ErrorCode::NotJoined, "not_joined"),
        (ErrorCode::NoSuchRoom, "no_such_room"),
        (ErrorCode::Forbidden, "forbidden"),
        (ErrorCode::RateLimited, "rate_limited"),
        (ErrorCode::Internal, "internal"),
        (ErrorCode::Busy, "busy"),
        (ErrorCode::NoSuchUser, "no_such_user"),
        (ErrorCode::NoSuchMessage, "no_such_message"),
    ];
    for (code, name) in codes {
        assert_eq!(wire(&code), json!(name));
        assert_eq!(code.as_str(), name);
    }
}

#[test]
fn bad_frames_keep_the_id_when_it_can_be_read() {
    let err = decode_client(r#"{"type":"warp","id":"x1"}"#).unwrap_err();
    assert_eq!(err.id.as_deref(), Some("x1"));
    let err = decode_client(r#"{"type":"join","room":5,"id":"x2"}"#).unwrap_err();
    assert_eq!(err.id.as_deref(), Some("x2"));
    let err = decode_client(r#"{"type":"join","id":"x3"}"#).unwrap_err();
    assert_eq!(err.id.as_deref(), Some("x3"));
    let err = decode_client("not json").unwrap_err();
    assert_eq!(err.id, None);
    assert!(err.reason.contains("malformed JSON"));
    let long = "i".repeat(65);
    let err = decode_client(&format!(r#"{{"type":"ping","id":"{long}"}}"#)).unwrap_err();
    assert_eq!(err.id, None);
    let err = decode_client(r#"{"type":"ping","id":7}"#).unwrap_err();
    assert_eq!(err.id, None);
    assert!(decode_client(r#"{"type":"join","room":"a","since":-1}"#).is_err());
    assert!(decode_client("[1,2]").is_err());
}

/// Every JSON example in the users' reference (`docs/protocol.md`) is a
/// request this crate decodes or an event it decodes, and encodes back with
/// every field of the example unchanged: the examples people copy into
/// websocat cannot drift from the protocol. (An event may show fewer fields
/// than the server sends: part 1's examples leave out part 2's. Lines with
/// `…` stand for elided parts and are skipped.)
#[test]
fn every_example_in_the_users_reference_is_valid() {
    let doc = include_str!("../../docs/protocol.md");
    let mut checked = 0;
    for line in doc.lines().map(str::trim) {
        if !line.starts_with("{\"type\"") || line.contains('…') {
            continue;
        }
        let json: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        // Some types are both a request and an event (`history`, `rooms`,
        // `typing`, `read`): either reading must keep every field.
        let readings = [
            decode_client(line).ok().map(|r| wire(&r)),
            decode_server(line).ok().map(|e| wire(&e)),
        ];
        let keeps_all = |encoded: &Value| {
            json.as_object()
                .expect("an object")
                .iter()
                .all(|(key, value)| encoded.get(key) == Some(value))
        };
        assert!(
            readings.iter().flatten().any(keeps_all),
            "{line} reads back as {readings:?}"
        );
        checked += 1;
    }
    assert!(checked >= 35, "only {checked} examples found");
}
