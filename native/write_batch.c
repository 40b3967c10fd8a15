// SPDX-License-Identifier: MIT
//
// Writes to one file gathered into one system call: each write is an io_uring entry (IORING_OP_WRITE,
// or WRITEV for a reply whose data is the read callback's own memory), and a batch of them is
// submitted by one io_uring_enter. For /dev/fuse, where each reply is a write of its own (the
// kernel takes one message per write) and a system call costs about 1 us in this guest, that is
// one system call per batch of replies instead of one per reply. A write to /dev/fuse never
// blocks, so io_uring runs each one inline during the submit, in order. Successful writes post
// nothing (IOSQE_CQE_SKIP_SUCCESS); a failed one posts its errno, which the submit collects.
// Called from src/frontend/fuse/channel.ts:
//
//   writeBatch(fd, entries)           -> batch: up to `entries` writes queued before a batch
//                                        submits by itself. Throws if the kernel has no io_uring
//                                        for us (the caller then writes as before).
//   writeBatchAdd(batch, buffer, length)
//   writeBatchAddGather(batch, head, headLength, data)
//                                     -> queues a write; the memory must stay as it is until the
//                                        submit. A full batch submits first: returns how many
//                                        writes failed then, else 0.
//   writeBatchSubmit(batch)           -> submits what is queued: how many writes failed
//   writeBatchErrors(batch)           -> the negative errnos of the last submit's failed writes
//   writeBatchClose(batch)            -> submits what is queued (how many failed) and ends the ring

#define _GNU_SOURCE
#include <errno.h>
#include <linux/io_uring.h>
#include <node_api.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "napi_util.h"
#include "ring.h"
#include "write_batch.h"

#define ERRORS 64

struct write_batch {
    struct ring ring;
    int fd;
    int closed;
    struct iovec *iovecs; // two per submission entry, for gathered writes: read by the kernel at submit
    int32_t errors[ERRORS]; // the last submit's failures
    int32_t failed;
};

static void batch_end(struct write_batch *b)
{
    b->closed = 1;
    ring_exit(&b->ring);
    free(b->iovecs);
    b->iovecs = NULL;
}

// A lane's thread that ends with its batch open (Worker.terminate()) ends its ring here; the
// struct goes with its external.
static void cleanup(void *data)
{
    struct write_batch *b = data;
    if (!b->closed)
        batch_end(b);
}

static void finalize(napi_env env, void *data, void *hint)
{
    (void)hint;
    struct write_batch *b = data;
    if (!b->closed) {
        napi_remove_env_cleanup_hook(env, cleanup, b);
        batch_end(b);
    }
    free(b);
}

// Submits the queued writes and collects the failed ones: their count.
static int32_t submit(struct write_batch *b)
{
    if (b->ring.unsubmitted)
        ring_enter(&b->ring, 0);
    unsigned head = *b->ring.cq_head;
    unsigned tail = atomic_load_explicit((_Atomic unsigned *)b->ring.cq_tail, memory_order_acquire);
    int32_t failed = 0;
    for (; head != tail; head++) {
        struct io_uring_cqe *cqe = &b->ring.cqes[head & *b->ring.cq_mask];
        if (cqe->res < 0 && failed < ERRORS)
            b->errors[failed++] = cqe->res;
    }
    atomic_store_explicit((_Atomic unsigned *)b->ring.cq_head, head, memory_order_release);
    return b->failed = failed;
}

static struct write_batch *batch_of(napi_env env, napi_value value)
{
    struct write_batch *b = NULL;
    napi_get_value_external(env, value, (void **)&b);
    return b && !b->closed ? b : NULL;
}

// The next submission entry: a full ring submits first (`failed` gets the count of failures).
// NULL if the ring stays full (a submit that failed): the caller writes at once.
static struct io_uring_sqe *entry(struct write_batch *b, int32_t *failed)
{
    struct io_uring_sqe *sqe = ring_sqe(&b->ring);
    if (!sqe) {
        *failed = submit(b);
        sqe = ring_sqe(&b->ring);
    }
    if (sqe) {
        sqe->fd = b->fd;
        sqe->flags = IOSQE_CQE_SKIP_SUCCESS;
        sqe->off = (uint64_t)-1; // the file's position: none for a character device
    }
    return sqe;
}

// A write that could not be queued, made at once: the count of failures, with its errno.
static int32_t write_now(struct write_batch *b, const struct iovec *iov, int count)
{
    if (writev(b->fd, iov, count) >= 0)
        return 0;
    b->errors[0] = -errno;
    return b->failed = 1;
}

static napi_value js_write_batch(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2], result;
    int32_t fd;
    uint32_t entries;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc != 2) {
        napi_throw_type_error(env, NULL, "writeBatch(fd, entries)");
        return NULL;
    }
    CHECK(napi_get_value_int32(env, argv[0], &fd));
    CHECK(napi_get_value_uint32(env, argv[1], &entries));
    if (entries == 0 || entries > 4096)
        return throw_errno(env, EINVAL, "writeBatch");
    struct write_batch *b = calloc(1, sizeof(*b));
    if (!b)
        return throw_errno(env, ENOMEM, "writeBatch");
    b->fd = fd;
    int err = ring_init(&b->ring, entries, IORING_SETUP_SUBMIT_ALL);
    if (err == -EINVAL) // before 5.18
        err = ring_init(&b->ring, entries, 0);
    b->iovecs = err < 0 ? NULL : calloc(2 * (size_t)b->ring.entries, sizeof(struct iovec));
    if (err < 0 || !b->iovecs) {
        batch_end(b);
        free(b);
        return throw_errno(env, err < 0 ? -err : ENOMEM, "writeBatch: io_uring_setup");
    }
    CHECK(napi_add_env_cleanup_hook(env, cleanup, b));
    CHECK(napi_create_external(env, b, finalize, NULL, &result));
    return result;
}

static napi_value count(napi_env env, int32_t n)
{
    napi_value result;
    CHECK(napi_create_int32(env, n, &result));
    return result;
}

static napi_value js_write_batch_add(napi_env env, napi_callback_info info)
{
    size_t argc = 3;
    napi_value argv[3];
    void *data;
    size_t size;
    uint32_t length;
    int32_t failed = 0;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    struct write_batch *b = batch_of(env, argv[0]);
    CHECK(napi_get_buffer_info(env, argv[1], &data, &size));
    CHECK(napi_get_value_uint32(env, argv[2], &length));
    if (!b)
        return throw_errno(env, EBADF, "writeBatchAdd");
    struct iovec iov = {.iov_base = data, .iov_len = length < size ? length : size};
    struct io_uring_sqe *sqe = entry(b, &failed);
    if (!sqe)
        return count(env, write_now(b, &iov, 1));
    sqe->opcode = IORING_OP_WRITE;
    sqe->addr = (uint64_t)(uintptr_t)iov.iov_base;
    sqe->len = (uint32_t)iov.iov_len;
    return count(env, failed);
}

static napi_value js_write_batch_add_gather(napi_env env, napi_callback_info info)
{
    size_t argc = 4;
    napi_value argv[4], arraybuffer;
    void *head, *data;
    size_t head_size, data_length, byte_offset;
    uint32_t head_length;
    napi_typedarray_type type;
    int32_t failed = 0;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    struct write_batch *b = batch_of(env, argv[0]);
    CHECK(napi_get_buffer_info(env, argv[1], &head, &head_size));
    CHECK(napi_get_value_uint32(env, argv[2], &head_length));
    CHECK(napi_get_typedarray_info(env, argv[3], &type, &data_length, &data, &arraybuffer, &byte_offset));
    if (type != napi_uint8_array && type != napi_uint8_clamped_array) {
        napi_throw_type_error(env, NULL, "writeBatchAddGather: data must be a Uint8Array");
        return NULL;
    }
    if (!b)
        return throw_errno(env, EBADF, "writeBatchAddGather");
    struct iovec pair[2] = {
        {.iov_base = head, .iov_len = head_length < head_size ? head_length : head_size},
        {.iov_base = data, .iov_len = data_length},
    };
    struct io_uring_sqe *sqe = entry(b, &failed);
    if (!sqe)
        return count(env, write_now(b, pair, 2));
    unsigned index = (unsigned)(((uint8_t *)sqe - b->ring.sqes) / b->ring.sqe_size);
    struct iovec *iov = &b->iovecs[2 * index];
    iov[0] = pair[0];
    iov[1] = pair[1];
    sqe->opcode = IORING_OP_WRITEV;
    sqe->addr = (uint64_t)(uintptr_t)iov;
    sqe->len = 2;
    return count(env, failed);
}

static napi_value js_write_batch_submit(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    struct write_batch *b = batch_of(env, argv[0]);
    return count(env, b ? submit(b) : 0);
}

static napi_value js_write_batch_errors(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1], result, value;
    struct write_batch *b = NULL;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_get_value_external(env, argv[0], (void **)&b));
    CHECK(napi_create_array_with_length(env, (size_t)b->failed, &result));
    for (int32_t i = 0; i < b->failed; i++) {
        CHECK(napi_create_int32(env, b->errors[i], &value));
        CHECK(napi_set_element(env, result, (uint32_t)i, value));
    }
    return result;
}

static napi_value js_write_batch_close(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    struct write_batch *b = batch_of(env, argv[0]);
    if (!b)
        return count(env, 0);
    int32_t failed = submit(b);
    napi_remove_env_cleanup_hook(env, cleanup, b);
    batch_end(b); // the struct goes with its external: the errors can still be read
    return count(env, failed);
}

void write_batch_register(napi_env env, napi_value exports)
{
    napi_property_descriptor props[] = {
        {"writeBatch", NULL, js_write_batch, NULL, NULL, NULL, napi_default, NULL},
        {"writeBatchAdd", NULL, js_write_batch_add, NULL, NULL, NULL, napi_default, NULL},
        {"writeBatchAddGather", NULL, js_write_batch_add_gather, NULL, NULL, NULL, napi_default, NULL},
        {"writeBatchSubmit", NULL, js_write_batch_submit, NULL, NULL, NULL, napi_default, NULL},
        {"writeBatchErrors", NULL, js_write_batch_errors, NULL, NULL, NULL, napi_default, NULL},
        {"writeBatchClose", NULL, js_write_batch_close, NULL, NULL, NULL, napi_default, NULL},
    };
    napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
}
