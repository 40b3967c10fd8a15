#!/usr/bin/env node
// A driver's file I/O (the loop example, fallocate) runs on the libuv pool, 4 threads by default:
// give drivers more, so that up to 16 callbacks reach their files at once. The pool is sized
// once, on first use: set it before anything else runs.
if (process.argv[2] !== 'daemon') process.env.UV_THREADPOOL_SIZE ??= '16';
const { main } = await import('./main.js');
process.exitCode = await main(process.argv.slice(2));
