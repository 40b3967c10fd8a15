#!/usr/bin/env node
// Each outstanding read on /dev/fuse holds a libuv pool thread, and the pool is sized once, on
// first use: set it before anything else runs. The daemon reads one for each device that is
// waiting for a driver.
process.env.UV_THREADPOOL_SIZE ??= process.argv[2] === 'daemon' ? '128' : '16';
const { main } = await import('./main.js');
process.exitCode = await main(process.argv.slice(2));
