'use strict'
// SessionStore: every Store method and the TTL-from-cookie rule on one peer, then express-session with
// supertest across two processes: server A here, server B in a child process, one session bucket.

const path = require('node:path')
const { fork, execFileSync } = require('node:child_process')
const request = require('supertest')
const { Store } = require('express-session')
const Cookie = require('express-session/session/cookie')
const { SessionStore } = require('..')
const { createPeer, closeAll } = require('./helpers/peers')
const { createSessionApp } = require('./helpers/session-app')
const { waitFor, sleep, withTimeout } = require('./helpers/wait')
const { Channel } = require('../support/ipc')

jest.setTimeout(60_000)

const ROOT = path.join(__dirname, '..')
const DAY = 24 * 60 * 60 * 1000

// Calls store[method](...args) with a callback and resolves with [err, result].
function viaCallback(store, method, ...args) {
  return new Promise((resolve) => store[method](...args, (err, result) => resolve([err, result])))
}

function cookie(maxAge) {
  const c = new Cookie({ maxAge })
  return c
}

// ---------------------------------------------------------------------------------------------------

describe('require and construction', () => {
  afterEach(closeAll)

  test("require('peer-buckets') neither needs nor loads express-session; SessionStore then says what to install", () => {
    // A process where express and express-session cannot be resolved, as in an app without them.
    const script = `
      const Module = require('node:module')
      const resolve = Module._resolveFilename
      Module._resolveFilename = function (request, ...rest) {
        if (request === 'express-session' || request === 'express') {
          const err = new Error("Cannot find module '" + request + "'")
          err.code = 'MODULE_NOT_FOUND'
          throw err
        }
        return resolve.call(this, request, ...rest)
      }
      const pb = require(${JSON.stringify(ROOT)})
      const out = { keys: Object.keys(pb) }
      const peer = new pb.Peer({ id: 'solo' })
      peer.ready().then(async () => {
        await peer.bucket('b').set('k', 1)
        out.value = peer.bucket('b').get('k')
        out.loaded = Object.keys(require.cache).filter((f) => /express/.test(f))
        try { new pb.SessionStore({ bucket: peer.bucket('b') }) } catch (err) { out.error = { message: err.message, code: err.code } }
        await peer.close()
        console.log(JSON.stringify(out))
      })
    `
    const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20_000 }))
    expect(out.keys).toEqual(expect.arrayContaining(['Peer', 'SharedBucket', 'SessionStore']))
    expect(out.value).toBe(1)
    expect(out.loaded).toEqual([])
    expect(out.error.code).toBe('MODULE_NOT_FOUND')
    expect(out.error.message).toMatch(/npm install express-session/)

    // With express-session installed, requiring peer-buckets alone still does not load it.
    const loaded = execFileSync(
      process.execPath,
      ['-e', `require(${JSON.stringify(ROOT)}); console.log(JSON.stringify(Object.keys(require.cache).filter((f) => /express/.test(f))))`],
      { encoding: 'utf8', timeout: 20_000 },
    )
    expect(JSON.parse(loaded)).toEqual([])
  })

  test("it is an express-session Store", async () => {
    const peer = await createPeer()
    const store = new SessionStore({ bucket: peer.bucket('sessions') })
    expect(store).toBeInstanceOf(Store)
    expect(typeof store.regenerate).toBe('function')
    expect(store.prefix).toBe('sess:')
    expect(store.ttl).toBe(DAY / 1000)
  })

  test('bad options are refused with errors naming the option', async () => {
    const peer = await createPeer()
    const bucket = peer.bucket('sessions')
    expect(() => new SessionStore()).toThrow(TypeError)
    expect(() => new SessionStore()).toThrow(/options must be an object/)
    expect(() => new SessionStore(null)).toThrow(TypeError)
    expect(() => new SessionStore({})).toThrow(/options\.bucket must be a SharedBucket/)
    expect(() => new SessionStore({ bucket: {} })).toThrow(/options\.bucket/)
    expect(() => new SessionStore({ bucket: 'sessions' })).toThrow(TypeError)
    expect(() => new SessionStore({ bucket, prefix: 5 })).toThrow(/options\.prefix must be a string/)
    expect(() => new SessionStore({ bucket, ttl: '1h' })).toThrow(TypeError)
    expect(() => new SessionStore({ bucket, ttl: '1h' })).toThrow(/options\.ttl/)
    for (const ttl of [0, -1, NaN, Infinity]) expect(() => new SessionStore({ bucket, ttl })).toThrow(/options\.ttl/)
    // ttl is in seconds now: a value that can only be milliseconds is refused, saying what to write.
    expect(() => new SessionStore({ bucket, ttl: 86_400_000 })).toThrow(RangeError)
    expect(() => new SessionStore({ bucket, ttl: 86_400_000 })).toThrow(/in seconds.*write 86400/)
    expect(new SessionStore({ bucket, ttl: 366 * 86400 }).ttl).toBe(366 * 86400)
    expect(() => new SessionStore({ bucket, touchAfter: -1 })).toThrow(/options\.touchAfter/)
    expect(() => new SessionStore({ bucket, disableTouch: 'yes' })).toThrow(/options\.disableTouch/)
    expect(() => new SessionStore({ bucket, serializer: JSON.stringify })).toThrow(/options\.serializer/)
    expect(() => new SessionStore({ bucket, userOf: 'userId' })).toThrow(/options\.userOf/)
    expect(() => new SessionStore({ bucket, userPrefix: 'sess:u:' })).toThrow(/must not start with the session prefix/)
    expect(() => new SessionStore({ bucket, ackTimeout: 'ignore' })).toThrow(/options\.ackTimeout/)
    expect(() => new SessionStore({ bucket, ack: 'quorum' })).toThrow(/options\.ack/)
    expect(() => new SessionStore({ bucket, timeout: 0 })).toThrow(/options\.timeout/)
    expect(() => new SessionStore({ bucket, maxAge: 1000 })).toThrow(/unknown option 'maxAge'/)
    expect(new SessionStore({ bucket, prefix: '' }).prefix).toBe('')
  })
})

// ---------------------------------------------------------------------------------------------------

describe('Store methods on one peer', () => {
  let peer, bucket, store

  beforeEach(async () => {
    peer = await createPeer()
    bucket = peer.bucket('sessions')
    store = new SessionStore({ bucket })
  })
  afterEach(closeAll)

  const sess = (extra = {}, maxAge = 60_000) => ({ cookie: cookie(maxAge), ...extra })

  test('set then get: the session is kept as JSON under prefix + sid', async () => {
    const when = new Date('2030-01-02T03:04:05.000Z')
    const [err] = await viaCallback(store, 'set', 'sid1', sess({ user: 'ada', roles: ['admin'], when }))
    expect(err).toBeNull()
    const raw = bucket.get('sess:sid1')
    expect(raw.user).toBe('ada')
    expect(raw.when).toBe('2030-01-02T03:04:05.000Z') // as JSON carries it
    expect(typeof raw.cookie.expires).toBe('string')
    expect(raw.cookie.originalMaxAge).toBe(60_000)
    const [getErr, got] = await viaCallback(store, 'get', 'sid1')
    expect(getErr).toBeNull()
    expect(got).toEqual(raw)
    // express-session can rebuild a Session from it
    const req = {}
    store.createSession(req, got)
    expect(req.session.cookie.expires).toBeInstanceOf(Date)
    expect(req.session.user).toBe('ada')
  })

  test('get of an unknown sid gives no session and no error', async () => {
    expect(await viaCallback(store, 'get', 'nope')).toEqual([null, undefined])
    expect(await store.get('nope')).toBeUndefined()
  })

  test('destroy removes the session', async () => {
    await store.set('sid1', sess({ user: 'ada' }))
    const [err] = await viaCallback(store, 'destroy', 'sid1')
    expect(err).toBeNull()
    expect(bucket.has('sess:sid1')).toBe(false)
    expect(await store.get('sid1')).toBeUndefined()
    // destroying what is not there is fine
    expect((await viaCallback(store, 'destroy', 'sid1'))[0]).toBeNull()
  })

  test('touch extends the expiry to what the cookie now says, without rewriting the session', async () => {
    await store.set('sid1', sess({ user: 'ada' }, 400))
    const changes = []
    bucket.on('change', (e) => changes.push(e))
    const [err] = await viaCallback(store, 'touch', 'sid1', sess({ user: 'stale copy' }, 5000))
    expect(err).toBeNull()
    await sleep(800)
    expect(bucket.get('sess:sid1').user).toBe('ada') // still there, and the stored value untouched
    expect(changes).toEqual([])
  })

  test('touch never brings back a destroyed or expired session', async () => {
    await store.set('gone', sess({ user: 'ada' }))
    await store.destroy('gone')
    expect((await viaCallback(store, 'touch', 'gone', sess({ user: 'ada' })))[0]).toBeNull()
    expect(bucket.has('sess:gone')).toBe(false)
    await store.set('brief', sess({ user: 'bob' }, 200))
    await sleep(400)
    await store.touch('brief', sess({ user: 'bob' }, 60_000))
    expect(await store.get('brief')).toBeUndefined()
    // touching with an expired cookie ends the session
    await store.set('ending', sess({ user: 'eve' }))
    await store.touch('ending', { cookie: { expires: new Date(Date.now() - 1000).toISOString() } })
    expect(bucket.has('sess:ending')).toBe(false)
  })

  test('all, length and ids see the live sessions under the prefix only; clear deletes only them', async () => {
    const other = new SessionStore({ bucket, prefix: 'admin:' })
    await store.set('a', sess({ user: 'ada' }))
    await store.set('b', sess({ user: 'bob' }))
    await other.set('c', sess({ user: 'root' }))
    await bucket.set('unrelated', 42)

    expect(await viaCallback(store, 'length')).toEqual([null, 2])
    const [idsErr, ids] = await viaCallback(store, 'ids')
    expect(idsErr).toBeNull()
    expect(ids.sort()).toEqual(['a', 'b'])
    const [allErr, all] = await viaCallback(store, 'all')
    expect(allErr).toBeNull()
    expect(all.map((s) => [s.id, s.user]).sort()).toEqual([['a', 'ada'], ['b', 'bob']])
    expect(await other.ids()).toEqual(['c'])

    await store.set('short', sess({ user: 'tmp' }, 1000))
    expect(await store.length()).toBe(3)
    // an expired session is no longer counted
    await waitFor(async () => (await store.length()) === 2, { timeout: 5000, message: 'the short session to expire' })
    expect((await store.ids()).sort()).toEqual(['a', 'b'])

    const [clearErr] = await viaCallback(store, 'clear')
    expect(clearErr).toBeNull()
    expect(await store.length()).toBe(0)
    expect(await store.all()).toEqual([])
    expect(await other.length()).toBe(1)
    expect(bucket.get('unrelated')).toBe(42)
  })

  test("the TTL follows the cookie's expires, else its maxAge, else the store's ttl", async () => {
    const now = 1_700_000_000_000
    const custom = new SessionStore({ bucket, ttl: 90 })
    // cookie.expires as a Date (a live Cookie), as an ISO string (as stored), as a timestamp
    expect(store.ttlFor({ cookie: { expires: new Date(now + 5000) } }, now)).toBe(5000)
    expect(store.ttlFor({ cookie: { expires: new Date(now + 5000).toISOString(), maxAge: 99 } }, now)).toBe(5000)
    expect(store.ttlFor({ cookie: { expires: now + 7000 } }, now)).toBe(7000)
    // no expires: maxAge
    expect(store.ttlFor({ cookie: { maxAge: 3000, expires: null } }, now)).toBe(3000)
    // a browser-session cookie (no expiry): the store's ttl, default one day
    expect(store.ttlFor({ cookie: { expires: null, originalMaxAge: null } }, now)).toBe(DAY)
    expect(custom.ttlFor({ cookie: { expires: null } }, now)).toBe(90_000)
    expect(custom.ttlFor({}, now)).toBe(90_000)
    expect(custom.ttlFor(undefined, now)).toBe(90_000)
    // an expired cookie: zero or less
    expect(store.ttlFor({ cookie: { expires: new Date(now - 1) } }, now)).toBeLessThanOrEqual(0)
    // the bucket's ttl is the default when the store has none
    const short = new SessionStore({ bucket: peer.bucket('short', { ttl: 120_000 }) })
    expect(short.ttl).toBe(120)
    expect(short.ttlFor({ cookie: {} }, now)).toBe(120_000)
    // A real express-session Cookie: its expires is now + maxAge.
    const live = new Cookie({ maxAge: 10_000 })
    const ttl = store.ttlFor({ cookie: live })
    expect(ttl).toBeGreaterThan(9000)
    expect(ttl).toBeLessThanOrEqual(10_000)
    // ttl as a function of the session (seconds) wins over the cookie, as in connect-redis
    const byRole = new SessionStore({ bucket, ttl: (s) => (s.admin ? 600 : 3600) })
    expect(byRole.ttlFor({ cookie: live, admin: true }, now)).toBe(600_000)
    expect(byRole.ttlFor({ cookie: live }, now)).toBe(3_600_000)
    expect(() => new SessionStore({ bucket, ttl: () => 86_400_000 }).ttlFor({ cookie: live })).toThrow(/in seconds/)
  })

  test('each write carries that TTL to the bucket, and the session expires then', async () => {
    const spy = jest.spyOn(bucket, 'set')
    const custom = new SessionStore({ bucket, ttl: 90 })
    await store.set('cookie-expiry', { cookie: cookie(30_000), user: 'ada' })
    await custom.set('no-expiry', { cookie: new Cookie(), user: 'bob' })
    const ttls = Object.fromEntries(spy.mock.calls.map(([key, , options]) => [key, options.ttl]))
    expect(ttls['sess:cookie-expiry']).toBeGreaterThan(29_000)
    expect(ttls['sess:cookie-expiry']).toBeLessThanOrEqual(30_000)
    expect(ttls['sess:no-expiry']).toBe(90_000)
    spy.mockRestore()

    await store.set('soon', { cookie: cookie(1000), user: 'eve' })
    expect(await store.get('soon')).toBeDefined()
    await waitFor(async () => (await store.get('soon')) === undefined, { timeout: 5000, message: 'the session to expire' })
    expect(bucket.has('sess:soon')).toBe(false)
  })

  test('saving a session whose cookie has already expired deletes it', async () => {
    await store.set('sid1', sess({ user: 'ada' }))
    await store.set('sid1', { cookie: { expires: new Date(Date.now() - 1000).toISOString() }, user: 'ada' })
    expect(bucket.has('sess:sid1')).toBe(false)
  })

  test('errors reach the callback (or reject the promise); nothing throws at express-session', async () => {
    const [badSid] = await viaCallback(store, 'get', '')
    expect(badSid).toBeInstanceOf(TypeError)
    expect(badSid.message).toMatch(/sid/)
    const [badSession] = await viaCallback(store, 'set', 'x', null)
    expect(badSession).toBeInstanceOf(TypeError)
    const [unserialisable] = await viaCallback(store, 'set', 'x', { cookie: cookie(1000), n: 10n })
    expect(unserialisable).toBeInstanceOf(TypeError)
    await bucket.set('sess:junk', 'not a session')
    const [junk] = await viaCallback(store, 'get', 'junk')
    expect(junk.message).toMatch(/not a session/)
    await expect(store.get('')).rejects.toThrow(TypeError)

    await peer.close()
    for (const [method, args] of [['get', ['a']], ['set', ['a', sess()]], ['destroy', ['a']], ['touch', ['a', sess()]], ['all', []], ['length', []], ['ids', []], ['clear', []]]) {
      const [err] = await viaCallback(store, method, ...args)
      expect(err && err.code).toBe('ECLOSED')
    }
  })

  test('with an ack level, a save settles once another peer holds the session', async () => {
    const other = await createPeer({ peers: [peer.address] })
    await waitFor(() => peer.peers().some((p) => p.state === 'connected'), { message: 'the peers to link' })
    const acked = new SessionStore({ bucket, ack: 'all', timeout: 5000 })
    await acked.set('sid1', sess({ user: 'ada' }))
    expect(other.bucket('sessions').get('sess:sid1').user).toBe('ada')
    await acked.destroy('sid1')
    expect(other.bucket('sessions').has('sess:sid1')).toBe(false)
  })
})

// ---------------------------------------------------------------------------------------------------
// Two processes: server A in this process, server B in a child, one 'sessions' bucket.

const children = new Set()

function spawnServerB(seeds, appOptions) {
  const child = fork(path.join(__dirname, 'fixtures', 'session-server.js'), [], {
    env: { ...process.env, NODE_OPTIONS: '', SS_ID: 'B', SS_SEEDS: seeds.join(','), SS_APP: JSON.stringify(appOptions) },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  })
  children.add(child)
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  child.on('exit', () => children.delete(child))
  const channel = new Channel(child, { name: 'server B', describeExit: () => `stderr: ${stderr}` })
  const ready = new Promise((resolve, reject) => {
    child.on('message', (msg) => {
      if (msg && msg.type === 'ready') resolve(msg)
      if (msg && msg.type === 'fatal') reject(new Error(`server B failed: ${msg.error.message}`))
    })
    child.on('exit', (code) => reject(new Error(`server B exited (${code}): ${stderr}`)))
  })
  const b = {
    child,
    ask: (cmd, timeout = 5000) => channel.request(cmd, {}, timeout),
  }
  return withTimeout(ready, 20_000, 'server B start').then((msg) => Object.assign(b, msg))
}

async function startServers(appOptions = {}) {
  const peerA = await createPeer({ id: 'A' })
  const a = createSessionApp({ bucket: peerA.bucket('sessions'), name: 'A', ...appOptions })
  const server = await new Promise((resolve) => {
    const s = a.app.listen(0, '127.0.0.1', () => resolve(s))
  })
  servers.add(server)
  const urlA = `http://127.0.0.1:${server.address().port}`
  const b = await spawnServerB([peerA.address], appOptions)
  await waitFor(() => peerA.peers().some((p) => p.id === 'B' && p.state === 'connected'), {
    timeout: 10_000,
    message: 'A and B to link',
  })
  return { peerA, a, urlA, b }
}

const servers = new Set()

afterEach(async () => {
  for (const child of children) {
    try {
      child.kill('SIGCONT')
      child.kill('SIGKILL')
    } catch {}
  }
  for (const server of servers) server.close()
  servers.clear()
  await closeAll()
})

async function login(url, user) {
  const res = await request(url).post('/login').send({ user }).timeout(5000)
  expect(res.status).toBe(200)
  const setCookie = res.headers['set-cookie']
  expect(setCookie).toBeDefined()
  return setCookie[0].split(';')[0]
}

const me = (url, cookieHeader, timeout = 5000) => request(url).get('/me').set('Cookie', cookieHeader).timeout(timeout)

async function waitStatus(url, cookieHeader, status, message, timeout = 10_000) {
  return waitFor(
    async () => {
      const res = await me(url, cookieHeader)
      return res.status === status ? res : false
    },
    { timeout, interval: 50, message },
  )
}

describe('express-session across two processes', () => {
  test('log in on A, be logged in on B; log out on B, be logged out on A', async () => {
    const { urlA, b, a } = await startServers({ maxAge: 60_000 })
    const sid = await login(urlA, 'ada')
    const onB = await waitStatus(b.url, sid, 200, 'B to know the session')
    expect(onB.body).toMatchObject({ user: 'ada', loggedInOn: 'A', server: 'B' })
    expect((await me(urlA, sid)).body).toMatchObject({ user: 'ada', server: 'A' })
    // a change made on B is seen on A
    expect((await request(b.url).post('/visit').set('Cookie', sid).timeout(5000)).body.visits).toBe(1)
    await waitFor(async () => (await me(urlA, sid)).body.visits === 1, { message: 'A to see the visit made on B' })

    const out = await request(b.url).post('/logout').set('Cookie', sid).timeout(5000)
    expect(out.status).toBe(200)
    expect((await me(b.url, sid)).status).toBe(401)
    await waitStatus(urlA, sid, 401, 'A to see the logout made on B')
    expect(a.store.bucket.keys()).toEqual([])
    expect(await b.ask('keys')).toEqual([])
  })

  // Note: a request that carries the cookie touches its session (express-session does so for every
  // unmodified session), so these tests watch for expiry in the buckets, never with requests.
  const sessionKeys = async (a, b) => [a.store.bucket.keys(), await b.ask('keys')]

  test("an expired cookie's session is gone on both servers, at its cookie's expiry", async () => {
    const maxAge = 1500
    const { urlA, b, a } = await startServers({ maxAge })
    const t0 = Date.now()
    const sid = await login(urlA, 'ada')
    await waitFor(async () => (await sessionKeys(a, b)).every((keys) => keys.length === 1), { message: 'both to hold the session' })
    await waitFor(async () => (await sessionKeys(a, b)).every((keys) => keys.length === 0), {
      timeout: 10_000,
      message: 'the session to expire on both',
    })
    expect(Date.now() - t0).toBeGreaterThanOrEqual(maxAge - 50) // not before the cookie's expiry
    expect((await me(urlA, sid)).status).toBe(401)
    expect((await me(b.url, sid)).status).toBe(401)
  })

  test('rolling sessions are extended by touch, on either server, and expire once left alone', async () => {
    const maxAge = 2000
    const { urlA, b, a } = await startServers({ maxAge, rolling: true, resave: false })
    const sid = await login(urlA, 'ada')
    await waitStatus(b.url, sid, 200, 'B to know the session')
    const setsAfterLogin = a.calls.set
    // Keep using the session, alternately on A and B, for well past its first expiry.
    const t0 = Date.now()
    let lastUse = t0 // when the last request was sent: its touch gives an expiry at least maxAge after it
    let i = 0
    while (Date.now() - t0 < 2.5 * maxAge) {
      const url = i++ % 2 === 0 ? urlA : b.url
      lastUse = Date.now()
      const res = await me(url, sid)
      expect(res.status).toBe(200)
      expect(res.headers['set-cookie']).toBeDefined() // rolling: a fresh cookie expiry on every response
      await sleep(300)
    }
    // Unmodified sessions were touched, not saved again.
    const callsB = await b.ask('calls')
    expect(a.calls.touch).toBeGreaterThan(2)
    expect(callsB.touch).toBeGreaterThan(2)
    expect(a.calls.set).toBe(setsAfterLogin)
    expect(callsB.set).toBe(0)
    // Left alone, it expires maxAge after its last touch, on both.
    await waitFor(async () => (await sessionKeys(a, b)).every((keys) => keys.length === 0), {
      timeout: 10_000,
      message: 'the rolled session to expire on both',
    })
    expect(Date.now() - lastUse).toBeGreaterThanOrEqual(maxAge - 50)
    expect((await me(urlA, sid)).status).toBe(401)
    expect((await me(b.url, sid)).status).toBe(401)
  })

  test('reads and writes never hang with the other peer unreachable, and it catches up after', async () => {
    const { urlA, b, peerA } = await startServers({ maxAge: 60_000 })
    const ada = await login(urlA, 'ada')
    await waitStatus(b.url, ada, 200, 'B to know the session')

    // B stalls (SIGSTOP): its socket stays open but nothing answers.
    b.child.kill('SIGSTOP')
    const timed = async (fn) => {
      const t = Date.now()
      const res = await fn()
      return [res, Date.now() - t]
    }
    for (let round = 0; round < 3; round++) {
      const [res, ms] = await timed(() => me(urlA, ada, 2000))
      expect(res.status).toBe(200)
      expect(ms).toBeLessThan(1000)
    }
    const [loginRes, loginMs] = await timed(() => request(urlA).post('/login').send({ user: 'grace' }).timeout(2000))
    expect(loginRes.status).toBe(200)
    expect(loginMs).toBeLessThan(1000)
    const grace = loginRes.headers['set-cookie'][0].split(';')[0]
    const [visitRes, visitMs] = await timed(() => request(urlA).post('/visit').set('Cookie', ada).timeout(2000))
    expect(visitRes.status).toBe(200)
    expect(visitMs).toBeLessThan(1000)

    // B resumes and catches up with what A wrote meanwhile.
    b.child.kill('SIGCONT')
    await waitStatus(b.url, grace, 200, 'B to catch up with the login made while it was stalled', 15_000)
    await waitFor(async () => (await me(b.url, ada)).body.visits === 1, { timeout: 15_000, message: 'B to catch up with the visit' })

    // B gone for good: A still answers at once.
    b.child.kill('SIGKILL')
    await waitFor(() => !peerA.peers().some((p) => p.id === 'B' && p.state === 'connected'), { timeout: 10_000, message: 'A to see B down' })
    const [res, ms] = await timed(() => me(urlA, grace, 2000))
    expect(res.status).toBe(200)
    expect(ms).toBeLessThan(1000)
    const [logoutRes] = await timed(() => request(urlA).post('/logout').set('Cookie', grace).timeout(2000))
    expect(logoutRes.status).toBe(200)
    expect((await me(urlA, grace)).status).toBe(401)
  })
})

// ---------------------------------------------------------------------------------------------------

describe('the demo', () => {
  test('npm run demo (examples/demo.js) holds every step and exits 0', async () => {
    const { execFile } = require('node:child_process')
    const { code, stdout, stderr } = await new Promise((resolve) => {
      execFile(
        process.execPath,
        [path.join(ROOT, 'examples', 'demo.js')],
        { timeout: 90_000, env: { ...process.env, NODE_OPTIONS: '', NO_COLOR: '1' } },
        (err, stdout, stderr) => resolve({ code: err ? err.code : 0, stdout, stderr }),
      )
    })
    if (code !== 0) throw new Error(`the demo exited with ${code}:\n${stdout}\n${stderr}`)
    expect(stdout).toMatch(/Every step held/)
    expect(stdout).not.toMatch(/✘/)
    expect(stdout.match(/✔/g).length).toBeGreaterThanOrEqual(15)
  }, 120_000)
})
