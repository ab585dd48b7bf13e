'use strict'
// Peers in real child processes (fixtures/peer-child.js), talking over loopback TCP.

const net = require('node:net')
const { randomBytes } = require('node:crypto')
const { spawnPeer, killAll } = require('./helpers/spawn-peer')
const { decodeValue } = require('./helpers/values')
const { waitFor, sleep } = require('./helpers/wait')

jest.setTimeout(30_000)

/** Waits until every process in `procs` reports the same dump digest; resolves with the dumps. */
async function converge(procs, { timeout = 10_000, until = () => true, message = 'replicas to converge' } = {}) {
  return waitFor(
    async () => {
      const dumps = await Promise.all(procs.map((p) => p.dump()))
      const same = dumps.every((d) => d.digest === dumps[0].digest)
      return same && until(dumps[0]) ? dumps : false
    },
    { timeout, interval: 100, message: `${message} (${procs.map((p) => p.id).join(', ')})` },
  )
}

/** The decoded entries of a dump whose keys start with prefix, as an object. */
function subset(dump, prefix) {
  const out = {}
  for (const [k, v] of dump.entries) if (k.startsWith(prefix)) out[k] = decodeValue(v)
  return out
}

function connectedIds(peers) {
  return peers
    .filter((p) => p.state === 'connected')
    .map((p) => p.id)
    .sort()
}

// ---------------------------------------------------------------------------------------------------

describe('a cluster of three processes, then a failure and a late joiner', () => {
  let n1, n2, n3
  const survivors = () => [n1, n2]

  beforeAll(async () => {
    n1 = await spawnPeer({ id: 'n1' })
    n2 = await spawnPeer({ id: 'n2', seeds: [n1.address] })
    n3 = await spawnPeer({ id: 'n3', seeds: [n2.address] }) // knows only n2
  })

  afterAll(async () => {
    await killAll()
  })

  test('membership: the third process, seeded only with the second, and the first learn each other', async () => {
    const all = [n1, n2, n3]
    await waitFor(
      async () => {
        const lists = await Promise.all(all.map((p) => p.peers()))
        return lists.every((l, i) => connectedIds(l).length === 2 && !connectedIds(l).includes(all[i].id))
      },
      { timeout: 8000, interval: 100, message: 'every process to see 2 connected peers' },
    )
    const addresses = { n1: n1.address, n2: n2.address, n3: n3.address }
    for (const p of all) {
      const list = await p.peers()
      expect(list).toHaveLength(2)
      for (const info of list) {
        expect(info.state).toBe('connected')
        expect(info.address).toBe(addresses[info.id])
      }
      expect(connectedIds(list)).toEqual(['n1', 'n2', 'n3'].filter((id) => id !== p.id))
    }
    // 'peer-up' fired for the peer learned indirectly, on both ends
    await n1.waitForEvent((e) => e.name === 'peer-up' && e.data.id === 'n3', 3000, "n1 'peer-up' for n3")
    await n3.waitForEvent((e) => e.name === 'peer-up' && e.data.id === 'n1', 3000, "n3 'peer-up' for n1")
    const up = n1.events.find((e) => e.name === 'peer-up' && e.data.id === 'n3')
    expect(up.data).toEqual({ id: 'n3', address: n3.address })
    const stats = await n1.stats()
    expect(stats).toMatchObject({ id: 'n1', peers: 2 })
  })

  test('concurrent writes to distinct keys from all three converge to identical contents', async () => {
    const writers = [n1, n2, n3]
    const expected = {}
    await Promise.all(
      writers.map((p) => {
        const entries = []
        for (let i = 0; i < 200; i++) {
          const key = `distinct:${p.id}:${i}`
          const value = { by: p.id, i, tags: [p.id, i % 7] }
          entries.push([key, value])
          expected[key] = value
        }
        return p.setMany(entries, 10_000)
      }),
    )
    const dumps = await converge(writers, {
      until: (d) => Object.keys(subset(d, 'distinct:')).length === 600,
      message: 'the 600 distinct keys to reach every process',
    })
    expect(dumps[1].entries).toEqual(dumps[0].entries)
    expect(dumps[2].entries).toEqual(dumps[0].entries)
    expect(subset(dumps[0], 'distinct:')).toEqual(expected)
  })

  test('concurrent writes and deletes to the same keys converge to identical contents (one winner per key)', async () => {
    const writers = [n1, n2, n3]
    const N = 100
    // three rounds of all three writing the same keys at once; n3 deletes every third key in round 2
    for (let round = 0; round < 3; round++) {
      if (round > 0) await sleep(20) // rounds are ordered in wall-clock time (one machine, one clock)
      await Promise.all(
        writers.map(async (p) => {
          if (round === 1 && p === n3) {
            const keys = []
            for (let i = 0; i < N; i += 3) keys.push(`same:${i}`)
            await p.deleteMany(keys, 10_000)
            return
          }
          const entries = []
          for (let i = 0; i < N; i++) {
            const value = i % 10 === 0 ? Buffer.from(`${p.id}/${round}/${i}`) : { by: p.id, round, i }
            entries.push([`same:${i}`, value])
          }
          await p.setMany(entries, 10_000)
        }),
      )
    }
    const dumps = await converge(writers, {
      until: (d) => Object.keys(subset(d, 'same:')).length > 0,
      message: 'the same-key writes to converge',
    })
    expect(dumps[1].entries).toEqual(dumps[0].entries)
    expect(dumps[2].entries).toEqual(dumps[0].entries)
    // after round 3 every key was written again by everyone, so every key is live, with one of their values
    const same = subset(dumps[0], 'same:')
    expect(Object.keys(same)).toHaveLength(N)
    for (let i = 0; i < N; i++) {
      const v = same[`same:${i}`]
      if (i % 10 === 0) {
        expect(Buffer.isBuffer(v)).toBe(true)
        expect(['n1/2/', 'n2/2/', 'n3/2/'].map((s) => s + i)).toContain(v.toString())
      } else {
        expect(v).toMatchObject({ round: 2, i })
        expect(['n1', 'n2', 'n3']).toContain(v.by)
      }
    }
  })

  test('deletes replicate, with deleted:true / value undefined / origin in the change events', async () => {
    const entries = []
    for (let i = 0; i < 20; i++) entries.push([`del:${i}`, i])
    await n1.setMany(entries)
    await converge([n1, n2, n3], {
      until: (d) => Object.keys(subset(d, 'del:')).length === 20,
      message: 'the del: keys to replicate',
    })
    const gone = []
    for (let i = 0; i < 10; i++) gone.push(`del:${i}`)
    await n2.deleteMany(gone)
    const dumps = await converge([n1, n2, n3], {
      until: (d) => Object.keys(subset(d, 'del:')).length === 10,
      message: 'the deletes to replicate',
    })
    const left = subset(dumps[0], 'del:')
    expect(Object.keys(left).sort()).toEqual(entries.slice(10).map(([k]) => k).sort())
    for (const p of [n1, n3]) {
      expect(await p.has('del:0')).toBe(false)
      expect(await p.get('del:0')).toBeUndefined()
      const ev = await p.waitForEvent(
        (e) => e.name === 'change' && e.data.key === 'del:3' && e.data.deleted,
        3000,
        `${p.id} delete event for del:3`,
      )
      expect(ev.data).toEqual({ key: 'del:3', value: undefined, deleted: true, local: false, origin: 'n2' })
    }
    const own = await n2.waitForEvent((e) => e.name === 'change' && e.data.key === 'del:3' && e.data.deleted, 3000)
    expect(own.data).toEqual({ key: 'del:3', value: undefined, deleted: true, local: true, origin: 'n2' })
  })

  test('change events carry local and origin correctly on writer and receivers', async () => {
    await n3.set('ev:x', { hello: 'world' })
    const match = (e) => e.name === 'change' && e.data.key === 'ev:x'
    const mine = await n3.waitForEvent(match, 3000, 'n3 local change')
    expect(mine.data).toEqual({ key: 'ev:x', value: { hello: 'world' }, deleted: false, local: true, origin: 'n3' })
    for (const p of [n1, n2]) {
      const theirs = await p.waitForEvent(match, 5000, `${p.id} remote change`)
      expect(theirs.data).toEqual({ key: 'ev:x', value: { hello: 'world' }, deleted: false, local: false, origin: 'n3' })
    }
    // every change event ever seen anywhere names a real origin, and local exactly when origin is self
    for (const p of [n1, n2, n3]) {
      for (const e of p.events.filter((ev) => ev.name === 'change')) {
        expect(['n1', 'n2', 'n3']).toContain(e.data.origin)
        expect(e.data.local).toBe(e.data.origin === p.id)
        expect(e.data.deleted).toBe(e.data.value === undefined)
      }
    }
  })

  test('Buffers and Uint8Arrays round-trip across processes as Buffers', async () => {
    const allBytes = Buffer.alloc(256)
    for (let i = 0; i < 256; i++) allBytes[i] = i
    const big = randomBytes(200_000)
    await n1.set('bin:all', allBytes)
    await n1.set('bin:big', big)
    await n2.set('bin:u8', new Uint8Array([0, 128, 255]))
    await n3.set('bin:empty', Buffer.alloc(0))
    await converge([n1, n2, n3], {
      until: (d) => Object.keys(subset(d, 'bin:')).length === 4,
      message: 'binary values to replicate',
    })
    for (const p of [n1, n2, n3]) {
      for (const [key, bytes] of [
        ['bin:all', allBytes],
        ['bin:big', big],
        ['bin:u8', Buffer.from([0, 128, 255])],
        ['bin:empty', Buffer.alloc(0)],
      ]) {
        const info = await p.request('getInfo', { key })
        expect({ at: p.id, key, isBuffer: info.isBuffer }).toEqual({ at: p.id, key, isBuffer: true })
        expect(decodeValue(info.value).equals(bytes)).toBe(true)
      }
    }
    const ev = await n3.waitForEvent((e) => e.name === 'change' && e.data.key === 'bin:all', 3000)
    expect(Buffer.isBuffer(ev.data.value)).toBe(true)
    expect(ev.data.value.equals(allBytes)).toBe(true)
  })

  test("SIGKILL one process: 'peer-down' for it on the other two within 5 s, and they keep replicating", async () => {
    const killedAddress = n3.address
    const t0 = Date.now()
    await n3.kill('SIGKILL')
    const downs = await Promise.all(
      survivors().map((p) =>
        p.waitForEvent((e) => e.name === 'peer-down' && e.data.id === 'n3' && e.at >= t0, 5000, `${p.id} 'peer-down' for n3`),
      ),
    )
    for (const d of downs) {
      expect(d.data).toEqual({ id: 'n3', address: killedAddress })
      expect(d.at - t0).toBeLessThanOrEqual(5000)
    }
    for (const p of survivors()) {
      const list = await p.peers()
      const dead = list.find((x) => x.id === 'n3')
      if (dead) expect(dead.state).toBe('disconnected')
      expect(connectedIds(list)).toEqual([p === n1 ? 'n2' : 'n1'])
    }
    // the survivors still replicate both ways
    await n1.set('after-kill:from-n1', 1)
    await n2.set('after-kill:from-n2', 2)
    await n2.delete('distinct:n3:0')
    const dumps = await converge(survivors(), {
      until: (d) => Object.keys(subset(d, 'after-kill:')).length === 2 && !d.entries.some(([k]) => k === 'distinct:n3:0'),
      timeout: 5000,
      message: 'the survivors to replicate after the kill',
    })
    expect(subset(dumps[0], 'after-kill:')).toEqual({ 'after-kill:from-n1': 1, 'after-kill:from-n2': 2 })
  })

  test('a fresh process joining later, seeded with one survivor, receives everything; deleted keys stay deleted', async () => {
    const reference = await n1.dump()
    expect(reference.entries.length).toBeGreaterThan(600)
    const n4 = await spawnPeer({ id: 'n4', seeds: [n2.address] })
    const dumps = await converge([n1, n2, n4], { timeout: 10_000, message: 'the late joiner to catch up' })
    expect(dumps[2].entries).toEqual(dumps[0].entries)
    expect(dumps[2].size).toBe(reference.size)
    expect(dumps[2].entries).toEqual(reference.entries)
    // keys deleted before n4 existed are not there, and do not come back later
    for (const key of ['del:0', 'del:9', 'distinct:n3:0']) expect(await n4.has(key)).toBe(false)
    await sleep(1500) // past a periodic digest exchange
    for (const key of ['del:0', 'del:9', 'distinct:n3:0']) expect(await n4.has(key)).toBe(false)
    expect((await n4.dump()).digest).toBe(reference.digest)
    expect(n4.events.filter((e) => e.name === 'change' && e.data.key === 'del:0' && !e.data.deleted)).toEqual([])
    // it learned n1 through n2 and both see it
    await waitFor(async () => connectedIds(await n4.peers()).join() === 'n1,n2', {
      timeout: 5000,
      message: 'n4 to be connected to n1 and n2',
    })
    await n1.waitForEvent((e) => e.name === 'peer-up' && e.data.id === 'n4', 5000, "n1 'peer-up' for n4")
    // and it writes back into the cluster
    await n4.set('from-n4', 'hi')
    await waitFor(async () => (await n1.get('from-n4')) === 'hi' && (await n2.get('from-n4')) === 'hi', {
      message: "n4's write to reach n1 and n2",
    })
  })
})

// ---------------------------------------------------------------------------------------------------

describe('heartbeat: a frozen process (SIGSTOP: sockets stay open, nothing is said)', () => {
  afterEach(async () => {
    await killAll() // SIGKILL also ends stopped processes
  })

  test("is declared down by the others within 5 s; after SIGCONT it comes back up and catches up", async () => {
    const h1 = await spawnPeer({ id: 'h1' })
    const h2 = await spawnPeer({ id: 'h2', seeds: [h1.address] })
    const h3 = await spawnPeer({ id: 'h3', seeds: [h1.address] })
    await waitFor(
      async () => (await Promise.all([h1, h2, h3].map((p) => p.peers()))).every((l) => connectedIds(l).length === 2),
      { timeout: 5000, interval: 100, message: 'h1, h2, h3 to connect' },
    )
    await h1.set('before-freeze', 1)
    await converge([h1, h2, h3], { until: (d) => d.size === 1, message: 'the first write to replicate' })

    const t0 = Date.now()
    process.kill(h3.child.pid, 'SIGSTOP')
    const downs = await Promise.all(
      [h1, h2].map((p) =>
        p.waitForEvent((e) => e.name === 'peer-down' && e.data.id === 'h3' && e.at >= t0, 5000, `${p.id} 'peer-down' for frozen h3`),
      ),
    )
    for (const d of downs) {
      expect(d.data).toEqual({ id: 'h3', address: h3.address })
      expect(d.at - t0).toBeLessThanOrEqual(5000)
    }
    expect(connectedIds(await h1.peers())).toEqual(['h2'])

    // meanwhile the others go on
    await h2.set('while-frozen', 2)
    await h1.delete('before-freeze')
    await converge([h1, h2], { until: (d) => d.size === 1 && d.entries[0][0] === 'while-frozen', timeout: 5000 })

    const t1 = Date.now()
    process.kill(h3.child.pid, 'SIGCONT')
    await h1.waitForEvent((e) => e.name === 'peer-up' && e.data.id === 'h3' && e.at >= t1, 10_000, "h1 'peer-up' for h3 after SIGCONT")
    const dumps = await converge([h1, h2, h3], {
      until: (d) => d.size === 1 && d.entries[0][0] === 'while-frozen',
      timeout: 10_000,
      message: 'the thawed process to catch up',
    })
    expect(dumps[2].entries).toEqual(dumps[0].entries)
    expect(await h3.has('before-freeze')).toBe(false)
  })
})

// ---------------------------------------------------------------------------------------------------

/**
 * Connects to `address`, writes `payload` (never half-closing our side), and resolves with how long the
 * peer took to close the connection; rejects if it is still open after `within` ms.
 */
function expectDropped(address, payload, within) {
  const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))]
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port })
    const t0 = Date.now()
    let received = 0
    const timer = setTimeout(() => {
      socket.destroy()
      reject(new Error(`connection still open ${within} ms after sending ${payload.length} bytes of garbage`))
    }, within)
    socket.on('data', (d) => (received += d.length))
    socket.on('error', () => {}) // ECONNRESET counts as dropped too; 'close' follows
    socket.on('connect', () => {
      if (payload.length) socket.write(payload)
    })
    socket.on('close', () => {
      clearTimeout(timer)
      resolve({ ms: Date.now() - t0, received })
    })
  })
}

describe('garbage on the peer port', () => {
  let g1, g2

  beforeEach(async () => {
    g1 = await spawnPeer({ id: 'g1' })
    g2 = await spawnPeer({ id: 'g2', seeds: [g1.address] })
    await waitFor(async () => connectedIds(await g1.peers()).join() === 'g2', { message: 'g1 and g2 to connect' })
  })

  afterEach(async () => {
    await killAll()
  })

  test('raw TCP clients sending garbage are dropped and the node keeps serving', async () => {
    const http = Buffer.from(`GET / HTTP/1.1\r\nHost: ${g1.address}\r\nUser-Agent: test\r\nAccept: */*\r\n\r\n`)
    const huge = Buffer.concat([Buffer.from([0xff, 0xff, 0xff, 0xff]), randomBytes(64)])
    const hugeAlone = Buffer.from([0xff, 0xff, 0xff, 0xff])
    const badVersion = Buffer.from([0, 0, 0, 9, 0xee, 1, 2, 3, 4, 5, 6, 7, 8])
    const junkFrame = Buffer.concat([Buffer.from([0, 0, 0, 65, 1]), Buffer.alloc(64, 0xff)])
    const random = randomBytes(8192)
    const results = await Promise.allSettled([
      expectDropped(g1.address, random, 8000),
      expectDropped(g1.address, http, 3000),
      expectDropped(g1.address, huge, 3000),
      expectDropped(g1.address, hugeAlone, 3000),
      expectDropped(g1.address, badVersion, 3000),
      expectDropped(g1.address, junkFrame, 3000),
      expectDropped(g1.address, Buffer.alloc(0), 8000), // says nothing at all: dropped by the handshake timeout
      // the same garbage at the second peer too, while the first is being hammered
      expectDropped(g2.address, http, 3000),
      expectDropped(g2.address, hugeAlone, 3000),
    ])
    const labels = ['random bytes', 'HTTP request', '0xffffffff + bytes', '0xffffffff alone', 'bad version', 'junk frame', 'silent client', 'HTTP at g2', '0xffffffff at g2']
    const failures = results
      .map((r, i) => (r.status === 'rejected' ? `${labels[i]}: ${r.reason.message}` : null))
      .filter(Boolean)
    expect(failures).toEqual([])

    // both processes are alive and still replicate both ways
    expect(g1.running && g2.running).toBe(true)
    await g1.set('after-garbage:1', { ok: 1 })
    await g2.set('after-garbage:2', Buffer.from('still fine'))
    const dumps = await converge([g1, g2], {
      until: (d) => Object.keys(subset(d, 'after-garbage:')).length === 2,
      timeout: 5000,
      message: 'replication after the garbage',
    })
    expect(subset(dumps[0], 'after-garbage:')).toEqual({
      'after-garbage:1': { ok: 1 },
      'after-garbage:2': Buffer.from('still fine'),
    })
    // garbage clients never became members
    expect((await g1.peers()).map((p) => p.id)).toEqual(['g2'])
    // and a new peer can still join through the hammered one
    const g3 = await spawnPeer({ id: 'g3', seeds: [g1.address] })
    await converge([g1, g2, g3], {
      until: (d) => Object.keys(subset(d, 'after-garbage:')).length === 2,
      timeout: 5000,
      message: 'a newcomer to sync after the garbage',
    })
  })
})
