/*
 * trainer/cuda/nccl.h -- NCCL data parallelism for the CUDA backend: one
 * communicator per process (one process per GPU, on one or many hosts),
 * gradient buckets all-reduced (averaged) on a communication stream of
 * their own, overlapping the rest of the backward.
 *
 * Rendezvous: rank 0 makes the unique id (eq_nccl_unique_id, 128 opaque
 * bytes) and the trainer's control plane hands the same bytes to every
 * rank, which passes them to eq_nccl_new.  The communicator is created
 * non-blocking, so a peer that never arrives makes eq_nccl_new fail after
 * `timeout_s` instead of hanging.
 *
 * Per step, per bucket b (trainer/cuda/bucket.h gives the plan and arena):
 *   eq_nccl_allreduce_start(c, b, ptr, count)  after the ops that write the
 *       bucket's last gradient were issued: the comm stream waits for them
 *       and averages the bucket in place across ranks;
 *   eq_nccl_allreduce_wait(c, b)  orders the compute stream (the optimiser
 *       step reading the bucket) after the reduction, without blocking the
 *       host;
 *   eq_nccl_synchronize(c)  at the end of the step blocks the host until
 *       every started reduction finished, polling ncclCommGetAsyncError.
 * Failure handling: an NCCL error, a CUDA error, or no progress within
 * `timeout_s` aborts the communicator (ncclCommAbort) and returns an error
 * naming the rank, the bucket and the cause (EQ_ERR_TIMEOUT for the
 * deadline, EQ_ERR_NET for NCCL failures); every later call then fails at
 * once with "communicator aborted", so the job stops with a clear message
 * instead of hanging in a collective.
 *
 * Built when configure found NCCL (EQ_HAVE_NCCL).  Thread safety: one
 * thread at a time, the backend's thread.
 */
#ifndef EQ_TRAINER_CUDA_NCCL_H
#define EQ_TRAINER_CUDA_NCCL_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "trainer/backend.h"

#define EQ_NCCL_ID_BYTES 128

typedef struct eq_nccl eq_nccl;

/* A fresh unique id (rank 0 calls this; others receive its bytes). */
eq_status eq_nccl_unique_id(uint8_t id[EQ_NCCL_ID_BYTES], eq_err *err);

/* Join communicator `id` (exactly EQ_NCCL_ID_BYTES bytes) as `rank` of
 * `nranks` on the CUDA backend `be`'s device, with up to `nbuckets` buckets
 * per step and `timeout_s` (> 0) as the deadline of initialisation and of
 * every synchronisation.  Caller owns the result. */
eq_nccl *eq_nccl_new(eq_backend *be, const uint8_t *id, size_t id_len, int nranks, int rank,
                     size_t nbuckets, double timeout_s, eq_err *err);
/* Finalise and free (abort when the communicator failed).  NULL-safe. */
void eq_nccl_destroy(eq_nccl **c_p);

/* Average `count` floats at device pointer buf across ranks, in place, as
 * bucket `bucket` (< nbuckets; not already started this step). */
eq_status eq_nccl_allreduce_start(eq_nccl *c, size_t bucket, float *buf, size_t count,
                                  eq_err *err);
/* The compute stream waits for bucket `bucket`'s reduction (started). */
eq_status eq_nccl_allreduce_wait(eq_nccl *c, size_t bucket, eq_err *err);
/* Host waits for every started reduction (deadline timeout_s); the step's
 * buckets may be started again afterwards. */
eq_status eq_nccl_synchronize(eq_nccl *c, eq_err *err);
/* Poll for an asynchronous NCCL error without waiting. */
eq_status eq_nccl_check(eq_nccl *c, eq_err *err);
/* 1 once the communicator was aborted. */
int eq_nccl_aborted(const eq_nccl *c);

#endif
