'use strict'
// Figure 3: three processes writing distinct keys at once until every replica holds everything.
//  - peer-buckets: three Peers (processes) on loopback, full mesh learned from one seed, two-way.
//  - scuttlebutt: three Model replicas (processes) linked in a full mesh over loopback TCP, two-way.
//  - Redis: three writer processes to one primary with two replicas, one way, until both replicas
//    hold every key.
// Every system gets an unmeasured warm-up round, then cfg.rounds rounds of N fresh keys:
// peer-buckets writes each round into a bucket of its own, Redis is flushed before each round (so both
// start every round from empty), scuttlebutt's Model cannot be emptied so its rounds add up (a replica is
// done when it holds everything written so far).
// Start = the earliest writer's first write; end = the last replica to hold everything. Every process
// reads process.hrtime.bigint() (CLOCK_MONOTONIC), one clock for the whole machine.

const path = require('node:path')
const { spawnWorker, killAll } = require('../lib/procs')
const { median, sleep, now } = require('../lib/util')
const { info } = require('../lib/redis')

const WORKERS = path.join(__dirname, '..', 'workers')

/** Splits n into 3 parts (the last takes the remainder). */
function thirds(n) {
  const per = Math.floor(n / 3)
  return [per, per, n - 2 * per]
}

function roundResult(n, replies) {
  const t0 = replies.reduce((m, r) => (BigInt(r.t0) < m ? BigInt(r.t0) : m), BigInt(replies[0].t0))
  const t1 = replies.reduce((m, r) => (BigInt(r.tDone) > m ? BigInt(r.tDone) : m), 0n)
  const ok = replies.every((r) => r.ok)
  const secs = Number(t1 - t0) / 1e9
  return { ok, ops: ok ? n / secs : null, secs }
}

/** Opens three peer processes, the 2nd and 3rd seeded only with the 1st, and waits for a full mesh. */
async function startPeerMesh(prefix) {
  const ws = [0, 1, 2].map((i) => spawnWorker(path.join(WORKERS, 'peer.js'), { name: `${prefix}-${i}` }))
  try {
    const first = await ws[0].call('open', { id: `${prefix}-0` })
    await Promise.all([1, 2].map((i) => ws[i].call('open', { id: `${prefix}-${i}`, seeds: [first.address] })))
    await Promise.all(ws.map((w) => w.call('waitPeers', { n: 2, timeoutMs: 15_000 }, 20_000)))
    return { workers: ws, seed: first.address, prefix }
  } catch (err) {
    await killAll(ws)
    throw err
  }
}

/** Runs an unmeasured warm-up round (a fifth of the size) and then cfg.rounds measured rounds. */
async function threeWriters(ctx, workers, label, n, timeoutMs, bucketPerRound = false, roundCount = ctx.cfg.rounds) {
  const { log } = ctx
  const rounds = []
  let held = 0 // keys each replica holds before the round (when rounds share a store)
  let next = 0 // first key number of the round
  for (let r = -1; r < roundCount; r++) {
    const size = r < 0 ? Math.ceil(n / 5) : n
    const parts = thirds(size)
    const target = bucketPerRound ? size : held + size
    const bucketName = bucketPerRound ? `round-${r < 0 ? 'warm' : r}` : undefined
    const replies = await Promise.all(workers.map((w, i) => w.call('writeAndWait', {
      start: next + i * parts[0], count: parts[i], target, timeoutMs, bucketName,
    }, timeoutMs + 10_000)))
    held += size
    next += size
    const res = roundResult(size, replies)
    if (r < 0) {
      if (!res.ok) throw new Error(`${label}: the warm-up round did not converge`)
      continue
    }
    rounds.push(res)
    log(`    round ${r + 1}: ${res.ok ? Math.round(res.ops).toLocaleString() + ' ops/s' : 'did not converge'} ` +
      `(${(res.secs * 1e3).toFixed(0)} ms)`)
    if (!res.ok) break
  }
  const ok = rounds.every((x) => x.ok)
  return { ok, median: ok ? median(rounds.map((x) => x.ops)) : null, rounds, n }
}

async function peerBuckets(ctx) {
  const { cfg, log } = ctx
  log(`  peer-buckets: 3 processes × ${(cfg.replicatedN / 3) | 0} keys each, two-way`)
  const mesh = await startPeerMesh('pb3w')
  ctx.mesh = mesh // kept for the latency figure, which runs next on the same mesh
  const out = await threeWriters(ctx, mesh.workers, 'peer-buckets', cfg.replicatedN, cfg.convergeTimeoutMs, true)
  const stats = await Promise.all(mesh.workers.map((w) => w.call('stats')))
  out.bytes_sent_total = stats.reduce((s, x) => s + x.bytesSent, 0)
  return out
}

async function scuttlebutt(ctx) {
  const { cfg, log } = ctx
  const n = cfg.scuttlebuttN
  log(`  scuttlebutt: 3 processes × ${(n / 3) | 0} keys each, two-way, full mesh`)
  const ws = [0, 1, 2].map((i) => spawnWorker(path.join(WORKERS, 'scuttlebutt.js'), { name: `sb-${i}` }))
  try {
    const ports = []
    for (let i = 0; i < 3; i++) ports.push((await ws[i].call('open', { id: `sb-${i}` })).port)
    await ws[1].call('connect', { ports: [ports[0]] })
    await ws[2].call('connect', { ports: [ports[0], ports[1]] })
    await Promise.all(ws.map((w) => w.call('waitPeers', { n: 2 })))
    return await threeWriters(ctx, ws, 'scuttlebutt', n, cfg.scuttlebuttTimeoutMs, false, cfg.scuttlebuttRounds)
  } finally {
    await killAll(ws)
  }
}

async function redis(ctx) {
  const { cfg, log } = ctx
  const n = cfg.replicatedN
  log(`  redis: 3 writer processes × ${thirds(n)[0]} keys to the primary, 256 in flight each; until both replicas hold them`)
  const ws = [0, 1, 2].map((i) => spawnWorker(path.join(WORKERS, 'redis-writer.js'), { name: `redis-writer-${i}` }))
  const primary = ctx.redis.primary.client()
  const replicas = ctx.redis.replicas.map((r) => r.client())
  try {
    await Promise.all(ws.map((w) => w.call('open', { port: ctx.redis.primary.port })))
    const dbsizes = async () => Promise.all(replicas.map((r) => r.dbsize()))
    const rounds = []
    for (let r = -1; r < cfg.rounds; r++) {
      // Every round starts from empty replicas (FLUSHALL replicates), like peer-buckets' fresh bucket.
      await primary.flushall()
      for (let tries = 0; (await dbsizes()).some((x) => x !== 0); tries++) {
        if (tries > 2000) throw new Error('replicas did not flush')
        await sleep(2)
      }
      const size = r < 0 ? Math.ceil(n / 5) : n
      const ps = thirds(size)
      const writes = Promise.all(ws.map((w, i) => w.call('write', { start: i * ps[0], count: ps[i] }, cfg.convergeTimeoutMs)))
      let done = false
      let tDone = null
      writes.catch(() => {})
      const end = Date.now() + cfg.convergeTimeoutMs
      while (!done && Date.now() < end) {
        const sizes = await dbsizes()
        if (sizes.every((s) => s >= size)) {
          tDone = now()
          done = true
        } else await sleep(1)
      }
      const replies = await writes
      const t0 = replies.reduce((m, x) => (BigInt(x.t0) < m ? BigInt(x.t0) : m), BigInt(replies[0].t0))
      const secs = done ? Number(tDone - t0) / 1e9 : null
      const res = { ok: done, ops: done ? size / secs : null, secs }
      if (r < 0) {
        if (!done) throw new Error('redis: the warm-up round did not converge')
        continue
      }
      rounds.push(res)
      log(`    round ${r + 1}: ${done ? Math.round(res.ops).toLocaleString() + ' ops/s' : 'did not converge'}` +
        (done ? ` (${(secs * 1e3).toFixed(0)} ms)` : ''))
      if (!done) break
    }
    const rinfo = await info(primary, 'replication')
    const ok = rounds.every((x) => x.ok)
    await primary.flushall()
    return { ok, median: ok ? median(rounds.map((x) => x.ops)) : null, rounds, n, connected_slaves: Number(rinfo.connected_slaves) }
  } finally {
    primary.disconnect()
    for (const r of replicas) r.disconnect()
    await killAll(ws)
  }
}

module.exports = { peerBuckets, scuttlebutt, redis, startPeerMesh }
