//! What the engine's integration tests share, declared once: values and writes as tests spell them,
//! frames as they cross a link (encoded, then decoded), replicas on a hand-driven clock, the
//! `World` of replicas linked by sessions that exchange real frames in order, a seedable generator,
//! and the fast timers, waits and probes of real nodes over loopback.
//!
//! Nothing here stands in for an engine part: every helper drives the real `Local`, `Session`,
//! `Bucket` and `Node`. Each test binary uses a part of it, hence `dead_code` allowed.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use peer_buckets_engine::connection::{self, FrameReader, FrameWriter};
use peer_buckets_engine::value;
use peer_buckets_engine::wire::{self, ContextPart, Hello, MemberInfo, Message};
use peer_buckets_engine::Bucket;
use peer_buckets_engine::Collector;
use peer_buckets_engine::LinkError;
use peer_buckets_engine::Security;
use peer_buckets_engine::Warning;
use peer_buckets_engine::{Clock, Hlc, ManualClock, PhysicalClock};
use peer_buckets_engine::{Config, Node};
use peer_buckets_engine::{Expiry, Op, Write};
use peer_buckets_engine::{Local, PullPlanner, Session};
use peer_buckets_engine::{Origin, ReplicaId, Seq};

/// The wall clock's start in tests driven by hand (November 2023).
pub const START_MS: u64 = 1_700_000_000_000;
/// The bucket a test uses when one is enough.
pub const BUCKET: &str = "b";
/// `maxClockSkew` of replicas built here.
pub const SKEW_MS: u64 = 60_000;
/// The cluster secret of keyed tests.
pub const SECRET: &str = "correct horse battery staple";

// ---------------------------------------------------------------------------------------------------
// Values and writes.

/// `v` as the JSON string a JavaScript `set(key, v)` stores.
pub fn json(v: &str) -> Box<[u8]> {
    value::encode_json(&format!("\"{v}\""))
}

/// Replica `node` in its first incarnation.
pub fn rid(node: &str) -> ReplicaId {
    ReplicaId {
        node: node.into(),
        incarnation: 1,
    }
}

/// A write of `key` without expiry: the JSON string `v`, or a tombstone for `None`.
pub fn write(key: &str, hlc: Hlc, seq: u64, v: Option<&str>) -> Write {
    Write {
        key: key.into(),
        hlc,
        seq: Seq::from(seq),
        op: match v {
            Some(v) => Op::Set {
                value: json(v),
                expires: Expiry::NEVER,
            },
            None => Op::Delete,
        },
    }
}

/// A touch of `key`: its value expires at `expires_ms`.
pub fn touch(key: &str, hlc: Hlc, seq: u64, expires_ms: u64) -> Write {
    Write {
        key: key.into(),
        hlc,
        seq: Seq::from(seq),
        op: Op::Touch {
            expires: Expiry::at_ms(expires_ms),
        },
    }
}

/// Makes the set or touch `w` expire at `ms`.
pub fn set_expiry(w: &mut Write, ms: u64) {
    match &mut w.op {
        Op::Set { expires, .. } | Op::Touch { expires } => *expires = Expiry::at_ms(ms),
        Op::Delete => panic!("a delete has no expiry"),
    }
}

/// What `bucket` shows for `key`, as stored.
pub fn shows(bucket: &Bucket, key: &str) -> Option<Vec<u8>> {
    let mut out = None;
    bucket.read(key, &mut |v| out = Some(v.to_vec()));
    out
}

/// What `bucket` shows for `key`, as JSON text (`<bytes>` for a binary value).
pub fn get(bucket: &Bucket, key: &str) -> Option<String> {
    let mut out = None;
    bucket.read(key, &mut |v| {
        out = Some(match value::decode(v).unwrap() {
            value::ValueRef::Json(t) => t.to_string(),
            value::ValueRef::Str(t) => value::quote_json(t),
            value::ValueRef::Bytes(_) => "<bytes>".into(),
        })
    });
    out
}

/// A stored register as text, to compare replicas: `touch ` for a touch, origin:seq, hlc, value,
/// expiry.
pub fn register_text(origin: &Origin, w: &Write) -> String {
    format!(
        "{}{}:{}@{} {:?} exp {}",
        if w.is_touch() { "touch " } else { "" },
        origin.id(),
        w.seq,
        w.hlc.0,
        w.value().map(value::decode),
        w.expires().encoded()
    )
}

// ---------------------------------------------------------------------------------------------------
// Frames.

/// What every frame goes through on a link: encoded, then decoded.
pub fn on_the_wire(msg: Message) -> Message {
    let mut buf = Vec::new();
    wire::encode_frame(&msg, &mut buf).expect("encodes");
    wire::decode_frame(&buf).expect("decodes").expect("whole").0
}

/// The frames in `buf`, which holds whole frames only.
pub fn decode_all(buf: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some((msg, used)) = wire::decode_frame(&buf[at..]).expect("own frames decode") {
        at += used;
        out.push(msg);
    }
    out
}

/// Everything `session` has due, as the other end decodes it; `digest`: whether digests are due.
pub fn due(session: &mut Session, local: &Local, digest: bool) -> Vec<Message> {
    let mut buf = Vec::new();
    while session.fill(local, &mut buf, digest).expect("fill") {}
    decode_all(&buf)
}

// ---------------------------------------------------------------------------------------------------
// Replicas on a clock driven by hand.

/// Replica `name` on `time`, with its wall clock on time.
pub fn local(name: &str, incarnation: u64, time: &Arc<ManualClock>) -> Local {
    Local::new(
        name.into(),
        incarnation,
        Arc::new(Clock::new(Box::new(time.clone()))),
        SKEW_MS,
    )
}

/// Replica `name` on `time`, its wall clock off by `offset_ms`, that collects tombstones a second
/// old, so a test reaches a collection without waiting three skews.
pub fn collecting_local(
    name: &str,
    incarnation: u64,
    time: &Arc<ManualClock>,
    offset_ms: i64,
    max_skew_ms: u64,
) -> Local {
    let clock = Arc::new(Clock::new(Box::new(time.clone())));
    clock.set_offset_ms(offset_ms);
    let mut local = Local::new(name.into(), incarnation, clock, max_skew_ms);
    local.set_tombstone_min_age_ms(1_000);
    local
}

/// Replicas by index, linked pairwise by sessions, exchanging real frames in order.
pub struct World {
    pub time: Arc<ManualClock>,
    pub locals: Vec<Local>,
    pub planners: Vec<PullPlanner>,
    pub collectors: Vec<Collector>,
    /// (i, j): replica i's session about replica j.
    pub sessions: BTreeMap<(usize, usize), Session>,
}

impl World {
    pub fn new(names: &[&str]) -> World {
        World::skewed(&names.iter().map(|n| (*n, 0)).collect::<Vec<_>>())
    }

    /// Replicas whose wall clocks are off by the given milliseconds.
    pub fn skewed(nodes: &[(&str, i64)]) -> World {
        let time = Arc::new(ManualClock::new(START_MS));
        let names: Vec<&str> = nodes.iter().map(|(n, _)| *n).collect();
        World {
            locals: nodes
                .iter()
                .map(|(n, off)| collecting_local(n, 1, &time, *off, SKEW_MS))
                .collect(),
            planners: names.iter().map(|_| PullPlanner::default()).collect(),
            collectors: names.iter().map(|_| Collector::default()).collect(),
            sessions: BTreeMap::new(),
            time,
        }
    }

    pub fn bucket(&self, i: usize) -> Arc<Bucket> {
        self.locals[i].bucket(BUCKET)
    }

    pub fn link(&mut self, i: usize, j: usize) {
        let hi = self.locals[i].hello(7000, None, vec![]);
        let hj = self.locals[j].hello(7000, None, vec![]);
        let si = Session::new(&self.locals[i], &hj).expect("hello accepted");
        let sj = Session::new(&self.locals[j], &hi).expect("hello accepted");
        self.sessions.insert((i, j), si);
        self.sessions.insert((j, i), sj);
    }

    pub fn unlink(&mut self, i: usize, j: usize) {
        self.sessions.remove(&(i, j));
        self.sessions.remove(&(j, i));
    }

    pub fn isolate(&mut self, i: usize) {
        self.sessions.retain(|&(a, b), _| a != i && b != i);
    }

    /// Replica i restarts empty under a new incarnation, linked to nobody.
    pub fn restart_empty(&mut self, i: usize, incarnation: u64) {
        self.isolate(i);
        let name = self.locals[i].id().to_string();
        self.locals[i] = collecting_local(&name, incarnation, &self.time, 0, SKEW_MS);
        self.planners[i] = PullPlanner::default();
        self.collectors[i] = Collector::default();
    }

    /// The frames replica i's session about j has due.
    pub fn frames(&mut self, i: usize, j: usize, digest: bool) -> Vec<Message> {
        match self.sessions.get_mut(&(i, j)) {
            Some(s) => due(s, &self.locals[i], digest),
            None => Vec::new(),
        }
    }

    pub fn deliver(&mut self, from: usize, to: usize, msg: Message) {
        self.try_deliver(from, to, msg).expect("message accepted");
    }

    pub fn try_deliver(&mut self, from: usize, to: usize, msg: Message) -> Result<(), LinkError> {
        if let Some(s) = self.sessions.get_mut(&(to, from)) {
            s.handle(&self.locals[to], msg)?;
        }
        Ok(())
    }

    /// Delivers what i's session about j has due, without digests.
    pub fn send(&mut self, i: usize, j: usize) {
        for msg in self.frames(i, j, false) {
            self.deliver(i, j, msg);
        }
    }

    pub fn plan(&mut self, i: usize) {
        let now = self.time.now_ms();
        let linked: Vec<Origin> = self
            .sessions
            .iter()
            .filter(|((a, _), _)| *a == i)
            .map(|(_, s)| s.peer.clone())
            .collect();
        let mut sessions: Vec<&mut Session> = self
            .sessions
            .iter_mut()
            .filter(|((a, _), _)| *a == i)
            .map(|(_, s)| s)
            .collect();
        self.planners[i].plan(&self.locals[i], &mut sessions, now, &|o| linked.contains(o));
    }

    /// Rounds of planning and in-order delivery on every link, with digests, time moving on.
    pub fn pump(&mut self) {
        for _ in 0..12 {
            self.time.advance(700);
            for i in 0..self.locals.len() {
                self.plan(i);
            }
            let pairs: Vec<(usize, usize)> = self.sessions.keys().copied().collect();
            for (i, j) in pairs {
                for msg in self.frames(i, j, true) {
                    self.deliver(i, j, msg);
                }
            }
        }
    }

    /// A collection round at replica i with `members` (the others) as the member set.
    pub fn collect(&mut self, i: usize, members: &[usize]) -> usize {
        let ids: Vec<Arc<str>> = members
            .iter()
            .map(|&m| self.locals[m].id().clone())
            .collect();
        let sessions: Vec<&Session> = self
            .sessions
            .iter()
            .filter(|((a, _), _)| *a == i)
            .map(|(_, s)| s)
            .collect();
        self.collectors[i].round(&self.locals[i], &ids, &sessions)
    }

    /// Two collection rounds among `members`, with digests between, long after the last write.
    pub fn collect_among(&mut self, members: &[usize]) -> usize {
        self.time.advance(5_000);
        self.pump();
        let mut n = 0;
        for round in 0..2 {
            for &i in members {
                let others: Vec<usize> = members.iter().copied().filter(|&m| m != i).collect();
                n += self.collect(i, &others);
            }
            if round == 0 {
                self.pump();
            }
        }
        n
    }
}

// ---------------------------------------------------------------------------------------------------
// Seeded runs.

/// splitmix64: expands a seed (or any value) into a well-mixed one, so seeds that differ in one bit
/// give unrelated runs.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small, seedable generator (xorshift*), so a failing seed replays the same schedule.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // xorshift's state must not be zero; splitmix64 maps exactly one input there.
        Rng(splitmix64(seed).max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

// ---------------------------------------------------------------------------------------------------
// Real nodes over loopback.

/// A node configuration with timers short enough for a test: heartbeats every 100 ms, a link dead
/// after 600 ms of silence, redials within 300 ms, digests every 200 ms.
pub fn config(id: &str, seeds: Vec<String>) -> Config {
    Config {
        id: Some(id.into()),
        seeds,
        heartbeat: Duration::from_millis(100),
        dead_after: Duration::from_millis(600),
        backoff_max: Duration::from_millis(300),
        digest_every: Duration::from_millis(200),
        ..Config::default()
    }
}

/// The same with `secrets` as the cluster's keys.
pub fn keyed(id: &str, seeds: Vec<String>, secrets: &[&str]) -> Config {
    Config {
        secrets: secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..config(id, seeds)
    }
}

/// Waits up to ten seconds for `check` to hold.
pub async fn eventually(what: &str, check: impl FnMut() -> bool) {
    eventually_within(what, Duration::from_secs(10), check).await
}

/// Waits up to `within` for `check` to hold.
pub async fn eventually_within(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ids of the peers `node` is linked to, sorted.
pub fn connected(node: &Node) -> Vec<String> {
    let mut ids: Vec<String> = node
        .peers()
        .into_iter()
        .filter(|p| p.connected)
        .map(|p| p.id)
        .collect();
    ids.sort();
    ids
}

/// A node on a runtime of its own, so that the test can crash it: dropping the runtime drops its tasks
/// and closes its sockets without the goodbye a clean close sends, as a killed process does.
pub struct Crashable {
    runtime: tokio::runtime::Runtime,
    pub node: Node,
}

pub fn start_crashable(config: Config) -> Crashable {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let node = runtime.block_on(Node::start(config)).unwrap();
        Crashable { runtime, node }
    })
    .join()
    .unwrap()
}

impl Crashable {
    /// The runtime is shut down before the node is dropped, on a thread of its own (a runtime cannot
    /// wait for its tasks inside another): dropped first, or while its worker still ran a task, the
    /// node's stop signal reached its link writers, which said goodbye (`Message::Leave`), and the
    /// peers forgot it at once as one that left.
    pub fn crash(self) {
        std::thread::spawn(move || {
            self.runtime.shutdown_timeout(Duration::from_secs(5));
            drop(self.node);
        })
        .join()
        .unwrap();
    }
}

/// The warnings waiting in `rx`.
pub fn drain_warnings(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Warning>) -> Vec<Warning> {
    let mut out = Vec::new();
    while let Ok(w) = rx.try_recv() {
        out.push(w);
    }
    out
}

/// The first bytes a dialer sends: the magic, the preamble version, whether the link is keyed.
pub fn preamble(keyed: bool) -> Vec<u8> {
    vec![
        b'P',
        b'B',
        b'K',
        b'T',
        peer_buckets_engine::LINK_VERSION,
        keyed as u8,
    ]
}

/// A scripted member's link to `node` over loopback, opened as a peer dials: the preamble and, with
/// `secrets` (none for an open node), the handshake. Nothing is sent or read after it.
pub async fn dial(node: &Node, secrets: &[&str]) -> (FrameReader, FrameWriter) {
    let stream = tokio::net::TcpStream::connect(node.address())
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let security = Security::from_secrets(secrets).unwrap();
    connection::open(Box::new(stream), &security, true, None::<fn()>)
        .await
        .expect("the scripted member's handshake")
}

/// Says hello on a scripted member's link as `replica`, listening nowhere (port 1), listing
/// `members`, at `node`'s wall time, then reports holding nothing.
pub async fn say_hello(
    writer: &mut FrameWriter,
    node: &Node,
    replica: ReplicaId,
    members: Vec<MemberInfo>,
) {
    let mut out = Vec::new();
    for msg in [
        Message::Hello(Hello {
            replica,
            listen_port: 1,
            listen_host: Some("127.0.0.1".into()),
            wall_ms: node.clock().wall_ms(),
            members,
        }),
        Message::Contexts(ContextPart {
            buckets: vec![],
            last: true,
        }),
    ] {
        wire::encode_frame(&msg, &mut out).unwrap();
    }
    writer.send(&out).await.unwrap();
}

/// `frames` (whole encoded frames) as one compressed frame, whatever their length: the block a
/// peer's writer would make of them, with the inflated size they truly have.
pub fn compressed_frame(frames: &[u8]) -> Vec<u8> {
    let block = lz4_flex::block::compress(frames);
    let mut out = ((1 + 4 + block.len()) as u32).to_be_bytes().to_vec();
    out.push(wire::COMPRESSED | wire::PROTOCOL_VERSION);
    out.extend_from_slice(&(frames.len() as u32).to_be_bytes());
    out.extend_from_slice(&block);
    out
}

/// The hello of a member named `node` that holds nothing.
pub fn hello(node: &str) -> Hello {
    Hello {
        replica: rid(node),
        listen_port: 7000,
        listen_host: None,
        wall_ms: START_MS,
        members: vec![],
    }
}

/// A member scripted frame by frame against a victim: the victim `v` (replica 0 of the world), an
/// honest peer `h` (replica 1) linked to it, and a member `m` linked to the victim: `v_m` is the
/// victim's session about the member, whose hello and (empty) contexts have arrived.
pub struct Scene {
    pub world: World,
    pub v_m: Session,
}

impl Scene {
    pub fn new() -> Scene {
        let mut world = World::new(&["v", "h"]);
        world.bucket(0);
        world.bucket(1);
        world.link(0, 1);
        let v_m = Session::new(&world.locals[0], &hello("m")).unwrap();
        let mut scene = Scene { world, v_m };
        scene.exchange();
        scene
            .member_sends(Message::Contexts(ContextPart {
                buckets: vec![],
                last: true,
            }))
            .expect("the member's contexts");
        scene
    }

    pub fn v(&self) -> &Local {
        &self.world.locals[0]
    }

    pub fn h(&self) -> &Local {
        &self.world.locals[1]
    }

    /// Delivers everything due between the victim and the honest peer, both ways, until quiet.
    pub fn exchange(&mut self) {
        for _ in 0..4 {
            self.world.send(1, 0);
            self.world.send(0, 1);
        }
    }

    /// The victim takes a frame from the member, as it crosses the wire.
    pub fn member_sends(&mut self, msg: Message) -> Result<(), LinkError> {
        self.v_m
            .handle(&self.world.locals[0], on_the_wire(msg))
            .map(|_| ())
    }

    /// What the victim sends the member.
    pub fn sent_to_member(&mut self) -> Vec<Message> {
        due(&mut self.v_m, &self.world.locals[0], false)
    }

    pub fn holds(&self, key: &str) -> bool {
        self.v().bucket(BUCKET).contains(key)
    }
}
