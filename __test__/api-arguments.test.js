'use strict'
// The public API of peer-buckets (README: API reference), one concern per api-*.test.js suite.
// Bad arguments: every one throws a TypeError or RangeError naming it, and stores nothing.

const { Peer } = require('..')
const { createPeer, createCluster, closeAll } = require('./helpers/peers')
const { waitFor, sleep } = require('./helpers/wait')
const { captureError, callbackError, describeError, NO_ERROR } = require('./helpers/errors')
const { recordChanges, expectArgError, expectCode, sortKeys } = require('./helpers/expect')

afterEach(async () => {
  await closeAll()
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
