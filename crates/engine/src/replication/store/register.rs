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
use std::sync::Arc;

/// A register write as the store applies it and hands it out; the origin goes beside it. The wire
/// carries it as `wire::WireWrite`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub key: Arc<str>,
    pub hlc: Hlc,
    pub seq: Seq,
    /// Encoded value (see `value` module), or `None` for a delete (or a touch).
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

    pub(super) fn expired_at(&self, now_ms: u64) -> bool {
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
    pub(super) fn death_ms(&self, now_ms: u64) -> Option<u64> {
        if self.value.is_none() {
            let touched = self.touch.as_ref().map_or(Hlc(0), |t| t.hlc);
            return Some(self.hlc.max(touched).physical_ms());
        }
        self.expired_at(now_ms).then(|| self.expiry())
    }

    pub(super) fn value_write(&self, key: &Arc<str>) -> Option<Write> {
        (self.seq > Seq::ZERO).then(|| Write {
            key: key.clone(),
            hlc: self.hlc,
            seq: self.seq,
            value: self.value.clone(),
            expires_ms: self.expires_ms,
            touch: false,
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
                    value: None,
                    expires_ms: t.expires_ms,
                    touch: true,
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
            h.word(self.expires_ms);
            sum = sum.wrapping_add(h.finish());
        }
        if let Some(t) = &self.touch {
            let mut h = StableHash::register(key, &t.origin, t.seq, t.hlc);
            h.word(3);
            h.word(t.expires_ms);
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
