'use strict'
// Starting redis-server instances on loopback (never daemonised, so they are our children and die with
// the bench), plus the few INFO helpers the sections need.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const net = require('node:net')
const { spawn, spawnSync } = require('node:child_process')
const Redis = require('ioredis')
const { register } = require('./procs')
const { sleep } = require('./util')

const INSTALL_HINT = 'redis-server is not installed: the Redis figures are skipped. Install it with\n' +
  '    sudo apt-get install -y redis-server      (Debian/Ubuntu; the bench only needs the binary)\n' +
  'then run `npm run bench` again.'

function redisVersion() {
  const r = spawnSync('redis-server', ['--version'], { encoding: 'utf8' })
  if (r.error || r.status !== 0) return null
  const m = /v=([\d.]+)/.exec(r.stdout)
  return m ? m[1] : r.stdout.trim()
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

/** Starts one redis-server bound to 127.0.0.1 with no persistence; `replicaOf` makes it a replica. */
async function startRedis({ replicaOf = null, extra = [] } = {}) {
  const port = await freePort()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peer-buckets-bench-redis-'))
  const args = [
    '--port', String(port),
    '--bind', '127.0.0.1',
    '--save', '',
    '--appendonly', 'no',
    '--dir', dir,
    '--logfile', '',
    '--daemonize', 'no',
    // Full syncs start at once (the default waits 5 s for more replicas to gather): Redis's best case.
    '--repl-diskless-sync-delay', '0',
    ...(replicaOf ? ['--replicaof', '127.0.0.1', String(replicaOf)] : []),
    ...extra,
  ]
  const child = spawn('redis-server', args, { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  register(child, () => fs.rmSync(dir, { recursive: true, force: true }))
  const exited = new Promise((r) => child.once('exit', r))
  const client = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
  client.on('error', () => {}) // refused connections while the server starts are expected
  const end = Date.now() + 10_000
  for (;;) {
    try {
      await client.connect()
      await client.ping()
      break
    } catch (err) {
      client.disconnect()
      if (child.exitCode !== null || Date.now() > end) {
        child.kill('SIGKILL')
        throw new Error(`redis-server on port ${port} did not start: ${stderr || err.message}`)
      }
      await sleep(20)
    }
  }
  client.disconnect()
  return {
    port,
    child,
    client(opts = {}) {
      return new Redis({ host: '127.0.0.1', port, ...opts })
    },
    async stop() {
      if (child.exitCode === null) child.kill('SIGKILL')
      await exited
    },
  }
}

function parseInfo(text) {
  const out = {}
  for (const line of text.split('\r\n')) {
    const i = line.indexOf(':')
    if (i > 0 && line[0] !== '#') out[line.slice(0, i)] = line.slice(i + 1)
  }
  return out
}

async function info(client, section) {
  return parseInfo(await client.info(section))
}

/** Waits until every replica has processed the primary's whole replication stream. */
async function waitReplicasCaughtUp(primary, replicas, timeoutMs = 60_000) {
  const end = Date.now() + timeoutMs
  for (;;) {
    const p = await info(primary, 'replication')
    const target = Number(p.master_repl_offset)
    let ok = true
    for (const r of replicas) {
      const ri = await info(r, 'replication')
      if (ri.master_link_status !== 'up' || Number(ri.slave_repl_offset) < target) ok = false
    }
    if (ok) return true
    if (Date.now() > end) throw new Error('redis replicas did not catch up in time')
    await sleep(5)
  }
}

module.exports = { INSTALL_HINT, redisVersion, startRedis, freePort, info, parseInfo, waitReplicasCaughtUp }
