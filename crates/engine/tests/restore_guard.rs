//! What a repair's restore (`Store::restore_registers`) may bring back after a collection, checked on
//! the store alone: the invariant is that a delete never comes back, so a restored register older
//! than a tombstone this replica collected must lose to it, whether the collected record is still
//! remembered by key or only its time stands for it (`forget_collected`), as a merged one does.

use peer_buckets_engine::{Hlc, MemoryStore, Origin, ReplicaTable, Seq, SeqRanges, Store, Write};

mod common;
use common::{rid, write};

fn origin(t: &ReplicaTable, name: &str) -> Origin {
    t.intern(&rid(name))
}

/// A write of `key` stamped `hlc` (the JSON string `v`, or a tombstone).
fn w(key: &str, hlc: u64, seq: u64, v: Option<&str>) -> Write {
    write(key, Hlc(hlc), seq, v)
}

/// What `s` shows for `key`, as stored.
fn get(s: &MemoryStore, key: &str) -> Option<Vec<u8>> {
    let mut out = None;
    s.read(key, &|| 0, &mut |v| out = Some(v.to_vec()));
    out
}

/// `a` wrote k, `b` deleted it, and the tombstone was collected here (both dots covered);
/// `forget` drops the collected record (only its time stays, in `beyond`).
fn deleted_and_collected(t: &ReplicaTable, forget: bool) -> MemoryStore {
    let (me, a, b) = (origin(t, "me"), origin(t, "a"), origin(t, "b"));
    let s = MemoryStore::new();
    let none = SeqRanges::new();
    s.merge(&me, &a, vec![w("k", 10, 1, Some("v1"))], &none, &mut |_| {});
    s.merge(&me, &b, vec![w("k", 20, 1, None)], &none, &mut |_| {});
    assert_eq!(s.collect(1_000, &mut |_, _| true), 1);
    if forget {
        s.forget_collected(2_000);
        assert_eq!(s.collected_remembered(), 0);
    }
    assert!(s.context_of(&a).contains(Seq::from(1)) && s.context_of(&b).contains(Seq::from(1)));
    s
}

#[test]
fn a_restore_never_brings_back_a_value_whose_delete_was_collected_and_remembered() {
    let t = ReplicaTable::new();
    let s = deleted_and_collected(&t, false);
    let a = origin(&t, "a");
    let changed = s.restore_registers(&a, vec![w("k", 10, 1, Some("v1"))], &mut |_| {});
    assert_eq!((changed, get(&s, "k")), (0, None));
}

#[test]
fn a_restore_never_brings_back_a_value_whose_delete_was_collected_and_forgotten() {
    let t = ReplicaTable::new();
    let (me, a) = (origin(&t, "me"), origin(&t, "a"));

    // A merge of the old write after the record was forgotten meets a stand-in (the guard `beyond`
    // keeps for keys with no live register): the delete holds.
    let merged = deleted_and_collected(&t, true);
    let c = origin(&t, "c");
    merged.merge(
        &me,
        &c,
        vec![w("k", 10, 1, Some("v1"))],
        &SeqRanges::new(),
        &mut |_| {},
    );
    assert_eq!(get(&merged, "k"), None, "a merge keeps the delete");

    // A repair's restore of the very register the delete beat (its dot covered here) must too.
    let s = deleted_and_collected(&t, true);
    let mut shown = 0;
    s.restore_registers(&a, vec![w("k", 10, 1, Some("v1"))], &mut |_| shown += 1);
    assert_eq!(
        get(&s, "k"),
        None,
        "the value the collected delete beat came back through a restore ({shown} change events)"
    );
}
