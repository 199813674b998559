/*
 * tests/check_conv_bf.c -- the CPU backend's strided 1x1 convolutions
 * (trainer/cpu/conv_1x1.h: forward and backward data in place, backward
 * filter through the direct filter kernel of conv_direct_bf.c).
 *
 * 1. Against the im2col + SGEMM path (eq_cpu_conv2d_gemm_*) on random
 *    strided 1x1 shapes (strides 1..3 per axis, odd sizes, C and K not
 *    multiples of 16): relative error <= 1e-5, norm-wise; the AVX-512 and
 *    generic kernels give the same bits; every output is overwritten (the
 *    outputs start as NaN).
 * 2. 1, 2 and 3 threads give the same bits through the backend's members
 *    (ResNet-20's shortcuts, small batch), and the members run these
 *    kernels for the backward ops (the forward stays on im2col: conv.c).
 * 3. Which descriptors the kernels take.
 */
#include "trainer/backend.h"
#include "trainer/cpu/conv_1x1.h"
#include "trainer/cpu/conv_direct.h"
#include "tests/testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TOL 1e-5

#define OK(call)                                                              \
    do {                                                                      \
        eq_status s_ = (call);                                                \
        ck_assert_msg(s_ == EQ_OK, "%s failed: %s", #call, err.msg);          \
    } while (0)

static eq_backend *s_cpu(int nthreads)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(nthreads, &err);
    ck_assert_msg(be != NULL, "eq_backend_cpu_new: %s", err.msg);
    return be;
}

static uint64_t s_rng = 0x2545f4914f6cdd1dull;
typedef struct bufs {
    size_t n[3]; /* y, dx (x), dw (w) */
    float *x, *w, *dy;
} bufs;

static void s_bufs(bufs *b, const eq_conv2d_desc *d)
{
    b->n[0] = (size_t)(d->n * d->p * d->q * d->k);
    b->n[1] = (size_t)(d->n * d->h * d->w * d->c);
    b->n[2] = (size_t)(d->k * d->c * d->r * d->s);
    b->x = eq_test_vec(&s_rng, b->n[1], 1.0f);
    b->w = eq_test_vec(&s_rng, b->n[2], 0.3f);
    b->dy = eq_test_vec(&s_rng, b->n[0], 1.0f);
}

static void s_bufs_free(bufs *b)
{
    free(b->x), free(b->w), free(b->dy);
}

/* out = y, dx, dw; which: 0 the 1x1 kernels (auto), 1 generic, 2 im2col +
 * SGEMM, 3 the backend's members */
static void s_run(eq_backend *be, const eq_conv2d_desc *d, const bufs *b, int which,
                  float *out[3])
{
    eq_err err = {0};
    eq_cpu *cpu = be->context;
    for (int i = 0; i < 3; i++) out[i] = eq_test_vec(&s_rng, b->n[i], 0.0f);
    switch (which) {
    case 0:
    case 1: {
        int kern = which == 0 ? EQ_CPU_DIRECT_AUTO : EQ_CPU_DIRECT_GENERIC;
        OK(eq_cpu_conv_1x1_fwd(cpu, d, b->x, b->w, out[0], kern, &err));
        OK(eq_cpu_conv_1x1_bwd_data(cpu, d, b->dy, b->w, out[1], kern, &err));
        OK(eq_cpu_conv_direct_bwd_filter(cpu, d, b->x, b->dy, out[2], kern, &err));
        break;
    }
    case 2:
        OK(eq_cpu_conv2d_gemm_fwd(cpu, d, b->x, b->w, out[0], &err));
        OK(eq_cpu_conv2d_gemm_bwd_data(cpu, d, b->dy, b->w, out[1], &err));
        OK(eq_cpu_conv2d_gemm_bwd_filter(cpu, d, b->x, b->dy, out[2], &err));
        break;
    default:
        OK(eq_backend_conv2d_fwd(be, d, b->x, b->w, out[0], &err));
        OK(eq_backend_conv2d_bwd_data(be, d, b->dy, b->w, out[1], &err));
        OK(eq_backend_conv2d_bwd_filter(be, d, b->x, b->dy, out[2], &err));
        break;
    }
}

static void s_free3(float *o[3])
{
    for (int i = 0; i < 3; i++) free(o[i]);
}

static eq_conv2d_desc s_desc(int64_t n, int64_t h, int64_t w, int64_t c, int64_t k, int64_t sh,
                             int64_t sw)
{
    eq_err err = {0};
    eq_conv2d_desc d = {.n = n, .h = h, .w = w, .c = c, .k = k, .r = 1, .s = 1,
                        .stride_h = sh, .stride_w = sw, .dil_h = 1, .dil_w = 1, .groups = 1};
    OK(eq_conv2d_desc_init(&d, &err));
    return d;
}

#define NSHAPES 48

START_TEST(test_random_shapes)
{
    eq_backend *be = s_cpu(2);
    for (int i = 0; i < NSHAPES; i++) {
        int64_t sh = eq_test_uniform(&s_rng, 1, 3), sw = eq_test_uniform(&s_rng, 1, 3);
        if (sh == 1 && sw == 1) sw = 2;
        eq_conv2d_desc d = s_desc(eq_test_uniform(&s_rng, 1, 3), eq_test_uniform(&s_rng, 1, 13), eq_test_uniform(&s_rng, 1, 19),
                                  i % 4 == 0 ? eq_test_uniform(&s_rng, 33, 64) : eq_test_uniform(&s_rng, 1, 32),
                                  i % 3 == 0 ? eq_test_uniform(&s_rng, 33, 64) : eq_test_uniform(&s_rng, 1, 40), sh, sw);
        bufs b;
        s_bufs(&b, &d);
        float *mine[3], *gen[3], *gemm[3], *mem[3];
        s_run(be, &d, &b, 0, mine);
        s_run(be, &d, &b, 1, gen);
        s_run(be, &d, &b, 2, gemm);
        s_run(be, &d, &b, 3, mem);
        static const char *const what[3] = {"y", "dx", "dw"};
        for (int o = 0; o < 3; o++) {
            char msg[200];
            snprintf(msg, sizeof msg, "%s of n%lld %lldx%lld c%lld k%lld stride %lld,%lld",
                     what[o], (long long)d.n, (long long)d.h, (long long)d.w, (long long)d.c,
                     (long long)d.k, (long long)d.stride_h, (long long)d.stride_w);
            double e = eq_test_relerr(mine[o], gemm[o], b.n[o]);
            ck_assert_msg(e <= TOL, "%s: relative error %.3g vs im2col", msg, e);
            ck_assert_msg(!memcmp(mine[o], gen[o], b.n[o] * 4),
                          "%s: widest and generic kernels differ", msg);
            /* the backend's forward stays on im2col (conv.c says why) */
            if (eq_cpu_conv_1x1_ok(&d) && o > 0)
                ck_assert_msg(!memcmp(mine[o], mem[o], b.n[o] * 4),
                              "%s: the backend's member differs from the kernel", msg);
        }
        s_free3(mine), s_free3(gen), s_free3(gemm), s_free3(mem);
        s_bufs_free(&b);
    }
    eq_backend_destroy(&be);
}
END_TEST

/* ResNet-20's shortcuts (batch 3) and odd ones: same bits on 1, 2, 3
 * threads through the backend's members. */
START_TEST(test_threads_bitwise)
{
    static const int64_t shapes[][7] = {
        /* n, h, w, c, k, stride_h, stride_w */
        {3, 32, 32, 16, 32, 2, 2}, {3, 16, 16, 32, 64, 2, 2}, {2, 7, 9, 5, 37, 2, 3},
        {5, 33, 3, 64, 17, 3, 1},
    };
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int64_t *s = shapes[si];
        eq_conv2d_desc d = s_desc(s[0], s[1], s[2], s[3], s[4], s[5], s[6]);
        bufs b;
        s_bufs(&b, &d);
        float *first[3] = {0};
        for (int t = 1; t <= 3; t++) {
            eq_backend *be = s_cpu(t);
            float *o[3];
            s_run(be, &d, &b, 3, o);
            eq_backend_destroy(&be);
            if (t == 1) {
                memcpy(first, o, sizeof first);
                continue;
            }
            for (int i = 0; i < 3; i++)
                ck_assert_msg(!memcmp(first[i], o[i], b.n[i] * 4),
                              "shape %zu output %d: %d threads differ from 1", si, i, t);
            s_free3(o);
        }
        s_free3(first);
        s_bufs_free(&b);
    }
}
END_TEST

START_TEST(test_selection)
{
    eq_err err = {0};
    eq_conv2d_desc d = s_desc(2, 8, 8, 16, 32, 2, 2);
    __builtin_cpu_init();
    int wide = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
    ck_assert_int_eq(eq_cpu_conv_1x1_ok(&d), wide);
    if (!wide) return;
    struct {
        const char *what;
        eq_conv2d_desc d;
    } no[] = {
        {"stride 1", d}, {"padded", d}, {"3x3", d}, {"groups 2", d},
        {"c too wide", d}, {"k too wide", d},
    };
    no[0].d.stride_h = no[0].d.stride_w = 1;
    no[1].d.pad_h = 1;
    no[2].d.r = no[2].d.s = 3;
    no[3].d.groups = 2;
    no[4].d.c = EQ_CPU_1X1_MAX_CK + 1;
    no[5].d.k = EQ_CPU_1X1_MAX_CK + 1;
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        OK(eq_conv2d_desc_init(&no[i].d, &err));
        ck_assert_msg(!eq_cpu_conv_1x1_ok(&no[i].d), "%s: taken", no[i].what);
    }
    d.stride_h = 1;
    OK(eq_conv2d_desc_init(&d, &err));
    ck_assert_msg(eq_cpu_conv_1x1_ok(&d), "stride 1x2: not taken");
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("conv_bf");
    TCase *tc = tcase_create("conv_1x1");
    /* well under a second of CPU; generous for a machine at load 10+ */
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_random_shapes);
    tcase_add_test(tc, test_threads_bitwise);
    tcase_add_test(tc, test_selection);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return eq_test_run(s_suite());
}
