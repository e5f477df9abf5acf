//! Password hashing and checking with argon2id (OWASP parameters: 19 MiB,
//! two passes, one lane), and admission to it.
//!
//! Each hash costs tens of milliseconds of CPU, so it runs on tokio's
//! blocking threads behind a semaphore of one permit per core: a flood of
//! logins queues here instead of starving the threads that deliver messages.
//! Unknown users are checked against a dummy hash, so the time of an answer
//! does not reveal which names exist.
//!
//! The queue is what an attacker aims at: connections that pipeline wrong
//! passwords would push every real login past its client's timeout. So a
//! login must be admitted before it may wait ([`Auth::admit`]):
//! - the queue is bounded ([`MAX_QUEUED`]); past it a login is answered
//!   `busy` at once, unhashed;
//! - one source address has at most [`MAX_IN_FLIGHT_PER_ADDRESS`] logins
//!   waiting or hashing, so it cannot fill the queue alone;
//! - each address has a budget of failed logins ([`FAILURES_PER_MINUTE`]);
//!   once spent, its logins are answered `busy` until it refills. The
//!   budget is per address, so one address never locks out another.
//!
//! IPv6 addresses count per /64, the block one subscriber usually holds.
//! A waiting login is a future: the session drops it, unhashed, when the
//! connection closes or the login deadline passes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::Arc;
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

/// Logins waiting for or holding a hashing permit, all addresses together.
pub const MAX_QUEUED: usize = 64;
/// Logins of one address waiting for or holding a hashing permit.
pub const MAX_IN_FLIGHT_PER_ADDRESS: u32 = 8;
/// Failed logins (and registrations) an address may have per minute.
pub const FAILURES_PER_MINUTE: f64 = 10.0;
/// Addresses remembered before idle ones are forgotten.
const MAX_ADDRESSES: usize = 10_000;

/// Why a login was not admitted: answered `busy`, unhashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAdmitted {
    /// Too many logins are waiting, from everybody.
    QueueFull,
    /// This address has too many logins waiting.
    AddressBusy,
    /// This address failed too often lately.
    TooManyFailures,
}

/// What is known of one source address.
struct Address {
    /// Its logins waiting or hashing.
    in_flight: u32,
    /// Failed logins it may still have (refills at
    /// [`FAILURES_PER_MINUTE`] per minute, up to that many).
    budget: f64,
    refilled: Instant,
}

impl Address {
    fn refill(&mut self, now: Instant) {
        let minutes = now.duration_since(self.refilled).as_secs_f64() / 60.0;
        self.budget = (self.budget + minutes * FAILURES_PER_MINUTE).min(FAILURES_PER_MINUTE);
        self.refilled = now;
    }

    fn idle(&self) -> bool {
        self.in_flight == 0 && self.budget >= FAILURES_PER_MINUTE
    }
}

/// The key an address is counted under: itself, or its /64 for IPv6.
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
        v4 => v4,
    }
}

/// Hashing off the async runtime, limited to the cores the machine has,
/// with admission control in front.
pub struct Auth {
    permits: Arc<Semaphore>,
    /// Checked when the user does not exist, to spend the same time.
    dummy_hash: Arc<str>,
    /// Logins admitted and not finished.
    queued: AtomicUsize,
    addresses: Mutex<HashMap<IpAddr, Address>>,
}

/// An admitted login: holds its place in the queue and its address's
/// count until dropped.
pub struct Admission<'a> {
    auth: &'a Auth,
    address: IpAddr,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.auth.queued.fetch_sub(1, Ordering::Relaxed);
        let mut addresses = self.auth.lock();
        if let Some(address) = addresses.get_mut(&self.address) {
            address.in_flight = address.in_flight.saturating_sub(1);
        }
    }
}

impl Admission<'_> {
    /// True when `password` matches `phc`; with `None` (unknown user)
    /// spends the time of a real check and returns false.
    pub async fn verify(&self, password: String, phc: Option<String>) -> bool {
        self.auth.verify(password, phc).await
    }

    /// Hashes a new password; `None` if hashing failed.
    pub async fn hash(&self, password: String) -> Option<String> {
        self.auth.hash(password).await
    }
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
            queued: AtomicUsize::new(0),
            addresses: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Address>> {
        self.addresses.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a login from `peer` queue for hashing, or says why not.
    pub fn admit(&self, peer: IpAddr) -> Result<Admission<'_>, NotAdmitted> {
        let key = address_key(peer);
        let now = Instant::now();
        let mut addresses = self.lock();
        if addresses.len() >= MAX_ADDRESSES && !addresses.contains_key(&key) {
            addresses.retain(|_, a| {
                a.refill(now);
                !a.idle()
            });
        }
        let address = addresses.entry(key).or_insert(Address {
            in_flight: 0,
            budget: FAILURES_PER_MINUTE,
            refilled: now,
        });
        address.refill(now);
        if address.budget < 1.0 {
            return Err(NotAdmitted::TooManyFailures);
        }
        // Logins already under way may all fail: each holds one unit of the
        // budget, or pipelined guesses would overshoot it by the number in
        // flight every time it refills.
        if address.in_flight >= MAX_IN_FLIGHT_PER_ADDRESS
            || address.budget < 1.0 + f64::from(address.in_flight)
        {
            return Err(NotAdmitted::AddressBusy);
        }
        if self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MAX_QUEUED).then_some(n + 1)
            })
            .is_err()
        {
            return Err(NotAdmitted::QueueFull);
        }
        address.in_flight += 1;
        Ok(Admission {
            auth: self,
            address: key,
        })
    }

    /// Counts a failed login (or registration) of `peer` against its
    /// address's budget.
    pub fn failed(&self, peer: IpAddr) {
        let now = Instant::now();
        if let Some(address) = self.lock().get_mut(&address_key(peer)) {
            address.refill(now);
            address.budget = (address.budget - 1.0).max(0.0);
        }
    }

    /// True when `password` matches `phc`; with `None` (unknown user) spends
    /// the time of a real check and returns false.
    async fn verify(&self, password: String, phc: Option<String>) -> bool {
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
    async fn hash(&self, password: String) -> Option<String> {
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
    fn admission_is_bounded_per_address_and_in_all() {
        let auth = Auth::new();
        let attacker: IpAddr = "127.0.0.2".parse().unwrap();
        let user: IpAddr = "127.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..MAX_IN_FLIGHT_PER_ADDRESS)
            .map(|_| auth.admit(attacker).unwrap())
            .collect();
        assert_eq!(auth.admit(attacker).err(), Some(NotAdmitted::AddressBusy));
        // Another address is not locked out.
        drop(auth.admit(user).unwrap());
        drop(held);
        // Failures spend the attacker's budget, not the user's.
        for _ in 0..FAILURES_PER_MINUTE as usize {
            drop(auth.admit(attacker).unwrap());
            auth.failed(attacker);
        }
        assert_eq!(
            auth.admit(attacker).err(),
            Some(NotAdmitted::TooManyFailures)
        );
        assert!(auth.admit(user).is_ok());
        // Logins in flight hold their share of the budget: with one failure
        // left, one login may be under way, not eight.
        let tight: IpAddr = "127.0.0.3".parse().unwrap();
        drop(auth.admit(tight).unwrap()); // the address is known now
        if let Some(address) = auth.lock().get_mut(&tight) {
            address.budget = 1.0;
        }
        let one = auth.admit(tight).unwrap();
        assert_eq!(auth.admit(tight).err(), Some(NotAdmitted::AddressBusy));
        drop(one);
        // The whole queue is bounded, whoever fills it.
        let many: Vec<_> = (0..MAX_QUEUED)
            .filter_map(|i| {
                auth.admit(IpAddr::from([10, 0, (i / 200) as u8, i as u8]))
                    .ok()
            })
            .collect();
        assert_eq!(many.len(), MAX_QUEUED);
        assert_eq!(auth.admit(user).err(), Some(NotAdmitted::QueueFull));
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(address_key(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn hashes_are_argon2id_phc_and_verify() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("wrong horse", &phc));
        assert!(!verify_password("correct horse", "garbage"));
    }
}
