//! Criterion benchmarks of the engine's hot paths: a local write (store insert), merging a batch of
//! remote writes, reading, walking the index into a chunk, encoding/decoding an Ops frame, and a
//! counter's increment and read at 1k, 40k and 400k counter keys.
//! `cargo bench -p peer-buckets-engine` (`-- counter` for the counter's alone)

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use peer_buckets_engine::counter::{self, Counter, Tally};
use peer_buckets_engine::value;
use peer_buckets_engine::wire::{self, Message, OpsBatch};
use peer_buckets_engine::{ChunkLimits, Expiry, Lifetime, MemoryStore, Op, Store, Write};
use peer_buckets_engine::{Clock, Hlc};
use peer_buckets_engine::{ReplicaId, ReplicaTable};
use peer_buckets_engine::{Seq, SeqRanges};

fn session() -> Box<[u8]> {
    value::encode_json(&format!(
        "{{\"user\":\"user-00000\",\"roles\":[\"reader\",\"writer\"],\"csrf\":\"{}\",\"ip\":\"10.1.2.3\"}}",
        "x".repeat(120)
    ))
}

fn writes(n: usize) -> Vec<Write> {
    (0..n)
        .map(|i| Write {
            key: format!("sess:{i}").into(),
            hlc: Hlc::from_parts(1_764_000_000_000, i as u16),
            seq: Seq::from(i as u64 + 1),
            op: Op::Set {
                value: session(),
                expires: Expiry::NEVER,
            },
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let table = ReplicaTable::new();
    let me = table.intern(&ReplicaId {
        node: "me".into(),
        incarnation: 1,
    });
    let other = table.intern(&ReplicaId {
        node: "other".into(),
        incarnation: 1,
    });
    let clock = Clock::default();
    let value = session();

    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    let store = MemoryStore::new();
    let mut i = 0u64;
    g.bench_function("write_local (insert, 100k keys cycling)", |b| {
        b.iter(|| {
            i += 1;
            let key = format!("sess:{}", i % 100_000);
            store.write_local(
                &me,
                &clock,
                &key,
                Some(value.clone()),
                Lifetime::Forever,
                &mut |_| {},
            )
        })
    });
    g.bench_function("read (hit)", |b| {
        b.iter(|| store.read("sess:4242", &|| 0, &mut |v| assert!(!v.is_empty())))
    });
    g.finish();

    let mut g = c.benchmark_group("merge");
    g.throughput(Throughput::Elements(1024));
    g.bench_function("merge a batch of 1024 remote writes", |b| {
        b.iter_batched(
            || (MemoryStore::new(), writes(1024)),
            |(s, batch)| {
                s.merge(
                    &other,
                    &other,
                    batch,
                    &SeqRanges::up_to(Seq::from(1024)),
                    &mut |_| {},
                )
            },
            BatchSize::SmallInput,
        )
    });
    let source = MemoryStore::new();
    source.merge(
        &other,
        &other,
        writes(100_000),
        &SeqRanges::up_to(Seq::from(100_000)),
        &mut |_| {},
    );
    g.bench_function("chunk: walk 1024 writes out of the index", |b| {
        b.iter(|| {
            source.chunk(
                &other,
                Seq::from(50_000),
                Seq::from(60_000),
                ChunkLimits::writes(1024),
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("wire");
    let msg = Message::Ops(OpsBatch {
        bucket: "sessions".into(),
        origin: other.id().clone(),
        covered: SeqRanges::up_to(Seq::from(1024)),
        writes: writes(1024).into_iter().map(Into::into).collect(),
        superseders: Vec::new(),
        superseded: Vec::new(),
    });
    let mut frame = Vec::new();
    wire::encode_frame(&msg, &mut frame).expect("encodes");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("encode an Ops frame of 1024 writes", |b| {
        let mut buf = Vec::with_capacity(frame.len());
        b.iter(|| {
            buf.clear();
            wire::encode_frame(&msg, &mut buf).expect("encodes")
        })
    });
    g.bench_function("decode an Ops frame of 1024 writes", |b| {
        b.iter(|| wire::decode_frame(&frame).expect("decodes").expect("whole"))
    });
    g.finish();
}

/// A counter's increment and read against the number of keys it holds (one writer register each,
/// in a live window): the cost must not grow with them.
fn counter_bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let node = runtime
        .block_on(peer_buckets_engine::Node::start(
            peer_buckets_engine::Config::default(),
        ))
        .expect("a node");
    let mut g = c.benchmark_group("counter");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    let end = node.clock().now().physical_ms() + 3_600_000;
    let mut held = 0;
    for keys in [1_000, 40_000, 400_000] {
        let bucket = node.bucket(&counter::bucket_name("bench"));
        // The registers an increment per key leaves, written as such (an increment per key would
        // cost the setup what is measured).
        for k in held..keys {
            let planned = counter::writer_register((1, end), Tally { inc: 1, dec: 0 });
            bucket.write(
                format!("ip:{k}\0{}", planned.suffix),
                Some(value::encode_bytes(&planned.raw)),
                planned.lifetime,
            );
        }
        held = keys;
        let ctr = Counter::new(bucket.clone(), node.clock().clone(), 1);
        let mut i = 0u64;
        g.bench_function(format!("incr ({keys} keys)"), |b| {
            b.iter(|| {
                i += 7919;
                ctr.add(&format!("ip:{}", i % keys), 1, 3_600_000, |w| {
                    bucket.write(w.key, Some(w.value), w.lifetime);
                })
            })
        });
        g.bench_function(format!("get ({keys} keys)"), |b| {
            b.iter(|| {
                i += 7919;
                ctr.value(&format!("ip:{}", i % keys))
            })
        });
    }
    g.finish();
    runtime.block_on(node.close(std::time::Duration::from_secs(1)));
}

criterion_group!(benches, bench, counter_bench);
criterion_main!(benches);
