/*
 * quant/pact.c -- PACT activation (ORIGINAL.md §2.7).
 *
 * Parameter clip_val = alpha, shape [1] (always per layer), init boundary.
 * z = max(x, 0); z' = z < alpha ? z : alpha; y = Q_n(z'; alpha) with
 * Q_n(v; a) = R(v s)/s, s = n/a (alpha detached there).
 * dy/dx = 1[0 <= x < alpha]; dL/dalpha = sum of G over max(x,0) >= alpha.
 */
#include "quant/quant_internal.h"

static eq_status s_init(eq_quant *q, eq_err *err)
{
    if (q->o.grad_type != EQ_QGRAD_NONE || q->o.grad_scale != EQ_QGS_NONE)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "quant options grad_type/grad_scale: not used by method pact");
    if (!eq_quant_add_tensor(q, "clip_val", 1, (int64_t[]){1}, (float)q->o.boundary, 1, err))
        return err ? err->code : EQ_ERR_NOMEM;
    return EQ_OK;
}

static eq_status s_forward(eq_quant *q, const float *x, float *y, eq_err *err)
{
    (void)err;
    float a = q->clip->data[0];
    float s = (float)eq_quant_steps(q) / a;
    for (int64_t i = 0; i < q->n; i++) {
        float z = x[i] > 0.0f ? x[i] : 0.0f;
        if (!(z < a)) z = a;
        y[i] = eq_qround(z * s) / s;
    }
    return EQ_OK;
}

static void s_backward(eq_quant *q, const float *x, const float *gy, float *gx)
{
    float a = q->clip->data[0];
    double acc = 0;
    for (int64_t i = 0; i < q->n; i++) {
        float z = x[i] > 0.0f ? x[i] : 0.0f;
        float g = gy[i];
        if (z >= a) acc += g;
        gx[i] = (x[i] >= 0.0f && x[i] < a) ? g : 0.0f;
    }
    q->clip->grad[0] = (float)acc;
}

const eq_quant_method eq_quant_pact_method = {
    .name = "pact",
    .tags = 1u << EQ_QTAG_FM,
    .family = EQ_QFAM_DOREFA,
    .fixed_levels = 0,
    .uses_var_mean = 0,
    .init = s_init,
    .forward = s_forward,
    .backward = s_backward,
    .destroy = NULL,
};
