/*
 * quant/lsq_step.c -- LSQ as its paper defines it (Esser et al., "Learned
 * Step Size Quantization"); the original does not have this form.
 *
 * Parameter step_size s per group (shapes as the original's clip_val).
 * Unsigned (half_range): Qn = 0, Qp = L - 1; signed: Qn = -floor(L/2),
 * Qp = L - 1 - floor(L/2) (2 bits: -2..1).  r = x/s:
 *   y = R(clip_[Qn,Qp](r)) * s
 *   dy/dx = 1[Qn <= r <= Qp]
 *   dy/ds = R(r) - r inside, Qn below, Qp above
 *   dL/ds = g * sum_group G dy/ds, g = 1/sqrt(N Qp), N = elements of the
 *   group per sample (weights: per tensor group).
 * A step of exactly 0 (the initial value) is initialised on the first
 * forward from the data: s = 2 mean|x| / sqrt(Qp) over the group.
 */
#include "quant/quant_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct s_step {
    double *acc; /* [g] */
    float *sv;   /* [g] step size per group (row loops) */
} s_step;

static void s_bounds(const eq_quant *q, float *qn, float *qp)
{
    int L = eq_quant_levels(q);
    if (q->o.half_range) {
        *qn = 0.0f;
        *qp = (float)(L - 1);
    } else {
        *qn = (float)-(L / 2);
        *qp = (float)(L - 1 - L / 2);
    }
}

static eq_status s_init(eq_quant *q, eq_err *err)
{
    if (q->o.tag != EQ_QTAG_WT && q->g != 1 && q->g != q->channels)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "quant option quant_group: lsq-step on %s needs 1 or %lld groups",
                          eq_quant_tag_name(q->o.tag), (long long)q->channels);
    if (q->o.grad_type != EQ_QGRAD_NONE)
        return eq_err_set(err, EQ_ERR_INVALID, "quant option grad_type: lsq-step supports only none");
    if (q->o.grad_scale != EQ_QGS_NONE)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "quant option grad_scale: lsq-step always uses the paper's 1/sqrt(N*Qp)");
    float qn, qp;
    s_bounds(q, &qn, &qp);
    if (qp < 1.0f)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "quant lsq-step: signed quantization needs at least 3 levels, got %d",
                          eq_quant_levels(q));
    s_step *p = calloc(1, sizeof *p);
    if (p) p->acc = calloc((size_t)q->g, sizeof(double));
    if (p) p->sv = calloc((size_t)q->g, sizeof(float));
    q->priv = p;
    if (!p || !p->acc || !p->sv) return eq_err_set(err, EQ_ERR_NOMEM, "lsq-step: out of memory");
    int64_t shp[4];
    int nd = eq_quant_param_shape(q, q->g, shp);
    if (!eq_quant_add_tensor(q, "step_size", nd, shp, 0.0f, 1, err)) return err ? err->code : EQ_ERR_NOMEM;
    return EQ_OK;
}

static void s_destroy(eq_quant *q)
{
    s_step *p = q->priv;
    if (p) {
        free(p->acc);
        free(p->sv);
    }
    free(p);
    q->priv = NULL;
}

typedef struct s_io {
    const float *x, *gy;
    float *y, *gx;
    const eq_quant_tensor *st;
    float qn, qp;
    double *acc;
} s_io;

static inline float s_step_of(const eq_quant_tensor *st, int64_t k) { return st->data[st->numel == 1 ? 0 : k]; }

static void s_fill_sv(eq_quant *q)
{
    s_step *p = q->priv;
    eq_quant_tensor *st = eq_quant_find(q, "step_size");
    for (int64_t k = 0; k < q->g; k++) p->sv[k] = s_step_of(st, k);
}

EQ_QSIMD_WIDE static void s_abs_chunk(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    s_io *io = vc;
    double *acc = io->acc + ch * q->g;
    if (eq_quant_rowwise(q)) {
        EQ_QFOR_ROWS_IN(q, lo, hi, s0, len, j0) {
            const float *x = io->x + s0;
            double *a = acc + j0;
            for (int64_t t = 0; t < len; t++) a[t] += (double)fabsf(x[t]);
        }
        return;
    }
    EQ_QFOR_RUNS_IN(q, lo, hi, s0, len, k) {
        acc[k] += eq_qsum_abs(io->x + s0, len);
    }
}

/* y over one segment; the step of element t is sv[t * ss]. */
static inline __attribute__((always_inline)) void
s_fwd_seg(const float *x, float *y, int64_t len, const float *sv, int64_t ss, float qn, float qp)
{
    for (int64_t t = 0; t < len; t++) {
        float s = sv[t * ss];
        y[t] = eq_qround(eq_qclamp(x[t] / s, qn, qp)) * s;
    }
}

EQ_QSIMD_WIDE static void s_fwd_chunk(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    (void)ch;
    const s_io *io = vc;
    const s_step *p = q->priv;
    float qn = io->qn, qp = io->qp;
    if (eq_quant_rowwise(q)) {
        EQ_QFOR_ROWS_IN(q, lo, hi, s0, len, j0) {
            s_fwd_seg(io->x + s0, io->y + s0, len, p->sv + j0, 1, qn, qp);
        }
        return;
    }
    EQ_QFOR_RUNS_IN(q, lo, hi, s0, len, k) {
        float s = s_step_of(io->st, k);
        s_fwd_seg(io->x + s0, io->y + s0, len, &s, 0, qn, qp);
    }
}

static eq_status s_forward(eq_quant *q, const float *x, float *y, eq_err *err)
{
    s_step *p = q->priv;
    eq_quant_tensor *st = eq_quant_find(q, "step_size");
    s_io io = {.x = x, .y = y, .st = st};
    s_bounds(q, &io.qn, &io.qp);
    int need = 0;
    for (int64_t k = 0; k < st->numel; k++) need |= st->data[k] == 0.0f;
    if (need) {
        io.acc = eq_quant_chunk_acc(q, q->g);
        eq_quant_for_chunks(q, s_abs_chunk, &io);
        memset(p->acc, 0, (size_t)q->g * sizeof(double));
        for (int64_t c = 0; c < q->nchunks; c++)
            for (int64_t k = 0; k < q->g; k++) p->acc[k] += io.acc[c * q->g + k];
        double per = (double)q->n / (double)q->g, tot = 0;
        for (int64_t k = 0; k < q->g; k++) tot += p->acc[k];
        for (int64_t k = 0; k < st->numel; k++) {
            if (st->data[k] != 0.0f) continue;
            double mean = st->numel == 1 ? tot / (double)q->n : p->acc[k] / per;
            st->data[k] = (float)(2.0 * mean / sqrt((double)io.qp));
            if (!(st->data[k] > 0.0f))
                return eq_err_set(err, EQ_ERR_INVALID,
                                  "quant lsq-step: cannot initialise step_size[%lld] from an "
                                  "all-zero group",
                                  (long long)k);
        }
    }
    s_fill_sv(q);
    eq_quant_for_chunks(q, s_fwd_chunk, &io);
    return EQ_OK;
}

/* dL/dx and G*dy/ds of one element. */
static inline __attribute__((always_inline)) float s_bwd_elem(float xv, float g, float s, float qn, float qp,
                                                              float *gxv)
{
    float r = xv / s;
    int below = r < qn, above = r > qp;
    float d = below ? qn : (above ? qp : eq_qround(r) - r);
    *gxv = (below || above) ? 0.0f : g;
    return g * d;
}

EQ_QSIMD_WIDE static void s_bwd_chunk(eq_quant *q, void *vc, int64_t ch, int64_t lo, int64_t hi)
{
    s_io *io = vc;
    const s_step *p = q->priv;
    float qn = io->qn, qp = io->qp;
    double *acc = io->acc + ch * q->g;
    if (eq_quant_rowwise(q)) {
        EQ_QFOR_ROWS_IN(q, lo, hi, s0, len, j0) {
            const float *x = io->x + s0, *gy = io->gy + s0, *sv = p->sv + j0;
            float *gx = io->gx + s0;
            double *a = acc + j0;
            for (int64_t t = 0; t < len; t++) a[t] += (double)s_bwd_elem(x[t], gy[t], sv[t], qn, qp, &gx[t]);
        }
        return;
    }
    EQ_QFOR_RUNS_IN(q, lo, hi, s0, len, k) {
        float s = s_step_of(io->st, k);
        double a = 0;
        float t[EQ_QBLOCK];
        for (int64_t b = s0; b < s0 + len; b += EQ_QBLOCK) {
            int64_t m = s0 + len - b < EQ_QBLOCK ? s0 + len - b : EQ_QBLOCK;
            const float *x = io->x + b, *gy = io->gy + b;
            float *gx = io->gx + b;
            for (int64_t j = 0; j < m; j++) t[j] = s_bwd_elem(x[j], gy[j], s, qn, qp, &gx[j]);
            a += eq_qsum(t, m);
        }
        acc[k] += a;
    }
}

static void s_backward(eq_quant *q, const float *x, const float *gy, float *gx)
{
    s_step *p = q->priv;
    eq_quant_tensor *st = eq_quant_find(q, "step_size");
    s_io io = {.x = x, .gy = gy, .gx = gx, .st = st};
    s_bounds(q, &io.qn, &io.qp);
    io.acc = eq_quant_chunk_acc(q, q->g);
    s_fill_sv(q);
    eq_quant_for_chunks(q, s_bwd_chunk, &io);
    memset(p->acc, 0, (size_t)q->g * sizeof(double));
    for (int64_t c = 0; c < q->nchunks; c++)
        for (int64_t k = 0; k < q->g; k++) p->acc[k] += io.acc[c * q->g + k];
    /* elements per group per sample */
    double npg = (double)q->n / (double)q->g / (double)q->batch;
    double gs = 1.0 / sqrt(npg * (double)io.qp);
    for (int64_t k = 0; k < st->numel; k++) {
        double tot = 0;
        if (st->numel == 1)
            for (int64_t j = 0; j < q->g; j++) tot += p->acc[j];
        else
            tot = p->acc[k];
        st->grad[k] = (float)(gs * tot);
    }
}

const eq_quant_method eq_quant_lsq_step_method = {
    .name = "lsq-step",
    .tags = (1u << EQ_QTAG_WT) | (1u << EQ_QTAG_FM) | (1u << EQ_QTAG_OT),
    .family = EQ_QFAM_DOREFA,
    .fixed_levels = 0,
    .uses_var_mean = 1,
    .init = s_init,
    .forward = s_forward,
    .backward = s_backward,
    .destroy = s_destroy,
};
