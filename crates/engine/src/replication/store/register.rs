//! A key's registers and the order that decides between writes.
//!
//! `Write` is one register write as it travels and is stored; `Entry` is what a replica keeps per key:
//! the value register (a value with its expiry, or a tombstone) and, only while it is newer than the
//! value register, a touch register carrying a later expiry. `beats` is the last-writer-wins order,
//! `(hlc, origin)` compared as a pair, the same on every replica; nothing else decides a winner.
//! `key_fingerprint` is stable across processes and versions, because collected registers are
//! persisted by it; so is `Entry::print`, because replicas compare the sums of theirs (anti-entropy on
//! what is stored: `Entries::print`).

use crate::replication::clock::Hlc;
use crate::replication::ranges::Seq;
use crate::replication::replica::Origin;
use std::num::NonZeroU64;
use std::sync::Arc;

/// A register write as the store applies it and hands it out; the origin goes beside it. The wire
/// carries it as `wire::WireWrite`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub key: Arc<str>,
    pub hlc: Hlc,
    pub seq: Seq,
    pub op: Op,
}

/// What a write does to its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A value (encoded, see the `value` module) that expires at `expires`.
    Set { value: Box<[u8]>, expires: Expiry },
    /// A tombstone.
    Delete,
    /// A later expiry for the value stored: writes only the key's touch register.
    Touch { expires: Expiry },
}

impl Write {
    /// The value a set writes (`None` for a delete or a touch).
    pub fn value(&self) -> Option<&[u8]> {
        match &self.op {
            Op::Set { value, .. } => Some(value),
            Op::Delete | Op::Touch { .. } => None,
        }
    }

    /// Whether the write is a touch (it writes the touch register, not the value register).
    pub fn is_touch(&self) -> bool {
        matches!(self.op, Op::Touch { .. })
    }

    /// Whether the write is a set (a value register holding a value).
    pub fn is_set(&self) -> bool {
        matches!(self.op, Op::Set { .. })
    }

    /// The expiry a set or a touch writes; never for a delete.
    pub fn expires(&self) -> Expiry {
        match self.op {
            Op::Set { expires, .. } | Op::Touch { expires } => expires,
            Op::Delete => Expiry::NEVER,
        }
    }

    /// Moves a set's value out (into the store), leaving an empty one in its place; `None` for a
    /// delete or a touch.
    pub(super) fn take_value(&mut self) -> Option<Box<[u8]>> {
        match &mut self.op {
            Op::Set { value, .. } => Some(std::mem::take(value)),
            Op::Delete | Op::Touch { .. } => None,
        }
    }

    /// The bytes the write's key and value take (what sizing a batch or a reply counts).
    pub fn payload_len(&self) -> usize {
        self.key.len() + self.value().map_or(0, <[u8]>::len)
    }
}

/// When a value stops being live: an absolute time in physical milliseconds since the epoch, or
/// never. As small as a `u64` (a time is never zero); the disk and the hashes write never as 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Expiry(Option<NonZeroU64>);

impl Expiry {
    pub const NEVER: Expiry = Expiry(None);

    /// At `ms`, physical milliseconds since the epoch (0, the epoch itself, reads as never: the
    /// encoding the disk and the stable hashes use).
    pub fn at_ms(ms: u64) -> Expiry {
        Expiry(NonZeroU64::new(ms))
    }

    /// The time, if the value expires at all.
    pub fn ms(self) -> Option<u64> {
        self.0.map(NonZeroU64::get)
    }

    /// The time as the disk and the stable hashes encode it: 0 for never.
    pub fn encoded(self) -> u64 {
        self.ms().unwrap_or(0)
    }

    /// Whether the value is dead at `now_ms` (its expiry is at or before it).
    pub fn passed(self, now_ms: u64) -> bool {
        self.ms().is_some_and(|e| e <= now_ms)
    }

    /// Whether the value is still live after `ms` (it never expires, or expires later).
    pub fn lasts_past(self, ms: u64) -> bool {
        self.ms().is_none_or(|e| e > ms)
    }
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
    pub expires: Expiry,
    pub hlc: Hlc,
    pub origin: Origin,
    pub seq: Seq,
}

/// The registers stored for a key.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The value register: a value, or `None` for a tombstone (or, with `seq == Seq::ZERO`, no value
    /// register yet: a touch that arrived before the write it touched).
    pub value: Option<Box<[u8]>>,
    pub hlc: Hlc,
    pub origin: Origin,
    pub seq: Seq,
    /// Expiry written with the value (never for a tombstone).
    pub expires: Expiry,
    pub touch: Option<Box<TouchRegister>>,
}

impl Entry {
    /// The expiry in force: the touch register's when there is one (it is newer), else the value's.
    pub fn expiry(&self) -> Expiry {
        self.touch.as_ref().map_or(self.expires, |t| t.expires)
    }

    pub(super) fn expired_at(&self, now_ms: u64) -> bool {
        self.expiry().passed(now_ms)
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
    pub(super) fn death_ms(&self, now_ms: u64) -> Option<u64> {
        if self.value.is_none() {
            let touched = self.touch.as_ref().map_or(Hlc(0), |t| t.hlc);
            return Some(self.hlc.max(touched).physical_ms());
        }
        self.expiry().ms().filter(|&e| e <= now_ms)
    }

    pub(super) fn value_write(&self, key: &Arc<str>) -> Option<Write> {
        (self.seq > Seq::ZERO).then(|| Write {
            key: key.clone(),
            hlc: self.hlc,
            seq: self.seq,
            op: match &self.value {
                Some(value) => Op::Set {
                    value: value.clone(),
                    expires: self.expires,
                },
                None => Op::Delete,
            },
        })
    }

    pub(super) fn touch_write(&self, key: &Arc<str>) -> Option<(Origin, Write)> {
        self.touch.as_ref().map(|t| {
            (
                t.origin.clone(),
                Write {
                    key: key.clone(),
                    hlc: t.hlc,
                    seq: t.seq,
                    op: Op::Touch { expires: t.expires },
                },
            )
        })
    }

    /// The registers as writes of their origins.
    pub(super) fn writes(&self, key: &Arc<str>) -> impl Iterator<Item = (Origin, Write)> {
        let value = self.value_write(key).map(|w| (self.origin.clone(), w));
        value.into_iter().chain(self.touch_write(key))
    }

    /// A fingerprint of the registers stored for `key`: the sum of a stable 64-bit hash of each
    /// (its origin, seq, timestamp, kind, value and expiry, with the key). Two replicas that store the
    /// same registers have the same sum of their entries' prints, in any order they stored them.
    pub fn print(&self, key: &str) -> u64 {
        let mut sum = 0u64;
        if self.seq > Seq::ZERO {
            let mut h = StableHash::register(key, &self.origin, self.seq, self.hlc);
            match &self.value {
                Some(v) => {
                    h.word(1);
                    h.bytes(v);
                }
                None => h.word(2),
            }
            h.word(self.expires.encoded());
            sum = sum.wrapping_add(h.finish());
        }
        if let Some(t) = &self.touch {
            let mut h = StableHash::register(key, &t.origin, t.seq, t.hlc);
            h.word(3);
            h.word(t.expires.encoded());
            sum = sum.wrapping_add(h.finish());
        }
        sum
    }

    /// The register of `origin` with dot `seq`, as a write.
    pub(super) fn write_for(&self, key: &Arc<str>, origin: &Origin, seq: Seq) -> Option<Write> {
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

/// A stable 64-bit fingerprint of a key (FNV-1a), the same in every process and version, so the
/// collected registers remembered by it can be persisted.
pub fn key_fingerprint(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A 64-bit hash the same in every process and version (a word at a time, then a final mix), for
/// `Entry::print`. Not keyed: it tells honest replicas apart, it does not resist a forger choosing
/// contents to collide (writes are not signed: a member can forge content anyway).
struct StableHash(u64);

impl StableHash {
    fn register(key: &str, origin: &Origin, seq: Seq, hlc: Hlc) -> StableHash {
        let mut h = StableHash(0x243f_6a88_85a3_08d3);
        h.bytes(key.as_bytes());
        h.bytes(origin.node().as_bytes());
        h.word(origin.id().incarnation);
        h.word(seq.get());
        h.word(hlc.0);
        h
    }

    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }

    fn bytes(&mut self, b: &[u8]) {
        let mut words = b.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let mut last = [0u8; 8];
        last[..words.remainder().len()].copy_from_slice(words.remainder());
        self.word(u64::from_le_bytes(last));
        self.word(b.len() as u64);
    }

    /// splitmix64's finalizer: every bit of the state moves every bit of the result.
    fn finish(self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
