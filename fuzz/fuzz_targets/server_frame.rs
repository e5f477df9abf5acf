//! One client text frame through the server's request checks, without a
//! network, a store or a session.
//!
//! `chat-server` handles a frame in `Session::on_text`
//! (`chat-server/src/session/handlers.rs`), which is private and needs a
//! socket, a hub and a store; the library exposes no pure "check this
//! request" step. So this target replays, with the same `chat_proto`
//! functions and in the same order, every check `on_text` and the handlers
//! it calls make before they reach the hub:
//!
//! 1. frames over `MAX_FRAME_BYTES` never get here (tungstenite closes the
//!    connection with 1009), so they are skipped;
//! 2. `decode_client`; a refusal is answered `bad_request` with the `id` it
//!    could read;
//! 3. logged out (`account` is `None`): `login` (`is_valid_name` decides
//!    whether the store is asked), `register` (`is_valid_name`, then
//!    `is_valid_password`), anything else `auth_required`;
//! 4. logged in: a room name is checked with `is_valid_room` first; then
//!    `rooms` and `history` refuse `limit: 0` and clamp the rest, `send`
//!    applies `normalize_text` (`too_large` or `bad_request`).
//!
//! Checks: none of this panics; what would reach the hub is valid (names,
//! normalized text, limits in range); and every frame the server would send
//! back (the refusal, or the answer the hub's success would produce) encodes
//! to text that `decode_server` reads back as the same event, so a
//! hostile `id`, room or text can never produce a frame a client cannot
//! read. Both session states are tried for every frame.
//!
//! Not covered: the hub, rooms, store and fan-out behind the checks; the
//! rate limit, login throttling and failure counting; the WebSocket layer;
//! and drift, since this is a copy of the order in `on_text`: when that
//! changes, this must follow.

#![no_main]

use chat_proto::limits::{DEFAULT_PAGE, MAX_FRAME_BYTES, MAX_PAGE, MAX_ROOMS_PAGE, MAX_TEXT_BYTES};
use chat_proto::validate::{
    is_valid_id, is_valid_name, is_valid_password, is_valid_room, normalize_text, TextError,
};
use chat_proto::{
    decode_client, decode_server, encode, ClientEvent, ErrorCode, MessageRecord, Request,
    ServerEvent,
};
use libfuzzer_sys::fuzz_target;

/// A room name the hub may be given.
fn to_hub_room(room: &str) {
    assert!(is_valid_room(room), "{room:?} would reach the hub");
}

/// A `limit` as the server computes it: refused at 0, else clamped.
fn page_limit(limit: Option<u64>, default: usize, max: usize) -> Result<usize, ()> {
    match limit {
        None => Ok(default),
        Some(0) => Err(()),
        Some(n) => Ok(n.min(max as u64) as usize),
    }
}

/// The server's frames that answer `frame`, as `on_text` would send them
/// when the hub and store say yes.
fn answers(frame: &str, logged_in: bool) -> Vec<ServerEvent> {
    let error = |code, message: &str, re: &Option<String>| {
        vec![ServerEvent::error(code, message, re.clone())]
    };
    let Request { id, event } = match decode_client(frame) {
        Ok(request) => request,
        Err(err) => return error(ErrorCode::BadRequest, &err.reason, &err.id),
    };
    if let Some(id) = &id {
        assert!(is_valid_id(id));
    }
    if !logged_in {
        return match event {
            ClientEvent::Login { user, .. } => {
                // The store is asked only for a valid name; the answer is
                // auth_failed, or a welcome that carries the name back.
                let mut out = error(ErrorCode::AuthFailed, "wrong user or password", &id);
                if is_valid_name(&user) {
                    out.push(welcome(user, &id));
                }
                out
            }
            ClientEvent::Register { user, password } => {
                if !is_valid_name(&user) {
                    return error(ErrorCode::InvalidName, "user names are ...", &id);
                }
                if !is_valid_password(&password) {
                    return error(ErrorCode::BadRequest, "passwords are ...", &id);
                }
                let taken = format!("the name {user} is taken");
                vec![
                    welcome(user, &id),
                    ServerEvent::error(ErrorCode::UserExists, taken, id),
                ]
            }
            _ => error(ErrorCode::AuthRequired, "log in first", &id),
        };
    }
    let room = match &event {
        ClientEvent::Join { room, .. }
        | ClientEvent::Leave { room, .. }
        | ClientEvent::Read { room, .. }
        | ClientEvent::Send { room, .. }
        | ClientEvent::History { room, .. }
        | ClientEvent::Typing { room }
        | ClientEvent::DeleteRoom { room } => Some(room),
        _ => None,
    };
    if room.is_some_and(|room| !is_valid_room(room)) {
        return error(ErrorCode::InvalidName, "room names are ...", &id);
    }
    match event {
        ClientEvent::Login { .. } | ClientEvent::Register { .. } => {
            error(ErrorCode::BadRequest, "already logged in", &id)
        }
        // `after` goes to the store as a bound, unchecked: any string.
        ClientEvent::Rooms { after: _, limit } => {
            let Ok(limit) = page_limit(limit, MAX_ROOMS_PAGE, MAX_ROOMS_PAGE) else {
                return error(ErrorCode::BadRequest, "limit must be at least 1", &id);
            };
            assert!((1..=MAX_ROOMS_PAGE).contains(&limit));
            vec![ServerEvent::Rooms {
                rooms: Vec::new(),
                has_more: false,
                re: id,
            }]
        }
        ClientEvent::Join { room, since, .. } => {
            to_hub_room(&room);
            let last_seq = since.unwrap_or(0);
            vec![
                ServerEvent::Joined {
                    room: room.clone(),
                    last_seq,
                    members: vec![room.clone()],
                    re: id.clone(),
                },
                ServerEvent::error(ErrorCode::Forbidden, format!("{room} is full"), id),
            ]
        }
        ClientEvent::Leave { room, .. } => {
            to_hub_room(&room);
            vec![ServerEvent::Left { room, re: id }]
        }
        ClientEvent::Read { room, seq } => {
            to_hub_room(&room);
            vec![ServerEvent::Read { room, seq }]
        }
        ClientEvent::Send { room, text } => {
            to_hub_room(&room);
            let not_joined = format!("join {room} before sending to it");
            let mut out = vec![ServerEvent::error(
                ErrorCode::NotJoined,
                not_joined,
                id.clone(),
            )];
            let text = match normalize_text(&text) {
                Ok(text) => text,
                Err(err) => {
                    let code = match err {
                        TextError::TooLarge(_) => ErrorCode::TooLarge,
                        _ => ErrorCode::BadRequest,
                    };
                    out.push(ServerEvent::error(code, err.to_string(), id));
                    return out;
                }
            };
            assert!(!text.is_empty() && text.len() <= MAX_TEXT_BYTES);
            assert!(!text.contains(|c: char| c.is_control() && c != '\n' && c != '\t'));
            // What the sender gets back, and what every member receives.
            out.push(ServerEvent::Ack {
                re: id,
                room: room.clone(),
                seq: 1,
                ts: 0,
            });
            out.push(ServerEvent::Message(MessageRecord {
                room,
                seq: 1,
                user: "alice".into(),
                text,
                ts: 0,
            }));
            out
        }
        ClientEvent::History {
            room,
            before: _,
            limit,
        } => {
            to_hub_room(&room);
            let Ok(limit) = page_limit(limit, DEFAULT_PAGE, MAX_PAGE) else {
                return error(ErrorCode::BadRequest, "limit must be at least 1", &id);
            };
            assert!((1..=MAX_PAGE).contains(&limit));
            vec![ServerEvent::History {
                room,
                messages: Vec::new(),
                has_more: false,
                re: id,
            }]
        }
        ClientEvent::Typing { room } => {
            to_hub_room(&room);
            vec![ServerEvent::error(
                ErrorCode::NotJoined,
                format!("join {room} first"),
                id,
            )]
        }
        ClientEvent::DeleteRoom { room } => {
            to_hub_room(&room);
            vec![ServerEvent::RoomDeleted { room, re: id }]
        }
        ClientEvent::Invite { room, user } => {
            to_hub_room(&room);
            vec![ServerEvent::Invited {
                room,
                user,
                by: "alice".into(),
                re: id,
            }]
        }
        ClientEvent::Dm { user } => vec![ServerEvent::Invited {
            room: chat_proto::validate::dm_room("alice", &user),
            user,
            by: "alice".into(),
            re: id,
        }],
        ClientEvent::Ping => vec![ServerEvent::Pong { re: id }],
    }
}

fn welcome(user: String, re: &Option<String>) -> ServerEvent {
    ServerEvent::Welcome {
        user,
        admin: false,
        protocol: chat_proto::PROTOCOL_VERSION,
        server: "chat-server".into(),
        features: vec!["read".into()],
        rooms: Vec::new(),
        re: re.clone(),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_FRAME_BYTES {
        return;
    }
    let Ok(frame) = std::str::from_utf8(data) else {
        // A binary frame, or text tungstenite refuses as invalid UTF-8.
        return;
    };
    for logged_in in [false, true] {
        for answer in answers(frame, logged_in) {
            let text = encode(&answer);
            match decode_server(&text) {
                Ok(read) => assert_eq!(read, answer, "{text:?} reads back differently"),
                Err(err) => panic!("the client cannot read {text:?}: {err}"),
            }
        }
    }
});
