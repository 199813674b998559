/*
 * trainer/cpu/norm.c -- batch normalisation over the rows of [M][C] (NHWC
 * activations flattened to rows), as torch.nn.BatchNorm2d, alone or fused
 * with a residual add and a ReLU (bn_relu_*: y = max(bn(x) + z, 0)).
 *
 * Work is split into blocks of S_CB channels times slices of S_ROWS rows,
 * one (block, slice) per index of eq_cpu_for, so thin layers (16 channels,
 * one block) still use every thread.  Each slice sums its rows in order
 * into double partials in the workspace; the calling thread adds the
 * partials in slice order.  The slicing depends only on the shape, so
 * results do not depend on the thread count.
 *
 * Memory passes (the step of a thin network is bound by them):
 *  - statistics: one pass over memory.  Each slice (128 KiB of a 16-channel
 *    block) sums its rows, then sums its squares centred on its own mean
 *    while it is still in cache; the slices' (count, mean, M2) are combined
 *    in slice order as Chan et al. do, which is as accurate as two passes
 *    over the whole tensor;
 *  - normalise: y = x * a + sh, then + z, then ReLU, in the same store;
 *  - backward: pass 1 forms g = (dy + dy2) masked by y > 0 and its sums
 *    (storing g as dz when the residual wants it), pass 2 dx.
 * The elementwise float operations are those of the separate ops (bn(x)
 * rounded to float, then + z, then the ReLU select), so fused and separate
 * ops give the same bits.
 *
 * Full 16-channel blocks run on 4-lane vectors (GCC vector extensions: the
 * same double operations per element as the scalar tail, so bit-identical;
 * -O2 leaves the scalar loops unvectorised), compiled twice on x86-64 --
 * baseline and AVX2 (no FMA: -ffp-contract=off and no fused operations, so
 * the two give the same bits) -- and picked at run time.
 */
#include "trainer/cpu/cpu_internal.h"

#include <math.h>
#include <string.h>

#define S_CB 16
#define S_ROWS 2048
#define S_NV (S_CB / 4) /* vectors per full block */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define S_X86 1
#define S_AVX2 __attribute__((target("avx2")))
#else
#define S_X86 0
#endif
#define S_BODY static inline __attribute__((always_inline))

typedef float s_v4f __attribute__((vector_size(16)));
typedef int32_t s_v4i __attribute__((vector_size(16)));
typedef double s_v4d __attribute__((vector_size(32)));

/* Loads and stores as macros: passing 32-byte vectors by value would change
 * the ABI without AVX (-Wpsabi). */
#define s_ldf(p)                                    \
    ({                                              \
        s_v4f v_;                                   \
        memcpy(&v_, (p), sizeof v_);                \
        v_;                                         \
    })
#define s_stf(p, v)                                 \
    do {                                            \
        s_v4f g_ = (v);                             \
        memcpy((p), &g_, sizeof g_);                \
    } while (0)
#define s_ld(p) __builtin_convertvector(s_ldf(p), s_v4d)
#define s_st(p, v) s_stf((p), __builtin_convertvector((v), s_v4f))
#define s_ldd(p)                                    \
    ({                                              \
        s_v4d d_;                                   \
        memcpy(&d_, (p), sizeof d_);                \
        d_;                                         \
    })
#define s_std(p, v)                                 \
    do {                                            \
        s_v4d e_ = (v);                             \
        memcpy((p), &e_, sizeof e_);                \
    } while (0)
/* v where v > 0, else +0 (NaN: 0), as relu_fwd */
#define s_relu4(v)                                  \
    ({                                              \
        s_v4f r_ = (v);                             \
        (s_v4f)((s_v4i)r_ & (r_ > (s_v4f){0}));     \
    })
/* g where y > 0, else +0, as relu_bwd */
#define s_mask4(g, y) ((s_v4f)((s_v4i)(g) & ((y) > (s_v4f){0})))

typedef struct s_bn {
    const eq_bn_desc *d;
    const float *x, *z, *yin, *dy, *dy2, *gamma, *beta, *mean_in, *invstd_in, *rm_in, *rv_in;
    float *y, *dx, *dz, *rm, *rv, *save_mean, *save_invstd, *dgamma, *dbeta;
    int relu;
    int64_t nsl;           /* row slices */
    double *p1, *p2;       /* partials [nsl][c] */
    double *mu, *a, *sh;   /* per channel [c] */
} s_bn;

static size_t s_nblocks(int64_t c)
{
    return (size_t)((c + S_CB - 1) / S_CB);
}

static int s_avx2(void)
{
#if S_X86
    static int have = -1;
    if (have < 0) have = __builtin_cpu_supports("avx2") ? 1 : 0;
    return have;
#else
    return 0;
#endif
}

/* A task function compiled for the baseline and (x86-64) for AVX2. */
#if S_X86
#define S_TASK(name)                                                    \
    static void name##_base(void *c, size_t t) { name(c, t); }          \
    S_AVX2 static void name##_avx2(void *c, size_t t) { name(c, t); }
#define S_PICK(name) (s_avx2() ? name##_avx2 : name##_base)
#else
#define S_TASK(name) \
    static void name##_base(void *c, size_t t) { name(c, t); }
#define S_PICK(name) name##_base
#endif

/* Workspace for b->p1, p2 ([nsl][c] each) and mu, a, sh ([c] each). */
static eq_status s_bn_ws(eq_cpu *cpu, s_bn *b, const char *op, eq_err *err)
{
    const int64_t c = b->d->c;
    b->nsl = (b->d->m + S_ROWS - 1) / S_ROWS;
    if (b->nsl < 1) b->nsl = 1;
    size_t nd = (size_t)(2 * b->nsl + 3) * (size_t)c;
    double *w = (double *)eq_cpu_workspace(cpu, nd * sizeof(double), op, err);
    if (!w) return EQ_ERR_NOMEM;
    b->p1 = w, b->p2 = w + b->nsl * c, b->mu = b->p2 + b->nsl * c, b->a = b->mu + c,
    b->sh = b->a + c;
    return EQ_OK;
}

/* Task t -> channels [*j0, *j0 + *nb), rows [*r0, *r1). */
static void s_task(const s_bn *b, size_t t, int64_t *j0, int64_t *nb, int64_t *r0, int64_t *r1)
{
    const int64_t c = b->d->c, m = b->d->m;
    int64_t blk = (int64_t)t / b->nsl, sl = (int64_t)t % b->nsl;
    *j0 = blk * S_CB;
    *nb = c - *j0 < S_CB ? c - *j0 : S_CB;
    *r0 = sl * S_ROWS;
    *r1 = m - *r0 < S_ROWS ? m : *r0 + S_ROWS;
}

/* p1[sl] = sum of x over the slice's rows, p2[sl] = sum of (x - slice
 * mean)^2 (the slice is still in cache for the second sweep). */
S_BODY void s_fwd_stats(void *vctx, size_t t)
{
    const s_bn *b = vctx;
    const int64_t c = b->d->c;
    int64_t j0, nb, r0, r1;
    s_task(b, t, &j0, &nb, &r0, &r1);
    const double inv = 1.0 / (double)(r1 - r0);
    double sum[S_CB] = {0}, sq[S_CB] = {0}, mu[S_CB];
    if (nb == S_CB) {
        s_v4d v[S_NV] = {0}, m[S_NV];
        for (int64_t i = r0; i < r1; i++) {
            const float *xr = b->x + i * c + j0;
            for (int u = 0; u < S_NV; u++) v[u] += s_ld(xr + 4 * u);
        }
        for (int u = 0; u < S_NV; u++) {
            s_std(sum + 4 * u, v[u]);
            m[u] = v[u] * inv;
            v[u] = (s_v4d){0};
        }
        for (int64_t i = r0; i < r1; i++) {
            const float *xr = b->x + i * c + j0;
            for (int u = 0; u < S_NV; u++) {
                s_v4d e = s_ld(xr + 4 * u) - m[u];
                v[u] += e * e;
            }
        }
        for (int u = 0; u < S_NV; u++) s_std(sq + 4 * u, v[u]);
    } else {
        for (int64_t i = r0; i < r1; i++) {
            const float *xr = b->x + i * c + j0;
            for (int64_t j = 0; j < nb; j++) sum[j] += xr[j];
        }
        for (int64_t j = 0; j < nb; j++) mu[j] = sum[j] * inv;
        for (int64_t i = r0; i < r1; i++) {
            const float *xr = b->x + i * c + j0;
            for (int64_t j = 0; j < nb; j++) {
                double e = (double)xr[j] - mu[j];
                sq[j] += e * e;
            }
        }
    }
    double *o1 = b->p1 + (r0 / S_ROWS) * c + j0, *o2 = b->p2 + (r0 / S_ROWS) * c + j0;
    for (int64_t j = 0; j < nb; j++) o1[j] = sum[j], o2[j] = sq[j];
}
S_TASK(s_fwd_stats)

/* y = x * a + sh (rounded to float), + z, then ReLU, over the slice's rows */
S_BODY void s_affine(void *vctx, size_t t)
{
    const s_bn *b = vctx;
    const int64_t c = b->d->c;
    int64_t j0, nb, r0, r1;
    s_task(b, t, &j0, &nb, &r0, &r1);
    const float *z = b->z;
    const int relu = b->relu;
    double a[S_CB], sh[S_CB];
    for (int64_t j = 0; j < nb; j++) a[j] = b->a[j0 + j], sh[j] = b->sh[j0 + j];
    if (nb == S_CB) {
        s_v4d va[S_NV], vs[S_NV];
        for (int u = 0; u < S_NV; u++) va[u] = s_ldd(a + 4 * u), vs[u] = s_ldd(sh + 4 * u);
        for (int64_t i = r0; i < r1; i++) {
            const float *xr = b->x + i * c + j0;
            float *yr = b->y + i * c + j0;
            for (int u = 0; u < S_NV; u++) {
                s_v4f v = __builtin_convertvector(s_ld(xr + 4 * u) * va[u] + vs[u], s_v4f);
                if (z) v += s_ldf(z + i * c + j0 + 4 * u);
                if (relu) v = s_relu4(v);
                s_stf(yr + 4 * u, v);
            }
        }
        return;
    }
    for (int64_t i = r0; i < r1; i++) {
        const float *xr = b->x + i * c + j0;
        float *yr = b->y + i * c + j0;
        for (int64_t j = 0; j < nb; j++) {
            float v = (float)(xr[j] * a[j] + sh[j]);
            if (z) v += z[i * c + j0 + j];
            if (relu) v = v > 0.0f ? v : 0.0f;
            yr[j] = v;
        }
    }
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
    const size_t ntask = s_nblocks(c) * (size_t)b->nsl;
    eq_cpu_for(cpu, ntask, S_PICK(s_fwd_stats), b);
    s_reduce(b, b->p1, b->mu);
    for (int64_t j = 0; j < c; j++) b->mu[j] /= (double)m;
    /* M2 = sum over slices of M2_s + n_s * (mean_s - mean)^2, in slice order */
    double *sq = b->a; /* reused: a is filled from sq below */
    for (int64_t j = 0; j < c; j++) sq[j] = 0.0;
    for (int64_t sl = 0; sl < b->nsl; sl++) {
        int64_t r0 = sl * S_ROWS, ns = m - r0 < S_ROWS ? m - r0 : S_ROWS;
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
    eq_cpu_for(cpu, s_nblocks(b->d->c) * (size_t)b->nsl, S_PICK(s_affine), b);
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
S_BODY void s_bwd_sums(void *vctx, size_t t)
{
    const s_bn *b = vctx;
    const int64_t c = b->d->c;
    int64_t j0, nb, r0, r1;
    s_task(b, t, &j0, &nb, &r0, &r1);
    const float *dy2 = b->dy2, *yin = b->yin;
    float *dz = b->dz;
    const int relu = b->relu;
    double sdy[S_CB] = {0}, sdyx[S_CB] = {0}, mu[S_CB];
    for (int64_t j = 0; j < nb; j++) mu[j] = b->mean_in[j0 + j];
    if (nb == S_CB) {
        s_v4d v1[S_NV] = {0}, v2[S_NV] = {0}, m[S_NV];
        for (int u = 0; u < S_NV; u++) m[u] = s_ldd(mu + 4 * u);
        for (int64_t i = r0; i < r1; i++) {
            const size_t o = (size_t)(i * c + j0);
            for (int u = 0; u < S_NV; u++) {
                s_v4f gf = s_ldf(b->dy + o + 4 * u);
                if (dy2) gf += s_ldf(dy2 + o + 4 * u);
                if (relu) gf = s_mask4(gf, s_ldf(yin + o + 4 * u));
                if (dz) s_stf(dz + o + 4 * u, gf);
                s_v4d g = __builtin_convertvector(gf, s_v4d);
                v1[u] += g;
                v2[u] += g * (s_ld(b->x + o + 4 * u) - m[u]);
            }
        }
        for (int u = 0; u < S_NV; u++) {
            s_std(sdy + 4 * u, v1[u]);
            s_std(sdyx + 4 * u, v2[u]);
        }
    } else {
        for (int64_t i = r0; i < r1; i++) {
            const size_t o = (size_t)(i * c + j0);
            for (int64_t j = 0; j < nb; j++) {
                float gf = b->dy[o + j];
                if (dy2) gf += dy2[o + j];
                if (relu) gf = yin[o + j] > 0.0f ? gf : 0.0f;
                if (dz) dz[o + j] = gf;
                sdy[j] += gf;
                sdyx[j] += (double)gf * ((double)b->x[o + j] - mu[j]);
            }
        }
    }
    double *o1 = b->p1 + (r0 / S_ROWS) * c + j0, *o2 = b->p2 + (r0 / S_ROWS) * c + j0;
    for (int64_t j = 0; j < nb; j++) o1[j] = sdy[j], o2[j] = sdyx[j];
}
S_TASK(s_bwd_sums)

/* Pass 2: dx = k1 * (g - mean(g) - (x - mu) * k2), with k1 in b->a,
 * mean(g) in b->sh and k2 in b->mu (set by s_bwd); g from dz when pass 1
 * stored it, else formed again from dy, dy2 and y. */
S_BODY void s_bwd_dx(void *vctx, size_t t)
{
    const s_bn *b = vctx;
    const int64_t c = b->d->c;
    int64_t j0, nb, r0, r1;
    s_task(b, t, &j0, &nb, &r0, &r1);
    const float *gsrc = b->dz ? b->dz : b->dy;
    const float *dy2 = b->dz ? NULL : b->dy2, *yin = b->dz ? NULL : b->yin;
    const int relu = b->relu && !b->dz;
    double mu[S_CB], k1[S_CB], k2[S_CB], mdy[S_CB];
    for (int64_t j = 0; j < nb; j++) {
        mu[j] = b->mean_in[j0 + j], k1[j] = b->a[j0 + j], mdy[j] = b->sh[j0 + j];
        k2[j] = b->mu[j0 + j];
    }
    if (nb == S_CB) {
        s_v4d vm[S_NV], v1[S_NV], v2[S_NV], vd[S_NV];
        for (int u = 0; u < S_NV; u++)
            vm[u] = s_ldd(mu + 4 * u), v1[u] = s_ldd(k1 + 4 * u), v2[u] = s_ldd(k2 + 4 * u),
            vd[u] = s_ldd(mdy + 4 * u);
        for (int64_t i = r0; i < r1; i++) {
            const size_t o = (size_t)(i * c + j0);
            for (int u = 0; u < S_NV; u++) {
                s_v4f gf = s_ldf(gsrc + o + 4 * u);
                if (dy2) gf += s_ldf(dy2 + o + 4 * u);
                if (relu) gf = s_mask4(gf, s_ldf(yin + o + 4 * u));
                s_v4d g = __builtin_convertvector(gf, s_v4d);
                s_st(b->dx + o + 4 * u,
                     v1[u] * (g - vd[u] - (s_ld(b->x + o + 4 * u) - vm[u]) * v2[u]));
            }
        }
        return;
    }
    for (int64_t i = r0; i < r1; i++) {
        const size_t o = (size_t)(i * c + j0);
        for (int64_t j = 0; j < nb; j++) {
            float gf = gsrc[o + j];
            if (dy2) gf += dy2[o + j];
            if (relu) gf = yin[o + j] > 0.0f ? gf : 0.0f;
            b->dx[o + j] =
                (float)(k1[j] * ((double)gf - mdy[j] - ((double)b->x[o + j] - mu[j]) * k2[j]));
        }
    }
}
S_TASK(s_bwd_dx)

static eq_status s_bwd(eq_cpu *cpu, s_bn *b, const char *op, eq_err *err)
{
    eq_status st = s_bn_ws(cpu, b, op, err);
    if (st != EQ_OK) return st;
    const int64_t m = b->d->m, c = b->d->c;
    const size_t ntask = s_nblocks(c) * (size_t)b->nsl;
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
