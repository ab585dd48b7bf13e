//! A running peer, the top layer: the listener, the replica's data (`sync::Local`), the links and
//! their sessions, the periodic tasks (pull planning, ack timeouts) and the clean shutdown of all of
//! it. Beside it: how a node is started (`config`), what its tasks share (`shared`), one link to one
//! peer (`link`) and seed names looked up again (`resolve`).

pub mod config;
pub mod link;
pub mod resolve;
pub mod shared;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::Error;
use crate::net::guard::Guard;
use crate::net::keys::KeyBook;
use crate::net::membership::{Members, PeerEvent, PeerInfo};
use crate::net::secure::{PublicKey, Security};
use crate::node::shared::{resolve, LinkSlot, Shared};
use crate::protocol::collect::Collector;
use crate::protocol::sync::{Fetches, Local, PullPlanner, Session};
use crate::protocol::wire::Message;
use crate::replication::acks::{AckLevel, AckOutcome, Registered};
use crate::replication::bucket::{Bucket, WriteSignal};
use crate::replication::clock::Clock;
use crate::replication::ranges::Seq;
use crate::replication::replica::Origin;
use crate::replication::store::{Lifetime, Write};
use crate::storage::{Disk, Durability, Flusher};
use crate::warning::{Warning, WarningCode, Warnings};

use crate::node::config::Config;

/// The last incarnation this process gave a node it started (seeded nodes, which must replay alike,
/// take theirs from the seed alone).
static LAST_INCARNATION: AtomicU64 = AtomicU64::new(0);

/// `drawn`, or one past the last incarnation this process gave out, whichever is larger: two nodes
/// started in one millisecond by one process still sort in the order they started, so a restart
/// in-process (or a second process's id, in a test) is never taken for the older run by the random
/// half of the number.
fn later_than_any_before(drawn: u64) -> u64 {
    let mut last = LAST_INCARNATION.load(Ordering::Relaxed);
    loop {
        let next = drawn.max(last.saturating_add(1));
        match LAST_INCARNATION.compare_exchange_weak(
            last,
            next,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// A point-in-time view of the counters and sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub id: String,
    pub buckets: usize,
    /// Live keys of the buckets users open (a counter's registers are not keys of its own).
    pub keys: usize,
    pub peers: usize,
    /// The cluster size the ack levels count, this peer included (`Members::cluster_size`).
    pub cluster_size: usize,
    pub ops_applied: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub clock_skew_refused: u64,
    pub pulls_sent: u64,
    pub pulls_served: u64,
    pub catchup_writes_received: u64,
    pub protocol_errors: u64,
    pub tombstones: usize,
    pub tombstones_collected: u64,
    pub full_resyncs: u64,
    /// Buckets peers named that were not created (`Config::max_buckets`).
    pub buckets_refused: u64,
    /// Collected registers remembered by key (see `store::CollectedKeys`).
    pub collected_remembered: usize,
    /// Tombstones written in place of collected ones for old writes that came back.
    pub stand_in_tombstones: u64,
    /// Buckets found to store other registers than a linked peer under equal contexts, each
    /// repaired from that peer (`sync::digest`).
    pub divergences: u64,
    /// Repairs done: a peer's registers of a bucket fetched and merged as a restore.
    pub repairs: u64,
    /// Repairs that changed what this replica stores (each also an `EDIVERGED` warning).
    pub repairs_changed: u64,
    /// Connections refused in their handshake (not a peer, another secret or none, malformed, silent),
    /// or before it by protected mode (`Config::insecure`).
    pub handshakes_rejected: u64,
    /// Accepted connections closed in their handshake to make room for newer ones.
    pub handshakes_evicted: u64,
    /// Warnings emitted so far, by code (every code, zeros included).
    pub warnings: Vec<(WarningCode, u64)>,
    pub links: Vec<LinkStats>,
    /// Writes made here by this incarnation (sets, deletes and touches): its own seqs.
    pub local_writes: u64,
    /// Writes whose ack level was not met within their timeout.
    pub ack_timeouts: u64,
    /// How long writes waited for their ack level, per level (`AckTracker::latency`).
    pub ack_latency: Vec<crate::replication::acks::LatencyStats>,
    /// Live keys per bucket, by name.
    pub bucket_keys: Vec<(String, usize)>,
}

/// Per linked peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStats {
    pub id: String,
    pub address: String,
    /// Own writes the peer has not acknowledged yet.
    pub lag_ops: u64,
    /// How long the peer has been behind on our writes (0 when caught up).
    pub lag_ms: u64,
    /// Bytes of frames sent and received, as they went on the wire (compressed where they were).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// The same frames before compression and after inflation.
    pub plain_sent: u64,
    pub plain_received: u64,
    /// Answers (fetch, pull and held replies) queued for the peer and not yet sent, in bytes.
    pub send_queue_bytes: u64,
    /// Writes that arrived on this link, applied or already held.
    pub writes_received: u64,
    /// Time spent handling the frames that carried them, in microseconds.
    pub apply_us: u64,
}

/// A running peer.
pub struct Node {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    flusher: Mutex<Option<Flusher>>,
}

fn random_id(rng: &mut StdRng) -> String {
    format!("peer-{:012x}", rng.gen::<u64>() & 0xffff_ffff_ffff)
}

impl Node {
    /// Binds the listener and starts the node's tasks on the current tokio runtime.
    pub async fn start(config: Config) -> Result<Node, Error> {
        let security = Security::from_secrets(&config.secrets)?;
        let bind = resolve(&config.listen).await?;
        let listener = config
            .transport
            .bind(bind)
            .await
            .map_err(|source| Error::Listen {
                address: config.listen.clone(),
                source,
            })?;
        let address = listener.local_addr().map_err(|source| Error::Listen {
            address: config.listen.clone(),
            source,
        })?;
        // An IP literal: hellos carry the host as text and the other end parses it as an address.
        let advertised = match &config.advertise {
            Some(a) => a
                .parse::<SocketAddr>()
                .map_err(|_| Error::BadAddress(a.clone()))?,
            None => address,
        };
        let mut rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        // Incarnations are ordered by start time, then random, so a newer run of a node sorts after it.
        let drawn = (config.clock.wall_ms() << 16) | (rng.gen::<u16>() as u64);
        let incarnation = match config.seed {
            Some(_) => drawn,
            None => later_than_any_before(drawn),
        };
        let opened = match &config.data_dir {
            Some(dir) => Some(Disk::open_with(
                config.file_system.clone(),
                dir,
                config.id.as_deref(),
                incarnation,
            )?),
            None => None,
        };
        // Keyed: the node's static key lives in its data directory, next to its id.
        let security = if security.is_keyed() {
            security.with_identity(crate::net::keys::identity(
                &*config.file_system,
                config.data_dir.as_deref(),
            )?)
        } else {
            security
        };
        let keys = KeyBook::open(
            &config.peer_keys,
            config.file_system.clone(),
            config.data_dir.as_deref().filter(|_| security.is_keyed()),
        )?;
        let (id, incarnation): (Arc<str>, u64) = match &opened {
            Some(o) => (o.node_id.as_str().into(), o.incarnation),
            None => (
                config
                    .id
                    .clone()
                    .unwrap_or_else(|| random_id(&mut rng))
                    .into(),
                incarnation,
            ),
        };
        let mut local = Local::new(
            id,
            incarnation,
            config.clock.clone(),
            config.max_clock_skew.as_millis() as u64,
        );
        if let Some(age) = config.tombstone_min_age {
            local.tombstone_min_age_ms = age.as_millis() as u64;
        }
        if let Some(keep) = config.remember_collected {
            local.remember_collected_ms = keep.as_millis() as u64;
        }
        local.durable = opened.is_some();
        local.max_buckets = config.max_buckets;
        let local = Arc::new(local);
        // Made first: the disk flusher reports through it too.
        let warnings = Arc::new(Warnings::new());
        let flusher = match opened {
            Some(mut o) => {
                let buckets = o.disk.load(&local)?;
                tracing::info!(dir = %o.disk.dir().display(), buckets, incarnation = o.incarnation, "data directory loaded");
                let (flusher, doorbell) = Flusher::start(
                    o.disk,
                    local.clone(),
                    config.durability,
                    config.flush_every,
                    warnings.clone(),
                );
                local.signals.set_flusher(doorbell);
                Some(flusher)
            }
            None => None,
        };
        let (stop, shutdown) = watch::channel(false);
        let id = local.id.clone();
        let shared = Arc::new(Shared {
            local,
            address,
            advertised,
            members: Members::new(id, config.seeds.clone()),
            links: Mutex::new(Vec::new()),
            fetches: Fetches::default(),
            security,
            keys,
            guard: Guard::new(config.max_handshakes),
            warnings,
            shutdown,
            rng: Mutex::new(rng),
            tasks: Mutex::new(Some(JoinSet::new())),
            config,
        });
        shared.spawn(link::accept_loop(shared.clone(), listener));
        shared.spawn(periodic(shared.clone()));
        for seed in shared.config.seeds.clone() {
            if crate::node::resolve::is_literal(&seed) {
                crate::net::membership::dial(&shared, seed, true);
            } else {
                crate::node::resolve::watch(&shared, seed);
            }
        }
        Ok(Node {
            shared,
            stop,
            flusher: Mutex::new(flusher),
        })
    }

    pub fn id(&self) -> &Arc<str> {
        &self.shared.local.id
    }

    pub fn replica(&self) -> &Origin {
        &self.shared.local.me
    }

    pub fn address(&self) -> SocketAddr {
        self.shared.address
    }

    /// The static key this node proves on keyed links (`None` without a secret): what other peers
    /// pin for its id.
    pub fn public_key(&self) -> Option<&PublicKey> {
        self.shared.security.public_key()
    }

    pub fn clock(&self) -> &Arc<Clock> {
        &self.shared.local.clock
    }

    pub fn bucket(&self, name: &str) -> Arc<Bucket> {
        self.shared.bucket(name)
    }

    /// Peer-up and peer-down events, from now on (one receiver at a time).
    pub fn events(&self) -> mpsc::UnboundedReceiver<PeerEvent> {
        self.shared.members.subscribe()
    }

    /// Warnings, from now on (one receiver at a time; those emitted before the first receiver first).
    pub fn warnings(&self) -> mpsc::UnboundedReceiver<Warning> {
        self.shared.warnings.subscribe()
    }

    /// Outcomes of writes that waited for an ack level (one receiver at a time).
    pub fn ack_outcomes(&self) -> mpsc::UnboundedReceiver<AckOutcome> {
        self.shared.local.acks.subscribe()
    }

    /// Writes locally and registers the write to wait for `level` until `timeout`.
    pub fn write_acked(
        &self,
        bucket: &Bucket,
        key: Arc<str>,
        value: Option<Box<[u8]>>,
        lifetime: Lifetime,
        level: AckLevel,
        timeout: Duration,
    ) -> (Write, Registered) {
        let write = bucket.write(key, value, lifetime);
        let flush = self.is_strict().then(|| {
            let generation = self.shared.local.acks.flush_generation();
            // The write rang the flusher already, but a drain that began in between took it under the
            // previous generation; ring again so the generation waited for is flushed without delay.
            self.shared.local.signals.remote_change();
            generation
        });
        if level == AckLevel::Local && flush.is_none() {
            return (write, Registered::Met(Vec::new()));
        }
        let connected: Vec<Arc<str>> = self
            .shared
            .members
            .list()
            .into_iter()
            .filter(|p| p.connected)
            .map(|p| p.id.into())
            .collect();
        let others = self
            .shared
            .members
            .cluster_size(self.shared.config.member_timeout)
            - 1;
        let deadline = self
            .shared
            .local
            .clock
            .wall_ms()
            .saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let registered = self.shared.local.acks.register(
            bucket.name(),
            write.seq,
            level,
            deadline,
            connected,
            others,
            flush,
        );
        (write, registered)
    }

    /// True when writes must be on disk before they settle (a data directory in strict mode).
    pub fn is_strict(&self) -> bool {
        self.shared.local.durable && self.shared.config.durability == Durability::Strict
    }

    /// Asks peer `from` for its entries of `bucket` under `prefix`; the receiver yields how many
    /// arrived once all have been merged.
    pub fn fetch(
        &self,
        bucket: &str,
        from: &str,
        prefix: &str,
    ) -> Result<oneshot::Receiver<usize>, Error> {
        let link = self
            .shared
            .link_to(from)
            .ok_or_else(|| Error::NotConnected(from.to_string()))?;
        let (id, rx) = self.shared.fetches.start(link.id);
        link.session.lock().queue(Message::FetchRequest {
            id,
            bucket: bucket.into(),
            prefix: prefix.to_string(),
        });
        link.signal.wake();
        Ok(rx)
    }

    /// Every member this node knows, with its address and whether a link to it is up.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.shared.members.list()
    }

    pub fn stats(&self) -> Stats {
        let local = &self.shared.local;
        let buckets = local.bucket_list();
        // Users' buckets only: a counter's hidden bucket holds registers, not keys of its own.
        let bucket_keys: Vec<(String, usize)> = buckets
            .iter()
            .filter(|b| {
                !b.name()
                    .starts_with(crate::replication::counter::BUCKET_PREFIX)
            })
            .map(|b| (b.name().to_string(), b.len()))
            .collect();
        let c = &local.counters;
        // Cloned out so that no session lock is taken under the links lock.
        let slots: Vec<_> = self.shared.links.lock().clone();
        let links = slots
            .iter()
            .map(|l| {
                let lag_ops: u64 = buckets
                    .iter()
                    .map(|b| {
                        let mine = b.store().context_of(&local.me).max();
                        mine.since(local.acks.acked_upto(b.name(), &l.node))
                    })
                    .sum();
                let send_queue_bytes = l.session.lock().owed() as u64;
                let mut caught_up = l.caught_up_at.lock();
                if lag_ops == 0 {
                    *caught_up = Instant::now();
                }
                LinkStats {
                    id: l.node.to_string(),
                    address: l.address.clone(),
                    lag_ops,
                    lag_ms: if lag_ops == 0 {
                        0
                    } else {
                        caught_up.elapsed().as_millis() as u64
                    },
                    bytes_sent: l.bytes_sent.load(Ordering::Relaxed),
                    bytes_received: l.bytes_received.load(Ordering::Relaxed),
                    plain_sent: l.plain_sent.load(Ordering::Relaxed),
                    plain_received: l.plain_received.load(Ordering::Relaxed),
                    send_queue_bytes,
                    writes_received: l.writes_received.load(Ordering::Relaxed),
                    apply_us: l.apply_us.load(Ordering::Relaxed),
                }
            })
            .collect();
        Stats {
            id: local.id.to_string(),
            buckets: buckets.len(),
            keys: bucket_keys.iter().map(|(_, n)| n).sum(),
            peers: self.shared.members.connected_count(),
            cluster_size: self
                .shared
                .members
                .cluster_size(self.shared.config.member_timeout),
            ops_applied: c.ops_applied.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            clock_skew_refused: c.clock_skew_refused.load(Ordering::Relaxed),
            pulls_sent: c.pulls_sent.load(Ordering::Relaxed),
            pulls_served: c.pulls_served.load(Ordering::Relaxed),
            catchup_writes_received: c.catchup_writes_received.load(Ordering::Relaxed),
            protocol_errors: c.protocol_errors.load(Ordering::Relaxed),
            tombstones: buckets.iter().map(|b| b.store().tombstone_count()).sum(),
            tombstones_collected: c.tombstones_collected.load(Ordering::Relaxed),
            full_resyncs: c.full_resyncs.load(Ordering::Relaxed),
            buckets_refused: c.buckets_refused.load(Ordering::Relaxed),
            collected_remembered: buckets
                .iter()
                .map(|b| b.store().collected_remembered())
                .sum(),
            stand_in_tombstones: c.stand_in_tombstones.load(Ordering::Relaxed),
            divergences: c.divergences.load(Ordering::Relaxed),
            repairs: c.repairs.load(Ordering::Relaxed),
            repairs_changed: c.repairs_changed.load(Ordering::Relaxed),
            handshakes_rejected: self.shared.guard.rejected(),
            handshakes_evicted: self.shared.guard.evicted(),
            warnings: self.shared.warnings.counts(),
            links,
            local_writes: buckets
                .iter()
                .map(|b| b.store().context_of(&local.me).max().since(Seq::ZERO))
                .sum(),
            ack_timeouts: local.acks.timeouts(),
            ack_latency: local.acks.latency(),
            bucket_keys,
        }
    }

    /// Waits until every peer linked now has acknowledged every write this replica made so far, or
    /// `timeout` passes. Returns, for each of those peers that had not, how many of these writes it
    /// lacked: when the timeout passed, or when its link went down (it cannot acknowledge any more
    /// then, so it is not waited for).
    pub async fn drain(&self, timeout: Duration) -> Vec<(String, u64)> {
        let local = &self.shared.local;
        // The writes made so far: each bucket's own seqs up to here.
        let made: Vec<(Arc<Bucket>, Seq)> = local
            .bucket_list()
            .into_iter()
            .map(|b| {
                let upto = b.store().context_of(&local.me).max();
                (b, upto)
            })
            .filter(|(_, upto)| *upto > Seq::ZERO)
            .collect();
        let lacking = |peer: &str| -> u64 {
            made.iter()
                .map(|(b, upto)| upto.since(local.acks.acked_upto(b.name(), peer)))
                .sum()
        };
        let linked = || -> Vec<Arc<str>> {
            self.shared
                .links
                .lock()
                .iter()
                .map(|l| l.node.clone())
                .collect()
        };
        let mut peers = linked();
        peers.sort();
        peers.dedup();
        let mut waiting: Vec<(Arc<str>, u64)> = peers.into_iter().map(|p| (p, 0)).collect();
        let deadline = Instant::now() + timeout;
        let mut left = Vec::new();
        loop {
            let now_linked = linked();
            let mut still = Vec::with_capacity(waiting.len());
            for (peer, _) in waiting {
                let lacks = lacking(&peer);
                if lacks == 0 {
                    continue;
                }
                if now_linked.contains(&peer) {
                    still.push((peer, lacks));
                } else {
                    left.push((peer.to_string(), lacks));
                }
            }
            waiting = still;
            if waiting.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        left.extend(waiting.into_iter().map(|(p, n)| (p.to_string(), n)));
        left
    }

    /// Leaves the network: tells every linked peer, closes the links and the listener, and waits (up to
    /// `grace`) for every task to end; what is still running then is aborted. Returns false when the
    /// data directory did not take every write (they stay owed; the stop is not clean), true otherwise
    /// (and without a data directory).
    pub async fn close(&self, grace: Duration) -> bool {
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
        // Last: flush what is left and mark the stop clean, once nothing changes any more.
        let flusher = self.flusher.lock().take();
        match flusher {
            Some(flusher) => flusher.close().await,
            None => true,
        }
    }

    /// Shared state, for tests.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// Runs the node's clockwork: ack timeouts every few milliseconds, expiry sweeps every 50 ms (keys whose
/// time is up are reported and queued for collection), pull planning every `pull_every`,
/// tombstone collection every `collect_every`, and forgetting members gone past `member_timeout`.
async fn periodic(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut planner = PullPlanner::default();
    let mut collector = Collector::default();
    let mut last_plan = Instant::now();
    let mut last_collect = Instant::now();
    let mut last_sweep = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        shared.reap_tasks();
        let local = &shared.local;
        if local.acks.pending() > 0 {
            local.acks.expire(local.clock.wall_ms());
        }
        if last_sweep.elapsed() >= Duration::from_millis(50) {
            last_sweep = Instant::now();
            for b in local.bucket_list() {
                b.sweep();
            }
        }
        if last_plan.elapsed() >= shared.config.pull_every {
            last_plan = Instant::now();
            plan_pulls(&shared, &mut planner);
        }
        if last_collect.elapsed() >= shared.config.collect_every {
            last_collect = Instant::now();
            for gone in shared
                .members
                .forget_unreachable(shared.config.member_timeout)
            {
                tracing::info!(peer = %gone, "member unreachable past the member timeout: forgotten");
            }
            let links: Vec<Arc<LinkSlot>> = shared.links.lock().clone();
            let guards: Vec<_> = links.iter().map(|l| l.session.lock()).collect();
            let sessions: Vec<&Session> = guards.iter().map(|g| &**g).collect();
            let members = shared.members.member_ids();
            if members.is_empty() && !shared.config.seeds.is_empty() {
                // A peer with seeds that has met no member yet is not alone, it has not found its
                // cluster yet: what it collected now nobody else would know of (its deletes would be
                // lost), and every peer it met later would take itself for one that missed a collection.
                collector = Collector::default();
            } else {
                collector.round(local, &members, &sessions);
            }
        }
    }
}

fn plan_pulls(shared: &Shared, planner: &mut PullPlanner) {
    let local = &shared.local;
    let links: Vec<Arc<LinkSlot>> = shared.links.lock().clone();
    let mut guards: Vec<_> = links.iter().map(|l| l.session.lock()).collect();
    let linked: Vec<Origin> = guards.iter().map(|s| s.peer.clone()).collect();
    let members = &shared.members;
    // An origin pushes its own writes when it is linked to us, or is a member that may link soon;
    // writes of a replica that is neither (an old incarnation, a departed node) are pulled at once.
    let is_pushed = |o: &Origin| {
        if linked.contains(o) {
            return true;
        }
        let same_node_linked = linked.iter().any(|l| l.node() == o.node());
        !same_node_linked && members.is_member(o.node())
    };
    let mut sessions: Vec<&mut Session> = guards.iter_mut().map(|g| &mut **g).collect();
    let touched = planner.plan(local, &mut sessions, local.clock.wall_ms(), &is_pushed);
    drop(sessions);
    drop(guards);
    for i in touched {
        links[i].signal.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::later_than_any_before;

    #[test]
    fn two_nodes_started_in_one_millisecond_sort_in_the_order_they_started() {
        let ms = 1_796_056_133_154u64 << 16;
        let first = later_than_any_before(ms | 0x8b91);
        // The second start draws a smaller random half in the same millisecond.
        let second = later_than_any_before(ms | 0x6a19);
        assert!(second > first, "{second:x} must sort after {first:x}");
    }
}
