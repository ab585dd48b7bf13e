//! Taking in the other end's contexts and horizon, and the resync a replica runs when it finds it
//! missed a collection: the `Held` and `HeldKeys` questions, both ways.
//!
//! Invariants: a stale replica takes no writes in until every question of its resync is answered;
//! no register is dropped before what superseded it is held here, or its key was collected there;
//! an answer is taken only within the question asked on this link.

use crate::error::LinkError;
use crate::protocol::sync::{
    check_bucket_name, check_own_claims, check_own_writes, check_writes, covers, vouched, Context,
    Local, CHUNK_BYTES, CHUNK_LIMITS, CHUNK_WRITES,
};
use crate::protocol::wire::{ContextPart, Message, WireWrite};
use crate::replication::bucket::Bucket;
use crate::replication::ranges::{Seq, SeqRanges};
use crate::replication::replica::{Origin, ReplicaId};
use crate::replication::store::Write;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use super::Session;
use crate::replication::store::Incoming;
use std::sync::Arc;

impl Session {
    /// Takes one part of the other end's contexts (see `new`).
    pub(in crate::protocol::sync) fn absorb_part(
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
    pub(in crate::protocol::sync) fn review(&mut self, local: &Local, bucket: &Bucket) {
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
    pub(in crate::protocol::sync) fn finish_resync(&mut self, local: &Local, bucket: &Bucket) {
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
    pub(super) fn answered(&mut self, local: &Local, bucket: &Bucket, origin: &Origin, last: bool) {
        if !last {
            return;
        }
        if let Some(s) = self.buckets.get_mut(bucket.name()) {
            s.held_asked.remove(origin);
            s.held_answered.insert(origin.clone());
        }
        self.finish_resync(local, bucket);
    }

    /// Answers a `Held` query: of the query, the dots this replica has seen and those it still
    /// stores, with the current registers of the keys whose dots it saw superseded (as a chunk carries
    /// them), so the asker holds what superseded a register before it drops it. In parts of about a
    /// chunk's size, each about a range of seqs; the last is marked.
    pub(in crate::protocol::sync) fn answer_held(
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
        let (mut from, mut superseders, mut bytes) = (Seq::FIRST, Vec::new(), 0);
        if let Some(b) = &b {
            let store = b.store();
            for (start, end) in covered.difference(&held).ranges() {
                let mut at = start;
                while at <= end {
                    let chunk = store.chunk(&o, at, end, CHUNK_LIMITS);
                    let Some((_, hi)) = chunk.covered.ranges().next_back() else {
                        break;
                    };
                    for (so, w) in chunk.superseders {
                        bytes += w.payload_len() + 40;
                        superseders.push((so.id().clone(), w.into()));
                    }
                    if superseders.len() >= CHUNK_WRITES || bytes >= CHUNK_BYTES {
                        parts.push((from, hi, std::mem::take(&mut superseders), bytes));
                        bytes = 0;
                        from = hi.next().unwrap_or(Seq::MAX);
                    }
                    match hi.next() {
                        Some(next) => at = next,
                        None => break,
                    }
                }
            }
        }
        parts.push((from, Seq::MAX, superseders, bytes));
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
    pub(super) fn ask_held_keys(&mut self, bucket: &Bucket, origin: &Origin, dots: &SeqRanges) {
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
    pub(super) fn answer_held_keys(
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
                bytes += w.payload_len() + 40;
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
    pub(super) fn take_held_keys(
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
        local.merge_chunk(&b, &o, Incoming::registers(Vec::new(), registers))?;
        let mut dots = SeqRanges::new();
        for d in answering.values() {
            dots.union_with(d);
        }
        b.drop_dots(&o, &dots);
        self.keys_answered(local, &b, &o, answering.keys());
        Ok(())
    }

    /// After a `HeldKeysReply` answering `keys` of `origin`: they are asked no more.
    pub(super) fn keys_answered<'k>(
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
}
