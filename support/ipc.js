'use strict'
// Request and reply over the IPC channel of a forked child process, shared by the jest suites, the
// chaos harness and the bench (none of it ships in the package). It owns the message shapes:
//
//   parent -> child  { type: 'request', rid, cmd, args }
//   child -> parent  { type: 'reply', rid, result } or { type: 'reply', rid, error: { name, message,
//                    code, acked, stack } }; anything else the child sends ('ready', 'event', ...) is
//                    the caller's, handed to `onMessage`.
//
// Invariants: every request settles exactly once: with its reply, after its timeout, or when the
// child exits (each pending request then fails naming the command and how the child ended); a reply
// after that is dropped. A child whose parent goes away exits (no orphaned peers or workers).

/** The parent's end of one child's channel. */
class Channel {
  /**
   * @param {import('node:child_process').ChildProcess} child a process forked with an 'ipc' stdio slot
   * @param {object} options
   * @param {string} options.name how errors name the child
   * @param {(msg: object) => void} [options.onMessage] receives every message that is not a reply
   * @param {() => string} [options.describeExit] more to say when the child exits with requests pending
   *   (e.g. its stderr)
   */
  constructor(child, { name, onMessage, describeExit }) {
    this.child = child
    this.name = name
    this.nextRid = 1
    this.pending = new Map() // rid -> { cmd, resolve, reject, timer }
    this.exited = false
    child.on('message', (msg) => {
      if (!msg || typeof msg !== 'object') return
      if (msg.type === 'reply') this.#settle(msg)
      else if (onMessage) onMessage(msg)
    })
    child.on('error', () => {}) // e.g. EPIPE on a send to a dead child: surfaced by exit or the timeout
    child.once('exit', (code, signal) => {
      this.exited = true
      const more = describeExit ? `; ${describeExit()}` : ''
      for (const p of this.pending.values()) {
        clearTimeout(p.timer)
        p.reject(new Error(`${name} exited (code ${code}, signal ${signal}) during '${p.cmd}'${more}`))
      }
      this.pending.clear()
    })
  }

  /** Sends `cmd` with `args`; resolves with the child's result, rejects with its error or after `timeout` ms. */
  request(cmd, args = {}, timeout = 30_000) {
    if (this.exited || !this.child.connected) return Promise.reject(new Error(`${this.name} is not running; cannot send '${cmd}'`))
    const rid = this.nextRid++
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(rid)
        reject(new Error(`${this.name}: '${cmd}' did not answer within ${timeout} ms`))
      }, timeout)
      this.pending.set(rid, { cmd, resolve, reject, timer })
      this.child.send({ type: 'request', rid, cmd, args }, (err) => {
        const p = this.pending.get(rid)
        if (err && p) {
          this.pending.delete(rid)
          clearTimeout(p.timer)
          reject(err)
        }
      })
    })
  }

  #settle(msg) {
    const p = this.pending.get(msg.rid)
    if (!p) return
    this.pending.delete(msg.rid)
    clearTimeout(p.timer)
    if (!msg.error) return p.resolve(msg.result)
    const err = new Error(`${this.name}: ${msg.error.message}`)
    err.code = msg.error.code
    err.remoteName = msg.error.name
    err.remoteStack = msg.error.stack
    if (msg.error.acked) err.acked = msg.error.acked
    p.reject(err)
  }
}

/** Sends `message` to the parent, if it is still there. */
function send(message) {
  if (process.connected) process.send(message)
}

/** An error as it crosses the channel: what the parent needs to re-create and report it. */
function errorReply(err) {
  const out = { name: err && err.name, message: String((err && err.message) || err), code: err && err.code }
  if (err && Array.isArray(err.acked)) out.acked = err.acked
  if (err && err.stack) out.stack = err.stack
  return out
}

let exitsWithParent = false

/** Makes this child exit when its parent goes away (call it first thing: a start can be slow). */
function exitWithParent() {
  if (exitsWithParent) return
  exitsWithParent = true
  process.on('disconnect', () => process.exit(0))
}

/**
 * The child's end: answers each request with `handlers[cmd](args)` (sync or async; undefined goes back
 * as null). The child exits when its parent goes away.
 */
function serve(handlers) {
  exitWithParent()
  process.on('message', async (msg) => {
    if (!msg || typeof msg !== 'object' || msg.type !== 'request') return
    const { rid, cmd, args } = msg
    try {
      const handler = Object.hasOwn(handlers, cmd) ? handlers[cmd] : undefined
      if (!handler) throw new Error(`unknown command '${cmd}'`)
      const result = await handler(args || {})
      send({ type: 'reply', rid, result: result === undefined ? null : result })
    } catch (err) {
      send({ type: 'reply', rid, error: errorReply(err) })
    }
  })
}

module.exports = { Channel, serve, send, errorReply, exitWithParent }
