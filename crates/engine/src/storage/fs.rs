//! The file-system seam under the durable store: every byte the write-ahead log and redb read or write
//! goes through a `FileSystem`, so the same code runs on the real disk (`RealFs`) and on a simulated one
//! (`sim::SimDisk`) that loses unsynced writes and fails on a seeded schedule.
//!
//! The contract is the POSIX one the store relies on, no stronger: a write is durable only once a later
//! `sync_data` of its file returned `Ok`; a failed `sync_data` says nothing about what reached the
//! device, and retrying it proves nothing either (the kernel may have dropped the dirty pages), so a
//! caller rewrites what it needs before syncing again. A new file's name is durable once `sync_dir` of
//! its directory returned `Ok`, and so is a rename. A file that must never be seen half-made (the
//! database, the node's key) is made under a temporary name and renamed (`create_whole`).

use std::fmt::Debug;
use std::io;
use std::path::Path;
use std::sync::Arc;

use redb::{Builder, Database, DatabaseError};

/// One open file, read and written at offsets.
#[allow(clippy::len_without_is_empty)] // as `redb::StorageBackend`: a length, no emptiness
pub trait DiskFile: Send + Sync + Debug {
    fn len(&self) -> io::Result<u64>;
    /// Fills `out` from `offset`; an error if the file ends first.
    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()>;
    /// Writes all of `data` at `offset`, growing the file if needed (the gap reads as zeros).
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes every write to this file so far durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
}

/// Held while a data directory is in use; dropping it releases the directory.
pub trait DirLock: Send + Sync {}

/// Where a data directory lives.
pub trait FileSystem: Send + Sync + Debug {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Takes the exclusive lock at `path` (creating the file); `None` when another holder has it.
    fn lock(&self, path: &Path) -> io::Result<Option<Box<dyn DirLock>>>;
    /// The whole content of `path`; `None` when there is no such file.
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;
    /// Opens `path` for reading and writing, creating it empty when missing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>>;
    /// Whether there is a file at `path`.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Gives the file at `from` the name `to` (in the same directory), replacing any file there. The
    /// new name is durable once `sync_dir` of the directory returned `Ok`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes the file at `path`; `Ok` when there is none.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the names of the files created in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Opens (or creates) the redb database at `path` with `builder`.
    fn database(&self, builder: &Builder, path: &Path) -> Result<Database, DatabaseError>;
    /// Whether a call may block on a device: the flusher then runs on its own OS thread. A simulated
    /// disk answers at once, and its flusher runs as a task so that the simulation's clock drives it.
    fn blocks(&self) -> bool;
}

/// The suffix of the name a file is made under before it takes its own (`create_whole`).
const MAKING: &str = "making";

/// Creates the file `name` in `dir` whole or not at all. `make` writes the file at the path it is
/// given and syncs it; that is a temporary name, and only then does the file take `name` (and the
/// directory is synced). A try that fails or crashes partway (a full disk, a failed sync, the power
/// cut) leaves only the temporary file, which the next try removes first: never a half-made file
/// under `name`, which every later start would refuse to read.
pub fn create_whole<E: From<io::Error>>(
    fs: &dyn FileSystem,
    dir: &Path,
    name: &str,
    make: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let making = dir.join(format!("{name}.{MAKING}"));
    fs.remove(&making)?;
    make(&making)?;
    fs.rename(&making, &dir.join(name))?;
    fs.sync_dir(dir)?;
    Ok(())
}

/// The real file system (`std::fs`, redb's own file backend).
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile(std::fs::File);

/// The open lock file: the lock lasts as long as it is open.
struct RealLock {
    _file: std::fs::File,
}

impl DirLock for RealLock {}

impl DiskFile for RealFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        positioned::read_exact_at(&self.0, out, offset)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        positioned::write_all_at(&self.0, data, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

/// Reads and writes at an offset without a shared cursor, so that the flusher and redb may use one file
/// from several threads. Unix has `pread`/`pwrite` (`read_exact_at`/`write_all_at`). Windows has
/// `seek_read`/`seek_write`, which pass the offset with each call (an OVERLAPPED offset) but may transfer
/// fewer bytes than asked and also move the file's cursor, which nothing here reads: so they are looped
/// until the whole buffer is done, as the Unix helpers do.
#[cfg(unix)]
mod positioned {
    use std::os::unix::fs::FileExt;

    pub fn read_exact_at(file: &std::fs::File, out: &mut [u8], offset: u64) -> std::io::Result<()> {
        file.read_exact_at(out, offset)
    }

    pub fn write_all_at(file: &std::fs::File, data: &[u8], offset: u64) -> std::io::Result<()> {
        file.write_all_at(data, offset)
    }
}

#[cfg(windows)]
mod positioned {
    use std::io;
    use std::os::windows::fs::FileExt;

    pub fn read_exact_at(
        file: &std::fs::File,
        mut out: &mut [u8],
        mut offset: u64,
    ) -> io::Result<()> {
        while !out.is_empty() {
            match file.seek_read(out, offset) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(n) => {
                    out = &mut out[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn write_all_at(file: &std::fs::File, mut data: &[u8], mut offset: u64) -> io::Result<()> {
        while !data.is_empty() {
            match file.seek_write(data, offset) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    data = &data[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl FileSystem for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn lock(&self, path: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
        // Not `File::create`, which truncates: on Windows byte-range locks are mandatory, so a second
        // opener would write into the holder's locked range; the lock file has no content to clear.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)?;
        Ok(file
            .try_lock()
            .is_ok()
            .then(|| Box::new(RealLock { _file: file }) as Box<dyn DirLock>))
    }

    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(RealFile(file)))
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            done => done,
        }
    }

    #[cfg(unix)]
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    /// Windows has no directory sync: a directory opens as a `File` only with FILE_FLAG_BACKUP_SEMANTICS,
    /// and NTFS journals a new name as metadata, which `sync_data` of the file itself (FlushFileBuffers)
    /// commits with the file, as SQLite also assumes (it syncs no directory on Windows). Unlike the Unix
    /// path, nothing here forces it: that rests on NTFS and is not tested on Windows.
    #[cfg(windows)]
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn database(&self, builder: &Builder, path: &Path) -> Result<Database, DatabaseError> {
        builder.create(path)
    }

    fn blocks(&self) -> bool {
        true
    }
}

/// A `DiskFile` as redb's storage (what a simulated disk hands redb).
#[derive(Debug)]
pub struct RedbFile(pub Arc<dyn DiskFile>);

impl redb::StorageBackend for RedbFile {
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_at(offset, data)
    }
}
