//! Seeds given by host name, on real nodes on loopback with an injected resolver: every address a name
//! resolves to is dialed, names are resolved again so instances started later are found, and a seed
//! (an address, or a name) that stays unanswered is reported.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use peer_buckets_engine::{BoxFuture, Config, Node, Resolver, WarningCode};

mod common;
use common::*;

/// A resolver whose answer for the one name it knows the test sets; any other name fails, as does the
/// known one while its answer is an error.
struct Fake {
    name: &'static str,
    answer: Mutex<io::Result<Vec<SocketAddr>>>,
    lookups: Mutex<usize>,
}

impl Fake {
    fn new(name: &'static str) -> Arc<Fake> {
        Arc::new(Fake {
            name,
            answer: Mutex::new(Ok(Vec::new())),
            lookups: Mutex::new(0),
        })
    }

    fn answer(&self, addresses: &[SocketAddr]) {
        *self.answer.lock() = Ok(addresses.to_vec());
    }

    fn fail(&self) {
        *self.answer.lock() = Err(io::Error::new(io::ErrorKind::NotFound, "no such host"));
    }
}

impl Resolver for Fake {
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        *self.lookups.lock() += 1;
        let result = if name == self.name {
            match &*self.answer.lock() {
                Ok(a) => Ok(a.clone()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            }
        } else {
            Err(io::Error::new(io::ErrorKind::NotFound, "unknown name"))
        };
        Box::pin(async move { result })
    }
}

/// A node that knows neither b nor c links to both through a name resolving to their two addresses
/// (with no gossip: b and c do not know each other either), and finds d once the name resolves to it
/// too. The name starts unresolved: it counts as one seed until it resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_name_links_to_every_address_it_resolves_to_and_finds_one_added_later() {
    let b = Node::start(config("b", vec![])).await.unwrap();
    let c = Node::start(config("c", vec![])).await.unwrap();
    let dns = Fake::new("auth.test:7070");
    dns.fail();
    let a = Node::start(Config {
        resolver: dns.clone(),
        resolve_every: Duration::from_millis(200),
        ..config("a", vec!["auth.test:7070".into()])
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.stats().cluster_size, 2, "an unresolved name is one seed");
    assert!(connected(&a).is_empty());

    dns.answer(&[b.address(), c.address()]);
    eventually("a linked to b and c", || connected(&a) == ["b", "c"]).await;

    let d = Node::start(config("d", vec![])).await.unwrap();
    dns.answer(&[b.address(), c.address(), d.address()]);
    eventually("a linked to d, found on a later lookup", || {
        connected(&a) == ["b", "c", "d"]
    })
    .await;
    assert_eq!(a.stats().cluster_size, 4);
    assert!(*dns.lookups.lock() >= 3);
    for n in [a, b, c, d] {
        n.close(Duration::from_millis(200)).await;
    }
}

/// An address that leaves the name's answer and never linked stops being a seed: it no longer counts
/// for the ack levels, so a replica that went away before it was ever met does not hold up
/// 'majority' for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_gone_from_the_answer_stops_counting_as_a_seed() {
    let b = Node::start(config("b", vec![])).await.unwrap();
    let nobody: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dns = Fake::new("auth.test:7070");
    dns.answer(&[b.address(), nobody]);
    let a = Node::start(Config {
        resolver: dns.clone(),
        resolve_every: Duration::from_millis(200),
        ..config("a", vec!["auth.test:7070".into()])
    })
    .await
    .unwrap();
    eventually("a linked to b", || connected(&a) == ["b"]).await;
    assert_eq!(
        a.stats().cluster_size,
        3,
        "a, b and the address nobody answers at"
    );
    dns.answer(&[b.address()]);
    eventually("the gone address no longer counted", || {
        a.stats().cluster_size == 2
    })
    .await;
    for n in [a, b] {
        n.close(Duration::from_millis(200)).await;
    }
}

/// A seed address nobody answers at, and a seed name that does not resolve, are each reported once
/// (EUNREACHABLE, naming the address or the name) after `unreachable_after`, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_that_stay_unanswered_are_reported_unreachable_once() {
    let nobody = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let dns = Fake::new("auth.test:7070");
    dns.fail();
    let a = Node::start(Config {
        resolver: dns.clone(),
        resolve_every: Duration::from_millis(100),
        unreachable_after: Duration::from_millis(500),
        ..config("a", vec![nobody.clone(), "auth.test:7070".into()])
    })
    .await
    .unwrap();
    let mut rx = a.warnings();
    let mut seen = Vec::new();
    tokio::time::sleep(Duration::from_millis(300)).await;
    seen.extend(drain_warnings(&mut rx));
    assert!(seen.is_empty(), "not before unreachable_after: {seen:?}");
    eventually("EUNREACHABLE for the address and the name", || {
        seen.extend(drain_warnings(&mut rx));
        seen.len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    seen.extend(drain_warnings(&mut rx));
    let mut named: Vec<&str> = seen
        .iter()
        .inspect(|w| assert_eq!(w.code, WarningCode::Unreachable, "{w:?}"))
        .map(|w| w.address.as_deref().unwrap())
        .collect();
    named.sort();
    let mut expected = vec!["auth.test:7070", nobody.as_str()];
    expected.sort();
    assert_eq!(named, expected, "each reported once: {seen:?}");
    assert!(seen.iter().any(|w| w.message.contains("has not answered")));
    assert!(seen.iter().any(|w| w.message.contains("no such host")));
    let counted = a.stats().warnings;
    assert!(
        counted.contains(&(WarningCode::Unreachable, 2)),
        "{counted:?}"
    );
    a.close(Duration::from_millis(200)).await;
}
