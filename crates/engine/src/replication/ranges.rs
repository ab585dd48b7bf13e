//! `SeqRanges`: a set of sequence numbers kept as sorted, disjoint, non-adjacent inclusive ranges.
//!
//! A replica's causal context for one origin is one of these: usually a single range `1..=n`, with a few
//! extra ranges above it while a gap is open. All operations are linear in the number of ranges.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqRanges {
    /// Sorted, disjoint, non-adjacent inclusive ranges `(start, end)` with `start <= end`.
    ranges: Vec<(u64, u64)>,
}

impl SeqRanges {
    pub fn new() -> Self {
        SeqRanges::default()
    }

    /// The set `1..=n` (empty when `n == 0`).
    pub fn up_to(n: u64) -> Self {
        let mut r = SeqRanges::new();
        if n > 0 {
            r.ranges.push((1, n));
        }
        r
    }

    /// Builds a set from arbitrary ranges (unsorted, overlapping; reversed ranges are dropped), in
    /// O(n log n) whatever the input, so a hostile list cannot make it quadratic.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut input: Vec<(u64, u64)> = ranges.into_iter().filter(|(a, b)| a <= b).collect();
        input.sort_unstable();
        let mut r = SeqRanges::new();
        for (a, b) in input {
            r.insert_range(a, b);
        }
        r
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// True when the decoded form holds the invariants (sorted, disjoint, non-adjacent, start <= end).
    pub fn is_well_formed(&self) -> bool {
        self.ranges.iter().all(|&(a, b)| a <= b)
            && self
                .ranges
                .windows(2)
                .all(|w| w[0].1.checked_add(1).is_some_and(|next| next < w[1].0))
    }

    /// The largest seq in the set, or 0.
    pub fn max(&self) -> u64 {
        self.ranges.last().map_or(0, |r| r.1)
    }

    /// The largest `n` such that every seq in `1..=n` is in the set.
    pub fn contiguous(&self) -> u64 {
        match self.ranges.first() {
            Some(&(1, end)) => end,
            _ => 0,
        }
    }

    /// How many seqs the set holds.
    pub fn count(&self) -> u64 {
        self.ranges.iter().map(|&(a, b)| b - a + 1).sum()
    }

    pub fn contains(&self, seq: u64) -> bool {
        let idx = self.ranges.partition_point(|&(_, end)| end < seq);
        self.ranges.get(idx).is_some_and(|&(start, _)| start <= seq)
    }

    pub fn insert(&mut self, seq: u64) {
        self.insert_range(seq, seq);
    }

    /// Adds `start..=end`, merging with neighbours.
    pub fn insert_range(&mut self, start: u64, end: u64) {
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
            self.insert_range(a, b);
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
    pub fn clamp(&self, start: u64, end: u64) -> SeqRanges {
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
        Ok(SeqRanges::from_ranges(Vec::<(u64, u64)>::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn model(r: &SeqRanges) -> BTreeSet<u64> {
        r.ranges().iter().flat_map(|&(a, b)| a..=b).collect()
    }

    #[test]
    fn contiguous_prefix_and_gaps() {
        let mut r = SeqRanges::new();
        r.insert_range(1, 5);
        r.insert(7);
        assert_eq!(r.contiguous(), 5);
        assert_eq!(r.max(), 7);
        r.insert(6);
        assert_eq!(r.ranges(), &[(1, 7)]);
        assert_eq!(r.contiguous(), 7);
    }

    #[test]
    fn difference_finds_the_missing_pieces() {
        let have = SeqRanges::from_ranges([(1, 10), (20, 30)]);
        let other = SeqRanges::from_ranges([(3, 4), (8, 22)]);
        assert_eq!(
            have.difference(&other).ranges(),
            &[(1, 2), (5, 7), (23, 30)]
        );
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec((1u64..200, 0u64..20), 0..60),
                              others in proptest::collection::vec((1u64..200, 0u64..20), 0..30)) {
            let mut r = SeqRanges::new();
            let mut m = BTreeSet::new();
            for (a, len) in ops {
                r.insert_range(a, a + len);
                m.extend(a..=a + len);
                prop_assert!(r.is_well_formed());
            }
            prop_assert_eq!(model(&r), m.clone());
            let o = SeqRanges::from_ranges(others.into_iter().map(|(a, l)| (a, a + l)));
            let diff: BTreeSet<u64> = m.difference(&model(&o)).copied().collect();
            prop_assert_eq!(model(&r.difference(&o)), diff);
            prop_assert!(r.difference(&o).is_well_formed());
            for s in 0..230 {
                prop_assert_eq!(r.contains(s), m.contains(&s));
            }
            let prefix = (1..).take_while(|s| m.contains(s)).last().unwrap_or(0);
            prop_assert_eq!(r.contiguous(), prefix);
            prop_assert_eq!(r.count(), m.len() as u64);
        }
    }
}
