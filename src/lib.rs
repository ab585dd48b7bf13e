//! N-API bindings for peer-buckets: argument conversion, handles and the event pumps, nothing else.
//! The engine (`peer-buckets-engine`) holds every rule; `index.js` holds the JavaScript face.
//!
//! Peers and buckets are numbered handles into process-wide tables, so every call is a free function
//! taking a number (a class method or an `External` costs several times more per call); the hottest
//! ones (get, has, set, delete) are plain Node-API callbacks (`hot`). Keys are read into a stack
//! buffer and values are written straight from the store into a JS string or Buffer, so a read does
//! one copy each way.

mod contract;
mod convert;
pub mod counter;
mod events;
mod handles;
pub mod hot;
mod logging;
pub mod paging;

use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use peer_buckets_engine::Clock;
use peer_buckets_engine::Durability;
use peer_buckets_engine::Error as EngineError;
use peer_buckets_engine::Lifetime;
use peer_buckets_engine::Registered;
use peer_buckets_engine::LATENCY_BOUNDS_MS;
use peer_buckets_engine::{Config, LinkStats as EngineLinkStats, Node, Stats};

use contract::{closed, internal, AckLevel, Code, PeerEvent, Result};
use convert::{KeyArg, KindSlot, RawValue};
use events::EngineEvent;
use handles::{with_bucket, PeerEntry};

#[napi(object)]
pub struct PeerInfo {
    pub id: String,
    pub address: String,
    pub state: String,
}

#[napi(object)]
pub struct LinkStats {
    pub id: String,
    pub address: String,
    pub lag_ops: f64,
    pub lag_ms: f64,
    pub bytes_sent: f64,
    pub bytes_received: f64,
    /// The frames behind `bytes_sent` and `bytes_received` before compression and after inflation.
    pub bytes_sent_uncompressed: f64,
    pub bytes_received_uncompressed: f64,
    /// Answers (fetch, pull and held replies) queued for the peer and not yet sent, in bytes.
    pub send_queue_bytes: f64,
    /// Writes that arrived on this link, applied or already held.
    pub writes_received: f64,
    /// Time spent applying them, in ms.
    pub apply_ms: f64,
}

/// How long writes waited for one ack level: a histogram as Prometheus counts it.
#[napi(object)]
pub struct AckLatency {
    /// Upper bounds of the buckets, in ms (`LATENCY_BOUNDS_MS`).
    pub le_ms: Vec<f64>,
    /// Writes that waited at most each bound (cumulative, as `le_ms`).
    pub counts: Vec<f64>,
    /// Writes counted, slower than the last bound included.
    pub count: f64,
    pub sum_ms: f64,
}

/// What `stats()` returns; `lib/stats.js` declares each figure's meaning and metric.
#[napi(object)]
pub struct PeerStats {
    pub id: String,
    pub buckets: u32,
    pub keys: u32,
    pub peers: u32,
    /// The cluster size 'majority' and 'all' count, this peer included.
    pub cluster_size: u32,
    pub ops_applied: f64,
    pub bytes_sent: f64,
    pub bytes_received: f64,
    pub clock_skew_refused: f64,
    pub pulls_sent: f64,
    pub pulls_served: f64,
    pub catchup_writes_received: f64,
    pub protocol_errors: f64,
    pub tombstones: u32,
    pub tombstones_collected: f64,
    pub full_resyncs: f64,
    pub collected_remembered: u32,
    pub stand_in_tombstones: f64,
    pub divergences: f64,
    pub repairs: f64,
    pub repairs_changed: f64,
    pub buckets_refused: f64,
    pub handshakes_rejected: f64,
    pub handshakes_evicted: f64,
    /// Warnings emitted so far, by code ('EAUTH', ...), every code present.
    pub warnings: std::collections::BTreeMap<String, f64>,
    pub replication: Vec<LinkStats>,
    pub local_writes: f64,
    pub ack_timeouts: f64,
    /// Per ack level ('local', 'one', 'majority', 'all'), writes that waited for it.
    pub ack_latency: std::collections::BTreeMap<String, AckLatency>,
    /// Live keys per bucket name.
    pub bucket_keys: std::collections::BTreeMap<String, u32>,
}

/// Options of `peerOpen`, checked by index.js.
#[napi(object)]
pub struct OpenOptions {
    /// Node id; random (or the one kept in `data_dir`) when absent.
    pub id: Option<String>,
    pub listen: String,
    pub seeds: Vec<String>,
    /// `ip:port` to advertise in hellos instead of the bound address.
    pub advertise: Option<String>,
    pub max_clock_skew_ms: f64,
    pub tombstone_min_age_ms: Option<f64>,
    pub member_timeout_ms: Option<f64>,
    pub remember_collected_ms: Option<f64>,
    /// Most buckets before peers' new ones are ignored, checked by lib/validation.js.
    pub max_buckets: Option<f64>,
    /// Cluster secrets, checked by index.js: the first is dialed with, each is accepted.
    pub secrets: Option<Vec<Buffer>>,
    /// Without secrets: accept peers from any address, not only loopback ones, when listening beyond
    /// loopback.
    pub insecure: Option<bool>,
    /// Send frames compressed where that makes them shorter (the default).
    pub compression: Option<bool>,
    /// Persist in this directory (memory only when absent).
    pub data_dir: Option<String>,
    /// With `data_dir`: "strict" (the default) or "relaxed".
    pub durability: Option<String>,
    /// Log lines go to the JavaScript `logger` (as `log` events) instead of stderr.
    pub logger: Option<bool>,
    /// How often seed host names are resolved again.
    pub resolve_interval_ms: Option<f64>,
    /// With secrets: ids only the given static key may speak for, checked by lib/validation.js.
    pub peer_keys: Option<Vec<PeerKey>>,
}

/// One pinned id of `OpenOptions::peer_keys`: the id and its public key as 64 hex digits.
#[napi(object)]
pub struct PeerKey {
    pub id: String,
    pub key: String,
}

/// Environment variable that shifts the engine's physical clock by this many milliseconds (may be
/// negative). For tests and the chaos harness only: it simulates a machine whose clock is off.
const CLOCK_OFFSET_ENV: &str = "PEER_BUCKETS_TEST_CLOCK_OFFSET_MS";

fn ms(v: f64) -> Duration {
    Duration::from_millis(v.max(0.0) as u64)
}

/// The `code` `ready()` rejects with for an engine error.
fn open_error_code(e: &EngineError) -> &'static str {
    match e {
        EngineError::Listen { source, .. } => match source.kind() {
            std::io::ErrorKind::AddrInUse => "EADDRINUSE",
            std::io::ErrorKind::AddrNotAvailable => "EADDRNOTAVAIL",
            std::io::ErrorKind::PermissionDenied => "EACCES",
            _ => "ELISTEN",
        },
        EngineError::BadAddress(_) => "EINVALIDADDRESS",
        EngineError::Closed => "ECLOSED",
        EngineError::NotConnected(_) => "ENOTCONN",
        EngineError::DataDirInUse(_) => "EDATADIRINUSE",
        EngineError::Storage(_) => "ESTORAGE",
        EngineError::Secret(_) => "EINVAL",
    }
}

fn config_of(options: OpenOptions) -> Result<Config> {
    let peer_keys = options
        .peer_keys
        .into_iter()
        .flatten()
        .map(|p| match peer_buckets_engine::key_from_hex(&p.key) {
            Some(key) => Ok((p.id, key)),
            None => Err(Error::new(
                Code::InvalidArg,
                format!("the key pinned for {} is not 64 hex digits", p.id),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    let clock = Arc::new(Clock::default());
    if let Some(offset) = std::env::var(CLOCK_OFFSET_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
    {
        clock.set_offset_ms(offset);
    }
    let defaults = Config::default();
    Ok(Config {
        id: options.id.filter(|id| !id.is_empty()),
        listen: options.listen,
        seeds: options.seeds,
        resolve_every: options
            .resolve_interval_ms
            .map_or(defaults.resolve_every, ms),
        advertise: options.advertise,
        clock,
        max_clock_skew: ms(options.max_clock_skew_ms),
        tombstone_min_age: options.tombstone_min_age_ms.map(ms),
        remember_collected: options.remember_collected_ms.map(ms),
        max_buckets: options
            .max_buckets
            .map_or(defaults.max_buckets, |n| n as usize),
        compression: options.compression.unwrap_or(defaults.compression),
        // A short minimum age is only useful if collection rounds (and the digests they read) keep up.
        collect_every: options
            .tombstone_min_age_ms
            .map_or(defaults.collect_every, |age| {
                ms(age / 2.0).clamp(Duration::from_millis(100), defaults.collect_every)
            }),
        digest_every: options
            .tombstone_min_age_ms
            .map_or(defaults.digest_every, |age| {
                ms(age / 2.0).clamp(Duration::from_millis(100), defaults.digest_every)
            }),
        member_timeout: options
            .member_timeout_ms
            .map_or(defaults.member_timeout, ms),
        secrets: options
            .secrets
            .iter()
            .flatten()
            .map(|s| s.to_vec())
            .collect(),
        insecure: options.insecure.unwrap_or(false),
        data_dir: options.data_dir.map(std::path::PathBuf::from),
        durability: match options.durability.as_deref() {
            Some("relaxed") => Durability::Relaxed,
            _ => Durability::Strict,
        },
        peer_keys,
        ..defaults
    })
}

/// Starts a peer on its own tokio runtime and returns its handle at once: binding the port, opening
/// and loading the data directory and dialing the seeds happen on that runtime, never on the
/// JavaScript thread. The outcome is the first event `callback` gets: `opened` (id and address) or
/// `open-failed` (code and message), after which JavaScript calls `peerRelease`.
#[napi(catch_unwind)]
pub fn peer_open(options: OpenOptions, callback: Function<Vec<PeerEvent>, ()>) -> Result<u32> {
    logging::init();
    let sink = logging::Sink::new(options.logger.unwrap_or(false));
    let config = config_of(options)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("peer-buckets")
        .on_thread_start({
            let sink = sink.clone();
            move || sink.enter()
        })
        .enable_all()
        .build()
        .map_err(|e| Error::new(Code::Internal, format!("cannot start the runtime: {e}")))?;
    let on = runtime.handle().clone();
    let events = events::PeerEvents::start(&on, callback).map_err(internal)?;
    sink.connect(events.sender());
    let handle = handles::add_peer(PeerEntry {
        node: None,
        runtime,
        events: events.clone(),
        buckets: Vec::new(),
    });
    on.spawn(async move {
        match Node::start(config).await {
            Ok(node) => {
                let node = Arc::new(node);
                let (id, address) = (node.id().to_string(), node.address().to_string());
                let public_key = node.public_key().map(peer_buckets_engine::key_to_hex);
                sink.set_id(&id);
                if handles::set_node(handle, node.clone()) {
                    events.send(EngineEvent::Opened {
                        id,
                        address,
                        public_key,
                    });
                    events.attach(&node);
                } else {
                    // Released before it opened (index.js waits for the open first): stop it again.
                    node.close(Duration::ZERO).await;
                }
            }
            Err(e) => events.send(EngineEvent::OpenFailed {
                code: open_error_code(&e),
                message: e.to_string(),
            }),
        }
    });
    Ok(handle)
}

/// The handle of bucket `name` of a peer (the same handle for the same name).
#[napi(catch_unwind)]
pub fn peer_bucket(peer: u32, name: String) -> Result<u32> {
    handles::bucket_handle(peer, &name).ok_or_else(closed)
}

#[napi(catch_unwind)]
pub fn peer_peers(peer: u32) -> Result<Vec<PeerInfo>> {
    let node = handles::node(peer).ok_or_else(closed)?;
    Ok(node
        .peers()
        .into_iter()
        .map(|p| PeerInfo {
            id: p.id,
            address: p.address,
            state: if p.connected {
                "connected"
            } else {
                "disconnected"
            }
            .into(),
        })
        .collect())
}

/// `stats()`: the engine's figures as they are. The destructuring names every field of the engine's
/// `Stats` (no `..`), so a figure the engine gains fails to compile here until it is passed on; the
/// JavaScript side's list (`lib/stats.js`) is checked against this struct by `__test__/stats.test.js`.
#[napi(catch_unwind)]
pub fn peer_stats(peer: u32) -> Result<PeerStats> {
    let node = handles::node(peer).ok_or_else(closed)?;
    let Stats {
        id,
        buckets,
        keys,
        peers,
        cluster_size,
        ops_applied,
        bytes_sent,
        bytes_received,
        clock_skew_refused,
        pulls_sent,
        pulls_served,
        catchup_writes_received,
        protocol_errors,
        tombstones,
        tombstones_collected,
        full_resyncs,
        buckets_refused,
        collected_remembered,
        stand_in_tombstones,
        divergences,
        repairs,
        repairs_changed,
        handshakes_rejected,
        handshakes_evicted,
        warnings,
        links,
        local_writes,
        ack_timeouts,
        ack_latency,
        bucket_keys,
    } = node.stats();
    Ok(PeerStats {
        id,
        buckets: buckets as u32,
        keys: keys as u32,
        peers: peers as u32,
        cluster_size: cluster_size as u32,
        ops_applied: ops_applied as f64,
        bytes_sent: bytes_sent as f64,
        bytes_received: bytes_received as f64,
        clock_skew_refused: clock_skew_refused as f64,
        pulls_sent: pulls_sent as f64,
        pulls_served: pulls_served as f64,
        catchup_writes_received: catchup_writes_received as f64,
        protocol_errors: protocol_errors as f64,
        tombstones: tombstones as u32,
        tombstones_collected: tombstones_collected as f64,
        full_resyncs: full_resyncs as f64,
        collected_remembered: collected_remembered as u32,
        stand_in_tombstones: stand_in_tombstones as f64,
        divergences: divergences as f64,
        repairs: repairs as f64,
        repairs_changed: repairs_changed as f64,
        buckets_refused: buckets_refused as f64,
        handshakes_rejected: handshakes_rejected as f64,
        handshakes_evicted: handshakes_evicted as f64,
        warnings: warnings
            .iter()
            .map(|(code, n)| (code.as_str().to_string(), *n as f64))
            .collect(),
        replication: links
            .into_iter()
            .map(
                |EngineLinkStats {
                     id,
                     address,
                     lag_ops,
                     lag_ms,
                     bytes_sent,
                     bytes_received,
                     plain_sent,
                     plain_received,
                     send_queue_bytes,
                     writes_received,
                     apply_us,
                 }| LinkStats {
                    id,
                    address,
                    lag_ops: lag_ops as f64,
                    lag_ms: lag_ms as f64,
                    bytes_sent: bytes_sent as f64,
                    bytes_received: bytes_received as f64,
                    bytes_sent_uncompressed: plain_sent as f64,
                    bytes_received_uncompressed: plain_received as f64,
                    send_queue_bytes: send_queue_bytes as f64,
                    writes_received: writes_received as f64,
                    apply_ms: apply_us as f64 / 1000.0,
                },
            )
            .collect(),
        local_writes: local_writes as f64,
        ack_timeouts: ack_timeouts as f64,
        ack_latency: ack_latency
            .into_iter()
            .map(|l| {
                let counts: Vec<f64> = l
                    .counts
                    .iter()
                    .scan(0u64, |total, n| {
                        *total += n;
                        Some(*total as f64)
                    })
                    .collect();
                let latency = AckLatency {
                    le_ms: LATENCY_BOUNDS_MS.iter().map(|&b| b as f64).collect(),
                    counts: counts[..LATENCY_BOUNDS_MS.len()].to_vec(),
                    count: counts.last().copied().unwrap_or(0.0),
                    sum_ms: l.sum_us as f64 / 1_000.0,
                };
                (l.level.as_str().to_string(), latency)
            })
            .collect(),
        bucket_keys: bucket_keys
            .into_iter()
            .map(|(name, n)| (name, n as u32))
            .collect(),
    })
}

/// How long the node's tasks get to end once the links are told (`Node::close`).
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Closes a peer off the JavaScript thread: waits up to `timeout_ms` for the linked peers to
/// acknowledge this peer's writes, leaves the network and flushes the data directory; the `closed`
/// event (the last) reports what was left unacknowledged, after which JavaScript calls `peerRelease`.
/// A peer already closing or released reports nothing.
#[napi(catch_unwind)]
pub fn peer_close(peer: u32, timeout_ms: f64) -> Result<()> {
    let Some(handles::Closing {
        node,
        events,
        runtime,
        buckets,
    }) = handles::close_peer(peer)
    else {
        return Ok(());
    };
    counter::forget(&buckets);
    let Some(node) = node else {
        events.send(EngineEvent::Closed {
            unacknowledged: Vec::new(),
            flushed: true,
        });
        return Ok(());
    };
    let timeout = Duration::from_millis(timeout_ms.clamp(0.0, MAX_ACK_TIMEOUT_MS) as u64);
    runtime.spawn(async move {
        let unacknowledged = node.drain(timeout).await;
        let flushed = node.close(CLOSE_GRACE).await;
        events.send(EngineEvent::Closed {
            unacknowledged,
            flushed,
        });
    });
    Ok(())
}

/// Frees a peer's slot and its runtime's threads, once its close or failed open was reported. The
/// runtime is shut down on a thread of its own, so this never waits.
#[napi(catch_unwind)]
pub fn peer_release(peer: u32) -> Result<()> {
    if let Some(entry) = handles::remove_peer(peer) {
        let PeerEntry {
            node,
            runtime,
            events,
            ..
        } = entry;
        drop((node, events));
        std::thread::Builder::new()
            .name("peer-buckets-release".into())
            .spawn(move || runtime.shutdown_timeout(Duration::from_millis(200)))
            .map_err(|e| Error::new(Code::Internal, format!("cannot stop the runtime: {e}")))?;
    }
    Ok(())
}

/// Binds the calling thread's value-kind slot: after `hotCalls().get` returns a string, its first
/// element says whether that string is JSON text (1) or a string value (0). Elements 1 to 4, when
/// the array has them, hold the stamp `hotCalls().getChanged` compares and updates.
#[napi(catch_unwind, ts_args_type = "slot: Int32Array")]
pub fn bind_value_kind(slot: KindSlot) {
    let _ = slot;
}

/// One register of a key, as `bucketInspect` reports it.
#[napi(object)]
pub struct RegisterInfo {
    /// The hybrid logical timestamp, the packed 64-bit value in decimal (compare as BigInt).
    pub hlc: String,
    /// Its physical part: milliseconds since the epoch on the writer's clock.
    pub time: f64,
    /// The writer's node id and incarnation (hex): with `hlc`, what decides which write wins.
    pub origin: String,
    pub incarnation: String,
    pub seq: f64,
    /// Absolute expiry (ms since the epoch), 0 for never.
    pub expires: f64,
}

/// The registers stored for a key: the value register (a tombstone when `deleted`) and a newer
/// touch register, if any.
#[napi(object)]
pub struct KeyInfo {
    pub deleted: bool,
    pub hlc: String,
    pub time: f64,
    pub origin: String,
    pub incarnation: String,
    pub seq: f64,
    pub expires: f64,
    pub touch: Option<RegisterInfo>,
}

fn register_info(
    origin: &peer_buckets_engine::Origin,
    w: &peer_buckets_engine::Write,
) -> RegisterInfo {
    RegisterInfo {
        hlc: w.hlc.0.to_string(),
        time: w.hlc.physical_ms() as f64,
        origin: origin.node().to_string(),
        incarnation: format!("{:x}", origin.id().incarnation),
        seq: w.seq.get() as f64,
        expires: w.expires().encoded() as f64,
    }
}

/// What the bucket stores for `key`, live or not (tombstones and expired values too): undefined when
/// nothing. A touch that arrived before the write it touches leaves no value register: `hlc` is '0'.
#[napi(catch_unwind)]
pub fn bucket_inspect(bucket: u32, key: KeyArg) -> Result<Option<KeyInfo>> {
    with_bucket(bucket, |b| {
        let registers = b.inspect(key.as_str());
        if registers.is_empty() {
            return None;
        }
        let value = registers.iter().find(|(_, w)| !w.is_touch());
        let touch = registers
            .iter()
            .find(|(_, w)| w.is_touch())
            .map(|(o, w)| register_info(o, w));
        Some(match value {
            Some((o, w)) => {
                let r = register_info(o, w);
                KeyInfo {
                    deleted: w.value().is_none(),
                    hlc: r.hlc,
                    time: r.time,
                    origin: r.origin,
                    incarnation: r.incarnation,
                    seq: r.seq,
                    expires: r.expires,
                    touch,
                }
            }
            None => KeyInfo {
                deleted: true,
                hlc: "0".into(),
                time: 0.0,
                origin: String::new(),
                incarnation: "0".into(),
                seq: 0.0,
                expires: 0.0,
                touch,
            },
        })
    })
    .ok_or_else(closed)
}

#[napi(catch_unwind)]
pub fn bucket_size(bucket: u32) -> Result<u32> {
    with_bucket(bucket, |b| b.len() as u32).ok_or_else(closed)
}

/// Extends a live key's expiry to `ttl_ms` from now without rewriting its value; false when the key
/// is absent or expired.
#[napi(catch_unwind)]
pub fn bucket_touch(bucket: u32, key: KeyArg, ttl_ms: f64) -> Result<bool> {
    with_bucket(bucket, |b| {
        b.touch(key.into_arc(), ttl_ms.max(1.0) as u64).is_some()
    })
    .ok_or_else(closed)
}

pub(crate) fn lifetime(ttl_ms: f64) -> Lifetime {
    if ttl_ms > 0.0 {
        Lifetime::Ttl(ttl_ms as u64)
    } else {
        Lifetime::Forever
    }
}

/// The largest ack timeout, `Number.MAX_SAFE_INTEGER` ms.
pub(crate) const MAX_ACK_TIMEOUT_MS: f64 = 9_007_199_254_740_991.0;

pub(crate) fn write(
    bucket: u32,
    key: KeyArg,
    stored: Option<Box<[u8]>>,
    lifetime: Lifetime,
    ack: u32,
    timeout_ms: f64,
) -> Result<f64> {
    let level = AckLevel::from_code(ack)
        .ok_or_else(|| Error::new(Code::InvalidArg, format!("unknown ack level {ack}")))?;
    let (key, stored) = if level == peer_buckets_engine::AckLevel::Local {
        // The hot path: write and return, unless the write must wait for the disk.
        let pending = handles::with_slot(bucket, move |slot| {
            if slot.strict {
                return Some((key, stored));
            }
            slot.bucket.write(key.as_str(), stored, lifetime);
            None
        })
        .ok_or_else(closed)?;
        match pending {
            None => return Ok(0.0),
            Some(args) => args,
        }
    } else {
        (key, stored)
    };
    let (b, node) = handles::bucket_and_node(bucket).ok_or_else(closed)?;
    // index.js refuses more than 2^53 - 1 ms; the clamp keeps the engine's deadline (now + timeout,
    // in u64 ms) from overflowing whatever the caller passes.
    let timeout = Duration::from_millis(timeout_ms.clamp(0.0, MAX_ACK_TIMEOUT_MS) as u64);
    match node
        .write_acked(&b, key.into_arc(), stored, lifetime, level, timeout)
        .1
    {
        Registered::Met(_) => Ok(0.0),
        Registered::Pending(ticket) => Ok(ticket as f64),
    }
}

/// Asks peer `from` for its entries under `prefix`; returns a fetch id whose outcome arrives through
/// the peer's event callback. Throws ENOTCONN when `from` is not linked.
#[napi(catch_unwind)]
pub fn bucket_fetch(bucket: u32, from: String, prefix: String) -> Result<f64> {
    let (b, node) = handles::bucket_and_node(bucket).ok_or_else(closed)?;
    let events = handles::peer_events_for_bucket(bucket).ok_or_else(closed)?;
    let rx = node
        .fetch(b.name(), &from, &prefix)
        .map_err(|e| Error::new(Code::NotConnected, e.to_string()))?;
    Ok(events::await_fetch(&events, rx) as f64)
}

#[napi(catch_unwind)]
pub fn bucket_keys(bucket: u32, prefix: String) -> Result<Vec<String>> {
    with_bucket(bucket, |b| {
        let mut keys = Vec::new();
        b.scan(&prefix, &mut |k, _| keys.push(k.to_string()));
        keys
    })
    .ok_or_else(closed)
}

/// Live entries under `prefix` as a flat array `[key, value, key, value, ...]` (values as in get).
#[napi(catch_unwind, ts_return_type = "Array<string | Buffer>")]
pub fn bucket_entries(env: Env, bucket: u32, prefix: String) -> Result<RawValue> {
    let raw_env = env.raw();
    with_bucket(bucket, |b| {
        let mut items = convert::ArrayBuilder::new(raw_env).map_err(internal)?;
        let mut result = Ok(());
        b.scan(&prefix, &mut |k, stored| {
            if result.is_ok() {
                result = items
                    .push_str(k)
                    .and_then(|_| items.push(RawValue::from_stored(raw_env, stored)?));
            }
        });
        result.map(|_| items.finish()).map_err(internal)
    })
    .ok_or_else(closed)?
}

/// Starts (or, with `null`, stops) delivering the bucket's changes to `callback` in batches, each a
/// flat array of `CHANGE_STRIDE` slots per change at the offsets `ChangeSlot` names.
#[napi(
    catch_unwind,
    ts_args_type = "bucket: number, callback: ((events: Array<string | Buffer | boolean | undefined>) => void) | null"
)]
pub fn bucket_listen(bucket: u32, callback: Option<Function<RawValue, ()>>) -> Result<()> {
    let (b, runtime) = handles::bucket_and_runtime(bucket).ok_or_else(closed)?;
    match callback {
        None => {
            b.unsubscribe();
            Ok(())
        }
        Some(cb) => events::pump_changes(b, &runtime, cb).map_err(internal),
    }
}

/// The latency stamps taken in this process since the last call (feature `stamps`, bench builds
/// only), flat: stage, `CLOCK_MONOTONIC` nanoseconds, tag, for each (see the engine's `stamps.rs`).
#[cfg(feature = "stamps")]
#[napi(catch_unwind)]
pub fn latency_stamps() -> Vec<f64> {
    peer_buckets_engine::stamps::take()
        .into_iter()
        .flat_map(|(stage, at, tag)| [f64::from(stage), at as f64, tag as f64])
        .collect()
}
