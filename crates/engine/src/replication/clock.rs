//! Hybrid logical clock (Kulkarni et al., 2014) packed into 64 bits.
//!
//! The upper 48 bits hold physical milliseconds since the Unix epoch, the lower 16 a logical counter.
//! A logical overflow simply carries into the physical part, so the packed value is always strictly
//! increasing. Every local write ticks the clock; every remote timestamp that is merged is observed,
//! so a later local write is ordered after everything this replica has seen, whatever the wall clocks say.
//!
//! Invariants: no remote timestamp moves the clock past its ceiling, `max_skew_ms` ahead of its wall
//! clock (`observe` refuses such a timestamp whole and changes nothing, so the caller can drop the
//! frame that carried it); no input, up to `u64::MAX`, and no wall clock, however far off, overflows
//! the packing or the arithmetic (physical time saturates at 48 bits, the counter at the end of the
//! range). Only this replica's own stored timestamps (`resume`) bypass the ceiling: they were issued
//! here, and later writes must order after them even if the wall clock went back.
//!
//! At the ceiling, causality wins over the ceiling: a tick after adopting a timestamp at the ceiling
//! orders after it, so it passes the ceiling by its own count (a millisecond at most per 65,536
//! ticks). Clamping it instead would stamp a local write before a write it follows, and it would lose
//! to that write, even on this replica. A peer on the same wall clock drops the frame carrying such a
//! tick and takes it once its clock moved on (see `sync`, clock skew guard).
//!
//! The physical source is injectable (`PhysicalClock`) so tests can drive time by hand, and every clock
//! carries an offset knob used by tests and the chaos harness to simulate a skewed machine.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Bits of the packed timestamp that hold the logical counter.
pub const LOGICAL_BITS: u32 = 16;
/// The largest physical time a timestamp can hold (milliseconds; the year 10889).
pub const MAX_PHYSICAL_MS: u64 = u64::MAX >> LOGICAL_BITS;
/// How far ahead of the wall clock a remote timestamp may be, unless configured otherwise.
pub const DEFAULT_MAX_SKEW_MS: u64 = 60_000;

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
    /// Packs a time and a counter; a time past `MAX_PHYSICAL_MS` saturates there.
    pub fn from_parts(physical_ms: u64, logical: u16) -> Self {
        Hlc((physical_ms.min(MAX_PHYSICAL_MS) << LOGICAL_BITS) | logical as u64)
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

/// A remote timestamp further ahead of the wall clock than the allowed skew.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a timestamp {ahead_ms} ms ahead of this clock, past the allowed skew")]
pub struct TooFarAhead {
    pub ahead_ms: u64,
}

/// The replica's hybrid logical clock.
pub struct Clock {
    physical: Box<dyn PhysicalClock>,
    /// Test-only skew applied to the physical source, in milliseconds (may be negative).
    offset_ms: AtomicI64,
    /// How far ahead of the wall clock a remote timestamp may move this clock.
    max_skew_ms: AtomicU64,
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
            max_skew_ms: AtomicU64::new(DEFAULT_MAX_SKEW_MS),
            last: AtomicU64::new(0),
        }
    }

    /// Sets how far ahead of the wall clock a remote timestamp may be (`maxClockSkew`).
    pub fn set_max_skew_ms(&self, max_skew_ms: u64) {
        self.max_skew_ms.store(max_skew_ms, Ordering::Relaxed);
    }

    pub fn max_skew_ms(&self) -> u64 {
        self.max_skew_ms.load(Ordering::Relaxed)
    }

    /// The latest timestamp a remote input may carry now: any counter in the millisecond
    /// `max_skew_ms` ahead of the wall clock.
    pub fn ceiling(&self) -> Hlc {
        Hlc::from_parts(self.wall_ms().saturating_add(self.max_skew_ms()), u16::MAX)
    }

    /// Whether `remote` may be observed now, without observing it.
    pub fn check(&self, remote: Hlc) -> Result<(), TooFarAhead> {
        let ceiling = self.ceiling();
        if remote > ceiling && remote.0 > self.last.load(Ordering::Acquire) {
            return Err(TooFarAhead {
                ahead_ms: remote.physical_ms().saturating_sub(self.wall_ms()),
            });
        }
        Ok(())
    }

    /// Shifts this clock's physical source by `offset_ms` (tests and the chaos harness only).
    pub fn set_offset_ms(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::SeqCst);
    }

    /// Physical milliseconds as this replica sees them (offset applied), within what a timestamp
    /// can hold.
    pub fn wall_ms(&self) -> u64 {
        let base = self.physical.now_ms() as i128 + self.offset_ms.load(Ordering::Relaxed) as i128;
        base.clamp(0, MAX_PHYSICAL_MS as i128) as u64
    }

    /// A new timestamp for a local event: larger than every timestamp issued or observed before (at
    /// the very end of the range, in the year 10889, it stays there).
    pub fn tick(&self) -> Hlc {
        let wall = Hlc::from_parts(self.wall_ms(), 0).0;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = wall.max(last.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Hlc(next),
                Err(seen) => last = seen,
            }
        }
    }

    /// Records a timestamp seen from another replica so later local ticks order after it; refuses,
    /// changing nothing, one past the ceiling (one this clock has reached already is no news).
    pub fn observe(&self, remote: Hlc) -> Result<(), TooFarAhead> {
        self.check(remote)?;
        self.last.fetch_max(remote.0, Ordering::AcqRel);
        Ok(())
    }

    /// Resumes from a timestamp this replica stored before (a restart on its data): later ticks order
    /// after it, whatever the wall clock says now.
    pub fn resume(&self, own: Hlc) {
        self.last.fetch_max(own.0, Ordering::AcqRel);
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
        clock.observe(remote).unwrap();
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
        clock.observe(Hlc::from_parts(1, u16::MAX)).unwrap();
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

    #[test]
    fn a_timestamp_past_the_skew_is_refused_and_moves_nothing() {
        let (_, clock) = manual(100_000);
        clock.set_max_skew_ms(1_000);
        let before = clock.now();
        for remote in [Hlc::from_parts(101_001, 0), Hlc(u64::MAX)] {
            assert_eq!(
                clock.observe(remote).unwrap_err().ahead_ms,
                remote.physical_ms() - 100_000
            );
            assert_eq!(clock.now(), before);
        }
        clock.observe(Hlc::from_parts(101_000, u16::MAX)).unwrap();
        assert_eq!(clock.now(), Hlc::from_parts(101_000, u16::MAX));
        assert_eq!(clock.tick(), Hlc::from_parts(101_001, 0));
    }

    #[test]
    fn a_wall_clock_past_the_packing_saturates_instead_of_wrapping() {
        let (source, clock) = manual(u64::MAX);
        assert_eq!(clock.wall_ms(), MAX_PHYSICAL_MS);
        clock.set_offset_ms(i64::MAX);
        assert_eq!(clock.wall_ms(), MAX_PHYSICAL_MS);
        source.set(0);
        clock.set_offset_ms(i64::MIN);
        assert_eq!(clock.wall_ms(), 0);
        clock.resume(Hlc(u64::MAX));
        assert_eq!(clock.tick(), Hlc(u64::MAX));
    }

    #[derive(Clone, Debug)]
    enum Step {
        Wall(u64),
        Offset(i64),
        Observe(u64),
        Tick,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        // Timestamps near the wall clock, near the ceiling and anywhere up to u64::MAX.
        let near = (0u64..200_000).prop_map(|d| (1_700_000_000_000u64 + d) << LOGICAL_BITS);
        prop_oneof![
            prop_oneof![Just(1_700_000_000_000u64), any::<u64>()].prop_map(Step::Wall),
            prop_oneof![-100_000i64..100_000, any::<i64>()].prop_map(Step::Offset),
            prop_oneof![near, any::<u64>(), Just(u64::MAX)].prop_map(Step::Observe),
            Just(Step::Tick),
        ]
    }

    proptest::proptest! {
        /// Whatever the wall clock, the skew and the remote timestamps: nothing panics (debug builds
        /// check every addition), an observation never moves the clock past its ceiling, a refused
        /// one changes nothing, and a tick passes the ceiling only by counting past it itself.
        #[test]
        fn observe_and_tick_never_overflow_nor_pass_the_allowed_skew(
            skew in proptest::prop_oneof![0u64..120_000, proptest::prelude::any::<u64>()],
            steps in proptest::collection::vec(step(), 1..64),
        ) {
            let (source, clock) = manual(1_700_000_000_000);
            clock.set_max_skew_ms(skew);
            for s in steps {
                let before = clock.last.load(Ordering::Relaxed);
                match s {
                    Step::Wall(ms) => source.set(ms),
                    Step::Offset(ms) => clock.set_offset_ms(ms),
                    Step::Observe(remote) => {
                        let ceiling = clock.ceiling();
                        match clock.observe(Hlc(remote)) {
                            Ok(()) => {
                                let now = clock.last.load(Ordering::Relaxed);
                                proptest::prop_assert!(now == before || now <= ceiling.0);
                                proptest::prop_assert!(now >= remote);
                            }
                            Err(_) => {
                                proptest::prop_assert!(remote > ceiling.0);
                                proptest::prop_assert_eq!(clock.last.load(Ordering::Relaxed), before);
                            }
                        }
                    }
                    Step::Tick => {
                        let wall = Hlc::from_parts(clock.wall_ms(), 0).0;
                        let t = clock.tick().0;
                        proptest::prop_assert!(t > before || before == u64::MAX);
                        proptest::prop_assert!(t <= wall.max(before.saturating_add(1)));
                    }
                }
            }
        }
    }
}
