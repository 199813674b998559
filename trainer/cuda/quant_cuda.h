/*
 * trainer/cuda/quant_cuda.h -- quant/'s quantizers on CUDA device memory.
 *
 * An eq_cuda_quant runs an eq_quant (quant/quant.h: options, parameters,
 * buffers and counters stay in that object, on the host, where checkpoints
 * and the policy find them) on tensors in the CUDA backend's memory:
 *
 *   eq_cuda_quant_forward(cq, xd, x, y, train)   y = Q(x), device pointers
 *   eq_cuda_quant_backward(cq, x, gy, gx)        gx and the parameters'
 *                                                gradients (into the
 *                                                eq_quant's grad arrays)
 *
 * with the same results as eq_quant_forward/backward on the host copies
 * (element values identical except where a float division lands on a
 * rounding boundary differently; parameter gradients to double rounding).
 *
 * Device kernels cover the hot configurations: lsq (grad_type none), lsq-step
 * (after its step sizes are initialised), pact, and dorefa's activation path
 * (fm/ot), without var-mean normalisation or a gamma scale.  Every other
 * configuration -- the remaining methods (bin, nonuniform, xnor, lqnet),
 * dorefa weights, gamma, weight var-mean, LSQ's STE-scale clamp, lsq-step's
 * data-driven initialisation and warm-up iterations -- runs through the
 * host implementation on copies (download, eq_quant_*, upload): correct but
 * slow, and eq_cuda_quant_on_device() tells which path the last forward
 * took so a caller can see it.  Parameter values are read from the eq_quant
 * at every forward, and their gradients are written back to it by every
 * backward (their sums copied to pinned memory; eq_cuda_quant_backward
 * waits for that copy, the backend's quant_backward member leaves it for
 * quant_grads_wait: eq_cuda_quant_grads_wait, one wait per backward).
 *
 * Thread safety: as the backend (one thread at a time).
 */
#ifndef EQ_TRAINER_CUDA_QUANT_H
#define EQ_TRAINER_CUDA_QUANT_H

#include "core/status.h"
#include "core/tensor.h"
#include "quant/quant.h"
#include "trainer/backend.h"

typedef struct eq_cuda_quant eq_cuda_quant;

/* Wrap `q` (not owned; it must outlive the wrapper) for backend `be`
 * (a CUDA backend, else EQ_ERR_INVALID).  Caller owns the result. */
eq_cuda_quant *eq_cuda_quant_new(eq_backend *be, eq_quant *q, eq_err *err);
void eq_cuda_quant_destroy(eq_cuda_quant **cq_p);

/* As eq_quant_forward with device x, y (contiguous F32, described by xd). */
eq_status eq_cuda_quant_forward(eq_cuda_quant *cq, const eq_tensor_desc *xd, const float *x,
                                float *y, int train, eq_err *err);
/* As eq_quant_backward with device x, gy, gx (gy and gx may alias). */
eq_status eq_cuda_quant_backward(eq_cuda_quant *cq, const float *x, const float *gy, float *gx,
                                 eq_err *err);
/* 1 when the last forward ran on the device kernels, 0 on the host path. */
int eq_cuda_quant_on_device(const eq_cuda_quant *cq);

#endif
