// SPDX-License-Identifier: MIT
//
// Reads, writes and fdatasyncs of files through io_uring, for drivers that keep their data in a
// file (src/drivers/file-io.ts). Through Node's fs every transfer is a job for libuv's thread
// pool: a hand-off to a worker thread and a wake-up back, two context switches per request, which
// held the file driver to a fifth of the kernel's loop device on the same file. Here a loop
// turn's transfers leave in one io_uring_enter (the command ring's, ring.h); a read or write the
// page cache can serve runs inline during that submit, and what must wait for a disk completes
// in the kernel's own workers. Completions come back on the event loop in batches.
//
//   fileIo(entries, callback(count)) -> { io, completions }
//                                        up to `entries` operations in flight; `completions`
//                                        holds (tag, result) int32 pairs of each batch. Throws if
//                                        the kernel gives no io_uring (the caller uses fs).
//   fileIoQueue(io, op, fd, data, start, length, position, tag)
//                                     -> 0, or -EBUSY (no free entry) / -EINVAL; op: 0 read into
//                                        data[start, start + length), 1 write from it, 2
//                                        fdatasync (data null). The memory must stay until the
//                                        operation's completion.
//   fileIoClose(io)                   -> ends the ring; the kernel cancels operations still in
//                                        flight in its own time, so their memory must stay (the
//                                        caller keeps it: FileIo.close)
//
// The event loop is kept alive only while operations are in flight, as fs's are.

#define _GNU_SOURCE
#include <errno.h>
#include <linux/io_uring.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>

#include "file_io.h"
#include "napi_util.h"
#include "ring.h"

struct file_io {
    struct command_ring commands; // first: the ring's callbacks get it through it
    uint32_t in_flight;
    int owners; // the JavaScript external and the ring's handles: the last to let go frees it
};

static void release(struct file_io *f)
{
    if (--f->owners == 0)
        free(f);
}

static void io_freed(struct command_ring *c)
{
    release((struct file_io *)c);
}

// An io dropped without fileIoClose ends its ring here.
static void finalize(napi_env env, void *data, void *hint)
{
    (void)hint;
    struct file_io *f = data;
    if (!f->commands.closed)
        command_ring_close(env, &f->commands);
    release(f);
}

static void io_reaped(struct command_ring *c, unsigned count)
{
    struct file_io *f = (struct file_io *)c;
    f->in_flight = count < f->in_flight ? f->in_flight - count : 0;
    if (f->in_flight == 0)
        uv_unref((uv_handle_t *)&c->poll);
}

static struct file_io *io_of(napi_env env, napi_value value)
{
    struct file_io *f = NULL;
    napi_get_value_external(env, value, (void **)&f);
    return f && !f->commands.closed ? f : NULL;
}

static napi_value int32_value(napi_env env, int32_t n)
{
    napi_value result;
    CHECK(napi_create_int32(env, n, &result));
    return result;
}

static napi_value js_file_io(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2], result, value;
    uint32_t entries;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc != 2) {
        napi_throw_type_error(env, NULL, "fileIo(entries, callback)");
        return NULL;
    }
    CHECK(napi_get_value_uint32(env, argv[0], &entries));
    if (entries == 0 || entries > 4096)
        return throw_errno(env, EINVAL, "fileIo");
    struct file_io *f = calloc(1, sizeof(*f));
    if (!f)
        return throw_errno(env, ENOMEM, "fileIo");
    f->commands.freed = io_freed;
    f->commands.reaped = io_reaped;
    int err = command_ring_init(&f->commands, entries, 0, entries, 0);
    if (err < 0) {
        command_ring_free_early(&f->commands);
        free(f);
        return throw_errno(env, -err, "fileIo: io_uring_setup");
    }
    CHECK(command_ring_start(env, &f->commands, argv[1], "bdus:file-io"));
    uv_unref((uv_handle_t *)&f->commands.poll);
    f->owners = 2;
    CHECK(napi_create_object(env, &result));
    CHECK(napi_create_external(env, f, finalize, NULL, &value));
    CHECK(napi_set_named_property(env, result, "io", value));
    CHECK(napi_create_external_buffer(env, entries * 2 * sizeof(int32_t), f->commands.completions, NULL, NULL, &value));
    CHECK(napi_set_named_property(env, result, "completions", value));
    return result;
}

static napi_value js_file_io_queue(napi_env env, napi_callback_info info)
{
    size_t argc = 8;
    napi_value argv[8], arraybuffer;
    uint32_t op, start = 0, length = 0, tag;
    int32_t fd;
    int64_t position = 0;
    void *data = NULL;
    size_t size = 0, byte_offset;
    napi_typedarray_type type = napi_uint8_array;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    struct file_io *f = io_of(env, argv[0]);
    CHECK(napi_get_value_uint32(env, argv[1], &op));
    CHECK(napi_get_value_int32(env, argv[2], &fd));
    CHECK(napi_get_value_uint32(env, argv[7], &tag));
    if (op != 2) {
        CHECK(napi_get_typedarray_info(env, argv[3], &type, &size, &data, &arraybuffer, &byte_offset));
        CHECK(napi_get_value_uint32(env, argv[4], &start));
        CHECK(napi_get_value_uint32(env, argv[5], &length));
        CHECK(napi_get_value_int64(env, argv[6], &position));
    }
    if (!f || op > 2 || type != napi_uint8_array || (uint64_t)start + length > size || position < 0)
        return int32_value(env, -EINVAL);
    if (f->in_flight >= f->commands.capacity)
        return int32_value(env, -EBUSY);
    struct io_uring_sqe *sqe = command_ring_sqe(&f->commands);
    if (!sqe)
        return int32_value(env, -EBUSY);
    sqe->fd = fd;
    sqe->user_data = tag;
    if (op == 2) {
        sqe->opcode = IORING_OP_FSYNC;
        sqe->fsync_flags = IORING_FSYNC_DATASYNC;
    } else {
        sqe->opcode = op == 0 ? IORING_OP_READ : IORING_OP_WRITE;
        sqe->addr = (uint64_t)(uintptr_t)((uint8_t *)data + start);
        sqe->len = length;
        sqe->off = (uint64_t)position;
    }
    if (f->in_flight++ == 0)
        uv_ref((uv_handle_t *)&f->commands.poll);
    return int32_value(env, 0);
}

static napi_value js_file_io_close(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    struct file_io *f = io_of(env, argv[0]);
    if (f)
        command_ring_close(env, &f->commands);
    return NULL;
}

void file_io_register(napi_env env, napi_value exports)
{
    napi_property_descriptor props[] = {
        {"fileIo", NULL, js_file_io, NULL, NULL, NULL, napi_default, NULL},
        {"fileIoQueue", NULL, js_file_io_queue, NULL, NULL, NULL, napi_default, NULL},
        {"fileIoClose", NULL, js_file_io_close, NULL, NULL, NULL, napi_default, NULL},
    };
    napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
}
