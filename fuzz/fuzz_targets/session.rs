//! A member's frames, arbitrary, fed to the session of a replica that holds writes and has a pull, a
//! fetch and a held question outstanding on that link, so every reply path is reachable: the session
//! must answer each frame with `Ok` or an error, never panic, and whatever it accepted must keep the
//! bounds a member cannot break: the replica's own sequence never moves past its own writes, and no
//! ack counts past what it wrote.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use peer_buckets_engine::{Clock, ManualClock};
use peer_buckets_engine::SeqRanges;
use peer_buckets_engine::ReplicaId;
use peer_buckets_engine::Lifetime;
use peer_buckets_engine::{Local, Session};
use peer_buckets_engine::value;
use peer_buckets_engine::wire::{self, BucketSummary, ContextPart, Hello, Message};

const BUCKET: &str = "b";

fuzz_target!(|data: &[u8]| {
    let time = Arc::new(ManualClock::new(1_700_000_000_000));
    let local = Local::new(
        "v".into(),
        1,
        Arc::new(Clock::new(Box::new(time.clone()))),
        60_000,
    );
    let bucket = local.bucket(BUCKET);
    for key in ["a", "b", "a"] {
        bucket.write(key, Some(value::encode_json("1")), Lifetime::Forever);
    }
    let own = bucket.store().context_of(&local.me()).max();
    let hello = Hello {
        replica: ReplicaId {
            node: "m".into(),
            incarnation: 1,
        },
        listen_port: 1,
        listen_host: None,
        wall_ms: 1_700_000_000_000,
        members: vec![],
    };
    let Ok(mut session) = Session::new(&local, &hello) else {
        return;
    };
    // A first part whose horizon the replica misses makes it ask a held question.
    let gone = ReplicaId {
        node: "gone".into(),
        incarnation: 1,
    };
    let part = ContextPart {
        buckets: vec![BucketSummary {
            name: BUCKET.into(),
            context: vec![
                (gone.clone(), SeqRanges::up_to(2)),
                (local.me().id().clone(), SeqRanges::up_to(own)),
            ],
            collected: vec![(gone.clone(), SeqRanges::up_to(2))],
        }],
        last: data.first().is_some_and(|b| b & 1 == 1),
    };
    if session.handle(&local, Message::Contexts(part)).is_err() {
        return;
    }
    session.queue(Message::Pull {
        bucket: BUCKET.into(),
        origin: gone,
        ranges: SeqRanges::up_to(8),
    });
    session.queue(Message::FetchRequest {
        id: 1,
        bucket: BUCKET.into(),
        prefix: String::new(),
    });
    let mut at = 1.min(data.len());
    while let Ok(Some((msg, used))) = wire::decode_frame(&data[at..]) {
        at += used;
        if session.handle(&local, msg).is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = session.fill(&local, &mut out, true);
    assert_eq!(bucket.store().context_of(&local.me()).max(), own);
    assert!(local.acks().acked_upto(BUCKET, "m") <= own);
});
