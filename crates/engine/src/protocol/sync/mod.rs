//! The replication protocol, without I/O: what a replica sends on a link and what it does with what
//! arrives. `link` drives it over TCP; the simulation test drives it over a lossy in-memory network.
//!
//! - **Push (live flow and catch-up alike).** On each link a replica sends its *own* writes that the other
//!   end lacks, by walking its per-origin index from what the other end holds (learned from its hello,
//!   its digests, and what went either way on the link). Superseded writes are never sent: the `covered`
//!   ranges of a batch stand for them.
//! - **Pull (everything else).** Writes of other origins are requested by the replica that lacks them,
//!   from one peer that has them (`PullPlanner`): at once when their origin is no live member linked to
//!   us (a dead replica, an old incarnation), otherwise only once the gap has lasted a whole planning
//!   period, so writes still in flight from their origin are not fetched twice.
//! - **Digests** (per bucket, the whole context) go out on a link when they changed since the last one
//!   sent there, plus a slow refresh; each round ends with `Digested`, which vouches that the
//!   reports sent are current (`digest`). They also acknowledge writes.
//! - **Acks** are cumulative per bucket and sent once per writer pass, not once per write.
//! - **Clock skew guard.** A peer whose wall clock (hello, pings) runs further ahead of ours than
//!   `max_clock_skew_ms` is refused as a link. Hybrid timestamps are not the sender's clock: a member
//!   within the skew of both ends may have stamped them, so a frame holding one past this clock's
//!   ceiling is dropped whole and the link stays (skew is not transitive). Every frame that carries
//!   writes goes through `Local::observe` before any of them is applied; a dropped frame applies
//!   nothing and claims no coverage (nor does the rest of its fetch answer: its touch registers may
//!   have expired the values that follow), so its writes stay a gap, pulled again every `PULL_TIMEOUT_MS`
//!   until this clock has come within the skew of them: delayed, never lost, never taken by halves.
//!
//! Files: `local` (one replica's state), `session` (one link's protocol), `checks` (what an
//! incoming frame must satisfy), `digest` (digests both ways), `pull` (the pull planner),
//! `fetch` (partial fetches), `signals` (wake-ups), `counters` (stats), `tests`.

mod checks;
mod counters;
mod digest;
mod fetch;
mod local;
mod pull;
mod session;
mod signals;
#[cfg(test)]
mod tests;

use crate::replication::ranges::SeqRanges;
use crate::replication::replica::Origin;
use crate::replication::store::ChunkLimits;
use std::collections::BTreeMap;

use checks::{
    check_bucket_name, check_own_claim, check_own_claims, check_own_writes, check_possible,
    check_writes, own_last_seq,
};
pub use counters::Counters;
pub use fetch::Fetches;
use local::vouched;
pub use local::Local;
use pull::GapKey;
pub use pull::PullPlanner;
pub use session::{Inbound, Session};
pub use signals::{LinkSignal, Ring, Signals};

/// Writes per Ops or FetchReply frame at most.
pub const CHUNK_WRITES: usize = 1024;
/// Bytes of keys and values per Ops or FetchReply frame, roughly (one write may be larger, up to
/// `wire::MAX_VALUE`; frames stay under `wire::MAX_FRAME`).
pub const CHUNK_BYTES: usize = 1024 * 1024;
const CHUNK_LIMITS: ChunkLimits = ChunkLimits {
    max_writes: CHUNK_WRITES,
    max_bytes: CHUNK_BYTES,
};
/// Bytes a writer pass gathers before sending.
pub const SEND_BUDGET: usize = 512 * 1024;
/// How long collected registers are remembered by key, by default: a replica away longer than this
/// past a collection loses its old writes to keys nobody else holds (see `store::CollectedKeys`).
pub const REMEMBER_COLLECTED_MS: u64 = 60 * 60 * 1000;
/// Bytes of answers (`Session::owed`) a link may owe the other end before it stops reading its
/// requests until the writer has sent them: a peer that asks without reading is paused, then dropped
/// by the writer's stall timeout, instead of growing this replica's memory.
pub const OWED_LIMIT: usize = 4 * 1024 * 1024;
/// Buckets a replica holds at most before it ignores peers' writes and contexts for new ones, by
/// default (`Local::max_buckets`).
pub const DEFAULT_MAX_BUCKETS: usize = 10_000;
/// How long a pull may stay unanswered before it is asked again.
pub const PULL_TIMEOUT_MS: u64 = 5_000;

/// Seqs per origin: a context or a collection horizon.
pub type Context = BTreeMap<Origin, SeqRanges>;

/// Whether the union of `have` holds every seq of `need`.
pub fn covers(have: &[&Context], need: &Context) -> bool {
    need.iter().all(|(o, r)| {
        let mut rest = r.clone();
        for h in have {
            if let Some(held) = h.get(o) {
                rest = rest.difference(held);
            }
        }
        rest.is_empty()
    })
}
