'use strict'
// Figure 6 (not measured yet): catch-up after missing `missed` writes out of `total`: bytes a returning
// peer receives per byte of the writes it missed. The shape is ready; what is missing is in the product:
// the byte counters must separate the catch-up traffic of one link (per-peer stats), and a peer must be
// able to leave and come back with its data (dataDir, or a paused link), so that it really misses writes
// rather than rejoining empty.
//
// To add it: start three peers (replicatedN-style mesh), write `total - missed` keys and wait for all;
// stop one peer's link (kill and restart with its dataDir), write `missed` more keys on the others, bring
// it back, wait until it holds `total`, then divide its stats().bytesReceived growth by the bytes of the
// missed writes (keys + values). Return { bytes_per_missed_byte, … } and run.js fills
// catchup_bytes_per_missed_byte from it.

async function peerBuckets(ctx) {
  return { bytes_per_missed_byte: null, total: ctx.cfg.catchupTotal, missed: ctx.cfg.catchupMissed, note: 'not measured yet: needs dataDir and per-link byte stats' }
}

module.exports = { peerBuckets, measured: false }
