'use strict'
// SessionStore: an express-session store over a SharedBucket, with connect-redis's options and units.
//
// Each session is one key, `${prefix}${sid}`, whose value is the session as JSON (or, with a
// `serializer`, the string it makes). Its time to live is connect-redis's: `ttl(session)` when ttl is a
// function, else the cookie's `expires`, else `ttl` seconds (default: the bucket's ttl, else one day);
// expiry is replicated with the value, so every peer drops the session at the same moment. touch()
// extends the expiry with bucket.touch(), without rewriting the value, and never brings back a session
// deleted meanwhile (a logout on another server wins over a late touch); with `touchAfter` a touch that
// would move the expiry by less is skipped, so read-only requests replicate nothing.
// Reads come from the local replica: they never wait on the network, whatever state the peers are in.
//
// With `userOf(session)`, each session of a user also has an index key, `${userPrefix}${uid}:${sid}`
// (uid URI-encoded, so one user's keys are never under another's prefix), with the session's expiry:
// one key per session, so two logins on two servers at once never overwrite each other's entry.
// destroyUser(uid) deletes every session the index names whose session still belongs to that user.
//
// An ack timeout (EACKTIMEOUT, options.ack above 'local') on a write the store makes is not an error:
// the write is applied here and keeps replicating, and express-session makes its auto-save after the
// response headers are out, where an error can only break the response. The store emits 'warning'
// with it instead (or, without a listener, process.emitWarning). `ackTimeout: 'fail'` makes it an error.
//
// all(), length(), ids() and clear() walk the bucket a page at a time (bucket.scan; length() counts with
// bucket.countAsync), yielding to the event loop between pages, so a store of a million sessions never
// stalls the process for long.
//
// express-session is a peer dependency of this part only. This file is loaded on first use of
// `SessionStore` (index.js defines it as a getter), never by `require('peer-buckets')` itself. Without
// express-session installed, SessionStore is a stand-in whose constructor says what to install.

const { EventEmitter } = require('node:events')
const { setImmediate: nextTurn } = require('node:timers/promises')

const DEFAULT_TTL_SECONDS = 24 * 60 * 60 // one day, as connect-redis, for sessions whose cookie has no expiry
// The largest ttl taken, in seconds: 366 days. peer-buckets 0.1 took ttl in milliseconds; any value above this
// can only be one (a day in ms is 86,400,000 s, 2.7 years), so it is refused rather than kept 1000 times too long.
const MAX_TTL_SECONDS = 366 * 24 * 60 * 60
const ACK_LEVELS = ['local', 'one', 'majority', 'all']
const OPTIONS = ['bucket', 'prefix', 'ttl', 'ack', 'timeout', 'ackTimeout', 'disableTouch', 'touchAfter', 'serializer', 'userOf', 'userPrefix']
// Sessions read per page by all(), length(), ids() and clear().
const PAGE = 1000

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
// Until the bucket's peer opens, `work` waits for it (its synchronous reads would throw ENOTREADY).
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
    ['get', 'set', 'delete', 'touch', 'keys', 'scan', 'ttl'].every((m) => typeof bucket[m] === 'function')
  )
}

function checkSeconds(what, value) {
  if (typeof value !== 'number') throw new TypeError(`SessionStore: ${what} must be a number of seconds`)
  if (!(value > 0) || !Number.isFinite(value)) throw new RangeError(`SessionStore: ${what} must be a positive number of seconds`)
  if (value > MAX_TTL_SECONDS) {
    throw new RangeError(
      `SessionStore: ${what} is in seconds, as in connect-redis (peer-buckets 0.1 took milliseconds); ` +
        `${value} is over 366 days: for ${value} ms write ${Math.max(1, Math.round(value / 1000))}`,
    )
  }
  return value
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
  const { bucket, prefix = 'sess:', ttl, ack, timeout, ackTimeout = 'warn', disableTouch = false, touchAfter = 0, serializer, userOf } = options
  if (!isBucket(bucket)) {
    throw new TypeError('SessionStore: options.bucket must be a SharedBucket (from peer.bucket(name))')
  }
  if (typeof prefix !== 'string') throw new TypeError('SessionStore: options.prefix must be a string')
  const userPrefix = options.userPrefix === undefined ? `user:${prefix}` : options.userPrefix
  if (typeof userPrefix !== 'string' || userPrefix === '') throw new TypeError('SessionStore: options.userPrefix must be a non-empty string')
  if (userPrefix.startsWith(prefix) && prefix !== '' && userPrefix !== prefix) {
    // Index keys under the session prefix would be listed as sessions by all(), ids() and length().
    throw new RangeError(`SessionStore: options.userPrefix '${userPrefix}' must not start with the session prefix '${prefix}'`)
  }
  if (ttl !== undefined && typeof ttl !== 'function') checkSeconds('options.ttl', ttl)
  if (ack !== undefined && !ACK_LEVELS.includes(ack)) {
    throw new TypeError(`SessionStore: options.ack must be one of ${ACK_LEVELS.map((a) => `'${a}'`).join(', ')}`)
  }
  if (timeout !== undefined) {
    if (typeof timeout !== 'number') throw new TypeError('SessionStore: options.timeout must be a number of milliseconds')
    if (!(timeout > 0) || !Number.isFinite(timeout)) {
      throw new RangeError('SessionStore: options.timeout must be a positive number of milliseconds')
    }
  }
  if (ackTimeout !== 'warn' && ackTimeout !== 'fail') throw new TypeError("SessionStore: options.ackTimeout must be 'warn' or 'fail'")
  if (typeof disableTouch !== 'boolean') throw new TypeError('SessionStore: options.disableTouch must be a boolean')
  if (touchAfter !== 0) checkSeconds('options.touchAfter', touchAfter)
  if (serializer !== undefined && (serializer === null || typeof serializer.stringify !== 'function' || typeof serializer.parse !== 'function')) {
    throw new TypeError('SessionStore: options.serializer must have stringify(session) and parse(string), as JSON does')
  }
  if (userOf !== undefined && typeof userOf !== 'function') throw new TypeError('SessionStore: options.userOf must be a function (session) => user id')
  return { bucket, prefix, ttl, ack, timeout, ackTimeout, disableTouch, touchAfter, serializer, userOf, userPrefix }
}

function checkSid(method, sid) {
  if (typeof sid !== 'string' || sid.length === 0) {
    throw new TypeError(`SessionStore.${method}(): sid must be a non-empty string`)
  }
}

function checkUser(method, userId) {
  if ((typeof userId !== 'string' || userId === '') && !Number.isFinite(userId)) {
    throw new TypeError(`SessionStore.${method}(): userId must be a non-empty string or a number`)
  }
  return String(userId)
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
    #failOnAckTimeout
    #disableTouch
    #touchAfterMs
    #serializer
    #userOf
    #userPrefix

    /** See SessionStoreOptions in index.d.ts; ttl and touchAfter in seconds, as connect-redis. */
    constructor(options) {
      const o = checkOptions(options)
      super()
      this.#bucket = o.bucket
      this.#prefix = o.prefix
      this.#ttl = o.ttl
      this.#failOnAckTimeout = o.ackTimeout === 'fail'
      this.#disableTouch = o.disableTouch
      this.#touchAfterMs = o.touchAfter * 1000
      this.#serializer = o.serializer
      this.#userOf = o.userOf
      this.#userPrefix = o.userPrefix
      const writeOptions = {}
      if (o.ack !== undefined) writeOptions.ack = o.ack
      if (o.timeout !== undefined) writeOptions.timeout = o.timeout
      this.#writeOptions = Object.keys(writeOptions).length ? writeOptions : undefined
      // express-session serves requests without sessions while its store is disconnected: the store
      // is usable from the peer's start to its close.
      const peer = o.bucket.peer
      if (peer && typeof peer.on === 'function') {
        if (peer.closed) process.nextTick(() => this.emit('disconnect'))
        else {
          peer.ready().then(() => { if (!peer.closed) this.emit('connect') }, () => {})
          peer.once('close', () => this.emit('disconnect'))
        }
      }
    }

    /** The bucket sessions are kept in. */
    get bucket() {
      return this.#bucket
    }

    /** The key prefix of the sessions. */
    get prefix() {
      return this.#prefix
    }

    /** The key prefix of the user index (see userOf). */
    get userPrefix() {
      return this.#userPrefix
    }

    /**
     * Seconds a session lives when its cookie has no expiry: options.ttl (a number), else the bucket's
     * default ttl, else one day.
     */
    get ttl() {
      if (typeof this.#ttl === 'number') return this.#ttl
      return this.#bucket.defaultTtl ? this.#bucket.defaultTtl / 1000 : DEFAULT_TTL_SECONDS
    }

    /**
     * How many ms `session` has to live, as connect-redis reckons it: options.ttl(session) seconds when
     * ttl is a function, else until its cookie's `expires`, else its cookie's `maxAge`, else the
     * store's ttl. Zero or less means already expired.
     */
    ttlFor(session, now = Date.now()) {
      if (typeof this.#ttl === 'function') return checkSeconds('options.ttl(session)', this.#ttl(session)) * 1000
      const cookie = session && session.cookie
      if (cookie && typeof cookie === 'object') {
        const left = msUntil(cookie.expires, now)
        if (left !== undefined) return left
        if (typeof cookie.maxAge === 'number' && Number.isFinite(cookie.maxAge)) return cookie.maxAge
      }
      return this.ttl * 1000
    }

    #key(sid) {
      return this.#prefix + sid
    }

    #userKey(userId, sid) {
      return `${this.#userPrefix}${encodeURIComponent(userId)}:${sid}`
    }

    #userOfSession(session) {
      if (!this.#userOf || session === undefined) return undefined
      const user = this.#userOf(session)
      return user === undefined || user === null || user === '' ? undefined : String(user)
    }

    #writeOptionsWith(ttl) {
      return this.#writeOptions ? { ...this.#writeOptions, ttl } : { ttl }
    }

    // A write's outcome, an ack timeout turned into a 'warning' unless ackTimeout is 'fail'.
    #settled(promise, op, sid) {
      if (this.#failOnAckTimeout) return promise
      return promise.catch((err) => {
        if (!err || err.code !== 'EACKTIMEOUT') throw err
        err.message = `SessionStore.${op}('${sid}'): ${err.message}; the write is applied here and keeps replicating`
        if (this.listenerCount('warning') > 0) this.emit('warning', err)
        else process.emitWarning(err)
      })
    }

    #decode(key, raw) {
      if (raw === undefined) return undefined
      const session = this.#serializer && typeof raw === 'string' ? this.#serializer.parse(raw) : raw
      if (session === null || typeof session !== 'object' || typeof session.cookie !== 'object' || session.cookie === null) {
        throw new TypeError(`SessionStore.get(): the value under '${key}' is not a session (no cookie)`)
      }
      return session
    }

    #read(sid) {
      const key = this.#key(sid)
      // A fresh object even from a bucket with reads: 'frozen': express-session changes the session.
      const raw = typeof this.#bucket._getFresh === 'function' ? this.#bucket._getFresh(key) : this.#bucket.get(key)
      return this.#decode(key, raw)
    }

    /** cb(err, session): the session, or undefined when there is none (or it expired). */
    get(sid, cb) {
      return finish(cb, () => {
        checkSid('get', sid)
        return this.#read(sid)
      }, this.#bucket)
    }

    /** Stores the session with the TTL ttlFor gives; an already expired one is deleted. */
    set(sid, session, cb) {
      return finish(cb, () => {
        checkSid('set', sid)
        if (session === null || typeof session !== 'object') {
          throw new TypeError('SessionStore.set(): session must be an object')
        }
        const ttl = this.ttlFor(session)
        if (!(ttl > 0)) return this.#destroy(sid)
        const value = this.#serializer ? this.#serializer.stringify(session) : session
        const user = this.#userOfSession(session)
        const options = this.#writeOptionsWith(Math.ceil(ttl))
        // The user the session had here before: a session that changed hands leaves its old entry.
        const before = this.#userOf ? this.#userBefore(sid) : undefined
        const writes = [this.#bucket.set(this.#key(sid), value, options)]
        if (user !== undefined) writes.push(this.#bucket.set(this.#userKey(user, sid), sid, options))
        if (before !== undefined && before !== user) writes.push(this.#bucket.delete(this.#userKey(before, sid), this.#writeOptions))
        return this.#settled(Promise.all(writes), 'set', sid)
      }, this.#bucket)
    }

    // The user of the session stored here under `sid`, if any.
    #userBefore(sid) {
      try {
        return this.#userOfSession(this.#read(sid))
      } catch {
        return undefined // not a session: nothing indexed for it
      }
    }

    #destroy(sid) {
      const user = this.#userBefore(sid)
      const deletes = [this.#bucket.delete(this.#key(sid), this.#writeOptions)]
      if (user !== undefined) deletes.push(this.#bucket.delete(this.#userKey(user, sid), this.#writeOptions))
      return this.#settled(Promise.all(deletes), 'destroy', sid)
    }

    /** Deletes the session (and its user index entry) on every peer. */
    destroy(sid, cb) {
      return finish(cb, () => {
        checkSid('destroy', sid)
        return this.#destroy(sid)
      }, this.#bucket)
    }

    /**
     * Extends the session's expiry to what ttlFor says, on every peer, without rewriting it. A session
     * that is gone (logged out elsewhere, expired) stays gone. Nothing is written with disableTouch, or
     * when the expiry would move by less than touchAfter.
     */
    touch(sid, session, cb) {
      return finish(cb, async () => {
        checkSid('touch', sid)
        if (this.#disableTouch) return undefined
        const ttl = this.ttlFor(session)
        const key = this.#key(sid)
        if (!(ttl > 0)) {
          await this.#destroy(sid)
          return undefined
        }
        if (this.#touchAfterMs > 0) {
          const left = this.#bucket.ttl(key)
          if (left === undefined || ttl - left < this.#touchAfterMs) return undefined
        }
        if (await this.#bucket.touch(key, Math.ceil(ttl))) {
          const user = this.#userOfSession(session)
          if (user !== undefined) await this.#bucket.touch(this.#userKey(user, sid), Math.ceil(ttl))
        }
        return undefined
      }, this.#bucket)
    }

    // Every page of live keys (with values unless keysOnly) under `prefix`, yielding between pages;
    // `visit` may return a promise, which settles before the next page is read.
    async #eachPage(prefix, keysOnly, visit) {
      let cursor = null
      do {
        const page = this.#bucket.scan({ prefix, cursor, limit: PAGE, keysOnly })
        await visit(keysOnly ? page.keys : page.entries)
        cursor = page.cursor
        if (cursor !== null) await nextTurn()
      } while (cursor !== null)
    }

    /** cb(err, sessions): every live session, as an array, each with its `id`. */
    all(cb) {
      return finish(cb, async () => {
        const n = this.#prefix.length
        const sessions = []
        await this.#eachPage(this.#prefix, false, (entries) => {
          for (const [key, raw] of entries) {
            if (this.#isIndexKey(key)) continue
            const session = this.#serializer && typeof raw === 'string' ? this.#serializer.parse(raw) : raw
            if (session !== null && typeof session === 'object' && !Array.isArray(session)) session.id = key.slice(n)
            sessions.push(session)
          }
        })
        return sessions
      }, this.#bucket)
    }

    // With the session prefix '' the user index sits among the sessions: its keys are not sessions.
    #isIndexKey(key) {
      return this.#prefix === '' && key.startsWith(this.#userPrefix)
    }

    /** cb(err, count): how many live sessions there are. */
    length(cb) {
      return finish(cb, async () => {
        // Counted in the addon a page at a time: no key crosses to JavaScript.
        if (typeof this.#bucket.countAsync === 'function') {
          const count = await this.#bucket.countAsync(this.#prefix)
          return this.#prefix === '' ? count - (await this.#bucket.countAsync(this.#userPrefix)) : count
        }
        let count = 0
        await this.#eachPage(this.#prefix, true, (keys) => {
          for (const key of keys) if (!this.#isIndexKey(key)) count++
        })
        return count
      }, this.#bucket)
    }

    /** cb(err, ids): the ids of the live sessions. */
    ids(cb) {
      return finish(cb, async () => {
        const n = this.#prefix.length
        const ids = []
        await this.#eachPage(this.#prefix, true, (keys) => {
          for (const key of keys) if (!this.#isIndexKey(key)) ids.push(key.slice(n))
        })
        return ids
      }, this.#bucket)
    }

    /**
     * Deletes every session (every key under the prefix) and the user index, on every peer, a page at
     * a time: a page's deletes settle before the next page is read, so at most a page of writes waits
     * at once, whatever the number of sessions. An ack timeout is one warning per page; with
     * ackTimeout 'fail' the first is the error, once every page is deleted here.
     */
    clear(cb) {
      return finish(cb, async () => {
        let timedOut
        for (const prefix of this.#userOf ? [this.#prefix, this.#userPrefix] : [this.#prefix]) {
          await this.#eachPage(prefix, true, (keys) => {
            const page = Promise.all(keys.map((key) => this.#bucket.delete(key, this.#writeOptions)))
            const named = keys.length === 1 ? keys[0] : `${keys[0]}', …, '${keys[keys.length - 1]}`
            return this.#settled(page, 'clear', named).catch((err) => {
              if (err.code !== 'EACKTIMEOUT') throw err
              timedOut = timedOut || err
            })
          })
        }
        if (timedOut) throw timedOut
        return undefined
      }, this.#bucket)
    }

    // The index entries of `userId` this replica holds: [key, sid, session] each, the session as read
    // here (undefined when it is gone, or has not arrived yet).
    #indexOf(userId) {
      const prefix = `${this.#userPrefix}${encodeURIComponent(userId)}:`
      return this.#bucket.keys(prefix).map((key) => {
        const sid = key.slice(prefix.length)
        let session
        try {
          session = this.#read(sid)
        } catch {
          session = undefined
        }
        return [key, sid, session]
      })
    }

    /** cb(err, ids): the ids of the live sessions of `userId` (needs options.userOf). */
    sessionsOf(userId, cb) {
      return finish(cb, () => {
        if (!this.#userOf) throw new TypeError('SessionStore.sessionsOf(): needs options.userOf')
        const user = checkUser('sessionsOf', userId)
        return this.#indexOf(user)
          .filter(([, , session]) => session !== undefined && this.#userOfSession(session) === user)
          .map(([, sid]) => sid)
      }, this.#bucket)
    }

    /**
     * Logs `userId` out everywhere: deletes each of their sessions this replica knows, and its index
     * entry, on every peer; cb(err, count) with how many sessions were deleted (needs options.userOf).
     */
    destroyUser(userId, cb) {
      return finish(cb, async () => {
        if (!this.#userOf) throw new TypeError('SessionStore.destroyUser(): needs options.userOf')
        const user = checkUser('destroyUser', userId)
        const deletes = []
        let destroyed = 0
        for (const [key, sid, session] of this.#indexOf(user)) {
          const owner = this.#userOfSession(session)
          // A session not here yet is deleted all the same: the delete is newer than its write and
          // wins wherever it lands. One that now belongs to another user keeps its session.
          if (owner === undefined || owner === user) {
            if (session !== undefined) destroyed++
            deletes.push(this.#settled(this.#bucket.delete(this.#key(sid), this.#writeOptions), 'destroyUser', sid))
          }
          deletes.push(this.#settled(this.#bucket.delete(key, this.#writeOptions), 'destroyUser', sid))
        }
        await Promise.all(deletes)
        return destroyed
      }, this.#bucket)
    }
  }
}

const SessionStore = createSessionStore()

module.exports = { SessionStore, DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS }
