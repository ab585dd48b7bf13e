'use strict'
// SharedBucket: one named bucket of a Peer. It owns the encoding of values (a string as itself, a
// Uint8Array as bytes, anything else as JSON text) and their decoding, the promise and callback forms of
// each call, and the delivery of change batches as 'change' events (one listener's throw costs no other
// listener its event), paged reads (scan, values, iteration: each native call looks at a bounded part of
// the bucket) and batched writes that check every entry before the first write and settle once
// (setMany, deletePrefix). Every call goes through the bucket's handle; the Peer settles what waits on acks.
// Until the peer opens the handle is 0: writes go to the Peer's queue (values encoded at the call) and
// synchronous reads throw ENOTREADY.

const { EventEmitter } = require('node:events')
const { native, hot, VALUE_KIND, CHANGE } = require('./native.js')
const { codedError, closedError, notReadyError, fromNative } = require('./errors.js')
const { FrozenReads } = require('./frozen-reads.js')
const {
  MAX_VALUE_BYTES,
  checkKey,
  checkPrefix,
  checkTtl,
  checkWriteOptions,
  splitOptionsAndCallback,
} = require('./validation.js')

const RESOLVED = Promise.resolve()
const RESOLVED_TRUE = Promise.resolve(true)
const RESOLVED_FALSE = Promise.resolve(false)

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

// A write made before the peer opened: `run(handle)` makes it once the peer opens, in call order.
function settleLater(peer, bucket, run, cb) {
  const done = peer._whenOpen(() => {
    const ticket = run(bucket._handle)
    return ticket === 0 ? undefined : peer._awaitTicket(ticket)
  })
  if (!cb) return done
  done.then(() => cb(null), cb)
  return undefined
}

// settleAll for writes made before the peer opened: `run(handle)` makes them once it opens and returns
// their tickets (with the value to settle with as `.value`).
function settleAllLater(peer, bucket, run, cb) {
  const done = peer._whenOpen(() => {
    const tickets = run(bucket._handle)
    return settleAll(peer, tickets, undefined, tickets.value)
  })
  if (!cb) return done
  done.then((v) => cb(null, v), cb)
  return undefined
}

// Settles once every ticket settled (or with the first failure), with `value`.
function settleAll(peer, tickets, cb, value) {
  const waits = tickets.filter((t) => t !== 0).map((t) => peer._awaitTicket(t))
  const done = waits.length === 0 ? Promise.resolve(value) : Promise.all(waits).then(() => value)
  if (!cb) return done
  done.then((v) => cb(null, v), cb)
  return undefined
}

const BYTES = 0
const STRING = 1
const JSON_TEXT = 2

// The form a value is stored in: [BYTES, Uint8Array], [STRING, string] or [JSON_TEXT, json]. Throws,
// naming `fn`, for what cannot be stored.
function encodeValue(fn, value) {
  if (value instanceof Uint8Array) {
    if (value.byteLength > MAX_VALUE_BYTES) {
      throw new RangeError(`${fn}: value must be at most ${MAX_VALUE_BYTES} bytes (got ${value.byteLength})`)
    }
    return [BYTES, value]
  }
  if (typeof value === 'string' && value.isWellFormed()) {
    // Stored as the string itself (a lone surrogate could not travel as UTF-8: such strings go as
    // JSON text, which escapes it).
    if (value.length * 3 > MAX_VALUE_BYTES && Buffer.byteLength(value) > MAX_VALUE_BYTES) {
      throw new RangeError(`${fn}: value must be at most ${MAX_VALUE_BYTES} bytes (got ${Buffer.byteLength(value)})`)
    }
    return [STRING, value]
  }
  // JSON would turn any other binary view into an object of indices (or {}), silently.
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer || value instanceof SharedArrayBuffer) {
    const kind = Object.prototype.toString.call(value).slice(8, -1)
    throw new TypeError(`${fn}: value is a${/^[AEIOU]/.test(kind) ? 'n' : ''} ${kind}: only a Uint8Array (or Buffer) is stored as bytes; pass new Uint8Array(buffer, offset, length) over its bytes`)
  }
  if (value === undefined || typeof value === 'function' || typeof value === 'symbol') {
    throw new TypeError(`${fn}: value must be JSON-serialisable or a Buffer (got ` + typeof value + ')')
  }
  let json
  try {
    json = JSON.stringify(value)
  } catch (err) {
    throw new TypeError(`${fn}: value cannot be serialised as JSON: ${err.message}`)
  }
  if (json === undefined) throw new TypeError(`${fn}: value cannot be serialised as JSON`)
  if (json.length * 3 > MAX_VALUE_BYTES && Buffer.byteLength(json) > MAX_VALUE_BYTES) {
    throw new RangeError(`${fn}: value must be at most ${MAX_VALUE_BYTES} bytes as JSON (got ${Buffer.byteLength(json)})`)
  }
  return [JSON_TEXT, json]
}

// Writes one encoded value through bucket handle `h`; returns the ack ticket (0: settled).
function write(h, key, kind, payload, ttl, ack, timeout) {
  if (kind === BYTES) return hot.setBytes(h, key, payload, ttl, ack, timeout)
  if (kind === STRING) return hot.setString(h, key, payload, ttl, ack, timeout)
  return hot.setJson(h, key, payload, ttl, ack, timeout)
}

// Keys per page of the iterator and of values(): bounded work per native call.
const PAGE = 1000
const MAX_SCAN_LIMIT = 100000

function decodeValue(raw) {
  return typeof raw === 'string' ? JSON.parse(raw) : raw
}

class SharedBucket extends EventEmitter {
  #peer
  #handle
  #listening = false
  #ttl = 0
  // With `{ reads: 'frozen' }`: the decoded values get hands out (see frozen-reads.js).
  #frozen = null

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
    if (this.#handle !== 0) native.bucketListen(this.#handle, on ? (batch) => this.#deliver(batch) : null)
  }

  // The peer opened: the bucket's handle, and its change listeners attached before.
  _open(handle) {
    this.#handle = handle
    if (this.#listening && !this.#peer.closed) native.bucketListen(handle, (batch) => this.#deliver(batch))
  }

  get _handle() {
    return this.#handle
  }

  // Undefined once the peer is open (or closed); before, a promise of its opening (for callers that
  // read, such as the SessionStore).
  _opening() {
    return this.#handle === 0 && !this.#peer.closed ? this.#peer._whenOpen(() => undefined) : undefined
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
    let [kind, payload] = encodeValue('set()', value)
    if (this.#handle === 0) {
      if (kind === BYTES) payload = Buffer.from(payload) // a copy: the caller may change its own before the peer opens
      return settleLater(this.#peer, this, (h) => write(h, key, kind, payload, ttl, ack, timeout), cb)
    }
    return settleWrite(this.#peer, write(this.#handle, key, kind, payload, ttl, ack, timeout), cb)
  }

  /**
   * Writes every `[key, value]` of `entries` (an iterable, or a Map) with the same options, and
   * settles once, when all of them met the ack level (or with the first failure). Every key and value
   * is checked before the first write, so a call that throws wrote nothing.
   */
  setMany(entries, options, cb) {
    ;[options, cb] = splitOptionsAndCallback('setMany()', options, cb)
    if (entries === null || typeof entries !== 'object' || typeof entries[Symbol.iterator] !== 'function') {
      throw new TypeError('setMany(): entries must be an iterable of [key, value] pairs (an array or a Map)')
    }
    const [ack, timeout, ttl] = checkWriteOptions('setMany()', options, true, this.#ttl)
    const writes = []
    for (const pair of entries) {
      if (!Array.isArray(pair) || pair.length !== 2) {
        throw new TypeError(`setMany(): entry ${writes.length} must be a [key, value] pair`)
      }
      checkKey(`setMany(): entry ${writes.length}`, pair[0])
      writes.push([pair[0], ...encodeValue(`setMany(): entry ${writes.length}`, pair[1])])
    }
    if (this.#peer.closed) return settle(cb, closedError('setMany()'))
    const run = (h) => writes.map(([key, kind, payload]) => write(h, key, kind, payload, ttl, ack, timeout))
    if (this.#handle === 0) {
      for (const w of writes) if (w[1] === BYTES) w[2] = Buffer.from(w[2]) // copies, as set() makes
      return settleAllLater(this.#peer, this, run, cb)
    }
    return settleAll(this.#peer, run(this.#handle), cb, undefined)
  }

  get(key) {
    return this.#read(key, this.#frozen)
  }

  // get() as without `{ reads: 'frozen' }`: a fresh object the caller may change (the SessionStore
  // hands its sessions to express-session, which does).
  _getFresh(key) {
    return this.#read(key, null)
  }

  #read(key, frozen) {
    checkKey('get()', key)
    if (this.#peer.closed) throw closedError('get()')
    if (this.#handle === 0) throw notReadyError('get()')
    if (frozen !== null) return frozen.get(this.#handle, key)
    const raw = hot.get(this.#handle, key)
    return typeof raw === 'string' && VALUE_KIND[0] === 1 ? JSON.parse(raw) : raw
  }

  has(key) {
    checkKey('has()', key)
    if (this.#peer.closed) throw closedError('has()')
    if (this.#handle === 0) throw notReadyError('has()')
    return hot.has(this.#handle, key)
  }

  delete(key, options, cb) {
    ;[options, cb] = splitOptionsAndCallback('delete()', options, cb)
    checkKey('delete()', key)
    const [ack, timeout] = checkWriteOptions('delete()', options, false, 0)
    if (this.#peer.closed) return settle(cb, closedError('delete()'))
    if (this.#handle === 0) return settleLater(this.#peer, this, (h) => hot.delete(h, key, ack, timeout), cb)
    if (this.#frozen !== null) this.#frozen.forget(key)
    return settleWrite(this.#peer, hot.delete(this.#handle, key, ack, timeout), cb)
  }

  touch(key, ttl, cb) {
    checkKey('touch()', key)
    checkTtl('touch(): ttl', ttl)
    if (cb !== undefined && typeof cb !== 'function') throw new TypeError('touch(): callback must be a function')
    if (this.#peer.closed) return settle(cb, closedError('touch()'))
    if (this.#handle === 0) {
      const done = this.#peer._whenOpen(() => native.bucketTouch(this.#handle, key, ttl))
      if (!cb) return done
      done.then((touched) => cb(null, touched), cb)
      return undefined
    }
    const touched = native.bucketTouch(this.#handle, key, ttl)
    if (cb) {
      process.nextTick(cb, null, touched)
      return undefined
    }
    return touched ? RESOLVED_TRUE : RESOLVED_FALSE
  }

  /** The Peer this bucket belongs to. */
  get peer() {
    return this.#peer
  }

  /** The bucket's default time to live in ms (0: none); set with `peer.bucket(name, { ttl })`. */
  get defaultTtl() {
    return this.#ttl
  }

  /** Milliseconds until `key` expires: Infinity when it never does, undefined when it is absent. */
  ttl(key) {
    checkKey('ttl()', key)
    if (this.#peer.closed) throw closedError('ttl()')
    if (this.#handle === 0) throw notReadyError('ttl()')
    return native.bucketTtl(this.#handle, key) ?? undefined
  }

  _setTtl(ttl) {
    this.#ttl = ttl
  }

  /** What get returns for a JSON value: `'fresh'` (a new object each time) or `'frozen'`. */
  get reads() {
    return this.#frozen === null ? 'fresh' : 'frozen'
  }

  // How many decoded values get keeps with reads: 'frozen' (for the tests of its bounds).
  get _keptCount() {
    return this.#frozen === null ? 0 : this.#frozen.size
  }

  _setReads(reads) {
    if (reads === 'fresh') this.#frozen = null
    else if (this.#frozen === null) this.#frozen = new FrozenReads()
  }

  keys(prefix) {
    prefix = checkPrefix('keys()', prefix)
    if (this.#peer.closed) throw closedError('keys()')
    if (this.#handle === 0) throw notReadyError('keys()')
    return native.bucketKeys(this.#handle, prefix)
  }

  entries(prefix) {
    prefix = checkPrefix('entries()', prefix)
    if (this.#peer.closed) throw closedError('entries()')
    if (this.#handle === 0) throw notReadyError('entries()')
    const flat = native.bucketEntries(this.#handle, prefix)
    const out = new Array(flat.length / 2)
    for (let i = 0; i < flat.length; i += 2) out[i / 2] = [flat[i], decodeValue(flat[i + 1])]
    return out
  }

  /** How many live keys start with `prefix`, counted in place (no array is built). */
  count(prefix) {
    prefix = checkPrefix('count()', prefix)
    if (this.#peer.closed) throw closedError('count()')
    if (this.#handle === 0) throw notReadyError('count()')
    return native.bucketCount(this.#handle, prefix)
  }

  /**
   * One page of the live entries under `prefix`: `{ entries, cursor }` (`{ keys, cursor }` with
   * `keysOnly`), at most `limit` of them (default 100), and the cursor to pass for the next page,
   * null once the scan is complete. A page may be short, even empty, before the end: each call looks
   * at a bounded part of the bucket. Every key live from the first page to the last is returned exactly
   * once, however the bucket grows meanwhile; no key comes twice.
   */
  scan(options = {}) {
    if (options === null || typeof options !== 'object') throw new TypeError('scan(): options must be an object')
    const prefix = checkPrefix('scan(): options.prefix', options.prefix)
    const { cursor = null, limit = 100, keysOnly = false } = options
    if (cursor !== null && (typeof cursor !== 'string' || cursor === '')) {
      throw new TypeError('scan(): options.cursor must be a cursor a scan returned, or null to start')
    }
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_SCAN_LIMIT) {
      throw new RangeError(`scan(): options.limit must be a whole number from 1 to ${MAX_SCAN_LIMIT}`)
    }
    if (typeof keysOnly !== 'boolean') throw new TypeError('scan(): options.keysOnly must be a boolean')
    if (this.#peer.closed) throw closedError('scan()')
    if (this.#handle === 0) throw notReadyError('scan()')
    let flat
    try {
      flat = native.bucketScan(this.#handle, prefix, cursor ?? '', limit, !keysOnly)
    } catch (err) {
      const e = fromNative(err)
      throw e.code === 'EINVAL' ? new TypeError(e.message) : e
    }
    const next = flat[flat.length - 1] || null
    const n = flat.length - 1
    if (keysOnly) {
      flat.length = n
      return { keys: flat, cursor: next }
    }
    const entries = new Array(n / 2)
    for (let i = 0; i < n; i += 2) entries[i / 2] = [flat[i], decodeValue(flat[i + 1])]
    return { entries, cursor: next }
  }

  /** The live values under `prefix`. */
  values(prefix) {
    prefix = checkPrefix('values()', prefix)
    const out = []
    for (const [, value] of this.#pages(prefix)) out.push(value)
    return out
  }

  /** Iterates the live `[key, value]` entries a page at a time (see scan()). */
  [Symbol.iterator]() {
    if (this.#peer.closed) throw closedError('[Symbol.iterator]()')
    return this.#pages('')
  }

  *#pages(prefix) {
    let cursor = null
    do {
      const page = this.scan({ prefix, cursor, limit: PAGE })
      yield* page.entries
      cursor = page.cursor
    } while (cursor !== null)
  }

  /**
   * Deletes every live key under `prefix` (each a tombstone that replicates), with delete's options;
   * settles once, when all of them met the ack level, with how many keys were deleted.
   */
  deletePrefix(prefix, options, cb) {
    ;[options, cb] = splitOptionsAndCallback('deletePrefix()', options, cb)
    if (typeof prefix !== 'string') throw new TypeError('deletePrefix(): prefix must be a string')
    const [ack, timeout] = checkWriteOptions('deletePrefix()', options, false, 0)
    if (this.#peer.closed) return settle(cb, closedError('deletePrefix()'))
    if (this.#handle === 0) {
      // The keys are those present once the peer opens.
      return settleAllLater(this.#peer, this, (h) => {
        const keys = native.bucketKeys(h, prefix)
        return Object.assign(keys.map((key) => hot.delete(h, key, ack, timeout)), { value: keys.length })
      }, cb)
    }
    const keys = native.bucketKeys(this.#handle, prefix)
    const tickets = keys.map((key) => hot.delete(this.#handle, key, ack, timeout))
    return settleAll(this.#peer, tickets, cb, keys.length)
  }

  get size() {
    if (this.#peer.closed) throw closedError('size')
    if (this.#handle === 0) throw notReadyError('size')
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
    if (this.#handle === 0) throw notReadyError('inspect()')
    return native.bucketInspect(this.#handle, key) ?? undefined
  }

  fetch(options) {
    if (options === null || typeof options !== 'object') throw new TypeError('fetch(): options must be an object')
    const { from, prefix = '' } = options
    if (typeof from !== 'string' || from.length === 0) throw new TypeError('fetch(): options.from must be a peer id')
    if (typeof prefix !== 'string') throw new TypeError('fetch(): options.prefix must be a string')
    if (this.#peer.closed) return Promise.reject(closedError('fetch()'))
    if (this.#handle === 0) return this.#peer._whenOpen(() => this.#fetch(from, prefix))
    return this.#fetch(from, prefix)
  }

  #fetch(from, prefix) {
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

module.exports = { SharedBucket }
