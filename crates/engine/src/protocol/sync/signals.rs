//! Who to wake after a change: each link's writer, and the durable store's flusher.
//!
//! Invariant: a local write wakes every link writer after the write is in the store, so a writer that
//! wakes always finds what woke it; it is counted (`local_writes`) before the wake, so a writer that
//! read the count before a pass and finds it unchanged after missed no write.

use crate::replication::bucket::WriteSignal;
use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// The wake-up flag of one link's writer.
#[derive(Default)]
pub struct LinkSignal {
    pub(super) pending: AtomicBool,
    pub(super) notify: Notify,
}

impl LinkSignal {
    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }

    /// Waits for a wake-up and clears it.
    pub async fn wait(&self) {
        if !self.pending.swap(false, Ordering::AcqRel) {
            self.notify.notified().await;
            self.pending.store(false, Ordering::Release);
        }
    }
}

/// Something to ring after every change: the durable store's flusher (`disk::flusher::Doorbell`). A trait, so
/// that the protocol does not depend on the disk, which depends on it.
pub trait Ring: Send + Sync {
    fn ring(&self);
}

/// The link writers to wake after a local write, and the durable store's flusher to ring after any
/// change.
#[derive(Default)]
pub struct Signals {
    pub(super) links: RwLock<Vec<Arc<LinkSignal>>>,
    pub(super) flusher: std::sync::OnceLock<Arc<dyn Ring>>,
    /// Local writes so far (`local_writes`).
    pub(super) writes: AtomicU64,
}

impl Signals {
    pub fn add(&self, s: Arc<LinkSignal>) {
        self.links.write().push(s);
    }
    pub fn remove(&self, s: &Arc<LinkSignal>) {
        self.links.write().retain(|x| !Arc::ptr_eq(x, s));
    }

    /// Where to ring after every change from now on (a durable store's flusher).
    pub fn set_flusher(&self, doorbell: Arc<dyn Ring>) {
        let _ = self.flusher.set(doorbell);
    }

    /// How many local writes (own seqs taken) woke the writers so far: a pass over the buckets that
    /// read it first saw every write it counts.
    pub fn local_writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }
}

impl WriteSignal for Signals {
    fn local_write(&self) {
        self.writes.fetch_add(1, Ordering::SeqCst);
        for s in self.links.read().iter() {
            s.wake();
        }
        self.remote_change();
    }

    fn remote_change(&self) {
        if let Some(doorbell) = self.flusher.get() {
            doorbell.ring();
        }
    }
}
