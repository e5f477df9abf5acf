//! The scenarios built on [`crate::traffic`]: `fanout` (one big room),
//! `rooms` (many small rooms, everyone talking), `ingest` (acked sends into
//! many rooms: the store's group commit) and `cluster` (fan-out across two
//! nodes through Redis against one node). Each runs on SQLite or on a
//! private PostgreSQL (`--backend`); on PostgreSQL the report adds the
//! database's own counters over the first measured phase (commits, rows
//! and WAL flushes a second), which say how many sends share a commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;

use crate::report::Report;
use crate::setup::{prefix, Common, Servers};
use crate::traffic::{Traffic, TrafficResult, TrafficSpec};

/// Options of the room-traffic scenarios. Defaults differ per scenario.
#[derive(Args, Clone, Debug)]
pub struct LoadArgs {
    #[command(flatten)]
    pub common: Common,
    /// Members of each room.
    #[arg(long)]
    pub clients: Option<usize>,
    /// Rooms.
    #[arg(long)]
    pub rooms: Option<usize>,
    /// Senders per room (the first members).
    #[arg(long)]
    pub senders: Option<usize>,
    /// Unacknowledged sends per sender.
    #[arg(long)]
    pub window: Option<u64>,
    /// Fixed total send rate (messages/s over all senders) instead of full
    /// speed.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Also measure at half the full-speed rate (fanout, cluster).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub half_rate: bool,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Messages a room may run ahead of its slowest member.
    #[arg(long, default_value_t = 1000)]
    pub max_lag: u64,
    /// Seconds measured (per phase).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds of traffic before measuring.
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Accounts the connections share.
    #[arg(long)]
    pub accounts: Option<usize>,
    /// Loopback source addresses to spread connections over.
    #[arg(long, default_value_t = 1)]
    pub sources: usize,
    /// Share of a sender's operations that are edits of its last message
    /// or reactions to it, alternately (e.g. 0.1), instead of sends.
    #[arg(long, default_value_t = 0.0)]
    pub changes: f64,
}

/// Per-scenario defaults: (rooms, clients, senders, window, accounts).
struct Shape {
    rooms: usize,
    clients: usize,
    senders: usize,
    window: u64,
}

impl LoadArgs {
    fn spec(&self, full: Shape, smoke: Shape) -> TrafficSpec {
        let shape = if self.common.smoke { smoke } else { full };
        let clients = self.clients.unwrap_or(shape.clients).max(1);
        TrafficSpec {
            rooms: self.rooms.unwrap_or(shape.rooms).max(1),
            members: clients,
            senders: self.senders.unwrap_or(shape.senders).clamp(1, clients),
            window: self.window.unwrap_or(shape.window),
            rate: self.rate,
            size: self.size,
            max_lag: self.max_lag,
            // Every connection logs in (argon2 each); shared accounts only
            // save the registrations.
            accounts: self.accounts.unwrap_or(100),
            sources: self.sources,
            connect_concurrency: 64,
            change_every: if self.changes > 0.0 {
                (1.0 / self.changes.min(1.0)).round() as u64
            } else {
                0
            },
        }
    }

    fn duration(&self) -> f64 {
        self.duration
            .unwrap_or(if self.common.smoke { 1.0 } else { 10.0 })
    }

    fn warmup(&self) -> f64 {
        self.warmup
            .unwrap_or(if self.common.smoke { 0.3 } else { 2.0 })
    }
}

/// What [`run`] measured.
struct Run {
    result: TrafficResult,
    /// The name of each phase, in order.
    names: Vec<&'static str>,
    /// PostgreSQL's counters over the first phase, as rates, and with
    /// `--pg-profile` what its busiest backend was doing (empty on SQLite).
    db_rates: Vec<(String, f64)>,
}

/// Adds the figures of a finished run to the report under `tag`.
fn report_run(report: &mut Report, tag: &str, run: &Run) {
    let (result, names) = (&run.result, &run.names);
    let key = |k: &str| {
        if tag.is_empty() {
            k.to_owned()
        } else {
            format!("{tag}_{k}")
        }
    };
    for (phase, name) in result.phases.iter().zip(names) {
        let p = |k: &str| key(&format!("{name}_{k}"));
        report.set(p("secs"), phase.secs);
        report.set(p("delivered_per_sec"), phase.delivered_per_sec);
        report.set(p("acked_per_sec"), phase.acked_per_sec);
        report.latency(&p("latency"), &phase.latency);
        report.latency(&p("ack_latency"), &phase.ack_latency);
        report.set(p("client_cores"), phase.client_cores);
        for (i, cores) in phase.server_cores.iter().enumerate() {
            let suffix = if phase.server_cores.len() > 1 {
                format!("server{i}_cores")
            } else {
                "server_cores".into()
            };
            report.set(p(&suffix), *cores);
        }
    }
    report.set(key("connections"), result.connections);
    report.set(key("setup_secs"), result.setup_secs);
    report.set(key("sent"), result.sent);
    report.set(key("acked"), result.acked);
    report.set(key("delivered"), result.delivered);
    report.set(key("lost"), result.lost);
    report.set(key("duplicates"), result.duplicates);
    report.set(key("gaps"), result.gaps);
    report.set(key("error_events"), result.error_events);
    report.set(key("closed"), result.closed);
    report.set(
        key("first_problem"),
        result.first_problem.clone().unwrap_or_default(),
    );
    let phase = names.first().copied().unwrap_or("full");
    for (name, value) in &run.db_rates {
        report.set(key(&format!("{phase}_{name}")), *value);
    }
}

/// Runs traffic with `spec`: full speed (or `--rate`), then optionally at
/// half the full-speed rate.
async fn run(
    args: &LoadArgs,
    spec: &TrafficSpec,
    servers: &Servers,
    placement: crate::traffic::Placement,
    half: bool,
) -> Result<Run> {
    let mut traffic = Traffic::setup(
        spec,
        &servers.targets,
        placement,
        &prefix(),
        servers.pids.clone(),
    )
    .await?;
    traffic.go();
    tokio::time::sleep(Duration::from_secs_f64(args.warmup())).await;
    let db_before = servers.db_stats();
    let sampler = servers.db_sampler();
    let measured = Instant::now();
    let (_, acked_per_sec) = traffic.measure(args.duration()).await;
    let mut db_rates = match (servers.db_stats(), db_before) {
        (Some(after), Some(before)) => after.rates_since(&before, measured.elapsed().as_secs_f64()),
        _ => Vec::new(),
    };
    if let Some(sampler) = sampler {
        match tokio::task::spawn_blocking(move || sampler.finish()).await? {
            Ok(shares) => db_rates.extend(
                shares
                    .into_iter()
                    .map(|(state, share)| (format!("pg_writer_{state}"), share)),
            ),
            Err(err) => eprintln!("chat-bench: {err:#}"),
        }
    }
    let mut names = vec![if spec.rate.is_some() { "rate" } else { "full" }];
    if half && spec.rate.is_none() {
        traffic.set_rate(Some((acked_per_sec / 2.0).max(1.0)));
        // Let the queues of the full-speed phase drain first.
        tokio::time::sleep(Duration::from_secs_f64(args.warmup().max(1.0))).await;
        traffic.measure(args.duration()).await;
        names.push("half");
    }
    Ok(Run {
        result: traffic.finish().await?,
        names,
        db_rates,
    })
}

fn header(report: &mut Report, spec: &TrafficSpec, servers: &Servers) {
    if let Some(backend) = servers.backend() {
        report.set("backend", backend);
    }
    report.set("rooms", spec.rooms);
    report.set("members_per_room", spec.members);
    report.set("senders_per_room", spec.senders);
    report.set("window", spec.window);
    report.set(
        "mode",
        match spec.rate {
            Some(rate) => format!("fixed rate {rate} msg/s"),
            None => "full speed".into(),
        },
    );
    report.set("text_bytes", spec.size);
}

fn same_node() -> crate::traffic::Placement {
    Arc::new(|_, _, _| 0)
}

/// `fanout`: C clients in one room.
pub async fn fanout(args: LoadArgs) -> Result<()> {
    let spec = args.spec(
        Shape {
            rooms: 1,
            clients: 1000,
            senders: 4,
            window: 64,
        },
        Shape {
            rooms: 1,
            clients: 10,
            senders: 2,
            window: 16,
        },
    );
    let servers = Servers::single(&args.common)?;
    let measured = run(&args, &spec, &servers, same_node(), args.half_rate).await?;
    let mut report = Report::new("fanout");
    header(&mut report, &spec, &servers);
    report_run(&mut report, "", &measured);
    finish(report, servers, "")
}

/// `rooms`: many rooms of a few members, every member sending.
pub async fn rooms(args: LoadArgs) -> Result<()> {
    let spec = args.spec(
        Shape {
            rooms: 100,
            clients: 10,
            senders: 10,
            window: 8,
        },
        Shape {
            rooms: 4,
            clients: 3,
            senders: 3,
            window: 4,
        },
    );
    let servers = Servers::single(&args.common)?;
    let measured = run(&args, &spec, &servers, same_node(), false).await?;
    let mut report = Report::new("rooms");
    header(&mut report, &spec, &servers);
    report_run(&mut report, "", &measured);
    finish(report, servers, "")
}

/// `ingest`: acked messages a second from many senders in many rooms.
pub async fn ingest(args: LoadArgs) -> Result<()> {
    let spec = args.spec(
        Shape {
            rooms: 100,
            clients: 1,
            senders: 1,
            window: 64,
        },
        Shape {
            rooms: 4,
            clients: 1,
            senders: 1,
            window: 16,
        },
    );
    let servers = Servers::single(&args.common)?;
    let measured = run(&args, &spec, &servers, same_node(), false).await?;
    let mut report = Report::new("ingest");
    header(&mut report, &spec, &servers);
    report.set("change_share", args.changes);
    report_run(&mut report, "", &measured);
    finish(report, servers, "")
}

/// `cluster`: one room's fan-out on one node, then with the senders on one
/// node and every receiver on the other.
pub async fn cluster(args: LoadArgs) -> Result<()> {
    let spec = args.spec(
        Shape {
            rooms: 1,
            clients: 200,
            senders: 2,
            window: 64,
        },
        Shape {
            rooms: 1,
            clients: 6,
            senders: 2,
            window: 16,
        },
    );
    let mut report = Report::new("cluster");

    let one = Servers::cluster(&args.common, 1)?;
    header(&mut report, &spec, &one);
    let measured = run(&args, &spec, &one, same_node(), args.half_rate).await?;
    report_run(&mut report, "one_node", &measured);
    if let Some(database) = &one.database {
        database.report_profile(&mut report, "one_node_");
    }
    let result = measured.result;
    let one_full = result.phases.first().map_or(0.0, |p| p.delivered_per_sec);
    let one_p99 = result
        .phases
        .get(1)
        .map(|p| p.latency.value_at_quantile(0.99));
    one.stop()?;

    let two = Servers::cluster(&args.common, 2)?;
    let across: crate::traffic::Placement =
        Arc::new(|_, _, is_sender| if is_sender { 0 } else { 1 });
    let measured = run(&args, &spec, &two, across, args.half_rate).await?;
    report_run(&mut report, "two_nodes", &measured);
    let result = measured.result;
    let two_full = result.phases.first().map_or(0.0, |p| p.delivered_per_sec);
    let two_p99 = result
        .phases
        .get(1)
        .map(|p| p.latency.value_at_quantile(0.99));
    if one_full > 0.0 {
        report.set("cross_node_throughput_ratio", two_full / one_full);
    }
    if let (Some(one), Some(two)) = (one_p99, two_p99) {
        report.set(
            "cross_node_added_p99_ms",
            (two as f64 - one as f64) / 1000.0,
        );
    }
    finish(report, two, "two_nodes_")
}

/// Prints the report after the servers' last figures: memory, and with
/// `--pg-profile` the top statements (keys prefixed with `profile_tag`).
fn finish(mut report: Report, servers: Servers, profile_tag: &str) -> Result<()> {
    if let Some(database) = &servers.database {
        database.report_profile(&mut report, profile_tag);
    }
    if let Some(rss) = servers.rss_bytes() {
        report.set("server_rss_mib", rss as f64 / (1024.0 * 1024.0));
    }
    servers.stop()?;
    report.print();
    Ok(())
}
