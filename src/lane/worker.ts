/**
 * A lane's thread (lanes.ts): makes the driver from its recipe, initializes its own instance,
 * and serves the device's requests through the frontend kind's LaneKind (or an export's
 * connections, through the NBD server's) until the main thread says stop.
 */
import { fileURLToPath } from 'node:url';
import { parentPort, workerData } from 'node:worker_threads';
import { importDriverModule, makeDriver } from '../cli/load-driver.js';
import { lockAttributes, setDeviceSize } from '../driver/attributes.js';
import type { Context } from '../driver/driver.js';
import { BdusError } from '../driver/errors.js';
import type { LaneKind } from '../frontend/frontend.js';
import { frontendKind } from '../frontend/kinds.js';
import { EXPORT_LANES, exportLanes } from '../nbd/lane.js';
import { DriverInstance } from '../instance/driver-instance.js';
import type { LaneData, LaneMessage, LaneOrder } from './lanes.js';

const port = parentPort!;
const data = workerData as LaneData;
const say = (message: LaneMessage) => port.postMessage(message);
const log = (line: string) => say({ type: 'log', line });

let instance: DriverInstance<unknown> | undefined;

async function main(): Promise<void> {
  const { module } = data.recipe;
  const loaded = await importDriverModule(module.startsWith('file:') ? fileURLToPath(module) : module);
  const driver = await makeDriver(loaded, data.recipe.args ?? [], data.recipe.options ?? {});
  if (!driver.laneSafe) throw new BdusError('EINVAL', `${data.recipe.module} made a driver that is not lane-safe`);
  const ctx: Context<unknown> = { ...data.ctx, attributes: lockAttributes(data.ctx.attributes), lane: data.lane, laneShared: data.driverShare, state: undefined };
  instance = new DriverInstance(driver, ctx, log, (error) => say({ type: 'abort', message: error.message }));
  const { requests } = instance;
  const { counters } = requests;
  counters.slots = data.slots;
  counters.startHeartbeat();
  await instance.initialize();
  const kind: LaneKind = data.frontend === EXPORT_LANES ? exportLanes : frontendKind(data.frontend).lanes!;
  const server = kind.serve(data.share, data.lane, requests, log);
  void server.ended.then((error) => error && say({ type: 'abort', message: error.message }));
  port.on('message', (order: LaneOrder) => {
    if (order.type === 'deliver') return server.deliver?.(order.message);
    if (order.type === 'resize') {
      void (async () => {
        let message = '';
        try {
          (ctx as { laneShared?: unknown }).laneShared = order.driverShare;
          await driver.resize?.(order.size, ctx);
          setDeviceSize(ctx.attributes, order.size);
          server.resize(order.size);
        } catch (error) {
          message = error instanceof Error ? error.message : String(error);
        }
        say({ type: 'resized', message });
      })();
      return;
    }
    server.stop();
    void (async () => {
      await requests.drain();
      let message = '';
      try {
        await instance!.terminate();
      } catch (error) {
        message = error instanceof Error ? error.message : String(error);
      }
      server.close();
      counters.stopHeartbeat();
      say({ type: 'stopped', message });
      port.close();
    })();
  });
  say({ type: 'ready' });
}

main().catch(async (error: unknown) => {
  await instance?.unwind();
  const code = typeof (error as { code?: unknown })?.code === 'string' ? (error as { code: string }).code : 'EIO';
  say({ type: 'failed', code, message: error instanceof Error ? error.message : String(error) });
  port.close();
});
