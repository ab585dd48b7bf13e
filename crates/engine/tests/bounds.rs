//! A member that knows the secret, scripted over loopback, tries to make a real node hold, send or
//! dial without bound; each test asserts the bound (bytes, memory, dials, time) and that the node keeps
//! serving. Every loop is bounded in rounds and time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peer_buckets_engine::connection::{FrameReader, FrameWriter};
use peer_buckets_engine::value;
use peer_buckets_engine::wire::{self, encode_frame, MemberInfo, Message};
use peer_buckets_engine::Lifetime;
use peer_buckets_engine::ReplicaId;
use peer_buckets_engine::WarningCode;
use peer_buckets_engine::OWED_LIMIT;
use peer_buckets_engine::{Config, Node};
use peer_buckets_engine::{Seq, SeqRanges};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

mod common;
use common::*;

const BUCKET: &str = "s";

fn config(id: &str) -> Config {
    keyed(id, vec![], &[SECRET])
}

/// Fills `bucket` of `node` with `keys` values of `size` bytes each: letters drawn at random
/// (seeded), so compression cannot shrink what a test sends to press on a bound.
fn fill(node: &Node, keys: usize, size: usize) {
    let b = node.bucket(BUCKET);
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..keys {
        let text: String = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect();
        b.write(
            format!("k{i:05}"),
            Some(value::encode_json(&format!("\"{text}\""))),
            Lifetime::Forever,
        );
    }
}

/// A member speaking the wire protocol with the secret, with its reader and writer apart.
struct Member {
    reader: FrameReader,
    writer: FrameWriter,
}

impl Member {
    /// Dials `node`, says hello (holding nothing, listing `members`) and reads the node's hello;
    /// with the secret when `keyed` (else the node must be open).
    async fn join(node: &Node, id: &str, members: Vec<MemberInfo>, keyed: bool) -> Member {
        let secrets: &[&str] = if keyed { &[SECRET] } else { &[] };
        let (mut reader, mut writer) = dial(node, secrets).await;
        say_hello(&mut writer, node, rid(id), members).await;
        let (first, _) = reader.read(Duration::from_secs(5)).await.unwrap();
        assert!(matches!(first, Message::Hello(_)), "{first:?}");
        Member { reader, writer }
    }
}

/// Runs `writer` in its own task: sends the frames handed to the returned sender, and a ping whenever
/// 100 ms pass without one, so the node never takes the member for silent. Ends when a send fails.
fn keep_talking(mut writer: FrameWriter) -> mpsc::UnboundedSender<Vec<u8>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let mut ping = Vec::new();
        encode_frame(&Message::Ping { wall_ms: 0 }, &mut ping).unwrap();
        loop {
            let frames = tokio::select! {
                frames = rx.recv() => frames.unwrap_or_else(|| ping.clone()),
                _ = tokio::time::sleep(Duration::from_millis(100)) => ping.clone(),
            };
            if writer.send(&frames).await.is_err() {
                return;
            }
        }
    });
    tx
}

fn fetch(id: u64) -> Message {
    Message::FetchRequest {
        id,
        bucket: BUCKET.into(),
        prefix: String::new(),
    }
}

/// Frames of `count` fetch requests.
fn fetches(count: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    for id in 1..=count {
        encode_frame(&fetch(id), &mut buf).unwrap();
    }
    buf
}

/// Whether `node` has a link to `id`.
fn linked(node: &Node, id: &str) -> bool {
    node.stats().links.iter().any(|l| l.id == id)
}

/// Bytes of answers the node's link to `id` owes it, as its statistics report them; 0 without a link.
fn owed(node: &Node, id: &str) -> usize {
    node.stats()
        .links
        .iter()
        .filter(|l| l.id == id)
        .map(|l| l.send_queue_bytes as usize)
        .sum()
}

/// A member that asks for a bucket of 500 KB 300 times and reads nothing: the node stops reading its
/// requests once it owes it `OWED_LIMIT`, drops it once its writes stall, and meanwhile replicates to
/// an honest peer. (Without the bound the node queued 150 MB of replies for it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_asks_without_reading_is_paused_then_dropped() {
    let victim = Node::start(config("victim")).await.unwrap();
    let honest = Node::start(Config {
        seeds: vec![victim.address().to_string()],
        ..config("honest")
    })
    .await
    .unwrap();
    fill(&victim, 50, 10_000);
    eventually_within("the honest peer to link", Duration::from_secs(5), || {
        linked(&victim, "honest")
    })
    .await;
    let Member { reader, writer } = Member::join(&victim, "greedy", Vec::new(), true).await;
    // It keeps talking (pings), so only the stall can end the link.
    let asker = keep_talking(writer);
    asker.send(fetches(300)).unwrap();
    let started = Instant::now();
    let mut most = 0;
    let mut n = 0;
    while linked(&victim, "greedy") || started.elapsed() < Duration::from_millis(500) {
        most = most.max(owed(&victim, "greedy"));
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the link is still up after 15 s (owing {most} bytes at most)"
        );
        if n % 20 == 0 {
            victim.bucket(BUCKET).write(
                format!("live{n}"),
                Some(value::encode_json("1")),
                Lifetime::Forever,
            );
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dropped_after = started.elapsed();
    eprintln!("owed at most {most} bytes; dropped after {dropped_after:?}");
    // One fetch answer (500 KB) may be queued past the limit before reading stops.
    assert!(
        most <= OWED_LIMIT + 1024 * 1024,
        "owed {most} bytes at most"
    );
    assert!(most > 0, "the member was never owed anything");
    let last = format!("live{}", (n - 1) / 20 * 20);
    eventually_within(
        "the writes made meanwhile to reach the honest peer",
        Duration::from_secs(10),
        || honest.bucket(BUCKET).contains(&last),
    )
    .await;
    drop(reader);
    victim.close(Duration::from_secs(1)).await;
    honest.close(Duration::from_secs(1)).await;
}

/// A member that reads slowly (3 MB/s, never pausing 300 ms) what it asked for (16 fetches of 1 MB
/// at once, past `OWED_LIMIT` and what the sockets buffer) gets all of it: the node stops reading its
/// requests while it owes past the limit, and never drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_paused_not_dropped() {
    // Open (no secret): a debug build's encryption would be slower than the reader this plays.
    let victim = Node::start(Config {
        secrets: Vec::new(),
        ..config("victim")
    })
    .await
    .unwrap();
    fill(&victim, 250, 4_000);
    let Member { mut reader, writer } = Member::join(&victim, "slow", Vec::new(), false).await;
    let asks = 16;
    let asker = keep_talking(writer);
    asker.send(fetches(asks)).unwrap();
    let started = Instant::now();
    let (mut done, mut bytes, mut most) = (0, 0, 0);
    while done < asks {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{done} of {asks} fetches answered after 30 s"
        );
        most = most.max(owed(&victim, "slow"));
        let (msg, n) = reader.read(Duration::from_secs(5)).await.unwrap();
        bytes += n.wire;
        if let Message::FetchReply { done: true, .. } = msg {
            done += 1;
        }
        let due = started + Duration::from_secs_f64(bytes as f64 / 3e6);
        let now = Instant::now();
        tokio::time::sleep_until(due.min(now + Duration::from_millis(300)).into()).await;
    }
    eprintln!(
        "owed at most {most} bytes; {bytes} bytes read in {:?}",
        started.elapsed()
    );
    assert!(
        most > OWED_LIMIT,
        "the node never owed the reader past its limit"
    );
    assert!(linked(&victim, "slow"), "the slow reader was dropped");
    victim.close(Duration::from_secs(1)).await;
}

/// A member that reads everything and asks for a small bucket 500 times in a burst gets at most the
/// fetch allowance answered in the first second (16, then 8 a second), not all 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_requests_are_served_at_a_bounded_rate() {
    let victim = Node::start(config("victim")).await.unwrap();
    fill(&victim, 10, 100);
    let Member { mut reader, writer } = Member::join(&victim, "fast", Vec::new(), true).await;
    let asker = keep_talking(writer);
    asker.send(fetches(500)).unwrap();
    let started = Instant::now();
    let mut answered = 0;
    let mut bytes = 0;
    let window = Duration::from_secs(1);
    while let Some(left) = window.checked_sub(started.elapsed()) {
        let Ok(read) = tokio::time::timeout(left, reader.read(Duration::from_secs(5))).await else {
            break;
        };
        let (msg, n) = read.unwrap();
        bytes += n.wire;
        if let Message::FetchReply { done: true, .. } = msg {
            answered += 1;
        }
    }
    eprintln!("{answered} fetches answered ({bytes} bytes) in {window:?}");
    assert!(answered >= 16, "only {answered} fetches answered");
    assert!(
        answered <= 16 + 8 + 2,
        "{answered} fetches answered in {window:?} ({bytes} bytes)"
    );
    drop(asker);
    victim.close(Duration::from_secs(1)).await;
}

/// Listeners that accept and close at once, counting the connections each got.
async fn dead_ends(count: usize) -> (Vec<String>, Vec<Arc<AtomicUsize>>) {
    let mut addresses = Vec::new();
    let mut counts = Vec::new();
    for _ in 0..count {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addresses.push(listener.local_addr().unwrap().to_string());
        let accepted = Arc::new(AtomicUsize::new(0));
        counts.push(accepted.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                drop(sock);
            }
        });
    }
    (addresses, counts)
}

fn total(counts: &[Arc<AtomicUsize>]) -> usize {
    counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

/// A member lists 20 members at addresses where no peer answers: the node dials each with backoff
/// that doubles (at most 7 dials each in the 3 s before they are forgotten, where a 300 ms cap made
/// 20), stops once the member timeout forgot them, and when the list comes again goes on where the
/// backoff stopped instead of starting over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossiped_members_that_never_answer_are_dialed_with_backoff_then_forgotten() {
    // Open (no secret): every dial of a dead end would otherwise cost a Noise handshake, slow in a
    // debug build; what is dialed and when does not depend on it.
    let victim = Node::start(Config {
        member_timeout: Duration::from_secs(3),
        collect_every: Duration::from_millis(200),
        secrets: Vec::new(),
        ..config("victim")
    })
    .await
    .unwrap();
    let fakes = 20;
    let (addresses, counts) = dead_ends(fakes).await;
    let list: Vec<MemberInfo> = addresses
        .iter()
        .enumerate()
        .map(|(i, a)| MemberInfo {
            node: format!("fake{i}").into(),
            address: a.clone(),
        })
        .collect();
    let Member { reader, writer } = Member::join(&victim, "gossip", list.clone(), false).await;
    let gossip = keep_talking(writer);
    eventually_within(
        "the fake members to be known",
        Duration::from_secs(2),
        || victim.peers().len() > fakes,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before_forgotten = total(&counts);
    assert!(
        victim.peers().iter().all(|p| !p.id.starts_with("fake")),
        "the fake members are still listed after the member timeout"
    );
    eprintln!("{before_forgotten} dials of {fakes} dead ends in 4 s");
    assert!(
        before_forgotten >= fakes,
        "not every fake member was dialed"
    );
    assert!(
        before_forgotten <= 7 * fakes,
        "{before_forgotten} dials of {fakes} dead ends in 4 s"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        total(&counts),
        before_forgotten,
        "forgotten members are still dialed"
    );
    // The same list again: each address waits out the backoff it reached (over a second) first.
    assert!(linked(&victim, "gossip"), "{:?}", victim.stats());
    let mut buf = Vec::new();
    encode_frame(&Message::Members(list), &mut buf).unwrap();
    gossip.send(buf).unwrap();
    eventually_within(
        "the fake members to be known again",
        Duration::from_secs(2),
        || victim.peers().len() > fakes,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        total(&counts),
        before_forgotten,
        "members learned again were dialed at once"
    );
    drop(reader);
    victim.close(Duration::from_secs(1)).await;
}

/// A member that names 5,000 buckets (a digest of one write each, about 250 KB) makes a peer whose
/// `max_buckets` is 100 hold 100 buckets, not 5,000: what it sends for the others is ignored and
/// counted, with a rate-limited `ELIMIT` warning; the peer keeps replicating the buckets it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_make_a_peer_create_buckets_past_its_limit() {
    let victim = Node::start(Config {
        max_buckets: 100,
        ..config("victim")
    })
    .await
    .unwrap();
    let mut warnings = victim.warnings();
    fill(&victim, 1, 10);
    let Member { reader, writer } = Member::join(&victim, "spammer", Vec::new(), true).await;
    let spammer = keep_talking(writer);
    let named = 5_000;
    let mut frames = Vec::new();
    for i in 0..named {
        let digest = Message::Digest {
            bucket: format!("b{i:05}").into(),
            context: vec![(
                ReplicaId {
                    node: "spammer".into(),
                    incarnation: 1,
                },
                SeqRanges::from_ranges([(Seq::from(1), Seq::from(1))]),
            )],
            number: i + 1,
            stored: 0,
        };
        encode_frame(&digest, &mut frames).unwrap();
    }
    spammer.send(frames).unwrap();
    eventually_within("every digest to be taken", Duration::from_secs(60), || {
        victim.stats().buckets_refused >= named - 99
    })
    .await;
    let stats = victim.stats();
    assert_eq!(stats.buckets, 100);
    assert_eq!(stats.buckets_refused, named - 99);
    let limit = stats
        .warnings
        .iter()
        .find(|(code, _)| *code == WarningCode::Limit)
        .map_or(0, |(_, n)| *n);
    assert!(limit > 0, "no ELIMIT warning counted");
    let mut handed = 0;
    while let Ok(w) = warnings.try_recv() {
        handed += (w.code == WarningCode::Limit) as usize;
    }
    assert!(
        (1..=10).contains(&handed),
        "{handed} ELIMIT warnings handed over for {limit} counted"
    );
    // A bucket it holds still takes the member's writes... and its own replicate (to an honest peer).
    let honest = Node::start(Config {
        seeds: vec![victim.address().to_string()],
        ..config("honest")
    })
    .await
    .unwrap();
    victim
        .bucket(BUCKET)
        .write("after", Some(value::encode_json("1")), Lifetime::Forever);
    eventually_within("a write to replicate", Duration::from_secs(10), || {
        honest.bucket(BUCKET).contains("after")
    })
    .await;
    drop(reader);
    honest.close(Duration::from_secs(1)).await;
    victim.close(Duration::from_secs(1)).await;
}

/// One compressed frame holding `frames`, its inflated size as claimed by `claim` (the true one
/// when `None`).
fn compressed(frames: &[u8], claim: Option<u32>) -> Vec<u8> {
    let mut packed = Vec::new();
    wire::compress_frames(frames, &mut packed);
    assert!(wire::is_compressed(&packed[wire::LEN_BYTES..]));
    if let Some(claim) = claim {
        packed[wire::LEN_BYTES + 1..wire::LEN_BYTES + 5].copy_from_slice(&claim.to_be_bytes());
    }
    packed
}

/// A compressed frame claiming 4 GB inflated, or one whose block inflates to less than it claims,
/// closes the member's link at once (the claim is checked against the frame cap before anything
/// is allocated); a member sending honest compressed frames stays linked, and the node serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_frame_that_lies_about_its_size_closes_the_link() {
    let victim = Node::start(config("victim")).await.unwrap();
    fill(&victim, 100, 100);
    let pings = {
        let mut buf = Vec::new();
        for i in 0..100 {
            encode_frame(&Message::Ping { wall_ms: i }, &mut buf).unwrap();
        }
        buf
    };
    let honest = Member::join(&victim, "honest", vec![], true).await;
    let honest_tx = keep_talking(honest.writer);
    honest_tx.send(compressed(&pings, None)).unwrap();
    for (id, claim) in [("bomb", u32::MAX), ("short", pings.len() as u32 + 1)] {
        let Member {
            mut reader,
            mut writer,
        } = Member::join(&victim, id, vec![], true).await;
        writer.send(&compressed(&pings, Some(claim))).await.unwrap();
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{id}: the link is still open after 5 s"
            );
            if reader.read(Duration::from_secs(5)).await.is_err() {
                break;
            }
        }
        eventually_within(
            &format!("{id} to be dropped"),
            Duration::from_secs(2),
            || !linked(&victim, id),
        )
        .await;
    }
    assert!(linked(&victim, "honest"), "{:?}", victim.stats());
    let mut reader = honest.reader;
    let mut ask = Vec::new();
    encode_frame(&fetch(1), &mut ask).unwrap();
    honest_tx.send(ask).unwrap();
    let mut fetched = 0;
    while let Ok((msg, _)) = reader.read(Duration::from_secs(5)).await {
        if let Message::FetchReply { writes, done, .. } = msg {
            fetched += writes.len();
            if done {
                break;
            }
        }
    }
    assert_eq!(
        fetched, 100,
        "the honest member's fetch after the others were dropped"
    );
    victim.close(Duration::from_secs(1)).await;
}

/// A member that asks for repairs of a bucket 200 times in a row (a repair's fetch asks the other end
/// to repair from it in turn) makes the node fetch the bucket from it once, not 200 times: a bucket
/// is repaired from one link at most once per `REPAIR_EVERY_MS` (a minute), whoever asks. Each of its
/// own fetches is still answered at the bounded rate fetches are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_asking_for_repairs_over_and_over_gets_one_repair_fetch_per_interval() {
    let victim = Node::start(config("victim")).await.unwrap();
    fill(&victim, 10, 100);
    let Member { mut reader, writer } = Member::join(&victim, "nagging", Vec::new(), true).await;
    let asker = keep_talking(writer);
    let mut frames = Vec::new();
    for k in 1..=200 {
        encode_frame(&fetch(wire::REPAIR_IDS | k), &mut frames).unwrap();
    }
    asker.send(frames).unwrap();
    let (started, window) = (Instant::now(), Duration::from_secs(2));
    let (mut repair_fetches, mut answered) = (0, 0);
    while let Some(left) = window.checked_sub(started.elapsed()) {
        let Ok(read) = tokio::time::timeout(left, reader.read(Duration::from_secs(5))).await else {
            break;
        };
        match read.unwrap().0 {
            Message::FetchRequest { id, bucket, .. } if id & wire::REPAIR_IDS != 0 => {
                assert_eq!(&*bucket, BUCKET);
                repair_fetches += 1;
            }
            Message::FetchReply { done: true, .. } => answered += 1,
            _ => {}
        }
    }
    eprintln!("{repair_fetches} repair fetches sent, {answered} fetches answered in {window:?}");
    assert_eq!(
        repair_fetches, 1,
        "one repair fetch per bucket per link per interval"
    );
    assert_eq!(victim.stats().divergences, 1);
    assert!(answered >= 1, "its fetches are still answered");
    assert!(
        linked(&victim, "nagging"),
        "asking is no violation: the link stays"
    );
    drop(asker);
    victim.close(Duration::from_secs(1)).await;
}
