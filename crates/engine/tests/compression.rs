//! Compressed frames (wire 10) against real nodes over loopback: what a peer that has not finished
//! the handshake may make a node inflate, and what honest peers compressing or not deliver.
//! Invariants: nothing a peer sends before its hello is accepted is inflated (the hello travels
//! plain, and its reader caps it before knowing who sent it); every write an honest peer makes
//! arrives, whether its frames went compressed or not.

use std::time::{Duration, Instant};

use peer_buckets_engine::wire::{self, ContextPart, Hello, Message};
use peer_buckets_engine::Node;

mod common;
use common::*;

/// A hello and the report of holding nothing, as a joining peer sends them, for `node`'s clock.
fn hello_frames(node: &Node, id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for msg in [
        Message::Hello(Hello {
            replica: rid(id),
            listen_port: 1,
            listen_host: Some("127.0.0.1".into()),
            wall_ms: node.clock().wall_ms(),
            members: vec![],
        }),
        Message::Contexts(ContextPart {
            buckets: vec![],
            last: true,
        }),
    ] {
        wire::encode_frame(&msg, &mut out).unwrap();
    }
    out
}

/// A hello that arrives inside a compressed frame is refused, open link or keyed: the node
/// inflates nothing before the hello, so a stranger to an open node (or a dialer mid-handshake)
/// cannot make it fill a megabyte for each few kilobytes it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_inside_a_compressed_frame_is_refused() {
    for (what, secrets) in [("open", &[][..]), ("keyed", &[SECRET][..])] {
        let victim = Node::start(keyed("victim", vec![], secrets)).await.unwrap();
        let (mut reader, mut writer) = dial(&victim, secrets).await;
        let frames = hello_frames(&victim, "stranger");
        writer.send(&compressed_frame(&frames)).await.unwrap();
        let started = Instant::now();
        let mut after_hello = Vec::new();
        loop {
            assert!(
                !connected(&victim).contains(&"stranger".to_string()),
                "{what}: the node linked a peer whose hello came compressed"
            );
            match reader.read(Duration::from_millis(500)).await {
                Ok((msg, _)) => after_hello.push(msg),
                Err(_) => break,
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{what}: the link is still open after 3 s, the node sent {} frames",
                after_hello.len()
            );
        }
        assert!(
            matches!(after_hello.as_slice(), [] | [Message::Hello(_)]),
            "{what}: the node answered a compressed hello: {after_hello:?}"
        );
        victim.close(Duration::from_secs(1)).await;
    }
}
