/// <reference types="node" preserve="true" />
// Kept in the emitted .d.ts: the public types use Buffer, and a project need not name node in its tsconfig.
/** bdus: block devices in user space, written in TypeScript. The public API. */
export type { Context, Driver, Extent } from './driver/driver.js';
export { readInto, type ReadResult } from './driver/read-data.js';
export type { DriverFactory, DriverModule, DriverOption, DriverOptions, DriverOptionValues } from './driver/module.js';
export { ATTRIBUTES, RECOVERY_MODES, type Attributes, type EffectiveAttributes, type RecoveryMode } from './driver/attributes.js';
export { abort, AttributeError, BdusError, DriverAbort, DriverError } from './driver/errors.js';
export { Device, type DeviceExport, type DeviceExportOptions, type RunOptions } from './device/device.js';
export type { DriverRecipe } from './lane/lanes.js';
export { rerun, run, serve, start } from './device/start.js';
export { FRONTENDS, type FrontendChoice } from './frontend/select.js';
export { around, compose, composeAsync, eachRequest, InnerContexts, layer, type AsyncFilter, type Filter, type LayerOptions, type Overrides } from './filter/filter.js';
export type { FilterModule, Parameters, ParameterSpec, ParameterType, ParameterValue } from './filter/parameters.js';
export {
  daemonVersion,
  destroyDevice,
  deviceInfo,
  flushDevice,
  getDevIdFromPath,
  listDevices,
  resizeDevice,
  stopDaemon,
  waitUntilDestroyed,
  type DestroyOptions,
  type DeviceInfo,
  type DeviceName,
} from './control/manage.js';
export { Daemon, type DaemonOptions } from './control/daemon.js';
export { Export, exportUri, runExport, startExport, type ExportOptions, type TlsOptions } from './nbd/export.js';
export { DEFAULT_LIMITS, type ExportLimits, type LimitSettings } from './nbd/limits.js';
export type { ListenAddress } from './nbd/server.js';
export type { DeviceState } from './control/protocol.js';
import { packageVersion } from './version.js';
/** This package's version, e.g. "0.1.0" (the library's, the CLI's and the daemon's: they ship together). */
export const version: string = packageVersion();
