//! Process-wide tables of open peers and their buckets, indexed by the numbers JavaScript holds.
//! Handle 0 is never issued. A closed peer's slots are emptied, so later calls fail with ECLOSED.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use peer_buckets_engine::bucket::Bucket;
use peer_buckets_engine::node::Node;
use tokio::runtime::{Handle, Runtime};

use crate::events::PeerEvents;

pub struct PeerEntry {
    pub node: Arc<Node>,
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
        .map(|s| s.entry.node.clone())
}

/// The handle of the peer's bucket `name`, issuing one on first use.
pub fn bucket_handle(peer: u32, name: &str) -> Option<u32> {
    let mut peers = PEERS.lock();
    let slot = peers.get_mut(peer as usize)?.as_mut()?;
    if let Some(&h) = slot.by_name.get(name) {
        return Some(h);
    }
    let bucket = slot.entry.node.bucket(name);
    let mut buckets = BUCKETS.write();
    if buckets.is_empty() {
        buckets.push(None);
    }
    buckets.push(Some(BucketSlot {
        bucket,
        strict: slot.entry.node.is_strict(),
        node: slot.entry.node.clone(),
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
