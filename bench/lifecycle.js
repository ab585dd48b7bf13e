#!/usr/bin/env node
'use strict'
// The event loop's longest stall while a Peer opens a data directory of N session keys, while it closes
// it, and while a peer joins a network holding N keys (goal: each at most 20 ms). Each is measured in a
// process of its own that does nothing else, as the longest gap between the ticks of a 1 ms interval
// (so a figure is at least 1 ms): how long that process's JavaScript could not run.
//
// `node bench/lifecycle.js [--quick] [--json]` on its own, or the `lifecycle` section of `npm run bench`
// (N = 1,000,000; 100,000 with --quick). PB_PKG=<checkout> measures another checkout of the package
// (an older commit, to compare before and after) with this same script.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { fork } = require('node:child_process')
const { SESSION, key } = require('./lib/workload')
const { stallMonitor } = require('./lib/util')

const PKG = process.env.PB_PKG || path.join(__dirname, '..')
const SLICE = 10_000

// ---- the roles each child process plays (argv[2]) ----

function loadPeer() {
  return require(PKG).Peer
}

const roles = {
  /** The control: the longest stall of a process that does nothing, over `ms` (the machine's share). */
  async idle(ms) {
    const stalls = stallMonitor()
    await new Promise((r) => setTimeout(r, ms))
    return { idleStall: stalls.take() }
  },

  /** Writes n session keys into a data directory ('relaxed': committed at close). */
  async fill(dir, n) {
    const Peer = loadPeer()
    const p = new Peer({ id: 'bench-lifecycle', dataDir: dir, durability: 'relaxed' })
    await p.ready()
    const b = p.bucket('sessions')
    for (let s = 0; s < n; s += SLICE) {
      for (let i = s; i < Math.min(n, s + SLICE); i++) b.set(key(i), SESSION)
      await new Promise(setImmediate)
    }
    await p.close()
    return { keys: n }
  },

  /** Opens the directory and closes it again, measuring the stall of each. */
  async open(dir) {
    const Peer = loadPeer()
    const stalls = stallMonitor()
    await new Promise((r) => setTimeout(r, 100))
    stalls.take()
    let t0 = process.hrtime.bigint()
    const p = new Peer({ dataDir: dir })
    const constructorMs = Number(process.hrtime.bigint() - t0) / 1e6
    await p.ready()
    const openMs = Number(process.hrtime.bigint() - t0) / 1e6
    const openStall = stalls.take()
    const size = p.bucket('sessions').size
    stalls.take()
    t0 = process.hrtime.bigint()
    await p.close()
    const closeMs = Number(process.hrtime.bigint() - t0) / 1e6
    await new Promise((r) => setTimeout(r, 20))
    const closeStall = stalls.take()
    return { size, constructorMs, openMs, openStall, closeMs, closeStall }
  },

  /** A peer in memory holding n keys; answers with its address and stays. */
  async hold(n) {
    const Peer = loadPeer()
    const p = new Peer({ id: 'bench-holder' })
    await p.ready()
    const b = p.bucket('sessions')
    for (let i = 0; i < n; i++) b.set(key(i), SESSION)
    return { address: p.address, keep: true }
  },

  /** Joins the holder and waits until it holds its n keys, reading a key every millisecond as a
   *  server would: measures the stall, and the longest single `get` (one waits for a merge in
   *  progress). */
  async join(address, n) {
    const Peer = loadPeer()
    const stalls = stallMonitor()
    await new Promise((r) => setTimeout(r, 100))
    stalls.take()
    const t0 = process.hrtime.bigint()
    const p = new Peer({ id: 'bench-joiner', peers: [address] })
    await p.ready()
    const b = p.bucket('sessions')
    let longestGet = 0n
    let i = 0
    const reader = setInterval(() => {
      i = (i + 7919) % n
      const t = process.hrtime.bigint()
      b.get(key(i))
      const took = process.hrtime.bigint() - t
      if (took > longestGet) longestGet = took
    }, 1)
    while (b.size < n) await new Promise((r) => setTimeout(r, 20))
    clearInterval(reader)
    const joinMs = Number(process.hrtime.bigint() - t0) / 1e6
    const joinStall = stalls.take()
    await p.close()
    return { joinMs, joinStall, longestGetMs: Math.round(Number(longestGet) / 1e5) / 10 }
  },
}

if (require.main === module && roles[process.argv[2]]) {
  const [role, ...args] = process.argv.slice(2)
  roles[role](...args.map((a) => (/^\d+$/.test(a) ? Number(a) : a))).then(
    (result) => {
      process.send(result)
      if (!result.keep) process.exit(0)
    },
    (err) => {
      process.send({ error: String((err && err.stack) || err) })
      process.exit(1)
    },
  )
}

// ---- the parent ----

const children = new Set()

function play(role, ...args) {
  return new Promise((resolve, reject) => {
    const child = fork(__filename, [role, ...args.map(String)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    children.add(child)
    child.once('message', (m) => (m.error ? reject(new Error(`${role}: ${m.error}`)) : resolve(m)))
    child.once('exit', (code) => {
      children.delete(child)
      reject(new Error(`${role} exited with ${code}`))
    })
  })
}

/** The three stalls, for a data directory and a network of `n` keys. */
async function run({ n, log = console.log }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peer-buckets-bench-lifecycle-'))
  try {
    let t0 = Date.now()
    await play('fill', dir, n)
    log(`  data directory of ${n.toLocaleString()} session keys written in ${((Date.now() - t0) / 1000).toFixed(1)} s`)
    const { idleStall } = await play('idle', 2000)
    log(`  control: a process doing nothing stalls up to ${idleStall} ms over 2 s (other work on the machine)`)
    const open = await play('open', dir)
    if (open.size !== n) throw new Error(`opened ${open.size} keys of ${n}`)
    log(`  open:  longest stall ${open.openStall} ms (new Peer() returned in ${open.constructorMs.toFixed(1)} ms, ready() after ${open.openMs.toFixed(0)} ms)`)
    log(`  close: longest stall ${open.closeStall} ms (close() settled after ${open.closeMs.toFixed(0)} ms)`)
    t0 = Date.now()
    const holder = await play('hold', n)
    log(`  a peer holding ${n.toLocaleString()} keys is up (${((Date.now() - t0) / 1000).toFixed(1)} s)`)
    const join = await play('join', holder.address, n)
    log(`  join:  longest stall ${join.joinStall} ms, longest get ${join.longestGetMs} ms (held every key after ${join.joinMs.toFixed(0)} ms)`)
    return {
      n,
      idle_stall_ms: idleStall,
      open_stall_ms: open.openStall,
      close_stall_ms: open.closeStall,
      join_stall_ms: join.joinStall,
      join_longest_get_ms: join.longestGetMs,
      open_ms: Math.round(open.openMs),
      close_ms: Math.round(open.closeMs),
      join_ms: Math.round(join.joinMs),
    }
  } finally {
    for (const c of children) c.kill('SIGKILL')
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

module.exports = { run }

if (require.main === module && !roles[process.argv[2]]) {
  const quick = process.argv.includes('--quick')
  const n = quick ? 100_000 : 1_000_000
  console.log(`event-loop stalls of the lifecycle, ${n.toLocaleString()} keys, package ${PKG}`)
  run({ n }).then(
    (r) => {
      if (process.argv.includes('--json')) console.log(JSON.stringify(r))
      process.exit(0)
    },
    (err) => {
      console.error(err)
      process.exit(1)
    },
  )
}
