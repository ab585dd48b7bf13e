'use strict'
// One peer of a chaos run, in its own process: opens a Peer, runs the seeded workload on bucket 'chaos'
// when told to, and records every operation in its history file (JSON lines, written with a
// synchronous write before and after each step, so a SIGKILL loses nothing that happened).
//
// Configuration: env CHAOS_PEER (JSON, see run.js); the engine's clock offset comes from
// PEER_BUCKETS_TEST_CLOCK_OFFSET_MS. Commands from the harness arrive as requests of support/ipc.js,
// each answered by one handler of `commands`.
//
// History records (one per line; `t` is the real time in ms, Date.now(), comparable across peers):
//   { type: 'start', node, run, pid, skew, dataDir }
//   { type: 'ready', node, run, inc, address }                  inc: this replica's incarnation (hex)
//   { type: 'invoke', id, node, run, op, key, ack, timeout, ttl, enc, members, connected }
//   { type: 'applied', id, stamp | lostTo+before, touched }    stamp: { hlc, origin, inc } of the write
//   { type: 'ok' | 'fail', id, code, acked, message }
// A write whose register, read back at once, is not its own was beaten before it could be read: by a
// remote write that arrived in between (`lostTo` newer than `before`) or, if `lostTo` equals `before`,
// by what this replica already held: a local write that does not take effect (a clock gone backwards).

const fs = require('node:fs')
const path = require('node:path')
const { Peer } = require(path.join(__dirname, '..'))
const { Rng } = require('./rng')
const { serve, send, exitWithParent } = require('../support/ipc')

const config = JSON.parse(process.env.CHAOS_PEER)
const { id, run } = config
const W = config.workload
const historyFd = fs.openSync(config.history, 'a')

function record(entry) {
  entry.t = Date.now()
  fs.writeSync(historyFd, JSON.stringify(entry) + '\n')
}

exitWithParent()

const rng = new Rng(config.seed, `workload/${id}/${run}`)
let peer
let bucket
let inc
let opSeq = 0
let uniq = 0
const myUnique = [] // unique keys this run set
let inflight = 0
let running = false
let loopDone
const idle = new Set()

function stampOf(info) {
  return info ? { hlc: info.hlc, origin: info.origin, inc: info.incarnation } : null
}

function sameStamp(a, b) {
  return !!a && !!b && a.hlc === b.hlc && a.origin === b.origin && a.incarnation === b.incarnation
}

function valueFor(opId) {
  const pad = rng.chance(0.05) ? 'x'.repeat(rng.int(100, 4000)) : ''
  if (rng.chance(0.1)) return { enc: 'bytes', value: Buffer.from(`op:${opId}|${pad}`) }
  return { enc: 'json', value: { op: opId, n: rng.int(0, 1e6), ...(pad ? { pad } : {}) } }
}

/** The op id a stored value carries. */
function valueId(value) {
  if (value === undefined) return null
  if (Buffer.isBuffer(value)) {
    const text = value.toString('latin1')
    return text.startsWith('op:') ? text.slice(3, text.indexOf('|')) : '?'
  }
  return value && typeof value.op === 'string' ? value.op : '?'
}

function pickAck() {
  return rng.weighted({ local: 50, one: 20, majority: 18, all: 12 })
}

function pickKey(op) {
  if (rng.chance(0.8) || (op !== 'set' && myUnique.length === 0)) return `h${rng.int(0, W.hotKeys - 1)}`
  if (op === 'set') {
    const key = `u.${id}.${run}.${uniq++}`
    myUnique.push(key)
    return key
  }
  return rng.pick(myUnique)
}

function track(promise, opId) {
  inflight++
  promise.then(
    () => record({ type: 'ok', id: opId }),
    (err) => record({ type: 'fail', id: opId, code: err.code, acked: err.acked, message: String(err.message).slice(0, 200) }),
  ).finally(() => {
    inflight--
    if (inflight === 0) for (const f of idle) f()
  })
}

/** One operation: invoke record, the call, what the register says right after it, the outcome. */
function operate(op, key, forced = {}) {
  const opId = `${id}.${run}.${opSeq++}`
  const entry = { type: 'invoke', id: opId, node: id, run, op, key }
  let options
  let value
  if (op === 'set' || op === 'delete') {
    const ack = forced.ack || pickAck()
    const timeout = rng.int(500, 3000)
    options = { ack, timeout }
    entry.ack = ack
    entry.timeout = timeout
    if (ack !== 'local') {
      // The other peers 'majority' and 'all' count (the cluster size, less this peer).
      entry.members = peer.stats().clusterSize - 1
      entry.connected = peer.peers().filter((p) => p.state === 'connected').length
    }
  }
  if (op === 'set') {
    const r = rng.float()
    const ttl = forced.ttl !== undefined ? forced.ttl : r < 0.75 ? 0 : r < 0.85 ? rng.int(1000, 15000) : rng.int(60000, 600000)
    if (ttl) options.ttl = ttl
    entry.ttl = ttl
    const v = valueFor(opId)
    value = v.value
    entry.enc = v.enc
  } else if (op === 'touch') {
    entry.ttl = rng.chance(0.3) ? rng.int(1000, 15000) : rng.int(60000, 600000)
  }
  record(entry)
  const before = bucket.inspect(key)
  let promise
  try {
    if (op === 'set') promise = bucket.set(key, value, options)
    else if (op === 'delete') promise = bucket.delete(key, options)
    else promise = bucket.touch(key, entry.ttl)
  } catch (err) {
    record({ type: 'fail', id: opId, code: err.code, message: String(err.message).slice(0, 200), thrown: true })
    return null
  }
  const after = bucket.inspect(key)
  if (op === 'touch') {
    // touch() settles with whether it touched; the register tells its stamp.
    promise.then((touched) => {
      const mine = touched && after && after.touch && after.touch.origin === id && after.touch.incarnation === inc &&
        !(before && before.touch && before.touch.hlc === after.touch.hlc)
      record({ type: 'applied', id: opId, touched, stamp: mine ? stampOf(after.touch) : null })
    })
    track(promise, opId)
    return opId
  }
  const mine = after && after.origin === id && after.incarnation === inc && after.deleted === (op === 'delete') &&
    !sameStamp(before, after)
  if (mine) record({ type: 'applied', id: opId, stamp: stampOf(after) })
  else record({ type: 'applied', id: opId, stamp: null, lostTo: stampOf(after), before: stampOf(before), lostDeleted: after ? after.deleted : null })
  track(promise, opId)
  return opId
}

function randomOp() {
  const op = rng.weighted({ set: 55, delete: 25, touch: 20 })
  operate(op, pickKey(op))
}

async function workload() {
  const interval = 1000 / W.rate
  while (running) {
    if (inflight < W.concurrency) randomOp()
    await new Promise((resolve) => setTimeout(resolve, interval * (0.5 + rng.float())))
  }
}

function settled() {
  if (inflight === 0) return Promise.resolve()
  return new Promise((resolve) => {
    const f = () => {
      idle.delete(f)
      resolve()
    }
    idle.add(f)
  })
}

const sha = (text) => require('node:crypto').createHash('sha256').update(text).digest('hex')

const commands = {
  go: () => {
    if (!running) {
      running = true
      loopDone = workload()
    }
    return true
  },
  quiesce: async () => {
    running = false
    await loopDone
    await settled()
    return { ops: opSeq }
  },
  peers: () => peer.peers(),
  stats: () => peer.stats(),
  // A digest of the live registers that no clock could call dead soon (see run.js), and the links.
  digest: ({ window, detail }) => {
    const horizon = Date.now() + window
    const parts = []
    for (const key of bucket.keys().sort()) {
      const info = bucket.inspect(key)
      if (!info || info.deleted) continue
      const expires = info.touch ? info.touch.expires : info.expires // a newer touch's expiry is the one in force
      if (expires !== 0 && expires < horizon) continue
      parts.push([key, info.hlc, info.origin, info.incarnation, info.expires, info.touch ? info.touch.hlc : '', valueId(bucket.get(key))])
    }
    return { digest: sha(JSON.stringify(parts)), count: parts.length, peers: peer.peers(), ...(detail ? { parts } : {}) }
  },
  // Every register and live value of `keys`, and the live keys (to catch a key nobody wrote).
  state: ({ keys }) => {
    const out = {}
    for (const key of keys) {
      const info = bucket.inspect(key)
      const value = bucket.get(key)
      if (info || value !== undefined) out[key] = { info: info || null, value: valueId(value) }
    }
    return { registers: out, live: bucket.keys(), now: Date.now() }
  },
  close: async () => {
    running = false
    await peer.close()
    fs.closeSync(historyFd)
    setImmediate(() => process.exit(0))
    return true
  },
}

serve(commands)

async function main() {
  record({ type: 'start', node: id, run, pid: process.pid, skew: Number(process.env.PEER_BUCKETS_TEST_CLOCK_OFFSET_MS || 0), dataDir: !!config.dataDir })
  peer = new Peer({
    ...config.options,
    id,
    listen: '127.0.0.1:0',
    advertise: config.advertise,
    peers: config.seeds,
    ...(config.dataDir ? { dataDir: config.dataDir, durability: config.durability } : {}),
  })
  await peer.ready()
  bucket = peer.bucket('chaos')
  if (config.impostor) {
    // A second process with a peer's id only links and replicates: it writes nothing, not even a marker.
    send({ type: 'ready', address: peer.address, inc: null, pid: process.pid })
    return
  }
  // A key only this run writes tells this replica's incarnation.
  const marker = `inc.${id}.${run}`
  await bucket.set(marker, { op: `${id}.${run}.marker` })
  inc = bucket.inspect(marker).incarnation
  record({ type: 'ready', node: id, run, inc, address: peer.address })
  send({ type: 'ready', address: peer.address, inc, pid: process.pid })
}

main().catch((err) => {
  try {
    record({ type: 'fatal', node: id, run, message: String(err && err.stack) })
  } catch {}
  process.stderr.write(`chaos peer ${id} failed: ${err && err.stack}\n`)
  send({ type: 'fatal', error: { message: String(err && err.message), code: err && err.code } })
  process.exit(1)
})
