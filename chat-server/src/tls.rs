//! TLS for `wss://`: the server's certificate and key (PEM files named with
//! `--tls-cert` and `--tls-key`, or a self-signed pair made on the first
//! start with `--tls-self-signed` and kept in the data folder), the rustls
//! acceptor built from them, the certificate's fingerprint for the start-up
//! banner, and [`Stream`], the one socket type a session reads and writes
//! whether or not the port speaks TLS.
//!
//! The handshake itself runs in the connection's own task (see
//! [`crate::session::serve`]), after its connection permit is taken and
//! under the handshake timeout: a slow, broken or plain-text client costs
//! only its own connection, never the accept loop.
//!
//! Fingerprints are `SHA256:` and the unpadded base64 of the SHA-256 of the
//! certificate's DER bytes, as ssh prints host keys; chat-tui shows and pins
//! the same string.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// File name of the self-signed certificate in the data folder.
pub const SELF_SIGNED_CERT: &str = "tls-cert.pem";
/// File name of its private key, next to it.
pub const SELF_SIGNED_KEY: &str = "tls-key.pem";

/// Why TLS could not be set up; each reads as one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} holds no usable PEM certificate: {reason}")]
    NoCertificate { path: PathBuf, reason: String },
    #[error("{path} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}")]
    NoKey { path: PathBuf, reason: String },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(rustls::Error),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(rcgen::Error),
}

/// The server's TLS identity, ready to accept connections. Cheap to clone:
/// the rustls configuration is shared.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    /// Of the end-entity certificate, for the banner.
    fingerprint: String,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// A self-signed identity and whether this start made it.
pub struct SelfSigned {
    pub tls: Tls,
    /// True when the pair was generated now (first start), false when it
    /// was read back from the data folder.
    pub created: bool,
    /// Where the certificate is kept.
    pub cert_path: PathBuf,
}

impl Tls {
    /// Reads a PEM certificate chain (end-entity first) and its PEM private
    /// key, as a certificate authority or `certbot` issues them.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        Tls::from_pem(cert, &cert_pem, key, &key_pem)
    }

    fn from_pem(
        cert_path: &Path,
        cert_pem: &[u8],
        key_path: &Path,
        key_pem: &[u8],
    ) -> Result<Tls, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| TlsError::NoCertificate {
                path: cert_path.to_owned(),
                reason: err.to_string(),
            })?;
        let Some(end_entity) = chain.first() else {
            return Err(TlsError::NoCertificate {
                path: cert_path.to_owned(),
                reason: "no CERTIFICATE section".into(),
            });
        };
        let fingerprint = fingerprint(end_entity);
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|err| TlsError::NoKey {
            path: key_path.to_owned(),
            reason: err.to_string(),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            // Also checks that the key belongs to the certificate.
            .with_single_cert(chain, key)
            .map_err(TlsError::Config)?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            fingerprint,
        })
    }

    /// The self-signed pair kept in `dir`, made (for this machine's names
    /// and addresses) when it is not there yet. Reusing it across restarts
    /// keeps the fingerprint that clients recorded on first use.
    pub fn self_signed(dir: &Path) -> Result<SelfSigned, TlsError> {
        let cert_path = dir.join(SELF_SIGNED_CERT);
        let key_path = dir.join(SELF_SIGNED_KEY);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                // The key is a secret; the certificate is not, but both are
                // kept private, as they were written.
                make_private(&key_path)?;
                make_private(&cert_path)?;
                let tls = Tls::from_pem_files(&cert_path, &key_path)?;
                return Ok(SelfSigned {
                    tls,
                    created: false,
                    cert_path,
                });
            }
            (false, false) => {}
            // A start interrupted between the two writes: the half left
            // alone is useless, so the pair is made again (and clients that
            // saw none of it have nothing to compare).
            _ => tracing::warn!(
                dir = %dir.display(),
                "only half of the self-signed certificate pair was found: making a new pair"
            ),
        }
        let names = machine_names();
        let key = rcgen::KeyPair::generate().map_err(TlsError::Generate)?;
        let mut params = rcgen::CertificateParams::new(names).map_err(TlsError::Generate)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "chat-server (self-signed)");
        let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        create_private_dir(dir)?;
        // The key first: a start cut short after it finds half a pair and
        // makes a new one, never a certificate without its key.
        write_private(&key_path, key_pem.as_bytes())?;
        write_private(&cert_path, cert_pem.as_bytes())?;
        let tls = Tls::from_pem(
            &cert_path,
            cert_pem.as_bytes(),
            &key_path,
            key_pem.as_bytes(),
        )?;
        Ok(SelfSigned {
            tls,
            created: true,
            cert_path,
        })
    }

    /// `SHA256:…` of the certificate clients are shown.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Runs the server side of the TLS handshake on an accepted connection.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<Stream> {
        let stream = self.acceptor.accept(stream).await?;
        Ok(Stream::Tls(Box::new(stream)))
    }
}

/// `SHA256:` and the unpadded base64 of the SHA-256 of a certificate's DER.
pub fn fingerprint(certificate: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, certificate);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest.as_ref())
    )
}

/// The names a self-signed certificate is made for: localhost, the
/// machine's host name, and every address of its interfaces (loopback
/// included). Clients that pin the fingerprint do not check names, but
/// tools that show the certificate (a browser, `openssl s_client`) do.
fn machine_names() -> Vec<String> {
    let mut names = vec!["localhost".to_owned()];
    if let Some(host) = host_name() {
        names.push(host);
    }
    names.push("127.0.0.1".into());
    names.push("::1".into());
    let mut addresses: Vec<String> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|iface| !iface.ip().is_ipv6() || !iface.is_link_local())
        .map(|iface| iface.ip().to_string())
        .collect();
    addresses.sort();
    names.extend(addresses);
    let mut seen = std::collections::HashSet::new();
    names.retain(|name| seen.insert(name.clone()));
    names
}

/// The host name, when it is one a certificate can carry (ASCII letters,
/// digits, `-` and `.`).
fn host_name() -> Option<String> {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc != 0 {
            return None;
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let name = std::str::from_utf8(&buf[..end]).ok()?.trim().to_owned();
        let valid = !name.is_empty()
            && name != "localhost"
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        valid.then_some(name)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Creates the data folder owner-only (0700), as the store does, when it is
/// not there yet.
fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })
}

/// Writes a file readable by its owner only (0600 from its first byte), in
/// full or not at all: a temporary file renamed into place.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let fail = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut temp = path.as_os_str().to_owned();
    temp.push(".new");
    let temp = PathBuf::from(temp);
    // A leftover of an interrupted start may carry other permissions.
    match std::fs::remove_file(&temp) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(fail(err)),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temp).map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    drop(file);
    std::fs::rename(&temp, path).map_err(fail)
}

/// Tightens a kept file that others can read back to 0600, with a warning.
fn make_private(path: &Path) -> Result<(), TlsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let fail = |source| TlsError::Write {
            path: path.to_owned(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(fail)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
            tracing::warn!(
                file = %path.display(),
                was = format!("{:o}", mode & 0o777),
                "the file was readable by other users; made it private (0600)"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// A client connection, in clear or inside TLS. An enum rather than a
/// boxed trait object: no allocation for plain connections and static
/// dispatch on every read; the TLS state (tens of kilobytes of buffers at
/// most) is boxed so that a plain connection does not carry its size.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
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

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(stream) => stream.is_write_vectored(),
            Stream::Tls(stream) => stream.is_write_vectored(),
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
    fn self_signed_pair_is_made_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = Tls::self_signed(&data).unwrap();
        assert!(first.created);
        assert!(first.tls.fingerprint().starts_with("SHA256:"));
        // 32 bytes of SHA-256 are 43 base64 characters without padding.
        assert_eq!(first.tls.fingerprint().len(), "SHA256:".len() + 43);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&data), 0o700);
            assert_eq!(mode(&data.join(SELF_SIGNED_KEY)), 0o600);
            assert_eq!(mode(&data.join(SELF_SIGNED_CERT)), 0o600);
            std::fs::set_permissions(
                data.join(SELF_SIGNED_KEY),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
            let again = Tls::self_signed(&data).unwrap();
            assert_eq!(mode(&data.join(SELF_SIGNED_KEY)), 0o600);
            assert!(!again.created);
        }
        let again = Tls::self_signed(&data).unwrap();
        assert!(!again.created);
        assert_eq!(again.tls.fingerprint(), first.tls.fingerprint());

        // Half a pair is replaced by a new one.
        std::fs::remove_file(data.join(SELF_SIGNED_CERT)).unwrap();
        let new = Tls::self_signed(&data).unwrap();
        assert!(new.created);
        assert_ne!(new.tls.fingerprint(), first.tls.fingerprint());
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = Tls::from_pem_files(&missing, &missing).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let err = Tls::from_pem_files(&junk, &junk).unwrap_err();
        assert!(
            err.to_string().contains("no usable PEM certificate"),
            "{err}"
        );
        // A certificate with somebody else's key.
        let made = Tls::self_signed(&dir.path().join("a")).unwrap();
        Tls::self_signed(&dir.path().join("b")).unwrap();
        let err = Tls::from_pem_files(&made.cert_path, &dir.path().join("b").join(SELF_SIGNED_KEY))
            .unwrap_err();
        assert!(matches!(err, TlsError::Config(_)), "{err}");
    }

    #[test]
    fn names_cover_loopback() {
        let names = machine_names();
        for name in ["localhost", "127.0.0.1", "::1"] {
            assert!(names.iter().any(|n| n == name), "{names:?}");
        }
    }
}
