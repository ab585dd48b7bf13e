//! Collected registers remembered by key, so that an old write arriving after its key's tombstone was
//! collected still loses (see `CollectedKeys`).
//!
//! Invariant: a stand-in tombstone made here never beats a write newer, by `(hlc, origin)`, than the
//! collected register it stands for.

use super::{beats, key_fingerprint, Write};
use crate::replication::clock::Hlc;
use crate::replication::replica::Origin;
use std::collections::VecDeque;

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
pub(super) struct CollectedKeys {
    /// fingerprint -> (newest collected register, stamp).
    pub(super) by_key: ByFingerprint<(Collected, u64)>,
    /// (stamp, fingerprint) in collection order, to forget the oldest first.
    pub(super) order: VecDeque<(u64, u64)>,
    /// The newest time among forgotten records.
    pub(super) beyond: Hlc,
    /// The newest time of all (remembered or forgotten): writes newer than it need no lookup.
    pub(super) newest: Hlc,
}

/// Shards of `ByFingerprint`: a power of two, chosen by a fingerprint's top bits.
const SHARDS: usize = 64;

/// A map from key fingerprints, in `SHARDS` hash maps chosen by the fingerprint's top bits. A hash
/// map grows by moving everything it holds at once: one map of the keys a collection remembers moved
/// 900,000 of them in one step, 80-100 ms under the store's lock; a shard moves a 64th of them.
pub(super) struct ByFingerprint<V> {
    shards: Box<[crate::hash::HashMap<u64, V>]>,
}

impl<V> Default for ByFingerprint<V> {
    fn default() -> Self {
        ByFingerprint {
            shards: (0..SHARDS).map(|_| Default::default()).collect(),
        }
    }
}

impl<V> ByFingerprint<V> {
    fn shard(fingerprint: u64) -> usize {
        (fingerprint >> (64 - SHARDS.trailing_zeros())) as usize
    }

    pub(super) fn get(&self, fingerprint: &u64) -> Option<&V> {
        self.shards[Self::shard(*fingerprint)].get(fingerprint)
    }

    pub(super) fn entry(
        &mut self,
        fingerprint: u64,
    ) -> hashbrown::hash_map::Entry<'_, u64, V, crate::hash::DefaultHashBuilder> {
        self.shards[Self::shard(fingerprint)].entry(fingerprint)
    }

    pub(super) fn remove(&mut self, fingerprint: &u64) -> Option<V> {
        self.shards[Self::shard(*fingerprint)].remove(fingerprint)
    }

    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&u64, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }
}

/// A collected register's place in the last-writer-wins order. A record restored without its origin
/// (persisted by format 2, which kept only the time) stands above every origin of its time: a write
/// stamped alike then meets a stand-in whichever origin it has.
#[derive(Clone, Debug)]
pub(super) struct Collected {
    pub(super) hlc: Hlc,
    pub(super) origin: Option<Origin>,
}

impl Collected {
    pub(super) fn place(&self) -> (Hlc, bool, Option<&Origin>) {
        (self.hlc, self.origin.is_none(), self.origin.as_ref())
    }

    /// Whether this register beats a write at `(hlc, origin)`.
    pub(super) fn beats(&self, hlc: Hlc, origin: &Origin) -> bool {
        self.place() > (hlc, false, Some(origin))
    }

    /// The time of a stand-in of `me` for a write at `(hlc, origin)` this register beats.
    pub(super) fn stand_in_for(&self, hlc: Hlc, origin: &Origin, me: &Origin) -> Hlc {
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
pub(super) fn just_above(hlc: Hlc, origin: &Origin, me: &Origin) -> Hlc {
    if me > origin {
        hlc
    } else {
        Hlc(hlc.0.saturating_add(1))
    }
}

impl CollectedKeys {
    pub(super) fn remember(&mut self, fingerprint: u64, register: Collected, at_ms: u64) {
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
    pub(super) fn forget(&mut self, before_ms: u64, dropped: &mut Vec<u64>) {
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

    /// Whether `w` of `origin`, a tombstone or a touch, is dead under a collected register of its key
    /// that beats it or is it: it can neither show nor expire anything (an older value comes back to
    /// a stand-in, a newer one beats it too), so it is covered and not stored, as it was collected
    /// with that register (storing it would leave a register older than a covered one).
    pub(super) fn settles(&self, w: &Write, origin: &Origin) -> bool {
        if w.is_set() || w.hlc > self.newest {
            return false;
        }
        self.by_key
            .get(&key_fingerprint(&w.key))
            .is_some_and(|(register, _)| register.place() >= (w.hlc, false, Some(origin)))
    }

    /// The time of a stand-in of `me` for a value write `w` of `origin` that is new here, given the
    /// key's current value register `(hlc, origin, is a tombstone)`: `Some` when a collected register
    /// of the key (or, without a record and without a live register, a forgotten one) beats `w` and
    /// `w` would otherwise win.
    pub(super) fn stand_in_time(
        &self,
        w: &Write,
        origin: &Origin,
        current: Option<(Hlc, &Origin, bool)>,
        me: &Origin,
    ) -> Option<Hlc> {
        if !w.is_set() {
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
                self.may_be_forgotten(w.hlc, no_live_register)
                    .then(|| just_above(w.hlc, origin, me))
            }
        }
    }

    /// Whether a value stamped `hlc`, for a key of which no record is remembered here, may be one
    /// whose delete was collected and forgotten: it is no newer than the collections forgotten, and
    /// the key has no live register (`beyond` stands for such keys only).
    pub(super) fn may_be_forgotten(&self, hlc: Hlc, no_live_register: bool) -> bool {
        no_live_register && self.beyond > Hlc(0) && hlc <= self.beyond
    }
}
