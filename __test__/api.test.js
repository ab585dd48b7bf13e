'use strict'
// The public API of peer-buckets (README: API reference), exercised with Peers inside the jest process.

const net = require('node:net')
const { Peer, SharedBucket } = require('..')
const { createPeer, createCluster, waitConnected, isConnected, closeAll } = require('./helpers/peers')
const { waitFor, sleep, withTimeout } = require('./helpers/wait')
const { captureError, callbackError, describeError, NO_ERROR } = require('./helpers/errors')

afterEach(async () => {
  await closeAll()
})

/** Collects a bucket's 'change' events. */
function recordChanges(bucket) {
  const events = []
  bucket.on('change', (e) => events.push(e))
  return events
}

/** Asserts err is an argument error of class `Ctor` (from the test realm) whose message matches `names`. */
function expectArgError(err, Ctor, names) {
  expect(describeError(err)).not.toBe('no error')
  expect(err).toBeInstanceOf(Error)
  expect(err).toBeInstanceOf(Ctor)
  expect(err.message).toMatch(names)
}

function expectCode(err, code) {
  expect(describeError(err)).not.toBe('no error')
  expect(err).toBeInstanceOf(Error)
  expect(err.code).toBe(code)
}

const sortKeys = (keys) => [...keys].sort()
const sortEntries = (entries) => [...entries].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))

// ---------------------------------------------------------------------------------------------------

describe('Peer basics', () => {
  test('ready() resolves; id and address are set; address is the bound loopback port', async () => {
    const peer = await createPeer({ id: 'basic-1' })
    expect(peer.id).toBe('basic-1')
    expect(typeof peer.address).toBe('string')
    const m = /^127\.0\.0\.1:(\d+)$/.exec(peer.address)
    expect(m).not.toBeNull()
    expect(Number(m[1])).toBeGreaterThan(0)

    // something really listens there
    await new Promise((resolve, reject) => {
      const s = net.connect(Number(m[1]), '127.0.0.1', () => {
        s.destroy()
        resolve()
      })
      s.on('error', reject)
    })
  })

  test('default id is a random non-empty string; listen may be a port number', async () => {
    const a = await createPeer({ listen: 0 })
    const b = await createPeer({ listen: 0 })
    expect(typeof a.id).toBe('string')
    expect(a.id.length).toBeGreaterThan(0)
    expect(a.id).not.toBe(b.id)
    expect(a.address).toMatch(/^127\.0\.0\.1:[1-9]\d*$/)
  })

  test('bucket(name) returns the same SharedBucket object per name, distinct ones per name', async () => {
    const peer = await createPeer()
    const b1 = peer.bucket('one')
    expect(b1).toBeInstanceOf(SharedBucket)
    expect(peer.bucket('one')).toBe(b1)
    const b2 = peer.bucket('two')
    expect(b2).not.toBe(b1)
    await b1.set('k', 1)
    expect(b2.has('k')).toBe(false)
    expect(b1.get('k')).toBe(1)
  })

  test('bucket names of exactly 255 bytes are accepted', async () => {
    const peer = await createPeer()
    const b = peer.bucket('n'.repeat(255))
    await b.set('k', true)
    expect(b.get('k')).toBe(true)
    expect(peer.bucket('é'.repeat(127) + 'x').size).toBe(0) // 255 bytes of UTF-8
  })
})

// ---------------------------------------------------------------------------------------------------

describe('values: set/get round-trips', () => {
  const jsonValues = {
    object: { a: 1, nested: { b: [1, 2, { c: 'd' }] }, empty: {}, n: null },
    array: [1, 'two', false, null, [3], { four: 4 }],
    emptyArray: [],
    string: 'hello',
    emptyString: '',
    unicode: 'héllo wörld 🌍 — ✓',
    jsonLookingString: '{"not":"an object"}',
    zero: 0,
    integer: 42,
    negative: -17,
    float: 3.141592653589793,
    big: Number.MAX_SAFE_INTEGER,
    tiny: 5e-324,
    huge: 1.7976931348623157e308,
    true: true,
    false: false,
    null: null,
  }

  test('JSON values (objects, arrays, strings, numbers, booleans, null) come back equal', async () => {
    const peer = await createPeer()
    const b = peer.bucket('values')
    for (const [key, value] of Object.entries(jsonValues)) await b.set(key, value)
    for (const [key, value] of Object.entries(jsonValues)) {
      expect({ key, value: b.get(key) }).toEqual({ key, value })
      expect(b.has(key)).toBe(true)
    }
    expect(b.size).toBe(Object.keys(jsonValues).length)
    // null is a stored value, not absence
    expect(b.get('null')).toBeNull()
    expect(b.get('missing')).toBeUndefined()
    expect(b.has('missing')).toBe(false)
  })

  test('Buffer and Uint8Array values come back as Buffer with the same bytes', async () => {
    const peer = await createPeer()
    const b = peer.bucket('bytes')
    await b.set('buf', Buffer.from('hello bytes'))
    await b.set('u8', new Uint8Array([0, 1, 2, 253, 254, 255]))
    await b.set('empty', Buffer.alloc(0))
    const backing = new Uint8Array([9, 9, 1, 2, 3, 9])
    await b.set('view', backing.subarray(2, 5)) // only the view's bytes
    const big = Buffer.alloc(100_000)
    for (let i = 0; i < big.length; i++) big[i] = (i * 31) & 0xff
    await b.set('big', big)

    for (const key of ['buf', 'u8', 'empty', 'view', 'big']) {
      const v = b.get(key)
      expect(Buffer.isBuffer(v)).toBe(true)
      expect(v).toBeInstanceOf(Uint8Array)
    }
    expect(b.get('buf').toString()).toBe('hello bytes')
    expect([...b.get('u8')]).toEqual([0, 1, 2, 253, 254, 255])
    expect(b.get('empty').length).toBe(0)
    expect([...b.get('view')]).toEqual([1, 2, 3])
    expect(b.get('big').equals(big)).toBe(true)

    const entries = new Map(b.entries())
    expect(Buffer.isBuffer(entries.get('u8'))).toBe(true)
    expect([...entries.get('u8')]).toEqual([0, 1, 2, 253, 254, 255])
  })

  test('a string value is not confused with bytes and bytes are not confused with JSON', async () => {
    const peer = await createPeer()
    const b = peer.bucket('types')
    await b.set('s', '[1,2,3]')
    await b.set('bytes', Buffer.from('"text"'))
    expect(b.get('s')).toBe('[1,2,3]')
    expect(Buffer.isBuffer(b.get('bytes'))).toBe(true)
    expect(b.get('bytes').toString()).toBe('"text"')
  })

  test('string values (stored as themselves) read back the same on every path: get, entries, change events, another peer', async () => {
    const [a, b] = await createCluster(2)
    const ba = a.bucket('strings')
    const bb = b.bucket('strings')
    const strings = {
      plain: 'hello, world',
      empty: '',
      quotes: 'say "hi" \\ back\\slash',
      controls: 'tab\there\nnew line\u0001\u001f end',
      unicode: 'héllo wörld 🌍 — ✓ \u2028\u2029',
      jsonLooking: '{"a":1}',
      number: '42',
      // Not well-formed UTF-16: travels as JSON text (which escapes it), so it still comes back equal.
      loneSurrogate: 'a\ud800b',
    }
    const seen = new Map()
    bb.on('change', (e) => seen.set(e.key, e.value))
    for (const [key, value] of Object.entries(strings)) await ba.set(key, value)
    await waitFor(() => seen.size === Object.keys(strings).length, { message: 'every change event' })
    const entries = new Map(ba.entries())
    const remoteEntries = new Map(bb.entries())
    for (const [key, value] of Object.entries(strings)) {
      expect({ key, get: ba.get(key), remote: bb.get(key), entry: entries.get(key), remoteEntry: remoteEntries.get(key), event: seen.get(key) })
        .toEqual({ key, get: value, remote: value, entry: value, remoteEntry: value, event: value })
    }
    // The kind of one read never leaks into the next: a JSON value read right after a string.
    await ba.set('obj', { s: 'x' })
    expect(ba.get('plain')).toBe('hello, world')
    expect(ba.get('obj')).toEqual({ s: 'x' })
    expect(ba.get('jsonLooking')).toBe('{"a":1}')
    expect(() => ba.set('big', 'x'.repeat(8 * 1024 * 1024 + 1))).toThrow(RangeError)
    expect(ba.has('big')).toBe(false)
  })

  test('get returns a fresh copy: mutating it changes nothing stored', async () => {
    const peer = await createPeer()
    const b = peer.bucket('copies')
    const original = { x: 1, list: [1, 2], inner: { y: 'z' } }
    await b.set('obj', original)
    await b.set('buf', Buffer.from([1, 2, 3]))

    const got = b.get('obj')
    got.x = 999
    got.list.push(3)
    got.inner.y = 'changed'
    got.added = true
    expect(b.get('obj')).toEqual({ x: 1, list: [1, 2], inner: { y: 'z' } })
    expect(b.get('obj')).not.toBe(b.get('obj'))

    const buf = b.get('buf')
    buf[0] = 0xff
    buf.fill(7)
    expect([...b.get('buf')]).toEqual([1, 2, 3])

    const [[, fromEntries]] = b.entries('obj')
    fromEntries.x = -1
    expect(b.get('obj').x).toBe(1)
  })

  test('set copies its argument: mutating the object or Buffer afterwards changes nothing stored', async () => {
    const peer = await createPeer()
    const b = peer.bucket('copies-in')
    const obj = { a: [1] }
    const buf = Buffer.from([5, 6, 7])
    await b.set('obj', obj)
    await b.set('buf', buf)
    obj.a.push(2)
    obj.b = 1
    buf[0] = 0
    expect(b.get('obj')).toEqual({ a: [1] })
    expect([...b.get('buf')]).toEqual([5, 6, 7])
  })

  test('keys of exactly 64 KiB of UTF-8 are accepted and replicate', async () => {
    const [a, bPeer] = await createCluster(2, 'longkey')
    const ba = a.bucket('long')
    const bb = bPeer.bucket('long')
    const ascii = 'k'.repeat(64 * 1024)
    const multibyte = 'é'.repeat(32 * 1024) // 2 bytes each: 65536 bytes
    await ba.set(ascii, 'ascii')
    await ba.set(multibyte, 'multibyte')
    expect(ba.get(ascii)).toBe('ascii')
    expect(ba.get(multibyte)).toBe('multibyte')
    await waitFor(() => bb.get(ascii) === 'ascii' && bb.get(multibyte) === 'multibyte', {
      message: 'long keys to replicate',
    })
  })
})

// ---------------------------------------------------------------------------------------------------

describe('has / keys / entries / size / delete', () => {
  test('prefixes select keys and entries; size counts live keys', async () => {
    const peer = await createPeer()
    const b = peer.bucket('prefix')
    expect(b.size).toBe(0)
    expect(b.keys()).toEqual([])
    expect(b.entries()).toEqual([])

    await b.set('user:1', { name: 'ann' })
    await b.set('user:2', { name: 'bob' })
    await b.set('user:10', { name: 'cy' })
    await b.set('users', 'not a user')
    await b.set('session:1', 1)
    await b.set('u', 'u')

    expect(b.size).toBe(6)
    expect(sortKeys(b.keys())).toEqual(['session:1', 'u', 'user:1', 'user:10', 'user:2', 'users'])
    expect(sortKeys(b.keys(''))).toEqual(sortKeys(b.keys()))
    expect(sortKeys(b.keys('user:'))).toEqual(['user:1', 'user:10', 'user:2'])
    expect(sortKeys(b.keys('user:1'))).toEqual(['user:1', 'user:10'])
    expect(sortKeys(b.keys('user'))).toEqual(['user:1', 'user:10', 'user:2', 'users'])
    expect(b.keys('nothing-here')).toEqual([])
    expect(sortKeys(b.keys('u'))).toEqual(['u', 'user:1', 'user:10', 'user:2', 'users'])

    expect(sortEntries(b.entries('user:'))).toEqual([
      ['user:1', { name: 'ann' }],
      ['user:10', { name: 'cy' }],
      ['user:2', { name: 'bob' }],
    ])
    expect(sortEntries(b.entries()).length).toBe(6)
    expect(b.entries('zzz')).toEqual([])

    expect(b.has('user:1')).toBe(true)
    expect(b.has('user:')).toBe(false)
  })

  test('delete removes a key (has/get/keys/entries/size); deleting a missing key is fine; set revives', async () => {
    const peer = await createPeer()
    const b = peer.bucket('del')
    await b.set('a', 1)
    await b.set('b', 2)
    await b.delete('a')
    expect(b.has('a')).toBe(false)
    expect(b.get('a')).toBeUndefined()
    expect(b.size).toBe(1)
    expect(b.keys()).toEqual(['b'])
    expect(b.entries()).toEqual([['b', 2]])

    await b.delete('never-set')
    expect(b.size).toBe(1)

    await b.set('a', 'again')
    expect(b.get('a')).toBe('again')
    expect(b.size).toBe(2)
  })

  test('overwriting a key replaces its value and keeps size', async () => {
    const peer = await createPeer()
    const b = peer.bucket('overwrite')
    await b.set('k', { v: 1 })
    await b.set('k', [2])
    await b.set('k', Buffer.from('three'))
    expect(b.get('k').toString()).toBe('three')
    await b.set('k', 'four')
    expect(b.get('k')).toBe('four')
    expect(b.size).toBe(1)
  })
})

// ---------------------------------------------------------------------------------------------------

describe('promise and callback forms', () => {
  test('set/delete without a callback return promises that resolve once applied', async () => {
    const peer = await createPeer()
    const b = peer.bucket('forms')
    const p = b.set('k', 1)
    expect(p).toBeInstanceOf(Promise)
    await expect(p).resolves.toBeUndefined()
    expect(b.get('k')).toBe(1)
    const d = b.delete('k')
    expect(d).toBeInstanceOf(Promise)
    await expect(d).resolves.toBeUndefined()
    expect(b.has('k')).toBe(false)
    await expect(b.set('k2', 2, { ack: 'local' })).resolves.toBeUndefined()
    await expect(b.delete('k2', { ack: 'local' })).resolves.toBeUndefined()
    expect(b.has('k2')).toBe(false)
  })

  test('set/delete with a callback call it with no error once applied', async () => {
    const peer = await createPeer()
    const b = peer.bucket('forms-cb')
    expect(await callbackError((cb) => b.set('k', 'v', cb))).toBeFalsy()
    expect(b.get('k')).toBe('v')
    expect(await callbackError((cb) => b.set('k2', 'v2', { ack: 'local' }, cb))).toBeFalsy()
    expect(b.get('k2')).toBe('v2')
    expect(await callbackError((cb) => b.delete('k', cb))).toBeFalsy()
    expect(b.has('k')).toBe(false)
    expect(await callbackError((cb) => b.delete('k2', { ack: 'local' }, cb))).toBeFalsy()
    expect(b.has('k2')).toBe(false)
  })
})

// ---------------------------------------------------------------------------------------------------

describe("'change' events", () => {
  test('local writes: local true, origin = own id; deletes: deleted true, value undefined', async () => {
    const peer = await createPeer({ id: 'local-changes' })
    const b = peer.bucket('ch')
    const events = recordChanges(b)
    await b.set('k', { a: 1 })
    await b.set('bytes', Buffer.from([1, 2]))
    await b.delete('k')
    await waitFor(() => events.length >= 3, { message: '3 local change events' })
    expect(events[0]).toEqual({ key: 'k', value: { a: 1 }, deleted: false, local: true, origin: 'local-changes' })
    expect(events[1].key).toBe('bytes')
    expect(Buffer.isBuffer(events[1].value)).toBe(true)
    expect([...events[1].value]).toEqual([1, 2])
    expect(events[1]).toMatchObject({ deleted: false, local: true, origin: 'local-changes' })
    expect(events[2]).toEqual({ key: 'k', value: undefined, deleted: true, local: true, origin: 'local-changes' })
    expect('value' in events[2]).toBe(true)
  })

  test("remote writes: local false, origin = the writer's id, on every other peer", async () => {
    const [a, b, c] = await createCluster(3, 'rc')
    const ea = recordChanges(a.bucket('ch'))
    const eb = recordChanges(b.bucket('ch'))
    const ec = recordChanges(c.bucket('ch'))
    await a.bucket('ch').set('from-a', 'A')
    await waitFor(() => eb.length >= 1 && ec.length >= 1, { message: 'remote change events from rc1' })
    expect(eb[0]).toEqual({ key: 'from-a', value: 'A', deleted: false, local: false, origin: 'rc1' })
    expect(ec[0]).toEqual({ key: 'from-a', value: 'A', deleted: false, local: false, origin: 'rc1' })

    await c.bucket('ch').delete('from-a')
    await waitFor(() => ea.some((e) => e.deleted) && eb.some((e) => e.deleted), {
      message: 'remote delete events from rc3',
    })
    const expected = { key: 'from-a', value: undefined, deleted: true, local: false, origin: 'rc3' }
    expect(ea.find((e) => e.deleted)).toEqual(expected)
    expect(eb.find((e) => e.deleted)).toEqual(expected)
    expect(a.bucket('ch').has('from-a')).toBe(false)
    expect(b.bucket('ch').has('from-a')).toBe(false)

    // the writers saw their own changes as local
    await waitFor(() => ea.some((e) => e.local) && ec.some((e) => e.local), { message: 'local events' })
    expect(ea.find((e) => e.local)).toMatchObject({ key: 'from-a', local: true, origin: 'rc1', deleted: false })
    expect(ec.find((e) => e.local)).toMatchObject({ key: 'from-a', local: true, origin: 'rc3', deleted: true })
  })

  test('remote Buffers arrive as Buffers in get() and in change events', async () => {
    const [a, b] = await createCluster(2, 'rb')
    const eb = recordChanges(b.bucket('bin'))
    await a.bucket('bin').set('u8', new Uint8Array([7, 8, 9]))
    await waitFor(() => b.bucket('bin').has('u8'), { message: 'bytes to replicate' })
    const v = b.bucket('bin').get('u8')
    expect(Buffer.isBuffer(v)).toBe(true)
    expect([...v]).toEqual([7, 8, 9])
    await waitFor(() => eb.length >= 1, { message: 'change event' })
    expect(Buffer.isBuffer(eb[0].value)).toBe(true)
    expect([...eb[0].value]).toEqual([7, 8, 9])
  })

  test("a throwing 'change' listener still gets later events, replication goes on, and 'error' receives the thrown error", async () => {
    const [a, b] = await createCluster(2, 'throw')
    const ba = a.bucket('t')
    const bb = b.bucket('t')
    const boom = new Error('listener boom')
    const errors = []
    ba.on('error', (err) => errors.push(err))
    const keysSeen = []
    ba.on('change', (e) => {
      keysSeen.push(e.key)
      throw boom
    })

    await ba.set('local-1', 1)
    await waitFor(() => keysSeen.length >= 1, { message: 'the throwing listener to run' })
    await bb.set('remote-1', 2)
    await waitFor(() => ba.has('remote-1'), { message: 'remote write to reach the peer with the throwing listener' })
    await ba.set('local-2', 3)
    await waitFor(() => bb.has('local-2'), { message: 'replication out of the peer with the throwing listener' })
    await waitFor(() => keysSeen.length >= 3, { message: 'the throwing listener to see all three changes' })
    expect(keysSeen).toEqual(['local-1', 'remote-1', 'local-2'])
    await waitFor(() => errors.length >= 1, { message: "'error' to receive the thrown error" })
    expect(errors[0]).toBe(boom)
    // replication the other way still works too
    await bb.set('remote-2', 4)
    await waitFor(() => ba.get('remote-2') === 4, { message: 'replication into the peer after the throws' })
  })

  test("a throwing 'change' listener does not cost the other listeners their events", async () => {
    const [a, b] = await createCluster(2, 'throw2')
    const ba = a.bucket('t')
    const bb = b.bucket('t')
    const boom = new Error('listener boom')
    const errors = []
    ba.on('error', (err) => errors.push(err))
    let thrown = 0
    ba.on('change', () => {
      thrown++
      throw boom
    })
    const seen = recordChanges(ba) // registered after the throwing listener

    await ba.set('local-1', 1)
    await bb.set('remote-1', 2)
    await waitFor(() => ba.has('remote-1'), { message: 'remote write to arrive' })
    await ba.set('local-2', 3)
    await waitFor(() => thrown >= 3, { message: 'the throwing listener to see all three changes' })
    expect(errors.length).toBeGreaterThanOrEqual(1)
    expect(errors[0]).toBe(boom)
    // the second listener got every change, although the first one threw on each
    await waitFor(() => seen.length >= 3, { timeout: 2000, message: 'the second listener to get all 3 events' })
    expect(seen.map((e) => [e.key, e.local])).toEqual([
      ['local-1', true],
      ['remote-1', false],
      ['local-2', true],
    ])
  })

  test('removing the last change listener stops delivery; adding one resumes it', async () => {
    const peer = await createPeer()
    const b = peer.bucket('listeners')
    const events = []
    const fn = (e) => events.push(e.key)
    b.on('change', fn)
    await b.set('one', 1)
    await waitFor(() => events.length === 1, { message: 'first event' })
    b.off('change', fn)
    await b.set('two', 2)
    await sleep(100)
    expect(events).toEqual(['one'])
    b.on('change', fn)
    await b.set('three', 3)
    await waitFor(() => events.includes('three'), { message: 'event after re-subscribing' })
    expect(events).not.toContain('two')
  })
})

// ---------------------------------------------------------------------------------------------------

describe('replication between in-process peers', () => {
  test('writes and deletes replicate both ways; buckets are separate namespaces', async () => {
    const [a, b] = await createCluster(2, 'rep')
    await a.bucket('x').set('k', { from: 'a' })
    await b.bucket('y').set('k', { from: 'b' })
    await waitFor(() => b.bucket('x').has('k') && a.bucket('y').has('k'), { message: 'both writes to replicate' })
    expect(b.bucket('x').get('k')).toEqual({ from: 'a' })
    expect(a.bucket('y').get('k')).toEqual({ from: 'b' })
    expect(a.bucket('x').get('k')).toEqual({ from: 'a' })
    expect(b.bucket('y').get('k')).toEqual({ from: 'b' })

    await b.bucket('x').delete('k')
    await waitFor(() => !a.bucket('x').has('k'), { message: 'delete to replicate' })
    expect(a.bucket('y').has('k')).toBe(true)
  })

  test('a bucket opened later on another peer receives what was written before', async () => {
    const [a, b] = await createCluster(2, 'late')
    await a.bucket('late').set('k1', 'v1')
    await a.bucket('late').set('k2', 'v2')
    await sleep(200)
    const lb = b.bucket('late')
    await waitFor(() => lb.size === 2, { message: 'existing keys in a bucket opened later' })
    expect(lb.get('k1')).toBe('v1')
    expect(lb.get('k2')).toBe('v2')
  })

  test('concurrent writes to the same key converge to one value on both peers', async () => {
    const [a, b] = await createCluster(2, 'lww')
    const ba = a.bucket('same')
    const bb = b.bucket('same')
    const writes = []
    for (let i = 0; i < 50; i++) {
      writes.push(ba.set(`k${i}`, `a-${i}`), bb.set(`k${i}`, `b-${i}`))
    }
    await Promise.all(writes)
    await waitFor(
      () => {
        const ea = JSON.stringify(sortEntries(ba.entries()))
        return ba.size === 50 && ea === JSON.stringify(sortEntries(bb.entries()))
      },
      { timeout: 5000, message: 'both replicas to hold the same 50 entries' },
    )
    for (const [k, v] of ba.entries()) expect([`a-${k.slice(1)}`, `b-${k.slice(1)}`]).toContain(v)
  })
})

// ---------------------------------------------------------------------------------------------------

describe('bad arguments', () => {
  test('bad keys throw TypeError/RangeError naming the key; nothing is stored', async () => {
    const [a, b] = await createCluster(2, 'badkey')
    const bucket = a.bucket('bad')
    const events = recordChanges(bucket)
    const tooLong = 'k'.repeat(64 * 1024 + 1)
    const tooLongUtf8 = 'é'.repeat(32 * 1024 + 1) // 65538 bytes, but only 32769 UTF-16 units
    const typeCases = [
      ['empty string', ''],
      ['number', 42],
      ['undefined', undefined],
      ['null', null],
      ['object', { k: 1 }],
      ['symbol', Symbol('k')],
      ['Buffer', Buffer.from('k')],
    ]
    for (const [label, key] of typeCases) {
      for (const [op, call] of [
        ['set', () => bucket.set(key, 1)],
        ['get', () => bucket.get(key)],
        ['has', () => bucket.has(key)],
        ['delete', () => bucket.delete(key)],
      ]) {
        const err = await captureError(call)
        try {
          expectArgError(err, TypeError, /key/)
        } catch (e) {
          e.message = `${op}() with a ${label} key: ${describeError(err)}\n${e.message}`
          throw e
        }
      }
    }
    for (const [label, key] of [
      ['65537-byte ASCII', tooLong],
      ['65538-byte UTF-8', tooLongUtf8],
    ]) {
      for (const [op, call] of [
        ['set', () => bucket.set(key, 1)],
        ['get', () => bucket.get(key)],
        ['has', () => bucket.has(key)],
        ['delete', () => bucket.delete(key)],
      ]) {
        const err = await captureError(call)
        try {
          expectArgError(err, RangeError, /key/)
        } catch (e) {
          e.message = `${op}() with a ${label} key: ${describeError(err)}\n${e.message}`
          throw e
        }
      }
    }
    expect(bucket.size).toBe(0)
    expect(bucket.keys()).toEqual([])
    await sleep(150)
    expect(events).toEqual([])
    expect(b.bucket('bad').size).toBe(0)
  })

  test('keys that are not well-formed UTF-16 (lone surrogates) are refused or kept distinct, never merged', async () => {
    const peer = await createPeer()
    const bucket = peer.bucket('surrogates')
    const high = 'a\uD800'
    const low = 'a\uDFFF'
    const replacement = 'a\uFFFD'
    const err = await captureError(() => bucket.set(high, 'high'))
    if (err !== NO_ERROR) {
      expectArgError(err, err instanceof RangeError ? RangeError : TypeError, /key/)
      expect(bucket.size).toBe(0)
      return
    }
    await bucket.set(low, 'low')
    await bucket.set(replacement, 'replacement')
    expect(bucket.get(high)).toBe('high')
    expect(bucket.get(low)).toBe('low')
    expect(bucket.get(replacement)).toBe('replacement')
    expect(bucket.size).toBe(3)
    expect(sortKeys(bucket.keys())).toEqual(sortKeys([high, low, replacement]))
  })

  test('bad values (undefined, function, symbol, circular object, BigInt) throw TypeError naming the value; nothing is stored', async () => {
    const [a, b] = await createCluster(2, 'badval')
    const bucket = a.bucket('bad')
    const events = recordChanges(bucket)
    await bucket.set('existing', 'keep me')
    await waitFor(() => events.length === 1, { message: 'event for the good write' })
    const circular = { a: 1 }
    circular.self = circular
    const deepCircular = { list: [{}] }
    deepCircular.list[0].back = deepCircular
    const cases = [
      ['undefined', undefined],
      ['function', () => 1],
      ['symbol', Symbol('v')],
      ['circular object', circular],
      ['deeply circular object', deepCircular],
      ['BigInt', 10n],
      ['object holding a BigInt', { n: 10n }],
    ]
    for (const [label, value] of cases) {
      for (const key of ['new-key', 'existing']) {
        const err = await captureError(() => bucket.set(key, value))
        try {
          expectArgError(err, TypeError, /value/)
        } catch (e) {
          e.message = `set('${key}', ${label}): ${describeError(err)}\n${e.message}`
          throw e
        }
        // the callback form refuses the same way (thrown or passed to the callback), storing nothing
        const cbErr = await captureError(() => callbackError((cb) => bucket.set(key, value, cb)).then((e) => { if (e) throw e }))
        try {
          expectArgError(cbErr, TypeError, /value/)
        } catch (e) {
          e.message = `set('${key}', ${label}, cb): ${describeError(cbErr)}\n${e.message}`
          throw e
        }
      }
    }
    expect(bucket.has('new-key')).toBe(false)
    expect(bucket.get('existing')).toBe('keep me')
    expect(bucket.size).toBe(1)
    await sleep(150)
    expect(events.length).toBe(1)
    await waitFor(() => b.bucket('bad').has('existing'), { message: 'the good write to replicate' })
    expect(b.bucket('bad').has('new-key')).toBe(false)
    expect(b.bucket('bad').get('existing')).toBe('keep me')
  })

  test('bad bucket names throw TypeError/RangeError naming the name', async () => {
    const peer = await createPeer()
    const cases = [
      ['empty', '', TypeError],
      ['number', 5, TypeError],
      ['undefined', undefined, TypeError],
      ['null', null, TypeError],
      ['256 ASCII bytes', 'n'.repeat(256), RangeError],
      ['256 UTF-8 bytes in 128 chars', 'é'.repeat(128), RangeError],
    ]
    for (const [label, name, Ctor] of cases) {
      const err = await captureError(() => peer.bucket(name))
      try {
        expectArgError(err, Ctor, /name/)
      } catch (e) {
        e.message = `bucket(${label}): ${describeError(err)}\n${e.message}`
        throw e
      }
    }
    expect(peer.stats().buckets).toBe(0)
  })

  test('bad listen addresses and seed addresses throw TypeError/RangeError naming the option', async () => {
    const cases = [
      ['not an address', 'nonsense'],
      ['missing host', ':7070'],
      ['port too large', '127.0.0.1:70000'],
      ['non-numeric port', '127.0.0.1:http'],
      ['negative port number', -1],
      ['port number too large', 65536],
      ['fractional port', 1.5],
      ['boolean', true],
      ['object', { host: '127.0.0.1', port: 0 }],
    ]
    for (const [label, listen] of cases) {
      let peer
      const err = await captureError(() => {
        peer = new Peer({ listen })
        return peer.ready()
      })
      if (peer) await peer.close().catch(() => {})
      try {
        expect(describeError(err)).not.toBe('no error')
        expect(err).toBeInstanceOf(Error)
        expect([TypeError, RangeError].some((C) => err instanceof C)).toBe(true)
        expect(err.message).toMatch(/listen/)
      } catch (e) {
        e.message = `listen: ${label}: ${describeError(err)}\n${e.message}`
        throw e
      }
    }
    for (const [label, peers, Ctor] of [
      ['a string', '127.0.0.1:7070', TypeError],
      ['bad entry', ['nonsense'], RangeError],
      ['number entry out of range', [70000], RangeError],
      ['object entry', [{}], TypeError],
    ]) {
      let peer
      const err = await captureError(() => {
        peer = new Peer({ peers })
        return peer.ready()
      })
      if (peer) await peer.close().catch(() => {})
      try {
        expectArgError(err, Ctor, /peers/)
      } catch (e) {
        e.message = `peers: ${label}: ${describeError(err)}\n${e.message}`
        throw e
      }
    }
  })

  test('options of the wrong type throw TypeError naming the option', async () => {
    for (const [label, make, re] of [
      ['Peer(string)', () => new Peer('127.0.0.1:0'), /options/],
      ['Peer(null)', () => new Peer(null), /options/],
      ['Peer(number)', () => new Peer(5), /options/],
      ['id number', () => new Peer({ id: 5 }), /id/],
      ['id empty', () => new Peer({ id: '' }), /id/],
    ]) {
      let made
      const err = await captureError(() => {
        made = make()
        return made.ready()
      })
      if (made) await made.close().catch(() => {})
      try {
        expectArgError(err, TypeError, re)
      } catch (e) {
        e.message = `${label}: ${describeError(err)}\n${e.message}`
        throw e
      }
    }

    const peer = await createPeer()
    const bucket = peer.bucket('opts')
    const cases = [
      ['bucket options string', () => peer.bucket('x', 'ttl'), /options/],
      ['bucket options number', () => peer.bucket('x', 5), /options/],
      ['set options string', () => bucket.set('k', 1, 'local'), /options/],
      ['set options number', () => bucket.set('k', 1, 5), /options/],
      ['delete options string', () => bucket.delete('k', 'local'), /options/],
      ['set callback not a function', () => bucket.set('k', 1, {}, 'cb'), /callback/],
      ['delete callback not a function', () => bucket.delete('k', {}, 42), /callback/],
      ['keys prefix number', () => bucket.keys(5), /prefix/],
      ['entries prefix object', () => bucket.entries({}), /prefix/],
    ]
    for (const [label, call, re] of cases) {
      const err = await captureError(call)
      try {
        expectArgError(err, TypeError, re)
      } catch (e) {
        e.message = `${label}: ${describeError(err)}\n${e.message}`
        throw e
      }
    }
    expect(bucket.has('k')).toBe(false)
    expect(bucket.size).toBe(0)
  })

  test("ack 'bogus' (and a bad timeout) throw RangeError naming the option; nothing is stored", async () => {
    const peer = await createPeer()
    const bucket = peer.bucket('ack')
    await bucket.set('kept', 1)
    for (const [label, call, re] of [
      ["set ack 'bogus'", () => bucket.set('k', 1, { ack: 'bogus' }), /ack/],
      ["set ack 'bogus' with cb", () => bucket.set('k', 1, { ack: 'bogus' }, () => {}), /ack/],
      ["delete ack 'bogus'", () => bucket.delete('kept', { ack: 'bogus' }), /ack/],
      ['set ack number', () => bucket.set('k', 1, { ack: 1 }), /ack/],
      ['set timeout negative', () => bucket.set('k', 1, { timeout: -5 }), /timeout/],
      ['set timeout NaN', () => bucket.set('k', 1, { timeout: NaN }), /timeout/],
    ]) {
      const err = await captureError(call)
      try {
        expectArgError(err, RangeError, re)
      } catch (e) {
        e.message = `${label}: ${describeError(err)}\n${e.message}`
        throw e
      }
    }
    expect(bucket.has('k')).toBe(false)
    expect(bucket.get('kept')).toBe(1)
    expect(bucket.size).toBe(1)
  })

  test('an ack timeout beyond the deadline arithmetic throws RangeError naming the bound; one within it waits', async () => {
    const peer = await createPeer({ id: 'patient' }) // alone: 'one' cannot be met
    const bucket = peer.bucket('timeout')
    for (const [label, timeout] of [['Number.MAX_VALUE', Number.MAX_VALUE], ['2^64 ms', 2 ** 64], ['MAX_SAFE_INTEGER + 2', Number.MAX_SAFE_INTEGER + 2]]) {
      for (const [form, call] of [
        ['set', () => bucket.set('k', 1, { ack: 'one', timeout })],
        ['delete', () => bucket.delete('k', { ack: 'one', timeout })],
      ]) {
        const err = await captureError(call)
        try {
          expectArgError(err, RangeError, /options\.timeout must be at most 9007199254740991/)
        } catch (e) {
          e.message = `${form} timeout ${label}: ${describeError(err)}\n${e.message}`
          throw e
        }
      }
    }
    expect(bucket.has('k')).toBe(false)
    // The bound itself is a deadline like any other: the write waits for its ack, then close() ends it.
    const waiting = captureError(() => bucket.set('k', 1, { ack: 'one', timeout: Number.MAX_SAFE_INTEGER }))
    const early = await Promise.race([waiting, sleep(300).then(() => 'still waiting')])
    expect(early).toBe('still waiting')
    await peer.close()
    expectCode(await waiting, 'ECLOSED')
  })

  test('typed arrays other than Uint8Array, DataViews and ArrayBuffers throw TypeError naming the kind; nothing is stored', async () => {
    const peer = await createPeer()
    const bucket = peer.bucket('typed')
    const bytes = new Uint8Array([1, 2, 3, 4])
    const cases = [
      ['Int16Array', new Int16Array([1, -2])],
      ['Float64Array', new Float64Array([0.5])],
      ['Uint8ClampedArray', new Uint8ClampedArray([1, 2])],
      ['BigInt64Array', new BigInt64Array([1n])],
      ['DataView', new DataView(bytes.buffer)],
      ['ArrayBuffer', bytes.buffer],
      ['SharedArrayBuffer', new SharedArrayBuffer(4)],
    ]
    for (const [label, value] of cases) {
      const err = await captureError(() => bucket.set('k', value))
      try {
        expectArgError(err, TypeError, new RegExp(`value is an? ${label}`))
      } catch (e) {
        e.message = `set(${label}): ${describeError(err)}\n${e.message}`
        throw e
      }
    }
    expect(bucket.has('k')).toBe(false)
    expect(bucket.size).toBe(0)
  })

  test('values JSON cannot carry are stored as JSON.stringify writes them (NaN as null, a Map as {}, a nested typed array as an object)', async () => {
    const peer = await createPeer()
    const bucket = peer.bucket('json')
    await bucket.set('nan', NaN)
    await bucket.set('map', new Map([['a', 1]]))
    await bucket.set('date', { at: new Date(0) })
    await bucket.set('holes', { a: undefined, b: [undefined, Infinity] })
    expect(bucket.get('nan')).toBe(null)
    expect(bucket.get('map')).toEqual({})
    expect(bucket.get('date')).toEqual({ at: '1970-01-01T00:00:00.000Z' })
    expect(bucket.get('holes')).toEqual({ b: [null, null] })
    await bucket.set('nested', { samples: new Float32Array([1.5]) })
    expect(bucket.get('nested')).toEqual({ samples: { 0: 1.5 } })
  })
})

// ---------------------------------------------------------------------------------------------------

describe('ack levels, fetch() and maxClockSkew', () => {
  test("set/delete with ack 'one' / 'majority' / 'all' settle once other peers have applied the write", async () => {
    const [a, b, c] = await createCluster(3, 'ack')
    const ba = a.bucket('acks')
    await ba.set('one', 1, { ack: 'one' })
    expect([b, c].filter((p) => p.bucket('acks').get('one') === 1).length).toBeGreaterThanOrEqual(1)
    await ba.set('majority', 2, { ack: 'majority' })
    expect([b, c].filter((p) => p.bucket('acks').get('majority') === 2).length).toBeGreaterThanOrEqual(1)
    await ba.set('all', { v: 3 }, { ack: 'all', timeout: 3000 })
    expect(b.bucket('acks').get('all')).toEqual({ v: 3 })
    expect(c.bucket('acks').get('all')).toEqual({ v: 3 })
    expect(await callbackError((cb) => ba.set('cb', Buffer.from('x'), { ack: 'all' }, cb))).toBeFalsy()
    expect(b.bucket('acks').get('cb').toString()).toBe('x')
    expect(c.bucket('acks').get('cb').toString()).toBe('x')
    await ba.delete('all', { ack: 'all' })
    expect(b.bucket('acks').has('all')).toBe(false)
    expect(c.bucket('acks').has('all')).toBe(false)
    expect(await callbackError((cb) => ba.delete('cb', { ack: 'one' }, cb))).toBeFalsy()
    expect([b, c].some((p) => !p.bucket('acks').has('cb'))).toBe(true)
  })

  test("an ack that cannot be met fails with EACKTIMEOUT and acked: [] past the timeout; the write stays applied", async () => {
    const peer = await createPeer({ id: 'lonely' })
    const bucket = peer.bucket('acks')
    const t0 = Date.now()
    const err = await captureError(() => bucket.set('k', 'v', { ack: 'one', timeout: 300 }))
    expectCode(err, 'EACKTIMEOUT')
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250)
    expect(err.acked).toEqual([])
    expect(bucket.get('k')).toBe('v')
    const cbErr = await callbackError((cb) => bucket.delete('k', { ack: 'one', timeout: 200 }, cb))
    expectCode(cbErr, 'EACKTIMEOUT')
    expect(cbErr.acked).toEqual([])
    expect(bucket.has('k')).toBe(false)
  })

  test('acks pending at close() fail with ECLOSED', async () => {
    const peer = await createPeer({ id: 'closing-acks' })
    const bucket = peer.bucket('acks')
    const pending = bucket.set('k', 1, { ack: 'one', timeout: 10_000 })
    const cbPending = callbackError((cb) => bucket.set('k2', 2, { ack: 'one', timeout: 10_000 }, cb), 5000)
    await peer.close()
    expectCode(await withTimeout(captureError(() => pending), 2000, 'pending ack after close'), 'ECLOSED')
    expectCode(await cbPending, 'ECLOSED')
  })

  test('fetch({ from, prefix }) resolves with how many entries arrived; unknown peers and bad options fail', async () => {
    const [a, b] = await createCluster(2, 'fetch')
    const bb = b.bucket('f')
    await bb.set('p:1', 1)
    await bb.set('p:2', { two: 2 })
    await bb.set('q:1', 3)
    const fa = a.bucket('f')
    const n = await fetchWithin(fa.fetch({ from: 'fetch2', prefix: 'p:' }))
    expect(n).toBe(2)
    expect(fa.get('p:1')).toBe(1)
    expect(fa.get('p:2')).toEqual({ two: 2 })
    expect(await fetchWithin(fa.fetch({ from: 'fetch2' }))).toBe(3)
    expect(fa.get('q:1')).toBe(3)

    const unknown = await captureError(() => fa.fetch({ from: 'nobody' }))
    expect(unknown).toBeInstanceOf(Error)
    expect(unknown.code).toBeDefined()
    for (const [label, call, re] of [
      ['no options', () => fa.fetch(), /options/],
      ['from missing', () => fa.fetch({ prefix: 'p:' }), /from/],
      ['prefix number', () => fa.fetch({ from: 'fetch2', prefix: 5 }), /prefix/],
    ]) {
      const err = await captureError(call)
      try {
        expectArgError(err, TypeError, re)
      } catch (e) {
        e.message = `fetch ${label}: ${describeError(err)}\n${e.message}`
        throw e
      }
    }
  })

  test('rememberCollected bounds how long the keys of collected tombstones are remembered; a bad one throws RangeError naming it', async () => {
    const peer = await createPeer({ tombstoneMinAge: 200, rememberCollected: 1500 })
    const b = peer.bucket('remember')
    for (let i = 0; i < 10; i++) await b.set(`k${i}`, i)
    for (let i = 0; i < 10; i++) await b.delete(`k${i}`)
    await waitFor(() => peer.stats().collectedRemembered === 10, { timeout: 8000, message: '10 collected keys remembered' })
    expect(peer.stats().tombstones).toBe(0)
    await waitFor(() => peer.stats().collectedRemembered === 0, { timeout: 8000, message: 'forgotten after rememberCollected' })
    for (const bad of [-1, 0, NaN, 'long']) {
      let made
      const err = await captureError(() => {
        made = new Peer({ rememberCollected: bad })
        return made.ready()
      })
      if (made) await made.close().catch(() => {})
      expect(err).toBeInstanceOf(RangeError)
      expect(err.message).toMatch(/rememberCollected/)
    }
  })

  test('maxClockSkew is accepted; a bad one throws RangeError naming it', async () => {
    const peer = await createPeer({ maxClockSkew: 1000 })
    expect(peer.address).toMatch(/^127\.0\.0\.1:\d+$/)
    for (const bad of [-1, 0, NaN, Infinity, 'soon']) {
      let made
      const err = await captureError(() => {
        made = new Peer({ maxClockSkew: bad })
        return made.ready()
      })
      if (made) await made.close().catch(() => {})
      expect(err).toBeInstanceOf(Error)
      expect([TypeError, RangeError].some((C) => err instanceof C)).toBe(true)
      expect(err.message).toMatch(/maxClockSkew/)
    }
  })
})

function fetchWithin(promise) {
  return withTimeout(promise, 5000, 'fetch()')
}

// ---------------------------------------------------------------------------------------------------

describe('close()', () => {
  test('after close(): sync calls throw ECLOSED; set/delete reject or call back with ECLOSED', async () => {
    const peer = await createPeer()
    const bucket = peer.bucket('closing')
    await bucket.set('k', 1)
    const closing = peer.close()
    expect(closing).toBeInstanceOf(Promise)
    await withTimeout(closing, 3000, 'close()')

    const sync = [
      ['get', () => bucket.get('k')],
      ['has', () => bucket.has('k')],
      ['keys', () => bucket.keys()],
      ['entries', () => bucket.entries('')],
      ['size', () => bucket.size],
      ['bucket (existing name)', () => peer.bucket('closing')],
      ['bucket (new name)', () => peer.bucket('another')],
      ['peers', () => peer.peers()],
      ['stats', () => peer.stats()],
    ]
    for (const [label, call] of sync) {
      let err
      try {
        call()
      } catch (e) {
        err = e
      }
      try {
        expect(err).toBeDefined()
        expectCode(err, 'ECLOSED')
      } catch (e) {
        e.message = `${label}: threw ${err && describeError(err)}\n${e.message}`
        throw e
      }
    }

    const setP = bucket.set('k', 2)
    expect(setP).toBeInstanceOf(Promise)
    const setErr = await captureError(() => setP)
    expectCode(setErr, 'ECLOSED')
    expectCode(await captureError(() => bucket.delete('k')), 'ECLOSED')
    expectCode(await callbackError((cb) => bucket.set('k', 3, cb)), 'ECLOSED')
    expectCode(await callbackError((cb) => bucket.delete('k', cb)), 'ECLOSED')

    // close() again is harmless
    await expect(withTimeout(peer.close(), 3000, 'second close()')).resolves.toBeUndefined()
  })

  test('close() frees the port: a new Peer can listen on the same address', async () => {
    const a = await createPeer()
    const address = a.address
    await a.close()
    const b = await createPeer({ listen: address })
    expect(b.address).toBe(address)
  })

  test("closing a peer fires 'peer-down' on the other side promptly and it stops being connected", async () => {
    const [a, b] = await createCluster(2, 'leave')
    const down = []
    a.on('peer-down', (e) => down.push({ ...e, at: Date.now() }))
    const t0 = Date.now()
    const bAddress = b.address
    await b.close()
    await waitFor(() => down.length >= 1, { timeout: 5000, message: "'peer-down' on the remaining peer" })
    expect(down[0].id).toBe('leave2')
    expect(down[0].address).toBe(bAddress)
    expect(down[0].at - t0).toBeLessThan(5000)
    expect(isConnected(a, 'leave2')).toBe(false)
  })
})

// ---------------------------------------------------------------------------------------------------

describe('errors and EADDRINUSE', () => {
  test("ready() rejects with code 'EADDRINUSE' when the port is taken by a net.Server", async () => {
    const server = net.createServer()
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    try {
      const port = server.address().port
      const peer = new Peer({ listen: `127.0.0.1:${port}` })
      const ready = peer.ready()
      expect(ready).toBeInstanceOf(Promise)
      const err = await captureError(() => ready)
      await peer.close().catch(() => {})
      expectCode(err, 'EADDRINUSE')
      expect(err.message).toMatch(String(port))
    } finally {
      await new Promise((resolve) => server.close(resolve))
    }
  })

  test("ready() rejects with code 'EADDRINUSE' when the port is taken by another Peer", async () => {
    const a = await createPeer()
    const b = new Peer({ listen: a.address })
    const err = await captureError(() => b.ready())
    await b.close().catch(() => {})
    expectCode(err, 'EADDRINUSE')
    // the first peer still works
    await a.bucket('x').set('k', 1)
    expect(a.bucket('x').get('k')).toBe(1)
  })

  test('errors are instanceof Error in the test realm', async () => {
    const peer = await createPeer()
    const bucket = peer.bucket('realm')
    const errs = [
      await captureError(() => bucket.set('', 1)),
      await captureError(() => bucket.set('k', undefined)),
      await captureError(() => bucket.set('k', 1, { ack: 'bogus' })),
      await captureError(() => bucket.touch('k', -1)),
      await captureError(() => bucket.fetch({ from: 'x' })),
      await captureError(() => peer.bucket('')),
    ]
    await peer.close()
    errs.push(await captureError(() => bucket.get('k')))
    errs.push(await captureError(() => bucket.set('k', 1)))
    for (const err of errs) {
      expect(err).not.toBe(NO_ERROR)
      expect(err).toBeInstanceOf(Error)
      expect(Object.prototype.toString.call(err)).toBe('[object Error]')
      expect(typeof err.stack).toBe('string')
    }
  })
})

// ---------------------------------------------------------------------------------------------------

describe('peers() and stats()', () => {
  test("peers() lists the others as { id, address, state: 'connected' } with their listen addresses", async () => {
    const a = await createPeer({ id: 'shape-a' })
    const upA = []
    a.on('peer-up', (e) => upA.push(e))
    expect(a.peers()).toEqual([])
    const b = await createPeer({ id: 'shape-b', peers: [a.address] })
    const upB = []
    b.on('peer-up', (e) => upB.push(e))
    await waitConnected([a, b])
    expect(a.peers()).toEqual([{ id: 'shape-b', address: b.address, state: 'connected' }])
    expect(b.peers()).toEqual([{ id: 'shape-a', address: a.address, state: 'connected' }])

    await waitFor(() => upA.length >= 1 && upB.length >= 1, { message: "'peer-up' on both" })
    expect(upA[0]).toEqual({ id: 'shape-b', address: b.address })
    expect(upB[0]).toEqual({ id: 'shape-a', address: a.address })

    // a third peer seeded only with b is learned by a too
    const c = await createPeer({ id: 'shape-c', peers: [b.address] })
    await waitConnected([a, b, c])
    for (const p of [a, b, c]) {
      const list = p.peers()
      expect(list).toHaveLength(2)
      for (const info of list) {
        expect(Object.keys(info).sort()).toEqual(['address', 'id', 'state'])
        expect(['connected', 'disconnected']).toContain(info.state)
      }
    }
    expect(a.peers().find((p) => p.id === 'shape-c')).toEqual({ id: 'shape-c', address: c.address, state: 'connected' })
  })

  test('stats() has the documented shape and its counts change with use', async () => {
    const [a, b] = await createCluster(2, 'stats')
    const s0a = a.stats()
    const s0b = b.stats()
    for (const [s, id] of [
      [s0a, 'stats1'],
      [s0b, 'stats2'],
    ]) {
      expect(s).toEqual(
        expect.objectContaining({
          id,
          buckets: expect.any(Number),
          keys: expect.any(Number),
          peers: expect.any(Number),
          opsApplied: expect.any(Number),
          bytesSent: expect.any(Number),
          bytesReceived: expect.any(Number),
        }),
      )
    }
    expect(s0a.peers).toBe(1)
    expect(s0a.buckets).toBe(0)
    expect(s0a.keys).toBe(0)

    const ba = a.bucket('s1')
    a.bucket('s2')
    for (let i = 0; i < 10; i++) await ba.set(`k${i}`, { i, pad: 'x'.repeat(100) })
    await ba.delete('k0')
    await waitFor(() => b.bucket('s1').size === 9, { message: 'writes to replicate' })

    const s1a = a.stats()
    const s1b = b.stats()
    expect(s1a.buckets).toBe(2)
    expect(s1a.keys).toBe(9)
    expect(s1b.keys).toBe(9)
    expect(s1b.buckets).toBeGreaterThanOrEqual(1)
    expect(s1a.bytesSent).toBeGreaterThan(s0a.bytesSent)
    expect(s1b.bytesReceived).toBeGreaterThan(s0b.bytesReceived)
    expect(s1b.opsApplied).toBeGreaterThan(s0b.opsApplied)
    expect(s1b.opsApplied).toBeGreaterThanOrEqual(9)
    expect(s1a.opsApplied).toBeGreaterThanOrEqual(s0a.opsApplied)
    for (const k of ['bytesSent', 'bytesReceived']) {
      expect(Number.isInteger(s1a[k])).toBe(true)
      expect(s1a[k]).toBeGreaterThanOrEqual(0)
    }
  })

  test('unref() and ref() return the peer', async () => {
    const peer = await createPeer()
    expect(peer.unref()).toBe(peer)
    expect(peer.ref()).toBe(peer)
  })
})
