'use strict'
// Peer: one node of the network. It owns the options check, the addon's peer handle, the buckets by
// name (the same SharedBucket object per name), the promises waiting on ack tickets and fetch ids, the
// peer events ('peer-up', 'peer-down', 'warning'), and the keep-alive timer that holds the process open
// until close() or unref().

const { EventEmitter } = require('node:events')
const { native } = require('./native.js')
const { codedError, closedError, fromNative } = require('./errors.js')
const { formatMetrics } = require('./metrics.js')
const { SharedBucket } = require('./bucket.js')
const { SharedCounter, checkCounterArgs } = require('./counter.js')
const {
  MAX_ID_BYTES,
  checkTtl,
  checkBucketName,
  checkAddress,
  isIpLiteral,
  checkSecrets,
  checkDuration,
  checkMaxBuckets,
} = require('./validation.js')
const { version: VERSION } = require('../package.json')

const RESOLVED = Promise.resolve()

class Peer extends EventEmitter {
  #handle = 0
  #buckets = new Map()
  #counters = new Map()
  #ready
  #keepAlive
  #closing
  #closed = false
  #waiting = new Map()

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
    const secrets = checkSecrets(options.secret)
    if (options.insecure !== undefined && typeof options.insecure !== 'boolean') {
      throw new TypeError('Peer: options.insecure must be a boolean')
    }
    const insecure = options.insecure === true
    let dataDir
    if (options.dataDir !== undefined) {
      if (typeof options.dataDir !== 'string' || options.dataDir.length === 0) {
        throw new TypeError('Peer: options.dataDir must be a non-empty path string')
      }
      dataDir = options.dataDir
    }
    let durability
    if (options.durability !== undefined) {
      if (dataDir === undefined) throw new TypeError('Peer: options.durability needs options.dataDir')
      if (options.durability !== 'strict' && options.durability !== 'relaxed') {
        throw new RangeError("Peer: options.durability must be 'strict' or 'relaxed'")
      }
      durability = options.durability
    }

    const opened = native.peerOpen(
      { id, listen, seeds, advertise, maxClockSkewMs, tombstoneMinAgeMs, memberTimeoutMs, rememberCollectedMs, maxBuckets, secrets, insecure, dataDir, durability },
      (batch) => this.#onNative(batch),
    )
    Object.defineProperty(this, 'id', { value: opened.id, enumerable: true })
    if (opened.error) {
      this.#closed = true
      const err = codedError(opened.code, `Peer: ${opened.error}`)
      this.#ready = Promise.reject(err)
      this.#ready.catch(() => {}) // reported through ready(); not an unhandled rejection by itself
      return
    }
    this.#handle = opened.handle
    this.address = opened.address
    this.#ready = Promise.resolve()
    // An open Peer keeps the process alive, like a listening net.Server, until close() or unref().
    this.#keepAlive = setInterval(() => {}, 1 << 30)
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

  /** True once close() was called (or the peer could not listen). */
  get closed() {
    return this.#closed
  }

  ready() {
    return this.#ready
  }

  bucket(name, options) {
    checkBucketName(name)
    if (options !== undefined && (options === null || typeof options !== 'object')) {
      throw new TypeError('bucket(): options must be an object')
    }
    const ttl = options && options.ttl !== undefined ? checkTtl('bucket(): options.ttl', options.ttl) : undefined
    if (this.closed) throw closedError('bucket()')
    let b = this.#buckets.get(name)
    if (!b) {
      b = new SharedBucket(this, name, native.peerBucket(this.#handle, name))
      this.#buckets.set(name, b)
    }
    // The same object per name; a ttl given again replaces the bucket's default for later writes.
    if (ttl !== undefined) b._setTtl(ttl)
    return b
  }

  counter(name, options) {
    const ttl = checkCounterArgs(name, options)
    if (this.closed) throw closedError('counter()')
    let c = this.#counters.get(name)
    if (!c) {
      c = new SharedCounter(this, name, native.peerCounter(this.#handle, name))
      this.#counters.set(name, c)
    }
    // The same object per name; a ttl given again replaces the counter's default window.
    if (ttl !== undefined) c._setTtl(ttl)
    return c
  }

  peers() {
    if (this.closed) throw closedError('peers()')
    return native.peerPeers(this.#handle)
  }

  stats() {
    if (this.closed) throw closedError('stats()')
    return native.peerStats(this.#handle)
  }

  /** Prometheus text exposition of stats() and peers(), per-peer lag included (see lib/metrics.js). */
  metrics() {
    if (this.closed) throw closedError('metrics()')
    return formatMetrics(native.peerStats(this.#handle), native.peerPeers(this.#handle), VERSION)
  }

  unref() {
    if (this.#keepAlive) this.#keepAlive.unref()
    return this
  }

  ref() {
    if (this.#keepAlive) this.#keepAlive.ref()
    return this
  }

  close() {
    if (this.#closing) return this.#closing
    this.#closed = true
    clearInterval(this.#keepAlive)
    for (const waiter of this.#waiting.values()) waiter.reject(closedError('close()'))
    this.#waiting.clear()
    try {
      if (this.#handle) native.peerClose(this.#handle)
      this.#closing = RESOLVED
    } catch (err) {
      this.#closing = Promise.reject(fromNative(err))
    }
    return this.#closing
  }
}

module.exports = { Peer }
