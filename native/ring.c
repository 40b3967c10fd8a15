// SPDX-License-Identifier: MIT
//
// The io_uring and the command ring of ring.h.

#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "napi_util.h"
#include "ring.h"

/* The io_uring ------------------------------------------------------------------------ */

void ring_exit(struct ring *r)
{
    if (r->sqes)
        munmap(r->sqes, r->sqes_len);
    if (r->cq_map && r->cq_map != r->sq_map)
        munmap(r->cq_map, r->cq_len);
    if (r->sq_map)
        munmap(r->sq_map, r->sq_len);
    if (r->fd >= 0)
        close(r->fd);
    memset(r, 0, sizeof(*r));
    r->fd = -1;
}

int ring_init(struct ring *r, unsigned entries, unsigned flags)
{
    struct io_uring_params p;
    memset(r, 0, sizeof(*r));
    memset(&p, 0, sizeof(p));
    p.flags = flags;
    r->fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    if (r->fd < 0)
        return -errno;
    r->entries = p.sq_entries;
    r->flags = flags;
    r->sqe_size = (flags & IORING_SETUP_SQE128) ? 128 : 64;
    r->sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    int single = p.features & IORING_FEAT_SINGLE_MMAP;
    if (single && r->cq_len > r->sq_len)
        r->sq_len = r->cq_len;
    r->sq_map = mmap(NULL, r->sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
    if (r->sq_map == MAP_FAILED) {
        r->sq_map = NULL;
        goto fail;
    }
    r->cq_map = single ? r->sq_map
                       : mmap(NULL, r->cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
    if (r->cq_map == MAP_FAILED) {
        r->cq_map = NULL;
        goto fail;
    }
    r->sqes_len = p.sq_entries * r->sqe_size;
    r->sqes = mmap(NULL, r->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED) {
        r->sqes = NULL;
        goto fail;
    }
    uint8_t *sq = r->sq_map, *cq = r->cq_map;
    r->sq_head = (unsigned *)(sq + p.sq_off.head);
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->sq_flags = (unsigned *)(sq + p.sq_off.flags);
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    return 0;
fail : {
    int err = errno;
    ring_exit(r);
    return -err;
}
}

/** The next free submission entry, zeroed and already queued, or NULL if the ring is full. */
struct io_uring_sqe *ring_sqe(struct ring *r)
{
    unsigned head = atomic_load_explicit((_Atomic unsigned *)r->sq_head, memory_order_acquire);
    unsigned tail = *r->sq_tail;
    if (tail - head >= r->entries)
        return NULL;
    unsigned index = tail & *r->sq_mask;
    struct io_uring_sqe *sqe = (struct io_uring_sqe *)(r->sqes + index * r->sqe_size);
    memset(sqe, 0, r->sqe_size);
    r->sq_array[index] = index;
    atomic_store_explicit((_Atomic unsigned *)r->sq_tail, tail + 1, memory_order_release);
    r->unsubmitted++;
    return sqe;
}

/** Submits what is queued; with `wait`, also waits for that many completions. */
int ring_enter(struct ring *r, unsigned wait)
{
    // GETEVENTS runs the work that waits for this thread even when nothing is waited for (wait 0).
    unsigned flags = wait || (r->flags & IORING_SETUP_TASKRUN_FLAG) ? IORING_ENTER_GETEVENTS : 0;
    for (;;) {
        int n = (int)syscall(__NR_io_uring_enter, r->fd, r->unsubmitted, wait, flags, NULL, 0);
        if (n >= 0) {
            r->unsubmitted -= (unsigned)n;
            if (!wait || r->unsubmitted == 0)
                return 0;
        } else if (errno != EINTR && errno != EAGAIN) {
            return -errno;
        }
    }
}

/* Command rings --------------------------------------------------------------------------- */

// Cooperative task work (ring.h), for a ring whose thread may spin: the kernel runs a
// completion's work on this thread when the thread next enters the kernel, instead of
// interrupting it (which made a spin cost more than it saved), and flags it in the ring. Before
// 2026-12-05 such a ring deferred its task work (IORING_SETUP_DEFER_TASKRUN): as fast for a
// spinning ring, but each wake-up of a ring that is not spinning then needs its own
// io_uring_enter, which cost the ring's lanes up to 18% of their IOPS at queue depth 32
// (docs/performance.md, "Ring lanes at queue depth 1"). A ring that never spins keeps the
// kernel's default.
#define MAY_SPIN (IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG)

int command_ring_init(struct command_ring *c, unsigned entries, unsigned flags, unsigned capacity, int64_t spin_us)
{
    c->ring.fd = -1;
    c->eventfd = -1;
    c->capacity = capacity;
    c->spin_ns = c->spin_setup_ns = spin_us > 0 ? spin_us * 1000 : 0;
    c->completions = calloc(capacity * 2, sizeof(int32_t));
    if (!c->completions)
        return -ENOMEM;
    int err = ring_init(&c->ring, entries, flags | (c->spin_ns ? MAY_SPIN : 0));
    if (err < 0)
        return err;
    c->eventfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (c->eventfd < 0)
        return -errno;
    if (syscall(__NR_io_uring_register, c->ring.fd, IORING_REGISTER_EVENTFD, &c->eventfd, 1) < 0)
        return -errno;
    return 0;
}

void command_ring_spin(struct command_ring *c, bool on)
{
    c->spin_ns = on ? c->spin_setup_ns : 0;
}

void command_ring_free_early(struct command_ring *c)
{
    if (c->eventfd >= 0)
        close(c->eventfd);
    c->eventfd = -1;
    ring_exit(&c->ring);
    free(c->completions);
    c->completions = NULL;
}

static void handle_closed(uv_handle_t *handle)
{
    struct command_ring *c = handle->data;
    if (--c->handles == 0) {
        free(c->completions);
        c->completions = NULL;
        if (c->tearing_down)
            napi_remove_async_cleanup_hook(c->cleanup);
        c->freed(c);
    }
}

// Rings left to their thread's end (command_ring_leave), until command_rings_close_left closes
// them from another thread once their thread has exited, or the process ends. A thread's exit
// alone does not end them: the kernel cancels a ring's commands when the ring's descriptor is
// released, and the descriptor belongs to the process.
struct left_ring {
    struct ring ring;
    pid_t thread;
    struct left_ring *next;
};
static pthread_mutex_t left_lock = PTHREAD_MUTEX_INITIALIZER;
static struct left_ring *left_rings;

static void leave_ring(struct ring *r)
{
    struct left_ring *l = malloc(sizeof(*l));
    if (!l)
        return; // the descriptor then stays open until the process ends
    l->ring = *r;
    l->thread = (pid_t)syscall(SYS_gettid);
    pthread_mutex_lock(&left_lock);
    l->next = left_rings;
    left_rings = l;
    pthread_mutex_unlock(&left_lock);
}

int command_rings_close_left(void)
{
    pid_t self = (pid_t)syscall(SYS_gettid);
    int waiting = 0;
    pthread_mutex_lock(&left_lock);
    for (struct left_ring **at = &left_rings; *at;) {
        struct left_ring *l = *at;
        // A thread of this process that is gone: ESRCH (an exited thread leaves no zombie).
        if (l->thread != self && syscall(SYS_tgkill, getpid(), l->thread, 0) < 0 && errno == ESRCH) {
            ring_exit(&l->ring);
            *at = l->next;
            free(l);
            continue;
        }
        if (l->thread != self)
            waiting++;
        at = &l->next;
    }
    pthread_mutex_unlock(&left_lock);
    return waiting;
}

// What every way of closing does: answers queued this turn still go, then the ring ends, or (left
// to its thread) is only no longer read, its descriptor kept on the list above.
static void close_ring(struct command_ring *c, int leave)
{
    c->closed = 1;
    if (c->ring.unsubmitted)
        ring_enter(&c->ring, 0);
    uv_poll_stop(&c->poll);
    uv_prepare_stop(&c->prepare);
    if (leave) {
        leave_ring(&c->ring);
        memset(&c->ring, 0, sizeof(c->ring));
        c->ring.fd = -1;
    } else {
        ring_exit(&c->ring);
    }
    close(c->eventfd);
    c->eventfd = -1;
    uv_close((uv_handle_t *)&c->poll, handle_closed);
    uv_close((uv_handle_t *)&c->prepare, handle_closed);
}

// The thread's environment ends with the ring open (Worker.terminate(): a lane killed). Node
// aborts the process if an event loop closes with handles open, and an open ring would keep
// its device's kernel end held: closed here (or, left to its thread, no longer read: the thread
// ends right after), and the environment waits for the handles (the hook is removed in
// handle_closed). JavaScript runs no more, so its references are left to the environment's end.
static void teardown(napi_async_cleanup_hook_handle handle, void *data)
{
    struct command_ring *c = data;
    c->cleanup = handle;
    c->tearing_down = 1;
    close_ring(c, c->left_to_thread);
}

static void submit(uv_prepare_t *prepare)
{
    struct command_ring *c = prepare->data;
    if (c->ring.unsubmitted)
        ring_enter(&c->ring, 0);
}

// Whether work waits for this thread to enter the ring (ring.h).
static int work_waits(struct ring *r)
{
    return (r->flags & IORING_SETUP_TASKRUN_FLAG) &&
           (atomic_load_explicit((_Atomic unsigned *)r->sq_flags, memory_order_acquire) & IORING_SQ_TASKRUN);
}

static int completions_wait(struct ring *r)
{
    return *r->cq_head != atomic_load_explicit((_Atomic unsigned *)r->cq_tail, memory_order_acquire);
}

// After a batch, a client that waits for each answer sends its next request a few microseconds
// after the answer: unless more waits already, the answers are submitted now and the next request
// caught spinning, which spares the event loop's sleep and wake-up. Returns whether one came.
static int spin(struct command_ring *c)
{
    if (completions_wait(&c->ring) || work_waits(&c->ring))
        return 1;
    if (c->ring.unsubmitted)
        ring_enter(&c->ring, 0);
    int64_t deadline = now_ns() + c->spin_ns;
    do {
        if (completions_wait(&c->ring) || work_waits(&c->ring))
            return 1;
    } while (now_ns() < deadline);
    return 0;
}

void command_ring_wait(struct command_ring *c)
{
    // The work a completion needs on this thread is run now: it posts the completion, which
    // signals the eventfd the event loop watches.
    if (c->spin_ns <= 0 || c->closed)
        return;
    c->waited = 1;
    if (spin(c) && work_waits(&c->ring))
        ring_enter(&c->ring, 0);
}

// Batches handled in a row (spinning between them, if the ring spins) before the event loop gets
// its turn again.
#define ROUNDS 4

static void ready(uv_poll_t *poll, int status, int events)
{
    (void)status;
    (void)events;
    struct command_ring *c = poll->data;
    uint64_t count;
    if (read(c->eventfd, &count, sizeof(count)) < 0 && errno != EAGAIN)
        return;
    napi_env env = c->env;
    // Completions that arrive while JavaScript runs are taken in the next round.
    for (int round = 0; round < ROUNDS && !c->closed; round++) {
        if (work_waits(&c->ring))
            ring_enter(&c->ring, 0); // also sends the answers of the round before
        unsigned head = *c->ring.cq_head;
        unsigned tail = atomic_load_explicit((_Atomic unsigned *)c->ring.cq_tail, memory_order_acquire);
        unsigned n = 0;
        while (head != tail && n < c->capacity) {
            struct io_uring_cqe *cqe = &c->ring.cqes[head & *c->ring.cq_mask];
            c->completions[2 * n] = (int32_t)cqe->user_data;
            c->completions[2 * n + 1] = cqe->res;
            n++;
            head++;
        }
        atomic_store_explicit((_Atomic unsigned *)c->ring.cq_head, head, memory_order_release);
        if (n == 0)
            return;
        if (c->reaped)
            c->reaped(c, n);
        napi_handle_scope scope;
        napi_value callback, global, arg;
        if (napi_open_handle_scope(env, &scope) != napi_ok)
            return;
        napi_get_reference_value(env, c->callback, &callback);
        napi_get_global(env, &global);
        napi_create_uint32(env, n, &arg);
        c->waited = 0;
        // make_callback: the promises the callback settles run before the loop waits.
        napi_make_callback(env, c->context, global, callback, 1, &arg, NULL);
        napi_close_handle_scope(env, scope);
        if (c->closed)
            return;
        // Promises the callback settled may have waited already (command_ring_wait).
        if (c->waited ? !completions_wait(&c->ring) && !work_waits(&c->ring) : c->spin_ns <= 0 || !spin(c))
            return;
    }
}

napi_status command_ring_start(napi_env env, struct command_ring *c, napi_value callback, const char *name)
{
    uv_loop_t *loop;
    napi_value resource_name;
    napi_status status = napi_get_uv_event_loop(env, &loop);
    if (status == napi_ok)
        status = napi_create_reference(env, callback, 1, &c->callback);
    if (status == napi_ok)
        status = napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource_name);
    if (status == napi_ok)
        status = napi_async_init(env, NULL, resource_name, &c->context);
    if (status != napi_ok)
        return status;
    c->env = env;
    uv_poll_init(loop, &c->poll, c->eventfd);
    uv_prepare_init(loop, &c->prepare);
    c->poll.data = c->prepare.data = c;
    c->handles = 2;
    uv_unref((uv_handle_t *)&c->prepare);
    uv_prepare_start(&c->prepare, submit);
    uv_poll_start(&c->poll, UV_READABLE, ready);
    return napi_add_async_cleanup_hook(env, teardown, c, &c->cleanup);
}

struct io_uring_sqe *command_ring_sqe(struct command_ring *c)
{
    struct io_uring_sqe *sqe = ring_sqe(&c->ring);
    if (!sqe) { // a full ring: submit what is queued to make room
        ring_enter(&c->ring, 0);
        sqe = ring_sqe(&c->ring);
    }
    return sqe;
}

static void stop_ring(napi_env env, struct command_ring *c, int leave)
{
    if (c->closed)
        return;
    napi_remove_async_cleanup_hook(c->cleanup);
    napi_delete_reference(env, c->callback);
    napi_async_destroy(env, c->context);
    close_ring(c, leave);
}

void command_ring_close(napi_env env, struct command_ring *c)
{
    stop_ring(env, c, 0);
}

void command_ring_leave(napi_env env, struct command_ring *c)
{
    stop_ring(env, c, 1);
}
