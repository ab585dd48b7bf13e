'use strict'
// SharedBucket: one named bucket of a Peer. It owns the encoding of values (a string as itself, a
// Uint8Array as bytes, anything else as JSON text) and their decoding, the promise and callback forms of
// each call, and the delivery of change batches as 'change' events (one listener's throw costs no other
// listener its event), paged reads (scan, values, iteration, countAsync: each native call looks at a
// bounded part of the bucket) and batched writes that check every entry before the first write and
// settle once (setMany, deletePrefix). The handle, the 'change' subscription, the calls made before the
// peer opens (a write's value is encoded at the call) and how each call settles are BucketHandle's
// (handle.js).

const { setImmediate: nextTurn } = require('node:timers/promises')
const { native, hot, VALUE_KIND, CHANGE } = require('./native.js')
const { codedError, closedError, fromNative } = require('./errors.js')
const { BucketHandle } = require('./handle.js')
const { FrozenReads } = require('./frozen-reads.js')
const {
  MAX_VALUE_BYTES,
  checkKey,
  checkPrefix,
  checkTtl,
  checkWriteOptions,
  splitOptionsAndCallback,
} = require('./validation.js')

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
// Keys per page of countAsync(): nothing is built per key, so a page ten times a scan's is still ~1 ms.
const COUNT_PAGE = 10000

function decodeValue(raw) {
  return typeof raw === 'string' ? JSON.parse(raw) : raw
}

class SharedBucket extends BucketHandle {
  // With `{ reads: 'frozen' }`: the decoded values get hands out (see frozen-reads.js).
  #frozen = null

  _deliver(batch) {
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
      firstError = this._tell(listeners, event, firstError)
    }
    if (firstError) this._report(firstError)
  }

  set(key, value, options, cb) {
    ;[options, cb] = splitOptionsAndCallback('set()', options, cb)
    checkKey('set()', key)
    const [ack, timeout, ttl] = checkWriteOptions('set()', options, true, this._defaultTtl)
    let [kind, payload] = encodeValue('set()', value)
    // A copy, when the write waits for the peer to open: the caller may change its own before then.
    if (kind === BYTES && this._handle === 0) payload = Buffer.from(payload)
    return this._call('set()', (h) => this._acked(write(h, key, kind, payload, ttl, ack, timeout)), cb)
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
    const [ack, timeout, ttl] = checkWriteOptions('setMany()', options, true, this._defaultTtl)
    const writes = []
    for (const pair of entries) {
      if (!Array.isArray(pair) || pair.length !== 2) {
        throw new TypeError(`setMany(): entry ${writes.length} must be a [key, value] pair`)
      }
      checkKey(`setMany(): entry ${writes.length}`, pair[0])
      writes.push([pair[0], ...encodeValue(`setMany(): entry ${writes.length}`, pair[1])])
    }
    if (this._handle === 0) for (const w of writes) if (w[1] === BYTES) w[2] = Buffer.from(w[2]) // copies, as set() makes
    const run = (h) => this._allAcked(writes.map(([key, kind, payload]) => write(h, key, kind, payload, ttl, ack, timeout)))
    return this._call('setMany()', run, cb)
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
    const h = this._readable('get()')
    if (frozen !== null) return frozen.get(h, key)
    const raw = hot.get(h, key)
    return typeof raw === 'string' && VALUE_KIND[0] === 1 ? JSON.parse(raw) : raw
  }

  has(key) {
    checkKey('has()', key)
    return hot.has(this._readable('has()'), key)
  }

  delete(key, options, cb) {
    ;[options, cb] = splitOptionsAndCallback('delete()', options, cb)
    checkKey('delete()', key)
    const [ack, timeout] = checkWriteOptions('delete()', options, false, 0)
    if (this.#frozen !== null) this.#frozen.forget(key)
    return this._call('delete()', (h) => this._acked(hot.delete(h, key, ack, timeout)), cb)
  }

  touch(key, ttl, cb) {
    checkKey('touch()', key)
    checkTtl('touch(): ttl', ttl)
    if (cb !== undefined && typeof cb !== 'function') throw new TypeError('touch(): callback must be a function')
    return this._call('touch()', (h) => native.bucketTouch(h, key, ttl), cb)
  }

  /** The Peer this bucket belongs to. */
  get peer() {
    return this._peer
  }

  /** The bucket's default time to live in ms (0: none); set with `peer.bucket(name, { ttl })`. */
  get defaultTtl() {
    return this._defaultTtl
  }

  /** Milliseconds until `key` expires: Infinity when it never does, undefined when it is absent. */
  ttl(key) {
    checkKey('ttl()', key)
    return native.bucketTtl(this._readable('ttl()'), key) ?? undefined
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
    const h = this._readable('keys()')
    return native.bucketKeys(h, prefix)
  }

  entries(prefix) {
    prefix = checkPrefix('entries()', prefix)
    const h = this._readable('entries()')
    const flat = native.bucketEntries(h, prefix)
    const out = new Array(flat.length / 2)
    for (let i = 0; i < flat.length; i += 2) out[i / 2] = [flat[i], decodeValue(flat[i + 1])]
    return out
  }

  /** How many live keys start with `prefix`, counted in place (no array is built). */
  count(prefix) {
    prefix = checkPrefix('count()', prefix)
    const h = this._readable('count()')
    return native.bucketCount(h, prefix)
  }

  /**
   * How many live keys start with `prefix`, counted a page at a time with a turn of the event loop
   * between pages (count() holds the loop for the whole count). Resolves, or calls cb(err, n). Keys live
   * from the first page to the last are counted exactly once; one written or deleted meanwhile may or
   * may not be.
   */
  countAsync(prefix, cb) {
    if (typeof prefix === 'function' && cb === undefined) [prefix, cb] = [undefined, prefix]
    prefix = checkPrefix('countAsync()', prefix)
    if (cb !== undefined && typeof cb !== 'function') throw new TypeError('countAsync(): callback must be a function')
    return this._call('countAsync()', () => this.#countPages(prefix), cb)
  }

  async #countPages(prefix) {
    let count = 0
    let cursor = ''
    for (;;) {
      const page = native.bucketCountPage(this._readable('countAsync()'), prefix, cursor, COUNT_PAGE)
      count += page.count
      if (page.cursor === '') return count
      cursor = page.cursor
      await nextTurn()
    }
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
    const h = this._readable('scan()')
    let flat
    try {
      flat = native.bucketScan(h, prefix, cursor ?? '', limit, !keysOnly)
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
    if (this._peer.closed) throw closedError('[Symbol.iterator]()')
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
    // Before the peer opens: the keys present once it does.
    return this._call('deletePrefix()', (h) => {
      const keys = native.bucketKeys(h, prefix)
      return this._allAcked(keys.map((key) => hot.delete(h, key, ack, timeout)), keys.length)
    }, cb)
  }

  get size() {
    return native.bucketSize(this._readable('size'))
  }

  /**
   * What this replica stores for `key`, live or not: `{ deleted, hlc, time, origin, incarnation, seq,
   * expires, touch? }` of the winning write (a tombstone when deleted), or undefined when nothing is
   * stored. For debugging and tests (the chaos checker reads it); `get` is the way to read values.
   */
  inspect(key) {
    checkKey('inspect()', key)
    return native.bucketInspect(this._readable('inspect()'), key) ?? undefined
  }

  fetch(options) {
    if (options === null || typeof options !== 'object') throw new TypeError('fetch(): options must be an object')
    const { from, prefix = '' } = options
    if (typeof from !== 'string' || from.length === 0) throw new TypeError('fetch(): options.from must be a peer id')
    if (typeof prefix !== 'string') throw new TypeError('fetch(): options.prefix must be a string')
    return this._call('fetch()', (h) => this.#fetch(h, from, prefix))
  }

  #fetch(h, from, prefix) {
    let id
    try {
      id = native.bucketFetch(h, from, prefix)
    } catch (err) {
      const e = fromNative(err)
      if (e.code === 'ENOTCONN') {
        return Promise.reject(codedError('ENOTCONN', `fetch(): peer '${from}' is not connected`))
      }
      return Promise.reject(e)
    }
    return this._peer._awaitFetch(id)
  }
}

module.exports = { SharedBucket }
