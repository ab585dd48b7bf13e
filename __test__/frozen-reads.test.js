'use strict'
// Buckets opened with { reads: 'frozen' }: get returns one deeply frozen object per key, the same until
// the key changes by any path (local set, remote set, delete, expiry, deletePrefix, a session cleared),
// and the default stays a fresh object each time.

const { Peer, createPeer, createCluster, closeAll } = require('./helpers/peers')
const { waitFor } = require('./helpers/wait')
const { SessionStore } = require('..')

afterEach(closeAll)

const session = (n) => ({ user: `u${n}`, roles: ['a', 'b'], prefs: { theme: 'dark', sizes: [1, 2] } })
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

test('a frozen bucket returns the same object for a key until the key changes; a default one a fresh one', async () => {
  const peer = await createPeer()
  const frozen = peer.bucket('frozen', { reads: 'frozen' })
  const fresh = peer.bucket('fresh')
  await frozen.set('k', session(1))
  await fresh.set('k', session(1))
  const first = frozen.get('k')
  expect(first).toEqual(session(1))
  expect(frozen.get('k')).toBe(first)
  expect(frozen.get('k')).toBe(first)
  expect(frozen.reads).toBe('frozen')
  expect(fresh.reads).toBe('fresh')
  expect(fresh.get('k')).toEqual(session(1))
  expect(fresh.get('k')).not.toBe(fresh.get('k'))
  expect(Object.isFrozen(fresh.get('k'))).toBe(false)
})

test('a local set gives the next get a new object, even when the new value is equal to the old', async () => {
  const peer = await createPeer()
  const b = peer.bucket('s', { reads: 'frozen' })
  await b.set('k', session(1))
  const first = b.get('k')
  await b.set('k', session(2))
  const second = b.get('k')
  expect(second).toEqual(session(2))
  expect(first).toEqual(session(1))
  await b.set('k', session(2))
  const third = b.get('k')
  expect(third).toEqual(session(2))
  expect(third).not.toBe(second)
  expect(b.get('k')).toBe(third)
})

test('a set on another peer gives the next get on this one the new object', async () => {
  const [a, b] = await createCluster(2)
  const ba = a.bucket('s')
  const bb = b.bucket('s', { reads: 'frozen' })
  await ba.set('k', session(1))
  await waitFor(() => bb.get('k') !== undefined, { message: 'the first write to arrive' })
  const first = bb.get('k')
  expect(bb.get('k')).toBe(first)
  await ba.set('k', session(2))
  await waitFor(() => bb.get('k').user === 'u2', { message: 'the second write to arrive' })
  expect(bb.get('k')).toEqual(session(2))
  expect(bb.get('k')).toBe(bb.get('k'))
  expect(first.user).toBe('u1')
})

test('a delete, here or on another peer, makes get return undefined', async () => {
  const [a, b] = await createCluster(2)
  const ba = a.bucket('s')
  const bb = b.bucket('s', { reads: 'frozen' })
  await bb.set('here', session(1))
  expect(bb.get('here')).toEqual(session(1))
  await bb.delete('here')
  expect(bb.get('here')).toBeUndefined()
  await ba.set('there', session(2))
  await waitFor(() => bb.get('there') !== undefined, { message: 'the write to arrive' })
  expect(bb.get('there')).toBe(bb.get('there'))
  await ba.delete('there')
  await waitFor(() => bb.get('there') === undefined, { message: 'the delete to arrive' })
  // Written again after the delete: a new object.
  await bb.set('here', session(3))
  expect(bb.get('here')).toEqual(session(3))
})

test('a key that expires is undefined to get, and a touch keeps the same object', async () => {
  const peer = await createPeer()
  const b = peer.bucket('s', { reads: 'frozen' })
  await b.set('k', session(1), { ttl: 300 })
  const first = b.get('k')
  await b.touch('k', 400)
  expect(b.get('k')).toBe(first)
  await sleep(450)
  expect(b.get('k')).toBeUndefined()
  expect(b.has('k')).toBe(false)
})

test('deletePrefix clears every kept key, and a SessionStore over a frozen bucket hands out fresh sessions and clears them', async () => {
  const peer = await createPeer()
  const b = peer.bucket('sessions', { reads: 'frozen' })
  await b.setMany([['x:1', session(1)], ['x:2', session(2)]])
  expect(b.get('x:1')).toBe(b.get('x:1'))
  expect(await b.deletePrefix('x:')).toBe(2)
  expect(b.get('x:1')).toBeUndefined()
  expect(b.get('x:2')).toBeUndefined()

  const store = new SessionStore({ bucket: b })
  const sess = { cookie: { originalMaxAge: 60000, expires: new Date(Date.now() + 60000).toISOString() }, n: 1 }
  await new Promise((resolve, reject) => store.set('sid', sess, (err) => (err ? reject(err) : resolve())))
  const got = () => new Promise((resolve, reject) => store.get('sid', (err, s) => (err ? reject(err) : resolve(s))))
  const s1 = await got()
  expect(Object.isFrozen(s1)).toBe(false)
  s1.n = 2 // express-session changes the session it is handed
  expect((await got()).n).toBe(1)
  expect(b.get('sess:sid')).toBe(b.get('sess:sid'))
  await new Promise((resolve, reject) => store.clear((err) => (err ? reject(err) : resolve())))
  expect(await got()).toBeUndefined()
  expect(b.get('sess:sid')).toBeUndefined()
})

test('what a frozen bucket returns is frozen all the way down: assignment throws in strict mode', async () => {
  const peer = await createPeer()
  const b = peer.bucket('s', { reads: 'frozen' })
  await b.set('k', session(1))
  await b.set('list', [{ a: 1 }, [2, 3]])
  const v = b.get('k')
  expect(() => { v.user = 'x' }).toThrow(TypeError)
  expect(() => { v.prefs.theme = 'light' }).toThrow(TypeError)
  expect(() => { v.prefs.sizes[0] = 9 }).toThrow(TypeError)
  expect(() => v.roles.push('c')).toThrow(TypeError)
  expect(() => { delete v.user }).toThrow(TypeError)
  const list = b.get('list')
  expect(() => { list[0].a = 2 }).toThrow(TypeError)
  expect(() => { list[1][0] = 0 }).toThrow(TypeError)
  expect(b.get('k')).toEqual(session(1))
})

test('strings and bytes in a frozen bucket: a string as it is, bytes as a fresh Buffer each time', async () => {
  const peer = await createPeer()
  const b = peer.bucket('s', { reads: 'frozen' })
  await b.set('s', 'text')
  await b.set('n', 42)
  await b.set('bytes', Buffer.from([1, 2, 3]))
  expect(b.get('s')).toBe('text')
  expect(b.get('n')).toBe(42)
  const bytes = b.get('bytes')
  expect(Buffer.from(bytes)).toEqual(Buffer.from([1, 2, 3]))
  bytes[0] = 9
  expect(b.get('bytes')[0]).toBe(1)
  // A key that held an object and now holds bytes.
  await b.set('k', session(1))
  expect(b.get('k')).toBe(b.get('k'))
  await b.set('k', Buffer.from([7]))
  expect(b.get('k')[0]).toBe(7)
})

test('the reads mode is set before the peer opens, and given again replaces the old one', async () => {
  const peer = new Peer({ listen: '127.0.0.1:0' })
  const b = peer.bucket('s', { reads: 'frozen' })
  const written = b.set('k', session(1))
  try {
    await peer.ready()
    await written
    await frozenThenFresh(peer, b)
  } finally {
    await peer.close()
  }
})

async function frozenThenFresh(peer, b) {
  expect(b.get('k')).toBe(b.get('k'))
  expect(peer.bucket('s', { reads: 'fresh' })).toBe(b)
  expect(b.reads).toBe('fresh')
  expect(b.get('k')).not.toBe(b.get('k'))
  expect(peer.bucket('s')).toBe(b)
  expect(b.reads).toBe('fresh')
}

test('entries of keys deleted by another peer do not pile up: new entries sweep them', async () => {
  const [a, b] = await createCluster(2)
  const ba = a.bucket('s')
  const bb = b.bucket('s', { reads: 'frozen' })
  const N = 200
  await ba.setMany(Array.from({ length: N }, (_, i) => [`old:${i}`, session(i)]))
  await waitFor(() => bb.size === N, { message: 'the writes to arrive' })
  for (let i = 0; i < N; i++) bb.get(`old:${i}`)
  expect(bb._keptCount).toBe(N)
  expect(await ba.deletePrefix('old:')).toBe(N)
  await waitFor(() => bb.size === 0, { message: 'the deletes to arrive' })
  // Nothing read them since: the entries stay until new ones sweep them, two per new entry.
  expect(bb._keptCount).toBe(N)
  await bb.setMany(Array.from({ length: N }, (_, i) => [`new:${i}`, session(i)]))
  for (let i = 0; i < N; i++) bb.get(`new:${i}`)
  expect(bb._keptCount).toBe(N)
})

test('a bad reads option is a TypeError naming it', async () => {
  const peer = await createPeer()
  expect(() => peer.bucket('s', { reads: 'cold' })).toThrow(TypeError)
  expect(() => peer.bucket('s', { reads: 'cold' })).toThrow(/options\.reads must be 'fresh' or 'frozen' \(got 'cold'\)/)
  expect(() => peer.bucket('s', { reads: true })).toThrow(/options\.reads must be 'fresh' or 'frozen' \(got true\)/)
  expect(() => peer.bucket('s', { reads: null })).toThrow(TypeError)
})
