'use strict'
// Figure 6: catch-up after missing `missed` writes out of `total`: the bytes a returning peer receives
// per byte of the writes it missed.
//
// How: peer A (memory store) and peer B (a dataDir, durability 'strict'), each in its own process,
// hold `total - missed` session writes (bench/lib/workload.js: ~250-byte JSON values) written on A. B leaves
// (its process closes the peer and exits) and A waits until it sees B gone; A then writes `missed`
// new keys. B comes back in a new process on the same dataDir (same id, its data reloaded from disk)
// and catches up. The figure is B's stats().bytesReceived, counted from its start (handshake, hellos,
// digests, pings and data alike) to the moment it holds every key, divided by the bytes of the missed
// writes (key + value as JSON, UTF-8); the same with every frame counted uncompressed (stats'
// bytesReceivedUncompressed per link) says what compression saved. For scale, a fresh memory peer C then joins A and receives the
// whole bucket: what B would have cost without its data.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { spawnWorker, killAll } = require('../lib/procs')
const { dataBytes: writeBytes } = require('../lib/workload')
const { sleep } = require('../lib/util')

const WORKERS = path.join(__dirname, '..', 'workers')
const MiB = 2 ** 20

async function peerBuckets(ctx) {
  const { cfg, log } = ctx
  const total = cfg.catchupTotal
  const missed = cfg.catchupMissed
  const held = total - missed
  const timeoutMs = cfg.joinTimeoutMs
  log(`\n[6] catch-up: A (memory) and B (dataDir) hold ${held.toLocaleString()} writes; B leaves, A writes ` +
    `${missed.toLocaleString()} more, B comes back on its dataDir`)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peer-buckets-bench-catchup-'))
  const workers = []
  const spawn = (name) => {
    const w = spawnWorker(path.join(WORKERS, 'peer.js'), { name })
    workers.push(w)
    return w
  }
  try {
    const a = spawn('catchup-a')
    const b1 = spawn('catchup-b')
    const addrA = (await a.call('open', { id: 'catchup-a' })).address
    await b1.call('open', { id: 'catchup-b', seeds: [addrA], dataDir: dir, durability: 'strict' })
    await Promise.all([a, b1].map((w) => w.call('waitPeers', { n: 1 })))
    await a.call('fill', { start: 0, count: held }, timeoutMs)
    const r1 = await b1.call('waitSize', { target: held, timeoutMs, stats: true }, timeoutMs + 10_000)
    if (!r1.ok) throw new Error(`B holds ${r1.size} of ${held} keys after ${timeoutMs} ms`)
    const liveBytes = r1.stats.bytesReceived
    const liveUncompressed = r1.uncompressed
    const heldBytes = writeBytes(0, held)

    // B leaves: its worker closes the peer (a clean close) and exits.
    await b1.kill(10_000)
    const gone = await a.call('waitGone', { id: 'catchup-b' })
    await a.call('fill', { start: held, count: missed }, timeoutMs)
    const missedBytes = writeBytes(held, missed)

    // B comes back on the same dataDir, in a fresh process (its byte counters start at zero).
    const b2 = spawn('catchup-b2')
    const reopened = await b2.call('open', { id: 'catchup-b', seeds: [addrA], dataDir: dir, durability: 'strict' })
    const r2 = await b2.call('waitSize', { target: total, timeoutMs, stats: true }, timeoutMs + 10_000)
    if (!r2.ok) throw new Error(`B holds ${r2.size} of ${total} keys ${timeoutMs} ms after it came back`)
    const s = r2.stats
    const ratio = s.bytesReceived / missedBytes
    await sleep(1200) // the steady chatter that follows (pings, digests), reported apart
    const after = await b2.call('stats')

    // For scale: a peer without data joining now receives the whole bucket.
    const c = spawn('catchup-c')
    await c.call('open', { id: 'catchup-c', seeds: [addrA] })
    const r3 = await c.call('waitSize', { target: total, timeoutMs, stats: true }, timeoutMs + 10_000)
    const fullBytes = r3.ok ? r3.stats.bytesReceived : null

    log(`  B came back holding ${reopened.size.toLocaleString()} keys (from its dataDir), caught up ` +
      `${missed.toLocaleString()} missed writes in ${(reopened.openMs + r2.ms).toFixed(0)} ms (A saw it gone after ${gone.ms.toFixed(0)} ms)`)
    log(`  received ${s.bytesReceived.toLocaleString()} bytes (stats().bytesReceived of the new process: handshake, ` +
      `hellos, digests and data) for ${missedBytes.toLocaleString()} bytes of missed writes (key + JSON value) ` +
      `= ${ratio.toFixed(3)} bytes per missed byte (${(r2.uncompressed / missedBytes).toFixed(3)} uncompressed); fullResyncs ${s.fullResyncs}, pulls sent ${s.pullsSent}`)
    log(`  (${(after.bytesReceived - s.bytesReceived).toLocaleString()} more bytes of pings and digests in the next 1.2 s; ` +
      `live replication of the first ${held.toLocaleString()} writes cost ${(liveBytes / heldBytes).toFixed(3)} bytes per byte, ` +
      `${(liveUncompressed / heldBytes).toFixed(3)} uncompressed)`)
    if (fullBytes != null) {
      log(`  a fresh peer joining instead received ${(fullBytes / MiB).toFixed(1)} MiB, ` +
        `${(fullBytes / s.bytesReceived).toFixed(0)}× what B did`)
    }
    return {
      bytes_per_missed_byte: ratio,
      bytes_per_missed_byte_uncompressed: r2.uncompressed / missedBytes,
      total,
      missed,
      bytes_received: s.bytesReceived,
      missed_bytes: missedBytes,
      per_link: s.replication.map((l) => ({ id: l.id, bytesReceived: l.bytesReceived, bytesSent: l.bytesSent,
        bytesReceivedUncompressed: l.bytesReceivedUncompressed, bytesSentUncompressed: l.bytesSentUncompressed })),
      reopened_with_keys: reopened.size,
      catchup_ms: reopened.openMs + r2.ms,
      full_resyncs: s.fullResyncs,
      pulls_sent: s.pullsSent,
      chatter_next_1200ms: after.bytesReceived - s.bytesReceived,
      live_bytes_per_byte: liveBytes / heldBytes,
      live_bytes_per_byte_uncompressed: liveUncompressed / heldBytes,
      fresh_join_bytes: fullBytes,
      method: 'dataDir peer closed and reopened; stats().bytesReceived of the reopened process until it holds all keys, ' +
        '/ (key + JSON value bytes of the missed writes)',
    }
  } finally {
    await killAll(workers)
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

module.exports = { peerBuckets, measured: true }
