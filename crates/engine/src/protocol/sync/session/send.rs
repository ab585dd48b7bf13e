//! What goes out on a link: queued messages, acks, digests, this replica's writes the other end
//! lacks, what it asked for, and answers to its fetches.
//!
//! Invariants: a pass stops at the send budget and the next one resumes where it stopped; what a
//! pass sent is recorded as held by the other end in the same step.

use crate::error::LinkError;
use crate::protocol::sync::{Local, CHUNK_BYTES, CHUNK_LIMITS, CHUNK_WRITES, SEND_BUDGET};
use crate::protocol::wire::{self, Message, OpsBatch, WireWrite};
use crate::replication::bucket::Bucket;
use crate::replication::ranges::SeqRanges;
use crate::replication::replica::Origin;
use std::collections::BTreeMap;

use super::Session;
use std::sync::Arc;

impl Session {
    pub(in crate::protocol::sync) fn answer_fetch(
        &mut self,
        local: &Local,
        id: u64,
        bucket: Arc<str>,
        prefix: &str,
    ) {
        // Touch registers first: each reply is merged on its own, and a value must land under the
        // touch that may have expired it, never be shown live before it.
        let mut by_origin: BTreeMap<(bool, Origin), Vec<crate::replication::store::Write>> =
            BTreeMap::new();
        if let Some(b) = local.existing_bucket(&bucket) {
            b.store().scan_writes(prefix, &mut |origin, w| {
                by_origin
                    .entry((!w.is_touch(), origin.clone()))
                    .or_default()
                    .push(w)
            });
        }
        for ((_, origin), writes) in by_origin {
            let mut frame = Vec::new();
            let mut bytes = 0;
            for w in writes {
                let size = w.payload_len() + 32;
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
        // Read before the pass: a write counted later wakes the writer for another.
        let writes = local.signals.local_writes();
        let idle = self.awaiting_contexts || self.walked_at == Some(writes);
        if idle && !digest_due {
            return Ok(false);
        }
        let mut buckets = local.bucket_list();
        if digest_due {
            self.digests.round(local, &buckets, buf)?;
        }
        if idle {
            return Ok(false);
        }
        self.walked_at = None;
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
        self.walked_at = Some(writes);
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
    for (start, end) in ranges.ranges() {
        let mut from = start;
        while from <= end {
            let chunk = bucket.store().chunk(origin, from, end, CHUNK_LIMITS);
            let Some((_, covered_end)) = chunk.covered.ranges().next_back() else {
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
            if buf.len() >= SEND_BUDGET {
                return Ok(true);
            }
            match covered_end.next() {
                Some(next) => from = next,
                None => break,
            }
        }
    }
    Ok(false)
}
