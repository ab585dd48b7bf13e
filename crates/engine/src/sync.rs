//! The replication protocol, without I/O: what a replica sends on a link and what it does with what
//! arrives. `link` drives it over TCP; the simulation test drives it over a lossy in-memory network.
//!
//! - **Push (live flow and catch-up alike).** On each link a replica sends its *own* writes that the other
//!   end lacks, by walking its per-origin index from what the other end holds (learned from its hello,
//!   its digests, and what went either way on the link). Superseded writes are never sent: the `covered`
//!   ranges of a batch stand for them.
//! - **Pull (everything else).** Writes of other origins are requested by the replica that lacks them,
//!   from one peer that has them (`PullPlanner`): at once when their origin is no live member linked to
//!   us (a dead replica, an old incarnation), otherwise only once the gap has lasted a whole planning
//!   period, so writes still in flight from their origin are not fetched twice.
//! - **Digests** (per bucket, the whole context) go out periodically; they also acknowledge writes.
//! - **Acks** are cumulative per bucket and sent once per writer pass, not once per write.
//! - **Clock skew guard.** A peer whose wall clock (hello, pings) runs further ahead of ours than
//!   `max_clock_skew_ms` is refused as a link. Hybrid timestamps are not the sender's clock: a member
//!   within the skew of both ends may have stamped them, so a frame holding one past this clock's
//!   ceiling is dropped whole and the link stays (skew is not transitive). Every frame that carries
//!   writes goes through `Local::observe` before any of them is applied; a dropped frame applies
//!   nothing and claims no coverage (nor does the rest of its fetch answer: its touch registers may
//!   have expired the values that follow), so its writes stay a gap, pulled again every `PULL_TIMEOUT_MS`
//!   until this clock has come within the skew of them: delayed, never lost, never taken by halves.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::hash::HashMap;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::acks::AckTracker;
use crate::bucket::{Bucket, WriteSignal};
use crate::clock::{Clock, TooFarAhead};
use crate::error::LinkError;
use crate::ranges::SeqRanges;
use crate::replica::{Origin, ReplicaId, ReplicaTable};
use crate::store::{ChunkLimits, CollectedRecord, MemoryStore, Merged, Write};
use crate::value;
use crate::wire::{
    self, BucketSummary, CollectedKey, ContextPart, Hello, MemberInfo, Message, OpsBatch,
    WireContext, COLLECTED_PER_FRAME, MAX_BUCKET_NAME, MAX_KEY,
};

/// Writes per Ops or FetchReply frame at most.
pub const CHUNK_WRITES: usize = 1024;
/// Bytes of keys and values per Ops or FetchReply frame, roughly (one write may be larger, up to
/// `wire::MAX_VALUE`; frames stay under `wire::MAX_FRAME`).
pub const CHUNK_BYTES: usize = 1024 * 1024;
const CHUNK_LIMITS: ChunkLimits = ChunkLimits {
    max_writes: CHUNK_WRITES,
    max_bytes: CHUNK_BYTES,
};
/// Bytes a writer pass gathers before sending.
pub const SEND_BUDGET: usize = 512 * 1024;
/// How long collected registers are remembered by key, by default: a replica away longer than this
/// past a collection loses its old writes to keys nobody else holds (see `store::CollectedKeys`).
pub const REMEMBER_COLLECTED_MS: u64 = 60 * 60 * 1000;
/// Bytes of answers (`Session::owed`) a link may owe the other end before it stops reading its
/// requests until the writer has sent them: a peer that asks without reading is paused, then dropped
/// by the writer's stall timeout, instead of growing this replica's memory.
pub const OWED_LIMIT: usize = 4 * 1024 * 1024;
/// Buckets a replica holds at most before it ignores peers' writes and contexts for new ones, by
/// default (`Local::max_buckets`).
pub const DEFAULT_MAX_BUCKETS: usize = 10_000;
/// How long a pull may stay unanswered before it is asked again.
pub const PULL_TIMEOUT_MS: u64 = 5_000;

/// Counters reported by `stats()`.
#[derive(Default)]
pub struct Counters {
    pub ops_applied: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub links_refused: AtomicU64,
    pub clock_skew_refused: AtomicU64,
    pub pulls_sent: AtomicU64,
    pub pulls_served: AtomicU64,
    pub catchup_writes_received: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub tombstones_collected: AtomicU64,
    pub full_resyncs: AtomicU64,
    /// Buckets a peer named that were not created: this replica held `Local::max_buckets` already.
    pub buckets_refused: AtomicU64,
    /// Tombstones written in place of collected ones, for old writes that came back (see
    /// `store::CollectedKeys`).
    pub stand_in_tombstones: AtomicU64,
}

/// The wake-up flag of one link's writer.
#[derive(Default)]
pub struct LinkSignal {
    pending: AtomicBool,
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

/// The link writers to wake after a local write, and the durable store's flusher to ring after any
/// change.
#[derive(Default)]
pub struct Signals {
    links: RwLock<Vec<Arc<LinkSignal>>>,
    flusher: std::sync::OnceLock<Arc<crate::disk::Doorbell>>,
}

impl Signals {
    pub fn add(&self, s: Arc<LinkSignal>) {
        self.links.write().push(s);
    }
    pub fn remove(&self, s: &Arc<LinkSignal>) {
        self.links.write().retain(|x| !Arc::ptr_eq(x, s));
    }

    /// Where to ring after every change from now on (a durable store's flusher).
    pub fn set_flusher(&self, doorbell: Arc<crate::disk::Doorbell>) {
        let _ = self.flusher.set(doorbell);
    }
}

impl WriteSignal for Signals {
    fn local_write(&self) {
        for s in self.links.read().iter() {
            s.wake();
        }
        self.remote_change();
    }

    fn remote_change(&self) {
        if let Some(doorbell) = self.flusher.get() {
            doorbell.ring();
        }
    }
}

/// One replica's data and identity: everything the protocol reads and writes, with no I/O.
pub struct Local {
    pub id: Arc<str>,
    pub me: Origin,
    pub clock: Arc<Clock>,
    pub replicas: ReplicaTable,
    pub signals: Arc<Signals>,
    pub counters: Counters,
    pub acks: AckTracker,
    /// Remote clocks further ahead than this are refused.
    pub max_clock_skew_ms: u64,
    /// (bucket, origin) of frames dropped for skew: their sender counts them as delivered and pushes
    /// them no more, so the planner pulls these gaps without waiting for the origin's stream to stall.
    skew_gaps: Mutex<BTreeSet<GapKey>>,
    /// Tombstones younger than this are never collected.
    pub tombstone_min_age_ms: u64,
    /// How long collected registers are remembered by key (see `store::CollectedKeys`).
    pub remember_collected_ms: u64,
    /// Buckets are persisted: their stores journal every change for the flusher.
    pub durable: bool,
    /// Past this many buckets, a bucket a peer names is not created (`remote_bucket`).
    pub max_buckets: usize,
    /// Ordered by name, so every pass over the buckets goes the same way without sorting them.
    buckets: RwLock<BTreeMap<Arc<str>, Arc<Bucket>>>,
    /// The buckets where this replica found it missed a collection (it held data, and a peer's
    /// horizon was beyond its context): until a resync validates its registers, it takes no writes
    /// in and collects nothing there (see `Session::new`).
    stale: Mutex<BTreeSet<Arc<str>>>,
}

/// Seqs per origin: a context or a collection horizon.
pub type Context = BTreeMap<Origin, SeqRanges>;

/// Whether the union of `have` holds every seq of `need`.
pub fn covers(have: &[&Context], need: &Context) -> bool {
    need.iter().all(|(o, r)| {
        let mut rest = r.clone();
        for h in have {
            if let Some(held) = h.get(o) {
                rest = rest.difference(held);
            }
        }
        rest.is_empty()
    })
}

impl Local {
    pub fn new(id: Arc<str>, incarnation: u64, clock: Arc<Clock>, max_clock_skew_ms: u64) -> Self {
        let replicas = ReplicaTable::new();
        let me = replicas.intern(&ReplicaId {
            node: id.clone(),
            incarnation,
        });
        clock.set_max_skew_ms(max_clock_skew_ms);
        Local {
            id,
            me,
            clock,
            replicas,
            signals: Arc::new(Signals::default()),
            counters: Counters::default(),
            acks: AckTracker::new(),
            max_clock_skew_ms,
            skew_gaps: Mutex::new(BTreeSet::new()),
            tombstone_min_age_ms: max_clock_skew_ms.saturating_mul(3),
            remember_collected_ms: REMEMBER_COLLECTED_MS,
            durable: false,
            max_buckets: DEFAULT_MAX_BUCKETS,
            buckets: RwLock::new(BTreeMap::new()),
            stale: Mutex::new(BTreeSet::new()),
        }
    }

    /// Whether this replica missed a collection in `bucket` and has not resynced since.
    pub fn is_stale(&self, bucket: &str) -> bool {
        self.stale.lock().contains(bucket)
    }

    fn note_stale(&self, bucket: &Arc<str>) {
        self.stale.lock().insert(bucket.clone());
    }

    /// A resync validated this replica's registers of `bucket` against a peer's `horizon`, which it
    /// adopts. (A peer whose horizon is beyond it still refuses this replica's writes until its
    /// context covers that horizon, and its collected registers, learned at its hello, answer what
    /// they beat.)
    fn validated(&self, bucket: &Bucket, horizon: &Context) {
        bucket.note_collected(horizon);
        self.stale.lock().remove(bucket.name());
    }

    /// The bucket called `name`, created empty if this replica has not seen it yet.
    pub fn bucket(&self, name: &str) -> Arc<Bucket> {
        if let Some(b) = self.buckets.read().get(name) {
            return b.clone();
        }
        let store: Box<dyn crate::store::Store> = if self.durable {
            Box::new(MemoryStore::journaled())
        } else {
            Box::new(MemoryStore::new())
        };
        self.install_bucket(name, store)
    }

    /// Adds bucket `name` with `store` (a restored one) unless the bucket exists; returns the bucket.
    pub fn install_bucket(&self, name: &str, store: Box<dyn crate::store::Store>) -> Arc<Bucket> {
        let mut buckets = self.buckets.write();
        if let Some(b) = buckets.get(name) {
            return b.clone();
        }
        let name: Arc<str> = name.into();
        let bucket = Arc::new(Bucket::new(
            name.clone(),
            self.me.clone(),
            self.clock.clone(),
            self.signals.clone(),
            store,
        ));
        buckets.insert(name, bucket.clone());
        bucket
    }

    /// The bucket called `name` for a peer that named it: created empty unless this replica holds
    /// `max_buckets` already; then `None`, counted in `buckets_refused`, and what the peer sent for it
    /// is ignored. A member cannot grow every replica's state without bound this way.
    pub fn remote_bucket(&self, name: &str) -> Option<Arc<Bucket>> {
        if let Some(b) = self.existing_bucket(name) {
            return Some(b);
        }
        if self.buckets.read().len() >= self.max_buckets {
            self.counters
                .buckets_refused
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.bucket(name))
    }

    /// The bucket called `name` if this replica has it.
    pub fn existing_bucket(&self, name: &str) -> Option<Arc<Bucket>> {
        self.buckets.read().get(name).cloned()
    }

    pub fn bucket_list(&self) -> Vec<Arc<Bucket>> {
        self.buckets.read().values().cloned().collect()
    }

    pub fn wire_context(&self, bucket: &Bucket) -> WireContext {
        to_wire(bucket.store().context())
    }

    /// The hello this replica sends on a new link.
    pub fn hello(
        &self,
        listen_port: u16,
        listen_host: Option<String>,
        members: Vec<MemberInfo>,
    ) -> Hello {
        Hello {
            replica: self.me.id().clone(),
            listen_port,
            listen_host,
            wall_ms: self.clock.wall_ms(),
            members,
        }
    }

    /// What this replica holds, in the parts that follow its hello.
    pub fn context_parts(&self) -> Vec<ContextPart> {
        ContextPart::split(self.bucket_list().into_iter().map(|b| {
            let context = b.store().context();
            let mine: Context = context.iter().cloned().collect();
            BucketSummary {
                name: b.name().clone(),
                collected: to_wire(vouched(&b, &mine).into_iter().collect()),
                context: to_wire(context),
            }
        }))
    }

    /// The collected registers this replica remembers, per bucket, in the frames that follow its
    /// contexts.
    pub fn collected_frames(&self) -> Vec<Message> {
        let mut frames = Vec::new();
        for b in self.bucket_list() {
            let keys: Vec<CollectedKey> = b
                .store()
                .collected_records()
                .into_iter()
                .map(|(r, origin)| CollectedKey {
                    fingerprint: r.fingerprint,
                    hlc: r.hlc,
                    origin: origin.map(|o| o.id().clone()),
                    at_ms: r.at_ms,
                })
                .collect();
            for chunk in keys.chunks(COLLECTED_PER_FRAME) {
                frames.push(Message::Collected {
                    bucket: b.name().clone(),
                    keys: chunk.to_vec(),
                });
            }
        }
        frames
    }

    fn count_merged(&self, merged: Merged) {
        let c = &self.counters;
        c.ops_applied
            .fetch_add(merged.fresh as u64, Ordering::Relaxed);
        c.stand_in_tombstones
            .fetch_add(merged.stand_ins as u64, Ordering::Relaxed);
    }

    /// Refuses a remote wall clock too far ahead of ours.
    pub fn check_clock(&self, remote_ms: u64) -> Result<(), LinkError> {
        let local = self.clock.wall_ms();
        if remote_ms > local.saturating_add(self.max_clock_skew_ms) {
            self.counters
                .clock_skew_refused
                .fetch_add(1, Ordering::Relaxed);
            return Err(LinkError::ClockSkew {
                ahead_ms: remote_ms - local,
            });
        }
        Ok(())
    }

    /// Observes the newest timestamp of a frame's writes before any of them is applied: a frame with
    /// one write stamped past the clock's ceiling is refused whole (counted, for the caller to drop)
    /// and moves no clock.
    pub fn observe<'a>(
        &self,
        writes: impl IntoIterator<Item = &'a Write>,
    ) -> Result<(), TooFarAhead> {
        match writes.into_iter().map(|w| w.hlc).max() {
            Some(newest) => self.clock.observe(newest).inspect_err(|_| {
                self.counters
                    .clock_skew_refused
                    .fetch_add(1, Ordering::Relaxed);
            }),
            None => Ok(()),
        }
    }

    /// Counts a refused timestamp and names it for the link's close.
    fn skew_refused(&self, e: TooFarAhead) -> LinkError {
        self.counters
            .clock_skew_refused
            .fetch_add(1, Ordering::Relaxed);
        LinkError::ClockSkew {
            ahead_ms: e.ahead_ms,
        }
    }

    /// Merges a frame's writes already observed (`Local::observe`), so the clock cannot refuse them.
    fn merge(
        &self,
        bucket: &Bucket,
        origin: &Origin,
        writes: Vec<Write>,
        covered: &SeqRanges,
    ) -> Result<usize, LinkError> {
        self.merge_chunk(bucket, origin, writes, covered, &[], Vec::new())
    }

    /// `merge` of a whole chunk: the superseded seqs it covered and the registers it carries with
    /// them (see `Bucket::merge_chunk`).
    fn merge_chunk(
        &self,
        bucket: &Bucket,
        origin: &Origin,
        writes: Vec<Write>,
        covered: &SeqRanges,
        superseded: &[(Arc<str>, Vec<u64>)],
        superseders: Vec<(Origin, Write)>,
    ) -> Result<usize, LinkError> {
        let merged = bucket
            .merge_chunk(origin, writes, covered, superseded, superseders)
            .map_err(|e| self.skew_refused(e))?;
        self.count_merged(merged);
        Ok(merged.fresh)
    }
}

/// The part of `bucket`'s horizon that `mine` (its context) covers: what this replica can vouch for
/// in a resync (it knows the fate of each of those dots). A horizon inherited from a peer that did
/// not cover it all may hold dots no replica covers any more: nobody can answer for them, so they
/// never make another replica stale.
fn vouched(bucket: &Bucket, mine: &Context) -> Context {
    bucket
        .collected()
        .into_iter()
        .filter_map(|(o, r)| {
            let i = r.intersect(mine.get(&o)?);
            (!i.is_empty()).then_some((o, i))
        })
        .collect()
}

fn to_wire(ctx: Vec<(Origin, SeqRanges)>) -> WireContext {
    ctx.into_iter().map(|(o, r)| (o.id().clone(), r)).collect()
}

fn check_bucket_name(name: &str) -> Result<(), LinkError> {
    if name.is_empty() || name.len() > MAX_BUCKET_NAME {
        return Err(LinkError::Protocol(format!(
            "bucket name of {} bytes",
            name.len()
        )));
    }
    Ok(())
}

/// This replica's last seq in `bucket` (0 if it holds no such bucket).
fn own_last_seq(local: &Local, bucket: &str) -> u64 {
    local
        .existing_bucket(bucket)
        .map_or(0, |b| b.store().context_of(&local.me).max())
}

/// Refuses a claim on this replica's own writes past its last seq: nobody can hold a write it never
/// made, and taking the claim would hide its next writes from the claimant, or exhaust its sequence.
fn check_own_claim(
    local: &Local,
    bucket: &str,
    rid: &ReplicaId,
    max: u64,
) -> Result<(), LinkError> {
    if *rid != *local.me.id() {
        return Ok(());
    }
    let own = own_last_seq(local, bucket);
    if max > own {
        return Err(LinkError::Protocol(format!(
            "a claim on this peer's own seq {max} in bucket {bucket}, past its last write {own}"
        )));
    }
    Ok(())
}

/// `check_own_claim` for every origin of a context or horizon.
fn check_own_claims(local: &Local, bucket: &str, ctx: &WireContext) -> Result<(), LinkError> {
    for (rid, ranges) in ctx {
        check_own_claim(local, bucket, rid, ranges.max())?;
    }
    Ok(())
}

/// `check_own_claim` for writes of `origin`.
fn check_own_writes(
    local: &Local,
    bucket: &str,
    origin: &ReplicaId,
    writes: &[Write],
) -> Result<(), LinkError> {
    let max = writes.iter().map(|w| w.seq).max().unwrap_or(0);
    check_own_claim(local, bucket, origin, max)
}

/// What a link knows about the other end's hold of one bucket.
#[derive(Default)]
struct BucketSession {
    /// Seqs per origin the other end holds: what it said, plus what went either way on this link.
    remote_has: BTreeMap<Origin, SeqRanges>,
    /// Seqs per origin the other end asked for (and that we hold), not yet sent.
    requested: BTreeMap<Origin, SeqRanges>,
    /// The other end's context as it reported it (hello and digests only): what it surely holds.
    reported: BTreeMap<Origin, SeqRanges>,
    /// Per origin, the `Held` query we asked and await (the rest of) a reply for: a reply answers
    /// within it or is a protocol error.
    held_asked: BTreeMap<Origin, SeqRanges>,
    /// Origins whose `Held` reply came whole: a second copy of one (a duplicated frame) changes
    /// nothing.
    held_answered: BTreeSet<Origin>,
    /// Per origin other than the other end's, the seqs we pulled from it: writes of another origin
    /// arrive only as answers to a pull, and cover only what was pulled.
    pulled: BTreeMap<ReplicaId, SeqRanges>,
    /// The other end's collection horizon, from its hello.
    horizon: Context,
    /// The other end missed a collection this replica knows of: its writes are not taken in until
    /// its context covers this replica's horizon (it resynced and caught up).
    refused: bool,
    /// A resync of this replica against the other end is under way.
    resyncing: bool,
    /// When (this replica's clock, ms) the other end last reported its context (hello or digest).
    reported_at_ms: u64,
}

/// What the node must do about a message the session handled.
#[derive(Debug, PartialEq)]
pub enum Inbound {
    Nothing,
    Members(Vec<MemberInfo>),
    Leave,
    /// Entries of fetch `id` arrived (`count` of them); `done` on its last frame.
    Fetched {
        id: u64,
        count: usize,
        done: bool,
    },
}

/// The protocol state of one link.
pub struct Session {
    /// The replica at the other end.
    pub peer: Origin,
    buckets: BTreeMap<Arc<str>, BucketSession>,
    /// Buckets where the other end's own writes arrived since our last ack.
    ack_due: BTreeSet<Arc<str>>,
    /// Messages queued for the writer (our contexts, pull requests, fetch requests and replies), each
    /// with the bytes it counts in `owed`.
    outbox: VecDeque<(Message, usize)>,
    /// Bytes of answers to the other end's requests (`FetchReply`, `HeldReply`) queued and not yet
    /// sent, roughly: the link stops reading requests past `OWED_LIMIT`, so what one peer can make
    /// this replica hold for it is bounded whether or not it reads.
    owed: usize,
    /// The other end's contexts have not all arrived: until they have, we cannot tell which of our
    /// writes it lacks, and push none.
    awaiting_contexts: bool,
    /// The bucket where the last pass ran out of send budget; the next one starts there.
    resume_at: Option<Arc<str>>,
    /// How far ahead (ms) of this clock the furthest write of a frame dropped for skew was stamped,
    /// since the link last reported it (`take_skewed`).
    skewed: Option<u64>,
    /// Fetches asked on this link and not yet answered to the end: a fetch reply names one of them.
    fetches_asked: BTreeSet<u64>,
    /// Fetches asked on this link of which a reply frame was dropped for skew: the rest of their
    /// answer is dropped too, since the frame of touch registers dropped may have expired the values
    /// that follow (they come with their touches through the sync instead).
    skewed_fetches: BTreeSet<u64>,
}

impl Session {
    /// Starts a session from the other end's hello, and queues this replica's contexts to follow its
    /// own hello; the other end's contexts, with its horizon, arrive as `Contexts` parts
    /// (`absorb_part`), each bucket's whole in one part.
    ///
    /// Each side's contexts carry its collection horizon H: every dot any member held at a collection
    /// it made or inherited, as far as its own context covers it (`vouched`: a horizon inherited from
    /// a peer that did not cover it all may name dots no replica covers any more, and nobody could
    /// answer for those). If the other end's H is beyond this replica's context and H, this replica
    /// missed a collection. Empty (it joined or restarted empty), it inherits that H at once, so it
    /// can tell a returning replica in turn. Holding data, it is stale: it takes no writes in until it
    /// has asked a peer (the one that showed it, first) which of its registers that peer covers and
    /// no longer stores (superseded, or collected), and dropped them; a peer covers every dot of the
    /// H it sends, so it knows their fate, and no returning replica waits for a peer that may never
    /// come back. The collected registers each side remembers by key follow its
    /// contexts (`Message::Collected`), and the receiver remembers them too: a dot covered without
    /// its register may be a collected one, and whoever covers it must answer a write it beat. So
    /// the writes a stale replica keeps travel as they are: where one is older than a register
    /// collected for its key, the receiver answers it with a stand-in tombstone (see
    /// `store::CollectedKeys`), and a register the replica itself holds that a record it learns
    /// beats gets one at once. Symmetrically, writes from a peer that missed a collection this
    /// replica knows of are refused until that peer's context covers this replica's vouched horizon.
    pub fn new(local: &Local, theirs: &Hello) -> Result<Session, LinkError> {
        local.check_clock(theirs.wall_ms)?;
        Ok(Session {
            peer: local.replicas.intern(&theirs.replica),
            buckets: BTreeMap::new(),
            ack_due: BTreeSet::new(),
            outbox: local
                .context_parts()
                .into_iter()
                .map(Message::Contexts)
                .chain(local.collected_frames())
                .map(|msg| (msg, 0))
                .collect(),
            owed: 0,
            awaiting_contexts: true,
            resume_at: None,
            skewed: None,
            fetches_asked: BTreeSet::new(),
            skewed_fetches: BTreeSet::new(),
        })
    }

    /// Takes one part of the other end's contexts (see `new`).
    fn absorb_part(&mut self, local: &Local, part: ContextPart) -> Result<(), LinkError> {
        if !self.awaiting_contexts {
            return Err(LinkError::Protocol(
                "contexts after the hello's last part".into(),
            ));
        }
        for summary in &part.buckets {
            check_bucket_name(&summary.name)?;
            check_own_claims(local, &summary.name, &summary.context)?;
            check_own_claims(local, &summary.name, &summary.collected)?;
        }
        for summary in part.buckets {
            let Some(bucket) = local.remote_bucket(&summary.name) else {
                continue;
            };
            self.absorb_context(local, summary.name.clone(), &summary.context);
            let horizon: Context = summary
                .collected
                .iter()
                .map(|(rid, r)| (local.replicas.intern(rid), r.clone()))
                .collect();
            let mine: Context = bucket.store().context().into_iter().collect();
            let known: Context = bucket.collected().into_iter().collect();
            if !covers(&[&mine, &known], &horizon) {
                if mine.is_empty() {
                    bucket.note_collected(&horizon);
                } else {
                    tracing::info!(bucket = %bucket.name(), peer = %self.peer.id(), "away past a collection: resync before taking writes in");
                    local.note_stale(bucket.name());
                }
            }
            let mine: Context = bucket.store().context().into_iter().collect();
            let known = vouched(&bucket, &mine);
            let state = self.buckets.entry(summary.name.clone()).or_default();
            state.refused = !covers(&[&state.reported, &horizon], &known);
            state.horizon = horizon;
            self.review(local, &bucket);
        }
        self.awaiting_contexts = !part.last;
        Ok(())
    }

    /// After the other end reported its context: takes its writes in again once it covers this
    /// replica's vouched horizon, and resyncs against it if this replica is stale.
    fn review(&mut self, local: &Local, bucket: &Bucket) {
        let state = self.buckets.entry(bucket.name().clone()).or_default();
        if state.refused {
            let mine: Context = bucket.store().context().into_iter().collect();
            state.refused = !covers(&[&state.reported], &vouched(bucket, &mine));
        }
        if state.resyncing || !local.is_stale(bucket.name()) {
            return;
        }
        state.resyncing = true;
        local.counters.full_resyncs.fetch_add(1, Ordering::Relaxed);
        for (origin, ctx) in bucket.store().context() {
            let Some(theirs) = state.reported.get(&origin) else {
                continue;
            };
            let query = bucket.store().stored_dots(&origin, &ctx.intersect(theirs));
            if !query.is_empty() {
                state.held_asked.insert(origin.clone(), query.clone());
                let held = Message::Held {
                    bucket: bucket.name().clone(),
                    origin: origin.id().clone(),
                    query,
                };
                self.outbox.push_back((held, 0));
            }
        }
        self.finish_resync(local, bucket);
    }

    /// Ends a resync whose every question was answered: this replica's registers are valid under
    /// the other end's horizon, which it adopts.
    fn finish_resync(&mut self, local: &Local, bucket: &Bucket) {
        let state = self.buckets.entry(bucket.name().clone()).or_default();
        if state.resyncing && state.held_asked.is_empty() {
            state.resyncing = false;
            local.validated(bucket, &state.horizon);
        }
    }

    /// Whether writes arriving on this link for `bucket` are left out: this replica is stale there,
    /// or the other end is.
    fn refuses(&self, local: &Local, bucket: &str) -> bool {
        local.is_stale(bucket) || self.buckets.get(bucket).is_some_and(|s| s.refused)
    }

    fn absorb_context(&mut self, local: &Local, bucket: Arc<str>, ctx: &WireContext) {
        let state = self.buckets.entry(bucket.clone()).or_default();
        state.reported_at_ms = local.clock.now().physical_ms();
        for (rid, ranges) in ctx {
            let origin = local.replicas.intern(rid);
            if origin == local.me {
                local
                    .acks
                    .on_ack(&bucket, &self.peer.id().node, ranges.contiguous());
            }
            state
                .remote_has
                .entry(origin.clone())
                .or_default()
                .union_with(ranges);
            state.reported.entry(origin).or_default().union_with(ranges);
        }
    }

    /// The other end's reported context of `bucket` (hello and digests), per origin.
    pub fn reported(&self, bucket: &str) -> Option<&BTreeMap<Origin, SeqRanges>> {
        self.buckets.get(bucket).map(|b| &b.reported)
    }

    /// When (this replica's clock, ms) the other end last reported its context of `bucket`; 0 never.
    pub fn reported_at(&self, bucket: &str) -> u64 {
        self.buckets.get(bucket).map_or(0, |b| b.reported_at_ms)
    }

    /// How far ahead of this clock (ms) writes this link brought were stamped, if a frame of them was
    /// dropped for skew since the last call: the link reports it (`ESKEW`).
    pub fn take_skewed(&mut self) -> Option<u64> {
        self.skewed.take()
    }

    fn dropped_for_skew(&mut self, e: TooFarAhead) {
        self.skewed = Some(self.skewed.unwrap_or(0).max(e.ahead_ms));
    }

    /// Queues a message for the writer, remembering the requests among them: only their replies are
    /// taken.
    pub fn queue(&mut self, msg: Message) {
        match &msg {
            Message::Pull {
                bucket,
                origin,
                ranges,
            } => {
                self.buckets
                    .entry(bucket.clone())
                    .or_default()
                    .pulled
                    .entry(origin.clone())
                    .or_default()
                    .union_with(ranges);
            }
            Message::FetchRequest { id, .. } => {
                self.fetches_asked.insert(*id);
            }
            _ => {}
        }
        self.outbox.push_back((msg, 0));
    }

    /// Queues an answer to the other end's request, of about `bytes`.
    fn answer(&mut self, msg: Message, bytes: usize) {
        self.owed += bytes;
        self.outbox.push_back((msg, bytes));
    }

    /// Bytes of answers to the other end queued and not yet sent (see `OWED_LIMIT`).
    pub fn owed(&self) -> usize {
        self.owed
    }

    /// Seqs of `origin` in `bucket` the other end holds, as far as this session knows.
    pub fn remote_has(&self, bucket: &str, origin: &Origin) -> Option<&SeqRanges> {
        self.buckets.get(bucket)?.remote_has.get(origin)
    }

    /// What the other end holds, per bucket and origin, in the buckets whose writes this link takes.
    fn remote_contexts(&self) -> impl Iterator<Item = (&Arc<str>, &Origin, &SeqRanges)> {
        self.buckets
            .iter()
            .filter(|(_, s)| !s.refused)
            .flat_map(|(b, s)| s.remote_has.iter().map(move |(o, r)| (b, o, r)))
    }

    /// Applies one message from the other end.
    pub fn handle(&mut self, local: &Local, msg: Message) -> Result<Inbound, LinkError> {
        match msg {
            Message::Ops(batch) => {
                self.apply_ops(local, batch)?;
                Ok(Inbound::Nothing)
            }
            Message::Digest { bucket, context } => {
                check_bucket_name(&bucket)?;
                check_own_claims(local, &bucket, &context)?;
                if let Some(b) = local.remote_bucket(&bucket) {
                    self.absorb_context(local, bucket, &context);
                    self.review(local, &b);
                }
                Ok(Inbound::Nothing)
            }
            Message::Pull {
                bucket,
                origin,
                ranges,
            } => {
                check_bucket_name(&bucket)?;
                let Some(b) = local.existing_bucket(&bucket) else {
                    return Ok(Inbound::Nothing);
                };
                let origin = local.replicas.intern(&origin);
                let held = b.store().context_of(&origin);
                let wanted = ranges.intersect(&held);
                if !wanted.is_empty() {
                    local.counters.pulls_served.fetch_add(1, Ordering::Relaxed);
                    self.buckets
                        .entry(bucket)
                        .or_default()
                        .requested
                        .entry(origin)
                        .or_default()
                        .union_with(&wanted);
                }
                Ok(Inbound::Nothing)
            }
            Message::Ack { bucket, upto } => {
                check_bucket_name(&bucket)?;
                let own = own_last_seq(local, &bucket);
                if upto > own {
                    return Err(LinkError::Protocol(format!(
                        "an ack of seq {upto} in bucket {bucket}, past this peer's last write {own}"
                    )));
                }
                // An ack stands only for what went out on this link (or what the other end
                // reported holding): an honest peer may have had the rest from a third, but an
                // ack for writes the other end was never sent proves nothing.
                let has = self
                    .buckets
                    .entry(bucket.clone())
                    .or_default()
                    .remote_has
                    .entry(local.me.clone())
                    .or_default();
                let upto = upto.min(has.contiguous());
                local.acks.on_ack(&bucket, &self.peer.id().node, upto);
                Ok(Inbound::Nothing)
            }
            Message::FetchRequest { id, bucket, prefix } => {
                check_bucket_name(&bucket)?;
                self.answer_fetch(local, id, bucket, &prefix);
                Ok(Inbound::Nothing)
            }
            Message::FetchReply {
                id,
                bucket,
                origin,
                writes,
                done,
            } => {
                check_bucket_name(&bucket)?;
                if !self.fetches_asked.contains(&id) {
                    return Err(LinkError::Protocol(format!(
                        "a fetch reply nobody asked for (fetch {id})"
                    )));
                }
                if done {
                    self.fetches_asked.remove(&id);
                }
                let mut count = writes.len();
                if let Some(origin) = origin {
                    check_writes(&writes, None)?;
                    check_own_writes(local, &bucket, &origin, &writes)?;
                    if !self.skewed_fetches.contains(&id) {
                        if let Err(e) = local.observe(&writes) {
                            self.dropped_for_skew(e);
                            self.skewed_fetches.insert(id);
                        }
                    }
                    if self.skewed_fetches.contains(&id) {
                        count = 0;
                    } else if !self.refuses(local, &bucket) {
                        let origin = local.replicas.intern(&origin);
                        if let Some(b) = local.remote_bucket(&bucket) {
                            local.merge(&b, &origin, writes, &SeqRanges::new())?;
                        }
                    }
                } else if count > 0 {
                    return Err(LinkError::Protocol(
                        "fetched writes without an origin".into(),
                    ));
                }
                if done {
                    self.skewed_fetches.remove(&id);
                }
                Ok(Inbound::Fetched { id, count, done })
            }
            Message::Held {
                bucket,
                origin,
                query,
            } => {
                check_bucket_name(&bucket)?;
                self.answer_held(local, bucket, origin, &query);
                Ok(Inbound::Nothing)
            }
            Message::HeldReply {
                bucket,
                origin,
                covered,
                held,
                superseders,
                last,
            } => {
                check_bucket_name(&bucket)?;
                let o = local.replicas.intern(&origin);
                let Some(state) = self.buckets.get(&bucket) else {
                    return Err(LinkError::Protocol("a held reply nobody asked for".into()));
                };
                let Some(query) = state.held_asked.get(&o) else {
                    if state.held_answered.contains(&o) {
                        // A second copy of a reply already taken whole.
                        return Ok(Inbound::Nothing);
                    }
                    return Err(LinkError::Protocol("a held reply nobody asked for".into()));
                };
                if !covered.difference(query).is_empty() || !held.difference(&covered).is_empty() {
                    return Err(LinkError::Protocol(
                        "a held reply beyond the question asked".into(),
                    ));
                }
                for (rid, w) in &superseders {
                    check_writes(std::slice::from_ref(w), None)?;
                    check_own_writes(local, &bucket, rid, std::slice::from_ref(w))?;
                }
                if let Err(e) = local.observe(superseders.iter().map(|(_, w)| w)) {
                    // Dropped whole, as any frame stamped past this clock's ceiling: nothing is
                    // dropped here without what superseded it, and the question stays open.
                    self.dropped_for_skew(e);
                    return Ok(Inbound::Nothing);
                }
                let b = local.bucket(&bucket);
                // What superseded the registers about to be dropped lands first: none is dropped
                // before this replica holds something at least as new for its key.
                for (rid, w) in superseders {
                    let so = local.replicas.intern(&rid);
                    let dot = SeqRanges::from_ranges([(w.seq, w.seq)]);
                    local.merge(&b, &so, vec![w], &dot)?;
                }
                b.drop_dots(&o, &covered.difference(&held));
                if last {
                    if let Some(s) = self.buckets.get_mut(&bucket) {
                        s.held_asked.remove(&o);
                        s.held_answered.insert(o.clone());
                    }
                    self.finish_resync(local, &b);
                }
                Ok(Inbound::Nothing)
            }
            Message::Ping { wall_ms } => {
                local.check_clock(wall_ms)?;
                Ok(Inbound::Nothing)
            }
            Message::Contexts(part) => {
                self.absorb_part(local, part)?;
                Ok(Inbound::Nothing)
            }
            Message::Collected { bucket, keys } => {
                check_bucket_name(&bucket)?;
                // A stand-in takes a record's time: one too far ahead is refused like a write.
                if let Some(newest) = keys.iter().map(|k| k.hlc).max() {
                    local
                        .clock
                        .observe(newest)
                        .map_err(|e| local.skew_refused(e))?;
                }
                let records = keys
                    .into_iter()
                    .map(|k| {
                        let origin = k.origin.map(|rid| local.replicas.intern(&rid));
                        let record = CollectedRecord {
                            fingerprint: k.fingerprint,
                            hlc: k.hlc,
                            origin: origin.clone(),
                            at_ms: k.at_ms,
                        };
                        (record, origin)
                    })
                    .collect();
                if let Some(b) = local.remote_bucket(&bucket) {
                    let stand_ins = b.learn_collected(records);
                    local
                        .counters
                        .stand_in_tombstones
                        .fetch_add(stand_ins as u64, Ordering::Relaxed);
                }
                Ok(Inbound::Nothing)
            }
            Message::Members(list) => Ok(Inbound::Members(list)),
            Message::Leave => Ok(Inbound::Leave),
            Message::Hello(_) => Err(LinkError::Protocol("second hello".into())),
        }
    }

    fn apply_ops(&mut self, local: &Local, batch: OpsBatch) -> Result<(), LinkError> {
        check_bucket_name(&batch.bucket)?;
        check_writes(&batch.writes, Some(&batch.covered))?;
        let superseders: Vec<&crate::store::Write> =
            batch.superseders.iter().map(|(_, w)| w).collect();
        for w in &superseders {
            check_writes(std::slice::from_ref(*w), None)?;
        }
        let written: BTreeSet<u64> = batch.writes.iter().map(|w| w.seq).collect();
        for (key, seqs) in &batch.superseded {
            if key.is_empty() || key.len() > MAX_KEY {
                return Err(LinkError::Protocol(format!("key of {} bytes", key.len())));
            }
            if let Some(seq) = seqs
                .iter()
                .find(|&&s| !batch.covered.contains(s) || written.contains(&s))
            {
                return Err(LinkError::Protocol(format!(
                    "superseded seq {seq} outside the batch's coverage or among its writes"
                )));
            }
        }
        check_own_claim(local, &batch.bucket, &batch.origin, batch.covered.max())?;
        for (rid, w) in &batch.superseders {
            check_own_writes(local, &batch.bucket, rid, std::slice::from_ref(w))?;
        }
        if batch.origin != *self.peer.id() {
            // Writes of another origin come only as the answer to a pull, within what was pulled.
            let pulled = self
                .buckets
                .get(&batch.bucket)
                .and_then(|s| s.pulled.get(&batch.origin));
            if !pulled.is_some_and(|p| batch.covered.difference(p).is_empty()) {
                return Err(LinkError::Protocol(format!(
                    "writes of {} in bucket {} that were not pulled",
                    batch.origin, batch.bucket
                )));
            }
        }
        if let Err(e) = local.observe(batch.writes.iter().chain(superseders)) {
            let origin = local.replicas.intern(&batch.origin);
            // The sender holds what it covered: the planner must see the gap now, not after its next
            // digest (a pass before that would forget the gap, and an origin that keeps writing never
            // looks stalled).
            self.buckets
                .entry(batch.bucket.clone())
                .or_default()
                .remote_has
                .entry(origin.clone())
                .or_default()
                .union_with(&batch.covered);
            local.skew_gaps.lock().insert((batch.bucket, origin));
            self.dropped_for_skew(e);
            return Ok(());
        }
        if self.refuses(local, &batch.bucket) {
            return Ok(());
        }
        let origin = local.replicas.intern(&batch.origin);
        let Some(bucket) = local.remote_bucket(&batch.bucket) else {
            return Ok(());
        };
        // One step: the coverage is never claimed without what superseded it, and a value never
        // shows live for a moment under a touch the same batch carries.
        let superseders = batch
            .superseders
            .into_iter()
            .map(|(rid, w)| (local.replicas.intern(&rid), w))
            .collect();
        let fresh = local.merge_chunk(
            &bucket,
            &origin,
            batch.writes,
            &batch.covered,
            &batch.superseded,
            superseders,
        )?;
        if origin != self.peer {
            local
                .counters
                .catchup_writes_received
                .fetch_add(fresh as u64, Ordering::Relaxed);
        }
        let state = self.buckets.entry(batch.bucket.clone()).or_default();
        state
            .remote_has
            .entry(origin.clone())
            .or_default()
            .union_with(&batch.covered);
        if origin == self.peer {
            self.ack_due.insert(batch.bucket);
        }
        Ok(())
    }

    /// Answers a `Held` query: of the query, the dots this replica has seen and those it still
    /// stores, with the current registers of the keys whose dots it saw superseded (as a chunk carries
    /// them), so the asker holds what superseded a register before it drops it. In parts of about a
    /// chunk's size, each about a range of seqs; the last is marked.
    fn answer_held(
        &mut self,
        local: &Local,
        bucket: Arc<str>,
        origin: ReplicaId,
        query: &SeqRanges,
    ) {
        let o = local.replicas.intern(&origin);
        let Some(b) = local.existing_bucket(&bucket) else {
            // Nothing of it here: nothing seen, nothing held.
            let reply = Message::HeldReply {
                bucket,
                origin,
                covered: SeqRanges::new(),
                held: SeqRanges::new(),
                superseders: Vec::new(),
                last: true,
            };
            self.answer(reply, 64);
            return;
        };
        let store = b.store();
        let covered = query.intersect(&store.context_of(&o));
        let held = store.stored_dots(&o, &covered);
        let part = |lo: u64, hi: u64, superseders, last| Message::HeldReply {
            bucket: bucket.clone(),
            origin: origin.clone(),
            covered: covered.clamp(lo, hi),
            held: held.clamp(lo, hi),
            superseders,
            last,
        };
        let mut parts = Vec::new();
        let mut from = 1;
        let mut superseders = Vec::new();
        let mut bytes = 0;
        for &(start, end) in covered.difference(&held).ranges() {
            let mut at = start;
            while at <= end {
                let chunk = store.chunk(&o, at, end, CHUNK_LIMITS);
                let Some(&(_, hi)) = chunk.covered.ranges().last() else {
                    break;
                };
                for (so, w) in chunk.superseders {
                    bytes += w.key.len() + w.value.as_ref().map_or(0, |v| v.len()) + 40;
                    superseders.push((so.id().clone(), w));
                }
                if superseders.len() >= CHUNK_WRITES || bytes >= CHUNK_BYTES {
                    parts.push(part(from, hi, std::mem::take(&mut superseders), false));
                    bytes = 0;
                    from = hi.saturating_add(1);
                }
                match hi.checked_add(1) {
                    Some(next) => at = next,
                    None => break,
                }
            }
        }
        parts.push(part(from, u64::MAX, superseders, true));
        for p in parts {
            let bytes = match &p {
                Message::HeldReply {
                    covered,
                    held,
                    superseders,
                    ..
                } => {
                    64 + 20 * (covered.ranges().len() + held.ranges().len())
                        + superseders
                            .iter()
                            .map(|(_, w)| {
                                w.key.len() + w.value.as_ref().map_or(0, |v| v.len()) + 40
                            })
                            .sum::<usize>()
                }
                _ => 0,
            };
            self.answer(p, bytes);
        }
    }

    fn answer_fetch(&mut self, local: &Local, id: u64, bucket: Arc<str>, prefix: &str) {
        // Touch registers first: each reply is merged on its own, and a value must land under the
        // touch that may have expired it, never be shown live before it.
        let mut by_origin: BTreeMap<(bool, Origin), Vec<crate::store::Write>> = BTreeMap::new();
        if let Some(b) = local.existing_bucket(&bucket) {
            b.store().scan_writes(prefix, &mut |origin, w| {
                by_origin
                    .entry((!w.touch, origin.clone()))
                    .or_default()
                    .push(w)
            });
        }
        for ((_, origin), writes) in by_origin {
            let mut frame = Vec::new();
            let mut bytes = 0;
            for w in writes {
                let size = w.key.len() + w.value.as_ref().map_or(0, |v| v.len()) + 32;
                if !frame.is_empty() && (frame.len() >= CHUNK_WRITES || bytes + size > CHUNK_BYTES)
                {
                    let reply = Message::FetchReply {
                        id,
                        bucket: bucket.clone(),
                        origin: Some(origin.id().clone()),
                        writes: std::mem::take(&mut frame),
                        done: false,
                    };
                    self.answer(reply, bytes);
                    bytes = 0;
                }
                bytes += size;
                frame.push(w);
            }
            if !frame.is_empty() {
                let reply = Message::FetchReply {
                    id,
                    bucket: bucket.clone(),
                    origin: Some(origin.id().clone()),
                    writes: frame,
                    done: false,
                };
                self.answer(reply, bytes);
            }
        }
        let done = Message::FetchReply {
            id,
            bucket,
            origin: None,
            writes: Vec::new(),
            done: true,
        };
        self.answer(done, 64);
    }

    /// Encodes into `buf` what is due on this link: queued messages, acks, digests (when
    /// `digest_due`), this replica's writes the other end lacks and the writes it asked for, until the
    /// send budget is used. Returns whether more remain.
    pub fn fill(
        &mut self,
        local: &Local,
        buf: &mut Vec<u8>,
        digest_due: bool,
    ) -> Result<bool, LinkError> {
        while let Some((msg, owed)) = self.outbox.pop_front() {
            self.owed -= owed;
            wire::encode_frame(&msg, buf)?;
            if buf.len() >= SEND_BUDGET {
                return Ok(true);
            }
        }
        for bucket in std::mem::take(&mut self.ack_due) {
            let upto = local
                .bucket(&bucket)
                .store()
                .context_of(&self.peer)
                .contiguous();
            wire::encode_frame(&Message::Ack { bucket, upto }, buf)?;
        }
        let mut buckets = local.bucket_list();
        if digest_due {
            for b in &buckets {
                let msg = Message::Digest {
                    bucket: b.name().clone(),
                    context: local.wire_context(b),
                };
                wire::encode_frame(&msg, buf)?;
            }
        }
        if self.awaiting_contexts {
            return Ok(false);
        }
        // Start where the last pass ran out of budget, so a catch-up over many buckets walks them once
        // rather than once per send.
        if let Some(at) = self.resume_at.take() {
            let i = buckets.partition_point(|b| **b.name() < *at);
            buckets.rotate_left(i);
        }
        for bucket in buckets {
            let state = self.buckets.entry(bucket.name().clone()).or_default();
            let store = bucket.store();
            // Own writes first: the live flow.
            let mine = store.context_of(&local.me);
            let has = state.remote_has.entry(local.me.clone()).or_default();
            let missing = mine.difference(has);
            if send_ranges(
                &bucket,
                &local.me,
                &missing,
                has,
                &mut SeqRanges::new(),
                buf,
            )? {
                self.resume_at = Some(bucket.name().clone());
                return Ok(true);
            }
            // Then what the other end asked for.
            let origins: Vec<Origin> = state.requested.keys().cloned().collect();
            for origin in origins {
                let wanted = state.requested.remove(&origin).unwrap_or_default();
                let has = state.remote_has.entry(origin.clone()).or_default();
                // What went out, not how much `has` grew: the other end may ask for writes this side
                // counted as held (its pull crossed a push), and must get them once, not on every pass.
                let mut sent = SeqRanges::new();
                let full = send_ranges(&bucket, &origin, &wanted, has, &mut sent, buf)?;
                let rest = wanted.difference(&sent);
                if !rest.is_empty() {
                    state.requested.insert(origin, rest);
                }
                if full {
                    self.resume_at = Some(bucket.name().clone());
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// Checks writes from the wire: sane keys and values, and (for pushed batches) seqs inside `covered`.
fn check_writes(
    writes: &[crate::store::Write],
    covered: Option<&SeqRanges>,
) -> Result<(), LinkError> {
    for w in writes {
        if w.key.is_empty() || w.key.len() > MAX_KEY {
            return Err(LinkError::Protocol(format!("key of {} bytes", w.key.len())));
        }
        if w.seq == 0 || covered.is_some_and(|c| !c.contains(w.seq)) {
            return Err(LinkError::Protocol(format!(
                "write seq {} outside the batch's coverage",
                w.seq
            )));
        }
        if w.value.as_deref().is_some_and(|v| !value::is_valid(v)) {
            return Err(LinkError::Protocol("malformed value".into()));
        }
        if w.value
            .as_ref()
            .is_some_and(|v| v.len() > wire::MAX_VALUE + 1)
        {
            return Err(LinkError::Protocol("value over the maximum size".into()));
        }
    }
    Ok(())
}

/// Encodes the stored writes of `origin` in `ranges` as Ops frames, recording in `has` what the other
/// end will then hold and in `sent` what the frames covered. Returns true when the send budget ran out
/// first.
fn send_ranges(
    bucket: &Bucket,
    origin: &Origin,
    ranges: &SeqRanges,
    has: &mut SeqRanges,
    sent: &mut SeqRanges,
    buf: &mut Vec<u8>,
) -> Result<bool, LinkError> {
    for &(start, end) in ranges.ranges() {
        let mut from = start;
        while from <= end {
            let chunk = bucket.store().chunk(origin, from, end, CHUNK_LIMITS);
            let Some(&(_, covered_end)) = chunk.covered.ranges().last() else {
                break;
            };
            has.union_with(&chunk.covered);
            sent.union_with(&chunk.covered);
            let msg = Message::Ops(OpsBatch {
                bucket: bucket.name().clone(),
                origin: origin.id().clone(),
                covered: chunk.covered,
                writes: chunk.writes,
                superseders: chunk
                    .superseders
                    .into_iter()
                    .map(|(o, w)| (o.id().clone(), w))
                    .collect(),
                superseded: chunk.superseded,
            });
            wire::encode_frame(&msg, buf)?;
            from = covered_end + 1;
            if buf.len() >= SEND_BUDGET {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// A bucket and an origin whose writes may be missing.
type GapKey = (Arc<str>, Origin);

/// Decides, for the whole replica, which missing writes of other origins to pull and from whom.
#[derive(Default)]
pub struct PullPlanner {
    /// Requested and not yet answered, with the time the request expires.
    inflight: BTreeMap<GapKey, (SeqRanges, u64)>,
    /// What was missing at the previous planning pass.
    previous: BTreeMap<GapKey, SeqRanges>,
    /// How many seqs of the origin we held at the previous pass: while that grows, the origin's own
    /// stream is still delivering, and pulling the same writes from a third peer would fetch them twice.
    held: BTreeMap<GapKey, u64>,
}

impl PullPlanner {
    /// One planning pass over the sessions of all live links. `is_pushed(origin)` tells whether that
    /// origin is a live member that pushes its own writes to us (so only lasting gaps are pulled).
    /// Queues `Pull` messages on the chosen sessions; returns the indexes of sessions that got one.
    pub fn plan(
        &mut self,
        local: &Local,
        sessions: &mut [&mut Session],
        now_ms: u64,
        is_pushed: &dyn Fn(&Origin) -> bool,
    ) -> Vec<usize> {
        self.inflight.retain(|_, (_, deadline)| *deadline > now_ms);
        // Per (bucket, origin): what some linked peer holds and we lack, per session.
        let mut offers: BTreeMap<GapKey, Vec<(usize, SeqRanges)>> = BTreeMap::new();
        for (i, s) in sessions.iter().enumerate() {
            for (bucket, origin, has) in s.remote_contexts() {
                if *origin == local.me || local.is_stale(bucket) {
                    continue;
                }
                let mine = local.bucket(bucket).store().context_of(origin);
                let missing = has.difference(&mine);
                if !missing.is_empty() {
                    offers
                        .entry((bucket.clone(), origin.clone()))
                        .or_default()
                        .push((i, missing));
                }
            }
        }
        let mut missing_now: BTreeMap<GapKey, SeqRanges> = BTreeMap::new();
        let mut held_now: BTreeMap<GapKey, u64> = BTreeMap::new();
        let mut touched = Vec::new();
        for (key, per_session) in offers {
            let mut missing = SeqRanges::new();
            for (_, m) in &per_session {
                missing.union_with(m);
            }
            if let Some((asked, _)) = self.inflight.get(&key) {
                missing = missing.difference(asked);
            }
            if missing.is_empty() {
                continue;
            }
            let dropped_for_skew = local.skew_gaps.lock().contains(&key);
            let wanted = if is_pushed(&key.1) && !dropped_for_skew {
                // Only what was already missing at the previous pass (not what is in flight), and only
                // when nothing of that origin arrived since (its stream is stalled, not just long).
                let held = local.bucket(&key.0).store().context_of(&key.1).count();
                let progressing = self.held.get(&key).is_none_or(|&before| held > before);
                held_now.insert(key.clone(), held);
                match self.previous.get(&key) {
                    Some(before) if !progressing => missing.intersect(before),
                    _ => SeqRanges::new(),
                }
            } else {
                missing.clone()
            };
            missing_now.insert(key.clone(), missing);
            if wanted.is_empty() {
                continue;
            }
            // Ask the one session that holds most of it.
            let (best, offer) = per_session
                .iter()
                .max_by_key(|(_, m)| m.intersect(&wanted).count())
                .expect("offers are never empty");
            let ask = offer.intersect(&wanted);
            if ask.is_empty() {
                continue;
            }
            sessions[*best].queue(Message::Pull {
                bucket: key.0.clone(),
                origin: key.1.id().clone(),
                ranges: ask.clone(),
            });
            local.counters.pulls_sent.fetch_add(1, Ordering::Relaxed);
            touched.push(*best);
            self.inflight
                .entry(key)
                .and_modify(|(r, d)| {
                    r.union_with(&ask);
                    *d = now_ms + PULL_TIMEOUT_MS;
                })
                .or_insert((ask, now_ms + PULL_TIMEOUT_MS));
        }
        // A gap that closed (or that no linked peer can fill any more) needs no pulling at once.
        local
            .skew_gaps
            .lock()
            .retain(|key| missing_now.contains_key(key) || self.inflight.contains_key(key));
        self.previous = missing_now;
        self.held = held_now;
        touched.sort_unstable();
        touched.dedup();
        touched
    }
}

/// A pending fetch: the link it was asked on, the entries counted so far, and where the total goes.
type PendingFetch = (u64, usize, tokio::sync::oneshot::Sender<usize>);

/// Pending `fetch()` calls of a replica.
#[derive(Default)]
pub struct Fetches {
    next: AtomicU64,
    pending: Mutex<HashMap<u64, PendingFetch>>,
}

impl Fetches {
    /// Registers a fetch asked on link `link`.
    pub fn start(&self, link: u64) -> (u64, tokio::sync::oneshot::Receiver<usize>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending.lock().insert(id, (link, 0, tx));
        (id, rx)
    }

    /// Ends the fetches asked on link `link`, which closed: their receivers see the sender gone,
    /// since no answer can come any more.
    pub fn link_closed(&self, link: u64) {
        self.pending.lock().retain(|_, (on, _, _)| *on != link);
    }

    pub fn progress(&self, id: u64, count: usize, done: bool) {
        let mut pending = self.pending.lock();
        if done {
            if let Some((_, total, tx)) = pending.remove(&id) {
                let _ = tx.send(total + count);
            }
        } else if let Some((_, total, _)) = pending.get_mut(&id) {
            *total += count;
        }
    }

    pub fn cancel(&self, id: u64) {
        self.pending.lock().remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::Fetches;

    /// A fetch whose link closes before the answer ends at once (its receiver sees the sender gone)
    /// instead of waiting for an answer that cannot come; fetches on other links go on.
    #[test]
    fn a_fetch_ends_when_its_link_closes() {
        let fetches = Fetches::default();
        let (_, mut lost) = fetches.start(1);
        let (other, mut kept) = fetches.start(2);
        fetches.link_closed(1);
        assert!(matches!(
            lost.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        ));
        assert!(matches!(
            kept.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ));
        fetches.progress(other, 3, true);
        assert_eq!(kept.try_recv().ok(), Some(3));
    }
}
