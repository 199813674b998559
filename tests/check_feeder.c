/*
 * tests/check_feeder.c -- trainer/feeder.h against real eq-loader servers
 * (in-process, on inproc sockets): steps come in order with the bytes a
 * single loader gives, while a loader is added and another removed in the
 * middle of a pass; and the add/remove errors.  Also the trainer's staging
 * of a mixed batch (eq_train_stage): the fp32 blend and the partners'
 * labels and lambdas from a real loader's plan.
 */
#include <pthread.h>
#include <zmq.h>

#include "loader/loader.h"
#include "loader/server.h"
#include "testutil.h"
#include "trainer/feeder.h"
#include "trainer/train.h"

typedef struct s_srv {
    eq_loader_server *s;
    pthread_t th;
} s_srv;

static void *s_serve(void *p)
{
    s_srv *v = p;
    eq_err e = { 0 };
    eq_loader_server_run(v->s, &e);
    return NULL;
}

static void s_srv_start(s_srv *v, void *zctx, const char *ep, const char *ds)
{
    eq_err e = { 0 };
    const char *dss[1] = { ds };
    eq_loader_server_cfg c = { .bind = ep, .datasets = dss, .ndatasets = 1, .threads = 1 };
    v->s = eq_loader_server_new(zctx, &c, &e);
    ck_assert_msg(v->s != NULL, "%s", e.msg);
    ck_assert_int_eq(pthread_create(&v->th, NULL, s_serve, v), 0);
}

static void s_srv_stop(s_srv *v)
{
    eq_loader_server_stop(v->s);
    pthread_join(v->th, NULL);
    eq_loader_server_destroy(&v->s);
}

#define S_STEPS 12
#define S_G 8

typedef struct s_pass {
    uint64_t step[S_STEPS];
    uint8_t *img[S_STEPS];
    size_t bytes;
    int n;
} s_pass;

static void s_pass_free(s_pass *p)
{
    for (int i = 0; i < p->n; i++) free(p->img[i]);
}

/* Run a pass of S_STEPS steps; before step `add_at` add loader `add`, before
 * step `rm_at` remove loader `rm` (-1: never). */
static void s_run(eq_feeder *f, int job, s_pass *out, int add_at, const char *add, int rm_at, const char *rm)
{
    eq_err e = { 0 };
    ck_assert_msg(eq_feeder_pass(f, job, 1, 0, S_STEPS, 0, S_G, UINT64_MAX, &e) == EQ_OK, "%s", e.msg);
    memset(out, 0, sizeof *out);
    for (int s = 0;; s++) {
        if (s == add_at) ck_assert_msg(eq_feeder_add_loader(f, add, &e) == EQ_OK, "add: %s", e.msg);
        if (s == rm_at) ck_assert_msg(eq_feeder_remove_loader(f, rm, &e) == EQ_OK, "remove: %s", e.msg);
        eq_feeder_batch b;
        eq_status st = eq_feeder_next(f, &b, &e);
        if (st == EQ_ERR_NOTFOUND) break;
        ck_assert_msg(st == EQ_OK, "step %d: %s", s, e.msg);
        ck_assert_int_lt(out->n, S_STEPS);
        ck_assert_uint_eq(b.count, S_G);
        out->bytes = (size_t)b.count * b.h * b.w * b.c;
        out->step[out->n] = b.step;
        out->img[out->n] = malloc(out->bytes);
        memcpy(out->img[out->n], b.images, out->bytes);
        out->n++;
    }
}

START_TEST(test_add_remove_loader)
{
    char *dir = eq_test_scratch("feeder");
    char ds[4200], arg[4300], cfg[4200];
    eq_err e = { 0 };
    snprintf(ds, sizeof ds, "%s/ds", dir);
    eq_synth_cfg sc = { .classes = 3, .train_per_class = 40, .val_per_class = 1, .mean_pixels = 500, .seed = 2,
                        .nthreads = 1 };
    ck_assert_msg(eq_synth_imagefolder(ds, &sc, &e) == EQ_OK, "%s", e.msg);
    snprintf(arg, sizeof arg, "tiny=%s", ds);
    snprintf(cfg, sizeof cfg, "%s/c.cfg", dir);
    FILE *fp = fopen(cfg, "w");
    fprintf(fp, "[loader]\ndatasets = %s\n[data]\ndataset = tiny\nheight = 8\nwidth = 8\nchannels = 3\n"
                "global_batch = %d\naug_train = rrc\n[model]\nin_channels = 3\n[train]\nmean = 0.5, 0.5, 0.5\n"
                "std = 0.2, 0.2, 0.2\n",
            arg, S_G);
    fclose(fp);
    eq_experiment x;
    ck_assert_msg(eq_experiment_load(&x, cfg, NULL, 0, NULL, &e) == EQ_OK, "%s", e.msg);
    eq_msg job;
    ck_assert_int_eq(eq_loader_data_job(&x.data, "train", &job, &e), EQ_OK);

    void *zctx = zmq_ctx_new();
    s_srv a, b;
    s_srv_start(&a, zctx, "inproc://ld-a", arg);
    s_srv_start(&b, zctx, "inproc://ld-b", arg);
    /* Reference: loader a alone. */
    const char *eps_a[1] = { "inproc://ld-a" };
    eq_feeder_cfg fc = { .loaders = eps_a, .nloaders = 1, .inflight = 4, .timeout_ms = 5000, .give_up_ms = 20000 };
    eq_feeder *f = eq_feeder_new(zctx, &fc, &e);
    ck_assert_ptr_nonnull(f);
    eq_msg_job_ok ok;
    int j;
    ck_assert_msg(eq_feeder_add_job(f, &job, &ok, &j, &e) == EQ_OK, "%s", e.msg);
    s_pass ref;
    s_run(f, j, &ref, -1, NULL, -1, NULL);
    ck_assert_int_eq(ref.n, S_STEPS);
    /* errors: the last loader cannot go, an unknown one is not found, a
     * loader is not added twice */
    ck_assert_int_eq(eq_feeder_remove_loader(f, "inproc://ld-a", &e), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_feeder_remove_loader(f, "inproc://nowhere", &e), EQ_ERR_NOTFOUND);
    ck_assert_int_eq(eq_feeder_add_loader(f, "inproc://ld-a", &e), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_feeder_add_loader(f, "", &e), EQ_ERR_INVALID);
    eq_feeder_destroy(&f);

    /* Now: start with a, add b before step 3 (requests are in flight on a),
     * remove a before step 6 (its outstanding requests go to b). */
    eq_loader_stats sa0, sb0, sa1, sb1;
    f = eq_feeder_new(zctx, &fc, &e);
    ck_assert_ptr_nonnull(f);
    ck_assert_msg(eq_feeder_add_job(f, &job, &ok, &j, &e) == EQ_OK, "%s", e.msg);
    eq_loader_server_stats(a.s, &sa0);
    eq_loader_server_stats(b.s, &sb0);
    s_pass got;
    s_run(f, j, &got, 3, "inproc://ld-b", 6, "inproc://ld-a");
    eq_loader_server_stats(a.s, &sa1);
    eq_loader_server_stats(b.s, &sb1);
    ck_assert_int_eq(got.n, S_STEPS);
    for (int s = 0; s < S_STEPS; s++) {
        ck_assert_uint_eq(got.step[s], (uint64_t)s);
        ck_assert_msg(!memcmp(got.img[s], ref.img[s], ref.bytes), "step %d: other bytes than loader a alone gave", s);
    }
    ck_assert_msg(sb1.batches_sent > sb0.batches_sent, "loader b served nothing after it was added");
    eq_feeder_stats st;
    eq_feeder_stats_get(f, &st);
    ck_assert_uint_eq(st.loaders, 1);
    ck_assert_uint_eq(st.batches, S_STEPS);
    ck_assert_uint_eq(st.samples, S_STEPS * S_G);
    /* a removed loader's endpoint can be added again */
    ck_assert_msg(eq_feeder_add_loader(f, "inproc://ld-a", &e) == EQ_OK, "%s", e.msg);
    eq_feeder_stats_get(f, &st);
    ck_assert_uint_eq(st.loaders, 2);
    eq_feeder_destroy(&f);
    (void)sa0;
    (void)sa1;
    s_pass_free(&ref);
    s_pass_free(&got);
    s_srv_stop(&a);
    s_srv_stop(&b);
    zmq_ctx_term(zctx);
    eq_test_scratch_rm(dir);
}
END_TEST

/* Mixup from a real loader's plan to the trainer's fp32 blend
 * (eq_train_stage), against the formula computed in double here. */
START_TEST(test_mixup_stage)
{
    char *dir = eq_test_scratch("feeder-mix");
    char ds[4200], arg[4300], cfg[4200];
    eq_err e = { 0 };
    snprintf(ds, sizeof ds, "%s/ds", dir);
    eq_synth_cfg sc = { .classes = 4, .train_per_class = 8, .val_per_class = 1, .mean_pixels = 400, .seed = 9,
                        .nthreads = 1 };
    ck_assert_msg(eq_synth_imagefolder(ds, &sc, &e) == EQ_OK, "%s", e.msg);
    snprintf(arg, sizeof arg, "tiny=%s", ds);
    snprintf(cfg, sizeof cfg, "%s/c.cfg", dir);
    FILE *fp = fopen(cfg, "w");
    fprintf(fp, "[loader]\ndatasets = %s\n[data]\ndataset = tiny\nheight = 6\nwidth = 6\nchannels = 3\n"
                "global_batch = 16\naug_train = center\nmixup_alpha = 0.7\nmix_mode = elem\nmix_block = 8\n"
                "[model]\nin_channels = 3\nnum_classes = 4\n[train]\nmean = 0.4, 0.5, 0.6\nstd = 0.2, 0.25, 0.3\n",
            arg);
    fclose(fp);
    eq_experiment x;
    ck_assert_msg(eq_experiment_load(&x, cfg, NULL, 0, NULL, &e) == EQ_OK, "%s", e.msg);
    eq_msg job;
    ck_assert_int_eq(eq_loader_data_job(&x.data, "train", &job, &e), EQ_OK);
    void *zctx = zmq_ctx_new();
    s_srv a;
    s_srv_start(&a, zctx, "inproc://ld-mix", arg);
    const char *eps[1] = { "inproc://ld-mix" };
    eq_feeder_cfg fc = { .loaders = eps, .nloaders = 1, .timeout_ms = 5000, .give_up_ms = 20000 };
    eq_feeder *f = eq_feeder_new(zctx, &fc, &e);
    ck_assert_ptr_nonnull(f);
    eq_msg_job_ok ok;
    int j;
    ck_assert_msg(eq_feeder_add_job(f, &job, &ok, &j, &e) == EQ_OK, "%s", e.msg);
    /* rank 1 of 2: the second half of each global step */
    ck_assert_msg(eq_feeder_pass(f, j, 0, 0, 2, 8, 8, UINT64_MAX, &e) == EQ_OK, "%s", e.msg);
    int mixed_rows = 0, batches = 0;
    for (;;) {
        eq_feeder_batch b;
        eq_status st = eq_feeder_next(f, &b, &e);
        if (st == EQ_ERR_NOTFOUND) break;
        ck_assert_msg(st == EQ_OK, "%s", e.msg);
        ck_assert_str_eq(b.mix, "mixup");
        const int rows = 10; /* more rows than samples: the rest must be zero */
        const size_t per = (size_t)b.h * b.w * b.c;
        float *dst = malloc(rows * per * sizeof *dst), lam[10];
        int32_t ya[10], yb[10];
        bool mixed = false;
        ck_assert_msg(eq_train_stage(&b, rows, 4, x.train.mean, x.train.std, dst, ya, yb, lam, &mixed, &e) == EQ_OK,
                      "%s", e.msg);
        ck_assert(mixed);
        for (uint32_t i = 0; i < b.count; i++) {
            int32_t p, y, yp;
            float l;
            memcpy(&p, (const uint8_t *)b.mix_index + 4 * i, 4);
            memcpy(&l, (const uint8_t *)b.mix_lambda + 4 * i, 4);
            memcpy(&y, (const uint8_t *)b.labels + 4 * i, 4);
            memcpy(&yp, (const uint8_t *)b.labels + 4 * (size_t)p, 4);
            ck_assert(!b.labels_i64);
            ck_assert_int_eq(ya[i], y);
            ck_assert_int_eq(yb[i], yp);
            ck_assert(lam[i] == l);
            mixed_rows += p != (int32_t)i && l < 1.0f;
            for (size_t k = 0; k < per; k++) {
                size_t c = k % b.c;
                double va = (b.images[i * per + k] / 255.0 - x.train.mean[c]) / x.train.std[c];
                double vb = (b.images[(size_t)p * per + k] / 255.0 - x.train.mean[c]) / x.train.std[c];
                double want = l * va + (1.0 - l) * vb;
                ck_assert_msg(fabs(dst[i * per + k] - want) <= 1e-5 * (1 + fabs(want)),
                              "sample %u element %zu: %g, expected %g (lambda %g, partner %d)", i, k,
                              (double)dst[i * per + k], want, (double)l, p);
            }
        }
        for (size_t k = b.count * per; k < rows * per; k++) ck_assert(dst[k] == 0.0f);
        for (int i = (int)b.count; i < rows; i++) ck_assert(ya[i] == 0 && yb[i] == 0 && lam[i] == 1.0f);
        free(dst);
        batches++;
    }
    ck_assert_int_eq(batches, 2);
    ck_assert_msg(mixed_rows > 0, "no sample was blended with another");
    eq_feeder_destroy(&f);
    s_srv_stop(&a);
    zmq_ctx_term(zctx);
    eq_test_scratch_rm(dir);
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("feeder");
    TCase *tc = tcase_create("loaders");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_add_remove_loader);
    tcase_add_test(tc, test_mixup_stage);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return eq_test_run(s_suite()); }
