/**
 * bdus's library of filters, `import { delay, stats } from 'bdus/filters'`, and by name on the
 * command line (`--filter delay:read=2ms`). Each is one module in this folder: its default export
 * makes the filter from an options object, `parameters` describes those options for the command
 * line, `description` says what it does.
 */
import type { FilterModule } from '../filter/parameters.js';
import * as cacheModule from './cache.js';
import * as cowModule from './cow.js';
import * as delayModule from './delay.js';
import * as errorModule from './error.js';
import * as logModule from './log.js';
import * as offsetModule from './offset.js';
import * as partitionModule from './partition.js';
import * as rateModule from './rate.js';
import * as readonlyModule from './readonly.js';
import * as retryModule from './retry.js';
import * as statsModule from './stats.js';

export { default as cache, type CacheOptions } from './cache.js';
export { default as cow, type CowOptions } from './cow.js';
export { commitOverlay, discardOverlay } from './cow-overlay.js';
export { default as delay, type DelayOptions } from './delay.js';
export { default as error, type ErrorOptions } from './error.js';
export { default as log, parseLog, type LogOptions, type LoggedRequest } from './log.js';
export { default as offset, type OffsetOptions } from './offset.js';
export { default as partition, findPartition, type PartitionOptions } from './partition.js';
export { default as rate, type RateOptions } from './rate.js';
export { default as readonly } from './readonly.js';
export { default as retry, type RetryOptions } from './retry.js';
export { default as stats, type OperationCounts, type StatsOptions, type StatsReport } from './stats.js';

/** The filters `--filter NAME` knows, by name. */
export const FILTERS: Readonly<Record<string, FilterModule>> = {
  cache: cacheModule,
  cow: cowModule as unknown as FilterModule,
  delay: delayModule,
  error: errorModule,
  log: logModule as unknown as FilterModule,
  offset: offsetModule,
  partition: partitionModule as unknown as FilterModule,
  rate: rateModule,
  readonly: readonlyModule,
  retry: retryModule,
  stats: statsModule,
};
