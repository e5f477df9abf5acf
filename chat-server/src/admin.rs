//! User management from the command line: `useradd`, `passwd`, `userdel`,
//! `users`. These open the database directly (the server may be running:
//! SQLite's locking keeps both consistent) and print one-line errors.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use chat_proto::validate::{is_valid_name, is_valid_password};

use crate::auth::hash_password;
use crate::store::{self, StoreError};

fn open(db: &Path) -> Result<rusqlite::Connection> {
    store::open(db).with_context(|| format!("cannot open database {}", db.display()))
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
pub fn useradd(db: &Path, name: &str, admin: bool) -> Result<()> {
    check_name(name)?;
    let conn = open(db)?;
    if store::find_user(&conn, name)?.is_some() {
        bail!("user {name} already exists");
    }
    let password = read_new_password(name)?;
    let hash = hash_password(&password).map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
    match store::insert_user(&conn, name, &hash, admin) {
        Err(StoreError::UserExists) => bail!("user {name} already exists"),
        other => other?,
    }
    println!(
        "created {}user {name} in {}",
        if admin { "admin " } else { "" },
        db.display()
    );
    Ok(())
}

/// `chat-server passwd NAME`.
pub fn passwd(db: &Path, name: &str) -> Result<()> {
    let conn = open(db)?;
    if store::find_user(&conn, name)?.is_none() {
        bail!("no user {name}");
    }
    let password = read_new_password(name)?;
    let hash = hash_password(&password).map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
    store::set_password(&conn, name, &hash)?;
    println!("password of {name} changed");
    Ok(())
}

/// `chat-server userdel NAME`.
pub fn userdel(db: &Path, name: &str) -> Result<()> {
    let conn = open(db)?;
    match store::delete_user(&conn, name) {
        Err(StoreError::NoSuchUser) => bail!("no user {name}"),
        other => other?,
    }
    println!("deleted user {name} (their messages stay in history)");
    Ok(())
}

/// `chat-server users`: a table of name, admin, created.
pub fn users(db: &Path) -> Result<()> {
    let conn = open(db)?;
    let users = store::list_users(&conn)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<32}  {:<5}  CREATED (UTC)", "NAME", "ADMIN")?;
    for user in users {
        writeln!(
            out,
            "{:<32}  {:<5}  {}",
            user.name,
            if user.admin { "yes" } else { "no" },
            format_utc(user.created)
        )?;
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM` for milliseconds since the epoch (civil-from-days,
/// proleptic Gregorian).
fn format_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
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
