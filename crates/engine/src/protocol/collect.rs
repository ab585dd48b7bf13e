//! Tombstone collection: a delete leaves a tombstone so that older writes arriving later lose to it;
//! it may be dropped once no older write can arrive any more.
//!
//! Two rounds, some seconds apart, over the contexts every member reported (hello and digests, never
//! what was merely sent). Round 1 records W, what every member (this one included) holds, and U, what
//! any member holds. Round 2, if the member set is unchanged and every member now holds U, drops the
//! tombstones whose dots are in W and that were older than the minimum age at round 1: every write any
//! member had seen is then in every member's context, so none can revive the key. "Older" also means
//! older than the minimum age before every member's latest report: an expired value dies at its
//! expiry, and a touch made before that extends it (rather than losing, as an older write loses to a
//! tombstone), so every such touch must be in the reports, hence everywhere, before the value goes. Each collection
//! adds U to the bucket's horizon, which hellos carry (as far as the sender covers it) and empty
//! joiners inherit. A replica that was not a member then (away, or forgotten after the member
//! timeout) finds, at its next hello with any peer, that its context lacks part of the horizon, and
//! resyncs before taking writes in (see `sync::Session::new`); the writes it brings back that a
//! collected register would have beaten meet a stand-in tombstone instead (the store remembers
//! collected registers by key for `Local::remember_collected_ms`, see `store::CollectedKeys`, and
//! every hello passes them on, so a replica that covers a collected dot knows its key's register
//! even when every replica that collected it has restarted empty since).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::hash::HashMap;

use crate::protocol::sync::{covers, Context, Local, Session};

struct Round {
    members: Vec<Arc<str>>,
    /// What any member held.
    union: Context,
    /// What every member held.
    common: Context,
    /// Entries dead before this time (ms) were older than the minimum age.
    older_than: u64,
}

#[derive(Default)]
pub struct Collector {
    rounds: HashMap<Arc<str>, Round>,
}

fn intersect(a: &Context, b: &Context) -> Context {
    a.iter()
        .filter_map(|(o, r)| {
            let i = r.intersect(b.get(o)?);
            (!i.is_empty()).then(|| (o.clone(), i))
        })
        .collect()
}

impl Collector {
    /// One round. `members` are the node ids of every current member but this one; `sessions` the
    /// sessions of the live links. Returns how many tombstones were dropped.
    pub fn round(&mut self, local: &Local, members: &[Arc<str>], sessions: &[&Session]) -> usize {
        let mut members = members.to_vec();
        members.sort();
        let linked: Vec<&Session> = members
            .iter()
            .filter_map(|m| sessions.iter().copied().find(|s| s.peer.node() == m))
            .collect();
        if linked.len() != members.len() {
            // A member we cannot hear from may hold anything: nothing is collected meanwhile.
            self.rounds.clear();
            return 0;
        }
        let min_age = local.tombstone_min_age_ms;
        let older_than = local.clock.now().physical_ms().saturating_sub(min_age);
        let mut dropped = 0;
        for bucket in local.bucket_list() {
            if local.is_stale(bucket.name()) {
                // Its registers are not yet validated against the collections it missed.
                self.rounds.remove(bucket.name());
                continue;
            }
            let store = bucket.store();
            store.forget_collected(older_than.saturating_sub(local.remember_collected_ms));
            let mine: Context = store.context().into_iter().collect();
            let empty = Context::new();
            let reports: Vec<&Context> = linked
                .iter()
                .map(|s| s.reported(bucket.name()).unwrap_or(&empty))
                .collect();
            // Only what died the minimum age before every member's latest report: a report shows
            // every write its member held then, and a touch made before an expiry (which extends a
            // life rather than losing to the death, as an older write loses to a tombstone) must be
            // in the reports, hence everywhere, before the expired value may go.
            let reported = linked
                .iter()
                .map(|s| s.reported_at(bucket.name()))
                .min()
                .unwrap_or(u64::MAX);
            let older_than = older_than.min(reported.saturating_sub(min_age));
            if let Some(prev) = self.rounds.get(bucket.name()) {
                let settled = prev.members == members
                    && covers(&[&mine], &prev.union)
                    && reports.iter().all(|r| covers(&[r], &prev.union));
                if settled {
                    let n = store.collect(prev.older_than, &mut |o, seq| {
                        prev.common.get(o).is_some_and(|r| r.contains(seq))
                    });
                    store.compact_markers(&mut |o, seq| {
                        prev.common.get(o).is_some_and(|r| r.contains(seq))
                    });
                    if n > 0 {
                        // The horizon: every dot any member held at round 1 (all hold them now). A
                        // replica whose context lacks part of it missed this collection, and one
                        // that covers it has seen every write the collected registers beat.
                        bucket.note_collected(&prev.union);
                    }
                    dropped += n;
                }
            }
            let mut union = mine.clone();
            let mut common = mine;
            for r in &reports {
                for (o, ranges) in r.iter() {
                    union.entry(o.clone()).or_default().union_with(ranges);
                }
                common = intersect(&common, r);
            }
            self.rounds.insert(
                bucket.name().clone(),
                Round {
                    members: members.clone(),
                    union,
                    common,
                    older_than,
                },
            );
        }
        local
            .counters
            .tombstones_collected
            .fetch_add(dropped as u64, Ordering::Relaxed);
        dropped
    }
}
