// Types for peer-buckets: Peer and SharedBucket.

import { EventEmitter } from 'node:events'

/** Anything JSON can carry. */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue }
/** What a bucket stores: a JSON value, or bytes (a Uint8Array is stored and returned as a Buffer). */
export type Value = JsonValue | Buffer | Uint8Array

export interface PeerOptions {
  /** Node id; default a random id. */
  id?: string
  /** 'host:port' or a port number to listen on; default '127.0.0.1:0' (an ephemeral port). */
  listen?: string | number
  /** Seed addresses; the rest of the network is learned from them. */
  peers?: Array<string | number>
  /** Not supported yet (throws ENOTSUP). */
  secret?: string | Buffer
  /** Not supported yet (throws ENOTSUP). */
  dataDir?: string
  /** Not supported yet (throws ENOTSUP). */
  durability?: 'strict' | 'relaxed'
  /** Not supported yet (throws ENOTSUP). */
  maxClockSkew?: number
}

export interface BucketOptions {
  /** Not supported yet (throws ENOTSUP). */
  ttl?: number
}

export type AckLevel = 'local' | 'one' | 'majority' | 'all'

export interface WriteOptions {
  /** Only 'local' is supported in this version; others throw ENOTSUP. */
  ack?: AckLevel
  /** Milliseconds to wait for the ack level (default 5000). */
  timeout?: number
}

export interface SetOptions extends WriteOptions {
  /** Not supported yet (throws ENOTSUP). */
  ttl?: number
}

export interface ChangeEvent {
  key: string
  /** The new value; undefined when deleted. */
  value: Value | undefined
  deleted: boolean
  /** True when the change was written by this peer. */
  local: boolean
  /** Id of the peer that wrote it. */
  origin: string
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

export interface PeerStats {
  id: string
  buckets: number
  keys: number
  peers: number
  opsApplied: number
  bytesSent: number
  bytesReceived: number
}

/** An error from peer-buckets that carries a code (ECLOSED, ENOTSUP, EADDRINUSE, ...). */
export interface PeerBucketsError extends Error {
  code: string
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
  /** Not supported yet (throws ENOTSUP). */
  touch(key: string, ttl: number, cb?: (err: PeerBucketsError | null, touched?: boolean) => void): Promise<boolean>
  keys(prefix?: string): string[]
  entries(prefix?: string): Array<[string, any]>
  readonly size: number
  /** Not supported yet (rejects with ENOTSUP). */
  fetch(options: { from: string; prefix?: string }): Promise<number>
  on(event: 'change', listener: (event: ChangeEvent) => void): this
  on(event: 'error', listener: (err: Error) => void): this
  on(event: string | symbol, listener: (...args: any[]) => void): this
}

export declare class Peer extends EventEmitter {
  constructor(options?: PeerOptions)
  readonly id: string
  /** The 'host:port' actually bound. */
  readonly address: string
  /** True once close() was called or the peer could not listen. */
  readonly closed: boolean
  /** Resolves once listening; rejects (code 'EADDRINUSE', ...) if it cannot. */
  ready(): Promise<void>
  /** The bucket called name (the same object for the same name). */
  bucket(name: string, options?: BucketOptions): SharedBucket
  peers(): PeerInfo[]
  stats(): PeerStats
  /** Not supported yet (throws ENOTSUP). */
  metrics(): string
  /** Leaves the network and frees the port and threads. */
  close(): Promise<void>
  unref(): this
  ref(): this
  on(event: 'peer-up' | 'peer-down', listener: (peer: PeerEvent) => void): this
  on(event: string | symbol, listener: (...args: any[]) => void): this
}
