//! `connections`: many logged-in idle connections. How long they take to
//! connect (argon2 logins dominate), how much server memory each costs, and
//! whether every one of them is still alive and answering at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use chat_proto::{ClientEvent, Request, ServerEvent};
use clap::Args;
use futures_util::StreamExt;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::client::{self, Target};
use crate::procs::{raise_nofile_limit, ProcSample};
use crate::report::Report;
use crate::setup::{prefix, Common, Servers};

#[derive(Args, Clone, Debug)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open [default: 10000; smoke: 50].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Accounts the connections share (each connection still logs in).
    #[arg(long, default_value_t = 100)]
    pub accounts: usize,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Loopback source addresses to spread connections over (127.0.0.1…).
    #[arg(long, default_value_t = 4)]
    pub sources: usize,
    /// Seconds to let the server settle before reading its memory.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
}

/// One idle connection: answers the server's pings by reading, and on
/// request proves it is logged in with a `ping`.
async fn hold(
    mut ws: client::Ws,
    mut check: watch::Receiver<bool>,
    alive: Arc<AtomicU64>,
) -> Result<()> {
    let mut checked = false;
    loop {
        tokio::select! {
            changed = check.changed(), if !checked => {
                if changed.is_err() {
                    return Ok(());
                }
                checked = true;
                client::send(&mut ws, &Request::with_id(ClientEvent::Ping, "alive")).await?;
                client::until(&mut ws, |e| matches!(e, ServerEvent::Pong { .. }).then_some(())).await?;
                alive.fetch_add(1, Ordering::Relaxed);
            }
            frame = ws.next() => match frame {
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err.into()),
                None => return Err(anyhow!("closed by the server")),
            },
        }
    }
}

pub async fn connections(args: ConnectionsArgs) -> Result<()> {
    let total = args
        .connections
        .unwrap_or(if args.common.smoke { 50 } else { 10_000 });
    let nofile = raise_nofile_limit();
    let servers = Servers::single(&args.common)?;
    let target: Target = servers.targets[0].clone();
    let prefix = prefix();
    // Give a fresh server a moment so its baseline is its idle footprint.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = servers.rss_bytes();
    let client_before = ProcSample::me();

    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let accounts = args.accounts.clamp(1, total.max(1));
    let (check_tx, check_rx) = watch::channel(false);
    let alive = Arc::new(AtomicU64::new(0));
    let mut holders = JoinSet::new();
    let mut failures = 0u64;
    let mut first_failure = None;
    for wave in [0..accounts.min(total), accounts.min(total)..total] {
        let register = wave.start == 0;
        let mut connecting = JoinSet::new();
        for index in wave {
            let (target, permits) = (target.clone(), permits.clone());
            let user = format!("{prefix}u{}", index % accounts);
            let source = client::source_addr(index, args.sources);
            connecting.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let mut ws = client::connect(&target, Some(source), 4 * 1024).await?;
                client::login(&mut ws, &user, register).await?;
                anyhow::Ok(ws)
            });
        }
        while let Some(done) = connecting.join_next().await {
            match done? {
                Ok(ws) => {
                    holders.spawn(hold(ws, check_rx.clone(), alive.clone()));
                }
                Err(err) => {
                    failures += 1;
                    first_failure.get_or_insert_with(|| format!("{err:#}"));
                }
            }
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let connected = holders.len();
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let after = servers.rss_bytes();
    let client_after = ProcSample::me();

    let _ = check_tx.send(true);
    let deadline = Instant::now() + Duration::from_secs(60);
    while (alive.load(Ordering::Relaxed) as usize) < connected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alive = alive.load(Ordering::Relaxed);
    drop(check_tx);
    holders.abort_all();

    let mut report = Report::new("connections");
    if let Some(backend) = servers.backend() {
        report.set("backend", backend);
    }
    report.set("requested", total);
    report.set("connected", connected);
    report.set("alive_at_end", alive);
    report.set("failed", failures);
    report.set("first_failure", first_failure.unwrap_or_default());
    report.set("accounts", accounts);
    report.set("source_addresses", args.sources);
    report.set("nofile_limit", nofile);
    report.set("connect_secs", connect_secs);
    report.set(
        "connects_per_sec",
        connected as f64 / connect_secs.max(1e-9),
    );
    if let (Some(before), Some(after)) = (before, after) {
        let per = after.saturating_sub(before) as f64 / connected.max(1) as f64;
        report.set("server_rss_before_mib", before as f64 / 1048576.0);
        report.set("server_rss_after_mib", after as f64 / 1048576.0);
        report.set("server_rss_per_connection_kib", per / 1024.0);
    }
    if let (Some(before), Some(after)) = (client_before, client_after) {
        let per = after.rss_bytes.saturating_sub(before.rss_bytes) as f64 / connected.max(1) as f64;
        report.set("client_rss_per_connection_kib", per / 1024.0);
    }
    servers.stop()?;
    report.print();
    Ok(())
}
