/*
 * trainer/cuda/collective.h -- eq_comm (trainer/dist.h) on a device
 * collective library: the bucket bookkeeping, staging, ordering, deadlines
 * and abort logic of the NCCL communicator, kept apart from the NCCL and
 * CUDA calls so that it runs, and is tested, without a GPU.
 *
 * The calls that touch the device are a driver table (eq_coll_ops): the
 * real one is trainer/cuda/nccl.c (NCCL on a communication stream, CUDA
 * events); tests/check_nccl_comm.c drives this file with a fake one whose
 * "device" is host memory and whose ranks are threads.
 *
 * A bucket (eq_comm_bucket_new) is a list of float segments.  Segments in
 * device memory (ops->is_device) are reduced in place when they form one
 * contiguous range in the order given; otherwise the bucket gets a device
 * staging buffer of its total size and its segments are copied in before
 * and out after the collective, on the communication stream.  Segments in
 * host memory (the trainer's loss/stop flags, quantizer state kept on the
 * host) go through a pinned host buffer as well.
 *
 * eq_comm_start(bucket), all on the communication stream in issue order:
 * wait for the work issued so far on the compute stream (after_compute),
 * copy host segments (read now, on the calling thread) and scattered
 * device segments into staging, the collective (SUM, AVG, BCAST from rank
 * 0), copy the results back, record the bucket's completion point.  It
 * never blocks on the collective.
 *
 * eq_comm_wait(bucket): a bucket of device segments only makes the compute
 * stream wait for the completion point (the host does not block, so the
 * optimiser step is queued behind the reduction); a bucket with host
 * segments blocks the host until the completion point, polling the
 * communicator's health, at most timeout_s, then copies the results to the
 * host segments.
 *
 * Failures.  Any driver failure, an asynchronous communicator error, or a
 * bucket still unfinished timeout_s after its start aborts the communicator
 * (ops->abort) and fails with an error naming this rank, the bucket and
 * the cause: EQ_ERR_TIMEOUT for the deadline ("... did not finish within
 * N s (a peer is missing or stuck)"), the driver's code otherwise.  Every
 * later call fails at once with "nccl rank R/W: communicator aborted:
 * <cause>" and the same code.  A watchdog thread checks the buckets in
 * flight every EQ_COLL_WATCH_MS, so a reduction that never finishes is
 * aborted even when the host is blocked elsewhere (e.g. in a download on
 * the compute stream that waits behind it): the abort makes the device
 * work finish, the blocked call returns, and the next comm call reports.
 *
 * Thread safety: the comm is used by one thread (the training loop); the
 * watchdog shares it under a mutex and calls only query, health and
 * abort.  Every driver call is made under that mutex, so a driver need not
 * be thread-safe (it must allow calls from two threads, never at once).
 */
#ifndef EQ_TRAINER_CUDA_COLLECTIVE_H
#define EQ_TRAINER_CUDA_COLLECTIVE_H

#include <stddef.h>

#include "core/status.h"
#include "trainer/dist.h"

/* How often the watchdog looks at the buckets in flight. */
#define EQ_COLL_WATCH_MS 50

/* The device side.  Every member is required; `drv` is the driver's
 * context.  "comm stream": the communication stream, where the calls
 * marked (stream) are queued in order and run asynchronously. */
typedef struct eq_coll_ops {
    /* 1 when p is device memory the collective can use, 0 for host memory. */
    int (*is_device)(void *drv, const void *p);
    /* Device memory / pinned host memory of `bytes` (> 0) bytes; NULL with
     * err set when out of memory.  Freed by the matching *_free. */
    void *(*dev_alloc)(void *drv, size_t bytes, eq_err *err);
    void (*dev_free)(void *drv, void *p);
    void *(*host_alloc)(void *drv, size_t bytes, eq_err *err);
    void (*host_free)(void *drv, void *p);
    /* (stream) Wait for what the compute stream has been given so far. */
    eq_status (*after_compute)(void *drv, int bucket, eq_err *err);
    /* (stream) Copy `bytes` between any of device, pinned host memory. */
    eq_status (*copy)(void *drv, void *dst, const void *src, size_t bytes, eq_err *err);
    /* (stream) The collective of n floats at device pointer buf, in place;
     * returns once it is queued. */
    eq_status (*reduce)(void *drv, float *buf, size_t n, eq_comm_op op, eq_err *err);
    /* (stream) Record bucket `bucket`'s completion point. */
    eq_status (*record)(void *drv, int bucket, eq_err *err);
    /* 1 when the stream passed bucket's completion point, 0 not yet, -1 on
     * an error (err set). */
    int (*query)(void *drv, int bucket, eq_err *err);
    /* The compute stream waits for bucket's completion point. */
    eq_status (*compute_after)(void *drv, int bucket, eq_err *err);
    /* EQ_OK, or the communicator's asynchronous error (err set). */
    eq_status (*health)(void *drv, eq_err *err);
    /* Abort the communicator: work in flight ends (with undefined data)
     * and nothing waits for peers.  Called at most once; the driver's
     * collectives fail afterwards, but frees and destroy still work. */
    void (*abort)(void *drv);
    /* Release the driver (after abort, or with no work in flight). */
    void (*destroy)(void *drv);
} eq_coll_ops;

/* The eq_comm_i of this engine (name "nccl"): eq_comm_new(eq_coll_iface(),
 * ctx, rank, world) with ctx from eq_coll_new. */
const eq_comm_i *eq_coll_iface(void);

/* A communicator context over driver `drv` (ops, rank of world, timeout_s
 * > 0): starts the watchdog.  Takes `drv` (ops->destroy on failure too).
 * Returns the context for eq_coll_iface(), or NULL with err set
 * (EQ_ERR_INVALID, EQ_ERR_NOMEM, EQ_ERR_INTERNAL). */
void *eq_coll_new(const eq_coll_ops *ops, void *drv, int rank, int world, double timeout_s, eq_err *err);

/* For tests and diagnostics (ctx from eq_coll_new): 1 once aborted; and
 * whether bucket b reduces in place (1), through staging (0), or does not
 * exist (-1). */
int eq_coll_aborted(void *ctx);
int eq_coll_in_place(void *ctx, int b);
/* The number of buckets started whose completion was not seen yet (the
 * watchdog sees it within EQ_COLL_WATCH_MS). */
int eq_coll_pending(void *ctx);

#endif
