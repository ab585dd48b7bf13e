//! What a bucket replica shows its users while writes with a time to live cross between replicas:
//! `size` (the live count), the live keys, and the `'change'` events a listener hears.
//!
//! Invariants checked here, on every replica and at every step:
//! - the live count equals the keys a scan finds live, and never wraps;
//! - a listener that applies every change it hears holds exactly the live keys and values: a key is
//!   never announced live once expired, and each expiry of a live key is heard once;
//! - replicas that exchanged everything hold identical registers and contexts.
//!
//! Writes travel as the protocol ships them: chunks of one origin's index (`Store::chunk`), the
//! superseders merged with the writes in one step, delivered late, out of order and twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use peer_buckets_engine::wire::Message;
use peer_buckets_engine::Bucket;
use peer_buckets_engine::ManualClock;
use peer_buckets_engine::ReplicaId;
use peer_buckets_engine::{Change, ChunkLimits, Incoming, Lifetime};
use peer_buckets_engine::{Local, Session};
use peer_buckets_engine::{Seq, SeqRanges};
use tokio::sync::mpsc::UnboundedReceiver;

mod common;
use common::*;

/// One replica with its own physical clock and a listener on the bucket.
struct Replica {
    time: Arc<ManualClock>,
    local: Local,
    bucket: Arc<Bucket>,
    changes: UnboundedReceiver<Change>,
    /// What the listener believes: the keys it heard of as live, with their values.
    heard: BTreeMap<String, Vec<u8>>,
    expiries_heard: usize,
    /// Every key announced live, in order.
    announced: Vec<String>,
}

impl Replica {
    fn new(name: &str, offset_ms: u64) -> Replica {
        let time = Arc::new(ManualClock::new(START_MS + offset_ms));
        let local = local(name, 1, &time);
        let bucket = local.bucket(BUCKET);
        let changes = bucket.subscribe();
        Replica {
            time,
            local,
            bucket,
            changes,
            heard: BTreeMap::new(),
            expiries_heard: 0,
            announced: Vec::new(),
        }
    }

    fn set(&self, key: &str, v: &str, lifetime: Lifetime) {
        self.bucket.write(key, Some(json(v)), lifetime);
    }

    /// Applies the changes heard since the last call to the listener's view. An expiry of a key the
    /// listener does not hold as live is a duplicate (or a key never announced): it fails.
    fn listen(&mut self) {
        while let Ok(c) = self.changes.try_recv() {
            let key = c.key.to_string();
            match &c.value {
                Some(v) => {
                    assert!(!c.expired, "an expiry carries no value: {c:?}");
                    self.announced.push(key.clone());
                    self.heard.insert(key, v.to_vec());
                }
                None if c.expired => {
                    self.expiries_heard += 1;
                    assert!(
                        self.heard.remove(&key).is_some(),
                        "{}: expiry of {key}, which the listener did not hold as live",
                        self.local.id()
                    );
                }
                None => {
                    self.heard.remove(&key);
                }
            }
        }
    }

    /// The live keys and values, as a scan sees them now.
    fn live(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        self.bucket.scan("", &mut |k, v| {
            out.insert(k.to_string(), v.to_vec());
        });
        out
    }

    /// Sweeps, then checks the live count and the listener's view against the live keys.
    fn check(&mut self, context: &str) {
        let size = self.bucket.len();
        self.listen();
        let live = self.live();
        assert_eq!(
            size,
            live.len(),
            "{} {context}: size is not the live keys",
            self.local.id()
        );
        assert_eq!(
            self.heard,
            live,
            "{} {context}: the listener's view is not the live keys",
            self.local.id()
        );
    }

    /// Registers of every key and the context of every origin, as text.
    fn dump(&self) -> Vec<String> {
        let mut keys = Vec::new();
        self.bucket
            .store()
            .scan_writes("", &mut |_, w| keys.push(w.key));
        keys.sort();
        keys.dedup();
        let mut out = Vec::new();
        for key in keys {
            for (o, w) in self.bucket.inspect(&key) {
                out.push(format!("{key} {}", register_text(&o, &w)));
            }
        }
        for (o, ctx) in self.bucket.store().context() {
            out.push(format!(
                "context {}: {:?}",
                o.id(),
                ctx.ranges().collect::<Vec<_>>()
            ));
        }
        out.sort();
        out
    }
}

/// A chunk of one origin's writes as it travels: the superseders, the writes and what they cover.
struct Shipment {
    to: usize,
    origin: ReplicaId,
    superseders: Vec<(ReplicaId, peer_buckets_engine::Write)>,
    writes: Vec<peer_buckets_engine::Write>,
    covered: SeqRanges,
    superseded: Vec<(Arc<str>, Vec<Seq>)>,
}

/// What replica `from` sends `to` of `origin`'s writes with seqs in `start..=end`.
fn pack(from: &Replica, to: usize, origin: &ReplicaId, start: Seq, end: Seq) -> Shipment {
    let o = from.local.replicas().intern(origin);
    let c = from
        .bucket
        .store()
        .chunk(&o, start, end, ChunkLimits::UNLIMITED);
    Shipment {
        to,
        origin: origin.clone(),
        superseders: c
            .superseders
            .into_iter()
            .map(|(o, w)| (o.id().clone(), w))
            .collect(),
        writes: c.writes,
        covered: c.covered,
        superseded: c.superseded,
    }
}

/// Delivers a shipment as a link's reader does.
fn deliver(to: &Replica, s: Shipment) {
    let superseders = s
        .superseders
        .into_iter()
        .map(|(rid, w)| (to.local.replicas().intern(&rid), w))
        .collect();
    let origin = to.local.replicas().intern(&s.origin);
    to.bucket
        .merge_chunk(
            &origin,
            Incoming {
                writes: s.writes,
                covered: &s.covered,
                superseded: &s.superseded,
                superseders,
            },
        )
        .expect("clocks within the allowed skew");
}

/// Everything `replicas[from]` holds, sent to `replicas[to]` and delivered at once.
fn ship_all(replicas: &[Replica], from: usize, to: usize) {
    for (o, ctx) in replicas[from].bucket.store().context() {
        let s = pack(&replicas[from], to, o.id(), Seq::FIRST, ctx.max());
        deliver(&replicas[to], s);
    }
}

/// Two servers set the same keys with the same time to live in the same millisecond (a rolling
/// session written by both): equal timestamps, the origin breaks the tie. Once the keys expire, each
/// replica's size is exact (it wrapped around to 2^32 - 200 once the expired registers were collected)
/// and each replica heard exactly one expiry per key.
#[test]
fn concurrent_ttl_writers_leave_an_exact_size_and_one_expiry_per_key() {
    let mut r = vec![Replica::new("a", 0), Replica::new("b", 0)];
    for i in 0..100 {
        for replica in &r {
            replica.set(
                &format!("s{i}"),
                replica.local.id().as_ref(),
                Lifetime::Ttl(1_000),
            );
        }
    }
    ship_all(&r, 0, 1);
    ship_all(&r, 1, 0);
    for replica in &mut r {
        replica.check("after the exchange");
        assert_eq!(replica.bucket.len(), 100);
    }
    assert_eq!(r[0].dump(), r[1].dump(), "the replicas converged");
    for replica in &mut r {
        replica.time.advance(1_000);
        replica.check("after the expiry");
        assert_eq!(replica.bucket.len(), 0);
        assert_eq!(replica.expiries_heard, 100, "one expiry per key");
        // The expired registers are collected (every replica holds every dot): still exact.
        let dropped = replica
            .bucket
            .store()
            .collect(START_MS + 10_000, &mut |_, _| true);
        assert_eq!(dropped, 100);
        replica.check("after the collection");
        assert_eq!(replica.bucket.len(), 0);
        assert_eq!(replica.bucket.store().tombstone_count(), 0);
        assert_eq!(replica.expiries_heard, 100, "one expiry per key");
    }
}

/// A set whose expiry is already past when it arrives (the receiver's clock is ahead, or the write
/// waited out a long partition) is stored, so that the replicas converge, but never shown: a listener
/// hears nothing of it when the key was absent, and hears an expiry when it hid a live value.
#[test]
fn a_value_that_arrives_already_expired_is_never_announced_live() {
    let a = Replica::new("a", 0);
    let mut b = Replica::new("b", 0);
    b.set("held", "b's", Lifetime::Forever);
    b.check("after its own write");
    // On a, a millisecond later, both keys live for 100 ms; by the time they reach b (its clock now
    // 500 ms on, as after a partition), they expired.
    a.time.advance(1);
    a.set("fresh", "a's", Lifetime::Ttl(100));
    a.set("held", "a's", Lifetime::Ttl(100));
    b.time.advance(500);
    let rs = [a, b];
    ship_all(&rs, 0, 1);
    let [mut a, mut b] = rs;
    b.check("after the expired writes arrived");
    assert_eq!(
        b.announced,
        ["held"],
        "only b's own live write was announced"
    );
    assert!(!b.bucket.contains("fresh") && !b.bucket.contains("held"));
    assert_eq!(b.expiries_heard, 1, "the live value a's write hid expired");
    assert!(
        !b.bucket.inspect("held").is_empty() && !b.bucket.inspect("fresh").is_empty(),
        "the registers are stored, so the replicas converge"
    );
    // Later sweeps report nothing more.
    b.time.advance(10_000);
    b.check("long after");
    assert_eq!(b.expiries_heard, 1);
    a.time.advance(10_600);
    a.check("on the writer");
    let rs = [a, b];
    ship_all(&rs, 1, 0);
    assert_eq!(rs[0].dump(), rs[1].dump(), "the replicas converged");
}

/// A set written with an absolute expiry (`Lifetime::Until`) already past by the writer's own clock,
/// while no sweep ran since: stored and shipped like any write, but never shown live, and heard as an
/// expiry when it hid a live value.
#[test]
fn a_value_written_already_expired_is_never_announced_live() {
    let mut a = Replica::new("a", 0);
    a.set("held", "a's", Lifetime::Forever);
    a.check("after the live write");
    a.time.advance(1_000);
    a.set("fresh", "late", Lifetime::Until(START_MS + 500));
    a.set("held", "late", Lifetime::Until(START_MS + 500));
    a.check("after the expired writes");
    assert_eq!(a.announced, ["held"], "only the live write was announced");
    assert_eq!(a.expiries_heard, 1, "the live value the write hid expired");
    assert!(
        !a.bucket.inspect("fresh").is_empty(),
        "the register is stored"
    );
    let b = Replica::new("b", 1_000);
    let rs = [a, b];
    ship_all(&rs, 0, 1);
    let [_, mut b] = rs;
    b.check("after the expired writes arrived");
    assert!(b.announced.is_empty(), "nothing live reached b");
}

/// A value, then a touch that shortened its life, both held by the sender when it ships them; by
/// the time they reach another replica the touch has expired the value. The receiver never shows it
/// live, whichever way they travel: in one chunk of one origin (the value's write comes first in it),
/// as a value of one origin whose touch another origin made (a chunk of the value's origin carries
/// the key's newer touch register, and a merge applies a whole chunk before it announces anything),
/// or in the answer to a partial fetch (touch registers go first).
#[test]
fn a_value_expired_by_its_newer_touch_in_the_same_chunk_is_never_announced_live() {
    let a = Replica::new("a", 0);
    let b = Replica::new("b", 0);
    a.set("k", "v", Lifetime::Ttl(10_000));
    a.time.advance(1);
    a.bucket.touch("k".into(), 100).expect("the key is live");
    a.time.advance(500);
    b.time.advance(501);
    let rs = [a, b];
    ship_all(&rs, 0, 1);
    let [a, mut b] = rs;
    b.check("after the chunk");
    assert!(b.announced.is_empty(), "announced {:?}", b.announced);
    assert_eq!(
        b.expiries_heard, 0,
        "nothing live was shown, so nothing expired"
    );
    assert_eq!(a.dump(), b.dump(), "the replicas converged");
}

/// A replica holding a value written at `a`, and its own touch (`c`) that expired it.
fn value_and_touch_of_another_origin() -> [Replica; 3] {
    let a = Replica::new("a", 0);
    let c = Replica::new("c", 0);
    let b = Replica::new("b", 0);
    a.set("k", "v", Lifetime::Ttl(10_000));
    let mut rs = [a, b, c];
    ship_all(&rs, 0, 2);
    rs[2].time.advance(1);
    rs[2]
        .bucket
        .touch("k".into(), 100)
        .expect("the key is live");
    for r in &mut rs {
        r.time.advance(600);
        r.check("before the exchange");
    }
    rs
}

#[test]
fn a_value_expired_by_a_touch_of_another_origin_is_never_announced_live() {
    let mut rs = value_and_touch_of_another_origin();
    // c ships a's writes first (contexts go in origin order), then its own.
    ship_all(&rs, 2, 1);
    rs[1].check("after the chunks");
    assert!(
        rs[1].announced.is_empty(),
        "announced {:?}",
        rs[1].announced
    );
    assert_eq!(rs[1].expiries_heard, 0);
    assert_eq!(rs[1].dump(), rs[2].dump(), "the replicas converged");
}

#[test]
fn a_value_expired_by_a_touch_of_another_origin_is_never_announced_live_by_a_fetch() {
    let mut rs = value_and_touch_of_another_origin();
    let [_, b, c] = &mut rs;
    let hello = b.local.hello(7000, None, vec![]);
    let mut session = Session::new(&c.local, &hello).expect("hello accepted");
    let request = Message::FetchRequest {
        id: 1,
        bucket: BUCKET.into(),
        prefix: String::new(),
    };
    session
        .handle(&c.local, request)
        .expect("a fetch is served");
    let mut buf = Vec::new();
    session.fill(&c.local, &mut buf, false).expect("encodes");
    let mut replies = 0;
    for msg in decode_all(&buf) {
        if let Message::FetchReply {
            origin: Some(origin),
            writes,
            ..
        } = msg
        {
            // Each reply as the link's reader applies it.
            let o = b.local.replicas().intern(&origin);
            b.bucket
                .merge(
                    &o,
                    writes.into_iter().map(Into::into).collect(),
                    &SeqRanges::new(),
                )
                .expect("clocks within the allowed skew");
            replies += 1;
        }
    }
    assert_eq!(replies, 2, "one reply per origin");
    b.check("after the fetch");
    assert!(b.announced.is_empty(), "announced {:?}", b.announced);
    assert_eq!(b.expiries_heard, 0);
}

/// The other side of the rule: a replica that receives a value from a sender that does not hold the
/// touch that expired it elsewhere shows it live, as its sender does, and hears it expire once the
/// touch arrives (ordinary eventual consistency, as for a set that arrives before a newer delete).
#[test]
fn a_value_from_a_sender_without_its_touch_is_shown_until_the_touch_arrives() {
    let mut rs = value_and_touch_of_another_origin();
    ship_all(&rs, 0, 1);
    rs[1].check("after the value arrived from its writer");
    assert_eq!(rs[1].announced, ["k"], "shown live, as its sender shows it");
    ship_all(&rs, 2, 1);
    rs[1].check("after the touch arrived");
    assert_eq!(
        rs[1].expiries_heard, 1,
        "heard expired once the touch arrived"
    );
    assert_eq!(rs[1].dump(), rs[2].dump(), "the replicas converged");
}

/// A replica holding a value that expired (`a`'s), and a chunk from `w` with a newer value of the
/// key and `w`'s touch of that value, alive for `touch_ms` from the touch: the touch goes in first
/// and beats the expired value's register too, yet the value it was made for replaces that one in
/// the same merge. `w` touches `wait_ms` before the chunk leaves.
fn expired_value_and_a_chunk_with_its_superseder_and_touch(touch_ms: u64, wait_ms: u64) -> Replica {
    let rs = expired_value_and_its_superseder_touched(touch_ms, wait_ms);
    ship_all(&rs, 2, 1);
    let [_, r, _] = rs;
    r
}

/// `a`, `r` and `w` of `expired_value_and_a_chunk_with_its_superseder_and_touch`, before `w` sends.
fn expired_value_and_its_superseder_touched(touch_ms: u64, wait_ms: u64) -> [Replica; 3] {
    let a = Replica::new("a", 0);
    let r = Replica::new("r", 0);
    let w = Replica::new("w", 0);
    a.set("k", "old", Lifetime::Ttl(100));
    let mut rs = [a, r, w];
    ship_all(&rs, 0, 1);
    for x in &mut rs {
        x.time.advance(200);
    }
    rs[1].check("after the old value expired");
    assert_eq!(rs[1].expiries_heard, 1, "the old value expired once");
    rs[2].set("k", "new", Lifetime::Forever);
    rs[2].time.advance(1);
    rs[2]
        .bucket
        .touch("k".into(), touch_ms)
        .expect("the key is live at w");
    for x in &mut rs {
        x.time.advance(wait_ms);
    }
    rs
}

/// The merge announces each key's net change: the expired value the touch lands on first is never
/// shown again for the moment before its superseder replaces it; the listener hears the new value
/// once.
#[test]
fn a_touch_never_shows_again_an_expired_value_its_chunk_replaces() {
    let mut r = expired_value_and_a_chunk_with_its_superseder_and_touch(10_000, 0);
    r.check("after the chunk");
    assert_eq!(
        r.announced,
        ["k", "k"],
        "the old value once, then the new one, and nothing between"
    );
    assert_eq!(r.heard.get("k").map(Vec::as_slice), Some(&*json("new")));
    assert_eq!(r.expiries_heard, 1);
}

/// The same merge when the touch had expired the new value before it arrived: the key stays dead,
/// and the listener, which heard the old value expire, hears nothing (no second expiry).
#[test]
fn a_chunk_whose_touch_expired_its_value_leaves_an_expired_key_unheard() {
    let mut r = expired_value_and_a_chunk_with_its_superseder_and_touch(100, 200);
    r.check("after the chunk");
    assert_eq!(r.announced, ["k"], "only the old value, while it lived");
    assert!(!r.bucket.contains("k"));
    assert_eq!(
        r.expiries_heard, 1,
        "the old value expired once, and only it"
    );
}

/// `replicas[from]` answers a fetch of the whole bucket that `replicas[to]` asked on their link,
/// each frame taken by `to`'s session as its link's reader takes it.
fn fetch_all(replicas: &mut [Replica], from: usize, to: usize) {
    let hello_to = replicas[to].local.hello(7000, None, vec![]);
    let hello_from = replicas[from].local.hello(7001, None, vec![]);
    let mut asking = Session::new(&replicas[to].local, &hello_from).expect("hello accepted");
    let mut answering = Session::new(&replicas[from].local, &hello_to).expect("hello accepted");
    let request = Message::FetchRequest {
        id: 1,
        bucket: BUCKET.into(),
        prefix: String::new(),
    };
    asking.queue(request.clone());
    answering
        .handle(&replicas[from].local, request)
        .expect("a fetch is served");
    let mut buf = Vec::new();
    answering
        .fill(&replicas[from].local, &mut buf, false)
        .expect("encodes");
    for msg in decode_all(&buf) {
        if let Message::FetchReply { .. } = msg {
            asking
                .handle(&replicas[to].local, msg)
                .expect("the reply is taken");
            replicas[to].check("after a fetch reply");
        }
    }
}

/// The fetch answer's value of a key comes in a frame after its touch's (touch registers go first),
/// and each frame is taken as it comes: the touch lands first on the expired value held here, older
/// than it, yet that value is never shown again before the answer's value replaces it.
#[test]
fn a_fetch_never_shows_again_an_expired_value_its_answer_replaces() {
    let mut rs = expired_value_and_its_superseder_touched(10_000, 0);
    fetch_all(&mut rs, 2, 1);
    let r = &mut rs[1];
    r.check("after the fetch");
    assert_eq!(
        r.announced,
        ["k", "k"],
        "the old value once, then the new one, and nothing between"
    );
    assert_eq!(r.heard.get("k").map(Vec::as_slice), Some(&*json("new")));
    assert_eq!(r.expiries_heard, 1);
}

/// A chunk of one origin carries its touch register alone when the key's value is another origin's
/// (a value goes with its key's newer touch, not a touch with its value). The receiver keeps the
/// touch with no value of the key, and the value, from a replica that never had the touch, lands
/// under it: shown with the touch's life, not its own, and expired once; the replicas converge.
#[test]
fn a_touch_shipped_without_its_value_of_another_origin_is_kept_and_its_value_lands_under_it() {
    let b = Replica::new("b", 0);
    let r = Replica::new("r", 0);
    let c = Replica::new("c", 0);
    b.set("k", "v", Lifetime::Forever);
    let mut rs = [b, r, c];
    ship_all(&rs, 0, 2);
    rs[2].time.advance(1);
    rs[2]
        .bucket
        .touch("k".into(), 1_000)
        .expect("the key is live at c");
    let c_id = rs[2].local.me().id().clone();
    let (_, mine) = rs[2]
        .bucket
        .store()
        .context()
        .into_iter()
        .find(|(o, _)| *o.id() == c_id)
        .expect("c's own touch");
    let alone = pack(&rs[2], 1, &c_id, Seq::FIRST, mine.max());
    assert!(
        alone.writes.iter().all(|w| w.is_touch()) && alone.superseders.is_empty(),
        "c's chunk carries its touch alone"
    );
    deliver(&rs[1], alone);
    rs[1].check("after the touch alone");
    assert!(rs[1].announced.is_empty(), "no value to show");
    assert_eq!(rs[1].bucket.inspect("k").len(), 1, "the touch is kept");
    ship_all(&rs, 0, 1);
    rs[1].check("after the value from b");
    assert_eq!(rs[1].announced, ["k"]);
    for x in &mut rs {
        x.time.advance(2_000);
    }
    rs[1].check("after the touch's expiry");
    assert_eq!(
        rs[1].expiries_heard, 1,
        "the value lives as long as the touch, not forever"
    );
    ship_all(&rs, 1, 2);
    ship_all(&rs, 2, 1);
    assert_eq!(rs[1].dump(), rs[2].dump(), "the replicas converged");
}

/// A full resync drops the registers its peer covers and no longer stores. A touch register can go
/// that way with nothing superseding it sent: the peer compacted its marker once every member it
/// knew held the newer write, this replica being forgotten meanwhile. Whatever superseded the touch
/// is at least as new as it, so it beats the value under the touch too: a value the touch had
/// expired is never shown again (it was heard expired; a listener would hear it neither come back
/// nor expire twice) until that newer write arrives, and then it is heard live once and expires once.
#[test]
fn a_resync_that_drops_the_touch_that_expired_a_value_never_shows_the_value_again() {
    let a = Replica::new("a", 0);
    let b = Replica::new("b", 0);
    let c = Replica::new("c", 0);
    a.set("k", "v", Lifetime::Forever);
    let mut rs = [a, b, c];
    ship_all(&rs, 0, 1);
    ship_all(&rs, 0, 2);
    rs[2].time.advance(1);
    let touch = rs[2]
        .bucket
        .touch("k".into(), 100)
        .expect("the key is live");
    ship_all(&rs, 2, 1);
    for r in &mut rs {
        r.time.advance(600);
    }
    rs[1].check("after the touch expired k");
    assert_eq!(rs[1].announced, ["k"]);
    assert_eq!(rs[1].expiries_heard, 1);
    // The resync: c's touch is covered at the peer and no longer stored there.
    let c_origin = rs[1].local.replicas().intern(rs[2].local.me().id());
    rs[1]
        .bucket
        .drop_dots(&c_origin, &SeqRanges::from_ranges([(touch.seq, touch.seq)]));
    rs[1].check("after the resync dropped the touch");
    assert!(!rs[1].bucket.contains("k"), "k stays expired");
    // What superseded it: a newer touch, made at a, for 10 s.
    rs[0]
        .bucket
        .touch("k".into(), 10_000)
        .expect("k is live at a, which never had c's touch");
    ship_all(&rs, 0, 1);
    rs[1].check("after the newer touch arrived");
    assert_eq!(rs[1].announced, ["k", "k"], "live again, heard once");
    for r in &mut rs {
        r.time.advance(10_001);
    }
    rs[1].check("after the newer touch expired");
    assert_eq!(rs[1].expiries_heard, 2, "each life of k expired once");
    ship_all(&rs, 1, 0);
    ship_all(&rs, 2, 0);
    assert_eq!(rs[0].dump(), rs[1].dump(), "the replicas converged");
}

/// One randomized run: 2 or 3 replicas (clocks up to 300 ms apart) set, touch and delete a handful of
/// keys with short times to live, mostly in the same milliseconds (equal timestamps across origins),
/// and ship chunks of each other's writes that arrive late, reordered and duplicated, while time
/// moves and expiries are swept. Every step checks size and the listener against the live keys; at
/// the end every replica has everything and all hold the same registers.
fn ttl_run(seed: u64, steps: usize) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let n = 2 + rng.below(2) as usize;
    let mut r: Vec<Replica> = (0..n)
        .map(|i| {
            let offset = if rng.chance(50) { rng.below(300) } else { 0 };
            Replica::new(&format!("n{i}"), offset)
        })
        .collect();
    let mut net: Vec<Shipment> = Vec::new();
    for step in 0..steps {
        let i = rng.below(n as u64) as usize;
        let key = format!("k{}", rng.below(4));
        match rng.below(100) {
            0..=29 => {
                let lifetime = match rng.below(4) {
                    0 => Lifetime::Forever,
                    _ => Lifetime::Ttl(1 + rng.below(400)),
                };
                r[i].set(&key, &format!("{step}"), lifetime);
            }
            30..=37 => {
                r[i].bucket.write(&key, None, Lifetime::Forever);
            }
            38..=47 => {
                r[i].bucket.touch(key.into(), 1 + rng.below(400));
            }
            48..=69 => {
                // Some of i's knowledge of one origin, in flight to another replica.
                let to = rng.below(n as u64) as usize;
                let ctx = r[i].bucket.store().context();
                if to != i && !ctx.is_empty() {
                    let (o, seqs) = &ctx[rng.below(ctx.len() as u64) as usize];
                    let max = seqs.max().get();
                    let start = 1 + rng.below(max);
                    let end = start + rng.below(max - start + 1);
                    net.push(pack(&r[i], to, o.id(), Seq::from(start), Seq::from(end)));
                }
            }
            70..=84 => {
                if !net.is_empty() {
                    let pick = rng.below(net.len() as u64) as usize;
                    let s = if rng.chance(10) {
                        let s = &net[pick];
                        Shipment {
                            to: s.to,
                            origin: s.origin.clone(),
                            superseders: s.superseders.clone(),
                            writes: s.writes.clone(),
                            covered: s.covered.clone(),
                            superseded: s.superseded.clone(),
                        }
                    } else {
                        net.swap_remove(pick)
                    };
                    deliver(&r[s.to], s);
                }
            }
            85..=94 => {
                // Time moves on every replica alike (their offsets stay).
                let by = rng.below(150);
                for replica in &r {
                    replica.time.advance(by);
                }
            }
            _ => {
                // Collection, when every replica holds the same dots (nothing it drops is in flight
                // anywhere that matters): dead registers a second old go.
                let contexts: Vec<_> = r.iter().map(|x| x.bucket.store().context()).collect();
                let same = contexts.windows(2).all(|w| {
                    let ids = |c: &Vec<(_, SeqRanges)>| -> Vec<(ReplicaId, SeqRanges)> {
                        c.iter()
                            .map(|(o, s): &(peer_buckets_engine::Origin, _)| {
                                (o.id().clone(), s.clone())
                            })
                            .collect()
                    };
                    ids(&w[0]) == ids(&w[1])
                });
                if same && net.is_empty() {
                    let now = r.iter().map(|x| x.time_ms()).min().expect("replicas");
                    for replica in &r {
                        replica
                            .bucket
                            .store()
                            .collect(now - 1_000, &mut |_, _| true);
                    }
                }
            }
        }
        for replica in &mut r {
            replica.check(&format!("seed {seed} step {step}"));
        }
    }
    // Everything in flight arrives, then everyone ships everything to everyone.
    while let Some(s) = net.pop() {
        deliver(&r[s.to], s);
    }
    for _ in 0..2 {
        for from in 0..n {
            for to in (0..n).filter(|&to| to != from) {
                ship_all(&r, from, to);
            }
        }
    }
    for replica in &mut r {
        replica.time.advance(1_000);
        replica.check(&format!("seed {seed} settled"));
    }
    let reference = r[0].dump();
    for (i, replica) in r.iter().enumerate().skip(1) {
        assert_eq!(
            replica.dump(),
            reference,
            "seed {seed}: n{i} differs from n0"
        );
    }
}

impl Replica {
    fn time_ms(&self) -> u64 {
        use peer_buckets_engine::PhysicalClock;
        self.time.now_ms()
    }
}

#[test]
fn ttl_writers_touches_and_deletes_keep_size_events_and_registers_exact() {
    let seeds: u64 = std::env::var("TTL_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    for seed in 0..seeds {
        ttl_run(seed, 300);
    }
}
