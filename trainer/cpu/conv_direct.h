/*
 * trainer/cpu/conv_direct.h -- direct NHWC convolution kernels of the CPU
 * backend for stride-1 layers up to 512 channels (and stride-2 ones up to
 * 64: ResNet-20's downsampling 3x3s), first written for thin
 * ones (CIFAR ResNet's 16/32/64-channel 3x3s), which im2col + SGEMM serves badly: there the im2col copy (R*S times the
 * input) and OpenBLAS's packing of thin matrices cost more than the GEMM's
 * arithmetic (and its single-threaded tiles reach ~65 GFLOP per CPU second
 * where these kernels reach 90-150).  Internal to the CPU backend (trainer/cpu/); conv.c calls
 * these when eq_cpu_conv_direct_ok() accepts a descriptor, the tests call
 * them directly to compare them with the im2col path.
 *
 * Forward: each task (a band of output rows of one image) copies the
 * input rows it reads, zero-padded, into its thread's scratch ([Hp][Wp][C]
 * layout), and every output pixel is computed as
 * sum over (r, s, c) of xpad[p+r][q+s][c] * w[k][c][r][s] by a register-
 * blocked micro-kernel: consecutive output pixels of the band (so blocks
 * run across row ends; the last block's missing pixels are computed and
 * dropped) times output channels: 12 pixels x 16 or
 * 32 channels in zmm accumulators with AVX-512, 6 x 16 in 12 ymm
 * accumulators with AVX2.  Sums of up to 576 terms (R*S*C: CIFAR ResNet's
 * 3x3s up to 64 channels) run as one FMA chain each; longer ones as chains
 * of at most 64 terms (groups of whole taps, or slices of one tap's
 * channels), each from zero, added in order to a running total kept in a
 * small stack buffer, so the error does not grow with C.  Backward data runs as that forward with the flipped,
 * transposed kernel (pad' = R-1-pad).
 *
 * Stride 2: the forward's padded copy is split into phase images (rows
 * and columns of one parity each), where tap (r, s) of a stride-2 output
 * is a stride-1 tap of phase (r % 2, s % 2), so the same micro-kernels run
 * with a table of tap offsets (chains still over r, s, c in order).  The
 * backward data runs one such convolution of the padded dy per phase of
 * dx (the taps r = r0 + 2m of that row parity, flipped), each writing
 * every other row and column of dx.  Backward filter accumulates, per
 * fixed slice of the batch's output rows, dw[r][s][c][k] += x * dy over the
 * slice's pixels in an 8 x 32 (AVX-512) or 6 x 16 (AVX2) register block of
 * input x output channels, reading x in place (every stride-th pixel;
 * taps in the padding are skipped), and adds the slices' partial sums in
 * slice order.  With AVX-512, 3-wide kernels with stride 1 and pad 1 in w
 * (ResNet's 3x3s) take a kernel row's three taps at once: x pixel iw meets
 * dy pixels iw+1, iw, iw-1, so each broadcast of x feeds three FMAs (8 x
 * 16 or 4 x 32 channels per tap; the same chains, the same bits).  The slices'
 * partials stay within 16 MiB (wider layers get fewer slices, with their
 * taps and channel blocks split over tasks instead).
 *
 * Reproducibility: every output element is a fixed sequence of FMA chains
 * and adds (forward: chains over r, s, c in order, blocked as above; filter:
 * pixels in order within a slice, then slices in order), the blocking and
 * slicing depend only on the shapes, so results are identical
 * for any thread count.  The AVX-512 or AVX2+FMA kernels run when the CPU
 * has them (checked once at run time); otherwise the generic kernels run
 * the same chains with fmaf(), giving the same bits, only slower.
 *
 * Thread safety: as the CPU backend (one caller per backend object; the
 * kernels use the backend's pool).
 */
#ifndef EQ_TRAINER_CPU_CONV_DIRECT_H
#define EQ_TRAINER_CPU_CONV_DIRECT_H

#include "trainer/cpu/cpu_internal.h"

/* Largest C and K the direct kernels take (wider layers go to im2col +
 * SGEMM): ResNet-18/50's 3x3s up to 512 channels, where bench/conv_bench
 * shows them beating im2col + OpenBLAS (doc/performance.md).  With one FMA
 * chain per output (R*S*C = 4608 terms at 512 channels) the forward's error
 * against float64 was ~4x im2col's and the full-size ResNet-18 parity test
 * (tests/check_model.c) failed; with the blocked chains (see "Forward"
 * above) it is at or below im2col's and the parity tests pass. */
#define EQ_CPU_DIRECT_MAX_C 512
#define EQ_CPU_DIRECT_MAX_K 512

/* Largest C and K of the strided (stride 2, kernels up to 3x3) layers
 * the direct kernels take: ResNet-20's two downsampling 3x3s (16->32,
 * 32->64).  With 512 channels and any kernel size the full-size ResNet-18
 * parity test (tests/check_model.c) failed: conv1's weight gradient
 * 5.8e-3 relative vs a tolerance of 2.5e-3 (the test's sensitivity to
 * rounding order, doc/performance.md); it failed the same with 64 as long
 * as the 7x7 stem (3->64, stride 2) ran direct, so ResNet-18's stem and its
 * stride-2 3x3s (64->128 and wider) stay on im2col + SGEMM. */
#define EQ_CPU_DIRECT_MAX_S2 64

/* 1 when the direct kernels handle `d` (initialised descriptor): one group,
 * stride 1 or 2 (stride 2: C, K <= EQ_CPU_DIRECT_MAX_S2, R, S <= 3), dilation 1,
 * pad_h <= R-1 and pad_w <= S-1, R*S <= 64, not 1x1 (those run as a plain
 * GEMM), C <= EQ_CPU_DIRECT_MAX_C, K <= ..._MAX_K. */
int eq_cpu_conv_direct_ok(const eq_conv2d_desc *d);

/* Kernel choice: AUTO uses the widest the CPU has (AVX-512, else
 * AVX2+FMA, else generic); AVX2 caps it at AVX2+FMA; GENERIC forces the
 * portable kernels.  All give the same bits (tests compare them). */
enum { EQ_CPU_DIRECT_AUTO = 0, EQ_CPU_DIRECT_GENERIC = 1, EQ_CPU_DIRECT_AVX2 = 2 };

/* The three ops as eq_backend_i's conv members (outputs overwritten), for a
 * descriptor that eq_cpu_conv_direct_ok() accepted (the backward filter
 * also takes a 1x1 with no padding and any stride, one group: conv.c runs
 * strided 1x1s' filter gradient here, see conv_1x1.h).  Scratch memory
 * comes from the backend's workspace: EQ_ERR_NOMEM naming the op if it
 * cannot grow. */
eq_status eq_cpu_conv_direct_fwd(eq_cpu *cpu, const eq_conv2d_desc *d, const float *x,
                                 const float *w, float *y, int kernels, eq_err *err);
eq_status eq_cpu_conv_direct_bwd_data(eq_cpu *cpu, const eq_conv2d_desc *d, const float *dy,
                                      const float *w, float *dx, int kernels, eq_err *err);
eq_status eq_cpu_conv_direct_bwd_filter(eq_cpu *cpu, const eq_conv2d_desc *d, const float *x,
                                        const float *dy, float *dw, int kernels, eq_err *err);

/* conv.c's im2col + SGEMM path for every descriptor (what the backend ran
 * before the direct kernels, and runs for the shapes they do not take):
 * the reference the direct kernels are tested against. */
eq_status eq_cpu_conv2d_gemm_fwd(eq_cpu *cpu, const eq_conv2d_desc *d, const float *x,
                                 const float *w, float *y, eq_err *err);
eq_status eq_cpu_conv2d_gemm_bwd_data(eq_cpu *cpu, const eq_conv2d_desc *d, const float *dy,
                                      const float *w, float *dx, eq_err *err);
eq_status eq_cpu_conv2d_gemm_bwd_filter(eq_cpu *cpu, const eq_conv2d_desc *d, const float *x,
                                        const float *dy, float *dw, eq_err *err);

#endif
