/*
 * trainer/cuda/quant_kernels.h -- launchers of the quantizer kernels
 * (quant.cu), used by quant_cuda.c.  Plain C, no eq headers.  Element i
 * belongs to group ((i / inner) % period) / block (core/tensor.h's
 * eq_group_desc); n must be a multiple of inner*period.  Backward kernels
 * write the per-element terms of the parameter gradient into t (float, as
 * quant/'s CPU code forms them), and eq_cuq_group_sum adds them per group:
 * partial[k * eq_cuq_slices(g) + s], slices summed in order by the caller.
 */
#ifndef EQ_TRAINER_CUDA_QUANT_KERNELS_H
#define EQ_TRAINER_CUDA_QUANT_KERNELS_H

#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct eq_cuq_geom {
    int64_t n, inner, period, block;
} eq_cuq_geom;

int64_t eq_cuq_slices(const eq_cuq_geom *g);
cudaError_t eq_cuq_group_sum(cudaStream_t s, const eq_cuq_geom *g, const float *t,
                             double *partial);

/* lsq: cl[k] = GradientScale(|clip_val[k]|, fe); n = level_num - 1. */
cudaError_t eq_cuq_lsq_fwd(cudaStream_t s, const eq_cuq_geom *g, int half, float n,
                           const float *cl, const float *x, float *y);
cudaError_t eq_cuq_lsq_bwd(cudaStream_t s, const eq_cuq_geom *g, int half, float n,
                           const float *cl, const float *x, const float *gy, float *gx, float *t);
/* lsq-step: st[k] the step sizes. */
cudaError_t eq_cuq_step_fwd(cudaStream_t s, const eq_cuq_geom *g, float qn, float qp,
                            const float *st, const float *x, float *y);
cudaError_t eq_cuq_step_bwd(cudaStream_t s, const eq_cuq_geom *g, float qn, float qp,
                            const float *st, const float *x, const float *gy, float *gx, float *t);
/* pact: a = alpha, sc = n / a. */
cudaError_t eq_cuq_pact_fwd(cudaStream_t s, int64_t n, float a, float sc, const float *x, float *y);
cudaError_t eq_cuq_pact_bwd(cudaStream_t s, int64_t n, float a, const float *x, const float *gy,
                            float *gx, float *t);
/* dorefa activations: c = boundary, sc = n / c. */
cudaError_t eq_cuq_dorefa_fm_fwd(cudaStream_t s, int64_t n, float c, float sc, const float *x,
                                 float *y);
cudaError_t eq_cuq_dorefa_fm_bwd(cudaStream_t s, int64_t n, float c, const float *x,
                                 const float *gy, float *gx);

#ifdef __cplusplus
}
#endif
#endif
