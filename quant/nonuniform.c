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
    /* per group, [i * g + k]: |alpha_i|, 1/|alpha_i|, and for j < i the
     * factor a_i/a_j^2 of d(clamp i)/d(alpha_j) at cf[(i * S_MAXA + j) * g + k] */
    float *av, *iv, *cf;
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
    p->av = calloc((size_t)(S_MAXA * q->g), sizeof(float));
    p->iv = calloc((size_t)(S_MAXA * q->g), sizeof(float));
    p->cf = calloc((size_t)(S_MAXA * S_MAXA * q->g), sizeof(float));
    if (!p->av || !p->iv || !p->cf) return eq_err_set(err, EQ_ERR_NOMEM, "nonuniform: out of memory");
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
    if (p) {
        free(p->av);
        free(p->iv);
        free(p->cf);
    }
    free(p);
    q->priv = NULL;
}

/* Per-group vectors of the current alphas. */
static void s_fill(eq_quant *q)
{
    s_nu *p = q->priv;
    int64_t g = q->g;
    for (int i = 0; i < p->na; i++) {
        const eq_quant_tensor *t = p->alpha[i];
        for (int64_t k = 0; k < g; k++) {
            float a = fabsf(t->data[t->numel == 1 ? 0 : k]);
            p->av[i * g + k] = a;
            p->iv[i * g + k] = 1.0f / a;
        }
        for (int j = 0; j < i; j++)
            for (int64_t k = 0; k < g; k++) {
                double aj = p->av[j * g + k];
                p->cf[(i * S_MAXA + j) * g + k] = (float)((double)p->av[i * g + k] / (aj * aj));
            }
    }
}

/* Range of clamp i (before rounding). */
static inline float s_lo(int full, int i) { return (full && i == 0) ? -1.0f : 0.0f; }
static inline float s_hi(int full, int i) { return (full && i == 0) ? 0.0f : 1.0f; }

/* Element loops over a segment whose group parameters are av[i * as + t *
 * cs] (cs 0: one group, whose vectors start at av; cs 1: group per
 * position).  na, full, cs and the flags are constants at each call site,
 * so the alpha loops unroll and the element loops vectorize. */
typedef struct s_seg {
    const float *av, *iv, *cf; /* at the segment's first group */
    int64_t as;                /* stride between alphas (g) */
} s_seg;

static inline __attribute__((always_inline)) void
s_fwd_seg(const float *x, float *y, int64_t len, s_seg sg, const float *sc, int na, int full, int cs)
{
    float a[S_MAXA], iv[S_MAXA], scl[S_MAXA];
    for (int i = 0; i < na; i++) {
        a[i] = sg.av[i * sg.as];
        iv[i] = sg.iv[i * sg.as];
        scl[i] = sc[i];
    }
    for (int64_t e = 0; e < len; e++) {
        float xv = x[e], t = xv, acc = 0.0f;
#pragma GCC unroll 4
        for (int i = 0; i < na; i++) {
            float ai = cs ? sg.av[i * sg.as + e] : a[i];
            float v = (full ? xv : t) * ai;
            acc += eq_qround(eq_quant_gs_value(eq_qclamp(v, s_lo(full, i), s_hi(full, i)), scl[i]));
            t = t - (cs ? sg.iv[i * sg.as + e] : iv[i]);
        }
        y[e] = acc;
    }
}

/* Counts of elements inside each clamp's range (STE-scale). */
static inline __attribute__((always_inline)) void
s_cnt_seg(const float *x, int64_t len, s_seg sg, int64_t *cnt, int na, int full, int cs)
{
    int64_t c[S_MAXA] = {0};
    float a[S_MAXA], iv[S_MAXA];
    for (int i = 0; i < na; i++) {
        a[i] = sg.av[i * sg.as];
        iv[i] = sg.iv[i * sg.as];
    }
    for (int64_t e = 0; e < len; e++) {
        float xv = x[e], t = xv;
#pragma GCC unroll 4
        for (int i = 0; i < na; i++) {
            float v = (full ? xv : t) * (cs ? sg.av[i * sg.as + e] : a[i]);
            c[i] += (v >= s_lo(full, i)) & (v <= s_hi(full, i));
            t = t - (cs ? sg.iv[i * sg.as + e] : iv[i]);
        }
    }
    for (int i = 0; i < na; i++) cnt[i] += c[i];
}

/* dL/dx of one element and its contributions ga[j] to dL/d|alpha_j|:
 * G d(clamp j)/da_j inside range j, plus for the half-range sum the terms
 * G a_i/a_j^2 of every later clamp i inside its range.  a, iv and cf are
 * the element's group parameters (cf[i * S_MAXA + j] = a_i/a_j^2). */
static inline __attribute__((always_inline)) float
s_bwd_elem(float xv, float g, const float *a, const float *iv, const float *cf, const float *sc, float *ga,
           int na, int full)
{
    float t = xv, gxe = 0.0f, din[S_MAXA];
#pragma GCC unroll 4
    for (int i = 0; i < na; i++) {
        float base = full ? xv : t;
        float v = base * a[i];
        int in = (v >= s_lo(full, i)) & (v <= s_hi(full, i));
        float d = g * sc[i];
        gxe = in ? gxe + d * a[i] : gxe;
        ga[i] = in ? d * base : 0.0f;
        din[i] = in ? d : 0.0f;
        t = t - iv[i];
    }
    if (!full)
#pragma GCC unroll 4
        for (int i = 1; i < na; i++)
#pragma GCC unroll 4
            for (int j = 0; j < i; j++) ga[j] += din[i] * cf[i * S_MAXA + j];
    return gxe;
}

/* Parameters of group (or position) k into local arrays. */
static inline __attribute__((always_inline)) void
s_load(s_seg sg, int64_t k, float *a, float *iv, float *cf, int na)
{
#pragma GCC unroll 4
    for (int i = 0; i < na; i++) {
        a[i] = sg.av[i * sg.as + k];
        iv[i] = sg.iv[i * sg.as + k];
#pragma GCC unroll 4
        for (int j = 0; j < i; j++) cf[i * S_MAXA + j] = sg.cf[(i * S_MAXA + j) * sg.as + k];
    }
}

/* One run (one group): gx, and the alpha sums added to ga (per block of
 * EQ_QBLOCK elements, summed by eq_qsum). */
static inline __attribute__((always_inline)) void
s_bwd_run(const float *x, const float *gy, float *gx, int64_t len, s_seg sg, float bsc, int scaled_g,
          const float *sc, double *ga, int na, int full)
{
    float buf[S_MAXA][EQ_QBLOCK], a[S_MAXA], iv[S_MAXA], cf[S_MAXA * S_MAXA], scl[S_MAXA];
    s_load(sg, 0, a, iv, cf, na);
    for (int i = 0; i < na; i++) scl[i] = sc[i];
    for (int64_t b = 0; b < len; b += EQ_QBLOCK) {
        int64_t bn = len - b < EQ_QBLOCK ? len - b : EQ_QBLOCK;
        for (int64_t e = 0; e < bn; e++) {
            float gv = gy[b + e];
            float g = scaled_g ? gv * bsc : gv, c[S_MAXA];
            gx[b + e] = s_bwd_elem(x[b + e], g, a, iv, cf, scl, c, na, full);
#pragma GCC unroll 4
            for (int i = 0; i < na; i++) buf[i][e] = c[i];
        }
        for (int i = 0; i < na; i++) ga[i] += eq_qsum(buf[i], bn);
    }
}

/* One row segment (group per position): per-position sums acc[i * g + t]. */
static inline __attribute__((always_inline)) void
s_bwd_row(const float *x, const float *gy, float *gx, int64_t len, s_seg sg, float bsc, int scaled_g,
          const float *sc, double *acc, int64_t g, int na, int full)
{
    float scl[S_MAXA];
    const float *pa[S_MAXA], *pi[S_MAXA], *pc[S_MAXA * S_MAXA];
    double *pd[S_MAXA];
    for (int i = 0; i < na; i++) {
        scl[i] = sc[i];
        pa[i] = sg.av + i * sg.as;
        pi[i] = sg.iv + i * sg.as;
        pd[i] = acc + i * g;
        for (int j = 0; j < i; j++) pc[i * S_MAXA + j] = sg.cf + (i * S_MAXA + j) * sg.as;
    }
    /* Too many streams for GCC's runtime alias checks; true, though: each
     * iteration writes only gx[e] and acc[.][e] from its own element (gx may
     * be gy, which is read first), so no dependence crosses iterations. */
#pragma GCC ivdep
    for (int64_t e = 0; e < len; e++) {
        float a[S_MAXA], iv[S_MAXA], cf[S_MAXA * S_MAXA], c[S_MAXA];
#pragma GCC unroll 4
        for (int i = 0; i < na; i++) {
            a[i] = pa[i][e];
            iv[i] = pi[i][e];
#pragma GCC unroll 4
            for (int j = 0; j < i; j++) cf[i * S_MAXA + j] = pc[i * S_MAXA + j][e];
        }
        float gv = gy[e];
        float gg = scaled_g ? gv * bsc : gv;
        gx[e] = s_bwd_elem(x[e], gg, a, iv, cf, scl, c, na, full);
#pragma GCC unroll 4
        for (int i = 0; i < na; i++) pd[i][e] += (double)c[i];
    }
}

typedef struct s_io {
    const float *x, *gy;
    float *y, *gx;
    float bsc;   /* basis the gradient is scaled by (closed form) */
    double *acc; /* per chunk: [na] counts (forward) or [na * g] sums */
} s_io;

/* The variant of each (na, full) combination: 0 full (two alphas),
 * 1..3 half range with that many alphas. */
static int s_variant(const s_nu *p) { return p->full ? 0 : p->na; }

static s_seg s_seg_at(const s_nu *p, const eq_quant *q, int64_t k)
{
    s_seg sg = {p->av + k, p->iv + k, p->cf + k, q->g};
    return sg;
}

EQ_QSIMD_WIDE static void s_cnt_chunk(eq_quant *q, void *vc, int64_t c, int64_t lo, int64_t hi)
{
    s_io *io = vc;
    const s_nu *p = q->priv;
    int64_t cnt[S_MAXA] = {0};
    int v = s_variant(p);
    if (eq_quant_rowwise(q)) {
        EQ_QFOR_ROWS_IN(q, lo, hi, s0, len, j0) {
            s_seg sg = s_seg_at(p, q, j0);
            const float *x = io->x + s0;
            switch (v) {
            case 0: s_cnt_seg(x, len, sg, cnt, 2, 1, 1); break;
            case 1: s_cnt_seg(x, len, sg, cnt, 1, 0, 1); break;
            case 2: s_cnt_seg(x, len, sg, cnt, 2, 0, 1); break;
            default: s_cnt_seg(x, len, sg, cnt, 3, 0, 1); break;
            }
        }
    } else {
        EQ_QFOR_RUNS_IN(q, lo, hi, s0, len, k) {
            s_seg sg = s_seg_at(p, q, k);
            const float *x = io->x + s0;
            switch (v) {
            case 0: s_cnt_seg(x, len, sg, cnt, 2, 1, 0); break;
            case 1: s_cnt_seg(x, len, sg, cnt, 1, 0, 0); break;
            case 2: s_cnt_seg(x, len, sg, cnt, 2, 0, 0); break;
            default: s_cnt_seg(x, len, sg, cnt, 3, 0, 0); break;
            }
        }
    }
    for (int i = 0; i < p->na; i++) io->acc[c * p->na + i] = (double)cnt[i];
}

EQ_QSIMD_WIDE static void s_fwd_chunk(eq_quant *q, void *vc, int64_t c, int64_t lo, int64_t hi)
{
    (void)c;
    s_io *io = vc;
    const s_nu *p = q->priv;
    const float *sc = p->sc;
    int v = s_variant(p);
    if (eq_quant_rowwise(q)) {
        EQ_QFOR_ROWS_IN(q, lo, hi, s0, len, j0) {
            s_seg sg = s_seg_at(p, q, j0);
            const float *x = io->x + s0;
            float *y = io->y + s0;
            switch (v) {
            case 0: s_fwd_seg(x, y, len, sg, sc, 2, 1, 1); break;
            case 1: s_fwd_seg(x, y, len, sg, sc, 1, 0, 1); break;
            case 2: s_fwd_seg(x, y, len, sg, sc, 2, 0, 1); break;
            default: s_fwd_seg(x, y, len, sg, sc, 3, 0, 1); break;
            }
        }
        return;
    }
    EQ_QFOR_RUNS_IN(q, lo, hi, s0, len, k) {
        s_seg sg = s_seg_at(p, q, k);
        const float *x = io->x + s0;
        float *y = io->y + s0;
        switch (v) {
        case 0: s_fwd_seg(x, y, len, sg, sc, 2, 1, 0); break;
        case 1: s_fwd_seg(x, y, len, sg, sc, 1, 0, 0); break;
        case 2: s_fwd_seg(x, y, len, sg, sc, 2, 0, 0); break;
        default: s_fwd_seg(x, y, len, sg, sc, 3, 0, 0); break;
        }
    }
}

EQ_QSIMD_WIDE static void s_scale_chunk(eq_quant *q, void *vc, int64_t c, int64_t lo, int64_t hi)
{
    (void)q, (void)c;
    s_io *io = vc;
    float b = io->bsc, *y = io->y;
    for (int64_t e = lo; e < hi; e++) y[e] = y[e] * b;
}

static eq_status s_forward(eq_quant *q, const float *x, float *y, eq_err *err)
{
    (void)err;
    s_nu *p = q->priv;
    s_io io = {.x = x, .y = y};
    s_fill(q);
    for (int i = 0; i < p->na; i++) p->sc[i] = 1.0f;
    if (q->o.grad_type == EQ_QGRAD_STE_SCALE) {
        io.acc = eq_quant_chunk_acc(q, p->na);
        eq_quant_for_chunks(q, s_cnt_chunk, &io);
        for (int i = 0; i < p->na; i++) {
            double cnt = 0;
            for (int64_t c = 0; c < q->nchunks; c++) cnt += io.acc[c * p->na + i];
            if (cnt > 0) p->sc[i] = (float)eq_quant_gs_factor(q, sqrt((double)q->n / cnt));
        }
    }
    eq_quant_for_chunks(q, s_fwd_chunk, &io);
    if (p->basis) {
        if (q->train) {
            double yx = eq_qdot(y, x, q->n), yy = eq_qdot(y, y, q->n), sx = 0;
            for (int64_t b = 0; b < q->n; b += EQ_QBLOCK)
                sx += eq_qsum(x + b, q->n - b < EQ_QBLOCK ? q->n - b : EQ_QBLOCK);
            p->auxil->data[0] = (float)(yy != 0 ? yx / yy : sx / (double)q->n);
            /* update_bias (§2.11.6) */
            float it = *q->iteration, aux = p->auxil->data[0];
            if (q->o.custom_update)
                p->basis->data[0] = (p->basis->data[0] * it + aux) / (it + 1.0f);
            else
                p->basis->data[0] = aux;
            *q->iteration += 1.0f;
        }
        p->used_basis = io.bsc = p->basis->data[0];
        eq_quant_for_chunks(q, s_scale_chunk, &io);
    }
    return EQ_OK;
}

/* The backward variants: (na, full) as in s_variant, times the closed
 * form's gradient scaling, times runs vs rows. */
#define S_BWD_RUN(NA, FULL)                                                                              \
    (sgd ? s_bwd_run(x, gy, gx, len, sg, b, 1, sc, ga, NA, FULL)                                         \
         : s_bwd_run(x, gy, gx, len, sg, b, 0, sc, ga, NA, FULL))
#define S_BWD_ROW(NA, FULL)                                                                              \
    (sgd ? s_bwd_row(x, gy, gx, len, sg, b, 1, sc, a, g, NA, FULL)                                       \
         : s_bwd_row(x, gy, gx, len, sg, b, 0, sc, a, g, NA, FULL))

EQ_QSIMD_WIDE static void s_bwd_chunk(eq_quant *q, void *vc, int64_t c, int64_t lo, int64_t hi)
{
    s_io *io = vc;
    const s_nu *p = q->priv;
    const float *sc = p->sc;
    int v = s_variant(p), sgd = p->basis != NULL;
    int64_t g = q->g;
    float b = io->bsc;
    double *acc = io->acc + c * p->na * g;
    if (eq_quant_rowwise(q)) {
        EQ_QFOR_ROWS_IN(q, lo, hi, s0, len, j0) {
            s_seg sg = s_seg_at(p, q, j0);
            const float *x = io->x + s0, *gy = io->gy + s0;
            float *gx = io->gx + s0;
            double *a = acc + j0;
            switch (v) {
            case 0: S_BWD_ROW(2, 1); break;
            case 1: S_BWD_ROW(1, 0); break;
            case 2: S_BWD_ROW(2, 0); break;
            default: S_BWD_ROW(3, 0); break;
            }
        }
        return;
    }
    EQ_QFOR_RUNS_IN(q, lo, hi, s0, len, k) {
        s_seg sg = s_seg_at(p, q, k);
        const float *x = io->x + s0, *gy = io->gy + s0;
        float *gx = io->gx + s0;
        double ga[S_MAXA] = {0};
        switch (v) {
        case 0: S_BWD_RUN(2, 1); break;
        case 1: S_BWD_RUN(1, 0); break;
        case 2: S_BWD_RUN(2, 0); break;
        default: S_BWD_RUN(3, 0); break;
        }
        for (int i = 0; i < p->na; i++) acc[i * g + k] += ga[i];
    }
}

static void s_backward(eq_quant *q, const float *x, const float *gy, float *gx)
{
    s_nu *p = q->priv;
    int na = p->na;
    int64_t g = q->g;
    s_io io = {.x = x, .gy = gy, .gx = gx, .bsc = p->basis ? p->used_basis : 1.0f};
    s_fill(q);
    io.acc = eq_quant_chunk_acc(q, na * g);
    eq_quant_for_chunks(q, s_bwd_chunk, &io);
    for (int i = 0; i < na; i++) {
        eq_quant_tensor *t = p->alpha[i];
        for (int64_t k = 0; k < t->numel; k++) {
            double tot = 0;
            for (int64_t c = 0; c < q->nchunks; c++) {
                const double *a = io.acc + c * na * g + i * g;
                if (t->numel == 1)
                    for (int64_t j = 0; j < g; j++) tot += a[j];
                else
                    tot += a[k];
            }
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
