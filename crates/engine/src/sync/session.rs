//! `Session`: the protocol state of one link, both ways: what the other end holds per bucket, what to
//! push next, and how each arriving message is checked and applied.
//!
//! Invariants: every frame that carries writes passes the clock-skew guard before any of them is
//! applied; coverage sent on a link is always backed by the writes or markers it stands for.

use super::digest::Digests;
use super::{
    check_bucket_name, check_own_claim, check_own_claims, check_own_writes, check_possible,
    check_writes, covers, own_last_seq, vouched, Context, Local, CHUNK_BYTES, CHUNK_LIMITS,
    CHUNK_WRITES, SEND_BUDGET,
};
use crate::bucket::Bucket;
use crate::clock::TooFarAhead;
use crate::error::LinkError;
use crate::ranges::SeqRanges;
use crate::replica::{Origin, ReplicaId};
use crate::store::CollectedRecord;
use crate::store::Write;
use crate::wire::{
    self, ContextPart, Hello, MemberInfo, Message, OpsBatch, WireContext, WireWrite, MAX_KEY,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What a link knows about the other end's hold of one bucket.
#[derive(Default)]
pub(super) struct BucketSession {
    /// Seqs per origin the other end holds: what it said, plus what went either way on this link.
    pub(super) remote_has: BTreeMap<Origin, SeqRanges>,
    /// Seqs per origin the other end asked for (and that we hold), not yet sent.
    pub(super) requested: BTreeMap<Origin, SeqRanges>,
    /// The other end's context as it reported it (hello and digests only): what it surely holds.
    pub(super) reported: BTreeMap<Origin, SeqRanges>,
    /// Per origin, the `Held` query we asked and await (the rest of) a reply for: a reply answers
    /// within it or is a protocol error.
    pub(super) held_asked: BTreeMap<Origin, SeqRanges>,
    /// Origins whose `Held` reply came whole: a second copy of one (the simulated network duplicates
    /// frames) changes nothing.
    pub(super) held_answered: BTreeSet<Origin>,
    /// Per origin, the keys asked in `HeldKeys`: their registers of that origin a held reply reported
    /// superseded without sending what superseded them, with the dots to drop once the key's answer
    /// is in; `None` once it is.
    pub(super) held_keys: BTreeMap<Origin, BTreeMap<Arc<str>, Option<SeqRanges>>>,
    /// Per origin other than the other end's, the seqs we pulled from it: writes of another origin
    /// arrive only as answers to a pull, and cover only what was pulled.
    pub(super) pulled: BTreeMap<ReplicaId, SeqRanges>,
    /// The other end's collection horizon, from its hello.
    pub(super) horizon: Context,
    /// The part of the other end's horizon its context does not cover, as it said since
    /// (`Message::Horizon`): it knows of the collections behind those dots.
    pub(super) beyond: Context,
    /// The other end missed a collection this replica knows of: its writes are not taken in until
    /// its context covers this replica's horizon (it resynced and caught up).
    pub(super) refused: bool,
    /// A resync of this replica against the other end is under way.
    pub(super) resyncing: bool,
    /// A part of the resync's answer was dropped for skew: once the rest has come, the resync is
    /// asked again (at the next review), until this clock is within the skew of what it carries.
    pub(super) held_skewed: bool,
    /// When (this replica's clock, ms) the other end last reported its context (hello or digest).
    pub(super) reported_at_ms: u64,
}

/// What the node must do about a message the session handled.
#[derive(Debug, PartialEq)]
pub enum Inbound {
    Nothing,
    Members(Vec<MemberInfo>),
    /// The other end forgot these members for cause (`Message::Forgotten`).
    Forgotten(Vec<Arc<str>>),
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
    pub(super) buckets: BTreeMap<Arc<str>, BucketSession>,
    /// Buckets where the other end's own writes arrived since our last ack.
    pub(super) ack_due: BTreeSet<Arc<str>>,
    /// Messages queued for the writer (our contexts, pull requests, fetch requests and replies), each
    /// with the bytes it counts in `owed`.
    pub(super) outbox: VecDeque<(Message, usize)>,
    /// Bytes of answers to the other end's requests (`FetchReply`, `HeldReply`) queued and not yet
    /// sent, roughly: the link stops reading requests past `OWED_LIMIT`, so what one peer can make
    /// this replica hold for it is bounded whether or not it reads.
    pub(super) owed: usize,
    /// The other end's contexts have not all arrived: until they have, we cannot tell which of our
    /// writes it lacks, and push none.
    pub(super) awaiting_contexts: bool,
    /// The bucket where the last pass ran out of send budget; the next one starts there.
    pub(super) resume_at: Option<Arc<str>>,
    /// How far ahead (ms) of this clock the furthest write of a frame dropped for skew was stamped,
    /// since the link last reported it (`take_skewed`).
    pub(super) skewed: Option<u64>,
    /// Fetches asked on this link and not yet answered to the end: a fetch reply names one of them.
    pub(super) fetches_asked: BTreeSet<u64>,
    /// Fetches asked on this link of which a reply frame was dropped for skew: the rest of their
    /// answer is dropped too, since the frame of touch registers dropped may have expired the values
    /// that follow (they come with their touches through the sync instead).
    pub(super) skewed_fetches: BTreeSet<u64>,
    /// Touch registers of fetch answers, held until their keys' values arrive (`merge_fetched`).
    pub(super) fetch_touches: super::fetch::FetchTouches,
    /// The digests sent and received on this link (`digest`).
    pub(super) digests: Digests,
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
        let peer = local.replicas.intern(&theirs.replica);
        for per_peer in local.bare.lock().values_mut() {
            per_peer.retain(|p, _| p.node() != peer.node());
        }
        Ok(Session {
            peer,
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
            fetch_touches: Default::default(),
            digests: Digests::default(),
        })
    }

    /// Takes one part of the other end's contexts (see `new`).
    pub(super) fn absorb_part(
        &mut self,
        local: &Local,
        part: ContextPart,
    ) -> Result<(), LinkError> {
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
    pub(super) fn review(&mut self, local: &Local, bucket: &Bucket) {
        let state = self.buckets.entry(bucket.name().clone()).or_default();
        if state.refused {
            let mine: Context = bucket.store().context().into_iter().collect();
            // Its context caught up, or its horizon did: it resynced past the collection it
            // missed (two sides of a partition that each collected without the other both do,
            // and neither context can catch up while each refuses the other's writes).
            state.refused = !covers(&[&state.reported, &state.beyond], &vouched(bucket, &mine));
            if !state.refused {
                // What it pushed while refused was dropped here, yet counts as delivered there: it
                // is pushed no more, and its stream never stalls while it keeps writing.
                local
                    .skew_gaps
                    .lock()
                    .insert((bucket.name().clone(), self.peer.clone()));
            }
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
    pub(super) fn finish_resync(&mut self, local: &Local, bucket: &Bucket) {
        let state = self.buckets.entry(bucket.name().clone()).or_default();
        let keys_answered = state
            .held_keys
            .values()
            .all(|keys| keys.values().all(Option::is_none));
        if state.resyncing && state.held_asked.is_empty() && keys_answered {
            state.resyncing = false;
            if !std::mem::take(&mut state.held_skewed) {
                local.validated(bucket, &state.horizon);
            }
        }
    }

    /// After a part of the answer about `origin`'s registers: on its `last`, the question is closed.
    /// Every earlier part was taken by then: a session is one link, one TCP connection read in
    /// order, whose other end queues all the parts of an answer at once, in order; a broken link's
    /// frames never reach the session of the next (a new session asks its own questions); and a
    /// question about an origin is asked again on a link only after the last part of the one
    /// before closed it (`resyncing`). A part arriving after its question closed can only be a
    /// second copy (`held_answered`), which no real link makes
    /// (`a_held_answer_in_several_parts_drops_what_each_part_reports_superseded`).
    fn answered(&mut self, local: &Local, bucket: &Bucket, origin: &Origin, last: bool) {
        if !last {
            return;
        }
        if let Some(s) = self.buckets.get_mut(bucket.name()) {
            s.held_asked.remove(origin);
            s.held_answered.insert(origin.clone());
        }
        self.finish_resync(local, bucket);
    }

    /// Whether writes arriving on this link for `bucket` are left out: this replica is stale there,
    /// or the other end is.
    pub(super) fn refuses(&self, local: &Local, bucket: &str) -> bool {
        local.is_stale(bucket) || self.buckets.get(bucket).is_some_and(|s| s.refused)
    }

    pub(super) fn absorb_context(&mut self, local: &Local, bucket: Arc<str>, ctx: &WireContext) {
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

    /// When (this replica's clock, ms) the other end's report of its context of `bucket` was last
    /// known current: its last digest of it, or a later round of digests that vouched for it
    /// (`Message::Digested`); 0 never.
    pub fn reported_at(&self, bucket: &str) -> u64 {
        self.buckets
            .get(bucket)
            .map_or(0, |b| match b.reported_at_ms {
                0 => 0,
                at => at.max(self.digests.current_at()),
            })
    }

    /// How far ahead of this clock (ms) writes this link brought were stamped, if a frame of them was
    /// dropped for skew since the last call: the link reports it (`ESKEW`).
    pub fn take_skewed(&mut self) -> Option<u64> {
        self.skewed.take()
    }

    pub(super) fn dropped_for_skew(&mut self, e: TooFarAhead) {
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
    pub(super) fn answer(&mut self, msg: Message, bytes: usize) {
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
    pub(super) fn remote_contexts(&self) -> impl Iterator<Item = (&Arc<str>, &Origin, &SeqRanges)> {
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
            Message::Digest {
                bucket,
                context,
                number,
            } => {
                check_bucket_name(&bucket)?;
                check_own_claims(local, &bucket, &context)?;
                if let Some(b) = local.remote_bucket(&bucket) {
                    self.digests.heard(&bucket, number);
                    self.absorb_context(local, bucket, &context);
                    self.review(local, &b);
                    self.adopt_bare(local, &b)?;
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
                let writes: Vec<Write> = writes.into_iter().map(Write::from).collect();
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
                            check_possible(local, e)?;
                            self.dropped_for_skew(e);
                            self.skewed_fetches.insert(id);
                        }
                    }
                    if self.skewed_fetches.contains(&id) {
                        count = 0;
                    } else if !self.refuses(local, &bucket) {
                        let origin = local.replicas.intern(&origin);
                        if let Some(b) = local.remote_bucket(&bucket) {
                            self.merge_fetched(local, &b, id, &origin, writes)?;
                        }
                    }
                } else if count > 0 {
                    return Err(LinkError::Protocol(
                        "fetched writes without an origin".into(),
                    ));
                }
                if done {
                    self.skewed_fetches.remove(&id);
                    self.merge_fetched_touches(local, &bucket, id)?;
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
                let superseders: Vec<(ReplicaId, Write)> = superseders
                    .into_iter()
                    .map(|(rid, w)| (rid, w.into()))
                    .collect();
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
                let b = local.bucket(&bucket);
                if let Err(e) = local.observe(superseders.iter().map(|(_, w)| w)) {
                    check_possible(local, e)?;
                    // Dropped whole, as any frame stamped past this clock's ceiling: nothing is
                    // dropped here without what superseded it, and the question is asked again.
                    self.dropped_for_skew(e);
                    if let Some(s) = self.buckets.get_mut(&bucket) {
                        s.held_skewed = true;
                    }
                    self.answered(local, &b, &o, last);
                    return Ok(Inbound::Nothing);
                }
                // What superseded the registers about to be dropped lands first: none is dropped
                // before this replica holds something at least as new for its key. In one step, as
                // a chunk's (each covering its own dot), touches first: a value a touch expired
                // there is never shown live here for a moment.
                let superseders = superseders
                    .into_iter()
                    .map(|(rid, w)| (local.replicas.intern(&rid), w))
                    .collect();
                local.merge_chunk(&b, &o, Vec::new(), &SeqRanges::new(), &[], superseders)?;
                // What is still stored of what it reports superseded came without a superseder (it
                // compacted the marker naming the key, or holds nothing of the key any more):
                // asked again by key, and dropped only with the answer, after what it holds there.
                let unbacked = b.store().stored_dots(&o, &covered.difference(&held));
                self.ask_held_keys(&b, &o, &unbacked);
                self.answered(local, &b, &o, last);
                Ok(Inbound::Nothing)
            }
            Message::HeldKeys {
                bucket,
                origin,
                keys,
            } => {
                check_bucket_name(&bucket)?;
                if let Some(k) = keys.iter().find(|k| k.is_empty() || k.len() > MAX_KEY) {
                    return Err(LinkError::Protocol(format!("key of {} bytes", k.len())));
                }
                self.answer_held_keys(local, bucket, origin, keys);
                Ok(Inbound::Nothing)
            }
            Message::HeldKeysReply {
                bucket,
                origin,
                keys,
                registers,
            } => {
                check_bucket_name(&bucket)?;
                self.take_held_keys(local, &bucket, &origin, keys, registers)?;
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
                // A stand-in takes a record's time, so a record past this clock's ceiling is
                // dropped, as a write stamped that far ahead is: its time is a third's (the
                // collector's), and only the sender's own wall clock may refuse the link.
                let (keys, ahead): (Vec<_>, Vec<_>) = keys
                    .into_iter()
                    .partition(|k| local.clock.check(k.hlc).is_ok());
                if !ahead.is_empty() {
                    local
                        .counters
                        .clock_skew_refused
                        .fetch_add(ahead.len() as u64, Ordering::Relaxed);
                }
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
            Message::Horizon { bucket, beyond } => {
                check_bucket_name(&bucket)?;
                check_own_claims(local, &bucket, &beyond)?;
                if let Some(b) = local.remote_bucket(&bucket) {
                    let state = self.buckets.entry(bucket).or_default();
                    for (rid, ranges) in &beyond {
                        let origin = local.replicas.intern(rid);
                        state.beyond.entry(origin).or_default().union_with(ranges);
                    }
                    self.review(local, &b);
                }
                Ok(Inbound::Nothing)
            }
            Message::Digested { reports } => {
                let now = local.clock.now().physical_ms();
                self.digests.round_heard(reports, now);
                self.after_digests(local)?;
                Ok(Inbound::Nothing)
            }
            Message::Members(list) => Ok(Inbound::Members(list)),
            Message::Forgotten(list) => Ok(Inbound::Forgotten(list)),
            Message::Leave => Ok(Inbound::Leave),
            Message::Hello(_) => Err(LinkError::Protocol("second hello".into())),
        }
    }

    pub(super) fn apply_ops(&mut self, local: &Local, batch: OpsBatch) -> Result<(), LinkError> {
        check_bucket_name(&batch.bucket)?;
        let writes: Vec<Write> = batch.writes.into_iter().map(Write::from).collect();
        let remote_superseders: Vec<(ReplicaId, Write)> = batch
            .superseders
            .into_iter()
            .map(|(rid, w)| (rid, w.into()))
            .collect();
        check_writes(&writes, Some(&batch.covered))?;
        let superseders: Vec<&Write> = remote_superseders.iter().map(|(_, w)| w).collect();
        for w in &superseders {
            check_writes(std::slice::from_ref(*w), None)?;
        }
        let written: BTreeSet<u64> = writes.iter().map(|w| w.seq).collect();
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
        for (rid, w) in &remote_superseders {
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
        if let Err(e) = local.observe(writes.iter().chain(superseders)) {
            check_possible(local, e)?;
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
        // shows live for a moment under a touch the same batch carries. Seqs covered bare wait
        // until this replica covers what the sender reported (`adopt_bare`).
        let mut backed = SeqRanges::new();
        for seq in written.iter().copied().chain(
            batch
                .superseded
                .iter()
                .flat_map(|(_, seqs)| seqs.iter().copied()),
        ) {
            backed.insert(seq);
        }
        let bare = batch.covered.difference(&backed);
        let superseders = remote_superseders
            .into_iter()
            .map(|(rid, w)| (local.replicas.intern(&rid), w))
            .collect();
        let fresh = local.merge_chunk(
            &bucket,
            &origin,
            writes,
            &batch.covered.intersect(&backed),
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
        let bare = bare.difference(&bucket.store().context_of(&origin));
        if !bare.is_empty() {
            local
                .bare
                .lock()
                .entry(batch.bucket.clone())
                .or_default()
                .entry(self.peer.clone())
                .or_default()
                .entry(origin.clone())
                .or_default()
                .union_with(&bare);
        }
        self.adopt_bare(local, &bucket)?;
        if origin == self.peer {
            self.ack_due.insert(batch.bucket);
        }
        Ok(())
    }

    /// Takes into this replica's context the seqs the other end covered bare (`Local::bare`) once
    /// this replica covers what backs them, counting what every link covered bare: for those under
    /// the other end's horizon, that horizon (every member held each of its dots at a collection,
    /// so what beat one is in it too, or was held by every member at a later one, this replica
    /// among them); for the rest, everything the other end reported holding, once it reported
    /// those of other origins too (a marker is compacted only once every member holds the
    /// superseder, so a member covered it already and a later joiner hears a hello sent after;
    /// a seq of another origin that end holds bare it took only once covering what backs it, which
    /// its next report shows). Taken early by a replica that then loses every holder of the
    /// superseder before pulling it, the coverage would claim a write it never shows while a
    /// replica back from away shows it, with equal contexts.
    pub(super) fn adopt_bare(&mut self, local: &Local, bucket: &Bucket) -> Result<(), LinkError> {
        let Some(state) = self.buckets.get(bucket.name()) else {
            return Ok(());
        };
        let take = {
            let mut all = local.bare.lock();
            let Some(per_peer) = all.get_mut(bucket.name()) else {
                return Ok(());
            };
            if !per_peer.contains_key(&self.peer) {
                return Ok(());
            }
            let mut known: Context = bucket.store().context().into_iter().collect();
            // Seqs covered bare by any peer count as covered here: each waits for what backs it
            // on its own link, and a peer's context often holds what this one's bare seqs wait on.
            for ctx in per_peer.values() {
                for (o, r) in ctx {
                    known.entry(o.clone()).or_default().union_with(r);
                }
            }
            let Some(ours) = per_peer.get_mut(&self.peer) else {
                return Ok(());
            };
            let under: Context = ours
                .iter()
                .filter_map(|(o, r)| {
                    let i = r.intersect(state.horizon.get(o)?);
                    (!i.is_empty()).then(|| (o.clone(), i))
                })
                .collect();
            // The other end's own seqs need no report of their own (see above).
            let mut relayed = ours.clone();
            relayed.remove(&self.peer);
            let take = if covers(&[&state.reported], &relayed) && covers(&[&known], &state.reported)
            {
                std::mem::take(ours)
            } else if !under.is_empty() && covers(&[&known], &state.horizon) {
                for (o, r) in &under {
                    if let Some(rest) = ours.get_mut(o) {
                        *rest = rest.difference(r);
                    }
                }
                ours.retain(|_, r| !r.is_empty());
                under
            } else {
                return Ok(());
            };
            per_peer.retain(|_, c| !c.is_empty());
            take
        };
        for (origin, seqs) in take {
            local.merge(bucket, &origin, Vec::new(), &seqs)?;
        }
        Ok(())
    }

    /// Answers a `Held` query: of the query, the dots this replica has seen and those it still
    /// stores, with the current registers of the keys whose dots it saw superseded (as a chunk carries
    /// them), so the asker holds what superseded a register before it drops it. In parts of about a
    /// chunk's size, each about a range of seqs; the last is marked.
    pub(super) fn answer_held(
        &mut self,
        local: &Local,
        bucket: Arc<str>,
        origin: ReplicaId,
        query: &SeqRanges,
    ) {
        let o = local.replicas.intern(&origin);
        let b = local.existing_bucket(&bucket);
        // Without the bucket here: nothing seen, nothing held, one empty part.
        let (covered, held) = b.as_ref().map_or_else(Default::default, |b| {
            let covered = query.intersect(&b.store().context_of(&o));
            let held = b.store().stored_dots(&o, &covered);
            (covered, held)
        });
        // Parts as (first seq, last seq, superseders, their bytes).
        let mut parts = Vec::new();
        let (mut from, mut superseders, mut bytes) = (1, Vec::new(), 0);
        if let Some(b) = &b {
            let store = b.store();
            for &(start, end) in covered.difference(&held).ranges() {
                let mut at = start;
                while at <= end {
                    let chunk = store.chunk(&o, at, end, CHUNK_LIMITS);
                    let Some(&(_, hi)) = chunk.covered.ranges().last() else {
                        break;
                    };
                    for (so, w) in chunk.superseders {
                        bytes += w.key.len() + w.value.as_ref().map_or(0, |v| v.len()) + 40;
                        superseders.push((so.id().clone(), w.into()));
                    }
                    if superseders.len() >= CHUNK_WRITES || bytes >= CHUNK_BYTES {
                        parts.push((from, hi, std::mem::take(&mut superseders), bytes));
                        bytes = 0;
                        from = hi.saturating_add(1);
                    }
                    match hi.checked_add(1) {
                        Some(next) => at = next,
                        None => break,
                    }
                }
            }
        }
        parts.push((from, u64::MAX, superseders, bytes));
        let count = parts.len();
        for (i, (lo, hi, superseders, bytes)) in parts.into_iter().enumerate() {
            let covered = covered.clamp(lo, hi);
            let held = held.clamp(lo, hi);
            let bytes = 64 + 20 * (covered.ranges().len() + held.ranges().len()) + bytes;
            let reply = Message::HeldReply {
                bucket: bucket.clone(),
                origin: origin.clone(),
                covered,
                held,
                superseders,
                last: i + 1 == count,
            };
            self.answer(reply, bytes);
        }
    }

    /// Asks the other end, by key, what it stores now for the keys of `dots` (this replica's
    /// registers of `origin` it reported superseded without sending what superseded them), in parts
    /// of about a chunk's size.
    fn ask_held_keys(&mut self, bucket: &Bucket, origin: &Origin, dots: &SeqRanges) {
        if dots.is_empty() {
            return;
        }
        let found = bucket.store().keys_of_dots(origin, dots);
        let state = self.buckets.entry(bucket.name().clone()).or_default();
        let asked = state.held_keys.entry(origin.clone()).or_default();
        let mut fresh = BTreeSet::new();
        for (key, seq) in found {
            let pending = asked.entry(key.clone()).or_default();
            pending.get_or_insert_with(SeqRanges::new).insert(seq);
            fresh.insert(key);
        }
        let (mut keys, mut bytes) = (Vec::new(), 0);
        let count = fresh.len();
        for (i, key) in fresh.into_iter().enumerate() {
            bytes += key.len() + 8;
            keys.push(key);
            if keys.len() >= CHUNK_WRITES || bytes >= CHUNK_BYTES || i + 1 == count {
                let ask = Message::HeldKeys {
                    bucket: bucket.name().clone(),
                    origin: origin.id().clone(),
                    keys: std::mem::take(&mut keys),
                };
                self.outbox.push_back((ask, 0));
                bytes = 0;
            }
        }
    }

    /// Answers a `HeldKeys` question: every register stored now for each key, in frames of about a
    /// chunk's size, each naming the keys it answers.
    fn answer_held_keys(
        &mut self,
        local: &Local,
        bucket: Arc<str>,
        origin: ReplicaId,
        keys: Vec<Arc<str>>,
    ) {
        let registers = local
            .existing_bucket(&bucket)
            .map(|b| b.store().ship_registers(&keys))
            .unwrap_or_default();
        let mut by_key: BTreeMap<Arc<str>, Vec<(Origin, Write)>> = BTreeMap::new();
        for (o, w) in registers {
            by_key.entry(w.key.clone()).or_default().push((o, w));
        }
        let (mut frame_keys, mut frame, mut bytes) = (Vec::new(), Vec::new(), 0);
        let count = keys.len();
        for (i, key) in keys.into_iter().enumerate() {
            bytes += key.len() + 8;
            for (o, w) in by_key.remove(&key).unwrap_or_default() {
                bytes += w.key.len() + w.value.as_ref().map_or(0, |v| v.len()) + 40;
                frame.push((o.id().clone(), w.into()));
            }
            frame_keys.push(key);
            if frame_keys.len() >= CHUNK_WRITES || bytes >= CHUNK_BYTES || i + 1 == count {
                let reply = Message::HeldKeysReply {
                    bucket: bucket.clone(),
                    origin: origin.clone(),
                    keys: std::mem::take(&mut frame_keys),
                    registers: std::mem::take(&mut frame),
                };
                self.answer(reply, 64 + bytes);
                bytes = 0;
            }
        }
    }

    /// Takes a `HeldKeysReply`: applies the registers the other end stores for the keys it answers
    /// (touches first, in one step, as a chunk's superseders), then drops this replica's registers
    /// it reported superseded under those keys: none is dropped before what superseded it is held
    /// here, or it was collected there.
    fn take_held_keys(
        &mut self,
        local: &Local,
        bucket: &Arc<str>,
        origin: &ReplicaId,
        keys: Vec<Arc<str>>,
        registers: Vec<(ReplicaId, WireWrite)>,
    ) -> Result<(), LinkError> {
        let o = local.replicas.intern(origin);
        let Some(asked) = self.buckets.get(bucket).and_then(|s| s.held_keys.get(&o)) else {
            return Err(LinkError::Protocol(
                "a held keys reply nobody asked for".into(),
            ));
        };
        let keys: BTreeSet<Arc<str>> = keys.into_iter().collect();
        if keys.iter().any(|k| !asked.contains_key(k)) {
            return Err(LinkError::Protocol(
                "a held keys reply beyond the keys asked".into(),
            ));
        }
        let registers: Vec<(ReplicaId, Write)> =
            registers.into_iter().map(|(r, w)| (r, w.into())).collect();
        for (rid, w) in &registers {
            if !keys.contains(&w.key) {
                return Err(LinkError::Protocol(
                    "a register of a key the held keys reply does not answer".into(),
                ));
            }
            check_writes(std::slice::from_ref(w), None)?;
            check_own_writes(local, bucket, rid, std::slice::from_ref(w))?;
        }
        // Keys answered before (a second copy of a frame) change nothing.
        let answering: BTreeMap<Arc<str>, SeqRanges> = keys
            .into_iter()
            .filter_map(|k| asked.get(&k).cloned().flatten().map(|d| (k, d)))
            .collect();
        if answering.is_empty() {
            return Ok(());
        }
        let b = local.bucket(bucket);
        if let Err(e) = local.observe(registers.iter().map(|(_, w)| w)) {
            // Dropped whole, as a held reply stamped past this clock's ceiling: nothing is dropped
            // here, and the resync is asked again once the rest of its answer has come.
            self.dropped_for_skew(e);
            if let Some(s) = self.buckets.get_mut(bucket) {
                s.held_skewed = true;
            }
            self.keys_answered(local, &b, &o, answering.keys());
            return Ok(());
        }
        let registers = registers
            .into_iter()
            .filter(|(_, w)| answering.contains_key(&w.key))
            .map(|(rid, w)| (local.replicas.intern(&rid), w))
            .collect();
        local.merge_chunk(&b, &o, Vec::new(), &SeqRanges::new(), &[], registers)?;
        let mut dots = SeqRanges::new();
        for d in answering.values() {
            dots.union_with(d);
        }
        b.drop_dots(&o, &dots);
        self.keys_answered(local, &b, &o, answering.keys());
        Ok(())
    }

    /// After a `HeldKeysReply` answering `keys` of `origin`: they are asked no more.
    fn keys_answered<'k>(
        &mut self,
        local: &Local,
        bucket: &Bucket,
        origin: &Origin,
        keys: impl Iterator<Item = &'k Arc<str>>,
    ) {
        if let Some(asked) = self
            .buckets
            .get_mut(bucket.name())
            .and_then(|s| s.held_keys.get_mut(origin))
        {
            for k in keys {
                asked.insert(k.clone(), None);
            }
        }
        self.finish_resync(local, bucket);
    }

    pub(super) fn answer_fetch(&mut self, local: &Local, id: u64, bucket: Arc<str>, prefix: &str) {
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
                frame.push(w.into());
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
            // Its writes covered bare count as taken: the other end's own write it overwrote
            // before sending is acknowledged with the write that overwrote it, as it always was.
            let mut taken = local.bucket(&bucket).store().context_of(&self.peer);
            if let Some(bare) = local
                .bare
                .lock()
                .get(&bucket)
                .and_then(|m| m.get(&self.peer))
                .and_then(|c| c.get(&self.peer))
            {
                taken.union_with(bare);
            }
            let upto = taken.contiguous();
            wire::encode_frame(&Message::Ack { bucket, upto }, buf)?;
        }
        let mut buckets = local.bucket_list();
        if digest_due {
            self.digests.round(local, &buckets, buf)?;
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

/// Encodes the stored writes of `origin` in `ranges` as Ops frames, recording in `has` what the other
/// end will then hold and in `sent` what the frames covered. Returns true when the send budget ran out
/// first.
pub(super) fn send_ranges(
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
                writes: chunk.writes.into_iter().map(WireWrite::from).collect(),
                superseders: chunk
                    .superseders
                    .into_iter()
                    .map(|(o, w)| (o.id().clone(), w.into()))
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
