//! The simulated cluster: turmoil hosts each running one real `Node` (memory only, or on a data
//! directory of its own `SimDisk`), the fault schedule, the operations, and the run from seed to
//! verdict. A crash cuts the disk's power before the host's runtime is dropped, so nothing the
//! teardown writes lands, and unsynced writes are kept, lost or torn as the disk draws.
//!
//! A run has a chaos phase (operations and faults drawn from the seed every virtual millisecond), then
//! a heal (every cut link repaired, held traffic released, crashed nodes restarted), then a quiet phase
//! until every replica holds the same registers and contexts (or a bound passes: a failure), then the
//! final checks. Operations are called on the nodes between steps, from outside their runtimes; they
//! read only the simulated clocks, so they are as deterministic as the rest.

mod faults;
mod operations;
mod run;

pub use run::run;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::mpsc::UnboundedReceiver;

use super::check::{
    self, BucketView, Buckets, History, Model, Restored, Settled, Status, WriteRec,
};
use super::clock::{SimClock, SimTime};
use super::profile::Profile;
use super::rng::{derive, SplitMix};
use crate::net::transport::SimTcp;
use crate::node::config::Config;
use crate::node::Node;
use crate::protocol::wire::{MAX_KEY, MAX_VALUE};
use crate::replication::acks::{AckEnd, AckLevel, AckOutcome, Registered};
use crate::replication::clock::Clock;
use crate::replication::ranges::SeqRanges;
use crate::replication::replica::ReplicaId;
use crate::replication::store::{Change, Lifetime};
use crate::replication::value;
use crate::storage::sim::{FaultKind, Faults, SimDisk};
use crate::storage::Durability;

/// The virtual time the simulation starts at (2026-01-01T00:00:00Z).
const EPOCH_MS: u64 = 1_767_225_600_000;
const PORT: u16 = 7000;
const MAX_CLOCK_SKEW_MS: u64 = 2_000;
/// How long after the heal the replicas may take to show the same keys, values and contexts, and
/// to settle (the same registers) unless a departed id holds up collection (`World::departed_at`).
const QUIET_MAX_MS: u64 = 60_000;
/// The shortest quiet phase (restarted nodes rejoin, pulls finish, expiries pass).
const QUIET_MIN_MS: u64 = 3_000;

/// The verdict of one run.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub profile: &'static str,
    /// Virtual milliseconds simulated (one turmoil step each).
    pub steps: u64,
    pub ops: usize,
    pub faults: usize,
    pub violations: Vec<String>,
    /// A hash of the trace and of the final state: equal for two runs of one seed.
    pub fingerprint: u64,
    /// The events of the run, when asked for.
    pub trace: Vec<String>,
}

/// What a host's software publishes once its node runs.
struct Running {
    node: Arc<Node>,
    /// The host's runtime: operations run inside it, so what they read of tokio's clock is the
    /// host's virtual time, never the machine's.
    runtime: tokio::runtime::Handle,
    changes: Vec<(Arc<str>, UnboundedReceiver<Change>)>,
    acks: UnboundedReceiver<AckOutcome>,
    /// The node's warnings: every peer here is honest, so none may report a protocol error, nor
    /// repair a divergence (`EDIVERGED`).
    warnings: UnboundedReceiver<crate::warning::Warning>,
    /// Ack tickets waiting -> op id.
    pending: BTreeMap<u64, u64>,
    /// What the node held when it started, until the world has read it.
    restored: Option<Restored>,
}

/// What the next start of a host runs as.
#[derive(Clone)]
struct Plan {
    id: String,
    seeds: Vec<String>,
    offset_ms: i64,
    drift_ppm: i64,
    node_seed: u64,
    member_timeout: Duration,
    /// The node's data directory, on this disk (shared by its runs until the directory is lost).
    disk: Option<SimDisk>,
    durability: Durability,
    /// Whether the node compresses what it sends: a quarter of nodes do not, so links between
    /// nodes that differ run too (each end reads both kinds of frame).
    compression: bool,
}

struct Host {
    name: String,
    ip: IpAddr,
    plan: Rc<RefCell<Plan>>,
    slot: Rc<RefCell<Option<Running>>>,
    /// Why the last start failed (the node could not open its data directory), until the world has
    /// read it: the process exited, and is restarted later, as an operator's supervisor would.
    failed: Rc<RefCell<Option<String>>>,
    /// Software running (not crashed).
    up: bool,
    /// Restart at this time (a crashed host).
    restart_at: Option<u64>,
    /// Crash for good at this time (a duplicate-id host).
    retire_at: Option<u64>,
    /// Never restarted (a duplicate-id host once retired).
    retired: bool,
    generation: u64,
    model: Model,
    /// When the current data directory was created: the strict writes made since are on it.
    dir_since: u64,
    /// The last crash: its time, whether the next run gets a new id, whether it keeps the directory.
    crashed: Option<(u64, bool, bool)>,
    /// Disk errors injected until this time.
    disk_faults_until: Option<u64>,
}

struct World<'a> {
    seed: u64,
    profile: Profile,
    sim: turmoil::Sim<'a>,
    time: SimTime,
    rng: SplitMix,
    hosts: Vec<Host>,
    buckets: Vec<Arc<str>>,
    history: History,
    /// Directed links cut until a time.
    cut: BTreeMap<(usize, usize), u64>,
    /// Links (smaller index first) held until a time.
    held: BTreeMap<(usize, usize), u64>,
    /// The last crash of a host whose next run takes a new id. The old id stays a member of every
    /// peer until `memberTimeout` after they last reached it (at the latest this crash), and a
    /// collection needs every member's report: dead registers (tombstones, expired values) may
    /// outlive the heal by that long, invisible to users, before the replicas' registers match.
    departed_at: Option<u64>,
    trace: Vec<String>,
    tracing: bool,
    fingerprint: u64,
    faults: usize,
    ops: usize,
    joined: usize,
    dups: usize,
}

fn fnv(hash: &mut u64, text: &str) {
    for b in text.as_bytes() {
        *hash ^= *b as u64;
        *hash = hash.wrapping_mul(0x100_0000_01b3);
    }
    *hash ^= 0xff;
    *hash = hash.wrapping_mul(0x100_0000_01b3);
}

/// Takes out of `until` the links whose time is up (every one with `heal_all`), in key order.
fn take_due(
    until: &mut BTreeMap<(usize, usize), u64>,
    now: u64,
    heal_all: bool,
) -> Vec<(usize, usize)> {
    let mut due = Vec::new();
    until.retain(|&link, &mut t| {
        let up = heal_all || t <= now;
        if up {
            due.push(link);
        }
        !up
    });
    due
}

fn config(plan: &Plan, ip: IpAddr, time: &SimTime) -> Config {
    let physical = SimClock::new(time.clone(), plan.offset_ms, plan.drift_ppm);
    let (data_dir, file_system): (_, Arc<dyn crate::storage::fs::FileSystem>) = match &plan.disk {
        // A mount per run: a task of a crashed run reaches nothing.
        Some(disk) => (Some("/data".into()), Arc::new(disk.mount())),
        None => (None, Arc::new(crate::storage::fs::RealFs)),
    };
    Config {
        data_dir,
        file_system,
        durability: plan.durability,
        compression: plan.compression,
        id: Some(plan.id.clone()),
        listen: format!("0.0.0.0:{PORT}"),
        seeds: plan.seeds.clone(),
        advertise: Some(format!("{ip}:{PORT}")),
        clock: Arc::new(Clock::new(Box::new(physical))),
        heartbeat: Duration::from_millis(200),
        dead_after: Duration::from_millis(1_200),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(1_000),
        digest_every: Duration::from_millis(300),
        pull_every: Duration::from_millis(300),
        max_clock_skew: Duration::from_millis(MAX_CLOCK_SKEW_MS),
        collect_every: Duration::from_millis(1_000),
        member_timeout: plan.member_timeout,
        handshake_timeout: Duration::from_millis(1_000),
        transport: Arc::new(SimTcp),
        seed: Some(plan.node_seed),
        // Simulated hosts talk over 192.168.0.0/16 without a secret (links are open, see `sim`).
        insecure: true,
        ..Config::default()
    }
}

impl<'a> World<'a> {
    fn now(&self) -> u64 {
        self.sim.elapsed().as_millis() as u64
    }

    fn note(&mut self, line: String) {
        let line = format!("[{} ms] {line}", self.now());
        fnv(&mut self.fingerprint, &line);
        if self.tracing {
            self.trace.push(line);
        }
    }

    fn offset(&mut self) -> (i64, i64) {
        if self.profile.clocks {
            // Pairwise just under the skew bound, drift included.
            let bound = (MAX_CLOCK_SKEW_MS as i64) * 45 / 100;
            let offset = self.rng.range(0, 2 * bound as u64) as i64 - bound;
            let drift = self.rng.range(0, 400) as i64 - 200;
            (offset, drift)
        } else {
            (self.rng.range(0, 100) as i64 - 50, 0)
        }
    }

    fn add_host(
        &mut self,
        name: String,
        id: String,
        seeds: Vec<String>,
        disk_allowed: bool,
    ) -> usize {
        let ip = self.sim.lookup(name.as_str());
        let (offset_ms, drift_ppm) = self.offset();
        let member_timeout = if self.profile.forget {
            Duration::from_millis(2_500)
        } else {
            Duration::from_secs(300)
        };
        let index = self.hosts.len();
        // Drawn only by profiles with disks: the others replay the schedules they had before.
        let (disk, durability) = if self.profile.disks > 0 {
            let disk = (disk_allowed && self.rng.below(100) < self.profile.disks)
                .then(|| SimDisk::new(derive(self.seed, 5_000 + index as u64)));
            let durability = if self.rng.chance(0.75) {
                Durability::Strict
            } else {
                Durability::Relaxed
            };
            (disk, durability)
        } else {
            (None, Durability::Strict)
        };
        let plan = Rc::new(RefCell::new(Plan {
            id,
            seeds,
            offset_ms,
            drift_ppm,
            node_seed: derive(self.seed, 1_000 + index as u64),
            member_timeout,
            disk,
            durability,
            // Its own stream: the rest of the plan is drawn as before.
            compression: !derive(self.seed, 6_000 + index as u64).is_multiple_of(4),
        }));
        let slot: Rc<RefCell<Option<Running>>> = Rc::new(RefCell::new(None));
        let failed: Rc<RefCell<Option<String>>> = Rc::new(RefCell::new(None));
        let (p, s, f, time, buckets) = (
            plan.clone(),
            slot.clone(),
            failed.clone(),
            self.time.clone(),
            self.buckets.clone(),
        );
        self.sim.host(name.as_str(), move || {
            let plan = p.borrow().clone();
            let (slot, failed) = (s.clone(), f.clone());
            let config = config(&plan, ip, &time);
            let buckets = buckets.clone();
            async move {
                let node = match Node::start(config).await {
                    Ok(node) => node,
                    Err(e) => {
                        *failed.borrow_mut() = Some(e.to_string());
                        return Ok(());
                    }
                };
                // Read with the listeners subscribed, before anything else runs.
                let mut restored = Restored::default();
                let changes = buckets
                    .iter()
                    .map(|b| {
                        let bucket = node.bucket(b);
                        bucket.scan("", &mut |key, v| {
                            if let Some(op) = check::op_of(v) {
                                restored.live.insert((b.clone(), key.into()), op);
                            }
                        });
                        bucket.store().scan_writes("", &mut |origin, w| {
                            if !w.is_touch() {
                                restored.registers.insert(
                                    (b.clone(), w.key.clone()),
                                    (w.hlc, origin.id().clone()),
                                );
                            }
                        });
                        (b.clone(), bucket.subscribe())
                    })
                    .collect();
                let acks = node.ack_outcomes();
                let warnings = node.warnings();
                *slot.borrow_mut() = Some(Running {
                    node: Arc::new(node),
                    runtime: tokio::runtime::Handle::current(),
                    changes,
                    acks,
                    warnings,
                    pending: BTreeMap::new(),
                    restored: Some(restored),
                });
                std::future::pending::<()>().await;
                Ok(())
            }
        });
        self.hosts.push(Host {
            name,
            ip,
            plan,
            slot,
            failed,
            up: true,
            restart_at: None,
            retire_at: None,
            retired: false,
            generation: 0,
            model: Model::default(),
            dir_since: self.now(),
            crashed: None,
            disk_faults_until: None,
        });
        index
    }

    fn address(&self, i: usize) -> String {
        format!("{}:{PORT}", self.hosts[i].ip)
    }

    fn step(&mut self) -> Result<(), String> {
        self.sim.step().map_err(|e| format!("a host failed: {e}"))?;
        self.time.store(
            EPOCH_MS + self.sim.elapsed().as_millis() as u64,
            Ordering::SeqCst,
        );
        for h in 0..self.hosts.len() {
            let failed = self.hosts[h].failed.borrow_mut().take();
            if let Some(error) = failed {
                self.failed_start(h, error);
            }
        }
        self.drain();
        Ok(())
    }

    /// A node that could not open its data directory (the disk failed under it) exited, as a real
    /// process does; its supervisor starts it again, on the same directory under the same id, a
    /// little later. It never ran, so nothing of it is lost but what its last run would lose.
    fn failed_start(&mut self, h: usize, error: String) {
        let now = self.now();
        let back = now + self.rng.range(100, 1_000);
        let host = &mut self.hosts[h];
        host.up = false;
        host.restart_at = Some(back);
        // Back from the same directory: what the last run settled must be on it (checked then).
        let crashed_at = host.crashed.map_or(now, |(at, _, _)| at);
        host.crashed = Some((crashed_at, false, true));
        let line = format!(
            "{}#{} failed to start ({error}); restarted at {back}",
            host.name, host.generation
        );
        self.note(line);
    }

    /// Takes every change event and ack outcome the last step produced, and checks the events.
    fn drain(&mut self) {
        let now = self.now();
        for host in &mut self.hosts {
            let slot = host.slot.borrow();
            let Some(running) = slot.as_ref() else {
                continue;
            };
            let mut contexts: BTreeMap<Arc<str>, Vec<(ReplicaId, SeqRanges)>> = BTreeMap::new();
            host.model.poll(
                &mut self.history,
                &host.name,
                now,
                &mut |(bucket, replica, seq)| {
                    contexts
                        .entry(bucket.clone())
                        .or_insert_with(|| {
                            let context = running.node.bucket(bucket).store().context();
                            context
                                .into_iter()
                                .map(|(o, c)| (o.id().clone(), c))
                                .collect()
                        })
                        .iter()
                        .any(|(o, c)| o == replica && c.contains(*seq))
                },
                &mut |touch| {
                    running
                        .node
                        .bucket(&touch.dot.0)
                        .inspect(&touch.key)
                        .iter()
                        .any(|(o, w)| !touch.beats(w.hlc, o.id()))
                },
            );
        }
        let mut lines = Vec::new();
        for h in 0..self.hosts.len() {
            let host = &mut self.hosts[h];
            let mut slot = host.slot.borrow_mut();
            let Some(running) = slot.as_mut() else {
                continue;
            };
            let who = format!("{}#{}", host.name, host.generation);
            if let Some(restored) = running.restored.take() {
                host.model = Model::restored(&restored);
                if let Some((crashed_at, _, true)) = host.crashed {
                    lines.push(format!(
                        "{who} restored {} live keys from its directory",
                        restored.live.len()
                    ));
                    let id = host.plan.borrow().id.clone();
                    self.history.check_restored(
                        &who,
                        &id,
                        host.dir_since..crashed_at,
                        &restored,
                        now,
                    );
                }
            }
            for (bucket, rx) in running.changes.iter_mut() {
                let changes: Vec<Change> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
                for (i, change) in changes.iter().enumerate() {
                    // The registers are read after the step: they are what a delete stored only
                    // when no later change of its key came in the same step.
                    let last_of_key = changes[i + 1..].iter().all(|c| c.key != change.key);
                    let registers = if change.value.is_none() && !change.expired && last_of_key {
                        running.node.bucket(bucket).inspect(&change.key)
                    } else {
                        Vec::new()
                    };
                    let tombstone = registers
                        .iter()
                        .find(|(_, w)| !w.is_touch() && w.value().is_none());
                    // The wall clock, not the HLC: within the step the node may have observed a
                    // peer's later timestamp after it announced a value that was live then.
                    let clock = running.node.clock().wall_ms();
                    lines.push(format!(
                        "{who} change {bucket}/{} {} (clock {clock})",
                        check::short(&change.key),
                        match (&change.value, change.expired) {
                            (Some(v), _) => format!("op {:?}", check::op_of(v)),
                            (None, true) => "expired".into(),
                            (None, false) => "deleted".into(),
                        }
                    ));
                    host.model.on_change(
                        &mut self.history,
                        &who,
                        now,
                        clock,
                        bucket,
                        change,
                        tombstone.map(|(_, w)| w),
                        tombstone.map(|(o, _)| o.id()),
                    );
                }
            }
            while let Ok(w) = running.warnings.try_recv() {
                if w.code == crate::warning::WarningCode::Protocol {
                    self.history
                        .violation(now, "protocol-error", format!("{who}: {}", w.message));
                }
                // Honest replicas with equal contexts store the same registers: a repair that
                // changed one means the protocol (or the fingerprint) let them diverge.
                if w.code == crate::warning::WarningCode::Diverged {
                    self.history
                        .violation(now, "repaired", format!("{who}: {}", w.message));
                }
            }
            while let Ok(outcome) = running.acks.try_recv() {
                if let Some(op) = running.pending.remove(&outcome.ticket) {
                    let w = &mut self.history.writes[op as usize];
                    // A write whose flush failed may or may not be stored: "maybe", as a timeout.
                    w.status = match outcome.end {
                        AckEnd::Met => Status::Acked,
                        AckEnd::TimedOut => Status::TimedOut,
                        AckEnd::DiskFailed => Status::DiskFailed,
                    };
                    w.ackers = outcome.acked.clone();
                    lines.push(format!(
                        "ack op {op}: {:?} by {:?}",
                        outcome.end, outcome.acked
                    ));
                }
            }
        }
        for line in lines {
            self.note(line);
        }
    }

    fn running(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&i| self.hosts[i].up && self.hosts[i].slot.borrow().is_some())
            .collect()
    }

    /// Repairs what is due, restarts and retires hosts whose time came.
    fn maintain(&mut self, heal_all: bool) {
        let now = self.now();
        for (a, b) in take_due(&mut self.cut, now, heal_all) {
            self.sim.repair_oneway(self.hosts[a].ip, self.hosts[b].ip);
        }
        for (a, b) in take_due(&mut self.held, now, heal_all) {
            self.sim.release(self.hosts[a].ip, self.hosts[b].ip);
        }
        for h in 0..self.hosts.len() {
            if self.hosts[h]
                .disk_faults_until
                .is_some_and(|t| heal_all || t <= now)
            {
                self.hosts[h].disk_faults_until = None;
                if let Some(disk) = &self.hosts[h].plan.borrow().disk {
                    disk.set_faults(Faults::default());
                }
                let line = format!("{}'s disk sound again", self.hosts[h].name);
                self.note(line);
            }
            if self.hosts[h]
                .retire_at
                .is_some_and(|t| heal_all || t <= now)
            {
                self.hosts[h].retire_at = None;
                self.hosts[h].retired = true;
                if self.hosts[h].up {
                    self.crash(h);
                }
                let line = format!("{} (duplicate id) killed for good", self.hosts[h].name);
                self.note(line);
            }
            if !self.hosts[h].retired
                && self.hosts[h]
                    .restart_at
                    .is_some_and(|t| heal_all || t <= now)
            {
                self.restart(h);
            }
        }
    }

    // ---- the settled state ----

    fn views(&self) -> Vec<(String, Buckets)> {
        let mut out = Vec::new();
        for host in &self.hosts {
            if host.retired {
                continue;
            }
            let slot = host.slot.borrow();
            let Some(running) = slot.as_ref() else {
                continue;
            };
            let mut buckets = BTreeMap::new();
            for b in &self.buckets {
                let bucket = running.node.bucket(b);
                let store = bucket.store();
                let mut registers = Vec::new();
                let mut values = BTreeMap::new();
                let mut live = BTreeMap::new();
                let keys = self.history.keys.get(b).cloned().unwrap_or_default();
                for key in &keys {
                    for (origin, w) in store.registers(key) {
                        let op = w.value().and_then(check::op_of);
                        registers.push(format!(
                            "{}|{}|{:?}|{}|{}|{}|{:?}",
                            check::short(key),
                            origin.id(),
                            w.hlc,
                            w.seq,
                            w.is_touch(),
                            w.expires().encoded(),
                            op
                        ));
                        if !w.is_touch() {
                            values.insert(
                                key.clone(),
                                (w.hlc, origin.id().clone(), op, w.expires().encoded()),
                            );
                        }
                    }
                    let mut found = None;
                    bucket.read(key, &mut |v| found = check::op_of(v));
                    if let Some(op) = found {
                        live.insert(key.clone(), op);
                    }
                }
                registers.sort();
                let mut context: Vec<String> = store
                    .context()
                    .into_iter()
                    .map(|(o, r)| format!("{}={r:?}", o.id()))
                    .collect();
                context.sort();
                buckets.insert(
                    b.clone(),
                    BucketView {
                        registers,
                        context: context.join(" "),
                        live,
                        len: bucket.len(),
                        stored: bucket.store().stored_print(),
                        now_ms: running.node.clock().now().physical_ms(),
                        scanned: {
                            let mut n = 0;
                            bucket.scan("", &mut |_, _| n += 1);
                            n
                        },
                        values,
                    },
                );
            }
            out.push((format!("{}#{}", host.name, host.generation), buckets));
        }
        out
    }

    fn equal(views: &[(String, Buckets)]) -> bool {
        views.windows(2).all(|w| {
            w[0].1
                .iter()
                .zip(w[1].1.iter())
                .all(|((_, a), (_, b))| a.registers == b.registers && a.context == b.context)
        })
    }

    /// What users see (each key's value, `size`, a scan) and the contexts are the same everywhere;
    /// the registers may still differ by dead ones not collected everywhere yet.
    fn observably_equal(views: &[(String, Buckets)]) -> bool {
        views.windows(2).all(|w| {
            w[0].1.iter().zip(w[1].1.iter()).all(|((_, a), (_, b))| {
                a.context == b.context
                    && a.live == b.live
                    && a.len == b.len
                    && a.scanned == b.scanned
            })
        })
    }

    /// Sweeps every bucket of every running node (expiries due now fire) and drains the events.
    fn sweep_all(&mut self) {
        for host in &self.hosts {
            if let Some(running) = host.slot.borrow().as_ref() {
                for b in &self.buckets {
                    running.node.bucket(b).sweep();
                }
            }
        }
        self.drain();
    }
}
