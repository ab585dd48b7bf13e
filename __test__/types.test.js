'use strict'
// index.d.ts stays true to the package: types/usage.ts (the README's usage, and calls the typings must
// refuse) compiles under `tsc --strict`. The runtime side of the same calls is held by the api-* suites.

const path = require('node:path')
const { execFileSync } = require('node:child_process')

jest.setTimeout(180_000)

test('the typed usage compiles against index.d.ts, and what the typings must refuse is refused', () => {
  const tsc = require.resolve('typescript/bin/tsc')
  let output = ''
  try {
    execFileSync(process.execPath, [tsc, '-p', path.join(__dirname, 'types', 'tsconfig.json')], { encoding: 'utf8' })
  } catch (err) {
    output = `${err.stdout}${err.stderr}`
  }
  expect(output).toBe('')
})
