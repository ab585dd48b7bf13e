//! Event pumps: tokio tasks that drain the engine's change, peer-event and warning channels and hand each batch
//! to JavaScript in one call of a weak threadsafe function (it never keeps the process alive by itself;
//! the JavaScript Peer does that while open).

use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeCallContext, ThreadsafeFunctionCallMode};
use peer_buckets_engine::Bucket;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use peer_buckets_engine::stamps::{stamp_named, Stage};
use peer_buckets_engine::Change;
use peer_buckets_engine::Node;
use peer_buckets_engine::PeerEventKind;
use peer_buckets_engine::Warning;
use peer_buckets_engine::{AckEnd, AckOutcome};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::contract::{ChangeSlot, PeerEvent, Unacknowledged, CHANGE_STRIDE};
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

/// Starts the pump that hands the bucket's changes to `callback`, a batch per call, laid out as
/// `contract::ChangeSlot` says.
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
            for c in &ctx.value {
                stamp_named(Stage::CallbackBegan, &c.key);
            }
            let env = ctx.env.raw();
            let mut out = ArrayBuilder::new(env)?;
            for (i, c) in ctx.value.iter().enumerate() {
                let at = i as u32 * CHANGE_STRIDE;
                let value = match &c.value {
                    Some(stored) => RawValue::from_stored(env, stored)?,
                    None => RawValue::undefined(env),
                };
                out.set(at + ChangeSlot::Key as u32, RawValue::string(env, &c.key)?)?;
                out.set(at + ChangeSlot::Value as u32, value)?;
                out.set(
                    at + ChangeSlot::Origin as u32,
                    RawValue::string(env, c.origin.node())?,
                )?;
                out.set(
                    at + ChangeSlot::Local as u32,
                    RawValue::boolean(env, c.local),
                )?;
                out.set(
                    at + ChangeSlot::Expired as u32,
                    RawValue::boolean(env, c.expired),
                )?;
            }
            let out = out.finish();
            for c in &ctx.value {
                stamp_named(Stage::CallbackBuilt, &c.key);
            }
            Ok(out)
        })?;
    let mut rx = bucket.subscribe();
    runtime.spawn(async move {
        while let Some(batch) = next_batch(&mut rx).await {
            for c in &batch {
                stamp_named(Stage::PumpTook, &c.key);
            }
            if tsfn.call(batch, ThreadsafeFunctionCallMode::NonBlocking) == Status::Closing {
                break;
            }
        }
    });
    Ok(())
}

/// What the engine reports for a Peer's JavaScript callback, besides bucket changes.
pub enum EngineEvent {
    Peer(peer_buckets_engine::PeerEvent),
    Ack(AckOutcome),
    /// A fetch ended: how many entries arrived, or why it failed.
    Fetched {
        id: u64,
        result: std::result::Result<usize, String>,
    },
    Warning(Warning),
    Opened {
        id: String,
        address: String,
        public_key: Option<String>,
    },
    OpenFailed {
        code: &'static str,
        message: String,
    },
    Closed {
        unacknowledged: Vec<(String, u64)>,
        flushed: bool,
    },
    /// A log line for the peer's JavaScript logger (`logging.rs`).
    Log(tracing::Level, String),
}

impl From<EngineEvent> for PeerEvent {
    fn from(e: EngineEvent) -> Self {
        match e {
            EngineEvent::Peer(p) => match p.kind {
                PeerEventKind::Up => PeerEvent::PeerUp {
                    id: p.id,
                    address: p.address,
                },
                PeerEventKind::Down => PeerEvent::PeerDown {
                    id: p.id,
                    address: p.address,
                },
            },
            EngineEvent::Ack(a) => {
                let (ticket, acked) = (a.ticket as f64, a.acked);
                match a.end {
                    AckEnd::Met => PeerEvent::Ack { ticket, acked },
                    AckEnd::TimedOut => PeerEvent::AckTimeout { ticket, acked },
                    AckEnd::DiskFailed => PeerEvent::AckDisk { ticket, acked },
                }
            }
            EngineEvent::Fetched { id, result } => match result {
                Ok(count) => PeerEvent::Fetched {
                    id: id as f64,
                    count: count as f64,
                },
                Err(reason) => PeerEvent::FetchFailed {
                    id: id as f64,
                    reason,
                },
            },
            EngineEvent::Warning(w) => PeerEvent::Warning {
                code: w.code.as_str().to_string(),
                message: w.message,
                peer: w.peer,
                address: w.address,
            },
            EngineEvent::Opened {
                id,
                address,
                public_key,
            } => PeerEvent::Opened {
                id,
                address,
                public_key,
            },
            EngineEvent::OpenFailed { code, message } => PeerEvent::OpenFailed {
                code: code.to_string(),
                message,
            },
            EngineEvent::Closed {
                unacknowledged,
                flushed,
            } => PeerEvent::Closed {
                unacknowledged: unacknowledged
                    .into_iter()
                    .map(|(peer, writes)| Unacknowledged {
                        peer,
                        writes: writes as f64,
                    })
                    .collect(),
                flushed,
            },
            EngineEvent::Log(level, message) => PeerEvent::Log {
                level: crate::contract::log_method(level).to_string(),
                message,
            },
        }
    }
}

/// The sending side of a peer's event stream to JavaScript.
#[derive(Clone)]
pub struct PeerEvents {
    tx: mpsc::UnboundedSender<EngineEvent>,
    runtime: Handle,
    next_fetch: Arc<AtomicU64>,
}

/// How long a fetch may take before it fails.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

impl PeerEvents {
    /// Where the peer's log lines go when it has a JavaScript logger.
    pub fn sender(&self) -> mpsc::UnboundedSender<EngineEvent> {
        self.tx.clone()
    }

    /// Starts the pump that hands peer events, ack outcomes, fetch results, warnings and the open and
    /// close outcomes to `callback` as arrays of `contract::PeerEvent`. It starts before the node
    /// exists, so the open's outcome is the first event; `attach` adds the node's own.
    pub fn start(runtime: &Handle, callback: Function<Vec<PeerEvent>, ()>) -> Result<PeerEvents> {
        let tsfn = callback
            .build_threadsafe_function::<Vec<EngineEvent>>()
            .callee_handled::<false>()
            .weak::<true>()
            .build_callback(|ctx: ThreadsafeCallContext<Vec<EngineEvent>>| {
                Ok(ctx
                    .value
                    .into_iter()
                    .map(PeerEvent::from)
                    .collect::<Vec<_>>())
            })?;
        let (tx, mut rx) = mpsc::unbounded_channel();
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

    /// Reports `event` after those reported before it.
    pub fn send(&self, event: EngineEvent) {
        let _ = self.tx.send(event);
    }

    /// Forwards the node's peer events, warnings (those emitted while it started first) and ack
    /// outcomes from now on.
    pub fn attach(&self, node: &Node) {
        self.forward(node.events(), EngineEvent::Peer);
        self.forward(node.warnings(), EngineEvent::Warning);
        self.forward(node.ack_outcomes(), EngineEvent::Ack);
    }

    /// Reports each item `from` yields, as `wrap` makes it an event, until either end closes.
    fn forward<T: Send + 'static>(
        &self,
        mut from: mpsc::UnboundedReceiver<T>,
        wrap: fn(T) -> EngineEvent,
    ) {
        let to = self.tx.clone();
        self.runtime.spawn(async move {
            while let Some(item) = from.recv().await {
                if to.send(wrap(item)).is_err() {
                    break;
                }
            }
        });
    }
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
        let _ = tx.send(EngineEvent::Fetched { id, result });
    });
    id
}
