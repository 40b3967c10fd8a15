// SPDX-License-Identifier: MIT
//
// A character device read on the event loop, and the reads and writes made on it. Called from
// src/frontend/fuse/channel.ts (through src/native.ts):
//
//   watch(fd, spinMicroseconds, callback(status)) -> watcher   uv_poll for readability; after each
//                                                   call, spins that long for the next (0: never)
//   unwatch(watcher)                                stops and frees a watcher
//   watchSpin(watcher, spinMicroseconds)            changes a watcher's spin
//   waitReadable(fd, microseconds) -> boolean       spins until fd is readable, or the time is up
//   readFd(fd, buffer) -> n | -errno                read(2) without throwing
//   writeFd(fd, buffer, length) -> n | -errno       write(2) without throwing
//   writeFdGather(fd, head, headLength, data) -> n | -errno   writev(2) of a head and data

#define _GNU_SOURCE
#include <errno.h>
#include <node_api.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "napi_util.h"
#include "watch.h"

// /dev/fuse is a character device: Node can only read it with blocking reads on the libuv pool,
// which costs two thread hand-offs per request. Watched on the event loop instead (the fd is
// non-blocking), a request costs one read and one write, and a busy loop never sleeps.
struct watcher {
    uv_poll_t poll;
    int fd;
    int64_t spin_ns;
    napi_env env;
    napi_ref callback;
    napi_async_context context;
    int closing;
    // Set while the watcher is open: a worker thread (a lane) ended unasked closes it (below).
    napi_async_cleanup_hook_handle cleanup;
    int tearing_down;
};

static void watcher_closed(uv_handle_t *handle)
{
    struct watcher *w = handle->data;
    if (w->tearing_down)
        napi_remove_async_cleanup_hook(w->cleanup);
    free(w);
}

// The thread's environment ends with the watcher open (Worker.terminate()): Node aborts the
// process if an event loop closes with a handle still open, so it is closed here, and the
// environment waits until it is (the hook is removed once the handle is closed).
static void watcher_teardown(napi_async_cleanup_hook_handle handle, void *data)
{
    struct watcher *w = data;
    w->cleanup = handle;
    w->tearing_down = 1;
    w->closing = 1;
    uv_poll_stop(&w->poll);
    uv_close((uv_handle_t *)&w->poll, watcher_closed);
}

int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

// A client that waits for each answer (queue depth 1) sends its next request a few microseconds
// after the reply: waiting for it here, briefly, spares the sleep and wake-up of the event loop,
// which costs more than the rest of the request on a virtual machine. Returns as soon as the fd
// is readable (the event loop then finds it ready without sleeping) or the time is up.
static bool spin(int fd, int64_t ns)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int64_t deadline = now_ns() + ns;
    do {
        if (poll(&p, 1, 0) != 0)
            return true;
    } while (now_ns() < deadline);
    return false;
}

// A request caught spinning is handled at once, a few times in a row, before the event loop gets
// its turn again (timers, other sockets, the callbacks' own I/O).
#define SPIN_ROUNDS 8

static void watcher_ready(uv_poll_t *poll, int status, int events)
{
    (void)events;
    struct watcher *w = poll->data;
    napi_env env = w->env;
    for (int round = 0; round < SPIN_ROUNDS; round++) {
        napi_handle_scope scope;
        napi_value callback, global, arg;
        if (napi_open_handle_scope(env, &scope) != napi_ok)
            return;
        napi_get_reference_value(env, w->callback, &callback);
        napi_get_global(env, &global);
        napi_create_int32(env, status, &arg);
        // make_callback, not call_function: promises the callback settles run before the loop waits.
        napi_make_callback(env, w->context, global, callback, 1, &arg, NULL);
        napi_close_handle_scope(env, scope);
        if (w->spin_ns <= 0 || w->closing || status != 0 || !spin(w->fd, w->spin_ns))
            return;
    }
}

static napi_value js_watch(napi_env env, napi_callback_info info)
{
    size_t argc = 3;
    napi_value argv[3], name, result;
    int fd;
    int64_t spin_us;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc != 3) {
        napi_throw_type_error(env, NULL, "watch(fd, spinMicroseconds, callback)");
        return NULL;
    }
    CHECK(napi_get_value_int32(env, argv[0], &fd));
    CHECK(napi_get_value_int64(env, argv[1], &spin_us));
    uv_loop_t *loop;
    CHECK(napi_get_uv_event_loop(env, &loop));
    struct watcher *w = calloc(1, sizeof(*w));
    if (!w)
        return throw_errno(env, ENOMEM, "watch");
    w->env = env;
    w->fd = fd;
    w->spin_ns = spin_us * 1000;
    int err = uv_poll_init(loop, &w->poll, fd);
    if (err < 0) {
        free(w);
        return throw_errno(env, -err, "uv_poll_init");
    }
    w->poll.data = w;
    CHECK(napi_create_reference(env, argv[2], 1, &w->callback));
    CHECK(napi_create_string_utf8(env, "bdus:watch", NAPI_AUTO_LENGTH, &name));
    CHECK(napi_async_init(env, NULL, name, &w->context));
    err = uv_poll_start(&w->poll, UV_READABLE, watcher_ready);
    if (err < 0) {
        napi_delete_reference(env, w->callback);
        napi_async_destroy(env, w->context);
        uv_close((uv_handle_t *)&w->poll, watcher_closed);
        return throw_errno(env, -err, "uv_poll_start");
    }
    CHECK(napi_add_async_cleanup_hook(env, watcher_teardown, w, &w->cleanup));
    CHECK(napi_create_external(env, w, NULL, NULL, &result));
    return result;
}

static napi_value js_unwatch(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    struct watcher *w;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_get_value_external(env, argv[0], (void **)&w));
    if (w->closing)
        return NULL;
    w->closing = 1;
    napi_remove_async_cleanup_hook(w->cleanup);
    uv_poll_stop(&w->poll);
    napi_delete_reference(env, w->callback);
    napi_async_destroy(env, w->context);
    uv_close((uv_handle_t *)&w->poll, watcher_closed);
    return NULL;
}

// Changes how long the watcher spins after each call (a device's main reader spins only while
// its lanes' readers are parked: src/frontend/fuse/reader-gate.ts).
static napi_value js_watch_spin(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2];
    struct watcher *w;
    int64_t spin_us;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_get_value_external(env, argv[0], (void **)&w));
    CHECK(napi_get_value_int64(env, argv[1], &spin_us));
    if (!w->closing)
        w->spin_ns = spin_us * 1000;
    return NULL;
}

static napi_value js_wait_readable(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2], result;
    int fd;
    int64_t us;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_get_value_int32(env, argv[0], &fd));
    CHECK(napi_get_value_int64(env, argv[1], &us));
    CHECK(napi_get_boolean(env, spin(fd, us * 1000), &result));
    return result;
}

static napi_value fd_io(napi_env env, napi_callback_info info, int writing)
{
    size_t argc = 3;
    napi_value argv[3], result;
    int fd;
    void *data;
    size_t length;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_get_value_int32(env, argv[0], &fd));
    CHECK(napi_get_buffer_info(env, argv[1], &data, &length));
    if (argc >= 3) {
        uint32_t wanted;
        CHECK(napi_get_value_uint32(env, argv[2], &wanted));
        if (wanted < length)
            length = wanted;
    }
    ssize_t n = writing ? write(fd, data, length) : read(fd, data, length);
    CHECK(napi_create_int32(env, n < 0 ? -errno : (int32_t)n, &result));
    return result;
}

static napi_value js_read_fd(napi_env env, napi_callback_info info)
{
    return fd_io(env, info, 0);
}

static napi_value js_write_fd(napi_env env, napi_callback_info info)
{
    return fd_io(env, info, 1);
}

/* A reply whose header is in one buffer and whose data is in another (a read callback's own
 * memory): one writev, so that the data is copied once, by the kernel, and never by us. */
static napi_value js_write_fd_gather(napi_env env, napi_callback_info info)
{
    size_t argc = 4;
    napi_value argv[4], result;
    int fd;
    uint32_t head_length;
    void *head, *data;
    size_t head_size, data_length;
    napi_typedarray_type type;
    napi_value arraybuffer;
    size_t byte_offset;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_get_value_int32(env, argv[0], &fd));
    CHECK(napi_get_buffer_info(env, argv[1], &head, &head_size));
    CHECK(napi_get_value_uint32(env, argv[2], &head_length));
    CHECK(napi_get_typedarray_info(env, argv[3], &type, &data_length, &data, &arraybuffer, &byte_offset));
    if (type != napi_uint8_array && type != napi_uint8_clamped_array) {
        napi_throw_type_error(env, NULL, "writeFdGather: data must be a Uint8Array");
        return NULL;
    }
    struct iovec iov[2] = {
        {.iov_base = head, .iov_len = head_length < head_size ? head_length : head_size},
        {.iov_base = data, .iov_len = data_length},
    };
    ssize_t n = writev(fd, iov, 2);
    CHECK(napi_create_int32(env, n < 0 ? -errno : (int32_t)n, &result));
    return result;
}

void watch_register(napi_env env, napi_value exports)
{
    napi_property_descriptor props[] = {
        {"watch", NULL, js_watch, NULL, NULL, NULL, napi_default, NULL},
        {"unwatch", NULL, js_unwatch, NULL, NULL, NULL, napi_default, NULL},
        {"watchSpin", NULL, js_watch_spin, NULL, NULL, NULL, napi_default, NULL},
        {"waitReadable", NULL, js_wait_readable, NULL, NULL, NULL, napi_default, NULL},
        {"readFd", NULL, js_read_fd, NULL, NULL, NULL, napi_default, NULL},
        {"writeFd", NULL, js_write_fd, NULL, NULL, NULL, napi_default, NULL},
        {"writeFdGather", NULL, js_write_fd_gather, NULL, NULL, NULL, napi_default, NULL},
    };
    napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
}
