/**
 * A driver module that declares options: it records its positional arguments and option values
 * (one JSON line to --record FILE) and serves zeros. With --refuse its validate callback fails;
 * with --fail-init its initialize does.
 */
import { appendFileSync } from 'node:fs';
import type { DriverFactory, DriverOptions } from '../../src/index.js';

export const usage = '[WORDS...]';
export const description = 'records its command line';
export const options = {
  record: { type: 'string', description: 'the file to record to' },
  verbose: { type: 'boolean', short: 'v', description: 'a flag' },
  tag: { type: 'string', multiple: true, description: 'may be given more than once' },
  refuse: { type: 'boolean', description: 'validate fails' },
  'fail-init': { type: 'boolean', description: 'initialize fails' },
} satisfies DriverOptions;

const driver: DriverFactory = (args, values) => ({
  attributes: { size: 16 << 20 },
  validate() {
    if (values.refuse) throw new Error('this configuration is refused');
  },
  initialize() {
    if (values['fail-init']) throw new Error('the store is unreachable');
    if (typeof values.record === 'string') appendFileSync(values.record, `${JSON.stringify({ pid: process.pid, args, values })}\n`);
  },
  read(buffer) {
    buffer.fill(0);
  },
  write() {},
});
export default driver;
