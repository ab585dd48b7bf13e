//! What the engine's stall examples share: the CPU time of the calling thread, which tells what a
//! section itself cost whatever the machine's load.

use std::time::Duration;

/// The time this thread has spent on a CPU (`CLOCK_THREAD_CPUTIME_ID`).
pub fn cpu_time() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0;
    assert!(ok, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}
