'use strict'
// The peer processes of a chaos run: start (a new "run" of a peer each time), SIGKILL, SIGSTOP/SIGCONT,
// clean stop, commands over IPC, and a watch on every exit: an exit the schedule did not cause is a
// crash (check 5). Each run's stdout and stderr go to logs/<id>.<run>.log in the run directory.

const fs = require('node:fs')
const path = require('node:path')
const { fork } = require('node:child_process')
const { Channel } = require('../support/ipc')

const PEER = path.join(__dirname, 'peer.js')

// The network slot of an impostor: a second process with a running peer's id.
const IMPOSTOR = 'impostor'

class PeerRun {
  // `impostor`: a second process with this id, memory only, outside the history (see schedule.js).
  constructor(cluster, spec, run, skew, impostor = false) {
    this.cluster = cluster
    this.spec = spec
    this.id = spec.id
    this.run = run
    this.skew = skew
    this.expectedExit = false
    this.exited = false
    this.paused = false
    const dir = cluster.dir
    this.log = path.join(dir, 'logs', `${this.id}.${run}.log`)
    const slot = impostor ? IMPOSTOR : this.id
    const out = fs.openSync(this.log, 'a')
    const env = { ...process.env, PEER_BUCKETS_TEST_CLOCK_OFFSET_MS: String(skew) }
    delete env.NODE_OPTIONS
    env.CHAOS_PEER = JSON.stringify({
      id: this.id,
      run,
      seed: cluster.seed,
      advertise: cluster.network.ingress.get(slot),
      seeds: spec.seeds.map((s) => cluster.network.ingress.get(s)),
      options: cluster.options,
      dataDir: spec.durable && !impostor ? path.join(dir, 'data', this.id) : undefined,
      durability: impostor ? undefined : spec.durability,
      history: path.join(dir, impostor ? 'impostors' : 'history', `${this.id}.${run}.jsonl`),
      impostor,
      workload: cluster.workload,
    })
    this.child = fork(PEER, [], { env, stdio: ['ignore', out, out, 'ipc'] })
    fs.closeSync(out)
    this.channel = new Channel(this.child, { name: `${this.id}.${run}`, onMessage: (msg) => this.onMessage(msg) })
    this.ready = new Promise((resolve, reject) => {
      this.resolveReady = resolve
      this.rejectReady = reject
    })
    this.ready.catch(() => {})
    this.exit = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exited = true
        this.code = code
        this.signal = signal
        this.rejectReady(new Error(`${this.id}.${this.run} exited before ready (${code ?? signal})`))
        cluster.onExit(this, code, signal)
        resolve({ code, signal })
      })
    })
  }

  onMessage(msg) {
    if (msg.type === 'ready') {
      this.address = msg.address
      this.inc = msg.inc
      this.pid = msg.pid
      this.resolveReady(msg)
    } else if (msg.type === 'fatal') {
      this.rejectReady(new Error(`${this.id}.${this.run} failed to start: ${msg.error.message}`))
    }
  }

  request(cmd, args = {}, timeout = 30000) {
    return this.channel.request(cmd, args, timeout)
  }

  signal_(sig) {
    try {
      this.child.kill(sig)
    } catch {}
  }
}

class Cluster {
  constructor({ dir, seed, specs, options, workload, network, onEvent }) {
    this.dir = dir
    this.seed = seed
    this.specs = new Map(specs.map((s) => [s.id, s]))
    this.options = options
    this.workload = workload
    this.network = network
    this.onEvent = onEvent
    this.current = new Map() // id -> PeerRun (the latest run, running or not)
    this.runs = new Map() // id -> number of runs started
    this.skews = new Map(specs.map((s) => [s.id, s.skew]))
    this.crashes = []
    this.all = [] // every PeerRun
    this.impostor = null // the running impostor's PeerRun, if any
    this.impostors = 0
    for (const sub of ['logs', 'history', 'data', 'impostors']) fs.mkdirSync(path.join(dir, sub), { recursive: true })
  }

  onExit(r, code, signal) {
    if (this.current.get(r.id) === r) this.network.setPeer(r.id, null)
    if (!r.expectedExit) {
      this.crashes.push({ node: r.id, run: r.run, code, signal, t: Date.now(), log: r.log })
      this.onEvent({ kind: 'crash', node: r.id, run: r.run, code, signal })
    }
  }

  /** Starts a new run of `id` (with clock skew `skew`, else its last one); resolves once it listens. */
  async start(id, skew) {
    const prev = this.current.get(id)
    if (prev && !prev.exited) throw new Error(`${id} is already running`)
    if (skew !== undefined) this.skews.set(id, skew)
    const run = this.runs.get(id) || 0
    this.runs.set(id, run + 1)
    const r = new PeerRun(this, this.specs.get(id), run, this.skews.get(id))
    this.current.set(id, r)
    this.all.push(r)
    const ready = await Promise.race([
      r.ready,
      new Promise((_, reject) => setTimeout(() => reject(new Error(`${id}.${run} not ready within 20 s`)), 20000)),
    ])
    this.network.setPeer(id, ready.address, r.child.pid)
    return r
  }

  /** Starts a second process with `id` (see schedule.js); resolves once it listens. */
  async startImpostor(id) {
    const r = new PeerRun(this, this.specs.get(id), `impostor${this.impostors++}`, this.skews.get(id), true)
    r.expectedExit = true
    this.impostor = r
    this.all.push(r)
    const ready = await Promise.race([
      r.ready,
      new Promise((_, reject) => setTimeout(() => reject(new Error(`impostor of ${id} not ready within 20 s`)), 20000)),
    ])
    this.network.setPeer(IMPOSTOR, ready.address, r.child.pid)
    return r
  }

  async killImpostor() {
    const r = this.impostor
    if (!r || r.exited) return
    r.signal_('SIGKILL')
    await r.exit
    this.network.setPeer(IMPOSTOR, null)
  }

  running(id) {
    const r = this.current.get(id)
    return r && !r.exited ? r : undefined
  }

  async kill(id) {
    const r = this.running(id)
    if (!r) return
    r.expectedExit = true
    if (r.paused) r.paused = false
    r.signal_('SIGKILL')
    await r.exit
  }

  pause(id) {
    const r = this.running(id)
    if (!r || r.paused) return
    r.paused = true
    r.signal_('SIGSTOP')
  }

  resume(id) {
    const r = this.running(id)
    if (!r || !r.paused) return
    r.paused = false
    r.signal_('SIGCONT')
  }

  /** A clean stop: close() in the peer (a dataDir peer keeps its incarnation), then the exit. */
  async stop(id) {
    const r = this.running(id)
    if (!r) return
    this.resume(id)
    r.expectedExit = true
    try {
      await r.request('close', {}, 10000)
    } catch {}
    const done = await Promise.race([r.exit.then(() => true), new Promise((resolve) => setTimeout(() => resolve(false), 10000))])
    if (!done) {
      this.onEvent({ kind: 'hang', node: id, run: r.run, note: 'did not exit within 10 s of close(); killed' })
      r.signal_('SIGKILL')
      await r.exit
    }
  }

  live() {
    return [...this.current.values()].filter((r) => !r.exited)
  }
}

module.exports = { Cluster, IMPOSTOR }
