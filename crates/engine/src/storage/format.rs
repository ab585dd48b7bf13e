//! The on-disk form of a data directory: redb's tables, the changes a flush writes into them (also
//! what a log record holds), and their encoding.
//!
//! Invariant: a `BucketChanges` holds whole values (the entry of a key, the whole context of an
//! origin), never deltas, so applying a sequence of them in order, or their merge by `absorb`, leaves
//! the same tables; this is what lets a failed flush be retried with later changes folded in.

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::replication::clock::Hlc;
use crate::replication::ranges::{Seq, SeqRanges};
use crate::replication::replica::{ReplicaId, ReplicaTable};
use crate::replication::store::{Entry, Expiry, TouchRegister};

pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// (bucket, key) -> entry
pub(super) const ENTRIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("entries");
/// (bucket, replica) -> context
pub(super) const CONTEXTS: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("contexts");
/// (bucket, replica, seq) -> key of a superseded write
pub(super) const MARKERS: TableDefinition<(&str, &[u8], u64), &str> =
    TableDefinition::new("markers");
/// bucket -> collected vector
pub(super) const COLLECTED: TableDefinition<&str, &[u8]> = TableDefinition::new("collected");
/// (bucket, key fingerprint) -> (hlc, stamp) of the newest collected register of those keys
pub(super) const COLLECTED_KEYS: TableDefinition<(&str, u64), (u64, u64)> =
    TableDefinition::new("collected_keys");
/// (bucket, key fingerprint) -> origin of that register (format 3; a record without one, written by
/// format 2, stands above every origin of its time)
pub(super) const COLLECTED_ORIGINS: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("collected_origins");
/// bucket -> the newest time among forgotten collected registers
pub(super) const COLLECTED_BEYOND: TableDefinition<&str, u64> =
    TableDefinition::new("collected_beyond");

/// The data format written. 2: string values stored as themselves, collected keys, the log. 3: the
/// origin of each collected key (`COLLECTED_ORIGINS`, and in log records). A directory of format 1
/// or 2 opens as it is (its log records are read in their own layout, `LegacyBucketChanges`) and is
/// marked 3; its collected keys keep no origin until collected again.
pub(super) const FORMAT: &[u8] = b"peer-buckets/3";
pub(super) const FORMATS_READ: [&[u8]; 3] = [b"peer-buckets/1", b"peer-buckets/2", FORMAT];
/// Formats whose log records lack the collected keys' origins.
pub(super) const FORMATS_LEGACY_LOG: [&[u8]; 2] = [b"peer-buckets/1", b"peer-buckets/2"];

#[derive(Serialize, Deserialize)]
pub(super) struct DiskTouch {
    pub(super) expires_ms: u64,
    pub(super) hlc: u64,
    pub(super) origin: ReplicaId,
    pub(super) seq: Seq,
}

#[derive(Serialize, Deserialize)]
pub(super) struct DiskEntry {
    #[serde(with = "serde_bytes")]
    pub(super) value: Option<Box<[u8]>>,
    pub(super) hlc: u64,
    pub(super) origin: ReplicaId,
    pub(super) seq: Seq,
    pub(super) expires_ms: u64,
    pub(super) touch: Option<DiskTouch>,
}

impl DiskEntry {
    /// An entry as the disk keeps it (an expiry of never as 0).
    pub(super) fn of(e: Entry) -> DiskEntry {
        DiskEntry {
            value: e.value,
            hlc: e.hlc.0,
            origin: e.origin.id().clone(),
            seq: e.seq,
            expires_ms: e.expires.encoded(),
            touch: e.touch.map(|t| DiskTouch {
                expires_ms: t.expires.encoded(),
                hlc: t.hlc.0,
                origin: t.origin.id().clone(),
                seq: t.seq,
            }),
        }
    }

    /// The entry stored, its origins interned in `replicas`.
    pub(super) fn into_entry(self, replicas: &ReplicaTable) -> Entry {
        Entry {
            value: self.value,
            hlc: Hlc(self.hlc),
            origin: replicas.intern(&self.origin),
            seq: self.seq,
            expires: Expiry::at_ms(self.expires_ms),
            touch: self.touch.map(|t| {
                Box::new(TouchRegister {
                    expires: Expiry::at_ms(t.expires_ms),
                    hlc: Hlc(t.hlc),
                    origin: replicas.intern(&t.origin),
                    seq: t.seq,
                })
            }),
        }
    }
}

/// A remembered collected register: its time, the stamp it was collected under, its origin.
#[derive(Serialize, Deserialize)]
pub(super) struct DiskCollected {
    hlc: u64,
    at_ms: u64,
    origin: Option<ReplicaId>,
}

/// What changed in one bucket, in the on-disk form: what a flush writes into redb, and what a log
/// record holds.
#[derive(Serialize, Deserialize, Default)]
pub(super) struct BucketChanges {
    name: String,
    entries: Vec<(String, Option<DiskEntry>)>,
    contexts: Vec<(ReplicaId, SeqRanges)>,
    markers: Vec<(ReplicaId, Seq, Option<String>)>,
    collected_keys: Vec<(u64, Option<DiskCollected>)>,
    collected_beyond: Option<u64>,
    /// The whole collected vector (empty: unchanged).
    collected: Vec<(ReplicaId, SeqRanges)>,
}

/// `BucketChanges` as a log record of format 2 holds them (collected keys without their origin).
#[derive(Deserialize)]
pub(super) struct LegacyBucketChanges {
    name: String,
    entries: Vec<(String, Option<DiskEntry>)>,
    contexts: Vec<(ReplicaId, SeqRanges)>,
    markers: Vec<(ReplicaId, Seq, Option<String>)>,
    collected_keys: Vec<(u64, Option<(u64, u64)>)>,
    collected_beyond: Option<u64>,
    collected: Vec<(ReplicaId, SeqRanges)>,
}

impl From<LegacyBucketChanges> for BucketChanges {
    fn from(c: LegacyBucketChanges) -> Self {
        BucketChanges {
            name: c.name,
            entries: c.entries,
            contexts: c.contexts,
            markers: c.markers,
            collected_keys: c
                .collected_keys
                .into_iter()
                .map(|(f, r)| {
                    let r = r.map(|(hlc, at_ms)| DiskCollected {
                        hlc,
                        at_ms,
                        origin: None,
                    });
                    (f, r)
                })
                .collect(),
            collected_beyond: c.collected_beyond,
            collected: c.collected,
        }
    }
}

impl BucketChanges {
    pub(super) fn of(
        bucket: &crate::replication::bucket::Bucket,
        c: crate::replication::store::Changes,
    ) -> Self {
        BucketChanges {
            name: bucket.name().to_string(),
            entries: c
                .entries
                .into_iter()
                .map(|(k, e)| (k.to_string(), e.map(DiskEntry::of)))
                .collect(),
            contexts: c
                .contexts
                .into_iter()
                .map(|(o, r)| (o.id().clone(), r))
                .collect(),
            markers: c
                .markers
                .into_iter()
                .map(|(o, seq, k)| (o.id().clone(), seq, k.map(|k| k.to_string())))
                .collect(),
            collected_keys: c
                .collected
                .into_iter()
                .map(|(f, r)| {
                    let r = r.map(|r| DiskCollected {
                        hlc: r.hlc.0,
                        at_ms: r.at_ms,
                        origin: r.origin.map(|o| o.id().clone()),
                    });
                    (f, r)
                })
                .collect(),
            collected_beyond: c.collected_beyond.map(|h| h.0),
            collected: bucket
                .collected()
                .into_iter()
                .map(|(o, r)| (o.id().clone(), r))
                .collect(),
        }
    }

    /// Folds `later` (changes of the same bucket made after these) into these: what a sequence of the
    /// two would leave in the tables, in the space of one.
    fn absorb(&mut self, later: BucketChanges) {
        let keys: std::collections::HashSet<&String> =
            later.entries.iter().map(|(k, _)| k).collect();
        self.entries.retain(|(k, _)| !keys.contains(k));
        let origins: std::collections::HashSet<&ReplicaId> =
            later.contexts.iter().map(|(o, _)| o).collect();
        self.contexts.retain(|(o, _)| !origins.contains(o));
        let markers: std::collections::HashSet<(&ReplicaId, Seq)> =
            later.markers.iter().map(|(o, s, _)| (o, *s)).collect();
        self.markers.retain(|(o, s, _)| !markers.contains(&(o, *s)));
        let collected: std::collections::HashSet<u64> =
            later.collected_keys.iter().map(|(f, _)| *f).collect();
        self.collected_keys.retain(|(f, _)| !collected.contains(f));
        self.entries.extend(later.entries);
        self.contexts.extend(later.contexts);
        self.markers.extend(later.markers);
        self.collected_keys.extend(later.collected_keys);
        if later.collected_beyond.is_some() {
            self.collected_beyond = later.collected_beyond;
        }
        if !later.collected.is_empty() {
            self.collected = later.collected;
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.contexts.is_empty()
            && self.markers.is_empty()
            && self.collected_keys.is_empty()
            && self.collected_beyond.is_none()
    }
}

/// Folds `later` into `owed` bucket by bucket (see `BucketChanges::absorb`).
pub(super) fn absorb(owed: &mut Vec<BucketChanges>, later: Vec<BucketChanges>) {
    for c in later {
        match owed.iter_mut().find(|o| o.name == c.name) {
            Some(o) => o.absorb(c),
            None => owed.push(c),
        }
    }
}

/// Writes `changes` into the tables of `tx`, in order (a later change to a key wins).
pub(super) fn write_changes(
    tx: &redb::WriteTransaction,
    changes: &[BucketChanges],
) -> Result<(), Error> {
    let mut entries = tx.open_table(ENTRIES).map_err(storage)?;
    let mut contexts = tx.open_table(CONTEXTS).map_err(storage)?;
    let mut markers = tx.open_table(MARKERS).map_err(storage)?;
    let mut collected = tx.open_table(COLLECTED).map_err(storage)?;
    let mut collected_keys = tx.open_table(COLLECTED_KEYS).map_err(storage)?;
    let mut collected_origins = tx.open_table(COLLECTED_ORIGINS).map_err(storage)?;
    let mut collected_beyond = tx.open_table(COLLECTED_BEYOND).map_err(storage)?;
    for c in changes {
        let name: &str = &c.name;
        for (key, entry) in &c.entries {
            match entry {
                Some(d) => {
                    entries
                        .insert((name, key.as_str()), encode(d).as_slice())
                        .map_err(storage)?;
                }
                None => {
                    entries.remove((name, key.as_str())).map_err(storage)?;
                }
            }
        }
        for (rid, ctx) in &c.contexts {
            let rid = encode(rid);
            contexts
                .insert((name, rid.as_slice()), encode(ctx).as_slice())
                .map_err(storage)?;
        }
        for (rid, seq, key) in &c.markers {
            let rid = encode(rid);
            match key {
                Some(k) => {
                    markers
                        .insert((name, rid.as_slice(), seq.get()), k.as_str())
                        .map_err(storage)?;
                }
                None => {
                    markers
                        .remove((name, rid.as_slice(), seq.get()))
                        .map_err(storage)?;
                }
            }
        }
        for (fingerprint, record) in &c.collected_keys {
            match record {
                Some(r) => {
                    collected_keys
                        .insert((name, *fingerprint), (r.hlc, r.at_ms))
                        .map_err(storage)?;
                    match &r.origin {
                        Some(o) => collected_origins
                            .insert((name, *fingerprint), encode(o).as_slice())
                            .map(drop),
                        None => collected_origins.remove((name, *fingerprint)).map(drop),
                    }
                    .map_err(storage)?;
                }
                None => {
                    collected_keys
                        .remove((name, *fingerprint))
                        .map_err(storage)?;
                    collected_origins
                        .remove((name, *fingerprint))
                        .map_err(storage)?;
                }
            }
        }
        if let Some(beyond) = c.collected_beyond {
            collected_beyond.insert(name, beyond).map_err(storage)?;
        }
        if !c.collected.is_empty() {
            collected
                .insert(name, encode(&c.collected).as_slice())
                .map_err(storage)?;
        }
    }
    Ok(())
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

pub(super) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, config()).expect("in-memory encoding cannot fail")
}

pub(super) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, Error> {
    bincode::serde::decode_from_slice(bytes, config())
        .map(|(v, _)| v)
        .map_err(|e| Error::Storage(format!("corrupt {what}: {e}")))
}

pub(super) fn storage<E: std::fmt::Display>(e: E) -> Error {
    Error::Storage(e.to_string())
}
