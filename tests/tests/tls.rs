//! End-to-end tests of `wss://`: the real `chat-server` binary serving TLS
//! with a certificate the test makes (rcgen) or with one it makes itself
//! (`--tls-self-signed`, kept across restarts), and the real client: its
//! network layer (`chat_tui::net`) pinned to a fingerprint, the `chat-tui`
//! binary trusting a certificate authority of the "system" (SSL_CERT_FILE),
//! and, driven in tmux, its first-use prompt and its refusal of a changed
//! certificate. A plain `ws://` client on the TLS port fails alone, and the
//! server goes on serving everybody else. TLS does not depend on the store:
//! these run on SQLite.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_e2e::*;
use chat_tui::net::{ConnectError, NetClient, NetCommand, NetConfig, NetEvent};
use chat_tui::tls::{Fingerprint, Trust};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::time::timeout;

/// A certificate authority and a server certificate it signed, for
/// 127.0.0.1 and localhost, written as PEM files into a temp dir.
struct TestCertificates {
    dir: tempfile::TempDir,
    /// Of the server certificate.
    fingerprint: Fingerprint,
}

impl TestCertificates {
    fn make() -> TestCertificates {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "chat-e2e test authority");
        let ca = ca.self_signed(&ca_key).expect("CA certificate");

        let key = rcgen::KeyPair::generate().expect("server key");
        let mut server =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        server.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let server = server
            .signed_by(&key, &ca, &ca_key)
            .expect("server certificate");

        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write");
        std::fs::write(dir.path().join("cert.pem"), server.pem()).expect("write");
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).expect("write");
        TestCertificates {
            fingerprint: Fingerprint::of(server.der()),
            dir,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// `serve` arguments for this certificate.
    fn options(&self) -> Options {
        Options {
            args: vec![
                "--tls-cert".into(),
                self.path("cert.pem"),
                "--tls-key".into(),
                self.path("key.pem"),
            ],
            ..Options::default()
        }
    }
}

/// Client settings for `url`, trusting exactly `fingerprint`.
fn pinned(url: String, user: &str, fingerprint: &Fingerprint) -> NetConfig {
    let mut config = NetConfig::new(url, user, PASSWORD);
    config.timeout = Duration::from_secs(5);
    config.trust = Trust {
        pinned: Some(fingerprint.clone()),
        known_servers: None,
    };
    config
}

async fn connect(config: NetConfig, server: &TestServer) -> NetClient {
    NetClient::connect(config)
        .await
        .unwrap_or_else(|err| panic!("cannot connect: {err}\n{}", server.log()))
}

/// Skips events until `wanted` picks one, within the harness timeout.
async fn wait_for<T>(client: &mut NetClient, mut wanted: impl FnMut(NetEvent) -> Option<T>) -> T {
    loop {
        let event = timeout(TIMEOUT, client.recv())
            .await
            .expect("no event within the timeout")
            .expect("the network task ended");
        if let Some(found) = wanted(event) {
            return found;
        }
    }
}

async fn join(client: &mut NetClient, room: &str) {
    client.send(NetCommand::Join { room: room.into() });
    wait_for(client, |event| match event {
        NetEvent::Backlog { room: r, .. } if r == room => Some(()),
        _ => None,
    })
    .await
}

/// `from` says `text` in `room`; `to` receives it. Returns its seq.
async fn say_and_hear(from: &mut NetClient, to: &mut NetClient, room: &str, text: &str) -> u64 {
    from.send(NetCommand::Send {
        id: format!("m-{text}"),
        room: room.into(),
        text: text.into(),
    });
    let seq = wait_for(from, |event| match event {
        NetEvent::Ack { id, seq, .. } if id == format!("m-{text}") => Some(seq),
        _ => None,
    })
    .await;
    let heard = wait_for(to, |event| match event {
        NetEvent::Message(m) if m.room == room && m.text == text => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(heard.seq, seq);
    assert_eq!(heard.user, "bob");
    seq
}

#[tokio::test]
async fn wss_end_to_end_with_a_certificate_made_by_the_test() {
    let certificates = TestCertificates::make();
    let server = TestServer::with_users(Backend::Sqlite, certificates.options());
    let url = server.wss_url();
    let mut alice = connect(
        pinned(url.clone(), "alice", &certificates.fingerprint),
        &server,
    )
    .await;
    let mut bob = connect(
        pinned(url.clone(), "bob", &certificates.fingerprint),
        &server,
    )
    .await;
    join(&mut alice, "lan").await;
    join(&mut bob, "lan").await;
    say_and_hear(&mut bob, &mut alice, "lan", "over tls").await;

    // Another certificate pinned: refused before any password is sent.
    let other = Fingerprint::of(b"not the server's certificate");
    let err = NetClient::connect(pinned(url.clone(), "alice", &other))
        .await
        .err()
        .expect("a wrong pin is refused");
    assert!(
        matches!(&err, ConnectError::Certificate(_)) && err.to_string().contains("not SHA256:"),
        "{err:?}: {err}"
    );
    // Nobody to vouch for it and nothing pinned or known: unknown.
    let mut unpinned = pinned(url, "alice", &other);
    unpinned.trust = Trust::default();
    let err = NetClient::connect(unpinned).await.err().expect("refused");
    assert!(
        err.to_string()
            .contains(&certificates.fingerprint.to_string()),
        "{err}"
    );
    alice.shutdown().await;
    bob.shutdown().await;
}

#[tokio::test]
async fn a_plain_client_on_the_tls_port_fails_alone() {
    let certificates = TestCertificates::make();
    let server = TestServer::with_users(Backend::Sqlite, certificates.options());
    let mut alice = connect(
        pinned(server.wss_url(), "alice", &certificates.fingerprint),
        &server,
    )
    .await;
    let mut bob = connect(
        pinned(server.wss_url(), "bob", &certificates.fingerprint),
        &server,
    )
    .await;
    join(&mut alice, "lan").await;
    join(&mut bob, "lan").await;

    // A bare WebSocket client speaking ws:// to the TLS port.
    assert!(Client::try_connect(&server.url()).await.is_err());
    // chat-tui's network layer says what may be wrong.
    let mut plain = NetConfig::new(server.url(), "alice", PASSWORD);
    plain.timeout = Duration::from_secs(5);
    let err = NetClient::connect(plain).await.err().expect("refused");
    assert!(
        matches!(&err, ConnectError::Unreachable(m) if m.contains("wss://")),
        "{err:?}: {err}"
    );
    // Some bytes that are neither TLS nor HTTP, then a hang-up.
    {
        use std::io::Write;
        let mut junk = std::net::TcpStream::connect(("127.0.0.1", server.port())).expect("connect");
        let _ = junk.write_all(b"\x00\x01garbage\r\n\r\n");
    }

    // Everybody else is still served, on the sessions they had and on new
    // ones.
    say_and_hear(&mut bob, &mut alice, "lan", "still here").await;
    let mut again = connect(
        pinned(server.wss_url(), "alice", &certificates.fingerprint),
        &server,
    )
    .await;
    join(&mut again, "lan").await;
    say_and_hear(&mut bob, &mut again, "lan", "and new ones too").await;
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
    alice.shutdown().await;
    bob.shutdown().await;
    again.shutdown().await;
}

#[test]
fn chat_tui_accepts_an_authority_of_the_system_and_refuses_the_rest() {
    let certificates = TestCertificates::make();
    let server = TestServer::with_users(Backend::Sqlite, certificates.options());
    let home = tempfile::tempdir().expect("temp dir");
    let url = server.wss_url();
    let args = [url.as_str(), "--user", "alice"];
    // A wrong password: the answer proves the TLS handshake went through
    // (and no terminal was there to ask anything).
    let wrong = ("CHAT_PASSWORD", "not the password");

    // The test's authority is one of the system's (rustls-native-certs
    // reads SSL_CERT_FILE instead of the OS store): trusted as is.
    let ca = certificates.path("ca.pem");
    let out = run_tui(&args, &[wrong, ("SSL_CERT_FILE", &ca)], home.path());
    assert!(!out.status.success());
    assert!(out.stderr.contains("login failed"), "{}", out.stderr);

    // Without it, the certificate is unknown: without a terminal to ask
    // on, it is refused, with its fingerprint and what to do.
    let no_authority = home.path().join("no-authority.pem");
    std::fs::write(&no_authority, "").expect("write");
    let no_authority = no_authority.display().to_string();
    let fingerprint = certificates.fingerprint.to_string();
    let out = run_tui(
        &args,
        &[wrong, ("SSL_CERT_FILE", &no_authority)],
        home.path(),
    );
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("not signed by an authority")
            && out.stderr.contains(&fingerprint)
            && out.stderr.contains("--fingerprint"),
        "{}",
        out.stderr
    );
    assert!(!home.path().join(".config/chat-tui/known_servers").exists());

    // Pinned from the environment: no question asked.
    let out = run_tui(
        &args,
        &[
            wrong,
            ("SSL_CERT_FILE", &no_authority),
            ("CHAT_TLS_FINGERPRINT", &fingerprint),
        ],
        home.path(),
    );
    assert!(out.stderr.contains("login failed"), "{}", out.stderr);
    // Pinned to something else: refused.
    let other = Fingerprint::of(b"another certificate").to_string();
    let out = run_tui(
        &args,
        &[wrong, ("CHAT_TLS_FINGERPRINT", &other)],
        home.path(),
    );
    assert!(!out.status.success());
    assert!(
        out.stderr.contains(&other) && out.stderr.contains(&fingerprint),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("login failed"), "{}", out.stderr);
    // A pin is for wss:// only.
    let plain = server.url();
    let out = run_tui(
        &[
            plain.as_str(),
            "--user",
            "alice",
            "--fingerprint",
            &fingerprint,
        ],
        &[wrong],
        home.path(),
    );
    assert!(out.stderr.contains("plain ws://"), "{}", out.stderr);
}

/// A `chat-server serve` of the test's own, read line by line (stdout and
/// stderr together) up to a line the test waits for; killed when dropped.
/// (The harness's [`TestServer`] reads only the first line.)
struct WatchedServer {
    child: Child,
    /// Every line read, up to the awaited one.
    lines: Vec<String>,
}

impl WatchedServer {
    /// Starts `chat-server serve ARGS` and reads until a line contains
    /// `until`.
    fn start(args: &[&str], until: &str) -> WatchedServer {
        let mut child = Command::new(server_binary())
            .arg("serve")
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chat-server");
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        for pipe in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            // Keeps draining after the awaited line, so that the server
            // never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = Instant::now() + TIMEOUT;
        let mut lines = Vec::new();
        while !lines.iter().any(|l: &String| l.contains(until)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("chat-server never printed {until:?}: {lines:?}");
                }
            }
        }
        WatchedServer { child, lines }
    }

    /// The fingerprint the banner shows.
    fn fingerprint(&self) -> String {
        let line = self
            .lines
            .iter()
            .find(|l| l.contains("certificate SHA256:"))
            .expect("certificate line");
        line.split_whitespace()
            .find(|w| w.starts_with("SHA256:"))
            .expect("fingerprint")
            .to_owned()
    }
}

impl Drop for WatchedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fingerprint of the certificate in a PEM file.
fn fingerprint_of_file(path: &Path) -> String {
    let der = CertificateDer::from_pem_file(path).expect("a PEM certificate");
    Fingerprint::of(der.as_ref()).to_string()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[test]
fn a_self_signed_certificate_is_made_once_and_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A folder that does not exist yet: the server makes it, private.
    let data = dir.path().join("data");
    let db = data.join("chat.db");
    let cert = data.join("tls-cert.pem");
    let key = data.join("tls-key.pem");

    let db = db.display().to_string();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--tls-self-signed",
        "--db",
        db.as_str(),
    ];
    let first = WatchedServer::start(&args, "certificate SHA256:");
    assert!(
        first
            .lines
            .iter()
            .any(|l| l.starts_with("listening on wss://127.0.0.1:")),
        "{:?}",
        first.lines
    );
    let fingerprint = first.fingerprint();
    assert_eq!(fingerprint_of_file(&cert), fingerprint);
    #[cfg(unix)]
    {
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&cert), 0o600);
        assert_eq!(mode(&key), 0o600);
    }
    let key_bytes = std::fs::read(&key).expect("read the key");
    drop(first);

    let second = WatchedServer::start(&args, "certificate SHA256:");
    assert_eq!(second.fingerprint(), fingerprint, "{:?}", second.lines);
    assert_eq!(fingerprint_of_file(&cert), fingerprint);
    assert_eq!(std::fs::read(&key).expect("read the key"), key_bytes);
    #[cfg(unix)]
    {
        assert_eq!(mode(&cert), 0o600);
        assert_eq!(mode(&key), 0o600);
    }
}

#[test]
fn plain_ws_beyond_this_machine_is_warned_about() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("chat.db").display().to_string();
    // The wildcard address, as a LAN set-up uses it; nothing connects.
    let lan = WatchedServer::start(
        &["--listen", "0.0.0.0:0", "--db", db.as_str()],
        "passwords travel in clear",
    );
    drop(lan);
    // On loopback alone there is nothing to warn about (the banner's last
    // line, about users, comes after where the warning would be).
    let local = WatchedServer::start(
        &["--listen", "127.0.0.1:0", "--db", db.as_str()],
        "no users yet",
    );
    assert!(
        !local.lines.iter().any(|l| l.contains("in clear")),
        "{:?}",
        local.lines
    );
}

#[test]
fn chat_tui_asks_on_first_use_and_refuses_a_changed_certificate() {
    let server = TestServer::with_users(
        Backend::Sqlite,
        Options {
            args: vec!["--tls-self-signed".into()],
            ..Options::default()
        },
    );
    // The database is in the scratch folder: so is the certificate.
    let data = server.scratch().path().to_owned();
    let old = fingerprint_of_file(&data.join("tls-cert.pem"));
    let home = tempfile::tempdir().expect("temp dir");
    let config = home.path().join("config");
    let known_servers = config.join("chat-tui").join("known_servers");
    let password = Path::new(PASSWORD);
    let tmux = Tmux::start(
        home.path(),
        &[
            ("HOME", home.path()),
            ("XDG_CONFIG_HOME", &config),
            ("CHAT_PASSWORD", password),
        ],
    );
    let run = format!(
        "'{}' {} --user alice; echo \"exit=$?\"",
        tui_binary().display(),
        server.wss_url()
    );
    let server_name = format!("127.0.0.1:{}", server.port());

    // First use: shown, asked; "no" connects nowhere and records nothing.
    tmux.type_line(&run);
    tmux.wait_for(&["Trust this server", &old, &server_name]);
    tmux.type_line("n");
    tmux.wait_for(&["was not accepted", "exit=1"]);
    assert!(!known_servers.exists());

    // Asked again, "yes": logged in, and the server is recorded.
    tmux.clear();
    tmux.type_line(&run);
    tmux.wait_for(&["Trust this server", &old]);
    tmux.type_line("y");
    tmux.wait_for(&["● connected", "alice @"]);
    let recorded = std::fs::read_to_string(&known_servers).expect("known_servers written");
    assert!(
        recorded
            .lines()
            .any(|line| line == format!("{server_name} {old}")),
        "{recorded}"
    );
    tmux.run(&["send-keys", "-t", Tmux::SESSION, "C-c"]);
    tmux.wait_for(&["exit=0"]);

    // The server gets a new certificate (a new self-signed pair).
    std::fs::remove_file(data.join("tls-cert.pem")).expect("remove the certificate");
    std::fs::remove_file(data.join("tls-key.pem")).expect("remove the key");
    let mut server = server;
    server.restart();
    let new = fingerprint_of_file(&data.join("tls-cert.pem"));
    assert_ne!(new, old);

    // Refused, loudly: what changed, where it was recorded, how to accept.
    tmux.clear();
    tmux.type_line(&run);
    let line = recorded
        .lines()
        .position(|line| line.starts_with(&server_name))
        .map(|at| at + 1)
        .expect("recorded line");
    let file = known_servers.display().to_string();
    let remove = format!("remove line {line} of {file}");
    let screen = tmux.wait_for(&["HAS CHANGED", &old, &new, &remove, "exit=1"]);
    assert!(!screen.contains("Trust this server"), "{screen}");
    assert_eq!(
        std::fs::read_to_string(&known_servers).expect("read"),
        recorded,
        "known_servers must not change"
    );
}
