//! `Session::handle`: each arriving message checked and dispatched.
//!
//! Invariants: a reply is taken only as the answer to a question this link asked (anything else is a
//! protocol error, which closes the link); a frame that carries writes passes the skew guard before
//! any of them is applied.

use crate::error::LinkError;
use crate::protocol::sync::digest::reported_context;
use crate::protocol::sync::{
    check_bucket_name, check_own_claims, check_own_writes, check_possible, check_writes,
    own_last_seq, Local,
};
use crate::protocol::wire::{Message, MAX_KEY, REPAIR_IDS};
use crate::replication::replica::ReplicaId;
use crate::replication::store::CollectedRecord;
use crate::replication::store::Write;
use std::sync::atomic::Ordering;

use super::{Inbound, Session};
use crate::replication::store::Incoming;

impl Session {
    /// Applies one message from the other end.
    pub fn handle(&mut self, local: &Local, msg: Message) -> Result<Inbound, LinkError> {
        // Another batch of the other end's own writes, or an ack, only adds to what it holds: the
        // rest may ask for writes or change what it is known to hold.
        if !matches!(msg, Message::Ops(_) | Message::Ack { .. }) {
            self.walked_at = None;
        }
        match msg {
            Message::Ops(batch) => {
                self.apply_ops(local, batch)?;
                Ok(Inbound::Nothing)
            }
            Message::Digest {
                bucket,
                context,
                number,
                stored,
            } => {
                check_bucket_name(&bucket)?;
                check_own_claims(local, &bucket, &context)?;
                if let Some(b) = local.remote_bucket(&bucket) {
                    self.digests.heard(&bucket, number);
                    self.buckets
                        .entry(bucket.clone())
                        .or_default()
                        .reported_stored = Some((reported_context(&context), stored));
                    self.absorb_context(local, bucket, &context);
                    self.review(local, &b);
                    self.adopt_bare(local, &b)?;
                }
                Ok(Inbound::Nothing)
            }
            Message::Pull {
                bucket,
                origin,
                ranges,
            } => {
                check_bucket_name(&bucket)?;
                let Some(b) = local.existing_bucket(&bucket) else {
                    return Ok(Inbound::Nothing);
                };
                let origin = local.replicas.intern(&origin);
                let held = b.store().context_of(&origin);
                let wanted = ranges.intersect(&held);
                if !wanted.is_empty() {
                    local.counters.pulls_served.fetch_add(1, Ordering::Relaxed);
                    self.buckets
                        .entry(bucket)
                        .or_default()
                        .requested
                        .entry(origin)
                        .or_default()
                        .union_with(&wanted);
                }
                Ok(Inbound::Nothing)
            }
            Message::Ack { bucket, upto } => {
                check_bucket_name(&bucket)?;
                let own = own_last_seq(local, &bucket);
                if upto > own {
                    return Err(LinkError::Protocol(format!(
                        "an ack of seq {upto} in bucket {bucket}, past this peer's last write {own}"
                    )));
                }
                // An ack stands only for what went out on this link (or what the other end
                // reported holding): an honest peer may have had the rest from a third, but an
                // ack for writes the other end was never sent proves nothing.
                let has = self
                    .buckets
                    .entry(bucket.clone())
                    .or_default()
                    .remote_has
                    .entry(local.me.clone())
                    .or_default();
                let upto = upto.min(has.contiguous());
                local.acks.on_ack(&bucket, &self.peer.id().node, upto);
                Ok(Inbound::Nothing)
            }
            Message::FetchRequest { id, bucket, prefix } => {
                check_bucket_name(&bucket)?;
                if id & REPAIR_IDS != 0 && prefix.is_empty() {
                    self.repair_asked(local, &bucket);
                }
                self.answer_fetch(local, id, bucket, &prefix);
                Ok(Inbound::Nothing)
            }
            Message::FetchReply {
                id,
                bucket,
                origin,
                writes,
                done,
            } => {
                check_bucket_name(&bucket)?;
                let writes: Vec<Write> = writes.into_iter().map(Write::from).collect();
                if !self.fetches_asked.contains(&id) {
                    return Err(LinkError::Protocol(format!(
                        "a fetch reply nobody asked for (fetch {id})"
                    )));
                }
                if done {
                    self.fetches_asked.remove(&id);
                }
                let mut count = writes.len();
                if let Some(origin) = origin {
                    check_writes(&writes, None)?;
                    check_own_writes(local, &bucket, &origin, &writes)?;
                    if !self.skewed_fetches.contains(&id) {
                        if let Err(e) = local.observe(&writes) {
                            check_possible(local, e)?;
                            self.dropped_for_skew(e);
                            self.skewed_fetches.insert(id);
                        }
                    }
                    if self.skewed_fetches.contains(&id) {
                        count = 0;
                    } else if !self.refuses(local, &bucket) {
                        let origin = local.replicas.intern(&origin);
                        if let Some(b) = local.remote_bucket(&bucket) {
                            match self.repairs.get_mut(&id) {
                                Some((name, changed)) if *name == bucket => {
                                    *changed += b.restore_registers(&origin, writes);
                                }
                                Some(_) => {
                                    return Err(LinkError::Protocol(format!(
                                        "a repair answer for another bucket (fetch {id})"
                                    )))
                                }
                                None => self.merge_fetched(local, &b, id, &origin, writes)?,
                            }
                        }
                    }
                } else if count > 0 {
                    return Err(LinkError::Protocol(
                        "fetched writes without an origin".into(),
                    ));
                }
                if done {
                    self.skewed_fetches.remove(&id);
                    self.merge_fetched_touches(local, &bucket, id)?;
                    if let Some((name, changed)) = self.repairs.remove(&id) {
                        local.counters.repairs.fetch_add(1, Ordering::Relaxed);
                        if changed > 0 {
                            local
                                .counters
                                .repairs_changed
                                .fetch_add(1, Ordering::Relaxed);
                            self.repaired.push((name, changed));
                        }
                    }
                }
                Ok(Inbound::Fetched { id, count, done })
            }
            Message::Held {
                bucket,
                origin,
                query,
            } => {
                check_bucket_name(&bucket)?;
                self.answer_held(local, bucket, origin, &query);
                Ok(Inbound::Nothing)
            }
            Message::HeldReply {
                bucket,
                origin,
                covered,
                held,
                superseders,
                last,
            } => {
                check_bucket_name(&bucket)?;
                let superseders: Vec<(ReplicaId, Write)> = superseders
                    .into_iter()
                    .map(|(rid, w)| (rid, w.into()))
                    .collect();
                let o = local.replicas.intern(&origin);
                let Some(state) = self.buckets.get(&bucket) else {
                    return Err(LinkError::Protocol("a held reply nobody asked for".into()));
                };
                let Some(query) = state.held_asked.get(&o) else {
                    if state.held_answered.contains(&o) {
                        // A second copy of a reply already taken whole.
                        return Ok(Inbound::Nothing);
                    }
                    return Err(LinkError::Protocol("a held reply nobody asked for".into()));
                };
                if !covered.difference(query).is_empty() || !held.difference(&covered).is_empty() {
                    return Err(LinkError::Protocol(
                        "a held reply beyond the question asked".into(),
                    ));
                }
                for (rid, w) in &superseders {
                    check_writes(std::slice::from_ref(w), None)?;
                    check_own_writes(local, &bucket, rid, std::slice::from_ref(w))?;
                }
                let b = local.bucket(&bucket);
                if let Err(e) = local.observe(superseders.iter().map(|(_, w)| w)) {
                    check_possible(local, e)?;
                    // Dropped whole, as any frame stamped past this clock's ceiling: nothing is
                    // dropped here without what superseded it, and the question is asked again.
                    self.dropped_for_skew(e);
                    if let Some(s) = self.buckets.get_mut(&bucket) {
                        s.held_skewed = true;
                    }
                    self.answered(local, &b, &o, last);
                    return Ok(Inbound::Nothing);
                }
                // What superseded the registers about to be dropped lands first: none is dropped
                // before this replica holds something at least as new for its key. In one step, as
                // a chunk's (each covering its own dot), touches first: a value a touch expired
                // there is never shown live here for a moment.
                let superseders = superseders
                    .into_iter()
                    .map(|(rid, w)| (local.replicas.intern(&rid), w))
                    .collect();
                local.merge_chunk(&b, &o, Incoming::registers(Vec::new(), superseders))?;
                // What is still stored of what it reports superseded came without a superseder (it
                // compacted the marker naming the key, or holds nothing of the key any more):
                // asked again by key, and dropped only with the answer, after what it holds there.
                let unbacked = b.store().stored_dots(&o, &covered.difference(&held));
                self.ask_held_keys(&b, &o, &unbacked);
                self.answered(local, &b, &o, last);
                Ok(Inbound::Nothing)
            }
            Message::HeldKeys {
                bucket,
                origin,
                keys,
            } => {
                check_bucket_name(&bucket)?;
                if let Some(k) = keys.iter().find(|k| k.is_empty() || k.len() > MAX_KEY) {
                    return Err(LinkError::Protocol(format!("key of {} bytes", k.len())));
                }
                self.answer_held_keys(local, bucket, origin, keys);
                Ok(Inbound::Nothing)
            }
            Message::HeldKeysReply {
                bucket,
                origin,
                keys,
                registers,
            } => {
                check_bucket_name(&bucket)?;
                self.take_held_keys(local, &bucket, &origin, keys, registers)?;
                Ok(Inbound::Nothing)
            }
            Message::Ping { wall_ms } => {
                local.check_clock(wall_ms)?;
                Ok(Inbound::Nothing)
            }
            Message::Contexts(part) => {
                self.absorb_part(local, part)?;
                Ok(Inbound::Nothing)
            }
            Message::Collected { bucket, keys } => {
                check_bucket_name(&bucket)?;
                // A stand-in takes a record's time, so a record past this clock's ceiling is
                // dropped, as a write stamped that far ahead is: its time is a third's (the
                // collector's), and only the sender's own wall clock may refuse the link.
                let (keys, ahead): (Vec<_>, Vec<_>) = keys
                    .into_iter()
                    .partition(|k| local.clock.check(k.hlc).is_ok());
                if !ahead.is_empty() {
                    local
                        .counters
                        .clock_skew_refused
                        .fetch_add(ahead.len() as u64, Ordering::Relaxed);
                }
                if let Some(newest) = keys.iter().map(|k| k.hlc).max() {
                    local
                        .clock
                        .observe(newest)
                        .map_err(|e| local.skew_refused(e))?;
                }
                let records = keys
                    .into_iter()
                    .map(|k| {
                        let origin = k.origin.map(|rid| local.replicas.intern(&rid));
                        let record = CollectedRecord {
                            fingerprint: k.fingerprint,
                            hlc: k.hlc,
                            origin: origin.clone(),
                            at_ms: k.at_ms,
                        };
                        (record, origin)
                    })
                    .collect();
                if let Some(b) = local.remote_bucket(&bucket) {
                    let stand_ins = b.learn_collected(records);
                    local
                        .counters
                        .stand_in_tombstones
                        .fetch_add(stand_ins as u64, Ordering::Relaxed);
                }
                Ok(Inbound::Nothing)
            }
            Message::Horizon { bucket, beyond } => {
                check_bucket_name(&bucket)?;
                check_own_claims(local, &bucket, &beyond)?;
                if let Some(b) = local.remote_bucket(&bucket) {
                    let state = self.buckets.entry(bucket).or_default();
                    for (rid, ranges) in &beyond {
                        let origin = local.replicas.intern(rid);
                        state.beyond.entry(origin).or_default().union_with(ranges);
                    }
                    self.review(local, &b);
                }
                Ok(Inbound::Nothing)
            }
            Message::Digested { reports } => {
                let now = local.clock.now().physical_ms();
                let current = self.digests.round_heard(reports, now);
                self.after_digests(local)?;
                if current {
                    self.compare_stored(local, now);
                }
                Ok(Inbound::Nothing)
            }
            Message::Members(list) => Ok(Inbound::Members(list)),
            Message::Forgotten(list) => Ok(Inbound::Forgotten(list)),
            Message::Leave => Ok(Inbound::Leave),
            Message::Hello(_) => Err(LinkError::Protocol("second hello".into())),
        }
    }
}
