//! What the engine's stall examples share: how many keys a run takes, the origin of a replica, and
//! the CPU time of the calling thread, which tells what a section itself cost whatever the
//! machine's load.

use std::time::Duration;

use peer_buckets_engine::{Origin, ReplicaId, ReplicaTable};

/// The number of keys a run takes: its first argument, else `default`.
pub fn keys_arg(default: usize) -> usize {
    std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Replica `node` in its first incarnation, interned in `table`.
pub fn origin(table: &ReplicaTable, node: &str) -> Origin {
    table.intern(&ReplicaId {
        node: node.into(),
        incarnation: 1,
    })
}

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
