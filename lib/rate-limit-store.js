'use strict'
// RateLimitStore: an express-rate-limit store (v7 and later) on a SharedCounter, so every server of a
// peer-buckets network counts the same hits per client. It owns the mapping of the store interface
// onto the counter: a client's hits are the counter key `prefix + key`, in a window of `windowMs`
// opened by its first hit and ending at the same instant everywhere (resetTime). An increment waits
// (up to `timeout`) for every connected peer to apply it, so a client alternating between servers is
// counted exactly; past the timeout the count seen here is used and the hit keeps replicating.

const { checkTtl } = require('./validation.js')

const DEFAULT_TIMEOUT = 1000
// Keys reset at once by resetAll(): one promise each, so a million keys never wait together.
const RESET_PAGE = 1000

class RateLimitStore {
  /**
   * @param {object} options
   * @param {import('./peer.js').Peer} options.peer the peer whose network shares the counts
   * @param {string} [options.prefix] put before every client key (default 'rl:')
   * @param {string} [options.counter] the counter's name (default 'rate-limit')
   * @param {'local'|'one'|'majority'|'all'} [options.ack] what an increment waits for (default 'all')
   * @param {number} [options.timeout] how long it waits, in ms (default 1000)
   */
  constructor(options = {}) {
    if (options === null || typeof options !== 'object') throw new TypeError('RateLimitStore: options must be an object')
    const { peer, prefix = 'rl:', counter = 'rate-limit', ack = 'all', timeout = DEFAULT_TIMEOUT } = options
    if (!peer || typeof peer.counter !== 'function') throw new TypeError('RateLimitStore: options.peer must be a Peer')
    if (typeof prefix !== 'string') throw new TypeError('RateLimitStore: options.prefix must be a string')
    if (typeof counter !== 'string' || counter.length === 0) {
      throw new TypeError('RateLimitStore: options.counter must be a non-empty string')
    }
    checkTtl('RateLimitStore: options.timeout', timeout)
    this.peer = peer
    this.prefix = prefix
    // Counts are shared by every server: express-rate-limit must not treat them as this process's.
    this.localKeys = false
    this.counterName = counter
    this.ack = ack
    this.timeout = timeout
    this.windowMs = 60_000
    this.counter = undefined
  }

  /** Called by express-rate-limit with its options; the window is its windowMs. */
  init(options) {
    this.windowMs = checkTtl('RateLimitStore: windowMs', options.windowMs)
    this.counter = this.peer.counter(this.counterName, { ttl: this.windowMs })
  }

  #info(key, totalHits) {
    const end = this.counter.expiresAt(key)
    return { totalHits, resetTime: new Date(end === undefined ? Date.now() + this.windowMs : end) }
  }

  async get(key) {
    await this.counter._opening()
    const k = this.prefix + key
    const totalHits = this.counter.get(k)
    return totalHits === 0 ? undefined : this.#info(k, totalHits)
  }

  async increment(key) {
    const k = this.prefix + key
    let totalHits
    try {
      totalHits = await this.counter.incr(k, 1, { ttl: this.windowMs, ack: this.ack, timeout: this.timeout })
    } catch (err) {
      // Applied here and still replicating; a slow or unreachable peer must not fail the request.
      if (err.code !== 'EACKTIMEOUT') throw err
      // The count this increment saw, not the count now: later hits must not be charged to it.
      totalHits = err.value
    }
    return this.#info(k, totalHits)
  }

  async decrement(key) {
    await this.counter._opening()
    const k = this.prefix + key
    // Never below zero, as express-rate-limit's MemoryStore: a hit taken back after resetKey cleared it,
    // or after its window ended, would leave a negative count that lets more requests through than the
    // limit. (Two servers taking back the last hit at once can still both do it: each sees it here.)
    if (this.counter.get(k) <= 0) return
    await this.counter.decr(k, 1, { ttl: this.windowMs })
  }

  async resetKey(key) {
    await this.counter.reset(this.prefix + key)
  }

  /**
   * Resets every client key under the prefix held when it starts, a page at a time: a page's resets
   * settle before the next page starts, so at most a page of them waits at once. A reset clears the
   * hits it has seen: a hit counted after its key's reset (or on a key first hit meanwhile) stays.
   */
  async resetAll() {
    await this.counter._opening()
    const keys = this.counter.keys(this.prefix)
    for (let i = 0; i < keys.length; i += RESET_PAGE) {
      await Promise.all(keys.slice(i, i + RESET_PAGE).map((k) => this.counter.reset(k)))
    }
  }

  /** The peer belongs to the application, which closes it. */
  async shutdown() {}
}

module.exports = { RateLimitStore }
