//! How a node reports outward without flooding: log lines within a budget per window (`Throttle`),
//! and events held for a subscriber that has not come yet (`Handoff`).
//!
//! Invariants:
//! - A throttle passes at most its `per_window` lines in each window and counts the rest; the first
//!   line it passes in a later window carries that count, so a flood is never silent, only summed.
//! - A handoff loses nothing sent after its subscriber came (until it is closed); before, it keeps
//!   the newest `KEEP` items and hands them over first, in the order they were sent.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// A budget of lines per window; see the module notes.
pub struct Throttle {
    per_window: u32,
    window: Duration,
    started: Instant,
    passed: u32,
    left_out: u64,
}

impl Throttle {
    pub fn new(per_window: u32, window: Duration) -> Throttle {
        Throttle {
            per_window,
            window,
            started: Instant::now(),
            passed: 0,
            left_out: 0,
        }
    }

    /// Whether a line may pass now: `Some(n)` when it may, `n` being how many lines the windows
    /// before this one left out (0 within a window); `None`, counted, when this window's are spent.
    pub fn admit(&mut self) -> Option<u64> {
        let mut carried = 0;
        if self.started.elapsed() >= self.window {
            carried = std::mem::take(&mut self.left_out);
            self.started = Instant::now();
            self.passed = 0;
        }
        if self.passed >= self.per_window {
            self.left_out += 1;
            return None;
        }
        self.passed += 1;
        Some(carried)
    }

    /// Lines left out since the last that carried a count.
    pub fn left_out(&self) -> u64 {
        self.left_out
    }
}

/// Items for one subscriber at a time; see the module notes.
pub struct Handoff<T, const KEEP: usize> {
    subscriber: Option<mpsc::UnboundedSender<T>>,
    early: VecDeque<T>,
    closed: bool,
}

impl<T, const KEEP: usize> Default for Handoff<T, KEEP> {
    fn default() -> Self {
        Handoff {
            subscriber: None,
            early: VecDeque::new(),
            closed: false,
        }
    }
}

impl<T, const KEEP: usize> Handoff<T, KEEP> {
    /// Hands `item` to the subscriber, or keeps it for the first one (the oldest kept goes past
    /// `KEEP`); drops it once closed.
    pub fn send(&mut self, item: T) {
        if self.closed {
            return;
        }
        match &self.subscriber {
            Some(tx) => {
                let _ = tx.send(item);
            }
            None => {
                if self.early.len() == KEEP {
                    self.early.pop_front();
                }
                self.early.push_back(item);
            }
        }
    }

    /// Where items go from now on (replacing any earlier subscriber); those kept arrive first.
    pub fn subscribe(&mut self) -> mpsc::UnboundedReceiver<T> {
        let (tx, rx) = mpsc::unbounded_channel();
        for item in self.early.drain(..) {
            let _ = tx.send(item);
        }
        self.subscriber = Some(tx);
        rx
    }

    /// No item goes anywhere from now on; those kept are dropped.
    pub fn close(&mut self) {
        self.subscriber = None;
        self.early.clear();
        self.closed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_throttle_passes_its_budget_and_the_next_window_says_how_many_it_left_out() {
        let mut t = Throttle::new(2, Duration::from_secs(10));
        assert_eq!(t.admit(), Some(0));
        assert_eq!(t.admit(), Some(0));
        assert_eq!(t.admit(), None);
        assert_eq!(t.admit(), None);
        assert_eq!(t.left_out(), 2);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(t.admit(), Some(2));
        assert_eq!(t.admit(), Some(0));
        assert_eq!(t.left_out(), 0);
    }

    #[test]
    fn a_handoff_hands_the_newest_kept_items_first_and_nothing_once_closed() {
        let mut h: Handoff<u32, 2> = Handoff::default();
        for i in 1..=3 {
            h.send(i);
        }
        let mut rx = h.subscribe();
        h.send(4);
        assert_eq!(rx.try_recv().ok(), Some(2));
        assert_eq!(rx.try_recv().ok(), Some(3));
        assert_eq!(rx.try_recv().ok(), Some(4));
        h.close();
        h.send(5);
        assert!(rx.try_recv().is_err());
    }
}
