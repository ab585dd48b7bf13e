'use strict'
// SessionStore at connect-redis parity (ttl in seconds, disableTouch, touchAfter, serializer,
// 'connect'/'disconnect'), the ack-timeout rule of express-session's auto-save, paging that never
// stalls the event loop, and "log out everywhere" (userOf, sessionsOf, destroyUser), the last across
// three processes with logins racing on two servers.

const path = require('node:path')
const { fork } = require('node:child_process')
const express = require('express')
const session = require('express-session')
const request = require('supertest')
const Cookie = require('express-session/session/cookie')
const { SessionStore } = require('..')
const { createPeer, closeAll } = require('./helpers/peers')
const { waitFor, withTimeout } = require('./helpers/wait')
const { Channel } = require('../support/ipc')

jest.setTimeout(90_000)

const sess = (extra = {}, maxAge = 60_000) => ({ cookie: new Cookie({ maxAge }), ...extra })

const children = new Set()
const servers = new Set()
afterEach(async () => {
  for (const child of children) {
    try {
      child.kill('SIGKILL')
    } catch {}
  }
  children.clear()
  for (const server of servers) server.close()
  servers.clear()
  await closeAll()
})

describe('connect-redis options', () => {
  test('disableTouch: touch writes nothing', async () => {
    const peer = await createPeer()
    const bucket = peer.bucket('sessions')
    const store = new SessionStore({ bucket, disableTouch: true })
    await store.set('s1', sess({}, 10_000))
    await store.touch('s1', sess({}, 600_000))
    expect(bucket.inspect('sess:s1').touch).toBeUndefined()
    expect(bucket.ttl('sess:s1')).toBeLessThanOrEqual(10_000)
  })

  test('touchAfter: a touch moving the expiry by less is skipped (nothing replicates); a larger one extends it', async () => {
    const a = await createPeer()
    const b = await createPeer({ peers: [a.address] })
    await waitFor(() => b.peers().some((p) => p.state === 'connected'), { message: 'the peers to link' })
    const bucket = a.bucket('sessions')
    const store = new SessionStore({ bucket, touchAfter: 60 })
    await store.set('s1', sess({ user: 'ada' }, 3_600_000), undefined)
    await waitFor(() => b.bucket('sessions').has('sess:s1'), { message: 'b to hold the session' })
    const applied = b.stats().opsApplied
    // A read-only request a few seconds later: the cookie's new expiry is seconds past the stored one.
    for (let i = 0; i < 20; i++) await store.touch('s1', sess({ user: 'ada' }, 3_600_000 + 5_000))
    expect(bucket.inspect('sess:s1').touch).toBeUndefined()
    await new Promise((r) => setTimeout(r, 300))
    expect(b.stats().opsApplied).toBe(applied)
    // Two minutes further: past touchAfter, so the touch is made and replicates.
    await store.touch('s1', sess({ user: 'ada' }, 3_600_000 + 120_000))
    expect(bucket.inspect('sess:s1').touch).toBeDefined()
    await waitFor(() => b.bucket('sessions').ttl('sess:s1') > 3_600_000 + 60_000, { message: 'the touch to replicate' })
  })

  test('serializer: sessions are stored as the string it makes and read back through it', async () => {
    const peer = await createPeer()
    const bucket = peer.bucket('sessions')
    // Keeps Dates as Dates, which JSON does not.
    const serializer = {
      stringify: (v) => JSON.stringify(v, function (k, x) { return this[k] instanceof Date ? { $date: this[k].toISOString() } : x }),
      parse: (t) => JSON.parse(t, (k, x) => (x && typeof x === 'object' && typeof x.$date === 'string' ? new Date(x.$date) : x)),
    }
    const store = new SessionStore({ bucket, serializer })
    const at = new Date('2026-01-02T03:04:05.000Z')
    await store.set('s1', sess({ lastLogin: at }))
    expect(typeof bucket.get('sess:s1')).toBe('string')
    const back = await store.get('s1')
    expect(back.lastLogin).toBeInstanceOf(Date)
    expect(back.lastLogin.getTime()).toBe(at.getTime())
    const [all] = await store.all()
    expect(all.id).toBe('s1')
    expect(all.lastLogin).toBeInstanceOf(Date)
  })

  test("'connect' once the peer is ready, 'disconnect' when it closes (express-session then serves without sessions)", async () => {
    const peer = await createPeer()
    const store = new SessionStore({ bucket: peer.bucket('sessions') })
    const events = []
    store.on('connect', () => events.push('connect'))
    store.on('disconnect', () => events.push('disconnect'))
    await waitFor(() => events.length === 1, { message: "'connect'" })
    await peer.close()
    await waitFor(() => events.length === 2, { message: "'disconnect'" })
    expect(events).toEqual(['connect', 'disconnect'])
  })
})

describe('an ack timeout during the auto-save', () => {
  async function app(storeOptions) {
    // A lone peer: 'one' can never be met, so every write times out.
    const peer = await createPeer()
    const store = new SessionStore({ bucket: peer.bucket('sessions'), ack: 'one', timeout: 200, ...storeOptions })
    const errors = []
    const warnings = []
    store.on('warning', (w) => warnings.push(w))
    const a = express()
    a.use(session({ store, secret: 'a secret for the ack test', resave: false, saveUninitialized: false }))
    a.post('/login', (req, res) => {
      req.session.user = 'ada'
      res.json({ ok: true })
    })
    a.use((err, req, res, next) => {
      errors.push({ code: err.code, headersSent: res.headersSent })
      if (!res.headersSent) res.status(500).json({ error: err.code })
      else next(err)
    })
    return { a, store, errors, warnings, peer }
  }

  test("never reaches the app's error handler: the response completes and the store emits 'warning'", async () => {
    const { a, errors, warnings, peer } = await app({})
    const res = await request(a).post('/login').timeout(5000)
    expect(res.status).toBe(200)
    expect(res.body).toEqual({ ok: true })
    expect(errors).toEqual([])
    expect(warnings.map((w) => w.code)).toEqual(['EACKTIMEOUT'])
    expect(warnings[0].message).toMatch(/applied here and keeps replicating/)
    expect(peer.bucket('sessions').size).toBe(1)
  })

  test("with ackTimeout: 'fail' the store's write rejects with EACKTIMEOUT", async () => {
    const { store } = await app({ ackTimeout: 'fail' })
    await expect(store.set('s1', sess())).rejects.toMatchObject({ code: 'EACKTIMEOUT' })
  })
})

describe('paging', () => {
  test('all, length, ids and clear over 100k sessions yield to the event loop between pages', async () => {
    const peer = await createPeer()
    const bucket = peer.bucket('sessions')
    const store = new SessionStore({ bucket })
    const N = 100_000
    const cookie = { originalMaxAge: 3_600_000, expires: new Date(Date.now() + 3_600_000).toISOString() }
    const batch = []
    for (let i = 0; i < N; i++) batch.push([`sess:${i}`, { cookie, user: `u${i}` }])
    await bucket.setMany(batch)
    await bucket.set('other', 1)

    // The longest the loop went without a turn while `work` ran.
    async function stall(work) {
      let longest = 0
      let last = performance.now()
      let ticking = true
      const tick = () => {
        const now = performance.now()
        longest = Math.max(longest, now - last)
        last = now
        if (ticking) setImmediate(tick)
      }
      setImmediate(tick)
      const t0 = performance.now()
      const result = await work()
      const total = performance.now() - t0
      ticking = false
      return { result, longest, total }
    }
    const length = await stall(() => store.length())
    expect(length.result).toBe(N)
    const ids = await stall(() => store.ids())
    expect(new Set(ids.result).size).toBe(N)
    const all = await stall(() => store.all())
    expect(all.result.length).toBe(N)
    expect(all.result.find((s) => s.id === '7').user).toBe('u7')
    for (const r of [length, ids, all]) {
      // Many turns of the loop, each short next to the whole call.
      expect(r.longest).toBeLessThan(Math.max(50, r.total / 5))
    }
    const clear = await stall(() => store.clear())
    expect(bucket.count('sess:')).toBe(0)
    expect(bucket.get('other')).toBe(1)
    expect(clear.longest).toBeLessThan(Math.max(50, clear.total / 3))
  })
})

describe('clear() a page at a time', () => {
  // The real bucket, watched: how many of the deletes made through it have not settled yet, each time
  // a page is read.
  function watched(bucket) {
    const seen = { unsettled: 0, atScan: [], deletes: 0 }
    const proxy = new Proxy(bucket, {
      get(target, prop) {
        const value = Reflect.get(target, prop, target)
        if (prop === 'scan') {
          return (options) => {
            seen.atScan.push(seen.unsettled)
            return value.call(target, options)
          }
        }
        if (prop === 'delete') {
          return (...args) => {
            seen.deletes++
            seen.unsettled++
            const done = value.apply(target, args)
            done.then(() => seen.unsettled--, () => seen.unsettled--)
            return done
          }
        }
        return typeof value === 'function' ? value.bind(target) : value
      },
    })
    return { proxy, seen }
  }

  test("waits for a page's deletes (acknowledged by another peer) before reading the next: at most a page of writes waits at once", async () => {
    const a = await createPeer({ id: 'a' })
    const b = await createPeer({ id: 'b', peers: [a.address] })
    await waitFor(() => a.peers().some((p) => p.id === 'b' && p.state === 'connected'), { message: 'a linked to b' })
    const N = 3_500
    const batch = []
    for (let i = 0; i < N; i++) batch.push([`sess:${i}`, sess({ n: i })])
    await a.bucket('sessions').setMany(batch)
    await waitFor(() => b.bucket('sessions').count('sess:') === N, { message: 'b to hold every session' })

    const { proxy, seen } = watched(a.bucket('sessions'))
    const store = new SessionStore({ bucket: proxy, ack: 'one', timeout: 10_000 })
    await store.clear()
    expect(seen.deletes).toBe(N)
    expect(seen.atScan.length).toBeGreaterThanOrEqual(4)
    expect(seen.atScan).toEqual(seen.atScan.map(() => 0))
    expect(seen.unsettled).toBe(0)
    expect(a.bucket('sessions').count('sess:')).toBe(0)
    await waitFor(() => b.bucket('sessions').count('sess:') === 0, { message: 'b to see every session deleted' })
  })

  test("an ack that cannot be met is one warning per page, not per session; with ackTimeout: 'fail' the error, once all is deleted here", async () => {
    // A lone peer: 'one' can never be met.
    const peer = await createPeer()
    const bucket = peer.bucket('sessions')
    const N = 2_500
    const fill = () => bucket.setMany(Array.from({ length: N }, (_, i) => [`sess:${i}`, sess({ n: i })]))
    await fill()
    const store = new SessionStore({ bucket, ack: 'one', timeout: 100 })
    const warnings = []
    store.on('warning', (w) => warnings.push(w))
    await store.clear()
    expect(bucket.count('sess:')).toBe(0)
    expect(warnings.length).toBe(Math.ceil(N / 1000))
    for (const w of warnings) {
      expect(w.code).toBe('EACKTIMEOUT')
      expect(w.message).toMatch(/^SessionStore\.clear\('sess:\d+', …, 'sess:\d+'\): .*applied here and keeps replicating/)
    }

    await fill()
    const failing = new SessionStore({ bucket, ack: 'one', timeout: 100, ackTimeout: 'fail' })
    await expect(failing.clear()).rejects.toMatchObject({ code: 'EACKTIMEOUT' })
    expect(bucket.count('sess:')).toBe(0)
  })
})

describe('log out everywhere', () => {
  test('userOf indexes each session by user; sessionsOf lists them; destroyUser destroys them and no others', async () => {
    const peer = await createPeer()
    const bucket = peer.bucket('sessions')
    const store = new SessionStore({ bucket, userOf: (s) => s.user })
    await store.set('s1', sess({ user: 'ada' }))
    await store.set('s2', sess({ user: 'ada' }))
    await store.set('s3', sess({ user: 'bob' }))
    await store.set('anon', sess({}))
    await store.set('odd', sess({ user: 'ada:x' })) // a user id with the separator is its own user
    expect((await store.sessionsOf('ada')).sort()).toEqual(['s1', 's2'])
    expect(bucket.ttl('user:sess:ada:s1')).toBeGreaterThan(50_000) // the index entry lives as long as its session
    expect(await store.length()).toBe(5) // index entries are not sessions
    // A session that changed hands is no longer listed under its former user.
    await store.set('s2', sess({ user: 'bob' }))
    expect(await store.sessionsOf('ada')).toEqual(['s1'])
    await store.set('s2', sess({ user: 'ada' }))
    expect(await store.destroyUser('ada')).toBe(2)
    expect(await store.get('s1')).toBeUndefined()
    expect(await store.get('s2')).toBeUndefined()
    expect((await store.get('s3')).user).toBe('bob')
    expect((await store.get('odd')).user).toBe('ada:x')
    expect(await store.sessionsOf('ada')).toEqual([])
    expect(bucket.keys('user:sess:ada:')).toEqual([])
    // A logout removes the session's index entry.
    await store.destroy('s3')
    expect(bucket.keys('user:sess:bob:')).toEqual([])
    await expect(new SessionStore({ bucket }).sessionsOf('ada')).rejects.toThrow(/needs options\.userOf/)
  })

  function spawnServer(id, seeds) {
    const child = fork(path.join(__dirname, 'fixtures', 'session-server.js'), [], {
      env: { ...process.env, NODE_OPTIONS: '', SS_ID: id, SS_SEEDS: seeds.join(','), SS_APP: JSON.stringify({ maxAge: 600_000, userIndex: true }) },
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    })
    children.add(child)
    let stderr = ''
    child.stderr.on('data', (d) => (stderr += d))
    const channel = new Channel(child, { name: `server ${id}`, describeExit: () => `stderr: ${stderr}` })
    const ready = new Promise((resolve, reject) => {
      child.on('message', (msg) => {
        if (msg && msg.type === 'ready') resolve(msg)
        if (msg && msg.type === 'fatal') reject(new Error(`server ${id} failed: ${msg.error.message}`))
      })
      child.on('exit', (code) => reject(new Error(`server ${id} exited (${code}): ${stderr}`)))
    })
    return withTimeout(ready, 20_000, `server ${id} start`).then((msg) => ({ ...msg, ask: (cmd) => channel.request(cmd, {}, 5000) }))
  }

  async function login(url, user) {
    const res = await request(url).post('/login').send({ user }).timeout(10_000)
    expect(res.status).toBe(200)
    return res.headers['set-cookie'][0].split(';')[0]
  }

  test('across three processes: logins racing on two servers are all indexed, and destroyUser on the third logs every one out', async () => {
    const peerA = await createPeer({ id: 'A' })
    const storeA = new SessionStore({ bucket: peerA.bucket('sessions'), userOf: (s) => s.user, ack: 'all' })
    const [b, c] = await Promise.all([spawnServer('B', [peerA.address]), spawnServer('C', [peerA.address])])
    await waitFor(() => ['B', 'C'].every((id) => peerA.peers().some((p) => p.id === id && p.state === 'connected')), {
      timeout: 15_000,
      message: 'A to link with B and C',
    })
    const PER_SERVER = 15
    const logins = []
    for (let i = 0; i < PER_SERVER; i++) {
      logins.push(login(b.url, 'ada').then((cookie) => ({ url: b.url, cookie })))
      logins.push(login(c.url, 'ada').then((cookie) => ({ url: c.url, cookie })))
    }
    const bob = login(b.url, 'bob')
    const sessions = await Promise.all(logins)
    const bobCookie = await bob
    await waitFor(async () => (await storeA.sessionsOf('ada')).length === 2 * PER_SERVER, {
      timeout: 15_000,
      message: 'A to list every session of ada made on B and C',
    })
    expect(await storeA.destroyUser('ada')).toBe(2 * PER_SERVER)
    for (const { url, cookie } of sessions) {
      await waitFor(async () => (await request(url).get('/me').set('Cookie', cookie).timeout(5000)).status === 401, {
        timeout: 10_000,
        message: 'every session of ada to be logged out on B and C',
      })
    }
    const stillBob = await request(b.url).get('/me').set('Cookie', bobCookie).timeout(5000)
    expect(stillBob.body).toMatchObject({ user: 'bob' })
    expect(await storeA.sessionsOf('ada')).toEqual([])
    expect(await storeA.sessionsOf('bob')).toHaveLength(1)
  })
})
