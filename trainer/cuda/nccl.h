/*
 * trainer/cuda/nccl.h -- NCCL data parallelism for the CUDA backend: an
 * eq_comm (trainer/dist.h) whose collectives run on NCCL, one process per
 * GPU, on one or many hosts.
 *
 * Rendezvous: rank 0 makes the unique id (eq_nccl_unique_id, 128 opaque
 * bytes); the trainer's control plane hands the same bytes to every rank
 * (the rendezvous blob, trainer/dist.h), which passes them to
 * eq_nccl_comm_new.  The communicator is created non-blocking, so a peer
 * that never arrives makes eq_nccl_comm_new fail after `timeout_s`
 * ("... did not complete within N s (a peer is missing or stuck);
 * communicator aborted") instead of hanging.
 *
 * The comm's buckets, staging, ordering against the backend's compute
 * stream, deadlines, watchdog and abort are trainer/cuda/collective.h's
 * (tested without a GPU); this file is its driver: a communication stream
 * of its own, two CUDA events per bucket (compute stream -> comm stream
 * before the collective, comm stream -> compute stream after it),
 * ncclAllReduce (ncclSum, ncclAvg) and ncclBroadcast from rank 0, in place
 * on device memory; ncclCommGetAsyncError for health; ncclCommAbort on any
 * failure or deadline.
 *
 * Built when configure found NCCL (EQ_HAVE_NCCL); programs reach it
 * through the CUDA module's table (trainer/cuda/plugin.h,
 * eq_comm_nccl_new in trainer/dist.h).  Thread safety: as collective.h.
 */
#ifndef EQ_TRAINER_CUDA_NCCL_H
#define EQ_TRAINER_CUDA_NCCL_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "trainer/backend.h"
#include "trainer/dist.h"

#define EQ_NCCL_ID_BYTES 128

/* A fresh unique id into id[0..len) (len must be EQ_NCCL_ID_BYTES); rank 0
 * calls this, the others receive its bytes.  EQ_ERR_INVALID, EQ_ERR_NET
 * (ncclGetUniqueId failed, with NCCL's reason). */
eq_status eq_nccl_unique_id(uint8_t *id, size_t len, eq_err *err);

/* Join communicator `id` (exactly EQ_NCCL_ID_BYTES bytes) as `rank` of
 * `world` on the CUDA backend `be`'s device; `timeout_s` (> 0) bounds the
 * initialisation and every collective.  On success *iface and *ctx are an
 * eq_comm implementation for eq_comm_new (the caller owns ctx through it;
 * `be` must outlive it).  Errors: EQ_ERR_INVALID (not a CUDA backend, id
 * length, rank out of range), EQ_ERR_TIMEOUT (a peer did not arrive),
 * EQ_ERR_NET (NCCL failed), EQ_ERR_INTERNAL (CUDA failed). */
eq_status eq_nccl_comm_new(eq_backend *be, const uint8_t *id, size_t id_len, int rank, int world,
                           double timeout_s, const eq_comm_i **iface, void **ctx, eq_err *err);

#endif
