//! Open files: every connection is a file descriptor, and so are the
//! database, its pool, Redis and the listener. Past the process's limit,
//! `accept` fails (and so would the store), so the limit is settled at
//! start: raised to the hard limit, and `--max-connections` lowered to fit
//! under it when it cannot be raised far enough.

/// Descriptors kept for everything that is not a client connection: the
/// listener, the database file and its write-ahead log, the read pool or
/// PostgreSQL pool, Redis, logs, and the spare one of [`Spare`].
pub const RESERVED: u64 = 64;

/// How the limit was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// The open-files limit now in force.
    pub limit: u64,
    /// Connections that fit under it.
    pub max_connections: usize,
    /// True when `max_connections` had to be lowered.
    pub lowered: bool,
}

/// Raises the soft open-files limit to the hard one and fits
/// `max_connections` under it.
#[cfg(unix)]
pub fn settle(max_connections: usize) -> std::io::Result<Settled> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    // rlim_t is u64 on Linux but not everywhere.
    #[allow(clippy::unnecessary_cast)]
    let current = limit.rlim_cur as u64;
    Ok(fit(current, max_connections))
}

#[cfg(not(unix))]
pub fn settle(max_connections: usize) -> std::io::Result<Settled> {
    Ok(Settled {
        limit: u64::MAX,
        max_connections,
        lowered: false,
    })
}

/// `max_connections`, lowered if needed to fit under `limit` descriptors.
fn fit(limit: u64, max_connections: usize) -> Settled {
    let room = limit.saturating_sub(RESERVED).max(1);
    if max_connections as u64 > room {
        Settled {
            limit,
            max_connections: room as usize,
            lowered: true,
        }
    } else {
        Settled {
            limit,
            max_connections,
            lowered: false,
        }
    }
}

/// One descriptor held in reserve. When `accept` fails because the process
/// is out of descriptors, the spare is let go for a moment so that the
/// waiting connection can be accepted, told HTTP 503, and closed, instead
/// of staying in the backlog and making `accept` fail again at once.
pub struct Spare(Option<std::fs::File>);

impl Spare {
    pub fn new() -> Spare {
        Spare(std::fs::File::open("/dev/null").ok())
    }

    /// Frees the descriptor (before the accept that will use it).
    pub fn release(&mut self) {
        self.0 = None;
    }

    /// Takes a descriptor again (after the refused connection closed).
    pub fn restore(&mut self) {
        if self.0.is_none() {
            self.0 = std::fs::File::open("/dev/null").ok();
        }
    }
}

impl Default for Spare {
    fn default() -> Self {
        Spare::new()
    }
}

/// True for the errors of a full descriptor table.
pub fn out_of_descriptors(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_under_the_limit() {
        assert_eq!(fit(1024, 100).max_connections, 100);
        assert!(!fit(1024, 100).lowered);
        let lowered = fit(1024, 20_000);
        assert_eq!(lowered.max_connections, 1024 - RESERVED as usize);
        assert!(lowered.lowered);
        assert_eq!(fit(10, 5).max_connections, 1);
    }
}
