/*
 * trainer/feeder.h -- the trainer's side of the data path: batches from one
 * or more eq-loaders, in step order, with a bounded number of requests in
 * flight (DESIGN.md "Loaders are stateless and deterministic").
 *
 * One DEALER socket per loader.  A pass is a run of steps of one job and
 * epoch: step s asks for positions [s*G + offset, + count) of the epoch's
 * global order (this rank's share).  The feeder keeps up to `inflight`
 * requests outstanding over all loaders, at most `credit` per loader (so a
 * loader is never flooded), sending each to the live loader with the fewest
 * outstanding.  A request has a deadline: when it passes, or the loader
 * answers with an error that says it is busy or does not know the job
 * (after a restart), the request is issued again (to another loader when
 * there is one; the job is sent again first where it was unknown).  Replies
 * carry the request id; a reply to a request that was re-issued and already
 * answered is dropped, so no sample is lost or delivered twice.  Replies
 * are reordered by step: eq_feeder_next returns steps in order.
 *
 * Loaders can be added and removed at any time between calls
 * (eq_feeder_add_loader / eq_feeder_remove_loader): a new loader gets the
 * current job and then its share of new requests; a removed loader's
 * outstanding requests are issued again elsewhere and its socket closed, so
 * its late replies cannot arrive.  Either way no sample is lost or
 * delivered twice.
 *
 * All I/O happens inside the calls (no thread of its own): ZeroMQ's I/O
 * thread receives replies while the trainer computes, so requests issued
 * before a step are ready after it.  Time spent blocked in eq_feeder_next
 * is the data wait, reported by eq_feeder_stats.
 *
 * Thread safety: one thread per feeder.
 */
#ifndef EQ_TRAINER_FEEDER_H
#define EQ_TRAINER_FEEDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "proto/proto_zmq.h"

#define EQ_FEEDER_MAX_LOADERS 64
#define EQ_FEEDER_MAX_INFLIGHT 256
#define EQ_FEEDER_MAX_JOBS 4

typedef struct eq_feeder_cfg {
    const char *const *loaders; /* data endpoints, >= 1 */
    size_t nloaders;
    uint32_t inflight;    /* requests outstanding over all loaders; 0: 4 per loader */
    uint32_t credit;      /* per loader; 0: inflight */
    uint32_t timeout_ms;  /* deadline of a request before it is issued again; 0: 30000 */
    uint32_t give_up_ms;  /* no reply from any loader for this long: EQ_ERR_TIMEOUT; 0: 120000
                           * (eq-trainer: [train] loader_timeout) */
    const char *name;     /* HELLO name ("trainer:rank0"); NULL: "trainer" */
} eq_feeder_cfg;

typedef struct eq_feeder eq_feeder;

/* Create the sockets in `zctx` and connect them (connecting succeeds
 * before the loaders are up).  Caller owns the result. */
eq_feeder *eq_feeder_new(void *zctx, const eq_feeder_cfg *cfg, eq_err *err);
/* Closes the sockets (linger 0), drops outstanding requests.  NULL-safe. */
void eq_feeder_destroy(eq_feeder **self_p);

/* Register a JOB (a JOB message, eq_proto_msg_init'ed and filled) and send
 * it to every loader; wait (at most cfg->give_up_ms) until at least one
 * answered JOB_OK.  Loaders must agree on size, classes and data hash;
 * a loader that differs is refused (EQ_ERR_INVALID naming it).  `ok`
 * receives the first JOB_OK; *job_index the handle for eq_feeder_pass.
 * Errors from a loader (unknown dataset, bad pipeline) come back with its
 * message. */
eq_status eq_feeder_add_job(eq_feeder *self, const eq_msg *job, eq_msg_job_ok *ok, int *job_index, eq_err *err);

/* Start a pass: steps [first, last) of `epoch` of the job; step s asks for
 * `count` positions at `offset` of the global batch, except that positions
 * at or past `limit` (the epoch's sample count; UINT64_MAX: none) are not
 * asked for (a short last val step; a step with no positions ends the
 * pass).  Requests of an earlier pass still outstanding are cancelled
 * (their replies dropped). */
eq_status eq_feeder_pass(eq_feeder *self, int job_index, uint64_t epoch, uint64_t first, uint64_t last,
                         uint32_t offset, uint32_t count, uint64_t limit, eq_err *err);

/* One batch of the pass, in step order. */
typedef struct eq_feeder_batch {
    uint64_t epoch, step;
    uint32_t offset, count;
    const uint8_t *images;  /* [count][H][W][C]; may be unaligned; valid until the next call */
    const void *labels;     /* I32 or I64 [count] (labels_i64), unaligned */
    bool labels_i64;
    uint32_t h, w, c;
    uint32_t nreplaced;     /* substituted samples the loader reported */
    const char *mix;        /* "" none, "mixup" (blend images and labels), "cutmix" (labels only) */
    const void *mix_index;  /* with mix: I32 [count], partner position in this batch; unaligned */
    const void *mix_lambda; /* with mix: F32 [count], weight of the sample itself; unaligned */
} eq_feeder_batch;

/* The next step's batch, waiting for it if needed (and keeping the
 * pipeline full).  EQ_ERR_NOTFOUND when the pass is over;
 * EQ_ERR_TIMEOUT when no loader answered for give_up_ms; an ERROR reply
 * that is not retryable comes back with the loader's code and message;
 * EQ_ERR_INTERRUPTED when eq_feeder_interrupt was called. */
eq_status eq_feeder_next(eq_feeder *self, eq_feeder_batch *out, eq_err *err);

/* Make a blocked eq_feeder_next return EQ_ERR_INTERRUPTED soon (it checks
 * every 100 ms).  Async-signal-safe: sets a flag. */
void eq_feeder_interrupt(eq_feeder *self);

/* Connect one more loader (data endpoint `ep`).  EQ_ERR_INVALID if it is
 * already one of the feeder's, EQ_ERR_LIMIT beyond EQ_FEEDER_MAX_LOADERS
 * (removed ones count), EQ_ERR_NET if the endpoint is malformed. */
eq_status eq_feeder_add_loader(eq_feeder *self, const char *ep, eq_err *err);
/* Stop using the loader at `ep`: its outstanding requests are issued again
 * to the others.  EQ_ERR_NOTFOUND if no loader has that endpoint,
 * EQ_ERR_INVALID if it is the last one. */
eq_status eq_feeder_remove_loader(eq_feeder *self, const char *ep, eq_err *err);

typedef struct eq_feeder_stats {
    double wait_s;          /* total time blocked in eq_feeder_next */
    uint64_t batches, samples;
    uint64_t reissued;      /* requests issued again (timeout, busy, unknown job) */
    uint64_t late_dropped;  /* replies to requests already answered or cancelled */
    uint64_t errors;        /* ERROR replies */
    uint32_t loaders;       /* in use (added and not removed) */
    uint32_t loaders_alive; /* of those, not suspected (no recent timeout) */
} eq_feeder_stats;
void eq_feeder_stats_get(const eq_feeder *self, eq_feeder_stats *st);

#endif
