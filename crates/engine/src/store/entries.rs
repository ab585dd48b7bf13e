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
/// `reshaped` counts the inserts that found the table full, each of which grows or rehashes it and so
/// moves records to other slots: a scan cursor (a slot) is good only while it is unchanged.
#[derive(Default)]
pub(super) struct Entries {
    pub(super) table: hashbrown::HashTable<Box<Record>>,
    pub(super) hasher: crate::hash::DefaultHashBuilder,
    pub(super) reshaped: u64,
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
        self.table
            .find_entry(hash, |r| &*r.key == key)
            .ok()
            .map(|e| e.remove().0)
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
        self.table.insert_unique(hash, record, |r| {
            use std::hash::BuildHasher;
            hasher.hash_one(&*r.key)
        });
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
