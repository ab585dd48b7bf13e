//! How long one exclusive section of a store holds its lock while a bucket of N keys with a TTL is
//! cleared one delete at a time (what `SessionStore.clear()` does), engine only (no Node): writes N
//! session-like keys with a day's TTL, deletes them in order, and runs a collection round every
//! 1,000 deletes (as a node's collection timer does beside them); reports the longest delete and the
//! longest collection round, each with the delete count it came at, in wall-clock time and in the
//! time the thread spent on a CPU (`CLOCK_THREAD_CPUTIME_ID`: what the section itself costs, whatever
//! the machine's load). Then one collection drops every tombstone at once (a peer that was away came
//! back), and a reader thread beside it reports its longest wait for the store.
//! `cargo run --profile checked --example clear_stall -- 1000000`

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use peer_buckets_engine::value;
use peer_buckets_engine::{Clock, Lifetime, ManualClock, MemoryStore, ReplicaTable, Store};

mod common;
use common::{cpu_time, keys_arg, origin};

/// Deletes between two collection rounds.
const ROUND_EVERY: usize = 1_000;

/// The longest of a kind of section: wall-clock time and the delete count it came at, and CPU time
/// and the delete count it came at.
#[derive(Default)]
struct Longest {
    wall: (Duration, usize),
    cpu: (Duration, usize),
}

impl Longest {
    fn time<T>(&mut self, at: usize, f: impl FnOnce() -> T) -> T {
        let (t, cpu) = (Instant::now(), cpu_time());
        let out = f();
        let (took, took_cpu) = (t.elapsed(), cpu_time() - cpu);
        if took > self.wall.0 {
            self.wall = (took, at);
        }
        if took_cpu > self.cpu.0 {
            self.cpu = (took_cpu, at);
        }
        out
    }

    fn show(&self) -> String {
        format!(
            "{:.2} ms (at delete {}), on a CPU {:.2} ms (at delete {})",
            self.wall.0.as_secs_f64() * 1e3,
            self.wall.1,
            self.cpu.0.as_secs_f64() * 1e3,
            self.cpu.1
        )
    }
}

fn main() {
    let n = keys_arg(1_000_000);
    let table = ReplicaTable::new();
    let me = origin(&table, "server");
    let clock = Clock::new(Box::new(ManualClock::new(1_764_000_000_000)));
    let value = value::encode_json(&format!(
        "{{\"user\":\"user-00000\",\"roles\":[\"reader\",\"writer\"],\"csrf\":\"{}\",\"ip\":\"10.1.2.3\"}}",
        "x".repeat(120)
    ));
    let store = MemoryStore::new();
    let day = 86_400_000;
    for i in 0..n {
        let key = format!("sess:{i}");
        store.write_local(
            &me,
            &clock,
            &key,
            Some(value.clone()),
            Lifetime::Ttl(day),
            &mut |_| {},
        );
    }
    let (mut deletes, mut rounds) = (Longest::default(), Longest::default());
    let started = Instant::now();
    for i in 0..n {
        let key = format!("sess:{i}");
        deletes.time(i, || {
            store.write_local(&me, &clock, &key, None, Lifetime::Forever, &mut |_| {})
        });
        if (i + 1) % ROUND_EVERY == 0 {
            // Nothing is old enough to drop: the round's own upkeep is what is timed.
            rounds.time(i + 1, || store.collect(0, &mut |_, _| true));
        }
    }
    println!(
        "{n} keys deleted in {:.0} ms, a collection round every {ROUND_EVERY}; longest delete {}; longest round {}",
        started.elapsed().as_secs_f64() * 1e3,
        deletes.show(),
        rounds.show(),
    );

    // Then every member holds the tombstones (a peer that was away came back): one collection drops
    // all of them, while a reader beside it reads a live key in a loop and keeps its longest wait.
    store.write_local(
        &me,
        &clock,
        "kept",
        Some(value.clone()),
        Lifetime::Forever,
        &mut |_| {},
    );
    let done = AtomicBool::new(false);
    let (dropped, took, longest_read, reads) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let (mut longest, mut reads) = (Duration::ZERO, 0u64);
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                assert!(store.read("kept", &|| 0, &mut |_| {}));
                longest = longest.max(t.elapsed());
                reads += 1;
            }
            (longest, reads)
        });
        let t = Instant::now();
        let dropped = store.collect(u64::MAX, &mut |_, _| true);
        let took = t.elapsed();
        done.store(true, Ordering::Relaxed);
        let (longest, reads) = reader.join().expect("reader");
        (dropped, took, longest, reads)
    });
    println!(
        "one collection dropped {dropped} tombstones in {:.0} ms; a reader beside it waited {:.2} ms at most ({reads} reads)",
        took.as_secs_f64() * 1e3,
        longest_read.as_secs_f64() * 1e3,
    );
}
