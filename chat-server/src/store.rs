//! The message store: users, rooms and history in one SQLite file.
//!
//! Every write goes through one writer thread that batches whatever is queued
//! into a single transaction (group commit): under load, hundreds of sends
//! share one fsync. A send is acknowledged only after its transaction
//! committed. Right after each commit the writer hands the stored messages,
//! in `seq` order, to the [`CommitListener`] so that delivery to members never
//! overtakes durability and never reorders a room.
//!
//! Reads (history pages, backlogs, logins) run on a small pool of read-only
//! connections on tokio's blocking threads; WAL mode lets them proceed while
//! the writer commits. The async methods of [`Store`] are the narrow interface
//! the rest of the server uses, so another backend could stand behind them.
//!
//! `seq` is allocated inside the storing transaction from `rooms.last_seq`,
//! and write transactions start with `BEGIN IMMEDIATE`, so several server
//! processes sharing the file (cluster mode) still number a room 1, 2, 3, …
//! with no holes.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_proto::MessageRecord;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use rusqlite_migration::{Migrations, M};
use tokio::sync::oneshot;

/// Most jobs folded into one transaction.
const MAX_BATCH: usize = 1024;
/// How long a write waits for another process holding the database lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Read connections kept open for reuse.
const READ_POOL: usize = 8;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database schema upgrade failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    #[error("cannot use database folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no such room")]
    NoSuchRoom,
    #[error("user already exists")]
    UserExists,
    #[error("no such user")]
    NoSuchUser,
    #[error("the store has shut down")]
    Closed,
}

/// A user account as stored.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub admin: bool,
    /// Milliseconds since the Unix epoch.
    pub created: i64,
}

/// A room as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecord {
    pub name: String,
    pub last_seq: u64,
    /// Time of the newest message (or of creation), milliseconds.
    pub last_activity: i64,
}

/// One page of history, ascending.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub messages: Vec<MessageRecord>,
    pub has_more: bool,
}

/// A message as the writer committed it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The room's id: never reused, so it tells a room from a later one of
    /// the same name.
    pub room_id: i64,
    pub message: MessageRecord,
}

/// Told about every commit, in commit order, from the writer thread. Must not
/// block: it runs between transactions.
pub trait CommitListener: Send + Sync + 'static {
    /// Messages just made durable, in `seq` order per room.
    fn messages_stored(&self, messages: Vec<Stored>);
    /// A room was just deleted; `requested_by` is the session that asked.
    fn room_deleted(&self, room: &str, room_id: i64, requested_by: u64);
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(
            "CREATE TABLE users (
             id INTEGER PRIMARY KEY,
             name TEXT NOT NULL UNIQUE,
             password_hash TEXT NOT NULL,
             admin INTEGER NOT NULL DEFAULT 0,
             created_at INTEGER NOT NULL
         );
         CREATE TABLE rooms (
             id INTEGER PRIMARY KEY,
             name TEXT NOT NULL UNIQUE,
             last_seq INTEGER NOT NULL DEFAULT 0,
             last_activity INTEGER NOT NULL
         );
         -- Clustered on (room_id, seq): a history page is one range scan,
         -- whatever the size of the table.
         CREATE TABLE messages (
             room_id INTEGER NOT NULL,
             seq INTEGER NOT NULL,
             user TEXT NOT NULL,
             text TEXT NOT NULL,
             ts INTEGER NOT NULL,
             PRIMARY KEY (room_id, seq)
         ) WITHOUT ROWID;",
        ),
        // Room ids must never be reused: a deleted room's id could otherwise
        // come back for a new room of the same name, and delivery would
        // mistake one for the other.
        M::up(
            "CREATE TABLE rooms_v2 (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 name TEXT NOT NULL UNIQUE,
                 last_seq INTEGER NOT NULL DEFAULT 0,
                 last_activity INTEGER NOT NULL
             );
             INSERT INTO rooms_v2 (id, name, last_seq, last_activity)
                 SELECT id, name, last_seq, last_activity FROM rooms;
             DROP TABLE rooms;
             ALTER TABLE rooms_v2 RENAME TO rooms;",
        ),
    ])
}

/// Opens (creating if needed) the database at `path`, upgrades its schema and
/// sets the connection up for the writer. Used by the server and by the admin
/// subcommands.
pub fn open(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Folder {
            path: dir.to_owned(),
            source,
        })?;
    }
    let existed = path.exists();
    let mut conn = Connection::open(path)?;
    if !existed {
        restrict_permissions(path);
    }
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // In WAL mode NORMAL still survives a crash of the process (kill -9):
    // only a power loss can undo the newest commits.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    migrations().to_latest(&mut conn)?;
    Ok(conn)
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // The file holds password hashes: owner only.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

#[cfg(not(unix))]
fn restrict_permissions(_path: &Path) {}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

// ---- Queries on a connection: shared by the server and the admin CLI. ----

/// Looks a user up by name.
pub fn find_user(conn: &Connection, name: &str) -> Result<Option<UserRecord>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT name, password_hash, admin, created_at FROM users WHERE name = ?1",
            [name],
            |row| {
                Ok(UserRecord {
                    name: row.get(0)?,
                    password_hash: row.get(1)?,
                    admin: row.get(2)?,
                    created: row.get(3)?,
                })
            },
        )
        .optional()?)
}

/// Every user, by name.
pub fn list_users(conn: &Connection) -> Result<Vec<UserRecord>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT name, password_hash, admin, created_at FROM users ORDER BY name")?;
    let rows = stmt.query_map([], |row| {
        Ok(UserRecord {
            name: row.get(0)?,
            password_hash: row.get(1)?,
            admin: row.get(2)?,
            created: row.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Number of user accounts.
pub fn count_users(conn: &Connection) -> Result<u64, StoreError> {
    Ok(conn.query_row("SELECT COUNT(*) FROM users", [], |row| row.get(0))?)
}

/// Adds a user; `UserExists` when the name is taken.
pub fn insert_user(
    conn: &Connection,
    name: &str,
    password_hash: &str,
    admin: bool,
) -> Result<(), StoreError> {
    let inserted = conn.execute(
        "INSERT INTO users (name, password_hash, admin, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(name) DO NOTHING",
        params![name, password_hash, admin, now_ms()],
    )?;
    if inserted == 0 {
        return Err(StoreError::UserExists);
    }
    Ok(())
}

/// Replaces a user's password hash.
pub fn set_password(conn: &Connection, name: &str, password_hash: &str) -> Result<(), StoreError> {
    let changed = conn.execute(
        "UPDATE users SET password_hash = ?2 WHERE name = ?1",
        params![name, password_hash],
    )?;
    if changed == 0 {
        return Err(StoreError::NoSuchUser);
    }
    Ok(())
}

/// Removes a user account (their messages stay in history).
pub fn delete_user(conn: &Connection, name: &str) -> Result<(), StoreError> {
    if conn.execute("DELETE FROM users WHERE name = ?1", [name])? == 0 {
        return Err(StoreError::NoSuchUser);
    }
    Ok(())
}

fn room_id_and_last_seq(conn: &Connection, room: &str) -> Result<Option<(i64, u64)>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id, last_seq FROM rooms WHERE name = ?1",
            [room],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?)
}

fn read_range(
    conn: &Connection,
    room: &str,
    room_id: i64,
    first: u64,
    last: u64,
) -> Result<Vec<MessageRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, user, text, ts FROM messages
         WHERE room_id = ?1 AND seq >= ?2 AND seq <= ?3 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![room_id, first, last], |row| {
        Ok(MessageRecord {
            room: room.to_owned(),
            seq: row.get(0)?,
            user: row.get(1)?,
            text: row.get(2)?,
            ts: row.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

// ---- The writer thread. ----

enum WriteJob {
    Append {
        room_id: i64,
        user: String,
        text: String,
        reply: oneshot::Sender<Result<MessageRecord, StoreError>>,
    },
    CreateRoom {
        room: String,
        reply: oneshot::Sender<Result<(i64, u64), StoreError>>,
    },
    DeleteRoom {
        room: String,
        requested_by: u64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    CreateUser {
        name: String,
        password_hash: String,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// What a job produced inside the transaction, answered after commit.
enum Outcome {
    Appended(Stored),
    Created(i64, u64),
    Deleted(i64),
    Done,
    Refused(StoreError),
}

fn run_job(tx: &rusqlite::Transaction<'_>, job: &WriteJob) -> Result<Outcome, StoreError> {
    match job {
        WriteJob::Append {
            room_id,
            user,
            text,
            ..
        } => {
            let ts = now_ms();
            // By id, not name: a send for a deleted room must not land in a
            // new room that took its name.
            let allocated: Option<(String, u64)> = tx
                .prepare_cached(
                    "UPDATE rooms SET last_seq = last_seq + 1, last_activity = ?2
                     WHERE id = ?1 RETURNING name, last_seq",
                )?
                .query_row(params![room_id, ts], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let Some((room, seq)) = allocated else {
                return Ok(Outcome::Refused(StoreError::NoSuchRoom));
            };
            let room_id = *room_id;
            tx.prepare_cached(
                "INSERT INTO messages (room_id, seq, user, text, ts) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![room_id, seq, user, text, ts])?;
            Ok(Outcome::Appended(Stored {
                room_id,
                message: MessageRecord {
                    room,
                    seq,
                    user: user.clone(),
                    text: text.clone(),
                    ts,
                },
            }))
        }
        WriteJob::CreateRoom { room, .. } => {
            tx.prepare_cached(
                "INSERT INTO rooms (name, last_seq, last_activity) VALUES (?1, 0, ?2)
                 ON CONFLICT(name) DO NOTHING",
            )?
            .execute(params![room, now_ms()])?;
            match room_id_and_last_seq(tx, room)? {
                Some((id, last_seq)) => Ok(Outcome::Created(id, last_seq)),
                None => Ok(Outcome::Refused(StoreError::NoSuchRoom)),
            }
        }
        WriteJob::DeleteRoom { room, .. } => {
            let Some((room_id, _)) = room_id_and_last_seq(tx, room)? else {
                return Ok(Outcome::Refused(StoreError::NoSuchRoom));
            };
            tx.execute("DELETE FROM messages WHERE room_id = ?1", [room_id])?;
            tx.execute("DELETE FROM rooms WHERE id = ?1", [room_id])?;
            Ok(Outcome::Deleted(room_id))
        }
        WriteJob::CreateUser {
            name,
            password_hash,
            ..
        } => match insert_user(tx, name, password_hash, false) {
            Err(StoreError::UserExists) => Ok(Outcome::Refused(StoreError::UserExists)),
            other => other.map(|()| Outcome::Done),
        },
    }
}

fn answer(job: WriteJob, outcome: Result<Outcome, StoreError>) {
    // A dropped receiver means the session went away; nothing to tell.
    match job {
        WriteJob::Append { reply, .. } => {
            let _ = reply.send(match outcome {
                Ok(Outcome::Appended(stored)) => Ok(stored.message),
                Ok(Outcome::Refused(e)) | Err(e) => Err(e),
                Ok(_) => Err(StoreError::Closed),
            });
        }
        WriteJob::CreateRoom { reply, .. } => {
            let _ = reply.send(match outcome {
                Ok(Outcome::Created(id, seq)) => Ok((id, seq)),
                Ok(Outcome::Refused(e)) | Err(e) => Err(e),
                Ok(_) => Err(StoreError::Closed),
            });
        }
        WriteJob::DeleteRoom { reply, .. } | WriteJob::CreateUser { reply, .. } => {
            let _ = reply.send(match outcome {
                Ok(Outcome::Refused(e)) | Err(e) => Err(e),
                Ok(_) => Ok(()),
            });
        }
    }
}

fn writer_loop(
    mut conn: Connection,
    jobs: mpsc::Receiver<WriteJob>,
    listener: Arc<dyn CommitListener>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut stored = Vec::new();
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let result = (|| -> Result<Vec<Result<Outcome, StoreError>>, StoreError> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut outcomes = Vec::with_capacity(batch.len());
            for job in &batch {
                outcomes.push(Ok(run_job(&tx, job)?));
            }
            tx.commit()?;
            Ok(outcomes)
        })();
        match result {
            Ok(outcomes) => {
                // Deliveries and deletions are announced in commit order, so
                // a room's members never see a message after its deletion.
                for (job, outcome) in batch.iter().zip(&outcomes) {
                    match (job, outcome) {
                        (_, Ok(Outcome::Appended(m))) => stored.push(m.clone()),
                        (
                            WriteJob::DeleteRoom {
                                room, requested_by, ..
                            },
                            Ok(Outcome::Deleted(room_id)),
                        ) => {
                            if !stored.is_empty() {
                                listener.messages_stored(std::mem::take(&mut stored));
                            }
                            listener.room_deleted(room, *room_id, *requested_by);
                        }
                        _ => {}
                    }
                }
                if !stored.is_empty() {
                    listener.messages_stored(std::mem::take(&mut stored));
                }
                for (job, outcome) in batch.drain(..).zip(outcomes) {
                    answer(job, outcome);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, jobs = batch.len(), "write transaction failed");
                for job in batch.drain(..) {
                    answer(job, Err(StoreError::Closed));
                }
            }
        }
    }
    tracing::debug!("store writer finished");
}

// ---- The async interface. ----

/// Handle to the store, cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<WriteJob>>>,
    writer: Mutex<Option<thread::JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
}

impl Store {
    /// Opens the database and starts the writer thread. `listener` hears of
    /// every stored message.
    pub fn open(path: &Path, listener: Arc<dyn CommitListener>) -> Result<Store, StoreError> {
        let conn = open(path)?;
        let (tx, rx) = mpsc::channel();
        let writer = thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(conn, rx, listener))
            .map_err(|source| StoreError::Folder {
                path: path.to_owned(),
                source,
            })?;
        Ok(Store {
            inner: Arc::new(StoreInner {
                path: path.to_owned(),
                jobs: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(writer)),
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Finishes every queued write, then stops the writer thread.
    pub fn close(&self) {
        if let Ok(mut jobs) = self.inner.jobs.lock() {
            jobs.take();
        }
        let handle = self.inner.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteJob,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        {
            let jobs = self.inner.jobs.lock().map_err(|_| StoreError::Closed)?;
            let jobs = jobs.as_ref().ok_or(StoreError::Closed)?;
            jobs.send(make(reply)).map_err(|_| StoreError::Closed)?;
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().ok().and_then(|mut pool| pool.pop());
            let conn = match pooled {
                Some(conn) => conn,
                None => open_reader(&inner.path)?,
            };
            let result = query(&conn);
            if let Ok(mut pool) = inner.readers.lock() {
                if pool.len() < READ_POOL {
                    pool.push(conn);
                }
            }
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Stores a message in the room with id `room_id`; returns it with its
    /// `seq` and `ts` once committed.
    pub async fn append(
        &self,
        room_id: i64,
        user: &str,
        text: String,
    ) -> Result<MessageRecord, StoreError> {
        let user = user.to_owned();
        self.write(|reply| WriteJob::Append {
            room_id,
            user,
            text,
            reply,
        })
        .await
    }

    /// The room's id and newest `seq`, creating the room when it does not
    /// exist.
    pub async fn open_room(&self, room: &str) -> Result<(i64, u64), StoreError> {
        if let Some(found) = self.room(room).await? {
            return Ok(found);
        }
        let room = room.to_owned();
        self.write(|reply| WriteJob::CreateRoom { room, reply })
            .await
    }

    /// Deletes a room and its history; `NoSuchRoom` when it does not exist.
    /// The listener hears of it with `requested_by`.
    pub async fn delete_room(&self, room: &str, requested_by: u64) -> Result<(), StoreError> {
        let room = room.to_owned();
        self.write(|reply| WriteJob::DeleteRoom {
            room,
            requested_by,
            reply,
        })
        .await
    }

    /// The room's id and newest `seq`, or `None` when it does not exist.
    pub async fn room(&self, room: &str) -> Result<Option<(i64, u64)>, StoreError> {
        let room = room.to_owned();
        self.read(move |conn| room_id_and_last_seq(conn, &room))
            .await
    }

    /// Creates a (non-admin) user; `UserExists` when the name is taken.
    pub async fn create_user(&self, name: &str, password_hash: String) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write(|reply| WriteJob::CreateUser {
            name,
            password_hash,
            reply,
        })
        .await
    }

    /// Looks a user up by name.
    pub async fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| find_user(conn, &name)).await
    }

    /// Number of user accounts.
    pub async fn user_count(&self) -> Result<u64, StoreError> {
        self.read(count_users).await
    }

    /// Every room, by name.
    pub async fn rooms(&self) -> Result<Vec<RoomRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT name, last_seq, last_activity FROM rooms ORDER BY name")?;
            let rows = stmt.query_map([], |row| {
                Ok(RoomRecord {
                    name: row.get(0)?,
                    last_seq: row.get(1)?,
                    last_activity: row.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Up to `limit` messages with `seq < before` (all when `before` is
    /// `None`) and `seq <= upto`, ascending. `NoSuchRoom` for an unknown room.
    pub async fn history(
        &self,
        room: &str,
        before: Option<u64>,
        upto: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        let room = room.to_owned();
        self.read(move |conn| {
            let (room_id, last_seq) =
                room_id_and_last_seq(conn, &room)?.ok_or(StoreError::NoSuchRoom)?;
            let mut last = upto.map_or(last_seq, |u| u.min(last_seq));
            if let Some(before) = before {
                last = last.min(before.saturating_sub(1));
            }
            if last == 0 || limit == 0 {
                return Ok(HistoryPage {
                    messages: Vec::new(),
                    has_more: last > 0,
                });
            }
            // seq has no holes, so the page is a plain range.
            let first = last.saturating_sub(limit as u64 - 1).max(1);
            let messages = read_range(conn, &room, room_id, first, last)?;
            Ok(HistoryPage {
                has_more: messages.first().is_some_and(|m| m.seq > 1),
                messages,
            })
        })
        .await
    }

    /// Messages of the room with id `room_id` (named `room`) with
    /// `after < seq <= upto`, ascending, at most `limit`. A deleted room has
    /// none.
    pub async fn range(
        &self,
        room_id: i64,
        room: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let room = room.to_owned();
        self.read(move |conn| {
            let last = upto.min(after.saturating_add(limit as u64));
            if last <= after {
                return Ok(Vec::new());
            }
            read_range(conn, &room, room_id, after + 1, last)
        })
        .await
    }
}
