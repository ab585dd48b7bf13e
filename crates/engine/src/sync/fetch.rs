//! `Fetches`: pending `fetch()` calls (a part of a bucket asked of one peer) and their completion.

use crate::hash::HashMap;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A pending fetch: the link it was asked on, the entries counted so far, and where the total goes.
pub(super) type PendingFetch = (u64, usize, tokio::sync::oneshot::Sender<usize>);

/// Pending `fetch()` calls of a replica.
#[derive(Default)]
pub struct Fetches {
    pub(super) next: AtomicU64,
    pub(super) pending: Mutex<HashMap<u64, PendingFetch>>,
}

impl Fetches {
    /// Registers a fetch asked on link `link`.
    pub fn start(&self, link: u64) -> (u64, tokio::sync::oneshot::Receiver<usize>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending.lock().insert(id, (link, 0, tx));
        (id, rx)
    }

    /// Ends the fetches asked on link `link`, which closed: their receivers see the sender gone,
    /// since no answer can come any more.
    pub fn link_closed(&self, link: u64) {
        self.pending.lock().retain(|_, (on, _, _)| *on != link);
    }

    pub fn progress(&self, id: u64, count: usize, done: bool) {
        let mut pending = self.pending.lock();
        if done {
            if let Some((_, total, tx)) = pending.remove(&id) {
                let _ = tx.send(total + count);
            }
        } else if let Some((_, total, _)) = pending.get_mut(&id) {
            *total += count;
        }
    }
}
