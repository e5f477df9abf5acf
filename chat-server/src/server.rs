//! The server: shared state, the accept loop, and graceful shutdown.
//!
//! [`Server::start`] opens the store, starts the fan-out and the hub, and
//! returns a server ready to [`Server::run`] on an already-bound listener
//! (tests bind port 0). A connection takes a permit of the `--max-connections` semaphore
//! before its handshake; without one it is answered with HTTP 503 and
//! closed. Shutdown stops accepting, closes every session with 1001, waits
//! for them (bounded), then lets the store writer finish its queue.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::auth::Auth;
use crate::cluster::{Cluster, ClusterError};
use crate::fanout::{Fanout, LocalFanout};
use crate::fdlimit;
use crate::hub::{Hub, RoomLimits};
use crate::rooms::Rooms;
use crate::store::{self, Database, Durability, StoreError};

/// How the server runs, from the command line.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// SQLite file or PostgreSQL URL.
    pub db: Database,
    /// Rooms in all (0: no limit).
    pub max_rooms: u64,
    /// Rooms a non-admin user may create per hour (0: no limit).
    pub room_quota: u32,
    /// Whether an ack waits for the commit to survive a power cut.
    pub durability: Durability,
    /// Let anyone create an account with `register`.
    pub open_registration: bool,
    /// Connections served at once; more are refused.
    pub max_connections: usize,
    /// Connections served at once from one address (IPv6: one /64); 0 for
    /// no limit.
    pub max_connections_per_ip: usize,
    /// Sends per second per connection (0: unlimited), and the burst.
    pub send_rate: u32,
    pub send_burst: u32,
    /// Redis URL for cluster mode.
    pub redis: Option<String>,
    /// Serve `wss://` with this certificate; `None` serves plain `ws://`.
    pub tls: Option<crate::tls::Tls>,
}

/// What every session shares.
pub struct ServerState {
    pub config: ServeConfig,
    pub hub: Arc<Hub>,
    pub auth: Auth,
    pub next_session_id: AtomicU64,
    /// Flips to true when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open database {db}: {source}")]
    Store { db: Database, source: StoreError },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// A started server, not yet accepting.
pub struct Server {
    state: Arc<ServerState>,
    stop: watch::Sender<bool>,
}

impl Server {
    /// Starts the parts in one direction: the store, then the fan-out
    /// (local, or Redis in cluster mode), then the hub over both.
    pub async fn start(config: ServeConfig) -> Result<Server, StartError> {
        let (store, feed) = store::open(&config.db, config.durability)
            .await
            .map_err(|source| StartError::Store {
                db: config.db.clone(),
                source,
            })?;
        let (rooms, gap_requests) = Rooms::new();
        let rooms = Arc::new(rooms);
        // Events for a user's connections, from the other nodes to the hub.
        let (user_events, from_other_nodes) = mpsc::channel(crate::hub::USER_EVENTS_QUEUE);
        let fanout: Arc<dyn Fanout> = match &config.redis {
            Some(url) => Cluster::connect(url, rooms.clone(), store.clone(), user_events).await?,
            None => Arc::new(LocalFanout::new(rooms.clone())),
        };
        let limits = RoomLimits {
            max_rooms: config.max_rooms,
            per_user_per_hour: config.room_quota,
        };
        let hub = Hub::new(
            store,
            feed,
            rooms,
            gap_requests,
            fanout,
            from_other_nodes,
            limits,
        );
        let (stop, shutdown) = watch::channel(false);
        let state = Arc::new(ServerState {
            config,
            hub,
            auth: Auth::new(),
            next_session_id: AtomicU64::new(1),
            shutdown,
        });
        Ok(Server { state, stop })
    }

    /// The shared state (for logging at start).
    pub fn state(&self) -> &Arc<ServerState> {
        &self.state
    }

    /// Accepts connections on `listener` until `stop` resolves, then shuts
    /// down gracefully.
    pub async fn run(self, listener: TcpListener, stop: impl std::future::Future<Output = ()>) {
        let permits = Arc::new(Semaphore::new(self.state.config.max_connections));
        let per_address = Arc::new(AddressSlots::new(self.state.config.max_connections_per_ip));
        let mut sessions = JoinSet::new();
        let mut spare = fdlimit::Spare::new();
        let mut out_of_files = false;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        out_of_files = false;
                        let Some(slot) = AddressSlots::take(&per_address, peer.ip()) else {
                            tracing::debug!(%peer, "connection refused: --max-connections-per-ip reached");
                            tokio::spawn(refuse(stream, TOO_MANY_FROM_ADDRESS));
                            continue;
                        };
                        match permits.clone().try_acquire_owned() {
                            Ok(permit) => {
                                let state = self.state.clone();
                                sessions.spawn(async move {
                                    crate::session::serve(stream, peer, state).await;
                                    drop(permit);
                                    drop(slot);
                                });
                            }
                            Err(_) => {
                                tracing::warn!(%peer, "connection refused: --max-connections reached");
                                tokio::spawn(refuse(stream, SERVER_FULL));
                            }
                        }
                    }
                    Err(err) if fdlimit::out_of_descriptors(&err) => {
                        // The limit is settled at start so this should not
                        // happen; if it does (another process's descriptors
                        // count too, with ENFILE), the waiting connection is
                        // told 503 with the spare descriptor rather than
                        // left to make accept fail again at once.
                        if !out_of_files {
                            tracing::warn!(error = %err, "out of file descriptors: refusing connections");
                            out_of_files = true;
                        }
                        spare.release();
                        if let Ok(Ok((stream, _))) =
                            tokio::time::timeout(Duration::from_millis(100), listener.accept()).await
                        {
                            let _ = tokio::time::timeout(
                                Duration::from_millis(200),
                                refuse(stream, SERVER_FULL),
                            )
                            .await;
                        }
                        spare.restore();
                    }
                    Err(err) => {
                        // A connection that failed before it was accepted
                        // and the like: back off briefly instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        drop(listener);
        tracing::info!(
            sessions = sessions.len(),
            "shutting down: closing every session"
        );
        let _ = self.stop.send(true);
        // Sessions being set up or logging in watch `stop`; logged-in ones
        // are told through their handles (see `session`).
        self.state.hub.close_all(
            chat_proto::limits::close::GOING_AWAY,
            "server shutting down",
        );
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            sessions.abort_all();
        }
        self.state.hub.close().await;
        tracing::info!("stopped");
    }
}

/// The answer to a connection over `--max-connections`.
const SERVER_FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 33\r\nConnection: close\r\n\r\nserver full: too many connections";
/// The answer to a connection over `--max-connections-per-ip`.
const TOO_MANY_FROM_ADDRESS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 39\r\nConnection: close\r\n\r\ntoo many connections from your address";

/// Answers a connection over a limit with an HTTP error and closes it.
async fn refuse(mut stream: TcpStream, answer: &'static [u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(answer)).await;
}

/// Open connections per source address (IPv6 per /64), bounded.
struct AddressSlots {
    limit: usize,
    open: std::sync::Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection of an address; frees its slot when dropped.
struct AddressSlot {
    slots: Arc<AddressSlots>,
    key: IpAddr,
}

impl AddressSlots {
    fn new(limit: usize) -> AddressSlots {
        AddressSlots {
            limit,
            open: Default::default(),
        }
    }

    /// A slot for one more connection from `ip`, unless it has the most
    /// it may have. A limit of 0 means none.
    fn take(slots: &Arc<AddressSlots>, ip: IpAddr) -> Option<AddressSlot> {
        let key = crate::auth::address_key(ip);
        let mut open = slots.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key).or_insert(0);
        if slots.limit > 0 && *count >= slots.limit {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            slots: slots.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The URLs clients can use for a listening address: on a wildcard address,
/// one per network interface of the machine.
pub fn client_urls(addr: SocketAddr) -> Vec<String> {
    let port = addr.port();
    let url = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V6(v6) => format!("ws://[{v6}]:{port}/ws"),
        v4 => format!("ws://{v4}:{port}/ws"),
    };
    if !addr.ip().is_unspecified() {
        return vec![url(addr.ip())];
    }
    let mut urls: Vec<String> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|iface| iface.ip().is_ipv4() == addr.is_ipv4())
        .filter(|iface| !iface.ip().is_ipv6() || !iface.is_link_local())
        .map(|iface| url(iface.ip()))
        .collect();
    urls.sort();
    urls.dedup();
    urls
}
