/** Linux's encoding of a device number in st_rdev. */
export function splitDeviceNumber(rdev: number): { major: number; minor: number } {
  const high = Math.floor(rdev / 2 ** 32);
  const low = rdev >>> 0;
  return {
    major: ((low >>> 8) & 0xfff) | (high & ~0xfff),
    minor: (low & 0xff) | ((low >>> 12) & ~0xff),
  };
}
