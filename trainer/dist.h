/*
 * trainer/dist.h -- data-parallel trainer ranks: the rendezvous that tells
 * every rank who the others are, and the collectives they use to stay
 * identical (DESIGN.md "State across ranks").
 *
 * Rendezvous.  Rank 0's control socket (a ROUTER, trainer/train.h) is the
 * meeting point.  Every other rank connects a DEALER to it and sends the
 * text frames
 *     "join" RANK WORLD ENDPOINT DIGEST
 * (ENDPOINT: where the rank receives collective traffic; DIGEST: a hash of
 * the experiment config, so ranks with different configs refuse to train
 * together).  When all W-1 have joined, rank 0 answers each with
 *     "welcome" WORLD EP_0 ... EP_{W-1} BLOB
 * where BLOB is opaque bytes rank 0 chose (empty for the CPU ring; NCCL's
 * unique id travels here), or at once with "refused" REASON (wrong world
 * size, rank out of range or taken, different digest).  The rendezvous
 * blocks with a deadline; rank 0's caller keeps answering its other control
 * commands meanwhile (eq_dist_rendezvous_root takes a handler for them).
 *
 * Collectives.  An eq_comm is the asynchronous, bucketed collective
 * interface the training loop uses: register buckets once (each a list of
 * float segments that stay at fixed addresses), then per step
 * eq_comm_start(bucket) in the same order on every rank and
 * eq_comm_wait(bucket) before the data is used.  Ops: SUM, AVG (sum / W)
 * and BCAST (rank 0's values everywhere).  Every rank ends with the same
 * bits.  The implementation is a vtable (eq_comm_i, the ggml backend
 * pattern): the CPU one below is a ring all-reduce over ZeroMQ run by a
 * communication thread, so start returns at once and work overlaps; a
 * CUDA/NCCL implementation plugs into the same table (its segments are
 * device pointers, its unique id is the rendezvous blob).
 *
 * Ring all-reduce (eq_comm_ring_*): rank r receives from rank r-1 on a PULL
 * socket it binds and sends to rank r+1 on a PUSH; a bucket of n floats is
 * cut into W chunks; W-1 reduce-scatter steps add a received chunk to the
 * local one, W-1 all-gather steps copy the finished chunks around.  Each
 * chunk's sum is computed once, on one rank, in ring order, so all ranks
 * hold identical results (the order differs from a single rank's sum, so
 * results equal one rank's to rounding, not bit for bit).  Messages carry
 * the bucket's sequence number, step and chunk, and are checked: ranks that
 * start buckets in different orders get an error, not a wrong sum.  A peer
 * silent for timeout_ms is an error (EQ_ERR_TIMEOUT naming it); after any
 * error the comm is broken and every later call fails with that error.
 *
 * Memory: the CPU ring reads and writes segments with the CPU, so they
 * must be host memory (the CPU backend's device memory is host memory).
 *
 * NCCL (eq_comm_nccl_*, backend = cuda with several ranks, doc/gpu.md):
 * rank 0 makes a 128-byte NCCL unique id through the CUDA module and gives
 * it to the rendezvous as the blob; every rank passes the world it got to
 * eq_comm_nccl_new, which checks the blob and joins the NCCL communicator
 * on its CUDA backend's GPU.  Segments may be device memory (reduced on
 * the GPU, ordered after the backend's compute stream, the wait queueing
 * the compute stream behind the reduction without blocking the host) or
 * host memory (staged through pinned memory; the wait blocks).  The
 * implementation is trainer/cuda/collective.h over trainer/cuda/nccl.h.
 *
 * Thread safety: an eq_comm is used by one thread (the training loop); its
 * own thread touches only the segments of buckets between start and wait.
 */
#ifndef EQ_TRAINER_DIST_H
#define EQ_TRAINER_DIST_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "trainer/backend.h"

#define EQ_DIST_MAX_WORLD 64
#define EQ_DIST_EP_CAP 256
#define EQ_DIST_DIGEST_CAP 64
#define EQ_DIST_BLOB_CAP 4096

/* ---- rendezvous ------------------------------------------------------------ */

/* What a rank knows after the rendezvous. */
typedef struct eq_dist_world {
    int rank, world;
    char ep[EQ_DIST_MAX_WORLD][EQ_DIST_EP_CAP]; /* each rank's collective endpoint */
    uint8_t blob[EQ_DIST_BLOB_CAP];             /* rank 0's opaque bytes */
    size_t blob_len;
} eq_dist_world;

/* This rank's side of the rendezvous. */
typedef struct eq_dist_me {
    int rank, world;             /* 0 <= rank < world <= EQ_DIST_MAX_WORLD */
    const char *ep;              /* collective endpoint the others connect to */
    const char *digest;          /* config digest (eq_dist_digest), compared by rank 0 */
    const void *blob;            /* rank 0 only: bytes for everyone (may be NULL) */
    size_t blob_len;             /* <= EQ_DIST_BLOB_CAP */
} eq_dist_me;

/* A hex digest (16 digits, FNV-1a 64) of `text` into out[EQ_DIST_DIGEST_CAP]. */
void eq_dist_digest(const char *text, char out[EQ_DIST_DIGEST_CAP]);

/* Rank 0's handler for control messages that are not "join": `frames`
 * (zmq_msg_t *, nframes >= 1, frames[0] the command) from the peer `id`
 * (idlen bytes) on `router`; the handler answers on `router` itself. */
typedef void eq_dist_other_fn(void *arg, void *router, const void *id, size_t idlen, void *frames, int nframes);

/* Rank 0: serve "join" messages on `router` (the bound control ROUTER)
 * until all world-1 other ranks joined, then send them the welcome and fill
 * *out.  Other commands go to `other` (may be NULL: answered with an
 * error).  EQ_ERR_TIMEOUT after timeout_ms naming the ranks missing,
 * EQ_ERR_INTERRUPTED when *stop becomes non-zero (stop may be NULL).
 * world == 1 returns at once. */
eq_status eq_dist_rendezvous_root(void *router, const eq_dist_me *me, int timeout_ms, eq_dist_other_fn *other,
                                  void *arg, volatile sig_atomic_t *stop, eq_dist_world *out, eq_err *err);

/* Rank 0, after the rendezvous: answer a late "join" from peer `id` (a
 * rank restarted) with "refused" WHY. */
void eq_dist_refuse_late(void *router, const void *id, size_t idlen, const char *why);

/* Ranks > 0: join through rank 0's control endpoint `root_ep` (a DEALER in
 * `zctx`, closed before returning) and fill *out.  EQ_ERR_INVALID with
 * rank 0's reason when refused, EQ_ERR_TIMEOUT, EQ_ERR_INTERRUPTED. */
eq_status eq_dist_rendezvous_join(void *zctx, const char *root_ep, const eq_dist_me *me, int timeout_ms,
                                  volatile sig_atomic_t *stop, eq_dist_world *out, eq_err *err);

/* ---- collectives ------------------------------------------------------------- */

typedef enum eq_comm_op {
    EQ_COMM_SUM = 0,
    EQ_COMM_AVG,   /* sum / world */
    EQ_COMM_BCAST, /* rank 0's values on every rank */
} eq_comm_op;

/* A run of floats of a bucket. */
typedef struct eq_comm_seg {
    float *data;
    size_t n;
} eq_comm_seg;

/* The implementation table.  Every member is required. */
typedef struct eq_comm_i {
    const char *name; /* "ring", "nccl" */
    /* Register a bucket (segments copied; the floats they point to must
     * stay valid while the comm lives); returns its id >= 0 or -1. */
    int (*bucket_new)(void *ctx, const eq_comm_seg *segs, size_t nsegs, eq_comm_op op, eq_err *err);
    /* Begin the collective of a bucket (not already started). */
    eq_status (*start)(void *ctx, int bucket, eq_err *err);
    /* Block until the bucket's collective is done; its error if it failed. */
    eq_status (*wait)(void *ctx, int bucket, eq_err *err);
    void (*destroy)(void *ctx);
} eq_comm_i;

typedef struct eq_comm eq_comm;

/* Register a bucket of `nsegs` segments (> 0 floats in all) with operation
 * `op`.  Returns the bucket id (>= 0), or -1 with err set (EQ_ERR_INVALID,
 * EQ_ERR_LIMIT beyond EQ_COMM_MAX_BUCKETS, EQ_ERR_NOMEM). */
#define EQ_COMM_MAX_BUCKETS 256
int eq_comm_bucket_new(eq_comm *c, const eq_comm_seg *segs, size_t nsegs, eq_comm_op op, eq_err *err);
/* Start a bucket's collective; every rank must start the same buckets in
 * the same order.  EQ_ERR_INVALID for a bad id or a bucket already started. */
eq_status eq_comm_start(eq_comm *c, int bucket, eq_err *err);
/* Wait for a started bucket (EQ_ERR_INVALID if it was not started). */
eq_status eq_comm_wait(eq_comm *c, int bucket, eq_err *err);
/* start + wait. */
eq_status eq_comm_run(eq_comm *c, int bucket, eq_err *err);
int eq_comm_rank(const eq_comm *c);
int eq_comm_world(const eq_comm *c);
const char *eq_comm_name(const eq_comm *c);
/* Stops the implementation (a collective in flight is abandoned: its peers
 * time out).  NULL-safe; NULLs *c_p. */
void eq_comm_destroy(eq_comm **c_p);

/* Wrap an implementation (used by the constructors; caller owns the
 * result, which owns ctx). */
eq_comm *eq_comm_new(const eq_comm_i *iface, void *ctx, int rank, int world, eq_err *err);

/* ---- the CPU ring over ZeroMQ ------------------------------------------------- */

typedef struct eq_comm_ring eq_comm_ring;

/* Phase 1: bind this rank's receiving socket at `bind_ep` (e.g.
 * "tcp://127.0.0.1:*" or "ipc:///tmp/x") in `zctx`.  timeout_ms: how long a
 * collective waits for a peer (<= 0: 60000).  Caller owns the result. */
eq_comm_ring *eq_comm_ring_listen(void *zctx, const char *bind_ep, int timeout_ms, eq_err *err);
/* The endpoint as bound (the real port for "tcp://...:*"), for eq_dist_me.ep. */
const char *eq_comm_ring_endpoint(const eq_comm_ring *r);
/* Phase 2: connect to the next rank of `w`, start the communication thread
 * and check the ring with a first all-reduce.  Consumes *r_p (NULLed, also
 * on failure).  Returns the comm, or NULL with err set. */
eq_comm *eq_comm_ring_connect(eq_comm_ring **r_p, const eq_dist_world *w, eq_err *err);
/* NULL-safe; NULLs *r_p (for a ring never connected). */
void eq_comm_ring_destroy(eq_comm_ring **r_p);

/* ---- NCCL (through the CUDA module) ------------------------------------------- */

#define EQ_COMM_NCCL_ID_BYTES 128

/* Rank 0: a fresh NCCL unique id into id[0..len) (len must be
 * EQ_COMM_NCCL_ID_BYTES), for eq_dist_me.blob.  EQ_ERR_UNSUPPORTED in a
 * build without CUDA, when the CUDA module does not load or has no NCCL;
 * EQ_ERR_NET when NCCL fails.  (Defined in trainer/backend_select.c, which
 * owns the module.) */
eq_status eq_comm_nccl_unique_id(uint8_t *id, size_t len, eq_err *err);

/* Join the NCCL communicator whose unique id is w->blob as rank w->rank of
 * w->world, on the CUDA backend `be` (from eq_backend_open("cuda"); it must
 * outlive the comm).  timeout_ms (<= 0: 60000) bounds the initialisation
 * and every collective; on a failure or timeout the communicator is
 * aborted and that call and every later one fail naming this rank (see
 * trainer/cuda/collective.h).  Errors: EQ_ERR_PROTO when the blob is not
 * a 128-byte id (rank 0 runs another backend, or a corrupt welcome),
 * EQ_ERR_INVALID, EQ_ERR_UNSUPPORTED (no CUDA/NCCL), EQ_ERR_TIMEOUT (a peer
 * did not arrive), EQ_ERR_NET, EQ_ERR_INTERNAL.  Caller owns the result. */
eq_comm *eq_comm_nccl_new(eq_backend *be, const eq_dist_world *w, int timeout_ms, eq_err *err);

/* The CUDA module's communicator (trainer/cuda/nccl.h's eq_nccl_comm_new
 * through the module's table; trainer/backend_select.c): the
 * implementation and context that eq_comm_nccl_new wraps. */
eq_status eq_backend_cuda_nccl_comm(eq_backend *be, const uint8_t *id, size_t id_len, int rank, int world,
                                    double timeout_s, const eq_comm_i **iface, void **ctx, eq_err *err);

#endif
