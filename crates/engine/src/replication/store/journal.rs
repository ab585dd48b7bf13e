//! What changed since a durable backend last persisted: the keys, contexts and markers to write.
//!
//! Invariant: a drain returns everything changed since the previous drain, read under the store's lock,
//! so what is persisted is a state the store really was in.

use super::{CollectedRecord, Entry};
use crate::replication::clock::Hlc;
use crate::replication::ranges::{Seq, SeqRanges};
use crate::replication::replica::Origin;
use std::sync::Arc;

/// Keys, contexts and markers changed since the last drain.
#[derive(Default)]
pub(super) struct Journal {
    pub(super) keys: crate::hash::HashSet<Arc<str>>,
    pub(super) contexts: std::collections::BTreeSet<Origin>,
    pub(super) markers: Vec<(Origin, Seq, Option<Arc<str>>)>,
    pub(super) collected: crate::hash::HashSet<u64>,
    pub(super) beyond: bool,
}

/// What a durable backend must write to have the store's state on disk: entries to put (or remove,
/// when `None`), contexts to put, superseded markers to put (or remove).
#[derive(Debug, Default)]
pub struct Changes {
    pub entries: Vec<(Arc<str>, Option<Entry>)>,
    pub contexts: Vec<(Origin, SeqRanges)>,
    pub markers: Vec<(Origin, Seq, Option<Arc<str>>)>,
    /// Collected-register records to put (or remove, when `None`), by fingerprint.
    pub collected: Vec<(u64, Option<CollectedRecord>)>,
    /// The newest forgotten collected time, when it moved.
    pub collected_beyond: Option<Hlc>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.contexts.is_empty()
            && self.markers.is_empty()
            && self.collected.is_empty()
            && self.collected_beyond.is_none()
    }
}
