// SPDX-License-Identifier: MIT
//
// ublk (drivers/block/ublk_drv.c, Linux 6.0 and later) through io_uring, with raw system calls
// and the kernel's uapi headers: no liburing. Two parts, both called from src/frontend/ublk/:
//
//   ublkControl(request, callback(result))  one control command on /dev/ublk-control, on the libuv
//                                           pool: START_DEV and END_USER_RECOVERY wait for the
//                                           queues, and START_DEV's partition scan reads the
//                                           device, so the event loop must stay free to serve.
//   ublkQueue(cdevFd, queue, depth, bufferSize, callback(count)) -> { queue, descriptors,
//                                           buffers, completions }
//                                           one hardware queue's ring, owned by the event loop
//                                           thread (a command ring, ring.h): FETCH_REQ on every
//                                           tag at once, then `callback(count)` for each batch
//                                           of completions (tag, result pairs) in `completions`.
//   ublkCommit(queue, tag, result, half)    queues a COMMIT_AND_FETCH_REQ (no system call): the
//                                           turn's commits leave in one io_uring_enter.
//   ublkCopy(queue, tag, memory, toKernel)  a device with UBLK_F_USER_COPY: copies a request's
//                                           data between `memory` and the request (pwrite for a
//                                           read's answer, pread for a write's data).
//   ublkQueueClose(queue, leave)            ends the ring: the kernel cancels its commands (a
//                                           device with user recovery then quiesces); or, left,
//                                           stops reading it and keeps it for ublkCloseLeft.
//   ublkCloseLeft()                         closes the left rings whose thread has exited.
//
// Each tag's buffer is page-aligned anonymous memory handed to the kernel with every fetch: the
// kernel copies a write's data into it before the request is delivered and a read's data out of
// it at commit, so JavaScript copies nothing beyond what the driver itself does. A device with
// UBLK_F_USER_COPY gives the kernel no buffer (the address must be 0): the server copies each
// request's data itself with pread/pwrite on the character device, into or out of any memory,
// the driver's own included (docs/performance.md, "ublk with user copy").

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/ublk_cmd.h>
#include <node_api.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "napi_util.h"
#include "ring.h"
#include "ublk.h"

// Older uapi headers (Debian 12's are 6.1) lack the ioctl-encoded opcodes, which 6.12 requires
// unless built with legacy opcodes.
#ifndef UBLK_U_IO_FETCH_REQ
#define UBLK_U_IO_FETCH_REQ _IOWR('u', UBLK_IO_FETCH_REQ, struct ublksrv_io_cmd)
#define UBLK_U_IO_COMMIT_AND_FETCH_REQ _IOWR('u', UBLK_IO_COMMIT_AND_FETCH_REQ, struct ublksrv_io_cmd)
#endif
// And the user copy's file positions (6.5): a request's data is at
// UBLKSRV_IO_BUF_OFFSET + (queue << UBLK_QID_OFF) + (tag << UBLK_TAG_OFF) + offset in it.
#ifndef UBLK_TAG_OFF
#define UBLK_TAG_OFF 25
#define UBLK_QID_OFF (UBLK_TAG_OFF + 16)
#endif

/* Control commands ------------------------------------------------------------------------ */

// The kernel dispatches on the command number; the direction matters for GET_FEATURES only,
// which it compares whole.
static uint32_t control_op(uint32_t nr)
{
    switch (nr) {
    case 0x01: // GET_QUEUE_AFFINITY
    case 0x02: // GET_DEV_INFO
    case 0x09: // GET_PARAMS
    case 0x13: // GET_FEATURES
        return _IOR('u', nr, struct ublksrv_ctrl_cmd);
    default:
        return _IOWR('u', nr, struct ublksrv_ctrl_cmd);
    }
}

int ublk_control(const struct ublk_control_request *q)
{
    int control = open("/dev/ublk-control", O_RDWR | O_CLOEXEC);
    if (control < 0)
        return -errno;
    struct ring r;
    int result = ring_init(&r, 2, IORING_SETUP_SQE128);
    if (result < 0) {
        close(control);
        return result;
    }
    struct io_uring_sqe *sqe = ring_sqe(&r);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = control;
    sqe->cmd_op = control_op(q->command);
    struct ublksrv_ctrl_cmd *cmd = (struct ublksrv_ctrl_cmd *)sqe->cmd;
    cmd->dev_id = q->device;
    cmd->queue_id = q->queue;
    cmd->len = (uint16_t)q->length;
    cmd->addr = (uint64_t)(uintptr_t)q->buffer;
    cmd->data[0] = q->data;
    result = ring_enter(&r, 1);
    if (result == 0) {
        unsigned head = *r.cq_head;
        result = r.cqes[head & *r.cq_mask].res;
        atomic_store_explicit((_Atomic unsigned *)r.cq_head, head + 1, memory_order_release);
    }
    ring_exit(&r);
    close(control);
    return result;
}

struct control_work {
    napi_async_work work;
    napi_ref callback, buffer;
    struct ublk_control_request request;
    int result;
};

static void control_execute(napi_env env, void *data)
{
    (void)env;
    struct control_work *w = data;
    w->result = ublk_control(&w->request);
}

static void control_complete(napi_env env, napi_status status, void *data)
{
    struct control_work *w = data;
    napi_value callback, global, arg;
    napi_get_reference_value(env, w->callback, &callback);
    napi_get_global(env, &global);
    napi_create_int32(env, status == napi_ok ? w->result : -ECANCELED, &arg);
    napi_call_function(env, global, callback, 1, &arg, NULL);
    napi_delete_reference(env, w->callback);
    if (w->buffer)
        napi_delete_reference(env, w->buffer);
    napi_delete_async_work(env, w->work);
    free(w);
}

// ublkControl({ command, device, queue?, data?, buffer? }, callback(result)): result is >= 0,
// or a negative errno. `buffer` is the command's payload, read and written by the kernel.
static napi_value js_ublk_control(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2], name, buffer;
    bool has_buffer = false;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    struct control_work *w = calloc(1, sizeof(*w));
    if (!w)
        return throw_errno(env, ENOMEM, "ublkControl");
    w->request.command = (uint32_t)object_field(env, argv[0], "command", 0);
    w->request.device = (uint32_t)object_field(env, argv[0], "device", -1);
    w->request.queue = (uint16_t)object_field(env, argv[0], "queue", -1);
    w->request.data = (uint64_t)object_field(env, argv[0], "data", 0);
    CHECK(napi_has_named_property(env, argv[0], "buffer", &has_buffer));
    if (has_buffer) {
        size_t length;
        CHECK(napi_get_named_property(env, argv[0], "buffer", &buffer));
        CHECK(napi_get_buffer_info(env, buffer, &w->request.buffer, &length));
        w->request.length = (uint32_t)length;
        CHECK(napi_create_reference(env, buffer, 1, &w->buffer));
    }
    CHECK(napi_create_reference(env, argv[1], 1, &w->callback));
    CHECK(napi_create_string_utf8(env, "bdus:ublk-control", NAPI_AUTO_LENGTH, &name));
    CHECK(napi_create_async_work(env, NULL, name, control_execute, control_complete, w, &w->work));
    CHECK(napi_queue_async_work(env, w->work));
    return NULL;
}

/* I/O queues ------------------------------------------------------------------------------ */

struct queue {
    struct command_ring commands; // first: the ring's callbacks get the queue through it
    int cdev;
    uint16_t id, depth;
    uint32_t buffer_size;
    int user_copy; // UBLK_F_USER_COPY: fetches and commits carry no buffer
    uint8_t *buffers;
    void *descriptors;
    size_t descriptors_len;
};

static void queue_freed(struct command_ring *c)
{
    struct queue *q = (struct queue *)c;
    // Still mapped if the ring was closed by its thread's end rather than by ublkQueueClose.
    if (q->descriptors)
        munmap(q->descriptors, q->descriptors_len);
    free(q);
}

static void queue_command(struct queue *q, uint32_t op, uint16_t tag, int32_t result, uint32_t half)
{
    // A tag has one command at a time, and the ring has a place per tag: never full.
    struct io_uring_sqe *sqe = command_ring_sqe(&q->commands);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = q->cdev;
    sqe->cmd_op = op;
    sqe->user_data = tag;
    struct ublksrv_io_cmd *cmd = (struct ublksrv_io_cmd *)sqe->cmd;
    cmd->q_id = q->id;
    cmd->tag = tag;
    cmd->result = result;
    if (!q->user_copy)
        cmd->addr = (uint64_t)(uintptr_t)(q->buffers + ((size_t)half * q->depth + tag) * q->buffer_size);
}

static void queue_free_early(struct queue *q)
{
    if (q->descriptors)
        munmap(q->descriptors, q->descriptors_len);
    command_ring_free_early(&q->commands);
    free(q);
}

static napi_value js_ublk_queue(napi_env env, napi_callback_info info)
{
    size_t argc = 6;
    napi_value argv[6], result, value;
    int32_t cdev;
    uint32_t id, depth, buffer_size;
    bool user_copy;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc != 6) {
        napi_throw_type_error(env, NULL, "ublkQueue(cdevFd, queue, depth, bufferSize, userCopy, callback)");
        return NULL;
    }
    CHECK(napi_get_value_int32(env, argv[0], &cdev));
    CHECK(napi_get_value_uint32(env, argv[1], &id));
    CHECK(napi_get_value_uint32(env, argv[2], &depth));
    CHECK(napi_get_value_uint32(env, argv[3], &buffer_size));
    CHECK(napi_get_value_bool(env, argv[4], &user_copy));
    long page = sysconf(_SC_PAGESIZE);
    if (depth == 0 || depth > UBLK_MAX_QUEUE_DEPTH || buffer_size == 0 || buffer_size % page)
        return throw_errno(env, EINVAL, "ublkQueue");

    struct queue *q = calloc(1, sizeof(*q));
    if (!q)
        return throw_errno(env, ENOMEM, "ublkQueue");
    q->commands.freed = queue_freed;
    q->cdev = cdev;
    q->id = (uint16_t)id;
    q->depth = (uint16_t)depth;
    q->buffer_size = buffer_size;
    q->user_copy = user_copy;
    int err = command_ring_init(&q->commands, depth, 0, depth, 0);
    if (err < 0) {
        queue_free_early(q);
        return throw_errno(env, -err, "ublk queue setup");
    }
    q->commands.left_to_thread = 1; // a lane's thread that ends leaves its queues (js_ublk_queue_close)

    // The queue's request descriptors, which the kernel fills before it delivers a request.
    size_t stride = ((UBLK_MAX_QUEUE_DEPTH * sizeof(struct ublksrv_io_desc)) + page - 1) / page * page;
    q->descriptors_len = (depth * sizeof(struct ublksrv_io_desc) + page - 1) / page * page;
    q->descriptors = mmap(NULL, q->descriptors_len, PROT_READ, MAP_SHARED | MAP_POPULATE, cdev,
                          UBLKSRV_CMD_BUF_OFFSET + id * stride);
    if (q->descriptors == MAP_FAILED) {
        err = errno;
        q->descriptors = NULL;
        queue_free_early(q);
        return throw_errno(env, err, "mmap of the ublk queue's descriptors");
    }
    // Two buffers per tag: a request answered with ETIMEDOUT while its callback still holds its
    // buffer lets the tag's next request take the other one.
    size_t buffers_len = 2 * (size_t)depth * buffer_size;
    q->buffers = mmap(NULL, buffers_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (q->buffers == MAP_FAILED) {
        err = errno;
        queue_free_early(q);
        return throw_errno(env, err, "mmap of the ublk queue's buffers");
    }
    napi_value buffers = mapped_buffer(env, q->buffers, buffers_len);
    if (!buffers) {
        queue_free_early(q);
        return NULL;
    }

    for (uint16_t tag = 0; tag < depth; tag++)
        queue_command(q, UBLK_U_IO_FETCH_REQ, tag, 0, 0);
    err = ring_enter(&q->commands.ring, 0);
    if (err < 0) {
        queue_free_early(q);
        return throw_errno(env, -err, "ublk queue setup");
    }
    CHECK(command_ring_start(env, &q->commands, argv[5], "bdus:ublk-queue"));

    CHECK(napi_create_object(env, &result));
    CHECK(napi_create_external(env, q, NULL, NULL, &value));
    CHECK(napi_set_named_property(env, result, "queue", value));
    CHECK(napi_create_external_buffer(env, q->descriptors_len, q->descriptors, NULL, NULL, &value));
    CHECK(napi_set_named_property(env, result, "descriptors", value));
    CHECK(napi_set_named_property(env, result, "buffers", buffers));
    CHECK(napi_create_external_buffer(env, depth * 2 * sizeof(int32_t), q->commands.completions, NULL, NULL, &value));
    CHECK(napi_set_named_property(env, result, "completions", value));
    return result;
}

static struct queue *queue_of(napi_env env, napi_value value)
{
    struct queue *q = NULL;
    napi_get_value_external(env, value, (void **)&q);
    return q;
}

static napi_value js_ublk_commit(napi_env env, napi_callback_info info)
{
    size_t argc = 4;
    napi_value argv[4];
    uint32_t tag, half;
    int32_t result;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    struct queue *q = queue_of(env, argv[0]);
    CHECK(napi_get_value_uint32(env, argv[1], &tag));
    CHECK(napi_get_value_int32(env, argv[2], &result));
    CHECK(napi_get_value_uint32(env, argv[3], &half));
    if (q && !q->commands.closed && tag < q->depth)
        queue_command(q, UBLK_U_IO_COMMIT_AND_FETCH_REQ, (uint16_t)tag, result, half & 1);
    return NULL;
}

// ublkCopy(queue, tag, memory, toKernel): the bytes copied, or -errno. Synchronous, on the
// serving thread: the character device cannot be read or written without blocking, so an
// io_uring read or write of it would go to a kernel worker thread, a hand-off per request.
static napi_value js_ublk_copy(napi_env env, napi_callback_info info)
{
    size_t argc = 4;
    napi_value argv[4], result;
    uint32_t tag;
    bool to_kernel;
    napi_typedarray_type type;
    size_t length, offset;
    void *data;
    napi_value arraybuffer;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    struct queue *q = queue_of(env, argv[0]);
    CHECK(napi_get_value_uint32(env, argv[1], &tag));
    CHECK(napi_get_typedarray_info(env, argv[2], &type, &length, &data, &arraybuffer, &offset));
    CHECK(napi_get_value_bool(env, argv[3], &to_kernel));
    int64_t n = -EINVAL;
    if (q && !q->commands.closed && q->user_copy && tag < q->depth && type == napi_uint8_array) {
        off_t at = (off_t)(UBLKSRV_IO_BUF_OFFSET + ((uint64_t)q->id << UBLK_QID_OFF) + ((uint64_t)tag << UBLK_TAG_OFF));
        ssize_t done = to_kernel ? pwrite(q->cdev, data, length, at) : pread(q->cdev, data, length, at);
        n = done < 0 ? -errno : done;
    }
    CHECK(napi_create_int64(env, n, &result));
    return result;
}

// Ends a queue: answers queued this turn still go (a request answered is not given to the next
// server); the buffers stay mapped until collected (a callback may still hold a view of them).
//
// Closed (`leave` false, once the device is stopped): the ring ends and the kernel cancels its
// commands. Left (`leave` true, a driver handing the device over or giving it up): the ring is
// no longer read but stays open, its commands pending, until its thread has exited (then
// ublkCloseLeft closes it) or the process ends; the kernel then cancels them and requeues for
// the next server what the queue held. Closing it instead, with
// its thread living on, is unsafe on Linux 6.12: the kernel hands a request to the queue as task
// work on that thread, which runs whenever the thread returns to user space, also after the
// close cancelled the queue's commands; such a request reaches no one and is never requeued,
// and the device's quiesce waits for it for ever holding the device's mutex, and with it the
// next driver's START_USER_RECOVERY and every later command on the device (it hung the VM's
// tests now and then; docs/frontends.md, "Handing a queue over"). Once the thread is gone, the
// work runs on a kernel worker, where ublk requeues the request.
static napi_value js_ublk_queue_close(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2];
    bool leave = false;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    struct queue *q = queue_of(env, argv[0]);
    if (!q || q->commands.closed)
        return NULL;
    if (argc > 1)
        CHECK(napi_get_value_bool(env, argv[1], &leave));
    munmap(q->descriptors, q->descriptors_len);
    q->descriptors = NULL;
    if (leave)
        command_ring_leave(env, &q->commands);
    else
        command_ring_close(env, &q->commands);
    return NULL;
}

// Closes the rings of queues left by threads that have exited since (a lane's, once its thread
// is gone): the kernel then cancels their commands and requeues what they held, with no thread of
// theirs alive to run a late request's task work. The count of those whose thread still runs.
static napi_value js_ublk_close_left(napi_env env, napi_callback_info info)
{
    (void)info;
    napi_value result;
    CHECK(napi_create_int32(env, command_rings_close_left(), &result));
    return result;
}

void ublk_register(napi_env env, napi_value exports)
{
    napi_property_descriptor props[] = {
        {"ublkControl", NULL, js_ublk_control, NULL, NULL, NULL, napi_default, NULL},
        {"ublkQueue", NULL, js_ublk_queue, NULL, NULL, NULL, napi_default, NULL},
        {"ublkCommit", NULL, js_ublk_commit, NULL, NULL, NULL, napi_default, NULL},
        {"ublkCopy", NULL, js_ublk_copy, NULL, NULL, NULL, napi_default, NULL},
        {"ublkQueueClose", NULL, js_ublk_queue_close, NULL, NULL, NULL, napi_default, NULL},
        {"ublkCloseLeft", NULL, js_ublk_close_left, NULL, NULL, NULL, napi_default, NULL},
    };
    napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
}
