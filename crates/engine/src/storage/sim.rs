//! A simulated disk for deterministic tests: every file is its durable bytes plus the writes made since
//! its last sync, and all of it is in memory, driven by one seeded RNG.
//!
//! What it models, and why each is a fault a production disk shows:
//! - **Unsynced writes are not durable.** `sync_data` promotes a file's pending writes; `crash()` cuts
//!   the power and keeps, drops or tears (a prefix of whole 512-byte sectors) each pending write, in the
//!   manner of FoundationDB's `AsyncFileNonDurable`. A file whose name was never synced with its
//!   directory is gone after a crash.
//! - **Errors on any write or sync**, EIO or ENOSPC, drawn from `Faults` per call, and ENOSPC once the
//!   files outgrow a capacity. A failed write may leave part of its data pending; a failed sync drops
//!   the file's pending writes (Linux may drop the dirty pages after a failed writeback, which is why
//!   retrying an fsync proves nothing).
//! - **A power switch.** While it is off (from `crash()` until `power_on()`) every call fails, so the
//!   destructors of a node being torn down (redb's final commit, the flusher's last flush) reach nothing.
//!   A node reaches the disk through a `mount()`; a crash ends every mount made before it, so a task
//!   of the crashed node that still runs can never write into the next run's files.
//!
//! Invariants: reads see the durable bytes with the pending writes applied in order; the same seed and
//! the same calls give the same bytes and the same faults.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redb::{Builder, Database, DatabaseError};

use super::fs::{DirLock, DiskFile, FileSystem, RedbFile};

const SECTOR: usize = 512;
/// Linux's numbers for the two errors injected.
const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// Which errors a `SimDisk` injects: the chance that one call fails, per kind of call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Chance that a write or a `set_len` fails.
    pub write: f64,
    /// Chance that a `sync_data` or `sync_dir` fails.
    pub sync: f64,
    /// Which error an injected failure is.
    pub kind: FaultKind,
    /// Bytes the disk holds: a call growing the files past it fails with ENOSPC.
    pub capacity: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FaultKind {
    #[default]
    Eio,
    Enospc,
    /// EIO or ENOSPC, drawn per failure.
    Either,
}

#[derive(Debug)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct SimFile {
    durable: Vec<u8>,
    live: Vec<u8>,
    pending: Vec<Op>,
    /// The file's name survives a crash (its directory was synced after it was created).
    named: bool,
}

#[derive(Debug)]
struct State {
    rng: StdRng,
    files: BTreeMap<PathBuf, SimFile>,
    dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
    faults: Faults,
    power: bool,
    /// Bumped by each crash: handles of an earlier one fail.
    epoch: u64,
    injected: u64,
}

/// A simulated disk (see the module notes). Cheap to clone: clones share the disk.
#[derive(Clone, Debug)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

fn apply(bytes: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write { offset, data } => {
            let end = *offset as usize + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[*offset as usize..end].copy_from_slice(data);
        }
        Op::SetLen(len) => bytes.resize(*len as usize, 0),
    }
}

fn power_off() -> io::Error {
    io::Error::other("simulated disk: the power is off")
}

impl State {
    fn used(&self) -> u64 {
        self.files.values().map(|f| f.live.len() as u64).sum()
    }

    /// Draws whether this call fails, and with which error.
    fn inject(&mut self, chance: f64) -> Option<io::Error> {
        if chance <= 0.0 || !self.rng.gen_bool(chance.min(1.0)) {
            return None;
        }
        self.injected += 1;
        let code = match self.faults.kind {
            FaultKind::Eio => EIO,
            FaultKind::Enospc => ENOSPC,
            FaultKind::Either if self.rng.gen_bool(0.5) => EIO,
            FaultKind::Either => ENOSPC,
        };
        Some(io::Error::from_raw_os_error(code))
    }

    fn check(&self, epoch: u64) -> io::Result<()> {
        if !self.power || epoch != self.epoch {
            return Err(power_off());
        }
        Ok(())
    }

    fn file(&mut self, path: &Path) -> io::Result<&mut SimFile> {
        self.files
            .get_mut(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    /// Queues `op` on `path`, unless it fails; a failed write may leave a prefix of its sectors.
    fn change(&mut self, path: &Path, op: Op) -> io::Result<()> {
        let grows_to = match &op {
            Op::Write { offset, data } => offset + data.len() as u64,
            Op::SetLen(len) => *len,
        };
        let current = self.file(path)?.live.len() as u64;
        let growth = grows_to.saturating_sub(current);
        let full = self
            .faults
            .capacity
            .is_some_and(|cap| self.used() + growth > cap);
        let chance = self.faults.write;
        let error = if full {
            self.injected += 1;
            Some(io::Error::from_raw_os_error(ENOSPC))
        } else {
            self.inject(chance)
        };
        let op = match (error, op) {
            (None, op) => op,
            (Some(e), Op::Write { offset, mut data }) => {
                let sectors = data.len().div_ceil(SECTOR);
                let kept = self.rng.gen_range(0..=sectors.saturating_sub(1)) * SECTOR;
                // A full disk takes what fits and no more.
                let room = match self.faults.capacity {
                    Some(cap) => (current + cap.saturating_sub(self.used())).saturating_sub(offset),
                    None => u64::MAX,
                };
                data.truncate(kept.min(room as usize));
                if !data.is_empty() {
                    let op = Op::Write { offset, data };
                    let f = self.file(path)?;
                    apply(&mut f.live, &op);
                    f.pending.push(op);
                }
                return Err(e);
            }
            (Some(e), Op::SetLen(_)) => return Err(e),
        };
        let f = self.file(path)?;
        apply(&mut f.live, &op);
        f.pending.push(op);
        Ok(())
    }

    fn sync(&mut self, path: &Path) -> io::Result<()> {
        let chance = self.faults.sync;
        let error = self.inject(chance);
        let f = self.file(path)?;
        match error {
            None => {
                // The pending writes, not a copy of the whole file: a log file is megabytes long
                // and is synced after every record.
                for op in std::mem::take(&mut f.pending) {
                    apply(&mut f.durable, &op);
                }
                Ok(())
            }
            Some(e) => {
                f.live = f.durable.clone();
                f.pending.clear();
                Err(e)
            }
        }
    }
}

impl SimDisk {
    pub fn new(seed: u64) -> SimDisk {
        SimDisk {
            state: Arc::new(Mutex::new(State {
                rng: StdRng::seed_from_u64(seed),
                files: BTreeMap::new(),
                dirs: BTreeSet::new(),
                locks: BTreeSet::new(),
                faults: Faults::default(),
                power: true,
                epoch: 0,
                injected: 0,
            })),
        }
    }

    /// The faults injected from now on.
    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().faults = faults;
    }

    /// How many calls failed by injection (or a full disk) so far.
    pub fn injected(&self) -> u64 {
        self.state.lock().injected
    }

    /// The bytes the files take now (what `Faults::capacity` is compared with).
    pub fn used(&self) -> u64 {
        self.state.lock().used()
    }

    /// Cuts the power: each pending write is kept, dropped or torn (one crash in ten keeps them all),
    /// files never named durably vanish, locks are released, and every call fails until `power_on`.
    pub fn crash(&self) {
        let mut s = self.state.lock();
        let s = &mut *s;
        s.power = false;
        s.epoch += 1;
        s.locks.clear();
        let keep_all = s.rng.gen_bool(0.1);
        let rng = &mut s.rng;
        s.files.retain(|_, f| {
            for op in std::mem::take(&mut f.pending) {
                match (keep_all, rng.gen_range(0..3), op) {
                    (true, _, op) | (false, 0, op) => apply(&mut f.durable, &op),
                    (false, 1, _) => {}
                    (false, _, Op::Write { offset, mut data }) => {
                        let sectors = data.len().div_ceil(SECTOR);
                        data.truncate(rng.gen_range(0..=sectors) * SECTOR);
                        apply(&mut f.durable, &Op::Write { offset, data });
                    }
                    (false, _, Op::SetLen(_)) => {}
                }
            }
            f.live = f.durable.clone();
            f.named
        });
    }

    /// Turns the power back on (after `crash`).
    pub fn power_on(&self) {
        self.state.lock().power = true;
    }

    /// The disk as one process sees it, until the next `crash`: what a node is given as its file
    /// system. A process that outlives a crash in the simulation (a task still running) reaches
    /// nothing through its mount, not even after the power is back.
    pub fn mount(&self) -> SimMount {
        SimMount {
            disk: self.clone(),
            epoch: self.state.lock().epoch,
        }
    }
}

/// One process's view of a `SimDisk` (see `SimDisk::mount`).
#[derive(Clone, Debug)]
pub struct SimMount {
    disk: SimDisk,
    epoch: u64,
}

/// An open file of a `SimDisk`.
#[derive(Debug)]
struct SimHandle {
    disk: SimDisk,
    path: PathBuf,
    epoch: u64,
}

impl DiskFile for SimHandle {
    fn len(&self) -> io::Result<u64> {
        let mut s = self.disk.state.lock();
        s.check(self.epoch)?;
        Ok(s.file(&self.path)?.live.len() as u64)
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let mut s = self.disk.state.lock();
        s.check(self.epoch)?;
        let f = s.file(&self.path)?;
        let src = f
            .live
            .get(offset as usize..offset as usize + out.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut s = self.disk.state.lock();
        s.check(self.epoch)?;
        s.change(
            &self.path,
            Op::Write {
                offset,
                data: data.to_vec(),
            },
        )
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.disk.state.lock();
        s.check(self.epoch)?;
        s.change(&self.path, Op::SetLen(len))
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.disk.state.lock();
        s.check(self.epoch)?;
        s.sync(&self.path)
    }
}

struct SimLock {
    disk: SimDisk,
    path: PathBuf,
    epoch: u64,
}

impl DirLock for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut s = self.disk.state.lock();
        if s.epoch == self.epoch {
            s.locks.remove(&self.path);
        }
    }
}

impl FileSystem for SimMount {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.disk.state.lock();
        s.check(self.epoch)?;
        s.dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
        let mut s = self.disk.state.lock();
        s.check(self.epoch)?;
        if !s.locks.insert(path.to_path_buf()) {
            return Ok(None);
        }
        Ok(Some(Box::new(SimLock {
            disk: self.disk.clone(),
            path: path.to_path_buf(),
            epoch: self.epoch,
        })))
    }

    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let s = self.disk.state.lock();
        s.check(self.epoch)?;
        Ok(s.files.get(path).map(|f| f.live.clone()))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>> {
        let mut s = self.disk.state.lock();
        s.check(self.epoch)?;
        let parent = path.parent().unwrap_or(Path::new(""));
        if !s.dirs.contains(parent) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        s.files.entry(path.to_path_buf()).or_default();
        Ok(Arc::new(SimHandle {
            disk: self.disk.clone(),
            path: path.to_path_buf(),
            epoch: self.epoch,
        }))
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let s = self.disk.state.lock();
        s.check(self.epoch)?;
        Ok(s.files.contains_key(path))
    }

    /// The file keeps its durable bytes and pending writes under the new name; the name itself is
    /// not durable until the directory is synced (a crash before that loses the file).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.disk.state.lock();
        s.check(self.epoch)?;
        let mut file = s
            .files
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        file.named = false;
        s.files.insert(to.to_path_buf(), file);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.disk.state.lock();
        s.check(self.epoch)?;
        s.files.remove(path);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.disk.state.lock();
        s.check(self.epoch)?;
        let chance = s.faults.sync;
        if let Some(e) = s.inject(chance) {
            return Err(e);
        }
        for (path, f) in s.files.iter_mut() {
            if path.parent() == Some(dir) {
                f.named = true;
            }
        }
        Ok(())
    }

    fn database(&self, builder: &Builder, path: &Path) -> Result<Database, DatabaseError> {
        let file = self.open(path)?;
        builder.create_with_backend(RedbFile(file))
    }

    fn blocks(&self) -> bool {
        false
    }
}
