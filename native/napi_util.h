// SPDX-License-Identifier: MIT
// What the addon's C files share (defined in bdus_native.c).
#ifndef BDUS_NAPI_UTIL_H
#define BDUS_NAPI_UTIL_H
#include <node_api.h>
#include <stdint.h>

#define CHECK(call)                                                            \
    do {                                                                       \
        if ((call) != napi_ok) {                                               \
            napi_throw_error(env, NULL, "bdus_native: " #call " failed");      \
            return NULL;                                                       \
        }                                                                      \
    } while (0)

// Throws an Error whose message names `syscall`, with `errno` (-err) and `syscall` set.
napi_value throw_errno(napi_env env, int err, const char *syscall);

// A Buffer over `length` bytes of mmap'd memory at `p`, unmapped when it is collected; on failure
// the memory is unmapped, an Error thrown, and NULL returned.
napi_value mapped_buffer(napi_env env, void *p, size_t length);

// A number property of `object`, or `otherwise` if it has none.
int64_t object_field(napi_env env, napi_value object, const char *name, int64_t otherwise);

// CLOCK_MONOTONIC in nanoseconds: the spins' deadlines.
int64_t now_ns(void);

#endif
