/*
 * trainer/cpu/conv_direct_impl.h -- what the direct convolution's two
 * files share (conv_direct.c: forward and backward data; conv_direct_bf.c:
 * backward filter): kernel targets, blocking constants, small helpers and
 * the choice of instruction set.  Internal to those two files.
 */
#ifndef EQ_TRAINER_CPU_CONV_DIRECT_IMPL_H
#define EQ_TRAINER_CPU_CONV_DIRECT_IMPL_H

#include "trainer/cpu/conv_direct.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define S_X86 1
#include <immintrin.h>
#define S_TGT __attribute__((target("avx2,fma")))
#define S_TGT512 __attribute__((target("avx512f,fma")))
#define S_INLINE static inline __attribute__((always_inline))
#else
#define S_X86 0
#endif

#define S_KB 16                        /* output channels per register block */
#define S_MAXTAP 64                    /* taps of one job (R*S of a direct conv) */
#define S_MAXJOB 4                     /* jobs of one run (stride-2 backward data: 4 phases) */
#define S_NQ 6                         /* forward: pixels per AVX2 register block */
#define S_NQ512 12                     /* forward: pixels per AVX-512 register block */
#define S_FWD_PIX 256                  /* forward: padded pixels per task (at least a row) */
#define S_CHAIN1 576                   /* forward: most terms summed as one FMA chain */
#define S_CHAIN 64                     /* forward: terms per chain in longer sums */

static inline int64_t s_min(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static inline size_t s_round16(size_t n)
{
    return (n + 15) / 16 * 16;
}

/* Which kernels run: 0 generic, 1 AVX2+FMA, 2 AVX-512: the widest the CPU
 * has that `kernels` allows. */
static inline int s_isa(int kernels)
{
#if S_X86
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        have = avx2 && __builtin_cpu_supports("avx512f") ? 2 : avx2;
    }
    if (kernels == EQ_CPU_DIRECT_GENERIC) return 0;
    if (kernels == EQ_CPU_DIRECT_AVX2) return have < 1 ? have : 1;
    return have;
#else
    (void)kernels;
    return 0;
#endif
}

#if S_X86
/* Lane masks of n channels over two 16-lane vectors (*m0: channels 0..15,
 * *m1: 16..31; all lanes past n off). */
S_TGT512 S_INLINE void s_mask2(int64_t n, __mmask16 *m0, __mmask16 *m1)
{
    *m0 = n >= S_KB ? (__mmask16)0xffff : n > 0 ? (__mmask16)((1u << n) - 1) : (__mmask16)0;
    *m1 = n >= 2 * S_KB ? (__mmask16)0xffff
          : n > S_KB    ? (__mmask16)((1u << (n - S_KB)) - 1)
                        : (__mmask16)0;
}
#endif

#endif
