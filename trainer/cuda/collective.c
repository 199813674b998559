/*
 * trainer/cuda/collective.c -- eq_comm on a device collective driver:
 * buckets, staging, deadlines, the watchdog and abort (collective.h).
 * Plain C: no CUDA or NCCL here.
 */
#include "trainer/cuda/collective.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "core/log.h"

typedef struct s_seg {
    float *data;
    size_t n, off; /* floats; offset in the bucket */
    bool host;
} s_seg;

typedef struct s_bucket {
    s_seg *segs;
    size_t nsegs, n;
    eq_comm_op op;
    float *dev;     /* where the collective runs: staging or the segments themselves */
    bool own_dev;   /* dev is staging (ours to free) */
    float *pin;     /* pinned staging of the host segments (NULL: none) */
    bool inflight;  /* started, completion not yet seen */
    double t_start; /* when it was started (s, monotonic) */
} s_bucket;

typedef struct s_coll {
    const eq_coll_ops *ops;
    void *drv;
    int rank, world;
    double timeout_s;
    s_bucket bk[EQ_COMM_MAX_BUCKETS];
    int nbk;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t wd;
    bool wd_running, quit;
    bool aborted;
    eq_status why_code;
    char why[EQ_ERR_MSG_LEN - 96];
} s_coll;

static void s_nap(void)
{
    struct timespec ts = { 0, 200000 }; /* 0.2 ms */
    nanosleep(&ts, NULL);
}

static const char *s_opname(eq_comm_op op)
{
    return op == EQ_COMM_BCAST ? "broadcast" : "all-reduce";
}

/* Abort (once) with `code` and the cause `what`; fills err.  Lock held. */
static eq_status s_abort(s_coll *c, eq_status code, const char *what, eq_err *err)
{
    if (!c->aborted) {
        c->aborted = true;
        c->why_code = code;
        snprintf(c->why, sizeof c->why, "%s", what);
        c->ops->abort(c->drv);
        eq_error("nccl rank %d/%d: %s; communicator aborted", c->rank, c->world, c->why);
        return eq_err_set(err, code, "nccl rank %d/%d: %s; communicator aborted", c->rank, c->world, what);
    }
    return eq_err_set(err, c->why_code, "nccl rank %d/%d: communicator aborted: %s", c->rank, c->world, c->why);
}

/* The error of a call on an aborted communicator.  Lock held. */
static eq_status s_dead(s_coll *c, eq_err *err)
{
    return eq_err_set(err, c->why_code, "nccl rank %d/%d: communicator aborted: %s", c->rank, c->world, c->why);
}

/* A driver call of bucket b failed with `e`: abort naming the bucket. */
static eq_status s_fail(s_coll *c, int b, const char *step, const eq_err *e, eq_err *err)
{
    char what[2 * EQ_ERR_MSG_LEN];
    if (b >= 0)
        snprintf(what, sizeof what, "%s of bucket %d (%zu floats): %s: %s", s_opname(c->bk[b].op), b, c->bk[b].n,
                 step, e->msg[0] ? e->msg : eq_status_str(e->code));
    else
        snprintf(what, sizeof what, "%s: %s", step, e->msg[0] ? e->msg : eq_status_str(e->code));
    return s_abort(c, e->code != EQ_OK ? e->code : EQ_ERR_INTERNAL, what, err);
}

static eq_status s_timeout(s_coll *c, int b, eq_err *err)
{
    char what[2 * EQ_ERR_MSG_LEN];
    snprintf(what, sizeof what,
             "%s of bucket %d (%zu floats) did not finish within %g s (a peer is missing or stuck)",
             s_opname(c->bk[b].op), b, c->bk[b].n, c->timeout_s);
    return s_abort(c, EQ_ERR_TIMEOUT, what, err);
}

/* Look at bucket b once: EQ_OK with *done, or the abort's error.  Lock held. */
static eq_status s_poll(s_coll *c, int b, bool *done, eq_err *err)
{
    eq_err e = { 0 };
    *done = false;
    int q = c->ops->query(c->drv, b, &e);
    if (q < 0) return s_fail(c, b, "waiting for it", &e, err);
    if (q > 0) {
        c->bk[b].inflight = false;
        *done = true;
        return EQ_OK;
    }
    if (c->ops->health(c->drv, &e) != EQ_OK) return s_fail(c, b, "communicator error", &e, err);
    if (eq_clock_sec() - c->bk[b].t_start > c->timeout_s) return s_timeout(c, b, err);
    return EQ_OK;
}

static void *s_watchdog(void *arg)
{
    s_coll *c = arg;
    pthread_mutex_lock(&c->mu);
    while (!c->quit) {
        struct timespec ts;
        eq_clock_deadline(&ts, EQ_COLL_WATCH_MS);
        pthread_cond_timedwait(&c->cv, &c->mu, &ts);
        if (c->quit || c->aborted) continue;
        for (int b = 0; b < c->nbk && !c->aborted; b++) {
            if (!c->bk[b].inflight) continue;
            bool done;
            s_poll(c, b, &done, NULL);
        }
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static void s_free_bucket(s_coll *c, s_bucket *B)
{
    if (B->own_dev && B->dev) c->ops->dev_free(c->drv, B->dev);
    if (B->pin) c->ops->host_free(c->drv, B->pin);
    free(B->segs);
    memset(B, 0, sizeof *B);
}

static void s_destroy(void *ctx)
{
    s_coll *c = ctx;
    if (!c) return;
    if (c->wd_running) {
        pthread_mutex_lock(&c->mu);
        c->quit = true;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        pthread_join(c->wd, NULL);
    }
    /* Work still in flight reads and writes the staging buffers: let it
     * finish (bounded by the deadline), or abort it, before freeing them. */
    pthread_mutex_lock(&c->mu);
    for (int b = 0; b < c->nbk && !c->aborted; b++) {
        bool done = !c->bk[b].inflight;
        while (!done && !c->aborted) {
            if (s_poll(c, b, &done, NULL) != EQ_OK) break;
            if (!done) s_nap();
        }
    }
    for (int b = 0; b < c->nbk; b++) s_free_bucket(c, &c->bk[b]);
    pthread_mutex_unlock(&c->mu);
    c->ops->destroy(c->drv);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}

static int s_bucket_new(void *ctx, const eq_comm_seg *segs, size_t nsegs, eq_comm_op op, eq_err *err)
{
    s_coll *c = ctx;
    pthread_mutex_lock(&c->mu);
    int id = -1;
    if (c->aborted) {
        s_dead(c, err);
        goto out;
    }
    if (c->nbk >= EQ_COMM_MAX_BUCKETS) {
        eq_err_set(err, EQ_ERR_LIMIT, "nccl: more than %d buckets", EQ_COMM_MAX_BUCKETS);
        goto out;
    }
    s_bucket *B = &c->bk[c->nbk];
    memset(B, 0, sizeof *B);
    if (!(B->segs = eq_calloc_array(nsegs, sizeof *B->segs))) {
        eq_err_set(err, EQ_ERR_NOMEM, "nccl: out of memory for a bucket of %zu segments", nsegs);
        goto out;
    }
    bool any_host = false, contiguous = true;
    for (size_t i = 0; i < nsegs; i++) {
        if (segs[i].n && !segs[i].data) {
            eq_err_set(err, EQ_ERR_INVALID, "nccl: bucket %d: segment %zu has %zu floats at NULL", c->nbk, i,
                       segs[i].n);
            s_free_bucket(c, B);
            goto out;
        }
        s_seg *s = &B->segs[B->nsegs];
        if (!segs[i].n) continue;
        s->data = segs[i].data;
        s->n = segs[i].n;
        s->off = B->n;
        s->host = !c->ops->is_device(c->drv, s->data);
        any_host |= s->host;
        if (B->nsegs && (s->host || B->segs[B->nsegs - 1].data + B->segs[B->nsegs - 1].n != s->data))
            contiguous = false;
        B->n += s->n;
        B->nsegs++;
    }
    B->op = op;
    if (!B->nsegs) {
        eq_err_set(err, EQ_ERR_INVALID, "nccl: bucket %d has no floats", c->nbk);
        s_free_bucket(c, B);
        goto out;
    }
    eq_err e = { 0 };
    if (!any_host && contiguous) {
        B->dev = B->segs[0].data;
    } else if (!(B->dev = c->ops->dev_alloc(c->drv, B->n * sizeof(float), &e))) {
        eq_err_set(err, e.code ? e.code : EQ_ERR_NOMEM, "nccl: bucket %d: staging of %zu floats: %s", c->nbk, B->n,
                   e.msg);
        s_free_bucket(c, B);
        goto out;
    } else {
        B->own_dev = true;
    }
    if (any_host && !(B->pin = c->ops->host_alloc(c->drv, B->n * sizeof(float), &e))) {
        eq_err_set(err, e.code ? e.code : EQ_ERR_NOMEM, "nccl: bucket %d: pinned staging of %zu floats: %s", c->nbk,
                   B->n, e.msg);
        s_free_bucket(c, B);
        goto out;
    }
    id = c->nbk++;
out:
    pthread_mutex_unlock(&c->mu);
    return id;
}

static eq_status s_start(void *ctx, int b, eq_err *err)
{
    s_coll *c = ctx;
    pthread_mutex_lock(&c->mu);
    eq_status st = EQ_OK;
    eq_err e = { 0 };
    s_bucket *B = &c->bk[b];
    if (c->aborted) {
        st = s_dead(c, err);
        goto out;
    }
    if ((st = c->ops->after_compute(c->drv, b, &e))) {
        st = s_fail(c, b, "ordering after the compute stream", &e, err);
        goto out;
    }
    for (size_t i = 0; i < B->nsegs; i++) {
        const s_seg *s = &B->segs[i];
        if (s->host) memcpy(B->pin + s->off, s->data, s->n * sizeof(float));
        if (B->own_dev &&
            (st = c->ops->copy(c->drv, B->dev + s->off, s->host ? B->pin + s->off : s->data, s->n * sizeof(float), &e))) {
            st = s_fail(c, b, "copy to staging", &e, err);
            goto out;
        }
    }
    if ((st = c->ops->reduce(c->drv, B->dev, B->n, B->op, &e))) {
        st = s_fail(c, b, "the collective", &e, err);
        goto out;
    }
    for (size_t i = 0; i < B->nsegs && B->own_dev; i++) {
        const s_seg *s = &B->segs[i];
        if ((st = c->ops->copy(c->drv, s->host ? B->pin + s->off : s->data, B->dev + s->off, s->n * sizeof(float), &e))) {
            st = s_fail(c, b, "copy from staging", &e, err);
            goto out;
        }
    }
    if ((st = c->ops->record(c->drv, b, &e))) {
        st = s_fail(c, b, "recording its completion", &e, err);
        goto out;
    }
    B->inflight = true;
    B->t_start = eq_clock_sec();
out:
    pthread_mutex_unlock(&c->mu);
    return st;
}

static eq_status s_wait(void *ctx, int b, eq_err *err)
{
    s_coll *c = ctx;
    pthread_mutex_lock(&c->mu);
    eq_status st = EQ_OK;
    eq_err e = { 0 };
    s_bucket *B = &c->bk[b];
    if (c->aborted) {
        st = s_dead(c, err);
        goto out;
    }
    if (!B->pin) { /* device segments only: order the compute stream, do not block */
        if ((st = c->ops->compute_after(c->drv, b, &e))) st = s_fail(c, b, "ordering the compute stream", &e, err);
        goto out;
    }
    bool done = !B->inflight;
    while (!done) {
        if ((st = s_poll(c, b, &done, err))) goto out;
        if (done) break;
        pthread_mutex_unlock(&c->mu); /* let the watchdog look meanwhile */
        s_nap();
        pthread_mutex_lock(&c->mu);
        if (c->aborted) { /* the watchdog saw it first: this call reports it */
            st = eq_err_set(err, c->why_code, "nccl rank %d/%d: %s; communicator aborted", c->rank, c->world, c->why);
            goto out;
        }
    }
    for (size_t i = 0; i < B->nsegs; i++) {
        const s_seg *s = &B->segs[i];
        if (s->host) memcpy(s->data, B->pin + s->off, s->n * sizeof(float));
    }
out:
    pthread_mutex_unlock(&c->mu);
    return st;
}

static const eq_comm_i s_iface = {
    .name = "nccl",
    .bucket_new = s_bucket_new,
    .start = s_start,
    .wait = s_wait,
    .destroy = s_destroy,
};

const eq_comm_i *eq_coll_iface(void)
{
    return &s_iface;
}

void *eq_coll_new(const eq_coll_ops *ops, void *drv, int rank, int world, double timeout_s, eq_err *err)
{
    if (!ops) {
        eq_err_set(err, EQ_ERR_INVALID, "nccl: no driver");
        return NULL;
    }
    if (world < 1 || world > EQ_DIST_MAX_WORLD || rank < 0 || rank >= world || !(timeout_s > 0)) {
        eq_err_set(err, EQ_ERR_INVALID, "nccl: rank %d of world %d, timeout %g s: need 0 <= rank < world <= %d and a timeout > 0",
                   rank, world, timeout_s, EQ_DIST_MAX_WORLD);
        ops->destroy(drv);
        return NULL;
    }
    s_coll *c = calloc(1, sizeof *c);
    if (!c) {
        eq_err_set(err, EQ_ERR_NOMEM, "nccl: out of memory");
        ops->destroy(drv);
        return NULL;
    }
    c->ops = ops;
    c->drv = drv;
    c->rank = rank;
    c->world = world;
    c->timeout_s = timeout_s;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    if (pthread_create(&c->wd, NULL, s_watchdog, c)) {
        eq_err_set(err, EQ_ERR_INTERNAL, "nccl: cannot start the watchdog thread");
        s_destroy(c);
        return NULL;
    }
    c->wd_running = true;
    return c;
}

int eq_coll_aborted(void *ctx)
{
    s_coll *c = ctx;
    pthread_mutex_lock(&c->mu);
    int a = c->aborted;
    pthread_mutex_unlock(&c->mu);
    return a;
}

int eq_coll_in_place(void *ctx, int b)
{
    s_coll *c = ctx;
    pthread_mutex_lock(&c->mu);
    int r = b < 0 || b >= c->nbk ? -1 : !c->bk[b].own_dev;
    pthread_mutex_unlock(&c->mu);
    return r;
}

int eq_coll_pending(void *ctx)
{
    s_coll *c = ctx;
    pthread_mutex_lock(&c->mu);
    int n = 0;
    for (int b = 0; b < c->nbk; b++) n += c->bk[b].inflight;
    pthread_mutex_unlock(&c->mu);
    return n;
}
