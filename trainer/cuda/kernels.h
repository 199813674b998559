/*
 * trainer/cuda/kernels.h -- launchers of the CUDA backend's own kernels
 * (kernels.cu).  Plain C declarations (extern "C" in the .cu), no eq
 * headers, so both gcc and nvcc read them.  Each launcher queues its
 * kernels on `s` and returns cudaGetLastError() of the launch; arguments
 * are valid (checked by trainer/backend.c) and every pointer is device
 * memory unless marked host.
 *
 * Numerics follow the CPU backend (trainer/cpu/) operation by operation:
 * the same float/double types, the same order of additions where the CPU
 * sums in index order, no FMA contraction (nvcc --fmad=false), and
 * reductions in a fixed tree over fixed blocks (never atomics), so results
 * are identical run to run.  Where the CPU sums in index order over
 * millions of terms (batch norm, GAP over rows) the GPU's blocked double
 * sums differ from it only by double rounding (far below the 1e-5 float
 * tolerance of the parity tests).
 */
#ifndef EQ_TRAINER_CUDA_KERNELS_H
#define EQ_TRAINER_CUDA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Pooling geometry (eq_pool2d_desc's fields). */
typedef struct eq_cuk_pool {
    int64_t n, h, w, c, kh, kw, sh, sw, ph, pw, p, q;
    int count_include_pad;
} eq_cuk_pool;

cudaError_t eq_cuk_relu_fwd(cudaStream_t s, size_t n, const float *x, float *y);
cudaError_t eq_cuk_relu_bwd(cudaStream_t s, size_t n, const float *y, const float *dy, float *dx);
cudaError_t eq_cuk_add(cudaStream_t s, size_t n, const float *a, const float *b, float *y);
cudaError_t eq_cuk_prelu_fwd(cudaStream_t s, int64_t m, int64_t c, int64_t nslope, const float *x,
                             const float *slope, float *y);
/* scratch: eq_cuk_colsum_scratch(m, c, 1) bytes */
cudaError_t eq_cuk_prelu_bwd(cudaStream_t s, int64_t m, int64_t c, int64_t nslope, const float *x,
                             const float *slope, const float *dy, float *dx, float *dslope,
                             void *scratch);

/* Bytes of scratch the column reductions over [m][c] need for `nsum`
 * simultaneous sums (batch norm: 2). */
size_t eq_cuk_colsum_scratch(int64_t m, int64_t c, int nsum);

/* Batch norm over [m][c] (trainer/backend.h eq_bn_desc); gamma/beta may be
 * NULL.  scratch: eq_cuk_bn_scratch(m, c) bytes (bn_fwd_eval: 2*c doubles).
 * The same launchers serve the fused bn_relu_* members: forward with relu
 * set gives y = max(bn(x) + z, 0) (z NULL: none; relu 0: plain bn, z
 * ignored); backward with y set takes g = dy + dy2 (dy2 NULL: dy) where
 * y > 0, else 0, and writes it to dz when dz is not NULL (dz may be dy or
 * dy2); y NULL: g = dy (+ dy2), plain bn_bwd, where dx may be dy.  Batch
 * statistics, bn(x) rounding and reduction order are those of the plain
 * ops, so the fused results are bitwise those of the composition. */
size_t eq_cuk_bn_scratch(int64_t m, int64_t c);
cudaError_t eq_cuk_bn_fwd_train(cudaStream_t s, int64_t m, int64_t c, float eps, float momentum,
                                const float *x, const float *z, int relu, const float *gamma,
                                const float *beta, float *rmean, float *rvar, float *y,
                                float *save_mean, float *save_invstd, void *scratch);
cudaError_t eq_cuk_bn_fwd_eval(cudaStream_t s, int64_t m, int64_t c, float eps, const float *x,
                               const float *z, int relu, const float *gamma, const float *beta,
                               const float *rmean, const float *rvar, float *y, void *scratch);
cudaError_t eq_cuk_bn_bwd(cudaStream_t s, int64_t m, int64_t c, const float *x, const float *y,
                          const float *dy, const float *dy2, const float *gamma, const float *mean,
                          const float *invstd, float *dx, float *dz, float *dgamma, float *dbeta,
                          void *scratch);

/* Pooling.  maxpool_bwd sets flag[2] = (bad index + 1) when an argmax is
 * outside the input (and skips it); with several, one of them (threads
 * race; not necessarily the first). */
cudaError_t eq_cuk_maxpool_fwd(cudaStream_t s, const eq_cuk_pool *p, const float *x, float *y,
                               int32_t *argmax);
cudaError_t eq_cuk_maxpool_bwd(cudaStream_t s, const eq_cuk_pool *p, const int32_t *argmax,
                               const float *dy, float *dx, int32_t *flag);
cudaError_t eq_cuk_avgpool_fwd(cudaStream_t s, const eq_cuk_pool *p, const float *x, float *y);
cudaError_t eq_cuk_avgpool_bwd(cudaStream_t s, const eq_cuk_pool *p, const float *dy, float *dx);
cudaError_t eq_cuk_gap_fwd(cudaStream_t s, int64_t n, int64_t hw, int64_t c, const float *x,
                           float *y);
cudaError_t eq_cuk_gap_bwd(cudaStream_t s, int64_t n, int64_t hw, int64_t c, const float *dy,
                           float *dx);

/* Linear helpers: y[i][j] += b[j]; db[j] = sum_i dy[i][j] (double, in
 * row order). */
cudaError_t eq_cuk_bias_add(cudaStream_t s, int64_t n, int64_t out, const float *b, float *y);
cudaError_t eq_cuk_bias_grad(cudaStream_t s, int64_t n, int64_t out, const float *dy, float *db);

/* Softmax cross-entropy (eq_xent_desc).  Bad labels set flag[0] = row + 1,
 * flag[1] = the label (first one found wins) and count as 0.  scratch:
 * n doubles (per-row losses summed in row order by one thread; the
 * backward keeps each row's log-sum-exp there). */
cudaError_t eq_cuk_xent_fwd(cudaStream_t s, int64_t n, int64_t k, float smoothing,
                            const float *logits, const int32_t *la, const int32_t *lb,
                            const float *lam, float *loss, double *scratch, int32_t *flag);
cudaError_t eq_cuk_xent_bwd(cudaStream_t s, int64_t n, int64_t k, float smoothing,
                            const float *logits, const int32_t *la, const int32_t *lb,
                            const float *lam, float dloss, float *dlogits, double *scratch,
                            int32_t *flag);

/* Optimisers (trainer/backend.h formulas; c1 = lr/(1-b1^t), c2s =
 * sqrt(1-b2^t) computed by the caller in double, as the CPU backend). */
cudaError_t eq_cuk_sgd(cudaStream_t s, size_t n, float lr, float momentum, float dampening,
                       float wd, int nesterov, int first, float *p, const float *g, float *buf);
cudaError_t eq_cuk_adam(cudaStream_t s, size_t n, float beta1, float beta2, float eps, float wd,
                        float c1, float c2s, float *p, const float *g, float *mu, float *nu);

/* Hardtanh: y = min(max(x, lo), hi); dx = dy where lo < y < hi. */
cudaError_t eq_cuk_clamp_fwd(cudaStream_t s, size_t n, float lo, float hi, const float *x, float *y);
cudaError_t eq_cuk_clamp_bwd(cudaStream_t s, size_t n, float lo, float hi, const float *y,
                             const float *dy, float *dx);
/* Fixup's scalar affine with device scalars (NULL: 1 / 0); the backward's
 * sums (double, fixed blocks, in order) need eq_cuk_saff_scratch(n) bytes;
 * dx, dscale, dbias may each be NULL; dx may alias dy. */
size_t eq_cuk_saff_scratch(size_t n);
cudaError_t eq_cuk_saff_fwd(cudaStream_t s, size_t n, const float *x, const float *scale,
                            const float *bias, float *y);
cudaError_t eq_cuk_saff_bwd(cudaStream_t s, size_t n, const float *x, const float *dy,
                            const float *scale, float *dx, float *dscale, float *dbias,
                            void *scratch);

/* Conv weight layouts: OIHW [k][c][r][s] <-> KRSC [k][r][s][c]. */
cudaError_t eq_cuk_oihw_to_krsc(cudaStream_t s, int64_t k, int64_t c, int64_t r, int64_t sdim,
                                const float *src, float *dst);
cudaError_t eq_cuk_krsc_to_oihw(cudaStream_t s, int64_t k, int64_t c, int64_t r, int64_t sdim,
                                const float *src, float *dst);

/* uint8 NHWC images -> fp32 input, as eq-trainer's host staging:
 * v = (float)u * scale[ch] + shift[ch] (ch = index % c; scale/shift host
 * arrays of c <= 16 values, passed by value); with partner/lam (both set)
 * image i becomes lam[i] * v_i + (1 - lam[i]) * v_partner[i] (mixup).  A
 * partner outside [0, n) sets flag[3] = (image + 1) (one such image) and
 * that image is staged unblended. */
cudaError_t eq_cuk_u8_input(cudaStream_t s, int64_t n, int64_t per_image, int64_t c,
                            const uint8_t *src, const float *scale_host,
                            const float *shift_host, const int32_t *partner, const float *lam,
                            float *dst, int32_t *flag);

/* Mixed precision (prec.h; prec is eq_precision's value: 1 bf16, 2 fp16).
 * round: y[i] = eq_precision_round(prec, x[i]) bitwise (y may alias x).
 * to16/from16: float <-> the narrow type's 16-bit patterns (to16 rounds
 * as round does, so representable values convert losslessly).  The
 * weight layouts of the convolutions' narrow path: OIHW float -> KRSC
 * 16-bit and back (as eq_cuk_oihw_to_krsc / krsc_to_oihw). */
cudaError_t eq_cuk_round(cudaStream_t s, int prec, size_t n, const float *x, float *y);
cudaError_t eq_cuk_to16(cudaStream_t s, int prec, size_t n, const float *x, void *y);
cudaError_t eq_cuk_from16(cudaStream_t s, int prec, size_t n, const void *x, float *y);
cudaError_t eq_cuk_oihw_to_krsc16(cudaStream_t s, int prec, int64_t k, int64_t c, int64_t r,
                                  int64_t sdim, const float *src, void *dst);
cudaError_t eq_cuk_krsc16_to_oihw(cudaStream_t s, int prec, int64_t k, int64_t c, int64_t r,
                                  int64_t sdim, const void *src, float *dst);
/* Count the inf/NaN elements of x into a device long long inside scratch
 * (eq_cuk_nonfinite_scratch(n) bytes), *count set to its address: fixed
 * blocks, counts added in a fixed order (deterministic, no atomics). */
size_t eq_cuk_nonfinite_scratch(size_t n);
cudaError_t eq_cuk_nonfinite(cudaStream_t s, size_t n, const float *x, void *scratch,
                             long long **count);

#ifdef __cplusplus
}
#endif
#endif
