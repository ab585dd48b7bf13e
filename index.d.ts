// Types for peer-buckets: Peer, SharedBucket<T> and SessionStore.

import { EventEmitter } from 'node:events'
import type { SessionData, Store } from 'express-session'

/** Anything JSON can carry. */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue }
/**
 * What a bucket stores: a JSON value, or bytes (a Uint8Array is stored and returned as a Buffer). Other
 * binary views (Int16Array, DataView, ArrayBuffer, ...) throw a TypeError; anything else is stored as
 * `JSON.stringify` writes it (NaN and Infinity as null, a Map or Set as {}, a Date as its ISO string).
 */
export type Value = JsonValue | Buffer | Uint8Array

/**
 * A type a bucket can hold and give back as itself: JSON-shaped (interfaces and type aliases alike,
 * optional fields included) or bytes. A function, symbol, bigint, undefined, Date or class instance
 * with methods anywhere in it makes `Storable<T>` refuse T: none comes back from `get` as itself (a Date
 * comes back as its ISO string: declare the field `string` and write the Date, see `Writable`).
 */
export type Storable<T> = T extends string | number | boolean | null | Buffer | Uint8Array
  ? T
  : T extends Function | symbol | bigint | undefined
    ? never
    : T extends ReadonlyArray<infer U>
      ? ReadonlyArray<Storable<U>>
      : { [K in keyof T]: Storable<T[K]> }

/**
 * What a write takes for a stored T: T itself, with a Date accepted wherever T has a string (JSON
 * writes a Date as its ISO string, which is what `get` gives back).
 */
export type Writable<T> = T extends string
  ? T | Date
  : T extends Buffer | Uint8Array
    ? T
    : T extends ReadonlyArray<infer U>
      ? ReadonlyArray<Writable<U>>
      : T extends object
        ? { [K in keyof T]: Writable<T[K]> }
        : T

/** For a bucket whose type is not given: any value JSON carries, interfaces and Dates included. */
export type AnyWritable<V> = V extends string | number | boolean | null | Buffer | Uint8Array | Date
  ? V
  : V extends Function | symbol | bigint | undefined
    ? never
    : V extends ReadonlyArray<infer U>
      ? ReadonlyArray<AnyWritable<U>>
      : { [K in keyof V]: AnyWritable<V[K]> }

type IsAny<T> = 0 extends 1 & T ? true : false
/** The value a write of `SharedBucket<T>` takes, for the argument `V` it was given. */
export type WriteValue<T, V> = IsAny<T> extends true ? AnyWritable<V> : Writable<T>

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
   * With a secret: ids pinned to their key, `{ [id]: publicKey }` (another peer's `peer.publicKey`, 64
   * hex digits). A pinned id links only with that key; any other is refused (`EAUTH`). Ids not listed
   * are bound to the first key they prove, strictly while one of their links is up; a new key for an
   * id whose links are all down (a restart without dataDir) replaces it, with an `EIDKEY` warning.
   * Not an object, or without a secret: TypeError; an empty or too long id, or a key that is not 64
   * hex digits: RangeError.
   */
  peerKeys?: Record<string, string>
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
  /**
   * Send frames compressed (LZ4) where that makes them shorter; default true. `false` sends every
   * frame as it is (compressed frames from peers are read either way): a compressed length can tell
   * an eavesdropper how alike a value it chose is to others sent in the same frame.
   */
  compression?: boolean
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
  /**
   * What `get` returns for a JSON value: `'fresh'` (default), a new object each time; `'frozen'`, one
   * deeply frozen object per key, the same until the key changes (no JSON.parse per get).
   */
  reads?: 'fresh' | 'frozen'
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

export interface ChangeEvent<T = any> {
  key: string
  /** The new value; undefined when deleted. */
  value: T | undefined
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
 * went past a limit of this peer, `maxBuckets`, and was ignored), EIDKEY (a peer id none of whose
 * links was up came back with a new key: a restart without dataDir, or a member taking its id),
 * EDIVERGED (this peer and a linked one stored different writes under equal contexts, and a repair
 * from that peer changed what this peer stores).
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
  | 'EIDKEY'
  | 'EDIVERGED'

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
  /** Bytes sent to this peer over its current link, as they went on the wire (compressed where that paid). */
  bytesSent: number
  /** Bytes received from this peer over its current link, as they came on the wire. */
  bytesReceived: number
  /** The bytes of `bytesSent` as they were before compression: equal to it with nothing compressed. */
  bytesSentUncompressed: number
  /** The bytes of `bytesReceived` as they were after inflation. */
  bytesReceivedUncompressed: number
  /** Answers (fetch, pull and held replies) queued for this peer and not yet sent, in bytes. */
  sendQueueBytes: number
  /** Writes that arrived from this peer over its current link, applied or already held. */
  writesReceived: number
  /** Time spent applying them (store, journal, change events queued), in ms. */
  applyMs: number
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
  /**
   * Anti-entropy: buckets found storing other writes than a linked peer under equal contexts (each
   * repaired from that peer), repairs done, and repairs that changed what this peer stores (each an
   * `EDIVERGED` warning; none in a cluster of honest peers).
   */
  divergences: number
  repairs: number
  repairsChanged: number
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
  /**
   * The longest the event loop was blocked (ms) since this peer was made, and over the last 10 to 20
   * s, as a timer every 10 ms sees it: any code in the process counts, this package's and the app's.
   */
  eventLoopDelayMaxMs: number
  eventLoopDelayRecentMs: number
}

/** An error from peer-buckets that carries a code (ECLOSED, EADDRINUSE, EACKTIMEOUT, EDISK, ENOTCONN, EFETCH, ...). */
export interface PeerBucketsError extends Error {
  code: string
  /** With EACKTIMEOUT and EDISK: ids of the other peers that had applied the write. */
  acked?: string[]
}

export type Callback = (err: PeerBucketsError | null) => void

/** The events of a `SharedBucket<T>`, by name. */
export interface BucketEvents<T> {
  change: [event: ChangeEvent<T>]
  error: [err: Error]
}

/** One page of `scan`: the entries (or keys, with `keysOnly`) and the cursor of the next page, null at the end. */
export interface ScanPage<T> {
  entries: Array<[string, T]>
  cursor: string | null
}
export interface ScanKeysPage {
  keys: string[]
  cursor: string | null
}
export interface ScanOptions {
  /** Only keys starting with it. */
  prefix?: string
  /** The cursor a previous page returned; null or absent to start. */
  cursor?: string | null
  /** Most entries in the page, 1 to 100000; default 100. A page may hold fewer, even none, before the end. */
  limit?: number
}

/**
 * A named bucket, shared by every peer that opens it. `T` is the type of its values (`peer.bucket<T>(name)`);
 * without it values are `any`.
 */
export declare class SharedBucket<T = any> extends EventEmitter {
  readonly name: string
  /** The Peer this bucket belongs to. */
  readonly peer: Peer
  /** Writes locally and replicates; settles once the ack level is met. */
  set<V>(key: string, value: V & WriteValue<T, V>, options?: SetOptions): Promise<void>
  set<V>(key: string, value: V & WriteValue<T, V>, cb: Callback): void
  set<V>(key: string, value: V & WriteValue<T, V>, options: SetOptions | undefined, cb: Callback): void
  /** Synchronous read of the local replica; never waits on the network. A fresh copy each time. */
  get(key: string): T | undefined
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
  /** Milliseconds until `key` expires: Infinity when it never does, undefined when it is absent. */
  ttl(key: string): number | undefined
  /** The bucket's default time to live in ms (0: none), set with `peer.bucket(name, { ttl })`. */
  readonly defaultTtl: number
  /** How `get` hands out JSON values: `'fresh'` or `'frozen'` (see `BucketOptions.reads`). */
  readonly reads: 'fresh' | 'frozen'
  keys(prefix?: string): string[]
  entries(prefix?: string): Array<[string, T]>
  /** The live values under `prefix`. */
  values(prefix?: string): T[]
  /** The live entries, read a page at a time. */
  [Symbol.iterator](): Iterator<[string, T]>
  readonly size: number
  /**
   * How many live keys start with `prefix`, counted in place (no array is built), in one call: the
   * event loop is held for the whole count (see countAsync).
   */
  count(prefix?: string): number
  /**
   * The same count a page of keys at a time, with a turn of the event loop between pages: no call holds
   * the loop for more than a page. Keys live from the first page to the last count once; a key written
   * or deleted meanwhile may or may not.
   */
  countAsync(prefix?: string): Promise<number>
  countAsync(cb: (err: PeerBucketsError | null, count?: number) => void): void
  countAsync(prefix: string | undefined, cb: (err: PeerBucketsError | null, count?: number) => void): void
  /**
   * One page of the live entries under `prefix`. Every key live from the first page to the last is
   * returned exactly once, however the bucket grows meanwhile; no key comes twice.
   */
  scan(options?: ScanOptions & { keysOnly?: false }): ScanPage<T>
  scan(options: ScanOptions & { keysOnly: true }): ScanKeysPage
  /**
   * Writes every `[key, value]` with the same options; settles once, when all met the ack level. Every
   * entry is checked before the first write: a call that throws wrote nothing.
   */
  setMany<V>(entries: Iterable<readonly [string, V & WriteValue<T, V>]>, options?: SetOptions): Promise<void>
  setMany<V>(entries: Iterable<readonly [string, V & WriteValue<T, V>]>, cb: Callback): void
  setMany<V>(entries: Iterable<readonly [string, V & WriteValue<T, V>]>, options: SetOptions | undefined, cb: Callback): void
  /** Deletes every live key under `prefix`; settles once, with how many were deleted. */
  deletePrefix(prefix: string, options?: WriteOptions): Promise<number>
  deletePrefix(prefix: string, cb: (err: PeerBucketsError | null, deleted?: number) => void): void
  deletePrefix(prefix: string, options: WriteOptions | undefined, cb: (err: PeerBucketsError | null, deleted?: number) => void): void
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
  // Events by name only: a name that is not one of them (a typo) does not compile.
  on<E extends keyof BucketEvents<T>>(event: E, listener: (...args: BucketEvents<T>[E]) => void): this
  once<E extends keyof BucketEvents<T>>(event: E, listener: (...args: BucketEvents<T>[E]) => void): this
  off<E extends keyof BucketEvents<T>>(event: E, listener: (...args: BucketEvents<T>[E]) => void): this
  addListener<E extends keyof BucketEvents<T>>(event: E, listener: (...args: BucketEvents<T>[E]) => void): this
  removeListener<E extends keyof BucketEvents<T>>(event: E, listener: (...args: BucketEvents<T>[E]) => void): this
  prependListener<E extends keyof BucketEvents<T>>(event: E, listener: (...args: BucketEvents<T>[E]) => void): this
  prependOnceListener<E extends keyof BucketEvents<T>>(event: E, listener: (...args: BucketEvents<T>[E]) => void): this
}

/** The events of a Peer, by name. */
export interface PeerEvents {
  'peer-up': [peer: PeerEvent]
  'peer-down': [peer: PeerEvent]
  /**
   * Misconfiguration and faults the peer survives but an operator must hear about (a peer with another
   * secret, two processes with one id, ...). Rate-limited per code (at most 10 per 10 s); every one is
   * counted in `stats().warnings` and `metrics()` whether delivered or not.
   */
  warning: [warning: PeerWarning]
  /** close() was called. */
  close: []
  /** Why the peer could not open (the error `ready()` rejects with). */
  error: [err: PeerBucketsError]
}

export interface CounterOptions {
  /**
   * Milliseconds of a window: the first increment of a key with no live window opens one ending this
   * long after it, at the same absolute time on every replica; after it ends the count restarts.
   * Default: none (a key counts forever).
   */
  ttl?: number
}

export interface CounterWriteOptions extends WriteOptions {
  /** The window to open if the key has none live; default the counter's ttl. */
  ttl?: number
}

export interface CounterChangeEvent {
  key: string
  /** The merged value of the key here after the change (0 when nothing counts). */
  value: number
  /** True when the change was made by this peer (or, for a window's end, applied here). */
  local: boolean
  /** Id of the peer that made it. */
  origin: string
}

export type CounterCallback = (err: PeerBucketsError | null, value?: number) => void

/** The events of a `SharedCounter`, by name. */
export interface CounterEvents {
  change: [event: CounterChangeEvent]
  error: [err: Error]
}

/**
 * A counter whose increments merge (a CRDT): every increment counts exactly once on every replica,
 * concurrent ones included. See the README's Counters section for the rules.
 */
export declare class SharedCounter extends EventEmitter {
  readonly name: string
  /** Adds `by` (default 1); resolves with the value seen here after it, once the ack level is met. It
   * is applied here even when the ack wait fails: the error (`EACKTIMEOUT`, `EDISK`) then carries that
   * value as `value`. */
  incr(key: string, by?: number, options?: CounterWriteOptions): Promise<number>
  incr(key: string, options: CounterWriteOptions): Promise<number>
  incr(key: string, cb: CounterCallback): void
  incr(key: string, by: number, cb: CounterCallback): void
  incr(key: string, by: number, options: CounterWriteOptions | undefined, cb: CounterCallback): void
  /** Subtracts `by` (default 1); resolves with the value seen here after it. */
  decr(key: string, by?: number, options?: CounterWriteOptions): Promise<number>
  decr(key: string, options: CounterWriteOptions): Promise<number>
  decr(key: string, cb: CounterCallback): void
  decr(key: string, by: number, cb: CounterCallback): void
  decr(key: string, by: number, options: CounterWriteOptions | undefined, cb: CounterCallback): void
  /** The value here, synchronously: 0 when absent. */
  get(key: string): number
  /** Clears the increments seen here, on every replica; increments concurrent with it stay. */
  reset(key: string, options?: WriteOptions): Promise<void>
  reset(key: string, cb: Callback): void
  reset(key: string, options: WriteOptions | undefined, cb: Callback): void
  /** When the window new increments of `key` join ends (ms since the epoch); undefined without one. */
  expiresAt(key: string): number | undefined
  /** Keys (optionally under `prefix`) whose value is not 0. */
  keys(prefix?: string): string[]
  /** How many keys have a value other than 0. */
  readonly size: number
  /** The counter's default window in ms (0: none). */
  readonly ttl: number
  // Events by name only: a name that is not one of them (a typo) does not compile.
  on<E extends keyof CounterEvents>(event: E, listener: (...args: CounterEvents[E]) => void): this
  once<E extends keyof CounterEvents>(event: E, listener: (...args: CounterEvents[E]) => void): this
  off<E extends keyof CounterEvents>(event: E, listener: (...args: CounterEvents[E]) => void): this
  addListener<E extends keyof CounterEvents>(event: E, listener: (...args: CounterEvents[E]) => void): this
  removeListener<E extends keyof CounterEvents>(event: E, listener: (...args: CounterEvents[E]) => void): this
  prependListener<E extends keyof CounterEvents>(event: E, listener: (...args: CounterEvents[E]) => void): this
  prependOnceListener<E extends keyof CounterEvents>(event: E, listener: (...args: CounterEvents[E]) => void): this
}

export interface RateLimitStoreOptions {
  peer: Peer
  /** Put before every client key (default 'rl:'). */
  prefix?: string
  /** The counter's name (default 'rate-limit'). */
  counter?: string
  /** What an increment waits for (default 'all': every connected peer), up to `timeout`. */
  ack?: AckLevel
  /** Milliseconds an increment waits for `ack` (default 1000); past it the count seen here is used. */
  timeout?: number
}

/** An express-rate-limit (v7 and later) store whose counts every server of the network shares. */
export declare class RateLimitStore {
  constructor(options: RateLimitStoreOptions)
  readonly prefix: string
  readonly localKeys: false
  init(options: { windowMs: number }): void
  get(key: string): Promise<{ totalHits: number; resetTime: Date | undefined } | undefined>
  increment(key: string): Promise<{ totalHits: number; resetTime: Date | undefined }>
  decrement(key: string): Promise<void>
  resetKey(key: string): Promise<void>
  resetAll(): Promise<void>
  shutdown(): Promise<void>
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
  /**
   * With a secret, the static key this peer proves to others (64 hex digits), kept in `dataDir` or
   * drawn per process: what other peers pin in `peerKeys`. Null without a secret, and until ready.
   */
  readonly publicKey: string | null
  /** True once close() was called or the peer could not open. */
  readonly closed: boolean
  /**
   * Resolves once the peer listens and its data directory is loaded; rejects with a `code`
   * ('EADDRINUSE', 'EADDRNOTAVAIL', 'EACCES', 'EDATADIRINUSE', 'ESTORAGE', ...) if it cannot. The same
   * error is an 'error' event, thrown as uncaught when nothing listens for it and ready() was not called.
   */
  ready(): Promise<void>
  /**
   * The bucket called name (the same object for the same name). `T` types its values: any interface
   * or type JSON carries as itself (see `Storable`).
   */
  bucket<T extends string | number | boolean | null | Uint8Array | { [K in keyof T]: Storable<T[K]> } = any>(name: string, options?: BucketOptions): SharedBucket<T>
  /** The counter called name (the same object for the same name); increments merge. */
  counter(name: string, options?: CounterOptions): SharedCounter
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
  // Events by name only: a name that is not one of them (a typo) does not compile.
  on<E extends keyof PeerEvents>(event: E, listener: (...args: PeerEvents[E]) => void): this
  once<E extends keyof PeerEvents>(event: E, listener: (...args: PeerEvents[E]) => void): this
  off<E extends keyof PeerEvents>(event: E, listener: (...args: PeerEvents[E]) => void): this
  addListener<E extends keyof PeerEvents>(event: E, listener: (...args: PeerEvents[E]) => void): this
  removeListener<E extends keyof PeerEvents>(event: E, listener: (...args: PeerEvents[E]) => void): this
  prependListener<E extends keyof PeerEvents>(event: E, listener: (...args: PeerEvents[E]) => void): this
  prependOnceListener<E extends keyof PeerEvents>(event: E, listener: (...args: PeerEvents[E]) => void): this
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

export interface SessionStoreOptions<S extends SessionData = SessionData> {
  /** The bucket sessions are kept in, e.g. `peer.bucket('sessions')`. */
  bucket: SharedBucket<any>
  /** Key prefix of the sessions in that bucket; default 'sess:'. */
  prefix?: string
  /**
   * Seconds, as in connect-redis: a session lives `ttl(session)` seconds when a function, else until
   * its cookie's expiry, else `ttl` seconds; default the bucket's ttl, else one day (86400). Over 366
   * days is a RangeError: it can only be milliseconds, the unit of peer-buckets 0.1.
   */
  ttl?: number | ((session: S) => number)
  /** No touch ever writes (as connect-redis): a session expires `ttl` after its last save. */
  disableTouch?: boolean
  /**
   * Seconds, as in connect-mongo: a touch that would move the expiry by less is skipped, so read-only
   * requests replicate nothing. Default 0 (every touch writes).
   */
  touchAfter?: number
  /** How sessions are stored: a string `stringify` makes and `parse` reads back; default plain JSON values. */
  serializer?: { stringify(session: S): string; parse(text: string): S }
  /**
   * The user a session belongs to (nothing for an anonymous one): each session of a user is then
   * indexed (one key per session, `userPrefix + uid + ':' + sid`, with the session's expiry), for
   * `sessionsOf` and `destroyUser`.
   */
  userOf?: (session: S) => string | number | undefined | null
  /** Key prefix of that index; default 'user:' + prefix. Must not start with `prefix`. */
  userPrefix?: string
  /**
   * Ack level of session writes and deletes; default 'local'. With 'one', 'majority' or 'all' a save
   * waits until other servers hold the session.
   */
  ack?: AckLevel
  /**
   * Milliseconds to wait for that ack level (default 5000). Past it the write stays applied here and
   * keeps replicating, and the store emits 'warning' (an EACKTIMEOUT error; `process.emitWarning` when
   * nobody listens): express-session saves after the response headers are sent, where an error could
   * only break the response. See `ackTimeout`.
   */
  timeout?: number
  /** 'warn' (default): an ack timeout is a 'warning', the call succeeds. 'fail': the call fails with EACKTIMEOUT. */
  ackTimeout?: 'warn' | 'fail'
}

/** The events of a SessionStore, by name: express-session's, and 'warning' for ack timeouts. */
export interface SessionStoreEvents {
  connect: []
  disconnect: []
  warning: [err: PeerBucketsError]
}

/**
 * An express-session store over a SharedBucket (it extends express-session's `Store`; express-session
 * is loaded on first use of this class), with connect-redis's options and units. Sessions are typed
 * with express-session's `SessionData` (extend it with `declare module 'express-session'`). Reads come
 * from the local replica and never wait on the network. Every method takes an express-session style
 * callback, or returns a promise without one.
 */
export declare class SessionStore extends Store {
  constructor(options: SessionStoreOptions)
  readonly bucket: SharedBucket<any>
  readonly prefix: string
  readonly userPrefix: string
  /** Seconds a session lives when its cookie has no expiry (a number ttl, else the bucket's, else 86400). */
  readonly ttl: number
  /** Milliseconds `session` has to live, as connect-redis reckons it (<= 0: expired). */
  ttlFor(session: { cookie?: { expires?: Date | string | number | null; maxAge?: number | null } } | undefined | null, now?: number): number

  get(sid: string): Promise<SessionData | undefined>
  get(sid: string, callback: (err: any, session?: SessionData | null) => void): void
  set(sid: string, session: SessionData): Promise<void>
  set(sid: string, session: SessionData, callback?: (err?: any) => void): void
  destroy(sid: string): Promise<void>
  destroy(sid: string, callback?: (err?: any) => void): void
  /** Extends the session's expiry on every peer without rewriting it; a session that is gone stays gone. */
  touch(sid: string, session: SessionData): Promise<void>
  touch(sid: string, session: SessionData, callback?: () => void): void
  /** Every live session, each with its `id`; read a page at a time. */
  all(): Promise<Array<SessionData & { id: string }>>
  all(callback: (err: any, sessions?: Array<SessionData & { id: string }> | { [sid: string]: SessionData } | null) => void): void
  length(): Promise<number>
  length(callback: (err: any, length?: number) => void): void
  ids(): Promise<string[]>
  ids(callback: (err: any, ids?: string[]) => void): void
  clear(): Promise<void>
  clear(callback?: (err?: any) => void): void
  /** The ids of the live sessions of `userId` (needs `userOf`). */
  sessionsOf(userId: string | number): Promise<string[]>
  sessionsOf(userId: string | number, callback: (err: any, ids?: string[]) => void): void
  /** Logs `userId` out on every server: destroys each of their sessions; resolves with how many (needs `userOf`). */
  destroyUser(userId: string | number): Promise<number>
  destroyUser(userId: string | number, callback: (err: any, destroyed?: number) => void): void

  on<E extends keyof SessionStoreEvents>(event: E, listener: (...args: SessionStoreEvents[E]) => void): this
  once<E extends keyof SessionStoreEvents>(event: E, listener: (...args: SessionStoreEvents[E]) => void): this
  off<E extends keyof SessionStoreEvents>(event: E, listener: (...args: SessionStoreEvents[E]) => void): this
  addListener<E extends keyof SessionStoreEvents>(event: E, listener: (...args: SessionStoreEvents[E]) => void): this
  removeListener<E extends keyof SessionStoreEvents>(event: E, listener: (...args: SessionStoreEvents[E]) => void): this
  prependListener<E extends keyof SessionStoreEvents>(event: E, listener: (...args: SessionStoreEvents[E]) => void): this
  prependOnceListener<E extends keyof SessionStoreEvents>(event: E, listener: (...args: SessionStoreEvents[E]) => void): this
}
