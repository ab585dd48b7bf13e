'use strict'
// One Express auth server of the demo (`npm run demo` starts three). Its login sessions live in a
// peer-buckets SessionStore, so a cookie set by any server of the network is recognised by every other.
//
// Configuration (environment):
//   AUTH_ID        server and peer id (default: the host name, a container's or pod's own)
//   AUTH_HTTP      HTTP 'host:port' (default 127.0.0.1:0, an ephemeral port)
//   AUTH_PEER      peer-buckets 'host:port' (default 127.0.0.1:0)
//   AUTH_SEEDS     comma-separated peer addresses, or host names resolving to them (a Compose
//                  service, a Kubernetes headless Service), to join (default none: the first server)
//   AUTH_SERVERS   comma-separated 'id=url' of all the servers, for the links on the home page
//   PEER_SECRET    cluster secret (at least 16 bytes): peer links are authenticated and encrypted
//
// Routes:
//   GET  /          a small page: who you are here, a login form, links to the other servers
//   POST /login     { user, password } (JSON or a form): starts a session; at most 5 failed logins per
//                   user name per 15 minutes, counted by all the servers together (429 past them)
//   GET  /me        200 { user, theme, ... } with a session, 401 without
//   POST /theme     { theme }: changes the session (a write that replicates)
//   POST /logout    ends the session on every server
//   GET  /metrics   peer.metrics(): Prometheus text
//   GET  /slow?ms=N answers after N ms (at most 30000): a request in flight, to watch a graceful stop
//
// SIGTERM (or SIGINT) stops it gracefully: no new HTTP connections, requests in flight finish (up to
// 10 s), the peer closes (leaving the network, its writes handed over), then exit 0.

const http = require('node:http')
const express = require('express')
const session = require('express-session')
const { rateLimit } = require('express-rate-limit')
const { Peer, SessionStore, RateLimitStore } = require('..')

const id = process.env.AUTH_ID || require('node:os').hostname()
const [httpHost, httpPort] = splitAddress(process.env.AUTH_HTTP || '127.0.0.1:0')
const seeds = (process.env.AUTH_SEEDS || '').split(',').filter(Boolean)
const servers = (process.env.AUTH_SERVERS || '')
  .split(',')
  .filter(Boolean)
  .map((entry) => entry.split('='))

// The demo's accounts (a real server checks a password hash in a database).
const USERS = { ada: 'lovelace', grace: 'hopper', alan: 'turing' }

function splitAddress(address) {
  const at = address.lastIndexOf(':')
  return [address.slice(0, at), Number(address.slice(at + 1))]
}

function send(message) {
  if (process.send && process.connected) process.send(message)
}

async function main() {
  const peer = new Peer({
    id,
    listen: process.env.AUTH_PEER || '127.0.0.1:0',
    peers: seeds,
    secret: process.env.PEER_SECRET || undefined,
  })
  await peer.ready()
  for (const event of ['peer-up', 'peer-down']) peer.on(event, (p) => send({ type: event, peer: p.id }))

  const app = express()
  app.use(express.json())
  app.use(express.urlencoded({ extended: false }))
  app.use(
    session({
      name: 'demo.sid',
      store: new SessionStore({ bucket: peer.bucket('sessions') }),
      secret: 'demo only: use a long random secret, the same on every server',
      resave: false,
      saveUninitialized: false,
      rolling: true, // every response extends the session (through store.touch) and the cookie
      cookie: { maxAge: 30 * 60 * 1000, httpOnly: true, sameSite: 'lax' },
    }),
  )

  const fromBrowser = (req) => req.is('application/x-www-form-urlencoded')
  const whoAmI = (req) => ({
    user: req.session.user,
    theme: req.session.theme || 'light',
    loggedInOn: req.session.loggedInOn,
    loggedInAt: req.session.loggedInAt,
    server: id,
  })

  // Failed logins per user name, in a counter every server shares: guesses spread over the servers
  // meet one limit. A successful login takes its attempt back.
  const loginLimit = rateLimit({
    windowMs: 15 * 60 * 1000,
    limit: 5,
    store: new RateLimitStore({ peer, prefix: 'login:' }),
    keyGenerator: (req) => String((req.body && req.body.user) || ''),
    skipSuccessfulRequests: true,
    message: { error: 'too many failed logins for this user: try again later', server: id },
  })

  app.post('/login', loginLimit, (req, res, next) => {
    const { user, password } = req.body || {}
    if (!user || USERS[user] !== password) {
      if (fromBrowser(req)) return res.redirect(303, '/?error=login')
      return res.status(401).json({ error: 'unknown user or wrong password', server: id })
    }
    // A new session id at login, so a session fixed before it is worth nothing.
    req.session.regenerate((err) => {
      if (err) return next(err)
      req.session.user = user
      req.session.loggedInOn = id
      req.session.loggedInAt = new Date().toISOString()
      if (fromBrowser(req)) return res.redirect(303, '/')
      res.json(whoAmI(req))
    })
  })

  app.get('/me', (req, res) => {
    if (!req.session.user) return res.status(401).json({ error: 'not logged in', server: id })
    res.json(whoAmI(req))
  })

  app.post('/theme', (req, res) => {
    if (!req.session.user) return res.status(401).json({ error: 'not logged in', server: id })
    const theme = (req.body && req.body.theme) === 'dark' ? 'dark' : 'light'
    req.session.theme = theme
    if (fromBrowser(req)) return res.redirect(303, '/')
    res.json(whoAmI(req))
  })

  app.post('/logout', (req, res, next) => {
    req.session.destroy((err) => {
      if (err) return next(err)
      res.clearCookie('demo.sid')
      if (fromBrowser(req)) return res.redirect(303, '/')
      res.json({ loggedOut: true, server: id })
    })
  })

  app.get('/metrics', (req, res) => {
    res.type('text/plain; version=0.0.4; charset=utf-8').send(peer.metrics())
  })

  app.get('/slow', (req, res) => {
    const ms = Math.min(Math.max(Number(req.query.ms) || 0, 0), 30_000)
    setTimeout(() => res.json({ waited: ms, server: id }), ms)
  })

  app.get('/', (req, res) => res.type('html').send(page(req, whoAmI(req))))

  const server = http.createServer(app)
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(httpPort, httpHost, resolve)
  })
  const url = `http://${httpHost}:${server.address().port}`

  // Graceful stop: refuse new connections, let requests in flight finish (idle keep-alive connections
  // are closed now, busy ones once their response is sent), then close the peer and exit.
  let stopping
  const stop = () => {
    stopping ??= (async () => {
      const drained = new Promise((resolve) => server.close(resolve))
      server.closeIdleConnections()
      const late = setTimeout(() => server.closeAllConnections(), 10_000)
      await drained
      clearTimeout(late)
      await peer.close({ timeout: 5_000 })
      process.exit(0)
    })()
    return stopping
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  process.on('disconnect', stop) // the demo that started us is gone

  send({ type: 'ready', id, url, peer: peer.address })
  if (!process.send) console.log(`${id}: ${url} (peer-buckets on ${peer.address})`)
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c])
}

function page(req, me) {
  const dark = me.theme === 'dark'
  const others = servers
    .map(([name, url]) => (name === id ? `<b>${escapeHtml(name)}</b>` : `<a href="${escapeHtml(url)}/">${escapeHtml(name)}</a>`))
    .join(' · ')
  const body = me.user
    ? `<p>Logged in as <b>${escapeHtml(me.user)}</b> (on ${escapeHtml(me.loggedInOn)}, ${escapeHtml(me.loggedInAt)}).</p>
       <form method="post" action="/theme"><input type="hidden" name="theme" value="${dark ? 'light' : 'dark'}">
         <button>Switch to the ${dark ? 'light' : 'dark'} theme</button></form>
       <form method="post" action="/logout"><button>Log out (everywhere)</button></form>`
    : `<p>Not logged in.${req.query.error ? ' <b>Unknown user or wrong password.</b>' : ''}</p>
       <form method="post" action="/login">
         <input name="user" placeholder="user" value="ada"> <input name="password" type="password" placeholder="password" value="lovelace">
         <button>Log in</button></form>
       <p><small>Accounts: ada / lovelace, grace / hopper, alan / turing.</small></p>`
  return `<!doctype html><meta charset="utf-8"><title>${escapeHtml(id)}</title>
<style>body{font:16px system-ui,sans-serif;max-width:40em;margin:2em auto;padding:0 1em;${dark ? 'background:#1d1f21;color:#e0e0e0' : ''}}
a{color:${dark ? '#8ab4f8' : '#1a0dab'}}form{display:inline-block;margin-right:1em}</style>
<h1>${escapeHtml(id)}</h1>
<p>One of three Express servers sharing their sessions through peer-buckets. Servers: ${others}</p>
${body}
<p><small><a href="/me">/me</a> · <a href="/metrics">/metrics</a></small></p>`
}

main().catch((err) => {
  send({ type: 'fatal', message: err.message, code: err.code })
  console.error(`${id}: ${err.message}`)
  process.exit(1)
})
