//! The counter's index of registers against a full scan of its bucket, on every path that changes
//! what the bucket shows: local increments and resets, registers merged from another replica,
//! expiry, collection, tombstones (a cleared register), registers dropped by a resync and stand-in
//! tombstones learned from a collector. Each test fails if its path leaves the index stale: the index
//! must hold exactly the registers a scan shows, and every key's state read through it must equal
//! the state a scan builds.

use proptest::prelude::*;

use super::*;
use crate::replication::bucket::WriteSignal;
use crate::replication::clock::{Clock, ManualClock, PhysicalClock};
use crate::replication::ranges::Seq;
use crate::replication::replica::{Origin, ReplicaId, ReplicaTable};
use crate::replication::store::{ChunkLimits, Incoming, MemoryStore};

const TTL: u64 = 5_000;
const KEYS: usize = 4;

struct Quiet;

impl WriteSignal for Quiet {
    fn local_write(&self) {}
}

struct Replica {
    origin: Origin,
    bucket: Arc<Bucket>,
    counter: Counter,
}

fn replica(t: &ReplicaTable, name: &str, time: &Arc<ManualClock>) -> Replica {
    let origin = t.intern(&ReplicaId {
        node: name.into(),
        incarnation: 1,
    });
    let clock = Arc::new(Clock::new(Box::new(time.clone())));
    let bucket = Arc::new(Bucket::new(
        bucket_name("c").into(),
        origin.clone(),
        clock.clone(),
        Arc::new(Quiet),
        Box::new(MemoryStore::new()),
    ));
    let counter = Counter::new(bucket.clone(), clock, fresh_token());
    Replica {
        origin,
        bucket,
        counter,
    }
}

fn world(n: usize) -> (Arc<ManualClock>, Vec<Replica>) {
    let t = ReplicaTable::new();
    let time = Arc::new(ManualClock::new(1_000_000));
    let rs = (0..n)
        .map(|i| replica(&t, &format!("r{i}"), &time))
        .collect();
    (time, rs)
}

fn incr(r: &Replica, key: &str, by: i64, ttl: u64) -> i64 {
    r.counter
        .add(key, by, ttl, |w| {
            r.bucket.write(w.key, Some(w.value), w.lifetime);
        })
        .1
}

fn reset(r: &Replica, key: &str) {
    r.counter.reset(key, |w| {
        r.bucket.write(w.key, Some(w.value), w.lifetime);
    });
}

/// Sends every register `from` wrote to `to`, as a catch-up chunk carries it.
fn ship(from: &Replica, to: &Replica) {
    let c = from
        .bucket
        .store()
        .chunk(&from.origin, Seq::FIRST, Seq::MAX, ChunkLimits::UNLIMITED);
    to.bucket
        .merge_chunk(
            &from.origin,
            Incoming {
                writes: c.writes,
                covered: &c.covered,
                superseded: &c.superseded,
                superseders: c.superseders,
            },
        )
        .expect("one clock");
}

/// Tombstones every register of `key` held here (what clearing the counter's bucket writes).
fn clear(r: &Replica, key: &str) {
    let mut held = Vec::new();
    r.bucket
        .scan(&format!("{key}\0"), &mut |k, _| held.push(k.to_string()));
    for k in held {
        r.bucket.write(k, None, Lifetime::Forever);
    }
}

fn collect(r: &Replica, now: u64) {
    r.bucket.sweep();
    r.bucket.store().collect(now + 1, &mut |_, _| true);
}

/// The state of `key` as a full scan of the bucket builds it: what the index must agree with.
fn scanned(c: &Counter, key: &str) -> KeyState {
    let mut state = KeyState::default();
    c.bucket()
        .scan(&format!("{key}{SEP}"), &mut |stored_key, stored| {
            if let (Some((k, suffix)), Some((value::Kind::Bytes, raw))) =
                (split_key(stored_key), value::split(stored))
            {
                if k == key {
                    state.add(suffix, raw);
                }
            }
        });
    state
}

fn agrees(r: &Replica) -> Result<(), String> {
    r.counter.check_index()?;
    for k in 0..KEYS {
        let key = format!("k{k}");
        let (indexed, full) = (r.counter.state(&key), scanned(&r.counter, &key));
        if indexed != full {
            return Err(format!(
                "{key}: the index reads {indexed:?}, a scan {full:?}"
            ));
        }
    }
    Ok(())
}

#[test]
fn local_increments_and_resets_enter_the_index() {
    let (_, rs) = world(1);
    let r = &rs[0];
    assert_eq!(incr(r, "k0", 3, TTL), 3);
    assert_eq!(incr(r, "k1", 2, 0), 2);
    assert_eq!(incr(r, "k0", -1, TTL), 2);
    agrees(r).unwrap();
    reset(r, "k0");
    assert_eq!(r.counter.value("k0"), 0);
    assert_eq!(r.counter.value("k1"), 2);
    agrees(r).unwrap();
}

#[test]
fn registers_merged_from_another_replica_enter_the_index() {
    let (_, rs) = world(2);
    incr(&rs[0], "k0", 4, TTL);
    incr(&rs[0], "k1", 1, 0);
    reset(&rs[0], "k1");
    incr(&rs[1], "k0", 1, TTL);
    ship(&rs[0], &rs[1]);
    assert_eq!(rs[1].counter.value("k0"), 5);
    assert_eq!(rs[1].counter.value("k1"), 0);
    agrees(&rs[1]).unwrap();
    // A newer version of a register already indexed.
    incr(&rs[0], "k0", 2, TTL);
    ship(&rs[0], &rs[1]);
    assert_eq!(rs[1].counter.value("k0"), 7);
    agrees(&rs[1]).unwrap();
}

#[test]
fn registers_whose_window_ended_leave_the_index_when_swept() {
    let (time, rs) = world(2);
    incr(&rs[0], "k0", 2, TTL);
    incr(&rs[0], "k1", 1, 0);
    ship(&rs[0], &rs[1]);
    time.advance(TTL + 1);
    for r in &rs {
        assert_eq!(r.counter.value("k0"), 0);
        assert_eq!(r.counter.expires_at("k0"), None);
        agrees(r).unwrap();
        assert_eq!(r.counter.index.all().len(), 1, "only k1's register is left");
    }
}

#[test]
fn collected_registers_stay_out_of_the_index_and_the_key_counts_again() {
    let (time, rs) = world(1);
    let r = &rs[0];
    incr(r, "k0", 2, TTL);
    reset(r, "k0");
    time.advance(TTL + 1);
    collect(r, time.now_ms());
    assert_eq!(
        r.bucket.store().entry_count(),
        0,
        "everything was collected"
    );
    agrees(r).unwrap();
    assert_eq!(incr(r, "k0", 1, TTL), 1);
    agrees(r).unwrap();
}

#[test]
fn tombstoned_registers_leave_the_index_here_and_where_they_are_merged() {
    let (_, rs) = world(2);
    incr(&rs[0], "k0", 3, 0);
    incr(&rs[0], "k1", 3, TTL);
    ship(&rs[0], &rs[1]);
    clear(&rs[0], "k0");
    assert_eq!(rs[0].counter.value("k0"), 0);
    agrees(&rs[0]).unwrap();
    ship(&rs[0], &rs[1]);
    assert_eq!(rs[1].counter.value("k0"), 0);
    assert_eq!(rs[1].counter.value("k1"), 3);
    agrees(&rs[1]).unwrap();
}

#[test]
fn registers_dropped_as_superseded_elsewhere_leave_the_index() {
    let (_, rs) = world(2);
    incr(&rs[0], "k0", 3, 0);
    incr(&rs[0], "k1", 1, TTL);
    ship(&rs[0], &rs[1]);
    let dots = rs[1].bucket.store().stored_dots(
        &rs[0].origin,
        &rs[1].bucket.store().context_of(&rs[0].origin),
    );
    assert_eq!(rs[1].bucket.drop_dots(&rs[0].origin, &dots), 2);
    assert_eq!(rs[1].counter.value("k0"), 0);
    agrees(&rs[1]).unwrap();
}

#[test]
fn a_stand_in_tombstone_learned_from_a_collector_takes_the_register_out_of_the_index() {
    let (time, rs) = world(2);
    incr(&rs[0], "k0", 3, 0);
    ship(&rs[0], &rs[1]);
    // rs[0] deletes the register and collects the tombstone; rs[1] never heard of the delete.
    clear(&rs[0], "k0");
    time.advance(10);
    collect(&rs[0], time.now_ms());
    assert_eq!(rs[1].counter.value("k0"), 3);
    let stand_ins = rs[1]
        .bucket
        .learn_collected(rs[0].bucket.store().collected_records());
    assert_eq!(stand_ins, 1);
    assert_eq!(rs[1].counter.value("k0"), 0);
    agrees(&rs[1]).unwrap();
}

#[test]
fn a_counter_opened_on_a_bucket_that_holds_registers_indexes_them() {
    let (time, rs) = world(1);
    incr(&rs[0], "k0", 3, TTL);
    incr(&rs[0], "k1", 1, 0);
    // A second process's counter on the same bucket shares the index, filled once.
    let clock = Arc::new(Clock::new(Box::new(time)));
    let other = Counter::new(rs[0].bucket.clone(), clock, fresh_token());
    assert!(Arc::ptr_eq(&other.index, &rs[0].counter.index));
    assert_eq!(other.value("k0"), 3);
    other.check_index().unwrap();
}

#[derive(Clone, Debug)]
enum Op {
    Incr {
        r: usize,
        key: usize,
        by: i64,
        windowed: bool,
    },
    Reset {
        r: usize,
        key: usize,
    },
    Clear {
        r: usize,
        key: usize,
    },
    Ship {
        from: usize,
        to: usize,
    },
    Advance {
        ms: u64,
    },
    Collect {
        r: usize,
    },
    Drop {
        r: usize,
        of: usize,
    },
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    let r = 0..n;
    prop_oneof![
        6 => (r.clone(), 0..KEYS, -2i64..6, any::<bool>())
            .prop_map(|(r, key, by, windowed)| Op::Incr { r, key, by, windowed }),
        2 => (r.clone(), 0..KEYS).prop_map(|(r, key)| Op::Reset { r, key }),
        1 => (r.clone(), 0..KEYS).prop_map(|(r, key)| Op::Clear { r, key }),
        4 => (r.clone(), r.clone()).prop_map(|(from, to)| Op::Ship { from, to }),
        2 => (0..2 * TTL).prop_map(|ms| Op::Advance { ms }),
        1 => r.clone().prop_map(|r| Op::Collect { r }),
        1 => (r.clone(), r).prop_map(|(r, of)| Op::Drop { r, of }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_index_agrees_with_a_full_scan_after_any_mix_of_paths(
        ops in prop::collection::vec(op(3), 1..60)
    ) {
        let (time, rs) = world(3);
        for op in ops {
            match op {
                Op::Incr { r, key, by, windowed } => {
                    incr(&rs[r], &format!("k{key}"), by, if windowed { TTL } else { 0 });
                }
                Op::Reset { r, key } => reset(&rs[r], &format!("k{key}")),
                Op::Clear { r, key } => clear(&rs[r], &format!("k{key}")),
                Op::Ship { from, to } if from != to => ship(&rs[from], &rs[to]),
                Op::Ship { .. } => {}
                Op::Advance { ms } => time.advance(ms),
                Op::Collect { r } => collect(&rs[r], time.now_ms()),
                Op::Drop { r, of } if r != of => {
                    let store = rs[r].bucket.store();
                    let dots = store.stored_dots(&rs[of].origin, &store.context_of(&rs[of].origin));
                    rs[r].bucket.drop_dots(&rs[of].origin, &dots);
                }
                Op::Drop { .. } => {}
            }
            for r in &rs {
                prop_assert_eq!(agrees(r), Ok(()));
            }
        }
    }
}
