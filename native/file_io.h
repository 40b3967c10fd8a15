// SPDX-License-Identifier: MIT
// File reads, writes and fdatasyncs through io_uring (file_io.c).
#ifndef BDUS_FILE_IO_H
#define BDUS_FILE_IO_H
#include <node_api.h>

void file_io_register(napi_env env, napi_value exports);

#endif
