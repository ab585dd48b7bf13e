// Compiled (never run) by types.test.js with `tsc --noEmit --strict`: the README's usage, typed against
// index.d.ts. A call the typings refuse, or a result they type wrongly, fails that test.

import { Peer, SharedBucket, SessionStore, PeerStats, PeerWarning, ChangeEvent, KeyInfo, PeerBucketsError } from '../..'

async function usage(): Promise<void> {
  const peer = new Peer({ id: 'auth-1', listen: 7070, peers: ['127.0.0.1:7071'], secret: 'a secret of sixteen bytes', maxClockSkew: 60_000 })
  await peer.ready()
  const id: string = peer.id
  const address: string = peer.address
  const closed: boolean = peer.closed
  const publicKey: string | null = peer.publicKey
  const pinned = new Peer({ secret: 'a secret of sixteen bytes', peerKeys: { 'auth-1': publicKey ?? '' } })
  await pinned.close()
  const sessions: SharedBucket = peer.bucket('sessions', { ttl: 30 * 60_000 })
  await sessions.set('sess:42', { user: 'ada', roles: ['admin'] })
  await sessions.set('bytes', new Uint8Array([1, 2]), { ack: 'majority', timeout: 2000, ttl: 1000 })
  sessions.set('cb', 'value', (err: PeerBucketsError | null) => {
    if (err) console.log(err.code, err.acked)
  })
  const value: unknown = sessions.get('sess:42')
  const frozen: SharedBucket = peer.bucket('frozen', { reads: 'frozen' })
  const reads: 'fresh' | 'frozen' = frozen.reads
  // @ts-expect-error a reads mode that does not exist
  peer.bucket('cold', { reads: 'cold' })
  const has: boolean = sessions.has('sess:42')
  const touched: boolean = await sessions.touch('sess:42', 1000)
  const keys: string[] = sessions.keys('sess:')
  const entries: Array<[string, unknown]> = sessions.entries()
  const size: number = sessions.size
  const info: KeyInfo | undefined = sessions.inspect('sess:42')
  const fetched: number = await sessions.fetch({ from: 'auth-2', prefix: 'sess:' })
  await sessions.delete('sess:42', { ack: 'all' })
  sessions.on('change', (e: ChangeEvent) => console.log(e.key, e.value, e.deleted, e.local, e.origin, e.expired))
  peer.on('peer-down', ({ id, address }) => console.log(id, address))
  peer.on('warning', (w: PeerWarning) => console.log(w.code, w.message, w.peer, w.address))
  const stats: PeerStats = peer.stats()
  const lag: number = stats.replication[0].lagMs + stats.warnings.EAUTH + stats.handshakesEvicted
  const text: string = peer.metrics()
  const store = new SessionStore({ bucket: sessions, prefix: 'sess:', ack: 'one', timeout: 1000 })
  const ttl: number = store.ttlFor({ cookie: { maxAge: 1000 } })
  peer.unref().ref()
  await peer.close()
  console.log(id, address, closed, publicKey, value, has, touched, keys, entries, size, info, fetched, lag, text, ttl)
}

// What the typings refuse.
function refused(bucket: SharedBucket): void {
  // @ts-expect-error an ack level that does not exist
  bucket.set('k', 1, { ack: 'quorum' })
  // @ts-expect-error undefined is no value
  bucket.set('k', undefined)
  // @ts-expect-error delete takes no ttl
  bucket.delete('k', { ttl: 5 })
  // @ts-expect-error durability is 'strict' or 'relaxed'
  new Peer({ durability: 'eventual' })
  // @ts-expect-error a pinned key is a string, peer.publicKey
  new Peer({ secret: 'a secret of sixteen bytes', peerKeys: { a: new Uint8Array(32) } })
  // @ts-expect-error publicKey is read-only
  new Peer().publicKey = 'x'
}

export { usage, refused }
