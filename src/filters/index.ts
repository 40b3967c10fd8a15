/**
 * bdus's library of filters, `import { delay, stats } from 'bdus/filters'`, and by name on the
 * command line (`--filter delay:read=2ms`). Each is one module in this folder: its default export
 * makes the filter from an options object, `parameters` describes those options for the command
 * line, `description` says what it does.
 */
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
export { default as truncate, type TruncateOptions } from './truncate.js';

export { FILTER_NAMES, filterModule, isFilterName, type FilterName } from './catalog.js';
