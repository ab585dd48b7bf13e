//! Real nodes on loopback inside one process: discovery from one seed, two-way convergence, deletes,
//! joins and peer-up/down.

use std::sync::Arc;
use std::time::Duration;

use peer_buckets_engine::value;
use peer_buckets_engine::Bucket;
use peer_buckets_engine::Lifetime;
use peer_buckets_engine::PeerEventKind;
use peer_buckets_engine::{Config, Node};

mod common;
use common::*;

fn contents(b: &Bucket) -> Vec<(String, String)> {
    let mut out = Vec::new();
    b.scan("", &mut |k, v| out.push((k.to_string(), format!("{v:?}"))));
    out.sort();
    out
}

async fn trio() -> (Node, Node, Node) {
    let a = Node::start(config("a", vec![])).await.unwrap();
    let b = Node::start(config("b", vec![a.address().to_string()]))
        .await
        .unwrap();
    // c knows only b and must learn a through it.
    let c = Node::start(config("c", vec![b.address().to_string()]))
        .await
        .unwrap();
    eventually("full mesh", || {
        [&a, &b, &c]
            .iter()
            .all(|n| n.peers().iter().filter(|p| p.connected).count() == 2)
    })
    .await;
    (a, b, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_learn_each_other_from_one_seed_and_converge() {
    let (a, b, c) = trio().await;
    let buckets: Vec<Arc<Bucket>> = [&a, &b, &c].iter().map(|n| n.bucket("s")).collect();
    for (i, bucket) in buckets.iter().enumerate() {
        for k in 0..300 {
            bucket.write(
                format!("own-{i}-{k}"),
                Some(value::encode_json(&k.to_string())),
                Lifetime::Forever,
            );
            bucket.write(
                format!("shared-{k}"),
                Some(value::encode_json(&format!("{i}"))),
                Lifetime::Forever,
            );
        }
    }
    eventually("identical replicas", || {
        let first = contents(&buckets[0]);
        first.len() == 1200 && buckets.iter().all(|b| contents(b) == first)
    })
    .await;
    buckets[1].write("own-0-0", None, Lifetime::Forever);
    eventually("delete replicated", || {
        buckets.iter().all(|b| get(b, "own-0-0").is_none())
    })
    .await;
    for n in [a, b, c] {
        n.close(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_receives_everything_written_before_it_came() {
    let a = Node::start(config("a", vec![])).await.unwrap();
    let b = Node::start(config("b", vec![a.address().to_string()]))
        .await
        .unwrap();
    let ba = a.bucket("x");
    let bb = b.bucket("x");
    for k in 0..5000 {
        ba.write(
            format!("a{k}"),
            Some(value::encode_json("1")),
            Lifetime::Forever,
        );
        bb.write(
            format!("b{k}"),
            Some(value::encode_json("2")),
            Lifetime::Forever,
        );
    }
    for k in 0..100 {
        ba.write(format!("a{k}"), None, Lifetime::Forever);
    }
    let c = Node::start(config("c", vec![b.address().to_string()]))
        .await
        .unwrap();
    let bc = c.bucket("x");
    eventually("joiner complete", || {
        bc.len() == 9900 && contents(&bc) == contents(&ba)
    })
    .await;
    for n in [a, b, c] {
        n.close(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_down_fires_when_a_peer_leaves_and_up_when_it_returns() {
    let a = Node::start(config("a", vec![])).await.unwrap();
    let mut events = a.events();
    let b = Node::start(config("b", vec![a.address().to_string()]))
        .await
        .unwrap();
    let up = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((up.kind, up.id.as_str()), (PeerEventKind::Up, "b"));
    let b_addr = b.address().to_string();
    b.close(Duration::from_secs(1)).await;
    let down = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((down.kind, down.id.as_str()), (PeerEventKind::Down, "b"));
    // A new run of b on the same address, written to while away, catches a up.
    let mut cfg = config("b", vec![a.address().to_string()]);
    cfg.listen = b_addr;
    let b2 = Node::start(cfg).await.unwrap();
    b2.bucket("y")
        .write("k", Some(value::encode_json("\"v\"")), Lifetime::Forever);
    let up = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((up.kind, up.id.as_str()), (PeerEventKind::Up, "b"));
    let ya = a.bucket("y");
    eventually("write from the new run", || {
        get(&ya, "k").as_deref() == Some("\"v\"")
    })
    .await;
    a.close(Duration::from_secs(1)).await;
    b2.close(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_clock_runs_far_ahead_is_refused_and_one_within_the_skew_is_accepted() {
    let a = Node::start(config("a", vec![])).await.unwrap();
    let ahead = config("ahead", vec![a.address().to_string()]);
    ahead.clock.set_offset_ms(5 * 60_000);
    let ahead = Node::start(ahead).await.unwrap();
    let behind = config("behind", vec![a.address().to_string()]);
    behind.clock.set_offset_ms(-30_000);
    let behind = Node::start(behind).await.unwrap();
    ahead.bucket("s").write(
        "from-ahead",
        Some(value::encode_json("1")),
        Lifetime::Forever,
    );
    behind.bucket("s").write(
        "from-behind",
        Some(value::encode_json("1")),
        Lifetime::Forever,
    );
    let sa = a.bucket("s");
    eventually("the peer behind replicates", || {
        get(&sa, "from-behind").is_some()
    })
    .await;
    eventually("the peer ahead is refused", || {
        a.stats().clock_skew_refused > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        get(&sa, "from-ahead").is_none(),
        "writes of a refused peer never arrive"
    );
    assert!(!a.peers().iter().any(|p| p.id == "ahead" && p.connected));
    for n in [a, ahead, behind] {
        n.close(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_stay_bounded_under_a_steady_set_and_delete_load() {
    let mk = |id: &str, seeds: Vec<String>| Config {
        tombstone_min_age: Some(Duration::from_millis(300)),
        collect_every: Duration::from_millis(200),
        ..config(id, seeds)
    };
    let a = Node::start(mk("a", vec![])).await.unwrap();
    let b = Node::start(mk("b", vec![a.address().to_string()]))
        .await
        .unwrap();
    eventually("linked", || a.stats().peers == 1 && b.stats().peers == 1).await;
    let ba = a.bucket("s");
    let mut peak = 0;
    let mut written = 0;
    let start = std::time::Instant::now();
    // At least 4 s and more than 20,000 deletes: a loaded machine takes longer to write them, rather than
    // writing fewer.
    while start.elapsed() < Duration::from_secs(4) || written <= 20_000 {
        for _ in 0..200 {
            let key: Arc<str> = format!("k{written}").into();
            ba.write(
                key.clone(),
                Some(value::encode_json("1")),
                Lifetime::Forever,
            );
            ba.write(key, None, Lifetime::Forever);
            written += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        peak = peak.max(a.stats().tombstones.max(b.stats().tombstones));
    }
    assert!(
        peak < written / 2,
        "tombstones should be collected as the load goes on: peak {peak} of {written} deletes"
    );
    eventually("all collected once the load stops", || {
        a.stats().tombstones == 0 && b.stats().tombstones == 0
    })
    .await;
    assert!(a.stats().tombstones_collected > 0 && b.stats().tombstones_collected > 0);
    for n in [a, b] {
        n.close(Duration::from_secs(1)).await;
    }
}

/// Found by the chaos harness (seed 602, three nodes): a peer restarted empty whose seeds it could not
/// reach yet knew no member, took itself for the whole cluster and collected its own fresh tombstones.
/// Its deletes were then lost (nobody else had seen them), and every peer it met afterwards, lacking
/// the collected dots, took itself for one that had missed a collection and resynced in full,
/// rewriting its old writes. A peer with seeds collects nothing until it has met a member.
/// Every overwrite leaves a superseded marker (so a coverage claim carries the newer register) until
/// every member holds the write that superseded it. Markers used to wait for every member to hold the
/// key's *current* registers, which never happens while hot keys keep being rewritten: memory grew by
/// ~100 bytes per write for as long as the load lasted (found by the local set benchmark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseded_markers_stay_bounded_while_hot_keys_keep_being_rewritten() {
    let mk = |id: &str, seeds: Vec<String>| Config {
        collect_every: Duration::from_millis(200),
        ..config(id, seeds)
    };
    let a = Node::start(mk("a", vec![])).await.unwrap();
    let b = Node::start(mk("b", vec![a.address().to_string()]))
        .await
        .unwrap();
    eventually("linked", || a.stats().peers == 1 && b.stats().peers == 1).await;
    let (ba, bb) = (a.bucket("s"), b.bucket("s"));
    let markers = || ba.store().marker_count().max(bb.store().marker_count());
    let mut peak = 0;
    let mut written = 0;
    let start = std::time::Instant::now();
    // At least 4 s and more than 40,000 writes, however long a loaded machine takes to write them.
    while start.elapsed() < Duration::from_secs(4) || written <= 40_000 {
        for i in 0..400 {
            // Both write the same 300 hot keys: remote writes supersede local ones and back.
            let key: Arc<str> = format!("hot{}", (written + i) % 300).into();
            let value = Some(value::encode_json(&written.to_string()));
            if i % 2 == 0 { &ba } else { &bb }.write(key, value, Lifetime::Forever);
        }
        written += 400;
        tokio::time::sleep(Duration::from_millis(10)).await;
        peak = peak.max(markers());
    }
    assert!(
        peak < written / 4,
        "markers should be compacted as the load goes on: peak {peak} after {written} writes"
    );
    eventually("all compacted once the load stops", || markers() == 0).await;
    assert_eq!(contents(&ba), contents(&bb));
    for n in [a, b] {
        n.close(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_has_not_met_its_seeds_collects_nothing() {
    let mk = |id: &str, seeds: Vec<String>| Config {
        tombstone_min_age: Some(Duration::from_millis(100)),
        collect_every: Duration::from_millis(100),
        ..config(id, seeds)
    };
    // b's address, reserved; b starts later.
    let b_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let a = Node::start(mk("a", vec![b_addr.clone()])).await.unwrap();
    let ba = a.bucket("s");
    for k in 0..20 {
        let key: Arc<str> = format!("k{k}").into();
        ba.write(
            key.clone(),
            Some(value::encode_json("1")),
            Lifetime::Forever,
        );
        ba.write(key, None, Lifetime::Forever);
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(a.stats().tombstones_collected, 0, "collected alone");
    assert_eq!(a.stats().tombstones, 20);
    let b = Node::start(Config {
        listen: b_addr,
        ..mk("b", vec![])
    })
    .await
    .unwrap();
    eventually("linked", || a.stats().peers == 1 && b.stats().peers == 1).await;
    eventually("collected once both hold the tombstones", || {
        a.stats().tombstones == 0 && b.stats().tombstones == 0
    })
    .await;
    assert_eq!(b.stats().full_resyncs, 0, "b missed nothing");
    for n in [a, b] {
        n.close(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_up_that_happens_before_anyone_subscribes_is_delivered_to_the_first_subscriber() {
    let a = Node::start(config("early-a", vec![])).await.unwrap();
    let b = Node::start(config("early-b", vec![a.address().to_string()]))
        .await
        .unwrap();
    eventually("linked", || b.peers().iter().any(|p| p.connected)).await;
    let mut events = b.events();
    let first = tokio::time::timeout(Duration::from_secs(2), events.recv())
        .await
        .expect("the early peer-up is kept")
        .expect("channel open");
    assert_eq!(first.kind, PeerEventKind::Up);
    assert_eq!(first.id, "early-a");
    a.close(Duration::ZERO).await;
    b.close(Duration::ZERO).await;
}

/// A long bucket name (they may be up to 255 bytes): 100,000 of them alone take more than one frame.
fn long_bucket_name(i: usize) -> String {
    format!("{i:06}/tenant/{:x<185}", "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_holding_100000_buckets_link_and_converge() {
    const BUCKETS: usize = 100_000;
    // What this test is about is the link; the periodic passes over every bucket (digests, pull
    // planning, collection rounds) are slow over 100,000 buckets in a debug build, and are spaced
    // out (a pull planned while the push is still under way would fetch the same writes twice).
    // Each holds more buckets than the default `max_buckets` lets a peer create.
    let slow_digests = |c: Config| Config {
        max_buckets: 2 * BUCKETS,
        digest_every: Duration::from_secs(30),
        pull_every: Duration::from_secs(30),
        collect_every: Duration::from_secs(600),
        dead_after: Duration::from_secs(10),
        ..c
    };
    let a = Node::start(slow_digests(config("a", vec![])))
        .await
        .unwrap();
    for i in 0..BUCKETS {
        a.bucket(&long_bucket_name(i)).write(
            "k",
            Some(value::encode_json(&i.to_string())),
            Lifetime::Forever,
        );
    }
    let b = Node::start(slow_digests(config("b", vec![a.address().to_string()])))
        .await
        .unwrap();
    b.bucket("from-b")
        .write("k", Some(value::encode_json("1")), Lifetime::Forever);
    let last = b.bucket(&long_bucket_name(BUCKETS - 1));
    eventually_within(
        "b holds the last bucket of a",
        Duration::from_secs(120),
        || get(&last, "k").is_some(),
    )
    .await;
    eventually_within("b holds every bucket of a", Duration::from_secs(60), || {
        b.stats().keys > BUCKETS
    })
    .await;
    eventually_within("a holds b's bucket", Duration::from_secs(30), || {
        get(&a.bucket("from-b"), "k").is_some()
    })
    .await;
    for i in [0, BUCKETS / 2, BUCKETS - 1] {
        assert_eq!(
            get(&b.bucket(&long_bucket_name(i)), "k"),
            Some(i.to_string())
        );
    }
    for n in [a, b] {
        n.close(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_returns_once_every_linked_peer_holds_every_write_made_before_it() {
    let a = Node::start(config("a", vec![])).await.unwrap();
    let b = Node::start(config("b", vec![a.address().to_string()]))
        .await
        .unwrap();
    eventually("linked", || {
        a.peers().iter().any(|p| p.connected) && b.peers().iter().any(|p| p.connected)
    })
    .await;
    let (mine, theirs) = (a.bucket("s"), b.bucket("s"));
    for k in 0..20_000 {
        mine.write(
            format!("k{k}"),
            Some(value::encode_json(&k.to_string())),
            Lifetime::Forever,
        );
    }
    // Measured at once, the burst is not acknowledged yet: the drain reports what b lacks.
    let early = a.drain(Duration::ZERO).await;
    assert!(
        matches!(early.as_slice(), [(peer, n)] if peer == "b" && *n > 0),
        "{early:?}"
    );
    let left = a.drain(Duration::from_secs(20)).await;
    assert!(left.is_empty(), "{left:?}");
    // Acknowledged means applied: b holds every write the moment the drain returns.
    assert_eq!(theirs.len(), 20_000);
    // A peer no longer linked is not waited for.
    b.close(Duration::from_secs(1)).await;
    eventually("b gone", || a.peers().iter().all(|p| !p.connected)).await;
    mine.write("after", Some(value::encode_json("1")), Lifetime::Forever);
    let started = std::time::Instant::now();
    assert!(a.drain(Duration::from_secs(20)).await.is_empty());
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        a.close(Duration::from_secs(1)).await,
        "no data directory: nothing owed"
    );
}
