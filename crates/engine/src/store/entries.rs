//! The tables one bucket replica keeps: the key -> entry map, and per origin its context, the index of
//! the dots stored now and the superseded markers.
//!
//! Invariant: an origin's index holds exactly the dots of the registers stored now; a dot that lost to
//! a newer write is a marker until every member holds what superseded it.

use super::Entry;
use crate::ranges::SeqRanges;
use crate::replica::Origin;
use crate::seq_index::SeqIndex;
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
    pub(super) superseded: BTreeMap<u64, Marker>,
    /// The highest seq a chunk has covered: a write of this replica's own above it never left it.
    pub(super) shipped: std::sync::atomic::AtomicU64,
}

/// A superseded dot: the key its write was for, and the dot of the register that superseded it.
pub(super) struct Marker {
    pub(super) key: Arc<str>,
    pub(super) by: Origin,
    pub(super) by_seq: u64,
}

/// A key and its registers, in one allocation.
pub(super) struct Record {
    pub(super) key: Arc<str>,
    pub(super) entry: Entry,
}

/// The key -> entry table. Records sit behind one pointer per slot, so the table's slots stay small: a
/// table at half load (as after each doubling) costs its slots twice over.
///
/// A paged scan walks the slots in order, so it must hear of every record that moves: `reshaped`
/// counts the inserts that found the table full, each of which grows or rehashes it and moves records
/// anywhere (a scan then starts over); `moved` logs the last `MOVES_KEPT` records a rewrite (a remove
/// then an insert of the same key, as every write is applied) put in another slot, numbered by `moves`,
/// so a scan that had passed the new slot but not the old one visits the key all the same.
#[derive(Default)]
pub(super) struct Entries {
    pub(super) table: hashbrown::HashTable<Box<Record>>,
    pub(super) hasher: crate::hash::DefaultHashBuilder,
    pub(super) reshaped: u64,
    pub(super) moves: u64,
    pub(super) moved: std::collections::VecDeque<Moved>,
    /// The hash and slot of the record removed last, until the next insert.
    removed_at: Option<(u64, usize)>,
}

/// A record a rewrite put in another slot: the `n`th move.
pub(super) struct Moved {
    pub(super) n: u64,
    pub(super) from: usize,
    pub(super) to: usize,
    pub(super) key: Arc<str>,
}

/// How many moves are logged: a scan whose next page comes after more moves than this starts over.
pub(super) const MOVES_KEPT: usize = 4096;

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
        self.table
            .find(hash, |r| &*r.key == key)
            .map(|r| (&r.key, &r.entry))
    }

    /// The record whose key hashes to `hash` and holds register `(origin, seq)`.
    pub(super) fn by_dot(
        &self,
        hash: u64,
        origin: &Origin,
        seq: u64,
    ) -> Option<(&Arc<str>, &Entry)> {
        self.table
            .find(hash, |r| r.entry.write_for(&r.key, origin, seq).is_some())
            .map(|r| (&r.key, &r.entry))
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<Box<Record>> {
        self.remove_hashed(self.hash(key), key)
    }

    /// `remove` with the key's hash already computed.
    pub(super) fn remove_hashed(&mut self, hash: u64, key: &str) -> Option<Box<Record>> {
        let entry = self.table.find_entry(hash, |r| &*r.key == key).ok()?;
        self.removed_at = Some((hash, entry.bucket_index()));
        Some(entry.remove().0)
    }

    /// Adds a record whose key is not in the table.
    pub(super) fn insert(&mut self, record: Box<Record>) {
        self.insert_hashed(self.hash(&record.key), record)
    }

    /// `insert` with the key's hash already computed.
    pub(super) fn insert_hashed(&mut self, hash: u64, record: Box<Record>) {
        // `capacity` is the records held plus the room left before the table must grow or rehash.
        if self.table.len() == self.table.capacity() {
            self.reshaped += 1;
        }
        let hasher = &self.hasher;
        let entry = self.table.insert_unique(hash, record, |r| {
            use std::hash::BuildHasher;
            hasher.hash_one(&*r.key)
        });
        let to = entry.bucket_index();
        if let Some((removed_hash, from)) = self.removed_at.take() {
            // The same hash: the key removed last, put back (another key of that hash only costs a
            // scan a second visit of it).
            if removed_hash == hash && from != to {
                let key = entry.get().key.clone();
                self.moves += 1;
                if self.moved.len() == MOVES_KEPT {
                    self.moved.pop_front();
                }
                self.moved.push_back(Moved {
                    n: self.moves,
                    from,
                    to,
                    key,
                });
            }
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Entry)> {
        self.table.iter().map(|r| (&r.key, &r.entry))
    }

    /// Visits the records in slots `from..` until `f` returns false or `max_slots` slots were looked
    /// at; returns the first slot not looked at, `None` past the last one.
    pub(super) fn walk_slots(
        &self,
        from: usize,
        max_slots: usize,
        f: &mut dyn FnMut(&Arc<str>, &Entry) -> bool,
    ) -> Option<usize> {
        let end = self.table.num_buckets();
        let stop = from.saturating_add(max_slots).min(end);
        for slot in from..stop {
            if let Some(r) = self.table.get_bucket(slot) {
                if !f(&r.key, &r.entry) {
                    return Some(slot + 1).filter(|&s| s < end);
                }
            }
        }
        (stop < end).then_some(stop)
    }

    pub(super) fn len(&self) -> usize {
        self.table.len()
    }
}
