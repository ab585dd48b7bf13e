//! A run from seed to verdict: its thread and turmoil simulation, the chaos phase, the heal, the
//! quiet phase until the replicas settle, and the final checks.

use super::*;

/// Runs one seed of `profile`; `trace` keeps the event lines. Each run gets a thread of its own:
/// the runtimes turmoil builds keep per-thread state, and a run on a fresh thread is the same run
/// whatever ran before it in the process.
pub fn run(profile: &Profile, seed: u64, trace: bool) -> Report {
    let profile = *profile;
    std::thread::Builder::new()
        .name(format!("sim-{seed}"))
        .stack_size(16 << 20)
        .spawn(move || run_here(&profile, seed, trace))
        .expect("a thread for the run")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn run_here(profile: &Profile, seed: u64, trace: bool) -> Report {
    let sim = turmoil::Builder::new()
        .rng_seed(derive(seed, 1))
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
        .simulation_duration(Duration::from_secs(3_600))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(20))
        .tcp_capacity(4_096)
        .build();
    let time: SimTime = Arc::new(std::sync::atomic::AtomicU64::new(EPOCH_MS));
    let mut world = World {
        seed,
        profile: *profile,
        sim,
        time,
        rng: SplitMix::new(derive(seed, 2)),
        hosts: Vec::new(),
        buckets: (0..profile.buckets)
            .map(|b| format!("b{b}").into())
            .collect(),
        history: History::default(),
        cut: BTreeMap::new(),
        held: BTreeMap::new(),
        departed_at: None,
        trace: Vec::new(),
        tracing: trace,
        fingerprint: 0xcbf2_9ce4_8422_2325,
        faults: 0,
        ops: 0,
        joined: 0,
        dups: 0,
    };
    // Every node seeds from the two first ones (n0 from n1), so each has seeds and none is alone.
    for i in 0..profile.nodes {
        let name = format!("n{i}");
        world.sim.lookup(name.as_str());
    }
    for i in 0..profile.nodes {
        let seeds = [0, 1]
            .iter()
            .filter(|&&s| s != i)
            .map(|&s| format!("{}:{PORT}", world.sim.lookup(format!("n{s}").as_str())))
            .collect();
        world.add_host(format!("n{i}"), format!("n{i}"), seeds, true);
    }
    let result = drive(&mut world);
    if let Err(e) = result {
        let at = world.now();
        world.history.violation(at, "host", e);
    }
    Report {
        seed,
        profile: profile.name,
        steps: world.now(),
        ops: world.ops,
        faults: world.faults,
        violations: std::mem::take(&mut world.history.violations),
        fingerprint: world.fingerprint,
        trace: std::mem::take(&mut world.trace),
    }
}

fn drive(world: &mut World) -> Result<(), String> {
    let profile = world.profile;
    while world.now() < profile.chaos_ms {
        world.maintain(false);
        if world.rng.chance(1.0 / profile.op_every_ms as f64) {
            world.operate();
        }
        if world.rng.chance(1.0 / profile.fault_every_ms as f64) {
            world.fault();
        }
        world.step()?;
    }
    world.note("heal: every link repaired, held traffic released, crashed nodes restarted".into());
    world.maintain(true);
    let healed_at = world.now();
    // Settled: every replica holds the same registers and contexts at one instant, after expiries
    // due by then were swept and their events drained (the final checks look at that instant).
    // Users must see the same everywhere within `QUIET_MAX_MS`; the registers must match by then too,
    // or, when an id departed, within `QUIET_MAX_MS` of the moment every peer forgot it (collection
    // waits for it until then; nothing else is allowed that long).
    let member_timeout = world.hosts[0].plan.borrow().member_timeout.as_millis() as u64;
    let collected_by = world
        .departed_at
        .map_or(healed_at, |t| healed_at.max(t + member_timeout))
        + QUIET_MAX_MS;
    let mut views = None;
    let mut observed = false;
    let mut deadline = healed_at + QUIET_MAX_MS;
    while world.now() < deadline {
        // A node whose start failed during the chaos comes back at once.
        world.maintain(true);
        world.step()?;
        let quiet = world.now() - healed_at;
        if quiet >= QUIET_MIN_MS && quiet.is_multiple_of(250) {
            world.sweep_all();
            let now = world.views();
            if World::equal(&now) {
                views = Some(now);
                break;
            }
            if !observed && World::observably_equal(&now) {
                observed = true;
                deadline = collected_by;
            }
        }
    }
    let settled = views.is_some();
    // Every node takes part in the final checks: one that is still not running (its data directory
    // no longer opens) is a failure, never a replica left out.
    let at = world.now();
    let down: Vec<String> = world
        .hosts
        .iter()
        .filter(|h| !h.retired && h.slot.borrow().is_none())
        .map(|h| h.name.clone())
        .collect();
    if !down.is_empty() {
        world
            .history
            .violation(at, "down", format!("{down:?} not running after the heal"));
    }
    let views = match views {
        Some(v) => v,
        None => {
            world.sweep_all();
            world.views()
        }
    };
    let mut summary = String::new();
    for (name, buckets) in &views {
        for (b, v) in buckets {
            summary.push_str(&format!(
                "{name} {b} {} {} {:?};",
                v.len, v.context, v.registers
            ));
        }
    }
    fnv(&mut world.fingerprint, &summary);
    if !settled {
        let at = world.now();
        world.history.violation(
            at,
            "unsettled",
            if observed {
                format!(
                    "the replicas' registers still differed {} ms after the heal ({} ms after every peer could forget the last departed id)",
                    at - healed_at,
                    at.saturating_sub(collected_by - QUIET_MAX_MS)
                )
            } else {
                format!("the replicas did not show the same keys, values and contexts within {QUIET_MAX_MS} ms of the heal")
            },
        );
    }
    let at = world.now();
    let models: Vec<&Model> = world
        .hosts
        .iter()
        .filter(|h| !h.retired && h.slot.borrow().is_some())
        .map(|h| &h.model)
        .collect();
    let joined: Vec<Settled> = views
        .into_iter()
        .zip(models)
        .map(|((name, buckets), model)| Settled {
            name,
            buckets,
            model,
        })
        .collect();
    let mut history = std::mem::take(&mut world.history);
    check::check_final(&mut history, at, &joined);
    world.history = history;
    Ok(())
}
