'use strict'
// `npm run demo`: three Express auth servers in three processes (examples/auth-server.js), one
// peer-buckets network, login sessions in a SessionStore. A user logs in on one server and is known on
// the others; a server is killed, writes go on, it restarts empty and catches up; a logout on one
// server ends the session everywhere; a password guesser spreading its attempts over the three servers is
// stopped after 5. Every step says what it checked. Exits 0 when every step held,
// 1 (with what failed) otherwise. Loopback only.
//
// `npm run demo -- --serve` then keeps the servers up (HTTP on ports 3001-3003, peers on 7071-7073;
// DEMO_HTTP_PORT and DEMO_PEER_PORT change the first of each) for a browser or curl; Ctrl-C stops them.

const { fork } = require('node:child_process')
const { randomBytes } = require('node:crypto')
const path = require('node:path')

const SERVE = process.argv.includes('--serve')
const HOST = '127.0.0.1'
const IDS = ['auth-1', 'auth-2', 'auth-3']
const HTTP_BASE = SERVE ? Number(process.env.DEMO_HTTP_PORT || 3001) : 0
const PEER_BASE = SERVE ? Number(process.env.DEMO_PEER_PORT || 7071) : 0
// The cluster secret: peer links are authenticated and encrypted with it (made up for this run).
const SECRET = randomBytes(32).toString('base64')

const color = process.stdout.isTTY && !process.env.NO_COLOR
const paint = (code) => (text) => (color ? `\x1b[${code}m${text}\x1b[0m` : text)
const green = paint('32')
const red = paint('31')
const bold = paint('1')
const dim = paint('2')

const servers = new Map() // id -> { child, url, peer, httpPort, peerPort, stderr }
const started = Date.now()
let stepNo = 0

class StepFailed extends Error {}

function step(title) {
  stepNo++
  console.log(`\n${bold(`${stepNo}. ${title}`)}`)
}

function info(text) {
  console.log(`   ${dim(text)}`)
}

function check(ok, text, why) {
  if (ok) {
    console.log(`   ${green('✔')} ${text}`)
    return
  }
  console.log(`   ${red('✘')} ${text}`)
  throw new StepFailed(`${text}${why ? `: ${why}` : ''}`)
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls fn until it returns a truthy value (resolves { value, ms }) or `timeout` ms pass ({ value: last }). */
async function eventually(fn, timeout = 10_000) {
  const t0 = Date.now()
  let value
  for (;;) {
    try {
      value = await fn()
    } catch (err) {
      value = undefined
    }
    if (value) return { value, ms: Date.now() - t0, ok: true }
    if (Date.now() - t0 > timeout) return { value, ms: Date.now() - t0, ok: false }
    await sleep(25)
  }
}

// Servers ----------------------------------------------------------------------------------------

function serverList() {
  return IDS.filter((id) => servers.has(id)).map((id) => `${id}=${servers.get(id).url}`).join(',')
}

function start(id, { httpPort = 0, peerPort = 0, seeds = [] } = {}) {
  const env = {
    ...process.env,
    AUTH_ID: id,
    AUTH_HTTP: `${HOST}:${httpPort}`,
    AUTH_PEER: `${HOST}:${peerPort}`,
    AUTH_SEEDS: seeds.join(','),
    AUTH_SERVERS: IDS.map((other, i) => `${other}=http://${HOST}:${HTTP_BASE ? HTTP_BASE + i : 0}`).join(','),
    PEER_SECRET: SECRET,
  }
  if (!SERVE && servers.size) env.AUTH_SERVERS = serverList()
  const child = fork(path.join(__dirname, 'auth-server.js'), [], { env, stdio: ['ignore', 'ignore', 'pipe', 'ipc'] })
  const entry = { child, stderr: '', events: [] }
  child.stderr.on('data', (d) => (entry.stderr += d))
  child.on('message', (msg) => entry.events.push(msg))
  return new Promise((resolve, reject) => {
    child.on('message', (msg) => {
      if (msg.type === 'ready') {
        Object.assign(entry, msg, {
          httpPort: Number(new URL(msg.url).port),
          peerPort: Number(msg.peer.split(':').pop()),
        })
        servers.set(id, entry)
        resolve(entry)
      } else if (msg.type === 'fatal') {
        reject(new StepFailed(`${id} could not start: ${msg.message}${msg.code === 'EADDRINUSE' ? ' (set DEMO_HTTP_PORT / DEMO_PEER_PORT to free ports)' : ''}`))
      }
    })
    child.once('exit', (code, signal) => reject(new StepFailed(`${id} exited (${signal || code}) before it was ready: ${entry.stderr.trim()}`)))
  })
}

function kill(id) {
  const entry = servers.get(id)
  return new Promise((resolve) => {
    entry.child.once('exit', resolve)
    entry.child.kill('SIGKILL')
  })
}

// HTTP -------------------------------------------------------------------------------------------

async function call(id, method, route, { cookie, body } = {}) {
  const headers = {}
  if (cookie) headers.cookie = cookie
  if (body) headers['content-type'] = 'application/json'
  const res = await fetch(servers.get(id).url + route, {
    method,
    headers,
    body: body ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(5000),
  })
  const text = await res.text()
  let json
  try {
    json = JSON.parse(text)
  } catch {}
  const setCookie = res.headers.getSetCookie().map((c) => c.split(';')[0])
  return { status: res.status, json, text, setCookie }
}

const me = (id, cookie) => call(id, 'GET', '/me', { cookie })

async function login(id, user, password) {
  const res = await call(id, 'POST', '/login', { body: { user, password } })
  const cookie = res.setCookie.find((c) => c.startsWith('demo.sid='))
  return { ...res, cookie }
}

/** The value of a metric in exposition text (the first series whose labels include `labels`). */
function metric(text, name, labels = {}) {
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (!m || m[1] !== name) continue
    const have = {}
    for (const [, k, v] of (m[2] || '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) have[k] = v
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3])
  }
  return undefined
}

async function metricsOf(id) {
  return (await call(id, 'GET', '/metrics')).text
}

const short = (cookie) => (cookie.length > 28 ? `${cookie.slice(0, 28)}…` : cookie)

// The story --------------------------------------------------------------------------------------

async function main() {
  console.log(bold('peer-buckets demo: three Express auth servers sharing their login sessions, no Redis'))
  info('each server is its own process with express-session and a SessionStore over one peer-buckets bucket;')
  info('the peers talk over loopback, encrypted with a cluster secret made up for this run')

  step('Start three auth servers, one peer-buckets network')
  const first = await start('auth-1', { httpPort: HTTP_BASE, peerPort: PEER_BASE })
  await start('auth-2', { httpPort: HTTP_BASE && HTTP_BASE + 1, peerPort: PEER_BASE && PEER_BASE + 1, seeds: [first.peer] })
  await start('auth-3', { httpPort: HTTP_BASE && HTTP_BASE + 2, peerPort: PEER_BASE && PEER_BASE + 2, seeds: [first.peer] })
  for (const id of IDS) {
    const s = servers.get(id)
    info(`${id}  ${s.url.padEnd(24)} peer ${s.peer}${id === 'auth-1' ? '' : '  (seeded with auth-1 only)'}`)
  }
  const linked = await eventually(async () => {
    const all = await Promise.all(IDS.map(metricsOf))
    return all.every((text) => metric(text, 'peer_buckets_peers_connected') === 2)
  })
  check(linked.ok, `every server is linked to the other two ${dim(`(GET /metrics: peer_buckets_peers_connected 2 on each, after ${linked.ms} ms)`)}`)

  step('Log in as ada on auth-1')
  info('POST auth-1/login {"user":"ada","password":"lovelace"}')
  const ada = await login('auth-1', 'ada', 'lovelace')
  check(ada.status === 200 && ada.cookie, `auth-1 answered ${ada.status} and set the session cookie ${dim(short(ada.cookie || 'none'))}`, ada.text)

  step('Use that cookie on auth-2 and auth-3')
  for (const id of ['auth-2', 'auth-3']) {
    const seen = await eventually(async () => {
      const res = await me(id, ada.cookie)
      return res.status === 200 && res.json.user === 'ada' && res.json
    })
    check(seen.ok, `GET ${id}/me → 200, user ada, logged in on ${seen.value ? seen.value.loggedInOn : '?'} ${dim(`(the session reached ${id} within ${seen.ms} ms)`)}`)
  }

  step('Kill auth-2 (SIGKILL, no goodbye)')
  const { httpPort: port2, peerPort: peerPort2 } = servers.get('auth-2')
  await kill('auth-2')
  const refused = await me('auth-2', ada.cookie).then(() => false, () => true)
  check(refused, 'auth-2 no longer answers (connection refused)')
  const down = await eventually(async () => {
    const texts = await Promise.all(['auth-1', 'auth-3'].map(metricsOf))
    return texts.every((t) => metric(t, 'peer_buckets_peer_connected', { peer: 'auth-2' }) === 0)
  })
  check(down.ok, `auth-1 and auth-3 see it down ${dim(`(peer_buckets_peer_connected{peer="auth-2"} 0, after ${down.ms} ms)`)}`)

  step('Write on auth-1 while auth-2 is down: grace logs in, ada switches to the dark theme')
  const grace = await login('auth-1', 'grace', 'hopper')
  check(grace.status === 200 && grace.cookie, `POST auth-1/login as grace → ${grace.status}, a second session`, grace.text)
  const theme = await call('auth-1', 'POST', '/theme', { cookie: ada.cookie, body: { theme: 'dark' } })
  check(theme.status === 200 && theme.json.theme === 'dark', `POST auth-1/theme {"theme":"dark"} with ada's cookie → ${theme.status}, her session changed`, theme.text)
  const onThree = await eventually(async () => {
    const [g, a] = await Promise.all([me('auth-3', grace.cookie), me('auth-3', ada.cookie)])
    return g.status === 200 && a.status === 200 && a.json.theme === 'dark'
  })
  check(onThree.ok, `auth-3 has both changes: grace is logged in, ada's theme is dark ${dim(`(within ${onThree.ms} ms)`)}`)

  step('Restart auth-2 (same ports, empty memory) and let it catch up')
  const t0 = Date.now()
  await start('auth-2', { httpPort: port2, peerPort: peerPort2, seeds: [first.peer] })
  info(`auth-2 is back on ${servers.get('auth-2').url}, holding no session yet; it rejoins through auth-1`)
  const caughtUp = await eventually(async () => {
    const [g, a] = await Promise.all([me('auth-2', grace.cookie), me('auth-2', ada.cookie)])
    return g.status === 200 && a.status === 200 && a.json.theme === 'dark'
  }, 20_000)
  check(caughtUp.ok, `auth-2 caught up: GET auth-2/me knows grace, and ada with her dark theme ${dim(`(${Date.now() - t0} ms after the restart)`)}`)
  const m2 = await metricsOf('auth-2')
  check(
    metric(m2, 'peer_buckets_keys') === 2,
    `auth-2 holds the 2 live sessions ${dim(`(peer_buckets_keys ${metric(m2, 'peer_buckets_keys')}, linked to ${metric(m2, 'peer_buckets_peers_connected')} peers)`)}`,
  )

  step('Log ada out on auth-3')
  const out = await call('auth-3', 'POST', '/logout', { cookie: ada.cookie })
  check(out.status === 200, `POST auth-3/logout with ada's cookie → ${out.status}`, out.text)
  for (const id of IDS) {
    const gone = await eventually(async () => (await me(id, ada.cookie)).status === 401)
    check(gone.ok, `GET ${id}/me with ada's cookie → 401, logged out ${dim(`(within ${gone.ms} ms)`)}`)
  }
  const graceEverywhere = await Promise.all(IDS.map((id) => me(id, grace.cookie)))
  check(graceEverywhere.every((r) => r.status === 200), 'grace is still logged in on all three')

  step('Metrics: GET auth-1/metrics (Prometheus text; every server mounts peer.metrics() there)')
  // Every request above also touched its session (rolling), a small write of its own: wait for the
  // others to acknowledge auth-1's last one.
  const settled = await eventually(async () => {
    const text = await metricsOf('auth-1')
    const ok = metric(text, 'peer_buckets_keys') === 1 && ['auth-2', 'auth-3'].every((p) => metric(text, 'peer_buckets_replication_lag_ops', { peer: p }) === 0)
    return ok && text
  })
  const m1 = settled.value || (await metricsOf('auth-1'))
  const lines = m1.split('\n').filter((l) => /^peer_buckets_(keys|peers_connected|ops_applied_total|replication_lag_ops|peer_connected)[ {]/.test(l))
  for (const line of lines) info(line)
  check(settled.ok, 'one live session (grace), and auth-2 and auth-3 hold every write of auth-1 (replication lag 0)')

  step("Brute force: guess ada's password, spreading the guesses over the three servers")
  info('each server allows 5 failed logins per user name per 15 minutes, counted together (RateLimitStore)')
  const guesses = []
  for (let i = 0; i < 12; i++) {
    guesses.push((await call(IDS[i % 3], 'POST', '/login', { body: { user: 'ada', password: `guess-${i}` } })).status)
  }
  info(`statuses: ${guesses.join(' ')}`)
  check(
    guesses.slice(0, 5).every((s) => s === 401) && guesses.slice(5).every((s) => s === 429),
    'the first 5 guesses were refused as wrong (401), every later one as too many (429), whichever server took it',
  )
  const right = await login('auth-2', 'ada', 'lovelace')
  check(right.status === 429, `even the right password is turned away for now (POST auth-2/login as ada → ${right.status})`)
  const other = await login('auth-3', 'grace', 'hopper')
  check(other.status === 200, `another user is not affected (POST auth-3/login as grace → ${other.status})`)

  console.log(`\n${green(bold('Every step held'))} ${dim(`(${((Date.now() - started) / 1000).toFixed(1)} s)`)}`)
}

function printServe() {
  const url = (id) => servers.get(id).url
  console.log(`\n${bold('--serve: the three servers keep running; Ctrl-C stops them')}`)
  for (const id of IDS) console.log(`   ${id}  ${url(id)}/`)
  console.log(`\n   In a browser: log in on ${url('auth-1')}/ (ada / lovelace), then open the other two: they`)
  console.log('   share the cookie (same host) and the session. With curl:')
  console.log(dim(`   curl -c jar -H 'content-type: application/json' -d '{"user":"ada","password":"lovelace"}' ${url('auth-1')}/login`))
  console.log(dim(`   curl -b jar ${url('auth-2')}/me`))
  console.log(dim(`   curl -b jar -H 'content-type: application/json' -d '{"theme":"dark"}' ${url('auth-3')}/theme`))
  console.log(dim(`   curl -b jar -X POST ${url('auth-2')}/logout`))
  console.log(dim(`   curl ${url('auth-1')}/metrics`))
}

/** Stops every server as an orchestrator does: SIGTERM (a graceful stop), then SIGKILL past `grace` ms. */
async function stopAll(grace = 12_000) {
  await Promise.all(
    [...servers.values()].map(({ child }) => {
      if (child.exitCode !== null || child.signalCode !== null) return undefined
      return new Promise((resolve) => {
        const late = setTimeout(() => child.kill('SIGKILL'), grace)
        child.once('exit', () => {
          clearTimeout(late)
          resolve()
        })
        child.kill('SIGTERM')
      })
    }),
  )
}

function exitAfterStop(code) {
  stopAll().then(() => process.exit(code))
}

// Last resort, if this process exits some other way: nothing can be awaited in 'exit'.
process.on('exit', () => {
  for (const { child } of servers.values()) {
    try {
      child.kill('SIGKILL')
    } catch {}
  }
})
process.on('SIGINT', () => exitAfterStop(0))
process.on('SIGTERM', () => exitAfterStop(0))

main().then(
  () => {
    if (SERVE) return printServe()
    exitAfterStop(0)
  },
  (err) => {
    console.log(`\n${red(bold(`✘ Step ${stepNo} did not hold:`))} ${err.message}`)
    if (!(err instanceof StepFailed)) console.log(err.stack)
    for (const [id, { stderr }] of servers) if (stderr.trim()) console.log(dim(`   ${id} stderr: ${stderr.trim().split('\n').slice(-5).join('\n   ')}`))
    exitAfterStop(1)
  },
)
