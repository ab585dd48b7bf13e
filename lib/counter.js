'use strict'
// SharedCounter: one named counter of a Peer, whose increments merge (a CRDT: see the engine's
// counter module and the README's Counters section; the rules live there, not here). It owns the
// argument checks and the promise and callback forms of each call, and turns the changes of the
// registers underneath into one 'change' per counter key and batch, carrying the merged value. The
// handle, the 'change' subscription, the calls made before the peer opens and how each call settles are
// BucketHandle's (handle.js).

const { native, CHANGE } = require('./native.js')
const { BucketHandle } = require('./handle.js')
const { MAX_KEY_BYTES, checkKey, checkPrefix, checkTtl, checkWriteOptions } = require('./validation.js')

// A counter is carried by a bucket named '\0counter:' + name (255 bytes at most, as every bucket name);
// its registers' keys add at most 35 bytes to the counter key.
const MAX_COUNTER_NAME_BYTES = 255 - Buffer.byteLength('\0counter:')
const MAX_COUNTER_KEY_BYTES = MAX_KEY_BYTES - 64

function checkCounterName(name) {
  if (typeof name !== 'string' || name.length === 0) throw new TypeError('counter(): name must be a non-empty string')
  if (!name.isWellFormed()) throw new TypeError('counter(): name must be well-formed Unicode (it has a lone surrogate)')
  if (Buffer.byteLength(name) > MAX_COUNTER_NAME_BYTES) {
    throw new RangeError(`counter(): name must be at most ${MAX_COUNTER_NAME_BYTES} bytes`)
  }
}

// peer.counter(name[, options]) arguments; returns the ttl given, if any.
function checkCounterArgs(name, options) {
  checkCounterName(name)
  if (options !== undefined && (options === null || typeof options !== 'object')) {
    throw new TypeError('counter(): options must be an object')
  }
  return options && options.ttl !== undefined ? checkTtl('counter(): options.ttl', options.ttl) : undefined
}

function checkCounterKey(fn, key) {
  checkKey(fn, key)
  if (key.length * 3 > MAX_COUNTER_KEY_BYTES && Buffer.byteLength(key) > MAX_COUNTER_KEY_BYTES) {
    throw new RangeError(`${fn}: key must be at most ${MAX_COUNTER_KEY_BYTES} bytes of UTF-8`)
  }
}

// incr(key[, by][, options][, cb]) argument shapes: [by, options, cb].
function splitAmount(fn, by, options, cb) {
  if (typeof by === 'function') return [1, undefined, by]
  if (by !== null && typeof by === 'object') {
    if (cb !== undefined) throw new TypeError(`${fn}: too many arguments`)
    ;[options, cb] = [undefined, options]
    return splitAmount(fn, 1, by, cb)
  }
  if (by === undefined) by = 1
  if (!Number.isSafeInteger(by)) throw new RangeError(`${fn}: by must be a safe integer (got ${by})`)
  if (typeof options === 'function') {
    if (cb !== undefined) throw new TypeError(`${fn}: callback must be the last argument`)
    return [by, undefined, options]
  }
  if (cb !== undefined && typeof cb !== 'function') throw new TypeError(`${fn}: callback must be a function`)
  return [by, options, cb]
}

// The increment's outcome once its ack level is met: `value`, the count seen here just after it. It
// is applied here whatever the ack says, so a failed wait (EACKTIMEOUT, EDISK) carries it as `err.value`.
function afterAck(peer, ticket, value) {
  if (ticket === 0) return value
  return peer._awaitTicket(ticket).then(
    () => value,
    (err) => {
      err.value = value
      throw err
    },
  )
}

class SharedCounter extends BucketHandle {
  // A batch of register changes becomes one event per counter key, in the order first changed, with
  // the value merged from every register held now.
  _deliver(batch) {
    const touched = new Map()
    for (let i = 0; i < batch.length; i += CHANGE.STRIDE) {
      const key = native.counterKeyOf(batch[i + CHANGE.KEY])
      if (key == null) continue
      touched.set(key, { local: batch[i + CHANGE.LOCAL], origin: batch[i + CHANGE.ORIGIN] })
    }
    if (this._peer.closed) return
    let firstError
    for (const [key, { local, origin }] of touched) {
      const event = { key, value: native.counterGet(this._handle, key), local, origin }
      firstError = this._tell(this.listeners('change'), event, firstError)
    }
    if (firstError) this._report(firstError)
  }

  #add(fn, key, by, options, cb, sign) {
    ;[by, options, cb] = splitAmount(fn, by, options, cb)
    checkCounterKey(fn, key)
    const [ack, timeout, ttl] = checkWriteOptions(fn, options, true, this._defaultTtl)
    return this._call(fn, (h) => {
      const [value, ticket] = native.counterAdd(h, key, sign * by, ttl, ack, timeout)
      return afterAck(this._peer, ticket, value)
    }, cb)
  }

  /** Adds `by` (default 1) to `key`; resolves with the value seen here after it. */
  incr(key, by, options, cb) {
    return this.#add('incr()', key, by, options, cb, 1)
  }

  /** Subtracts `by` (default 1) from `key`; resolves with the value seen here after it. */
  decr(key, by, options, cb) {
    return this.#add('decr()', key, by, options, cb, -1)
  }

  /** The value of `key` here: 0 when absent. */
  get(key) {
    checkCounterKey('get()', key)
    return native.counterGet(this._readable('get()'), key)
  }

  /** Clears the increments of `key` seen here, on every replica; increments made concurrently stay. */
  reset(key, options, cb) {
    if (typeof options === 'function') [options, cb] = [undefined, options]
    if (cb !== undefined && typeof cb !== 'function') throw new TypeError('reset(): callback must be a function')
    checkCounterKey('reset()', key)
    const [ack, timeout] = checkWriteOptions('reset()', options, false, 0)
    return this._call('reset()', (h) => this._acked(native.counterReset(h, key, ack, timeout)), cb)
  }

  /** When the window of `key` that new increments join ends (ms since the epoch), or undefined. */
  expiresAt(key) {
    checkCounterKey('expiresAt()', key)
    return native.counterExpiresAt(this._readable('expiresAt()'), key) ?? undefined
  }

  /** Keys (optionally those starting with `prefix`) whose value is not 0. */
  keys(prefix) {
    prefix = checkPrefix('keys()', prefix)
    return native.counterKeys(this._readable('keys()'), prefix)
  }

  /** How many keys have a value other than 0. */
  get size() {
    return native.counterKeys(this._readable('size'), '').length
  }

  /** The counter's default window in ms (0: none); set with `peer.counter(name, { ttl })`. */
  get ttl() {
    return this._defaultTtl
  }
}

module.exports = { SharedCounter, checkCounterArgs }
