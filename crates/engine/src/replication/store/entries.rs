//! The tables one bucket replica keeps: the key -> entry map, and per origin its context, the index of
//! the dots stored now and the superseded markers.
//!
//! Invariants: an origin's index holds exactly the dots of the registers stored now; a dot that lost to
//! a newer write is a marker until every member holds what superseded it. The key table holds each key
//! once, in the chain its hash names, in `old` (below `drained`) or in `buckets`, never both; a growth
//! ends before the next one begins; a key's place in a scan's order is its hash, bit-reversed, and
//! nothing the table does changes it. `print` is the sum of the prints of the records in the table
//! (`Entry::print`), kept in the only two places a record enters or leaves it: a record is never
//! changed in place, so the sum is exact whichever path (merge, local write, expiry, collection,
//! drop, stand-in, restore) stored or removed it.

use super::Entry;
use crate::replication::ranges::{Seq, SeqRanges};
use crate::replication::replica::Origin;
use crate::replication::seq_index::SeqIndex;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Default)]
pub(super) struct OriginState {
    pub(super) context: SeqRanges,
    /// seq -> hash of the key of the registers of this origin stored now (`Entries::by_dot` finds the
    /// record again; a hash is half the size of a key handle in every index node).
    pub(super) index: SeqIndex,
    /// seq -> marker of this origin's writes that lost to a newer one, until every member holds the
    /// one that superseded them.
    pub(super) superseded: BTreeMap<Seq, Marker>,
    /// The highest seq a chunk has covered, raw (`Seq::get`): a write of this replica's own above it
    /// never left it.
    pub(super) shipped: std::sync::atomic::AtomicU64,
}

/// A superseded dot: the key its write was for, and the dot of the register that superseded it.
pub(super) struct Marker {
    pub(super) key: Arc<str>,
    pub(super) by: Origin,
    pub(super) by_seq: Seq,
}

/// A key and its registers, in one allocation, chained to the next record of its bucket.
///
/// `Clone` only lets `vec![None; n]` build a bucket array from zeroed memory, which the allocator hands
/// out as fresh pages mapped as they are first used, rather than writing every bucket under the lock.
#[derive(Clone)]
pub(super) struct Record {
    pub(super) key: Arc<str>,
    pub(super) entry: Entry,
    /// The key's hash: the bucket the record chains in, and its place in a scan's order.
    hash: u64,
    next: Option<Box<Record>>,
}

impl Record {
    pub(super) fn new(key: Arc<str>, entry: Entry) -> Box<Record> {
        Box::new(Record {
            key,
            entry,
            hash: 0,
            next: None,
        })
    }
}

/// A bucket: the head of a chain of records whose hashes share its low bits.
type Bucket = Option<Box<Record>>;

/// The key -> entry table: a power-of-two array of buckets, each a chain of the records whose hash's low
/// bits are its index. Records sit behind one pointer per bucket, so the array stays small: a table
/// at half load (as after each doubling) costs its buckets twice over.
///
/// Growth is spread over the writes that follow it. An insert that finds as many records as buckets
/// keeps the array as `old` and starts one twice its size; from then on every insert and remove first
/// moves the chains of the next `DRAIN_BUCKETS` buckets of `old` over, and `old` is dropped once walked.
/// The next growth waits for as many records as the new array has buckets, at least one insert per
/// bucket of `old`: `old` is drained long before. Grown in one step, the table moved every record
/// under the store's exclusive lock, and each read waited that long (0.7 s at a million keys).
///
/// A paged scan visits the keys in the order of their bit-reversed hashes (the order in which Redis's
/// `SCAN` walks its buckets): the records of a bucket of `n` bits are a stretch of that order, the same
/// stretch split in two in a table of `n + 1` bits, so a page reads whole stretches from either array.
/// A key never changes place in it, however the table grows or its chain changes: a cursor is just a
/// position in that order.
pub(super) struct Entries {
    /// Bucket `i` chains the records whose hash's low bits are `i` (`MIN_BUCKETS` or more of them).
    buckets: Box<[Bucket]>,
    /// During a growth, the buckets before it (half as many), drained into `buckets`; empty between
    /// growths.
    old: Box<[Bucket]>,
    /// The buckets of `old` below this one are drained: empty.
    drained: usize,
    len: usize,
    /// The sum (wrapping) of `Entry::print` over the records in the table.
    print: u64,
    pub(super) hasher: crate::hash::DefaultHashBuilder,
    /// Records a growth moved from `old` to `buckets`.
    #[cfg(test)]
    pub(super) relocated: u64,
}

/// The buckets of an empty table.
const MIN_BUCKETS: usize = 8;

/// Buckets of `Entries::old` drained by each insert and remove: at most as many chains (of one record
/// on average, at the load a growth starts at) move per write a merge applies, whatever the table's
/// size.
const DRAIN_BUCKETS: usize = 2;

impl Default for Entries {
    fn default() -> Self {
        Entries {
            buckets: vec![None; MIN_BUCKETS].into_boxed_slice(),
            old: Box::default(),
            drained: 0,
            len: 0,
            print: 0,
            hasher: Default::default(),
            #[cfg(test)]
            relocated: 0,
        }
    }
}

impl Drop for Entries {
    /// Unlinks each chain a record at a time: dropped whole, a chain would recurse once per record.
    fn drop(&mut self) {
        for bucket in self.old.iter_mut().chain(self.buckets.iter_mut()) {
            let mut next = bucket.take();
            while let Some(mut r) = next {
                next = r.next.take();
            }
        }
    }
}

/// The records of a chain, from its head.
fn chain(bucket: &Bucket) -> impl Iterator<Item = &Record> {
    std::iter::successors(bucket.as_deref(), |r| r.next.as_deref())
}

/// The bucket of `hash` in an array of `len` (a power of two) buckets.
fn bucket_of(hash: u64, len: usize) -> usize {
    hash as usize & (len - 1)
}

/// Takes the record of hash `hash` that `eq` picks out of a chain.
fn unlink(bucket: &mut Bucket, hash: u64, eq: impl Fn(&Record) -> bool) -> Option<Box<Record>> {
    let mut at = bucket;
    while at.as_ref().is_some_and(|r| !(r.hash == hash && eq(r))) {
        at = &mut at.as_mut().expect("checked").next;
    }
    let mut r = at.take()?;
    *at = r.next.take();
    Some(r)
}

fn push(bucket: &mut Bucket, mut r: Box<Record>) {
    r.next = bucket.take();
    *bucket = Some(r);
}

impl Entries {
    pub(super) fn hash(&self, key: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    pub(super) fn get(&self, key: &str) -> Option<&Entry> {
        self.get_key_value(key).map(|(_, e)| e)
    }

    pub(super) fn get_key_value(&self, key: &str) -> Option<(&Arc<str>, &Entry)> {
        self.get_hashed(self.hash(key), key)
    }

    /// `get_key_value` with the key's hash already computed.
    pub(super) fn get_hashed(&self, hash: u64, key: &str) -> Option<(&Arc<str>, &Entry)> {
        self.find(hash, |r| &*r.key == key)
            .map(|r| (&r.key, &r.entry))
    }

    /// The record whose key hashes to `hash` and holds register `(origin, seq)`.
    pub(super) fn by_dot(
        &self,
        hash: u64,
        origin: &Origin,
        seq: Seq,
    ) -> Option<(&Arc<str>, &Entry)> {
        self.find(hash, |r| r.entry.write_for(&r.key, origin, seq).is_some())
            .map(|r| (&r.key, &r.entry))
    }

    /// The record of hash `hash` that `eq` picks, in whichever array holds it.
    fn find(&self, hash: u64, eq: impl Fn(&Record) -> bool) -> Option<&Record> {
        let eq = |r: &&Record| r.hash == hash && eq(r);
        let bucket = &self.buckets[bucket_of(hash, self.buckets.len())];
        chain(bucket).find(eq).or_else(|| {
            let at = bucket_of(hash, self.old.len().max(1));
            let old = self.old.get(at).filter(|_| at >= self.drained)?;
            chain(old).find(eq)
        })
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<Box<Record>> {
        self.remove_hashed(self.hash(key), key)
    }

    /// `remove` with the key's hash already computed.
    pub(super) fn remove_hashed(&mut self, hash: u64, key: &str) -> Option<Box<Record>> {
        self.drain();
        let eq = |r: &Record| &*r.key == key;
        let at = bucket_of(hash, self.buckets.len());
        let r = match unlink(&mut self.buckets[at], hash, eq) {
            Some(r) => r,
            None => {
                let at = bucket_of(hash, self.old.len().max(1));
                unlink(self.old.get_mut(at)?, hash, eq)?
            }
        };
        self.len -= 1;
        self.print = self.print.wrapping_sub(r.entry.print(&r.key));
        Some(r)
    }

    /// Adds a record whose key is not in the table.
    pub(super) fn insert(&mut self, record: Box<Record>) {
        self.insert_hashed(self.hash(&record.key), record)
    }

    /// `insert` with the key's hash already computed.
    pub(super) fn insert_hashed(&mut self, hash: u64, mut record: Box<Record>) {
        self.drain();
        if self.len == self.buckets.len() {
            self.grow();
        }
        record.hash = hash;
        self.print = self.print.wrapping_add(record.entry.print(&record.key));
        let at = bucket_of(hash, self.buckets.len());
        push(&mut self.buckets[at], record);
        self.len += 1;
    }

    /// Starts a growth: the full array becomes `old`, drained into one twice its size.
    fn grow(&mut self) {
        debug_assert!(self.old.is_empty(), "a growth ends before the next begins");
        let buckets = vec![None; 2 * self.buckets.len()].into_boxed_slice();
        self.old = std::mem::replace(&mut self.buckets, buckets);
        self.drained = 0;
    }

    /// Moves the chains of the next `DRAIN_BUCKETS` buckets of `old` into `buckets`; drops `old` once
    /// it is walked.
    fn drain(&mut self) {
        if self.old.is_empty() {
            return;
        }
        let stop = (self.drained + DRAIN_BUCKETS).min(self.old.len());
        for at in self.drained..stop {
            let mut next = self.old[at].take();
            while let Some(mut r) = next {
                next = r.next.take();
                let to = bucket_of(r.hash, self.buckets.len());
                push(&mut self.buckets[to], r);
                #[cfg(test)]
                {
                    self.relocated += 1;
                }
            }
        }
        self.drained = stop;
        if stop == self.old.len() {
            self.old = Box::default();
            self.drained = 0;
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Entry)> {
        self.old[self.drained..]
            .iter()
            .chain(self.buckets.iter())
            .flat_map(chain)
            .map(|r| (&r.key, &r.entry))
    }

    /// Visits the records at positions `from..` of a scan's order, in that order, until `f` returns
    /// false (then the rest of the records of the same position too: a next page cannot start
    /// between them) or the records of `max_buckets` buckets were looked at; returns the position of
    /// the first record not visited, `None` past the last one.
    pub(super) fn walk_from(
        &self,
        from: u64,
        max_buckets: usize,
        f: &mut dyn FnMut(&Arc<str>, &Entry) -> bool,
    ) -> Option<u64> {
        let position = |r: &&Record| r.hash.reverse_bits();
        // During a growth a stretch is one bucket of `old` and two of `buckets`.
        let stretches = if self.old.is_empty() {
            self.buckets.len()
        } else {
            self.old.len()
        };
        let shift = u64::BITS - stretches.trailing_zeros();
        let mut stretch = from >> shift;
        let mut records: Vec<&Record> = Vec::new();
        for _ in 0..max_buckets.max(1) {
            let at = (stretch << shift).reverse_bits() as usize;
            let old = self.old.get(at).into_iter();
            let new = self.buckets.iter().skip(at).step_by(stretches);
            records.clear();
            records.extend(old.chain(new).flat_map(chain));
            records.retain(|r| position(r) >= from);
            records.sort_unstable_by_key(position);
            for (i, r) in records.iter().enumerate() {
                if !f(&r.key, &r.entry) {
                    let at = position(r);
                    for r in records[i + 1..].iter().take_while(|r| position(r) == at) {
                        f(&r.key, &r.entry);
                    }
                    return at.checked_add(1);
                }
            }
            stretch += 1;
            if stretch == stretches as u64 {
                return None;
            }
        }
        Some(stretch << shift)
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The fingerprint of every register stored (see `Entry::print`).
    pub(super) fn print(&self) -> u64 {
        self.print
    }

    /// `print` computed from scratch, to check the one kept as records come and go.
    #[cfg(test)]
    pub(super) fn print_recounted(&self) -> u64 {
        self.iter()
            .fold(0u64, |sum, (k, e)| sum.wrapping_add(e.print(k)))
    }

    /// The keys of the chain `hash` names in `buckets`, from its head.
    #[cfg(test)]
    pub(super) fn chain_keys(&self, hash: u64) -> Vec<Arc<str>> {
        let bucket = &self.buckets[bucket_of(hash, self.buckets.len())];
        chain(bucket).map(|r| r.key.clone()).collect()
    }
}
