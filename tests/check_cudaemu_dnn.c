/*
 * tests/check_cudaemu_dnn.c -- the host emulation of cuDNN's legacy
 * convolution API and of cuBLAS (tests/cudaemu/emu_dnn.c, emu_blas.c)
 * against references that do not share its code:
 *
 *  - convolutions against the CPU backend's eq_backend_conv2d_fwd /
 *    bwd_data / bwd_filter (trainer/backend.h) on fresh random inputs (the
 *    seed is printed; EQ_TEST_SEED=<seed> replays it), fp32 within 1e-5
 *    norm-wise, for every algorithm the emulation runs, in three layouts
 *    (NHWC + KRSC filters as eq uses them, NCHW + KCRS, NHWC + KCRS), over
 *    strides, pads, dilation, groups (depthwise too), 1x1, rectangular
 *    kernels; alpha/beta (beta != 0 accumulates, beta == 0 never reads the
 *    output); CUDNN_CONVOLUTION against a flipped kernel;
 *  - bf16/fp16 storage: representable random operands against the CPU's
 *    fp32 result (norm-wise within u + 1e-5, and equal to it rounded except
 *    near rounding midpoints), and the output rounding itself, bitwise
 *    against trainer/prec.h's eq_precision_round on 262144 products of
 *    random 16-bit patterns (subnormals, overflow to inf included);
 *  - the API's rules: descriptor and problem errors with cuDNN's statuses,
 *    the workspace (too small or NULL: BAD_PARAM; the bytes an algorithm
 *    needs are really overwritten), Find's sorted results and _v7's order,
 *    determinism flags that hold (non-deterministic algorithms vary from
 *    run to run), TF32 only where the math type permits it, the
 *    EQ_CUDNN_EMU_REFUSE_16BIT and EQ_CUDNN_EMU_BROKEN_ALGOS switches;
 *  - cublasSgemm against a naive loop in double for all four transpose
 *    combinations with leading dimensions larger than the rows, the
 *    INVALID_VALUE rules for leading dimensions, sizes and operations,
 *    beta == 0 not reading C, TF32 math mode.
 */
#include "tests/cudaemu/cublas_v2.h"
#include "tests/cudaemu/cudnn.h"
#include "trainer/backend.h"
#include "trainer/prec.h"
#include "tests/testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TOL 1e-5

static uint64_t g_seed;
static uint64_t g_rng;
static eq_backend *g_cpu;

static void s_setup(void)
{
    g_rng = g_seed ? g_seed : 1;
    eq_err err = {0};
    g_cpu = eq_backend_cpu_new(1, &err);
    ck_assert_msg(g_cpu != NULL, "eq_backend_cpu_new: %s", err.msg);
}

static void s_teardown(void)
{
    eq_backend_destroy(&g_cpu);
}

#define DNN(call)                                                                  \
    do {                                                                           \
        cudnnStatus_t s_ = (call);                                                 \
        ck_assert_msg(s_ == CUDNN_STATUS_SUCCESS, "%s: %s", #call, cudnnGetErrorString(s_)); \
    } while (0)

#define DNN_IS(want, call)                                                                 \
    do {                                                                                   \
        cudnnStatus_t s_ = (call);                                                         \
        ck_assert_msg(s_ == (want), "%s: %s, expected %s", #call, cudnnGetErrorString(s_), \
                      cudnnGetErrorString(want));                                          \
    } while (0)

/* ---- shapes, layouts, operands ------------------------------------------- */

static const eq_conv2d_desc s_shapes[] = {
    /* n h w c  k  r s  sh sw ph pw dh dw g */
    {2, 9, 9, 16, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0},   /* 3x3 (check_cuda's shapes) */
    {2, 10, 10, 16, 24, 1, 1, 2, 2, 0, 0, 1, 1, 1, 0, 0, 0}, /* 1x1 stride 2 */
    {2, 23, 23, 3, 16, 7, 7, 2, 2, 3, 3, 1, 1, 1, 0, 0, 0},  /* stem */
    {2, 8, 8, 16, 16, 3, 3, 1, 1, 1, 1, 1, 1, 16, 0, 0, 0},  /* depthwise */
    {1, 11, 9, 8, 12, 3, 3, 1, 2, 2, 1, 2, 1, 4, 0, 0, 0},   /* dilated, grouped, odd */
    {4, 16, 16, 32, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0}, /* check_cuda's larger one */
    {2, 7, 9, 6, 10, 3, 5, 1, 2, 1, 2, 1, 1, 2, 0, 0, 0},    /* rectangular, grouped */
    {3, 5, 6, 8, 8, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0},     /* 1x1 stride 1 */
    {2, 12, 12, 24, 24, 3, 3, 2, 2, 1, 1, 1, 1, 24, 0, 0, 0}, /* depthwise stride 2 */
    {2, 6, 13, 5, 7, 2, 4, 3, 1, 0, 3, 2, 3, 1, 0, 0, 0},    /* even kernel, stride 3, dil 2x3 */
};
#define NSHAPES ((int)(sizeof s_shapes / sizeof s_shapes[0]))

enum { L_NHWC_KRSC = 0, L_NCHW_KCRS = 1, L_NHWC_KCRS = 2, NLAYOUTS = 3 };

typedef struct s_dnn {
    cudnnHandle_t h;
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
} s_dnn;

static void s_dnn_make(s_dnn *t, const eq_conv2d_desc *d, cudnnDataType_t dt, int layout,
                       cudnnConvolutionMode_t mode, cudnnMathType_t math)
{
    const cudnnTensorFormat_t tf = layout == L_NCHW_KCRS ? CUDNN_TENSOR_NCHW : CUDNN_TENSOR_NHWC;
    const cudnnTensorFormat_t ff = layout == L_NHWC_KRSC ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
    DNN(cudnnCreate(&t->h));
    DNN(cudnnCreateTensorDescriptor(&t->xd));
    DNN(cudnnCreateTensorDescriptor(&t->yd));
    DNN(cudnnCreateFilterDescriptor(&t->wd));
    DNN(cudnnCreateConvolutionDescriptor(&t->cd));
    DNN(cudnnSetTensor4dDescriptor(t->xd, tf, dt, (int)d->n, (int)d->c, (int)d->h, (int)d->w));
    DNN(cudnnSetTensor4dDescriptor(t->yd, tf, dt, (int)d->n, (int)d->k, (int)d->p, (int)d->q));
    DNN(cudnnSetFilter4dDescriptor(t->wd, dt, ff, (int)d->k, (int)(d->c / d->groups), (int)d->r,
                                   (int)d->s));
    DNN(cudnnSetConvolution2dDescriptor(t->cd, (int)d->pad_h, (int)d->pad_w, (int)d->stride_h,
                                        (int)d->stride_w, (int)d->dil_h, (int)d->dil_w, mode,
                                        CUDNN_DATA_FLOAT));
    DNN(cudnnSetConvolutionGroupCount(t->cd, (int)d->groups));
    DNN(cudnnSetConvolutionMathType(t->cd, math));
    int on, oc, oh, ow;
    DNN(cudnnGetConvolution2dForwardOutputDim(t->cd, t->xd, t->wd, &on, &oc, &oh, &ow));
    ck_assert_int_eq(on, (int)d->n);
    ck_assert_int_eq(oc, (int)d->k);
    ck_assert_int_eq(oh, (int)d->p);
    ck_assert_int_eq(ow, (int)d->q);
}

static void s_dnn_free(s_dnn *t)
{
    DNN(cudnnDestroyTensorDescriptor(t->xd));
    DNN(cudnnDestroyTensorDescriptor(t->yd));
    DNN(cudnnDestroyFilterDescriptor(t->wd));
    DNN(cudnnDestroyConvolutionDescriptor(t->cd));
    DNN(cudnnDestroy(t->h));
}

/* Operands: activations NHWC, weights OIHW (the CPU backend's layouts),
 * random in [-1, 1), rounded to prec; the CPU backend's three results. */
typedef struct s_ops {
    eq_conv2d_desc d;
    int prec; /* eq_precision */
    size_t nx, ny, nw;
    float *x, *w, *dy;
    float *y, *dx, *dw; /* CPU results */
} s_ops;

static float *s_vec(size_t n, int prec)
{
    float *v = eq_test_vec(&g_rng, n, 1.0f);
    if (prec)
        for (size_t i = 0; i < n; i++) v[i] = eq_precision_round((eq_precision)prec, v[i]);
    return v;
}

static void s_ops_make(s_ops *o, const eq_conv2d_desc *d0, int prec)
{
    eq_err err = {0};
    o->d = *d0;
    ck_assert_msg(eq_conv2d_desc_init(&o->d, &err) == EQ_OK, "%s", err.msg);
    const eq_conv2d_desc *d = &o->d;
    o->prec = prec;
    o->nx = (size_t)(d->n * d->h * d->w * d->c);
    o->ny = (size_t)(d->n * d->p * d->q * d->k);
    o->nw = (size_t)(d->k * (d->c / d->groups) * d->r * d->s);
    o->x = s_vec(o->nx, prec);
    o->w = s_vec(o->nw, prec);
    o->dy = s_vec(o->ny, prec);
    o->y = eq_test_vec(&g_rng, o->ny, 0.0f);
    o->dx = eq_test_vec(&g_rng, o->nx, 0.0f);
    o->dw = eq_test_vec(&g_rng, o->nw, 0.0f);
    ck_assert_msg(eq_backend_conv2d_fwd(g_cpu, d, o->x, o->w, o->y, &err) == EQ_OK, "%s", err.msg);
    ck_assert_msg(eq_backend_conv2d_bwd_data(g_cpu, d, o->dy, o->w, o->dx, &err) == EQ_OK, "%s",
                  err.msg);
    ck_assert_msg(eq_backend_conv2d_bwd_filter(g_cpu, d, o->x, o->dy, o->dw, &err) == EQ_OK, "%s",
                  err.msg);
}

static void s_ops_free(s_ops *o)
{
    free(o->x);
    free(o->w);
    free(o->dy);
    free(o->y);
    free(o->dx);
    free(o->dw);
}

static cudnnDataType_t s_dt(int prec)
{
    return prec == EQ_PREC_BF16 ? CUDNN_DATA_BFLOAT16
           : prec == EQ_PREC_FP16 ? CUDNN_DATA_HALF
                                  : CUDNN_DATA_FLOAT;
}

/* Element i of a device array of the precision's type. */
static void s_set(void *p, size_t i, int prec, float v)
{
    if (prec == EQ_PREC_FP32)
        ((float *)p)[i] = v;
    else
        ((uint16_t *)p)[i] = eq_pr_bits16(prec, v);
}

static float s_getv(const void *p, size_t i, int prec)
{
    return prec == EQ_PREC_FP32 ? ((const float *)p)[i] : eq_pr_from16(prec, ((const uint16_t *)p)[i]);
}

static size_t s_el(int prec)
{
    return prec == EQ_PREC_FP32 ? sizeof(float) : sizeof(uint16_t);
}

/* An NHWC activation [n][h][w][c] in the layout's tensor format. */
static void *s_tensor_to(const float *a, int64_t n, int64_t h, int64_t w, int64_t c, int layout,
                         int prec)
{
    void *p = malloc((size_t)(n * h * w * c) * s_el(prec) + 64);
    ck_assert_ptr_nonnull(p);
    for (int64_t i = 0; i < n; i++)
        for (int64_t y = 0; y < h; y++)
            for (int64_t x = 0; x < w; x++)
                for (int64_t ch = 0; ch < c; ch++) {
                    size_t src = (size_t)(((i * h + y) * w + x) * c + ch);
                    size_t dst = layout == L_NCHW_KCRS ? (size_t)(((i * c + ch) * h + y) * w + x) : src;
                    s_set(p, dst, prec, a[src]);
                }
    return p;
}

static float *s_tensor_from(const void *p, int64_t n, int64_t h, int64_t w, int64_t c, int layout,
                            int prec)
{
    float *a = malloc((size_t)(n * h * w * c) * sizeof *a);
    ck_assert_ptr_nonnull(a);
    for (int64_t i = 0; i < n; i++)
        for (int64_t y = 0; y < h; y++)
            for (int64_t x = 0; x < w; x++)
                for (int64_t ch = 0; ch < c; ch++) {
                    size_t dst = (size_t)(((i * h + y) * w + x) * c + ch);
                    size_t src = layout == L_NCHW_KCRS ? (size_t)(((i * c + ch) * h + y) * w + x) : dst;
                    a[dst] = s_getv(p, src, prec);
                }
    return a;
}

/* An OIHW filter [k][c][r][s] in the layout's filter format (KRSC or KCRS). */
static void *s_filter_to(const float *a, int64_t k, int64_t c, int64_t r, int64_t s, int layout,
                         int prec)
{
    void *p = malloc((size_t)(k * c * r * s) * s_el(prec) + 64);
    ck_assert_ptr_nonnull(p);
    for (int64_t o = 0; o < k; o++)
        for (int64_t i = 0; i < c; i++)
            for (int64_t y = 0; y < r; y++)
                for (int64_t x = 0; x < s; x++) {
                    size_t src = (size_t)(((o * c + i) * r + y) * s + x);
                    size_t dst = layout == L_NHWC_KRSC ? (size_t)(((o * r + y) * s + x) * c + i) : src;
                    s_set(p, dst, prec, a[src]);
                }
    return p;
}

static float *s_filter_from(const void *p, int64_t k, int64_t c, int64_t r, int64_t s, int layout,
                            int prec)
{
    float *a = malloc((size_t)(k * c * r * s) * sizeof *a);
    ck_assert_ptr_nonnull(a);
    for (int64_t o = 0; o < k; o++)
        for (int64_t i = 0; i < c; i++)
            for (int64_t y = 0; y < r; y++)
                for (int64_t x = 0; x < s; x++) {
                    size_t dst = (size_t)(((o * c + i) * r + y) * s + x);
                    size_t src = layout == L_NHWC_KRSC ? (size_t)(((o * r + y) * s + x) * c + i) : dst;
                    a[dst] = s_getv(p, src, prec);
                }
    return a;
}

/* Device copies of an s_ops in a layout. */
typedef struct s_dev {
    void *x, *w, *dy;
    void *y, *dx, *dw; /* outputs */
} s_dev;

static void s_dev_make(s_dev *v, const s_ops *o, int layout)
{
    const eq_conv2d_desc *d = &o->d;
    v->x = s_tensor_to(o->x, d->n, d->h, d->w, d->c, layout, o->prec);
    v->dy = s_tensor_to(o->dy, d->n, d->p, d->q, d->k, layout, o->prec);
    v->w = s_filter_to(o->w, d->k, d->c / d->groups, d->r, d->s, layout, o->prec);
    v->y = malloc(o->ny * s_el(o->prec) + 64);
    v->dx = malloc(o->nx * s_el(o->prec) + 64);
    v->dw = malloc(o->nw * s_el(o->prec) + 64);
    ck_assert(v->y && v->dx && v->dw);
    /* poison: beta == 0 must not read them */
    memset(v->y, 0xff, o->ny * s_el(o->prec));
    memset(v->dx, 0xff, o->nx * s_el(o->prec));
    memset(v->dw, 0xff, o->nw * s_el(o->prec));
}

static void s_dev_free(s_dev *v)
{
    free(v->x);
    free(v->w);
    free(v->dy);
    free(v->y);
    free(v->dx);
    free(v->dw);
}

static const char *const s_dir_name[3] = {"fwd", "bwd_data", "bwd_filter"};

/* The workspace size of (dir, algo); CUDNN_STATUS_NOT_SUPPORTED etc. as is. */
static cudnnStatus_t s_ws(const s_dnn *t, int dir, int algo, size_t *ws)
{
    if (dir == 0)
        return cudnnGetConvolutionForwardWorkspaceSize(t->h, t->xd, t->wd, t->cd, t->yd,
                                                       (cudnnConvolutionFwdAlgo_t)algo, ws);
    if (dir == 1)
        return cudnnGetConvolutionBackwardDataWorkspaceSize(t->h, t->wd, t->yd, t->cd, t->xd,
                                                            (cudnnConvolutionBwdDataAlgo_t)algo, ws);
    return cudnnGetConvolutionBackwardFilterWorkspaceSize(t->h, t->xd, t->yd, t->cd, t->wd,
                                                          (cudnnConvolutionBwdFilterAlgo_t)algo, ws);
}

/* Run direction dir with algorithm algo on v's operands into v's output. */
static cudnnStatus_t s_exec(const s_dnn *t, s_dev *v, int dir, int algo, float alpha, float beta,
                            void *ws, size_t wsb)
{
    if (dir == 0)
        return cudnnConvolutionForward(t->h, &alpha, t->xd, v->x, t->wd, v->w, t->cd,
                                       (cudnnConvolutionFwdAlgo_t)algo, ws, wsb, &beta, t->yd, v->y);
    if (dir == 1)
        return cudnnConvolutionBackwardData(t->h, &alpha, t->wd, v->w, t->yd, v->dy, t->cd,
                                            (cudnnConvolutionBwdDataAlgo_t)algo, ws, wsb, &beta,
                                            t->xd, v->dx);
    return cudnnConvolutionBackwardFilter(t->h, &alpha, t->xd, v->x, t->yd, v->dy, t->cd,
                                          (cudnnConvolutionBwdFilterAlgo_t)algo, ws, wsb, &beta,
                                          t->wd, v->dw);
}

/* Run with a workspace of exactly the size GetWorkspaceSize reports. */
static cudnnStatus_t s_exec_ws(const s_dnn *t, s_dev *v, int dir, int algo, float alpha, float beta)
{
    size_t wsb = 0;
    cudnnStatus_t st = s_ws(t, dir, algo, &wsb);
    if (st) return st;
    void *ws = wsb ? malloc(wsb) : NULL;
    st = s_exec(t, v, dir, algo, alpha, beta, ws, wsb);
    free(ws);
    return st;
}

/* The output of dir in NHWC/OIHW floats (caller frees). */
static float *s_out(const s_ops *o, const s_dev *v, int dir, int layout)
{
    const eq_conv2d_desc *d = &o->d;
    if (dir == 0) return s_tensor_from(v->y, d->n, d->p, d->q, d->k, layout, o->prec);
    if (dir == 1) return s_tensor_from(v->dx, d->n, d->h, d->w, d->c, layout, o->prec);
    return s_filter_from(v->dw, d->k, d->c / d->groups, d->r, d->s, layout, o->prec);
}

static const float *s_ref(const s_ops *o, int dir, size_t *n)
{
    *n = dir == 0 ? o->ny : dir == 1 ? o->nx : o->nw;
    return dir == 0 ? o->y : dir == 1 ? o->dx : o->dw;
}

/* Every perf result of Find (timed=1) or _v7 for dir, as (algo, status,
 * time, memory, determinism, math). */
typedef struct s_perf {
    int algo;
    cudnnStatus_t status;
    float time;
    size_t memory;
    cudnnDeterminism_t det;
    cudnnMathType_t math;
} s_perf;

static cudnnStatus_t s_query(const s_dnn *t, int dir, int timed, int req, s_perf *out, int *n)
{
    cudnnStatus_t st;
    *n = -1;
    if (dir == 0) {
        cudnnConvolutionFwdAlgoPerf_t r[16];
        st = timed ? cudnnFindConvolutionForwardAlgorithm(t->h, t->xd, t->wd, t->cd, t->yd, req, n, r)
                   : cudnnGetConvolutionForwardAlgorithm_v7(t->h, t->xd, t->wd, t->cd, t->yd, req, n, r);
        for (int i = 0; !st && i < *n; i++)
            out[i] = (s_perf){(int)r[i].algo, r[i].status, r[i].time, r[i].memory, r[i].determinism, r[i].mathType};
    } else if (dir == 1) {
        cudnnConvolutionBwdDataAlgoPerf_t r[16];
        st = timed ? cudnnFindConvolutionBackwardDataAlgorithm(t->h, t->wd, t->yd, t->cd, t->xd, req, n, r)
                   : cudnnGetConvolutionBackwardDataAlgorithm_v7(t->h, t->wd, t->yd, t->cd, t->xd, req, n, r);
        for (int i = 0; !st && i < *n; i++)
            out[i] = (s_perf){(int)r[i].algo, r[i].status, r[i].time, r[i].memory, r[i].determinism, r[i].mathType};
    } else {
        cudnnConvolutionBwdFilterAlgoPerf_t r[16];
        st = timed ? cudnnFindConvolutionBackwardFilterAlgorithm(t->h, t->xd, t->yd, t->cd, t->wd, req, n, r)
                   : cudnnGetConvolutionBackwardFilterAlgorithm_v7(t->h, t->xd, t->yd, t->cd, t->wd, req, n, r);
        for (int i = 0; !st && i < *n; i++)
            out[i] = (s_perf){(int)r[i].algo, r[i].status, r[i].time, r[i].memory, r[i].determinism, r[i].mathType};
    }
    return st;
}

/* ---- fp32 parity: every algorithm, three layouts ------------------------- */

/* _i = shape * NLAYOUTS + layout */
START_TEST(test_conv_fp32)
{
    const int shape = _i / NLAYOUTS, layout = _i % NLAYOUTS;
    s_ops o;
    s_ops_make(&o, &s_shapes[shape], EQ_PREC_FP32);
    s_dnn t;
    s_dnn_make(&t, &o.d, CUDNN_DATA_FLOAT, layout, CUDNN_CROSS_CORRELATION, CUDNN_FMA_MATH);
    s_dev v;
    s_dev_make(&v, &o, layout);
    for (int dir = 0; dir < 3; dir++) {
        s_perf pf[16];
        int n, ran = 0;
        DNN(s_query(&t, dir, 1, 16, pf, &n));
        for (int i = 0; i < n; i++) {
            if (pf[i].status != CUDNN_STATUS_SUCCESS) continue;
            DNN(s_exec_ws(&t, &v, dir, pf[i].algo, 1.0f, 0.0f));
            size_t nr;
            const float *ref = s_ref(&o, dir, &nr);
            float *got = s_out(&o, &v, dir, layout);
            double e = eq_test_relerr(got, ref, nr);
            ck_assert_msg(e <= TOL, "shape %d layout %d %s algo %d: error %.3g", shape, layout,
                          s_dir_name[dir], pf[i].algo, e);
            free(got);
            ran++;
        }
        ck_assert_msg(ran >= 2, "shape %d %s: only %d algorithms ran", shape, s_dir_name[dir], ran);
    }
    s_dev_free(&v);
    s_dnn_free(&t);
    s_ops_free(&o);
}
END_TEST

/* alpha/beta: out = alpha * conv + beta * out_old, in every direction. */
START_TEST(test_alpha_beta)
{
    const int layout = _i % NLAYOUTS, shape = _i / NLAYOUTS ? 4 : 0;
    s_ops o;
    s_ops_make(&o, &s_shapes[shape], EQ_PREC_FP32);
    s_dnn t;
    s_dnn_make(&t, &o.d, CUDNN_DATA_FLOAT, layout, CUDNN_CROSS_CORRELATION, CUDNN_FMA_MATH);
    s_dev v;
    s_dev_make(&v, &o, layout);
    const float alpha = 0.75f, beta = -1.5f;
    const int algo[3] = {CUDNN_CONVOLUTION_FWD_ALGO_GEMM, CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
                         CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1};
    for (int dir = 0; dir < 3; dir++) {
        size_t nr;
        const float *ref = s_ref(&o, dir, &nr);
        float *old = eq_test_vec(&g_rng, nr, 1.0f);
        void *dev = dir == 0   ? s_tensor_to(old, o.d.n, o.d.p, o.d.q, o.d.k, layout, 0)
                    : dir == 1 ? s_tensor_to(old, o.d.n, o.d.h, o.d.w, o.d.c, layout, 0)
                               : s_filter_to(old, o.d.k, o.d.c / o.d.groups, o.d.r, o.d.s, layout, 0);
        void **slot = dir == 0 ? &v.y : dir == 1 ? &v.dx : &v.dw;
        free(*slot);
        *slot = dev;
        DNN(s_exec_ws(&t, &v, dir, algo[dir], alpha, beta));
        float *got = s_out(&o, &v, dir, layout);
        float *want = malloc(nr * sizeof *want);
        for (size_t i = 0; i < nr; i++) want[i] = alpha * ref[i] + beta * old[i];
        double e = eq_test_relerr(got, want, nr);
        ck_assert_msg(e <= TOL, "%s alpha/beta: error %.3g", s_dir_name[dir], e);
        /* beta = 0 over a NaN-poisoned output: alpha * conv, no NaN */
        memset(*slot, 0xff, nr * sizeof(float));
        DNN(s_exec_ws(&t, &v, dir, algo[dir], alpha, 0.0f));
        free(got);
        got = s_out(&o, &v, dir, layout);
        for (size_t i = 0; i < nr; i++) want[i] = alpha * ref[i];
        e = eq_test_relerr(got, want, nr);
        ck_assert_msg(e <= TOL, "%s beta=0: error %.3g (the poisoned output was read?)",
                      s_dir_name[dir], e);
        free(got);
        free(want);
        free(old);
    }
    s_dev_free(&v);
    s_dnn_free(&t);
    s_ops_free(&o);
}
END_TEST

/* CUDNN_CONVOLUTION = cross-correlation with the kernel flipped in r and s. */
START_TEST(test_conv_mode)
{
    const int layout = _i;
    s_ops o;
    s_ops_make(&o, &s_shapes[6], EQ_PREC_FP32); /* rectangular 3x5: a flip that matters */
    const eq_conv2d_desc *d = &o.d;
    const int64_t cg = d->c / d->groups;
    /* the flipped weights, and the CPU's results with them */
    float *wf = malloc(o.nw * sizeof *wf);
    for (int64_t k = 0; k < d->k; k++)
        for (int64_t c = 0; c < cg; c++)
            for (int64_t r = 0; r < d->r; r++)
                for (int64_t s = 0; s < d->s; s++)
                    wf[((k * cg + c) * d->r + r) * d->s + s] =
                        o.w[((k * cg + c) * d->r + (d->r - 1 - r)) * d->s + (d->s - 1 - s)];
    eq_err err = {0};
    ck_assert(eq_backend_conv2d_fwd(g_cpu, d, o.x, wf, o.y, &err) == EQ_OK);
    ck_assert(eq_backend_conv2d_bwd_data(g_cpu, d, o.dy, wf, o.dx, &err) == EQ_OK);
    float *dwf = malloc(o.nw * sizeof *dwf);
    ck_assert(eq_backend_conv2d_bwd_filter(g_cpu, d, o.x, o.dy, dwf, &err) == EQ_OK);
    /* dw of the unflipped weights is dwf flipped back */
    for (int64_t k = 0; k < d->k; k++)
        for (int64_t c = 0; c < cg; c++)
            for (int64_t r = 0; r < d->r; r++)
                for (int64_t s = 0; s < d->s; s++)
                    o.dw[((k * cg + c) * d->r + r) * d->s + s] =
                        dwf[((k * cg + c) * d->r + (d->r - 1 - r)) * d->s + (d->s - 1 - s)];
    s_dnn t;
    s_dnn_make(&t, d, CUDNN_DATA_FLOAT, layout, CUDNN_CONVOLUTION, CUDNN_FMA_MATH);
    s_dev v;
    s_dev_make(&v, &o, layout);
    for (int dir = 0; dir < 3; dir++) {
        DNN(s_exec_ws(&t, &v, dir, 0, 1.0f, 0.0f));
        size_t nr;
        const float *ref = s_ref(&o, dir, &nr);
        float *got = s_out(&o, &v, dir, layout);
        double e = eq_test_relerr(got, ref, nr);
        ck_assert_msg(e <= TOL, "CUDNN_CONVOLUTION %s layout %d: error %.3g", s_dir_name[dir], layout, e);
        free(got);
    }
    s_dev_free(&v);
    s_dnn_free(&t);
    free(wf);
    free(dwf);
    s_ops_free(&o);
}
END_TEST

/* ---- 16-bit storage ------------------------------------------------------ */

/* _i = shape * 2 + (0 bf16, 1 fp16); shapes 0..5 (check_cuda's). */
START_TEST(test_conv_16bit)
{
    const int shape = _i / 2, prec = _i % 2 ? EQ_PREC_FP16 : EQ_PREC_BF16;
    const double u = prec == EQ_PREC_BF16 ? 1.0 / 256 : 1.0 / 2048;
    s_ops o;
    s_ops_make(&o, &s_shapes[shape], prec);
    s_dnn t;
    s_dnn_make(&t, &o.d, s_dt(prec), L_NHWC_KRSC, CUDNN_CROSS_CORRELATION, CUDNN_TENSOR_OP_MATH);
    s_dev v;
    s_dev_make(&v, &o, L_NHWC_KRSC);
    for (int dir = 0; dir < 3; dir++) {
        s_perf pf[16];
        int n;
        DNN(s_query(&t, dir, 1, 16, pf, &n));
        ck_assert(n > 0 && pf[0].status == CUDNN_STATUS_SUCCESS);
        DNN(s_exec_ws(&t, &v, dir, pf[0].algo, 1.0f, 0.0f));
        size_t nr;
        const float *ref = s_ref(&o, dir, &nr);
        float *got = s_out(&o, &v, dir, L_NHWC_KRSC);
        double e = eq_test_relerr(got, ref, nr);
        ck_assert_msg(e <= u + TOL, "%s %s shape %d: error %.3g > u %.3g", eq_precision_name(prec),
                      s_dir_name[dir], shape, e, u);
        /* equal to the CPU's fp32 result rounded, except where that result
         * lies within 1/64 of a spacing of a rounding midpoint, or where
         * the two fp32 sums' own error (1e-5 of the rms: a small sum of
         * large terms is not exact to an fp16 spacing near zero) can move
         * it: |emulation - fp32| <= (1/2 + 1/64) ulp + 1e-5 rms */
        double rms = 0;
        for (size_t i = 0; i < nr; i++) rms += (double)ref[i] * ref[i];
        rms = sqrt(rms / (double)nr);
        size_t bad = 0, near = 0;
        for (size_t i = 0; i < nr; i++) {
            float r = eq_precision_round((eq_precision)prec, ref[i]);
            if (r == got[i]) continue;
            /* the 16-bit spacing at r */
            uint16_t b = eq_pr_bits16(prec, fabsf(r));
            double ulp = (double)eq_pr_from16(prec, (uint16_t)(b + 1)) - eq_pr_from16(prec, b);
            if (fabs((double)got[i] - ref[i]) <= ulp * (0.5 + 1.0 / 64) + 1e-5 * rms) near++;
            else {
                if (bad < 3)
                    printf("  %s %s [%zu]: fp32 %a rounds to %a, emulation %a (rms %g)\n",
                           eq_precision_name(prec), s_dir_name[dir], i, (double)ref[i], (double)r,
                           (double)got[i], rms);
                bad++;
            }
        }
        ck_assert_msg(bad == 0, "%s %s shape %d: %zu of %zu elements differ from the rounded fp32 "
                      "result away from a midpoint", eq_precision_name(prec), s_dir_name[dir], shape, bad, nr);
        /* check_cuda's rates, 0.1 % (bf16) and 0.5 % (fp16), plus 4: the
         * count is Poisson-like with a mean of about 0.1-0.15 % of the
         * elements in fp16 (measured over 15 seeds: e.g. 6.1 of 4608,
         * 47 of 18432, 0.27 of 384), so with "+ 1" a small output (144 or
         * 384 elements, mean 0.2-0.5) exceeded it in ~2 % of runs (CI:
         * "2 near-midpoint differences of 144"); P(count > rate + 4) is
         * below 1e-4 there */
        ck_assert_msg(near <= (prec == EQ_PREC_BF16 ? nr / 1000 : nr / 200) + 4,
                      "%s %s: %zu near-midpoint differences of %zu", eq_precision_name(prec),
                      s_dir_name[dir], near, nr);
        free(got);
    }
    s_dev_free(&v);
    s_dnn_free(&t);
    s_ops_free(&o);
}
END_TEST

/* The output rounding alone: a depthwise 1x1 convolution of random 16-bit
 * patterns is y = x * w per element, exact in float (11 + 11 significant
 * bits), then rounded into the 16-bit type: bitwise eq_precision_round. */
START_TEST(test_round_16bit)
{
    const int prec = _i ? EQ_PREC_FP16 : EQ_PREC_BF16;
    const int C = 256, HW = 1024;
    eq_conv2d_desc d = {1, 32, 32, C, C, 1, 1, 1, 1, 0, 0, 1, 1, C, 0, 0, 0};
    eq_err err = {0};
    ck_assert(eq_conv2d_desc_init(&d, &err) == EQ_OK);
    s_dnn t;
    s_dnn_make(&t, &d, s_dt(prec), L_NHWC_KRSC, CUDNN_CROSS_CORRELATION, CUDNN_TENSOR_OP_MATH);
    uint16_t *x = malloc((size_t)HW * C * 2), *w = malloc((size_t)C * 2), *y = malloc((size_t)HW * C * 2);
    for (int i = 0; i < HW * C; i++) {
        uint16_t b;
        do b = (uint16_t)eq_test_next(&g_rng);
        while (isnan(eq_pr_from16(prec, b)) || isinf(eq_pr_from16(prec, b)));
        x[i] = b;
    }
    for (int i = 0; i < C; i++) {
        uint16_t b;
        /* weights near 1 in magnitude half the time, so products land everywhere */
        do b = (uint16_t)eq_test_next(&g_rng);
        while (isnan(eq_pr_from16(prec, b)) || isinf(eq_pr_from16(prec, b)));
        if (i % 2) b = (uint16_t)((b & 0x80ffu) | (prec == EQ_PREC_BF16 ? 0x3f00u : 0x3800u));
        w[i] = b;
    }
    const float one = 1.0f, zero = 0.0f;
    DNN(cudnnConvolutionForward(t.h, &one, t.xd, x, t.wd, w, t.cd, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                                NULL, 0, &zero, t.yd, y));
    size_t nsub = 0, ninf = 0;
    for (int i = 0; i < HW * C; i++) {
        float prod = eq_pr_from16(prec, x[i]) * eq_pr_from16(prec, w[i % C]);
        uint16_t want = eq_pr_bits16(prec, prod);
        /* a zero's sign: the accumulator starts at +0, and +0 + -0 = +0
         * (what a GPU's accumulator does with it is not documented) */
        if ((want & 0x7fffu) == 0 && (y[i] & 0x7fffu) == 0) continue;
        ck_assert_msg(y[i] == want, "%s: %a * %a = %a rounds to 0x%04x, emulation gave 0x%04x",
                      eq_precision_name(prec), (double)eq_pr_from16(prec, x[i]),
                      (double)eq_pr_from16(prec, w[i % C]), (double)prod, want, y[i]);
        if ((want & 0x7c00u) == 0 && (want & 0x3ffu) && prec == EQ_PREC_FP16) nsub++;
        if (isinf(eq_pr_from16(prec, want))) ninf++;
    }
    if (prec == EQ_PREC_FP16) ck_assert_msg(nsub > 100 && ninf > 100, "fp16: %zu subnormal, %zu inf results", nsub, ninf);
    free(x);
    free(w);
    free(y);
    s_dnn_free(&t);
}
END_TEST

/* ---- the API's rules ----------------------------------------------------- */

START_TEST(test_descriptors)
{
    cudnnTensorDescriptor_t td;
    cudnnFilterDescriptor_t fd;
    cudnnConvolutionDescriptor_t cd;
    DNN(cudnnCreateTensorDescriptor(&td));
    DNN(cudnnCreateFilterDescriptor(&fd));
    DNN(cudnnCreateConvolutionDescriptor(&cd));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnSetTensor4dDescriptor(td, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, -1, 2, 3, 4));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnSetTensor4dDescriptor(td, (cudnnTensorFormat_t)7, CUDNN_DATA_FLOAT, 1, 2, 3, 4));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnSetTensor4dDescriptor(td, CUDNN_TENSOR_NHWC, (cudnnDataType_t)99, 1, 2, 3, 4));
    DNN_IS(CUDNN_STATUS_NOT_SUPPORTED, cudnnSetTensor4dDescriptor(td, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, 4096, 4096, 16, 16));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnSetTensor4dDescriptor(NULL, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, 1, 2, 3, 4));
    /* NHWC strides from n, c, h, w */
    DNN(cudnnSetTensor4dDescriptor(td, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, 2, 3, 4, 5));
    cudnnDataType_t dt;
    int n, c, h, w, ns, cs, hs, ws;
    DNN(cudnnGetTensor4dDescriptor(td, &dt, &n, &c, &h, &w, &ns, &cs, &hs, &ws));
    ck_assert(dt == CUDNN_DATA_FLOAT && n == 2 && c == 3 && h == 4 && w == 5);
    ck_assert(ns == 60 && cs == 1 && hs == 15 && ws == 3);
    DNN(cudnnSetTensor4dDescriptor(td, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 2, 3, 4, 5));
    DNN(cudnnGetTensor4dDescriptor(td, &dt, &n, &c, &h, &w, &ns, &cs, &hs, &ws));
    ck_assert(ns == 60 && cs == 20 && hs == 5 && ws == 1);
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnSetFilter4dDescriptor(fd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, 4, -3, 3, 3));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnSetFilter4dDescriptor(fd, CUDNN_DATA_FLOAT, (cudnnTensorFormat_t)5, 4, 3, 3, 3));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnSetConvolution2dDescriptor(cd, -1, 0, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnSetConvolution2dDescriptor(cd, 0, 0, 0, 1, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnSetConvolution2dDescriptor(cd, 0, 0, 1, 1, 1, 0, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnSetConvolution2dDescriptor(cd, 0, 0, 1, 1, 1, 1, (cudnnConvolutionMode_t)2, CUDNN_DATA_FLOAT));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnSetConvolutionGroupCount(cd, 0));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnSetConvolutionMathType(cd, (cudnnMathType_t)4));
    /* a descriptor never set */
    int on, oc, oh, ow;
    DNN(cudnnSetTensor4dDescriptor(td, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, 2, 8, 9, 9));
    DNN(cudnnSetFilter4dDescriptor(fd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, 16, 8, 3, 3));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnGetConvolution2dForwardOutputDim(cd, td, fd, &on, &oc, &oh, &ow));
    /* output size: 1 + (in + 2 pad - ((f - 1) dil + 1)) / stride */
    DNN(cudnnSetConvolution2dDescriptor(cd, 1, 2, 2, 3, 2, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    DNN(cudnnGetConvolution2dForwardOutputDim(cd, td, fd, &on, &oc, &oh, &ow));
    ck_assert(on == 2 && oc == 16 && oh == 1 + (9 + 2 - 5) / 2 && ow == 1 + (9 + 4 - 3) / 3);
    /* every shape of this file agrees with eq_conv2d_desc_init */
    for (int i = 0; i < NSHAPES; i++) {
        eq_conv2d_desc d = s_shapes[i];
        eq_err err = {0};
        ck_assert(eq_conv2d_desc_init(&d, &err) == EQ_OK);
        s_dnn t;
        s_dnn_make(&t, &d, CUDNN_DATA_FLOAT, L_NHWC_KRSC, CUDNN_CROSS_CORRELATION, CUDNN_DEFAULT_MATH);
        s_dnn_free(&t);
    }
    /* input channels != filter channels x groups */
    DNN(cudnnSetConvolutionGroupCount(cd, 2));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnGetConvolution2dForwardOutputDim(cd, td, fd, &on, &oc, &oh, &ow));
    DNN(cudnnSetConvolutionGroupCount(cd, 1));
    /* a filter larger than the padded input */
    DNN(cudnnSetFilter4dDescriptor(fd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, 16, 8, 12, 3));
    DNN(cudnnSetConvolution2dDescriptor(cd, 1, 1, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnGetConvolution2dForwardOutputDim(cd, td, fd, &on, &oc, &oh, &ow));
    ck_assert_str_eq(cudnnGetErrorString(CUDNN_STATUS_BAD_PARAM), "CUDNN_STATUS_BAD_PARAM");
    ck_assert_str_eq(cudnnGetErrorString(CUDNN_STATUS_NOT_SUPPORTED), "CUDNN_STATUS_NOT_SUPPORTED");
    ck_assert_str_eq(cudnnGetErrorString(CUDNN_STATUS_SUCCESS), "CUDNN_STATUS_SUCCESS");
    ck_assert_ptr_nonnull(cudnnGetErrorString((cudnnStatus_t)12345));
    DNN(cudnnDestroyTensorDescriptor(td));
    DNN(cudnnDestroyFilterDescriptor(fd));
    DNN(cudnnDestroyConvolutionDescriptor(cd));
    DNN(cudnnDestroyTensorDescriptor(NULL));
}
END_TEST

/* Problems cuDNN refuses when running, finding or sizing. */
START_TEST(test_problem_errors)
{
    eq_conv2d_desc d = s_shapes[0];
    eq_err err = {0};
    ck_assert(eq_conv2d_desc_init(&d, &err) == EQ_OK);
    s_dnn t;
    s_dnn_make(&t, &d, CUDNN_DATA_FLOAT, L_NHWC_KRSC, CUDNN_CROSS_CORRELATION, CUDNN_FMA_MATH);
    s_perf pf[16];
    int n;
    size_t ws;
    const float one = 1.0f, zero = 0.0f;
    float *x = calloc(4096 * 64, 1), *w = calloc(4096 * 64, 1), *y = calloc(4096 * 64, 1);
    DNN(s_query(&t, 0, 1, 16, pf, &n));
    /* y of the wrong spatial size: NOT_SUPPORTED; of the wrong channels: BAD_PARAM */
    DNN(cudnnSetTensor4dDescriptor(t.yd, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, (int)d.n, (int)d.k, (int)d.p + 1, (int)d.q));
    DNN_IS(CUDNN_STATUS_NOT_SUPPORTED, s_query(&t, 0, 1, 16, pf, &n));
    DNN_IS(CUDNN_STATUS_NOT_SUPPORTED, cudnnConvolutionForward(t.h, &one, t.xd, x, t.wd, w, t.cd, 0, NULL, 0, &zero, t.yd, y));
    DNN(cudnnSetTensor4dDescriptor(t.yd, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, (int)d.n, (int)d.k + 1, (int)d.p, (int)d.q));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, s_query(&t, 1, 1, 16, pf, &n));
    DNN(cudnnSetTensor4dDescriptor(t.yd, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, (int)d.n + 1, (int)d.k, (int)d.p, (int)d.q));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, s_query(&t, 2, 1, 16, pf, &n));
    /* mixed data types: BAD_PARAM */
    DNN(cudnnSetTensor4dDescriptor(t.yd, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, (int)d.n, (int)d.k, (int)d.p, (int)d.q));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, s_ws(&t, 0, 0, &ws));
    DNN(cudnnSetTensor4dDescriptor(t.yd, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, (int)d.n, (int)d.k, (int)d.p, (int)d.q));
    DNN(s_ws(&t, 0, 0, &ws));
    /* NULL operands, alpha, beta */
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnConvolutionForward(t.h, &one, t.xd, NULL, t.wd, w, t.cd, 0, NULL, 0, &zero, t.yd, y));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnConvolutionForward(t.h, NULL, t.xd, x, t.wd, w, t.cd, 0, NULL, 0, &zero, t.yd, y));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnConvolutionBackwardData(t.h, &one, t.wd, w, t.yd, y, t.cd, 0, NULL, 0, NULL, t.xd, x));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnConvolutionForward(NULL, &one, t.xd, x, t.wd, w, t.cd, 0, NULL, 0, &zero, t.yd, y));
    /* algorithm enumerants out of range: BAD_PARAM; not run by the emulation: NOT_SUPPORTED */
    DNN_IS(CUDNN_STATUS_BAD_PARAM, s_ws(&t, 0, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &ws));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, s_ws(&t, 1, -1, &ws));
    DNN_IS(CUDNN_STATUS_NOT_SUPPORTED, s_ws(&t, 0, CUDNN_CONVOLUTION_FWD_ALGO_FFT, &ws));
    DNN_IS(CUDNN_STATUS_NOT_SUPPORTED, cudnnConvolutionForward(t.h, &one, t.xd, x, t.wd, w, t.cd, CUDNN_CONVOLUTION_FWD_ALGO_DIRECT, NULL, 0, &zero, t.yd, y));
    DNN_IS(CUDNN_STATUS_NOT_SUPPORTED, s_ws(&t, 2, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD, &ws));
    /* requestedAlgoCount < 1, NULL outputs */
    DNN_IS(CUDNN_STATUS_BAD_PARAM, s_query(&t, 0, 1, 0, pf, &n));
    cudnnConvolutionFwdAlgoPerf_t r1[1];
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnFindConvolutionForwardAlgorithm(t.h, t.xd, t.wd, t.cd, t.yd, 1, NULL, r1));
    /* configurations: float data with half compute, double, int8: NOT_SUPPORTED */
    DNN(cudnnSetConvolution2dDescriptor(t.cd, 1, 1, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_HALF));
    DNN_IS(CUDNN_STATUS_NOT_SUPPORTED, s_query(&t, 0, 1, 16, pf, &n));
    DNN(cudnnSetConvolution2dDescriptor(t.cd, 1, 1, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    DNN(cudnnSetTensor4dDescriptor(t.xd, CUDNN_TENSOR_NHWC, CUDNN_DATA_INT8, (int)d.n, (int)d.c, (int)d.h, (int)d.w));
    DNN(cudnnSetTensor4dDescriptor(t.yd, CUDNN_TENSOR_NHWC, CUDNN_DATA_INT8, (int)d.n, (int)d.k, (int)d.p, (int)d.q));
    DNN(cudnnSetFilter4dDescriptor(t.wd, CUDNN_DATA_INT8, CUDNN_TENSOR_NHWC, (int)d.k, (int)d.c, (int)d.r, (int)d.s));
    DNN_IS(CUDNN_STATUS_NOT_SUPPORTED, s_query(&t, 0, 1, 16, pf, &n));
    /* a descriptor destroyed and never set again: BAD_PARAM, no crash */
    cudnnTensorDescriptor_t fresh;
    DNN(cudnnCreateTensorDescriptor(&fresh));
    DNN_IS(CUDNN_STATUS_BAD_PARAM, cudnnConvolutionForward(t.h, &one, fresh, x, t.wd, w, t.cd, 0, NULL, 0, &zero, t.yd, y));
    DNN(cudnnDestroyTensorDescriptor(fresh));
    free(x);
    free(w);
    free(y);
    s_dnn_free(&t);
}
END_TEST

/* Workspace: GetWorkspaceSize = Find's memory; one byte less, or NULL:
 * BAD_PARAM; the bytes are really used; an output over them is refused. */
START_TEST(test_workspace)
{
    s_ops o;
    s_ops_make(&o, &s_shapes[0], EQ_PREC_FP32);
    s_dnn t;
    s_dnn_make(&t, &o.d, CUDNN_DATA_FLOAT, L_NHWC_KRSC, CUDNN_CROSS_CORRELATION, CUDNN_FMA_MATH);
    s_dev v;
    s_dev_make(&v, &o, L_NHWC_KRSC);
    int with_ws = 0;
    for (int dir = 0; dir < 3; dir++) {
        s_perf pf[16];
        int n;
        DNN(s_query(&t, dir, 1, 16, pf, &n));
        for (int i = 0; i < n; i++) {
            size_t ws = 12345;
            cudnnStatus_t st = s_ws(&t, dir, pf[i].algo, &ws);
            if (pf[i].status != CUDNN_STATUS_SUCCESS) {
                ck_assert_int_eq(st, CUDNN_STATUS_NOT_SUPPORTED);
                continue;
            }
            DNN(st);
            ck_assert_msg(ws == pf[i].memory, "%s algo %d: GetWorkspaceSize %zu, Find %zu",
                          s_dir_name[dir], pf[i].algo, ws, pf[i].memory);
            if (!ws) continue;
            with_ws++;
            char *buf = malloc(ws);
            DNN_IS(CUDNN_STATUS_BAD_PARAM, s_exec(&t, &v, dir, pf[i].algo, 1.0f, 0.0f, buf, ws - 1));
            DNN_IS(CUDNN_STATUS_BAD_PARAM, s_exec(&t, &v, dir, pf[i].algo, 1.0f, 0.0f, NULL, ws));
            memset(buf, 0, ws);
            DNN(s_exec(&t, &v, dir, pf[i].algo, 1.0f, 0.0f, buf, ws));
            size_t used = 0;
            for (size_t b = 0; b < ws; b++) used += buf[b] != 0;
            ck_assert_msg(used == ws, "%s algo %d: %zu of %zu workspace bytes written", s_dir_name[dir],
                          pf[i].algo, used, ws);
            /* a larger workspace is fine */
            free(buf);
            buf = malloc(ws + 1000);
            DNN(s_exec(&t, &v, dir, pf[i].algo, 1.0f, 0.0f, buf, ws + 1000));
            free(buf);
        }
    }
    ck_assert_msg(with_ws >= 3, "only %d algorithms use a workspace", with_ws);
    /* an operand inside the workspace is overwritten before it is read:
     * the result is wrong, as on a GPU */
    size_t ws;
    DNN(s_ws(&t, 0, CUDNN_CONVOLUTION_FWD_ALGO_GEMM, &ws));
    size_t xb = o.nx * sizeof(float);
    char *big = malloc(ws + xb);
    memcpy(big, v.x, xb);
    void *xsave = v.x;
    v.x = big;
    DNN(s_exec(&t, &v, 0, CUDNN_CONVOLUTION_FWD_ALGO_GEMM, 1.0f, 0.0f, big, ws + xb));
    float *got = s_out(&o, &v, 0, L_NHWC_KRSC);
    double e = eq_test_relerr(got, o.y, o.ny);
    ck_assert_msg(!(e <= TOL), "x inside the workspace gave the right answer (error %.3g)", e);
    free(got);
    v.x = xsave;
    /* the output inside the workspace: refused (with a line on stderr) */
    printf("check_cudaemu_dnn: the 'overlaps' line on stderr that follows is expected\n");
    void *ysave = v.y;
    v.y = big;
    DNN_IS(CUDNN_STATUS_BAD_PARAM, s_exec(&t, &v, 0, CUDNN_CONVOLUTION_FWD_ALGO_GEMM, 1.0f, 0.0f, big, ws + xb));
    v.y = ysave;
    free(big);
    cudnnEmuStats st;
    DNN(cudnnEmuGetStats(t.h, &st));
    ck_assert(st.calls > 0 && st.last_dir == 0 && st.last_algo == CUDNN_CONVOLUTION_FWD_ALGO_GEMM);
    s_dev_free(&v);
    s_dnn_free(&t);
    s_ops_free(&o);
}
END_TEST

/* Find: every algorithm once, successes sorted by time then the failures;
 * returnedAlgoCount <= requested; _v7: the heuristic order, untimed; a
 * non-deterministic algorithm is offered first in both backward
 * directions; TENSOR_OP results only where the math type permits them. */
START_TEST(test_find)
{
    eq_conv2d_desc d = s_shapes[0];
    eq_err err = {0};
    ck_assert(eq_conv2d_desc_init(&d, &err) == EQ_OK);
    static const cudnnMathType_t maths[2] = {CUDNN_FMA_MATH, CUDNN_DEFAULT_MATH};
    static const int counts[3] = {CUDNN_CONVOLUTION_FWD_ALGO_COUNT, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
                                  CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT};
    for (int m = 0; m < 2; m++) {
        s_dnn t;
        s_dnn_make(&t, &d, CUDNN_DATA_FLOAT, L_NHWC_KRSC, CUDNN_CROSS_CORRELATION, maths[m]);
        for (int dir = 0; dir < 3; dir++) {
            s_perf pf[16], hv[16];
            int n, nh;
            DNN(s_query(&t, dir, 1, 16, pf, &n));
            DNN(s_query(&t, dir, 0, 16, hv, &nh));
            ck_assert_int_eq(n, counts[dir]);
            ck_assert_int_eq(nh, counts[dir]);
            int seen[16] = {0}, ntc = 0, nnd = 0, failed = 0;
            for (int i = 0; i < n; i++) {
                ck_assert(pf[i].algo >= 0 && pf[i].algo < counts[dir] && !seen[pf[i].algo]);
                seen[pf[i].algo] = 1;
                if (pf[i].status != CUDNN_STATUS_SUCCESS) {
                    failed = 1;
                    continue;
                }
                ck_assert_msg(!failed, "%s: a success after a failure", s_dir_name[dir]);
                ck_assert(pf[i].time > 0);
                if (i > 0 && pf[i - 1].status == CUDNN_STATUS_SUCCESS) ck_assert(pf[i - 1].time <= pf[i].time);
                ntc += pf[i].math == CUDNN_TENSOR_OP_MATH;
                nnd += pf[i].det == CUDNN_NON_DETERMINISTIC;
                ck_assert(hv[i].time < 0);
            }
            if (maths[m] == CUDNN_FMA_MATH) ck_assert_int_eq(ntc, 0);
            else ck_assert_msg(ntc > 0, "%s: no tensor-core result under DEFAULT_MATH", s_dir_name[dir]);
            if (dir > 0) {
                ck_assert_int_gt(nnd, 0);
                ck_assert_int_eq(hv[0].det, CUDNN_NON_DETERMINISTIC); /* a deterministic caller must skip */
            }
            /* fewer requested */
            DNN(s_query(&t, dir, 1, 2, pf, &n));
            ck_assert_int_eq(n, 2);
        }
        s_dnn_free(&t);
    }
}
END_TEST

/* Non-deterministic algorithms vary run to run; deterministic ones do not;
 * TF32 (DEFAULT_MATH, a tensor-core algorithm, float data) is measurably
 * not fp32, FMA_MATH is. */
START_TEST(test_determinism_tf32)
{
    s_ops o;
    s_ops_make(&o, &s_shapes[5], EQ_PREC_FP32);
    s_dnn t;
    s_dnn_make(&t, &o.d, CUDNN_DATA_FLOAT, L_NHWC_KRSC, CUDNN_CROSS_CORRELATION, CUDNN_FMA_MATH);
    s_dev v;
    s_dev_make(&v, &o, L_NHWC_KRSC);
    const int dirs[4] = {1, 2, 2, 2};
    const int nondet[4] = {CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
                           CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1};
    for (int j = 0; j < 4; j++) {
        const int dir = dirs[j], det = j == 3;
        size_t nr;
        (void)s_ref(&o, dir, &nr);
        float *a = NULL;
        int differs = 0;
        for (int run = 0; run < 4; run++) {
            DNN(s_exec_ws(&t, &v, dir, nondet[j], 1.0f, 0.0f));
            float *b = s_out(&o, &v, dir, L_NHWC_KRSC);
            if (a) differs |= memcmp(a, b, nr * sizeof *a) != 0;
            free(a);
            a = b;
        }
        free(a);
        if (det) ck_assert_msg(!differs, "%s algo %d is deterministic but varied", s_dir_name[dir], nondet[j]);
        else ck_assert_msg(differs, "%s algo %d is reported non-deterministic but never varied", s_dir_name[dir], nondet[j]);
    }
    /* TF32 */
    const int tc[3] = {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
                       CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1};
    for (int m = 0; m < 2; m++) {
        DNN(cudnnSetConvolutionMathType(t.cd, m ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH));
        for (int dir = 0; dir < 3; dir++) {
            DNN(s_exec_ws(&t, &v, dir, tc[dir], 1.0f, 0.0f));
            size_t nr;
            const float *ref = s_ref(&o, dir, &nr);
            float *got = s_out(&o, &v, dir, L_NHWC_KRSC);
            double e = eq_test_relerr(got, ref, nr);
            if (m) ck_assert_msg(e > 1e-5 && e < 2e-3, "TF32 %s: error %.3g", s_dir_name[dir], e);
            else ck_assert_msg(e <= TOL, "FMA %s: error %.3g", s_dir_name[dir], e);
            free(got);
        }
    }
    s_dev_free(&v);
    s_dnn_free(&t);
    s_ops_free(&o);
}
END_TEST

/* EQ_CUDNN_EMU_REFUSE_16BIT: 1 refuses 16-bit problems outright, 2 lets
 * Find/_v7 answer with every algorithm NOT_SUPPORTED; fp32 unaffected. */
START_TEST(test_refuse_16bit)
{
    eq_conv2d_desc d = s_shapes[0];
    eq_err err = {0};
    ck_assert(eq_conv2d_desc_init(&d, &err) == EQ_OK);
    s_dnn t16, t32;
    s_dnn_make(&t16, &d, CUDNN_DATA_BFLOAT16, L_NHWC_KRSC, CUDNN_CROSS_CORRELATION, CUDNN_TENSOR_OP_MATH);
    s_dnn_make(&t32, &d, CUDNN_DATA_FLOAT, L_NHWC_KRSC, CUDNN_CROSS_CORRELATION, CUDNN_FMA_MATH);
    s_perf pf[16];
    int n;
    size_t ws;
    setenv("EQ_CUDNN_EMU_REFUSE_16BIT", "1", 1);
    for (int dir = 0; dir < 3; dir++) {
        DNN_IS(CUDNN_STATUS_NOT_SUPPORTED, s_query(&t16, dir, 1, 16, pf, &n));
        DNN_IS(CUDNN_STATUS_NOT_SUPPORTED, s_query(&t16, dir, 0, 16, pf, &n));
        DNN_IS(CUDNN_STATUS_NOT_SUPPORTED, s_ws(&t16, dir, 0, &ws));
        DNN(s_query(&t32, dir, 1, 16, pf, &n));
    }
    setenv("EQ_CUDNN_EMU_REFUSE_16BIT", "2", 1);
    for (int dir = 0; dir < 3; dir++) {
        DNN(s_query(&t16, dir, 1, 16, pf, &n));
        for (int i = 0; i < n; i++) ck_assert_int_eq(pf[i].status, CUDNN_STATUS_NOT_SUPPORTED);
        DNN(s_query(&t16, dir, 0, 16, pf, &n));
        for (int i = 0; i < n; i++) ck_assert_int_eq(pf[i].status, CUDNN_STATUS_NOT_SUPPORTED);
        DNN_IS(CUDNN_STATUS_NOT_SUPPORTED, s_ws(&t16, dir, 0, &ws));
        DNN(s_query(&t32, dir, 1, 16, pf, &n));
        ck_assert_int_eq(pf[0].status, CUDNN_STATUS_SUCCESS);
    }
    unsetenv("EQ_CUDNN_EMU_REFUSE_16BIT");
    DNN(s_query(&t16, 0, 1, 16, pf, &n));
    ck_assert_int_eq(pf[0].status, CUDNN_STATUS_SUCCESS);
    s_dnn_free(&t16);
    s_dnn_free(&t32);
}
END_TEST

/* EQ_CUDNN_EMU_BROKEN_ALGOS: listed algorithms stay SUCCESS in Find/_v7
 * but fail in GetWorkspaceSize and when run. */
START_TEST(test_broken_algos)
{
    s_ops o;
    s_ops_make(&o, &s_shapes[0], EQ_PREC_FP32);
    s_dnn t;
    s_dnn_make(&t, &o.d, CUDNN_DATA_FLOAT, L_NHWC_KRSC, CUDNN_CROSS_CORRELATION, CUDNN_FMA_MATH);
    s_dev v;
    s_dev_make(&v, &o, L_NHWC_KRSC);
    setenv("EQ_CUDNN_EMU_BROKEN_ALGOS", "0:1,2:3", 1);
    s_perf pf[16];
    int n, seen = 0;
    size_t ws;
    DNN(s_query(&t, 0, 1, 16, pf, &n));
    for (int i = 0; i < n; i++)
        if (pf[i].algo == 1) seen = pf[i].status == CUDNN_STATUS_SUCCESS;
    ck_assert(seen);
    DNN_IS(CUDNN_STATUS_NOT_SUPPORTED, s_ws(&t, 0, 1, &ws));
    DNN_IS(CUDNN_STATUS_NOT_SUPPORTED, s_exec(&t, &v, 0, 1, 1.0f, 0.0f, NULL, 1 << 20));
    DNN_IS(CUDNN_STATUS_NOT_SUPPORTED, s_ws(&t, 2, 3, &ws));
    DNN(s_ws(&t, 0, 2, &ws));
    DNN(s_ws(&t, 2, 1, &ws));
    DNN(s_ws(&t, 1, 1, &ws));
    unsetenv("EQ_CUDNN_EMU_BROKEN_ALGOS");
    DNN(s_ws(&t, 0, 1, &ws));
    s_dev_free(&v);
    s_dnn_free(&t);
    s_ops_free(&o);
}
END_TEST

/* The CPU's speed matters for the emulated check_cuda: its larger shape
 * in well under a second per call. */
START_TEST(test_speed)
{
    s_ops o;
    s_ops_make(&o, &s_shapes[5], EQ_PREC_FP32);
    s_dnn t;
    s_dnn_make(&t, &o.d, CUDNN_DATA_FLOAT, L_NHWC_KRSC, CUDNN_CROSS_CORRELATION, CUDNN_FMA_MATH);
    s_dev v;
    s_dev_make(&v, &o, L_NHWC_KRSC);
    for (int dir = 0; dir < 3; dir++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        DNN(s_exec_ws(&t, &v, dir, 0, 1.0f, 0.0f));
        clock_gettime(CLOCK_MONOTONIC, &b);
        double s = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
        printf("check_cudaemu_dnn: 4x16x16x32->64 3x3 %s: %.1f ms\n", s_dir_name[dir], 1e3 * s);
        ck_assert_msg(s < 0.5, "%s took %.2f s", s_dir_name[dir], s);
    }
    s_dev_free(&v);
    s_dnn_free(&t);
    s_ops_free(&o);
}
END_TEST

/* ---- cuBLAS --------------------------------------------------------------- */

/* C = alpha op(A) op(B) + beta C, column-major, in double. */
static void s_gemm_ref(int ta, int tb, int m, int n, int k, float alpha, const float *A, int lda,
                       const float *B, int ldb, float beta, const float *C0, int ldc, double *out)
{
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0.0;
            for (int l = 0; l < k; l++) {
                double a = ta ? A[(size_t)i * lda + l] : A[(size_t)l * lda + i];
                double b = tb ? B[(size_t)l * ldb + j] : B[(size_t)j * ldb + l];
                s += a * b;
            }
            out[(size_t)j * m + i] = alpha * s + (double)beta * C0[(size_t)j * ldc + i];
        }
}

/* _i: transa * 2 + transb */
START_TEST(test_sgemm)
{
    const int ta = _i / 2, tb = _i % 2;
    const int m = 37, n = 23, k = 19;
    const int arows = ta ? k : m, acols = ta ? m : k, brows = tb ? n : k, bcols = tb ? k : n;
    const int lda = arows + 3, ldb = brows + 5, ldc = m + 2;
    cublasHandle_t h;
    ck_assert_int_eq(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    ck_assert_int_eq(cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH), CUBLAS_STATUS_SUCCESS);
    ck_assert_int_eq(cublasSetAtomicsMode(h, CUBLAS_ATOMICS_NOT_ALLOWED), CUBLAS_STATUS_SUCCESS);
    ck_assert_int_eq(cublasSetStream(h, NULL), CUBLAS_STATUS_SUCCESS);
    float *A = eq_test_vec(&g_rng, (size_t)lda * acols, 1.0f);
    float *B = eq_test_vec(&g_rng, (size_t)ldb * bcols, 1.0f);
    float *C = eq_test_vec(&g_rng, (size_t)ldc * n, 1.0f);
    float *C0 = malloc((size_t)ldc * n * sizeof *C0);
    memcpy(C0, C, (size_t)ldc * n * sizeof *C0);
    double *ref = malloc((size_t)m * n * sizeof *ref);
    const cublasOperation_t oa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, ob = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const float alpha = 1.25f, beta = -0.5f;
    s_gemm_ref(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C0, ldc, ref);
    ck_assert_int_eq(cublasSgemm(h, oa, ob, m, n, k, &alpha, A, lda, B, ldb, &beta, C, ldc),
                     CUBLAS_STATUS_SUCCESS);
    double num = 0, den = 0;
    for (int j = 0; j < n; j++) {
        for (int i = 0; i < m; i++) {
            double dlt = C[(size_t)j * ldc + i] - ref[(size_t)j * m + i];
            num += dlt * dlt;
            den += ref[(size_t)j * m + i] * ref[(size_t)j * m + i];
        }
        for (int i = m; i < ldc; i++) /* the padding rows are not touched */
            ck_assert(memcmp(&C[(size_t)j * ldc + i], &C0[(size_t)j * ldc + i], sizeof(float)) == 0);
    }
    ck_assert_msg(sqrt(num / den) <= TOL, "sgemm %c%c: error %.3g", ta ? 'T' : 'N', tb ? 'T' : 'N',
                  sqrt(num / den));
    /* beta = 0 over NaN: C = alpha op(A) op(B) */
    for (size_t i = 0; i < (size_t)ldc * n; i++) C[i] = NAN;
    const float zero = 0.0f;
    ck_assert_int_eq(cublasSgemm(h, oa, ob, m, n, k, &alpha, A, lda, B, ldb, &zero, C, ldc), CUBLAS_STATUS_SUCCESS);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double want = ref[(size_t)j * m + i] - (double)beta * C0[(size_t)j * ldc + i];
            ck_assert_msg(fabs(C[(size_t)j * ldc + i] - want) <= 1e-4, "beta=0: %g vs %g", (double)C[(size_t)j * ldc + i], want);
        }
    /* TF32: the product of the operands rounded to 10 mantissa bits */
    ck_assert_int_eq(cublasSetMathMode(h, CUBLAS_TF32_TENSOR_OP_MATH), CUBLAS_STATUS_SUCCESS);
    memcpy(C, C0, (size_t)ldc * n * sizeof *C);
    ck_assert_int_eq(cublasSgemm(h, oa, ob, m, n, k, &alpha, A, lda, B, ldb, &beta, C, ldc), CUBLAS_STATUS_SUCCESS);
    num = 0;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double dlt = C[(size_t)j * ldc + i] - ref[(size_t)j * m + i];
            num += dlt * dlt;
        }
    ck_assert_msg(sqrt(num / den) > 1e-5 && sqrt(num / den) < 2e-3, "TF32 sgemm: error %.3g", sqrt(num / den));
    ck_assert_int_eq(cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH), CUBLAS_STATUS_SUCCESS);
    /* leading dimensions one too small, negative sizes, bad operations */
    ck_assert_int_eq(cublasSgemm(h, oa, ob, m, n, k, &alpha, A, arows - 1, B, ldb, &beta, C, ldc), CUBLAS_STATUS_INVALID_VALUE);
    ck_assert_int_eq(cublasSgemm(h, oa, ob, m, n, k, &alpha, A, lda, B, brows - 1, &beta, C, ldc), CUBLAS_STATUS_INVALID_VALUE);
    ck_assert_int_eq(cublasSgemm(h, oa, ob, m, n, k, &alpha, A, lda, B, ldb, &beta, C, m - 1), CUBLAS_STATUS_INVALID_VALUE);
    ck_assert_int_eq(cublasSgemm(h, oa, ob, m, n, k, &alpha, A, arows, B, brows, &beta, C, m), CUBLAS_STATUS_SUCCESS);
    ck_assert_int_eq(cublasSgemm(h, oa, ob, -1, n, k, &alpha, A, lda, B, ldb, &beta, C, ldc), CUBLAS_STATUS_INVALID_VALUE);
    ck_assert_int_eq(cublasSgemm(h, oa, ob, m, n, -2, &alpha, A, lda, B, ldb, &beta, C, ldc), CUBLAS_STATUS_INVALID_VALUE);
    ck_assert_int_eq(cublasSgemm(h, (cublasOperation_t)7, ob, m, n, k, &alpha, A, lda, B, ldb, &beta, C, ldc), CUBLAS_STATUS_INVALID_VALUE);
    ck_assert_int_eq(cublasSgemm(h, oa, ob, m, n, k, NULL, A, lda, B, ldb, &beta, C, ldc), CUBLAS_STATUS_INVALID_VALUE);
    ck_assert_int_eq(cublasSgemm(NULL, oa, ob, m, n, k, &alpha, A, lda, B, ldb, &beta, C, ldc), CUBLAS_STATUS_NOT_INITIALIZED);
    ck_assert_int_eq(cublasSgemm(h, oa, ob, 0, n, k, &alpha, A, lda, B, ldb, &beta, C, ldc), CUBLAS_STATUS_SUCCESS);
    ck_assert_int_eq(cublasSetMathMode(h, (cublasMath_t)5), CUBLAS_STATUS_INVALID_VALUE);
    ck_assert_int_eq(cublasSetAtomicsMode(h, (cublasAtomicsMode_t)2), CUBLAS_STATUS_INVALID_VALUE);
    ck_assert_int_eq(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
    free(A);
    free(B);
    free(C);
    free(C0);
    free(ref);
}
END_TEST

/* k == 0: C = beta C (no product), as BLAS defines it. */
START_TEST(test_sgemm_k0)
{
    cublasHandle_t h;
    ck_assert_int_eq(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    float C[6] = {1, 2, 3, 4, 5, 6};
    const float alpha = 1.0f, beta = 2.0f;
    ck_assert_int_eq(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 3, 0, &alpha, NULL, 2, NULL, 1, &beta, C, 2),
                     CUBLAS_STATUS_SUCCESS);
    for (int i = 0; i < 6; i++) ck_assert_float_eq(C[i], 2.0f * (float)(i + 1));
    ck_assert_int_eq(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
}
END_TEST

int main(void)
{
    const char *s = getenv("EQ_TEST_SEED");
    g_seed = s && *s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    printf("check_cudaemu_dnn: seed %llu (EQ_TEST_SEED=%llu replays it)\n",
           (unsigned long long)g_seed, (unsigned long long)g_seed);
    Suite *su = suite_create("cudaemu_dnn");
    TCase *tc = tcase_create("dnn");
    tcase_add_checked_fixture(tc, s_setup, s_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_conv_fp32, 0, NSHAPES * NLAYOUTS);
    tcase_add_loop_test(tc, test_alpha_beta, 0, 2 * NLAYOUTS);
    tcase_add_loop_test(tc, test_conv_mode, 0, NLAYOUTS);
    tcase_add_loop_test(tc, test_conv_16bit, 0, 12);
    tcase_add_loop_test(tc, test_round_16bit, 0, 2);
    tcase_add_test(tc, test_descriptors);
    tcase_add_test(tc, test_problem_errors);
    tcase_add_test(tc, test_workspace);
    tcase_add_test(tc, test_find);
    tcase_add_test(tc, test_determinism_tf32);
    tcase_add_test(tc, test_refuse_16bit);
    tcase_add_test(tc, test_broken_algos);
    tcase_add_test(tc, test_speed);
    suite_add_tcase(su, tc);
    TCase *tb = tcase_create("blas");
    tcase_add_checked_fixture(tb, s_setup, s_teardown);
    tcase_add_loop_test(tb, test_sgemm, 0, 4);
    tcase_add_test(tb, test_sgemm_k0);
    suite_add_tcase(su, tb);
    return eq_test_run(su);
}
