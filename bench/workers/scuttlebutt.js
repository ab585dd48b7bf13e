'use strict'
// A scuttlebutt Model replica in its own process, linked to the others over loopback TCP
// (net + model.createStream() piped both ways).

const net = require('node:net')
const Model = require('scuttlebutt/model')
const { serve } = require('./rpc')
const { keys: makeKeys, sessions } = require('../lib/workload')

const now = () => process.hrtime.bigint()
let model = null
let server = null
let synced = 0
let applied = 0 // updates applied (every key is written once, so this is the number of keys held)
let waiter = null
const sockets = []

function link(socket) {
  sockets.push(socket)
  socket.setNoDelay(true)
  const ms = model.createStream()
  ms.on('sync', () => synced++)
  ms.on('error', () => socket.destroy())
  socket.on('error', () => ms.destroy())
  socket.pipe(ms).pipe(socket)
}

serve(
  {
    async open({ id }) {
      model = new Model(id)
      model.on('update', () => {
        applied++
        if (waiter && applied >= waiter.target) {
          const w = waiter
          waiter = null
          w.resolve()
        }
      })
      server = net.createServer(link)
      await new Promise((r) => server.listen(0, '127.0.0.1', r))
      return { port: server.address().port }
    },

    async connect({ ports }) {
      for (const port of ports) {
        const s = net.connect(port, '127.0.0.1')
        await new Promise((resolve, reject) => {
          s.once('connect', resolve)
          s.once('error', reject)
        })
        link(s)
      }
      return true
    },

    async waitPeers({ n, timeoutMs = 10_000 }) {
      const end = Date.now() + timeoutMs
      while (synced < n) {
        if (Date.now() > end) throw new Error(`only ${synced} synced streams after ${timeoutMs} ms`)
        await new Promise((r) => setTimeout(r, 5))
      }
      return true
    },

    async writeAndWait({ start, count, target, timeoutMs = 60_000 }) {
      const keys = makeKeys(start, count)
      const values = sessions(start, count)
      const done = new Promise((resolve) => (waiter = { target, resolve }))
      const t0 = now()
      for (let i = 0; i < count; i++) model.set(keys[i], values[i])
      const tWrote = now()
      if (applied >= target) waiter = null
      else {
        let timer
        await Promise.race([done, new Promise((r) => (timer = setTimeout(r, timeoutMs)))])
        clearTimeout(timer)
      }
      const tDone = now()
      return { ok: applied >= target, t0: String(t0), tWrote: String(tWrote), tDone: String(tDone), size: applied }
    },

    size() {
      return Object.keys(model.store).length
    },
  },
  async () => {
    for (const s of sockets) s.destroy()
    if (server) server.close()
  },
)
