//! `login --attack`: a password-guessing flood from one address while a
//! user from another address logs in once a second.
//!
//! The attacker behaves as a real one would: `--attackers` connections
//! bound to 127.0.0.2, each keeping `--pipeline` wrong-password logins in
//! flight for the victim's account. A `busy` answer is counted and asked
//! again at once (flooding unhashed answers is the attack); when the server
//! closes a connection (1008 after three failures) or refuses one with HTTP
//! 503 (more than its per-address connection limit), the attacker comes
//! back, after a short pause for a 503. The server runs with its own
//! per-address limits, never `--max-connections-per-ip 0`: those limits
//! are what this measures.
//!
//! The victim logs in from 127.0.0.1 on a fresh connection once a second:
//! a few times before the flood (the baseline), during the whole flood and
//! for `--after` seconds after it. Each login is timed from connect to
//! `welcome`; every one must succeed.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use chat_proto::{ClientEvent, Request, ServerEvent};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::client::{self, Target};
use crate::login::LoginArgs;
use crate::procs::{ProcSample, ServerOptions};
use crate::report::Report;
use crate::setup::{prefix, Servers};

/// Where the attack comes from, and where the victim logs in from.
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const VICTIM: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
/// Longest one victim login may take before it counts as failed: far past
/// the 1 s target, short enough that a stuck login does not stall the run.
const VICTIM_TIMEOUT: Duration = Duration::from_secs(10);
/// Victim logins before the flood, for what "normal" is.
const BASELINE_LOGINS: usize = 3;

/// What the attackers saw, over all their connections.
#[derive(Default)]
struct AttackCounts {
    /// Logins sent.
    attempts: AtomicU64,
    auth_failed: AtomicU64,
    busy: AtomicU64,
    /// Other error answers (none expected).
    other_errors: AtomicU64,
    /// Connections the server closed after three failed logins (1008).
    closed_failed_logins: AtomicU64,
    /// Connections the server closed because they had not logged in by its
    /// login deadline (1008 "login timeout": only `busy` answers so far).
    closed_login_timeout: AtomicU64,
    /// Connections that ended otherwise while the flood lasted.
    closed_other: AtomicU64,
    /// Connections refused with HTTP 503 (the per-address limit).
    refused_503: AtomicU64,
    /// Connects that failed otherwise.
    connect_errors: AtomicU64,
    /// Connections that completed the WebSocket handshake.
    connected: AtomicU64,
}

/// One victim login: when it started (from the flood's start, negative
/// before it), how long it took, and how often it was answered `busy`.
struct VictimLogin {
    started: f64,
    took: Result<Duration>,
    busy: u64,
}

pub async fn attack(args: LoginArgs) -> Result<()> {
    let smoke = args.common.smoke;
    let attackers = args
        .attackers
        .unwrap_or(if smoke { 10 } else { 100 })
        .max(1);
    let flood_secs = args.flood.unwrap_or(if smoke { 2.0 } else { 20.0 });
    let after_secs = args.after.unwrap_or(if smoke { 2 } else { 5 });
    let pipeline = args.pipeline.max(1);
    let servers = Servers::single_with(
        &args.common,
        ServerOptions {
            address_limits: true,
            ..Default::default()
        },
    )?;
    let target = servers.targets[0].clone();
    let server_pid = servers.pids.first().copied();

    let victim = format!("{}victim", prefix());
    let mut ws = client::connect(&target, Some(VICTIM), 4096).await?;
    client::login(&mut ws, &victim, true).await?;
    drop(ws);

    let mut baseline = Vec::new();
    for _ in 0..BASELINE_LOGINS {
        let started = Instant::now();
        let login = victim_login(&target, &victim, started, started).await;
        baseline.push(login);
        tokio::time::sleep_until(started + Duration::from_secs(1)).await;
    }

    let counts = Arc::new(AttackCounts::default());
    let flood_started = Instant::now();
    let flood_end = flood_started + Duration::from_secs_f64(flood_secs);
    let server_before = server_pid.and_then(ProcSample::of);
    let client_before = ProcSample::me();
    let mut flood = JoinSet::new();
    for _ in 0..attackers {
        let (target, victim, counts) = (target.clone(), victim.clone(), counts.clone());
        flood.spawn(attacker(target, victim, counts, pipeline, flood_end));
    }
    // Each victim login is its own task, started on the second: a slow one
    // must not push the next one later.
    let mut logins = JoinSet::new();
    let victim_secs = flood_secs.ceil() as u64 + after_secs;
    for second in 0..victim_secs {
        let at = flood_started + Duration::from_secs(second);
        let (target, victim) = (target.clone(), victim.clone());
        logins.spawn(async move {
            tokio::time::sleep_until(at).await;
            victim_login(&target, &victim, at, flood_started).await
        });
    }
    tokio::time::sleep_until(flood_end).await;
    let server_flood = server_pid.and_then(ProcSample::of);
    let client_flood = ProcSample::me();
    // The attackers stop at `flood_end` by themselves; anything still
    // stuck in a connect is cut off here.
    let stopped = tokio::time::timeout(Duration::from_secs(2), async {
        while flood.join_next().await.is_some() {}
    })
    .await;
    if stopped.is_err() {
        flood.abort_all();
    }
    let mut victim_logins = Vec::new();
    while let Some(login) = logins.join_next().await {
        victim_logins.push(login?);
    }
    let server_after = server_pid.and_then(ProcSample::of);
    victim_logins.sort_by(|a, b| a.started.total_cmp(&b.started));

    let mut report = Report::new("login");
    report.set("mode", "attack");
    report.set("attackers", attackers);
    report.set("pipeline", pipeline);
    report.set("flood_secs", flood_secs);
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let baseline_ms: Vec<f64> = baseline
        .iter()
        .filter_map(|l| l.took.as_ref().ok().map(ms))
        .collect();
    let normal_ms = baseline_ms.iter().copied().fold(0.0, f64::max);
    report.set("victim_baseline_max_ms", normal_ms);
    let mut during = Histogram::<u64>::new(3)?;
    let (mut failures, mut busy) = (0u64, 0u64);
    let mut first_failure = None;
    for login in baseline.iter().chain(&victim_logins) {
        busy += login.busy;
        if let Err(err) = &login.took {
            failures += 1;
            first_failure.get_or_insert_with(|| format!("{:.1} s: {err:#}", login.started));
        }
    }
    let mut after = Vec::new();
    for login in &victim_logins {
        let Ok(took) = &login.took else { continue };
        if login.started < flood_secs {
            during.record(took.as_micros() as u64)?;
        } else {
            after.push((login.started - flood_secs, ms(took)));
        }
    }
    report.latency("victim_flood", &during);
    for (i, (_, took)) in after.iter().enumerate() {
        report.set(format!("victim_after_{}s_ms", i + 1), *took);
    }
    report.set("victim_logins", victim_logins.len() + baseline.len());
    report.set("victim_failures", failures);
    report.set("victim_busy", busy);
    report.set("victim_first_failure", first_failure.unwrap_or_default());

    let attempts = counts.attempts.load(Ordering::Relaxed);
    report.set("attack_attempts", attempts);
    report.set("attack_attempts_per_sec", attempts as f64 / flood_secs);
    report.set(
        "attack_auth_failed",
        counts.auth_failed.load(Ordering::Relaxed),
    );
    report.set("attack_busy", counts.busy.load(Ordering::Relaxed));
    report.set(
        "attack_other_errors",
        counts.other_errors.load(Ordering::Relaxed),
    );
    report.set(
        "attack_connections",
        counts.connected.load(Ordering::Relaxed),
    );
    report.set(
        "attack_closed_failed_logins",
        counts.closed_failed_logins.load(Ordering::Relaxed),
    );
    report.set(
        "attack_closed_login_timeout",
        counts.closed_login_timeout.load(Ordering::Relaxed),
    );
    report.set(
        "attack_closed_other",
        counts.closed_other.load(Ordering::Relaxed),
    );
    report.set(
        "attack_refused_503",
        counts.refused_503.load(Ordering::Relaxed),
    );
    report.set(
        "attack_connect_errors",
        counts.connect_errors.load(Ordering::Relaxed),
    );
    if let (Some(before), Some(flood)) = (server_before, server_flood) {
        report.set("flood_server_cores", flood.cores_since(&before));
        if let Some(after) = server_after {
            report.set("after_server_cores", after.cores_since(&flood));
        }
    }
    if let (Some(before), Some(flood)) = (client_before, client_flood) {
        report.set("flood_client_cores", flood.cores_since(&before));
    }
    // The targets: p99 under 1 s during the flood, and logins back
    // to normal (at most twice the worst baseline login, and never under
    // 100 ms for that bound) from the second second after it on.
    let p99_ms = during.value_at_quantile(0.99) as f64 / 1000.0;
    let bound = (2.0 * normal_ms).max(100.0);
    let recovered = after
        .iter()
        .filter(|(since_end, _)| *since_end >= 1.0)
        .all(|(_, took)| *took <= bound);
    report.set(
        "target_flood_p99_under_1s",
        failures == 0 && p99_ms < 1000.0,
    );
    report.set("target_normal_within_2s", failures == 0 && recovered);
    servers.stop()?;
    report.print();
    Ok(())
}

/// One attacker connection after another until `end`.
async fn attacker(
    target: Target,
    user: String,
    counts: Arc<AttackCounts>,
    pipeline: usize,
    end: Instant,
) {
    while Instant::now() < end {
        match tokio::time::timeout_at(end, client::connect(&target, Some(ATTACKER), 4096)).await {
            Err(_) => return,
            Ok(Ok(ws)) => {
                counts.connected.fetch_add(1, Ordering::Relaxed);
                guess(ws, &user, &counts, pipeline, end).await;
            }
            Ok(Err(err)) => {
                let refused = matches!(
                    err.downcast_ref::<tungstenite::Error>(),
                    Some(tungstenite::Error::Http(response)) if response.status() == 503
                );
                let counter = if refused {
                    &counts.refused_503
                } else {
                    &counts.connect_errors
                };
                counter.fetch_add(1, Ordering::Relaxed);
                // A short jittered pause, as a script retrying a refused
                // connection would; without it the refusals are a busy loop
                // of TCP handshakes on the bench's own cores.
                let pause = Duration::from_millis(50 + rand::random::<u64>() % 50);
                tokio::time::sleep_until((Instant::now() + pause).min(end)).await;
            }
        }
    }
}

/// Keeps `pipeline` wrong-password logins in flight on `ws` until the
/// server closes it or `end` passes (then it is dropped: the server drops
/// the logins still waiting).
async fn guess(
    mut ws: client::Ws,
    user: &str,
    counts: &AttackCounts,
    pipeline: usize,
    end: Instant,
) {
    let frame = Message::text(chat_proto::encode(&Request::new(ClientEvent::Login {
        user: user.into(),
        password: "not-the-password".into(),
    })));
    for _ in 0..pipeline {
        if ws.feed(frame.clone()).await.is_err() {
            counts.closed_other.fetch_add(1, Ordering::Relaxed);
            return;
        }
        counts.attempts.fetch_add(1, Ordering::Relaxed);
    }
    if ws.flush().await.is_err() {
        counts.closed_other.fetch_add(1, Ordering::Relaxed);
        return;
    }
    loop {
        let text = match tokio::time::timeout_at(end, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                let counter = match frame.reason.as_str() {
                    "too many failed logins" => &counts.closed_failed_logins,
                    "login timeout" => &counts.closed_login_timeout,
                    _ => &counts.closed_other,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Some(Ok(Message::Close(None)) | Err(_)) | None) => {
                counts.closed_other.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Some(Ok(_))) => continue,
        };
        let counter = match client::classify(&text) {
            client::Incoming::Error {
                code: "auth_failed",
                ..
            } => &counts.auth_failed,
            client::Incoming::Error { code: "busy", .. } => &counts.busy,
            _ => &counts.other_errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // Each answer frees a slot of the pipeline: guess again at once.
        if Instant::now() >= end {
            return;
        }
        if ws.send(frame.clone()).await.is_err() {
            counts.closed_other.fetch_add(1, Ordering::Relaxed);
            return;
        }
        counts.attempts.fetch_add(1, Ordering::Relaxed);
    }
}

/// The victim's login started at `at`: connect from 127.0.0.1, log in,
/// wait for `welcome`. A `busy` answer is asked again after a short pause,
/// as the real client does, and counted.
async fn victim_login(target: &Target, user: &str, at: Instant, zero: Instant) -> VictimLogin {
    let started = if at >= zero {
        (at - zero).as_secs_f64()
    } else {
        -(zero - at).as_secs_f64()
    };
    let mut busy = 0;
    let clock = Instant::now();
    let attempt = async {
        let mut ws = client::connect(target, Some(VICTIM), 4096).await?;
        loop {
            client::send(
                &mut ws,
                &Request::new(ClientEvent::Login {
                    user: user.into(),
                    password: client::PASSWORD.into(),
                }),
            )
            .await?;
            let answer = client::until(&mut ws, |event| match event {
                ServerEvent::Welcome { .. } => Some(None),
                ServerEvent::Error { code, message, .. } => Some(Some((code, message))),
                _ => None,
            })
            .await?;
            match answer {
                None => return Ok::<_, anyhow::Error>(()),
                Some((code, _)) if code.as_str() == "busy" => {
                    busy += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Some((code, message)) => bail!("login refused: {code}: {message}"),
            }
        }
    };
    let took = match tokio::time::timeout(VICTIM_TIMEOUT, attempt).await {
        Ok(Ok(())) => Ok(clock.elapsed()),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(anyhow!("no welcome within {VICTIM_TIMEOUT:?}")),
    };
    VictimLogin {
        started,
        took,
        busy,
    }
}
