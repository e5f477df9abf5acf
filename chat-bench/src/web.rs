//! `web`: the browser client in a real headless Chromium (the tests'
//! [`chat_e2e::Browser`]) against a server on loopback.
//!
//! Two figures:
//! - **Page load to the first message on screen**, `--loads` times: the
//!   page's own Navigation Timing for "ready" (DOMContentLoaded, after the
//!   app's script ran), and, measured inside the page, from the login form's
//!   submit to the first message in the DOM (WebSocket connect, login, join,
//!   history, render; `welcome`, the login's answer, is timed on the way,
//!   since the password's hashing is a fixed share). The login form is filled by WebDriver between the
//!   two, so that time (a person typing) is left out. The first load is
//!   cold; later ones revalidate the cached files (304s), as a returning
//!   visitor's do.
//! - **Memory after scrolling through the room** (`--messages`, 10,000 by
//!   default): the page is scrolled to the top until the room's first
//!   message, then garbage-collected, and its JS heap and DOM size read.
//!   The page keeps a bounded window of messages, so this should stay
//!   near what one screen costs.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::client;
use crate::history::{seed, Seeded};
use crate::report::Report;
use crate::setup::{prefix, Common};
use crate::traffic::histogram;

#[derive(Args, Clone, Debug)]
pub struct WebArgs {
    #[command(flatten)]
    pub common: Common,
    /// Messages in the room [default: 10000; smoke: 1000].
    #[arg(long)]
    pub messages: Option<u64>,
    /// Page loads timed [default: 20; smoke: 2].
    #[arg(long)]
    pub loads: Option<u64>,
}

/// Installed in a freshly loaded page before the login is submitted: times
/// the submit and the first message's arrival in the DOM, and returns the
/// page's own load timing.
const OBSERVE: &str = r#"
    window.__bench = { submit: 0, welcome: 0, first: 0 };
    document.getElementById('login-form').addEventListener('submit',
        () => { window.__bench.submit = performance.now(); }, true);
    // The chat view appears when `welcome` (the login's answer) arrives.
    const view = document.getElementById('chat-view');
    new MutationObserver((_, observer) => {
        if (!view.hidden) {
            window.__bench.welcome = performance.now();
            observer.disconnect();
        }
    }).observe(view, { attributes: true });
    const list = document.getElementById('messages');
    new MutationObserver((_, observer) => {
        if (list.querySelector('.msg[data-seq]')) {
            window.__bench.first = performance.now();
            observer.disconnect();
        }
    }).observe(list, { childList: true });
    const nav = performance.getEntriesByType('navigation')[0];
    const bytes = performance.getEntriesByType('resource')
        .reduce((sum, r) => sum + r.transferSize, nav.transferSize);
    return { ready: nav.domContentLoadedEventEnd, bytes };
"#;

/// Scrolls to the top once; true when the room's start is on screen.
const SCROLL_UP: &str = r#"
    const timeline = document.getElementById('timeline');
    timeline.scrollTop = 0;
    timeline.dispatchEvent(new Event('scroll'));
    return document.getElementById('older').textContent.includes('start of the room');
"#;

/// The page's memory and size, after a full garbage collection.
const MEASURE: &str = r#"
    if (window.gc) { window.gc(); }
    return {
        heap: performance.memory.usedJSHeapSize,
        nodes: document.getElementsByTagName('*').length,
        messages: document.querySelectorAll('#messages .msg[data-seq]').length,
        first: Number(document.querySelector('#messages .msg[data-seq]').dataset.seq),
    };
"#;

pub async fn web(args: WebArgs) -> Result<()> {
    let smoke = args.common.smoke;
    if args.common.url.is_some() {
        bail!("web starts its own server: --url is not supported");
    }
    let count = args.messages.unwrap_or(if smoke { 1000 } else { 10_000 });
    let loads = args.loads.unwrap_or(if smoke { 2 } else { 20 }).max(1);
    let mut report = Report::new("web");
    let room = format!("{}web", prefix());
    let name = room.clone();
    let seeded = Seeded::start(&args.common, &mut report, room, move |file| {
        seed(file, &name, count)
    })
    .await?;
    let page = seeded
        .target
        .url
        .trim_end_matches("ws")
        .replacen("ws://", "http://", 1);

    // The reader's account, with the seeded room as its only room: the page
    // opens it at login.
    let user = format!("{}reader", prefix());
    let mut ws = client::connect(&seeded.target, None, 16 * 1024).await?;
    client::login(&mut ws, &user, true).await?;
    ws_join(&mut ws, &seeded.room).await?;
    drop(ws);

    let browser = chat_e2e::Browser::start_with(1200, 800, &["--js-flags=--expose-gc"]).await;
    let mut ready = histogram();
    let mut first_message = histogram();
    let mut logged_in = histogram();
    let mut total = histogram();
    for load in 0..loads {
        browser.client.goto(&page).await?;
        let timing = browser.eval(OBSERVE, vec![]).await;
        if load == 0 {
            report.set("cold_load_bytes", timing["bytes"].clone());
        }
        browser.fill("#login-user", &user).await;
        browser.fill("#login-password", client::PASSWORD).await;
        browser.click("#login-submit").await;
        let seen = browser
            .wait_for(
                "the first message",
                "return window.__bench.first > 0 && window.__bench",
                vec![],
            )
            .await;
        let ms = |v: &Value| v.as_f64().unwrap_or(0.0);
        let ready_ms = ms(&timing["ready"]);
        let submit_to_first = ms(&seen["first"]) - ms(&seen["submit"]);
        let submit_to_welcome = ms(&seen["welcome"]) - ms(&seen["submit"]);
        if load == 0 {
            report.set("cold_ready_ms", ready_ms);
            report.set("cold_submit_to_first_message_ms", submit_to_first);
        }
        let us = |ms: f64| (ms * 1000.0).max(1.0) as u64;
        ready.saturating_record(us(ready_ms));
        first_message.saturating_record(us(submit_to_first));
        logged_in.saturating_record(us(submit_to_welcome));
        total.saturating_record(us(ready_ms + submit_to_first));
    }
    report.set("loads", loads);
    report.latency("page_ready", &ready);
    report.latency("submit_to_welcome", &logged_in);
    report.latency("submit_to_first_message", &first_message);
    report.latency("load_to_first_message", &total);

    // Memory: one screen of the room, then the whole room scrolled through.
    let start = browser.eval(MEASURE, vec![]).await;
    report.set("heap_one_page_mib", mib(&start["heap"]));
    report.set("dom_nodes_one_page", start["nodes"].clone());
    let scrolling = Instant::now();
    let deadline = scrolling + Duration::from_secs(600);
    loop {
        if browser.eval(SCROLL_UP, vec![]).await == json!(true) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the page did not reach the room's first message within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.set("scroll_to_start_secs", scrolling.elapsed().as_secs_f64());
    let end = browser.eval(MEASURE, vec![]).await;
    if end["first"] != json!(1) {
        bail!(
            "scrolled to the start but the first message shown is {}",
            end["first"]
        );
    }
    report.set("messages_scrolled_through", count);
    report.set("messages_kept_in_page", end["messages"].clone());
    report.set("heap_after_scrolling_mib", mib(&end["heap"]));
    report.set("dom_nodes_after_scrolling", end["nodes"].clone());
    browser.close().await;
    seeded.finish(&mut report)?;
    report.print();
    Ok(())
}

fn mib(bytes: &Value) -> f64 {
    bytes.as_f64().unwrap_or(0.0) / 1048576.0
}

/// Joins `room` and reads the answer up to its first history page.
async fn ws_join(ws: &mut client::Ws, room: &str) -> Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let join = json!({"type": "join", "room": room}).to_string();
    ws.send(Message::text(join)).await?;
    loop {
        let frame = tokio::time::timeout(client::STEP_TIMEOUT, ws.next()).await;
        match frame {
            Ok(Some(Ok(Message::Text(text)))) if text.contains(r#""type":"history""#) => {
                return Ok(())
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(err))) => return Err(err.into()),
            Ok(None) => bail!("connection closed while joining"),
            Err(_) => bail!("no answer to join within the timeout"),
        }
    }
}
