//! Which static key speaks for which peer id on keyed links, and this node's own key.
//!
//! A keyed handshake (`secure`) proves the other end's static key; its hello then names an id. The
//! book decides whether that key may speak as that id, so a member holding the cluster secret cannot
//! take over a live peer's links by saying hello under its id (with a higher incarnation, say):
//! - an id pinned by the operator (`Config::peer_keys`) is that key's alone, for good;
//! - otherwise the first key proven under an id is bound to it (in memory, and appended to
//!   `peer-keys` in the data directory when there is one, so a restart remembers it);
//! - another key for a bound id is refused while the bound key holds a lease: from `admit` until the
//!   link it let up closes (its connection ended, or it was silent for `dead_after`). Leases are
//!   taken under the book's lock, so of two handshakes racing for an id only the first binds it;
//! - once no lease is held, the id's peer is gone, and a new key replaces the binding (the caller
//!   warns, `EIDKEY`): a peer without a data directory draws a new key each run and must get back in.
//!   That is also the window in which a member may take over the id of a peer that is down; pinning
//!   closes it.
//!
//! This node's own key pair lives in `node.key` in the data directory (created on first start), else
//! it is drawn for the process. Keys are written as 64 hex digits. Open links (no secret) prove no
//! key, and the book is not asked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, KeyRefused};
use crate::net::secure::{key_from_hex, key_to_hex, Identity, Proven, PublicKey};
use crate::storage::fs::{create_whole, FileSystem};

/// The file of this node's private key in a data directory.
pub const NODE_KEY_FILE: &str = "node.key";
/// The file of the bindings learned on first sight in a data directory, one per line, appended.
pub const PEER_KEYS_FILE: &str = "peer-keys";

fn storage(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("cannot {what} {}: {e}", path.display()))
}

/// This node's key pair: the one in `dir` (created there on first start), or one for this process.
/// `dir` is the data directory, opened first (`Disk::open_with`): that start's directory sync makes
/// the name of a key file an earlier, failed start left there durable before the key is used.
pub fn identity(fs: &dyn FileSystem, dir: Option<&Path>) -> Result<Identity, Error> {
    let Some(dir) = dir else {
        return Ok(Identity::generate());
    };
    let path = dir.join(NODE_KEY_FILE);
    if let Some(text) = fs.read(&path).map_err(|e| storage("read", &path, e))? {
        let private = std::str::from_utf8(&text)
            .ok()
            .and_then(key_from_hex)
            .ok_or_else(|| {
                Error::Storage(format!(
                    "{} does not hold a key (64 hex digits)",
                    path.display()
                ))
            })?;
        return Ok(Identity::from_private(private, true));
    }
    let drawn = Identity::generate();
    let identity = Identity::from_private(*drawn.private(), true);
    // Whole or not at all: a key file cut short by a full disk would keep every later start out.
    create_whole(fs, dir, NODE_KEY_FILE, |making| {
        let file = fs.open(making)?;
        file.write_at(
            0,
            format!("{}\n", key_to_hex(identity.private())).as_bytes(),
        )?;
        file.sync_data()
    })
    .map_err(|e| storage("write", &path, e))?;
    Ok(identity)
}

struct Bound {
    key: PublicKey,
    stable: bool,
    /// Handshakes past `admit` and links that hold a lease on this key: while any does, the id's
    /// previous link is live and no other key may speak for it.
    holders: usize,
}

type Bindings = Arc<Mutex<HashMap<Arc<str>, Bound>>>;

/// What the book did with a key it let speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAdmitted {
    /// The key bound to the id (or pinned).
    Known,
    /// The first key seen for the id, now bound to it.
    First,
    /// A new key replaced the one bound to an id none of whose links was up: its peer restarted
    /// with a new key, or a member took the id while its peer is down.
    Replaced {
        old: PublicKey,
        /// The old key was kept in a data directory: a restart alone does not change it.
        old_stable: bool,
    },
}

/// A key's hold on its id, from `admit` until the link it let up is closed (dropped).
pub struct KeyLease {
    bindings: Bindings,
    id: Arc<str>,
    key: PublicKey,
}

impl Drop for KeyLease {
    fn drop(&mut self) {
        if let Some(b) = self.bindings.lock().get_mut(&*self.id) {
            if b.key == self.key {
                b.holders -= 1;
            }
        }
    }
}

/// The id -> key bindings of one node.
pub struct KeyBook {
    pinned: HashMap<Arc<str>, PublicKey>,
    bound: Bindings,
    /// Where learned bindings are appended: the file system and the `peer-keys` path.
    file: Option<(Arc<dyn FileSystem>, PathBuf)>,
}

impl KeyBook {
    /// The book of pinned keys and, with a data directory, the bindings stored in it.
    pub fn open(
        pinned: &[(String, PublicKey)],
        fs: Arc<dyn FileSystem>,
        dir: Option<&Path>,
    ) -> Result<KeyBook, Error> {
        let mut bound = HashMap::new();
        let file = match dir {
            Some(dir) => {
                let path = dir.join(PEER_KEYS_FILE);
                let text = fs.read(&path).map_err(|e| storage("read", &path, e))?;
                // Later lines override earlier ones; a line cut by a crash is skipped.
                for line in String::from_utf8_lossy(&text.unwrap_or_default()).lines() {
                    let mut parts = line.splitn(3, ' ');
                    let (Some(key), Some(kind), Some(id)) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    let (Some(key), Ok(stable)) = (key_from_hex(key), kind.parse::<Kind>()) else {
                        continue;
                    };
                    bound.insert(
                        Arc::from(id),
                        Bound {
                            key,
                            stable: stable.0,
                            holders: 0,
                        },
                    );
                }
                Some((fs, path))
            }
            None => None,
        };
        let pinned: HashMap<Arc<str>, PublicKey> = pinned
            .iter()
            .map(|(id, key)| (Arc::from(id.as_str()), *key))
            .collect();
        // A pin overrides whatever an earlier run learned for its id.
        bound.retain(|id, _| !pinned.contains_key(id));
        Ok(KeyBook {
            pinned,
            bound: Arc::new(Mutex::new(bound)),
            file,
        })
    }

    /// Whether the key `proven` may speak as `id`. A key it lets speak is bound to `id` from now
    /// on, and holds it against any other key for as long as the returned lease lives.
    pub fn admit(&self, id: &str, proven: Proven) -> Result<(KeyAdmitted, KeyLease), KeyRefused> {
        let pinned = self.pinned.get(id);
        if let Some(pinned) = pinned.filter(|key| **key != proven.key) {
            return Err(KeyRefused::Pinned(*pinned));
        }
        let mut bound = self.bound.lock();
        let (admitted, store) = match bound.get_mut(id) {
            Some(b) if b.key == proven.key => {
                b.holders += 1;
                let newly_stable = proven.stable && !b.stable;
                b.stable |= proven.stable;
                (KeyAdmitted::Known, newly_stable)
            }
            Some(b) if b.holders > 0 => return Err(KeyRefused::InUse(b.key)),
            Some(b) => {
                let admitted = KeyAdmitted::Replaced {
                    old: b.key,
                    old_stable: b.stable,
                };
                *b = Bound {
                    key: proven.key,
                    stable: proven.stable,
                    holders: 1,
                };
                (admitted, true)
            }
            None => {
                bound.insert(
                    id.into(),
                    Bound {
                        key: proven.key,
                        stable: proven.stable,
                        holders: 1,
                    },
                );
                match pinned {
                    Some(_) => (KeyAdmitted::Known, false),
                    None => (KeyAdmitted::First, true),
                }
            }
        };
        drop(bound);
        if store {
            self.store(id, proven);
        }
        let lease = KeyLease {
            bindings: self.bound.clone(),
            id: id.into(),
            key: proven.key,
        };
        Ok((admitted, lease))
    }

    /// Appends a binding to the data directory's file. A failure is logged, not fatal: the binding
    /// holds in memory, and the next run learns it again on first sight.
    fn store(&self, id: &str, proven: Proven) {
        let Some((fs, path)) = &self.file else {
            return;
        };
        let kind = if proven.stable { "stable" } else { "process" };
        let line = format!("{} {kind} {id}\n", key_to_hex(&proven.key));
        let written = fs.open(path).and_then(|file| {
            let end = file.len()?;
            file.write_at(end, line.as_bytes())?;
            file.sync_data()
        });
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "peer key not stored");
        }
    }
}

/// The kind column of `peer-keys`: `stable` or `process`.
struct Kind(bool);

impl std::str::FromStr for Kind {
    type Err = ();
    fn from_str(s: &str) -> Result<Kind, ()> {
        match s {
            "stable" => Ok(Kind(true)),
            "process" => Ok(Kind(false)),
            _ => Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::secure::KEY_LEN;
    use crate::storage::fs::RealFs;

    fn proven(byte: u8, stable: bool) -> Proven {
        Proven {
            key: [byte; KEY_LEN],
            stable,
        }
    }

    fn book(pinned: &[(String, PublicKey)], dir: Option<&Path>) -> KeyBook {
        KeyBook::open(pinned, Arc::new(RealFs), dir).unwrap()
    }

    fn admitted(b: &KeyBook, id: &str, p: Proven) -> Result<KeyAdmitted, KeyRefused> {
        b.admit(id, p).map(|(admitted, _)| admitted)
    }

    /// A first start whose key file could not be written (a full disk) leaves no cut-short key file
    /// behind: the next start draws and keeps a key, and the one after reads the same key.
    #[test]
    fn a_key_file_that_failed_to_write_does_not_keep_later_starts_out() {
        use crate::storage::sim::{FaultKind, Faults, SimDisk};
        let disk = SimDisk::new(3);
        let dir = Path::new("/sim/keys");
        let mount = || -> Arc<dyn FileSystem> { Arc::new(disk.mount()) };
        mount().create_dir_all(dir).unwrap();
        disk.set_faults(Faults {
            write: 1.0,
            kind: FaultKind::Enospc,
            ..Faults::default()
        });
        assert!(identity(&*mount(), Some(dir)).is_err());
        disk.set_faults(Faults::default());
        let first = identity(&*mount(), Some(dir)).expect("the next start makes its key");
        let again = identity(&*mount(), Some(dir)).unwrap();
        assert_eq!(first.private(), again.private());
    }

    /// Seeded first starts whose key file fails to be made (writes and file syncs fail, the disk may
    /// be full; directory syncs work), some followed by a power cut, several in a row: a start on a
    /// working disk then makes or reads a key, and after a crash the next start reads the same key.
    #[test]
    fn failed_and_crashed_key_writes_never_keep_a_start_out_nor_change_a_key_once_used() {
        use crate::storage::sim::{FaultKind, Faults, SimDisk};
        use rand::{Rng, SeedableRng};
        for seed in 0..200u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let disk = SimDisk::new(seed);
            let dir = Path::new("/sim/keys-sweep");
            let mount = || -> Arc<dyn FileSystem> { Arc::new(disk.mount()) };
            mount().create_dir_all(dir).unwrap();
            let mut used: Option<PublicKey> = None;
            for _ in 0..rng.gen_range(1..6) {
                disk.set_faults(Faults {
                    write: rng.gen_range(0.0..1.0),
                    sync: 0.0,
                    kind: FaultKind::Either,
                    capacity: rng
                        .gen_bool(0.3)
                        .then(|| disk.used() + rng.gen_range(0..80)),
                });
                match identity(&*mount(), Some(dir)) {
                    Ok(id) => {
                        if let Some(before) = used {
                            assert_eq!(before, *id.public(), "seed {seed}: the key changed");
                        }
                        used = Some(*id.public());
                    }
                    Err(e) => assert!(
                        !e.to_string().contains("does not hold a key"),
                        "seed {seed}: {e}"
                    ),
                }
                if rng.gen_bool(0.5) {
                    disk.crash();
                    disk.power_on();
                }
            }
            disk.set_faults(Faults::default());
            let first = identity(&*mount(), Some(dir))
                .unwrap_or_else(|e| panic!("seed {seed}: a working start fails: {e}"));
            if let Some(before) = used {
                assert_eq!(before, *first.public(), "seed {seed}: the key changed");
            }
            disk.crash();
            disk.power_on();
            let again = identity(&*mount(), Some(dir)).unwrap();
            assert_eq!(
                first.public(),
                again.public(),
                "seed {seed}: the key changed"
            );
        }
    }

    /// A start (in the node's order: the data directory opened, then the key) whose directory sync
    /// failed right after `node.key` took its name fails; the next start reads that key (the file is
    /// there), reports success and speaks with it, and nothing in it syncs the directory (the database
    /// and the log exist). A crash then loses the key file, and the start after it draws another key:
    /// two keys in use for one directory after starts that reported success. Invariant: a key a start
    /// used is the directory's key for good.
    #[test]
    fn a_key_read_by_a_start_that_succeeded_is_the_same_key_after_a_crash() {
        use crate::storage::sim::SimDisk;
        use crate::storage::tests::DirSyncFails;
        use crate::storage::Disk;
        let disk = SimDisk::new(4);
        let dir = Path::new("/sim/keyname");
        let mount = || -> Arc<dyn FileSystem> { Arc::new(disk.mount()) };
        // Start 1: the directory opens, the key file's directory sync fails.
        let opened = Disk::open_with(mount(), dir, Some("n"), 1).unwrap();
        let failing = DirSyncFails::new(disk.mount(), &[true]);
        assert!(identity(&failing, Some(dir)).is_err());
        drop(opened);
        // Start 2: succeeds with the key it finds.
        let opened = Disk::open_with(mount(), dir, Some("n"), 2).unwrap();
        let used = identity(&*mount(), Some(dir)).expect("start 2 works");
        drop(opened);
        disk.crash();
        disk.power_on();
        // Start 3.
        let _opened = Disk::open_with(mount(), dir, Some("n"), 3).unwrap();
        let after = identity(&*mount(), Some(dir)).expect("start 3 works");
        assert_eq!(
            used.public(),
            after.public(),
            "the directory's key changed after a start reported success with it"
        );
    }

    #[test]
    fn the_first_key_binds_an_id_and_another_is_refused_while_a_lease_is_held() {
        let b = book(&[], None);
        let (first, lease) = b.admit("g", proven(1, false)).unwrap();
        assert_eq!(first, KeyAdmitted::First);
        let (again, second_lease) = b.admit("g", proven(1, false)).unwrap();
        assert_eq!(again, KeyAdmitted::Known);
        assert_eq!(
            admitted(&b, "g", proven(2, true)),
            Err(KeyRefused::InUse([1; KEY_LEN]))
        );
        drop(lease);
        // Two links of one key: the id is live until the last closes.
        assert_eq!(
            admitted(&b, "g", proven(2, true)),
            Err(KeyRefused::InUse([1; KEY_LEN]))
        );
        drop(second_lease);
        let (replaced, _lease) = b.admit("g", proven(2, true)).unwrap();
        assert_eq!(
            replaced,
            KeyAdmitted::Replaced {
                old: [1; KEY_LEN],
                old_stable: false
            }
        );
        // The new key holds the id now; the old one is the stranger.
        assert_eq!(
            admitted(&b, "g", proven(1, false)),
            Err(KeyRefused::InUse([2; KEY_LEN]))
        );
    }

    #[test]
    fn a_lease_of_a_replaced_key_releases_nothing_of_its_successor() {
        let b = book(&[], None);
        let (_, old) = b.admit("g", proven(1, false)).unwrap();
        b.bound.lock().get_mut("g").unwrap().holders = 0;
        let (_, new) = b.admit("g", proven(2, false)).unwrap();
        drop(old);
        assert_eq!(
            admitted(&b, "g", proven(3, false)),
            Err(KeyRefused::InUse([2; KEY_LEN]))
        );
        drop(new);
    }

    #[test]
    fn a_pinned_id_takes_its_key_only_linked_or_not() {
        let b = book(&[("g".into(), [9; KEY_LEN])], None);
        let (known, lease) = b.admit("g", proven(9, false)).unwrap();
        assert_eq!(known, KeyAdmitted::Known);
        drop(lease);
        assert_eq!(
            admitted(&b, "g", proven(1, true)),
            Err(KeyRefused::Pinned([9; KEY_LEN]))
        );
    }

    #[test]
    fn bindings_and_the_node_key_survive_a_restart_in_the_data_directory() {
        let dir = std::env::temp_dir().join(format!("peer-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let dir = TempDir(dir);
        let first = identity(&RealFs, Some(dir.path())).unwrap();
        assert!(first.is_stable());
        assert_eq!(
            identity(&RealFs, Some(dir.path())).unwrap().public(),
            first.public()
        );
        let b = book(&[], Some(dir.path()));
        b.admit("g h", proven(1, true)).unwrap();
        b.admit("p", proven(3, false)).unwrap();
        drop(b);
        let b = book(&[], Some(dir.path()));
        assert_eq!(
            admitted(&b, "g h", proven(2, false)),
            Ok(KeyAdmitted::Replaced {
                old: [1; KEY_LEN],
                old_stable: true
            })
        );
        assert_eq!(admitted(&b, "p", proven(3, false)), Ok(KeyAdmitted::Known));
        drop(b);
        // The replacement was stored too: it is what the next run remembers.
        let b = book(&[], Some(dir.path()));
        assert_eq!(
            admitted(&b, "g h", proven(2, false)),
            Ok(KeyAdmitted::Known)
        );
    }

    /// A directory removed when the test ends.
    struct TempDir(PathBuf);

    impl TempDir {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
