'use strict'
// A small Express auth app over a SessionStore, used by the session suite in the jest process (server
// A) and in a child process (fixtures/session-server.js, server B). It counts the store calls
// express-session makes, so a test can tell a touch from a save.

const path = require('node:path')
const express = require('express')
const session = require('express-session')
const { SessionStore } = require(path.join(__dirname, '..', '..'))

const SECRET = 'session-suite secret, the same on every server'

/**
 * options: { bucket, name, maxAge (cookie ms; undefined: a browser-session cookie), rolling, resave,
 *   userIndex (index sessions by their user: userOf = session.user), store: further SessionStore options }
 * Returns { app, store, calls }.
 */
function createSessionApp({ bucket, name, maxAge, rolling = false, resave = false, userIndex = false, store: storeOptions = {} }) {
  const store = new SessionStore({ bucket, ...(userIndex ? { userOf: (s) => s.user } : {}), ...storeOptions })
  const calls = { get: 0, set: 0, touch: 0, destroy: 0 }
  for (const method of Object.keys(calls)) {
    const original = store[method].bind(store)
    store[method] = (...args) => {
      calls[method]++
      return original(...args)
    }
  }
  const app = express()
  app.use(express.json())
  app.use(
    session({
      store,
      secret: SECRET,
      resave,
      rolling,
      saveUninitialized: false,
      cookie: maxAge === undefined ? {} : { maxAge },
    }),
  )
  app.post('/login', (req, res, next) => {
    req.session.regenerate((err) => {
      if (err) return next(err)
      req.session.user = req.body.user
      req.session.loggedInOn = name
      res.json({ user: req.body.user, server: name })
    })
  })
  app.get('/me', (req, res) => {
    if (!req.session.user) return res.status(401).json({ error: 'not logged in', server: name })
    res.json({ user: req.session.user, loggedInOn: req.session.loggedInOn, visits: req.session.visits || 0, server: name })
  })
  app.post('/visit', (req, res) => {
    if (!req.session.user) return res.status(401).json({ error: 'not logged in', server: name })
    req.session.visits = (req.session.visits || 0) + 1
    res.json({ visits: req.session.visits, server: name })
  })
  app.post('/logout', (req, res, next) => {
    req.session.destroy((err) => (err ? next(err) : res.json({ loggedOut: true, server: name })))
  })
  return { app, store, calls }
}

module.exports = { createSessionApp, SECRET }
