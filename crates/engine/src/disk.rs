//! The durable backend: buckets kept in memory (journaled `MemoryStore`s, so reads stay memory reads)
//! and persisted in one redb database per data directory by a flusher thread.
//!
//! - **What is on disk:** the node id and incarnation, and per bucket every entry (both registers with
//!   their hlc and dot), the context of every origin, the superseded markers, the collected vector and
//!   the collected registers remembered by key (`store::CollectedKeys`).
//!   The per-origin index, counters and expiry queues are derived again at load.
//! - **Group commit.** Every change is journaled under the store's lock; the flusher drains the journals
//!   of all buckets in one transaction and commits it. A write in strict mode waits for the flush
//!   generation that was current after it was journaled, so one fsync serves every write waiting then.
//!   In relaxed mode the flusher commits once per interval and writes do not wait.
//! - **Incarnations.** A clean `close()` writes a marker last; the next start keeps the incarnation. After
//!   a crash a fresh one is drawn, since writes sent to peers may be missing from the disk and reusing
//!   their sequence numbers would make peers ignore new writes.
//! - **Exclusive use.** A lock file held for the node's life makes a second process opening the same
//!   directory fail with a clear error.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::clock::Hlc;
use crate::error::Error;
use crate::ranges::SeqRanges;
use crate::replica::ReplicaId;
use crate::store::{CollectedRecord, Entry, MemoryStore, TouchRegister};
use crate::sync::Local;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// (bucket, key) -> entry
const ENTRIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("entries");
/// (bucket, replica) -> context
const CONTEXTS: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("contexts");
/// (bucket, replica, seq) -> key of a superseded write
const MARKERS: TableDefinition<(&str, &[u8], u64), &str> = TableDefinition::new("markers");
/// bucket -> collected vector
const COLLECTED: TableDefinition<&str, &[u8]> = TableDefinition::new("collected");
/// (bucket, key fingerprint) -> (hlc, stamp) of the newest collected register of those keys
const COLLECTED_KEYS: TableDefinition<(&str, u64), (u64, u64)> =
    TableDefinition::new("collected_keys");
/// bucket -> the newest time among forgotten collected registers
const COLLECTED_BEYOND: TableDefinition<&str, u64> = TableDefinition::new("collected_beyond");

const FORMAT: &[u8] = b"peer-buckets/1";

/// How writes are made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// A write settles only once it is on disk (fsync), amortised by group commit.
    Strict,
    /// Writes settle at once; the flusher commits every `interval`.
    Relaxed,
}

#[derive(Serialize, Deserialize)]
struct DiskTouch {
    expires_ms: u64,
    hlc: u64,
    origin: ReplicaId,
    seq: u64,
}

#[derive(Serialize, Deserialize)]
struct DiskEntry {
    #[serde(with = "serde_bytes")]
    value: Option<Box<[u8]>>,
    hlc: u64,
    origin: ReplicaId,
    seq: u64,
    expires_ms: u64,
    touch: Option<DiskTouch>,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, config()).expect("in-memory encoding cannot fail")
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, Error> {
    bincode::serde::decode_from_slice(bytes, config())
        .map(|(v, _)| v)
        .map_err(|e| Error::Storage(format!("corrupt {what}: {e}")))
}

fn storage<E: std::fmt::Display>(e: E) -> Error {
    Error::Storage(e.to_string())
}

/// What the data directory held at start.
pub struct Opened {
    pub disk: Disk,
    pub node_id: String,
    pub incarnation: u64,
}

/// The open database of a data directory.
pub struct Disk {
    db: Arc<Database>,
    dir: PathBuf,
    _lock: File,
}

impl Disk {
    /// Opens (or creates) the data directory. `requested_id` must match the stored id when there is
    /// one. `fresh_incarnation` is used unless the last run closed cleanly.
    pub fn open(
        dir: &Path,
        requested_id: Option<&str>,
        fresh_incarnation: u64,
    ) -> Result<Opened, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let lock = File::create(dir.join("LOCK")).map_err(storage)?;
        if lock.try_lock().is_err() {
            return Err(Error::DataDirInUse(dir.display().to_string()));
        }
        let db = Database::create(dir.join("peer-buckets.redb")).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                Error::DataDirInUse(dir.display().to_string())
            }
            other => storage(other),
        })?;
        let (stored_id, stored_incarnation, clean) = {
            let tx = db.begin_read().map_err(storage)?;
            match tx.open_table(META) {
                Ok(meta) => {
                    let get = |k: &str| -> Result<Option<Vec<u8>>, Error> {
                        Ok(meta.get(k).map_err(storage)?.map(|v| v.value().to_vec()))
                    };
                    if let Some(format) = get("format")? {
                        if format != FORMAT {
                            return Err(Error::Storage(format!(
                                "{} holds data of another format ({})",
                                dir.display(),
                                String::from_utf8_lossy(&format)
                            )));
                        }
                    }
                    let id = get("node_id")?.map(|v| String::from_utf8_lossy(&v).into_owned());
                    let incarnation = get("incarnation")?
                        .and_then(|v| v.try_into().ok())
                        .map(u64::from_be_bytes);
                    let clean = get("clean")?.is_some_and(|v| v == [1]);
                    (id, incarnation, clean)
                }
                Err(redb::TableError::TableDoesNotExist(_)) => (None, None, false),
                Err(e) => return Err(storage(e)),
            }
        };
        let node_id = match (stored_id, requested_id) {
            (Some(stored), Some(asked)) if stored != asked => {
                return Err(Error::Storage(format!(
                    "{} belongs to node '{stored}', not '{asked}'",
                    dir.display()
                )))
            }
            (Some(stored), _) => stored,
            (None, Some(asked)) => asked.to_string(),
            (None, None) => format!("peer-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
        };
        let incarnation = match (clean, stored_incarnation) {
            (true, Some(i)) => i,
            _ => fresh_incarnation,
        };
        // From now on a crash must not be taken for a clean stop.
        let tx = db.begin_write().map_err(storage)?;
        {
            let mut meta = tx.open_table(META).map_err(storage)?;
            meta.insert("format", FORMAT).map_err(storage)?;
            meta.insert("node_id", node_id.as_bytes())
                .map_err(storage)?;
            meta.insert("incarnation", incarnation.to_be_bytes().as_slice())
                .map_err(storage)?;
            meta.insert("clean", [0u8].as_slice()).map_err(storage)?;
        }
        tx.commit().map_err(storage)?;
        Ok(Opened {
            disk: Disk {
                db: Arc::new(db),
                dir: dir.to_path_buf(),
                _lock: lock,
            },
            node_id,
            incarnation,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads every bucket into `local` as journaled memory stores.
    pub fn load(&self, local: &Local) -> Result<usize, Error> {
        let tx = self.db.begin_read().map_err(storage)?;
        let replicas = &local.replicas;
        let mut per_bucket: std::collections::BTreeMap<String, Parts> = Default::default();
        if let Ok(t) = tx.open_table(ENTRIES) {
            for item in t.iter().map_err(storage)? {
                let (k, v) = item.map_err(storage)?;
                let (bucket, key) = k.value();
                let d: DiskEntry = decode(v.value(), "entry")?;
                let entry = Entry {
                    value: d.value,
                    hlc: Hlc(d.hlc),
                    origin: replicas.intern(&d.origin),
                    seq: d.seq,
                    expires_ms: d.expires_ms,
                    touch: d.touch.map(|t| {
                        Box::new(TouchRegister {
                            expires_ms: t.expires_ms,
                            hlc: Hlc(t.hlc),
                            origin: replicas.intern(&t.origin),
                            seq: t.seq,
                        })
                    }),
                };
                per_bucket
                    .entry(bucket.to_string())
                    .or_default()
                    .entries
                    .push((key.into(), entry));
            }
        }
        if let Ok(t) = tx.open_table(CONTEXTS) {
            for item in t.iter().map_err(storage)? {
                let (k, v) = item.map_err(storage)?;
                let (bucket, rid) = k.value();
                let rid: ReplicaId = decode(rid, "replica id")?;
                let ctx: SeqRanges = decode(v.value(), "context")?;
                per_bucket
                    .entry(bucket.to_string())
                    .or_default()
                    .contexts
                    .push((replicas.intern(&rid), ctx));
            }
        }
        if let Ok(t) = tx.open_table(MARKERS) {
            for item in t.iter().map_err(storage)? {
                let (k, v) = item.map_err(storage)?;
                let (bucket, rid, seq) = k.value();
                let rid: ReplicaId = decode(rid, "replica id")?;
                per_bucket
                    .entry(bucket.to_string())
                    .or_default()
                    .markers
                    .push((replicas.intern(&rid), seq, v.value().into()));
            }
        }
        if let Ok(t) = tx.open_table(COLLECTED) {
            for item in t.iter().map_err(storage)? {
                let (k, v) = item.map_err(storage)?;
                let collected: Vec<(ReplicaId, SeqRanges)> = decode(v.value(), "collected vector")?;
                per_bucket
                    .entry(k.value().to_string())
                    .or_default()
                    .collected = collected;
            }
        }
        if let Ok(t) = tx.open_table(COLLECTED_KEYS) {
            for item in t.iter().map_err(storage)? {
                let (k, v) = item.map_err(storage)?;
                let (bucket, fingerprint) = k.value();
                let (hlc, at_ms) = v.value();
                per_bucket
                    .entry(bucket.to_string())
                    .or_default()
                    .collected_keys
                    .push(CollectedRecord {
                        fingerprint,
                        hlc: Hlc(hlc),
                        at_ms,
                    });
            }
        }
        if let Ok(t) = tx.open_table(COLLECTED_BEYOND) {
            for item in t.iter().map_err(storage)? {
                let (k, v) = item.map_err(storage)?;
                per_bucket
                    .entry(k.value().to_string())
                    .or_default()
                    .collected_beyond = Hlc(v.value());
            }
        }
        let count = per_bucket.len();
        // Later local writes must order after everything stored, whatever the wall clock says now (it
        // may be behind what was stamped before: a peer's clock ahead pushed ours, or time went back).
        // The times of collected registers count too: a write stamped below one would meet a stand-in
        // tombstone on the other replicas.
        let newest = per_bucket
            .values()
            .flat_map(|p| {
                let stored = p.entries.iter().flat_map(|(_, e)| {
                    std::iter::once(e.hlc).chain(e.touch.as_ref().map(|t| t.hlc))
                });
                let collected = p.collected_keys.iter().map(|r| r.hlc);
                stored
                    .chain(collected)
                    .chain(std::iter::once(p.collected_beyond))
            })
            .max();
        if let Some(hlc) = newest {
            local.clock.observe(hlc);
        }
        for (name, parts) in per_bucket {
            let store = MemoryStore::restore(
                parts.entries,
                parts.contexts,
                parts.markers,
                parts.collected_keys,
                parts.collected_beyond,
                true,
            );
            let bucket = local.install_bucket(&name, Box::new(store));
            let collected = parts
                .collected
                .into_iter()
                .map(|(rid, r)| (replicas.intern(&rid), r))
                .collect();
            bucket.note_collected(&collected);
        }
        Ok(count)
    }

    /// Writes what changed in every bucket of `local` in one transaction. Returns whether anything was
    /// written.
    fn flush(&self, local: &Local) -> Result<bool, Error> {
        let buckets = local.bucket_list();
        let changes: Vec<_> = buckets
            .iter()
            .filter_map(|b| b.store().drain_changes().map(|c| (b, c)))
            .collect();
        if changes.iter().all(|(_, c)| c.is_empty()) {
            return Ok(false);
        }
        let tx = self.db.begin_write().map_err(storage)?;
        {
            let mut entries = tx.open_table(ENTRIES).map_err(storage)?;
            let mut contexts = tx.open_table(CONTEXTS).map_err(storage)?;
            let mut markers = tx.open_table(MARKERS).map_err(storage)?;
            let mut collected = tx.open_table(COLLECTED).map_err(storage)?;
            let mut collected_keys = tx.open_table(COLLECTED_KEYS).map_err(storage)?;
            let mut collected_beyond = tx.open_table(COLLECTED_BEYOND).map_err(storage)?;
            for (bucket, c) in &changes {
                let name: &str = bucket.name();
                for (key, entry) in &c.entries {
                    match entry {
                        Some(e) => {
                            let d = DiskEntry {
                                value: e.value.clone(),
                                hlc: e.hlc.0,
                                origin: e.origin.id().clone(),
                                seq: e.seq,
                                expires_ms: e.expires_ms,
                                touch: e.touch.as_ref().map(|t| DiskTouch {
                                    expires_ms: t.expires_ms,
                                    hlc: t.hlc.0,
                                    origin: t.origin.id().clone(),
                                    seq: t.seq,
                                }),
                            };
                            entries
                                .insert((name, &**key), encode(&d).as_slice())
                                .map_err(storage)?;
                        }
                        None => {
                            entries.remove((name, &**key)).map_err(storage)?;
                        }
                    }
                }
                for (origin, ctx) in &c.contexts {
                    let rid = encode(origin.id());
                    contexts
                        .insert((name, rid.as_slice()), encode(ctx).as_slice())
                        .map_err(storage)?;
                }
                for (origin, seq, key) in &c.markers {
                    let rid = encode(origin.id());
                    match key {
                        Some(k) => {
                            markers
                                .insert((name, rid.as_slice(), *seq), &**k)
                                .map_err(storage)?;
                        }
                        None => {
                            markers
                                .remove((name, rid.as_slice(), *seq))
                                .map_err(storage)?;
                        }
                    }
                }
                for (fingerprint, record) in &c.collected {
                    match record {
                        Some(r) => {
                            collected_keys
                                .insert((name, *fingerprint), (r.hlc.0, r.at_ms))
                                .map_err(storage)?;
                        }
                        None => {
                            collected_keys
                                .remove((name, *fingerprint))
                                .map_err(storage)?;
                        }
                    }
                }
                if let Some(beyond) = c.collected_beyond {
                    collected_beyond.insert(name, beyond.0).map_err(storage)?;
                }
                let vector: Vec<(ReplicaId, SeqRanges)> = bucket
                    .collected()
                    .into_iter()
                    .map(|(o, r)| (o.id().clone(), r))
                    .collect();
                if !vector.is_empty() {
                    collected
                        .insert(name, encode(&vector).as_slice())
                        .map_err(storage)?;
                }
            }
        }
        tx.commit().map_err(storage)?;
        Ok(true)
    }

    /// Marks the stop as clean (written last, after a final flush).
    fn mark_clean(&self) -> Result<(), Error> {
        let tx = self.db.begin_write().map_err(storage)?;
        {
            let mut meta = tx.open_table(META).map_err(storage)?;
            meta.insert("clean", [1u8].as_slice()).map_err(storage)?;
        }
        tx.commit().map_err(storage)
    }
}

#[derive(Default)]
struct Parts {
    entries: Vec<(Arc<str>, Entry)>,
    contexts: Vec<(crate::replica::Origin, SeqRanges)>,
    markers: Vec<(crate::replica::Origin, u64, Arc<str>)>,
    collected: Vec<(ReplicaId, SeqRanges)>,
    collected_keys: Vec<CollectedRecord>,
    collected_beyond: Hlc,
}

/// The flusher thread and the doorbell that wakes it.
pub struct Flusher {
    doorbell: Sender<()>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Starts flushing `local`'s buckets to `disk`. In strict mode a ring flushes at once; in relaxed
    /// mode the flusher commits every `interval`.
    pub fn start(
        disk: Disk,
        local: Arc<Local>,
        durability: Durability,
        interval: Duration,
    ) -> (Flusher, Sender<()>) {
        let (doorbell, rung): (Sender<()>, Receiver<()>) = crossbeam_channel::bounded(1);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("peer-buckets-flush".into())
            .spawn(move || {
                let strict = durability == Durability::Strict;
                loop {
                    let wait = if strict {
                        Duration::from_millis(200)
                    } else {
                        interval
                    };
                    let rang = rung.recv_timeout(wait).is_ok();
                    let stopping = stopping.load(Ordering::Acquire);
                    if !strict && rang && !stopping {
                        // Relaxed: a ring only says there is work; the interval sets the pace.
                        std::thread::sleep(interval);
                    }
                    // Writes that read a generation up to `gen` were journaled before this drain.
                    let gen = local.acks.next_flush_generation();
                    match disk.flush(&local) {
                        Ok(_) => local.acks.on_flushed(gen),
                        Err(e) => {
                            tracing::error!(error = %e, dir = %disk.dir().display(), "flush failed")
                        }
                    }
                    if stopping {
                        if let Err(e) = disk.mark_clean() {
                            tracing::error!(error = %e, "cannot record the clean stop");
                        }
                        break;
                    }
                }
            })
            .expect("spawn the flusher thread");
        (
            Flusher {
                doorbell: doorbell.clone(),
                stop,
                thread: Some(thread),
            },
            doorbell,
        )
    }

    /// Flushes what is left, records the clean stop and joins the thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.doorbell.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}
