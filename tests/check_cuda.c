/*
 * tests/check_cuda.c -- the CUDA backend against the CPU backend.
 *
 * Every op of trainer/backend.h runs on both backends with the same random
 * inputs (a fresh seed each run, printed so a failure can be replayed with
 * EQ_TEST_SEED=<seed>; never zeros) and is compared norm-wise:
 * ||gpu - cpu|| / ||cpu|| <= 1e-5 in fp32.  Further: deterministic mode is
 * bitwise identical run to run, bad labels and argmax are reported at the
 * next synchronisation, events order work, and the batch staging helpers
 * (prefetch, uint8 -> normalised input with mixup) match the trainer's host
 * formula.  Mixed precision: round_to bitwise equal to eq_precision_round,
 * nonfinite counts, and the convolutions with desc.prec bf16/fp16 on
 * representable operands against the CPU backend's fp32 convolution (see
 * test_conv_prec for the tolerances).
 *
 * Without a usable GPU (cudaGetDeviceCount fails or finds none) the program
 * prints why and exits 77, which automake's harness reports as SKIP.
 */
#include "config.h"

#include "core/rng.h"
#include "trainer/backend.h"
#include "trainer/cuda/cuda.h"
#include "tests/testutil.h"

#include <stdint.h>
#include <time.h>

#define TOL 1e-5

static uint64_t g_seed;
static eq_backend *g_cpu, *g_gpu;

static void s_setup(void)
{
    eq_err err = {0};
    g_cpu = eq_backend_cpu_new(1, &err);
    ck_assert_msg(g_cpu != NULL, "cpu: %s", err.msg);
    eq_cuda_opts o = {.device = 0};
    g_gpu = eq_backend_cuda_new(&o, &err);
    ck_assert_msg(g_gpu != NULL, "cuda: %s", err.msg);
}

static void s_teardown(void)
{
    eq_backend_destroy(&g_cpu);
    eq_backend_destroy(&g_gpu);
}

/* Random floats in [lo, hi) excluding exact zeros; stream distinguishes
 * the arrays of one test. */
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

static int32_t *s_labels(size_t n, int32_t k, uint64_t stream)
{
    eq_rng r;
    eq_rng_init(&r, g_seed, stream);
    int32_t *p = malloc(n * sizeof *p + 4);
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++) p[i] = (int32_t)eq_rng_below(&r, (uint32_t)k);
    return p;
}

static void *s_up(eq_backend *be, const void *h, size_t nbytes)
{
    eq_err err = {0};
    void *d = eq_backend_alloc(be, nbytes, &err);
    ck_assert_msg(d != NULL, "%s alloc: %s", eq_backend_name(be), err.msg);
    if (h) ck_assert_msg(eq_backend_upload(be, d, h, nbytes, &err) == EQ_OK, "upload: %s", err.msg);
    else ck_assert_msg(eq_backend_zero(be, d, nbytes, &err) == EQ_OK, "zero: %s", err.msg);
    return d;
}

static float *s_down(eq_backend *be, const void *d, size_t n)
{
    eq_err err = {0};
    float *h = malloc(n * sizeof(float) + 4);
    ck_assert_ptr_nonnull(h);
    ck_assert_msg(eq_backend_download(be, h, d, n * sizeof(float), &err) == EQ_OK,
                  "%s download: %s", eq_backend_name(be), err.msg);
    return h;
}

/* A host array on both backends. */
typedef struct s_buf {
    void *c, *g;
    size_t n; /* elements (4 bytes each) */
} s_buf;

static s_buf s_both(const void *h, size_t n)
{
    s_buf b = {s_up(g_cpu, h, n * 4), s_up(g_gpu, h, n * 4), n};
    return b;
}

static void s_free(s_buf *b)
{
    eq_backend_release(g_cpu, b->c);
    eq_backend_release(g_gpu, b->g);
    b->c = b->g = NULL;
}

/* Compare the two copies of b. */
static void s_cmp(const char *what, const s_buf *b, double tol)
{
    float *c = s_down(g_cpu, b->c, b->n), *g = s_down(g_gpu, b->g, b->n);
    double e = eq_test_relerr(g, c, b->n);
    ck_assert_msg(e <= tol, "%s: relative error %.3g > %.3g (seed %llu)", what, e, tol,
                  (unsigned long long)g_seed);
    free(c);
    free(g);
}

#define OK(call)                                                                     \
    do {                                                                             \
        eq_err err_ = {0};                                                           \
        eq_status st_ = (call);                                                      \
        ck_assert_msg(st_ == EQ_OK, "%s: %s (seed %llu)", #call, err_.msg,           \
                      (unsigned long long)g_seed);                                   \
    } while (0)
/* run `op` on both backends: BE is the backend, C/G pick the copy */
#define BOTH(op_cpu, op_gpu) \
    do {                     \
        OK(op_cpu);          \
        OK(op_gpu);          \
    } while (0)

/* ---- convolution --------------------------------------------------------- */

static const eq_conv2d_desc s_convs[] = {
    /* n h w c  k  r s  sh sw ph pw dh dw g p q prec */
    {2, 9, 9, 16, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0},   /* 3x3 */
    {2, 10, 10, 16, 24, 1, 1, 2, 2, 0, 0, 1, 1, 1, 0, 0, 0}, /* 1x1 stride 2 */
    {2, 23, 23, 3, 16, 7, 7, 2, 2, 3, 3, 1, 1, 1, 0, 0, 0},  /* stem */
    {2, 8, 8, 16, 16, 3, 3, 1, 1, 1, 1, 1, 1, 16, 0, 0, 0},  /* depthwise */
    {1, 11, 9, 8, 12, 3, 3, 1, 2, 2, 1, 2, 1, 4, 0, 0, 0},   /* dilated, grouped, odd */
};
#define NCONV ((int)(sizeof s_convs / sizeof s_convs[0]))

START_TEST(test_conv)
{
    eq_conv2d_desc d = s_convs[_i];
    eq_err err = {0};
    ck_assert_msg(eq_conv2d_desc_init(&d, &err) == EQ_OK, "%s", err.msg);
    size_t nx = (size_t)(d.n * d.h * d.w * d.c), ny = (size_t)(d.n * d.p * d.q * d.k);
    size_t nw = (size_t)(d.k * (d.c / d.groups) * d.r * d.s);
    float *hx = s_rand(nx, -1, 1, 1), *hw = s_rand(nw, -1, 1, 2), *hdy = s_rand(ny, -1, 1, 3);
    s_buf x = s_both(hx, nx), w = s_both(hw, nw), dy = s_both(hdy, ny);
    s_buf y = s_both(NULL, ny), dx = s_both(NULL, nx), dw = s_both(NULL, nw);
    BOTH(eq_backend_conv2d_fwd(g_cpu, &d, x.c, w.c, y.c, &err_),
         eq_backend_conv2d_fwd(g_gpu, &d, x.g, w.g, y.g, &err_));
    s_cmp("conv2d_fwd", &y, TOL);
    BOTH(eq_backend_conv2d_bwd_data(g_cpu, &d, dy.c, w.c, dx.c, &err_),
         eq_backend_conv2d_bwd_data(g_gpu, &d, dy.g, w.g, dx.g, &err_));
    s_cmp("conv2d_bwd_data", &dx, TOL);
    BOTH(eq_backend_conv2d_bwd_filter(g_cpu, &d, x.c, dy.c, dw.c, &err_),
         eq_backend_conv2d_bwd_filter(g_gpu, &d, x.g, dy.g, dw.g, &err_));
    s_cmp("conv2d_bwd_filter", &dw, TOL);
    /* the cached plan is reused: a second call gives the same numbers */
    BOTH(eq_backend_conv2d_fwd(g_cpu, &d, x.c, w.c, y.c, &err_),
         eq_backend_conv2d_fwd(g_gpu, &d, x.g, w.g, y.g, &err_));
    s_cmp("conv2d_fwd (cached plan)", &y, TOL);
    s_buf *all[] = {&x, &w, &dy, &y, &dx, &dw};
    for (size_t i = 0; i < 6; i++) s_free(all[i]);
    free(hx);
    free(hw);
    free(hdy);
}
END_TEST

/* ---- mixed precision ------------------------------------------------------- */

static void s_round_host(eq_precision p, float *v, size_t n)
{
    for (size_t i = 0; i < n; i++) v[i] = eq_precision_round(p, v[i]);
}

static uint32_t s_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float s_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* round_to on the GPU == eq_precision_round bitwise: random values over
 * many binades (raw bit patterns too) and the edges (ties in both types,
 * fp16 subnormals and their ties, 65504 / 65520, bf16's overflow, inf,
 * quiet/signalling/negative NaNs), out of place and in place. */
START_TEST(test_round_to)
{
    static const uint32_t edge[] = {
        0x00000000u, 0x80000000u, 0x00000001u, 0x807fffffu, 0x33000000u, 0x33000001u,
        0x33c00000u, 0x387ff000u, 0x387fffffu, 0x38800000u, 0x477fe000u, 0x477fefffu,
        0x477ff000u, 0xc77ff000u, 0x47800000u, 0x7f7fffffu, 0x7f7f8000u, 0x7f7f7fffu,
        0x3f808000u, 0x3f818000u, 0x3f801000u, 0x3f803000u, 0x7f800000u, 0xff800000u,
        0x7fc00000u, 0x7f800001u, 0xffc00001u, 0x7fbfffffu, 0x7f802000u,
    };
    const size_t ne = sizeof edge / sizeof edge[0], n = 300007;
    float *h = s_rand(n, -1, 1, 90);
    eq_rng r;
    eq_rng_init(&r, g_seed, 91);
    for (size_t i = 0; i < n; i++) {
        if (i < ne) h[i] = s_from_bits(edge[i]);
        else if (i % 3 == 0) h[i] = s_from_bits(eq_rng_u32(&r)); /* any pattern */
        else h[i] = ldexpf(h[i], (int)eq_rng_below(&r, 80) - 40);  /* 2^-40 .. 2^40 */
    }
    float *dx = s_up(g_gpu, h, n * 4), *dy = s_up(g_gpu, NULL, n * 4);
    for (int p = 0; p <= 2; p++) {
        for (int inplace = 0; inplace < 2; inplace++) {
            eq_err err = {0};
            if (inplace) ck_assert(eq_backend_upload(g_gpu, dy, h, n * 4, &err) == EQ_OK);
            OK(eq_backend_round_to(g_gpu, (eq_precision)p, n, inplace ? dy : dx, dy, &err_));
            float *g = s_down(g_gpu, dy, n);
            for (size_t i = 0; i < n; i++) {
                uint32_t want = s_bits(eq_precision_round((eq_precision)p, h[i]));
                ck_assert_msg(s_bits(g[i]) == want,
                              "round_to %s%s: element %zu 0x%08x -> 0x%08x, want 0x%08x (seed %llu)",
                              eq_precision_name((eq_precision)p), inplace ? " in place" : "", i,
                              s_bits(h[i]), s_bits(g[i]), want, (unsigned long long)g_seed);
            }
            free(g);
        }
    }
    eq_backend_release(g_gpu, dx);
    eq_backend_release(g_gpu, dy);
    free(h);
}
END_TEST

/* nonfinite: exact counts of inf/NaN placed at random positions, over one
 * element, one block and many blocks (the reduction's 4096-element blocks
 * and their tails). */
START_TEST(test_nonfinite)
{
    static const size_t sizes[] = {1, 4096, 4097, 1000003};
    eq_rng r;
    eq_rng_init(&r, g_seed, 95);
    for (size_t t = 0; t < sizeof sizes / sizeof sizes[0]; t++) {
        size_t n = sizes[t];
        float *h = s_rand(n, -1e30f, 1e30f, 96 + t);
        const float bad[] = {INFINITY, -INFINITY, NAN, -NAN, s_from_bits(0x7f800001u)};
        size_t nbad = n == 1 ? 1 : eq_rng_below(&r, (uint32_t)(n / 50 + 2));
        for (size_t k = 0; k < nbad; k++) h[eq_rng_below(&r, (uint32_t)n)] = bad[eq_rng_below(&r, 5)];
        if (n == 4097) h[4096] = NAN; /* the tail block */
        if (n > 2 && isfinite(h[1])) h[1] = 3.4028235e38f; /* FLT_MAX is finite */
        int64_t want = 0;
        for (size_t i = 0; i < n; i++) want += !isfinite(h[i]);
        float *d = s_up(g_gpu, h, n * 4);
        int64_t got = -1;
        OK(eq_backend_nonfinite(g_gpu, n, d, &got, &err_));
        int64_t ref = -1;
        OK(eq_backend_nonfinite(g_cpu, n, h, &ref, &err_));
        ck_assert_msg(got == want && ref == want, "nonfinite n=%zu: gpu %lld, cpu %lld, want %lld",
                      n, (long long)got, (long long)ref, (long long)want);
        /* none */
        float *h0 = s_rand(n, -1, 1, 99);
        OK(eq_backend_upload(g_gpu, d, h0, n * 4, &err_));
        OK(eq_backend_nonfinite(g_gpu, n, d, &got, &err_));
        ck_assert_msg(got == 0, "nonfinite n=%zu of finite values: %lld", n, (long long)got);
        eq_backend_release(g_gpu, d);
        free(h);
        free(h0);
    }
}
END_TEST

/* GPU result g against the CPU's fp32 result c of the same representable
 * operands.  g comes from a 16-bit convolution, so it is a value of the
 * precision (checked bitwise); it differs from c by that rounding (at most
 * u = 2^-8 bf16, 2^-11 fp16 relative per element) plus the summation order
 * (fp32 accumulation in another order): norm-wise within u + 1e-5 (1e-5
 * alone cannot hold: the output's rounding is u-sized).  After rounding c
 * too, they are equal except where c lies so close to a rounding boundary
 * that the summation order decides: each such g is the neighbour of
 * round(c) with c within 1/64 of their spacing of the midpoint, or within
 * what two fp32 summation orders of the element's K terms can differ by,
 * 4 sqrt(K) 2^-24 sum|terms| (abs[i], the CPU's convolution of the
 * operands' absolute values): where the terms cancel, that is far more
 * than 1/64 of the result's spacing (the CPU emulation showed it: the
 * criterion without it failed for small results, e.g. -0.00022 from terms
 * of order 0.1, on every run).  There are at most 0.1 % of them for bf16
 * (plus one, for arrays of a few hundred) plus four times the expected
 * number of elements whose sum|terms| bound reaches a midpoint (the sum
 * over elements of 2 bound / spacing; bwd_filter's sums run over n p q
 * terms, so small arrays of long sums flip more often: 4 of 384 seen).
 * fp16's grid is 8x finer, so a 300-term sum lands that close to a
 * midpoint in about 0.1 % of the elements by itself: 0.5 % (plus one). */
static void s_cmp_prec(const char *what, eq_precision p, const s_buf *b, const s_buf *abs_,
                       int64_t k)
{
    float *c = s_down(g_cpu, b->c, b->n), *g = s_down(g_gpu, b->g, b->n);
    float *a = s_down(g_cpu, abs_->c, b->n);
    const double order = 4.0 * sqrt((double)k) * 0x1p-24;
    double expect = 0.0; /* elements the summation order may decide */
    size_t notrep = 0, diff = 0, far = 0, far_i = 0;
    for (size_t i = 0; i < b->n; i++) {
        float r = eq_precision_round(p, c[i]);
        int ex;
        frexp((double)r, &ex); /* |r| in [2^(ex-1), 2^ex): the precision's spacing there */
        double sp = ldexp(1.0, (ex - 1) - (p == EQ_PREC_BF16 ? 7 : 10));
        if (p == EQ_PREC_FP16 && sp < 0x1p-24) sp = 0x1p-24;
        expect += fmin(1.0, 2.0 * order * a[i] / sp);
        notrep += s_bits(eq_precision_round(p, g[i])) != s_bits(g[i]);
        if (s_bits(r) == s_bits(g[i])) continue;
        diff++;
        double mid = 0.5 * ((double)r + (double)g[i]);
        if (!(fabs((double)c[i] - mid) <= fabs((double)g[i] - (double)r) / 64 + order * a[i]))
            far_i = i, far++;
    }
    double u = p == EQ_PREC_BF16 ? 1.0 / 256 : 1.0 / 2048;
    size_t allowed = (p == EQ_PREC_BF16 ? b->n / 1000 : b->n / 200) + 1 + (size_t)ceil(4.0 * expect);
    double e = eq_test_relerr(g, c, b->n);
    printf("%s %s: relative error %.3g (u %.3g), %zu of %zu differ after rounding\n", what,
           eq_precision_name(p), e, u, diff, b->n);
    ck_assert_msg(notrep == 0, "%s %s: %zu results are not %s values (seed %llu)", what,
                  eq_precision_name(p), notrep, eq_precision_name(p), (unsigned long long)g_seed);
    ck_assert_msg(e <= u + TOL, "%s %s: relative error %.3g > %.3g (seed %llu)", what,
                  eq_precision_name(p), e, u + TOL, (unsigned long long)g_seed);
    ck_assert_msg(far == 0,
                  "%s %s: %zu results differ from the rounded fp32 result away from a rounding "
                  "midpoint, e.g. [%zu]: %.9g vs fp32 %.9g (seed %llu)",
                  what, eq_precision_name(p), far, far_i, (double)g[far_i], (double)c[far_i],
                  (unsigned long long)g_seed);
    ck_assert_msg(diff <= allowed, "%s %s: %zu of %zu differ after rounding, > %zu (seed %llu)",
                  what, eq_precision_name(p), diff, b->n, allowed, (unsigned long long)g_seed);
    free(c);
    free(g);
    free(a);
}

static float *s_absdup(const float *v, size_t n)
{
    float *a = malloc(n * sizeof *a + 4);
    ck_assert_ptr_nonnull(a);
    for (size_t i = 0; i < n; i++) a[i] = fabsf(v[i]);
    return a;
}

/* _i = shape * 2 + (0 bf16, 1 fp16): the shapes of test_conv plus a larger
 * 3x3 one (tensor-core tiles, 0.1 % meaningful). */
static const eq_conv2d_desc s_conv_big = {4, 16, 16, 32, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0};

/* ... and _i >= 2 * (NCONV + 1): the big shape through the fp32 fallback
 * (forced: eq_cuda_conv_force_fallback), whose results must pass the same
 * checks (an fp32 convolution rounded by the round_to kernel). */
START_TEST(test_conv_prec)
{
    const int fallback = _i >= 2 * (NCONV + 1);
    const int shape = fallback ? NCONV : _i / 2;
    const eq_precision p = _i % 2 ? EQ_PREC_FP16 : EQ_PREC_BF16;
    if (fallback) eq_cuda_conv_force_fallback(g_gpu, 1);
    eq_conv2d_desc d = shape < NCONV ? s_convs[shape] : s_conv_big;
    d.prec = p;
    eq_err err = {0};
    ck_assert_msg(eq_conv2d_desc_init(&d, &err) == EQ_OK, "%s", err.msg);
    size_t nx = (size_t)(d.n * d.h * d.w * d.c), ny = (size_t)(d.n * d.p * d.q * d.k);
    size_t nw = (size_t)(d.k * (d.c / d.groups) * d.r * d.s);
    float *hx = s_rand(nx, -1, 1, 100), *hw = s_rand(nw, -1, 1, 101), *hdy = s_rand(ny, -1, 1, 102);
    s_round_host(p, hx, nx);
    s_round_host(p, hw, nw);
    s_round_host(p, hdy, ny);
    s_buf x = s_both(hx, nx), w = s_both(hw, nw), dy = s_both(hdy, ny);
    s_buf y = s_both(NULL, ny), dx = s_both(NULL, nx), dw = s_both(NULL, nw);
    /* sum |terms| of every result: the CPU's convolutions of |operands| */
    float *ax = s_absdup(hx, nx), *aw = s_absdup(hw, nw), *ady = s_absdup(hdy, ny);
    s_buf xa = s_both(ax, nx), wa = s_both(aw, nw), dya = s_both(ady, ny);
    s_buf ya = s_both(NULL, ny), dxa = s_both(NULL, nx), dwa = s_both(NULL, nw);
    OK(eq_backend_conv2d_fwd(g_cpu, &d, xa.c, wa.c, ya.c, &err_));
    OK(eq_backend_conv2d_bwd_data(g_cpu, &d, dya.c, wa.c, dxa.c, &err_));
    OK(eq_backend_conv2d_bwd_filter(g_cpu, &d, xa.c, dya.c, dwa.c, &err_));
    const int64_t kfwd = d.c / d.groups * d.r * d.s, kdata = d.k / d.groups * d.r * d.s;
    const int64_t kfilt = d.n * d.p * d.q;
    /* the CPU backend computes in fp32 whatever prec says */
    BOTH(eq_backend_conv2d_fwd(g_cpu, &d, x.c, w.c, y.c, &err_),
         eq_backend_conv2d_fwd(g_gpu, &d, x.g, w.g, y.g, &err_));
    s_cmp_prec("conv2d_fwd", p, &y, &ya, kfwd);
    BOTH(eq_backend_conv2d_bwd_data(g_cpu, &d, dy.c, w.c, dx.c, &err_),
         eq_backend_conv2d_bwd_data(g_gpu, &d, dy.g, w.g, dx.g, &err_));
    s_cmp_prec("conv2d_bwd_data", p, &dx, &dxa, kdata);
    BOTH(eq_backend_conv2d_bwd_filter(g_cpu, &d, x.c, dy.c, dw.c, &err_),
         eq_backend_conv2d_bwd_filter(g_gpu, &d, x.g, dy.g, dw.g, &err_));
    s_cmp_prec("conv2d_bwd_filter", p, &dw, &dwa, kfilt);
    /* an fp32 plan of the same shape is another plan: still fp32 numbers */
    d.prec = EQ_PREC_FP32;
    BOTH(eq_backend_conv2d_fwd(g_cpu, &d, x.c, w.c, y.c, &err_),
         eq_backend_conv2d_fwd(g_gpu, &d, x.g, w.g, y.g, &err_));
    s_cmp("conv2d_fwd (fp32 after a narrow plan)", &y, TOL);
    s_buf *all[] = {&x, &w, &dy, &y, &dx, &dw, &xa, &wa, &dya, &ya, &dxa, &dwa};
    for (size_t i = 0; i < 12; i++) s_free(all[i]);
    free(hx);
    free(hw);
    free(hdy);
    free(ax);
    free(aw);
    free(ady);
}
END_TEST

/* ---- batch norm ------------------------------------------------------------ */

START_TEST(test_bn)
{
    const int affine = _i == 0;
    const int64_t m = _i == 0 ? 2 * 7 * 7 : 3000, c = _i == 0 ? 40 : 3;
    eq_bn_desc d;
    eq_err err = {0};
    ck_assert(eq_bn_desc_init(&d, m, c, 1e-5f, 0.1f, &err) == EQ_OK);
    size_t n = (size_t)(m * c);
    float *hx = s_rand(n, -2, 3, 10), *hg = s_rand((size_t)c, 0.5f, 1.5f, 11);
    float *hb = s_rand((size_t)c, -1, 1, 12), *hrm = s_rand((size_t)c, -0.1f, 0.1f, 13);
    float *hrv = s_rand((size_t)c, 0.5f, 2, 14), *hdy = s_rand(n, -1, 1, 15);
    s_buf x = s_both(hx, n), g = s_both(hg, (size_t)c), b = s_both(hb, (size_t)c);
    s_buf rm = s_both(hrm, (size_t)c), rv = s_both(hrv, (size_t)c), dy = s_both(hdy, n);
    s_buf y = s_both(NULL, n), sm = s_both(NULL, (size_t)c), si = s_both(NULL, (size_t)c);
    s_buf dx = s_both(NULL, n), dg = s_both(NULL, (size_t)c), db = s_both(NULL, (size_t)c);
    BOTH(eq_backend_bn_fwd_train(g_cpu, &d, x.c, affine ? g.c : NULL, affine ? b.c : NULL, rm.c,
                                 rv.c, y.c, sm.c, si.c, &err_),
         eq_backend_bn_fwd_train(g_gpu, &d, x.g, affine ? g.g : NULL, affine ? b.g : NULL, rm.g,
                                 rv.g, y.g, sm.g, si.g, &err_));
    s_cmp("bn_fwd_train y", &y, TOL);
    s_cmp("bn_fwd_train save_mean", &sm, TOL);
    s_cmp("bn_fwd_train save_invstd", &si, TOL);
    s_cmp("bn_fwd_train running_mean", &rm, TOL);
    s_cmp("bn_fwd_train running_var", &rv, TOL);
    BOTH(eq_backend_bn_bwd(g_cpu, &d, x.c, dy.c, affine ? g.c : NULL, sm.c, si.c, dx.c, dg.c, db.c,
                           &err_),
         eq_backend_bn_bwd(g_gpu, &d, x.g, dy.g, affine ? g.g : NULL, sm.g, si.g, dx.g, dg.g, db.g,
                           &err_));
    s_cmp("bn_bwd dx", &dx, TOL);
    s_cmp("bn_bwd dgamma", &dg, TOL);
    s_cmp("bn_bwd dbeta", &db, TOL);
    BOTH(eq_backend_bn_fwd_eval(g_cpu, &d, x.c, affine ? g.c : NULL, affine ? b.c : NULL, rm.c,
                                rv.c, y.c, &err_),
         eq_backend_bn_fwd_eval(g_gpu, &d, x.g, affine ? g.g : NULL, affine ? b.g : NULL, rm.g,
                                rv.g, y.g, &err_));
    s_cmp("bn_fwd_eval", &y, TOL);
    s_buf *all[] = {&x, &g, &b, &rm, &rv, &dy, &y, &sm, &si, &dx, &dg, &db};
    for (size_t i = 0; i < 12; i++) s_free(all[i]);
    float *hs[] = {hx, hg, hb, hrm, hrv, hdy};
    for (size_t i = 0; i < 6; i++) free(hs[i]);
}
END_TEST

/* ---- fused batch norm + residual add + ReLU ------------------------------------ */

/* Both copies of b hold the host array h (n floats). */
static void s_set(const s_buf *b, const float *h)
{
    eq_err err = {0};
    ck_assert(eq_backend_upload(g_cpu, b->c, h, b->n * 4, &err) == EQ_OK);
    ck_assert(eq_backend_upload(g_gpu, b->g, h, b->n * 4, &err) == EQ_OK);
}

/* The GPU copy of b takes the CPU's values (identical inputs downstream). */
static void s_cpu_to_gpu(const s_buf *b)
{
    eq_err err = {0};
    float *h = s_down(g_cpu, b->c, b->n);
    ck_assert(eq_backend_upload(g_gpu, b->g, h, b->n * 4, &err) == EQ_OK);
    free(h);
}

/* Two GPU arrays of n floats are bitwise equal. */
static void s_same(const char *what, const void *a, const void *b, size_t n)
{
    float *ha = s_down(g_gpu, a, n), *hb = s_down(g_gpu, b, n);
    ck_assert_msg(memcmp(ha, hb, n * 4) == 0, "%s: fused differs from the composition (seed %llu)",
                  what, (unsigned long long)g_seed);
    free(ha);
    free(hb);
}

/* The CUDA backend's own bn_relu_* against the CPU backend's (fp32, 1e-5
 * norm-wise), and bit for bit against its own composition bn + add + relu
 * (the same statistics and rounding, backend.h).  Cases: affine or not, z /
 * dy2 / dz present or not, dz in place of dy, dgamma/dbeta not wanted. */
static const struct {
    int affine, z, dy2, dz; /* dz: 0 none, 1 own buffer, 2 in place of dy */
    int dgb;
    int64_t m, c;
} s_bnr[] = {
    {1, 1, 1, 1, 1, 2 * 7 * 7, 40},
    {0, 0, 0, 0, 1, 3000, 3},
    {1, 1, 0, 2, 0, 4 * 16 * 16, 64},
    {1, 0, 1, 1, 1, 3 * 5 * 5, 17},
};
#define NBNR (int)(sizeof s_bnr / sizeof s_bnr[0])

START_TEST(test_bn_relu)
{
    const int affine = s_bnr[_i].affine;
    const int64_t m = s_bnr[_i].m, c = s_bnr[_i].c;
    eq_bn_desc d;
    eq_err err = {0};
    ck_assert(eq_bn_desc_init(&d, m, c, 1e-5f, 0.1f, &err) == EQ_OK);
    size_t n = (size_t)(m * c), nc = (size_t)c;
    float *hx = s_rand(n, -2, 3, 80), *hz = s_rand(n, -2, 2, 81), *hg = s_rand(nc, 0.5f, 1.5f, 82);
    float *hb = s_rand(nc, -1, 1, 83), *hrm = s_rand(nc, -0.1f, 0.1f, 84);
    float *hrv = s_rand(nc, 0.5f, 2, 85), *hdy = s_rand(n, -1, 1, 86), *hdy2 = s_rand(n, -1, 1, 87);
    s_buf x = s_both(hx, n), z = s_both(hz, n), g = s_both(hg, nc), b = s_both(hb, nc);
    s_buf rm = s_both(hrm, nc), rv = s_both(hrv, nc), dy = s_both(hdy, n), dy2 = s_both(hdy2, n);
    s_buf y = s_both(NULL, n), sm = s_both(NULL, nc), si = s_both(NULL, nc);
    s_buf dx = s_both(NULL, n), dzb = s_both(NULL, n), dg = s_both(NULL, nc), db = s_both(NULL, nc);
    /* the GPU composition's outputs */
    s_buf y2 = s_both(NULL, n), sm2 = s_both(NULL, nc), si2 = s_both(NULL, nc);
    s_buf rm2 = s_both(hrm, nc), rv2 = s_both(hrv, nc), dx2 = s_both(NULL, n), g2 = s_both(NULL, n);
    s_buf dg2 = s_both(NULL, nc), db2 = s_both(NULL, nc);
    const float *zc = s_bnr[_i].z ? z.c : NULL, *zg = s_bnr[_i].z ? z.g : NULL;
    const float *gc = affine ? g.c : NULL, *gg = affine ? g.g : NULL;
    const float *bc = affine ? b.c : NULL, *bg = affine ? b.g : NULL;

    /* forward, train */
    BOTH(eq_backend_bn_relu_fwd_train(g_cpu, &d, x.c, zc, gc, bc, rm.c, rv.c, y.c, sm.c, si.c,
                                      &err_),
         eq_backend_bn_relu_fwd_train(g_gpu, &d, x.g, zg, gg, bg, rm.g, rv.g, y.g, sm.g, si.g,
                                      &err_));
    s_cmp("bn_relu_fwd_train y", &y, TOL);
    s_cmp("bn_relu_fwd_train save_mean", &sm, TOL);
    s_cmp("bn_relu_fwd_train save_invstd", &si, TOL);
    s_cmp("bn_relu_fwd_train running_mean", &rm, TOL);
    s_cmp("bn_relu_fwd_train running_var", &rv, TOL);
    OK(eq_backend_bn_fwd_train(g_gpu, &d, x.g, gg, bg, rm2.g, rv2.g, y2.g, sm2.g, si2.g, &err_));
    if (zg) OK(eq_backend_add(g_gpu, n, y2.g, zg, y2.g, &err_));
    OK(eq_backend_relu_fwd(g_gpu, n, y2.g, y2.g, &err_));
    s_same("bn_relu_fwd_train y", y.g, y2.g, n);
    s_same("bn_relu_fwd_train save_mean", sm.g, sm2.g, nc);
    s_same("bn_relu_fwd_train save_invstd", si.g, si2.g, nc);
    s_same("bn_relu_fwd_train running_mean", rm.g, rm2.g, nc);
    s_same("bn_relu_fwd_train running_var", rv.g, rv2.g, nc);

    /* backward from the CPU's forward on both (the same ReLU mask) */
    s_cpu_to_gpu(&y);
    s_cpu_to_gpu(&sm);
    s_cpu_to_gpu(&si);
    const int dz = s_bnr[_i].dz, dgb = s_bnr[_i].dgb;
    const float *dy2c = s_bnr[_i].dy2 ? dy2.c : NULL, *dy2g = s_bnr[_i].dy2 ? dy2.g : NULL;
    /* GPU composition first: dz may overwrite dy below */
    if (dy2g) OK(eq_backend_add(g_gpu, n, dy.g, dy2g, g2.g, &err_));
    OK(eq_backend_relu_bwd(g_gpu, n, y.g, dy2g ? g2.g : dy.g, g2.g, &err_));
    OK(eq_backend_bn_bwd(g_gpu, &d, x.g, g2.g, gg, sm.g, si.g, dx2.g, dgb ? dg2.g : NULL,
                         dgb ? db2.g : NULL, &err_));
    s_buf *dzs = dz == 2 ? &dy : &dzb;
    float *dzc = dz ? dzs->c : NULL, *dzg = dz ? dzs->g : NULL;
    BOTH(eq_backend_bn_relu_bwd(g_cpu, &d, x.c, y.c, dy.c, dy2c, gc, sm.c, si.c, dx.c, dzc,
                                dgb ? dg.c : NULL, dgb ? db.c : NULL, &err_),
         eq_backend_bn_relu_bwd(g_gpu, &d, x.g, y.g, dy.g, dy2g, gg, sm.g, si.g, dx.g, dzg,
                                dgb ? dg.g : NULL, dgb ? db.g : NULL, &err_));
    s_cmp("bn_relu_bwd dx", &dx, TOL);
    s_same("bn_relu_bwd dx", dx.g, dx2.g, n);
    if (dz) {
        s_cmp("bn_relu_bwd dz", dzs, TOL);
        s_same("bn_relu_bwd dz", dzs->g, g2.g, n);
    }
    if (dgb) {
        s_cmp("bn_relu_bwd dgamma", &dg, TOL);
        s_cmp("bn_relu_bwd dbeta", &db, TOL);
        s_same("bn_relu_bwd dgamma", dg.g, dg2.g, nc);
        s_same("bn_relu_bwd dbeta", db.g, db2.g, nc);
    }

    /* forward, eval, from the same running statistics on both */
    s_set(&rm, hrm);
    s_set(&rv, hrv);
    BOTH(eq_backend_bn_relu_fwd_eval(g_cpu, &d, x.c, zc, gc, bc, rm.c, rv.c, y.c, &err_),
         eq_backend_bn_relu_fwd_eval(g_gpu, &d, x.g, zg, gg, bg, rm.g, rv.g, y.g, &err_));
    s_cmp("bn_relu_fwd_eval", &y, TOL);
    OK(eq_backend_bn_fwd_eval(g_gpu, &d, x.g, gg, bg, rm.g, rv.g, y2.g, &err_));
    if (zg) OK(eq_backend_add(g_gpu, n, y2.g, zg, y2.g, &err_));
    OK(eq_backend_relu_fwd(g_gpu, n, y2.g, y2.g, &err_));
    s_same("bn_relu_fwd_eval", y.g, y2.g, n);

    s_buf *all[] = {&x,   &z,   &g,   &b,   &rm, &rv, &dy, &dy2, &y,   &sm,  &si,  &dx,
                    &dzb, &dg,  &db,  &y2,  &sm2, &si2, &rm2, &rv2, &dx2, &g2, &dg2, &db2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) s_free(all[i]);
    float *hs[] = {hx, hz, hg, hb, hrm, hrv, hdy, hdy2};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++) free(hs[i]);
}
END_TEST

/* ---- elementwise ------------------------------------------------------------ */

START_TEST(test_elementwise)
{
    const int64_t m = 333, c = 7;
    const size_t n = (size_t)(m * c);
    float *ha = s_rand(n, -1, 1, 20), *hb = s_rand(n, -1, 1, 21), *hs = s_rand((size_t)c, 0, 0.5f, 22);
    s_buf a = s_both(ha, n), b = s_both(hb, n), sl = s_both(hs, (size_t)c), y = s_both(NULL, n);
    s_buf dx = s_both(NULL, n), ds = s_both(NULL, (size_t)c);
    BOTH(eq_backend_relu_fwd(g_cpu, n, a.c, y.c, &err_), eq_backend_relu_fwd(g_gpu, n, a.g, y.g, &err_));
    s_cmp("relu_fwd", &y, 0.0);
    BOTH(eq_backend_relu_bwd(g_cpu, n, y.c, b.c, dx.c, &err_),
         eq_backend_relu_bwd(g_gpu, n, y.g, b.g, dx.g, &err_));
    s_cmp("relu_bwd", &dx, 0.0);
    BOTH(eq_backend_add(g_cpu, n, a.c, b.c, y.c, &err_), eq_backend_add(g_gpu, n, a.g, b.g, y.g, &err_));
    s_cmp("add", &y, 0.0);
    for (int64_t ns = 1; ns <= c; ns += c - 1) {
        BOTH(eq_backend_prelu_fwd(g_cpu, m, c, ns, a.c, sl.c, y.c, &err_),
             eq_backend_prelu_fwd(g_gpu, m, c, ns, a.g, sl.g, y.g, &err_));
        s_cmp("prelu_fwd", &y, 0.0);
        BOTH(eq_backend_prelu_bwd(g_cpu, m, c, ns, a.c, sl.c, b.c, dx.c, ds.c, &err_),
             eq_backend_prelu_bwd(g_gpu, m, c, ns, a.g, sl.g, b.g, dx.g, ds.g, &err_));
        s_cmp("prelu_bwd dx", &dx, 0.0);
        ds.n = (size_t)ns;
        s_cmp("prelu_bwd dslope", &ds, TOL);
        ds.n = (size_t)c;
    }
    BOTH(eq_backend_clamp_fwd(g_cpu, n, 0.0f, 0.6f, a.c, y.c, &err_),
         eq_backend_clamp_fwd(g_gpu, n, 0.0f, 0.6f, a.g, y.g, &err_));
    s_cmp("clamp_fwd", &y, 0.0);
    BOTH(eq_backend_clamp_bwd(g_cpu, n, 0.0f, 0.6f, y.c, b.c, dx.c, &err_),
         eq_backend_clamp_bwd(g_gpu, n, 0.0f, 0.6f, y.g, b.g, dx.g, &err_));
    s_cmp("clamp_bwd", &dx, 0.0);
    /* Fixup's scalar affine: device scalars sl[0] (scale), sl[1] (bias) */
    BOTH(eq_backend_scalar_affine_fwd(g_cpu, n, a.c, sl.c, (float *)sl.c + 1, y.c, &err_),
         eq_backend_scalar_affine_fwd(g_gpu, n, a.g, sl.g, (float *)sl.g + 1, y.g, &err_));
    s_cmp("scalar_affine_fwd", &y, 0.0);
    BOTH(eq_backend_scalar_affine_bwd(g_cpu, n, a.c, b.c, sl.c, dx.c, ds.c, (float *)ds.c + 1, &err_),
         eq_backend_scalar_affine_bwd(g_gpu, n, a.g, b.g, sl.g, dx.g, ds.g, (float *)ds.g + 1, &err_));
    s_cmp("scalar_affine_bwd dx", &dx, 0.0);
    ds.n = 2;
    s_cmp("scalar_affine_bwd dscale, dbias", &ds, TOL);
    ds.n = (size_t)c;
    s_buf *all[] = {&a, &b, &sl, &y, &dx, &ds};
    for (size_t i = 0; i < 6; i++) s_free(all[i]);
    free(ha);
    free(hb);
    free(hs);
}
END_TEST

/* ---- pooling ------------------------------------------------------------------ */

static const eq_pool2d_desc s_pools[] = {
    /* n h w c kh kw sh sw ph pw ceil cip */
    {2, 12, 12, 8, 3, 3, 2, 2, 1, 1, 0, 1, 0, 0},  /* ResNet stem maxpool */
    {2, 7, 9, 5, 3, 2, 2, 3, 1, 1, 1, 0, 0, 0},    /* ceil mode, exclude pad */
    {1, 8, 8, 3, 2, 2, 2, 2, 0, 0, 0, 1, 0, 0},    /* 2x2 */
};
#define NPOOL ((int)(sizeof s_pools / sizeof s_pools[0]))

START_TEST(test_pool)
{
    eq_pool2d_desc d = s_pools[_i];
    eq_err err = {0};
    ck_assert_msg(eq_pool2d_desc_init(&d, &err) == EQ_OK, "%s", err.msg);
    size_t nx = (size_t)(d.n * d.h * d.w * d.c), ny = (size_t)(d.n * d.p * d.q * d.c);
    float *hx = s_rand(nx, -1, 1, 30), *hdy = s_rand(ny, -1, 1, 31);
    s_buf x = s_both(hx, nx), dy = s_both(hdy, ny), y = s_both(NULL, ny), am = s_both(NULL, ny);
    s_buf dx = s_both(NULL, nx);
    BOTH(eq_backend_maxpool_fwd(g_cpu, &d, x.c, y.c, am.c, &err_),
         eq_backend_maxpool_fwd(g_gpu, &d, x.g, y.g, am.g, &err_));
    s_cmp("maxpool_fwd", &y, 0.0);
    {
        int32_t *ac = (int32_t *)s_down(g_cpu, am.c, ny), *ag = (int32_t *)s_down(g_gpu, am.g, ny);
        ck_assert_msg(memcmp(ac, ag, ny * 4) == 0, "maxpool argmax differs (seed %llu)",
                      (unsigned long long)g_seed);
        free(ac);
        free(ag);
    }
    BOTH(eq_backend_maxpool_bwd(g_cpu, &d, am.c, dy.c, dx.c, &err_),
         eq_backend_maxpool_bwd(g_gpu, &d, am.g, dy.g, dx.g, &err_));
    s_cmp("maxpool_bwd", &dx, 0.0);
    BOTH(eq_backend_avgpool_fwd(g_cpu, &d, x.c, y.c, &err_),
         eq_backend_avgpool_fwd(g_gpu, &d, x.g, y.g, &err_));
    s_cmp("avgpool_fwd", &y, 0.0);
    BOTH(eq_backend_avgpool_bwd(g_cpu, &d, dy.c, dx.c, &err_),
         eq_backend_avgpool_bwd(g_gpu, &d, dy.g, dx.g, &err_));
    s_cmp("avgpool_bwd", &dx, 0.0);
    /* a corrupt argmax is reported at the next synchronisation */
    int32_t bad = (int32_t)(d.h * d.w);
    eq_err e2 = {0};
    ck_assert(eq_backend_upload(g_gpu, am.g, &bad, 4, &e2) == EQ_OK);
    ck_assert(eq_backend_maxpool_bwd(g_gpu, &d, am.g, dy.g, dx.g, &e2) == EQ_OK);
    ck_assert_int_eq(eq_backend_synchronize(g_gpu, &e2), EQ_ERR_INVALID);
    ck_assert_msg(strstr(e2.msg, "argmax[0]") != NULL, "%s", e2.msg);
    ck_assert_int_eq(eq_backend_synchronize(g_gpu, &e2), EQ_OK); /* reported once */
    s_buf *all[] = {&x, &dy, &y, &am, &dx};
    for (size_t i = 0; i < 5; i++) s_free(all[i]);
    free(hx);
    free(hdy);
}
END_TEST

START_TEST(test_gap_linear)
{
    const int64_t n = 6, hw = 49, c = 37, out = 11;
    float *hx = s_rand((size_t)(n * hw * c), -1, 1, 40), *hdy = s_rand((size_t)(n * c), -1, 1, 41);
    s_buf x = s_both(hx, (size_t)(n * hw * c)), dyc = s_both(hdy, (size_t)(n * c));
    s_buf y = s_both(NULL, (size_t)(n * c)), dx = s_both(NULL, (size_t)(n * hw * c));
    BOTH(eq_backend_gap_fwd(g_cpu, n, hw, c, x.c, y.c, &err_),
         eq_backend_gap_fwd(g_gpu, n, hw, c, x.g, y.g, &err_));
    s_cmp("gap_fwd", &y, 0.0);
    BOTH(eq_backend_gap_bwd(g_cpu, n, hw, c, dyc.c, dx.c, &err_),
         eq_backend_gap_bwd(g_gpu, n, hw, c, dyc.g, dx.g, &err_));
    s_cmp("gap_bwd", &dx, 0.0);
    float *hw_ = s_rand((size_t)(out * c), -1, 1, 42), *hb = s_rand((size_t)out, -1, 1, 43);
    float *hdo = s_rand((size_t)(n * out), -1, 1, 44);
    s_buf w = s_both(hw_, (size_t)(out * c)), b = s_both(hb, (size_t)out);
    s_buf dout = s_both(hdo, (size_t)(n * out)), o = s_both(NULL, (size_t)(n * out));
    s_buf dw = s_both(NULL, (size_t)(out * c)), db = s_both(NULL, (size_t)out);
    for (int bias = 0; bias < 2; bias++) {
        BOTH(eq_backend_linear_fwd(g_cpu, n, c, out, y.c, w.c, bias ? b.c : NULL, o.c, &err_),
             eq_backend_linear_fwd(g_gpu, n, c, out, y.g, w.g, bias ? b.g : NULL, o.g, &err_));
        s_cmp("linear_fwd", &o, TOL);
    }
    BOTH(eq_backend_linear_bwd_data(g_cpu, n, c, out, dout.c, w.c, dyc.c, &err_),
         eq_backend_linear_bwd_data(g_gpu, n, c, out, dout.g, w.g, dyc.g, &err_));
    s_cmp("linear_bwd_data", &dyc, TOL);
    BOTH(eq_backend_linear_bwd_weight(g_cpu, n, c, out, y.c, dout.c, dw.c, db.c, &err_),
         eq_backend_linear_bwd_weight(g_gpu, n, c, out, y.g, dout.g, dw.g, db.g, &err_));
    s_cmp("linear_bwd_weight dw", &dw, TOL);
    s_cmp("linear_bwd_weight db", &db, 0.0);
    s_buf *all[] = {&x, &dyc, &y, &dx, &w, &b, &dout, &o, &dw, &db};
    for (size_t i = 0; i < 10; i++) s_free(all[i]);
    free(hx);
    free(hdy);
    free(hw_);
    free(hb);
    free(hdo);
}
END_TEST

/* ---- loss ------------------------------------------------------------------------ */

START_TEST(test_xent)
{
    const int64_t n = 13, k = _i == 0 ? 10 : 1000;
    const float smooth = _i == 0 ? 0.0f : 0.1f;
    const int mix = _i == 1;
    eq_xent_desc d;
    eq_err err = {0};
    ck_assert(eq_xent_desc_init(&d, n, k, smooth, &err) == EQ_OK);
    float *hz = s_rand((size_t)(n * k), -4, 4, 50), *hl = s_rand((size_t)n, 0, 1, 53);
    int32_t *la = s_labels((size_t)n, (int32_t)k, 51), *lb = s_labels((size_t)n, (int32_t)k, 52);
    s_buf z = s_both(hz, (size_t)(n * k)), a = s_both(la, (size_t)n), b = s_both(lb, (size_t)n);
    s_buf lam = s_both(hl, (size_t)n), loss = s_both(NULL, 1), dz = s_both(NULL, (size_t)(n * k));
    BOTH(eq_backend_xent_fwd(g_cpu, &d, z.c, a.c, mix ? b.c : NULL, mix ? lam.c : NULL, loss.c, &err_),
         eq_backend_xent_fwd(g_gpu, &d, z.g, a.g, mix ? b.g : NULL, mix ? lam.g : NULL, loss.g, &err_));
    s_cmp("xent_fwd", &loss, TOL);
    BOTH(eq_backend_xent_bwd(g_cpu, &d, z.c, a.c, mix ? b.c : NULL, mix ? lam.c : NULL, 0.5f, dz.c,
                             &err_),
         eq_backend_xent_bwd(g_gpu, &d, z.g, a.g, mix ? b.g : NULL, mix ? lam.g : NULL, 0.5f, dz.g,
                             &err_));
    s_cmp("xent_bwd", &dz, TOL);
    /* a label out of range is reported at the next download */
    int32_t bad = (int32_t)k;
    eq_err e2 = {0};
    ck_assert(eq_backend_upload(g_gpu, (int32_t *)a.g + 3, &bad, 4, &e2) == EQ_OK);
    ck_assert(eq_backend_xent_fwd(g_gpu, &d, z.g, a.g, NULL, NULL, loss.g, &e2) == EQ_OK);
    float l;
    ck_assert_int_eq(eq_backend_download(g_gpu, &l, loss.g, 4, &e2), EQ_ERR_INVALID);
    ck_assert_msg(strstr(e2.msg, "row 3") && strstr(e2.msg, "label"), "%s", e2.msg);
    /* several bad rows flagged by concurrent threads: the message names one
     * of them with that row's own label (row and label are stored together) */
    int32_t *hl2 = malloc((size_t)n * sizeof *hl2);
    ck_assert_ptr_nonnull(hl2);
    memcpy(hl2, la, (size_t)n * sizeof *hl2);
    for (int64_t i = 1; i < n; i += 2) hl2[i] = i % 4 == 1 ? (int32_t)(k + 100 * i) : (int32_t)(-7 - i);
    ck_assert(eq_backend_upload(g_gpu, a.g, hl2, (size_t)n * 4, &e2) == EQ_OK);
    for (int fwd = 1; fwd >= 0; fwd--) {
        eq_status st2 = fwd ? eq_backend_xent_fwd(g_gpu, &d, z.g, a.g, NULL, NULL, loss.g, &e2)
                            : eq_backend_xent_bwd(g_gpu, &d, z.g, a.g, NULL, NULL, 0.5f, dz.g, &e2);
        ck_assert(st2 == EQ_OK);
        ck_assert_int_eq(eq_backend_synchronize(g_gpu, &e2), EQ_ERR_INVALID);
        const char *rp = strstr(e2.msg, "row ");
        long row = -1, lab = 0;
        ck_assert_msg(rp && sscanf(rp, "row %ld has label %ld", &row, &lab) == 2, "%s", e2.msg);
        ck_assert_msg(row >= 1 && row < n && row % 2 == 1 && lab == hl2[row],
                      "xent_%s: %s (row %ld's label is %d)", fwd ? "fwd" : "bwd", e2.msg, row,
                      row >= 0 && row < n ? hl2[row] : 0);
    }
    free(hl2);
    s_buf *all[] = {&z, &a, &b, &lam, &loss, &dz};
    for (size_t i = 0; i < 6; i++) s_free(all[i]);
    free(hz);
    free(hl);
    free(la);
    free(lb);
}
END_TEST

/* ---- optimisers --------------------------------------------------------------------- */

START_TEST(test_optim)
{
    const size_t n = 5000;
    float *hp = s_rand(n, -1, 1, 60), *hg = s_rand(n, -1, 1, 61), *hb = s_rand(n, -1, 1, 62);
    float *hnu = s_rand(n, 0.01f, 1, 63);
    s_buf p = s_both(hp, n), g = s_both(hg, n), buf = s_both(hb, n), nu = s_both(hnu, n);
    eq_sgd_params sgd[] = {
        {0.1f, 0.0f, 0.0f, 0.0f, 0, 0},
        {0.1f, 0.9f, 0.0f, 5e-4f, 1, 0},
        {0.05f, 0.9f, 0.1f, 1e-4f, 0, 1},
    };
    for (size_t i = 0; i < 3; i++) {
        BOTH(eq_backend_sgd_step(g_cpu, n, &sgd[i], p.c, g.c, buf.c, &err_),
             eq_backend_sgd_step(g_gpu, n, &sgd[i], p.g, g.g, buf.g, &err_));
        s_cmp("sgd_step param", &p, 0.0);
        s_cmp("sgd_step buf", &buf, 0.0);
    }
    for (int64_t t = 1; t <= 3; t++) {
        eq_adam_params ad = {1e-3f, 0.9f, 0.999f, 1e-8f, t == 2 ? 1e-2f : 0.0f, t};
        BOTH(eq_backend_adam_step(g_cpu, n, &ad, p.c, g.c, buf.c, nu.c, &err_),
             eq_backend_adam_step(g_gpu, n, &ad, p.g, g.g, buf.g, nu.g, &err_));
        s_cmp("adam_step param", &p, 0.0);
        s_cmp("adam_step mu", &buf, 0.0);
        s_cmp("adam_step nu", &nu, 0.0);
    }
    s_buf *all[] = {&p, &g, &buf, &nu};
    for (size_t i = 0; i < 4; i++) s_free(all[i]);
    free(hp);
    free(hg);
    free(hb);
    free(hnu);
}
END_TEST

/* ---- deterministic mode -------------------------------------------------------------- */

/* _i: the convolutions' precision (fp32, bf16, fp16) */
START_TEST(test_deterministic)
{
    eq_err err = {0};
    eq_cuda_opts o = {.device = 0, .deterministic = 1};
    float *out[2][3];
    eq_conv2d_desc d = s_convs[0];
    d.n = 8;
    d.prec = _i;
    ck_assert(eq_conv2d_desc_init(&d, &err) == EQ_OK);
    size_t nx = (size_t)(d.n * d.h * d.w * d.c), ny = (size_t)(d.n * d.p * d.q * d.k);
    size_t nw = (size_t)(d.k * d.c * d.r * d.s);
    float *hx = s_rand(nx, -1, 1, 70), *hw = s_rand(nw, -1, 1, 71), *hdy = s_rand(ny, -1, 1, 72);
    s_round_host((eq_precision)d.prec, hx, nx);
    s_round_host((eq_precision)d.prec, hw, nw);
    s_round_host((eq_precision)d.prec, hdy, ny);
    for (int run = 0; run < 2; run++) {
        eq_backend *be = eq_backend_cuda_new(&o, &err);
        ck_assert_msg(be != NULL, "%s", err.msg);
        float *x = s_up(be, hx, nx * 4), *w = s_up(be, hw, nw * 4), *dy = s_up(be, hdy, ny * 4);
        float *y = s_up(be, NULL, ny * 4), *dx = s_up(be, NULL, nx * 4), *dw = s_up(be, NULL, nw * 4);
        OK(eq_backend_conv2d_fwd(be, &d, x, w, y, &err_));
        OK(eq_backend_conv2d_bwd_data(be, &d, dy, w, dx, &err_));
        OK(eq_backend_conv2d_bwd_filter(be, &d, x, dy, dw, &err_));
        out[run][0] = s_down(be, y, ny);
        out[run][1] = s_down(be, dx, nx);
        out[run][2] = s_down(be, dw, nw);
        void *all[] = {x, w, dy, y, dx, dw};
        for (size_t i = 0; i < 6; i++) eq_backend_release(be, all[i]);
        eq_backend_destroy(&be);
    }
    ck_assert_msg(memcmp(out[0][0], out[1][0], ny * 4) == 0, "conv fwd (%s) differs between runs",
                  eq_precision_name((eq_precision)d.prec));
    ck_assert_msg(memcmp(out[0][1], out[1][1], nx * 4) == 0,
                  "conv bwd data (%s) differs between runs", eq_precision_name((eq_precision)d.prec));
    ck_assert_msg(memcmp(out[0][2], out[1][2], nw * 4) == 0,
                  "conv bwd filter (%s) differs between runs",
                  eq_precision_name((eq_precision)d.prec));
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < 3; i++) free(out[r][i]);
    free(hx);
    free(hw);
    free(hdy);
}
END_TEST

/* ---- events, prefetch, staging ---------------------------------------------------------- */

START_TEST(test_events_prefetch)
{
    eq_err err = {0};
    const size_t n = 1 << 20;
    float *h = s_rand(n, -1, 1, 80), *back;
    float *d1 = s_up(g_gpu, NULL, n * 4), *d2 = s_up(g_gpu, NULL, n * 4);
    ck_assert(eq_cuda_prefetch(g_gpu, d1, h, n * 4, &err) == EQ_OK);
    ck_assert(eq_cuda_prefetch(g_gpu, d2, h, n * 4, &err) == EQ_OK);
    ck_assert(eq_cuda_prefetch(g_gpu, d1, h, n * 4, &err) == EQ_OK); /* reuses slot 0 */
    ck_assert(eq_cuda_prefetch_wait(g_gpu, &err) == EQ_OK);
    eq_backend_event *ev = eq_backend_event_new(g_gpu, &err);
    ck_assert_ptr_nonnull(ev);
    ck_assert(eq_backend_add(g_gpu, n, d1, d2, d1, &err) == EQ_OK);
    ck_assert(eq_backend_event_record(g_gpu, ev, &err) == EQ_OK);
    ck_assert(eq_backend_event_synchronize(g_gpu, ev, &err) == EQ_OK);
    ck_assert(eq_backend_event_wait(g_gpu, ev, &err) == EQ_OK);
    back = s_down(g_gpu, d1, n);
    for (size_t i = 0; i < n; i++) ck_assert(back[i] == h[i] + h[i]);
    eq_backend_event_destroy(g_gpu, &ev);
    ck_assert_ptr_null(ev);
    ck_assert_ptr_null(eq_cuda_stream(g_cpu));
    ck_assert_ptr_nonnull(eq_cuda_stream(g_gpu));
    ck_assert_int_eq(eq_cuda_prefetch(g_cpu, d1, h, 4, &err), EQ_ERR_INVALID);
    eq_backend_release(g_gpu, d1);
    eq_backend_release(g_gpu, d2);
    free(h);
    free(back);
}
END_TEST

START_TEST(test_stage_images)
{
    eq_err err = {0};
    const int64_t n = 5, hh = 6, ww = 7, c = 3, per = hh * ww * c;
    uint8_t *u = malloc((size_t)(n * per));
    eq_rng r;
    eq_rng_init(&r, g_seed, 90);
    for (int64_t i = 0; i < n * per; i++) u[i] = (uint8_t)eq_rng_below(&r, 256);
    const double mean[3] = {0.485, 0.456, 0.406}, stdv[3] = {0.229, 0.224, 0.225};
    float scale[3], shift[3], lam[5] = {1.0f, 0.3f, 0.5f, 0.0f, 0.77f};
    int32_t partner[5] = {0, 2, 1, 4, 0};
    for (int j = 0; j < 3; j++) {
        scale[j] = (float)(1.0 / (255.0 * stdv[j]));
        shift[j] = (float)(-mean[j] / stdv[j]);
    }
    uint8_t *du = s_up(g_gpu, u, (size_t)(n * per));
    int32_t *dp = s_up(g_gpu, partner, sizeof partner);
    float *dl = s_up(g_gpu, lam, sizeof lam), *dx = s_up(g_gpu, NULL, (size_t)(n * per) * 4);
    for (int mix = 0; mix < 2; mix++) {
        ck_assert_msg(eq_cuda_stage_images(g_gpu, n, per, c, du, scale, shift, mix ? dp : NULL,
                                           mix ? dl : NULL, dx, &err) == EQ_OK, "%s", err.msg);
        float *got = s_down(g_gpu, dx, (size_t)(n * per));
        for (int64_t i = 0; i < n; i++)
            for (int64_t k = 0; k < per; k++) {
                int64_t ch = k % c;
                float va = (float)u[i * per + k] * scale[ch] + shift[ch];
                if (mix) {
                    float vb = (float)u[partner[i] * per + k] * scale[ch] + shift[ch];
                    va = lam[i] * va + (1.0f - lam[i]) * vb;
                }
                ck_assert_msg(got[i * per + k] == va, "image %lld byte %lld: %g != %g",
                              (long long)i, (long long)k, (double)got[i * per + k], (double)va);
            }
        free(got);
    }
    ck_assert_int_eq(eq_cuda_stage_images(g_gpu, n, per, 17, du, scale, shift, NULL, NULL, dx, &err),
                     EQ_ERR_INVALID);
    ck_assert_int_eq(eq_cuda_stage_images(g_gpu, n, per, c, du, scale, shift, dp, NULL, dx, &err),
                     EQ_ERR_INVALID);
    /* partners outside [0, n) (device data, not checked on the host): not
     * read; the next synchronisation names one such image, and the images
     * with a valid partner are still blended */
    for (int bad = 0; bad < 2; bad++) {
        int32_t p2[5] = {0, 2, bad ? -1 : (int32_t)n, 4, 0};
        ck_assert(eq_backend_upload(g_gpu, dp, p2, sizeof p2, &err) == EQ_OK);
        ck_assert(eq_cuda_stage_images(g_gpu, n, per, c, du, scale, shift, dp, dl, dx, &err) == EQ_OK);
        ck_assert_int_eq(eq_backend_synchronize(g_gpu, &err), EQ_ERR_INVALID);
        ck_assert_msg(strstr(err.msg, "partner of image 2"), "%s", err.msg);
        ck_assert_msg(eq_backend_synchronize(g_gpu, &err) == EQ_OK, "flag not cleared: %s", err.msg);
        float *got = s_down(g_gpu, dx, (size_t)(n * per));
        for (int64_t k = 0; k < per; k++) {
            int64_t ch = k % c;
            float v2 = (float)u[2 * per + k] * scale[ch] + shift[ch];
            float v1 = (float)u[1 * per + k] * scale[ch] + shift[ch];
            float vb = (float)u[2 * per + k] * scale[ch] + shift[ch];
            ck_assert_msg(got[2 * per + k] == v2, "image 2 (bad partner) byte %lld: %g != %g",
                          (long long)k, (double)got[2 * per + k], (double)v2);
            ck_assert(got[1 * per + k] == lam[1] * v1 + (1.0f - lam[1]) * vb);
        }
        free(got);
    }
    eq_backend_release(g_gpu, du);
    eq_backend_release(g_gpu, dp);
    eq_backend_release(g_gpu, dl);
    eq_backend_release(g_gpu, dx);
    free(u);
}
END_TEST

int main(void)
{
    char why[256] = "";
    if (eq_cuda_device_count(why, sizeof why) == 0) {
        printf("SKIP: check_cuda: no CUDA device: %s\n", why);
        return 77;
    }
    const char *s = getenv("EQ_TEST_SEED");
    g_seed = s && *s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    printf("check_cuda: seed %llu (EQ_TEST_SEED=%llu replays it)\n", (unsigned long long)g_seed,
           (unsigned long long)g_seed);
    Suite *su = suite_create("cuda");
    TCase *tc = tcase_create("parity");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, s_setup, s_teardown);
    tcase_add_loop_test(tc, test_conv, 0, NCONV);
    tcase_add_loop_test(tc, test_bn, 0, 2);
    tcase_add_loop_test(tc, test_bn_relu, 0, NBNR);
    tcase_add_test(tc, test_elementwise);
    tcase_add_loop_test(tc, test_pool, 0, NPOOL);
    tcase_add_test(tc, test_gap_linear);
    tcase_add_loop_test(tc, test_xent, 0, 2);
    tcase_add_test(tc, test_optim);
    tcase_add_loop_test(tc, test_deterministic, 0, 3);
    tcase_add_test(tc, test_round_to);
    tcase_add_test(tc, test_nonfinite);
    tcase_add_loop_test(tc, test_conv_prec, 0, 2 * (NCONV + 2));
    tcase_add_test(tc, test_events_prefetch);
    tcase_add_test(tc, test_stage_images);
    suite_add_tcase(su, tc);
    /* No fork mode: CUDA cannot be used in a child forked after the parent
     * initialised it (cudaGetDeviceCount above). */
    SRunner *sr = srunner_create(su);
#ifdef EQ_CUDA_EMU
    /* The CPU emulation (tests/cudaemu) has no driver state a fork breaks:
     * each test in its own process, under the timeout (a fault, sticky for
     * the process as for a CUDA context, stays in its test). */
    srunner_set_fork_status(sr, CK_FORK);
#else
    srunner_set_fork_status(sr, CK_NOFORK);
#endif
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
