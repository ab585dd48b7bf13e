'use strict'
// Durable set (issue 7): set ops/s of a Peer with a dataDir, durability 'strict' (a write settles once
// fsynced; writes waiting together share one group commit) and 'relaxed' (committed every second), and
// of the memory store, against redis-server with `appendonly yes` and `appendfsync always` /
// `appendfsync everysec` (each with its data dir in a temp folder, removed at the end).
//
// Both sides run the same driver: `inflight` writes in flight (a sliding window: each of 256 loops
// awaits its write, then issues the next; on our side the promise of set(), on Redis's ioredis with
// auto-pipelining), then one write at a time (await each) for strict against `appendfsync always`.
// The session object is serialised per write on both sides. Rounds alternate between the systems so a
// change in the machine's load (or disk) hits all alike; each figure is the median of its rounds.
// Redis's AOF rewrite is turned off (auto-aof-rewrite-percentage 0), so no background rewrite lands in
// a round: Redis's best case.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { Peer } = require('../..')
const { SESSION, keys: makeKeys } = require('../lib/workload')
const { now, median, inFlight } = require('../lib/util')
const { startRedis, info } = require('../lib/redis')

const KEYSPACE = 8192
const MASK = KEYSPACE - 1
const INFLIGHT = 256

async function round(n, fn) {
  const t0 = now()
  await fn(n)
  return n / (Number(now() - t0) / 1e9)
}

const LABELS = {
  memory: 'peer-buckets set, memory store',
  strict: "peer-buckets set, dataDir 'strict'",
  relaxed: "peer-buckets set, dataDir 'relaxed'",
  redis_always: 'redis SET, appendfsync always',
  redis_everysec: 'redis SET, appendfsync everysec',
  strict_seq: "peer-buckets set, dataDir 'strict', one at a time",
  redis_always_seq: 'redis SET, appendfsync always, one at a time',
}

async function run(ctx) {
  const { cfg, log } = ctx
  const keys = makeKeys(0, KEYSPACE)
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'peer-buckets-bench-durable-'))
  const peers = []
  const servers = []
  const clients = []
  try {
    const openPeer = async (name, opts) => {
      const p = new Peer({ id: `bench-durable-${name}`, ...opts })
      peers.push(p)
      await p.ready()
      return p.bucket('sessions')
    }
    const mem = await openPeer('memory', {})
    const strict = await openPeer('strict', { dataDir: path.join(tmp, 'strict'), durability: 'strict' })
    const relaxed = await openPeer('relaxed', { dataDir: path.join(tmp, 'relaxed'), durability: 'relaxed' })
    const pbSet = (b) => (n) => inFlight(n, INFLIGHT, (i) => b.set(keys[i & MASK], SESSION))
    const ops = {
      memory: pbSet(mem),
      strict: pbSet(strict),
      relaxed: pbSet(relaxed),
      strict_seq: async (n) => {
        for (let i = 0; i < n; i++) await strict.set(keys[i & MASK], SESSION)
      },
    }
    const sizes = {
      memory: cfg.durableOps, strict: cfg.durableOps, relaxed: cfg.durableOps, strict_seq: cfg.durableSeqOps,
      redis_always: cfg.durableRedisOps, redis_everysec: cfg.durableRedisOps, redis_always_seq: cfg.durableSeqOps,
    }
    let redisNote = null
    if (ctx.redis) {
      for (const fsync of ['always', 'everysec']) {
        const s = await startRedis({
          extra: ['--appendonly', 'yes', '--appendfsync', fsync, '--auto-aof-rewrite-percentage', '0'],
        })
        servers.push(s)
        const c = s.client({ enableAutoPipelining: true })
        clients.push(c)
        const conf = await c.config('GET', 'appendfsync')
        if (conf[1] !== fsync) throw new Error(`redis-server: appendfsync is ${conf[1]}, wanted ${fsync}`)
        ops[`redis_${fsync}`] = (n) => inFlight(n, INFLIGHT, (i) => c.set(keys[i & MASK], JSON.stringify(SESSION)))
        if (fsync === 'always') {
          ops.redis_always_seq = async (n) => {
            for (let i = 0; i < n; i++) await c.set(keys[i & MASK], JSON.stringify(SESSION))
          }
        }
      }
      redisNote = `redis-server with appendonly yes, data dirs under ${os.tmpdir()}`
    }
    // Warm-up (JIT, files created, every key written once), unmeasured.
    for (const name of Object.keys(LABELS)) {
      if (ops[name]) await ops[name](name.endsWith('_seq') ? Math.ceil(sizes[name] / 5) : KEYSPACE)
    }
    const rounds = Object.fromEntries(Object.keys(LABELS).map((k) => [k, []]))
    const r = cfg.durableRounds
    for (let i = 0; i < r; i++) {
      for (const name of Object.keys(LABELS)) if (ops[name]) rounds[name].push(await round(sizes[name], ops[name]))
    }
    const out = { inflight: INFLIGHT, sizes, redis: redisNote, fs_dir: tmp }
    const fmt = (x) => Math.round(x).toLocaleString().padStart(10)
    for (const name of Object.keys(LABELS)) {
      if (!rounds[name].length) continue
      out[name] = { median: median(rounds[name]), rounds: rounds[name] }
      const how = name.endsWith('_seq') ? '' : `, ${INFLIGHT} in flight`
      log(`  ${(LABELS[name] + how).padEnd(56)} ${fmt(out[name].median)} ops/s`)
    }
    if (clients.length) {
      const p = await info(clients[0], 'persistence')
      out.redis_aof_always_status = { aof_enabled: p.aof_enabled, aof_last_write_status: p.aof_last_write_status }
      if (p.aof_enabled !== '1') throw new Error('redis-server: the AOF is not enabled')
    }
    log(`  (strict, ${INFLIGHT} in flight, is ${(out.strict.median / out.memory.median * 100).toFixed(0)}% of the memory store's rate; ` +
      `relaxed ${(out.relaxed.median / out.memory.median * 100).toFixed(0)}%. Disk: the temp folder ${os.tmpdir()}, both sides)`)
    return out
  } finally {
    for (const c of clients) c.disconnect()
    await Promise.all(servers.map((s) => s.stop().catch(() => {})))
    for (const p of peers) await p.close().catch(() => {})
    fs.rmSync(tmp, { recursive: true, force: true })
  }
}

module.exports = { run, LABELS }
