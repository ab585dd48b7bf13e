//! Unit and property tests of the store: the last-writer-wins apply, expiry, markers, collection and
//! collected keys, each named for the behaviour it proves.

use super::*;
use crate::replication::clock::{Clock, Hlc};
use crate::replication::clock::{ManualClock, PhysicalClock};
use crate::replication::ranges::{Seq, SeqRanges};
use crate::replication::replica::Origin;
use crate::replication::replica::{ReplicaId, ReplicaTable};
use proptest::prelude::*;
use std::sync::Arc;

fn origin(t: &ReplicaTable, name: &str) -> Origin {
    t.intern(&ReplicaId {
        node: name.into(),
        incarnation: 1,
    })
}

/// The ranges of `r` as raw pairs.
fn pairs(r: &SeqRanges) -> Vec<(u64, u64)> {
    r.ranges().map(|(a, b)| (a.get(), b.get())).collect()
}

fn w(key: &str, hlc: u64, seq: u64, value: Option<&str>) -> Write {
    Write {
        key: key.into(),
        hlc: Hlc(hlc),
        seq: Seq::from(seq),
        op: match value {
            Some(v) => Op::Set {
                value: v.as_bytes().into(),
                expires: Expiry::NEVER,
            },
            None => Op::Delete,
        },
    }
}

/// Makes the set or touch `w` expire at `ms`.
fn set_expiry(w: &mut Write, ms: u64) {
    match &mut w.op {
        Op::Set { expires, .. } | Op::Touch { expires } => *expires = Expiry::at_ms(ms),
        Op::Delete => panic!("a delete has no expiry"),
    }
}

fn get(s: &MemoryStore, key: &str) -> Option<String> {
    let mut out = None;
    s.read(key, &|| 0, &mut |v| {
        out = Some(String::from_utf8(v.to_vec()).unwrap())
    });
    out
}

#[test]
fn larger_hlc_wins_and_ties_go_to_the_larger_origin() {
    let t = ReplicaTable::new();
    let (a, b) = (origin(&t, "a"), origin(&t, "b"));
    let s = MemoryStore::new();
    s.merge(
        &origin(&t, "me"),
        &a,
        vec![w("k", 10, 1, Some("a1"))],
        &SeqRanges::new(),
        &mut |_| {},
    );
    s.merge(
        &origin(&t, "me"),
        &b,
        vec![w("k", 9, 1, Some("b1"))],
        &SeqRanges::new(),
        &mut |_| {},
    );
    assert_eq!(get(&s, "k").as_deref(), Some("a1"));
    s.merge(
        &origin(&t, "me"),
        &b,
        vec![w("k", 10, 2, Some("b2"))],
        &SeqRanges::new(),
        &mut |_| {},
    );
    assert_eq!(get(&s, "k").as_deref(), Some("b2"));
}

#[test]
fn a_delete_is_a_write_that_hides_the_key() {
    let t = ReplicaTable::new();
    let a = origin(&t, "a");
    let s = MemoryStore::new();
    s.merge(
        &origin(&t, "me"),
        &a,
        vec![w("k", 1, 1, Some("v")), w("k", 2, 2, None)],
        &SeqRanges::new(),
        &mut |_| {},
    );
    assert_eq!(get(&s, "k"), None);
    assert_eq!(s.live_len(), 0);
    assert_eq!(s.entry_count(), 1);
}

#[test]
fn superseded_writes_leave_the_index_but_stay_in_the_context() {
    let t = ReplicaTable::new();
    let a = origin(&t, "a");
    let clock = Clock::new(Box::new(ManualClock::new(1_000)));
    let s = MemoryStore::new();
    for i in 0..5 {
        s.write_local(
            &a,
            &clock,
            "k",
            Some(format!("v{i}").into_bytes().into()),
            Lifetime::Forever,
            &mut |_| {},
        );
    }
    let c = s.chunk(&a, Seq::from(1), Seq::from(5), ChunkLimits::writes(100));
    assert_eq!(c.writes.len(), 1);
    assert_eq!(c.writes[0].seq, Seq::from(5));
    assert_eq!(pairs(&c.covered), &[(1, 5)]);
    assert!(
        c.superseders.is_empty(),
        "the superseder is in the chunk itself"
    );
}

#[test]
fn a_chunk_covering_a_superseded_write_carries_its_superseder() {
    let t = ReplicaTable::new();
    let (a, b) = (origin(&t, "a"), origin(&t, "b"));
    let s = MemoryStore::new();
    s.merge(
        &origin(&t, "me"),
        &a,
        vec![w("k", 1, 1, Some("old")), w("j", 2, 2, Some("x"))],
        &SeqRanges::new(),
        &mut |_| {},
    );
    s.merge(
        &origin(&t, "me"),
        &b,
        vec![w("k", 5, 1, Some("new"))],
        &SeqRanges::new(),
        &mut |_| {},
    );
    let c = s.chunk(&a, Seq::from(1), Seq::from(2), ChunkLimits::writes(100));
    assert_eq!(c.writes.len(), 1);
    assert_eq!(pairs(&c.covered), &[(1, 2)]);
    assert_eq!(c.superseders.len(), 1);
    assert_eq!(
        (c.superseders[0].0.clone(), c.superseders[0].1.seq),
        (b.clone(), Seq::from(1))
    );
    // Once every member holds b:1, the marker goes and chunks stop carrying it.
    assert_eq!(
        s.compact_markers(&mut |o, seq| *o == b && seq == Seq::from(1)),
        1
    );
    assert!(s
        .chunk(&a, Seq::from(1), Seq::from(2), ChunkLimits::writes(100))
        .superseders
        .is_empty());
}

#[test]
fn chunk_limit_cuts_coverage_at_the_last_write_sent() {
    let t = ReplicaTable::new();
    let a = origin(&t, "a");
    let clock = Clock::new(Box::new(ManualClock::new(1_000)));
    let s = MemoryStore::new();
    for i in 0..10 {
        s.write_local(
            &a,
            &clock,
            &format!("k{i}"),
            Some(b"x".to_vec().into()),
            Lifetime::Forever,
            &mut |_| {},
        );
    }
    let c = s.chunk(&a, Seq::from(1), Seq::from(10), ChunkLimits::writes(4));
    assert_eq!(c.writes.len(), 4);
    assert_eq!(pairs(&c.covered), &[(1, 4)]);
}

#[test]
fn chunk_bytes_limit_keeps_frames_small_but_always_moves() {
    let t = ReplicaTable::new();
    let a = origin(&t, "a");
    let clock = Clock::new(Box::new(ManualClock::new(1_000)));
    let s = MemoryStore::new();
    for i in 0..10 {
        let big = vec![b'x'; 100_000].into_boxed_slice();
        s.write_local(
            &a,
            &clock,
            &format!("k{i}"),
            Some(big),
            Lifetime::Forever,
            &mut |_| {},
        );
    }
    let limits = ChunkLimits {
        max_writes: 1024,
        max_bytes: 250_000,
    };
    let c = s.chunk(&a, Seq::from(1), Seq::from(10), limits);
    assert_eq!(c.writes.len(), 2);
    assert_eq!(pairs(&c.covered), &[(1, 2)]);
    let tiny = ChunkLimits {
        max_writes: 1024,
        max_bytes: 1,
    };
    assert_eq!(
        s.chunk(&a, Seq::from(3), Seq::from(10), tiny).writes.len(),
        1,
        "one write even when it alone is over"
    );
}

#[test]
fn a_touch_extends_a_live_key_but_never_revives_or_reverts() {
    let t = ReplicaTable::new();
    let (a, b) = (origin(&t, "a"), origin(&t, "b"));
    let source = Arc::new(ManualClock::new(10_000));
    let clock = Clock::new(Box::new(source.clone()));
    let s = MemoryStore::new();
    let set = s.write_local(
        &a,
        &clock,
        "k",
        Some(b"v".to_vec().into()),
        Lifetime::Ttl(100),
        &mut |_| {},
    );
    assert_eq!(set.expires(), Expiry::at_ms(10_100));
    let touch = s
        .touch_local(&a, &clock, "k".into(), 1_000)
        .expect("live key");
    assert!(touch.is_touch() && touch.expires() == Expiry::at_ms(11_000));
    assert!(
        s.read("k", &|| 10_500, &mut |_| {}),
        "the touch extended it"
    );
    assert!(s.touch_local(&a, &clock, "missing".into(), 1_000).is_none());
    // A newer set from elsewhere replaces the expiry along with the value.
    let mut newer = w("k", Hlc::from_parts(20_000, 0).0, 1, Some("n"));
    set_expiry(&mut newer, 20_050);
    s.merge(
        &origin(&t, "me"),
        &b,
        vec![newer],
        &SeqRanges::new(),
        &mut |_| {},
    );
    assert!(s.read("k", &|| 20_000, &mut |_| {}));
    assert!(!s.read("k", &|| 20_050, &mut |_| {}));
    // A touch older than a delete leaves the key deleted.
    s.merge(
        &origin(&t, "me"),
        &b,
        vec![w("k", Hlc::from_parts(30_000, 0).0, 2, None)],
        &SeqRanges::new(),
        &mut |_| {},
    );
    let mut old_touch = w("k", Hlc::from_parts(25_000, 0).0, 3, None);
    old_touch.op = Op::Touch {
        expires: Expiry::at_ms(99_999),
    };
    s.merge(
        &origin(&t, "me"),
        &b,
        vec![old_touch],
        &SeqRanges::new(),
        &mut |_| {},
    );
    assert!(!s.read("k", &|| 30_000, &mut |_| {}));
    assert_eq!(s.live_len(), 0);
}

#[test]
fn expiry_is_swept_reported_once_and_collected_like_a_tombstone() {
    let t = ReplicaTable::new();
    let a = origin(&t, "a");
    let source = Arc::new(ManualClock::new(10_000));
    let clock = Clock::new(Box::new(source.clone()));
    let s = MemoryStore::new();
    for i in 0..10 {
        s.write_local(
            &a,
            &clock,
            &format!("k{i}"),
            Some(b"v".to_vec().into()),
            Lifetime::Ttl(50 + i),
            &mut |_| {},
        );
    }
    s.write_local(
        &a,
        &clock,
        "forever",
        Some(b"v".to_vec().into()),
        Lifetime::Forever,
        &mut |_| {},
    );
    assert_eq!(s.live_len(), 11);
    let mut expired = Vec::new();
    // Expiries 10_050..=10_059: those up to and including 10_055 are due.
    s.expire(10_055, &mut |k| expired.push(k.to_string()));
    assert_eq!(expired.len(), 6);
    assert_eq!(s.live_len(), 5);
    s.expire(10_055, &mut |k| expired.push(k.to_string()));
    assert_eq!(expired.len(), 6, "reported once");
    s.expire(20_000, &mut |k| expired.push(k.to_string()));
    assert_eq!(
        (expired.len(), s.live_len(), s.tombstone_count()),
        (10, 1, 10)
    );
    assert_eq!(s.collect(15_000, &mut |_, _| true), 10);
    assert_eq!((s.entry_count(), s.tombstone_count()), (1, 0));
}

/// Two servers write a key with the same expiry in the same millisecond, again and again (a rolling
/// session): whichever write wins here, the key waits for one expiry, so the queue holds one item
/// for it, not one per write.
#[test]
fn a_write_that_loses_leaves_no_second_expiry_entry() {
    let t = ReplicaTable::new();
    let (me, a, b) = (origin(&t, "me"), origin(&t, "a"), origin(&t, "b"));
    let s = MemoryStore::new();
    let none = SeqRanges::new();
    for seq in 1..=50 {
        for o in [&b, &a] {
            let mut write = w("k", 7, seq, Some("v"));
            write.hlc = Hlc(seq);
            set_expiry(&mut write, 10_000);
            s.merge(&me, o, vec![write], &none, &mut |_| {});
        }
    }
    assert_eq!(s.state.read().expiries.len(), 1);
    let mut expired = 0;
    s.expire(10_000, &mut |_| expired += 1);
    assert_eq!((expired, s.live_len(), s.tombstone_count()), (1, 0, 1));
}

#[test]
fn expired_values_are_invisible() {
    let t = ReplicaTable::new();
    let a = origin(&t, "a");
    let s = MemoryStore::new();
    let mut write = w("k", 1, 1, Some("v"));
    set_expiry(&mut write, 100);
    s.merge(
        &origin(&t, "me"),
        &a,
        vec![write],
        &SeqRanges::new(),
        &mut |_| {},
    );
    let mut seen = false;
    assert!(s.read("k", &|| 99, &mut |_| seen = true));
    assert!(!s.read("k", &|| 100, &mut |_| {}));
    assert!(seen);
}

/// The registers of `key` as (origin, hlc, value).
fn regs(s: &MemoryStore, key: &str) -> Vec<(String, u64, Option<String>)> {
    s.registers(key)
        .into_iter()
        .map(|(o, w)| {
            let v = w.value().map(|v| String::from_utf8(v.to_vec()).unwrap());
            (o.id().node.to_string(), w.hlc.0, v)
        })
        .collect()
}

#[test]
fn an_own_write_overwritten_before_any_chunk_covered_it_leaves_no_marker() {
    let t = ReplicaTable::new();
    let me = origin(&t, "me");
    let clock = Clock::new(Box::new(Arc::new(ManualClock::new(1_000))));
    let s = MemoryStore::new();
    let set = |v: &str| {
        let value = Some(v.as_bytes().to_vec().into_boxed_slice());
        s.write_local(&me, &clock, "k", value, Lifetime::Forever, &mut |_| {})
    };
    for i in 0..100 {
        set(&i.to_string());
    }
    assert_eq!(s.marker_count(), 0, "none of them ever left this replica");
    let chunk = s.chunk(&me, Seq::from(1), Seq::from(100), ChunkLimits::UNLIMITED);
    assert_eq!((chunk.writes.len(), chunk.covered.count()), (1, 100));
    set("shipped over");
    assert_eq!(
        s.marker_count(),
        1,
        "seq 100 was covered by a chunk: it may be elsewhere"
    );
    set("again");
    assert_eq!(s.marker_count(), 1, "seq 101 never left");
    assert_eq!(get(&s, "k").as_deref(), Some("again"));
}

/// Issue 12, behaviour 3 (own writes): a write of this replica that left only as the superseder
/// in a chunk of another origin may be held elsewhere; overwritten later, it keeps a marker, so a
/// chunk of this replica's own writes covering it carries what superseded it.
#[test]
fn an_own_write_shipped_as_a_superseder_is_covered_only_with_what_superseded_it() {
    let t = ReplicaTable::new();
    let (me, a) = (origin(&t, "me"), origin(&t, "a"));
    let clock = Clock::new(Box::new(Arc::new(ManualClock::new(1_000))));
    let s = MemoryStore::new();
    let none = SeqRanges::new();
    s.merge(&me, &a, vec![w("k", 10, 1, Some("a"))], &none, &mut |_| {});
    let set = |v: &str| {
        let value = Some(v.as_bytes().to_vec().into_boxed_slice());
        s.write_local(&me, &clock, "k", value, Lifetime::Forever, &mut |_| {})
    };
    set("mine");
    let relayed = s.chunk(&a, Seq::from(1), Seq::from(1), ChunkLimits::UNLIMITED);
    assert_eq!(relayed.superseders.len(), 1, "a's write travels with mine");
    set("again");
    let own = s.chunk(&me, Seq::from(1), Seq::from(1), ChunkLimits::UNLIMITED);
    assert_eq!(own.covered, SeqRanges::up_to(Seq::from(1)));
    let carried: Vec<Seq> = own.superseders.iter().map(|(_, w)| w.seq).collect();
    assert_eq!(
        carried,
        vec![Seq::from(2)],
        "seq 1 is claimed only with seq 2, which beat it"
    );
}

/// A collection larger than one slice (`COLLECT_SLICE` dead entries per hold of the lock) drops
/// exactly the tombstones every member holds, whichever slice they fall in; those it keeps stay
/// queued, and a later collection drops them once every member holds them.
#[test]
fn a_collection_in_slices_drops_exactly_what_every_member_holds_and_keeps_the_rest_queued() {
    let t = ReplicaTable::new();
    let a = origin(&t, "a");
    let clock = Clock::new(Box::new(ManualClock::new(10_000)));
    let s = MemoryStore::new();
    let n = 2 * memory::COLLECT_SLICE + 100;
    let mut deletes = Vec::new();
    for i in 0..n {
        let key = format!("k{i}");
        s.write_local(
            &a,
            &clock,
            &key,
            Some(b"v".to_vec().into()),
            Lifetime::Forever,
            &mut |_| {},
        );
        deletes.push(
            s.write_local(&a, &clock, &key, None, Lifetime::Forever, &mut |_| {})
                .seq,
        );
    }
    assert_eq!(s.tombstone_count(), n);
    // Every third delete is not yet held everywhere; they are spread over every slice.
    let held = |seq: Seq| !seq.get().is_multiple_of(3);
    let expected = deletes.iter().filter(|&&seq| held(seq)).count();
    let mut asked = 0;
    let dropped = s.collect(20_000, &mut |_, seq| {
        asked += 1;
        held(seq)
    });
    assert_eq!(dropped, expected);
    assert_eq!(asked, n, "each tombstone is looked at once");
    assert_eq!(s.tombstone_count(), n - expected);
    assert_eq!(
        s.collect(20_000, &mut |_, _| true),
        n - expected,
        "kept ones stay queued"
    );
    assert_eq!((s.tombstone_count(), s.entry_count()), (0, 0));
}

#[test]
fn a_write_older_than_a_collected_tombstone_meets_a_stand_in() {
    let t = ReplicaTable::new();
    let (me, a, b, c) = (
        origin(&t, "me"),
        origin(&t, "a"),
        origin(&t, "b"),
        origin(&t, "c"),
    );
    let s = MemoryStore::new();
    let none = SeqRanges::new();
    s.merge(&me, &a, vec![w("k", 10, 1, Some("v1"))], &none, &mut |_| {});
    s.merge(&me, &b, vec![w("k", 20, 1, None)], &none, &mut |_| {});
    s.merge(
        &me,
        &a,
        vec![w("live", 5, 2, Some("l"))],
        &none,
        &mut |_| {},
    );
    assert_eq!(s.collect(1_000, &mut |_, _| true), 1);
    assert_eq!((s.entry_count(), s.collected_remembered()), (1, 1));

    // c was away: its write of k, older than the collected tombstone, comes back.
    let mut changes = 0;
    let merged = s.merge(
        &me,
        &c,
        vec![w("k", 15, 1, Some("old"))],
        &none,
        &mut |_| changes += 1,
    );
    assert_eq!(
        merged,
        Merged {
            fresh: 1,
            stand_ins: 1
        }
    );
    assert_eq!(changes, 0, "listeners never see the old value");
    assert_eq!(get(&s, "k"), None);
    assert_eq!(
        regs(&s, "k"),
        vec![("me".into(), 19, None)],
        "a tombstone at our highest place at or below the collected one (b's at 20; me > b)"
    );
    assert!(
        s.context_of(&me).contains(Seq::from(1)),
        "the stand-in is a write of this replica"
    );
    assert!(
        s.context_of(&c).contains(Seq::from(1)),
        "the old write's dot is held"
    );

    // Newer writes are untouched: one newer than the collected tombstone wins as usual, and an old
    // write to a key that still holds an older register is plain last-writer-wins.
    let merged = s.merge(
        &me,
        &c,
        vec![w("k", 30, 2, Some("new")), w("live", 7, 3, Some("l2"))],
        &none,
        &mut |_| {},
    );
    assert_eq!(
        merged,
        Merged {
            fresh: 2,
            stand_ins: 0
        }
    );
    assert_eq!(get(&s, "k").as_deref(), Some("new"));
    assert_eq!(get(&s, "live").as_deref(), Some("l2"));
    // An old write that loses anyway needs nothing either.
    let merged = s.merge(
        &me,
        &c,
        vec![w("k", 12, 3, Some("older"))],
        &none,
        &mut |_| {},
    );
    assert_eq!(merged.stand_ins, 0);
    assert_eq!(get(&s, "k").as_deref(), Some("new"));
}

/// A tombstone and a set stamped alike (the same millisecond on two servers), the tombstone winning
/// by its origin: once the tombstone is collected, the set coming back from a replica that was away
/// must not revive the key. Checked with this replica's id ranked above, between and below theirs.
#[test]
fn a_collected_tombstone_that_beat_a_set_by_origin_alone_is_not_revived() {
    for me_name in ["m", "aa", "0"] {
        let t = ReplicaTable::new();
        let (me, a, b) = (origin(&t, me_name), origin(&t, "a"), origin(&t, "b"));
        let s = MemoryStore::new();
        let none = SeqRanges::new();
        s.merge(&me, &b, vec![w("k", 20, 1, None)], &none, &mut |_| {});
        assert_eq!(s.collect(1_000, &mut |_, _| true), 1);
        let mut shown = 0;
        let merged = s.merge(
            &me,
            &a,
            vec![w("k", 20, 1, Some("old"))],
            &none,
            &mut |_| shown += 1,
        );
        assert_eq!(merged.stand_ins, 1, "me = {me_name}");
        assert_eq!(get(&s, "k"), None, "me = {me_name}: the key came back");
        assert_eq!(shown, 0, "me = {me_name}: a listener heard of it");
    }
}

/// The mirror case, and a stand-in's own rank: a write newer than the collected register by the
/// whole order `(hlc, origin)` (the same timestamp, a larger origin) wins, whether it arrives
/// before or after the stand-in written for an older write, and whichever way this replica's id
/// ranks against theirs.
#[test]
fn a_stand_in_never_beats_a_write_newer_by_the_whole_order() {
    for me_name in ["m", "bb", "0"] {
        let t = ReplicaTable::new();
        let (me, a, b, c) = (
            origin(&t, me_name),
            origin(&t, "a"),
            origin(&t, "b"),
            origin(&t, "c"),
        );
        let s = MemoryStore::new();
        let none = SeqRanges::new();
        s.merge(&me, &b, vec![w("k", 20, 1, None)], &none, &mut |_| {});
        assert_eq!(s.collect(1_000, &mut |_, _| true), 1);
        // An older write comes back: it meets a stand-in.
        let merged = s.merge(
            &me,
            &a,
            vec![w("k", 15, 1, Some("old"))],
            &none,
            &mut |_| {},
        );
        assert_eq!(merged.stand_ins, 1, "me = {me_name}");
        let stand_in = registers_of(&s, &me).expect("the stand-in is this replica's write");
        // A write stamped like the collected tombstone, by a larger origin, is newer: it wins.
        let merged = s.merge(
            &me,
            &c,
            vec![w("k", 20, 1, Some("new"))],
            &none,
            &mut |_| {},
        );
        assert_eq!(merged.stand_ins, 0, "me = {me_name}");
        assert_eq!(get(&s, "k").as_deref(), Some("new"), "me = {me_name}");

        // On a replica that held the newer write first, the stand-in that travels loses to it.
        let other = MemoryStore::new();
        let you = origin(&t, "you");
        other.merge(
            &you,
            &c,
            vec![w("k", 20, 1, Some("new"))],
            &none,
            &mut |_| {},
        );
        other.merge(
            &you,
            &me,
            vec![w("k", stand_in, 1, None)],
            &none,
            &mut |_| {},
        );
        assert_eq!(get(&other, "k").as_deref(), Some("new"), "me = {me_name}");
    }
}

/// The hlc of the stored value register of `origin` (the first found).
fn registers_of(s: &MemoryStore, origin: &Origin) -> Option<u64> {
    let state = s.state.read();
    let mut found = state
        .origins
        .get(origin)?
        .index
        .range(Seq::FIRST, Seq::MAX)
        .filter_map(|(seq, hash)| state.entries.by_dot(hash, origin, seq))
        .map(|(_, e)| e.hlc.0);
    found.next()
}

/// Past `rememberCollected` only the newest forgotten time guards keys with no live register: the
/// first old write to such a key meets a stand-in, and so must a second, newer than that stand-in
/// but still older than the forgotten time.
#[test]
fn past_remember_collected_a_second_old_write_to_the_same_key_stays_guarded() {
    let t = ReplicaTable::new();
    let (me, a, c) = (origin(&t, "me"), origin(&t, "a"), origin(&t, "c"));
    let s = MemoryStore::new();
    let none = SeqRanges::new();
    s.merge(&me, &a, vec![w("k", 20, 1, None)], &none, &mut |_| {});
    assert_eq!(s.collect(1_000, &mut |_, _| true), 1);
    s.forget_collected(1_001);
    assert_eq!(s.collected_remembered(), 0);
    let first = s.merge(
        &me,
        &c,
        vec![w("k", 10, 1, Some("old"))],
        &none,
        &mut |_| {},
    );
    assert_eq!(first.stand_ins, 1);
    let second = s.merge(
        &me,
        &c,
        vec![w("k", 15, 2, Some("older"))],
        &none,
        &mut |_| {},
    );
    assert_eq!(second.stand_ins, 1);
    assert_eq!(get(&s, "k"), None, "the second old write revived the key");
}

/// A replica that learns another's collected registers (they follow every hello) answers a
/// write one of them beat as the collector would, and a value it already held that one beats
/// gets a stand-in at once; a write newer than the register is untouched, and the record is
/// journaled for the disk.
#[test]
fn collected_registers_learned_from_a_peer_answer_what_they_beat() {
    let t = ReplicaTable::new();
    let (me, a, c) = (origin(&t, "me"), origin(&t, "a"), origin(&t, "c"));
    let none = SeqRanges::new();
    let collector = MemoryStore::new();
    collector.merge(&me, &a, vec![w("k", 20, 1, None)], &none, &mut |_| {});
    collector.merge(&me, &a, vec![w("j", 20, 2, None)], &none, &mut |_| {});
    assert_eq!(collector.collect(1_000, &mut |_, _| true), 2);
    let learner = MemoryStore::journaled();
    learner.merge(
        &me,
        &c,
        vec![w("j", 10, 1, Some("old"))],
        &none,
        &mut |_| {},
    );
    learner.merge(
        &me,
        &c,
        vec![w("n", 10, 2, Some("other"))],
        &none,
        &mut |_| {},
    );
    learner.drain_changes();
    let mut heard = Vec::new();
    let stand_ins = learner.learn_collected(&me, collector.collected_records(), &mut |s| {
        heard.push((s.key.to_string(), s.value.is_some()))
    });
    assert_eq!(
        stand_ins, 1,
        "the value of j it held lost to the collected tombstone"
    );
    assert_eq!(heard, vec![("j".to_string(), false)]);
    assert_eq!(get(&learner, "j"), None);
    assert_eq!(get(&learner, "n").as_deref(), Some("other"));
    let changes = learner.drain_changes().expect("journaled");
    assert_eq!(changes.collected.len(), 2, "both records are persisted");
    let old = learner.merge(
        &me,
        &c,
        vec![w("k", 15, 3, Some("older"))],
        &none,
        &mut |_| {},
    );
    assert_eq!(old.stand_ins, 1, "an older write of k meets a stand-in");
    assert_eq!(get(&learner, "k"), None, "the collected delete was revived");
    let newer = learner.merge(
        &me,
        &c,
        vec![w("k", 25, 4, Some("newer"))],
        &none,
        &mut |_| {},
    );
    assert_eq!(newer.stand_ins, 0);
    assert_eq!(get(&learner, "k").as_deref(), Some("newer"));
}

#[test]
fn forgotten_collected_registers_still_guard_keys_without_a_register() {
    let t = ReplicaTable::new();
    let (me, a, c) = (origin(&t, "me"), origin(&t, "a"), origin(&t, "c"));
    let s = MemoryStore::journaled();
    let none = SeqRanges::new();
    s.merge(&me, &a, vec![w("k", 20, 1, None)], &none, &mut |_| {});
    s.merge(
        &me,
        &a,
        vec![w("kept", 5, 2, Some("x"))],
        &none,
        &mut |_| {},
    );
    assert_eq!(s.collect(1_000, &mut |_, _| true), 1);
    let first = s.drain_changes().expect("journaled");
    assert_eq!(
        first.collected,
        vec![(
            key_fingerprint("k"),
            Some(CollectedRecord {
                fingerprint: key_fingerprint("k"),
                hlc: Hlc(20),
                origin: Some(a.clone()),
                at_ms: 1_000
            })
        )]
    );
    s.forget_collected(1_000);
    assert_eq!(
        s.collected_remembered(),
        1,
        "stamped at 1 000: not before it"
    );
    s.forget_collected(1_001);
    assert_eq!(s.collected_remembered(), 0);
    let forgotten = s.drain_changes().expect("journaled");
    assert_eq!(forgotten.collected, vec![(key_fingerprint("k"), None)]);
    assert_eq!(forgotten.collected_beyond, Some(Hlc(20)));

    // Restored from what was persisted, the store answers the same way.
    let restored = MemoryStore::restore(
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Hlc(20),
        false,
    );
    for s in [&s, &restored] {
        // Without a record, any key with no register is guarded up to the forgotten time...
        let merged = s.merge(
            &me,
            &c,
            vec![w("other", 15, 1, Some("old"))],
            &none,
            &mut |_| {},
        );
        assert_eq!(merged.stand_ins, 1);
        assert_eq!(
            regs(s, "other"),
            vec![("me".into(), 15, None)],
            "just above the old write (c's at 15; me > c)"
        );
        // ... a key holding an older register is not, and a newer write never is.
        s.merge(
            &me,
            &c,
            vec![w("kept", 10, 2, Some("y")), w("k", 25, 3, Some("z"))],
            &none,
            &mut |_| {},
        );
    }
    assert_eq!(get(&s, "kept").as_deref(), Some("y"));
    assert_eq!(get(&s, "k").as_deref(), Some("z"));
    assert_eq!(get(&restored, "k").as_deref(), Some("z"));
}

/// A store's registers and contexts, for equality checks.
type Dump = (
    Vec<(String, Option<Vec<u8>>, u64)>,
    Vec<(String, SeqRanges)>,
);

fn dump(s: &MemoryStore) -> Dump {
    let state = s.state.read();
    let mut entries: Vec<_> = state
        .entries
        .iter()
        .map(|(k, e)| (k.to_string(), e.value.as_ref().map(|v| v.to_vec()), e.hlc.0))
        .collect();
    entries.sort();
    let mut ctx: Vec<_> = state
        .origins
        .iter()
        .filter(|(_, o)| !o.context.is_empty())
        .map(|(o, st)| (o.id().to_string(), st.context.clone()))
        .collect();
    ctx.sort_by(|a, b| a.0.cmp(&b.0));
    (entries, ctx)
}

/// Generated history: writes by three origins to a handful of keys, with unique dots.
fn history() -> impl Strategy<Value = Vec<(usize, Write)>> {
    proptest::collection::vec(
        (
            0usize..3,
            0usize..4,
            0u64..20,
            proptest::option::of("[a-c]{1,2}"),
        ),
        1..40,
    )
    .prop_map(|raw| {
        // Like a real origin: seqs count up and each write's hlc is above the last one's.
        // Different origins may still tie on hlc, which exercises the origin tie-break.
        let mut seqs = [0u64; 3];
        let mut clocks = [0u64; 3];
        raw.into_iter()
            .map(|(o, k, step, v)| {
                seqs[o] += 1;
                clocks[o] += 1 + step % 4;
                (o, w(&format!("k{k}"), clocks[o], seqs[o], v.as_deref()))
            })
            .collect()
    })
}

fn apply_all(t: &ReplicaTable, ops: &[(usize, Write)]) -> MemoryStore {
    let s = MemoryStore::new();
    let me = origin(t, "me");
    for (o, write) in ops {
        let origin = origin(t, ["a", "b", "c"][*o]);
        s.merge(
            &me,
            &origin,
            vec![write.clone()],
            &SeqRanges::new(),
            &mut |_| {},
        );
    }
    s
}

proptest! {
    #[test]
    fn collected_key_guards_converge_and_keep_the_whole_order(
        writes in proptest::collection::vec((0usize..2, 0usize..3, 1u64..8, any::<bool>()), 1..12),
        away in proptest::collection::vec((0usize..3, 0u64..4), 1..8),
        names in (0usize..4, 0usize..4, 0usize..3),
        seed in any::<u64>(),
    ) {
        guards_run(writes, away, names, seed)?;
    }

    #[test]
    fn merge_order_and_duplicates_do_not_matter(h in history(), seed in any::<u64>()) {
        let t = ReplicaTable::new();
        let reference = apply_all(&t, &h);
        // Another replica receives the same writes shuffled, with some delivered twice.
        let mut shuffled = h.clone();
        let mut rng = seed;
        for i in (1..shuffled.len()).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (rng >> 33) as usize % (i + 1));
        }
        let dups: Vec<_> = shuffled.iter().step_by(3).cloned().collect();
        shuffled.extend(dups);
        let other = apply_all(&t, &shuffled);
        prop_assert_eq!(dump(&reference), dump(&other));
        // What is stored, touch registers and expiries too, has one fingerprint in any order.
        prop_assert_eq!(reference.stored_print(), other.stored_print());
    }

    #[test]
    fn merging_replicas_is_commutative_associative_and_idempotent(
        x in history(), y in history(), z in history()
    ) {
        let t = ReplicaTable::new();
        // Three replicas that saw different writes. Their dots are kept apart by a seq offset and
        // their hlcs interleaved, so one origin never stamps two writes alike.
        let shift = |h: Vec<(usize, Write)>, part: u64| -> Vec<(usize, Write)> {
            h.into_iter().map(|(o, mut w)| {
                w.seq = Seq::from(w.seq.get() + part * 1000);
                w.hlc = Hlc(w.hlc.0 * 3 + part);
                (o, w)
            }).collect()
        };
        let (x, y, z) = (shift(x, 0), shift(y, 1), shift(z, 2));
        let replica = |parts: &[&Vec<(usize, Write)>]| {
            let all: Vec<_> = parts.iter().flat_map(|p| p.iter().cloned()).collect();
            apply_all(&t, &all)
        };
        let merged = |a: &MemoryStore, b: &MemoryStore| {
            let out = MemoryStore::new();
            absorb(&out, a);
            absorb(&out, b);
            out
        };
        let (a, b, c) = (replica(&[&x]), replica(&[&y]), replica(&[&z]));
        prop_assert_eq!(dump(&merged(&a, &b)), dump(&merged(&b, &a)));
        prop_assert_eq!(dump(&merged(&merged(&a, &b), &c)), dump(&merged(&a, &merged(&b, &c))));
        prop_assert_eq!(dump(&merged(&a, &a)), dump(&a));
        // Merging state gives what applying every write would have given.
        prop_assert_eq!(dump(&merged(&merged(&a, &b), &c)), dump(&replica(&[&x, &y, &z])));
    }
}

/// Two replicas that collected every register of members `a` and `b` receive, in different orders,
/// the writes of `c`, a replica that was away (its id ranked below, between or above theirs), stamped mostly like theirs (equal timestamps across
/// origins), then exchange what they wrote meanwhile (stand-ins). Whatever the ranks of the ids:
/// they converge; a key whose collected tombstone beats every write of `c` stays deleted; and a
/// key's newest write wins when it is newer than the collected register by more than the one tick
/// a stand-in may have to take above an old write (see `CollectedKeys`).
fn guards_run(
    writes: Vec<(usize, usize, u64, bool)>,
    away: Vec<(usize, u64)>,
    names: (usize, usize, usize),
    seed: u64,
) -> Result<(), TestCaseError> {
    let ids = ["0", "ab", "bb", "z"];
    let t = ReplicaTable::new();
    let (a, b) = (origin(&t, "a"), origin(&t, "b"));
    let c = origin(&t, ["00", "aa", "c"][names.2]);
    let (m1, m2) = (
        origin(&t, ids[names.0]),
        origin(&t, ids[(names.0 + 1 + names.1 % 3) % 4]),
    );
    let none = SeqRanges::new();
    let (r1, r2) = (MemoryStore::new(), MemoryStore::new());
    // The members' writes: an origin never stamps two alike (its clock ticks); two origins often do.
    let mut all: Vec<(Origin, Write)> = Vec::new();
    let mut seqs = [0u64; 2];
    for (o, k, hlc, value) in writes {
        seqs[o] += 1;
        let origin = [&a, &b][o].clone();
        if all.iter().any(|(x, w)| *x == origin && w.hlc.0 == hlc) {
            continue;
        }
        let v = value.then_some("v");
        all.push((origin, w(&format!("k{k}"), hlc, seqs[o], v)));
    }
    for (o, write) in &all {
        for r in [&r1, &r2] {
            let me = if std::ptr::eq(r, &r1) { &m1 } else { &m2 };
            r.merge(me, o, vec![write.clone()], &none, &mut |_| {});
        }
    }
    r1.collect(1_000, &mut |_, _| true);
    r2.collect(1_000, &mut |_, _| true);
    // c's writes, alternately values and deletes, with rising hlcs.
    let mut mine: Vec<Write> = Vec::new();
    let mut hlc = 0;
    for (i, (k, step)) in away.into_iter().enumerate() {
        hlc += 1 + step;
        let v = (i % 3 != 2).then_some("c");
        mine.push(w(&format!("k{k}"), hlc, i as u64 + 1, v));
    }
    let mut shuffled = mine.clone();
    let mut rng = seed | 1;
    for i in (1..shuffled.len()).rev() {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        shuffled.swap(i, (rng >> 33) as usize % (i + 1));
    }
    for write in &mine {
        r1.merge(&m1, &c, vec![write.clone()], &none, &mut |_| {});
    }
    for write in &shuffled {
        r2.merge(&m2, &c, vec![write.clone()], &none, &mut |_| {});
    }
    // Each sends the other its own writes (the stand-ins), superseders first.
    for (from, to, from_me, to_me) in [(&r1, &r2, &m1, &m2), (&r2, &r1, &m2, &m1)] {
        let ctx = from.context_of(from_me);
        if ctx.is_empty() {
            continue;
        }
        let chunk = from.chunk(from_me, Seq::from(1), ctx.max(), ChunkLimits::UNLIMITED);
        for (o, write) in chunk.superseders {
            let dot = SeqRanges::from_ranges([(write.seq, write.seq)]);
            to.merge(to_me, &o, vec![write], &dot, &mut |_| {});
        }
        to.merge(to_me, from_me, chunk.writes, &chunk.covered, &mut |_| {});
    }
    for k in 0..3 {
        let key = format!("k{k}");
        let (v1, v2) = (get(&r1, &key), get(&r2, &key));
        prop_assert_eq!(&v1, &v2, "{} differs", key);
        let newest = |ws: &mut dyn Iterator<Item = (&Origin, &Write)>| {
            ws.filter(|(_, w)| *w.key == *key)
                .max_by(|x, y| (x.1.hlc, x.0).cmp(&(y.1.hlc, y.0)))
                .map(|(o, w)| (o.clone(), w.clone()))
        };
        let members = newest(&mut all.iter().map(|(o, w)| (o, w)));
        let returned = newest(&mut mine.iter().map(|w| (&c, w)));
        match (members, returned) {
            (Some((mo, mw)), Some((_, cw))) if mw.value().is_none() => {
                if !beats(cw.hlc, &c, mw.hlc, &mo) {
                    prop_assert_eq!(v1, None, "{}: deleted and collected, revived", key);
                } else if cw.hlc.0 > mw.hlc.0 + 1 {
                    let want = cw.value().map(|v| String::from_utf8(v.to_vec()).unwrap());
                    prop_assert_eq!(v1, want, "{}: the newest write lost", key);
                }
            }
            (Some((mo, mw)), Some((_, cw))) => {
                let newest = if beats(cw.hlc, &c, mw.hlc, &mo) {
                    cw
                } else {
                    mw
                };
                let want = newest
                    .value()
                    .map(|v| String::from_utf8(v.to_vec()).unwrap());
                prop_assert_eq!(v1, want, "{}: last writer", key);
            }
            (None, Some((_, cw))) => {
                let want = cw.value().map(|v| String::from_utf8(v.to_vec()).unwrap());
                prop_assert_eq!(v1, want, "{}: only c wrote it", key);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Merges everything `from` holds into `into`, as a full catch-up between two replicas would.
fn absorb(into: &MemoryStore, from: &MemoryStore) {
    let me = ReplicaTable::new().intern(&ReplicaId {
        node: "me".into(),
        incarnation: 1,
    });
    for (origin, ctx) in from.context() {
        let c = from.chunk(&origin, Seq::from(1), ctx.max(), ChunkLimits::UNLIMITED);
        for (o, w) in c.superseders {
            let seq = w.seq;
            into.merge(
                &me,
                &o,
                vec![w],
                &SeqRanges::from_ranges([(seq, seq)]),
                &mut |_| {},
            );
        }
        into.merge(&me, &origin, c.writes, &c.covered, &mut |_| {});
    }
}

fn scan_all(
    s: &MemoryStore,
    prefix: &str,
    limit: usize,
    between: &mut dyn FnMut(usize),
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor = ScanCursor::default();
    let mut page = 0;
    loop {
        let next = s.scan_page(prefix, 0, cursor, limit, &mut |k, _| {
            seen.push(k.to_string())
        });
        page += 1;
        match next {
            Some(c) => cursor = c,
            None => return seen,
        }
        between(page);
    }
}

#[test]
fn a_paged_scan_visits_every_key_live_throughout_it_even_when_the_table_grows_between_pages() {
    let t = ReplicaTable::new();
    let (me, a) = (origin(&t, "me"), origin(&t, "a"));
    let s = MemoryStore::new();
    let writes: Vec<Write> = (1..=500)
        .map(|i| w(&format!("sess:{i}"), i, i, Some("v")))
        .chain((501..=600).map(|i| w(&format!("other:{i}"), i, i, Some("v"))))
        .collect();
    s.merge(&me, &a, writes, &SeqRanges::new(), &mut |_| {});
    let mut seq = 600;
    // Between pages: deletes of keys outside the prefix, and enough new keys to grow the table.
    let seen = scan_all(&s, "sess:", 7, &mut |page| {
        let mut batch = vec![w(&format!("other:{}", 500 + page), seq + 1, seq + 1, None)];
        seq += 1;
        for _ in 0..40 {
            seq += 1;
            batch.push(w(&format!("new:{seq}"), seq, seq, Some("v")));
        }
        s.merge(&me, &a, batch, &SeqRanges::new(), &mut |_| {});
    });
    let unique: std::collections::BTreeSet<_> = seen.iter().cloned().collect();
    let want: std::collections::BTreeSet<_> = (1..=500).map(|i| format!("sess:{i}")).collect();
    assert_eq!(unique, want, "every key live throughout is visited");
    assert!(seen.iter().all(|k| k.starts_with("sess:")));
}

#[test]
fn a_page_stops_at_its_limit_and_a_quiet_table_is_visited_once() {
    let t = ReplicaTable::new();
    let (me, a) = (origin(&t, "me"), origin(&t, "a"));
    let s = MemoryStore::new();
    let writes = (1..=300)
        .map(|i| w(&format!("k{i}"), i, i, Some("v")))
        .collect();
    s.merge(&me, &a, writes, &SeqRanges::new(), &mut |_| {});
    let mut first = 0;
    s.scan_page("", 0, ScanCursor::default(), 10, &mut |_, _| first += 1);
    assert_eq!(first, 10);
    let seen = scan_all(&s, "", 10, &mut |_| {});
    assert_eq!(seen.len(), 300, "no key twice without a reshape");
}

#[test]
fn count_and_expiry_of_see_only_live_keys() {
    let t = ReplicaTable::new();
    let (me, a) = (origin(&t, "me"), origin(&t, "a"));
    let s = MemoryStore::new();
    let mut expiring = w("sess:b", 2, 2, Some("v"));
    set_expiry(&mut expiring, 1_000);
    let writes = vec![
        w("sess:a", 1, 1, Some("v")),
        expiring,
        w("sess:c", 3, 3, None),
        w("other", 4, 4, Some("v")),
    ];
    s.merge(&me, &a, writes, &SeqRanges::new(), &mut |_| {});
    assert_eq!(s.count("sess:", 500), 2);
    assert_eq!(s.count("sess:", 1_000), 1);
    assert_eq!(s.count("", 500), 3);
    assert_eq!(s.expiry_of("sess:a", 500), Some(Expiry::NEVER));
    assert_eq!(s.expiry_of("sess:b", 500), Some(Expiry::at_ms(1_000)));
    assert_eq!(s.expiry_of("sess:b", 1_000), None);
    assert_eq!(s.expiry_of("sess:c", 500), None);
    assert_eq!(s.expiry_of("missing", 500), None);
}

#[test]
fn a_key_rewritten_from_ahead_of_a_scan_into_a_slot_behind_it_is_still_visited() {
    let t = ReplicaTable::new();
    let (me, a) = (origin(&t, "me"), origin(&t, "a"));
    let s = MemoryStore::new();
    // Near the load a growth starts at, so many buckets chain several records.
    let writes = (1..=3500u64)
        .map(|i| w(&format!("k{i}"), i, i, Some("v")))
        .collect();
    s.merge(&me, &a, writes, &SeqRanges::new(), &mut |_| {});
    let position = |key: &str| s.state.read().entries.hash(key).reverse_bits();
    // A key K behind another key X of its bucket in the chain, and after it in the scan's order.
    let (key, x_key) = {
        let state = s.state.read();
        let e = &state.entries;
        (1..=3500u64)
            .find_map(|i| {
                let key = format!("k{i}");
                let chain = e.chain_keys(e.hash(&key));
                let at = chain.iter().position(|k| **k == *key)?;
                let x = chain[..at].iter().find(|x| position(x) < position(&key))?;
                Some((key, x.to_string()))
            })
            .expect("a key chained behind one before it in the order")
    };
    // A scan stands between X and K: it has passed X, not K.
    let cursor = ScanCursor {
        position: position(&x_key) + 1,
    };
    assert!(cursor.position <= position(&key));
    // X is deleted and collected, then K is rewritten: it heads its chain, where X was ahead of it.
    s.merge(
        &me,
        &a,
        vec![w(&x_key, 10_000, 10_000, None)],
        &SeqRanges::new(),
        &mut |_| {},
    );
    s.collect(u64::MAX, &mut |_, _| true);
    s.merge(
        &me,
        &a,
        vec![w(&key, 10_001, 10_001, Some("v2"))],
        &SeqRanges::new(),
        &mut |_| {},
    );
    let head = {
        let state = s.state.read();
        state.entries.chain_keys(state.entries.hash(&key))[0].clone()
    };
    assert_eq!(*head, *key, "the rewrite moved K to the head of its chain");
    let mut seen = Vec::new();
    let mut next = Some(cursor);
    while let Some(c) = next {
        next = s.scan_page("", 0, c, 50, &mut |k, _| seen.push(k.to_string()));
    }
    assert!(
        seen.contains(&key),
        "K was live throughout the scan, so it is visited"
    );
}

/// A scan whose table keeps growing between its pages (a hundred new keys per page of seven, the table
/// doubling several times over) ends, and visits each key live throughout it exactly once: a growth
/// moves records, never a key's place in the scan's order. (A scan that started over at each growth
/// never ended: the table grew faster than it walked.)
#[test]
fn a_paged_scan_visits_each_key_once_even_when_the_table_keeps_growing_between_pages() {
    let t = ReplicaTable::new();
    let (me, a) = (origin(&t, "me"), origin(&t, "a"));
    let s = MemoryStore::new();
    let writes: Vec<Write> = (1..=500)
        .map(|i| w(&format!("sess:{i}"), i, i, Some("v")))
        .collect();
    s.merge(&me, &a, writes, &SeqRanges::new(), &mut |_| {});
    let mut seq = 500;
    let seen = scan_all(&s, "sess:", 7, &mut |page| {
        assert!(page < 1_000, "the scan has not ended after {page} pages");
        let batch = (0..100)
            .map(|_| {
                seq += 1;
                w(&format!("new:{seq}"), seq, seq, Some("v"))
            })
            .collect();
        s.merge(&me, &a, batch, &SeqRanges::new(), &mut |_| {});
    });
    assert!(
        s.entry_count() > 8 * 500,
        "the table grew several times during the scan"
    );
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no key was visited twice");
    assert_eq!(unique.len(), 500, "every key live throughout is visited");
}

/// Growing the key table moves its records into a larger one. Done in one step, as an insert that
/// found the table full did, the merge holding the store's lock moved every record (at 1M keys, 0.7 s
/// during which every read waited). Each insert and remove now moves a few, whatever the table's size.
#[test]
fn growing_the_key_table_moves_a_bounded_number_of_records_per_merge() {
    const KEYS: u64 = 150_000;
    const CHUNK: u64 = 1024;
    let t = ReplicaTable::new();
    let (me, a) = (origin(&t, "me"), origin(&t, "a"));
    let s = MemoryStore::new();
    let mut most = 0;
    for start in (0..KEYS).step_by(CHUNK as usize) {
        let writes = (start..(start + CHUNK).min(KEYS))
            .map(|i| w(&format!("k{i}"), i + 1, i + 1, Some("v")))
            .collect();
        let before = s.state.read().entries.relocated;
        s.merge(&me, &a, writes, &SeqRanges::new(), &mut |_| {});
        most = most.max(s.state.read().entries.relocated - before);
        // Readable throughout, wherever a growth left it.
        for i in (0..(start + CHUNK).min(KEYS)).step_by(101) {
            assert_eq!(get(&s, &format!("k{i}")).as_deref(), Some("v"), "k{i}");
        }
    }
    // The table grew past 100k records on the way (a growth moves each record once).
    assert!(s.state.read().entries.relocated > KEYS / 2);
    assert!(most <= 16 * CHUNK, "one merge moved {most} records");
    assert_eq!(s.live_len(), KEYS as usize);
}

/// A paged scan runs while the table grows and its records move over merge by merge, keys old and
/// new rewritten meanwhile: every key live throughout is visited, once.
#[test]
fn a_scan_across_the_key_tables_growth_visits_every_key_live_throughout_once() {
    let t = ReplicaTable::new();
    let (me, a) = (origin(&t, "me"), origin(&t, "a"));
    let s = MemoryStore::new();
    let seq = std::cell::Cell::new(0);
    let write = |from: u64, to: u64| {
        let writes = (from..to)
            .map(|i| {
                seq.set(seq.get() + 1);
                w(&format!("k{i}"), seq.get(), seq.get(), Some("v"))
            })
            .collect();
        s.merge(&me, &a, writes, &SeqRanges::new(), &mut |_| {});
    };
    write(0, 3_000);
    let mut seen = std::collections::HashMap::new();
    let mut next = Some(ScanCursor::default());
    let mut at = 3_000;
    while let Some(c) = next {
        next = s.scan_page("", 0, c, 20, &mut |k, _| {
            *seen.entry(k.to_string()).or_insert(0) += 1;
        });
        // New keys and rewrites of old ones, a few per page: the table grows at 4,096 records.
        write(at, at + 7);
        let old = at % 3_000;
        write(old, old + 3);
        at += 7;
    }
    assert!(at > 4_100, "the scan ran across the growth");
    for i in 0..3_000 {
        assert_eq!(
            seen.get(&format!("k{i}")),
            Some(&1),
            "k{i} was live throughout"
        );
    }
    assert!(seen.values().all(|&n| n == 1), "no key was visited twice");
}

/// A read of the size (and of the next expiry, which a size read checks first) on the JS thread must
/// not wait while a merge holds the store: a catch-up chunk can hold it for hundreds of milliseconds.
#[test]
fn the_size_is_read_without_waiting_for_the_store_lock() {
    let t = ReplicaTable::new();
    let a = origin(&t, "a");
    let clock = Clock::new(Box::new(Arc::new(ManualClock::new(10_000))));
    let s = Arc::new(MemoryStore::new());
    let v = || Some(b"v".to_vec().into());
    s.write_local(&a, &clock, "k", v(), Lifetime::Ttl(50), &mut |_| {});
    let held = s.state.write();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = s.clone();
    std::thread::spawn(move || {
        let _ = tx.send((reader.live_len(), reader.next_expiry()));
    });
    let read = rx.recv_timeout(std::time::Duration::from_secs(2));
    drop(held);
    assert_eq!(read, Ok((1, Some(10_050))));
}

/// The size read without the lock is the exact count the store keeps, whichever writes, overwrites,
/// deletes and TTL expiries run beside it: under the shared lock (no section running) the two agree.
#[test]
fn concurrent_ttl_writers_leave_an_exact_size() {
    use crate::replication::clock::PhysicalClock;
    let t = ReplicaTable::new();
    let s = Arc::new(MemoryStore::new());
    let source = Arc::new(ManualClock::new(10_000));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checker = {
        let (s, done) = (s.clone(), done.clone());
        std::thread::spawn(move || {
            let mut checks = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let state = s.state.read();
                assert_eq!(s.live_len(), state.live_entries);
                drop(state);
                checks += 1;
            }
            checks
        })
    };
    let writers: Vec<_> = (0..3)
        .map(|n| {
            let (s, source) = (s.clone(), source.clone());
            let me = origin(&t, &format!("w{n}"));
            std::thread::spawn(move || {
                let clock = Clock::new(Box::new(source.clone()));
                for i in 0..3_000u64 {
                    let key = format!("k{}", i % 200);
                    let value = (i % 7 != 3).then(|| b"v".to_vec().into());
                    let lifetime = match i % 3 {
                        0 => Lifetime::Forever,
                        _ => Lifetime::Ttl(1 + i % 40),
                    };
                    s.write_local(&me, &clock, &key, value, lifetime, &mut |_| {});
                    if i % 5 == 0 {
                        source.advance(3);
                        s.expire(source.now_ms(), &mut |_| {});
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(checker.join().unwrap() > 0);
    let now = source.now_ms();
    s.expire(now, &mut |_| {});
    let mut live = 0;
    s.scan("", now, &mut |_, _| live += 1);
    assert_eq!(s.live_len(), live);
}

fn stamp_of(s: &MemoryStore, key: &str) -> Option<Stamp> {
    let mut out = None;
    s.read_stamped(key, &|| 0, &mut |_, stamp| out = Some(stamp));
    out
}

#[test]
fn a_stamp_changes_with_every_write_that_replaces_the_value_even_at_the_same_hlc() {
    let t = ReplicaTable::new();
    let (me, a, b) = (origin(&t, "me"), origin(&t, "a"), origin(&t, "b"));
    let s = MemoryStore::new();
    let merge = |from: &Origin, write: Write| {
        s.merge(&me, from, vec![write], &SeqRanges::new(), &mut |_| {});
    };
    merge(&a, w("k", 10, 1, Some("same")));
    let first = stamp_of(&s, "k").unwrap();
    assert_eq!(stamp_of(&s, "k"), Some(first));
    // The same value and hlc from another origin that wins the tie: another write, another stamp.
    merge(&b, w("k", 10, 1, Some("same")));
    let second = stamp_of(&s, "k").unwrap();
    assert_ne!(second, first);
    // A write that loses changes nothing.
    merge(&a, w("k", 9, 2, Some("older")));
    assert_eq!(stamp_of(&s, "k"), Some(second));
    // A local write of an equal value.
    let clock = Clock::new(Box::new(ManualClock::new(1_000)));
    s.write_local(
        &me,
        &clock,
        "k",
        Some(b"same".as_slice().into()),
        Lifetime::Forever,
        &mut |_| {},
    );
    let third = stamp_of(&s, "k").unwrap();
    assert!(third != first && third != second);
    // A touch keeps the value, and its stamp.
    s.touch_local(&me, &clock, "k".into(), 60_000).unwrap();
    assert_eq!(stamp_of(&s, "k"), Some(third));
    // A tombstone has none.
    merge(&b, w("k", u64::MAX >> 1, 2, None));
    assert_eq!(stamp_of(&s, "k"), None);
}

/// A bucket of sessions with a TTL cleared one delete at a time (with a collection round after each,
/// as a node's timer runs them beside the deletes) leaves an expiry item per deleted key behind: the
/// queue drops them, but never more than a bounded number in one exclusive section, so no write
/// waits for a pass over the whole queue; and once the clear is done the queue is back within its
/// bound (four items per live key, and 1,024).
#[test]
fn stale_expiry_items_are_dropped_a_bounded_number_per_section() {
    let t = ReplicaTable::new();
    let a = origin(&t, "a");
    let clock = Clock::new(Box::new(ManualClock::new(10_000)));
    let s = MemoryStore::new();
    let (n, kept) = (20_000, 1_000);
    for i in 0..n {
        let v = Some(b"v".to_vec().into());
        s.write_local(
            &a,
            &clock,
            &format!("k{i}"),
            v,
            Lifetime::Ttl(1_000_000),
            &mut |_| {},
        );
    }
    let held = |s: &MemoryStore| s.state.read().expiries.len();
    let mut most_dropped = 0;
    let mut timed = |s: &MemoryStore, section: &dyn Fn()| {
        let before = held(s);
        section();
        most_dropped = most_dropped.max(before.saturating_sub(held(s)));
    };
    for i in 0..n - kept {
        let key = format!("k{i}");
        timed(&s, &|| {
            s.write_local(&a, &clock, &key, None, Lifetime::Forever, &mut |_| {});
        });
        timed(&s, &|| {
            s.collect(0, &mut |_, _| true);
        });
    }
    for _ in 0..1_000 {
        timed(&s, &|| {
            s.collect(0, &mut |_, _| true);
        });
    }
    assert!(
        most_dropped <= 2 + 4,
        "one section dropped {most_dropped} stale items"
    );
    assert!(
        held(&s) <= 4 * kept + 1024,
        "{} items left for {kept} live keys",
        held(&s)
    );
    assert_eq!(s.live_len(), kept);
}

/// Keys rewritten with a later expiry while their queue drops stale items (the items of their
/// earlier expiry among them) expire at the later time, each reported once, never at the earlier.
#[test]
fn a_stale_expiry_item_never_expires_a_live_rewritten_key_while_its_queue_compacts() {
    let t = ReplicaTable::new();
    let a = origin(&t, "a");
    let clock = Clock::new(Box::new(ManualClock::new(10_000)));
    let s = MemoryStore::new();
    let n = 6_000;
    let write = |key: &str, until: u64| {
        let v = Some(b"v".to_vec().into());
        s.write_local(&a, &clock, key, v, Lifetime::Until(until), &mut |_| {});
    };
    for i in 0..n {
        write(&format!("k{i}"), 20_000);
    }
    // Most keys deleted: the queue's items outnumber its live keys and its compaction starts.
    for i in 0..n - 500 {
        s.write_local(
            &a,
            &clock,
            &format!("k{i}"),
            None,
            Lifetime::Forever,
            &mut |_| {},
        );
    }
    // Every key live again, or still live, waits for 40_000 now; its 20_000 item is stale.
    let mut rewritten = 0;
    for i in (0..n).step_by(3) {
        write(&format!("k{i}"), 40_000);
        rewritten += 1;
        s.collect(0, &mut |_, _| true);
    }
    for i in n - 500..n {
        if i % 3 != 0 {
            write(&format!("k{i}"), 40_000);
            rewritten += 1;
        }
    }
    assert_eq!(s.live_len(), rewritten);
    let mut expired = Vec::new();
    s.expire(30_000, &mut |k| expired.push(k.to_string()));
    assert_eq!(expired, Vec::<String>::new(), "expired at a stale time");
    assert_eq!(s.live_len(), rewritten);
    s.expire(40_000, &mut |k| expired.push(k.to_string()));
    let reported = expired.len();
    expired.sort();
    expired.dedup();
    assert_eq!(
        (reported, expired.len(), s.live_len()),
        (rewritten, rewritten, 0)
    );
}

/// The fingerprint of what a store holds, kept as records come and go, equals the one computed
/// from scratch after every path that stores or removes a register: merges of values, deletes and
/// touches (some arriving before their values, some already expired), local writes and touches,
/// expiry sweeps, collection, forgetting collected keys, learning collected keys (stand-ins),
/// dropped dots, and a store restored from another's entries.
#[test]
fn the_stored_fingerprint_is_exact_after_every_path_that_changes_what_is_stored() {
    let t = ReplicaTable::new();
    let me = origin(&t, "me");
    let others = [origin(&t, "a"), origin(&t, "b"), origin(&t, "c")];
    let time = Arc::new(ManualClock::new(1_000_000));
    let clock = Clock::new(Box::new(time.clone()));
    for seed in 0..40u64 {
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut s = MemoryStore::new();
        let mut seqs = [0u64; 3];
        let check = |s: &MemoryStore, what: &str| {
            let state = s.state.read();
            assert_eq!(
                state.entries.print(),
                state.entries.print_recounted(),
                "seed {seed}: the kept fingerprint drifted after {what}"
            );
        };
        for _ in 0..300 {
            let key = format!("k{}", next(12));
            let now = time.now_ms();
            match next(10) {
                0..=3 => {
                    let o = next(3) as usize;
                    seqs[o] += 1;
                    let hlc = Hlc((now - 2_000 + next(4_000)) << 16);
                    let mut write = w(&key, hlc.0, seqs[o], Some("v"));
                    match next(4) {
                        0 => write.op = Op::Delete,
                        1 => {
                            write.op = Op::Touch {
                                expires: Expiry::at_ms(now + next(3_000)),
                            }
                        }
                        2 => set_expiry(&mut write, now - 500 + next(2_000)),
                        _ => {}
                    }
                    s.merge(&me, &others[o], vec![write], &SeqRanges::new(), &mut |_| {});
                    check(&s, "a merge");
                }
                4 => {
                    let value = (next(2) == 0).then(|| Box::from(&b"local"[..]));
                    let life = if next(2) == 0 {
                        Lifetime::Ttl(next(2_000) + 1)
                    } else {
                        Lifetime::Forever
                    };
                    s.write_local(&me, &clock, &key, value, life, &mut |_| {});
                    check(&s, "a local write");
                }
                5 => {
                    s.touch_local(&me, &clock, key.into(), next(3_000) + 1);
                    check(&s, "a local touch");
                }
                6 => {
                    time.advance(next(1_500));
                    s.expire(time.now_ms(), &mut |_| {});
                    check(&s, "an expiry sweep");
                    s.collect(time.now_ms(), &mut |_, _| next(3) > 0);
                    check(&s, "a collection");
                }
                7 => {
                    let o = next(3) as usize;
                    let from = next(seqs[o] + 1);
                    let dots = SeqRanges::from_ranges([(
                        Seq::from(from.max(1)),
                        Seq::from(from.max(1) + next(4)),
                    )]);
                    s.drop_dots(&others[o], &dots, &mut |_| {});
                    check(&s, "dropped dots");
                }
                8 => {
                    let record = CollectedRecord {
                        fingerprint: key_fingerprint(&key),
                        hlc: Hlc((now - 1_000 + next(2_000)) << 16),
                        origin: Some(others[next(3) as usize].clone()),
                        at_ms: now,
                    };
                    let origin = record.origin.clone();
                    s.learn_collected(&me, vec![(record, origin)], &mut |_| {});
                    check(&s, "learned collected keys (stand-ins)");
                    s.forget_collected(now - next(2_000));
                    check(&s, "forgotten collected keys");
                }
                _ => {
                    let (entries, contexts) = {
                        let state = s.state.read();
                        let entries: Vec<_> = state
                            .entries
                            .iter()
                            .map(|(k, e)| (k.clone(), e.clone()))
                            .collect();
                        let contexts: Vec<_> = state
                            .origins
                            .iter()
                            .map(|(o, st)| (o.clone(), st.context.clone()))
                            .collect();
                        (entries, contexts)
                    };
                    let before = s.stored_print();
                    s = MemoryStore::restore(entries, contexts, vec![], vec![], Hlc(0), false);
                    check(&s, "a restore");
                    assert_eq!(s.stored_print(), before, "a restore keeps the fingerprint");
                }
            }
        }
    }
}
