'use strict'
// Figure 5: a peer joining a network of two peers that hold N keys, until it holds them all, against a
// new Redis replica's full sync of the same data (REPLICAOF, then master_link_status:up and DBSIZE = N).
// Figure 7 (memory per key) is measured alongside: RSS growth of a standalone peer process over N keys,
// against the growth of Redis's used_memory over the same keys.

const path = require('node:path')
const { spawnWorker, killAll } = require('../lib/procs')
const { now, sleep } = require('../lib/util')
const { info, startRedis, waitReplicasCaughtUp } = require('../lib/redis')
const { keys: makeKeys, sessions, dataBytes } = require('../lib/workload')
const { startPeerMesh } = require('./replicated')

const WORKERS = path.join(__dirname, '..', 'workers')

/** Memory per key of a bucket of cfg.memN keys; with `frozen`, reads: 'frozen' and every key read once. */
async function peerMemory(ctx, { frozen = false } = {}) {
  const { cfg, log } = ctx
  const w = spawnWorker(path.join(WORKERS, 'peer.js'), { name: frozen ? 'pb-mem-frozen' : 'pb-mem', execArgv: ['--expose-gc'] })
  try {
    const r = await w.call('memory', { count: cfg.memN, frozen }, 300_000)
    const perKey = (r.after - r.before) / cfg.memN
    log(`  peer-buckets${frozen ? ", reads 'frozen', every key read once" : ''}: RSS +${((r.after - r.before) / 2 ** 20).toFixed(1)} MiB over ${cfg.memN.toLocaleString()} keys = ${perKey.toFixed(0)} B/key ` +
      `(of which V8's heap reservation ${(r.heapTotalGrowth / cfg.memN).toFixed(0)} B/key: a fixed cost that small runs overstate)`)
    return { bytes_per_key: perKey, ...r, n: cfg.memN }
  } finally {
    await killAll([w])
  }
}

async function peerJoin(ctx) {
  const { cfg, log } = ctx
  const n = cfg.joinN
  log(`  peer-buckets: 2 peers hold ${n.toLocaleString()} keys; a 3rd joins`)
  const ws = [0, 1].map((i) => spawnWorker(path.join(WORKERS, 'peer.js'), { name: `pbjoin-${i}`, execArgv: ['--expose-gc'] }))
  const joiner = spawnWorker(path.join(WORKERS, 'peer.js'), { name: 'pbjoin-new', execArgv: ['--expose-gc'] })
  try {
    const a = await ws[0].call('open', { id: 'join-a' })
    await ws[1].call('open', { id: 'join-b', seeds: [a.address] })
    await Promise.all(ws.map((w) => w.call('waitPeers', { n: 1 })))
    const rssB0 = await ws[1].call('rss')
    const fill = await ws[0].call('fill', { count: n }, 300_000)
    const repl = await ws[1].call('waitSize', { target: n, timeoutMs: cfg.joinTimeoutMs }, cfg.joinTimeoutMs + 10_000)
    if (!repl.ok) throw new Error(`the second peer holds ${repl.size} of ${n} keys after ${cfg.joinTimeoutMs} ms`)
    const rssB1 = await ws[1].call('rss')
    log(`    loaded in ${fill.ms.toFixed(0)} ms; replica held them ${repl.ms.toFixed(0)} ms after that; ` +
      `replica RSS +${((rssB1 - rssB0) / n).toFixed(0)} B/key`)
    await joiner.ready
    const j = await joiner.call('join', { id: 'join-new', seeds: [a.address], target: n, timeoutMs: cfg.joinTimeoutMs }, cfg.joinTimeoutMs + 10_000)
    const keyBytes = dataBytes(0, n)
    log(`    joined: ${j.ok ? j.ms.toFixed(0) + ' ms' : 'NOT complete (' + j.size + ' keys) after ' + j.ms.toFixed(0) + ' ms'}; ` +
      `received ${(j.bytesReceived / 2 ** 20).toFixed(1)} MiB for ${(keyBytes / 2 ** 20).toFixed(1)} MiB of keys+values: ` +
      `${(j.bytesReceived / keyBytes).toFixed(3)} bytes on the wire per byte (${(j.uncompressed / keyBytes).toFixed(3)} uncompressed)`)
    return {
      ok: j.ok,
      ms: j.ok ? j.ms : null,
      n,
      bytes_received: j.bytesReceived,
      data_bytes: keyBytes,
      bytes_received_per_data_byte: j.bytesReceived / keyBytes,
      bytes_received_uncompressed: j.uncompressed,
      bytes_received_uncompressed_per_data_byte: j.uncompressed / keyBytes,
      joiner_rss_per_key: j.rssGrowth / n,
      replica_rss_per_key: (rssB1 - rssB0) / n,
      load_ms: fill.ms,
      replicate_after_load_ms: repl.ms,
    }
  } finally {
    await killAll([...ws, joiner])
  }
}

async function loadRedis(client, n) {
  const batch = 1000
  let inflight = []
  for (let s = 0; s < n; s += batch) {
    const keys = makeKeys(s, Math.min(batch, n - s))
    const values = sessions(s, keys.length)
    const args = []
    keys.forEach((k, i) => args.push(k, JSON.stringify(values[i])))
    inflight.push(client.mset(args))
    if (inflight.length >= 16) {
      await Promise.all(inflight)
      inflight = []
    }
  }
  await Promise.all(inflight)
}

/** Redis memory (used_memory growth over N keys) and a new replica's full sync of them. */
async function redisMemoryAndJoin(ctx) {
  const { cfg, log } = ctx
  const primary = ctx.redis.primary.client()
  const replicas = ctx.redis.replicas.map((r) => r.client())
  let fresh = null
  let freshClient = null
  try {
    await primary.flushall()
    await waitReplicasCaughtUp(primary, replicas)
    await sleep(200)
    const m0 = await info(primary, 'memory')
    const n = Math.max(cfg.memN, cfg.joinN)
    await loadRedis(primary, n)
    await waitReplicasCaughtUp(primary, replicas, 120_000)
    await sleep(200)
    const m1 = await info(primary, 'memory')
    const memKeys = await primary.dbsize()
    const perKey = (Number(m1.used_memory) - Number(m0.used_memory)) / memKeys
    const rssPerKey = (Number(m1.used_memory_rss) - Number(m0.used_memory_rss)) / memKeys
    log(`  redis: used_memory +${((Number(m1.used_memory) - Number(m0.used_memory)) / 2 ** 20).toFixed(1)} MiB over ` +
      `${memKeys.toLocaleString()} keys = ${perKey.toFixed(0)} B/key (RSS ${rssPerKey.toFixed(0)} B/key)`)
    if (cfg.joinN !== n) throw new Error('join and memory sizes differ for redis') // (never, with the sizes in run.js)

    fresh = await startRedis()
    freshClient = fresh.client()
    const t0 = now()
    await freshClient.replicaof('127.0.0.1', String(ctx.redis.primary.port))
    const end = Date.now() + cfg.joinTimeoutMs
    let ms = null
    let polls = 0
    while (Date.now() < end) {
      polls++
      const ri = await info(freshClient, 'replication')
      if (ri.master_link_status === 'up' && (await freshClient.dbsize()) >= cfg.joinN) {
        ms = Number(now() - t0) / 1e6
        break
      }
      await sleep(2)
    }
    log(`  redis: new replica full sync of ${cfg.joinN.toLocaleString()} keys: ${ms == null ? 'did not finish' : ms.toFixed(0) + ' ms'}`)
    await primary.flushall()
    return {
      bytes_per_key: perKey,
      rss_bytes_per_key: rssPerKey,
      mem_n: memKeys,
      join_ms: ms,
      join_n: cfg.joinN,
    }
  } finally {
    primary.disconnect()
    for (const r of replicas) r.disconnect()
    if (freshClient) freshClient.disconnect()
    if (fresh) await fresh.stop()
  }
}

module.exports = { peerMemory, peerJoin, redisMemoryAndJoin }
