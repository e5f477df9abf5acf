//! Property tests: every request and event survives encode → decode
//! unchanged, text normalization is idempotent and never lets a control
//! character through, and no input makes the decoders panic.

use chat_proto::validate::normalize_text;
use chat_proto::{
    decode_client, decode_server, encode, ClientEvent, ErrorCode, MessageRecord, Request,
    ServerEvent,
};
use proptest::prelude::*;

/// Any string, drawn from all of Unicode (no regex strategies: the
/// dependency stays small).
fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..64).prop_map(|c| c.into_iter().collect())
}

fn id() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(
        proptest::collection::vec(any::<char>(), 0..64).prop_map(|c| c.into_iter().collect()),
    )
}

fn client_event() -> impl Strategy<Value = ClientEvent> {
    prop_oneof![
        (text(), text()).prop_map(|(user, password)| ClientEvent::Login { user, password }),
        (text(), text()).prop_map(|(user, password)| ClientEvent::Register { user, password }),
        (
            proptest::option::of(text()),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(after, limit)| ClientEvent::Rooms { after, limit }),
        (text(), proptest::option::of(any::<u64>())).prop_map(|(room, since)| ClientEvent::Join {
            room,
            since,
            private: false,
            since_rev: None,
        }),
        (text(), text()).prop_map(|(room, user)| ClientEvent::Invite { room, user }),
        text().prop_map(|user| ClientEvent::Dm { user }),
        (text(), any::<bool>()).prop_map(|(room, forget)| ClientEvent::Leave { room, forget }),
        (text(), any::<u64>()).prop_map(|(room, seq)| ClientEvent::Read { room, seq }),
        (text(), text()).prop_map(|(room, text)| ClientEvent::Send {
            room,
            text,
            reply_to: None,
        }),
        (
            text(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(room, before, limit)| ClientEvent::History {
                room,
                before,
                limit
            }),
        text().prop_map(|room| ClientEvent::Typing { room }),
        text().prop_map(|room| ClientEvent::DeleteRoom { room }),
        Just(ClientEvent::Ping),
    ]
}

fn message() -> impl Strategy<Value = MessageRecord> {
    (text(), any::<u64>(), text(), text(), any::<i64>()).prop_map(|(room, seq, user, text, ts)| {
        MessageRecord {
            room,
            seq,
            user,
            text,
            ts,
            ..Default::default()
        }
    })
}

fn server_event() -> impl Strategy<Value = ServerEvent> {
    prop_oneof![
        message().prop_map(ServerEvent::Message),
        (text(), any::<u64>(), any::<i64>(), id())
            .prop_map(|(room, seq, ts, re)| { ServerEvent::Ack { re, room, seq, ts } }),
        (
            proptest::collection::vec(message(), 0..4),
            any::<bool>(),
            text(),
            id()
        )
            .prop_map(|(messages, has_more, room, re)| ServerEvent::History {
                room,
                messages,
                has_more,
                re
            }),
        (text(), id()).prop_map(|(message, re)| ServerEvent::error(ErrorCode::Busy, message, re)),
        (text(), text()).prop_map(|(room, user)| ServerEvent::Typing { room, user }),
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(event in client_event(), id in id()) {
        let request = Request { id: id.filter(|i| i.chars().count() <= 64), event };
        prop_assert_eq!(decode_client(&encode(&request)).unwrap(), request);
    }

    #[test]
    fn events_round_trip(event in server_event()) {
        prop_assert_eq!(decode_server(&encode(&event)).unwrap(), event);
    }

    #[test]
    fn decoders_never_panic(input in text()) {
        let _ = decode_client(&input);
        let _ = decode_server(&input);
    }

    #[test]
    fn normalized_text_is_clean_and_stable(input in text()) {
        if let Ok(clean) = normalize_text(&input) {
            prop_assert!(!clean.chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
            prop_assert_eq!(normalize_text(&clean).unwrap(), clean.clone());
        }
    }
}
