// Compiled (never run) by types.test.js with `tsc --noEmit --strict`: counters and the rate-limit store,
// typed against index.d.ts, and calls the typings must refuse.

import { Peer, SharedCounter, CounterChangeEvent, RateLimitStore, PeerBucketsError } from '../..'

async function counters(peer: Peer): Promise<void> {
  const hits: SharedCounter = peer.counter('login-attempts', { ttl: 15 * 60_000 })
  const after: number = await hits.incr('ip:1.2.3.4')
  const more: number = await hits.incr('ip:1.2.3.4', 2, { ack: 'one', timeout: 500, ttl: 1000 })
  const less: number = await hits.decr('ip:1.2.3.4')
  hits.incr('ip:1.2.3.4', (err: PeerBucketsError | null, value?: number) => console.log(err, value))
  const now: number = hits.get('ip:1.2.3.4')
  const ends: number | undefined = hits.expiresAt('ip:1.2.3.4')
  await hits.reset('ip:1.2.3.4', { ack: 'all' })
  const keys: string[] = hits.keys('ip:')
  const size: number = hits.size
  hits.on('change', (e: CounterChangeEvent) => console.log(e.key, e.value + 1, e.local, e.origin))
  const store = new RateLimitStore({ peer, prefix: 'rl:' })
  const local: false = store.localKeys
  console.log(after, more, less, now, ends, keys, size, local)
  // @ts-expect-error a counter counts numbers
  await hits.incr('ip:1.2.3.4', '1')
  // @ts-expect-error get returns a number
  const wrong: string = hits.get('ip:1.2.3.4')
  // @ts-expect-error the store needs a peer
  new RateLimitStore({ prefix: 'rl:' })
  console.log(wrong)
}

export { counters }

// A counter's events by name only.
export function counterEventTypo(peer: Peer): void {
  // @ts-expect-error: not an event of a SharedCounter
  peer.counter('c').on('chnage', () => {})
}
