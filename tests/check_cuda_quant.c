/*
 * tests/check_cuda_quant.c -- eq_cuda_quant against quant/'s CPU
 * quantizers.
 *
 * Each case builds two identical eq_quant objects; one runs on the host
 * (eq_quant_forward/backward), the other through eq_cuda_quant on device
 * copies of the same random inputs (fresh seed each run, printed; never
 * zeros), for three training steps.  Outputs y and gx may differ on at most
 * 0.1 % of the elements (a level flipped by a division landing on a
 * rounding boundary), parameter gradients within 1e-5 relative, and the
 * counters and parameters stay equal.  Cases cover the device kernels (lsq
 * half/full range, per-tensor and per-channel, lsq-step unsigned/signed,
 * pact, dorefa activations) and the host path (dorefa weights, warm-up,
 * bin); each checks which path it took.
 *
 * Without a usable GPU the program prints why and exits 77 (SKIP).
 */
#include "config.h"

#include "core/rng.h"
#include "quant/quant.h"
#include "trainer/backend.h"
#include "trainer/cuda/cuda.h"
#include "trainer/cuda/quant_cuda.h"
#include "tests/testutil.h"

#include <time.h>

static uint64_t g_seed;

typedef struct s_case {
    const char *name;
    eq_quant_tag tag;
    eq_layout layout;
    int64_t shape[4];
    const char *kv[6]; /* KEY=VALUE, NULL-terminated */
    int device[3];     /* expected path per step: 1 device kernels, 0 host */
} s_case;

static const s_case s_cases[] = {
    {"lsq fm per-tensor", EQ_QTAG_FM, EQ_LAYOUT_NHWC, {4, 6, 6, 16}, {"method=lsq", "bit=2", NULL}, {1, 1, 1}},
    {"lsq fm per-channel", EQ_QTAG_FM, EQ_LAYOUT_NHWC, {4, 5, 5, 16},
     {"method=lsq", "bit=3", "quant_group=16", NULL}, {1, 1, 1}},
    {"lsq wt per-channel", EQ_QTAG_WT, EQ_LAYOUT_OIHW, {16, 8, 3, 3}, {"method=lsq", "bit=2", NULL}, {1, 1, 1}},
    {"lsq wt per-tensor", EQ_QTAG_WT, EQ_LAYOUT_OIHW, {16, 8, 3, 3},
     {"method=lsq", "bit=4", "quant_group=1", NULL}, {1, 1, 1}},
    {"lsq nc", EQ_QTAG_FM, EQ_LAYOUT_NC, {8, 100}, {"method=lsq", "bit=2", NULL}, {1, 1, 1}},
    {"lsq-step fm", EQ_QTAG_FM, EQ_LAYOUT_NHWC, {4, 6, 6, 8}, {"method=lsq-step", "bit=2", NULL}, {0, 1, 1}},
    {"lsq-step wt signed", EQ_QTAG_WT, EQ_LAYOUT_OIHW, {8, 4, 3, 3},
     {"method=lsq-step", "bit=3", NULL}, {0, 1, 1}},
    {"pact fm", EQ_QTAG_FM, EQ_LAYOUT_NHWC, {4, 6, 6, 8}, {"method=pact", "bit=4", "boundary=1.5", NULL}, {1, 1, 1}},
    {"dorefa fm", EQ_QTAG_FM, EQ_LAYOUT_NHWC, {4, 6, 6, 8}, {"method=dorefa", "bit=2", NULL}, {1, 1, 1}},
    {"dorefa wt (host)", EQ_QTAG_WT, EQ_LAYOUT_OIHW, {8, 4, 3, 3}, {"method=dorefa", "bit=2", NULL}, {0, 0, 0}},
    {"lsq warm-up", EQ_QTAG_FM, EQ_LAYOUT_NHWC, {2, 4, 4, 8}, {"method=lsq", "bit=2", "stable=1", NULL}, {0, 1, 1}},
};
#define NCASE ((int)(sizeof s_cases / sizeof s_cases[0]))

static float *s_rand(size_t n, float lo, float hi, uint64_t stream)
{
    eq_rng r;
    eq_rng_init(&r, g_seed, stream);
    float *p = malloc(n * sizeof *p + 4);
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++) {
        float v;
        do v = lo + (hi - lo) * eq_rng_uniform(&r);
        while (v == 0.0f);
        p[i] = v;
    }
    return p;
}

static eq_quant *s_make(const s_case *c, const eq_tensor_desc *xd)
{
    eq_quant_opts o;
    eq_quant_opts_init(&o, c->tag);
    eq_err err = {0};
    for (int i = 0; c->kv[i]; i++) {
        char key[32];
        const char *eqs = strchr(c->kv[i], '=');
        snprintf(key, sizeof key, "%.*s", (int)(eqs - c->kv[i]), c->kv[i]);
        ck_assert_msg(eq_quant_opts_set(&o, key, eqs + 1, &err) == EQ_OK, "%s: %s", c->name, err.msg);
    }
    eq_quant *q = eq_quant_new(&o, xd, &err);
    ck_assert_msg(q != NULL, "%s: %s", c->name, err.msg);
    return q;
}

static size_t s_diff(const float *a, const float *b, size_t n)
{
    size_t d = 0;
    for (size_t i = 0; i < n; i++) d += a[i] != b[i];
    return d;
}

START_TEST(test_quant)
{
    const s_case *c = &s_cases[_i];
    eq_err err = {0};
    eq_cuda_opts co = {.device = 0};
    eq_backend *be = eq_backend_cuda_new(&co, &err);
    ck_assert_msg(be != NULL, "%s", err.msg);
    int ndim = c->layout == EQ_LAYOUT_NC ? 2 : 4;
    eq_tensor_desc xd;
    ck_assert(eq_tensor_desc_init(&xd, EQ_DT_F32, c->layout, ndim, c->shape, &err) == EQ_OK);
    size_t n = (size_t)eq_tensor_numel(&xd);
    eq_quant *qh = s_make(c, &xd), *qd = s_make(c, &xd);
    eq_cuda_quant *cq = eq_cuda_quant_new(be, qd, &err);
    ck_assert_msg(cq != NULL, "%s", err.msg);
    float *y = malloc(n * 4), *gx = malloc(n * 4), *yd = malloc(n * 4), *gxd = malloc(n * 4);
    float *dx = eq_backend_alloc(be, n * 4, &err), *dy = eq_backend_alloc(be, n * 4, &err);
    float *dg = eq_backend_alloc(be, n * 4, &err), *dgx = eq_backend_alloc(be, n * 4, &err);
    ck_assert(dx && dy && dg && dgx);
    for (int step = 0; step < 3; step++) {
        float lo = c->tag == EQ_QTAG_WT ? -1.0f : -0.5f, hi = c->tag == EQ_QTAG_WT ? 1.0f : 2.5f;
        float *x = s_rand(n, lo, hi, 10 * (uint64_t)step + 1), *gy = s_rand(n, -1, 1, 10 * (uint64_t)step + 2);
        ck_assert(eq_quant_forward(qh, &xd, x, y, 1, &err) == EQ_OK);
        ck_assert(eq_quant_backward(qh, x, gy, gx, &err) == EQ_OK);
        ck_assert(eq_backend_upload(be, dx, x, n * 4, &err) == EQ_OK);
        ck_assert(eq_backend_upload(be, dg, gy, n * 4, &err) == EQ_OK);
        ck_assert_msg(eq_cuda_quant_forward(cq, &xd, dx, dy, 1, &err) == EQ_OK, "%s: %s", c->name, err.msg);
        ck_assert_int_eq(eq_cuda_quant_on_device(cq), c->device[step]);
        ck_assert_msg(eq_cuda_quant_backward(cq, dx, dg, dgx, &err) == EQ_OK, "%s: %s", c->name, err.msg);
        ck_assert(eq_backend_download(be, yd, dy, n * 4, &err) == EQ_OK);
        ck_assert(eq_backend_download(be, gxd, dgx, n * 4, &err) == EQ_OK);
        size_t fy = s_diff(y, yd, n), fg = s_diff(gx, gxd, n);
        ck_assert_msg(fy * 1000 <= n && fg * 1000 <= n,
                      "%s step %d: %zu of %zu outputs and %zu gradients differ (seed %llu)", c->name,
                      step, fy, n, fg, (unsigned long long)g_seed);
        /* state and parameter gradients */
        ck_assert_uint_eq(eq_quant_tensor_count(qh), eq_quant_tensor_count(qd));
        for (size_t t = 0; t < eq_quant_tensor_count(qh); t++) {
            eq_quant_tensor *a = eq_quant_tensor_at(qh, t), *b = eq_quant_tensor_at(qd, t);
            ck_assert_msg(memcmp(a->data, b->data, (size_t)a->numel * 4) == 0,
                          "%s step %d: state %s differs", c->name, step, a->name);
            if (a->grad) {
                double e = eq_test_relerr(b->grad, a->grad, (size_t)a->numel);
                ck_assert_msg(e <= 1e-5, "%s step %d: grad of %s: relative error %.3g (seed %llu)",
                              c->name, step, a->name, e, (unsigned long long)g_seed);
                /* an SGD step on both, so the next step sees moved parameters */
                for (int64_t j = 0; j < a->numel; j++) {
                    a->data[j] -= 0.01f * a->grad[j];
                    b->data[j] -= 0.01f * a->grad[j];
                }
            }
        }
        free(x);
        free(gy);
    }
    eq_backend_release(be, dx);
    eq_backend_release(be, dy);
    eq_backend_release(be, dg);
    eq_backend_release(be, dgx);
    free(y);
    free(gx);
    free(yd);
    free(gxd);
    eq_cuda_quant_destroy(&cq);
    ck_assert_ptr_null(cq);
    eq_quant_destroy(&qh);
    eq_quant_destroy(&qd);
    eq_backend_destroy(&be);
}
END_TEST

START_TEST(test_args)
{
    eq_err err = {0};
    eq_backend *cpu = eq_backend_cpu_new(1, &err);
    eq_quant_opts o;
    eq_quant_opts_init(&o, EQ_QTAG_FM);
    eq_tensor_desc xd;
    int64_t shape[2] = {2, 3};
    ck_assert(eq_tensor_desc_init(&xd, EQ_DT_F32, EQ_LAYOUT_NC, 2, shape, &err) == EQ_OK);
    eq_quant *q = eq_quant_new(&o, &xd, &err);
    ck_assert_ptr_nonnull(q);
    ck_assert_ptr_null(eq_cuda_quant_new(cpu, q, &err)); /* not a cuda backend */
    ck_assert_int_eq(err.code, EQ_ERR_INVALID);
    eq_cuda_opts co = {.device = 0};
    eq_backend *be = eq_backend_cuda_new(&co, &err);
    eq_cuda_quant *cq = eq_cuda_quant_new(be, q, &err);
    ck_assert_ptr_nonnull(cq);
    float *d = eq_backend_alloc(be, 64, &err);
    ck_assert_int_eq(eq_cuda_quant_backward(cq, d, d, d, &err), EQ_ERR_INVALID); /* no forward */
    eq_backend_release(be, d);
    eq_cuda_quant_destroy(&cq);
    eq_quant_destroy(&q);
    eq_backend_destroy(&be);
    eq_backend_destroy(&cpu);
}
END_TEST

int main(void)
{
    char why[256] = "";
    if (eq_cuda_device_count(why, sizeof why) == 0) {
        printf("SKIP: check_cuda_quant: no CUDA device: %s\n", why);
        return 77;
    }
    const char *s = getenv("EQ_TEST_SEED");
    g_seed = s && *s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    printf("check_cuda_quant: seed %llu\n", (unsigned long long)g_seed);
    Suite *su = suite_create("cuda_quant");
    TCase *tc = tcase_create("parity");
    tcase_add_loop_test(tc, test_quant, 0, NCASE);
    tcase_add_test(tc, test_args);
    suite_add_tcase(su, tc);
    /* no fork: CUDA is initialised in this process already */
    SRunner *sr = srunner_create(su);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
