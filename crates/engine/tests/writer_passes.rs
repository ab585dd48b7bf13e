//! What a link writer's pass costs on a replica holding many buckets. The writer wakes for every
//! batch of the other end's writes it must acknowledge; a pass that only acknowledges walks no
//! bucket, while one that may find something to send (a local write since, or a request) still
//! walks them all and sends it.

use std::time::{Duration, Instant};

use peer_buckets_engine::wire::Message;
use peer_buckets_engine::Lifetime;
use peer_buckets_engine::{Seq, SeqRanges};

mod common;
use common::*;

/// Buckets the receiving replica holds, all empty: a walk's cost is per bucket, whatever it holds.
/// Under the default `max_buckets` with the other end's, so it takes them in.
const BUCKETS: usize = 9_000;
/// Batches of the other end's writes taken in, each followed by the writer's pass.
const BATCHES: usize = 100;

/// Replica 1's writer passes, timed, and what they sent.
fn pass(w: &mut World) -> (Duration, Vec<Message>) {
    let started = Instant::now();
    let frames = due(
        w.sessions.get_mut(&(1, 0)).expect("linked"),
        &w.locals[1],
        false,
    );
    (started.elapsed(), frames)
}

#[test]
fn acknowledging_each_batch_does_not_walk_every_bucket() {
    let mut w = World::new(&["a", "b"]);
    for i in 0..BUCKETS {
        w.locals[1].bucket(&format!("idle-{i:05}"));
    }
    w.link(0, 1);
    w.pump();
    // A pass that must walk: a local write since the last one. Its cost is the yardstick.
    let mut walks = Vec::new();
    for round in 0..3 {
        w.locals[1]
            .bucket(BUCKET)
            .write(format!("b{round}"), Some(json("v")), Lifetime::Forever);
        let (took, frames) = pass(&mut w);
        assert!(
            frames.iter().any(|m| matches!(m, Message::Ops(_))),
            "the local write goes out: {frames:?}"
        );
        for msg in frames {
            w.deliver(1, 0, msg);
        }
        walks.push(took);
    }
    walks.sort();
    let walk = walks[1];
    for i in 0..BATCHES {
        w.locals[0].bucket(&format!("from-a-{i:03}")).write(
            "k",
            Some(json("v")),
            Lifetime::Forever,
        );
    }
    let batches: Vec<Message> = w
        .frames(0, 1, false)
        .into_iter()
        .filter(|m| matches!(m, Message::Ops(_)))
        .collect();
    assert_eq!(batches.len(), BATCHES);
    let mut acking = Duration::ZERO;
    for batch in batches {
        w.deliver(0, 1, batch);
        let (took, frames) = pass(&mut w);
        acking += took;
        assert!(
            matches!(frames.as_slice(), [Message::Ack { .. }]),
            "one ack per batch and nothing else: {frames:?}"
        );
    }
    // Walking every bucket per batch costs about BATCHES walks: measured in a debug build at load
    // 13-15, 100 acknowledging passes took 3.2-4.1 s against a walk of 30-51 ms (70 to 130 walks)
    // when each walked, 0.6-5.5 ms against 23-30 ms (under a quarter of one) when none does. A
    // tenth of BATCHES leaves a loaded machine room either way.
    assert!(
        acking < walk * (BATCHES as u32 / 10),
        "{BATCHES} acknowledging passes took {acking:?}, one walk over {BUCKETS} buckets {walk:?}"
    );
    // A pass skipped after acks still sends what the other end asks for, and what was written since.
    w.deliver(
        0,
        1,
        Message::Pull {
            bucket: BUCKET.into(),
            origin: rid("b"),
            ranges: SeqRanges::from_ranges([(Seq::from(1), Seq::from(1))]),
        },
    );
    let (_, frames) = pass(&mut w);
    assert!(
        frames
            .iter()
            .any(|m| matches!(m, Message::Ops(b) if b.covered.contains(Seq::from(1)))),
        "the pulled write goes out again: {frames:?}"
    );
    w.locals[1]
        .bucket(BUCKET)
        .write("after", Some(json("v")), Lifetime::Forever);
    w.send(1, 0);
    assert_eq!(get(&w.bucket(0), "after"), Some("\"v\"".into()));
}
