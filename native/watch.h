// SPDX-License-Identifier: MIT
// A character device read on the event loop, and the reads and writes made on it (watch.c).
#ifndef BDUS_WATCH_H
#define BDUS_WATCH_H
#include <node_api.h>

void watch_register(napi_env env, napi_value exports);

#endif
