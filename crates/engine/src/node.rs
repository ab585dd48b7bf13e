//! A peer: the listener, the bucket registry, the links to other peers and the clean shutdown of all of
//! it. Links live in `link`, membership and dialing in `membership`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashMap;
use parking_lot::{Mutex, RwLock};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;

use crate::bucket::{Bucket, WriteSignal};
use crate::clock::Clock;
use crate::error::Error;
use crate::link;
use crate::membership::{Members, PeerEvent};
use crate::replica::{Origin, ReplicaId, ReplicaTable};

/// How a node is started.
#[derive(Clone)]
pub struct Config {
    /// Node id; random when `None`.
    pub id: Option<String>,
    /// `host:port` to listen on (port 0 for an ephemeral one).
    pub listen: String,
    /// Addresses to dial first; the rest of the network is learned from them.
    pub seeds: Vec<String>,
    /// The clock to stamp writes with (tests inject a manual or skewed one).
    pub clock: Arc<Clock>,
    /// How often an idle link sends a ping.
    pub heartbeat: Duration,
    /// A link that receives nothing for this long is declared dead.
    pub dead_after: Duration,
    /// Reconnect backoff: first delay and cap (jittered).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How often each link exchanges digests to repair lasting gaps.
    pub digest_every: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            id: None,
            listen: "127.0.0.1:0".into(),
            seeds: Vec::new(),
            clock: Arc::new(Clock::default()),
            heartbeat: Duration::from_millis(500),
            dead_after: Duration::from_millis(3_000),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(3_000),
            digest_every: Duration::from_millis(1_000),
        }
    }
}

/// Counters reported by `stats()`.
#[derive(Default)]
pub struct Counters {
    pub ops_applied: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub links_refused: AtomicU64,
}

/// A point-in-time view of the counters and sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub id: String,
    pub buckets: usize,
    pub keys: usize,
    pub peers: usize,
    pub ops_applied: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// The wake-up flag of one link's writer.
#[derive(Default)]
pub struct LinkSignal {
    pending: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl LinkSignal {
    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }

    /// Waits for a wake-up and clears it.
    pub async fn wait(&self) {
        if !self.pending.swap(false, Ordering::AcqRel) {
            self.notify.notified().await;
            self.pending.store(false, Ordering::Release);
        }
    }
}

/// The link writers to wake after a local write.
#[derive(Default)]
pub struct Signals {
    links: RwLock<Vec<Arc<LinkSignal>>>,
}

impl Signals {
    pub fn add(&self, s: Arc<LinkSignal>) {
        self.links.write().push(s);
    }
    pub fn remove(&self, s: &Arc<LinkSignal>) {
        self.links.write().retain(|x| !Arc::ptr_eq(x, s));
    }
}

impl WriteSignal for Signals {
    fn local_write(&self) {
        for s in self.links.read().iter() {
            s.wake();
        }
    }
}

/// State shared by every task of a node.
pub struct Shared {
    pub config: Config,
    pub id: Arc<str>,
    pub me: Origin,
    pub clock: Arc<Clock>,
    pub replicas: ReplicaTable,
    pub address: SocketAddr,
    pub buckets: RwLock<HashMap<Arc<str>, Arc<Bucket>>>,
    pub signals: Arc<Signals>,
    pub members: Members,
    pub counters: Counters,
    pub shutdown: watch::Receiver<bool>,
    tasks: Mutex<Option<JoinSet<()>>>,
}

impl Shared {
    /// The bucket called `name`, created empty if this replica has not seen it yet.
    pub fn bucket(&self, name: &str) -> Arc<Bucket> {
        if let Some(b) = self.buckets.read().get(name) {
            return b.clone();
        }
        self.buckets
            .write()
            .entry_ref(name)
            .or_insert_with(|| {
                Arc::new(Bucket::new(
                    name.into(),
                    self.me.clone(),
                    self.clock.clone(),
                    self.signals.clone(),
                ))
            })
            .clone()
    }

    pub fn bucket_list(&self) -> Vec<Arc<Bucket>> {
        self.buckets.read().values().cloned().collect()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Spawns a task that ends with the node; tasks spawned after shutdown began are dropped.
    pub fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Some(set) = self.tasks.lock().as_mut() {
            set.spawn(fut);
        }
    }
}

/// A running peer.
pub struct Node {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

fn random_id() -> String {
    format!("peer-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// Parses `host:port` or a bare port (then on 127.0.0.1), resolving names.
pub async fn resolve(address: &str) -> Result<SocketAddr, Error> {
    let spec = if address.parse::<u16>().is_ok() {
        format!("127.0.0.1:{address}")
    } else {
        address.to_string()
    };
    tokio::net::lookup_host(&spec)
        .await
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| Error::BadAddress(address.to_string()))
}

impl Node {
    /// Binds the listener and starts the node's tasks on the current tokio runtime.
    pub async fn start(config: Config) -> Result<Node, Error> {
        let bind = resolve(&config.listen).await?;
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|source| Error::Listen {
                address: config.listen.clone(),
                source,
            })?;
        let address = listener.local_addr().map_err(|source| Error::Listen {
            address: config.listen.clone(),
            source,
        })?;
        let id: Arc<str> = config.id.clone().unwrap_or_else(random_id).into();
        let clock = config.clock.clone();
        // Incarnations are ordered by start time, then random, so a newer run of a node sorts after it.
        let incarnation = (clock.wall_ms() << 16) | (rand::random::<u16>() as u64);
        let replicas = ReplicaTable::new();
        let me = replicas.intern(&ReplicaId {
            node: id.clone(),
            incarnation,
        });
        let (stop, shutdown) = watch::channel(false);
        let shared = Arc::new(Shared {
            id,
            me,
            clock,
            replicas,
            address,
            buckets: RwLock::new(HashMap::new()),
            signals: Arc::new(Signals::default()),
            members: Members::new(),
            counters: Counters::default(),
            shutdown,
            tasks: Mutex::new(Some(JoinSet::new())),
            config,
        });
        shared.spawn(link::accept_loop(shared.clone(), listener));
        for seed in shared.config.seeds.clone() {
            crate::membership::dial(&shared, seed, true);
        }
        Ok(Node { shared, stop })
    }

    pub fn id(&self) -> &Arc<str> {
        &self.shared.id
    }

    pub fn replica(&self) -> &Origin {
        &self.shared.me
    }

    pub fn address(&self) -> SocketAddr {
        self.shared.address
    }

    pub fn clock(&self) -> &Arc<Clock> {
        &self.shared.clock
    }

    pub fn bucket(&self, name: &str) -> Arc<Bucket> {
        self.shared.bucket(name)
    }

    /// Peer-up and peer-down events, from now on (one receiver at a time).
    pub fn events(&self) -> mpsc::UnboundedReceiver<PeerEvent> {
        self.shared.members.subscribe()
    }

    /// Every member this node knows, with its address and whether a link to it is up.
    pub fn peers(&self) -> Vec<crate::membership::PeerInfo> {
        self.shared.members.list()
    }

    pub fn stats(&self) -> Stats {
        let buckets = self.shared.bucket_list();
        let c = &self.shared.counters;
        Stats {
            id: self.shared.id.to_string(),
            buckets: buckets.len(),
            keys: buckets.iter().map(|b| b.len()).sum(),
            peers: self.shared.members.connected_count(),
            ops_applied: c.ops_applied.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
        }
    }

    /// Leaves the network: tells every linked peer, closes the links and the listener, and waits (up to
    /// `grace`) for every task to end; what is still running then is aborted.
    pub async fn close(&self, grace: Duration) {
        let _ = self.stop.send(true);
        let set = self.shared.tasks.lock().take();
        if let Some(mut set) = set {
            let drained =
                tokio::time::timeout(grace, async { while set.join_next().await.is_some() {} })
                    .await;
            if drained.is_err() {
                set.abort_all();
                while set.join_next().await.is_some() {}
            }
        }
        self.shared.members.close();
    }

    /// Shared state, for the sync layer and tests.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}
