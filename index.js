'use strict'
// The JavaScript face of peer-buckets: what `require('peer-buckets')` exports. Each part lives in lib/:
// peer.js (Peer), bucket.js (SharedBucket), counter.js (SharedCounter), handle.js (what the two share),
// validation.js (argument checks and limits), errors.js (coded errors), native.js (the contract with the
// addon), rate-limit-store.js (an express-rate-limit store), stats.js and metrics.js (stats() figures and
// their Prometheus text), loop-delay.js (the event-loop delay a peer observes), session-store.js (the
// express-session store), platform.js (the platform packages' names, for the loader native.js).

const { Peer } = require('./lib/peer.js')
const { SharedBucket } = require('./lib/bucket.js')
const { SharedCounter } = require('./lib/counter.js')
const { RateLimitStore } = require('./lib/rate-limit-store.js')

module.exports = { Peer, SharedBucket, SharedCounter, RateLimitStore }

// SessionStore (an express-session store) is loaded on first use, so that require('peer-buckets')
// neither needs nor loads express-session. `lazy.SessionStore` keeps the getter in the one shape
// Node's CommonJS export detection reads, so `import { SessionStore } from 'peer-buckets'` works too.
const lazy = {
  get SessionStore() {
    return require('./lib/session-store.js').SessionStore
  },
}
Object.defineProperty(module.exports, 'SessionStore', { enumerable: true, get: function () { return lazy.SessionStore } })
