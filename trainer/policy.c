/*
 * trainer/policy.c -- policy files and the quantized-layer table
 * (policy.h).  The table is built from the model's public tensor list
 * (names "<layer>.quant_weight.*", "<layer>.quant_activation.*",
 * "<layer>.quant_output.*" beside "<layer>.weight"); quantizer state lives
 * in host memory (quant/quant.h), so it is read and written in place.
 */
#include "trainer/policy.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "core/log.h"

/* ================================================================ table */

#define S_MAX_STATE 16

typedef struct s_q {
    const eq_model_tensor *state[S_MAX_STATE]; /* in the quantizer's order */
    size_t nstate;
    float *level_num, *iteration;
    bool progressive;  /* from [quant.<tag>], then as policies set it */
    bool fixed_levels; /* the method's structure depends on the level count */
    char method[16];
    int adaptive;                    /* eq_quant_adaptive */
    bool var_mean, independent_norm; /* weights: var-mean normalisation and its groups */
    double norm_eps;
} s_q;

typedef struct s_layer {
    char name[160];
    const eq_model_tensor *weight;
    s_q *q[EQ_QTAG_COUNT]; /* NULL: no quantizer for that tag */
} s_layer;

struct eq_qlayers {
    eq_model *model;
    s_layer *l;
    size_t n, cap;
};

static const char *const s_sub[EQ_QTAG_COUNT] = {"quant_weight", "quant_activation", "quant_output"};

/* quant.h: eq_quant_set_levels refuses these methods. */
static bool s_fixed_levels(const char *method)
{
    static const char *const m[] = {"nonuniform", "lqnet", "xnor", "bin", NULL};
    for (size_t i = 0; m[i]; i++)
        if (!strcmp(method, m[i])) return true;
    return false;
}

void eq_qlayers_destroy(eq_qlayers **t_p)
{
    if (!t_p || !*t_p) return;
    eq_qlayers *t = *t_p;
    for (size_t i = 0; i < t->n; i++)
        for (int k = 0; k < EQ_QTAG_COUNT; k++)
            free(t->l[i].q[k]);
    free(t->l);
    free(t);
    *t_p = NULL;
}

static s_layer *s_layer_find(eq_qlayers *t, const char *name, size_t len)
{
    for (size_t i = 0; i < t->n; i++)
        if (strlen(t->l[i].name) == len && !memcmp(t->l[i].name, name, len)) return &t->l[i];
    return NULL;
}

static s_layer *s_layer_add(eq_qlayers *t, const char *name, size_t len)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 32;
        s_layer *l = realloc(t->l, cap * sizeof *l);
        if (!l) return NULL;
        t->l = l;
        t->cap = cap;
    }
    s_layer *l = &t->l[t->n++];
    memset(l, 0, sizeof *l);
    if (len >= sizeof l->name) len = sizeof l->name - 1;
    memcpy(l->name, name, len);
    return l;
}

eq_qlayers *eq_qlayers_new(eq_model *m, const eq_model_quant_cfg *const q[EQ_QTAG_COUNT], eq_err *err)
{
    eq_qlayers *t = calloc(1, sizeof *t);
    if (!t) goto nomem;
    t->model = m;
    size_t nt = eq_model_tensor_count(m);
    /* Conv/linear weights in build order: the candidate layers. */
    long first_conv = -1, last_linear = -1;
    for (size_t i = 0; i < nt; i++) {
        const eq_model_tensor *x = eq_model_tensor_at(m, i);
        size_t len = strlen(x->name);
        if (x->quant || x->kind != EQ_MT_PARAM || (x->ndim != 4 && x->ndim != 2) || len < 7 ||
            strcmp(x->name + len - 7, ".weight"))
            continue;
        s_layer *l = s_layer_add(t, x->name, len - 7);
        if (!l) goto nomem;
        l->weight = x;
        if (x->ndim == 4 && first_conv < 0) first_conv = (long)t->n - 1;
        if (x->ndim == 2) last_linear = (long)t->n - 1;
    }
    /* Quantizer state, attached to its layer. */
    bool any = false;
    for (size_t i = 0; i < nt; i++) {
        const eq_model_tensor *x = eq_model_tensor_at(m, i);
        if (!x->quant) continue;
        int tag = -1;
        const char *p = NULL;
        for (int k = 0; k < EQ_QTAG_COUNT && tag < 0; k++) {
            char pat[32];
            snprintf(pat, sizeof pat, ".%s.", s_sub[k]);
            if ((p = strstr(x->name, pat))) tag = k;
        }
        if (tag < 0) continue;
        s_layer *l = s_layer_find(t, x->name, (size_t)(p - x->name));
        if (!l) {
            eq_err_set(err, EQ_ERR_INTERNAL, "quantizer state %s belongs to no conv/linear weight", x->name);
            goto fail;
        }
        s_q *s = l->q[tag];
        if (!s) {
            if (!(s = l->q[tag] = calloc(1, sizeof *s))) goto nomem;
            const eq_model_quant_cfg *c = q ? q[tag] : NULL;
            if (c) {
                snprintf(s->method, sizeof s->method, "%s", c->method);
                s->progressive = c->progressive;
                s->fixed_levels = s_fixed_levels(c->method);
                s->var_mean = c->adaptive == EQ_QADAPT_VAR_MEAN;
                s->adaptive = c->adaptive;
                s->independent_norm = c->independent_norm;
                s->norm_eps = c->norm_eps;
            }
            any = true;
        }
        const char *leaf = p + strlen(s_sub[tag]) + 2;
        if (s->nstate < S_MAX_STATE) s->state[s->nstate++] = x;
        if (!strcmp(leaf, "level_num")) s->level_num = x->data;
        if (!strcmp(leaf, "iteration")) s->iteration = x->data;
    }
    /* FP layers keep an index only inside a quantized network, and never
     * the stem or the classifier (plain nn.Conv2d / nn.Linear there). */
    size_t k = 0;
    for (size_t i = 0; i < t->n; i++) {
        s_layer *l = &t->l[i];
        bool has = l->q[0] || l->q[1] || l->q[2];
        bool keep = has || (any && (long)i != first_conv && (long)i != last_linear);
        if (has)
            for (int g = 0; g < EQ_QTAG_COUNT; g++)
                if (l->q[g] && !l->q[g]->level_num) {
                    eq_err_set(err, EQ_ERR_INTERNAL, "%s.%s has no level_num", l->name, s_sub[g]);
                    goto fail;
                }
        if (keep)
            t->l[k++] = *l;
        else
            for (int g = 0; g < EQ_QTAG_COUNT; g++)
                free(l->q[g]);
    }
    t->n = k;
    return t;
nomem:
    eq_err_set(err, EQ_ERR_NOMEM, "quantized layers: out of memory");
fail:
    eq_qlayers_destroy(&t);
    return NULL;
}

size_t eq_qlayers_count(const eq_qlayers *t) { return t ? t->n : 0; }

const char *eq_qlayers_name(const eq_qlayers *t, size_t i) { return t && i < t->n ? t->l[i].name : NULL; }

bool eq_qlayers_has(const eq_qlayers *t, size_t i, eq_quant_tag tag)
{
    return t && i < t->n && (unsigned)tag < EQ_QTAG_COUNT && t->l[i].q[tag];
}

int eq_qlayers_levels(const eq_qlayers *t, size_t i, eq_quant_tag tag)
{
    return eq_qlayers_has(t, i, tag) ? (int)*t->l[i].q[tag]->level_num : -1;
}

static const char *s_leaf(const eq_model_tensor *x, eq_quant_tag tag)
{
    const char *p = strstr(x->name, s_sub[tag]);
    return p ? p + strlen(s_sub[tag]) + 1 : x->name;
}

const eq_model_tensor *eq_qlayers_state(const eq_qlayers *t, size_t i, eq_quant_tag tag, const char *name)
{
    if (!eq_qlayers_has(t, i, tag)) return NULL;
    const s_q *s = t->l[i].q[tag];
    for (size_t k = 0; k < s->nstate; k++)
        if (!strcmp(s_leaf(s->state[k], tag), name)) return s->state[k];
    return NULL;
}

/* ------------------------------------------------------------ statistics */

typedef struct s_buf {
    char *p;
    size_t n, cap;
    bool oom;
} s_buf;

static void s_put(s_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_put(s_buf *b, const char *fmt, ...)
{
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (w < 0) {
            b->oom = true;
            return;
        }
        if (b->p && b->n + (size_t)w < b->cap) {
            b->n += (size_t)w;
            return;
        }
        size_t cap = b->cap ? b->cap : 4096;
        while (cap <= b->n + (size_t)w)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

static void s_num(s_buf *b, double v)
{
    if (isfinite(v))
        s_put(b, "%.6g", v);
    else
        s_put(b, "null");
}

/* Fraction of the weights at each of the L levels of an lsq weight
 * quantizer: full range, clip per contiguous group, after var-mean
 * normalisation when it is on (per norm group: (w - mean)/(std + eps),
 * unbiased std, as quant/ computes it).  frac[0] stays negative when the
 * groups do not divide the weight. */
static eq_status s_wt_frac(const eq_qlayers *t, const s_layer *l, const s_q *s, const eq_model_tensor *clip,
                           double *frac, int L, eq_err *err)
{
    const eq_model_tensor *w = l->weight;
    size_t n = w->numel, G = clip->numel, NG = s->independent_norm ? 1 : G;
    if (!G || n % G || n % NG) return EQ_OK;
    float *h = malloc(n * sizeof *h);
    uint64_t *cnt = calloc((size_t)L, sizeof *cnt);
    if (!h || !cnt) {
        free(h);
        free(cnt);
        return eq_err_set(err, EQ_ERR_NOMEM, "quant statistics: out of memory");
    }
    eq_status st = eq_backend_download(eq_model_backend(t->model), h, w->data, n * sizeof *h, err);
    if (st == EQ_OK && s->var_mean) {
        size_t per = n / NG;
        for (size_t g = 0; g < NG; g++) {
            float *p = h + g * per;
            double sum = 0, var = 0;
            for (size_t i = 0; i < per; i++)
                sum += p[i];
            double mu = sum / (double)per;
            for (size_t i = 0; i < per; i++)
                var += ((double)p[i] - mu) * ((double)p[i] - mu);
            float muf = (float)mu,
                  den = (float)(per > 1 ? sqrt(var / (double)(per - 1)) : NAN) + (float)s->norm_eps;
            for (size_t i = 0; i < per; i++)
                p[i] = (p[i] - muf) / den;
        }
    }
    size_t per = n / G;
    for (size_t g = 0; st == EQ_OK && g < G; g++) {
        const float *p = h + g * per;
        float c = fabsf(((const float *)clip->data)[g]);
        for (size_t i = 0; i < per; i++) {
            float u = p[i] / c;
            u = u < -1.0f ? -1.0f : u > 1.0f ? 1.0f : u;
            long k = lrintf((u + 1.0f) * 0.5f * (float)(L - 1));
            if (k >= 0 && k < L) cnt[k]++;
        }
    }
    for (int k = 0; st == EQ_OK && k < L; k++)
        frac[k] = (double)cnt[k] / (double)n;
    free(cnt);
    free(h);
    return st;
}

/* The group of element `idx` of a quantizer output of n elements for a
 * per-group parameter of G values: weights in G contiguous chunks (OIHW
 * flattened), activations (NHWC / NC, C channels) in runs of C/G channels.
 * -1 when G does not fit. */
typedef struct s_grouping {
    int64_t G, per; /* per: chunk length (weights) or channels per group */
    bool wt;
    int64_t C;
} s_grouping;

static bool s_grouping_init(s_grouping *g, int64_t G, bool wt, int64_t C, int64_t n)
{
    memset(g, 0, sizeof *g);
    g->G = G > 0 ? G : 1;
    g->wt = wt;
    g->C = C;
    if (g->G == 1) return true;
    if (wt) {
        if (n % g->G) return false;
        g->per = n / g->G;
        return true;
    }
    if (C <= 0 || n % C || C % g->G) return false;
    g->per = C / g->G;
    return true;
}

static inline int64_t s_group(const s_grouping *g, int64_t idx)
{
    if (g->G == 1) return 0;
    return g->wt ? idx / g->per : (idx % g->C) / g->per;
}

static int s_cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Classify y[n] on levels p_g * (u0 + k*du), k = 0..L-1, p_g = pg[group]:
 * `fits` passes refit each group's p_g by least squares on the levels its
 * elements round to, then a last pass requires every element within 1e-3
 * of a step of its level and counts them in cnt[].  False when one is not
 * (cnt then partial). */
static bool s_classify(const float *h, int64_t n, const s_grouping *gf, double *pg, double u0, double du, int L,
                       uint64_t *cnt, int fits)
{
    int64_t G = gf->G;
    double *syu = calloc((size_t)G * 2, sizeof *syu), *suu = syu ? syu + G : NULL;
    if (!syu) return false;
    double n1 = L - 1;
    bool ok = true;
    for (int pass = 0; ok && pass <= fits; pass++) {
        bool last = pass == fits;
        for (int64_t g = 0; g < G; g++)
            syu[g] = suu[g] = 0;
        for (int64_t i = 0; i < n; i++) {
            int64_t g = s_group(gf, i);
            double p = pg[g], y = h[i];
            if (!(fabs(p) > 0) || !isfinite(p) || !isfinite(y)) {
                ok = false;
                break;
            }
            double kf = (y / p - u0) / du;
            if (last && !(kf > -0.5 && kf < L - 0.5)) {
                ok = false;
                break;
            }
            long k = lrint(kf < 0 ? 0 : kf > n1 ? n1 : kf);
            double u = u0 + du * (double)k;
            if (!last) {
                syu[g] += y * u;
                suu[g] += u * u;
            } else if (fabs(y - p * u) > 1e-3 * fabs(p * du)) {
                ok = false;
                break;
            } else {
                cnt[k]++;
            }
        }
        for (int64_t g = 0; !last && g < G; g++)
            if (suu[g] > 0) pg[g] = syu[g] / suu[g];
    }
    free(syu);
    return ok;
}

/* Fraction of the elements at each of the L levels in what quantizer (l,
 * tag) produced in the model's last forward (eq_model_quant_output), for
 * methods whose output levels have a known pattern: level k of a group is
 * p * (u0 + k*du), p the group's scale --
 *   dorefa      fm/ot: p = boundary (* gamma), u = k/n;
 *               wt: p = gamma or 1, u = 2k*boundary/n - 1
 *   pact        p = clip_val (alpha), u = k/n
 *   lsq         p = |clip_val| (* gamma); half range u = k/n, full 2k/n - 1
 *   lsq-step    p = step_size, u = k + Qn
 *   nonuniform  p = 1, u = k (half-range fm) or k - 1 (ternary)
 * -- or the sign (bin, xnor: -E or +E, |y| the same over each group where
 * E is per group).  The scales in the quantizer's state may have moved
 * since that forward (the optimiser step after it), so they only start
 * the classification: each group's p is then fitted to the output (least
 * squares over its elements' levels, twice), and every element must sit
 * on a level of the fitted scale (within 1e-3 of a step).  An output that
 * is not quantized (the quantizer disabled, in its warm-up, with
 * adaptive_restore, ...) leaves frac[0] negative, as do lqnet, the
 * closed-form nonuniform scale and a grouping that cannot be placed. */
static eq_status s_out_frac(const eq_qlayers *t, const s_layer *l, int tag, const s_q *s, double *frac, int L,
                            eq_err *err)
{
    eq_quant *q = eq_model_quant(t->model, l->name, (eq_quant_tag)tag);
    int64_t n = 0;
    const float *dev = eq_model_quant_output(t->model, l->name, (eq_quant_tag)tag, &n);
    if (!q || !dev || n <= 0 || !eq_quant_enabled(q)) return EQ_OK;
    const eq_quant_opts *o = eq_quant_options(q);
    const char *m = s->method;
    bool wt = tag == EQ_QTAG_WT, half = !wt && o->half_range;
    double n1 = L - 1;
    /* channels of the activation: the conv's input (fm) or output (ot) */
    const eq_model_tensor *w = l->weight;
    int64_t C = tag == EQ_QTAG_OT ? w->shape[0] : w->shape[1];
    int sign = 0; /* 1: sign levels, |y| checked per group; 2: sign only */
    const eq_quant_tensor *par = NULL; /* per-group clip / alpha / step */
    bool absv = false;                 /* p uses |par| */
    double cf = 1, u0 = 0, du = 1;
    if (!strcmp(m, "dorefa")) {
        if (wt) {
            u0 = -1;
            du = 2.0 * o->boundary / n1;
        } else {
            cf = o->boundary;
            du = 1.0 / n1;
        }
    } else if (!strcmp(m, "pact")) {
        par = eq_quant_find(q, "clip_val");
        du = 1.0 / n1;
    } else if (!strcmp(m, "lsq")) {
        par = eq_quant_find(q, "clip_val");
        absv = true;
        u0 = half ? 0.0 : -1.0;
        du = half ? 1.0 / n1 : 2.0 / n1;
    } else if (!strcmp(m, "lsq-step")) {
        par = eq_quant_find(q, "step_size");
        u0 = o->half_range ? 0.0 : -(double)(L / 2); /* Qn */
    } else if (!strcmp(m, "nonuniform")) {
        bool nhalf = tag == EQ_QTAG_FM && o->half_range;
        if (o->closed_form || (!nhalf && L != 3)) return EQ_OK;
        u0 = nhalf ? 0.0 : -1.0;
    } else if (!strcmp(m, "bin") || !strcmp(m, "xnor")) {
        if (L != 2) return EQ_OK;
        sign = tag == EQ_QTAG_FM && o->custom != EQ_QCUSTOM_NONE ? 2 : 1;
    } else {
        return EQ_OK; /* lqnet: learned levels */
    }
    if ((!strcmp(m, "pact") || !strcmp(m, "lsq") || !strcmp(m, "lsq-step")) && !par) return EQ_OK;
    const eq_quant_tensor *gam = sign ? NULL : eq_quant_find(q, "gamma");
    /* the scale's groups: the finer of the parameter's and gamma's */
    int64_t Gp = par ? par->numel : 1, Gg = gam ? gam->numel : 1;
    int64_t Gf = sign == 1 ? (wt ? eq_quant_groups(q) : 1) : Gp > Gg ? Gp : Gg;
    if (Gp > Gf || Gg > Gf || Gf % Gp || Gf % Gg) return EQ_OK;
    s_grouping gp, gg, gf;
    if (!s_grouping_init(&gp, Gp, wt, C, n) || !s_grouping_init(&gg, Gg, wt, C, n) ||
        !s_grouping_init(&gf, Gf, wt, C, n))
        return EQ_OK;
    float *h = malloc((size_t)n * sizeof *h);
    uint64_t *cnt = calloc((size_t)L, sizeof *cnt);
    double *pg = malloc((size_t)Gf * sizeof *pg); /* p per fine group */
    if (!h || !cnt || !pg) {
        free(h);
        free(cnt);
        free(pg);
        return eq_err_set(err, EQ_ERR_NOMEM, "quant statistics: out of memory");
    }
    eq_status st = eq_backend_download(eq_model_backend(t->model), h, dev, (size_t)n * sizeof *h, err);
    bool ok = st == EQ_OK;
    for (int64_t g = 0; g < Gf; g++)
        pg[g] = NAN; /* not seen yet */
    if (ok && sign) {
        /* xnor fm without a custom scale: E = 1; otherwise E of the group
         * is |y| of its first element, and every |y| must equal it. */
        for (int64_t i = 0; ok && i < n; i++) {
            float y = h[i];
            if (!isfinite(y)) {
                ok = false;
                break;
            }
            if (sign == 1) {
                int64_t g = s_group(&gf, i);
                double e = tag == EQ_QTAG_FM ? 1.0 : isnan(pg[g]) ? (pg[g] = fabs((double)y)) : pg[g];
                if (fabs(fabs((double)y) - e) > 1e-5 * e + 1e-12) ok = false;
            }
            cnt[y < 0 ? 0 : 1]++;
        }
    } else if (ok) {
        /* the scales in the state, per fine group */
        for (int64_t i = 0; i < n; i++) {
            int64_t g = s_group(&gf, i);
            if (!isnan(pg[g])) continue;
            double p = cf;
            if (par) p *= absv ? fabs(par->data[s_group(&gp, i)]) : par->data[s_group(&gp, i)];
            if (gam) p *= gam->data[s_group(&gg, i)];
            pg[g] = p;
        }
        ok = s_classify(h, n, &gf, pg, u0, du, L, cnt, 2);
        if (!ok && (Gf == 1 || wt)) {
            /* The state was too far off (a large update): each group's
             * step from the data instead -- its smallest gap between
             * distinct values, i.e. two adjacent levels -- then verify. */
            float *srt = malloc((size_t)n * sizeof *srt);
            if (!srt) {
                st = eq_err_set(err, EQ_ERR_NOMEM, "quant statistics: out of memory");
            } else {
                memcpy(srt, h, (size_t)n * sizeof *srt);
                int64_t per = n / Gf;
                for (int64_t g = 0; g < Gf; g++) {
                    float *c = srt + g * per;
                    qsort(c, (size_t)per, sizeof *c, s_cmp_float);
                    double span = fabs((double)c[per - 1]) > fabs((double)c[0]) ? fabs((double)c[per - 1])
                                                                               : fabs((double)c[0]);
                    double gap = INFINITY;
                    for (int64_t i = 1; i < per; i++) {
                        double d = (double)c[i] - (double)c[i - 1];
                        if (d > 1e-6 * span && d < gap) gap = d;
                    }
                    if (isfinite(gap)) pg[g] = (pg[g] < 0 ? -gap : gap) / du;
                }
                free(srt);
                memset(cnt, 0, (size_t)L * sizeof *cnt);
                ok = s_classify(h, n, &gf, pg, u0, du, L, cnt, 1);
            }
        }
    }
    for (int k = 0; ok && k < L; k++)
        frac[k] = (double)cnt[k] / (double)n;
    free(pg);
    free(cnt);
    free(h);
    return st;
}

eq_status eq_qlayers_stats_json(const eq_qlayers *t, char **json, eq_err *err)
{
    s_buf b = {0};
    eq_status st = EQ_OK;
    s_put(&b, "[");
    bool first = true;
    for (size_t i = 0; i < t->n && st == EQ_OK; i++) {
        const s_layer *l = &t->l[i];
        for (int tag = 0; tag < EQ_QTAG_COUNT && st == EQ_OK; tag++) {
            const s_q *s = l->q[tag];
            if (!s) continue;
            int L = (int)*s->level_num;
            s_put(&b, "%s{\"index\":%zu,\"layer\":\"%s\",\"tag\":\"%s\",\"method\":\"%s\",\"levels\":%d",
                  first ? "" : ",", i, l->name, eq_quant_tag_name((eq_quant_tag)tag), s->method, L);
            first = false;
            if (s->iteration) s_put(&b, ",\"iteration\":%.0f", (double)*s->iteration);
            const eq_model_tensor *clip = NULL;
            for (size_t k = 0; k < s->nstate; k++) {
                const eq_model_tensor *x = s->state[k];
                const char *leaf = s_leaf(x, (eq_quant_tag)tag);
                if (strcmp(leaf, "clip_val") && strcmp(leaf, "step_size") && strncmp(leaf, "alpha", 5) &&
                    strcmp(leaf, "gamma"))
                    continue;
                if (!strcmp(leaf, "clip_val")) clip = x;
                const float *v = x->data;
                s_put(&b, ",\"%s\":", leaf);
                if (x->numel == 1) {
                    s_num(&b, v[0]);
                    continue;
                }
                double mn = INFINITY, mx = -INFINITY, sum = 0;
                for (size_t j = 0; j < x->numel; j++) {
                    mn = v[j] < mn ? v[j] : mn;
                    mx = v[j] > mx ? v[j] : mx;
                    sum += v[j];
                }
                s_put(&b, "{\"n\":%zu,\"min\":", x->numel);
                s_num(&b, mn);
                s_put(&b, ",\"mean\":");
                s_num(&b, x->numel ? sum / (double)x->numel : 0);
                s_put(&b, ",\"max\":");
                s_num(&b, mx);
                s_put(&b, "}");
            }
            if (L >= 2 && L <= 256) {
                double frac[256];
                frac[0] = -1;
                /* lsq weights: from the current weights (what the next
                 * forward gives); the rest: the last forward's output */
                if (tag == EQ_QTAG_WT && clip && !strcmp(s->method, "lsq") &&
                    (s->adaptive == EQ_QADAPT_NONE || s->var_mean))
                    st = s_wt_frac(t, l, s, clip, frac, L, err);
                else
                    st = s_out_frac(t, l, tag, s, frac, L, err);
                if (st) break;
                if (frac[0] >= 0) {
                    s_put(&b, ",\"frac\":[");
                    for (int k = 0; k < L; k++) {
                        s_put(&b, "%s", k ? "," : "");
                        s_num(&b, frac[k]);
                    }
                    s_put(&b, "]");
                }
            }
            s_put(&b, "}");
        }
    }
    s_put(&b, "]");
    if (st == EQ_OK && b.oom) st = eq_err_set(err, EQ_ERR_NOMEM, "quant statistics: out of memory");
    if (st) {
        free(b.p);
        return st;
    }
    *json = b.p;
    return EQ_OK;
}

/* ================================================================ parser */

typedef struct s_val {
    char **items; /* a list when n > 1 or the text had a separator */
    size_t n;
    bool list;
} s_val;

typedef struct s_attr {
    char key[64];
    s_val v;
    int line;
} s_attr;

typedef struct s_rule {
    int line; /* of its first by_ key */
    bool all; /* by_index: all */
    bool has_index;
    int64_t *index;
    size_t nindex;
    int index_line;
    bool tag[EQ_QTAG_COUNT];
    bool has_tag;
    s_attr *attr;
    size_t nattr;
} s_rule;

struct eq_policy {
    char name[512];
    s_rule *rules[EQ_POLICY_NSECTIONS];
    size_t nrules[EQ_POLICY_NSECTIONS];
    int64_t *trig;
    size_t ntrig;
    bool seen[EQ_POLICY_NSECTIONS];
    eq_quant *scratch; /* parsing: checks run-time option values */
};

static void s_val_free(s_val *v)
{
    for (size_t i = 0; i < v->n; i++)
        free(v->items[i]);
    free(v->items);
    memset(v, 0, sizeof *v);
}

void eq_policy_destroy(eq_policy **p_p)
{
    if (!p_p || !*p_p) return;
    eq_policy *p = *p_p;
    for (int s = 0; s < EQ_POLICY_NSECTIONS; s++) {
        for (size_t r = 0; r < p->nrules[s]; r++) {
            s_rule *u = &p->rules[s][r];
            for (size_t a = 0; a < u->nattr; a++)
                s_val_free(&u->attr[a].v);
            free(u->attr);
            free(u->index);
        }
        free(p->rules[s]);
    }
    free(p->trig);
    eq_quant_destroy(&p->scratch);
    free(p);
    *p_p = NULL;
}

/* Python's str.strip() (all whitespace), in place. */
static char *s_strip(char *s)
{
    while (*s && isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = 0;
    return s;
}

static eq_status s_push_item(s_val *v, const char *s, size_t len)
{
    char **it = realloc(v->items, (v->n + 1) * sizeof *it);
    if (!it) return EQ_ERR_NOMEM;
    v->items = it;
    if (!(it[v->n] = malloc(len + 1))) return EQ_ERR_NOMEM;
    memcpy(it[v->n], s, len);
    it[v->n][len] = 0;
    v->n++;
    return EQ_OK;
}

/* The original's value split: commas (items stripped), else single spaces
 * (items kept as they are, so double spaces give empty items). */
static eq_status s_split_value(const char *s, s_val *v)
{
    char sep = strchr(s, ',') ? ',' : strchr(s, ' ') ? ' ' : 0;
    v->list = sep != 0;
    if (!sep) return s_push_item(v, s, strlen(s));
    for (const char *p = s;;) {
        const char *e = strchr(p, sep);
        size_t len = e ? (size_t)(e - p) : strlen(p);
        const char *q = p;
        if (sep == ',') {
            while (len && isspace((unsigned char)*q))
                q++, len--;
            while (len && isspace((unsigned char)q[len - 1]))
                len--;
        }
        if (s_push_item(v, q, len)) return EQ_ERR_NOMEM;
        if (!e) break;
        p = e + 1;
    }
    return EQ_OK;
}

static bool s_parse_i64(const char *s, int64_t *out)
{
    if (!*s) return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end || errno) return false;
    *out = v;
    return true;
}

static bool s_parse_f64(const char *s, double *out)
{
    if (!*s) return false;
    char *end;
    double v = strtod(s, &end);
    if (*end || !isfinite(v)) return false;
    *out = v;
    return true;
}

/* Attribute names eq accepts, and the original's that it refuses. */
typedef enum { A_LEVELS, A_PROGRESSIVE, A_STATE, A_OPTION } s_akind;

static const char *const s_state_names[] = {"clip_val", "step_size", "alpha0", "alpha1", "alpha2",
                                            "gamma",    "iteration", "basis",  "auxil",  NULL};
/* Options eq's quantizers fix when they are built (they shape the state). */
static const char *const s_refused[] = {"index",   "method", "half_range", "quant_group",
                                        "adaptive", "bit",    "level",      NULL};

static int s_attr_kind(const char *k)
{
    if (!strcmp(k, "level_num")) return A_LEVELS;
    if (!strcmp(k, "progressive")) return A_PROGRESSIVE;
    if (eq_quant_is_runtime_option(k)) return A_OPTION;
    for (size_t i = 0; s_state_names[i]; i++)
        if (!strcmp(k, s_state_names[i])) return A_STATE;
    return -1;
}

#define S_ERR(code, ...) (eq_err_set(err, code, __VA_ARGS__), -1)

/* Whether a quantizer takes `key` = `x` (eq_quant_set_option's casts and
 * checks, which do not depend on the method or the tensor): tried on a
 * scratch quantizer, so a bad value fails the parse, before training. */
static int s_option_check(eq_policy *p, const char *key, const char *x, int line, eq_err *err)
{
    if (!p->scratch) {
        eq_quant_opts o;
        eq_quant_opts_init(&o, EQ_QTAG_FM);
        eq_tensor_desc d;
        int64_t shape[2] = {1, 1};
        if (eq_quant_opts_set(&o, "bit", "2", err) || eq_tensor_desc_init(&d, EQ_DT_F32, EQ_LAYOUT_NC, 2, shape, err) ||
            !(p->scratch = eq_quant_new(&o, &d, err))) {
            eq_err_prefix(err, "%s:%d: checking %s: ", p->name, line, key);
            return -1;
        }
    }
    if (eq_quant_set_option(p->scratch, key, x, err)) {
        eq_err_prefix(err, "%s:%d: ", p->name, line);
        return -1;
    }
    return 0;
}

/* Check and store attribute `key` = value of rule u. */
static int s_rule_attr(eq_policy *p, s_rule *u, const char *key, s_val *v, int line, eq_err *err)
{
    int kind = s_attr_kind(key);
    if (kind < 0) {
        for (size_t i = 0; s_refused[i]; i++)
            if (!strcmp(key, s_refused[i]))
                return S_ERR(
                    EQ_ERR_UNSUPPORTED,
                    "%s:%d: attribute '%s': eq's quantizers fix this option when they are built (it "
                    "shapes their state), so a policy cannot change it (use the [quant.*] section)",
                    p->name, line, key);
        return S_ERR(
            EQ_ERR_INVALID,
            "%s:%d: unknown attribute '%s' (known: level_num, progressive, enable, stable, "
            "adaptive_restore, quant_loss_enable, quant_loss_function, quant_loss_alpha, clip_val, "
            "step_size, alpha0, alpha1, alpha2, gamma, iteration, basis, auxil)",
            p->name, line, key);
    }
    if (v->list)
        return S_ERR(EQ_ERR_INVALID, "%s:%d: attribute '%s' takes one value, not a list", p->name, line, key);
    const char *x = v->items[0];
    double d;
    int64_t i;
    if (kind == A_PROGRESSIVE && strcmp(x, "True") && strcmp(x, "true") && strcmp(x, "False") &&
        strcmp(x, "false"))
        return S_ERR(EQ_ERR_INVALID, "%s:%d: progressive: '%s' is not True/true/False/false", p->name, line,
                     x);
    if (kind == A_LEVELS && (!s_parse_i64(x, &i) || i == 0 || i == 1 || i < -65536 || i > 65536))
        return S_ERR(EQ_ERR_INVALID,
                     "%s:%d: level_num: '%s' is not a level count (v >= 2) or a change (v < 0)", p->name,
                     line, x);
    if (kind == A_STATE && !s_parse_f64(x, &d))
        return S_ERR(EQ_ERR_INVALID, "%s:%d: %s: '%s' is not a finite number", p->name, line, key, x);
    if (kind == A_OPTION && s_option_check(p, key, x, line, err)) return -1;
    for (size_t a = 0; a < u->nattr; a++)
        if (!strcmp(u->attr[a].key, key)) { /* a dict keeps the first position and the last value */
            s_val_free(&u->attr[a].v);
            u->attr[a].v = *v;
            u->attr[a].line = line;
            memset(v, 0, sizeof *v);
            return 0;
        }
    s_attr *na = realloc(u->attr, (u->nattr + 1) * sizeof *na);
    if (!na) return S_ERR(EQ_ERR_NOMEM, "policy: out of memory");
    u->attr = na;
    s_attr *a = &u->attr[u->nattr++];
    memset(a, 0, sizeof *a);
    snprintf(a->key, sizeof a->key, "%s", key);
    a->v = *v;
    a->line = line;
    memset(v, 0, sizeof *v);
    return 0;
}

static int s_rule_by(eq_policy *p, s_rule *u, const char *key, const s_val *v, int line, eq_err *err)
{
    if (!strcmp(key, "by_index")) {
        free(u->index);
        u->index = NULL;
        u->nindex = 0;
        u->all = false;
        u->has_index = true;
        u->index_line = line;
        if (!v->list && !strcmp(v->items[0], "all")) {
            u->all = true;
            return 0;
        }
        if (!(u->index = malloc((v->n ? v->n : 1) * sizeof *u->index)))
            return S_ERR(EQ_ERR_NOMEM, "policy: out of memory");
        for (size_t k = 0; k < v->n; k++) {
            int64_t x;
            if (!s_parse_i64(v->items[k], &x) || x < 0)
                return S_ERR(EQ_ERR_INVALID, "%s:%d: by_index: '%s' is not a layer index (0, 1, ...) or all",
                             p->name, line, v->items[k]);
            u->index[u->nindex++] = x;
        }
        return 0;
    }
    if (!strcmp(key, "by_tag")) {
        u->has_tag = true;
        memset(u->tag, 0, sizeof u->tag);
        for (size_t k = 0; k < v->n; k++) {
            eq_quant_tag g;
            if (eq_quant_tag_parse(v->items[k], &g))
                return S_ERR(EQ_ERR_INVALID, "%s:%d: by_tag: '%s' is not wt, fm or ot", p->name, line,
                             v->items[k]);
            u->tag[g] = true;
        }
        return 0;
    }
    return S_ERR(EQ_ERR_INVALID, "%s:%d: unknown selector '%s' (by_index, by_tag)", p->name, line, key);
}

static int s_rule_done(eq_policy *p, const s_rule *u, eq_err *err)
{
    if (!u->has_index)
        return S_ERR(EQ_ERR_INVALID,
                     "%s:%d: rule without by_index selects nothing (the original ignores it); add "
                     "by_index: all or a list of indices",
                     p->name, u->line);
    return 0;
}

eq_policy *eq_policy_parse(const char *text, const char *name, eq_err *err)
{
    eq_policy *p = calloc(1, sizeof *p);
    char *buf = NULL;
    s_val v = {0};
    if (!p) goto nomem;
    snprintf(p->name, sizeof p->name, "%s", name ? name : "policy");
    int sec = -1;       /* section being read */
    s_rule *cur = NULL; /* open rule */
    bool valid = false; /* it has an attribute: the next by_ key starts another */
    int line = 0;
    for (const char *s = text; s && *s;) {
        const char *e = strchr(s, '\n');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        line++;
        free(buf);
        if (!(buf = malloc(len + 1))) goto nomem;
        memcpy(buf, s, len);
        buf[len] = 0;
        const char *next = e ? e + 1 : NULL;
        s = next;
        /* line.strip('\n').strip(' ') */
        char *l = buf;
        while (*l == ' ')
            l++;
        size_t n = strlen(l);
        while (n && l[n - 1] == ' ')
            l[--n] = 0;
        if (!n || l[0] == '#') continue;
        char *hash = strchr(l, '#');
        if (hash) *hash = 0;
        char *colon = strchr(l, ':');
        if (!colon) {
            /* The original stops reading here; say what it leaves out. */
            size_t rest = 0;
            for (const char *q = next; q && *q;) {
                const char *qe = strchr(q, '\n');
                size_t ql = qe ? (size_t)(qe - q) : strlen(q);
                for (size_t k = 0; k < ql; k++)
                    if (!isspace((unsigned char)q[k])) {
                        rest++;
                        break;
                    }
                q = qe ? qe + 1 : NULL;
            }
            /* A forgotten ':' ("by_index all") would otherwise drop the
             * rest silently: always say which line ended the policy. */
            char shown[64];
            size_t k = 0;
            for (const char *c = l; *c && k + 5 < sizeof shown; c++) {
                unsigned char u = (unsigned char)*c;
                if (u < 0x20 || u >= 0x7f)
                    k += (size_t)snprintf(shown + k, sizeof shown - k, "\\x%02x", u);
                else
                    shown[k++] = (char)u;
            }
            shown[k] = 0;
            eq_warn("%s:%d: '%s%s' has no ':' and ends the policy (the original's rule); %zu more non-blank "
                    "line(s) ignored",
                    p->name, line, shown, l[0] && strlen(l) > k ? "..." : "", rest);
            break;
        }
        *colon = 0;
        char *right = colon + 1;
        char *rc = strchr(right, ':'); /* "a: b: c" -- the original keeps items[1] only */
        if (rc) *rc = 0;
        char *left = s_strip(l);
        right = s_strip(right);
        /* Header: the word "on" in the left part. */
        bool on = false, w_init = false, w_epoch = false;
        char other[64] = "";
        {
            char words[512];
            snprintf(words, sizeof words, "%s", left);
            for (char *sv, *w = strtok_r(words, " \t\r\v\f", &sv); w; w = strtok_r(NULL, " \t\r\v\f", &sv)) {
                if (!strcmp(w, "on"))
                    on = true;
                else if (!strcmp(w, "init"))
                    w_init = true;
                else if (!strcmp(w, "epoch"))
                    w_epoch = true;
                else if (!other[0])
                    snprintf(other, sizeof other, "%s", w);
            }
        }
        if (on) {
            if (cur && s_rule_done(p, cur, err)) goto fail;
            cur = NULL;
            valid = false;
            if (w_init == w_epoch) {
                if (w_init)
                    eq_err_set(err, EQ_ERR_PARSE, "%s:%d: header '%s' names both init and epoch", p->name,
                               line, left);
                else if (other[0])
                    eq_err_set(
                        err, EQ_ERR_UNSUPPORTED,
                        "%s:%d: section '%s': eq applies policies to conv/linear quantizers only (on init, "
                        "on epoch); norm, eltwise, shuffle, split and concat quantizers do not exist here",
                        p->name, line, other);
                else
                    eq_err_set(err, EQ_ERR_PARSE, "%s:%d: header '%s' names no section (on init, on epoch)",
                               p->name, line, left);
                goto fail;
            }
            sec = w_init ? EQ_POLICY_INIT : EQ_POLICY_EPOCH;
            if (p->seen[sec]) {
                eq_err_set(
                    err, EQ_ERR_PARSE,
                    "%s:%d: a second 'on %s' section (the original would keep only this one and drop the "
                    "first); put every trigger epoch in one header",
                    p->name, line, sec ? "epoch" : "init");
                goto fail;
            }
            p->seen[sec] = true;
            /* [int(x) for x in right.split()] */
            char tr[4096];
            snprintf(tr, sizeof tr, "%s", right);
            for (char *sv, *w = strtok_r(tr, " \t\r\v\f", &sv); w; w = strtok_r(NULL, " \t\r\v\f", &sv)) {
                int64_t x;
                if (!s_parse_i64(w, &x) || x < 0) {
                    eq_err_set(err, EQ_ERR_PARSE,
                               "%s:%d: trigger '%s' is not an epoch (0, 1, ...; separated by spaces)",
                               p->name, line, w);
                    goto fail;
                }
                if (sec == EQ_POLICY_EPOCH) {
                    int64_t *t2 = realloc(p->trig, (p->ntrig + 1) * sizeof *t2);
                    if (!t2) goto nomem;
                    p->trig = t2;
                    p->trig[p->ntrig++] = x;
                }
            }
            if (sec == EQ_POLICY_EPOCH && !p->ntrig) {
                eq_err_set(err, EQ_ERR_PARSE, "%s:%d: 'on epoch' without trigger epochs (on epoch: 2 5)",
                           p->name, line);
                goto fail;
            }
            continue;
        }
        if (sec < 0) {
            eq_err_set(err, EQ_ERR_PARSE,
                       "%s:%d: '%s' outside a section (start one with 'on init:' or 'on epoch: E')", p->name,
                       line, left);
            goto fail;
        }
        if (!*left) {
            eq_err_set(err, EQ_ERR_PARSE, "%s:%d: empty key before ':'", p->name, line);
            goto fail;
        }
        s_val_free(&v);
        if (s_split_value(right, &v)) goto nomem;
        if (strstr(left, "by_")) {
            if (!cur || valid) {
                if (cur && s_rule_done(p, cur, err)) goto fail;
                s_rule *r = realloc(p->rules[sec], (p->nrules[sec] + 1) * sizeof *r);
                if (!r) goto nomem;
                p->rules[sec] = r;
                cur = &r[p->nrules[sec]++];
                memset(cur, 0, sizeof *cur);
                cur->line = line;
                valid = false;
            }
            if (s_rule_by(p, cur, left, &v, line, err)) goto fail;
            continue;
        }
        if (!cur) {
            eq_err_set(
                err, EQ_ERR_PARSE,
                "%s:%d: attribute '%s' before the rule's by_index (the original ignores it); start the rule "
                "with by_index",
                p->name, line, left);
            goto fail;
        }
        if (s_rule_attr(p, cur, left, &v, line, err)) goto fail;
        valid = true;
    }
    if (cur && s_rule_done(p, cur, err)) goto fail;
    /* A rule with selectors only (the last one of a section) does nothing. */
    for (int s = 0; s < EQ_POLICY_NSECTIONS; s++)
        for (size_t r = 0; r < p->nrules[s]; r++)
            if (!p->rules[s][r].nattr) {
                eq_err_set(err, EQ_ERR_PARSE, "%s:%d: rule without attributes", p->name, p->rules[s][r].line);
                goto fail;
            }
    s_val_free(&v);
    free(buf);
    eq_quant_destroy(&p->scratch);
    return p;
nomem:
    eq_err_set(err, EQ_ERR_NOMEM, "policy: out of memory");
fail:
    s_val_free(&v);
    free(buf);
    eq_policy_destroy(&p);
    return NULL;
}

eq_policy *eq_policy_load(const char *path, eq_err *err)
{
    char *text = NULL;
    size_t len = 0;
    if (eq_file_read(path, (size_t)1 << 20, &text, &len, err)) {
        eq_err_prefix(err, "policy: ");
        return NULL;
    }
    if (memchr(text, 0, len)) {
        free(text);
        eq_err_set(err, EQ_ERR_PARSE, "%s: policy files are text (a NUL byte at offset %zu)", path,
                   (size_t)((char *)memchr(text, 0, len) - text));
        return NULL;
    }
    eq_policy *p = eq_policy_parse(text, path, err);
    free(text);
    return p;
}

size_t eq_policy_rule_count(const eq_policy *p, eq_policy_section s)
{
    return p && (unsigned)s < EQ_POLICY_NSECTIONS ? p->nrules[s] : 0;
}

int64_t eq_policy_last_trigger(const eq_policy *p)
{
    int64_t last = -1;
    for (size_t i = 0; p && i < p->ntrig; i++)
        if (p->trig[i] > last) last = p->trig[i];
    return last;
}

bool eq_policy_triggers(const eq_policy *p, int64_t epoch)
{
    for (size_t i = 0; p && i < p->ntrig; i++)
        if (p->trig[i] == epoch) return true;
    return false;
}

/* ============================================================ application */

static bool s_selects(const s_rule *u, int64_t i, int tag)
{
    if (u->has_tag && !u->tag[tag]) return false;
    if (u->all) return true;
    for (size_t k = 0; k < u->nindex; k++)
        if (u->index[k] == i) return true;
    return false;
}

static const eq_model_tensor *s_state(const s_q *s, int tag, const char *leaf)
{
    for (size_t k = 0; k < s->nstate; k++)
        if (!strcmp(s_leaf(s->state[k], (eq_quant_tag)tag), leaf)) return s->state[k];
    return NULL;
}

static eq_status s_check_static(const eq_policy *p, const eq_qlayers *t, eq_err *err)
{
    for (int sec = 0; sec < EQ_POLICY_NSECTIONS; sec++)
        for (size_t r = 0; r < p->nrules[sec]; r++) {
            const s_rule *u = &p->rules[sec][r];
            for (size_t k = 0; k < u->nindex; k++)
                if ((size_t)u->index[k] >= t->n)
                    return eq_err_set(err, EQ_ERR_INVALID,
                                      "%s:%d: by_index %" PRId64
                                      ": beyond the model's %zu policy layers (0..%zu; doc/config.md)",
                                      p->name, u->index_line, u->index[k], t->n, t->n ? t->n - 1 : 0);
            for (size_t a = 0; a < u->nattr; a++) {
                const s_attr *at = &u->attr[a];
                int kind = s_attr_kind(at->key);
                size_t hit = 0;
                for (size_t i = 0; i < t->n; i++)
                    for (int tag = 0; tag < EQ_QTAG_COUNT; tag++) {
                        const s_q *s = t->l[i].q[tag];
                        if (!s || !s_selects(u, (int64_t)i, tag)) continue;
                        if (kind == A_LEVELS && s->fixed_levels)
                            return eq_err_set(
                                err, EQ_ERR_INVALID,
                                "%s:%d: level_num on layer %zu (%s) %s: method %s fixes its level "
                                "count when it is built",
                                p->name, at->line, i, t->l[i].name, eq_quant_tag_name((eq_quant_tag)tag),
                                s->method);
                        if (kind != A_STATE || s_state(s, tag, at->key)) hit++;
                    }
                if (!hit)
                    return eq_err_set(err, EQ_ERR_INVALID, "%s:%d: '%s' selects no quantizer%s%s", p->name,
                                      at->line, at->key, kind == A_STATE ? " that has " : "",
                                      kind == A_STATE ? at->key : "");
            }
        }
    return EQ_OK;
}

static int s_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Run the level changes of one section on the simulated counts lv[]. */
static eq_status s_sim_levels(const eq_policy *p, int sec, int64_t epoch, const eq_qlayers *t, int *lv,
                              eq_err *err)
{
    for (size_t r = 0; r < p->nrules[sec]; r++) {
        const s_rule *u = &p->rules[sec][r];
        for (size_t a = 0; a < u->nattr; a++) {
            if (s_attr_kind(u->attr[a].key) != A_LEVELS) continue;
            int64_t v = strtoll(u->attr[a].v.items[0], NULL, 10);
            for (size_t i = 0; i < t->n; i++)
                for (int tag = 0; tag < EQ_QTAG_COUNT; tag++) {
                    if (!t->l[i].q[tag] || !s_selects(u, (int64_t)i, tag)) continue;
                    int *l = &lv[i * EQ_QTAG_COUNT + (size_t)tag];
                    int64_t nv = v < 0 ? *l + v : v;
                    if (nv < 2 || nv > 65536) {
                        char when[64] = "at start-up";
                        if (sec == EQ_POLICY_EPOCH) snprintf(when, sizeof when, "at epoch %" PRId64, epoch);
                        return eq_err_set(err, EQ_ERR_INVALID,
                                          "%s:%d: level_num %s %s leaves layer %zu (%s) %s with %" PRId64
                                          " levels (from %d); need 2..65536",
                                          p->name, u->attr[a].line, u->attr[a].v.items[0], when, i,
                                          t->l[i].name, eq_quant_tag_name((eq_quant_tag)tag), nv, *l);
                    }
                    *l = (int)nv;
                }
        }
    }
    return EQ_OK;
}

eq_status eq_policy_check(const eq_policy *p, const eq_qlayers *t, eq_err *err)
{
    eq_status st = s_check_static(p, t, err);
    if (st) return st;
    /* The level counts a fresh run goes through: init, then every trigger
     * in epoch order (the epoch rules apply at each one). */
    int *lv = malloc((t->n ? t->n : 1) * EQ_QTAG_COUNT * sizeof *lv);
    int64_t *tr = malloc((p->ntrig ? p->ntrig : 1) * sizeof *tr);
    if (!lv || !tr) {
        free(lv);
        free(tr);
        return eq_err_set(err, EQ_ERR_NOMEM, "policy: out of memory");
    }
    for (size_t i = 0; i < t->n; i++)
        for (int tag = 0; tag < EQ_QTAG_COUNT; tag++)
            lv[i * EQ_QTAG_COUNT + (size_t)tag] = t->l[i].q[tag] ? (int)*t->l[i].q[tag]->level_num : 0;
    if (p->ntrig) memcpy(tr, p->trig, p->ntrig * sizeof *tr); /* p->trig is NULL without triggers */
    qsort(tr, p->ntrig, sizeof *tr, s_cmp_i64);
    st = s_sim_levels(p, EQ_POLICY_INIT, 0, t, lv, err);
    for (size_t k = 0; st == EQ_OK && k < p->ntrig; k++)
        if (k == 0 || tr[k] != tr[k - 1]) st = s_sim_levels(p, EQ_POLICY_EPOCH, tr[k], t, lv, err);
    free(lv);
    free(tr);
    return st;
}

/* Zero the optimiser state of parameter `name` (momentum, Adam moments). */
static eq_status s_reset_state(eq_optim *o, eq_backend *be, const char *name, eq_err *err)
{
    size_t len = strlen(name);
    for (size_t i = 0; o && i < eq_optim_state_count(o); i++) {
        const eq_model_tensor *x = eq_optim_state_at(o, i);
        if (strncmp(x->name, name, len) || x->name[len] != '.') continue;
        eq_status st = eq_backend_zero(be, x->data, x->numel * sizeof(float), err);
        if (st) return st;
    }
    return EQ_OK;
}

eq_status eq_policy_apply(const eq_policy *p, eq_policy_section sec, bool options_only, eq_qlayers *t,
                          eq_optim *optim, eq_err *err)
{
    if ((unsigned)sec >= EQ_POLICY_NSECTIONS) return eq_err_set(err, EQ_ERR_INVALID, "policy: bad section");
    eq_status st = s_check_static(p, t, err);
    if (st) return st;
    eq_backend *be = eq_model_backend(t->model);
    for (size_t r = 0; r < p->nrules[sec]; r++) {
        const s_rule *u = &p->rules[sec][r];
        /* The original walks the modules and gives each the rule's
         * attributes in order; quantizers are independent, so walking the
         * attributes first does the same and logs one line per attribute. */
        for (size_t a = 0; a < u->nattr; a++) {
            const s_attr *at = &u->attr[a];
            const char *x = at->v.items[0];
            int kind = s_attr_kind(at->key);
            if (options_only && kind != A_PROGRESSIVE && kind != A_OPTION) continue;
            size_t count = 0, rescaled = 0;
            char example[256] = "";
            for (size_t i = 0; i < t->n; i++)
                for (int tag = 0; tag < EQ_QTAG_COUNT; tag++) {
                    s_q *s = t->l[i].q[tag];
                    if (!s || !s_selects(u, (int64_t)i, tag)) continue;
                    const char *tn = eq_quant_tag_name((eq_quant_tag)tag);
                    if (kind == A_PROGRESSIVE) {
                        s->progressive = !strcmp(x, "True") || !strcmp(x, "true");
                    } else if (kind == A_OPTION) {
                        eq_quant *q = eq_model_quant(t->model, t->l[i].name, (eq_quant_tag)tag);
                        if (!q)
                            return eq_err_set(err, EQ_ERR_INTERNAL,
                                              "%s:%d: layer %zu (%s) %s: the model has no such quantizer object",
                                              p->name, at->line, i, t->l[i].name, tn);
                        if ((st = eq_quant_set_option(q, at->key, x, err))) {
                            eq_err_prefix(err, "%s:%d: layer %zu (%s) %s: ", p->name, at->line, i, t->l[i].name,
                                          tn);
                            return st;
                        }
                    } else if (kind == A_STATE) {
                        const eq_model_tensor *m = s_state(s, tag, at->key);
                        if (!m) continue;
                        float v = (float)strtod(x, NULL);
                        float *d = m->data;
                        for (size_t j = 0; j < m->numel; j++)
                            d[j] = v;
                    } else { /* level_num: eq_quant_set_levels's arithmetic on the state */
                        int old = (int)*s->level_num;
                        int64_t v = strtoll(x, NULL, 10);
                        int64_t nv = v < 0 ? old + v : v;
                        if (nv < 2 || nv > 65536)
                            return eq_err_set(err, EQ_ERR_INVALID,
                                              "%s:%d: level_num %s on layer %zu (%s) %s gives %" PRId64
                                              " levels (from %d); need 2..65536",
                                              p->name, at->line, x, i, t->l[i].name, tn, nv, old);
                        const eq_model_tensor *clip = s_state(s, tag, "clip_val");
                        if (s->progressive && clip && old > 1 && nv != old) {
                            float rf = (float)(nv - 1) / (float)(old - 1);
                            float *c = clip->data;
                            for (size_t j = 0; j < clip->numel; j++)
                                c[j] *= rf;
                            rescaled++;
                            if (clip->kind == EQ_MT_PARAM && (st = s_reset_state(optim, be, clip->name, err)))
                                return st;
                        }
                        *s->level_num = (float)nv;
                        if (!count)
                            snprintf(example, sizeof example, ", e.g. layer %zu (%s) %s: %d -> %" PRId64, i,
                                     t->l[i].name, tn, old, nv);
                    }
                    eq_debug("%s:%d: layer %zu (%s) %s: %s %s", p->name, at->line, i, t->l[i].name, tn,
                             at->key, x);
                    count++;
                }
            char resc[160] = "";
            if (rescaled)
                snprintf(resc, sizeof resc,
                         "; progressive: %zu clip value(s) rescaled, their optimiser state zeroed", rescaled);
            eq_info("%s:%d: %s: %s on %zu quantizer(s)%s%s", p->name, at->line, at->key, x, count, example,
                    resc);
        }
    }
    return EQ_OK;
}

/* A JSON string (quotes, backslashes and control bytes escaped). */
static void s_put_jstr(s_buf *b, const char *v)
{
    s_put(b, "\"");
    for (const unsigned char *c = (const unsigned char *)v; *c; c++) {
        if (*c == '"' || *c == '\\')
            s_put(b, "\\%c", *c);
        else if (*c < 0x20)
            s_put(b, "\\u%04x", *c);
        else
            s_put(b, "%c", *c);
    }
    s_put(b, "\"");
}

eq_status eq_policy_changes_json(const eq_policy *p, eq_policy_section sec, bool options_only,
                                 const eq_qlayers *t, char **json, eq_err *err)
{
    if (!p || !t || !json || (unsigned)sec >= EQ_POLICY_NSECTIONS)
        return eq_err_set(err, EQ_ERR_INVALID, "policy changes: bad argument");
    s_buf b = {0};
    s_put(&b, "[");
    bool first = true;
    for (size_t r = 0; r < p->nrules[sec]; r++) {
        const s_rule *u = &p->rules[sec][r];
        for (size_t a = 0; a < u->nattr; a++) {
            const s_attr *at = &u->attr[a];
            int kind = s_attr_kind(at->key);
            if (options_only && kind != A_PROGRESSIVE && kind != A_OPTION) continue;
            size_t count = 0;
            for (size_t i = 0; i < t->n; i++)
                for (int tag = 0; tag < EQ_QTAG_COUNT; tag++) {
                    const s_q *s = t->l[i].q[tag];
                    if (s && s_selects(u, (int64_t)i, tag) && (kind != A_STATE || s_state(s, tag, at->key)))
                        count++;
                }
            s_put(&b, "%s{\"line\":%d,\"key\":", first ? "" : ",", at->line);
            s_put_jstr(&b, at->key);
            s_put(&b, ",\"value\":");
            s_put_jstr(&b, at->v.items[0]);
            s_put(&b, ",\"quantizers\":%zu}", count);
            first = false;
        }
    }
    s_put(&b, "]");
    if (b.oom) {
        free(b.p);
        return eq_err_set(err, EQ_ERR_NOMEM, "policy changes: out of memory");
    }
    *json = b.p;
    return EQ_OK;
}
