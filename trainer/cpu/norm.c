/*
 * trainer/cpu/norm.c -- batch normalisation over the rows of [M][C] (NHWC
 * activations flattened to rows), as torch.nn.BatchNorm2d.
 *
 * Work is split into blocks of S_CB channels times slices of S_ROWS rows,
 * one (block, slice) per index of eq_cpu_for, so thin layers (16 channels,
 * one block) still use every thread.  Each slice sums its rows in order
 * into double partials in the workspace; the calling thread adds the
 * partials in slice order.  Statistics are two-pass (mean, then centred
 * squares), so results are accurate; the slicing depends only on the
 * shape, so they do not depend on the thread count.  Full 16-channel blocks
 * run on 4-lane vectors (GCC vector extensions: the same double operations
 * per element as the scalar tail, so bit-identical; -O2 leaves the scalar
 * loops unvectorised).
 */
#include "trainer/cpu/cpu_internal.h"

#include <math.h>
#include <string.h>

#define S_CB 16
#define S_ROWS 2048
#define S_NV (S_CB / 4) /* vectors per full block */

typedef float s_v4f __attribute__((vector_size(16)));
typedef double s_v4d __attribute__((vector_size(32)));

/* Loads and stores as macros: passing 32-byte vectors by value would change
 * the ABI without AVX (-Wpsabi). */
#define s_ld(p)                                     \
    ({                                              \
        s_v4f v_;                                   \
        memcpy(&v_, (p), sizeof v_);                \
        __builtin_convertvector(v_, s_v4d);         \
    })
#define s_st(p, v)                                  \
    do {                                            \
        s_v4f f_ = __builtin_convertvector((v), s_v4f); \
        memcpy((p), &f_, sizeof f_);                \
    } while (0)
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

typedef struct s_bn {
    const eq_bn_desc *d;
    const float *x, *dy, *gamma, *beta, *mean_in, *invstd_in, *rm_in, *rv_in;
    float *y, *dx, *rm, *rv, *save_mean, *save_invstd, *dgamma, *dbeta;
    int64_t nsl;           /* row slices */
    double *p1, *p2;       /* partials [nsl][c] */
    double *mu, *a, *sh;   /* per channel [c] */
} s_bn;

static size_t s_nblocks(int64_t c)
{
    return (size_t)((c + S_CB - 1) / S_CB);
}

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

/* p1[sl] = sum of x over the slice's rows */
static void s_fwd_sum(void *vctx, size_t t)
{
    const s_bn *b = vctx;
    const int64_t c = b->d->c;
    int64_t j0, nb, r0, r1;
    s_task(b, t, &j0, &nb, &r0, &r1);
    double acc[S_CB] = {0};
    if (nb == S_CB) {
        s_v4d v[S_NV] = {0};
        for (int64_t i = r0; i < r1; i++) {
            const float *xr = b->x + i * c + j0;
            for (int u = 0; u < S_NV; u++) v[u] += s_ld(xr + 4 * u);
        }
        for (int u = 0; u < S_NV; u++) s_std(acc + 4 * u, v[u]);
    } else {
        for (int64_t i = r0; i < r1; i++) {
            const float *xr = b->x + i * c + j0;
            for (int64_t j = 0; j < nb; j++) acc[j] += xr[j];
        }
    }
    double *o = b->p1 + (r0 / S_ROWS) * c + j0;
    for (int64_t j = 0; j < nb; j++) o[j] = acc[j];
}

/* p2[sl] = sum of (x - mu)^2 over the slice's rows */
static void s_fwd_sq(void *vctx, size_t t)
{
    const s_bn *b = vctx;
    const int64_t c = b->d->c;
    int64_t j0, nb, r0, r1;
    s_task(b, t, &j0, &nb, &r0, &r1);
    double acc[S_CB] = {0}, mu[S_CB];
    for (int64_t j = 0; j < nb; j++) mu[j] = b->mu[j0 + j];
    if (nb == S_CB) {
        s_v4d v[S_NV] = {0}, m[S_NV];
        for (int u = 0; u < S_NV; u++) m[u] = s_ldd(mu + 4 * u);
        for (int64_t i = r0; i < r1; i++) {
            const float *xr = b->x + i * c + j0;
            for (int u = 0; u < S_NV; u++) {
                s_v4d d = s_ld(xr + 4 * u) - m[u];
                v[u] += d * d;
            }
        }
        for (int u = 0; u < S_NV; u++) s_std(acc + 4 * u, v[u]);
    } else {
        for (int64_t i = r0; i < r1; i++) {
            const float *xr = b->x + i * c + j0;
            for (int64_t j = 0; j < nb; j++) {
                double v = (double)xr[j] - mu[j];
                acc[j] += v * v;
            }
        }
    }
    double *o = b->p2 + (r0 / S_ROWS) * c + j0;
    for (int64_t j = 0; j < nb; j++) o[j] = acc[j];
}

/* y = x * a + sh over the slice's rows */
static void s_affine(void *vctx, size_t t)
{
    const s_bn *b = vctx;
    const int64_t c = b->d->c;
    int64_t j0, nb, r0, r1;
    s_task(b, t, &j0, &nb, &r0, &r1);
    double a[S_CB], sh[S_CB];
    for (int64_t j = 0; j < nb; j++) a[j] = b->a[j0 + j], sh[j] = b->sh[j0 + j];
    if (nb == S_CB) {
        s_v4d va[S_NV], vs[S_NV];
        for (int u = 0; u < S_NV; u++) va[u] = s_ldd(a + 4 * u), vs[u] = s_ldd(sh + 4 * u);
        for (int64_t i = r0; i < r1; i++) {
            const float *xr = b->x + i * c + j0;
            float *yr = b->y + i * c + j0;
            for (int u = 0; u < S_NV; u++) s_st(yr + 4 * u, s_ld(xr + 4 * u) * va[u] + vs[u]);
        }
        return;
    }
    for (int64_t i = r0; i < r1; i++) {
        const float *xr = b->x + i * c + j0;
        float *yr = b->y + i * c + j0;
        for (int64_t j = 0; j < nb; j++) yr[j] = (float)(xr[j] * a[j] + sh[j]);
    }
}

/* out[ch] = sum over slices, in slice order, of p[sl][ch] */
static void s_reduce(const s_bn *b, const double *p, double *out)
{
    const int64_t c = b->d->c;
    for (int64_t j = 0; j < c; j++) out[j] = p[j];
    for (int64_t sl = 1; sl < b->nsl; sl++)
        for (int64_t j = 0; j < c; j++) out[j] += p[sl * c + j];
}

eq_status eq_cpu_bn_fwd_train(void *ctx, const eq_bn_desc *d, const float *x, const float *gamma,
                              const float *beta, float *running_mean, float *running_var,
                              float *y, float *save_mean, float *save_invstd, eq_err *err)
{
    s_bn b = {.d = d, .x = x, .gamma = gamma, .beta = beta, .rm = running_mean,
              .rv = running_var, .y = y, .save_mean = save_mean, .save_invstd = save_invstd};
    eq_status st = s_bn_ws(ctx, &b, "bn_fwd_train", err);
    if (st != EQ_OK) return st;
    const int64_t m = d->m, c = d->c;
    const size_t ntask = s_nblocks(c) * (size_t)b.nsl;
    eq_cpu_for(ctx, ntask, s_fwd_sum, &b);
    s_reduce(&b, b.p1, b.mu);
    for (int64_t j = 0; j < c; j++) b.mu[j] /= (double)m;
    eq_cpu_for(ctx, ntask, s_fwd_sq, &b);
    double *sq = b.a; /* reused: a is filled from sq below */
    s_reduce(&b, b.p2, sq);
    const double mom = d->momentum;
    for (int64_t ch = 0; ch < c; ch++) {
        double mean = b.mu[ch], var = sq[ch] / (double)m;
        double invstd = 1.0 / sqrt(var + (double)d->eps);
        save_mean[ch] = (float)mean;
        save_invstd[ch] = (float)invstd;
        running_mean[ch] = (float)((1.0 - mom) * running_mean[ch] + mom * mean);
        /* running variance: unbiased, as PyTorch */
        running_var[ch] =
            (float)((1.0 - mom) * running_var[ch] + mom * var * (double)m / (double)(m - 1));
        b.a[ch] = invstd * (gamma ? gamma[ch] : 1.0f);
        b.sh[ch] = (beta ? beta[ch] : 0.0f) - mean * b.a[ch];
    }
    eq_cpu_for(ctx, ntask, s_affine, &b);
    return EQ_OK;
}

static void s_fwd_eval_block(void *vctx, size_t blk)
{
    const s_bn *b = vctx;
    const int64_t m = b->d->m, c = b->d->c, j0 = (int64_t)blk * S_CB;
    const int64_t nb = c - j0 < S_CB ? c - j0 : S_CB;
    double a[S_CB], sh[S_CB];
    for (int64_t j = 0; j < nb; j++) {
        int64_t ch = j0 + j;
        a[j] = (b->gamma ? b->gamma[ch] : 1.0f) / sqrt((double)b->rv_in[ch] + (double)b->d->eps);
        sh[j] = (b->beta ? b->beta[ch] : 0.0f) - b->rm_in[ch] * a[j];
    }
    for (int64_t i = 0; i < m; i++) {
        const float *xr = b->x + i * c + j0;
        float *yr = b->y + i * c + j0;
        for (int64_t j = 0; j < nb; j++) yr[j] = (float)(xr[j] * a[j] + sh[j]);
    }
}

eq_status eq_cpu_bn_fwd_eval(void *ctx, const eq_bn_desc *d, const float *x, const float *gamma,
                             const float *beta, const float *running_mean,
                             const float *running_var, float *y, eq_err *err)
{
    s_bn b = {.d = d, .x = x, .gamma = gamma, .beta = beta, .rm_in = running_mean,
              .rv_in = running_var, .y = y};
    eq_cpu_for(ctx, s_nblocks(d->c), s_fwd_eval_block, &b);
    return EQ_OK;
}

/* dx = gamma*is*(dy - mean(dy) - (x-mu)*is^2*mean(dy*(x-mu))),
 * dgamma = sum(dy*(x-mu))*is, dbeta = sum(dy).
 * Pass 1: p1[sl] = sum dy, p2[sl] = sum dy*(x-mu) per slice. */
static void s_bwd_sums(void *vctx, size_t t)
{
    const s_bn *b = vctx;
    const int64_t c = b->d->c;
    int64_t j0, nb, r0, r1;
    s_task(b, t, &j0, &nb, &r0, &r1);
    double sdy[S_CB] = {0}, sdyx[S_CB] = {0}, mu[S_CB];
    for (int64_t j = 0; j < nb; j++) mu[j] = b->mean_in[j0 + j];
    if (nb == S_CB) {
        s_v4d v1[S_NV] = {0}, v2[S_NV] = {0}, m[S_NV];
        for (int u = 0; u < S_NV; u++) m[u] = s_ldd(mu + 4 * u);
        for (int64_t i = r0; i < r1; i++) {
            const float *xr = b->x + i * c + j0, *gr = b->dy + i * c + j0;
            for (int u = 0; u < S_NV; u++) {
                s_v4d g = s_ld(gr + 4 * u);
                v1[u] += g;
                v2[u] += g * (s_ld(xr + 4 * u) - m[u]);
            }
        }
        for (int u = 0; u < S_NV; u++) {
            s_std(sdy + 4 * u, v1[u]);
            s_std(sdyx + 4 * u, v2[u]);
        }
    } else {
        for (int64_t i = r0; i < r1; i++) {
            const float *xr = b->x + i * c + j0, *gr = b->dy + i * c + j0;
            for (int64_t j = 0; j < nb; j++) {
                sdy[j] += gr[j];
                sdyx[j] += (double)gr[j] * ((double)xr[j] - mu[j]);
            }
        }
    }
    double *o1 = b->p1 + (r0 / S_ROWS) * c + j0, *o2 = b->p2 + (r0 / S_ROWS) * c + j0;
    for (int64_t j = 0; j < nb; j++) o1[j] = sdy[j], o2[j] = sdyx[j];
}

/* Pass 2: dx = k1 * (dy - mean(dy) - (x - mu) * k2), with k1 in b->a,
 * mean(dy) in b->sh and k2 in b->mu (set by eq_cpu_bn_bwd). */
static void s_bwd_dx(void *vctx, size_t t)
{
    const s_bn *b = vctx;
    const int64_t c = b->d->c;
    int64_t j0, nb, r0, r1;
    s_task(b, t, &j0, &nb, &r0, &r1);
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
            const float *xr = b->x + i * c + j0, *gr = b->dy + i * c + j0;
            float *o = b->dx + i * c + j0;
            for (int u = 0; u < S_NV; u++)
                s_st(o + 4 * u, v1[u] * (s_ld(gr + 4 * u) - vd[u] -
                                         (s_ld(xr + 4 * u) - vm[u]) * v2[u]));
        }
        return;
    }
    for (int64_t i = r0; i < r1; i++) {
        const float *xr = b->x + i * c + j0, *gr = b->dy + i * c + j0;
        float *o = b->dx + i * c + j0;
        for (int64_t j = 0; j < nb; j++)
            o[j] = (float)(k1[j] * ((double)gr[j] - mdy[j] - ((double)xr[j] - mu[j]) * k2[j]));
    }
}

eq_status eq_cpu_bn_bwd(void *ctx, const eq_bn_desc *d, const float *x, const float *dy,
                        const float *gamma, const float *save_mean, const float *save_invstd,
                        float *dx, float *dgamma, float *dbeta, eq_err *err)
{
    s_bn b = {.d = d, .x = x, .dy = dy, .gamma = gamma, .mean_in = save_mean,
              .invstd_in = save_invstd, .dx = dx, .dgamma = dgamma, .dbeta = dbeta};
    eq_status st = s_bn_ws(ctx, &b, "bn_bwd", err);
    if (st != EQ_OK) return st;
    const int64_t m = d->m, c = d->c;
    const size_t ntask = s_nblocks(c) * (size_t)b.nsl;
    eq_cpu_for(ctx, ntask, s_bwd_sums, &b);
    /* b.sh = sum dy, b.mu = sum dy*(x-mu), then turned into mean(dy), k2 */
    s_reduce(&b, b.p1, b.sh);
    s_reduce(&b, b.p2, b.mu);
    for (int64_t ch = 0; ch < c; ch++) {
        double is = save_invstd[ch], sdy = b.sh[ch], sdyx = b.mu[ch];
        if (dbeta) dbeta[ch] = (float)sdy;
        if (dgamma) dgamma[ch] = (float)(sdyx * is);
        b.a[ch] = (gamma ? gamma[ch] : 1.0f) * is; /* scale */
        b.sh[ch] = sdy / (double)m;                /* mean(dy) */
        b.mu[ch] = sdyx / (double)m * is * is;     /* slope on (x - mu) */
    }
    eq_cpu_for(ctx, ntask, s_bwd_dx, &b);
    return EQ_OK;
}
