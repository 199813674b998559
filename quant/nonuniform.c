/*
 * quant/nonuniform.c -- FATNN-style non-uniform quantizer (ORIGINAL.md §2.9).
 *
 * Integer outputs.  With a_i = |alpha_i| (per group) and R = round-STE:
 *   fm, half range (L <= 4):  y = sum_i R(clip_[0,1]((x - 1/a_0 - .. - 1/a_{i-1}) a_i))
 *                             in {0..L-1}
 *   full range, ternary (fm with half_range off, and every wt):
 *                             y = R(clip_[-1,0](x a_0)) + R(clip_[0,1](x a_1))
 * Gradients by the chain rule with STE rounding; the clamps are
 * ClampWithScale when grad_type is STE-scale.  closed_form (fm, one group)
 * scales the output by a least-squares basis updated in training.
 */
#include "quant/quant_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_MAXA 3

typedef struct s_nu {
    int na;                 /* number of alphas */
    int full;               /* ternary full-range formula */
    eq_quant_tensor *alpha[S_MAXA];
    eq_quant_tensor *basis, *auxil;
    float sc[S_MAXA];       /* STE-scale factor per clamp (1: none) */
    float used_basis;       /* basis the last forward multiplied by */
    double *acc;            /* [na * g] */
} s_nu;

static eq_status s_init(eq_quant *q, eq_err *err)
{
    int L = eq_quant_levels(q);
    int fm = q->o.tag != EQ_QTAG_WT;
    if (fm) {
        if (L > 4)
            return eq_err_set(err, EQ_ERR_INVALID, "quant nonuniform fm: at most 4 levels, got %d", L);
        if (!q->o.half_range && L != 3)
            return eq_err_set(err, EQ_ERR_INVALID,
                              "quant nonuniform fm: full range (half_range false) needs 3 levels, got %d", L);
    } else if (L != 3) {
        return eq_err_set(err, EQ_ERR_INVALID, "quant nonuniform wt: ternary only (level 3), got %d levels", L);
    }
    if (q->o.grad_type != EQ_QGRAD_NONE && q->o.grad_type != EQ_QGRAD_STE_SCALE)
        return eq_err_set(err, EQ_ERR_INVALID, "quant option grad_type: nonuniform supports none or STE-scale");
    if (q->o.grad_scale != EQ_QGS_NONE)
        return eq_err_set(err, EQ_ERR_INVALID, "quant option grad_scale: not used by method nonuniform");
    if (q->o.closed_form && (!fm || q->g != 1))
        return eq_err_set(err, EQ_ERR_INVALID,
                          "quant option closed_form: only for fm/ot with one group (quant_group)");
    if (fm && q->o.boundary == 0)
        return eq_err_set(err, EQ_ERR_INVALID, "quant option boundary: must be non-zero for nonuniform");
    s_nu *p = calloc(1, sizeof *p);
    q->priv = p;
    if (!p) return eq_err_set(err, EQ_ERR_NOMEM, "nonuniform: out of memory");
    p->na = L - 1;
    p->full = !fm || !q->o.half_range;
    p->acc = calloc((size_t)(p->na * q->g), sizeof(double));
    if (!p->acc) return eq_err_set(err, EQ_ERR_NOMEM, "nonuniform: out of memory");
    int64_t shp[4];
    int nd = eq_quant_param_shape(q, q->g, shp);
    float init = fm ? (float)(q->o.scale / q->o.boundary) : (float)q->o.scale;
    for (int i = 0; i < p->na; i++) {
        char name[16];
        snprintf(name, sizeof name, "alpha%d", i);
        p->alpha[i] = eq_quant_add_tensor(q, name, nd, shp, init, 1, err);
        if (!p->alpha[i]) return err ? err->code : EQ_ERR_NOMEM;
    }
    if (fm) {
        /* exists in the original (frozen, unused by the forward pass) */
        if (!eq_quant_add_tensor(q, "clip_val", 1, (int64_t[]){1}, (float)q->o.boundary, 0, err))
            return err ? err->code : EQ_ERR_NOMEM;
    }
    if (q->o.closed_form) {
        p->basis = eq_quant_add_tensor(q, "basis", 1, (int64_t[]){1}, 1.0f, 0, err);
        p->auxil = p->basis ? eq_quant_add_tensor(q, "auxil", 1, (int64_t[]){1}, 0.0f, 0, err) : NULL;
        if (!p->auxil) return err ? err->code : EQ_ERR_NOMEM;
    }
    return EQ_OK;
}

static void s_destroy(eq_quant *q)
{
    s_nu *p = q->priv;
    if (p) free(p->acc);
    free(p);
    q->priv = NULL;
}

static inline float s_a(const eq_quant_tensor *t, int64_t k) { return fabsf(t->data[t->numel == 1 ? 0 : k]); }

/* Value of clamp i (before rounding) and its range. */
static inline void s_range(const s_nu *p, int i, float *lo, float *hi)
{
    *lo = (p->full && i == 0) ? -1.0f : 0.0f;
    *hi = (p->full && i == 0) ? 0.0f : 1.0f;
}

/* y over one run; na and full are constants at each call site, so the
 * alpha loop unrolls and the element loop vectorizes. */
static inline __attribute__((always_inline)) void s_fwd_run(const float *x, float *y, int64_t len,
                                                            const float *a, const float *inv,
                                                            const float *lo, const float *hi,
                                                            const float *sc, int na, int full)
{
    for (int64_t e = 0; e < len; e++) {
        float t = x[e], acc = 0.0f;
#pragma GCC unroll 4
        for (int i = 0; i < na; i++) {
            float v = (full ? x[e] : t) * a[i];
            acc += eq_qround(eq_quant_gs_value(eq_qclamp(v, lo[i], hi[i]), sc[i]));
            t = t - inv[i];
        }
        y[e] = acc;
    }
}

/* dL/dx over one run and the alpha sums ga (in element order, as doubles);
 * branch-free selects instead of the data-dependent tests. */
static inline __attribute__((always_inline)) void
s_bwd_run(const float *x, const float *gy, float *gx, int64_t len, float bsc, int scaled_g, const float *a,
          const float *inv, const float *lo, const float *hi, const float *sc, double cf[S_MAXA][S_MAXA],
          double *ga, int na, int full)
{
    double acc[S_MAXA];
    for (int i = 0; i < na; i++) acc[i] = ga[i];
    for (int64_t e = 0; e < len; e++) {
        float g = scaled_g ? gy[e] * bsc : gy[e];
        float t = x[e], gxe = 0.0f;
#pragma GCC unroll 4
        for (int i = 0; i < na; i++) {
            float base = full ? x[e] : t;
            float v = base * a[i];
            int in = v >= lo[i] && v <= hi[i];
            float d = g * sc[i];
            gxe = in ? gxe + d * a[i] : gxe;
            acc[i] = in ? acc[i] + (double)d * base : acc[i];
            if (!full)
                for (int j = 0; j < i; j++) acc[j] = in ? acc[j] + (double)d * cf[i][j] : acc[j];
            t = t - inv[i];
        }
        gx[e] = gxe;
    }
    for (int i = 0; i < na; i++) ga[i] = acc[i];
}

static eq_status s_forward(eq_quant *q, const float *x, float *y, eq_err *err)
{
    (void)err;
    s_nu *p = q->priv;
    for (int i = 0; i < p->na; i++) p->sc[i] = 1.0f;
    if (q->o.grad_type == EQ_QGRAD_STE_SCALE) {
        int64_t cnt[S_MAXA] = {0};
        EQ_QFOR_RUNS(q, s0, len, k) {
            float a[S_MAXA], inv[S_MAXA], lo[S_MAXA], hi[S_MAXA];
            for (int i = 0; i < p->na; i++) {
                a[i] = s_a(p->alpha[i], k);
                inv[i] = 1.0f / a[i];
                s_range(p, i, &lo[i], &hi[i]);
            }
            for (int64_t e = s0; e < s0 + len; e++) {
                float t = x[e];
                for (int i = 0; i < p->na; i++) {
                    float v = (p->full ? x[e] : t) * a[i];
                    cnt[i] += v >= lo[i] && v <= hi[i];
                    t = t - inv[i];
                }
            }
        }
        for (int i = 0; i < p->na; i++)
            if (cnt[i] > 0) p->sc[i] = (float)eq_quant_gs_factor(q, sqrt((double)q->n / (double)cnt[i]));
    }
    EQ_QFOR_RUNS(q, s0, len, k) {
        float a[S_MAXA], inv[S_MAXA], lo[S_MAXA], hi[S_MAXA];
        for (int i = 0; i < p->na; i++) {
            a[i] = s_a(p->alpha[i], k);
            inv[i] = 1.0f / a[i];
            s_range(p, i, &lo[i], &hi[i]);
        }
        if (p->full) /* every wt, and fm without half range: two alphas */
            s_fwd_run(x + s0, y + s0, len, a, inv, lo, hi, p->sc, 2, 1);
        else if (p->na == 1)
            s_fwd_run(x + s0, y + s0, len, a, inv, lo, hi, p->sc, 1, 0);
        else if (p->na == 2)
            s_fwd_run(x + s0, y + s0, len, a, inv, lo, hi, p->sc, 2, 0);
        else
            s_fwd_run(x + s0, y + s0, len, a, inv, lo, hi, p->sc, 3, 0);
    }
    if (p->basis) {
        if (q->train) {
            double yx = 0, yy = 0, sx = 0;
            for (int64_t e = 0; e < q->n; e++) {
                yx += (double)y[e] * x[e];
                yy += (double)y[e] * y[e];
                sx += x[e];
            }
            p->auxil->data[0] = (float)(yy != 0 ? yx / yy : sx / (double)q->n);
            /* update_bias (§2.11.6) */
            float it = *q->iteration, aux = p->auxil->data[0];
            if (q->o.custom_update)
                p->basis->data[0] = (p->basis->data[0] * it + aux) / (it + 1.0f);
            else
                p->basis->data[0] = aux;
            *q->iteration += 1.0f;
        }
        float b = p->basis->data[0];
        p->used_basis = b;
        for (int64_t e = 0; e < q->n; e++) y[e] = y[e] * b;
    }
    return EQ_OK;
}

static void s_backward(eq_quant *q, const float *x, const float *gy, float *gx)
{
    s_nu *p = q->priv;
    int na = p->na;
    memset(p->acc, 0, (size_t)(na * q->g) * sizeof(double));
    float b = p->basis ? p->used_basis : 1.0f;
    EQ_QFOR_RUNS(q, s0, len, k) {
        float a[S_MAXA], inv[S_MAXA];
        for (int i = 0; i < na; i++) {
            a[i] = s_a(p->alpha[i], k);
            inv[i] = 1.0f / a[i];
        }
        double ga[S_MAXA] = {0}, cf[S_MAXA][S_MAXA] = {{0}};
        for (int i = 0; i < na; i++)
            for (int j = 0; j < i; j++) cf[i][j] = (double)a[i] / ((double)a[j] * a[j]);
        float lo[S_MAXA], hi[S_MAXA];
        for (int i = 0; i < na; i++) s_range(p, i, &lo[i], &hi[i]);
        int sg = p->basis != NULL;
        if (p->full)
            sg ? s_bwd_run(x + s0, gy + s0, gx + s0, len, b, 1, a, inv, lo, hi, p->sc, cf, ga, 2, 1)
               : s_bwd_run(x + s0, gy + s0, gx + s0, len, b, 0, a, inv, lo, hi, p->sc, cf, ga, 2, 1);
        else if (na == 1)
            sg ? s_bwd_run(x + s0, gy + s0, gx + s0, len, b, 1, a, inv, lo, hi, p->sc, cf, ga, 1, 0)
               : s_bwd_run(x + s0, gy + s0, gx + s0, len, b, 0, a, inv, lo, hi, p->sc, cf, ga, 1, 0);
        else if (na == 2)
            sg ? s_bwd_run(x + s0, gy + s0, gx + s0, len, b, 1, a, inv, lo, hi, p->sc, cf, ga, 2, 0)
               : s_bwd_run(x + s0, gy + s0, gx + s0, len, b, 0, a, inv, lo, hi, p->sc, cf, ga, 2, 0);
        else
            sg ? s_bwd_run(x + s0, gy + s0, gx + s0, len, b, 1, a, inv, lo, hi, p->sc, cf, ga, 3, 0)
               : s_bwd_run(x + s0, gy + s0, gx + s0, len, b, 0, a, inv, lo, hi, p->sc, cf, ga, 3, 0);
        for (int i = 0; i < na; i++) p->acc[i * q->g + k] += ga[i];
    }
    for (int i = 0; i < na; i++) {
        eq_quant_tensor *t = p->alpha[i];
        for (int64_t k = 0; k < t->numel; k++) {
            double tot = 0;
            if (t->numel == 1)
                for (int64_t j = 0; j < q->g; j++) tot += p->acc[i * q->g + j];
            else
                tot = p->acc[i * q->g + k];
            t->grad[k] = (float)(eq_qsign(t->data[k]) * tot);
        }
    }
}

const eq_quant_method eq_quant_nonuniform_method = {
    .name = "nonuniform",
    .tags = (1u << EQ_QTAG_WT) | (1u << EQ_QTAG_FM) | (1u << EQ_QTAG_OT),
    .family = EQ_QFAM_DOREFA,
    .fixed_levels = 1,
    .uses_var_mean = 1,
    .init = s_init,
    .forward = s_forward,
    .backward = s_backward,
    .destroy = s_destroy,
};
