#!/usr/bin/env node
// A driver's file I/O (the loop example, fallocate) runs on the libuv pool, 4 threads by default:
// give drivers more, so that up to 16 callbacks reach their files at once. The pool is sized
// once, on first use: set it before anything else runs.
if (process.argv[2] !== 'daemon') process.env.UV_THREADPOOL_SIZE ??= '16';
const { main } = await import('./main.js');
// A reader that went away (`bdus list | head -1`) ends what there is to say, nothing more: not a
// stack trace, and not a driver's abort.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EPIPE') throw error;
  });
}
// Exit rather than wait for the event loop to drain: a driver's own timers and sockets (a
// periodic sync, a flush that outlived its deadline in a hand-over) must not keep the process
// of a device that is gone alive. What is still queued for stdout and stderr (a slow pipe) goes
// out first.
const code = await main(process.argv.slice(2));
await Promise.all([process.stdout, process.stderr].map((stream) => new Promise((resolve) => stream.write('', resolve))));
process.exit(code);
