'use strict'
// Figures 1 and 2: local get and set from one Node process, against ioredis with 256 commands in
// flight (auto-pipelining) on a local redis-server (standalone: no replica load on it).
// The rounds of the two systems alternate (pb, redis, pb, redis, …) so that a change in the machine's
// load during the run hits both alike and the ratios stay fair; each figure is the median of its rounds.
// The get of a bucket with reads: 'frozen' is set against the same Redis GET+JSON.parse rounds as the
// plain get (its rounds run right after them).

const { Peer } = require('../..')
const { SESSION, SESSION_JSON, SHORT, keys: makeKeys } = require('../lib/workload')
const { now, median, inFlight } = require('../lib/util')

const KEYSPACE = 8192 // keys cycled through by every loop (a power of two: i & MASK)
const MASK = KEYSPACE - 1
const OPTS = { ack: 'local' }

/** ops/s of one round of `n` operations done by `fn(n)` (sync or async). */
async function round(n, fn) {
  const t0 = now()
  await fn(n)
  return n / (Number(now() - t0) / 1e9)
}

async function setupPeerBuckets() {
  const keys = makeKeys(0, KEYSPACE)
  const peer = new Peer({ id: 'bench-local' })
  await peer.ready()
  const objs = peer.bucket('sessions')
  const frozen = peer.bucket('sessions-frozen', { reads: 'frozen' })
  const strs = peer.bucket('strings')
  for (const k of keys) {
    objs.set(k, SESSION)
    frozen.set(k, SESSION)
    strs.set(k, SHORT)
  }
  const state = { miss: 0 }
  const ops = {
    get_obj(n) {
      let miss = 0
      for (let i = 0; i < n; i++) if (objs.get(keys[i & MASK]).user === undefined) miss++
      state.miss += miss
    },
    // The same reads of a bucket with reads: 'frozen': one decoded object per key, no JSON.parse.
    get_obj_frozen(n) {
      let miss = 0
      for (let i = 0; i < n; i++) if (frozen.get(keys[i & MASK]).user === undefined) miss++
      state.miss += miss
    },
    get_str(n) {
      let miss = 0
      for (let i = 0; i < n; i++) if (strs.get(keys[i & MASK]).length === 0) miss++
      state.miss += miss
    },
    // The headline set: the promise form, not awaited per op (set returns an already-resolved promise).
    set(n) {
      for (let i = 0; i < n; i++) objs.set(keys[i & MASK], SESSION, OPTS)
    },
    async set_await(n) {
      for (let i = 0; i < n; i++) await objs.set(keys[i & MASK], SESSION, OPTS)
    },
    set_callback(n) {
      return new Promise((resolve, reject) => {
        let left = n
        const cb = (err) => {
          if (err) reject(err)
          else if (--left === 0) resolve()
        }
        for (let i = 0; i < n; i++) objs.set(keys[i & MASK], SESSION, OPTS, cb)
      })
    },
    // Where the time of a get/set goes: the JSON work alone, the same for every JS client.
    json_parse_only(n) {
      let miss = 0
      for (let i = 0; i < n; i++) if (JSON.parse(SESSION_JSON).user === undefined) miss++
      state.miss += miss
    },
    json_stringify_only(n) {
      let miss = 0
      for (let i = 0; i < n; i++) if (JSON.stringify(SESSION).length === 0) miss++
      state.miss += miss
    },
  }
  return { ops, state, close: () => peer.close() }
}

async function setupRedis(server) {
  const keys = makeKeys(0, KEYSPACE)
  const strKeys = keys.map((k) => k + ':s')
  const client = server.client({ enableAutoPipelining: true })
  await client.flushall()
  await inFlight(KEYSPACE, 256, (i) => client.set(keys[i], SESSION_JSON))
  await inFlight(KEYSPACE, 256, (i) => client.set(strKeys[i], SHORT))
  const state = { miss: 0 }
  const ops = {
    get_obj: (n) => inFlight(n, 256, (i) => client.get(keys[i & MASK]).then((v) => {
      if (JSON.parse(v).user === undefined) state.miss++
    })),
    get_str: (n) => inFlight(n, 256, (i) => client.get(strKeys[i & MASK]).then((v) => {
      if (v.length === 0) state.miss++
    })),
    set: (n) => inFlight(n, 256, (i) => client.set(keys[i & MASK], JSON.stringify(SESSION))),
  }
  return {
    ops,
    state,
    close: async () => {
      await client.flushall()
      client.disconnect()
    },
  }
}

const LABELS = {
  get_obj: ['peer-buckets get (object)', 'redis GET+JSON.parse, 256 in flight'],
  get_obj_frozen: ["peer-buckets get (object), reads 'frozen'"],
  get_str: ['peer-buckets get (string)', 'redis GET (string), 256 in flight'],
  set: ["peer-buckets set (ack 'local', promise not awaited)", 'redis SET, 256 in flight'],
  set_await: ['peer-buckets await set() per op'],
  set_callback: ['peer-buckets set(…, cb)'],
  json_parse_only: ['JSON.parse of the object alone'],
  json_stringify_only: ['JSON.stringify of the object alone'],
}

/** Runs every local figure; returns { pb: {figure: {median, rounds}}, redis: {…} | null }. */
async function run(ctx) {
  const { cfg, log } = ctx
  const sizes = {
    get_obj: cfg.getObjOps, get_obj_frozen: cfg.getStrOps, get_str: cfg.getStrOps, set: cfg.setOps, set_await: cfg.setOps,
    set_callback: cfg.setOps, json_parse_only: cfg.getObjOps, json_stringify_only: cfg.setOps,
  }
  const pb = await setupPeerBuckets()
  let rd = null
  try {
    if (ctx.redis) rd = await setupRedis(ctx.redis.primary)
    // Warm-up (JIT, caches), unmeasured.
    for (const name of ['get_obj', 'get_obj_frozen', 'get_str', 'set']) {
      await pb.ops[name](Math.ceil(sizes[name] / 10))
      if (rd && rd.ops[name]) await rd.ops[name](Math.ceil(cfg.redisOps / 10))
    }
    const out = { pb: {}, redis: rd ? {} : null }
    for (const name of Object.keys(LABELS)) {
      const a = []
      const b = []
      for (let r = 0; r < cfg.rounds; r++) {
        a.push(await round(sizes[name], pb.ops[name]))
        if (rd && rd.ops[name]) b.push(await round(cfg.redisOps, rd.ops[name]))
      }
      out.pb[name] = { median: median(a), rounds: a }
      const fmt = (x) => Math.round(x).toLocaleString().padStart(10)
      log(`  ${LABELS[name][0].padEnd(52)} ${fmt(out.pb[name].median)} ops/s`)
      if (b.length) {
        out.redis[name] = { median: median(b), rounds: b }
        log(`  ${LABELS[name][1].padEnd(52)} ${fmt(out.redis[name].median)} ops/s`)
      }
    }
    if (pb.state.miss) throw new Error(`local bench: ${pb.state.miss} peer-buckets reads returned the wrong value`)
    if (rd && rd.state.miss) throw new Error(`local bench: ${rd.state.miss} redis reads returned the wrong value`)
    return out
  } finally {
    await pb.close()
    if (rd) await rd.close()
  }
}

module.exports = { run }
