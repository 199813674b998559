/*
 * trainer/cpu/conv_1x1.h -- strided 1x1 convolutions of the CPU backend
 * (ResNet's downsampling shortcuts), NHWC, without im2col / col2im.
 *
 * A 1x1 convolution with stride and no padding is a GEMM over every
 * stride-th input pixel.  im2col + SGEMM copied those pixels out and ran
 * OpenBLAS on thin matrices (ResNet-20's 16->32 and 32->64 shortcuts: ~15
 * GFLOP per CPU second); here the forward reads them in place and the
 * backward data writes them in place (the other pixels of dx are zeroed),
 * each output element one FMA chain over the input channels (forward) or
 * output channels (backward data) in order, from zero, in a register block
 * of up to 8 pixels x 32 channels (AVX-512).  Tasks are fixed runs of whole
 * output rows, so results do not depend on the thread count; the generic
 * fmaf() kernel runs the same chains (same bits).  The backward filter
 * runs conv_direct_bf.c's direct kernel (which reads x every stride-th
 * pixel in place).  Internal to the CPU backend; conv.c dispatches the
 * forward and backward data here.  This forward's chains round
 * differently from OpenBLAS's in about a quarter of the outputs (an ulp);
 * check_model's 2-bit LSQ ResNet-20 parity test tells the quantizer levels
 * that this flips from a bug (layer by layer, one step at a time).
 */
#ifndef EQ_TRAINER_CPU_CONV_1X1_H
#define EQ_TRAINER_CPU_CONV_1X1_H

#include "trainer/cpu/cpu_internal.h"

/* Widest C and K taken (wider shortcuts, ResNet-18/50's, stay on im2col +
 * SGEMM, where OpenBLAS does well): ResNet-20's 16->32 and 32->64. */
#define EQ_CPU_1X1_MAX_CK 64

/* 1 when these kernels handle `d` (initialised descriptor): 1x1, no
 * padding, one group, a stride above 1 on some axis, C and K <=
 * EQ_CPU_1X1_MAX_CK, and a CPU with AVX-512 (elsewhere im2col + SGEMM is
 * faster than the generic kernel). */
int eq_cpu_conv_1x1_ok(const eq_conv2d_desc *d);

/* Forward and backward data (outputs overwritten) for a descriptor that is
 * 1x1 with no padding and one group; kernels: EQ_CPU_DIRECT_AUTO or
 * EQ_CPU_DIRECT_GENERIC (conv_direct.h; AVX2 runs the generic kernel). */
eq_status eq_cpu_conv_1x1_fwd(eq_cpu *cpu, const eq_conv2d_desc *d, const float *x,
                              const float *w, float *y, int kernels, eq_err *err);
eq_status eq_cpu_conv_1x1_bwd_data(eq_cpu *cpu, const eq_conv2d_desc *d, const float *dy,
                                   const float *w, float *dx, int kernels, eq_err *err);

#endif
