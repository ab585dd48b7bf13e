//! The registers a counter's hidden bucket shows, by counter key, so that reading one counter key
//! costs its own registers, whatever the number of keys in the counter (a prefix scan of the bucket
//! walked its whole key table).
//!
//! The index is the bucket's `KeyWatch`: the bucket tells it, under the store's lock and in order,
//! of every key that starts or stops showing a value (local writes, merges, expiries, dropped
//! registers, stand-in tombstones), and it is filled by one scan when it is set, after which every
//! change reaches it. Invariants:
//! - **Exact.** Once the bucket is swept to now, the index holds exactly the register keys the
//!   bucket shows a value for. Between sweeps it may also hold registers whose window ended since,
//!   which a read of the store hides, so a state read through it equals one from a scan. Collection
//!   drops only dead registers, which the index never holds.
//! - **One state.** `changes` moves in every store section that changed what a register shows, so
//!   a reader that finds it unchanged across its reads of a key's registers read them from one
//!   state of the store, as a scan under one lock did.
//!
//! Memory: a counter key holding one register costs one table slot (the key's 64-bit hash and the
//! register key's handle, 32 bytes, at the table's load of 7/16 to 7/8); each further register 16
//! bytes more (and one allocation for the list). Register keys are the store's own handles, except
//! after a restart, where the fill allocates each until the register is next written.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::split_key;
use crate::hash::{DefaultHashBuilder, HashMap};
use crate::replication::bucket::{Bucket, KeyWatch};

/// The live register keys of one counter key (or of several whose hashes collide: a reader picks
/// its own by the key each register names).
enum Registers {
    One(Arc<str>),
    Many(Box<[Arc<str>]>),
}

impl Registers {
    fn as_slice(&self) -> &[Arc<str>] {
        match self {
            Registers::One(r) => std::slice::from_ref(r),
            Registers::Many(rs) => rs,
        }
    }

    /// Adds `register`, or takes its handle in place of the one held (the store's newest).
    fn add(&mut self, register: &Arc<str>) {
        match self {
            Registers::One(held) if *held == *register => *held = register.clone(),
            Registers::Many(all) if all.contains(register) => {
                for held in all.iter_mut().filter(|r| **r == *register) {
                    *held = register.clone();
                }
            }
            _ => {
                let mut all = self.as_slice().to_vec();
                all.push(register.clone());
                *self = Registers::Many(all.into_boxed_slice());
            }
        }
    }

    /// Removes `register`; `None` when none is left.
    fn without(self, register: &str) -> Option<Registers> {
        let mut all = self.as_slice().to_vec();
        all.retain(|r| **r != *register);
        match all.len() {
            0 => None,
            1 => all.pop().map(Registers::One),
            _ => Some(Registers::Many(all.into_boxed_slice())),
        }
    }
}

/// The index of one counter bucket (see the module comment); shared by every `Counter` on it.
#[derive(Default)]
pub struct Index {
    /// By the hash of the counter key.
    slots: Mutex<HashMap<u64, Registers>>,
    hasher: DefaultHashBuilder,
    /// Store sections that changed a register's shown value, so far.
    changes: AtomicU64,
    filled: OnceLock<()>,
}

impl KeyWatch for Index {
    fn shown(&self, key: &Arc<str>, live: bool) {
        let Some((counter_key, _)) = split_key(key) else {
            return;
        };
        let hash = self.hash(counter_key);
        {
            let mut slots = self.slots.lock();
            if live {
                slots
                    .entry(hash)
                    .and_modify(|rs| rs.add(key))
                    .or_insert_with(|| Registers::One(key.clone()));
            } else if let Some(left) = slots.remove(&hash).and_then(|rs| rs.without(key)) {
                slots.insert(hash, left);
            }
        }
        // After the slot, still under the store's lock: a reader whose first count already includes
        // this change also found the slot changed; counted first, a reader could take the old slot,
        // then read the store once this section released it, and find the count unchanged.
        self.changes.fetch_add(1, Ordering::Release);
    }
}

impl Index {
    /// The index of `bucket`, set and filled on first use.
    pub fn of(bucket: &Bucket) -> Arc<Index> {
        let index = bucket
            .watch(Index::default)
            .expect("a counter bucket is watched by its index alone");
        // Set before the scan: a change made during it reaches the index as well, after the scan's
        // view of the key or instead of it (the store's lock orders them), never lost between.
        index.filled.get_or_init(|| {
            bucket.scan("", &mut |key, _| index.shown(&Arc::from(key), true));
        });
        index
    }

    fn hash(&self, counter_key: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(counter_key)
    }

    /// Calls `read` with each register key held for `counter_key`, until the store did not change a
    /// register while they were read (see the module's invariants); `reset` starts the reader over.
    pub fn read(&self, counter_key: &str, reset: &mut dyn FnMut(), read: &mut dyn FnMut(&str)) {
        let hash = self.hash(counter_key);
        loop {
            let before = self.changes.load(Ordering::Acquire);
            // Copied out: the store is read without the index's lock (the store's lock comes first).
            let registers: Vec<Arc<str>> = self
                .slots
                .lock()
                .get(&hash)
                .map(|rs| rs.as_slice().to_vec())
                .unwrap_or_default();
            for r in &registers {
                if split_key(r).is_some_and(|(k, _)| k == counter_key) {
                    read(r);
                }
            }
            if self.changes.load(Ordering::Acquire) == before {
                return;
            }
            reset();
        }
    }

    /// Every register key held, sorted; for checks against a scan.
    #[cfg(any(test, feature = "sim"))]
    pub fn all(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .slots
            .lock()
            .values()
            .flat_map(|rs| rs.as_slice().iter().map(|r| r.to_string()))
            .collect();
        all.sort();
        all
    }
}

#[cfg(test)]
mod tests {
    /// The memory figure the module comment and the README give per counter key.
    #[test]
    fn a_counter_key_with_one_register_costs_a_32_byte_slot() {
        assert_eq!(std::mem::size_of::<(u64, super::Registers)>(), 32);
    }
}
