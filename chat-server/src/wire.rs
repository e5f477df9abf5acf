//! A client's WebSocket connection after the handshake: tungstenite reads
//! frames and answers control frames, and every byte written leaves through
//! one queue of ready-made frames.
//!
//! Server frames are unmasked (RFC 6455, 5.1), so a broadcast frame's bytes
//! (header and payload) are the same for every member: a room encodes a
//! message once into a shared [`Frame`], and each member's connection queues
//! a reference to it and writes its queue with vectored writes (`writev` of
//! many frames in one syscall), without copying it into a per-member buffer.
//!
//! The invariants that keep the byte stream valid:
//!
//! - **One writer.** Only [`Connection::flush`] writes to the socket. Its
//!   queue holds whole frames in the order they must go out; a front frame
//!   written in part is advanced past what went out, never rewritten.
//! - **tungstenite never touches the socket's write side.** After the
//!   handshake, what it writes (pongs, our pings, close frames) lands in
//!   [`Wire`]'s `control` buffer, which accepts every write whole, so at the
//!   end of any tungstenite call that buffer holds whole frames only. They
//!   join the queue right after the call that wrote them, before anything
//!   else is queued, so no frame is ever cut by another.
//! - **Pongs are not left waiting.** tungstenite answers a ping from inside a
//!   read that may then return `Pending`: when it does, [`Connection::next`]
//!   queues what it wrote and writes the queue before it sleeps.
//!
//! Buffers sized for traffic exist only while there is traffic: the queue
//! is released once written, and bytes read past what tungstenite asked for
//! (it asks for little, see [`READ_CHUNK`]) are kept only until it takes
//! them.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::SinkExt;
use futures_util::Stream as _;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::Callback;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::tls::Stream;

/// A complete server WebSocket frame (header and payload), shared by every
/// connection that writes it.
pub type Frame = Bytes;

/// Bytes tungstenite reads per call: its read buffer is this small, so an
/// idle connection holds only this much of it. The socket itself is read
/// [`SOCKET_READ`] bytes at a time, so syscalls stay as few as before.
pub const READ_CHUNK: usize = 256;
/// Bytes read from the socket per syscall, into a buffer on the stack.
const SOCKET_READ: usize = 16 * 1024;
/// Frames handed to one `writev`.
const WRITE_SLICES: usize = 128;
/// A written queue keeps its allocation up to this many slots; a larger one
/// (after a burst) is released.
const KEEP_SLOTS: usize = 16;

/// Encodes `event` as JSON into one text frame, header included.
pub fn text_frame<T: Serialize>(event: &T) -> Frame {
    // The header is 2, 4 or 10 bytes depending on the payload's length,
    // unknown until the JSON is written: room for the longest is left in
    // front, and the header is written right-aligned into it.
    const ROOM: usize = 10;
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(&[0; ROOM]);
    // Serializing the protocol's types cannot fail: every map key is a
    // string and no Serialize impl of theirs returns an error.
    if serde_json::to_writer(&mut buf, event).is_err() {
        buf.truncate(ROOM);
        buf.extend_from_slice(b"{}");
    }
    let len = buf.len() - ROOM;
    let start = ROOM - header_len(len);
    write_text_header(&mut buf[start..ROOM], len);
    let mut frame = Bytes::from(buf);
    frame.advance(start);
    frame
}

/// Bytes of a frame header for a payload of `len` bytes: 2, 4 or 10.
fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=0xffff => 4,
        _ => 10,
    }
}

/// Writes a final, unmasked text frame header for a payload of `len` bytes
/// into `out`, which is [`header_len`] bytes long.
fn write_text_header(out: &mut [u8], len: usize) {
    out[0] = 0x81;
    match len {
        0..=125 => out[1] = len as u8,
        126..=0xffff => {
            out[1] = 126;
            out[2..].copy_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out[1] = 127;
            out[2..].copy_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// The text of a frame made by [`text_frame`], for tests.
#[cfg(test)]
pub fn payload(frame: &Frame) -> &str {
    let start = match frame[1] {
        0..=125 => 2,
        126 => 4,
        _ => 10,
    };
    std::str::from_utf8(&frame[start..]).expect("frames hold JSON text")
}

/// The socket as tungstenite sees it: reads come from the socket, writes
/// (after the handshake) go to `control`, for [`Connection`] to write.
pub struct Wire {
    stream: Stream,
    /// False during the handshake, whose HTTP answer tungstenite writes to
    /// the socket itself.
    upgraded: bool,
    /// Frames tungstenite wrote since the handshake, not yet queued.
    control: Vec<u8>,
    /// Bytes read from the socket that tungstenite has not taken yet, from
    /// `spill_at` on.
    spill: Vec<u8>,
    spill_at: usize,
}

impl Wire {
    /// `read` holds bytes already read from `stream` (the request head),
    /// which tungstenite reads first.
    fn new(stream: Stream, read: Vec<u8>) -> Wire {
        Wire {
            stream,
            upgraded: false,
            control: Vec::new(),
            spill: read,
            spill_at: 0,
        }
    }
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let wire = self.get_mut();
        if buf.remaining() == 0 {
            // Reading now would spill everything and report end of stream.
            return Poll::Ready(Ok(()));
        }
        if wire.spill_at < wire.spill.len() {
            let rest = &wire.spill[wire.spill_at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            wire.spill_at += n;
            if wire.spill_at == wire.spill.len() {
                wire.spill = Vec::new();
                wire.spill_at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= SOCKET_READ {
            return Pin::new(&mut wire.stream).poll_read(cx, buf);
        }
        // Read a large chunk onto the stack, hand over what fits and keep
        // the rest: an idle connection then holds no read buffer of ours,
        // and tungstenite's stays small.
        let mut chunk = [MaybeUninit::<u8>::uninit(); SOCKET_READ];
        let mut chunk = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut wire.stream).poll_read(cx, &mut chunk))?;
        let read = chunk.filled();
        let n = read.len().min(buf.remaining());
        buf.put_slice(&read[..n]);
        if n < read.len() {
            wire.spill = read[n..].to_vec();
            wire.spill_at = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let wire = self.get_mut();
        if !wire.upgraded {
            return Pin::new(&mut wire.stream).poll_write(cx, buf);
        }
        wire.control.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let wire = self.get_mut();
        if !wire.upgraded {
            return Pin::new(&mut wire.stream).poll_flush(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The socket closes when the connection is dropped, after the
        // queue was written.
        Poll::Ready(Ok(()))
    }
}

/// An upgraded WebSocket connection: tungstenite for reading, a queue of
/// frames for writing (see the module header).
pub struct Connection {
    ws: WebSocketStream<Wire>,
    /// Frames to write, in order; the front one possibly in part.
    queue: VecDeque<Frame>,
    /// The last flush left bytes below the queue (TLS takes a frame whole
    /// into its own buffer, then waits for the socket).
    flush_pending: bool,
}

impl Connection {
    /// Runs the WebSocket handshake on `stream`, whose first bytes were
    /// already read into `read`; `callback` sees the request.
    pub async fn accept<C: Callback + Unpin>(
        stream: Stream,
        read: Vec<u8>,
        callback: C,
        config: WebSocketConfig,
    ) -> Result<Connection, WsError> {
        let mut ws = tokio_tungstenite::accept_hdr_async_with_config(
            Wire::new(stream, read),
            callback,
            Some(config),
        )
        .await?;
        ws.get_mut().upgraded = true;
        Ok(Connection {
            ws,
            queue: VecDeque::new(),
            flush_pending: false,
        })
    }

    /// The next message from the peer. What is queued (the pongs
    /// tungstenite writes while reading, say) is written while waiting.
    pub async fn next(&mut self) -> Option<Result<Message, WsError>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, WsError>>> {
        let incoming = Pin::new(&mut self.ws).poll_next(cx);
        self.take_control();
        if incoming.is_ready() {
            return incoming;
        }
        if !self.queue.is_empty() || self.flush_pending {
            // Writes, or registers to be woken when the socket can take more.
            if let Poll::Ready(Err(err)) = self.poll_flush(cx) {
                return Poll::Ready(Some(Err(WsError::Io(err))));
            }
        }
        Poll::Pending
    }

    /// Queues a frame; [`Connection::flush`] writes it.
    pub fn queue(&mut self, frame: Frame) {
        self.queue.push_back(frame);
    }

    /// Queues a control message (a ping, a close) through tungstenite,
    /// which keeps the protocol's state (after a close, nothing more is
    /// sent, and the peer's close completes the handshake).
    pub async fn queue_control(&mut self, message: Message) -> Result<(), WsError> {
        // `Wire` takes every write at once: this never waits.
        let sent = self.ws.send(message).await;
        self.take_control();
        sent
    }

    /// Queues a close frame.
    pub async fn queue_close(&mut self, frame: CloseFrame) -> Result<(), WsError> {
        self.queue_control(Message::Close(Some(frame))).await
    }

    /// Has tungstenite write what it still owes (the answer to a peer's
    /// close), and queues it.
    pub async fn queue_owed(&mut self) {
        let _ = self.ws.flush().await;
        self.take_control();
    }

    /// Moves what tungstenite wrote to the end of the queue.
    fn take_control(&mut self) {
        let wire = self.ws.get_mut();
        if !wire.control.is_empty() {
            let control = std::mem::take(&mut wire.control);
            self.queue.push_back(Bytes::from(control));
        }
    }

    /// Writes the whole queue. Cancel-safe: what was written is gone from
    /// the queue, the rest is written by the next call.
    pub async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = self.poll_write_queue(cx);
        self.flush_pending = flushed.is_pending();
        flushed
    }

    fn poll_write_queue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let stream = &mut self.ws.get_mut().stream;
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let count = self.queue.len().min(WRITE_SLICES);
            for (slice, frame) in slices.iter_mut().zip(&self.queue) {
                *slice = IoSlice::new(frame);
            }
            let written = ready!(Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let mut left = written;
            while left > 0 {
                let front = &mut self.queue[0];
                if front.len() <= left {
                    left -= front.len();
                    self.queue.pop_front();
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
        }
        // TLS keeps encrypted records until flushed.
        ready!(Pin::new(stream).poll_flush(cx))?;
        if self.queue.capacity() > KEEP_SLOTS {
            self.queue = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::WebSocket;

    use super::*;

    /// What a client reads from `bytes`.
    fn read_as_client(bytes: &[u8]) -> Vec<Message> {
        let mut ws = WebSocket::from_raw_socket(Cursor::new(bytes.to_vec()), Role::Client, None);
        let mut messages = Vec::new();
        while let Ok(message) = ws.read() {
            messages.push(message);
        }
        messages
    }

    #[test]
    fn a_text_frame_reads_back_as_the_json_at_every_header_size() {
        // Payloads at each boundary of the three header forms.
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 200_000] {
            let text = "x".repeat(len);
            let frame = text_frame(&text);
            let json = serde_json::to_string(&text).unwrap();
            let header_len = match json.len() {
                0..=125 => 2,
                126..=65_535 => 4,
                _ => 10,
            };
            assert_eq!(frame.len(), header_len + json.len(), "payload {len}");
            assert_eq!(&frame[header_len..], json.as_bytes());
            assert_eq!(
                read_as_client(&frame),
                vec![Message::text(json)],
                "payload {len}"
            );
        }
    }

    #[test]
    fn frames_written_back_to_back_read_as_separate_messages() {
        let events = [
            chat_proto::ServerEvent::Pong { re: None },
            chat_proto::ServerEvent::Typing {
                room: "lobby".into(),
                user: "ann \u{1f600}".into(),
            },
        ];
        let mut stream = Vec::new();
        for event in &events {
            stream.extend_from_slice(&text_frame(event));
        }
        let read: Vec<_> = read_as_client(&stream)
            .into_iter()
            .map(|m| chat_proto::decode_server(m.to_text().unwrap()).unwrap())
            .collect();
        assert_eq!(read, events);
    }
}
