//! The counter's registers against a model that tracks every increment by itself: which register
//! and version carried it, which window it was made in, and which resets had seen it. Registers
//! travel as the bucket carries them: any order, duplicated, to replicas that restart empty or drop
//! what expired; each replica keeps the newest version of a register (last-writer-wins over one
//! writer's writes).

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const TTL: u64 = 5_000;

/// A register as a replica holds it, with what the model needs to judge it.
#[derive(Clone, Debug)]
struct Held {
    version: u64,
    raw: Vec<u8>,
    expires: Option<u64>,
    /// For a reset register: the version of each writer register its writer held then.
    seen: BTreeMap<WriterId, u64>,
}

#[derive(Clone, Debug, Default)]
struct Replica {
    token: u64,
    held: BTreeMap<String, Held>,
}

impl Replica {
    fn state(&self) -> KeyState {
        let mut s = KeyState::default();
        for (suffix, h) in &self.held {
            s.add(suffix, &h.raw);
        }
        s
    }

    fn receive(&mut self, suffix: &str, h: &Held) {
        let newer = self
            .held
            .get(suffix)
            .is_none_or(|mine| h.version > mine.version);
        if newer {
            self.held.insert(suffix.to_string(), h.clone());
        }
    }

    fn version_of(&self, id: WriterId) -> u64 {
        self.held.get(&writer_suffix(id)).map_or(0, |h| h.version)
    }
}

#[derive(Default)]
struct World {
    now: u64,
    replicas: Vec<Replica>,
    /// Every register version ever written (the network never forgets: each reaches every replica
    /// in the end, in any order, any number of times).
    sent: Vec<(String, Held)>,
    /// Every increment or decrement: the register, the version that first carried it, the amount.
    ops: Vec<(WriterId, u64, i64)>,
    tokens: u64,
}

impl World {
    fn new(n: usize) -> Self {
        let mut w = World {
            now: 1_000_000,
            ..World::default()
        };
        for _ in 0..n {
            let token = w.fresh_token();
            w.replicas.push(Replica {
                token,
                ..Replica::default()
            });
        }
        w
    }

    fn fresh_token(&mut self) -> u64 {
        self.tokens += 1;
        self.tokens * 0x1_0001
    }

    fn write(&mut self, r: usize, planned: Planned, seen: BTreeMap<WriterId, u64>) -> u64 {
        let replica = &mut self.replicas[r];
        // Versions stand for timestamps: later than every earlier write, as a register written
        // again after it expired and was dropped must win over its old copies.
        let version = self.sent.len() as u64 + 1;
        let held = Held {
            version,
            raw: planned.raw,
            expires: match planned.lifetime {
                Lifetime::Until(at) => Some(at),
                _ => None,
            },
            seen,
        };
        replica.held.insert(planned.suffix.clone(), held.clone());
        self.sent.push((planned.suffix, held));
        version
    }

    fn add(&mut self, r: usize, by: i64, ttl: u64) -> i64 {
        let (id, tally) =
            self.replicas[r]
                .state()
                .plan_add(self.replicas[r].token, by, ttl, self.now);
        let version = self.write(r, writer_register(id, tally), BTreeMap::new());
        self.ops.push((id, version, by));
        self.replicas[r].state().value(self.now)
    }

    fn reset(&mut self, r: usize) {
        let floors = self.replicas[r].state().plan_reset(self.now);
        let seen = floors
            .keys()
            .map(|&id| (id, self.replicas[r].version_of(id)))
            .collect();
        if let Some(planned) = reset_register(self.replicas[r].token, &floors) {
            self.write(r, planned, seen);
        }
    }

    /// What replica `r` must show at `now`: every increment it holds (its register's version there
    /// is at least the one that carried it), in a window live at `now`, that no reset it holds had
    /// seen.
    fn expected(&self, r: &Replica, now: u64) -> i64 {
        self.ops
            .iter()
            .filter(|&&(id, version, _)| {
                let live = id.1 == 0 || id.1 > now;
                let held = r.version_of(id) >= version;
                let cancelled = r
                    .held
                    .values()
                    .any(|h| h.seen.get(&id).is_some_and(|&v| v >= version));
                live && held && !cancelled
            })
            .map(|&(_, _, by)| by)
            .sum()
    }

    fn deliver_all(&mut self) {
        for r in &mut self.replicas {
            for (suffix, h) in &self.sent {
                r.receive(suffix, h);
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Add { r: usize, by: i64, windowed: bool },
    Reset { r: usize },
    Deliver { pick: usize, to: usize },
    Tick(u64),
    RestartEmpty(usize),
    DropExpired(usize),
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..n, -3i64..6, any::<bool>()).prop_map(|(r, by, windowed)| Op::Add { r, by, windowed }),
        1 => (0..n).prop_map(|r| Op::Reset { r }),
        8 => (any::<usize>(), 0..n).prop_map(|(pick, to)| Op::Deliver { pick, to }),
        2 => (0u64..3_000).prop_map(Op::Tick),
        1 => (0..n).prop_map(Op::RestartEmpty),
        1 => (0..n).prop_map(Op::DropExpired),
    ]
}

fn run(n: usize, ops: &[Op]) -> World {
    let mut w = World::new(n);
    for op in ops {
        match *op {
            Op::Add { r, by, windowed } => {
                let value = w.add(r, by, if windowed { TTL } else { 0 });
                assert_eq!(value, w.expected(&w.replicas[r], w.now), "value after add");
            }
            Op::Reset { r } => w.reset(r),
            Op::Deliver { pick, to } => {
                if !w.sent.is_empty() {
                    let (suffix, h) = w.sent[pick % w.sent.len()].clone();
                    w.replicas[to].receive(&suffix, &h);
                }
            }
            Op::Tick(dt) => w.now += dt,
            Op::RestartEmpty(r) => {
                let token = w.fresh_token();
                w.replicas[r] = Replica {
                    token,
                    ..Replica::default()
                };
            }
            Op::DropExpired(r) => {
                let now = w.now;
                w.replicas[r]
                    .held
                    .retain(|_, h| h.expires.is_none_or(|at| at > now));
            }
        }
        for r in &w.replicas {
            assert_eq!(
                r.state().value(w.now),
                w.expected(r, w.now),
                "a replica's value is what it holds, each increment once"
            );
        }
    }
    w
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_increment_counts_exactly_once_on_every_replica_in_any_delivery_order(
        ops in proptest::collection::vec(op(3), 1..120),
    ) {
        let mut w = run(3, &ops);
        w.deliver_all();
        for later in [0, 1, TTL / 2, TTL, 2 * TTL] {
            let t = w.now + later;
            let values: Vec<i64> = w.replicas.iter().map(|r| r.state().value(t)).collect();
            let truth = w.expected(&w.replicas[0], t);
            prop_assert!(values.iter().all(|&v| v == truth), "at +{later}: {values:?}, expected {truth}");
        }
    }

    #[test]
    fn merging_registers_is_order_and_duplicate_free(
        ops in proptest::collection::vec(op(3), 1..80),
        order in Just(()).prop_perturb(|_, mut rng| rng.next_u64()),
    ) {
        let w = run(3, &ops);
        // Two fresh replicas take every version sent, one in order, one shuffled with repeats.
        let mut a = Replica::default();
        let mut b = Replica::default();
        for (s, h) in &w.sent {
            a.receive(s, h);
        }
        let mut x = order;
        for _ in 0..w.sent.len() * 2 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let (s, h) = &w.sent[(x >> 33) as usize % w.sent.len()];
            b.receive(s, h);
        }
        for (s, h) in w.sent.iter().rev() {
            b.receive(s, h);
        }
        prop_assert_eq!(a.state(), b.state());
    }
}

#[test]
fn a_reset_clears_what_it_saw_and_keeps_concurrent_increments() {
    let mut w = World::new(2);
    w.add(0, 5, 0);
    w.deliver_all();
    // 1 resets having seen the 5; 0 adds 3 meanwhile.
    w.reset(1);
    w.add(0, 3, 0);
    assert_eq!(w.replicas[1].state().value(w.now), 0);
    w.deliver_all();
    for r in &w.replicas {
        assert_eq!(r.state().value(w.now), 3);
    }
}

#[test]
fn concurrent_resets_merge_as_the_union_of_what_they_saw() {
    let mut w = World::new(3);
    w.add(0, 4, 0);
    w.add(1, 6, 0);
    let (s0, h0) = w.sent[0].clone();
    let (s1, h1) = w.sent[1].clone();
    w.replicas[2].receive(&s0, &h0);
    w.reset(2); // saw 0's 4 only
    w.replicas[0].receive(&s1, &h1);
    w.reset(0); // saw both
    w.add(1, 1, 0); // seen by neither
    w.deliver_all();
    for r in &w.replicas {
        assert_eq!(r.state().value(w.now), 1);
    }
}

#[test]
fn concurrent_windows_each_count_their_own_increments_until_their_own_end() {
    let mut w = World::new(2);
    w.add(0, 2, TTL); // window ending at now + TTL
    w.now += 1_000;
    w.add(1, 3, TTL); // 1 had not seen it: a window ending 1 s later
    w.deliver_all();
    let (end0, end1) = (1_000_000 + TTL, 1_001_000 + TTL);
    for r in &w.replicas {
        let s = r.state();
        assert_eq!(s.value(w.now), 5);
        assert_eq!(
            s.window(w.now),
            Some(end0),
            "new increments join the earlier window"
        );
        assert_eq!(s.value(end0 - 1), 5);
        assert_eq!(
            s.value(end0),
            3,
            "0's window ended; 1's increments stay until theirs"
        );
        assert_eq!(s.value(end1), 0);
    }
    // Having seen both, 1 joins the earlier window.
    w.add(1, 1, TTL);
    assert_eq!(w.replicas[1].state().value(end0), 3);
    assert_eq!(w.replicas[1].state().value(end0 - 1), 6);
}

#[test]
fn after_a_window_ends_the_count_restarts_in_a_new_window() {
    let mut w = World::new(1);
    assert_eq!(w.add(0, 1, TTL), 1);
    assert_eq!(w.add(0, 1, TTL), 2);
    w.now += TTL;
    assert_eq!(w.add(0, 1, TTL), 1);
    assert_eq!(w.replicas[0].state().window(w.now), Some(w.now + TTL));
}

#[test]
fn malformed_registers_count_nothing() {
    let mut s = KeyState::default();
    s.add("w1:0", &[1, 2, 3]);
    s.add("wzz:0", &encode_tally(Tally { inc: 9, dec: 0 }));
    s.add("r1", &[0; 31]);
    s.add("x", &[]);
    assert_eq!(s.value(0), 0);
    assert_eq!(split_key("k\u{0}w1:0"), Some(("k", "w1:0")));
    assert_eq!(split_key("a\u{0}b\u{0}r2"), Some(("a\u{0}b", "r2")));
    assert_eq!(split_key("plain"), None);
    assert_eq!(split_key("\u{0}w1:0"), None);
}
