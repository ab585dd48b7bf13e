//! What a node does against hostile connections before they become links: a cap on the accepted
//! connections in the handshake at once, counts of the refused ones, and a log of them that a flood
//! cannot turn into a flood of lines.
//!
//! Past the cap, a newly accepted connection takes the slot of one still in its handshake, which is
//! closed: the one that made the least progress (handshake steps done, then oldest) among those of the
//! source holding the most slots. Dropping the newcomer instead would let a trickle of idle sockets
//! keep every slot taken and every real peer out; evicting the oldest whoever opened it would let a
//! fast enough flood (slots turning over faster than a real handshake's three crossings) do the same.
//! Evicting from the busiest source means a flood from one address only ever displaces itself, and a
//! flood from many addresses displaces the idlest first: a real peer's first bytes (the preamble, and
//! with a secret the first Noise message, which an outsider cannot forge) arrive with its connection.
//! A source is an IPv4 address or an IPv6 /64, the block one host usually has.
//!
//! Nothing here outlives the connections in the handshake: the per-source counts hold only the
//! sources with a slot taken, so the memory is bounded by the cap however many connections came.
//!
//! Before any of that, protected mode (`admits`): a node without a secret that listens beyond
//! loopback takes connections from loopback addresses only, unless told the network is trusted.
//! Anyone else would be a full member, reading and writing every bucket, over plaintext.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::report::Throttle;

/// Refusals logged per window at most; the rest are counted and reported with the next line.
const LOG_LINES: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);

pub struct Guard {
    cap: usize,
    slots: Arc<Mutex<Slots>>,
    rejected: AtomicU64,
    evicted: AtomicU64,
    log: Mutex<Throttle>,
}

#[derive(Default)]
struct Slots {
    next_id: u64,
    /// At most `cap`, in the order admitted.
    taken: Vec<Taken>,
    /// Slots taken per source; a source with none has no entry.
    per_source: HashMap<IpAddr, usize>,
}

struct Taken {
    id: u64,
    source: IpAddr,
    steps: Arc<AtomicU8>,
    evict: oneshot::Sender<()>,
}

impl Slots {
    /// Index in `taken` of the slot to give up for the newcomer `newest`: the least advanced, then
    /// oldest, of the busiest source's. Never the newcomer's own: it has had no time to make progress
    /// yet, and refusing newcomers would leave the slots to whoever holds them.
    fn victim(&self, newest: u64) -> Option<usize> {
        let busiest = *self.per_source.values().max()?;
        self.taken
            .iter()
            .enumerate()
            .filter(|(_, t)| t.id != newest && self.per_source.get(&t.source) == Some(&busiest))
            .min_by_key(|(_, t)| (t.steps.load(Ordering::Relaxed), t.id))
            .map(|(i, _)| i)
    }

    fn remove(&mut self, index: usize) -> Taken {
        let gone = self.taken.remove(index);
        if let Some(n) = self.per_source.get_mut(&gone.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&gone.source);
            }
        }
        gone
    }
}

/// The source a connection counts against: its IPv4 address (an IPv4-mapped IPv6 one too), or the
/// /64 of its IPv6 address.
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// Protected mode: whether a node accepts a connection from `remote` at all. A node with a secret
/// (`keyed`) leaves that to the handshake; one without accepts anyone only when it listens on loopback
/// (nobody else can reach it) or was told the network is trusted (`insecure`), and otherwise only
/// connections from loopback.
pub fn admits(keyed: bool, insecure: bool, listen: IpAddr, remote: IpAddr) -> bool {
    keyed || insecure || is_loopback(listen) || is_loopback(remote)
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Why protected mode refused a connection, and how to let it in.
pub struct Unprotected {
    pub listen: IpAddr,
}

impl Display for Unprotected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this peer has no secret and listens on {}, beyond loopback, so it accepts peers from \
             loopback only: give every peer the same `secret` (at least 16 random bytes, e.g. \
             `openssl rand -base64 32`), or set `insecure: true` if the network is trusted",
            self.listen
        )
    }
}

/// An accepted connection's place among those in the handshake; freed when dropped.
pub struct Slot {
    id: u64,
    slots: Arc<Mutex<Slots>>,
    steps: Arc<AtomicU8>,
    evict: oneshot::Receiver<()>,
}

impl Slot {
    /// Resolves when a newer connection took this slot.
    pub async fn evicted(&mut self) {
        let _ = (&mut self.evict).await;
    }

    /// What records the connection's progress: call it for each handshake step the other end
    /// completed.
    pub fn progress(&self) -> impl FnMut() + Send + 'static {
        let steps = self.steps.clone();
        move || {
            steps.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut slots = self.slots.lock();
        if let Some(i) = slots.taken.iter().position(|t| t.id == self.id) {
            slots.remove(i);
        }
    }
}

impl Guard {
    /// A guard letting `cap` accepted connections (at least one) be in the handshake at once.
    pub fn new(cap: usize) -> Guard {
        Guard {
            cap: cap.max(1),
            slots: Arc::default(),
            rejected: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            log: Mutex::new(Throttle::new(LOG_LINES, LOG_WINDOW)),
        }
    }

    /// A slot for a connection just accepted from `remote`, evicting another one in the handshake
    /// (see the module's doc) when all are taken.
    pub fn admit(&self, remote: IpAddr) -> Slot {
        let (tx, evict) = oneshot::channel();
        let source = source(remote);
        let steps = Arc::new(AtomicU8::new(0));
        let mut slots = self.slots.lock();
        slots.next_id += 1;
        let id = slots.next_id;
        slots.taken.push(Taken {
            id,
            source,
            steps: steps.clone(),
            evict: tx,
        });
        *slots.per_source.entry(source).or_default() += 1;
        if slots.taken.len() > self.cap {
            if let Some(i) = slots.victim(id) {
                let _ = slots.remove(i).evict.send(());
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        Slot {
            id,
            slots: self.slots.clone(),
            steps,
            evict,
        }
    }

    /// Accepted connections in the handshake now.
    #[cfg(test)]
    pub fn in_handshake(&self) -> usize {
        self.slots.lock().taken.len()
    }

    /// Counts a connection refused in its handshake and logs why.
    pub fn reject(&self, remote: &dyn Display, reason: &dyn Display) {
        self.count_rejected();
        self.warn(remote, reason, "connection refused in the handshake");
    }

    /// Counts a connection refused in its handshake whose reason is reported elsewhere (a warning).
    pub fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections refused in their handshake so far (evictions not included).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Connections closed in their handshake to free a slot for a newer one, so far.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Logs a warning about a hostile or broken connection, unless this window's lines are spent;
    /// the next line logged says how many were left out.
    pub fn warn(&self, remote: &dyn Display, reason: &dyn Display, what: &str) {
        let Some(suppressed) = self.log.lock().admit() else {
            return;
        };
        if suppressed > 0 {
            tracing::warn!(%remote, %reason, suppressed, "{what} (and {suppressed} more not logged)");
        } else {
            tracing::warn!(%remote, %reason, "{what}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    async fn is_evicted(slot: &mut Slot) -> bool {
        tokio::time::timeout(Duration::from_millis(50), slot.evicted())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_newcomer_past_the_cap_evicts_the_oldest_connection_of_one_source() {
        let guard = Guard::new(2);
        let mut first = guard.admit(ip("10.0.0.1"));
        let mut second = guard.admit(ip("10.0.0.1"));
        assert_eq!(guard.in_handshake(), 2);
        let third = guard.admit(ip("10.0.0.1"));
        assert_eq!(guard.in_handshake(), 2);
        assert_eq!(guard.evicted(), 1);
        assert!(is_evicted(&mut first).await);
        assert!(!is_evicted(&mut second).await);
        drop(first);
        drop(second);
        assert_eq!(guard.in_handshake(), 1);
        drop(third);
        assert_eq!(guard.in_handshake(), 0);
        assert!(guard.slots.lock().per_source.is_empty());
    }

    #[tokio::test]
    async fn a_flood_from_one_source_only_evicts_its_own_connections() {
        let guard = Guard::new(4);
        let mut peer = guard.admit(ip("10.0.0.1"));
        let mut flood = Vec::new();
        for _ in 0..1_000 {
            flood.push(guard.admit(ip("10.0.0.2")));
        }
        assert_eq!(guard.evicted(), 997);
        assert!(!is_evicted(&mut peer).await);
        assert_eq!(guard.slots.lock().per_source.len(), 2);
        drop(flood);
        assert_eq!(guard.in_handshake(), 1);
    }

    #[tokio::test]
    async fn among_equally_busy_sources_the_connection_that_made_no_progress_goes_first() {
        let guard = Guard::new(3);
        let mut peer = guard.admit(ip("10.0.0.1"));
        let mut idle = guard.admit(ip("10.0.0.2"));
        let mut started = guard.admit(ip("10.0.0.3"));
        peer.progress()();
        peer.progress()();
        started.progress()();
        // One slot each: the idle one goes, then the one a step behind the peer.
        let mut newer = guard.admit(ip("10.0.0.4"));
        assert!(is_evicted(&mut idle).await);
        newer.progress()();
        newer.progress()();
        let mut newest = guard.admit(ip("10.0.0.5"));
        assert!(is_evicted(&mut started).await);
        // A newcomer is never refused for having made no progress yet.
        assert!(!is_evicted(&mut newest).await);
        assert!(!is_evicted(&mut peer).await);
        assert!(!is_evicted(&mut newer).await);
    }

    #[tokio::test]
    async fn an_ipv6_64_is_one_source_and_a_mapped_ipv4_address_is_its_ipv4_one() {
        assert_eq!(source(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(source(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        let guard = Guard::new(2);
        let mut peer = guard.admit(ip("2001:db8:9::1"));
        let _a = guard.admit(ip("2001:db8:1:2::1"));
        let _b = guard.admit(ip("2001:db8:1:2::2"));
        let _c = guard.admit(ip("2001:db8:1:2:ffff::3"));
        assert!(!is_evicted(&mut peer).await);
        assert_eq!(guard.evicted(), 2);
    }

    #[test]
    fn protected_mode_refuses_the_network_only_to_an_open_node_listening_on_it() {
        let lo = ip("127.0.0.1");
        let lo2 = ip("127.0.0.2");
        let lo6 = ip("::1");
        let mapped_lo = ip("::ffff:127.0.0.1");
        let any = ip("0.0.0.0");
        let any6 = ip("::");
        let lan = ip("192.0.2.2");
        let lan6 = ip("fd00::2");
        let mapped_lan = ip("::ffff:192.0.2.2");
        // Open, listening beyond loopback: loopback peers only.
        for listen in [any, any6, lan, lan6] {
            for remote in [lo, lo2, lo6, mapped_lo] {
                assert!(admits(false, false, listen, remote), "{listen} {remote}");
            }
            for remote in [lan, lan6, mapped_lan, ip("203.0.113.9")] {
                assert!(!admits(false, false, listen, remote), "{listen} {remote}");
                // Unless the network is trusted, or a secret guards the links.
                assert!(admits(false, true, listen, remote));
                assert!(admits(true, false, listen, remote));
            }
        }
        // Listening on loopback: only loopback can connect anyway.
        for listen in [lo, lo6, mapped_lo] {
            assert!(admits(false, false, listen, lan));
        }
        let why = Unprotected { listen: any }.to_string();
        assert!(
            why.contains("0.0.0.0") && why.contains("`secret`") && why.contains("insecure: true")
        );
    }

    #[test]
    fn refusals_are_counted_even_when_no_longer_logged() {
        let guard = Guard::new(1);
        for _ in 0..100 {
            guard.reject(&"127.0.0.1:1", &"noise");
        }
        assert_eq!(guard.rejected(), 100);
        assert_eq!(guard.log.lock().left_out(), 100 - LOG_LINES as u64);
    }
}
