/*
 * trainer/cuda/nccl.c -- the NCCL driver of trainer/cuda/collective.h:
 * communicator, communication stream, per-bucket events, abort (nccl.h).
 */
#include "core/clock.h"
#include "trainer/cuda/cuda_internal.h"
#include "trainer/cuda/collective.h"
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

typedef struct s_drv {
    eq_cuda *cu;
    int device;
    ncclComm_t comm; /* NULL once aborted or destroyed */
    int rank, nranks;
    double timeout_s;
    cudaStream_t stream;                      /* communication */
    cudaEvent_t ready[EQ_COMM_MAX_BUCKETS];   /* recorded on the compute stream */
    cudaEvent_t done[EQ_COMM_MAX_BUCKETS];    /* recorded on the comm stream */
} s_drv;

static void s_nap(void)
{
    struct timespec ts = { 0, 200000 }; /* 0.2 ms */
    nanosleep(&ts, NULL);
}

static eq_status s_cu(eq_err *err, const char *call, cudaError_t e)
{
    return eq_err_set(err, EQ_ERR_INTERNAL, "CUDA %s: %s", call, cudaGetErrorString(e));
}

static eq_status s_nccl(const s_drv *d, eq_err *err, const char *call, ncclResult_t r)
{
    const char *last = d->comm ? ncclGetLastError(d->comm) : NULL;
    return eq_err_set(err, EQ_ERR_NET, "%s failed: %s%s%s", call, ncclGetErrorString(r), last && *last ? ": " : "",
                      last && *last ? last : "");
}

/* Wait until the non-blocking communicator finished its last call. */
static eq_status s_settle(s_drv *d, const char *what, eq_err *err)
{
    double deadline = eq_clock_sec() + d->timeout_s;
    for (;;) {
        ncclResult_t st = ncclSuccess;
        ncclResult_t r = ncclCommGetAsyncError(d->comm, &st);
        if (r != ncclSuccess) return s_nccl(d, err, "ncclCommGetAsyncError", r);
        if (st == ncclSuccess) return EQ_OK;
        if (st != ncclInProgress) return s_nccl(d, err, what, st);
        if (eq_clock_sec() > deadline)
            return eq_err_set(err, EQ_ERR_TIMEOUT, "%s did not complete within %g s (a peer is missing or stuck)",
                              what, d->timeout_s);
        s_nap();
    }
}

static int s_is_device(void *drv, const void *p)
{
    (void)drv;
    struct cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError(); /* an unknown host pointer on old runtimes: clear it */
        return 0;
    }
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

static void *s_dev_alloc(void *drv, size_t bytes, eq_err *err)
{
    s_drv *d = drv;
    void *p = NULL;
    cudaError_t e = cudaSetDevice(d->device);
    if (e == cudaSuccess) e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        eq_err_set(err, EQ_ERR_NOMEM, "cudaMalloc(%zu): %s", bytes, cudaGetErrorString(e));
        return NULL;
    }
    return p;
}

static void s_dev_free(void *drv, void *p)
{
    (void)drv;
    cudaFree(p);
}

static void *s_host_alloc(void *drv, size_t bytes, eq_err *err)
{
    (void)drv;
    void *p = NULL;
    cudaError_t e = cudaMallocHost(&p, bytes);
    if (e != cudaSuccess) {
        eq_err_set(err, EQ_ERR_NOMEM, "cudaMallocHost(%zu): %s", bytes, cudaGetErrorString(e));
        return NULL;
    }
    return p;
}

static void s_host_free(void *drv, void *p)
{
    (void)drv;
    cudaFreeHost(p);
}

static eq_status s_event(cudaEvent_t *ev, eq_err *err)
{
    if (*ev) return EQ_OK;
    cudaError_t e = cudaEventCreateWithFlags(ev, cudaEventDisableTiming);
    return e == cudaSuccess ? EQ_OK : s_cu(err, "cudaEventCreateWithFlags", e);
}

static eq_status s_after_compute(void *drv, int b, eq_err *err)
{
    s_drv *d = drv;
    eq_status st = s_event(&d->ready[b], err);
    if (st) return st;
    cudaError_t e = cudaEventRecord(d->ready[b], d->cu->stream);
    if (e != cudaSuccess) return s_cu(err, "cudaEventRecord", e);
    e = cudaStreamWaitEvent(d->stream, d->ready[b], 0);
    return e == cudaSuccess ? EQ_OK : s_cu(err, "cudaStreamWaitEvent", e);
}

static eq_status s_copy(void *drv, void *dst, const void *src, size_t bytes, eq_err *err)
{
    s_drv *d = drv;
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, d->stream);
    return e == cudaSuccess ? EQ_OK : s_cu(err, "cudaMemcpyAsync", e);
}

static eq_status s_reduce(void *drv, float *buf, size_t n, eq_comm_op op, eq_err *err)
{
    s_drv *d = drv;
    if (!d->comm) return eq_err_set(err, EQ_ERR_NET, "the communicator is gone");
    ncclResult_t r;
    const char *call;
    if (op == EQ_COMM_BCAST) {
        call = "ncclBroadcast";
        r = ncclBroadcast(buf, buf, n, ncclFloat, 0, d->comm, d->stream);
    } else {
        call = "ncclAllReduce";
        r = ncclAllReduce(buf, buf, n, ncclFloat, op == EQ_COMM_AVG ? ncclAvg : ncclSum, d->comm, d->stream);
    }
    if (r == ncclInProgress) return s_settle(d, call, err);
    return r == ncclSuccess ? EQ_OK : s_nccl(d, err, call, r);
}

static eq_status s_record(void *drv, int b, eq_err *err)
{
    s_drv *d = drv;
    eq_status st = s_event(&d->done[b], err);
    if (st) return st;
    cudaError_t e = cudaEventRecord(d->done[b], d->stream);
    return e == cudaSuccess ? EQ_OK : s_cu(err, "cudaEventRecord", e);
}

static int s_query(void *drv, int b, eq_err *err)
{
    s_drv *d = drv;
    cudaSetDevice(d->device); /* the watchdog thread: no context on device 0 */
    cudaError_t e = cudaEventQuery(d->done[b]);
    if (e == cudaSuccess) return 1;
    if (e == cudaErrorNotReady) return 0;
    s_cu(err, "cudaEventQuery", e);
    return -1;
}

static eq_status s_compute_after(void *drv, int b, eq_err *err)
{
    s_drv *d = drv;
    cudaError_t e = cudaStreamWaitEvent(d->cu->stream, d->done[b], 0);
    return e == cudaSuccess ? EQ_OK : s_cu(err, "cudaStreamWaitEvent", e);
}

static eq_status s_health(void *drv, eq_err *err)
{
    s_drv *d = drv;
    if (!d->comm) return eq_err_set(err, EQ_ERR_NET, "the communicator is gone");
    ncclResult_t st = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(d->comm, &st);
    if (r != ncclSuccess) return s_nccl(d, err, "ncclCommGetAsyncError", r);
    if (st != ncclSuccess && st != ncclInProgress) return s_nccl(d, err, "an NCCL operation", st);
    return EQ_OK;
}

static void s_abort(void *drv)
{
    s_drv *d = drv;
    if (!d->comm) return;
    cudaSetDevice(d->device);
    ncclCommAbort(d->comm);
    d->comm = NULL;
}

static void s_destroy(void *drv)
{
    s_drv *d = drv;
    if (!d) return;
    cudaSetDevice(d->device);
    if (d->comm) {
        /* nothing in flight (collective.c waited or aborted); finalize may
         * still wait on peers: bounded, then abort */
        eq_err e;
        ncclResult_t r = ncclCommFinalize(d->comm);
        if ((r == ncclSuccess || r == ncclInProgress) && s_settle(d, "ncclCommFinalize", &e) == EQ_OK)
            ncclCommDestroy(d->comm);
        else
            ncclCommAbort(d->comm);
        d->comm = NULL;
    }
    for (int b = 0; b < EQ_COMM_MAX_BUCKETS; b++) {
        if (d->ready[b]) cudaEventDestroy(d->ready[b]);
        if (d->done[b]) cudaEventDestroy(d->done[b]);
    }
    if (d->stream) cudaStreamDestroy(d->stream);
    free(d);
}

static const eq_coll_ops s_ops = {
    .is_device = s_is_device,
    .dev_alloc = s_dev_alloc,
    .dev_free = s_dev_free,
    .host_alloc = s_host_alloc,
    .host_free = s_host_free,
    .after_compute = s_after_compute,
    .copy = s_copy,
    .reduce = s_reduce,
    .record = s_record,
    .query = s_query,
    .compute_after = s_compute_after,
    .health = s_health,
    .abort = s_abort,
    .destroy = s_destroy,
};

eq_status eq_nccl_unique_id(uint8_t *id, size_t len, eq_err *err)
{
    if (!id || len != EQ_NCCL_ID_BYTES)
        return eq_err_set(err, EQ_ERR_INVALID, "nccl: the unique id needs a buffer of %d bytes (got %zu)",
                          EQ_NCCL_ID_BYTES, id ? len : (size_t)0);
    ncclUniqueId u;
    ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess)
        return eq_err_set(err, EQ_ERR_NET, "nccl: ncclGetUniqueId failed: %s", ncclGetErrorString(r));
    memcpy(id, u.internal, EQ_NCCL_ID_BYTES);
    return EQ_OK;
}

eq_status eq_nccl_comm_new(eq_backend *be, const uint8_t *id, size_t id_len, int rank, int world,
                           double timeout_s, const eq_comm_i **iface, void **ctx, eq_err *err)
{
    _Static_assert(sizeof(((ncclUniqueId *)0)->internal) == EQ_NCCL_ID_BYTES, "NCCL's unique id size changed");
    if (!iface || !ctx) return eq_err_set(err, EQ_ERR_INVALID, "nccl: no place for the result");
    *iface = NULL;
    *ctx = NULL;
    if (!be || !eq_cuda_stream(be)) return eq_err_set(err, EQ_ERR_INVALID, "nccl: needs a cuda backend");
    if (!id || id_len != EQ_NCCL_ID_BYTES)
        return eq_err_set(err, EQ_ERR_INVALID, "nccl: the unique id must be %d bytes (got %zu)", EQ_NCCL_ID_BYTES,
                          id ? id_len : (size_t)0);
    if (world < 1 || world > EQ_DIST_MAX_WORLD || rank < 0 || rank >= world)
        return eq_err_set(err, EQ_ERR_INVALID, "nccl: rank %d of %d ranks is out of range", rank, world);
    if (!(timeout_s > 0)) return eq_err_set(err, EQ_ERR_INVALID, "nccl: timeout %g s: need > 0", timeout_s);
    s_drv *d = calloc(1, sizeof *d);
    if (!d) return eq_err_set(err, EQ_ERR_NOMEM, "nccl: out of memory");
    d->cu = be->context;
    d->device = d->cu->device;
    d->rank = rank;
    d->nranks = world;
    d->timeout_s = timeout_s;
    eq_err e = { 0 };
    eq_status st = EQ_OK;
    cudaError_t ce = cudaSetDevice(d->device);
    if (ce == cudaSuccess) ce = cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking);
    if (ce != cudaSuccess) {
        st = s_cu(&e, "cudaStreamCreateWithFlags", ce);
        s_destroy(d);
        return eq_err_set(err, st, "nccl rank %d/%d: %s", rank, world, e.msg);
    }
    ncclUniqueId u;
    memcpy(u.internal, id, EQ_NCCL_ID_BYTES);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&d->comm, world, u, rank, &cfg);
    if (r != ncclSuccess && r != ncclInProgress)
        st = s_nccl(d, &e, "ncclCommInitRankConfig", r);
    else
        st = s_settle(d, "communicator initialisation (ncclCommInitRankConfig)", &e);
    if (st) {
        s_abort(d);
        s_destroy(d);
        return eq_err_set(err, st, "nccl rank %d/%d: %s; communicator aborted", rank, world, e.msg);
    }
    void *c = eq_coll_new(&s_ops, d, rank, world, timeout_s, err); /* takes d */
    if (!c) return err && err->code ? err->code : EQ_ERR_INTERNAL;
    *iface = eq_coll_iface();
    *ctx = c;
    return EQ_OK;
}
