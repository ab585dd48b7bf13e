'use strict'
// The demo's auth server stops gracefully on SIGTERM (README: Shutting down): it refuses new
// connections, finishes the request in flight, closes its peer and exits 0.

const path = require('node:path')
const { fork } = require('node:child_process')
const { randomBytes } = require('node:crypto')

jest.setTimeout(30_000)

const SERVER = path.join(__dirname, '..', 'examples', 'auth-server.js')
const children = []

afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
})

function startServer(id, seeds = []) {
  const env = { ...process.env, AUTH_ID: id, AUTH_SEEDS: seeds.join(','), PEER_SECRET: randomBytes(24).toString('base64') }
  const child = fork(SERVER, [], { env, stdio: ['ignore', 'ignore', 'pipe', 'ipc'] })
  children.push(child)
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal, at: Date.now() })))
  return new Promise((resolve, reject) => {
    child.on('message', (msg) => msg.type === 'ready' && resolve({ child, url: msg.url, exited }))
    exited.then(({ code, signal }) => reject(new Error(`${id} exited (${signal || code}): ${stderr}`)))
  })
}

test('SIGTERM to a demo server finishes a slow request in flight, refuses new ones, then exits 0', async () => {
  const server = await startServer('auth-1')
  const t0 = Date.now()
  const slow = fetch(`${server.url}/slow?ms=1500`).then(async (res) => ({ status: res.status, body: await res.json(), at: Date.now() }))
  await new Promise((resolve) => setTimeout(resolve, 300))
  server.child.kill('SIGTERM')
  await new Promise((resolve) => setTimeout(resolve, 200))
  // No new connections once stopping.
  await expect(fetch(`${server.url}/me`, { signal: AbortSignal.timeout(2000) })).rejects.toThrow()

  const answered = await slow
  expect(answered.status).toBe(200)
  expect(answered.body).toEqual({ waited: 1500, server: 'auth-1' })
  expect(answered.at - t0).toBeGreaterThanOrEqual(1500)
  const exit = await server.exited
  expect(exit).toMatchObject({ code: 0, signal: null })
  expect(exit.at).toBeGreaterThanOrEqual(answered.at - 50)
})
