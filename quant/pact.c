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

typedef struct s_io {
    const float *x, *gy;
    float *y, *gx;
    float a, s;
    double *acc;
} s_io;

EQ_QSIMD static void s_fwd_chunk(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    (void)q, (void)ch;
    const s_io *io = vc;
    float a = io->a, s = io->s;
    for (int64_t i = lo; i < hi; i++) {
        float z = io->x[i] > 0.0f ? io->x[i] : 0.0f;
        if (!(z < a)) z = a;
        io->y[i] = eq_qround(z * s) / s;
    }
}

static eq_status s_forward(eq_quant *q, const float *x, float *y, eq_err *err)
{
    (void)err;
    s_io io = {.x = x, .y = y, .a = q->clip->data[0]};
    io.s = (float)eq_quant_steps(q) / io.a;
    eq_quant_for_chunks(q, s_fwd_chunk, &io);
    return EQ_OK;
}

EQ_QSIMD static void s_bwd_chunk(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    (void)q;
    s_io *io = vc;
    float a = io->a, t[EQ_QBLOCK];
    double acc = 0;
    for (int64_t b = lo; b < hi; b += EQ_QBLOCK) {
        int64_t m = hi - b < EQ_QBLOCK ? hi - b : EQ_QBLOCK;
        const float *x = io->x + b, *gy = io->gy + b;
        float *gx = io->gx + b;
        for (int64_t j = 0; j < m; j++) {
            float v = x[j], g = gy[j];
            float z = v > 0.0f ? v : 0.0f;
            t[j] = z >= a ? g : 0.0f;
            gx[j] = (v >= 0.0f && v < a) ? g : 0.0f;
        }
        acc += eq_qsum(t, m);
    }
    io->acc[ch] = acc;
}

static void s_backward(eq_quant *q, const float *x, const float *gy, float *gx)
{
    s_io io = {.x = x, .gy = gy, .gx = gx, .a = q->clip->data[0]};
    io.acc = eq_quant_chunk_acc(q, 1);
    eq_quant_for_chunks(q, s_bwd_chunk, &io);
    double acc = 0;
    for (int64_t c = 0; c < q->nchunks; c++) acc += io.acc[c];
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
