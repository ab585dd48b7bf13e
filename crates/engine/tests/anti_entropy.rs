//! Anti-entropy on what replicas store: a member (anyone with the cluster's secret) that lies about
//! coverage can make a replica drop, or never take, a write an honest peer still stores, under
//! contexts that end equal, so that no sync would ever repair it. Digests carry a fingerprint of
//! the registers each replica stores; two replicas whose contexts stay equal while their
//! fingerprints differ fetch each other's registers and merge them as a restore, and converge.
//!
//! Each test scripts the member frame by frame against a real replica (`Local` and `Session` over
//! encoded frames, on a clock driven by hand) linked to an honest peer, and checks that the victim
//! and the honest peer end showing the same thing, within a bounded time, and that honest replicas
//! never repair anything.

use peer_buckets_engine::wire::{BucketSummary, ContextPart, Message, OpsBatch, WireContext};
use peer_buckets_engine::Lifetime;
use peer_buckets_engine::{Hlc, PhysicalClock};
use peer_buckets_engine::{Local, Session};
use peer_buckets_engine::{Seq, SeqRanges};

use std::sync::atomic::Ordering;

mod common;
use common::*;

/// A context with its origins by name, empty ranges left out, sorted.
type NamedContext = Vec<(String, SeqRanges)>;

impl Scene {
    /// The member reports a collection the victim missed (dots of a replica `gone`, with `context`
    /// besides), then answers every question of the victim's resync, by dots and by key, "covered,
    /// none stored".
    fn claim_everything_collected(&mut self, mut context: WireContext) {
        self.v_m = Session::new(self.v(), &hello("m2")).unwrap();
        let horizon: WireContext = vec![(rid("gone"), SeqRanges::up_to(Seq::from(3)))];
        context.extend(horizon.clone());
        self.member_sends(Message::Contexts(ContextPart {
            buckets: vec![BucketSummary {
                name: BUCKET.into(),
                context,
                collected: horizon,
            }],
            last: true,
        }))
        .unwrap();
        self.answer_none_stored();
        assert!(!self.v().is_stale(BUCKET), "the victim resynced");
    }

    fn answer_none_stored(&mut self) {
        for _ in 0..2 {
            for msg in self.sent_to_member() {
                let reply = match msg {
                    Message::Held { origin, query, .. } => Message::HeldReply {
                        bucket: BUCKET.into(),
                        origin,
                        covered: query,
                        held: SeqRanges::new(),
                        superseders: vec![],
                        last: true,
                    },
                    Message::HeldKeys { origin, keys, .. } => Message::HeldKeysReply {
                        bucket: BUCKET.into(),
                        origin,
                        keys,
                        registers: vec![],
                    },
                    _ => continue,
                };
                self.member_sends(reply)
                    .expect("an answer to the question asked");
            }
        }
    }

    /// The victim and the honest peer exchange what they hold, digests included, for `seconds` of
    /// their clocks (the member is gone).
    fn heal_for(&mut self, seconds: u64) {
        let start = self.world.time.now_ms();
        while self.world.time.now_ms() < start + seconds * 1_000 {
            self.world.pump();
        }
    }

    /// Both replicas' contexts of the bucket, origins by name, empty ranges left out.
    fn contexts(&self) -> (NamedContext, NamedContext) {
        let context = |l: &Local| -> NamedContext {
            let mut c: Vec<_> = l
                .bucket(BUCKET)
                .store()
                .context()
                .into_iter()
                .filter(|(_, r)| !r.is_empty())
                .map(|(o, r)| (o.id().to_string(), r))
                .collect();
            c.sort_by(|a, b| a.0.cmp(&b.0));
            c
        };
        (context(self.v()), context(self.h()))
    }

    /// The victim and the honest peer store the same registers (and so show the same thing).
    fn assert_alike(&self, key: &str) {
        assert_eq!(
            shows(&self.v().bucket(BUCKET), key),
            shows(&self.h().bucket(BUCKET), key),
            "the victim and the honest peer show {key} differently"
        );
        assert_eq!(
            self.v().bucket(BUCKET).store().stored_print(),
            self.h().bucket(BUCKET).store().stored_print(),
            "the victim and the honest peer store different registers"
        );
    }
}

/// How long (this replica's clock) a victim may stay apart from an honest peer once they are linked
/// and the member is gone: a divergence is acted on once it lasted `DIVERGED_AFTER_MS` (10 s) over
/// two rounds of digests, and repaired by one fetch.
const CONVERGES_WITHIN_S: u64 = 30;

/// A member that claims a collection the victim missed, then answers the victim's resync with "I
/// cover these dots and store none of them", makes it drop a write an honest peer still holds,
/// under contexts that end equal: once the victim and that peer have exchanged digests long
/// enough, the victim shows the honest peer's write again.
#[test]
fn a_held_reply_lie_does_not_leave_a_replica_without_a_write_an_honest_peer_still_holds() {
    let mut s = Scene::new();
    s.h()
        .bucket(BUCKET)
        .write("theirs", Some(json("h")), Lifetime::Forever);
    s.exchange();
    assert!(s.holds("theirs"));
    s.claim_everything_collected(vec![(rid("h"), SeqRanges::up_to(Seq::from(1)))]);
    assert!(
        !s.holds("theirs"),
        "the victim dropped it on the member's word"
    );
    s.heal_for(CONVERGES_WITHIN_S);
    let (v, h) = s.contexts();
    assert_eq!(v, h, "equal contexts");
    assert!(
        shows(&s.h().bucket(BUCKET), "theirs").is_some(),
        "the honest peer keeps its write"
    );
    assert!(
        s.holds("theirs"),
        "the victim covers the honest peer's write for good without showing it"
    );
    s.assert_alike("theirs");
    let repaired = |l: &Local| l.counters().repairs_changed.load(Ordering::Relaxed);
    assert_eq!(repaired(s.v()), 1, "the victim repaired once");
    assert_eq!(repaired(s.h()), 0, "the honest peer had nothing to repair");
    // What the victim's link to the honest peer reports (an EDIVERGED warning naming both).
    let v_h = s.world.sessions.get_mut(&(0, 1)).expect("linked");
    assert_eq!(v_h.take_repaired(), vec![(BUCKET.into(), 1)]);
    let h_v = s.world.sessions.get_mut(&(1, 0)).expect("linked");
    assert_eq!(h_v.take_repaired(), vec![]);
}

/// The same lie about the victim's own write: once it has exchanged with the honest peer, which
/// still stores it, both end alike, never apart for good.
#[test]
fn a_held_reply_lie_about_a_replicas_own_write_does_not_leave_it_apart_from_an_honest_peer() {
    let mut s = Scene::new();
    let seq = s
        .v()
        .bucket(BUCKET)
        .write("mine", Some(json("v")), Lifetime::Forever)
        .seq;
    s.exchange();
    assert!(shows(&s.h().bucket(BUCKET), "mine").is_some());
    s.claim_everything_collected(vec![
        (rid("v"), SeqRanges::up_to(seq)),
        (rid("h"), SeqRanges::new()),
    ]);
    s.heal_for(CONVERGES_WITHIN_S);
    let (v, h) = s.contexts();
    assert_eq!(v, h, "equal contexts");
    s.assert_alike("mine");
}

/// As the first, while the honest peer keeps writing: its stream never stalls, and the write the
/// victim dropped still comes back (the peer counts it as delivered and never pushes it again).
#[test]
fn a_write_a_member_made_a_replica_drop_comes_back_while_its_writer_keeps_writing() {
    let mut s = Scene::new();
    s.h()
        .bucket(BUCKET)
        .write("theirs", Some(json("h")), Lifetime::Forever);
    s.exchange();
    s.claim_everything_collected(vec![(rid("h"), SeqRanges::up_to(Seq::from(1)))]);
    assert!(!s.holds("theirs"), "the victim dropped the honest write");
    let start = s.world.time.now_ms();
    let mut round = 0;
    while s.world.time.now_ms() < start + CONVERGES_WITHIN_S * 1_000 {
        s.h()
            .bucket(BUCKET)
            .write(format!("busy{round}"), Some(json("h")), Lifetime::Forever);
        round += 1;
        s.world.time.advance(700);
        s.world.plan(0);
        s.world.plan(1);
        for (i, j) in [(1, 0), (0, 1)] {
            for msg in s.world.frames(i, j, true) {
                s.world.deliver(i, j, msg);
            }
        }
    }
    assert!(
        s.holds(&format!("busy{}", round - 1)),
        "the honest peer's stream reached the victim"
    );
    assert!(
        s.holds("theirs"),
        "the victim never got back the write it dropped from the busy honest peer"
    );
}

/// A member that claims a collection of dots an honest peer covers (a collection the others know
/// of), then answers the victim's resync with "covered, none stored" for the honest peer's write,
/// leaves only a stale read: once the victim and that peer, which still stores the write, have
/// exchanged digests long enough, the write shows again, with the peer's later write.
#[test]
fn a_member_lying_about_its_store_after_a_collection_the_others_know_of_leaves_only_a_stale_read() {
    let mut s = Scene::new();
    s.h()
        .bucket(BUCKET)
        .write("theirs", Some(json("h")), Lifetime::Forever);
    s.exchange();
    assert!(s.holds("theirs"));
    // A second write of h that the victim has not taken yet: the member's horizon names it.
    s.h()
        .bucket(BUCKET)
        .write("later", Some(json("h")), Lifetime::Forever);
    s.v_m = Session::new(s.v(), &hello("m2")).unwrap();
    let horizon: WireContext = vec![(rid("h"), SeqRanges::up_to(Seq::from(2)))];
    s.member_sends(Message::Contexts(ContextPart {
        buckets: vec![BucketSummary {
            name: BUCKET.into(),
            context: horizon.clone(),
            collected: horizon,
        }],
        last: true,
    }))
    .unwrap();
    assert!(
        s.v().is_stale(BUCKET),
        "the victim believes it missed a collection"
    );
    s.answer_none_stored();
    assert!(!s.v().is_stale(BUCKET), "the victim resynced");
    assert!(
        !s.holds("theirs"),
        "the victim dropped h's write on the member's word"
    );
    s.heal_for(CONVERGES_WITHIN_S);
    assert!(
        shows(&s.h().bucket(BUCKET), "theirs").is_some(),
        "the honest peer keeps its write"
    );
    assert!(
        s.holds("theirs"),
        "the victim covers the honest peer's write for good without showing it"
    );
    assert!(s.holds("later"), "the victim took h's later write");
    s.assert_alike("theirs");
}

/// A member that claims, in its own context, seqs of a third replica and answers the victim's pull
/// for them with coverage and no writes makes the victim count them as superseded, while an honest
/// peer holds them: once the two have exchanged digests long enough, the victim holds them too.
#[test]
fn a_pull_answered_with_coverage_and_no_writes_does_not_leave_a_replica_apart_from_an_honest_peer()
{
    let mut s = Scene::new();
    // A third replica `t`, gone, wrote "third"; the honest peer holds it, the victim not yet.
    let hlc = Hlc::from_parts(s.world.time.now_ms(), 0);
    let t = s.h().replicas().intern(&rid("t"));
    s.h()
        .bucket(BUCKET)
        .merge(
            &t,
            vec![write("third", hlc, 1, Some("t"))],
            &SeqRanges::new(),
        )
        .unwrap();
    // The member claims t's seq 1 in its own context, and answers the pull for it with the
    // coverage alone.
    s.v_m = Session::new(s.v(), &hello("m2")).unwrap();
    s.member_sends(Message::Contexts(ContextPart {
        buckets: vec![BucketSummary {
            name: BUCKET.into(),
            context: vec![(rid("t"), SeqRanges::up_to(Seq::from(1)))],
            collected: vec![],
        }],
        last: true,
    }))
    .unwrap();
    s.v_m.queue(Message::Pull {
        bucket: BUCKET.into(),
        origin: rid("t"),
        ranges: SeqRanges::up_to(Seq::from(1)),
    });
    s.member_sends(Message::Ops(OpsBatch {
        bucket: BUCKET.into(),
        origin: rid("t"),
        covered: SeqRanges::up_to(Seq::from(1)),
        writes: vec![],
        superseders: vec![],
        superseded: vec![],
    }))
    .expect("a reply within the pull");
    s.member_sends(Message::Digested { reports: 0 }).unwrap();
    s.heal_for(CONVERGES_WITHIN_S);
    let (v, h) = s.contexts();
    assert_eq!(v, h, "equal contexts");
    assert!(
        shows(&s.h().bucket(BUCKET), "third").is_some(),
        "the honest peer keeps the third replica's write"
    );
    assert!(
        s.holds("third"),
        "the victim covers the third replica's write for good without it"
    );
    s.assert_alike("third");
}

/// Honest replicas that exchange writes, deletes, touches and expiries, and collect, never repair
/// anything: with equal contexts they store the same registers, and a repair changes nothing.
#[test]
fn honest_replicas_with_equal_contexts_never_repair_anything() {
    let mut world = World::new(&["a", "b", "c"]);
    for i in 0..3 {
        world.bucket(i);
    }
    world.link(0, 1);
    world.link(1, 2);
    world.link(0, 2);
    let mut rng = Rng::new(7);
    for round in 0..60u64 {
        let i = rng.below(3) as usize;
        let key = format!("k{}", rng.below(8));
        let b = world.bucket(i);
        match rng.below(4) {
            0 => {
                b.write(key, None, Lifetime::Forever);
            }
            1 => {
                b.write(key, Some(json("t")), Lifetime::Ttl(1 + rng.below(3_000)));
            }
            2 => {
                b.touch(key.into(), 2_000);
            }
            _ => {
                b.write(key, Some(json(&format!("v{round}"))), Lifetime::Forever);
            }
        }
        world.pump();
        if round % 20 == 19 {
            world.collect_among(&[0, 1, 2]);
        }
    }
    world.collect_among(&[0, 1, 2]);
    for _ in 0..4 {
        world.pump();
    }
    for l in &world.locals {
        assert_eq!(
            l.counters().repairs_changed.load(Ordering::Relaxed),
            0,
            "{}: a repair changed what an honest replica stores",
            l.id()
        );
    }
    let prints: Vec<u64> = world
        .locals
        .iter()
        .map(|l| l.bucket(BUCKET).store().stored_print())
        .collect();
    assert!(prints.windows(2).all(|w| w[0] == w[1]), "{prints:?}");
}
