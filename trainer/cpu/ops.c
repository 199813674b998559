/*
 * trainer/cpu/ops.c -- elementwise ops, global average pooling, linear
 * layers and the softmax cross-entropy loss on the CPU backend.
 * Reductions accumulate in double, in index order, and work is split so
 * that no sum depends on the thread count (reproducible).
 */
#include "trainer/cpu/cpu_internal.h"

#include <math.h>
#include <string.h>

/* Elementwise ops run in chunks of S_CHUNK elements, one per index. */
#define S_CHUNK ((size_t)1 << 14)

typedef struct s_ew {
    size_t n;
    float lo, hi;
    int64_t c, nslope;
    const float *a, *b, *slope;
    float *y;
} s_ew;

static size_t s_chunks(size_t n)
{
    return (n + S_CHUNK - 1) / S_CHUNK;
}

#define S_CHUNK_BOUNDS(e, i, lo, hi)                       \
    size_t lo = (i) * S_CHUNK;                             \
    size_t hi = lo + S_CHUNK < (e)->n ? lo + S_CHUNK : (e)->n

/* ReLU forward/backward and add are the most frequent passes of a thin
 * network's step.  GCC will not if-convert the scalar selects under
 * -ftrapping-math (the default), so they run on 4-float vectors (GCC/clang
 * vector extensions: SSE2 on plain x86-64, NEON on arm64) with a scalar
 * tail.  Bit-identical to the scalar forms: the compare mask is all ones
 * exactly where `v > 0` holds (false for NaN), and AND with an all-zero
 * mask gives +0. */
typedef float s_v4f __attribute__((vector_size(16)));
typedef int32_t s_v4i __attribute__((vector_size(16)));

static inline s_v4f s_ld4(const float *p)
{
    s_v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void s_st4(float *p, s_v4f v)
{
    memcpy(p, &v, sizeof v);
}

static void s_relu_chunk(void *vctx, size_t i)
{
    const s_ew *e = vctx;
    S_CHUNK_BOUNDS(e, i, lo, hi);
    const float *x = e->a;
    float *y = e->y;
    const s_v4f zero = {0};
    size_t k = lo;
    for (; k + 4 <= hi; k += 4) {
        s_v4f v = s_ld4(x + k);
        s_st4(y + k, (s_v4f)((s_v4i)v & ~(v <= zero))); /* NaN kept, as torch */
    }
    for (; k < hi; k++) y[k] = x[k] <= 0.0f ? 0.0f : x[k];
}

eq_status eq_cpu_relu_fwd(void *ctx, size_t n, const float *x, float *y, eq_err *err)
{
    s_ew e = {.n = n, .a = x, .y = y};
    eq_cpu_for(ctx, s_chunks(n), s_relu_chunk, &e);
    return EQ_OK;
}

/* a = forward output, b = dy */
static void s_relu_bwd_chunk(void *vctx, size_t i)
{
    const s_ew *e = vctx;
    S_CHUNK_BOUNDS(e, i, lo, hi);
    const float *y = e->a, *dy = e->b;
    float *dx = e->y;
    const s_v4f zero = {0};
    size_t k = lo;
    for (; k + 4 <= hi; k += 4) {
        s_v4f v = s_ld4(y + k), g = s_ld4(dy + k);
        s_st4(dx + k, (s_v4f)((s_v4i)g & ~(v <= zero)));
    }
    for (; k < hi; k++) dx[k] = y[k] <= 0.0f ? 0.0f : dy[k];
}

eq_status eq_cpu_relu_bwd(void *ctx, size_t n, const float *y, const float *dy, float *dx,
                          eq_err *err)
{
    s_ew e = {.n = n, .a = y, .b = dy, .y = dx};
    eq_cpu_for(ctx, s_chunks(n), s_relu_bwd_chunk, &e);
    return EQ_OK;
}

static void s_clamp_chunk(void *vctx, size_t i)
{
    const s_ew *e = vctx;
    S_CHUNK_BOUNDS(e, i, lo, hi);
    for (size_t k = lo; k < hi; k++) {
        float v = e->a[k];
        e->y[k] = v < e->lo ? e->lo : v > e->hi ? e->hi : v; /* NaN stays NaN */
    }
}

eq_status eq_cpu_clamp_fwd(void *ctx, size_t n, float lo, float hi, const float *x, float *y,
                           eq_err *err)
{
    s_ew e = {.n = n, .lo = lo, .hi = hi, .a = x, .y = y};
    eq_cpu_for(ctx, s_chunks(n), s_clamp_chunk, &e);
    return EQ_OK;
}

/* a = forward output, b = dy */
static void s_clamp_bwd_chunk(void *vctx, size_t i)
{
    const s_ew *e = vctx;
    S_CHUNK_BOUNDS(e, i, lo, hi);
    for (size_t k = lo; k < hi; k++) e->y[k] = e->a[k] > e->lo && e->a[k] < e->hi ? e->b[k] : 0.0f;
}

eq_status eq_cpu_clamp_bwd(void *ctx, size_t n, float lo, float hi, const float *y,
                           const float *dy, float *dx, eq_err *err)
{
    s_ew e = {.n = n, .lo = lo, .hi = hi, .a = y, .b = dy, .y = dx};
    eq_cpu_for(ctx, s_chunks(n), s_clamp_bwd_chunk, &e);
    return EQ_OK;
}

static void s_add_chunk(void *vctx, size_t i)
{
    const s_ew *e = vctx;
    S_CHUNK_BOUNDS(e, i, lo, hi);
    const float *a = e->a, *b = e->b;
    float *y = e->y;
    size_t k = lo;
    for (; k + 4 <= hi; k += 4) s_st4(y + k, s_ld4(a + k) + s_ld4(b + k));
    for (; k < hi; k++) y[k] = a[k] + b[k];
}

eq_status eq_cpu_add(void *ctx, size_t n, const float *a, const float *b, float *y, eq_err *err)
{
    s_ew e = {.n = n, .a = a, .b = b, .y = y};
    eq_cpu_for(ctx, s_chunks(n), s_add_chunk, &e);
    return EQ_OK;
}

static void s_prelu_chunk(void *vctx, size_t i)
{
    const s_ew *e = vctx;
    S_CHUNK_BOUNDS(e, i, lo, hi);
    for (size_t k = lo; k < hi; k++) {
        float v = e->a[k], a = e->slope[e->nslope == 1 ? 0 : (int64_t)(k % (size_t)e->c)];
        e->y[k] = v > 0.0f ? v : a * v;
    }
}

/* ---- scalar affine --------------------------------------------------------- */

typedef struct s_saff {
    size_t n;
    const float *x, *dy;
    float a, b;
    int nobias; /* forward without a bias: y = x * a (-0 stays -0) */
    float *y;
    double *part; /* [chunks][2]: sum(dy*x), sum(dy) */
} s_saff;

static void s_saff_chunk(void *vctx, size_t i)
{
    const s_saff *e = vctx;
    S_CHUNK_BOUNDS(e, i, lo, hi);
    if (e->nobias) /* x * a alone: -0 stays -0 (torch's x * scale) */
        for (size_t k = lo; k < hi; k++) e->y[k] = e->x[k] * e->a;
    else
        for (size_t k = lo; k < hi; k++) e->y[k] = e->x[k] * e->a + e->b;
}

eq_status eq_cpu_scalar_affine_fwd(void *ctx, size_t n, const float *x, const float *scale,
                                   const float *bias, float *y, eq_err *err)
{
    s_saff e = {.n = n, .x = x, .a = scale ? scale[0] : 1.0f, .b = bias ? bias[0] : 0.0f, .y = y,
                .nobias = !bias};
    eq_cpu_for(ctx, s_chunks(n), s_saff_chunk, &e);
    return EQ_OK;
}

/* dx (when y is set) and the chunk's partial sums (when part is set). */
static void s_saff_bwd_chunk(void *vctx, size_t i)
{
    const s_saff *e = vctx;
    S_CHUNK_BOUNDS(e, i, lo, hi);
    if (e->part) {
        double sx = 0, s1 = 0;
        for (size_t k = lo; k < hi; k++) {
            if (e->x) sx += (double)e->dy[k] * (double)e->x[k];
            s1 += (double)e->dy[k];
        }
        e->part[2 * i] = sx, e->part[2 * i + 1] = s1;
    }
    if (e->y)
        for (size_t k = lo; k < hi; k++) e->y[k] = e->dy[k] * e->a;
}

eq_status eq_cpu_scalar_affine_bwd(void *ctx, size_t n, const float *x, const float *dy,
                                   const float *scale, float *dx, float *dscale, float *dbias,
                                   eq_err *err)
{
    size_t nc = s_chunks(n);
    s_saff e = {.n = n, .x = dscale ? x : NULL, .dy = dy, .a = scale ? scale[0] : 1.0f, .y = dx};
    if ((dscale || dbias) && nc) {
        e.part = (double *)eq_cpu_workspace(ctx, nc * 2 * sizeof(double), "scalar_affine_bwd", err);
        if (!e.part) return EQ_ERR_NOMEM;
    }
    eq_cpu_for(ctx, nc, s_saff_bwd_chunk, &e);
    double sx = 0, s1 = 0;
    for (size_t i = 0; e.part && i < nc; i++) sx += e.part[2 * i], s1 += e.part[2 * i + 1];
    if (dscale) dscale[0] = (float)sx;
    if (dbias) dbias[0] = (float)s1;
    return EQ_OK;
}

eq_status eq_cpu_prelu_fwd(void *ctx, int64_t m, int64_t c, int64_t nslope, const float *x,
                           const float *slope, float *y, eq_err *err)
{
    s_ew e = {.n = (size_t)(m * c), .c = c, .nslope = nslope, .a = x, .slope = slope, .y = y};
    eq_cpu_for(ctx, s_chunks(e.n), s_prelu_chunk, &e);
    return EQ_OK;
}

/* PReLU backward by blocks of S_CB channels (each walks all rows, in
 * order); per-channel sums land in acc, summed over channels afterwards
 * when one slope is shared. */
#define S_CB 16

typedef struct s_prelu_bwd {
    int64_t m, c, nslope;
    const float *x, *slope, *dy;
    float *dx;
    double *acc;
} s_prelu_bwd;

static void s_prelu_bwd_block(void *vctx, size_t blk)
{
    const s_prelu_bwd *p = vctx;
    const int64_t c = p->c, j0 = (int64_t)blk * S_CB, nb = c - j0 < S_CB ? c - j0 : S_CB;
    double acc[S_CB] = {0};
    float a[S_CB];
    for (int64_t j = 0; j < nb; j++) a[j] = p->slope[p->nslope == 1 ? 0 : j0 + j];
    for (int64_t i = 0; i < p->m; i++) {
        const float *xr = p->x + i * c + j0, *gr = p->dy + i * c + j0;
        float *o = p->dx + i * c + j0;
        for (int64_t j = 0; j < nb; j++) {
            float v = xr[j], g = gr[j];
            if (v > 0.0f) {
                o[j] = g;
            } else {
                o[j] = a[j] * g;
                acc[j] += (double)g * (double)v;
            }
        }
    }
    for (int64_t j = 0; j < nb; j++) p->acc[j0 + j] = acc[j];
}

eq_status eq_cpu_prelu_bwd(void *ctx, int64_t m, int64_t c, int64_t nslope, const float *x,
                           const float *slope, const float *dy, float *dx, float *dslope,
                           eq_err *err)
{
    double *acc = (double *)eq_cpu_workspace(ctx, (size_t)c * sizeof(double), "prelu_bwd", err);
    if (!acc) return EQ_ERR_NOMEM;
    s_prelu_bwd p = {.m = m, .c = c, .nslope = nslope, .x = x, .slope = slope, .dy = dy,
                     .dx = dx, .acc = acc};
    eq_cpu_for(ctx, (size_t)((c + S_CB - 1) / S_CB), s_prelu_bwd_block, &p);
    if (nslope == 1) {
        double t = 0.0;
        for (int64_t j = 0; j < c; j++) t += acc[j];
        dslope[0] = (float)t;
    } else {
        for (int64_t j = 0; j < c; j++) dslope[j] = (float)acc[j];
    }
    return EQ_OK;
}

/* Global average pooling: one (image, channel block) per index. */
typedef struct s_gap {
    int64_t hw, c;
    const float *in;
    float *out;
} s_gap;

static void s_gap_fwd_block(void *vctx, size_t i)
{
    const s_gap *g = vctx;
    const int64_t nblk = (g->c + S_CB - 1) / S_CB, b = (int64_t)i / nblk;
    const int64_t j0 = ((int64_t)i % nblk) * S_CB, nb = g->c - j0 < S_CB ? g->c - j0 : S_CB;
    double acc[S_CB] = {0};
    const float *xb = g->in + b * g->hw * g->c + j0;
    for (int64_t r = 0; r < g->hw; r++)
        for (int64_t j = 0; j < nb; j++) acc[j] += xb[r * g->c + j];
    for (int64_t j = 0; j < nb; j++) g->out[b * g->c + j0 + j] = (float)(acc[j] / (double)g->hw);
}

eq_status eq_cpu_gap_fwd(void *ctx, int64_t n, int64_t hw, int64_t c, const float *x, float *y,
                         eq_err *err)
{
    s_gap g = {.hw = hw, .c = c, .in = x, .out = y};
    eq_cpu_for(ctx, (size_t)(n * ((c + S_CB - 1) / S_CB)), s_gap_fwd_block, &g);
    return EQ_OK;
}

static void s_gap_bwd_image(void *vctx, size_t i)
{
    const s_gap *g = vctx;
    const float inv = (float)(1.0 / (double)g->hw);
    const float *gy = g->in + (int64_t)i * g->c;
    float *o = g->out + (int64_t)i * g->hw * g->c;
    for (int64_t r = 0; r < g->hw; r++)
        for (int64_t j = 0; j < g->c; j++) o[r * g->c + j] = gy[j] * inv;
}

eq_status eq_cpu_gap_bwd(void *ctx, int64_t n, int64_t hw, int64_t c, const float *dy, float *dx,
                         eq_err *err)
{
    s_gap g = {.hw = hw, .c = c, .in = dy, .out = dx};
    eq_cpu_for(ctx, (size_t)n, s_gap_bwd_image, &g);
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

/* ---- optimiser updates ---------------------------------------------------
 * Float arithmetic in PyTorch's operation order (its CPU kernels work in
 * the parameter's dtype), chunked like the elementwise ops. */

typedef struct s_opt {
    size_t n;
    const eq_sgd_params *sgd;
    const eq_adam_params *adam;
    float *p, *buf, *mu, *nu;
    const float *g;
    float c1, c2s; /* Adam: lr / (1 - b1^t), sqrt(1 - b2^t) */
} s_opt;

static void s_sgd_chunk(void *vctx, size_t i)
{
    const s_opt *o = vctx;
    const eq_sgd_params *h = o->sgd;
    S_CHUNK_BOUNDS(o, i, lo, hi);
    for (size_t k = lo; k < hi; k++) {
        float g = o->g[k];
        if (h->weight_decay != 0.0f) g = g + h->weight_decay * o->p[k];
        float step = g;
        if (h->momentum != 0.0f) {
            float b = h->first ? g : h->momentum * o->buf[k] + (1.0f - h->dampening) * g;
            o->buf[k] = b;
            step = h->nesterov ? g + h->momentum * b : b;
        }
        o->p[k] = o->p[k] - h->lr * step;
    }
}

eq_status eq_cpu_sgd_step(void *ctx, size_t n, const eq_sgd_params *hp, float *param,
                          const float *grad, float *buf, eq_err *err)
{
    s_opt o = {.n = n, .sgd = hp, .p = param, .g = grad, .buf = buf};
    eq_cpu_for(ctx, s_chunks(n), s_sgd_chunk, &o);
    return EQ_OK;
}

static void s_adam_chunk(void *vctx, size_t i)
{
    const s_opt *o = vctx;
    const eq_adam_params *h = o->adam;
    S_CHUNK_BOUNDS(o, i, lo, hi);
    for (size_t k = lo; k < hi; k++) {
        float g = o->g[k];
        if (h->weight_decay != 0.0f) g = g + h->weight_decay * o->p[k];
        float m = o->mu[k] * h->beta1 + (1.0f - h->beta1) * g;
        float v = o->nu[k] * h->beta2 + (1.0f - h->beta2) * g * g;
        o->mu[k] = m;
        o->nu[k] = v;
        float denom = sqrtf(v) / o->c2s + h->eps;
        o->p[k] = o->p[k] - o->c1 * (m / denom);
    }
}

eq_status eq_cpu_adam_step(void *ctx, size_t n, const eq_adam_params *hp, float *param,
                           const float *grad, float *mu, float *nu, eq_err *err)
{
    double t = (double)hp->step;
    s_opt o = {.n = n, .adam = hp, .p = param, .g = grad, .mu = mu, .nu = nu};
    o.c1 = (float)((double)hp->lr / (1.0 - pow((double)hp->beta1, t)));
    o.c2s = (float)sqrt(1.0 - pow((double)hp->beta2, t));
    eq_cpu_for(ctx, s_chunks(n), s_adam_chunk, &o);
    return EQ_OK;
}
