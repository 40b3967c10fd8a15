// SPDX-License-Identifier: MIT
//
// A minimal io_uring (raw system calls, no liburing), and a ring of passthrough commands served
// on the event loop: what ublk's queues (ublk.c) and FUSE's ring (fuse_uring.c) share.
//
// A command ring: the ring's completions are signalled on an eventfd watched with uv_poll; each
// wake-up reaps them into `completions` (user_data, result pairs) and calls back JavaScript once
// per batch. Commands queued during a loop turn are submitted together by one io_uring_enter,
// from a uv_prepare handle that runs just before the loop waits.
//
// A command ring that may spin for the next completion after a batch (a client at queue depth 1
// sends its next request within microseconds) is set up with IORING_SETUP_COOP_TASKRUN and
// IORING_SETUP_TASKRUN_FLAG, so the kernel never interrupts its running thread: the work a
// completion needs on this thread (a FUSE request copied into its entry) waits, flagged in the
// ring, until the thread next enters the kernel, and the spin enters the ring when it sees the
// flag, without a system call before. A sleeping thread is woken for it as for any ring.
#ifndef BDUS_RING_H
#define BDUS_RING_H
#include <linux/io_uring.h>
#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

struct ring {
    int fd;
    unsigned entries;
    size_t sqe_size;
    unsigned flags; // IORING_SETUP_*
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array, *sq_flags;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_cqe *cqes;
    uint8_t *sqes;
    void *sq_map, *cq_map;
    size_t sq_len, cq_len, sqes_len;
    unsigned unsubmitted;
};

// Sets up a ring of `entries` (flags: IORING_SETUP_*): 0, or a negative errno.
int ring_init(struct ring *r, unsigned entries, unsigned flags);
void ring_exit(struct ring *r);
// The next free submission entry, zeroed and already queued, or NULL if the ring is full.
struct io_uring_sqe *ring_sqe(struct ring *r);
// Submits what is queued (and runs the work that waits for this thread); with `wait`, also waits for that many completions.
int ring_enter(struct ring *r, unsigned wait);

struct command_ring {
    struct ring ring;
    int eventfd;
    unsigned capacity; // completions reaped per callback at most
    int32_t *completions;
    uv_poll_t poll;
    uv_prepare_t prepare;
    int handles;
    int closed;
    int64_t spin_ns; // after a batch, how long to wait for the next completion, spinning (0: never)
    int64_t spin_setup_ns; // the spin the ring was set up for (command_ring_spin turns it on and off)
    int waited; // command_ring_wait ran during the callback: no second spin after it
    napi_env env;
    napi_ref callback;
    napi_async_context context;
    // Called once the ring is closed and its handles are gone: frees what embeds it.
    void (*freed)(struct command_ring *c);
    // If set, told how many completions a batch reaped, before JavaScript sees them.
    void (*reaped)(struct command_ring *c, unsigned count);
    // Set while the ring runs: a worker thread (a lane) ended unasked closes it (ring.c).
    napi_async_cleanup_hook_handle cleanup;
    int tearing_down;
    // A ring whose commands must not end before its thread (ublk's queues, ublk.c): what the
    // thread's end (teardown) does is leave it (command_ring_leave), not close it.
    int left_to_thread;
};

// The ring (`entries`, `flags`) and its eventfd; nothing runs yet. After a batch the thread waits
// `spin_us` for the next completion, spinning (0: never; a ring that spins defers its task work).
// 0, or a negative errno; on failure, command_ring_free_early undoes what was done.
int command_ring_init(struct command_ring *c, unsigned entries, unsigned flags, unsigned capacity, int64_t spin_us);
void command_ring_free_early(struct command_ring *c);
// Stops spinning (`on` false) or spins again as set up; a ring set up with no spin never spins.
void command_ring_spin(struct command_ring *c, bool on);
// If the ring spins now: submits what is queued and waits for the next completion, spinning, as
// after a batch (the event loop then finds it without sleeping).
void command_ring_wait(struct command_ring *c);
// Starts watching: `callback(count)` for each batch of `count` completions.
napi_status command_ring_start(napi_env env, struct command_ring *c, napi_value callback, const char *name);
// A submission entry for a command, submitted with the turn's others.
struct io_uring_sqe *command_ring_sqe(struct command_ring *c);
// Submits what is queued, stops watching, ends the ring; `freed` runs once the handles closed.
// If the thread's environment ends first (Worker.terminate()), the ring is closed then.
void command_ring_close(napi_env env, struct command_ring *c);
// Stops reading the ring for good but leaves it open, its commands pending, until
// command_rings_close_left finds its thread gone (or the process ends); answers queued this turn
// still go.
void command_ring_leave(napi_env env, struct command_ring *c);
// Closes the rings left by threads of this process that have exited since (any thread may call
// it); returns how many rings left by other threads still wait for theirs.
int command_rings_close_left(void);

#endif
