//! A link: one TCP connection to one other peer, from handshake to close. The protocol itself is in
//! `sync`; this module moves its frames: a reader task that hands every message to the session, and a
//! writer that wakes on local writes (or queued messages, or its timers) and sends whatever the session
//! has due, many frames per syscall.
//!
//! The handshake is everything up to both hellos: the preamble, the Noise handshake on a keyed link
//! (`secure`), then the hellos, within `handshake_timeout`. An accepted connection holds one of the
//! node's handshake slots (`guard`) meanwhile, once protected mode let it in. Whatever goes wrong in
//! it closes that connection, is counted and logged (rate-limited), and touches nothing else. An open
//! link's hello is at most `MAX_OPEN_HELLO` bytes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use crate::error::LinkError;
use crate::net::connection::{FrameReader, FrameWriter, Taken};
use crate::net::guard::{self, Slot, Unprotected};
use crate::net::keys::{KeyAdmitted, KeyLease};
use crate::net::membership::{Admission, Dialing, LinkRef, Members};
use crate::net::secure::{HandshakeError, Proven};
use crate::net::transport::{Listener, Stream};
use crate::node::shared::{resolve, LinkSlot, Shared};
use crate::protocol::sync::{Inbound, LinkSignal, Session, OWED_LIMIT, SEND_BUDGET};
use crate::protocol::wire::{self, Hello, Message, WireError};
use crate::stamps::{stamp_named, Stage};
use crate::warning::{Warning, WarningCode};

static NEXT_LINK_ID: AtomicU64 = AtomicU64::new(1);

/// Largest first frame (the hello) an open link takes. Before the hello nobody is authenticated on an
/// open link, so this is what anyone who reaches the port can make a handshake slot hold; a keyed
/// link's hello comes from a peer that proved the secret and may be up to `wire::MAX_FRAME`. It fits
/// the contexts of a few thousand buckets, which hellos carry until they travel in parts (issue 12).
pub const MAX_OPEN_HELLO: usize = 1024 * 1024;

pub async fn accept_loop(shared: Arc<Shared>, listener: Box<dyn Listener>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let listen = shared.address.ip();
                    let keyed = shared.security.is_keyed();
                    if !guard::admits(keyed, shared.config.insecure, listen, remote.ip()) {
                        drop(stream);
                        shared.guard.count_rejected();
                        let why = Unprotected { listen };
                        shared.warnings.emit(
                            Warning::new(
                                WarningCode::Insecure,
                                format!("a connection from {remote} was refused: {why}"),
                            )
                            .address(remote.to_string()),
                        );
                        continue;
                    }
                    let slot = shared.guard.admit(remote.ip());
                    let s = shared.clone();
                    shared.spawn(async move {
                        if let Err(e) = run(&s, stream, remote, None, Some(slot)).await {
                            tracing::debug!(%remote, error = %e, "inbound link closed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Dials `address` and runs the link until it closes. `Ok` if a link was established.
pub async fn dial_once(shared: &Arc<Shared>, address: &str) -> Result<(), LinkError> {
    let target = resolve(address)
        .await
        .map_err(|e| LinkError::Protocol(e.to_string()))?;
    let timeout = shared.config.handshake_timeout;
    let stream = tokio::time::timeout(timeout, shared.config.transport.connect(target))
        .await
        .map_err(|_| LinkError::Silent(timeout))??;
    run(shared, stream, target, Some(address), None).await
}

/// Membership's dialers open links here.
impl Dialing for Shared {
    fn members(&self) -> &Members {
        Shared::members(self)
    }

    fn backoff(&self) -> (Duration, Duration) {
        (self.config.backoff_min, self.config.backoff_max)
    }

    fn advertised(&self) -> SocketAddr {
        self.advertised
    }

    fn rng(&self) -> &Mutex<StdRng> {
        &self.rng
    }

    fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    fn unreachable_after(&self) -> Duration {
        self.config.unreachable_after
    }

    fn warn(&self, warning: Warning) {
        self.warnings.emit(warning)
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        Shared::spawn(self, task)
    }

    fn dial_once(
        node: &Arc<Self>,
        address: &str,
    ) -> impl Future<Output = Result<(), LinkError>> + Send {
        dial_once(node, address)
    }
}

fn hello(shared: &Shared, members: Vec<wire::MemberInfo>) -> Message {
    let host = shared.advertised.ip();
    Message::Hello(shared.local.hello(
        shared.advertised.port(),
        (!host.is_unspecified()).then(|| host.to_string()),
        members,
    ))
}

/// What a finished handshake hands to the link: its reader and writer, the other end's hello, the
/// members this node's hello listed, and the bytes the hellos took each way.
struct Opened {
    reader: FrameReader,
    writer: FrameWriter,
    theirs: Hello,
    /// A keyed link's hold on the other end's id, kept until the link closes.
    _lease: Option<KeyLease>,
    told: Vec<Arc<str>>,
    sent: usize,
    received: Taken,
}

/// The handshake, bounded by the handshake timeout and, for an accepted connection, by its slot.
async fn handshake(
    shared: &Arc<Shared>,
    stream: Box<dyn Stream>,
    dialer: bool,
    slot: Option<Slot>,
) -> Result<Opened, LinkError> {
    let timeout = shared.config.handshake_timeout;
    let progress = slot.as_ref().map(Slot::progress);
    let steps = async {
        stream.set_nodelay(true)?;
        let (mut reader, mut writer) =
            crate::net::connection::open(stream, &shared.security, dialer, progress).await?;
        let known = shared.members.known();
        let told = known.iter().map(|m| m.node.clone()).collect();
        let mut buf = Vec::new();
        wire::encode_frame(&hello(shared, known), &mut buf)?;
        writer.send(&buf).await?;
        let max_hello = if shared.security.is_keyed() {
            wire::MAX_FRAME
        } else {
            MAX_OPEN_HELLO
        };
        let (first, received) = reader.read_hello(timeout, max_hello).await?;
        let Message::Hello(theirs) = first else {
            return Err(LinkError::Protocol("first message was not a hello".into()));
        };
        let lease = match reader.proven() {
            Some(proven) => admit_key(shared, &theirs, proven)?,
            None => None,
        };
        Ok(Opened {
            reader,
            writer,
            theirs,
            _lease: lease,
            told,
            sent: buf.len(),
            received,
        })
    };
    let bounded = async {
        tokio::time::timeout(timeout, steps)
            .await
            .map_err(|_| LinkError::HandshakeTimeout(timeout))?
    };
    match slot {
        None => bounded.await,
        Some(mut slot) => tokio::select! {
            biased;
            _ = slot.evicted() => Err(LinkError::Evicted),
            r = bounded => r,
        },
    }
}

/// A keyed link speaks only as the id its proven static key may speak for (`keys`), so a member
/// cannot say hello under the id of a linked peer and take over its links; the lease holds the id
/// for the link's life. Its own id is left to the namesake rules of `run`: only a process holding
/// this node's key proves it.
fn admit_key(
    shared: &Shared,
    theirs: &Hello,
    proven: Proven,
) -> Result<Option<KeyLease>, LinkError> {
    let id = &theirs.replica.node;
    if **id == *shared.local.id {
        return Ok(None);
    }
    let (admitted, lease) = shared
        .keys
        .admit(id, proven)
        .map_err(|why| LinkError::KeyRefused {
            id: id.to_string(),
            why,
        })?;
    if let KeyAdmitted::Replaced { old, old_stable } = admitted {
        let kept = if old_stable {
            "its old key was kept in a data directory, so either that directory was lost"
        } else {
            "its old key was drawn for one process, so either it restarted without a data directory"
        };
        shared.warnings.emit(
            Warning::new(
                WarningCode::IdKey,
                format!(
                    "the peer {id} came back with a new key ({}, was {}) while none of its links \
                     was up: {kept}, or a member holding the cluster secret took its id while it \
                     is down (peerKeys pins an id to its key)",
                    crate::net::secure::key_to_hex(&proven.key),
                    crate::net::secure::key_to_hex(&old),
                ),
            )
            .peer(&**id),
        );
    }
    Ok(Some(lease))
}

/// Counts and logs a connection that failed its handshake. What the other end did wrong is a
/// rejection; a connection it closed is not, nor one this node's shutdown or a newer connection
/// ended. A mismatch of secrets or versions is a warning on both ends (EAUTH, EVERSION): the acceptor
/// names the connection's address, the dialer the address it dialed.
fn handshake_failed(shared: &Shared, remote: SocketAddr, dialed: Option<&str>, e: &LinkError) {
    let guard = &shared.guard;
    let address = dialed.map_or_else(|| remote.to_string(), str::to_string);
    let warn = |code, message: String| {
        if dialed.is_none() {
            guard.count_rejected();
        }
        shared
            .warnings
            .emit(Warning::new(code, message).address(address.clone()));
    };
    match e {
        LinkError::Shutdown => {}
        LinkError::Evicted => guard.warn(&remote, e, "connection closed in the handshake"),
        LinkError::Handshake(HandshakeError::WrongSecret) => warn(
            WarningCode::Auth,
            format!("a connection from {address} was refused: it dialed with another secret"),
        ),
        LinkError::Handshake(HandshakeError::KeyRefused) => warn(
            WarningCode::Auth,
            format!("the peer at {address} refused this peer's secret: it holds another one"),
        ),
        LinkError::KeyRefused { id, .. } => warn(
            WarningCode::Auth,
            format!(
                "the peer at {address} was refused: {e}; it holds the cluster secret and may be \
                 impersonating {id} (pinning each id to its key prevents it)"
            ),
        ),
        LinkError::Handshake(HandshakeError::TheyHaveASecret) => warn(
            WarningCode::Auth,
            format!("the peer at {address} has a secret and this peer has none"),
        ),
        LinkError::Handshake(HandshakeError::TheyHaveNoSecret) => warn(
            WarningCode::Auth,
            format!("the peer at {address} has no secret and this peer has one"),
        ),
        LinkError::Handshake(HandshakeError::Version(_))
        | LinkError::Wire(WireError::Version(_)) => warn(
            WarningCode::Version,
            format!("the peer at {address} speaks another protocol version: {e}"),
        ),
        LinkError::Io(_) if dialed.is_some() => guard.warn(
            &remote,
            e,
            "the other end closed the connection in the handshake (does it have the same secret? \
             without one, does it accept peers from the network?)",
        ),
        LinkError::Io(_) => {
            tracing::debug!(%remote, error = %e, "connection closed in the handshake")
        }
        _ => guard.reject(&remote, e),
    }
}

async fn run(
    shared: &Arc<Shared>,
    stream: Box<dyn Stream>,
    remote: SocketAddr,
    dialed: Option<&str>,
    slot: Option<Slot>,
) -> Result<(), LinkError> {
    let opened = match handshake(shared, stream, dialed.is_some(), slot).await {
        Ok(opened) => opened,
        Err(e) => {
            handshake_failed(shared, remote, dialed, &e);
            return Err(e);
        }
    };
    let Opened {
        mut reader,
        mut writer,
        theirs,
        _lease,
        told,
        sent,
        received,
    } = opened;
    let n = received.wire;
    // The hellos go plain: the reader of the first one caps it before knowing who sent it.
    writer.compress(shared.config.compression);
    let counters = &shared.local.counters;
    counters
        .bytes_sent
        .fetch_add(sent as u64, Ordering::Relaxed);
    counters
        .bytes_received
        .fetch_add(n as u64, Ordering::Relaxed);
    let local = &shared.local;
    let remote_host = theirs
        .listen_host
        .clone()
        .unwrap_or_else(|| remote.ip().to_string());
    let address = SocketAddr::new(
        remote_host.parse().unwrap_or(remote.ip()),
        theirs.listen_port,
    )
    .to_string();
    if theirs.replica.node == local.id {
        let (mine, other) = (local.me.id().incarnation, theirs.replica.incarnation);
        if other == mine {
            return Err(LinkError::SelfDial);
        }
        counters.links_refused.fetch_add(1, Ordering::Relaxed);
        let keeps = if mine > other {
            "this process started later and keeps the links; the peers refuse the other's"
        } else {
            "the other process started later: the peers keep its links and refuse this one's"
        };
        shared.warnings.emit(
            Warning::new(
                WarningCode::IdConflict,
                format!(
                    "another process uses this peer's id {}, at {address}: {keeps}",
                    local.id
                ),
            )
            .peer(&*local.id)
            .address(&address),
        );
        return Err(LinkError::Protocol(format!(
            "another process uses my id {}",
            local.id
        )));
    }
    let session = match Session::new(local, &theirs) {
        Ok(s) => s,
        Err(e) => {
            counters.links_refused.fetch_add(1, Ordering::Relaxed);
            if let LinkError::ClockSkew { ahead_ms } = e {
                skew_refused(shared, &theirs.replica.node, &address, ahead_ms);
            } else {
                tracing::warn!(%remote, peer = %theirs.replica.node, error = %e, "link refused");
            }
            return Err(e);
        }
    };

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
    let to_this_link = link.ctl.clone();
    let node = theirs.replica.node.clone();
    let newly_known = shared.members.learn(&node, &address);
    match shared.members.register(&local.id, &address, dialed, link) {
        Admission::Reject => return Err(LinkError::Duplicate),
        Admission::Older {
            newer,
            address: kept,
        } => {
            shared.warnings.emit(
                Warning::new(
                    WarningCode::IdConflict,
                    format!(
                        "two processes use the id {node}: the one at {address} (incarnation \
                         {:x}) is refused, the one started later, at {kept} (incarnation \
                         {newer:x}), keeps its links",
                        theirs.replica.incarnation
                    ),
                )
                .peer(&*node)
                .address(&address),
            );
            return Err(LinkError::Duplicate);
        }
        Admission::Accept(replaced) => {
            for old in replaced {
                let _ = old.close.send(true);
            }
        }
    }
    tracing::debug!(peer = %node, %address, "link up");
    // A member learned after this node's hello went out and before this link counted among its
    // links was broadcast to the links of that moment only: the other end hears of it here (members
    // are pushed, never polled). From now on every member learned reaches this link by broadcast.
    let untold: Vec<wire::MemberInfo> = shared
        .members
        .known()
        .into_iter()
        .filter(|m| m.node != node && !told.contains(&m.node))
        .collect();
    if !untold.is_empty() {
        let _ = to_this_link.send(Message::Members(untold));
    }
    if newly_known {
        shared
            .members
            .broadcast(&Message::Members(vec![wire::MemberInfo {
                node: node.clone(),
                address: address.clone(),
            }]));
    }
    for m in &theirs.members {
        learn_member(shared, &m.node, &m.address, &node);
    }

    let slot = Arc::new(LinkSlot {
        id: link_id,
        node: node.clone(),
        address: address.clone(),
        session: Arc::new(Mutex::new(session)),
        signal: Arc::new(LinkSignal::default()),
        bytes_sent: Arc::new(AtomicU64::new(sent as u64)),
        bytes_received: Arc::new(AtomicU64::new(n as u64)),
        plain_sent: AtomicU64::new(sent as u64),
        plain_received: AtomicU64::new(received.plain as u64),
        caught_up_at: Mutex::new(Instant::now()),
        writes_received: AtomicU64::new(0),
        apply_us: AtomicU64::new(0),
    });
    shared.links.lock().push(slot.clone());
    local.signals.add(slot.signal.clone());
    slot.signal.wake();

    let result = {
        let drained = Notify::new();
        let write_side = write_loop(
            shared,
            &mut writer,
            &slot,
            ctl_rx,
            close_rx.clone(),
            &drained,
        );
        let read_side = read_loop(shared, &mut reader, &slot, close_rx, &drained);
        tokio::select! {
            biased;
            r = write_side => r,
            r = read_side => r,
        }
    };
    local.signals.remove(&slot.signal);
    shared.links.lock().retain(|l| l.id != link_id);
    shared.fetches.link_closed(link_id);
    writer.shutdown().await;
    let left = matches!(result, Err(LinkError::Remote));
    let broke = matches!(
        result,
        Err(LinkError::Protocol(_) | LinkError::Wire(_) | LinkError::Record(_))
    );
    if broke {
        let forgotten = shared
            .members
            .expel(&node, link_id, shared.config.member_timeout);
        shared.members.broadcast(&Message::Forgotten(forgotten));
    } else {
        shared.members.unregister(&node, link_id, left);
    }
    if !shared.members.is_linked(&node) {
        local.acks.on_peer_down(&node);
    }
    if let Err(e @ (LinkError::Protocol(_) | LinkError::Wire(_) | LinkError::Record(_))) = &result {
        counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
        shared.warnings.emit(
            Warning::new(
                WarningCode::Protocol,
                format!("link closed: the peer broke the protocol: {e}"),
            )
            .peer(&*node)
            .address(&address),
        );
    } else if let Err(e @ LinkError::Stalled(_)) = &result {
        shared.guard.warn(
            &format_args!("{node} at {address}"),
            e,
            "link dropped: the peer stopped reading what it is owed",
        );
    } else if let Err(LinkError::ClockSkew { ahead_ms }) = result {
        skew_refused(shared, &node, &address, ahead_ms);
    } else {
        tracing::debug!(peer = %node, %address, reason = ?result, "link down");
    }
    match result {
        Err(LinkError::Shutdown) | Err(LinkError::Remote) => Ok(()),
        Err(_) if dialed.is_some() => Ok(()),
        other => other,
    }
}

/// Reports (`ESKEW`) a peer refused because its wall clock, measured in its hello or a ping, runs
/// `ahead_ms` ahead of this one's.
fn skew_refused(shared: &Shared, node: &str, address: &str, ahead_ms: u64) {
    shared.warnings.emit(
        Warning::new(
            WarningCode::Skew,
            format!(
                "the peer {node} at {address} was refused: its clock is {ahead_ms} ms ahead of \
                 this peer's, past maxClockSkew ({} ms)",
                shared.local.max_clock_skew_ms
            ),
        )
        .peer(node)
        .address(address),
    );
}

/// Reports (`ESKEW`) writes a link brought stamped `ahead_ms` ahead of this clock: the link's other
/// end is within the skew, but some member that stamped them is not. They were dropped, and come
/// again once this clock is within the skew of them.
fn skewed_writes(shared: &Shared, slot: &LinkSlot, ahead_ms: u64) {
    shared.warnings.emit(
        Warning::new(
            WarningCode::Skew,
            format!(
                "writes from the peer {} at {} are stamped {ahead_ms} ms ahead of this peer's \
                 clock, past maxClockSkew ({} ms): a member's clock runs that far ahead; they are \
                 taken once this clock is within the skew of them",
                slot.node, slot.address, shared.local.max_clock_skew_ms
            ),
        )
        .peer(&*slot.node)
        .address(&slot.address),
    );
}

fn repaired_from(shared: &Shared, slot: &LinkSlot, bucket: &str, registers: usize) {
    shared.warnings.emit(
        Warning::new(
            WarningCode::Diverged,
            format!(
                "bucket {bucket}: this peer and {} at {} covered the same writes but stored \
                 different registers (a member claimed coverage it did not back, or a bug); \
                 {registers} registers were repaired from that peer",
                slot.node, slot.address
            ),
        )
        .peer(&*slot.node)
        .address(&slot.address),
    );
}

/// A member named in the list of `by`, a linked peer.
fn learn_member(shared: &Arc<Shared>, node: &Arc<str>, address: &str, by: &Arc<str>) {
    if **node == *shared.local.id {
        crate::net::membership::probe_namesake(shared, address);
        return;
    }
    if shared.members.learn_listed(node, address, by) {
        crate::net::membership::dial(shared, address.to_string(), false);
    }
}

/// Requests that make this replica send what it holds, per link: a token bucket of `burst`
/// requests refilled at `per_sec`. Past it the link stops reading until the next token, so a member
/// cannot make this replica scan and send faster than that, and an honest burst is only delayed.
struct Allowance {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    at: Instant,
}

/// A peer that takes none of this link's bytes for this many times `Config::dead_after` is dropped
/// (`FrameWriter::send_within`); longer than silence, since a reader may be busy merging a batch.
const STALL_FACTOR: u32 = 4;

/// Fetch requests per link: a burst, then per second (each may scan a whole bucket).
const FETCH_BURST: f64 = 16.0;
const FETCHES_PER_SEC: f64 = 8.0;
/// Pull and held requests per link: a burst, then per second. Honest pulls come at most one per
/// bucket and origin per planning pass, helds one per origin per resync.
const PULL_BURST: f64 = 4096.0;
const PULLS_PER_SEC: f64 = 1024.0;

impl Allowance {
    fn new(burst: f64, per_sec: f64) -> Self {
        Allowance {
            tokens: burst,
            burst,
            per_sec,
            at: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
        }
    }
}

async fn read_loop(
    shared: &Arc<Shared>,
    reader: &mut FrameReader,
    slot: &LinkSlot,
    mut close: watch::Receiver<bool>,
    drained: &Notify,
) -> Result<(), LinkError> {
    let silence = shared.config.dead_after;
    let mut fetches = Allowance::new(FETCH_BURST, FETCHES_PER_SEC);
    let mut pulls = Allowance::new(PULL_BURST, PULLS_PER_SEC);
    loop {
        // Paused while the other end is owed too much: it must read before it may ask more.
        while slot.session.lock().owed() > OWED_LIMIT {
            tokio::select! {
                biased;
                _ = close.changed() => return Err(LinkError::Duplicate),
                _ = drained.notified() => {}
            }
        }
        // Shutdown is the writer's to handle: it says Leave first.
        let (msg, taken) = tokio::select! {
            biased;
            _ = close.changed() => return Err(LinkError::Duplicate),
            r = reader.read(silence) => r?,
        };
        // A block inflates to thousands of frames read without waiting on the socket: this task
        // yields its thread when its budget is spent, or one member's block starves every link.
        tokio::task::coop::consume_budget().await;
        let n = taken.wire as u64;
        shared
            .local
            .counters
            .bytes_received
            .fetch_add(n, Ordering::Relaxed);
        slot.bytes_received.fetch_add(n, Ordering::Relaxed);
        slot.plain_received
            .fetch_add(taken.plain as u64, Ordering::Relaxed);
        let allowance = match &msg {
            Message::FetchRequest { .. } => Some(&mut fetches),
            Message::Pull { .. } | Message::Held { .. } | Message::HeldKeys { .. } => {
                Some(&mut pulls)
            }
            _ => None,
        };
        if let Some(allowance) = allowance {
            while let Err(wait) = allowance.take() {
                tokio::select! {
                    biased;
                    _ = close.changed() => return Err(LinkError::Duplicate),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        let refused = shared
            .local
            .counters
            .buckets_refused
            .load(Ordering::Relaxed);
        let carried = msg.writes_carried();
        let applying = (carried > 0).then(Instant::now);
        if carried > 0 {
            stamp_named(Stage::ReaderDecoded, &slot.node);
        }
        let (inbound, skewed, repaired) = {
            let mut session = slot.session.lock();
            let inbound = session.handle(&shared.local, msg)?;
            (inbound, session.take_skewed(), session.take_repaired())
        };
        if let Some(started) = applying {
            stamp_named(Stage::ReaderHandled, &slot.node);
            let us = started.elapsed().as_micros() as u64;
            slot.apply_us.fetch_add(us, Ordering::Relaxed);
            slot.writes_received
                .fetch_add(carried as u64, Ordering::Relaxed);
        }
        if let Some(ahead_ms) = skewed {
            skewed_writes(shared, slot, ahead_ms);
        }
        for (bucket, registers) in repaired {
            repaired_from(shared, slot, &bucket, registers);
        }
        if shared
            .local
            .counters
            .buckets_refused
            .load(Ordering::Relaxed)
            > refused
        {
            shared.warnings.emit(
                Warning::new(
                    WarningCode::Limit,
                    format!(
                        "the peer named more buckets than maxBuckets ({}) allows: what it sent \
                         for the new ones is ignored",
                        shared.config.max_buckets
                    ),
                )
                .peer(&*slot.node)
                .address(&slot.address),
            );
        }
        match inbound {
            Inbound::Nothing => {}
            Inbound::Members(list) => {
                for m in list {
                    learn_member(shared, &m.node, &m.address, &slot.node);
                }
            }
            Inbound::Forgotten(list) => {
                // Passed on as this node's own word: peers that knew them only from here forget them.
                let forgotten: Vec<Arc<str>> = list
                    .into_iter()
                    .filter(|n| shared.members.disown(n, &slot.node))
                    .collect();
                if !forgotten.is_empty() {
                    shared.members.broadcast(&Message::Forgotten(forgotten));
                }
            }
            Inbound::Leave => return Err(LinkError::Remote),
            Inbound::Fetched { id, count, done } => shared.fetches.progress(id, count, done),
        }
        slot.signal.wake();
    }
}

/// Sends `frames` (compressed where that pays) and counts them: the bytes on the wire for the node
/// and the link, the frames as they were for the link.
async fn send_counted(
    shared: &Shared,
    slot: &LinkSlot,
    writer: &mut FrameWriter,
    frames: &[u8],
    stall: Duration,
) -> Result<(), LinkError> {
    let n = writer.send_within(frames, stall).await? as u64;
    shared
        .local
        .counters
        .bytes_sent
        .fetch_add(n, Ordering::Relaxed);
    slot.bytes_sent.fetch_add(n, Ordering::Relaxed);
    slot.plain_sent
        .fetch_add(frames.len() as u64, Ordering::Relaxed);
    Ok(())
}

async fn write_loop(
    shared: &Arc<Shared>,
    writer: &mut FrameWriter,
    slot: &LinkSlot,
    mut ctl: mpsc::UnboundedReceiver<Message>,
    mut close: watch::Receiver<bool>,
    drained: &Notify,
) -> Result<(), LinkError> {
    let stall = shared.config.dead_after * STALL_FACTOR;
    let mut shutdown = shared.shutdown.clone();
    let heartbeat = shared.config.heartbeat;
    let digest_every = shared.config.digest_every;
    let mut last_sent = Instant::now();
    let mut last_digest = Instant::now();
    let mut buf = Vec::with_capacity(SEND_BUDGET + 64 * 1024);
    loop {
        buf.clear();
        while let Ok(msg) = ctl.try_recv() {
            wire::encode_frame(&msg, &mut buf)?;
        }
        let digest_due = last_digest.elapsed() >= digest_every;
        if digest_due {
            last_digest = Instant::now();
        }
        let more = slot
            .session
            .lock()
            .fill(&shared.local, &mut buf, digest_due)?;
        stamp_named(Stage::WriterFilled, &slot.node);
        if buf.is_empty() && last_sent.elapsed() >= heartbeat {
            let ping = Message::Ping {
                wall_ms: shared.local.clock.wall_ms(),
            };
            wire::encode_frame(&ping, &mut buf)?;
        }
        // The reader may be waiting for the answers just taken from the session to be gone.
        drained.notify_one();
        if !buf.is_empty() {
            send_counted(shared, slot, writer, &buf, stall).await?;
            last_sent = Instant::now();
        }
        if more {
            continue;
        }
        // Biased (shutdown and close first), so a seeded simulation takes the same branch every run.
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                buf.clear();
                wire::encode_frame(&Message::Leave, &mut buf)?;
                let _ = tokio::time::timeout(Duration::from_millis(200), writer.send(&buf)).await;
                return Err(LinkError::Shutdown);
            }
            _ = close.changed() => return Err(LinkError::Duplicate),
            _ = slot.signal.wait() => stamp_named(Stage::WriterWoke, &slot.node),
            msg = ctl.recv() => {
                if let Some(msg) = msg {
                    buf.clear();
                    wire::encode_frame(&msg, &mut buf)?;
                    send_counted(shared, slot, writer, &buf, stall).await?;
                }
            }
            _ = tokio::time::sleep(heartbeat.min(digest_every)) => {}
        }
    }
}
