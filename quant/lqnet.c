/*
 * quant/lqnet.c -- LQ-Net (ORIGINAL.md §2.11): levels are the binary
 * combinations of a per-group basis v (bit x g); in training every forward
 * solves for the basis minimising the quantization error of the current
 * codes and blends it into the basis (0.9/0.1 EMA, or with custom_update
 * the cumulative mean of all per-batch solutions).
 *
 * Buffers (names as the original's): basis (bit, g), auxil (bit, g),
 * codec_vector (L, bit), codec_index (L), thrs_multiplier (L-1, L).
 * Backward: fm 1[x_normalized < largest level], wt identity; the basis
 * gets no gradient.
 */
#include "quant/quant_internal.h"

#include <stdlib.h>
#include <string.h>

#define S_MAXBIT 8

typedef struct s_lq {
    int L, bit, half;
    eq_quant_tensor *basis, *auxil, *codec, *index, *thrs;
    float *lev;    /* [L][g] sorted levels of the last forward */
    int *perm;     /* [L][g] sorted rank -> codec row */
    float *theta;  /* [(L-1)][g] thresholds */
    float *lmax;   /* [g] largest level used by the last forward */
    double *ata;   /* [g][bit][bit] */
    double *atx;   /* [g][bit] */
    float *nrm_a, *nrm_b; /* per sample (fm) or group (wt): y = l * a + b */
    int xn_is_x;   /* adaptive none: the last forward quantized x itself (no copy in q->xn) */
    /* per group, for the block loop: levels [g][L], thresholds [g][L-1],
     * code bits [g][bit][L] by level rank, thresholds in order [g] */
    float *glev, *gth, *gcoef;
    int *gmono;
    double *cacc;  /* per-chunk level counts [g][L] and B^T x [g][bit] */
    int64_t cacc_cap;
    int64_t nrm_cap;
} s_lq;

static eq_status s_init(eq_quant *q, eq_err *err)
{
    int L = eq_quant_levels(q);
    int fm = q->o.tag != EQ_QTAG_WT;
    if (L > 256) return eq_err_set(err, EQ_ERR_INVALID, "quant lqnet: %d levels; at most 256", L);
    int bit = L == 3 ? 1 : q->bit; /* the original forces bit = 1 for 3 levels (degenerate) */
    if (bit < 1 || bit > S_MAXBIT)
        return eq_err_set(err, EQ_ERR_INVALID, "quant lqnet: bit %d outside [1, %d]", bit, S_MAXBIT);
    eq_quant_adaptive a = q->o.adaptive;
    if (fm && !(a == EQ_QADAPT_NONE || a == EQ_QADAPT_MEAN || a == EQ_QADAPT_VAR || a == EQ_QADAPT_MIN))
        return eq_err_set(err, EQ_ERR_INVALID, "quant option adaptive: lqnet fm supports none, mean, var, min");
    if (!fm && !(a == EQ_QADAPT_NONE || a == EQ_QADAPT_MEAN || a == EQ_QADAPT_VAR || a == EQ_QADAPT_MEAN_VAR))
        return eq_err_set(err, EQ_ERR_INVALID,
                          "quant option adaptive: lqnet wt supports none, mean, var, mean-var");
    if (q->o.grad_type != EQ_QGRAD_NONE || q->o.grad_scale != EQ_QGS_NONE)
        return eq_err_set(err, EQ_ERR_INVALID, "quant options grad_type/grad_scale: not used by method lqnet");
    s_lq *p = calloc(1, sizeof *p);
    q->priv = p;
    if (!p) return eq_err_set(err, EQ_ERR_NOMEM, "lqnet: out of memory");
    int64_t g = q->g;
    p->L = L;
    p->bit = bit;
    p->half = q->o.half_range;
    p->lev = eq_malloc_array((size_t)(L * g), sizeof(float));
    p->perm = eq_malloc_array((size_t)(L * g), sizeof(int));
    p->theta = eq_malloc_array((size_t)((L - 1) * g), sizeof(float));
    p->lmax = eq_malloc_array((size_t)g, sizeof(float));
    p->ata = eq_malloc_array((size_t)(g * bit * bit), sizeof(double));
    p->atx = eq_malloc_array((size_t)(g * bit), sizeof(double));
    p->glev = eq_malloc_array((size_t)(L * g), sizeof(float));
    p->gth = eq_malloc_array((size_t)((L - 1) * g), sizeof(float));
    p->gcoef = eq_malloc_array((size_t)(L * bit * g), sizeof(float));
    p->gmono = eq_malloc_array((size_t)g, sizeof(int));
    if (!p->lev || !p->perm || !p->theta || !p->lmax || !p->ata || !p->atx || !p->glev || !p->gth ||
        !p->gcoef || !p->gmono)
        return eq_err_set(err, EQ_ERR_NOMEM, "lqnet: out of memory");

    p->basis = eq_quant_add_tensor(q, "basis", 2, (int64_t[]){bit, g}, 0.0f, 0, err);
    if (!p->basis) return err ? err->code : EQ_ERR_NOMEM;
    p->auxil = eq_quant_add_tensor(q, "auxil", 2, (int64_t[]){bit, g}, 0.0f, 0, err);
    if (!p->auxil) return err ? err->code : EQ_ERR_NOMEM;
    p->codec = eq_quant_add_tensor(q, "codec_vector", 2, (int64_t[]){L, bit}, 0.0f, 0, err);
    if (!p->codec) return err ? err->code : EQ_ERR_NOMEM;
    p->index = eq_quant_add_tensor(q, "codec_index", 1, (int64_t[]){L}, 0.0f, 0, err);
    if (!p->index) return err ? err->code : EQ_ERR_NOMEM;
    p->thrs = eq_quant_add_tensor(q, "thrs_multiplier", 2, (int64_t[]){L - 1, L}, 0.0f, 0, err);
    if (!p->thrs) return err ? err->code : EQ_ERR_NOMEM;

    double beta = fm ? 0.6745 * 2.0 / pow(2.0, bit - 1)
                     : 0.6745 * sqrt(2.0 / (double)q->fan) / pow(2.0, bit - 1);
    for (int i = 0; i < bit; i++)
        for (int64_t k = 0; k < g; k++) p->basis->data[i * g + k] = (float)(pow(2.0, i) * beta);
    for (int k = 0; k < L; k++) {
        p->index->data[k] = (float)k;
        for (int j = 0; j < bit; j++) {
            int b = (k >> j) & 1; /* floor(k / 2^j) mod 2 */
            p->codec->data[k * bit + j] = b ? 1.0f : (p->half ? 0.0f : -1.0f);
        }
    }
    float s = (float)q->o.scale;
    for (int i = 1; i < L; i++) {
        float *row = p->thrs->data + (i - 1) * L;
        float wl, wr; /* weights of l_{i-1}, l_i */
        if (p->half) {
            wl = s;
            wr = 1.0f - s;
        } else if ((double)i < L / 2.0) {
            wl = 1.0f - s;
            wr = s;
        } else if ((double)i > L / 2.0) {
            wl = s;
            wr = 1.0f - s;
        } else {
            wl = wr = 0.5f;
        }
        row[i - 1] = wl;
        row[i] = wr;
    }
    return EQ_OK;
}

static void s_destroy(eq_quant *q)
{
    s_lq *p = q->priv;
    if (p) {
        free(p->lev);
        free(p->perm);
        free(p->theta);
        free(p->lmax);
        free(p->ata);
        free(p->atx);
        free(p->nrm_a);
        free(p->nrm_b);
        free(p->glev);
        free(p->gth);
        free(p->gcoef);
        free(p->gmono);
        free(p->cacc);
    }
    free(p);
    q->priv = NULL;
}

/* Levels, sort permutation and thresholds per group from the basis. */
static void s_levels(eq_quant *q, s_lq *p)
{
    int L = p->L, bit = p->bit;
    int64_t g = q->g;
    for (int64_t k = 0; k < g; k++) {
        float lv[256] = {0};
        int pm[256] = {0};
        for (int r = 0; r < L; r++) {
            float acc = 0.0f;
            for (int j = 0; j < bit; j++) acc += p->codec->data[r * bit + j] * p->basis->data[j * g + k];
            lv[r] = acc;
            pm[r] = r;
        }
        for (int a = 1; a < L; a++) { /* stable insertion sort, ascending */
            float v = lv[a];
            int pv = pm[a], b = a - 1;
            while (b >= 0 && lv[b] > v) {
                lv[b + 1] = lv[b];
                pm[b + 1] = pm[b];
                b--;
            }
            lv[b + 1] = v;
            pm[b + 1] = pv;
        }
        for (int r = 0; r < L; r++) {
            p->lev[r * g + k] = lv[r];
            p->perm[r * g + k] = pm[r];
        }
        p->lmax[k] = lv[L - 1];
        for (int i = 0; i < L - 1; i++) {
            float acc = 0.0f;
            for (int r = 0; r < L; r++) acc += p->thrs->data[i * L + r] * lv[r];
            p->theta[i * g + k] = acc;
        }
    }
}

/* Pre-normalization: writes q->xn and the per-sample/per-group restore
 * factors y = l * a + b. */
static eq_status s_normalize(eq_quant *q, s_lq *p, const float *x, eq_err *err)
{
    int fm = q->o.tag != EQ_QTAG_WT;
    int64_t nseg = fm ? q->batch : q->g, per = q->n / nseg;
    if (p->nrm_cap < nseg) {
        float *a = realloc(p->nrm_a, (size_t)nseg * sizeof(float));
        if (a) p->nrm_a = a;
        float *b = a ? realloc(p->nrm_b, (size_t)nseg * sizeof(float)) : NULL;
        if (b) p->nrm_b = b;
        if (!b) return eq_err_set(err, EQ_ERR_NOMEM, "lqnet: out of memory");
        p->nrm_cap = nseg;
    }
    eq_quant_adaptive ad = q->o.adaptive;
    p->xn_is_x = ad == EQ_QADAPT_NONE;
    float gmin = 0.0f;
    if (ad == EQ_QADAPT_MIN) {
        gmin = x[0];
        for (int64_t i = 1; i < q->n; i++)
            if (x[i] < gmin) gmin = x[i];
    }
    for (int64_t s = 0; s < nseg; s++) {
        const float *xs = x + s * per;
        float *o = q->xn + s * per;
        double sum = 0, var = 0;
        if (ad == EQ_QADAPT_MEAN || ad == EQ_QADAPT_VAR || ad == EQ_QADAPT_MEAN_VAR) {
            for (int64_t i = 0; i < per; i++) sum += xs[i];
            double mu = sum / (double)per;
            for (int64_t i = 0; i < per; i++) var += ((double)xs[i] - mu) * ((double)xs[i] - mu);
        }
        float mu = (float)(sum / (double)per);
        float sd = per > 1 ? (float)sqrt(var / (double)(per - 1)) : NAN;
        float a = 1.0f, b = 0.0f;
        switch (ad) {
        case EQ_QADAPT_MEAN:
            if (fm) {
                a = mu + 1e-5f;
                for (int64_t i = 0; i < per; i++) o[i] = xs[i] / a;
            } else {
                b = mu;
                for (int64_t i = 0; i < per; i++) o[i] = xs[i] - b;
            }
            break;
        case EQ_QADAPT_VAR:
            a = sd + 1e-5f;
            for (int64_t i = 0; i < per; i++) o[i] = xs[i] / a;
            break;
        case EQ_QADAPT_MEAN_VAR:
            a = sd + 1e-5f;
            b = mu;
            for (int64_t i = 0; i < per; i++) o[i] = (xs[i] - b) / a;
            break;
        case EQ_QADAPT_MIN:
            b = gmin;
            for (int64_t i = 0; i < per; i++) o[i] = xs[i] - b;
            break;
        default: /* none: the quantizer reads x itself (p->xn_is_x) */
            break;
        }
        p->nrm_a[s] = a;
        p->nrm_b[s] = b;
    }
    return EQ_OK;
}

/* Solve the bit x bit system m z = r (Gaussian elimination, partial pivoting). */
static void s_solve(int nb, double *m, double *r, double *z)
{
    for (int c = 0; c < nb; c++) {
        int piv = c;
        for (int i = c + 1; i < nb; i++)
            if (fabs(m[i * nb + c]) > fabs(m[piv * nb + c])) piv = i;
        if (piv != c) {
            for (int j = 0; j < nb; j++) {
                double t = m[c * nb + j];
                m[c * nb + j] = m[piv * nb + j];
                m[piv * nb + j] = t;
            }
            double t = r[c];
            r[c] = r[piv];
            r[piv] = t;
        }
        for (int i = c + 1; i < nb; i++) {
            double f = m[i * nb + c] / m[c * nb + c];
            for (int j = c; j < nb; j++) m[i * nb + j] -= f * m[c * nb + j];
            r[i] -= f * r[c];
        }
    }
    for (int i = nb - 1; i >= 0; i--) {
        double acc = r[i];
        for (int j = i + 1; j < nb; j++) acc -= m[i * nb + j] * z[j];
        z[i] = acc / m[i * nb + i];
    }
}

/* One group's levels, thresholds and codes, for s_block. */
#define S_BLK 256
typedef struct s_run {
    int L, bit, mono;   /* mono: thresholds non-decreasing */
    const float *lev;   /* [L] */
    const float *th;    /* [L-1] */
    const float *coef;  /* [bit][L]: code bit a of the level of rank r */
} s_run;

/* Quantize m <= S_BLK elements of one group and one normalisation segment:
 * idx = the last i with v > th[i-1] (with non-decreasing thresholds that is
 * the number of thresholds below v: vectorizable compares), y = lev[idx]*a
 * + b, and in training the level counts (cnt[L], exact integers in double)
 * and x's projections on the codes (atx[bit], B^T x: double products,
 * summed in four double lanes per block). */
EQ_QSIMD_WIDE static void s_block(const s_run *c, const float *v, int m, float a, float b, float *y, int train,
                                  double *cnt, double *atx)
{
    int32_t id[S_BLK];
    int L = c->L;
    if (c->mono) {
        int32_t ge[256];
        for (int j = 0; j < m; j++) id[j] = 0;
        for (int i = 0; i < L - 1; i++) {
            float t = c->th[i];
            int32_t n = 0;
            for (int j = 0; j < m; j++) {
                int32_t gt = v[j] > t;
                id[j] += gt;
                n += gt;
            }
            ge[i] = n;
        }
        if (train) { /* level r: ge[r-1] - ge[r] elements */
            cnt[0] += m - (L > 1 ? ge[0] : 0);
            for (int r = 1; r < L - 1; r++) cnt[r] += ge[r - 1] - ge[r];
            cnt[L - 1] += ge[L - 2];
        }
    } else {
        for (int j = 0; j < m; j++) {
            int idx = 0;
            for (int i = 1; i < L; i++)
                if (v[j] > c->th[i - 1]) idx = i;
            id[j] = idx;
            if (train) cnt[idx]++;
        }
    }
    for (int j = 0; j < m; j++) y[j] = c->lev[id[j]] * a + b;
    if (!train) return;
    for (int bi = 0; bi < c->bit; bi++) {
        const float *cf = c->coef + bi * L;
        double d0 = 0, d1 = 0, d2 = 0, d3 = 0;
        int j = 0;
        for (; j + 4 <= m; j += 4) {
            d0 += (double)cf[id[j]] * v[j];
            d1 += (double)cf[id[j + 1]] * v[j + 1];
            d2 += (double)cf[id[j + 2]] * v[j + 2];
            d3 += (double)cf[id[j + 3]] * v[j + 3];
        }
        for (; j < m; j++) d0 += (double)cf[id[j]] * v[j];
        atx[bi] += (d0 + d1) + (d2 + d3);
    }
}

typedef struct s_fctx {
    const float *xn;
    float *y;
    int64_t per; /* elements per normalisation segment */
    int64_t pc;  /* accumulators per chunk */
} s_fctx;

/* One chunk of the forward: runs of one group cut into blocks within one
 * normalisation segment; counts and B^T x into the chunk's accumulators. */
static void s_fwd_chunk(eq_quant *q, void *vc, int64_t c, int64_t lo, int64_t hi)
{
    const s_fctx *f = vc;
    s_lq *p = q->priv;
    int L = p->L, bit = p->bit;
    int64_t g = q->g;
    double *acc = q->train ? p->cacc + c * f->pc : NULL;
    EQ_QFOR_RUNS_IN(q, lo, hi, s0, len, k) {
        s_run r = {L, bit, p->gmono[k], p->glev + k * L, p->gth + k * (L - 1), p->gcoef + k * bit * L};
        double *cnt = acc ? acc + k * L : NULL, *atx = acc ? acc + g * L + k * bit : NULL;
        for (int64_t e0 = s0; e0 < s0 + len;) {
            int64_t sg = e0 / f->per, e1 = s0 + len;
            if (e1 > (sg + 1) * f->per) e1 = (sg + 1) * f->per;
            if (e1 > e0 + S_BLK) e1 = e0 + S_BLK;
            s_block(&r, f->xn + e0, (int)(e1 - e0), p->nrm_a[sg], p->nrm_b[sg], f->y + e0, q->train, cnt, atx);
            e0 = e1;
        }
    }
}

static eq_status s_forward(eq_quant *q, const float *x, float *y, eq_err *err)
{
    s_lq *p = q->priv;
    int L = p->L, bit = p->bit, fm = q->o.tag != EQ_QTAG_WT;
    int64_t g = q->g;
    eq_status st = s_normalize(q, p, x, err);
    if (st) return st;
    s_levels(q, p);
    const float *xn = p->xn_is_x ? x : q->xn;
    int64_t nseg = fm ? q->batch : q->g, per = q->n / nseg;
    if (q->train) {
        memset(p->ata, 0, (size_t)(g * bit * bit) * sizeof(double));
        memset(p->atx, 0, (size_t)(g * bit) * sizeof(double));
    }
    const float *E = p->codec->data;
    for (int64_t k = 0; k < g; k++) {
        int mono = 1;
        for (int r = 0; r < L; r++) {
            p->glev[k * L + r] = p->lev[r * g + k];
            /* lq_codes=zero: the update sees codec row 0 for every element */
            const float *row = E + (q->o.lq_zero_codes ? 0 : p->perm[r * g + k]) * bit;
            for (int a = 0; a < bit; a++) p->gcoef[(k * bit + a) * L + r] = row[a];
        }
        for (int i = 0; i < L - 1; i++) p->gth[k * (L - 1) + i] = p->theta[i * g + k];
        for (int i = 0; i + 1 < L - 1; i++)
            if (!(p->gth[k * (L - 1) + i] <= p->gth[k * (L - 1) + i + 1])) mono = 0; /* NaN too */
        p->gmono[k] = mono;
    }
    int64_t pc = g * (L + bit); /* accumulators per chunk */
    if (q->train && q->nchunks * pc > p->cacc_cap) {
        double *ac = realloc(p->cacc, (size_t)(q->nchunks * pc) * sizeof(double));
        if (!ac) return eq_err_set(err, EQ_ERR_NOMEM, "lqnet: out of memory for accumulators");
        p->cacc = ac;
        p->cacc_cap = q->nchunks * pc;
    }
    if (q->train) memset(p->cacc, 0, (size_t)(q->nchunks * pc) * sizeof(double));
    s_fctx f = {xn, y, per, pc};
    eq_quant_for_chunks(q, s_fwd_chunk, &f);
    if (q->train) { /* chunk partials in chunk order: the same for any pool size */
        for (int64_t c = 0; c < q->nchunks; c++) {
            const double *acc = p->cacc + c * pc;
            for (int64_t k = 0; k < g; k++) {
                /* B^T B from the level counts: sums of 0/+-1 products, exact */
                double *ata = p->ata + k * bit * bit;
                const float *cf = p->gcoef + k * bit * L;
                for (int r = 0; r < L; r++) {
                    double nr = acc[k * L + r];
                    if (nr == 0) continue;
                    for (int a = 0; a < bit; a++)
                        for (int b = 0; b < bit; b++)
                            ata[a * bit + b] += nr * ((double)cf[a * L + r] * cf[b * L + r]);
                }
                for (int a = 0; a < bit; a++) p->atx[k * bit + a] += acc[g * L + k * bit + a];
            }
        }
    }
    q->passthrough = 0;
    if (q->train) {
        float *vb = p->basis->data, *au = p->auxil->data;
        for (int64_t k = 0; k < g; k++) {
            double m[S_MAXBIT * S_MAXBIT], r[S_MAXBIT], z[S_MAXBIT];
            for (int a = 0; a < bit; a++) {
                r[a] = p->atx[k * bit + a];
                for (int b = 0; b < bit; b++) m[a * bit + b] = p->ata[(k * bit + a) * bit + b];
            }
            if (fm) {
                for (int a = 0; a < bit; a++)
                    if (m[a * bit + a] == 0) m[a * bit + a] = 1e-5;
            } else {
                for (int a = 0; a < bit; a++) {
                    m[a * bit + a] = (m[a * bit + a] + 1e-4) * 1.000001;
                    r[a] += 1e-4 * (double)vb[a * g + k];
                }
            }
            s_solve(bit, m, r, z);
            for (int a = 0; a < bit; a++) {
                float vs = (float)z[a], old = vb[a * g + k];
                au[a * g + k] = vs;
                if (q->o.custom_update) {
                    float it = *q->iteration;
                    vb[a * g + k] = (old * it + vs) / (it + 1.0f);
                } else {
                    vb[a * g + k] = 0.9f * old + 0.1f * vs;
                }
            }
        }
        *q->iteration += 1.0f;
    }
    /* warm-up (§2.11.6, §2.13): return x for the first `stable` steps */
    if (*q->iteration <= (float)q->o.stable && (q->train || !q->o.warmup_train_only)) {
        memcpy(y, x, (size_t)q->n * sizeof(float));
        q->passthrough = 1;
    }
    return EQ_OK;
}

static void s_backward(eq_quant *q, const float *x, const float *gy, float *gx)
{
    s_lq *p = q->priv;
    if (q->o.tag == EQ_QTAG_WT) {
        for (int64_t i = 0; i < q->n; i++) gx[i] = gy[i];
        return;
    }
    const float *xn = p->xn_is_x ? x : q->xn;
    EQ_QFOR_RUNS(q, s0, len, k) {
        float lm = p->lmax[k];
        for (int64_t e = s0; e < s0 + len; e++) {
            float g = gy[e]; /* loaded unconditionally: a select, not a branch */
            gx[e] = xn[e] < lm ? g : 0.0f;
        }
    }
}

const eq_quant_method eq_quant_lqnet_method = {
    .name = "lqnet",
    .tags = (1u << EQ_QTAG_WT) | (1u << EQ_QTAG_FM) | (1u << EQ_QTAG_OT),
    .family = EQ_QFAM_LQNET,
    .fixed_levels = 1,
    .uses_var_mean = 0,
    .init = s_init,
    .forward = s_forward,
    .backward = s_backward,
    .destroy = s_destroy,
};
