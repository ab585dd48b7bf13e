//! Cutting a chunk of one origin's seqs to ship (`chunk`): the writes still stored, the seqs they
//! superseded, and the registers that superseded them.
//!
//! Invariants: a chunk is a clean prefix of the range asked (a cut never leaves a seq of the covered
//! range unaccounted for), and a superseded seq travels with what superseded it.

use crate::hash::{HashMap, HashSet};
use crate::replication::ranges::Seq;
use crate::replication::replica::Origin;
use crate::replication::store::{Chunk, ChunkLimits, State, Write};
use std::sync::Arc;

/// `Store::chunk` on the state the caller holds locked shared.
pub(super) fn chunk(
    state: &State,
    origin: &Origin,
    start: Seq,
    end: Seq,
    limits: ChunkLimits,
) -> Chunk {
    let Some(o) = state.origins.get(origin) else {
        return Chunk::default();
    };
    let mut chunk = Chunk::default();
    let mut bytes = 0;
    let mut last = end;
    // Walk stored and superseded seqs together, in order, so a cut leaves a clean prefix.
    let mut stored = o.index.range(start, end).peekable();
    let mut replaced = o.superseded.range(start..=end).peekable();
    // Lookups into what the chunk holds so far (a search of it per write was quadratic in the
    // chunk's size): the superseders' dots and keys, and each superseded key's place.
    let mut superseder_dots: HashSet<(Origin, Seq)> = HashSet::default();
    let mut superseder_keys: HashSet<Arc<str>> = HashSet::default();
    let mut superseded_at: HashMap<Arc<str>, usize> = HashMap::default();
    loop {
        let next_stored = stored.peek().map(|(s, _)| *s);
        let next_replaced = replaced.peek().map(|(s, _)| **s);
        let (seq, found, is_stored) = match (next_stored, next_replaced) {
            (None, None) => break,
            (Some(a), Some(b)) if b < a => {
                let (_, m) = replaced.next().expect("peeked");
                (b, state.entries.get_key_value(&m.key), false)
            }
            (Some(a), _) => {
                let (_, hash) = stored.next().expect("peeked");
                (a, state.entries.by_dot(hash, origin, a), true)
            }
            (None, Some(b)) => {
                let (_, m) = replaced.next().expect("peeked");
                (b, state.entries.get_key_value(&m.key), false)
            }
        };
        let Some((key, e)) = found else {
            continue;
        };
        let items: Vec<(Option<Origin>, Write)> = if is_stored {
            let w = e.write_for(key, origin, seq);
            // A value goes with the key's touch register, newer than it: the receiver must not
            // show live a value this replica holds expired.
            let touch = match &w {
                Some(w) if !w.is_touch() => e
                    .touch_write(key)
                    .filter(|(o, t)| !superseder_dots.contains(&(o.clone(), t.seq))),
                _ => None,
            };
            w.map(|w| (None, w))
                .into_iter()
                .chain(touch.map(|(o, t)| (Some(o), t)))
                .collect()
        } else if superseder_keys.contains(key) {
            Vec::new()
        } else {
            e.writes(key).map(|(o, w)| (Some(o), w)).collect()
        };
        if is_stored && items.is_empty() {
            continue;
        }
        // A superseded seq travels too (a few bytes), so the receiver can back it when it relays.
        let size: usize = items
            .iter()
            .map(|(_, w)| w.payload_len() + 40)
            .sum::<usize>()
            + if is_stored { 0 } else { 8 };
        let count = chunk.writes.len() + chunk.superseders.len();
        if count > 0 && (count >= limits.max_writes || bytes + size > limits.max_bytes) {
            last = seq.prev().expect("a write's seq is at least 1");
            break;
        }
        bytes += size;
        if !is_stored {
            match superseded_at.get(key) {
                Some(&at) => chunk.superseded[at].1.push(seq),
                None => {
                    superseded_at.insert(key.clone(), chunk.superseded.len());
                    chunk.superseded.push((key.clone(), vec![seq]));
                }
            }
        }
        for (other, write) in items {
            match other {
                None => chunk.writes.push(write),
                Some(o) => {
                    superseder_dots.insert((o.clone(), write.seq));
                    superseder_keys.insert(write.key.clone());
                    chunk.superseders.push((o, write));
                }
            }
        }
    }
    // A superseder that is itself one of the chunk's writes need not travel twice.
    if chunk.superseders.iter().any(|(o, _)| o == origin) {
        let written: HashSet<Seq> = chunk.writes.iter().map(|w| w.seq).collect();
        chunk
            .superseders
            .retain(|(o, w)| !(o == origin && written.contains(&w.seq)));
    }
    chunk.covered = o.context.clamp(start, last);
    if let Some((_, high)) = chunk.covered.ranges().next_back() {
        o.shipped
            .fetch_max(high.get(), std::sync::atomic::Ordering::Relaxed);
    }
    // A superseder leaves too: an own write among them may be elsewhere from now on, and must
    // leave a marker when it is overwritten.
    for (other, w) in &chunk.superseders {
        if let Some(st) = state.origins.get(other) {
            st.shipped
                .fetch_max(w.seq.get(), std::sync::atomic::Ordering::Relaxed);
        }
    }
    chunk
}
