//! The replica's protocol counters, reported by `stats()`: plain atomics, bumped where the event
//! happens, never reset.

use std::sync::atomic::AtomicU64;

/// Counters reported by `stats()`.
#[derive(Default)]
pub struct Counters {
    pub ops_applied: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub links_refused: AtomicU64,
    pub clock_skew_refused: AtomicU64,
    pub pulls_sent: AtomicU64,
    pub pulls_served: AtomicU64,
    pub catchup_writes_received: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub tombstones_collected: AtomicU64,
    pub full_resyncs: AtomicU64,
    /// Buckets a peer named that were not created: this replica held `Local::max_buckets` already.
    pub buckets_refused: AtomicU64,
    /// Tombstones written in place of collected ones, for old writes that came back (see
    /// `store::CollectedKeys`).
    pub stand_in_tombstones: AtomicU64,
    /// Buckets found diverged from a linked peer: equal contexts, different stored registers, for
    /// longer than collection and expiry timing explain (`sync::digest`).
    pub divergences: AtomicU64,
    /// Repairs of a diverged bucket: the peer's registers fetched and merged as a restore.
    pub repairs: AtomicU64,
    /// Repairs that changed what this replica stores (none in an honest cluster).
    pub repairs_changed: AtomicU64,
}
