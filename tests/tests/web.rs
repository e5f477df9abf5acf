//! End-to-end tests of the browser client: the server's HTTP answers on the
//! WebSocket port, and the page itself in a real headless Chromium (driven
//! by chromedriver) against a real server, with plain WebSocket clients on
//! the other side.
//!
//! The page's screenshots (desktop and phone size) are saved to
//! `target/screenshots/`; the README shows two of them.

use std::path::PathBuf;

use chat_e2e::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// WebDriver's Enter key.
const ENTER: &str = "\u{E007}";

fn page_url(server: &TestServer) -> String {
    format!("http://127.0.0.1:{}/", server.port())
}

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("screenshots")
}

/// Alice logged in on the page, in #general, and bob in #general over a
/// plain WebSocket.
async fn alice_in_the_page_and_bob(server: &TestServer) -> (Browser, Client) {
    let browser = Browser::start(1000, 700).await;
    browser.log_in(&page_url(server), "alice", PASSWORD).await;
    browser.wait_for_text("#room-title", "general").await;
    let mut bob = Client::login(&server.url(), "bob", PASSWORD).await;
    bob.join("general", None).await;
    (browser, bob)
}

/// Sends raw HTTP requests on one connection and reads what came back
/// until the server closes it.
async fn http_exchange(port: u16, requests: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.write_all(requests.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn the_page_is_served_with_its_headers_next_to_the_websocket() {
    let server = TestServer::with_users(Backend::Sqlite, Options::default());
    let port = server.port();
    // Two requests on one kept-alive connection, the last asking to close.
    let answer = http_exchange(
        port,
        "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /app.js HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
    )
    .await;
    let responses: Vec<&str> = answer.matches("HTTP/1.1 200 OK").collect();
    assert_eq!(responses.len(), 2, "{answer}");
    assert!(answer.contains("Content-Type: text/html; charset=utf-8"));
    assert!(answer.contains("Content-Type: text/javascript; charset=utf-8"));
    assert!(answer.contains("Content-Security-Policy: default-src 'self'"));
    assert!(answer.contains("Content-Encoding: gzip"));
    assert!(answer.contains("<!doctype html>"));
    let etag = answer
        .lines()
        .find_map(|line| line.strip_prefix("ETag: "))
        .expect("an ETag")
        .to_owned();

    let again = http_exchange(
        port,
        &format!("GET / HTTP/1.1\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(again.starts_with("HTTP/1.1 304 "), "{again}");

    let moved = http_exchange(port, "GET /chat HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(moved.starts_with("HTTP/1.1 301 ") && moved.contains("Location: /\r\n"));
    let missing = http_exchange(port, "GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
    let post = http_exchange(port, "POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi").await;
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    let refused = http_exchange(port, &huge).await;
    assert!(refused.starts_with("HTTP/1.1 431 "), "{refused}");

    // The WebSocket endpoints are where they were.
    let _alice = Client::login(&server.url(), "alice", PASSWORD).await;
    let root = format!("ws://127.0.0.1:{port}/");
    let _bob = Client::login(&root, "bob", PASSWORD).await;
}

#[tokio::test]
async fn log_in_then_chat_both_ways_with_a_websocket_client() {
    let server = TestServer::with_users(Backend::Sqlite, Options::default());
    let browser = Browser::start(1200, 800).await;

    // A wrong password is said on the form, and the password is not kept.
    browser.client.goto(&page_url(&server)).await.expect("open");
    browser.type_into("#login-user", "alice").await;
    browser.type_into("#login-password", "wrong password").await;
    browser.click("#login-submit").await;
    browser
        .wait_for_text("#login-error", "Wrong user name or password")
        .await;
    let stored = browser
        .eval(
            "return JSON.stringify(localStorage) + JSON.stringify(sessionStorage)",
            vec![],
        )
        .await;
    assert!(!stored.to_string().contains("wrong password"), "{stored}");

    browser.type_into("#login-password", PASSWORD).await;
    browser.click("#login-submit").await;
    browser.wait_for_text("#room-title", "general").await;
    browser.wait_for_text("#older", "No messages yet").await;

    let mut bob = Client::login(&server.url(), "bob", PASSWORD).await;
    bob.join("general", None).await;
    browser.wait_for_text("#room-members", "bob").await;

    browser.type_into("#input", "hello from the page").await;
    browser.type_into("#input", ENTER).await;
    let message = bob.recv_type("message").await;
    assert_eq!(message["user"], "alice");
    assert_eq!(message["text"], "hello from the page");

    bob.say("general", "hello from bob").await;
    browser.wait_for_text("#messages", "hello from bob").await;
    // Shift+Enter makes a new line instead of sending.
    browser
        .type_into("#input", "two\u{E008}\u{E007}\u{E008}lines")
        .await;
    browser.type_into("#input", ENTER).await;
    let message = bob
        .recv_matching(TIMEOUT, |e| e["type"] == "message" && e["user"] == "alice")
        .await;
    assert_eq!(message["text"], "two\nlines");
    browser.wait_for_text("#messages", "lines").await;
    assert_eq!(
        browser.message_texts().await,
        ["hello from the page", "hello from bob", "two\nlines"]
    );

    // What the README shows: a desktop window with a few messages.
    bob.say(
        "general",
        "the deploy went out at 14:00, see https://example.com/status",
    )
    .await;
    browser.wait_for_text("#messages", "deploy").await;
    browser
        .screenshot(&screenshots().join("web-desktop.png"))
        .await;
    browser.close().await;
}

#[tokio::test]
async fn scrolling_up_loads_older_history_in_order() {
    let server = TestServer::with_users(Backend::Sqlite, Options::unlimited());
    let mut bob = Client::login(&server.url(), "bob", PASSWORD).await;
    bob.join("general", None).await;
    for i in 1..=180 {
        bob.say("general", &format!("message {i}")).await;
    }
    let browser = Browser::start(1000, 700).await;
    browser.log_in(&page_url(&server), "alice", PASSWORD).await;
    browser.wait_for_text("#messages", "message 180").await;
    let first_page = browser.message_texts().await;
    assert_eq!(first_page.len(), 50, "the newest page only");

    // Scroll to the top until the room's start is reached.
    browser
        .wait_for(
            "the first message after scrolling up",
            "const timeline = document.getElementById('timeline');
             timeline.scrollTop = 0;
             timeline.dispatchEvent(new Event('scroll'));
             return document.getElementById('older').textContent.includes('start of the room');",
            vec![],
        )
        .await;
    let texts = browser.message_texts().await;
    let wanted: Vec<String> = (1..=180).map(|i| format!("message {i}")).collect();
    assert_eq!(texts, wanted);
    // The page kept its place: the newest message is not in view.
    let at_bottom = browser
        .eval(
            "const t = document.getElementById('timeline');
             return t.scrollHeight - t.scrollTop - t.clientHeight < 40;",
            vec![],
        )
        .await;
    assert_eq!(at_bottom, json!(false));
    browser.close().await;
}

#[tokio::test]
async fn after_a_server_restart_the_page_shows_what_it_missed_once() {
    let mut server = TestServer::with_users(Backend::Sqlite, Options::unlimited());
    let (browser, mut bob) = alice_in_the_page_and_bob(&server).await;
    bob.say("general", "before the restart").await;
    browser
        .wait_for_text("#messages", "before the restart")
        .await;

    server.kill();
    browser.wait_for_text("#status", "offline").await;
    // Written while offline: it waits in the page's queue.
    browser.type_into("#input", "written while offline").await;
    browser.type_into("#input", ENTER).await;
    browser
        .wait_for_text("#messages", "waiting for the connection")
        .await;

    server.restart();
    let mut bob = Client::login(&server.url(), "bob", PASSWORD).await;
    let (joined, _) = bob.join("general", None).await;
    let mut last = joined["last_seq"].as_u64().unwrap_or(0);
    for i in 1..=3 {
        last = bob.say("general", &format!("missed {i}")).await["seq"]
            .as_u64()
            .unwrap_or(0);
    }
    // The page reconnects, resumes with `since`, then sends its queue.
    let queued = bob
        .recv_matching(TIMEOUT, |e| e["type"] == "message" && e["user"] == "alice")
        .await;
    assert_eq!(queued["text"], "written while offline");
    assert!(queued["seq"].as_u64() > Some(last));
    browser
        .wait_for(
            "the queued message stored",
            "return [...document.querySelectorAll('#messages .msg[data-seq] .text')]
                .some(n => n.textContent === 'written while offline')
              && !document.querySelector('#messages .msg.pending');",
            vec![],
        )
        .await;
    assert_eq!(
        browser.message_texts().await,
        [
            "before the restart",
            "missed 1",
            "missed 2",
            "missed 3",
            "written while offline"
        ]
    );
    let status: Value = browser
        .eval(
            "return document.getElementById('status').textContent",
            vec![],
        )
        .await;
    assert_eq!(status, json!(""), "online again");
    browser.close().await;
}

#[tokio::test]
async fn a_phone_sized_window_shows_the_room_list_as_a_drawer() {
    let server = TestServer::with_users(Backend::Sqlite, Options::default());
    let mut bob = Client::login(&server.url(), "bob", PASSWORD).await;
    bob.join("general", None).await;
    bob.join("random", None).await;
    let browser = Browser::phone().await;
    browser.log_in(&page_url(&server), "alice", PASSWORD).await;
    browser.wait_for_text("#room-title", "general").await;
    for text in [
        "morning! anyone up for lunch at 12?",
        "the build is green again",
        "@alice can you look at the release notes?",
    ] {
        bob.say("general", text).await;
    }
    browser.wait_for_text("#messages", "release notes").await;

    let sidebar_right = "return document.getElementById('sidebar').getBoundingClientRect().right";
    let hidden_at = browser.eval(sidebar_right, vec![]).await;
    assert!(
        hidden_at.as_f64() <= Some(0.0),
        "drawer closed: {hidden_at}"
    );
    assert!(browser
        .find("#drawer-button")
        .await
        .is_displayed()
        .await
        .expect("displayed"));
    // Touch-sized: the input and the send button are at least 44 px high.
    let heights = browser
        .eval(
            "return ['input', 'send-button', 'drawer-button']
                .map(id => document.getElementById(id).getBoundingClientRect().height)",
            vec![],
        )
        .await;
    for height in heights.as_array().expect("a list") {
        assert!(height.as_f64() >= Some(44.0), "{heights}");
    }
    browser
        .screenshot(&screenshots().join("web-phone.png"))
        .await;

    browser.click("#drawer-button").await;
    browser
        .wait_for("the drawer open", &format!("{sidebar_right} > 200"), vec![])
        .await;
    let expanded = browser
        .eval(
            "return document.getElementById('drawer-button').getAttribute('aria-expanded')",
            vec![],
        )
        .await;
    assert_eq!(expanded, json!("true"));
    browser
        .screenshot(&screenshots().join("web-phone-drawer.png"))
        .await;
    // Joining a room from the drawer closes it and shows the room.
    browser.type_into("#join-input", "random").await;
    browser.type_into("#join-input", ENTER).await;
    browser.wait_for_text("#room-title", "random").await;
    browser
        .wait_for(
            "the drawer closed",
            &format!("{sidebar_right} <= 0"),
            vec![],
        )
        .await;
    browser.close().await;
}

#[tokio::test]
async fn markup_in_a_message_is_shown_as_text_and_never_runs() {
    let server = TestServer::with_users(Backend::Sqlite, Options::default());
    let (browser, mut bob) = alice_in_the_page_and_bob(&server).await;
    let attack = "<img src=x onerror=alert(1)><script>document.title='pwned'</script>";
    bob.say("general", attack).await;
    bob.say(
        "general",
        "javascript:alert(1) and https://example.com/a?b=1",
    )
    .await;
    browser.wait_for_text("#messages", "example.com").await;

    let texts = browser.message_texts().await;
    assert_eq!(texts[0], attack, "shown as the text it is");
    let found = browser
        .eval(
            "return {
                images: document.querySelectorAll('#messages img, #messages script').length,
                title: document.title,
                links: [...document.querySelectorAll('#messages a')].map(a => a.href),
             }",
            vec![],
        )
        .await;
    assert_eq!(found["images"], json!(0), "{found}");
    assert_ne!(found["title"], json!("pwned"));
    assert_eq!(found["links"], json!(["https://example.com/a?b=1"]));
    // No alert opened (WebDriver would report the open dialog).
    assert!(browser.client.get_alert_text().await.is_err());
    browser.close().await;
}

#[tokio::test]
async fn edit_react_and_reply_from_the_page_reach_other_clients() {
    let server = TestServer::with_users(Backend::Sqlite, Options::default());
    let (browser, mut bob) = alice_in_the_page_and_bob(&server).await;

    browser.type_into("#input", "teh plan").await;
    browser.type_into("#input", ENTER).await;
    let sent = bob.recv_type("message").await;
    let seq = sent["seq"].as_u64().expect("seq");

    // Up on the empty input selects the newest message; `e` edits it.
    browser.wait_for_text("#messages", "teh plan").await;
    browser.type_into("#input", "\u{E013}").await;
    browser.type_into(".msg.selected", "e").await;
    browser.wait_for_text("#compose-bar", "Editing").await;
    let input = browser.find("#input").await;
    input.clear().await.expect("clear");
    input.send_keys("the plan").await.expect("type");
    input.send_keys(ENTER).await.expect("enter");
    let edited = bob.recv_type("edited").await;
    assert_eq!(edited["seq"], json!(seq));
    assert_eq!(edited["text"], "the plan");
    browser.wait_for_text("#messages", "(edited)").await;

    // Bob reacts; the page shows it and toggles its own with a click.
    bob.request(json!({"type":"react","room":"general","seq":seq,"emoji":"👍"}))
        .await;
    browser.wait_for_text(".reactions", "👍 1").await;
    browser.click(".reactions button").await;
    let reaction = bob
        .recv_matching(TIMEOUT, |e| e["type"] == "reaction" && e["user"] == "alice")
        .await;
    assert_eq!(reaction["on"], json!(true));
    browser.wait_for_text(".reactions", "👍 2").await;

    // A reply from the page carries `reply_to` and shows its quote.
    browser.click(".msg[data-seq] .text").await;
    browser.click(".actions [data-action=reply]").await;
    browser
        .wait_for_text("#compose-bar", "Replying to alice")
        .await;
    browser.type_into("#input", "agreed").await;
    browser.type_into("#input", ENTER).await;
    let reply = bob.recv_matching(TIMEOUT, |e| e["type"] == "message").await;
    assert_eq!(reply["reply_to"], json!(seq));
    browser.wait_for_text(".quote", "alice: the plan").await;

    // Search finds it, and a result jumps to the message.
    browser.click("#search-button").await;
    browser.type_into("#search-input", "pla").await;
    browser.type_into("#search-input", ENTER).await;
    browser.wait_for_text("#search-results", "the plan").await;
    let marked = browser
        .eval(
            "return document.querySelector('#search-results mark').textContent",
            vec![],
        )
        .await;
    assert_eq!(marked, json!("plan"));
    browser.close().await;
}

/// The page keeps unread counts for rooms not in view, and reading on
/// another device clears them.
#[tokio::test]
async fn unread_counts_follow_the_read_markers_of_other_devices() {
    let server = TestServer::with_users(Backend::Sqlite, Options::default());
    let mut alice = Client::login(&server.url(), "alice", PASSWORD).await;
    alice.join("general", None).await;
    alice.join("random", None).await;
    let browser = Browser::start(1000, 700).await;
    browser.log_in(&page_url(&server), "alice", PASSWORD).await;
    browser.wait_for_text("#room-list", "random").await;
    let mut bob = Client::login(&server.url(), "bob", PASSWORD).await;
    bob.join("random", None).await;
    browser.click("#room-list button[data-room=general]").await;
    browser.wait_for_text("#room-title", "general").await;
    let mut newest = 0;
    for text in ["one", "two", "three"] {
        newest = bob.say("random", text).await["seq"].as_u64().unwrap_or(0);
    }
    browser
        .wait_for_text("#room-list button[data-room=random]", "3")
        .await;
    browser
        .wait_for(
            "the title's count",
            "return document.title === '(3) chat'",
            vec![],
        )
        .await;
    alice
        .send(json!({"type":"read","room":"random","seq":newest}))
        .await;
    browser
        .wait_for(
            "the count cleared",
            "return !document.querySelector('#room-list button[data-room=random] .badge')",
            vec![],
        )
        .await;
    browser.close().await;
}

/// With TLS on, the same port serves the page over `https://`, and the
/// page connects with `wss://` (a `ws://` socket from an `https://` page
/// would be blocked as mixed content, so the login alone proves it).
#[tokio::test]
async fn with_tls_the_page_comes_over_https_and_chats_over_wss() {
    let server = TestServer::with_users(
        Backend::Sqlite,
        Options {
            args: vec!["--tls-self-signed".into()],
            ..Options::default()
        },
    );
    let browser = Browser::start(1000, 700).await;
    let url = format!("https://127.0.0.1:{}/", server.port());
    browser.log_in(&url, "alice", PASSWORD).await;
    browser.wait_for_text("#room-title", "general").await;
    browser.type_into("#input", "over wss").await;
    browser.type_into("#input", ENTER).await;
    browser
        .wait_for(
            "the message stored and shown",
            "return [...document.querySelectorAll('#messages .msg[data-seq] .text')]
                .some(n => n.textContent === 'over wss')",
            vec![],
        )
        .await;
    let protocol = browser.eval("return location.protocol", vec![]).await;
    assert_eq!(protocol, json!("https:"));
    browser.close().await;
}

/// A direct conversation opened from the page, typing and presence.
#[tokio::test]
async fn a_dm_from_the_page_with_typing_and_presence() {
    let server = TestServer::with_users(Backend::Sqlite, Options::default());
    let (browser, mut bob) = alice_in_the_page_and_bob(&server).await;
    browser.wait_for_text("#room-members", "2 online").await;

    // Typing shows under the timeline, and goes when bob sends.
    bob.send(json!({"type":"typing","room":"general"})).await;
    browser.wait_for_text("#typing", "bob is typing").await;
    bob.say("general", "done typing").await;
    browser
        .wait_for(
            "the typing line cleared",
            "return document.getElementById('typing').textContent === ''",
            vec![],
        )
        .await;

    browser.type_into("#input", "/dm bob").await;
    browser.type_into("#input", ENTER).await;
    let invited = bob.recv_type("invited").await;
    assert_eq!(invited["room"], "alice+bob");
    assert_eq!(invited["by"], "alice");
    browser.wait_for_text("#room-title", "@bob").await;
    browser.wait_for_text("#room-list", "@bob").await;
    bob.join("alice+bob", None).await;
    bob.say("alice+bob", "hi alice").await;
    browser.wait_for_text("#messages", "hi alice").await;
    browser.type_into("#input", "hi bob").await;
    browser.type_into("#input", ENTER).await;
    let message = bob
        .recv_matching(TIMEOUT, |e| e["type"] == "message" && e["user"] == "alice")
        .await;
    assert_eq!(message["room"], "alice+bob");

    // Bob leaving general shows in its member list.
    browser.click("#room-list button[data-room=general]").await;
    browser.wait_for_text("#room-members", "2 online").await;
    bob.request(json!({"type":"leave","room":"general"})).await;
    browser.wait_for_text("#room-members", "1 online").await;
    browser.close().await;
}
