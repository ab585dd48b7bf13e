//! What a member's compressed frames leave behind in a real node, measured by this test binary's
//! allocator (the node runs in the process; nothing else runs in this binary). Invariant: once the
//! frames of a compressed block are read, the node holds memory in proportion to the bytes the
//! member sent, not to the 1 MiB a block may inflate to, and while a block is being read (the
//! reader waiting on a rate limit) it holds at most a couple of megabytes more per link: a member
//! cannot make a node hold a block per link for each few KB it sends, for longer than the block
//! takes to read. A frame that claims more than its block can inflate to (LZ4 makes at most 255
//! bytes of one) costs the node nothing. (Plain, a member holds 16 MiB of a node's memory by
//! sending 16 MiB.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use peer_buckets_engine::wire::{self, Message};
use peer_buckets_engine::Node;
use tokio::sync::mpsc;

mod common;
use common::*;

/// Bytes allocated and not freed, by anyone in the process.
static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Bytes ever allocated (a reallocation counts what it grew by).
static TOTAL: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call goes to the system allocator with the caller's layout; only counts are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        TOTAL.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        TOTAL.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Held by each test for its whole run, so that no other test's allocations are counted in it.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Bytes the node read on its link to `id` after inflation; 0 without a link.
fn plain_received(node: &Node, id: &str) -> u64 {
    node.stats()
        .links
        .iter()
        .filter(|l| l.id == id)
        .map(|l| l.plain_received)
        .sum()
}

/// Keeps a scripted member's link alive: sends what arrives on the returned sender, and a ping
/// whenever 100 ms pass without one; reads and drops what the node sends.
async fn member(node: &Node, id: &str) -> mpsc::UnboundedSender<Vec<u8>> {
    let (mut reader, mut writer) = dial(node, &[SECRET]).await;
    say_hello(&mut writer, node, rid(id), vec![]).await;
    let (first, _) = reader.read(Duration::from_secs(5)).await.unwrap();
    assert!(matches!(first, Message::Hello(_)), "{first:?}");
    tokio::spawn(async move { while reader.read(Duration::from_secs(60)).await.is_ok() {} });
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let mut ping = Vec::new();
        wire::encode_frame(&Message::Ping { wall_ms: 0 }, &mut ping).unwrap();
        loop {
            let frames = tokio::select! {
                frames = rx.recv() => match frames {
                    Some(frames) => frames,
                    None => return,
                },
                _ = tokio::time::sleep(Duration::from_millis(100)) => ping.clone(),
            };
            if writer.send(&frames).await.is_err() {
                return;
            }
        }
    });
    tx
}

/// `frames`, then a `Forgotten` naming nobody the node knows, long enough that the whole is a
/// block (1 MiB) of frames: what a compressed frame may inflate to, at most.
fn padded_to_a_block(mut frames: Vec<u8>) -> Vec<u8> {
    let name = "a".repeat(wire::MAX_BLOCK - frames.len() - 64);
    wire::encode_frame(&Message::Forgotten(vec![name.into()]), &mut frames).unwrap();
    assert!(frames.len() <= wire::MAX_BLOCK, "{}", frames.len());
    frames
}

/// Four members each send one compressed frame of a few KB that inflates to a 1 MiB frame the
/// node reads and drops (a `Forgotten` naming nobody it knows). Once read, the node may keep what
/// it was sent, a few times over, not the block per link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_make_a_node_hold_inflated_blocks() {
    let _alone = ALONE.lock().await;
    const MEMBERS: usize = 4;
    let victim = Node::start(keyed("victim", vec![], &[SECRET]))
        .await
        .unwrap();
    let mut links = Vec::new();
    for i in 0..MEMBERS {
        links.push(member(&victim, &format!("m{i}")).await);
    }
    let packed = compressed_frame(&padded_to_a_block(Vec::new()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = live();
    for (i, link) in links.iter().enumerate() {
        link.send(packed.clone()).unwrap();
        let id = format!("m{i}");
        eventually(&format!("{id}'s block to be read"), || {
            plain_received(&victim, &id) > wire::MAX_BLOCK as u64 / 2
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = live() - before;
    let sent = MEMBERS * packed.len();
    for i in 0..MEMBERS {
        assert!(
            connected(&victim).contains(&format!("m{i}")),
            "m{i} was dropped: the block is honest"
        );
    }
    assert!(
        held <= (4 << 20) + 8 * sent as isize,
        "{MEMBERS} members sent {sent} bytes of compressed frames; {held} bytes are still held \
         once they are read"
    );
    drop(links);
    victim.close(Duration::from_secs(1)).await;
}

/// Four members each send one compressed frame of a few KB: 48 fetch requests (three times the
/// burst the node answers at once, then 8 a second) and padding to a block (1 MiB). While the node waits to
/// answer the fetches, with the rest of each block unread, it holds at most 2 MiB per link beyond
/// a few times what was sent, not the four inflated blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_make_a_node_hold_a_block_while_it_waits() {
    let _alone = ALONE.lock().await;
    const MEMBERS: usize = 4;
    let victim = Node::start(keyed("victim", vec![], &[SECRET]))
        .await
        .unwrap();
    let mut links = Vec::new();
    for i in 0..MEMBERS {
        links.push(member(&victim, &format!("m{i}")).await);
    }
    let mut fetches = Vec::new();
    for id in 1..=48 {
        let ask = Message::FetchRequest {
            id,
            bucket: "s".into(),
            prefix: String::new(),
        };
        wire::encode_frame(&ask, &mut fetches).unwrap();
    }
    let packed = compressed_frame(&padded_to_a_block(fetches));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = live();
    for link in &links {
        link.send(packed.clone()).unwrap();
    }
    eventually("every member's fetches to be read in part", || {
        (0..MEMBERS).all(|i| plain_received(&victim, &format!("m{i}")) > 16 * 20)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = live() - before;
    let sent = MEMBERS * packed.len();
    for i in 0..MEMBERS {
        let read = plain_received(&victim, &format!("m{i}"));
        assert!(
            read < wire::MAX_BLOCK as u64 / 2,
            "m{i}'s block was read already ({read} bytes): the test measures too late"
        );
    }
    assert!(
        held <= MEMBERS as isize * (2 << 20) + 8 * sent as isize,
        "{MEMBERS} members sent {sent} bytes of compressed frames; {held} bytes are held while \
         the node waits to read the rest"
    );
    drop(links);
    victim.close(Duration::from_secs(1)).await;
}

/// A compressed frame of 10 bytes that claims the frame cap inflated (its block, one byte, cannot
/// inflate past 255): the node drops the link without allocating the claim, keyed (a member, 16 MiB
/// cap) or open (anyone, before its hello: the hello's 1 MiB cap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_claiming_more_than_its_block_can_hold_costs_nothing() {
    let _alone = ALONE.lock().await;
    for (what, secrets, cap) in [
        ("keyed", &[SECRET][..], wire::MAX_FRAME),
        ("open", &[][..], 1 << 20),
    ] {
        let victim = Node::start(keyed("victim", vec![], secrets)).await.unwrap();
        let mut frame = ((1 + 4 + 1) as u32).to_be_bytes().to_vec();
        frame.push(wire::COMPRESSED | wire::PROTOCOL_VERSION);
        frame.extend_from_slice(&(cap as u32).to_be_bytes());
        frame.push(0);
        let (mut reader, mut writer) = dial(&victim, secrets).await;
        if secrets.is_empty() {
            reader.read(Duration::from_secs(5)).await.unwrap();
        } else {
            say_hello(&mut writer, &victim, rid("m"), vec![]).await;
            reader.read(Duration::from_secs(5)).await.unwrap();
            eventually("m to link", || connected(&victim).contains(&"m".into())).await;
        }
        let before = TOTAL.load(Ordering::Relaxed);
        writer.send(&frame).await.unwrap();
        while reader.read(Duration::from_secs(3)).await.is_ok() {}
        let allocated = TOTAL.load(Ordering::Relaxed) - before;
        assert!(
            allocated < (cap / 4) as isize,
            "{what}: a {}-byte frame claiming {cap} bytes made the process allocate {allocated}",
            frame.len()
        );
        victim.close(Duration::from_secs(1)).await;
    }
}
