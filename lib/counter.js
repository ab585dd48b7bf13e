'use strict'
// SharedCounter: one named counter of a Peer, whose increments merge (a CRDT: see the engine's
// counter module and the README's Counters section; the rules live there, not here). It owns the
// argument checks and the promise and callback forms of each call, and turns the changes of the
// registers underneath into one 'change' per counter key and batch, carrying the merged value.

const { EventEmitter } = require('node:events')
const { native, CHANGE } = require('./native.js')
const { closedError, notReadyError } = require('./errors.js')
const { MAX_KEY_BYTES, checkKey, checkPrefix, checkTtl, checkWriteOptions } = require('./validation.js')

// A counter is carried by a bucket named '\0counter:' + name (255 bytes at most, as every bucket name);
// its registers' keys add at most 35 bytes to the counter key.
const MAX_COUNTER_NAME_BYTES = 255 - Buffer.byteLength('\0counter:')
const MAX_COUNTER_KEY_BYTES = MAX_KEY_BYTES - 64
const RESOLVED = Promise.resolve()

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
  if (ticket === 0) return Promise.resolve(value)
  return peer._awaitTicket(ticket).then(
    () => value,
    (err) => {
      err.value = value
      throw err
    },
  )
}

// Settles with `value` once the ticket's ack level is met (at once for ticket 0).
function settle(peer, ticket, value, cb) {
  const done = afterAck(peer, ticket, value)
  if (!cb) return done
  done.then((v) => cb(null, v), (err) => cb(err))
  return undefined
}

function rejectClosed(fn, cb) {
  const err = closedError(fn)
  if (cb) {
    process.nextTick(cb, err)
    return undefined
  }
  return Promise.reject(err)
}

class SharedCounter extends EventEmitter {
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
    if (this.#handle !== 0) native.bucketListen(this.#handle, on ? (batch) => this.#deliver(batch) : null)
  }

  // The peer opened: the counter's handle, and its change listeners attached before.
  _open(handle) {
    this.#handle = handle
    if (this.#listening && !this.#peer.closed) native.bucketListen(handle, (batch) => this.#deliver(batch))
  }

  // Undefined once the peer is open (or closed); before, a promise of its opening (for callers that
  // read, such as the RateLimitStore).
  _opening() {
    return this.#handle === 0 && !this.#peer.closed ? this.#peer._whenOpen(() => undefined) : undefined
  }

  // Sync reads need the replica loaded (as a bucket's do).
  #readable(fn) {
    if (this.#peer.closed) throw closedError(fn)
    if (this.#handle === 0) throw notReadyError(fn)
  }

  // A batch of register changes becomes one event per counter key, in the order first changed, with
  // the value merged from every register held now.
  #deliver(batch) {
    const touched = new Map()
    for (let i = 0; i < batch.length; i += CHANGE.STRIDE) {
      const key = native.counterKeyOf(batch[i + CHANGE.KEY])
      if (key == null) continue
      touched.set(key, { local: batch[i + CHANGE.LOCAL], origin: batch[i + CHANGE.ORIGIN] })
    }
    if (this.#peer.closed) return
    let firstError
    for (const [key, { local, origin }] of touched) {
      const event = { key, value: native.counterGet(this.#handle, key), local, origin }
      for (const listener of this.listeners('change')) {
        try {
          listener.call(this, event)
        } catch (err) {
          firstError = firstError || err
        }
      }
    }
    if (firstError) {
      if (this.listenerCount('error') > 0) this.emit('error', firstError)
      else process.nextTick(() => { throw firstError })
    }
  }

  #add(fn, key, by, options, cb, sign) {
    ;[by, options, cb] = splitAmount(fn, by, options, cb)
    checkCounterKey(fn, key)
    const [ack, timeout, ttl] = checkWriteOptions(fn, options, true, this.#ttl)
    if (this.#peer.closed) return rejectClosed(fn, cb)
    const add = () => native.counterAdd(this.#handle, key, sign * by, ttl, ack, timeout)
    if (this.#handle === 0) {
      // Before the peer opened: made in call order once it does (as a bucket's writes are).
      const done = this.#peer._whenOpen(() => {
        const [value, ticket] = add()
        return afterAck(this.#peer, ticket, value)
      })
      if (!cb) return done
      done.then((v) => cb(null, v), (err) => cb(err))
      return undefined
    }
    const [value, ticket] = add()
    return settle(this.#peer, ticket, value, cb)
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
    this.#readable('get()')
    return native.counterGet(this.#handle, key)
  }

  /** Clears the increments of `key` seen here, on every replica; increments made concurrently stay. */
  reset(key, options, cb) {
    if (typeof options === 'function') [options, cb] = [undefined, options]
    if (cb !== undefined && typeof cb !== 'function') throw new TypeError('reset(): callback must be a function')
    checkCounterKey('reset()', key)
    const [ack, timeout] = checkWriteOptions('reset()', options, false, 0)
    if (this.#peer.closed) return rejectClosed('reset()', cb)
    if (this.#handle === 0) {
      const done = this.#peer._whenOpen(() => {
        const ticket = native.counterReset(this.#handle, key, ack, timeout)
        return ticket === 0 ? undefined : this.#peer._awaitTicket(ticket)
      })
      if (!cb) return done
      done.then(() => cb(null), (err) => cb(err))
      return undefined
    }
    const ticket = native.counterReset(this.#handle, key, ack, timeout)
    if (!cb) return ticket === 0 ? RESOLVED : this.#peer._awaitTicket(ticket)
    settle(this.#peer, ticket, undefined, cb)
    return undefined
  }

  /** When the window of `key` that new increments join ends (ms since the epoch), or undefined. */
  expiresAt(key) {
    checkCounterKey('expiresAt()', key)
    this.#readable('expiresAt()')
    return native.counterExpiresAt(this.#handle, key) ?? undefined
  }

  /** Keys (optionally those starting with `prefix`) whose value is not 0. */
  keys(prefix) {
    prefix = checkPrefix('keys()', prefix)
    this.#readable('keys()')
    return native.counterKeys(this.#handle, prefix)
  }

  /** How many keys have a value other than 0. */
  get size() {
    this.#readable('size')
    return native.counterKeys(this.#handle, '').length
  }

  /** The counter's default window in ms (0: none); set with `peer.counter(name, { ttl })`. */
  get ttl() {
    return this.#ttl
  }

  _setTtl(ttl) {
    this.#ttl = ttl
  }
}

module.exports = { SharedCounter, checkCounterArgs }
