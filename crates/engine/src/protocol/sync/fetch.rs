//! `Fetches`: pending `fetch()` calls (a part of a bucket asked of one peer) and their completion;
//! `FetchTouches`: the touch registers of a fetch answer held until the values they may have
//! expired arrive, so that each key lands in one step (never shown live for a moment under a touch
//! that an answer's value replaces). What is held is never claimed: a touch enters the context
//! only when it is merged, and one held by a link that closes comes again by the sync.

use super::{Local, Session};
use crate::error::LinkError;
use crate::hash::HashMap;
use crate::replication::bucket::Bucket;
use crate::replication::ranges::SeqRanges;
use crate::replication::replica::Origin;
use crate::replication::store::Incoming;
use crate::replication::store::Write;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

/// The most touch registers held for one fetch: past it they are merged as they come (each key is
/// then announced as its frames land), so a peer that sends touches without end holds no memory.
pub(super) const HELD_TOUCHES_MAX: usize = 16 * 1024;

/// The touch registers one fetch holds, per key, with their origins.
type HeldByKey = HashMap<Arc<str>, Vec<(Origin, Write)>>;

/// Touch registers of the fetches answered on one link, per fetch and key, not merged yet, with
/// how many each fetch holds.
#[derive(Default)]
pub(super) struct FetchTouches {
    held: BTreeMap<u64, (HeldByKey, usize)>,
}

impl FetchTouches {
    /// Holds the touches of one reply frame of fetch `id`, of `origin`; returns the frame's other
    /// writes, and whether the fetch holds too many touches and must merge them now.
    pub(super) fn hold(
        &mut self,
        id: u64,
        origin: &Origin,
        writes: Vec<Write>,
    ) -> (Vec<Write>, bool) {
        let (touches, values): (Vec<Write>, Vec<Write>) =
            writes.into_iter().partition(Write::is_touch);
        let (held, count) = self.held.entry(id).or_default();
        *count += touches.len();
        let full = *count > HELD_TOUCHES_MAX;
        for t in touches {
            held.entry(t.key.clone())
                .or_default()
                .push((origin.clone(), t));
        }
        (values, full)
    }

    /// The touches held for fetch `id` of the keys of `values`, to merge with them in one step.
    pub(super) fn take_for(&mut self, id: u64, values: &[Write]) -> Vec<(Origin, Write)> {
        let Some((held, count)) = self.held.get_mut(&id) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for v in values {
            if let Some(touches) = held.remove(&v.key) {
                out.extend(touches);
            }
        }
        *count -= out.len();
        out
    }

    /// Every touch still held for fetch `id` (its answer ended, or it holds too many), by origin.
    pub(super) fn take_all(&mut self, id: u64) -> BTreeMap<Origin, Vec<Write>> {
        let mut out: BTreeMap<Origin, Vec<Write>> = BTreeMap::new();
        let held = self.held.remove(&id).map(|(held, _)| held);
        for (_, touches) in held.into_iter().flatten() {
            for (o, t) in touches {
                out.entry(o).or_default().push(t);
            }
        }
        out
    }
}

impl Session {
    /// Merges one reply frame of fetch `id` (`origin`'s writes): its touch registers are held, and
    /// its values land in one step with the held touches of their keys, touches first (an answer
    /// sends touch registers first, so a value lands under the touch that may have expired it; one
    /// step, so a touch that lands first on an older value held here, expired, never shows it live
    /// before the answer's value replaces it).
    pub(super) fn merge_fetched(
        &mut self,
        local: &Local,
        bucket: &Bucket,
        id: u64,
        origin: &Origin,
        writes: Vec<Write>,
    ) -> Result<(), LinkError> {
        let (values, full) = self.fetch_touches.hold(id, origin, writes);
        if full {
            for (o, touches) in self.fetch_touches.take_all(id) {
                local.merge(bucket, &o, touches, &SeqRanges::new())?;
            }
        }
        if !values.is_empty() {
            let touches = self.fetch_touches.take_for(id, &values);
            local.merge_chunk(bucket, origin, Incoming::registers(values, touches))?;
        }
        Ok(())
    }

    /// Merges the touches fetch `id` still holds, once its answer ended: those of keys it sent no
    /// value of (the value is held here, or comes by the sync).
    pub(super) fn merge_fetched_touches(
        &mut self,
        local: &Local,
        bucket: &str,
        id: u64,
    ) -> Result<(), LinkError> {
        let held = self.fetch_touches.take_all(id);
        if held.is_empty() || self.refuses(local, bucket) {
            return Ok(());
        }
        let Some(b) = local.remote_bucket(bucket) else {
            return Ok(());
        };
        for (o, touches) in held {
            local.merge(&b, &o, touches, &SeqRanges::new())?;
        }
        Ok(())
    }
}
