/*
 * trainer/cpu/ops.c -- elementwise ops, global average pooling, linear
 * layers and the softmax cross-entropy loss on the CPU backend.
 * Reductions accumulate in double, in index order (reproducible).
 */
#include "trainer/cpu/cpu_internal.h"

#include <math.h>
#include <string.h>

eq_status eq_cpu_relu_fwd(void *ctx, size_t n, const float *x, float *y, eq_err *err)
{
    for (size_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
    return EQ_OK;
}

eq_status eq_cpu_relu_bwd(void *ctx, size_t n, const float *y, const float *dy, float *dx,
                          eq_err *err)
{
    for (size_t i = 0; i < n; i++) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
    return EQ_OK;
}

eq_status eq_cpu_prelu_fwd(void *ctx, int64_t m, int64_t c, int64_t nslope, const float *x,
                           const float *slope, float *y, eq_err *err)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < c; j++) {
            float v = x[i * c + j], a = slope[nslope == 1 ? 0 : j];
            y[i * c + j] = v > 0.0f ? v : a * v;
        }
    return EQ_OK;
}

eq_status eq_cpu_prelu_bwd(void *ctx, int64_t m, int64_t c, int64_t nslope, const float *x,
                           const float *slope, const float *dy, float *dx, float *dslope,
                           eq_err *err)
{
    double *acc = (double *)eq_cpu_workspace(ctx, (size_t)c * sizeof(double), "prelu_bwd", err);
    if (!acc) return EQ_ERR_NOMEM;
    memset(acc, 0, (size_t)c * sizeof(double));
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < c; j++) {
            float v = x[i * c + j], g = dy[i * c + j], a = slope[nslope == 1 ? 0 : j];
            if (v > 0.0f) {
                dx[i * c + j] = g;
            } else {
                dx[i * c + j] = a * g;
                acc[j] += (double)g * (double)v;
            }
        }
    if (nslope == 1) {
        double t = 0.0;
        for (int64_t j = 0; j < c; j++) t += acc[j];
        dslope[0] = (float)t;
    } else {
        for (int64_t j = 0; j < c; j++) dslope[j] = (float)acc[j];
    }
    return EQ_OK;
}

eq_status eq_cpu_add(void *ctx, size_t n, const float *a, const float *b, float *y, eq_err *err)
{
    for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
    return EQ_OK;
}

eq_status eq_cpu_gap_fwd(void *ctx, int64_t n, int64_t hw, int64_t c, const float *x, float *y,
                         eq_err *err)
{
    double *acc = (double *)eq_cpu_workspace(ctx, (size_t)c * sizeof(double), "gap_fwd", err);
    if (!acc) return EQ_ERR_NOMEM;
    for (int64_t b = 0; b < n; b++) {
        memset(acc, 0, (size_t)c * sizeof(double));
        const float *xb = x + b * hw * c;
        for (int64_t i = 0; i < hw; i++)
            for (int64_t j = 0; j < c; j++) acc[j] += xb[i * c + j];
        for (int64_t j = 0; j < c; j++) y[b * c + j] = (float)(acc[j] / (double)hw);
    }
    return EQ_OK;
}

eq_status eq_cpu_gap_bwd(void *ctx, int64_t n, int64_t hw, int64_t c, const float *dy, float *dx,
                         eq_err *err)
{
    const float inv = (float)(1.0 / (double)hw);
    for (int64_t b = 0; b < n; b++)
        for (int64_t i = 0; i < hw; i++)
            for (int64_t j = 0; j < c; j++) dx[(b * hw + i) * c + j] = dy[b * c + j] * inv;
    return EQ_OK;
}

eq_status eq_cpu_linear_fwd(void *ctx, int64_t n, int64_t in, int64_t out, const float *x,
                            const float *w, const float *b, float *y, eq_err *err)
{
    eq_cpu_sgemm(ctx, 0, 1, (int)n, (int)out, (int)in, 1.0f, x, (int)in, w, (int)in, 0.0f, y,
                 (int)out);
    if (b)
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < out; j++) y[i * out + j] += b[j];
    return EQ_OK;
}

eq_status eq_cpu_linear_bwd_data(void *ctx, int64_t n, int64_t in, int64_t out, const float *dy,
                                 const float *w, float *dx, eq_err *err)
{
    eq_cpu_sgemm(ctx, 0, 0, (int)n, (int)in, (int)out, 1.0f, dy, (int)out, w, (int)in, 0.0f, dx,
                 (int)in);
    return EQ_OK;
}

eq_status eq_cpu_linear_bwd_weight(void *ctx, int64_t n, int64_t in, int64_t out,
                                   const float *x, const float *dy, float *dw, float *db,
                                   eq_err *err)
{
    eq_cpu_sgemm(ctx, 1, 0, (int)out, (int)in, (int)n, 1.0f, dy, (int)out, x, (int)in, 0.0f, dw,
                 (int)in);
    if (db) {
        double *acc = (double *)eq_cpu_workspace(ctx, (size_t)out * sizeof(double),
                                                 "linear_bwd_weight", err);
        if (!acc) return EQ_ERR_NOMEM;
        memset(acc, 0, (size_t)out * sizeof(double));
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < out; j++) acc[j] += dy[i * out + j];
        for (int64_t j = 0; j < out; j++) db[j] = (float)acc[j];
    }
    return EQ_OK;
}

/* ---- softmax cross-entropy ------------------------------------------------
 * Per row: lse = log sum exp z, log p_k = z_k - lse.  With smoothing e the
 * loss against label y is (1-e)(-log p_y) + e * mean_k(-log p_k); mixup
 * weighs the rows' losses against labels_a and labels_b by lambda and
 * 1-lambda.  Gradient w.r.t. z: (p - t) / N, t the lambda-mix of the two
 * smoothed one-hot targets. */

static eq_status s_labels_ok(const eq_xent_desc *d, const int32_t *la, const int32_t *lb,
                             const char *op, eq_err *err)
{
    for (int64_t i = 0; i < d->n; i++) {
        if (la[i] < 0 || la[i] >= d->k)
            return eq_err_set(err, EQ_ERR_INVALID, "%s: labels_a[%lld] = %d outside [0, %lld)", op,
                              (long long)i, (int)la[i], (long long)d->k);
        if (lb && (lb[i] < 0 || lb[i] >= d->k))
            return eq_err_set(err, EQ_ERR_INVALID, "%s: labels_b[%lld] = %d outside [0, %lld)", op,
                              (long long)i, (int)lb[i], (long long)d->k);
    }
    return EQ_OK;
}

static double s_lse(const float *z, int64_t k, double *sum_logits)
{
    double mx = z[0], s = 0.0, sz = 0.0;
    for (int64_t j = 1; j < k; j++)
        if (z[j] > mx) mx = z[j];
    for (int64_t j = 0; j < k; j++) {
        s += exp((double)z[j] - mx);
        sz += z[j];
    }
    *sum_logits = sz;
    return mx + log(s);
}

eq_status eq_cpu_xent_fwd(void *ctx, const eq_xent_desc *d, const float *logits,
                          const int32_t *labels_a, const int32_t *labels_b, const float *lambda,
                          float *loss, eq_err *err)
{
    eq_status st = s_labels_ok(d, labels_a, labels_b, "xent_fwd", err);
    if (st != EQ_OK) return st;
    const int64_t k = d->k;
    const double e = d->smoothing;
    double total = 0.0;
    for (int64_t i = 0; i < d->n; i++) {
        const float *z = logits + i * k;
        double sz, lse = s_lse(z, k, &sz);
        double smooth = lse - sz / (double)k; /* mean_k(-log p_k) */
        double la = (1.0 - e) * (lse - z[labels_a[i]]) + e * smooth;
        if (labels_b) {
            double lb = (1.0 - e) * (lse - z[labels_b[i]]) + e * smooth;
            total += (double)lambda[i] * la + (1.0 - (double)lambda[i]) * lb;
        } else {
            total += la;
        }
    }
    *loss = (float)(total / (double)d->n);
    return EQ_OK;
}

eq_status eq_cpu_xent_bwd(void *ctx, const eq_xent_desc *d, const float *logits,
                          const int32_t *labels_a, const int32_t *labels_b, const float *lambda,
                          float dloss, float *dlogits, eq_err *err)
{
    eq_status st = s_labels_ok(d, labels_a, labels_b, "xent_bwd", err);
    if (st != EQ_OK) return st;
    const int64_t k = d->k;
    const double e = d->smoothing, scale = (double)dloss / (double)d->n;
    for (int64_t i = 0; i < d->n; i++) {
        const float *z = logits + i * k;
        float *g = dlogits + i * k;
        double sz, lse = s_lse(z, k, &sz);
        double lam = labels_b ? (double)lambda[i] : 1.0;
        for (int64_t j = 0; j < k; j++) {
            double t = e / (double)k;
            if (j == labels_a[i]) t += (1.0 - e) * lam;
            if (labels_b && j == labels_b[i]) t += (1.0 - e) * (1.0 - lam);
            g[j] = (float)(scale * (exp((double)z[j] - lse) - t));
        }
    }
    return EQ_OK;
}
