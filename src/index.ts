/** bdus: block devices in user space, written in TypeScript. The public API. */
export type { Context, Driver } from './driver/driver.js';
export { ATTRIBUTES, type Attributes, type EffectiveAttributes } from './driver/attributes.js';
export { abort, AttributeError, BdusError, DriverAbort, DriverError } from './driver/errors.js';
export { Device, run, start, flushDevice, type RunOptions } from './device/device.js';
export { destroyDevice, findDevice, getDevIdFromPath, listDevices, type DestroyOptions } from './device/manage.js';
export type { DeviceRecord, DeviceState } from './device/registry.js';
