//! A repair's restore driven by a member (anyone with the cluster's secret): the invariant is that a
//! delete never comes back. A member may ask any replica for a repair (a fetch flagged so), which
//! makes that replica fetch the member's registers at once and restore them; a register under a dot
//! the victim covers, which a tombstone the victim collected beat, must still lose to it once the
//! collected record is forgotten (the node's retention), as it does in a merge (a stand-in).

use peer_buckets_engine::wire::{BucketSummary, ContextPart, Hello, Message, WireWrite};
use peer_buckets_engine::{Lifetime, Session};

mod common;
use common::*;

const REPAIR_ID: u64 = 1 << 63;

#[test]
fn a_member_answering_a_repair_never_brings_back_a_value_whose_delete_was_collected() {
    let mut world = World::new(&["v", "h"]);
    world.bucket(0);
    world.bucket(1);
    world.link(0, 1);
    world
        .bucket(1)
        .write("k", Some(json("v1")), Lifetime::Forever);
    world.pump();
    let old = world.locals[0].bucket(BUCKET).store().registers("k");
    assert_eq!(old.len(), 1, "the victim holds h's value");
    world.bucket(1).write("k", None, Lifetime::Forever);
    world.pump();
    assert!(
        world.collect_among(&[0, 1]) > 0,
        "the tombstone was collected"
    );
    // The retention (an hour by default) passes: only the time of the record stays.
    world.locals[0]
        .bucket(BUCKET)
        .store()
        .forget_collected(u64::MAX);
    assert_eq!(get(&world.bucket(0), "k"), None);

    let v = &world.locals[0];
    let mut v_m = Session::new(
        v,
        &Hello {
            replica: rid("m"),
            listen_port: 7000,
            listen_host: None,
            wall_ms: START_MS,
            members: vec![],
        },
    )
    .unwrap();
    let (context, _) = v.wire_context(&v.bucket(BUCKET));
    v_m.handle(
        v,
        on_the_wire(Message::Contexts(ContextPart {
            buckets: vec![BucketSummary {
                name: BUCKET.into(),
                context,
                collected: vec![],
            }],
            last: true,
        })),
    )
    .expect("the member's contexts");
    due(&mut v_m, v, false);
    v_m.handle(
        v,
        on_the_wire(Message::FetchRequest {
            id: REPAIR_ID | 1,
            bucket: BUCKET.into(),
            prefix: String::new(),
        }),
    )
    .expect("a repair asked");
    let asked: Vec<u64> = due(&mut v_m, v, false)
        .into_iter()
        .filter_map(|m| match m {
            Message::FetchRequest { id, .. } if id & REPAIR_ID != 0 => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(asked.len(), 1, "the victim repairs from the member at once");
    let (origin, w) = old.into_iter().next().unwrap();
    v_m.handle(
        v,
        on_the_wire(Message::FetchReply {
            id: asked[0],
            bucket: BUCKET.into(),
            origin: Some(origin.id().clone()),
            writes: vec![WireWrite::from(w)],
            done: true,
        }),
    )
    .expect("the member's answer");
    assert_eq!(
        get(&v.bucket(BUCKET), "k"),
        None,
        "the value a collected delete beat came back through a member's repair answer"
    );
}
