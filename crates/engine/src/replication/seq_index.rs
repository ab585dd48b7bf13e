//! `SeqIndex`: the per-origin index `seq -> key hash` of the registers a replica stores.
//!
//! Sequence numbers of one origin mostly arrive in order, so the index is a sorted vector that grows at
//! its end (16 bytes an entry, against about twice that in a B-tree whose nodes half fill under
//! ascending inserts). Removed entries are marked and swept out once they are half of the vector; the
//! rare insert below the end goes to a small ordered side map, merged back when it grows.

use std::collections::BTreeMap;

use crate::replication::ranges::Seq;

/// Top bit of a seq in `run`: the entry was removed (seqs never get that high).
const REMOVED: u64 = 1 << 63;

fn seq_of(entry: &(u64, u64)) -> u64 {
    entry.0 & !REMOVED
}

fn live(entry: &(u64, u64)) -> bool {
    entry.0 & REMOVED == 0
}

/// Seqs are kept raw inside (the `REMOVED` bit is set in them); the methods take and give `Seq`.
#[derive(Default, Debug)]
pub struct SeqIndex {
    /// Sorted by seq; removed entries keep their place with `REMOVED` set in the seq.
    run: Vec<(u64, u64)>,
    removed: usize,
    /// Entries inserted below the end of `run`.
    side: BTreeMap<u64, u64>,
}

impl SeqIndex {
    pub fn insert(&mut self, seq: Seq, hash: u64) {
        let seq = seq.get();
        debug_assert!(seq < REMOVED);
        if let Some(h) = self.side.get_mut(&seq) {
            *h = hash;
            return;
        }
        if self.run.last().is_none_or(|last| seq > seq_of(last)) {
            self.run.push((seq, hash));
            return;
        }
        match self.run.binary_search_by_key(&seq, seq_of) {
            Ok(i) => {
                if !live(&self.run[i]) {
                    self.removed -= 1;
                }
                self.run[i] = (seq, hash);
            }
            Err(_) => {
                self.side.insert(seq, hash);
                if self.side.len() > 64 && self.side.len() * 8 > self.run.len() {
                    self.merge_side();
                }
            }
        }
    }

    pub fn remove(&mut self, seq: Seq) {
        let seq = seq.get();
        if self.side.remove(&seq).is_some() {
            return;
        }
        if let Ok(i) = self.run.binary_search_by_key(&seq, seq_of) {
            if live(&self.run[i]) {
                self.run[i].0 |= REMOVED;
                self.removed += 1;
                if self.removed * 2 > self.run.len() {
                    self.run.retain(live);
                    self.removed = 0;
                    if self.run.capacity() > 2 * self.run.len() + 16 {
                        self.run.shrink_to_fit();
                    }
                }
            }
        }
    }

    /// Entries with seqs in `start..=end`, in order.
    pub fn range(&self, start: Seq, end: Seq) -> impl Iterator<Item = (Seq, u64)> + '_ {
        let (start, end) = (start.get(), end.get());
        let from = self.run.partition_point(|e| seq_of(e) < start);
        let to = self.run.partition_point(|e| seq_of(e) <= end);
        let mut run = self.run[from..to]
            .iter()
            .filter(|e| live(e))
            .copied()
            .peekable();
        let mut side = self
            .side
            .range(start..=end)
            .map(|(&s, &h)| (s, h))
            .peekable();
        std::iter::from_fn(move || match (run.peek(), side.peek()) {
            (Some(a), Some(b)) if b.0 < a.0 => side.next(),
            (Some(_), _) => run.next(),
            (None, _) => side.next(),
        })
        .map(|(s, h)| (Seq::from(s), h))
    }

    pub fn len(&self) -> usize {
        self.run.len() - self.removed + self.side.len()
    }

    fn merge_side(&mut self) {
        let side = std::mem::take(&mut self.side);
        let mut merged = Vec::with_capacity(self.len());
        let old = std::mem::take(&mut self.run);
        let mut run = old.into_iter().filter(live).peekable();
        let mut side = side.into_iter().peekable();
        loop {
            let next = match (run.peek(), side.peek()) {
                (Some(a), Some(b)) if b.0 < a.0 => side.next(),
                (Some(_), _) => run.next(),
                (None, _) => side.next(),
            };
            match next {
                Some(e) => merged.push(e),
                None => break,
            }
        }
        self.run = merged;
        self.removed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn behaves_like_an_ordered_map(ops in proptest::collection::vec((any::<bool>(), 1u64..400, any::<u64>()), 0..600)) {
            let mut index = SeqIndex::default();
            let mut model = BTreeMap::new();
            for (insert, seq, hash) in ops {
                if insert {
                    index.insert(Seq::from(seq), hash);
                    model.insert(seq, hash);
                } else {
                    index.remove(Seq::from(seq));
                    model.remove(&seq);
                }
                prop_assert_eq!(index.len(), model.len());
            }
            let raw = |(s, h): (Seq, u64)| (s.get(), h);
            let all: Vec<_> = index.range(Seq::ZERO, Seq::MAX).map(raw).collect();
            let expected: Vec<_> = model.iter().map(|(&s, &h)| (s, h)).collect();
            prop_assert_eq!(all, expected);
            let part: Vec<_> = index.range(Seq::from(100), Seq::from(200)).map(raw).collect();
            let expected: Vec<_> = model.range(100..=200).map(|(&s, &h)| (s, h)).collect();
            prop_assert_eq!(part, expected);
        }
    }

    #[test]
    fn ascending_inserts_stay_in_the_run() {
        let mut index = SeqIndex::default();
        for s in 1..=1000 {
            index.insert(Seq::from(s), s * 7);
        }
        assert!(index.side.is_empty());
        for s in 1..=600 {
            index.remove(Seq::from(s));
        }
        assert_eq!(index.len(), 400);
        assert!(index.run.len() < 1000, "swept once half was removed");
    }
}
