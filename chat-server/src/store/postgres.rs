//! The PostgreSQL backend: one database shared by every node of a cluster.
//!
//! **Group commit.** Every write a client waits for (a send, an edit,
//! deletion or reaction, creating or deleting a room, registering) is
//! queued to one writer task per node. The writer takes everything queued,
//! up to [`MAX_BATCH`] jobs, and commits it in one transaction: a commit
//! costs a WAL flush and a round trip, so under load hundreds of sends share
//! one, while an idle server still commits a lone send at once (nothing
//! waits for a batch to fill).
//!
//! **One round trip a batch** (two with changes). The whole transaction
//! goes out as one pipeline: `BEGIN`, one statement that locks the batch's
//! rooms, one statement that stores every message of the batch, a
//! statement or two per rare job, `COMMIT`. tokio-postgres writes them back
//! to back and PostgreSQL answers them in order, so the writer waits for the
//! network once. That works because no statement needs an answer to an
//! earlier one on this side: the database itself computes each message's
//! `seq` (see [`STORE_MESSAGES`]). A batch with edits, deletions or
//! reactions stops after the appends to read the messages they change, and
//! works them out here (see [`changes`]); their writes, a few statements for
//! all of them, go out with the rare jobs and `COMMIT`. Acks wait for
//! `COMMIT`'s answer.
//!
//! **How `seq` stays contiguous.** A room's messages are numbered from
//! `rooms.last_seq`, which the same statement that stores them bumps by
//! their count (`UPDATE … RETURNING` feeding the `INSERT`). The `UPDATE`
//! holds the room's row lock until `COMMIT`: a writer on another node
//! appending to the same room waits, then sees the bumped value. Numbers are
//! handed out in commit order, no two transactions get the same one, and a
//! transaction that rolls back gives its numbers back with its `UPDATE`.
//!
//! **How `rev` stays contiguous.** A change moves its room's `rev` by one
//! with the same row lock, and is logged in `room_changes` at the room's
//! position then (`last_seq`, `rev`); a message records the room's `rev`
//! when it was stored. Every event of a room thus has an index
//! `seq + rev` one more than the one before, in commit order.
//!
//! **Lock order.** A batch may touch many rooms, and so may another node's.
//! The batch's first statement locks all the rooms it appends to, changes
//! or deletes in id order (`ORDER BY id FOR UPDATE`), so two writers take
//! the rows they share in the same order and cannot deadlock on them (a
//! change's reaction and log rows live under its room's lock); new room and
//! user names are inserted in name order for the same reason. A deadlock
//! that happens anyway (a room created and deleted by two nodes at once) rolls
//! the transaction back, and the batch is retried.
//!
//! **The commit feed.** After `COMMIT`, the stored messages, changes and
//! room deletions go on the feed in the order they ran, then the jobs are
//! answered, as in the SQLite backend.
//!
//! **Search** is PostgreSQL's full-text search over a GIN index (see
//! migration 5 and [`SEARCH`]); pages go newest first by `gid`, a number
//! every message takes from a sequence when stored.
//!
//! **One bad job.** A batch that fails on one job's data (a constraint or
//! a value PostgreSQL refuses) is split in halves and committed again until
//! that job stands alone: it gets the error, the others commit.
//!
//! **Reads and rare writes** (logins, history, gap fills, searches, room
//! lists, account changes from the admin commands, `migrate-db` imports)
//! take a connection from the pool directly: each is one statement, atomic
//! on its own and reading one snapshot (a page of messages with their
//! reactions, a room's changes with its `rev`).
//!
//! **Losing the database.** Connecting, waiting for a pooled connection and
//! every answer are bounded in time (and the server aborts statements that
//! run too long), so an operation fails with [`StoreError::Unavailable`]
//! instead of hanging. The writer answers a failed batch and goes on (and
//! when that took a full timeout, answers the jobs queued behind it at
//! once rather than have each wait for its own); the pool makes new
//! connections once the database is back. The outage is logged once when
//! it starts and once when it ends, not per request.

use std::collections::VecDeque;
use std::error::Error as _;
use std::future::{poll_fn, Future};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chat_proto::MessageRecord;
use deadpool_postgres::tokio_postgres::error::SqlState;
use deadpool_postgres::tokio_postgres::types::ToSql;
use deadpool_postgres::tokio_postgres::{self, Client, Config, NoTls, Row, Statement};
use deadpool_postgres::{
    ClientWrapper, Connect, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod,
    Runtime, TimeoutType,
};
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::jobs::{answer, Outcome, WriteJob};
use super::{
    now_ms, AccountRoomRecord, AccountRoomRow, Answer, Appended, Change, Changed, Commit,
    Durability, HistoryPage, Position, RoomEvent, RoomHead, RoomId, RoomRecord, SearchPage,
    SearchQuery, SessionId, Store, StoreError, Stored, UserRecord, MAX_REACTIONS_PER_MESSAGE,
};

type PgError = tokio_postgres::Error;

#[path = "postgres_changes.rs"]
mod changes;
#[path = "postgres_search.rs"]
mod search;
use changes::{Head, Refusal, Request, Target, Verdict, Writes};

/// Most jobs folded into one transaction.
const MAX_BATCH: usize = 1024;
/// Connections kept to the database (the writer holds one).
const POOL_SIZE: usize = 16;
/// Reaching the server, per address tried (unless the URL says otherwise).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Waiting for a pooled connection when all are busy.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// Opening a new connection: connecting plus authentication.
const POOL_CREATE: Duration = Duration::from_secs(10);
/// Checking a pooled connection before reuse (no I/O with `Fast`).
const POOL_RECYCLE: Duration = Duration::from_secs(2);
/// The server cancels any statement running longer, so that a stuck
/// statement cannot hold row locks the other nodes wait for.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The server ends a session left idle inside a transaction (a node that
/// vanished mid-transaction) and releases its locks.
const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long this side waits for answers: past [`STATEMENT_TIMEOUT`], so it
/// only fires when the server or the network went silent.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// Deleting a room deletes its history, which may be millions of rows: a
/// batch that deletes gets this much time instead.
const DELETE_TIMEOUT: Duration = Duration::from_secs(120);
/// Waiting for another node's schema upgrade, and running ours.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);
/// TCP keepalive probes find a dead idle connection in about a minute.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;
/// Unacknowledged data on a connection for this long kills it.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);
/// A batch that took this long to find the database unreachable makes the
/// writer answer the jobs queued behind it at once (see [`Writer::run`]).
const SLOW_FAILURE: Duration = Duration::from_secs(1);
/// Tries for a batch rolled back by a deadlock or serialization failure.
const MAX_ATTEMPTS: u32 = 5;
/// The advisory lock held while the schema is upgraded ("chatserv").
const SCHEMA_LOCK: i64 = 0x6368_6174_7365_7276;

// ---- Schema. ----

/// Schema changes, in order: version `n` is `MIGRATIONS[n - 1]`, and
/// `schema_version` records which ran. Append only; never edit a released
/// one.
const MIGRATIONS: &[&str] = &[
    // Room ids come from an identity and are never reused: a room deleted
    // and created again under the same name is another room to delivery.
    // Every append rewrites its room's row; the free space left on each page
    // (fillfactor) lets PostgreSQL update it in place (HOT) without touching
    // the indexes. Messages are keyed (room_id, seq): a history page is one
    // range scan of the primary key, whatever the size of the table. No
    // foreign key: deleting a room deletes its messages explicitly, and an
    // append already holds the room's row lock.
    "CREATE TABLE users (
         id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         name text NOT NULL UNIQUE,
         password_hash text NOT NULL,
         admin boolean NOT NULL DEFAULT false,
         created_at bigint NOT NULL
     );
     CREATE TABLE rooms (
         id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         name text NOT NULL UNIQUE,
         last_seq bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
         last_activity bigint NOT NULL
     ) WITH (fillfactor = 50);
     CREATE TABLE messages (
         room_id bigint NOT NULL,
         seq bigint NOT NULL,
         \"user\" text NOT NULL,
         text text NOT NULL,
         ts bigint NOT NULL,
         PRIMARY KEY (room_id, seq)
     );",
    // A counter of account changes (password, admin flag, deletion), kept
    // by a trigger so that every writer bumps it, including the admin
    // commands: every node polls it to act on its live sessions.
    "CREATE TABLE account_changes (
         id integer PRIMARY KEY CHECK (id = 1),
         version bigint NOT NULL
     );
     INSERT INTO account_changes (id, version) VALUES (1, 0);
     CREATE FUNCTION bump_account_changes() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
         UPDATE account_changes SET version = version + 1 WHERE id = 1;
         RETURN NULL;
     END $$;
     CREATE TRIGGER users_changed AFTER UPDATE OR DELETE ON users
         FOR EACH STATEMENT EXECUTE FUNCTION bump_account_changes();",
    // The account's rooms and read markers (protocol part 2). Rows go with
    // their account or room through the foreign keys, whoever deletes (the
    // server, the admin commands). The primary key serves an account's
    // lookups; the index, the cascade from a deleted room.
    "CREATE TABLE account_rooms (
         user_name text NOT NULL
             CONSTRAINT account_rooms_user_fkey REFERENCES users (name) ON DELETE CASCADE,
         room_id bigint NOT NULL
             CONSTRAINT account_rooms_room_fkey REFERENCES rooms (id) ON DELETE CASCADE,
         read_seq bigint NOT NULL DEFAULT 0 CHECK (read_seq >= 0),
         PRIMARY KEY (user_name, room_id)
     );
     CREATE INDEX account_rooms_by_room ON account_rooms (room_id);",
    // Private rooms and direct messages: their members are the accounts
    // whose rooms hold them.
    "ALTER TABLE rooms ADD COLUMN private boolean NOT NULL DEFAULT false;",
    // Messages that live (protocol part 2): edits, deletions, reactions and
    // replies, each change one step of the room's `rev`, logged in
    // `room_changes` (what resume and gap fills read back); and full-text
    // search.
    //
    // `gid` numbers every message in storing order across rooms: search
    // pages go newest first by it and use it as their cursor. Existing
    // messages are numbered by time here; new ones take the identity's next
    // value (a sequence: nodes never wait for each other to number, and a
    // rolled back batch only leaves a gap, which a cursor does not mind).
    //
    // Reactions and the change log are written only under the room's row
    // lock, like messages, but unlike messages (which are deleted
    // explicitly, see DELETE_ROOM) they go with their room through the
    // foreign keys: one range delete per room, whoever deletes it.
    //
    // Search: a GIN index over the words of the text with the `simple`
    // configuration (no stemming, no stop words: a word matches as typed,
    // as a prefix). ASCII punctuation becomes a space first so that the
    // words are runs of letters and digits, as the protocol splits a query
    // (the parser would otherwise keep `example.com` or `3.14` whole). The
    // words are a stored generated column: a plan that walks `gid`
    // backwards and checks each message (the cheapest for common words)
    // then reads them instead of parsing the text again per row. Only
    // messages not deleted are indexed; a deleted one's text, and so its
    // words, are empty too.
    "ALTER TABLE rooms ADD COLUMN rev bigint NOT NULL DEFAULT 0 CHECK (rev >= 0);
     ALTER TABLE messages
         ADD COLUMN rev bigint NOT NULL DEFAULT 0,
         ADD COLUMN reply_to bigint,
         ADD COLUMN edited_ts bigint,
         ADD COLUMN deleted boolean NOT NULL DEFAULT false,
         ADD COLUMN gid bigint;
     UPDATE messages SET gid = numbered.n
         FROM (SELECT room_id, seq, row_number() OVER (ORDER BY ts, room_id, seq) AS n
                 FROM messages) AS numbered
         WHERE messages.room_id = numbered.room_id AND messages.seq = numbered.seq;
     ALTER TABLE messages ALTER COLUMN gid SET NOT NULL;
     ALTER TABLE messages ALTER COLUMN gid ADD GENERATED ALWAYS AS IDENTITY;
     SELECT setval(pg_get_serial_sequence('messages', 'gid'), coalesce(max(gid), 0) + 1, false)
         FROM messages;
     CREATE UNIQUE INDEX messages_by_gid ON messages (gid);
     ALTER TABLE messages ADD COLUMN words tsvector GENERATED ALWAYS AS
         (to_tsvector('simple', regexp_replace(text, '[!-/:-@[-`{-~]+', ' ', 'g'))) STORED;
     CREATE INDEX messages_search ON messages USING gin (words) WHERE NOT deleted;
     CREATE TABLE reactions (
         room_id bigint NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
         seq bigint NOT NULL,
         emoji text NOT NULL,
         user_name text NOT NULL,
         rev bigint NOT NULL,
         PRIMARY KEY (room_id, seq, emoji, user_name)
     );
     CREATE TABLE room_changes (
         room_id bigint NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
         rev bigint NOT NULL,
         at_seq bigint NOT NULL,
         seq bigint NOT NULL,
         kind text NOT NULL CHECK (kind IN ('edit', 'delete', 'react')),
         user_name text NOT NULL,
         text text,
         emoji text,
         turned_on boolean,
         ts bigint NOT NULL,
         PRIMARY KEY (room_id, rev)
     );",
];

/// The words a message `m` is searched by: the column the
/// `messages_search` index covers (migration 5).
macro_rules! search_document {
    () => {
        "m.words"
    };
}

/// The foreign key from `account_rooms` to `rooms` (see [`MARK_READ`]).
const ACCOUNT_ROOMS_ROOM_FKEY: &str = "account_rooms_room_fkey";
/// The foreign key from `account_rooms` to `users` (see
/// [`CREATE_PRIVATE_ROOM`]).
const ACCOUNT_ROOMS_USER_FKEY: &str = "account_rooms_user_fkey";

/// Why the schema could not be brought up to date.
enum MigrateError {
    Db(PgError),
    /// The database was upgraded by a newer build of the server.
    Newer {
        current: usize,
        known: usize,
    },
}

impl From<PgError> for MigrateError {
    fn from(err: PgError) -> MigrateError {
        MigrateError::Db(err)
    }
}

impl MigrateError {
    fn reason(&self) -> String {
        match self {
            MigrateError::Db(err) => reason(err),
            MigrateError::Newer { current, known } => format!(
                "its schema version {current} is newer than this server knows ({known}): \
                 upgrade chat-server"
            ),
        }
    }
}

/// Brings the schema up to date. Runs under an advisory lock, so that nodes
/// starting together upgrade one after the other. The lock belongs to the
/// session, which the caller ends afterwards: even a failed upgrade cannot
/// leave it held.
async fn migrate(conn: &mut ClientWrapper) -> Result<(), MigrateError> {
    conn.batch_execute(&format!(
        "SET statement_timeout = {}",
        MIGRATION_TIMEOUT.as_millis()
    ))
    .await?;
    conn.execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    conn.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version integer PRIMARY KEY,
             applied_at bigint NOT NULL
         )",
    )
    .await?;
    let current: i32 = conn
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await?
        .try_get(0)?;
    let current = usize::try_from(current).unwrap_or(0);
    let known = MIGRATIONS.len();
    if current > known {
        // Tables changed by a newer build may not mean what this one thinks.
        return Err(MigrateError::Newer { current, known });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
        let tx = conn.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
            &[&version, &now_ms()],
        )
        .await?;
        tx.commit().await?;
        tracing::debug!(version, "upgraded the PostgreSQL schema");
    }
    conn.execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])
        .await?;
    Ok(())
}

// ---- Connecting. ----

/// The URL without its password, for logs and messages.
///
/// Covers the forms tokio-postgres reads: `postgres://user:password@host`,
/// a `password=` query parameter, and `key=value` strings. A password
/// should be percent-encoded, but one that is not may hold `@`, `/` or `?`:
/// the credentials are taken to end at the last `@` (of the part before the
/// query, when that part has one), so an odd URL is over-redacted rather
/// than leaked.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_key_values(url);
    };
    let before_query = rest.split('?').next().unwrap_or(rest);
    let at = before_query.rfind('@').or_else(|| rest.rfind('@'));
    let rest = match at.map(|at| (&rest[..at], &rest[at + 1..])) {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, password)) if !password.is_empty() => format!("{user}:***@{host}"),
            _ => rest.to_owned(),
        },
        None => rest.to_owned(),
    };
    let rest = match rest.split_once('?') {
        Some((base, query)) => {
            let query: Vec<&str> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some(("password", _)) => "password=***",
                    _ => pair,
                })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        None => rest,
    };
    format!("{scheme}://{rest}")
}

/// `password=…` in a `key=value` connection string, quoted or not.
fn redact_key_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("password") {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let starts_word = before.is_empty() || before.ends_with(char::is_whitespace);
        let after_key = &from["password".len()..];
        let value = after_key.trim_start();
        match value.strip_prefix('=') {
            Some(value) if starts_word => {
                out.push_str("password=***");
                let value = value.trim_start();
                rest = match value.strip_prefix('\'') {
                    // A quoted value ends at the first unescaped quote.
                    Some(quoted) => {
                        let mut escaped = false;
                        let end = quoted
                            .char_indices()
                            .find(|&(_, c)| {
                                let closes = c == '\'' && !escaped;
                                escaped = c == '\\' && !escaped;
                                closes
                            })
                            .map_or(quoted.len(), |(i, _)| i + 1);
                        &quoted[end..]
                    }
                    None => {
                        let end = value.find(char::is_whitespace).unwrap_or(value.len());
                        &value[end..]
                    }
                };
            }
            _ => {
                out.push_str("password");
                rest = after_key;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The server settings every session starts with; the URL's own `options`
/// come after them, so they win.
fn session_options(from_url: Option<&str>, durability: Durability) -> String {
    let mut ours = format!(
        "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
        STATEMENT_TIMEOUT.as_millis(),
        IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
    );
    if durability == Durability::Relaxed {
        // COMMIT returns before its WAL reaches the disk: a crash of
        // PostgreSQL's machine may lose the newest acked messages, but
        // never leaves a hole or half a batch.
        ours.push_str(" -c synchronous_commit=off");
    }
    match from_url.map(str::trim).filter(|o| !o.is_empty()) {
        Some(theirs) => format!("{ours} {theirs}"),
        None => ours,
    }
}

/// Reads the URL and adds the timeouts that keep a lost database from
/// hanging anything.
fn configure(url: &str, durability: Durability) -> Result<Config, StoreError> {
    let mut config: Config = url.parse().map_err(|err: PgError| {
        let why = err
            .source()
            .map_or_else(|| err.to_string(), |s| s.to_string());
        StoreError::Open(format!("invalid PostgreSQL URL {}: {why}", redact(url)))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("chat-server");
    }
    let options = session_options(config.get_options(), durability);
    config
        .options(options)
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_RETRIES);
    Ok(config)
}

/// Opens connections for the pool. deadpool's own connector logs every
/// connection that ends with an error as a warning, which during an outage
/// is one line per pooled connection; the store reports the outage once
/// instead.
struct Connector;

impl Connect for Connector {
    fn connect(&self, config: &Config) -> BoxFuture<'_, Result<(Client, JoinHandle<()>), PgError>> {
        let config = config.clone();
        Box::pin(async move {
            let (client, connection) = config.connect(NoTls).await?;
            let task = tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(error = %reason(&err), "PostgreSQL connection ended");
                }
            });
            Ok((client, task))
        })
    }
}

// ---- Errors. ----

/// One line saying why a database call failed, without the driver's
/// wrapping ("db error", "error connecting to server").
fn reason(err: &PgError) -> String {
    if let Some(db) = err.as_db_error() {
        return db.message().to_owned();
    }
    let mut cause = err.source();
    while let Some(inner) = cause {
        if let Some(io) = inner.downcast_ref::<io::Error>() {
            return io_reason(io);
        }
        cause = inner.source();
    }
    match err.source() {
        Some(inner) => format!("{err}: {inner}"),
        None => err.to_string(),
    }
}

/// "connection refused" rather than "Connection refused (os error 111)".
fn io_reason(err: &io::Error) -> String {
    use io::ErrorKind::*;
    match err.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut | BrokenPipe
        | UnexpectedEof | HostUnreachable | NetworkUnreachable => err.kind().to_string(),
        _ => err.to_string(),
    }
}

/// The connection, not the statement, failed: the server went away, shut
/// down, or could not be reached.
fn is_connection_error(err: &PgError) -> bool {
    match err.code() {
        Some(code) => code.code().starts_with("08") || code.code().starts_with("57P"),
        None => {
            let mut cause = err.source();
            while let Some(inner) = cause {
                if inner.is::<io::Error>() {
                    return true;
                }
                cause = inner.source();
            }
            err.is_closed()
        }
    }
}

/// The transaction was rolled back by a conflict with another one; running
/// it again may well succeed.
fn is_retryable(code: &SqlState) -> bool {
    *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE
}

/// Data exceptions and integrity violations come from one job's values
/// (say, a row that should not be there), not from the database's state:
/// worth isolating that job so the rest of its batch still commits.
fn is_job_specific(code: &SqlState) -> bool {
    code.code().starts_with("22") || code.code().starts_with("23")
}

/// How an operation failed, before it is put in the chat's words.
enum Failure {
    /// The database answered with an error.
    Db(PgError),
    /// The database could not be reached or did not answer in time.
    Lost(String),
    /// A refusal in the chat's words (`NoSuchRoom`, `Closed`, …).
    Refused(StoreError),
}

impl From<PgError> for Failure {
    fn from(err: PgError) -> Failure {
        Failure::Db(err)
    }
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Failure {
        Failure::Refused(err)
    }
}

fn pool_failure(err: PoolError) -> Failure {
    match err {
        PoolError::Closed => Failure::Refused(StoreError::Closed),
        PoolError::Timeout(TimeoutType::Wait) => {
            Failure::Lost("every database connection stayed busy".into())
        }
        PoolError::Timeout(TimeoutType::Create) => {
            Failure::Lost("timed out connecting to the server".into())
        }
        PoolError::Timeout(TimeoutType::Recycle) => {
            Failure::Lost("timed out checking a connection".into())
        }
        PoolError::Backend(err) => Failure::Lost(reason(&err)),
        other => Failure::Lost(other.to_string()),
    }
}

/// Whether the database is reachable, so that an outage is logged when it
/// starts and when it ends rather than once per request.
struct Health {
    /// Where the database is, password redacted.
    shown: String,
    down: AtomicBool,
}

impl Health {
    /// An operation got an answer from the database.
    fn up(&self) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::AcqRel) {
            tracing::info!(db = %self.shown, "PostgreSQL is back");
        }
    }

    fn lost(&self, why: &str) {
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::error!(db = %self.shown, "lost PostgreSQL: {why}");
        }
    }

    /// Puts a failure in the chat's words, logging it once: an outage by
    /// [`Health::lost`], any other database error here.
    fn settle(&self, failure: Failure) -> StoreError {
        match failure {
            Failure::Refused(err) => {
                self.up();
                err
            }
            Failure::Lost(why) => {
                self.lost(&why);
                StoreError::Unavailable(why)
            }
            Failure::Db(err) => {
                let why = reason(&err);
                if is_connection_error(&err) {
                    self.lost(&why);
                } else {
                    self.up();
                    let code = err.code().map_or("", SqlState::code);
                    tracing::error!(code, error = %why, "PostgreSQL error");
                }
                StoreError::Unavailable(why)
            }
        }
    }
}

/// What a text with a NUL character gets: PostgreSQL cannot store it.
fn no_nul() -> StoreError {
    StoreError::Unavailable("PostgreSQL cannot store NUL characters".into())
}

/// `u64` counters are `bigint` columns; they never get near the limit.
fn to_db(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_db(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

// ---- Statements. ----

/// Locks, in id order, every room the batch appends to or changes ($1) or
/// deletes ($2): writers on several nodes then take shared rooms in the
/// same order.
const LOCK_ROOMS: &str = "SELECT id FROM rooms
     WHERE id = ANY($1::bigint[]) OR name = ANY($2::text[])
     ORDER BY id
     FOR UPDATE";

/// Stores every message of a batch. `$1`: the time; `$2`..`$5`: per
/// message, in queue order, its room, author, text and the message it
/// replies to. A reply to a message that is unknown or deleted is refused
/// (`ok` false) and takes no number. Each room's counter moves by its count
/// of the rest, which take the numbers just below the new value in queue
/// order, and the room's `rev` as their position's. A room that no longer
/// exists matches no row: its messages are not stored, and its name is
/// missing from the answer (`NoSuchRoom` for those jobs). One row per
/// message, in queue order.
const STORE_MESSAGES: &str = "WITH batch AS (
         SELECT m.*, (m.reply_to IS NULL OR EXISTS (
                    SELECT 1 FROM messages AS t
                     WHERE t.room_id = m.room_id AND t.seq = m.reply_to AND NOT t.deleted)) AS ok
           FROM unnest($2::bigint[], $3::text[], $4::text[], $5::bigint[])
                WITH ORDINALITY AS m(room_id, author, body, reply_to, n)
     ), placed AS (
         SELECT b.*, row_number() OVER (PARTITION BY b.room_id ORDER BY b.n) AS place
           FROM batch AS b WHERE b.ok
     ), counts AS (
         SELECT room_id, count(*) AS n FROM placed GROUP BY room_id
     ), bumped AS (
         UPDATE rooms AS r
            SET last_seq = r.last_seq + c.n, last_activity = $1::bigint
           FROM counts AS c
          WHERE r.id = c.room_id
      RETURNING r.id, r.name, r.last_seq - c.n AS base, r.rev
     ), stored AS (
         INSERT INTO messages (room_id, seq, \"user\", text, ts, rev, reply_to)
         SELECT p.room_id, b.base + p.place, p.author, p.body, $1::bigint, b.rev, p.reply_to
           FROM placed AS p JOIN bumped AS b ON b.id = p.room_id
          ORDER BY p.n
     )
     SELECT b.ok, r.name, r.base + p.place, r.rev
       FROM batch AS b
       LEFT JOIN placed AS p ON p.n = b.n
       LEFT JOIN bumped AS r ON r.id = p.room_id
      ORDER BY b.n";

/// The messages a batch changes ($1 rooms, $2 seqs), those not deleted:
/// author and reactions (two arrays, NULL when none). Read after the rooms
/// are locked; see [`changes`].
const READ_TARGETS: &str = "SELECT m.room_id, m.seq, m.\"user\", rx.emoji, rx.users
       FROM unnest($1::bigint[], $2::bigint[]) AS t(room_id, seq)
       JOIN messages AS m ON m.room_id = t.room_id AND m.seq = t.seq
      CROSS JOIN LATERAL (
            SELECT array_agg(x.emoji) AS emoji, array_agg(x.user_name) AS users
              FROM reactions AS x WHERE x.room_id = m.room_id AND x.seq = m.seq
      ) AS rx
      WHERE NOT m.deleted";

/// The rooms a batch changes, after its appends.
const READ_HEADS: &str = "SELECT id, name, last_seq, rev FROM rooms WHERE id = ANY($1::bigint[])";

/// The writes of a batch's changes ([`changes::Writes`]), one statement a
/// table and kind, run in this order: the rooms' new `rev`s; messages
/// edited or deleted (`edited_ts` kept unless given); reaction rows that go
/// (a NULL emoji: all of the message), then those added, so that a row
/// turned off and on again comes back with its new `rev`; the change log;
/// then the logged edits of deleted messages lose their text, this batch's
/// included.
const SET_REVS: &str = "UPDATE rooms AS r SET rev = u.rev
       FROM unnest($1::bigint[], $2::bigint[]) AS u(id, rev)
      WHERE r.id = u.id";

const REWRITE_MESSAGES: &str = "UPDATE messages AS m
        SET text = u.text, edited_ts = coalesce(u.edited_ts, m.edited_ts), deleted = u.deleted
       FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::boolean[])
            AS u(room_id, seq, text, edited_ts, deleted)
      WHERE m.room_id = u.room_id AND m.seq = u.seq";

const DROP_REACTIONS: &str = "DELETE FROM reactions AS x
      USING unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[])
            AS u(room_id, seq, emoji, user_name)
      WHERE x.room_id = u.room_id AND x.seq = u.seq
        AND (u.emoji IS NULL OR (x.emoji = u.emoji AND x.user_name = u.user_name))";

const ADD_REACTIONS: &str = "INSERT INTO reactions (room_id, seq, emoji, user_name, rev)
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[])";

const LOG_CHANGES: &str = "INSERT INTO room_changes
            (room_id, rev, at_seq, seq, kind, user_name, text, emoji, turned_on, ts)
     SELECT u.*, $10::bigint
       FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[],
                   $6::text[], $7::text[], $8::text[], $9::boolean[])
            AS u(room_id, rev, at_seq, seq, kind, user_name, text, emoji, turned_on)";

const UNLOG_EDITS: &str = "UPDATE room_changes AS l SET text = ''
       FROM unnest($1::bigint[], $2::bigint[]) AS u(room_id, seq)
      WHERE l.room_id = u.room_id AND l.seq = u.seq AND l.kind = 'edit'";

const CREATE_ROOM: &str = "INSERT INTO rooms (name, last_activity) VALUES ($1, $2)
     ON CONFLICT (name) DO NOTHING";

/// Run as its own statement after [`CREATE_ROOM`]: a statement's snapshot
/// predates the statement, so one that also read the room would miss a
/// room another node created meanwhile (which made the insert do nothing).
const ROOM_HEAD: &str = "SELECT id, last_seq, private, rev FROM rooms WHERE name = $1";

/// Creates a private room and its members' account rooms in one statement
/// (atomic on its own): `$1` the name, `$2` the time, `$3` the members.
/// No row: a room of that name exists, and nothing changed. A member that
/// is not a user fails the whole statement on `account_rooms_user_fkey`.
const CREATE_PRIVATE_ROOM: &str = "WITH r AS (
         INSERT INTO rooms (name, last_seq, last_activity, private)
         VALUES ($1, 0, $2, true)
         ON CONFLICT (name) DO NOTHING
         RETURNING id, last_seq
     ), m AS (
         INSERT INTO account_rooms (user_name, room_id)
         SELECT u, r.id FROM r, unnest($3::text[]) AS u
         ON CONFLICT DO NOTHING
     )
     SELECT id, last_seq FROM r";

const CREATE_USER: &str =
    "INSERT INTO users (name, password_hash, admin, created_at) VALUES ($1, $2, $3, $4)
     ON CONFLICT (name) DO NOTHING";

/// Waits for the writers appending to the room. The deletion that follows
/// then starts from a snapshot that has all their messages, and nobody can
/// add one before it commits: no message outlives its room.
const LOCK_ROOM: &str = "SELECT id FROM rooms WHERE name = $1 FOR UPDATE";

/// The room's reactions and change log go with it (foreign keys).
const DELETE_ROOM: &str = "WITH gone AS (
         DELETE FROM rooms WHERE name = $1 RETURNING id
     ), history AS (
         DELETE FROM messages WHERE room_id IN (SELECT id FROM gone)
     )
     SELECT id FROM gone";

const FIND_USER: &str = "SELECT name, password_hash, admin, created_at FROM users WHERE name = $1";

/// `COLLATE "C"`: by code point, as SQLite orders them, whatever the
/// database's locale.
const LIST_USERS: &str =
    "SELECT name, password_hash, admin, created_at FROM users ORDER BY name COLLATE \"C\"";

/// With a viewer (`$3`), only the public rooms and the private ones among
/// the viewer's account rooms.
const LIST_ROOMS: &str = "SELECT id, name, last_seq, last_activity, private, rev FROM rooms
     WHERE ($1::text IS NULL OR name COLLATE \"C\" > $1)
       AND ($3::text IS NULL OR NOT private OR EXISTS (
            SELECT 1 FROM account_rooms a WHERE a.user_name = $3 AND a.room_id = rooms.id))
     ORDER BY name COLLATE \"C\" LIMIT $2";

/// A message's columns as [`message_from_row`] reads them, from `messages
/// AS m` joined with [`reactions_of_m!`].
macro_rules! message_columns {
    () => {
        "m.seq, m.\"user\", m.text, m.ts, m.reply_to, m.edited_ts, m.deleted, rx.emoji, rx.users"
    };
}

/// The reactions of message `m`, as two arrays in the order they were
/// made (one row, NULLs when there are none): folding them in that order
/// gives each emoji's users in the order they reacted, and the emoji in the
/// order of their first reaction still on.
macro_rules! reactions_of_m {
    () => {
        "CROSS JOIN LATERAL (
             SELECT array_agg(x.emoji ORDER BY x.rev) AS emoji,
                    array_agg(x.user_name ORDER BY x.rev) AS users
               FROM reactions AS x WHERE x.room_id = m.room_id AND x.seq = m.seq
         ) AS rx"
    };
}

/// A history page in one round trip: the room's row gives the page's end
/// (its newest seq, or the one before `before`), and the page is the range
/// of the primary key below it. No row: no such room; one row with NULLs:
/// an empty page.
const HISTORY_PAGE: &str = concat!(
    "WITH head AS (
         SELECT id, LEAST(last_seq, $2) AS last FROM rooms WHERE name = $1
     )
     SELECT head.last, ",
    message_columns!(),
    " FROM head LEFT JOIN messages m
         ON m.room_id = head.id AND m.seq <= head.last AND m.seq > head.last - $3 ",
    reactions_of_m!(),
    " ORDER BY m.seq"
);

const READ_RANGE: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages m ",
    reactions_of_m!(),
    " WHERE m.room_id = $1 AND m.seq >= $2 AND m.seq <= $3 ORDER BY m.seq"
);

/// A gap fill in one statement (one snapshot): the room's messages after
/// `$2` (at most `$4` of them, in their current state) and its logged
/// changes after rev `$3` (the first `$4`), merged by event index
/// (`seq + rev` of each one's position) up to `$5`, the first `$4`. A change
/// row carries its message's seq, its author, its text (an edit's) and its
/// time in the message columns.
const READ_EVENTS: &str = concat!(
    "SELECT e.* FROM (
         (SELECT 'message' AS kind, m.seq AS at_seq, m.rev AS at_rev, ",
    message_columns!(),
    ", NULL::text AS emoji, NULL::boolean AS turned_on
            FROM messages m ",
    reactions_of_m!(),
    " WHERE m.room_id = $1 AND m.seq > $2 AND m.seq <= $2 + $4)
         UNION ALL
         (SELECT c.kind, c.at_seq, c.rev, c.seq, c.user_name, c.text, c.ts, NULL::bigint,
                 NULL::bigint, NULL::boolean, NULL::text[], NULL::text[], c.emoji, c.turned_on
            FROM room_changes c
           WHERE c.room_id = $1 AND c.rev > $3
           ORDER BY c.rev LIMIT $4)
     ) AS e
     WHERE e.at_seq + e.at_rev <= $5
     ORDER BY e.at_seq + e.at_rev LIMIT $4"
);

/// The messages of room `$1` with `$3 < seq <= $4` changed after rev `$2`,
/// in their current state, the first `$5` by seq; and the room's `rev`, in
/// one statement: both of the same snapshot. No row: no such room; one row
/// with NULLs: nothing changed.
const CHANGED_SINCE: &str = concat!(
    "WITH head AS (
         SELECT rev FROM rooms WHERE id = $1
     ), changed AS (
         SELECT DISTINCT seq FROM room_changes
          WHERE room_id = $1 AND rev > $2 AND seq > $3 AND seq <= $4
          ORDER BY seq LIMIT $5
     )
     SELECT head.rev, ",
    message_columns!(),
    " FROM head LEFT JOIN (changed c JOIN messages m ON m.room_id = $1 AND m.seq = c.seq) ON true ",
    reactions_of_m!(),
    " ORDER BY m.seq"
);

/// A page of search results, newest first: `$1` the tsquery, `$2` the
/// cursor (gids below it), `$3` the room or NULL, `$4` the viewer (who
/// reads the public rooms and the private ones among their account rooms),
/// `$5` how many. The page is cut before the reactions are read.
const SEARCH: &str = concat!(
    "SELECT m.gid, m.name, ",
    message_columns!(),
    " FROM (
         SELECT m.gid, m.room_id, m.seq, m.\"user\", m.text, m.ts, m.reply_to, m.edited_ts,
                m.deleted, r.name
           FROM messages m JOIN rooms r ON r.id = m.room_id
          WHERE ",
    search_document!(),
    " @@ to_tsquery('simple', $1) AND NOT m.deleted
            AND m.gid < $2 AND ($3::bigint IS NULL OR m.room_id = $3)
            AND (NOT r.private OR EXISTS (
                 SELECT 1 FROM account_rooms a WHERE a.user_name = $4 AND a.room_id = r.id))
          ORDER BY m.gid DESC LIMIT $5
     ) AS m ",
    reactions_of_m!(),
    " ORDER BY m.gid DESC"
);

/// [`SEARCH`] with the messages read by one word only (`$6`, the rarest;
/// see [`search`]) and tested for all of them (`$1`) one by one: the same
/// results. The subquery is planned on its own (`OFFSET 0`), without the
/// page's order to follow, so that it reads the word's matches from the
/// index rather than walking messages newest first.
const SEARCH_RARE: &str = concat!(
    "SELECT m.gid, m.name, ",
    message_columns!(),
    " FROM (
         SELECT m.gid, m.room_id, m.seq, m.\"user\", m.text, m.ts, m.reply_to, m.edited_ts,
                m.deleted, r.name
           FROM (SELECT * FROM messages AS m
                  WHERE ",
    search_document!(),
    " @@ to_tsquery('simple', $6) AND NOT m.deleted
                    AND m.gid < $2 AND ($3::bigint IS NULL OR m.room_id = $3)
                 OFFSET 0) AS m
           JOIN rooms r ON r.id = m.room_id
          WHERE ",
    search_document!(),
    " @@ to_tsquery('simple', $1)
            AND (NOT r.private OR EXISTS (
                 SELECT 1 FROM account_rooms a WHERE a.user_name = $4 AND a.room_id = r.id))
          ORDER BY m.gid DESC LIMIT $5
     ) AS m ",
    reactions_of_m!(),
    " ORDER BY m.gid DESC"
);

/// What [`search::WordStats`] is read from: the most common words of
/// messages and their shares (the planner's statistics; no row before the
/// first `ANALYZE`), and how many messages there are.
const WORD_STATS: &str = "SELECT s.most_common_elems::text::text[], s.most_common_elem_freqs,
            c.reltuples::float8
       FROM pg_class AS c
       LEFT JOIN pg_stats AS s
              ON s.schemaname = current_schema() AND s.tablename = 'messages'
             AND s.attname = 'words'
      WHERE c.oid = 'messages'::regclass";

/// The tsquery text for `words`: each a quoted lexeme matched as a prefix,
/// all required. The words are letters and digits only, but quotes and
/// backslashes are escaped anyway (tsquery syntax), so no word can be
/// taken for an operator. Passed as a parameter, never spliced into SQL.
fn tsquery(words: &[String]) -> String {
    words
        .iter()
        .map(|word| format!("'{}':*", word.replace('\\', "\\\\").replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(" & ")
}

const IMPORT_MESSAGES: &str = "WITH stored AS (
         INSERT INTO messages (room_id, seq, \"user\", text, ts, reply_to, edited_ts, deleted)
         SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::bigint[],
                                  $6::bigint[], $7::bigint[], $8::boolean[])
          ORDER BY 2
     )
     INSERT INTO reactions (room_id, seq, emoji, user_name, rev)
     SELECT $1, * FROM unnest($9::bigint[], $10::text[], $11::text[], $12::bigint[])";

/// `COLLATE "C"`: bytewise, as SQLite orders them.
const ACCOUNT_ROOMS: &str = "SELECT r.id, r.name, r.last_seq, a.read_seq, r.private
     FROM account_rooms a JOIN rooms r ON r.id = a.room_id
     WHERE a.user_name = $1
     ORDER BY r.name COLLATE \"C\"";

const REMEMBER_ROOM: &str = "INSERT INTO account_rooms (user_name, room_id) VALUES ($1, $2)
     ON CONFLICT (user_name, room_id) DO NOTHING";

const IS_MEMBER: &str =
    "SELECT EXISTS (SELECT 1 FROM account_rooms WHERE user_name = $1 AND room_id = $2)";

const FORGET_ROOM: &str = "DELETE FROM account_rooms WHERE user_name = $1 AND room_id = $2";

/// Moves a read marker forward in one statement: the room's row caps the
/// target (no row: no such room, no answer), the row is added when missing
/// and raised only when below the target. Answers the target, and whether
/// the marker moved: raised, or added above 0 (a new row starts at 0).
/// Concurrent calls for one row serialize on it, and each sees the other's
/// marker before comparing.
const MARK_READ: &str = "WITH room AS (
         SELECT LEAST(last_seq, $3::bigint) AS target FROM rooms WHERE id = $2::bigint
     ), marked AS (
         INSERT INTO account_rooms AS a (user_name, room_id, read_seq)
         SELECT $1::text, $2::bigint, target FROM room
         ON CONFLICT (user_name, room_id) DO UPDATE SET read_seq = excluded.read_seq
             WHERE a.read_seq < excluded.read_seq
         RETURNING 1
     )
     SELECT target, target > 0 AND EXISTS (SELECT 1 FROM marked) FROM room";

const ALL_ACCOUNT_ROOMS: &str = "SELECT a.user_name, r.name, a.read_seq
     FROM account_rooms a JOIN rooms r ON r.id = a.room_id
     ORDER BY a.user_name COLLATE \"C\", r.name COLLATE \"C\"";

const IMPORT_ACCOUNT_ROOM: &str =
    "INSERT INTO account_rooms (user_name, room_id, read_seq) VALUES ($1, $2, $3)";

/// A foreign key refused the row: its account or room is gone (or went
/// while the statement ran).
fn is_foreign_key_violation(err: &PgError) -> bool {
    err.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION)
}

fn user_from_row(row: &Row) -> Result<UserRecord, PgError> {
    Ok(UserRecord {
        name: row.try_get(0)?,
        password_hash: row.try_get(1)?,
        admin: row.try_get(2)?,
        created: row.try_get(3)?,
    })
}

async fn room_head(conn: &ClientWrapper, name: &str) -> Result<Option<RoomHead>, PgError> {
    let statement = conn.prepare_cached(ROOM_HEAD).await?;
    let Some(row) = conn.query_opt(&statement, &[&name]).await? else {
        return Ok(None);
    };
    Ok(Some(RoomHead {
        id: RoomId(row.try_get(0)?),
        last_seq: from_db(row.try_get(1)?),
        private: row.try_get(2)?,
        rev: from_db(row.try_get(3)?),
    }))
}

/// The message in the [`message_columns!`] of `row` from column `at` on,
/// of the room named `room`.
fn message_from_row(room: &str, row: &Row, at: usize) -> Result<MessageRecord, PgError> {
    let mut message = MessageRecord {
        room: room.to_owned(),
        seq: from_db(row.try_get(at)?),
        user: row.try_get(at + 1)?,
        text: row.try_get(at + 2)?,
        ts: row.try_get(at + 3)?,
        reply_to: row.try_get::<_, Option<i64>>(at + 4)?.map(from_db),
        edited_ts: row.try_get(at + 5)?,
        deleted: row.try_get(at + 6)?,
        reactions: Default::default(),
    };
    let emoji: Option<Vec<String>> = row.try_get(at + 7)?;
    let users: Option<Vec<String>> = row.try_get(at + 8)?;
    for (emoji, user) in emoji.iter().flatten().zip(users.iter().flatten()) {
        message.reactions.set(emoji, user, true);
    }
    Ok(message)
}

async fn read_range(
    conn: &ClientWrapper,
    name: &str,
    room: RoomId,
    first: u64,
    last: u64,
) -> Result<Vec<MessageRecord>, PgError> {
    let statement = conn.prepare_cached(READ_RANGE).await?;
    let rows = conn
        .query(&statement, &[&room.0, &to_db(first), &to_db(last)])
        .await?;
    rows.iter()
        .map(|row| message_from_row(name, row, 0))
        .collect()
}

/// A gap fill's events (see [`READ_EVENTS`]).
async fn read_events(
    conn: &ClientWrapper,
    name: &str,
    room: RoomId,
    after: Position,
    upto: u64,
    limit: usize,
) -> Result<Vec<Stored>, PgError> {
    let wanted = upto.saturating_sub(after.index()).min(limit as u64);
    if wanted == 0 {
        return Ok(Vec::new());
    }
    let statement = conn.prepare_cached(READ_EVENTS).await?;
    let rows = conn
        .query(
            &statement,
            &[
                &room.0,
                &to_db(after.seq),
                &to_db(after.rev),
                &to_db(wanted),
                &to_db(upto),
            ],
        )
        .await?;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let kind: &str = row.try_get(0)?;
        let at = Position {
            seq: from_db(row.try_get(1)?),
            rev: from_db(row.try_get(2)?),
        };
        // The message columns start at 3; a change's seq, user, text and
        // time are in the first four of them, its emoji and on/off after.
        let seq = from_db(row.try_get(3)?);
        let event = match kind {
            "message" => RoomEvent::Message(message_from_row(name, row, 3)?),
            "edit" => RoomEvent::Edited {
                seq,
                text: row.try_get::<_, Option<String>>(5)?.unwrap_or_default(),
                edited_ts: row.try_get(6)?,
            },
            "delete" => RoomEvent::Deleted { seq },
            _ => RoomEvent::Reaction {
                seq,
                user: row.try_get(4)?,
                emoji: row.try_get::<_, Option<String>>(12)?.unwrap_or_default(),
                on: row.try_get::<_, Option<bool>>(13)?.unwrap_or(false),
            },
        };
        events.push(Stored {
            room_id: room,
            room: name.to_owned(),
            at,
            event,
            answer: None,
        });
    }
    Ok(events)
}

// ---- The writer task. ----

/// A batch's appends laid out as the arrays [`STORE_MESSAGES`] takes, and
/// the rooms it locks.
#[derive(Debug, Default, PartialEq)]
struct Plan<'a> {
    /// The rooms appended to or changed, ascending: locked first.
    rooms: Vec<i64>,
    /// One entry per append, in queue order: its room, author, text and
    /// the message it replies to. Queue order is a room's seq order.
    message_rooms: Vec<i64>,
    users: Vec<&'a str>,
    texts: Vec<&'a str>,
    reply_to: Vec<Option<i64>>,
    /// The rooms the batch deletes, locked along with the others.
    deleted: Vec<&'a str>,
    /// The changes (jobs by index in the batch), in queue order.
    changes: Vec<usize>,
    /// The messages they change (distinct, as two arrays) and their rooms,
    /// read before they are worked out (see [`changes`]).
    target_rooms: Vec<i64>,
    target_seqs: Vec<i64>,
    changed_rooms: Vec<i64>,
}

/// What [`STORE_MESSAGES`] answered for one append.
#[derive(Debug, Clone, PartialEq)]
enum Placed {
    /// Stored in the room named so, at this seq, the room's `rev` then.
    Stored { name: String, seq: u64, rev: u64 },
    /// Its reply target is unknown or deleted.
    BadReply,
    /// Its room is gone.
    NoRoom,
}

impl<'a> Plan<'a> {
    fn new(jobs: &'a [WriteJob]) -> Plan<'a> {
        let mut plan = Plan::default();
        let mut rooms = std::collections::BTreeSet::new();
        let mut targets = std::collections::BTreeSet::new();
        let mut changed_rooms = std::collections::BTreeSet::new();
        for (index, job) in jobs.iter().enumerate() {
            match job {
                WriteJob::Append {
                    room,
                    user,
                    text,
                    reply_to,
                    ..
                } => {
                    rooms.insert(room.0);
                    plan.message_rooms.push(room.0);
                    plan.users.push(user);
                    plan.texts.push(text);
                    plan.reply_to.push(reply_to.map(to_db));
                }
                WriteJob::Change { room, seq, .. } => {
                    rooms.insert(room.0);
                    changed_rooms.insert(room.0);
                    targets.insert((room.0, to_db(*seq)));
                    plan.changes.push(index);
                }
                WriteJob::DeleteRoom { name, .. } => plan.deleted.push(name),
                WriteJob::OpenRoom { .. } | WriteJob::CreateUser { .. } => {}
            }
        }
        plan.rooms = rooms.into_iter().collect();
        plan.changed_rooms = changed_rooms.into_iter().collect();
        (plan.target_rooms, plan.target_seqs) = targets.into_iter().unzip();
        plan
    }

    /// The batch's changes as [`changes::apply`] takes them.
    fn requests(&self, jobs: &'a [WriteJob]) -> Vec<Request<'a>> {
        self.changes
            .iter()
            .filter_map(|&index| match &jobs[index] {
                WriteJob::Change {
                    room,
                    seq,
                    user,
                    admin,
                    change,
                    ..
                } => Some(Request {
                    room: room.0,
                    seq: *seq,
                    user,
                    admin: *admin,
                    change,
                }),
                _ => None,
            })
            .collect()
    }

    /// Each append's outcome, in queue order, and the messages stored, from
    /// what [`STORE_MESSAGES`] answered for each.
    fn place(&self, placed: &[Placed], ts: i64) -> (Vec<Outcome>, Vec<Stored>) {
        let mut outcomes = Vec::with_capacity(self.message_rooms.len());
        let mut stored = Vec::with_capacity(self.message_rooms.len());
        for (i, &room) in self.message_rooms.iter().enumerate() {
            let (name, seq, rev) = match placed.get(i) {
                Some(Placed::Stored { name, seq, rev }) => (name, *seq, *rev),
                Some(Placed::BadReply) => {
                    outcomes.push(Outcome::Refused(StoreError::NoSuchMessage));
                    continue;
                }
                // No answer for it cannot happen; NoSuchRoom is as good as
                // anything then.
                Some(Placed::NoRoom) | None => {
                    outcomes.push(Outcome::Refused(StoreError::NoSuchRoom));
                    continue;
                }
            };
            outcomes.push(Outcome::Appended(Appended { seq, ts }));
            stored.push(Stored {
                room_id: RoomId(room),
                room: name.clone(),
                at: Position { seq, rev },
                event: RoomEvent::Message(MessageRecord {
                    room: name.clone(),
                    seq,
                    user: self.users[i].to_owned(),
                    text: self.texts[i].to_owned(),
                    ts,
                    reply_to: self.reply_to[i].map(from_db),
                    ..Default::default()
                }),
                answer: None,
            });
        }
        (outcomes, stored)
    }
}

/// A change's outcome from its verdict, and the event to announce.
fn changed(
    room: RoomId,
    seq: u64,
    user: &str,
    change: &Change,
    answer: &Option<Answer>,
    verdict: &Verdict<'_>,
    ts: i64,
) -> (Outcome, Option<Stored>) {
    let (name, at, had) = match verdict {
        Verdict::Done { name, at, had } => (*name, *at, *had),
        Verdict::Refused(why) => {
            let err = match why {
                Refusal::NoMessage => StoreError::NoSuchMessage,
                Refusal::NotAuthor => StoreError::NotAuthor,
                Refusal::TooManyReactions => StoreError::TooManyReactions,
                Refusal::NoRoom => StoreError::NoSuchRoom,
            };
            return (Outcome::Refused(err), None);
        }
    };
    let on = matches!(change, Change::React { .. }) && !had;
    let event = match change {
        Change::Edit { text } => RoomEvent::Edited {
            seq,
            text: text.clone(),
            edited_ts: ts,
        },
        Change::Delete => RoomEvent::Deleted { seq },
        Change::React { emoji } => RoomEvent::Reaction {
            seq,
            user: user.to_owned(),
            emoji: emoji.clone(),
            on,
        },
    };
    let outcome = Outcome::Changed(Changed {
        rev: at.rev,
        ts,
        on,
    });
    let stored = Stored {
        room_id: room,
        room: name.to_owned(),
        at,
        event,
        answer: answer.clone(),
    };
    (outcome, Some(stored))
}

/// The messages and rooms a batch changes, from the answers to
/// [`READ_TARGETS`] and [`READ_HEADS`].
type ChangeState = (
    std::collections::BTreeMap<(i64, u64), Target>,
    std::collections::BTreeMap<i64, Head>,
);

fn read_state(steps: &[Step], replies: &[Reply]) -> Result<ChangeState, PgError> {
    let mut targets = std::collections::BTreeMap::new();
    let mut heads = std::collections::BTreeMap::new();
    for (step, reply) in steps.iter().zip(replies) {
        match (step, reply) {
            (Step::ReadTargets, Reply::Rows(rows)) => {
                for row in rows {
                    let emoji: Option<Vec<String>> = row.try_get(3)?;
                    let users: Option<Vec<String>> = row.try_get(4)?;
                    let target = Target {
                        author: row.try_get(2)?,
                        reactions: emoji
                            .unwrap_or_default()
                            .into_iter()
                            .zip(users.unwrap_or_default())
                            .collect(),
                    };
                    targets.insert((row.try_get(0)?, from_db(row.try_get(1)?)), target);
                }
            }
            (Step::ReadHeads, Reply::Rows(rows)) => {
                for row in rows {
                    let head = Head {
                        name: row.try_get(1)?,
                        last_seq: from_db(row.try_get(2)?),
                        rev: from_db(row.try_get(3)?),
                    };
                    heads.insert(row.try_get(0)?, head);
                }
            }
            _ => {}
        }
    }
    Ok((targets, heads))
}

/// The writer's statements, prepared once per connection.
struct WriterStatements {
    lock_rooms: Statement,
    store_messages: Statement,
    read_targets: Statement,
    read_heads: Statement,
    set_revs: Statement,
    rewrite_messages: Statement,
    drop_reactions: Statement,
    add_reactions: Statement,
    log_changes: Statement,
    unlog_edits: Statement,
    create_room: Statement,
    room_head: Statement,
    create_user: Statement,
    lock_room: Statement,
    delete_room: Statement,
}

impl WriterStatements {
    async fn prepare(conn: &Client) -> Result<WriterStatements, PgError> {
        // Pipelined too: one round trip for them all.
        let (
            lock_rooms,
            store_messages,
            read_targets,
            read_heads,
            set_revs,
            rewrite_messages,
            drop_reactions,
            add_reactions,
            log_changes,
            unlog_edits,
            create_room,
            room_head,
            create_user,
            lock_room,
            delete_room,
        ) = tokio::try_join!(
            conn.prepare(LOCK_ROOMS),
            conn.prepare(STORE_MESSAGES),
            conn.prepare(READ_TARGETS),
            conn.prepare(READ_HEADS),
            conn.prepare(SET_REVS),
            conn.prepare(REWRITE_MESSAGES),
            conn.prepare(DROP_REACTIONS),
            conn.prepare(ADD_REACTIONS),
            conn.prepare(LOG_CHANGES),
            conn.prepare(UNLOG_EDITS),
            conn.prepare(CREATE_ROOM),
            conn.prepare(ROOM_HEAD),
            conn.prepare(CREATE_USER),
            conn.prepare(LOCK_ROOM),
            conn.prepare(DELETE_ROOM),
        )?;
        Ok(WriterStatements {
            lock_rooms,
            store_messages,
            read_targets,
            read_heads,
            set_revs,
            rewrite_messages,
            drop_reactions,
            add_reactions,
            log_changes,
            unlog_edits,
            create_room,
            room_head,
            create_user,
            lock_room,
            delete_room,
        })
    }
}

/// One statement of a batch's pipeline, and the job it answers for (by
/// index in the batch).
#[derive(Debug, Clone, Copy)]
enum Step {
    Begin,
    Settings,
    LockRooms,
    StoreMessages,
    ReadTargets,
    ReadHeads,
    ChangeWrites,
    CreateRoom,
    RoomHead(usize),
    CreateUser(usize),
    LockRoom,
    DeleteRoom(usize),
    Commit,
}

/// What a statement answered.
enum Reply {
    Done,
    Count(u64),
    Rows(Vec<Row>),
}

type Pending<'a> = BoxFuture<'a, Result<Reply, PgError>>;

/// A batch's statements, to be sent back to back.
#[derive(Default)]
struct Pipeline<'a> {
    steps: Vec<Step>,
    pending: Vec<Pending<'a>>,
}

impl<'a> Pipeline<'a> {
    fn push(
        &mut self,
        step: Step,
        statement: impl Future<Output = Result<Reply, PgError>> + Send + 'a,
    ) {
        self.steps.push(step);
        self.pending.push(Box::pin(statement));
    }

    /// Lays out the first part of the transaction storing `jobs`: appends
    /// first (in one statement, after locking every room involved), then,
    /// when there are changes, the reads [`changes::apply`] needs (the
    /// rooms are locked by then, so what they read stays true until
    /// `COMMIT`). [`Pipeline::finish`] lays out the rest.
    fn start(
        &mut self,
        conn: &'a Client,
        statements: &'a WriterStatements,
        plan: &'a Plan<'a>,
        ts: &'a i64,
    ) {
        let st = statements;
        self.push(Step::Begin, async move {
            conn.batch_execute("BEGIN").await.map(|()| Reply::Done)
        });
        if !plan.deleted.is_empty() {
            self.push(Step::Settings, async move {
                let sql = format!(
                    "SET LOCAL statement_timeout = {}",
                    DELETE_TIMEOUT.as_millis()
                );
                conn.batch_execute(&sql).await.map(|()| Reply::Done)
            });
        }
        if !plan.rooms.is_empty() || !plan.deleted.is_empty() {
            self.push(Step::LockRooms, async move {
                conn.execute(&st.lock_rooms, &[&plan.rooms, &plan.deleted])
                    .await
                    .map(Reply::Count)
            });
        }
        if !plan.message_rooms.is_empty() {
            self.push(Step::StoreMessages, async move {
                conn.query(
                    &st.store_messages,
                    &[
                        ts,
                        &plan.message_rooms,
                        &plan.users,
                        &plan.texts,
                        &plan.reply_to,
                    ],
                )
                .await
                .map(Reply::Rows)
            });
        }
        if !plan.changes.is_empty() {
            self.push(Step::ReadTargets, async move {
                conn.query(&st.read_targets, &[&plan.target_rooms, &plan.target_seqs])
                    .await
                    .map(Reply::Rows)
            });
            self.push(Step::ReadHeads, async move {
                conn.query(&st.read_heads, &[&plan.changed_rooms])
                    .await
                    .map(Reply::Rows)
            });
        }
    }

    /// Lays out the rest of the transaction: the changes' writes (a
    /// statement per table and kind for them all, skipping those with
    /// nothing to do), then the rare jobs in [`rare_job_order`], then
    /// `COMMIT`. Jobs in one batch were all in flight at once, so any
    /// order between them is one the clients could have seen; the commit
    /// feed reports the order used: appends, changes in queue order, rare
    /// jobs. (So a reply may land just before the deletion of its target in
    /// the same batch: the reply was sent before the deletion was
    /// acknowledged.)
    fn finish(
        &mut self,
        conn: &'a Client,
        statements: &'a WriterStatements,
        jobs: &'a [WriteJob],
        writes: Option<&'a Writes<'a>>,
        ts: &'a i64,
    ) {
        let st = statements;
        if let Some(w) = writes {
            self.change_writes(conn, st, w, ts);
        }
        for index in rare_job_order(jobs) {
            match &jobs[index] {
                WriteJob::Append { .. } | WriteJob::Change { .. } => {}
                WriteJob::DeleteRoom { name, .. } => {
                    self.push(Step::LockRoom, async move {
                        conn.execute(&st.lock_room, &[name]).await.map(Reply::Count)
                    });
                    self.push(Step::DeleteRoom(index), async move {
                        conn.query(&st.delete_room, &[name]).await.map(Reply::Rows)
                    });
                }
                WriteJob::OpenRoom { name, .. } => {
                    self.push(Step::CreateRoom, async move {
                        conn.execute(&st.create_room, &[name, ts])
                            .await
                            .map(Reply::Count)
                    });
                    self.push(Step::RoomHead(index), async move {
                        conn.query(&st.room_head, &[name]).await.map(Reply::Rows)
                    });
                }
                WriteJob::CreateUser { user, .. } => {
                    self.push(Step::CreateUser(index), async move {
                        conn.execute(
                            &st.create_user,
                            &[&user.name, &user.password_hash, &user.admin, &user.created],
                        )
                        .await
                        .map(Reply::Count)
                    });
                }
            }
        }
        // In an aborted transaction COMMIT rolls back and still answers
        // without error: success is every statement's, not COMMIT's alone.
        self.push(Step::Commit, async move {
            conn.batch_execute("COMMIT").await.map(|()| Reply::Done)
        });
    }

    /// The writes of a batch's changes, in the order [`SET_REVS`] gives.
    fn change_writes(
        &mut self,
        conn: &'a Client,
        st: &'a WriterStatements,
        w: &'a Writes<'a>,
        ts: &'a i64,
    ) {
        let mut statement = |statement: &'a Statement, params: Vec<&'a (dyn ToSql + Sync)>| {
            self.push(Step::ChangeWrites, async move {
                conn.execute(statement, &params).await.map(Reply::Count)
            });
        };
        if !w.room_ids.is_empty() {
            statement(&st.set_revs, vec![&w.room_ids, &w.room_revs]);
        }
        if !w.message_rooms.is_empty() {
            statement(
                &st.rewrite_messages,
                vec![
                    &w.message_rooms,
                    &w.message_seqs,
                    &w.message_texts,
                    &w.message_edited,
                    &w.message_deleted,
                ],
            );
        }
        if !w.drop_rooms.is_empty() {
            statement(
                &st.drop_reactions,
                vec![&w.drop_rooms, &w.drop_seqs, &w.drop_emoji, &w.drop_users],
            );
        }
        if !w.add_rooms.is_empty() {
            statement(
                &st.add_reactions,
                vec![
                    &w.add_rooms,
                    &w.add_seqs,
                    &w.add_emoji,
                    &w.add_users,
                    &w.add_revs,
                ],
            );
        }
        if !w.log_rooms.is_empty() {
            statement(
                &st.log_changes,
                vec![
                    &w.log_rooms,
                    &w.log_revs,
                    &w.log_at_seqs,
                    &w.log_seqs,
                    &w.log_kinds,
                    &w.log_users,
                    &w.log_texts,
                    &w.log_emoji,
                    &w.log_turned_on,
                    ts,
                ],
            );
        }
        if !w.unlog_rooms.is_empty() {
            statement(&st.unlog_edits, vec![&w.unlog_rooms, &w.unlog_seqs]);
        }
    }
}

/// The order in which a batch's rare jobs run (indices into the batch):
/// deletions in queue order, then room creations by name, then new users
/// by name. Inserting a name that another node's open transaction also
/// inserts waits for that transaction; with names taken in one global
/// order by every writer, two writers can never each wait for the other.
fn rare_job_order(jobs: &[WriteJob]) -> Vec<usize> {
    let mut deletions = Vec::new();
    let mut rooms = Vec::new();
    let mut users = Vec::new();
    for (index, job) in jobs.iter().enumerate() {
        match job {
            WriteJob::Append { .. } | WriteJob::Change { .. } => {}
            WriteJob::DeleteRoom { .. } => deletions.push(index),
            WriteJob::OpenRoom { name, .. } => rooms.push((name.as_str(), index)),
            WriteJob::CreateUser { user, .. } => users.push((user.name.as_str(), index)),
        }
    }
    rooms.sort_unstable();
    users.sort_unstable();
    deletions
        .into_iter()
        .chain(rooms.into_iter().map(|(_, index)| index))
        .chain(users.into_iter().map(|(_, index)| index))
        .collect()
}

/// Runs the futures with every request sent before any answer is awaited.
/// A tokio-postgres future writes its request when first polled; polling
/// each once, in order, puts the statements on the wire in order, then the
/// answers are collected as they arrive (also in order).
async fn pipelined<T>(futures: Vec<BoxFuture<'_, T>>) -> Vec<T> {
    let mut slots: Vec<(BoxFuture<'_, T>, Option<T>)> =
        futures.into_iter().map(|f| (f, None)).collect();
    poll_fn(|cx| {
        for (future, output) in slots.iter_mut() {
            if let Poll::Ready(value) = future.as_mut().poll(cx) {
                *output = Some(value);
            }
        }
        Poll::Ready(())
    })
    .await;
    let mut outputs = Vec::with_capacity(slots.len());
    for (future, output) in slots {
        outputs.push(match output {
            Some(value) => value,
            None => future.await,
        });
    }
    outputs
}

/// A committed batch: each job's outcome, in batch order, and what to
/// announce.
struct Committed {
    outcomes: Vec<Outcome>,
    commits: Vec<Commit>,
}

/// Reads a committed batch's answers.
///
/// `verdicts`: what [`changes::apply`] made of the batch's changes, one per
/// entry of [`Plan::changes`].
fn read_replies(
    jobs: &[WriteJob],
    plan: &Plan<'_>,
    steps: &[Step],
    replies: Vec<Reply>,
    verdicts: &[Verdict<'_>],
    ts: i64,
) -> Result<Committed, PgError> {
    let mut placed = Vec::with_capacity(plan.message_rooms.len());
    let mut changes = Vec::new();
    let mut rare: Vec<Option<Outcome>> = jobs.iter().map(|_| None).collect();
    for (&index, verdict) in plan.changes.iter().zip(verdicts) {
        if let WriteJob::Change {
            room,
            seq,
            user,
            change,
            answer,
            ..
        } = &jobs[index]
        {
            let (outcome, stored) = changed(*room, *seq, user, change, answer, verdict, ts);
            changes.extend(stored);
            rare[index] = Some(outcome);
        }
    }
    for (step, reply) in steps.iter().zip(replies) {
        match (*step, reply) {
            (Step::StoreMessages, Reply::Rows(rows)) => {
                for row in &rows {
                    let ok: bool = row.try_get(0)?;
                    let name: Option<String> = row.try_get(1)?;
                    placed.push(match (ok, name) {
                        (false, _) => Placed::BadReply,
                        (true, None) => Placed::NoRoom,
                        (true, Some(name)) => Placed::Stored {
                            name,
                            seq: from_db(row.try_get(2)?),
                            rev: from_db(row.try_get(3)?),
                        },
                    });
                }
            }
            (Step::RoomHead(index), Reply::Rows(rows)) => {
                rare[index] = Some(match rows.first() {
                    // Public when this batch created it; a room of that
                    // name that already existed keeps what it is.
                    Some(row) => Outcome::Opened(RoomHead {
                        id: RoomId(row.try_get(0)?),
                        last_seq: from_db(row.try_get(1)?),
                        private: row.try_get(2)?,
                        rev: from_db(row.try_get(3)?),
                    }),
                    // Deleted by another node between the two statements.
                    None => Outcome::Refused(StoreError::NoSuchRoom),
                });
            }
            (Step::CreateUser(index), Reply::Count(inserted)) => {
                rare[index] = Some(if inserted > 0 {
                    Outcome::Done
                } else {
                    Outcome::Refused(StoreError::UserExists)
                });
            }
            (Step::DeleteRoom(index), Reply::Rows(rows)) => {
                rare[index] = Some(match rows.first() {
                    Some(row) => Outcome::Deleted(RoomId(row.try_get(0)?)),
                    None => Outcome::Refused(StoreError::NoSuchRoom),
                });
            }
            _ => {}
        }
    }
    let (appended, mut stored) = plan.place(&placed, ts);
    let mut appended = appended.into_iter();
    let mut commits = Vec::new();
    // In the order they ran: the messages, then the changes.
    stored.extend(changes);
    if !stored.is_empty() {
        commits.push(Commit::Events(stored));
    }
    let mut outcomes = Vec::with_capacity(jobs.len());
    for (job, rare) in jobs.iter().zip(rare) {
        let outcome = match job {
            WriteJob::Append { .. } => appended.next(),
            _ => rare,
        };
        // Every job has a statement whose answer gave it an outcome.
        let outcome = outcome.unwrap_or(Outcome::Refused(StoreError::Closed));
        if let (
            WriteJob::DeleteRoom {
                name, requested_by, ..
            },
            Outcome::Deleted(id),
        ) = (job, &outcome)
        {
            commits.push(Commit::RoomDeleted {
                name: name.clone(),
                id: *id,
                requested_by: *requested_by,
            });
        }
        outcomes.push(outcome);
    }
    Ok(Committed { outcomes, commits })
}

/// What is left to do about the writer's connection after a failed
/// transaction.
enum Cleanup {
    /// The transaction is over (its `COMMIT` rolled it back).
    Ended,
    /// The transaction is still open: roll it back.
    RollBack,
    /// The connection's state is unknown: drop it.
    Discard,
}

/// How a failed [`send`] leaves the connection: unknown when the pipeline
/// broke, else `intact` (what the transaction's state is at that point).
fn failed(intact: Cleanup) -> impl FnOnce((Failure, bool)) -> (Failure, Cleanup) {
    move |(failure, broken)| (failure, if broken { Cleanup::Discard } else { intact })
}

/// Sends a pipeline and waits for all its answers. The first error is the
/// cause; those after it only say the transaction was already aborted.
async fn send(
    pipeline: Pipeline<'_>,
    limit: Duration,
) -> Result<(Vec<Step>, Vec<Reply>), (Failure, bool)> {
    let Pipeline { steps, pending } = pipeline;
    let Ok(answers) = timeout(limit, pipelined(pending)).await else {
        // Whether it committed is unknown, and so is the connection's
        // state.
        let lost = Failure::Lost(format!("no answer within {} s", limit.as_secs()));
        return Err((lost, true));
    };
    let mut replies = Vec::with_capacity(answers.len());
    for answer in answers {
        match answer {
            Ok(reply) => replies.push(reply),
            Err(err) => {
                let broken = err.as_db_error().is_none();
                return Err((Failure::Db(err), broken));
            }
        }
    }
    Ok((steps, replies))
}

/// One try at committing `jobs`: one pipeline, or two when there are
/// changes to work out between them (see [`Pipeline::start`]).
async fn transaction(
    writer: &WriterConn,
    jobs: &[WriteJob],
    plan: &Plan<'_>,
    ts: i64,
    limit: Duration,
) -> Result<Committed, (Failure, Cleanup)> {
    let (conn, st) = (&**writer.conn, &writer.statements);
    let mut first = Pipeline::default();
    first.start(conn, st, plan, &ts);
    if plan.changes.is_empty() {
        first.finish(conn, st, jobs, None, &ts);
        let (steps, replies) = send(first, limit).await.map_err(failed(Cleanup::Ended))?;
        return read_replies(jobs, plan, &steps, replies, &[], ts)
            .map_err(|err| (Failure::Db(err), Cleanup::Ended));
    }
    let (mut steps, mut replies) = send(first, limit)
        .await
        .map_err(failed(Cleanup::RollBack))?;
    let (targets, heads) =
        read_state(&steps, &replies).map_err(|err| (Failure::Db(err), Cleanup::RollBack))?;
    let (verdicts, writes) = changes::apply(&plan.requests(jobs), &targets, &heads, ts);
    let mut second = Pipeline::default();
    second.finish(conn, st, jobs, Some(&writes), &ts);
    let (more_steps, more_replies) = send(second, limit).await.map_err(failed(Cleanup::Ended))?;
    steps.extend(more_steps);
    replies.extend(more_replies);
    read_replies(jobs, plan, &steps, replies, &verdicts, ts)
        .map_err(|err| (Failure::Db(err), Cleanup::Ended))
}

/// The writer's connection, kept across batches while it works.
struct WriterConn {
    conn: Object,
    statements: WriterStatements,
}

struct Writer {
    pool: Pool,
    conn: Option<WriterConn>,
    health: Arc<Health>,
    feed: mpsc::Sender<Commit>,
}

impl Writer {
    async fn run(mut self, mut jobs: mpsc::UnboundedReceiver<WriteJob>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let started = Instant::now();
            let (commits, outcomes, lost) = self.store(&batch).await;
            // Announced before the acks, in commit order. Waiting here when
            // delivery falls behind slows acks down (backpressure on
            // senders) instead of growing a queue. A dropped feed (admin
            // commands) is fine.
            for commit in commits {
                let _ = self.feed.send(commit).await;
            }
            for (job, outcome) in batch.drain(..).zip(outcomes) {
                answer(job, outcome);
            }
            // A database that went silent costs each batch a full timeout,
            // and the jobs queued behind would wait for theirs in turn. Once
            // a batch has waited that long for nothing, the ones already
            // queued are answered at once; the next job tries again.
            if let Some(err) = lost.filter(|_| started.elapsed() >= SLOW_FAILURE) {
                while let Ok(job) = jobs.try_recv() {
                    answer(job, Err(err.clone()));
                }
            }
        }
        tracing::debug!("store writer finished");
    }

    /// Commits a batch, and answers for each job. A batch that fails on one
    /// job's data is split in halves until that job stands alone, so that
    /// one bad job cannot keep everyone else's from committing.
    ///
    /// Also says, when the database could not be reached, what the jobs
    /// were answered.
    async fn store(
        &mut self,
        batch: &[WriteJob],
    ) -> (
        Vec<Commit>,
        Vec<Result<Outcome, StoreError>>,
        Option<StoreError>,
    ) {
        let mut lost = None;
        let mut outcomes: Vec<Option<Result<Outcome, StoreError>>> =
            batch.iter().map(|_| None).collect();
        let mut commits = Vec::new();
        let mut todo = VecDeque::new();
        todo.push_back(0..batch.len());
        while let Some(range) = todo.pop_front() {
            match self.commit(&batch[range.clone()]).await {
                Ok(done) => {
                    self.health.up();
                    commits.extend(done.commits);
                    for (slot, outcome) in outcomes[range].iter_mut().zip(done.outcomes) {
                        *slot = Some(Ok(outcome));
                    }
                }
                Err(Failure::Db(err))
                    if range.len() > 1 && err.code().is_some_and(is_job_specific) =>
                {
                    tracing::debug!(error = %reason(&err), jobs = range.len(), "splitting a failed batch");
                    let middle = range.start + range.len() / 2;
                    todo.push_front(middle..range.end);
                    todo.push_front(range.start..middle);
                }
                Err(failure) => {
                    let unreachable = match &failure {
                        Failure::Lost(_) => true,
                        Failure::Db(err) => is_connection_error(err),
                        Failure::Refused(_) => false,
                    };
                    let err = self.health.settle(failure);
                    if unreachable {
                        lost = Some(err.clone());
                    }
                    for slot in &mut outcomes[range] {
                        *slot = Some(Err(err.clone()));
                    }
                }
            }
        }
        let outcomes = outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Err(StoreError::Closed)))
            .collect();
        (commits, outcomes, lost)
    }

    /// One transaction, tried again when a conflict with another node's
    /// transaction rolled it back.
    async fn commit(&mut self, jobs: &[WriteJob]) -> Result<Committed, Failure> {
        let plan = Plan::new(jobs);
        let mut attempt = 1;
        loop {
            match self.try_commit(jobs, &plan).await {
                Err(Failure::Db(err))
                    if attempt < MAX_ATTEMPTS && err.code().is_some_and(is_retryable) =>
                {
                    tracing::warn!(attempt, error = %reason(&err), "write transaction rolled back; retrying");
                    // Staggered, so that the two sides of a deadlock do not
                    // meet again at once.
                    let jitter = rand::random::<u64>() % 20;
                    let pause = Duration::from_millis(10 * u64::from(attempt) + jitter);
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn try_commit(
        &mut self,
        jobs: &[WriteJob],
        plan: &Plan<'_>,
    ) -> Result<Committed, Failure> {
        let writer = self.connection().await?;
        let ts = now_ms();
        let limit = if plan.deleted.is_empty() {
            ANSWER_TIMEOUT
        } else {
            DELETE_TIMEOUT + ANSWER_TIMEOUT
        };
        let done = transaction(writer, jobs, plan, ts, limit).await;
        let (failure, cleanup) = match done {
            Ok(committed) => return Ok(committed),
            Err(failed) => failed,
        };
        match cleanup {
            Cleanup::Ended => {}
            Cleanup::Discard => self.discard(),
            Cleanup::RollBack => {
                let rolled_back = match &self.conn {
                    Some(writer) => {
                        let rollback = writer.conn.batch_execute("ROLLBACK");
                        matches!(timeout(ANSWER_TIMEOUT, rollback).await, Ok(Ok(())))
                    }
                    None => false,
                };
                if !rolled_back {
                    self.discard();
                }
            }
        }
        Err(failure)
    }

    /// The writer's connection: the one it had if still open, else a new
    /// one from the pool with the statements prepared.
    async fn connection(&mut self) -> Result<&mut WriterConn, Failure> {
        let writer = match self.conn.take() {
            Some(writer) if !writer.conn.is_closed() => writer,
            stale => {
                if let Some(stale) = stale {
                    drop(Object::take(stale.conn));
                }
                let conn = self.pool.get().await.map_err(pool_failure)?;
                let prepared = timeout(ANSWER_TIMEOUT, WriterStatements::prepare(&conn)).await;
                let statements = match prepared {
                    Ok(statements) => statements?,
                    Err(_) => {
                        drop(Object::take(conn));
                        return Err(Failure::Lost("no answer while preparing statements".into()));
                    }
                };
                WriterConn { conn, statements }
            }
        };
        Ok(self.conn.insert(writer))
    }

    /// Forgets the connection: its state is unknown, so it does not go back
    /// to the pool.
    fn discard(&mut self) {
        if let Some(writer) = self.conn.take() {
            drop(Object::take(writer.conn));
        }
    }
}

// ---- The backend. ----

/// The PostgreSQL store.
pub struct PostgresStore {
    pool: Pool,
    health: Arc<Health>,
    /// The writer's queue; `None` once closed. Unbounded, so that a job is
    /// queued in the first poll of the call that makes it, without waiting:
    /// a session's sends then reach the writer, and get their `seq`, in the
    /// order it made them. (Waiting for room in a bounded queue can yield,
    /// if only to tokio's cooperative budget, and let a later send of the
    /// same session overtake.) What bounds it is the sessions' own limit on
    /// sends in flight.
    jobs: Mutex<Option<mpsc::UnboundedSender<WriteJob>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// What searches of several words choose their plan by, once read.
    word_stats: Mutex<Option<Arc<search::WordStats>>>,
}

impl PostgresStore {
    /// Connects to the database at `url`, upgrades its schema and starts the
    /// writer task, which announces its commits on `feed`. Fails with
    /// [`StoreError::Open`] and one line saying why when the URL is invalid,
    /// the server cannot be reached in time, or the schema cannot be set up.
    pub async fn open(url: &str, feed: mpsc::Sender<Commit>) -> Result<PostgresStore, StoreError> {
        PostgresStore::open_with(url, Durability::Full, feed).await
    }

    /// [`PostgresStore::open`], with commits made as durable as `durability`
    /// says.
    pub async fn open_with(
        url: &str,
        durability: Durability,
        feed: mpsc::Sender<Commit>,
    ) -> Result<PostgresStore, StoreError> {
        let shown = redact(url);
        let config = configure(url, durability)?;
        let manager = Manager::from_connect(
            config,
            Connector,
            ManagerConfig {
                // No round trip per checkout: a connection the server closed
                // is noticed by its task and skipped; one that dies silently
                // fails its operation and is dropped.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_CREATE))
            .recycle_timeout(Some(POOL_RECYCLE))
            .build()
            .map_err(|e| StoreError::Open(format!("cannot set up PostgreSQL connections: {e}")))?;

        let cannot_connect = |why: String| {
            StoreError::Open(format!("cannot connect to PostgreSQL at {shown}: {why}"))
        };
        let mut conn = pool.get().await.map_err(|err| match pool_failure(err) {
            Failure::Lost(why) => cannot_connect(why),
            Failure::Db(err) => cannot_connect(reason(&err)),
            Failure::Refused(err) => err,
        })?;
        let upgraded = timeout(MIGRATION_TIMEOUT + ANSWER_TIMEOUT, migrate(&mut conn)).await;
        // The session holds the schema lock and its own statement timeout:
        // end it rather than return it to the pool.
        drop(Object::take(conn));
        let cannot_upgrade = |why: String| {
            StoreError::Open(format!(
                "cannot set up the schema in PostgreSQL at {shown}: {why}"
            ))
        };
        match upgraded {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(cannot_upgrade(err.reason())),
            Err(_) => return Err(cannot_upgrade("timed out".into())),
        }

        let health = Arc::new(Health {
            shown,
            down: AtomicBool::new(false),
        });
        let (jobs, queue) = mpsc::unbounded_channel();
        let writer = Writer {
            pool: pool.clone(),
            conn: None,
            health: health.clone(),
            feed,
        };
        let writer = tokio::spawn(writer.run(queue));
        Ok(PostgresStore {
            pool,
            health,
            jobs: Mutex::new(Some(jobs)),
            writer: Mutex::new(Some(writer)),
            word_stats: Mutex::new(None),
        })
    }

    /// The statistics searches of several words choose their plan by, read
    /// again when older than [`search::STATS_TTL`]. `None` when they cannot
    /// be read: the search goes on with the planner's own plans.
    async fn word_stats(&self) -> Option<Arc<search::WordStats>> {
        let kept = self.word_stats.lock().expect("word stats lock").clone();
        if let Some(stats) = kept.filter(|s| s.read_at.elapsed() < search::STATS_TTL) {
            return Some(stats);
        }
        let read = self
            .with_conn(ANSWER_TIMEOUT, |conn| {
                Box::pin(async move {
                    let statement = conn.prepare_cached(WORD_STATS).await?;
                    Ok(conn.query_opt(&statement, &[]).await?)
                })
            })
            .await;
        let row = match read {
            Ok(row) => row,
            Err(err) => {
                tracing::debug!(error = %err, "cannot read the search statistics");
                return None;
            }
        };
        let (words, shares, messages) = match &row {
            Some(row) => (
                row.try_get::<_, Option<Vec<String>>>(0).ok().flatten(),
                row.try_get::<_, Option<Vec<f32>>>(1).ok().flatten(),
                row.try_get::<_, f64>(2).unwrap_or(0.0),
            ),
            None => (None, None, 0.0),
        };
        // The shares array ends with three more: the least and greatest
        // share, and the share of NULLs; zip stops at the words' end.
        let common = words
            .unwrap_or_default()
            .into_iter()
            .zip(shares.unwrap_or_default().into_iter().map(f64::from))
            .collect();
        let stats = Arc::new(search::WordStats::new(Instant::now(), messages, common));
        *self.word_stats.lock().expect("word stats lock") = Some(stats.clone());
        Some(stats)
    }

    fn is_closed(&self) -> bool {
        self.jobs.lock().map_or(true, |jobs| jobs.is_none())
    }

    /// Queues a job for the writer and waits for its answer.
    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteJob,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        {
            let jobs = self.jobs.lock().map_err(|_| StoreError::Closed)?;
            let jobs = jobs.as_ref().ok_or(StoreError::Closed)?;
            jobs.send(make(reply)).map_err(|_| StoreError::Closed)?;
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `work` on a pooled connection, within `limit`.
    async fn with_conn<T: Send>(
        &self,
        limit: Duration,
        work: impl for<'c> FnOnce(&'c ClientWrapper) -> BoxFuture<'c, Result<T, Failure>> + Send,
    ) -> Result<T, StoreError> {
        let conn = self
            .pool
            .get()
            .await
            .map_err(|err| self.health.settle(pool_failure(err)))?;
        let outcome = timeout(limit, work(&conn)).await;
        match outcome {
            Ok(Ok(value)) => {
                self.health.up();
                Ok(value)
            }
            Ok(Err(failure)) => Err(self.health.settle(failure)),
            Err(_) => {
                // The connection may still be busy with the request: drop it.
                drop(Object::take(conn));
                let why = format!("no answer within {} s", limit.as_secs());
                Err(self.health.settle(Failure::Lost(why)))
            }
        }
    }

    /// A rare write on a pooled connection of its own, refused once closed.
    async fn write_alone<T: Send>(
        &self,
        work: impl for<'c> FnOnce(&'c ClientWrapper) -> BoxFuture<'c, Result<T, Failure>> + Send,
    ) -> Result<T, StoreError> {
        if self.is_closed() {
            return Err(StoreError::Closed);
        }
        self.with_conn(ANSWER_TIMEOUT, work).await
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn find_user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let name = name.to_owned();
        self.with_conn(ANSWER_TIMEOUT, move |conn| {
            Box::pin(async move {
                let statement = conn.prepare_cached(FIND_USER).await?;
                match conn.query_opt(&statement, &[&name]).await? {
                    Some(row) => Ok(Some(user_from_row(&row)?)),
                    None => Ok(None),
                }
            })
        })
        .await
    }

    async fn create_user(
        &self,
        name: &str,
        password_hash: &str,
        admin: bool,
    ) -> Result<(), StoreError> {
        let user = UserRecord {
            name: name.to_owned(),
            password_hash: password_hash.to_owned(),
            admin,
            created: now_ms(),
        };
        self.write(|reply| WriteJob::CreateUser { user, reply })
            .await
    }

    async fn set_password(&self, name: &str, password_hash: &str) -> Result<(), StoreError> {
        let (name, hash) = (name.to_owned(), password_hash.to_owned());
        self.write_alone(move |conn| {
            Box::pin(async move {
                let changed = conn
                    .execute(
                        "UPDATE users SET password_hash = $2 WHERE name = $1",
                        &[&name, &hash],
                    )
                    .await?;
                if changed == 0 {
                    return Err(StoreError::NoSuchUser.into());
                }
                Ok(())
            })
        })
        .await
    }

    async fn delete_user(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write_alone(move |conn| {
            Box::pin(async move {
                if conn
                    .execute("DELETE FROM users WHERE name = $1", &[&name])
                    .await?
                    == 0
                {
                    return Err(StoreError::NoSuchUser.into());
                }
                Ok(())
            })
        })
        .await
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.with_conn(ANSWER_TIMEOUT, |conn| {
            Box::pin(async move {
                let statement = conn.prepare_cached(LIST_USERS).await?;
                let rows = conn.query(&statement, &[]).await?;
                Ok(rows.iter().map(user_from_row).collect::<Result<_, _>>()?)
            })
        })
        .await
    }

    async fn count_users(&self) -> Result<u64, StoreError> {
        self.with_conn(ANSWER_TIMEOUT, |conn| {
            Box::pin(async move {
                let row = conn.query_one("SELECT count(*) FROM users", &[]).await?;
                Ok(from_db(row.try_get(0)?))
            })
        })
        .await
    }

    async fn account_version(&self) -> Result<u64, StoreError> {
        self.with_conn(ANSWER_TIMEOUT, |conn| {
            Box::pin(async move {
                let row = conn
                    .query_one("SELECT version FROM account_changes WHERE id = 1", &[])
                    .await?;
                Ok(from_db(row.try_get(0)?))
            })
        })
        .await
    }

    async fn open_room(&self, name: &str) -> Result<RoomHead, StoreError> {
        if let Some(head) = self.room(name).await? {
            return Ok(head);
        }
        let name = name.to_owned();
        self.write(|reply| WriteJob::OpenRoom { name, reply }).await
    }

    async fn room(&self, name: &str) -> Result<Option<RoomHead>, StoreError> {
        let name = name.to_owned();
        self.with_conn(ANSWER_TIMEOUT, move |conn| {
            Box::pin(async move { Ok(room_head(conn, &name).await?) })
        })
        .await
    }

    async fn list_rooms(
        &self,
        after: Option<&str>,
        limit: usize,
        viewer: Option<&str>,
    ) -> Result<Vec<RoomRecord>, StoreError> {
        let after = after.map(str::to_owned);
        let viewer = viewer.map(str::to_owned);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(ANSWER_TIMEOUT, move |conn| {
            Box::pin(async move {
                let statement = conn.prepare_cached(LIST_ROOMS).await?;
                let rows = conn.query(&statement, &[&after, &limit, &viewer]).await?;
                let rooms = rows
                    .iter()
                    .map(|row| {
                        Ok(RoomRecord {
                            id: RoomId(row.try_get(0)?),
                            name: row.try_get(1)?,
                            last_seq: from_db(row.try_get(2)?),
                            private: row.try_get(4)?,
                            last_activity: row.try_get(3)?,
                            rev: from_db(row.try_get(5)?),
                        })
                    })
                    .collect::<Result<_, PgError>>()?;
                Ok(rooms)
            })
        })
        .await
    }

    async fn create_private_room(
        &self,
        name: &str,
        members: &[&str],
    ) -> Result<Option<RoomHead>, StoreError> {
        let name = name.to_owned();
        let members: Vec<String> = members.iter().map(|m| (*m).to_owned()).collect();
        let ts = now_ms();
        // One statement: write_alone's connection runs no transaction.
        self.write_alone(move |conn| {
            Box::pin(async move {
                let statement = conn.prepare_cached(CREATE_PRIVATE_ROOM).await?;
                let row = match conn.query_opt(&statement, &[&name, &ts, &members]).await {
                    Ok(row) => row,
                    Err(err) if is_foreign_key_violation(&err) => {
                        let constraint = err.as_db_error().and_then(|db| db.constraint());
                        if constraint == Some(ACCOUNT_ROOMS_USER_FKEY) {
                            // A member is not (or no longer) a user: the
                            // room was not created either.
                            return Err(StoreError::NoSuchUser.into());
                        }
                        return Err(err.into());
                    }
                    Err(err) => return Err(err.into()),
                };
                let Some(row) = row else {
                    return Ok(None);
                };
                Ok(Some(RoomHead {
                    id: RoomId(row.try_get(0)?),
                    last_seq: from_db(row.try_get(1)?),
                    private: true,
                    rev: 0,
                }))
            })
        })
        .await
    }

    async fn count_rooms(&self) -> Result<u64, StoreError> {
        self.with_conn(ANSWER_TIMEOUT, |conn| {
            Box::pin(async move {
                let row = conn.query_one("SELECT count(*) FROM rooms", &[]).await?;
                Ok(from_db(row.try_get(0)?))
            })
        })
        .await
    }

    async fn delete_room(&self, name: &str, requested_by: SessionId) -> Result<RoomId, StoreError> {
        let name = name.to_owned();
        self.write(|reply| WriteJob::DeleteRoom {
            name,
            requested_by,
            reply,
        })
        .await
    }

    async fn append(
        &self,
        room: RoomId,
        user: &str,
        text: &str,
        reply_to: Option<u64>,
    ) -> Result<Appended, StoreError> {
        // PostgreSQL text cannot hold NUL. The protocol refuses control
        // characters before this point; checking here keeps one bad message
        // from failing its whole batch.
        if user.contains('\0') || text.contains('\0') {
            return Err(no_nul());
        }
        let (user, text) = (user.to_owned(), text.to_owned());
        self.write(|reply| WriteJob::Append {
            room,
            user,
            text,
            reply_to,
            reply,
        })
        .await
    }

    async fn change(
        &self,
        room: RoomId,
        seq: u64,
        user: &str,
        admin: bool,
        change: Change,
        answer: Option<Answer>,
    ) -> Result<Changed, StoreError> {
        let words = match &change {
            Change::Edit { text } => text.as_str(),
            Change::Delete => "",
            Change::React { emoji } => emoji.as_str(),
        };
        if user.contains('\0') || words.contains('\0') {
            return Err(no_nul());
        }
        let user = user.to_owned();
        self.write(|reply| WriteJob::Change {
            room,
            seq,
            user,
            admin,
            change,
            answer,
            reply,
        })
        .await
    }

    async fn changed_since(
        &self,
        room: RoomId,
        name: &str,
        after_rev: u64,
        after_seq: u64,
        upto_seq: u64,
        limit: usize,
    ) -> Result<(Vec<MessageRecord>, u64), StoreError> {
        let name = name.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(ANSWER_TIMEOUT, move |conn| {
            Box::pin(async move {
                let statement = conn.prepare_cached(CHANGED_SINCE).await?;
                let rows = conn
                    .query(
                        &statement,
                        &[
                            &room.0,
                            &to_db(after_rev),
                            &to_db(after_seq),
                            &to_db(upto_seq),
                            &limit,
                        ],
                    )
                    .await?;
                let Some(first) = rows.first() else {
                    return Err(StoreError::NoSuchRoom.into());
                };
                let rev = from_db(first.try_get(0)?);
                let mut messages = Vec::with_capacity(rows.len());
                for row in &rows {
                    if row.try_get::<_, Option<i64>>(1)?.is_none() {
                        continue; // the row of NULLs: nothing changed
                    }
                    messages.push(message_from_row(&name, row, 1)?);
                }
                Ok((messages, rev))
            })
        })
        .await
    }

    async fn events(
        &self,
        room: RoomId,
        name: &str,
        after: Position,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let name = name.to_owned();
        self.with_conn(ANSWER_TIMEOUT, move |conn| {
            Box::pin(async move { Ok(read_events(conn, &name, room, after, upto, limit).await?) })
        })
        .await
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        if query.words.is_empty() || query.limit == 0 {
            return Ok(SearchPage::default());
        }
        let terms = tsquery(&query.words);
        let before = query.before.unwrap_or(i64::MAX);
        let room = query.room.map(|r| r.0);
        let viewer = query.viewer.clone();
        let limit = query.limit;
        // One more than the page: whether there is a next one.
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
        let rarest = match query.words.len() {
            1 => None,
            _ => self.word_stats().await.and_then(|stats| {
                let fetch = usize::try_from(fetch).unwrap_or(usize::MAX);
                stats
                    .rarest(&query.words, fetch)
                    .map(|word| tsquery(&[word.to_owned()]))
            }),
        };
        self.with_conn(ANSWER_TIMEOUT, move |conn| {
            Box::pin(async move {
                let rows = match &rarest {
                    None => {
                        let statement = conn.prepare_cached(SEARCH).await?;
                        conn.query(&statement, &[&terms, &before, &room, &viewer, &fetch])
                            .await?
                    }
                    Some(rare) => {
                        let statement = conn.prepare_cached(SEARCH_RARE).await?;
                        let params: [&(dyn ToSql + Sync); 6] =
                            [&terms, &before, &room, &viewer, &fetch, rare];
                        conn.query(&statement, &params).await?
                    }
                };
                let mut page = SearchPage::default();
                for row in rows.iter().take(limit) {
                    let name: String = row.try_get(1)?;
                    page.messages.push(message_from_row(&name, row, 2)?);
                }
                if rows.len() > limit {
                    page.next = Some(rows[limit - 1].try_get(0)?);
                }
                Ok(page)
            })
        })
        .await
    }

    async fn history(
        &self,
        name: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        let name = name.to_owned();
        // The newest seq the page may hold, and how many.
        let end = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX) - 1);
        let count = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(ANSWER_TIMEOUT, move |conn| {
            Box::pin(async move {
                let statement = conn.prepare_cached(HISTORY_PAGE).await?;
                let rows = conn.query(&statement, &[&name, &end, &count]).await?;
                let Some(first) = rows.first() else {
                    return Err(StoreError::NoSuchRoom.into());
                };
                let last: i64 = first.try_get(0)?;
                let mut messages = Vec::with_capacity(rows.len());
                for row in &rows {
                    if row.try_get::<_, Option<i64>>(1)?.is_none() {
                        continue; // the empty page's row of NULLs
                    }
                    messages.push(message_from_row(&name, row, 1)?);
                }
                Ok(HistoryPage {
                    has_more: match messages.first() {
                        Some(m) => m.seq > 1,
                        None => last > 0,
                    },
                    messages,
                })
            })
        })
        .await
    }

    async fn range(
        &self,
        room: RoomId,
        name: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let last = upto.min(after.saturating_add(limit as u64));
        if last <= after {
            return Ok(Vec::new());
        }
        let name = name.to_owned();
        self.with_conn(ANSWER_TIMEOUT, move |conn| {
            Box::pin(async move { Ok(read_range(conn, &name, room, after + 1, last).await?) })
        })
        .await
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        self.with_conn(ANSWER_TIMEOUT, |conn| {
            Box::pin(async move {
                let row = conn
                    .query_one(
                        "SELECT NOT EXISTS (SELECT 1 FROM users)
                            AND NOT EXISTS (SELECT 1 FROM rooms)",
                        &[],
                    )
                    .await?;
                Ok(row.try_get(0)?)
            })
        })
        .await
    }

    async fn import_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let user = user.clone();
        self.write_alone(move |conn| {
            Box::pin(async move {
                let inserted = conn
                    .execute(
                        CREATE_USER,
                        &[&user.name, &user.password_hash, &user.admin, &user.created],
                    )
                    .await?;
                if inserted == 0 {
                    return Err(StoreError::UserExists.into());
                }
                Ok(())
            })
        })
        .await
    }

    async fn import_room(&self, room: &RoomRecord) -> Result<RoomId, StoreError> {
        let room = room.clone();
        self.write_alone(move |conn| {
            Box::pin(async move {
                let row = conn
                    .query_one(
                        "INSERT INTO rooms (name, last_seq, last_activity, private, rev)
                         VALUES ($1, $2, $3, $4, $5)
                         RETURNING id",
                        &[
                            &room.name,
                            &to_db(room.last_seq),
                            &room.last_activity,
                            &room.private,
                            &to_db(room.rev),
                        ],
                    )
                    .await?;
                Ok(RoomId(row.try_get(0)?))
            })
        })
        .await
    }

    async fn import_messages(
        &self,
        room: RoomId,
        messages: &[MessageRecord],
    ) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = messages.iter().map(|m| to_db(m.seq)).collect();
        let users: Vec<String> = messages.iter().map(|m| m.user.clone()).collect();
        let texts: Vec<String> = messages.iter().map(|m| m.text.clone()).collect();
        let stamps: Vec<i64> = messages.iter().map(|m| m.ts).collect();
        let replies: Vec<Option<i64>> = messages.iter().map(|m| m.reply_to.map(to_db)).collect();
        let edits: Vec<Option<i64>> = messages.iter().map(|m| m.edited_ts).collect();
        let deleted: Vec<bool> = messages.iter().map(|m| m.deleted).collect();
        // Reactions, one row per user. Their `rev` only orders a message's
        // reactions (see `reactions_of_m!`), and the copy has no change log:
        // they are ranked in the order the record lists them, which reads
        // back as the same record, below any real rev (which start at 1) so
        // that reactions made after the copy come after them. The change
        // log is not copied; the rooms keep their `rev` (import_room).
        let (mut r_seqs, mut r_emoji, mut r_users, mut r_ranks) = (vec![], vec![], vec![], vec![]);
        for message in messages {
            let count: usize = message
                .reactions
                .0
                .iter()
                .map(|(_, users)| users.len())
                .sum();
            let mut rank = -(count as i64);
            for (emoji, users) in &message.reactions.0 {
                for user in users {
                    r_seqs.push(to_db(message.seq));
                    r_emoji.push(emoji.clone());
                    r_users.push(user.clone());
                    r_ranks.push(rank);
                    rank += 1;
                }
            }
        }
        // One statement: atomic, and one round trip however many messages.
        self.write_alone(move |conn| {
            Box::pin(async move {
                let statement = conn.prepare_cached(IMPORT_MESSAGES).await?;
                conn.execute(
                    &statement,
                    &[
                        &room.0, &seqs, &users, &texts, &stamps, &replies, &edits, &deleted,
                        &r_seqs, &r_emoji, &r_users, &r_ranks,
                    ],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn account_rooms(&self, user: &str) -> Result<Vec<AccountRoomRecord>, StoreError> {
        let user = user.to_owned();
        self.with_conn(ANSWER_TIMEOUT, move |conn| {
            Box::pin(async move {
                let statement = conn.prepare_cached(ACCOUNT_ROOMS).await?;
                let rows = conn.query(&statement, &[&user]).await?;
                let rooms = rows
                    .iter()
                    .map(|row| {
                        let last_seq = from_db(row.try_get(2)?);
                        let read = from_db(row.try_get(3)?);
                        Ok(AccountRoomRecord {
                            room_id: RoomId(row.try_get(0)?),
                            name: row.try_get(1)?,
                            last_seq,
                            read: read.min(last_seq),
                            private: row.try_get(4)?,
                        })
                    })
                    .collect::<Result<_, PgError>>()?;
                Ok(rooms)
            })
        })
        .await
    }

    async fn remember_room(&self, user: &str, room: RoomId) -> Result<(), StoreError> {
        let user = user.to_owned();
        self.write_alone(move |conn| {
            Box::pin(async move {
                let statement = conn.prepare_cached(REMEMBER_ROOM).await?;
                match conn.execute(&statement, &[&user, &room.0]).await {
                    // The account or the room is gone: its rows went with
                    // it, this one would have too.
                    Err(err) if is_foreign_key_violation(&err) => Ok(()),
                    Err(err) => Err(err.into()),
                    Ok(_) => Ok(()),
                }
            })
        })
        .await
    }

    async fn is_member(&self, user: &str, room: RoomId) -> Result<bool, StoreError> {
        let user = user.to_owned();
        self.with_conn(ANSWER_TIMEOUT, move |conn| {
            Box::pin(async move {
                let statement = conn.prepare_cached(IS_MEMBER).await?;
                let row = conn.query_one(&statement, &[&user, &room.0]).await?;
                Ok(row.try_get(0)?)
            })
        })
        .await
    }

    async fn forget_room(&self, user: &str, room: RoomId) -> Result<(), StoreError> {
        let user = user.to_owned();
        self.write_alone(move |conn| {
            Box::pin(async move {
                let statement = conn.prepare_cached(FORGET_ROOM).await?;
                conn.execute(&statement, &[&user, &room.0]).await?;
                Ok(())
            })
        })
        .await
    }

    async fn mark_read(
        &self,
        user: &str,
        room: RoomId,
        seq: u64,
    ) -> Result<Option<u64>, StoreError> {
        let user = user.to_owned();
        let seq = to_db(seq);
        self.write_alone(move |conn| {
            Box::pin(async move {
                let statement = conn.prepare_cached(MARK_READ).await?;
                let row = match conn.query_opt(&statement, &[&user, &room.0, &seq]).await {
                    Ok(row) => row,
                    Err(err) if is_foreign_key_violation(&err) => {
                        let constraint = err.as_db_error().and_then(|db| db.constraint());
                        if constraint == Some(ACCOUNT_ROOMS_ROOM_FKEY) {
                            // Deleted after the statement read it.
                            return Err(StoreError::NoSuchRoom.into());
                        }
                        // The account is gone: no marker to move.
                        return Ok(None);
                    }
                    Err(err) => return Err(err.into()),
                };
                let Some(row) = row else {
                    return Err(StoreError::NoSuchRoom.into());
                };
                let target = from_db(row.try_get(0)?);
                let moved: bool = row.try_get(1)?;
                Ok(moved.then_some(target))
            })
        })
        .await
    }

    async fn all_account_rooms(&self) -> Result<Vec<AccountRoomRow>, StoreError> {
        self.with_conn(ANSWER_TIMEOUT, |conn| {
            Box::pin(async move {
                let statement = conn.prepare_cached(ALL_ACCOUNT_ROOMS).await?;
                let rows = conn.query(&statement, &[]).await?;
                let rows = rows
                    .iter()
                    .map(|row| {
                        Ok(AccountRoomRow {
                            user: row.try_get(0)?,
                            room: row.try_get(1)?,
                            read: from_db(row.try_get(2)?),
                        })
                    })
                    .collect::<Result<_, PgError>>()?;
                Ok(rows)
            })
        })
        .await
    }

    async fn import_account_room(
        &self,
        user: &str,
        room: RoomId,
        read: u64,
    ) -> Result<(), StoreError> {
        let user = user.to_owned();
        let read = to_db(read);
        self.write_alone(move |conn| {
            Box::pin(async move {
                let statement = conn.prepare_cached(IMPORT_ACCOUNT_ROOM).await?;
                conn.execute(&statement, &[&user, &room.0, &read]).await?;
                Ok(())
            })
        })
        .await
    }

    async fn close(&self) {
        // Dropping the queue's sender lets the writer finish what is queued
        // and stop.
        drop(self.jobs.lock().ok().and_then(|mut jobs| jobs.take()));
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(writer) = writer {
            let _ = writer.await;
        }
        self.pool.close();
    }
}

#[cfg(test)]
#[path = "postgres_tests.rs"]
mod on_postgres;

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};

    use super::*;

    fn append(room: i64, user: &str, text: &str) -> WriteJob {
        WriteJob::Append {
            room: RoomId(room),
            user: user.into(),
            text: text.into(),
            reply_to: None,
            reply: oneshot::channel().0,
        }
    }

    fn react(room: i64, seq: u64, user: &str) -> WriteJob {
        WriteJob::Change {
            room: RoomId(room),
            seq,
            user: user.into(),
            admin: false,
            change: Change::React {
                emoji: "👍".into()
            },
            answer: None,
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://chat:s3cret@db.example:5432/chat"),
            "postgres://chat:***@db.example:5432/chat"
        );
        assert_eq!(
            redact("postgresql://chat@db/chat?sslmode=disable&password=s3cret"),
            "postgresql://chat@db/chat?sslmode=disable&password=***"
        );
        assert_eq!(redact("postgres://db/chat"), "postgres://db/chat");
        assert_eq!(redact("postgres://chat@db/chat"), "postgres://chat@db/chat");
        // A password with characters a URL should have escaped is still
        // hidden whole.
        for odd in ["a@b", "a/b", "a?b", "a?b@c"] {
            let url = format!("postgres://chat:{odd}@db/chat");
            assert_eq!(redact(&url), "postgres://chat:***@db/chat", "{odd}");
        }
        assert_eq!(
            redact("postgres://chat:a@b@db/chat?application_name=x@y"),
            "postgres://chat:***@db/chat?application_name=x@y"
        );
        assert_eq!(
            redact("host=db user=chat password=s3cret dbname=chat"),
            "host=db user=chat password=*** dbname=chat"
        );
        assert_eq!(
            redact("host=db password = 'it\\'s a \\\\ secret' user=chat"),
            "host=db password=*** user=chat"
        );
        assert_eq!(redact("host=db passwordless=1"), "host=db passwordless=1");
    }

    #[test]
    fn session_options_come_first() {
        assert_eq!(
            session_options(None, Durability::Full),
            "-c statement_timeout=10000 -c idle_in_transaction_session_timeout=30000"
        );
        assert!(
            session_options(Some("-c search_path=chat"), Durability::Full)
                .ends_with("idle_in_transaction_session_timeout=30000 -c search_path=chat")
        );
        assert!(session_options(None, Durability::Relaxed).ends_with(" -c synchronous_commit=off"));
    }

    #[test]
    fn bad_urls_are_one_line_without_the_password() {
        let Err(StoreError::Open(line)) =
            configure("postgres://u:s3cret@h:port/db", Durability::Full)
        else {
            panic!("a bad port must not parse");
        };
        assert!(line.starts_with("invalid PostgreSQL URL postgres://u:***@h:port/db: "));
        assert!(!line.contains("s3cret") && !line.contains('\n'), "{line}");
        let config = configure("postgres://u@h/db", Durability::Full).unwrap();
        assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(config.get_application_name(), Some("chat-server"));
    }

    #[tokio::test]
    async fn unreachable_servers_fail_to_open_with_one_line() {
        // A port nobody listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://chat:s3cret@127.0.0.1:{port}/chat");
        let (feed, _) = mpsc::channel(1);
        let opened = timeout(Duration::from_secs(30), PostgresStore::open(&url, feed)).await;
        let Ok(Err(StoreError::Open(line))) = opened else {
            panic!("opening must fail, quickly");
        };
        assert_eq!(
            line,
            format!("cannot connect to PostgreSQL at postgres://chat:***@127.0.0.1:{port}/chat: connection refused")
        );
    }

    #[test]
    fn plans_lay_out_appends_and_lock_every_room() {
        let jobs = vec![
            append(5, "ann", "a"),
            append(3, "bob", "b"),
            WriteJob::DeleteRoom {
                name: "old".into(),
                requested_by: SessionId(1),
                reply: oneshot::channel().0,
            },
            react(9, 1, "cat"),
            append(5, "cat", "c"),
            WriteJob::Append {
                room: RoomId(7),
                user: "dan".into(),
                text: "d".into(),
                reply_to: Some(4),
                reply: oneshot::channel().0,
            },
            append(3, "eve", "e"),
        ];
        let plan = Plan::new(&jobs);
        assert_eq!(plan.rooms, [3, 5, 7, 9], "rooms ascending: the lock order");
        assert_eq!(plan.message_rooms, [5, 3, 5, 7, 3], "queue order");
        assert_eq!(plan.users, ["ann", "bob", "cat", "dan", "eve"]);
        assert_eq!(plan.texts, ["a", "b", "c", "d", "e"]);
        assert_eq!(plan.reply_to, [None, None, None, Some(4), None]);
        assert_eq!(plan.deleted, ["old"]);
    }

    #[test]
    fn appends_take_what_the_statement_answered() {
        let jobs = vec![
            append(5, "ann", "a"),
            append(3, "bob", "b"),
            append(5, "cat", "c"),
            append(7, "dan", "d"),
            append(3, "eve", "e"),
        ];
        let plan = Plan::new(&jobs);
        let stored = |name: &str, seq, rev| Placed::Stored {
            name: name.into(),
            seq,
            rev,
        };
        // Room 7 is gone; cat's reply target was not there.
        let placed = [
            stored("five", 1, 0),
            stored("three", 11, 4),
            Placed::BadReply,
            Placed::NoRoom,
            stored("three", 12, 4),
        ];
        let (outcomes, stored) = plan.place(&placed, 42);
        let seqs: Vec<Option<u64>> = outcomes
            .iter()
            .map(|o| match o {
                Outcome::Appended(a) => Some(a.seq),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, [Some(1), Some(11), None, None, Some(12)]);
        assert!(matches!(
            outcomes[2],
            Outcome::Refused(StoreError::NoSuchMessage)
        ));
        assert!(matches!(
            outcomes[3],
            Outcome::Refused(StoreError::NoSuchRoom)
        ));
        let announced: Vec<(i64, &str, Position, &str)> = stored
            .iter()
            .map(|s| {
                let RoomEvent::Message(m) = &s.event else {
                    panic!("only messages");
                };
                assert_eq!(
                    (m.room.as_str(), m.seq, m.ts),
                    (s.room.as_str(), s.at.seq, 42)
                );
                (s.room_id.0, s.room.as_str(), s.at, m.user.as_str())
            })
            .collect();
        let at = |seq, rev| Position { seq, rev };
        assert_eq!(
            announced,
            [
                (5, "five", at(1, 0), "ann"),
                (3, "three", at(11, 4), "bob"),
                (3, "three", at(12, 4), "eve"),
            ]
        );
    }

    #[test]
    fn search_words_become_quoted_prefixes() {
        let words = |w: &[&str]| w.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        assert_eq!(tsquery(&words(&["héllo", "42"])), "'héllo':* & '42':*");
        // Never produced by the protocol's word splitting, but harmless.
        assert_eq!(tsquery(&words(&["it's", "a\\b"])), "'it''s':* & 'a\\\\b':*");
    }

    #[test]
    fn the_search_query_uses_the_indexed_column() {
        let indexed = search_document!().replace("m.", "");
        assert!(MIGRATIONS[4].contains(&format!("USING gin ({indexed})")));
        assert!(SEARCH.contains(search_document!()));
    }

    #[test]
    fn rare_jobs_run_deletions_first_then_names_in_order() {
        let open = |name: &str| WriteJob::OpenRoom {
            name: name.into(),
            reply: oneshot::channel().0,
        };
        let delete = |name: &str| WriteJob::DeleteRoom {
            name: name.into(),
            requested_by: SessionId(1),
            reply: oneshot::channel().0,
        };
        let user = |name: &str| WriteJob::CreateUser {
            user: UserRecord {
                name: name.into(),
                password_hash: String::new(),
                admin: false,
                created: 0,
            },
            reply: oneshot::channel().0,
        };
        let jobs = vec![
            open("y"),
            user("bob"),
            append(1, "ann", "a"),
            delete("z"),
            open("x"),
            user("ann"),
            delete("a"),
            react(1, 1, "ann"),
        ];
        assert_eq!(rare_job_order(&jobs), [3, 6, 4, 0, 5, 1]);
    }

    /// Pending on its first poll (recording it), ready on the next.
    struct Request {
        id: usize,
        polled: Arc<Mutex<Vec<usize>>>,
        sent: bool,
    }

    impl Future for Request {
        type Output = usize;

        fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<usize> {
            if self.sent {
                return Poll::Ready(self.id);
            }
            self.sent = true;
            self.polled.lock().unwrap().push(self.id);
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn pipelines_send_everything_in_order_first() {
        let polled = Arc::new(Mutex::new(Vec::new()));
        let futures: Vec<BoxFuture<'_, usize>> = (0..40)
            .map(|id| {
                Box::pin(Request {
                    id,
                    polled: polled.clone(),
                    sent: false,
                }) as BoxFuture<'_, usize>
            })
            .collect();
        let outputs = pipelined(futures).await;
        assert_eq!(outputs, (0..40).collect::<Vec<_>>());
        assert_eq!(*polled.lock().unwrap(), (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn classifies_errors() {
        assert!(is_retryable(&SqlState::T_R_DEADLOCK_DETECTED));
        assert!(is_retryable(&SqlState::T_R_SERIALIZATION_FAILURE));
        assert!(!is_retryable(&SqlState::UNIQUE_VIOLATION));
        assert!(is_job_specific(&SqlState::UNIQUE_VIOLATION));
        assert!(is_job_specific(&SqlState::CHARACTER_NOT_IN_REPERTOIRE));
        assert!(!is_job_specific(&SqlState::READ_ONLY_SQL_TRANSACTION));
        assert!(!is_job_specific(&SqlState::QUERY_CANCELED));
        assert_eq!(
            io_reason(&io::Error::from(io::ErrorKind::ConnectionRefused)),
            "connection refused"
        );
    }
}
