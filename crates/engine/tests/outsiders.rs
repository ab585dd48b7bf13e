//! What anyone who can reach a node's port, without the secret, can do to it, against a real node:
//! connections that open and close, handshakes with a wrong secret, idle sockets, oversized frames
//! before the hello, and connections from the network to an open node. Each test asserts the bound
//! the node keeps, not the memory of the test process.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use peer_buckets_engine::WarningCode;
use peer_buckets_engine::{Config, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

mod common;
use common::*;

fn config(id: &str, secrets: &[&str]) -> Config {
    keyed(id, vec![], secrets)
}

/// Opens `count` connections to `node`, `parallel` at a time; each sends `bytes` and closes.
async fn connect_and_close(node: &Node, count: usize, parallel: usize, bytes: &[u8]) {
    let address = node.address();
    let mut workers = Vec::new();
    for w in 0..parallel {
        let bytes = bytes.to_vec();
        let mine = count / parallel + usize::from(w < count % parallel);
        workers.push(tokio::spawn(async move {
            for _ in 0..mine {
                let mut sock = TcpStream::connect(address).await.unwrap();
                if !bytes.is_empty() {
                    // The node may already have closed its end: that is what a refusal looks like.
                    let _ = sock.write_all(&bytes).await;
                }
                drop(sock);
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_connections_leave_nothing_behind() {
    let open = Node::start(config("open", &[])).await.unwrap();
    let keyed = Node::start(config("keyed", &[SECRET])).await.unwrap();
    let baseline = open.shared().tasks_held();
    assert_eq!(baseline, keyed.shared().tasks_held());
    connect_and_close(&open, 20_000, 16, &[]).await;
    // Wrong-secret handshakes: a preamble and a first Noise message that fails its tag.
    let mut wrong = preamble(true);
    wrong.extend_from_slice(&[0, 48]);
    wrong.extend_from_slice(&[7; 48]);
    connect_and_close(&keyed, 5_000, 16, &wrong).await;
    for (name, node) in [("open", &open), ("keyed", &keyed)] {
        eventually_within(
            &format!("the {name} node's tasks back to {baseline}"),
            Duration::from_secs(10),
            || node.shared().tasks_held() <= baseline,
        )
        .await;
    }
    // Each wrong handshake ends refused: rejected on its bad tag, or evicted unfinished when the
    // handshake slots were full (how many of each depends on how busy the machine is).
    let stats = keyed.stats();
    assert!(
        stats.handshakes_rejected + stats.handshakes_evicted >= 4_000 && stats.peers == 0,
        "{stats:?}"
    );
    for n in [open, keyed] {
        n.close(Duration::from_secs(1)).await;
    }
}

/// A TCP proxy on 127.0.0.1 that delays every byte by `one_way` in each direction, so a peer dialing
/// it is that far from `target`.
async fn far_away(target: SocketAddr, one_way: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    return;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::join!(delayed(ri, wo, one_way), delayed(ro, wi, one_way));
            });
        }
    });
    address
}

/// Copies `from` to `to`, each chunk `by` after it was read, in order.
async fn delayed(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, by: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        let _ = tx.send((tokio::time::Instant::now() + by, buf[..n].to_vec()));
    }
    drop(tx);
    let _ = writer.await;
}

/// Opens idle connections to `target` from `source` at `per_second` until `stop`, each held until the
/// node closes it. Returns how many were opened.
async fn idle_flood(
    source: IpAddr,
    target: SocketAddr,
    per_second: u32,
    stop: watch::Receiver<bool>,
) -> u64 {
    let mut opened = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let per_tick = (per_second / 100).max(1);
    while !*stop.borrow() {
        tick.tick().await;
        for _ in 0..per_tick {
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(source, 0)).unwrap();
            let Ok(mut sock) = socket.connect(target).await else {
                continue;
            };
            opened += 1;
            let mut stop = stop.clone();
            tokio::spawn(async move {
                // Reads the node's preamble and sends nothing; ends when the node closes it.
                let mut buf = [0u8; 64];
                loop {
                    tokio::select! {
                        r = sock.read(&mut buf) => if !matches!(r, Ok(1..)) { return },
                        _ = stop.changed() => return,
                    }
                }
            });
        }
    }
    opened
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_joins_through_a_flood_of_idle_connections_from_another_address() {
    let a = Node::start(Config {
        max_handshakes: 16,
        ..config("a", &[SECRET])
    })
    .await
    .unwrap();
    let (stop_tx, stop) = watch::channel(false);
    let attacker: IpAddr = "127.0.0.2".parse().unwrap();
    let flood = tokio::spawn(idle_flood(attacker, a.address(), 3_000, stop));
    eventually_within(
        "the flood to fill the handshake slots",
        Duration::from_secs(10),
        || a.stats().handshakes_evicted >= 100,
    )
    .await;
    // 100 ms away: its handshake needs three crossings, 150 ms, far longer than a slot lasts in the
    // flood when the oldest connection is evicted whoever opened it.
    let via = far_away(a.address(), Duration::from_millis(50)).await;
    let evicted_before = a.stats().handshakes_evicted;
    let started = Instant::now();
    let b = Node::start(Config {
        seeds: vec![via.to_string()],
        ..config("b", &[SECRET])
    })
    .await
    .unwrap();
    eventually_within(
        "b to join a through the flood",
        Duration::from_secs(5),
        || a.peers().iter().any(|p| p.id == "b" && p.connected),
    )
    .await;
    let joined = started.elapsed();
    let evicted = a.stats().handshakes_evicted - evicted_before;
    let _ = stop_tx.send(true);
    let opened = flood.await.unwrap();
    println!(
        "b joined in {joined:?}; {evicted} idle connections evicted meanwhile, {opened} opened"
    );
    // The flood went on while b joined: far more connections than slots came and went.
    assert!(
        evicted >= 32,
        "the flood was too slow to test anything: {evicted}"
    );
    for n in [a, b] {
        n.close(Duration::from_secs(1)).await;
    }
}

/// Connects to `node`, sends `bytes` and waits until the node closes the connection; how long it
/// took, or `None` if it stayed open past `within`.
async fn closed_after(node: &Node, bytes: &[u8], within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut sock = TcpStream::connect(node.address()).await.unwrap();
    let _ = sock.write_all(bytes).await;
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at((started + within).into(), sock.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {} // the preamble
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_node_refuses_a_first_frame_past_the_hello_cap_from_its_prefix() {
    let node = Node::start(Config {
        handshake_timeout: Duration::from_secs(3),
        ..config("open", &[])
    })
    .await
    .unwrap();
    // A frame prefix announcing 2 MiB, and the first 64 KiB of it: refused from the prefix, not
    // buffered until the handshake timeout.
    let mut bytes = preamble(false);
    bytes.extend_from_slice(&(2u32 << 20).to_be_bytes());
    bytes.extend_from_slice(&[0; 64 * 1024]);
    let closed = closed_after(&node, &bytes, Duration::from_secs(2)).await;
    assert!(closed.is_some(), "a 2 MiB first frame was waited for");
    // The refusal is counted as the connection task ends, which may be just after the close is seen.
    eventually_within("the refusal counted", Duration::from_secs(2), || {
        node.stats().handshakes_rejected >= 1
    })
    .await;
    assert_eq!(node.stats().handshakes_rejected, 1);
    node.close(Duration::from_secs(1)).await;
}

/// A local address beyond loopback: the one this machine would send from toward TEST-NET-1 (a UDP
/// socket's `connect` picks the source address and sends nothing). Connections to it stay on this
/// machine, but their addresses are not loopback ones.
fn network_address() -> IpAddr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    probe
        .connect("192.0.2.1:9")
        .expect("this test needs an address beyond loopback (a route to 192.0.2.1)");
    let ip = probe.local_addr().unwrap().ip();
    assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
    ip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_node_on_the_network_refuses_peers_from_it_unless_told_it_is_trusted() {
    let lan = network_address();
    let open_on = |id: &str, listen: String, seeds: Vec<String>, insecure: bool| Config {
        listen,
        seeds,
        insecure,
        ..config(id, &[])
    };
    let a = Node::start(open_on("a", "0.0.0.0:0".into(), vec![], false))
        .await
        .unwrap();
    let port = a.address().port();
    let mut warnings = a.warnings();
    // From the network: refused before a byte is sent, with a warning saying how to let it in.
    let from_lan = Node::start(open_on(
        "from-lan",
        format!("{lan}:0"),
        vec![format!("{lan}:{port}")],
        false,
    ))
    .await
    .unwrap();
    // From loopback: accepted.
    let from_lo = Node::start(open_on(
        "from-lo",
        "127.0.0.1:0".into(),
        vec![format!("127.0.0.1:{port}")],
        false,
    ))
    .await
    .unwrap();
    eventually_within("the loopback peer to join", Duration::from_secs(5), || {
        a.peers().iter().any(|p| p.id == "from-lo" && p.connected)
    })
    .await;
    eventually_within(
        "the network peer to be refused",
        Duration::from_secs(5),
        || a.stats().handshakes_rejected >= 2,
    )
    .await;
    assert!(
        !a.peers().iter().any(|p| p.id == "from-lan"),
        "{:?}",
        a.peers()
    );
    assert!(from_lan.peers().iter().all(|p| !p.connected));
    let warning = tokio::time::timeout(Duration::from_secs(1), warnings.recv())
        .await
        .expect("a warning")
        .unwrap();
    assert_eq!(warning.code, WarningCode::Insecure);
    assert_eq!(warning.code.as_str(), "EINSECURE");
    assert!(warning.address.unwrap().starts_with(&lan.to_string()));
    assert!(
        warning.message.contains("`secret`") && warning.message.contains("insecure: true"),
        "{}",
        warning.message
    );
    // Every refusal was a warning (the peer from the network keeps redialing meanwhile).
    let insecure = a.shared().warnings().count(WarningCode::Insecure);
    assert!(insecure >= 1 && insecure <= a.stats().handshakes_rejected);
    let mut raw = TcpStream::connect(SocketAddr::new(lan, port))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        raw.read(&mut buf).await.unwrap_or(0),
        0,
        "not even a preamble"
    );
    // Told the network is trusted, the same peers link.
    let b = Node::start(open_on("b", "0.0.0.0:0".into(), vec![], true))
        .await
        .unwrap();
    let b_port = b.address().port();
    let to_b = Node::start(open_on(
        "to-b",
        format!("{lan}:0"),
        vec![format!("{lan}:{b_port}")],
        true,
    ))
    .await
    .unwrap();
    eventually_within(
        "the trusted network peer to join",
        Duration::from_secs(5),
        || b.peers().iter().any(|p| p.id == "to-b" && p.connected),
    )
    .await;
    assert_eq!(b.stats().handshakes_rejected, 0);
    assert_eq!(b.shared().warnings().count(WarningCode::Insecure), 0);
    for n in [a, from_lan, from_lo, b, to_b] {
        n.close(Duration::from_secs(1)).await;
    }
}
