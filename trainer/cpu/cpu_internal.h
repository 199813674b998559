/*
 * trainer/cpu/cpu_internal.h -- shared by the CPU backend's files only.
 *
 * The context, its workspace, the parallel-for and the GEMM wrapper that
 * tiles SGEMMs over the backend's pool.  Op files (conv.c, norm.c,
 * ops.c) implement the members of struct eq_backend_i declared below; the
 * wrappers in trainer/backend.c have validated their arguments.
 */
#ifndef EQ_TRAINER_CPU_INTERNAL_H
#define EQ_TRAINER_CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "core/pool.h"
#include "core/status.h"
#include "trainer/backend.h"

typedef struct eq_cpu {
    int nthreads;     /* threads of our loops (GEMM tiles included) */
    eq_pool *pool;    /* nthreads workers (the caller is one); NULL when 1 */
    float *ws;        /* workspace, 64-byte aligned */
    size_t ws_bytes;  /* its size: the high-water mark of all ops so far */
    float *gws;       /* eq_cpu_sgemm's K-slice partials */
    size_t gws_bytes;
} eq_cpu;

/* Workspace of at least `nbytes`, grown (and its old contents dropped) when
 * too small.  NULL with EQ_ERR_NOMEM naming `op` on failure. */
float *eq_cpu_workspace(eq_cpu *cpu, size_t nbytes, const char *op, eq_err *err);

/* Call fn(ctx, i) for i in [0, n) on the backend's pool.  Each i must write
 * its own outputs and reduce in a fixed order, so results do not depend on
 * which thread ran it.  Our pool and OpenBLAS's threads never run at the
 * same time: OpenBLAS runs single-threaded inside our pool's workers. */
typedef void (*eq_cpu_fn)(void *ctx, size_t i);
void eq_cpu_for(eq_cpu *cpu, size_t n, eq_cpu_fn fn, void *ctx);

/* eq_cpu_for that also passes the worker running index i: fn(ctx, i,
 * worker), worker in [0, eq_cpu_workers(cpu)), to index per-thread
 * scratch (e.g. slices of the workspace).  Not from inside eq_cpu_for. */
static inline void eq_cpu_for_worker(eq_cpu *cpu, size_t n, eq_pool_fn fn, void *ctx)
{
    eq_pool_for(cpu->pool, n, fn, ctx);
}

static inline int eq_cpu_workers(const eq_cpu *cpu)
{
    return eq_pool_size(cpu->pool);
}

/* Row-major C = alpha * op(A) * op(B) + beta * C: tiles of C (and, for
 * long reductions, slices of K added in a fixed order) on the backend's
 * pool, each a single-threaded cblas_sgemm.  The tiling depends only on
 * m, n and k, so results do not depend on the thread count.  Call from the
 * calling thread, not from inside eq_cpu_for. */
void eq_cpu_sgemm(eq_cpu *cpu, int trans_a, int trans_b, int m, int n, int k, float alpha,
                  const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);

/* conv.c */
eq_status eq_cpu_conv2d_fwd(void *ctx, const eq_conv2d_desc *d, const float *x, const float *w,
                            float *y, eq_err *err);
eq_status eq_cpu_conv2d_bwd_data(void *ctx, const eq_conv2d_desc *d, const float *dy,
                                 const float *w, float *dx, eq_err *err);
eq_status eq_cpu_conv2d_bwd_filter(void *ctx, const eq_conv2d_desc *d, const float *x,
                                   const float *dy, float *dw, eq_err *err);

/* norm.c */
eq_status eq_cpu_bn_fwd_train(void *ctx, const eq_bn_desc *d, const float *x, const float *gamma,
                              const float *beta, float *running_mean, float *running_var,
                              float *y, float *save_mean, float *save_invstd, eq_err *err);
eq_status eq_cpu_bn_fwd_eval(void *ctx, const eq_bn_desc *d, const float *x, const float *gamma,
                             const float *beta, const float *running_mean,
                             const float *running_var, float *y, eq_err *err);
eq_status eq_cpu_bn_bwd(void *ctx, const eq_bn_desc *d, const float *x, const float *dy,
                        const float *gamma, const float *save_mean, const float *save_invstd,
                        float *dx, float *dgamma, float *dbeta, eq_err *err);
eq_status eq_cpu_bn_relu_fwd_train(void *ctx, const eq_bn_desc *d, const float *x,
                                   const float *z, const float *gamma, const float *beta,
                                   float *running_mean, float *running_var, float *y,
                                   float *save_mean, float *save_invstd, eq_err *err);
eq_status eq_cpu_bn_relu_fwd_eval(void *ctx, const eq_bn_desc *d, const float *x,
                                  const float *z, const float *gamma, const float *beta,
                                  const float *running_mean, const float *running_var, float *y,
                                  eq_err *err);
eq_status eq_cpu_bn_relu_bwd(void *ctx, const eq_bn_desc *d, const float *x, const float *y,
                             const float *dy, const float *dy2, const float *gamma,
                             const float *save_mean, const float *save_invstd, float *dx,
                             float *dz, float *dgamma, float *dbeta, eq_err *err);

/* ops.c */
eq_status eq_cpu_relu_fwd(void *ctx, size_t n, const float *x, float *y, eq_err *err);
eq_status eq_cpu_relu_bwd(void *ctx, size_t n, const float *y, const float *dy, float *dx,
                          eq_err *err);
eq_status eq_cpu_clamp_fwd(void *ctx, size_t n, float lo, float hi, const float *x, float *y,
                           eq_err *err);
eq_status eq_cpu_clamp_bwd(void *ctx, size_t n, float lo, float hi, const float *y,
                           const float *dy, float *dx, eq_err *err);
eq_status eq_cpu_scalar_affine_fwd(void *ctx, size_t n, const float *x, const float *scale,
                                   const float *bias, float *y, eq_err *err);
eq_status eq_cpu_scalar_affine_bwd(void *ctx, size_t n, const float *x, const float *dy,
                                   const float *scale, float *dx, float *dscale, float *dbias,
                                   eq_err *err);
eq_status eq_cpu_prelu_fwd(void *ctx, int64_t m, int64_t c, int64_t nslope, const float *x,
                           const float *slope, float *y, eq_err *err);
eq_status eq_cpu_prelu_bwd(void *ctx, int64_t m, int64_t c, int64_t nslope, const float *x,
                           const float *slope, const float *dy, float *dx, float *dslope,
                           eq_err *err);
eq_status eq_cpu_add(void *ctx, size_t n, const float *a, const float *b, float *y, eq_err *err);
eq_status eq_cpu_gap_fwd(void *ctx, int64_t n, int64_t hw, int64_t c, const float *x, float *y,
                         eq_err *err);
eq_status eq_cpu_gap_bwd(void *ctx, int64_t n, int64_t hw, int64_t c, const float *dy, float *dx,
                         eq_err *err);
eq_status eq_cpu_linear_fwd(void *ctx, int64_t n, int64_t in, int64_t out, const float *x,
                            const float *w, const float *b, float *y, eq_err *err);
eq_status eq_cpu_linear_bwd_data(void *ctx, int64_t n, int64_t in, int64_t out, const float *dy,
                                 const float *w, float *dx, eq_err *err);
eq_status eq_cpu_linear_bwd_weight(void *ctx, int64_t n, int64_t in, int64_t out,
                                   const float *x, const float *dy, float *dw, float *db,
                                   eq_err *err);
eq_status eq_cpu_xent_fwd(void *ctx, const eq_xent_desc *d, const float *logits,
                          const int32_t *labels_a, const int32_t *labels_b, const float *lambda,
                          float *loss, eq_err *err);
eq_status eq_cpu_xent_bwd(void *ctx, const eq_xent_desc *d, const float *logits,
                          const int32_t *labels_a, const int32_t *labels_b, const float *lambda,
                          float dloss, float *dlogits, eq_err *err);

eq_status eq_cpu_sgd_step(void *ctx, size_t n, const eq_sgd_params *hp, float *param,
                          const float *grad, float *buf, eq_err *err);
eq_status eq_cpu_adam_step(void *ctx, size_t n, const eq_adam_params *hp, float *param,
                           const float *grad, float *mu, float *nu, eq_err *err);

/* round.c: the mixed-precision members (bitwise eq_precision_round) */
eq_status eq_cpu_round_to(void *ctx, eq_precision prec, size_t n, const float *x, float *y,
                          eq_err *err);
eq_status eq_cpu_nonfinite(void *ctx, size_t n, const float *x, int64_t *count, eq_err *err);
/* For tests: the widest kernels round_to/nonfinite may use from now on (0
 * generic 4-lane, 1 AVX2, 2 AVX-512F; -1: the CPU's best, the default).
 * Not thread-safe against running members. */
void eq_cpu_round_isa(int max);

/* pool.c */
eq_status eq_cpu_maxpool_fwd(void *ctx, const eq_pool2d_desc *d, const float *x, float *y,
                             int32_t *argmax, eq_err *err);
eq_status eq_cpu_maxpool_bwd(void *ctx, const eq_pool2d_desc *d, const int32_t *argmax,
                             const float *dy, float *dx, eq_err *err);
eq_status eq_cpu_avgpool_fwd(void *ctx, const eq_pool2d_desc *d, const float *x, float *y,
                             eq_err *err);
eq_status eq_cpu_avgpool_bwd(void *ctx, const eq_pool2d_desc *d, const float *dy, float *dx,
                             eq_err *err);

#endif
