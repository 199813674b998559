/*
 * trainer/cuda/ops.c -- the CUDA backend's op members other than
 * convolutions: batch norm, elementwise, pooling, linear (cuBLAS), loss and
 * optimiser steps, mixed precision's round_to and nonfinite.  Each translates the validated arguments into launches
 * of kernels.h on the compute stream, with scratch from the workspace.
 */
#include "trainer/cuda/cuda_internal.h"

#include <math.h>

static eq_cuk_pool s_pool(const eq_pool2d_desc *d)
{
    eq_cuk_pool p = {.n = d->n, .h = d->h, .w = d->w, .c = d->c, .kh = d->kh, .kw = d->kw,
                     .sh = d->stride_h, .sw = d->stride_w, .ph = d->pad_h, .pw = d->pad_w,
                     .p = d->p, .q = d->q, .count_include_pad = d->count_include_pad};
    return p;
}

/* Batch norm, plain and fused with the residual add and ReLU (bn_relu_*):
 * one launcher each way, the fused members passing z/relu, y/dy2/dz. */
static eq_status s_bn_train(eq_cuda *cu, const char *op, const eq_bn_desc *d, const float *x,
                            const float *z, int relu, const float *gamma, const float *beta,
                            float *running_mean, float *running_var, float *y, float *save_mean,
                            float *save_invstd, eq_err *err)
{
    void *ws = eq_cuda_workspace(cu, eq_cuk_bn_scratch(d->m, d->c), op, err);
    if (!ws) return EQ_ERR_NOMEM;
    EQ_K(op, eq_cuk_bn_fwd_train(cu->stream, d->m, d->c, d->eps, d->momentum, x, z, relu, gamma,
                                 beta, running_mean, running_var, y, save_mean, save_invstd, ws));
    return EQ_OK;
}

static eq_status s_bn_eval(eq_cuda *cu, const char *op, const eq_bn_desc *d, const float *x,
                           const float *z, int relu, const float *gamma, const float *beta,
                           const float *running_mean, const float *running_var, float *y,
                           eq_err *err)
{
    void *ws = eq_cuda_workspace(cu, (size_t)(2 * d->c) * sizeof(double), op, err);
    if (!ws) return EQ_ERR_NOMEM;
    EQ_K(op, eq_cuk_bn_fwd_eval(cu->stream, d->m, d->c, d->eps, x, z, relu, gamma, beta,
                                running_mean, running_var, y, ws));
    return EQ_OK;
}

static eq_status s_bn_bwd(eq_cuda *cu, const char *op, const eq_bn_desc *d, const float *x,
                          const float *y, const float *dy, const float *dy2, const float *gamma,
                          const float *save_mean, const float *save_invstd, float *dx, float *dz,
                          float *dgamma, float *dbeta, eq_err *err)
{
    void *ws = eq_cuda_workspace(cu, eq_cuk_bn_scratch(d->m, d->c), op, err);
    if (!ws) return EQ_ERR_NOMEM;
    EQ_K(op, eq_cuk_bn_bwd(cu->stream, d->m, d->c, x, y, dy, dy2, gamma, save_mean, save_invstd,
                           dx, dz, dgamma, dbeta, ws));
    return EQ_OK;
}

eq_status eq_cuda_bn_fwd_train(void *ctx, const eq_bn_desc *d, const float *x, const float *gamma,
                               const float *beta, float *running_mean, float *running_var,
                               float *y, float *save_mean, float *save_invstd, eq_err *err)
{
    return s_bn_train(ctx, "bn_fwd_train", d, x, NULL, 0, gamma, beta, running_mean, running_var, y,
                      save_mean, save_invstd, err);
}

eq_status eq_cuda_bn_fwd_eval(void *ctx, const eq_bn_desc *d, const float *x, const float *gamma,
                              const float *beta, const float *running_mean,
                              const float *running_var, float *y, eq_err *err)
{
    return s_bn_eval(ctx, "bn_fwd_eval", d, x, NULL, 0, gamma, beta, running_mean, running_var, y,
                     err);
}

eq_status eq_cuda_bn_bwd(void *ctx, const eq_bn_desc *d, const float *x, const float *dy,
                         const float *gamma, const float *save_mean, const float *save_invstd,
                         float *dx, float *dgamma, float *dbeta, eq_err *err)
{
    return s_bn_bwd(ctx, "bn_bwd", d, x, NULL, dy, NULL, gamma, save_mean, save_invstd, dx, NULL,
                    dgamma, dbeta, err);
}

eq_status eq_cuda_bn_relu_fwd_train(void *ctx, const eq_bn_desc *d, const float *x,
                                    const float *z, const float *gamma, const float *beta,
                                    float *running_mean, float *running_var, float *y,
                                    float *save_mean, float *save_invstd, eq_err *err)
{
    return s_bn_train(ctx, "bn_relu_fwd_train", d, x, z, 1, gamma, beta, running_mean,
                      running_var, y, save_mean, save_invstd, err);
}

eq_status eq_cuda_bn_relu_fwd_eval(void *ctx, const eq_bn_desc *d, const float *x,
                                   const float *z, const float *gamma, const float *beta,
                                   const float *running_mean, const float *running_var, float *y,
                                   eq_err *err)
{
    return s_bn_eval(ctx, "bn_relu_fwd_eval", d, x, z, 1, gamma, beta, running_mean, running_var,
                     y, err);
}

eq_status eq_cuda_bn_relu_bwd(void *ctx, const eq_bn_desc *d, const float *x, const float *y,
                              const float *dy, const float *dy2, const float *gamma,
                              const float *save_mean, const float *save_invstd, float *dx,
                              float *dz, float *dgamma, float *dbeta, eq_err *err)
{
    return s_bn_bwd(ctx, "bn_relu_bwd", d, x, y, dy, dy2, gamma, save_mean, save_invstd, dx, dz,
                    dgamma, dbeta, err);
}

eq_status eq_cuda_relu_fwd(void *ctx, size_t n, const float *x, float *y, eq_err *err)
{
    eq_cuda *cu = ctx;
    EQ_K("relu_fwd", eq_cuk_relu_fwd(cu->stream, n, x, y));
    return EQ_OK;
}

eq_status eq_cuda_relu_bwd(void *ctx, size_t n, const float *y, const float *dy, float *dx,
                           eq_err *err)
{
    eq_cuda *cu = ctx;
    EQ_K("relu_bwd", eq_cuk_relu_bwd(cu->stream, n, y, dy, dx));
    return EQ_OK;
}

eq_status eq_cuda_clamp_fwd(void *ctx, size_t n, float lo, float hi, const float *x, float *y,
                            eq_err *err)
{
    eq_cuda *cu = ctx;
    EQ_K("clamp_fwd", eq_cuk_clamp_fwd(cu->stream, n, lo, hi, x, y));
    return EQ_OK;
}

eq_status eq_cuda_clamp_bwd(void *ctx, size_t n, float lo, float hi, const float *y,
                            const float *dy, float *dx, eq_err *err)
{
    eq_cuda *cu = ctx;
    EQ_K("clamp_bwd", eq_cuk_clamp_bwd(cu->stream, n, lo, hi, y, dy, dx));
    return EQ_OK;
}

eq_status eq_cuda_scalar_affine_fwd(void *ctx, size_t n, const float *x, const float *scale,
                                    const float *bias, float *y, eq_err *err)
{
    eq_cuda *cu = ctx;
    EQ_K("scalar_affine_fwd", eq_cuk_saff_fwd(cu->stream, n, x, scale, bias, y));
    return EQ_OK;
}

eq_status eq_cuda_scalar_affine_bwd(void *ctx, size_t n, const float *x, const float *dy,
                                    const float *scale, float *dx, float *dscale, float *dbias,
                                    eq_err *err)
{
    eq_cuda *cu = ctx;
    void *ws = NULL;
    if (dscale || dbias) {
        ws = eq_cuda_workspace(cu, eq_cuk_saff_scratch(n), "scalar_affine_bwd", err);
        if (!ws) return EQ_ERR_NOMEM;
    }
    EQ_K("scalar_affine_bwd",
         eq_cuk_saff_bwd(cu->stream, n, x, dy, scale, dx, dscale, dbias, ws));
    return EQ_OK;
}

eq_status eq_cuda_prelu_fwd(void *ctx, int64_t m, int64_t c, int64_t nslope, const float *x,
                            const float *slope, float *y, eq_err *err)
{
    eq_cuda *cu = ctx;
    EQ_K("prelu_fwd", eq_cuk_prelu_fwd(cu->stream, m, c, nslope, x, slope, y));
    return EQ_OK;
}

eq_status eq_cuda_prelu_bwd(void *ctx, int64_t m, int64_t c, int64_t nslope, const float *x,
                            const float *slope, const float *dy, float *dx, float *dslope,
                            eq_err *err)
{
    eq_cuda *cu = ctx;
    size_t need = eq_cuk_colsum_scratch(m, c, 1) + (size_t)c * sizeof(double);
    void *ws = eq_cuda_workspace(cu, need, "prelu_bwd", err);
    if (!ws) return EQ_ERR_NOMEM;
    EQ_K("prelu_bwd", eq_cuk_prelu_bwd(cu->stream, m, c, nslope, x, slope, dy, dx, dslope, ws));
    return EQ_OK;
}

eq_status eq_cuda_add(void *ctx, size_t n, const float *a, const float *b, float *y, eq_err *err)
{
    eq_cuda *cu = ctx;
    EQ_K("add", eq_cuk_add(cu->stream, n, a, b, y));
    return EQ_OK;
}

eq_status eq_cuda_maxpool_fwd(void *ctx, const eq_pool2d_desc *d, const float *x, float *y,
                              int32_t *argmax, eq_err *err)
{
    eq_cuda *cu = ctx;
    eq_cuk_pool p = s_pool(d);
    EQ_K("maxpool_fwd", eq_cuk_maxpool_fwd(cu->stream, &p, x, y, argmax));
    return EQ_OK;
}

eq_status eq_cuda_maxpool_bwd(void *ctx, const eq_pool2d_desc *d, const int32_t *argmax,
                              const float *dy, float *dx, eq_err *err)
{
    eq_cuda *cu = ctx;
    eq_cuk_pool p = s_pool(d);
    EQ_K("maxpool_bwd", eq_cuk_maxpool_bwd(cu->stream, &p, argmax, dy, dx, cu->dflag));
    return EQ_OK;
}

eq_status eq_cuda_avgpool_fwd(void *ctx, const eq_pool2d_desc *d, const float *x, float *y,
                              eq_err *err)
{
    eq_cuda *cu = ctx;
    eq_cuk_pool p = s_pool(d);
    EQ_K("avgpool_fwd", eq_cuk_avgpool_fwd(cu->stream, &p, x, y));
    return EQ_OK;
}

eq_status eq_cuda_avgpool_bwd(void *ctx, const eq_pool2d_desc *d, const float *dy, float *dx,
                              eq_err *err)
{
    eq_cuda *cu = ctx;
    eq_cuk_pool p = s_pool(d);
    EQ_K("avgpool_bwd", eq_cuk_avgpool_bwd(cu->stream, &p, dy, dx));
    return EQ_OK;
}

eq_status eq_cuda_gap_fwd(void *ctx, int64_t n, int64_t hw, int64_t c, const float *x, float *y,
                          eq_err *err)
{
    eq_cuda *cu = ctx;
    EQ_K("gap_fwd", eq_cuk_gap_fwd(cu->stream, n, hw, c, x, y));
    return EQ_OK;
}

eq_status eq_cuda_gap_bwd(void *ctx, int64_t n, int64_t hw, int64_t c, const float *dy,
                          float *dx, eq_err *err)
{
    eq_cuda *cu = ctx;
    EQ_K("gap_bwd", eq_cuk_gap_bwd(cu->stream, n, hw, c, dy, dx));
    return EQ_OK;
}

/* Row-major GEMMs through column-major cuBLAS: a row-major [r][c] matrix is
 * a column-major [c][r] one, so row-major C = A * B^T is column-major
 * C^T = B * A^T, and so on. */
eq_status eq_cuda_linear_fwd(void *ctx, int64_t n, int64_t in, int64_t out, const float *x,
                             const float *w, const float *b, float *y, eq_err *err)
{
    eq_cuda *cu = ctx;
    const float one = 1.0f, zero = 0.0f;
    /* y[n][out] = x[n][in] * w[out][in]^T  <=>  y^T = w * x^T (col-major) */
    EQ_BLAS("linear_fwd", cublasSgemm(cu->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)out, (int)n, (int)in,
                                      &one, w, (int)in, x, (int)in, &zero, y, (int)out));
    if (b) EQ_K("linear_fwd", eq_cuk_bias_add(cu->stream, n, out, b, y));
    return EQ_OK;
}

eq_status eq_cuda_linear_bwd_data(void *ctx, int64_t n, int64_t in, int64_t out,
                                  const float *dy, const float *w, float *dx, eq_err *err)
{
    eq_cuda *cu = ctx;
    const float one = 1.0f, zero = 0.0f;
    /* dx[n][in] = dy[n][out] * w[out][in]  <=>  dx^T = w^T * dy^T */
    EQ_BLAS("linear_bwd_data", cublasSgemm(cu->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)in, (int)n,
                                           (int)out, &one, w, (int)in, dy, (int)out, &zero, dx,
                                           (int)in));
    return EQ_OK;
}

eq_status eq_cuda_linear_bwd_weight(void *ctx, int64_t n, int64_t in, int64_t out,
                                    const float *x, const float *dy, float *dw, float *db,
                                    eq_err *err)
{
    eq_cuda *cu = ctx;
    const float one = 1.0f, zero = 0.0f;
    /* dw[out][in] = dy[n][out]^T * x[n][in]  <=>  dw^T = x^T * dy */
    EQ_BLAS("linear_bwd_weight", cublasSgemm(cu->blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)in, (int)out,
                                             (int)n, &one, x, (int)in, dy, (int)out, &zero, dw,
                                             (int)in));
    if (db) EQ_K("linear_bwd_weight", eq_cuk_bias_grad(cu->stream, n, out, dy, db));
    return EQ_OK;
}

/* Labels are checked by the kernels (on the device); a bad one is reported
 * by the next download/synchronize (trainer/backend.h allows that). */
eq_status eq_cuda_xent_fwd(void *ctx, const eq_xent_desc *d, const float *logits,
                           const int32_t *labels_a, const int32_t *labels_b, const float *lambda,
                           float *loss, eq_err *err)
{
    eq_cuda *cu = ctx;
    void *ws = eq_cuda_workspace(cu, (size_t)d->n * sizeof(double), "xent_fwd", err);
    if (!ws) return EQ_ERR_NOMEM;
    EQ_K("xent_fwd", eq_cuk_xent_fwd(cu->stream, d->n, d->k, d->smoothing, logits, labels_a,
                                     labels_b, lambda, loss, ws, cu->dflag));
    return EQ_OK;
}

eq_status eq_cuda_xent_bwd(void *ctx, const eq_xent_desc *d, const float *logits,
                           const int32_t *labels_a, const int32_t *labels_b, const float *lambda,
                           float dloss, float *dlogits, eq_err *err)
{
    eq_cuda *cu = ctx;
    void *ws = eq_cuda_workspace(cu, (size_t)d->n * sizeof(double), "xent_bwd", err);
    if (!ws) return EQ_ERR_NOMEM;
    EQ_K("xent_bwd", eq_cuk_xent_bwd(cu->stream, d->n, d->k, d->smoothing, logits, labels_a,
                                     labels_b, lambda, dloss, dlogits, ws, cu->dflag));
    return EQ_OK;
}

eq_status eq_cuda_sgd_step(void *ctx, size_t n, const eq_sgd_params *hp, float *param,
                           const float *grad, float *buf, eq_err *err)
{
    eq_cuda *cu = ctx;
    EQ_K("sgd_step", eq_cuk_sgd(cu->stream, n, hp->lr, hp->momentum, hp->dampening,
                                hp->weight_decay, hp->nesterov, hp->first, param, grad, buf));
    return EQ_OK;
}

eq_status eq_cuda_adam_step(void *ctx, size_t n, const eq_adam_params *hp, float *param,
                            const float *grad, float *mu, float *nu, eq_err *err)
{
    eq_cuda *cu = ctx;
    double t = (double)hp->step;
    /* as the CPU backend: bias corrections in double, then float */
    float c1 = (float)((double)hp->lr / (1.0 - pow((double)hp->beta1, t)));
    float c2s = (float)sqrt(1.0 - pow((double)hp->beta2, t));
    EQ_K("adam_step", eq_cuk_adam(cu->stream, n, hp->beta1, hp->beta2, hp->eps, hp->weight_decay,
                                  c1, c2s, param, grad, mu, nu));
    return EQ_OK;
}

/* ---- mixed precision ---- */

eq_status eq_cuda_round_to(void *ctx, eq_precision prec, size_t n, const float *x, float *y,
                           eq_err *err)
{
    eq_cuda *cu = ctx;
    if (prec == EQ_PREC_FP32) {
        if (x != y)
            EQ_CU("round_to", cudaMemcpyAsync(y, x, n * sizeof(float), cudaMemcpyDeviceToDevice,
                                              cu->stream));
        return EQ_OK;
    }
    EQ_K("round_to", eq_cuk_round(cu->stream, (int)prec, n, x, y));
    return EQ_OK;
}

/* The count is reduced on the device (deterministic, kernels.h) and
 * downloaded: the host waits for the stream, as a download does. */
eq_status eq_cuda_nonfinite(void *ctx, size_t n, const float *x, int64_t *count, eq_err *err)
{
    static const char *op = "nonfinite";
    eq_cuda *cu = ctx;
    void *ws = eq_cuda_workspace(cu, eq_cuk_nonfinite_scratch(n), op, err);
    if (!ws) return EQ_ERR_NOMEM;
    long long *dcount = NULL, hcount = 0;
    EQ_K(op, eq_cuk_nonfinite(cu->stream, n, x, ws, &dcount));
    EQ_CU(op, cudaMemcpyAsync(&hcount, dcount, sizeof hcount, cudaMemcpyDeviceToHost, cu->stream));
    EQ_CU(op, cudaStreamSynchronize(cu->stream));
    eq_status st = eq_cuda_check_flags(cu, op, err);
    if (st) return st;
    *count = (int64_t)hcount;
    return EQ_OK;
}
