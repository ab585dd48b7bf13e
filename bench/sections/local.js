'use strict'
// Figures 1 and 2: local get and set from one Node process, against ioredis with 256 commands in
// flight (auto-pipelining) on a local redis-server.

const { Peer } = require('../..')
const { SESSION, SESSION_JSON, SHORT, keys: makeKeys } = require('../lib/workload')
const { now, median } = require('../lib/util')

const KEYSPACE = 8192 // keys cycled through by every loop (a power of two: i & MASK)
const MASK = KEYSPACE - 1
const OPTS = { ack: 'local' }

/** ops/s of one synchronous round of `n` calls of `fn(i)`. */
function syncRound(n, fn) {
  const t0 = now()
  fn(n)
  return n / (Number(now() - t0) / 1e9)
}

async function asyncRound(n, fn) {
  const t0 = now()
  await fn(n)
  return n / (Number(now() - t0) / 1e9)
}

async function rounds(count, round) {
  const xs = []
  for (let r = 0; r < count; r++) xs.push(await round())
  return { median: median(xs), rounds: xs }
}

async function inFlight(count, inflight, fn) {
  let next = 0
  const worker = async () => {
    for (;;) {
      const i = next++
      if (i >= count) return
      await fn(i)
    }
  }
  await Promise.all(Array.from({ length: Math.min(inflight, count) }, worker))
}

async function peerBuckets(ctx) {
  const { cfg, log } = ctx
  const keys = makeKeys(0, KEYSPACE)
  const peer = new Peer({ id: 'bench-local' })
  await peer.ready()
  try {
    const objs = peer.bucket('sessions')
    const strs = peer.bucket('strings')
    for (const k of keys) {
      objs.set(k, SESSION)
      strs.set(k, SHORT)
    }
    let miss = 0
    const getObj = (n) => {
      for (let i = 0; i < n; i++) if (objs.get(keys[i & MASK]).user === undefined) miss++
    }
    const getStr = (n) => {
      for (let i = 0; i < n; i++) if (strs.get(keys[i & MASK]).length === 0) miss++
    }
    const setPromise = (n) => {
      for (let i = 0; i < n; i++) objs.set(keys[i & MASK], SESSION, OPTS) // the returned promise is already resolved
    }
    const setAwait = async (n) => {
      for (let i = 0; i < n; i++) await objs.set(keys[i & MASK], SESSION, OPTS)
    }
    const setCallback = (n) =>
      new Promise((resolve, reject) => {
        let left = n
        const cb = (err) => {
          if (err) reject(err)
          else if (--left === 0) resolve()
        }
        for (let i = 0; i < n; i++) objs.set(keys[i & MASK], SESSION, OPTS, cb)
      })
    // Where the time of a get/set goes: the JSON work alone, the same in every JS client.
    const parseOnly = (n) => {
      for (let i = 0; i < n; i++) if (JSON.parse(SESSION_JSON).user === undefined) miss++
    }
    const stringifyOnly = (n) => {
      for (let i = 0; i < n; i++) if (JSON.stringify(SESSION).length === 0) miss++
    }

    // Warm-up (JIT, caches).
    getObj(cfg.getObjOps / 10)
    getStr(cfg.getStrOps / 10)
    setPromise(cfg.setOps / 10)

    const out = {}
    out.get_obj = await rounds(cfg.rounds, () => syncRound(cfg.getObjOps, getObj))
    log(`  peer-buckets get (object)   ${Math.round(out.get_obj.median).toLocaleString()} ops/s`)
    out.get_str = await rounds(cfg.rounds, () => syncRound(cfg.getStrOps, getStr))
    log(`  peer-buckets get (string)   ${Math.round(out.get_str.median).toLocaleString()} ops/s`)
    out.set = await rounds(cfg.rounds, () => syncRound(cfg.setOps, setPromise))
    log(`  peer-buckets set (promise, not awaited per op)  ${Math.round(out.set.median).toLocaleString()} ops/s`)
    out.set_await = await rounds(cfg.rounds, () => asyncRound(cfg.setOps, setAwait))
    log(`  peer-buckets await set()    ${Math.round(out.set_await.median).toLocaleString()} ops/s`)
    out.set_callback = await rounds(cfg.rounds, () => asyncRound(cfg.setOps, setCallback))
    log(`  peer-buckets set(…, cb)     ${Math.round(out.set_callback.median).toLocaleString()} ops/s`)
    out.json_parse_only = await rounds(cfg.rounds, () => syncRound(cfg.getObjOps, parseOnly))
    out.json_stringify_only = await rounds(cfg.rounds, () => syncRound(cfg.setOps, stringifyOnly))
    log(`  (JSON.parse alone ${Math.round(out.json_parse_only.median).toLocaleString()}/s, ` +
      `JSON.stringify alone ${Math.round(out.json_stringify_only.median).toLocaleString()}/s)`)
    if (miss) throw new Error(`local bench: ${miss} reads returned the wrong value`)
    return out
  } finally {
    await peer.close()
  }
}

async function redis(ctx) {
  const { cfg, log, redis } = ctx
  const keys = makeKeys(0, KEYSPACE)
  const strKeys = keys.map((k) => k + ':s')
  const client = redis.primary.client({ enableAutoPipelining: true })
  try {
    await client.flushall()
    await inFlight(KEYSPACE, 256, (i) => client.set(keys[i], SESSION_JSON))
    await inFlight(KEYSPACE, 256, (i) => client.set(strKeys[i], SHORT))
    let miss = 0
    const getObj = (n) => inFlight(n, 256, (i) => client.get(keys[i & MASK]).then((v) => {
      if (JSON.parse(v).user === undefined) miss++
    }))
    const getStr = (n) => inFlight(n, 256, (i) => client.get(strKeys[i & MASK]).then((v) => {
      if (v.length === 0) miss++
    }))
    const set = (n) => inFlight(n, 256, (i) => client.set(keys[i & MASK], JSON.stringify(SESSION)))
    await getObj(cfg.redisOps / 10)
    const out = {}
    out.get_obj = await rounds(cfg.rounds, () => asyncRound(cfg.redisOps, getObj))
    log(`  redis GET+JSON.parse, 256 in flight  ${Math.round(out.get_obj.median).toLocaleString()} ops/s`)
    out.get_str = await rounds(cfg.rounds, () => asyncRound(cfg.redisOps, getStr))
    log(`  redis GET (string), 256 in flight    ${Math.round(out.get_str.median).toLocaleString()} ops/s`)
    out.set = await rounds(cfg.rounds, () => asyncRound(cfg.redisOps, set))
    log(`  redis SET, 256 in flight             ${Math.round(out.set.median).toLocaleString()} ops/s`)
    if (miss) throw new Error(`redis local bench: ${miss} reads returned the wrong value`)
    await client.flushall()
    return out
  } finally {
    client.disconnect()
  }
}

module.exports = { peerBuckets, redis }
