// Types for peer-buckets: Peer and SharedBucket.

import { EventEmitter } from 'node:events'

/** Anything JSON can carry. */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue }
/**
 * What a bucket stores: a JSON value, or bytes (a Uint8Array is stored and returned as a Buffer). Other
 * binary views (Int16Array, DataView, ArrayBuffer, ...) throw a TypeError; anything else is stored as
 * `JSON.stringify` writes it (NaN and Infinity as null, a Map or Set as {}, a Date as its ISO string).
 */
export type Value = JsonValue | Buffer | Uint8Array

export interface PeerOptions {
  /** Node id; default a random id. */
  id?: string
  /** 'host:port' or a port number to listen on; default '127.0.0.1:0' (an ephemeral port). */
  listen?: string | number
  /**
   * Seeds: 'ip:port' addresses, ports, or 'host:port' names; the rest of the network is learned from
   * them. A name may resolve to several addresses (a Compose service with replicas, a Kubernetes
   * headless Service): each is dialed, and the name is resolved again every `resolveInterval`.
   */
  peers?: Array<string | number>
  /** How often (ms) host names among `peers` are resolved again; default 30000. */
  resolveInterval?: number
  /**
   * Where this peer's log lines go instead of stderr: pino, winston and console fit. Lines at 'warn'
   * by default (`PEER_BUCKETS_LOG` sets the level), rate-limited.
   */
  logger?: Logger
  /**
   * 'ip:port' the other peers are told to dial (it travels in hellos and member lists) instead of the
   * bound address: for a peer behind NAT, a port forward or a proxy. An IP address, not a name.
   */
  advertise?: string | number
  /**
   * Cluster secret, at least 16 bytes (else a RangeError): links run a Noise handshake bound to it and
   * are encrypted and authenticated; only peers with the same secret are accepted. During a rotation,
   * `[dialWith, alsoAccepted]`. Without it, links are plaintext and open to anyone who reaches the port.
   */
  secret?: string | Buffer | Array<string | Buffer>
  /**
   * Without a secret: the network is trusted, so accept peers from any address. By default a peer
   * without a secret that listens beyond loopback (e.g. '0.0.0.0:7070') refuses peers from other than
   * loopback addresses, with a 'warning' (code 'EINSECURE') saying how to set a secret. Default false;
   * ignored with a secret.
   */
  insecure?: boolean
  /**
   * Keep every bucket on disk in this directory (and reload it at start): the same id comes back with
   * its data and catches up only what it missed. A directory in use fails with EDATADIRINUSE.
   */
  dataDir?: string
  /**
   * With dataDir: 'strict' (default; a write settles once on disk, with group commit) or 'relaxed'
   * (writes settle at once; committed every second).
   */
  durability?: 'strict' | 'relaxed'
  /** Remote clocks further ahead (or behind) than this many ms are refused as links; default 60000. */
  maxClockSkew?: number
  /** Tombstones younger than this many ms are never collected; default 3 × maxClockSkew. */
  tombstoneMinAge?: number
  /** A member unreachable this many ms is forgotten (stops holding up tombstone collection); default 300000. */
  memberTimeout?: number
  /**
   * How many ms a peer remembers the keys of tombstones (and expired values) it collected, so that an
   * older write brought back by a peer that was away meanwhile cannot revive them; default 3600000.
   * A peer away longer than this past a collection loses its old writes to keys nobody else holds.
   */
  rememberCollected?: number
  /**
   * Most buckets this peer holds before it ignores what peers send for new ones (an `ELIMIT`
   * `'warning'`, rate-limited): a member cannot grow every peer's state without bound. Buckets this
   * process opens itself are not limited. A whole number from 1 to 2^32 - 1; default 10000.
   */
  maxBuckets?: number
}

/** A destination for log lines: one method per level, each called with the line. */
export interface Logger {
  error(message: string): unknown
  warn(message: string): unknown
  info(message: string): unknown
  debug(message: string): unknown
}

export interface BucketOptions {
  /** Default time to live of values written to this bucket, in ms (expiry is replicated with the value). */
  ttl?: number
}

/** One register of a key, as `inspect` reports it. */
export interface RegisterInfo {
  /** Hybrid logical timestamp: the packed 64-bit value in decimal (compare with BigInt). */
  hlc: string
  /** Its physical part: ms since the epoch on the writer's clock. */
  time: number
  /** The writer's node id; with its incarnation (hex) and `hlc`, what decides which write wins. */
  origin: string
  incarnation: string
  /** The write's sequence number in its replica (origin and incarnation). */
  seq: number
  /** Absolute expiry in ms since the epoch; 0 for never. */
  expires: number
}

/**
 * The value register of a key (a tombstone when `deleted`; `hlc` '0' when only a touch arrived so far)
 * and the touch register, when a touch is newer than the value.
 */
export interface KeyInfo extends RegisterInfo {
  deleted: boolean
  touch?: RegisterInfo
}

export type AckLevel = 'local' | 'one' | 'majority' | 'all'

export interface WriteOptions {
  /**
   * 'local' (default): applied here. 'one': applied by at least one other peer. 'majority': by a
   * majority of the known members, this one counted. 'all': by every peer connected when the write was
   * made (a peer declared down meanwhile stops counting).
   */
  ack?: AckLevel
  /**
   * Milliseconds to wait for the ack level (default 5000, at most `Number.MAX_SAFE_INTEGER`, else a
   * RangeError); past it the write rejects with EACKTIMEOUT.
   */
  timeout?: number
}

export interface SetOptions extends WriteOptions {
  /** Milliseconds until the key expires on every replica; default the bucket's ttl, else never. */
  ttl?: number
}

export interface ChangeEvent {
  key: string
  /** The new value; undefined when deleted. */
  value: Value | undefined
  deleted: boolean
  /** True when the change was written by this peer (or, for an expiry, applied here). */
  local: boolean
  /** Id of the peer that wrote it. */
  origin: string
  /** Present (true) when the key expired rather than being deleted. */
  expired?: true
}

export interface PeerInfo {
  id: string
  address: string
  state: 'connected' | 'disconnected'
}

export interface PeerEvent {
  id: string
  address: string
}

/**
 * What a `'warning'` is about: EAUTH (a handshake failed on the secret), ESKEW (a clock too far off),
 * EVERSION (another protocol version), EIDCONFLICT (two processes with one id), EDISK (the data
 * directory could not be written), EPROTOCOL (a peer broke the protocol), EINSECURE (an unencrypted
 * connection refused off loopback), EUNREACHABLE (a seed silent for long), ELIMIT (what a peer sent
 * went past a limit of this peer, `maxBuckets`, and was ignored).
 */
export type WarningCode =
  | 'EAUTH'
  | 'ESKEW'
  | 'EVERSION'
  | 'EIDCONFLICT'
  | 'EDISK'
  | 'EPROTOCOL'
  | 'EINSECURE'
  | 'EUNREACHABLE'
  | 'ELIMIT'

/** Something an operator must hear about while the peer keeps serving. */
export interface PeerWarning {
  code: WarningCode
  message: string
  /** The id of the peer it concerns, when known. */
  peer?: string
  /** The address it concerns, when known ('host:port'). */
  address?: string
}

export interface LinkStats {
  id: string
  address: string
  /** Own writes this peer has not acknowledged yet. */
  lagOps: number
  /** How long it has been behind on our writes, in ms (0 when caught up). */
  lagMs: number
  bytesSent: number
  bytesReceived: number
}

export interface PeerStats {
  id: string
  buckets: number
  /** Live keys over all buckets. */
  keys: number
  /** Peers linked now. */
  peers: number
  /**
   * The cluster size `ack: 'majority'` and `'all'` count, this peer included: members known now,
   * members forgotten less than `memberTimeout` ago, and configured seeds (see the README).
   */
  clusterSize: number
  /** Writes applied from other peers. */
  opsApplied: number
  bytesSent: number
  bytesReceived: number
  /** Links refused because the other clock was too far off. */
  clockSkewRefused: number
  /** Requests for missing writes sent to / served for other peers. */
  pullsSent: number
  pullsServed: number
  /** Writes of third peers received while catching up. */
  catchupWritesReceived: number
  /** Links closed for breaking the protocol. */
  protocolErrors: number
  /** Tombstones held now, and dropped so far. */
  tombstones: number
  tombstonesCollected: number
  /** Times this peer found it had missed a collection and resynced in full. */
  fullResyncs: number
  /**
   * Deleted or expired keys remembered after their tombstones were collected (for an hour), so that
   * an older write brought back by a peer that was away meanwhile cannot revive them.
   */
  collectedRemembered: number
  /** Old writes brought back from past a collection that met a stand-in tombstone here instead. */
  standInTombstones: number
  /** Buckets peers asked this peer to create past `maxBuckets`, refused (each also an `ELIMIT` warning, rate-limited). */
  bucketsRefused: number
  /**
   * Connections refused in their handshake: not a peer, another secret or none, malformed, silent; or
   * from the network to a peer without a secret that does not trust it (options.insecure).
   */
  handshakesRejected: number
  /** Accepted connections closed in their handshake to make room for newer ones (a flood). */
  handshakesEvicted: number
  /** Warnings emitted so far, by code (every code present, 0 when none). */
  warnings: Record<WarningCode, number>
  /** Per linked peer. */
  replication: LinkStats[]
  /** Writes made on this peer since it started (sets, deletes and touches). */
  localWrites: number
  /** Writes whose ack level was not met within their timeout (EACKTIMEOUT). */
  ackTimeouts: number
  /**
   * Per ack level, how long writes waited for it, as a histogram: `counts[i]` writes waited at most
   * `leMs[i]` ms; `count` and `sumMs` over all. Writes with nothing to wait for (ack 'local' without a
   * strict dataDir) are not counted.
   */
  ackLatency: Record<'local' | 'one' | 'majority' | 'all', { leMs: number[]; counts: number[]; count: number; sumMs: number }>
  /** Live keys per bucket name. */
  bucketKeys: Record<string, number>
}

/** An error from peer-buckets that carries a code (ECLOSED, EADDRINUSE, EACKTIMEOUT, EDISK, ENOTCONN, EFETCH, ...). */
export interface PeerBucketsError extends Error {
  code: string
  /** With EACKTIMEOUT and EDISK: ids of the other peers that had applied the write. */
  acked?: string[]
}

export type Callback = (err: PeerBucketsError | null) => void

export declare class SharedBucket extends EventEmitter {
  readonly name: string
  /** Writes locally and replicates; settles once the ack level is met. */
  set(key: string, value: Value, options?: SetOptions): Promise<void>
  set(key: string, value: Value, cb: Callback): void
  set(key: string, value: Value, options: SetOptions | undefined, cb: Callback): void
  /** Synchronous read of the local replica; never waits on the network. A fresh copy each time. */
  get(key: string): any
  has(key: string): boolean
  /** Deletes (a tombstone that replicates). */
  delete(key: string, options?: WriteOptions): Promise<void>
  delete(key: string, cb: Callback): void
  delete(key: string, options: WriteOptions | undefined, cb: Callback): void
  /**
   * Extends a live key's expiry to `ttl` ms from now without rewriting its value; resolves false when
   * the key is absent or expired (a touch never brings a key back).
   */
  touch(key: string, ttl: number): Promise<boolean>
  touch(key: string, ttl: number, cb: (err: PeerBucketsError | null, touched?: boolean) => void): void
  /** The bucket's default time to live in ms (0: none). */
  readonly ttl: number
  keys(prefix?: string): string[]
  entries(prefix?: string): Array<[string, any]>
  readonly size: number
  /**
   * What this replica stores for `key`, live or not: the winning write's registers (a tombstone when
   * `deleted`), or undefined when nothing is stored. For debugging and tests; read values with `get`.
   */
  inspect(key: string): KeyInfo | undefined
  /**
   * Asks peer `from` (an id) for its entries under `prefix` and merges them; resolves with how many
   * arrived. Rejects with ENOTCONN when that peer is not connected, and with EFETCH when the link
   * closes before the answer is complete (ask again once it is back).
   */
  fetch(options: { from: string; prefix?: string }): Promise<number>
  on(event: 'change', listener: (event: ChangeEvent) => void): this
  on(event: 'error', listener: (err: Error) => void): this
  on(event: string | symbol, listener: (...args: any[]) => void): this
}

export declare class Peer extends EventEmitter {
  /**
   * Checks the options (a TypeError or RangeError when bad) and returns at once: binding the port,
   * opening and loading the data directory and dialing the seeds happen off the JavaScript thread.
   * Until `ready()` resolves, writes (`set`, `delete`, `touch`, `fetch`) are queued and made in call
   * order once it does (or fail with its error), and synchronous reads (`get`, `has`, `keys`,
   * `entries`, `size`, `inspect`, `peers()`, `stats()`, `metrics()`) throw `code: 'ENOTREADY'`.
   */
  constructor(options?: PeerOptions)
  /** The id given, or a random one; with a `dataDir` and no `id`, the directory's, set once ready. */
  readonly id: string
  /** The 'host:port' actually bound; undefined until ready. */
  readonly address: string
  /** True once close() was called or the peer could not open. */
  readonly closed: boolean
  /**
   * Resolves once the peer listens and its data directory is loaded; rejects with a `code`
   * ('EADDRINUSE', 'EADDRNOTAVAIL', 'EACCES', 'EDATADIRINUSE', 'ESTORAGE', ...) if it cannot. The same
   * error is an 'error' event, thrown as uncaught when nothing listens for it and ready() was not called.
   */
  ready(): Promise<void>
  /** The bucket called name (the same object for the same name). */
  bucket(name: string, options?: BucketOptions): SharedBucket
  peers(): PeerInfo[]
  stats(): PeerStats
  /**
   * Prometheus text exposition (format 0.0.4) of stats() and peers(): counters and gauges named
   * `peer_buckets_*`, per-peer lag as `peer_buckets_replication_lag_ops{peer="id"}` and
   * `peer_buckets_replication_lag_seconds{peer="id"}`. Serve it with the content type
   * `text/plain; version=0.0.4`, e.g. `app.get('/metrics', (req, res) => res.type('text/plain; version=0.0.4').send(peer.metrics()))`.
   */
  metrics(): string
  /**
   * Leaves the network and frees the port and threads, never blocking the event loop. It drains
   * first: this peer's writes made before it go on to the linked peers until each acknowledged them or
   * `timeout` ms pass (default 2000; 0: no wait), and a data directory takes them; then writes still
   * waiting for an ack level fail with ECLOSED. Calls after it fail with ECLOSED. Every call returns
   * the same promise.
   */
  close(options?: CloseOptions): Promise<CloseResult>
  unref(): this
  ref(): this
  on(event: 'peer-up' | 'peer-down', listener: (peer: PeerEvent) => void): this
  /**
   * Misconfiguration and faults the peer survives but an operator must hear about (a peer with another
   * secret, two processes with one id, ...). Rate-limited per code (at most 10 per 10 s); every one is
   * counted in `stats().warnings` and `metrics()` whether delivered or not.
   */
  on(event: 'warning', listener: (warning: PeerWarning) => void): this
  /** Why the peer could not open (the error `ready()` rejects with). */
  on(event: 'error', listener: (err: Error & { code: string }) => void): this
  on(event: string | symbol, listener: (...args: any[]) => void): this
}

export interface CloseOptions {
  /** Milliseconds to wait for linked peers to acknowledge this peer's writes; default 2000. */
  timeout?: number
}

/** What `close()` left undone. */
export interface CloseResult {
  /**
   * Per peer linked at close() that had not acknowledged every write this peer made before it (when
   * the timeout passed, or its link went down first): how many it lacked. `{}` when all got through.
   */
  unacknowledged: Record<string, number>
  /** False when the data directory did not take every write (they stay owed; the next start is not a clean one); true otherwise, and without a data directory. */
  flushed: boolean
}

export interface SessionStoreOptions {
  /** The bucket sessions are kept in, e.g. `peer.bucket('sessions')`. */
  bucket: SharedBucket
  /** Key prefix of the sessions in that bucket; default 'sess:'. */
  prefix?: string
  /**
   * Milliseconds a session lives when its cookie has no expiry (no `maxAge`/`expires`); default the
   * bucket's ttl, else one day. A cookie's expiry always wins.
   */
  ttl?: number
  /**
   * Ack level of session writes and deletes; default 'local'. With 'one', 'majority' or 'all' the
   * response that saved (or destroyed) a session waits until other servers hold it.
   */
  ack?: AckLevel
  /** Milliseconds to wait for that ack level (default 5000); past it the request fails with EACKTIMEOUT. */
  timeout?: number
}

/** A session as stored: what express-session keeps, as JSON. */
export interface StoredSession {
  cookie: { originalMaxAge?: number | null; expires?: string | Date | null; maxAge?: number | null; [key: string]: any }
  [key: string]: any
}

/**
 * An express-session store over a SharedBucket (it extends express-session's `Store`; express-session
 * is loaded on first use of this class). Each session's TTL follows its cookie's expiry, or `ttl` when
 * the cookie has none; reads come from the local replica and never wait on the network. Every method
 * takes an express-session style callback, or returns a promise without one.
 */
export declare class SessionStore extends EventEmitter {
  constructor(options: SessionStoreOptions)
  readonly bucket: SharedBucket
  readonly prefix: string
  /** Milliseconds a session lives when its cookie has no expiry. */
  readonly ttl: number
  /** Milliseconds `session` has to live: its cookie's expires, else its maxAge, else `ttl` (<= 0: expired). */
  ttlFor(session: StoredSession | undefined | null, now?: number): number

  get(sid: string): Promise<StoredSession | undefined>
  get(sid: string, callback: (err: any, session?: StoredSession | null) => void): void
  set(sid: string, session: StoredSession): Promise<void>
  set(sid: string, session: StoredSession, callback: (err?: any) => void): void
  destroy(sid: string): Promise<void>
  destroy(sid: string, callback: (err?: any) => void): void
  /** Extends the session's expiry on every peer without rewriting it; a session that is gone stays gone. */
  touch(sid: string, session: StoredSession): Promise<void>
  touch(sid: string, session: StoredSession, callback: (err?: any) => void): void
  /** Every live session, each with its `id`. */
  all(): Promise<Array<StoredSession & { id: string }>>
  all(callback: (err: any, sessions?: Array<StoredSession & { id: string }> | null) => void): void
  length(): Promise<number>
  length(callback: (err: any, length?: number) => void): void
  ids(): Promise<string[]>
  ids(callback: (err: any, ids?: string[]) => void): void
  clear(): Promise<void>
  clear(callback: (err?: any) => void): void

  // From express-session's Store.
  regenerate(req: any, callback: (err?: any) => any): void
  load(sid: string, callback: (err: any, session?: any) => any): void
  createSession(req: any, session: any): any
}
