// SPDX-License-Identifier: MIT
// Writes to one file submitted together (write_batch.c).
#ifndef BDUS_WRITE_BATCH_H
#define BDUS_WRITE_BATCH_H
#include <node_api.h>

void write_batch_register(napi_env env, napi_value exports);

#endif
