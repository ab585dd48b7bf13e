//! Hybrid logical clock (Kulkarni et al., 2014) packed into 64 bits.
//!
//! The upper 48 bits hold physical milliseconds since the Unix epoch, the lower 16 a logical counter.
//! A logical overflow simply carries into the physical part, so the packed value is always strictly
//! increasing. Every local write ticks the clock; every remote timestamp that is merged is observed,
//! so a later local write is ordered after everything this replica has seen, whatever the wall clocks say.
//!
//! The physical source is injectable (`PhysicalClock`) so tests can drive time by hand, and every clock
//! carries an offset knob used by tests and the chaos harness to simulate a skewed machine.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Bits of the packed timestamp that hold the logical counter.
pub const LOGICAL_BITS: u32 = 16;

/// A hybrid logical timestamp: `physical_ms << 16 | logical`.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Hlc(pub u64);

impl Hlc {
    pub fn from_parts(physical_ms: u64, logical: u16) -> Self {
        Hlc((physical_ms << LOGICAL_BITS) | logical as u64)
    }

    /// Physical milliseconds since the Unix epoch.
    pub fn physical_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    pub fn logical(self) -> u16 {
        (self.0 & ((1 << LOGICAL_BITS) - 1)) as u16
    }
}

/// Source of physical time in milliseconds since the Unix epoch.
pub trait PhysicalClock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The machine's wall clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl PhysicalClock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to; for deterministic tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start_ms: u64) -> Self {
        ManualClock(AtomicU64::new(start_ms))
    }
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl PhysicalClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl<T: PhysicalClock> PhysicalClock for Arc<T> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

/// The replica's hybrid logical clock.
pub struct Clock {
    physical: Box<dyn PhysicalClock>,
    /// Test-only skew applied to the physical source, in milliseconds (may be negative).
    offset_ms: AtomicI64,
    last: AtomicU64,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock")
            .field("last", &Hlc(self.last.load(Ordering::Relaxed)))
            .field("offset_ms", &self.offset_ms.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new(Box::new(SystemClock))
    }
}

impl Clock {
    pub fn new(physical: Box<dyn PhysicalClock>) -> Self {
        Clock {
            physical,
            offset_ms: AtomicI64::new(0),
            last: AtomicU64::new(0),
        }
    }

    /// Shifts this clock's physical source by `offset_ms` (tests and the chaos harness only).
    pub fn set_offset_ms(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::SeqCst);
    }

    /// Physical milliseconds as this replica sees them (offset applied).
    pub fn wall_ms(&self) -> u64 {
        let base = self.physical.now_ms() as i64 + self.offset_ms.load(Ordering::Relaxed);
        base.max(0) as u64
    }

    /// A new timestamp for a local event: larger than every timestamp issued or observed before.
    pub fn tick(&self) -> Hlc {
        let wall = Hlc::from_parts(self.wall_ms(), 0).0;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = wall.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Hlc(next),
                Err(seen) => last = seen,
            }
        }
    }

    /// Records a timestamp seen from another replica so later local ticks order after it.
    pub fn observe(&self, remote: Hlc) {
        self.last.fetch_max(remote.0, Ordering::AcqRel);
    }

    /// The current time on this replica's hybrid clock without issuing a timestamp: the larger of the
    /// wall clock and everything seen. Expiry is judged against it.
    pub fn now(&self) -> Hlc {
        let wall = Hlc::from_parts(self.wall_ms(), 0);
        wall.max(Hlc(self.last.load(Ordering::Acquire)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manual(start: u64) -> (Arc<ManualClock>, Clock) {
        let source = Arc::new(ManualClock::new(start));
        (source.clone(), Clock::new(Box::new(source)))
    }

    #[test]
    fn ticks_strictly_increase_when_wall_clock_stands_still() {
        let (_, clock) = manual(1_000);
        let a = clock.tick();
        let b = clock.tick();
        assert!(b > a);
        assert_eq!(a.physical_ms(), 1_000);
        assert_eq!(b.logical(), 1);
    }

    #[test]
    fn tick_follows_wall_clock_when_it_moves_ahead() {
        let (source, clock) = manual(1_000);
        clock.tick();
        source.advance(5);
        let t = clock.tick();
        assert_eq!(t.physical_ms(), 1_005);
        assert_eq!(t.logical(), 0);
    }

    #[test]
    fn observing_a_clock_ahead_orders_later_ticks_after_it() {
        let (_, clock) = manual(1_000);
        let remote = Hlc::from_parts(50_000, 7);
        clock.observe(remote);
        assert!(clock.tick() > remote);
    }

    #[test]
    fn going_backwards_in_wall_time_never_goes_backwards_in_hlc() {
        let (source, clock) = manual(10_000);
        let a = clock.tick();
        source.set(5_000);
        assert!(clock.tick() > a);
    }

    #[test]
    fn logical_overflow_carries_into_physical() {
        let (_, clock) = manual(1);
        clock.observe(Hlc::from_parts(1, u16::MAX));
        let t = clock.tick();
        assert_eq!(t.physical_ms(), 2);
        assert_eq!(t.logical(), 0);
    }

    #[test]
    fn offset_skews_the_physical_source() {
        let (_, clock) = manual(100_000);
        clock.set_offset_ms(-30_000);
        assert_eq!(clock.wall_ms(), 70_000);
        clock.set_offset_ms(30_000);
        assert_eq!(clock.tick().physical_ms(), 130_000);
    }
}
