//! `Digests`: one link's digests, both ways. A bucket's digest (its context, and a `Horizon` frame
//! when its horizon holds dots that context does not cover) goes out on a link only when it differs
//! from the last one sent on that link, plus a refresh of a few unchanged buckets per period; each
//! round ends with a `Digested` frame, which tells the other end that the contexts it last had from
//! this replica are what this replica holds now. An idle link carries one such frame per period
//! (and pings), whatever the number of buckets.
//!
//! Why skipping an unchanged digest loses nothing: the receiver keeps the last context reported on
//! the link (per bucket, the union of every report), and a digest equal to the last one would add
//! nothing to it; what digests drove at the receiver each period that does not depend on a new
//! report (retrying a resync, taking in seqs covered bare, a refused peer's review) runs at each
//! `Digested` instead. A link reset starts new sessions at both ends, and a new hello with the
//! contexts, so nothing sent on the old link is assumed. Acks need no repeat: an ack is cumulative,
//! and a context that grew is a changed digest.
//!
//! Invariant: when the other end takes a `Digested` frame as saying its reports are current (the
//! collection rounds rely on that: a report shows every write its sender held then), they are.
//! Digests are numbered on each link, and the frame carries the sum of the numbers of the last
//! digest of each bucket sent on the link; the receiver keeps, per bucket, the highest number it
//! took, and their sum. Each of those is at most the sender's, so the sums match only when every
//! last digest arrived: a lost one (a lossy network in the simulation; TCP loses none without
//! resetting the link) leaves the reports as old as the last round that matched, until the next
//! change or refresh of that bucket. Whether a bucket changed is told by a fingerprint of its
//! encoded digest kept by the sender alone, so it never crosses the wire.
//!
//! Anti-entropy on what is stored (wire 11): a digest also carries a fingerprint of the registers its
//! sender stores (`Store::stored_print`). Coverage can be claimed without its backing by a member that
//! lies (a held reply "covered, none stored", a pull answered with coverage and no writes), and then
//! two replicas cover the same dots while one lacks a register the other stores: no sync repairs
//! that, each believing the other holds what it holds. So at each round of the other end's digests
//! that vouches its reports current, a bucket whose digest went either way since is compared: equal
//! contexts and different fingerprints, neither end stale nor refused, is a divergence, acted on
//! once it lasted `DIVERGED_AFTER_MS` over two rounds at least (an expiry swept or a tombstone
//! collected at one end before the other differs for a moment in honest runs). Then this replica
//! fetches what the other end stores in that bucket and merges it as a restore
//! (`Store::restore_registers`); the other end, asked so (a repair's fetch id carries
//! `wire::REPAIR_IDS`), does the same at once, since while writes flow one way only one end may ever see
//! the contexts equal at a round: both converge on the last-writer-wins winner per key. Invariant: a repair fetch goes out at most once per
//! `REPAIR_EVERY_MS` per bucket per link (a member reporting false fingerprints costs its victim one
//! bounded answer per interval), and never against a stale or refused peer. In an honest cluster a
//! repair changes nothing (the whole-node simulation's checker fails if one does).

use super::{Local, Session};
use crate::error::LinkError;
use crate::protocol::wire::{self, Message, REPAIR_IDS};
use crate::replication::bucket::Bucket;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Every bucket's digest goes out at least once in this many digest periods, changed or not, while
/// the replica holds at most `REFRESH_PERIODS * REFRESH_MOST` buckets.
pub const REFRESH_PERIODS: usize = 60;
/// Unchanged buckets refreshed per digest period, at most: with more than
/// `REFRESH_PERIODS * REFRESH_MOST` buckets, each is refreshed once in `buckets / REFRESH_MOST`
/// periods (313 at the default `maxBuckets` of 10,000).
pub const REFRESH_MOST: usize = 32;
/// How long (this replica's clock, ms) two replicas' contexts must stay equal while their stored
/// registers differ before it counts as a divergence: well past an expiry sweep (50 ms) and a few
/// rounds of collection (every 2 s by default), whose timing differs from replica to replica.
pub const DIVERGED_AFTER_MS: u64 = 10_000;
/// A bucket is repaired from one link at most once in this many ms.
pub const REPAIR_EVERY_MS: u64 = 60_000;

/// A fingerprint of a bucket's encoded digest frames, to tell whether they changed: two 64-bit
/// SipHash values (the standard library's, seeded alike), 128 bits in all.
fn fingerprint(frames: &[u8]) -> u128 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let half = |salt: u8| {
        let mut h = DefaultHasher::new();
        salt.hash(&mut h);
        frames.hash(&mut h);
        h.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

/// What one link knows of the digests sent and received on it.
#[derive(Default)]
pub(super) struct Digests {
    /// Digests sent on this link so far: the last one's `number`.
    count: u64,
    /// Per bucket, the fingerprint of the last digest (and `Horizon`) sent on this link, and its
    /// number.
    sent: BTreeMap<Arc<str>, (u128, u64)>,
    /// The sum of the numbers in `sent`: what each `Digested` frame carries. (Wrapping, which a link
    /// would need some 10^15 digests of 10,000 buckets to reach.)
    sent_sum: u64,
    /// Per bucket this replica holds, the highest number of a digest of it taken on this link.
    heard: BTreeMap<Arc<str>, u64>,
    /// The sum of `heard`.
    heard_sum: u64,
    /// When (this replica's clock, ms) the last `Digested` frame that matched `heard_sum` arrived:
    /// every context the other end reported was what it held then.
    current_at_ms: u64,
    /// Where the next refresh starts (the first bucket named at or after it).
    refresh_from: Option<Arc<str>>,
    /// Refresh credit: each period adds the number of buckets, and each bucket refreshed takes
    /// `REFRESH_PERIODS`.
    refresh_credit: usize,
    /// Buckets whose digest went either way since the last round of the other end's digests that
    /// vouched its reports current: compared then (`Session::compare_stored`).
    pub(super) to_compare: std::collections::BTreeSet<Arc<str>>,
}

impl Digests {
    /// Encodes one round into `buf`: the digest of every bucket in `buckets` (sorted by name) that
    /// changed since the last one sent on this link, or that the refresh reached, then `Digested`.
    pub(super) fn round(
        &mut self,
        local: &Local,
        buckets: &[Arc<Bucket>],
        buf: &mut Vec<u8>,
    ) -> Result<(), LinkError> {
        self.refresh_credit =
            (self.refresh_credit + buckets.len()).min(REFRESH_PERIODS * REFRESH_MOST);
        let refresh = (self.refresh_credit / REFRESH_PERIODS).min(buckets.len());
        self.refresh_credit -= refresh * REFRESH_PERIODS;
        let start = self
            .refresh_from
            .take()
            .map_or(0, |at| buckets.partition_point(|b| **b.name() < *at));
        let refreshed = |i: usize| (i + buckets.len() - start) % buckets.len().max(1) < refresh;
        if refresh > 0 {
            self.refresh_from = buckets
                .get((start + refresh) % buckets.len())
                .map(|b| b.name().clone());
        }
        let mut frames = Vec::new();
        for (i, bucket) in buckets.iter().enumerate() {
            let (context, beyond) = local.wire_context(bucket);
            let mut digest = Message::Digest {
                bucket: bucket.name().clone(),
                context,
                number: 0,
                stored: bucket.store().stored_print(),
            };
            frames.clear();
            wire::encode_frame(&digest, &mut frames)?;
            let horizon = (!beyond.is_empty()).then(|| Message::Horizon {
                bucket: bucket.name().clone(),
                beyond,
            });
            if let Some(msg) = &horizon {
                wire::encode_frame(msg, &mut frames)?;
            }
            let print = fingerprint(&frames);
            let last = self.sent.get(bucket.name()).copied();
            if !refreshed(i) && last.is_some_and(|(p, _)| p == print) {
                continue;
            }
            self.count += 1;
            if let Message::Digest { number, .. } = &mut digest {
                *number = self.count;
            }
            wire::encode_frame(&digest, buf)?;
            if let Some(msg) = &horizon {
                wire::encode_frame(msg, buf)?;
            }
            self.sent_sum = self
                .sent_sum
                .wrapping_sub(last.map_or(0, |(_, n)| n))
                .wrapping_add(self.count);
            self.sent.insert(bucket.name().clone(), (print, self.count));
            self.to_compare.insert(bucket.name().clone());
        }
        wire::encode_frame(
            &Message::Digested {
                reports: self.sent_sum,
            },
            buf,
        )?;
        Ok(())
    }

    /// A `Digest` of `bucket` (one this replica holds) numbered `number` was taken.
    pub(super) fn heard(&mut self, bucket: &Arc<str>, number: u64) {
        self.to_compare.insert(bucket.clone());
        let last = self.heard.entry(bucket.clone()).or_default();
        if number > *last {
            self.heard_sum = self.heard_sum.wrapping_sub(*last).wrapping_add(number);
            *last = number;
        }
    }

    /// A `Digested` frame carrying `reports` arrived at `now_ms`; returns whether it vouches that
    /// every report on the link is current.
    pub(super) fn round_heard(&mut self, reports: u64, now_ms: u64) -> bool {
        let current = reports == self.heard_sum;
        if current {
            self.current_at_ms = now_ms;
        }
        current
    }

    /// When the other end's reports were last known current (0 never).
    pub(super) fn current_at(&self) -> u64 {
        self.current_at_ms
    }
}

impl Session {
    /// After a round of the other end's digests: what its digests of a bucket did here each period
    /// besides taking the report in, for the buckets it reported on this link: a refused peer is
    /// reviewed (this replica's horizon may have moved), a stale replica retries its resync (one
    /// whose answer was dropped for skew), and seqs covered bare are taken in once this replica
    /// covers what backs them (its context may have grown through another link).
    pub(super) fn after_digests(&mut self, local: &Local) -> Result<(), LinkError> {
        let bare: Vec<Arc<str>> = local
            .bare
            .lock()
            .iter()
            .filter(|(_, per_peer)| per_peer.contains_key(&self.peer))
            .map(|(name, _)| name.clone())
            .collect();
        let due: Vec<Arc<str>> = self
            .buckets
            .iter()
            .filter(|(name, s)| {
                s.reported_at_ms > 0 && (s.refused || local.is_stale(name) || bare.contains(name))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            if let Some(bucket) = local.existing_bucket(&name) {
                self.review(local, &bucket);
                self.adopt_bare(local, &bucket)?;
            }
        }
        Ok(())
    }
}

/// A bucket whose stored registers differ from the other end's under equal contexts: since when
/// (this replica's clock, ms), over how many rounds of digests.
pub(super) struct Divergence {
    since_ms: u64,
    rounds: u32,
}

/// A context as digests compare it: per replica, the seqs covered (none left out).
pub(super) type ReportedContext =
    BTreeMap<crate::replication::replica::ReplicaId, crate::replication::ranges::SeqRanges>;

pub(super) fn reported_context(context: &wire::WireContext) -> ReportedContext {
    let mut out = ReportedContext::new();
    for (rid, ranges) in context {
        if !ranges.is_empty() {
            out.entry(rid.clone()).or_default().union_with(ranges);
        }
    }
    out
}

impl Session {
    /// After a round of the other end's digests that vouched its reports current (at `now_ms`):
    /// compares, for each bucket whose digest went either way since and each bucket found apart
    /// before, what the two ends store; a divergence that lasted is repaired (see the module
    /// comment).
    pub(super) fn compare_stored(&mut self, local: &Local, now_ms: u64) {
        let mut names = std::mem::take(&mut self.digests.to_compare);
        names.extend(self.diverging.iter().cloned());
        for name in names {
            let Some(bucket) = local.existing_bucket(&name) else {
                self.diverging.remove(&name);
                continue;
            };
            let stale = local.is_stale(&name);
            let Some(state) = self.buckets.get_mut(&name) else {
                continue;
            };
            let apart = !state.refused
                && !stale
                && state
                    .reported_stored
                    .as_ref()
                    .is_some_and(|(theirs, print)| {
                        *print != bucket.store().stored_print()
                            && *theirs == reported_context(&local.wire_context(&bucket).0)
                    });
            if !apart {
                state.diverged = None;
                self.diverging.remove(&name);
                continue;
            }
            let d = state.diverged.get_or_insert(Divergence {
                since_ms: now_ms,
                rounds: 0,
            });
            d.rounds += 1;
            let lasted = d.rounds >= 2 && now_ms.saturating_sub(d.since_ms) >= DIVERGED_AFTER_MS;
            if !(lasted && self.repair(local, &name, now_ms)) {
                self.diverging.insert(name);
            }
        }
    }

    /// The other end asked this replica's registers of `bucket` to repair a divergence it found:
    /// this replica, which may not see the contexts equal at any round while writes keep flowing
    /// one way, repairs from it too (at most once per `REPAIR_EVERY_MS`, never while either end is
    /// stale or refused), so both converge.
    pub(super) fn repair_asked(&mut self, local: &Local, bucket: &Arc<str>) {
        let now_ms = local.clock.now().physical_ms();
        self.repair(local, bucket, now_ms);
    }

    /// Asks the other end for every register it stores in `name`, to merge as a restore, unless
    /// the bucket was repaired from this link within `REPAIR_EVERY_MS`, a repair of it is under
    /// way, or either end is stale or refused there; returns whether it asked.
    fn repair(&mut self, local: &Local, name: &Arc<str>, now_ms: u64) -> bool {
        let repairing = self.repairs.values().any(|(n, _)| n == name);
        if repairing || local.is_stale(name) || local.existing_bucket(name).is_none() {
            return false;
        }
        let Some(state) = self.buckets.get_mut(name) else {
            return false;
        };
        let allowed = state
            .repaired_at_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= REPAIR_EVERY_MS);
        if state.refused || !allowed {
            return false;
        }
        state.diverged = None;
        state.repaired_at_ms = Some(now_ms);
        self.diverging.remove(name);
        local
            .counters
            .divergences
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.next_repair += 1;
        let id = REPAIR_IDS | self.next_repair;
        self.repairs.insert(id, (name.clone(), 0));
        self.queue(Message::FetchRequest {
            id,
            bucket: name.clone(),
            prefix: String::new(),
        });
        true
    }
}
