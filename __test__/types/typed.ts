// Compiled (never run) by types.test.js with `tsc --noEmit --strict`: typed buckets, their Map-like
// calls, typed events, and SessionStore typed with express-session's SessionData. Each
// `@ts-expect-error` line is a call the typings must refuse: if one compiles, the test fails.

import session from 'express-session'
import express from 'express'
import { Peer, SharedBucket, SessionStore, ChangeEvent, PeerWarning, ScanPage } from '../..'

declare module 'express-session' {
  interface SessionData {
    userId: string
    lastSeen: string
  }
}

interface UserSession {
  user: string
  roles: string[]
  createdAt: string
  note?: string
  prefs: { theme: 'dark' | 'light'; size: number | null }
}

interface WithMethod {
  user: string
  greet(): string
}

interface WithDate {
  at: Date
}

async function typed(peer: Peer): Promise<void> {
  const sessions: SharedBucket<UserSession> = peer.bucket<UserSession>('sessions')
  const value: UserSession | undefined = sessions.get('sess:1')
  // An interface value; a Date where the stored type has a string (JSON writes its ISO string).
  await sessions.set('sess:1', { user: 'ada', roles: ['admin'], createdAt: new Date(), prefs: { theme: 'dark', size: null } })
  await sessions.set('sess:2', { user: 'bob', roles: [], createdAt: '2026-01-01', prefs: { theme: 'light', size: 3 } }, { ttl: 1000, ack: 'one' })
  await sessions.setMany([['sess:3', { user: 'eve', roles: [], createdAt: new Date(), prefs: { theme: 'dark', size: 1 } }]], { ack: 'all' })
  const deleted: number = await sessions.deletePrefix('sess:')
  const n: number = sessions.count('sess:')
  const left: number | undefined = sessions.ttl('sess:1')
  const page: ScanPage<UserSession> = sessions.scan({ prefix: 'sess:', limit: 10 })
  const next: string | null = page.cursor
  const keysPage: string[] = sessions.scan({ keysOnly: true, cursor: next }).keys
  const values: UserSession[] = sessions.values()
  for (const [key, s] of sessions) console.log(key.length, s.user)
  const map: Map<string, UserSession> = new Map(sessions)
  sessions.on('change', (e: ChangeEvent<UserSession>) => console.log(e.key, e.value?.roles.length, e.deleted))
  sessions.on('error', (err: Error) => console.log(err.message))
  peer.on('warning', (w: PeerWarning) => console.log(w.code))
  peer.on('peer-up', ({ id }) => console.log(id))
  peer.on('close', () => {})

  // An untyped bucket takes any value JSON carries, interfaces and Dates included.
  const loose = peer.bucket('loose')
  const u: UserSession = { user: 'ada', roles: [], createdAt: '', prefs: { theme: 'dark', size: 1 } }
  await loose.set('k', u)
  await loose.set('d', new Date())
  const anything = loose.get('k')

  // SessionStore typed with express-session's SessionData (its augmentation included).
  const store = new SessionStore({
    bucket: peer.bucket('sessions'),
    ttl: (s) => (s.userId === 'admin' ? 600 : 86400),
    touchAfter: 60,
    disableTouch: false,
    serializer: { stringify: (s) => JSON.stringify(s), parse: (t) => JSON.parse(t) },
    userOf: (s) => s.userId,
    ack: 'one',
    timeout: 2000,
    ackTimeout: 'warn',
  })
  const app = express()
  app.use(session({ store, secret: 'keyboard cat', resave: false, saveUninitialized: false }))
  const got = await store.get('sid')
  const userId: string | undefined = got?.userId
  const ids: string[] = await store.sessionsOf('ada')
  const destroyed: number = await store.destroyUser(42)
  store.on('warning', (err) => console.log(err.code, err.acked))
  store.on('disconnect', () => {})
  console.log(value, deleted, n, left, keysPage, values, map, anything, userId, ids, destroyed)
}

function refused(peer: Peer, sessions: SharedBucket<UserSession>, store: SessionStore): void {
  // @ts-expect-error a value that is not the bucket's type
  sessions.set('k', { user: 'ada' })
  // @ts-expect-error a field of the wrong type
  sessions.set('k', { user: 1, roles: [], createdAt: '', prefs: { theme: 'dark', size: 1 } })
  // @ts-expect-error a Date where the stored type has a number
  sessions.set('k', { user: 'a', roles: [], createdAt: '', prefs: { theme: 'dark', size: new Date() } })
  // @ts-expect-error get gives the bucket's type, not another
  const wrong: number | undefined = sessions.get('k')
  // @ts-expect-error a method does not survive JSON: no bucket of such values
  peer.bucket<WithMethod>('methods')
  // @ts-expect-error a Date comes back as a string: declare the field string
  peer.bucket<WithDate>('dates')
  // @ts-expect-error an event name with a typo
  sessions.on('chnage', () => {})
  // @ts-expect-error the change event carries the bucket's type
  sessions.on('change', (e: ChangeEvent<number>) => console.log(e))
  // @ts-expect-error a peer event with a typo
  peer.on('peer-upp', () => {})
  // @ts-expect-error undefined is no value, in an untyped bucket either
  peer.bucket('loose').set('k', undefined)
  // @ts-expect-error nor is a function
  peer.bucket('loose').set('k', () => 1)
  // @ts-expect-error scan's limit is a number
  sessions.scan({ limit: '10' })
  // @ts-expect-error ttl is seconds or a function of the session, not a string
  new SessionStore({ bucket: sessions, ttl: '1d' })
  // @ts-expect-error userOf takes a session
  new SessionStore({ bucket: sessions, userOf: (s: number) => s })
  // @ts-expect-error ackTimeout is 'warn' or 'fail'
  new SessionStore({ bucket: sessions, ackTimeout: 'ignore' })
  // @ts-expect-error a store event that does not exist
  store.on('conect', () => {})
  console.log(wrong)
}

export { typed, refused }
