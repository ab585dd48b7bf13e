//! Which static key speaks for which peer id on keyed links, and this node's own key.
//!
//! A keyed handshake (`secure`) proves the other end's static key; its hello then names an id. The
//! book decides whether that key may speak as that id, so a member holding the cluster secret cannot
//! take over another peer's links by saying hello under its id (with a higher incarnation, say):
//! - an id pinned by the operator (`Config::peer_keys`) is that key's alone, for good;
//! - otherwise the first key proven under an id is bound to it (in memory, and appended to
//!   `peer-keys` in the data directory when there is one, so a restart remembers it);
//! - another key for a bound id is refused when the bound key is stable (its peer keeps it in a data
//!   directory: a new one is an impersonation, or a lost directory the operator must clear), while the
//!   id is linked, or within `quiet` (the handshake timeout) of the bound key's last proof; past that, a key drawn per process
//!   (a peer without a data directory, restarted) is replaced, and stays marked as drawn per process,
//!   so whoever claimed it cannot lock the real one out for good.
//!
//! This node's own key pair lives in `node.key` in the data directory (created on first start), else
//! it is drawn for the process. Keys are written as 64 hex digits. Open links (no secret) prove no
//! key, and the book is not asked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::disk::fs::FileSystem;
use crate::error::Error;
use crate::secure::{Identity, Proven, PublicKey, KEY_LEN};

/// The file of this node's private key in a data directory.
pub const NODE_KEY_FILE: &str = "node.key";
/// The file of the bindings learned on first sight in a data directory, one per line, appended.
pub const PEER_KEYS_FILE: &str = "peer-keys";

/// A public key as 64 hex digits.
pub fn to_hex(key: &[u8; KEY_LEN]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 hex digits as a key; `None` for anything else.
pub fn from_hex(text: &str) -> Option<[u8; KEY_LEN]> {
    let text = text.trim();
    if text.len() != 2 * KEY_LEN || !text.is_ascii() {
        return None;
    }
    let mut key = [0u8; KEY_LEN];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

fn storage(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("cannot {what} {}: {e}", path.display()))
}

/// This node's key pair: the one in `dir` (created there on first start), or one for this process.
pub fn identity(fs: &dyn FileSystem, dir: Option<&Path>) -> Result<Identity, Error> {
    let Some(dir) = dir else {
        return Ok(Identity::generate());
    };
    let path = dir.join(NODE_KEY_FILE);
    if let Some(text) = fs.read(&path).map_err(|e| storage("read", &path, e))? {
        let private = std::str::from_utf8(&text)
            .ok()
            .and_then(from_hex)
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
    let file = fs.open(&path).map_err(|e| storage("create", &path, e))?;
    file.write_at(0, format!("{}\n", to_hex(identity.private())).as_bytes())
        .and_then(|()| file.sync_data())
        .and_then(|()| fs.sync_dir(dir))
        .map_err(|e| storage("write", &path, e))?;
    Ok(identity)
}

#[derive(Clone, Copy)]
struct Bound {
    key: PublicKey,
    stable: bool,
    proven_at: Instant,
}

/// Why a key may not speak as an id.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeyRefused {
    #[error("the id is pinned to the key {}", to_hex(.0))]
    Pinned(PublicKey),
    #[error("the id proved the key {} before, which its peer keeps in a data directory", to_hex(.0))]
    Stable(PublicKey),
    #[error("the id is linked, or was just now, with the key {}", to_hex(.0))]
    InUse(PublicKey),
}

/// What the book did with a key it let speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAdmitted {
    /// The key bound to the id (or pinned).
    Known,
    /// The first key seen for the id, now bound to it.
    First,
    /// A new key replaced one drawn per process (that peer restarted).
    Replaced(PublicKey),
}

/// The id -> key bindings of one node.
pub struct KeyBook {
    pinned: HashMap<Arc<str>, PublicKey>,
    bound: Mutex<HashMap<Arc<str>, Bound>>,
    /// Where learned bindings are appended: the file system and the `peer-keys` path.
    file: Option<(Arc<dyn FileSystem>, PathBuf)>,
    /// A key drawn per process is replaced only this long after the bound key last proved itself,
    /// so two handshakes racing for one id (the real peer's and a forger's) cannot both bind it.
    quiet: Duration,
}

impl KeyBook {
    /// The book of pinned keys and, with a data directory, the bindings stored in it; `quiet` as
    /// above.
    pub fn open(
        pinned: &[(String, PublicKey)],
        fs: Arc<dyn FileSystem>,
        dir: Option<&Path>,
        quiet: Duration,
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
                    let (Some(key), Ok(stable)) = (from_hex(key), kind.parse::<Kind>()) else {
                        continue;
                    };
                    let bound_at = Instant::now()
                        .checked_sub(quiet)
                        .unwrap_or_else(Instant::now);
                    bound.insert(
                        Arc::from(id),
                        Bound {
                            key,
                            stable: stable.0,
                            proven_at: bound_at,
                        },
                    );
                }
                Some((fs, path))
            }
            None => None,
        };
        Ok(KeyBook {
            pinned: pinned
                .iter()
                .map(|(id, key)| (Arc::from(id.as_str()), *key))
                .collect(),
            bound: Mutex::new(bound),
            file,
            quiet,
        })
    }

    /// Whether the key `proven` may speak as `id`; `linked`: a link of `id` is up. A key it lets
    /// speak is bound to `id` from now on.
    pub fn admit(&self, id: &str, proven: Proven, linked: bool) -> Result<KeyAdmitted, KeyRefused> {
        if let Some(pinned) = self.pinned.get(id) {
            return if *pinned == proven.key {
                Ok(KeyAdmitted::Known)
            } else {
                Err(KeyRefused::Pinned(*pinned))
            };
        }
        let now = Instant::now();
        let mut bound = self.bound.lock();
        let (admitted, entry) = match bound.get(id).copied() {
            Some(b) if b.key == proven.key => {
                let entry = Bound {
                    key: b.key,
                    stable: b.stable || proven.stable,
                    proven_at: now,
                };
                bound.insert(id.into(), entry);
                if entry.stable == b.stable {
                    return Ok(KeyAdmitted::Known);
                }
                (KeyAdmitted::Known, entry)
            }
            Some(b) if b.stable => return Err(KeyRefused::Stable(b.key)),
            Some(b) if linked || now.duration_since(b.proven_at) < self.quiet => {
                return Err(KeyRefused::InUse(b.key))
            }
            Some(b) => (
                KeyAdmitted::Replaced(b.key),
                Bound {
                    key: proven.key,
                    stable: false,
                    proven_at: now,
                },
            ),
            None => (
                KeyAdmitted::First,
                Bound {
                    key: proven.key,
                    stable: proven.stable,
                    proven_at: now,
                },
            ),
        };
        bound.insert(id.into(), entry);
        drop(bound);
        self.store(id, &entry);
        Ok(admitted)
    }

    /// Appends a binding to the data directory's file. A failure is logged, not fatal: the binding
    /// holds in memory, and the next run learns it again on first sight.
    fn store(&self, id: &str, entry: &Bound) {
        let Some((fs, path)) = &self.file else {
            return;
        };
        let kind = if entry.stable { "stable" } else { "process" };
        let line = format!("{} {kind} {id}\n", to_hex(&entry.key));
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
    use crate::disk::fs::RealFs;

    const QUIET: Duration = Duration::from_secs(5);

    fn proven(byte: u8, stable: bool) -> Proven {
        Proven {
            key: [byte; KEY_LEN],
            stable,
        }
    }

    fn book(pinned: &[(String, PublicKey)], dir: Option<&Path>) -> KeyBook {
        KeyBook::open(pinned, Arc::new(RealFs), dir, QUIET).unwrap()
    }

    #[test]
    fn the_first_key_binds_an_id_and_another_is_refused_while_it_is_linked() {
        let b = book(&[], None);
        assert_eq!(
            b.admit("g", proven(1, false), false),
            Ok(KeyAdmitted::First)
        );
        assert_eq!(b.admit("g", proven(1, false), true), Ok(KeyAdmitted::Known));
        assert_eq!(
            b.admit("g", proven(2, false), true),
            Err(KeyRefused::InUse([1; KEY_LEN]))
        );
        // Not linked, but proven a moment ago: a racing handshake cannot rebind it either.
        assert_eq!(
            b.admit("g", proven(2, false), false),
            Err(KeyRefused::InUse([1; KEY_LEN]))
        );
    }

    #[test]
    fn a_stable_key_is_never_replaced_and_a_per_process_one_is_once_it_is_quiet() {
        let b = book(&[], None);
        b.admit("s", proven(1, true), false).unwrap();
        b.admit("p", proven(1, false), false).unwrap();
        for entry in b.bound.lock().values_mut() {
            entry.proven_at = Instant::now().checked_sub(QUIET).unwrap();
        }
        assert_eq!(
            b.admit("s", proven(2, true), false),
            Err(KeyRefused::Stable([1; KEY_LEN]))
        );
        assert_eq!(
            b.admit("p", proven(2, true), false),
            Ok(KeyAdmitted::Replaced([1; KEY_LEN]))
        );
        // The replacement stays marked per process: whoever took the id may lose it the same way.
        assert!(!b.bound.lock()["p"].stable);
    }

    #[test]
    fn a_pinned_id_takes_its_key_only() {
        let b = book(&[("g".into(), [9; KEY_LEN])], None);
        assert_eq!(
            b.admit("g", proven(9, false), false),
            Ok(KeyAdmitted::Known)
        );
        assert_eq!(
            b.admit("g", proven(1, true), false),
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
        b.admit("g h", proven(1, true), false).unwrap();
        b.admit("p", proven(3, false), false).unwrap();
        drop(b);
        let b = book(&[], Some(dir.path()));
        assert_eq!(
            b.admit("g h", proven(2, true), false),
            Err(KeyRefused::Stable([1; KEY_LEN]))
        );
        assert_eq!(b.admit("p", proven(3, false), true), Ok(KeyAdmitted::Known));
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

    #[test]
    fn keys_read_back_from_hex() {
        let key = [0xab; KEY_LEN];
        assert_eq!(from_hex(&to_hex(&key)), Some(key));
        assert_eq!(from_hex("ab"), None);
        assert_eq!(from_hex(&"zz".repeat(KEY_LEN)), None);
    }
}
