'use strict'
// Process lifetime: an open Peer keeps its process alive like a listening net.Server, close() and
// unref() let it exit, and failed Peers hold nothing.

const path = require('node:path')
const net = require('node:net')
const { spawn } = require('node:child_process')

jest.setTimeout(20_000)

const PKG = path.join(__dirname, '..')
const children = new Set()

afterEach(async () => {
  await Promise.all(
    [...children].map(async (c) => {
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
      await c.done
    }),
  )
  children.clear()
})

/** Runs `node -e <code>` with `PKG` pointing at the package; tracks it for cleanup. */
function runNode(code, env = {}) {
  const childEnv = { ...process.env, PKG, ...env }
  delete childEnv.NODE_OPTIONS
  const child = spawn(process.execPath, ['-e', code], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d) => (stdout += d))
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
    timer = setTimeout(() => resolve({ timedOut: true }), ms)
  })
  return Promise.race([child.done, timeout]).finally(() => clearTimeout(timer))
}

function describeExit(r) {
  return r.timedOut ? 'still running' : `exit ${r.exitCode} signal ${r.signal} after ${r.ms} ms; stdout: ${r.stdout} stderr: ${r.stderr}`
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
        const b = new Peer({ peers: [a.address] }); await b.ready();
        const up = new Promise((r) => a.once('peer-up', r));
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
    expect(describeExit(r)).toBe('still running')
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
    expect(describeExit(r)).toBe('still running')
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
