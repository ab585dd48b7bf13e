//! One physical clock per simulated node: the simulation's virtual time (shared, set by the world
//! after every step) plus this node's offset and drift. The offset is drawn per run of the node, so a
//! restart may find its clock earlier than before it crashed; the hybrid logical clock above it must
//! cope (its timestamps never go back within a run, and a new run is a new incarnation).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::replication::clock::PhysicalClock;

/// Virtual milliseconds since the Unix epoch, as the simulation sees them.
pub type SimTime = Arc<AtomicU64>;

#[derive(Debug)]
pub struct SimClock {
    time: SimTime,
    /// Fixed skew of this run of the node.
    offset_ms: i64,
    /// Parts per million this clock runs fast (positive) or slow, from `since_ms`.
    drift_ppm: i64,
    since_ms: u64,
}

impl SimClock {
    pub fn new(time: SimTime, offset_ms: i64, drift_ppm: i64) -> Self {
        let since_ms = time.load(Ordering::SeqCst);
        SimClock {
            time,
            offset_ms,
            drift_ppm,
            since_ms,
        }
    }
}

impl PhysicalClock for SimClock {
    fn now_ms(&self) -> u64 {
        let now = self.time.load(Ordering::SeqCst);
        let drift = (now.saturating_sub(self.since_ms) as i64) * self.drift_ppm / 1_000_000;
        (now as i64 + self.offset_ms + drift).max(0) as u64
    }
}
