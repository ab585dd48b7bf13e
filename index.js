'use strict'
// The JavaScript face of peer-buckets: Peer and SharedBucket over the native engine (native.js is the
// loader `napi build` writes). This file checks arguments, encodes values (JSON text or raw bytes),
// offers promise and callback forms, and turns native batches into EventEmitter events.

const { EventEmitter } = require('node:events')
const { native, hot, VALUE_KIND, ACK_LEVELS, CHANGE, codedError, fromNative } = require('./lib/native.js')
const { formatMetrics } = require('./lib/metrics.js')
const { version: VERSION } = require('./package.json')

const MAX_KEY_BYTES = 64 * 1024
const MAX_VALUE_BYTES = 8 * 1024 * 1024
const MAX_BUCKET_NAME_BYTES = 255
const RESOLVED = Promise.resolve()
const RESOLVED_TRUE = Promise.resolve(true)
const RESOLVED_FALSE = Promise.resolve(false)

// Errors -----------------------------------------------------------------------------------------

function closedError(what) {
  return codedError('ECLOSED', `${what}: the peer is closed`)
}

function notBuilt(what) {
  return codedError('ENOTSUP', `${what} is not supported yet by this version of peer-buckets`)
}

function checkKey(fn, key) {
  if (typeof key !== 'string' || key.length === 0) {
    throw new TypeError(`${fn}: key must be a non-empty string`)
  }
  // Keys travel as UTF-8: a lone surrogate would turn into U+FFFD and merge distinct keys.
  if (!key.isWellFormed()) {
    throw new TypeError(`${fn}: key must be well-formed Unicode (it has a lone surrogate)`)
  }
  // A UTF-16 unit is at most 3 bytes of UTF-8, so only long keys need measuring.
  if (key.length * 3 > MAX_KEY_BYTES && Buffer.byteLength(key, 'utf8') > MAX_KEY_BYTES) {
    throw new RangeError(`${fn}: key must be at most ${MAX_KEY_BYTES} bytes of UTF-8`)
  }
}

function checkPrefix(fn, prefix) {
  if (prefix === undefined) return ''
  if (typeof prefix !== 'string') throw new TypeError(`${fn}: prefix must be a string`)
  return prefix
}

const DEFAULT_ACK_TIMEOUT = 5000
// The largest ack timeout: an integer number of ms exact in a double, whose deadline (now + timeout) the
// native side computes in 64-bit milliseconds without overflow.
const MAX_ACK_TIMEOUT = Number.MAX_SAFE_INTEGER

// A time to live in milliseconds: a positive finite number.
function checkTtl(what, ttl) {
  if (typeof ttl !== 'number' || !(ttl > 0) || !Number.isFinite(ttl)) {
    throw new RangeError(`${what} must be a positive number of milliseconds`)
  }
  return ttl
}

const ACK_LOCAL = ACK_LEVELS.get('local')

// Write options, checked; returns [ack level code for the native side, timeout in ms, ttl in ms or 0].
function checkWriteOptions(fn, options, allowTtl, defaultTtl) {
  if (options === undefined || options === null) return [ACK_LOCAL, DEFAULT_ACK_TIMEOUT, defaultTtl]
  if (typeof options !== 'object') throw new TypeError(`${fn}: options must be an object`)
  let ttl = defaultTtl
  if (options.ttl !== undefined) {
    if (!allowTtl) throw new TypeError(`${fn}: ttl is not an option of delete`)
    ttl = checkTtl(`${fn}: options.ttl`, options.ttl)
  }
  let timeout = DEFAULT_ACK_TIMEOUT
  if (options.timeout !== undefined) {
    if (typeof options.timeout !== 'number' || !(options.timeout > 0) || !Number.isFinite(options.timeout)) {
      throw new RangeError(`${fn}: options.timeout must be a positive number of milliseconds`)
    }
    if (options.timeout > MAX_ACK_TIMEOUT) {
      throw new RangeError(`${fn}: options.timeout must be at most ${MAX_ACK_TIMEOUT} ms (got ${options.timeout})`)
    }
    timeout = options.timeout
  }
  let ack = ACK_LOCAL
  if (options.ack !== undefined) {
    ack = ACK_LEVELS.get(options.ack)
    if (ack === undefined) {
      throw new RangeError(`${fn}: options.ack must be one of ${[...ACK_LEVELS.keys()].map((a) => `'${a}'`).join(', ')}`)
    }
  }
  return [ack, timeout, ttl]
}

// set(key, value[, options][, cb]) and delete(key[, options][, cb]) argument shapes.
function splitOptionsAndCallback(fn, a, b) {
  if (typeof a === 'function') {
    if (b !== undefined) throw new TypeError(`${fn}: the callback must be the last argument`)
    return [undefined, a]
  }
  if (b !== undefined && typeof b !== 'function') throw new TypeError(`${fn}: callback must be a function`)
  return [a, b]
}

function settle(cb, err) {
  if (cb) {
    process.nextTick(cb, err)
    return undefined
  }
  return err ? Promise.reject(err) : RESOLVED
}

// Settles a write that waits for an ack level: at once when the native side says it is met (ticket 0).
function settleWrite(peer, ticket, cb) {
  if (ticket === 0) return settle(cb, null)
  const done = peer._awaitTicket(ticket)
  if (!cb) return done
  done.then(() => cb(null), cb)
  return undefined
}

function decodeValue(raw) {
  return typeof raw === 'string' ? JSON.parse(raw) : raw
}

// SharedBucket -----------------------------------------------------------------------------------

class SharedBucket extends EventEmitter {
  #peer
  #handle
  #listening = false
  #ttl = 0

  constructor(peer, name, handle) {
    super()
    this.#peer = peer
    this.#handle = handle
    Object.defineProperty(this, 'name', { value: name, enumerable: true })
    this.on('newListener', (event) => {
      if (event === 'change' && !this.#listening) this.#listen(true)
    })
    this.on('removeListener', (event) => {
      if (event === 'change' && this.#listening && this.listenerCount('change') === 0) this.#listen(false)
    })
  }

  #listen(on) {
    if (this.#peer.closed) return
    this.#listening = on
    native.bucketListen(this.#handle, on ? (batch) => this.#deliver(batch) : null)
  }

  #deliver(batch) {
    let firstError
    const listeners = this.listeners('change')
    for (let i = 0; i < batch.length; i += CHANGE.STRIDE) {
      const raw = batch[i + CHANGE.VALUE]
      let value
      try {
        value = raw === undefined ? undefined : decodeValue(raw)
      } catch (err) {
        // A value that is not JSON can only come from a broken peer: report it, deliver the rest.
        firstError = firstError || Object.assign(new Error(`change of '${batch[i + CHANGE.KEY]}': stored value is not valid JSON`), { cause: err })
        continue
      }
      const event = {
        key: batch[i + CHANGE.KEY],
        value,
        deleted: raw === undefined,
        local: batch[i + CHANGE.LOCAL],
        origin: batch[i + CHANGE.ORIGIN],
      }
      if (batch[i + CHANGE.EXPIRED]) event.expired = true
      // Each listener is called on its own, so one that throws costs no other listener its event.
      for (const listener of listeners) {
        try {
          listener.call(this, event)
        } catch (err) {
          firstError = firstError || err
        }
      }
    }
    // A throwing listener must not cost the other listeners their events; its error is reported the
    // way Node reports any listener error: as 'error' if someone listens for it, else uncaught.
    if (firstError) {
      if (this.listenerCount('error') > 0) this.emit('error', firstError)
      else process.nextTick(() => { throw firstError })
    }
  }

  set(key, value, options, cb) {
    ;[options, cb] = splitOptionsAndCallback('set()', options, cb)
    checkKey('set()', key)
    const [ack, timeout, ttl] = checkWriteOptions('set()', options, true, this.#ttl)
    if (this.#peer.closed) return settle(cb, closedError('set()'))
    if (value instanceof Uint8Array) {
      if (value.byteLength > MAX_VALUE_BYTES) {
        throw new RangeError(`set(): value must be at most ${MAX_VALUE_BYTES} bytes (got ${value.byteLength})`)
      }
      return settleWrite(this.#peer, hot.setBytes(this.#handle, key, value, ttl, ack, timeout), cb)
    } else if (typeof value === 'string' && value.isWellFormed()) {
      // Stored as the string itself (a lone surrogate could not travel as UTF-8: such strings go as
      // JSON text, which escapes it).
      if (value.length * 3 > MAX_VALUE_BYTES && Buffer.byteLength(value) > MAX_VALUE_BYTES) {
        throw new RangeError(`set(): value must be at most ${MAX_VALUE_BYTES} bytes (got ${Buffer.byteLength(value)})`)
      }
      return settleWrite(this.#peer, hot.setString(this.#handle, key, value, ttl, ack, timeout), cb)
    } else {
      // JSON would turn any other binary view into an object of indices (or {}), silently.
      if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer || value instanceof SharedArrayBuffer) {
        const kind = Object.prototype.toString.call(value).slice(8, -1)
        throw new TypeError(`set(): value is a${/^[AEIOU]/.test(kind) ? 'n' : ''} ${kind}: only a Uint8Array (or Buffer) is stored as bytes; pass new Uint8Array(buffer, offset, length) over its bytes`)
      }
      if (value === undefined || typeof value === 'function' || typeof value === 'symbol') {
        throw new TypeError('set(): value must be JSON-serialisable or a Buffer (got ' + typeof value + ')')
      }
      let json
      try {
        json = JSON.stringify(value)
      } catch (err) {
        throw new TypeError(`set(): value cannot be serialised as JSON: ${err.message}`)
      }
      if (json === undefined) throw new TypeError('set(): value cannot be serialised as JSON')
      if (json.length * 3 > MAX_VALUE_BYTES && Buffer.byteLength(json) > MAX_VALUE_BYTES) {
        throw new RangeError(`set(): value must be at most ${MAX_VALUE_BYTES} bytes as JSON (got ${Buffer.byteLength(json)})`)
      }
      return settleWrite(this.#peer, hot.setJson(this.#handle, key, json, ttl, ack, timeout), cb)
    }
  }

  get(key) {
    checkKey('get()', key)
    if (this.#peer.closed) throw closedError('get()')
    const raw = hot.get(this.#handle, key)
    return typeof raw === 'string' && VALUE_KIND[0] === 1 ? JSON.parse(raw) : raw
  }

  has(key) {
    checkKey('has()', key)
    if (this.#peer.closed) throw closedError('has()')
    return hot.has(this.#handle, key)
  }

  delete(key, options, cb) {
    ;[options, cb] = splitOptionsAndCallback('delete()', options, cb)
    checkKey('delete()', key)
    const [ack, timeout] = checkWriteOptions('delete()', options, false, 0)
    if (this.#peer.closed) return settle(cb, closedError('delete()'))
    return settleWrite(this.#peer, hot.delete(this.#handle, key, ack, timeout), cb)
  }

  touch(key, ttl, cb) {
    checkKey('touch()', key)
    checkTtl('touch(): ttl', ttl)
    if (cb !== undefined && typeof cb !== 'function') throw new TypeError('touch(): callback must be a function')
    if (this.#peer.closed) return settle(cb, closedError('touch()'))
    const touched = native.bucketTouch(this.#handle, key, ttl)
    if (cb) {
      process.nextTick(cb, null, touched)
      return undefined
    }
    return touched ? RESOLVED_TRUE : RESOLVED_FALSE
  }

  /** The bucket's default time to live in ms (0: none); set with `peer.bucket(name, { ttl })`. */
  get ttl() {
    return this.#ttl
  }

  _setTtl(ttl) {
    this.#ttl = ttl
  }

  keys(prefix) {
    prefix = checkPrefix('keys()', prefix)
    if (this.#peer.closed) throw closedError('keys()')
    return native.bucketKeys(this.#handle, prefix)
  }

  entries(prefix) {
    prefix = checkPrefix('entries()', prefix)
    if (this.#peer.closed) throw closedError('entries()')
    const flat = native.bucketEntries(this.#handle, prefix)
    const out = new Array(flat.length / 2)
    for (let i = 0; i < flat.length; i += 2) out[i / 2] = [flat[i], decodeValue(flat[i + 1])]
    return out
  }

  get size() {
    if (this.#peer.closed) throw closedError('size')
    return native.bucketSize(this.#handle)
  }

  /**
   * What this replica stores for `key`, live or not: `{ deleted, hlc, time, origin, incarnation, seq,
   * expires, touch? }` of the winning write (a tombstone when deleted), or undefined when nothing is
   * stored. For debugging and tests (the chaos checker reads it); `get` is the way to read values.
   */
  inspect(key) {
    checkKey('inspect()', key)
    if (this.#peer.closed) throw closedError('inspect()')
    return native.bucketInspect(this.#handle, key) ?? undefined
  }

  fetch(options) {
    if (options === null || typeof options !== 'object') throw new TypeError('fetch(): options must be an object')
    const { from, prefix = '' } = options
    if (typeof from !== 'string' || from.length === 0) throw new TypeError('fetch(): options.from must be a peer id')
    if (typeof prefix !== 'string') throw new TypeError('fetch(): options.prefix must be a string')
    if (this.#peer.closed) return Promise.reject(closedError('fetch()'))
    let id
    try {
      id = native.bucketFetch(this.#handle, from, prefix)
    } catch (err) {
      const e = fromNative(err)
      if (e.code === 'ENOTCONN') {
        return Promise.reject(codedError('ENOTCONN', `fetch(): peer '${from}' is not connected`))
      }
      return Promise.reject(e)
    }
    return this.#peer._awaitFetch(id)
  }
}

// Peer -------------------------------------------------------------------------------------------

function checkAddress(what, value) {
  if (typeof value === 'number') {
    if (!Number.isInteger(value) || value < 0 || value > 65535) {
      throw new RangeError(`${what} must be a port number from 0 to 65535 or 'host:port'`)
    }
    return `127.0.0.1:${value}`
  }
  if (typeof value !== 'string') throw new TypeError(`${what} must be 'host:port' or a port number`)
  const m = /^(.*):(\d+)$/.exec(value)
  if (!m || m[1] === '' || Number(m[2]) > 65535) {
    if (/^\d+$/.test(value) && Number(value) <= 65535) return `127.0.0.1:${value}`
    throw new RangeError(`${what} must be 'host:port' (got '${value}')`)
  }
  return value
}

// 'ip:port' with an IPv4 address or a bracketed IPv6 one.
function isIpLiteral(address) {
  const host = address.slice(0, address.lastIndexOf(':'))
  if (host.startsWith('[') && host.endsWith(']')) return require('node:net').isIPv6(host.slice(1, -1))
  return require('node:net').isIPv4(host)
}

const MIN_SECRET_BYTES = 16
const MAX_SECRETS = 2

// options.secret: a string or Buffer, or during a rotation an array of two (the first is dialled with,
// both are accepted). Returns the secrets as Buffers; undefined for an open peer.
function checkSecrets(value) {
  if (value === undefined) return undefined
  const many = Array.isArray(value)
  const list = many ? value : [value]
  if (list.length === 0 || list.length > MAX_SECRETS) {
    throw new RangeError(`Peer: options.secret must be a secret, or an array of at most ${MAX_SECRETS} during a rotation`)
  }
  return list.map((secret, i) => {
    const what = many ? `options.secret[${i}]` : 'options.secret'
    let bytes
    if (typeof secret === 'string') bytes = Buffer.from(secret, 'utf8')
    else if (secret instanceof Uint8Array) bytes = Buffer.from(secret)
    else throw new TypeError(`Peer: ${what} must be a string or a Buffer`)
    if (bytes.length < MIN_SECRET_BYTES) {
      throw new RangeError(`Peer: ${what} must be at least ${MIN_SECRET_BYTES} bytes (got ${bytes.length})`)
    }
    return bytes
  })
}

function checkDuration(name, value, fallback) {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !(value > 0) || !Number.isFinite(value)) {
    throw new RangeError(`Peer: options.${name} must be a positive number of milliseconds`)
  }
  return value
}

class Peer extends EventEmitter {
  #handle = 0
  #buckets = new Map()
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
      if (Buffer.byteLength(id) > 255) throw new RangeError('Peer: options.id must be at most 255 bytes')
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
      { id, listen, seeds, advertise, maxClockSkewMs, tombstoneMinAgeMs, memberTimeoutMs, rememberCollectedMs, secrets, insecure, dataDir, durability },
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
    if (typeof name !== 'string' || name.length === 0) throw new TypeError('bucket(): name must be a non-empty string')
    if (!name.isWellFormed()) throw new TypeError('bucket(): name must be well-formed Unicode (it has a lone surrogate)')
    if (Buffer.byteLength(name) > MAX_BUCKET_NAME_BYTES) {
      throw new RangeError(`bucket(): name must be at most ${MAX_BUCKET_NAME_BYTES} bytes`)
    }
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

module.exports = { Peer, SharedBucket }

// SessionStore (an express-session store) is loaded on first use, so that require('peer-buckets')
// neither needs nor loads express-session. `lazy.SessionStore` keeps the getter in the one shape
// Node's CommonJS export detection reads, so `import { SessionStore } from 'peer-buckets'` works too.
const lazy = {
  get SessionStore() {
    return require('./lib/session-store.js').SessionStore
  },
}
Object.defineProperty(module.exports, 'SessionStore', { enumerable: true, get: function () { return lazy.SessionStore } })
