//! A link: one TCP connection to one other peer, from handshake to close.
//!
//! After both Hellos, the reader merges what arrives and the writer sends, batched into frames:
//! - this replica's own writes that the other end lacks (live flow and catch-up are the same walk over
//!   the store's per-origin index, starting from what the other end said it holds);
//! - other origins' writes the other end lacked when it said hello, and gaps that a digest shows to
//!   have lasted a whole digest period (writes merely in flight from their origin are not sent twice);
//! - digests, member lists and pings.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::bucket::Bucket;
use crate::connection::{FrameReader, FrameWriter};
use crate::error::LinkError;
use crate::membership::{Admission, LinkRef};
use crate::node::{LinkSignal, Shared};
use crate::ranges::SeqRanges;
use crate::replica::Origin;
use crate::value;
use crate::wire::{self, Hello, Message, OpsBatch, WireContext, MAX_BUCKET_NAME, MAX_KEY};

/// Writes per Ops frame at most.
const CHUNK_WRITES: usize = 1024;
/// Bytes gathered before the writer sends.
const SEND_BUDGET: usize = 512 * 1024;
/// How long a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

static NEXT_LINK_ID: AtomicU64 = AtomicU64::new(1);

pub async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let s = shared.clone();
                    shared.spawn(async move {
                        if let Err(e) = run(&s, stream, remote, None).await {
                            tracing::debug!(%remote, error = %e, "inbound link closed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// Dials `address` and runs the link until it closes. `Ok` if a link was established.
pub async fn dial_once(shared: &Arc<Shared>, address: &str) -> Result<(), LinkError> {
    let target = crate::node::resolve(address)
        .await
        .map_err(|e| LinkError::Protocol(e.to_string()))?;
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(target))
        .await
        .map_err(|_| LinkError::Silent(HANDSHAKE_TIMEOUT))??;
    run(shared, stream, target, Some(address)).await
}

/// What the writer knows about the other end, per bucket.
#[derive(Default)]
struct BucketSync {
    /// Seqs per origin the other end holds: what it said, plus what went either way on this link.
    remote_has: HashMap<Origin, SeqRanges>,
    /// For origins other than this replica: send what the other end lacks up to this seq.
    target: HashMap<Origin, u64>,
    /// This replica's context maxima at the previous digest from the other end.
    previous: HashMap<Origin, u64>,
}

#[derive(Default)]
struct LinkSync {
    buckets: HashMap<Arc<str>, BucketSync>,
}

fn context_to_wire(ctx: Vec<(Origin, SeqRanges)>) -> WireContext {
    ctx.into_iter().map(|(o, r)| (o.id().clone(), r)).collect()
}

fn hello(shared: &Shared) -> Message {
    let buckets = shared
        .bucket_list()
        .into_iter()
        .map(|b| (b.name().clone(), context_to_wire(b.store().context())))
        .collect();
    let host = shared.address.ip();
    Message::Hello(Hello {
        replica: shared.me.id().clone(),
        listen_port: shared.address.port(),
        listen_host: (!host.is_unspecified()).then(|| host.to_string()),
        wall_ms: shared.clock.wall_ms(),
        members: shared.members.known(),
        buckets,
    })
}

fn check_bucket_name(name: &str) -> Result<(), LinkError> {
    if name.is_empty() || name.len() > MAX_BUCKET_NAME {
        return Err(LinkError::Protocol(format!(
            "bucket name of {} bytes",
            name.len()
        )));
    }
    Ok(())
}

async fn run(
    shared: &Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    dialed: Option<&str>,
) -> Result<(), LinkError> {
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    let mut reader = FrameReader::new(rd);
    let mut writer = FrameWriter::new(wr);

    let mut buf = Vec::new();
    wire::encode_frame(&hello(shared), &mut buf)?;
    writer.send(&buf).await?;
    shared
        .counters
        .bytes_sent
        .fetch_add(buf.len() as u64, Ordering::Relaxed);
    let (first, n) = reader.read(HANDSHAKE_TIMEOUT).await?;
    shared
        .counters
        .bytes_received
        .fetch_add(n as u64, Ordering::Relaxed);
    let Message::Hello(theirs) = first else {
        return Err(LinkError::Protocol("first message was not a hello".into()));
    };
    if theirs.replica.node == shared.id {
        if theirs.replica.incarnation == shared.me.id().incarnation {
            return Err(LinkError::SelfDial);
        }
        shared
            .counters
            .links_refused
            .fetch_add(1, Ordering::Relaxed);
        return Err(LinkError::Protocol(format!(
            "another process uses my id {}",
            shared.id
        )));
    }
    let remote_host = theirs
        .listen_host
        .clone()
        .unwrap_or_else(|| remote.ip().to_string());
    let address = SocketAddr::new(
        remote_host.parse().unwrap_or(remote.ip()),
        theirs.listen_port,
    )
    .to_string();

    // Initial sync state: what they hold; everything I hold that they lack is to be sent.
    let mut sync = LinkSync::default();
    let their_origin = shared.replicas.intern(&theirs.replica);
    for (name, ctx) in &theirs.buckets {
        check_bucket_name(name)?;
        let bucket = shared.bucket(name);
        let state = sync.buckets.entry(name.clone()).or_default();
        for (rid, ranges) in ctx {
            state
                .remote_has
                .insert(shared.replicas.intern(rid), ranges.clone());
        }
        let _ = bucket;
    }
    for bucket in shared.bucket_list() {
        let state = sync.buckets.entry(bucket.name().clone()).or_default();
        for (origin, ctx) in bucket.store().context() {
            if origin != shared.me && origin != their_origin {
                state.target.insert(origin.clone(), ctx.max());
            }
            state.previous.insert(origin, ctx.max());
        }
    }

    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let (close_tx, close_rx) = watch::channel(false);
    let link = LinkRef {
        id: NEXT_LINK_ID.fetch_add(1, Ordering::Relaxed),
        replica: theirs.replica.clone(),
        dialed_by_me: dialed.is_some(),
        ctl: ctl_tx,
        close: close_tx,
    };
    let link_id = link.id;
    let node = theirs.replica.node.clone();
    let newly_known = shared.members.learn(&node, &address);
    match shared.members.register(&shared.id, &address, link) {
        Admission::Reject => return Err(LinkError::Duplicate),
        Admission::Accept(replaced) => {
            for old in replaced {
                let _ = old.close.send(true);
            }
        }
    }
    tracing::debug!(peer = %node, %address, "link up");
    if newly_known {
        shared
            .members
            .broadcast(&Message::Members(vec![wire::MemberInfo {
                node: node.clone(),
                address: address.clone(),
            }]));
    }
    for m in &theirs.members {
        learn_member(shared, &m.node, &m.address);
    }

    let sync = Arc::new(Mutex::new(sync));
    let signal = Arc::new(LinkSignal::default());
    shared.signals.add(signal.clone());
    signal.wake();

    let result = {
        let write_side = write_loop(
            shared,
            &mut writer,
            &sync,
            &signal,
            ctl_rx,
            close_rx.clone(),
        );
        let read_side = read_loop(shared, &mut reader, &sync, &signal, &their_origin, close_rx);
        tokio::select! {
            r = write_side => r,
            r = read_side => r,
        }
    };
    shared.signals.remove(&signal);
    writer.shutdown().await;
    let left = matches!(result, Err(LinkError::Remote));
    shared.members.unregister(&node, link_id, left);
    tracing::debug!(peer = %node, %address, reason = ?result, "link down");
    match result {
        Err(LinkError::Shutdown) | Err(LinkError::Remote) => Ok(()),
        Err(e) if dialed.is_some() => {
            tracing::debug!(peer = %node, error = %e, "link lost");
            Ok(())
        }
        other => other,
    }
}

fn learn_member(shared: &Arc<Shared>, node: &Arc<str>, address: &str) {
    if **node == *shared.id {
        return;
    }
    if shared.members.learn(node, address) {
        crate::membership::dial(shared, address.to_string(), false);
    }
}

async fn read_loop(
    shared: &Arc<Shared>,
    reader: &mut FrameReader,
    sync: &Mutex<LinkSync>,
    signal: &LinkSignal,
    their_origin: &Origin,
    mut close: watch::Receiver<bool>,
) -> Result<(), LinkError> {
    let silence = shared.config.dead_after;
    loop {
        // Shutdown is the writer's to handle: it says Leave first.
        let (msg, n) = tokio::select! {
            r = reader.read(silence) => r?,
            _ = close.changed() => return Err(LinkError::Duplicate),
        };
        shared
            .counters
            .bytes_received
            .fetch_add(n as u64, Ordering::Relaxed);
        match msg {
            Message::Ops(batch) => apply_ops(shared, sync, batch)?,
            Message::Digest { bucket, context } => {
                check_bucket_name(&bucket)?;
                let b = shared.bucket(&bucket);
                let mut sync = sync.lock();
                let state = sync.buckets.entry(bucket).or_default();
                for (rid, ranges) in context {
                    let origin = shared.replicas.intern(&rid);
                    state
                        .remote_has
                        .entry(origin)
                        .or_default()
                        .union_with(&ranges);
                }
                // Gaps that lasted a whole digest period are filled from here.
                for (origin, ctx) in b.store().context() {
                    let max = ctx.max();
                    if origin != shared.me && origin != *their_origin {
                        if let Some(prev) = state.previous.get(&origin) {
                            let t = state.target.entry(origin.clone()).or_default();
                            *t = (*t).max(*prev);
                        }
                    }
                    state.previous.insert(origin, max);
                }
                drop(sync);
                signal.wake();
            }
            Message::Members(list) => {
                for m in list {
                    learn_member(shared, &m.node, &m.address);
                }
            }
            Message::Ping { .. } => {}
            Message::Leave => return Err(LinkError::Remote),
            Message::Hello(_) => return Err(LinkError::Protocol("second hello".into())),
        }
    }
}

fn apply_ops(
    shared: &Arc<Shared>,
    sync: &Mutex<LinkSync>,
    batch: OpsBatch,
) -> Result<(), LinkError> {
    check_bucket_name(&batch.bucket)?;
    for w in &batch.writes {
        if w.key.is_empty() || w.key.len() > MAX_KEY {
            return Err(LinkError::Protocol(format!("key of {} bytes", w.key.len())));
        }
        if w.seq == 0 || !batch.covered.contains(w.seq) {
            return Err(LinkError::Protocol(format!(
                "write seq {} outside the batch's coverage",
                w.seq
            )));
        }
        if w.value.as_deref().is_some_and(|v| !value::is_valid(v)) {
            return Err(LinkError::Protocol("malformed value".into()));
        }
    }
    let origin = shared.replicas.intern(&batch.origin);
    let bucket: Arc<Bucket> = shared.bucket(&batch.bucket);
    let fresh = bucket.merge(&origin, batch.writes, &batch.covered);
    shared
        .counters
        .ops_applied
        .fetch_add(fresh as u64, Ordering::Relaxed);
    // What they sent me they hold: never send it back.
    sync.lock()
        .buckets
        .entry(batch.bucket)
        .or_default()
        .remote_has
        .entry(origin)
        .or_default()
        .union_with(&batch.covered);
    Ok(())
}

async fn write_loop(
    shared: &Arc<Shared>,
    writer: &mut FrameWriter,
    sync: &Mutex<LinkSync>,
    signal: &LinkSignal,
    mut ctl: mpsc::UnboundedReceiver<Message>,
    mut close: watch::Receiver<bool>,
) -> Result<(), LinkError> {
    let mut shutdown = shared.shutdown.clone();
    let heartbeat = shared.config.heartbeat;
    let mut last_sent = Instant::now();
    let mut last_digest = Instant::now();
    let mut buf = Vec::with_capacity(SEND_BUDGET + 64 * 1024);
    loop {
        buf.clear();
        while let Ok(msg) = ctl.try_recv() {
            wire::encode_frame(&msg, &mut buf)?;
        }
        if last_digest.elapsed() >= shared.config.digest_every {
            last_digest = Instant::now();
            for b in shared.bucket_list() {
                let msg = Message::Digest {
                    bucket: b.name().clone(),
                    context: context_to_wire(b.store().context()),
                };
                wire::encode_frame(&msg, &mut buf)?;
            }
        }
        let more = fill_ops(shared, sync, &mut buf)?;
        if buf.is_empty() && last_sent.elapsed() >= heartbeat {
            wire::encode_frame(
                &Message::Ping {
                    wall_ms: shared.clock.wall_ms(),
                },
                &mut buf,
            )?;
        }
        if !buf.is_empty() {
            writer.send(&buf).await?;
            shared
                .counters
                .bytes_sent
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            last_sent = Instant::now();
        }
        if more {
            continue;
        }
        tokio::select! {
            _ = signal.wait() => {}
            msg = ctl.recv() => {
                if let Some(msg) = msg {
                    buf.clear();
                    wire::encode_frame(&msg, &mut buf)?;
                    writer.send(&buf).await?;
                }
            }
            _ = tokio::time::sleep(heartbeat.min(shared.config.digest_every)) => {}
            _ = close.changed() => return Err(LinkError::Duplicate),
            _ = shutdown.changed() => {
                buf.clear();
                wire::encode_frame(&Message::Leave, &mut buf)?;
                let _ = tokio::time::timeout(Duration::from_millis(200), writer.send(&buf)).await;
                return Err(LinkError::Shutdown);
            }
        }
    }
}

/// Encodes into `buf` the writes the other end lacks, until the send budget is used. Returns whether
/// more remain.
fn fill_ops(
    shared: &Arc<Shared>,
    sync: &Mutex<LinkSync>,
    buf: &mut Vec<u8>,
) -> Result<bool, LinkError> {
    let mut sync = sync.lock();
    for bucket in shared.bucket_list() {
        let state = sync.buckets.entry(bucket.name().clone()).or_default();
        let store = bucket.store();
        // Own writes first (the live flow), then catch-up of other origins.
        let mut origins: Vec<(Origin, u64)> = vec![(shared.me.clone(), u64::MAX)];
        origins.extend(state.target.iter().map(|(o, &t)| (o.clone(), t)));
        for (origin, upto) in origins {
            let mine = store.context_of(&origin);
            let limit = if upto == u64::MAX {
                mine
            } else {
                mine.clamp(1, upto)
            };
            let has = state.remote_has.entry(origin.clone()).or_default();
            let missing = limit.difference(has);
            for &(start, end) in missing.ranges() {
                let mut from = start;
                while from <= end {
                    let (writes, covered) = store.chunk(&origin, from, end, CHUNK_WRITES);
                    let Some(&(_, covered_end)) = covered.ranges().last() else {
                        break;
                    };
                    has.union_with(&covered);
                    let msg = Message::Ops(OpsBatch {
                        bucket: bucket.name().clone(),
                        origin: origin.id().clone(),
                        covered,
                        writes,
                    });
                    wire::encode_frame(&msg, buf)?;
                    from = covered_end + 1;
                    if buf.len() >= SEND_BUDGET {
                        return Ok(true);
                    }
                }
            }
            if upto != u64::MAX {
                state.target.remove(&origin);
            }
        }
    }
    Ok(false)
}
