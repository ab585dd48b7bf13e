//! Tombstone collection in the state: dropping tombstones every member holds (`collect_slice`, a
//! bounded slice per hold of the lock),
//! remembering what was collected and learning it from peers (`learn_collected`), and compacting
//! the superseded-seq markers every member has passed (`compact_markers`).
//!
//! Invariants: a tombstone is dropped only when the collection rule says every member holds it; what
//! is collected stays remembered by key, so a write it beat that arrives later is answered.

use crate::replication::clock::Hlc;
use crate::replication::ranges::Seq;
use crate::replication::replica::Origin;
use crate::replication::store::{key_fingerprint, Collected, CollectedRecord, Shown, State, Write};

/// Dead entries one slice of a collection looks at, at most: the store's lock is held for one slice
/// at a time (a few milliseconds), so a collection of a million tombstones, which a replica that was
/// away a while lets pile up, never holds up a read for its whole length.
pub(crate) const COLLECT_SLICE: usize = 1_024;

/// One slice of `Store::collect` on the state the caller holds locked exclusively: looks at up to
/// `most` dead entries that died before `older_than_ms`, earliest first, and drops those every member
/// holds. Those it keeps go to `keep`, out of the queue, so that the next slice goes on past them;
/// the caller puts them back once the collection ends (`put_back`). Returns how many were dropped,
/// and whether dead entries old enough may be left.
pub(super) fn collect_slice(
    state: &mut State,
    older_than_ms: u64,
    collectable: &mut dyn FnMut(&Origin, Seq) -> bool,
    most: usize,
    keep: &mut Vec<(u64, std::sync::Arc<str>)>,
) -> (usize, bool) {
    let mut dropped = 0;
    let now = state.swept_until;
    for _ in 0..most {
        match state.dead.peek() {
            Some((at, _)) if at < older_than_ms => {}
            _ => return (dropped, false),
        }
        let (at, key) = state.dead.pop().expect("peeked");
        let Some(e) = state.entries.get(&key) else {
            continue;
        };
        if e.death_ms(now) != Some(at) {
            continue; // written again since; that write has its own fate
        }
        let everywhere = e.writes(&key).all(|(o, w)| collectable(&o, w.seq));
        if everywhere {
            let value = (e.seq > Seq::ZERO).then(|| Collected {
                hlc: e.hlc,
                origin: Some(e.origin.clone()),
            });
            // A touch whose expiry has passed expires every older write that comes back, as it
            // would have under the touch: it guards the key like a tombstone at its time. (A touch
            // without an expiry, which no honest replica writes, guards it too.)
            let touch = e
                .touch
                .as_ref()
                .filter(|t| t.expires.encoded() <= now)
                .map(|t| Collected {
                    hlc: t.hlc,
                    origin: Some(t.origin.clone()),
                });
            let newest = match (value, touch) {
                (Some(v), Some(t)) => Some(if t.place() > v.place() { t } else { v }),
                (v, t) => v.or(t),
            };
            if let Some(register) = newest {
                let fingerprint = key_fingerprint(&key);
                state
                    .collected
                    .remember(fingerprint, register, older_than_ms);
                state.note_collected(fingerprint);
            }
            state.remove_entry(&key);
            dropped += 1;
        } else {
            keep.push((at, key));
        }
    }
    (dropped, true)
}

/// Ends a collection: the dead entries its slices kept go back into the queue (an item whose key
/// changed meanwhile is stale, and its readers skip it as any other).
pub(super) fn put_back(state: &mut State, keep: Vec<(u64, std::sync::Arc<str>)>) {
    for (at, key) in keep {
        state.dead.push(at, key);
    }
}

/// `Store::learn_collected` on the state the caller holds locked exclusively.
pub(super) fn learn_collected(
    state: &mut State,
    me: &Origin,
    records: Vec<(CollectedRecord, Option<Origin>)>,
    on_change: &mut dyn FnMut(Shown<'_>),
) -> usize {
    state.name_me(me);
    let mut raised = crate::hash::HashMap::default();
    for (r, origin) in records {
        let register = Collected { hlc: r.hlc, origin };
        let higher = state
            .collected
            .by_key
            .get(&r.fingerprint)
            .is_none_or(|(kept, _)| register.place() > kept.place());
        if higher {
            state
                .collected
                .remember(r.fingerprint, register.clone(), r.at_ms);
            state.note_collected(r.fingerprint);
            raised.insert(r.fingerprint, register);
        }
    }
    if raised.is_empty() {
        return 0;
    }
    // Value registers stored here that a learned record beats: the record's key lost to it
    // everywhere that held it.
    let beaten: Vec<(Write, Hlc)> = state
        .entries
        .iter()
        .filter_map(|(key, e)| {
            let register = raised.get(&key_fingerprint(key))?;
            let w = e.value_write(key).filter(Write::is_set)?;
            register
                .beats(w.hlc, &e.origin)
                .then(|| (register.stand_in_for(w.hlc, &e.origin, me), w))
                .map(|(hlc, w)| (w, hlc))
        })
        .collect();
    for (w, hlc) in &beaten {
        state.stand_in(me, w, *hlc, on_change);
    }
    beaten.len()
}

/// `Store::compact_markers` on the state the caller holds locked exclusively.
pub(super) fn compact_markers(
    state: &mut State,
    everywhere: &mut dyn FnMut(&Origin, Seq) -> bool,
) -> usize {
    let state = &mut *state;
    let entries = &state.entries;
    let mut removed = Vec::new();
    for (origin, o) in state.origins.iter_mut() {
        // Once every member holds the superseding dot, each holds something at least as new for the
        // key, and a coverage claim without the marker's superseders can mislead none of them.
        o.superseded.retain(|seq, m| {
            let keep = entries.get(&m.key).is_some() && !everywhere(&m.by, m.by_seq);
            if !keep {
                removed.push((origin.clone(), *seq));
            }
            keep
        });
    }
    for (origin, seq) in &removed {
        state.note_marker(origin, *seq, None);
    }
    removed.len()
}
