//! Deterministic simulation of the sync protocol: five replicas exchange real encoded frames over an
//! in-memory network that drops, duplicates and reorders them, splits into partitions that heal part
//! by part, and resets links; replicas write, delete, touch and restart empty (under a new
//! incarnation, with a clock that may jump backwards), and one at a time is cut off and forgotten
//! while the others collect tombstones, then comes back reaching one peer first (maybe one that
//! restarted after the collection).
//!
//! What it checks, besides convergence (after healing, every replica holds exactly the same registers
//! and contexts): invariant P, that each replica stores for every key the last-writer-wins maximum, by
//! (hlc, origin), of exactly the writes its context covers (or nothing, when that maximum is dead). A
//! registry of every write ever made (stand-ins included) is the reference. Each replica has its own
//! clock offset, up to just under the clock skew limit, drawn from a few values so that equal
//! (physical, logical) timestamps across origins are common.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use peer_buckets_engine::value;
use peer_buckets_engine::wire::Message;
use peer_buckets_engine::Collector;
use peer_buckets_engine::ManualClock;
use peer_buckets_engine::{key_fingerprint, Change, Lifetime, Write};
use peer_buckets_engine::{Inbound, Local, PullPlanner, Session};
use peer_buckets_engine::{Origin, ReplicaId};
use peer_buckets_engine::{Seq, SeqRanges};

mod common;
use common::*;

const N: usize = 5;
const BUCKETS: [&str; 2] = ["sessions", "carts"];
const KEYS: u64 = 40;
/// The clock skew limit of every replica; offsets stay just under it.
const MAX_SKEW_MS: u64 = 2_000;
/// Clock offsets are drawn from these: few values, so equal timestamps across origins are common.
const OFFSETS: [i64; 4] = [0, 0, 700, MAX_SKEW_MS as i64 - 1];

struct Frame {
    from: usize,
    to: usize,
    msg: Message,
}

/// A write as the registry remembers it: enough to recompute the last-writer-wins maximum.
#[derive(Clone, Debug)]
struct Logged {
    key: Arc<str>,
    hlc: u64,
    origin: ReplicaId,
    seq: Seq,
    live: bool,
    expires_ms: u64,
    touch: bool,
}

impl Logged {
    fn of(origin: &ReplicaId, w: &Write, live: bool) -> Logged {
        Logged {
            key: w.key.clone(),
            hlc: w.hlc.0,
            origin: origin.clone(),
            seq: w.seq,
            live,
            expires_ms: w.expires().encoded(),
            touch: w.is_touch(),
        }
    }
    fn order(&self) -> (u64, &ReplicaId) {
        (self.hlc, &self.origin)
    }
}

/// Every write ever made, per bucket and dot.
type Registry = BTreeMap<(&'static str, ReplicaId, Seq), Logged>;

struct Sim {
    rng: Rng,
    time: Arc<ManualClock>,
    locals: Vec<Local>,
    /// sessions[i][j]: replica i's session about replica j.
    sessions: Vec<Vec<Option<Session>>>,
    planners: Vec<PullPlanner>,
    collectors: Vec<Collector>,
    /// A replica cut off from all and forgotten by the others (they collect without it).
    exiled: Option<usize>,
    collected: usize,
    step: usize,
    net: VecDeque<Frame>,
    /// side[i]: which side of a partition replica i is on.
    side: [u8; N],
    loss: u64,
    restarts: u64,
    /// Repairs that changed what a replica stored, in replicas restarted since (honest replicas
    /// with equal contexts store alike: any is a failure).
    repairs_changed: u64,
    registry: Registry,
    /// The dots some frame delivered to another replica. A write its writer overwrote before any
    /// frame carried it is claimed without its register (no replica but the writer can hold it):
    /// invariant P counts it only at its writer.
    left: std::collections::BTreeSet<(Arc<str>, ReplicaId, Seq)>,
    /// The replica that wrote last: restarting it loses writes only it holds.
    last_writer: usize,
    /// While a replica is exiled: tombstones collected before it left, and the replicas restarted
    /// since (joiners it may meet first when it returns).
    exile_start: (usize, Vec<usize>),
    /// Per replica and bucket, when listening: the changes heard, and the live keys they add up to.
    listeners: Vec<Vec<Listener>>,
    /// Collection episodes (`SIM_EPISODES=1` in a sweep; always in
    /// `replicas_converge_through_collection_episodes`): while a replica is away the others collect,
    /// one of them restarts empty, and the away one returns to it first.
    episodes: bool,
}

struct Listener {
    changes: tokio::sync::mpsc::UnboundedReceiver<Change>,
    heard: BTreeMap<String, Vec<u8>>,
}

/// Across runs: returns whose first peer had joined after a collection the returning replica missed.
static RETURNS_TO_A_JOINER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn new_local(i: usize, incarnation: u64, time: &Arc<ManualClock>, offset_ms: i64) -> Local {
    collecting_local(&format!("n{i}"), incarnation, time, offset_ms, MAX_SKEW_MS)
}

impl Sim {
    fn new(seed: u64) -> Sim {
        Sim::with_offsets(seed, &[0; N])
    }

    /// A simulation whose replicas' clocks are drawn from `OFFSETS`.
    fn skewed(seed: u64) -> Sim {
        let mut rng = Rng::new(seed ^ 0x5eed);
        let offsets: Vec<i64> = (0..N)
            .map(|_| OFFSETS[rng.below(OFFSETS.len() as u64) as usize])
            .collect();
        Sim::with_offsets(seed, &offsets)
    }

    fn with_offsets(seed: u64, offsets: &[i64]) -> Sim {
        let time = Arc::new(ManualClock::new(1_700_000_000_000));
        let locals = (0..N).map(|i| new_local(i, 1, &time, offsets[i])).collect();
        let mut sim = Sim {
            rng: Rng::new(seed),
            time,
            locals,
            sessions: (0..N).map(|_| (0..N).map(|_| None).collect()).collect(),
            planners: (0..N).map(|_| PullPlanner::default()).collect(),
            collectors: (0..N).map(|_| Collector::default()).collect(),
            exiled: None,
            collected: 0,
            step: 0,
            net: VecDeque::new(),
            side: [0; N],
            loss: 0,
            restarts: 0,
            repairs_changed: 0,
            registry: Registry::new(),
            left: Default::default(),
            last_writer: 0,
            exile_start: (0, Vec::new()),
            listeners: Vec::new(),
            episodes: std::env::var("SIM_EPISODES").is_ok_and(|v| v == "1"),
        };
        for i in 0..N {
            for j in 0..N {
                if i < j {
                    sim.connect(i, j);
                }
            }
        }
        sim
    }

    /// (Re)opens the link between i and j: both sides start from the other's hello.
    fn connect(&mut self, i: usize, j: usize) {
        let hi = self.locals[i].hello(7000, None, vec![]);
        let hj = self.locals[j].hello(7000, None, vec![]);
        self.sessions[i][j] = Some(Session::new(&self.locals[i], &hj).expect("hello accepted"));
        self.sessions[j][i] = Some(Session::new(&self.locals[j], &hi).expect("hello accepted"));
        self.net
            .retain(|f| !((f.from == i && f.to == j) || (f.from == j && f.to == i)));
        // The contexts follow the hellos on the same connection, which loses nothing; both are sent
        // before either arrives.
        let from_i = self.contexts(i, j);
        let from_j = self.contexts(j, i);
        self.receive_contexts(j, i, from_i);
        self.receive_contexts(i, j, from_j);
    }

    /// What replica i's new session about j sends first: its contexts and collected registers.
    fn contexts(&mut self, i: usize, j: usize) -> Vec<Message> {
        let session = self.sessions[i][j].as_mut().expect("linked");
        let msgs = due(session, &self.locals[i], false);
        for msg in &msgs {
            assert!(
                matches!(msg, Message::Contexts(_) | Message::Collected { .. }),
                "sent before the contexts: {msg:?}"
            );
        }
        msgs
    }

    /// Replica j's session about i takes i's contexts.
    fn receive_contexts(&mut self, j: usize, i: usize, msgs: Vec<Message>) {
        let receiver = self.sessions[j][i].as_mut().expect("linked");
        for msg in msgs {
            receiver
                .handle(&self.locals[j], msg)
                .expect("contexts accepted");
        }
    }

    /// Replica i writes `value` (a tombstone when `None`) to `key` of `bucket`, logged.
    fn put(
        &mut self,
        i: usize,
        bucket: &'static str,
        key: &str,
        value: Option<&str>,
        life: Lifetime,
    ) {
        let encoded = value.map(|v| value::encode_json(&format!("\"{v}\"")));
        let w = self.locals[i].bucket(bucket).write(key, encoded, life);
        let origin = self.locals[i].me().id().clone();
        let logged = Logged::of(&origin, &w, value.is_some());
        self.registry.insert((bucket, origin, w.seq), logged);
        self.last_writer = i;
    }

    fn write(&mut self) {
        let i = self.rng.below(N as u64) as usize;
        let bucket = BUCKETS[self.rng.below(2) as usize];
        let key = format!("k{}", self.rng.below(KEYS));
        if self.rng.chance(10) {
            let b = self.locals[i].bucket(bucket);
            if let Some(w) = b.touch(key.into(), 200 + self.rng.below(3_000)) {
                let origin = self.locals[i].me().id().clone();
                let logged = Logged::of(&origin, &w, false);
                self.registry.insert((bucket, origin, w.seq), logged);
            }
            return;
        }
        let value = (!self.rng.chance(20)).then(|| self.rng.below(1000).to_string());
        let lifetime = if self.rng.chance(30) {
            Lifetime::Ttl(200 + self.rng.below(3_000))
        } else {
            Lifetime::Forever
        };
        self.put(i, bucket, &key, value.as_deref(), lifetime);
    }

    /// Replica i sends what its session about j has due.
    fn flush(&mut self, i: usize, j: usize, lossy: bool) {
        // Without faults (settling), digests go out every round, as a node's do every second.
        let digest_due = self.rng.chance(30) || !lossy;
        let Some(session) = self.sessions[i][j].as_mut() else {
            return;
        };
        let mut buf = Vec::new();
        while session
            .fill(&self.locals[i], &mut buf, digest_due)
            .expect("fill")
        {}
        for msg in decode_all(&buf) {
            if lossy && (self.side[i] != self.side[j] || self.rng.chance(self.loss)) {
                continue;
            }
            if lossy && self.rng.chance(5) {
                self.net.push_back(Frame {
                    from: i,
                    to: j,
                    msg: msg.clone(),
                });
            }
            self.net.push_back(Frame {
                from: i,
                to: j,
                msg,
            });
        }
    }

    fn deliver(&mut self, reorder: bool) {
        if self.net.is_empty() {
            return;
        }
        let pick = if reorder {
            self.rng.below(self.net.len() as u64) as usize
        } else {
            0
        };
        let f = self.net.remove(pick).expect("picked in range");
        if std::env::var("SIM_STEP")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            == Some(self.step)
        {
            println!("deliver n{} -> n{}: {:?}", f.from, f.to, f.msg);
        }
        if let Some(session) = self.sessions[f.to][f.from].as_mut() {
            match &f.msg {
                Message::Ops(batch) => {
                    let dots = batch.writes.iter().map(|w| (&batch.origin, w.seq));
                    let more = batch.superseders.iter().map(|(o, w)| (o, w.seq));
                    for (o, seq) in dots.chain(more) {
                        self.left.insert((batch.bucket.clone(), o.clone(), seq));
                    }
                }
                Message::FetchReply {
                    bucket,
                    origin: Some(o),
                    writes,
                    ..
                } => {
                    for w in writes {
                        self.left.insert((bucket.clone(), o.clone(), w.seq));
                    }
                }
                Message::HeldKeysReply {
                    bucket, registers, ..
                } => {
                    for (o, w) in registers {
                        self.left.insert((bucket.clone(), o.clone(), w.seq));
                    }
                }
                _ => {}
            }
            let inbound = session
                .handle(&self.locals[f.to], f.msg)
                .expect("valid message");
            assert!(matches!(inbound, Inbound::Nothing | Inbound::Members(_)));
        }
    }

    fn plan(&mut self, i: usize) {
        let now = self.time.now_ms_for_test();
        let local = &self.locals[i];
        let linked: Vec<Origin> = self.sessions[i]
            .iter()
            .flatten()
            .map(|s| s.peer.clone())
            .collect();
        let is_pushed = |o: &Origin| linked.contains(o);
        let mut sessions: Vec<&mut Session> = self.sessions[i].iter_mut().flatten().collect();
        self.planners[i].plan(local, &mut sessions, now, &is_pushed);
    }

    /// A collection round at replica i, with every replica not exiled as a member.
    fn collect(&mut self, i: usize) {
        if self.exiled == Some(i) {
            return;
        }
        let members: Vec<Arc<str>> = (0..N)
            .filter(|&j| j != i && Some(j) != self.exiled)
            .map(|j| self.locals[j].id().clone())
            .collect();
        let sessions: Vec<&Session> = self.sessions[i].iter().flatten().collect();
        self.collected += self.collectors[i].round(&self.locals[i], &members, &sessions);
    }

    /// Cuts replica x off from everyone; the others forget it.
    fn exile(&mut self, x: usize) {
        self.exiled = Some(x);
        self.exile_start = (self.collected, Vec::new());
        for j in 0..N {
            self.sessions[x][j] = None;
            self.sessions[j][x] = None;
        }
        self.net.retain(|f| f.from != x && f.to != x);
    }

    /// Brings the exiled replica back: it reconnects to everyone.
    fn recall(&mut self) {
        if let Some(x) = self.exiled.take() {
            for j in 0..N {
                if j != x {
                    self.connect(x.min(j), x.max(j));
                }
            }
        }
    }

    /// Brings the exiled replica back part way: it reaches one peer first; the other links come back
    /// later, one `relink` at a time.
    fn recall_to_one(&mut self) {
        if let Some(x) = self.exiled.take() {
            // Half the time the first peer is one that restarted while x was away.
            let joiners: Vec<usize> = self
                .exile_start
                .1
                .iter()
                .copied()
                .filter(|&j| j != x)
                .collect();
            let j = if !joiners.is_empty() && self.rng.chance(50) {
                joiners[self.rng.below(joiners.len() as u64) as usize]
            } else {
                (x + 1 + self.rng.below(N as u64 - 1) as usize) % N
            };
            if self.collected > self.exile_start.0 && self.exile_start.1.contains(&j) {
                RETURNS_TO_A_JOINER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            self.connect(x.min(j), x.max(j));
        }
    }

    /// Replica i restarts empty under the same node id (a new incarnation, its clock maybe behind
    /// the old one's) and reconnects to all.
    fn restart(&mut self, i: usize) {
        self.restart_linked(i, N);
    }

    /// As `restart`, linked at first to `links` peers at most (the others come back by `relink`).
    fn restart_linked(&mut self, i: usize, links: usize) {
        self.restarts += 1;
        self.repairs_changed += repairs_changed(&self.locals[i]);
        note_divergences(&self.locals[i]);
        self.exile_start.1.push(i);
        let offset = OFFSETS[self.rng.below(OFFSETS.len() as u64) as usize];
        self.locals[i] = new_local(i, 1 + self.restarts, &self.time, offset);
        if !self.listeners.is_empty() {
            self.listeners[i] = self.listen_to(i);
        }
        self.planners[i] = PullPlanner::default();
        self.collectors[i] = Collector::default();
        for j in 0..N {
            self.sessions[i][j] = None;
            self.sessions[j][i] = None;
        }
        self.net.retain(|f| f.from != i && f.to != i);
        if Some(i) == self.exiled {
            return;
        }
        let start = self.rng.below(N as u64) as usize;
        let mut linked = 0;
        for j in (0..N).map(|d| (start + d) % N) {
            if linked < links && j != i && Some(j) != self.exiled {
                self.connect(i.min(j), i.max(j));
                linked += 1;
            }
        }
    }

    /// While a replica is away: the others settle and collect without it, one of them restarts
    /// empty and catches up for a few rounds (maybe not to the end), and the away replica comes back
    /// reaching a peer first, often that joiner.
    fn collection_episode(&mut self) {
        for i in 0..N {
            for j in i + 1..N {
                let away = self.exiled == Some(i) || self.exiled == Some(j);
                if !away && self.sessions[i][j].is_none() {
                    self.connect(i, j);
                }
            }
        }
        self.exchange(12, 600, true);
        let k = self.rng.below(N as u64) as usize;
        if Some(k) != self.exiled {
            self.restart_linked(k, N);
            let rounds = self.rng.below(4) as usize;
            self.exchange(rounds, 100, false);
        }
        self.recall_to_one();
    }

    /// Opens one missing link between replicas that are not cut off, if any.
    fn relink(&mut self) {
        let missing: Vec<(usize, usize)> = (0..N)
            .flat_map(|i| (i + 1..N).map(move |j| (i, j)))
            .filter(|&(i, j)| {
                self.sessions[i][j].is_none() && self.exiled != Some(i) && self.exiled != Some(j)
            })
            .collect();
        if !missing.is_empty() {
            let (i, j) = missing[self.rng.below(missing.len() as u64) as usize];
            self.connect(i, j);
        }
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=29 => self.write(),
            30..=59 => {
                let (i, j) = (
                    self.rng.below(N as u64) as usize,
                    self.rng.below(N as u64) as usize,
                );
                if i != j {
                    self.flush(i, j, true);
                }
            }
            60..=88 => self.deliver(true),
            89..=91 => {
                let i = self.rng.below(N as u64) as usize;
                self.plan(i);
            }
            92..=93 => {
                let i = self.rng.below(N as u64) as usize;
                self.collect(i);
            }
            94..=95 => {
                self.time.advance(self.rng.below(400));
                let i = self.rng.below(N as u64) as usize;
                for b in self.locals[i].bucket_list() {
                    b.sweep();
                }
            }
            96 => {
                // A link reset, or a missing link back.
                let (i, j) = (
                    self.rng.below(N as u64) as usize,
                    self.rng.below(N as u64) as usize,
                );
                let cut_off = self.exiled.is_some_and(|x| x == i || x == j);
                if self.rng.chance(50) {
                    self.relink();
                } else if i != j && !cut_off {
                    self.connect(i.min(j), i.max(j));
                }
            }
            97 => {
                // A new partition, or one replica crossing back (healing part by part).
                if self.side.iter().all(|&s| s == 0) && self.rng.chance(40) {
                    for i in 0..N {
                        self.side[i] = self.rng.below(2) as u8;
                    }
                } else {
                    let i = self.rng.below(N as u64) as usize;
                    self.side[i] = 0;
                }
            }
            98 => {
                // A restart: often of the last writer (its newest writes may be only there), linked
                // at first to one peer (its catch-up is partial when the next fault comes).
                let i = if self.rng.chance(50) {
                    self.last_writer
                } else {
                    self.rng.below(N as u64) as usize
                };
                let links = if self.rng.chance(50) { 1 } else { N };
                self.restart_linked(i, links);
            }
            _ => {
                if self.rng.chance(20) {
                    if self.exiled.is_some() && self.episodes && self.rng.chance(50) {
                        self.collection_episode();
                    } else if self.exiled.is_some() {
                        self.recall_to_one();
                    } else {
                        let x = self.rng.below(N as u64) as usize;
                        self.exile(x);
                    }
                }
            }
        }
    }

    /// Heals everything and runs the protocol without faults until nothing more moves.
    fn settle(&mut self) {
        self.side = [0; N];
        self.recall();
        for i in 0..N {
            for j in i + 1..N {
                if self.sessions[i][j].is_none() {
                    self.connect(i, j);
                }
            }
        }
        for _round in 0..40 {
            self.time.advance(600);
            for i in 0..N {
                for b in self.locals[i].bucket_list() {
                    b.sweep();
                }
                self.plan(i);
                self.collect(i);
            }
            for i in 0..N {
                for j in 0..N {
                    if i != j {
                        self.flush(i, j, false);
                    }
                }
            }
            while !self.net.is_empty() {
                self.deliver(false);
            }
        }
    }

    /// Subscribes a listener to each of replica i's buckets.
    fn listen_to(&self, i: usize) -> Vec<Listener> {
        BUCKETS
            .iter()
            .map(|name| Listener {
                changes: self.locals[i].bucket(name).subscribe(),
                heard: BTreeMap::new(),
            })
            .collect()
    }

    /// Each bucket's listener must have heard its way to exactly the live keys (no expiry of a key it
    /// did not hold as live), and `size` must count them.
    fn check_listeners(&mut self) -> Result<(), String> {
        for i in 0..N {
            for (name, listener) in BUCKETS.iter().zip(&mut self.listeners[i]) {
                let b = self.locals[i].bucket(name);
                let size = b.len();
                while let Ok(c) = listener.changes.try_recv() {
                    let key = c.key.to_string();
                    match c.value {
                        Some(v) => {
                            listener.heard.insert(key, v.to_vec());
                        }
                        None => {
                            if listener.heard.remove(&key).is_none() && c.expired {
                                return Err(format!("n{i} {name}: expiry of {key}, not live"));
                            }
                        }
                    }
                }
                let mut live = BTreeMap::new();
                b.scan("", &mut |k, v| {
                    live.insert(k.to_string(), v.to_vec());
                });
                if size != live.len() || listener.heard != live {
                    return Err(format!(
                        "n{i} {name}: size {size}, live {live:?}, the listener holds {:?}",
                        listener.heard
                    ));
                }
            }
        }
        Ok(())
    }

    fn dump(&self, i: usize) -> Vec<String> {
        let mut out = Vec::new();
        for name in BUCKETS {
            let b = self.locals[i].bucket(name);
            b.scan("", &mut |k, v| out.push(format!("{name}/{k}={v:?}")));
            for k in 0..KEYS {
                let key = format!("k{k}");
                for (o, w) in b.inspect(&key) {
                    out.push(format!(
                        "{name}/{key} {}{}:{}@{:x} {} exp {}",
                        if w.is_touch() { "touch " } else { "" },
                        o.id(),
                        w.seq,
                        w.hlc.0,
                        w.value().is_some(),
                        w.expires().encoded()
                    ));
                }
            }
            let mut ctx: Vec<String> = b
                .store()
                .context()
                .into_iter()
                .map(|(o, r)| format!("{name}@{}:{:?}", o.id(), r.ranges().collect::<Vec<_>>()))
                .collect();
            ctx.sort();
            out.extend(ctx);
        }
        out.sort();
        out
    }

    /// Adds to the registry the registers no logged write made (stand-in tombstones).
    fn log_stand_ins(&mut self) {
        for i in 0..N {
            for name in BUCKETS {
                let Some(b) = self.locals[i].existing_bucket(name) else {
                    continue;
                };
                for k in 0..KEYS {
                    for (o, w) in b.inspect(&format!("k{k}")) {
                        let live = w.value().is_some();
                        self.registry
                            .entry((name, o.id().clone(), w.seq))
                            .or_insert_with(|| Logged::of(o.id(), &w, live));
                    }
                }
            }
        }
    }

    /// With `SIM_WHY` set, every write of `key` ever made, one a line, with whether `ctx` covers it
    /// and whether a frame ever carried it to another replica: why a failing key's covered writes
    /// are what they are.
    fn history(&self, name: &str, key: &str, ctx: &BTreeMap<ReplicaId, SeqRanges>) -> String {
        if std::env::var("SIM_WHY").is_err() {
            return String::new();
        }
        self.registry
            .iter()
            .filter(|((b, _, _), w)| *b == name && &*w.key == key)
            .map(|((_, o, seq), w)| {
                format!(
                    "\n  {o}:{seq} @{:x} live {} touch {} covered {} left {}",
                    w.hlc,
                    w.live,
                    w.touch,
                    ctx.get(o).is_some_and(|r| r.contains(*seq)),
                    self.left.contains(&(Arc::from(name), o.clone(), *seq))
                )
            })
            .collect()
    }

    /// Invariant P at replica i: for every key, the registers stored are the last-writer-wins
    /// maximum of the covered writes (the value register among value writes, the touch register
    /// among the covered touches that beat it), or nothing when that maximum is dead (a tombstone, or
    /// a value expired with its touches) or beaten by a collected register the replica remembers.
    fn check_p(&self, i: usize) -> Result<(), String> {
        let local = &self.locals[i];
        for name in BUCKETS {
            let Some(b) = local.existing_bucket(name) else {
                continue;
            };
            let ctx: BTreeMap<ReplicaId, _> = b
                .store()
                .context()
                .into_iter()
                .map(|(o, r)| (o.id().clone(), r))
                .collect();
            let mut per_key: BTreeMap<Arc<str>, Vec<&Logged>> = BTreeMap::new();
            let me = local.me().id();
            for ((bucket, origin, seq), w) in &self.registry {
                let counts =
                    origin == me || self.left.contains(&(Arc::from(name), origin.clone(), *seq));
                if *bucket == name && counts && ctx.get(origin).is_some_and(|r| r.contains(*seq)) {
                    per_key.entry(w.key.clone()).or_default().push(w);
                }
            }
            // Collected registers remembered by key count as covered writes (their dots may be
            // lost with every replica that held them; a resync drops what they beat).
            let remembered: BTreeMap<u64, (u64, Option<ReplicaId>)> = b
                .store()
                .collected_records()
                .into_iter()
                .map(|(r, o)| (r.fingerprint, (r.hlc.0, o.map(|o| o.id().clone()))))
                .collect();
            for k in 0..KEYS {
                let key: Arc<str> = format!("k{k}").into();
                let collected_beats = |v: &Logged| {
                    remembered
                        .get(&key_fingerprint(&key))
                        .is_some_and(|(hlc, o)| match o {
                            Some(o) => (*hlc, o) > (v.hlc, &v.origin),
                            None => *hlc >= v.hlc,
                        })
                };
                let covered = per_key.get(&key).map_or(&[][..], |v| &v[..]);
                let value = covered
                    .iter()
                    .filter(|w| !w.touch)
                    .max_by(|a, b| a.order().cmp(&b.order()));
                let touch = covered
                    .iter()
                    .filter(|w| w.touch && value.is_none_or(|v| w.order() > v.order()))
                    .max_by(|a, b| a.order().cmp(&b.order()));
                let dot = |w: Option<&&Logged>| w.map(|w| (w.origin.clone(), w.seq));
                let stored = b.inspect(&key);
                let stored_value = stored
                    .iter()
                    .find(|(_, w)| !w.is_touch())
                    .map(|(o, w)| (o.id().clone(), w.seq));
                let stored_touch = stored
                    .iter()
                    .find(|(_, w)| w.is_touch())
                    .map(|(o, w)| (o.id().clone(), w.seq));
                if stored.is_empty() {
                    let expiry = touch.map_or(value.map_or(0, |v| v.expires_ms), |t| t.expires_ms);
                    let dead = value.is_none_or(|v| !v.live || collected_beats(v))
                        || (expiry != 0 && expiry <= local.clock().wall_ms() + MAX_SKEW_MS);
                    if !dead {
                        return Err(format!(
                            "n{i} {name}/{key}: nothing stored, but its covered writes make it live: {value:?} {touch:?}{}",
                            self.history(name, &key, &ctx)
                        ));
                    }
                } else if stored_value != dot(value) || stored_touch != dot(touch) {
                    return Err(format!(
                        "n{i} {name}/{key}: stores value {stored_value:?} touch {stored_touch:?}, its covered writes say {value:?} {touch:?}, collected {:?}",
                        remembered.get(&key_fingerprint(&key))
                    ));
                }
            }
        }
        Ok(())
    }
}

trait NowForTest {
    fn now_ms_for_test(&self) -> u64;
}

impl NowForTest for ManualClock {
    fn now_ms_for_test(&self) -> u64 {
        use peer_buckets_engine::PhysicalClock;
        self.now_ms()
    }
}

/// The register of one key at replica i, for tracing a failing seed (`SIM_TRACE=bucket/key`).
fn register(sim: &Sim, i: usize, bucket: &str, key: &str) -> String {
    let mut out = String::from("-");
    let Some(b) = sim.locals[i].existing_bucket(bucket) else {
        return out;
    };
    for (o, w) in b.inspect(key) {
        if !w.is_touch() {
            out = format!(
                "{}:{}@{:x}={}",
                o.id(),
                w.seq,
                w.hlc.0,
                if w.value().is_some() { "v" } else { "DEL" }
            );
        }
    }
    // SIM_DOT=node#incarnation:seq shows whether this replica's context holds that dot.
    if let Ok(dot) = std::env::var("SIM_DOT") {
        let (rid, seq) = dot.split_once(':').expect("node#inc:seq");
        let seq = Seq::from(seq.parse::<u64>().expect("seq"));
        let covered = b
            .store()
            .context()
            .iter()
            .any(|(o, r)| o.id().to_string() == rid && r.contains(seq));
        out.push_str(if covered { " [dot seen]" } else { "" });
    }
    out
}

/// How often (in steps) `run` checks invariant P on every replica; 0: only at the end.
fn p_every() -> usize {
    std::env::var("SIM_P_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One simulated run; returns a description of the first failure.
fn try_run(seed: u64, steps: usize, loss: u64) -> Result<(), String> {
    try_run_with(seed, steps, loss, false)
}

/// `try_run`, with collection episodes when `episodes` (or `SIM_EPISODES=1`).
fn try_run_with(seed: u64, steps: usize, loss: u64, episodes: bool) -> Result<(), String> {
    let mut sim = Sim::skewed(seed);
    sim.episodes |= episodes;
    sim.loss = loss;
    sim.listeners = (0..N).map(|i| sim.listen_to(i)).collect();
    let trace = std::env::var("SIM_TRACE").ok();
    let every = p_every();
    let mut last = vec![String::new(); N];
    for step in 0..steps {
        let collected_before = sim.collected;
        sim.step = step;
        sim.step();
        if let Some((bucket, key)) = trace.as_deref().and_then(|t| t.split_once('/')) {
            for (i, seen) in last.iter_mut().enumerate() {
                let now = register(&sim, i, bucket, key);
                if now != *seen {
                    println!(
                        "step {step} n{i}: {seen} -> {now} (collected {}, exiled {:?})",
                        sim.collected - collected_before,
                        sim.exiled
                    );
                    *seen = now;
                }
            }
        }
        if every > 0 && step % every == 0 {
            sim.log_stand_ins();
            for i in 0..N {
                sim.check_p(i)
                    .map_err(|e| format!("seed {seed} step {step}: {e}"))?;
            }
        }
    }
    sim.settle();
    if let Some((bucket, key)) = trace.as_deref().and_then(|t| t.split_once('/')) {
        for i in 0..N {
            println!("settled n{i}: {}", register(&sim, i, bucket, key));
        }
    }
    TOTAL_COLLECTED.fetch_add(sim.collected, std::sync::atomic::Ordering::Relaxed);
    sim.check_listeners()
        .map_err(|e| format!("seed {seed}, settled: {e}"))?;
    sim.log_stand_ins();
    for i in 0..N {
        sim.check_p(i)
            .map_err(|e| format!("seed {seed}, settled: {e}"))?;
        // Settled, none is stale (a horizon may name dots no replica covers any more: every
        // replica that covered them restarted empty; none is sent as far as that goes).
        for b in sim.locals[i].bucket_list() {
            if sim.locals[i].is_stale(b.name()) {
                return Err(format!("seed {seed}, settled: n{i} {}: stale", b.name()));
            }
        }
    }
    sim.locals.iter().for_each(note_divergences);
    let repaired = sim.repairs_changed + sim.locals.iter().map(repairs_changed).sum::<u64>();
    if repaired > 0 {
        return Err(format!(
            "seed {seed}: {repaired} repairs changed what an honest replica stored"
        ));
    }
    let reference = sim.dump(0);
    if sim.registry.len() <= 20 {
        return Err(format!(
            "seed {seed}: the run wrote too little to prove anything"
        ));
    }
    for i in 1..N {
        let other = sim.dump(i);
        let only_n0: Vec<_> = reference.iter().filter(|l| !other.contains(l)).collect();
        let only_other: Vec<_> = other.iter().filter(|l| !reference.contains(l)).collect();
        if !(only_n0.is_empty() && only_other.is_empty()) {
            return Err(format!(
                "replica n{i} differs from n0 (seed {seed}, {} restarts): only at n0 {only_n0:?}, only at n{i} {only_other:?}",
                sim.restarts
            ));
        }
    }
    Ok(())
}

fn repairs_changed(l: &Local) -> u64 {
    l.counters()
        .repairs_changed
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Divergences found (and repaired, changing nothing) over the runs of this process.
static TOTAL_DIVERGENCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn note_divergences(l: &Local) {
    let found = l
        .counters()
        .divergences
        .load(std::sync::atomic::Ordering::Relaxed);
    TOTAL_DIVERGENCES.fetch_add(found, std::sync::atomic::Ordering::Relaxed);
}

fn run(seed: u64, steps: usize, loss: u64) {
    if let Err(e) = try_run(seed, steps, loss) {
        panic!("{e}");
    }
}

static TOTAL_COLLECTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[test]
fn replicas_converge_over_a_reliable_network() {
    for seed in 1..=5 {
        run(seed, 3_000, 0);
    }
}

#[test]
fn replicas_converge_despite_loss_duplication_reordering_partitions_and_restarts() {
    for seed in 100..140 {
        run(seed, 5_000, 15);
    }
    assert!(
        TOTAL_COLLECTED.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "no tombstone was ever collected: the runs did not exercise collection"
    );
}

/// Issue 12, behaviour 5: while a replica is away the others collect, one of them restarts empty,
/// and the away one comes back reaching a peer first, often that joiner; meanwhile replicas keep
/// restarting empty, so at times no replica covers a horizon any more. Every run must converge,
/// with invariant P, and no replica left stale.
#[test]
fn replicas_converge_through_collection_episodes() {
    let before = RETURNS_TO_A_JOINER.load(std::sync::atomic::Ordering::Relaxed);
    for seed in 3000..3024 {
        if let Err(e) = try_run_with(seed, 5_000, 15, true) {
            panic!("{e}");
        }
    }
    assert!(
        RETURNS_TO_A_JOINER.load(std::sync::atomic::Ordering::Relaxed) > before,
        "no return reached a post-collection joiner first: the runs did not exercise it"
    );
}

/// Found by a sweep of collection episodes (seeds 4000-4300): in seed 4060, n2 back from away drops
/// live values of n1 (k29, k32) at step 3331 while covering no newer write of either key (with
/// `SIM_P_EVERY=1` invariant P fails there at once), which only a resync does; after the heal n0
/// covers n1's write of k32 (incarnation 16, seq 9) and no replica shows anything for k32. Each
/// replica must show the last-writer-wins maximum of the writes it covers.
#[test]
fn resyncs_of_collection_episodes_keep_invariant_p_seed_4060() {
    if let Err(e) = try_run_with(4060, 5_000, 15, true) {
        panic!("{e}");
    }
}

/// Seeds differ in every bit they touch: neighbouring seeds are distinct runs.
#[test]
fn neighbouring_seeds_are_distinct_runs() {
    let mut a = Rng::new(2);
    let mut b = Rng::new(3);
    let (x, y): (Vec<u64>, Vec<u64>) = (0..4).map(|_| (a.next(), b.next())).unzip();
    assert_ne!(x, y);
}

#[test]
#[ignore = "debugging aid: SIM_SEED=n SIM_TRACE=bucket/key cargo test -- --ignored --nocapture"]
fn replay_one_seed() {
    let seed = std::env::var("SIM_SEED")
        .expect("SIM_SEED")
        .parse()
        .expect("a number");
    run(seed, 5_000, 15);
}

/// A seed sweep: `SIM_FROM=a SIM_TO=b [SIM_STEPS=5000] [SIM_LOSS=15] [SIM_P_EVERY=n]`; prints each
/// failure and a one-line summary last, and fails if any seed did.
#[test]
#[ignore = "seed sweep: SIM_FROM=a SIM_TO=b cargo test --test simulation sweep -- --ignored --nocapture"]
fn sweep() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (from, to) = (env("SIM_FROM", 1000), env("SIM_TO", 1100));
    let (steps, loss) = (env("SIM_STEPS", 5_000) as usize, env("SIM_LOSS", 15));
    let mut failed = Vec::new();
    for seed in from..to {
        let outcome = std::panic::catch_unwind(|| try_run(seed, steps, loss));
        let failure = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(_) => format!("seed {seed}: panicked"),
        };
        println!("FAIL {failure}");
        failed.push(seed);
    }
    println!(
        "sweep: seeds {from}..{to}, {steps} steps, loss {loss}%, P every {}, episodes {}: {} tombstones collected, {} returns reaching a post-collection joiner first, {} repairs asked (one that changes anything fails its seed); {} failures {failed:?}",
        p_every(),
        std::env::var("SIM_EPISODES").unwrap_or_default(),
        TOTAL_COLLECTED.load(std::sync::atomic::Ordering::Relaxed),
        RETURNS_TO_A_JOINER.load(std::sync::atomic::Ordering::Relaxed),
        TOTAL_DIVERGENCES.load(std::sync::atomic::Ordering::Relaxed),
        failed.len()
    );
    assert!(failed.is_empty());
}

/// Frames of one link are dropped on purpose (the middle batches of a stream); the receiver notices
/// the gap in the origin's digest and pulls exactly the missing writes, from the origin or a third
/// replica, without waiting for new writes.
#[test]
fn a_gap_from_dropped_frames_is_detected_and_filled() {
    let mut sim = Sim::new(7);
    // n0 writes 3000 keys; its frames to n1 lose every Ops batch but the first and the last.
    let b0 = sim.locals[0].bucket("sessions");
    for k in 0..3000 {
        b0.write(
            format!("k{k}"),
            Some(value::encode_json("1")),
            Lifetime::Forever,
        );
    }
    let session = sim.sessions[0][1].as_mut().expect("linked");
    let frames = due(session, &sim.locals[0], false);
    assert!(
        frames.len() >= 3,
        "expected several batches, got {}",
        frames.len()
    );
    let last = frames.len() - 1;
    for (i, msg) in frames.into_iter().enumerate() {
        if i == 0 || i == last {
            let s = sim.sessions[1][0].as_mut().expect("linked");
            s.handle(&sim.locals[1], msg).expect("valid");
        }
    }
    let b1 = sim.locals[1].bucket("sessions");
    let received = b1.len();
    assert!(received < 3000, "the drop must leave a gap");
    let ctx = b1
        .store()
        .context_of(&sim.locals[1].replicas().intern(sim.locals[0].me().id()));
    assert!(
        ctx.ranges().len() > 1,
        "the receiver sees a gap: {:?}",
        ctx.ranges().collect::<Vec<_>>()
    );
    // Digests and two planning passes later, the gap is pulled and filled.
    sim.settle();
    assert_eq!(b1.len(), 3000);
    assert!(
        sim.locals[1]
            .counters()
            .pulls_sent
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}

impl Sim {
    /// Runs `rounds` rounds of the protocol over the links that are up (no recall, no faults), the
    /// clock moving `advance_ms` a round, with collection rounds when `collect`.
    fn exchange(&mut self, rounds: usize, advance_ms: u64, collect: bool) {
        for _ in 0..rounds {
            self.time.advance(advance_ms);
            for i in 0..N {
                for b in self.locals[i].bucket_list() {
                    b.sweep();
                }
                self.plan(i);
                if collect {
                    self.collect(i);
                }
            }
            for i in 0..N {
                for j in 0..N {
                    if i != j {
                        self.flush(i, j, false);
                    }
                }
            }
            while !self.net.is_empty() {
                self.deliver(false);
            }
        }
    }

    /// The registers replica i stores for `key` (value and touch), as text.
    fn registers(&self, i: usize, key: &str) -> Vec<String> {
        let mut out: Vec<String> = self.locals[i]
            .bucket("sessions")
            .inspect(key)
            .into_iter()
            .map(|(o, w)| register_text(&o, &w))
            .collect();
        out.sort();
        out
    }
}

/// Sets the stage of a full resync: everyone holds k = "v1" (n0's); n1 is cut off and forgotten; the
/// others overwrite k with "v2" (n2's); then `away` runs at n1 (its writes are newer than "v2"), and the
/// others collect a tombstone without n1. n1 comes back linked to all but n2.
/// Then n1 comes back: the others' hellos show it missed a collection, so it resyncs in full.
fn resync_after(seed: u64, away: impl FnOnce(&Sim)) -> Sim {
    let mut sim = Sim::new(seed);
    let json = |s: &str| Some(value::encode_json(&format!("\"{s}\"")));
    sim.locals[0]
        .bucket("sessions")
        .write("k", json("v1"), Lifetime::Forever);
    sim.exchange(3, 100, false);
    sim.exile(1);
    sim.time.advance(10);
    sim.locals[2]
        .bucket("sessions")
        .write("k", json("v2"), Lifetime::Forever);
    sim.time.advance(10);
    away(&sim);
    sim.locals[3]
        .bucket("sessions")
        .write("gone", None, Lifetime::Forever);
    sim.exchange(12, 600, true);
    assert!(sim.collected > 0, "the others collected without n1");
    sim.recall();
    // n2, the writer of "v2", is not linked to n1: n1 pulls "v2" from the others, which answer its
    // resync's questions first.
    sim.sessions[1][2] = None;
    sim.sessions[2][1] = None;
    sim.exchange(20, 100, false);
    let resyncs = sim.locals[1]
        .counters()
        .full_resyncs
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(resyncs > 0, "n1 resynced in full");
    sim
}

/// Found by the chaos harness (seed 6): in a full resync, a replica drops the registers the others
/// know to be superseded; dropping a superseded value register took the key's newer touch register
/// with it, although nothing had superseded the touch. The replicas that had received the touch kept
/// it, the resyncing one did not (and its context claimed the touch's dot, so it never came back): the
/// key expired on some replicas and stayed live on others.
#[test]
fn a_full_resync_that_drops_a_superseded_value_keeps_the_newer_touch() {
    let sim = resync_after(21, |sim| {
        // While away, n1 touches k, after (and unaware of) the others' "v2".
        let touched = sim.locals[1].bucket("sessions").touch("k".into(), 600_000);
        assert!(touched.is_some(), "k is live at n1");
    });
    let reference = sim.registers(0, "k");
    assert!(
        reference.iter().any(|r| r.starts_with("touch n1#")),
        "n1's touch reached the others: {reference:?}"
    );
    for i in 1..N {
        assert_eq!(sim.registers(i, "k"), reference, "n{i} differs from n0");
    }
}

/// Known bug, found by the chaos harness (seed 6), not fixed here: a replica back from past a
/// collection rewrites its own old writes the others have not seen with a fresh timestamp
/// (`Local::reissue_unseen`), so that they win or lose alike on replicas that did and did not collect
/// a tombstone. But a fresh timestamp also beats every write made elsewhere meanwhile: here n1's delete,
/// made before n2's "v2", wins over it everywhere once n1 is back, and an acknowledged write is lost
/// to an older one. Last-writer-wins by the writes' own (hlc, origin) says "v2" survives.
#[test]
fn a_full_resync_does_not_let_an_old_write_beat_a_newer_one() {
    let mut sim = Sim::new(22);
    let json = |s: &str| Some(value::encode_json(&format!("\"{s}\"")));
    sim.locals[0]
        .bucket("sessions")
        .write("k", json("v1"), Lifetime::Forever);
    sim.exchange(3, 100, false);
    sim.exile(1);
    sim.time.advance(10);
    // n1, cut off, deletes k; later the others overwrite it (and collect a tombstone without n1).
    sim.locals[1]
        .bucket("sessions")
        .write("k", None, Lifetime::Forever);
    sim.time.advance(10);
    sim.locals[2]
        .bucket("sessions")
        .write("k", json("v2"), Lifetime::Forever);
    sim.locals[3]
        .bucket("sessions")
        .write("gone", None, Lifetime::Forever);
    sim.exchange(12, 600, true);
    assert!(sim.collected > 0, "the others collected without n1");
    sim.settle();
    for i in 0..N {
        let regs = sim.registers(i, "k");
        assert!(
            regs.iter().any(|r| r.contains("v2")),
            "n{i} lost the newer write \"v2\" to n1's older delete: {regs:?}"
        );
    }
}

/// Found by the chaos harness (seed 6): expired values are collected like tombstones, but the minimum
/// age that makes dropping a tombstone safe (a write older than it loses anyway) does not protect an
/// expired value: a touch made while the value was live is older than the expiry and still wins. Here
/// n1 touches k just before its expiry and its frames are held up (a slow link); n0's collection
/// rounds, over reports that did not show the touch yet, dropped the expired value, and once the
/// touch arrived the replicas that had kept the value served it for ten more minutes, n0 never again.
/// Now only what died the minimum age before every member's latest report is collected.
#[test]
fn an_expired_value_is_not_collected_while_a_touch_made_before_the_expiry_is_in_flight() {
    let mut sim = Sim::new(23);
    sim.locals[0].bucket("sessions").write(
        "k",
        Some(value::encode_json("\"v\"")),
        Lifetime::Ttl(2_000),
    );
    sim.exchange(10, 100, false);
    // Everyone reports holding it (digests).
    for i in 0..N {
        for j in (0..N).filter(|&j| j != i) {
            let session = sim.sessions[i][j].as_mut().expect("linked");
            for msg in due(session, &sim.locals[i], true) {
                let s = sim.sessions[j][i].as_mut().expect("linked");
                s.handle(&sim.locals[j], msg).expect("valid");
            }
        }
    }
    sim.time.advance(500);
    let touched = sim.locals[1].bucket("sessions").touch("k".into(), 600_000);
    assert!(touched.is_some(), "k is live at n1");
    // Long after the original expiry, n0 runs collection rounds; nothing leaves n1 meanwhile.
    for _ in 0..12 {
        sim.time.advance(600);
        for i in 0..N {
            for b in sim.locals[i].bucket_list() {
                b.sweep();
            }
        }
        sim.collect(0);
        for i in (0..N).filter(|&i| i != 1) {
            for j in (0..N).filter(|&j| j != i) {
                sim.flush(i, j, false);
            }
        }
        while !sim.net.is_empty() {
            sim.deliver(false);
        }
    }
    sim.settle();
    let reference = sim.registers(2, "k");
    for i in 0..N {
        assert_eq!(
            sim.registers(i, "k"),
            reference,
            "n{i} and n2 disagree about k"
        );
    }
}

/// Known bug, not fixed here (the same family as the one above, seen in the chaos harness's `forget`
/// regime): a replica back from past a collection rewrites its own old unseen writes, but it also
/// carries writes of other replicas, such as a dead incarnation's, that only it holds. Those travel
/// as they are, and where a newer tombstone of the key was collected meanwhile nothing stops them: the
/// deleted key comes back with an older value.
#[test]
fn a_write_carried_back_from_past_a_collection_does_not_revive_a_deleted_key() {
    let mut sim = Sim::new(24);
    let json = |s: &str| Some(value::encode_json(&format!("\"{s}\"")));
    sim.locals[0]
        .bucket("sessions")
        .write("k", json("v1"), Lifetime::Forever);
    sim.exchange(3, 100, false);
    // n4 overwrites k and only n1 hears of it; then n1 is cut off (and forgotten), n4 restarts empty.
    sim.time.advance(10);
    sim.locals[4]
        .bucket("sessions")
        .write("k", json("old"), Lifetime::Forever);
    sim.flush(4, 1, false);
    while !sim.net.is_empty() {
        sim.deliver(false);
    }
    sim.exile(1);
    sim.restart(4);
    // Later, k is deleted, and the tombstone collected without n1.
    sim.time.advance(10);
    sim.locals[0]
        .bucket("sessions")
        .write("k", None, Lifetime::Forever);
    sim.exchange(12, 600, true);
    assert!(sim.collected > 0, "the tombstone was collected without n1");
    sim.settle();
    for i in 0..N {
        assert!(
            !sim.locals[i].bucket("sessions").contains("k"),
            "n{i} serves k again: {:?}",
            sim.registers(i, "k")
        );
    }
}

/// Found by the chaos harness (seed 503, three nodes): a pull for writes the sender believed the
/// other end already held (the pull crossed a push, or asked after a resync) was answered again on
/// every pass of the link's writer, forever: what it had sent was measured by how much the other end's
/// holding grew, which is nothing when it already counted as held. Each answer drew an ack, each ack
/// woke the writer: a livelock at network speed (25 MB/s on loopback, replicas never settled).
#[test]
fn a_pull_for_writes_the_sender_thinks_held_is_answered_once() {
    let mut sim = Sim::new(25);
    let b0 = sim.locals[0].bucket("sessions");
    for k in 0..5 {
        b0.write(
            format!("k{k}"),
            Some(value::encode_json("1")),
            Lifetime::Forever,
        );
    }
    sim.exchange(3, 100, false);
    // n1 asks n0 for n0's writes 1..=5, which n0 knows n1 holds.
    let origin = sim.locals[0].me().id().clone();
    let pull = Message::Pull {
        bucket: "sessions".into(),
        origin,
        ranges: peer_buckets_engine::SeqRanges::up_to(Seq::from(5)),
    };
    let session = sim.sessions[0][1].as_mut().expect("linked");
    session.handle(&sim.locals[0], pull).expect("valid");
    let ops_in = |buf: &[u8]| {
        decode_all(buf)
            .iter()
            .filter(|m| matches!(m, Message::Ops(_)))
            .count()
    };
    let mut buf = Vec::new();
    while session.fill(&sim.locals[0], &mut buf, false).expect("fill") {}
    assert_eq!(ops_in(&buf), 1, "the pull is answered");
    for pass in 0..3 {
        let mut again = Vec::new();
        while session
            .fill(&sim.locals[0], &mut again, false)
            .expect("fill")
        {}
        assert_eq!(ops_in(&again), 0, "answered again on pass {pass}");
    }
}

impl Sim {
    /// Replica i sends what its session about j has due, and j handles it all at once.
    fn pass(&mut self, i: usize, j: usize) {
        let session = self.sessions[i][j].as_mut().expect("linked");
        for msg in due(session, &self.locals[i], false) {
            let s = self.sessions[j][i].as_mut().expect("linked");
            s.handle(&self.locals[j], msg).expect("valid");
        }
    }

    /// The value replica i shows for `key` of "sessions", as the text `put` wrote.
    fn shows(&self, i: usize, key: &str) -> Option<String> {
        let mut out = None;
        self.locals[i].bucket("sessions").read(key, &mut |v| {
            let text = (1..=9).map(|n| format!("v{n}"));
            out = text
                .into_iter()
                .find(|t| *value::encode_json(&format!("\"{t}\"")) == *v)
        });
        out
    }
}

/// Issue 12, behaviour 3: n1 receives n0's write to k (superseded) together with n2's write that
/// superseded it, and later answers n3's pull of n0's writes. Its answer claims n0's dot, so it must
/// carry n2's write: once n0, n1 and n2 (every replica that held n2's write) restart empty, n3 and n4
/// (which holds n0's old write) still converge, on n2's value.
#[test]
fn coverage_relayed_in_a_pull_answer_travels_with_its_superseder() {
    let mut sim = Sim::new(31);
    sim.put(0, "sessions", "k", Some("v1"), Lifetime::Forever);
    sim.pass(0, 4);
    sim.time.advance(10);
    sim.put(2, "sessions", "k", Some("v2"), Lifetime::Forever);
    sim.pass(2, 0);
    sim.pass(0, 1);
    assert_eq!(sim.shows(1, "k").as_deref(), Some("v2"));
    // n3 pulls n0's writes from n1.
    let pull = Message::Pull {
        bucket: "sessions".into(),
        origin: sim.locals[0].me().id().clone(),
        ranges: peer_buckets_engine::SeqRanges::up_to(Seq::from(1)),
    };
    let s = sim.sessions[1][3].as_mut().expect("linked");
    s.handle(&sim.locals[1], pull.clone()).expect("valid");
    // n3 asked it (a pull reply nobody asked for is refused).
    sim.sessions[3][1].as_mut().expect("linked").queue(pull);
    sim.pass(1, 3);
    for i in [0, 1, 2] {
        sim.restart(i);
    }
    sim.settle();
    for i in 0..N {
        assert_eq!(
            sim.shows(i, "k").as_deref(),
            Some("v2"),
            "n{i}: {:?}",
            sim.registers(i, "k")
        );
    }
}

/// Issue 12, behaviour 5: n1 holds k = "v1", is cut off and forgotten; the others delete k and collect
/// the tombstone; n3 then restarts empty and catches up (it covers the deleted write's dot without
/// any register). n1 comes back reaching n3 first: it must find there that it missed a collection
/// (n3 inherited the collection horizon when it joined), so "v1" never comes back, and every replica
/// ends the same.
#[test]
fn a_missed_collection_is_detected_at_a_peer_that_joined_after_it() {
    let mut sim = Sim::new(32);
    sim.put(0, "sessions", "k", Some("v1"), Lifetime::Forever);
    sim.exchange(3, 100, false);
    sim.exile(1);
    sim.time.advance(10);
    sim.put(2, "sessions", "k", None, Lifetime::Forever);
    sim.exchange(12, 600, true);
    assert!(sim.collected > 0, "the others collected without n1");
    sim.restart(3);
    sim.exchange(6, 100, false);
    assert!(sim.locals[3].bucket("sessions").inspect("k").is_empty());
    // n1 returns, linked to n3 alone.
    sim.exiled = None;
    sim.connect(1, 3);
    let detected = sim.locals[1]
        .counters()
        .full_resyncs
        .load(std::sync::atomic::Ordering::Relaxed);
    sim.exchange(6, 100, false);
    sim.settle();
    let reference = sim.dump(0);
    for i in 0..N {
        assert_eq!(sim.shows(i, "k"), None, "n{i}: {:?}", sim.registers(i, "k"));
        assert_eq!(sim.dump(i), reference, "n{i} differs from n0");
    }
    assert!(detected > 0, "n1 found at n3 that it missed a collection");
}

/// A replica back from past a collection drops the registers the others know were superseded (its
/// full resync). When the superseding write was a delete whose tombstone was collected meanwhile,
/// nothing else ever reaches it for that key: unless the drop itself is heard, its listener keeps the
/// old value forever, while `get` says the key is gone.
#[test]
fn a_register_dropped_by_a_full_resync_is_heard_as_deleted() {
    let mut sim = Sim::new(26);
    let json = |s: &str| Some(value::encode_json(&format!("\"{s}\"")));
    sim.listeners = (0..N).map(|i| sim.listen_to(i)).collect();
    sim.locals[0]
        .bucket("sessions")
        .write("k", json("v1"), Lifetime::Forever);
    sim.exchange(3, 100, false);
    sim.exile(1);
    sim.time.advance(10);
    sim.locals[2]
        .bucket("sessions")
        .write("k", None, Lifetime::Forever);
    sim.exchange(12, 600, true);
    assert!(
        sim.collected > 0,
        "the others collected k's tombstone without n1"
    );
    sim.settle();
    assert!(
        sim.locals[1]
            .counters()
            .full_resyncs
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "n1 resynced in full"
    );
    assert!(!sim.locals[1].bucket("sessions").contains("k"));
    sim.check_listeners()
        .expect("listeners agree with the live keys");
}

/// Issue 12, behaviour 5 (liveness): n1 holds k = "v1" and x = "kept" (a write of n4's first
/// incarnation that only n1 still holds at the end), is cut off and forgotten; the others delete k
/// and collect the tombstone. Then every replica that took part in the collection restarts empty,
/// each inheriting the collection horizon from a peer that had itself only inherited it: no replica
/// covers the horizon any more. n1 comes back: it must not stay stale for good. After the heal every
/// replica is the same and none is stale, the collected delete stays collected (k is nowhere) and
/// n1's copy of x is not lost.
#[test]
fn a_returning_replica_converges_after_every_collector_restarted_empty() {
    let mut sim = Sim::new(33);
    sim.put(0, "sessions", "k", Some("v1"), Lifetime::Forever);
    sim.put(4, "sessions", "x", Some("v2"), Lifetime::Forever);
    sim.exchange(3, 100, false);
    sim.exile(1);
    sim.time.advance(10);
    sim.put(2, "sessions", "k", None, Lifetime::Forever);
    sim.exchange(12, 600, true);
    assert!(sim.collected > 0, "the others collected without n1");
    // Every collector restarts empty, one after the other, before anyone catches up.
    for i in [3, 0, 2, 4] {
        sim.restart(i);
    }
    assert!(
        (0..N).filter(|&i| i != 1).all(|i| sim.locals[i]
            .bucket("sessions")
            .store()
            .context()
            .is_empty()),
        "nobody but n1 holds anything"
    );
    sim.exiled = None;
    sim.settle();
    for i in 0..N {
        assert!(
            !sim.locals[i].is_stale("sessions"),
            "n{i} is still stale after the heal"
        );
    }
    let reference = sim.dump(0);
    for i in 0..N {
        assert_eq!(sim.dump(i), reference, "n{i} differs from n0");
        assert_eq!(sim.shows(i, "k"), None, "n{i}: {:?}", sim.registers(i, "k"));
        assert_eq!(
            sim.shows(i, "x").as_deref(),
            Some("v2"),
            "n{i}: {:?}",
            sim.registers(i, "x")
        );
    }
}

/// Issue 12, behaviour 3, after marker compaction: n1 holds k1 = "v1" (n0's) and is cut off and
/// forgotten; the others overwrite k1 with "v2" (n2's) and, once every member holds it, compact
/// n0's superseded marker. n3 then restarts empty and takes n0's push, which covers n0's dot
/// without its register or a marker; before n3 pulls "v2", every replica that held it restarts
/// empty. Had n3 taken the coverage, it would claim n0's write without showing it while n1 comes
/// back holding it: replicas with equal contexts and different values. n3 must take that coverage
/// only once it covers what its sender covered (so holds what superseded the write), and every
/// replica ends the same, each showing the last-writer-wins maximum of the writes it covers.
#[test]
fn coverage_without_a_marker_is_taken_only_once_the_sender_is_caught_up_with() {
    let mut sim = Sim::new(34);
    sim.put(0, "sessions", "k1", Some("v1"), Lifetime::Forever);
    sim.exchange(3, 100, false);
    sim.exile(1);
    sim.time.advance(10);
    sim.put(2, "sessions", "k1", Some("v2"), Lifetime::Forever);
    let before: usize = (0..N)
        .map(|i| sim.locals[i].bucket("sessions").store().marker_count())
        .sum();
    sim.exchange(12, 600, true);
    let after: usize = (0..N)
        .map(|i| sim.locals[i].bucket("sessions").store().marker_count())
        .sum();
    assert!(
        before > 0 && after == 0,
        "markers compacted: {before} -> {after}"
    );
    // n3 restarts empty and hears from n0 alone: n0's own writes, covering its dot of k bare.
    sim.restart_linked(3, 0);
    sim.connect(0, 3);
    sim.pass(0, 3);
    // Every replica that held "v2" restarts empty before n3 pulls it.
    for i in [0, 2, 4] {
        sim.restart(i);
    }
    sim.exiled = None;
    sim.settle();
    sim.log_stand_ins();
    for i in 0..N {
        sim.check_p(i).unwrap_or_else(|e| panic!("{e}"));
    }
    let reference = sim.dump(0);
    for i in 0..N {
        assert_eq!(sim.dump(i), reference, "n{i} differs from n0");
        assert_eq!(
            sim.shows(i, "k1").as_deref(),
            Some("v1"),
            "n{i}: {:?}",
            sim.registers(i, "k1")
        );
    }
}

/// The resync path, after marker compaction: n1 and n4 hold k1 = "v1" (n0's) and are cut off and
/// forgotten; the others overwrite k1 with "v2" (n2's), delete k2, collect the tombstone and, once
/// every member holds "v2", compact n0's superseded marker. n1 comes back reaching n3 first: it
/// missed a collection, so it resyncs, and n3 covers n0's dot without storing it and without a
/// marker to name what superseded it. Before n1 pulls "v2", every replica that held it restarts
/// empty. Had n1 dropped "v1" without holding what superseded it, it would cover n0's write without
/// showing it while n4, with the same context, shows it: replicas that differ for good. Every
/// replica ends the same, each showing the last-writer-wins maximum of the writes it covers.
#[test]
fn a_resync_never_drops_a_register_whose_superseder_it_cannot_hold() {
    let mut sim = Sim::new(35);
    let away = [1, 4];
    sim.put(0, "sessions", "k1", Some("v1"), Lifetime::Forever);
    sim.exchange(3, 100, false);
    sim.split(&away);
    sim.time.advance(10);
    sim.put(2, "sessions", "k1", Some("v2"), Lifetime::Forever);
    sim.put(3, "sessions", "k2", None, Lifetime::Forever);
    sim.exchange_split(&away, 12, 600);
    assert!(sim.collected > 0, "the others collected without n1 and n4");
    assert_eq!(
        sim.locals[3].bucket("sessions").store().marker_count(),
        0,
        "n3 compacted n0's marker"
    );
    // n1 reaches n3 first, and resyncs against it alone.
    sim.connect(1, 3);
    assert!(sim.locals[1].is_stale("sessions"), "n1 missed a collection");
    // Its questions by dot, then by key for what n3 reported superseded without a superseder.
    for _ in 0..2 {
        sim.pass(1, 3);
        sim.pass(3, 1);
    }
    assert!(!sim.locals[1].is_stale("sessions"), "n1 resynced");
    assert_eq!(
        sim.shows(1, "k1").as_deref(),
        Some("v2"),
        "n1 dropped \"v1\" only with what superseded it"
    );
    // Every replica that held "v2" restarts empty before n1 pulls it.
    for i in [0, 2, 3] {
        sim.restart_linked(i, 0);
    }
    sim.settle();
    sim.log_stand_ins();
    for i in 0..N {
        sim.check_p(i).unwrap_or_else(|e| panic!("{e}"));
    }
    let reference = sim.dump(0);
    for i in 0..N {
        assert_eq!(sim.dump(i), reference, "n{i} differs from n0");
    }
}

/// The resync path when the peer holds nothing of the key any more: n1 holds k1 = "v1" (n0's) and
/// is cut off and forgotten; the others delete k1, collect the tombstone and, past
/// `rememberCollected`, forget its record too. n1 comes back reaching n3 first, which covers n0's
/// dot and can name nothing that superseded it: asked by key, it stores nothing there. n1 must
/// neither show "v1" again nor keep it as the only replica holding it: every replica ends the same,
/// none showing k1.
#[test]
fn a_resync_drops_a_register_whose_key_its_peer_collected_and_forgot() {
    let mut sim = Sim::new(36);
    let away = [1];
    sim.put(0, "sessions", "k1", Some("v1"), Lifetime::Forever);
    sim.exchange(3, 100, false);
    sim.split(&away);
    sim.time.advance(10);
    sim.put(2, "sessions", "k1", None, Lifetime::Forever);
    sim.exchange_split(&away, 12, 600);
    assert!(sim.collected > 0, "the others collected without n1");
    sim.exchange_split(&away, 3, 1_300_000);
    assert_eq!(
        sim.locals[3]
            .bucket("sessions")
            .store()
            .collected_remembered(),
        0,
        "n3 forgot k1's collected register"
    );
    sim.connect(1, 3);
    assert!(sim.locals[1].is_stale("sessions"), "n1 missed a collection");
    for _ in 0..2 {
        sim.pass(1, 3);
        sim.pass(3, 1);
    }
    assert!(!sim.locals[1].is_stale("sessions"), "n1 resynced");
    assert_eq!(sim.shows(1, "k1"), None, "n1 dropped \"v1\"");
    sim.settle();
    for i in 0..N {
        sim.check_p(i).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            sim.shows(i, "k1"),
            None,
            "n{i}: {:?}",
            sim.registers(i, "k1")
        );
    }
    let reference = sim.dump(0);
    for i in 0..N {
        assert_eq!(sim.dump(i), reference, "n{i} differs from n0");
    }
}

/// A held answer too large for one frame comes in parts over one link, in the order they were
/// sent (a link is one TCP connection, and a question about an origin is asked again only after
/// its last part closed the one before), so the last part closes the question only after every
/// earlier part was taken: n1 holds 1,100 keys of n0 and is cut off; the others collect a
/// tombstone without it, then n2 overwrites every key. n1 comes back reaching n3 first: n3's
/// answer about n0's dots carries the 1,100 registers that superseded them, in more than one
/// part, and n1 ends the resync holding every one of them, none of n0's.
#[test]
fn a_held_answer_in_several_parts_drops_what_each_part_reports_superseded() {
    const KEYS: usize = 1_100;
    let mut sim = Sim::new(37);
    let away = [1];
    for k in 0..KEYS {
        sim.put(
            0,
            "sessions",
            &format!("k{k}"),
            Some("v1"),
            Lifetime::Forever,
        );
    }
    sim.put(3, "sessions", "gone", Some("v1"), Lifetime::Forever);
    sim.exchange(3, 100, false);
    sim.split(&away);
    sim.time.advance(10);
    sim.put(3, "sessions", "gone", None, Lifetime::Forever);
    sim.exchange_split(&away, 12, 600);
    assert!(sim.collected > 0, "the others collected without n1");
    for k in 0..KEYS {
        sim.put(
            2,
            "sessions",
            &format!("k{k}"),
            Some("v2"),
            Lifetime::Forever,
        );
    }
    sim.exchange(2, 100, false);
    sim.connect(1, 3);
    assert!(sim.locals[1].is_stale("sessions"), "n1 missed a collection");
    sim.pass(1, 3);
    let answer = {
        let session = sim.sessions[3][1].as_mut().expect("linked");
        due(session, &sim.locals[3], false)
    };
    let parts = answer
        .iter()
        .filter(
            |m| matches!(m, Message::HeldReply { origin, .. } if origin == sim.locals[0].me().id()),
        )
        .count();
    assert!(
        parts > 1,
        "the answer about n0's dots came in {parts} part(s)"
    );
    for msg in answer {
        let s = sim.sessions[1][3].as_mut().expect("linked");
        s.handle(&sim.locals[1], msg).expect("valid");
    }
    for _ in 0..2 {
        sim.pass(1, 3);
        sim.pass(3, 1);
    }
    assert!(!sim.locals[1].is_stale("sessions"), "n1 resynced");
    for k in 0..KEYS {
        assert_eq!(
            sim.shows(1, &format!("k{k}")).as_deref(),
            Some("v2"),
            "k{k}"
        );
    }
    sim.settle();
    for i in 0..N {
        sim.check_p(i).unwrap_or_else(|e| panic!("{e}"));
    }
    let reference = sim.dump(0);
    for i in 0..N {
        assert_eq!(sim.dump(i), reference, "n{i} differs from n0");
    }
}

impl Sim {
    /// Cuts every link between `half` and the other replicas: each side forgets the other.
    fn split(&mut self, half: &[usize]) {
        for i in 0..N {
            for j in 0..N {
                if half.contains(&i) != half.contains(&j) {
                    self.sessions[i][j] = None;
                }
            }
        }
        self.net
            .retain(|f| half.contains(&f.from) == half.contains(&f.to));
    }

    /// As `exchange` with collection, over a cluster split in `half` and the rest: each replica
    /// collects with the replicas of its own side as its only members.
    fn exchange_split(&mut self, half: &[usize], rounds: usize, advance_ms: u64) {
        for _ in 0..rounds {
            self.time.advance(advance_ms);
            for i in 0..N {
                for b in self.locals[i].bucket_list() {
                    b.sweep();
                }
                self.plan(i);
                let members: Vec<Arc<str>> = (0..N)
                    .filter(|&j| j != i && half.contains(&j) == half.contains(&i))
                    .map(|j| self.locals[j].id().clone())
                    .collect();
                let sessions: Vec<&Session> = self.sessions[i].iter().flatten().collect();
                self.collected += self.collectors[i].round(&self.locals[i], &members, &sessions);
            }
            for i in 0..N {
                for j in 0..N {
                    if i != j {
                        self.flush(i, j, false);
                    }
                }
            }
            while !self.net.is_empty() {
                self.deliver(false);
            }
        }
    }
}

/// Whole-node simulation, membership seed 60280: a partition outlasted `memberTimeout`, so each half
/// forgot the other and collected tombstones without it. At the heal each half had missed the
/// other's collection: each resynced against the other and adopted its horizon, but refused the
/// other's writes until the other's context covered its own horizon, which only those writes (pulled
/// from it) could bring. Neither took anything from the other again, acknowledged writes included.
#[test]
fn two_halves_that_each_collected_without_the_other_converge_after_the_heal() {
    let mut sim = Sim::new(34);
    let half = [0, 1];
    sim.put(0, "sessions", "a", Some("v1"), Lifetime::Forever);
    sim.put(3, "sessions", "b", Some("v1"), Lifetime::Forever);
    sim.exchange(3, 100, false);
    sim.split(&half);
    sim.time.advance(10);
    // Each side deletes a key and writes one the other side never sees before the heal.
    sim.put(1, "sessions", "a", None, Lifetime::Forever);
    sim.put(0, "sessions", "c", Some("v2"), Lifetime::Forever);
    sim.put(4, "sessions", "b", None, Lifetime::Forever);
    sim.put(2, "sessions", "d", Some("v3"), Lifetime::Forever);
    let before = sim.collected;
    sim.exchange_split(&half, 12, 600);
    assert!(sim.collected >= before + 2, "both sides collected");
    for i in 0..N {
        let deleted = if half.contains(&i) { "a" } else { "b" };
        assert!(
            sim.locals[i].bucket("sessions").inspect(deleted).is_empty(),
            "n{i} collected its side's tombstone"
        );
    }
    sim.settle();
    let reference = sim.dump(0);
    for i in 0..N {
        assert_eq!(sim.dump(i), reference, "n{i} differs from n0");
        assert_eq!(sim.shows(i, "a"), None, "n{i}");
        assert_eq!(sim.shows(i, "b"), None, "n{i}");
        assert_eq!(sim.shows(i, "c").as_deref(), Some("v2"), "n{i}");
        assert_eq!(sim.shows(i, "d").as_deref(), Some("v3"), "n{i}");
    }
}
