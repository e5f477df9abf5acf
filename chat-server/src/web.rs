//! The browser client, served on the WebSocket port: plain HTTP requests
//! (no `Upgrade: websocket`) get the app's static files, embedded in the
//! binary at build time from `chat-server/web/`.
//!
//! A connection's first bytes are read here, one request head at a time. A
//! WebSocket upgrade hands everything read so far to tungstenite, which
//! parses the same head again (it is small) and answers the handshake; so the
//! protocol's rules for `/ws` and `/` stay tungstenite's. Anything else is
//! answered here, on a kept-alive connection, until the client stops asking,
//! goes quiet for [`IDLE`], or sends a request this server does not take.
//!
//! Only `GET` and `HEAD` of a handful of fixed paths exist: no request body
//! is ever read, no file system path is ever built from a request, and every
//! peer-controlled byte is bounded ([`MAX_HEAD`], [`MAX_REQUESTS`]).

use std::io::Write as _;
use std::sync::LazyLock;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::tls::Stream;

/// Longest request head taken (request line and headers). Browsers send
/// under 2 KiB; a longer one is refused with 431.
const MAX_HEAD: usize = 8 * 1024;
/// Requests answered on one connection before it is closed.
const MAX_REQUESTS: usize = 100;
/// A kept-alive connection that sends no request for this long is closed;
/// a request head must also arrive within it.
pub const IDLE: Duration = Duration::from_secs(10);
/// The longest a connection may spend on plain HTTP requests.
const MAX_HTTP_PHASE: Duration = Duration::from_secs(60);
/// How long, and how many bytes, a closing connection is drained for.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024;

/// The policy every page and file is served with: scripts, styles and
/// images only from this server, no inline script or style, no plugins, no
/// framing, and connections only to this origin (in CSP level 3 `'self'`
/// also matches the same host's `ws:` and `wss:`).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; object-src 'none'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file of the app.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// The body gzip-compressed, when that makes it smaller.
    gzipped: Option<Vec<u8>>,
    /// A strong validator: the content's hash.
    etag: String,
}

/// The app's files, compressed once on first use.
static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    let files: [(&str, &str, &[u8]); 4] = [
        (
            "/",
            "text/html; charset=utf-8",
            include_bytes!("../web/index.html"),
        ),
        (
            "/app.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../web/app.js"),
        ),
        (
            "/app.css",
            "text/css; charset=utf-8",
            include_bytes!("../web/app.css"),
        ),
        (
            "/icon.svg",
            "image/svg+xml",
            include_bytes!("../web/icon.svg"),
        ),
    ];
    files
        .into_iter()
        .map(|(path, content_type, body)| Asset {
            path,
            content_type,
            body,
            gzipped: gzip(body),
            etag: format!("\"{:016x}\"", fnv1a(body)),
        })
        .collect()
});

/// Compresses `body`; `None` when that would not make it smaller.
fn gzip(body: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(body).ok()?;
    let gzipped = encoder.finish().ok()?;
    (gzipped.len() < body.len()).then_some(gzipped)
}

/// FNV-1a, 64 bits: a stable hash of the embedded bytes for `ETag`s (not a
/// security boundary: the files are ours).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Total bytes of the app as a browser that accepts gzip downloads it.
pub fn compressed_size() -> usize {
    ASSETS
        .iter()
        .map(|asset| asset.gzipped.as_ref().map_or(asset.body.len(), Vec::len))
        .sum()
}

/// What became of a connection's HTTP requests.
pub enum Outcome {
    /// A WebSocket upgrade request: everything read so far (the request
    /// head, and possibly the first frames after it), for tungstenite.
    Upgrade(Vec<u8>),
    /// The web client's requests were answered and the connection is done
    /// (closed by the peer, idle, or refused).
    Done,
}

/// Answers plain HTTP requests on `stream` until one asks for a WebSocket
/// upgrade, or the connection ends. Each request head must arrive within
/// [`IDLE`].
pub async fn serve(stream: &mut Stream) -> Outcome {
    // One deadline for the whole HTTP phase too, so a client trickling
    // requests cannot hold its connection slot for `MAX_REQUESTS` × `IDLE`.
    let phase_ends = tokio::time::Instant::now() + MAX_HTTP_PHASE;
    let mut read = Vec::new();
    for served in 1..=MAX_REQUESTS {
        let wait = IDLE.min(phase_ends.saturating_duration_since(tokio::time::Instant::now()));
        let head_len = match tokio::time::timeout(wait, read_head(stream, &mut read)).await {
            Ok(Ok(Some(len))) => len,
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return Outcome::Done,
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        let answer = match request.parse(&read[..head_len]) {
            Ok(httparse::Status::Complete(_)) => {
                if is_upgrade(&request) {
                    return Outcome::Upgrade(read);
                }
                answer(&request)
            }
            Ok(httparse::Status::Partial) | Err(_) => Answer::close(400, "bad request\n"),
        };
        let mut answer = answer;
        answer.keep_alive &= served < MAX_REQUESTS;
        let head_only = request.method == Some("HEAD");
        let bytes = answer.to_bytes(head_only);
        // A client that stops reading is dropped like a silent one.
        let write = async {
            stream.write_all(&bytes).await?;
            stream.flush().await
        };
        if !matches!(tokio::time::timeout(IDLE, write).await, Ok(Ok(()))) {
            return Outcome::Done;
        }
        if !answer.keep_alive {
            break;
        }
        read.drain(..head_len);
    }
    linger(stream).await;
    Outcome::Done
}

/// Closes the connection after the last answer. What the peer still sends
/// (a body never read, the rest of an oversized head) is read and dropped
/// for a moment first: closing with unread bytes makes the kernel send a
/// reset, which can destroy the answer before the peer has read it.
async fn linger(stream: &mut Stream) {
    let _ = stream.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Reads into `read` until it holds a whole request head; its length, or
/// `None` when the peer closed first. A head longer than [`MAX_HEAD`] is an
/// error.
async fn read_head(stream: &mut Stream, read: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    loop {
        if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(end + 4));
        }
        if read.len() >= MAX_HEAD {
            let refusal = Answer::close(431, "request header too large\n").to_bytes(false);
            let _ = stream.write_all(&refusal).await;
            linger(stream).await;
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        let mut chunk = [0u8; 2048];
        let want = chunk.len().min(MAX_HEAD + 4 - read.len());
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Ok(None);
        }
        read.extend_from_slice(&chunk[..n]);
    }
}

/// The value of header `name`, when present and text.
fn header<'a>(request: &'a httparse::Request, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

/// True when `header` is a comma-separated list holding `token`, not
/// weighted `q=0` (refused, in `Accept-Encoding`).
fn lists(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| {
        v.split(',').any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|param| {
                param
                    .trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            name.eq_ignore_ascii_case(token) && !refused
        })
    })
}

/// How many times header `name` appears.
fn count(request: &httparse::Request, name: &str) -> usize {
    request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .count()
}

fn is_upgrade(request: &httparse::Request) -> bool {
    lists(header(request, "upgrade"), "websocket")
}

/// An HTTP response, built whole before it is written.
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    keep_alive: bool,
}

impl Answer {
    /// A short text answer after which the connection closes.
    fn close(status: u16, text: &str) -> Answer {
        Answer {
            status,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
            body: text.as_bytes().to_vec(),
            keep_alive: false,
        }
    }

    fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            301 => "Moved Permanently",
            304 => "Not Modified",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            _ => "Error",
        };
        let mut out = format!("HTTP/1.1 {} {reason}\r\n", self.status);
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.status != 304 {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        out.push_str("X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n");
        out.push_str(if self.keep_alive {
            "Connection: keep-alive\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        let mut bytes = out.into_bytes();
        if !head_only && self.status != 304 {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// The answer to one plain HTTP request.
fn answer(request: &httparse::Request) -> Answer {
    // HTTP/1.0 and `Connection: close` end the connection after this answer;
    // so does any request that might carry a body, which is never read.
    let has_body = header(request, "transfer-encoding").is_some()
        || header(request, "content-length").is_some_and(|v| v.trim() != "0");
    if count(request, "content-length") > 1 {
        // Which one frames the request is ambiguous: never guess.
        return Answer::close(400, "bad request: more than one Content-Length\n");
    }
    let keep_alive =
        request.version == Some(1) && !lists(header(request, "connection"), "close") && !has_body;
    let mut answer = match request.method {
        Some("GET") | Some("HEAD") => static_file(request),
        _ => {
            let mut refusal = Answer::close(405, "only GET and HEAD\n");
            refusal.headers.push(("Allow", "GET, HEAD".into()));
            refusal
        }
    };
    answer.keep_alive &= keep_alive;
    answer
}

/// `GET` of `path` (its query string ignored).
fn static_file(request: &httparse::Request) -> Answer {
    let target = request.path.unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("/");
    if path == "/chat" || path == "/chat/" {
        // The old Django app's address.
        let mut moved = Answer::close(301, "moved to /\n");
        moved.headers.push(("Location", "/".into()));
        moved.keep_alive = true;
        return moved;
    }
    let path = if path == "/index.html" { "/" } else { path };
    let Some(asset) = ASSETS.iter().find(|asset| asset.path == path) else {
        let mut missing = Answer::close(404, "not found\n");
        missing.keep_alive = true;
        return missing;
    };
    let mut headers = vec![
        ("Content-Type", asset.content_type.to_owned()),
        ("ETag", asset.etag.clone()),
        // Always revalidated: an upgraded server is picked up at the next
        // load, and an unchanged file costs a 304.
        ("Cache-Control", "no-cache".into()),
        ("Vary", "Accept-Encoding".into()),
        ("Content-Security-Policy", CSP.into()),
    ];
    if header(request, "if-none-match")
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == asset.etag))
    {
        return Answer {
            status: 304,
            headers,
            body: Vec::new(),
            keep_alive: true,
        };
    }
    let body = match &asset.gzipped {
        Some(gzipped) if lists(header(request, "accept-encoding"), "gzip") => {
            headers.push(("Content-Encoding", "gzip".into()));
            gzipped.clone()
        }
        _ => asset.body.to_vec(),
    };
    Answer {
        status: 200,
        headers,
        body,
        keep_alive: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn respond(raw: &str) -> String {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        assert!(request.parse(raw.as_bytes()).unwrap().is_complete());
        let head_only = request.method == Some("HEAD");
        String::from_utf8_lossy(&answer(&request).to_bytes(head_only)).into_owned()
    }

    #[test]
    fn the_app_is_under_100_kb_compressed() {
        let size = compressed_size();
        assert!(size < 100 * 1024, "{size} bytes");
    }

    #[test]
    fn gzip_only_when_accepted_and_304_on_a_matching_etag() {
        let plain = respond("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(plain.starts_with("HTTP/1.1 200 OK\r\n"), "{plain}");
        assert!(!plain.contains("Content-Encoding"));
        assert!(plain.contains("<!doctype html>"));
        let gzipped = respond("GET / HTTP/1.1\r\nAccept-Encoding: br, gzip;q=0.8\r\n\r\n");
        assert!(gzipped.contains("Content-Encoding: gzip\r\n"), "{gzipped}");
        let etag = &ASSETS[0].etag;
        let again = respond(&format!("GET / HTTP/1.1\r\nIf-None-Match: {etag}\r\n\r\n"));
        assert!(again.starts_with("HTTP/1.1 304 "), "{again}");
        assert!(!again.contains("Content-Length"));
    }

    #[test]
    fn old_address_redirects_and_unknown_paths_are_404() {
        let moved = respond("GET /chat HTTP/1.1\r\n\r\n");
        assert!(moved.starts_with("HTTP/1.1 301 ") && moved.contains("Location: /\r\n"));
        let missing = respond("GET /../etc/passwd HTTP/1.1\r\n\r\n");
        assert!(missing.starts_with("HTTP/1.1 404 "));
        let twice = respond("GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n");
        assert!(twice.starts_with("HTTP/1.1 400 "), "{twice}");
        let refused = respond("GET / HTTP/1.1\r\nAccept-Encoding: gzip;q=0, identity\r\n\r\n");
        assert!(!refused.contains("Content-Encoding"), "{refused}");
        let post = respond("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405 ") && post.contains("Connection: close"));
        let head = respond("HEAD /app.js HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 ") && head.ends_with("\r\n\r\n"));
    }

    #[test]
    fn every_file_has_a_strict_policy() {
        for asset in ASSETS.iter() {
            let raw = format!("GET {} HTTP/1.1\r\n\r\n", asset.path);
            let answer = respond(&raw);
            assert!(answer.contains("default-src 'self'"), "{}", asset.path);
            assert!(answer.contains(&format!("Content-Type: {}", asset.content_type)));
        }
    }
}
