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
 *
 * Mixed precision (desc.prec bf16/fp16, trainer/backend.h): the operands
 * hold values of that type, so they are converted losslessly into the
 * workspace as 16-bit arrays (weights straight into KRSC) and cuDNN runs
 * PSEUDO_BFLOAT16_CONFIG / PSEUDO_HALF_CONFIG: x, w and y descriptors of
 * the narrow type, NHWC, fp32 compute, CUDNN_TENSOR_OP_MATH (tensor cores,
 * fp32 accumulation; every algorithm's math type is acceptable there).
 * The output comes in the narrow type and is converted back to float, so
 * it is already rounded (the caller rounds anyway).  The plan key includes
 * prec.  Where cuDNN refuses the narrow plan for a direction and shape
 * (no algorithm, or an error while choosing one) the plan falls back to
 * fp32 descriptors (logged once, when the plan is made) and the result is
 * rounded to prec by the round_to kernel, so the caller sees the same kind
 * of values either way.  Deterministic mode restricts the algorithms as
 * for fp32.
 */
#include "trainer/cuda/cuda_internal.h"

#include "core/log.h"

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
           a->dil_h == b->dil_h && a->dil_w == b->dil_w && a->groups == b->groups &&
           a->prec == b->prec;
}

/* The plan's descriptors are of a 16-bit type (bf16/fp16, not fallen back). */
static int s_narrow(const eq_cuda_conv_plan *p)
{
    return p->d.prec != EQ_PREC_FP32 && !p->fallback;
}

/* Pick from perf results (in cuDNN's order: fastest first for Find,
 * heuristic order for _v7), the first acceptable one at or after from. */
static int s_pick(const eq_cuda *cu, const s_perf *pf, int n, int narrow, int from)
{
    /* skip algorithms whose workspace would take more than half of the
     * free device memory (Find reports what it could allocate itself) */
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) {
        (void)cudaGetLastError();
        fr = (size_t)-1;
    }
    for (int i = from; i < n; i++) {
        if (pf[i].status != CUDNN_STATUS_SUCCESS) continue;
        if (pf[i].memory > cu->ws_bytes && pf[i].memory - cu->ws_bytes > fr / 2) continue;
        if (cu->deterministic && pf[i].determinism != CUDNN_DETERMINISTIC) continue;
        /* fp32 operands: tensor cores would mean TF32 */
        if (!narrow && !cu->tf32 && (pf[i].math == CUDNN_TENSOR_OP_MATH ||
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
    const int narrow = s_narrow(p);
    /* A result can report SUCCESS and its algorithm still refuse these
     * descriptors in cudnnGet*WorkspaceSize (_v7's list is not run; Find's
     * has been seen to do it too): take the next acceptable one then. */
    cudnnStatus_t refused = CUDNN_STATUS_SUCCESS;
    int i = s_pick(cu, pf, n, narrow, 0);
    for (; i >= 0; i = s_pick(cu, pf, n, narrow, i + 1)) {
        p->algo = pf[i].algo;
        /* CUDNN_DEFAULT_MATH permits TF32 on Ampere and later: keep FMA math
         * for fp32 operands unless TF32 was asked for; 16-bit operands take
         * the algorithm's own math type (tensor cores, fp32 accumulation) */
        S_DNN(cudnnSetConvolutionMathType(p->cd, narrow || cu->tf32 ? pf[i].math : CUDNN_FMA_MATH));
        /* the size the chosen algorithm needs with these descriptors */
        cudnnStatus_t ws_st;
        if (dir == 0)
            ws_st = cudnnGetConvolutionForwardWorkspaceSize(cu->dnn, p->xd, p->wd, p->cd, p->yd,
                                                         (cudnnConvolutionFwdAlgo_t)p->algo,
                                                         &p->ws_bytes);
        else if (dir == 1)
            ws_st = cudnnGetConvolutionBackwardDataWorkspaceSize(cu->dnn, p->wd, p->yd, p->cd, p->xd,
                                                              (cudnnConvolutionBwdDataAlgo_t)p->algo,
                                                              &p->ws_bytes);
        else
            ws_st = cudnnGetConvolutionBackwardFilterWorkspaceSize(cu->dnn, p->xd, p->yd, p->cd, p->wd,
                                                                (cudnnConvolutionBwdFilterAlgo_t)p->algo,
                                                                &p->ws_bytes);
        if (ws_st == CUDNN_STATUS_SUCCESS) break;
        refused = ws_st;
    }
    if (i < 0 && refused != CUDNN_STATUS_SUCCESS)
        return eq_cudnn_fail(err, s_dir_name[dir],
                             "cudnnGetConvolution*WorkspaceSize (every acceptable algorithm)", refused);
    if (i < 0)
        return eq_err_set(err, EQ_ERR_UNSUPPORTED,
                          "cuda backend: %s: cuDNN offers no %salgorithm for %s n=%lld h=%lld "
                          "w=%lld c=%lld k=%lld r=%lld s=%lld groups=%lld (%d candidates)",
                          s_dir_name[dir], cu->deterministic ? "deterministic " : "",
                          narrow ? eq_precision_name((eq_precision)p->d.prec) : "fp32",
                          (long long)p->d.n, (long long)p->d.h, (long long)p->d.w,
                          (long long)p->d.c, (long long)p->d.k, (long long)p->d.r,
                          (long long)p->d.s, (long long)p->d.groups, n);
    return EQ_OK;
fail:
    return st;
}

static void s_plan_destroy(eq_cuda_conv_plan *p)
{
    if (p->xd) cudnnDestroyTensorDescriptor(p->xd);
    if (p->yd) cudnnDestroyTensorDescriptor(p->yd);
    if (p->wd) cudnnDestroyFilterDescriptor(p->wd);
    if (p->cd) cudnnDestroyConvolutionDescriptor(p->cd);
    p->xd = p->yd = NULL;
    p->wd = NULL;
    p->cd = NULL;
}

/* Descriptors of data type dt for p->d, then the algorithm; on failure
 * the descriptors are destroyed again. */
static eq_status s_plan_make(eq_cuda *cu, eq_cuda_conv_plan *p, cudnnDataType_t dt, eq_err *err)
{
    const int dir = p->dir;
    const eq_conv2d_desc *d = &p->d;
    eq_status st = EQ_OK;
    S_DNN(cudnnCreateTensorDescriptor(&p->xd));
    S_DNN(cudnnCreateTensorDescriptor(&p->yd));
    S_DNN(cudnnCreateFilterDescriptor(&p->wd));
    S_DNN(cudnnCreateConvolutionDescriptor(&p->cd));
    S_DNN(cudnnSetTensor4dDescriptor(p->xd, CUDNN_TENSOR_NHWC, dt, (int)d->n, (int)d->c, (int)d->h,
                                     (int)d->w));
    S_DNN(cudnnSetTensor4dDescriptor(p->yd, CUDNN_TENSOR_NHWC, dt, (int)d->n, (int)d->k, (int)d->p,
                                     (int)d->q));
    S_DNN(cudnnSetFilter4dDescriptor(p->wd, dt, CUDNN_TENSOR_NHWC, (int)d->k,
                                     (int)(d->c / d->groups), (int)d->r, (int)d->s));
    /* compute type float in every configuration (fp32, PSEUDO_HALF,
     * PSEUDO_BFLOAT16) */
    S_DNN(cudnnSetConvolution2dDescriptor(p->cd, (int)d->pad_h, (int)d->pad_w, (int)d->stride_h,
                                          (int)d->stride_w, (int)d->dil_h, (int)d->dil_w,
                                          CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    S_DNN(cudnnSetConvolutionGroupCount(p->cd, (int)d->groups));
    S_DNN(cudnnSetConvolutionMathType(p->cd, dt != CUDNN_DATA_FLOAT ? CUDNN_TENSOR_OP_MATH
                                             : cu->tf32            ? CUDNN_DEFAULT_MATH
                                                                   : CUDNN_FMA_MATH));
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
    return EQ_OK;
fail:
    s_plan_destroy(p);
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
    eq_status st;
    if (d->prec != EQ_PREC_FP32) {
        eq_err e16 = {0};
        if (cu->conv_no16)
            st = eq_err_set(&e16, EQ_ERR_UNSUPPORTED, "16-bit plans disabled by the test hook");
        else
            st = s_plan_make(cu, p,
                             d->prec == EQ_PREC_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF, &e16);
        if (st == EQ_OK) goto done;
        (void)cudaGetLastError(); /* whatever the refused attempt left for the next launch */
        /* once per (direction, shape, prec): the plan is cached */
        eq_warn("cuda backend: %s: no %s plan for n=%lld h=%lld w=%lld c=%lld k=%lld r=%lld "
                "s=%lld groups=%lld (%s); this direction and shape compute in fp32, the result "
                "rounded to %s",
                s_dir_name[dir], eq_precision_name((eq_precision)d->prec), (long long)d->n,
                (long long)d->h, (long long)d->w, (long long)d->c, (long long)d->k,
                (long long)d->r, (long long)d->s, (long long)d->groups, e16.msg,
                eq_precision_name((eq_precision)d->prec));
        p->fallback = 1;
    }
    st = s_plan_make(cu, p, CUDNN_DATA_FLOAT, err);
    if (st) {
        memset(p, 0, sizeof *p);
        return st;
    }
done:
    cu->nplans++;
    *out = p;
    return EQ_OK;
}

static size_t s_round(size_t n)
{
    return (n + S_ALIGN - 1) / S_ALIGN * S_ALIGN;
}

/* Workspace split: [KRSC weights][cuDNN workspace] (fp32 plans), or
 * [KRSC weights][operand a][operand b][cuDNN workspace] with 16-bit
 * elements (narrow plans; na, nb = the element counts of a and b).
 * *wt is the weights' block, *ab the first operand's (NULL for fp32). */
static eq_status s_setup(eq_cuda *cu, int dir, const eq_conv2d_desc *d, size_t na, size_t nb,
                         eq_cuda_conv_plan **p, void **wt, char **ab, size_t *abytes, void **ws,
                         eq_err *err)
{
    eq_status st = s_plan(cu, dir, d, p, err);
    if (st) return st;
    const int narrow = s_narrow(*p);
    const size_t el = narrow ? 2 : sizeof(float);
    size_t wbytes = s_round((size_t)(d->k * (d->c / d->groups) * d->r * d->s) * el);
    size_t a = narrow ? s_round(na * 2) : 0, b = narrow ? s_round(nb * 2) : 0;
    char *base = eq_cuda_workspace(cu, wbytes + a + b + (*p)->ws_bytes, s_dir_name[dir], err);
    if (!base) return EQ_ERR_NOMEM;
    *wt = base;
    *ab = narrow ? base + wbytes : NULL;
    *abytes = a;
    *ws = (*p)->ws_bytes ? base + wbytes + a + b : NULL;
    return EQ_OK;
}

/* A fallen-back plan computed in fp32: round its result to prec. */
static eq_status s_fallback_round(eq_cuda *cu, int dir, const eq_cuda_conv_plan *p, size_t n,
                                  float *out, eq_err *err)
{
    if (!p->fallback) return EQ_OK;
    EQ_K(s_dir_name[dir], eq_cuk_round(cu->stream, p->d.prec, n, out, out));
    return EQ_OK;
}

eq_status eq_cuda_conv2d_fwd(void *ctx, const eq_conv2d_desc *d, const float *x, const float *w,
                             float *y, eq_err *err)
{
    eq_cuda *cu = ctx;
    const int dir = 0;
    const size_t nx = (size_t)(d->n * d->h * d->w * d->c), ny = (size_t)(d->n * d->p * d->q * d->k);
    const int64_t cg = d->c / d->groups;
    eq_cuda_conv_plan *p;
    void *wt, *ws;
    char *ab;
    size_t abytes;
    eq_status st = s_setup(cu, dir, d, nx, ny, &p, &wt, &ab, &abytes, &ws, err);
    if (st) return st;
    const float one = 1.0f, zero = 0.0f;
    if (ab) { /* narrow: x -> ab, y <- ab + abytes */
        EQ_K(s_dir_name[dir], eq_cuk_oihw_to_krsc16(cu->stream, d->prec, d->k, cg, d->r, d->s, w, wt));
        EQ_K(s_dir_name[dir], eq_cuk_to16(cu->stream, d->prec, nx, x, ab));
        S_DNN(cudnnConvolutionForward(cu->dnn, &one, p->xd, ab, p->wd, wt, p->cd,
                                      (cudnnConvolutionFwdAlgo_t)p->algo, ws, p->ws_bytes, &zero,
                                      p->yd, ab + abytes));
        EQ_K(s_dir_name[dir], eq_cuk_from16(cu->stream, d->prec, ny, ab + abytes, y));
        return EQ_OK;
    }
    EQ_K(s_dir_name[dir], eq_cuk_oihw_to_krsc(cu->stream, d->k, cg, d->r, d->s, w, wt));
    S_DNN(cudnnConvolutionForward(cu->dnn, &one, p->xd, x, p->wd, wt, p->cd,
                                  (cudnnConvolutionFwdAlgo_t)p->algo, ws, p->ws_bytes, &zero, p->yd,
                                  y));
    return s_fallback_round(cu, dir, p, ny, y, err);
fail:
    return st;
}

eq_status eq_cuda_conv2d_bwd_data(void *ctx, const eq_conv2d_desc *d, const float *dy,
                                  const float *w, float *dx, eq_err *err)
{
    eq_cuda *cu = ctx;
    const int dir = 1;
    const size_t nx = (size_t)(d->n * d->h * d->w * d->c), ny = (size_t)(d->n * d->p * d->q * d->k);
    const int64_t cg = d->c / d->groups;
    eq_cuda_conv_plan *p;
    void *wt, *ws;
    char *ab;
    size_t abytes;
    eq_status st = s_setup(cu, dir, d, ny, nx, &p, &wt, &ab, &abytes, &ws, err);
    if (st) return st;
    const float one = 1.0f, zero = 0.0f;
    if (ab) { /* narrow: dy -> ab, dx <- ab + abytes */
        EQ_K(s_dir_name[dir], eq_cuk_oihw_to_krsc16(cu->stream, d->prec, d->k, cg, d->r, d->s, w, wt));
        EQ_K(s_dir_name[dir], eq_cuk_to16(cu->stream, d->prec, ny, dy, ab));
        S_DNN(cudnnConvolutionBackwardData(cu->dnn, &one, p->wd, wt, p->yd, ab, p->cd,
                                           (cudnnConvolutionBwdDataAlgo_t)p->algo, ws, p->ws_bytes,
                                           &zero, p->xd, ab + abytes));
        EQ_K(s_dir_name[dir], eq_cuk_from16(cu->stream, d->prec, nx, ab + abytes, dx));
        return EQ_OK;
    }
    EQ_K(s_dir_name[dir], eq_cuk_oihw_to_krsc(cu->stream, d->k, cg, d->r, d->s, w, wt));
    S_DNN(cudnnConvolutionBackwardData(cu->dnn, &one, p->wd, wt, p->yd, dy, p->cd,
                                       (cudnnConvolutionBwdDataAlgo_t)p->algo, ws, p->ws_bytes,
                                       &zero, p->xd, dx));
    return s_fallback_round(cu, dir, p, nx, dx, err);
fail:
    return st;
}

eq_status eq_cuda_conv2d_bwd_filter(void *ctx, const eq_conv2d_desc *d, const float *x,
                                    const float *dy, float *dw, eq_err *err)
{
    eq_cuda *cu = ctx;
    const int dir = 2;
    const size_t nx = (size_t)(d->n * d->h * d->w * d->c), ny = (size_t)(d->n * d->p * d->q * d->k);
    const int64_t cg = d->c / d->groups;
    eq_cuda_conv_plan *p;
    void *wt, *ws;
    char *ab;
    size_t abytes;
    eq_status st = s_setup(cu, dir, d, nx, ny, &p, &wt, &ab, &abytes, &ws, err);
    if (st) return st;
    const float one = 1.0f, zero = 0.0f;
    if (ab) { /* narrow: x -> ab, dy -> ab + abytes, dw (KRSC) <- wt */
        EQ_K(s_dir_name[dir], eq_cuk_to16(cu->stream, d->prec, nx, x, ab));
        EQ_K(s_dir_name[dir], eq_cuk_to16(cu->stream, d->prec, ny, dy, ab + abytes));
        S_DNN(cudnnConvolutionBackwardFilter(cu->dnn, &one, p->xd, ab, p->yd, ab + abytes, p->cd,
                                             (cudnnConvolutionBwdFilterAlgo_t)p->algo, ws,
                                             p->ws_bytes, &zero, p->wd, wt));
        EQ_K(s_dir_name[dir], eq_cuk_krsc16_to_oihw(cu->stream, d->prec, d->k, cg, d->r, d->s, wt, dw));
        return EQ_OK;
    }
    S_DNN(cudnnConvolutionBackwardFilter(cu->dnn, &one, p->xd, x, p->yd, dy, p->cd,
                                         (cudnnConvolutionBwdFilterAlgo_t)p->algo, ws, p->ws_bytes,
                                         &zero, p->wd, wt));
    EQ_K(s_dir_name[dir], eq_cuk_krsc_to_oihw(cu->stream, d->k, cg, d->r, d->s, wt, dw));
    return s_fallback_round(cu, dir, p, (size_t)(d->k * cg * d->r * d->s), dw, err);
fail:
    return st;
}
