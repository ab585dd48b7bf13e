'use strict'
// The fault-injecting network of a chaos run: one TCP proxy in front of each peer, which every other
// peer dials (each peer advertises its proxy's address, `advertise`, so member lists carry it and no
// link bypasses a proxy). The proxy tells who dialed from the connecting socket's owner (Linux: the
// socket's inode in /proc/net/tcp, found among the peer processes' fds), so every fault applies to an
// ordered pair of peers, whichever end dialed:
//   cut        the connection is closed (and new ones refused) both ways;
//   blackhole  bytes in that direction are accepted and dropped, closes are not passed on; a connection
//              that lost bytes is closed when the direction heals (a stream with a hole is no stream);
//   slow       bytes in that direction are delivered after a delay, in order.

const fs = require('node:fs')
const net = require('node:net')

function hexPort(port) {
  return port.toString(16).toUpperCase().padStart(4, '0')
}

/** The inode of the loopback IPv4 socket bound to `localPort` and connected to `remotePort`. */
function socketInode(localPort, remotePort) {
  let table
  try {
    table = fs.readFileSync('/proc/net/tcp', 'utf8')
  } catch {
    return undefined
  }
  const local = `0100007F:${hexPort(localPort)}`
  const remote = `0100007F:${hexPort(remotePort)}`
  for (const line of table.split('\n')) {
    const f = line.trim().split(/\s+/)
    if (f[1] === local && f[2] === remote) return f[9]
  }
  return undefined
}

function ownsSocket(pid, inode) {
  let fds
  try {
    fds = fs.readdirSync(`/proc/${pid}/fd`)
  } catch {
    return false
  }
  const target = `socket:[${inode}]`
  for (const fd of fds) {
    try {
      if (fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === target) return true
    } catch {}
  }
  return false
}

class Direction {
  constructor(conn, from, to) {
    this.conn = conn
    this.from = from
    this.to = to
    this.queue = [] // { due, chunk }
    this.timer = null
    this.ended = false // the source closed; pass it on once the queue is delivered
  }

  push(chunk) {
    const net = this.conn.net
    const mode = net.mode(this.from, this.to)
    if (mode.drop) {
      this.conn.poisoned = true
      net.stats.droppedBytes += chunk.length
      return
    }
    net.stats.deliveredBytes += chunk.length
    if (mode.delay === 0 && this.queue.length === 0) {
      this.write(chunk)
      return
    }
    this.queue.push({ due: Date.now() + mode.delay, chunk })
    this.schedule()
  }

  write(chunk) {
    const socket = this.conn.socketTo(this.to)
    if (socket && !socket.destroyed) socket.write(chunk)
  }

  schedule() {
    if (this.timer || this.queue.length === 0) return
    this.timer = setTimeout(() => {
      this.timer = null
      const now = Date.now()
      while (this.queue.length && this.queue[0].due <= now) this.write(this.queue.shift().chunk)
      if (this.queue.length) this.schedule()
      else if (this.ended) this.passEnd()
    }, Math.max(0, this.queue[0].due - Date.now()))
  }

  /** The source closed: pass it on after what is queued, unless this direction drops everything. */
  end() {
    this.ended = true
    if (this.conn.net.mode(this.from, this.to).drop) return
    if (this.queue.length === 0) this.passEnd()
  }

  passEnd() {
    this.conn.destroy()
  }

  stop() {
    clearTimeout(this.timer)
    this.timer = null
    this.queue = []
  }
}

class Conn {
  constructor(network, src, dst, client) {
    this.net = network
    this.src = src // who dialed
    this.dst = dst // whose proxy it came through
    this.client = client
    this.up = null // opened at the first byte delivered to dst
    this.poisoned = false
    this.closed = false
    this.toDst = new Direction(this, src, dst)
    this.toSrc = new Direction(this, dst, src)
    client.on('data', (chunk) => this.toDst.push(chunk))
    client.on('end', () => this.toDst.end())
    client.on('error', () => {})
    client.on('close', () => this.toDst.end())
  }

  socketTo(id) {
    if (id === this.src) return this.client
    if (!this.up) {
      const address = this.net.upstream.get(this.dst)
      if (!address) {
        this.destroy()
        return null
      }
      const [host, port] = splitAddress(address)
      this.up = net.connect({ host, port })
      this.up.setNoDelay(true)
      this.up.on('data', (chunk) => this.toSrc.push(chunk))
      this.up.on('end', () => this.toSrc.end())
      this.up.on('error', () => {})
      this.up.on('close', () => this.toSrc.end())
    }
    return this.up
  }

  /** Re-reads the faults: closes the connection if its pair is cut, or if a hole in it healed. */
  refresh() {
    const a = this.net.mode(this.src, this.dst)
    const b = this.net.mode(this.dst, this.src)
    if (a.cut || b.cut) return this.destroy()
    if (this.poisoned && !a.drop && !b.drop) return this.destroy()
    if (!a.drop && this.toDst.ended && this.toDst.queue.length === 0) return this.destroy()
    if (!b.drop && this.toSrc.ended && this.toSrc.queue.length === 0) return this.destroy()
  }

  destroy() {
    if (this.closed) return
    this.closed = true
    this.toDst.stop()
    this.toSrc.stop()
    this.client.destroy()
    if (this.up) this.up.destroy()
    this.net.conns.delete(this)
  }
}

function splitAddress(address) {
  const i = address.lastIndexOf(':')
  return [address.slice(0, i), Number(address.slice(i + 1))]
}

class Network {
  constructor(ids) {
    this.ids = ids
    this.servers = new Map() // id -> net.Server (its ingress proxy)
    this.ingress = new Map() // id -> 'ip:port' of its proxy (what it advertises)
    this.upstream = new Map() // id -> its real listen address while it runs
    this.pids = new Map() // id -> pid of its process while it runs
    this.faults = new Map() // fault id -> fault
    this.conns = new Set()
    this.stats = { accepted: 0, refused: 0, unidentified: 0, deliveredBytes: 0, droppedBytes: 0 }
  }

  async listen() {
    for (const id of this.ids) {
      const server = net.createServer({ noDelay: true }, (socket) => this.accept(id, socket))
      await new Promise((resolve, reject) => {
        server.once('error', reject)
        server.listen(0, '127.0.0.1', resolve)
      })
      this.servers.set(id, server)
      this.ingress.set(id, `127.0.0.1:${server.address().port}`)
    }
  }

  /** Who dialed: the peer process that owns the other end of `socket`. */
  identify(socket) {
    const inode = socketInode(socket.remotePort, socket.localPort)
    if (!inode || inode === '0') return undefined
    for (const [id, pid] of this.pids) if (ownsSocket(pid, inode)) return id
    return undefined
  }

  accept(dst, socket) {
    socket.setNoDelay(true)
    socket.on('error', () => {})
    const src = this.identify(socket)
    if (!src) {
      this.stats.unidentified++
      socket.destroy()
      return
    }
    if (!this.upstream.has(dst) || this.mode(src, dst).cut || this.mode(dst, src).cut) {
      this.stats.refused++
      socket.resetAndDestroy()
      return
    }
    this.stats.accepted++
    this.conns.add(new Conn(this, src, dst, socket))
  }

  /** Peer `id` runs (listening on `address`, as process `pid`), or is down (`address` null). */
  setPeer(id, address, pid) {
    if (address) {
      this.upstream.set(id, address)
      this.pids.set(id, pid)
    } else {
      this.upstream.delete(id)
      this.pids.delete(id)
      for (const c of [...this.conns]) if (c.dst === id || c.src === id) c.destroy()
    }
  }

  /** What happens to bytes from `a` to `b` under the faults in force. */
  mode(a, b) {
    let cut = false
    let drop = false
    let delay = 0
    for (const f of this.faults.values()) {
      if (f.kind === 'partition' || f.kind === 'bridge') {
        const ga = f.groups.findIndex((g) => g.includes(a))
        const gb = f.groups.findIndex((g) => g.includes(b))
        if (ga >= 0 && gb >= 0 && ga !== gb) {
          if (f.mode === 'cut') cut = true
          else drop = true
        }
      } else if (f.kind === 'asym') {
        if (f.pairs.some(([x, y]) => x === a && y === b)) drop = true
      } else if (f.kind === 'slow') {
        if (f.pairs.some(([x, y]) => x === a && y === b)) delay = Math.max(delay, f.delayMs)
      }
    }
    return { cut, drop, delay }
  }

  apply(fault) {
    this.faults.set(fault.fault, fault)
    this.refresh()
  }

  heal(faultId) {
    this.faults.delete(faultId)
    this.refresh()
  }

  healAll() {
    this.faults.clear()
    this.refresh()
  }

  refresh() {
    for (const c of [...this.conns]) c.refresh()
  }

  async close() {
    for (const c of [...this.conns]) c.destroy()
    await Promise.all([...this.servers.values()].map((s) => new Promise((resolve) => s.close(resolve))))
  }
}

module.exports = { Network }
