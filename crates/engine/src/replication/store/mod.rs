//! Bucket storage: the `Store` trait every backend implements, and `MemoryStore`, the default backend.
//!
//! A bucket replica is a last-writer-wins map with a causal context:
//! - `key -> Entry`: per key two registers. The value register holds a value or a tombstone (a set
//!   writes it with its expiry, a delete with none); the touch register, present only when a `touch`
//!   is newer than the value register, holds a later expiry. A touch can therefore neither revert a
//!   newer set nor revive a deleted key.
//! - per origin, an index `seq -> key` holding exactly the dots of the registers stored now, so
//!   catch-up can walk "what origin X wrote after seq n" without a history log;
//! - per origin, superseded markers `seq -> key` for dots whose write lost to a newer one, kept until
//!   every member holds the write that superseded them;
//! - per origin, the context: every seq this replica has applied or been told is covered.
//!
//! A dot enters the context under the same lock that puts its entry in the map and the index, so a
//! reader of the context never claims a dot whose entry it cannot see. A chunk that covers superseded
//! dots also carries the current registers of their keys (the superseders): a replica that takes the
//! coverage then holds something at least as new, even if the superseder's writer dies before anyone
//! else has it.
//!
//! Expiry is an absolute time replicated with the value. An expired entry is hidden at once; a sweep
//! (`expire`) driven by a time-ordered heap reports it and hands it, like a tombstone, to collection,
//! which drops dead entries once every member holds their dots (see `collect`).
//!
//! What a backend must guarantee:
//! - `merge` applies the LWW rule of `beats` per register, atomically per call with respect to `chunk`,
//!   `context_of` and `context`; merging the same write twice changes nothing; a write whose dot is
//!   already in the context is ignored;
//! - a dot is in the context only once its register is stored (or known superseded: then it is a
//!   marker, and `chunk` carries the superseding registers with any coverage it claims);
//! - `read`, `scan` and `live_len` never show a tombstone or an expired value, and `live_len` is
//!   exact: every entry is counted once, as live or dead, and a sweep moves an entry from live to dead
//!   once, however many writes scheduled its expiry;
//! - listeners hear what a key shows change, once per change: a value that is already expired when it
//!   is stored is never announced live, and each live value that expires is reported once;
//! - `collect` remembers every value register it drops, by key, and `merge` answers a new write older
//!   than such a register by the order `(hlc, origin)` (one it would otherwise let win) with a
//!   stand-in tombstone that never beats a write newer than the register (`CollectedKeys`);
//! - for durability, `drain_changes` returns everything changed since the last call, read under the
//!   same lock as the changes, so that persisting it writes a state the store really was in.
//!
//! Two backends show the range: `MemoryStore` (everything in one `RwLock`ed state, the default) and the
//! data-directory backend of `disk`, which is a journaled `MemoryStore` (reads stay memory reads) whose
//! changes a flusher thread commits to redb in groups. Another backend can wrap `MemoryStore` the same
//! way, or implement the trait from scratch against these rules; `tests/simulation.rs` and the property
//! tests in `tests` are the checks to run it through.
//!
//! Files: `register` (a key's registers and the order `beats`), `chunk` (what travels to and from the
//! sync protocol), `entries` (the per-key and per-origin tables), `state` (the apply under the lock),
//! `collected` (collected registers remembered by key), `journal` (what a durable backend persists),
//! `memory` (`MemoryStore`), `tests`.

mod chunk;
mod collected;
mod entries;
mod journal;
mod memory;
mod register;
mod state;
#[cfg(test)]
mod tests;

use crate::replication::clock::Clock;
use crate::replication::ranges::{Seq, SeqRanges};
use crate::replication::replica::Origin;
use std::sync::Arc;

pub use chunk::{Chunk, ChunkLimits, Incoming, Merged};
pub use collected::CollectedRecord;
use collected::{Collected, CollectedKeys};
use entries::{Entries, Marker, OriginState, Record};
pub use journal::Changes;
use journal::Journal;
pub use memory::MemoryStore;
pub use register::{beats, key_fingerprint, Entry, Expiry, Lifetime, Op, TouchRegister, Write};
use state::State;

/// A change that took effect in a bucket, as reported to listeners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: Arc<str>,
    /// The new value; `None` when deleted or expired.
    pub value: Option<Box<[u8]>>,
    pub origin: Origin,
    pub local: bool,
    /// The key expired (rather than being written).
    pub expired: bool,
}

/// What a write changed in what a key shows, as `write_local` and `merge` report it to listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shown<'a> {
    pub key: &'a Arc<str>,
    /// The key's live value now; `None` when it was deleted, or its value expired.
    pub value: Option<&'a [u8]>,
    /// The key stopped showing a value because the value in force expired (a write arrived already
    /// expired, or a touch shortened its life), not because it was deleted.
    pub expired: bool,
}

/// Which write a key's live value came from: its `(hlc, origin)`, the pair last-writer-wins orders
/// by, with the origin named by its address (`Origin::addr`). A key's value register is replaced only
/// by a write that beats it, which never has the same pair, so while a key shows a value with the
/// same stamp it shows the same value; a reader can keep a decoded value with its stamp and trust it
/// as long as the stamp is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub hlc: u64,
    pub origin: usize,
}

/// Where a paged scan (`Store::scan_page`) resumes: a position in the order in which a scan visits the
/// keys, that of their hashes with the bits reversed. A key's position never changes, however the key
/// table grows or is rewritten between pages, and each page visits the keys from its cursor on up to
/// the cursor it returns: every key live throughout a scan is visited exactly once, and a key written
/// or deleted during it at most once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanCursor {
    pub position: u64,
}

/// Storage backend of one bucket replica. See the module comment for what an implementation promises.
pub trait Store: Send + Sync + 'static {
    /// Calls `f` with the live value of `key` at time `now_ms()` (asked only when the key can expire);
    /// returns whether there was one.
    fn read(&self, key: &str, now_ms: &dyn Fn() -> u64, f: &mut dyn FnMut(&[u8])) -> bool {
        self.read_stamped(key, now_ms, &mut |v, _| f(v))
    }
    /// `read`, with the stamp of the write the value came from.
    fn read_stamped(
        &self,
        key: &str,
        now_ms: &dyn Fn() -> u64,
        f: &mut dyn FnMut(&[u8], Stamp),
    ) -> bool;
    /// How many keys are live; exact once `expire` has run up to now.
    fn live_len(&self) -> usize;
    /// Visits every live key under `prefix` with its value.
    fn scan(&self, prefix: &str, now_ms: u64, f: &mut dyn FnMut(&str, &[u8]));
    /// How many live keys are under `prefix`.
    fn count(&self, prefix: &str, now_ms: u64) -> usize {
        let mut n = 0;
        self.scan(prefix, now_ms, &mut |_, _| n += 1);
        n
    }
    /// One page of a scan: visits live keys under `prefix` from `from` on, at most `limit` of them (more
    /// only when keys share a whole 64-bit hash: a page takes every key of the position it stops at)
    /// and over a bounded stretch of the table (so a page may be empty), and returns where the next
    /// page starts, `None` once the whole table was walked. See `ScanCursor` for what a scan promises.
    fn scan_page(
        &self,
        prefix: &str,
        now_ms: u64,
        from: ScanCursor,
        limit: usize,
        f: &mut dyn FnMut(&str, &[u8]),
    ) -> Option<ScanCursor>;
    /// The expiry in force of `key`'s live value, `None` when it has none live.
    fn expiry_of(&self, key: &str, now_ms: u64) -> Option<Expiry>;
    /// Applies a local write (a value, or a tombstone when `value` is `None`): ticks `clock`, takes the
    /// next seq of `me`, stores it (a local write always wins) and returns it as it will travel.
    fn write_local(
        &self,
        me: &Origin,
        clock: &Clock,
        key: &str,
        value: Option<Box<[u8]>>,
        lifetime: Lifetime,
        on_change: &mut dyn FnMut(Shown<'_>),
    ) -> Write;
    /// Extends the expiry of a live key to `ttl_ms` after now, without rewriting its value. `None` (and
    /// nothing written) when the key is absent or expired.
    fn touch_local(&self, me: &Origin, clock: &Clock, key: Arc<str>, ttl_ms: u64) -> Option<Write>;
    /// Merges writes from `origin`, then adds `covered` to the origin's context. `on_change` hears of
    /// every write that replaced a key's value register or changed whether the key is live, judged at
    /// the time `expire` last ran: a value that arrives already expired is never shown live (it is
    /// heard of only when it hides a live value, as an expiry). A value write older than a register
    /// this replica collected for its key, which it would otherwise beat, first gets a stand-in
    /// tombstone: a write of `me` at or just below the collected register (see `CollectedKeys`).
    fn merge(
        &self,
        me: &Origin,
        origin: &Origin,
        writes: Vec<Write>,
        covered: &SeqRanges,
        on_change: &mut dyn FnMut(Shown<'_>),
    ) -> Merged {
        self.merge_chunk(me, origin, Incoming::writes(writes, covered), on_change)
    }
    /// `merge` of a whole chunk in one step: its `superseders` (registers of any origin, each
    /// covering its own dot) with its writes, touch registers first, so that listeners hear each
    /// key's net change and never a value shown live for a moment under a touch of the same chunk
    /// that had expired it, nor a value expired here that a touch lands on before the chunk's value
    /// (the one it was made for) replaces it. Also records, as superseded markers, the dots of `origin` in `superseded`
    /// (per key: the chunk covered them without their writes, which lost to the key's registers) that
    /// were new here. A chunk this replica sends later that covers them then carries the key's
    /// registers too, as the first sender's did.
    fn merge_chunk(
        &self,
        me: &Origin,
        origin: &Origin,
        chunk: Incoming<'_>,
        on_change: &mut dyn FnMut(Shown<'_>),
    ) -> Merged;
    /// Reports (through `on_expired`) every key whose value expired by `now_ms` since the last call,
    /// and queues it for collection.
    fn expire(&self, now_ms: u64, on_expired: &mut dyn FnMut(&Arc<str>));
    /// The earliest pending expiry, if any (so callers can skip `expire` cheaply).
    fn next_expiry(&self) -> Option<u64>;
    /// This replica's context for every origin it knows.
    fn context(&self) -> Vec<(Origin, SeqRanges)>;
    /// This replica's context for one origin.
    fn context_of(&self, origin: &Origin) -> SeqRanges;
    /// The stored writes of `origin` with seqs in `start..=end`, within `limits`, plus the part of the
    /// context they stand for (`start..=last` where `last` is `end` unless the limits cut the walk short,
    /// intersected with the context) and the current registers of keys whose writes in that part were
    /// superseded, and the touch register of every key whose value register it carries (newer than
    /// the value: it may have expired it). Read under one lock, so they agree.
    fn chunk(&self, origin: &Origin, start: Seq, end: Seq, limits: ChunkLimits) -> Chunk;
    /// Visits every stored register under `prefix` (tombstones and expired entries too) as a write of
    /// its origin; what a partial fetch sends (so each counts as shipped, like a chunk's).
    fn scan_writes(&self, prefix: &str, f: &mut dyn FnMut(&Origin, Write));
    /// The registers stored for `key` (a tombstone's, an expired value's too) as writes of their
    /// origins: what `Bucket::inspect` reports. The default scans; a backend with a key index does better.
    fn registers(&self, key: &str) -> Vec<(Origin, Write)> {
        let mut out = Vec::new();
        self.scan_writes(key, &mut |o, w| {
            if *w.key == *key {
                out.push((o.clone(), w));
            }
        });
        out
    }
    /// Entries held (live, tombstones and expired alike); for stats.
    fn entry_count(&self) -> usize;
    /// A fingerprint of every register stored (tombstones and expired values too): the sum of
    /// `Entry::print` over the entries, kept exact as they change. Two replicas with equal contexts
    /// that keep different ones have diverged (digests carry it: `sync::digest`).
    fn stored_print(&self) -> u64;
    /// Dead entries (tombstones and expired values) held until collection; for stats.
    fn tombstone_count(&self) -> usize;
    /// Drops dead entries (tombstones, expired values) that died before `older_than_ms` and whose every
    /// register dot `collectable` accepts (every member holds it). Returns how many were dropped.
    /// Each dropped value register is remembered by key (`CollectedKeys`) under the stamp
    /// `older_than_ms`. A backend may collect in slices, letting reads and writes in between: each
    /// slice is a collection of its own, and reads never wait for the whole of it.
    fn collect(
        &self,
        older_than_ms: u64,
        collectable: &mut dyn FnMut(&Origin, Seq) -> bool,
    ) -> usize;
    /// Forgets the collected registers remembered under stamps before `before_ms`: from then on only
    /// the newest of their times stands for them, guarding every key with no live register (see
    /// `CollectedKeys`).
    fn forget_collected(&self, before_ms: u64);
    /// How many collected registers are remembered by key; for stats.
    fn collected_remembered(&self) -> usize;
    /// The collected registers remembered by key, with their origins (unknown for a record restored
    /// from disk), as a peer learns them (`learn_collected`).
    fn collected_records(&self) -> Vec<(CollectedRecord, Option<Origin>)>;
    /// Remembers collected registers a peer remembers, as if collected here: a replica that covers a
    /// collected dot, wherever it learned the dot, knows the key's register, so a write it beat that
    /// comes back meets a stand-in here too. A stored value register one of them beats gets a stand-in
    /// at once, as it would have arriving after the record. Returns the stand-ins written.
    fn learn_collected(
        &self,
        me: &Origin,
        records: Vec<(CollectedRecord, Option<Origin>)>,
        on_change: &mut dyn FnMut(Shown<'_>),
    ) -> usize;
    /// Drops superseded markers whose key's current registers `everywhere` accepts (every member holds
    /// them), or whose key is gone. Returns how many were dropped.
    fn compact_markers(&self, everywhere: &mut dyn FnMut(&Origin, Seq) -> bool) -> usize;
    /// Superseded markers held now; for tests and stats.
    fn marker_count(&self) -> usize;
    /// The seqs of `origin` stored now (one per register), within `within`.
    fn stored_dots(&self, origin: &Origin, within: &SeqRanges) -> SeqRanges;
    /// The keys of the registers of `origin` stored now with a seq in `dots`, with those seqs.
    fn keys_of_dots(&self, origin: &Origin, dots: &SeqRanges) -> Vec<(Arc<str>, Seq)>;
    /// The registers stored for each of `keys` (a tombstone's, an expired value's too) as writes of
    /// their origins, each counted as shipped, as a chunk's superseders are: what a resync's keyed
    /// question is answered with.
    fn ship_registers(&self, keys: &[Arc<str>]) -> Vec<(Origin, Write)>;
    /// Drops the registers of `origin` whose seq is in `dots` (known superseded elsewhere), except
    /// a touch register that expired its key's value: whatever superseded it is newer than the
    /// value too, so dropping it never shows the value again. `on_change` hears of every key that
    /// stops showing a value: whatever superseded it may never come (a delete whose tombstone was
    /// collected). Returns how many were dropped.
    fn drop_dots(
        &self,
        origin: &Origin,
        dots: &SeqRanges,
        on_change: &mut dyn FnMut(Shown<'_>),
    ) -> usize;
    /// Merges registers a peer stores (of `origin`), fetched to repair a divergence (equal
    /// contexts, different registers stored), as a restore: a register whose dot this replica
    /// covers is applied anyway, last-writer-wins against what it stores for its key, unless a
    /// collected register it remembers for the key beats it or is it; the same dot stored here with
    /// other content (a forgery) keeps whichever is larger by `(hlc, print)`, as every replica
    /// does. A dot not covered here is left to the sync. Returns how many registers it changed.
    fn restore_registers(
        &self,
        origin: &Origin,
        writes: Vec<Write>,
        on_change: &mut dyn FnMut(Shown<'_>),
    ) -> usize;
    /// For durable backends: what changed since the last call, read under the same lock as the
    /// changes themselves so a flush of it is a consistent state. `None` when this store is not
    /// persisted.
    fn drain_changes(&self) -> Option<Changes> {
        None
    }
}
