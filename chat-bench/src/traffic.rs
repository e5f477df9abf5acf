//! Room traffic, the engine behind `fanout`, `rooms`, `ingest`, `login` and
//! `cluster`: many connections in many rooms, some of them sending, every
//! one of them checking that it receives each message of its room exactly
//! once and in `seq` order.
//!
//! A sender keeps at most `window` sends unacknowledged and, in fixed-rate
//! mode, follows a schedule. It also obeys a per-room credit: the room may
//! not run more than `max_lag` messages ahead of its slowest member. Without
//! that, "full speed" would only measure how fast the server can fill its
//! 4096-frame outboxes before it closes slow readers with 1013.
//!
//! Latency is publish-to-receive: a message's text starts with the time it
//! was sent (microseconds on this process's clock, shared by every
//! connection) and the `send` id is that same time, so an `ack` gives the
//! send-to-commit latency without a lookup. Latencies are counted in the
//! phase their message was *sent* in.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::client::{self, classify, Incoming, Target, Ws};
use crate::procs::ProcSample;

/// Phases a run can measure separately (e.g. quiet, then under a flood).
pub const MAX_PHASES: usize = 4;
/// Frames handled per wake-up before the connection task yields.
const DRAIN_BATCH: usize = 64;
/// How long the end of a run waits for the last messages to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The shape of the traffic.
#[derive(Clone, Debug)]
pub struct TrafficSpec {
    /// Rooms, each with `members` connections of which the first `senders`
    /// send.
    pub rooms: usize,
    pub members: usize,
    pub senders: usize,
    /// Unacknowledged sends one sender may have.
    pub window: u64,
    /// Total messages a second over all senders; `None`: as fast as the
    /// window and the credit allow.
    pub rate: Option<f64>,
    /// Bytes of text per message (at least the timestamp).
    pub size: usize,
    /// How far a room may run ahead of its slowest member.
    pub max_lag: u64,
    /// Accounts the connections share (each connection still logs in).
    pub accounts: usize,
    /// Loopback source addresses to spread connections over.
    pub sources: usize,
    /// Connections being set up at once.
    pub connect_concurrency: usize,
    /// Every this many operations of a sender, one is an edit of its last
    /// acked message or a reaction to it (alternately) instead of a send;
    /// 0: sends only.
    pub change_every: u64,
}

/// Which server each connection goes to: `(room, member, is_sender)` to an
/// index into the targets.
pub type Placement = Arc<dyn Fn(usize, usize, bool) -> usize + Send + Sync>;

/// A latency histogram in microseconds, up to a minute.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

/// A latency in microseconds as one sample (at least 1, as the histogram
/// takes them; past `u32::MAX` µs, 71 minutes, it is clamped anyway).
fn sample(micros: u64) -> u32 {
    u32::try_from(micros.max(1)).unwrap_or(u32::MAX)
}

/// Records every sample into `histogram` (past its range, at its top).
fn record_all(histogram: &mut Histogram<u64>, samples: &[u32]) {
    for &micros in samples {
        histogram.saturating_record(u64::from(micros));
    }
}

struct Member {
    received: AtomicU64,
    /// The connection closed or failed: no longer counted for credit.
    dead: AtomicBool,
    /// Sends without their ack yet (senders only).
    inflight: AtomicU64,
}

struct Room {
    name: String,
    /// Sends made into the room (refused ones are taken back).
    sent: AtomicU64,
    /// Sends and changes acked (an edit or reaction is acked by its answer).
    acked: AtomicU64,
    /// Of those, the edits and reactions.
    changes_acked: AtomicU64,
    /// Messages every live member has received.
    floor: AtomicU64,
    credit: Notify,
    members: Vec<Arc<Member>>,
}

/// Shared by every connection task of a run.
struct Shared {
    epoch: Instant,
    window: u64,
    /// Messages a second per sender as `f64` bits; 0: full speed. Changed by
    /// [`Traffic::set_rate`], which also bumps `rate_epoch` so that senders
    /// restart their schedule from where they are.
    per_sender_rate: AtomicU64,
    rate_epoch: AtomicU64,
    senders: usize,
    max_lag: u64,
    change_every: u64,
    padding: String,
    /// Phase start and end, microseconds on `epoch`; 0 start: not begun.
    phase_start: [AtomicU64; MAX_PHASES],
    phase_end: [AtomicU64; MAX_PHASES],
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn phase_of(&self, sent_us: u64) -> Option<usize> {
        (0..MAX_PHASES).find(|&i| {
            let start = self.phase_start[i].load(Ordering::Relaxed);
            start != 0 && start <= sent_us && sent_us < self.phase_end[i].load(Ordering::Relaxed)
        })
    }
}

/// What one connection saw. Latencies are kept as plain samples, merged
/// into histograms once at the end: a histogram per connection (about
/// 240 KB at this range and precision) made every sample a cache miss, and
/// recording was 9% of the client's time at 250,000 deliveries/s.
struct ConnStats {
    latency: Vec<Vec<u32>>,
    ack_latency: Vec<Vec<u32>>,
    duplicates: u64,
    gaps: u64,
    error_events: u64,
    first_error: Option<String>,
    closed: Option<String>,
}

/// Totals at one instant, to turn into rates.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    pub at_us: u64,
    pub delivered: u64,
    pub acked: u64,
    pub client: ProcSample,
    pub servers: [ProcSample; 2],
}

/// One measured phase.
#[derive(Debug)]
pub struct PhaseResult {
    pub secs: f64,
    pub delivered_per_sec: f64,
    pub acked_per_sec: f64,
    pub latency: Histogram<u64>,
    pub ack_latency: Histogram<u64>,
    pub client_cores: f64,
    pub server_cores: Vec<f64>,
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct TrafficResult {
    pub phases: Vec<PhaseResult>,
    pub connections: usize,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    /// Deliveries the run expected (every acked message to every member)
    /// but did not see before the drain timeout.
    pub lost: u64,
    pub duplicates: u64,
    pub gaps: u64,
    pub error_events: u64,
    pub closed: u64,
    pub first_problem: Option<String>,
    pub setup_secs: f64,
}

/// A run in progress.
pub struct Traffic {
    shared: Arc<Shared>,
    rooms: Vec<Arc<Room>>,
    tasks: JoinSet<ConnStats>,
    go: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    exit: watch::Sender<bool>,
    server_pids: Vec<u32>,
    marks: Vec<(Snapshot, Option<Snapshot>)>,
    monitor: tokio::task::JoinHandle<()>,
    setup_secs: f64,
}

fn member_name(prefix: &str, index: usize) -> String {
    format!("{prefix}u{index}")
}

impl Traffic {
    /// Connects, logs in and joins every connection; nothing is sent until
    /// [`Traffic::go`].
    pub async fn setup(
        spec: &TrafficSpec,
        targets: &[Target],
        placement: Placement,
        prefix: &str,
        server_pids: Vec<u32>,
    ) -> Result<Traffic> {
        let started = Instant::now();
        let stamp_width = 12;
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            window: spec.window.max(1),
            per_sender_rate: AtomicU64::new(0),
            rate_epoch: AtomicU64::new(0),
            senders: spec.rooms * spec.senders.min(spec.members),
            max_lag: spec.max_lag.max(1),
            change_every: spec.change_every,
            padding: " ".to_owned() + &"x".repeat(spec.size.saturating_sub(stamp_width + 1)),
            phase_start: Default::default(),
            phase_end: Default::default(),
        });
        let rooms: Vec<Arc<Room>> = (0..spec.rooms)
            .map(|r| {
                Arc::new(Room {
                    name: format!("{prefix}r{r}"),
                    sent: AtomicU64::new(0),
                    acked: AtomicU64::new(0),
                    changes_acked: AtomicU64::new(0),
                    floor: AtomicU64::new(0),
                    credit: Notify::new(),
                    members: (0..spec.members)
                        .map(|_| {
                            Arc::new(Member {
                                received: AtomicU64::new(0),
                                dead: AtomicBool::new(false),
                                inflight: AtomicU64::new(0),
                            })
                        })
                        .collect(),
                })
            })
            .collect();

        // Wave one registers the accounts; wave two logs the rest in.
        let total = spec.rooms * spec.members;
        let accounts = spec.accounts.clamp(1, total.max(1));
        let permits = Arc::new(Semaphore::new(spec.connect_concurrency.max(1)));
        let mut sockets: Vec<Option<(Ws, u64)>> = (0..total).map(|_| None).collect();
        for wave in [0..accounts.min(total), accounts.min(total)..total] {
            let register = wave.start == 0;
            let mut connecting = JoinSet::new();
            for index in wave {
                let (room, member) = (index / spec.members, index % spec.members);
                let target =
                    targets[placement(room, member, member < spec.senders) % targets.len()].clone();
                let user = member_name(prefix, index % accounts);
                let room_name = rooms[room].name.clone();
                let permits = permits.clone();
                let sources = spec.sources;
                connecting.spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    let result = async {
                        let source = client::source_addr(index, sources);
                        // tungstenite zero-fills its whole read buffer before
                        // every read: a large one costs more than it saves.
                        let mut ws = client::connect(&target, Some(source), 8 * 1024).await?;
                        client::login(&mut ws, &user, register).await?;
                        let last_seq = client::join(&mut ws, &room_name).await?;
                        anyhow::Ok((ws, last_seq))
                    }
                    .await;
                    (index, result)
                });
            }
            while let Some(joined) = connecting.join_next().await {
                let (index, result) = joined?;
                let (ws, last_seq) = result.map_err(|e| anyhow!("connection {index}: {e:#}"))?;
                sockets[index] = Some((ws, last_seq));
            }
        }

        let (go, go_rx) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let (exit, exit_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for (index, socket) in sockets.into_iter().enumerate() {
            let Some((ws, last_seq)) = socket else {
                continue;
            };
            let (room, member) = (index / spec.members, index % spec.members);
            let conn = Conn {
                ws,
                shared: shared.clone(),
                room: rooms[room].clone(),
                me: rooms[room].members[member].clone(),
                sender: member < spec.senders,
                next_seq: last_seq + 1,
                received: 0,
                inflight: 0,
                operations: 0,
                own_seq: 0,
            };
            let (go_rx, stop_rx, exit_rx) = (go_rx.clone(), stop_rx.clone(), exit_rx.clone());
            tasks.spawn(conn.run(go_rx, stop_rx, exit_rx));
        }
        let monitor = tokio::spawn(watch_credit(rooms.clone(), exit.subscribe()));
        let traffic = Traffic {
            shared,
            rooms,
            tasks,
            go,
            stop,
            exit,
            server_pids,
            marks: Vec::new(),
            monitor,
            setup_secs: started.elapsed().as_secs_f64(),
        };
        traffic.set_rate(spec.rate);
        Ok(traffic)
    }

    /// Switches to a total rate of messages a second over all senders, or
    /// to full speed with `None`.
    pub fn set_rate(&self, total: Option<f64>) {
        let per_sender = total
            .filter(|r| *r > 0.0)
            .map_or(0, |r| (r / self.shared.senders.max(1) as f64).to_bits());
        self.shared
            .per_sender_rate
            .store(per_sender, Ordering::Relaxed);
        self.shared.rate_epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts sending.
    pub fn go(&self) {
        let _ = self.go.send(true);
    }

    fn snapshot(&self) -> Snapshot {
        let mut servers = [ProcSample::default(); 2];
        for (slot, pid) in servers.iter_mut().zip(&self.server_pids) {
            *slot = ProcSample::of(*pid).unwrap_or_default();
        }
        Snapshot {
            at_us: self.shared.now_us().max(1),
            delivered: self
                .rooms
                .iter()
                .flat_map(|r| r.members.iter())
                .map(|m| m.received.load(Ordering::Relaxed))
                .sum(),
            acked: self
                .rooms
                .iter()
                .map(|r| r.acked.load(Ordering::Relaxed))
                .sum(),
            client: ProcSample::me().unwrap_or_default(),
            servers,
        }
    }

    /// Begins the next measured phase.
    pub fn begin_phase(&mut self) {
        let index = self.marks.len();
        if index >= MAX_PHASES {
            return;
        }
        let snap = self.snapshot();
        self.shared.phase_end[index].store(u64::MAX, Ordering::Relaxed);
        self.shared.phase_start[index].store(snap.at_us, Ordering::Relaxed);
        self.marks.push((snap, None));
    }

    /// Ends the current phase; returns its delivered and acked messages a
    /// second.
    pub fn end_phase(&mut self) -> (f64, f64) {
        let snap = self.snapshot();
        let index = self.marks.len().saturating_sub(1);
        let Some(last) = self.marks.last_mut().filter(|m| m.1.is_none()) else {
            return (0.0, 0.0);
        };
        self.shared.phase_end[index].store(snap.at_us, Ordering::Relaxed);
        let start = last.0;
        last.1 = Some(snap);
        let secs = (snap.at_us.saturating_sub(start.at_us)) as f64 / 1e6;
        (
            snap.delivered.saturating_sub(start.delivered) as f64 / secs.max(1e-9),
            snap.acked.saturating_sub(start.acked) as f64 / secs.max(1e-9),
        )
    }

    /// Measures one phase of `secs`; returns its delivered and acked
    /// messages a second.
    pub async fn measure(&mut self, secs: f64) -> (f64, f64) {
        self.begin_phase();
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        self.end_phase()
    }

    /// Stops sending, waits (bounded) for every acked message to reach every
    /// member, and collects the figures.
    pub async fn finish(mut self) -> Result<TrafficResult> {
        self.end_phase();
        let _ = self.stop.send(true);
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while Instant::now() < deadline && !self.drained() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.exit.send(true);
        let mut result = TrafficResult {
            setup_secs: self.setup_secs,
            ..TrafficResult::default()
        };
        let phases = self.marks.len();
        let mut latency: Vec<Histogram<u64>> = (0..phases).map(|_| histogram()).collect();
        let mut ack_latency: Vec<Histogram<u64>> = (0..phases).map(|_| histogram()).collect();
        let joined = tokio::time::timeout(Duration::from_secs(30), async {
            let mut all = Vec::new();
            while let Some(stats) = self.tasks.join_next().await {
                all.push(stats);
            }
            all
        })
        .await
        .map_err(|_| anyhow!("connection tasks did not stop"))?;
        for stats in joined {
            let stats = stats?;
            result.connections += 1;
            for (into, from) in latency.iter_mut().zip(&stats.latency) {
                record_all(into, from);
            }
            for (into, from) in ack_latency.iter_mut().zip(&stats.ack_latency) {
                record_all(into, from);
            }
            result.duplicates += stats.duplicates;
            result.gaps += stats.gaps;
            result.error_events += stats.error_events;
            if let Some(why) = stats.closed {
                result.closed += 1;
                result.first_problem.get_or_insert(why);
            }
            if let Some(why) = stats.first_error {
                result.first_problem.get_or_insert(why);
            }
        }
        self.monitor.abort();
        for room in &self.rooms {
            let acked = room.acked.load(Ordering::Relaxed);
            result.acked += acked;
            // Acked edits and reactions deliver no message.
            let acked = acked.saturating_sub(room.changes_acked.load(Ordering::Relaxed));
            result.sent += room.sent.load(Ordering::Relaxed);
            for member in &room.members {
                let got = member.received.load(Ordering::Relaxed);
                result.delivered += got;
                result.lost += acked.saturating_sub(got);
            }
        }
        for ((start, end), (latency, ack_latency)) in
            self.marks.iter().zip(latency.into_iter().zip(ack_latency))
        {
            let Some(end) = end else { continue };
            let secs = (end.at_us.saturating_sub(start.at_us)) as f64 / 1e6;
            let per_sec = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / secs.max(1e-9);
            result.phases.push(PhaseResult {
                secs,
                delivered_per_sec: per_sec(start.delivered, end.delivered),
                acked_per_sec: per_sec(start.acked, end.acked),
                latency,
                ack_latency,
                client_cores: end.client.cores_since(&start.client),
                server_cores: (0..self.server_pids.len())
                    .map(|i| end.servers[i].cores_since(&start.servers[i]))
                    .collect(),
            });
        }
        Ok(result)
    }

    fn drained(&self) -> bool {
        self.rooms.iter().all(|room| {
            let acked = room.acked.load(Ordering::Relaxed);
            room.members.iter().all(|m| {
                m.dead.load(Ordering::Relaxed)
                    || (m.inflight.load(Ordering::Relaxed) == 0
                        && m.received.load(Ordering::Relaxed) >= acked)
            })
        })
    }
}

/// Recomputes every room's credit floor each millisecond and wakes senders
/// that wait for it.
async fn watch_credit(rooms: Vec<Arc<Room>>, mut exit: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = exit.changed() => return,
            _ = tick.tick() => {}
        }
        for room in &rooms {
            let floor = room
                .members
                .iter()
                .filter(|m| !m.dead.load(Ordering::Relaxed))
                .map(|m| m.received.load(Ordering::Relaxed))
                .min()
                .unwrap_or(u64::MAX / 2);
            if room.floor.swap(floor, Ordering::Relaxed) != floor {
                room.credit.notify_waiters();
            }
        }
    }
}

/// One connection's task.
struct Conn {
    ws: Ws,
    shared: Arc<Shared>,
    room: Arc<Room>,
    me: Arc<Member>,
    sender: bool,
    next_seq: u64,
    /// Messages received, and own sends not acked yet.
    received: u64,
    inflight: u64,
    /// Sends and changes made, to pick which ones are changes.
    operations: u64,
    /// The seq of this sender's newest acked message (0: none yet).
    own_seq: u64,
}

impl Conn {
    async fn run(
        mut self,
        mut go: watch::Receiver<bool>,
        mut stop: watch::Receiver<bool>,
        mut exit: watch::Receiver<bool>,
    ) -> ConnStats {
        let mut stats = ConnStats {
            latency: vec![Vec::new(); MAX_PHASES],
            ack_latency: vec![Vec::new(); MAX_PHASES],
            duplicates: 0,
            gaps: 0,
            error_events: 0,
            first_error: None,
            closed: None,
        };
        let started = tokio::select! {
            r = go.wait_for(|go| *go) => r.is_ok(),
            _ = exit.changed() => false,
        };
        if !started {
            return stats;
        }
        if let Err(why) = self.pump(&mut stats, &mut stop, &mut exit).await {
            self.me.dead.store(true, Ordering::Relaxed);
            stats.closed = Some(why);
        }
        stats
    }

    /// Sends and receives until told to exit; `Err` says why the
    /// connection ended early.
    async fn pump(
        &mut self,
        stats: &mut ConnStats,
        stop: &mut watch::Receiver<bool>,
        exit: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let mut sending = self.sender;
        let mut sent: u64 = 0;
        // The current rate schedule: it began at `base_at` with `base_sent`.
        let mut epoch = u64::MAX;
        let (mut base_at, mut base_sent) = (Instant::now(), 0u64);
        loop {
            if sending && *stop.borrow() {
                sending = false;
            }
            let mut wait_credit = false;
            let mut next_due = None;
            if sending {
                let mut budget = self.shared.window.saturating_sub(self.inflight);
                let now_epoch = self.shared.rate_epoch.load(Ordering::Relaxed);
                if now_epoch != epoch {
                    (epoch, base_at, base_sent) = (now_epoch, Instant::now(), sent);
                }
                let rate = f64::from_bits(self.shared.per_sender_rate.load(Ordering::Relaxed));
                if rate > 0.0 {
                    let due = base_sent + (base_at.elapsed().as_secs_f64() * rate) as u64;
                    let owed = due.saturating_sub(sent);
                    if owed <= budget {
                        budget = owed;
                        let next = (due + 1 - base_sent) as f64 / rate;
                        next_due = Some(tokio::time::Instant::from_std(
                            base_at + Duration::from_secs_f64(next),
                        ));
                    }
                }
                let room = &self.room;
                let credit = (room.floor.load(Ordering::Relaxed) + self.shared.max_lag)
                    .saturating_sub(room.sent.load(Ordering::Relaxed));
                if credit < budget {
                    budget = credit;
                    wait_credit = true;
                }
                if budget > 0 {
                    room.sent.fetch_add(budget, Ordering::Relaxed);
                    for _ in 0..budget {
                        let now = self.shared.now_us();
                        let text = format!("{now:012}{}", self.shared.padding);
                        self.operations += 1;
                        let every = self.shared.change_every;
                        let frame = if every > 0
                            && self.operations.is_multiple_of(every)
                            && self.own_seq > 0
                        {
                            // A change delivers no message: not counted as
                            // one the room's members must receive.
                            room.sent.fetch_sub(1, Ordering::Relaxed);
                            if (self.operations / every).is_multiple_of(2) {
                                client::edit_frame(&room.name, self.own_seq, &text, now)
                            } else {
                                client::react_frame(&room.name, self.own_seq, now)
                            }
                        } else {
                            client::send_frame(&room.name, &text, now)
                        };
                        self.ws
                            .feed(frame)
                            .await
                            .map_err(|e| format!("send failed: {e}"))?;
                    }
                    self.ws
                        .flush()
                        .await
                        .map_err(|e| format!("send failed: {e}"))?;
                    self.inflight += budget;
                    sent += budget;
                    self.me.inflight.store(self.inflight, Ordering::Relaxed);
                }
            }
            // The socket first: the other branches (each a waiter to register
            // and drop) are polled only when it has nothing to read.
            let frame = tokio::select! {
                biased;
                frame = self.ws.next() => frame,
                _ = exit.changed() => return Ok(()),
                _ = self.room.credit.notified(), if sending && wait_credit => continue,
                // Lazy: a Sleep is only built when there is a schedule.
                _ = async {
                    match next_due {
                        Some(due) => tokio::time::sleep_until(due).await,
                        None => std::future::pending().await,
                    }
                }, if sending && next_due.is_some() => continue,
                _ = stop.changed(), if sending => continue,
            };
            self.on_frame(frame, stats)?;
            // Whatever else is already buffered is handled without another
            // trip through `select!`; the socket's waker is registered again
            // by the next `select!`.
            for _ in 0..DRAIN_BATCH {
                match self.ws.next().now_or_never() {
                    Some(frame) => self.on_frame(frame, stats)?,
                    None => break,
                }
            }
        }
    }

    /// Counts one event from the server.
    fn on_frame(
        &mut self,
        frame: Option<Result<Message, WsError>>,
        stats: &mut ConnStats,
    ) -> Result<(), String> {
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(close))) => {
                return Err(format!("server closed the connection: {close:?}"))
            }
            Some(Ok(_)) => return Ok(()),
            Some(Err(err)) => return Err(format!("connection failed: {err}")),
            None => return Err("connection closed".into()),
        };
        match classify(&text) {
            Incoming::Message { seq, sent_us } => {
                if seq < self.next_seq {
                    stats.duplicates += 1;
                    return Ok(());
                }
                if seq > self.next_seq {
                    stats.gaps += seq - self.next_seq;
                }
                self.next_seq = seq + 1;
                self.received += 1;
                self.me.received.store(self.received, Ordering::Relaxed);
                if let Some(sent_us) = sent_us {
                    if let Some(phase) = self.shared.phase_of(sent_us) {
                        let took = self.shared.now_us().saturating_sub(sent_us);
                        stats.latency[phase].push(sample(took));
                    }
                }
            }
            Incoming::Ack { re, seq } => {
                match seq {
                    Some(seq) => self.own_seq = self.own_seq.max(seq),
                    None => {
                        self.room.changes_acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.inflight = self.inflight.saturating_sub(1);
                self.me.inflight.store(self.inflight, Ordering::Relaxed);
                self.room.acked.fetch_add(1, Ordering::Relaxed);
                if let Some(sent_us) = re {
                    if let Some(phase) = self.shared.phase_of(sent_us) {
                        let took = self.shared.now_us().saturating_sub(sent_us);
                        stats.ack_latency[phase].push(sample(took));
                    }
                }
            }
            Incoming::Error { code, re } => {
                stats.error_events += 1;
                if stats.first_error.is_none() {
                    stats.first_error = Some(format!("error event: {code}"));
                }
                if re.is_some() && self.sender {
                    // A refused send: not stored, so no one will get it.
                    self.inflight = self.inflight.saturating_sub(1);
                    self.me.inflight.store(self.inflight, Ordering::Relaxed);
                    self.room.sent.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Incoming::Other => {}
        }
        Ok(())
    }
}
