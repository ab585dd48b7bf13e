//! The operations a run makes on its nodes, drawn from the seed: sets, deletes and touches with every
//! ack level, TTLs, reads and fetches, each recorded in the history before it is made and checked
//! against what the node answers.

use super::*;

impl World<'_> {
    pub(super) fn operate(&mut self) {
        let running = self.running();
        if running.is_empty() {
            return;
        }
        let h = *self.rng.pick(&running);
        let bucket = self.rng.pick(&self.buckets).clone();
        let key: Arc<str> = if self.profile.big && self.rng.chance(0.01) {
            let mut k = format!("p{}/big{}-", self.rng.below(4), self.rng.below(2));
            k.push_str(&"k".repeat(MAX_KEY - k.len()));
            k.into()
        } else {
            format!("p{}/k{}", self.rng.below(4), self.rng.below(8)).into()
        };
        let (node, runtime) = {
            let slot = self.hosts[h].slot.borrow();
            let running = slot.as_ref().unwrap();
            (running.node.clone(), running.runtime.clone())
        };
        let _inside = runtime.enter();
        let roll = self.rng.below(100);
        if roll < 8 {
            let ttl = self.rng.range(10, 3_000);
            let touch = node.bucket(&bucket).touch(key.clone(), ttl);
            let touched = touch.is_some();
            if let Some(t) = touch {
                self.history.touch(&bucket, node.replica().id(), &t);
            }
            self.note(format!(
                "{} touch {bucket}/{} {ttl} ms: {touched}",
                self.hosts[h].name,
                check::short(&key)
            ));
            return;
        }
        if roll < 12 {
            let peers: Vec<String> = node
                .peers()
                .into_iter()
                .filter(|p| p.connected)
                .map(|p| p.id)
                .collect();
            if peers.is_empty() {
                return;
            }
            let from = self.rng.pick(&peers).clone();
            let prefix = format!("p{}/", self.rng.below(4));
            let ok = node.fetch(&bucket, &from, &prefix).is_ok();
            self.note(format!(
                "{} fetch {bucket}/{prefix} from {from}: {ok}",
                self.hosts[h].name
            ));
            return;
        }
        let op = self.history.writes.len() as u64;
        let (value, lifetime) = if roll < 30 {
            (None, Lifetime::Forever)
        } else {
            let pad = if self.profile.big && self.rng.chance(0.003) {
                MAX_VALUE - 32
            } else {
                self.rng.below(40) as usize
            };
            let lifetime = match self.rng.below(10) {
                0..=5 => Lifetime::Forever,
                6..=8 => Lifetime::Ttl(self.rng.range(5, 4_000)),
                _ => {
                    // Due already, or about to be, by some clocks.
                    let wall = node.clock().wall_ms();
                    Lifetime::Until(wall + self.rng.range(0, 2_000) - 1_000)
                }
            };
            (
                Some(value::encode_json(&check::value_text(op, pad))),
                lifetime,
            )
        };
        let level = match self.rng.below(10) {
            0..=3 => AckLevel::Local,
            4..=6 => AckLevel::One,
            7..=8 => AckLevel::Majority,
            _ => AckLevel::All,
        };
        let timeout = Duration::from_millis(self.rng.range(300, 3_000));
        let b = node.bucket(&bucket);
        let deleted = value.is_none();
        let (write, registered) =
            node.write_acked(&b, key.clone(), value, lifetime, level, timeout);
        let strict = node.is_strict();
        let (status, ackers) = match &registered {
            Registered::Met(by) if level != AckLevel::Local || strict => {
                (Status::Acked, by.clone())
            }
            Registered::Met(_) => (Status::Local, Vec::new()),
            Registered::Pending(ticket) => {
                if let Some(r) = self.hosts[h].slot.borrow_mut().as_mut() {
                    r.pending.insert(*ticket, op);
                }
                (Status::Pending, Vec::new())
            }
        };
        let now = self.now();
        self.history.record(WriteRec {
            at_ms: now,
            node: node.id().clone(),
            replica: node.replica().id().clone(),
            bucket: bucket.clone(),
            key: key.clone(),
            hlc: write.hlc,
            deleted,
            expires_ms: write.expires().encoded(),
            seq: write.seq,
            level,
            strict,
            status,
            ackers,
        });
        self.ops += 1;
        self.note(format!(
            "{} op {op}: {} {bucket}/{} {:?} expires {} {level:?} {status:?}",
            self.hosts[h].name,
            if deleted { "delete" } else { "set" },
            check::short(&key),
            write.hlc,
            write.expires().encoded(),
        ));
    }
}
