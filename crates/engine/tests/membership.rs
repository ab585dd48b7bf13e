//! Real nodes on loopback: how many members the ack levels count (seeds not reached yet, members
//! crashed and forgotten, members that left), and two processes that share one id.

use std::time::Duration;

use peer_buckets_engine::value;
use peer_buckets_engine::Lifetime;
use peer_buckets_engine::PeerInfo;
use peer_buckets_engine::{AckEnd, AckLevel, AckOutcome, Registered};
use peer_buckets_engine::{Config, Node};
use peer_buckets_engine::{Warning, WarningCode};
use tokio::sync::mpsc::UnboundedReceiver;

mod common;
use common::*;

/// A port nobody listens on now (a node may listen there later).
fn free_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A node and its ack outcomes.
struct Writer {
    node: Node,
    outcomes: UnboundedReceiver<AckOutcome>,
    next: u64,
}

impl Writer {
    fn new(node: Node) -> Writer {
        let outcomes = node.ack_outcomes();
        Writer {
            node,
            outcomes,
            next: 0,
        }
    }

    /// Writes a fresh key waiting for `level` up to `timeout_ms`: whether the level was met, and by
    /// which other peers.
    async fn write(&mut self, level: AckLevel, timeout_ms: u64) -> (bool, Vec<String>) {
        self.next += 1;
        let bucket = self.node.bucket("s");
        let (_, registered) = self.node.write_acked(
            &bucket,
            format!("k{}", self.next).into(),
            Some(value::encode_json("1")),
            Lifetime::Forever,
            level,
            Duration::from_millis(timeout_ms),
        );
        match registered {
            Registered::Met(acked) => (true, acked),
            Registered::Pending(ticket) => loop {
                let o = self.outcomes.recv().await.expect("outcomes");
                if o.ticket == ticket {
                    return (o.end == AckEnd::Met, o.acked);
                }
            },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_one_meets_majority_and_all_at_once() {
    let mut a = Writer::new(Node::start(config("a", vec![])).await.unwrap());
    assert_eq!(a.write(AckLevel::Majority, 5_000).await, (true, vec![]));
    assert_eq!(a.write(AckLevel::All, 5_000).await, (true, vec![]));
    a.node.close(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn majority_and_all_are_not_met_alone_while_a_seed_is_unreached() {
    let b_addr = free_address();
    let mut a = Writer::new(
        Node::start(config("a", vec![b_addr.clone()]))
            .await
            .unwrap(),
    );
    assert_eq!(a.write(AckLevel::Majority, 300).await, (false, vec![]));
    assert_eq!(a.write(AckLevel::All, 300).await, (false, vec![]));
    let b = Node::start(Config {
        listen: b_addr,
        ..config("b", vec![])
    })
    .await
    .unwrap();
    eventually("a linked to its seed", || connected(&a.node).len() == 1).await;
    assert_eq!(
        a.write(AckLevel::Majority, 5_000).await,
        (true, vec!["b".to_string()])
    );
    assert_eq!(
        a.write(AckLevel::All, 5_000).await,
        (true, vec!["b".to_string()])
    );
    a.node.close(Duration::from_millis(200)).await;
    b.close(Duration::from_millis(200)).await;
}

/// a has no seeds; b and c found it. Both crash: a forgets them past `member_timeout`, and they still
/// count for one more `member_timeout`; then a is a cluster of one again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn majority_counts_crashed_members_for_a_member_timeout_after_they_are_forgotten() {
    let member_timeout = Duration::from_millis(600);
    let mut a = Writer::new(
        Node::start(Config {
            member_timeout,
            collect_every: Duration::from_millis(50),
            ..config("a", vec![])
        })
        .await
        .unwrap(),
    );
    let a_addr = a.node.address().to_string();
    let b = start_crashable(config("b", vec![a_addr.clone()]));
    let c = start_crashable(config("c", vec![a_addr]));
    eventually("a linked to b and c", || connected(&a.node).len() == 2).await;
    let (met, mut acked) = a.write(AckLevel::Majority, 5_000).await;
    acked.sort();
    assert!(met && !acked.is_empty(), "{acked:?}");
    b.crash();
    c.crash();
    eventually("b and c forgotten", || a.node.peers().is_empty()).await;
    let forgotten_at = std::time::Instant::now();
    assert_eq!(a.write(AckLevel::Majority, 200).await, (false, vec![]));
    assert_eq!(a.write(AckLevel::All, 200).await, (false, vec![]));
    // Still counted while the member timeout after forgetting runs; a cluster of one after it.
    loop {
        let (met, _) = a.write(AckLevel::Majority, 50).await;
        if met {
            break;
        }
        assert!(
            forgotten_at.elapsed() < member_timeout * 10,
            "forgotten members counted for good"
        );
    }
    assert!(forgotten_at.elapsed() >= member_timeout - Duration::from_millis(100));
    a.node.close(Duration::from_millis(200)).await;
}

/// A configured seed counts for as long as it is configured, whether or not the node that answered
/// there is still a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_counts_for_majority_after_its_member_was_forgotten() {
    let member_timeout = Duration::from_millis(300);
    let b = start_crashable(config("b", vec![]));
    let b_addr = b.node.address().to_string();
    let mut a = Writer::new(
        Node::start(Config {
            member_timeout,
            collect_every: Duration::from_millis(50),
            ..config("a", vec![b_addr])
        })
        .await
        .unwrap(),
    );
    eventually("a linked to b", || connected(&a.node).len() == 1).await;
    b.crash();
    eventually("b forgotten", || a.node.peers().is_empty()).await;
    tokio::time::sleep(member_timeout * 3).await;
    assert_eq!(a.write(AckLevel::Majority, 200).await, (false, vec![]));
    assert_eq!(a.write(AckLevel::All, 200).await, (false, vec![]));
    a.node.close(Duration::from_millis(200)).await;
}

/// A member that says goodbye (a clean close) stops counting at once: the cluster shrank on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_left_stops_counting_at_once() {
    let mut a = Writer::new(Node::start(config("a", vec![])).await.unwrap());
    let b = Node::start(config("b", vec![a.node.address().to_string()]))
        .await
        .unwrap();
    eventually("linked", || connected(&a.node).len() == 1).await;
    b.close(Duration::from_millis(500)).await;
    eventually("b gone", || a.node.peers().is_empty()).await;
    assert_eq!(a.write(AckLevel::Majority, 5_000).await, (true, vec![]));
    a.node.close(Duration::from_millis(200)).await;
}

/// 'all' is never weaker than 'majority': with two of five members down, the two connected ones
/// are not enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_waits_for_a_majority_even_when_fewer_peers_are_connected() {
    let mut a = Writer::new(Node::start(config("a", vec![])).await.unwrap());
    let a_addr = a.node.address().to_string();
    let b = Node::start(config("b", vec![a_addr.clone()]))
        .await
        .unwrap();
    let others: Vec<Crashable> = ["c", "d", "e"]
        .iter()
        .map(|id| start_crashable(config(id, vec![a_addr.clone()])))
        .collect();
    eventually("a linked to four", || connected(&a.node).len() == 4).await;
    for n in others {
        n.crash();
    }
    eventually("c, d, e down", || connected(&a.node).len() == 1).await;
    // Five members known: a majority is three, and a and b are two.
    assert_eq!(
        a.write(AckLevel::All, 300).await,
        (false, vec!["b".to_string()])
    );
    assert_eq!(
        a.write(AckLevel::Majority, 300).await,
        (false, vec!["b".to_string()])
    );
    a.node.close(Duration::from_millis(200)).await;
    b.close(Duration::from_millis(200)).await;
}

/// The same seed list everywhere, each peer's own address in it: each counts itself once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_listed_among_its_own_seeds_counts_itself_once() {
    let addresses: Vec<String> = (0..3).map(|_| free_address()).collect();
    let mut nodes = Vec::new();
    for (id, listen) in ["a", "b", "c"].iter().zip(&addresses) {
        nodes.push(
            Node::start(Config {
                listen: listen.clone(),
                ..config(id, addresses.clone())
            })
            .await
            .unwrap(),
        );
    }
    eventually("full mesh", || {
        nodes.iter().all(|n| connected(n).len() == 2)
    })
    .await;
    let size = |n: &Node| n.shared().members().cluster_size(Duration::from_secs(300));
    eventually("each counts three", || nodes.iter().all(|n| size(n) == 3)).await;
    let c = nodes.pop().unwrap();
    c.close(Duration::from_millis(200)).await;
    // c left, but it is a configured seed: it still counts.
    for n in &nodes {
        assert_eq!(size(n), 3);
    }
    let mut a = Writer::new(nodes.remove(0));
    assert_eq!(
        a.write(AckLevel::Majority, 5_000).await,
        (true, vec!["b".to_string()])
    );
    a.node.close(Duration::from_millis(200)).await;
    nodes[0].close(Duration::from_millis(200)).await;
}

fn id_conflicts(seen: &[Warning]) -> Vec<&Warning> {
    seen.iter()
        .filter(|w| w.code == WarningCode::IdConflict)
        .collect()
}

/// Two processes with id x (the second started later) and a third peer c: all three report it, and
/// the one started last keeps the links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_one_id_are_reported_by_both_and_by_a_third_peer() {
    let c = Node::start(config("c", vec![])).await.unwrap();
    let mut on_c = c.warnings();
    let c_addr = c.address().to_string();
    let first = Node::start(config("x", vec![c_addr.clone()]))
        .await
        .unwrap();
    let mut on_first = first.warnings();
    eventually("the first x linked to c", || connected(&first).len() == 1).await;
    tokio::time::sleep(Duration::from_millis(10)).await; // a later start: a larger incarnation
    let second = Node::start(config("x", vec![c_addr])).await.unwrap();
    let mut on_second = second.warnings();
    let (first_addr, second_addr) = (first.address().to_string(), second.address().to_string());

    let (mut seen_c, mut seen_first, mut seen_second) = (Vec::new(), Vec::new(), Vec::new());
    eventually("EIDCONFLICT on both processes and on c", || {
        seen_c.extend(drain_warnings(&mut on_c));
        seen_first.extend(drain_warnings(&mut on_first));
        seen_second.extend(drain_warnings(&mut on_second));
        [&seen_c, &seen_first, &seen_second]
            .iter()
            .all(|s| !id_conflicts(s).is_empty())
    })
    .await;
    let w = id_conflicts(&seen_c)[0];
    assert_eq!(w.peer.as_deref(), Some("x"));
    assert_eq!(w.address.as_deref(), Some(first_addr.as_str()), "{w:?}");
    assert!(w.message.contains(&second_addr), "{w:?}");
    let w = id_conflicts(&seen_first)[0];
    assert_eq!(w.address.as_deref(), Some(second_addr.as_str()), "{w:?}");
    assert!(
        w.message.contains("the other process started later"),
        "{w:?}"
    );
    let w = id_conflicts(&seen_second)[0];
    assert_eq!(w.address.as_deref(), Some(first_addr.as_str()), "{w:?}");
    assert!(w.message.contains("this process started later"), "{w:?}");
    for n in [&c, &first, &second] {
        let counted = n.stats().warnings;
        assert!(
            counted
                .iter()
                .any(|&(k, v)| k == WarningCode::IdConflict && v >= 1),
            "{counted:?}"
        );
    }

    // The one started last keeps the links: c's link to x is the second's, and it replicates.
    eventually("c linked to the second x", || {
        c.peers()
            == vec![PeerInfo {
                id: "x".into(),
                address: second_addr.clone(),
                connected: true,
            }]
    })
    .await;
    second.bucket("s").write(
        "from-second",
        Some(value::encode_json("1")),
        Lifetime::Forever,
    );
    eventually("the second's write on c", || {
        c.bucket("s").contains("from-second")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(connected(&first).len(), 0, "c refuses the first x");
    assert_eq!(c.peers()[0].address, second_addr);
    for n in [c, first, second] {
        n.close(Duration::from_millis(200)).await;
    }
}

/// A process that restarts under its id (a new incarnation, another port) is not a namesake: its
/// predecessor is gone, and nobody reports a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_the_same_id_is_not_a_conflict() {
    let c = Node::start(config("c", vec![])).await.unwrap();
    let mut on_c = c.warnings();
    let c_addr = c.address().to_string();
    let before = start_crashable(config("x", vec![c_addr.clone()]));
    eventually("x linked to c", || connected(&c).len() == 1).await;
    before.crash();
    let after = Node::start(config("x", vec![c_addr])).await.unwrap();
    let mut on_after = after.warnings();
    let after_addr = after.address().to_string();
    eventually("c linked to the restarted x", || {
        c.peers()
            == vec![PeerInfo {
                id: "x".into(),
                address: after_addr.clone(),
                connected: true,
            }]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut seen = Vec::new();
    seen.extend(drain_warnings(&mut on_c));
    seen.extend(drain_warnings(&mut on_after));
    assert!(id_conflicts(&seen).is_empty(), "{seen:?}");
    for n in [c, after] {
        n.close(Duration::from_millis(200)).await;
    }
}

/// b's handshake with a is in flight (a's hello, listing nobody, has reached b; b's has not reached
/// a) when c links to a. a broadcast c to the links it had then, which b's was not yet one of, and
/// b would never hear of c (members are pushed, never polled): a tells each new link, once it
/// counts among a's links, the members its hello did not list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_links_during_a_handshake_is_told_to_the_peer_at_the_other_end() {
    use peer_buckets_engine::wire::Message;

    let a = Node::start(config("a", vec![])).await.unwrap();
    let (mut reader, mut writer) = dial(&a, &[]).await;
    let (first, _) = reader.read(Duration::from_secs(5)).await.unwrap();
    let Message::Hello(theirs) = first else {
        panic!("a's first frame was not its hello: {first:?}");
    };
    assert!(theirs.members.is_empty(), "{:?}", theirs.members);
    let c = Node::start(config("c", vec![a.address().to_string()]))
        .await
        .unwrap();
    eventually("c linked to a", || connected(&a) == ["c"]).await;
    say_hello(&mut writer, &a, rid("b"), vec![]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut heard: Vec<String> = Vec::new();
    // a pings an idle link every 100 ms, and drops it once b has been silent past `dead_after`.
    while tokio::time::Instant::now() < deadline && !heard.iter().any(|m| m == "c") {
        let Ok((msg, _)) = reader.read(Duration::from_secs(3)).await else {
            break;
        };
        if let Message::Members(list) = msg {
            heard.extend(list.into_iter().map(|m| m.node.to_string()));
        }
    }
    assert!(
        heard.iter().any(|m| m == "c"),
        "b never heard of c from a (members heard: {heard:?})"
    );
    drop(c);
}
