//! Replica identity: who wrote a value.
//!
//! A replica is one run of one node: `(node id, incarnation)`. A node that restarts without its data draws
//! a new incarnation, so its sequence numbers start again from 1 under a new replica and can never be
//! mistaken for the old run's. Within a process every replica is interned once (`ReplicaTable`), so an
//! `Origin` is a cheap pointer that compares by address on the hot path.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::hash::HashMap;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

/// One run of one node. Ordered by node id, then incarnation: the tie-break of last-writer-wins.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReplicaId {
    pub node: Arc<str>,
    pub incarnation: u64,
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{:x}", self.node, self.incarnation)
    }
}

/// An interned `ReplicaId`. Two origins from the same table are equal exactly when they point to the
/// same allocation, so equality and hashing use the address.
#[derive(Clone)]
pub struct Origin(Arc<ReplicaId>);

impl Origin {
    pub fn id(&self) -> &ReplicaId {
        &self.0
    }
    pub fn node(&self) -> &Arc<str> {
        &self.0.node
    }
    /// The interned replica's address: it names the replica for as long as its table lives (a table
    /// never lets an origin go), so a reader may keep it to tell origins apart without the origin.
    pub fn addr(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }
}

impl PartialEq for Origin {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for Origin {}

impl Hash for Origin {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state)
    }
}

impl PartialOrd for Origin {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Origin {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            std::cmp::Ordering::Equal
        } else {
            self.0.cmp(&other.0)
        }
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The process-local intern table of replicas.
#[derive(Default)]
pub struct ReplicaTable {
    by_id: RwLock<HashMap<ReplicaId, Origin>>,
}

impl ReplicaTable {
    pub fn new() -> Self {
        ReplicaTable::default()
    }

    pub fn intern(&self, id: &ReplicaId) -> Origin {
        if let Some(o) = self.by_id.read().get(id) {
            return o.clone();
        }
        self.by_id
            .write()
            .entry(id.clone())
            .or_insert_with(|| Origin(Arc::new(id.clone())))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_gives_one_origin_per_replica() {
        let t = ReplicaTable::new();
        let a = ReplicaId {
            node: "a".into(),
            incarnation: 1,
        };
        let a2 = ReplicaId {
            node: "a".into(),
            incarnation: 2,
        };
        assert_eq!(t.intern(&a), t.intern(&a.clone()));
        assert_ne!(t.intern(&a), t.intern(&a2));
        assert!(t.intern(&a) < t.intern(&a2));
    }
}
