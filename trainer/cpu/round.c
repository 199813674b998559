/*
 * trainer/cpu/round.c -- the CPU backend's mixed-precision members:
 * round_to (y = eq_precision_round(prec, x), bitwise) and nonfinite (count
 * of inf/NaN elements).
 *
 * Both run in integer arithmetic on vectors (GCC/clang vector extensions:
 * 16 lanes with AVX-512F, 8 with AVX2, else 4: SSE2 on x86-64, NEON on
 * arm64) with the scalar reference eq_precision_round for the tail, in
 * chunks over the backend's pool.  No
 * hardware conversion instruction: AVX512_BF16's vcvtneps2bf16 flushes
 * denormal inputs to zero (torch's .to(bfloat16) does not), and F16C's
 * vcvtps2ph would need a second path to keep NaN payloads the way
 * eq_precision_round does; the integer forms are exact by construction
 * and the passes are memory-bound anyway.
 *
 * bf16: u + 0x7fff + ((u >> 16) & 1), keep the top 16 bits (ties to even;
 * a carry out of the mantissa moves to the next binade or to inf); NaN:
 * quiet bit set, top 7 payload bits kept.
 * fp16 (|x| = a as bits): NaN as bf16 but 10 payload bits; a >= 0x477ff000
 * (65520): inf; a < 2^-14 (half subnormals): (|x| + 0.5f) - 0.5f, whose
 * add rounds to a multiple of 2^-24 with ties to even (0.5f's ulp is
 * 2^-24) and subtracts exactly; else a + 0xfff + ((a >> 13) & 1), keep the
 * top 19 bits.  The lanes compute every case and select, so there are no
 * branches; the float add is exact IEEE single arithmetic in every lane
 * (no fast-math in this file).
 */
#include "trainer/cpu/cpu_internal.h"

#include <math.h>
#include <string.h>

#define S_CHUNK ((size_t)1 << 14)
#define S_MAXCHUNKS 256 /* nonfinite's per-chunk counts live on the stack */

#if defined(__x86_64__) || defined(__i386__)
#define S_X86 1
#define S_AVX2 __attribute__((target("avx2")))
#define S_AVX512 __attribute__((target("avx512f")))
#else
#define S_X86 0
#endif

typedef struct s_round {
    eq_precision prec;
    int isa; /* 0 generic (4 lanes), 1 AVX2 (8), 2 AVX-512F (16) */
    size_t n, chunk;
    const float *x;
    float *y;
    int64_t count[S_MAXCHUNKS];
} s_round;

/* The kernels for VL lanes (GCC/clang vector extensions; a scalar operand
 * is broadcast).  Comparisons give -1 (all ones) where true; the lanes
 * compared are non-negative int32, so signed compares are the unsigned
 * ones meant.  s_round<SUF> handles [k, hi) in whole vectors and returns
 * where it stopped; s_count<SUF> returns the non-finite count of whole
 * vectors and sets *end. */
#define S_KERNELS(SUF, VL, TGT)                                                                  \
    typedef int32_t s_vi##SUF __attribute__((vector_size(4 * (VL))));                            \
    typedef uint32_t s_vu##SUF __attribute__((vector_size(4 * (VL))));                           \
    typedef float s_vf##SUF __attribute__((vector_size(4 * (VL))));                              \
    TGT static size_t s_round##SUF(eq_precision prec, const float *x, float *y, size_t k,        \
                                   size_t hi)                                                    \
    {                                                                                            \
        if (prec == EQ_PREC_BF16) {                                                              \
            for (; k + (VL) <= hi; k += (VL)) {                                                  \
                s_vi##SUF u;                                                                     \
                memcpy(&u, x + k, sizeof u);                                                     \
                s_vi##SUF nan = (u & 0x7fffffff) > 0x7f800000;                                   \
                /* wraps modulo 2^32 as the scalar uint32_t form does */                         \
                s_vi##SUF r = (s_vi##SUF)((s_vu##SUF)u + 0x7fffu + (((s_vu##SUF)u >> 16) & 1u)); \
                r = ((nan & (u | 0x00400000)) | (~nan & r)) & (int32_t)0xffff0000u;              \
                memcpy(y + k, &r, sizeof r);                                                     \
            }                                                                                    \
        } else {                                                                                 \
            for (; k + (VL) <= hi; k += (VL)) {                                                  \
                s_vi##SUF u;                                                                     \
                memcpy(&u, x + k, sizeof u);                                                     \
                s_vi##SUF a = u & 0x7fffffff, sign = u & (int32_t)0x80000000u;                   \
                s_vi##SUF nan = a > 0x7f800000, ovf = a >= 0x477ff000, sub = a < 0x38800000;     \
                /* unsigned: a NaN's a + 0xfff overflows int32 (its lane is not selected) */     \
                s_vi##SUF norm = (s_vi##SUF)(((s_vu##SUF)a + 0xfffu + (((s_vu##SUF)a >> 13) & 1u)) & \
                                             0xffffe000u);                                       \
                s_vi##SUF subn = (s_vi##SUF)(((s_vf##SUF)a + 0.5f) - 0.5f);                      \
                s_vi##SUF r = (ovf & 0x7f800000) | (~ovf & norm);                                \
                r = sign | ((sub & subn) | (~sub & r));                                          \
                r = (nan & ((u | 0x00400000) & (int32_t)0xffffe000u)) | (~nan & r);              \
                memcpy(y + k, &r, sizeof r);                                                     \
            }                                                                                    \
        }                                                                                        \
        return k;                                                                                \
    }                                                                                            \
    TGT static int64_t s_count##SUF(const float *x, size_t k, size_t hi, size_t *end)            \
    {                                                                                            \
        int64_t c = 0;                                                                           \
        while (k + (VL) <= hi) {                                                                 \
            s_vi##SUF acc = {0};                                                                 \
            /* at most 2^16 vectors per partial sum: no lane can wrap */                         \
            size_t stop = hi - k > ((size_t)(VL) << 16) ? k + ((size_t)(VL) << 16) : hi;         \
            for (; k + (VL) <= stop; k += (VL)) {                                                \
                s_vi##SUF u;                                                                     \
                memcpy(&u, x + k, sizeof u);                                                     \
                acc -= (u & 0x7fffffff) >= 0x7f800000; /* -1 per non-finite lane */              \
            }                                                                                    \
            for (int l = 0; l < (VL); l++) c += acc[l];                                          \
        }                                                                                        \
        *end = k;                                                                                \
        return c;                                                                                \
    }

S_KERNELS(4, 4, )
#if S_X86
S_KERNELS(8, 8, S_AVX2)
S_KERNELS(16, 16, S_AVX512)
#endif

static int s_isa_cap = -1; /* eq_cpu_round_isa */

static int s_isa(void)
{
#if S_X86
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx512f") ? 2 : __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    return s_isa_cap >= 0 && s_isa_cap < have ? s_isa_cap : have;
#else
    return 0;
#endif
}

void eq_cpu_round_isa(int max)
{
    s_isa_cap = max;
}

static void s_round_chunk(void *vctx, size_t i)
{
    s_round *e = vctx;
    size_t lo = i * e->chunk, hi = lo + e->chunk < e->n ? lo + e->chunk : e->n, k = lo;
#if S_X86
    if (e->isa == 2) k = s_round16(e->prec, e->x, e->y, k, hi);
    else if (e->isa == 1) k = s_round8(e->prec, e->x, e->y, k, hi);
#endif
    k = s_round4(e->prec, e->x, e->y, k, hi);
    for (; k < hi; k++) e->y[k] = eq_precision_round(e->prec, e->x[k]);
}

static void s_nonfinite_chunk(void *vctx, size_t i)
{
    s_round *e = vctx;
    size_t lo = i * e->chunk, hi = lo + e->chunk < e->n ? lo + e->chunk : e->n, k = lo;
    int64_t c = 0;
#if S_X86
    if (e->isa == 2) c += s_count16(e->x, k, hi, &k);
    else if (e->isa == 1) c += s_count8(e->x, k, hi, &k);
#endif
    c += s_count4(e->x, k, hi, &k);
    for (; k < hi; k++) c += !isfinite(e->x[k]);
    e->count[i] = c;
}

/* Chunks of at least S_CHUNK elements, at most S_MAXCHUNKS of them. */
static size_t s_plan(s_round *e)
{
    size_t per = (e->n + S_MAXCHUNKS - 1) / S_MAXCHUNKS;
    e->chunk = per > S_CHUNK ? per : S_CHUNK;
    return (e->n + e->chunk - 1) / e->chunk;
}

eq_status eq_cpu_round_to(void *ctx, eq_precision prec, size_t n, const float *x, float *y,
                          eq_err *err)
{
    (void)err;
    if (prec == EQ_PREC_FP32) {
        if (x != y) memmove(y, x, n * sizeof *y);
        return EQ_OK;
    }
    s_round e = {.prec = prec, .isa = s_isa(), .n = n, .x = x, .y = y};
    size_t nc = s_plan(&e);
    if (nc == 1) s_round_chunk(&e, 0);
    else eq_cpu_for(ctx, nc, s_round_chunk, &e);
    return EQ_OK;
}

eq_status eq_cpu_nonfinite(void *ctx, size_t n, const float *x, int64_t *count, eq_err *err)
{
    (void)err;
    s_round e = {.isa = s_isa(), .n = n, .x = x};
    size_t nc = s_plan(&e);
    if (nc == 1) s_nonfinite_chunk(&e, 0);
    else eq_cpu_for(ctx, nc, s_nonfinite_chunk, &e);
    int64_t c = 0;
    for (size_t i = 0; i < nc; i++) c += e.count[i];
    *count = c;
    return EQ_OK;
}
