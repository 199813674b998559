/*
 * trainer/cpu/norm.c -- batch normalisation over the rows of [M][C] (NHWC
 * activations flattened to rows), as torch.nn.BatchNorm2d.
 *
 * Work is split into blocks of S_CB channels, one block per index of
 * eq_cpu_for; a block walks all M rows in order with double accumulators
 * on its stack.  Statistics are two-pass (mean, then centred squares), so
 * results are accurate and do not depend on the thread count.
 */
#include "trainer/cpu/cpu_internal.h"

#include <math.h>

#define S_CB 16

typedef struct s_bn {
    const eq_bn_desc *d;
    const float *x, *dy, *gamma, *beta, *mean_in, *invstd_in, *rm_in, *rv_in;
    float *y, *dx, *rm, *rv, *save_mean, *save_invstd, *dgamma, *dbeta;
} s_bn;

static size_t s_nblocks(int64_t c)
{
    return (size_t)((c + S_CB - 1) / S_CB);
}

static void s_fwd_train_block(void *vctx, size_t blk)
{
    const s_bn *b = vctx;
    const int64_t m = b->d->m, c = b->d->c, j0 = (int64_t)blk * S_CB;
    const int64_t nb = c - j0 < S_CB ? c - j0 : S_CB;
    double mean[S_CB] = {0}, sq[S_CB] = {0}, a[S_CB], sh[S_CB];
    for (int64_t i = 0; i < m; i++) {
        const float *xr = b->x + i * c + j0;
        for (int64_t j = 0; j < nb; j++) mean[j] += xr[j];
    }
    for (int64_t j = 0; j < nb; j++) mean[j] /= (double)m;
    for (int64_t i = 0; i < m; i++) {
        const float *xr = b->x + i * c + j0;
        for (int64_t j = 0; j < nb; j++) {
            double t = (double)xr[j] - mean[j];
            sq[j] += t * t;
        }
    }
    const double mom = b->d->momentum;
    for (int64_t j = 0; j < nb; j++) {
        int64_t ch = j0 + j;
        double var = sq[j] / (double)m;
        double invstd = 1.0 / sqrt(var + (double)b->d->eps);
        b->save_mean[ch] = (float)mean[j];
        b->save_invstd[ch] = (float)invstd;
        b->rm[ch] = (float)((1.0 - mom) * b->rm[ch] + mom * mean[j]);
        /* running variance: unbiased, as PyTorch */
        b->rv[ch] = (float)((1.0 - mom) * b->rv[ch] + mom * var * (double)m / (double)(m - 1));
        a[j] = invstd * (b->gamma ? b->gamma[ch] : 1.0f);
        sh[j] = (b->beta ? b->beta[ch] : 0.0f) - mean[j] * a[j];
    }
    for (int64_t i = 0; i < m; i++) {
        const float *xr = b->x + i * c + j0;
        float *yr = b->y + i * c + j0;
        for (int64_t j = 0; j < nb; j++) yr[j] = (float)(xr[j] * a[j] + sh[j]);
    }
}

eq_status eq_cpu_bn_fwd_train(void *ctx, const eq_bn_desc *d, const float *x, const float *gamma,
                              const float *beta, float *running_mean, float *running_var,
                              float *y, float *save_mean, float *save_invstd, eq_err *err)
{
    s_bn b = {.d = d, .x = x, .gamma = gamma, .beta = beta, .rm = running_mean,
              .rv = running_var, .y = y, .save_mean = save_mean, .save_invstd = save_invstd};
    eq_cpu_for(ctx, s_nblocks(d->c), s_fwd_train_block, &b);
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
 * dgamma = sum(dy*(x-mu))*is, dbeta = sum(dy). */
static void s_bwd_block(void *vctx, size_t blk)
{
    const s_bn *b = vctx;
    const int64_t m = b->d->m, c = b->d->c, j0 = (int64_t)blk * S_CB;
    const int64_t nb = c - j0 < S_CB ? c - j0 : S_CB;
    double sdy[S_CB] = {0}, sdyx[S_CB] = {0}, mu[S_CB], k1[S_CB], k2[S_CB];
    for (int64_t j = 0; j < nb; j++) mu[j] = b->mean_in[j0 + j];
    for (int64_t i = 0; i < m; i++) {
        const float *xr = b->x + i * c + j0, *gr = b->dy + i * c + j0;
        for (int64_t j = 0; j < nb; j++) {
            sdy[j] += gr[j];
            sdyx[j] += (double)gr[j] * ((double)xr[j] - mu[j]);
        }
    }
    for (int64_t j = 0; j < nb; j++) {
        int64_t ch = j0 + j;
        double is = b->invstd_in[ch];
        if (b->dbeta) b->dbeta[ch] = (float)sdy[j];
        if (b->dgamma) b->dgamma[ch] = (float)(sdyx[j] * is);
        k1[j] = (b->gamma ? b->gamma[ch] : 1.0f) * is; /* scale */
        sdy[j] /= (double)m;                                /* mean(dy) */
        k2[j] = sdyx[j] / (double)m * is * is;              /* slope on (x - mu) */
    }
    for (int64_t i = 0; i < m; i++) {
        const float *xr = b->x + i * c + j0, *gr = b->dy + i * c + j0;
        float *o = b->dx + i * c + j0;
        for (int64_t j = 0; j < nb; j++)
            o[j] = (float)(k1[j] * ((double)gr[j] - sdy[j] - ((double)xr[j] - mu[j]) * k2[j]));
    }
}

eq_status eq_cpu_bn_bwd(void *ctx, const eq_bn_desc *d, const float *x, const float *dy,
                        const float *gamma, const float *save_mean, const float *save_invstd,
                        float *dx, float *dgamma, float *dbeta, eq_err *err)
{
    s_bn b = {.d = d, .x = x, .dy = dy, .gamma = gamma, .mean_in = save_mean,
              .invstd_in = save_invstd, .dx = dx, .dgamma = dgamma, .dbeta = dbeta};
    eq_cpu_for(ctx, s_nblocks(d->c), s_bwd_block, &b);
    return EQ_OK;
}
