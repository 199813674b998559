/*
 * trainer/cpu/norm.c -- batch normalisation over the rows of [M][C] (NHWC
 * activations flattened to rows), as torch.nn.BatchNorm2d.
 *
 * Statistics are two-pass (mean, then centred squares) with double
 * accumulators per channel; rows are visited in order, so results are
 * reproducible.  The workspace holds the accumulators.
 */
#include "trainer/cpu/cpu_internal.h"

#include <math.h>
#include <string.h>

static double *s_acc(eq_cpu *cpu, int64_t c, int nvec, const char *op, eq_err *err)
{
    double *a = (double *)eq_cpu_workspace(cpu, (size_t)c * (size_t)nvec * sizeof(double), op, err);
    if (a) memset(a, 0, (size_t)c * (size_t)nvec * sizeof(double));
    return a;
}

eq_status eq_cpu_bn_fwd_train(void *ctx, const eq_bn_desc *d, const float *x, const float *gamma,
                              const float *beta, float *running_mean, float *running_var,
                              float *y, float *save_mean, float *save_invstd, eq_err *err)
{
    const int64_t m = d->m, c = d->c;
    double *acc = s_acc(ctx, c, 2, "bn_fwd_train", err);
    if (!acc) return EQ_ERR_NOMEM;
    double *sum = acc, *sq = acc + c;
    for (int64_t i = 0; i < m; i++) {
        const float *xr = x + i * c;
        for (int64_t j = 0; j < c; j++) sum[j] += xr[j];
    }
    for (int64_t j = 0; j < c; j++) sum[j] /= (double)m; /* now the mean */
    for (int64_t i = 0; i < m; i++) {
        const float *xr = x + i * c;
        for (int64_t j = 0; j < c; j++) {
            double t = (double)xr[j] - sum[j];
            sq[j] += t * t;
        }
    }
    const double mom = d->momentum;
    for (int64_t j = 0; j < c; j++) {
        double var = sq[j] / (double)m;
        double invstd = 1.0 / sqrt(var + (double)d->eps);
        save_mean[j] = (float)sum[j];
        save_invstd[j] = (float)invstd;
        running_mean[j] = (float)((1.0 - mom) * running_mean[j] + mom * sum[j]);
        running_var[j] =
            (float)((1.0 - mom) * running_var[j] + mom * var * (double)m / (double)(m - 1));
        /* reuse the accumulators as the affine map y = x*a + b */
        double a = invstd * (gamma ? gamma[j] : 1.0f);
        sq[j] = (beta ? beta[j] : 0.0f) - sum[j] * a;
        sum[j] = a;
    }
    for (int64_t i = 0; i < m; i++) {
        const float *xr = x + i * c;
        float *yr = y + i * c;
        for (int64_t j = 0; j < c; j++) yr[j] = (float)(xr[j] * sum[j] + sq[j]);
    }
    return EQ_OK;
}

eq_status eq_cpu_bn_fwd_eval(void *ctx, const eq_bn_desc *d, const float *x, const float *gamma,
                             const float *beta, const float *running_mean,
                             const float *running_var, float *y, eq_err *err)
{
    const int64_t m = d->m, c = d->c;
    double *acc = s_acc(ctx, c, 2, "bn_fwd_eval", err);
    if (!acc) return EQ_ERR_NOMEM;
    double *sc = acc, *sh = acc + c;
    for (int64_t j = 0; j < c; j++) {
        double a = (gamma ? gamma[j] : 1.0f) / sqrt((double)running_var[j] + (double)d->eps);
        sc[j] = a;
        sh[j] = (beta ? beta[j] : 0.0f) - running_mean[j] * a;
    }
    for (int64_t i = 0; i < m; i++) {
        const float *xr = x + i * c;
        float *yr = y + i * c;
        for (int64_t j = 0; j < c; j++) yr[j] = (float)(xr[j] * sc[j] + sh[j]);
    }
    return EQ_OK;
}

eq_status eq_cpu_bn_bwd(void *ctx, const eq_bn_desc *d, const float *x, const float *dy,
                        const float *gamma, const float *save_mean, const float *save_invstd,
                        float *dx, float *dgamma, float *dbeta, eq_err *err)
{
    const int64_t m = d->m, c = d->c;
    double *acc = s_acc(ctx, c, 2, "bn_bwd", err);
    if (!acc) return EQ_ERR_NOMEM;
    double *sdy = acc, *sdyx = acc + c; /* sum dy, sum dy * (x - mean) */
    for (int64_t i = 0; i < m; i++) {
        const float *xr = x + i * c, *gr = dy + i * c;
        for (int64_t j = 0; j < c; j++) {
            sdy[j] += gr[j];
            sdyx[j] += (double)gr[j] * ((double)xr[j] - save_mean[j]);
        }
    }
    for (int64_t j = 0; j < c; j++) {
        if (dbeta) dbeta[j] = (float)sdy[j];
        if (dgamma) dgamma[j] = (float)(sdyx[j] * save_invstd[j]);
    }
    /* dx = g*is*(dy - mean(dy) - (x-mu)*is^2*mean(dy*(x-mu))) */
    for (int64_t j = 0; j < c; j++) {
        double is = save_invstd[j];
        sdy[j] /= (double)m;
        sdyx[j] = sdyx[j] / (double)m * is * is;
    }
    for (int64_t i = 0; i < m; i++) {
        const float *xr = x + i * c, *gr = dy + i * c;
        float *o = dx + i * c;
        for (int64_t j = 0; j < c; j++) {
            double g = (gamma ? gamma[j] : 1.0f) * (double)save_invstd[j];
            o[j] = (float)(g * ((double)gr[j] - sdy[j] - ((double)xr[j] - save_mean[j]) * sdyx[j]));
        }
    }
    return EQ_OK;
}
