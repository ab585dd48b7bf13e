//! `MemoryStore`: the default backend, the whole state behind one `RwLock`, implementing `Store`.
//!
//! Reads take the lock shared; every write, merge, sweep and collection takes it exclusively, which is
//! what makes each `merge` atomic with respect to `chunk` and the contexts.
//!
//! The live-key count and the earliest pending expiry are also published in atomics as each exclusive
//! section ends (still under the lock), so `live_len` and `next_expiry` never wait for a merge: each
//! reads exactly what the last finished section left, never a count halfway through one.

use super::{
    key_fingerprint, Changes, Chunk, ChunkLimits, Collected, CollectedRecord, Entry, Journal,
    Lifetime, Marker, Merged, Record, ScanCursor, Shown, Stamp, State, Store, Write,
};
use crate::clock::{Clock, Hlc};
use crate::hash::{HashMap, HashSet};
use crate::ranges::SeqRanges;
use crate::replica::Origin;
use parking_lot::{RwLock, RwLockWriteGuard};
use std::cmp::Reverse;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The default backend: everything in memory behind one reader-writer lock.
pub struct MemoryStore {
    pub(super) state: RwLock<State>,
    /// `State::live_entries` as the last exclusive section left it.
    live: AtomicUsize,
    /// The earliest pending expiry as the last exclusive section left it; `NO_EXPIRY` when none.
    next_expiry: AtomicU64,
}

/// `next_expiry` with nothing pending (an expiry at `u64::MAX` is never due either).
const NO_EXPIRY: u64 = u64::MAX;

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::from_state(State::default())
    }
}

/// The exclusive lock on the state; publishes the figures read without the lock when it is released.
struct Writing<'a> {
    guard: RwLockWriteGuard<'a, State>,
    live: &'a AtomicUsize,
    next_expiry: &'a AtomicU64,
}

impl std::ops::Deref for Writing<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for Writing<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        // Stored before the lock is released, so the figures follow the sections' order.
        publish(&self.guard, self.live, self.next_expiry);
    }
}

fn publish(state: &State, live: &AtomicUsize, next_expiry: &AtomicU64) {
    live.store(state.live_entries, Ordering::Release);
    let at = state
        .expiries
        .peek()
        .map_or(NO_EXPIRY, |Reverse((at, _))| *at);
    next_expiry.store(at, Ordering::Release);
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn from_state(state: State) -> Self {
        let live = AtomicUsize::new(0);
        let next_expiry = AtomicU64::new(NO_EXPIRY);
        publish(&state, &live, &next_expiry);
        MemoryStore {
            state: RwLock::new(state),
            live,
            next_expiry,
        }
    }

    /// Takes the lock exclusively. Every change to the state goes through here.
    fn write(&self) -> Writing<'_> {
        Writing {
            guard: self.state.write(),
            live: &self.live,
            next_expiry: &self.next_expiry,
        }
    }

    /// A store that records what changes, for a durable backend to drain and persist.
    pub fn journaled() -> Self {
        let store = MemoryStore::default();
        store.write().journal = Some(Journal::default());
        store
    }

    /// Rebuilds a store from persisted entries, contexts, markers and collected-register records (the
    /// derived index, counters and queues are computed here). `journaled` as in `MemoryStore::journaled`.
    pub fn restore(
        entries: Vec<(Arc<str>, Entry)>,
        contexts: Vec<(Origin, SeqRanges)>,
        markers: Vec<(Origin, u64, Arc<str>)>,
        mut collected: Vec<CollectedRecord>,
        collected_beyond: Hlc,
        journaled: bool,
    ) -> Self {
        let mut state = State::default();
        collected.sort_by_key(|r| r.at_ms);
        for r in collected {
            let register = Collected {
                hlc: r.hlc,
                origin: r.origin,
            };
            state.collected.remember(r.fingerprint, register, r.at_ms);
        }
        state.collected.beyond = collected_beyond;
        state.collected.newest = state.collected.newest.max(collected_beyond);
        for (origin, ctx) in contexts {
            state.origins.entry(origin).or_default().context = ctx;
        }
        // Each marker looks its key up: a search of the entries per marker was quadratic in the
        // size of a directory whose keys were all rewritten.
        let current: HashMap<&str, (&Origin, u64)> = if markers.is_empty() {
            HashMap::default()
        } else {
            entries
                .iter()
                .map(|(k, e)| (&**k, (&e.origin, e.seq)))
                .collect()
        };
        for (origin, seq, key) in markers {
            // The superseding dot was not persisted: the key's current value register stands for it
            // (it is at least as new), else the marker's own dot (the key is gone: compacted next).
            let by = current
                .get(&*key)
                .map(|&(o, s)| (o.clone(), s))
                .unwrap_or_else(|| (origin.clone(), seq));
            state.origins.entry(origin).or_default().superseded.insert(
                seq,
                Marker {
                    key,
                    by: by.0,
                    by_seq: by.1,
                },
            );
        }
        drop(current);
        // What was covered before the restart may have been shipped.
        for o in state.origins.values_mut() {
            *o.shipped.get_mut() = o.context.max();
        }
        for (key, entry) in entries {
            let registers: Vec<(Origin, u64)> =
                entry.writes(&key).map(|(o, w)| (o, w.seq)).collect();
            state.tally(&entry, 1);
            state.entries.insert(Record::new(key.clone(), entry));
            for (origin, seq) in registers {
                state.index_insert(&origin, seq, &key);
            }
            state.schedule(&key);
        }
        if journaled {
            state.journal = Some(Journal::default());
        }
        MemoryStore::from_state(state)
    }
}

impl Store for MemoryStore {
    fn read_stamped(
        &self,
        key: &str,
        now_ms: &dyn Fn() -> u64,
        f: &mut dyn FnMut(&[u8], Stamp),
    ) -> bool {
        let state = self.state.read();
        let Some(e) = state.entries.get(key) else {
            return false;
        };
        // The clock is read only for a key that can expire.
        let value = match e.expiry() {
            0 => e.value.as_deref(),
            _ => e.live_value(state.now(now_ms())),
        };
        match value {
            Some(v) => {
                let stamp = Stamp {
                    hlc: e.hlc.0,
                    origin: e.origin.addr(),
                };
                f(v, stamp);
                true
            }
            None => false,
        }
    }

    fn live_len(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    fn scan(&self, prefix: &str, now_ms: u64, f: &mut dyn FnMut(&str, &[u8])) {
        let state = self.state.read();
        let now = state.now(now_ms);
        for (k, e) in state.entries.iter() {
            if k.starts_with(prefix) {
                if let Some(v) = e.live_value(now) {
                    f(k, v);
                }
            }
        }
    }

    fn count(&self, prefix: &str, now_ms: u64) -> usize {
        let state = self.state.read();
        let now = state.now(now_ms);
        state
            .entries
            .iter()
            .filter(|(k, e)| k.starts_with(prefix) && e.live_value(now).is_some())
            .count()
    }

    fn scan_page(
        &self,
        prefix: &str,
        now_ms: u64,
        from: ScanCursor,
        limit: usize,
        f: &mut dyn FnMut(&str, &[u8]),
    ) -> Option<ScanCursor> {
        // Buckets looked at per page: a sparse prefix costs one page a bounded stretch, not the table.
        const BUCKETS_PER_KEY: usize = 16;
        let state = self.state.read();
        let now = state.now(now_ms);
        let limit = limit.max(1);
        let mut left = limit;
        let mut visit = |k: &Arc<str>, e: &Entry| {
            if k.starts_with(prefix) {
                if let Some(v) = e.live_value(now) {
                    f(k, v);
                    left = left.saturating_sub(1);
                }
            }
            left > 0
        };
        let max_buckets = limit.saturating_mul(BUCKETS_PER_KEY);
        let next = state
            .entries
            .walk_from(from.position, max_buckets, &mut visit);
        next.map(|position| ScanCursor { position })
    }

    fn expiry_of(&self, key: &str, now_ms: u64) -> Option<u64> {
        let state = self.state.read();
        let now = state.now(now_ms);
        let e = state.entries.get(key)?;
        e.live_value(now)?;
        Some(e.expiry())
    }

    fn write_local(
        &self,
        me: &Origin,
        clock: &Clock,
        key: &str,
        value: Option<Box<[u8]>>,
        lifetime: Lifetime,
        on_change: &mut dyn FnMut(Shown<'_>),
    ) -> Write {
        let mut state = self.write();
        state.name_me(me);
        // An overwrite shares the stored key rather than allocating another.
        let hash = state.entries.hash(key);
        let key = match state.entries.get_hashed(hash, key) {
            Some((stored, _)) => stored.clone(),
            None => Arc::from(key),
        };
        let hlc = clock.tick();
        let seq = state.next_own_seq(me);
        // A time to live counts from the store's now, not the stamp alone: after the wall clock
        // stepped back the stamp may be older than what was swept, and the value would be stored dead.
        let expires_ms = match (lifetime, &value) {
            (_, None) | (Lifetime::Forever, _) => 0,
            (Lifetime::Ttl(ms), _) => state.now(hlc.physical_ms()).saturating_add(ms.max(1)),
            (Lifetime::Until(at), _) => at,
        };
        let mut write = Write {
            key,
            hlc,
            seq,
            value,
            expires_ms,
            touch: false,
        };
        // A local write always wins, so the value moves into the store; the write returned has none.
        state.apply_hashed(me, &mut write, hash, on_change);
        write
    }

    fn touch_local(&self, me: &Origin, clock: &Clock, key: Arc<str>, ttl_ms: u64) -> Option<Write> {
        let mut state = self.write();
        state.name_me(me);
        let now = state.now(clock.now().physical_ms());
        state.entries.get(&key)?.live_value(now)?;
        let hlc = clock.tick();
        let seq = state.next_own_seq(me);
        let mut write = Write {
            key,
            hlc,
            seq,
            value: None,
            expires_ms: state.now(hlc.physical_ms()).saturating_add(ttl_ms.max(1)),
            touch: true,
        };
        state.apply(me, &mut write, &mut |_| {});
        Some(write)
    }

    fn merge_chunk(
        &self,
        me: &Origin,
        origin: &Origin,
        writes: Vec<Write>,
        covered: &SeqRanges,
        superseded: &[(Arc<str>, Vec<u64>)],
        superseders: Vec<(Origin, Write)>,
        on_change: &mut dyn FnMut(Shown<'_>),
    ) -> Merged {
        let mut state = self.write();
        state.name_me(me);
        // Superseded dots new here: known before the writes and the coverage land.
        let known = state
            .origins
            .get(origin)
            .map(|o| o.context.clone())
            .unwrap_or_default();
        let fresh_superseded: Vec<(&Arc<str>, u64)> = superseded
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
        let (touches, values): (Vec<_>, Vec<_>) = all.partition(|(_, w)| w.touch);
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
            net.hold(&state, &w.key);
            let on_change = &mut |shown: Shown<'_>| net.route(shown, on_change);
            if w.hlc <= state.collected.newest {
                let current = state
                    .entries
                    .get(&w.key)
                    .filter(|e| e.seq > 0)
                    .map(|e| (e.hlc, e.origin.clone(), e.value.is_none()));
                let current = current.as_ref().map(|(h, o, t)| (*h, o, *t));
                if let Some(hlc) = state.collected.stand_in_time(&w, &o, current, me) {
                    state.stand_in(me, &w, hlc, on_change);
                    merged.stand_ins += 1;
                }
            }
            state.apply(&o, &mut w, on_change);
        }
        net.hear(&state, on_change);
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
                .filter(|(_, e)| e.seq > 0)
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

    fn expire(&self, now_ms: u64, on_expired: &mut dyn FnMut(&Arc<str>)) {
        let mut state = self.write();
        let now = state.now(now_ms);
        let before = state.swept_until;
        state.swept_until = now;
        let mut last: Option<(u64, Arc<str>)> = None;
        while let Some(Reverse((at, _))) = state.expiries.peek() {
            if *at > now {
                break;
            }
            let Reverse((at, key)) = state.expiries.pop().expect("peeked");
            // Equal items pop one after another: the first one counted the key.
            if last.as_ref().is_some_and(|(t, k)| *t == at && *k == key) {
                continue;
            }
            let Some(e) = state.entries.get(&key) else {
                continue;
            };
            // Stale unless this is still the key's expiry, it holds a value and it crossed just now
            // (it was live at `before`, counted so, and is dead at `now`).
            if e.expiry() != at || e.value.is_none() || at <= before {
                continue;
            }
            state.live_entries -= 1;
            state.dead_entries += 1;
            state.dead.push(Reverse((at, key.clone())));
            on_expired(&key);
            last = Some((at, key));
        }
    }

    fn next_expiry(&self) -> Option<u64> {
        match self.next_expiry.load(Ordering::Acquire) {
            NO_EXPIRY => None,
            at => Some(at),
        }
    }

    fn context(&self) -> Vec<(Origin, SeqRanges)> {
        let state = self.state.read();
        state
            .origins
            .iter()
            .filter(|(_, o)| !o.context.is_empty())
            .map(|(origin, o)| (origin.clone(), o.context.clone()))
            .collect()
    }

    fn context_of(&self, origin: &Origin) -> SeqRanges {
        let state = self.state.read();
        state
            .origins
            .get(origin)
            .map(|o| o.context.clone())
            .unwrap_or_default()
    }

    fn chunk(&self, origin: &Origin, start: u64, end: u64, limits: ChunkLimits) -> Chunk {
        let state = self.state.read();
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
        let mut superseder_dots: HashSet<(Origin, u64)> = HashSet::default();
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
                    Some(w) if !w.touch => e
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
                .map(|(_, w)| w.key.len() + w.value.as_ref().map_or(0, |v| v.len()) + 40)
                .sum::<usize>()
                + if is_stored { 0 } else { 8 };
            let count = chunk.writes.len() + chunk.superseders.len();
            if count > 0 && (count >= limits.max_writes || bytes + size > limits.max_bytes) {
                last = seq - 1;
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
            let written: HashSet<u64> = chunk.writes.iter().map(|w| w.seq).collect();
            chunk
                .superseders
                .retain(|(o, w)| !(o == origin && written.contains(&w.seq)));
        }
        chunk.covered = o.context.clamp(start, last);
        if let Some(&(_, high)) = chunk.covered.ranges().last() {
            o.shipped
                .fetch_max(high, std::sync::atomic::Ordering::Relaxed);
        }
        // A superseder leaves too: an own write among them may be elsewhere from now on, and must
        // leave a marker when it is overwritten.
        for (other, w) in &chunk.superseders {
            if let Some(st) = state.origins.get(other) {
                st.shipped
                    .fetch_max(w.seq, std::sync::atomic::Ordering::Relaxed);
            }
        }
        chunk
    }

    fn scan_writes(&self, prefix: &str, f: &mut dyn FnMut(&Origin, Write)) {
        let state = self.state.read();
        for (k, e) in state.entries.iter() {
            if k.starts_with(prefix) {
                for (o, w) in e.writes(k) {
                    // Sent out (a partial fetch): an own write may be elsewhere from now on.
                    if let Some(st) = state.origins.get(&o) {
                        st.shipped
                            .fetch_max(w.seq, std::sync::atomic::Ordering::Relaxed);
                    }
                    f(&o, w);
                }
            }
        }
    }

    fn registers(&self, key: &str) -> Vec<(Origin, Write)> {
        let state = self.state.read();
        match state.entries.get_key_value(key) {
            Some((k, e)) => e.writes(k).collect(),
            None => Vec::new(),
        }
    }

    fn entry_count(&self) -> usize {
        self.state.read().entries.len()
    }

    fn tombstone_count(&self) -> usize {
        self.state.read().dead_entries
    }

    fn collect(
        &self,
        older_than_ms: u64,
        collectable: &mut dyn FnMut(&Origin, u64) -> bool,
    ) -> usize {
        let mut state = self.write();
        let mut dropped = 0;
        let mut keep = Vec::new();
        let now = state.swept_until;
        while let Some(Reverse((at, _))) = state.dead.peek() {
            if *at >= older_than_ms {
                break;
            }
            let Reverse((at, key)) = state.dead.pop().expect("peeked");
            let Some(e) = state.entries.get(&key) else {
                continue;
            };
            if e.death_ms(now) != Some(at) {
                continue; // written again since; that write has its own fate
            }
            let everywhere = e.writes(&key).all(|(o, w)| collectable(&o, w.seq));
            if everywhere {
                let value = (e.seq > 0).then(|| Collected {
                    hlc: e.hlc,
                    origin: Some(e.origin.clone()),
                });
                // A touch whose expiry has passed expires every older write that comes back, as it
                // would have under the touch: it guards the key like a tombstone at its time.
                let touch = e
                    .touch
                    .as_ref()
                    .filter(|t| t.expires_ms <= now)
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
                keep.push(Reverse((at, key)));
            }
        }
        state.dead.extend(keep);
        // Stale heap items are dropped lazily; rebuild when they dominate.
        if state.dead.len() > 4 * state.dead_entries + 1024 {
            let state = &mut *state;
            let entries = &state.entries;
            let items: Vec<_> = std::mem::take(&mut state.dead)
                .into_iter()
                .filter(|Reverse((at, k))| {
                    entries.get(k).and_then(|e| e.death_ms(now)) == Some(*at)
                })
                .collect();
            state.dead = items.into_iter().collect();
        }
        if state.expiries.len() > 4 * state.live_entries + 1024 {
            let state = &mut *state;
            let entries = &state.entries;
            let items: Vec<_> = std::mem::take(&mut state.expiries)
                .into_iter()
                .filter(|Reverse((at, k))| entries.get(k).is_some_and(|e| e.expiry() == *at))
                .collect();
            state.expiries = items.into_iter().collect();
        }
        dropped
    }

    fn forget_collected(&self, before_ms: u64) {
        let mut state = self.write();
        let beyond = state.collected.beyond;
        let mut dropped = Vec::new();
        state.collected.forget(before_ms, &mut dropped);
        for fingerprint in dropped {
            state.note_collected(fingerprint);
        }
        if state.collected.beyond != beyond {
            if let Some(j) = &mut state.journal {
                j.beyond = true;
            }
        }
    }

    fn collected_remembered(&self) -> usize {
        self.state.read().collected.by_key.len()
    }

    fn collected_records(&self) -> Vec<(CollectedRecord, Option<Origin>)> {
        let state = self.state.read();
        state
            .collected
            .by_key
            .iter()
            .map(|(&fingerprint, (register, at_ms))| {
                let record = CollectedRecord {
                    fingerprint,
                    hlc: register.hlc,
                    origin: register.origin.clone(),
                    at_ms: *at_ms,
                };
                (record, register.origin.clone())
            })
            .collect()
    }

    fn learn_collected(
        &self,
        me: &Origin,
        records: Vec<(CollectedRecord, Option<Origin>)>,
        on_change: &mut dyn FnMut(Shown<'_>),
    ) -> usize {
        let mut state = self.write();
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
                let w = e.value_write(key).filter(|w| w.value.is_some())?;
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

    fn marker_count(&self) -> usize {
        let state = self.state.read();
        state.origins.values().map(|o| o.superseded.len()).sum()
    }

    fn compact_markers(&self, everywhere: &mut dyn FnMut(&Origin, u64) -> bool) -> usize {
        let mut state = self.write();
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

    fn stored_dots(&self, origin: &Origin, within: &SeqRanges) -> SeqRanges {
        let state = self.state.read();
        let mut out = SeqRanges::new();
        if let Some(o) = state.origins.get(origin) {
            for &(a, b) in within.ranges() {
                for seq in o.index.range(a, b).map(|(s, _)| s) {
                    out.insert(seq);
                }
            }
        }
        out
    }

    fn drain_changes(&self) -> Option<Changes> {
        let mut state = self.write();
        let journal = std::mem::take(state.journal.as_mut()?);
        let entries = journal
            .keys
            .into_iter()
            .map(|k| {
                let e = state.entries.get(&k).cloned();
                (k, e)
            })
            .collect();
        let contexts = journal
            .contexts
            .into_iter()
            .map(|o| {
                let ctx = state
                    .origins
                    .get(&o)
                    .map(|s| s.context.clone())
                    .unwrap_or_default();
                (o, ctx)
            })
            .collect();
        let collected = journal
            .collected
            .into_iter()
            .map(|fingerprint| {
                let record = state
                    .collected
                    .by_key
                    .get(&fingerprint)
                    .map(|(register, at_ms)| CollectedRecord {
                        fingerprint,
                        hlc: register.hlc,
                        origin: register.origin.clone(),
                        at_ms: *at_ms,
                    });
                (fingerprint, record)
            })
            .collect();
        Some(Changes {
            entries,
            contexts,
            markers: journal.markers,
            collected,
            collected_beyond: journal.beyond.then_some(state.collected.beyond),
        })
    }

    fn keys_of_dots(&self, origin: &Origin, dots: &SeqRanges) -> Vec<(Arc<str>, u64)> {
        let state = self.state.read();
        let Some(o) = state.origins.get(origin) else {
            return Vec::new();
        };
        dots.ranges()
            .iter()
            .flat_map(|&(a, b)| o.index.range(a, b))
            .filter_map(|(s, hash)| {
                let (key, _) = state.entries.by_dot(hash, origin, s)?;
                Some((key.clone(), s))
            })
            .collect()
    }

    fn ship_registers(&self, keys: &[Arc<str>]) -> Vec<(Origin, Write)> {
        let state = self.state.read();
        let mut out = Vec::new();
        for key in keys {
            if let Some((k, e)) = state.entries.get_key_value(key) {
                for (o, w) in e.writes(k) {
                    if let Some(st) = state.origins.get(&o) {
                        st.shipped
                            .fetch_max(w.seq, std::sync::atomic::Ordering::Relaxed);
                    }
                    out.push((o, w));
                }
            }
        }
        out
    }

    fn drop_dots(
        &self,
        origin: &Origin,
        dots: &SeqRanges,
        on_change: &mut dyn FnMut(Shown<'_>),
    ) -> usize {
        let mut state = self.write();
        let swept = state.swept_until;
        let found: Vec<(u64, Arc<str>)> = match state.origins.get(origin) {
            Some(o) => dots
                .ranges()
                .iter()
                .flat_map(|&(a, b)| o.index.range(a, b))
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
            let revives = !value_dot
                && !was_live
                && e.value.is_some()
                && (e.expires_ms == 0 || e.expires_ms > swept);
            if revives {
                continue;
            }
            dropped += 1;
            // Whether the key keeps a register: the other one than the dropped one.
            let left = if value_dot {
                e.touch.is_some()
            } else {
                e.seq > 0
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
                e.seq = 0;
                e.expires_ms = 0;
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
