/*
 * trainer/cuda/cuda_internal.h -- shared by the CUDA backend's files only.
 *
 * Host code (*.c) is C, compiled by gcc against the CUDA runtime, cuBLAS,
 * cuDNN and NCCL C APIs; kernels live in a few .cu files (kernels.cu,
 * quant.cu) behind the extern "C" launchers declared in kernels.h.  The
 * wrappers of trainer/backend.c have validated every argument, so members
 * here only translate them into library calls and kernel launches.
 */
#ifndef EQ_TRAINER_CUDA_INTERNAL_H
#define EQ_TRAINER_CUDA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include "core/status.h"
#include "trainer/backend.h"
#include "trainer/cuda/cuda.h"
#include "trainer/cuda/kernels.h"

/* One cached convolution plan: descriptors and the algorithm chosen for
 * one (direction, shape) pair. */
typedef struct eq_cuda_conv_plan {
    int dir; /* 0 fwd, 1 bwd data, 2 bwd filter */
    eq_conv2d_desc d;
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    int algo;        /* cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t */
    size_t ws_bytes; /* that algorithm's workspace */
    /* d.prec bf16/fp16: the descriptors are of that type (tensor cores,
     * fp32 accumulation) unless cuDNN refused them for this direction and
     * shape: then fp32 (fallback set), the result rounded to d.prec. */
    int fallback;
} eq_cuda_conv_plan;

#define EQ_CUDA_PREFETCH_SLOTS 2

struct eq_cuda_quant;  /* quant_cuda.h */
struct eq_quant;       /* quant/quant.h */

/* The backend's quantizer state: one eq_cuda_quant per eq_quant that went
 * through quant_forward (quant_cuda.c). */
typedef struct eq_cuda_qslot {
    struct eq_quant *q;
    struct eq_cuda_quant *cq;
} eq_cuda_qslot;

typedef struct eq_cuda {
    eq_backend *self;         /* the backend object whose context this is */
    int device;
    int deterministic;
    int tf32;
    int conv_no16;            /* eq_cuda_conv_force_fallback (tests) */
    cudaStream_t stream;      /* compute */
    cudaStream_t copy_stream; /* H2D of the next batch (eq_cuda_prefetch) */
    cublasHandle_t blas;
    cudnnHandle_t dnn;
    void *ws;                 /* workspace (device), ws_bytes long */
    size_t ws_bytes;
    eq_cuda_conv_plan *plans;
    size_t nplans, plans_cap;
    /* Error flags written by kernels (pinned, mapped, 8-byte aligned):
     * [0] a bad label's row + 1 (some bad row, not necessarily the first)
     * of a loss kernel and [1] that row's label, written together as one
     * 64-bit store; [2] a bad argmax index + 1 of maxpool_bwd; [3] an
     * image + 1 whose mixup partner is outside [0, n) (stage_images).
     * Checked after every stream wait. */
    int32_t *hflag;
    int32_t *dflag;
    /* prefetch: pinned staging slots and the events of their copies */
    void *pin[EQ_CUDA_PREFETCH_SLOTS];
    size_t pin_bytes[EQ_CUDA_PREFETCH_SLOTS];
    cudaEvent_t pin_done[EQ_CUDA_PREFETCH_SLOTS];
    int pin_used[EQ_CUDA_PREFETCH_SLOTS];
    int pin_next;
    cudaEvent_t last_prefetch;
    cudaEvent_t compute_mark; /* upload_async: the compute stream's work so far, for the copy stream */
    int have_prefetch;
    /* quantizers (quant_cuda.c) */
    eq_cuda_qslot *quants;
    size_t nquants, quants_cap;
} eq_cuda;

/* Error helpers: set err naming the call and op, return the status. */
eq_status eq_cuda_fail(eq_err *err, const char *op, const char *call, cudaError_t e);
eq_status eq_cudnn_fail(eq_err *err, const char *op, const char *call, cudnnStatus_t s);
eq_status eq_cublas_fail(eq_err *err, const char *op, const char *call, cublasStatus_t s);

#define EQ_CU(op, call)                                                    \
    do {                                                                   \
        cudaError_t e_ = (call);                                           \
        if (e_ != cudaSuccess) return eq_cuda_fail(err, (op), #call, e_); \
    } while (0)
#define EQ_DNN(op, call)                                                          \
    do {                                                                          \
        cudnnStatus_t s_ = (call);                                                \
        if (s_ != CUDNN_STATUS_SUCCESS) return eq_cudnn_fail(err, (op), #call, s_); \
    } while (0)
#define EQ_BLAS(op, call)                                                          \
    do {                                                                           \
        cublasStatus_t s_ = (call);                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS) return eq_cublas_fail(err, (op), #call, s_); \
    } while (0)
/* A kernel launcher's cudaError_t (launch errors surface here; errors
 * inside the kernel at the next synchronisation). */
#define EQ_K(op, launch) EQ_CU(op, launch)

/* Workspace of at least `nbytes` (device); grows with cudaFree/cudaMalloc
 * (cudaFree waits for the device, so queued users of the old block have
 * finished).  NULL with err set on failure. */
void *eq_cuda_workspace(eq_cuda *cu, size_t nbytes, const char *op, eq_err *err);

/* Check the kernel error flags (after the stream was waited for). */
eq_status eq_cuda_check_flags(eq_cuda *cu, const char *op, eq_err *err);

/* conv.c */
eq_status eq_cuda_conv2d_fwd(void *ctx, const eq_conv2d_desc *d, const float *x, const float *w,
                             float *y, eq_err *err);
eq_status eq_cuda_conv2d_bwd_data(void *ctx, const eq_conv2d_desc *d, const float *dy,
                                  const float *w, float *dx, eq_err *err);
eq_status eq_cuda_conv2d_bwd_filter(void *ctx, const eq_conv2d_desc *d, const float *x,
                                    const float *dy, float *dw, eq_err *err);
void eq_cuda_conv_plans_free(eq_cuda *cu);

/* ops.c: every other op member, launchers over kernels.h */
eq_status eq_cuda_bn_fwd_train(void *ctx, const eq_bn_desc *d, const float *x, const float *gamma,
                               const float *beta, float *running_mean, float *running_var,
                               float *y, float *save_mean, float *save_invstd, eq_err *err);
eq_status eq_cuda_bn_fwd_eval(void *ctx, const eq_bn_desc *d, const float *x, const float *gamma,
                              const float *beta, const float *running_mean,
                              const float *running_var, float *y, eq_err *err);
eq_status eq_cuda_bn_bwd(void *ctx, const eq_bn_desc *d, const float *x, const float *dy,
                         const float *gamma, const float *save_mean, const float *save_invstd,
                         float *dx, float *dgamma, float *dbeta, eq_err *err);
eq_status eq_cuda_bn_relu_fwd_train(void *ctx, const eq_bn_desc *d, const float *x,
                                    const float *z, const float *gamma, const float *beta,
                                    float *running_mean, float *running_var, float *y,
                                    float *save_mean, float *save_invstd, eq_err *err);
eq_status eq_cuda_bn_relu_fwd_eval(void *ctx, const eq_bn_desc *d, const float *x,
                                   const float *z, const float *gamma, const float *beta,
                                   const float *running_mean, const float *running_var, float *y,
                                   eq_err *err);
eq_status eq_cuda_bn_relu_bwd(void *ctx, const eq_bn_desc *d, const float *x, const float *y,
                              const float *dy, const float *dy2, const float *gamma,
                              const float *save_mean, const float *save_invstd, float *dx,
                              float *dz, float *dgamma, float *dbeta, eq_err *err);
eq_status eq_cuda_relu_fwd(void *ctx, size_t n, const float *x, float *y, eq_err *err);
eq_status eq_cuda_relu_bwd(void *ctx, size_t n, const float *y, const float *dy, float *dx,
                           eq_err *err);
eq_status eq_cuda_clamp_fwd(void *ctx, size_t n, float lo, float hi, const float *x, float *y,
                            eq_err *err);
eq_status eq_cuda_clamp_bwd(void *ctx, size_t n, float lo, float hi, const float *y,
                            const float *dy, float *dx, eq_err *err);
eq_status eq_cuda_scalar_affine_fwd(void *ctx, size_t n, const float *x, const float *scale,
                                    const float *bias, float *y, eq_err *err);
eq_status eq_cuda_scalar_affine_bwd(void *ctx, size_t n, const float *x, const float *dy,
                                    const float *scale, float *dx, float *dscale, float *dbias,
                                    eq_err *err);
eq_status eq_cuda_prelu_fwd(void *ctx, int64_t m, int64_t c, int64_t nslope, const float *x,
                            const float *slope, float *y, eq_err *err);
eq_status eq_cuda_prelu_bwd(void *ctx, int64_t m, int64_t c, int64_t nslope, const float *x,
                            const float *slope, const float *dy, float *dx, float *dslope,
                            eq_err *err);
eq_status eq_cuda_add(void *ctx, size_t n, const float *a, const float *b, float *y, eq_err *err);
eq_status eq_cuda_maxpool_fwd(void *ctx, const eq_pool2d_desc *d, const float *x, float *y,
                              int32_t *argmax, eq_err *err);
eq_status eq_cuda_maxpool_bwd(void *ctx, const eq_pool2d_desc *d, const int32_t *argmax,
                              const float *dy, float *dx, eq_err *err);
eq_status eq_cuda_avgpool_fwd(void *ctx, const eq_pool2d_desc *d, const float *x, float *y,
                              eq_err *err);
eq_status eq_cuda_avgpool_bwd(void *ctx, const eq_pool2d_desc *d, const float *dy, float *dx,
                              eq_err *err);
eq_status eq_cuda_gap_fwd(void *ctx, int64_t n, int64_t hw, int64_t c, const float *x, float *y,
                          eq_err *err);
eq_status eq_cuda_gap_bwd(void *ctx, int64_t n, int64_t hw, int64_t c, const float *dy,
                          float *dx, eq_err *err);
eq_status eq_cuda_linear_fwd(void *ctx, int64_t n, int64_t in, int64_t out, const float *x,
                             const float *w, const float *b, float *y, eq_err *err);
eq_status eq_cuda_linear_bwd_data(void *ctx, int64_t n, int64_t in, int64_t out,
                                  const float *dy, const float *w, float *dx, eq_err *err);
eq_status eq_cuda_linear_bwd_weight(void *ctx, int64_t n, int64_t in, int64_t out,
                                    const float *x, const float *dy, float *dw, float *db,
                                    eq_err *err);
eq_status eq_cuda_xent_fwd(void *ctx, const eq_xent_desc *d, const float *logits,
                           const int32_t *labels_a, const int32_t *labels_b, const float *lambda,
                           float *loss, eq_err *err);
eq_status eq_cuda_xent_bwd(void *ctx, const eq_xent_desc *d, const float *logits,
                           const int32_t *labels_a, const int32_t *labels_b, const float *lambda,
                           float dloss, float *dlogits, eq_err *err);
eq_status eq_cuda_sgd_step(void *ctx, size_t n, const eq_sgd_params *hp, float *param,
                           const float *grad, float *buf, eq_err *err);
eq_status eq_cuda_adam_step(void *ctx, size_t n, const eq_adam_params *hp, float *param,
                            const float *grad, float *mu, float *nu, eq_err *err);
eq_status eq_cuda_round_to(void *ctx, eq_precision prec, size_t n, const float *x, float *y,
                           eq_err *err);
eq_status eq_cuda_nonfinite(void *ctx, size_t n, const float *x, int64_t *count, eq_err *err);

/* quant_cuda.c: the quant_* members over eq_cuda_quant, and freeing every
 * quantizer's state with the backend. */
eq_status eq_cuda_quant_fwd(void *ctx, struct eq_quant *q, const eq_tensor_desc *xd,
                            const float *x, float *y, int train, eq_err *err);
eq_status eq_cuda_quant_bwd(void *ctx, struct eq_quant *q, const float *x, const float *gy,
                            float *gx, eq_err *err);
void eq_cuda_quant_release(void *ctx, struct eq_quant *q);
/* quant_grads_wait (backend.h, interface 7): the pending quantizer
 * backwards' parameter gradients to their eq_quant (one wait). */
eq_status eq_cuda_quant_grads_wait(void *ctx, eq_err *err);
void eq_cuda_quants_free(eq_cuda *cu);

extern const struct eq_backend_i eq_cuda_iface;

#endif
