//! What two walks over a store cost as it grows, engine only: `MemoryStore::restore` of N entries
//! with one superseded marker each (what a data directory holds after its keys were rewritten), and
//! `Store::chunk` of N values of one origin, each touched by another (every value then travels with
//! its touch register), cut as the sync protocol cuts chunks and whole.
//! `cargo run --profile checked --example chunk_restore -- 20000`

use std::sync::Arc;
use std::time::Instant;

use peer_buckets_engine::value;
use peer_buckets_engine::Incoming;
use peer_buckets_engine::{
    ChunkLimits, Entry, Expiry, Hlc, MemoryStore, Op, ReplicaId, ReplicaTable, Seq, SeqRanges,
    Store, Write,
};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let table = ReplicaTable::new();
    let id = |node: &str| ReplicaId {
        node: node.into(),
        incarnation: 1,
    };
    let (me, writer, toucher) = (
        table.intern(&id("me")),
        table.intern(&id("writer")),
        table.intern(&id("toucher")),
    );
    let key = |i: u64| -> Arc<str> { format!("sess:{i:08}").into() };
    let stamp = |i: u64| Hlc::from_parts(1_700_000_000_000 + i, 0);

    let entries: Vec<(Arc<str>, Entry)> = (1..=n)
        .map(|i| {
            let entry = Entry {
                value: Some(value::encode_json("{\"user\":1}")),
                hlc: stamp(i),
                origin: writer.clone(),
                seq: Seq::from(n + i),
                expires: Expiry::NEVER,
                touch: None,
            };
            (key(i), entry)
        })
        .collect();
    let markers: Vec<_> = (1..=n)
        .map(|i| (writer.clone(), Seq::from(i), key(i)))
        .collect();
    let contexts = vec![(
        writer.clone(),
        SeqRanges::from_ranges([(Seq::from(1), Seq::from(2 * n))]),
    )];
    let started = Instant::now();
    let restored = MemoryStore::restore(entries, contexts, markers, Vec::new(), Hlc(0), false);
    println!(
        "restore: {n} entries, {n} markers: {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    drop(restored);

    let store = MemoryStore::default();
    let values: Vec<Write> = (1..=n)
        .map(|i| Write {
            key: key(i),
            hlc: stamp(i),
            seq: Seq::from(i),
            op: Op::Set {
                value: value::encode_json("{\"user\":1}"),
                expires: Expiry::NEVER,
            },
        })
        .collect();
    let touches: Vec<(_, Write)> = (1..=n)
        .map(|i| {
            let touch = Write {
                key: key(i),
                hlc: stamp(n + i),
                seq: Seq::from(i),
                op: Op::Touch {
                    expires: Expiry::at_ms(u64::MAX / 2),
                },
            };
            (toucher.clone(), touch)
        })
        .collect();
    let covered = SeqRanges::from_ranges([(Seq::from(1), Seq::from(n))]);
    let chunk = Incoming {
        writes: values,
        covered: &covered,
        superseded: &[],
        superseders: touches,
    };
    store.merge_chunk(&me, &writer, chunk, &mut |_| {});
    for (name, limits) in [
        (
            "cut at 1,024 writes",
            ChunkLimits {
                max_writes: 1024,
                max_bytes: 1 << 20,
            },
        ),
        ("whole", ChunkLimits::UNLIMITED),
    ] {
        let started = Instant::now();
        let (mut start, mut sent) = (Seq::FIRST, 0);
        while start <= Seq::from(n) {
            let chunk = store.chunk(&writer, start, Seq::from(n), limits);
            sent += chunk.writes.len() + chunk.superseders.len();
            start = chunk.covered.max().next().expect("below n");
        }
        println!(
            "chunk {name}: {n} values with their touches ({sent} registers): {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
    }
}
