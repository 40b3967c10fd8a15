// SPDX-License-Identifier: MIT
//
// FUSE over io_uring (fs/fuse/dev_uring.c, Linux 6.14 and later, FUSE ABI 7.42), on a command
// ring (ring.h): requests arrive as completions of commands on /dev/fuse, and each answer is the
// next command, so a batch of requests costs one io_uring_enter instead of a read and a write
// each. Called from src/frontend/fuse/ring.ts:
//
//   fuseRing(fd, queueIds, depth, payloadSize, spinMicroseconds, callback(count))
//                                        -> { ring, headers, payloads, completions }
//                                           registers `depth` entries on each queue of the array
//                                           `queueIds` (the kernel has one queue per possible CPU
//                                           and sends a request to the queue of the CPU it starts
//                                           on; a device's lanes split them: entries of queue
//                                           queueIds[i] are i * depth to (i + 1) * depth - 1);
//                                           each entry is a 288-byte header
//                                           (fuse_uring_req_header) and a payload buffer.
//                                           `callback(count)` for each batch of completions
//                                           (entry, result) in `completions`; after a batch, the
//                                           thread waits `spinMicroseconds` for the next, spinning
//                                           (the kernel then leaves the ring's task work to
//                                           the thread's next entry: ring.h).
//   fuseRingSpin(ring, on)                  stops spinning after a batch (`on` false), or spins
//                                           again for the spinMicroseconds it was set up with.
//   fuseRingCommit(ring, entry)             queues the entry's COMMIT_AND_FETCH (the answer is
//                                           in its header and payload), sent with the turn's
//                                           others.
//   fuseRingWait(ring)                      sends the queued commits and, if the ring spins now,
//                                           waits for the next request, spinning (answers that
//                                           promises gave after the batch's callback).
//   fuseRingClose(ring)                     ends the ring (the kernel cancels the entries that
//                                           wait; the buffers stay until collected).

#define _GNU_SOURCE
#include <errno.h>
#include <linux/io_uring.h>
#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fuse_uring.h"
#include "napi_util.h"
#include "ring.h"

// linux/fuse.h before 6.14 (Debian 12's) lacks these (ABI 7.42).
#define URING_HEADER_SIZE 288 // struct fuse_uring_req_header: in_out[128], op_in[128], ent_in_out
#define URING_ENT_IN_OUT 256  // struct fuse_uring_ent_in_out: flags, commit_id, payload_sz, ...
#define URING_CMD_REGISTER 1
#define URING_CMD_COMMIT_AND_FETCH 2

struct uring_cmd_req { // struct fuse_uring_cmd_req, in the SQE's command area
    uint64_t flags;
    uint64_t commit_id;
    uint16_t qid;
    uint8_t padding[6];
};

struct fuse_ring {
    struct command_ring commands; // first: the ring's callbacks get the fuse ring through it
    int fd;
    uint32_t depth, entries;
    uint8_t *headers, *payloads;
    size_t headers_len, payloads_len;
    struct iovec *iovecs; // two per entry, read by the kernel at REGISTER
    uint16_t *qids;       // the kernel's queue of each group of `depth` entries
};

static void ring_freed(struct command_ring *c)
{
    struct fuse_ring *r = (struct fuse_ring *)c;
    free(r->iovecs);
    free(r->qids);
    free(r);
}

static void entry_command(struct fuse_ring *r, uint32_t op, uint32_t entry)
{
    struct io_uring_sqe *sqe = command_ring_sqe(&r->commands);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = r->fd;
    sqe->cmd_op = op;
    sqe->user_data = entry;
    sqe->addr = (uint64_t)(uintptr_t)&r->iovecs[2 * entry];
    sqe->len = 2;
    struct uring_cmd_req *cmd = (struct uring_cmd_req *)sqe->cmd;
    cmd->qid = r->qids[entry / r->depth];
    if (op == URING_CMD_COMMIT_AND_FETCH)
        memcpy(&cmd->commit_id, r->headers + (size_t)entry * URING_HEADER_SIZE + URING_ENT_IN_OUT + 8, 8);
}

static void free_early(struct fuse_ring *r)
{
    if (r->headers)
        munmap(r->headers, r->headers_len);
    if (r->payloads)
        munmap(r->payloads, r->payloads_len);
    command_ring_free_early(&r->commands);
    free(r->iovecs);
    free(r->qids);
    free(r);
}

static void *map(size_t length)
{
    void *p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static napi_value js_fuse_ring(napi_env env, napi_callback_info info)
{
    size_t argc = 6;
    napi_value argv[6], result, value;
    int32_t fd;
    uint32_t queues, depth, payload_size, spin_us;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc != 6) {
        napi_throw_type_error(env, NULL, "fuseRing(fd, queueIds, depth, payloadSize, spinMicroseconds, callback)");
        return NULL;
    }
    bool is_array = false;
    CHECK(napi_get_value_int32(env, argv[0], &fd));
    CHECK(napi_is_array(env, argv[1], &is_array));
    if (!is_array) {
        napi_throw_type_error(env, NULL, "fuseRing: queueIds must be an array");
        return NULL;
    }
    CHECK(napi_get_array_length(env, argv[1], &queues));
    CHECK(napi_get_value_uint32(env, argv[2], &depth));
    CHECK(napi_get_value_uint32(env, argv[3], &payload_size));
    CHECK(napi_get_value_uint32(env, argv[4], &spin_us));
    if (queues == 0 || queues > 4096 || depth == 0 || depth > 1024 || payload_size == 0 || (uint64_t)queues * depth > 32768)
        return throw_errno(env, EINVAL, "fuseRing");

    struct fuse_ring *r = calloc(1, sizeof(*r));
    if (!r)
        return throw_errno(env, ENOMEM, "fuseRing");
    r->qids = calloc(queues, sizeof(*r->qids));
    if (!r->qids) {
        free(r);
        return throw_errno(env, ENOMEM, "fuseRing");
    }
    for (uint32_t i = 0; i < queues; i++) {
        uint32_t qid = 0;
        if (napi_get_element(env, argv[1], i, &value) != napi_ok || napi_get_value_uint32(env, value, &qid) != napi_ok || qid > 4095) {
            free(r->qids);
            free(r);
            return throw_errno(env, EINVAL, "fuseRing: a queue id");
        }
        r->qids[i] = (uint16_t)qid;
    }
    r->commands.freed = ring_freed;
    r->fd = fd;
    r->depth = depth;
    r->entries = queues * depth;
    r->headers_len = (size_t)r->entries * URING_HEADER_SIZE;
    r->payloads_len = (size_t)r->entries * payload_size;
    r->iovecs = calloc(2 * (size_t)r->entries, sizeof(struct iovec));
    r->headers = map(r->headers_len);
    r->payloads = map(r->payloads_len);
    int err = !r->iovecs || !r->headers || !r->payloads ? -ENOMEM : command_ring_init(&r->commands, r->entries, IORING_SETUP_SQE128, r->entries, spin_us);
    if (err < 0) {
        free_early(r);
        return throw_errno(env, -err, "fuseRing setup");
    }
    for (uint32_t e = 0; e < r->entries; e++) {
        r->iovecs[2 * e] = (struct iovec){r->headers + (size_t)e * URING_HEADER_SIZE, URING_HEADER_SIZE};
        r->iovecs[2 * e + 1] = (struct iovec){r->payloads + (size_t)e * payload_size, payload_size};
        entry_command(r, URING_CMD_REGISTER, e);
    }
    err = ring_enter(&r->commands.ring, 0);
    if (err < 0) {
        free_early(r);
        return throw_errno(env, -err, "fuseRing register");
    }
    // A refused REGISTER (io_uring off, a payload too small) completes at once: the caller sees
    // its result as the first completions.
    CHECK(command_ring_start(env, &r->commands, argv[5], "bdus:fuse-ring"));

    napi_value headers = mapped_buffer(env, r->headers, r->headers_len);
    napi_value payloads = headers ? mapped_buffer(env, r->payloads, r->payloads_len) : NULL;
    if (!payloads)
        return NULL;
    CHECK(napi_create_object(env, &result));
    CHECK(napi_create_external(env, r, NULL, NULL, &value));
    CHECK(napi_set_named_property(env, result, "ring", value));
    CHECK(napi_set_named_property(env, result, "headers", headers));
    CHECK(napi_set_named_property(env, result, "payloads", payloads));
    CHECK(napi_create_external_buffer(env, r->entries * 2 * sizeof(int32_t), r->commands.completions, NULL, NULL, &value));
    CHECK(napi_set_named_property(env, result, "completions", value));
    return result;
}

static struct fuse_ring *ring_of(napi_env env, napi_value value)
{
    struct fuse_ring *r = NULL;
    napi_get_value_external(env, value, (void **)&r);
    return r;
}

static napi_value js_fuse_ring_commit(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2];
    uint32_t entry;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    struct fuse_ring *r = ring_of(env, argv[0]);
    CHECK(napi_get_value_uint32(env, argv[1], &entry));
    if (r && !r->commands.closed && entry < r->entries)
        entry_command(r, URING_CMD_COMMIT_AND_FETCH, entry);
    return NULL;
}

static napi_value js_fuse_ring_spin(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2];
    bool on = false;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    struct fuse_ring *r = ring_of(env, argv[0]);
    CHECK(napi_get_value_bool(env, argv[1], &on));
    if (r)
        command_ring_spin(&r->commands, on);
    return NULL;
}

static napi_value js_fuse_ring_wait(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    struct fuse_ring *r = ring_of(env, argv[0]);
    if (r && !r->commands.closed)
        command_ring_wait(&r->commands);
    return NULL;
}

static napi_value js_fuse_ring_close(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    struct fuse_ring *r = ring_of(env, argv[0]);
    if (r)
        command_ring_close(env, &r->commands);
    return NULL;
}

void fuse_uring_register(napi_env env, napi_value exports)
{
    napi_property_descriptor props[] = {
        {"fuseRing", NULL, js_fuse_ring, NULL, NULL, NULL, napi_default, NULL},
        {"fuseRingCommit", NULL, js_fuse_ring_commit, NULL, NULL, NULL, napi_default, NULL},
        {"fuseRingSpin", NULL, js_fuse_ring_spin, NULL, NULL, NULL, napi_default, NULL},
        {"fuseRingWait", NULL, js_fuse_ring_wait, NULL, NULL, NULL, napi_default, NULL},
        {"fuseRingClose", NULL, js_fuse_ring_close, NULL, NULL, NULL, napi_default, NULL},
    };
    napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
}
