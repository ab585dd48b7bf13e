//! The clock-skew guard on every path that applies remote writes: a pushed batch, a pull reply, a
//! catch-up chunk's superseders and a partial-fetch reply. A frame holding one write stamped further
//! ahead of the receiver's wall clock than `max_clock_skew_ms` closes the link (the session returns
//! the error), is counted, applies nothing and moves no clock; a frame inside the skew is applied.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use peer_buckets_engine::clock::{Clock, Hlc, ManualClock};
use peer_buckets_engine::error::LinkError;
use peer_buckets_engine::ranges::SeqRanges;
use peer_buckets_engine::replica::ReplicaId;
use peer_buckets_engine::store::{Lifetime, Write};
use peer_buckets_engine::sync::{Local, Session};
use peer_buckets_engine::value;
use peer_buckets_engine::wire::{Message, OpsBatch};

const NOW_MS: u64 = 1_700_000_000_000;
const SKEW_MS: u64 = 60_000;

/// A receiver and a session with the peer `b`.
fn receiver() -> (Local, Session) {
    let time = Arc::new(ManualClock::new(NOW_MS));
    let local = Local::new(
        "a".into(),
        1,
        Arc::new(Clock::new(Box::new(time.clone()))),
        SKEW_MS,
    );
    let peer = Local::new("b".into(), 1, Arc::new(Clock::new(Box::new(time))), SKEW_MS);
    let session = Session::new(&local, &peer.hello(7000, None, vec![])).expect("hello accepted");
    (local, session)
}

fn replica(node: &str) -> ReplicaId {
    ReplicaId {
        node: node.into(),
        incarnation: 1,
    }
}

fn write(key: &str, seq: u64, hlc: Hlc) -> Write {
    Write {
        key: key.into(),
        hlc,
        seq,
        value: Some(value::encode_json("1")),
        expires_ms: 0,
        touch: false,
    }
}

/// Just inside the skew, and just past it (the wall clock stands still in these tests).
fn inside() -> Hlc {
    Hlc::from_parts(NOW_MS + SKEW_MS, u16::MAX)
}
fn past() -> Hlc {
    Hlc::from_parts(NOW_MS + SKEW_MS + 1, 0)
}

/// Hands `msg` to the session and checks it was refused for skew, leaving no trace.
fn assert_refused_without_trace(local: &Local, session: &mut Session, msg: Message) {
    let clock_before = local.clock.now();
    let context_before = local.bucket("s").store().context();
    let len_before = local.bucket("s").len();
    let refused_before = local.counters.clock_skew_refused.load(Ordering::Relaxed);
    let result = session.handle(local, msg);
    assert!(
        matches!(result, Err(LinkError::ClockSkew { .. })),
        "expected a skew refusal, got {result:?}"
    );
    assert_eq!(local.clock.now(), clock_before, "the clock moved");
    assert_eq!(local.bucket("s").store().context(), context_before);
    assert_eq!(local.bucket("s").len(), len_before, "a write was applied");
    assert_eq!(
        local.counters.clock_skew_refused.load(Ordering::Relaxed),
        refused_before + 1,
        "the refusal was not counted"
    );
}

fn ops(origin: ReplicaId, writes: Vec<Write>, superseders: Vec<(ReplicaId, Write)>) -> Message {
    let covered = SeqRanges::from_ranges(writes.iter().map(|w| (w.seq, w.seq)));
    Message::Ops(OpsBatch {
        bucket: "s".into(),
        origin,
        covered,
        writes,
        superseders,
        superseded: vec![],
    })
}

#[test]
fn a_pushed_batch_stamped_too_far_ahead_is_refused_and_moves_no_clock() {
    let (local, mut session) = receiver();
    // One write past the skew among good ones: the whole frame goes, not just that write.
    let msg = ops(
        replica("b"),
        vec![write("k1", 1, inside()), write("k2", 2, past())],
        vec![],
    );
    assert_refused_without_trace(&local, &mut session, msg);
    let (local, mut session) = receiver();
    session
        .handle(
            &local,
            ops(replica("b"), vec![write("k1", 1, inside())], vec![]),
        )
        .expect("a batch inside the skew is applied");
    assert_eq!(local.bucket("s").len(), 1);
    assert_eq!(local.clock.now(), inside());
}

#[test]
fn a_pull_reply_stamped_too_far_ahead_is_refused_and_moves_no_clock() {
    let (local, mut session) = receiver();
    // Writes of a third replica, as a pull for them is answered.
    let msg = ops(replica("c"), vec![write("k", u64::MAX, past())], vec![]);
    assert_refused_without_trace(&local, &mut session, msg);
    let msg = ops(replica("c"), vec![write("k", 1, Hlc(u64::MAX))], vec![]);
    assert_refused_without_trace(&local, &mut session, msg);
}

#[test]
fn a_catch_up_chunk_whose_superseder_is_stamped_too_far_ahead_is_refused_and_moves_no_clock() {
    let (local, mut session) = receiver();
    // The chunk's own write is fine; the register that superseded a covered write is not.
    let msg = Message::Ops(OpsBatch {
        bucket: "s".into(),
        origin: replica("c"),
        covered: SeqRanges::from_ranges([(1, 2)]),
        writes: vec![write("k1", 2, inside())],
        superseders: vec![(replica("d"), write("k0", 1, past()))],
        superseded: vec![("k0".into(), vec![1])],
    });
    assert_refused_without_trace(&local, &mut session, msg);
}

#[test]
fn a_fetch_reply_stamped_too_far_ahead_is_refused_and_moves_no_clock() {
    for hlc in [past(), Hlc(u64::MAX)] {
        let (local, mut session) = receiver();
        let msg = Message::FetchReply {
            id: 1,
            bucket: "s".into(),
            origin: Some(replica("c")),
            writes: vec![write("k1", 1, inside()), write("k2", 2, hlc)],
            done: false,
        };
        assert_refused_without_trace(&local, &mut session, msg);
        // The clock still ticks forward from where it was.
        let b = local.bucket("s");
        let w = b.write("mine", Some(value::encode_json("1")), Lifetime::Forever);
        assert!(
            w.hlc < inside(),
            "a local write after the refusal: {:?}",
            w.hlc
        );
    }
    let (local, mut session) = receiver();
    let msg = Message::FetchReply {
        id: 1,
        bucket: "s".into(),
        origin: Some(replica("c")),
        writes: vec![write("k1", 1, inside())],
        done: true,
    };
    session
        .handle(&local, msg)
        .expect("a reply inside the skew is applied");
    assert_eq!(local.bucket("s").len(), 1);
}
