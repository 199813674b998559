/*
 * quant/dorefa.c -- DoReFa quantizers (ORIGINAL.md §2.4, §2.5).
 *
 * fm/ot: y = Q_n(clip_[0,c](x); c), c = boundary (a constant), always
 *        unsigned; dy/dx = 1[0 <= x <= c].
 * wt:    t = tanh(w), m = max|t| over the whole tensor (differentiated),
 *        u = t/(2m) + 1/2, y = 2 Q_n(u; c_w) - 1, c_w = boundary.
 * Q_n(v; c) = R(v s)/s with s = n/c, R = round half to even, STE.
 * tanh is eq_qtanh (quant_internal.h: vectorizable, within 1 ulp of
 * tanh but for two floats, like libm's tanhf, which it differs from by an
 * ulp for 5 % of inputs).
 */
#include "quant/quant_internal.h"

#include <stdlib.h>

typedef struct s_wt_state {
    float m;      /* max |tanh(w)| of the last forward */
    float *t;     /* tanh(w) of the last forward [n] */
    float *cmax;  /* max |t| per chunk [nchunks] */
    int64_t cap, ccap;
    /* the arg-max elements of |t| (forward) and their dL/dy (backward) */
    int64_t *amx;
    float *amg;
    int64_t namx, amcap;
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
    if (st) {
        free(st->t);
        free(st->cmax);
        free(st->amx);
        free(st->amg);
    }
    free(q->priv);
    q->priv = NULL;
}

typedef struct s_io {
    const float *x, *gy;
    float *y, *gx;
    float c, s, m;
    s_wt_state *st;
    double *acc;
} s_io;

EQ_QSIMD static void s_fm_fwd(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    (void)q, (void)ch;
    const s_io *io = vc;
    float c = io->c, s = io->s;
    const float *x = io->x;
    float *y = io->y;
    for (int64_t i = lo; i < hi; i++) y[i] = eq_qround(eq_qclamp(x[i], 0.0f, c) * s) / s;
}

/* t = tanh(x) and the chunk's max |t|, taken as an integer max over the
 * bit patterns of |t| (they order like the values; a NaN's pattern is
 * above +inf's, so a NaN wins as in the scalar test this replaces) so that
 * the loop vectorizes. */
EQ_QSIMD_WIDE static void s_wt_tanh(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    (void)q;
    s_io *io = vc;
    const float *x = io->x;
    float *t = io->st->t;
    int32_t m = 0;
    for (int64_t i = lo; i < hi; i++) {
        float v = eq_qtanh(x[i]);
        t[i] = v;
        int32_t a = eq_qf_bits(v) & 0x7fffffff;
        m = a > m ? a : m;
    }
    io->st->cmax[ch] = eq_qbits_f(m);
}

EQ_QSIMD_WIDE static void s_wt_fwd(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    (void)q, (void)ch;
    const s_io *io = vc;
    float m2 = 2.0f * io->m, s = io->s;
    const float *t = io->st->t;
    float *y = io->y;
    for (int64_t i = lo; i < hi; i++) {
        float u = t[i] / m2 + 0.5f;
        y[i] = 2.0f * (eq_qround(u * s) / s) - 1.0f;
    }
}

/* Record the elements with |t| == m (the backward routes dL/dm to them):
 * only chunks whose max is m hold any. */
static eq_status s_argmax(eq_quant *q, s_wt_state *st, eq_err *err)
{
    int64_t k = 0;
    float m = st->m;
    for (int64_t c = 0; c < q->nchunks; c++) {
        if (st->cmax[c] != m) continue;
        int64_t lo = c * q->chunk, hi = lo + q->chunk < q->n ? lo + q->chunk : q->n;
        for (int64_t i = lo; i < hi; i++) {
            if (fabsf(st->t[i]) != m) continue;
            if (k == st->amcap) {
                int64_t nc = st->amcap ? 2 * st->amcap : 16;
                int64_t *a = realloc(st->amx, (size_t)nc * sizeof(int64_t));
                if (a) st->amx = a;
                float *g = a ? realloc(st->amg, (size_t)nc * sizeof(float)) : NULL;
                if (!g) return eq_err_set(err, EQ_ERR_NOMEM, "dorefa: out of memory");
                st->amg = g;
                st->amcap = nc;
            }
            st->amx[k++] = i;
        }
    }
    st->namx = k;
    return EQ_OK;
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
    if (st->ccap < q->nchunks) {
        float *cm = realloc(st->cmax, (size_t)q->nchunks * sizeof(float));
        if (!cm) return eq_err_set(err, EQ_ERR_NOMEM, "dorefa: out of memory");
        st->cmax = cm;
        st->ccap = q->nchunks;
    }
    io.st = st;
    eq_quant_for_chunks(q, s_wt_tanh, &io);
    float m = 0.0f;
    for (int64_t c = 0; c < q->nchunks; c++) {
        float a = st->cmax[c];
        if (a > m || isnan(a)) m = a;
    }
    st->m = io.m = m;
    eq_status rc = s_argmax(q, st, err);
    if (rc) return rc;
    eq_quant_for_chunks(q, s_wt_fwd, &io);
    return EQ_OK;
}

EQ_QSIMD static void s_fm_bwd(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
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

/* One pass for everything but the arg-max elements: the chunk's sum of
 * G t (in blocks of EQ_QBLOCK products, each summed by eq_qsum) and
 * gx = (G/m)(1 - t^2). */
EQ_QSIMD_WIDE static void s_wt_bwd(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    (void)q;
    s_io *io = vc;
    const float *t = io->st->t, *gy = io->gy;
    float *gx = io->gx;
    float m = io->m;
    double acc = 0;
    float prod[EQ_QBLOCK];
    for (int64_t b = lo; b < hi; b += EQ_QBLOCK) {
        int64_t bn = hi - b < EQ_QBLOCK ? hi - b : EQ_QBLOCK;
        for (int64_t j = 0; j < bn; j++) {
            float v = t[b + j], g = gy[b + j];
            prod[j] = g * v;
            gx[b + j] = (g / m) * (1.0f - v * v);
        }
        acc += eq_qsum(prod, bn);
    }
    io->acc[ch] = acc;
}

static void s_backward(eq_quant *q, const float *x, const float *gy, float *gx)
{
    s_io io = {.x = x, .gy = gy, .gx = gx, .c = (float)q->o.boundary};
    if (q->o.tag != EQ_QTAG_WT) {
        eq_quant_for_chunks(q, s_fm_bwd, &io);
        return;
    }
    /* tanh(x) was kept by the forward.  dL/dm = -sum_j G_j t_j / m^2,
     * routed to every arg-max element of |t|:
     * gx = (G/m + dL/dm sign(t))(1 - t^2) there, (G/m)(1 - t^2) elsewhere. */
    s_wt_state *st = q->priv;
    io.st = st;
    io.m = st->m;
    for (int64_t k = 0; k < st->namx; k++) st->amg[k] = gy[st->amx[k]]; /* gx may alias gy */
    io.acc = eq_quant_chunk_acc(q, 1);
    eq_quant_for_chunks(q, s_wt_bwd, &io);
    double acc = 0;
    for (int64_t c = 0; c < q->nchunks; c++) acc += io.acc[c];
    float m = io.m, dm = (float)(-acc / ((double)m * (double)m));
    for (int64_t k = 0; k < st->namx; k++) {
        int64_t i = st->amx[k];
        float v = st->t[i];
        gx[i] = (st->amg[k] / m + dm * eq_qsign(v)) * (1.0f - v * v);
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
