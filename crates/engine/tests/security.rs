//! Real nodes on loopback: keyed links, peers with another secret or none, hostile bytes, silent
//! connections and a flood of idle sockets.

use std::time::{Duration, Instant};

use peer_buckets_engine::value;
use peer_buckets_engine::wire::{encode_frame, Message};
use peer_buckets_engine::Lifetime;
use peer_buckets_engine::WarningCode;
use peer_buckets_engine::{Config, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::*;

async fn start(id: &str, seeds: &[&Node], secrets: &[&str]) -> Node {
    let seeds = seeds.iter().map(|n| n.address().to_string()).collect();
    Node::start(keyed(id, seeds, secrets)).await.unwrap()
}

fn write(n: &Node, key: &str) {
    n.bucket("s")
        .write(key, Some(value::encode_json("1")), Lifetime::Forever);
}

fn has(n: &Node, key: &str) -> bool {
    n.bucket("s").contains(key)
}

/// Writes a fresh key on `from` and waits until `to` holds it.
async fn replicates(from: &Node, to: &Node, key: &str) {
    write(from, key);
    eventually(&format!("{key} to replicate"), || has(to, key)).await;
}

/// Waits until the other end closes `sock`; fails if it is still open after `within`.
async fn closed_within(sock: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline.into(), sock.read(&mut buf)).await {
            Err(_) => panic!("the connection is still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {} // the preamble
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_the_same_secret_replicate_and_the_others_get_nothing() {
    let a = start("a", &[], &[SECRET]).await;
    let b = start("b", &[&a], &[SECRET]).await;
    let c = start("c", &[&a, &b], &["another cluster's secret"]).await;
    let d = start("d", &[&a, &b], &[]).await;
    eventually("a and b to link", || connected(&a) == ["b"]).await;
    replicates(&a, &b, "from-a").await;
    replicates(&b, &a, "from-b").await;
    write(&c, "from-c");
    write(&d, "from-d");
    eventually("both outsiders to be refused by both", || {
        a.stats().handshakes_rejected >= 2 && b.stats().handshakes_rejected >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    replicates(&a, &b, "still-from-a").await;
    for n in [&a, &b] {
        assert!(!has(n, "from-c") && !has(n, "from-d"));
        let known: Vec<String> = n.peers().into_iter().map(|p| p.id).collect();
        assert!(!known.iter().any(|id| id == "c" || id == "d"), "{known:?}");
    }
    for n in [&c, &d] {
        assert_eq!(n.bucket("s").len(), 1, "an outsider received data");
        assert!(n.peers().is_empty(), "an outsider learned members");
    }
    for n in [a, b, c, d] {
        n.close(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_keeps_the_cluster_linked() {
    let old = "the secret of last year";
    let new = "the secret of this year";
    let a = start("a", &[], &[old]).await;
    // Step one: accept the new secret too, still dialing with the old one.
    let b = start("b", &[&a], &[old, new]).await;
    eventually("a and b to link", || connected(&a) == ["b"]).await;
    // Step two: dial with the new one, still accepting the old.
    let c = start("c", &[&b], &[new, old]).await;
    eventually("c to link with both", || connected(&c) == ["a", "b"]).await;
    replicates(&c, &a, "from-c").await;
    for n in [a, b, c] {
        n.close(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_close_the_connection_and_the_node_keeps_serving() {
    let quick = |id, secrets| Config {
        handshake_timeout: Duration::from_secs(1),
        ..keyed(id, vec![], secrets)
    };
    let open = Node::start(quick("open", &[])).await.unwrap();
    let keyed = Node::start(quick("keyed", &[SECRET])).await.unwrap();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    for (node, keyed_node) in [(&open, false), (&keyed, true)] {
        // Half of the first frame: the hello on an open link, the Noise message on a keyed one.
        let mut half = Vec::new();
        if keyed_node {
            half.extend_from_slice(&[0, 48]);
            half.extend_from_slice(&garbage[..24]);
        } else {
            encode_frame(&Message::Ping { wall_ms: 1 }, &mut half).unwrap();
            half.truncate(half.len() / 2);
        }
        let mut cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), false),
            ("random bytes", garbage.clone(), false),
            (
                "a 4 GiB length prefix",
                [preamble(keyed_node), vec![0xff; 4]].concat(),
                false,
            ),
            ("the other mode", preamble(!keyed_node), false),
            ("another link version", b"PBKT\x09\x00".to_vec(), false),
            (
                "half a frame, then silence",
                [preamble(keyed_node), half.clone()].concat(),
                false,
            ),
            (
                "half a frame, then the end",
                [preamble(keyed_node), half.clone()].concat(),
                true,
            ),
        ];
        if !keyed_node {
            let mut frame = preamble(false);
            encode_frame(&Message::Leave, &mut frame).unwrap();
            cases.push(("a frame before the hello", frame, false));
        } else {
            let mut forged = preamble(true);
            forged.extend_from_slice(&[0, 48]);
            forged.extend_from_slice(&garbage[..48]);
            cases.push(("a forged handshake message", forged, false));
        }
        for (what, bytes, shut) in cases {
            let mut sock = TcpStream::connect(node.address()).await.unwrap();
            sock.write_all(&bytes).await.unwrap();
            if shut {
                sock.shutdown().await.unwrap();
            }
            // Silence costs the handshake timeout; everything else is refused at once.
            let within = if what.contains("silence") { 3 } else { 1 };
            closed_within(&mut sock, Duration::from_secs(within)).await;
        }
        assert!(node.stats().handshakes_rejected >= 7, "{:?}", node.stats());
        assert!(node.peers().is_empty());
    }
    let open2 = start("open2", &[&open], &[]).await;
    let keyed2 = start("keyed2", &[&keyed], &[SECRET]).await;
    replicates(&open, &open2, "after-open").await;
    replicates(&keyed, &keyed2, "after-keyed").await;
    for n in [open, open2, keyed, keyed2] {
        n.close(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_sockets_does_not_keep_real_peers_out() {
    let a = Node::start(Config {
        max_handshakes: 16,
        ..keyed("a", vec![], &[SECRET])
    })
    .await
    .unwrap();
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(a.address()).await.unwrap());
    }
    eventually("the flood to be accepted", || {
        a.stats().handshakes_evicted >= 284
    })
    .await;
    let started = Instant::now();
    let b = start("b", &[&a], &[SECRET]).await;
    eventually("a and b to link", || connected(&a) == ["b"]).await;
    // Well within the handshake timeout: no slot had to time out for b to get in.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    replicates(&b, &a, "through-the-flood").await;
    drop(idle);
    for n in [a, b] {
        n.close(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_secret_is_a_warning_on_both_ends_naming_the_address() {
    let a = start("a", &[], &[SECRET]).await;
    let mut on_a = a.warnings();
    let other = start("other", &[&a], &["the secret of another cluster"]).await;
    let mut on_other = other.warnings();
    let open = start("open", &[&a], &[]).await;
    let mut on_open = open.warnings();
    let (mut seen_a, mut seen_other, mut seen_open) = (Vec::new(), Vec::new(), Vec::new());
    eventually("EAUTH on every end", || {
        seen_a.extend(drain_warnings(&mut on_a));
        seen_other.extend(drain_warnings(&mut on_other));
        seen_open.extend(drain_warnings(&mut on_open));
        seen_a
            .iter()
            .filter(|w| w.code == WarningCode::Auth)
            .count()
            >= 2
            && !seen_other.is_empty()
            && !seen_open.is_empty()
    })
    .await;
    let a_addr = a.address().to_string();
    for (w, side) in seen_other
        .iter()
        .map(|w| (w, "other"))
        .chain(seen_open.iter().map(|w| (w, "open")))
    {
        assert_eq!(w.code, WarningCode::Auth, "{side}: {w:?}");
        assert_eq!(
            w.address.as_deref(),
            Some(a_addr.as_str()),
            "{side} names what it dialed"
        );
    }
    assert!(
        seen_other[0].message.contains("holds another"),
        "{:?}",
        seen_other[0]
    );
    assert!(
        seen_open[0]
            .message
            .contains("has a secret and this peer has none"),
        "{:?}",
        seen_open[0]
    );
    assert!(
        seen_a.iter().any(|w| w.message.contains("another secret")),
        "{seen_a:?}"
    );
    assert!(
        seen_a
            .iter()
            .any(|w| w.message.contains("has no secret and this peer has one")),
        "{seen_a:?}"
    );
    // Counted whether or not the rate limit let it through.
    let counted = a.stats().warnings;
    let auth = counted
        .iter()
        .find(|(c, _)| *c == WarningCode::Auth)
        .unwrap()
        .1;
    assert!(
        auth >= seen_a.len() as u64,
        "{counted:?} against {seen_a:?}"
    );
    assert!(connected(&a).is_empty());
    for n in [a, other, open] {
        n.close(Duration::from_millis(200)).await;
    }
}
