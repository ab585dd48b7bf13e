//! `MemoryStore`: the default backend, the whole state behind one `RwLock`, implementing `Store`.
//!
//! Reads take the lock shared; every write, merge, sweep and collection takes it exclusively, which is
//! what makes each `merge` atomic with respect to `chunk` and the contexts.
//!
//! The live-key count and the earliest pending expiry are also published in atomics as each exclusive
//! section ends (still under the lock), so `live_len` and `next_expiry` never wait for a merge: each
//! reads exactly what the last finished section left, never a count halfway through one.
//!
//! Files: this one (the lock, and `Store` on it), `merge` (what peers send, merged), `ship` (chunks
//! cut to send), `collect` (tombstone collection and markers). Their functions take the state the
//! trait method here locked, so each runs in one section.

mod collect;
#[cfg(test)]
pub(super) use collect::COLLECT_SLICE;
mod merge;
mod ship;

use super::{
    Changes, Chunk, ChunkLimits, Collected, CollectedRecord, Entry, Expiry, Journal, Lifetime,
    Marker, Merged, Op, Record, ScanCursor, Shown, Stamp, State, Store, Write,
};
use crate::hash::HashMap;
use crate::replication::clock::{Clock, Hlc};
use crate::replication::ranges::{Seq, SeqRanges};
use crate::replication::replica::Origin;
use crate::replication::store::Incoming;
use parking_lot::{RwLock, RwLockWriteGuard};
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
        self.guard.compact_queues();
        // Stored before the lock is released, so the figures follow the sections' order.
        publish(&self.guard, self.live, self.next_expiry);
    }
}

fn publish(state: &State, live: &AtomicUsize, next_expiry: &AtomicU64) {
    live.store(state.live_entries, Ordering::Release);
    let at = state.expiries.peek().map_or(NO_EXPIRY, |(at, _)| at);
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
        markers: Vec<(Origin, Seq, Arc<str>)>,
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
        let current: HashMap<&str, (&Origin, Seq)> = if markers.is_empty() {
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
            *o.shipped.get_mut() = o.context.max().get();
        }
        for (key, entry) in entries {
            let registers: Vec<(Origin, Seq)> =
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
            Expiry::NEVER => e.value.as_deref(),
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

    fn expiry_of(&self, key: &str, now_ms: u64) -> Option<Expiry> {
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
        let op = match value {
            None => Op::Delete,
            Some(value) => Op::Set {
                value,
                expires: match lifetime {
                    Lifetime::Forever => Expiry::NEVER,
                    Lifetime::Ttl(ms) => {
                        Expiry::at_ms(state.now(hlc.physical_ms()).saturating_add(ms.max(1)))
                    }
                    Lifetime::Until(at) => Expiry::at_ms(at),
                },
            },
        };
        let mut write = Write { key, hlc, seq, op };
        // A local write always wins, so the value moves into the store; the write returned keeps an
        // empty one in its place.
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
            op: Op::Touch {
                expires: Expiry::at_ms(state.now(hlc.physical_ms()).saturating_add(ttl_ms.max(1))),
            },
        };
        state.apply(me, &mut write, &mut |_| {});
        Some(write)
    }

    fn merge_chunk(
        &self,
        me: &Origin,
        origin: &Origin,
        chunk: Incoming<'_>,
        on_change: &mut dyn FnMut(Shown<'_>),
    ) -> Merged {
        merge::merge_chunk(&mut self.write(), me, origin, chunk, on_change)
    }

    fn expire(&self, now_ms: u64, on_expired: &mut dyn FnMut(&Arc<str>)) {
        let mut state = self.write();
        let now = state.now(now_ms);
        let before = state.swept_until;
        state.swept_until = now;
        let mut last: Option<(u64, Arc<str>)> = None;
        while let Some((at, _)) = state.expiries.peek() {
            if at > now {
                break;
            }
            let (at, key) = state.expiries.pop().expect("peeked");
            // Equal items pop one after another: the first one counted the key.
            if last.as_ref().is_some_and(|(t, k)| *t == at && *k == key) {
                continue;
            }
            let Some(e) = state.entries.get(&key) else {
                continue;
            };
            // Stale unless this is still the key's expiry, it holds a value and it crossed just now
            // (it was live at `before`, counted so, and is dead at `now`).
            if e.expiry() != Expiry::at_ms(at) || e.value.is_none() || at <= before {
                continue;
            }
            state.live_entries -= 1;
            state.dead_entries += 1;
            state.dead.push(at, key.clone());
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

    fn chunk(&self, origin: &Origin, start: Seq, end: Seq, limits: ChunkLimits) -> Chunk {
        ship::chunk(&self.state.read(), origin, start, end, limits)
    }

    fn scan_writes(&self, prefix: &str, f: &mut dyn FnMut(&Origin, Write)) {
        let state = self.state.read();
        for (k, e) in state.entries.iter() {
            if k.starts_with(prefix) {
                for (o, w) in e.writes(k) {
                    // Sent out (a partial fetch): an own write may be elsewhere from now on.
                    if let Some(st) = state.origins.get(&o) {
                        st.shipped
                            .fetch_max(w.seq.get(), std::sync::atomic::Ordering::Relaxed);
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

    fn restore_registers(
        &self,
        origin: &Origin,
        writes: Vec<Write>,
        on_change: &mut dyn FnMut(Shown<'_>),
    ) -> usize {
        merge::restore_registers(&mut self.write(), origin, writes, on_change)
    }

    fn stored_print(&self) -> u64 {
        self.state.read().entries.print()
    }

    fn entry_count(&self) -> usize {
        self.state.read().entries.len()
    }

    fn tombstone_count(&self) -> usize {
        self.state.read().dead_entries
    }

    /// In slices of `collect::COLLECT_SLICE` dead entries, each under its own hold of the lock.
    fn collect(
        &self,
        older_than_ms: u64,
        collectable: &mut dyn FnMut(&Origin, Seq) -> bool,
    ) -> usize {
        let mut keep = Vec::new();
        let mut dropped = 0;
        loop {
            let (n, more) = collect::collect_slice(
                &mut self.write(),
                older_than_ms,
                collectable,
                collect::COLLECT_SLICE,
                &mut keep,
            );
            dropped += n;
            if !more {
                break;
            }
        }
        if !keep.is_empty() {
            collect::put_back(&mut self.write(), keep);
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
        collect::learn_collected(&mut self.write(), me, records, on_change)
    }

    fn marker_count(&self) -> usize {
        let state = self.state.read();
        state.origins.values().map(|o| o.superseded.len()).sum()
    }

    fn compact_markers(&self, everywhere: &mut dyn FnMut(&Origin, Seq) -> bool) -> usize {
        collect::compact_markers(&mut self.write(), everywhere)
    }

    fn stored_dots(&self, origin: &Origin, within: &SeqRanges) -> SeqRanges {
        let state = self.state.read();
        let mut out = SeqRanges::new();
        if let Some(o) = state.origins.get(origin) {
            for (a, b) in within.ranges() {
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

    fn keys_of_dots(&self, origin: &Origin, dots: &SeqRanges) -> Vec<(Arc<str>, Seq)> {
        let state = self.state.read();
        let Some(o) = state.origins.get(origin) else {
            return Vec::new();
        };
        dots.ranges()
            .flat_map(|(a, b)| o.index.range(a, b))
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
                            .fetch_max(w.seq.get(), std::sync::atomic::Ordering::Relaxed);
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
        merge::drop_dots(&mut self.write(), origin, dots, on_change)
    }
}
