'use strict'
// A Node process writing to a Redis primary through ioredis with auto-pipelining and `inflight`
// commands in flight (one of the three writers of the replicated figure).

const Redis = require('ioredis')
const { serve } = require('./rpc')
const { keys: makeKeys, sessions } = require('../lib/workload')
const { inFlight } = require('../lib/util')

const now = () => process.hrtime.bigint()
let redis = null

serve(
  {
    async open({ port }) {
      redis = new Redis({ host: '127.0.0.1', port, enableAutoPipelining: true, lazyConnect: true })
      await redis.connect()
      await redis.ping()
      return true
    },

    /** SETs sessions start… with `inflight` in flight (the value is serialised per write, as a
     *  client would). */
    async write({ start, count, inflight = 256 }) {
      const keys = makeKeys(start, count)
      const values = sessions(start, count)
      const t0 = now()
      await inFlight(count, inflight, (i) => redis.set(keys[i], JSON.stringify(values[i])))
      const t1 = now()
      return { t0: String(t0), t1: String(t1) }
    },
  },
  async () => {
    if (redis) redis.disconnect()
  },
)
