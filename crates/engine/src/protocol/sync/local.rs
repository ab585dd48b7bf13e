//! `Local`: one replica's data and identity (buckets, clock, members, horizons), everything the
//! protocol reads and writes, with no I/O.

use super::{Context, Counters, GapKey, Signals, DEFAULT_MAX_BUCKETS, REMEMBER_COLLECTED_MS};
use crate::error::LinkError;
use crate::protocol::wire::{
    BucketSummary, CollectedKey, ContextPart, Hello, MemberInfo, Message, WireContext,
    COLLECTED_PER_FRAME,
};
use crate::replication::acks::AckTracker;
use crate::replication::bucket::Bucket;
use crate::replication::clock::{Clock, TooFarAhead};
use crate::replication::ranges::SeqRanges;
use crate::replication::replica::{Origin, ReplicaId, ReplicaTable};
use crate::replication::store::Incoming;
use crate::replication::store::{MemoryStore, Merged, Write};
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// One replica's data and identity: everything the protocol reads and writes, with no I/O.
pub struct Local {
    pub(crate) id: Arc<str>,
    pub(crate) me: Origin,
    pub(crate) clock: Arc<Clock>,
    pub(crate) replicas: ReplicaTable,
    pub(crate) signals: Arc<Signals>,
    pub(crate) counters: Counters,
    pub(crate) acks: AckTracker,
    /// Remote clocks further ahead than this are refused.
    pub(crate) max_clock_skew_ms: u64,
    /// (bucket, origin) of frames dropped for skew, or pushed by a peer while it was refused for a
    /// missed collection: their sender counts them as delivered and pushes them no more, so the
    /// planner pulls these gaps without waiting for the origin's stream to stall.
    pub(super) skew_gaps: Mutex<BTreeSet<GapKey>>,
    /// Tombstones younger than this are never collected.
    pub(crate) tombstone_min_age_ms: u64,
    /// How long collected registers are remembered by key (see `store::CollectedKeys`).
    pub(crate) remember_collected_ms: u64,
    /// Buckets are persisted: their stores journal every change for the flusher.
    pub(crate) durable: bool,
    /// Past this many buckets, a bucket a peer names is not created (`remote_bucket`).
    pub(crate) max_buckets: usize,
    /// Ordered by name, so every pass over the buckets goes the same way without sorting them.
    pub(super) buckets: RwLock<BTreeMap<Arc<str>, Arc<Bucket>>>,
    /// The buckets where this replica found it missed a collection (it held data, and a peer's
    /// horizon was beyond its context): until a resync validates its registers, it takes no writes
    /// in and collects nothing there (see `Session::new`).
    pub(super) stale: Mutex<BTreeSet<Arc<str>>>,
    /// Per bucket and linked peer, the seqs (per origin) that peer's chunks covered bare, not yet
    /// in the context (see `Session::adopt_bare`); a new link to the peer's node forgets them.
    pub(super) bare: Mutex<BTreeMap<Arc<str>, BTreeMap<Origin, Context>>>,
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
            bare: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// This replica (node id and incarnation), interned.
    pub fn me(&self) -> &Origin {
        &self.me
    }

    pub fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    /// Every replica this one has heard of, interned.
    pub fn replicas(&self) -> &ReplicaTable {
        &self.replicas
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn acks(&self) -> &AckTracker {
        &self.acks
    }

    /// Collects tombstones (and expired values) as young as `ms` (by default three clock skews).
    pub fn set_tombstone_min_age_ms(&mut self, ms: u64) {
        self.tombstone_min_age_ms = ms;
    }

    /// Whether this replica missed a collection in `bucket` and has not resynced since.
    pub fn is_stale(&self, bucket: &str) -> bool {
        self.stale.lock().contains(bucket)
    }

    pub(super) fn note_stale(&self, bucket: &Arc<str>) {
        self.stale.lock().insert(bucket.clone());
    }

    /// A resync validated this replica's registers of `bucket` against a peer's `horizon`, which it
    /// adopts. (A peer whose horizon is beyond it still refuses this replica's writes until its
    /// context covers that horizon, and its collected registers, learned at its hello, answer what
    /// they beat.)
    pub(super) fn validated(&self, bucket: &Bucket, horizon: &Context) {
        bucket.note_collected(horizon);
        self.stale.lock().remove(bucket.name());
    }

    /// The bucket called `name`, created empty if this replica has not seen it yet.
    pub fn bucket(&self, name: &str) -> Arc<Bucket> {
        if let Some(b) = self.buckets.read().get(name) {
            return b.clone();
        }
        let store: Box<dyn crate::replication::store::Store> = if self.durable {
            Box::new(MemoryStore::journaled())
        } else {
            Box::new(MemoryStore::new())
        };
        self.install_bucket(name, store)
    }

    /// Adds bucket `name` with `store` (a restored one) unless the bucket exists; returns the bucket.
    pub fn install_bucket(
        &self,
        name: &str,
        store: Box<dyn crate::replication::store::Store>,
    ) -> Arc<Bucket> {
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

    /// What a digest of `bucket` says: its context, and the part of its horizon that context does
    /// not cover (`Message::Horizon`, sent when not empty).
    pub fn wire_context(&self, bucket: &Bucket) -> (WireContext, WireContext) {
        let context = bucket.store().context();
        let mine: Context = context.iter().cloned().collect();
        let beyond = bucket
            .collected()
            .into_iter()
            .filter_map(|(o, r)| {
                let rest = match mine.get(&o) {
                    Some(held) => r.difference(held),
                    None => r,
                };
                (!rest.is_empty()).then_some((o, rest))
            })
            .collect::<Vec<_>>();
        (to_wire(context), to_wire(beyond))
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

    pub(super) fn count_merged(&self, merged: Merged) {
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
    pub(super) fn skew_refused(&self, e: TooFarAhead) -> LinkError {
        self.counters
            .clock_skew_refused
            .fetch_add(1, Ordering::Relaxed);
        LinkError::ClockSkew {
            ahead_ms: e.ahead_ms,
        }
    }

    /// Merges a frame's writes already observed (`Local::observe`), so the clock cannot refuse them.
    pub(super) fn merge(
        &self,
        bucket: &Bucket,
        origin: &Origin,
        writes: Vec<Write>,
        covered: &SeqRanges,
    ) -> Result<usize, LinkError> {
        self.merge_chunk(bucket, origin, Incoming::writes(writes, covered))
    }

    /// `merge` of a whole chunk: the superseded seqs it covered and the registers it carries with
    /// them (see `Bucket::merge_chunk`).
    pub(super) fn merge_chunk(
        &self,
        bucket: &Bucket,
        origin: &Origin,
        chunk: Incoming<'_>,
    ) -> Result<usize, LinkError> {
        let merged = bucket
            .merge_chunk(origin, chunk)
            .map_err(|e| self.skew_refused(e))?;
        self.count_merged(merged);
        Ok(merged.fresh)
    }
}

/// The part of `bucket`'s horizon that `mine` (its context) covers: what this replica can vouch for
/// in a resync (it knows the fate of each of those dots). A horizon inherited from a peer that did
/// not cover it all may hold dots no replica covers any more: nobody can answer for them, so they
/// never make another replica stale.
pub(super) fn vouched(bucket: &Bucket, mine: &Context) -> Context {
    bucket
        .collected()
        .into_iter()
        .filter_map(|(o, r)| {
            let i = r.intersect(mine.get(&o)?);
            (!i.is_empty()).then_some((o, i))
        })
        .collect()
}

pub(super) fn to_wire(ctx: Vec<(Origin, SeqRanges)>) -> WireContext {
    ctx.into_iter().map(|(o, r)| (o.id().clone(), r)).collect()
}
