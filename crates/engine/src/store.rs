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
//! tests below are the checks to run it through.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::clock::{Clock, Hlc};
use crate::ranges::SeqRanges;
use crate::replica::Origin;
use crate::seq_index::SeqIndex;

/// A register write as it travels between replicas; the origin travels once per batch beside it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Write {
    pub key: Arc<str>,
    pub hlc: Hlc,
    pub seq: u64,
    /// Encoded value (see `value` module), or `None` for a delete (or a touch).
    #[serde(with = "serde_bytes")]
    pub value: Option<Box<[u8]>>,
    /// Absolute expiry in physical milliseconds since the epoch; 0 means never.
    pub expires_ms: u64,
    /// A touch: writes only the expiry register (`value` is `None` and ignored).
    pub touch: bool,
}

/// When a locally written value expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    Forever,
    /// This many milliseconds after the write's own timestamp.
    Ttl(u64),
    /// At this absolute time (physical milliseconds since the epoch).
    Until(u64),
}

/// A touch register: a later expiry for the value stored.
#[derive(Clone, Debug)]
pub struct TouchRegister {
    pub expires_ms: u64,
    pub hlc: Hlc,
    pub origin: Origin,
    pub seq: u64,
}

/// The registers stored for a key.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The value register: a value, or `None` for a tombstone (or, with `seq == 0`, no value register yet:
    /// a touch that arrived before the write it touched).
    pub value: Option<Box<[u8]>>,
    pub hlc: Hlc,
    pub origin: Origin,
    pub seq: u64,
    /// Expiry written with the value.
    pub expires_ms: u64,
    pub touch: Option<Box<TouchRegister>>,
}

impl Entry {
    /// The expiry in force: the touch register's when there is one (it is newer), else the value's.
    pub fn expiry(&self) -> u64 {
        self.touch
            .as_ref()
            .map_or(self.expires_ms, |t| t.expires_ms)
    }

    fn expired_at(&self, now_ms: u64) -> bool {
        let e = self.expiry();
        e != 0 && e <= now_ms
    }

    /// The value if the entry is neither a tombstone nor expired at `now_ms`.
    pub fn live_value(&self, now_ms: u64) -> Option<&[u8]> {
        if self.expired_at(now_ms) {
            return None;
        }
        self.value.as_deref()
    }

    /// When the entry stopped holding a live value at `now_ms`, if it did: for a tombstone the newest
    /// of its registers' times, for an expired value its expiry.
    fn death_ms(&self, now_ms: u64) -> Option<u64> {
        if self.value.is_none() {
            let touched = self.touch.as_ref().map_or(Hlc(0), |t| t.hlc);
            return Some(self.hlc.max(touched).physical_ms());
        }
        self.expired_at(now_ms).then(|| self.expiry())
    }

    fn value_write(&self, key: &Arc<str>) -> Option<Write> {
        (self.seq > 0).then(|| Write {
            key: key.clone(),
            hlc: self.hlc,
            seq: self.seq,
            value: self.value.clone(),
            expires_ms: self.expires_ms,
            touch: false,
        })
    }

    fn touch_write(&self, key: &Arc<str>) -> Option<(Origin, Write)> {
        self.touch.as_ref().map(|t| {
            (
                t.origin.clone(),
                Write {
                    key: key.clone(),
                    hlc: t.hlc,
                    seq: t.seq,
                    value: None,
                    expires_ms: t.expires_ms,
                    touch: true,
                },
            )
        })
    }

    /// The registers as writes of their origins.
    fn writes(&self, key: &Arc<str>) -> impl Iterator<Item = (Origin, Write)> {
        let value = self.value_write(key).map(|w| (self.origin.clone(), w));
        value.into_iter().chain(self.touch_write(key))
    }

    /// The register of `origin` with dot `seq`, as a write.
    fn write_for(&self, key: &Arc<str>, origin: &Origin, seq: u64) -> Option<Write> {
        if self.seq == seq && self.origin == *origin {
            return self.value_write(key);
        }
        match &self.touch {
            Some(t) if t.seq == seq && t.origin == *origin => self.touch_write(key).map(|(_, w)| w),
            _ => None,
        }
    }
}

/// Last-writer-wins: the larger `(hlc, origin)` wins, on every replica alike.
pub fn beats(hlc: Hlc, origin: &Origin, than_hlc: Hlc, than_origin: &Origin) -> bool {
    (hlc, origin) > (than_hlc, than_origin)
}

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

/// Storage backend of one bucket replica. See the module comment for what an implementation promises.
pub trait Store: Send + Sync + 'static {
    /// Calls `f` with the live value of `key` at time `now_ms()` (asked only when the key can expire);
    /// returns whether there was one.
    fn read(&self, key: &str, now_ms: &dyn Fn() -> u64, f: &mut dyn FnMut(&[u8])) -> bool;
    /// How many keys are live; exact once `expire` has run up to now.
    fn live_len(&self) -> usize;
    /// Visits every live key under `prefix` with its value.
    fn scan(&self, prefix: &str, now_ms: u64, f: &mut dyn FnMut(&str, &[u8]));
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
        self.merge_chunk(me, origin, writes, covered, &[], Vec::new(), on_change)
    }
    /// `merge` of a whole chunk in one step: its `superseders` (registers of any origin, each
    /// covering its own dot) with its writes, touch registers first, so that listeners hear each
    /// key's net change and never a value shown live for a moment under a touch of the same chunk
    /// that had expired it. Also records, as superseded markers, the dots of `origin` in `superseded`
    /// (per key: the chunk covered them without their writes, which lost to the key's registers) that
    /// were new here. A chunk this replica sends later that covers them then carries the key's
    /// registers too, as the first sender's did.
    #[allow(clippy::too_many_arguments)]
    fn merge_chunk(
        &self,
        me: &Origin,
        origin: &Origin,
        writes: Vec<Write>,
        covered: &SeqRanges,
        superseded: &[(Arc<str>, Vec<u64>)],
        superseders: Vec<(Origin, Write)>,
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
    fn chunk(&self, origin: &Origin, start: u64, end: u64, limits: ChunkLimits) -> Chunk;
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
    /// Dead entries (tombstones and expired values) held until collection; for stats.
    fn tombstone_count(&self) -> usize;
    /// Drops dead entries (tombstones, expired values) that died before `older_than_ms` and whose every
    /// register dot `collectable` accepts (every member holds it). Returns how many were dropped.
    /// Each dropped value register is remembered by key (`CollectedKeys`) under the stamp
    /// `older_than_ms`.
    fn collect(
        &self,
        older_than_ms: u64,
        collectable: &mut dyn FnMut(&Origin, u64) -> bool,
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
    fn compact_markers(&self, everywhere: &mut dyn FnMut(&Origin, u64) -> bool) -> usize;
    /// Superseded markers held now; for tests and stats.
    fn marker_count(&self) -> usize;
    /// The seqs of `origin` stored now (one per register), within `within`.
    fn stored_dots(&self, origin: &Origin, within: &SeqRanges) -> SeqRanges;
    /// Drops the registers of `origin` whose seq is in `dots` (known superseded elsewhere).
    /// `on_change` hears of every key that stops showing a value: whatever superseded it may never
    /// come (a delete whose tombstone was collected).
    fn drop_dots(
        &self,
        origin: &Origin,
        dots: &SeqRanges,
        on_change: &mut dyn FnMut(Shown<'_>),
    ) -> usize;
    /// For durable backends: what changed since the last call, read under the same lock as the
    /// changes themselves so a flush of it is a consistent state. `None` when this store is not
    /// persisted.
    fn drain_changes(&self) -> Option<Changes> {
        None
    }
}

/// How much one chunk may hold; at least one write is always returned.
#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    pub max_writes: usize,
    /// Keys and values, roughly.
    pub max_bytes: usize,
}

impl ChunkLimits {
    pub const UNLIMITED: ChunkLimits = ChunkLimits {
        max_writes: usize::MAX,
        max_bytes: usize::MAX,
    };

    pub fn writes(max_writes: usize) -> ChunkLimits {
        ChunkLimits {
            max_writes,
            max_bytes: usize::MAX,
        }
    }
}

/// What `Store::chunk` returns.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Stored writes of the origin in the range.
    pub writes: Vec<Write>,
    /// The seqs they stand for.
    pub covered: SeqRanges,
    /// Current registers of keys whose writes in the range were superseded, and the touch registers
    /// of keys whose value registers are among `writes`, with their origins; merged with the writes
    /// in one step (`Store::merge_chunk`).
    pub superseders: Vec<(Origin, Write)>,
    /// The superseded seqs of the range, per key, so the receiver can relay them with their
    /// superseders in turn.
    pub superseded: Vec<(Arc<str>, Vec<u64>)>,
}

/// What `Store::merge` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    /// Writes whose dot was new here.
    pub fresh: usize,
    /// Stand-in tombstones written (local writes: the links must send them).
    pub stand_ins: usize,
}

/// A stable 64-bit fingerprint of a key (FNV-1a), the same in every process and version, so the
/// collected registers remembered by it can be persisted.
pub fn key_fingerprint(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A remembered collected register, as a durable backend persists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectedRecord {
    pub fingerprint: u64,
    /// The newest collected value register of the keys with this fingerprint.
    pub hlc: Hlc,
    /// Its origin; `None` in a record persisted without one (a data directory of format 2).
    pub origin: Option<Origin>,
    /// The stamp it was collected under (`Store::collect`'s `older_than_ms`).
    pub at_ms: u64,
}

/// The value registers (tombstones, expired values) this replica collected, by key fingerprint.
///
/// Once a dead register is collected, a write older than it for the same key would, arriving later,
/// find nothing to lose to. Every member held the register's dot when it was collected, and every
/// write any member held then, so such a write can only come from a replica that was away past the
/// collection (forgotten, or cut off with a dead replica's writes). `merge` answers it with a stand-in
/// tombstone: the write loses on every replica, as it would have lost to the collected one.
///
/// "Older" is the whole last-writer-wins order `(hlc, origin)`: writes stamped alike on two servers
/// are ordinary, and a collected tombstone may have won by its origin alone. A stand-in is a write of
/// this replica, so its origin is ours: it takes our highest place at or below the collected register
/// (its time, or one tick under it when our origin ranks above the register's), so it never beats a
/// write newer than the collected register. Only when the old write lies in that last tick, where no
/// place of ours fits between the two, does the stand-in take our lowest place above the old write.
///
/// Records are kept for a retention the node configures; a forgotten record leaves its time in
/// `beyond`, which then stands for every key with no live register (none, or a tombstone such as the
/// stand-in answering an earlier old write): a write stamped at or below it to such a key is answered
/// with a stand-in just above it (a replica away longer than the retention loses its old writes to
/// keys deleted meanwhile, and to keys nobody else has).
#[derive(Default)]
struct CollectedKeys {
    /// fingerprint -> (newest collected register, stamp).
    by_key: crate::hash::HashMap<u64, (Collected, u64)>,
    /// (stamp, fingerprint) in collection order, to forget the oldest first.
    order: VecDeque<(u64, u64)>,
    /// The newest time among forgotten records.
    beyond: Hlc,
    /// The newest time of all (remembered or forgotten): writes newer than it need no lookup.
    newest: Hlc,
}

/// A collected register's place in the last-writer-wins order. A record restored without its origin
/// (persisted by format 2, which kept only the time) stands above every origin of its time: a write
/// stamped alike then meets a stand-in whichever origin it has.
#[derive(Clone, Debug)]
struct Collected {
    hlc: Hlc,
    origin: Option<Origin>,
}

impl Collected {
    fn place(&self) -> (Hlc, bool, Option<&Origin>) {
        (self.hlc, self.origin.is_none(), self.origin.as_ref())
    }

    /// Whether this register beats a write at `(hlc, origin)`.
    fn beats(&self, hlc: Hlc, origin: &Origin) -> bool {
        self.place() > (hlc, false, Some(origin))
    }

    /// The time of a stand-in of `me` for a write at `(hlc, origin)` this register beats.
    fn stand_in_for(&self, hlc: Hlc, origin: &Origin, me: &Origin) -> Hlc {
        let highest = match &self.origin {
            Some(o) if me > o => Hlc(self.hlc.0.saturating_sub(1)),
            _ => self.hlc,
        };
        if beats(highest, me, hlc, origin) {
            highest
        } else {
            just_above(hlc, origin, me)
        }
    }
}

/// The time of the lowest write of `me` that beats a write at `(hlc, origin)`.
fn just_above(hlc: Hlc, origin: &Origin, me: &Origin) -> Hlc {
    if me > origin {
        hlc
    } else {
        Hlc(hlc.0.saturating_add(1))
    }
}

impl CollectedKeys {
    fn remember(&mut self, fingerprint: u64, register: Collected, at_ms: u64) {
        self.newest = self.newest.max(register.hlc);
        match self.by_key.entry(fingerprint) {
            hashbrown::hash_map::Entry::Occupied(mut slot) => {
                let (kept, stamp) = slot.get_mut();
                if register.place() > kept.place() {
                    *kept = register;
                }
                *stamp = at_ms;
            }
            hashbrown::hash_map::Entry::Vacant(slot) => {
                slot.insert((register, at_ms));
            }
        }
        self.order.push_back((at_ms, fingerprint));
    }

    /// Forgets records stamped before `before_ms`; returns the fingerprints dropped.
    fn forget(&mut self, before_ms: u64, dropped: &mut Vec<u64>) {
        while let Some(&(at, fingerprint)) = self.order.front() {
            if at >= before_ms {
                break;
            }
            self.order.pop_front();
            // A later collection of the same fingerprint re-stamped the record: it stays.
            if let Some((register, stamp)) = self.by_key.get(&fingerprint) {
                if *stamp == at {
                    self.beyond = self.beyond.max(register.hlc);
                    self.by_key.remove(&fingerprint);
                    dropped.push(fingerprint);
                }
            }
        }
    }

    /// The time of a stand-in of `me` for a value write `w` of `origin` that is new here, given the
    /// key's current value register `(hlc, origin, is a tombstone)`: `Some` when a collected register
    /// of the key (or, without a record and without a live register, a forgotten one) beats `w` and
    /// `w` would otherwise win.
    fn stand_in_time(
        &self,
        w: &Write,
        origin: &Origin,
        current: Option<(Hlc, &Origin, bool)>,
        me: &Origin,
    ) -> Option<Hlc> {
        if w.touch || w.value.is_none() {
            return None;
        }
        if current.is_some_and(|(hlc, o, _)| !beats(w.hlc, origin, hlc, o)) {
            return None; // it loses anyway
        }
        match self.by_key.get(&key_fingerprint(&w.key)) {
            Some((register, _)) => register
                .beats(w.hlc, origin)
                .then(|| register.stand_in_for(w.hlc, origin, me)),
            None => {
                let no_live_register = current.is_none_or(|(_, _, tombstone)| tombstone);
                let forgotten = self.beyond > Hlc(0) && w.hlc <= self.beyond;
                (no_live_register && forgotten).then(|| just_above(w.hlc, origin, me))
            }
        }
    }
}

#[derive(Default)]
struct OriginState {
    context: SeqRanges,
    /// seq -> hash of the key of the registers of this origin stored now (`Entries::by_dot` finds the
    /// record again; a hash is half the size of a key handle in every index node).
    index: SeqIndex,
    /// seq -> marker of this origin's writes that lost to a newer one, until every member holds the
    /// one that superseded them.
    superseded: BTreeMap<u64, Marker>,
    /// The highest seq a chunk has covered: a write of this replica's own above it never left it.
    shipped: std::sync::atomic::AtomicU64,
}

/// A superseded dot: the key its write was for, and the dot of the register that superseded it.
struct Marker {
    key: Arc<str>,
    by: Origin,
    by_seq: u64,
}

/// A key and its registers, in one allocation.
struct Record {
    key: Arc<str>,
    entry: Entry,
}

/// The key -> entry table. Records sit behind one pointer per slot, so the table's slots stay small: a
/// table at half load (as after each doubling) costs its slots twice over.
#[derive(Default)]
struct Entries {
    table: hashbrown::HashTable<Box<Record>>,
    hasher: crate::hash::DefaultHashBuilder,
}

impl Entries {
    fn hash(&self, key: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    fn get(&self, key: &str) -> Option<&Entry> {
        self.get_key_value(key).map(|(_, e)| e)
    }

    fn get_key_value(&self, key: &str) -> Option<(&Arc<str>, &Entry)> {
        self.get_hashed(self.hash(key), key)
    }

    /// `get_key_value` with the key's hash already computed.
    fn get_hashed(&self, hash: u64, key: &str) -> Option<(&Arc<str>, &Entry)> {
        self.table
            .find(hash, |r| &*r.key == key)
            .map(|r| (&r.key, &r.entry))
    }

    /// The record whose key hashes to `hash` and holds register `(origin, seq)`.
    fn by_dot(&self, hash: u64, origin: &Origin, seq: u64) -> Option<(&Arc<str>, &Entry)> {
        self.table
            .find(hash, |r| r.entry.write_for(&r.key, origin, seq).is_some())
            .map(|r| (&r.key, &r.entry))
    }

    fn remove(&mut self, key: &str) -> Option<Box<Record>> {
        self.remove_hashed(self.hash(key), key)
    }

    /// `remove` with the key's hash already computed.
    fn remove_hashed(&mut self, hash: u64, key: &str) -> Option<Box<Record>> {
        self.table
            .find_entry(hash, |r| &*r.key == key)
            .ok()
            .map(|e| e.remove().0)
    }

    /// Adds a record whose key is not in the table.
    fn insert(&mut self, record: Box<Record>) {
        self.insert_hashed(self.hash(&record.key), record)
    }

    /// `insert` with the key's hash already computed.
    fn insert_hashed(&mut self, hash: u64, record: Box<Record>) {
        let hasher = &self.hasher;
        self.table.insert_unique(hash, record, |r| {
            use std::hash::BuildHasher;
            hasher.hash_one(&*r.key)
        });
    }

    fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Entry)> {
        self.table.iter().map(|r| (&r.key, &r.entry))
    }

    fn len(&self) -> usize {
        self.table.len()
    }
}

#[derive(Default)]
struct State {
    entries: Entries,
    /// Ordered, so everything derived from it (contexts, chunks) comes out the same on every run.
    origins: BTreeMap<Origin, OriginState>,
    /// Pending expiries `(time, key)`, earliest first; stale items (the key changed since) are skipped.
    /// A write pushes one only when it changes what its key waits for (a write that loses leaves
    /// none), yet an item can be pushed again while an earlier one for the same time is still
    /// queued: a sweep counts a key once however many equal items it pops.
    expiries: BinaryHeap<Reverse<(u64, Arc<str>)>>,
    /// Dead entries waiting for collection `(death time, key)`, earliest first; stale items skipped.
    dead: BinaryHeap<Reverse<(u64, Arc<str>)>>,
    /// Every expiry up to this time has been swept; reads never look earlier than it.
    swept_until: u64,
    /// Entries holding a value not expired at `swept_until`.
    live_entries: usize,
    /// The other entries: tombstones, touch-only placeholders, values expired at `swept_until`.
    dead_entries: usize,
    /// Collected value registers, by key.
    collected: CollectedKeys,
    /// This replica's own origin, once a local write or a merge named it.
    me: Option<Origin>,
    /// What changed since the last `drain_changes`, when a durable backend persists this store.
    journal: Option<Journal>,
}

/// Keys, contexts and markers changed since the last drain.
#[derive(Default)]
struct Journal {
    keys: crate::hash::HashSet<Arc<str>>,
    contexts: std::collections::BTreeSet<Origin>,
    markers: Vec<(Origin, u64, Option<Arc<str>>)>,
    collected: crate::hash::HashSet<u64>,
    beyond: bool,
}

/// What a durable backend must write to have the store's state on disk: entries to put (or remove,
/// when `None`), contexts to put, superseded markers to put (or remove).
#[derive(Debug, Default)]
pub struct Changes {
    pub entries: Vec<(Arc<str>, Option<Entry>)>,
    pub contexts: Vec<(Origin, SeqRanges)>,
    pub markers: Vec<(Origin, u64, Option<Arc<str>>)>,
    /// Collected-register records to put (or remove, when `None`), by fingerprint.
    pub collected: Vec<(u64, Option<CollectedRecord>)>,
    /// The newest forgotten collected time, when it moved.
    pub collected_beyond: Option<Hlc>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.contexts.is_empty()
            && self.markers.is_empty()
            && self.collected.is_empty()
            && self.collected_beyond.is_none()
    }
}

impl State {
    fn note_key(&mut self, key: &Arc<str>) {
        if let Some(j) = &mut self.journal {
            j.keys.insert(key.clone());
        }
    }

    fn note_context(&mut self, origin: &Origin) {
        if let Some(j) = &mut self.journal {
            j.contexts.insert(origin.clone());
        }
    }

    fn note_collected(&mut self, fingerprint: u64) {
        if let Some(j) = &mut self.journal {
            j.collected.insert(fingerprint);
        }
    }

    fn note_marker(&mut self, origin: &Origin, seq: u64, key: Option<Arc<str>>) {
        if let Some(j) = &mut self.journal {
            j.markers.push((origin.clone(), seq, key));
        }
    }

    /// Adds `seq` to `origin`'s context.
    fn see(&mut self, origin: &Origin, seq: u64) {
        self.origin_mut(origin).context.insert(seq);
        self.note_context(origin);
    }

    /// The state of `origin`, added empty if new (without cloning the handle when it is known).
    fn origin_mut(&mut self, origin: &Origin) -> &mut OriginState {
        if !self.origins.contains_key(origin) {
            self.origins.insert(origin.clone(), OriginState::default());
        }
        self.origins.get_mut(origin).expect("just added")
    }

    /// Adds (`+1`) or removes (`-1`) an entry's share of the counters: the entry counts as live or
    /// dead by `swept_until`, so removing it takes back exactly what adding it (and, in between, the
    /// sweep that saw it expire) counted.
    fn tally(&mut self, e: &Entry, sign: isize) {
        let counter = if Self::is_live(e, self.swept_until) {
            &mut self.live_entries
        } else {
            &mut self.dead_entries
        };
        *counter = counter
            .checked_add_signed(sign)
            .expect("an entry is counted once, as live or dead");
    }

    fn is_live(e: &Entry, swept_until: u64) -> bool {
        e.live_value(swept_until).is_some()
    }

    /// Queues what a freshly stored entry needs: its expiry, or its collection if already dead.
    fn schedule(&mut self, key: &Arc<str>) {
        let e = self.entries.get(key).expect("scheduled entries are stored");
        let due = Self::due(e, self.swept_until);
        self.schedule_due(key, due);
    }

    /// What an entry waits for: `(true, death)` its collection, `(false, expiry)` its expiry, or
    /// nothing.
    fn due(e: &Entry, swept_until: u64) -> Option<(bool, u64)> {
        match e.death_ms(swept_until) {
            Some(death) => Some((true, death)),
            None if e.expiry() != 0 => Some((false, e.expiry())),
            None => None,
        }
    }

    fn schedule_due(&mut self, key: &Arc<str>, due: Option<(bool, u64)>) {
        match due {
            Some((true, death)) => self.dead.push(Reverse((death, key.clone()))),
            Some((false, expiry)) => self.expiries.push(Reverse((expiry, key.clone()))),
            None => {}
        }
    }

    fn index_insert(&mut self, origin: &Origin, seq: u64, key: &str) {
        if seq > 0 {
            let hash = self.entries.hash(key);
            self.index_insert_hashed(origin, seq, hash);
        }
    }

    fn index_insert_hashed(&mut self, origin: &Origin, seq: u64, hash: u64) {
        if seq > 0 {
            self.origin_mut(origin).index.insert(seq, hash);
        }
    }

    /// Moves a register's dot from the index to the superseded markers; `by` is the dot of the register
    /// that superseded it. A write of this replica's own that no chunk ever covered needs no marker:
    /// no other replica can hold it, so a coverage claim without it can make no one differ.
    fn supersede(&mut self, origin: &Origin, seq: u64, key: &Arc<str>, by: (&Origin, u64)) {
        if seq == 0 {
            return;
        }
        let own = self.me.as_ref() == Some(origin);
        let o = self.origin_mut(origin);
        o.index.remove(seq);
        if own && seq > *o.shipped.get_mut() {
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
    fn apply(&mut self, origin: &Origin, w: &mut Write, on_change: &mut dyn FnMut(Shown<'_>)) {
        let hash = self.entries.hash(&w.key);
        self.apply_hashed(origin, w, hash, on_change)
    }

    /// `apply` with the hash of the write's key already computed.
    fn apply_hashed(
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
        let fresh = |entry| {
            Box::new(Record {
                key: key.clone(),
                entry,
            })
        };
        let (record, value_replaced) = match (old, w.touch) {
            (None, false) => (
                fresh(Entry {
                    value: w.value.take(),
                    hlc: w.hlc,
                    origin: origin.clone(),
                    seq: w.seq,
                    expires_ms: w.expires_ms,
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
                    seq: 0,
                    expires_ms: 0,
                    touch: Some(Box::new(TouchRegister {
                        expires_ms: w.expires_ms,
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
                    e.value = w.value.take();
                    e.hlc = w.hlc;
                    e.origin = origin.clone();
                    e.seq = w.seq;
                    e.expires_ms = w.expires_ms;
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
                let beats_value = e.seq == 0 || beats(w.hlc, origin, e.hlc, &e.origin);
                let beats_touch = e
                    .touch
                    .as_ref()
                    .is_none_or(|t| beats(w.hlc, origin, t.hlc, &t.origin));
                if beats_value && beats_touch {
                    if let Some(t) = e.touch.take() {
                        self.supersede(&t.origin, t.seq, key, (origin, w.seq));
                    }
                    e.touch = Some(Box::new(TouchRegister {
                        expires_ms: w.expires_ms,
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
    fn stand_in(&mut self, me: &Origin, w: &Write, hlc: Hlc, on_change: &mut dyn FnMut(Shown<'_>)) {
        let seq = self
            .origins
            .get(me)
            .map_or(0, |o| o.context.max())
            .checked_add(1)
            .expect("sequence numbers exhausted");
        self.see(me, seq);
        let mut tombstone = Write {
            key: w.key.clone(),
            hlc,
            seq,
            value: None,
            expires_ms: 0,
            touch: false,
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

    fn name_me(&mut self, me: &Origin) {
        if self.me.is_none() {
            self.me = Some(me.clone());
        }
    }

    fn remove_entry(&mut self, key: &Arc<str>) {
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

    fn now(&self, now_ms: u64) -> u64 {
        now_ms.max(self.swept_until)
    }
}

/// The default backend: everything in memory behind one reader-writer lock.
#[derive(Default)]
pub struct MemoryStore {
    state: RwLock<State>,
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// A store that records what changes, for a durable backend to drain and persist.
    pub fn journaled() -> Self {
        let store = MemoryStore::default();
        store.state.write().journal = Some(Journal::default());
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
        for (origin, seq, key) in markers {
            // The superseding dot was not persisted: the key's current value register stands for it
            // (it is at least as new), else the marker's own dot (the key is gone: compacted next).
            let by = entries
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, e)| (e.origin.clone(), e.seq))
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
        // What was covered before the restart may have been shipped.
        for o in state.origins.values_mut() {
            *o.shipped.get_mut() = o.context.max();
        }
        for (key, entry) in entries {
            let registers: Vec<(Origin, u64)> =
                entry.writes(&key).map(|(o, w)| (o, w.seq)).collect();
            state.tally(&entry, 1);
            state.entries.insert(Box::new(Record {
                key: key.clone(),
                entry,
            }));
            for (origin, seq) in registers {
                state.index_insert(&origin, seq, &key);
            }
            state.schedule(&key);
        }
        if journaled {
            state.journal = Some(Journal::default());
        }
        MemoryStore {
            state: RwLock::new(state),
        }
    }
}

impl Store for MemoryStore {
    fn read(&self, key: &str, now_ms: &dyn Fn() -> u64, f: &mut dyn FnMut(&[u8])) -> bool {
        let state = self.state.read();
        // The clock is read only for a key that can expire.
        let value = state.entries.get(key).and_then(|e| match e.expiry() {
            0 => e.value.as_deref(),
            _ => e.live_value(state.now(now_ms())),
        });
        match value {
            Some(v) => {
                f(v);
                true
            }
            None => false,
        }
    }

    fn live_len(&self) -> usize {
        self.state.read().live_entries
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

    fn write_local(
        &self,
        me: &Origin,
        clock: &Clock,
        key: &str,
        value: Option<Box<[u8]>>,
        lifetime: Lifetime,
        on_change: &mut dyn FnMut(Shown<'_>),
    ) -> Write {
        let mut state = self.state.write();
        state.name_me(me);
        // An overwrite shares the stored key rather than allocating another.
        let hash = state.entries.hash(key);
        let key = match state.entries.get_hashed(hash, key) {
            Some((stored, _)) => stored.clone(),
            None => Arc::from(key),
        };
        let hlc = clock.tick();
        let seq = state
            .origins
            .get(me)
            .map_or(0, |o| o.context.max())
            .checked_add(1)
            .expect("sequence numbers exhausted");
        state.see(me, seq);
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
        let mut state = self.state.write();
        state.name_me(me);
        let now = state.now(clock.now().physical_ms());
        state.entries.get(&key)?.live_value(now)?;
        let hlc = clock.tick();
        let seq = state
            .origins
            .get(me)
            .map_or(0, |o| o.context.max())
            .checked_add(1)
            .expect("sequence numbers exhausted");
        state.see(me, seq);
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
        let mut state = self.state.write();
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
        let mut state = self.state.write();
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
        self.state
            .read()
            .expiries
            .peek()
            .map(|Reverse((at, _))| *at)
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
                    Some(w) if !w.touch => e.touch_write(key).filter(|(o, t)| {
                        !chunk
                            .superseders
                            .iter()
                            .any(|(so, s)| so == o && s.seq == t.seq)
                    }),
                    _ => None,
                };
                w.map(|w| (None, w))
                    .into_iter()
                    .chain(touch.map(|(o, t)| (Some(o), t)))
                    .collect()
            } else if chunk.superseders.iter().any(|(_, w)| w.key == *key) {
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
                match chunk.superseded.iter_mut().find(|(k, _)| k == key) {
                    Some((_, seqs)) => seqs.push(seq),
                    None => chunk.superseded.push((key.clone(), vec![seq])),
                }
            }
            for (other, write) in items {
                match other {
                    None => chunk.writes.push(write),
                    Some(o) => chunk.superseders.push((o, write)),
                }
            }
        }
        // A superseder that is itself one of the chunk's writes need not travel twice.
        let writes = &chunk.writes;
        chunk
            .superseders
            .retain(|(o, w)| !(o == origin && writes.iter().any(|x| x.seq == w.seq)));
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
        let mut state = self.state.write();
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
        let mut state = self.state.write();
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
        let mut state = self.state.write();
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
        let mut state = self.state.write();
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
        let mut state = self.state.write();
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

    fn drop_dots(
        &self,
        origin: &Origin,
        dots: &SeqRanges,
        on_change: &mut dyn FnMut(Shown<'_>),
    ) -> usize {
        let mut state = self.state.write();
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
        for (seq, key) in &found {
            let Some(e) = state.entries.get(key) else {
                continue;
            };
            let was_live = State::is_live(e, swept);
            let value_dot = e.seq == *seq && e.origin == *origin;
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
        found.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::replica::{ReplicaId, ReplicaTable};
    use proptest::prelude::*;

    fn origin(t: &ReplicaTable, name: &str) -> Origin {
        t.intern(&ReplicaId {
            node: name.into(),
            incarnation: 1,
        })
    }

    fn w(key: &str, hlc: u64, seq: u64, value: Option<&str>) -> Write {
        Write {
            key: key.into(),
            hlc: Hlc(hlc),
            seq,
            value: value.map(|v| v.as_bytes().into()),
            expires_ms: 0,
            touch: false,
        }
    }

    fn get(s: &MemoryStore, key: &str) -> Option<String> {
        let mut out = None;
        s.read(key, &|| 0, &mut |v| {
            out = Some(String::from_utf8(v.to_vec()).unwrap())
        });
        out
    }

    #[test]
    fn larger_hlc_wins_and_ties_go_to_the_larger_origin() {
        let t = ReplicaTable::new();
        let (a, b) = (origin(&t, "a"), origin(&t, "b"));
        let s = MemoryStore::new();
        s.merge(
            &origin(&t, "me"),
            &a,
            vec![w("k", 10, 1, Some("a1"))],
            &SeqRanges::new(),
            &mut |_| {},
        );
        s.merge(
            &origin(&t, "me"),
            &b,
            vec![w("k", 9, 1, Some("b1"))],
            &SeqRanges::new(),
            &mut |_| {},
        );
        assert_eq!(get(&s, "k").as_deref(), Some("a1"));
        s.merge(
            &origin(&t, "me"),
            &b,
            vec![w("k", 10, 2, Some("b2"))],
            &SeqRanges::new(),
            &mut |_| {},
        );
        assert_eq!(get(&s, "k").as_deref(), Some("b2"));
    }

    #[test]
    fn a_delete_is_a_write_that_hides_the_key() {
        let t = ReplicaTable::new();
        let a = origin(&t, "a");
        let s = MemoryStore::new();
        s.merge(
            &origin(&t, "me"),
            &a,
            vec![w("k", 1, 1, Some("v")), w("k", 2, 2, None)],
            &SeqRanges::new(),
            &mut |_| {},
        );
        assert_eq!(get(&s, "k"), None);
        assert_eq!(s.live_len(), 0);
        assert_eq!(s.entry_count(), 1);
    }

    #[test]
    fn superseded_writes_leave_the_index_but_stay_in_the_context() {
        let t = ReplicaTable::new();
        let a = origin(&t, "a");
        let clock = Clock::new(Box::new(ManualClock::new(1_000)));
        let s = MemoryStore::new();
        for i in 0..5 {
            s.write_local(
                &a,
                &clock,
                "k",
                Some(format!("v{i}").into_bytes().into()),
                Lifetime::Forever,
                &mut |_| {},
            );
        }
        let c = s.chunk(&a, 1, 5, ChunkLimits::writes(100));
        assert_eq!(c.writes.len(), 1);
        assert_eq!(c.writes[0].seq, 5);
        assert_eq!(c.covered.ranges(), &[(1, 5)]);
        assert!(
            c.superseders.is_empty(),
            "the superseder is in the chunk itself"
        );
    }

    #[test]
    fn a_chunk_covering_a_superseded_write_carries_its_superseder() {
        let t = ReplicaTable::new();
        let (a, b) = (origin(&t, "a"), origin(&t, "b"));
        let s = MemoryStore::new();
        s.merge(
            &origin(&t, "me"),
            &a,
            vec![w("k", 1, 1, Some("old")), w("j", 2, 2, Some("x"))],
            &SeqRanges::new(),
            &mut |_| {},
        );
        s.merge(
            &origin(&t, "me"),
            &b,
            vec![w("k", 5, 1, Some("new"))],
            &SeqRanges::new(),
            &mut |_| {},
        );
        let c = s.chunk(&a, 1, 2, ChunkLimits::writes(100));
        assert_eq!(c.writes.len(), 1);
        assert_eq!(c.covered.ranges(), &[(1, 2)]);
        assert_eq!(c.superseders.len(), 1);
        assert_eq!(
            (c.superseders[0].0.clone(), c.superseders[0].1.seq),
            (b.clone(), 1)
        );
        // Once every member holds b:1, the marker goes and chunks stop carrying it.
        assert_eq!(s.compact_markers(&mut |o, seq| *o == b && seq == 1), 1);
        assert!(s
            .chunk(&a, 1, 2, ChunkLimits::writes(100))
            .superseders
            .is_empty());
    }

    #[test]
    fn chunk_limit_cuts_coverage_at_the_last_write_sent() {
        let t = ReplicaTable::new();
        let a = origin(&t, "a");
        let clock = Clock::new(Box::new(ManualClock::new(1_000)));
        let s = MemoryStore::new();
        for i in 0..10 {
            s.write_local(
                &a,
                &clock,
                &format!("k{i}"),
                Some(b"x".to_vec().into()),
                Lifetime::Forever,
                &mut |_| {},
            );
        }
        let c = s.chunk(&a, 1, 10, ChunkLimits::writes(4));
        assert_eq!(c.writes.len(), 4);
        assert_eq!(c.covered.ranges(), &[(1, 4)]);
    }

    #[test]
    fn chunk_bytes_limit_keeps_frames_small_but_always_moves() {
        let t = ReplicaTable::new();
        let a = origin(&t, "a");
        let clock = Clock::new(Box::new(ManualClock::new(1_000)));
        let s = MemoryStore::new();
        for i in 0..10 {
            let big = vec![b'x'; 100_000].into_boxed_slice();
            s.write_local(
                &a,
                &clock,
                &format!("k{i}"),
                Some(big),
                Lifetime::Forever,
                &mut |_| {},
            );
        }
        let limits = ChunkLimits {
            max_writes: 1024,
            max_bytes: 250_000,
        };
        let c = s.chunk(&a, 1, 10, limits);
        assert_eq!(c.writes.len(), 2);
        assert_eq!(c.covered.ranges(), &[(1, 2)]);
        let tiny = ChunkLimits {
            max_writes: 1024,
            max_bytes: 1,
        };
        assert_eq!(
            s.chunk(&a, 3, 10, tiny).writes.len(),
            1,
            "one write even when it alone is over"
        );
    }

    #[test]
    fn a_touch_extends_a_live_key_but_never_revives_or_reverts() {
        let t = ReplicaTable::new();
        let (a, b) = (origin(&t, "a"), origin(&t, "b"));
        let source = Arc::new(ManualClock::new(10_000));
        let clock = Clock::new(Box::new(source.clone()));
        let s = MemoryStore::new();
        let set = s.write_local(
            &a,
            &clock,
            "k",
            Some(b"v".to_vec().into()),
            Lifetime::Ttl(100),
            &mut |_| {},
        );
        assert_eq!(set.expires_ms, 10_100);
        let touch = s
            .touch_local(&a, &clock, "k".into(), 1_000)
            .expect("live key");
        assert!(touch.touch && touch.expires_ms == 11_000);
        assert!(
            s.read("k", &|| 10_500, &mut |_| {}),
            "the touch extended it"
        );
        assert!(s.touch_local(&a, &clock, "missing".into(), 1_000).is_none());
        // A newer set from elsewhere replaces the expiry along with the value.
        let mut newer = w("k", Hlc::from_parts(20_000, 0).0, 1, Some("n"));
        newer.expires_ms = 20_050;
        s.merge(
            &origin(&t, "me"),
            &b,
            vec![newer],
            &SeqRanges::new(),
            &mut |_| {},
        );
        assert!(s.read("k", &|| 20_000, &mut |_| {}));
        assert!(!s.read("k", &|| 20_050, &mut |_| {}));
        // A touch older than a delete leaves the key deleted.
        s.merge(
            &origin(&t, "me"),
            &b,
            vec![w("k", Hlc::from_parts(30_000, 0).0, 2, None)],
            &SeqRanges::new(),
            &mut |_| {},
        );
        let mut old_touch = w("k", Hlc::from_parts(25_000, 0).0, 3, None);
        old_touch.touch = true;
        old_touch.expires_ms = 99_999;
        s.merge(
            &origin(&t, "me"),
            &b,
            vec![old_touch],
            &SeqRanges::new(),
            &mut |_| {},
        );
        assert!(!s.read("k", &|| 30_000, &mut |_| {}));
        assert_eq!(s.live_len(), 0);
    }

    #[test]
    fn expiry_is_swept_reported_once_and_collected_like_a_tombstone() {
        let t = ReplicaTable::new();
        let a = origin(&t, "a");
        let source = Arc::new(ManualClock::new(10_000));
        let clock = Clock::new(Box::new(source.clone()));
        let s = MemoryStore::new();
        for i in 0..10 {
            s.write_local(
                &a,
                &clock,
                &format!("k{i}"),
                Some(b"v".to_vec().into()),
                Lifetime::Ttl(50 + i),
                &mut |_| {},
            );
        }
        s.write_local(
            &a,
            &clock,
            "forever",
            Some(b"v".to_vec().into()),
            Lifetime::Forever,
            &mut |_| {},
        );
        assert_eq!(s.live_len(), 11);
        let mut expired = Vec::new();
        // Expiries 10_050..=10_059: those up to and including 10_055 are due.
        s.expire(10_055, &mut |k| expired.push(k.to_string()));
        assert_eq!(expired.len(), 6);
        assert_eq!(s.live_len(), 5);
        s.expire(10_055, &mut |k| expired.push(k.to_string()));
        assert_eq!(expired.len(), 6, "reported once");
        s.expire(20_000, &mut |k| expired.push(k.to_string()));
        assert_eq!(
            (expired.len(), s.live_len(), s.tombstone_count()),
            (10, 1, 10)
        );
        assert_eq!(s.collect(15_000, &mut |_, _| true), 10);
        assert_eq!((s.entry_count(), s.tombstone_count()), (1, 0));
    }

    /// Two servers write a key with the same expiry in the same millisecond, again and again (a rolling
    /// session): whichever write wins here, the key waits for one expiry, so the queue holds one item
    /// for it, not one per write.
    #[test]
    fn a_write_that_loses_leaves_no_second_expiry_entry() {
        let t = ReplicaTable::new();
        let (me, a, b) = (origin(&t, "me"), origin(&t, "a"), origin(&t, "b"));
        let s = MemoryStore::new();
        let none = SeqRanges::new();
        for seq in 1..=50 {
            for o in [&b, &a] {
                let mut write = w("k", 7, seq, Some("v"));
                write.hlc = Hlc(seq);
                write.expires_ms = 10_000;
                s.merge(&me, o, vec![write], &none, &mut |_| {});
            }
        }
        assert_eq!(s.state.read().expiries.len(), 1);
        let mut expired = 0;
        s.expire(10_000, &mut |_| expired += 1);
        assert_eq!((expired, s.live_len(), s.tombstone_count()), (1, 0, 1));
    }

    #[test]
    fn expired_values_are_invisible() {
        let t = ReplicaTable::new();
        let a = origin(&t, "a");
        let s = MemoryStore::new();
        let mut write = w("k", 1, 1, Some("v"));
        write.expires_ms = 100;
        s.merge(
            &origin(&t, "me"),
            &a,
            vec![write],
            &SeqRanges::new(),
            &mut |_| {},
        );
        let mut seen = false;
        assert!(s.read("k", &|| 99, &mut |_| seen = true));
        assert!(!s.read("k", &|| 100, &mut |_| {}));
        assert!(seen);
    }

    /// The registers of `key` as (origin, hlc, value).
    fn regs(s: &MemoryStore, key: &str) -> Vec<(String, u64, Option<String>)> {
        s.registers(key)
            .into_iter()
            .map(|(o, w)| {
                let v = w.value.map(|v| String::from_utf8(v.to_vec()).unwrap());
                (o.id().node.to_string(), w.hlc.0, v)
            })
            .collect()
    }

    #[test]
    fn an_own_write_overwritten_before_any_chunk_covered_it_leaves_no_marker() {
        let t = ReplicaTable::new();
        let me = origin(&t, "me");
        let clock = Clock::new(Box::new(Arc::new(ManualClock::new(1_000))));
        let s = MemoryStore::new();
        let set = |v: &str| {
            let value = Some(v.as_bytes().to_vec().into_boxed_slice());
            s.write_local(&me, &clock, "k", value, Lifetime::Forever, &mut |_| {})
        };
        for i in 0..100 {
            set(&i.to_string());
        }
        assert_eq!(s.marker_count(), 0, "none of them ever left this replica");
        let chunk = s.chunk(&me, 1, 100, ChunkLimits::UNLIMITED);
        assert_eq!((chunk.writes.len(), chunk.covered.count()), (1, 100));
        set("shipped over");
        assert_eq!(
            s.marker_count(),
            1,
            "seq 100 was covered by a chunk: it may be elsewhere"
        );
        set("again");
        assert_eq!(s.marker_count(), 1, "seq 101 never left");
        assert_eq!(get(&s, "k").as_deref(), Some("again"));
    }

    /// Issue 12, behaviour 3 (own writes): a write of this replica that left only as the superseder
    /// in a chunk of another origin may be held elsewhere; overwritten later, it keeps a marker, so a
    /// chunk of this replica's own writes covering it carries what superseded it.
    #[test]
    fn an_own_write_shipped_as_a_superseder_is_covered_only_with_what_superseded_it() {
        let t = ReplicaTable::new();
        let (me, a) = (origin(&t, "me"), origin(&t, "a"));
        let clock = Clock::new(Box::new(Arc::new(ManualClock::new(1_000))));
        let s = MemoryStore::new();
        let none = SeqRanges::new();
        s.merge(&me, &a, vec![w("k", 10, 1, Some("a"))], &none, &mut |_| {});
        let set = |v: &str| {
            let value = Some(v.as_bytes().to_vec().into_boxed_slice());
            s.write_local(&me, &clock, "k", value, Lifetime::Forever, &mut |_| {})
        };
        set("mine");
        let relayed = s.chunk(&a, 1, 1, ChunkLimits::UNLIMITED);
        assert_eq!(relayed.superseders.len(), 1, "a's write travels with mine");
        set("again");
        let own = s.chunk(&me, 1, 1, ChunkLimits::UNLIMITED);
        assert_eq!(own.covered, SeqRanges::up_to(1));
        let carried: Vec<u64> = own.superseders.iter().map(|(_, w)| w.seq).collect();
        assert_eq!(
            carried,
            vec![2],
            "seq 1 is claimed only with seq 2, which beat it"
        );
    }

    #[test]
    fn a_write_older_than_a_collected_tombstone_meets_a_stand_in() {
        let t = ReplicaTable::new();
        let (me, a, b, c) = (
            origin(&t, "me"),
            origin(&t, "a"),
            origin(&t, "b"),
            origin(&t, "c"),
        );
        let s = MemoryStore::new();
        let none = SeqRanges::new();
        s.merge(&me, &a, vec![w("k", 10, 1, Some("v1"))], &none, &mut |_| {});
        s.merge(&me, &b, vec![w("k", 20, 1, None)], &none, &mut |_| {});
        s.merge(
            &me,
            &a,
            vec![w("live", 5, 2, Some("l"))],
            &none,
            &mut |_| {},
        );
        assert_eq!(s.collect(1_000, &mut |_, _| true), 1);
        assert_eq!((s.entry_count(), s.collected_remembered()), (1, 1));

        // c was away: its write of k, older than the collected tombstone, comes back.
        let mut changes = 0;
        let merged = s.merge(
            &me,
            &c,
            vec![w("k", 15, 1, Some("old"))],
            &none,
            &mut |_| changes += 1,
        );
        assert_eq!(
            merged,
            Merged {
                fresh: 1,
                stand_ins: 1
            }
        );
        assert_eq!(changes, 0, "listeners never see the old value");
        assert_eq!(get(&s, "k"), None);
        assert_eq!(
            regs(&s, "k"),
            vec![("me".into(), 19, None)],
            "a tombstone at our highest place at or below the collected one (b's at 20; me > b)"
        );
        assert!(
            s.context_of(&me).contains(1),
            "the stand-in is a write of this replica"
        );
        assert!(s.context_of(&c).contains(1), "the old write's dot is held");

        // Newer writes are untouched: one newer than the collected tombstone wins as usual, and an old
        // write to a key that still holds an older register is plain last-writer-wins.
        let merged = s.merge(
            &me,
            &c,
            vec![w("k", 30, 2, Some("new")), w("live", 7, 3, Some("l2"))],
            &none,
            &mut |_| {},
        );
        assert_eq!(
            merged,
            Merged {
                fresh: 2,
                stand_ins: 0
            }
        );
        assert_eq!(get(&s, "k").as_deref(), Some("new"));
        assert_eq!(get(&s, "live").as_deref(), Some("l2"));
        // An old write that loses anyway needs nothing either.
        let merged = s.merge(
            &me,
            &c,
            vec![w("k", 12, 3, Some("older"))],
            &none,
            &mut |_| {},
        );
        assert_eq!(merged.stand_ins, 0);
        assert_eq!(get(&s, "k").as_deref(), Some("new"));
    }

    /// A tombstone and a set stamped alike (the same millisecond on two servers), the tombstone winning
    /// by its origin: once the tombstone is collected, the set coming back from a replica that was away
    /// must not revive the key. Checked with this replica's id ranked above, between and below theirs.
    #[test]
    fn a_collected_tombstone_that_beat_a_set_by_origin_alone_is_not_revived() {
        for me_name in ["m", "aa", "0"] {
            let t = ReplicaTable::new();
            let (me, a, b) = (origin(&t, me_name), origin(&t, "a"), origin(&t, "b"));
            let s = MemoryStore::new();
            let none = SeqRanges::new();
            s.merge(&me, &b, vec![w("k", 20, 1, None)], &none, &mut |_| {});
            assert_eq!(s.collect(1_000, &mut |_, _| true), 1);
            let mut shown = 0;
            let merged = s.merge(
                &me,
                &a,
                vec![w("k", 20, 1, Some("old"))],
                &none,
                &mut |_| shown += 1,
            );
            assert_eq!(merged.stand_ins, 1, "me = {me_name}");
            assert_eq!(get(&s, "k"), None, "me = {me_name}: the key came back");
            assert_eq!(shown, 0, "me = {me_name}: a listener heard of it");
        }
    }

    /// The mirror case, and a stand-in's own rank: a write newer than the collected register by the
    /// whole order `(hlc, origin)` (the same timestamp, a larger origin) wins, whether it arrives
    /// before or after the stand-in written for an older write, and whichever way this replica's id
    /// ranks against theirs.
    #[test]
    fn a_stand_in_never_beats_a_write_newer_by_the_whole_order() {
        for me_name in ["m", "bb", "0"] {
            let t = ReplicaTable::new();
            let (me, a, b, c) = (
                origin(&t, me_name),
                origin(&t, "a"),
                origin(&t, "b"),
                origin(&t, "c"),
            );
            let s = MemoryStore::new();
            let none = SeqRanges::new();
            s.merge(&me, &b, vec![w("k", 20, 1, None)], &none, &mut |_| {});
            assert_eq!(s.collect(1_000, &mut |_, _| true), 1);
            // An older write comes back: it meets a stand-in.
            let merged = s.merge(
                &me,
                &a,
                vec![w("k", 15, 1, Some("old"))],
                &none,
                &mut |_| {},
            );
            assert_eq!(merged.stand_ins, 1, "me = {me_name}");
            let stand_in = registers_of(&s, &me).expect("the stand-in is this replica's write");
            // A write stamped like the collected tombstone, by a larger origin, is newer: it wins.
            let merged = s.merge(
                &me,
                &c,
                vec![w("k", 20, 1, Some("new"))],
                &none,
                &mut |_| {},
            );
            assert_eq!(merged.stand_ins, 0, "me = {me_name}");
            assert_eq!(get(&s, "k").as_deref(), Some("new"), "me = {me_name}");

            // On a replica that held the newer write first, the stand-in that travels loses to it.
            let other = MemoryStore::new();
            let you = origin(&t, "you");
            other.merge(
                &you,
                &c,
                vec![w("k", 20, 1, Some("new"))],
                &none,
                &mut |_| {},
            );
            other.merge(
                &you,
                &me,
                vec![w("k", stand_in, 1, None)],
                &none,
                &mut |_| {},
            );
            assert_eq!(get(&other, "k").as_deref(), Some("new"), "me = {me_name}");
        }
    }

    /// The hlc of the stored value register of `origin` (the first found).
    fn registers_of(s: &MemoryStore, origin: &Origin) -> Option<u64> {
        let state = s.state.read();
        let mut found = state
            .origins
            .get(origin)?
            .index
            .range(1, u64::MAX)
            .filter_map(|(seq, hash)| state.entries.by_dot(hash, origin, seq))
            .map(|(_, e)| e.hlc.0);
        found.next()
    }

    /// Past `rememberCollected` only the newest forgotten time guards keys with no live register: the
    /// first old write to such a key meets a stand-in, and so must a second, newer than that stand-in
    /// but still older than the forgotten time.
    #[test]
    fn past_remember_collected_a_second_old_write_to_the_same_key_stays_guarded() {
        let t = ReplicaTable::new();
        let (me, a, c) = (origin(&t, "me"), origin(&t, "a"), origin(&t, "c"));
        let s = MemoryStore::new();
        let none = SeqRanges::new();
        s.merge(&me, &a, vec![w("k", 20, 1, None)], &none, &mut |_| {});
        assert_eq!(s.collect(1_000, &mut |_, _| true), 1);
        s.forget_collected(1_001);
        assert_eq!(s.collected_remembered(), 0);
        let first = s.merge(
            &me,
            &c,
            vec![w("k", 10, 1, Some("old"))],
            &none,
            &mut |_| {},
        );
        assert_eq!(first.stand_ins, 1);
        let second = s.merge(
            &me,
            &c,
            vec![w("k", 15, 2, Some("older"))],
            &none,
            &mut |_| {},
        );
        assert_eq!(second.stand_ins, 1);
        assert_eq!(get(&s, "k"), None, "the second old write revived the key");
    }

    /// A replica that learns another's collected registers (they follow every hello) answers a
    /// write one of them beat as the collector would, and a value it already held that one beats
    /// gets a stand-in at once; a write newer than the register is untouched, and the record is
    /// journaled for the disk.
    #[test]
    fn collected_registers_learned_from_a_peer_answer_what_they_beat() {
        let t = ReplicaTable::new();
        let (me, a, c) = (origin(&t, "me"), origin(&t, "a"), origin(&t, "c"));
        let none = SeqRanges::new();
        let collector = MemoryStore::new();
        collector.merge(&me, &a, vec![w("k", 20, 1, None)], &none, &mut |_| {});
        collector.merge(&me, &a, vec![w("j", 20, 2, None)], &none, &mut |_| {});
        assert_eq!(collector.collect(1_000, &mut |_, _| true), 2);
        let learner = MemoryStore::journaled();
        learner.merge(
            &me,
            &c,
            vec![w("j", 10, 1, Some("old"))],
            &none,
            &mut |_| {},
        );
        learner.merge(
            &me,
            &c,
            vec![w("n", 10, 2, Some("other"))],
            &none,
            &mut |_| {},
        );
        learner.drain_changes();
        let mut heard = Vec::new();
        let stand_ins = learner.learn_collected(&me, collector.collected_records(), &mut |s| {
            heard.push((s.key.to_string(), s.value.is_some()))
        });
        assert_eq!(
            stand_ins, 1,
            "the value of j it held lost to the collected tombstone"
        );
        assert_eq!(heard, vec![("j".to_string(), false)]);
        assert_eq!(get(&learner, "j"), None);
        assert_eq!(get(&learner, "n").as_deref(), Some("other"));
        let changes = learner.drain_changes().expect("journaled");
        assert_eq!(changes.collected.len(), 2, "both records are persisted");
        let old = learner.merge(
            &me,
            &c,
            vec![w("k", 15, 3, Some("older"))],
            &none,
            &mut |_| {},
        );
        assert_eq!(old.stand_ins, 1, "an older write of k meets a stand-in");
        assert_eq!(get(&learner, "k"), None, "the collected delete was revived");
        let newer = learner.merge(
            &me,
            &c,
            vec![w("k", 25, 4, Some("newer"))],
            &none,
            &mut |_| {},
        );
        assert_eq!(newer.stand_ins, 0);
        assert_eq!(get(&learner, "k").as_deref(), Some("newer"));
    }

    #[test]
    fn forgotten_collected_registers_still_guard_keys_without_a_register() {
        let t = ReplicaTable::new();
        let (me, a, c) = (origin(&t, "me"), origin(&t, "a"), origin(&t, "c"));
        let s = MemoryStore::journaled();
        let none = SeqRanges::new();
        s.merge(&me, &a, vec![w("k", 20, 1, None)], &none, &mut |_| {});
        s.merge(
            &me,
            &a,
            vec![w("kept", 5, 2, Some("x"))],
            &none,
            &mut |_| {},
        );
        assert_eq!(s.collect(1_000, &mut |_, _| true), 1);
        let first = s.drain_changes().expect("journaled");
        assert_eq!(
            first.collected,
            vec![(
                key_fingerprint("k"),
                Some(CollectedRecord {
                    fingerprint: key_fingerprint("k"),
                    hlc: Hlc(20),
                    origin: Some(a.clone()),
                    at_ms: 1_000
                })
            )]
        );
        s.forget_collected(1_000);
        assert_eq!(
            s.collected_remembered(),
            1,
            "stamped at 1 000: not before it"
        );
        s.forget_collected(1_001);
        assert_eq!(s.collected_remembered(), 0);
        let forgotten = s.drain_changes().expect("journaled");
        assert_eq!(forgotten.collected, vec![(key_fingerprint("k"), None)]);
        assert_eq!(forgotten.collected_beyond, Some(Hlc(20)));

        // Restored from what was persisted, the store answers the same way.
        let restored = MemoryStore::restore(
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Hlc(20),
            false,
        );
        for s in [&s, &restored] {
            // Without a record, any key with no register is guarded up to the forgotten time...
            let merged = s.merge(
                &me,
                &c,
                vec![w("other", 15, 1, Some("old"))],
                &none,
                &mut |_| {},
            );
            assert_eq!(merged.stand_ins, 1);
            assert_eq!(
                regs(s, "other"),
                vec![("me".into(), 15, None)],
                "just above the old write (c's at 15; me > c)"
            );
            // ... a key holding an older register is not, and a newer write never is.
            s.merge(
                &me,
                &c,
                vec![w("kept", 10, 2, Some("y")), w("k", 25, 3, Some("z"))],
                &none,
                &mut |_| {},
            );
        }
        assert_eq!(get(&s, "kept").as_deref(), Some("y"));
        assert_eq!(get(&s, "k").as_deref(), Some("z"));
        assert_eq!(get(&restored, "k").as_deref(), Some("z"));
    }

    /// A store's registers and contexts, for equality checks.
    type Dump = (
        Vec<(String, Option<Vec<u8>>, u64)>,
        Vec<(String, SeqRanges)>,
    );

    fn dump(s: &MemoryStore) -> Dump {
        let state = s.state.read();
        let mut entries: Vec<_> = state
            .entries
            .iter()
            .map(|(k, e)| (k.to_string(), e.value.as_ref().map(|v| v.to_vec()), e.hlc.0))
            .collect();
        entries.sort();
        let mut ctx: Vec<_> = state
            .origins
            .iter()
            .filter(|(_, o)| !o.context.is_empty())
            .map(|(o, st)| (o.id().to_string(), st.context.clone()))
            .collect();
        ctx.sort_by(|a, b| a.0.cmp(&b.0));
        (entries, ctx)
    }

    /// Generated history: writes by three origins to a handful of keys, with unique dots.
    fn history() -> impl Strategy<Value = Vec<(usize, Write)>> {
        proptest::collection::vec(
            (
                0usize..3,
                0usize..4,
                0u64..20,
                proptest::option::of("[a-c]{1,2}"),
            ),
            1..40,
        )
        .prop_map(|raw| {
            // Like a real origin: seqs count up and each write's hlc is above the last one's.
            // Different origins may still tie on hlc, which exercises the origin tie-break.
            let mut seqs = [0u64; 3];
            let mut clocks = [0u64; 3];
            raw.into_iter()
                .map(|(o, k, step, v)| {
                    seqs[o] += 1;
                    clocks[o] += 1 + step % 4;
                    (o, w(&format!("k{k}"), clocks[o], seqs[o], v.as_deref()))
                })
                .collect()
        })
    }

    fn apply_all(t: &ReplicaTable, ops: &[(usize, Write)]) -> MemoryStore {
        let s = MemoryStore::new();
        let me = origin(t, "me");
        for (o, write) in ops {
            let origin = origin(t, ["a", "b", "c"][*o]);
            s.merge(
                &me,
                &origin,
                vec![write.clone()],
                &SeqRanges::new(),
                &mut |_| {},
            );
        }
        s
    }

    proptest! {
        #[test]
        fn collected_key_guards_converge_and_keep_the_whole_order(
            writes in proptest::collection::vec((0usize..2, 0usize..3, 1u64..8, any::<bool>()), 1..12),
            away in proptest::collection::vec((0usize..3, 0u64..4), 1..8),
            names in (0usize..4, 0usize..4, 0usize..3),
            seed in any::<u64>(),
        ) {
            guards_run(writes, away, names, seed)?;
        }

        #[test]
        fn merge_order_and_duplicates_do_not_matter(h in history(), seed in any::<u64>()) {
            let t = ReplicaTable::new();
            let reference = apply_all(&t, &h);
            // Another replica receives the same writes shuffled, with some delivered twice.
            let mut shuffled = h.clone();
            let mut rng = seed;
            for i in (1..shuffled.len()).rev() {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (rng >> 33) as usize % (i + 1));
            }
            let dups: Vec<_> = shuffled.iter().step_by(3).cloned().collect();
            shuffled.extend(dups);
            prop_assert_eq!(dump(&reference), dump(&apply_all(&t, &shuffled)));
        }

        #[test]
        fn merging_replicas_is_commutative_associative_and_idempotent(
            x in history(), y in history(), z in history()
        ) {
            let t = ReplicaTable::new();
            // Three replicas that saw different writes. Their dots are kept apart by a seq offset and
            // their hlcs interleaved, so one origin never stamps two writes alike.
            let shift = |h: Vec<(usize, Write)>, part: u64| -> Vec<(usize, Write)> {
                h.into_iter().map(|(o, mut w)| {
                    w.seq += part * 1000;
                    w.hlc = Hlc(w.hlc.0 * 3 + part);
                    (o, w)
                }).collect()
            };
            let (x, y, z) = (shift(x, 0), shift(y, 1), shift(z, 2));
            let replica = |parts: &[&Vec<(usize, Write)>]| {
                let all: Vec<_> = parts.iter().flat_map(|p| p.iter().cloned()).collect();
                apply_all(&t, &all)
            };
            let merged = |a: &MemoryStore, b: &MemoryStore| {
                let out = MemoryStore::new();
                absorb(&out, a);
                absorb(&out, b);
                out
            };
            let (a, b, c) = (replica(&[&x]), replica(&[&y]), replica(&[&z]));
            prop_assert_eq!(dump(&merged(&a, &b)), dump(&merged(&b, &a)));
            prop_assert_eq!(dump(&merged(&merged(&a, &b), &c)), dump(&merged(&a, &merged(&b, &c))));
            prop_assert_eq!(dump(&merged(&a, &a)), dump(&a));
            // Merging state gives what applying every write would have given.
            prop_assert_eq!(dump(&merged(&merged(&a, &b), &c)), dump(&replica(&[&x, &y, &z])));
        }
    }

    /// Two replicas that collected every register of members `a` and `b` receive, in different orders,
    /// the writes of `c`, a replica that was away (its id ranked below, between or above theirs), stamped mostly like theirs (equal timestamps across
    /// origins), then exchange what they wrote meanwhile (stand-ins). Whatever the ranks of the ids:
    /// they converge; a key whose collected tombstone beats every write of `c` stays deleted; and a
    /// key's newest write wins when it is newer than the collected register by more than the one tick
    /// a stand-in may have to take above an old write (see `CollectedKeys`).
    fn guards_run(
        writes: Vec<(usize, usize, u64, bool)>,
        away: Vec<(usize, u64)>,
        names: (usize, usize, usize),
        seed: u64,
    ) -> Result<(), TestCaseError> {
        let ids = ["0", "ab", "bb", "z"];
        let t = ReplicaTable::new();
        let (a, b) = (origin(&t, "a"), origin(&t, "b"));
        let c = origin(&t, ["00", "aa", "c"][names.2]);
        let (m1, m2) = (
            origin(&t, ids[names.0]),
            origin(&t, ids[(names.0 + 1 + names.1 % 3) % 4]),
        );
        let none = SeqRanges::new();
        let (r1, r2) = (MemoryStore::new(), MemoryStore::new());
        // The members' writes: an origin never stamps two alike (its clock ticks); two origins often do.
        let mut all: Vec<(Origin, Write)> = Vec::new();
        let mut seqs = [0u64; 2];
        for (o, k, hlc, value) in writes {
            seqs[o] += 1;
            let origin = [&a, &b][o].clone();
            if all.iter().any(|(x, w)| *x == origin && w.hlc.0 == hlc) {
                continue;
            }
            let v = value.then_some("v");
            all.push((origin, w(&format!("k{k}"), hlc, seqs[o], v)));
        }
        for (o, write) in &all {
            for r in [&r1, &r2] {
                let me = if std::ptr::eq(r, &r1) { &m1 } else { &m2 };
                r.merge(me, o, vec![write.clone()], &none, &mut |_| {});
            }
        }
        r1.collect(1_000, &mut |_, _| true);
        r2.collect(1_000, &mut |_, _| true);
        // c's writes, alternately values and deletes, with rising hlcs.
        let mut mine: Vec<Write> = Vec::new();
        let mut hlc = 0;
        for (i, (k, step)) in away.into_iter().enumerate() {
            hlc += 1 + step;
            let v = (i % 3 != 2).then_some("c");
            mine.push(w(&format!("k{k}"), hlc, i as u64 + 1, v));
        }
        let mut shuffled = mine.clone();
        let mut rng = seed | 1;
        for i in (1..shuffled.len()).rev() {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            shuffled.swap(i, (rng >> 33) as usize % (i + 1));
        }
        for write in &mine {
            r1.merge(&m1, &c, vec![write.clone()], &none, &mut |_| {});
        }
        for write in &shuffled {
            r2.merge(&m2, &c, vec![write.clone()], &none, &mut |_| {});
        }
        // Each sends the other its own writes (the stand-ins), superseders first.
        for (from, to, from_me, to_me) in [(&r1, &r2, &m1, &m2), (&r2, &r1, &m2, &m1)] {
            let ctx = from.context_of(from_me);
            if ctx.is_empty() {
                continue;
            }
            let chunk = from.chunk(from_me, 1, ctx.max(), ChunkLimits::UNLIMITED);
            for (o, write) in chunk.superseders {
                let dot = SeqRanges::from_ranges([(write.seq, write.seq)]);
                to.merge(to_me, &o, vec![write], &dot, &mut |_| {});
            }
            to.merge(to_me, from_me, chunk.writes, &chunk.covered, &mut |_| {});
        }
        for k in 0..3 {
            let key = format!("k{k}");
            let (v1, v2) = (get(&r1, &key), get(&r2, &key));
            prop_assert_eq!(&v1, &v2, "{} differs", key);
            let newest = |ws: &mut dyn Iterator<Item = (&Origin, &Write)>| {
                ws.filter(|(_, w)| *w.key == *key)
                    .max_by(|x, y| (x.1.hlc, x.0).cmp(&(y.1.hlc, y.0)))
                    .map(|(o, w)| (o.clone(), w.clone()))
            };
            let members = newest(&mut all.iter().map(|(o, w)| (o, w)));
            let returned = newest(&mut mine.iter().map(|w| (&c, w)));
            match (members, returned) {
                (Some((mo, mw)), Some((_, cw))) if mw.value.is_none() => {
                    if !beats(cw.hlc, &c, mw.hlc, &mo) {
                        prop_assert_eq!(v1, None, "{}: deleted and collected, revived", key);
                    } else if cw.hlc.0 > mw.hlc.0 + 1 {
                        let want = cw.value.map(|v| String::from_utf8(v.to_vec()).unwrap());
                        prop_assert_eq!(v1, want, "{}: the newest write lost", key);
                    }
                }
                (Some((mo, mw)), Some((_, cw))) => {
                    let newest = if beats(cw.hlc, &c, mw.hlc, &mo) {
                        cw
                    } else {
                        mw
                    };
                    let want = newest.value.map(|v| String::from_utf8(v.to_vec()).unwrap());
                    prop_assert_eq!(v1, want, "{}: last writer", key);
                }
                (None, Some((_, cw))) => {
                    let want = cw.value.map(|v| String::from_utf8(v.to_vec()).unwrap());
                    prop_assert_eq!(v1, want, "{}: only c wrote it", key);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Merges everything `from` holds into `into`, as a full catch-up between two replicas would.
    fn absorb(into: &MemoryStore, from: &MemoryStore) {
        let me = ReplicaTable::new().intern(&ReplicaId {
            node: "me".into(),
            incarnation: 1,
        });
        for (origin, ctx) in from.context() {
            let c = from.chunk(&origin, 1, ctx.max(), ChunkLimits::UNLIMITED);
            for (o, w) in c.superseders {
                let seq = w.seq;
                into.merge(
                    &me,
                    &o,
                    vec![w],
                    &SeqRanges::from_ranges([(seq, seq)]),
                    &mut |_| {},
                );
            }
            into.merge(&me, &origin, c.writes, &c.covered, &mut |_| {});
        }
    }
}
