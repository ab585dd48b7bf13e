//! Taking in a batch of writes (`Message::Ops`), and the coverage a peer sent bare.
//!
//! Invariants: a batch passes the skew guard before any of its writes is applied; coverage is never
//! claimed without what superseded it; seqs covered bare wait until what backs them is held here.

use crate::error::LinkError;
use crate::protocol::sync::{
    check_bucket_name, check_own_claim, check_own_writes, check_possible, check_writes, covers,
    Context, Local,
};
use crate::protocol::wire::{OpsBatch, MAX_KEY};
use crate::replication::bucket::Bucket;
use crate::replication::ranges::{Seq, SeqRanges};
use crate::replication::replica::ReplicaId;
use crate::replication::store::Write;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use super::Session;
use crate::replication::store::Incoming;

impl Session {
    pub(in crate::protocol::sync) fn apply_ops(
        &mut self,
        local: &Local,
        batch: OpsBatch,
    ) -> Result<(), LinkError> {
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
        let written: BTreeSet<Seq> = writes.iter().map(|w| w.seq).collect();
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
        let covered = batch.covered.intersect(&backed);
        let fresh = local.merge_chunk(
            &bucket,
            &origin,
            Incoming {
                writes,
                covered: &covered,
                superseded: &batch.superseded,
                superseders,
            },
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
    pub(in crate::protocol::sync) fn adopt_bare(
        &mut self,
        local: &Local,
        bucket: &Bucket,
    ) -> Result<(), LinkError> {
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
}
