'use strict'

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
// Spawns fixtures/peer-process.js children and talks to them: wait for the address, send commands
// with timeouts, collect forwarded events, kill. Every child is tracked so a suite can kill them all
// in afterEach/afterAll, whatever happened in the test.

const path = require('node:path')
const { fork } = require('node:child_process')
const { encodeValue, decodeValue } = require('./values')
const { withTimeout } = require('./wait')

const FIXTURE = path.join(__dirname, '..', 'fixtures', 'peer-process.js')
const live = new Set()

class PeerProcess {
  constructor(child, name) {
    this.child = child
    this.name = name
    this.id = undefined
    this.address = undefined
    this.events = [] // { name, data, at }
    this.stdout = ''
    this.stderr = ''
    this.exitCode = undefined
    this.signal = undefined
    this._nextRid = 1
    this._pending = new Map()
    this._waiters = new Set()
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitCode = code
        this.signal = signal
        live.delete(this)
        for (const { reject } of this._pending.values()) {
          reject(new Error(`${this.name} exited (code ${code}, signal ${signal}) with a command pending; stderr: ${this.stderr}`))
        }
        this._pending.clear()
        resolve({ code, signal })
      })
    })
    child.stdout.on('data', (d) => (this.stdout += d))
    child.stderr.on('data', (d) => (this.stderr += d))
    child.on('message', (msg) => this._onMessage(msg))
    child.on('error', () => {}) // e.g. EPIPE on send to a dead child; surfaced through exit / timeouts
  }

  get running() {
    return this.exitCode === undefined && this.signal === undefined
  }

  _onMessage(msg) {
    if (!msg || typeof msg !== 'object') return
    if (msg.type === 'reply') {
      const pending = this._pending.get(msg.rid)
      if (!pending) return
      this._pending.delete(msg.rid)
      if (msg.error) {
        const err = new Error(`${this.name}: ${msg.error.message}`)
        err.code = msg.error.code
        err.remoteName = msg.error.name
        if (msg.error.acked) err.acked = msg.error.acked
        pending.reject(err)
      } else {
        pending.resolve(msg.result)
      }
    } else if (msg.type === 'event') {
      const event = { name: msg.name, data: msg.data, at: Date.now() }
      if (msg.name === 'change') event.data = { ...msg.data, value: decodeValue(msg.data.value) }
      this.events.push(event)
      for (const waiter of [...this._waiters]) waiter(event)
    }
  }

  /** Sends a command and resolves with its result; rejects on a remote error or after `timeout` ms. */
  request(cmd, args = {}, timeout = 5000) {
    if (!this.running || !this.child.connected) {
      return Promise.reject(new Error(`${this.name} is not running; cannot send ${cmd}`))
    }
    const rid = this._nextRid++
    const reply = new Promise((resolve, reject) => {
      this._pending.set(rid, { resolve, reject })
      this.child.send({ rid, cmd, ...args }, (err) => {
        if (err && this._pending.delete(rid)) reject(err)
      })
    })
    return withTimeout(reply, timeout, `${this.name}.${cmd}`).finally(() => this._pending.delete(rid))
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
  const proc = new PeerProcess(child, `peer-process(${id || child.pid})`)
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
