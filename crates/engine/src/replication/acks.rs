//! Write acknowledgement levels: which peers have applied a local write, and when a waiting write's
//! level ('one', 'majority', 'all') is met or its time is up.
//!
//! How many peers 'majority' needs is decided by the caller, from the cluster size membership counts
//! (`Members::cluster_size`: members known now, members forgotten less than a member timeout ago, and
//! configured seeds); here it is a count of other peers. 'all' needs every peer connected when the write
//! was made and never fewer than 'majority' does, so it is never the weaker of the two.
//!
//! Peers acknowledge cumulatively per bucket (an `Ack` after each batch, and every digest), so a waiter
//! is met by the first ack whose `upto` reaches its seq. What each peer acknowledged is remembered, so a
//! write registered after its ack already arrived is met at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::hash::{HashMap, HashSet};
use crate::replication::ranges::Seq;
use parking_lot::Mutex;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckLevel {
    /// Applied here (nothing to wait for).
    Local,
    /// Applied by at least one other peer.
    One,
    /// Applied by a majority of the cluster (see `Members::cluster_size`), this one counted.
    Majority,
    /// Applied by every peer connected when the write was made (a peer that goes down stops counting),
    /// and by at least as many as `Majority` needs.
    All,
}

impl AckLevel {
    /// Every level, in the order `AckTracker::latency` reports them.
    pub const ALL: [AckLevel; 4] = [
        AckLevel::Local,
        AckLevel::One,
        AckLevel::Majority,
        AckLevel::All,
    ];

    /// The name JavaScript gives the level (`options.ack`).
    pub fn as_str(self) -> &'static str {
        match self {
            AckLevel::Local => "local",
            AckLevel::One => "one",
            AckLevel::Majority => "majority",
            AckLevel::All => "all",
        }
    }
}

/// Upper bounds (ms) of the buckets of the acknowledgement latency histogram; one more bucket counts
/// the writes slower than the last.
pub const LATENCY_BOUNDS_MS: [u64; 13] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000,
];

/// How long writes that waited for a level took to meet it, for one level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyStats {
    pub level: AckLevel,
    /// Writes per bucket of `LATENCY_BOUNDS_MS` (not cumulative), and past the last bound.
    pub counts: Vec<u64>,
    /// Their waits added up, in microseconds.
    pub sum_us: u64,
}

#[derive(Default)]
struct Latency {
    counts: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    sum_us: AtomicU64,
}

/// How a waiting write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckEnd {
    /// The level was met (and, in strict durability, the write is on disk).
    Met,
    /// The timeout passed first.
    TimedOut,
    /// The flush that was to put it on disk failed (it stays owed to the disk and is retried).
    DiskFailed,
}

/// How a waiting write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckOutcome {
    pub ticket: u64,
    pub end: AckEnd,
    /// Ids of the other peers that had applied the write.
    pub acked: Vec<String>,
}

/// The result of registering a write.
#[derive(Debug, PartialEq, Eq)]
pub enum Registered {
    /// The level is already met; these peers had applied it.
    Met(Vec<String>),
    /// Wait for an `AckOutcome` with this ticket.
    Pending(u64),
}

/// What a waiting write needs: these peers, and at least this many other peers in all.
struct Need {
    nodes: HashSet<Arc<str>>,
    count: usize,
}

struct Waiter {
    bucket: Arc<str>,
    seq: Seq,
    need: Need,
    acked: Vec<Arc<str>>,
    deadline_ms: u64,
    /// In strict durability: the flush generation that must be on disk first.
    flush: Option<u64>,
    level: AckLevel,
    registered: Instant,
}

impl Waiter {
    fn met(&self) -> bool {
        self.need.nodes.is_empty() && self.acked.len() >= self.need.count && self.flush.is_none()
    }

    fn add(&mut self, node: &Arc<str>) {
        if !self.acked.iter().any(|a| a == node) {
            self.acked.push(node.clone());
        }
        self.need.nodes.remove(node);
    }

    fn outcome(self, ticket: u64, end: AckEnd) -> AckOutcome {
        AckOutcome {
            ticket,
            end,
            acked: self.acked.iter().map(|a| a.to_string()).collect(),
        }
    }
}

#[derive(Default)]
struct Inner {
    next: u64,
    waiters: HashMap<u64, Waiter>,
    /// Per bucket, seq -> tickets waiting on it.
    by_seq: HashMap<Arc<str>, BTreeMap<Seq, Vec<u64>>>,
    /// Per (bucket, peer), the highest seq it acknowledged.
    acked_upto: HashMap<(Arc<str>, Arc<str>), Seq>,
}

pub struct AckTracker {
    inner: Mutex<Inner>,
    /// Per level (`AckLevel::ALL` order): how long writes that met it waited.
    latency: [Latency; AckLevel::ALL.len()],
    /// Writes whose time was up before their level was met.
    timeouts: AtomicU64,
    outcomes: Mutex<Option<mpsc::UnboundedSender<AckOutcome>>>,
    /// Generation of the next flush to disk; a write journaled now is on disk once it is flushed.
    flush_generation: std::sync::atomic::AtomicU64,
    flushed: std::sync::atomic::AtomicU64,
}

impl Default for AckTracker {
    fn default() -> Self {
        AckTracker {
            inner: Mutex::default(),
            latency: Default::default(),
            timeouts: AtomicU64::new(0),
            outcomes: Mutex::default(),
            flush_generation: std::sync::atomic::AtomicU64::new(1),
            flushed: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl AckTracker {
    pub fn new() -> Self {
        AckTracker::default()
    }

    /// Where outcomes of pending writes are delivered from now on.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<AckOutcome> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.outcomes.lock() = Some(tx);
        rx
    }

    /// Ends waiter `w` (ticket `ticket`) with `end`, counting how long it waited or that it timed out.
    fn finish(&self, w: Waiter, ticket: u64, end: AckEnd) -> AckOutcome {
        match end {
            AckEnd::Met => self.record(w.level, w.registered),
            AckEnd::TimedOut => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            AckEnd::DiskFailed => {}
        }
        w.outcome(ticket, end)
    }

    fn record(&self, level: AckLevel, since: Instant) {
        let waited = since.elapsed();
        // Prometheus buckets count what is at most their bound (`le`).
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|&b| waited <= std::time::Duration::from_millis(b))
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        let l = &self.latency[level as usize];
        l.counts[bucket].fetch_add(1, Ordering::Relaxed);
        l.sum_us
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
    }

    /// How long writes that waited for each level took to meet it (writes with `ack: 'local'` and
    /// nothing to wait for are not counted).
    pub fn latency(&self) -> Vec<LatencyStats> {
        AckLevel::ALL
            .iter()
            .map(|&level| {
                let l = &self.latency[level as usize];
                LatencyStats {
                    level,
                    counts: l.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
                    sum_us: l.sum_us.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Writes whose time was up before their ack level was met.
    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    fn deliver(&self, outcomes: Vec<AckOutcome>) {
        if outcomes.is_empty() {
            return;
        }
        if let Some(tx) = &*self.outcomes.lock() {
            for o in outcomes {
                let _ = tx.send(o);
            }
        }
    }

    /// The flush generation a write journaled before this call is part of.
    pub fn flush_generation(&self) -> u64 {
        self.flush_generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Called by the flusher before it drains: the generation that drain will put on disk.
    pub fn next_flush_generation(&self) -> u64 {
        self.flush_generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
    }

    /// Every write of generation `generation` or earlier is on disk.
    pub fn on_flushed(&self, generation: u64) {
        self.flushed
            .fetch_max(generation, std::sync::atomic::Ordering::AcqRel);
        self.end_where(AckEnd::Met, |w| {
            if w.flush.is_some_and(|g| g <= generation) {
                w.flush = None;
            }
            w.met()
        });
    }

    /// The flush of `generation` failed: writes waiting for it, or for an earlier one, end with
    /// `AckEnd::DiskFailed` (a later flush may still store them; nothing says it did).
    pub fn on_flush_failed(&self, generation: u64) {
        self.end_where(AckEnd::DiskFailed, |w| {
            w.flush.is_some_and(|g| g <= generation)
        });
    }

    /// The highest seq of `bucket` that `node` acknowledged.
    pub fn acked_upto(&self, bucket: &str, node: &str) -> Seq {
        let inner = self.inner.lock();
        inner
            .acked_upto
            .iter()
            .find(|((b, n), _)| &**b == bucket && &**n == node)
            .map_or(Seq::ZERO, |(_, &upto)| upto)
    }

    /// Registers local write `seq` of `bucket` waiting for `level` (and, with `flush`, for that flush
    /// generation to be on disk). `connected` are the peers linked now; `others` the size of the
    /// cluster less this peer.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &self,
        bucket: &Arc<str>,
        seq: Seq,
        level: AckLevel,
        deadline_ms: u64,
        connected: Vec<Arc<str>>,
        others: usize,
        flush: Option<u64>,
    ) -> Registered {
        let flush = flush.filter(|g| *g > self.flushed.load(std::sync::atomic::Ordering::Acquire));
        // A majority of (others + this one), this one counted.
        let majority = others.div_ceil(2);
        let count = |count| Need {
            nodes: HashSet::default(),
            count,
        };
        let need = match level {
            AckLevel::Local if flush.is_none() => return Registered::Met(Vec::new()),
            AckLevel::Local => count(0),
            AckLevel::One => count(1),
            AckLevel::Majority => count(majority),
            AckLevel::All => Need {
                nodes: connected.into_iter().collect(),
                count: majority,
            },
        };
        let mut inner = self.inner.lock();
        let mut waiter = Waiter {
            bucket: bucket.clone(),
            seq,
            need,
            acked: Vec::new(),
            deadline_ms,
            flush,
            level,
            registered: Instant::now(),
        };
        let already: Vec<Arc<str>> = inner
            .acked_upto
            .iter()
            .filter(|((b, _), &upto)| b == bucket && upto >= seq)
            .map(|((_, n), _)| n.clone())
            .collect();
        for node in &already {
            waiter.add(node);
        }
        if waiter.met() {
            self.record(level, waiter.registered);
            return Registered::Met(waiter.acked.iter().map(|a| a.to_string()).collect());
        }
        inner.next += 1;
        let ticket = inner.next;
        inner
            .by_seq
            .entry(bucket.clone())
            .or_default()
            .entry(seq)
            .or_default()
            .push(ticket);
        inner.waiters.insert(ticket, waiter);
        Registered::Pending(ticket)
    }

    /// `node` holds every write of ours to `bucket` up to `upto`.
    pub fn on_ack(&self, bucket: &Arc<str>, node: &Arc<str>, upto: Seq) {
        if upto == Seq::ZERO {
            return;
        }
        let mut done = Vec::new();
        {
            let mut inner = self.inner.lock();
            let prev = inner
                .acked_upto
                .entry((bucket.clone(), node.clone()))
                .or_insert(Seq::ZERO);
            if *prev >= upto {
                return;
            }
            *prev = upto;
            let Inner {
                waiters, by_seq, ..
            } = &mut *inner;
            let Some(seqs) = by_seq.get_mut(bucket) else {
                return;
            };
            let mut emptied = Vec::new();
            for (&seq, tickets) in seqs.range_mut(..=upto) {
                tickets.retain(|t| {
                    let Some(w) = waiters.get_mut(t) else {
                        return false;
                    };
                    w.add(node);
                    if w.met() {
                        let w = waiters.remove(t).expect("present");
                        done.push(self.finish(w, *t, AckEnd::Met));
                        false
                    } else {
                        true
                    }
                });
                if tickets.is_empty() {
                    emptied.push(seq);
                }
            }
            for seq in emptied {
                seqs.remove(&seq);
            }
        }
        self.deliver(done);
    }

    /// A peer was declared down: writes waiting for 'all' stop waiting for it.
    pub fn on_peer_down(&self, node: &str) {
        self.end_where(AckEnd::Met, |w| w.need.nodes.remove(node) && w.met());
    }

    /// Ends every waiter whose deadline passed.
    pub fn expire(&self, now_ms: u64) {
        self.end_where(AckEnd::TimedOut, |w| w.deadline_ms <= now_ms);
    }

    /// Ends with `end` every waiter `pick` chooses (it may update a waiter as it looks at it), then
    /// delivers their outcomes, outside the lock.
    fn end_where(&self, end: AckEnd, mut pick: impl FnMut(&mut Waiter) -> bool) {
        let mut done = Vec::new();
        {
            let mut inner = self.inner.lock();
            let picked: Vec<u64> = inner
                .waiters
                .iter_mut()
                .filter_map(|(t, w)| pick(w).then_some(*t))
                .collect();
            for t in picked {
                let w = inner.waiters.remove(&t).expect("present");
                inner.unindex(&w.bucket, w.seq, t);
                done.push(self.finish(w, t, end));
            }
        }
        self.deliver(done);
    }

    pub fn pending(&self) -> usize {
        self.inner.lock().waiters.len()
    }
}

impl Inner {
    fn unindex(&mut self, bucket: &Arc<str>, seq: Seq, ticket: u64) {
        if let Some(seqs) = self.by_seq.get_mut(bucket) {
            if let Some(tickets) = seqs.get_mut(&seq) {
                tickets.retain(|t| *t != ticket);
                if tickets.is_empty() {
                    seqs.remove(&seq);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arc(s: &str) -> Arc<str> {
        s.into()
    }

    fn seq(n: u64) -> Seq {
        Seq::from(n)
    }

    #[test]
    fn waits_are_counted_by_level_in_their_latency_bucket_and_timeouts_apart() {
        let t = AckTracker::new();
        let _rx = t.subscribe();
        let b = arc("s");
        t.register(&b, seq(1), AckLevel::One, 1_000, vec![arc("x")], 2, None);
        t.register(
            &b,
            seq(2),
            AckLevel::Majority,
            1_000,
            vec![arc("x")],
            2,
            None,
        );
        t.register(&b, seq(3), AckLevel::All, 1_000, vec![arc("x")], 2, None);
        std::thread::sleep(std::time::Duration::from_millis(30));
        t.on_ack(&b, &arc("x"), seq(2));
        t.expire(1_000);
        let latency = t.latency();
        let levels: Vec<&str> = latency.iter().map(|l| l.level.as_str()).collect();
        assert_eq!(levels, ["local", "one", "majority", "all"]);
        let counted: Vec<u64> = latency.iter().map(|l| l.counts.iter().sum()).collect();
        assert_eq!(counted, [0, 1, 1, 0], "the 'all' write timed out");
        // 30 ms and more, and well under a second: in the buckets from 50 ms to 1 s.
        let one = &latency[1];
        let from = LATENCY_BOUNDS_MS.iter().position(|&b| b == 50).unwrap();
        let to = LATENCY_BOUNDS_MS.iter().position(|&b| b == 1_000).unwrap();
        assert_eq!(one.counts[from..=to].iter().sum::<u64>(), 1, "{one:?}");
        assert!(one.sum_us >= 30_000, "{one:?}");
        assert_eq!(t.timeouts(), 1);
    }

    #[test]
    fn one_is_met_by_the_first_ack_that_covers_the_write() {
        let t = AckTracker::new();
        let mut rx = t.subscribe();
        let b = arc("s");
        let Registered::Pending(ticket) =
            t.register(&b, seq(5), AckLevel::One, 1_000, vec![arc("x")], 1, None)
        else {
            panic!("should wait")
        };
        t.on_ack(&b, &arc("x"), seq(4));
        assert!(rx.try_recv().is_err());
        t.on_ack(&b, &arc("x"), seq(5));
        let o = rx.try_recv().unwrap();
        assert_eq!(
            (o.ticket, o.end, o.acked),
            (ticket, AckEnd::Met, vec!["x".to_string()])
        );
    }

    #[test]
    fn majority_counts_this_peer() {
        let t = AckTracker::new();
        let b = arc("s");
        // Alone: a majority of one is this peer.
        assert_eq!(
            t.register(&b, seq(1), AckLevel::Majority, 1_000, vec![], 0, None),
            Registered::Met(vec![])
        );
        // Three members (two others): one other ack makes two of three.
        t.on_ack(&b, &arc("x"), seq(1));
        assert_eq!(
            t.register(
                &b,
                seq(1),
                AckLevel::Majority,
                1_000,
                vec![arc("x"), arc("y")],
                2,
                None
            ),
            Registered::Met(vec!["x".into()])
        );
        // Five members: two others needed.
        assert!(matches!(
            t.register(&b, seq(1), AckLevel::Majority, 1_000, vec![], 4, None),
            Registered::Pending(_)
        ));
    }

    #[test]
    fn all_stops_waiting_for_a_peer_declared_down_and_times_out_with_the_acks_it_had() {
        let t = AckTracker::new();
        let mut rx = t.subscribe();
        let b = arc("s");
        let Registered::Pending(first) = t.register(
            &b,
            seq(1),
            AckLevel::All,
            1_000,
            vec![arc("x"), arc("y")],
            2,
            None,
        ) else {
            panic!()
        };
        t.on_ack(&b, &arc("x"), seq(1));
        t.on_peer_down("y");
        assert_eq!(
            rx.try_recv().unwrap(),
            AckOutcome {
                ticket: first,
                end: AckEnd::Met,
                acked: vec!["x".into()]
            }
        );

        let Registered::Pending(second) = t.register(
            &b,
            seq(2),
            AckLevel::All,
            1_000,
            vec![arc("x"), arc("z")],
            2,
            None,
        ) else {
            panic!()
        };
        t.on_ack(&b, &arc("z"), seq(2));
        t.expire(999);
        assert!(rx.try_recv().is_err());
        t.expire(1_000);
        assert_eq!(
            rx.try_recv().unwrap(),
            AckOutcome {
                ticket: second,
                end: AckEnd::TimedOut,
                acked: vec!["z".into()]
            }
        );
        assert_eq!(t.pending(), 0);
    }
}
