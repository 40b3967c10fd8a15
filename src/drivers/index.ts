/**
 * bdus's library of drivers, `import { file, memory } from 'bdus/drivers'`, and by name on the
 * command line (`bdus run file disk.img`). Each is one module in this folder, with the same
 * exports as any driver module (src/driver/module.ts) plus a typed function for code.
 */
export { chunked, type ChunkedOptions } from './chunked.js';
export { file, holes, type FileOptions } from './file.js';
export { http, type HttpOptions } from './http.js';
export { memory } from './memory.js';
export { nbd, type NbdDriverOptions } from './nbd.js';
export { nullDriver } from './null.js';
export { pattern, patternAt } from './pattern.js';
// What file, chunked and cow read and write their files with, for drivers of your own that keep data in files.
export { FileIo } from './file-io.js';
// s3 is `bdus/drivers/s3`: it loads the AWS SDK, which every importer of this module need not.

export { DRIVER_NAMES, driverModuleUrl, type DriverName } from './catalog.js';
