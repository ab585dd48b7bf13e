//! A member that knows the secret and breaks the protocol on purpose: it answers questions nobody
//! asked, claims coverage it does not back, and acknowledges writes it never received. Each test
//! scripts such a member frame by frame against a real replica (`Local` and `Session` over encoded
//! frames, or a real node over loopback with the cluster's secret) and checks the bound:
//! - a reply without a matching request is a protocol error (fetch replies, held replies, pull
//!   replies, which are `Ops` of an origin other than the sender);
//! - a claim on the receiver's own origin beyond its own sequence is a protocol error, whichever frame
//!   carries it;
//! - an ack beyond the receiver's own sequence is a protocol error, and one beyond what went out on
//!   the link acknowledges only what did;
//! - a hello under another peer's id, from a key that id never proved, is refused (EAUTH), and the
//!   real peer's link stays up;
//! - the offending link is closed, counted and reported as an EPROTOCOL warning naming the peer, and
//!   the node keeps serving the others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use peer_buckets_engine::connection::{FrameReader, FrameWriter};
use peer_buckets_engine::wire::{
    self, BucketSummary, ContextPart, Hello, Message, OpsBatch, WireContext, WireWrite,
};
use peer_buckets_engine::LinkError;
use peer_buckets_engine::PeerEventKind;
use peer_buckets_engine::ReplicaId;
use peer_buckets_engine::Session;
use peer_buckets_engine::WarningCode;
use peer_buckets_engine::{AckLevel, Registered};
use peer_buckets_engine::{Config, Node};
use peer_buckets_engine::{Hlc, ManualClock, PhysicalClock};
use peer_buckets_engine::{Lifetime, Write};
use peer_buckets_engine::{Seq, SeqRanges};

mod common;
use common::*;

fn is_protocol_error(r: Result<impl std::fmt::Debug, LinkError>) -> bool {
    matches!(r, Err(LinkError::Protocol(_)))
}

fn ops(origin: ReplicaId, covered: SeqRanges, writes: Vec<Write>) -> Message {
    Message::Ops(OpsBatch {
        bucket: BUCKET.into(),
        origin,
        covered,
        writes: writes.into_iter().map(WireWrite::from).collect(),
        superseders: vec![],
        superseded: vec![],
    })
}

fn everything() -> SeqRanges {
    SeqRanges::from_ranges([(Seq::from(1), Seq::from(u64::MAX))])
}

// ---------------------------------------------------------------------------------------------------
// Replies nobody asked for.

/// A fetch reply for a fetch the victim never asked on that link is refused, and what it carried is
/// not taken in.
#[test]
fn a_fetch_reply_nobody_asked_for_is_a_protocol_error() {
    let mut s = Scene::new();
    let hlc = s.time_hlc();
    let reply = Message::FetchReply {
        id: 7,
        bucket: BUCKET.into(),
        origin: Some(rid("h")),
        writes: vec![write("planted", hlc, 1, Some("x")).into()],
        done: true,
    };
    assert!(is_protocol_error(s.member_sends(reply)));
    assert!(!s.holds("planted"), "an unasked fetch reply was merged");
}

/// Writes of another origin arrive only as answers to a pull: a batch of the honest peer's origin
/// that the victim never pulled from mallory is refused, and the honest peer's later writes still
/// land (before, the claimed coverage made the victim drop them all).
#[test]
fn a_pull_reply_nobody_asked_for_is_a_protocol_error() {
    let mut s = Scene::new();
    assert!(is_protocol_error(s.member_sends(ops(
        rid("h"),
        everything(),
        vec![]
    ))));
    s.h()
        .bucket(BUCKET)
        .write("later", Some(json("h")), Lifetime::Forever);
    s.exchange();
    assert!(s.holds("later"), "the honest peer's write was dropped");
}

/// A pull reply covers only what was pulled: asked for seqs 1..=2 of the honest peer, mallory may not
/// cover the honest peer's future.
#[test]
fn a_pull_reply_beyond_what_was_pulled_is_a_protocol_error() {
    let mut s = Scene::new();
    s.v_m.queue(Message::Pull {
        bucket: BUCKET.into(),
        origin: rid("h"),
        ranges: SeqRanges::up_to(Seq::from(2)),
    });
    let hlc = s.time_hlc();
    let w = |seq| write("k", hlc, seq, Some("m"));
    assert!(
        s.member_sends(ops(rid("h"), SeqRanges::up_to(Seq::from(1)), vec![w(1)]))
            .is_ok(),
        "a reply within the pull is taken"
    );
    assert!(is_protocol_error(s.member_sends(ops(
        rid("h"),
        SeqRanges::from_ranges([(Seq::from(2), Seq::from(3))]),
        vec![w(2)]
    ))));
}

/// A held reply answers the question asked, no more: the victim, away past a collection, asks mallory
/// which of its registers mallory knows superseded; a reply covering dots it never asked about is
/// refused, and nothing is dropped (before, one reply could wipe every register it named).
#[test]
fn a_held_reply_beyond_the_question_is_a_protocol_error() {
    let mut s = Scene::new();
    let seq = s
        .v()
        .bucket(BUCKET)
        .write("mine", Some(json("v")), Lifetime::Forever)
        .seq;
    s.h()
        .bucket(BUCKET)
        .write("theirs", Some(json("h")), Lifetime::Forever);
    s.exchange();
    // Mallory reports a collection the victim missed, and holds everything the victim holds.
    s.v_m = Session::new(s.v(), &hello("m2")).unwrap();
    let horizon: WireContext = vec![(rid("gone"), SeqRanges::up_to(Seq::from(3)))];
    let mut context = horizon.clone();
    context.push((rid("v"), SeqRanges::up_to(seq)));
    context.push((rid("h"), SeqRanges::up_to(Seq::from(1))));
    s.member_sends(Message::Contexts(ContextPart {
        buckets: vec![BucketSummary {
            name: BUCKET.into(),
            context,
            collected: horizon,
        }],
        last: true,
    }))
    .unwrap();
    let asked: Vec<(ReplicaId, SeqRanges)> = s
        .sent_to_member()
        .into_iter()
        .filter_map(|m| match m {
            Message::Held { origin, query, .. } => Some((origin, query)),
            _ => None,
        })
        .collect();
    let (origin, query) = asked
        .into_iter()
        .find(|(o, _)| o.node.as_ref() == "h")
        .expect("the victim asks about the honest peer's registers");
    let mut beyond = query.clone();
    beyond.insert(query.max().next().expect("below the end"));
    let reply = Message::HeldReply {
        bucket: BUCKET.into(),
        origin,
        covered: beyond,
        held: SeqRanges::new(),
        superseders: vec![],
        last: true,
    };
    assert!(is_protocol_error(s.member_sends(reply)));
    assert!(s.holds("theirs"), "a refused reply dropped a register");
}

// ---------------------------------------------------------------------------------------------------
// Coverage of the receiver's own origin.

/// A batch claiming the victim's own origin beyond its own sequence is refused; before, every later
/// local write failed with "sequence numbers exhausted".
#[test]
fn a_batch_claiming_the_receivers_own_future_is_a_protocol_error() {
    let mut s = Scene::new();
    s.v()
        .bucket(BUCKET)
        .write("mine", Some(json("v")), Lifetime::Forever);
    assert!(is_protocol_error(s.member_sends(ops(
        rid("v"),
        everything(),
        vec![]
    ))));
    let after = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        s.v()
            .bucket(BUCKET)
            .write("next", Some(json("v")), Lifetime::Forever)
    }));
    assert!(after.is_ok(), "the victim can no longer write");
}

/// A digest, or a context part, claiming the victim's own origin beyond its own sequence is refused:
/// it would acknowledge writes never made and hide the victim's future writes from that link.
#[test]
fn a_context_claiming_the_receivers_own_future_is_a_protocol_error() {
    let mut s = Scene::new();
    s.v()
        .bucket(BUCKET)
        .write("mine", Some(json("v")), Lifetime::Forever);
    let claim: WireContext = vec![(rid("v"), SeqRanges::up_to(Seq::from(5)))];
    assert!(is_protocol_error(s.member_sends(Message::Digest {
        bucket: BUCKET.into(),
        context: claim.clone(),
        number: 1,
        stored: 0,
    })));
    let mut fresh = Scene::new();
    fresh.v_m = Session::new(fresh.v(), &hello("m2")).unwrap();
    let part = Message::Contexts(ContextPart {
        buckets: vec![BucketSummary {
            name: BUCKET.into(),
            context: vec![],
            collected: claim,
        }],
        last: true,
    });
    assert!(
        is_protocol_error(fresh.member_sends(part)),
        "a horizon on the victim's own future made it stale for good"
    );
}

// ---------------------------------------------------------------------------------------------------
// Acks.

/// An ack beyond the victim's own sequence is refused; one beyond what went out on the link
/// acknowledges only what did (nothing here: mallory's contexts never came, so nothing was sent).
#[test]
fn an_ack_beyond_what_was_sent_on_the_link_acknowledges_nothing_more() {
    let v = local("v", 1, &Arc::new(ManualClock::new(START_MS)));
    let bucket = v.bucket(BUCKET);
    let seq = bucket.write("k", Some(json("v")), Lifetime::Forever).seq;
    let mallory = hello("m");
    let mut v_m = Session::new(&v, &mallory).unwrap();
    let ack = |upto| {
        on_the_wire(Message::Ack {
            bucket: BUCKET.into(),
            upto,
        })
    };
    assert!(is_protocol_error(v_m.handle(&v, ack(Seq::MAX))));
    let mut v_m = Session::new(&v, &mallory).unwrap();
    v_m.handle(&v, ack(seq))
        .expect("an ack within the sequence");
    assert_eq!(
        v.acks().acked_upto(BUCKET, "m"),
        Seq::ZERO,
        "a write never sent on the link was acknowledged"
    );
    // Once the write went out, the same ack counts.
    v_m.handle(
        &v,
        Message::Contexts(ContextPart {
            buckets: vec![],
            last: true,
        }),
    )
    .unwrap();
    assert!(!due(&mut v_m, &v, false).is_empty());
    v_m.handle(&v, ack(seq)).unwrap();
    assert_eq!(v.acks().acked_upto(BUCKET, "m"), seq);
}

impl Scene {
    fn time_hlc(&self) -> Hlc {
        Hlc::from_parts(self.world.time.now_ms(), 0)
    }
}

// ---------------------------------------------------------------------------------------------------
// A real node over loopback, with the cluster's secret.

fn config(id: &str, seeds: Vec<String>) -> Config {
    keyed(id, seeds, &[SECRET])
}

/// Mallory dials with the secret, says hello and an empty context, waits until the victim pushes a
/// write made with `ack: 'all'`, then acknowledges everything the victim could ever write. The link
/// is closed, counted and reported (EPROTOCOL, naming mallory); the write is not settled by mallory;
/// the victim goes on replicating with an honest peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_acknowledging_what_it_never_received_is_cut_off_and_the_node_keeps_serving() {
    let v = Node::start(config("v", vec![])).await.unwrap();
    let mut warnings = v.warnings();
    let mut outcomes = v.ack_outcomes();
    let (mut reader, mut writer) = dial(&v, &[SECRET]).await;
    say_hello(&mut writer, &v, rid("mallory"), vec![]).await;
    eventually("mallory to be linked", || {
        v.peers().iter().any(|p| p.id == "mallory" && p.connected)
    })
    .await;
    let bucket = v.bucket("s");
    let (_, registered) = v.write_acked(
        &bucket,
        "k".into(),
        Some(json("v")),
        Lifetime::Forever,
        AckLevel::All,
        Duration::from_secs(3),
    );
    let Registered::Pending(ticket) = registered else {
        panic!("'all' met before mallory acknowledged: {registered:?}");
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (msg, _) = reader.read(Duration::from_secs(5)).await.unwrap();
        if matches!(&msg, Message::Ops(b) if &*b.bucket == "s") {
            break;
        }
        assert!(Instant::now() < deadline, "the write never reached mallory");
    }
    let mut out = Vec::new();
    wire::encode_frame(
        &Message::Ack {
            bucket: "s".into(),
            upto: Seq::MAX,
        },
        &mut out,
    )
    .unwrap();
    writer.send(&out).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if reader.read(Duration::from_secs(5)).await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the victim kept the link open");
    let outcome = tokio::time::timeout(Duration::from_secs(5), outcomes.recv())
        .await
        .expect("the write settles or times out")
        .unwrap();
    assert_eq!(outcome.ticket, ticket);
    assert!(
        !outcome.acked.iter().any(|a| a == "mallory"),
        "mallory acknowledged a write it never held: {outcome:?}"
    );
    let mut seen = Vec::new();
    while let Ok(w) = warnings.try_recv() {
        seen.push(w);
    }
    assert!(
        seen.iter().any(|w| w.code == WarningCode::Protocol
            && w.peer.as_deref() == Some("mallory")
            && w.message.contains("ack")),
        "no EPROTOCOL warning naming mallory: {seen:?}"
    );
    assert!(v.stats().protocol_errors >= 1);
    let h = Node::start(config("h", vec![v.address().to_string()]))
        .await
        .unwrap();
    h.bucket("s")
        .write("from-h", Some(json("h")), Lifetime::Forever);
    eventually("the honest peer's write to reach the victim", || {
        v.bucket("s").contains("from-h")
    })
    .await;
    for n in [v, h] {
        n.close(Duration::from_secs(1)).await;
    }
}

/// Mallory links to the victim, which tells its honest peer of the new member, then breaks the
/// protocol. Had the victim kept mallory as a member that is merely unreachable, no tombstone would
/// be collected for `member_timeout` (five minutes here), and a member that links and breaks the
/// protocol once per timeout would stop collection for good. The victim forgets it at once and
/// ignores it in member lists for as long, so its deletes are collected within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_for_breaking_the_protocol_does_not_hold_up_collection() {
    let quick = |c: Config| Config {
        collect_every: Duration::from_millis(200),
        tombstone_min_age: Some(Duration::from_millis(200)),
        member_timeout: Duration::from_secs(300),
        ..c
    };
    let v = Node::start(quick(config("v", vec![]))).await.unwrap();
    let h = Node::start(quick(config("h", vec![v.address().to_string()])))
        .await
        .unwrap();
    eventually("h and v to link", || connected(&v) == ["h"]).await;

    let (mut reader, mut writer) = dial(&v, &[SECRET]).await;
    say_hello(&mut writer, &v, rid("mallory"), vec![]).await;
    eventually("mallory to be a member of v and h", || {
        v.peers().iter().any(|p| p.id == "mallory") && h.peers().iter().any(|p| p.id == "mallory")
    })
    .await;
    break_the_protocol(&mut reader, &mut writer).await;
    // v expels mallory once its link is shut, after mallory sees it closed (`link::run`).
    eventually("v to expel mallory", || {
        !v.peers().iter().any(|p| p.id == "mallory")
    })
    .await;

    let bucket = v.bucket("s");
    bucket.write("k", Some(json("x")), Lifetime::Forever);
    eventually("the write to reach h", || h.bucket("s").contains("k")).await;
    bucket.write("k", None, Lifetime::Forever);
    eventually("v to collect the tombstone", || {
        v.stats().tombstones_collected >= 1
    })
    .await;
    for n in [v, h] {
        n.close(Duration::from_secs(1)).await;
    }
}

/// Mallory holds the secret, dials the victim and says hello as the honest peer `g`, with the highest
/// incarnation there is. Before ids were bound to keys, the victim took it for a restart of `g`, closed
/// `g`'s link and handed its traffic to mallory. Now the hello is refused (EAUTH, naming `g`), `g`'s
/// link never goes down, and `g`'s writes keep arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_take_over_another_peers_link_with_a_forged_hello() {
    let v = Node::start(config("v", vec![])).await.unwrap();
    let g = Node::start(config("g", vec![v.address().to_string()]))
        .await
        .unwrap();
    eventually("g to link", || {
        v.peers().iter().any(|p| p.id == "g" && p.connected)
    })
    .await;
    let mut events = v.events();
    let mut warnings = v.warnings();
    let (mut reader, mut writer) = dial(&v, &[SECRET]).await;
    say_hello(
        &mut writer,
        &v,
        ReplicaId {
            node: "g".into(),
            incarnation: u64::MAX,
        },
        vec![],
    )
    .await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if reader.read(Duration::from_secs(5)).await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the victim kept talking to mallory as g: the forged hello took g's link"
    );
    g.bucket("s")
        .write("from-g", Some(json("g")), Lifetime::Forever);
    eventually("g's write to reach the victim", || {
        v.bucket("s").contains("from-g")
    })
    .await;
    while let Ok(event) = events.try_recv() {
        assert!(
            !(event.id == "g" && event.kind == PeerEventKind::Down),
            "g's link went down: {event:?}"
        );
    }
    let mut seen = Vec::new();
    eventually("an EAUTH warning naming g", || {
        while let Ok(w) = warnings.try_recv() {
            seen.push(w);
        }
        seen.iter()
            .any(|w| w.code == WarningCode::Auth && w.message.contains("impersonating g"))
    })
    .await;
    assert!(
        !v.peers()
            .iter()
            .any(|p| p.id == "g" && p.address.ends_with(":1")),
        "mallory's address stands for g"
    );
    for n in [v, g] {
        n.close(Duration::from_secs(1)).await;
    }
}

// ---------------------------------------------------------------------------------------------------
// Collection held up by a member's own writes.

/// Timers of a cluster that collects within a second: rounds every 200 ms, tombstones 200 ms old,
/// and a member timeout far past the test, so only a fix can let collection through.
/// Sends, on a scripted member's link, a fetch reply nobody asked for (a protocol error), and
/// expects the victim to close the link within 5 s.
async fn break_the_protocol(reader: &mut FrameReader, writer: &mut FrameWriter) {
    let mut out = Vec::new();
    wire::encode_frame(
        &Message::FetchReply {
            id: 7,
            bucket: "s".into(),
            origin: None,
            writes: vec![],
            done: true,
        },
        &mut out,
    )
    .unwrap();
    writer.send(&out).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while reader.read(Duration::from_secs(5)).await.is_ok() {}
    })
    .await;
    assert!(closed.is_ok(), "the victim kept the link open");
}

fn collecting(c: Config) -> Config {
    Config {
        collect_every: Duration::from_millis(200),
        tombstone_min_age: Some(Duration::from_millis(200)),
        member_timeout: Duration::from_secs(300),
        ..c
    }
}

/// Mallory, linked to `node` and kept linked (it reads everything and says something every 150 ms),
/// pushes its own write `hlc` in bucket `s` and reports holding it in every digest; when the link
/// closes it dials again and does the same. Runs until aborted.
fn stamping_member(node: &Node, hlc: Hlc) -> tokio::task::JoinHandle<()> {
    let address = node.address();
    let wall = node.clock().clone();
    tokio::spawn(async move {
        loop {
            let Ok(stream) = tokio::net::TcpStream::connect(address).await else {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            };
            let security = peer_buckets_engine::Security::from_secrets(&[SECRET]).unwrap();
            let Ok((mut reader, mut writer)) = peer_buckets_engine::connection::open(
                Box::new(stream),
                &security,
                true,
                None::<fn()>,
            )
            .await
            else {
                continue;
            };
            let drain =
                tokio::spawn(
                    async move { while reader.read(Duration::from_secs(30)).await.is_ok() {} },
                );
            let mine = rid("mallory");
            let own = Message::Ops(OpsBatch {
                bucket: "s".into(),
                origin: mine.clone(),
                covered: SeqRanges::up_to(Seq::from(1)),
                writes: vec![write("ahead", hlc, 1, Some("m")).into()],
                superseders: vec![],
                superseded: vec![],
            });
            let digest = Message::Digest {
                bucket: "s".into(),
                context: vec![(mine.clone(), SeqRanges::up_to(Seq::from(1)))],
                number: 1,
                stored: 0,
            };
            let hello = Message::Hello(Hello {
                replica: mine,
                listen_port: 1,
                listen_host: Some("127.0.0.1".into()),
                wall_ms: wall.wall_ms(),
                members: vec![],
            });
            let contexts = Message::Contexts(ContextPart {
                buckets: vec![],
                last: true,
            });
            let mut first = true;
            loop {
                let mut out = Vec::new();
                let frames = if first {
                    vec![&hello, &contexts, &own, &digest]
                } else {
                    vec![&digest]
                };
                first = false;
                for msg in frames {
                    wire::encode_frame(msg, &mut out).unwrap();
                }
                if writer.send(&out).await.is_err() || drain.is_finished() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            drain.abort();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

/// Mallory stamps its own write at the end of time, on its links to both honest peers, over and over.
/// No honest peer can ever take it (a frame past the ceiling is dropped whole, and the link stays),
/// so a collection round that waits for every member to hold what any member holds would wait for it
/// for as long as mallory stays a member. Both honest peers still collect their tombstones within
/// seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_stamping_its_writes_at_the_end_of_time_does_not_hold_up_collection() {
    let v = Node::start(collecting(config("v", vec![]))).await.unwrap();
    let h = Node::start(collecting(config("h", vec![v.address().to_string()])))
        .await
        .unwrap();
    eventually("h and v to link", || connected(&v) == ["h"]).await;
    let end_of_time = Hlc(u64::MAX);
    let mallory = [
        stamping_member(&v, end_of_time),
        stamping_member(&h, end_of_time),
    ];
    eventually("mallory's write to be dropped by both", || {
        v.stats().clock_skew_refused >= 1 && h.stats().clock_skew_refused >= 1
    })
    .await;
    let bucket = v.bucket("s");
    bucket.write("k", Some(json("x")), Lifetime::Forever);
    eventually("the write to reach h", || h.bucket("s").contains("k")).await;
    bucket.write("k", None, Lifetime::Forever);
    eventually("both honest peers to collect the tombstone", || {
        v.stats().tombstones_collected >= 1 && h.stats().tombstones_collected >= 1
    })
    .await;
    for m in mallory {
        m.abort();
    }
    for n in [v, h] {
        n.close(Duration::from_secs(1)).await;
    }
}

/// Mallory links to the victim listing 20 members nobody can reach, and the victim tells its honest
/// peer of mallory; then mallory breaks the protocol. The victim forgets mallory and every member
/// known only through it (it never linked to them), and tells its peers, which forget mallory too
/// (they knew it only from the victim): both collect within seconds. Before, each waited out the
/// member timeout (five minutes here) for members that never existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_known_only_through_an_expelled_member_do_not_hold_up_collection() {
    let v = Node::start(collecting(config("v", vec![]))).await.unwrap();
    let h = Node::start(collecting(config("h", vec![v.address().to_string()])))
        .await
        .unwrap();
    eventually("h and v to link", || connected(&v) == ["h"]).await;
    let fakes: Vec<wire::MemberInfo> = (2..22)
        .map(|port| wire::MemberInfo {
            node: format!("fake{port}").into(),
            address: format!("127.0.0.1:{port}"),
        })
        .collect();
    let (mut reader, mut writer) = dial(&v, &[SECRET]).await;
    say_hello(&mut writer, &v, rid("mallory"), fakes).await;
    eventually("v to know the fakes and h to know mallory", || {
        v.peers().len() == 22 && h.peers().iter().any(|p| p.id == "mallory")
    })
    .await;
    break_the_protocol(&mut reader, &mut writer).await;

    let bucket = v.bucket("s");
    bucket.write("k", Some(json("x")), Lifetime::Forever);
    eventually("the write to reach h", || h.bucket("s").contains("k")).await;
    bucket.write("k", None, Lifetime::Forever);
    eventually("both honest peers to collect the tombstone", || {
        v.stats().tombstones_collected >= 1 && h.stats().tombstones_collected >= 1
    })
    .await;
    assert_eq!(connected(&v), ["h"]);
    assert_eq!(
        v.peers().len(),
        1,
        "v still lists members only mallory vouched for: {:?}",
        v.peers()
    );
    assert_eq!(h.peers().len(), 1, "h still lists mallory: {:?}", h.peers());
    for n in [v, h] {
        n.close(Duration::from_secs(1)).await;
    }
}
