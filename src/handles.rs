//! Process-wide tables of open peers and their buckets, indexed by the numbers JavaScript holds.
//! Handle 0 is never issued. A peer's handle is issued before its node exists (the node opens off the
//! JavaScript thread); until it does, and once it closes, calls on it fail with ECLOSED (index.js
//! makes none then). A closing peer's bucket slots are emptied at once; the peer's own slot goes when
//! JavaScript releases it, once its close (or failed open) was reported.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use peer_buckets_engine::Bucket;
use peer_buckets_engine::Node;
use tokio::runtime::{Handle, Runtime};

use crate::events::PeerEvents;

pub struct PeerEntry {
    /// `None` while the node opens, and for good when it could not.
    pub node: Option<Arc<Node>>,
    pub runtime: Runtime,
    pub events: PeerEvents,
    /// Bucket handles issued for this peer.
    pub buckets: Vec<u32>,
}

pub struct BucketSlot {
    pub bucket: Arc<Bucket>,
    pub node: Arc<Node>,
    /// Writes wait for the disk (a data directory in strict mode).
    pub strict: bool,
    pub runtime: Handle,
    pub events: PeerEvents,
}

struct PeerSlot {
    entry: PeerEntry,
    by_name: HashMap<String, u32>,
}

static PEERS: Mutex<Vec<Option<PeerSlot>>> = Mutex::new(Vec::new());
pub static BUCKETS: RwLock<Vec<Option<BucketSlot>>> = RwLock::new(Vec::new());

pub fn add_peer(entry: PeerEntry) -> u32 {
    let mut peers = PEERS.lock();
    if peers.is_empty() {
        peers.push(None);
    }
    peers.push(Some(PeerSlot {
        entry,
        by_name: HashMap::new(),
    }));
    (peers.len() - 1) as u32
}

/// Gives an opening peer its node; false when the slot is gone.
pub fn set_node(peer: u32, node: Arc<Node>) -> bool {
    match PEERS.lock().get_mut(peer as usize).and_then(Option::as_mut) {
        Some(slot) => {
            slot.entry.node = Some(node);
            true
        }
        None => false,
    }
}

/// A peer being closed, as `close_peer` hands it over.
pub struct Closing {
    /// Its node (taken: `None` when it never opened).
    pub node: Option<Arc<Node>>,
    /// Where its events go.
    pub events: PeerEvents,
    pub runtime: Handle,
    /// The handles its buckets had, emptied now (tables keyed by them drop their entries).
    pub buckets: Vec<u32>,
}

/// Starts closing a peer: its buckets' slots are emptied and no bucket is issued any more.
pub fn close_peer(peer: u32) -> Option<Closing> {
    let mut peers = PEERS.lock();
    let slot = peers.get_mut(peer as usize)?.as_mut()?;
    let mut buckets = BUCKETS.write();
    let closed: Vec<u32> = slot.entry.buckets.drain(..).collect();
    for &b in &closed {
        buckets[b as usize] = None;
    }
    slot.by_name.clear();
    Some(Closing {
        node: slot.entry.node.take(),
        events: slot.entry.events.clone(),
        runtime: slot.entry.runtime.handle().clone(),
        buckets: closed,
    })
}

pub fn remove_peer(peer: u32) -> Option<PeerEntry> {
    PEERS
        .lock()
        .get_mut(peer as usize)
        .and_then(Option::take)
        .map(|slot| slot.entry)
}

pub fn node(peer: u32) -> Option<Arc<Node>> {
    PEERS
        .lock()
        .get(peer as usize)
        .and_then(Option::as_ref)
        .and_then(|s| s.entry.node.clone())
}

/// The handle of the peer's bucket `name`, issuing one on first use.
pub fn bucket_handle(peer: u32, name: &str) -> Option<u32> {
    let mut peers = PEERS.lock();
    let slot = peers.get_mut(peer as usize)?.as_mut()?;
    if let Some(&h) = slot.by_name.get(name) {
        return Some(h);
    }
    let node = slot.entry.node.clone()?;
    let bucket = node.bucket(name);
    let mut buckets = BUCKETS.write();
    if buckets.is_empty() {
        buckets.push(None);
    }
    buckets.push(Some(BucketSlot {
        bucket,
        strict: node.is_strict(),
        node,
        runtime: slot.entry.runtime.handle().clone(),
        events: slot.entry.events.clone(),
    }));
    let h = (buckets.len() - 1) as u32;
    slot.by_name.insert(name.to_string(), h);
    slot.entry.buckets.push(h);
    Some(h)
}

/// Runs `f` on an open bucket without taking a reference count.
#[inline]
pub fn with_bucket<R>(bucket: u32, f: impl FnOnce(&Bucket) -> R) -> Option<R> {
    let table = BUCKETS.read();
    let slot = table.get(bucket as usize)?.as_ref()?;
    Some(f(&slot.bucket))
}

/// Runs `f` on an open bucket's slot.
#[inline]
pub fn with_slot<R>(bucket: u32, f: impl FnOnce(&BucketSlot) -> R) -> Option<R> {
    let table = BUCKETS.read();
    Some(f(table.get(bucket as usize)?.as_ref()?))
}

pub fn bucket_and_runtime(bucket: u32) -> Option<(Arc<Bucket>, Handle)> {
    let table = BUCKETS.read();
    let slot = table.get(bucket as usize)?.as_ref()?;
    Some((slot.bucket.clone(), slot.runtime.clone()))
}

pub fn bucket_and_node(bucket: u32) -> Option<(Arc<Bucket>, Arc<Node>)> {
    let table = BUCKETS.read();
    let slot = table.get(bucket as usize)?.as_ref()?;
    Some((slot.bucket.clone(), slot.node.clone()))
}

pub fn peer_events_for_bucket(bucket: u32) -> Option<PeerEvents> {
    let table = BUCKETS.read();
    Some(table.get(bucket as usize)?.as_ref()?.events.clone())
}
