//! The N-API face of counters (`peer.counter()`): a counter is its hidden bucket's handle, with this
//! process's `Counter` (and its token) kept beside it. The rules live in the engine's `counter`
//! module; this file only converts arguments and stores the registers it asks for, as a bucket write
//! does (waiting for the ack level asked for).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use parking_lot::RwLock;
use peer_buckets_engine::counter::{self, Counter, RegisterWrite};
use peer_buckets_engine::{AckLevel as EngineAckLevel, Registered};

use crate::contract::{closed, AckLevel, Code, Result};
use crate::handles;
use crate::MAX_ACK_TIMEOUT_MS;

/// Counters by their bucket handle (a closed peer's handles fail before this table is read).
static COUNTERS: RwLock<Option<HashMap<u32, Arc<Counter>>>> = RwLock::new(None);

fn counter_of(handle: u32) -> Result<Arc<Counter>> {
    handles::with_bucket(handle, |_| ()).ok_or_else(closed)?;
    COUNTERS
        .read()
        .as_ref()
        .and_then(|m| m.get(&handle).cloned())
        .ok_or_else(closed)
}

/// Drops the counters of closed buckets' handles (a closed peer's), with what they hold: their
/// bucket and per-key index would otherwise stay for the life of the process.
pub fn forget(handles: &[u32]) {
    if let Some(map) = COUNTERS.write().as_mut() {
        for h in handles {
            map.remove(h);
        }
    }
}

/// Stores one register: a plain write, or one that waits for `ack`; 0 when settled, else a ticket.
fn store(handle: u32, w: RegisterWrite, ack: u32, timeout_ms: f64) -> Result<f64> {
    let level = AckLevel::from_code(ack)
        .ok_or_else(|| Error::new(Code::InvalidArg, format!("unknown ack level {ack}")))?;
    let (bucket, node) = handles::bucket_and_node(handle).ok_or_else(closed)?;
    if level == EngineAckLevel::Local && !node.is_strict() {
        bucket.write(w.key, Some(w.value), w.lifetime);
        return Ok(0.0);
    }
    let timeout = Duration::from_millis(timeout_ms.clamp(0.0, MAX_ACK_TIMEOUT_MS) as u64);
    match node
        .write_acked(&bucket, w.key, Some(w.value), w.lifetime, level, timeout)
        .1
    {
        Registered::Met(_) => Ok(0.0),
        Registered::Pending(ticket) => Ok(ticket as f64),
    }
}

/// The handle of counter `name` of a peer (its hidden bucket's handle; the same for the same name).
#[napi(catch_unwind)]
pub fn peer_counter(peer: u32, name: String) -> Result<u32> {
    let node = handles::node(peer).ok_or_else(closed)?;
    let handle = handles::bucket_handle(peer, &counter::bucket_name(&name)).ok_or_else(closed)?;
    let (bucket, _) = handles::bucket_and_node(handle).ok_or_else(closed)?;
    COUNTERS
        .write()
        .get_or_insert_with(HashMap::new)
        .entry(handle)
        .or_insert_with(|| {
            Arc::new(Counter::new(
                bucket,
                node.clock().clone(),
                counter::fresh_token(),
            ))
        });
    Ok(handle)
}

/// Adds `by` (negative: subtracts) to `key`, opening a window of `ttl_ms` (0: none) if none is live;
/// returns `[value seen here after it, ack ticket or 0]`.
#[napi(catch_unwind)]
pub fn counter_add(
    handle: u32,
    key: String,
    by: f64,
    ttl_ms: f64,
    ack: u32,
    timeout_ms: f64,
) -> Result<Vec<f64>> {
    let c = counter_of(handle)?;
    let (ticket, value) = c.add(&key, by as i64, ttl_ms.max(0.0) as u64, |w| {
        store(handle, w, ack, timeout_ms)
    });
    Ok(vec![value as f64, ticket?])
}

#[napi(catch_unwind)]
pub fn counter_get(handle: u32, key: String) -> Result<f64> {
    Ok(counter_of(handle)?.value(&key) as f64)
}

/// Clears the increments of `key` seen here; returns the ack ticket, or 0 when settled (or when
/// there was nothing to clear).
#[napi(catch_unwind)]
pub fn counter_reset(handle: u32, key: String, ack: u32, timeout_ms: f64) -> Result<f64> {
    let c = counter_of(handle)?;
    c.reset(&key, |w| store(handle, w, ack, timeout_ms))
        .unwrap_or(Ok(0.0))
}

/// When the window that new increments of `key` join ends (ms since the epoch), if one is live.
#[napi(catch_unwind)]
pub fn counter_expires_at(handle: u32, key: String) -> Result<Option<f64>> {
    Ok(counter_of(handle)?.expires_at(&key).map(|t| t as f64))
}

/// Keys starting with `prefix` whose value is not 0.
#[napi(catch_unwind)]
pub fn counter_keys(handle: u32, prefix: String) -> Result<Vec<String>> {
    Ok(counter_of(handle)?.keys(&prefix))
}

/// The counter key a register key of the hidden bucket belongs to (for change events).
#[napi(catch_unwind)]
pub fn counter_key_of(stored: String) -> Option<String> {
    counter::split_key(&stored).map(|(k, _)| k.to_string())
}
