//! Event pumps: tokio tasks that drain the engine's change, peer-event and warning channels and hand each batch
//! to JavaScript in one call of a weak threadsafe function (it never keeps the process alive by itself;
//! the JavaScript Peer does that while open).

use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeCallContext, ThreadsafeFunctionCallMode};
use peer_buckets_engine::bucket::Bucket;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use peer_buckets_engine::acks::{AckEnd, AckOutcome};
use peer_buckets_engine::membership::{PeerEvent, PeerEventKind};
use peer_buckets_engine::node::Node;
use peer_buckets_engine::store::Change;
use peer_buckets_engine::warning::Warning;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::convert::{ArrayBuilder, RawValue};

/// Most events handed over in one call.
const MAX_BATCH: usize = 4096;

async fn next_batch<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(more) => batch.push(more),
            Err(_) => break,
        }
    }
    Some(batch)
}

pub fn pump_changes(
    bucket: Arc<Bucket>,
    runtime: &Handle,
    callback: Function<RawValue, ()>,
) -> Result<()> {
    let tsfn = callback
        .build_threadsafe_function::<Vec<Change>>()
        .callee_handled::<false>()
        .weak::<true>()
        .build_callback(|ctx: ThreadsafeCallContext<Vec<Change>>| {
            let env = ctx.env.raw();
            let mut out = ArrayBuilder::new(env)?;
            for c in ctx.value {
                out.push_str(&c.key)?;
                out.push(match &c.value {
                    Some(stored) => RawValue::from_stored(env, stored)?,
                    None => RawValue::undefined(env),
                })?;
                out.push_str(c.origin.node())?;
                out.push(RawValue::boolean(env, c.local))?;
                out.push(RawValue::boolean(env, c.expired))?;
            }
            Ok(out.finish())
        })?;
    let mut rx = bucket.subscribe();
    runtime.spawn(async move {
        while let Some(batch) = next_batch(&mut rx).await {
            if tsfn.call(batch, ThreadsafeFunctionCallMode::NonBlocking) == Status::Closing {
                break;
            }
        }
    });
    Ok(())
}

/// What reaches a Peer's JavaScript callback, besides bucket changes.
pub enum JsEvent {
    Peer(PeerEvent),
    Ack(AckOutcome),
    /// A fetch ended: how many entries arrived, or why it failed.
    Fetched {
        id: u64,
        result: std::result::Result<usize, String>,
    },
    Warning(Warning),
}

/// The sending side of a peer's event stream to JavaScript.
#[derive(Clone)]
pub struct PeerEvents {
    tx: mpsc::UnboundedSender<JsEvent>,
    runtime: Handle,
    next_fetch: Arc<AtomicU64>,
}

/// How long a fetch may take before it fails.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts the pump that hands peer events, ack outcomes, fetch results and warnings to `callback` as a
/// flat array of triples: `[kind, a, b, ...]` with kind 'peer-up' | 'peer-down' (id, address), 'ack' |
/// 'ack-timeout' | 'ack-disk' (ticket, acked ids), 'fetched' (id, count) | 'fetch-failed' (id, reason), 'warning'
/// (code, [message, peer or undefined, address or undefined]).
pub fn start_pump(
    node: &Arc<Node>,
    runtime: &Handle,
    callback: Function<RawValue, ()>,
) -> Result<PeerEvents> {
    let tsfn = callback
        .build_threadsafe_function::<Vec<JsEvent>>()
        .callee_handled::<false>()
        .weak::<true>()
        .build_callback(|ctx: ThreadsafeCallContext<Vec<JsEvent>>| {
            let env = ctx.env.raw();
            let mut out = ArrayBuilder::new(env)?;
            for e in ctx.value {
                match e {
                    JsEvent::Peer(p) => {
                        out.push_str(match p.kind {
                            PeerEventKind::Up => "peer-up",
                            PeerEventKind::Down => "peer-down",
                        })?;
                        out.push_str(&p.id)?;
                        out.push_str(&p.address)?;
                    }
                    JsEvent::Ack(a) => {
                        out.push_str(match a.end {
                            AckEnd::Met => "ack",
                            AckEnd::TimedOut => "ack-timeout",
                            AckEnd::DiskFailed => "ack-disk",
                        })?;
                        out.push(RawValue::number(env, a.ticket as f64)?)?;
                        let mut ids = ArrayBuilder::new(env)?;
                        for id in &a.acked {
                            ids.push_str(id)?;
                        }
                        out.push(ids.finish())?;
                    }
                    JsEvent::Fetched { id, result } => {
                        out.push_str(if result.is_ok() {
                            "fetched"
                        } else {
                            "fetch-failed"
                        })?;
                        out.push(RawValue::number(env, id as f64)?)?;
                        match result {
                            Ok(count) => out.push(RawValue::number(env, count as f64)?)?,
                            Err(reason) => out.push_str(&reason)?,
                        }
                    }
                    JsEvent::Warning(w) => {
                        out.push_str("warning")?;
                        out.push_str(w.code.as_str())?;
                        let mut rest = ArrayBuilder::new(env)?;
                        rest.push_str(&w.message)?;
                        for part in [&w.peer, &w.address] {
                            rest.push(match part {
                                Some(s) => RawValue::string(env, s)?,
                                None => RawValue::undefined(env),
                            })?;
                        }
                        out.push(rest.finish())?;
                    }
                }
            }
            Ok(out.finish())
        })?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut peer_events = node.events();
    let forward = tx.clone();
    runtime.spawn(async move {
        while let Some(e) = peer_events.recv().await {
            if forward.send(JsEvent::Peer(e)).is_err() {
                break;
            }
        }
    });
    let mut warnings = node.warnings();
    let forward = tx.clone();
    runtime.spawn(async move {
        while let Some(w) = warnings.recv().await {
            if forward.send(JsEvent::Warning(w)).is_err() {
                break;
            }
        }
    });
    let mut acks = node.ack_outcomes();
    let forward = tx.clone();
    runtime.spawn(async move {
        while let Some(a) = acks.recv().await {
            if forward.send(JsEvent::Ack(a)).is_err() {
                break;
            }
        }
    });
    runtime.spawn(async move {
        while let Some(batch) = next_batch(&mut rx).await {
            if tsfn.call(batch, ThreadsafeFunctionCallMode::NonBlocking) == Status::Closing {
                break;
            }
        }
    });
    Ok(PeerEvents {
        tx,
        runtime: runtime.clone(),
        next_fetch: Arc::new(AtomicU64::new(0)),
    })
}

/// Waits (on the peer's runtime) for a fetch to finish and reports it; returns the id reported.
pub fn await_fetch(events: &PeerEvents, rx: oneshot::Receiver<usize>) -> u64 {
    let id = events.next_fetch.fetch_add(1, Ordering::Relaxed) + 1;
    let tx = events.tx.clone();
    events.runtime.spawn(async move {
        let result = match tokio::time::timeout(FETCH_TIMEOUT, rx).await {
            Ok(Ok(count)) => Ok(count),
            Ok(Err(_)) => Err("the link closed before the fetch finished".to_string()),
            Err(_) => Err(format!("no complete answer within {FETCH_TIMEOUT:?}")),
        };
        let _ = tx.send(JsEvent::Fetched { id, result });
    });
    id
}
