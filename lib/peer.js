'use strict'
// Peer: one node of the network. It owns the options check, the addon's peer handle, the buckets by
// name (the same SharedBucket object per name), the promises waiting on ack tickets and fetch ids, the
// peer events ('peer-up', 'peer-down', 'warning', 'error'), and the keep-alive timer that holds the
// process open until close() or unref().
//
// Its life: `new Peer()` checks the options and returns; the addon opens the node off the JavaScript
// thread (bind, data directory, seeds) and reports `opened` or `open-failed`. Until then write calls
// (set, delete, touch, fetch) are queued in call order, with their values already encoded, and made
// once it opens (or fail as ready() does); synchronous reads throw ENOTREADY, since the replica is not
// loaded yet. close() drains in the addon and reports `closed` with what was left unacknowledged. An
// open or a close in flight holds the process (unref() or not), as a pending fs call does.

const { EventEmitter } = require('node:events')
const { native } = require('./native.js')
const { randomBytes } = require('node:crypto')
const { codedError, closedError, notReadyError, fromNative } = require('./errors.js')
const { formatMetrics } = require('./metrics.js')
const { LoopDelay } = require('./loop-delay.js')
const { SharedBucket } = require('./bucket.js')
const { SharedCounter, checkCounterArgs } = require('./counter.js')
const {
  MAX_ID_BYTES,
  checkTtl,
  checkBucketName,
  checkReads,
  checkAddress,
  isIpLiteral,
  checkSecrets,
  checkPeerKeys,
  checkDuration,
  checkMaxBuckets,
  checkLogger,
} = require('./validation.js')
const { version: VERSION } = require('../package.json')

// How long close() waits, by default, for linked peers to acknowledge this peer's writes.
const CLOSE_TIMEOUT_MS = 2000
const HOLD_MS = 1 << 30
const noop = () => {}

function checkCloseOptions(options) {
  if (options === undefined) return CLOSE_TIMEOUT_MS
  if (options === null || typeof options !== 'object') throw new TypeError('close(): options must be an object')
  const { timeout } = options
  if (timeout === undefined) return CLOSE_TIMEOUT_MS
  if (typeof timeout !== 'number' || !(timeout >= 0) || timeout > Number.MAX_SAFE_INTEGER) {
    throw new RangeError('close(): options.timeout must be a number of milliseconds, 0 or more')
  }
  return timeout
}

class Peer extends EventEmitter {
  #handle = 0
  #id
  #address
  #publicKey = null
  #open = false
  #failed = false
  #buckets = new Map()
  #counters = new Map()
  #ready
  #readyAsked = false
  #settleReady
  // Calls made before the peer opened: { run, resolve, reject }, made in this order once it does.
  #queue = []
  #keepAlive
  // Ref'd timers while the open, or the close, is in flight.
  #openHold
  #closeHold
  #closing
  #settleClose
  #waiting = new Map()
  #logger
  #loopDelay
  #dataDir

  constructor(options = {}) {
    super()
    if (options === null || typeof options !== 'object') throw new TypeError('Peer: options must be an object')
    let id = options.id
    // Without an id: a random one, or the one kept in dataDir.
    if (id !== undefined) {
      if (typeof id !== 'string' || id.length === 0) throw new TypeError('Peer: options.id must be a non-empty string')
      if (Buffer.byteLength(id) > MAX_ID_BYTES) throw new RangeError(`Peer: options.id must be at most ${MAX_ID_BYTES} bytes`)
    }
    const listen = options.listen === undefined ? '127.0.0.1:0' : checkAddress('Peer: options.listen', options.listen)
    let advertise
    if (options.advertise !== undefined) {
      advertise = checkAddress('Peer: options.advertise', options.advertise)
      if (!isIpLiteral(advertise)) {
        throw new RangeError(`Peer: options.advertise must be 'ip:port' with an IP address (got '${options.advertise}')`)
      }
    }
    let seeds = []
    if (options.peers !== undefined) {
      if (!Array.isArray(options.peers)) throw new TypeError('Peer: options.peers must be an array of addresses')
      seeds = options.peers.map((p, i) => checkAddress(`Peer: options.peers[${i}]`, p))
    }

    const maxClockSkewMs = checkDuration('maxClockSkew', options.maxClockSkew, 60000)
    const tombstoneMinAgeMs = checkDuration('tombstoneMinAge', options.tombstoneMinAge, undefined)
    const memberTimeoutMs = checkDuration('memberTimeout', options.memberTimeout, undefined)
    const rememberCollectedMs = checkDuration('rememberCollected', options.rememberCollected, undefined)
    const maxBuckets = checkMaxBuckets(options.maxBuckets)
    const resolveIntervalMs = checkDuration('resolveInterval', options.resolveInterval, undefined)
    this.#logger = checkLogger(options.logger)
    const secrets = checkSecrets(options.secret)
    const peerKeys = checkPeerKeys(options.peerKeys, secrets)
    if (options.insecure !== undefined && typeof options.insecure !== 'boolean') {
      throw new TypeError('Peer: options.insecure must be a boolean')
    }
    const insecure = options.insecure === true
    if (options.compression !== undefined && typeof options.compression !== 'boolean') {
      throw new TypeError('Peer: options.compression must be a boolean')
    }
    const compression = options.compression !== false
    let dataDir
    if (options.dataDir !== undefined) {
      if (typeof options.dataDir !== 'string' || options.dataDir.length === 0) {
        throw new TypeError('Peer: options.dataDir must be a non-empty path string')
      }
      dataDir = options.dataDir
      this.#dataDir = dataDir
    }
    let durability
    if (options.durability !== undefined) {
      if (dataDir === undefined) throw new TypeError('Peer: options.durability needs options.dataDir')
      if (options.durability !== 'strict' && options.durability !== 'relaxed') {
        throw new RangeError("Peer: options.durability must be 'strict' or 'relaxed'")
      }
      durability = options.durability
    }

    // Without an id or a data directory (which keeps one), a random id, known at once.
    if (id === undefined && dataDir === undefined) id = `peer-${randomBytes(6).toString('hex')}`
    this.#id = id
    this.#ready = new Promise((resolve, reject) => {
      this.#settleReady = { resolve, reject }
    })
    this.#ready.catch(noop) // reported through ready(), queued calls and 'error'
    this.#openHold = setInterval(noop, HOLD_MS)
    // An open Peer keeps the process alive, like a listening net.Server, until close() or unref().
    this.#keepAlive = setInterval(noop, HOLD_MS)
    try {
      this.#handle = native.peerOpen(
        { id, listen, seeds, advertise, maxClockSkewMs, tombstoneMinAgeMs, memberTimeoutMs, rememberCollectedMs, maxBuckets, secrets, peerKeys, insecure, compression, dataDir, durability, logger: this.#logger !== undefined, resolveIntervalMs },
        (batch) => this.#onNative(batch),
      )
    } catch (err) {
      clearInterval(this.#openHold)
      clearInterval(this.#keepAlive)
      throw fromNative(err)
    }
    this.#loopDelay = new LoopDelay()
  }

  #opened(e) {
    clearInterval(this.#openHold)
    this.#id = e.id
    this.#address = e.address
    this.#publicKey = e.publicKey ?? null
    this.#open = true
    for (const b of this.#buckets.values()) b._open(native.peerBucket(this.#handle, b.name))
    for (const c of this.#counters.values()) c._open(native.peerCounter(this.#handle, c.name))
    const queue = this.#queue
    this.#queue = []
    for (const q of queue) {
      try {
        q.resolve(q.run())
      } catch (err) {
        q.reject(fromNative(err))
      }
    }
    this.#settleReady.resolve()
  }

  #openFailed(e) {
    clearInterval(this.#openHold)
    clearInterval(this.#keepAlive)
    this.#failed = true
    this.#loopDelay.stop()
    native.peerRelease(this.#handle)
    // Some storage errors (a lock or a file the process may not open) do not say where: the
    // operator must learn which directory to fix.
    const where = e.code === 'ESTORAGE' && this.#dataDir !== undefined && !e.message.includes(this.#dataDir) ? `; data directory ${this.#dataDir}` : ''
    const err = codedError(e.code, `Peer: ${e.message}${where}`)
    for (const q of this.#queue.splice(0)) q.reject(err)
    this.#settleReady.reject(err)
    // Never silent: like a net.Server that cannot listen, an 'error' event, which is thrown when
    // nobody listens for it and nobody asked ready() (nor called close()).
    if (this.listenerCount('error') > 0 || (!this.#readyAsked && !this.#closing)) {
      process.nextTick(() => this.emit('error', err))
    }
  }

  #onClosed(e) {
    clearInterval(this.#closeHold)
    this.#loopDelay.stop()
    for (const waiter of this.#waiting.values()) waiter.reject(closedError('close()'))
    this.#waiting.clear()
    native.peerRelease(this.#handle)
    const unacknowledged = {}
    for (const u of e.unacknowledged) unacknowledged[u.peer] = u.writes
    this.#settleClose.resolve({ unacknowledged, flushed: e.flushed })
  }

  // Runs `run` now when open, else once the peer opens (after the calls queued before it); the
  // promise settles with what `run` returns, or rejects as ready() does.
  _whenOpen(run) {
    if (this.#open) return Promise.resolve(run())
    if (this.#failed) return this.#ready.then(run)
    return new Promise((resolve, reject) => this.#queue.push({ run, resolve, reject }))
  }

  // Peer events, ack outcomes, fetch results and warnings: PeerEvent objects (src/contract.rs).
  #onNative(events) {
    for (const e of events) {
      switch (e.kind) {
        case 'peer-up':
        case 'peer-down':
          this.emit(e.kind, { id: e.id, address: e.address })
          break
        case 'warning': {
          const warning = { code: e.code, message: e.message }
          if (e.peer != null) warning.peer = e.peer
          if (e.address != null) warning.address = e.address
          this.emit('warning', warning)
          break
        }
        case 'log':
          try {
            this.#logger[e.level](e.message)
          } catch (err) {
            process.nextTick(() => {
              throw err
            })
          }
          break
        case 'ack':
          this.#settle(e.ticket, null)
          break
        case 'ack-timeout':
          this.#settle(e.ticket, Object.assign(
            codedError('EACKTIMEOUT', `write not acknowledged at the requested level in time (acked by: ${e.acked.join(', ') || 'none'})`),
            { acked: e.acked },
          ))
          break
        case 'ack-disk':
          // The flush meant to put it on disk failed; it stays owed and is retried, unconfirmed.
          this.#settle(e.ticket, Object.assign(
            codedError('EDISK', 'write not stored: the data directory cannot be written (see the log)'),
            { acked: e.acked },
          ))
          break
        case 'fetched':
          this.#settle('f' + e.id, null, e.count)
          break
        case 'fetch-failed':
          this.#settle('f' + e.id, codedError('EFETCH', `fetch(): ${e.reason}`))
          break
        case 'opened':
          this.#opened(e)
          break
        case 'open-failed':
          this.#openFailed(e)
          break
        case 'closed':
          this.#onClosed(e)
          break
      }
    }
  }

  #settle(key, err, value) {
    const waiter = this.#waiting.get(key)
    if (!waiter) return
    this.#waiting.delete(key)
    if (err) waiter.reject(err)
    else waiter.resolve(value)
  }

  // Promises for native tickets (ack waits) and fetch ids; kept apart by a prefix.
  _awaitTicket(ticket) {
    return new Promise((resolve, reject) => this.#waiting.set(ticket, { resolve, reject }))
  }

  _awaitFetch(id) {
    return new Promise((resolve, reject) => this.#waiting.set('f' + id, { resolve, reject }))
  }

  /** This peer's id: the one given, or drawn at random; with a dataDir and no id, known once ready. */
  get id() {
    return this.#id
  }

  /** The `host:port` bound, once ready. */
  get address() {
    return this.#address
  }

  /**
   * The static key this peer proves on links with a secret (64 hex digits), once ready: what other
   * peers list in `peerKeys` to pin its id. Kept in dataDir, else drawn per process; null without a
   * secret.
   */
  get publicKey() {
    return this.#publicKey
  }

  /** True once close() was called (or the peer could not open). */
  get closed() {
    return this.#closing !== undefined || this.#failed
  }

  /** Resolves once the peer listens and its data is loaded; rejects with why it could not open. */
  ready() {
    this.#readyAsked = true
    return this.#ready
  }

  #checkOpen(what) {
    if (this.closed) throw closedError(what)
    if (!this.#open) throw notReadyError(what)
  }

  bucket(name, options) {
    checkBucketName(name)
    if (options !== undefined && (options === null || typeof options !== 'object')) {
      throw new TypeError('bucket(): options must be an object')
    }
    const ttl = options && options.ttl !== undefined ? checkTtl('bucket(): options.ttl', options.ttl) : undefined
    const reads = options && options.reads !== undefined ? checkReads(options.reads) : undefined
    if (this.closed) throw closedError('bucket()')
    const b = this.#named(this.#buckets, name, SharedBucket, native.peerBucket)
    // A ttl given again replaces the bucket's default for later writes, a reads mode given again the
    // way get hands out values.
    if (ttl !== undefined) b._setTtl(ttl)
    if (reads !== undefined) b._setReads(reads)
    return b
  }

  counter(name, options) {
    const ttl = checkCounterArgs(name, options)
    if (this.closed) throw closedError('counter()')
    const c = this.#named(this.#counters, name, SharedCounter, native.peerCounter)
    // A ttl given again replaces the counter's default window.
    if (ttl !== undefined) c._setTtl(ttl)
    return c
  }

  // The same object per name in `named`, made on first use: with the addon's handle (`open(peer
  // handle, name)`) when the peer is open, else with 0 until it opens.
  #named(named, name, Class, open) {
    let made = named.get(name)
    if (!made) {
      made = new Class(this, name, this.#open ? open(this.#handle, name) : 0)
      named.set(name, made)
    }
    return made
  }

  peers() {
    this.#checkOpen('peers()')
    return native.peerPeers(this.#handle)
  }

  stats() {
    this.#checkOpen('stats()')
    const { maxMs, recentMs } = this.#loopDelay.read()
    return { ...native.peerStats(this.#handle), eventLoopDelayMaxMs: maxMs, eventLoopDelayRecentMs: recentMs }
  }

  /** Prometheus text exposition of stats() and peers(), per-peer lag included (see lib/metrics.js). */
  metrics() {
    this.#checkOpen('metrics()')
    return formatMetrics(this.stats(), native.peerPeers(this.#handle), VERSION)
  }

  unref() {
    if (this.#keepAlive) this.#keepAlive.unref()
    return this
  }

  ref() {
    if (this.#keepAlive) this.#keepAlive.ref()
    return this
  }

  /**
   * Leaves the network: waits up to `timeout` ms (default 2000) for the linked peers to acknowledge
   * this peer's writes (and for the data directory to take them), then closes. Resolves with
   * `{ unacknowledged: { [peerId]: writes }, flushed }`; the same promise for every call.
   */
  close(options) {
    const timeout = checkCloseOptions(options)
    if (this.#closing) return this.#closing
    this.#closing = new Promise((resolve) => {
      this.#settleClose = { resolve }
    })
    process.nextTick(() => this.emit('close'))
    clearInterval(this.#keepAlive)
    this.#closeHold = setInterval(noop, HOLD_MS)
    this.#ready.then(
      () => native.peerClose(this.#handle, timeout),
      () => this.#onClosed({ unacknowledged: [], flushed: true }),
    )
    return this.#closing
  }
}

module.exports = { Peer }
