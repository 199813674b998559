/*
 * trainer/cpu/round.c -- the CPU backend's mixed-precision members:
 * round_to (y = eq_precision_round(prec, x), bitwise) and nonfinite (count
 * of inf/NaN elements).
 *
 * Both run in integer arithmetic on 4-lane vectors (GCC/clang vector
 * extensions: SSE2 on x86-64, NEON on arm64) with the scalar reference
 * eq_precision_round for the tail, in chunks over the backend's pool.  No
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

typedef int32_t s_v4i __attribute__((vector_size(16)));
typedef float s_v4f __attribute__((vector_size(16)));

typedef struct s_round {
    eq_precision prec;
    size_t n, chunk;
    const float *x;
    float *y;
    int64_t count[S_MAXCHUNKS];
} s_round;

static inline s_v4i s_ld(const float *p)
{
    s_v4i v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void s_st(float *p, s_v4i v)
{
    memcpy(p, &v, sizeof v);
}

/* Comparisons of non-negative int32 lanes are the unsigned ones we mean;
 * a mask is all ones (-1) where true. */
static inline s_v4i s_sel(s_v4i m, s_v4i a, s_v4i b)
{
    return (m & a) | (~m & b);
}

static inline s_v4i s_bf16(s_v4i u)
{
    const s_v4i abs_m = {0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff};
    const s_v4i inf = {0x7f800000, 0x7f800000, 0x7f800000, 0x7f800000};
    const s_v4i quiet = {0x00400000, 0x00400000, 0x00400000, 0x00400000};
    const s_v4i keep = {(int32_t)0xffff0000u, (int32_t)0xffff0000u, (int32_t)0xffff0000u,
                        (int32_t)0xffff0000u};
    const s_v4i bias = {0x7fff, 0x7fff, 0x7fff, 0x7fff};
    const s_v4i one = {1, 1, 1, 1};
    s_v4i nan = (u & abs_m) > inf;
    /* the add wraps modulo 2^32 as the scalar uint32_t form does: do it
     * unsigned, then back */
    typedef uint32_t s_v4u __attribute__((vector_size(16)));
    s_v4u uu = (s_v4u)u;
    s_v4i r = (s_v4i)(uu + (s_v4u)bias + (((s_v4u)uu >> 16) & (s_v4u)one));
    return s_sel(nan, u | quiet, r) & keep;
}

static inline s_v4i s_fp16(s_v4i u)
{
    const s_v4i abs_m = {0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff};
    const s_v4i inf = {0x7f800000, 0x7f800000, 0x7f800000, 0x7f800000};
    const s_v4i quiet = {0x00400000, 0x00400000, 0x00400000, 0x00400000};
    const s_v4i keep = {(int32_t)0xffffe000u, (int32_t)0xffffe000u, (int32_t)0xffffe000u,
                        (int32_t)0xffffe000u};
    const s_v4i big = {0x477ff000, 0x477ff000, 0x477ff000, 0x477ff000};
    const s_v4i small = {0x38800000, 0x38800000, 0x38800000, 0x38800000};
    const s_v4i bias = {0xfff, 0xfff, 0xfff, 0xfff};
    const s_v4i one = {1, 1, 1, 1};
    const s_v4f half = {0.5f, 0.5f, 0.5f, 0.5f};
    s_v4i a = u & abs_m, sign = u & ~abs_m;
    s_v4i nan = a > inf, ovf = a >= big, sub = a < small;
    /* a <= 0x7fffffff: the add cannot wrap */
    s_v4i norm = (a + bias + ((a >> 13) & one)) & keep;
    s_v4i subn = (s_v4i)(((s_v4f)a + half) - half);
    s_v4i r = s_sel(sub, subn, s_sel(ovf, inf, norm));
    return s_sel(nan, (u | quiet) & keep, sign | r);
}

static void s_round_chunk(void *vctx, size_t i)
{
    s_round *e = vctx;
    size_t lo = i * e->chunk, hi = lo + e->chunk < e->n ? lo + e->chunk : e->n, k = lo;
    const float *x = e->x;
    float *y = e->y;
    if (e->prec == EQ_PREC_BF16)
        for (; k + 4 <= hi; k += 4) s_st(y + k, s_bf16(s_ld(x + k)));
    else
        for (; k + 4 <= hi; k += 4) s_st(y + k, s_fp16(s_ld(x + k)));
    for (; k < hi; k++) y[k] = eq_precision_round(e->prec, x[k]);
}

static void s_nonfinite_chunk(void *vctx, size_t i)
{
    s_round *e = vctx;
    size_t lo = i * e->chunk, hi = lo + e->chunk < e->n ? lo + e->chunk : e->n, k = lo;
    const s_v4i abs_m = {0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff};
    const s_v4i inf = {0x7f800000, 0x7f800000, 0x7f800000, 0x7f800000};
    s_v4i acc = {0, 0, 0, 0};
    int64_t c = 0;
    for (; k + 4 <= hi; k += 4) {
        acc -= (s_ld(e->x + k) & abs_m) >= inf; /* -1 per non-finite lane */
        if (((k - lo) & 0xffff) == 0xfffc) { /* flush before a lane could wrap */
            c += (int64_t)acc[0] + acc[1] + acc[2] + acc[3];
            acc = (s_v4i){0, 0, 0, 0};
        }
    }
    c += (int64_t)acc[0] + acc[1] + acc[2] + acc[3];
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
    s_round e = {.prec = prec, .n = n, .x = x, .y = y};
    size_t nc = s_plan(&e);
    if (nc == 1) s_round_chunk(&e, 0);
    else eq_cpu_for(ctx, nc, s_round_chunk, &e);
    return EQ_OK;
}

eq_status eq_cpu_nonfinite(void *ctx, size_t n, const float *x, int64_t *count, eq_err *err)
{
    (void)err;
    s_round e = {.n = n, .x = x};
    size_t nc = s_plan(&e);
    if (nc == 1) s_nonfinite_chunk(&e, 0);
    else eq_cpu_for(ctx, nc, s_nonfinite_chunk, &e);
    int64_t c = 0;
    for (size_t i = 0; i < nc; i++) c += e.count[i];
    *count = c;
    return EQ_OK;
}
