/**
 * The ram example with 1 ms of simulated latency per read and write (a network or disk behind
 * the driver): how far concurrency hides latency, for the scaling benchmark.
 */
import ram from '../../src/examples/ram.js';

const pause = () => new Promise((resolve) => setTimeout(resolve, 1));

const slowRam: typeof ram = {
  ...ram,
  async read(buffer, offset, ctx) {
    await pause();
    return ram.read!(buffer, offset, ctx);
  },
  async write(data, offset, ctx) {
    await pause();
    return ram.write!(data, offset, ctx);
  },
};

export default slowRam;
