/**
 * The ram example without writeTarget: on ublk its device is created without user copy (the
 * kernel copies each request's data into the tag's buffer, and the callbacks copy again), for
 * bench/ublk-vm to set the two side by side in one run.
 */
import ram from '../../src/examples/ram.js';

const { writeTarget: _, ...ramKernelCopy } = ram;

export default ramKernelCopy as typeof ram;
