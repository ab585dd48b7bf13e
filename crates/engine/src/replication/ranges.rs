//! `Seq`, the sequence number of a replica's write, and `SeqRanges`: a set of them kept as sorted,
//! disjoint, non-adjacent inclusive ranges.
//!
//! A replica's causal context for one origin is one of these: usually a single range `1..=n`, with a few
//! extra ranges above it while a gap is open. All operations are linear in the number of ranges.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The sequence number of a write: with its origin (and bucket), the write's dot. Each replica
/// counts its own writes (sets, deletes and touches) to each bucket from 1, one by one, so seq `n`
/// of one origin says nothing of another origin's `n`. 0 is never a write's seq: `Seq::ZERO`
/// stands for "none", the high-water mark before the first write (an empty context's `max`, an
/// entry with no value register yet). On the wire and on disk it is the bare `u64`
/// (`serde(transparent)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seq(u64);

impl Seq {
    /// Below every write's seq: "none".
    pub const ZERO: Seq = Seq(0);
    /// The seq of a replica's first write.
    pub const FIRST: Seq = Seq(1);
    /// Above every seq a replica reaches: the open end of a range "from here on".
    pub const MAX: Seq = Seq(u64::MAX);

    /// The raw number, for hashing, printing and storage keys.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// How many seqs lie above `earlier` up to this one (0 if `earlier` is not below it): as seqs
    /// count writes, how many writes this one is past `earlier`.
    pub fn since(self, earlier: Seq) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The seq before this one (`Seq::ZERO` before the first), or `None` below that.
    pub fn prev(self) -> Option<Seq> {
        self.0.checked_sub(1).map(Seq)
    }

    /// The seq after this one, or `None` once the sequence is exhausted.
    pub fn next(self) -> Option<Seq> {
        self.0.checked_add(1).map(Seq)
    }
}

/// A raw number entering as a seq: decoding, scripted peers and tests.
impl From<u64> for Seq {
    fn from(n: u64) -> Seq {
        Seq(n)
    }
}

impl std::fmt::Display for Seq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqRanges {
    /// Sorted, disjoint, non-adjacent inclusive ranges `(start, end)` with `start <= end`, as raw
    /// seqs (the set's own arithmetic; its methods take and give `Seq`).
    ranges: Vec<(u64, u64)>,
}

impl SeqRanges {
    pub const fn new() -> Self {
        SeqRanges { ranges: Vec::new() }
    }

    /// The set `1..=n` (empty when `n == 0`).
    pub fn up_to(n: Seq) -> Self {
        let mut r = SeqRanges::new();
        if n.0 > 0 {
            r.ranges.push((1, n.0));
        }
        r
    }

    /// Builds a set from arbitrary ranges (unsorted, overlapping; reversed ranges are dropped), in
    /// O(n log n) whatever the input, so a hostile list cannot make it quadratic.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (Seq, Seq)>) -> Self {
        let mut input: Vec<(u64, u64)> = ranges
            .into_iter()
            .filter(|(a, b)| a <= b)
            .map(|(a, b)| (a.0, b.0))
            .collect();
        input.sort_unstable();
        let mut r = SeqRanges::new();
        for (a, b) in input {
            r.insert_raw(a, b);
        }
        r
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges `(start, end)`, inclusive, in order.
    pub fn ranges(&self) -> impl DoubleEndedIterator<Item = (Seq, Seq)> + ExactSizeIterator + '_ {
        self.ranges.iter().map(|&(a, b)| (Seq(a), Seq(b)))
    }

    /// True when the decoded form holds the invariants (sorted, disjoint, non-adjacent, start <= end).
    pub fn is_well_formed(&self) -> bool {
        self.ranges.iter().all(|&(a, b)| a <= b)
            && self
                .ranges
                .windows(2)
                .all(|w| w[0].1.checked_add(1).is_some_and(|next| next < w[1].0))
    }

    /// The largest seq in the set, or `Seq::ZERO`.
    pub fn max(&self) -> Seq {
        Seq(self.ranges.last().map_or(0, |r| r.1))
    }

    /// The largest `n` such that every seq in `1..=n` is in the set (`Seq::ZERO` without seq 1).
    pub fn contiguous(&self) -> Seq {
        match self.ranges.first() {
            Some(&(1, end)) => Seq(end),
            _ => Seq::ZERO,
        }
    }

    /// How many seqs the set holds.
    pub fn count(&self) -> u64 {
        self.ranges.iter().map(|&(a, b)| b - a + 1).sum()
    }

    pub fn contains(&self, seq: Seq) -> bool {
        let seq = seq.0;
        let idx = self.ranges.partition_point(|&(_, end)| end < seq);
        self.ranges.get(idx).is_some_and(|&(start, _)| start <= seq)
    }

    pub fn insert(&mut self, seq: Seq) {
        self.insert_range(seq, seq);
    }

    /// Adds `start..=end`, merging with neighbours.
    pub fn insert_range(&mut self, start: Seq, end: Seq) {
        self.insert_raw(start.0, end.0);
    }

    fn insert_raw(&mut self, start: u64, end: u64) {
        if start > end {
            return;
        }
        // Fast path: appending at the top, the common case for a live stream.
        if let Some(last) = self.ranges.last_mut() {
            if start > last.1 {
                if start == last.1 + 1 {
                    last.1 = end;
                } else {
                    self.ranges.push((start, end));
                }
                return;
            }
        } else {
            self.ranges.push((start, end));
            return;
        }
        // First range that could touch the new one (its end reaches start - 1).
        let lo = self
            .ranges
            .partition_point(|&(_, e)| e.saturating_add(1) < start);
        // First range strictly after the new one (starts beyond end + 1).
        let hi = self
            .ranges
            .partition_point(|&(s, _)| s <= end.saturating_add(1));
        if lo == hi {
            self.ranges.insert(lo, (start, end));
        } else {
            let merged = (start.min(self.ranges[lo].0), end.max(self.ranges[hi - 1].1));
            self.ranges.splice(lo..hi, std::iter::once(merged));
        }
    }

    pub fn union_with(&mut self, other: &SeqRanges) {
        for &(a, b) in &other.ranges {
            self.insert_raw(a, b);
        }
    }

    /// The seqs in `self` that are not in `other`.
    pub fn difference(&self, other: &SeqRanges) -> SeqRanges {
        let mut out = Vec::new();
        let mut j = 0;
        for &(mut a, b) in &self.ranges {
            while j < other.ranges.len() && other.ranges[j].1 < a {
                j += 1;
            }
            let mut k = j;
            while a <= b {
                match other.ranges.get(k) {
                    Some(&(oa, ob)) if oa <= b => {
                        if oa > a {
                            out.push((a, oa - 1));
                        }
                        if ob >= b {
                            a = b.saturating_add(1);
                            if b == u64::MAX {
                                break;
                            }
                        } else {
                            a = ob + 1;
                            k += 1;
                        }
                    }
                    _ => {
                        out.push((a, b));
                        break;
                    }
                }
            }
        }
        SeqRanges { ranges: out }
    }

    /// The seqs in both `self` and `other`.
    pub fn intersect(&self, other: &SeqRanges) -> SeqRanges {
        self.difference(&self.difference(other))
    }

    /// The part of the set inside `start..=end`.
    pub fn clamp(&self, start: Seq, end: Seq) -> SeqRanges {
        let (start, end) = (start.0, end.0);
        let ranges = self
            .ranges
            .iter()
            .filter_map(|&(a, b)| {
                let (a, b) = (a.max(start), b.min(end));
                (a <= b).then_some((a, b))
            })
            .collect();
        SeqRanges { ranges }
    }
}

impl Serialize for SeqRanges {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.ranges.serialize(s)
    }
}

/// Decoding normalises whatever arrived, so the invariants hold for every value in memory.
impl<'de> Deserialize<'de> for SeqRanges {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(SeqRanges::from_ranges(Vec::<(Seq, Seq)>::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn model(r: &SeqRanges) -> BTreeSet<u64> {
        r.ranges().flat_map(|(a, b)| a.get()..=b.get()).collect()
    }

    fn seq(n: u64) -> Seq {
        Seq::from(n)
    }

    fn pairs(r: &SeqRanges) -> Vec<(u64, u64)> {
        r.ranges().map(|(a, b)| (a.get(), b.get())).collect()
    }

    #[test]
    fn contiguous_prefix_and_gaps() {
        let mut r = SeqRanges::new();
        r.insert_range(seq(1), seq(5));
        r.insert(seq(7));
        assert_eq!(r.contiguous(), seq(5));
        assert_eq!(r.max(), seq(7));
        r.insert(seq(6));
        assert_eq!(pairs(&r), &[(1, 7)]);
        assert_eq!(r.contiguous(), seq(7));
    }

    #[test]
    fn difference_finds_the_missing_pieces() {
        let have = SeqRanges::from_ranges([(seq(1), seq(10)), (seq(20), seq(30))]);
        let other = SeqRanges::from_ranges([(seq(3), seq(4)), (seq(8), seq(22))]);
        assert_eq!(pairs(&have.difference(&other)), &[(1, 2), (5, 7), (23, 30)]);
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec((1u64..200, 0u64..20), 0..60),
                              others in proptest::collection::vec((1u64..200, 0u64..20), 0..30)) {
            let mut r = SeqRanges::new();
            let mut m = BTreeSet::new();
            for (a, len) in ops {
                r.insert_range(seq(a), seq(a + len));
                m.extend(a..=a + len);
                prop_assert!(r.is_well_formed());
            }
            prop_assert_eq!(model(&r), m.clone());
            let o = SeqRanges::from_ranges(others.into_iter().map(|(a, l)| (seq(a), seq(a + l))));
            let diff: BTreeSet<u64> = m.difference(&model(&o)).copied().collect();
            prop_assert_eq!(model(&r.difference(&o)), diff);
            prop_assert!(r.difference(&o).is_well_formed());
            for s in 0..230 {
                prop_assert_eq!(r.contains(seq(s)), m.contains(&s));
            }
            let prefix = (1..).take_while(|s| m.contains(s)).last().unwrap_or(0);
            prop_assert_eq!(r.contiguous(), seq(prefix));
            prop_assert_eq!(r.count(), m.len() as u64);
        }
    }
}
