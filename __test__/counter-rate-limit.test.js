'use strict'
// RateLimitStore under express-rate-limit: two Express servers in two processes share one count per
// client. Sequential requests alternating between them let exactly the limit through; a concurrent
// burst ends with the same hit count on both, equal to the requests made.

const path = require('node:path')
const { fork } = require('node:child_process')
const { Channel } = require('../support/ipc')
const { waitFor, withTimeout } = require('./helpers/wait')

jest.setTimeout(60_000)

const LIMIT = 20
const children = new Set()

function spawnServer(id, seeds) {
  const child = fork(path.join(__dirname, 'fixtures', 'rate-limit-server.js'), [], {
    env: { ...process.env, NODE_OPTIONS: '', RL_ID: id, RL_SEEDS: seeds.join(','), RL_LIMIT: String(LIMIT), RL_WINDOW: '60000' },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  })
  children.add(child)
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  child.on('exit', () => children.delete(child))
  const channel = new Channel(child, { name: `server ${id}`, describeExit: () => `stderr: ${stderr}` })
  const ready = new Promise((resolve, reject) => {
    child.on('message', (msg) => {
      if (msg && msg.type === 'ready') resolve(msg)
      if (msg && msg.type === 'fatal') reject(new Error(`server ${id} failed: ${msg.error.message}`))
    })
    child.on('exit', (code) => reject(new Error(`server ${id} exited (${code}): ${stderr}`)))
  })
  const server = { child, ask: (cmd, args = {}) => channel.request(cmd, args, 10_000) }
  return withTimeout(ready, 20_000, `server ${id} start`).then((msg) => Object.assign(server, msg))
}

async function startServers() {
  const a = await spawnServer('rl-a', [])
  const b = await spawnServer('rl-b', [a.address])
  for (const s of [a, b]) {
    await waitFor(async () => (await s.ask('peers')).some((p) => p.state === 'connected'), {
      timeout: 10_000,
      message: `${s.id} to link`,
    })
  }
  return [a, b]
}

function login(server, client) {
  return fetch(`${server.url}/login`, { method: 'POST', headers: { 'x-client': client } }).then((r) => r.status)
}

afterAll(async () => {
  for (const child of children) child.kill('SIGKILL')
})

test('two servers in two processes: alternating requests let exactly the limit through; a burst counts every request on both', async () => {
  const servers = await startServers()

  const statuses = []
  for (let i = 0; i < 100; i++) statuses.push(await login(servers[i % 2], 'sequential'))
  expect(statuses.filter((s) => s === 200)).toHaveLength(LIMIT)
  expect(statuses.filter((s) => s === 429)).toHaveLength(100 - LIMIT)
  expect(statuses.slice(0, LIMIT).every((s) => s === 200)).toBe(true)

  const burst = await Promise.all(Array.from({ length: 60 }, (_, i) => login(servers[i % 2], 'burst')))
  expect(burst.filter((s) => s === 200).length).toBeGreaterThanOrEqual(LIMIT)
  await waitFor(async () => {
    const hits = await Promise.all(servers.map((s) => s.ask('hits', { key: 'burst' })))
    return hits.every((h) => h === 60)
  }, { timeout: 10_000, message: 'both servers to count the 60 requests of the burst' })
  for (const s of servers) expect(await s.ask('hits', { key: 'sequential' })).toBe(100)
  await Promise.all(servers.map((s) => s.ask('close')))
})
