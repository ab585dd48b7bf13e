'use strict'
// Argument checks of the public API, and the limits they enforce: every bad argument becomes a
// TypeError or RangeError naming the call and the argument before anything reaches the addon, so a
// call that throws has changed nothing.

const { isIPv4, isIPv6 } = require('node:net')
const { ACK_LEVELS } = require('./native.js')

const MAX_KEY_BYTES = 64 * 1024
const MAX_VALUE_BYTES = 8 * 1024 * 1024
const MAX_BUCKET_NAME_BYTES = 255
const MAX_ID_BYTES = 255
const MIN_SECRET_BYTES = 16
const MAX_SECRETS = 2

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

// A bucket name: 1 to MAX_BUCKET_NAME_BYTES bytes of well-formed Unicode.
function checkBucketName(name) {
  if (typeof name !== 'string' || name.length === 0) throw new TypeError('bucket(): name must be a non-empty string')
  if (!name.isWellFormed()) throw new TypeError('bucket(): name must be well-formed Unicode (it has a lone surrogate)')
  // Names starting with NUL carry counters (lib/counter.js).
  if (name.charCodeAt(0) === 0) throw new RangeError('bucket(): name must not start with NUL (reserved for counters)')
  if (Buffer.byteLength(name) > MAX_BUCKET_NAME_BYTES) {
    throw new RangeError(`bucket(): name must be at most ${MAX_BUCKET_NAME_BYTES} bytes`)
  }
}

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
  if (host.startsWith('[') && host.endsWith(']')) return isIPv6(host.slice(1, -1))
  return isIPv4(host)
}

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

/** A peer's public key as `peer.publicKey` gives it: 64 hex digits. */
const PUBLIC_KEY = /^[0-9a-fA-F]{64}$/

// options.peerKeys: { [id]: publicKey }, ids only that key may speak for; it needs a secret (open
// links prove no key). Returns [{ id, key }] for the native layer; undefined when absent.
function checkPeerKeys(value, secrets) {
  if (value === undefined) return undefined
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new TypeError('Peer: options.peerKeys must be an object mapping peer ids to their publicKey')
  }
  if (secrets === undefined) {
    throw new TypeError('Peer: options.peerKeys needs options.secret (links without a secret prove no key)')
  }
  return Object.entries(value).map(([id, key]) => {
    const what = `options.peerKeys[${JSON.stringify(id)}]`
    if (id.length === 0) throw new RangeError('Peer: options.peerKeys has an empty id')
    if (Buffer.byteLength(id) > MAX_ID_BYTES) {
      throw new RangeError(`Peer: options.peerKeys has an id longer than ${MAX_ID_BYTES} bytes`)
    }
    if (typeof key !== 'string') throw new TypeError(`Peer: ${what} must be a string, the peer's publicKey`)
    if (!PUBLIC_KEY.test(key)) {
      throw new RangeError(`Peer: ${what} must be 64 hex digits, the peer's publicKey (got ${key.length} characters)`)
    }
    return { id, key: key.toLowerCase() }
  })
}

/** Most buckets a peer holds before it ignores what peers send for new ones, by default. */
const MAX_BUCKETS_DEFAULT = 10000
const MAX_BUCKETS_LIMIT = 0xffffffff

function checkMaxBuckets(value) {
  if (value === undefined) return MAX_BUCKETS_DEFAULT
  if (typeof value !== 'number') throw new TypeError('Peer: options.maxBuckets must be a number')
  if (!Number.isSafeInteger(value) || value < 1 || value > MAX_BUCKETS_LIMIT) {
    throw new RangeError(`Peer: options.maxBuckets must be a whole number from 1 to ${MAX_BUCKETS_LIMIT} (got ${value})`)
  }
  return value
}

function checkDuration(name, value, fallback) {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !(value > 0) || !Number.isFinite(value)) {
    throw new RangeError(`Peer: options.${name} must be a positive number of milliseconds`)
  }
  return value
}

/** The methods options.logger must have (pino, winston and console all do): one per level of a line. */
const LOGGER_METHODS = ['error', 'warn', 'info', 'debug']

// options.logger: an object with a function for each of LOGGER_METHODS; undefined: stderr.
function checkLogger(value) {
  if (value === undefined) return undefined
  if (value === null || typeof value !== 'object') {
    throw new TypeError('Peer: options.logger must be an object with error, warn, info and debug methods')
  }
  for (const m of LOGGER_METHODS) {
    if (typeof value[m] !== 'function') throw new TypeError(`Peer: options.logger.${m} must be a function`)
  }
  return value
}

// What bucket(name, { reads }) takes: how get hands out JSON values.
function checkReads(reads) {
  if (reads !== 'fresh' && reads !== 'frozen') {
    const got = typeof reads === 'string' ? `'${reads}'` : String(reads)
    throw new TypeError(`bucket(): options.reads must be 'fresh' or 'frozen' (got ${got})`)
  }
  return reads
}

module.exports = {
  MAX_KEY_BYTES,
  MAX_VALUE_BYTES,
  MAX_ID_BYTES,
  checkKey,
  checkPrefix,
  checkTtl,
  checkWriteOptions,
  splitOptionsAndCallback,
  checkBucketName,
  checkReads,
  checkAddress,
  isIpLiteral,
  checkSecrets,
  checkPeerKeys,
  checkDuration,
  checkMaxBuckets,
  checkLogger,
}
