//! `login`: a flood of logins while connected users chat. Measures logins a
//! second, the server's CPU while hashing, and the chatting users' message
//! latency when quiet and during the flood.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use tokio::task::JoinSet;

use crate::client;
use crate::procs::ProcSample;
use crate::report::Report;
use crate::setup::{prefix, Common, Servers};
use crate::traffic::{Traffic, TrafficSpec};

#[derive(Args, Clone, Debug)]
pub struct LoginArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connected users chatting [default: 100; smoke: 10].
    #[arg(long)]
    pub chatters: Option<usize>,
    /// Chatters per room.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Messages a second over all chatters.
    #[arg(long, default_value_t = 200.0)]
    pub chat_rate: f64,
    /// Connections logging in at once during the flood.
    #[arg(long, default_value_t = 32)]
    pub flood_concurrency: usize,
    /// Seconds of each phase (quiet, then flood) [default: 10; smoke: 1].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Instead: a wrong-password flood from 127.0.0.2 while a user from
    /// 127.0.0.1 logs in once a second (see `attack.rs`); the server keeps
    /// its per-address limits.
    #[arg(long)]
    pub attack: bool,
    /// With --attack: attacker connections [default: 100; smoke: 10].
    #[arg(long)]
    pub attackers: Option<usize>,
    /// With --attack: wrong-password logins each attacker connection keeps
    /// in flight.
    #[arg(long, default_value_t = 4)]
    pub pipeline: usize,
    /// With --attack: seconds of flood [default: 20; smoke: 2].
    #[arg(long)]
    pub flood: Option<f64>,
    /// With --attack: seconds the victim keeps logging in after the flood
    /// [default: 5; smoke: 2].
    #[arg(long)]
    pub after: Option<u64>,
}

pub async fn login(args: LoginArgs) -> Result<()> {
    if args.attack {
        return crate::attack::attack(args).await;
    }
    let smoke = args.common.smoke;
    let chatters = args.chatters.unwrap_or(if smoke { 10 } else { 100 }).max(1);
    let room_size = args.room_size.clamp(1, chatters);
    let secs = args.duration.unwrap_or(if smoke { 1.0 } else { 10.0 });
    let servers = Servers::single(&args.common)?;
    let spec = TrafficSpec {
        rooms: chatters.div_ceil(room_size),
        members: room_size,
        senders: room_size,
        window: 16,
        rate: Some(args.chat_rate),
        size: 64,
        max_lag: 1000,
        accounts: chatters,
        sources: 1,
        connect_concurrency: 16,
        change_every: 0,
    };
    let prefix = prefix();
    let mut traffic = Traffic::setup(
        &spec,
        &servers.targets,
        Arc::new(|_, _, _| 0),
        &prefix,
        servers.pids.clone(),
    )
    .await?;
    // The account the flood logs in to.
    let flooder = format!("{prefix}flood");
    let mut ws = client::connect(&servers.targets[0], None, 4096).await?;
    client::login(&mut ws, &flooder, true).await?;
    drop(ws);

    traffic.go();
    tokio::time::sleep(Duration::from_secs_f64(secs.min(2.0) / 2.0)).await;
    traffic.measure(secs).await;

    let logins = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut flood = JoinSet::new();
    let server_before = servers.pids.first().and_then(|p| ProcSample::of(*p));
    traffic.begin_phase();
    let flood_started = Instant::now();
    for i in 0..args.flood_concurrency.max(1) {
        let (target, user) = (servers.targets[0].clone(), flooder.clone());
        let (logins, failures) = (logins.clone(), failures.clone());
        flood.spawn(async move {
            while Instant::now() < deadline {
                let source = client::source_addr(i, 4);
                let attempt = async {
                    let mut ws = client::connect(&target, Some(source), 4096).await?;
                    client::login(&mut ws, &user, false).await
                };
                match attempt.await {
                    Ok(()) => logins.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while flood.join_next().await.is_some() {}
    let flood_secs = flood_started.elapsed().as_secs_f64();
    traffic.end_phase();
    let server_after = servers.pids.first().and_then(|p| ProcSample::of(*p));
    let result = traffic.finish().await?;

    let mut report = Report::new("login");
    if let Some(backend) = servers.backend() {
        report.set("backend", backend);
    }
    report.set("chatters", chatters);
    report.set("chat_rate", args.chat_rate);
    report.set("flood_concurrency", args.flood_concurrency);
    let logins = logins.load(Ordering::Relaxed);
    report.set("logins", logins);
    report.set("login_failures", failures.load(Ordering::Relaxed));
    report.set("logins_per_sec", logins as f64 / flood_secs.max(1e-9));
    if let (Some(after), Some(before)) = (server_after, server_before) {
        report.set("flood_server_cores", after.cores_since(&before));
    }
    let p99 = |i: usize| {
        result
            .phases
            .get(i)
            .map(|p| p.latency.value_at_quantile(0.99) as f64 / 1000.0)
    };
    if let Some(quiet) = result.phases.first() {
        report.latency("quiet_latency", &quiet.latency);
        report.set(
            "quiet_server_cores",
            quiet.server_cores.first().copied().unwrap_or(0.0),
        );
    }
    if let Some(flooded) = result.phases.get(1) {
        report.latency("flood_latency", &flooded.latency);
        report.set("flood_client_cores", flooded.client_cores);
    }
    if let (Some(quiet), Some(flooded)) = (p99(0), p99(1)) {
        report.set("p99_flood_over_quiet", flooded / quiet.max(1e-3));
    }
    report.set("chat_sent", result.sent);
    report.set("chat_acked", result.acked);
    report.set("chat_delivered", result.delivered);
    report.set("lost", result.lost);
    report.set("duplicates", result.duplicates);
    report.set("gaps", result.gaps);
    report.set("error_events", result.error_events);
    report.set("closed", result.closed);
    report.set(
        "first_problem",
        result.first_problem.clone().unwrap_or_default(),
    );
    if let Some(rss) = servers.rss_bytes() {
        report.set("server_rss_mib", rss as f64 / 1048576.0);
    }
    servers.stop()?;
    report.print();
    Ok(())
}
