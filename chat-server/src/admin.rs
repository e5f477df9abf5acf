//! The account subcommands (`useradd`, `passwd`, `userdel`, `users`),
//! `migrate-db` and `export`. They go through the same [`Store`] as the server (which
//! may be running: both databases order concurrent writers) and print
//! one-line errors.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use chat_proto::validate::{is_valid_name, is_valid_password};

use crate::auth::hash_password;
use crate::store::{self, Database, Durability, Store, StoreError};

/// Runs an admin command's body on a small runtime of its own.
fn block_on<T>(work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?
        .block_on(work)
}

async fn open(db: &Database) -> Result<Arc<dyn Store>> {
    // The commit feed is for delivery to members: nobody listens here.
    let (store, _feed) = store::open(db, Durability::Full)
        .await
        .with_context(|| format!("cannot open database {db}"))?;
    Ok(store)
}

/// Reads a new password: prompted twice without echo on a terminal,
/// otherwise one line from standard input.
fn read_new_password(user: &str) -> Result<String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("New password for {user}: "))?;
        let second = rpassword::prompt_password("Repeat it: ")?;
        if first != second {
            bail!("the passwords do not match");
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if !is_valid_password(&password) {
        bail!("passwords must be 8 to 1024 bytes");
    }
    Ok(password)
}

fn check_name(name: &str) -> Result<()> {
    if !is_valid_name(name) {
        bail!("invalid user name {name:?}: use 1 to 32 characters from A-Z a-z 0-9 _ - .");
    }
    Ok(())
}

/// `chat-server useradd NAME [--admin]`.
pub fn useradd(db: &Database, name: &str, admin: bool) -> Result<()> {
    check_name(name)?;
    block_on(async {
        let store = open(db).await?;
        if store.find_user(name).await?.is_some() {
            bail!("user {name} already exists");
        }
        let password = read_new_password(name)?;
        let hash = hash_password(&password).map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
        let created = store.create_user(name, &hash, admin).await;
        store.close().await;
        match created {
            Err(StoreError::UserExists) => bail!("user {name} already exists"),
            other => other?,
        }
        println!(
            "created {}user {name} in {db}",
            if admin { "admin " } else { "" },
        );
        Ok(())
    })
}

/// `chat-server passwd NAME`.
pub fn passwd(db: &Database, name: &str) -> Result<()> {
    block_on(async {
        let store = open(db).await?;
        if store.find_user(name).await?.is_none() {
            bail!("no user {name}");
        }
        let password = read_new_password(name)?;
        let hash = hash_password(&password).map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
        let changed = store.set_password(name, &hash).await;
        store.close().await;
        match changed {
            Err(StoreError::NoSuchUser) => bail!("no user {name}"),
            other => other?,
        }
        println!("password of {name} changed");
        Ok(())
    })
}

/// `chat-server userdel NAME`.
pub fn userdel(db: &Database, name: &str) -> Result<()> {
    block_on(async {
        let store = open(db).await?;
        let deleted = store.delete_user(name).await;
        store.close().await;
        match deleted {
            Err(StoreError::NoSuchUser) => bail!("no user {name}"),
            other => other?,
        }
        println!("deleted user {name} (their messages stay in history)");
        Ok(())
    })
}

/// `chat-server users`: a table of name, admin, created.
pub fn users(db: &Database) -> Result<()> {
    block_on(async {
        let store = open(db).await?;
        let users = store.list_users().await;
        store.close().await;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{:<32}  {:<5}  CREATED (UTC)", "NAME", "ADMIN")?;
        for user in users? {
            writeln!(
                out,
                "{:<32}  {:<5}  {}",
                user.name,
                if user.admin { "yes" } else { "no" },
                format_utc(user.created)
            )?;
        }
        Ok(())
    })
}

/// Messages copied per transaction by `migrate-db`.
const COPY_PAGE: usize = 5000;

/// What `migrate-db` copied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub users: usize,
    pub rooms: usize,
    pub messages: u64,
    /// Rooms of accounts, with their read markers.
    pub account_rooms: usize,
}

/// `chat-server migrate-db --from A --to B`: copies every user (with its
/// password hash), room and message (with its seq and timestamp) into an
/// empty database. The servers using `from` should be stopped first, or
/// messages sent during the copy may be missed.
pub fn migrate_db(from: &Database, to: &Database) -> Result<Copied> {
    if from == to {
        bail!("--from and --to are the same database");
    }
    block_on(async {
        let source = open(from).await?;
        let target = open(to).await?;
        let copied = copy_store(source.as_ref(), target.as_ref()).await;
        source.close().await;
        target.close().await;
        let copied = copied?;
        println!(
            "copied {} users, {} rooms and {} messages from {from} to {to}",
            copied.users, copied.rooms, copied.messages
        );
        println!(
            "copied {} rooms of accounts, with their read markers",
            copied.account_rooms
        );
        Ok(copied)
    })
}

async fn copy_store(source: &dyn Store, target: &dyn Store) -> Result<Copied> {
    if !target.is_empty().await? {
        bail!("the target database already has users or rooms: migrate-db only copies into an empty one");
    }
    let mut copied = Copied::default();
    for user in source.list_users().await? {
        target.import_user(&user).await?;
        copied.users += 1;
    }
    let mut rooms = Vec::new();
    loop {
        let after = rooms
            .last()
            .map(|r: &crate::store::RoomRecord| r.name.clone());
        let page = source.list_rooms(after.as_deref(), COPY_PAGE, None).await?;
        let done = page.len() < COPY_PAGE;
        rooms.extend(page);
        if done {
            break;
        }
    }
    let mut ids = std::collections::HashMap::new();
    for room in rooms {
        let id = target.import_room(&room).await?;
        ids.insert(room.name.clone(), id);
        let mut after = 0;
        while after < room.last_seq {
            let page = source
                .range(room.id, &room.name, after, room.last_seq, COPY_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            target.import_messages(id, &page).await?;
            copied.messages += page.len() as u64;
        }
        copied.rooms += 1;
    }
    for row in source.all_account_rooms().await? {
        // A room created after the room list was read is not copied.
        if let Some(&id) = ids.get(&row.room) {
            target.import_account_room(&row.user, id, row.read).await?;
            copied.account_rooms += 1;
        }
    }
    Ok(copied)
}

/// `YYYY-MM-DD HH:MM` (UTC) for milliseconds since the epoch.
fn format_utc(ms: i64) -> String {
    chat_proto::export::utc_minute(ms)
        .trim_end_matches(" UTC")
        .to_owned()
}

/// The formats of `chat-server export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON message object per line, as in `history`.
    #[default]
    Jsonl,
    /// A readable document, as chat-tui's `/export` writes it.
    Markdown,
}

/// Messages read from the store at a time by `export`: what it holds in
/// memory, whatever the size of the room.
const EXPORT_PAGE: usize = 1000;

/// `chat-server export ROOM`: writes the room's whole history, with edits,
/// deletions and reactions applied, to `out`, a page at a time (constant
/// memory). Returns how many messages it wrote.
pub fn export(db: &Database, room: &str, format: ExportFormat, out: impl Write) -> Result<u64> {
    if !chat_proto::validate::is_valid_room(room) {
        bail!("invalid room name {room:?}: use 1 to 32 characters from A-Z a-z 0-9 _ - .");
    }
    block_on(async {
        let store = open(db).await?;
        let written = export_room(store.as_ref(), room, format, out).await;
        store.close().await;
        written
    })
}

async fn export_room(
    store: &dyn Store,
    room: &str,
    format: ExportFormat,
    out: impl Write,
) -> Result<u64> {
    use chat_proto::export::{jsonl_line, markdown_header, markdown_message};
    let head = store
        .room(room)
        .await?
        .with_context(|| format!("there is no room {room}"))?;
    let mut out = std::io::BufWriter::new(out);
    let write_err = |e: std::io::Error| anyhow::anyhow!("cannot write the export: {e}");
    if format == ExportFormat::Markdown {
        out.write_all(markdown_header(room).as_bytes())
            .map_err(write_err)?;
    }
    let mut after = 0;
    let mut written = 0;
    while after < head.last_seq {
        let page = store
            .range(head.id, room, after, head.last_seq, EXPORT_PAGE)
            .await?;
        let Some(last) = page.last().map(|m| m.seq) else {
            break;
        };
        for message in &page {
            let text = match format {
                ExportFormat::Jsonl => jsonl_line(message),
                ExportFormat::Markdown => {
                    // The answered message is in this page, or read alone.
                    let replied = match message.reply_to {
                        Some(to) if to > after => page.iter().find(|m| m.seq == to).cloned(),
                        Some(to) => store
                            .range(head.id, room, to - 1, to, 1)
                            .await?
                            .into_iter()
                            .next(),
                        None => None,
                    };
                    markdown_message(message, replied.as_ref())
                }
            };
            out.write_all(text.as_bytes()).map_err(write_err)?;
            written += 1;
        }
        after = last;
    }
    out.flush().map_err(write_err)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_dates() {
        assert_eq!(super::format_utc(0), "1970-01-01 00:00");
        assert_eq!(super::format_utc(1_764_000_000_000), "2025-11-24 16:00");
        assert_eq!(super::format_utc(951_782_400_000), "2000-02-29 00:00");
    }
}
