//! What every scenario needs before it sends load: its servers (started here
//! on a temporary database, or given with `--url`), the options shared by
//! all subcommands, and a fresh name prefix so runs never meet each other's
//! rooms and accounts.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use rand::Rng;

use crate::client::Target;
use crate::procs::{self, ProcSample, RedisProc, ServerOptions, ServerProc};

/// Options every scenario takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Use a running server instead of starting one (loopback only). Its
    /// send rate limit must be off (`--send-rate 0`) and registration open.
    #[arg(long)]
    pub url: Option<String>,
    /// Pid of the server given with --url, for its CPU and memory figures.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The chat-server binary [default: next to this executable].
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// A few seconds with small numbers: checks that the scenario works,
    /// measures nothing worth quoting (CI runs this).
    #[arg(long)]
    pub smoke: bool,
}

/// The servers of one scenario and what is needed to reach them.
pub struct Servers {
    pub targets: Vec<Target>,
    pub pids: Vec<u32>,
    pub procs: Vec<ServerProc>,
    _redis: Option<RedisProc>,
    pub dir: Option<tempfile::TempDir>,
}

impl Servers {
    /// One server: the `--url` one, or a fresh one on a temporary database.
    pub fn single(common: &Common) -> Result<Servers> {
        if let Some(url) = &common.url {
            return Ok(Servers {
                targets: vec![Target::parse(url)?],
                pids: common.server_pid.into_iter().collect(),
                procs: Vec::new(),
                _redis: None,
                dir: None,
            });
        }
        let dir = tempfile::tempdir()?;
        let binary = procs::server_binary(common.server_bin.as_deref())?;
        let server = ServerProc::start(&binary, &dir.path().join("bench.db"), &Default::default())?;
        Ok(Servers {
            targets: vec![Target::parse(server.url())?],
            pids: vec![server.pid()],
            procs: vec![server],
            _redis: None,
            dir: Some(dir),
        })
    }

    /// `nodes` servers sharing one database through a private Redis.
    pub fn cluster(common: &Common, nodes: usize) -> Result<Servers> {
        if common.url.is_some() {
            bail!("the cluster scenario starts its own nodes: --url is not supported");
        }
        let dir = tempfile::tempdir()?;
        let binary = procs::server_binary(common.server_bin.as_deref())?;
        let redis = RedisProc::start()?;
        let options = ServerOptions {
            redis: Some(redis.url()),
            args: Vec::new(),
        };
        let mut servers = Servers {
            targets: Vec::new(),
            pids: Vec::new(),
            procs: Vec::new(),
            _redis: Some(redis),
            dir: None,
        };
        let db = dir.path().join("bench.db");
        for _ in 0..nodes {
            let server = ServerProc::start(&binary, &db, &options)?;
            servers.targets.push(Target::parse(server.url())?);
            servers.pids.push(server.pid());
            servers.procs.push(server);
        }
        servers.dir = Some(dir);
        Ok(servers)
    }

    /// Resident memory of the first server, when its pid is known.
    pub fn rss_bytes(&self) -> Option<u64> {
        self.pids
            .first()
            .and_then(|pid| ProcSample::of(*pid))
            .map(|s| s.rss_bytes)
    }

    /// Stops the servers this run started; their log tails go to stderr if
    /// one failed to stop cleanly.
    pub fn stop(self) -> Result<()> {
        for server in self.procs {
            let log = server.log();
            if let Err(err) = server.stop() {
                eprintln!("chat-bench: {err:#}; server log:\n{log}");
            }
        }
        Ok(())
    }
}

/// A fresh prefix for room and user names: `b` and six hex digits.
pub fn prefix() -> String {
    format!("b{:06x}", rand::thread_rng().gen::<u32>() & 0xff_ffff)
}
