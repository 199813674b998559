/*
 * trainer/cuda/nccl.c -- NCCL communicator, bucketed all-reduce on a
 * communication stream, abort on failure (contract in nccl.h).
 */
#include "trainer/cuda/cuda_internal.h"
#include "trainer/cuda/nccl.h"

/* nccl.h declares a few functions as f() (not prototypes) */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <nccl.h>
#pragma GCC diagnostic pop
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct eq_nccl {
    eq_cuda *cu;
    ncclComm_t comm;
    int nranks, rank;
    double timeout_s;
    cudaStream_t stream;  /* communication */
    size_t nbuckets;
    cudaEvent_t *ready;   /* [nbuckets] recorded on the compute stream */
    cudaEvent_t *done;    /* [nbuckets] recorded on the comm stream */
    unsigned char *started;
    int aborted;
    char why[256];        /* the failure that aborted it */
};

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void s_nap(void)
{
    struct timespec ts = {0, 200000}; /* 0.2 ms */
    nanosleep(&ts, NULL);
}

/* Abort the communicator and record why; returns code with err set. */
static eq_status s_abort(eq_nccl *c, eq_status code, eq_err *err, const char *what)
{
    if (!c->aborted) {
        snprintf(c->why, sizeof c->why, "%s", what);
        if (c->comm) ncclCommAbort(c->comm);
        c->comm = NULL;
        c->aborted = 1;
    }
    return eq_err_set(err, code, "nccl rank %d/%d: %s; communicator aborted", c->rank, c->nranks,
                      what);
}

static eq_status s_nccl_fail(eq_nccl *c, eq_err *err, const char *call, ncclResult_t r)
{
    char what[384];
    const char *last = c->comm ? ncclGetLastError(c->comm) : NULL;
    snprintf(what, sizeof what, "%s failed: %s%s%s", call, ncclGetErrorString(r),
             last && *last ? ": " : "", last && *last ? last : "");
    return s_abort(c, EQ_ERR_NET, err, what);
}

static eq_status s_dead(const eq_nccl *c, eq_err *err)
{
    return eq_err_set(err, EQ_ERR_NET, "nccl rank %d/%d: communicator aborted earlier (%s)", c->rank,
                      c->nranks, c->why);
}

/* Wait until the non-blocking communicator has finished its last call. */
static eq_status s_settle(eq_nccl *c, const char *what, eq_err *err)
{
    double deadline = s_now() + c->timeout_s;
    for (;;) {
        ncclResult_t st = ncclSuccess;
        ncclResult_t r = ncclCommGetAsyncError(c->comm, &st);
        if (r != ncclSuccess) return s_nccl_fail(c, err, "ncclCommGetAsyncError", r);
        if (st == ncclSuccess) return EQ_OK;
        if (st != ncclInProgress) return s_nccl_fail(c, err, what, st);
        if (s_now() > deadline) {
            char msg[256];
            snprintf(msg, sizeof msg, "%s did not complete within %g s (a peer is missing or stuck)",
                     what, c->timeout_s);
            return s_abort(c, EQ_ERR_TIMEOUT, err, msg);
        }
        s_nap();
    }
}

eq_status eq_nccl_unique_id(uint8_t id[EQ_NCCL_ID_BYTES], eq_err *err)
{
    ncclUniqueId u;
    if (!id) return eq_err_set(err, EQ_ERR_INVALID, "nccl: id buffer is NULL");
    ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess)
        return eq_err_set(err, EQ_ERR_NET, "nccl: ncclGetUniqueId failed: %s", ncclGetErrorString(r));
    memcpy(id, u.internal, EQ_NCCL_ID_BYTES);
    return EQ_OK;
}

void eq_nccl_destroy(eq_nccl **c_p)
{
    if (!c_p || !*c_p) return;
    eq_nccl *c = *c_p;
    if (c->comm) {
        if (c->stream) cudaStreamSynchronize(c->stream);
        /* finalize may wait on peers: bound it, then abort */
        eq_err e;
        ncclResult_t r = ncclCommFinalize(c->comm);
        if ((r == ncclSuccess || r == ncclInProgress) && s_settle(c, "ncclCommFinalize", &e) == EQ_OK)
            ncclCommDestroy(c->comm); /* else s_settle aborted it */
        else if (c->comm)
            ncclCommAbort(c->comm);
        c->comm = NULL;
    }
    for (size_t b = 0; b < c->nbuckets; b++) {
        if (c->ready && c->ready[b]) cudaEventDestroy(c->ready[b]);
        if (c->done && c->done[b]) cudaEventDestroy(c->done[b]);
    }
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c->ready);
    free(c->done);
    free(c->started);
    free(c);
    *c_p = NULL;
}

eq_nccl *eq_nccl_new(eq_backend *be, const uint8_t *id, size_t id_len, int nranks, int rank,
                     size_t nbuckets, double timeout_s, eq_err *err)
{
    if (!be || !eq_cuda_stream(be)) {
        eq_err_set(err, EQ_ERR_INVALID, "nccl: needs a cuda backend");
        return NULL;
    }
    if (!id || id_len != EQ_NCCL_ID_BYTES) {
        eq_err_set(err, EQ_ERR_INVALID, "nccl: unique id must be %d bytes (got %zu)", EQ_NCCL_ID_BYTES,
                   id ? id_len : (size_t)0);
        return NULL;
    }
    if (nranks < 1 || rank < 0 || rank >= nranks) {
        eq_err_set(err, EQ_ERR_INVALID, "nccl: rank %d of %d ranks is out of range", rank, nranks);
        return NULL;
    }
    if (nbuckets == 0 || !(timeout_s > 0)) {
        eq_err_set(err, EQ_ERR_INVALID, "nccl: need nbuckets >= 1 (got %zu) and timeout > 0 (got %g)",
                   nbuckets, timeout_s);
        return NULL;
    }
    eq_nccl *c = calloc(1, sizeof *c);
    if (c) {
        c->ready = eq_calloc_array(nbuckets, sizeof *c->ready);
        c->done = eq_calloc_array(nbuckets, sizeof *c->done);
        c->started = eq_calloc_array(nbuckets, 1);
    }
    if (!c || !c->ready || !c->done || !c->started) {
        if (c) {
            free(c->ready);
            free(c->done);
            free(c->started);
        }
        free(c);
        eq_err_set(err, EQ_ERR_NOMEM, "nccl: out of memory");
        return NULL;
    }
    c->cu = be->context;
    c->nranks = nranks;
    c->rank = rank;
    c->timeout_s = timeout_s;
    c->nbuckets = nbuckets;
    cudaError_t e = cudaSetDevice(c->cu->device);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    for (size_t b = 0; e == cudaSuccess && b < nbuckets; b++) {
        e = cudaEventCreateWithFlags(&c->ready[b], cudaEventDisableTiming);
        if (e == cudaSuccess) e = cudaEventCreateWithFlags(&c->done[b], cudaEventDisableTiming);
    }
    if (e != cudaSuccess) {
        eq_cuda_fail(err, "nccl init", "stream/event creation", e);
        eq_nccl_destroy(&c);
        return NULL;
    }
    ncclUniqueId u;
    memcpy(u.internal, id, EQ_NCCL_ID_BYTES);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&c->comm, nranks, u, rank, &cfg);
    if (r != ncclSuccess && r != ncclInProgress) {
        s_nccl_fail(c, err, "ncclCommInitRankConfig", r);
        eq_nccl_destroy(&c);
        return NULL;
    }
    if (s_settle(c, "communicator initialisation (ncclCommInitRankConfig)", err) != EQ_OK) {
        eq_nccl_destroy(&c);
        return NULL;
    }
    return c;
}

int eq_nccl_aborted(const eq_nccl *c)
{
    return c ? c->aborted : 1;
}

eq_status eq_nccl_check(eq_nccl *c, eq_err *err)
{
    if (!c) return eq_err_set(err, EQ_ERR_INVALID, "nccl: communicator is NULL");
    if (c->aborted) return s_dead(c, err);
    ncclResult_t st = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(c->comm, &st);
    if (r != ncclSuccess) return s_nccl_fail(c, err, "ncclCommGetAsyncError", r);
    if (st != ncclSuccess && st != ncclInProgress) return s_nccl_fail(c, err, "an earlier NCCL call", st);
    return EQ_OK;
}

eq_status eq_nccl_allreduce_start(eq_nccl *c, size_t bucket, float *buf, size_t count,
                                  eq_err *err)
{
    if (!c) return eq_err_set(err, EQ_ERR_INVALID, "nccl: communicator is NULL");
    if (c->aborted) return s_dead(c, err);
    if (bucket >= c->nbuckets || c->started[bucket] || (!buf && count))
        return eq_err_set(err, EQ_ERR_INVALID,
                          "nccl rank %d: bucket %zu invalid (of %zu), already started this step, or NULL",
                          c->rank, bucket, c->nbuckets);
    char what[96];
    snprintf(what, sizeof what, "all-reduce of bucket %zu (%zu floats)", bucket, count);
    cudaError_t e = cudaEventRecord(c->ready[bucket], c->cu->stream);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(c->stream, c->ready[bucket], 0);
    if (e != cudaSuccess) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s: CUDA: %s", what, cudaGetErrorString(e));
        return s_abort(c, EQ_ERR_INTERNAL, err, msg);
    }
    ncclResult_t r = ncclAllReduce(buf, buf, count, ncclFloat, ncclAvg, c->comm, c->stream);
    if (r == ncclInProgress) {
        eq_status st = s_settle(c, what, err);
        if (st) return st;
    } else if (r != ncclSuccess) {
        return s_nccl_fail(c, err, what, r);
    }
    e = cudaEventRecord(c->done[bucket], c->stream);
    if (e != cudaSuccess) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s: CUDA: %s", what, cudaGetErrorString(e));
        return s_abort(c, EQ_ERR_INTERNAL, err, msg);
    }
    c->started[bucket] = 1;
    return EQ_OK;
}

eq_status eq_nccl_allreduce_wait(eq_nccl *c, size_t bucket, eq_err *err)
{
    if (!c) return eq_err_set(err, EQ_ERR_INVALID, "nccl: communicator is NULL");
    if (c->aborted) return s_dead(c, err);
    if (bucket >= c->nbuckets || !c->started[bucket])
        return eq_err_set(err, EQ_ERR_INVALID, "nccl rank %d: bucket %zu was not started", c->rank,
                          bucket);
    cudaError_t e = cudaStreamWaitEvent(c->cu->stream, c->done[bucket], 0);
    if (e != cudaSuccess) {
        char msg[256];
        snprintf(msg, sizeof msg, "waiting for bucket %zu: CUDA: %s", bucket, cudaGetErrorString(e));
        return s_abort(c, EQ_ERR_INTERNAL, err, msg);
    }
    return EQ_OK;
}

eq_status eq_nccl_synchronize(eq_nccl *c, eq_err *err)
{
    if (!c) return eq_err_set(err, EQ_ERR_INVALID, "nccl: communicator is NULL");
    if (c->aborted) return s_dead(c, err);
    double deadline = s_now() + c->timeout_s;
    for (size_t b = 0; b < c->nbuckets; b++) {
        if (!c->started[b]) continue;
        for (;;) {
            cudaError_t q = cudaEventQuery(c->done[b]);
            if (q == cudaSuccess) break;
            if (q != cudaErrorNotReady) {
                char msg[256];
                snprintf(msg, sizeof msg, "all-reduce of bucket %zu: CUDA: %s", b, cudaGetErrorString(q));
                return s_abort(c, EQ_ERR_INTERNAL, err, msg);
            }
            eq_status st = eq_nccl_check(c, err);
            if (st) return st;
            if (s_now() > deadline) {
                char msg[256];
                snprintf(msg, sizeof msg,
                         "all-reduce of bucket %zu did not finish within %g s (a peer is missing or stuck)",
                         b, c->timeout_s);
                return s_abort(c, EQ_ERR_TIMEOUT, err, msg);
            }
            s_nap();
        }
        c->started[b] = 0;
    }
    return EQ_OK;
}
