/**
 * The daemon's stand-in server for a ublk device whose requests must fail while it has no
 * driver (`recoveryMode: fail-all`, or a device past its recoveryLimit): it recovers the device
 * like a driver would and answers every request with EIO, until the daemon ends it (SIGTERM)
 * for the next driver. It runs as a process of its own, because the kernel lets the next server
 * recover the device only once this one's queues are closed, and expects its thread gone.
 *
 * Linux 6.13's USER_RECOVERY_FAIL_IO would make the kernel fail those requests itself, but it
 * fails them during a driver hand-over too; bdus hands drivers over without a client error, so
 * it uses the stand-in on every kernel (docs/frontends.md).
 *
 * It takes the device's in-flight table over like a driver (and clears each entry as it fails
 * the request), so that the next driver does not take a later request for one the dead driver
 * had held.
 *
 *   node stand-in.js DEVICE_NUMBER QUEUES MAX_READ_WRITE_SIZE DEVICE_ID
 */
import { constants } from 'node:os';
import type { Exchange } from '../../request/exchange.js';
import type { QueueRequests } from './queue.js';
import { InflightTable } from './inflight-table.js';
import { allQueues, QUEUE_DEPTH, recover, UblkQueues, usesUserCopy } from './ublk.js';

const { EIO } = constants.errno;

function fail(x: Exchange): void {
  x.answer(EIO);
  x.finish();
}

const failAll: QueueRequests = { read: fail, write: fail, writeTarget: () => undefined, fuaWrite: fail, flush: fail, discard: fail, writeZeros: fail };

async function main(): Promise<void> {
  const [device, queues, maxReadWriteSize] = process.argv.slice(2, 5).map(Number);
  const id = process.argv[5]!;
  const log = (message: string) => process.stderr.write(`ublk stand-in ${device}: ${message}\n`);
  const table = InflightTable.open(id, queues! * QUEUE_DEPTH);
  const aborted = () => process.exit(0);
  // The queues end with the process (UblkQueue.close says why they are not closed first).
  process.on('SIGTERM', () => process.exit(0));
  await recover(device!, (info) => {
    const served = new UblkQueues(device!, { maxReadWriteSize: maxReadWriteSize!, userCopy: usesUserCopy(info), requests: failAll, table, log, aborted }, allQueues(queues!));
    served.open();
  }, log);
  process.send?.('serving');
}

main().catch((error: Error) => {
  process.stderr.write(`ublk stand-in: ${error.message}\n`);
  process.exit(1);
});
