//! Counters on real nodes over loopback: increments made concurrently on every node end as the exact
//! total on every node, and a node restarted empty counts on without overwriting what it counted.

use std::sync::Arc;
use std::time::Duration;

use peer_buckets_engine::counter::{bucket_name, Counter};
use peer_buckets_engine::{Config, Node};

mod common;
use common::*;

fn counter(node: &Node, token: u64) -> Arc<Counter> {
    Arc::new(Counter::new(
        node.bucket(&bucket_name("hits")),
        node.clock().clone(),
        token,
    ))
}

/// Adds `by` and stores the register as a plain local write.
fn add(ctr: &Counter, key: &str, by: i64, ttl_ms: u64) -> i64 {
    let bucket = ctr.bucket().clone();
    ctr.add(key, by, ttl_ms, |w| {
        bucket.write(w.key, Some(w.value), w.lifetime);
    })
    .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_on_three_nodes_end_as_the_exact_total_everywhere() {
    let a = Node::start(config("a", vec![])).await.unwrap();
    let b = Node::start(config("b", vec![a.address().to_string()]))
        .await
        .unwrap();
    let c = Node::start(config("c", vec![a.address().to_string()]))
        .await
        .unwrap();
    let counters = [counter(&a, 1), counter(&b, 2), counter(&c, 3)];
    let mut tasks = Vec::new();
    for (i, ctr) in counters.iter().enumerate() {
        let ctr = ctr.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..300u64 {
                // Increments and decrements, windowed or not, on shared keys.
                let by = if n % 7 == 0 { -1 } else { 1 };
                let ttl = if n % 2 == 0 { 60_000 } else { 0 };
                add(&ctr, &format!("k{}", n % 3), by, ttl);
                if n % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(5 + i as u64)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Per node and key: 300 ops over 3 keys, 100 each; those with n % 7 == 0 decrement.
    let expected: Vec<i64> = (0..3)
        .map(|k| {
            3 * (0..300u64)
                .filter(|n| n % 3 == k)
                .map(|n| if n % 7 == 0 { -1 } else { 1 })
                .sum::<i64>()
        })
        .collect();
    eventually("every node shows the exact totals", || {
        counters.iter().all(|c| {
            (0..3)
                .map(|k| c.value(&format!("k{k}")))
                .collect::<Vec<_>>()
                == expected
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_empty_counts_on_without_overwriting_its_earlier_increments() {
    let a = Node::start(config("a", vec![])).await.unwrap();
    let b = Node::start(config("b", vec![a.address().to_string()]))
        .await
        .unwrap();
    let ca = counter(&a, 1);
    let cb = counter(&b, 2);
    for _ in 0..10 {
        add(&cb, "k", 1, 0);
    }
    eventually("a sees b's 10", || ca.value("k") == 10).await;
    let b_addr = b.address();
    b.close(Duration::from_secs(1)).await;
    // b comes back empty, as a new process: a new token, its old register kept by a.
    let b = Node::start(Config {
        listen: b_addr.to_string(),
        ..config("b", vec![a.address().to_string()])
    })
    .await
    .unwrap();
    let cb = counter(&b, 3);
    assert!(add(&cb, "k", 1, 0) >= 1);
    eventually("both show 11", || {
        ca.value("k") == 11 && cb.value("k") == 11
    })
    .await;
}

/// A rate limiter admits a request when the count its increment resolves with is within the limit.
/// That count must be the one at the increment's own write: counting increments that landed after it
/// (a remote register applied between the write and the read) let two servers each see the other's
/// later hits, and a burst spread over two servers admitted fewer requests than the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_increment_resolves_with_the_count_at_its_write_not_with_increments_made_after_it() {
    let a = Node::start(config("a", vec![])).await.unwrap();
    let here = counter(&a, 1);
    // Another process's register, as it arrives from a peer.
    let there = counter(&a, 2);
    assert_eq!(add(&there, "k", 1, 60_000), 1);
    let bucket = here.bucket().clone();
    let (_, seen) = here.add("k", 1, 60_000, |w| {
        bucket.write(w.key, Some(w.value), w.lifetime);
        // An increment made elsewhere after this one's write, applied before the call returns.
        add(&there, "k", 1, 60_000);
    });
    assert_eq!(
        seen, 2,
        "the increment saw the one before it and itself, not the one after it"
    );
    assert_eq!(here.value("k"), 3);
    a.close(Duration::from_secs(1)).await;
}

/// A process restarted on its data directory opens its counter over the registers the disk gave
/// back: the counter's index is filled from them, so every key reads its value and the index holds
/// exactly what the bucket shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_restarted_on_its_data_directory_reads_every_key_through_its_index() {
    let dir = std::env::temp_dir().join(format!(
        "peer-buckets-counter-restart-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let on_disk = || Config {
        data_dir: Some(dir.clone()),
        ..config("a", vec![])
    };
    let a = Node::start(on_disk()).await.unwrap();
    let c = counter(&a, 1);
    for k in 0..200 {
        add(
            &c,
            &format!("k{k}"),
            k + 1,
            if k % 2 == 0 { 60_000 } else { 0 },
        );
    }
    c.reset("k7", |w| {
        c.bucket().write(w.key, Some(w.value), w.lifetime);
    });
    c.check_index().unwrap();
    drop(c);
    a.close(Duration::from_secs(1)).await;

    let a = Node::start(on_disk()).await.unwrap();
    let c = counter(&a, 2);
    c.check_index().unwrap();
    for k in 0..200 {
        let expected = if k == 7 { 0 } else { k + 1 };
        assert_eq!(
            c.value(&format!("k{k}")),
            expected,
            "k{k} after the restart"
        );
    }
    assert_eq!(add(&c, "k3", 1, 0), 5);
    c.check_index().unwrap();
    a.close(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
