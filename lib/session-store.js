'use strict'
// SessionStore: an express-session store over a SharedBucket.
//
// Each session is one key, `${prefix}${sid}`, whose value is the session as JSON. Its time to live
// follows the session cookie's expiry (`cookie.expires`, else `cookie.maxAge`), or the store's `ttl`
// when the cookie has none; expiry is replicated with the value, so every peer drops the session at the
// same moment. touch() extends the expiry with bucket.touch(), without rewriting the value, and never
// brings back a session deleted meanwhile (a logout on another server wins over a late touch).
// Reads come from the local replica: they never wait on the network, whatever state the peers are in.
//
// express-session is a peer dependency of this part only. This file is loaded on first use of
// `SessionStore` (index.js defines it as a getter), never by `require('peer-buckets')` itself. Without
// express-session installed, SessionStore is a stand-in whose constructor says what to install.

const { EventEmitter } = require('node:events')

const DEFAULT_TTL = 24 * 60 * 60 * 1000 // one day, for sessions whose cookie has no expiry
const ACK_LEVELS = ['local', 'one', 'majority', 'all']
const OPTIONS = ['bucket', 'prefix', 'ttl', 'ack', 'timeout']

let Store = null
let missing = null
try {
  Store = require('express-session').Store
} catch (err) {
  if (err && err.code === 'MODULE_NOT_FOUND' && /express-session/.test(err.message)) missing = err
  else throw err
}

// Runs `work` (sync, or returning a promise) and reports its outcome to `cb`, or as a promise when
// there is no callback. A callback is always called once, on a later tick, outside any try block.
// `bucket`, for calls that read: until its peer opens they wait for it (synchronous reads would throw
// ENOTREADY), as writes do by themselves.
function finish(cb, work, bucket) {
  let result
  const opening = bucket && typeof bucket._opening === 'function' ? bucket._opening() : undefined
  try {
    result = opening ? opening.then(work) : Promise.resolve(work())
  } catch (err) {
    result = Promise.reject(err)
  }
  if (typeof cb !== 'function') return result
  result.then(
    (value) => process.nextTick(cb, null, value),
    (err) => process.nextTick(cb, err),
  )
  return undefined
}

function isBucket(bucket) {
  return (
    bucket !== null &&
    typeof bucket === 'object' &&
    ['get', 'set', 'delete', 'touch', 'keys', 'entries'].every((m) => typeof bucket[m] === 'function')
  )
}

function checkOptions(options) {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new TypeError('SessionStore: options must be an object: new SessionStore({ bucket: peer.bucket(\'sessions\') })')
  }
  for (const name of Object.keys(options)) {
    if (!OPTIONS.includes(name)) {
      throw new TypeError(`SessionStore: unknown option '${name}' (the options are ${OPTIONS.join(', ')})`)
    }
  }
  const { bucket, prefix = 'sess:', ttl, ack, timeout } = options
  if (!isBucket(bucket)) {
    throw new TypeError('SessionStore: options.bucket must be a SharedBucket (from peer.bucket(name))')
  }
  if (typeof prefix !== 'string') throw new TypeError('SessionStore: options.prefix must be a string')
  if (ttl !== undefined) {
    if (typeof ttl !== 'number') throw new TypeError('SessionStore: options.ttl must be a number of milliseconds')
    if (!(ttl > 0) || !Number.isFinite(ttl)) {
      throw new RangeError('SessionStore: options.ttl must be a positive number of milliseconds')
    }
  }
  if (ack !== undefined && !ACK_LEVELS.includes(ack)) {
    throw new TypeError(`SessionStore: options.ack must be one of ${ACK_LEVELS.map((a) => `'${a}'`).join(', ')}`)
  }
  if (timeout !== undefined) {
    if (typeof timeout !== 'number') throw new TypeError('SessionStore: options.timeout must be a number of milliseconds')
    if (!(timeout > 0) || !Number.isFinite(timeout)) {
      throw new RangeError('SessionStore: options.timeout must be a positive number of milliseconds')
    }
  }
  return { bucket, prefix, ttl, ack, timeout }
}

function checkSid(method, sid) {
  if (typeof sid !== 'string' || sid.length === 0) {
    throw new TypeError(`SessionStore.${method}(): sid must be a non-empty string`)
  }
}

// The milliseconds left until `expires` (a Date, an ISO string as JSON carries it, or a timestamp);
// undefined when it is not a time.
function msUntil(expires, now) {
  if (expires === null || expires === undefined || expires === false) return undefined
  const at = expires instanceof Date ? expires.getTime() : new Date(expires).getTime()
  return Number.isFinite(at) ? at - now : undefined
}

function createSessionStore() {
  if (!Store) {
    return class SessionStore extends EventEmitter {
      constructor() {
        super()
        const err = new Error(
          'SessionStore needs express-session, a peer dependency of this part of peer-buckets: ' +
            'npm install express-session',
        )
        err.code = 'MODULE_NOT_FOUND'
        err.cause = missing
        throw err
      }
    }
  }

  return class SessionStore extends Store {
    #bucket
    #prefix
    #ttl
    #writeOptions

    /**
     * @param {object} options
     * @param {SharedBucket} options.bucket where sessions live, e.g. peer.bucket('sessions')
     * @param {string} [options.prefix='sess:'] key prefix of the sessions in that bucket
     * @param {number} [options.ttl] ms a session lives when its cookie has no expiry; default the
     *   bucket's ttl, else one day
     * @param {string} [options.ack] ack level of session writes and deletes ('local' by default): with
     *   'one', 'majority' or 'all' a response that saved a session waits until other servers hold it
     * @param {number} [options.timeout] ms to wait for that ack level (default 5000)
     */
    constructor(options) {
      const { bucket, prefix, ttl, ack, timeout } = checkOptions(options)
      super()
      this.#bucket = bucket
      this.#prefix = prefix
      this.#ttl = ttl
      const writeOptions = {}
      if (ack !== undefined) writeOptions.ack = ack
      if (timeout !== undefined) writeOptions.timeout = timeout
      this.#writeOptions = Object.keys(writeOptions).length ? writeOptions : undefined
    }

    /** The bucket sessions are kept in. */
    get bucket() {
      return this.#bucket
    }

    /** The key prefix of the sessions. */
    get prefix() {
      return this.#prefix
    }

    /** ms a session lives when its cookie has no expiry: options.ttl, else the bucket's ttl, else one day. */
    get ttl() {
      return this.#ttl || this.#bucket.ttl || DEFAULT_TTL
    }

    /**
     * How many ms `session` has to live: until its cookie's `expires`, else its cookie's `maxAge`, else
     * the store's ttl. Zero or less means already expired.
     */
    ttlFor(session, now = Date.now()) {
      const cookie = session && session.cookie
      if (cookie && typeof cookie === 'object') {
        const left = msUntil(cookie.expires, now)
        if (left !== undefined) return left
        if (typeof cookie.maxAge === 'number' && Number.isFinite(cookie.maxAge)) return cookie.maxAge
      }
      return this.ttl
    }

    #key(sid) {
      return this.#prefix + sid
    }

    #writeOptionsWith(ttl) {
      return this.#writeOptions ? { ...this.#writeOptions, ttl } : { ttl }
    }

    /** cb(err, session): the session, or undefined when there is none (or it expired). */
    get(sid, cb) {
      return finish(cb, () => {
        checkSid('get', sid)
        const session = this.#bucket.get(this.#key(sid))
        if (session === undefined) return undefined
        if (session === null || typeof session !== 'object' || typeof session.cookie !== 'object' || session.cookie === null) {
          throw new TypeError(`SessionStore.get(): the value under '${this.#key(sid)}' is not a session (no cookie)`)
        }
        return session
      }, this.#bucket)
    }

    /** Stores the session (as JSON) with the TTL its cookie gives; an already expired one is deleted. */
    set(sid, session, cb) {
      return finish(cb, () => {
        checkSid('set', sid)
        if (session === null || typeof session !== 'object') {
          throw new TypeError('SessionStore.set(): session must be an object')
        }
        const ttl = this.ttlFor(session)
        if (!(ttl > 0)) return this.#bucket.delete(this.#key(sid), this.#writeOptions)
        return this.#bucket.set(this.#key(sid), session, this.#writeOptionsWith(Math.ceil(ttl)))
      })
    }

    /** Deletes the session on every peer. */
    destroy(sid, cb) {
      return finish(cb, () => {
        checkSid('destroy', sid)
        return this.#bucket.delete(this.#key(sid), this.#writeOptions)
      })
    }

    /**
     * Extends the session's expiry to what its cookie now says, on every peer, without rewriting it.
     * A session that is gone (logged out elsewhere, expired) stays gone.
     */
    touch(sid, session, cb) {
      return finish(cb, async () => {
        checkSid('touch', sid)
        const ttl = this.ttlFor(session)
        if (!(ttl > 0)) {
          await this.#bucket.delete(this.#key(sid), this.#writeOptions)
          return undefined
        }
        await this.#bucket.touch(this.#key(sid), Math.ceil(ttl))
        return undefined
      })
    }

    /** cb(err, sessions): every live session, as an array, each with its `id`. */
    all(cb) {
      return finish(cb, () => {
        const n = this.#prefix.length
        return this.#bucket.entries(this.#prefix).map(([key, session]) => {
          if (session !== null && typeof session === 'object' && !Array.isArray(session)) session.id = key.slice(n)
          return session
        })
      }, this.#bucket)
    }

    /** cb(err, count): how many live sessions there are. */
    length(cb) {
      return finish(cb, () => this.#bucket.keys(this.#prefix).length, this.#bucket)
    }

    /** cb(err, ids): the ids of the live sessions. */
    ids(cb) {
      return finish(cb, () => {
        const n = this.#prefix.length
        return this.#bucket.keys(this.#prefix).map((key) => key.slice(n))
      }, this.#bucket)
    }

    /** Deletes every session (every key under the prefix), on every peer. */
    clear(cb) {
      return finish(cb, async () => {
        const keys = this.#bucket.keys(this.#prefix)
        await Promise.all(keys.map((key) => this.#bucket.delete(key, this.#writeOptions)))
        return undefined
      }, this.#bucket)
    }
  }
}

const SessionStore = createSessionStore()

module.exports = { SessionStore, DEFAULT_TTL }
