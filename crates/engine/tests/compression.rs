//! Compressed frames (wire 10) against real nodes over loopback: what a peer that has not finished
//! the handshake may make a node inflate, and what honest peers compressing or not deliver.
//! Invariants: nothing a peer sends before its hello is accepted is inflated (the hello travels
//! plain, and its reader caps it before knowing who sent it); every write an honest peer makes
//! arrives, whether its frames went compressed or not; a member's frames, however well they
//! compress, do not keep the node from serving the others.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use peer_buckets_engine::wire::{self, ContextPart, Hello, Message};
use peer_buckets_engine::{Config, Lifetime, Node};

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

/// A node on a runtime of its own with `workers` threads, as a process runs one: a task of it that
/// never yields takes a thread from the node, not from the test.
struct Apart {
    runtime: Option<tokio::runtime::Runtime>,
    node: Node,
}

impl Apart {
    fn start(config: Config, workers: usize) -> Apart {
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .unwrap();
            let node = runtime.block_on(Node::start(config)).unwrap();
            Apart {
                runtime: Some(runtime),
                node,
            }
        })
        .join()
        .unwrap()
    }
}

impl Drop for Apart {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Two members, as many as the node has threads, each send 16 compressed frames of a few KB each,
/// each inflating to a block (1 MiB) of pings: 2.4 million frames in all. Meanwhile an honest peer's writes still
/// reach the node within two seconds and its link stays up: reading a block's frames, one after the
/// other, must leave the node's other tasks their turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_sending_blocks_of_tiny_frames_does_not_starve_the_others() {
    // Blocks each member sends, one after the other: 16 MiB of pings.
    const BLOCKS: usize = 16;
    // Timers loose enough for a loaded test machine: a second of starvation is what fails.
    let patient = |id: &str, seeds: Vec<String>| Config {
        heartbeat: Duration::from_millis(300),
        dead_after: Duration::from_secs(3),
        ..keyed(id, seeds, &[SECRET])
    };
    let victim = Apart::start(patient("victim", vec![]), 2);
    let victim = &victim.node;
    let honest = Node::start(patient("honest", vec![victim.address().to_string()]))
        .await
        .unwrap();
    eventually("the honest peer to link", || {
        connected(victim).contains(&"honest".to_string())
    })
    .await;
    let packed = {
        let mut pings = Vec::new();
        let wall = victim.clock().wall_ms();
        while pings.len() < wire::MAX_BLOCK - 64 {
            wire::encode_frame(&Message::Ping { wall_ms: wall }, &mut pings).unwrap();
        }
        compressed_frame(&pings).repeat(BLOCKS)
    };
    let mut members = Vec::new();
    for id in ["m0", "m1"] {
        let (mut reader, mut writer) = dial(victim, &[SECRET]).await;
        say_hello(&mut writer, victim, rid(id), vec![]).await;
        reader.read(Duration::from_secs(5)).await.unwrap();
        tokio::spawn(async move { while reader.read(Duration::from_secs(60)).await.is_ok() {} });
        members.push(writer);
    }
    let mut floods = Vec::new();
    for mut writer in members {
        let packed = packed.clone();
        floods.push(tokio::spawn(async move {
            let _ = writer.send(&packed).await;
        }));
    }
    let flooding = |victim: &Node| {
        victim
            .stats()
            .links
            .iter()
            .filter(|l| l.id.starts_with('m'))
            .any(|l| l.plain_received < (BLOCKS * (wire::MAX_BLOCK - 64)) as u64)
    };
    let sent = honest.bucket("b");
    let seen = victim.bucket("b");
    let mut slowest = Duration::ZERO;
    let mut writes = 0;
    let started = Instant::now();
    while flooding(victim) && started.elapsed() < Duration::from_secs(60) {
        let key = format!("k{writes}");
        sent.write(key.clone(), Some(json("v")), Lifetime::Forever);
        let wrote = Instant::now();
        while get(&seen, &key).is_none() && wrote.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        slowest = slowest.max(wrote.elapsed());
        writes += 1;
        assert!(
            connected(&honest).contains(&"victim".to_string()),
            "the honest peer lost its link to the node after {:?} of the flood",
            started.elapsed()
        );
    }
    assert!(
        slowest < Duration::from_secs(2),
        "an honest write took {slowest:?} to arrive while two members flooded compressed pings \
         ({writes} writes over {:?})",
        started.elapsed()
    );
    for flood in floods {
        flood.abort();
    }
    honest.close(Duration::from_secs(1)).await;
}

/// Bad compressed frames on the real link path, each from its own member: a compressed frame
/// inside one, a compressed frame of another version, a cut block, a block whose last frame is cut,
/// a claim of nothing, a claim one byte past the frame cap, a block holding a frame longer than
/// the cap. Each closes its link as a protocol error; an honest peer's link stays up and its
/// writes still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_compressed_frames_close_the_members_link_and_the_node_serves_the_rest() {
    let victim = Node::start(keyed("victim", vec![], &[SECRET]))
        .await
        .unwrap();
    let honest = Node::start(keyed(
        "honest",
        vec![victim.address().to_string()],
        &[SECRET],
    ))
    .await
    .unwrap();
    eventually("the honest peer to link", || {
        connected(&victim).contains(&"honest".to_string())
    })
    .await;
    let pings = {
        let mut buf = Vec::new();
        for i in 0..200 {
            wire::encode_frame(&Message::Ping { wall_ms: i }, &mut buf).unwrap();
        }
        buf
    };
    let good = compressed_frame(&pings);
    let set_claim = |mut frame: Vec<u8>, claim: u32| {
        frame[wire::LEN_BYTES + 1..wire::LEN_BYTES + 5].copy_from_slice(&claim.to_be_bytes());
        frame
    };
    let cut_block = {
        let mut frame = good[..good.len() - 10].to_vec();
        let len = (frame.len() - wire::LEN_BYTES) as u32;
        frame[..wire::LEN_BYTES].copy_from_slice(&len.to_be_bytes());
        frame
    };
    let foreign = {
        let mut frame = good.clone();
        frame[wire::LEN_BYTES] = wire::COMPRESSED | (wire::PROTOCOL_VERSION - 1);
        frame
    };
    let too_long_inside = {
        let mut frames = pings.clone();
        frames.extend_from_slice(&(wire::MAX_FRAME as u32 + 1).to_be_bytes());
        frames.push(wire::PROTOCOL_VERSION);
        compressed_frame(&frames)
    };
    // Honest frames, more of them than a block holds: a writer sends those in several blocks.
    let past_a_block = {
        let mut frames = Vec::new();
        while frames.len() <= wire::MAX_BLOCK {
            frames.extend_from_slice(&pings);
        }
        compressed_frame(&frames)
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("nested", compressed_frame(&good)),
        ("foreign", foreign),
        ("cutblock", cut_block),
        ("cutframe", compressed_frame(&pings[..pings.len() - 3])),
        ("nothing", set_claim(good.clone(), 0)),
        (
            "pastcap",
            set_claim(good.clone(), wire::MAX_FRAME as u32 + 1),
        ),
        ("pastblock", past_a_block),
        ("toolong", too_long_inside),
    ];
    for (i, (id, frame)) in cases.into_iter().enumerate() {
        let errors = victim.stats().protocol_errors;
        let (mut reader, mut writer) = dial(&victim, &[SECRET]).await;
        say_hello(&mut writer, &victim, rid(id), vec![]).await;
        reader.read(Duration::from_secs(5)).await.unwrap();
        eventually_within(&format!("{id} to link"), Duration::from_secs(2), || {
            connected(&victim).contains(&id.to_string())
        })
        .await;
        writer.send(&frame).await.unwrap();
        let started = Instant::now();
        while reader.read(Duration::from_secs(3)).await.is_ok() {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{id}: the link is still open after 3 s"
            );
        }
        eventually_within(
            &format!("{id} to be dropped as a protocol error"),
            Duration::from_secs(2),
            || {
                !connected(&victim).contains(&id.to_string())
                    && victim.stats().protocol_errors > errors
            },
        )
        .await;
        let key = format!("after-{id}");
        honest
            .bucket("b")
            .write(key.clone(), Some(json(&format!("v{i}"))), Lifetime::Forever);
        let seen = victim.bucket("b");
        eventually_within(
            &format!("the honest write after {id}"),
            Duration::from_secs(3),
            || get(&seen, &key).is_some(),
        )
        .await;
        assert!(connected(&victim).contains(&"honest".to_string()));
    }
    honest.close(Duration::from_secs(1)).await;
    victim.close(Duration::from_secs(1)).await;
}

/// Everything `node` shows in bucket `b`, key to stored bytes.
fn content(node: &Node) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    node.bucket("b")
        .scan("", &mut |k, v| drop(out.insert(k.to_string(), v.to_vec())));
    out
}

/// `count` writes of `node` from `from` on, alike as sessions are (so batches compress), each with
/// its own token; a pause every 25 lets them leave in several batches.
async fn write_sessions(node: &Node, name: &str, from: usize, count: usize, rng: &mut Rng) {
    let bucket = node.bucket("b");
    for i in from..from + count {
        let token: String = (0..24)
            .map(|_| char::from(b'a' + rng.below(26) as u8))
            .collect();
        let value = format!(
            "cookie originalMaxAge 86400000 httpOnly true path / csrf {token} user {name}-{i} \
             name someone in particular, created at {i}"
        );
        bucket.write(
            format!("{name}{i:04}"),
            Some(json(&value)),
            Lifetime::Forever,
        );
        if i % 25 == 24 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Three peers, two compressing (`a`, `c`) and one not (`b`), write alike values and `c` is
/// killed, its links cut without a goodbye, and comes back empty to catch up. Every write of
/// the peers that stayed reaches all three, the three end alike, and the link statistics say what
/// travelled: `a` sends to `b` fewer bytes than it packed, `b` sends `a` exactly what it packed,
/// and no link counts more wire bytes than plain ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_compressing_or_not_converge_across_a_link_cut_mid_stream() {
    let with = |id: &str, seeds: Vec<String>, compression: bool| Config {
        compression,
        ..keyed(id, seeds, &[SECRET])
    };
    let a = Node::start(with("a", vec![], true)).await.unwrap();
    let seeds = vec![a.address().to_string()];
    let b = Node::start(with("b", seeds.clone(), false)).await.unwrap();
    let c = start_crashable(with("c", seeds.clone(), true));
    let all = |node: &Node, others: &[&str]| {
        let linked = connected(node);
        others.iter().all(|o| linked.contains(&o.to_string()))
    };
    eventually("the three to link", || {
        all(&a, &["b", "c"]) && all(&b, &["a", "c"]) && all(&c.node, &["a", "b"])
    })
    .await;
    let mut rng = Rng::new(16);
    write_sessions(&c.node, "c", 0, 200, &mut rng).await;
    write_sessions(&a, "a", 0, 200, &mut rng).await;
    write_sessions(&b, "b", 0, 200, &mut rng).await;
    c.crash();
    write_sessions(&a, "a", 200, 200, &mut rng).await;
    write_sessions(&b, "b", 200, 200, &mut rng).await;
    let c = start_crashable(with("c", seeds, true));
    write_sessions(&c.node, "c", 200, 100, &mut rng).await;
    eventually_within(
        "the three to hold the same",
        Duration::from_secs(30),
        || {
            let here = content(&a);
            here == content(&b) && here == content(&c.node)
        },
    )
    .await;
    let held = content(&a);
    for (name, count) in [("a", 400), ("b", 400), ("c", 300)] {
        let got = held.keys().filter(|k| k.starts_with(name)).count();
        let want = if name == "c" {
            100..=300
        } else {
            count..=count
        };
        assert!(want.contains(&got), "{got} writes of {name} arrived");
    }
    for i in 200..300 {
        assert!(held.contains_key(&format!("c{i:04}")), "c{i:04} is missing");
    }
    let link = |node: &Node, to: &str| {
        node.stats()
            .links
            .into_iter()
            .find(|l| l.id == to)
            .unwrap_or_else(|| panic!("no link to {to}"))
    };
    let (ab, ba) = (link(&a, "b"), link(&b, "a"));
    assert!(ab.bytes_sent < ab.plain_sent, "a to b: {ab:?}");
    assert_eq!(ba.bytes_sent, ba.plain_sent, "b to a: {ba:?}");
    assert!(ba.bytes_received < ba.plain_received, "b from a: {ba:?}");
    for (node, name) in [(&a, "a"), (&b, "b"), (&c.node, "c")] {
        for l in node.stats().links {
            assert!(
                l.bytes_sent <= l.plain_sent && l.bytes_received <= l.plain_received,
                "{name}'s link to {}: {l:?}",
                l.id
            );
        }
    }
    c.crash();
    b.close(Duration::from_secs(1)).await;
    a.close(Duration::from_secs(1)).await;
}
