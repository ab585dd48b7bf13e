//! Real nodes on loopback: keyed links, peers with another secret or none, hostile bytes, silent
//! connections and a flood of idle sockets, and ids bound to static keys (pinned, or learned and
//! released by a restart).

use std::time::{Duration, Instant};

use peer_buckets_engine::key_to_hex;
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
        // A refusal is counted once its connection is dropped (`link::run` counts a handshake's
        // error after the handshake gave the stream up): the client may see the close first.
        eventually_within("7 refusals counted", Duration::from_secs(5), || {
            node.stats().handshakes_rejected >= 7
        })
        .await;
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
        // Both kinds on `a`: the open peer redials, so two warnings may both be its own.
        seen_a.iter().any(|w| w.message.contains("another secret"))
            && seen_a
                .iter()
                .any(|w| w.message.contains("has no secret and this peer has one"))
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

/// An id pinned to a key (`peer_keys`) links only with that key: the peer `g` proving another is
/// refused with an EAUTH warning naming it; pinned to the key `g` proves, it links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_pinned_to_a_key_refuses_any_other_and_links_with_its_own() {
    let g = start("g", &[], &[SECRET]).await;
    let key = *g.public_key().expect("a keyed node has a static key");
    let pinned = |to| Config {
        peer_keys: vec![("g".into(), to)],
        ..keyed("v", vec![g.address().to_string()], &[SECRET])
    };
    let v = Node::start(pinned([1; 32])).await.unwrap();
    let mut on_v = v.warnings();
    let mut seen = Vec::new();
    eventually("v to refuse g's key", || {
        seen.extend(drain_warnings(&mut on_v));
        seen.iter()
            .any(|w| w.code == WarningCode::Auth && w.message.contains("impersonating g"))
    })
    .await;
    assert!(
        connected(&v).is_empty(),
        "v linked with a key g is not pinned to"
    );
    // g took v's key on first sight and may have been linked for a moment, until v closed.
    eventually("g to see the refused link closed", || {
        connected(&g).is_empty()
    })
    .await;
    v.close(Duration::from_millis(200)).await;
    let v = Node::start(pinned(key)).await.unwrap();
    eventually("v to link with g", || connected(&v) == ["g"]).await;
    replicates(&g, &v, "from-g").await;
    for n in [v, g] {
        n.close(Duration::from_millis(200)).await;
    }
}

/// A data directory for one test, removed when it ends.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("pb-security-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A peer closed and started again under its id links again: with a data directory it proves the
/// same key; without one it proves a new key, which replaces the old once none of the id's links is
/// up (a forger could not have taken it while the peer was linked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_links_again_with_its_kept_key_or_a_new_one() {
    let quick = |id: &str, seeds: Vec<String>| Config {
        handshake_timeout: Duration::from_secs(1),
        ..keyed(id, seeds, &[SECRET])
    };
    let v = Node::start(quick("v", vec![])).await.unwrap();
    let seeds = vec![v.address().to_string()];
    let dir = Dir::new("restart");
    let kept = || Config {
        data_dir: Some(dir.0.clone()),
        ..quick("d", seeds.clone())
    };
    let d = Node::start(kept()).await.unwrap();
    let p = start("p", &[&v], &[SECRET]).await;
    eventually("v to link with d and p", || connected(&v) == ["d", "p"]).await;
    let (d_key, p_key) = (*d.public_key().unwrap(), *p.public_key().unwrap());
    for n in [d, p] {
        n.close(Duration::from_millis(200)).await;
    }
    let d = Node::start(kept()).await.unwrap();
    assert_eq!(
        d.public_key(),
        Some(&d_key),
        "the data directory keeps the key"
    );
    let p = start("p", &[&v], &[SECRET]).await;
    assert_ne!(
        p.public_key(),
        Some(&p_key),
        "a process without one draws a key"
    );
    eventually("v to link with both again", || connected(&v) == ["d", "p"]).await;
    replicates(&p, &v, "from-p").await;
    for n in [v, d, p] {
        n.close(Duration::from_millis(200)).await;
    }
}

/// The most common deployment: peers without a data directory, one killed (no goodbye) and started
/// again under its id on the same port, with a key drawn anew. Its old links are all down once the
/// others see it gone, so the new key is taken at once (an EIDKEY warning on each, naming it), not
/// refused as an impersonation: it links to both again, and writes flow both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_peer_restarted_with_a_new_key_gets_back_in() {
    let v = start("v", &[], &[SECRET]).await;
    let w = start("w", &[&v], &[SECRET]).await;
    let p_config = |listen: String| Config {
        listen,
        ..keyed("p", vec![v.address().to_string()], &[SECRET])
    };
    let p = start_crashable(p_config("127.0.0.1:0".into()));
    let p_address = p.node.address().to_string();
    let old_key = *p.node.public_key().unwrap();
    eventually("v and w to link with p", || {
        connected(&v) == ["p", "w"] && connected(&w) == ["p", "v"]
    })
    .await;
    let (mut on_v, mut on_w) = (v.warnings(), w.warnings());
    p.crash();
    eventually("v and w to see p down", || {
        connected(&v) == ["w"] && connected(&w) == ["v"]
    })
    .await;
    let p = start_crashable(p_config(p_address));
    assert_ne!(
        p.node.public_key(),
        Some(&old_key),
        "a new process, a new key"
    );
    eventually_within(
        "v and w to link with the new p",
        Duration::from_secs(4),
        || connected(&v) == ["p", "w"] && connected(&w) == ["p", "v"],
    )
    .await;
    replicates(&p.node, &v, "from-new-p").await;
    replicates(&p.node, &w, "from-new-p-too").await;
    replicates(&w, &p.node, "to-new-p").await;
    let (seen_v, seen_w) = (drain_warnings(&mut on_v), drain_warnings(&mut on_w));
    for seen in [&seen_v, &seen_w] {
        assert!(
            !seen.iter().any(|w| w.code == WarningCode::Auth),
            "the restarted p was refused: {seen:?}"
        );
        assert!(
            seen.iter().any(|w| w.code == WarningCode::IdKey
                && w.peer.as_deref() == Some("p")
                && w.message.contains(&key_to_hex(&old_key))),
            "no EIDKEY warning naming p and its old key: {seen:?}"
        );
    }
    p.crash();
    for n in [v, w] {
        n.close(Duration::from_millis(200)).await;
    }
}

/// Pinned, an id takes no new key even with all its links down: `p` pinned on `v` and crashed comes
/// back without a data directory, so with a new key, and `v` refuses it (EAUTH naming `p`) however
/// long it waits, while `w`, which pins nothing, takes it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_id_refuses_a_new_key() {
    let p_config = |listen: String, seeds: Vec<String>| Config {
        listen,
        ..keyed("p", seeds, &[SECRET])
    };
    let p = start_crashable(p_config("127.0.0.1:0".into(), vec![]));
    let p_address = p.node.address().to_string();
    let v = Node::start(Config {
        peer_keys: vec![("p".into(), *p.node.public_key().unwrap())],
        ..keyed("v", vec![p_address.clone()], &[SECRET])
    })
    .await
    .unwrap();
    let w = start("w", &[&v], &[SECRET]).await;
    eventually("v and w to link with p", || {
        connected(&v) == ["p", "w"] && connected(&w) == ["p", "v"]
    })
    .await;
    p.crash();
    eventually("v and w to see p down", || {
        connected(&v) == ["w"] && connected(&w) == ["v"]
    })
    .await;
    let mut on_v = v.warnings();
    let p = start_crashable(p_config(p_address, vec![v.address().to_string()]));
    eventually("w to take the new p back", || connected(&w) == ["p", "v"]).await;
    let mut seen = Vec::new();
    eventually("v to refuse the new p's key", || {
        seen.extend(drain_warnings(&mut on_v));
        seen.iter().any(|w| {
            w.code == WarningCode::Auth
                && w.message.contains("impersonating p")
                && w.message.contains("pinned")
        })
    })
    .await;
    // Past any dead_after and redial backoff: still refused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        connected(&v),
        ["w"],
        "v linked with a key p is not pinned to"
    );
    seen.extend(drain_warnings(&mut on_v));
    assert!(
        !seen.iter().any(|w| w.code == WarningCode::IdKey),
        "a pinned id took a new key: {seen:?}"
    );
    p.crash();
    for n in [v, w] {
        n.close(Duration::from_millis(200)).await;
    }
}
