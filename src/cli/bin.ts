#!/usr/bin/env node
// A driver's file I/O (the loop example, fallocate) runs on the libuv pool, 4 threads by default:
// give drivers more, so that up to 16 callbacks reach their files at once. The pool is sized
// once, on first use: set it before anything else runs.
if (process.argv[2] !== 'daemon') process.env.UV_THREADPOOL_SIZE ??= '16';
const { main } = await import('./main.js');
// A reader that went away (`bdus list | head -1`) ends what there is to say: no stack trace. Other
// output errors (stdout on a full disk) are said once and make the exit status 1; neither aborts a
// driver that serves a device.
let outputFailed = false;
for (const [name, stream] of [['stdout', process.stdout], ['stderr', process.stderr]] as const) {
  stream.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE' || outputFailed) return;
    outputFailed = true;
    if (name === 'stdout') process.stderr.write(`bdus: error: cannot write to stdout: ${error.message}\n`);
  });
}
// Exit rather than wait for the event loop to drain: a driver's own timers and sockets (a
// periodic sync, a flush that outlived its deadline in a hand-over) must not keep the process
// of a device that is gone alive. What is still queued for stdout and stderr (a slow pipe) goes
// out first.
const code = await main(process.argv.slice(2));
await Promise.all([process.stdout, process.stderr].map((stream) => new Promise((resolve) => stream.write('', resolve))));
process.exit(outputFailed && code === 0 ? 1 : code);
