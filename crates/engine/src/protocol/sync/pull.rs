//! `PullPlanner`: which missing writes of other origins to pull, from whom, and when to ask again.
//!
//! A gap of a live, linked origin is pulled only once it has outlasted a planning period, so writes
//! still in flight are not fetched twice; a gap of a dead origin is pulled at once.

use super::{Local, Session, PULL_TIMEOUT_MS};
use crate::protocol::wire::Message;
use crate::replication::ranges::SeqRanges;
use crate::replication::replica::Origin;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A bucket and an origin whose writes may be missing.
pub(super) type GapKey = (Arc<str>, Origin);

/// Decides, for the whole replica, which missing writes of other origins to pull and from whom.
#[derive(Default)]
pub struct PullPlanner {
    /// Requested and not yet answered, with the time the request expires.
    pub(super) inflight: BTreeMap<GapKey, (SeqRanges, u64)>,
    /// What was missing at the previous planning pass.
    pub(super) previous: BTreeMap<GapKey, SeqRanges>,
    /// How many seqs of the origin we held at the previous pass: while that grows, the origin's own
    /// stream is still delivering, and pulling the same writes from a third peer would fetch them twice.
    pub(super) held: BTreeMap<GapKey, u64>,
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
