//! The faults a run injects, drawn from the seed among the kinds its profile enables: cut and held
//! links, crashes (the disk's power cut first) and restarts, clock jumps, duplicate ids and disk
//! errors. Each fault is undone by `World::maintain` when its time comes, or by the heal.

use super::*;

impl World<'_> {
    pub(super) fn cut(&mut self, from: usize, to: usize, until: u64) {
        let (a, b) = (self.hosts[from].ip, self.hosts[to].ip);
        self.sim.partition_oneway(a, b);
        let end = self.cut.entry((from, to)).or_insert(until);
        *end = (*end).max(until);
    }

    pub(super) fn fault(&mut self) {
        let p = self.profile;
        let mut kinds = Vec::new();
        if p.partitions {
            kinds.extend(["partition", "partition"]);
        }
        if p.one_way {
            kinds.push("one-way");
        }
        if p.holds {
            kinds.push("hold");
        }
        if p.resets {
            kinds.push("reset");
        }
        if p.crashes {
            kinds.extend(["crash", "crash"]);
        }
        if p.dup_ids && self.dups == 0 {
            kinds.push("duplicate-id");
        }
        if p.joins && self.joined < 2 {
            kinds.push("join");
        }
        if p.clocks {
            kinds.push("clock-restart");
        }
        if p.disk_faults {
            kinds.extend(["disk-errors", "disk-full"]);
        }
        if kinds.is_empty() {
            return;
        }
        let now = self.now();
        let n = self.hosts.len();
        let kind = *self.rng.pick(&kinds);
        self.faults += 1;
        match kind {
            "partition" => {
                let mut side: Vec<usize> = (0..n).filter(|_| self.rng.chance(0.4)).collect();
                if side.is_empty() || side.len() == n {
                    side = vec![self.rng.below(n as u64) as usize];
                }
                let length = if p.forget && self.rng.chance(0.3) {
                    self.rng.range(3_000, 6_000)
                } else {
                    self.rng.range(200, 2_500)
                };
                // Pair by pair: a returning node reaches one peer first.
                for &i in &side {
                    for j in (0..n).filter(|j| !side.contains(j)) {
                        let heal = now + length + self.rng.below(1_500);
                        self.cut(i, j, heal);
                        let heal = now + length + self.rng.below(1_500);
                        self.cut(j, i, heal);
                    }
                }
                self.note(format!(
                    "fault: partition {side:?} for ~{length} ms, healing pair by pair"
                ));
            }
            "one-way" => {
                let (a, b) = self.two(n);
                let until = now + self.rng.range(200, 3_000);
                self.cut(a, b, until);
                self.note(format!("fault: one-way {a} -> {b} cut until {until}"));
            }
            "hold" => {
                let (a, b) = self.two(n);
                let key = (a.min(b), a.max(b));
                if !self.held.contains_key(&key) {
                    self.sim.hold(self.hosts[a].ip, self.hosts[b].ip);
                    let until = now + self.rng.range(50, 2_000);
                    self.held.insert(key, until);
                    let names = (self.hosts[a].name.clone(), self.hosts[b].name.clone());
                    self.history.holds.push((names.0, names.1, now, until));
                    self.note(format!("fault: hold {a} <-> {b} until {until}"));
                }
            }
            "reset" => {
                let (a, b) = self.two(n);
                let until = now + self.rng.range(1, 5);
                self.cut(a, b, until);
                self.cut(b, a, until);
                self.note(format!(
                    "fault: reset {a} <-> {b} (segments in flight lost)"
                ));
            }
            "crash" | "clock-restart" => {
                let candidates: Vec<usize> = (0..n)
                    .filter(|&i| self.hosts[i].up && self.hosts[i].retire_at.is_none())
                    .collect();
                // Keep more than half of the nodes up.
                if candidates.len() * 2 <= n + 1 {
                    return;
                }
                // Half the time on a failing disk, if there is one: what a flush could not
                // store is then lost, and the checker sees whether a write claimed it.
                let failing: Vec<usize> = candidates
                    .iter()
                    .copied()
                    .filter(|&i| self.hosts[i].disk_faults_until.is_some())
                    .collect();
                let h = if !failing.is_empty() && self.rng.chance(0.5) {
                    *self.rng.pick(&failing)
                } else {
                    *self.rng.pick(&candidates)
                };
                let down = if kind == "crash" {
                    self.rng.range(100, 4_000)
                } else {
                    self.rng.range(1, 50)
                };
                self.crash(h);
                self.hosts[h].restart_at = Some(now + down);
                let next = match self.hosts[h].crashed {
                    Some((_, true, _)) => "a new id, without its directory",
                    Some((_, false, true)) => "its directory",
                    _ if self.hosts[h].plan.borrow().disk.is_some() => "its directory lost",
                    _ => "memory only",
                };
                self.note(format!(
                    "fault: {kind} {} for {down} ms (back with {next})",
                    self.hosts[h].name
                ));
            }
            "disk-errors" | "disk-full" => {
                let candidates: Vec<usize> = (0..n)
                    .filter(|&i| self.hosts[i].up && self.hosts[i].plan.borrow().disk.is_some())
                    .collect();
                if candidates.is_empty() {
                    return;
                }
                let h = *self.rng.pick(&candidates);
                let disk = self.hosts[h].plan.borrow().disk.clone().expect("a disk");
                let faults = if kind == "disk-errors" {
                    let rate = self.rng.range(5, 60) as f64 / 100.0;
                    Faults {
                        write: rate,
                        sync: rate,
                        kind: FaultKind::Either,
                        capacity: None,
                    }
                } else {
                    Faults {
                        capacity: Some(disk.used() + self.rng.range(0, 64 * 1024)),
                        ..Faults::default()
                    }
                };
                let line = format!("fault: {kind} on {} ({faults:?})", self.hosts[h].name);
                disk.set_faults(faults);
                let until = now + self.rng.range(50, 2_000);
                self.hosts[h].disk_faults_until = Some(until);
                self.note(format!("{line} until {until}"));
            }
            "duplicate-id" => {
                self.dups += 1;
                let twin = self.rng.below(p.nodes as u64) as usize;
                let id = self.hosts[twin].plan.borrow().id.clone();
                let seeds = vec![self.address((twin + 1) % p.nodes)];
                let name = format!("d{}", self.dups);
                let h = self.add_host(name.clone(), id.clone(), seeds, false);
                self.hosts[h].retire_at = Some(now + self.rng.range(500, 3_000));
                self.note(format!("fault: {name} starts with {id}'s id"));
            }
            "join" => {
                self.joined += 1;
                let name = format!("j{}", self.joined);
                let seed = self.rng.below(p.nodes as u64) as usize;
                let seeds = vec![self.address(seed)];
                self.add_host(name.clone(), name.clone(), seeds, true);
                self.note(format!("fault: {name} joins through n{seed}"));
            }
            _ => unreachable!(),
        }
    }

    pub(super) fn two(&mut self, n: usize) -> (usize, usize) {
        let a = self.rng.below(n as u64) as usize;
        let b = (a + 1 + self.rng.below(n as u64 - 1) as usize) % n;
        (a, b)
    }

    /// A SIGKILL: the host's runtime is dropped with every task in it. Its outgoing links are cut
    /// meanwhile, so what the drop sends (FINs, in an order that depends on tokio's process-wide task
    /// ids) never leaves: a seed replays the same in any process, after any other run.
    pub(super) fn crash(&mut self, h: usize) {
        // The power first: what the teardown would still write reaches nothing, and the disk is
        // sound again when the machine comes back (the error episode ends with it).
        let disk = self.hosts[h].plan.borrow().disk.clone();
        if let Some(disk) = &disk {
            disk.crash();
            disk.set_faults(Faults::default());
        }
        self.hosts[h].disk_faults_until = None;
        let name = self.hosts[h].name.clone();
        let others: Vec<usize> = (0..self.hosts.len()).filter(|&j| j != h).collect();
        for &j in &others {
            self.sim
                .partition_oneway(self.hosts[h].ip, self.hosts[j].ip);
        }
        self.sim.crash(name.as_str());
        for &j in &others {
            if !self.cut.contains_key(&(h, j)) {
                self.sim.repair_oneway(self.hosts[h].ip, self.hosts[j].ip);
            }
            if self.held.contains_key(&(h.min(j), h.max(j))) {
                self.sim.hold(self.hosts[h].ip, self.hosts[j].ip);
            }
        }
        self.hosts[h].up = false;
        self.hosts[h].slot.borrow_mut().take();
        let id = self.hosts[h].plan.borrow().id.clone();
        let now = self.now();
        // A new id needs a new directory (the old one belongs to the old id); else the directory
        // survives most crashes (a process killed) and is sometimes lost with its machine.
        let new_id = self.profile.new_ids && self.rng.chance(0.3);
        let keep = disk.is_some() && !new_id && self.rng.chance(0.8);
        if new_id {
            self.departed_at = Some(now);
        }
        self.hosts[h].crashed = Some((now, new_id, keep));
        self.history
            .crashes
            .entry(id)
            .or_default()
            .push((now, keep));
    }

    pub(super) fn restart(&mut self, h: usize) {
        let (new_id, keep) = self.hosts[h]
            .crashed
            .map_or((false, false), |(_, new_id, keep)| (new_id, keep));
        let (offset, drift) = self.offset();
        let now = self.now();
        let seed = self.seed;
        let host = &mut self.hosts[h];
        host.generation += 1;
        {
            let mut plan = host.plan.borrow_mut();
            if new_id {
                plan.id = format!("{}-{}", host.name, host.generation);
            }
            if let Some(disk) = &plan.disk {
                if keep {
                    disk.power_on();
                } else {
                    plan.disk = Some(SimDisk::new(derive(
                        seed,
                        5_000 + 64 * host.generation + h as u64,
                    )));
                    host.dir_since = now;
                }
            }
            // Often earlier than before the crash: the clock jumps backwards.
            plan.offset_ms = if self.profile.clocks
                && offset > plan.offset_ms
                && host.generation.is_multiple_of(2)
            {
                plan.offset_ms - (offset - plan.offset_ms).min(500)
            } else {
                offset
            };
            plan.offset_ms = plan.offset_ms.max(-((MAX_CLOCK_SKEW_MS as i64) * 45 / 100));
            plan.drift_ppm = drift;
            plan.node_seed = derive(self.seed, 1_000 + 64 * host.generation + h as u64);
        }
        host.model = Model::default();
        host.up = true;
        host.restart_at = None;
        let name = host.name.clone();
        let line = {
            let plan = host.plan.borrow();
            format!(
                "restart {name} as {} (clock offset {} ms)",
                plan.id, plan.offset_ms
            )
        };
        self.sim.bounce(name.as_str());
        self.note(line);
    }
}
