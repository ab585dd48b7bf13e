//! Membership: which peers exist, where they listen, which links to them are up, and the dialers that
//! keep a link to each of them (reconnecting forever with capped, jittered backoff).
//!
//! One link per pair: both ends may dial at once; once both links are up, each end keeps the one dialed
//! by the smaller node id and closes the other, so both ends choose the same link. A link from a newer
//! incarnation of a node replaces the old one at once.
//!
//! Two processes with one id: the one started last (the larger incarnation) keeps the links. A link
//! from an older incarnation while a newer one is linked is refused, and reported: a restarted process's
//! predecessor is gone and never dials again, so an older incarnation that does is alive, a namesake.
//! The namesakes learn of each other from the member lists of the peers they meet (their own id at an
//! address not theirs): each probes that address once in a while, and the link both ends then refuse
//! (same id, another incarnation) is reported on both.
//!
//! The cluster size the ack levels count (`cluster_size`) never shrinks because a peer cannot reach
//! the others: it is this peer, plus every member known now, plus every member forgotten (unreachable
//! past the member timeout) less than a member timeout ago, plus every configured seed, counted as the
//! node that answered there once met, or the member known at that address (so once), and not at all
//! when it is this peer. Only a member that
//! says goodbye (a clean close) stops counting at once. Every member that was connected within the last
//! member timeout is in it, so it is never less than the largest connected set seen in that time.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::error::LinkError;
use crate::hash::{HashMap, HashSet};
use crate::protocol::wire::{MemberInfo, Message};
use crate::replication::replica::ReplicaId;
use crate::report::Handoff;
use crate::warning::{Warning, WarningCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEventKind {
    Up,
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEvent {
    pub kind: PeerEventKind,
    pub id: String,
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: String,
    pub address: String,
    pub connected: bool,
}

/// One established link, as membership sees it.
#[derive(Clone)]
pub struct LinkRef {
    pub id: u64,
    pub replica: ReplicaId,
    pub dialed_by_me: bool,
    pub ctl: mpsc::UnboundedSender<Message>,
    pub close: watch::Sender<bool>,
}

struct Member {
    address: String,
    links: Vec<LinkRef>,
    /// When its last link went down (or when it was learned, if never linked).
    unreachable_since: Option<Instant>,
    /// The linked peers whose member lists named it and that have not disowned it since (see
    /// `disown`).
    introducers: HashSet<Arc<str>>,
    /// Whether it ever linked to this node: then it exists, whoever vouches for it.
    linked: bool,
}

#[derive(Default)]
struct Table {
    /// This node's id.
    me: Arc<str>,
    /// Configured seeds, as given: addresses, or names (`resolve`).
    seeds: Vec<String>,
    /// What each seed name resolved to last (names that never resolved are absent).
    resolved: HashMap<String, Vec<String>>,
    members: HashMap<Arc<str>, Member>,
    /// Members forgotten for being unreachable, when, and their address; they count for the ack levels
    /// a while more.
    departed: HashMap<Arc<str>, (Instant, String)>,
    /// Members cut off for breaking the protocol, and until when other members' lists are not
    /// believed about them (see `expel`).
    expelled: HashMap<Arc<str>, Instant>,
    /// Addresses with a dialer running.
    dialing: HashSet<String>,
    /// Addresses where a member list put this node's id, and when each was last probed.
    probed: HashMap<String, Instant>,
    /// Which node answered at an address: the address it listens on, and the one dialed to reach it.
    node_at: HashMap<String, Arc<str>>,
    /// Learned addresses that did not answer: the delay before the next dial and when it was set. A
    /// member forgotten and learned again from gossip resumes that backoff rather than starting over,
    /// until the entry is older than `UNANSWERED_BACKOFF_MAX` twice.
    unanswered: HashMap<String, (Duration, Instant)>,
    closed: bool,
}

#[derive(Default)]
pub struct Members {
    table: Mutex<Table>,
    /// Where peer events go: held until the first subscriber comes (a link may come up before the
    /// binding's event pump subscribes, and its `peer-up` must not be lost), then sent to it.
    events: Mutex<Handoff<PeerEvent, EARLY_EVENTS>>,
}

/// Events kept for a subscriber that has not come yet, at most (the oldest go first past it).
const EARLY_EVENTS: usize = 1024;

/// What `register` decided about a new link.
pub enum Admission {
    /// Use it; close the links listed (replaced by it).
    Accept(Vec<LinkRef>),
    /// A better link to the same node is up; close this one.
    Reject,
    /// A newer incarnation of the same node is linked, from `address`: two live processes use this
    /// id. Close this link.
    Older { newer: u64, address: String },
}

impl Members {
    /// The members table of node `me`, configured with `seeds`.
    pub fn new(me: Arc<str>, seeds: Vec<String>) -> Self {
        let members = Members::default();
        {
            let mut t = members.table.lock();
            t.me = me;
            t.seeds = seeds;
        }
        members
    }

    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<PeerEvent> {
        self.events.lock().subscribe()
    }

    fn emit(&self, kind: PeerEventKind, id: &str, address: &str) {
        let event = PeerEvent {
            kind,
            id: id.to_string(),
            address: address.to_string(),
        };
        self.events.lock().send(event);
    }

    /// Records a member; returns true when it was not known before.
    pub fn learn(&self, node: &Arc<str>, address: &str) -> bool {
        let mut t = self.table.lock();
        if t.closed {
            return false;
        }
        match t.members.get_mut(node) {
            Some(m) => {
                if m.links.is_empty() && m.address != address {
                    m.address = address.to_string();
                }
                false
            }
            None => {
                t.departed.remove(node);
                t.members.insert(
                    node.clone(),
                    Member {
                        address: address.to_string(),
                        links: Vec::new(),
                        unreachable_since: Some(Instant::now()),
                        introducers: HashSet::default(),
                        linked: false,
                    },
                );
                true
            }
        }
    }

    /// The same for a member named in the list of the linked peer `by`, which is remembered as one
    /// that vouches for it: not believed about a member this node expelled less than its
    /// `ignore_for` ago (it would hold up collection again, see `expel`).
    pub fn learn_listed(&self, node: &Arc<str>, address: &str, by: &Arc<str>) -> bool {
        {
            let mut t = self.table.lock();
            let now = Instant::now();
            t.expelled.retain(|_, until| *until > now);
            if t.expelled.contains_key(node) {
                return false;
            }
        }
        let new = self.learn(node, address);
        if let Some(m) = self.table.lock().members.get_mut(node) {
            if node != by {
                m.introducers.insert(by.clone());
            }
        }
        new
    }

    /// `by`, a linked peer, forgot `node` for cause (see `expel`) and no longer vouches for it.
    /// Forgets `node` too, and returns true, when no other peer vouches for it and it never linked
    /// here: a member this node has no other word of would hold up collection until the member
    /// timeout. One that is real and linked to others (merely cut off from this node and `by`) is
    /// forgotten like a member away past the timeout, which is safe: it is checked against the
    /// horizon when it comes back (see `collect`).
    pub fn disown(&self, node: &Arc<str>, by: &Arc<str>) -> bool {
        let mut t = self.table.lock();
        let t = &mut *t;
        let Some(m) = t.members.get_mut(node) else {
            return false;
        };
        m.introducers.remove(by);
        let vouched = m.introducers.iter().any(|i| !t.expelled.contains_key(i));
        if m.linked || !m.links.is_empty() || vouched {
            return false;
        }
        t.members.remove(node);
        true
    }

    /// Forgets `node` at once (as if it had left) once its link `link_id` was closed for breaking
    /// the protocol, and ignores it in other members' lists for `ignore_for`. A member that is merely
    /// unreachable holds up tombstone collection until the member timeout; one that broke the
    /// protocol would otherwise do so again each time it linked and broke it once more. Forgetting
    /// is safe: a forgotten replica that comes back is checked against the horizon like any other
    /// (see `collect`). A link it opens itself makes it a member again.
    ///
    /// Members only expelled ones vouched for, and that never linked here, are forgotten and
    /// ignored with it: an expelled member's list is no evidence that they exist. Returns every id
    /// forgotten, `node` first, for the linked peers to hear (`Message::Forgotten`).
    pub fn expel(&self, node: &Arc<str>, link_id: u64, ignore_for: Duration) -> Vec<Arc<str>> {
        self.unregister(node, link_id, true);
        let mut t = self.table.lock();
        let now = Instant::now();
        t.expelled.retain(|_, until| *until > now);
        t.expelled.insert(node.clone(), now + ignore_for);
        let t = &mut *t;
        let vouched_by_expelled: Vec<Arc<str>> = t
            .members
            .iter()
            .filter(|(_, m)| {
                !m.linked
                    && m.links.is_empty()
                    && !m.introducers.is_empty()
                    && m.introducers.iter().all(|i| t.expelled.contains_key(i))
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut forgotten = vec![node.clone()];
        for id in vouched_by_expelled {
            t.members.remove(&id);
            t.expelled.insert(id.clone(), now + ignore_for);
            forgotten.push(id);
        }
        forgotten
    }

    /// Admits a link that finished its handshake, applying the one-link-per-pair rule. `dialed`: the
    /// address this node dialed to open it, if it did.
    pub fn register(
        &self,
        my_id: &str,
        address: &str,
        dialed: Option<&str>,
        link: LinkRef,
    ) -> Admission {
        let node: Arc<str> = link.replica.node.clone();
        let mut t = self.table.lock();
        if t.closed {
            return Admission::Reject;
        }
        t.node_at.insert(address.to_string(), node.clone());
        if let Some(dialed) = dialed {
            t.node_at.insert(dialed.to_string(), node.clone());
        }
        t.departed.remove(&node);
        let member = t.members.entry(node.clone()).or_insert_with(|| Member {
            address: address.to_string(),
            links: Vec::new(),
            unreachable_since: None,
            introducers: HashSet::default(),
            linked: true,
        });
        let mut replaced = Vec::new();
        for existing in &member.links {
            let keep_new = if existing.replica.incarnation != link.replica.incarnation {
                link.replica.incarnation > existing.replica.incarnation
            } else {
                // The link dialed by the smaller id is the one both ends keep.
                let canonical_dialed_by_me = my_id < &*node;
                link.dialed_by_me == canonical_dialed_by_me
            };
            if !keep_new {
                if existing.replica.incarnation > link.replica.incarnation {
                    return Admission::Older {
                        newer: existing.replica.incarnation,
                        address: member.address.clone(),
                    };
                }
                return Admission::Reject;
            }
            replaced.push(existing.clone());
        }
        let first = member.links.is_empty();
        member
            .links
            .retain(|l| !replaced.iter().any(|r| r.id == l.id));
        member.links.push(link);
        member.linked = true;
        member.address = address.to_string();
        member.unreachable_since = None;
        drop(t);
        if first {
            self.emit(PeerEventKind::Up, &node, address);
        }
        Admission::Accept(replaced)
    }

    /// Forgets a closed link; fires peer-down when it was the node's last one.
    pub fn unregister(&self, node: &Arc<str>, link_id: u64, forget_member: bool) {
        let mut t = self.table.lock();
        let Some(member) = t.members.get_mut(node) else {
            return;
        };
        let before = member.links.len();
        member.links.retain(|l| l.id != link_id);
        let went_down = before > 0 && member.links.is_empty();
        if went_down {
            member.unreachable_since = Some(Instant::now());
        }
        let address = member.address.clone();
        if forget_member && member.links.is_empty() {
            t.members.remove(node);
        }
        let closed = t.closed;
        drop(t);
        if went_down && !closed {
            self.emit(PeerEventKind::Down, node, &address);
        }
    }

    pub fn is_linked(&self, node: &str) -> bool {
        self.table
            .lock()
            .members
            .get(node)
            .is_some_and(|m| !m.links.is_empty())
    }

    /// Forgets members that had no link for `timeout`; returns their ids.
    pub fn forget_unreachable(&self, timeout: Duration) -> Vec<Arc<str>> {
        let mut t = self.table.lock();
        let gone: Vec<Arc<str>> = t
            .members
            .iter()
            .filter(|(_, m)| {
                m.unreachable_since
                    .is_some_and(|at| at.elapsed() >= timeout)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let now = Instant::now();
        for id in &gone {
            if let Some(m) = t.members.remove(id) {
                t.departed.insert(id.clone(), (now, m.address));
            }
        }
        gone
    }

    /// Whether `address`, where a member list put this node's id, is due a probe (and if so, notes it
    /// as probed now): not when it is known to reach this very node, nor within `PROBE_EVERY` of the
    /// last probe.
    fn probe_due(&self, address: &str) -> bool {
        let mut t = self.table.lock();
        if t.closed || t.node_at.get(address).is_some_and(|n| *n == t.me) {
            return false;
        }
        let now = Instant::now();
        t.probed
            .retain(|_, at| now.duration_since(*at) < PROBE_EVERY);
        if t.probed.contains_key(address) {
            return false;
        }
        t.probed.insert(address.to_string(), now);
        true
    }

    /// `address` reached this very node.
    fn mark_self(&self, address: &str) {
        let mut t = self.table.lock();
        let me = t.me.clone();
        t.node_at.insert(address.to_string(), me);
    }

    /// How many peers the ack levels count as the cluster, this one included (see the module notes):
    /// 1 for a peer with no seeds and no members, a cluster of one.
    pub fn cluster_size(&self, member_timeout: Duration) -> usize {
        let mut t = self.table.lock();
        t.departed
            .retain(|_, (at, _)| at.elapsed() < member_timeout);
        let t = &*t;
        let mut counted: HashSet<&str> = t.members.keys().map(|id| &**id).collect();
        counted.extend(t.departed.keys().map(|id| &**id));
        // A seed not met yet may be a member already known from member lists, at that address.
        let listed_at = |seed: &str| {
            let member = t.members.iter().find(|(_, m)| m.address == seed);
            let departed = t.departed.iter().find(|(_, (_, a))| a == seed);
            member.map(|(id, _)| id).or(departed.map(|(id, _)| id))
        };
        let mut unmet: HashSet<&str> = HashSet::default();
        // A name stands for the addresses it last resolved to; one that never resolved, for itself.
        let seeds = t.seeds.iter().flat_map(|seed| match t.resolved.get(seed) {
            Some(addresses) => addresses.iter().map(String::as_str).collect(),
            None => vec![seed.as_str()],
        });
        for seed in seeds {
            match t.node_at.get(seed).or_else(|| listed_at(seed)) {
                Some(node) if *node == t.me => {}
                Some(node) => {
                    counted.insert(node);
                }
                None => {
                    unmet.insert(seed);
                }
            }
        }
        1 + counted.len() + unmet.len()
    }

    /// Ids of every current member (linked or not).
    pub fn member_ids(&self) -> Vec<Arc<str>> {
        self.table.lock().members.keys().cloned().collect()
    }

    pub fn is_member(&self, node: &str) -> bool {
        self.table.lock().members.contains_key(node)
    }

    pub fn node_at(&self, address: &str) -> Option<Arc<str>> {
        self.table.lock().node_at.get(address).cloned()
    }

    pub fn list(&self) -> Vec<PeerInfo> {
        let t = self.table.lock();
        let mut out: Vec<_> = t
            .members
            .iter()
            .map(|(id, m)| PeerInfo {
                id: id.to_string(),
                address: m.address.clone(),
                connected: !m.links.is_empty(),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub fn connected_count(&self) -> usize {
        self.table
            .lock()
            .members
            .values()
            .filter(|m| !m.links.is_empty())
            .count()
    }

    /// Members to tell others about.
    pub fn known(&self) -> Vec<MemberInfo> {
        self.table
            .lock()
            .members
            .iter()
            .map(|(id, m)| MemberInfo {
                node: id.clone(),
                address: m.address.clone(),
            })
            .collect()
    }

    /// Sends `msg` on every link.
    pub fn broadcast(&self, msg: &Message) {
        for m in self.table.lock().members.values() {
            for l in &m.links {
                let _ = l.ctl.send(msg.clone());
            }
        }
    }

    /// Marks the table closed: no new members or links, no more events.
    pub fn close(&self) {
        self.table.lock().closed = true;
        self.events.lock().close();
    }

    /// Whether some member is listed at `address`.
    fn is_listed(&self, address: &str) -> bool {
        self.table
            .lock()
            .members
            .values()
            .any(|m| m.address == address)
    }

    /// The backoff a learned address that did not answer left off at, if recent.
    fn unanswered_delay(&self, address: &str) -> Option<Duration> {
        let mut t = self.table.lock();
        t.unanswered
            .retain(|_, (_, at)| at.elapsed() < UNANSWERED_BACKOFF_MAX * 2);
        t.unanswered.get(address).map(|(d, _)| *d)
    }

    /// Records how long to wait before dialing `address` again (`None`: it answered).
    fn note_unanswered(&self, address: &str, delay: Option<Duration>) {
        let mut t = self.table.lock();
        match delay {
            Some(d) => {
                if t.unanswered.len() >= UNANSWERED_KEPT && !t.unanswered.contains_key(address) {
                    let oldest = t
                        .unanswered
                        .iter()
                        .min_by_key(|(_, (_, at))| *at)
                        .map(|(a, _)| a.clone());
                    if let Some(oldest) = oldest {
                        t.unanswered.remove(&oldest);
                    }
                }
                t.unanswered
                    .insert(address.to_string(), (d, Instant::now()));
            }
            None => {
                t.unanswered.remove(address);
            }
        }
    }

    /// Records what seed `name` resolved to now (addresses no longer in it stop being seeds).
    pub fn set_resolved(&self, name: &str, addresses: Vec<String>) {
        self.table
            .lock()
            .resolved
            .insert(name.to_string(), addresses);
    }

    /// Whether `address` is what a seed name resolved to last.
    fn is_resolved_seed(&self, address: &str) -> bool {
        self.table
            .lock()
            .resolved
            .values()
            .any(|addresses| addresses.iter().any(|a| a == address))
    }

    fn start_dialing(&self, address: &str) -> bool {
        let mut t = self.table.lock();
        !t.closed && t.dialing.insert(address.to_string())
    }

    fn stop_dialing(&self, address: &str) {
        self.table.lock().dialing.remove(address);
    }
}

/// The node as membership's dialers see it. Membership sits below links and the node: its dialers
/// open links through this seam, implemented where links live, so it imports neither.
pub trait Dialing: Send + Sync + 'static {
    fn members(&self) -> &Members;
    /// The redial backoff: first delay and cap.
    fn backoff(&self) -> (Duration, Duration);
    /// The address hellos tell other peers to dial.
    fn advertised(&self) -> SocketAddr;
    /// The node's random choices (redial jitter).
    fn rng(&self) -> &Mutex<StdRng>;
    /// Turns true when the node shuts down.
    fn shutdown(&self) -> watch::Receiver<bool>;
    /// How long a seed may stay without a link before it is reported (`EUNREACHABLE`).
    fn unreachable_after(&self) -> Duration;
    /// Reports `warning` (the node's warning sink).
    fn warn(&self, warning: Warning);
    /// Runs `task` until it ends or the node does.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static);
    /// Dials `address` and runs the link until it closes: `Ok` if a link was established.
    fn dial_once(
        node: &Arc<Self>,
        address: &str,
    ) -> impl Future<Output = Result<(), LinkError>> + Send;
}

/// Longest wait between dials of a learned address that never answered: gossip may list any
/// address, and this node must not become a scanner of them.
pub const UNANSWERED_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Unanswered learned addresses whose backoff is remembered, at most (the oldest go first).
const UNANSWERED_KEPT: usize = 4096;

/// Starts (once per address) a task that keeps a link to `address` up until the node shuts down.
/// A seed (`configured_seed`, or an address a seed name resolves to now) is dialed even before anyone
/// vouches for it, with backoff capped at `backoff_max`, and reported (`EUNREACHABLE`) once it has not
/// linked for `Dialing::unreachable_after`; a learned member's dialer stops when no member is listed
/// at its address any more (it left, or was forgotten past the member timeout), and an address where
/// no node ever answered is dialed with backoff growing to `UNANSWERED_BACKOFF_MAX`.
pub fn dial<N: Dialing>(node: &Arc<N>, address: String, configured_seed: bool) {
    if !node.members().start_dialing(&address) {
        return;
    }
    let s = node.clone();
    node.spawn(async move {
        let mut shutdown = s.shutdown();
        let (backoff_min, backoff_max) = s.backoff();
        let mut delay = backoff_min;
        let is_seed = || configured_seed || s.members().is_resolved_seed(&address);
        // Since when this address has been without a link, while a seed; whether that was reported.
        let mut unlinked_since: Option<Instant> = None;
        let mut reported = false;
        if !is_seed() {
            if let Some(left_off) = s.members().unanswered_delay(&address) {
                // Learned again after it was forgotten: the backoff goes on where it stopped.
                delay = left_off;
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => {}
                    _ = tokio::time::sleep(jitter(&*s, delay)) => {}
                }
            }
        }
        loop {
            if *shutdown.borrow() {
                break;
            }
            let seed = is_seed();
            let known_node = s.members().node_at(&address);
            let listed = match &known_node {
                Some(node) => s.members().is_member(node),
                None => s.members().is_listed(&address),
            };
            if !seed && !listed {
                break; // it left, or was forgotten
            }
            let linked = known_node
                .as_deref()
                .is_some_and(|n| s.members().is_linked(n));
            if linked || !seed {
                unlinked_since = None;
                reported = false;
            }
            if !linked {
                let started = *unlinked_since.get_or_insert_with(Instant::now);
                match N::dial_once(&s, &address).await {
                    Ok(()) => {
                        delay = backoff_min;
                        unlinked_since = None;
                        reported = false;
                    }
                    Err(LinkError::SelfDial) => {
                        s.members().mark_self(&address);
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(%address, error = %e, "dial failed");
                        if seed && !reported && started.elapsed() >= s.unreachable_after() {
                            reported = true;
                            s.warn(unreachable(&address, started.elapsed(), &e));
                        }
                        let answered = seed || s.members().node_at(&address).is_some();
                        let cap = if answered {
                            backoff_max
                        } else {
                            UNANSWERED_BACKOFF_MAX.max(backoff_max)
                        };
                        delay = (delay * 2).min(cap);
                        if !answered {
                            s.members().note_unanswered(&address, Some(delay));
                        }
                    }
                }
                if delay == backoff_min {
                    s.members().note_unanswered(&address, None);
                }
            }
            let jittered = jitter(&*s, if linked { backoff_min * 2 } else { delay });
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(jittered) => {}
            }
        }
        s.members().stop_dialing(&address);
    });
}

/// The warning (`EUNREACHABLE`) for a seed that has not linked for `since`, with the last dial's error.
fn unreachable(address: &str, since: Duration, last: &LinkError) -> Warning {
    Warning::new(
        WarningCode::Unreachable,
        format!(
            "the seed {address} has not answered for {} s (last attempt: {last}); it is still dialed",
            since.as_secs()
        ),
    )
    .address(address)
}

/// How often an address where a member list put this node's id is probed at most.
const PROBE_EVERY: Duration = Duration::from_secs(10);

/// A member list put this node's id at `address`: dials it once, unless it is known to be this node or
/// was probed lately. A namesake there is reported by the link's handshake (both ends); this very node
/// under another address is remembered as such; nobody there (this node's earlier address) is nothing.
pub fn probe_namesake<N: Dialing>(node: &Arc<N>, address: &str) {
    if address == node.advertised().to_string() || !node.members().probe_due(address) {
        return;
    }
    let s = node.clone();
    let address = address.to_string();
    node.spawn(async move {
        match N::dial_once(&s, &address).await {
            Err(LinkError::SelfDial) => s.members().mark_self(&address),
            other => tracing::debug!(%address, result = ?other, "probed an address listed with this node's id"),
        }
    });
}

/// A delay between 50 % and 100 % of `d`, so peers that lost each other do not redial in lockstep.
fn jitter(node: &impl Dialing, d: Duration) -> Duration {
    let f = node.rng().lock().gen_range(0.5..=1.0);
    d.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_listed_by_others_at_a_members_address_counts_once() {
        let members = Members::new(
            "a".into(),
            vec!["10.0.0.2:7070".into(), "10.0.0.3:7070".into()],
        );
        // Nothing met: this peer and two seeds.
        assert_eq!(members.cluster_size(Duration::from_secs(60)), 3);
        // b learned from a member list, at the first seed's address: the seed is b, not one more.
        members.learn(&"b".into(), "10.0.0.2:7070");
        assert_eq!(members.cluster_size(Duration::from_secs(60)), 3);
        members.learn(&"c".into(), "10.0.0.9:7070");
        assert_eq!(members.cluster_size(Duration::from_secs(60)), 4);
    }

    /// An expelled member's list is no evidence: what only it named goes with it, on this node and
    /// on the peers it tells. A member another peer vouches for, or that linked here once, stays
    /// (it may be real, merely cut off from us) until the member timeout.
    #[test]
    fn members_only_an_expelled_member_vouched_for_go_with_it() {
        let members = Members::new("a".into(), vec![]);
        let (m, h): (Arc<str>, Arc<str>) = ("mallory".into(), "h".into());
        members.learn(&m, "10.0.0.9:7070");
        members.learn_listed(&"fake".into(), "10.0.0.10:7070", &m);
        members.learn_listed(&"real".into(), "10.0.0.11:7070", &m);
        members.learn_listed(&"real".into(), "10.0.0.11:7070", &h);
        members.learn_listed(&"other".into(), "10.0.0.12:7070", &h);
        let forgotten = members.expel(&m, 0, Duration::from_secs(60));
        assert_eq!(forgotten, [m.clone(), "fake".into()]);
        let ids = |members: &Members| {
            let mut ids: Vec<String> = members.list().into_iter().map(|p| p.id).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&members), ["other", "real"]);
        // Mallory's word is ignored as long as it is expelled: "fake" is not learned again.
        assert!(!members.learn_listed(&"fake".into(), "10.0.0.10:7070", &m));
        // h forgets "real" for cause: only the expelled mallory still vouches for it, so it goes.
        assert!(members.disown(&"real".into(), &h));
        // A peer that does not vouch for a member cannot make this node forget it.
        assert!(!members.disown(&"other".into(), &m));
        assert_eq!(ids(&members), ["other"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_forgotten_member_counts_for_one_more_member_timeout_and_its_seed_for_good() {
        let timeout = Duration::from_secs(10);
        let members = Members::new("a".into(), vec!["10.0.0.2:7070".into()]);
        members.learn(&"b".into(), "10.0.0.2:7070");
        members.learn(&"c".into(), "10.0.0.3:7070");
        assert_eq!(members.cluster_size(timeout), 3);
        tokio::time::advance(timeout).await;
        assert_eq!(members.forget_unreachable(timeout).len(), 2);
        assert!(members.list().is_empty());
        assert_eq!(members.cluster_size(timeout), 3);
        tokio::time::advance(timeout).await;
        // c is gone; b's address is a seed.
        assert_eq!(members.cluster_size(timeout), 2);
    }
}
