// SPDX-License-Identifier: MIT
#ifndef BDUS_FUSE_URING_H
#define BDUS_FUSE_URING_H
#include <node_api.h>

// Adds fuseRing, fuseRingCommit, fuseRingSpin, fuseRingWait and fuseRingClose to the addon's exports.
void fuse_uring_register(napi_env env, napi_value exports);

#endif
