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
    float m;     /* max |tanh(w)| of the last forward */
    float *t;    /* tanh(w) of the last forward [n] */
    int64_t cap;
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
    s_wt_state *st = q->priv;
    if (st) free(st->t);
    free(q->priv);
    q->priv = NULL;
}

typedef struct s_io {
    const float *x, *gy;
    float *y, *gx;
    float c, s, m, dm;
    s_wt_state *st;
    double *acc;
} s_io;

static void s_fm_fwd(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    (void)q, (void)ch;
    const s_io *io = vc;
    float c = io->c, s = io->s;
    for (int64_t i = lo; i < hi; i++) io->y[i] = eq_qround(eq_qclamp(io->x[i], 0.0f, c) * s) / s;
}

static void s_wt_tanh(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    (void)q;
    s_io *io = vc;
    float m = 0.0f, *t = io->st->t;
    for (int64_t i = lo; i < hi; i++) {
        float v = tanhf(io->x[i]);
        t[i] = v;
        float a = fabsf(v);
        if (a > m || isnan(a)) m = a;
    }
    io->acc[ch] = m;
}

static void s_wt_fwd(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    (void)q, (void)ch;
    const s_io *io = vc;
    float m2 = 2.0f * io->m, s = io->s;
    const float *t = io->st->t;
    for (int64_t i = lo; i < hi; i++) {
        float u = t[i] / m2 + 0.5f;
        io->y[i] = 2.0f * (eq_qround(u * s) / s) - 1.0f;
    }
}

static eq_status s_forward(eq_quant *q, const float *x, float *y, eq_err *err)
{
    float n = (float)eq_quant_steps(q);
    s_io io = {.x = x, .y = y, .c = (float)q->o.boundary};
    io.s = n / io.c;
    if (q->o.tag != EQ_QTAG_WT) {
        eq_quant_for_chunks(q, s_fm_fwd, &io);
        return EQ_OK;
    }
    s_wt_state *st = q->priv;
    if (st->cap < q->n) {
        float *t = realloc(st->t, (size_t)q->n * sizeof(float));
        if (!t) return eq_err_set(err, EQ_ERR_NOMEM, "dorefa: out of memory");
        st->t = t;
        st->cap = q->n;
    }
    io.st = st;
    io.acc = eq_quant_chunk_acc(q, 1);
    eq_quant_for_chunks(q, s_wt_tanh, &io);
    float m = 0.0f;
    for (int64_t c = 0; c < q->nchunks; c++) {
        float a = (float)io.acc[c];
        if (a > m || isnan(a)) m = a;
    }
    st->m = io.m = m;
    eq_quant_for_chunks(q, s_wt_fwd, &io);
    return EQ_OK;
}

static void s_fm_bwd(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    (void)q, (void)ch;
    const s_io *io = vc;
    float c = io->c;
    const float *x = io->x, *gy = io->gy;
    float *gx = io->gx; /* locals: a store through io->gx could alias *io */
    for (int64_t i = lo; i < hi; i++) {
        float v = x[i], g = gy[i]; /* loaded unconditionally: a select, not a branch */
        gx[i] = (v >= 0.0f && v <= c) ? g : 0.0f;
    }
}

static void s_wt_dot(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    (void)q;
    s_io *io = vc;
    const float *t = io->st->t;
    io->acc[ch] = eq_qdot(io->gy + lo, t + lo, hi - lo);
}

static void s_wt_bwd(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    (void)q, (void)ch;
    const s_io *io = vc;
    const float *t = io->st->t;
    float m = io->m, dm = io->dm;
    for (int64_t i = lo; i < hi; i++) {
        float v = t[i];
        float gt = io->gy[i] / m;
        if (fabsf(v) == m) gt += dm * eq_qsign(v);
        io->gx[i] = gt * (1.0f - v * v);
    }
}

static void s_backward(eq_quant *q, const float *x, const float *gy, float *gx)
{
    s_io io = {.x = x, .gy = gy, .gx = gx, .c = (float)q->o.boundary};
    if (q->o.tag != EQ_QTAG_WT) {
        eq_quant_for_chunks(q, s_fm_bwd, &io);
        return;
    }
    /* tanh(x) was kept by the forward.  dL/dm = -sum_j G_j t_j / m^2,
     * routed to every arg-max element of |t|. */
    io.st = q->priv;
    io.m = io.st->m;
    io.acc = eq_quant_chunk_acc(q, 1);
    eq_quant_for_chunks(q, s_wt_dot, &io);
    double acc = 0;
    for (int64_t c = 0; c < q->nchunks; c++) acc += io.acc[c];
    io.dm = (float)(-acc / ((double)io.m * (double)io.m));
    eq_quant_for_chunks(q, s_wt_bwd, &io);
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
