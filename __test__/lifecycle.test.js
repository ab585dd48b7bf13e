'use strict'
// Process lifetime: an open Peer keeps its process alive like a listening net.Server, close() and
// unref() let it exit, and failed Peers hold nothing. The open happens off the JavaScript thread:
// new Peer() returns before the data directory is loaded, calls made before ready() are queued (writes)
// or refused with ENOTREADY (synchronous reads), and an open that fails rejects ready(), the queued
// calls and, for whoever listens, 'error'. close({ timeout }) drains this peer's writes to the linked
// peers first and says what was left unacknowledged.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const net = require('node:net')
const { spawn } = require('node:child_process')
const { Peer, SessionStore } = require('..')
const { allStopped } = require('./helpers/stopped')
const { waitFor } = require('./helpers/wait')

jest.setTimeout(60_000)

const PKG = path.join(__dirname, '..')
const children = new Set()

const inProcess = []
const dirs = []

function tempDir() {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'peer-buckets-lifecycle-'))
  dirs.push(d)
  return d
}

function track(peer) {
  inProcess.push(peer)
  return peer
}

async function takenPort() {
  const server = net.createServer()
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return server
}

async function until(check, ms = 20_000) {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 20))
  }
}

afterEach(async () => {
  await Promise.all(inProcess.splice(0).map((p) => p.close().catch(() => {})))
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true })
  await Promise.all(
    [...children].map(async (c) => {
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
      await c.done
    }),
  )
  children.clear()
})

/** Runs `node -e <code>` with `PKG` pointing at the package; tracks it for cleanup. `as`: { uid, gid } to run it as. */
function runNode(code, env = {}, as = {}) {
  const childEnv = { ...process.env, PKG, ...env }
  delete childEnv.NODE_OPTIONS
  const child = spawn(process.execPath, ['-e', code], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'], ...as })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d) => (stdout += d))
  child.stdoutText = () => stdout
  child.stderr.on('data', (d) => (stderr += d))
  const t0 = Date.now()
  child.done = new Promise((resolve) => {
    child.on('exit', (exitCode, signal) => resolve({ exitCode, signal, ms: Date.now() - t0, stdout, stderr }))
  })
  children.add(child)
  return child
}

/** Resolves with the exit info, or with { timedOut: true } if still running after `ms`. */
function exitWithin(child, ms) {
  let timer
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve({ timedOut: true, stdout: child.stdoutText() }), ms)
  })
  return Promise.race([child.done, timeout]).finally(() => clearTimeout(timer))
}

function describeExit(r) {
  return r.timedOut ? `still running; stdout so far: ${r.stdout}` : `exit ${r.exitCode} signal ${r.signal} after ${r.ms} ms; stdout: ${r.stdout} stderr: ${r.stderr}`
}

async function expectCleanExit(child, ms = 5000) {
  const r = await exitWithin(child, ms)
  expect(describeExit(r)).toMatch(/^exit 0 signal null/)
  return r
}

const PRELUDE = `const { Peer } = require(process.env.PKG);`

describe('process lifetime', () => {
  test('a process that creates a Peer, writes and calls close() exits on its own promptly, code 0', async () => {
    const child = runNode(`${PRELUDE}
      (async () => {
        const p = new Peer({ listen: '127.0.0.1:0' });
        await p.ready();
        const b = p.bucket('x');
        await b.set('k', { v: 1 });
        await b.set('bytes', Buffer.from('x'));
        await b.delete('k');
        await p.close();
        console.log('closed');
      })().catch((e) => { console.error(e); process.exit(3); });`)
    const r = await expectCleanExit(child)
    expect(r.stdout).toContain('closed')
  })

  test('with two connected peers, change and peer listeners, close() on both still lets the process exit', async () => {
    const child = runNode(`${PRELUDE}
      (async () => {
        const a = new Peer(); await a.ready();
        // Listening before b exists: b's link can be up before b's ready() settles.
        const up = new Promise((r) => a.once('peer-up', r));
        const b = new Peer({ peers: [a.address] }); await b.ready();
        a.on('peer-down', () => {}); b.on('peer-up', () => {}); b.on('peer-down', () => {});
        const got = new Promise((r) => b.bucket('x').on('change', (e) => { if (e.key === 'k') r(e); }));
        a.bucket('x').on('change', () => {});
        await up;
        await a.bucket('x').set('k', 'v');
        const e = await got;
        if (e.value !== 'v' || e.local !== false) throw new Error('bad event ' + JSON.stringify(e));
        await Promise.all([a.close(), b.close()]);
        console.log('closed');
      })().catch((e) => { console.error(e); process.exit(3); });`)
    const r = await expectCleanExit(child)
    expect(r.stdout).toContain('closed')
  })

  test('a process whose Peer is unref()ed (never closed) exits promptly, code 0', async () => {
    const child = runNode(`${PRELUDE}
      (async () => {
        const p = new Peer();
        const same = p.unref();
        if (same !== p) throw new Error('unref() did not return the peer');
        await p.ready();
        await p.bucket('x').set('k', 1);
        console.log('unrefed');
      })().catch((e) => { console.error(e); process.exit(3); });`)
    const r = await expectCleanExit(child)
    expect(r.stdout).toContain('unrefed')
  })

  test('unref()ed peers that are connected and have change listeners do not hold the process either', async () => {
    const child = runNode(`${PRELUDE}
      (async () => {
        const a = new Peer().unref(); await a.ready();
        const b = new Peer({ peers: [a.address] }).unref(); await b.ready();
        a.on('peer-up', () => {}); b.on('peer-down', () => {});
        const got = new Promise((r) => b.bucket('x').on('change', r));
        // the unref'd peers hold nothing, so a plain timer keeps the process up while waiting
        const guard = setTimeout(() => { console.error('no replication within 4 s'); process.exit(4); }, 4000);
        await a.bucket('x').set('k', 'v');
        await got;
        clearTimeout(guard);
        console.log('replicated');
      })().catch((e) => { console.error(e); process.exit(3); });`)
    const r = await expectCleanExit(child)
    expect(r.stdout).toContain('replicated')
  })

  test('a process that creates a Peer and does nothing stays alive', async () => {
    const child = runNode(`${PRELUDE}
      const p = new Peer();
      p.ready().then(() => console.log('ready ' + p.address));`)
    const r = await exitWithin(child, 1500)
    expect(describeExit(r)).toMatch(/^still running/)
    child.kill('SIGKILL')
    const end = await child.done
    expect(end.signal).toBe('SIGKILL')
    expect(end.stdout).toMatch(/^ready 127\.0\.0\.1:\d+/)
  })

  test('ref() after unref() keeps the process alive again', async () => {
    const child = runNode(`${PRELUDE}
      const p = new Peer();
      p.unref();
      if (p.ref() !== p) { console.error('ref() did not return the peer'); process.exit(3); }
      p.ready().then(() => console.log('ready'));`)
    const r = await exitWithin(child, 1500)
    expect(describeExit(r)).toMatch(/^still running/)
  })

  test('a Peer that cannot listen (EADDRINUSE) does not hold the process', async () => {
    const server = net.createServer()
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    try {
      const child = runNode(
        `${PRELUDE}
        const p = new Peer({ listen: process.env.TAKEN });
        p.ready().then(
          () => { console.log('unexpectedly ready'); },
          (e) => { console.log('rejected ' + e.code); },
        );`,
        { TAKEN: `127.0.0.1:${server.address().port}` },
      )
      const r = await expectCleanExit(child)
      expect(r.stdout).toContain('rejected EADDRINUSE')
    } finally {
      await new Promise((resolve) => server.close(resolve))
    }
  })

  test('a Peer refused for a bad argument does not hold the process', async () => {
    const child = runNode(`${PRELUDE}
      for (const opts of [{ secret: 'too short' }, { durability: 'strict' }, { listen: 'nonsense' }, { id: 5 }]) {
        try { new Peer(opts); console.log('constructed?!'); } catch (e) { console.log('threw ' + (e.code || e.name)); }
      }`)
    const r = await expectCleanExit(child)
    expect(r.stdout.trim().split('\n')).toEqual(['threw RangeError', 'threw TypeError', 'threw RangeError', 'threw TypeError'])
  })
})

/** A data directory holding bucket 's' with `n` keys, 'old' and 'keep' among them; closed again. */
async function filledDir(n) {
  const dir = tempDir()
  const p = new Peer({ id: 'filled', dataDir: dir, durability: 'relaxed' })
  await p.ready()
  const b = p.bucket('s')
  for (let i = 0; i < n; i++) b.set(`k${i}`, { i })
  await b.set('old', 'from disk')
  await b.set('keep', 1, { ttl: 60_000 })
  await p.bucket('sessions').set('sess:a', { cookie: { maxAge: 60_000 }, user: 'ada' }, { ttl: 60_000 })
  await p.close()
  return dir
}

function codeOf(fn) {
  try {
    fn()
  } catch (e) {
    return e.code
  }
  return 'no error'
}

describe('opening off the JavaScript thread', () => {
  test('new Peer() returns before its data directory is loaded: ready() is still pending right after', async () => {
    const dir = await filledDir(20_000)
    const p = track(new Peer({ dataDir: dir }))
    let settled = false
    p.ready().then(
      () => (settled = true),
      () => (settled = true),
    )
    await Promise.resolve()
    await Promise.resolve()
    expect(settled).toBe(false)
    await p.ready()
    expect(p.bucket('s').size).toBe(20_002)
    expect(p.id).toBe('filled') // the directory's id, known once open
    expect(p.address).toMatch(/^127\.0\.0\.1:\d+$/)
  })

  test('before ready(): writes are queued in call order with their values as at the call, synchronous reads throw ENOTREADY', async () => {
    const dir = await filledDir(10)
    const p = track(new Peer({ dataDir: dir }))
    const b = p.bucket('s')
    const changed = []
    b.on('change', (e) => changed.push(e.key))
    expect(p.address).toBeUndefined()
    for (const read of [
      () => b.get('old'),
      () => b.has('old'),
      () => b.keys(),
      () => b.entries(),
      () => b.size,
      () => b.inspect('old'),
      () => p.peers(),
      () => p.stats(),
      () => p.metrics(),
    ]) {
      expect(codeOf(read)).toBe('ENOTREADY')
    }
    const obj = { n: 1 }
    const bytes = Buffer.from('abc')
    const writes = [
      b.set('k', 1),
      b.set('k', 2),
      b.set('obj', obj),
      b.set('bytes', bytes),
      b.delete('old'),
      b.touch('keep', 120_000),
      b.touch('absent', 1000),
    ]
    obj.n = 99
    bytes[0] = 0x7a
    const viaCallback = new Promise((resolve) => b.set('cb', 'v', (err) => resolve(err)))
    // A SessionStore read waits for the open instead of throwing.
    const session = new SessionStore({ bucket: p.bucket('sessions') }).get('a')
    const results = await Promise.all(writes)
    // touch ran on the loaded data: the key from the directory is live, the absent one is not.
    expect(results.slice(5)).toEqual([true, false])
    expect(await viaCallback).toBeNull()
    expect(await session).toMatchObject({ user: 'ada' })
    expect(b.get('k')).toBe(2)
    expect(b.get('obj')).toEqual({ n: 1 })
    expect(b.get('bytes').toString()).toBe('abc')
    expect(b.get('old')).toBeUndefined()
    expect(b.inspect('keep').touch.expires).toBeGreaterThan(Date.now() + 60_000)
    await until(() => changed.includes('cb'))
    expect(changed).toEqual(expect.arrayContaining(['k', 'obj', 'bytes', 'old', 'cb']))
  })

  test('an open that fails (EADDRINUSE) rejects ready() and the queued calls, is heard as error, and closes', async () => {
    const server = await takenPort()
    try {
      const p = track(new Peer({ listen: `127.0.0.1:${server.address().port}` }))
      const heard = new Promise((resolve) => p.once('error', resolve))
      const queued = p.bucket('x').set('k', 1)
      const err = await p.ready().catch((e) => e)
      expect(err).toBeInstanceOf(Error)
      expect(err.code).toBe('EADDRINUSE')
      await expect(queued).rejects.toMatchObject({ code: 'EADDRINUSE' })
      expect(await heard).toBe(err)
      expect(p.closed).toBe(true)
      expect(codeOf(() => p.bucket('x').get('k'))).toBe('ECLOSED')
      await expect(p.close()).resolves.toEqual({ unacknowledged: {}, flushed: true })
    } finally {
      await new Promise((resolve) => server.close(resolve))
    }
  })

  test('without an error listener and without ready(), a failed open is thrown, as a net.Server does', async () => {
    const server = await takenPort()
    try {
      const child = runNode(`${PRELUDE}
        const p = new Peer({ listen: process.env.TAKEN });`, { TAKEN: `127.0.0.1:${server.address().port}` })
      const r = await exitWithin(child, 5000)
      expect(r.timedOut).toBeUndefined()
      expect(r.exitCode).not.toBe(0)
      expect(r.stderr).toMatch(/EADDRINUSE/)
    } finally {
      await new Promise((resolve) => server.close(resolve))
    }
  })

  test('a data directory held by another process rejects ready() with EDATADIRINUSE', async () => {
    const dir = await filledDir(10)
    const holder = runNode(`${PRELUDE}
      const p = new Peer({ dataDir: process.env.DIR });
      p.ready().then(() => console.log('holding'));`, { DIR: dir })
    await until(() => holder.stdoutText().includes('holding'))
    const child = runNode(`${PRELUDE}
      const p = new Peer({ dataDir: process.env.DIR });
      p.ready().then(() => console.log('opened?!'), (e) => console.log(e.code + ' ' + e.message));`, { DIR: dir })
    const r = await expectCleanExit(child)
    expect(r.stdout).toMatch(/^EDATADIRINUSE .*peer-buckets-lifecycle-/)
  })
})

describe('a data directory that cannot be used', () => {
  // A port free a moment ago, to see that a failed open leaves nothing listening on it.
  async function freePort() {
    const server = await takenPort()
    const { port } = server.address()
    await new Promise((resolve) => server.close(resolve))
    return port
  }

  test.each([
    ['a file where the directory should be', (file) => file],
    ['a directory under a file', (file) => path.join(file, 'data')],
  ])('%s rejects ready() with ESTORAGE naming the path, releases the port and leaves the file alone', async (label, dataDirOf) => {
    const file = path.join(tempDir(), 'in-the-way')
    fs.writeFileSync(file, 'not a data directory')
    const dataDir = dataDirOf(file)
    const port = await freePort()
    const p = track(new Peer({ dataDir, listen: `127.0.0.1:${port}` }))
    const heard = new Promise((resolve) => p.once('error', resolve))
    const queued = p.bucket('x').set('k', 1)
    const err = await p.ready().catch((e) => e)
    expect(err).toBeInstanceOf(Error)
    expect(err.code).toBe('ESTORAGE')
    expect(err.message).toContain(dataDir)
    await expect(queued).rejects.toBe(err)
    expect(await heard).toBe(err)
    expect(p.closed).toBe(true)
    expect(codeOf(() => p.bucket('x').get('k'))).toBe('ECLOSED')
    await expect(p.close()).resolves.toEqual({ unacknowledged: {}, flushed: true })
    // Nothing listens on the port it was given, and the file is as it was.
    const again = net.createServer()
    await new Promise((resolve, reject) => {
      again.once('error', reject)
      again.listen(port, '127.0.0.1', resolve)
    })
    await new Promise((resolve) => again.close(resolve))
    expect(fs.readFileSync(file, 'utf8')).toBe('not a data directory')
  })

  test('a data directory this process may not read (mode 000) rejects ready() naming the path, and the process exits on its own', async () => {
    const parent = tempDir()
    fs.chmodSync(parent, 0o755)
    const dataDir = path.join(parent, 'locked')
    fs.mkdirSync(dataDir, { mode: 0o000 })
    fs.chmodSync(dataDir, 0o000)
    // root reads any directory whatever its mode: the peer runs as nobody then (nobody does not own it).
    const as = process.getuid && process.getuid() === 0 ? { uid: 65534, gid: 65534 } : {}
    try {
      const child = runNode(`${PRELUDE}
        const p = new Peer({ dataDir: process.env.DIR });
        p.ready().then(() => console.log('opened?!'), (e) => console.log(e.code + ' ' + e.message));`, { DIR: dataDir }, as)
      const r = await expectCleanExit(child)
      expect(r.stdout.trim()).toMatch(/^(EACCES|ESTORAGE) /)
      expect(r.stdout).toContain(dataDir)
      expect(r.stdout).toMatch(/[Pp]ermission denied/)
    } finally {
      fs.chmodSync(dataDir, 0o700)
    }
  })
})

describe('close({ timeout })', () => {
  test('close({ timeout }) after a burst leaves the other peer holding every write', async () => {
    const N = 50_000
    const other = track(new Peer({ id: 'receiver' }))
    await other.ready()
    const child = runNode(`${PRELUDE}
      (async () => {
        const p = new Peer({ id: 'writer', peers: [process.env.SEED] });
        await p.ready();
        while (!p.peers().some((x) => x.state === 'connected')) await new Promise((r) => setTimeout(r, 10));
        const b = p.bucket('burst');
        for (let i = 0; i < ${N}; i++) b.set('k' + i, { i, pad: 'x'.repeat(100) });
        const left = await p.close({ timeout: 30000 });
        console.log(JSON.stringify(left));
      })().catch((e) => { console.error(e); process.exit(3); });`, { SEED: other.address })
    const r = await expectCleanExit(child, 50_000)
    // Counted the moment the writer has exited: nothing more can arrive.
    expect(other.bucket('burst').size).toBe(N)
    expect(JSON.parse(r.stdout)).toEqual({ unacknowledged: {}, flushed: true })
  })

  test('a linked peer that cannot acknowledge (stopped) is reported with what it lacks once the timeout passes', async () => {
    const p = track(new Peer({ id: 'closing' }))
    await p.ready()
    const child = runNode(`${PRELUDE}
      const p = new Peer({ id: 'stopped', peers: [process.env.SEED] });
      p.on('peer-up', () => console.log('up'));`, { SEED: p.address })
    await until(() => child.stdoutText().includes('up') && p.peers().some((x) => x.id === 'stopped' && x.state === 'connected'))
    child.kill('SIGSTOP')
    // Its threads stop one by one: until all have, it may still acknowledge.
    await waitFor(() => allStopped(child.pid), { timeout: 5000, message: 'the child to stop' })
    try {
      const b = p.bucket('x')
      for (let i = 0; i < 100; i++) b.set(`k${i}`, i)
      const t0 = Date.now()
      const left = await p.close({ timeout: 400 })
      const took = Date.now() - t0
      expect(left.flushed).toBe(true)
      expect(left.unacknowledged.stopped).toBeGreaterThan(0)
      expect(left.unacknowledged.stopped).toBeLessThanOrEqual(100)
      expect(took).toBeGreaterThanOrEqual(350)
      expect(took).toBeLessThan(5000)
    } finally {
      child.kill('SIGCONT')
    }
  })

  test('close() returns the same promise every time, checks its options, and fails later calls with ECLOSED', async () => {
    const p = track(new Peer())
    await p.ready()
    expect(() => p.close({ timeout: -1 })).toThrow(RangeError)
    expect(() => p.close(5)).toThrow(TypeError)
    const b = p.bucket('x')
    const first = p.close({ timeout: 100 })
    expect(p.close()).toBe(first)
    expect(p.closed).toBe(true)
    expect(codeOf(() => p.bucket('y'))).toBe('ECLOSED')
    await expect(b.set('k', 1)).rejects.toMatchObject({ code: 'ECLOSED' })
    await expect(first).resolves.toEqual({ unacknowledged: {}, flushed: true })
  })
})
