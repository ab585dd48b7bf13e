//! The clock-skew guard on every path that applies remote writes: a pushed batch, a pull reply, a
//! catch-up chunk's superseders and a partial-fetch reply. A frame holding one write stamped further
//! ahead of the receiver's wall clock than `max_clock_skew_ms` is dropped whole: counted, reported
//! for the link's `ESKEW` warning, nothing applied, no clock moved, and the link kept (a timestamp may
//! come from a member other than the link's other end). A frame inside the skew is applied. Only the
//! other end's own wall clock (hello, pings) refuses the link. (`Held` replies carry dots, no
//! timestamps.) A write stamped past twice the skew (and a second of slack) no peer within the skew
//! can hold: its frame is a protocol error, and still applies nothing and moves no clock.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use peer_buckets_engine::value;
use peer_buckets_engine::wire::{Message, OpsBatch, WireWrite};
use peer_buckets_engine::LinkError;
use peer_buckets_engine::PeerEventKind;
use peer_buckets_engine::ReplicaId;
use peer_buckets_engine::{Clock, Hlc, ManualClock};
use peer_buckets_engine::{Config, Node};
use peer_buckets_engine::{Inbound, Local, Session};
use peer_buckets_engine::{Lifetime, Write};
use peer_buckets_engine::{Seq, SeqRanges};
use peer_buckets_engine::{Warning, WarningCode};

mod common;
use common::*;

/// A receiver and a session with the peer `b`, asked for every write of `c` (a pull) and for fetch 1:
/// the replies below answer those requests (a reply nobody asked for is refused before any skew check).
fn receiver() -> (Local, Session) {
    let time = Arc::new(ManualClock::new(START_MS));
    let local = local("a", 1, &time);
    let peer = common::local("b", 1, &time);
    let mut session =
        Session::new(&local, &peer.hello(7000, None, vec![])).expect("hello accepted");
    session.queue(Message::Pull {
        bucket: "s".into(),
        origin: rid("c"),
        ranges: SeqRanges::from_ranges([(Seq::from(1), Seq::from(u64::MAX))]),
    });
    session.queue(Message::FetchRequest {
        id: 1,
        bucket: "s".into(),
        prefix: String::new(),
    });
    (local, session)
}

/// Just inside the skew, and just past it (the wall clock stands still in these tests).
fn inside() -> Hlc {
    Hlc::from_parts(START_MS + SKEW_MS, u16::MAX)
}
fn past() -> Hlc {
    Hlc::from_parts(START_MS + SKEW_MS + 1, 0)
}
/// The latest stamp a peer within the skew can hold, and the first past it.
fn last_possible() -> Hlc {
    Hlc::from_parts(START_MS + 2 * SKEW_MS + 1_000, u16::MAX)
}
fn impossible() -> Hlc {
    Hlc::from_parts(START_MS + 2 * SKEW_MS + 1_001, 0)
}

/// Hands `msg` to the session and checks it was dropped for skew, leaving no trace but the count and
/// the report, with the link kept.
fn assert_refused_without_trace(local: &Local, session: &mut Session, msg: Message) {
    let clock_before = local.clock().now();
    let context_before = local.bucket("s").store().context();
    let len_before = local.bucket("s").len();
    let refused_before = local.counters().clock_skew_refused.load(Ordering::Relaxed);
    let result = session.handle(local, msg);
    assert!(
        matches!(
            result,
            Ok(Inbound::Nothing | Inbound::Fetched { count: 0, .. })
        ),
        "expected the frame dropped and the link kept, got {result:?}"
    );
    let ahead = session.take_skewed().expect("the drop is reported");
    assert!(ahead > SKEW_MS, "reported {ahead} ms ahead");
    assert_eq!(local.clock().now(), clock_before, "the clock moved");
    assert_eq!(local.bucket("s").store().context(), context_before);
    assert_eq!(local.bucket("s").len(), len_before, "a write was applied");
    assert_eq!(
        local.counters().clock_skew_refused.load(Ordering::Relaxed),
        refused_before + 1,
        "the refusal was not counted"
    );
}

/// Hands `msg` to the session and checks it was refused as a protocol error, applying nothing and
/// moving no clock.
fn assert_impossible(local: &Local, session: &mut Session, msg: Message) {
    let clock_before = local.clock().now();
    let context_before = local.bucket("s").store().context();
    let result = session.handle(local, msg);
    assert!(
        matches!(result, Err(LinkError::Protocol(_))),
        "expected a protocol error, got {result:?}"
    );
    assert_eq!(local.clock().now(), clock_before, "the clock moved");
    assert_eq!(local.bucket("s").store().context(), context_before);
    assert_eq!(local.bucket("s").len(), 0, "a write was applied");
}

fn ops(origin: ReplicaId, writes: Vec<Write>, superseders: Vec<(ReplicaId, Write)>) -> Message {
    let covered = SeqRanges::from_ranges(writes.iter().map(|w| (w.seq, w.seq)));
    Message::Ops(OpsBatch {
        bucket: "s".into(),
        origin,
        covered,
        writes: writes.into_iter().map(WireWrite::from).collect(),
        superseders: superseders
            .into_iter()
            .map(|(rid, w)| (rid, w.into()))
            .collect(),
        superseded: vec![],
    })
}

#[test]
fn a_pushed_batch_stamped_too_far_ahead_is_refused_and_moves_no_clock() {
    let (local, mut session) = receiver();
    // One write past the skew among good ones: the whole frame goes, not just that write.
    let msg = ops(
        rid("b"),
        vec![
            write("k1", inside(), 1, Some("1")),
            write("k2", past(), 2, Some("1")),
        ],
        vec![],
    );
    assert_refused_without_trace(&local, &mut session, msg);
    let (local, mut session) = receiver();
    session
        .handle(
            &local,
            ops(rid("b"), vec![write("k1", inside(), 1, Some("1"))], vec![]),
        )
        .expect("a batch inside the skew is applied");
    assert_eq!(local.bucket("s").len(), 1);
    assert_eq!(local.clock().now(), inside());
    // The sender's own write where no peer within the skew can have stamped it.
    let (local, mut session) = receiver();
    let msg = ops(
        rid("b"),
        vec![
            write("k1", inside(), 1, Some("1")),
            write("k2", impossible(), 2, Some("1")),
        ],
        vec![],
    );
    assert_impossible(&local, &mut session, msg);
}

#[test]
fn a_pull_reply_stamped_too_far_ahead_is_refused_and_moves_no_clock() {
    let (local, mut session) = receiver();
    // Writes of a third replica, as a pull for them is answered.
    let msg = ops(
        rid("c"),
        vec![write("k", past(), u64::MAX, Some("1"))],
        vec![],
    );
    assert_refused_without_trace(&local, &mut session, msg);
    let msg = ops(
        rid("c"),
        vec![write("k", last_possible(), 1, Some("1"))],
        vec![],
    );
    assert_refused_without_trace(&local, &mut session, msg);
    for hlc in [impossible(), Hlc(u64::MAX)] {
        let msg = ops(rid("c"), vec![write("k", hlc, 1, Some("1"))], vec![]);
        assert_impossible(&local, &mut session, msg);
    }
}

#[test]
fn a_catch_up_chunk_whose_superseder_is_stamped_too_far_ahead_is_refused_and_moves_no_clock() {
    let (local, mut session) = receiver();
    // The chunk's own write is fine; the register that superseded a covered write is not.
    let msg = Message::Ops(OpsBatch {
        bucket: "s".into(),
        origin: rid("c"),
        covered: SeqRanges::from_ranges([(Seq::from(1), Seq::from(2))]),
        writes: vec![write("k1", inside(), 2, Some("1")).into()],
        superseders: vec![(rid("d"), write("k0", past(), 1, Some("1")).into())],
        superseded: vec![("k0".into(), vec![Seq::from(1)])],
    });
    assert_refused_without_trace(&local, &mut session, msg);
}

#[test]
fn a_fetch_reply_stamped_too_far_ahead_is_refused_and_moves_no_clock() {
    for hlc in [past(), last_possible()] {
        let (local, mut session) = receiver();
        let msg = Message::FetchReply {
            id: 1,
            bucket: "s".into(),
            origin: Some(rid("c")),
            writes: vec![
                write("k1", inside(), 1, Some("1")).into(),
                write("k2", hlc, 2, Some("1")).into(),
            ],
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
    for hlc in [impossible(), Hlc(u64::MAX)] {
        let (local, mut session) = receiver();
        let msg = Message::FetchReply {
            id: 1,
            bucket: "s".into(),
            origin: Some(rid("c")),
            writes: vec![write("k2", hlc, 2, Some("1")).into()],
            done: false,
        };
        assert_impossible(&local, &mut session, msg);
    }
    let (local, mut session) = receiver();
    let msg = Message::FetchReply {
        id: 1,
        bucket: "s".into(),
        origin: Some(rid("c")),
        writes: vec![write("k1", inside(), 1, Some("1")).into()],
        done: true,
    };
    session
        .handle(&local, msg)
        .expect("a reply inside the skew is applied");
    assert_eq!(local.bucket("s").len(), 1);
}

#[test]
fn a_peer_whose_own_wall_clock_runs_past_the_skew_is_refused_in_its_hello_and_its_pings() {
    let time = Arc::new(ManualClock::new(START_MS));
    let local = Local::new(
        "a".into(),
        1,
        Arc::new(Clock::new(Box::new(time.clone()))),
        SKEW_MS,
    );
    let ahead = Clock::new(Box::new(time.clone()));
    ahead.set_offset_ms(SKEW_MS as i64 + 1);
    let peer = Local::new("b".into(), 1, Arc::new(ahead), SKEW_MS);
    let refused = Session::new(&local, &peer.hello(7000, None, vec![])).err();
    assert!(
        matches!(refused, Some(LinkError::ClockSkew { ahead_ms }) if ahead_ms == SKEW_MS + 1),
        "{refused:?}"
    );
    let (local, mut session) = receiver();
    session
        .handle(
            &local,
            Message::Ping {
                wall_ms: START_MS + SKEW_MS,
            },
        )
        .expect("a wall clock at the skew is within it");
    let closed = session.handle(
        &local,
        Message::Ping {
            wall_ms: START_MS + SKEW_MS + 1,
        },
    );
    assert!(
        matches!(closed, Err(LinkError::ClockSkew { ahead_ms }) if ahead_ms == SKEW_MS + 1),
        "{closed:?}"
    );
    assert_eq!(
        local.counters().clock_skew_refused.load(Ordering::Relaxed),
        1
    );
}

/// The next `ESKEW` warning, and the skew its message gives.
async fn next_skew_warning(warnings: &mut UnboundedReceiver<Warning>) -> (Warning, u64) {
    let w = loop {
        let w = tokio::time::timeout(Duration::from_secs(5), warnings.recv())
            .await
            .expect("an ESKEW warning")
            .expect("the node is running");
        if w.code == WarningCode::Skew {
            break w;
        }
    };
    let ms = w
        .message
        .split(" ms ahead")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no measured skew in {:?}", w.message));
    (w, ms)
}

/// A peer refused for its wall clock, in its hello or later in its pings, is reported as an `ESKEW`
/// warning naming it, its address and the skew measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_refused_for_its_clock_is_reported_with_the_measured_skew_and_its_address() {
    let a = Node::start(config("a", vec![])).await.unwrap();
    let mut warnings = a.warnings();
    let ahead = config("ahead", vec![a.address().to_string()]);
    ahead.clock.set_offset_ms(5 * 60_000);
    let ahead = Node::start(ahead).await.unwrap();
    let (w, ms) = next_skew_warning(&mut warnings).await;
    assert_eq!(w.peer.as_deref(), Some("ahead"));
    assert_eq!(w.address, Some(ahead.address().to_string()));
    assert!((299_000..=301_000).contains(&ms), "{}", w.message);
    ahead.close(Duration::from_secs(1)).await;

    // A peer whose clock jumps ahead once linked is refused on its next ping.
    let b = Node::start(config("b", vec![a.address().to_string()]))
        .await
        .unwrap();
    for _ in 0..200 {
        if a.peers().iter().any(|p| p.id == "b" && p.connected) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    b.clock().set_offset_ms(2 * 60_000);
    let (w, ms) = next_skew_warning(&mut warnings).await;
    assert_eq!(w.peer.as_deref(), Some("b"));
    assert_eq!(w.address, Some(b.address().to_string()));
    assert!((119_000..=121_000).contains(&ms), "{}", w.message);
    assert!(a.stats().clock_skew_refused >= 2);
    for n in [a, b] {
        n.close(Duration::from_secs(1)).await;
    }
}

/// Real nodes on one machine: `a` is within 2 s of `b` (1.9 s behind it) and of `c` (1.9 s ahead),
/// and `b` refuses `c`, 3.8 s off. What `c` writes, and what `a` writes after it, reach `b` through
/// `a` once `b`'s clock is within the skew of them: the link `a`–`b` never goes down meanwhile, and
/// `b` reports the delayed writes (`ESKEW`, naming `a`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_relayed_past_the_skew_arrive_late_over_a_link_that_stays_up() {
    let config = |id: &str, offset_ms: i64, seeds: Vec<String>| {
        let config = Config {
            max_clock_skew: Duration::from_secs(2),
            ..config(id, seeds)
        };
        config.clock.set_offset_ms(offset_ms);
        config
    };
    let a = Node::start(config("a", 0, vec![])).await.unwrap();
    let b = Node::start(config("b", -1_900, vec![a.address().to_string()]))
        .await
        .unwrap();
    let mut b_warnings = b.warnings();
    let mut b_events = b.events();
    let c = Node::start(config("c", 1_900, vec![a.address().to_string()]))
        .await
        .unwrap();
    let linked = |n: &Node, id: &str| n.peers().iter().any(|p| p.id == id && p.connected);
    for _ in 0..200 {
        if linked(&b, "a") && linked(&c, "a") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (bc, ba, bb) = (c.bucket("s"), a.bucket("s"), b.bucket("s"));
    for i in 0..20 {
        bc.write(
            format!("c{i}"),
            Some(value::encode_json("1")),
            Lifetime::Forever,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        ba.write(
            format!("a{i}"),
            Some(value::encode_json("1")),
            Lifetime::Forever,
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while bb.len() < 40 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(bb.len(), 40, "b holds every write of a's and c's");
    let mut reported = false;
    while let Ok(w) = b_warnings.try_recv() {
        if w.code == WarningCode::Skew && w.peer.as_deref() == Some("a") {
            assert!(w.message.contains("stamped"), "{}", w.message);
            reported = true;
        }
    }
    assert!(reported, "b reported writes from a dropped for skew");
    while let Ok(e) = b_events.try_recv() {
        assert!(
            !(e.id == "a" && e.kind == PeerEventKind::Down),
            "b's link to a went down"
        );
    }
    for n in [a, b, c] {
        n.close(Duration::from_secs(1)).await;
    }
}
