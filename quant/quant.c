/*
 * quant/quant.c -- options, the method table, construction-time resolution
 * (levels, groups, fan; ORIGINAL.md §2.1) and the generic forward/backward
 * wrapper (var-mean weight normalization, learnable gamma, the iteration
 * counter and the warm-up "stable" pass-through; §2.2, §2.3, §2.13).
 */
#include "quant/quant_internal.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- method table ------------------------------------------------------- */

static const eq_quant_method *const s_methods[] = {
    &eq_quant_dorefa_method,     &eq_quant_bin_method,   &eq_quant_pact_method,
    &eq_quant_lsq_method,        &eq_quant_lsq_step_method,
    &eq_quant_nonuniform_method, &eq_quant_xnor_method,  &eq_quant_lqnet_method,
};
#define S_NMETHODS (sizeof s_methods / sizeof s_methods[0])

const char *const *eq_quant_method_names(void)
{
    static const char *names[S_NMETHODS + 1];
    for (size_t i = 0; i < S_NMETHODS; i++) names[i] = s_methods[i]->name;
    names[S_NMETHODS] = NULL;
    return names;
}

static const eq_quant_method *s_find_method(const char *name)
{
    for (size_t i = 0; i < S_NMETHODS; i++)
        if (strcmp(s_methods[i]->name, name) == 0) return s_methods[i];
    return NULL;
}

/* ---- options ------------------------------------------------------------ */

static const char *const s_tag_names[EQ_QTAG_COUNT] = {"wt", "fm", "ot"};
static const char *const s_adaptive_names[EQ_QADAPT_COUNT] = {"none",     "var",      "mean",
                                                              "mean-var", "var-mean", "min"};
static const char *const s_grad_type_names[EQ_QGRAD_COUNT] = {"none", "STE", "Triangle",
                                                              "STE-scale"};
static const char *const s_grad_scale_names[EQ_QGS_COUNT] = {
    "none", "fan-scale", "scale-fan", "element-scale", "scale-element"};
static const char *const s_custom_names[EQ_QCUSTOM_COUNT] = {"none", "channel", "resolution"};

const char *eq_quant_tag_name(eq_quant_tag tag)
{
    return (unsigned)tag < EQ_QTAG_COUNT ? s_tag_names[tag] : "?";
}

int eq_quant_tag_parse(const char *s, eq_quant_tag *out)
{
    for (int i = 0; i < EQ_QTAG_COUNT; i++)
        if (s && strcmp(s, s_tag_names[i]) == 0) {
            *out = (eq_quant_tag)i;
            return 0;
        }
    return -1;
}

void eq_quant_opts_init(eq_quant_opts *o, eq_quant_tag tag)
{
    memset(o, 0, sizeof *o);
    o->tag = tag;
    snprintf(o->method, sizeof o->method, "dorefa");
    o->bit = 32;
    o->level = 0;
    o->half_range = tag == EQ_QTAG_FM;
    o->boundary = 1.0;
    o->scale = 0.5;
    o->quant_group = 0;
    o->stable = 0;
    o->correlate = -1;
    o->batch_size = 1;
    o->input_size = 0;
    o->norm_eps = 0.0;
}

static eq_status s_parse_double(const char *key, const char *v, double *out, eq_err *err)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || *end != '\0' || errno == ERANGE || !isfinite(d))
        return eq_err_set(err, EQ_ERR_INVALID, "quant option %s: '%s' is not a finite number",
                          key, v);
    *out = d;
    return EQ_OK;
}

static eq_status s_parse_long(const char *key, const char *v, long lo, long hi, long *out,
                              eq_err *err)
{
    char *end;
    errno = 0;
    long l = strtol(v, &end, 10);
    if (end == v || *end != '\0' || errno == ERANGE)
        return eq_err_set(err, EQ_ERR_INVALID, "quant option %s: '%s' is not an integer", key, v);
    if (l < lo || l > hi)
        return eq_err_set(err, EQ_ERR_INVALID, "quant option %s: %ld outside [%ld, %ld]", key, l,
                          lo, hi);
    *out = l;
    return EQ_OK;
}

static eq_status s_parse_bool(const char *key, const char *v, int *out, eq_err *err)
{
    static const char *const t[] = {"true", "1", "yes", "on"};
    static const char *const f[] = {"false", "0", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(v, t[i]) == 0) return *out = 1, EQ_OK;
        if (strcasecmp(v, f[i]) == 0) return *out = 0, EQ_OK;
    }
    return eq_err_set(err, EQ_ERR_INVALID,
                      "quant option %s: '%s' is not a boolean (true/false, 1/0, yes/no, on/off)",
                      key, v);
}

static eq_status s_parse_choice(const char *key, const char *v, const char *const *names, int n,
                                int *out, eq_err *err)
{
    for (int i = 0; i < n; i++)
        if (strcmp(v, names[i]) == 0) return *out = i, EQ_OK;
    char list[256] = "";
    size_t used = 0;
    for (int i = 0; i < n && used < sizeof list; i++)
        used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", names[i]);
    return eq_err_set(err, EQ_ERR_INVALID, "quant option %s: '%s' is not one of: %s", key, v,
                      list);
}

eq_status eq_quant_opts_set(eq_quant_opts *o, const char *key, const char *value, eq_err *err)
{
    if (!key || !value) return eq_err_set(err, EQ_ERR_INVALID, "quant option: NULL key or value");
    eq_quant_opts n = *o;
    eq_status st = EQ_OK;
    long l = 0;
    int c = 0;
    if (strcmp(key, "method") == 0) {
        if (!s_find_method(value)) {
            char list[200] = "";
            size_t used = 0;
            for (size_t i = 0; i < S_NMETHODS && used < sizeof list; i++)
                used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "",
                                         s_methods[i]->name);
            return eq_err_set(err, EQ_ERR_INVALID, "quant option method: unknown method '%s' (known: %s)",
                              value, list);
        }
        snprintf(n.method, sizeof n.method, "%s", value);
    } else if (strcmp(key, "bit") == 0) {
        st = s_parse_double(key, value, &n.bit, err);
        if (!st && (n.bit < 1 || n.bit > 32))
            st = eq_err_set(err, EQ_ERR_INVALID, "quant option bit: %g outside [1, 32]", n.bit);
    } else if (strcmp(key, "level") == 0) {
        st = s_parse_long(key, value, INT_MIN, 65536, &l, err);
        n.level = (int)l;
    } else if (strcmp(key, "half_range") == 0) {
        st = s_parse_bool(key, value, &n.half_range, err);
    } else if (strcmp(key, "boundary") == 0) {
        st = s_parse_double(key, value, &n.boundary, err);
    } else if (strcmp(key, "scale") == 0) {
        st = s_parse_double(key, value, &n.scale, err);
    } else if (strcmp(key, "quant_group") == 0) {
        st = s_parse_long(key, value, -(1L << 30), 1L << 30, &l, err);
        n.quant_group = (int)l;
    } else if (strcmp(key, "adaptive") == 0) {
        st = s_parse_choice(key, value, s_adaptive_names, EQ_QADAPT_COUNT, &c, err);
        n.adaptive = (eq_quant_adaptive)c;
    } else if (strcmp(key, "grad_type") == 0) {
        st = s_parse_choice(key, value, s_grad_type_names, EQ_QGRAD_COUNT, &c, err);
        n.grad_type = (eq_quant_grad_type)c;
    } else if (strcmp(key, "grad_scale") == 0) {
        st = s_parse_choice(key, value, s_grad_scale_names, EQ_QGS_COUNT, &c, err);
        n.grad_scale = (eq_quant_grad_scale)c;
    } else if (strcmp(key, "custom") == 0) {
        st = s_parse_choice(key, value, s_custom_names, EQ_QCUSTOM_COUNT, &c, err);
        n.custom = (eq_quant_custom)c;
    } else if (strcmp(key, "gamma") == 0) {
        st = s_parse_bool(key, value, &n.gamma, err);
    } else if (strcmp(key, "custom_update") == 0) {
        st = s_parse_bool(key, value, &n.custom_update, err);
    } else if (strcmp(key, "closed_form") == 0) {
        st = s_parse_bool(key, value, &n.closed_form, err);
    } else if (strcmp(key, "stable") == 0) {
        st = s_parse_long(key, value, 0, LONG_MAX, &n.stable, err);
    } else if (strcmp(key, "correlate") == 0) {
        st = s_parse_double(key, value, &n.correlate, err);
    } else if (strcmp(key, "progressive") == 0) {
        st = s_parse_bool(key, value, &n.progressive, err);
    } else if (strcmp(key, "independent_norm") == 0) {
        st = s_parse_bool(key, value, &n.independent_norm, err);
    } else if (strcmp(key, "batch_size") == 0) {
        st = s_parse_long(key, value, 1, 1L << 30, &n.batch_size, err);
    } else if (strcmp(key, "input_size") == 0) {
        st = s_parse_long(key, value, 0, 1L << 20, &n.input_size, err);
    } else if (strcmp(key, "exact_grad_scale") == 0) {
        st = s_parse_bool(key, value, &n.exact_grad_scale, err);
    } else if (strcmp(key, "warmup_train_only") == 0) {
        st = s_parse_bool(key, value, &n.warmup_train_only, err);
    } else if (strcmp(key, "lq_codes") == 0) {
        static const char *const names[] = {"floor", "zero"};
        st = s_parse_choice(key, value, names, 2, &c, err);
        n.lq_zero_codes = c;
    } else if (strcmp(key, "norm_eps") == 0) {
        st = s_parse_double(key, value, &n.norm_eps, err);
        if (!st && n.norm_eps < 0)
            st = eq_err_set(err, EQ_ERR_INVALID, "quant option norm_eps: %g is negative",
                            n.norm_eps);
    } else {
        return eq_err_set(err, EQ_ERR_INVALID,
                          "unknown quant option '%s' (known: method, bit, level, half_range, "
                          "boundary, scale, quant_group, adaptive, grad_type, grad_scale, custom, "
                          "gamma, custom_update, closed_form, stable, correlate, progressive, "
                          "independent_norm, batch_size, input_size, exact_grad_scale, norm_eps, "
                          "warmup_train_only, lq_codes)",
                          key);
    }
    if (st) return st;
    *o = n;
    return EQ_OK;
}

/* ---- run-time options (policy attributes, ORIGINAL.md §5.5) --------------- */

enum { S_QL_NONE = 0, S_QL_L2, S_QL_L1, S_QL_QDL };
static const char *const s_runtime_keys[] = {"enable",            "stable",
                                             "adaptive_restore",  "quant_loss_enable",
                                             "quant_loss_function", "quant_loss_alpha"};

int eq_quant_is_runtime_option(const char *key)
{
    for (size_t i = 0; key && i < sizeof s_runtime_keys / sizeof s_runtime_keys[0]; i++)
        if (strcmp(key, s_runtime_keys[i]) == 0) return 1;
    return 0;
}

eq_status eq_quant_set_option(eq_quant *q, const char *key, const char *value, eq_err *err)
{
    if (!q || !key || !value)
        return eq_err_set(err, EQ_ERR_INVALID, "quant run-time option: NULL argument");
    eq_status st = EQ_OK;
    int b = 0;
    if (strcmp(key, "enable") == 0) {
        if (!(st = s_parse_bool(key, value, &b, err))) q->enabled = b;
    } else if (strcmp(key, "stable") == 0) {
        long l = 0;
        if (!(st = s_parse_long(key, value, 0, LONG_MAX, &l, err))) q->o.stable = l;
    } else if (strcmp(key, "adaptive_restore") == 0) {
        if (!(st = s_parse_bool(key, value, &b, err))) q->adaptive_restore = b;
    } else if (strcmp(key, "quant_loss_enable") == 0) {
        if (!(st = s_parse_bool(key, value, &b, err))) q->ql_enable = b;
    } else if (strcmp(key, "quant_loss_function") == 0) {
        /* the original strips quotes from string attributes */
        char v[16];
        size_t j = 0;
        for (const char *c = value; *c && j + 1 < sizeof v; c++)
            if (*c != '\'' && *c != '"') v[j++] = *c;
        v[j] = '\0';
        static const char *const names[] = {"None", "L2", "L1", "QDL"};
        int fn = -1;
        for (int i = 0; i < 4; i++)
            if (strcmp(v, names[i]) == 0) fn = i;
        if (strcmp(v, "none") == 0) fn = S_QL_NONE;
        if (fn < 0 || strlen(value) >= 16)
            return eq_err_set(err, EQ_ERR_INVALID,
                              "quant option quant_loss_function: '%s' is not one of: L2, L1, QDL, None",
                              value);
        q->ql_fn = fn;
    } else if (strcmp(key, "quant_loss_alpha") == 0) {
        double d = 0;
        if (!(st = s_parse_double(key, value, &d, err))) q->ql_alpha = d;
    } else {
        return eq_err_set(err, EQ_ERR_INVALID,
                          "unknown quant run-time option '%s' (value '%s'; known: enable, stable, "
                          "adaptive_restore, quant_loss_enable, quant_loss_function, "
                          "quant_loss_alpha)",
                          key, value);
    }
    return st;
}

bool eq_quant_enabled(const eq_quant *q) { return q->enabled != 0; }
double eq_quant_aux_loss(const eq_quant *q) { return q->ql_active ? q->ql_value : 0.0; }

eq_status eq_quant_set_loss_scale(eq_quant *q, float scale, eq_err *err)
{
    if (!q) return eq_err_set(err, EQ_ERR_INVALID, "eq_quant_set_loss_scale: NULL quantizer");
    if (!(scale >= FLT_MIN) || !isfinite(scale))
        return eq_err_set(err, EQ_ERR_INVALID, "quantizer %s: loss scale %g must be finite and >= %g",
                          eq_quant_tag_name(q->o.tag), (double)scale, (double)FLT_MIN);
    q->ql_grad_scale = scale;
    return EQ_OK;
}

/* ---- helpers for methods ------------------------------------------------ */

eq_quant_tensor *eq_quant_add_tensor(eq_quant *q, const char *name, int ndim,
                                     const int64_t *shape, float fill, int learnable, eq_err *err)
{
    if (q->nt >= EQ_QUANT_MAX_TENSORS) {
        eq_err_set(err, EQ_ERR_INTERNAL, "quantizer: too many state tensors (adding %s)", name);
        return NULL;
    }
    eq_quant_tensor *t = &q->t[q->nt];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->numel *= shape[i];
    }
    t->data = eq_malloc_array((size_t)t->numel, sizeof(float));
    if (learnable) t->grad = eq_calloc_array((size_t)t->numel, sizeof(float));
    if (!t->data || (learnable && !t->grad)) {
        free(t->data);
        free(t->grad);
        eq_err_set(err, EQ_ERR_NOMEM, "quantizer: out of memory for %s", name);
        return NULL;
    }
    for (int64_t i = 0; i < t->numel; i++) t->data[i] = fill;
    q->nt++;
    return t;
}

int eq_quant_param_shape(const eq_quant *q, int64_t g, int64_t shape[4])
{
    if (q->o.tag == EQ_QTAG_WT) {
        shape[0] = g;
        shape[1] = shape[2] = shape[3] = 1;
        return 4;
    }
    if (g == 1) {
        shape[0] = 1;
        return 1;
    }
    shape[0] = 1;
    shape[1] = g;
    shape[2] = shape[3] = 1;
    return 4;
}

double eq_quant_gs_factor(const eq_quant *q, double f)
{
    if (q->o.exact_grad_scale) return f;
    /* Python int() truncates toward zero. */
    if (isfinite(f) && fabs(f) < 9.2e18 && (long long)f == 1) return 1.0;
    return f;
}

double eq_quant_grad_factor(const eq_quant *q)
{
    double s = q->o.scale;
    /* nElements (§2.1 item 7) */
    double nel;
    if (q->o.tag == EQ_QTAG_WT) {
        int64_t numel = 1;
        for (int i = 0; i < q->shape0.ndim; i++) numel *= q->shape0.shape[i];
        nel = (double)(numel / q->g);
    } else {
        nel = (double)(q->channels / q->g) * (double)q->o.batch_size;
        if (q->o.input_size > 0) nel *= (double)q->o.input_size * (double)q->o.input_size;
    }
    switch (q->o.grad_scale) {
    case EQ_QGS_FAN_SCALE: return sqrt((double)q->fan) * s;
    case EQ_QGS_SCALE_FAN: return s / sqrt((double)q->fan);
    case EQ_QGS_ELEMENT_SCALE: return sqrt(nel) * s;
    case EQ_QGS_SCALE_ELEMENT: return s / sqrt(nel);
    default: return 1.0;
    }
}

/* ---- construction ------------------------------------------------------- */

static eq_status s_check_layout(eq_quant_tag tag, const eq_tensor_desc *xd, eq_err *err)
{
    if (xd->dtype != EQ_DT_F32)
        return eq_err_set(err, EQ_ERR_INVALID, "quantizer: tensor dtype %s, want F32",
                          eq_dtype_name(xd->dtype));
    int ok;
    if (tag == EQ_QTAG_WT)
        ok = ((xd->layout == EQ_LAYOUT_OIHW || xd->layout == EQ_LAYOUT_OHWI) && xd->ndim == 4) ||
             (xd->layout == EQ_LAYOUT_OI && xd->ndim == 2);
    else
        ok = ((xd->layout == EQ_LAYOUT_NCHW || xd->layout == EQ_LAYOUT_NHWC) && xd->ndim == 4) ||
             (xd->layout == EQ_LAYOUT_NC && xd->ndim == 2);
    if (!ok)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "quantizer %s: a rank-%d tensor with layout %d is not supported (wt: "
                          "OIHW, OHWI or OI; fm/ot: NCHW, NHWC or NC)",
                          eq_quant_tag_name(tag), xd->ndim, (int)xd->layout);
    for (int i = 0; i < xd->ndim; i++)
        if (xd->shape[i] < 1)
            return eq_err_set(err, EQ_ERR_INVALID, "quantizer %s: dimension %d is %lld",
                              eq_quant_tag_name(tag), i, (long long)xd->shape[i]);
    if (!eq_tensor_is_contiguous(xd))
        return eq_err_set(err, EQ_ERR_INVALID, "quantizer %s: tensor is not contiguous",
                          eq_quant_tag_name(tag));
    return EQ_OK;
}

eq_quant *eq_quant_new(const eq_quant_opts *o, const eq_tensor_desc *xd, eq_err *err)
{
    if (!o || !xd) {
        eq_err_set(err, EQ_ERR_INVALID, "eq_quant_new: NULL argument");
        return NULL;
    }
    if ((unsigned)o->tag >= EQ_QTAG_COUNT) {
        eq_err_set(err, EQ_ERR_INVALID, "quantizer: bad tag %d", (int)o->tag);
        return NULL;
    }
    const eq_quant_method *m = s_find_method(o->method);
    if (!m) {
        eq_err_set(err, EQ_ERR_NOTFOUND, "quant option method: unknown method '%s'", o->method);
        return NULL;
    }
    if (!(m->tags & (1u << o->tag))) {
        eq_err_set(err, EQ_ERR_INVALID, "quant method %s does not support tag %s", m->name,
                   eq_quant_tag_name(o->tag));
        return NULL;
    }
    if (s_check_layout(o->tag, xd, err)) return NULL;
    eq_quant *q = calloc(1, sizeof *q);
    if (!q) {
        eq_err_set(err, EQ_ERR_NOMEM, "quantizer: out of memory");
        return NULL;
    }
    q->o = *o;
    q->m = m;
    q->enabled = 1;
    q->ql_grad_scale = 1.0;
    q->layout = xd->layout;
    q->shape0 = *xd;

    /* §2.1: levels */
    double bit = o->bit;
    double Ld = o->level > 0 ? (double)o->level : floor(pow(2.0, bit));
    if (m->family == EQ_QFAM_XNOR) Ld = 2; /* binary whatever `bit` says */
    if (Ld > 16777216.0) {
        eq_err_set(err, EQ_ERR_INVALID,
                   "quant %s: bit %g gives more than 2^24 levels (disable the quantizer for full "
                   "precision)",
                   eq_quant_tag_name(o->tag), bit);
        free(q);
        return NULL;
    }
    int L = (int)Ld;
    q->bit = (int)bit;
    q->L0 = L;

    /* PyTorch shapes: fm [1, C, 1, 1]; conv wt [O, I, k, k]; linear wt [1, 1, out, in] */
    int64_t P;
    if (o->tag == EQ_QTAG_WT) {
        if (xd->layout == EQ_LAYOUT_OI) {
            q->linear = 1;
            q->channels = 1;
            P = 1;
            q->fan = xd->shape[0] * xd->shape[1];
        } else {
            /* OIHW (O, I, kh, kw) or OHWI (O, kh, kw, I): P = O*I either way */
            int64_t I = xd->layout == EQ_LAYOUT_OHWI ? xd->shape[3] : xd->shape[1];
            q->channels = xd->shape[0];
            P = xd->shape[0] * I;
            q->fan = xd->shape[1] * xd->shape[2] * xd->shape[3];
        }
    } else {
        int ax = eq_layout_channel_axis(xd->layout);
        q->linear = xd->layout == EQ_LAYOUT_NC;
        q->channels = xd->shape[ax];
        P = q->channels;
        q->fan = q->channels;
    }
    int64_t g = 0, qg = o->quant_group;
    if (qg < 0) {
        if (P % (-qg) == 0) g = P / (-qg);
    } else if (qg > 0) {
        if (P % qg == 0) g = qg;
    }
    if (g == 0) g = o->tag == EQ_QTAG_WT ? q->channels : 1;
    if (xd->layout == EQ_LAYOUT_OHWI && q->channels % g != 0) {
        /* groups are contiguous chunks of the (O, I, kh, kw) flattening;
         * only whole output channels are contiguous in OHWI as well */
        eq_err_set(err, EQ_ERR_INVALID,
                   "quant option quant_group: %lld groups split the output channels of an OHWI "
                   "weight (%lld channels; its groups must be whole channels: use a quant_group "
                   "dividing the channel count, or OIHW)",
                   (long long)g, (long long)q->channels);
        goto fail;
    }
    q->g = g;
    q->norm_g = o->independent_norm ? 1 : g;

    eq_quant_tensor *it = eq_quant_add_tensor(q, "iteration", 1, (int64_t[]){1}, 0.0f, 0, err);
    eq_quant_tensor *ln = it ? eq_quant_add_tensor(q, "level_num", 1, (int64_t[]){1}, (float)L, 0, err) : NULL;
    if (!ln) goto fail;
    q->iteration = it->data;
    q->level_num = ln->data;
    if (L < 2) {
        eq_err_set(err, EQ_ERR_INVALID, "quant %s: %d levels (bit %g, level %d); need >= 2",
                   eq_quant_tag_name(o->tag), L, o->bit, o->level);
        goto fail;
    }

    if (o->tag == EQ_QTAG_WT && o->adaptive == EQ_QADAPT_VAR_MEAN) {
        if (!m->uses_var_mean) {
            eq_err_set(err, EQ_ERR_INVALID, "quant option adaptive: var-mean is not used by method %s",
                       m->name);
            goto fail;
        }
        if (q->norm_g != 1 && q->norm_g != q->channels) {
            eq_err_set(err, EQ_ERR_INVALID,
                       "quant option adaptive: var-mean statistics of shape (%lld,1,1,1) do not "
                       "broadcast over %lld output channels (use quant_group 1 or %lld, or "
                       "independent_norm)",
                       (long long)q->norm_g, (long long)q->channels, (long long)q->channels);
            goto fail;
        }
    } else if (o->adaptive != EQ_QADAPT_NONE && m->family != EQ_QFAM_LQNET) {
        eq_err_set(err, EQ_ERR_INVALID, "quant option adaptive: '%s' is not supported by method %s on tag %s",
                   s_adaptive_names[o->adaptive], m->name, eq_quant_tag_name(o->tag));
        goto fail;
    }
    if (o->gamma) {
        int ok = m->family == EQ_QFAM_XNOR ? o->tag == EQ_QTAG_WT
                                           : (m->family == EQ_QFAM_DOREFA && o->tag != EQ_QTAG_FM);
        if (!ok) {
            eq_err_set(err, EQ_ERR_INVALID, "quant option gamma: not available for method %s on tag %s",
                       m->name, eq_quant_tag_name(o->tag));
            goto fail;
        }
        int64_t lim = o->tag == EQ_QTAG_WT ? q->channels : q->channels;
        if (g != 1 && g != lim) {
            eq_err_set(err, EQ_ERR_INVALID,
                       "quant option gamma: a per-group scale of %lld groups does not broadcast "
                       "over %lld channels",
                       (long long)g, (long long)lim);
            goto fail;
        }
        int64_t shp[4];
        int nd = eq_quant_param_shape(q, g, shp);
        q->gamma = eq_quant_add_tensor(q, "gamma", nd, shp, 1.0f, 1, err);
        if (!q->gamma) goto fail;
    }
    if (o->lq_zero_codes && m->family != EQ_QFAM_LQNET) {
        eq_err_set(err, EQ_ERR_INVALID, "quant option lq_codes: only method lqnet has codes (method %s)",
                   m->name);
        goto fail;
    }
    if (m->init(q, err)) goto fail;
    q->clip = eq_quant_find(q, "clip_val");
    return q;
fail:
    eq_quant_destroy(&q);
    return NULL;
}

void eq_quant_destroy(eq_quant **q_p)
{
    if (!q_p || !*q_p) return;
    eq_quant *q = *q_p;
    if (q->m && q->m->destroy) q->m->destroy(q);
    for (size_t i = 0; i < q->nt; i++) {
        free(q->t[i].data);
        free(q->t[i].grad);
    }
    free(q->nmean);
    free(q->nstd);
    free(q->xn);
    free(q->ypre);
    free(q->gtmp);
    free(q->cacc);
    free(q->qly);
    free(q->qlg);
    free(q);
    *q_p = NULL;
}

size_t eq_quant_tensor_count(const eq_quant *q) { return q->nt; }
eq_quant_tensor *eq_quant_tensor_at(eq_quant *q, size_t i) { return i < q->nt ? &q->t[i] : NULL; }
eq_quant_tensor *eq_quant_find(eq_quant *q, const char *name)
{
    for (size_t i = 0; i < q->nt; i++)
        if (strcmp(q->t[i].name, name) == 0) return &q->t[i];
    return NULL;
}
int eq_quant_levels(const eq_quant *q) { return (int)*q->level_num; }
const eq_quant_opts *eq_quant_options(const eq_quant *q) { return &q->o; }
int64_t eq_quant_groups(const eq_quant *q) { return q->g; }
void eq_quant_set_pool(eq_quant *q, eq_pool *pool) { q->pool = pool; }

/* ---- chunked parallel loops --------------------------------------------- */

#define S_CHUNK_TARGET 32768

typedef struct s_chunk_ctx {
    eq_quant *q;
    eq_qchunk_fn fn;
    void *ctx;
} s_chunk_ctx;

static void s_chunk_tramp(void *vc, size_t i, int worker)
{
    (void)worker;
    s_chunk_ctx *c = vc;
    int64_t lo = (int64_t)i * c->q->chunk, hi = lo + c->q->chunk;
    if (hi > c->q->n) hi = c->q->n;
    c->fn(c->q, c->ctx, (int64_t)i, lo, hi);
}

void eq_quant_for_chunks(eq_quant *q, eq_qchunk_fn fn, void *ctx)
{
    s_chunk_ctx c = {q, fn, ctx};
    if (q->pool && q->nchunks > 1) {
        eq_pool_for(q->pool, (size_t)q->nchunks, s_chunk_tramp, &c);
    } else {
        for (int64_t i = 0; i < q->nchunks; i++) s_chunk_tramp(&c, (size_t)i, 0);
    }
}

double *eq_quant_chunk_acc(eq_quant *q, int64_t per_chunk)
{
    int64_t need = q->nchunks * per_chunk;
    EQ_ASSERT(per_chunk <= EQ_QUANT_ACC_PER_GROUP * q->g + EQ_QUANT_ACC_PER_GROUP &&
              need <= q->cacc_cap); /* reserved by eq_quant_forward */
    memset(q->cacc, 0, (size_t)need * sizeof(double));
    return q->cacc;
}

eq_status eq_quant_check_state(const eq_quant *q, eq_err *err)
{
    float ln = *q->level_num, it = *q->iteration;
    if (!(ln >= 2.0f && ln <= 16777216.0f) || ln != floorf(ln))
        return eq_err_set(err, EQ_ERR_INVALID, "quantizer state level_num: %g is not a level count >= 2", ln);
    if (q->m->fixed_levels && (int)ln != q->L0)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "quantizer state level_num: %g, but method %s was built for %d levels", ln,
                          q->m->name, q->L0);
    if (!(it >= 0.0f) || !isfinite(it))
        return eq_err_set(err, EQ_ERR_INVALID, "quantizer state iteration: %g is not a count", it);
    for (size_t i = 0; i < q->nt; i++)
        for (int64_t j = 0; j < q->t[i].numel; j++)
            if (!isfinite(q->t[i].data[j]))
                return eq_err_set(err, EQ_ERR_INVALID, "quantizer state %s[%lld] is not finite",
                                  q->t[i].name, (long long)j);
    return EQ_OK;
}

eq_status eq_quant_set_levels(eq_quant *q, int v, eq_err *err)
{
    if (q->m->fixed_levels)
        return eq_err_set(err, EQ_ERR_UNSUPPORTED, "quant method %s: the level count is fixed at construction",
                          q->m->name);
    int old = (int)*q->level_num;
    int nv = v < 0 ? old + v : v;
    if (nv < 2)
        return eq_err_set(err, EQ_ERR_INVALID, "quant level change to %d levels (from %d); need >= 2",
                          nv, old);
    if (q->o.progressive && q->clip && old > 1) {
        float r = (float)(nv - 1) / (float)(old - 1);
        for (int64_t i = 0; i < q->clip->numel; i++) q->clip->data[i] *= r;
    }
    *q->level_num = (float)nv;
    return EQ_OK;
}

/* ---- generic forward / backward ----------------------------------------- */

static eq_status s_reserve(eq_quant *q, int64_t n, eq_err *err)
{
    if (n <= q->cap) return EQ_OK;
    float *a = realloc(q->xn, (size_t)n * sizeof(float));
    if (a) q->xn = a;
    float *b = a ? realloc(q->ypre, (size_t)n * sizeof(float)) : NULL;
    if (b) q->ypre = b;
    float *c = b ? realloc(q->gtmp, (size_t)n * sizeof(float)) : NULL;
    if (c) q->gtmp = c;
    if (!c) return eq_err_set(err, EQ_ERR_NOMEM, "quantizer: out of memory for %lld elements", (long long)n);
    q->cap = n;
    return EQ_OK;
}

/* var-mean (§2.3): per contiguous norm group, detached mean and unbiased
 * std, each sum in double over four interleaved lanes (a fixed order; the
 * lanes vectorize). */
EQ_QSIMD_WIDE static void s_norm_group(const float *p, int64_t per, float eps, float *o, float *mean, float *std)
{
    double mu = eq_qsum(p, per) / (double)per;
    double v0 = 0, v1 = 0, v2 = 0, v3 = 0;
    int64_t i = 0;
    for (; i + 4 <= per; i += 4) {
        double d0 = (double)p[i] - mu, d1 = (double)p[i + 1] - mu, d2 = (double)p[i + 2] - mu,
               d3 = (double)p[i + 3] - mu;
        v0 += d0 * d0;
        v1 += d1 * d1;
        v2 += d2 * d2;
        v3 += d3 * d3;
    }
    for (; i < per; i++) v0 += ((double)p[i] - mu) * ((double)p[i] - mu);
    double v = (v0 + v1) + (v2 + v3);
    double sd = per > 1 ? sqrt(v / (double)(per - 1)) : NAN;
    float muf = (float)mu, den = (float)sd + eps;
    *mean = muf;
    *std = den;
    for (i = 0; i < per; i++) o[i] = (p[i] - muf) / den;
}

static eq_status s_var_mean(eq_quant *q, const float *x, eq_err *err)
{
    int64_t G = q->norm_g, per = q->n / G;
    if (!q->nmean) {
        q->nmean = eq_malloc_array((size_t)G, sizeof(float));
        q->nstd = eq_malloc_array((size_t)G, sizeof(float));
        if (!q->nmean || !q->nstd) return eq_err_set(err, EQ_ERR_NOMEM, "quantizer: out of memory");
    }
    for (int64_t k = 0; k < G; k++)
        s_norm_group(x + k * per, per, (float)q->o.norm_eps, q->xn + k * per, &q->nmean[k], &q->nstd[k]);
    return EQ_OK;
}

/* gx /= std per norm group. */
EQ_QSIMD_WIDE static void s_unnorm(float *gx, int64_t per, int64_t G, const float *std)
{
    for (int64_t k = 0; k < G; k++) {
        float inv = std[k];
        float *o = gx + k * per;
        for (int64_t i = 0; i < per; i++) o[i] = o[i] / inv;
    }
}

/* Warm-up clip initialisation (§2.13): running mean of per-batch max|x|. */
static void s_warmup_clip(eq_quant *q, const float *x)
{
    if (!q->clip) return;
    float mx = 0.0f;
    for (int64_t i = 0; i < q->n; i++) {
        float a = fabsf(x[i]);
        if (a > mx || isnan(a)) mx = a;
    }
    if (q->o.correlate > 0) mx = mx * (float)q->o.correlate;
    float k = *q->iteration;
    for (int64_t i = 0; i < q->clip->numel; i++)
        q->clip->data[i] = (mx + (k - 1.0f) * q->clip->data[i]) / k;
}

/* ---- run-time options in the forward/backward ------------------------------ */

static eq_status s_reserve_ql(eq_quant *q, int64_t n, eq_err *err)
{
    if (n <= q->qlcap) return EQ_OK;
    float *a = realloc(q->qly, (size_t)n * sizeof(float));
    if (a) q->qly = a;
    float *b = a ? realloc(q->qlg, (size_t)n * sizeof(float)) : NULL;
    if (b) q->qlg = b;
    if (!b) return eq_err_set(err, EQ_ERR_NOMEM, "quantizer: out of memory for %lld elements", (long long)n);
    q->qlcap = n;
    return EQ_OK;
}

/* adaptive_restore (§2.3): y := y*(std + eps) + mean per norm group. */
static void s_restore(float *y, int64_t per, int64_t G, const float *mean, const float *std)
{
    for (int64_t k = 0; k < G; k++) {
        float sd = std[k], mu = mean[k];
        float *o = y + k * per;
        for (int64_t i = 0; i < per; i++) o[i] = o[i] * sd + mu;
    }
}

/* The x the original's finalize sees (§2.2): the (normalised) input, and for
 * dorefa-family weights with gamma that input times gamma (`x = x * gamma`
 * beside `y = y * gamma`). */
static int s_ql_xgamma(const eq_quant *q)
{
    return q->gamma && q->o.tag == EQ_QTAG_WT && q->m->family == EQ_QFAM_DOREFA;
}
#define S_QL_GAMMA_AT(q, k) ((q)->gamma->data[(q)->gamma->numel == 1 ? 0 : (k)])

/* Quantization loss (§2.15) of xf (the finalize x, see s_ql_xgamma) and y:
 * L2 mean((x-y)^2), L1 mean|x-y|, QDL |sum(x y)/sum(y^2) - 1|, times alpha.
 * Keeps y for the gradient. */
static eq_status s_qloss_forward(eq_quant *q, const float *xf, const float *y, eq_err *err)
{
    int64_t n = q->n;
    eq_status st = s_reserve_ql(q, n, err);
    if (st) return st;
    memcpy(q->qly, y, (size_t)n * sizeof(float));
    int xg = s_ql_xgamma(q), fn = q->ql_fn;
    double a = 0, b = 0;
    EQ_QFOR_RUNS(q, s0, len, k) {
        float gk = xg ? S_QL_GAMMA_AT(q, k) : 1.0f;
        for (int64_t i = s0; i < s0 + len; i++) {
            float xv = xg ? xf[i] * gk : xf[i], yv = y[i];
            if (fn == S_QL_QDL) {
                a += (double)(xv * yv);
                b += (double)(yv * yv);
            } else {
                float d = xv - yv;
                a += fn == S_QL_L2 ? (double)(d * d) : (double)fabsf(d);
            }
        }
    }
    double loss;
    if (fn == S_QL_QDL) {
        q->ql_sxy = a;
        q->ql_syy = b;
        loss = fabs(a / b - 1.0); /* sum(y^2) == 0 gives inf/NaN, as in the original */
    } else {
        loss = a / (double)n;
    }
    q->ql_value = q->ql_alpha * loss;
    q->ql_active = 1;
    return EQ_OK;
}

/* Gradient of alpha*loss: with respect to y added to gy (into q->qlg),
 * and with respect to xf (wx = 1) added to gx (wx = 0); the latter also
 * feeds gamma's gradient when xf = x*gamma. */
static void s_qloss_grad(eq_quant *q, const float *xf, const float *gy, float *gx, int wx)
{
    int64_t n = q->n;
    int xg = s_ql_xgamma(q), fn = q->ql_fn;
    /* The task loss's gradient arrives multiplied by the loss scale
     * (eq_quant_set_loss_scale), so this loss's is too: the sum stays the
     * scaled gradient of the total loss (bitwise 2^k times the unscaled one
     * for a power-of-two scale, barring overflow). */
    double al = q->ql_alpha * q->ql_grad_scale;
    float c = 0, c1 = 0, c2 = 0;
    if (fn == S_QL_L2) c = (float)(2.0 * al / (double)n);
    else if (fn == S_QL_L1) c = (float)(al / (double)n);
    else {
        double k = q->ql_sxy / q->ql_syy, sg = k > 1.0 ? 1.0 : (k < 1.0 ? -1.0 : 0.0);
        c1 = (float)(al * sg / q->ql_syy);
        c2 = (float)(al * sg * 2.0 * q->ql_sxy / (q->ql_syy * q->ql_syy));
    }
    const float *yq = q->qly;
    float *gg = xg && wx ? q->gamma->grad : NULL;
    EQ_QFOR_RUNS(q, s0, len, k) {
        float gk = xg ? S_QL_GAMMA_AT(q, k) : 1.0f;
        double acc = 0;
        for (int64_t i = s0; i < s0 + len; i++) {
            float xv = xg ? xf[i] * gk : xf[i], yv = yq[i], gxv, gyv;
            if (fn == S_QL_QDL) {
                gxv = c1 * yv;
                gyv = c1 * xv - c2 * yv;
            } else {
                float d = xv - yv;
                gxv = fn == S_QL_L2 ? c * d : c * eq_qsign(d);
                gyv = -gxv;
            }
            if (wx) {
                gx[i] += xg ? gxv * gk : gxv;
                if (gg) acc += (double)gxv * xf[i];
            } else {
                q->qlg[i] = gy[i] + gyv;
            }
        }
        if (gg) gg[q->gamma->numel == 1 ? 0 : k] += (float)acc;
    }
}

eq_status eq_quant_forward(eq_quant *q, const eq_tensor_desc *xd, const float *x, float *y,
                           int train, eq_err *err)
{
    if (!q || !xd || !x || !y) return eq_err_set(err, EQ_ERR_INVALID, "eq_quant_forward: NULL argument");
    const char *tn = eq_quant_tag_name(q->o.tag);
    if (s_check_layout(q->o.tag, xd, err)) return err ? err->code : EQ_ERR_INVALID;
    if (xd->layout != q->layout)
        return eq_err_set(err, EQ_ERR_INVALID, "quantizer %s: layout changed since construction", tn);
    int64_t n = eq_tensor_numel(xd);
    if (q->o.tag == EQ_QTAG_WT) {
        for (int i = 0; i < xd->ndim; i++)
            if (xd->shape[i] != q->shape0.shape[i])
                return eq_err_set(err, EQ_ERR_INVALID,
                                  "quantizer wt: weight dimension %d is %lld, built for %lld", i,
                                  (long long)xd->shape[i], (long long)q->shape0.shape[i]);
        q->batch = 1;
        q->grp.inner = n / q->g;
        q->grp.period = q->g;
        q->grp.block = 1;
    } else {
        int ax = eq_layout_channel_axis(xd->layout);
        if (xd->shape[ax] != q->channels)
            return eq_err_set(err, EQ_ERR_INVALID, "quantizer %s: %lld channels, built for %lld", tn,
                              (long long)xd->shape[ax], (long long)q->channels);
        q->batch = xd->shape[0];
        eq_status st = eq_group_along(xd, ax, q->g, &q->grp, err);
        if (st) return st;
    }
    if (q->grp.period / q->grp.block == 1) { /* one group: a single run */
        q->grp.inner = n;
        q->grp.period = q->grp.block = 1;
        q->chunk = S_CHUNK_TARGET;
    } else {
        int64_t run = q->grp.inner * q->grp.block;
        q->chunk = run >= S_CHUNK_TARGET ? run : (S_CHUNK_TARGET / run) * run;
    }
    q->nchunks = (n + q->chunk - 1) / q->chunk;
    {
        int64_t need = q->nchunks * (EQ_QUANT_ACC_PER_GROUP * q->g + EQ_QUANT_ACC_PER_GROUP);
        if (need > q->cacc_cap) {
            double *a = realloc(q->cacc, (size_t)need * sizeof(double));
            if (!a) return eq_err_set(err, EQ_ERR_NOMEM, "quantizer: out of memory for accumulators");
            q->cacc = a;
            q->cacc_cap = need;
        }
    }
    eq_status st = s_reserve(q, n, err);
    if (st) return st;
    q->xd = *xd;
    q->n = n;
    q->train = train;
    q->have_fwd = 0;
    q->passthrough = 0;
    q->normed = 0;
    q->bypass = 0;
    q->restored = 0;
    q->ql_active = 0;
    q->ql_value = 0;
    if (!q->enabled) { /* policy `enable: False`: the identity, no state change */
        memcpy(y, x, (size_t)n * sizeof(float));
        q->bypass = 1;
        q->have_fwd = 1;
        return EQ_OK;
    }

    const float *src = x;
    if (q->o.tag == EQ_QTAG_WT && q->o.adaptive == EQ_QADAPT_VAR_MEAN) {
        st = s_var_mean(q, x, err);
        if (st) return st;
        q->normed = 1;
        src = q->xn;
    }
    st = q->m->forward(q, src, y, err);
    if (st) return st;
    if (q->gamma) {
        memcpy(q->ypre, y, (size_t)n * sizeof(float));
        const float *gm = q->gamma->data;
        EQ_QFOR_RUNS(q, s0, len, k) {
            float gk = gm[q->gamma->numel == 1 ? 0 : k];
            for (int64_t i = s0; i < s0 + len; i++) y[i] = q->ypre[i] * gk;
        }
    }
    if (q->adaptive_restore && q->normed && q->m->family == EQ_QFAM_DOREFA) {
        st = s_reserve_ql(q, n, err);
        if (st) return st;
        s_restore(y, n / q->norm_g, q->norm_g, q->nmean, q->nstd);
        q->restored = 1;
    }
    if (q->m->family == EQ_QFAM_DOREFA && (train || !q->o.warmup_train_only)) {
        *q->iteration += 1.0f;
        if (*q->iteration <= (float)q->o.stable) {
            s_warmup_clip(q, src);
            if (y != src) memcpy(y, src, (size_t)n * sizeof(float));
            q->passthrough = 1;
        }
    }
    /* LQ-Net handles its own counter and warm-up inside its forward (it
     * sets q->passthrough); XNOR has neither. */
    if (train && !q->passthrough && q->ql_enable && q->ql_fn != S_QL_NONE) {
        st = s_qloss_forward(q, src, y, err);
        if (st) return st;
    }
    q->have_fwd = 1;
    return EQ_OK;
}

int eq_quant_zero_pad_exact(const eq_quant *q)
{
    /* the method's own part, then what the generic layer adds: gamma
     * (exact too, but unchecked), the quantization loss (a mean over the
     * elements).  The warm-up's clip (a max of |x|) and pass-through keep
     * zeros as they are; var-mean is weights only. */
    if (!q || q->o.tag == EQ_QTAG_WT || !q->m->zero_pad_exact) return 0;
    if (q->gamma || (q->ql_enable && q->ql_fn != S_QL_NONE)) return 0;
    return q->m->zero_pad_exact(q);
}

eq_status eq_quant_backward(eq_quant *q, const float *x, const float *gy, float *gx, eq_err *err)
{
    if (!q || !x || !gy || !gx) return eq_err_set(err, EQ_ERR_INVALID, "eq_quant_backward: NULL argument");
    if (!q->have_fwd)
        return eq_err_set(err, EQ_ERR_INVALID, "quantizer %s: backward without a forward",
                          eq_quant_tag_name(q->o.tag));
    int64_t n = q->n;
    for (size_t i = 0; i < q->nt; i++)
        if (q->t[i].grad) memset(q->t[i].grad, 0, (size_t)q->t[i].numel * sizeof(float));
    const float *src = q->normed ? q->xn : x;
    if (q->bypass) {
        if (gx != gy) memmove(gx, gy, (size_t)n * sizeof(float));
        return EQ_OK;
    }
    if (q->passthrough) {
        if (gx != gy) memmove(gx, gy, (size_t)n * sizeof(float));
    } else {
        const float *g = gy;
        if (q->ql_active) { /* dL/dy += d(alpha loss)/dy */
            s_qloss_grad(q, src, gy, NULL, 0);
            g = q->qlg;
        }
        if (q->restored) { /* y = y'*(std+eps) + mean: dL/dy' = dL/dy * (std+eps) */
            int64_t per = n / q->norm_g;
            for (int64_t k = 0; k < q->norm_g; k++)
                for (int64_t i = k * per; i < (k + 1) * per; i++) q->qlg[i] = g[i] * q->nstd[k];
            g = q->qlg;
        }
        if (q->gamma) {
            const float *gm = q->gamma->data;
            float *gg = q->gamma->grad;
            EQ_QFOR_RUNS(q, s0, len, k) {
                int64_t gi = q->gamma->numel == 1 ? 0 : k;
                double acc = 0;
                for (int64_t i = s0; i < s0 + len; i++) {
                    acc += (double)g[i] * q->ypre[i];
                    q->gtmp[i] = g[i] * gm[gi];
                }
                gg[gi] += (float)acc;
            }
            g = q->gtmp;
        }
        q->m->backward(q, src, g, gx);
        if (q->ql_active) s_qloss_grad(q, src, NULL, gx, 1); /* the loss's own x path */
    }
    if (q->normed) s_unnorm(gx, n / q->norm_g, q->norm_g, q->nstd);
    return EQ_OK;
}
