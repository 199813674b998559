/*
 * quant/lsq.c -- the original's "LSQ": a learnable clip value (TET-style
 * re-parameterisation of LSQ), ORIGINAL.md §2.8.
 *
 * c = GradientScale(|clip_val|, f) per group, n = level_num - 1, r = x/c:
 *   half range (fm/ot default): y = c * q_n(clip_[0,1](r))
 *   full range (always for wt): y = c * (2 q_n((clip_[-1,1](r) + 1)/2) - 1)
 * q_n(u) = R(u n)/n with STE.  The clamp is ClampWithScale when grad_type is
 * STE-scale (gradient times sqrt(N/p), p = elements inside the range).
 * dL/dclip_val = f' sign(clip_val) sum_group G dy/dc with dy/dc = q - r
 * inside (half) or (2q - 1) - r (full), the clamp bound's value outside;
 * f' = f unless the original's int(f) == 1 quirk skips it.
 */
#include "quant/quant_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct s_lsq {
    float fe;      /* effective grad factor on the clip value */
    float sc;      /* effective STE-scale factor of the clamp (1: none) */
    double *acc;   /* [g] */
    float *clr;    /* [g] effective clip value per group */
} s_lsq;

static int s_half(const eq_quant *q) { return q->o.tag != EQ_QTAG_WT && q->o.half_range; }

static eq_status s_init(eq_quant *q, eq_err *err)
{
    if (q->o.tag != EQ_QTAG_WT && q->g != 1 && q->g != q->channels)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "quant option quant_group: lsq on %s needs 1 or %lld groups (a clip of "
                          "shape (1,%lld,1,1) does not broadcast)",
                          eq_quant_tag_name(q->o.tag), (long long)q->channels, (long long)q->g);
    if (q->o.grad_type != EQ_QGRAD_NONE && q->o.grad_type != EQ_QGRAD_STE_SCALE)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "quant option grad_type: lsq supports none or STE-scale");
    s_lsq *p = calloc(1, sizeof *p);
    if (p) p->acc = calloc((size_t)q->g, sizeof(double));
    if (p) p->clr = calloc((size_t)q->g, sizeof(float));
    q->priv = p;
    if (!p || !p->acc || !p->clr) return eq_err_set(err, EQ_ERR_NOMEM, "lsq: out of memory");
    int64_t shp[4];
    int nd = eq_quant_param_shape(q, q->g, shp);
    if (!eq_quant_add_tensor(q, "clip_val", nd, shp, (float)q->o.boundary, 1, err))
        return err ? err->code : EQ_ERR_NOMEM;
    return EQ_OK;
}

static void s_destroy(eq_quant *q)
{
    s_lsq *p = q->priv;
    if (p) {
        free(p->acc);
        free(p->clr);
    }
    free(p);
    q->priv = NULL;
}

static inline float s_clip(const eq_quant *q, int64_t k, float fe)
{
    const eq_quant_tensor *c = q->clip;
    return eq_quant_gs_value(fabsf(c->data[c->numel == 1 ? 0 : k]), fe);
}

typedef struct s_io {
    const float *x, *gy;
    float *y, *gx;
    float lo, n;
    int half;
    double *acc; /* per chunk: [g] sums (backward) or [1] count (STE-scale) */
} s_io;

/* Clip value of every group (per-position vector of the row loops). */
static void s_fill_clr(eq_quant *q)
{
    s_lsq *p = q->priv;
    for (int64_t k = 0; k < q->g; k++) p->clr[k] = s_clip(q, k, p->fe);
}

EQ_QSIMD_WIDE static void s_count_chunk(eq_quant *q, void *vc, int64_t c, int64_t lo, int64_t hi)
{
    s_io *io = vc;
    const s_lsq *p = q->priv;
    int64_t in = 0;
    if (eq_quant_rowwise(q)) {
        EQ_QFOR_ROWS_IN(q, lo, hi, s0, len, j0) {
            const float *cl = p->clr + j0, *x = io->x + s0;
            for (int64_t t = 0; t < len; t++) {
                float r = x[t] / cl[t];
                in += (r >= io->lo && r <= 1.0f);
            }
        }
    } else {
        EQ_QFOR_RUNS_IN(q, lo, hi, s0, len, k) {
            float cl = s_clip(q, k, p->fe);
            for (int64_t i = s0; i < s0 + len; i++) {
                float r = io->x[i] / cl;
                in += (r >= io->lo && r <= 1.0f);
            }
        }
    }
    io->acc[c] = (double)in;
}

/* y over one segment; the clip of element t is cl[t * cs] (cs 0: one group,
 * 1: one group per position).  half is a constant at each call site. */
static inline __attribute__((always_inline)) void
s_fwd_seg(const float *x, float *y, int64_t len, const float *cl, int64_t cs, float lb, float n, float sc,
          int half, int scaled)
{
    for (int64_t t = 0; t < len; t++) {
        float c = cl[t * cs];
        float u = eq_qclamp(x[t] / c, lb, 1.0f);
        if (scaled) u = eq_quant_gs_value(u, sc);
        if (half) {
            y[t] = c * (eq_qround(u * n) / n);
        } else {
            u = (u + 1.0f) / 2.0f;
            y[t] = c * (2.0f * (eq_qround(u * n) / n) - 1.0f);
        }
    }
}

EQ_QSIMD_WIDE static void s_fwd_chunk(eq_quant *q, void *vc, int64_t c, int64_t lo, int64_t hi)
{
    (void)c;
    s_io *io = vc;
    const s_lsq *p = q->priv;
    float sc = p->sc, n = io->n, lb = io->lo;
    /* half and scaled are constants in each call, so that every variant
     * is a straight-line loop */
    int v = (io->half ? 2 : 0) + (sc != 1.0f);
    if (eq_quant_rowwise(q)) {
        EQ_QFOR_ROWS_IN(q, lo, hi, s0, len, j0) {
            const float *x = io->x + s0, *cl = p->clr + j0;
            float *y = io->y + s0;
            switch (v) {
            case 0: s_fwd_seg(x, y, len, cl, 1, lb, n, sc, 0, 0); break;
            case 1: s_fwd_seg(x, y, len, cl, 1, lb, n, sc, 0, 1); break;
            case 2: s_fwd_seg(x, y, len, cl, 1, lb, n, sc, 1, 0); break;
            default: s_fwd_seg(x, y, len, cl, 1, lb, n, sc, 1, 1); break;
            }
        }
        return;
    }
    EQ_QFOR_RUNS_IN(q, lo, hi, s0, len, k) {
        float cl = s_clip(q, k, p->fe);
        const float *x = io->x + s0;
        float *y = io->y + s0;
        switch (v) {
        case 0: s_fwd_seg(x, y, len, &cl, 0, lb, n, sc, 0, 0); break;
        case 1: s_fwd_seg(x, y, len, &cl, 0, lb, n, sc, 0, 1); break;
        case 2: s_fwd_seg(x, y, len, &cl, 0, lb, n, sc, 1, 0); break;
        default: s_fwd_seg(x, y, len, &cl, 0, lb, n, sc, 1, 1); break;
        }
    }
}

static eq_status s_forward(eq_quant *q, const float *x, float *y, eq_err *err)
{
    (void)err;
    s_lsq *p = q->priv;
    s_io io = {.x = x, .y = y, .half = s_half(q), .n = (float)eq_quant_steps(q)};
    io.lo = io.half ? 0.0f : -1.0f;
    p->fe = (float)eq_quant_gs_factor(q, eq_quant_grad_factor(q));
    p->sc = 1.0f;
    s_fill_clr(q);
    if (q->o.grad_type == EQ_QGRAD_STE_SCALE) {
        io.acc = eq_quant_chunk_acc(q, 1);
        eq_quant_for_chunks(q, s_count_chunk, &io);
        double in = 0;
        for (int64_t c = 0; c < q->nchunks; c++) in += io.acc[c];
        if (in > 0) p->sc = (float)eq_quant_gs_factor(q, sqrt((double)q->n / in));
    }
    eq_quant_for_chunks(q, s_fwd_chunk, &io);
    return EQ_OK;
}

/* dL/dx and G*dy/dc of one element (r = x/c); half/scaled are constants at
 * each call site so the loops have no control flow and vectorize. */
static inline __attribute__((always_inline)) float
s_bwd_elem(float xv, float g, float c, float lb, float n, float sc, int half, int scaled, float *gxv)
{
    float r = xv / c;
    int in = r >= lb && r <= 1.0f;
    float u = eq_qclamp(r, lb, 1.0f);
    if (scaled) u = eq_quant_gs_value(u, sc);
    float dydc;
    if (half) {
        dydc = eq_qround(u * n) / n - (in ? sc * r : 0.0f);
    } else {
        u = (u + 1.0f) / 2.0f;
        dydc = (2.0f * (eq_qround(u * n) / n) - 1.0f) - (in ? sc * r : 0.0f);
    }
    *gxv = in ? g * sc : 0.0f;
    return g * dydc;
}

/* One block of a run (one clip value); returns sum G*dy/dc. */
static inline __attribute__((always_inline)) double
s_bwd_block(const float *x, const float *gy, float *gx, int64_t bn, float cl, float lb, float n, float sc,
            int half, int scaled)
{
    float prod[EQ_QBLOCK];
    for (int64_t j = 0; j < bn; j++) prod[j] = s_bwd_elem(x[j], gy[j], cl, lb, n, sc, half, scaled, &gx[j]);
    return eq_qsum(prod, bn);
}

/* One row segment (clip and accumulator per position). */
static inline __attribute__((always_inline)) void
s_bwd_row(const float *x, const float *gy, float *gx, int64_t len, const float *cl, double *acc, float lb,
          float n, float sc, int half, int scaled)
{
    for (int64_t t = 0; t < len; t++)
        acc[t] += (double)s_bwd_elem(x[t], gy[t], cl[t], lb, n, sc, half, scaled, &gx[t]);
}

EQ_QSIMD_WIDE static void s_bwd_chunk(eq_quant *q, void *vc, int64_t c, int64_t lo, int64_t hi)
{
    s_io *io = vc;
    const s_lsq *p = q->priv;
    float sc = p->sc, n = io->n, lb = io->lo;
    int half = io->half, scaled = sc != 1.0f;
    double *acc = io->acc + c * q->g;
    if (eq_quant_rowwise(q)) {
        EQ_QFOR_ROWS_IN(q, lo, hi, s0, len, j0) {
            const float *x = io->x + s0, *gy = io->gy + s0, *cl = p->clr + j0;
            float *gx = io->gx + s0;
            double *a = acc + j0;
            if (half)
                scaled ? s_bwd_row(x, gy, gx, len, cl, a, lb, n, sc, 1, 1)
                       : s_bwd_row(x, gy, gx, len, cl, a, lb, n, 1.0f, 1, 0);
            else
                scaled ? s_bwd_row(x, gy, gx, len, cl, a, lb, n, sc, 0, 1)
                       : s_bwd_row(x, gy, gx, len, cl, a, lb, n, 1.0f, 0, 0);
        }
        return;
    }
    EQ_QFOR_RUNS_IN(q, lo, hi, s0, len, k) {
        float cl = s_clip(q, k, p->fe);
        double a = 0;
        for (int64_t b0 = s0; b0 < s0 + len; b0 += EQ_QBLOCK) {
            int64_t bn = s0 + len - b0 < EQ_QBLOCK ? s0 + len - b0 : EQ_QBLOCK;
            const float *x = io->x + b0, *gy = io->gy + b0;
            float *gx = io->gx + b0;
            if (half)
                a += scaled ? s_bwd_block(x, gy, gx, bn, cl, lb, n, sc, 1, 1)
                            : s_bwd_block(x, gy, gx, bn, cl, lb, n, 1.0f, 1, 0);
            else
                a += scaled ? s_bwd_block(x, gy, gx, bn, cl, lb, n, sc, 0, 1)
                            : s_bwd_block(x, gy, gx, bn, cl, lb, n, 1.0f, 0, 0);
        }
        acc[k] += a;
    }
}

static void s_backward(eq_quant *q, const float *x, const float *gy, float *gx)
{
    s_lsq *p = q->priv;
    s_io io = {.x = x, .gy = gy, .gx = gx, .half = s_half(q), .n = (float)eq_quant_steps(q)};
    io.lo = io.half ? 0.0f : -1.0f;
    io.acc = eq_quant_chunk_acc(q, q->g);
    s_fill_clr(q);
    eq_quant_for_chunks(q, s_bwd_chunk, &io);
    memset(p->acc, 0, (size_t)q->g * sizeof(double));
    for (int64_t c = 0; c < q->nchunks; c++)
        for (int64_t k = 0; k < q->g; k++) p->acc[k] += io.acc[c * q->g + k];
    eq_quant_tensor *t = q->clip;
    for (int64_t k = 0; k < t->numel; k++) {
        double tot = 0;
        if (t->numel == 1)
            for (int64_t j = 0; j < q->g; j++) tot += p->acc[j];
        else
            tot = p->acc[k];
        t->grad[k] = (float)((double)p->fe * eq_qsign(t->data[k]) * tot);
    }
}

/* Half range without STE-scale: x = 0 gives r = 0 (inside), y = c q_n(0) = 0
 * and G dy/dc = G (q - r) = 0, as long as c is positive and finite and
 * n >= 1.  STE-scale counts the elements inside the range (zeros are), and
 * full range maps 0 to c (2 q_n(1/2) - 1), not 0. */
static int s_zero_pad_exact(const eq_quant *q)
{
    if (!s_half(q) || q->o.grad_type != EQ_QGRAD_NONE || eq_quant_steps(q) < 1) return 0;
    float fe = (float)eq_quant_gs_factor(q, eq_quant_grad_factor(q));
    for (int64_t k = 0; k < q->clip->numel; k++) {
        float c = s_clip(q, k, fe);
        if (!(c > 0.0f) || !isfinite(c)) return 0;
    }
    return 1;
}

const eq_quant_method eq_quant_lsq_method = {
    .name = "lsq",
    .tags = (1u << EQ_QTAG_WT) | (1u << EQ_QTAG_FM) | (1u << EQ_QTAG_OT),
    .family = EQ_QFAM_DOREFA,
    .fixed_levels = 0,
    .uses_var_mean = 1,
    .init = s_init,
    .forward = s_forward,
    .backward = s_backward,
    .destroy = s_destroy,
    .zero_pad_exact = s_zero_pad_exact,
};
