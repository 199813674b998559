/*
 * trainer/cpu/norm.c -- batch normalisation over the rows of [M][C] (NHWC
 * activations flattened to rows), as torch.nn.BatchNorm2d, alone or fused
 * with a residual add and a ReLU (bn_relu_*: y = max(bn(x) + z, 0)).
 *
 * Each task of eq_cpu_for takes a slice of rows (S_SLICE elements: 2048
 * rows of a 16-channel layer) across all channels, so its memory is
 * contiguous; it sweeps the slice in chunks of rows (S_CHUNK elements),
 * each chunk block by block (S_CB channels in vector registers).  Each
 * slice sums its rows in order into double partials in the workspace; the
 * calling thread adds the partials in slice order.  The slicing depends
 * only on the shape, so results do not depend on the thread count (a slice
 * of every channel rather than a block of channels: strided blocks of wide
 * layers made the fused backward slower than the separate ops at 64
 * channels).
 *
 * Memory passes (the step of a thin network is bound by them):
 *  - statistics: one pass over memory.  Each slice (128 KiB) sums its
 *    rows, then sums its squares centred on its own mean while it is still
 *    in cache; the slices' (count, mean, M2) are combined
 *    in slice order as Chan et al. do, which is as accurate as two passes
 *    over the whole tensor;
 *  - normalise: y = x * a + sh, then + z, then ReLU, in the same store;
 *  - backward: pass 1 forms g = (dy + dy2) masked by y > 0 and its sums
 *    (storing g as dz when the residual wants it), pass 2 dx.
 * The elementwise float operations are those of the separate ops (bn(x)
 * rounded to float, then + z, then the ReLU select), so fused and separate
 * ops give the same bits.
 *
 * Full 16-channel blocks run on 8-lane vectors (GCC vector extensions: the
 * same double operations per element as the scalar tail, so bit-identical;
 * -O2 leaves the scalar loops unvectorised), compiled three times on
 * x86-64 -- baseline, AVX2 and AVX-512F (no FMA: -ffp-contract=off and no
 * fused operations, so all give the same bits) -- and picked at run time;
 * the AVX-512F build converts floats to doubles with one instruction
 * (s_cvt).
 * Each pass's loops are instantiated per combination of its flags (residual,
 * ReLU, dy2, dz) with the vector loops unrolled: with the flags tested in
 * the loop GCC kept the accumulators in memory, and the passes were bound
 * by that rather than by memory (AVX-512 and the specialised loops took
 * the op-level time of ResNet-20's BN shapes from ~15 to ~11 CPU-ms, see
 * doc/performance.md, session 6).
 */
#include "trainer/cpu/cpu_internal.h"

#include <math.h>
#include <string.h>

#define S_CB 16
#define S_SLICE 32768 /* elements per task: 128 KiB of floats, stays in L2 */
#define S_CHUNK 1024  /* elements per chunk of rows, swept block by block */
#define S_VL 8 /* lanes per vector */
#define S_NV (S_CB / S_VL) /* vectors per full block */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define S_X86 1
#define S_AVX2 __attribute__((target("avx2")))
#define S_AVX512 __attribute__((target("avx512f")))
#else
#define S_X86 0
#endif
#define S_BODY static inline __attribute__((always_inline))
/* The vector loops over a block (S_NV vectors) must be unrolled so that
 * their accumulators stay in registers. */
#define S_UNROLL _Pragma("GCC unroll 8")

typedef float s_vf __attribute__((vector_size(4 * S_VL)));
typedef int32_t s_vi __attribute__((vector_size(4 * S_VL)));
typedef double s_vd __attribute__((vector_size(8 * S_VL)));

/* Loads and stores as macros: passing wide vectors by value would change
 * the ABI without AVX (-Wpsabi). */
#define s_ldf(p)                                    \
    ({                                              \
        s_vf v_;                                    \
        memcpy(&v_, (p), sizeof v_);                \
        v_;                                         \
    })
#define s_stf(p, v)                                 \
    do {                                            \
        s_vf g_ = (v);                              \
        memcpy((p), &g_, sizeof g_);                \
    } while (0)
/* floats to doubles; isa (a constant in each build, see S_TASK) 2: one
 * AVX-512F instruction (GCC 12 splits __builtin_convertvector of 8 floats
 * into halves and reassembles them) */
#if S_X86
#include <immintrin.h>
S_AVX512 static inline void s_cvt512(const s_vf *f, s_vd *d)
{
    *d = (s_vd)_mm512_cvtps_pd((__m256)*f);
}
#define s_cvt(v, isa)                                                      \
    ({                                                                     \
        s_vf f_ = (v);                                                     \
        s_vd c_;                                                           \
        if ((isa) == 2)                                                    \
            s_cvt512(&f_, &c_);                                            \
        else                                                               \
            c_ = __builtin_convertvector(f_, s_vd);                        \
        c_;                                                                \
    })
#else
#define s_cvt(v, isa) __builtin_convertvector((v), s_vd)
#endif
#define s_ld(p, isa) s_cvt(s_ldf(p), isa)
#define s_st(p, v) s_stf((p), __builtin_convertvector((v), s_vf))
#define s_ldd(p)                                    \
    ({                                              \
        s_vd d_;                                    \
        memcpy(&d_, (p), sizeof d_);                \
        d_;                                         \
    })
#define s_std(p, v)                                 \
    do {                                            \
        s_vd e_ = (v);                              \
        memcpy((p), &e_, sizeof e_);                \
    } while (0)
/* +0 where v <= 0, else v (NaN stays NaN, as torch.relu), as relu_fwd */
#define s_relu(v)                                   \
    ({                                              \
        s_vf r_ = (v);                              \
        (s_vf)((s_vi)r_ & ~(r_ <= (s_vf){0}));     \
    })
/* +0 where y <= 0, else g (torch's threshold_backward), as relu_bwd */
#define s_mask(g, y) ((s_vf)((s_vi)(g) & ~((y) <= (s_vf){0})))

typedef struct s_bn {
    const eq_bn_desc *d;
    const float *x, *z, *yin, *dy, *dy2, *gamma, *beta, *mean_in, *invstd_in, *rm_in, *rv_in;
    float *y, *dx, *dz, *rm, *rv, *save_mean, *save_invstd, *dgamma, *dbeta;
    int relu;
    int64_t rs, rc, nsl;   /* rows per slice (task), per chunk; slices */
    double *p1, *p2;       /* partials [nsl][c] */
    double *mu, *a, *sh;   /* per channel [c] */
    double *mean_d;        /* backward: save_mean as double [c] */
} s_bn;

#if S_X86
/* 2: AVX-512F, 1: AVX2, 0: neither */
static int s_isa(void)
{
    static int have = -1;
    if (have < 0)
        have = __builtin_cpu_supports("avx512f") ? 2 : __builtin_cpu_supports("avx2") ? 1 : 0;
    return have;
}
#endif

/* A task function compiled for the baseline and (x86-64) for AVX2 and
 * AVX-512F; the body gets its build's ISA as a constant (0, 1, 2). */
#if S_X86
#define S_TASK(name)                                                      \
    static void name##_base(void *c, size_t t) { name(c, t, 0); }         \
    S_AVX2 static void name##_avx2(void *c, size_t t) { name(c, t, 1); }  \
    S_AVX512 static void name##_avx512(void *c, size_t t) { name(c, t, 2); }
#define S_PICK(name) \
    (s_isa() == 2 ? name##_avx512 : s_isa() == 1 ? name##_avx2 : name##_base)
#else
#define S_TASK(name) \
    static void name##_base(void *c, size_t t) { name(c, t, 0); }
#define S_PICK(name) name##_base
#endif

/* Workspace for b->p1, p2 ([nsl][c] each) and mu, a, sh, mean_d ([c] each). */
static eq_status s_bn_ws(eq_cpu *cpu, s_bn *b, const char *op, eq_err *err)
{
    const int64_t c = b->d->c;
    b->rs = S_SLICE / c > 0 ? S_SLICE / c : 1;
    b->rc = S_CHUNK / c > 0 ? S_CHUNK / c : 1;
    b->nsl = (b->d->m + b->rs - 1) / b->rs;
    size_t nd = (size_t)(2 * b->nsl + 4) * (size_t)c;
    double *w = (double *)eq_cpu_workspace(cpu, nd * sizeof(double), op, err);
    if (!w) return EQ_ERR_NOMEM;
    b->p1 = w, b->p2 = w + b->nsl * c, b->mu = b->p2 + b->nsl * c, b->a = b->mu + c,
    b->sh = b->a + c, b->mean_d = b->sh + c;
    return EQ_OK;
}

/* Task t: rows [*r0, *r1) of every channel. */
static void s_slice(const s_bn *b, size_t t, int64_t *r0, int64_t *r1)
{
    *r0 = (int64_t)t * b->rs;
    *r1 = b->d->m - *r0 < b->rs ? b->d->m : *r0 + b->rs;
}

/* A task's rows in chunks of b->rc rows, each swept block by block: the
 * blocks of a chunk share its cache lines (a chunk of every tensor stays
 * in L1), and each channel still sums its rows in order.  The body sees
 * q0, q1 (the chunk's rows), j0, nb (the block's channels). */
#define S_SWEEP(b, r0, r1, ...)                                                \
    for (int64_t q0 = (r0); q0 < (r1); q0 += (b)->rc) {                        \
        const int64_t q1 = (r1) - q0 < (b)->rc ? (r1) : q0 + (b)->rc;          \
        for (int64_t j0 = 0; j0 < (b)->d->c; j0 += S_CB) {                     \
            const int64_t nb = (b)->d->c - j0 < S_CB ? (b)->d->c - j0 : S_CB;  \
            __VA_ARGS__                                                        \
        }                                                                      \
    }

/* acc[0..nb) += sum over rows [q0, q1) of (x - ctr)^(1 or 2), in row order */
S_BODY void s_acc_blk(const float *x, int64_t c, int64_t q0, int64_t q1, int64_t j0, int64_t nb,
                      const double *ctr, int square, double *acc, int isa)
{
    if (nb == S_CB) {
        s_vd v[S_NV], m[S_NV];
        S_UNROLL for (int u = 0; u < S_NV; u++) v[u] = s_ldd(acc + S_VL * u);
        if (square) {
            S_UNROLL for (int u = 0; u < S_NV; u++) m[u] = s_ldd(ctr + S_VL * u);
            for (int64_t i = q0; i < q1; i++)
                S_UNROLL for (int u = 0; u < S_NV; u++) {
                    s_vd e = s_ld(x + i * c + j0 + S_VL * u, isa) - m[u];
                    v[u] += e * e;
                }
        } else {
            for (int64_t i = q0; i < q1; i++)
                S_UNROLL for (int u = 0; u < S_NV; u++) v[u] += s_ld(x + i * c + j0 + S_VL * u, isa);
        }
        S_UNROLL for (int u = 0; u < S_NV; u++) s_std(acc + S_VL * u, v[u]);
        return;
    }
    for (int64_t j = 0; j < nb; j++) {
        double v = acc[j];
        for (int64_t i = q0; i < q1; i++) {
            double e = x[i * c + j0 + j];
            if (square) e -= ctr[j], e *= e;
            v += e;
        }
        acc[j] = v;
    }
}

/* p1[sl] = sum of x over the slice's rows, p2[sl] = sum of (x - slice
 * mean)^2 (the slice, at most S_SLICE elements, is still in cache for the
 * second sweep). */
S_BODY void s_fwd_stats(void *vctx, size_t t, int isa)
{
    const s_bn *b = vctx;
    const int64_t c = b->d->c;
    int64_t r0, r1;
    s_slice(b, t, &r0, &r1);
    double *sum = b->p1 + (int64_t)t * c, *sq = b->p2 + (int64_t)t * c;
    for (int64_t j = 0; j < c; j++) sum[j] = 0.0;
    S_SWEEP(b, r0, r1, s_acc_blk(b->x, c, q0, q1, j0, nb, NULL, 0, sum + j0, isa);)
    const double inv = 1.0 / (double)(r1 - r0);
    for (int64_t j = 0; j < c; j++) sq[j] = 0.0;
    for (int64_t j0 = 0; j0 < c; j0 += S_CB) {
        const int64_t nb = c - j0 < S_CB ? c - j0 : S_CB;
        double mu[S_CB];
        for (int64_t j = 0; j < nb; j++) mu[j] = sum[j0 + j] * inv;
        for (int64_t q0 = r0; q0 < r1; q0 += b->rc) {
            const int64_t q1 = r1 - q0 < b->rc ? r1 : q0 + b->rc;
            s_acc_blk(b->x, c, q0, q1, j0, nb, mu, 1, sq + j0, isa);
        }
    }
}
S_TASK(s_fwd_stats)

/* y = x * a + sh (rounded to float), + z, then ReLU, over the slice's rows */
S_BODY void s_affine_k(const s_bn *b, size_t t, int has_z, int relu, int isa)
{
    const int64_t c = b->d->c;
    int64_t r0, r1;
    s_slice(b, t, &r0, &r1);
    const float *z = has_z ? b->z : NULL, *x = b->x;
    float *y = b->y;
    S_SWEEP(b, r0, r1, {
        const double *a = b->a + j0, *sh = b->sh + j0;
        if (nb == S_CB) {
            s_vd va[S_NV], vs[S_NV];
            S_UNROLL for (int u = 0; u < S_NV; u++) va[u] = s_ldd(a + S_VL * u), vs[u] = s_ldd(sh + S_VL * u);
            for (int64_t i = q0; i < q1; i++) {
                const size_t o = (size_t)(i * c + j0);
                S_UNROLL for (int u = 0; u < S_NV; u++) {
                    s_vf v = __builtin_convertvector(s_ld(x + o + S_VL * u, isa) * va[u] + vs[u], s_vf);
                    if (z) v += s_ldf(z + o + S_VL * u);
                    if (relu) v = s_relu(v);
                    s_stf(y + o + S_VL * u, v);
                }
            }
        } else {
            for (int64_t i = q0; i < q1; i++) {
                const size_t o = (size_t)(i * c + j0);
                for (int64_t j = 0; j < nb; j++) {
                    float v = (float)(x[o + j] * a[j] + sh[j]);
                    if (z) v += z[o + j];
                    if (relu) v = v <= 0.0f ? 0.0f : v;
                    y[o + j] = v;
                }
            }
        }
    })
}

/* s_affine_k with its flags as constants, one loop each */
S_BODY void s_affine(void *vctx, size_t t, int isa)
{
    const s_bn *b = vctx;
    if (b->z)
        b->relu ? s_affine_k(b, t, 1, 1, isa) : s_affine_k(b, t, 1, 0, isa);
    else
        b->relu ? s_affine_k(b, t, 0, 1, isa) : s_affine_k(b, t, 0, 0, isa);
}
S_TASK(s_affine)

/* out[ch] = sum over slices, in slice order, of p[sl][ch] */
static void s_reduce(const s_bn *b, const double *p, double *out)
{
    const int64_t c = b->d->c;
    for (int64_t j = 0; j < c; j++) out[j] = p[j];
    for (int64_t sl = 1; sl < b->nsl; sl++)
        for (int64_t j = 0; j < c; j++) out[j] += p[sl * c + j];
}

static eq_status s_fwd_train(eq_cpu *cpu, s_bn *b, const char *op, eq_err *err)
{
    eq_status st = s_bn_ws(cpu, b, op, err);
    if (st != EQ_OK) return st;
    const eq_bn_desc *d = b->d;
    const int64_t m = d->m, c = d->c;
    const size_t ntask = (size_t)b->nsl;
    eq_cpu_for(cpu, ntask, S_PICK(s_fwd_stats), b);
    s_reduce(b, b->p1, b->mu);
    for (int64_t j = 0; j < c; j++) b->mu[j] /= (double)m;
    /* M2 = sum over slices of M2_s + n_s * (mean_s - mean)^2, in slice order */
    double *sq = b->a; /* reused: a is filled from sq below */
    for (int64_t j = 0; j < c; j++) sq[j] = 0.0;
    for (int64_t sl = 0; sl < b->nsl; sl++) {
        int64_t r0 = sl * b->rs, ns = m - r0 < b->rs ? m - r0 : b->rs;
        for (int64_t j = 0; j < c; j++) {
            double dm = b->p1[sl * c + j] / (double)ns - b->mu[j];
            sq[j] += b->p2[sl * c + j] + (double)ns * dm * dm;
        }
    }
    const double mom = d->momentum;
    for (int64_t ch = 0; ch < c; ch++) {
        double mean = b->mu[ch], var = sq[ch] / (double)m;
        double invstd = 1.0 / sqrt(var + (double)d->eps);
        b->save_mean[ch] = (float)mean;
        b->save_invstd[ch] = (float)invstd;
        b->rm[ch] = (float)((1.0 - mom) * b->rm[ch] + mom * mean);
        /* running variance: unbiased, as PyTorch */
        b->rv[ch] = (float)((1.0 - mom) * b->rv[ch] + mom * var * (double)m / (double)(m - 1));
        b->a[ch] = invstd * (b->gamma ? b->gamma[ch] : 1.0f);
        b->sh[ch] = (b->beta ? b->beta[ch] : 0.0f) - mean * b->a[ch];
    }
    eq_cpu_for(cpu, ntask, S_PICK(s_affine), b);
    return EQ_OK;
}

eq_status eq_cpu_bn_fwd_train(void *ctx, const eq_bn_desc *d, const float *x, const float *gamma,
                              const float *beta, float *running_mean, float *running_var,
                              float *y, float *save_mean, float *save_invstd, eq_err *err)
{
    s_bn b = {.d = d, .x = x, .gamma = gamma, .beta = beta, .rm = running_mean,
              .rv = running_var, .y = y, .save_mean = save_mean, .save_invstd = save_invstd};
    return s_fwd_train(ctx, &b, "bn_fwd_train", err);
}

eq_status eq_cpu_bn_relu_fwd_train(void *ctx, const eq_bn_desc *d, const float *x,
                                   const float *z, const float *gamma, const float *beta,
                                   float *running_mean, float *running_var, float *y,
                                   float *save_mean, float *save_invstd, eq_err *err)
{
    s_bn b = {.d = d, .x = x, .z = z, .gamma = gamma, .beta = beta, .rm = running_mean,
              .rv = running_var, .y = y, .save_mean = save_mean, .save_invstd = save_invstd,
              .relu = 1};
    return s_fwd_train(ctx, &b, "bn_relu_fwd_train", err);
}

/* Eval: a and sh from the running statistics, then the normalise pass. */
static eq_status s_fwd_eval(eq_cpu *cpu, s_bn *b, const char *op, eq_err *err)
{
    eq_status st = s_bn_ws(cpu, b, op, err);
    if (st != EQ_OK) return st;
    for (int64_t ch = 0; ch < b->d->c; ch++) {
        b->a[ch] = (b->gamma ? b->gamma[ch] : 1.0f) /
                   sqrt((double)b->rv_in[ch] + (double)b->d->eps);
        b->sh[ch] = (b->beta ? b->beta[ch] : 0.0f) - b->rm_in[ch] * b->a[ch];
    }
    eq_cpu_for(cpu, (size_t)b->nsl, S_PICK(s_affine), b);
    return EQ_OK;
}

eq_status eq_cpu_bn_fwd_eval(void *ctx, const eq_bn_desc *d, const float *x, const float *gamma,
                             const float *beta, const float *running_mean,
                             const float *running_var, float *y, eq_err *err)
{
    s_bn b = {.d = d, .x = x, .gamma = gamma, .beta = beta, .rm_in = running_mean,
              .rv_in = running_var, .y = y};
    return s_fwd_eval(ctx, &b, "bn_fwd_eval", err);
}

eq_status eq_cpu_bn_relu_fwd_eval(void *ctx, const eq_bn_desc *d, const float *x,
                                  const float *z, const float *gamma, const float *beta,
                                  const float *running_mean, const float *running_var, float *y,
                                  eq_err *err)
{
    s_bn b = {.d = d, .x = x, .z = z, .gamma = gamma, .beta = beta, .rm_in = running_mean,
              .rv_in = running_var, .y = y, .relu = 1};
    return s_fwd_eval(ctx, &b, "bn_relu_fwd_eval", err);
}

/* dx = gamma*is*(g - mean(g) - (x-mu)*is^2*mean(g*(x-mu))),
 * dgamma = sum(g*(x-mu))*is, dbeta = sum(g), with g = dy for bn_bwd and
 * g = (dy + dy2) where y > 0 for bn_relu_bwd.
 * Pass 1: p1[sl] = sum g, p2[sl] = sum g*(x-mu) per slice; g is stored in
 * dz when wanted. */
S_BODY void s_bwd_sums_k(const s_bn *b, size_t t, int has_dy2, int relu, int has_dz,
                         int isa)
{
    const int64_t c = b->d->c;
    int64_t r0, r1;
    s_slice(b, t, &r0, &r1);
    const float *dy2 = has_dy2 ? b->dy2 : NULL, *yin = b->yin, *dy = b->dy, *x = b->x;
    float *dz = has_dz ? b->dz : NULL;
    double *sdy = b->p1 + (int64_t)t * c, *sdyx = b->p2 + (int64_t)t * c;
    for (int64_t j = 0; j < c; j++) sdy[j] = sdyx[j] = 0.0;
    S_SWEEP(b, r0, r1, {
        const double *mu = b->mean_d + j0;
        double *a1 = sdy + j0, *a2 = sdyx + j0;
        if (nb == S_CB) {
            s_vd v1[S_NV], v2[S_NV], m[S_NV];
            S_UNROLL for (int u = 0; u < S_NV; u++)
                m[u] = s_ldd(mu + S_VL * u), v1[u] = s_ldd(a1 + S_VL * u), v2[u] = s_ldd(a2 + S_VL * u);
            for (int64_t i = q0; i < q1; i++) {
                const size_t o = (size_t)(i * c + j0);
                S_UNROLL for (int u = 0; u < S_NV; u++) {
                    s_vf gf = s_ldf(dy + o + S_VL * u);
                    if (dy2) gf += s_ldf(dy2 + o + S_VL * u);
                    if (relu) gf = s_mask(gf, s_ldf(yin + o + S_VL * u));
                    if (dz) s_stf(dz + o + S_VL * u, gf);
                    s_vd g = s_cvt(gf, isa);
                    v1[u] += g;
                    v2[u] += g * (s_ld(x + o + S_VL * u, isa) - m[u]);
                }
            }
            S_UNROLL for (int u = 0; u < S_NV; u++) {
                s_std(a1 + S_VL * u, v1[u]);
                s_std(a2 + S_VL * u, v2[u]);
            }
        } else {
            for (int64_t i = q0; i < q1; i++) {
                const size_t o = (size_t)(i * c + j0);
                for (int64_t j = 0; j < nb; j++) {
                    float gf = dy[o + j];
                    if (dy2) gf += dy2[o + j];
                    if (relu) gf = yin[o + j] <= 0.0f ? 0.0f : gf;
                    if (dz) dz[o + j] = gf;
                    a1[j] += gf;
                    a2[j] += (double)gf * ((double)x[o + j] - mu[j]);
                }
            }
        }
    })
}

/* s_bwd_sums_k with its flags as constants (the combinations the ops use:
 * dy2 and dz only with the ReLU) */
S_BODY void s_bwd_sums(void *vctx, size_t t, int isa)
{
    const s_bn *b = vctx;
    if (!b->relu)
        s_bwd_sums_k(b, t, 0, 0, 0, isa);
    else if (b->dy2)
        b->dz ? s_bwd_sums_k(b, t, 1, 1, 1, isa) : s_bwd_sums_k(b, t, 1, 1, 0, isa);
    else
        b->dz ? s_bwd_sums_k(b, t, 0, 1, 1, isa) : s_bwd_sums_k(b, t, 0, 1, 0, isa);
}
S_TASK(s_bwd_sums)

/* Pass 2: dx = k1 * (g - mean(g) - (x - mu) * k2), with k1 in b->a,
 * mean(g) in b->sh and k2 in b->mu (set by s_bwd); g from dz when pass 1
 * stored it, else formed again from dy, dy2 and y. */
S_BODY void s_bwd_dx_k(const s_bn *b, size_t t, int has_dy2, int relu, int isa)
{
    const int64_t c = b->d->c;
    int64_t r0, r1;
    s_slice(b, t, &r0, &r1);
    const float *gsrc = b->dz ? b->dz : b->dy;
    const float *dy2 = has_dy2 ? b->dy2 : NULL, *yin = b->yin, *x = b->x;
    float *dx = b->dx;
    S_SWEEP(b, r0, r1, {
        const double *mu = b->mean_d + j0, *k1 = b->a + j0, *mdy = b->sh + j0, *k2 = b->mu + j0;
        if (nb == S_CB) {
            s_vd vm[S_NV], v1[S_NV], v2[S_NV], vd[S_NV];
            S_UNROLL for (int u = 0; u < S_NV; u++)
                vm[u] = s_ldd(mu + S_VL * u), v1[u] = s_ldd(k1 + S_VL * u), v2[u] = s_ldd(k2 + S_VL * u),
                vd[u] = s_ldd(mdy + S_VL * u);
            for (int64_t i = q0; i < q1; i++) {
                const size_t o = (size_t)(i * c + j0);
                S_UNROLL for (int u = 0; u < S_NV; u++) {
                    s_vf gf = s_ldf(gsrc + o + S_VL * u);
                    if (dy2) gf += s_ldf(dy2 + o + S_VL * u);
                    if (relu) gf = s_mask(gf, s_ldf(yin + o + S_VL * u));
                    s_vd g = s_cvt(gf, isa);
                    s_st(dx + o + S_VL * u,
                         v1[u] * (g - vd[u] - (s_ld(x + o + S_VL * u, isa) - vm[u]) * v2[u]));
                }
            }
        } else {
            for (int64_t i = q0; i < q1; i++) {
                const size_t o = (size_t)(i * c + j0);
                for (int64_t j = 0; j < nb; j++) {
                    float gf = gsrc[o + j];
                    if (dy2) gf += dy2[o + j];
                    if (relu) gf = yin[o + j] <= 0.0f ? 0.0f : gf;
                    dx[o + j] = (float)(k1[j] * ((double)gf - mdy[j] -
                                                 ((double)x[o + j] - mu[j]) * k2[j]));
                }
            }
        }
    })
}

/* s_bwd_dx_k with its flags as constants: g from dz when pass 1 stored it */
S_BODY void s_bwd_dx(void *vctx, size_t t, int isa)
{
    const s_bn *b = vctx;
    if (!b->relu || b->dz)
        s_bwd_dx_k(b, t, 0, 0, isa);
    else
        b->dy2 ? s_bwd_dx_k(b, t, 1, 1, isa) : s_bwd_dx_k(b, t, 0, 1, isa);
}
S_TASK(s_bwd_dx)

static eq_status s_bwd(eq_cpu *cpu, s_bn *b, const char *op, eq_err *err)
{
    eq_status st = s_bn_ws(cpu, b, op, err);
    if (st != EQ_OK) return st;
    const int64_t m = b->d->m, c = b->d->c;
    const size_t ntask = (size_t)b->nsl;
    for (int64_t ch = 0; ch < c; ch++) b->mean_d[ch] = b->mean_in[ch];
    eq_cpu_for(cpu, ntask, S_PICK(s_bwd_sums), b);
    /* b->sh = sum g, b->mu = sum g*(x-mu), then turned into mean(g), k2 */
    s_reduce(b, b->p1, b->sh);
    s_reduce(b, b->p2, b->mu);
    for (int64_t ch = 0; ch < c; ch++) {
        double is = b->invstd_in[ch], sdy = b->sh[ch], sdyx = b->mu[ch];
        if (b->dbeta) b->dbeta[ch] = (float)sdy;
        if (b->dgamma) b->dgamma[ch] = (float)(sdyx * is);
        b->a[ch] = (b->gamma ? b->gamma[ch] : 1.0f) * is; /* scale */
        b->sh[ch] = sdy / (double)m;                      /* mean(g) */
        b->mu[ch] = sdyx / (double)m * is * is;           /* slope on (x - mu) */
    }
    eq_cpu_for(cpu, ntask, S_PICK(s_bwd_dx), b);
    return EQ_OK;
}

eq_status eq_cpu_bn_bwd(void *ctx, const eq_bn_desc *d, const float *x, const float *dy,
                        const float *gamma, const float *save_mean, const float *save_invstd,
                        float *dx, float *dgamma, float *dbeta, eq_err *err)
{
    s_bn b = {.d = d, .x = x, .dy = dy, .gamma = gamma, .mean_in = save_mean,
              .invstd_in = save_invstd, .dx = dx, .dgamma = dgamma, .dbeta = dbeta};
    return s_bwd(ctx, &b, "bn_bwd", err);
}

eq_status eq_cpu_bn_relu_bwd(void *ctx, const eq_bn_desc *d, const float *x, const float *y,
                             const float *dy, const float *dy2, const float *gamma,
                             const float *save_mean, const float *save_invstd, float *dx,
                             float *dz, float *dgamma, float *dbeta, eq_err *err)
{
    s_bn b = {.d = d, .x = x, .yin = y, .dy = dy, .dy2 = dy2, .gamma = gamma,
              .mean_in = save_mean, .invstd_in = save_invstd, .dx = dx, .dz = dz,
              .dgamma = dgamma, .dbeta = dbeta, .relu = 1};
    return s_bwd(ctx, &b, "bn_relu_bwd", err);
}
