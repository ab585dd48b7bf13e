//! The durable backend: a node on a data directory comes back with its id and data, only catches up
//! what it missed, makes strict writes wait for the disk, and refuses a directory in use.

use std::path::PathBuf;
use std::time::Duration;

use peer_buckets_engine::acks::{AckLevel, Registered};
use peer_buckets_engine::bucket::Bucket;
use peer_buckets_engine::disk::Durability;
use peer_buckets_engine::error::Error;
use peer_buckets_engine::node::{Config, Node};
use peer_buckets_engine::store::Lifetime;
use peer_buckets_engine::value;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "peer-buckets-durable-{name}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn config(id: Option<&str>, data: Option<&PathBuf>, seeds: Vec<String>) -> Config {
    Config {
        id: id.map(String::from),
        seeds,
        data_dir: data.cloned(),
        heartbeat: Duration::from_millis(100),
        dead_after: Duration::from_millis(600),
        backoff_max: Duration::from_millis(300),
        digest_every: Duration::from_millis(200),
        ..Config::default()
    }
}

fn get(b: &Bucket, key: &str) -> Option<String> {
    let mut out = None;
    b.read(key, &mut |v| {
        if let Some(value::ValueRef::Json(t)) = value::decode(v) {
            out = Some(t.to_string())
        }
    });
    out
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_same_directory_keeps_id_incarnation_and_data() {
    let d = dir("restart");
    let node = Node::start(config(None, Some(&d), vec![])).await.unwrap();
    let id = node.id().to_string();
    let replica = node.replica().id().clone();
    let b = node.bucket("s");
    for k in 0..2000 {
        b.write(
            format!("k{k}"),
            Some(value::encode_json(&k.to_string())),
            Lifetime::Forever,
        );
    }
    b.write("k7", None, Lifetime::Forever);
    b.write("ttl", Some(value::encode_json("1")), Lifetime::Ttl(60_000));
    node.close(Duration::from_secs(1)).await;

    let again = Node::start(config(None, Some(&d), vec![])).await.unwrap();
    assert_eq!(
        again.id().to_string(),
        id,
        "the id is kept in the data directory"
    );
    assert_eq!(
        again.replica().id(),
        &replica,
        "a clean stop keeps the incarnation"
    );
    let b = again.bucket("s");
    assert_eq!(b.len(), 2000);
    assert_eq!(get(&b, "k1999").as_deref(), Some("1999"));
    assert_eq!(get(&b, "k7"), None, "the delete survived");
    assert!(b.contains("ttl"));
    // New writes continue the sequence without reusing old seqs.
    let w = b.write("after", Some(value::encode_json("1")), Lifetime::Forever);
    assert_eq!(w.seq, 2003);
    again.close(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_in_use_is_refused_with_a_clear_error() {
    let d = dir("twice");
    let first = Node::start(config(None, Some(&d), vec![])).await.unwrap();
    match Node::start(config(None, Some(&d), vec![])).await {
        Err(Error::DataDirInUse(path)) => assert!(path.contains("twice")),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a second node opened a directory in use"),
    }
    first.close(Duration::from_secs(1)).await;
    // Free again once closed.
    let second = Node::start(config(None, Some(&d), vec![])).await.unwrap();
    second.close(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_another_node_is_refused() {
    let d = dir("owner");
    let a = Node::start(config(Some("a"), Some(&d), vec![]))
        .await
        .unwrap();
    a.close(Duration::from_secs(1)).await;
    match Node::start(config(Some("b"), Some(&d), vec![])).await {
        Err(Error::Storage(msg)) => assert!(msg.contains("belongs to node 'a'"), "{msg}"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("opened another node's directory"),
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_writes_settle_only_once_flushed() {
    let d = dir("strict");
    let node = Node::start(config(None, Some(&d), vec![])).await.unwrap();
    assert!(node.is_strict());
    let mut outcomes = node.ack_outcomes();
    let b = node.bucket("s");
    let mut tickets = Vec::new();
    for k in 0..500 {
        let (_, r) = node.write_acked(
            &b,
            format!("k{k}").into(),
            Some(value::encode_json("1")),
            Lifetime::Forever,
            AckLevel::Local,
            Duration::from_secs(5),
        );
        match r {
            Registered::Pending(t) => tickets.push(t),
            Registered::Met(_) => panic!("a strict write cannot be met before a flush"),
        }
    }
    let mut settled = 0;
    while settled < tickets.len() {
        let o = tokio::time::timeout(Duration::from_secs(5), outcomes.recv())
            .await
            .expect("flushed in time")
            .expect("open");
        assert!(o.met);
        settled += 1;
    }
    node.close(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_receives_only_what_it_missed() {
    let d = dir("catchup");
    let memory = Node::start(config(Some("m"), None, vec![])).await.unwrap();
    let seed = vec![memory.address().to_string()];
    let durable = Node::start(config(Some("d"), Some(&d), seed.clone()))
        .await
        .unwrap();
    let bm = memory.bucket("s");
    for k in 0..20_000 {
        bm.write(
            format!("k{k}"),
            Some(value::encode_json(&"x".repeat(100))),
            Lifetime::Forever,
        );
    }
    let bd = durable.bucket("s");
    eventually("durable peer holds everything", || bd.len() == 20_000).await;
    durable.close(Duration::from_secs(1)).await;

    for k in 20_000..21_000 {
        bm.write(
            format!("k{k}"),
            Some(value::encode_json(&"x".repeat(100))),
            Lifetime::Forever,
        );
    }
    let again = Node::start(config(Some("d"), Some(&d), seed))
        .await
        .unwrap();
    let bd = again.bucket("s");
    assert!(bd.len() >= 20_000, "data came back from disk");
    eventually("caught up", || bd.len() == 21_000).await;
    let received = again.stats().bytes_received;
    let missed = 1_000 * (100 + 8);
    assert!(
        received < 4 * missed,
        "received {received} bytes for about {missed} bytes missed: not a full resync"
    );
    again.close(Duration::from_secs(1)).await;
    memory.close(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaxed_writes_settle_at_once_and_still_reach_the_disk() {
    let d = dir("relaxed");
    let mut cfg = config(None, Some(&d), vec![]);
    cfg.durability = Durability::Relaxed;
    cfg.flush_every = Duration::from_millis(50);
    let node = Node::start(cfg.clone()).await.unwrap();
    assert!(!node.is_strict());
    let b = node.bucket("s");
    let (_, r) = node.write_acked(
        &b,
        "k".into(),
        Some(value::encode_json("1")),
        Lifetime::Forever,
        AckLevel::Local,
        Duration::from_secs(1),
    );
    assert_eq!(r, Registered::Met(vec![]));
    node.close(Duration::from_secs(1)).await;
    let again = Node::start(cfg).await.unwrap();
    assert_eq!(get(&again.bucket("s"), "k").as_deref(), Some("1"));
    again.close(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&d);
}

/// Found by the chaos harness (seed 1): a node restarted on its data directory stamped new writes with
/// its wall clock only, behind the timestamps it had stored (its clock had been pushed ahead by a peer
/// running ahead, or its machine's clock went back), so a local write lost to what the node already held:
/// `set` settled and `get` still returned the old value. A restored store is now observed by the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_stamps_new_writes_after_everything_it_stored() {
    let d = dir("clock");
    let ahead = Config {
        clock: std::sync::Arc::new(peer_buckets_engine::clock::Clock::default()),
        ..config(Some("c"), Some(&d), vec![])
    };
    ahead.clock.set_offset_ms(20_000);
    let node = Node::start(ahead).await.unwrap();
    let b = node.bucket("s");
    b.write("k", Some(value::encode_json("\"old\"")), Lifetime::Forever);
    node.close(Duration::from_millis(500)).await;
    drop(node);

    // The same directory, with the clock 20 s behind where it was.
    let node = Node::start(config(Some("c"), Some(&d), vec![]))
        .await
        .unwrap();
    let b = node.bucket("s");
    assert_eq!(get(&b, "k").as_deref(), Some("\"old\""));
    let stored = b.inspect("k")[0].1.hlc;
    let w = b.write("k", Some(value::encode_json("\"new\"")), Lifetime::Forever);
    assert!(
        w.hlc > stored,
        "the new write must be stamped after the stored one"
    );
    assert_eq!(
        get(&b, "k").as_deref(),
        Some("\"new\""),
        "a local write takes effect"
    );
    node.close(Duration::from_millis(500)).await;
    let _ = std::fs::remove_dir_all(&d);
}

/// The keys a node collected are remembered across a restart: a write older than a collected
/// tombstone that arrives after the restart still meets a stand-in tombstone, not an empty key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collected_keys_are_remembered_across_a_restart() {
    use peer_buckets_engine::clock::Hlc;
    use peer_buckets_engine::ranges::SeqRanges;
    use peer_buckets_engine::replica::{ReplicaId, ReplicaTable};
    use peer_buckets_engine::store::Write;

    let d = dir("collected");
    let fast = |data: &PathBuf| Config {
        tombstone_min_age: Some(Duration::from_millis(100)),
        collect_every: Duration::from_millis(100),
        ..config(None, Some(data), vec![])
    };
    let node = Node::start(fast(&d)).await.unwrap();
    let b = node.bucket("s");
    let set = b.write("k", Some(value::encode_json("1")), Lifetime::Forever);
    tokio::time::sleep(Duration::from_millis(5)).await;
    b.write("k", None, Lifetime::Forever);
    eventually("the tombstone collected", || {
        node.stats().tombstones == 0 && node.stats().collected_remembered == 1
    })
    .await;
    node.close(Duration::from_secs(1)).await;

    let again = Node::start(fast(&d)).await.unwrap();
    let b = again.bucket("s");
    assert_eq!(again.stats().collected_remembered, 1);
    // A replica that was away brings back a write made between the set and the delete.
    let away = ReplicaTable::new().intern(&ReplicaId {
        node: "away".into(),
        incarnation: 1,
    });
    let old = Write {
        key: "k".into(),
        hlc: Hlc(set.hlc.0 + 1),
        seq: 1,
        value: Some(value::encode_json("\"old\"")),
        expires_ms: 0,
        touch: false,
    };
    let merged = b.merge(&away, vec![old], &SeqRanges::new()).unwrap();
    assert_eq!(merged.stand_ins, 1);
    assert_eq!(get(&b, "k"), None, "the deleted key stays deleted");
    again.close(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&d);
}
