//! Event pumps: tokio tasks that drain the engine's change and peer-event channels and hand each batch
//! to JavaScript in one call of a weak threadsafe function (it never keeps the process alive by itself;
//! the JavaScript Peer does that while open).

use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeCallContext, ThreadsafeFunctionCallMode};
use peer_buckets_engine::bucket::Bucket;
use peer_buckets_engine::membership::{PeerEvent, PeerEventKind};
use peer_buckets_engine::node::Node;
use peer_buckets_engine::store::Change;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

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

pub fn pump_peer_events(
    node: Arc<Node>,
    runtime: &Handle,
    callback: Function<RawValue, ()>,
) -> Result<()> {
    let tsfn = callback
        .build_threadsafe_function::<Vec<PeerEvent>>()
        .callee_handled::<false>()
        .weak::<true>()
        .build_callback(|ctx: ThreadsafeCallContext<Vec<PeerEvent>>| {
            let env = ctx.env.raw();
            let mut out = ArrayBuilder::new(env)?;
            for e in ctx.value {
                out.push_str(match e.kind {
                    PeerEventKind::Up => "peer-up",
                    PeerEventKind::Down => "peer-down",
                })?;
                out.push_str(&e.id)?;
                out.push_str(&e.address)?;
            }
            Ok(out.finish())
        })?;
    let mut rx = node.events();
    runtime.spawn(async move {
        while let Some(batch) = next_batch(&mut rx).await {
            if tsfn.call(batch, ThreadsafeFunctionCallMode::NonBlocking) == Status::Closing {
                break;
            }
        }
    });
    Ok(())
}
