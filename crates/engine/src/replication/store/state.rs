//! The store's state under its one lock, and the last-writer-wins apply: merging a write, sweeping
//! expiries, collecting dead registers, answering chunks.
//!
//! Invariants kept here: a dot enters the context in the same step that stores its register (or its
//! marker); `live_len` counts every entry once, live or dead; listeners hear each change of what a key
//! shows once.

use super::{
    beats, CollectedKeys, Entries, Entry, Expiry, Journal, Marker, Op, OriginState, Record, Shown,
    TouchRegister, Write,
};
use crate::replication::clock::Hlc;
use crate::replication::ranges::Seq;
use crate::replication::replica::Origin;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

#[derive(Default)]
pub(super) struct State {
    pub(super) entries: Entries,
    /// Ordered, so everything derived from it (contexts, chunks) comes out the same on every run.
    pub(super) origins: BTreeMap<Origin, OriginState>,
    /// Pending expiries `(time, key)`, earliest first; stale items (the key changed since) are skipped.
    /// A write pushes one only when it changes what its key waits for (a write that loses leaves
    /// none), yet an item can be pushed again while an earlier one for the same time is still
    /// queued: a sweep counts a key once however many equal items it pops.
    pub(super) expiries: DueQueue,
    /// Dead entries waiting for collection `(death time, key)`, earliest first; stale items skipped.
    pub(super) dead: DueQueue,
    /// Every expiry up to this time has been swept; reads never look earlier than it.
    pub(super) swept_until: u64,
    /// Entries holding a value not expired at `swept_until`.
    pub(super) live_entries: usize,
    /// The other entries: tombstones, touch-only placeholders, values expired at `swept_until`.
    pub(super) dead_entries: usize,
    /// Collected value registers, by key.
    pub(super) collected: CollectedKeys,
    /// This replica's own origin, once a local write or a merge named it.
    pub(super) me: Option<Origin>,
    /// What changed since the last `drain_changes`, when a durable backend persists this store.
    pub(super) journal: Option<Journal>,
}

impl State {
    pub(super) fn note_key(&mut self, key: &Arc<str>) {
        if let Some(j) = &mut self.journal {
            j.keys.insert(key.clone());
        }
    }

    pub(super) fn note_context(&mut self, origin: &Origin) {
        if let Some(j) = &mut self.journal {
            j.contexts.insert(origin.clone());
        }
    }

    pub(super) fn note_collected(&mut self, fingerprint: u64) {
        if let Some(j) = &mut self.journal {
            j.collected.insert(fingerprint);
        }
    }

    pub(super) fn note_marker(&mut self, origin: &Origin, seq: Seq, key: Option<Arc<str>>) {
        if let Some(j) = &mut self.journal {
            j.markers.push((origin.clone(), seq, key));
        }
    }

    /// Takes the next seq of this replica's own origin `me` into its context and returns it.
    pub(super) fn next_own_seq(&mut self, me: &Origin) -> Seq {
        let seq = self
            .origins
            .get(me)
            .map_or(Seq::ZERO, |o| o.context.max())
            .next()
            .expect("sequence numbers exhausted");
        self.see(me, seq);
        seq
    }

    /// Adds `seq` to `origin`'s context.
    pub(super) fn see(&mut self, origin: &Origin, seq: Seq) {
        self.origin_mut(origin).context.insert(seq);
        self.note_context(origin);
    }

    /// The state of `origin`, added empty if new (without cloning the handle when it is known).
    pub(super) fn origin_mut(&mut self, origin: &Origin) -> &mut OriginState {
        if !self.origins.contains_key(origin) {
            self.origins.insert(origin.clone(), OriginState::default());
        }
        self.origins.get_mut(origin).expect("just added")
    }

    /// Adds (`+1`) or removes (`-1`) an entry's share of the counters: the entry counts as live or
    /// dead by `swept_until`, so removing it takes back exactly what adding it (and, in between, the
    /// sweep that saw it expire) counted.
    pub(super) fn tally(&mut self, e: &Entry, sign: isize) {
        let counter = if Self::is_live(e, self.swept_until) {
            &mut self.live_entries
        } else {
            &mut self.dead_entries
        };
        *counter = counter
            .checked_add_signed(sign)
            .expect("an entry is counted once, as live or dead");
    }

    pub(super) fn is_live(e: &Entry, swept_until: u64) -> bool {
        e.live_value(swept_until).is_some()
    }

    /// Queues what a freshly stored entry needs: its expiry, or its collection if already dead.
    pub(super) fn schedule(&mut self, key: &Arc<str>) {
        let e = self.entries.get(key).expect("scheduled entries are stored");
        let due = Self::due(e, self.swept_until);
        self.schedule_due(key, due);
    }

    /// What an entry waits for: `(true, death)` its collection, `(false, expiry)` its expiry, or
    /// nothing.
    pub(super) fn due(e: &Entry, swept_until: u64) -> Option<(bool, u64)> {
        match e.death_ms(swept_until) {
            Some(death) => Some((true, death)),
            None => e.expiry().ms().map(|at| (false, at)),
        }
    }

    pub(super) fn schedule_due(&mut self, key: &Arc<str>, due: Option<(bool, u64)>) {
        match due {
            Some((true, death)) => self.dead.push(death, key.clone()),
            Some((false, expiry)) => self.expiries.push(expiry, key.clone()),
            None => {}
        }
    }

    pub(super) fn index_insert(&mut self, origin: &Origin, seq: Seq, key: &str) {
        if seq > Seq::ZERO {
            let hash = self.entries.hash(key);
            self.index_insert_hashed(origin, seq, hash);
        }
    }

    pub(super) fn index_insert_hashed(&mut self, origin: &Origin, seq: Seq, hash: u64) {
        if seq > Seq::ZERO {
            self.origin_mut(origin).index.insert(seq, hash);
        }
    }

    /// Moves a register's dot from the index to the superseded markers; `by` is the dot of the register
    /// that superseded it. A write of this replica's own that no chunk ever covered needs no marker:
    /// no other replica can hold it, so a coverage claim without it can make no one differ.
    pub(super) fn supersede(
        &mut self,
        origin: &Origin,
        seq: Seq,
        key: &Arc<str>,
        by: (&Origin, Seq),
    ) {
        if seq == Seq::ZERO {
            return;
        }
        let own = self.me.as_ref() == Some(origin);
        let o = self.origin_mut(origin);
        o.index.remove(seq);
        if own && seq.get() > *o.shipped.get_mut() {
            return;
        }
        o.superseded.insert(
            seq,
            Marker {
                key: key.clone(),
                by: by.0.clone(),
                by_seq: by.1,
            },
        );
        self.note_marker(origin, seq, Some(key.clone()));
    }

    /// Applies one register write of `origin` with LWW per register; the value moves into the store
    /// (leaving `None` in `w`: no copy of it is made). `on_change` hears what the key shows now when
    /// the write replaced its value register or changed whether it is live (see `Store::merge`).
    pub(super) fn apply(
        &mut self,
        origin: &Origin,
        w: &mut Write,
        on_change: &mut dyn FnMut(Shown<'_>),
    ) {
        let hash = self.entries.hash(&w.key);
        self.apply_hashed(origin, w, hash, on_change)
    }

    /// `apply` with the hash of the write's key already computed.
    pub(super) fn apply_hashed(
        &mut self,
        origin: &Origin,
        w: &mut Write,
        hash: u64,
        on_change: &mut dyn FnMut(Shown<'_>),
    ) {
        let key = &w.key.clone();
        self.note_key(key);
        let swept = self.swept_until;
        let old = self.entries.remove_hashed(hash, key);
        let (was_live, was_due) = match &old {
            Some(r) => {
                self.tally(&r.entry, -1);
                (
                    Self::is_live(&r.entry, swept),
                    Some(Self::due(&r.entry, swept)),
                )
            }
            None => (false, None),
        };
        let fresh = |entry| Record::new(key.clone(), entry);
        let expires = w.expires();
        let (record, value_replaced) = match (old, w.is_touch()) {
            (None, false) => (
                fresh(Entry {
                    value: w.take_value(),
                    hlc: w.hlc,
                    origin: origin.clone(),
                    seq: w.seq,
                    expires,
                    touch: None,
                }),
                true,
            ),
            (None, true) => (
                // The touch came before the write it touched: keep it; the write will land under it.
                fresh(Entry {
                    value: None,
                    hlc: Hlc(0),
                    origin: origin.clone(),
                    seq: Seq::ZERO,
                    expires: Expiry::NEVER,
                    touch: Some(Box::new(TouchRegister {
                        expires,
                        hlc: w.hlc,
                        origin: origin.clone(),
                        seq: w.seq,
                    })),
                }),
                false,
            ),
            (Some(mut r), false) => {
                let e = &mut r.entry;
                let changed = if beats(w.hlc, origin, e.hlc, &e.origin) {
                    self.supersede(&e.origin.clone(), e.seq, key, (origin, w.seq));
                    if let Some(t) = &e.touch {
                        if beats(w.hlc, origin, t.hlc, &t.origin) {
                            let (o, s) = (t.origin.clone(), t.seq);
                            self.supersede(&o, s, key, (origin, w.seq));
                            e.touch = None;
                        }
                    }
                    e.value = w.take_value();
                    e.hlc = w.hlc;
                    e.origin = origin.clone();
                    e.seq = w.seq;
                    e.expires = expires;
                    true
                } else {
                    let by = (e.origin.clone(), e.seq);
                    self.supersede(origin, w.seq, key, (&by.0, by.1));
                    false
                };
                (r, changed)
            }
            (Some(mut r), true) => {
                let e = &mut r.entry;
                let beats_value = e.seq == Seq::ZERO || beats(w.hlc, origin, e.hlc, &e.origin);
                let beats_touch = e
                    .touch
                    .as_ref()
                    .is_none_or(|t| beats(w.hlc, origin, t.hlc, &t.origin));
                if beats_value && beats_touch {
                    if let Some(t) = e.touch.take() {
                        self.supersede(&t.origin, t.seq, key, (origin, w.seq));
                    }
                    e.touch = Some(Box::new(TouchRegister {
                        expires,
                        hlc: w.hlc,
                        origin: origin.clone(),
                        seq: w.seq,
                    }));
                } else {
                    let by = match (&e.touch, beats_value) {
                        (Some(t), true) => (t.origin.clone(), t.seq),
                        _ => (e.origin.clone(), e.seq),
                    };
                    self.supersede(origin, w.seq, key, (&by.0, by.1));
                }
                (r, false)
            }
        };
        let e = &record.entry;
        let live = e.live_value(swept);
        let shown = match (live, value_replaced) {
            (Some(_), _) if value_replaced || !was_live => Some(false),
            // A delete is reported, as it always was; a value that is dead on arrival only when it
            // hid a live one, and then as an expiry.
            (None, true) if e.value.is_none() => Some(false),
            (None, _) if was_live => Some(true),
            _ => None,
        };
        if let Some(expired) = shown {
            on_change(Shown {
                key,
                value: live,
                expired,
            });
        }
        let stored = e.write_for(key, origin, w.seq).is_some();
        self.tally(&record.entry, 1);
        let due = Self::due(&record.entry, swept);
        self.entries.insert_hashed(hash, record);
        if stored {
            self.index_insert_hashed(origin, w.seq, hash);
        }
        // What the key waits for is queued already unless the write changed it.
        if was_due != Some(due) {
            self.schedule_due(key, due);
        }
    }

    /// Writes, as `me`, a tombstone of `w`'s key at `hlc`, standing in for a collected register that
    /// `w` would otherwise beat (see `CollectedKeys`).
    pub(super) fn stand_in(
        &mut self,
        me: &Origin,
        w: &Write,
        hlc: Hlc,
        on_change: &mut dyn FnMut(Shown<'_>),
    ) {
        let seq = self.next_own_seq(me);
        let mut tombstone = Write {
            key: w.key.clone(),
            hlc,
            seq,
            op: Op::Delete,
        };
        // Listeners hear of it only if it hides a live value (a key already dead stays dead).
        let swept = self.swept_until;
        let was_live = self
            .entries
            .get(&w.key)
            .is_some_and(|e| Self::is_live(e, swept));
        self.apply(me, &mut tombstone, &mut |t| {
            if was_live {
                on_change(t)
            }
        });
    }

    pub(super) fn name_me(&mut self, me: &Origin) {
        if self.me.is_none() {
            self.me = Some(me.clone());
        }
    }

    pub(super) fn remove_entry(&mut self, key: &Arc<str>) {
        self.note_key(key);
        if let Some(r) = self.entries.remove(key) {
            let e = &r.entry;
            self.tally(e, -1);
            if let Some(o) = self.origins.get_mut(&e.origin) {
                o.index.remove(e.seq);
            }
            if let Some(t) = &e.touch {
                if let Some(o) = self.origins.get_mut(&t.origin) {
                    o.index.remove(t.seq);
                }
            }
        }
    }

    pub(super) fn now(&self, now_ms: u64) -> u64 {
        now_ms.max(self.swept_until)
    }

    /// One bounded step of each queue's compaction (see `DueQueue`); every exclusive section ends
    /// with it. An item is kept while it is still what its key waits for, as the queues' readers judge.
    pub(super) fn compact_queues(&mut self) {
        let (entries, now) = (&self.entries, self.swept_until);
        self.expiries.compact(self.live_entries, |at, k| {
            entries
                .get(k)
                .is_some_and(|e| e.expiry() == Expiry::at_ms(at))
        });
        self.dead.compact(self.dead_entries, |at, k| {
            entries.get(k).and_then(|e| e.death_ms(now)) == Some(at)
        });
    }
}

/// A queue of `(time, key)` items, earliest first, that may hold stale items (their key changed
/// since), which its readers skip. Once items outnumber four times those wanted, they move to
/// `draining` and are popped from it in order, a bounded number per exclusive section (twice the
/// section's own pushes, plus `COMPACT_STEP`), the valid ones pushed back: no section pays for a whole
/// pass over the queue, and the queue shrinks faster than it grows until the draining is done.
///
/// Invariant: the items are the union of both heaps, and `peek` and `pop` take the earliest of the
/// two, so readers see the order one heap would give; compaction drops only items its caller's test
/// finds stale, the test the readers apply.
#[derive(Default)]
pub(super) struct DueQueue {
    heap: BinaryHeap<Reverse<(u64, Arc<str>)>>,
    draining: BinaryHeap<Reverse<(u64, Arc<str>)>>,
    /// Pushes since the last compaction step.
    pushed: usize,
}

/// Items a compaction step pops beyond twice the section's own pushes. Small, since sections come in
/// runs: a page of `SessionStore.clear()` is 1,000 deletes in one turn of the event loop, and 64 pops
/// each held the loop 150-340 ms per page (1,000,000 sessions); 4 still drain N stale items within N/4
/// sections, the deletes that made them stale.
const COMPACT_STEP: usize = 4;

impl DueQueue {
    pub(super) fn push(&mut self, at: u64, key: Arc<str>) {
        self.heap.push(Reverse((at, key)));
        self.pushed += 1;
    }

    /// The earliest item.
    pub(super) fn peek(&self) -> Option<(u64, &Arc<str>)> {
        let from = if self.earliest_is_draining() {
            &self.draining
        } else {
            &self.heap
        };
        from.peek().map(|Reverse((at, k))| (*at, k))
    }

    /// Takes the earliest item.
    pub(super) fn pop(&mut self) -> Option<(u64, Arc<str>)> {
        let from = if self.earliest_is_draining() {
            &mut self.draining
        } else {
            &mut self.heap
        };
        from.pop().map(|Reverse(item)| item)
    }

    fn earliest_is_draining(&self) -> bool {
        match (self.heap.peek(), self.draining.peek()) {
            (Some(Reverse(a)), Some(Reverse(b))) => b < a,
            (None, Some(_)) => true,
            _ => false,
        }
    }

    /// Items held, stale ones included.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.heap.len() + self.draining.len()
    }

    /// Starts draining when the items outnumber `4 * wanted + 1024` (none being drained), then pops a
    /// bounded number of draining items, keeping those `valid` accepts.
    fn compact(&mut self, wanted: usize, mut valid: impl FnMut(u64, &Arc<str>) -> bool) {
        let budget = 2 * std::mem::take(&mut self.pushed) + COMPACT_STEP;
        if self.draining.is_empty() {
            if self.heap.len() <= 4 * wanted + 1024 {
                return;
            }
            std::mem::swap(&mut self.heap, &mut self.draining);
        }
        for _ in 0..budget {
            let Some(Reverse((at, key))) = self.draining.pop() else {
                break;
            };
            if valid(at, &key) {
                self.heap.push(Reverse((at, key)));
            }
        }
    }
}
