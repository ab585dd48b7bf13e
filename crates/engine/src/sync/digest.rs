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

use super::{Local, Session};
use crate::bucket::Bucket;
use crate::error::LinkError;
use crate::wire::{self, Message};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Every bucket's digest goes out at least once in this many digest periods, changed or not, while
/// the replica holds at most `REFRESH_PERIODS * REFRESH_MOST` buckets.
pub const REFRESH_PERIODS: usize = 60;
/// Unchanged buckets refreshed per digest period, at most: with more than
/// `REFRESH_PERIODS * REFRESH_MOST` buckets, each is refreshed once in `buckets / REFRESH_MOST`
/// periods (313 at the default `maxBuckets` of 10,000).
pub const REFRESH_MOST: usize = 32;

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
        let last = self.heard.entry(bucket.clone()).or_default();
        if number > *last {
            self.heard_sum = self.heard_sum.wrapping_sub(*last).wrapping_add(number);
            *last = number;
        }
    }

    /// A `Digested` frame carrying `reports` arrived at `now_ms`.
    pub(super) fn round_heard(&mut self, reports: u64, now_ms: u64) {
        if reports == self.heard_sum {
            self.current_at_ms = now_ms;
        }
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
