//! Password hashing and checking with argon2id (OWASP parameters: 19 MiB,
//! two passes, one lane).
//!
//! Each hash costs tens of milliseconds of CPU, so it runs on tokio's
//! blocking threads behind a semaphore of one permit per core: a flood of
//! logins queues here instead of starving the threads that deliver messages.
//! Unknown users are checked against a dummy hash, so the time of an answer
//! does not reveal which names exist.

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// OWASP's recommended argon2id settings.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password into a PHC string (blocking; for the CLI and for
/// [`Auth::hash`]).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Checks a password against a PHC string (blocking). A malformed hash is
/// treated as a mismatch.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => argon2().verify_password(password.as_bytes(), &hash).is_ok(),
        Err(_) => false,
    }
}

/// Hashing off the async runtime, limited to the cores the machine has.
#[derive(Clone)]
pub struct Auth {
    permits: Arc<Semaphore>,
    /// Checked when the user does not exist, to spend the same time.
    dummy_hash: Arc<str>,
}

impl Auth {
    /// One concurrent hash per core.
    pub fn new() -> Auth {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let dummy_hash = hash_password("not a real password, only for timing")
            .unwrap_or_default()
            .into();
        Auth {
            permits: Arc::new(Semaphore::new(cores)),
            dummy_hash,
        }
    }

    /// True when `password` matches `phc`; with `None` (unknown user) spends
    /// the time of a real check and returns false.
    pub async fn verify(&self, password: String, phc: Option<String>) -> bool {
        let dummy = self.dummy_hash.clone();
        self.run(move || match phc {
            Some(phc) => verify_password(&password, &phc),
            None => {
                verify_password(&password, &dummy);
                false
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Hashes a new password; `None` if hashing failed.
    pub async fn hash(&self, password: String) -> Option<String> {
        self.run(move || hash_password(&password).ok())
            .await
            .flatten()
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let _permit = self.permits.acquire().await.ok()?;
        tokio::task::spawn_blocking(work).await.ok()
    }
}

impl Default for Auth {
    fn default() -> Self {
        Auth::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_phc_and_verify() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("wrong horse", &phc));
        assert!(!verify_password("correct horse", "garbage"));
    }
}
