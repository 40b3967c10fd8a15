/**
 * loop: the name `bdus run loop PATH` keeps for the file driver (src/drivers/file.ts), which
 * mirrors a regular file or a block device as the kernel's loop driver does, and more (holes for
 * NBD block status, --read-only, --direct). Recoverable.
 */
export { default, description, options, usage } from '../drivers/file.js';
