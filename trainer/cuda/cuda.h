/*
 * trainer/cuda/cuda.h -- the CUDA backend's public entry points (plain C; no
 * CUDA headers needed to include this).  Built only when configure found
 * the CUDA toolkit (EQ_HAVE_CUDA); trainer/backend_select.h is the
 * build-independent way to open it.
 *
 * The backend implements every member of struct eq_backend_i
 * (trainer/backend.h) on one CUDA device:
 *   - memory: cudaMalloc'd device memory; upload/download go through the
 *     compute stream (download waits for it); a workspace that grows to the
 *     high-water mark (cuDNN algorithm workspaces, reduction scratch);
 *   - convolutions: cuDNN 9 (legacy API), NHWC tensors and OIHW filters
 *     (PyTorch's layout, transposed once per call to KRSC in the workspace
 *     when cuDNN wants NHWC filters), algorithms chosen per shape on
 *     first use and cached: cudnnFind*Algorithm (timed runs on buffers
 *     cuDNN allocates itself), or in deterministic mode the
 *     cudnnGet*Algorithm_v7 heuristic order;
 *   - batch norm: own two-pass kernels with fixed-order reductions (no
 *     atomics), matching the CPU backend's formulas;
 *   - linear layers: cuBLAS SGEMM (pedantic fp32 math; TF32 only with
 *     eq_cuda_opts.tf32);
 *   - pooling, elementwise ops, loss, optimiser steps: own kernels;
 *   - the input pipeline (interface 6): upload_async is eq_cuda_prefetch
 *     after a wait for the compute stream's work so far, upload_wait is
 *     eq_cuda_prefetch_wait, stage_images is eq_cuda_stage_images.
 * Deterministic mode (eq_cuda_opts.deterministic) restricts cuDNN to
 * algorithms documented as deterministic (CUDNN_DETERMINISTIC), picks them
 * by a fixed preference order instead of timing, and uses cuBLAS's
 * default (non-atomic) reductions; our own kernels never use atomics.
 *
 * Thread safety: one backend object per thread at a time (backend.h).
 */
#ifndef EQ_TRAINER_CUDA_H
#define EQ_TRAINER_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "trainer/backend.h"

typedef struct eq_cuda_opts {
    int device;        /* CUDA device ordinal */
    int deterministic; /* 1: fixed algorithms, run-to-run identical results */
    int tf32;          /* 1: allow TF32 tensor cores in cuDNN/cuBLAS fp32 convolutions and
                        * GEMMs (faster, ~1e-3 relative error); 0: true fp32 */
} eq_cuda_opts;

/* Number of CUDA devices; 0 when cudaGetDeviceCount fails (no driver, no
 * device), with the CUDA error string copied to `why` (may be NULL). */
int eq_cuda_device_count(char *why, size_t why_len);

/* A CUDA backend on o->device.  Errors: EQ_ERR_UNSUPPORTED "no CUDA
 * device: <reason>" when there is none, EQ_ERR_INVALID for an ordinal out
 * of range, EQ_ERR_INTERNAL naming the failing CUDA/cuDNN/cuBLAS call.
 * Caller owns the result (eq_backend_destroy). */
eq_backend *eq_backend_cuda_new(const eq_cuda_opts *o, eq_err *err);

/* The backend's compute stream as a cudaStream_t (void * here), for code
 * that launches its own kernels on it (quantizers, NCCL).  NULL if `be` is
 * not a CUDA backend. */
void *eq_cuda_stream(eq_backend *be);

/* Tests only (not in the module's table): with on != 0, every bf16/fp16
 * convolution plan `be` makes from now on takes the fp32 fallback, as if
 * cuDNN had refused the 16-bit plan (conv.c), so a GPU whose cuDNN accepts
 * everything still runs that path.  Ignored for a non-CUDA backend. */
void eq_cuda_conv_force_fallback(eq_backend *be, int on);

/* Batch prefetch: copy `nbytes` of host memory into the device buffer
 * `dst` on the backend's copy stream, through one of two pinned staging
 * buffers (the host buffer may be reused as soon as this returns; it waits
 * only when both staging buffers are still in flight).  The compute stream
 * does not see the data until eq_cuda_prefetch_wait, which orders the
 * compute stream after every prefetch issued so far.  Use it to upload the
 * next batch while the current step computes. */
eq_status eq_cuda_prefetch(eq_backend *be, void *dst, const void *host_src, size_t nbytes,
                           eq_err *err);
eq_status eq_cuda_prefetch_wait(eq_backend *be, eq_err *err);

/* uint8 NHWC images (device `src`, n images of per_image bytes, c channels
 * innermost, c <= 16) to the fp32 network input `dst` exactly as
 * eq-trainer's host staging does: v = (float)u * scale[ch] + shift[ch]
 * with scale = 1/(255*std), shift = -mean/std (host arrays of c floats);
 * with partner/lambda (device, n each; both or neither) image i becomes
 * lambda[i]*v_i + (1 - lambda[i])*v_partner[i] (mixup).  Partners must be
 * in [0, n) (the trainer checks them on the host); one outside is not read
 * (that image is staged unblended) and the next download/synchronize
 * fails with EQ_ERR_INVALID naming the image. */
eq_status eq_cuda_stage_images(eq_backend *be, int64_t n, int64_t per_image, int64_t c,
                               const uint8_t *src, const float *scale, const float *shift,
                               const int32_t *partner, const float *lambda, float *dst,
                               eq_err *err);

#endif
