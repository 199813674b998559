/*
 * tests/check_backend_direct.c -- the CPU backend's direct convolution
 * kernels (trainer/cpu/conv_direct.h) for stride-1 and stride-2 layers.
 *
 * 1. Against the im2col + SGEMM path (eq_cpu_conv2d_gemm_*) and a naive
 *    double-precision convolution written here, on random shapes (odd
 *    sizes, C and K not multiples of 8 or 16, rectangular kernels up to
 *    5x5, every padding 0..R-1, batch 1..3): relative error <= 1e-5,
 *    norm-wise, for forward, backward data and backward filter.
 * 2. The AVX-512, AVX2+FMA and generic fmaf() kernels give the same bits
 *    (the same FMA chains in the same order; on a CPU without AVX-512 or
 *    AVX2 the wider variants fall back and compare with themselves).
 * 3. 1, 2 and 3 threads give the same bits, through the backend's members.
 * 4. Which descriptors the direct kernels take, and that the backend's
 *    conv members run them for those (same bits as calling them directly).
 * 5. Large images (many bands of rows per image, each padded into a
 *    thread's scratch), masked stores for K = 3, against the im2col path.
 * 6. A workspace left full of NaNs by an earlier op changes nothing: the
 *    forward and backward data read only the padded rows they write.
 */
#include "trainer/backend.h"
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

#define CHECK_CLOSE(what, a, ref, n, tol)                                                    \
    do {                                                                                     \
        double e_ = eq_test_relerr((a), (ref), (n));                                         \
        ck_assert_msg(e_ <= (tol), "%s: relative error %.3g > %.3g", (what), e_, (double)(tol)); \
    } while (0)

static eq_backend *s_cpu(int nthreads)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(nthreads, &err);
    ck_assert_msg(be != NULL, "eq_backend_cpu_new: %s", err.msg);
    return be;
}

static uint64_t s_rng = 0x853c49e6748fea9bull;
typedef struct bufs {
    size_t nx, ny, nw;
    float *x, *w, *dy;
} bufs;

static void s_bufs(bufs *b, const eq_conv2d_desc *d)
{
    b->nx = (size_t)(d->n * d->h * d->w * d->c);
    b->ny = (size_t)(d->n * d->p * d->q * d->k);
    b->nw = (size_t)(d->k * d->c * d->r * d->s);
    b->x = eq_test_vec(&s_rng, b->nx, 1.0f);
    b->w = eq_test_vec(&s_rng, b->nw, 0.3f);
    b->dy = eq_test_vec(&s_rng, b->ny, 1.0f);
}

static void s_bufs_free(bufs *b)
{
    free(b->x), free(b->w), free(b->dy);
}

/* out[0] = y, out[1] = dx, out[2] = dw; which: 0 direct (auto kernels),
 * 1 direct (generic kernels), 2 im2col + SGEMM, 3 the backend's members,
 * 4 direct (at most AVX2). */
static void s_run(eq_backend *be, const eq_conv2d_desc *d, const bufs *b, int which,
                  float *out[3])
{
    eq_err err = {0};
    eq_cpu *cpu = be->context;
    out[0] = eq_test_vec(&s_rng, b->ny, 0.0f);
    out[1] = eq_test_vec(&s_rng, b->nx, 0.0f);
    out[2] = eq_test_vec(&s_rng, b->nw, 0.0f);
    switch (which) {
    case 0:
    case 1:
    case 4: {
        int kern = which == 0   ? EQ_CPU_DIRECT_AUTO
                   : which == 1 ? EQ_CPU_DIRECT_GENERIC
                                : EQ_CPU_DIRECT_AVX2;
        OK(eq_cpu_conv_direct_fwd(cpu, d, b->x, b->w, out[0], kern, &err));
        OK(eq_cpu_conv_direct_bwd_data(cpu, d, b->dy, b->w, out[1], kern, &err));
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

/* Naive double-precision y, dx, dw (dilation 1, one group), rounded to
 * float. */
static void s_naive(const eq_conv2d_desc *d, const bufs *b, float *out[3])
{
    double *ry = calloc(b->ny, 8), *rdx = calloc(b->nx, 8), *rdw = calloc(b->nw, 8);
    const int64_t C = d->c, K = d->k, R = d->r, S = d->s, H = d->h, W = d->w;
    for (int64_t n = 0; n < d->n; n++)
        for (int64_t p = 0; p < d->p; p++)
            for (int64_t q = 0; q < d->q; q++)
                for (int64_t r = 0; r < R; r++)
                    for (int64_t s = 0; s < S; s++) {
                        int64_t ih = p * d->stride_h - d->pad_h + r;
                        int64_t iw = q * d->stride_w - d->pad_w + s;
                        if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                        size_t xo = (size_t)(((n * H + ih) * W + iw) * C);
                        for (int64_t k = 0; k < K; k++) {
                            size_t o = (size_t)(((n * d->p + p) * d->q + q) * K + k);
                            double g = b->dy[o], acc = 0.0;
                            for (int64_t c = 0; c < C; c++) {
                                size_t wi = (size_t)(((k * C + c) * R + r) * S + s);
                                acc += (double)b->x[xo + c] * b->w[wi];
                                rdx[xo + c] += g * b->w[wi];
                                rdw[wi] += g * b->x[xo + c];
                            }
                            ry[o] += acc;
                        }
                    }
    out[0] = malloc(b->ny * 4 + 4), out[1] = malloc(b->nx * 4 + 4), out[2] = malloc(b->nw * 4 + 4);
    for (size_t i = 0; i < b->ny; i++) out[0][i] = (float)ry[i];
    for (size_t i = 0; i < b->nx; i++) out[1][i] = (float)rdx[i];
    for (size_t i = 0; i < b->nw; i++) out[2][i] = (float)rdw[i];
    free(ry), free(rdx), free(rdw);
}

/* Widest C and K of the random shapes (the naive reference is O(N*P*Q*
 * K*C*R*S) three times over): above 64 so that the forward's chains are
 * cut into per-tap channel slices, some of them uneven. */
#define RAND_MAX_CK (EQ_CPU_DIRECT_MAX_C < 160 ? EQ_CPU_DIRECT_MAX_C : 160)

/* A random shape the direct kernels take. */
static eq_conv2d_desc s_shape(int i)
{
    eq_conv2d_desc d;
    eq_err err = {0};
    for (;;) {
        /* every other shape stride 2 (on one axis or both) */
        d = (eq_conv2d_desc){.n = eq_test_uniform(&s_rng, 1, 3), .stride_h = 1 + (i % 2 && eq_test_next(&s_rng) % 3),
                             .stride_w = 1 + (i % 2 && eq_test_next(&s_rng) % 3), .dil_h = 1, .dil_w = 1,
                             .groups = 1};
        d.r = eq_test_uniform(&s_rng, 1, i % 4 == 0 ? 5 : 3);
        d.s = eq_test_uniform(&s_rng, 1, i % 4 == 0 ? 5 : 3);
        d.pad_h = eq_test_uniform(&s_rng, 0, d.r - 1);
        d.pad_w = eq_test_uniform(&s_rng, 0, d.s - 1);
        d.h = eq_test_uniform(&s_rng, 1, 13);
        d.w = eq_test_uniform(&s_rng, 1, 17);
        /* mostly thin, some up to the limit, and some at the upper half of
         * the limit on small maps */
        d.c = i % 5 == 0 ? eq_test_uniform(&s_rng, 25, RAND_MAX_CK) : eq_test_uniform(&s_rng, 1, 24);
        d.k = i % 7 == 0 ? eq_test_uniform(&s_rng, 33, RAND_MAX_CK) : eq_test_uniform(&s_rng, 1, 40);
        if (i % 10 == 3) {
            d.n = eq_test_uniform(&s_rng, 1, 2);
            d.c = eq_test_uniform(&s_rng, RAND_MAX_CK / 2 + 1, RAND_MAX_CK);
            d.k = eq_test_uniform(&s_rng, RAND_MAX_CK / 2 + 1, RAND_MAX_CK);
            d.r = eq_test_uniform(&s_rng, 1, 3), d.s = eq_test_uniform(&s_rng, 1, 3);
            d.pad_h = eq_test_uniform(&s_rng, 0, d.r - 1), d.pad_w = eq_test_uniform(&s_rng, 0, d.s - 1);
            d.h = eq_test_uniform(&s_rng, 1, 5), d.w = eq_test_uniform(&s_rng, 1, 6);
        }
        if (d.h + 2 * d.pad_h < d.r || d.w + 2 * d.pad_w < d.s) continue;
        ck_assert_int_eq(eq_conv2d_desc_init(&d, &err), EQ_OK);
        if (eq_cpu_conv_direct_ok(&d)) return d;
    }
}

#define NSHAPES 40

START_TEST(test_random_shapes)
{
    eq_backend *be = s_cpu(2);
    s_rng = 0x853c49e6748fea9bull + (uint64_t)_i * 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < NSHAPES / 4; i++) {
        eq_conv2d_desc d = s_shape(i + _i * (NSHAPES / 4));
        bufs b;
        s_bufs(&b, &d);
        float *dir[3], *gen[3], *gemm[3], *ref[3], *avx2[3];
        s_run(be, &d, &b, 0, dir);
        s_run(be, &d, &b, 1, gen);
        s_run(be, &d, &b, 4, avx2);
        s_run(be, &d, &b, 2, gemm);
        s_naive(&d, &b, ref);
        size_t sz[3] = {b.ny, b.nx, b.nw};
        static const char *const what[3] = {"y", "dx", "dw"};
        for (int o = 0; o < 3; o++) {
            char msg[256];
            snprintf(msg, sizeof msg,
                     "%s of n%lld %lldx%lld c%lld k%lld %lldx%lld pad %lld,%lld stride %lld,%lld "
                     "(vs %%s)",
                     what[o], (long long)d.n, (long long)d.h, (long long)d.w, (long long)d.c,
                     (long long)d.k, (long long)d.r, (long long)d.s, (long long)d.pad_h,
                     (long long)d.pad_w, (long long)d.stride_h, (long long)d.stride_w);
            char m1[300], m2[300];
            snprintf(m1, sizeof m1, msg, "im2col");
            snprintf(m2, sizeof m2, msg, "naive");
            CHECK_CLOSE(m1, dir[o], gemm[o], sz[o], TOL);
            CHECK_CLOSE(m2, dir[o], ref[o], sz[o], TOL);
            ck_assert_msg(!memcmp(dir[o], gen[o], sz[o] * 4),
                          "%s: widest and generic kernels differ", m1);
            ck_assert_msg(!memcmp(avx2[o], gen[o], sz[o] * 4),
                          "%s: AVX2 and generic kernels differ", m1);
        }
        s_free3(avx2), s_free3(dir), s_free3(gen), s_free3(gemm), s_free3(ref);
        s_bufs_free(&b);
    }
    eq_backend_destroy(&be);
}
END_TEST

/* ResNet-20's shapes (small batch) and odd ones: same bits on 1, 2 and 3
 * threads, through the backend's members and the direct calls alike. */
START_TEST(test_threads_bitwise)
{
    static const int64_t shapes[][8] = {
        /* n, h, w, c, k, r, pad, stride */
        {3, 32, 32, 16, 16, 3, 1, 1}, {2, 16, 16, 32, 32, 3, 1, 1}, {3, 8, 8, 64, 64, 3, 1, 1},
        {2, 11, 7, 3, 16, 3, 1, 1},   {3, 9, 13, 20, 13, 5, 2, 1},  {1, 5, 6, 7, 9, 2, 0, 1},
        /* wide: blocked forward chains (whole taps, per-tap slices) */
        {2, 7, 7, 130, 40, 3, 1, 1},  {1, 6, 6, 200, 96, 3, 1, 1},  {1, 5, 5, 48, 24, 5, 2, 1},
        /* stride 2: ResNet-20's downsampling 3x3s, odd sizes, blocked chains */
        {3, 32, 32, 16, 32, 3, 1, 2}, {2, 16, 16, 32, 64, 3, 1, 2}, {2, 9, 11, 5, 7, 3, 1, 2},
        {1, 12, 12, 64, 40, 3, 1, 2}, {2, 8, 7, 6, 5, 2, 1, 2},
    };
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int64_t *t = shapes[si];
        eq_conv2d_desc d = {.n = t[0], .h = t[1], .w = t[2], .c = t[3], .k = t[4], .r = t[5],
                            .s = t[5], .stride_h = t[7], .stride_w = t[7], .pad_h = t[6],
                            .pad_w = t[6], .dil_h = 1, .dil_w = 1, .groups = 1};
        eq_err err = {0};
        OK(eq_conv2d_desc_init(&d, &err));
        ck_assert(eq_cpu_conv_direct_ok(&d));
        bufs b;
        s_bufs(&b, &d);
        size_t sz[3] = {b.ny, b.nx, b.nw};
        float *first[3] = {0};
        for (int th = 1; th <= 3; th++) {
            eq_backend *be = s_cpu(th);
            float *viabe[3], *dir[3];
            s_run(be, &d, &b, 3, viabe);
            s_run(be, &d, &b, 0, dir);
            for (int o = 0; o < 3; o++) {
                ck_assert_msg(!memcmp(viabe[o], dir[o], sz[o] * 4),
                              "shape %zu output %d: the backend did not run the direct kernel",
                              si, o);
                if (th == 1) continue;
                ck_assert_msg(!memcmp(first[o], dir[o], sz[o] * 4),
                              "shape %zu output %d: %d threads differ from 1", si, o, th);
            }
            if (th == 1) {
                memcpy(first, dir, sizeof first);
            } else {
                s_free3(dir);
            }
            s_free3(viabe);
            eq_backend_destroy(&be);
        }
        s_free3(first);
        s_bufs_free(&b);
    }
}
END_TEST

START_TEST(test_selection)
{
    eq_err err = {0};
    eq_conv2d_desc base = {.n = 2, .h = 8, .w = 8, .c = 16, .k = 16, .r = 3, .s = 3,
                           .stride_h = 1, .stride_w = 1, .pad_h = 1, .pad_w = 1,
                           .dil_h = 1, .dil_w = 1, .groups = 1};
    eq_conv2d_desc d = base;
    OK(eq_conv2d_desc_init(&d, &err));
    ck_assert(eq_cpu_conv_direct_ok(&d));
    struct {
        const char *what;
        eq_conv2d_desc d;
    } no[] = {
        {"stride 3", base}, {"groups 2", base}, {"dilation 2", base}, {"1x1", base},
        {"pad = kernel", base}, {"c too wide", base}, {"k too wide", base},
    };
    no[0].d.stride_h = 3;
    no[1].d.groups = 2;
    no[2].d.dil_w = 2;
    no[3].d.r = no[3].d.s = 1, no[3].d.pad_h = no[3].d.pad_w = 0;
    no[4].d.pad_w = 3;
    no[5].d.c = EQ_CPU_DIRECT_MAX_C + 1;
    no[6].d.k = EQ_CPU_DIRECT_MAX_K + 1;
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        OK(eq_conv2d_desc_init(&no[i].d, &err));
        ck_assert_msg(!eq_cpu_conv_direct_ok(&no[i].d), "%s: taken", no[i].what);
    }
    /* stride 2 is taken, on either axis, up to EQ_CPU_DIRECT_MAX_S2 channels */
    d = base;
    d.stride_w = 2;
    OK(eq_conv2d_desc_init(&d, &err));
    ck_assert(eq_cpu_conv_direct_ok(&d));
    d.k = EQ_CPU_DIRECT_MAX_S2 + 1;
    OK(eq_conv2d_desc_init(&d, &err));
    ck_assert_msg(!eq_cpu_conv_direct_ok(&d), "stride 2, k too wide: taken");
    d.k = base.k, d.r = d.s = 5, d.pad_h = d.pad_w = 2;
    OK(eq_conv2d_desc_init(&d, &err));
    ck_assert_msg(!eq_cpu_conv_direct_ok(&d), "stride 2, 5x5: taken");
    /* 1xS and Rx1 kernels are taken (not 1x1) */
    d = base;
    d.r = 1, d.pad_h = 0;
    OK(eq_conv2d_desc_init(&d, &err));
    ck_assert(eq_cpu_conv_direct_ok(&d));
}
END_TEST

/* Images of 190x190x64 floats: many bands of rows per image for the
 * forward and backward data, few slices for the backward filter; K = 3
 * takes the masked stores and loads. */
START_TEST(test_tiles)
{
    eq_conv2d_desc d = {.n = 3, .h = 190, .w = 190, .c = 64, .k = 3, .r = 3, .s = 3,
                        .stride_h = 1, .stride_w = 1, .pad_h = 1, .pad_w = 1,
                        .dil_h = 1, .dil_w = 1, .groups = 1};
    eq_err err = {0};
    OK(eq_conv2d_desc_init(&d, &err));
    ck_assert(eq_cpu_conv_direct_ok(&d));
    bufs b;
    s_bufs(&b, &d);
    eq_backend *be = s_cpu(2);
    float *dir[3], *gemm[3];
    s_run(be, &d, &b, 0, dir);
    s_run(be, &d, &b, 2, gemm);
    size_t sz[3] = {b.ny, b.nx, b.nw};
    static const char *const what[3] = {"tiled y", "tiled dx", "tiled dw"};
    for (int o = 0; o < 3; o++) CHECK_CLOSE(what[o], dir[o], gemm[o], sz[o], TOL);
    s_free3(dir), s_free3(gemm);
    s_bufs_free(&b);
    eq_backend_destroy(&be);
}
END_TEST

/* The forward and backward data pad each task's rows into a per-thread
 * scratch in the workspace: stale contents there (NaNs) must not reach
 * the outputs, stride 1 and 2 (several jobs per image), 1 and 2 threads. */
START_TEST(test_stale_workspace)
{
    static const int64_t shapes[2][5] = {{2, 9, 7, 5, 1}, {3, 11, 10, 16, 2}}; /* n h w c stride */
    for (int i = 0; i < 2; i++)
        for (int nt = 1; nt <= 2; nt++) {
            eq_conv2d_desc d = {.n = shapes[i][0], .h = shapes[i][1], .w = shapes[i][2],
                                .c = shapes[i][3], .k = 19, .r = 3, .s = 3,
                                .stride_h = shapes[i][4], .stride_w = shapes[i][4],
                                .pad_h = 1, .pad_w = 1, .dil_h = 1, .dil_w = 1, .groups = 1};
            eq_err err = {0};
            OK(eq_conv2d_desc_init(&d, &err));
            ck_assert(eq_cpu_conv_direct_ok(&d));
            bufs b;
            s_bufs(&b, &d);
            eq_backend *fresh = s_cpu(nt), *stale = s_cpu(nt);
            eq_cpu *cpu = stale->context;
            float *ws = eq_cpu_workspace(cpu, (size_t)1 << 22, "test", &err);
            ck_assert_ptr_nonnull(ws);
            for (size_t j = 0; j < cpu->ws_bytes / sizeof *ws; j++) ws[j] = NAN;
            float *a[3], *r[3];
            s_run(fresh, &d, &b, 0, r);
            s_run(stale, &d, &b, 0, a);
            ck_assert_msg(!memcmp(a[0], r[0], b.ny * sizeof(float)), "y differs (shape %d)", i);
            ck_assert_msg(!memcmp(a[1], r[1], b.nx * sizeof(float)), "dx differs (shape %d)", i);
            for (size_t j = 0; j < b.ny; j++) ck_assert(isfinite(a[0][j]));
            s_free3(a), s_free3(r);
            s_bufs_free(&b);
            eq_backend_destroy(&fresh);
            eq_backend_destroy(&stale);
        }
}
END_TEST

/* The forward's (and backward data's) sums of R*S*C terms run in blocked
 * chains, so their error against float64 does not grow with C the way
 * one FMA chain's does (about 1.1e-6 relative at 512 channels, where
 * im2col + OpenBLAS gives about 3e-7): C = 512 (forward) and K = 512
 * (backward data) on a small map. */
START_TEST(test_wide_accuracy)
{
    static const int64_t shapes[][2] = {{512, 32}, {32, 512}, {256, 24}};
    eq_backend *be = s_cpu(2);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        eq_conv2d_desc d = {.n = 1, .h = 8, .w = 8, .c = shapes[si][0], .k = shapes[si][1],
                            .r = 3, .s = 3, .stride_h = 1, .stride_w = 1, .pad_h = 1,
                            .pad_w = 1, .dil_h = 1, .dil_w = 1, .groups = 1};
        eq_err err = {0};
        OK(eq_conv2d_desc_init(&d, &err));
        if (!eq_cpu_conv_direct_ok(&d)) continue; /* a narrower limit: im2col runs */
        bufs b;
        s_bufs(&b, &d);
        float *dir[3], *gen[3], *gemm[3], *ref[3];
        s_run(be, &d, &b, 0, dir);
        s_run(be, &d, &b, 1, gen);
        s_run(be, &d, &b, 2, gemm);
        s_naive(&d, &b, ref);
        size_t sz[3] = {b.ny, b.nx, b.nw};
        for (int o = 0; o < 2; o++) {
            double ed = eq_test_relerr(dir[o], ref[o], sz[o]);
            double eg = eq_test_relerr(gemm[o], ref[o], sz[o]);
            if (getenv("EQ_TEST_VERBOSE"))
                fprintf(stderr, "c%lld k%lld %s: direct %.3g im2col %.3g\n", (long long)d.c,
                        (long long)d.k, o ? "dx" : "y", ed, eg);
            ck_assert_msg(ed < 5e-7, "c%lld k%lld %s: direct's relative error %.3g vs float64",
                          (long long)d.c, (long long)d.k, o ? "dx" : "y", ed);
            ck_assert_msg(!memcmp(dir[o], gen[o], sz[o] * 4),
                          "c%lld k%lld output %d: widest and generic kernels differ",
                          (long long)d.c, (long long)d.k, o);
        }
        s_free3(dir), s_free3(gen), s_free3(gemm), s_free3(ref);
        s_bufs_free(&b);
    }
    eq_backend_destroy(&be);
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("backend_direct");
    TCase *tc = tcase_create("direct");
    /* about a second of CPU in all; generous for a machine at load 10+ */
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_random_shapes, 0, 4);
    tcase_add_test(tc, test_threads_bitwise);
    tcase_add_test(tc, test_selection);
    tcase_add_test(tc, test_tiles);
    tcase_add_test(tc, test_stale_workspace);
    tcase_add_test(tc, test_wide_accuracy);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return eq_test_run(s_suite());
}
