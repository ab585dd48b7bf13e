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
use super::rng::{derive, SplitMix};
use crate::acks::{AckEnd, AckLevel, AckOutcome, Registered};
use crate::clock::Clock;
use crate::config::Config;
use crate::disk::sim::{FaultKind, Faults, SimDisk};
use crate::disk::Durability;
use crate::node::Node;
use crate::ranges::SeqRanges;
use crate::replica::ReplicaId;
use crate::store::{Change, Lifetime};
use crate::transport::SimTcp;
use crate::value;
use crate::wire::{MAX_KEY, MAX_VALUE};

/// The virtual time the simulation starts at (2026-01-01T00:00:00Z).
const EPOCH_MS: u64 = 1_767_225_600_000;
const PORT: u16 = 7000;
const MAX_CLOCK_SKEW_MS: u64 = 2_000;
/// How long after the heal the replicas may take to show the same keys, values and contexts, and
/// to settle (the same registers) unless a departed id holds up collection (`World::departed_at`).
const QUIET_MAX_MS: u64 = 60_000;
/// The shortest quiet phase (restarted nodes rejoin, pulls finish, expiries pass).
const QUIET_MIN_MS: u64 = 3_000;

/// What a run exercises. Every fault kind is one flag; `heavy` sets them all.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub name: &'static str,
    pub nodes: usize,
    /// Virtual milliseconds of operations and faults before the heal.
    pub chaos_ms: u64,
    /// Mean virtual milliseconds between operations.
    pub op_every_ms: u64,
    /// Mean virtual milliseconds between faults (of the kinds enabled).
    pub fault_every_ms: u64,
    pub buckets: usize,
    /// Partitions of the cluster in two that heal pair by pair.
    pub partitions: bool,
    pub one_way: bool,
    /// Traffic held on a link, then released at once.
    pub holds: bool,
    /// Links cut for a few milliseconds: segments in flight are lost and the stream stalls.
    pub resets: bool,
    /// SIGKILL-equivalent crashes, restarts under the same id (empty, new incarnation).
    pub crashes: bool,
    /// Restarts under a new id.
    pub new_ids: bool,
    /// A second process with an existing node's id, for a while.
    pub dup_ids: bool,
    /// `memberTimeout` short enough that long partitions forget members.
    pub forget: bool,
    /// Nodes joining during the run.
    pub joins: bool,
    /// Clock offsets up to just under `maxClockSkew` apart, drift, backward jumps on restart.
    pub clocks: bool,
    /// Keys and values at their size limits, now and then.
    pub big: bool,
    /// Percent of the nodes that keep a data directory on a simulated disk (strict or relaxed, drawn
    /// per node); a crash cuts its power (unsynced writes lost or torn) and the node comes back from
    /// the directory, or without it (lost with the machine).
    pub disks: u64,
    /// Episodes of EIO and ENOSPC on a node's disk writes and fsyncs, and of a full disk.
    pub disk_faults: bool,
}

const BASE: Profile = Profile {
    name: "calm",
    nodes: 4,
    chaos_ms: 8_000,
    op_every_ms: 25,
    fault_every_ms: 700,
    buckets: 2,
    partitions: false,
    one_way: false,
    holds: false,
    resets: false,
    crashes: false,
    new_ids: false,
    dup_ids: false,
    forget: false,
    joins: false,
    clocks: false,
    big: false,
    disks: 0,
    disk_faults: false,
};

pub const PROFILES: &[Profile] = &[
    BASE,
    Profile {
        name: "partitions",
        partitions: true,
        one_way: true,
        holds: true,
        resets: true,
        ..BASE
    },
    Profile {
        name: "crashes",
        crashes: true,
        new_ids: true,
        joins: true,
        disks: 50,
        disk_faults: true,
        ..BASE
    },
    Profile {
        name: "clocks",
        clocks: true,
        crashes: true,
        ..BASE
    },
    Profile {
        name: "membership",
        forget: true,
        partitions: true,
        dup_ids: true,
        joins: true,
        buckets: 4,
        ..BASE
    },
    Profile {
        name: "heavy",
        nodes: 5,
        chaos_ms: 12_000,
        op_every_ms: 15,
        fault_every_ms: 400,
        buckets: 4,
        partitions: true,
        one_way: true,
        holds: true,
        resets: true,
        crashes: true,
        new_ids: true,
        dup_ids: true,
        forget: true,
        joins: true,
        clocks: true,
        big: true,
        disks: 60,
        disk_faults: true,
    },
    Profile {
        name: "disk",
        crashes: true,
        disks: 100,
        disk_faults: true,
        fault_every_ms: 500,
        ..BASE
    },
];

impl Profile {
    pub fn named(name: &str) -> Option<Profile> {
        PROFILES.iter().find(|p| p.name == name).copied()
    }
}

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
    /// The node's warnings: every peer here is honest, so none may report a protocol error.
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
    let (data_dir, file_system): (_, Arc<dyn crate::disk::fs::FileSystem>) = match &plan.disk {
        // A mount per run: a task of a crashed run reaches nothing.
        Some(disk) => (Some("/data".into()), Arc::new(disk.mount())),
        None => (None, Arc::new(crate::disk::fs::RealFs)),
    };
    Config {
        data_dir,
        file_system,
        durability: plan.durability,
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
                            if !w.touch {
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
                while let Ok(change) = rx.try_recv() {
                    let registers = if change.value.is_none() && !change.expired {
                        running.node.bucket(bucket).inspect(&change.key)
                    } else {
                        Vec::new()
                    };
                    let tombstone = registers
                        .iter()
                        .find(|(_, w)| !w.touch && w.value.is_none());
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
                        &change,
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

    // ---- operations ----

    fn operate(&mut self) {
        let running = self.running();
        if running.is_empty() {
            return;
        }
        let h = *self.rng.pick(&running);
        let bucket = self.rng.pick(&self.buckets).clone();
        let key: Arc<str> = if self.profile.big && self.rng.chance(0.01) {
            let mut k = format!("p{}/big{}-", self.rng.below(4), self.rng.below(2));
            k.push_str(&"k".repeat(MAX_KEY - k.len()));
            k.into()
        } else {
            format!("p{}/k{}", self.rng.below(4), self.rng.below(8)).into()
        };
        let (node, runtime) = {
            let slot = self.hosts[h].slot.borrow();
            let running = slot.as_ref().unwrap();
            (running.node.clone(), running.runtime.clone())
        };
        let _inside = runtime.enter();
        let roll = self.rng.below(100);
        if roll < 8 {
            let ttl = self.rng.range(10, 3_000);
            let touch = node.bucket(&bucket).touch(key.clone(), ttl);
            let touched = touch.is_some();
            if let Some(t) = touch {
                self.history.touch(&bucket, node.replica().id(), &t);
            }
            self.note(format!(
                "{} touch {bucket}/{} {ttl} ms: {touched}",
                self.hosts[h].name,
                check::short(&key)
            ));
            return;
        }
        if roll < 12 {
            let peers: Vec<String> = node
                .peers()
                .into_iter()
                .filter(|p| p.connected)
                .map(|p| p.id)
                .collect();
            if peers.is_empty() {
                return;
            }
            let from = self.rng.pick(&peers).clone();
            let prefix = format!("p{}/", self.rng.below(4));
            let ok = node.fetch(&bucket, &from, &prefix).is_ok();
            self.note(format!(
                "{} fetch {bucket}/{prefix} from {from}: {ok}",
                self.hosts[h].name
            ));
            return;
        }
        let op = self.history.writes.len() as u64;
        let (value, lifetime) = if roll < 30 {
            (None, Lifetime::Forever)
        } else {
            let pad = if self.profile.big && self.rng.chance(0.003) {
                MAX_VALUE - 32
            } else {
                self.rng.below(40) as usize
            };
            let lifetime = match self.rng.below(10) {
                0..=5 => Lifetime::Forever,
                6..=8 => Lifetime::Ttl(self.rng.range(5, 4_000)),
                _ => {
                    // Due already, or about to be, by some clocks.
                    let wall = node.clock().wall_ms();
                    Lifetime::Until(wall + self.rng.range(0, 2_000) - 1_000)
                }
            };
            (
                Some(value::encode_json(&check::value_text(op, pad))),
                lifetime,
            )
        };
        let level = match self.rng.below(10) {
            0..=3 => AckLevel::Local,
            4..=6 => AckLevel::One,
            7..=8 => AckLevel::Majority,
            _ => AckLevel::All,
        };
        let timeout = Duration::from_millis(self.rng.range(300, 3_000));
        let b = node.bucket(&bucket);
        let deleted = value.is_none();
        let (write, registered) =
            node.write_acked(&b, key.clone(), value, lifetime, level, timeout);
        let strict = node.is_strict();
        let (status, ackers) = match &registered {
            Registered::Met(by) if level != AckLevel::Local || strict => {
                (Status::Acked, by.clone())
            }
            Registered::Met(_) => (Status::Local, Vec::new()),
            Registered::Pending(ticket) => {
                if let Some(r) = self.hosts[h].slot.borrow_mut().as_mut() {
                    r.pending.insert(*ticket, op);
                }
                (Status::Pending, Vec::new())
            }
        };
        let now = self.now();
        self.history.record(WriteRec {
            at_ms: now,
            node: node.id().clone(),
            replica: node.replica().id().clone(),
            bucket: bucket.clone(),
            key: key.clone(),
            hlc: write.hlc,
            deleted,
            expires_ms: write.expires_ms,
            seq: write.seq,
            level,
            strict,
            status,
            ackers,
        });
        self.ops += 1;
        self.note(format!(
            "{} op {op}: {} {bucket}/{} {:?} expires {} {level:?} {status:?}",
            self.hosts[h].name,
            if deleted { "delete" } else { "set" },
            check::short(&key),
            write.hlc,
            write.expires_ms,
        ));
    }

    // ---- faults ----

    fn cut(&mut self, from: usize, to: usize, until: u64) {
        let (a, b) = (self.hosts[from].ip, self.hosts[to].ip);
        self.sim.partition_oneway(a, b);
        let end = self.cut.entry((from, to)).or_insert(until);
        *end = (*end).max(until);
    }

    fn fault(&mut self) {
        let p = self.profile;
        let mut kinds = Vec::new();
        if p.partitions {
            kinds.extend(["partition", "partition"]);
        }
        if p.one_way {
            kinds.push("one-way");
        }
        if p.holds {
            kinds.push("hold");
        }
        if p.resets {
            kinds.push("reset");
        }
        if p.crashes {
            kinds.extend(["crash", "crash"]);
        }
        if p.dup_ids && self.dups == 0 {
            kinds.push("duplicate-id");
        }
        if p.joins && self.joined < 2 {
            kinds.push("join");
        }
        if p.clocks {
            kinds.push("clock-restart");
        }
        if p.disk_faults {
            kinds.extend(["disk-errors", "disk-full"]);
        }
        if kinds.is_empty() {
            return;
        }
        let now = self.now();
        let n = self.hosts.len();
        let kind = *self.rng.pick(&kinds);
        self.faults += 1;
        match kind {
            "partition" => {
                let mut side: Vec<usize> = (0..n).filter(|_| self.rng.chance(0.4)).collect();
                if side.is_empty() || side.len() == n {
                    side = vec![self.rng.below(n as u64) as usize];
                }
                let length = if p.forget && self.rng.chance(0.3) {
                    self.rng.range(3_000, 6_000)
                } else {
                    self.rng.range(200, 2_500)
                };
                // Pair by pair: a returning node reaches one peer first.
                for &i in &side {
                    for j in (0..n).filter(|j| !side.contains(j)) {
                        let heal = now + length + self.rng.below(1_500);
                        self.cut(i, j, heal);
                        let heal = now + length + self.rng.below(1_500);
                        self.cut(j, i, heal);
                    }
                }
                self.note(format!(
                    "fault: partition {side:?} for ~{length} ms, healing pair by pair"
                ));
            }
            "one-way" => {
                let (a, b) = self.two(n);
                let until = now + self.rng.range(200, 3_000);
                self.cut(a, b, until);
                self.note(format!("fault: one-way {a} -> {b} cut until {until}"));
            }
            "hold" => {
                let (a, b) = self.two(n);
                let key = (a.min(b), a.max(b));
                if !self.held.contains_key(&key) {
                    self.sim.hold(self.hosts[a].ip, self.hosts[b].ip);
                    let until = now + self.rng.range(50, 2_000);
                    self.held.insert(key, until);
                    let names = (self.hosts[a].name.clone(), self.hosts[b].name.clone());
                    self.history.holds.push((names.0, names.1, now, until));
                    self.note(format!("fault: hold {a} <-> {b} until {until}"));
                }
            }
            "reset" => {
                let (a, b) = self.two(n);
                let until = now + self.rng.range(1, 5);
                self.cut(a, b, until);
                self.cut(b, a, until);
                self.note(format!(
                    "fault: reset {a} <-> {b} (segments in flight lost)"
                ));
            }
            "crash" | "clock-restart" => {
                let candidates: Vec<usize> = (0..n)
                    .filter(|&i| self.hosts[i].up && self.hosts[i].retire_at.is_none())
                    .collect();
                // Keep more than half of the nodes up.
                if candidates.len() * 2 <= n + 1 {
                    return;
                }
                // Half the time on a failing disk, if there is one: what a flush could not
                // store is then lost, and the checker sees whether a write claimed it.
                let failing: Vec<usize> = candidates
                    .iter()
                    .copied()
                    .filter(|&i| self.hosts[i].disk_faults_until.is_some())
                    .collect();
                let h = if !failing.is_empty() && self.rng.chance(0.5) {
                    *self.rng.pick(&failing)
                } else {
                    *self.rng.pick(&candidates)
                };
                let down = if kind == "crash" {
                    self.rng.range(100, 4_000)
                } else {
                    self.rng.range(1, 50)
                };
                self.crash(h);
                self.hosts[h].restart_at = Some(now + down);
                let next = match self.hosts[h].crashed {
                    Some((_, true, _)) => "a new id, without its directory",
                    Some((_, false, true)) => "its directory",
                    _ if self.hosts[h].plan.borrow().disk.is_some() => "its directory lost",
                    _ => "memory only",
                };
                self.note(format!(
                    "fault: {kind} {} for {down} ms (back with {next})",
                    self.hosts[h].name
                ));
            }
            "disk-errors" | "disk-full" => {
                let candidates: Vec<usize> = (0..n)
                    .filter(|&i| self.hosts[i].up && self.hosts[i].plan.borrow().disk.is_some())
                    .collect();
                if candidates.is_empty() {
                    return;
                }
                let h = *self.rng.pick(&candidates);
                let disk = self.hosts[h].plan.borrow().disk.clone().expect("a disk");
                let faults = if kind == "disk-errors" {
                    let rate = self.rng.range(5, 60) as f64 / 100.0;
                    Faults {
                        write: rate,
                        sync: rate,
                        kind: FaultKind::Either,
                        capacity: None,
                    }
                } else {
                    Faults {
                        capacity: Some(disk.used() + self.rng.range(0, 64 * 1024)),
                        ..Faults::default()
                    }
                };
                let line = format!("fault: {kind} on {} ({faults:?})", self.hosts[h].name);
                disk.set_faults(faults);
                let until = now + self.rng.range(50, 2_000);
                self.hosts[h].disk_faults_until = Some(until);
                self.note(format!("{line} until {until}"));
            }
            "duplicate-id" => {
                self.dups += 1;
                let twin = self.rng.below(p.nodes as u64) as usize;
                let id = self.hosts[twin].plan.borrow().id.clone();
                let seeds = vec![self.address((twin + 1) % p.nodes)];
                let name = format!("d{}", self.dups);
                let h = self.add_host(name.clone(), id.clone(), seeds, false);
                self.hosts[h].retire_at = Some(now + self.rng.range(500, 3_000));
                self.note(format!("fault: {name} starts with {id}'s id"));
            }
            "join" => {
                self.joined += 1;
                let name = format!("j{}", self.joined);
                let seed = self.rng.below(p.nodes as u64) as usize;
                let seeds = vec![self.address(seed)];
                self.add_host(name.clone(), name.clone(), seeds, true);
                self.note(format!("fault: {name} joins through n{seed}"));
            }
            _ => unreachable!(),
        }
    }

    fn two(&mut self, n: usize) -> (usize, usize) {
        let a = self.rng.below(n as u64) as usize;
        let b = (a + 1 + self.rng.below(n as u64 - 1) as usize) % n;
        (a, b)
    }

    /// A SIGKILL: the host's runtime is dropped with every task in it. Its outgoing links are cut
    /// meanwhile, so what the drop sends (FINs, in an order that depends on tokio's process-wide task
    /// ids) never leaves: a seed replays the same in any process, after any other run.
    fn crash(&mut self, h: usize) {
        // The power first: what the teardown would still write reaches nothing, and the disk is
        // sound again when the machine comes back (the error episode ends with it).
        let disk = self.hosts[h].plan.borrow().disk.clone();
        if let Some(disk) = &disk {
            disk.crash();
            disk.set_faults(Faults::default());
        }
        self.hosts[h].disk_faults_until = None;
        let name = self.hosts[h].name.clone();
        let others: Vec<usize> = (0..self.hosts.len()).filter(|&j| j != h).collect();
        for &j in &others {
            self.sim
                .partition_oneway(self.hosts[h].ip, self.hosts[j].ip);
        }
        self.sim.crash(name.as_str());
        for &j in &others {
            if !self.cut.contains_key(&(h, j)) {
                self.sim.repair_oneway(self.hosts[h].ip, self.hosts[j].ip);
            }
            if self.held.contains_key(&(h.min(j), h.max(j))) {
                self.sim.hold(self.hosts[h].ip, self.hosts[j].ip);
            }
        }
        self.hosts[h].up = false;
        self.hosts[h].slot.borrow_mut().take();
        let id = self.hosts[h].plan.borrow().id.clone();
        let now = self.now();
        // A new id needs a new directory (the old one belongs to the old id); else the directory
        // survives most crashes (a process killed) and is sometimes lost with its machine.
        let new_id = self.profile.new_ids && self.rng.chance(0.3);
        let keep = disk.is_some() && !new_id && self.rng.chance(0.8);
        if new_id {
            self.departed_at = Some(now);
        }
        self.hosts[h].crashed = Some((now, new_id, keep));
        self.history
            .crashes
            .entry(id)
            .or_default()
            .push((now, keep));
    }

    fn restart(&mut self, h: usize) {
        let (new_id, keep) = self.hosts[h]
            .crashed
            .map_or((false, false), |(_, new_id, keep)| (new_id, keep));
        let (offset, drift) = self.offset();
        let now = self.now();
        let seed = self.seed;
        let host = &mut self.hosts[h];
        host.generation += 1;
        {
            let mut plan = host.plan.borrow_mut();
            if new_id {
                plan.id = format!("{}-{}", host.name, host.generation);
            }
            if let Some(disk) = &plan.disk {
                if keep {
                    disk.power_on();
                } else {
                    plan.disk = Some(SimDisk::new(derive(
                        seed,
                        5_000 + 64 * host.generation + h as u64,
                    )));
                    host.dir_since = now;
                }
            }
            // Often earlier than before the crash: the clock jumps backwards.
            plan.offset_ms = if self.profile.clocks
                && offset > plan.offset_ms
                && host.generation.is_multiple_of(2)
            {
                plan.offset_ms - (offset - plan.offset_ms).min(500)
            } else {
                offset
            };
            plan.offset_ms = plan.offset_ms.max(-((MAX_CLOCK_SKEW_MS as i64) * 45 / 100));
            plan.drift_ppm = drift;
            plan.node_seed = derive(self.seed, 1_000 + 64 * host.generation + h as u64);
        }
        host.model = Model::default();
        host.up = true;
        host.restart_at = None;
        let name = host.name.clone();
        let line = {
            let plan = host.plan.borrow();
            format!(
                "restart {name} as {} (clock offset {} ms)",
                plan.id, plan.offset_ms
            )
        };
        self.sim.bounce(name.as_str());
        self.note(line);
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
                        let op = w.value.as_deref().and_then(check::op_of);
                        registers.push(format!(
                            "{}|{}|{:?}|{}|{}|{}|{:?}",
                            check::short(key),
                            origin.id(),
                            w.hlc,
                            w.seq,
                            w.touch,
                            w.expires_ms,
                            op
                        ));
                        if !w.touch {
                            values.insert(
                                key.clone(),
                                (w.hlc, origin.id().clone(), op, w.expires_ms),
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

/// Runs one seed of `profile`; `trace` keeps the event lines. Each run gets a thread of its own:
/// the runtimes turmoil builds keep per-thread state, and a run on a fresh thread is the same run
/// whatever ran before it in the process.
pub fn run(profile: &Profile, seed: u64, trace: bool) -> Report {
    let profile = *profile;
    std::thread::Builder::new()
        .name(format!("sim-{seed}"))
        .stack_size(16 << 20)
        .spawn(move || run_here(&profile, seed, trace))
        .expect("a thread for the run")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn run_here(profile: &Profile, seed: u64, trace: bool) -> Report {
    let sim = turmoil::Builder::new()
        .rng_seed(derive(seed, 1))
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
        .simulation_duration(Duration::from_secs(3_600))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(20))
        .tcp_capacity(4_096)
        .build();
    let time: SimTime = Arc::new(std::sync::atomic::AtomicU64::new(EPOCH_MS));
    let mut world = World {
        seed,
        profile: *profile,
        sim,
        time,
        rng: SplitMix::new(derive(seed, 2)),
        hosts: Vec::new(),
        buckets: (0..profile.buckets)
            .map(|b| format!("b{b}").into())
            .collect(),
        history: History::default(),
        cut: BTreeMap::new(),
        held: BTreeMap::new(),
        departed_at: None,
        trace: Vec::new(),
        tracing: trace,
        fingerprint: 0xcbf2_9ce4_8422_2325,
        faults: 0,
        ops: 0,
        joined: 0,
        dups: 0,
    };
    // Every node seeds from the two first ones (n0 from n1), so each has seeds and none is alone.
    for i in 0..profile.nodes {
        let name = format!("n{i}");
        world.sim.lookup(name.as_str());
    }
    for i in 0..profile.nodes {
        let seeds = [0, 1]
            .iter()
            .filter(|&&s| s != i)
            .map(|&s| format!("{}:{PORT}", world.sim.lookup(format!("n{s}").as_str())))
            .collect();
        world.add_host(format!("n{i}"), format!("n{i}"), seeds, true);
    }
    let result = drive(&mut world);
    if let Err(e) = result {
        let at = world.now();
        world.history.violation(at, "host", e);
    }
    Report {
        seed,
        profile: profile.name,
        steps: world.now(),
        ops: world.ops,
        faults: world.faults,
        violations: std::mem::take(&mut world.history.violations),
        fingerprint: world.fingerprint,
        trace: std::mem::take(&mut world.trace),
    }
}

fn drive(world: &mut World) -> Result<(), String> {
    let profile = world.profile;
    while world.now() < profile.chaos_ms {
        world.maintain(false);
        if world.rng.chance(1.0 / profile.op_every_ms as f64) {
            world.operate();
        }
        if world.rng.chance(1.0 / profile.fault_every_ms as f64) {
            world.fault();
        }
        world.step()?;
    }
    world.note("heal: every link repaired, held traffic released, crashed nodes restarted".into());
    world.maintain(true);
    let healed_at = world.now();
    // Settled: every replica holds the same registers and contexts at one instant, after expiries
    // due by then were swept and their events drained (the final checks look at that instant).
    // Users must see the same everywhere within `QUIET_MAX_MS`; the registers must match by then too,
    // or, when an id departed, within `QUIET_MAX_MS` of the moment every peer forgot it (collection
    // waits for it until then; nothing else is allowed that long).
    let member_timeout = world.hosts[0].plan.borrow().member_timeout.as_millis() as u64;
    let collected_by = world
        .departed_at
        .map_or(healed_at, |t| healed_at.max(t + member_timeout))
        + QUIET_MAX_MS;
    let mut views = None;
    let mut observed = false;
    let mut deadline = healed_at + QUIET_MAX_MS;
    while world.now() < deadline {
        // A node whose start failed during the chaos comes back at once.
        world.maintain(true);
        world.step()?;
        let quiet = world.now() - healed_at;
        if quiet >= QUIET_MIN_MS && quiet.is_multiple_of(250) {
            world.sweep_all();
            let now = world.views();
            if World::equal(&now) {
                views = Some(now);
                break;
            }
            if !observed && World::observably_equal(&now) {
                observed = true;
                deadline = collected_by;
            }
        }
    }
    let settled = views.is_some();
    // Every node takes part in the final checks: one that is still not running (its data directory
    // no longer opens) is a failure, never a replica left out.
    let at = world.now();
    let down: Vec<String> = world
        .hosts
        .iter()
        .filter(|h| !h.retired && h.slot.borrow().is_none())
        .map(|h| h.name.clone())
        .collect();
    if !down.is_empty() {
        world
            .history
            .violation(at, "down", format!("{down:?} not running after the heal"));
    }
    let views = match views {
        Some(v) => v,
        None => {
            world.sweep_all();
            world.views()
        }
    };
    let mut summary = String::new();
    for (name, buckets) in &views {
        for (b, v) in buckets {
            summary.push_str(&format!(
                "{name} {b} {} {} {:?};",
                v.len, v.context, v.registers
            ));
        }
    }
    fnv(&mut world.fingerprint, &summary);
    if !settled {
        let at = world.now();
        world.history.violation(
            at,
            "unsettled",
            if observed {
                format!(
                    "the replicas' registers still differed {} ms after the heal ({} ms after every peer could forget the last departed id)",
                    at - healed_at,
                    at.saturating_sub(collected_by - QUIET_MAX_MS)
                )
            } else {
                format!("the replicas did not show the same keys, values and contexts within {QUIET_MAX_MS} ms of the heal")
            },
        );
    }
    let at = world.now();
    let models: Vec<&Model> = world
        .hosts
        .iter()
        .filter(|h| !h.retired && h.slot.borrow().is_some())
        .map(|h| &h.model)
        .collect();
    let joined: Vec<Settled> = views
        .into_iter()
        .zip(models)
        .map(|((name, buckets), model)| Settled {
            name,
            buckets,
            model,
        })
        .collect();
    let mut history = std::mem::take(&mut world.history);
    check::check_final(&mut history, at, &joined);
    world.history = history;
    Ok(())
}
