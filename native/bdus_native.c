// SPDX-License-Identifier: MIT
//
// The few system calls Node cannot make by itself. Everything here is a thin,
// typed wrapper; the TypeScript side (src/native.ts) is the only caller.
//
//   fallocate(fd, mode, offset, length, callback(errno)[, discard])  async, on the libuv pool
//                                                     (discard: BLKDISCARD of the range instead)
//   blockDeviceSize(fd) -> bigint                         BLKGETSIZE64, sync
//   loopSetCapacity(fd)                                   LOOP_SET_CAPACITY, sync
//   dup2(oldfd, newfd)                                    sync
//   tryLock(fd) -> boolean                                flock(LOCK_EX | LOCK_NB), sync
//   getFd(pid, fd) -> fd                                  pidfd_open + pidfd_getfd, sync
//   mapShared(fd, length) -> Buffer                       mmap(MAP_SHARED), unmapped when collected
//   mapAnonymous(length[, huge]) -> Buffer                mmap(MAP_PRIVATE | MAP_ANONYMOUS), idem; huge: MADV_HUGEPAGE
//   dropPages(buffer, offset, length[, remove])           madvise(MADV_DONTNEED, or MADV_REMOVE) of whole pages
//   memfd(name, length) -> fd                             memfd_create + ftruncate, close-on-exec, sync
//   socketPair() -> [fd, fd]                              socketpair(AF_UNIX, SOCK_STREAM), sync
//   nbdNetlink(request, callback(errno, index))           the kernel NBD client's netlink, async
//   dup(fd) -> fd                                          dup(2), close-on-exec, sync
//   growUnixSendBuffer(fd, bytes) -> boolean               SO_SNDBUF, on Unix sockets only
//   seek(fd, offset, hole) -> offset | -errno             lseek(SEEK_DATA or SEEK_HOLE), sync
//   pinThread(cpus)                                       sched_setaffinity of the calling thread, sync
//   pageSize                                              sysconf(_SC_PAGESIZE)
//   ublkControl, ublkQueue, ublkCommit, ublkQueueClose     ublk through io_uring: see ublk.c
//   fuseRing, fuseRingCommit, fuseRingWait, ...           FUSE over io_uring: see fuse_uring.c
//   watch, unwatch, watchSpin, waitReadable, readFd, writeFd, writeFdGather
//                                                         a character device on the event loop: see watch.c
//   writeBatch...                                         writes to one file in one system call: see write_batch.c
//   fileIo, fileIoQueue, fileIoClose                      file reads and writes through io_uring: see file_io.c

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/fuse.h>
#include <linux/loop.h>
#include <node_api.h>
#include <uv.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <unistd.h>

#include "napi_util.h"
#include "nbd_netlink.h"
#include "fuse_uring.h"
#include "watch.h"
#include "write_batch.h"
#include "file_io.h"
#include "ublk.h"

napi_value throw_errno(napi_env env, int err, const char *syscall)
{
    char code[32];
    snprintf(code, sizeof(code), "E%d", err);
    napi_value error, message, errno_value, syscall_value;
    napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &message);
    napi_create_error(env, NULL, message, &error);
    napi_create_int32(env, -err, &errno_value);
    napi_set_named_property(env, error, "errno", errno_value);
    napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscall_value);
    napi_set_named_property(env, error, "syscall", syscall_value);
    napi_throw(env, error);
    return NULL;
}

/* ------------------------------------------------------------------------- */

struct fallocate_work {
    napi_async_work work;
    napi_ref callback;
    int fd;
    int mode;
    int64_t offset;
    int64_t length;
    int discard; /* BLKDISCARD instead of fallocate: a block device's discard has no fallocate mode */
    int err;
};

static void fallocate_execute(napi_env env, void *data)
{
    (void)env;
    struct fallocate_work *w = data;
    if (w->discard) {
        uint64_t range[2] = { (uint64_t)w->offset, (uint64_t)w->length };
        w->err = ioctl(w->fd, BLKDISCARD, range) == 0 ? 0 : errno;
    } else {
        w->err = fallocate(w->fd, w->mode, w->offset, w->length) == 0 ? 0 : errno;
    }
}

static void fallocate_complete(napi_env env, napi_status status, void *data)
{
    struct fallocate_work *w = data;
    napi_value callback, global, arg;
    napi_get_reference_value(env, w->callback, &callback);
    napi_get_global(env, &global);
    napi_create_int32(env, status == napi_ok ? w->err : ECANCELED, &arg);
    napi_call_function(env, global, callback, 1, &arg, NULL);
    napi_delete_reference(env, w->callback);
    napi_delete_async_work(env, w->work);
    free(w);
}

static napi_value js_fallocate(napi_env env, napi_callback_info info)
{
    size_t argc = 6;
    napi_value argv[6], name;
    bool discard = false;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc != 5 && argc != 6) {
        napi_throw_type_error(env, NULL, "fallocate(fd, mode, offset, length, callback[, discard])");
        return NULL;
    }
    if (argc == 6)
        CHECK(napi_get_value_bool(env, argv[5], &discard));
    struct fallocate_work *w = calloc(1, sizeof(*w));
    if (!w)
        return throw_errno(env, ENOMEM, "fallocate");
    CHECK(napi_get_value_int32(env, argv[0], &w->fd));
    CHECK(napi_get_value_int32(env, argv[1], &w->mode));
    CHECK(napi_get_value_int64(env, argv[2], &w->offset));
    CHECK(napi_get_value_int64(env, argv[3], &w->length));
    w->discard = discard;
    CHECK(napi_create_reference(env, argv[4], 1, &w->callback));
    CHECK(napi_create_string_utf8(env, "bdus:fallocate", NAPI_AUTO_LENGTH, &name));
    CHECK(napi_create_async_work(env, NULL, name, fallocate_execute,
                                 fallocate_complete, w, &w->work));
    CHECK(napi_queue_async_work(env, w->work));
    return NULL;
}

/* ------------------------------------------------------------------------- */

static napi_value js_block_device_size(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1], result;
    int fd;
    uint64_t size;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_get_value_int32(env, argv[0], &fd));
    if (ioctl(fd, BLKGETSIZE64, &size) != 0)
        return throw_errno(env, errno, "ioctl(BLKGETSIZE64)");
    CHECK(napi_create_bigint_uint64(env, size, &result));
    return result;
}

// A sparse file's extents (NBD block status) come from SEEK_DATA and SEEK_HOLE, which Node's fs
// does not offer. ENXIO (no data past the offset) is an answer, not an error: it is returned.
static napi_value js_seek(napi_env env, napi_callback_info info)
{
    size_t argc = 3;
    napi_value argv[3], result;
    int fd;
    int64_t offset;
    bool hole;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_get_value_int32(env, argv[0], &fd));
    CHECK(napi_get_value_int64(env, argv[1], &offset));
    CHECK(napi_get_value_bool(env, argv[2], &hole));
    off_t found = lseek(fd, (off_t)offset, hole ? SEEK_HOLE : SEEK_DATA);
    CHECK(napi_create_int64(env, found < 0 ? -(int64_t)errno : (int64_t)found, &result));
    return result;
}

/* ------------------------------------------------------------------------- */

// Daemonizing needs dup2: after the device is available the driver stops holding its caller's
// stdout, or `dev=$(bdus run ...)` would wait forever.
// A FUSE+loop device is resized by growing its image file, then telling loop to read its size.
static napi_value js_loop_set_capacity(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    int fd;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_get_value_int32(env, argv[0], &fd));
    if (ioctl(fd, LOOP_SET_CAPACITY, 0) != 0)
        return throw_errno(env, errno, "ioctl(LOOP_SET_CAPACITY)");
    return NULL;
}

// Pins the calling thread (a lane's, or the main thread) to the given CPUs: pid 0 in
// sched_setaffinity is the calling thread, not the process, which Node cannot ask for.
static napi_value js_pin_thread(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1], value;
    bool is_array = false;
    uint32_t count = 0;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_is_array(env, argv[0], &is_array));
    if (!is_array) {
        napi_throw_type_error(env, NULL, "pinThread(cpus): an array of CPU numbers");
        return NULL;
    }
    CHECK(napi_get_array_length(env, argv[0], &count));
    cpu_set_t set;
    CPU_ZERO(&set);
    for (uint32_t i = 0; i < count; i++) {
        uint32_t cpu = 0;
        CHECK(napi_get_element(env, argv[0], i, &value));
        CHECK(napi_get_value_uint32(env, value, &cpu));
        if (cpu >= CPU_SETSIZE)
            return throw_errno(env, EINVAL, "pinThread");
        CPU_SET(cpu, &set);
    }
    if (sched_setaffinity(0, sizeof(set), &set) != 0)
        return throw_errno(env, errno, "sched_setaffinity");
    return NULL;
}

static napi_value js_dup2(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2];
    int oldfd, newfd;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_get_value_int32(env, argv[0], &oldfd));
    CHECK(napi_get_value_int32(env, argv[1], &newfd));
    if (dup2(oldfd, newfd) < 0)
        return throw_errno(env, errno, "dup2");
    return NULL;
}

/* ------------------------------------------------------------------------- */

// One daemon per machine: it holds an flock on its lock file for as long as it lives. The kernel
// drops the lock when the process dies however it dies, so there is never a stale lock to judge.
static napi_value js_try_lock(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1], result;
    int fd;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_get_value_int32(env, argv[0], &fd));
    int ok = flock(fd, LOCK_EX | LOCK_NB) == 0;
    if (!ok && errno != EWOULDBLOCK)
        return throw_errno(env, errno, "flock");
    CHECK(napi_get_boolean(env, ok, &result));
    return result;
}

/* ------------------------------------------------------------------------- */

// A device outlives its driver only while another process holds the same open /dev/fuse file
// (a second open of /dev/fuse is a different, unattached file). The daemon takes a duplicate
// from the driver, and a new driver takes one from the daemon: pidfd_getfd, since Node can
// neither send nor receive SCM_RIGHTS.
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

static napi_value js_get_fd(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2], result;
    int pid, target;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_get_value_int32(env, argv[0], &pid));
    CHECK(napi_get_value_int32(env, argv[1], &target));
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0)
        return throw_errno(env, errno, "pidfd_open");
    int fd = (int)syscall(SYS_pidfd_getfd, pidfd, target, 0);
    int err = errno;
    close(pidfd);
    if (fd < 0)
        return throw_errno(env, err, "pidfd_getfd");
    CHECK(napi_create_int32(env, fd, &result));
    return result;
}

/* ------------------------------------------------------------------------- */

// A second reader of a FUSE connection (a lane, src/lane): a new /dev/fuse file attached to the
// connection of `fd` (FUSE_DEV_IOC_CLONE). The kernel gives each pending request to whichever
// reader reads first, and takes each reply on the file its request was read from.
static napi_value js_fuse_clone(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1], result;
    int session;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_get_value_int32(env, argv[0], &session));
    int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return throw_errno(env, errno, "open /dev/fuse");
    uint32_t source = (uint32_t)session;
    if (ioctl(fd, FUSE_DEV_IOC_CLONE, &source) != 0) {
        int err = errno;
        close(fd);
        return throw_errno(env, err, "ioctl(FUSE_DEV_IOC_CLONE)");
    }
    CHECK(napi_create_int32(env, fd, &result));
    return result;
}

/* ------------------------------------------------------------------------- */

// Per-request restart counts must survive the driver's death, and cost no system call on the
// request path: they live in a small shared file mapped into each driver in turn.
static void unmap(napi_env env, void *data, void *hint)
{
    (void)env;
    munmap(data, (size_t)(uintptr_t)hint);
}

napi_value mapped_buffer(napi_env env, void *p, size_t length)
{
    napi_value result;
    if (napi_create_external_buffer(env, length, p, unmap, (void *)(uintptr_t)length, &result) != napi_ok) {
        munmap(p, length);
        napi_throw_error(env, NULL, "bdus_native: napi_create_external_buffer failed");
        return NULL;
    }
    return result;
}

static napi_value map_buffer(napi_env env, int64_t length, int flags, int fd)
{
    if (length <= 0)
        return throw_errno(env, EINVAL, "mmap");
    void *p = mmap(NULL, (size_t)length, PROT_READ | PROT_WRITE, flags, fd, 0);
    if (p == MAP_FAILED)
        return throw_errno(env, errno, "mmap");
    return mapped_buffer(env, p, (size_t)length);
}

static napi_value js_map_shared(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2];
    int fd;
    int64_t length;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_get_value_int32(env, argv[0], &fd));
    CHECK(napi_get_value_int64(env, argv[1], &length));
    return map_buffer(env, length, MAP_SHARED, fd);
}

// Memory that is committed only as it is written and handed back at once when dropped: Node's
// buffers are malloc'd (a freed one may stay in the heap) and freed only when collected.
// `huge`: MADV_HUGEPAGE too, where the kernel has transparent huge pages (refused quietly if not).
static napi_value js_map_anonymous(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2];
    int64_t length;
    bool huge = false;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_get_value_int64(env, argv[0], &length));
    if (argc > 1)
        CHECK(napi_get_value_bool(env, argv[1], &huge));
    napi_value buffer = map_buffer(env, length, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1);
    void *data;
    size_t size;
    if (huge && buffer && napi_get_buffer_info(env, buffer, &data, &size) == napi_ok)
        madvise(data, size, MADV_HUGEPAGE);
    return buffer;
}

static napi_value js_drop_pages(napi_env env, napi_callback_info info)
{
    size_t argc = 4;
    napi_value argv[4];
    void *data;
    size_t size;
    int64_t offset, length;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_get_buffer_info(env, argv[0], &data, &size));
    CHECK(napi_get_value_int64(env, argv[1], &offset));
    CHECK(napi_get_value_int64(env, argv[2], &length));
    bool remove = false;
    if (argc > 3)
        CHECK(napi_get_value_bool(env, argv[3], &remove));
    long page = sysconf(_SC_PAGESIZE);
    if (offset < 0 || length < 0 || (size_t)(offset + length) > size || ((uintptr_t)data + offset) % page || length % page)
        return throw_errno(env, EINVAL, "madvise");
    if (length > 0 && madvise((char *)data + offset, (size_t)length, remove ? MADV_REMOVE : MADV_DONTNEED) != 0)
        return throw_errno(env, errno, "madvise");
    return NULL;
}

// Memory that several threads map, each with a Buffer of its own (a Buffer cannot cross
// threads; a file descriptor can): anonymous shared memory with a name for /proc only.
static napi_value js_memfd(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2];
    char name[64];
    int64_t length;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_get_value_string_utf8(env, argv[0], name, sizeof(name), NULL));
    CHECK(napi_get_value_int64(env, argv[1], &length));
    if (length < 0)
        return throw_errno(env, EINVAL, "memfd_create");
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0)
        return throw_errno(env, errno, "memfd_create");
    if (ftruncate(fd, length) != 0) {
        int error = errno;
        close(fd);
        return throw_errno(env, error, "ftruncate");
    }
    napi_value result;
    CHECK(napi_create_int32(env, fd, &result));
    return result;
}

/* ------------------------------------------------------------------------- */

// The kernel NBD frontend hands the kernel one end of a socket pair and serves the other:
// Node has no socketpair.
static napi_value js_socket_pair(napi_env env, napi_callback_info info)
{
    (void)info;
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0)
        return throw_errno(env, errno, "socketpair");
    napi_value result, a, b;
    CHECK(napi_create_array_with_length(env, 2, &result));
    CHECK(napi_create_int32(env, fds[0], &a));
    CHECK(napi_create_int32(env, fds[1], &b));
    CHECK(napi_set_element(env, result, 0, a));
    CHECK(napi_set_element(env, result, 1, b));
    return result;
}

/* ------------------------------------------------------------------------- */

struct nbd_work {
    napi_async_work work;
    napi_ref callback;
    struct nbd_netlink_request request;
    int err;
    int index;
};

static void nbd_execute(napi_env env, void *data)
{
    (void)env;
    struct nbd_work *w = data;
    w->err = nbd_netlink(&w->request, &w->index);
}

static void nbd_complete(napi_env env, napi_status status, void *data)
{
    struct nbd_work *w = data;
    napi_value callback, global, args[2];
    napi_get_reference_value(env, w->callback, &callback);
    napi_get_global(env, &global);
    napi_create_int32(env, status == napi_ok ? w->err : ECANCELED, &args[0]);
    napi_create_int32(env, w->index, &args[1]);
    napi_call_function(env, global, callback, 2, args, NULL);
    napi_delete_reference(env, w->callback);
    napi_delete_async_work(env, w->work);
    free(w);
}

int64_t object_field(napi_env env, napi_value object, const char *name, int64_t otherwise)
{
    bool has = false;
    napi_value value;
    int64_t result = otherwise;
    if (napi_has_named_property(env, object, name, &has) == napi_ok && has &&
        napi_get_named_property(env, object, name, &value) == napi_ok)
        napi_get_value_int64(env, value, &result);
    return result;
}

static napi_value js_nbd_netlink(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2], name;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc != 2) {
        napi_throw_type_error(env, NULL, "nbdNetlink(request, callback)");
        return NULL;
    }
    struct nbd_work *w = calloc(1, sizeof(*w));
    if (!w)
        return throw_errno(env, ENOMEM, "nbdNetlink");
    w->index = -1;
    w->request = (struct nbd_netlink_request){
        .command = (int)object_field(env, argv[0], "command", -1),
        .index = object_field(env, argv[0], "index", -1),
        .socket = object_field(env, argv[0], "socket", -1),
        .size_bytes = object_field(env, argv[0], "sizeBytes", -1),
        .block_size = object_field(env, argv[0], "blockSize", -1),
        .server_flags = object_field(env, argv[0], "serverFlags", -1),
        .client_flags = object_field(env, argv[0], "clientFlags", -1),
        .timeout = object_field(env, argv[0], "timeout", -1),
        .dead_conn_timeout = object_field(env, argv[0], "deadConnTimeout", -1),
    };
    bool has_backend = false;
    napi_value backend;
    if (napi_has_named_property(env, argv[0], "backend", &has_backend) == napi_ok && has_backend &&
        napi_get_named_property(env, argv[0], "backend", &backend) == napi_ok)
        napi_get_value_string_utf8(env, backend, w->request.backend, sizeof(w->request.backend), NULL);
    CHECK(napi_create_reference(env, argv[1], 1, &w->callback));
    CHECK(napi_create_string_utf8(env, "bdus:nbdNetlink", NAPI_AUTO_LENGTH, &name));
    CHECK(napi_create_async_work(env, NULL, name, nbd_execute, nbd_complete, w, &w->work));
    CHECK(napi_queue_async_work(env, w->work));
    return NULL;
}

/* ------------------------------------------------------------------------- */
static napi_value js_dup(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1], result;
    int fd;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_get_value_int32(env, argv[0], &fd));
    int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0)
        return throw_errno(env, errno, "dup");
    CHECK(napi_create_int32(env, copy, &result));
    return result;
}

// A Unix socket's send buffer (wmem_default, about 200 KiB) takes a fifth of a 1 MiB reply per
// write: the rest waits for the reader, a wake-up each time. A larger one takes whole replies.
// TCP sockets are left alone: setting SO_SNDBUF would turn off the kernel's own tuning.
static napi_value js_grow_unix_send_buffer(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2], result;
    int fd, bytes, domain = -1;
    socklen_t length = sizeof(domain);
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_get_value_int32(env, argv[0], &fd));
    CHECK(napi_get_value_int32(env, argv[1], &bytes));
    bool grown = getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &length) == 0 && domain == AF_UNIX &&
                 setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes)) == 0;
    CHECK(napi_get_boolean(env, grown, &result));
    return result;
}

/* ------------------------------------------------------------------------- */

static napi_value init(napi_env env, napi_value exports)
{
    napi_value page_size;
    CHECK(napi_create_int32(env, (int32_t)sysconf(_SC_PAGESIZE), &page_size));
    CHECK(napi_set_named_property(env, exports, "pageSize", page_size));
    napi_property_descriptor props[] = {
        {"fallocate", NULL, js_fallocate, NULL, NULL, NULL, napi_default, NULL},
        {"blockDeviceSize", NULL, js_block_device_size, NULL, NULL, NULL, napi_default, NULL},
        {"dup2", NULL, js_dup2, NULL, NULL, NULL, napi_default, NULL},
        {"loopSetCapacity", NULL, js_loop_set_capacity, NULL, NULL, NULL, napi_default, NULL},
        {"tryLock", NULL, js_try_lock, NULL, NULL, NULL, napi_default, NULL},
        {"getFd", NULL, js_get_fd, NULL, NULL, NULL, napi_default, NULL},
        {"fuseClone", NULL, js_fuse_clone, NULL, NULL, NULL, napi_default, NULL},
        {"mapShared", NULL, js_map_shared, NULL, NULL, NULL, napi_default, NULL},
        {"mapAnonymous", NULL, js_map_anonymous, NULL, NULL, NULL, napi_default, NULL},
        {"dropPages", NULL, js_drop_pages, NULL, NULL, NULL, napi_default, NULL},
        {"memfd", NULL, js_memfd, NULL, NULL, NULL, napi_default, NULL},
        {"socketPair", NULL, js_socket_pair, NULL, NULL, NULL, napi_default, NULL},
        {"nbdNetlink", NULL, js_nbd_netlink, NULL, NULL, NULL, napi_default, NULL},
        {"dup", NULL, js_dup, NULL, NULL, NULL, napi_default, NULL},
        {"growUnixSendBuffer", NULL, js_grow_unix_send_buffer, NULL, NULL, NULL, napi_default, NULL},
        {"seek", NULL, js_seek, NULL, NULL, NULL, napi_default, NULL},
        {"pinThread", NULL, js_pin_thread, NULL, NULL, NULL, napi_default, NULL},
    };
    CHECK(napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props));
    ublk_register(env, exports);
    fuse_uring_register(env, exports);
    watch_register(env, exports);
    write_batch_register(env, exports);
    file_io_register(env, exports);
    return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
