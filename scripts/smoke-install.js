'use strict'
// The install check of a release, as a new user meets it: the root tarball and this platform's tarball
// from dist/ (written by `npm run package`) are installed into an empty project with no Rust tool on
// PATH, and there the package must work. It checks that two peers in two processes replicate a write
// (ESM `import { Peer }`), that SessionStore loads with express-session, that the typings resolve for
// `import` and `require` under `--module nodenext`, and that a missing or unsupported binary fails with
// an error naming the platform. It prints how long the install took.
//
// Invariant: nothing here may reach the clone's build: the project lives in a fresh temporary
// directory, PATH has no directory holding cargo, rustc or rustup, and the clone's node_modules is used
// only for `tsc` and the Node typings it checks against.

const { execFileSync, spawn, spawnSync } = require('node:child_process')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const ROOT = path.join(__dirname, '..')
const DIST = path.join(ROOT, 'dist')
const pkg = require('../package.json')
const RUST_TOOLS = ['cargo', 'rustc', 'rustup']

const PATH = process.env.PATH.split(path.delimiter)
  .filter((dir) => !RUST_TOOLS.some((t) => fs.existsSync(path.join(dir, t)) || fs.existsSync(path.join(dir, `${t}.exe`))))
  .join(path.delimiter)
const ENV = { ...process.env, PATH }
for (const k of Object.keys(ENV)) if (/^(CARGO|RUSTUP|RUSTC|NODE_PATH|PEER_BUCKETS_)/.test(k)) delete ENV[k]

function platform() {
  const { platform: p, arch } = process
  if (p === 'linux') return `linux-${arch}-${process.report.getReport().header.glibcVersionRuntime ? 'gnu' : 'musl'}`
  if (p === 'win32') return `win32-${arch}-msvc`
  return `${p}-${arch}`
}

const PLATFORM = platform()
const BINARY_PKG = `${pkg.napi.packageName}-${PLATFORM}`
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peer-buckets-install-'))

function npm(args) {
  // npm is a .cmd script on Windows, which Node spawns only through a shell.
  return execFileSync('npm', args, { cwd: dir, env: ENV, encoding: 'utf8', shell: process.platform === 'win32' })
}

function node(args, env = {}) {
  return spawnSync(process.execPath, args, { cwd: dir, env: { ...ENV, ...env }, encoding: 'utf8', timeout: 60000 })
}

const checks = []
function check(name, fn) {
  checks.push({ name, fn })
}

check('no Rust tool is on PATH', () => {
  for (const t of RUST_TOOLS) {
    const r = spawnSync(t, ['--version'], { env: ENV, encoding: 'utf8' })
    assert.equal(r.error?.code, 'ENOENT', `${t} is still reachable: ${r.stdout}`)
  }
})

let installSeconds
check(`npm install of the two tarballs (${pkg.name}, ${BINARY_PKG})`, () => {
  const tarballs = [`${pkg.name}-${pkg.version}.tgz`, `${BINARY_PKG}-${pkg.version}.tgz`].map((f) => path.join(DIST, f))
  for (const t of tarballs) assert.ok(fs.existsSync(t), `${t} is missing: run npm run package first`)
  fs.writeFileSync(path.join(dir, 'package.json'), '{ "name": "install-check", "private": true }\n')
  const started = process.hrtime.bigint()
  npm(['install', '--no-audit', '--no-fund', '--loglevel=error', ...tarballs])
  installSeconds = Number(process.hrtime.bigint() - started) / 1e9
  const installed = path.join(dir, 'node_modules', pkg.name)
  const shipped = fs.readdirSync(installed).sort()
  assert.deepEqual(shipped, ['LICENSE', 'README.md', 'index.d.ts', 'index.js', 'lib', 'native.js', 'package.json'])
  const binary = fs.readdirSync(path.join(dir, 'node_modules', BINARY_PKG)).filter((f) => f.endsWith('.node'))
  assert.deepEqual(binary, [`${pkg.napi.binaryName}.${PLATFORM}.node`])
})

check('two peers in two processes replicate a write (ESM import)', async () => {
  fs.writeFileSync(
    path.join(dir, 'peer.mjs'),
    `import { Peer } from 'peer-buckets'
const [mine, theirs, seed] = process.argv.slice(2)
const peer = new Peer({ id: mine, secret: 'install-check-secret', peers: seed ? [seed] : [] })
await peer.ready()
console.log('listening ' + peer.address)
const bucket = peer.bucket('install-check')
await bucket.set(mine, { from: mine })
const deadline = Date.now() + 20000
while (bucket.get(theirs)?.from !== theirs) {
  if (Date.now() > deadline) { console.error(mine + ' never saw ' + theirs); process.exit(1) }
  await new Promise((r) => setTimeout(r, 50))
}
console.log('saw ' + theirs)
// Both ends must see the other's write before either leaves.
await new Promise((r) => setTimeout(r, 500))
await peer.close()
`,
  )
  const start = (args) => {
    const child = spawn(process.execPath, ['peer.mjs', ...args], { cwd: dir, env: ENV })
    let out = ''
    let err = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (err += d))
    const exited = new Promise((resolve) => child.on('exit', (code) => resolve({ code, out, err })))
    const listening = new Promise((resolve, reject) => {
      child.stdout.on('data', () => {
        const m = /listening (\S+)/.exec(out)
        if (m) resolve(m[1])
      })
      child.on('exit', () => reject(new Error(`peer exited before listening: ${err}`)))
    })
    return { child, exited, listening }
  }
  const a = start(['a', 'b'])
  const address = await a.listening
  const b = start(['b', 'a', address])
  const timer = setTimeout(() => (a.child.kill(), b.child.kill()), 40000)
  const [ra, rb] = await Promise.all([a.exited, b.exited])
  clearTimeout(timer)
  assert.equal(ra.code, 0, `peer a: ${ra.out}${ra.err}`)
  assert.equal(rb.code, 0, `peer b: ${rb.out}${rb.err}`)
  assert.match(ra.out, /saw b/)
  assert.match(rb.out, /saw a/)
})

check('SessionStore loads and stores a session (with express-session and its types installed)', () => {
  // As a user of the store installs them; the typings of SessionStore extend express-session's.
  npm(['install', '--no-audit', '--no-fund', '--loglevel=error', 'express-session@1', '@types/express-session@1'])
  const r = node([
    '-e',
    `const { Peer, SessionStore } = require('peer-buckets')
const peer = new Peer()
const store = new SessionStore({ bucket: peer.bucket('sessions') })
store.set('s1', { cookie: { maxAge: 60000 }, user: 'ada' }, (err) => {
  if (err) throw err
  store.get('s1', (err, s) => {
    if (err) throw err
    if (s.user !== 'ada') throw new Error('read back ' + JSON.stringify(s))
    peer.close().then(() => console.log('ok'))
  })
})`,
  ])
  assert.equal(r.status, 0, r.stderr)
  assert.equal(r.stdout.trim(), 'ok')
})

check('the typings resolve for import and require (tsc --module nodenext --strict)', () => {
  fs.writeFileSync(
    path.join(dir, 'esm.mts'),
    `import { Peer, SessionStore, type PeerOptions, type ChangeEvent } from 'peer-buckets'
const options: PeerOptions = { listen: 0 }
const peer: Peer = new Peer(options)
peer.bucket('b').on('change', (e: ChangeEvent) => e.key.length)
export const store: SessionStore = new SessionStore({ bucket: peer.bucket('s') })
`,
  )
  fs.writeFileSync(
    path.join(dir, 'cjs.cts'),
    `import peerBuckets = require('peer-buckets')
export const peer: peerBuckets.Peer = new peerBuckets.Peer({ id: 'x' })
`,
  )
  fs.writeFileSync(
    path.join(dir, 'wrong.mts'),
    `import { Peer } from 'peer-buckets'
export const peer: Peer = new Peer({ listen: true })
`,
  )
  const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
  const flags = ['--noEmit', '--strict', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--typeRoots', path.join(ROOT, 'node_modules', '@types'), '--types', 'node']
  const good = node([tsc, ...flags, 'esm.mts', 'cjs.cts'])
  assert.equal(good.status, 0, good.stdout + good.stderr)
  // The typings are read, not skipped: a wrong option type is an error.
  const bad = node([tsc, ...flags, 'wrong.mts'])
  assert.notEqual(bad.status, 0, 'tsc accepted listen: true')
  assert.match(bad.stdout, /wrong\.mts.*TS2322/)
  // The exports map keeps the package's insides private.
  const deep = node(['-e', "require('peer-buckets/lib/metrics.js')"])
  assert.match(deep.stderr, /ERR_PACKAGE_PATH_NOT_EXPORTED/)
})

check('a missing binary fails with an error naming the platform, not npm', () => {
  const installed = path.join(dir, 'node_modules', BINARY_PKG)
  const aside = path.join(dir, 'binary-aside')
  fs.renameSync(installed, aside)
  try {
    const r = node(['-e', "require('peer-buckets')"])
    assert.notEqual(r.status, 0)
    assert.match(r.stderr, new RegExp(`the binary for ${PLATFORM}, package ${BINARY_PKG}@${pkg.version}, is not installed`))
    assert.match(r.stderr, new RegExp(`npm install ${BINARY_PKG}@${pkg.version}`))
    assert.match(r.stderr, /build it from source/)
    assert.doesNotMatch(r.stderr, /bug|npm\/cli/i)
    // The way to use an addon built from source.
    const file = path.join(aside, `${pkg.napi.binaryName}.${PLATFORM}.node`)
    const ok = node(['-e', "console.log(typeof require('peer-buckets').Peer)"], { PEER_BUCKETS_NATIVE_PATH: file })
    assert.equal(ok.stdout.trim(), 'function', ok.stderr)
  } finally {
    fs.renameSync(aside, installed)
  }
})

check('an unsupported platform fails with the supported list and the way to build from source', () => {
  fs.writeFileSync(path.join(dir, 'riscv.cjs'), "Object.defineProperty(process, 'arch', { value: 'riscv64' })\n")
  const r = node(['--require', './riscv.cjs', '-e', "require('peer-buckets')"])
  assert.notEqual(r.status, 0)
  assert.ok(r.stderr.includes(`no prebuilt binary for ${PLATFORM.replace(process.arch, 'riscv64')}`), r.stderr)
  assert.match(r.stderr, /Prebuilt binaries exist for: linux-x64-gnu, .*win32-x64-msvc/)
  assert.match(r.stderr, /build it from source \(needs Rust/)
})

async function main() {
  let passed = 0
  let failed = 0
  for (const { name, fn } of checks) {
    try {
      await fn()
      passed++
      console.log(`ok   ${name}`)
    } catch (e) {
      failed++
      console.log(`FAIL ${name}\n${e.stack || e}`)
      if (!installSeconds) break
    }
  }
  if (installSeconds) console.log(`install of the two tarballs took ${installSeconds.toFixed(1)} s (in ${dir})`)
  console.log(`install-check: ${passed} passed, ${failed} failed`)
  if (failed === 0) fs.rmSync(dir, { recursive: true, force: true })
  process.exit(failed ? 1 : 0)
}

main()
