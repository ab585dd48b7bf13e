//! Scenarios built to break the engine's invariants, each the smallest schedule found that does.
//!
//! Every test drives real replicas (`Local`, `Session`, `Bucket`, `Collector`, `PullPlanner`) over real
//! encoded frames, deterministically, and is named for the invariant it checks:
//! - P: a replica shows for a key the last-writer-wins maximum, by `(hlc, origin)`, of exactly the
//!   writes its context covers, none if that maximum is a tombstone or expired;
//! - replicas that exchanged everything show the same thing for every key;
//! - a listener hears exactly one `'change'` per change of what a key shows.

use std::sync::Arc;
use std::time::Duration;

use peer_buckets_engine::wire::Message;
use peer_buckets_engine::Local;
use peer_buckets_engine::{AckLevel, Registered};
use peer_buckets_engine::{Change, Entry, Expiry, Lifetime, MemoryStore};
use peer_buckets_engine::{Config, Node};
use peer_buckets_engine::{Hlc, ManualClock};
use peer_buckets_engine::{Origin, ReplicaId};
use peer_buckets_engine::{Seq, SeqRanges};

mod common;
use common::*;

fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Change>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(c) = rx.try_recv() {
        out.push(match (&c.value, c.expired) {
            (Some(v), _) => format!("{} set {}", c.key, String::from_utf8_lossy(v)),
            (None, true) => format!("{} expired", c.key),
            (None, false) => format!("{} deleted", c.key),
        });
    }
    out
}

/// How `drain` shows a set of `key` to `v`.
fn set(key: &str, v: &str) -> String {
    format!("{key} set {}", String::from_utf8_lossy(&json(v)))
}

// ---------------------------------------------------------------------------------------------------
// 1. Counters and events.

/// A key that expired is a visible change (reads stop showing it) whatever comes next: a local
/// write over it before the periodic sweep ran must not swallow that expiry.
#[test]
fn a_local_write_over_an_expired_key_reports_its_expiry_first() {
    let time = Arc::new(ManualClock::new(START_MS));
    let local = collecting_local("a", 1, &time, 0, SKEW_MS);
    let bucket = local.bucket(BUCKET);
    let mut rx = bucket.subscribe();
    bucket.write("k", Some(json("v1")), Lifetime::Ttl(100));
    time.advance(500);
    assert_eq!(
        shows(&bucket, "k"),
        None,
        "k expired: reads no longer show it"
    );
    bucket.write("k", Some(json("v2")), Lifetime::Forever);
    assert_eq!(
        drain(&mut rx),
        vec![set("k", "v1"), "k expired".to_string(), set("k", "v2")],
        "the listener must hear the expiry it saw happen"
    );
}

/// The wall clock steps back (an NTP correction) on an idle replica: a value written now with a time to
/// live must be readable for that time here, as it is on every other replica.
#[test]
fn a_local_ttl_write_is_readable_after_the_wall_clock_steps_back() {
    let time = Arc::new(ManualClock::new(START_MS));
    let local = collecting_local("a", 1, &time, 0, SKEW_MS);
    let bucket = local.bucket(BUCKET);
    let mut rx = bucket.subscribe();
    bucket.write("old", Some(json("x")), Lifetime::Ttl(1_000));
    time.advance(20_000);
    assert_eq!(bucket.len(), 0, "the sweep ran at the wall clock's time");
    drain(&mut rx);
    time.set(START_MS + 10_000);
    bucket.write("k", Some(json("v")), Lifetime::Ttl(5_000));
    assert_eq!(
        shows(&bucket, "k"),
        Some(json("v").to_vec()),
        "a value written with 5 s to live is readable at once"
    );
    assert_eq!(drain(&mut rx), vec![set("k", "v")]);
}

/// A store restored from disk judges expiry from time zero: a key that expired (and was reported)
/// before the restart is counted live and announced as expiring again in the new process.
#[test]
fn a_restore_announces_no_expiry_of_a_key_dead_before_the_restart() {
    let time = Arc::new(ManualClock::new(START_MS));
    let local = collecting_local("a", 2, &time, 0, SKEW_MS);
    let old = local.replicas().intern(&ReplicaId {
        node: "a".into(),
        incarnation: 1,
    });
    let entry = Entry {
        value: Some(json("v")),
        hlc: Hlc::from_parts(START_MS - 3_600_000, 0),
        origin: old.clone(),
        seq: Seq::from(1),
        expires: Expiry::at_ms(START_MS - 3_000_000),
        touch: None,
    };
    let store = MemoryStore::restore(
        vec![("k".into(), entry)],
        vec![(old, SeqRanges::up_to(Seq::from(1)))],
        vec![],
        vec![],
        Hlc(0),
        true,
    );
    let bucket = local.install_bucket(BUCKET, Box::new(store));
    let mut rx = bucket.subscribe();
    assert_eq!(shows(&bucket, "k"), None);
    assert_eq!(bucket.len(), 0);
    assert_eq!(
        drain(&mut rx),
        Vec::<String>::new(),
        "nothing this process showed changed"
    );
}

// ---------------------------------------------------------------------------------------------------
// 2. Divergence and invariant P.

fn origin(local: &Local, node: &str) -> Origin {
    local.replicas().intern(&rid(node))
}

/// Equal HLCs across origins are ordinary (same millisecond, counter 0): a tombstone that beat a set
/// by origin alone, once collected, must still beat that set when it comes back.
#[test]
fn a_collected_tombstone_that_won_by_origin_alone_keeps_its_key_deleted() {
    let time = Arc::new(ManualClock::new(START_MS));
    let local = collecting_local("m", 1, &time, 0, SKEW_MS);
    let bucket = local.bucket(BUCKET);
    let (y, z) = (origin(&local, "y"), origin(&local, "z"));
    let h = Hlc::from_parts(START_MS - 10_000, 0);
    // z deleted k in the same millisecond as y set it; (h, z) > (h, y).
    bucket
        .merge(&z, vec![write("k", h, 1, None)], &SeqRanges::new())
        .unwrap();
    assert_eq!(bucket.store().collect(START_MS, &mut |_, _| true), 1);
    // y's set comes back from a replica that was away past the collection.
    bucket
        .merge(&y, vec![write("k", h, 1, Some("y"))], &SeqRanges::new())
        .unwrap();
    assert_eq!(
        shows(&bucket, "k"),
        None,
        "P: the context covers (h, z)'s tombstone, which beats (h, y)'s set"
    );
}

/// A stand-in tombstone stands for a collected register; it must not beat a write that is newer than
/// that register by the `(hlc, origin)` order.
#[test]
fn a_stand_in_never_beats_a_write_newer_than_the_collected_register() {
    let time = Arc::new(ManualClock::new(START_MS));
    let local = collecting_local("m", 1, &time, 0, SKEW_MS);
    let bucket = local.bucket(BUCKET);
    let (a, b, c) = (
        origin(&local, "a"),
        origin(&local, "b"),
        origin(&local, "c"),
    );
    let h = Hlc::from_parts(START_MS - 10_000, 0);
    bucket
        .merge(&b, vec![write("k", h, 1, None)], &SeqRanges::new())
        .unwrap();
    assert_eq!(bucket.store().collect(START_MS, &mut |_, _| true), 1);
    // An old write comes back: it meets a stand-in at the collected register's time, (h, m).
    let older = Hlc(h.0 - 1);
    bucket
        .merge(
            &a,
            vec![write("k", older, 1, Some("old"))],
            &SeqRanges::new(),
        )
        .unwrap();
    assert_eq!(shows(&bucket, "k"), None);
    // c set k in the same millisecond as b's delete: (h, c) > (h, b), the register collected.
    bucket
        .merge(&c, vec![write("k", h, 1, Some("c"))], &SeqRanges::new())
        .unwrap();
    assert_eq!(
        shows(&bucket, "k"),
        Some(json("c").to_vec()),
        "(h, c) is newer than every write the stand-in stands for"
    );
}

/// A touch newer than a write gives that write its expiry (the write lands under the touch register).
/// Once the touched value expires and is collected, the same write coming back must still meet that
/// expiry: the collected key is guarded by its value register's time only.
#[test]
fn a_collected_touch_still_expires_an_older_write_that_comes_back() {
    let time = Arc::new(ManualClock::new(START_MS));
    let local = collecting_local("m", 1, &time, 0, SKEW_MS);
    let bucket = local.bucket(BUCKET);
    let (a, b, x) = (
        origin(&local, "a"),
        origin(&local, "b"),
        origin(&local, "x"),
    );
    let at = |ms: u64| Hlc::from_parts(START_MS + ms, 0);
    // a sets k with a ttl; b touches it later; x's write (made in between, away) has not arrived.
    let mut v = write("k", at(0), 1, Some("a"));
    set_expiry(&mut v, START_MS + 1_000);
    let touch = touch("k", at(200), 1, START_MS + 2_000);
    bucket.merge(&a, vec![v], &SeqRanges::new()).unwrap();
    bucket.merge(&b, vec![touch], &SeqRanges::new()).unwrap();
    time.advance(10_000);
    assert_eq!(bucket.len(), 0, "k expired at the touch's expiry");
    assert_eq!(
        bucket.store().collect(START_MS + 5_000, &mut |_, _| true),
        1
    );
    // x's write, older than the touch, comes back: under the touch it is expired.
    bucket
        .merge(
            &x,
            vec![write("k", at(100), 1, Some("x"))],
            &SeqRanges::new(),
        )
        .unwrap();
    assert_eq!(
        shows(&bucket, "k"),
        None,
        "P: b's touch (newer than x's write) gives it an expiry long past"
    );
}

/// A key's tombstone and a newer touch, its expiry past, are collected: the touch is the register
/// remembered. The tombstone (or an older touch) coming back from a replica away past the collection
/// is dead under that register: it is covered, never stored again, so the replica does not hold a
/// register older than one its context covers (invariant P; `simulation.rs`, collection episodes,
/// seed 3028 step 1819: n4 stored the tombstone without the touch it covered).
#[test]
fn a_dead_register_older_than_a_collected_one_of_its_key_is_covered_not_stored() {
    let time = Arc::new(ManualClock::new(START_MS));
    let local = collecting_local("m", 1, &time, 0, SKEW_MS);
    let bucket = local.bucket(BUCKET);
    let (a, b, y, z) = (
        origin(&local, "a"),
        origin(&local, "b"),
        origin(&local, "y"),
        origin(&local, "z"),
    );
    let at = |ms: u64| Hlc::from_parts(START_MS + ms, 0);
    let touch = |hlc: Hlc, seq: u64| touch("k", hlc, seq, START_MS + 2_000);
    bucket
        .merge(&z, vec![write("k", at(0), 1, None)], &SeqRanges::new())
        .unwrap();
    bucket
        .merge(&b, vec![touch(at(100), 1)], &SeqRanges::new())
        .unwrap();
    // A key expiring meanwhile makes the sweep run: the store then knows the touch's expiry passed.
    bucket.write("other", Some(json("o")), Lifetime::Ttl(100));
    time.advance(10_000);
    bucket.sweep();
    assert_eq!(
        bucket.store().collect(START_MS + 5_000, &mut |_, _| true),
        2
    );
    // A tombstone and a touch older than the collected touch come back.
    bucket
        .merge(&y, vec![write("k", at(60), 1, None)], &SeqRanges::new())
        .unwrap();
    bucket
        .merge(&a, vec![touch(at(50), 1)], &SeqRanges::new())
        .unwrap();
    assert!(
        bucket.inspect("k").is_empty(),
        "P: the remembered touch beats both; stored {:?}",
        bucket.inspect("k")
    );
    for o in [&y, &a] {
        assert!(
            bucket.store().context_of(o).contains(Seq::from(1)),
            "covered"
        );
    }
}

/// A replica away past a collection must detect it whichever peer it meets first; here it meets one
/// that joined after the collection and holds the collected dots as bare coverage.
#[test]
fn a_missed_collection_is_detected_through_a_peer_that_joined_after_it() {
    let (a, b, x, j) = (0, 1, 2, 3);
    let mut w = World::new(&["a", "b", "x", "j"]);
    w.link(a, b);
    w.link(a, x);
    w.link(b, x);
    w.bucket(a).write("k", Some(json("v1")), Lifetime::Forever);
    w.pump();
    assert_eq!(shows(&w.bucket(x), "k"), Some(json("v1").to_vec()));
    // x goes away and is forgotten; a deletes k; a and b collect the tombstone.
    w.isolate(x);
    w.bucket(a).write("k", None, Lifetime::Forever);
    w.pump();
    assert!(w.collect_among(&[a, b]) > 0, "the tombstone was collected");
    // j joins through a, then x comes back and meets j first.
    w.link(j, a);
    w.pump();
    w.link(x, j);
    w.pump();
    // Everyone heals.
    w.link(x, a);
    w.link(x, b);
    w.link(j, b);
    w.pump();
    let seen: Vec<Option<Vec<u8>>> = [a, b, x, j]
        .iter()
        .map(|&i| shows(&w.bucket(i), "k"))
        .collect();
    assert!(
        seen.iter().all(|s| s.is_none()),
        "every replica covers a's delete, so none shows k (a, b, x, j): {seen:?}"
    );
}

/// A replica back from past a collection is refused until it covers the collection; what it pushed
/// meanwhile was dropped, though it counts as delivered. Once taken in again, those writes are
/// pulled even while it keeps writing (its stream never stalls).
#[test]
fn writes_pushed_while_refused_for_a_missed_collection_are_pulled_while_their_origin_keeps_writing()
{
    let (a, b, x) = (0, 1, 2);
    let mut w = World::new(&["a", "b", "x"]);
    w.link(a, b);
    w.link(a, x);
    w.bucket(a).write("k", Some(json("v1")), Lifetime::Forever);
    w.pump();
    w.isolate(x);
    w.bucket(a).write("k", None, Lifetime::Forever);
    w.pump();
    assert!(w.collect_among(&[a, b]) > 0, "the tombstone was collected");
    w.link(a, x);
    let mut written = Vec::new();
    for round in 0..40 {
        w.time.advance(500);
        let key = format!("x{round}");
        w.bucket(x).write(&key, Some(json("x")), Lifetime::Forever);
        written.push(key);
        for i in 0..w.locals.len() {
            w.plan(i);
        }
        let pairs: Vec<(usize, usize)> = w.sessions.keys().copied().collect();
        for (from, to) in pairs {
            for msg in w.frames(from, to, round % 2 == 1) {
                w.deliver(from, to, msg);
            }
        }
    }
    let lacking: Vec<&String> = written[..20]
        .iter()
        .filter(|k| shows(&w.bucket(a), k).is_none())
        .collect();
    assert!(lacking.is_empty(), "a lacks x's writes {lacking:?}");
}

/// A full resync drops registers the peer reports covered but not held (superseded there). The
/// superseder must be held first: otherwise, if the peer is lost before sending it, the dropped
/// register is gone from a replica whose context still covers it, while every other replica shows it.
#[test]
fn a_resync_never_drops_a_register_before_holding_what_superseded_it() {
    let (a, c, r, x, d) = (0, 1, 2, 3, 4);
    let mut w = World::new(&["a", "c", "r", "x", "d"]);
    for (i, j) in [(a, c), (a, r), (a, x), (c, r), (c, x), (r, x)] {
        w.link(i, j);
    }
    w.bucket(a).write("k", Some(json("v")), Lifetime::Forever);
    w.bucket(a).write("j", Some(json("j")), Lifetime::Forever);
    w.pump();
    // x goes away and is forgotten; a deletes j, and a, c, r collect it.
    w.isolate(x);
    w.bucket(a).write("j", None, Lifetime::Forever);
    w.pump();
    assert!(
        w.collect_among(&[a, c, r]) > 0,
        "j's tombstone was collected"
    );
    // r is cut from a and c; d writes k through r only, and is gone for good.
    w.unlink(a, r);
    w.unlink(c, r);
    w.link(d, r);
    w.bucket(d).write("k", Some(json("d")), Lifetime::Forever);
    w.pump();
    w.isolate(d);
    assert_eq!(shows(&w.bucket(r), "k"), Some(json("d").to_vec()));
    // x comes back and meets r first: from r's contexts x learns it missed a collection, and asks
    // which of its registers r knows superseded.
    w.link(x, r);
    for (from, to) in [(x, r), (r, x), (x, r)] {
        for msg in w.frames(from, to, false) {
            w.deliver(from, to, msg);
        }
    }
    let mut answered = false;
    for msg in w.frames(r, x, false) {
        let reply = matches!(msg, Message::HeldReply { .. });
        w.deliver(r, x, msg);
        if reply {
            answered = true;
            break; // the link resets right after the reply
        }
    }
    assert!(answered, "r answered x's question");
    // r crashes and restarts empty: d's write is lost with it.
    w.restart_empty(r, 2);
    for (i, j) in [(a, c), (a, r), (a, x), (c, r), (c, x), (r, x)] {
        w.link(i, j);
    }
    w.pump();
    let seen: Vec<Option<Vec<u8>>> = [a, c, r, x]
        .iter()
        .map(|&i| shows(&w.bucket(i), "k"))
        .collect();
    assert!(
        seen.windows(2).all(|p| p[0] == p[1]),
        "replicas that exchanged everything show the same k (a, c, r, x): {seen:?}"
    );
}

/// A full resync drops a live register the peer reports superseded and collected: what the key shows
/// changes (it stops showing the value), so the listener must hear it.
#[test]
fn a_resync_that_drops_a_live_register_reports_the_change() {
    let (a, b, x) = (0, 1, 2);
    let mut w = World::new(&["a", "b", "x"]);
    for (i, j) in [(a, b), (a, x), (b, x)] {
        w.link(i, j);
    }
    w.bucket(a).write("k", Some(json("v")), Lifetime::Forever);
    w.pump();
    let mut rx = w.bucket(x).subscribe();
    // x goes away and is forgotten; a deletes k, and a and b collect the tombstone.
    w.isolate(x);
    w.bucket(a).write("k", None, Lifetime::Forever);
    w.pump();
    assert!(w.collect_among(&[a, b]) > 0, "k's tombstone was collected");
    w.link(x, a);
    w.link(x, b);
    w.pump();
    assert_eq!(shows(&w.bucket(x), "k"), None, "x learned k is deleted");
    assert_eq!(
        drain(&mut rx),
        vec!["k deleted".to_string()],
        "x's listener heard k go"
    );
}

/// A full resync brings, with each register the peer reports superseded, the key's current
/// registers: here a newer value and the touch that expired it there. They land in one step, touch
/// first, as a chunk's do: the newer value is never shown live for a moment before its touch.
#[test]
fn a_resync_never_announces_live_a_superseding_value_its_touch_expired() {
    let (a, b, x) = (0, 1, 2);
    let mut w = World::new(&["a", "b", "x"]);
    for (i, j) in [(a, b), (a, x), (b, x)] {
        w.link(i, j);
    }
    w.bucket(a).write("k", Some(json("v")), Lifetime::Forever);
    w.bucket(a).write("j", Some(json("j")), Lifetime::Forever);
    w.pump();
    let mut rx = w.bucket(x).subscribe();
    // x goes away and is forgotten; a deletes j, and a and b collect the tombstone.
    w.isolate(x);
    w.bucket(a).write("j", None, Lifetime::Forever);
    w.pump();
    assert!(w.collect_among(&[a, b]) > 0, "j's tombstone was collected");
    // a sets k again and shortens its life with a touch; it expires before x is back.
    w.bucket(a).write("k", Some(json("w")), Lifetime::Forever);
    w.bucket(a).touch("k".into(), 100).expect("k is live");
    w.pump();
    assert_eq!(shows(&w.bucket(a), "k"), None, "k expired at a");
    // x comes back, misses the collection, and asks a which of its registers a knows superseded.
    w.link(x, a);
    w.link(x, b);
    w.pump();
    assert_eq!(shows(&w.bucket(x), "k"), None, "x holds k expired");
    let heard: Vec<String> = drain(&mut rx)
        .into_iter()
        .filter(|c| c.starts_with("k "))
        .collect();
    assert_eq!(
        heard,
        vec!["k expired".to_string()],
        "x's listener saw v expire, never w live"
    );
}

// ---------------------------------------------------------------------------------------------------
// 3. Clock.

/// A frame stamped exactly at the ceiling is accepted, and the next local write orders after it
/// (causality is kept at the ceiling: a write that lost to a stamp it followed would not take effect
/// even here). That write passes the ceiling by one tick, so a peer with the very same wall clock
/// drops the frame carrying it, without refusing the link, and takes it once its clock moved on.
#[test]
fn a_write_after_a_timestamp_at_the_ceiling_orders_after_it_and_reaches_a_peer_on_the_same_clock() {
    let (a, b) = (0, 1);
    let mut w = World::new(&["a", "b"]);
    w.link(a, b);
    w.pump();
    let c = origin(&w.locals[a], "c");
    let ceiling = w.locals[a].clock().ceiling();
    w.bucket(a)
        .merge(
            &c,
            vec![write("j", ceiling, 1, Some("c"))],
            &SeqRanges::new(),
        )
        .expect("a timestamp at the ceiling is allowed");
    let own = w.bucket(a).write("j", Some(json("a")), Lifetime::Forever);
    assert!(
        own.hlc > ceiling,
        "a's write orders after the stamp it followed"
    );
    assert_eq!(shows(&w.bucket(a), "j"), Some(json("a").to_vec()));
    let frames = w.frames(a, b, false);
    assert!(!frames.is_empty(), "a pushes its write");
    for msg in frames {
        w.try_deliver(a, b, msg)
            .expect("b, whose wall clock is a's, keeps the link");
    }
    assert_eq!(shows(&w.bucket(b), "j"), None, "one tick past b's ceiling");
    assert!(w.locals[b].clock().now() <= w.locals[b].clock().ceiling());
    w.pump();
    assert_eq!(
        shows(&w.bucket(b), "j"),
        Some(json("a").to_vec()),
        "b takes a's write once its clock moved on"
    );
}

/// A push dropped for skew leaves a gap its sender counts as delivered; the receiver pulls it as soon
/// as its clock allows, even when the planner runs before any digest of the sender told it that the
/// sender holds those writes (on a node, pulls are planned every 500 ms and digests go out every
/// 1,000 ms), and even while the origin keeps writing, so its stream never looks stalled.
#[test]
fn a_push_dropped_for_skew_is_pulled_again_while_its_origin_keeps_writing() {
    let (a, b) = (0, 1);
    let mut w = World::new(&["a", "b"]);
    w.link(a, b);
    w.pump();
    let c = origin(&w.locals[a], "c");
    let ceiling = w.locals[a].clock().ceiling();
    w.bucket(a)
        .merge(
            &c,
            vec![write("i", ceiling, 1, Some("c"))],
            &SeqRanges::new(),
        )
        .expect("a timestamp at the ceiling is allowed");
    w.bucket(a).write("j", Some(json("a")), Lifetime::Forever);
    for msg in w.frames(a, b, false) {
        w.try_deliver(a, b, msg)
            .expect("b, whose wall clock is a's, keeps the link");
    }
    assert_eq!(shows(&w.bucket(b), "j"), None, "one tick past b's ceiling");
    // b plans before a's next digest; then a keeps writing, pushing each write at once, with a digest
    // every other pass, as a node does.
    for round in 0..30 {
        w.time.advance(500);
        w.plan(b);
        w.plan(a);
        w.bucket(a)
            .write(format!("k{round}"), Some(json("a")), Lifetime::Forever);
        for (from, to) in [(a, b), (b, a)] {
            for msg in w.frames(from, to, round % 2 == 1) {
                w.deliver(from, to, msg);
            }
        }
    }
    assert_eq!(
        shows(&w.bucket(b), "j"),
        Some(json("a").to_vec()),
        "15 s after b's clock came within the skew of a's write, b still lacks it"
    );
}

/// A fetch answer sends touch registers first, each origin's in frames of their own, so that a value
/// lands under the touch that expired it. When a frame of touches is dropped for skew (another touch
/// in it was stamped past the receiver's ceiling), the values that follow must not be taken without
/// them: a value the sender holds expired by its newer touch is never announced live.
#[test]
fn a_fetch_whose_touches_were_dropped_for_skew_never_announces_a_value_they_expired() {
    let (a, b) = (0, 1);
    let mut w = World::skewed(&[("a", 30_000), ("b", 0)]);
    w.link(a, b);
    w.pump();
    let (o, p) = (origin(&w.locals[a], "o"), origin(&w.locals[a], "p"));
    let now = w.locals[a].clock().wall_ms();
    let at = |ms: u64| Hlc::from_parts(ms, 0);
    // o set k1 and k2; p's touch expired k1 a second ago, and p's clock (within a's skew, 90 s
    // ahead of b's) stamped a touch of k2.
    w.bucket(a)
        .merge(
            &o,
            vec![
                write("k1", at(now - 5_000), 1, Some("o")),
                write("k2", at(now - 5_000), 2, Some("o")),
            ],
            &SeqRanges::new(),
        )
        .expect("within the skew");
    w.bucket(a)
        .merge(
            &p,
            vec![
                touch("k1", at(now - 3_000), 1, now - 1_000),
                touch("k2", at(now + 60_000), 2, now + 600_000),
            ],
            &SeqRanges::new(),
        )
        .expect("at a's ceiling");
    assert_eq!(shows(&w.bucket(a), "k1"), None, "a holds k1 expired");
    let mut heard = w.bucket(b).subscribe();
    w.sessions
        .get_mut(&(b, a))
        .expect("linked")
        .queue(Message::FetchRequest {
            id: 1,
            bucket: BUCKET.into(),
            prefix: String::new(),
        });
    for msg in w.frames(b, a, false) {
        w.deliver(b, a, msg);
    }
    for msg in w.frames(a, b, false) {
        w.deliver(a, b, msg);
    }
    assert_eq!(
        shows(&w.bucket(b), "k1"),
        None,
        "b shows k1, which the sender holds expired by p's touch"
    );
    assert!(
        !drain(&mut heard).contains(&set("k1", "o")),
        "b announced k1 live"
    );
}

/// a is 30 s ahead of b and 50 s behind c: both links are within the allowed 60 s, but c is 80 s
/// ahead of b. c's writes push a's clock 80 s ahead of b's; a's own writes, stamped after them, must
/// not get a refused by b, and b must take each write of a's and c's once its clock is within the
/// skew of the write's stamp, even while a keeps writing (a's stream never stalls).
#[test]
fn a_peer_within_skew_is_not_refused_for_the_clock_of_a_third() {
    let (a, b, c) = (0, 1, 2);
    let mut w = World::skewed(&[("a", 0), ("b", -30_000), ("c", 50_000)]);
    w.link(a, c);
    let j = w.bucket(c).write("j", Some(json("c")), Lifetime::Forever);
    w.pump();
    w.link(a, b);
    let mut written = vec![("j".to_string(), j.hlc)];
    for round in 0..80 {
        w.time.advance(700);
        if round < 60 {
            let key = format!("k{round}");
            let own = w.bucket(a).write(&key, Some(json("a")), Lifetime::Forever);
            assert!(own.hlc > j.hlc, "a's writes order after c's it saw");
            written.push((key, own.hlc));
        }
        for i in 0..w.locals.len() {
            w.plan(i);
        }
        let pairs: Vec<(usize, usize)> = w.sessions.keys().copied().collect();
        for (from, to) in pairs {
            for msg in w.frames(from, to, true) {
                if let Err(e) = w.try_deliver(from, to, msg) {
                    panic!("{to} refused {from}, whose clock is within the skew: {e}");
                }
            }
        }
        // What came within b's skew 8 s ago (a pull timeout and a pass) is held by b by now.
        let settled = w.locals[b].clock().wall_ms() + SKEW_MS - 8_000;
        for (key, hlc) in &written {
            if hlc.physical_ms() <= settled {
                assert!(
                    shows(&w.bucket(b), key).is_some(),
                    "round {round}: b lacks {key}, stamped {} ms ahead of its clock",
                    hlc.physical_ms() - w.locals[b].clock().wall_ms()
                );
            }
        }
    }
    assert_eq!(w.bucket(b).len(), written.len(), "b holds every write");
}

/// A resync's answer is a frame that carries writes: stamped past the asker's ceiling, it is dropped
/// whole, like any other. x (30 s behind a) comes back past a collection and asks a which of its
/// registers a no longer stores; a's answer carries what superseded k, written by c (50 s ahead of
/// a, so 80 s ahead of x) before c left for good. The answer must come again once x's clock is
/// within the skew of it: x must not stay stale, taking none of a's writes in, for as long as the
/// link stays up.
#[test]
fn a_resync_answer_dropped_for_skew_is_taken_once_the_clock_allows_it() {
    let (a, c, x) = (0, 1, 2);
    let mut w = World::skewed(&[("a", 0), ("c", 50_000), ("x", -30_000)]);
    w.link(a, c);
    w.link(a, x);
    w.bucket(a).write("k", Some(json("v")), Lifetime::Forever);
    w.bucket(a).write("j", Some(json("j")), Lifetime::Forever);
    w.pump();
    assert_eq!(shows(&w.bucket(x), "k"), Some(json("v").to_vec()));
    // x goes away and is forgotten; a deletes j, and a and c collect it.
    w.isolate(x);
    w.bucket(a).write("j", None, Lifetime::Forever);
    w.pump();
    assert!(w.collect_among(&[a, c]) > 0, "j's tombstone was collected");
    // c overwrites k, a takes it, and c is gone for good.
    let late = w.bucket(c).write("k", Some(json("c")), Lifetime::Forever);
    w.pump();
    assert_eq!(shows(&w.bucket(a), "k"), Some(json("c").to_vec()));
    w.isolate(c);
    // x comes back to a: it missed the collection and resyncs; a keeps writing.
    w.link(a, x);
    w.send(a, x);
    assert!(w.locals[x].is_stale(BUCKET), "x missed a collection");
    for round in 0..12 {
        w.bucket(a)
            .write(format!("n{round}"), Some(json("a")), Lifetime::Forever);
        w.pump();
    }
    assert!(
        !w.locals[x].is_stale(BUCKET),
        "x is still stale {} ms after c's write came within its skew ({} frames dropped for skew)",
        (w.locals[x].clock().wall_ms() + SKEW_MS).saturating_sub(late.hlc.physical_ms()),
        w.locals[x]
            .counters()
            .clock_skew_refused
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(shows(&w.bucket(x), "k"), Some(json("c").to_vec()));
    assert_eq!(shows(&w.bucket(x), "n0"), Some(json("a").to_vec()));
}

/// Collected registers follow a hello's contexts, and their timestamps are a third's: c (59 s ahead
/// of a) deletes k, and c collects the tombstone; a learns the record of it from c's next hello. x
/// (59 s behind a, within its skew) then links to a: the record, past x's ceiling, must not close
/// the link (only a peer's own wall clock refuses it), as a write stamped that far ahead leaves the
/// link up.
#[test]
fn a_collected_record_stamped_by_a_third_past_the_skew_does_not_refuse_the_link() {
    let (a, c, x) = (0, 1, 2);
    let mut w = World::skewed(&[("a", 0), ("c", 59_000), ("x", -59_000)]);
    w.link(a, c);
    w.bucket(a).write("k", Some(json("v")), Lifetime::Forever);
    w.pump();
    w.bucket(c).write("k", None, Lifetime::Forever);
    w.pump();
    assert!(w.collect_among(&[a, c]) > 0, "k's tombstone was collected");
    // c's link to a resets: a learns the record of k's tombstone from c's hello.
    w.link(a, c);
    w.send(c, a);
    assert_eq!(w.bucket(a).store().collected_records().len(), 1);
    w.link(a, x);
    for msg in w.frames(a, x, false) {
        if let Err(e) = w.try_deliver(a, x, msg) {
            panic!("x refused a, whose clock is within the skew: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// 4. Acknowledgement levels, on real nodes over loopback.

fn node_config(id: &str, seeds: Vec<String>) -> Config {
    Config {
        member_timeout: Duration::from_millis(1_500),
        ..config(id, seeds)
    }
}

/// A peer given a seed it has not reached yet is not a cluster of one: 'majority' needs a peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn majority_is_not_met_by_the_writer_alone_while_a_seed_is_unreached() {
    // A listener that never answers: the seed exists but is not reached.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let seed = silent.local_addr().unwrap().to_string();
    let a = Node::start(node_config("a", vec![seed])).await.unwrap();
    let bucket = a.bucket("s");
    let (_, registered) = a.write_acked(
        &bucket,
        "k".into(),
        Some(json("v")),
        Lifetime::Forever,
        AckLevel::Majority,
        Duration::from_secs(5),
    );
    a.close(Duration::from_secs(1)).await;
    assert!(
        matches!(registered, Registered::Pending(_)),
        "'majority' settled with no other replica holding the write: {registered:?}"
    );
}

/// An ack timeout too long for the deadline arithmetic (any `Duration`, up to `Duration::MAX`) waits
/// instead of overflowing the deadline: no panic, and no write that settles at once as timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_timeout_of_any_length_never_overflows_the_deadline() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = Node::start(node_config(
        "a",
        vec![silent.local_addr().unwrap().to_string()],
    ))
    .await
    .unwrap();
    let bucket = a.bucket("s");
    let (_, registered) = a.write_acked(
        &bucket,
        "k".into(),
        Some(json("v")),
        Lifetime::Forever,
        AckLevel::All,
        Duration::MAX,
    );
    a.close(Duration::from_secs(1)).await;
    assert!(
        matches!(registered, Registered::Pending(_)),
        "a write waiting for a seed never reached settled at once: {registered:?}"
    );
}

/// Members that were known and are forgotten after `memberTimeout` (they crashed: no leave) still
/// count toward 'majority', or the write waits: the writer alone is not a majority of three.
#[test]
fn majority_is_not_met_by_the_writer_alone_after_its_members_are_forgotten() {
    let rt = |threads| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .unwrap()
    };
    let (rt_a, rt_others) = (rt(1), rt(1));
    let a = rt_a
        .block_on(Node::start(node_config("a", vec![])))
        .unwrap();
    let seed = vec![a.address().to_string()];
    let _b = rt_others
        .block_on(Node::start(node_config("b", seed.clone())))
        .unwrap();
    let _c = rt_others
        .block_on(Node::start(node_config("c", seed)))
        .unwrap();
    let until = |what: &str, check: &dyn Fn() -> bool| {
        for _ in 0..400 {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("timed out waiting for {what}");
    };
    until("a linked to b and c", &|| {
        a.peers().iter().filter(|p| p.connected).count() == 2
    });
    // b and c crash: their runtime stops under them, no leave is sent.
    rt_others.shutdown_background();
    until("a forgets b and c", &|| a.peers().is_empty());
    let bucket = a.bucket("s");
    let (_, registered) = a.write_acked(
        &bucket,
        "k".into(),
        Some(json("v")),
        Lifetime::Forever,
        AckLevel::Majority,
        Duration::from_secs(5),
    );
    rt_a.block_on(a.close(Duration::from_secs(1)));
    assert!(
        matches!(registered, Registered::Pending(_)),
        "'majority' of a, b, c settled by a alone: {registered:?}"
    );
}

/// A replica that joins while a stale one returns: the missed collection is checked at the hello
/// only, so registers it pulls afterwards from the stale replica escape the check.
#[test]
fn a_joiner_never_takes_a_collected_write_from_a_stale_replica() {
    let (a, b, x, d, j) = (0, 1, 2, 3, 4);
    let mut w = World::new(&["a", "b", "x", "d", "j"]);
    for (p, q) in [(a, b), (a, x), (a, d), (b, x), (b, d), (x, d)] {
        w.link(p, q);
    }
    w.bucket(d).write("k", Some(json("v")), Lifetime::Forever);
    w.pump();
    // d's last write reaches x alone; then d is gone for good and x goes away (forgotten).
    w.unlink(a, d);
    w.unlink(b, d);
    w.bucket(d).write("k2", Some(json("w")), Lifetime::Forever);
    w.pump();
    w.isolate(d);
    w.isolate(x);
    // a deletes k; a and b collect the tombstone.
    w.bucket(a).write("k", None, Lifetime::Forever);
    w.pump();
    assert!(w.collect_among(&[a, b]) > 0, "k's tombstone was collected");
    // x returns while j joins: links to a and between them open at once. x learns from a's hello it
    // missed a collection and resyncs; j pulls d's writes from x, which holds the most of them.
    w.link(x, a);
    w.link(j, a);
    w.link(j, x);
    w.plan(j);
    for msg in w.frames(j, x, false) {
        w.deliver(j, x, msg);
    }
    for msg in w.frames(x, j, false) {
        w.deliver(x, j, msg);
    }
    w.pump();
    // Everyone heals.
    for (p, q) in [(b, x), (b, j)] {
        w.link(p, q);
    }
    w.pump();
    let seen: Vec<Option<Vec<u8>>> = [a, b, x, j]
        .iter()
        .map(|&i| shows(&w.bucket(i), "k"))
        .collect();
    assert!(
        seen.iter().all(|s| s.is_none()),
        "every replica covers a's delete, so none shows k (a, b, x, j): {seen:?}"
    );
}

/// 'all' waits for the peers connected at the write; a peer that crashes before holding it must not
/// turn the write into one settled by the writer alone.
#[test]
fn all_is_not_met_by_the_writer_alone_when_its_peer_crashes() {
    let rt = |threads| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .unwrap()
    };
    let (rt_a, rt_b) = (rt(1), rt(1));
    let a = rt_a
        .block_on(Node::start(node_config("a", vec![])))
        .unwrap();
    let seed = vec![a.address().to_string()];
    let _b = rt_b.block_on(Node::start(node_config("b", seed))).unwrap();
    for _ in 0..400 {
        if a.peers().iter().any(|p| p.connected) {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(a.peers().iter().any(|p| p.connected), "a linked to b");
    let mut outcomes = a.ack_outcomes();
    // b crashes (no leave); a still counts it connected when it writes.
    rt_b.shutdown_background();
    let bucket = a.bucket("s");
    let (_, registered) = a.write_acked(
        &bucket,
        "k".into(),
        Some(json("v")),
        Lifetime::Forever,
        AckLevel::All,
        Duration::from_secs(10),
    );
    let outcome = match registered {
        Registered::Met(acked) => Some((true, acked)),
        Registered::Pending(ticket) => rt_a.block_on(async {
            let got = tokio::time::timeout(Duration::from_secs(5), outcomes.recv()).await;
            got.ok().flatten().map(|o| {
                assert_eq!(o.ticket, ticket);
                (o.end == peer_buckets_engine::AckEnd::Met, o.acked)
            })
        }),
    };
    rt_a.block_on(a.close(Duration::from_secs(1)));
    if let Some((met, acked)) = outcome {
        assert!(
            !met || !acked.is_empty(),
            "'all' settled with no other replica holding the write"
        );
    }
}
