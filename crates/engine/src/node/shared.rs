//! What every task of a running node shares: its configuration, replica, member table, live links,
//! security, warnings and the set of its tasks, which ends with it. Links, dialers and the node's
//! periodic tasks all work on one `Shared`; it sits below them, so none of them imports another
//! for it.

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::Error;
use crate::net::guard::Guard;
use crate::net::keys::KeyBook;
use crate::net::membership::Members;
use crate::net::secure::Security;
use crate::node::config::Config;
use crate::protocol::sync::{Fetches, LinkSignal, Local, Session};
use crate::replication::bucket::Bucket;
use crate::warning::Warnings;

/// A live link as the node's periodic tasks see it.
pub struct LinkSlot {
    pub id: u64,
    pub node: Arc<str>,
    pub address: String,
    pub session: Arc<Mutex<Session>>,
    pub signal: Arc<LinkSignal>,
    pub bytes_sent: Arc<std::sync::atomic::AtomicU64>,
    pub bytes_received: Arc<std::sync::atomic::AtomicU64>,
    /// The frames behind `bytes_sent` and `bytes_received` as they were before compression and
    /// after inflation: each pair, divided, is what compression saved on the link.
    pub plain_sent: std::sync::atomic::AtomicU64,
    pub plain_received: std::sync::atomic::AtomicU64,
    /// When the peer was last seen fully caught up on our writes.
    pub caught_up_at: Mutex<Instant>,
    /// Writes that arrived on this link (`Message::writes_carried`), applied or already held.
    pub writes_received: std::sync::atomic::AtomicU64,
    /// Time this link's reader spent handling frames that carry writes, in microseconds: what
    /// applying the peer's writes costs here (store locks, merge, journal, change events queued).
    pub apply_us: std::sync::atomic::AtomicU64,
}

/// State shared by every task of a node.
pub struct Shared {
    pub(crate) config: Config,
    pub(crate) local: Arc<Local>,
    pub(crate) address: SocketAddr,
    /// What hellos tell other peers to dial: `Config::advertise`, else `address`.
    pub(crate) advertised: SocketAddr,
    pub(crate) members: Members,
    pub(crate) links: Mutex<Vec<Arc<LinkSlot>>>,
    pub(crate) fetches: Fetches,
    pub(crate) security: Security,
    /// Which static key may speak for which id on keyed links.
    pub(crate) keys: KeyBook,
    pub(crate) guard: Guard,
    /// Where every part of the node reports what an operator must hear about.
    pub(crate) warnings: Arc<Warnings>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// The node's random choices (see `Config::seed`).
    pub(crate) rng: Mutex<StdRng>,
    pub(crate) tasks: Mutex<Option<JoinSet<()>>>,
}

impl Shared {
    pub fn bucket(&self, name: &str) -> Arc<Bucket> {
        self.local.bucket(name)
    }

    /// The member table (tests read the cluster size the acks count).
    pub fn members(&self) -> &Members {
        &self.members
    }

    pub fn warnings(&self) -> &Warnings {
        &self.warnings
    }

    /// The live links now.
    pub fn links(&self) -> Vec<Arc<LinkSlot>> {
        self.links.lock().clone()
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
            reap(set);
            set.spawn(fut);
        }
    }

    /// Drops the tasks that finished. A `JoinSet` keeps each finished task until it is joined, so
    /// without this every connection ever accepted would stay in memory.
    pub(crate) fn reap_tasks(&self) {
        if let Some(set) = self.tasks.lock().as_mut() {
            reap(set);
        }
    }

    /// Tasks the node holds, running or finished and not reaped yet: what connections leave behind.
    pub fn tasks_held(&self) -> usize {
        self.tasks.lock().as_ref().map_or(0, JoinSet::len)
    }

    pub(crate) fn link_to(&self, node: &str) -> Option<Arc<LinkSlot>> {
        self.links.lock().iter().find(|l| &*l.node == node).cloned()
    }
}

fn reap(set: &mut JoinSet<()>) {
    while let Some(done) = set.try_join_next() {
        if let Err(e) = done {
            if e.is_panic() {
                tracing::error!(error = %e, "a task of the node panicked");
            }
        }
    }
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
