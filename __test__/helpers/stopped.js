'use strict'
// Whether a process sent SIGSTOP has stopped: the signal is delivered to each thread in turn, and a
// peer's runtime threads can still answer for a moment after kill() returns.

const fs = require('node:fs')
const { sleep } = require('./wait')

/** True once every thread of process `pid` is stopped (where /proc tells; elsewhere after a pause). */
async function allStopped(pid) {
  let tasks
  try {
    tasks = fs.readdirSync(`/proc/${pid}/task`)
  } catch {
    await sleep(200)
    return true
  }
  return tasks.every((t) => {
    try {
      return /^[tT]$/.test(fs.readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8').split(') ').pop()[0])
    } catch {
      return true
    }
  })
}

module.exports = { allStopped }
