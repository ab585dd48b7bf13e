//! Floods against a real node on loopback, from anyone who can reach its port: connections that open
//! and close, handshakes with a wrong secret, idle sockets, and oversized frames before the hello.
//! Each test asserts the bound the node keeps, not the memory of the test process.

use std::time::Duration;

use peer_buckets_engine::node::{Config, Node};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SECRET: &str = "correct horse battery staple";

fn config(id: &str, secrets: &[&str]) -> Config {
    Config {
        id: Some(id.into()),
        secrets: secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
        heartbeat: Duration::from_millis(100),
        dead_after: Duration::from_millis(600),
        backoff_max: Duration::from_millis(300),
        digest_every: Duration::from_millis(200),
        ..Config::default()
    }
}

async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn preamble(keyed: bool) -> Vec<u8> {
    vec![b'P', b'B', b'K', b'T', 1, keyed as u8]
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
        eventually(
            &format!("the {name} node's tasks back to {baseline}"),
            Duration::from_secs(10),
            || node.shared().tasks_held() <= baseline,
        )
        .await;
    }
    assert!(
        keyed.stats().handshakes_rejected >= 4_000,
        "{:?}",
        keyed.stats()
    );
    for n in [open, keyed] {
        n.close(Duration::from_secs(1)).await;
    }
}
