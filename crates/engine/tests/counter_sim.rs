//! Counters on whole nodes under the deterministic simulation's network (turmoil: simulated TCP and
//! time, one skewed clock per node): increments and decrements on every node while links are cut one
//! way or both and healed, windows opened concurrently on both sides of a partition; after the heal
//! every node shows, for every key, exactly the sum of everything every node added.
//!
//! Replay one seed: `COUNTER_SIM_SEED=n cargo test -p peer-buckets-engine --test counter_sim -- --nocapture`;
//! sweep: `COUNTER_SIM_SEEDS=a..b`.

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use peer_buckets_engine::counter::{bucket_name, Counter};
use peer_buckets_engine::sim::clock::{SimClock, SimTime};
use peer_buckets_engine::sim::rng::{derive, SplitMix};
use peer_buckets_engine::{Clock, Config, Node, SimTcp};

const EPOCH_MS: u64 = 1_767_225_600_000;
const PORT: u16 = 7000;
const NODES: usize = 4;
const KEYS: usize = 3;
/// Windows far longer than a run: every increment still counts at the end.
const TTL_MS: u64 = 3_600_000;

type Slot = Rc<RefCell<Option<Arc<Node>>>>;

fn config(i: usize, ip: IpAddr, seeds: Vec<String>, time: &SimTime, offset_ms: i64) -> Config {
    Config {
        id: Some(format!("n{i}")),
        listen: format!("0.0.0.0:{PORT}"),
        seeds,
        advertise: Some(format!("{ip}:{PORT}")),
        clock: Arc::new(Clock::new(Box::new(SimClock::new(
            time.clone(),
            offset_ms,
            0,
        )))),
        heartbeat: Duration::from_millis(200),
        dead_after: Duration::from_millis(1_200),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(1_000),
        digest_every: Duration::from_millis(300),
        pull_every: Duration::from_millis(300),
        max_clock_skew: Duration::from_millis(2_000),
        transport: Arc::new(SimTcp),
        seed: Some(derive(i as u64, 7)),
        insecure: true,
        ..Config::default()
    }
}

/// Runs one seed; `Err` says what did not hold.
fn run(seed: u64) -> Result<(), String> {
    let mut sim = turmoil::Builder::new()
        .rng_seed(derive(seed, 1))
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
        .simulation_duration(Duration::from_secs(3_000))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(20))
        .build();
    let time: SimTime = Arc::new(AtomicU64::new(EPOCH_MS));
    let mut rng = SplitMix::new(derive(seed, 2));
    let names: Vec<String> = (0..NODES).map(|i| format!("n{i}")).collect();
    let ips: Vec<IpAddr> = names.iter().map(|n| sim.lookup(n.as_str())).collect();
    let mut slots: Vec<Slot> = Vec::new();
    for i in 0..NODES {
        let slot: Slot = Rc::new(RefCell::new(None));
        let seeds = vec![format!("{}:{PORT}", ips[if i == 0 { 1 } else { 0 }])];
        let offset = rng.range(0, 200) as i64 - 100;
        let (s, ip, t) = (slot.clone(), ips[i], time.clone());
        sim.host(names[i].as_str(), move || {
            let config = config(i, ip, seeds.clone(), &t, offset);
            let slot = s.clone();
            async move {
                let node = Node::start(config).await?;
                *slot.borrow_mut() = Some(Arc::new(node));
                std::future::pending::<()>().await;
                Ok(())
            }
        });
        slots.push(slot);
    }
    let mut counters: Vec<Option<Counter>> = (0..NODES).map(|_| None).collect();
    let mut expected = [0i64; KEYS];
    let mut cut: Vec<(usize, usize)> = Vec::new();
    let step = |sim: &mut turmoil::Sim, time: &SimTime| -> Result<(), String> {
        sim.step().map_err(|e| format!("a host failed: {e}"))?;
        time.store(
            EPOCH_MS + sim.elapsed().as_millis() as u64,
            Ordering::SeqCst,
        );
        Ok(())
    };
    // Chaos: 8 virtual seconds of operations and cuts.
    while sim.elapsed() < Duration::from_secs(8) {
        step(&mut sim, &time)?;
        for i in 0..NODES {
            if counters[i].is_none() {
                if let Some(node) = slots[i].borrow().as_ref() {
                    counters[i] = Some(Counter::new(
                        node.bucket(&bucket_name("c")),
                        node.clock().clone(),
                        derive(seed, 100 + i as u64),
                    ));
                }
            }
        }
        match rng.below(100) {
            0..=29 => {
                let i = rng.below(NODES as u64) as usize;
                if let Some(c) = &counters[i] {
                    let k = rng.below(KEYS as u64) as usize;
                    let by = rng.range(0, 7) as i64 - 2;
                    // Key 0 counts without a window; the others in windows.
                    let ttl = if k == 0 { 0 } else { TTL_MS };
                    let bucket = c.bucket().clone();
                    c.add(&format!("k{k}"), by, ttl, |w| {
                        bucket.write(w.key, Some(w.value), w.lifetime);
                    });
                    expected[k] += by;
                }
            }
            30..=31 => {
                let (a, b) = (
                    rng.below(NODES as u64) as usize,
                    rng.below(NODES as u64) as usize,
                );
                if a != b {
                    sim.partition_oneway(ips[a], ips[b]);
                    cut.push((a, b));
                }
            }
            32..=33 => {
                if let Some((a, b)) = cut.pop() {
                    sim.repair_oneway(ips[a], ips[b]);
                }
            }
            _ => {}
        }
    }
    for (a, b) in cut.drain(..) {
        sim.repair_oneway(ips[a], ips[b]);
    }
    // Quiet: up to 60 virtual seconds for every node to show the exact totals.
    let healed = sim.elapsed();
    loop {
        let shown: Vec<Vec<i64>> = counters
            .iter()
            .map(|c| {
                (0..KEYS)
                    .map(|k| c.as_ref().map_or(i64::MIN, |c| c.value(&format!("k{k}"))))
                    .collect()
            })
            .collect();
        if shown.iter().all(|v| v[..] == expected[..]) {
            return Ok(());
        }
        if sim.elapsed() - healed > Duration::from_secs(60) {
            return Err(format!(
                "seed {seed}: 60 s after the heal nodes show {shown:?}, expected {expected:?}"
            ));
        }
        step(&mut sim, &time)?;
    }
}

fn seeds() -> std::ops::Range<u64> {
    if let Ok(one) = std::env::var("COUNTER_SIM_SEED") {
        let n: u64 = one.parse().expect("COUNTER_SIM_SEED: a number");
        return n..n + 1;
    }
    if let Ok(range) = std::env::var("COUNTER_SIM_SEEDS") {
        let (a, b) = range.split_once("..").expect("COUNTER_SIM_SEEDS: a..b");
        return a.parse().expect("a number")..b.parse().expect("a number");
    }
    1..4
}

#[test]
fn counters_on_whole_nodes_through_cut_links_end_as_the_exact_totals_everywhere() {
    let failures: Vec<String> = seeds().filter_map(|s| run(s).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
