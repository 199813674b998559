/*
 * tests/check_nccl_comm.c -- the NCCL communicator's logic without a GPU:
 *
 * - trainer/cuda/collective.h (buckets, staging, ordering, deadlines,
 *   watchdog, abort) driven by a fake driver: its "device" is host memory
 *   it hands out and recognises, its communication stream a queue that
 *   runs when the rank looks at it, its collective a rendezvous of the
 *   ranks (threads) in shared memory that completes when the last rank
 *   arrives, as NCCL's does.  Checked: results of SUM/AVG/BCAST over 3
 *   ranks equal on every rank and to the reference, in place vs staged vs
 *   host buckets, host segments read at start and written at wait,
 *   buckets of a trainer/cuda/bucket.h arena reduced in place as backward
 *   completes them, a device bucket's wait not blocking the host, a peer that never arrives
 *   (timeout naming the rank and the bucket, for host buckets in wait and
 *   for device buckets by the watchdog), an injected collective error and
 *   an asynchronous communicator error (abort once, later calls fail with
 *   "communicator aborted"), and argument errors.
 * - the rendezvous carrying a 128-byte NCCL unique id: every rank of 4
 *   gets the same bytes (ranks as threads, then the CPU ring over the
 *   world they got sums the bytes as a cross-check), a welcome that is
 *   malformed or has a short id fails with a clear error.
 *
 * What needs a GPU (NCCL itself, CUDA streams/events) is
 * tests/check_cuda_nccl.c, which skips without one.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "proto/proto_zmq.h"
#include "testutil.h"
#include "trainer/cuda/bucket.h"
#include "trainer/cuda/collective.h"
#include "trainer/dist.h"

/* ================================================================ the fake */

#define S_W_MAX 4
#define S_SLOTS 256 /* collectives in flight at once, all ranks together */
#define S_QCAP 4096

typedef struct s_world {
    pthread_mutex_t mu;
    int world;
    struct {
        uint64_t seq; /* which collective this slot holds */
        int arrived;
        float *buf[S_W_MAX];
        size_t n;
        eq_comm_op op;
        bool complete;
    } slot[S_SLOTS];
} s_world;

typedef enum { S_COPY, S_REDUCE, S_RECORD } s_kind;

typedef struct s_op {
    s_kind kind;
    void *dst;
    const void *src;
    size_t bytes; /* copy; floats for reduce */
    eq_comm_op op;
    uint64_t seq;
    bool submitted;
    int bucket;
} s_op;

typedef struct s_drv {
    s_world *w;
    int rank;
    /* device memory: the allocations made here, plus one arena */
    void *alloc[64];
    size_t alloc_bytes[64];
    int nalloc;
    float *arena;
    size_t arena_n;
    /* the comm stream */
    s_op q[S_QCAP];
    int qh, qn;
    uint64_t seq;
    bool done[EQ_COMM_MAX_BUCKETS];
    bool aborted;
    /* counters and faults */
    atomic_int n_abort, n_after, n_compute_after, n_destroy, n_reduce, n_alloc_total;
    int fail_reduce_at;   /* the n-th reduce (1-based) fails; 0: never */
    atomic_int bad_health; /* health() fails from now on */
    atomic_int *destroyed; /* set when destroyed */
} s_drv;

static bool s_in(const void *p, const void *base, size_t bytes)
{
    return base && (const char *)p >= (const char *)base && (const char *)p < (const char *)base + bytes;
}

static int f_is_device(void *drv, const void *p)
{
    s_drv *d = drv;
    if (s_in(p, d->arena, d->arena_n * sizeof(float))) return 1;
    for (int i = 0; i < d->nalloc; i++)
        if (s_in(p, d->alloc[i], d->alloc_bytes[i])) return 1;
    return 0;
}

static void *f_dev_alloc(void *drv, size_t bytes, eq_err *err)
{
    s_drv *d = drv;
    if (d->nalloc == 64) {
        eq_err_set(err, EQ_ERR_NOMEM, "fake: too many allocations");
        return NULL;
    }
    void *p = malloc(bytes);
    memset(p, 0xff, bytes); /* NaNs: stale staging would show */
    d->alloc[d->nalloc] = p;
    d->alloc_bytes[d->nalloc++] = bytes;
    d->n_alloc_total++;
    return p;
}

static void f_dev_free(void *drv, void *p)
{
    s_drv *d = drv;
    for (int i = 0; i < d->nalloc; i++)
        if (d->alloc[i] == p) {
            d->alloc[i] = NULL;
            d->alloc_bytes[i] = 0;
        }
    free(p);
}

static void *f_host_alloc(void *drv, size_t bytes, eq_err *err)
{
    (void)drv, (void)err;
    return malloc(bytes);
}

static void f_host_free(void *drv, void *p)
{
    (void)drv;
    free(p);
}

static void s_push(s_drv *d, s_op op)
{
    ck_assert_int_lt(d->qn, S_QCAP);
    d->q[(d->qh + d->qn++) % S_QCAP] = op;
}

/* Run the stream as far as it goes. */
static void s_progress(s_drv *d)
{
    while (d->qn) {
        s_op *o = &d->q[d->qh];
        if (o->kind == S_COPY) {
            memcpy(o->dst, o->src, o->bytes);
        } else if (o->kind == S_RECORD) {
            d->done[o->bucket] = true;
        } else if (!d->aborted) { /* aborted: the collective "kernel" exits */
            s_world *w = d->w;
            pthread_mutex_lock(&w->mu);
            __typeof__(w->slot[0]) *s = &w->slot[o->seq % S_SLOTS];
            if (!o->submitted) {
                if (s->arrived == 0) {
                    s->seq = o->seq;
                    s->complete = false;
                    s->n = o->bytes;
                    s->op = o->op;
                }
                ck_assert_msg(s->seq == o->seq && s->n == o->bytes && s->op == o->op,
                              "fake: ranks issued different collectives");
                s->buf[d->rank] = o->dst;
                o->submitted = true;
                if (++s->arrived == w->world) {
                    for (size_t i = 0; i < s->n; i++) {
                        float v = s->buf[0][i];
                        if (s->op != EQ_COMM_BCAST)
                            for (int r = 1; r < w->world; r++) v += s->buf[r][i];
                        if (s->op == EQ_COMM_AVG) v /= (float)w->world;
                        for (int r = 0; r < w->world; r++) s->buf[r][i] = v;
                    }
                    s->complete = true;
                }
            }
            bool complete = s->complete;
            if (complete && --s->arrived == 0) memset(s->buf, 0, sizeof s->buf);
            pthread_mutex_unlock(&w->mu);
            if (!complete) return;
        }
        d->qh = (d->qh + 1) % S_QCAP;
        d->qn--;
    }
}

static eq_status f_after_compute(void *drv, int b, eq_err *err)
{
    (void)b, (void)err;
    s_drv *d = drv;
    d->n_after++;
    return EQ_OK;
}

static eq_status f_copy(void *drv, void *dst, const void *src, size_t bytes, eq_err *err)
{
    (void)err;
    s_push(drv, (s_op){ .kind = S_COPY, .dst = dst, .src = src, .bytes = bytes });
    return EQ_OK;
}

static eq_status f_reduce(void *drv, float *buf, size_t n, eq_comm_op op, eq_err *err)
{
    s_drv *d = drv;
    if (d->aborted) return eq_err_set(err, EQ_ERR_NET, "fake: reduce after abort");
    if (++d->n_reduce == d->fail_reduce_at)
        return eq_err_set(err, EQ_ERR_NET, "ncclAllReduce failed: unhandled system error (injected)");
    s_push(d, (s_op){ .kind = S_REDUCE, .dst = buf, .bytes = n, .op = op, .seq = d->seq++ });
    return EQ_OK;
}

static eq_status f_record(void *drv, int b, eq_err *err)
{
    (void)err;
    s_drv *d = drv;
    d->done[b] = false;
    s_push(d, (s_op){ .kind = S_RECORD, .bucket = b });
    return EQ_OK;
}

static int f_query(void *drv, int b, eq_err *err)
{
    (void)err;
    s_drv *d = drv;
    s_progress(d);
    return d->done[b];
}

static eq_status f_compute_after(void *drv, int b, eq_err *err)
{
    (void)b, (void)err;
    s_drv *d = drv;
    d->n_compute_after++;
    return EQ_OK;
}

static eq_status f_health(void *drv, eq_err *err)
{
    s_drv *d = drv;
    if (d->bad_health) return eq_err_set(err, EQ_ERR_NET, "ncclCommGetAsyncError: remote process exited (injected)");
    return EQ_OK;
}

static void f_abort(void *drv)
{
    s_drv *d = drv;
    d->aborted = true;
    d->n_abort++;
}

static void f_destroy(void *drv)
{
    s_drv *d = drv;
    d->n_destroy++;
    for (int i = 0; i < d->nalloc; i++) ck_assert_msg(d->alloc[i] == NULL, "fake: staging %d not freed", i);
}

static const eq_coll_ops s_fake = {
    .is_device = f_is_device,
    .dev_alloc = f_dev_alloc,
    .dev_free = f_dev_free,
    .host_alloc = f_host_alloc,
    .host_free = f_host_free,
    .after_compute = f_after_compute,
    .copy = f_copy,
    .reduce = f_reduce,
    .record = f_record,
    .query = f_query,
    .compute_after = f_compute_after,
    .health = f_health,
    .abort = f_abort,
    .destroy = f_destroy,
};

/* ---- ranks as threads ---------------------------------------------------------- */

typedef struct s_job s_job;
typedef void s_body(s_job *j, int rank, eq_comm *c, void *ctx, s_drv *d);

struct s_job {
    s_world w;
    s_drv d[S_W_MAX];
    int world;
    double timeout_s;
    s_body *body;
    void *arg;
    pthread_barrier_t bar;
};

typedef struct s_targ {
    s_job *j;
    int rank;
} s_targ;

static void *s_rank_main(void *p)
{
    s_targ *a = p;
    s_job *j = a->j;
    s_drv *d = &j->d[a->rank];
    eq_err e = { 0 };
    void *ctx = eq_coll_new(&s_fake, d, a->rank, j->world, j->timeout_s, &e);
    ck_assert_msg(ctx != NULL, "%s", e.msg);
    eq_comm *c = eq_comm_new(eq_coll_iface(), ctx, a->rank, j->world, &e);
    ck_assert_ptr_nonnull(c);
    ck_assert_str_eq(eq_comm_name(c), "nccl");
    j->body(j, a->rank, c, ctx, d);
    eq_comm_destroy(&c);
    ck_assert_int_eq(d->n_destroy, 1);
    return NULL;
}

static void s_run(s_job *j)
{
    pthread_mutex_init(&j->w.mu, NULL);
    j->w.world = j->world;
    pthread_barrier_init(&j->bar, NULL, (unsigned)j->world);
    pthread_t th[S_W_MAX];
    s_targ a[S_W_MAX];
    for (int r = 0; r < j->world; r++) {
        j->d[r].w = &j->w;
        j->d[r].rank = r;
        a[r] = (s_targ){ j, r };
        ck_assert_int_eq(pthread_create(&th[r], NULL, s_rank_main, &a[r]), 0);
    }
    for (int r = 0; r < j->world; r++) pthread_join(th[r], NULL);
    pthread_barrier_destroy(&j->bar);
    pthread_mutex_destroy(&j->w.mu);
}

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Rank r's value of element i of buffer k (never 0, distinct per rank). */
static float s_val(int r, int k, size_t i)
{
    return (float)((r + 1) * 1000 + k * 100) + (float)(i % 97) * 0.125f - 3.0f;
}

/* ================================================================ results */

#define S_AN 1000 /* arena floats per rank */
#define S_HN 40   /* host floats per rank */

typedef struct s_out {
    float arena[S_W_MAX][S_AN];
    float host[S_W_MAX][S_HN];
    int in_place[S_W_MAX][5];
} s_out;

/* Five buckets over this rank's arena ("device") and a host array:
 *   0 SUM   arena[0..100) + [100..300): contiguous device -> in place
 *   1 AVG   arena[400..450), arena[300..400): device, not in order -> staged
 *   2 BCAST arena[500..520), [600..700): device with a hole -> staged
 *   3 SUM   host[0..10), host[20..30): host -> pinned + staging
 *   4 AVG   arena[800..1000), host[30..40): mixed
 * Two steps; between start and wait of step 0 the host values change (the
 * collective must have read them at start). */
static void s_body_results(s_job *j, int rank, eq_comm *c, void *ctx, s_drv *d)
{
    s_out *o = j->arg;
    float *a = o->arena[rank], *h = o->host[rank];
    d->arena = a;
    d->arena_n = S_AN;
    for (size_t i = 0; i < S_AN; i++) a[i] = s_val(rank, 0, i);
    for (size_t i = 0; i < S_HN; i++) h[i] = s_val(rank, 1, i);
    eq_err e = { 0 };
    eq_comm_seg s0[2] = { { a, 100 }, { a + 100, 200 } };
    eq_comm_seg s1[2] = { { a + 400, 50 }, { a + 300, 100 } };
    eq_comm_seg s2[3] = { { a + 500, 20 }, { a + 520, 0 }, { a + 600, 100 } };
    eq_comm_seg s3[2] = { { h, 10 }, { h + 20, 10 } };
    eq_comm_seg s4[2] = { { a + 800, 200 }, { h + 30, 10 } };
    int b[5] = { eq_comm_bucket_new(c, s0, 2, EQ_COMM_SUM, &e), eq_comm_bucket_new(c, s1, 2, EQ_COMM_AVG, &e),
                 eq_comm_bucket_new(c, s2, 3, EQ_COMM_BCAST, &e), eq_comm_bucket_new(c, s3, 2, EQ_COMM_SUM, &e),
                 eq_comm_bucket_new(c, s4, 2, EQ_COMM_AVG, &e) };
    for (int k = 0; k < 5; k++) {
        ck_assert_msg(b[k] == k, "bucket %d: %s", k, e.msg);
        o->in_place[rank][k] = eq_coll_in_place(ctx, k);
    }
    for (int step = 0; step < 2; step++) {
        for (int k = 0; k < 5; k++) ck_assert_msg(eq_comm_start(c, b[k], &e) == EQ_OK, "%s", e.msg);
        if (step == 0) { /* read at start: these changes must not count */
            h[0] += 1e6f;
            h[35] += 1e6f;
        }
        /* (the waits write the results over h[0] and h[35]) */
        for (int k = 4; k >= 0; k--) ck_assert_msg(eq_comm_wait(c, b[k], &e) == EQ_OK, "%s", e.msg);
        pthread_barrier_wait(&j->bar);
    }
    /* device buckets' results land when the stream gets there */
    double t0 = s_now();
    while (eq_coll_pending(ctx) && s_now() - t0 < 5) usleep(1000);
    ck_assert_int_eq(eq_coll_pending(ctx), 0);
    ck_assert_int_eq(d->n_after, 10);
    ck_assert_int_eq(d->n_compute_after, 6); /* buckets 0-2, twice */
    ck_assert_int_eq(d->n_abort, 0);
    ck_assert_int_eq(eq_coll_aborted(ctx), 0);
    pthread_barrier_wait(&j->bar);
}

/* The reference: step twice over every rank's initial values. */
static void s_reference(int W, float ref_a[S_AN], float ref_h[S_HN])
{
    float a[S_W_MAX][S_AN], h[S_W_MAX][S_HN];
    for (int r = 0; r < W; r++) {
        for (size_t i = 0; i < S_AN; i++) a[r][i] = s_val(r, 0, i);
        for (size_t i = 0; i < S_HN; i++) h[r][i] = s_val(r, 1, i);
    }
    for (int step = 0; step < 2; step++) {
        float na[S_AN], nh[S_HN];
        memcpy(na, a[0], sizeof na);
        memcpy(nh, h[0], sizeof nh);
        for (size_t i = 0; i < S_AN; i++) {
            float s = a[0][i];
            for (int r = 1; r < W; r++) s += a[r][i];
            if (i < 300) na[i] = s;
            else if (i < 450) na[i] = s / (float)W;
            else if ((i >= 500 && i < 520) || (i >= 600 && i < 700)) na[i] = a[0][i];
            else if (i >= 800) na[i] = s / (float)W;
        }
        for (size_t i = 0; i < S_HN; i++) {
            float s = h[0][i];
            for (int r = 1; r < W; r++) s += h[r][i];
            if (i < 10 || (i >= 20 && i < 30)) nh[i] = s;
            else if (i >= 30) nh[i] = s / (float)W;
        }
        /* untouched elements keep each rank's own value */
        for (int r = 0; r < W; r++) {
            float ka[S_AN], kh[S_HN];
            memcpy(ka, na, sizeof ka);
            memcpy(kh, nh, sizeof kh);
            for (size_t i = 0; i < S_AN; i++)
                if ((i >= 450 && i < 500) || (i >= 520 && i < 600) || (i >= 700 && i < 800)) ka[i] = a[r][i];
            for (size_t i = 0; i < S_HN; i++)
                if (i >= 10 && i < 20) kh[i] = h[r][i];
            memcpy(a[r], ka, sizeof ka);
            memcpy(h[r], kh, sizeof kh);
        }
    }
    memcpy(ref_a, a[0], sizeof a[0]);
    memcpy(ref_h, h[0], sizeof h[0]);
}

START_TEST(test_results)
{
    const int W = 3;
    s_job *j = calloc(1, sizeof *j);
    s_out *o = calloc(1, sizeof *o);
    j->world = W;
    j->timeout_s = 10;
    j->body = s_body_results;
    j->arg = o;
    s_run(j);
    float ra[S_AN], rh[S_HN];
    s_reference(W, ra, rh);
    for (int r = 0; r < W; r++) {
        int want[5] = { 1, 0, 0, 0, 0 };
        for (int k = 0; k < 5; k++) ck_assert_int_eq(o->in_place[r][k], want[k]);
        for (size_t i = 0; i < S_AN; i++) {
            bool own = (i >= 450 && i < 500) || (i >= 520 && i < 600) || (i >= 700 && i < 800);
            float want_v = own ? s_val(r, 0, i) : ra[i];
            ck_assert_msg(!memcmp(&o->arena[r][i], &want_v, sizeof want_v), "rank %d arena[%zu] = %.9g, want %.9g", r,
                          i, (double)o->arena[r][i], (double)want_v);
        }
        for (size_t i = 0; i < S_HN; i++) {
            float want_v = i >= 10 && i < 20 ? s_val(r, 1, i) : rh[i];
            ck_assert_msg(!memcmp(&o->host[r][i], &want_v, sizeof want_v), "rank %d host[%zu] = %.9g, want %.9g", r, i,
                          (double)o->host[r][i], (double)want_v);
        }
    }
    free(o);
    free(j);
}
END_TEST

/* ================================================================ bucket.h arena */

/* Gradients laid out by a bucket.h plan (reverse layer order, 64-byte
 * aligned, each bucket one range of the arena): registered one segment per
 * bucket, padding included, every bucket reduces in place, started as
 * backward completes them. */
static const size_t s_pbytes[7] = { 100, 4000, 36, 1u << 12, 8, 8, 260 };

static float s_pval(int r, size_t i, size_t k)
{
    return (float)(r * 7 + 1) * 0.5f + (float)i + (float)(k % 13) * 0.25f;
}

static void s_body_plan(s_job *j, int rank, eq_comm *c, void *ctx, s_drv *d)
{
    eq_bucket_plan *p = NULL;
    eq_err e = { 0 };
    ck_assert_int_eq(eq_bucket_plan_new(7, s_pbytes, 8192, 1024, &p, &e), EQ_OK);
    ck_assert_uint_ge(p->nbuckets, 3);
    float *arena = calloc(p->arena_bytes / sizeof(float), sizeof(float));
    d->arena = arena;
    d->arena_n = p->arena_bytes / sizeof(float);
    for (size_t i = 0; i < 7; i++)
        for (size_t k = 0; k < s_pbytes[i] / sizeof(float); k++)
            arena[p->offset[i] / sizeof(float) + k] = s_pval(rank, i, k);
    int ids[8];
    for (size_t b = 0; b < p->nbuckets; b++) {
        eq_comm_seg seg = { arena + p->buckets[b].offset / sizeof(float), p->buckets[b].bytes / sizeof(float) };
        ids[b] = eq_comm_bucket_new(c, &seg, 1, EQ_COMM_AVG, &e);
        ck_assert_msg(ids[b] == (int)b, "%s", e.msg);
        ck_assert_int_eq(eq_coll_in_place(ctx, ids[b]), 1);
    }
    /* backward: gradients become ready last layer first; a bucket starts
     * when its last gradient is there */
    eq_bucket_reset(p);
    for (size_t i = 7; i-- > 0;) {
        long b = eq_bucket_mark_ready(p, i, &e);
        ck_assert(b >= -1);
        if (b >= 0) ck_assert_msg(eq_comm_start(c, ids[b], &e) == EQ_OK, "%s", e.msg);
    }
    for (size_t b = 0; b < p->nbuckets; b++) ck_assert_msg(eq_comm_wait(c, ids[b], &e) == EQ_OK, "%s", e.msg);
    double t0 = s_now();
    while (eq_coll_pending(ctx) && s_now() - t0 < 5) usleep(1000);
    ck_assert_int_eq(eq_coll_pending(ctx), 0);
    for (size_t i = 0; i < 7; i++)
        for (size_t k = 0; k < s_pbytes[i] / sizeof(float); k++) {
            float want = s_pval(0, i, k);
            for (int r = 1; r < j->world; r++) want += s_pval(r, i, k);
            want /= (float)j->world;
            float got = arena[p->offset[i] / sizeof(float) + k];
            ck_assert_msg(!memcmp(&got, &want, sizeof got), "rank %d param %zu [%zu] = %g, want %g", rank, i, k,
                          (double)got, (double)want);
        }
    ck_assert_int_eq(d->n_alloc_total, 0); /* no staging */
    pthread_barrier_wait(&j->bar);
    free(arena);
    d->arena = NULL;
    eq_bucket_plan_destroy(&p);
}

START_TEST(test_bucket_plan)
{
    s_job *j = calloc(1, sizeof *j);
    j->world = 2;
    j->timeout_s = 10;
    j->body = s_body_plan;
    s_run(j);
    free(j);
}
END_TEST

/* ================================================================ failures */

typedef struct s_fail {
    eq_status st[S_W_MAX], st2[S_W_MAX];
    char msg[S_W_MAX][EQ_ERR_MSG_LEN], msg2[S_W_MAX][EQ_ERR_MSG_LEN];
    double secs[S_W_MAX];
    int aborts[S_W_MAX];
    int mode;
} s_fail;

/* Later calls of an aborted comm: every one fails at once with the cause. */
static void s_after_abort(eq_comm *c, int b, eq_status code, const char *cause)
{
    eq_err e = { 0 };
    float x[4] = { 0 };
    eq_comm_seg s = { x, 4 };
    ck_assert_int_eq(eq_comm_bucket_new(c, &s, 1, EQ_COMM_SUM, &e), -1);
    ck_assert_msg(e.code == code && strstr(e.msg, "communicator aborted") && strstr(e.msg, cause), "%s", e.msg);
    memset(&e, 0, sizeof e);
    ck_assert_int_eq(eq_comm_start(c, b, &e), code);
    ck_assert_msg(strstr(e.msg, "communicator aborted") && strstr(e.msg, cause), "%s", e.msg);
}

/* mode 0: host bucket, rank 1 never starts it: rank 0's wait times out.
 * mode 1: device bucket, rank 1 never starts it: rank 0's wait returns at
 *         once, the watchdog aborts.
 * mode 2: rank 1's collective call fails (injected): it aborts at once;
 *         rank 0 (host bucket) times out.
 * mode 3: rank 0's communicator reports an asynchronous error while
 *         waiting for a host bucket (rank 1 never starts it, so it cannot
 *         finish first). */
static void s_body_fail(s_job *j, int rank, eq_comm *c, void *ctx, s_drv *d)
{
    s_fail *f = j->arg;
    static float dev[S_W_MAX][64];
    float host[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
    d->arena = dev[rank];
    d->arena_n = 64;
    eq_comm_seg s = { f->mode == 1 ? dev[rank] : host, 8 };
    eq_err e = { 0 };
    int b = eq_comm_bucket_new(c, &s, 1, EQ_COMM_AVG, &e);
    ck_assert_int_eq(b, 0);
    if (f->mode == 2 && rank == 1) d->fail_reduce_at = 1;
    if (f->mode == 3 && rank == 0) d->bad_health = 1;
    double t0 = s_now();
    if (rank == 0 || f->mode == 2) {
        f->st[rank] = eq_comm_start(c, b, &e);
        if (f->st[rank] == EQ_OK) f->st[rank] = eq_comm_wait(c, b, &e);
        snprintf(f->msg[rank], sizeof f->msg[rank], "%s", e.msg);
    }
    f->secs[rank] = s_now() - t0;
    if (f->mode == 1 && rank == 0) {
        ck_assert_int_eq(eq_coll_aborted(ctx), 0); /* the wait did not block */
        while (!eq_coll_aborted(ctx) && s_now() - t0 < 5) usleep(1000);
        f->secs[rank] = s_now() - t0;
        memset(&e, 0, sizeof e);
        f->st2[rank] = eq_comm_start(c, b, &e);
        snprintf(f->msg2[rank], sizeof f->msg2[rank], "%s", e.msg);
    }
    if (f->st[rank] != EQ_OK || f->st2[rank] != EQ_OK)
        s_after_abort(c, b, f->st2[rank] ? f->st2[rank] : f->st[rank], "bucket 0");
    /* rank 1 stays alive (silent) until rank 0 has given up */
    pthread_barrier_wait(&j->bar);
    f->aborts[rank] = d->n_abort;
}

static s_fail *s_run_fail(int mode, double timeout_s)
{
    s_job *j = calloc(1, sizeof *j);
    s_fail *f = calloc(1, sizeof *f);
    f->mode = mode;
    j->world = 2;
    j->timeout_s = timeout_s;
    j->body = s_body_fail;
    j->arg = f;
    s_run(j);
    free(j);
    return f;
}

START_TEST(test_missing_peer_host)
{
    s_fail *f = s_run_fail(0, 0.3);
    ck_assert_msg(f->st[0] == EQ_ERR_TIMEOUT, "%s", f->msg[0]);
    ck_assert_msg(strstr(f->msg[0], "nccl rank 0/2: all-reduce of bucket 0 (8 floats) did not finish within 0.3 s "
                                    "(a peer is missing or stuck); communicator aborted"),
                  "%s", f->msg[0]);
    ck_assert_msg(f->secs[0] >= 0.29 && f->secs[0] < 5, "gave up after %.2f s", f->secs[0]);
    ck_assert_int_eq(f->aborts[0], 1);
    ck_assert_int_eq(f->aborts[1], 0);
    free(f);
}
END_TEST

START_TEST(test_missing_peer_watchdog)
{
    s_fail *f = s_run_fail(1, 0.3);
    ck_assert_msg(f->st[0] == EQ_OK, "the device bucket's wait blocked or failed: %s", f->msg[0]);
    ck_assert_msg(f->st2[0] == EQ_ERR_TIMEOUT, "%s", f->msg2[0]);
    ck_assert_msg(strstr(f->msg2[0], "nccl rank 0/2: communicator aborted: all-reduce of bucket 0 (8 floats) did "
                                     "not finish within 0.3 s"),
                  "%s", f->msg2[0]);
    ck_assert_msg(f->secs[0] >= 0.29 && f->secs[0] < 5, "watchdog after %.2f s", f->secs[0]);
    ck_assert_int_eq(f->aborts[0], 1);
    free(f);
}
END_TEST

START_TEST(test_collective_error)
{
    s_fail *f = s_run_fail(2, 0.3);
    ck_assert_msg(f->st[1] == EQ_ERR_NET, "%s", f->msg[1]);
    ck_assert_msg(strstr(f->msg[1], "nccl rank 1/2: all-reduce of bucket 0 (8 floats): the collective: "
                                    "ncclAllReduce failed: unhandled system error (injected); communicator aborted"),
                  "%s", f->msg[1]);
    ck_assert_msg(f->secs[1] < 0.2, "the failing rank took %.2f s", f->secs[1]);
    ck_assert_msg(f->st[0] == EQ_ERR_TIMEOUT && strstr(f->msg[0], "nccl rank 0/2"), "%s", f->msg[0]);
    ck_assert_int_eq(f->aborts[0], 1);
    ck_assert_int_eq(f->aborts[1], 1);
    free(f);
}
END_TEST

START_TEST(test_async_error)
{
    s_fail *f = s_run_fail(3, 5.0);
    ck_assert_msg(f->st[0] == EQ_ERR_NET, "%s", f->msg[0]);
    ck_assert_msg(strstr(f->msg[0], "nccl rank 0/2: all-reduce of bucket 0 (8 floats): communicator error: "
                                    "ncclCommGetAsyncError: remote process exited (injected); communicator aborted"),
                  "%s", f->msg[0]);
    ck_assert_msg(f->secs[0] < 2.5, "noticed after %.2f s", f->secs[0]);
    ck_assert_int_eq(f->aborts[0], 1);
    free(f);
}
END_TEST

START_TEST(test_args)
{
    eq_err e = { 0 };
    s_world w = { .world = 1 };
    pthread_mutex_init(&w.mu, NULL);
    s_drv *d = calloc(1, sizeof *d);
    d->w = &w;
    ck_assert_ptr_null(eq_coll_new(&s_fake, d, 1, 1, 1.0, &e)); /* rank out of range: takes d */
    ck_assert_msg(e.code == EQ_ERR_INVALID && strstr(e.msg, "rank 1 of world 1"), "%s", e.msg);
    ck_assert_int_eq(d->n_destroy, 1);
    d->n_destroy = 0;
    ck_assert_ptr_null(eq_coll_new(&s_fake, d, 0, 1, 0.0, &e));
    ck_assert_int_eq(d->n_destroy, 1);
    d->n_destroy = 0;
    void *ctx = eq_coll_new(&s_fake, d, 0, 1, 1.0, &e);
    ck_assert_ptr_nonnull(ctx);
    eq_comm *c = eq_comm_new(eq_coll_iface(), ctx, 0, 1, &e);
    float x[3] = { 1, 2, 3 };
    eq_comm_seg bad = { NULL, 3 }, empty = { x, 0 }, ok = { x, 3 };
    ck_assert_int_eq(eq_comm_bucket_new(c, &bad, 1, EQ_COMM_SUM, &e), -1);
    ck_assert_msg(strstr(e.msg, "segment 0 of a bucket has no data"), "%s", e.msg);
    ck_assert_int_eq(eq_comm_bucket_new(c, &empty, 1, EQ_COMM_SUM, &e), -1);
    int b = eq_comm_bucket_new(c, &ok, 1, EQ_COMM_SUM, &e);
    ck_assert_int_eq(b, 0);
    ck_assert_int_eq(eq_coll_in_place(ctx, 0), 0); /* host memory: staged */
    ck_assert_int_eq(eq_coll_in_place(ctx, 7), -1);
    /* world 1: the sum is the value itself */
    ck_assert_int_eq(eq_comm_run(c, b, &e), EQ_OK);
    ck_assert(x[0] == 1 && x[1] == 2 && x[2] == 3);
    ck_assert_int_eq(eq_comm_wait(c, b, &e), EQ_ERR_INVALID); /* not started */
    /* destroy with a bucket in flight: it finishes first */
    ck_assert_int_eq(eq_comm_start(c, b, &e), EQ_OK);
    eq_comm_destroy(&c);
    ck_assert_int_eq(d->n_destroy, 1);
    ck_assert_int_eq(d->n_abort, 0);
    free(d);
    pthread_mutex_destroy(&w.mu);
}
END_TEST

/* ================================================================ rendezvous */

#define S_RW 4

typedef struct s_rdv {
    void *zctx;
    void *router;
    char root_ep[128];
    uint8_t id[EQ_COMM_NCCL_ID_BYTES];
    eq_dist_world w[S_RW];
    eq_status st[S_RW];
    char msg[S_RW][EQ_ERR_MSG_LEN];
    float sum[S_RW][EQ_COMM_NCCL_ID_BYTES];
    pthread_barrier_t bar;
} s_rdv;

typedef struct s_rarg {
    s_rdv *d;
    int rank;
} s_rarg;

/* One rank as in eq-trainer: listen for the ring, rendezvous (rank 0 with
 * the id as the blob), connect the ring over the world received, and sum
 * the id's bytes across ranks. */
static void *s_rank(void *p)
{
    s_rarg *a = p;
    s_rdv *d = a->d;
    eq_err e = { 0 };
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://nccl-ring-%d", a->rank);
    eq_comm_ring *ring = eq_comm_ring_listen(d->zctx, ep, 5000, &e);
    ck_assert_msg(ring != NULL, "%s", e.msg);
    eq_dist_me me = { .rank = a->rank, .world = S_RW, .ep = eq_comm_ring_endpoint(ring), .digest = "cafe" };
    if (a->rank == 0) {
        me.blob = d->id;
        me.blob_len = sizeof d->id;
        d->st[0] = eq_dist_rendezvous_root(d->router, &me, 5000, NULL, NULL, NULL, &d->w[0], &e);
    } else {
        d->st[a->rank] = eq_dist_rendezvous_join(d->zctx, d->root_ep, &me, 5000, NULL, &d->w[a->rank], &e);
    }
    snprintf(d->msg[a->rank], sizeof d->msg[a->rank], "%s", e.msg);
    if (d->st[a->rank] == EQ_OK) {
        eq_comm *c = eq_comm_ring_connect(&ring, &d->w[a->rank], &e);
        ck_assert_msg(c != NULL, "rank %d: %s", a->rank, e.msg);
        for (size_t i = 0; i < d->w[a->rank].blob_len && i < EQ_COMM_NCCL_ID_BYTES; i++)
            d->sum[a->rank][i] = d->w[a->rank].blob[i];
        eq_comm_seg s = { d->sum[a->rank], EQ_COMM_NCCL_ID_BYTES };
        int b = eq_comm_bucket_new(c, &s, 1, EQ_COMM_SUM, &e);
        ck_assert_int_ge(b, 0);
        ck_assert_msg(eq_comm_run(c, b, &e) == EQ_OK, "%s", e.msg);
        eq_comm_destroy(&c);
    }
    eq_comm_ring_destroy(&ring);
    return NULL;
}

START_TEST(test_rendezvous_id)
{
    s_rdv *d = calloc(1, sizeof *d);
    d->zctx = zmq_ctx_new();
    eq_err e = { 0 };
    eq_proto_sockopts so;
    eq_proto_sockopts_default(&so, NULL);
    d->router = eq_proto_socket(d->zctx, ZMQ_ROUTER, &so, &e);
    ck_assert_ptr_nonnull(d->router);
    ck_assert_int_eq(eq_proto_bind(d->router, "inproc://nccl-root", d->root_ep, sizeof d->root_ep, &e), EQ_OK);
    /* an arbitrary id: every byte value somewhere, zeros included */
    for (size_t i = 0; i < sizeof d->id; i++) d->id[i] = (uint8_t)(i * 37 + 11);
    d->id[5] = 0;
    d->id[127] = 255;
    pthread_t th[S_RW];
    s_rarg a[S_RW];
    for (int r = 0; r < S_RW; r++) {
        a[r] = (s_rarg){ d, r };
        ck_assert_int_eq(pthread_create(&th[r], NULL, s_rank, &a[r]), 0);
    }
    for (int r = 0; r < S_RW; r++) pthread_join(th[r], NULL);
    for (int r = 0; r < S_RW; r++) {
        ck_assert_msg(d->st[r] == EQ_OK, "rank %d: %s", r, d->msg[r]);
        ck_assert_int_eq(d->w[r].rank, r);
        ck_assert_int_eq(d->w[r].world, S_RW);
        ck_assert_uint_eq(d->w[r].blob_len, EQ_COMM_NCCL_ID_BYTES);
        ck_assert_msg(!memcmp(d->w[r].blob, d->id, EQ_COMM_NCCL_ID_BYTES), "rank %d got other bytes", r);
        for (size_t i = 0; i < EQ_COMM_NCCL_ID_BYTES; i++)
            ck_assert_msg(d->sum[r][i] == (float)(S_RW * d->id[i]), "rank %d: byte %zu sums to %g", r, i,
                          (double)d->sum[r][i]);
    }
    /* The world each rank got is what eq_comm_nccl_new takes; without a
     * CUDA backend it stops before NCCL, after checking the id. */
    ck_assert_ptr_null(eq_comm_nccl_new(NULL, &d->w[1], 1000, &e));
    ck_assert_msg(e.code == EQ_ERR_INVALID && strstr(e.msg, "nccl rank 1/4: no CUDA backend"), "%s", e.msg);
    eq_proto_socket_close(&d->router);
    zmq_ctx_term(d->zctx);
    free(d);
}
END_TEST

/* A rank joins a fake rank 0 that answers with `frames` (n of them). */
typedef struct s_fake_root {
    void *zctx;
    char ep[128];
    eq_dist_world w;
    eq_status st;
    char msg[EQ_ERR_MSG_LEN];
} s_fake_root;

static void *s_join1(void *p)
{
    s_fake_root *f = p;
    eq_dist_me me = { .rank = 1, .world = 2, .ep = "inproc://me", .digest = "d" };
    eq_err e = { 0 };
    f->st = eq_dist_rendezvous_join(f->zctx, f->ep, &me, 3000, NULL, &f->w, &e);
    snprintf(f->msg, sizeof f->msg, "%s", e.msg);
    return NULL;
}

static void s_answer(const void *const *frames, const size_t *len, int n, s_fake_root *f)
{
    eq_err e = { 0 };
    eq_proto_sockopts so;
    eq_proto_sockopts_default(&so, NULL);
    void *router = eq_proto_socket(f->zctx, ZMQ_ROUTER, &so, &e);
    static atomic_int k;
    char want[64];
    snprintf(want, sizeof want, "inproc://fake-root-%d", atomic_fetch_add(&k, 1));
    ck_assert_int_eq(eq_proto_bind(router, want, f->ep, sizeof f->ep, &e), EQ_OK);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, s_join1, f), 0);
    zmq_pollitem_t it = { router, 0, ZMQ_POLLIN, 0 };
    ck_assert_int_eq(zmq_poll(&it, 1, 3000), 1);
    zmq_msg_t id;
    zmq_msg_init(&id);
    ck_assert_int_ge(zmq_msg_recv(&id, router, 0), 0);
    for (int more = 1; more;) {
        zmq_msg_t x;
        zmq_msg_init(&x);
        zmq_msg_recv(&x, router, 0);
        more = zmq_msg_more(&x);
        zmq_msg_close(&x);
    }
    zmq_send(router, zmq_msg_data(&id), zmq_msg_size(&id), ZMQ_SNDMORE);
    for (int i = 0; i < n; i++) zmq_send(router, frames[i], len[i], i + 1 < n ? ZMQ_SNDMORE : 0);
    zmq_msg_close(&id);
    pthread_join(th, NULL);
    eq_proto_socket_close(&router);
}

START_TEST(test_rendezvous_bad_id)
{
    s_fake_root f = { .zctx = zmq_ctx_new() };
    static uint8_t big[EQ_DIST_BLOB_CAP + 1], id100[100];
    /* the id frame missing */
    const void *d1[4] = { "welcome", "2", "inproc://a", "inproc://me" };
    size_t l1[4] = { 7, 1, 10, 11 };
    s_answer(d1, l1, 4, &f);
    ck_assert_msg(f.st == EQ_ERR_PROTO && strstr(f.msg, "welcome for a world of 2 with 4 frames (rank 1 of 2)"), "%s",
                  f.msg);
    /* an id longer than any blob */
    const void *d2[5] = { "welcome", "2", "inproc://a", "inproc://me", big };
    size_t l2[5] = { 7, 1, 10, 11, sizeof big };
    s_answer(d2, l2, 5, &f);
    ck_assert_msg(f.st == EQ_ERR_LIMIT && strstr(f.msg, "blob of 4097 bytes"), "%s", f.msg);
    /* a short id: the rendezvous passes it on, the communicator refuses it */
    const void *d3[5] = { "welcome", "2", "inproc://a", "inproc://me", id100 };
    size_t l3[5] = { 7, 1, 10, 11, sizeof id100 };
    s_answer(d3, l3, 5, &f);
    ck_assert_msg(f.st == EQ_OK, "%s", f.msg);
    ck_assert_uint_eq(f.w.blob_len, 100);
    eq_err e = { 0 };
    ck_assert_ptr_null(eq_comm_nccl_new(NULL, &f.w, 1000, &e));
    ck_assert_msg(e.code == EQ_ERR_PROTO && strstr(e.msg, "nccl rank 1/2: the rendezvous carried 100 bytes from rank 0 "
                                                          "where the NCCL unique id (128 bytes) belongs"),
                  "%s", e.msg);
    /* none at all (rank 0 runs the CPU ring) */
    const void *d4[5] = { "welcome", "2", "inproc://a", "inproc://me", "" };
    size_t l4[5] = { 7, 1, 10, 11, 0 };
    s_answer(d4, l4, 5, &f);
    ck_assert_msg(f.st == EQ_OK, "%s", f.msg);
    ck_assert_ptr_null(eq_comm_nccl_new(NULL, &f.w, 1000, &e));
    ck_assert_msg(e.code == EQ_ERR_PROTO && strstr(e.msg, "carried 0 bytes") &&
                      strstr(e.msg, "does rank 0 run [train] backend = cuda?"),
                  "%s", e.msg);
    zmq_ctx_term(f.zctx);
    /* the id buffer must be 128 bytes */
    uint8_t small[16];
    ck_assert_int_eq(eq_comm_nccl_unique_id(small, sizeof small, &e), EQ_ERR_INVALID);
    ck_assert_msg(strstr(e.msg, "128 bytes (got 16)"), "%s", e.msg);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("nccl_comm");
    TCase *tc = tcase_create("collective");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_results);
    tcase_add_test(tc, test_bucket_plan);
    tcase_add_test(tc, test_missing_peer_host);
    tcase_add_test(tc, test_missing_peer_watchdog);
    tcase_add_test(tc, test_collective_error);
    tcase_add_test(tc, test_async_error);
    tcase_add_test(tc, test_args);
    suite_add_tcase(s, tc);
    TCase *tr = tcase_create("rendezvous");
    tcase_set_timeout(tr, 30);
    tcase_add_test(tr, test_rendezvous_id);
    tcase_add_test(tr, test_rendezvous_bad_id);
    suite_add_tcase(s, tr);
    return eq_test_run(s);
}
