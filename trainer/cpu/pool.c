/*
 * trainer/cpu/pool.c -- max and average pooling, NHWC, as PyTorch's CPU
 * kernels (window bounds, tie-breaking, divisors).  Windows are walked
 * row by row and each window position updates a whole run of C channels.
 * Forward: one output row per index of eq_cpu_for; backward (overlapping
 * windows scatter): one image per index.
 */
#include "trainer/cpu/cpu_internal.h"

#include <math.h>
#include <string.h>

/* Window of output (p, q): [h0, h1) x [w0, w1) clipped to the input; `div`
 * is the average-pool divisor. */
typedef struct s_win {
    int64_t h0, h1, w0, w1, div;
} s_win;

static s_win s_window(const eq_pool2d_desc *d, int64_t p, int64_t q)
{
    s_win w;
    int64_t h0 = p * d->stride_h - d->pad_h, w0 = q * d->stride_w - d->pad_w;
    int64_t h1 = h0 + d->kh, w1 = w0 + d->kw;
    /* window clipped to the padded input (PyTorch's pool_size) */
    if (h1 > d->h + d->pad_h) h1 = d->h + d->pad_h;
    if (w1 > d->w + d->pad_w) w1 = d->w + d->pad_w;
    int64_t padded = (h1 - h0) * (w1 - w0);
    if (h0 < 0) h0 = 0;
    if (w0 < 0) w0 = 0;
    if (h1 > d->h) h1 = d->h;
    if (w1 > d->w) w1 = d->w;
    w.h0 = h0;
    w.h1 = h1;
    w.w0 = w0;
    w.w1 = w1;
    w.div = d->count_include_pad ? padded : (h1 - h0) * (w1 - w0);
    return w;
}

typedef struct s_pool {
    const eq_pool2d_desc *d;
    const float *x, *dy;
    const int32_t *am_in;
    float *y, *dx;
    int32_t *am;
} s_pool;

/* One output row (image i / P, row i % P) per index. */
static void s_maxpool_fwd_row(void *vctx, size_t i)
{
    const s_pool *t = vctx;
    const eq_pool2d_desc *d = t->d;
    const int64_t c = d->c, n = (int64_t)i / d->p, p = (int64_t)i % d->p;
    const float *xn = t->x + n * d->h * d->w * c;
    for (int64_t q = 0; q < d->q; q++) {
        s_win w = s_window(d, p, q);
        int64_t o = ((n * d->p + p) * d->q + q) * c;
        float *yo = t->y + o;
        int32_t *ao = t->am + o;
        int32_t first = (int32_t)(w.h0 * d->w + w.w0);
        for (int64_t j = 0; j < c; j++) {
            yo[j] = -INFINITY;
            ao[j] = first;
        }
        for (int64_t ih = w.h0; ih < w.h1; ih++)
            for (int64_t iw = w.w0; iw < w.w1; iw++) {
                const float *xr = xn + (ih * d->w + iw) * c;
                int32_t pos = (int32_t)(ih * d->w + iw);
                for (int64_t j = 0; j < c; j++)
                    if (xr[j] > yo[j] || isnan(xr[j])) {
                        yo[j] = xr[j];
                        ao[j] = pos;
                    }
            }
    }
}

eq_status eq_cpu_maxpool_fwd(void *ctx, const eq_pool2d_desc *d, const float *x, float *y,
                             int32_t *argmax, eq_err *err)
{
    s_pool t = {.d = d, .x = x, .y = y, .am = argmax};
    eq_cpu_for(ctx, (size_t)(d->n * d->p), s_maxpool_fwd_row, &t);
    return EQ_OK;
}

/* One image per index (windows of an image overlap). */
static void s_maxpool_bwd_image(void *vctx, size_t i)
{
    const s_pool *t = vctx;
    const eq_pool2d_desc *d = t->d;
    const int64_t c = d->c, hw = d->h * d->w, n = (int64_t)i;
    float *dxn = t->dx + n * hw * c;
    for (int64_t o = 0; o < d->p * d->q; o++) {
        int64_t base = (n * d->p * d->q + o) * c;
        for (int64_t j = 0; j < c; j++) dxn[(int64_t)t->am_in[base + j] * c + j] += t->dy[base + j];
    }
}

eq_status eq_cpu_maxpool_bwd(void *ctx, const eq_pool2d_desc *d, const int32_t *argmax,
                             const float *dy, float *dx, eq_err *err)
{
    const int64_t hw = d->h * d->w, total = d->n * d->p * d->q * d->c;
    for (int64_t i = 0; i < total; i++)
        if (argmax[i] < 0 || argmax[i] >= hw)
            return eq_err_set(err, EQ_ERR_INVALID,
                              "maxpool_bwd: argmax[%lld] = %d outside the %lldx%lld input",
                              (long long)i, (int)argmax[i], (long long)d->h, (long long)d->w);
    memset(dx, 0, (size_t)(d->n * hw * d->c) * sizeof(float));
    s_pool t = {.d = d, .dy = dy, .am_in = argmax, .dx = dx};
    eq_cpu_for(ctx, (size_t)d->n, s_maxpool_bwd_image, &t);
    return EQ_OK;
}

#define S_CB 64

static void s_avgpool_fwd_row(void *vctx, size_t i)
{
    const s_pool *t = vctx;
    const eq_pool2d_desc *d = t->d;
    const int64_t c = d->c, n = (int64_t)i / d->p, p = (int64_t)i % d->p;
    const float *xn = t->x + n * d->h * d->w * c;
    double acc[S_CB];
    for (int64_t q = 0; q < d->q; q++) {
        s_win w = s_window(d, p, q);
        float *yo = t->y + ((n * d->p + p) * d->q + q) * c;
        for (int64_t j0 = 0; j0 < c; j0 += S_CB) {
            int64_t nb = c - j0 < S_CB ? c - j0 : S_CB;
            for (int64_t j = 0; j < nb; j++) acc[j] = 0.0;
            for (int64_t ih = w.h0; ih < w.h1; ih++)
                for (int64_t iw = w.w0; iw < w.w1; iw++) {
                    const float *xr = xn + (ih * d->w + iw) * c + j0;
                    for (int64_t j = 0; j < nb; j++) acc[j] += xr[j];
                }
            for (int64_t j = 0; j < nb; j++) yo[j0 + j] = (float)(acc[j] / (double)w.div);
        }
    }
}

eq_status eq_cpu_avgpool_fwd(void *ctx, const eq_pool2d_desc *d, const float *x, float *y,
                             eq_err *err)
{
    s_pool t = {.d = d, .x = x, .y = y};
    eq_cpu_for(ctx, (size_t)(d->n * d->p), s_avgpool_fwd_row, &t);
    return EQ_OK;
}

static void s_avgpool_bwd_image(void *vctx, size_t i)
{
    const s_pool *t = vctx;
    const eq_pool2d_desc *d = t->d;
    const int64_t c = d->c, n = (int64_t)i;
    float *dxn = t->dx + n * d->h * d->w * c;
    for (int64_t p = 0; p < d->p; p++)
        for (int64_t q = 0; q < d->q; q++) {
            s_win w = s_window(d, p, q);
            const float *g = t->dy + ((n * d->p + p) * d->q + q) * c;
            float inv = (float)(1.0 / (double)w.div);
            for (int64_t ih = w.h0; ih < w.h1; ih++)
                for (int64_t iw = w.w0; iw < w.w1; iw++) {
                    float *o = dxn + (ih * d->w + iw) * c;
                    for (int64_t j = 0; j < c; j++) o[j] += g[j] * inv;
                }
        }
}

eq_status eq_cpu_avgpool_bwd(void *ctx, const eq_pool2d_desc *d, const float *dy, float *dx,
                             eq_err *err)
{
    memset(dx, 0, (size_t)(d->n * d->h * d->w * d->c) * sizeof(float));
    s_pool t = {.d = d, .dy = dy, .dx = dx};
    eq_cpu_for(ctx, (size_t)d->n, s_avgpool_bwd_image, &t);
    return EQ_OK;
}
