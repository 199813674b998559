/*
 * quant/xnor.c -- XNOR-Net / XNOR-Net++ / Bi-Real binarizers
 * (ORIGINAL.md §2.12), in their intended form: always active, no warm-up
 * (the original's HEAD never quantizes on this path, §2.12.4).
 *
 * fm: y = E sgn+(x), E (detached) by `custom`: none -> 1, resolution ->
 *     mean_hw |x| per (b, c), channel -> mean_c |x| per (b, h, w).
 *     dL/dx = G m(x): none 1, STE 1[|x| < 1], Triangle (2 - 2|x|) 1[|x| < 1].
 * wt: y = E sgn+(w), E = mean |w| per group (1 or per output channel);
 *     `gamma` multiplies a learnable per-group scale (XNOR-Net++).
 *     dL/dw = G (grad_type none) or G 1[|w| < 1] (STE).
 */
#include "quant/quant_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct s_xnor {
    float *e;      /* scale per (b,c) / (b,hw) / group */
    int64_t ecap;
} s_xnor;

static eq_status s_init(eq_quant *q, eq_err *err)
{
    if (q->o.tag == EQ_QTAG_FM) {
        if (q->o.grad_type == EQ_QGRAD_STE_SCALE)
            return eq_err_set(err, EQ_ERR_INVALID,
                              "quant option grad_type: xnor fm supports none, STE or Triangle");
    } else {
        if (q->o.grad_type != EQ_QGRAD_NONE && q->o.grad_type != EQ_QGRAD_STE)
            return eq_err_set(err, EQ_ERR_INVALID, "quant option grad_type: xnor wt supports none or STE");
        if (q->o.custom != EQ_QCUSTOM_NONE)
            return eq_err_set(err, EQ_ERR_INVALID, "quant option custom: only for xnor fm");
        if (q->g != 1 && q->g != q->channels)
            return eq_err_set(err, EQ_ERR_INVALID,
                              "quant option quant_group: xnor weight scales of shape (%lld,1,1,1) do "
                              "not broadcast over %lld output channels",
                              (long long)q->g, (long long)q->channels);
    }
    if (q->o.grad_scale != EQ_QGS_NONE)
        return eq_err_set(err, EQ_ERR_INVALID, "quant option grad_scale: not used by method xnor");
    q->priv = calloc(1, sizeof(s_xnor));
    if (!q->priv) return eq_err_set(err, EQ_ERR_NOMEM, "xnor: out of memory");
    return EQ_OK;
}

static void s_destroy(eq_quant *q)
{
    s_xnor *p = q->priv;
    if (p) free(p->e);
    free(p);
    q->priv = NULL;
}

/* B, C, HW and the strides of the channel and spatial index. */
static void s_dims(const eq_quant *q, int64_t *B, int64_t *C, int64_t *HW, int64_t *cs, int64_t *ss)
{
    const eq_tensor_desc *d = &q->xd;
    *B = d->shape[0];
    if (d->layout == EQ_LAYOUT_NC) {
        *C = d->shape[1];
        *HW = 1;
        *cs = 1;
        *ss = 1;
    } else if (d->layout == EQ_LAYOUT_NCHW) {
        *C = d->shape[1];
        *HW = d->shape[2] * d->shape[3];
        *cs = *HW;
        *ss = 1;
    } else { /* NHWC */
        *C = d->shape[3];
        *HW = d->shape[1] * d->shape[2];
        *cs = 1;
        *ss = *C;
    }
}

typedef struct s_io {
    const float *x, *gy;
    float *y, *gx;
    const float *e; /* per group, or NULL for 1 */
    double *acc;
    eq_quant_grad_type gt;
} s_io;

EQ_QSIMD static void s_abs_chunk(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    s_io *io = vc;
    double *acc = io->acc + ch * q->g;
    EQ_QFOR_RUNS_IN(q, lo, hi, s0, len, k) {
        acc[k] += eq_qsum_abs(io->x + s0, len);
    }
}

EQ_QSIMD static void s_sgn_chunk(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    (void)ch;
    const s_io *io = vc;
    if (!io->e) {
        for (int64_t i = lo; i < hi; i++) io->y[i] = eq_qsgn(io->x[i]);
        return;
    }
    EQ_QFOR_RUNS_IN(q, lo, hi, s0, len, k) {
        float e = io->e[k];
        for (int64_t i = s0; i < s0 + len; i++) io->y[i] = e * eq_qsgn(io->x[i]);
    }
}

static eq_status s_forward(eq_quant *q, const float *x, float *y, eq_err *err)
{
    s_xnor *p = q->priv;
    if (q->o.tag == EQ_QTAG_WT) {
        int64_t per = q->n / q->g;
        if (p->ecap < q->g) {
            float *e = realloc(p->e, (size_t)q->g * sizeof(float));
            if (!e) return eq_err_set(err, EQ_ERR_NOMEM, "xnor: out of memory");
            p->e = e;
            p->ecap = q->g;
        }
        s_io io = {.x = x, .y = y, .e = p->e};
        io.acc = eq_quant_chunk_acc(q, q->g);
        eq_quant_for_chunks(q, s_abs_chunk, &io);
        for (int64_t k = 0; k < q->g; k++) {
            double acc = 0;
            for (int64_t c = 0; c < q->nchunks; c++) acc += io.acc[c * q->g + k];
            p->e[k] = (float)(acc / (double)per);
        }
        eq_quant_for_chunks(q, s_sgn_chunk, &io);
        return EQ_OK;
    }
    if (q->o.custom == EQ_QCUSTOM_NONE) {
        s_io io = {.x = x, .y = y, .e = NULL};
        eq_quant_for_chunks(q, s_sgn_chunk, &io);
        return EQ_OK;
    }
    int64_t B, C, HW, cs, ss;
    s_dims(q, &B, &C, &HW, &cs, &ss);
    int res = q->o.custom == EQ_QCUSTOM_RESOLUTION;
    int64_t outer = res ? C : HW, inner = res ? HW : C;
    int64_t os = res ? cs : ss, is = res ? ss : cs;
    for (int64_t b = 0; b < B; b++) {
        const float *xb = x + b * C * HW;
        float *yb = y + b * C * HW;
        for (int64_t o = 0; o < outer; o++) {
            double acc = 0;
            for (int64_t i = 0; i < inner; i++) acc += fabsf(xb[o * os + i * is]);
            float e = (float)(acc / (double)inner);
            for (int64_t i = 0; i < inner; i++) {
                int64_t j = o * os + i * is;
                yb[j] = e * eq_qsgn(xb[j]);
            }
        }
    }
    return EQ_OK;
}

EQ_QSIMD static void s_bwd_chunk(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    (void)q, (void)ch;
    const s_io *io = vc;
    const float *x = io->x, *gy = io->gy;
    float *gx = io->gx;
    switch (io->gt) {
    case EQ_QGRAD_STE:
        for (int64_t i = lo; i < hi; i++) {
            float v = x[i], g = gy[i]; /* loaded unconditionally: a select, not a branch */
            gx[i] = (v > -1.0f && v < 1.0f) ? g : 0.0f;
        }
        break;
    case EQ_QGRAD_TRIANGLE:
        for (int64_t i = lo; i < hi; i++) {
            float v = x[i], g = gy[i];
            gx[i] = (v > -1.0f && v < 1.0f) ? g * (2.0f - 2.0f * fabsf(v)) : 0.0f;
        }
        break;
    default:
        for (int64_t i = lo; i < hi; i++) gx[i] = gy[i];
        break;
    }
}

static void s_backward(eq_quant *q, const float *x, const float *gy, float *gx)
{
    s_io io = {.x = x, .gy = gy, .gx = gx, .gt = q->o.grad_type};
    eq_quant_for_chunks(q, s_bwd_chunk, &io);
}

const eq_quant_method eq_quant_xnor_method = {
    .name = "xnor",
    .tags = (1u << EQ_QTAG_WT) | (1u << EQ_QTAG_FM),
    .family = EQ_QFAM_XNOR,
    .fixed_levels = 1,
    .uses_var_mean = 1,
    .init = s_init,
    .forward = s_forward,
    .backward = s_backward,
    .destroy = s_destroy,
};
