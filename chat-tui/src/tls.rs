//! Dialing the server, in clear for `ws://` and inside TLS for `wss://`,
//! and deciding whether a `wss://` server is who it claims to be.
//!
//! A certificate is trusted when it verifies against the system's
//! certificate authorities (rustls-native-certs: the OS store, so a
//! company CA installed there works too). Otherwise the client does what
//! ssh does with host keys: a certificate seen for the first time is shown
//! by its fingerprint and the user is asked once (by `main`, before the
//! screen is taken over); the answer is recorded as `HOST:PORT FINGERPRINT`
//! in `known_servers`, and a different certificate for that server later is
//! refused, loudly. `--fingerprint` pins a certificate without asking.
//!
//! Fingerprints are `SHA256:` and the unpadded base64 of the SHA-256 of the
//! certificate's DER bytes, the form chat-server's start-up banner prints.
//!
//! The verdict has to leave rustls's verifier callback, which can only say
//! "invalid certificate": the verifier writes the reason into a slot shared
//! with [`dial`], which turns it into a [`CertificateError`].

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::net::ConnectError;

/// A certificate's identity: the SHA-256 of its DER bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(certificate: &[u8]) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, certificate);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Fingerprint(bytes)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.0);
        write!(f, "SHA256:{text}")
    }
}

/// Why a fingerprint as typed was refused; the message is shown as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFingerprint(pub String);

impl fmt::Display for BadFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a certificate fingerprint: expected SHA256: and 43 base64 \
             characters, as chat-server's start-up banner prints it",
            self.0
        )
    }
}

impl std::error::Error for BadFingerprint {}

impl FromStr for Fingerprint {
    type Err = BadFingerprint;

    /// Reads `SHA256:` + base64 (the padding `=` may be there or not).
    fn from_str(text: &str) -> Result<Fingerprint, BadFingerprint> {
        let bad = || BadFingerprint(text.to_owned());
        let trimmed = text.trim();
        let (scheme, encoded) = trimmed.split_once(':').ok_or_else(bad)?;
        if !scheme.eq_ignore_ascii_case("SHA256") {
            return Err(bad());
        }
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(encoded.trim_end_matches('='))
            .map_err(|_| bad())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Fingerprint(bytes))
    }
}

/// How `wss://` certificates that no authority vouches for are trusted.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// Given with `--fingerprint`: the one certificate accepted, whoever
    /// signed it.
    pub pinned: Option<Fingerprint>,
    /// The file of servers accepted on first use (`None`: no such file;
    /// certificates no authority vouches for are then refused as unknown).
    pub known_servers: Option<PathBuf>,
}

/// Why a `wss://` server's certificate was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateError {
    /// No authority the system trusts vouches for it (`reason` says why),
    /// and it was never accepted for this server: the user may be asked.
    Unknown {
        server: String,
        fingerprint: Fingerprint,
        reason: String,
    },
    /// Another certificate was accepted for this server before.
    Changed {
        server: String,
        known: Fingerprint,
        presented: Fingerprint,
        file: PathBuf,
        line: usize,
    },
    /// Not the certificate pinned with `--fingerprint`.
    NotPinned {
        server: String,
        pinned: Fingerprint,
        presented: Fingerprint,
    },
    /// The known servers file could not be read or holds a bad line.
    KnownServers { file: PathBuf, reason: String },
}

impl fmt::Display for CertificateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertificateError::Unknown {
                server,
                fingerprint,
                reason,
            } => write!(
                f,
                "the certificate of {server} is not signed by an authority this system \
                 trusts ({reason}); its fingerprint is {fingerprint}: run chat-tui on a \
                 terminal to confirm it, or pass --fingerprint {fingerprint} once you \
                 have checked it against the server's start-up banner"
            ),
            CertificateError::Changed {
                server,
                known,
                presented,
                file,
                line,
            } => write!(
                f,
                "the certificate of {server} has changed (now {presented}, was {known} \
                 on line {line} of {}): refusing to connect",
                file.display()
            ),
            CertificateError::NotPinned {
                server,
                pinned,
                presented,
            } => write!(
                f,
                "the certificate of {server} is {presented}, not {pinned} as given with \
                 --fingerprint (or CHAT_TLS_FINGERPRINT): refusing to connect"
            ),
            CertificateError::KnownServers { file, reason } => {
                write!(f, "cannot use {}: {reason}", file.display())
            }
        }
    }
}

impl std::error::Error for CertificateError {}

impl CertificateError {
    /// The message for the terminal at start-up: a changed certificate gets
    /// several lines saying what changed, what it may mean and how to
    /// accept it if it was expected; the rest are their one line.
    pub fn loud(&self) -> String {
        match self {
            CertificateError::Changed {
                server,
                known,
                presented,
                file,
                line,
            } => {
                let file = file.display();
                format!(
                    "THE CERTIFICATE OF {server} HAS CHANGED: refusing to connect.\n\
                     \x20 known:     {known}  (line {line} of {file})\n\
                     \x20 presented: {presented}\n\
                     Someone may be intercepting the connection (and would read your \
                     password), or the server was given a new certificate.\n\
                     If the change is expected (compare the new fingerprint with the one \
                     the server printed at start-up), remove line {line} of {file} and \
                     connect again."
                )
            }
            other => other.to_string(),
        }
    }
}

/// The first line of a new known servers file.
const KNOWN_SERVERS_HEADER: &str =
    "# chat-tui: wss:// servers whose certificate you accepted, one \"HOST:PORT FINGERPRINT\" a line\n";

/// The fingerprint recorded for `server` (`HOST:PORT`) and its line number
/// (from 1), if any. A missing file records nothing.
pub fn known_fingerprint(
    file: &Path,
    server: &str,
) -> Result<Option<(Fingerprint, usize)>, CertificateError> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(CertificateError::KnownServers {
                file: file.to_owned(),
                reason: err.to_string(),
            })
        }
    };
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        if fields.next() != Some(server) {
            continue;
        }
        let fingerprint = fields
            .next()
            .and_then(|f| f.parse::<Fingerprint>().ok())
            .ok_or_else(|| CertificateError::KnownServers {
                file: file.to_owned(),
                reason: format!(
                    "line {} is not \"HOST:PORT SHA256:…\" (fix or remove it)",
                    index + 1
                ),
            })?;
        return Ok(Some((fingerprint, index + 1)));
    }
    Ok(None)
}

/// Records `server` (`HOST:PORT`) as having `fingerprint`, at the end of
/// the known servers file (created, with its folder, if needed).
pub fn remember(file: &Path, server: &str, fingerprint: &Fingerprint) -> io::Result<()> {
    use std::io::Write;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    let mut text = String::new();
    if out.metadata()?.len() == 0 {
        text.push_str(KNOWN_SERVERS_HEADER);
    }
    text.push_str(&format!("{server} {fingerprint}\n"));
    // One write: a line is never left half written by this process.
    out.write_all(text.as_bytes())?;
    out.sync_all()
}

/// Where a URL points, as the dialer needs it.
struct Target {
    tls: bool,
    /// For the socket and for TLS: no brackets around IPv6.
    host: String,
    port: u16,
    /// `HOST:PORT` as shown and recorded (IPv6 in brackets, names in lower
    /// case).
    server: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, ConnectError> {
        let request = url
            .into_client_request()
            .map_err(|err| ConnectError::BadUrl(err.to_string()))?;
        let uri = request.uri();
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => {
                return Err(ConnectError::BadUrl(format!(
                    "{url}: not a ws:// or wss:// URL"
                )))
            }
        };
        let shown = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| ConnectError::BadUrl(format!("{url}: no host")))?
            .to_ascii_lowercase();
        let host = shown
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Target {
            tls,
            host,
            port,
            server: format!("{shown}:{port}"),
        })
    }
}

/// What the certificate of one connection attempt must be.
#[derive(Debug, Clone)]
enum Expected {
    /// This one (`--fingerprint`), whoever signed it.
    Pinned(Fingerprint),
    /// One the system's authorities vouch for, or this one, recorded on
    /// `line` of `file`.
    Known {
        fingerprint: Fingerprint,
        file: PathBuf,
        line: usize,
    },
    /// One the system's authorities vouch for.
    Vouched,
}

/// Opens the TCP connection to `url`'s server and, for `wss://`, runs the
/// TLS handshake, accepting the certificate as [`Trust`] says.
pub(crate) async fn dial(url: &str, trust: &Trust) -> Result<Stream, ConnectError> {
    let target = Target::parse(url)?;
    // Read before dialing: the verifier runs inside the handshake and does
    // no I/O of its own.
    let expected = if target.tls {
        Some(match (&trust.pinned, &trust.known_servers) {
            (Some(pinned), _) => Expected::Pinned(pinned.clone()),
            (None, Some(file)) => match known_fingerprint(file, &target.server) {
                Ok(Some((fingerprint, line))) => Expected::Known {
                    fingerprint,
                    file: file.clone(),
                    line,
                },
                Ok(None) => Expected::Vouched,
                Err(err) => return Err(ConnectError::Certificate(err)),
            },
            (None, None) => Expected::Vouched,
        })
    } else {
        None
    };
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|err| ConnectError::Unreachable(err.to_string()))?;
    // Chat frames are small and latency is what the user sees.
    let _ = tcp.set_nodelay(true);
    let Some(expected) = expected else {
        return Ok(Stream::Plain(tcp));
    };
    let name = ServerName::try_from(target.host.clone())
        .map_err(|_| ConnectError::BadUrl(format!("{url}: not a valid host name for TLS")))?;
    let verdict = Arc::new(Mutex::new(None));
    let verifier = Verifier {
        server: target.server.clone(),
        expected,
        verdict: verdict.clone(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| ConnectError::Unreachable(format!("TLS set-up failed: {err}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match connector.connect(name, tcp).await {
        Ok(stream) => Ok(Stream::Tls(Box::new(stream))),
        Err(err) => {
            let refused = verdict.lock().unwrap_or_else(|e| e.into_inner()).take();
            Err(match refused {
                Some(refused) => ConnectError::Certificate(refused),
                None => ConnectError::Unreachable(format!(
                    "TLS handshake with {} failed ({err}); is it a wss:// server?",
                    target.server
                )),
            })
        }
    }
}

/// The ring provider (no aws-lc-rs: see the workspace manifest).
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The verifier of the system's certificate authorities, loaded once per
/// process (reading the OS store takes a moment); `None` when the system
/// has none, and then only pinned or recorded certificates are accepted.
fn authorities() -> Option<Arc<WebPkiServerVerifier>> {
    static AUTHORITIES: OnceLock<Option<Arc<WebPkiServerVerifier>>> = OnceLock::new();
    AUTHORITIES
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            // Unreadable entries of the store are skipped: the rest still
            // vouch, and anything unvouched goes to the user.
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                return None;
            }
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .ok()
        })
        .clone()
}

/// Accepts a certificate as [`Expected`] says, and leaves the reason of a
/// refusal in `verdict`.
#[derive(Debug)]
struct Verifier {
    server: String,
    expected: Expected,
    verdict: Arc<Mutex<Option<CertificateError>>>,
}

impl Verifier {
    fn refuse(&self, why: CertificateError) -> Result<ServerCertVerified, rustls::Error> {
        *self.verdict.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of(end_entity.as_ref());
        if let Expected::Pinned(pinned) = &self.expected {
            return if *pinned == presented {
                Ok(ServerCertVerified::assertion())
            } else {
                self.refuse(CertificateError::NotPinned {
                    server: self.server.clone(),
                    pinned: pinned.clone(),
                    presented,
                })
            };
        }
        if let Expected::Known { fingerprint, .. } = &self.expected {
            if *fingerprint == presented {
                return Ok(ServerCertVerified::assertion());
            }
        }
        let vouched = match authorities() {
            Some(authorities) => authorities
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map_err(|err| err.to_string()),
            None => Err("this system has no certificate authorities".to_owned()),
        };
        match (vouched, &self.expected) {
            // An authority vouches for it: no need to have seen it before
            // (a server that moved from self-signed to a real certificate).
            (Ok(verified), _) => Ok(verified),
            (
                Err(_),
                Expected::Known {
                    fingerprint,
                    file,
                    line,
                },
            ) => self.refuse(CertificateError::Changed {
                server: self.server.clone(),
                known: fingerprint.clone(),
                presented,
                file: file.clone(),
                line: *line,
            }),
            (Err(reason), _) => self.refuse(CertificateError::Unknown {
                server: self.server.clone(),
                fingerprint: presented,
                reason,
            }),
        }
    }

    // The handshake signatures are checked against the certificate's key
    // whatever vouched for the certificate: that is what proves the server
    // holds the key of the fingerprint it showed.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The connection under the WebSocket: in clear or inside TLS. The TLS
/// state is boxed so that the enum stays small.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_read_and_print_alike() {
        let fingerprint = Fingerprint::of(b"a certificate");
        let text = fingerprint.to_string();
        assert!(
            text.starts_with("SHA256:") && text.len() == 7 + 43,
            "{text}"
        );
        assert_eq!(text.parse::<Fingerprint>(), Ok(fingerprint.clone()));
        // Padding and the case of the prefix do not matter.
        assert_eq!(
            format!("sha256:{}=", &text[7..]).parse::<Fingerprint>(),
            Ok(fingerprint)
        );
        for bad in [
            "",
            "SHA256:",
            "MD5:abc",
            "SHA256:AAAA",
            "SHA256:!!",
            "AA:BB:CC",
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn known_servers_are_looked_up_by_host_and_port() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub").join("known_servers");
        assert_eq!(known_fingerprint(&file, "h:1"), Ok(None));
        let one = Fingerprint::of(b"one");
        let two = Fingerprint::of(b"two");
        remember(&file, "h:1", &one).unwrap();
        remember(&file, "[::1]:2", &two).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with('#'), "{text}");
        assert_eq!(known_fingerprint(&file, "h:1"), Ok(Some((one, 2))));
        assert_eq!(known_fingerprint(&file, "[::1]:2"), Ok(Some((two, 3))));
        assert_eq!(known_fingerprint(&file, "h:2"), Ok(None));
        std::fs::write(&file, "h:1 garbage\n").unwrap();
        let err = known_fingerprint(&file, "h:1").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn targets() {
        let t = Target::parse("wss://Chat.LAN:9000/ws").ok().unwrap();
        assert!(t.tls);
        assert_eq!((t.host.as_str(), t.port), ("chat.lan", 9000));
        assert_eq!(t.server, "chat.lan:9000");
        let t = Target::parse("ws://[::1]:8765/ws").ok().unwrap();
        assert!(!t.tls);
        assert_eq!((t.host.as_str(), t.server.as_str()), ("::1", "[::1]:8765"));
        assert!(Target::parse("http://x/").is_err());
    }

    #[test]
    fn a_changed_certificate_says_what_and_how_to_fix() {
        let err = CertificateError::Changed {
            server: "h:1".into(),
            known: Fingerprint::of(b"old"),
            presented: Fingerprint::of(b"new"),
            file: PathBuf::from("/home/u/.config/chat-tui/known_servers"),
            line: 3,
        };
        let loud = err.loud();
        for part in [
            "HAS CHANGED",
            &Fingerprint::of(b"old").to_string(),
            &Fingerprint::of(b"new").to_string(),
            "remove line 3 of /home/u/.config/chat-tui/known_servers",
        ] {
            assert!(loud.contains(part), "{part} missing from {loud}");
        }
        assert!(!err.to_string().contains('\n'));
    }
}
