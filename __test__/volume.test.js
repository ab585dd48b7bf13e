'use strict'
// Replication of large values and of many large writes at once (in-process peers): whatever the
// volume, replicas catch up and links stay up.

const { createPeer, waitConnected, closeAll } = require('./helpers/peers')
const { waitFor } = require('./helpers/wait')
const { captureError, describeError, NO_ERROR } = require('./helpers/errors')

jest.setTimeout(30_000)

afterEach(async () => {
  await closeAll()
})

/** Records 'peer-down' events on each peer. */
function recordDowns(peers) {
  const downs = []
  for (const p of peers) p.on('peer-down', (e) => downs.push(`${p.id} saw ${e.id} go down`))
  return downs
}

function valueFor(i, size) {
  const buf = Buffer.alloc(size, i & 0xff)
  buf.writeUInt32BE(i, 0)
  return buf
}

test('a peer joining late catches up on a bucket holding 20 MB of 100 KiB values', async () => {
  const a = await createPeer({ id: 'vol-a' })
  const N = 200
  const size = 100 * 1024
  await Promise.all(Array.from({ length: N }, (_, i) => a.bucket('big').set(`k${i}`, valueFor(i, size))))
  expect(a.bucket('big').size).toBe(N)

  const b = await createPeer({ id: 'vol-b', peers: [a.address] })
  const downs = recordDowns([a, b])
  const bb = b.bucket('big')
  await waitFor(() => bb.size === N, { timeout: 6000, interval: 50, message: `the late joiner to hold all ${N} values (it has ${bb.size})` })
  for (const i of [0, 1, N / 2, N - 1]) expect(bb.get(`k${i}`).equals(valueFor(i, size))).toBe(true)
  // and the link is healthy: a new write gets through, nobody went down
  await a.bucket('big').set('after', 'small')
  await waitFor(() => bb.get('after') === 'small', { timeout: 3000, message: 'a write after the catch-up' })
  expect(downs).toEqual([])
})

test('a live burst of 30 MB of 100 KiB values replicates without the link going down', async () => {
  const a = await createPeer({ id: 'burst-a' })
  const b = await createPeer({ id: 'burst-b', peers: [a.address] })
  await waitConnected([a, b])
  const downs = recordDowns([a, b])
  const N = 300
  const size = 100 * 1024
  await Promise.all(Array.from({ length: N }, (_, i) => a.bucket('burst').set(`k${i}`, valueFor(i, size))))
  const bb = b.bucket('burst')
  await waitFor(() => bb.size === N, { timeout: 8000, interval: 50, message: `all ${N} values to replicate (got ${bb.size})` })
  expect(bb.get(`k${N - 1}`).equals(valueFor(N - 1, size))).toBe(true)
  expect(downs).toEqual([])
})

test('a value larger than 16 MiB is either refused (nothing stored) or replicated; either way replication goes on', async () => {
  const a = await createPeer({ id: 'huge-a' })
  const b = await createPeer({ id: 'huge-b', peers: [a.address] })
  await waitConnected([a, b])
  const downs = recordDowns([a, b])
  const ba = a.bucket('huge')
  const bb = b.bucket('huge')
  const huge = Buffer.alloc(17 * 1024 * 1024, 0x5a)

  const err = await captureError(() => ba.set('huge', huge))
  if (err !== NO_ERROR) {
    // refused: a RangeError/TypeError naming the value, and nothing stored anywhere
    expect(err).toBeInstanceOf(Error)
    expect([TypeError, RangeError].some((C) => err instanceof C)).toBe(true)
    expect(err.message).toMatch(/value/)
    expect(ba.has('huge')).toBe(false)
  } else {
    await waitFor(() => bb.has('huge'), { timeout: 6000, message: `the 17 MiB value to replicate (set() accepted it: ${describeError(err)})` })
    expect(bb.get('huge').equals(huge)).toBe(true)
  }
  await ba.set('after', 1)
  await bb.set('after-b', 2)
  await waitFor(() => bb.get('after') === 1 && ba.get('after-b') === 2, {
    timeout: 5000,
    message: 'small writes to replicate both ways after the 17 MiB write',
  })
  expect(downs).toEqual([])
})
