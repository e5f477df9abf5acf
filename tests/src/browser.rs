//! A real browser for the web client's tests: Debian's `chromium`, headless,
//! driven over WebDriver by `chromedriver`, which this harness starts on a
//! free port and stops by its process group (chromedriver and the browsers
//! it started) when the [`Browser`] drops.
//!
//! Waits poll the page (that is how a WebDriver client learns anything) and
//! each is bounded by [`TIMEOUT`].

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::{free_port, TIMEOUT};

/// How often a wait looks at the page again.
const POLL: Duration = Duration::from_millis(50);

/// The browser binary: `CHROMIUM` when set, else Debian's.
fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into())
}

fn chromedriver() -> PathBuf {
    std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromedriver".into())
}

/// A headless Chromium under a chromedriver of its own.
pub struct Browser {
    driver: Child,
    pub client: Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A desktop browser with a window of `width`×`height` CSS pixels.
    pub async fn start(width: u32, height: u32) -> Browser {
        Self::launch(width, height, None, &[]).await
    }

    /// The same with more Chromium flags (the benchmark's
    /// `--js-flags=--expose-gc`).
    pub async fn start_with(width: u32, height: u32, flags: &[&str]) -> Browser {
        Self::launch(width, height, None, flags).await
    }

    /// A phone: a 390×844 viewport at 2 device pixels per CSS pixel, with
    /// touch, as Chromium's device emulation makes it (a desktop window
    /// cannot be made that narrow).
    pub async fn phone() -> Browser {
        let metrics =
            json!({"width": 390, "height": 844, "pixelRatio": 2.0, "touch": true, "mobile": true});
        Self::launch(390, 844, Some(metrics), &[]).await
    }

    async fn launch(width: u32, height: u32, phone: Option<Value>, flags: &[&str]) -> Browser {
        let port = free_port();
        let mut command = Command::new(chromedriver());
        command
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group, so the browsers it starts are stopped
        // with it even when a test panics before closing the session.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = command
            .spawn()
            .expect("start chromedriver (apt-get install chromium-driver)");
        let profile = tempfile::tempdir().expect("temp dir");
        let capabilities = json!({
            // The TLS test's server has a self-signed certificate.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--enable-precise-memory-info",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        });
        let mut capabilities = capabilities;
        if let Some(args) = capabilities["goog:chromeOptions"]["args"].as_array_mut() {
            args.extend(flags.iter().map(|flag| json!(flag)));
        }
        if let Some(metrics) = phone {
            capabilities["goog:chromeOptions"]["mobileEmulation"] =
                json!({"deviceMetrics": metrics});
        }
        let capabilities = match capabilities {
            Value::Object(map) => map,
            _ => unreachable!("a JSON object"),
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + TIMEOUT;
        let mut browser = None;
        // chromedriver takes a moment to listen.
        while browser.is_none() {
            match ClientBuilder::new(connector.clone())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => browser = Some(client),
                Err(err) if Instant::now() > deadline => {
                    kill_group(driver.id());
                    panic!("cannot start a browser session: {err}")
                }
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
        let client = browser.expect("connected");
        Browser {
            driver,
            client,
            _profile: profile,
        }
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and
    /// returns its result.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|err| panic!("script failed: {err}\n{script}"))
    }

    /// Waits until `script` returns something truthy, and returns it.
    pub async fn wait_for(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let value = self.eval(script, args.clone()).await;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                let body = self.eval("return document.body.innerText", vec![]).await;
                panic!("timed out waiting for {what}; the page reads:\n{body}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the element matching `css` shows `text` somewhere in it.
    pub async fn wait_for_text(&self, css: &str, text: &str) {
        self.wait_for(
            &format!("{text:?} in {css}"),
            "const node = document.querySelector(arguments[0]);
             return !!node && node.innerText.includes(arguments[1]);",
            vec![json!(css), json!(text)],
        )
        .await;
    }

    /// The texts of the current room's messages, oldest first.
    pub async fn message_texts(&self) -> Vec<String> {
        let value = self
            .eval(
                "return [...document.querySelectorAll('#messages .msg[data-seq] .text')]
                    .map(n => n.textContent)",
                vec![],
            )
            .await;
        serde_json::from_value(value).expect("a list of strings")
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    /// Types `keys` into the element matching `css`.
    pub async fn type_into(&self, css: &str, keys: &str) {
        self.find(css)
            .await
            .send_keys(keys)
            .await
            .expect("send keys");
    }

    /// Replaces the value of the input matching `css` with `text`.
    pub async fn fill(&self, css: &str, text: &str) {
        let input = self.find(css).await;
        input.clear().await.expect("clear");
        input.send_keys(text).await.expect("send keys");
    }

    /// The element matching `css`, once it exists.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(TIMEOUT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("no element {css}: {err}"))
    }

    /// Opens `url`, logs in as `user`, and waits for the chat view.
    pub async fn log_in(&self, url: &str, user: &str, password: &str) {
        self.client.goto(url).await.expect("open the page");
        self.fill("#login-user", user).await;
        self.fill("#login-password", password).await;
        self.click("#login-submit").await;
        self.wait_for(
            "the chat view",
            "return !document.getElementById('chat-view').hidden",
            vec![],
        )
        .await;
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) {
        let png = self.client.screenshot().await.expect("screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create the screenshot folder");
        }
        std::fs::write(path, png).expect("write the screenshot");
    }

    /// Ends the session (the browser exits) and stops chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
        // Drop stops chromedriver.
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(self.driver.id());
        let _ = self.driver.wait();
    }
}

/// Stops chromedriver and every browser process it started.
fn kill_group(pid: u32) {
    // SAFETY: kill(2) with a negative pid signals the process group this
    // harness created for chromedriver; it touches no memory.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}
