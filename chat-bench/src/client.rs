//! One benchmark client connection: connect (from a chosen 127.0.0.x source
//! address), log in or register, join a room, and read the server's events
//! cheaply.
//!
//! The load loops see hundreds of thousands of events a second, so the hot
//! path does not decode them into [`chat_proto::ServerEvent`]: [`classify`]
//! picks the few fields it needs out of the JSON text, relying on the field
//! order the server writes (pinned by chat-proto's golden tests). The slow
//! set-up steps use the real decoder.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use chat_proto::{ClientEvent, ErrorCode, Request, ServerEvent};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Password of every benchmark account.
pub const PASSWORD: &str = "bench-password";
/// Longest one set-up step (connect, login, join) may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Where to connect: the server's address and the path of its URL.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub url: String,
}

impl Target {
    /// Parses `ws://127.x.y.z:PORT/path`. Load goes only to the loopback
    /// range: anything else is refused.
    pub fn parse(url: &str) -> Result<Target> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow!("only ws:// URLs are supported: {url}"))?;
        let host_port = rest.split('/').next().unwrap_or(rest);
        let addr: SocketAddr = host_port
            .parse()
            .with_context(|| format!("{url}: expected ws://127.0.0.1:PORT/ws"))?;
        if !addr.ip().is_loopback() {
            bail!("{url}: the benchmark only sends load to loopback addresses (127.0.0.0/8)");
        }
        Ok(Target {
            addr,
            url: url.to_owned(),
        })
    }
}

/// Client-side WebSocket settings: small buffers so 10,000 connections fit.
fn config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
}

/// The loopback source address number `index` of `spread`: 127.0.0.1,
/// 127.0.0.2, … Each source has its own range of ephemeral ports, so many
/// sources allow more connections to one server port.
pub fn source_addr(index: usize, spread: usize) -> IpAddr {
    let n = (index % spread.max(1)) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + n))
}

/// Opens a WebSocket to `target` from `source`.
pub async fn connect(target: &Target, source: Option<IpAddr>, read_buffer: usize) -> Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = tokio::time::timeout(STEP_TIMEOUT, socket.connect(target.addr))
        .await
        .map_err(|_| anyhow!("connect timed out"))??;
    stream.set_nodelay(true)?;
    let (ws, _) = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio_tungstenite::client_async_with_config(
            target.url.as_str(),
            stream,
            Some(config(read_buffer)),
        ),
    )
    .await
    .map_err(|_| anyhow!("handshake timed out"))??;
    Ok(ws)
}

/// Sends one request.
pub async fn send(ws: &mut Ws, request: &Request) -> Result<()> {
    ws.send(Message::text(chat_proto::encode(request))).await?;
    Ok(())
}

/// Reads events until one satisfies `done`, bounded by [`STEP_TIMEOUT`].
pub async fn until<T>(ws: &mut Ws, mut done: impl FnMut(ServerEvent) -> Option<T>) -> Result<T> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| anyhow!("no answer within {STEP_TIMEOUT:?}"))?;
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(close))) => bail!("server closed the connection: {close:?}"),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err.into()),
            None => bail!("connection closed"),
        };
        let event = chat_proto::decode_server(&text)
            .map_err(|err| anyhow!("undecodable event {text:?}: {err}"))?;
        if let Some(value) = done(event) {
            return Ok(value);
        }
    }
}

/// Logs in as `user`; with `register`, creates the account first (and falls
/// back to logging in when it already exists). A login the server turns
/// away as `busy` (its hashing queue is full: the bench opens connections
/// faster than argon2 can admit them) is asked again a moment later, as the
/// server's message says, until [`STEP_TIMEOUT`].
pub async fn login(ws: &mut Ws, user: &str, register: bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    let mut register = register;
    let mut tries = 0;
    while tries < 2 {
        let event = if register {
            ClientEvent::Register {
                user: user.into(),
                password: PASSWORD.into(),
            }
        } else {
            ClientEvent::Login {
                user: user.into(),
                password: PASSWORD.into(),
            }
        };
        send(ws, &Request::new(event)).await?;
        let answer = until(ws, |event| match event {
            ServerEvent::Welcome { .. } => Some(Ok(())),
            ServerEvent::Error { code, message, .. } => Some(Err((code, message))),
            _ => None,
        })
        .await?;
        match answer {
            Ok(()) => return Ok(()),
            Err((ErrorCode::UserExists, _)) if register => register = false,
            // By name: the code is newer than some servers this talks to.
            Err((code, _)) if code.as_str() == "busy" => {
                if tokio::time::Instant::now() > deadline {
                    bail!("{user}: the server stayed busy for {STEP_TIMEOUT:?}");
                }
                // Jittered, so that turned-away connections do not all come
                // back at once.
                let pause = 20 + rand::random::<u64>() % 80;
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
            Err((code, message)) => bail!("{user}: login refused: {code}: {message}"),
        }
        tries += 1;
    }
    bail!("{user}: could not log in")
}

/// Joins `room`; returns its `last_seq` (live messages start after it).
pub async fn join(ws: &mut Ws, room: &str) -> Result<u64> {
    send(
        ws,
        &Request::new(ClientEvent::Join {
            room: room.into(),
            since: None,
            private: false,
            since_rev: None,
        }),
    )
    .await?;
    let last_seq = until(ws, |event| match event {
        ServerEvent::Joined { last_seq, .. } => Some(Ok(last_seq)),
        ServerEvent::Error { code, message, .. } => {
            Some(Err(anyhow!("join {room}: {code}: {message}")))
        }
        _ => None,
    })
    .await??;
    // The history that follows `joined` is not live traffic: skip it.
    until(ws, |event| {
        matches!(event, ServerEvent::History { .. }).then_some(())
    })
    .await?;
    Ok(last_seq)
}

/// The frame of a `send` whose `id` is `id`, with text `text`.
pub fn send_frame(room: &str, text: &str, id: u64) -> Message {
    // Written by hand: this runs for every message sent. Room and text are
    // made by the benchmark itself and need no escaping.
    Message::text(format!(
        r#"{{"type":"send","room":"{room}","text":"{text}","id":"{id}"}}"#
    ))
}

/// An `edit` of message `seq`, by the benchmark (no escaping needed).
pub fn edit_frame(room: &str, seq: u64, text: &str, id: u64) -> Message {
    Message::text(format!(
        r#"{{"type":"edit","room":"{room}","seq":{seq},"text":"{text}","id":"{id}"}}"#
    ))
}

/// A `react` (a toggle of 👍) on message `seq`.
pub fn react_frame(room: &str, seq: u64, id: u64) -> Message {
    Message::text(format!(
        r#"{{"type":"react","room":"{room}","seq":{seq},"emoji":"👍","id":"{id}"}}"#
    ))
}

/// What the load loops need to know about one server event.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A `message`: its `seq`, and the send time the benchmark put at the
    /// start of its text (microseconds on the benchmark's clock).
    Message {
        seq: u64,
        sent_us: Option<u64>,
    },
    /// An `ack`, or the answer to an edit or reaction: its `re` (the send
    /// time, as the benchmark chose the ids), and for an ack its `seq`.
    Ack {
        re: Option<u64>,
        seq: Option<u64>,
    },
    Error {
        code: &'a str,
        re: Option<u64>,
    },
    Other,
}

/// Picks the fields the load loops need out of a server event's JSON text.
pub fn classify(text: &str) -> Incoming<'_> {
    if text.starts_with(r#"{"type":"message""#) {
        match number_after(text, r#""seq":"#) {
            Some(seq) => Incoming::Message {
                seq,
                sent_us: number_after(text, r#""text":""#),
            },
            None => Incoming::Other,
        }
    } else if text.starts_with(r#"{"type":"ack""#) {
        Incoming::Ack {
            re: number_after(text, r#""re":""#),
            seq: number_after(text, r#""seq":"#),
        }
    } else if (text.starts_with(r#"{"type":"edited""#) || text.starts_with(r#"{"type":"reaction""#))
        && text.contains(r#""re":""#)
    {
        // The answer to this connection's own change.
        Incoming::Ack {
            re: number_after(text, r#""re":""#),
            seq: None,
        }
    } else if text.starts_with(r#"{"type":"error""#) {
        let code = string_after(text, r#""code":""#).unwrap_or("unknown");
        Incoming::Error {
            code,
            re: number_after(text, r#""re":""#),
        }
    } else {
        Incoming::Other
    }
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits = &text[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

fn string_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = text.find(key)? + key.len();
    let rest = &text[at..];
    Some(&rest[..rest.find('"')?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_proto::MessageRecord;

    #[test]
    fn classifies_what_the_server_writes() {
        let message = chat_proto::encode(&ServerEvent::Message(MessageRecord {
            room: "r-1".into(),
            seq: 42,
            user: "u".into(),
            text: "123456 xxxx".into(),
            ts: 1,
            ..Default::default()
        }));
        assert_eq!(
            classify(&message),
            Incoming::Message {
                seq: 42,
                sent_us: Some(123456)
            }
        );
        let ack = chat_proto::encode(&ServerEvent::Ack {
            re: Some("77".into()),
            room: "r".into(),
            seq: 1,
            ts: 2,
        });
        assert_eq!(
            classify(&ack),
            Incoming::Ack {
                re: Some(77),
                seq: Some(1)
            }
        );
        let answer = chat_proto::encode(&ServerEvent::Reaction {
            room: "r".into(),
            seq: 1,
            user: "u".into(),
            emoji: "👍".into(),
            on: true,
            rev: 3,
            re: Some("78".into()),
        });
        assert_eq!(
            classify(&answer),
            Incoming::Ack {
                re: Some(78),
                seq: None
            }
        );
        let error = chat_proto::encode(&ServerEvent::error(
            ErrorCode::RateLimited,
            "slow",
            Some("9".into()),
        ));
        assert_eq!(
            classify(&error),
            Incoming::Error {
                code: "rate_limited",
                re: Some(9)
            }
        );
        assert_eq!(classify(r#"{"type":"pong"}"#), Incoming::Other);
    }

    #[test]
    fn refuses_non_loopback_targets() {
        assert!(Target::parse("ws://127.0.0.1:9/ws").is_ok());
        assert!(Target::parse("ws://127.3.0.1:9/ws").is_ok());
        assert!(Target::parse("ws://10.0.0.1:9/ws").is_err());
        assert!(Target::parse("ws://example.com:9/ws").is_err());
    }

    #[test]
    fn send_frames_decode_as_requests() {
        let Message::Text(text) = send_frame("room-1", "55 abc", 55) else {
            panic!("not text");
        };
        let request = chat_proto::decode_client(&text).unwrap();
        assert_eq!(request.id.as_deref(), Some("55"));
    }
}
