/*
 * trainer/prec.h -- mixed precision's element functions, the one
 * implementation of the rounding: trainer/backend.c's eq_precision_round
 * (which the CPU backend's round_to is tested against, bitwise) calls
 * eq_pr_round, and the CUDA kernels (kernels.cu: round_to, the conversions
 * of the convolutions' bf16/fp16 path) compile the same code for the device
 * (tests/check_cuda_select also runs the 16-bit conversions on the host).
 *
 * eq_pr_round is eq_precision_round (trainer/backend.c) itself: the
 * same integer arithmetic for bf16 and fp16 normals, the same float trick
 * for fp16 subnormals ((f + 0.5f) - 0.5f: 0.5f's ulp is 2^-24, half's
 * subnormal spacing, so the add rounds to even there; IEEE round to
 * nearest on both sides, nvcc's default -ftz=false/-prec-div irrelevant,
 * and a flush of an fp32 subnormal input to zero would give the right
 * answer too, 0).  Not __float2bfloat16_rn / __float2half_rn, whose NaN
 * payloads differ.
 *
 * eq_pr_bits16 gives the 16-bit pattern of round(x) in the narrow type
 * (bf16: the top half of the float; fp16: IEEE binary16), eq_pr_from16 the
 * float a pattern stands for; eq_pr_from16(p, eq_pr_bits16(p, x)) ==
 * eq_pr_round(p, x) bitwise for every x.  C and CUDA C++ alike; p is
 * eq_precision's value (1 bf16, 2 fp16; anything else: fp32, x itself).
 */
#ifndef EQ_TRAINER_PREC_H
#define EQ_TRAINER_PREC_H

#include <stdint.h>
#ifndef __CUDA_ARCH__
#include <string.h>
#endif

#ifdef __CUDACC__
#define EQ_PR_FN static __host__ __device__ __forceinline__
#else
#define EQ_PR_FN static inline
#endif

#define EQ_PR_BF16 1
#define EQ_PR_FP16 2

EQ_PR_FN uint32_t eq_pr_u32(float f)
{
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
#endif
}

EQ_PR_FN float eq_pr_f32(uint32_t u)
{
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
#endif
}

/* eq_precision_round(p, x), bitwise. */
EQ_PR_FN float eq_pr_round(int p, float x)
{
    uint32_t u = eq_pr_u32(x);
    if (p == EQ_PR_BF16) {
        if ((u & 0x7fffffffu) > 0x7f800000u) return eq_pr_f32((u | 0x00400000u) & 0xffff0000u);
        u += 0x7fffu + ((u >> 16) & 1u); /* ties to even; overflow carries into inf */
        return eq_pr_f32(u & 0xffff0000u);
    }
    if (p == EQ_PR_FP16) {
        uint32_t sign = u & 0x80000000u, a = u ^ sign;
        if (a > 0x7f800000u) return eq_pr_f32((u | 0x00400000u) & 0xffffe000u); /* NaN */
        if (a >= 0x477ff000u) return eq_pr_f32(sign | 0x7f800000u);           /* >= 65520 */
        if (a < 0x38800000u) { /* below 2^-14: multiples of 2^-24 */
            float f = eq_pr_f32(a);
            f = (f + 0.5f) - 0.5f;
            return eq_pr_f32(sign | eq_pr_u32(f));
        }
        a += 0xfffu + ((a >> 13) & 1u);
        return eq_pr_f32(sign | (a & 0xffffe000u));
    }
    return x;
}

/* The narrow type's bit pattern of eq_pr_round(p, x) (p bf16 or fp16). */
EQ_PR_FN uint16_t eq_pr_bits16(int p, float x)
{
    uint32_t u = eq_pr_u32(eq_pr_round(p, x));
    if (p == EQ_PR_BF16) return (uint16_t)(u >> 16);
    uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) /* inf, or NaN (its 10 payload bits, bit 9 set by the rounding) */
        return (uint16_t)(sign | 0x7c00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x38800000u) /* normal: rebias the exponent (127 - 15 = 112) */
        return (uint16_t)(sign | ((a >> 13) - (112u << 10)));
    /* subnormal or zero: m * 2^-24 with m < 1024, exact in float */
    return (uint16_t)(sign | (uint32_t)(eq_pr_f32(a) * 16777216.0f));
}

/* The float a bf16/fp16 bit pattern stands for (exact). */
EQ_PR_FN float eq_pr_from16(int p, uint16_t h)
{
    uint32_t b = h;
    if (p == EQ_PR_BF16) return eq_pr_f32(b << 16);
    uint32_t sign = (b & 0x8000u) << 16, e = (b >> 10) & 0x1fu, m = b & 0x3ffu;
    if (e == 0x1fu) return eq_pr_f32(sign | 0x7f800000u | (m << 13));
    if (e != 0) return eq_pr_f32(sign | ((b & 0x7fffu) + (112u << 10)) << 13);
    float f = (float)m * (1.0f / 16777216.0f); /* exact: m < 2^10 */
    return eq_pr_f32(sign | eq_pr_u32(f));
}

#endif
