'use strict'
// The workload shared by every section and every system compared: express-session records as JSON
// (about 230 bytes), under keys `sess:<session id>`, and a short string.
//
// Session n is the same on every run and in every process (seeded by n alone), and as varied as real
// sessions are: the session id (the key) and the CSRF secret are base64url of random bytes, as
// express-session and csrf draw them (24 and 18 bytes); the user id, the name's number and the
// times are random within their ranges. Only the shape and the field names repeat, as they do in a
// real store, so what compression saves on the wire here is what it would save there.

const SEED = 0x5e551015
const DAY = 86_400_000
// Sessions opened over one day, from here.
const EPOCH = Date.UTC(2026, 10, 30)
const NAMES = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi', 'ivan', 'judy', 'mallory', 'niaj',
  'olivia', 'peggy', 'rupert', 'sybil', 'trent', 'uma', 'victor', 'walter', 'xena', 'yusuf', 'zoe', 'amir', 'bea', 'chen',
  'dara', 'emeka', 'fatima', 'goran', 'hana', 'ines', 'jonas', 'kiri', 'lena', 'mateo', 'nadia', 'omar', 'priya', 'quinn']

/** A generator of numbers in [0, 1) for session `n`, one stream per `salt` (mulberry32). */
function stream(n, salt) {
  let a = (SEED ^ Math.imul(n + 1, 0x9e3779b1) ^ Math.imul(salt, 0x85ebca6b)) >>> 0
  return () => {
    a = (a + 0x6d2b79f5) | 0
    let t = Math.imul(a ^ (a >>> 15), 1 | a)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** base64url of `count` random bytes from `next`. */
function token(next, count) {
  const bytes = Buffer.allocUnsafe(count)
  for (let i = 0; i < count; i++) bytes[i] = (next() * 256) | 0
  return bytes.toString('base64url')
}

/** The key of session `n`: `sess:` and its id, 24 random bytes in base64url (32 characters). */
function key(n) {
  return 'sess:' + token(stream(n, 1), 24)
}

/** The record of session `n`, as express-session keeps it: its cookie, its user, a CSRF secret. */
function session(n) {
  const next = stream(n, 2)
  const created = EPOCH + Math.floor(next() * DAY)
  const seen = created + Math.floor(next() * 3_600_000)
  const name = NAMES[Math.floor(next() * NAMES.length)]
  return {
    cookie: { originalMaxAge: DAY, expires: new Date(seen + DAY).toISOString(), httpOnly: true, path: '/' },
    user: { id: 1 + Math.floor(next() * 5_000_000), name: name + Math.floor(next() * 1000), roles: next() < 0.05 ? ['user', 'admin'] : ['user'] },
    csrfSecret: token(next, 18),
    createdAt: created,
    lastSeen: seen,
  }
}

/** One session for the figures that write or read the same object many times (get, set, durable). */
const SESSION = Object.freeze(session(0))
const SESSION_JSON = JSON.stringify(SESSION)
const SHORT = 'hello, world'

/** An array of the keys of sessions `start` … (built once, outside any timed loop). */
function keys(start, count) {
  const out = new Array(count)
  for (let i = 0; i < count; i++) out[i] = key(start + i)
  return out
}

/** An array of the records of sessions `start` … (built once, outside any timed loop). */
function sessions(start, count) {
  const out = new Array(count)
  for (let i = 0; i < count; i++) out[i] = session(start + i)
  return out
}

/** Bytes of keys and JSON values (UTF-8) of sessions `start` …: what the wire figures divide by. */
function dataBytes(start, count) {
  let n = 0
  for (let i = start; i < start + count; i++) n += Buffer.byteLength(key(i)) + Buffer.byteLength(JSON.stringify(session(i)))
  return n
}

module.exports = { SESSION, SESSION_JSON, SHORT, key, keys, session, sessions, dataBytes }
