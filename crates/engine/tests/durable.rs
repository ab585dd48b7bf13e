//! The durable backend: a node on a data directory comes back with its id and data, only catches up
//! what it missed, makes strict writes wait for the disk, and refuses a directory in use; on a disk
//! that fails (the simulated one), no settled write is lost and nothing unstored is claimed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use peer_buckets_engine::value;
use peer_buckets_engine::Durability;
use peer_buckets_engine::Error;
use peer_buckets_engine::Lifetime;
use peer_buckets_engine::Seq;
use peer_buckets_engine::WarningCode;
use peer_buckets_engine::{AckEnd, AckLevel, Registered};
use peer_buckets_engine::{Config, Node};
use peer_buckets_engine::{Expiry, Op};
use peer_buckets_engine::{FaultKind, Faults, SimDisk};

mod common;
use common::*;

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
        data_dir: data.cloned(),
        ..common::config("", seeds)
    }
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
    assert_eq!(w.seq, Seq::from(2003));
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
            // Met at once only when a flush that began after the write already synced it (the
            // flusher may win that race on a fast disk); it is on disk either way.
            Registered::Met(_) => {}
        }
    }
    assert!(
        !tickets.is_empty(),
        "500 strict writes in a row all met at once: none waited for its fsync"
    );
    let mut settled = 0;
    while settled < tickets.len() {
        let o = tokio::time::timeout(Duration::from_secs(5), outcomes.recv())
            .await
            .expect("flushed in time")
            .expect("open");
        assert_eq!(o.end, AckEnd::Met);
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
        clock: std::sync::Arc::new(peer_buckets_engine::Clock::default()),
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
    use peer_buckets_engine::Hlc;
    use peer_buckets_engine::SeqRanges;
    use peer_buckets_engine::{ReplicaId, ReplicaTable};

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
    let old = write("k", Hlc(set.hlc.0 + 1), 1, Some("old"));
    let merged = b.merge(&away, vec![old], &SeqRanges::new()).unwrap();
    assert_eq!(merged.stand_ins, 1);
    assert_eq!(get(&b, "k"), None, "the deleted key stays deleted");
    again.close(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&d);
}

/// A collected key's register keeps its whole place in the last-writer-wins order `(hlc, origin)`
/// across a restart: a write stamped with the collected tombstone's very time by an origin that ranks
/// above the tombstone's beat it, and still does after the restart (it is applied, not answered with
/// a stand-in), while one by an origin ranking below stays guarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_collected_key_guards_only_writes_it_beats_by_origin() {
    use peer_buckets_engine::Write;
    use peer_buckets_engine::{ReplicaId, ReplicaTable};
    use peer_buckets_engine::{Seq, SeqRanges};

    let d = dir("collected-origin");
    let fast = |data: &PathBuf| Config {
        tombstone_min_age: Some(Duration::from_millis(100)),
        collect_every: Duration::from_millis(100),
        ..config(Some("m"), Some(data), vec![])
    };
    let node = Node::start(fast(&d)).await.unwrap();
    let b = node.bucket("s");
    b.write("k", Some(value::encode_json("1")), Lifetime::Forever);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let delete = b.write("k", None, Lifetime::Forever);
    eventually("the tombstone collected", || {
        node.stats().tombstones == 0 && node.stats().collected_remembered == 1
    })
    .await;
    node.close(Duration::from_secs(1)).await;

    let again = Node::start(fast(&d)).await.unwrap();
    let b = again.bucket("s");
    assert_eq!(again.stats().collected_remembered, 1);
    let table = ReplicaTable::new();
    let twin = |node: &str, value: &str| {
        let origin = table.intern(&ReplicaId {
            node: node.into(),
            incarnation: 1,
        });
        let write = Write {
            key: "k".into(),
            hlc: delete.hlc,
            seq: Seq::from(1),
            op: Op::Set {
                value: value::encode_json(value),
                expires: Expiry::NEVER,
            },
        };
        (origin, write)
    };
    // "a" ranks below "m": the tombstone beat it, and still guards the key.
    let (below, lost) = twin("a", "\"lost\"");
    let merged = b.merge(&below, vec![lost], &SeqRanges::new()).unwrap();
    assert_eq!(merged.stand_ins, 1, "a write the tombstone beat is guarded");
    assert_eq!(get(&b, "k"), None);
    // "z" ranks above "m": its write beat the tombstone and must win here as everywhere.
    let (above, won) = twin("z", "\"won\"");
    let merged = b.merge(&above, vec![won], &SeqRanges::new()).unwrap();
    assert_eq!(
        merged.stand_ins, 0,
        "no stand-in for a write newer than the tombstone"
    );
    assert_eq!(get(&b, "k").as_deref(), Some("\"won\""));
    again.close(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&d);
}

// ---- A disk that fails (issue 12, behaviour 6), on the simulated disk ----

fn sim_config(id: &str, disk: &SimDisk, durability: Durability, seeds: Vec<String>) -> Config {
    Config {
        data_dir: Some(PathBuf::from(format!("/sim/{id}"))),
        file_system: Arc::new(disk.mount()),
        durability,
        flush_every: Duration::from_millis(20),
        ..config(Some(id), None, seeds)
    }
}

/// Writes `keys` (value: the key) with `durability` waiting for the disk, ten at a time; returns how
/// each ended. Every write must end within the timeout: a strict write never hangs on a failing disk.
async fn write_all(
    node: &Node,
    outcomes: &mut tokio::sync::mpsc::UnboundedReceiver<peer_buckets_engine::AckOutcome>,
    keys: impl IntoIterator<Item = String>,
) -> Vec<(String, AckEnd)> {
    let b = node.bucket("s");
    let keys: Vec<String> = keys.into_iter().collect();
    let mut out = Vec::new();
    for batch in keys.chunks(10) {
        let mut waiting = HashMap::new();
        for key in batch {
            let (_, r) = node.write_acked(
                &b,
                key.as_str().into(),
                Some(value::encode_json(&format!("{key:?}"))),
                Lifetime::Forever,
                AckLevel::Local,
                Duration::from_secs(30),
            );
            match r {
                Registered::Met(_) => out.push((key.clone(), AckEnd::Met)),
                Registered::Pending(t) => {
                    waiting.insert(t, key.clone());
                }
            }
        }
        while !waiting.is_empty() {
            let o = tokio::time::timeout(Duration::from_secs(5), outcomes.recv())
                .await
                .expect("a strict write ends in time, met or failed")
                .expect("open");
            let key = waiting.remove(&o.ticket).expect("a ticket of this batch");
            assert_ne!(o.end, AckEnd::TimedOut, "{key}");
            out.push((key, o.end));
        }
    }
    out
}

/// The power is cut with the node running (a SIGKILL and a lost page cache at once), then restored.
fn crash(node: Node, disk: &SimDisk) {
    disk.crash();
    drop(node);
    disk.power_on();
}

/// Every origin's context in every bucket is backed by stored writes: with distinct keys and no
/// overwrite, each dot the context covers is in the index.
fn context_is_backed(node: &Node) {
    let b = node.bucket("s");
    for (origin, ctx) in b.store().context() {
        let stored = b.store().stored_dots(&origin, &ctx);
        assert_eq!(
            stored,
            ctx,
            "the context of {:?} claims writes the disk does not hold",
            origin.id()
        );
    }
}

/// How many `EDISK` warnings `node` emitted.
fn edisk(node: &Node) -> u64 {
    node.stats()
        .warnings
        .iter()
        .find(|(code, _)| *code == WarningCode::Disk)
        .map_or(0, |(_, n)| *n)
}

fn holds(node: &Node, key: &str) -> bool {
    get(&node.bucket("s"), key).as_deref() == Some(format!("{key:?}").as_str())
}

/// Strict writes while a write or a sync fails (EIO or ENOSPC, half the calls): those whose flush
/// failed end with `DiskFailed` instead of settling; once the disk is back, new writes settle and the
/// failed ones are stored by the next flush; after a power cut every write is there and the context
/// claims nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_writes_during_disk_failures_end_in_edisk_and_none_is_lost_after_a_crash() {
    let cases = [
        (1.0, 0.0, FaultKind::Eio),
        (0.5, 0.0, FaultKind::Enospc),
        (0.0, 0.5, FaultKind::Eio),
        (0.0, 1.0, FaultKind::Enospc),
        (0.3, 0.3, FaultKind::Either),
    ];
    for seed in 1..=3u64 {
        for (case, &(write, sync, kind)) in cases.iter().enumerate() {
            let disk = SimDisk::new(seed * 100 + case as u64);
            let node = Node::start(sim_config("a", &disk, Durability::Strict, vec![]))
                .await
                .unwrap();
            let mut outcomes = node.ack_outcomes();
            let mut warnings = node.warnings();
            let key = |phase: &str, i: u32| format!("{phase}{i}");
            let before = write_all(&node, &mut outcomes, (0..30).map(|i| key("before", i))).await;
            assert!(before.iter().all(|(_, e)| *e == AckEnd::Met));
            disk.set_faults(Faults {
                write,
                sync,
                kind,
                capacity: None,
            });
            let during = write_all(&node, &mut outcomes, (0..100).map(|i| key("during", i))).await;
            let failed = during
                .iter()
                .filter(|(_, e)| *e == AckEnd::DiskFailed)
                .count();
            let case = format!("seed {seed}, write {write}, sync {sync}, {kind:?}");
            assert!(failed > 0, "{case}: no strict write failed");
            assert!(edisk(&node) > 0, "{case}: no EDISK warning counted");
            let w = warnings.try_recv().expect("an EDISK warning event");
            assert_eq!(w.code, WarningCode::Disk, "{case}: {}", w.message);
            disk.set_faults(Faults::default());
            let after = write_all(&node, &mut outcomes, (0..30).map(|i| key("after", i))).await;
            assert!(
                after.iter().all(|(_, e)| *e == AckEnd::Met),
                "{case}: strict writes settle again once the disk is back"
            );
            crash(node, &disk);
            let node = Node::start(sim_config("a", &disk, Durability::Strict, vec![]))
                .await
                .unwrap();
            for (k, _) in before.iter().chain(&during).chain(&after) {
                assert!(holds(&node, k), "{case}: {k} lost");
            }
            context_is_backed(&node);
            node.close(Duration::from_secs(1)).await;
        }
    }
}

/// The power is cut while the disk still fails: every write that settled is back, what was not stored
/// is not claimed by the stored context, in strict and relaxed mode alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_the_disk_fails_keeps_every_settled_write_and_claims_nothing_unstored() {
    for seed in 1..=4u64 {
        for durability in [Durability::Strict, Durability::Relaxed] {
            let disk = SimDisk::new(seed);
            let node = Node::start(sim_config("a", &disk, durability, vec![]))
                .await
                .unwrap();
            let mut outcomes = node.ack_outcomes();
            let settled = write_all(&node, &mut outcomes, (0..40).map(|i| format!("ok{i}"))).await;
            // Relaxed writes settle at once: they are durable once a flush after them succeeded.
            tokio::time::sleep(Duration::from_millis(200)).await;
            disk.set_faults(Faults {
                write: 0.5,
                sync: 0.5,
                kind: FaultKind::Either,
                capacity: None,
            });
            let during = write_all(&node, &mut outcomes, (0..60).map(|i| format!("bad{i}"))).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            crash(node, &disk);
            disk.set_faults(Faults::default());
            let node = Node::start(sim_config("a", &disk, durability, vec![]))
                .await
                .unwrap();
            let case = format!("seed {seed}, {durability:?}");
            for (k, _) in &settled {
                assert!(holds(&node, k), "{case}: {k} lost");
            }
            if durability == Durability::Strict {
                for (k, end) in &during {
                    assert!(
                        *end == AckEnd::DiskFailed || holds(&node, k),
                        "{case}: {k} settled and lost"
                    );
                }
            }
            context_is_backed(&node);
            node.close(Duration::from_secs(1)).await;
        }
    }
}

/// Writes of a peer that arrived while this node's disk failed, and that it never stored, are not
/// claimed by what it stored: after a power cut it pulls them again and ends with all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_a_failed_flush_dropped_are_pulled_again_from_peers_after_a_crash() {
    for durability in [Durability::Strict, Durability::Relaxed] {
        let other = Node::start(config(Some("m"), None, vec![])).await.unwrap();
        let seeds = vec![other.address().to_string()];
        let disk = SimDisk::new(7);
        let node = Node::start(sim_config("a", &disk, durability, seeds.clone()))
            .await
            .unwrap();
        let bm = other.bucket("s");
        let b = node.bucket("s");
        let write = |range: std::ops::Range<u32>| {
            for i in range {
                let k = format!("m{i}");
                bm.write(
                    k.as_str(),
                    Some(value::encode_json(&format!("{k:?}"))),
                    Lifetime::Forever,
                );
            }
        };
        write(0..200);
        eventually("the first writes arrive", || b.len() == 200).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        disk.set_faults(Faults {
            write: 1.0,
            sync: 0.0,
            kind: FaultKind::Enospc,
            capacity: None,
        });
        write(200..400);
        eventually("the writes during the failure arrive", || b.len() == 400).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The disk comes back for a moment: a flush that would claim what the failed ones dropped.
        disk.set_faults(Faults::default());
        write(400..401);
        eventually("one more arrives", || b.len() == 401).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        crash(node, &disk);
        let node = Node::start(sim_config("a", &disk, durability, seeds))
            .await
            .unwrap();
        context_is_backed(&node);
        let b = node.bucket("s");
        eventually("every write is held again", || {
            (0..401).all(|i| holds(&node, &format!("m{i}")))
        })
        .await;
        assert_eq!(b.len(), 401);
        node.close(Duration::from_secs(1)).await;
        other.close(Duration::from_secs(1)).await;
    }
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` when this process may not mount (not root, or no mount namespace): the caller skips.
    fn mount(name: &str, size: &str) -> Option<Tmpfs> {
        let path = dir(name);
        std::fs::create_dir_all(&path).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::fs::remove_dir(&path);
            return None;
        }
        Some(Tmpfs(path))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The real file system fills up (a tmpfs of 48 MB, mounted for the test; skipped, and said so, when
/// mounting is refused): strict writes end with `DiskFailed` instead of settling, the failures are
/// counted, and once space is freed the owed writes are stored and new writes settle again; after a
/// restart every write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_fails_strict_writes_and_the_peer_recovers_when_space_returns() {
    let Some(fs) = Tmpfs::mount("tmpfs", "48m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let data = fs.0.join("data");
    let node = Node::start(config(Some("a"), Some(&data), vec![]))
        .await
        .unwrap();
    let mut outcomes = node.ack_outcomes();
    // What the peer does not take (the log's 8 MB and redb's first pages) is filled by another file.
    let filler = fs.0.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![7u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
    }
    let big = "x".repeat(256 * 1024);
    let b = node.bucket("s");
    let mut ends = Vec::new();
    for i in 0..40 {
        let (_, r) = node.write_acked(
            &b,
            format!("k{i}").into(),
            Some(value::encode_json(&format!("{big:?}"))),
            Lifetime::Forever,
            AckLevel::Local,
            Duration::from_secs(30),
        );
        // Met at once when the flusher stored it before it was registered (the disk had room
        // then): `write_acked` waits only for a generation not flushed yet.
        let end = match r {
            Registered::Pending(_) => {
                tokio::time::timeout(Duration::from_secs(10), outcomes.recv())
                    .await
                    .expect("ends in time")
                    .unwrap()
                    .end
            }
            Registered::Met(_) => AckEnd::Met,
        };
        ends.push(end);
    }
    let failed = ends.iter().filter(|e| **e == AckEnd::DiskFailed).count();
    assert!(failed > 0, "a full disk fails strict writes: {ends:?}");
    assert_eq!(
        ends.iter().filter(|e| **e == AckEnd::TimedOut).count(),
        0,
        "none hangs"
    );
    assert!(edisk(&node) > 0);
    std::fs::remove_file(&filler).unwrap();
    let (_, r) = node.write_acked(
        &b,
        "after".into(),
        Some(value::encode_json("1")),
        Lifetime::Forever,
        AckLevel::Local,
        Duration::from_secs(30),
    );
    if let Registered::Pending(_) = r {
        let o = tokio::time::timeout(Duration::from_secs(10), outcomes.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(o.end, AckEnd::Met, "settles again once space is back");
    }
    node.close(Duration::from_secs(1)).await;
    let again = Node::start(config(Some("a"), Some(&data), vec![]))
        .await
        .unwrap();
    let b = again.bucket("s");
    for i in 0..40 {
        assert!(b.contains(&format!("k{i}")), "k{i} lost");
    }
    assert!(b.contains("after"));
    again.close(Duration::from_secs(1)).await;
}
