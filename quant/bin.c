/*
 * quant/bin.c -- DoReFa binary weight, keyword wt_bin with 2 levels
 * (ORIGINAL.md §2.6): E = mean|w| over the whole tensor (detached),
 * y = E * sgn+(w) (sgn+(0) = +1); backward is the identity.
 */
#include "quant/quant_internal.h"

static eq_status s_init(eq_quant *q, eq_err *err)
{
    if (eq_quant_levels(q) != 2)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "quant method bin: needs 2 levels (bit 1), got %d", eq_quant_levels(q));
    if (q->o.grad_type != EQ_QGRAD_NONE || q->o.grad_scale != EQ_QGS_NONE)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "quant options grad_type/grad_scale: not used by method bin");
    return EQ_OK;
}

static eq_status s_forward(eq_quant *q, const float *x, float *y, eq_err *err)
{
    (void)err;
    double acc = 0;
    for (int64_t i = 0; i < q->n; i++) acc += fabsf(x[i]);
    float e = (float)(acc / (double)q->n);
    for (int64_t i = 0; i < q->n; i++) y[i] = e * eq_qsgn(x[i]);
    return EQ_OK;
}

static void s_backward(eq_quant *q, const float *x, const float *gy, float *gx)
{
    (void)x;
    for (int64_t i = 0; i < q->n; i++) gx[i] = gy[i];
}

const eq_quant_method eq_quant_bin_method = {
    .name = "bin",
    .tags = 1u << EQ_QTAG_WT,
    .family = EQ_QFAM_DOREFA,
    .fixed_levels = 1,
    .uses_var_mean = 1,
    .init = s_init,
    .forward = s_forward,
    .backward = s_backward,
    .destroy = NULL,
};
