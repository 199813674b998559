/*
 * trainer/cuda/conv.c -- convolutions through cuDNN 9's legacy API, NHWC
 * activations.  Weights arrive OIHW (PyTorch's layout, trainer/backend.h);
 * cuDNN's NHWC filters are KRSC, so every call transposes the weights into
 * the workspace (O(weights), small next to the convolution) and the filter
 * gradient back out of it.
 *
 * Plans (descriptors + algorithm + its workspace size) are cached per
 * (direction, shape).  Fast mode asks cudnnFind*Algorithm (timed runs) once
 * per shape and takes the fastest algorithm that succeeded; deterministic
 * mode takes cuDNN's heuristic order (cudnnGet*Algorithm_v7, no timing, so
 * the same choice every run) restricted to CUDNN_DETERMINISTIC algorithms.
 * Without tf32 the convolution math type is CUDNN_FMA_MATH (true fp32) and
 * tensor-core results are skipped.
 */
#include "trainer/cuda/cuda_internal.h"

#include <stdlib.h>
#include <string.h>

#define S_MAX_ALGOS 16
#define S_ALIGN 256

typedef struct s_perf {
    int algo;
    cudnnStatus_t status;
    size_t memory;
    cudnnDeterminism_t determinism;
    cudnnMathType_t math;
} s_perf;

static const char *const s_dir_name[3] = {"conv2d_fwd", "conv2d_bwd_data", "conv2d_bwd_filter"};

void eq_cuda_conv_plans_free(eq_cuda *cu)
{
    for (size_t i = 0; i < cu->nplans; i++) {
        eq_cuda_conv_plan *p = &cu->plans[i];
        if (p->xd) cudnnDestroyTensorDescriptor(p->xd);
        if (p->yd) cudnnDestroyTensorDescriptor(p->yd);
        if (p->wd) cudnnDestroyFilterDescriptor(p->wd);
        if (p->cd) cudnnDestroyConvolutionDescriptor(p->cd);
    }
    free(cu->plans);
    cu->plans = NULL;
    cu->nplans = cu->plans_cap = 0;
}

static int s_same(const eq_conv2d_desc *a, const eq_conv2d_desc *b)
{
    return a->n == b->n && a->h == b->h && a->w == b->w && a->c == b->c && a->k == b->k &&
           a->r == b->r && a->s == b->s && a->stride_h == b->stride_h &&
           a->stride_w == b->stride_w && a->pad_h == b->pad_h && a->pad_w == b->pad_w &&
           a->dil_h == b->dil_h && a->dil_w == b->dil_w && a->groups == b->groups;
}

/* Pick from perf results (in cuDNN's order: fastest first for Find,
 * heuristic order for _v7). */
static int s_pick(const eq_cuda *cu, const s_perf *pf, int n)
{
    /* skip algorithms whose workspace would take more than half of the
     * free device memory (Find reports what it could allocate itself) */
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) {
        (void)cudaGetLastError();
        fr = (size_t)-1;
    }
    for (int i = 0; i < n; i++) {
        if (pf[i].status != CUDNN_STATUS_SUCCESS) continue;
        if (pf[i].memory > cu->ws_bytes && pf[i].memory - cu->ws_bytes > fr / 2) continue;
        if (cu->deterministic && pf[i].determinism != CUDNN_DETERMINISTIC) continue;
        if (!cu->tf32 && (pf[i].math == CUDNN_TENSOR_OP_MATH ||
                          pf[i].math == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION))
            continue;
        return i;
    }
    return -1;
}

#define S_DNN(call)                                                          \
    do {                                                                     \
        cudnnStatus_t s_ = (call);                                           \
        if (s_ != CUDNN_STATUS_SUCCESS) {                                    \
            st = eq_cudnn_fail(err, s_dir_name[dir], #call, s_);             \
            goto fail;                                                       \
        }                                                                    \
    } while (0)

static eq_status s_choose(eq_cuda *cu, eq_cuda_conv_plan *p, eq_err *err)
{
    const int dir = p->dir;
    eq_status st = EQ_OK;
    s_perf pf[S_MAX_ALGOS];
    int n = 0;
    if (dir == 0) {
        cudnnConvolutionFwdAlgoPerf_t r[S_MAX_ALGOS];
        if (cu->deterministic)
            S_DNN(cudnnGetConvolutionForwardAlgorithm_v7(cu->dnn, p->xd, p->wd, p->cd, p->yd,
                                                         S_MAX_ALGOS, &n, r));
        else
            S_DNN(cudnnFindConvolutionForwardAlgorithm(cu->dnn, p->xd, p->wd, p->cd, p->yd,
                                                       S_MAX_ALGOS, &n, r));
        for (int i = 0; i < n; i++)
            pf[i] = (s_perf){(int)r[i].algo, r[i].status, r[i].memory, r[i].determinism, r[i].mathType};
    } else if (dir == 1) {
        cudnnConvolutionBwdDataAlgoPerf_t r[S_MAX_ALGOS];
        if (cu->deterministic)
            S_DNN(cudnnGetConvolutionBackwardDataAlgorithm_v7(cu->dnn, p->wd, p->yd, p->cd, p->xd,
                                                              S_MAX_ALGOS, &n, r));
        else
            S_DNN(cudnnFindConvolutionBackwardDataAlgorithm(cu->dnn, p->wd, p->yd, p->cd, p->xd,
                                                            S_MAX_ALGOS, &n, r));
        for (int i = 0; i < n; i++)
            pf[i] = (s_perf){(int)r[i].algo, r[i].status, r[i].memory, r[i].determinism, r[i].mathType};
    } else {
        cudnnConvolutionBwdFilterAlgoPerf_t r[S_MAX_ALGOS];
        if (cu->deterministic)
            S_DNN(cudnnGetConvolutionBackwardFilterAlgorithm_v7(cu->dnn, p->xd, p->yd, p->cd, p->wd,
                                                                S_MAX_ALGOS, &n, r));
        else
            S_DNN(cudnnFindConvolutionBackwardFilterAlgorithm(cu->dnn, p->xd, p->yd, p->cd, p->wd,
                                                              S_MAX_ALGOS, &n, r));
        for (int i = 0; i < n; i++)
            pf[i] = (s_perf){(int)r[i].algo, r[i].status, r[i].memory, r[i].determinism, r[i].mathType};
    }
    int i = s_pick(cu, pf, n);
    if (i < 0)
        return eq_err_set(err, EQ_ERR_UNSUPPORTED,
                          "cuda backend: %s: cuDNN offers no %salgorithm for n=%lld h=%lld w=%lld "
                          "c=%lld k=%lld r=%lld s=%lld groups=%lld (%d candidates)",
                          s_dir_name[dir], cu->deterministic ? "deterministic " : "",
                          (long long)p->d.n, (long long)p->d.h, (long long)p->d.w,
                          (long long)p->d.c, (long long)p->d.k, (long long)p->d.r,
                          (long long)p->d.s, (long long)p->d.groups, n);
    p->algo = pf[i].algo;
    /* CUDNN_DEFAULT_MATH permits TF32 on Ampere and later: keep FMA math
     * unless TF32 was asked for */
    S_DNN(cudnnSetConvolutionMathType(p->cd, cu->tf32 ? pf[i].math : CUDNN_FMA_MATH));
    /* the size the chosen algorithm needs with these descriptors */
    if (dir == 0)
        S_DNN(cudnnGetConvolutionForwardWorkspaceSize(cu->dnn, p->xd, p->wd, p->cd, p->yd,
                                                      (cudnnConvolutionFwdAlgo_t)p->algo,
                                                      &p->ws_bytes));
    else if (dir == 1)
        S_DNN(cudnnGetConvolutionBackwardDataWorkspaceSize(cu->dnn, p->wd, p->yd, p->cd, p->xd,
                                                           (cudnnConvolutionBwdDataAlgo_t)p->algo,
                                                           &p->ws_bytes));
    else
        S_DNN(cudnnGetConvolutionBackwardFilterWorkspaceSize(cu->dnn, p->xd, p->yd, p->cd, p->wd,
                                                             (cudnnConvolutionBwdFilterAlgo_t)p->algo,
                                                             &p->ws_bytes));
    return EQ_OK;
fail:
    return st;
}

static eq_status s_plan(eq_cuda *cu, int dir, const eq_conv2d_desc *d, eq_cuda_conv_plan **out,
                        eq_err *err)
{
    for (size_t i = 0; i < cu->nplans; i++)
        if (cu->plans[i].dir == dir && s_same(&cu->plans[i].d, d)) {
            *out = &cu->plans[i];
            return EQ_OK;
        }
    if (cu->nplans == cu->plans_cap) {
        size_t cap = cu->plans_cap ? 2 * cu->plans_cap : 16;
        eq_cuda_conv_plan *np = realloc(cu->plans, cap * sizeof *np);
        if (!np) return eq_err_set(err, EQ_ERR_NOMEM, "cuda backend: %s: out of memory", s_dir_name[dir]);
        cu->plans = np;
        cu->plans_cap = cap;
    }
    eq_cuda_conv_plan *p = &cu->plans[cu->nplans];
    memset(p, 0, sizeof *p);
    p->dir = dir;
    p->d = *d;
    eq_status st = EQ_OK;
    S_DNN(cudnnCreateTensorDescriptor(&p->xd));
    S_DNN(cudnnCreateTensorDescriptor(&p->yd));
    S_DNN(cudnnCreateFilterDescriptor(&p->wd));
    S_DNN(cudnnCreateConvolutionDescriptor(&p->cd));
    S_DNN(cudnnSetTensor4dDescriptor(p->xd, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, (int)d->n,
                                     (int)d->c, (int)d->h, (int)d->w));
    S_DNN(cudnnSetTensor4dDescriptor(p->yd, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, (int)d->n,
                                     (int)d->k, (int)d->p, (int)d->q));
    S_DNN(cudnnSetFilter4dDescriptor(p->wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, (int)d->k,
                                     (int)(d->c / d->groups), (int)d->r, (int)d->s));
    S_DNN(cudnnSetConvolution2dDescriptor(p->cd, (int)d->pad_h, (int)d->pad_w, (int)d->stride_h,
                                          (int)d->stride_w, (int)d->dil_h, (int)d->dil_w,
                                          CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    S_DNN(cudnnSetConvolutionGroupCount(p->cd, (int)d->groups));
    S_DNN(cudnnSetConvolutionMathType(p->cd, cu->tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH));
    int on, oc, oh, ow;
    S_DNN(cudnnGetConvolution2dForwardOutputDim(p->cd, p->xd, p->wd, &on, &oc, &oh, &ow));
    if (on != d->n || oc != d->k || oh != d->p || ow != d->q) {
        st = eq_err_set(err, EQ_ERR_INTERNAL,
                        "cuda backend: %s: cuDNN's output %dx%dx%dx%d differs from eq's %lldx%lldx%lldx%lld",
                        s_dir_name[dir], on, oh, ow, oc, (long long)d->n, (long long)d->p,
                        (long long)d->q, (long long)d->k);
        goto fail;
    }
    if ((st = s_choose(cu, p, err)) != EQ_OK) goto fail;
    cu->nplans++;
    *out = p;
    return EQ_OK;
fail:
    if (p->xd) cudnnDestroyTensorDescriptor(p->xd);
    if (p->yd) cudnnDestroyTensorDescriptor(p->yd);
    if (p->wd) cudnnDestroyFilterDescriptor(p->wd);
    if (p->cd) cudnnDestroyConvolutionDescriptor(p->cd);
    memset(p, 0, sizeof *p);
    return st;
}

static size_t s_round(size_t n)
{
    return (n + S_ALIGN - 1) / S_ALIGN * S_ALIGN;
}

/* Workspace split: [KRSC weights][cuDNN workspace]. */
static eq_status s_setup(eq_cuda *cu, int dir, const eq_conv2d_desc *d, eq_cuda_conv_plan **p,
                         float **wt, void **ws, eq_err *err)
{
    eq_status st = s_plan(cu, dir, d, p, err);
    if (st) return st;
    size_t wbytes = s_round((size_t)(d->k * (d->c / d->groups) * d->r * d->s) * sizeof(float));
    char *base = eq_cuda_workspace(cu, wbytes + (*p)->ws_bytes, s_dir_name[dir], err);
    if (!base) return EQ_ERR_NOMEM;
    *wt = (float *)base;
    *ws = (*p)->ws_bytes ? base + wbytes : NULL;
    return EQ_OK;
}

eq_status eq_cuda_conv2d_fwd(void *ctx, const eq_conv2d_desc *d, const float *x, const float *w,
                             float *y, eq_err *err)
{
    eq_cuda *cu = ctx;
    const int dir = 0;
    eq_cuda_conv_plan *p;
    float *wt;
    void *ws;
    eq_status st = s_setup(cu, dir, d, &p, &wt, &ws, err);
    if (st) return st;
    EQ_K(s_dir_name[dir], eq_cuk_oihw_to_krsc(cu->stream, d->k, d->c / d->groups, d->r, d->s, w, wt));
    const float one = 1.0f, zero = 0.0f;
    S_DNN(cudnnConvolutionForward(cu->dnn, &one, p->xd, x, p->wd, wt, p->cd,
                                  (cudnnConvolutionFwdAlgo_t)p->algo, ws, p->ws_bytes, &zero, p->yd,
                                  y));
    return EQ_OK;
fail:
    return st;
}

eq_status eq_cuda_conv2d_bwd_data(void *ctx, const eq_conv2d_desc *d, const float *dy,
                                  const float *w, float *dx, eq_err *err)
{
    eq_cuda *cu = ctx;
    const int dir = 1;
    eq_cuda_conv_plan *p;
    float *wt;
    void *ws;
    eq_status st = s_setup(cu, dir, d, &p, &wt, &ws, err);
    if (st) return st;
    EQ_K(s_dir_name[dir], eq_cuk_oihw_to_krsc(cu->stream, d->k, d->c / d->groups, d->r, d->s, w, wt));
    const float one = 1.0f, zero = 0.0f;
    S_DNN(cudnnConvolutionBackwardData(cu->dnn, &one, p->wd, wt, p->yd, dy, p->cd,
                                       (cudnnConvolutionBwdDataAlgo_t)p->algo, ws, p->ws_bytes,
                                       &zero, p->xd, dx));
    return EQ_OK;
fail:
    return st;
}

eq_status eq_cuda_conv2d_bwd_filter(void *ctx, const eq_conv2d_desc *d, const float *x,
                                    const float *dy, float *dw, eq_err *err)
{
    eq_cuda *cu = ctx;
    const int dir = 2;
    eq_cuda_conv_plan *p;
    float *wt;
    void *ws;
    eq_status st = s_setup(cu, dir, d, &p, &wt, &ws, err);
    if (st) return st;
    const float one = 1.0f, zero = 0.0f;
    S_DNN(cudnnConvolutionBackwardFilter(cu->dnn, &one, p->xd, x, p->yd, dy, p->cd,
                                         (cudnnConvolutionBwdFilterAlgo_t)p->algo, ws, p->ws_bytes,
                                         &zero, p->wd, wt));
    EQ_K(s_dir_name[dir], eq_cuk_krsc_to_oihw(cu->stream, d->k, d->c / d->groups, d->r, d->s, wt, dw));
    return EQ_OK;
fail:
    return st;
}
