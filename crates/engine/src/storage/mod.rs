//! The durable backend: buckets kept in memory (journaled `MemoryStore`s, so reads stay memory reads)
//! and persisted in one redb database per data directory by a flusher (`flusher`), through a
//! file-system seam (`fs`: the real disk, or the simulated `sim::SimDisk`).
//!
//! - **What is on disk:** the node id and incarnation, and per bucket every entry (both registers with
//!   their hlc and dot), the context of every origin, the superseded markers, the collected vector and
//!   the collected registers remembered by key with their time and origin (`store::CollectedKeys`).
//!   The per-origin index, counters and expiry queues are derived again at load.
//! - **Group commit.** Every change is journaled under the store's lock; the flusher drains the journals
//!   of all buckets at once. A write in strict mode waits for the flush generation that was current
//!   after it was journaled, so one fsync serves every write waiting then. In relaxed mode the flusher
//!   commits once per interval and writes do not wait.
//! - **Write-ahead log (strict mode, `wal`).** A strict flush appends what changed as one checksummed
//!   record and fdatasyncs it (a few hundred bytes, where a redb commit writes several pages); the
//!   records are checkpointed into redb about once a second, or sooner past 8 MB. Opening a directory
//!   replays into redb the records newer than the last checkpoint.
//! - **A failed write claims nothing.** What a flush drained and could not store (a write or sync
//!   failed: EIO, ENOSPC, a read-only file) stays owed, merged with later changes, and the next flush
//!   writes it again in full; nothing counts as flushed until a sync of it succeeded. So the disk never
//!   holds a context that covers writes it lacks (a restart pulls them again from peers), strict writes
//!   waiting on a failed flush end with a disk error instead of settling, and a stop with anything
//!   owed is not marked clean (the next start draws a new incarnation). After a redb error the database
//!   is reopened before its next use (redb refuses every call after one).
//! - **Incarnations.** A clean `close()` writes a marker last; the next start keeps the incarnation. After
//!   a crash a fresh one is drawn, since writes sent to peers may be missing from the disk and reusing
//!   their sequence numbers would make peers ignore new writes.
//! - **Exclusive use.** A lock file held for the node's life makes a second process opening the same
//!   directory fail with a clear error.
//! - **Files whole, names durable.** A new database is made under a temporary name and renamed once
//!   redb has written and synced it (`fs::create_whole`; the node's key file too), so a start that
//!   fails midway leaves nothing a later start refuses. Every start syncs the directory before it
//!   stores anything: the start that made the database or the log may have failed at that sync,
//!   and a crash would undo a name that is not durable, with everything stored under it.

mod flusher;
mod format;
pub mod fs;
pub mod sim;
mod wal;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable};

use crate::error::Error;
use crate::protocol::sync::Local;
use crate::replication::clock::Hlc;
use crate::replication::ranges::{Seq, SeqRanges};
use crate::replication::replica::ReplicaId;
use crate::replication::store::{CollectedRecord, Entry, MemoryStore};
pub use flusher::Flusher;
use format::{
    absorb, decode, storage, write_changes, BucketChanges, DiskEntry, COLLECTED, COLLECTED_BEYOND,
    COLLECTED_KEYS, COLLECTED_ORIGINS, CONTEXTS, ENTRIES, FORMAT, FORMATS_LEGACY_LOG, FORMATS_READ,
    MARKERS, META,
};
use fs::{DirLock, FileSystem};
use wal::Wal;

/// The redb file's name in the data directory.
const DB_FILE: &str = "peer-buckets.redb";

/// How writes are made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// A write settles only once it is on disk (fsync), amortised by group commit.
    Strict,
    /// Writes settle at once; the flusher commits every `interval`.
    Relaxed,
}

/// What the data directory held at start.
pub struct Opened {
    pub disk: Disk,
    pub node_id: String,
    pub incarnation: u64,
}

/// The open database of a data directory.
pub struct Disk {
    fs: Arc<dyn FileSystem>,
    /// `None` after a redb error, until reopened.
    db: Option<Database>,
    dir: PathBuf,
    _lock: Box<dyn DirLock>,
    wal: Wal,
    /// Drained from the stores and not stored yet (a flush failed), oldest first.
    owed: Vec<BucketChanges>,
}

/// Opens the directory's database; a new one is made whole under a temporary name first
/// (`fs::create_whole`), so a start that fails while redb lays out its file leaves nothing that a
/// later start takes for a damaged database.
fn open_database(fs: &dyn FileSystem, dir: &Path) -> Result<Database, Error> {
    let path = dir.join(DB_FILE);
    let builder = redb::Builder::new();
    let open = || -> Result<Database, redb::DatabaseError> {
        if !fs.exists(&path)? {
            // redb syncs the file it creates (its magic number last); the database is closed
            // before the file takes its name.
            fs::create_whole(fs, dir, DB_FILE, |making| {
                fs.database(&builder, making).map(drop)
            })?;
        }
        fs.database(&builder, &path)
    };
    open().map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::DataDirInUse(dir.display().to_string()),
        other => storage(other),
    })
}

impl Disk {
    /// Opens (or creates) the data directory. `requested_id` must match the stored id when there is
    /// one. `fresh_incarnation` is used unless the last run closed cleanly.
    #[cfg(test)]
    pub fn open(
        dir: &Path,
        requested_id: Option<&str>,
        fresh_incarnation: u64,
    ) -> Result<Opened, Error> {
        Self::open_with(Arc::new(fs::RealFs), dir, requested_id, fresh_incarnation)
    }

    /// `open` on the file system `fs` (a `SimDisk` in simulations).
    pub fn open_with(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        requested_id: Option<&str>,
        fresh_incarnation: u64,
    ) -> Result<Opened, Error> {
        fs.create_dir_all(dir)
            .map_err(|e| Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let lock = fs
            .lock(&dir.join("LOCK"))
            .map_err(storage)?
            .ok_or_else(|| Error::DataDirInUse(dir.display().to_string()))?;
        let db = open_database(&*fs, dir)?;
        let (stored_id, stored_incarnation, clean, legacy_log) = {
            let tx = db.begin_read().map_err(storage)?;
            match tx.open_table(META) {
                Ok(meta) => {
                    let get = |k: &str| -> Result<Option<Vec<u8>>, Error> {
                        Ok(meta.get(k).map_err(storage)?.map(|v| v.value().to_vec()))
                    };
                    let format = get("format")?;
                    if let Some(format) = &format {
                        if !FORMATS_READ.contains(&format.as_slice()) {
                            return Err(Error::Storage(format!(
                                "{} holds data of another format ({})",
                                dir.display(),
                                String::from_utf8_lossy(format)
                            )));
                        }
                    }
                    let legacy_log = format
                        .as_deref()
                        .is_some_and(|f| FORMATS_LEGACY_LOG.contains(&f));
                    let id = get("node_id")?.map(|v| String::from_utf8_lossy(&v).into_owned());
                    let incarnation = get("incarnation")?
                        .and_then(|v| v.try_into().ok())
                        .map(u64::from_be_bytes);
                    let clean = get("clean")?.is_some_and(|v| v == [1]);
                    (id, incarnation, clean, legacy_log)
                }
                Err(redb::TableError::TableDoesNotExist(_)) => (None, None, false, false),
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
        let wal = Self::recover(&*fs, &db, dir, legacy_log)?;
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
                fs,
                db: Some(db),
                dir: dir.to_path_buf(),
                _lock: lock,
                wal,
                owed: Vec::new(),
            },
            node_id,
            incarnation,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database, reopened first if an error closed it.
    fn db(&mut self) -> Result<&Database, Error> {
        if self.db.is_none() {
            self.db = Some(open_database(&*self.fs, &self.dir)?);
        }
        Ok(self.db.as_ref().expect("just opened"))
    }

    /// Runs `write` in one redb transaction and commits it; any error closes the database, to be
    /// reopened by the next call.
    fn commit(
        &mut self,
        write: impl FnOnce(&redb::WriteTransaction) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let done = self.db().and_then(|db| {
            let tx = db.begin_write().map_err(storage)?;
            write(&tx)?;
            tx.commit().map_err(storage)
        });
        if done.is_err() {
            self.db = None;
        }
        done
    }

    /// Replays into redb the log records newer than its last checkpoint and opens the log. A log of
    /// format 2 (`legacy`) is ended once replayed: later records are written in the current layout.
    fn recover(fs: &dyn FileSystem, db: &Database, dir: &Path, legacy: bool) -> Result<Wal, Error> {
        let checkpointed = {
            let tx = db.begin_read().map_err(storage)?;
            match tx.open_table(META) {
                Ok(meta) => meta
                    .get("wal_seq")
                    .map_err(storage)?
                    .and_then(|v| v.value().try_into().ok())
                    .map_or(0, u64::from_be_bytes),
                Err(_) => 0,
            }
        };
        let (mut wal, records) = Wal::open(fs, dir, checkpointed, legacy)?;
        // The names of the database, the log and the node's key are durable before anything is
        // stored under them (the replay below, the writes after) or the key is used: the start that
        // made one may have failed at its directory sync, leaving a name a crash undoes, with
        // everything stored since. One directory sync per start, here.
        fs.sync_dir(dir)
            .map_err(|e| Error::Storage(format!("cannot sync {}: {e}", dir.display())))?;
        if let Some(last) = records.last().map(|r| r.seq) {
            let changes: Vec<BucketChanges> = records.into_iter().flat_map(|r| r.buckets).collect();
            let tx = db.begin_write().map_err(storage)?;
            write_changes(&tx, &changes)?;
            {
                let mut meta = tx.open_table(META).map_err(storage)?;
                meta.insert("wal_seq", last.to_be_bytes().as_slice())
                    .map_err(storage)?;
            }
            tx.commit().map_err(storage)?;
        }
        if legacy {
            wal.clear()?;
        }
        Ok(wal)
    }

    /// Drains what changed in every bucket of `local` into what is owed; returns whether anything is.
    fn take_changes(&mut self, local: &Local) -> bool {
        let drained: Vec<BucketChanges> = local
            .bucket_list()
            .iter()
            .filter_map(|b| {
                let c = b.store().drain_changes()?;
                let changes = BucketChanges::of(b, c);
                (!changes.is_empty()).then_some(changes)
            })
            .collect();
        absorb(&mut self.owed, drained);
        !self.owed.is_empty()
    }

    /// Appends what changed (and what is owed) as one log record and waits for the disk; returns
    /// whether anything was written. On failure it all stays owed.
    fn log(&mut self, local: &Local) -> Result<bool, Error> {
        if !self.take_changes(local) {
            return Ok(false);
        }
        self.wal.append(&self.owed)?;
        let owed = std::mem::take(&mut self.owed);
        self.wal.pending.extend(owed);
        Ok(true)
    }

    /// Writes what changed (and what is owed) into redb in one transaction; returns whether anything
    /// was written. On failure it all stays owed.
    fn flush(&mut self, local: &Local) -> Result<bool, Error> {
        if !self.take_changes(local) {
            return Ok(false);
        }
        let owed = std::mem::take(&mut self.owed);
        let done = self.commit(|tx| write_changes(tx, &owed));
        match done {
            Ok(()) => Ok(true),
            Err(e) => {
                self.owed = owed;
                Err(e)
            }
        }
    }

    /// Writes the logged records into redb and empties the log, when due (or `now`). On failure the
    /// log keeps them (they are durable there) and the next checkpoint tries again.
    fn checkpoint(&mut self, now: bool) -> Result<(), Error> {
        if self.wal.pending.is_empty() || !(now || self.wal.due()) {
            return Ok(());
        }
        let last = self.wal.next_seq - 1;
        let pending = std::mem::take(&mut self.wal.pending);
        let done = self.commit(|tx| {
            write_changes(tx, &pending)?;
            let mut meta = tx.open_table(META).map_err(storage)?;
            meta.insert("wal_seq", last.to_be_bytes().as_slice())
                .map_err(storage)?;
            Ok(())
        });
        self.wal.pending = pending;
        done?;
        self.wal.checkpointed();
        Ok(())
    }

    /// Loads every bucket into `local` as journaled memory stores.
    pub fn load(&mut self, local: &Local) -> Result<usize, Error> {
        let tx = self.db()?.begin_read().map_err(storage)?;
        let replicas = &local.replicas;
        let mut per_bucket: std::collections::BTreeMap<String, Parts> = Default::default();
        if let Ok(t) = tx.open_table(ENTRIES) {
            for item in t.iter().map_err(storage)? {
                let (k, v) = item.map_err(storage)?;
                let (bucket, key) = k.value();
                let d: DiskEntry = decode(v.value(), "entry")?;
                let entry = d.into_entry(replicas);
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
                    .push((replicas.intern(&rid), Seq::from(seq), v.value().into()));
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
            let origins = tx.open_table(COLLECTED_ORIGINS).ok();
            for item in t.iter().map_err(storage)? {
                let (k, v) = item.map_err(storage)?;
                let (bucket, fingerprint) = k.value();
                let (hlc, at_ms) = v.value();
                let origin = match &origins {
                    Some(origins) => match origins.get((bucket, fingerprint)).map_err(storage)? {
                        Some(o) => {
                            let rid: ReplicaId = decode(o.value(), "replica id")?;
                            Some(replicas.intern(&rid))
                        }
                        None => None,
                    },
                    None => None,
                };
                per_bucket
                    .entry(bucket.to_string())
                    .or_default()
                    .collected_keys
                    .push(CollectedRecord {
                        fingerprint,
                        hlc: Hlc(hlc),
                        origin,
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
            local.clock.resume(hlc);
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

    /// Marks the stop as clean (written last, after a final flush). Refused while anything is owed:
    /// the next start must then draw a new incarnation, since its own writes that never reached the
    /// disk may have reached peers under sequence numbers it would otherwise reuse.
    fn mark_clean(&mut self) -> Result<(), Error> {
        if !self.owed.is_empty() {
            return Err(Error::Storage(
                "writes are still owed to the disk; the stop is not clean".into(),
            ));
        }
        self.commit(|tx| {
            let mut meta = tx.open_table(META).map_err(storage)?;
            meta.insert("clean", [1u8].as_slice()).map_err(storage)?;
            Ok(())
        })
    }
}

#[derive(Default)]
struct Parts {
    entries: Vec<(Arc<str>, Entry)>,
    contexts: Vec<(crate::replication::replica::Origin, SeqRanges)>,
    markers: Vec<(crate::replication::replica::Origin, Seq, Arc<str>)>,
    collected: Vec<(ReplicaId, SeqRanges)>,
    collected_keys: Vec<CollectedRecord>,
    collected_beyond: Hlc,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::replication::clock::Clock;
    use crate::replication::store::Lifetime;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "peer-buckets-wal-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn local(id: &str, incarnation: u64) -> Local {
        let mut local = Local::new(id.into(), incarnation, Arc::new(Clock::default()), 60_000);
        local.durable = true;
        local
    }

    /// The seeds a sweep test runs: `a-b` from the environment variable `var`, else `default`.
    fn seeds_from_env(var: &str, default: (u64, u64)) -> (u64, u64) {
        std::env::var(var)
            .ok()
            .and_then(|r| {
                let (a, b) = r.split_once('-')?;
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .unwrap_or(default)
    }

    /// Starts the directory `dir` of `disk` through a mount whose directory syncs fail as `script`
    /// says (`DirSyncFails`).
    fn start_scripted(
        disk: &sim::SimDisk,
        dir: &Path,
        script: &[bool],
        incarnation: u64,
    ) -> Result<Opened, Error> {
        Disk::open_with(
            Arc::new(DirSyncFails::new(disk.mount(), script)),
            dir,
            Some("n"),
            incarnation,
        )
    }

    /// Writes `k` on `opened`, which must report it stored (logged, as a strict write settles, when
    /// `logged`; else committed to redb).
    fn store_k(opened: &mut Opened, logged: bool) {
        let l = local("n", opened.incarnation);
        opened.disk.load(&l).unwrap();
        l.bucket("s").write(
            "k",
            Some(crate::replication::value::encode_json("1")),
            Lifetime::Forever,
        );
        let stored = match logged {
            true => opened.disk.log(&l),
            false => opened.disk.flush(&l),
        };
        assert!(stored.unwrap(), "the write is reported stored");
    }

    /// Whether the directory, as `opened`, holds `k`.
    fn holds_k(mut opened: Opened) -> bool {
        let l = local("n", opened.incarnation);
        opened.disk.load(&l).unwrap();
        value_of(&l, "k").is_some()
    }

    fn value_of(local: &Local, key: &str) -> Option<Vec<u8>> {
        let mut out = None;
        local.bucket("s").read(key, &mut |v| out = Some(v.to_vec()));
        out
    }

    fn wal_seq(dir: &Path) -> u64 {
        let db = Database::open(dir.join("peer-buckets.redb")).unwrap();
        let tx = db.begin_read().unwrap();
        let meta = tx.open_table(META).unwrap();
        let v = meta.get("wal_seq").unwrap().unwrap();
        u64::from_be_bytes(v.value().try_into().unwrap())
    }

    /// A directory written by format 1 opens as it is, and is marked format 3; another format is refused.
    #[test]
    fn a_format_1_directory_opens_and_an_unknown_format_is_refused() {
        let dir = temp_dir("format");
        let set_format = |f: &[u8]| {
            let db = Database::open(dir.join("peer-buckets.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META).unwrap().insert("format", f).unwrap();
            tx.commit().unwrap();
        };
        drop(Disk::open(&dir, Some("n"), 1).unwrap());
        set_format(b"peer-buckets/1");
        drop(Disk::open(&dir, Some("n"), 1).unwrap());
        {
            let db = Database::open(dir.join("peer-buckets.redb")).unwrap();
            let tx = db.begin_read().unwrap();
            let meta = tx.open_table(META).unwrap();
            assert_eq!(meta.get("format").unwrap().unwrap().value(), FORMAT);
        }
        set_format(b"peer-buckets/9");
        let err = Disk::open(&dir, Some("n"), 1).err().expect("refused");
        assert!(err.to_string().contains("another format"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A format-2 directory whose log still holds a record (a crash before its checkpoint) opens: the
    /// record is read in format 2's layout (a collected key without its origin) and replayed, the log
    /// is ended, and records written after the upgrade replay in the new layout.
    #[test]
    fn a_format_2_log_replays_and_later_records_use_the_new_layout() {
        let dir = temp_dir("format2");
        drop(Disk::open(&dir, Some("n"), 1).unwrap());
        let fingerprint = crate::replication::store::key_fingerprint("gone");
        // A format-2 record: (seq, [(name, entries, contexts, markers, collected_keys,
        // collected_beyond, collected)]); empty lists encode alike whatever they hold.
        let payload = format::encode(&(
            1u64,
            vec![(
                "s".to_string(),
                Vec::<()>::new(),
                Vec::<()>::new(),
                Vec::<()>::new(),
                vec![(fingerprint, Some((77u64, 1_000u64)))],
                None::<u64>,
                Vec::<()>::new(),
            )],
        ));
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&wal::wal_check(&payload));
        frame.extend_from_slice(&payload);
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("wal"))
                .unwrap();
            f.write_all_at(&frame, 0).unwrap();
            let db = Database::open(dir.join("peer-buckets.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("format", b"peer-buckets/2".as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        {
            let mut opened = Disk::open(&dir, Some("n"), 2).unwrap();
            let l = local("n", 2);
            opened.disk.load(&l).unwrap();
            assert_eq!(l.bucket("s").store().collected_remembered(), 1);
            l.bucket("s").write(
                "k",
                Some(crate::replication::value::encode_json("1")),
                Lifetime::Forever,
            );
            assert!(opened.disk.log(&l).unwrap());
            // A crash: no checkpoint, no clean stop.
        }
        assert_eq!(wal_seq(&dir), 1, "the format-2 record is in redb");
        let mut opened = Disk::open(&dir, Some("n"), 3).unwrap();
        let l = local("n", 3);
        opened.disk.load(&l).unwrap();
        assert_eq!(l.bucket("s").store().collected_remembered(), 1);
        assert!(
            value_of(&l, "k").is_some(),
            "the record logged after the upgrade"
        );
        drop(opened);
        assert_eq!(wal_seq(&dir), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// What a strict flush logged is back after a crash (no checkpoint, no clean stop), and a torn
    /// record at the end of the log is where the log ends.
    #[test]
    fn logged_writes_survive_a_crash_and_a_torn_tail_is_ignored() {
        let dir = temp_dir("crash");
        {
            let opened = Disk::open(&dir, Some("n"), 1).unwrap();
            let mut disk = opened.disk;
            let l = local("n", 1);
            let b = l.bucket("s");
            for i in 0..100 {
                b.write(
                    format!("k{i}"),
                    Some(crate::replication::value::encode_json("1")),
                    Lifetime::Forever,
                );
            }
            assert!(disk.log(&l).unwrap());
            b.write("k7", None, Lifetime::Forever);
            b.write(
                "late",
                Some(crate::replication::value::encode_json("2")),
                Lifetime::Forever,
            );
            assert!(disk.log(&l).unwrap());
            assert!(!disk.log(&l).unwrap(), "nothing new to log");
            // The process dies while writing a third record: only part of it reached the file.
            disk.wal
                .file
                .write_at(disk.wal.offset, &[200, 0, 0, 0, 1, 2, 3])
                .unwrap();
        }
        let mut opened = Disk::open(&dir, Some("n"), 2).unwrap();
        assert_eq!(opened.incarnation, 2, "a crash draws a new incarnation");
        let l = local("n", 2);
        opened.disk.load(&l).unwrap();
        assert_eq!(
            l.bucket("s").len(),
            100,
            "99 of the first record, plus 'late'"
        );
        assert_eq!(value_of(&l, "k7"), None, "the delete of the second record");
        assert!(value_of(&l, "late").is_some());
        drop(opened);
        assert_eq!(wal_seq(&dir), 2, "both records are in redb");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A checkpoint moves the records into redb and starts the log over; the records it covered are
    /// not replayed again (not even those still in the file after newer ones), later ones are.
    #[test]
    fn a_checkpoint_starts_the_log_over_and_later_records_still_replay() {
        let dir = temp_dir("checkpoint");
        {
            let mut disk = Disk::open(&dir, Some("n"), 1).unwrap().disk;
            let l = local("n", 1);
            let b = l.bucket("s");
            b.write(
                "a",
                Some(crate::replication::value::encode_json("1")),
                Lifetime::Forever,
            );
            disk.log(&l).unwrap();
            b.write(
                "old",
                Some(crate::replication::value::encode_json("1")),
                Lifetime::Forever,
            );
            disk.log(&l).unwrap();
            disk.checkpoint(true).unwrap();
            assert_eq!(disk.wal.offset, 0);
            // One record of the same size as the first: the second old one follows it in the file.
            b.write(
                "a",
                Some(crate::replication::value::encode_json("2")),
                Lifetime::Forever,
            );
            disk.log(&l).unwrap();
            b.write("old", None, Lifetime::Forever);
            // (not logged: lost in the crash, as an unacknowledged write may be)
        }
        let mut opened = Disk::open(&dir, Some("n"), 2).unwrap();
        let l = local("n", 2);
        opened.disk.load(&l).unwrap();
        assert_eq!(
            value_of(&l, "a"),
            Some(crate::replication::value::encode_json("2").to_vec())
        );
        assert!(value_of(&l, "old").is_some());
        drop(opened);
        assert_eq!(wal_seq(&dir), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A stop with writes still owed to the disk (a flush failed and was not retried successfully)
    /// is not marked clean, so the next start draws a new incarnation instead of reusing the sequence
    /// numbers of own writes that may have reached peers.
    #[test]
    fn a_stop_with_writes_owed_is_not_marked_clean() {
        use sim::{FaultKind, Faults, SimDisk};
        let disk = SimDisk::new(1);
        let dir = Path::new("/sim/owed");
        let mut d = Disk::open_with(Arc::new(disk.mount()), dir, Some("n"), 1)
            .unwrap()
            .disk;
        let l = local("n", 1);
        l.bucket("s").write(
            "k",
            Some(crate::replication::value::encode_json("1")),
            Lifetime::Forever,
        );
        disk.set_faults(Faults {
            write: 1.0,
            kind: FaultKind::Enospc,
            ..Faults::default()
        });
        assert!(d.log(&l).is_err());
        disk.set_faults(Faults::default());
        assert!(d.mark_clean().is_err(), "owed: not a clean stop");
        assert!(d.log(&l).unwrap(), "the owed write is logged again");
        d.mark_clean().unwrap();
        drop(d);
        let mut opened = Disk::open_with(Arc::new(disk.mount()), dir, Some("n"), 2).unwrap();
        assert_eq!(opened.incarnation, 1, "clean once nothing is owed");
        let l = local("n", 1);
        opened.disk.load(&l).unwrap();
        assert!(value_of(&l, "k").is_some());
    }

    /// A first start that fails while redb creates its file (the disk full partway, the power cut)
    /// leaves no half-made database under the real name: once the disk works again, the next start
    /// creates the database and keeps what is written. (Found by the whole-node `disk` sweep, seed
    /// 102102: every start after the first failed with "Not a redb database: magic number mismatch".)
    #[test]
    fn a_start_that_failed_while_creating_the_database_does_not_keep_the_directory_from_opening() {
        use sim::{FaultKind, Faults, SimDisk};
        let dir = Path::new("/sim/creating");
        let mut cut_short = 0;
        for seed in 0..64u64 {
            let disk = SimDisk::new(seed);
            // Writes fail half the time: redb's file may get its size, or part of its header, and
            // never its magic number.
            disk.set_faults(Faults {
                write: 0.5,
                kind: FaultKind::Enospc,
                ..Faults::default()
            });
            if Disk::open_with(Arc::new(disk.mount()), dir, Some("n"), 1).is_ok() {
                continue;
            }
            let left = |name: &str| {
                disk.mount()
                    .read(&dir.join(name))
                    .unwrap()
                    .is_some_and(|b| !b.is_empty())
            };
            if left(DB_FILE) || left(&format!("{DB_FILE}.making")) {
                cut_short += 1;
            }
            if seed % 2 == 1 {
                disk.crash();
                disk.power_on();
            }
            disk.set_faults(Faults::default());
            let mut opened = Disk::open_with(Arc::new(disk.mount()), dir, Some("n"), 2)
                .unwrap_or_else(|e| panic!("seed {seed}: the next start fails: {e}"));
            store_k(&mut opened, true);
            opened.disk.mark_clean().unwrap();
            drop(opened);
            let again = Disk::open_with(Arc::new(disk.mount()), dir, Some("n"), 3).unwrap();
            assert!(holds_k(again), "seed {seed}: the write is kept");
        }
        assert!(cut_short > 0, "no start was cut short partway through");
    }

    /// A `SimDisk` mount whose `sync_dir` calls fail as scripted (one `bool` per call, `true`: EIO;
    /// past the script they pass), as a real directory fsync may: the names stay not durable.
    #[derive(Debug)]
    pub(crate) struct DirSyncFails {
        inner: sim::SimMount,
        script: parking_lot::Mutex<std::collections::VecDeque<bool>>,
    }

    impl DirSyncFails {
        pub(crate) fn new(inner: sim::SimMount, script: &[bool]) -> DirSyncFails {
            DirSyncFails {
                inner,
                script: parking_lot::Mutex::new(script.iter().copied().collect()),
            }
        }
    }

    impl FileSystem for DirSyncFails {
        fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
            self.inner.create_dir_all(dir)
        }
        fn lock(&self, path: &Path) -> std::io::Result<Option<Box<dyn DirLock>>> {
            self.inner.lock(path)
        }
        fn read(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>> {
            self.inner.read(path)
        }
        fn open(&self, path: &Path) -> std::io::Result<Arc<dyn fs::DiskFile>> {
            self.inner.open(path)
        }
        fn exists(&self, path: &Path) -> std::io::Result<bool> {
            self.inner.exists(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            self.inner.rename(from, to)
        }
        fn remove(&self, path: &Path) -> std::io::Result<()> {
            self.inner.remove(path)
        }
        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            if self.script.lock().pop_front().unwrap_or(false) {
                return Err(std::io::Error::from_raw_os_error(5));
            }
            self.inner.sync_dir(dir)
        }
        fn database(
            &self,
            builder: &redb::Builder,
            path: &Path,
        ) -> Result<Database, redb::DatabaseError> {
            self.inner.database(builder, path)
        }
        fn blocks(&self) -> bool {
            self.inner.blocks()
        }
    }

    /// A first start whose directory sync failed right after the new database took its name (the
    /// name is not durable), and a second whose sync of the new log's name failed too: the third
    /// start finds both files and opens them, stores a write (a redb commit reported `Ok`)... and a
    /// crash then takes the database with the write, since nothing made its name durable. Invariant:
    /// a write reported stored survives a crash.
    #[test]
    fn a_write_stored_after_a_failed_directory_sync_of_the_new_database_survives_a_crash() {
        let disk = sim::SimDisk::new(1);
        let dir = Path::new("/sim/dbname");
        let start = |script: &[bool], incarnation| start_scripted(&disk, dir, script, incarnation);
        assert!(
            start(&[true], 1).is_err(),
            "start 1: the directory sync after the rename fails"
        );
        assert!(disk.mount().exists(&dir.join(DB_FILE)).unwrap());
        assert!(
            start(&[true], 2).is_err(),
            "start 2: the directory sync of the new log fails"
        );
        store_k(&mut start(&[], 3).expect("start 3 works"), false);
        disk.crash();
        disk.power_on();
        assert!(
            holds_k(start(&[], 4).expect("start 4 works")),
            "a write reported stored is lost: the database's name was never made durable"
        );
    }

    /// A start whose sync of the new log's name failed (after the log was written and synced full
    /// size) fails; the next start finds the log full size, does not sync the directory, and logs a
    /// strict write (its `sync_data` returned `Ok`: settled). A crash then takes the log with it.
    /// Invariant: a settled strict write survives a crash.
    #[test]
    fn a_logged_write_survives_a_crash_after_a_start_whose_log_directory_sync_failed() {
        let disk = sim::SimDisk::new(2);
        let dir = Path::new("/sim/walname");
        let start = |script: &[bool], incarnation| start_scripted(&disk, dir, script, incarnation);
        assert!(
            start(&[false, true], 1).is_err(),
            "start 1: the database is made whole, the log's directory sync fails"
        );
        store_k(&mut start(&[], 2).expect("start 2 works"), true);
        disk.crash();
        disk.power_on();
        assert!(
            holds_k(start(&[], 3).expect("start 3 works")),
            "a settled write is lost: the log's name was never made durable"
        );
    }

    /// Seeded sequences of starts on a `SimDisk` that fails during the starts too (writes, syncs and
    /// directory syncs fail, the disk may be nearly full), some starts failing and retried with no
    /// crash between, the power cut at random points (after a failed start, after one that created the
    /// files, mid-run). Invariants: every start that succeeds holds every write reported stored (and
    /// its contexts claim none that is not), and a start on a working disk at the end succeeds.
    /// `START_SWEEP=a-b` sweeps seeds a to b (default 0-63).
    #[test]
    fn seeded_failed_starts_and_crashes_never_keep_a_working_start_out_nor_lose_a_stored_write() {
        use rand::{Rng, SeedableRng};
        use sim::{FaultKind, Faults, SimDisk};
        let (from, to) = seeds_from_env("START_SWEEP", (0, 63));
        let mut failed_starts = 0;
        for seed in from..=to {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
            let disk = SimDisk::new(seed);
            let dir = Path::new("/sim/starts");
            let strict = seed % 2 == 0;
            let mut stored: Vec<String> = Vec::new();
            let mut next = 0u32;
            let check = |l: &Local, stored: &[String], what: &str| {
                let b = l.bucket("s");
                for k in stored {
                    assert!(
                        b.contains(k),
                        "seed {seed}: {what}: {k} was stored and is lost"
                    );
                }
                for (origin, ctx) in b.store().context() {
                    assert_eq!(
                        b.store().stored_dots(&origin, &ctx),
                        ctx,
                        "seed {seed}: {what}: a context claims writes not stored"
                    );
                }
            };
            for step in 1..=rng.gen_range(4..14u64) {
                let faults = if rng.gen_bool(0.6) {
                    Faults {
                        // A third of the faulty starts fail only on syncs (file or directory).
                        write: if rng.gen_bool(0.33) {
                            0.0
                        } else {
                            rng.gen_range(0.0..0.5)
                        },
                        sync: rng.gen_range(0.0..0.5),
                        kind: FaultKind::Either,
                        capacity: rng
                            .gen_bool(0.3)
                            .then(|| disk.used() + rng.gen_range(0..(12u64 << 20))),
                    }
                } else {
                    Faults::default()
                };
                disk.set_faults(faults);
                let opened = Disk::open_with(Arc::new(disk.mount()), dir, Some("n"), step);
                eprintln!(
                    "seed {seed} step {step}: {:?} start {:?}",
                    disk.mount()
                        .read(&dir.join("wal"))
                        .unwrap()
                        .map(|w| w.len()),
                    opened.as_ref().err().map(|e| e.to_string())
                );
                let mut opened = match opened {
                    Ok(o) => o,
                    Err(e) => {
                        failed_starts += 1;
                        let msg = e.to_string();
                        assert!(
                            !msg.contains("magic number") && !msg.contains("another format"),
                            "seed {seed}: step {step}: {msg}"
                        );
                        if rng.gen_bool(0.4) {
                            eprintln!("seed {seed} step {step}: crash");
                            disk.crash();
                            disk.power_on();
                        }
                        continue;
                    }
                };
                let l = local("n", opened.incarnation);
                opened
                    .disk
                    .load(&l)
                    .unwrap_or_else(|e| panic!("seed {seed}: step {step}: load: {e}"));
                check(&l, &stored, &format!("step {step}"));
                let mut d = opened.disk;
                let b = l.bucket("s");
                let mut written: Vec<String> = Vec::new();
                for round in 0..rng.gen_range(0..12) {
                    for _ in 0..rng.gen_range(1..8) {
                        let k = format!("k{next}");
                        next += 1;
                        b.write(
                            k.as_str(),
                            Some(crate::replication::value::encode_json("1")),
                            Lifetime::Forever,
                        );
                        written.push(k);
                    }
                    let done = if strict { d.log(&l) } else { d.flush(&l) };
                    if done.is_ok() {
                        stored.append(&mut written);
                    }
                    let _ = d.checkpoint(round % 5 == 4);
                }
                eprintln!("seed {seed} step {step}: {} stored", stored.len());
                if rng.gen_bool(0.6) {
                    eprintln!("seed {seed} step {step}: crash");
                    disk.crash();
                    drop(d);
                    disk.power_on();
                } else {
                    let _ = d.checkpoint(true);
                    let _ = d.mark_clean();
                    drop(d);
                }
            }
            disk.set_faults(Faults::default());
            let mut opened = Disk::open_with(Arc::new(disk.mount()), dir, Some("n"), 99)
                .unwrap_or_else(|e| panic!("seed {seed}: a start on a working disk fails: {e}"));
            let l = local("n", opened.incarnation);
            opened.disk.load(&l).unwrap();
            check(&l, &stored, "the working start");
        }
        assert!(failed_starts > 0, "no start failed");
    }

    /// A `SimDisk` mount with Linux's page cache after a failed fsync: the writes the failed sync
    /// covered never reach the device (a later sync does not write them again), yet reads until the
    /// next boot (a `crash`) still see them. `SimDisk` alone shows the durable bytes after a failed
    /// sync, which is kinder: code that reads back what it wrote never sees data that is not there.
    /// `sync_data` calls fail as scripted (`true`: EIO); clones share the page cache (one boot).
    #[derive(Clone, Debug)]
    pub(crate) struct PageCache {
        disk: sim::SimDisk,
        inner: sim::SimMount,
        ghosts: Arc<parking_lot::Mutex<std::collections::HashMap<PathBuf, Vec<u8>>>>,
        script: Arc<parking_lot::Mutex<std::collections::VecDeque<bool>>>,
    }

    #[derive(Debug)]
    struct CachedFile {
        fs: PageCache,
        inner: Arc<dyn fs::DiskFile>,
        path: PathBuf,
    }

    impl PageCache {
        pub(crate) fn new(disk: &sim::SimDisk) -> PageCache {
            PageCache {
                disk: disk.clone(),
                inner: disk.mount(),
                ghosts: Default::default(),
                script: Default::default(),
            }
        }

        pub(crate) fn fail_syncs(&self, script: &[bool]) {
            *self.script.lock() = script.iter().copied().collect();
        }
    }

    impl fs::DiskFile for CachedFile {
        fn len(&self) -> std::io::Result<u64> {
            match self.fs.ghosts.lock().get(&self.path) {
                Some(g) => Ok(g.len() as u64),
                None => self.inner.len(),
            }
        }
        fn read_at(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            match self.fs.ghosts.lock().get(&self.path) {
                Some(g) => {
                    let src = g
                        .get(offset as usize..offset as usize + out.len())
                        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
                    out.copy_from_slice(src);
                    Ok(())
                }
                None => self.inner.read_at(offset, out),
            }
        }
        fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.inner.write_at(offset, data)?;
            if let Some(g) = self.fs.ghosts.lock().get_mut(&self.path) {
                let end = offset as usize + data.len();
                if g.len() < end {
                    g.resize(end, 0);
                }
                g[offset as usize..end].copy_from_slice(data);
            }
            Ok(())
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.inner.set_len(len)?;
            if let Some(g) = self.fs.ghosts.lock().get_mut(&self.path) {
                g.resize(len as usize, 0);
            }
            Ok(())
        }
        fn sync_data(&self) -> std::io::Result<()> {
            if !self.fs.script.lock().pop_front().unwrap_or(false) {
                return self.inner.sync_data();
            }
            // What the process sees now stays in the cache; the device gets none of it.
            let mut seen = vec![0u8; self.len()? as usize];
            self.read_at(0, &mut seen)?;
            self.fs.disk.set_faults(sim::Faults {
                sync: 1.0,
                ..sim::Faults::default()
            });
            let _ = self.inner.sync_data();
            self.fs.disk.set_faults(sim::Faults::default());
            self.fs.ghosts.lock().insert(self.path.clone(), seen);
            Err(std::io::Error::from_raw_os_error(5))
        }
    }

    impl FileSystem for PageCache {
        fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
            self.inner.create_dir_all(dir)
        }
        fn lock(&self, path: &Path) -> std::io::Result<Option<Box<dyn DirLock>>> {
            self.inner.lock(path)
        }
        fn read(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>> {
            match self.ghosts.lock().get(path) {
                Some(g) => Ok(Some(g.clone())),
                None => self.inner.read(path),
            }
        }
        fn open(&self, path: &Path) -> std::io::Result<Arc<dyn fs::DiskFile>> {
            Ok(Arc::new(CachedFile {
                fs: self.clone(),
                inner: self.inner.open(path)?,
                path: path.to_path_buf(),
            }))
        }
        fn exists(&self, path: &Path) -> std::io::Result<bool> {
            self.inner.exists(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            self.inner.rename(from, to)?;
            let mut g = self.ghosts.lock();
            match g.remove(from) {
                Some(bytes) => g.insert(to.to_path_buf(), bytes),
                None => g.remove(to),
            };
            Ok(())
        }
        fn remove(&self, path: &Path) -> std::io::Result<()> {
            self.inner.remove(path)?;
            self.ghosts.lock().remove(path);
            Ok(())
        }
        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            self.inner.sync_dir(dir)
        }
        fn database(
            &self,
            builder: &redb::Builder,
            path: &Path,
        ) -> Result<Database, redb::DatabaseError> {
            builder.create_with_backend(fs::RedbFile(self.open(path)?))
        }
        fn blocks(&self) -> bool {
            false
        }
    }

    /// A redb commit whose fsync failed, on Linux: its pages are in the page cache (the reopened
    /// database reads them back as committed) and not on the device. The next commit succeeds, a
    /// crash follows: the directory must open and hold every write reported stored.
    #[test]
    fn a_commit_after_one_whose_fsync_failed_survives_a_crash_with_linux_page_cache_semantics() {
        let mut failed = 0;
        for nth in 0..6usize {
            let disk = sim::SimDisk::new(5);
            let dir = Path::new("/sim/pagecache");
            let boot = PageCache::new(&disk);
            {
                let mut d = Disk::open_with(Arc::new(boot.clone()), dir, Some("n"), 1)
                    .unwrap()
                    .disk;
                let l = local("n", 1);
                let b = l.bucket("s");
                let put = |k: &str| {
                    b.write(
                        k,
                        Some(crate::replication::value::encode_json("1")),
                        Lifetime::Forever,
                    )
                };
                for i in 0..50 {
                    put(&format!("a{i}"));
                }
                assert!(d.flush(&l).unwrap());
                // The nth sync of the commit fails.
                let mut script = vec![false; nth];
                script.push(true);
                boot.fail_syncs(&script);
                for i in 0..50 {
                    put(&format!("b{i}"));
                }
                if d.flush(&l).is_ok() {
                    continue; // the commit has fewer syncs
                }
                failed += 1;
                eprintln!("sync {nth} of the commit failed");
                for i in 0..50 {
                    put(&format!("c{i}"));
                }
                assert!(d.flush(&l).unwrap(), "the next commit is stored");
                disk.crash();
            }
            disk.power_on();
            let mut opened = Disk::open_with(Arc::new(disk.mount()), dir, Some("n"), 2)
                .unwrap_or_else(|e| panic!("the directory does not open after the crash: {e}"));
            let l = local("n", 2);
            opened.disk.load(&l).unwrap();
            for k in ["a0", "a49", "b0", "b49", "c0", "c49"] {
                assert!(
                    value_of(&l, k).is_some(),
                    "sync {nth}: {k} was stored and is lost"
                );
            }
        }
        assert!(failed > 0);
    }

    /// Seeded runs of a data directory on a `SimDisk` whose writes and syncs fail at a rate drawn per
    /// seed, crashed and reopened several times: every write a flush reported stored is there after
    /// each reopen, and the stored contexts claim no write that is not. `DISK_SWEEP=a-b` sweeps seeds
    /// a to b (default 0-24).
    #[test]
    fn seeded_disk_faults_and_crashes_lose_no_stored_write_and_claim_none_unstored() {
        use rand::{Rng, SeedableRng};
        use sim::{FaultKind, Faults, SimDisk};
        let (from, to) = seeds_from_env("DISK_SWEEP", (0, 24));
        for seed in from..=to {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let disk = SimDisk::new(seed);
            let dir = Path::new("/sim/sweep");
            let strict = seed % 2 == 0;
            let mut stored: Vec<String> = Vec::new();
            let mut next = 0u32;
            for incarnation in 1..=4u64 {
                let mut opened =
                    Disk::open_with(Arc::new(disk.mount()), dir, Some("n"), incarnation)
                        .unwrap_or_else(|e| panic!("seed {seed}: reopen: {e}"));
                let l = local("n", opened.incarnation);
                opened
                    .disk
                    .load(&l)
                    .unwrap_or_else(|e| panic!("seed {seed}: load: {e}"));
                let b = l.bucket("s");
                for k in &stored {
                    assert!(b.contains(k), "seed {seed}: {k} was stored and is lost");
                }
                for (origin, ctx) in b.store().context() {
                    assert_eq!(
                        b.store().stored_dots(&origin, &ctx),
                        ctx,
                        "seed {seed}: a context claims writes not stored"
                    );
                }
                let mut d = opened.disk;
                disk.set_faults(Faults {
                    write: rng.gen_range(0.0..0.4),
                    sync: rng.gen_range(0.0..0.4),
                    kind: FaultKind::Either,
                    capacity: None,
                });
                let mut written: Vec<String> = Vec::new();
                for round in 0..rng.gen_range(5..40) {
                    for _ in 0..rng.gen_range(1..20) {
                        let k = format!("k{next}");
                        next += 1;
                        b.write(
                            k.as_str(),
                            Some(crate::replication::value::encode_json("1")),
                            Lifetime::Forever,
                        );
                        written.push(k);
                    }
                    let done = if strict { d.log(&l) } else { d.flush(&l) };
                    if done.is_ok() {
                        stored.append(&mut written);
                    }
                    let _ = d.checkpoint(round % 7 == 0);
                }
                disk.crash();
                drop(d);
                disk.power_on();
                disk.set_faults(Faults::default());
            }
        }
    }
}
