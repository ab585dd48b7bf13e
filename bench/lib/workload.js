'use strict'
// The workload shared by every section and every system compared: a session-like JSON object of about
// 200 bytes, keys `sess:<n>`, and a short string.

const SESSION = Object.freeze({
  cookie: { originalMaxAge: 1800000, expires: '2025-06-01T12:30:00.000Z', httpOnly: true, path: '/' },
  user: { id: 48213, name: 'alice', roles: ['user'] },
  csrf: '9f8a1c2e4b7d6a3f',
  lastSeen: 1748779200000,
})
const SESSION_JSON = JSON.stringify(SESSION)
const SHORT = 'hello, world'

function key(n) {
  return 'sess:' + n
}

/** An array of `count` keys `sess:<start>` … (built once, outside any timed loop). */
function keys(start, count) {
  const out = new Array(count)
  for (let i = 0; i < count; i++) out[i] = 'sess:' + (start + i)
  return out
}

module.exports = { SESSION, SESSION_JSON, SHORT, key, keys }
