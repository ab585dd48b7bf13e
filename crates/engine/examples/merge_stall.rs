//! How long a reader of a bucket waits while a peer joining it merges N keys, engine only (no Node):
//! merges N session-like writes in chunks of the sync protocol's size into an empty store while
//! another thread reads keys in a loop, and reports the longest merge of one chunk and the longest
//! single read. A loaded machine deschedules the merging thread mid-chunk, so the longest merge is also
//! reported in the time the thread spent on a CPU (`CLOCK_THREAD_CPUTIME_ID`): what the merge itself
//! costs, whatever the load. A second of the reader alone first gives the control: the longest read
//! the machine's own load makes. `cargo run --profile checked --example merge_stall -- 1000000`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peer_buckets_engine::value;
use peer_buckets_engine::{
    Expiry, Hlc, MemoryStore, Op, ReplicaTable, Seq, SeqRanges, Store, Write,
};

mod common;
use common::{cpu_time, keys_arg, origin};

/// Writes per chunk, as `sync` cuts them.
const CHUNK: usize = 1024;

fn main() {
    let n = keys_arg(1_000_000);
    let table = ReplicaTable::new();
    let me = origin(&table, "joiner");
    let holder = origin(&table, "holder");
    let value = value::encode_json(&format!(
        "{{\"user\":\"user-00000\",\"roles\":[\"reader\",\"writer\"],\"csrf\":\"{}\",\"ip\":\"10.1.2.3\"}}",
        "x".repeat(120)
    ));
    let store = Arc::new(MemoryStore::new());
    let done = Arc::new(AtomicBool::new(false));
    let longest_read = Arc::new(AtomicU64::new(0));
    // Reads done, and those that took over 1 ms and over 10 ms.
    let reads = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        let (longest_read, reads) = (longest_read.clone(), reads.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !done.load(Ordering::Relaxed) {
                let key = format!("sess:{}", i % n as u64);
                let t = Instant::now();
                store.read(&key, &|| 0, &mut |_| {});
                let took = t.elapsed();
                longest_read.fetch_max(took.as_nanos() as u64, Ordering::Relaxed);
                let over = [
                    Duration::ZERO,
                    Duration::from_millis(1),
                    Duration::from_millis(10),
                ];
                for (count, at) in reads.iter().zip(over) {
                    if took > at {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i = i.wrapping_add(7919);
                std::thread::sleep(Duration::from_micros(50));
            }
        })
    };
    // The control: the same reader for a second with nothing merged, whose longest read is the
    // machine's own stall (the reader descheduled between its two clock readings).
    std::thread::sleep(Duration::from_secs(1));
    let control = longest_read.swap(0, Ordering::Relaxed);
    for count in reads.iter() {
        count.store(0, Ordering::Relaxed);
    }
    let mut longest = (Duration::ZERO, 0usize);
    let mut longest_cpu = (Duration::ZERO, 0usize);
    let started = Instant::now();
    for start in (0..n).step_by(CHUNK) {
        let end = (start + CHUNK).min(n);
        let writes: Vec<Write> = (start..end)
            .map(|i| Write {
                key: format!("sess:{i}").into(),
                hlc: Hlc::from_parts(1_764_000_000_000, 0),
                seq: Seq::from(i as u64 + 1),
                op: Op::Set {
                    value: value.clone(),
                    expires: Expiry::NEVER,
                },
            })
            .collect();
        let mut covered = SeqRanges::new();
        covered.insert_range(Seq::from(start as u64 + 1), Seq::from(end as u64));
        let (t, cpu) = (Instant::now(), cpu_time());
        store.merge(&me, &holder, writes, &covered, &mut |_| {});
        let (took, took_cpu) = (t.elapsed(), cpu_time() - cpu);
        if took > longest.0 {
            longest = (took, start);
        }
        if took_cpu > longest_cpu.0 {
            longest_cpu = (took_cpu, start);
        }
    }
    let total = started.elapsed();
    done.store(true, Ordering::Relaxed);
    reader.join().expect("reader");
    println!(
        "{n} keys merged in {:.0} ms; longest chunk merge {:.2} ms (at key {}), on a CPU {:.2} ms (at key {}); longest read {:.2} ms (control {:.3} ms); reads {}, over 1 ms {}, over 10 ms {}",
        total.as_secs_f64() * 1e3,
        longest.0.as_secs_f64() * 1e3,
        longest.1,
        longest_cpu.0.as_secs_f64() * 1e3,
        longest_cpu.1,
        longest_read.load(Ordering::Relaxed) as f64 / 1e6,
        control as f64 / 1e6,
        reads[0].load(Ordering::Relaxed),
        reads[1].load(Ordering::Relaxed),
        reads[2].load(Ordering::Relaxed),
    );
}
