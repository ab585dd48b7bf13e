//! Merging what a peer sent into the state (`merge_chunk`), dropping the registers a resync
//! found superseded or collected (`drop_dots`), and restoring the registers a peer stores under
//! dots this replica covers, to repair a divergence (`restore_registers`).
//!
//! Invariants: a merge applies in one exclusive section, so no reader sees coverage without what
//! superseded it, nor a value live under a touch the same merge carries; listeners hear each key's
//! net change once, after the merge is in (`NetChanges`).

use crate::hash::{HashMap, HashSet};
use crate::replication::clock::Hlc;
use crate::replication::ranges::{Seq, SeqRanges};
use crate::replication::replica::Origin;
use crate::replication::store::{Expiry, Incoming, Marker, Merged, Shown, State, Write};
use std::sync::Arc;

/// `Store::merge_chunk` on the state the caller holds locked exclusively (its arguments, as the
/// trait's).
pub(super) fn merge_chunk(
    state: &mut State,
    me: &Origin,
    origin: &Origin,
    chunk: Incoming<'_>,
    on_change: &mut dyn FnMut(Shown<'_>),
) -> Merged {
    let Incoming {
        writes,
        covered,
        superseded,
        superseders,
    } = chunk;
    state.name_me(me);
    // Superseded dots new here: known before the writes and the coverage land.
    let known = state
        .origins
        .get(origin)
        .map(|o| o.context.clone())
        .unwrap_or_default();
    let fresh_superseded: Vec<(&Arc<str>, Seq)> = superseded
        .iter()
        .flat_map(|(key, seqs)| seqs.iter().map(move |&seq| (key, seq)))
        .filter(|&(_, seq)| !known.contains(seq))
        .collect();
    let mut merged = Merged::default();
    // A chunk holds at most one value and one touch register per key, both from its sender's one
    // reading: with the touch in first, a value it expired lands dead and is never shown.
    let all = superseders
        .into_iter()
        .chain(writes.into_iter().map(|w| (origin.clone(), w)));
    let (touches, values): (Vec<_>, Vec<_>) = all.partition(|(_, w)| w.is_touch());
    // The touch in first lands on the register stored here, which may be an older value than the
    // one it was made for, expired here: it would show that value live for the moment before the
    // chunk's value replaces it. The keys touches land on are heard once the chunk is in.
    let mut net = NetChanges::new(&touches);
    for (o, mut w) in touches.into_iter().chain(values) {
        if state
            .origins
            .get(&o)
            .is_some_and(|st| st.context.contains(w.seq))
        {
            continue;
        }
        merged.fresh += 1;
        state.see(&o, w.seq);
        if state.collected.settles(&w, &o) {
            continue;
        }
        net.hold(state, &w.key);
        let on_change = &mut |shown: Shown<'_>| net.route(shown, on_change);
        if w.hlc <= state.collected.newest {
            let current = state
                .entries
                .get(&w.key)
                .filter(|e| e.seq > Seq::ZERO)
                .map(|e| (e.hlc, e.origin.clone(), e.value.is_none()));
            let current = current.as_ref().map(|(h, o, t)| (*h, o, *t));
            if let Some(hlc) = state.collected.stand_in_time(&w, &o, current, me) {
                state.stand_in(me, &w, hlc, on_change);
                merged.stand_ins += 1;
            }
        }
        state.apply(&o, &mut w, on_change);
    }
    net.hear(state, on_change);
    if !covered.is_empty() {
        state
            .origins
            .entry(origin.clone())
            .or_default()
            .context
            .union_with(covered);
        state.note_context(origin);
    }
    for (key, seq) in fresh_superseded {
        let by = state
            .entries
            .get_key_value(key)
            .filter(|(_, e)| e.seq > Seq::ZERO)
            .map(|(k, e)| (k.clone(), e.origin.clone(), e.seq));
        if let Some((key, by, by_seq)) = by {
            state.origin_mut(origin).superseded.insert(
                seq,
                Marker {
                    key: key.clone(),
                    by,
                    by_seq,
                },
            );
            state.note_marker(origin, seq, Some(key));
        }
    }
    merged
}

/// `Store::drop_dots` on the state the caller holds locked exclusively.
pub(super) fn drop_dots(
    state: &mut State,
    origin: &Origin,
    dots: &SeqRanges,
    on_change: &mut dyn FnMut(Shown<'_>),
) -> usize {
    let swept = state.swept_until;
    let found: Vec<(Seq, Arc<str>)> = match state.origins.get(origin) {
        Some(o) => dots
            .ranges()
            .flat_map(|(a, b)| o.index.range(a, b))
            .filter_map(|(s, hash)| {
                let (key, _) = state.entries.by_dot(hash, origin, s)?;
                Some((s, key.clone()))
            })
            .collect(),
        None => return 0,
    };
    let mut dropped = 0;
    for (seq, key) in &found {
        let Some(e) = state.entries.get(key) else {
            continue;
        };
        let was_live = State::is_live(e, swept);
        let value_dot = e.seq == *seq && e.origin == *origin;
        // A touch that expired its value stays: what superseded it elsewhere is at least as new
        // as it, so it beats the value too, and the value must not show again before it arrives
        // (it beats this touch then) or the dead key is collected.
        let revives = !value_dot && !was_live && e.value.is_some() && e.expires.lasts_past(swept);
        if revives {
            continue;
        }
        dropped += 1;
        // Whether the key keeps a register: the other one than the dropped one.
        let left = if value_dot {
            e.touch.is_some()
        } else {
            e.seq > Seq::ZERO
        };
        if !left {
            state.remove_entry(key);
            if was_live {
                on_change(Shown {
                    key,
                    value: None,
                    expired: false,
                });
            }
            continue;
        }
        state.note_key(key);
        let mut r = state.entries.remove(key).expect("present");
        state.tally(&r.entry, -1);
        let was_due = State::due(&r.entry, state.swept_until);
        if value_dot {
            // The value register was superseded elsewhere, not the newer touch register (another
            // dot): keep the touch, as when it arrives before the write it touches, for the
            // superseding write to land under. (Dropping it lost it for good: its dot stays in
            // the context.)
            let e = &mut r.entry;
            e.value = None;
            e.hlc = Hlc(0);
            e.seq = Seq::ZERO;
            e.expires = Expiry::NEVER;
            e.origin = e.touch.as_ref().expect("left").origin.clone();
        } else {
            // Only the touch register was superseded elsewhere.
            r.entry.touch = None;
        }
        if let Some(o) = state.origins.get_mut(origin) {
            o.index.remove(*seq);
        }
        if was_live && !State::is_live(&r.entry, swept) {
            // Without its value register the key is deleted; without its touch, expired.
            let expired = r.entry.value.is_some();
            on_change(Shown {
                key,
                value: None,
                expired,
            });
        }
        state.tally(&r.entry, 1);
        let due = State::due(&r.entry, state.swept_until);
        state.entries.insert(r);
        if due != was_due {
            state.schedule_due(key, due);
        }
    }
    dropped
}

/// The keys of a merge whose changes listeners hear once the merge is in (see `merge_chunk`): what
/// each showed before the merge applied anything to it, and whether the last change it made there was
/// a delete.
struct NetChanges {
    keys: HashSet<Arc<str>>,
    before: HashMap<Arc<str>, Before>,
    /// The held keys in the order they were first applied to, so events keep a stable order.
    order: Vec<Arc<str>>,
}

struct Before {
    /// The value register's `(hlc, origin)` when it showed a live value.
    live: Option<(Hlc, Origin)>,
    deleted: bool,
}

impl NetChanges {
    fn new(touches: &[(Origin, Write)]) -> NetChanges {
        NetChanges {
            keys: touches.iter().map(|(_, w)| w.key.clone()).collect(),
            before: HashMap::default(),
            order: Vec::new(),
        }
    }

    /// Notes what `key` shows before a write applies to it, when it is held and not noted yet.
    fn hold(&mut self, state: &State, key: &Arc<str>) {
        if self.keys.is_empty() || !self.keys.contains(key) || self.before.contains_key(key) {
            return;
        }
        let live = state
            .entries
            .get(key)
            .filter(|e| State::is_live(e, state.swept_until))
            .map(|e| (e.hlc, e.origin.clone()));
        self.before.insert(
            key.clone(),
            Before {
                live,
                deleted: false,
            },
        );
        self.order.push(key.clone());
    }

    /// Passes a change of a key not held on to `on_change`, and keeps one of a held key for `hear`.
    fn route(&mut self, shown: Shown<'_>, on_change: &mut dyn FnMut(Shown<'_>)) {
        match self.before.get_mut(shown.key) {
            Some(b) => b.deleted = shown.value.is_none() && !shown.expired,
            None => on_change(shown),
        }
    }

    /// Reports each held key's net change: its live value when it differs from the one it showed
    /// before; its end (as a delete or an expiry) when it showed one before; a delete reported
    /// while held that it still shows, as a delete is always reported.
    fn hear(self, state: &State, on_change: &mut dyn FnMut(Shown<'_>)) {
        let swept = state.swept_until;
        for key in &self.order {
            let before = &self.before[key];
            let entry = state.entries.get(key);
            let shown = match entry.and_then(|e| e.live_value(swept)) {
                Some(v) => {
                    let e = entry.expect("a live value has its entry");
                    let same = before
                        .live
                        .as_ref()
                        .is_some_and(|(h, o)| *h == e.hlc && *o == e.origin);
                    (!same).then_some((Some(v), false))
                }
                None if before.live.is_some() => {
                    Some((None, entry.is_some_and(|e| e.value.is_some())))
                }
                None if before.deleted && entry.is_none_or(|e| e.value.is_none()) => {
                    Some((None, false))
                }
                None => None,
            };
            if let Some((value, expired)) = shown {
                on_change(Shown {
                    key,
                    value,
                    expired,
                });
            }
        }
    }
}

/// `Store::restore_registers` on the state the caller holds locked exclusively.
pub(super) fn restore_registers(
    state: &mut State,
    origin: &Origin,
    writes: Vec<Write>,
    on_change: &mut dyn FnMut(Shown<'_>),
) -> usize {
    let mut changed = 0;
    for mut w in writes {
        let covered = state
            .origins
            .get(origin)
            .is_some_and(|o| o.context.contains(w.seq));
        // A dot not covered here comes by the sync, with its coverage and what backs it.
        if w.seq == Seq::ZERO || !covered {
            continue;
        }
        // A collected register this replica remembers for the key beats it, or is it: the key's
        // fate is known here, and a stand-in answers such a write only when it is new.
        let record = state
            .collected
            .by_key
            .get(&crate::replication::store::key_fingerprint(&w.key));
        let collected = record.is_some_and(|(c, _)| c.place() >= (w.hlc, false, Some(origin)));
        // Without a record (forgotten), a value no newer than the collections forgotten here, for a
        // key with no live register, may be one whose delete was collected: the merge answers such a
        // write with a stand-in (`CollectedKeys::stand_in_time`), so the restore must not show it.
        let forgotten = record.is_none()
            && w.is_set()
            && state.collected.may_be_forgotten(
                w.hlc,
                state
                    .entries
                    .get(&w.key)
                    .filter(|e| e.seq > Seq::ZERO)
                    .is_none_or(|e| e.value.is_none()),
            );
        if collected || forgotten {
            continue;
        }
        // The same dot stored here (under this key or another): the same register changes
        // nothing; other content (a forgery, wherever it came from) keeps the larger by
        // `(hlc, print)` on every replica alike.
        let stored = state.origins.get(origin).and_then(|o| {
            let (_, hash) = o.index.range(w.seq, w.seq).next()?;
            let (key, e) = state.entries.by_dot(hash, origin, w.seq)?;
            e.write_for(key, origin, w.seq)
        });
        if let Some(stored) = stored {
            if stored == w || register_order(&stored, origin) >= register_order(&w, origin) {
                continue;
            }
            let dot = SeqRanges::from_ranges([(w.seq, w.seq)]);
            if drop_dots(state, origin, &dot, on_change) == 0 {
                continue;
            }
            changed += 1;
        }
        let hash = state.entries.hash(&w.key);
        let before = state
            .entries
            .get_hashed(hash, &w.key)
            .map(|(k, e)| e.print(k));
        let key = w.key.clone();
        state.apply_hashed(origin, &mut w, hash, on_change);
        let after = state
            .entries
            .get_hashed(hash, &key)
            .map(|(k, e)| e.print(k));
        if before != after {
            changed += 1;
            // Stored again: no longer a marker of a superseded write.
            if let Some(o) = state.origins.get_mut(origin) {
                if o.superseded.remove(&w.seq).is_some() {
                    state.note_marker(origin, w.seq, None);
                }
            }
        }
    }
    changed
}

/// Where a register stands among registers of one dot: its timestamp, then its print.
fn register_order(w: &Write, origin: &Origin) -> (Hlc, u64) {
    let entry = crate::replication::store::Entry {
        value: w.value().map(Box::from),
        hlc: w.hlc,
        origin: origin.clone(),
        seq: w.seq,
        expires: w.expires(),
        touch: None,
    };
    (w.hlc, entry.print(&w.key) ^ u64::from(w.is_touch()))
}
