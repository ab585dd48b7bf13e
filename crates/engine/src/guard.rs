//! What a node does against hostile connections before they become links: a cap on the accepted
//! connections in the handshake at once, counts of the refused ones, and a log of them that a flood
//! cannot turn into a flood of lines.
//!
//! Past the cap, a newly accepted connection takes the slot of the oldest one still in its handshake,
//! which is closed. Dropping the newcomer instead would let a trickle of idle sockets keep every slot
//! taken and every real peer out; evicting the oldest means an attacker must open connections faster
//! than a real handshake finishes (a few round trips) to shut anyone out, and the idle sockets it
//! parks are the first to go.

use std::collections::VecDeque;
use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Refusals logged per window at most; the rest are counted and reported with the next line.
const LOG_LINES: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);

pub struct Guard {
    cap: usize,
    slots: Arc<Mutex<Slots>>,
    rejected: AtomicU64,
    evicted: AtomicU64,
    log: Mutex<LogWindow>,
}

#[derive(Default)]
struct Slots {
    next_id: u64,
    /// Oldest first: each connection's id and the signal that evicts it.
    taken: VecDeque<(u64, oneshot::Sender<()>)>,
}

struct LogWindow {
    started: Instant,
    lines: u32,
    suppressed: u64,
}

/// An accepted connection's place among those in the handshake; freed when dropped.
pub struct Slot {
    id: u64,
    slots: Arc<Mutex<Slots>>,
    evict: oneshot::Receiver<()>,
}

impl Slot {
    /// Resolves when a newer connection took this slot.
    pub async fn evicted(&mut self) {
        let _ = (&mut self.evict).await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().taken.retain(|(id, _)| *id != self.id);
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
            log: Mutex::new(LogWindow {
                started: Instant::now(),
                lines: 0,
                suppressed: 0,
            }),
        }
    }

    /// A slot for a connection just accepted, evicting the oldest one in the handshake when all are
    /// taken.
    pub fn admit(&self) -> Slot {
        let (tx, evict) = oneshot::channel();
        let mut slots = self.slots.lock();
        if slots.taken.len() >= self.cap {
            if let Some((_, oldest)) = slots.taken.pop_front() {
                let _ = oldest.send(());
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        slots.next_id += 1;
        let id = slots.next_id;
        slots.taken.push_back((id, tx));
        Slot {
            id,
            slots: self.slots.clone(),
            evict,
        }
    }

    /// Accepted connections in the handshake now.
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
        let suppressed = {
            let mut w = self.log.lock();
            let mut carried = 0;
            if w.started.elapsed() >= LOG_WINDOW {
                carried = std::mem::take(&mut w.suppressed);
                w.started = Instant::now();
                w.lines = 0;
            }
            if w.lines >= LOG_LINES {
                w.suppressed += 1;
                return;
            }
            w.lines += 1;
            carried
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

    #[tokio::test]
    async fn a_newcomer_past_the_cap_evicts_the_oldest_connection() {
        let guard = Guard::new(2);
        let mut first = guard.admit();
        let second = guard.admit();
        assert_eq!(guard.in_handshake(), 2);
        let third = guard.admit();
        assert_eq!(guard.in_handshake(), 2);
        assert_eq!(guard.evicted(), 1);
        tokio::time::timeout(Duration::from_secs(1), first.evicted())
            .await
            .expect("the oldest slot is evicted");
        drop(first);
        drop(second);
        assert_eq!(guard.in_handshake(), 1);
        drop(third);
        assert_eq!(guard.in_handshake(), 0);
    }

    #[test]
    fn refusals_are_counted_even_when_no_longer_logged() {
        let guard = Guard::new(1);
        for _ in 0..100 {
            guard.reject(&"127.0.0.1:1", &"noise");
        }
        assert_eq!(guard.rejected(), 100);
        assert_eq!(guard.log.lock().suppressed, 100 - LOG_LINES as u64);
    }
}
