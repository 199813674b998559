/*
 * quant/bin.c -- DoReFa binary weight, keyword wt_bin with 2 levels
 * (ORIGINAL.md §2.6): E = mean|w| over the whole tensor (detached),
 * y = E * sgn+(w) (sgn+(0) = +1); backward is the identity.
 */
#include "quant/quant_internal.h"

#include <string.h>

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

typedef struct s_io {
    const float *x, *gy;
    float *y, *gx;
    float e;
    double *acc;
} s_io;

EQ_QSIMD static void s_abs_chunk(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    (void)q;
    s_io *io = vc;
    io->acc[ch] = eq_qsum_abs(io->x + lo, hi - lo);
}

EQ_QSIMD static void s_fwd_chunk(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    (void)q, (void)ch;
    const s_io *io = vc;
    for (int64_t i = lo; i < hi; i++) io->y[i] = io->e * eq_qsgn(io->x[i]);
}

static eq_status s_forward(eq_quant *q, const float *x, float *y, eq_err *err)
{
    (void)err;
    s_io io = {.x = x, .y = y};
    io.acc = eq_quant_chunk_acc(q, 1);
    eq_quant_for_chunks(q, s_abs_chunk, &io);
    double acc = 0;
    for (int64_t c = 0; c < q->nchunks; c++) acc += io.acc[c];
    io.e = (float)(acc / (double)q->n);
    eq_quant_for_chunks(q, s_fwd_chunk, &io);
    return EQ_OK;
}

EQ_QSIMD static void s_bwd_chunk(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    (void)q, (void)ch;
    const s_io *io = vc;
    if (io->gx != io->gy) memcpy(io->gx + lo, io->gy + lo, (size_t)(hi - lo) * sizeof(float));
}

static void s_backward(eq_quant *q, const float *x, const float *gy, float *gx)
{
    s_io io = {.x = x, .gy = gy, .gx = gx};
    eq_quant_for_chunks(q, s_bwd_chunk, &io);
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
