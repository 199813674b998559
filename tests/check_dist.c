/*
 * tests/check_dist.c -- trainer/dist.h: the ring all-reduce for W = 1..4
 * and sizes that do not divide (ranks as threads of one process over
 * inproc sockets), the three ops, errors for ranks that disagree or fall
 * silent, the rendezvous (welcome, blob, refusals), and data-parallel
 * gradients of a network without BN equal to one rank's on the same global
 * batch; the model's grad-ready hook (order, final values, during the
 * backward) and buckets in that order completing in order; the real
 * programs on two ranks: equal to one rank with iter_size 2, and the same
 * bits with the all-reduce overlapping the backward or after it.
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <zmq.h>

#include "core/rng.h"
#include "core/safetensors.h"
#include "loader/loader.h"
#include "proto/proto_zmq.h"
#include "testutil.h"
#include "tinyjob.h"
#include "trainer/backend.h"
#include "trainer/cuda/bucket.h"
#include "trainer/dist.h"
#include "trainer/layers.h"
#include "trainer/train.h"

/* ---- ranks as threads ------------------------------------------------------- */

typedef struct s_job s_job;
typedef void s_body(s_job *j, int rank, eq_comm *c);

struct s_job {
    void *zctx;
    int world, tag;
    eq_dist_world w;
    pthread_barrier_t bar;
    s_body *body;
    void *arg;
    int timeout_ms;
    /* results */
    eq_status st[EQ_DIST_MAX_WORLD];
    char msg[EQ_DIST_MAX_WORLD][EQ_ERR_MSG_LEN];
};

typedef struct s_targ {
    s_job *j;
    int rank;
} s_targ;

static void *s_rank_main(void *p)
{
    s_targ *a = p;
    s_job *j = a->j;
    char ep[128];
    snprintf(ep, sizeof ep, "inproc://ring-%d-%d-%d", j->tag, j->world, a->rank);
    eq_err e = { 0 };
    eq_comm_ring *r = eq_comm_ring_listen(j->zctx, ep, j->timeout_ms, &e);
    ck_assert_msg(r != NULL, "listen: %s", e.msg);
    snprintf(j->w.ep[a->rank], EQ_DIST_EP_CAP, "%s", eq_comm_ring_endpoint(r));
    pthread_barrier_wait(&j->bar);
    eq_dist_world w = j->w;
    w.rank = a->rank;
    eq_comm *c = eq_comm_ring_connect(&r, &w, &e);
    ck_assert_msg(c != NULL, "rank %d connect: %s", a->rank, e.msg);
    ck_assert_ptr_null(r);
    ck_assert_int_eq(eq_comm_rank(c), a->rank);
    ck_assert_int_eq(eq_comm_world(c), j->world);
    j->body(j, a->rank, c);
    eq_comm_destroy(&c);
    ck_assert_ptr_null(c);
    return NULL;
}

static void s_run_ranks(s_job *j)
{
    static atomic_int tag;
    j->tag = atomic_fetch_add(&tag, 1);
    if (!j->zctx) j->zctx = zmq_ctx_new();
    j->w.world = j->world;
    pthread_barrier_init(&j->bar, NULL, (unsigned)j->world);
    pthread_t th[EQ_DIST_MAX_WORLD];
    s_targ a[EQ_DIST_MAX_WORLD];
    for (int r = 0; r < j->world; r++) {
        a[r] = (s_targ){ j, r };
        ck_assert_int_eq(pthread_create(&th[r], NULL, s_rank_main, &a[r]), 0);
    }
    for (int r = 0; r < j->world; r++) pthread_join(th[r], NULL);
    pthread_barrier_destroy(&j->bar);
    zmq_ctx_term(j->zctx);
}

/* ---- all-reduce correctness --------------------------------------------------- */

/* Rank r's value of element i of test n. */
static float s_val(int r, size_t i, size_t n)
{
    eq_rng g;
    eq_rng_init(&g, 77 + n, (uint64_t)r * 1000003u + i);
    return eq_rng_uniform(&g) * 2.0f - 1.0f;
}

static const size_t s_sizes[] = { 1, 2, 3, 5, 7, 64, 1001, 40009 };
#define S_NSIZES (sizeof s_sizes / sizeof s_sizes[0])

typedef struct s_res {
    float *out[EQ_DIST_MAX_WORLD][S_NSIZES][3]; /* rank, size, op */
} s_res;

static void s_body_reduce(s_job *j, int rank, eq_comm *c)
{
    s_res *res = j->arg;
    eq_err e = { 0 };
    for (size_t k = 0; k < S_NSIZES; k++) {
        size_t n = s_sizes[k];
        int ids[3];
        for (int op = 0; op < 3; op++) {
            float *x = malloc(n * sizeof *x);
            ck_assert_ptr_nonnull(x);
            for (size_t i = 0; i < n; i++) x[i] = s_val(rank, i, n);
            res->out[rank][k][op] = x;
            /* Three segments of uneven length (some empty) per bucket. */
            size_t a = n / 3, b = n / 2;
            eq_comm_seg segs[3] = { { x, a }, { x + a, b - a }, { x + b, n - b } };
            ids[op] = eq_comm_bucket_new(c, segs, 3, (eq_comm_op)op, &e);
            ck_assert_msg(ids[op] >= 0, "bucket: %s", e.msg);
        }
        /* All three in flight at once, waited in another order. */
        for (int op = 0; op < 3; op++) ck_assert_int_eq(eq_comm_start(c, ids[op], &e), EQ_OK);
        for (int op = 2; op >= 0; op--) ck_assert_msg(eq_comm_wait(c, ids[op], &e) == EQ_OK, "wait: %s", e.msg);
    }
    /* A bucket is reusable: run the last one again (AVG of identical
     * values across ranks stays put up to rounding). */
}

static void s_check_reduce(int W)
{
    s_res *res = calloc(1, sizeof *res);
    s_job j = { .world = W, .body = s_body_reduce, .arg = res, .timeout_ms = 10000 };
    s_run_ranks(&j);
    for (size_t k = 0; k < S_NSIZES; k++) {
        size_t n = s_sizes[k];
        for (size_t i = 0; i < n; i++) {
            double sum = 0;
            for (int r = 0; r < W; r++) sum += s_val(r, i, n);
            double want[3] = { sum, sum / W, s_val(0, i, n) };
            for (int op = 0; op < 3; op++) {
                float got = res->out[0][k][op][i];
                ck_assert_msg(fabs(got - want[op]) <= 1e-6 * (1 + fabs(want[op])),
                              "W=%d n=%zu op=%d element %zu: %.9g, expected %.9g", W, n, op, i, (double)got,
                              want[op]);
                for (int r = 1; r < W; r++)
                    ck_assert_msg(!memcmp(&res->out[r][k][op][i], &got, sizeof got),
                                  "W=%d n=%zu op=%d element %zu: rank %d has %.9g, rank 0 %.9g", W, n, op, i, r,
                                  (double)res->out[r][k][op][i], (double)got);
            }
        }
    }
    for (int r = 0; r < W; r++)
        for (size_t k = 0; k < S_NSIZES; k++)
            for (int op = 0; op < 3; op++) free(res->out[r][k][op]);
    free(res);
}

START_TEST(test_allreduce_1) { s_check_reduce(1); }
END_TEST
START_TEST(test_allreduce_2) { s_check_reduce(2); }
END_TEST
START_TEST(test_allreduce_3) { s_check_reduce(3); }
END_TEST
START_TEST(test_allreduce_4) { s_check_reduce(4); }
END_TEST

/* Buckets larger than the ring's 1 MiB pieces (2^18 floats): each chunk
 * goes as several pieces, pipelined, and the all-gather forwards received
 * messages.  The values are small integers so every sum is exact in any
 * order and the expected result needs no reference ring (the sizes above
 * check the order, bitwise across ranks; these the pieces' bookkeeping:
 * an element added twice, dropped or taken from the wrong piece shows). */
#define S_BIG_N ((size_t)1300021) /* 2 ranks: 2.5 pieces per chunk; 3: 1.7 */

static float s_ival(int r, size_t i) { return (float)((int)((i * 7919u + (size_t)r * 104729u) % 2001u) - 1000); }

static void s_body_pieces(s_job *j, int rank, eq_comm *c)
{
    float **out = j->arg;
    eq_err e = { 0 };
    for (int op = 0; op < 3; op++) {
        float *x = malloc(S_BIG_N * sizeof *x);
        ck_assert_ptr_nonnull(x);
        for (size_t i = 0; i < S_BIG_N; i++) x[i] = s_ival(rank, i);
        out[rank * 3 + op] = x;
        /* two segments, the split off the piece grid */
        size_t a = S_BIG_N / 3 + 17;
        eq_comm_seg segs[2] = { { x, a }, { x + a, S_BIG_N - a } };
        int id = eq_comm_bucket_new(c, segs, 2, (eq_comm_op)op, &e);
        ck_assert_msg(id >= 0, "bucket: %s", e.msg);
        ck_assert_msg(eq_comm_run(c, id, &e) == EQ_OK, "run: %s", e.msg);
    }
}

START_TEST(test_allreduce_pieces)
{
    const int W = 2 + _i; /* 2 and 3 ranks */
    float *out[EQ_DIST_MAX_WORLD * 3] = { 0 };
    s_job j = { .world = W, .body = s_body_pieces, .arg = out, .timeout_ms = 20000 };
    s_run_ranks(&j);
    size_t bad = 0;
    for (size_t i = 0; i < S_BIG_N; i++) {
        float sum = 0;
        for (int r = 0; r < W; r++) sum += s_ival(r, i);
        const float want[3] = { sum, sum / (float)W, s_ival(0, i) };
        for (int op = 0; op < 3; op++)
            for (int r = 0; r < W; r++) {
                float got = out[r * 3 + op][i];
                /* AVG: the sum is exact, so only the division rounds */
                if (op == 1 ? fabsf(got - want[1]) > 1e-6f * (1 + fabsf(want[1])) : got != want[op]) {
                    if (bad++ < 5)
                        fprintf(stderr, "W=%d op=%d rank %d element %zu: %.9g, expected %.9g\n", W, op, r, i,
                                (double)got, (double)want[op]);
                }
            }
    }
    ck_assert_msg(bad == 0, "W=%d: %zu wrong elements in buckets of %zu floats (several pieces per chunk)", W, bad,
                  S_BIG_N);
    for (int k = 0; k < W * 3; k++) free(out[k]);
}
END_TEST

/* ---- errors -------------------------------------------------------------------- */

typedef struct s_errs {
    eq_status st[4];
    char msg[4][EQ_ERR_MSG_LEN];
} s_errs;

/* Rank 0 starts bucket 0, rank 1 bucket 1: both must fail, saying so. */
static void s_body_mismatch(s_job *j, int rank, eq_comm *c)
{
    s_errs *r = j->arg;
    float a[10] = { 0 }, b[10] = { 0 };
    eq_comm_seg sa = { a, 10 }, sb = { b, 10 };
    eq_err e = { 0 };
    int ia = eq_comm_bucket_new(c, &sa, 1, EQ_COMM_SUM, &e), ib = eq_comm_bucket_new(c, &sb, 1, EQ_COMM_SUM, &e);
    ck_assert(ia >= 0 && ib >= 0);
    int mine = rank == 0 ? ia : ib;
    ck_assert_int_eq(eq_comm_start(c, mine, &e), EQ_OK);
    r->st[rank] = eq_comm_wait(c, mine, &e);
    snprintf(r->msg[rank], sizeof r->msg[rank], "%s", e.msg);
    /* broken for good: the next collective fails at once with the same error */
    eq_err e2 = { 0 };
    ck_assert_int_eq(eq_comm_run(c, ia, &e2), r->st[rank]);
    /* misuse */
    ck_assert_int_eq(eq_comm_wait(c, ia, &e2), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_comm_start(c, 99, &e2), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_comm_bucket_new(c, &sa, 0, EQ_COMM_SUM, &e2), -1);
}

START_TEST(test_mismatch)
{
    s_errs r = { 0 };
    s_job j = { .world = 2, .body = s_body_mismatch, .arg = &r, .timeout_ms = 2000 };
    s_run_ranks(&j);
    for (int k = 0; k < 2; k++) {
        ck_assert_msg(r.st[k] == EQ_ERR_PROTO, "rank %d: %s", k, r.msg[k]);
        ck_assert_msg(strstr(r.msg[k], "different buckets"), "rank %d: %s", k, r.msg[k]);
    }
}
END_TEST

/* Rank 1 never takes part: rank 0 times out naming rank 1. */
static void s_body_silent(s_job *j, int rank, eq_comm *c)
{
    s_errs *r = j->arg;
    if (rank != 0) {
        usleep(800000); /* alive (sockets open) but silent while rank 0 waits */
        return;
    }
    float a[4] = { 1, 2, 3, 4 };
    eq_comm_seg s = { a, 4 };
    eq_err e = { 0 };
    int b = eq_comm_bucket_new(c, &s, 1, EQ_COMM_AVG, &e);
    r->st[0] = eq_comm_run(c, b, &e);
    snprintf(r->msg[0], sizeof r->msg[0], "%s", e.msg);
}

START_TEST(test_silent_peer)
{
    s_errs r = { 0 };
    s_job j = { .world = 3, .body = s_body_silent, .arg = &r, .timeout_ms = 300 };
    s_run_ranks(&j);
    ck_assert_msg(r.st[0] == EQ_ERR_TIMEOUT && strstr(r.msg[0], "rank 2") && strstr(r.msg[0], "alive"), "%s",
                  r.msg[0]);
}
END_TEST

/* ---- rendezvous ------------------------------------------------------------------ */

typedef struct s_rdv {
    void *zctx;
    char root_ep[128];
    int world;
    const char *digest[4];
    int rank_of[4];   /* the rank each joiner claims */
    eq_status st[4];
    char msg[4][EQ_ERR_MSG_LEN];
    eq_dist_world w[4];
    int others; /* control messages seen by the root's handler */
} s_rdv;

typedef struct s_rarg {
    s_rdv *d;
    int i;
} s_rarg;

static void *s_joiner(void *p)
{
    s_rarg *a = p;
    s_rdv *d = a->d;
    char ep[64];
    snprintf(ep, sizeof ep, "ipc:///tmp/eq-rank-%d", a->i);
    eq_dist_me me = { .rank = d->rank_of[a->i], .world = d->world, .ep = ep, .digest = d->digest[a->i] };
    eq_err e = { 0 };
    d->st[a->i] = eq_dist_rendezvous_join(d->zctx, d->root_ep, &me, 3000, NULL, &d->w[a->i], &e);
    snprintf(d->msg[a->i], sizeof d->msg[a->i], "%s", e.msg);
    return NULL;
}

static void s_other(void *arg, void *router, const void *id, size_t idlen, void *frames, int nframes)
{
    s_rdv *d = arg;
    zmq_msg_t *f = frames;
    ck_assert_int_ge(nframes, 1);
    ck_assert(zmq_msg_size(&f[0]) == 6 && !memcmp(zmq_msg_data(&f[0]), "status", 6));
    d->others++;
    zmq_send(router, id, idlen, ZMQ_SNDMORE);
    zmq_send(router, "{}", 2, 0);
}

START_TEST(test_rendezvous)
{
    s_rdv d = { .world = 3 };
    d.zctx = zmq_ctx_new();
    eq_err e = { 0 };
    eq_proto_sockopts so;
    eq_proto_sockopts_default(&so, NULL);
    void *router = eq_proto_socket(d.zctx, ZMQ_ROUTER, &so, &e);
    ck_assert_ptr_nonnull(router);
    ck_assert_int_eq(eq_proto_bind(router, "tcp://127.0.0.1:*", d.root_ep, sizeof d.root_ep, &e), EQ_OK);
    char dg[EQ_DIST_DIGEST_CAP], dg2[EQ_DIST_DIGEST_CAP];
    eq_dist_digest("[model]\narch = resnet20\n", dg);
    eq_dist_digest("[model]\narch = resnet32\n", dg2);
    ck_assert_str_ne(dg, dg2);
    /* joiners: rank 1, rank 2, a second "rank 2" with another config, a rank 5 */
    d.rank_of[0] = 1;
    d.rank_of[1] = 2;
    d.rank_of[2] = 2;
    d.rank_of[3] = 1;
    d.digest[0] = d.digest[1] = dg;
    d.digest[2] = dg2;
    d.digest[3] = dg;
    /* A status request while waiting goes to the handler. */
    void *probe = eq_proto_socket(d.zctx, ZMQ_DEALER, &so, &e);
    ck_assert_int_eq(eq_proto_connect(probe, d.root_ep, &e), EQ_OK);
    zmq_send(probe, "status", 6, 0);
    pthread_t th[3];
    s_rarg a[3] = { { &d, 0 }, { &d, 1 }, { &d, 2 } };
    /* the bad one first, so its join waits in the queue before the others' */
    ck_assert_int_eq(pthread_create(&th[2], NULL, s_joiner, &a[2]), 0);
    usleep(300000);
    for (int i = 0; i < 2; i++) ck_assert_int_eq(pthread_create(&th[i], NULL, s_joiner, &a[i]), 0);
    uint8_t blob[300];
    for (size_t i = 0; i < sizeof blob; i++) blob[i] = (uint8_t)(i * 7);
    eq_dist_me me = { .rank = 0, .world = 3, .ep = "ipc:///tmp/eq-rank-root", .digest = dg, .blob = blob,
                      .blob_len = sizeof blob };
    eq_dist_world w0;
    eq_status st = eq_dist_rendezvous_root(router, &me, 5000, s_other, &d, NULL, &w0, &e);
    ck_assert_msg(st == EQ_OK, "%s", e.msg);
    for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
    ck_assert_int_eq(d.others, 1);
    /* the two good ones got the world and the blob */
    for (int i = 0; i < 2; i++) {
        ck_assert_msg(d.st[i] == EQ_OK, "joiner %d: %s", i, d.msg[i]);
        ck_assert_int_eq(d.w[i].world, 3);
        ck_assert_int_eq(d.w[i].rank, d.rank_of[i]);
        ck_assert_str_eq(d.w[i].ep[0], "ipc:///tmp/eq-rank-root");
        ck_assert_str_eq(d.w[i].ep[1], "ipc:///tmp/eq-rank-0");
        ck_assert_str_eq(d.w[i].ep[2], "ipc:///tmp/eq-rank-1");
        ck_assert_uint_eq(d.w[i].blob_len, sizeof blob);
        ck_assert(!memcmp(d.w[i].blob, blob, sizeof blob));
    }
    ck_assert_str_eq(w0.ep[2], "ipc:///tmp/eq-rank-1");
    /* the one with another config was refused, with the reason */
    ck_assert_msg(d.st[2] == EQ_ERR_INVALID && strstr(d.msg[2], "another experiment config"), "%s", d.msg[2]);
    /* after the rendezvous a late join is refused by the caller's choice */
    pthread_t t3;
    s_rarg a3 = { &d, 3 };
    ck_assert_int_eq(pthread_create(&t3, NULL, s_joiner, &a3), 0);
    zmq_pollitem_t it = { router, 0, ZMQ_POLLIN, 0 };
    ck_assert_int_eq(zmq_poll(&it, 1, 3000), 1);
    zmq_msg_t id;
    zmq_msg_init(&id);
    ck_assert_int_ge(zmq_msg_recv(&id, router, 0), 0);
    int more = 1;
    while (more) {
        zmq_msg_t x;
        zmq_msg_init(&x);
        zmq_msg_recv(&x, router, 0);
        more = zmq_msg_more(&x);
        zmq_msg_close(&x);
    }
    eq_dist_refuse_late(router, zmq_msg_data(&id), zmq_msg_size(&id), "the world is complete");
    zmq_msg_close(&id);
    pthread_join(t3, NULL);
    ck_assert_msg(d.st[3] == EQ_ERR_INVALID && strstr(d.msg[3], "the world is complete"), "%s", d.msg[3]);
    /* the root alone times out naming the missing ranks */
    eq_dist_me me4 = { .rank = 0, .world = 4, .ep = "ipc:///x", .digest = dg };
    st = eq_dist_rendezvous_root(router, &me4, 300, NULL, NULL, NULL, &w0, &e);
    ck_assert_msg(st == EQ_ERR_TIMEOUT && strstr(e.msg, "missing rank(s) 1, 2, 3"), "%s", e.msg);
    /* bad arguments */
    eq_dist_me bad = { .rank = 3, .world = 3, .ep = "ipc:///x" };
    ck_assert_int_eq(eq_dist_rendezvous_root(router, &bad, 10, NULL, NULL, NULL, &w0, &e), EQ_ERR_INVALID);
    /* world 1: nothing to wait for */
    eq_dist_me one = { .rank = 0, .world = 1, .ep = "ipc:///x" };
    ck_assert_int_eq(eq_dist_rendezvous_root(router, &one, 10, NULL, NULL, NULL, &w0, &e), EQ_OK);
    ck_assert_int_eq(w0.world, 1);
    eq_proto_socket_close(&probe);
    eq_proto_socket_close(&router);
    zmq_ctx_term(d.zctx);
}
END_TEST

/* ---- data-parallel gradients equal one rank's (no BN) ---------------------------- */

#define S_N 8
#define S_H 6
#define S_C 3
#define S_K 5

/* conv 3x3 -> relu -> conv 3x3 stride 2 -> relu -> gap -> linear(4) */
static eq_layers *s_net(eq_backend *be, int64_t n)
{
    eq_err e = { 0 };
    eq_layers *g = eq_layers_new(be, &e);
    ck_assert_ptr_nonnull(g);
    int x = eq_layers_input(g, n, S_H, S_H, S_C, &e);
    x = eq_layers_conv(g, "conv1", x, S_K, 3, 1, 1, 1, NULL, NULL, false, &e);
    x = eq_layers_relu(g, x, &e);
    x = eq_layers_conv(g, "conv2", x, 6, 3, 2, 1, 1, NULL, NULL, false, &e);
    x = eq_layers_relu(g, x, &e);
    x = eq_layers_gap(g, x, &e);
    x = eq_layers_linear(g, "fc", x, 4, NULL, NULL, &e);
    ck_assert_msg(x >= 0, "%s", e.msg);
    ck_assert_msg(eq_layers_finalize(g, 11, &e) == EQ_OK, "%s", e.msg);
    return g;
}

/* Input of sample i, and the loss weights: loss = mean_i sum_o c[o] y[i][o]. */
static float s_x(size_t i, size_t k)
{
    eq_rng g;
    eq_rng_init(&g, 5, i * 1000 + k);
    return eq_rng_uniform(&g) * 2 - 1;
}

/* Gradients of the loss over samples [first, first + n) (mean over n). */
static void s_grads(eq_layers *g, size_t first, size_t n, float *out)
{
    eq_err e = { 0 };
    size_t per = S_H * S_H * S_C;
    float *x = malloc(n * per * sizeof *x);
    ck_assert_ptr_nonnull(x);
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < per; k++) x[i * per + k] = s_x(first + i, k);
    ck_assert_msg(eq_layers_forward(g, x, true, &e) == EQ_OK, "%s", e.msg);
    float *dy;
    int64_t shp[4];
    eq_layers_output(g, &dy, shp);
    for (size_t i = 0; i < n; i++)
        for (int o = 0; o < 4; o++) dy[i * 4 + (size_t)o] = (float)(o + 1) * 0.25f / (float)n;
    ck_assert_msg(eq_layers_backward(g, &e) == EQ_OK, "%s", e.msg);
    size_t off = 0;
    for (size_t t = 0; t < eq_layers_tensor_count(g); t++) {
        const eq_model_tensor *tt = eq_layers_tensor_at(g, t);
        if (!tt->grad) continue;
        memcpy(out + off, tt->grad, tt->numel * sizeof(float));
        off += tt->numel;
    }
    free(x);
}

typedef struct s_dp {
    size_t np;
    float *ref, *got[2];
} s_dp;

static void s_body_dp(s_job *j, int rank, eq_comm *c)
{
    s_dp *d = j->arg;
    eq_err e = { 0 };
    eq_backend *be = eq_backend_cpu_new(1, &e);
    ck_assert_ptr_nonnull(be);
    int64_t local = S_N / j->world;
    eq_layers *g = s_net(be, local);
    /* buckets over the gradients in reverse order, two tensors each */
    eq_comm_seg segs[16];
    int ids[16], nb = 0;
    size_t ns = 0;
    for (size_t t = eq_layers_tensor_count(g); t-- > 0;) {
        const eq_model_tensor *tt = eq_layers_tensor_at(g, t);
        if (!tt->grad) continue;
        segs[ns++] = (eq_comm_seg){ tt->grad, tt->numel };
        if (ns == 2) {
            ids[nb] = eq_comm_bucket_new(c, segs, ns, EQ_COMM_AVG, &e);
            ck_assert_int_ge(ids[nb++], 0);
            ns = 0;
        }
    }
    if (ns) {
        ids[nb] = eq_comm_bucket_new(c, segs, ns, EQ_COMM_AVG, &e);
        ck_assert_int_ge(ids[nb++], 0);
    }
    d->got[rank] = malloc(d->np * sizeof(float));
    float *scratch = malloc(d->np * sizeof(float));
    s_grads(g, (size_t)(rank * local), (size_t)local, scratch);
    for (int b = 0; b < nb; b++) ck_assert_int_eq(eq_comm_start(c, ids[b], &e), EQ_OK);
    for (int b = 0; b < nb; b++) ck_assert_msg(eq_comm_wait(c, ids[b], &e) == EQ_OK, "%s", e.msg);
    size_t off = 0;
    for (size_t t = 0; t < eq_layers_tensor_count(g); t++) {
        const eq_model_tensor *tt = eq_layers_tensor_at(g, t);
        if (!tt->grad) continue;
        memcpy(d->got[rank] + off, tt->grad, tt->numel * sizeof(float));
        off += tt->numel;
    }
    free(scratch);
    eq_layers_destroy(&g);
    eq_backend_destroy(&be);
}

START_TEST(test_dp_gradients)
{
    eq_err e = { 0 };
    eq_backend *be = eq_backend_cpu_new(1, &e);
    eq_layers *g = s_net(be, S_N);
    s_dp d = { 0 };
    for (size_t t = 0; t < eq_layers_tensor_count(g); t++)
        if (eq_layers_tensor_at(g, t)->grad) d.np += eq_layers_tensor_at(g, t)->numel;
    d.ref = malloc(d.np * sizeof(float));
    s_grads(g, 0, S_N, d.ref);
    eq_layers_destroy(&g);
    eq_backend_destroy(&be);
    s_job j = { .world = 2, .body = s_body_dp, .arg = &d, .timeout_ms = 10000 };
    s_run_ranks(&j);
    double rel = eq_test_relerr(d.got[0], d.ref, d.np);
    ck_assert_msg(rel < 1e-5, "all-reduced gradients differ from one rank's by %g (relative)", rel);
    ck_assert(!memcmp(d.got[0], d.got[1], d.np * sizeof(float)));
    free(d.ref);
    free(d.got[0]);
    free(d.got[1]);
}
END_TEST

/* ---- the grad-ready hook and the buckets built in its order ------------------ */

typedef struct s_hk {
    eq_model *m;
    size_t n, got[512];
    float *snap;          /* each tensor's gradient when it was reported */
    size_t *off;          /* per tensor: its place in snap */
    size_t last;          /* the tensor reported last (the stem's) */
    float *last_before;   /* its gradient when the first report came */
    eq_bucket_plan *plan; /* buckets as eq-trainer builds them */
    size_t *param;        /* per tensor: its parameter in the plan */
    long next;            /* the bucket expected to complete next */
} s_hk;

static void s_hook(void *arg, size_t i)
{
    s_hk *h = arg;
    const eq_model_tensor *t = eq_model_tensor_at(h->m, i);
    ck_assert_ptr_nonnull(t);
    ck_assert_ptr_nonnull(t->grad);
    ck_assert_uint_lt(h->n, 512);
    if (h->n == 0) {
        const eq_model_tensor *l = eq_model_tensor_at(h->m, h->last);
        memcpy(h->last_before, l->grad, l->numel * sizeof(float));
    }
    h->got[h->n++] = i;
    memcpy(h->snap + h->off[i], t->grad, t->numel * sizeof(float));
    eq_err e = { 0 };
    long b = eq_bucket_mark_ready(h->plan, h->param[i], &e);
    ck_assert_msg(b != -2, "%s", e.msg);
    if (b >= 0) ck_assert_int_eq(b, h->next++); /* buckets complete in their order */
}

START_TEST(test_grad_hook)
{
    char *dir = eq_test_scratch("dist-hook");
    eq_experiment x;
    eq_tinyjob_experiment(dir, &x);
    eq_err e = { 0 };
    eq_backend *be = eq_backend_cpu_new(1, &e);
    ck_assert_ptr_nonnull(be);
    const int64_t N = 4, H = 12;
    eq_model *m = eq_model_new_ot(be, &x.model, &x.wt, &x.fm, &x.ot, N, H, H, &e);
    ck_assert_msg(m != NULL, "%s", e.msg);
    size_t nt = eq_model_tensor_count(m), ng = eq_model_grad_order(m, NULL, 0), total = 0, ngrad = 0;
    ck_assert_uint_gt(ng, 20);
    size_t *order = calloc(ng, sizeof *order), *bytes = calloc(ng, sizeof *bytes);
    s_hk h = { .m = m, .off = calloc(nt, sizeof(size_t)), .param = calloc(nt, sizeof(size_t)) };
    ck_assert_uint_eq(eq_model_grad_order(m, order, ng), ng);
    for (size_t i = 0; i < nt; i++) {
        const eq_model_tensor *t = eq_model_tensor_at(m, i);
        h.off[i] = total;
        if (t->grad) total += t->numel, ngrad++;
    }
    ck_assert_uint_eq(ngrad, ng); /* every tensor with a grad, once */
    for (size_t j = 0; j < ng; j++) {
        ck_assert(eq_model_tensor_at(m, order[j])->grad != NULL);
        for (size_t k = 0; k < j; k++) ck_assert_uint_ne(order[k], order[j]);
        bytes[j] = eq_model_tensor_at(m, order[ng - 1 - j])->numel * sizeof(float);
        h.param[order[ng - 1 - j]] = j;
    }
    /* the first gradient done is the classifier's, the last the stem's */
    ck_assert_str_eq(eq_model_tensor_at(m, order[ng - 1])->name, "conv1.weight");
    ck_assert(strncmp(eq_model_tensor_at(m, order[0])->name, "fc.", 3) == 0);
    h.last = order[ng - 1];
    h.snap = malloc(total * sizeof(float));
    h.last_before = malloc(eq_model_tensor_at(m, h.last)->numel * sizeof(float));
    ck_assert_msg(eq_bucket_plan_new(ng, bytes, 2048, 1024, &h.plan, &e) == EQ_OK, "%s", e.msg);
    ck_assert_uint_gt(h.plan->nbuckets, 4);
    size_t xn = (size_t)(N * H * H * 3);
    float *xin = malloc(xn * sizeof(float));
    int32_t labels[4] = { 0, 1, 2, 3 };
    float loss;
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < xn; i++) xin[i] = s_x((size_t)pass, i);
        if (pass == 1) eq_model_set_grad_hook(m, s_hook, &h); /* pass 0: gradients to compare against */
        ck_assert_msg(eq_model_forward(m, xin, true, &e) == EQ_OK, "%s", e.msg);
        ck_assert_msg(eq_model_loss(m, labels, NULL, NULL, 0, &loss, &e) == EQ_OK, "%s", e.msg);
        ck_assert_msg(eq_model_backward(m, NULL, &e) == EQ_OK, "%s", e.msg);
    }
    /* reported once each, in eq_model_grad_order's order, every bucket completed */
    ck_assert_uint_eq(h.n, ng);
    for (size_t j = 0; j < ng; j++) ck_assert_uint_eq(h.got[j], order[j]);
    ck_assert_int_eq(h.next, (long)h.plan->nbuckets);
    /* each gradient was final when reported */
    for (size_t i = 0; i < nt; i++) {
        const eq_model_tensor *t = eq_model_tensor_at(m, i);
        if (t->grad)
            ck_assert_msg(!memcmp(h.snap + h.off[i], t->grad, t->numel * sizeof(float)), "%s changed after its report",
                          t->name);
    }
    /* the first report came before the backward reached the stem (whose
     * gradient then still held the first pass's values) */
    const eq_model_tensor *stem = eq_model_tensor_at(m, h.last);
    ck_assert_msg(memcmp(h.last_before, stem->grad, stem->numel * sizeof(float)) != 0,
                  "the hook reported only after the whole backward");
    /* no hook: no calls */
    eq_model_set_grad_hook(m, NULL, NULL);
    size_t before = h.n;
    ck_assert_msg(eq_model_forward(m, xin, true, &e) == EQ_OK, "%s", e.msg);
    ck_assert_msg(eq_model_loss(m, labels, NULL, NULL, 0, &loss, &e) == EQ_OK, "%s", e.msg);
    ck_assert_msg(eq_model_backward(m, NULL, &e) == EQ_OK, "%s", e.msg);
    ck_assert_uint_eq(h.n, before);
    eq_bucket_plan_destroy(&h.plan);
    free(h.snap);
    free(h.last_before);
    free(h.off);
    free(h.param);
    free(order);
    free(bytes);
    free(xin);
    eq_model_destroy(&m);
    eq_backend_destroy(&be);
    eq_test_scratch_rm(dir);
}
END_TEST

/* ---- the real programs: two ranks equal one rank with iter_size 2 ------------ */


/* Tensors that must agree: parameters and quantizer state except the
 * counters and BN running statistics (the one-rank run makes two forwards
 * per update, so its counters and running averages moved twice). */
static bool s_compared(const char *name)
{
    return strncmp(name, "optim.", 6) && !strstr(name, "running_") && !strstr(name, "num_batches_tracked") &&
           !strstr(name, ".iteration");
}

START_TEST(test_ranks_equal_iter_size)
{
    char *dir = eq_test_scratch("dist-e2e");
    char path[4200], cfg[4200], ld_ep[4300], ctl_ep[4300], logp[4300], out1[4300], out2[4300];
    eq_err e = { 0 };
    snprintf(path, sizeof path, "%s/ds", dir);
    eq_synth_cfg sc = { .classes = 4, .train_per_class = 16, .val_per_class = 2, .mean_pixels = 600, .seed = 5,
                        .nthreads = 1 };
    ck_assert_msg(eq_synth_imagefolder(path, &sc, &e) == EQ_OK, "%s", e.msg);
    snprintf(cfg, sizeof cfg, "%s/tiny.cfg", dir);
    FILE *f = fopen(cfg, "w");
    ck_assert_ptr_nonnull(f);
    /* Fixed lr (the per-iteration schedules count steps of G), no weight
     * decay (it is added before the optimiser's step, so it does not scale
     * with the summed gradient), LSQ 4-bit as the default experiment. */
    fprintf(f,
            "[loader]\nthreads = 1\ndatasets = tiny=%s\n[data]\ndataset = tiny\nheight = 12\nwidth = 12\nchannels = 3\n"
            "global_batch = 16\naug_train = center\naug_val = center\n[model]\nnum_classes = 4\nin_channels = 3\n"
            "width_alpha = 0.125\n[optim]\nlr = 0.1\nweight_decay = 0\n[schedule]\npolicy = fix\n[train]\nname = dp\n"
            "mean = 0.5, 0.5, 0.5\nstd = 0.25, 0.25, 0.25\nthreads = 1\neval_every = 0\ntimeout_ms = 20000\n"
            "dist_timeout_ms = 20000\n",
            path);
    fclose(f);
    snprintf(ld_ep, sizeof ld_ep, "ipc://%s/loader", dir);
    snprintf(ctl_ep, sizeof ctl_ep, "ipc://%s/ctl", dir);
    snprintf(out1, sizeof out1, "train.out_dir=%s/two", dir);
    snprintf(out2, sizeof out2, "train.out_dir=%s/one", dir);
    char dsarg[4300];
    snprintf(dsarg, sizeof dsarg, "tiny=%s", path);
    char ld_ctl[4300];
    snprintf(ld_ctl, sizeof ld_ctl, "ipc://%s/loader.ctl", dir); /* not the default TCP port: tests run in parallel */
    char *lav[] = { "eq-loader", "--bind", ld_ep, "--control", ld_ctl, "--threads", "1", "--dataset", dsarg, NULL };
    snprintf(logp, sizeof logp, "%s/loader.log", dir);
    pid_t ld = eq_test_spawn(lav, logp);
    /* two ranks, global batch 16: each rank 8 samples per step */
    char r0[4300], r1[4300], ring0[4300], ring1[4300];
    snprintf(ring0, sizeof ring0, "ipc://%s/ring0", dir);
    snprintf(ring1, sizeof ring1, "ipc://%s/ring1", dir);
    char *a0[] = { "eq-trainer", "--config", cfg, "--set", out1, "--loaders", ld_ep, "--control", ctl_ep, "--rank", "0",
                   "--world", "2", "--dist-bind", ring0, NULL };
    char *a1[] = { "eq-trainer", "--config", cfg, "--set", out1, "--loaders", ld_ep, "--rendezvous", ctl_ep, "--rank",
                   "1", "--world", "2", "--dist-bind", ring1, NULL };
    snprintf(r0, sizeof r0, "%s/rank0.log", dir);
    snprintf(r1, sizeof r1, "%s/rank1.log", dir);
    pid_t p0 = eq_test_spawn(a0, r0), p1 = eq_test_spawn(a1, r1);
    int rc0 = eq_test_wait(p0, 60000), rc1 = eq_test_wait(p1, 10000);
    if (rc0 || rc1) {
        eq_test_cat(r0);
        eq_test_cat(r1);
        eq_test_cat(logp);
    }
    ck_assert_msg(rc0 == 0 && rc1 == 0, "two ranks: exit %d and %d", rc0, rc1);
    /* one rank, global batch 8, two steps per update, half the lr: the same
     * samples per update, the same update */
    char *a2[] = { "eq-trainer", "--config", cfg, "--set", out2, "--set", "data.global_batch=8", "--set",
                   "train.iter_size=2", "--set", "optim.lr=0.05", "--loaders", ld_ep, NULL };
    char r2[4300];
    snprintf(r2, sizeof r2, "%s/one.log", dir);
    int rc2 = eq_test_wait(eq_test_spawn(a2, r2), 60000);
    if (rc2) eq_test_cat(r2);
    ck_assert_msg(rc2 == 0, "one rank with iter_size 2: exit %d", rc2);
    kill(ld, SIGTERM);
    eq_test_wait(ld, 10000);
    /* compare */
    snprintf(path, sizeof path, "%s/two/last.safetensors", dir);
    eq_st_file *fa = eq_st_open(path, NULL, &e);
    ck_assert_msg(fa != NULL, "%s", e.msg);
    snprintf(path, sizeof path, "%s/one/last.safetensors", dir);
    eq_st_file *fb = eq_st_open(path, NULL, &e);
    ck_assert_msg(fb != NULL, "%s", e.msg);
    size_t compared = 0;
    double worst = 0;
    const char *worst_name = "";
    for (size_t i = 0; i < eq_st_count(fa); i++) {
        const char *nm = eq_st_name(fa, i);
        if (!s_compared(nm) || eq_st_desc(fa, i)->dtype != EQ_DT_F32) continue;
        long j = eq_st_find(fb, nm);
        ck_assert_msg(j >= 0, "%s missing from the one-rank checkpoint", nm);
        size_t na, nb;
        const float *a = eq_st_data(fa, i, &na), *b = eq_st_data(fb, (size_t)j, &nb);
        ck_assert_uint_eq(na, nb);
        double rel = eq_test_relerr(a, b, na / 4);
        if (rel > worst) {
            worst = rel;
            worst_name = nm;
        }
        compared++;
    }
    ck_assert_uint_gt(compared, 50);
    fprintf(stderr, "two ranks vs one rank with iter_size 2: %zu tensors, worst %s %g\n", compared, worst_name, worst);
    ck_assert_msg(worst < 1e-5, "two ranks vs one rank with iter_size 2: %s differs by %g (relative)", worst_name,
                  worst);
    /* and training moved the weights: the classifier is not its initial value */
    eq_experiment x;
    ck_assert_msg(eq_experiment_load(&x, cfg, NULL, 0, NULL, &e) == EQ_OK, "%s", e.msg);
    eq_backend *be = eq_backend_cpu_new(1, &e);
    eq_model *m = eq_model_new(be, &x.model, &x.wt, &x.fm, 8, 12, 12, &e);
    ck_assert_msg(m != NULL, "%s", e.msg);
    const eq_model_tensor *fc = eq_model_tensor_find(m, "fc.weight");
    ck_assert_ptr_nonnull(fc);
    long k = eq_st_find(fa, "fc.weight");
    ck_assert_int_ge(k, 0);
    ck_assert_msg(eq_test_relerr(eq_st_data(fa, (size_t)k, NULL), fc->data, fc->numel) > 1e-3,
                  "fc.weight did not move: nothing was trained");
    eq_model_destroy(&m);
    eq_backend_destroy(&be);
    eq_st_close(&fa);
    eq_st_close(&fb);
    eq_test_scratch_rm(dir);
}
END_TEST

/* ---- the real programs: the all-reduce overlapping the backward changes no bit ---- */

/* Two ranks of `cfg` with out_dir dir/tag and the `sets` (NULL-ended) on the
 * loader at ld_ep; both must exit 0. */
static void s_two_ranks(const char *dir, const char *cfg, const char *ld_ep, const char *tag, const char *const *sets)
{
    char out[4300], ctl[4300], ring0[4300], ring1[4300], r0[4300], r1[4300];
    snprintf(out, sizeof out, "train.out_dir=%s/%s", dir, tag);
    snprintf(ctl, sizeof ctl, "ipc://%s/%s.ctl", dir, tag);
    snprintf(ring0, sizeof ring0, "ipc://%s/%s.ring0", dir, tag);
    snprintf(ring1, sizeof ring1, "ipc://%s/%s.ring1", dir, tag);
    char *a[2][40];
    for (int r = 0; r < 2; r++) {
        int k = 0;
        a[r][k++] = "eq-trainer", a[r][k++] = "--config", a[r][k++] = (char *)cfg, a[r][k++] = "--set", a[r][k++] = out;
        for (int i = 0; sets[i]; i++) a[r][k++] = "--set", a[r][k++] = (char *)sets[i];
        a[r][k++] = "--loaders", a[r][k++] = (char *)ld_ep, a[r][k++] = r ? "--rendezvous" : "--control";
        a[r][k++] = ctl, a[r][k++] = "--rank", a[r][k++] = r ? "1" : "0", a[r][k++] = "--world", a[r][k++] = "2";
        a[r][k++] = "--dist-bind", a[r][k++] = r ? ring1 : ring0, a[r][k] = NULL;
    }
    snprintf(r0, sizeof r0, "%s/%s.rank0.log", dir, tag);
    snprintf(r1, sizeof r1, "%s/%s.rank1.log", dir, tag);
    pid_t p0 = eq_test_spawn(a[0], r0), p1 = eq_test_spawn(a[1], r1);
    int rc0 = eq_test_wait(p0, 60000), rc1 = eq_test_wait(p1, 10000);
    if (rc0 || rc1) {
        eq_test_cat(r0);
        eq_test_cat(r1);
    }
    ck_assert_msg(rc0 == 0 && rc1 == 0, "two ranks (%s): exit %d and %d", tag, rc0, rc1);
}

/* The number of gradient buckets a rank's log reports with `how`
 * ("overlapping the backward", "after the backward"); -1 if none. */
static int s_buckets(const char *dir, const char *tag, const char *how)
{
    char path[4300], line[1024], pat[128];
    snprintf(path, sizeof path, "%s/%s.rank1.log", dir, tag);
    snprintf(pat, sizeof pat, " gradient bucket(s) %s,", how);
    FILE *f = fopen(path, "r");
    int n = -1;
    while (f && fgets(line, sizeof line, f)) {
        char *p = strstr(line, pat);
        if (!p) continue;
        while (p > line && p[-1] >= '0' && p[-1] <= '9') p--;
        n = atoi(p);
    }
    if (f) fclose(f);
    return n;
}

START_TEST(test_overlap_same_bits)
{
    char *dir = eq_test_scratch("dist-overlap");
    char path[4200], cfg[4200], ld_ep[4300], logp[4300], dsarg[4300], ld_ctl[4300];
    eq_err e = { 0 };
    snprintf(path, sizeof path, "%s/ds", dir);
    eq_synth_cfg sc = { .classes = 4, .train_per_class = 16, .val_per_class = 2, .mean_pixels = 600, .seed = 7,
                        .nthreads = 1 };
    ck_assert_msg(eq_synth_imagefolder(path, &sc, &e) == EQ_OK, "%s", e.msg);
    snprintf(cfg, sizeof cfg, "%s/tiny.cfg", dir);
    FILE *f = fopen(cfg, "w");
    ck_assert_ptr_nonnull(f);
    /* the default experiment (LSQ 4-bit, weight decay, SGDR) at a tiny size;
     * buckets of 2 KiB so that there are many */
    fprintf(f,
            "[loader]\nthreads = 1\ndatasets = tiny=%s\n[data]\ndataset = tiny\nheight = 12\nwidth = 12\nchannels = 3\n"
            "global_batch = 16\naug_train = center\naug_val = center\n[model]\nnum_classes = 4\nin_channels = 3\n"
            "width_alpha = 0.125\n[train]\nname = ov\nmean = 0.5, 0.5, 0.5\nstd = 0.25, 0.25, 0.25\nthreads = 1\n"
            "eval_every = 0\ntimeout_ms = 20000\ndist_timeout_ms = 20000\nbucket_mb = 0.002\n",
            path);
    fclose(f);
    snprintf(ld_ep, sizeof ld_ep, "ipc://%s/loader", dir);
    snprintf(ld_ctl, sizeof ld_ctl, "ipc://%s/loader.ctl", dir);
    snprintf(dsarg, sizeof dsarg, "tiny=%s", path);
    char *lav[] = { "eq-loader", "--bind", ld_ep, "--control", ld_ctl, "--threads", "1", "--dataset", dsarg, NULL };
    snprintf(logp, sizeof logp, "%s/loader.log", dir);
    pid_t ld = eq_test_spawn(lav, logp);
    const char *off[] = { "train.overlap=false", NULL }, *on[] = { "train.overlap=true", NULL };
    const char *off2[] = { "train.overlap=false", "train.iter_size=2", NULL },
               *on2[] = { "train.overlap=true", "train.iter_size=2", NULL };
    s_two_ranks(dir, cfg, ld_ep, "off", off);
    s_two_ranks(dir, cfg, ld_ep, "on", on);
    s_two_ranks(dir, cfg, ld_ep, "off2", off2);
    s_two_ranks(dir, cfg, ld_ep, "on2", on2);
    kill(ld, SIGTERM);
    eq_test_wait(ld, 10000);
    int nb = s_buckets(dir, "on", "overlapping the backward");
    ck_assert_msg(nb > 4, "overlap: %d gradient buckets", nb);
    ck_assert_int_eq(s_buckets(dir, "off", "after the backward"), nb);
    eq_test_same_bits(dir, "off", "on", 0);
    eq_test_same_bits(dir, "off2", "on2", 0);
    eq_test_scratch_rm(dir);
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("dist");
    TCase *tc = tcase_create("ring");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_allreduce_1);
    tcase_add_test(tc, test_allreduce_2);
    tcase_add_test(tc, test_allreduce_3);
    tcase_add_test(tc, test_allreduce_4);
    tcase_add_loop_test(tc, test_allreduce_pieces, 0, 2);
    tcase_add_test(tc, test_mismatch);
    tcase_add_test(tc, test_silent_peer);
    tcase_add_test(tc, test_dp_gradients);
    tcase_add_test(tc, test_grad_hook);
    suite_add_tcase(s, tc);
    TCase *tr = tcase_create("rendezvous");
    tcase_set_timeout(tr, 20);
    tcase_add_test(tr, test_rendezvous);
    suite_add_tcase(s, tr);
    TCase *te = tcase_create("programs");
    tcase_set_timeout(te, 120);
    tcase_add_test(te, test_ranks_equal_iter_size);
    tcase_add_test(te, test_overlap_same_bits);
    suite_add_tcase(s, te);
    return s;
}

int main(void) { return eq_test_run(s_suite()); }
