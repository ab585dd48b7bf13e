'use strict'
// The public API of peer-buckets (README: API reference), one concern per api-*.test.js suite.
// Values in the jest process: what set() stores and get(), keys(), entries(), size and delete() give
// back, in the promise and the callback forms.

const { createPeer, createCluster, closeAll } = require('./helpers/peers')
const { waitFor } = require('./helpers/wait')
const { callbackError } = require('./helpers/errors')
const { sortKeys, sortEntries } = require('./helpers/expect')

afterEach(async () => {
  await closeAll()
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
