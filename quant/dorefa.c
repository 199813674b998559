/*
 * quant/dorefa.c -- DoReFa quantizers (ORIGINAL.md §2.4, §2.5).
 *
 * fm/ot: y = Q_n(clip_[0,c](x); c), c = boundary (a constant), always
 *        unsigned; dy/dx = 1[0 <= x <= c].
 * wt:    t = tanh(w), m = max|t| over the whole tensor (differentiated),
 *        u = t/(2m) + 1/2, y = 2 Q_n(u; c_w) - 1, c_w = boundary.
 * Q_n(v; c) = R(v s)/s with s = n/c, R = round half to even, STE.
 */
#include "quant/quant_internal.h"

#include <stdlib.h>

typedef struct s_wt_state {
    float m; /* max |tanh(w)| of the last forward */
} s_wt_state;

static eq_status s_init(eq_quant *q, eq_err *err)
{
    if (q->o.tag == EQ_QTAG_WT) {
        q->priv = calloc(1, sizeof(s_wt_state));
        if (!q->priv) return eq_err_set(err, EQ_ERR_NOMEM, "dorefa: out of memory");
    }
    if (!(q->o.boundary > 0))
        return eq_err_set(err, EQ_ERR_INVALID, "quant option boundary: %g must be > 0 for dorefa",
                          q->o.boundary);
    if (q->o.grad_type != EQ_QGRAD_NONE || q->o.grad_scale != EQ_QGS_NONE)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "quant options grad_type/grad_scale: not used by method dorefa");
    return EQ_OK;
}

static void s_destroy(eq_quant *q)
{
    free(q->priv);
    q->priv = NULL;
}

static eq_status s_forward(eq_quant *q, const float *x, float *y, eq_err *err)
{
    (void)err;
    float n = (float)eq_quant_steps(q);
    float c = (float)q->o.boundary;
    float s = n / c;
    if (q->o.tag != EQ_QTAG_WT) {
        for (int64_t i = 0; i < q->n; i++) y[i] = eq_qround(eq_qclamp(x[i], 0.0f, c) * s) / s;
        return EQ_OK;
    }
    s_wt_state *st = q->priv;
    float m = 0.0f;
    for (int64_t i = 0; i < q->n; i++) {
        float t = tanhf(x[i]);
        y[i] = t;
        float a = fabsf(t);
        if (a > m || isnan(a)) m = a;
    }
    st->m = m;
    float m2 = 2.0f * m;
    for (int64_t i = 0; i < q->n; i++) {
        float u = y[i] / m2 + 0.5f;
        y[i] = 2.0f * (eq_qround(u * s) / s) - 1.0f;
    }
    return EQ_OK;
}

static void s_backward(eq_quant *q, const float *x, const float *gy, float *gx)
{
    if (q->o.tag != EQ_QTAG_WT) {
        float c = (float)q->o.boundary;
        for (int64_t i = 0; i < q->n; i++) gx[i] = (x[i] >= 0.0f && x[i] <= c) ? gy[i] : 0.0f;
        return;
    }
    const s_wt_state *st = q->priv;
    float m = st->m;
    /* dL/dm = -sum_j G_j t_j / m^2, routed to every arg-max element of |t|. */
    double acc = 0;
    for (int64_t i = 0; i < q->n; i++) acc += (double)gy[i] * tanhf(x[i]);
    float dm = (float)(-acc / ((double)m * (double)m));
    for (int64_t i = 0; i < q->n; i++) {
        float t = tanhf(x[i]);
        float gt = gy[i] / m;
        if (fabsf(t) == m) gt += dm * eq_qsign(t);
        gx[i] = gt * (1.0f - t * t);
    }
}

const eq_quant_method eq_quant_dorefa_method = {
    .name = "dorefa",
    .tags = (1u << EQ_QTAG_WT) | (1u << EQ_QTAG_FM) | (1u << EQ_QTAG_OT),
    .family = EQ_QFAM_DOREFA,
    .fixed_levels = 0,
    .uses_var_mean = 1,
    .init = s_init,
    .forward = s_forward,
    .backward = s_backward,
    .destroy = s_destroy,
};
