'use strict'
// The public API of peer-buckets (README: API reference), one concern per api-*.test.js suite.
// 'change' events and replication between Peers in the jest process.

const { createPeer, createCluster, closeAll } = require('./helpers/peers')
const { waitFor, sleep } = require('./helpers/wait')
const { recordChanges, sortEntries } = require('./helpers/expect')

afterEach(async () => {
  await closeAll()
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
