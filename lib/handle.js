'use strict'
// BucketHandle: what a SharedBucket and a SharedCounter (carried by a hidden bucket) share as the named
// replicas of a Peer, declared once here:
// - the addon's bucket handle: 0 until the peer opens, then the one the Peer hands to `_open`;
// - the 'change' subscription: attached in the addon only while someone listens (and again once the
//   peer opens, for listeners attached before), each batch handed to the subclass's `_deliver`;
// - calls that write (or ask a peer), `_call`: ECLOSED once the peer is closed; made at once when it is
//   open; before, queued on the Peer and made in call order once it opens, failing as ready() does when
//   it cannot. Each settles a callback on a later tick when one is given, else a promise; an ack ticket
//   (0 when the ack level is met at once) becomes a wait on the Peer (`_acked`, `_allAcked`);
// - the checks of a synchronous read (`_readable`): ECLOSED once the peer is closed, ENOTREADY before
//   it opened, since the replica is not loaded yet;
// - the default ttl given with `peer.bucket(name, { ttl })` or `peer.counter(name, { ttl })`;
// - a listener's throw: each listener is called on its own, so one that throws costs no other listener
//   its event, and the error is reported the way Node reports any listener's (`_tell`, `_report`).

const { EventEmitter } = require('node:events')
const { native } = require('./native.js')
const { closedError, notReadyError } = require('./errors.js')

const RESOLVED = Promise.resolve()
const RESOLVED_TRUE = Promise.resolve(true)
const RESOLVED_FALSE = Promise.resolve(false)

// Settles a call's outcome (see `_call`) through `cb`, else as a promise; one already settled reuses a
// resolved promise, as the hot writes (ack 'local') settle at once.
function settle(outcome, cb) {
  if (outcome instanceof Promise) {
    if (!cb) return outcome
    outcome.then((value) => (value === undefined ? cb(null) : cb(null, value)), cb)
    return undefined
  }
  if (cb) {
    if (outcome === undefined) process.nextTick(cb, null)
    else process.nextTick(cb, null, outcome)
    return undefined
  }
  if (outcome === undefined) return RESOLVED
  if (typeof outcome === 'boolean') return outcome ? RESOLVED_TRUE : RESOLVED_FALSE
  return Promise.resolve(outcome)
}

class BucketHandle extends EventEmitter {
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
    if (this.#handle !== 0) native.bucketListen(this.#handle, on ? (batch) => this._deliver(batch) : null)
  }

  // The peer opened: the handle, and the change listeners attached before.
  _open(handle) {
    this.#handle = handle
    if (this.#listening && !this.#peer.closed) native.bucketListen(handle, (batch) => this._deliver(batch))
  }

  get _peer() {
    return this.#peer
  }

  get _handle() {
    return this.#handle
  }

  // Undefined once the peer is open (or closed); before, a promise of its opening (for callers that
  // read, such as the SessionStore and the RateLimitStore).
  _opening() {
    return this.#handle === 0 && !this.#peer.closed ? this.#peer._whenOpen(() => undefined) : undefined
  }

  // The handle, for a synchronous read of `fn`.
  _readable(fn) {
    if (this.#peer.closed) throw closedError(fn)
    if (this.#handle === 0) throw notReadyError(fn)
    return this.#handle
  }

  // Call `fn` (named in its errors): `run(handle)` makes it, now or once the peer opens, and returns
  // its outcome: a promise, or the value it settled with at once. With `cb`, cb(null[, value]) or cb(err)
  // on a later tick; without, a promise.
  _call(fn, run, cb) {
    if (this.#peer.closed) {
      const err = closedError(fn)
      if (!cb) return Promise.reject(err)
      process.nextTick(cb, err)
      return undefined
    }
    const h = this.#handle
    return settle(h === 0 ? this.#peer._whenOpen(() => run(this.#handle)) : run(h), cb)
  }

  // The outcome of a write whose ack level is met with ticket 0 at once, else once the Peer hears so.
  _acked(ticket) {
    return ticket === 0 ? undefined : this.#peer._awaitTicket(ticket)
  }

  // The outcome of several writes: `value` once every ticket's ack level is met (or the first failure).
  _allAcked(tickets, value) {
    const waits = []
    for (const t of tickets) if (t !== 0) waits.push(this.#peer._awaitTicket(t))
    return waits.length === 0 ? value : Promise.all(waits).then(() => value)
  }

  get _defaultTtl() {
    return this.#ttl
  }

  _setTtl(ttl) {
    this.#ttl = ttl
  }

  // Calls each of `listeners` with `event`; returns `firstError`, else the first error one threw.
  _tell(listeners, event, firstError) {
    for (const listener of listeners) {
      try {
        listener.call(this, event)
      } catch (err) {
        firstError = firstError || err
      }
    }
    return firstError
  }

  // A listener's error (or a change that could not be decoded), as Node reports any listener's error:
  // an 'error' event if someone listens for it, else an uncaught exception.
  _report(err) {
    if (this.listenerCount('error') > 0) this.emit('error', err)
    else process.nextTick(() => { throw err })
  }
}

module.exports = { BucketHandle }
