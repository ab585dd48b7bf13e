'use strict'
// The parent's side of peers in child processes: spawns fixtures/peer-child.js, waits for its address,
// sends commands (over support/ipc.js) and collects the events it forwards, pauses and kills it. Every
// child is tracked so a suite can kill them all in afterEach/afterAll, whatever happened in the test.

const path = require('node:path')
const { fork } = require('node:child_process')
const { encodeValue, decodeValue } = require('./values')
const { withTimeout } = require('./wait')
const { Channel } = require('../../support/ipc')

const FIXTURE = path.join(__dirname, '..', 'fixtures', 'peer-child.js')
const live = new Set()

// A signal is delivered asynchronously: until every thread of the child is stopped it may still answer
// (and acknowledge writes). Waits, bounded, until /proc shows every thread stopped ('T').
function waitStopped(pid, ms = 2000) {
  const fs = require('node:fs')
  const tick = new Int32Array(new SharedArrayBuffer(4))
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    let stopped = true
    try {
      for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
        const stat = fs.readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8')
        const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
        if (state !== 'T' && state !== 't') stopped = false
      }
    } catch {
      return // gone, or no /proc
    }
    if (stopped) return
    Atomics.wait(tick, 0, 0, 2)
  }
}

class PeerProcess {
  constructor(child, name) {
    this.child = child
    this.name = name
    this.id = undefined
    this.address = undefined
    this.publicKey = undefined
    this.events = [] // { name, data, at }
    this.stdout = ''
    this.stderr = ''
    this.exitCode = undefined
    this.signal = undefined
    this._waiters = new Set()
    this.channel = new Channel(child, {
      name,
      onMessage: (msg) => this._onMessage(msg),
      describeExit: () => `stderr: ${this.stderr}`,
    })
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitCode = code
        this.signal = signal
        live.delete(this)
        resolve({ code, signal })
      })
    })
    child.stdout.on('data', (d) => (this.stdout += d))
    child.stderr.on('data', (d) => (this.stderr += d))
  }

  get running() {
    return this.exitCode === undefined && this.signal === undefined
  }

  _onMessage(msg) {
    if (msg.type !== 'event') return
    const event = { name: msg.name, data: msg.data, at: Date.now() }
    if (msg.name === 'change') event.data = { ...msg.data, value: decodeValue(msg.data.value) }
    this.events.push(event)
    for (const waiter of [...this._waiters]) waiter(event)
  }

  /** Sends a command and resolves with its result; rejects on a remote error or after `timeout` ms. */
  request(cmd, args = {}, timeout = 5000) {
    return this.channel.request(cmd, args, timeout)
  }

  set(key, value, timeout) {
    return this.request('set', { key, value: encodeValue(value) }, timeout)
  }
  setMany(entries, timeout) {
    return this.request('setMany', { entries: entries.map(([k, v]) => [k, encodeValue(v)]) }, timeout)
  }
  delete(key, timeout) {
    return this.request('delete', { key }, timeout)
  }
  deleteMany(keys, timeout) {
    return this.request('deleteMany', { keys }, timeout)
  }
  async get(key, timeout) {
    return decodeValue(await this.request('get', { key }, timeout))
  }
  has(key, timeout) {
    return this.request('has', { key }, timeout)
  }
  /** { entries: [[key, taggedValue]] sorted by key, digest, size } */
  dump(timeout) {
    return this.request('dump', {}, timeout)
  }
  stats(timeout) {
    return this.request('stats', {}, timeout)
  }
  peers(timeout) {
    return this.request('peers', {}, timeout)
  }

  /** Resolves with the first forwarded event (already seen or future) matching `pred`. */
  waitForEvent(pred, timeout = 5000, what = 'event') {
    const seen = this.events.find(pred)
    if (seen) return Promise.resolve(seen)
    let waiter
    const found = new Promise((resolve) => {
      waiter = (event) => {
        if (pred(event)) resolve(event)
      }
      this._waiters.add(waiter)
    })
    return withTimeout(found, timeout, `${this.name} waiting for ${what}`).finally(() => this._waiters.delete(waiter))
  }

  /** { digest, size } of the bucket, as dump() computes it, without the entries. */
  digest(timeout) {
    return this.request('digest', {}, timeout)
  }

  /** Stops the process (SIGSTOP): it keeps its sockets but answers nothing, as a stalled machine. */
  pause() {
    this.child.kill('SIGSTOP')
    this.paused = true
    waitStopped(this.child.pid)
  }

  /** Resumes a process stopped by pause() (SIGCONT). */
  resume() {
    this.child.kill('SIGCONT')
    this.paused = false
  }

  /** Kills the child (SIGKILL by default) and resolves once it has exited. */
  async kill(signal = 'SIGKILL') {
    if (this.running) {
      try {
        this.child.kill(signal)
        // a stopped process cannot act on a catchable signal until it is continued
        if (this.paused && signal !== 'SIGKILL') this.child.kill('SIGCONT')
      } catch {}
    }
    await withTimeout(this.exited, 5000, `${this.name} exit after ${signal}`)
  }
}

/**
 * Starts a peer process and resolves once it reports its address.
 * options: { id, seeds: [address], bucket, listen, timeout,
 *   options: further Peer options (maxClockSkew, tombstoneMinAge, memberTimeout, ...),
 *   env: extra environment (e.g. PEER_BUCKETS_TEST_CLOCK_OFFSET_MS),
 *   changeEvents: false to stop the child forwarding every bucket 'change' event }
 */
async function spawnPeer({ id, seeds = [], bucket, listen, timeout = 10000, options, env: extraEnv, changeEvents = true } = {}) {
  const env = { ...process.env, PB_ID: id || '', PB_SEEDS: seeds.join(',') }
  if (bucket) env.PB_BUCKET = bucket
  if (listen) env.PB_LISTEN = listen
  if (options) env.PB_OPTIONS = JSON.stringify(options)
  if (!changeEvents) env.PB_CHANGE_EVENTS = '0'
  Object.assign(env, extraEnv)
  delete env.NODE_OPTIONS // jest's own flags are not for the children
  const child = fork(FIXTURE, [], { env, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] })
  const proc = new PeerProcess(child, `peer-child(${id || child.pid})`)
  live.add(proc)
  const ready = new Promise((resolve, reject) => {
    child.on('message', (msg) => {
      if (msg && msg.type === 'ready') resolve(msg)
      if (msg && msg.type === 'fatal') reject(new Error(`${proc.name} failed to start: ${msg.error.message}`))
    })
    proc.exited.then(({ code, signal }) =>
      reject(new Error(`${proc.name} exited before ready (code ${code}, signal ${signal}); stderr: ${proc.stderr}`)),
    )
  })
  try {
    const msg = await withTimeout(ready, timeout, `${proc.name} start`)
    proc.id = msg.id
    proc.address = msg.address
    proc.publicKey = msg.publicKey
  } catch (err) {
    await proc.kill().catch(() => {})
    throw err
  }
  return proc
}

/** Kills every peer process still running (for afterEach / afterAll). */
async function killAll() {
  await Promise.all([...live].map((p) => p.kill().catch(() => {})))
}

module.exports = { spawnPeer, killAll, PeerProcess, FIXTURE }
