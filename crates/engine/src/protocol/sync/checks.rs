//! What an incoming frame must satisfy before anything of it is applied: sane bucket names, keys and
//! values, seqs inside what the frame covers, no claim about this replica's own writes beyond the
//! last seq it issued (a member cannot make a replica skip its own future), and no write stamped
//! where no peer linked to this one could have stamped or taken it (`check_possible`).

use super::Local;
use crate::error::LinkError;
use crate::protocol::wire::{self, WireContext, MAX_BUCKET_NAME, MAX_KEY};
use crate::replication::clock::TooFarAhead;
use crate::replication::ranges::{Seq, SeqRanges};
use crate::replication::replica::ReplicaId;
use crate::replication::store::Write;
use crate::replication::value;

pub(super) fn check_bucket_name(name: &str) -> Result<(), LinkError> {
    if name.is_empty() || name.len() > MAX_BUCKET_NAME {
        return Err(LinkError::Protocol(format!(
            "bucket name of {} bytes",
            name.len()
        )));
    }
    Ok(())
}

/// This replica's last seq in `bucket` (`Seq::ZERO` if it holds no such bucket).
pub(super) fn own_last_seq(local: &Local, bucket: &str) -> Seq {
    local
        .existing_bucket(bucket)
        .map_or(Seq::ZERO, |b| b.store().context_of(&local.me).max())
}

/// Refuses a claim on this replica's own writes past its last seq: nobody can hold a write it never
/// made, and taking the claim would hide its next writes from the claimant, or exhaust its sequence.
pub(super) fn check_own_claim(
    local: &Local,
    bucket: &str,
    rid: &ReplicaId,
    max: Seq,
) -> Result<(), LinkError> {
    if *rid != *local.me.id() {
        return Ok(());
    }
    let own = own_last_seq(local, bucket);
    if max > own {
        return Err(LinkError::Protocol(format!(
            "a claim on this peer's own seq {max} in bucket {bucket}, past its last write {own}"
        )));
    }
    Ok(())
}

/// `check_own_claim` for every origin of a context or horizon.
pub(super) fn check_own_claims(
    local: &Local,
    bucket: &str,
    ctx: &WireContext,
) -> Result<(), LinkError> {
    for (rid, ranges) in ctx {
        check_own_claim(local, bucket, rid, ranges.max())?;
    }
    Ok(())
}

/// `check_own_claim` for writes of `origin`.
pub(super) fn check_own_writes(
    local: &Local,
    bucket: &str,
    origin: &ReplicaId,
    writes: &[Write],
) -> Result<(), LinkError> {
    let max = writes.iter().map(|w| w.seq).max().unwrap_or(Seq::ZERO);
    check_own_claim(local, bucket, origin, max)
}

/// Checks writes from the wire: sane keys and values, and (for pushed batches) seqs inside `covered`.
pub(super) fn check_writes(
    writes: &[crate::replication::store::Write],
    covered: Option<&SeqRanges>,
) -> Result<(), LinkError> {
    for w in writes {
        if w.key.is_empty() || w.key.len() > MAX_KEY {
            return Err(LinkError::Protocol(format!("key of {} bytes", w.key.len())));
        }
        if w.seq == Seq::ZERO || covered.is_some_and(|c| !c.contains(w.seq)) {
            return Err(LinkError::Protocol(format!(
                "write seq {} outside the batch's coverage",
                w.seq
            )));
        }
        if w.value().is_some_and(|v| !value::is_valid(v)) {
            return Err(LinkError::Protocol("malformed value".into()));
        }
        if w.value().is_some_and(|v| v.len() > wire::MAX_VALUE + 1) {
            return Err(LinkError::Protocol("value over the maximum size".into()));
        }
    }
    Ok(())
}

/// How far past twice the skew a stamp may still come from an honest peer: the ticks a replica
/// makes past its ceiling (one millisecond per 65,536 writes there), with a wide margin.
const STAMP_SLACK_MS: u64 = 1_000;

/// Refuses a frame dropped for skew (`e`) whose newest write no honest linked peer could hold. A
/// replica takes in stamps up to its own ceiling only (its wall clock plus `maxClockSkew`) and stamps
/// its own writes at most a few ticks past it, and a linked peer's wall clock runs at most
/// `maxClockSkew` ahead of this one's (else the link is refused): so whatever a linked peer sends,
/// its own writes or those it relays, was stamped at most twice the skew ahead of this clock when
/// the peer made or took it, and this clock (its hybrid time, which never goes back) has only moved
/// on since. A stamp past that is a lie, not a clock: dropping its frame and keeping the link would
/// let the sender hold a dot no peer can ever take, and tombstone collection waits for every member
/// to hold every dot any member reports. Frames within the bound are dropped and taken later, as the
/// clock skew guard says; the only honest sender refused here is one whose clock ran more than the
/// skew ahead of this one's while it made or took the write, until this clock is within twice the
/// skew of it.
pub(super) fn check_possible(local: &Local, e: TooFarAhead) -> Result<(), LinkError> {
    let stamp_ms = local.clock.wall_ms().saturating_add(e.ahead_ms);
    let bound = local
        .clock
        .now()
        .physical_ms()
        .saturating_add(local.max_clock_skew_ms.saturating_mul(2))
        .saturating_add(STAMP_SLACK_MS);
    if stamp_ms > bound {
        return Err(LinkError::Protocol(format!(
            "a write stamped {} ms ahead of this clock, past twice maxClockSkew ({} ms): no peer \
             within the skew can hold it",
            e.ahead_ms, local.max_clock_skew_ms
        )));
    }
    Ok(())
}
