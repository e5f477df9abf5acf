//! `search`: latency of 20-result searches over a million messages in ten
//! rooms.
//!
//! The text is made of words drawn from a fixed vocabulary of 5,000
//! made-up words with a Zipf distribution (a few words are in most
//! messages, most words in few), as chat is. Each search asks for one
//! whole word, one word's first four letters (a prefix, which matches many
//! words), or two words; the words are drawn with the same distribution, so
//! common words are searched for most.
//!
//! Seeded directly like `history` (see [`crate::history::Seeded`]): rows
//! exactly as the server stores them, `gid` in storing order and the
//! full-text index filled (and marked so); `--backend postgres` copies the file with
//! `migrate-db`, which indexes it there.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use chat_proto::{ClientEvent, Request, ServerEvent};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_tungstenite::tungstenite::Message;

use crate::client;
use crate::history::Seeded;
use crate::procs::ProcSample;
use crate::report::Report;
use crate::setup::{prefix, Common};
use crate::traffic::histogram;

#[derive(Args, Clone, Debug)]
pub struct SearchArgs {
    #[command(flatten)]
    pub common: Common,
    /// Messages in all [default: 1000000; smoke: 5000].
    #[arg(long)]
    pub messages: Option<u64>,
    /// Rooms they are spread over.
    #[arg(long, default_value_t = 10)]
    pub rooms: u64,
    /// Searches made [default: 2000; smoke: 100].
    #[arg(long)]
    pub requests: Option<u64>,
    /// Results per search.
    #[arg(long, default_value_t = 20)]
    pub limit: u64,
    /// Connections searching at once (each waits for its answer).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
}

/// Words in the vocabulary, and words per message.
const VOCABULARY: usize = 5000;
const WORDS_PER_MESSAGE: usize = 8;

/// The made-up words, most common first: syllables of a consonant and a
/// vowel, one to five of them, from a fixed seed (the same every run).
/// Shorter words are more common, as in every language.
fn vocabulary() -> Vec<String> {
    let consonants = b"bcdfghjklmnprstvz";
    let vowels = b"aeiou";
    let mut rng = StdRng::seed_from_u64(7);
    let mut words = std::collections::BTreeSet::new();
    let mut ordered = Vec::with_capacity(VOCABULARY);
    while ordered.len() < VOCABULARY {
        let syllables = rng.gen_range(1..=5);
        let word: String = (0..syllables)
            .flat_map(|_| {
                [
                    consonants[rng.gen_range(0..consonants.len())] as char,
                    vowels[rng.gen_range(0..vowels.len())] as char,
                ]
            })
            .collect();
        if words.insert(word.clone()) {
            ordered.push(word);
        }
    }
    ordered.sort_by_key(String::len);
    ordered
}

/// Draws word ranks with a Zipf distribution (weight 1/rank).
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Zipf {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|rank| {
                total += 1.0 / rank as f64;
                total
            })
            .collect();
        Zipf { cumulative }
    }

    fn draw(&self, rng: &mut impl Rng) -> usize {
        let total = *self.cumulative.last().unwrap_or(&1.0);
        let x = rng.gen_range(0.0..total);
        self.cumulative
            .partition_point(|&c| c < x)
            .min(self.cumulative.len() - 1)
    }
}

/// Inserts `count` messages, round robin over `rooms` new rooms named
/// `{prefix}{n}`, indexed for search as the server does.
fn seed(db: &Path, prefix: &str, rooms: u64, count: u64) -> Result<()> {
    let words = vocabulary();
    let zipf = Zipf::new(words.len());
    let mut rng = StdRng::seed_from_u64(11);
    let mut conn = rusqlite::Connection::open(db)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let tx = conn.transaction()?;
    let ts0: i64 = 1_764_000_000_000;
    let mut ids = Vec::new();
    for n in 0..rooms {
        tx.execute(
            "INSERT INTO rooms (name, last_seq, last_activity) VALUES (?1, 0, ?2)",
            rusqlite::params![format!("{prefix}{n}"), ts0],
        )?;
        ids.push(tx.last_insert_rowid());
    }
    {
        let mut insert = tx.prepare(
            "INSERT INTO messages (room_id, seq, user, text, ts, gid) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut index =
            tx.prepare("INSERT INTO messages_fts (rowid, text, room) VALUES (?1, ?2, ?3)")?;
        let mut seqs = vec![0u64; ids.len()];
        for gid in 1..=count {
            let at = ((gid - 1) % rooms) as usize;
            seqs[at] += 1;
            let text: Vec<&str> = (0..WORDS_PER_MESSAGE)
                .map(|_| words[zipf.draw(&mut rng)].as_str())
                .collect();
            let text = text.join(" ");
            let user = format!("user{}", gid % 97);
            insert.execute(rusqlite::params![
                ids[at],
                seqs[at],
                user,
                text,
                ts0 + gid as i64,
                gid
            ])?;
            index.execute(rusqlite::params![gid, text, format!("r{}", ids[at])])?;
        }
        tx.execute("UPDATE search_indexed SET upto = ?1", [count])?;
        for (id, last) in ids.iter().zip(&seqs) {
            tx.execute(
                "UPDATE rooms SET last_seq = ?2, last_activity = ?3 WHERE id = ?1",
                rusqlite::params![id, last, ts0 + count as i64],
            )?;
        }
    }
    tx.commit()?;
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
    Ok(())
}

pub async fn search(args: SearchArgs) -> Result<()> {
    if args.common.url.is_some() {
        bail!("search seeds its own database: run it without --url");
    }
    let smoke = args.common.smoke;
    let count = args
        .messages
        .unwrap_or(if smoke { 5000 } else { 1_000_000 });
    let requests = args.requests.unwrap_or(if smoke { 100 } else { 2000 });
    let rooms = args.rooms.clamp(1, count.max(1));
    let limit = args.limit.clamp(1, chat_proto::limits::MAX_SEARCH as u64);
    let mut report = Report::new("search");
    let room_prefix = format!("{}s", prefix());
    let seeded = {
        let room_prefix = room_prefix.clone();
        Seeded::start(
            &args.common,
            &mut report,
            format!("{room_prefix}0"),
            move |file| seed(file, &room_prefix, rooms, count),
        )
        .await?
    };
    let user = format!("{}searcher", prefix());
    let mut searchers = Vec::new();
    for i in 0..args.concurrency.max(1) {
        let mut ws = client::connect(&seeded.target, None, 64 * 1024).await?;
        client::login(&mut ws, &user, i == 0).await?;
        searchers.push(ws);
    }
    let words = std::sync::Arc::new(vocabulary());
    let server_before = seeded.pid.and_then(ProcSample::of);
    let client_before = ProcSample::me();
    let started = Instant::now();
    let per_searcher = requests.div_ceil(searchers.len() as u64);
    let mut tasks = tokio::task::JoinSet::new();
    for (n, mut ws) in searchers.into_iter().enumerate() {
        let words = words.clone();
        tasks.spawn(async move {
            let zipf = Zipf::new(words.len());
            let mut rng = StdRng::seed_from_u64(100 + n as u64);
            let mut latency = histogram();
            // By kind of query: a whole word, a 4-letter prefix, two words.
            let mut kinds = [histogram(), histogram(), histogram()];
            let (mut results, mut empty) = (0u64, 0u64);
            for i in 0..per_searcher {
                let first = &words[zipf.draw(&mut rng)];
                let query = match i % 3 {
                    0 => first.clone(),
                    1 => first[..4.min(first.len())].to_owned(),
                    _ => format!("{first} {}", words[zipf.draw(&mut rng)]),
                };
                let request = Request::with_id(
                    ClientEvent::Search {
                        query,
                        room: None,
                        limit: Some(limit),
                        cursor: None,
                    },
                    "q",
                );
                let asked = Instant::now();
                ws.send(Message::text(chat_proto::encode(&request))).await?;
                let text = loop {
                    let frame = tokio::time::timeout(client::STEP_TIMEOUT, ws.next())
                        .await
                        .map_err(|_| anyhow!("no search results within the timeout"))?;
                    match frame {
                        Some(Ok(Message::Text(text))) => break text,
                        Some(Ok(_)) => continue,
                        Some(Err(err)) => return Err(err.into()),
                        None => bail!("connection closed"),
                    }
                };
                let took = (asked.elapsed().as_micros() as u64).max(1);
                latency.saturating_record(took);
                kinds[(i % 3) as usize].saturating_record(took);
                match chat_proto::decode_server(&text) {
                    Ok(ServerEvent::SearchResults { messages, .. }) => {
                        results += messages.len() as u64;
                        if messages.is_empty() {
                            empty += 1;
                        }
                    }
                    _ => bail!("not search results: {text}"),
                }
            }
            anyhow::Ok((latency, kinds, results, empty))
        });
    }
    let mut latency = histogram();
    let mut kinds = [histogram(), histogram(), histogram()];
    let (mut results, mut empty) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let (h, k, r, e) = done??;
        latency.add(&h).ok();
        for (all, one) in kinds.iter_mut().zip(&k) {
            all.add(one).ok();
        }
        results += r;
        empty += e;
    }
    let secs = started.elapsed().as_secs_f64();
    report.set("messages", count);
    report.set("rooms", rooms);
    report.set("limit", limit);
    report.set("concurrency", args.concurrency.max(1));
    report.set("searches", latency.len());
    report.set(
        "results_per_search",
        results as f64 / latency.len().max(1) as f64,
    );
    report.set("empty_searches", empty);
    report.set("searches_per_sec", latency.len() as f64 / secs.max(1e-9));
    report.latency("search_latency", &latency);
    for (name, h) in ["word", "prefix4", "two_words"].iter().zip(&kinds) {
        report.set(
            format!("{name}_p99_ms"),
            h.value_at_quantile(0.99) as f64 / 1000.0,
        );
    }
    if let (Some(after), Some(before)) = (ProcSample::me(), client_before) {
        report.set("client_cores", after.cores_since(&before));
    }
    if let (Some(after), Some(before)) = (seeded.pid.and_then(ProcSample::of), server_before) {
        report.set("server_cores", after.cores_since(&before));
        report.set("server_rss_mib", after.rss_bytes as f64 / 1048576.0);
    }
    seeded.finish(&mut report)?;
    report.print();
    Ok(())
}
