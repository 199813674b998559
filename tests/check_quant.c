/* tests/check_quant.c -- quantizers: options, hand-checked values at the
 * rounding ties, properties (levels, range, idempotence, per-channel
 * independence, NCHW == NHWC), finite-difference gradients, warm-up,
 * progressive levels.  The reference fixtures are in check_quant_fixtures.c. */
#include "core/pool.h"
#include "quant/quant.h"
#include "quant/quant_internal.h" /* eq_qtanh */
#include "tests/testutil.h"

#include <math.h>

/* ---- helpers ------------------------------------------------------------- */

static uint64_t s_rng = 88172645463325252ull;
static float s_randn(void)
{
    double u1, u2;
    s_rng ^= s_rng << 13, s_rng ^= s_rng >> 7, s_rng ^= s_rng << 17;
    u1 = ((s_rng >> 11) + 1.0) / 9007199254740993.0;
    s_rng ^= s_rng << 13, s_rng ^= s_rng >> 7, s_rng ^= s_rng << 17;
    u2 = (s_rng >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
static void s_fill(float *a, int64_t n, float scale, float shift)
{
    for (int64_t i = 0; i < n; i++) a[i] = s_randn() * scale + shift;
}

/* Build a quantizer from "key=value" strings (NULL-terminated). */
static eq_quant *s_make(eq_quant_tag tag, eq_layout lay, int ndim, const int64_t *shape,
                        const char *const *kv)
{
    eq_quant_opts o;
    eq_quant_opts_init(&o, tag);
    eq_err err = {0};
    for (; kv && *kv; kv++) {
        char key[64];
        const char *e = strchr(*kv, '=');
        ck_assert_ptr_nonnull(e);
        snprintf(key, sizeof key, "%.*s", (int)(e - *kv), *kv);
        ck_assert_msg(eq_quant_opts_set(&o, key, e + 1, &err) == EQ_OK, "%s: %s", *kv, err.msg);
    }
    eq_tensor_desc d;
    ck_assert_int_eq(eq_tensor_desc_init(&d, EQ_DT_F32, lay, ndim, shape, &err), EQ_OK);
    eq_quant *q = eq_quant_new(&o, &d, &err);
    ck_assert_msg(q != NULL, "eq_quant_new: %s", err.msg);
    return q;
}

static void s_fwd(eq_quant *q, eq_layout lay, int ndim, const int64_t *shape, const float *x, float *y,
                  int train)
{
    eq_tensor_desc d;
    eq_err err = {0};
    ck_assert_int_eq(eq_tensor_desc_init(&d, EQ_DT_F32, lay, ndim, shape, &err), EQ_OK);
    ck_assert_msg(eq_quant_forward(q, &d, x, y, train, &err) == EQ_OK, "forward: %s", err.msg);
}

static void s_bwd(eq_quant *q, const float *x, const float *gy, float *gx)
{
    eq_err err = {0};
    ck_assert_msg(eq_quant_backward(q, x, gy, gx, &err) == EQ_OK, "backward: %s", err.msg);
}

static int s_err_contains(eq_status st, const eq_err *e, const char *needle)
{
    return st != EQ_OK && strstr(e->msg, needle) != NULL;
}

/* ---- options --------------------------------------------------------------- */

START_TEST(test_opts_defaults_and_set)
{
    eq_quant_opts o;
    eq_err e = {0};
    eq_quant_opts_init(&o, EQ_QTAG_FM);
    ck_assert_str_eq(o.method, "dorefa");
    ck_assert_int_eq(o.half_range, 1);
    ck_assert(o.boundary == 1.0 && o.scale == 0.5 && o.bit == 32);
    eq_quant_opts_init(&o, EQ_QTAG_WT);
    ck_assert_int_eq(o.half_range, 0);
    ck_assert_int_eq(eq_quant_opts_set(&o, "method", "lsq", &e), EQ_OK);
    ck_assert_int_eq(eq_quant_opts_set(&o, "bit", "2", &e), EQ_OK);
    ck_assert_int_eq(eq_quant_opts_set(&o, "level", "3", &e), EQ_OK);
    ck_assert_int_eq(eq_quant_opts_set(&o, "half_range", "yes", &e), EQ_OK);
    ck_assert_int_eq(eq_quant_opts_set(&o, "quant_group", "-4", &e), EQ_OK);
    ck_assert_int_eq(eq_quant_opts_set(&o, "adaptive", "var-mean", &e), EQ_OK);
    ck_assert_int_eq(eq_quant_opts_set(&o, "grad_type", "STE-scale", &e), EQ_OK);
    ck_assert_int_eq(eq_quant_opts_set(&o, "grad_scale", "scale-element", &e), EQ_OK);
    ck_assert_int_eq(eq_quant_opts_set(&o, "custom", "resolution", &e), EQ_OK);
    ck_assert_int_eq(eq_quant_opts_set(&o, "gamma", "on", &e), EQ_OK);
    ck_assert_int_eq(eq_quant_opts_set(&o, "custom_update", "1", &e), EQ_OK);
    ck_assert_int_eq(eq_quant_opts_set(&o, "closed_form", "false", &e), EQ_OK);
    ck_assert_int_eq(eq_quant_opts_set(&o, "stable", "20", &e), EQ_OK);
    ck_assert_int_eq(eq_quant_opts_set(&o, "scale", "3.0", &e), EQ_OK);
    ck_assert_str_eq(o.method, "lsq");
    ck_assert(o.bit == 2 && o.level == 3 && o.half_range == 1 && o.quant_group == -4);
    ck_assert(o.adaptive == EQ_QADAPT_VAR_MEAN && o.grad_type == EQ_QGRAD_STE_SCALE);
    ck_assert(o.grad_scale == EQ_QGS_SCALE_ELEMENT && o.custom == EQ_QCUSTOM_RESOLUTION);
    ck_assert(o.gamma == 1 && o.custom_update == 1 && o.closed_form == 0 && o.stable == 20);
    ck_assert(o.scale == 3.0);
}
END_TEST

START_TEST(test_opts_errors_name_the_key)
{
    eq_quant_opts o, before;
    eq_err e = {0};
    eq_quant_opts_init(&o, EQ_QTAG_FM);
    before = o;
    ck_assert(s_err_contains(eq_quant_opts_set(&o, "bits", "2", &e), &e, "unknown quant option 'bits'"));
    ck_assert(s_err_contains(eq_quant_opts_set(&o, "bit", "two", &e), &e, "bit"));
    ck_assert(s_err_contains(eq_quant_opts_set(&o, "bit", "2x", &e), &e, "not a finite number"));
    ck_assert(s_err_contains(eq_quant_opts_set(&o, "bit", "0", &e), &e, "outside"));
    ck_assert(s_err_contains(eq_quant_opts_set(&o, "method", "lsqq", &e), &e, "unknown method 'lsqq'"));
    ck_assert(s_err_contains(eq_quant_opts_set(&o, "grad_type", "ste", &e), &e,
                             "not one of: none, STE, Triangle, STE-scale"));
    ck_assert(s_err_contains(eq_quant_opts_set(&o, "gamma", "maybe", &e), &e, "gamma"));
    ck_assert(s_err_contains(eq_quant_opts_set(&o, "quant_group", "1.5", &e), &e, "not an integer"));
    ck_assert(s_err_contains(eq_quant_opts_set(&o, "stable", "-1", &e), &e, "stable"));
    ck_assert(s_err_contains(eq_quant_opts_set(&o, "norm_eps", "-1", &e), &e, "negative"));
    ck_assert_int_eq(memcmp(&o, &before, sizeof o), 0); /* unchanged on error */
    eq_quant_tag t;
    ck_assert_int_eq(eq_quant_tag_parse("ot", &t), 0);
    ck_assert_int_eq(t, EQ_QTAG_OT);
    ck_assert_int_eq(eq_quant_tag_parse("xx", &t), -1);
    int nm = 0;
    for (const char *const *m = eq_quant_method_names(); *m; m++) nm++;
    ck_assert_int_eq(nm, 8);
}
END_TEST

START_TEST(test_construction_errors)
{
    const int64_t A[4] = {2, 6, 3, 3}, W[4] = {4, 3, 3, 3};
    eq_tensor_desc da, dw;
    eq_err e = {0};
    eq_tensor_desc_init(&da, EQ_DT_F32, EQ_LAYOUT_NCHW, 4, A, &e);
    eq_tensor_desc_init(&dw, EQ_DT_F32, EQ_LAYOUT_OIHW, 4, W, &e);
    eq_quant_opts o;
    /* pact is an activation method */
    eq_quant_opts_init(&o, EQ_QTAG_WT);
    eq_quant_opts_set(&o, "method", "pact", &e);
    eq_quant_opts_set(&o, "bit", "2", &e);
    ck_assert_ptr_null(eq_quant_new(&o, &dw, &e));
    ck_assert_ptr_nonnull(strstr(e.msg, "does not support tag wt"));
    /* lsq fm with 2 groups of 6 channels does not broadcast */
    eq_quant_opts_init(&o, EQ_QTAG_FM);
    eq_quant_opts_set(&o, "method", "lsq", &e);
    eq_quant_opts_set(&o, "bit", "2", &e);
    eq_quant_opts_set(&o, "quant_group", "2", &e);
    ck_assert_ptr_null(eq_quant_new(&o, &da, &e));
    ck_assert_ptr_nonnull(strstr(e.msg, "quant_group"));
    /* a non-dividing group count silently falls back (as the original) */
    eq_quant_opts_set(&o, "quant_group", "5", &e);
    eq_quant *q = eq_quant_new(&o, &da, &e);
    ck_assert_ptr_nonnull(q);
    ck_assert_int_eq(eq_quant_groups(q), 1);
    eq_quant_destroy(&q);
    ck_assert_ptr_null(q);
    eq_quant_destroy(&q); /* NULL-safe */
    /* var-mean is a weight option of the dorefa family / xnor */
    eq_quant_opts_init(&o, EQ_QTAG_FM);
    eq_quant_opts_set(&o, "bit", "2", &e);
    eq_quant_opts_set(&o, "adaptive", "var-mean", &e);
    ck_assert_ptr_null(eq_quant_new(&o, &da, &e));
    ck_assert_ptr_nonnull(strstr(e.msg, "adaptive"));
    /* nonuniform weights are ternary only */
    eq_quant_opts_init(&o, EQ_QTAG_WT);
    eq_quant_opts_set(&o, "method", "nonuniform", &e);
    eq_quant_opts_set(&o, "bit", "2", &e);
    ck_assert_ptr_null(eq_quant_new(&o, &dw, &e));
    ck_assert_ptr_nonnull(strstr(e.msg, "ternary"));
    /* gamma is meaningless on fm in the dorefa family */
    eq_quant_opts_init(&o, EQ_QTAG_FM);
    eq_quant_opts_set(&o, "bit", "2", &e);
    eq_quant_opts_set(&o, "gamma", "true", &e);
    ck_assert_ptr_null(eq_quant_new(&o, &da, &e));
    ck_assert_ptr_nonnull(strstr(e.msg, "gamma"));
    /* 32 bits would mean 2^32 levels */
    eq_quant_opts_init(&o, EQ_QTAG_FM);
    ck_assert_ptr_null(eq_quant_new(&o, &da, &e));
    ck_assert_ptr_nonnull(strstr(e.msg, "2^24"));
    /* wrong layout for the tag */
    eq_quant_opts_init(&o, EQ_QTAG_WT);
    eq_quant_opts_set(&o, "bit", "2", &e);
    ck_assert_ptr_null(eq_quant_new(&o, &da, &e));
    ck_assert_ptr_nonnull(strstr(e.msg, "not supported"));
    /* forward with a different channel count */
    eq_quant_opts_init(&o, EQ_QTAG_FM);
    eq_quant_opts_set(&o, "bit", "2", &e);
    q = eq_quant_new(&o, &da, &e);
    ck_assert_ptr_nonnull(q);
    const int64_t A2[4] = {2, 5, 3, 3};
    eq_tensor_desc d2;
    eq_tensor_desc_init(&d2, EQ_DT_F32, EQ_LAYOUT_NCHW, 4, A2, &e);
    float x[90] = {0}, y[90];
    ck_assert_int_eq(eq_quant_forward(q, &d2, x, y, 1, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "channels"));
    ck_assert_int_eq(eq_quant_backward(q, x, x, y, &e), EQ_ERR_INVALID); /* no forward yet */
    eq_quant_destroy(&q);
}
END_TEST

/* ---- hand-checked values (ties round half to even) ------------------------ */

START_TEST(test_dorefa_values)
{
    const int64_t S[2] = {1, 8};
    const char *kv[] = {"method=dorefa", "bit=2", NULL};
    eq_quant *q = s_make(EQ_QTAG_FM, EQ_LAYOUT_NC, 2, S, kv);
    float x[8] = {-0.5f, 0.0f, 0.1f, 0.5f, 1.0f / 6.0f + 1e-6f, 0.9f, 1.0f, 3.0f};
    float y[8], g[8] = {1, 1, 1, 1, 1, 1, 1, 1}, gx[8];
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x, y, 1);
    const float want[8] = {0, 0, 0, 2.0f / 3.0f, 1.0f / 3.0f, 1, 1, 1};
    for (int i = 0; i < 8; i++) ck_assert_msg(fabsf(y[i] - want[i]) < 1e-6f, "i=%d y=%g", i, y[i]);
    s_bwd(q, x, g, gx);
    const float gw[8] = {0, 1, 1, 1, 1, 1, 1, 0}; /* 1[0 <= x <= c], inclusive */
    for (int i = 0; i < 8; i++) ck_assert_float_eq(gx[i], gw[i]);
    eq_quant_destroy(&q);

    /* weights: w = 0 -> u = 0.5: +1/3 at 2 bits, -1 at 1 bit */
    const int64_t W[4] = {1, 1, 1, 3};
    float w[3] = {0.0f, 2.0f, -2.0f}, yw[3];
    const char *kw2[] = {"method=dorefa", "bit=2", NULL};
    q = s_make(EQ_QTAG_WT, EQ_LAYOUT_OIHW, 4, W, kw2);
    s_fwd(q, EQ_LAYOUT_OIHW, 4, W, w, yw, 1);
    ck_assert(fabsf(yw[0] - 1.0f / 3.0f) < 1e-6f && yw[1] == 1.0f && yw[2] == -1.0f);
    eq_quant_destroy(&q);
    const char *kw1[] = {"method=dorefa", "bit=1", NULL};
    q = s_make(EQ_QTAG_WT, EQ_LAYOUT_OIHW, 4, W, kw1);
    s_fwd(q, EQ_LAYOUT_OIHW, 4, W, w, yw, 1);
    ck_assert(yw[0] == -1.0f && yw[1] == 1.0f && yw[2] == -1.0f);
    eq_quant_destroy(&q);
    const char *kw3[] = {"method=dorefa", "level=3", NULL};
    q = s_make(EQ_QTAG_WT, EQ_LAYOUT_OIHW, 4, W, kw3);
    s_fwd(q, EQ_LAYOUT_OIHW, 4, W, w, yw, 1);
    ck_assert(yw[0] == 0.0f && yw[1] == 1.0f && yw[2] == -1.0f);
    eq_quant_destroy(&q);
}
END_TEST

START_TEST(test_lsq_pact_bin_xnor_values)
{
    const int64_t S[2] = {1, 5};
    /* full-range 2-bit LSQ: levels {-c, -c/3, c/3, c}, 0 -> +c/3 */
    const char *kv[] = {"method=lsq", "bit=2", "half_range=false", "boundary=1.5", NULL};
    eq_quant *q = s_make(EQ_QTAG_FM, EQ_LAYOUT_NC, 2, S, kv);
    float x[5] = {0.0f, -3.0f, 3.0f, 0.4f, -0.6f}, y[5], g[5] = {1, 1, 1, 1, 1}, gx[5];
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x, y, 1);
    const float want[5] = {0.5f, -1.5f, 1.5f, 0.5f, -0.5f};
    for (int i = 0; i < 5; i++) ck_assert_msg(fabsf(y[i] - want[i]) < 1e-6f, "i=%d y=%g", i, y[i]);
    s_bwd(q, x, g, gx);
    /* dy/dc: (2q-1) - r inside, -1 below, +1 above */
    double dc = (1.0 / 3 - 0) + (-1) + 1 + (1.0 / 3 - 0.4 / 1.5) + (-1.0 / 3 + 0.6 / 1.5);
    ck_assert_msg(fabs(eq_quant_find(q, "clip_val")->grad[0] - dc) < 1e-5, "%g vs %g",
                  eq_quant_find(q, "clip_val")->grad[0], dc);
    ck_assert(gx[0] == 1 && gx[1] == 0 && gx[2] == 0 && gx[3] == 1 && gx[4] == 1);
    eq_quant_destroy(&q);

    /* PACT: x gradient for 0 <= x < alpha, alpha gradient for max(x,0) >= alpha */
    const char *kp[] = {"method=pact", "bit=2", "boundary=1.0", NULL};
    q = s_make(EQ_QTAG_FM, EQ_LAYOUT_NC, 2, S, kp);
    float xp[5] = {0.0f, -1.0f, 1.0f, 2.0f, 0.5f}, gp[5] = {1, 2, 4, 8, 16};
    s_fwd(q, EQ_LAYOUT_NC, 2, S, xp, y, 1);
    ck_assert(y[0] == 0 && y[1] == 0 && y[2] == 1 && y[3] == 1 && fabsf(y[4] - 2.0f / 3) < 1e-6f);
    s_bwd(q, xp, gp, gx);
    ck_assert(gx[0] == 1 && gx[1] == 0 && gx[2] == 0 && gx[3] == 0 && gx[4] == 16);
    ck_assert_float_eq(eq_quant_find(q, "clip_val")->grad[0], 12.0f);
    eq_quant_destroy(&q);

    /* bin: E = mean|w|, sgn(0) = +1, identity gradient */
    const int64_t W[4] = {1, 1, 1, 4};
    float w[4] = {0.0f, -1.0f, 2.0f, -3.0f}, yw[4], gw[4] = {1, 2, 3, 4}, gxw[4];
    const char *kb[] = {"method=bin", "bit=1", NULL};
    q = s_make(EQ_QTAG_WT, EQ_LAYOUT_OIHW, 4, W, kb);
    s_fwd(q, EQ_LAYOUT_OIHW, 4, W, w, yw, 1);
    ck_assert(yw[0] == 1.5f && yw[1] == -1.5f && yw[2] == 1.5f && yw[3] == -1.5f);
    s_bwd(q, w, gw, gxw);
    for (int i = 0; i < 4; i++) ck_assert_float_eq(gxw[i], gw[i]);
    eq_quant_destroy(&q);

    /* xnor fm: sgn(0) = +1, Triangle gradient (2 - 2|x|) 1[|x| < 1] */
    const char *kx[] = {"method=xnor", "bit=1", "grad_type=Triangle", NULL};
    q = s_make(EQ_QTAG_FM, EQ_LAYOUT_NC, 2, S, kx);
    float xx[5] = {0.0f, -0.5f, 1.0f, -1.0f, 0.25f};
    s_fwd(q, EQ_LAYOUT_NC, 2, S, xx, y, 1);
    ck_assert(y[0] == 1 && y[1] == -1 && y[2] == 1 && y[3] == -1 && y[4] == 1);
    s_bwd(q, xx, g, gx);
    ck_assert(gx[0] == 2 && gx[1] == 1 && gx[2] == 0 && gx[3] == 0 && gx[4] == 1.5f);
    eq_quant_destroy(&q);
}
END_TEST

/* ---- properties --------------------------------------------------------------- */

static int s_distinct(const float *y, int64_t n, float *vals, int cap)
{
    int k = 0;
    for (int64_t i = 0; i < n; i++) {
        int seen = 0;
        for (int j = 0; j < k && !seen; j++) seen = vals[j] == y[i];
        if (!seen) {
            if (k == cap) return cap + 1;
            vals[k++] = y[i];
        }
    }
    return k;
}

START_TEST(test_level_count_range_idempotence)
{
    const int64_t S[4] = {8, 4, 6, 6};
    const int64_t n = 8 * 4 * 6 * 6;
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float)), *y2 = malloc(n * sizeof(float));
    s_fill(x, n, 1.5f, 0.2f);
    struct {
        const char *kv[6];
        int levels;
        float lo, hi;
        int idem;
    } cases[] = {
        {{"method=dorefa", "bit=3", NULL}, 8, 0, 1, 1},
        {{"method=dorefa", "bit=2", "boundary=2", NULL}, 4, 0, 2, 1},
        {{"method=pact", "bit=2", "boundary=1.5", NULL}, 4, 0, 1.5f, 1},
        {{"method=lsq", "bit=2", "boundary=1.2", NULL}, 4, 0, 1.2f, 1},
        {{"method=lsq", "bit=2", "half_range=false", "boundary=1.2", NULL}, 4, -1.2f, 1.2f, 1},
        {{"method=lsq", "level=3", "half_range=false", "boundary=0.7", NULL}, 3, -0.7f, 0.7f, 1},
        {{"method=lsq-step", "bit=2", "half_range=false", NULL}, 4, -100, 100, 1},
        {{"method=nonuniform", "bit=2", "scale=2", NULL}, 4, 0, 3, 0},
        {{"method=nonuniform", "level=3", "half_range=false", NULL}, 3, -1, 1, 0},
        {{"method=lqnet", "bit=2", NULL}, 4, 0, 2.1f, 0},
        {{"method=xnor", "bit=1", NULL}, 2, -1, 1, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        eq_quant *q = s_make(EQ_QTAG_FM, EQ_LAYOUT_NCHW, 4, S, cases[c].kv);
        s_fwd(q, EQ_LAYOUT_NCHW, 4, S, x, y, 1);
        float vals[300];
        int k = s_distinct(y, n, vals, 256);
        ck_assert_msg(k == cases[c].levels, "case %zu (%s): %d distinct values, want %d", c,
                      cases[c].kv[0], k, cases[c].levels);
        for (int64_t i = 0; i < n; i++)
            ck_assert_msg(y[i] >= cases[c].lo - 1e-6f && y[i] <= cases[c].hi + 1e-6f, "case %zu y=%g",
                          c, y[i]);
        if (cases[c].idem) {
            s_fwd(q, EQ_LAYOUT_NCHW, 4, S, y, y2, 1);
            for (int64_t i = 0; i < n; i++)
                ck_assert_msg(fabsf(y2[i] - y[i]) <= 1e-6f * fmaxf(1.0f, fabsf(y[i])),
                              "case %zu not idempotent at %lld: %g -> %g", c, (long long)i, y[i], y2[i]);
        }
        eq_quant_destroy(&q);
    }
    free(x);
    free(y);
    free(y2);
}
END_TEST

START_TEST(test_per_channel_independence)
{
    /* per-output-channel LSQ weights: channel 0's data and clip do not touch others */
    const int64_t W[4] = {4, 3, 3, 3};
    const int64_t n = 4 * 27;
    float x[108], y1[108], y2[108], g[108], gx1[108], gx2[108];
    s_fill(x, n, 1, 0);
    s_fill(g, n, 1, 0);
    const char *kv[] = {"method=lsq", "bit=2", NULL};
    eq_quant *q = s_make(EQ_QTAG_WT, EQ_LAYOUT_OIHW, 4, W, kv);
    ck_assert_int_eq(eq_quant_groups(q), 4);
    eq_quant_tensor *c = eq_quant_find(q, "clip_val");
    ck_assert(c && c->ndim == 4 && c->shape[0] == 4 && c->shape[1] == 1);
    s_fwd(q, EQ_LAYOUT_OIHW, 4, W, x, y1, 1);
    s_bwd(q, x, g, gx1);
    float g1[4];
    memcpy(g1, c->grad, sizeof g1);
    for (int i = 0; i < 27; i++) x[i] *= 3.0f;
    c->data[0] = 0.3f;
    s_fwd(q, EQ_LAYOUT_OIHW, 4, W, x, y2, 1);
    s_bwd(q, x, g, gx2);
    for (int64_t i = 27; i < n; i++) ck_assert(y1[i] == y2[i] && gx1[i] == gx2[i]);
    for (int k = 1; k < 4; k++) ck_assert_float_eq(c->grad[k], g1[k]);
    ck_assert(c->grad[0] != g1[0]);
    eq_quant_destroy(&q);
}
END_TEST

/* NCHW and NHWC give the same numbers after transposition. */
static void s_layout_case(const char *const *kv, int train)
{
    const int64_t B = 3, C = 6, H = 4, Wd = 5, n = B * C * H * Wd;
    const int64_t S1[4] = {B, C, H, Wd}, S2[4] = {B, H, Wd, C};
    float *x1 = malloc(n * sizeof(float)), *x2 = malloc(n * sizeof(float));
    float *g1 = malloc(n * sizeof(float)), *g2 = malloc(n * sizeof(float));
    float *y1 = malloc(n * sizeof(float)), *y2 = malloc(n * sizeof(float));
    float *gx1 = malloc(n * sizeof(float)), *gx2 = malloc(n * sizeof(float));
    s_fill(x1, n, 1.0f, 0.6f);
    s_fill(g1, n, 1.0f, 0.0f);
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < H * Wd; i++) {
                x2[(b * H * Wd + i) * C + c] = x1[(b * C + c) * H * Wd + i];
                g2[(b * H * Wd + i) * C + c] = g1[(b * C + c) * H * Wd + i];
            }
    eq_quant *q1 = s_make(EQ_QTAG_FM, EQ_LAYOUT_NCHW, 4, S1, kv);
    eq_quant *q2 = s_make(EQ_QTAG_FM, EQ_LAYOUT_NHWC, 4, S2, kv);
    /* distinct per-channel parameter values, to catch a channel mix-up */
    for (size_t t = 0; t < eq_quant_tensor_count(q1); t++) {
        eq_quant_tensor *a = eq_quant_tensor_at(q1, t), *b2 = eq_quant_tensor_at(q2, t);
        if (a->grad && a->numel > 1)
            for (int64_t i = 0; i < a->numel; i++) a->data[i] = b2->data[i] = a->data[i] * (1.0f + 0.1f * i);
    }
    s_fwd(q1, EQ_LAYOUT_NCHW, 4, S1, x1, y1, train);
    s_fwd(q2, EQ_LAYOUT_NHWC, 4, S2, x2, y2, train);
    s_bwd(q1, x1, g1, gx1);
    s_bwd(q2, x2, g2, gx2);
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < H * Wd; i++) {
                int64_t a = (b * C + c) * H * Wd + i, d = (b * H * Wd + i) * C + c;
                ck_assert_msg(y1[a] == y2[d], "%s: y differs at b%lld c%lld", kv[0], (long long)b, (long long)c);
                ck_assert_msg(gx1[a] == gx2[d], "%s: grad_x differs", kv[0]);
            }
    for (size_t t = 0; t < eq_quant_tensor_count(q1); t++) {
        eq_quant_tensor *a = eq_quant_tensor_at(q1, t), *b2 = eq_quant_tensor_at(q2, t);
        ck_assert_str_eq(a->name, b2->name);
        for (int64_t i = 0; i < a->numel; i++) {
            ck_assert_msg(fabsf(a->data[i] - b2->data[i]) <= 1e-5f * fmaxf(1, fabsf(a->data[i])),
                          "%s: state %s[%lld]", kv[0], a->name, (long long)i);
            if (a->grad)
                ck_assert_msg(fabsf(a->grad[i] - b2->grad[i]) <= 1e-4f * fmaxf(1, fabsf(a->grad[i])),
                              "%s: grad %s[%lld] %g vs %g", kv[0], a->name, (long long)i, a->grad[i],
                              b2->grad[i]);
        }
    }
    eq_quant_destroy(&q1);
    eq_quant_destroy(&q2);
    free(x1), free(x2), free(g1), free(g2), free(y1), free(y2), free(gx1), free(gx2);
}

START_TEST(test_nchw_equals_nhwc)
{
    const char *k1[] = {"method=lsq", "bit=2", "quant_group=6", NULL};
    const char *k2[] = {"method=lsq", "bit=3", "quant_group=-1", "half_range=false", "grad_type=STE-scale", NULL};
    const char *k3[] = {"method=nonuniform", "bit=2", "quant_group=3", "scale=2", NULL};
    const char *k4[] = {"method=lqnet", "bit=2", "quant_group=2", "adaptive=mean", NULL};
    const char *k5[] = {"method=xnor", "bit=1", "custom=resolution", "grad_type=STE", NULL};
    const char *k6[] = {"method=xnor", "bit=1", "custom=channel", NULL};
    const char *k7[] = {"method=lsq-step", "bit=2", "quant_group=6", NULL};
    const char *k8[] = {"method=pact", "bit=2", NULL};
    const char *k9[] = {"method=lqnet", "bit=2", "quant_group=6", NULL};
    s_layout_case(k1, 1);
    s_layout_case(k2, 1);
    s_layout_case(k3, 1);
    s_layout_case(k4, 1);
    s_layout_case(k5, 1);
    s_layout_case(k6, 1);
    s_layout_case(k7, 1);
    s_layout_case(k8, 1);
    s_layout_case(k9, 1);
}
END_TEST

/* ---- finite differences ------------------------------------------------------- */

/* L = sum G*y as a function of the state tensor `name`[k] (or of x[k] when
 * name is NULL), central differences vs the backward.  With 2^20 levels the
 * rounding is below float resolution of the FD, so the STE gradient is the
 * derivative of the function the FD sees. */
static double s_loss(eq_quant *q, eq_quant_tag tag, eq_layout lay, const int64_t *S, const float *x,
                     const float *g, float *y, int64_t n)
{
    (void)tag;
    s_fwd(q, lay, 4, S, x, y, 0);
    double l = 0;
    for (int64_t i = 0; i < n; i++) l += (double)g[i] * y[i];
    return l;
}

static void s_fd_check(eq_quant_tag tag, eq_layout lay, const int64_t *S, const char *const *kv,
                       const char *name, float xscale, float eps, double tol, double gscale,
                       float kink)
{
    int64_t n = S[0] * S[1] * S[2] * S[3];
    float *x = malloc(n * sizeof(float)), *g = malloc(n * sizeof(float));
    float *y = malloc(n * sizeof(float)), *gx = malloc(n * sizeof(float));
    s_fill(x, n, xscale, 0.1f);
    /* keep |x| away from the clip value, where y has a kink in it */
    for (int64_t i = 0; kink > 0 && i < n; i++)
        if (fabsf(fabsf(x[i]) - kink) < 0.05f) x[i] += x[i] < 0 ? -0.1f : 0.1f;
    s_fill(g, n, 1.0f, 0.0f);
    eq_quant *q = s_make(tag, lay, 4, S, kv);
    eq_quant_tensor *t = name ? eq_quant_find(q, name) : NULL;
    ck_assert(!name || t);
    s_fwd(q, lay, 4, S, x, y, 0);
    s_bwd(q, x, g, gx);
    int64_t m = t ? t->numel : 12;
    for (int64_t k = 0; k < m; k++) {
        int64_t idx = t ? k : (k * 7919) % n;
        float *p = t ? &t->data[idx] : &x[idx];
        double an = t ? t->grad[idx] / gscale : gx[idx];
        float v0 = *p;
        *p = v0 + eps;
        double lp = s_loss(q, tag, lay, S, x, g, y, n);
        *p = v0 - eps;
        double lm = s_loss(q, tag, lay, S, x, g, y, n);
        *p = v0;
        double fd = (lp - lm) / (2.0 * eps);
        ck_assert_msg(fabs(fd - an) <= tol * fmax(1.0, fabs(an)), "%s %s[%lld]: fd %g vs backward %g",
                      kv[0], name ? name : "x", (long long)idx, fd, an);
    }
    eq_quant_destroy(&q);
    free(x), free(g), free(y), free(gx);
}

START_TEST(test_fd_gradients)
{
    const int64_t A[4] = {2, 3, 4, 4}, W[4] = {4, 3, 3, 3};
    /* LSQ clip (half and full range, per layer and per channel) */
    const char *k1[] = {"method=lsq", "bit=20", "boundary=1.3", NULL};
    s_fd_check(EQ_QTAG_FM, EQ_LAYOUT_NCHW, A, k1, "clip_val", 1.0f, 1e-2f, 2e-3, 1, 1.3f);
    const char *k2[] = {"method=lsq", "bit=20", "half_range=false", "quant_group=3", "boundary=0.8", NULL};
    s_fd_check(EQ_QTAG_FM, EQ_LAYOUT_NHWC, (const int64_t[]){2, 4, 4, 3}, k2, "clip_val", 1.0f, 1e-2f, 2e-3, 1, 0.8f);
    const char *k3[] = {"method=lsq", "bit=20", NULL};
    s_fd_check(EQ_QTAG_WT, EQ_LAYOUT_OIHW, W, k3, "clip_val", 1.0f, 1e-2f, 2e-3, 1, 1.0f);
    /* gradient factor f = sqrt(fan)*scale: backward = f * true derivative */
    const char *k3b[] = {"method=lsq", "bit=20", "grad_scale=fan-scale", NULL};
    s_fd_check(EQ_QTAG_WT, EQ_LAYOUT_OIHW, W, k3b, "clip_val", 1.0f, 1e-2f, 2e-3, sqrt(27.0) * 0.5, 1.0f);
    /* PACT alpha */
    const char *k4[] = {"method=pact", "bit=20", "boundary=1.1", NULL};
    s_fd_check(EQ_QTAG_FM, EQ_LAYOUT_NCHW, A, k4, "clip_val", 1.0f, 1e-2f, 2e-3, 1, 1.1f);
    /* DoReFa weight: tanh and the differentiated global max (x gradient) */
    const char *k5[] = {"method=dorefa", "bit=20", NULL};
    s_fd_check(EQ_QTAG_WT, EQ_LAYOUT_OIHW, W, k5, NULL, 1.0f, 1e-2f, 5e-3, 1, 0);
    /* gamma (smooth at any bit width) */
    const char *k7[] = {"method=lsq", "bit=2", "gamma=true", NULL};
    s_fd_check(EQ_QTAG_WT, EQ_LAYOUT_OIHW, W, k7, "gamma", 1.0f, 1e-2f, 1e-3, 1, 0);
    const char *k8[] = {"method=xnor", "bit=1", "gamma=true", "quant_group=1", NULL};
    s_fd_check(EQ_QTAG_WT, EQ_LAYOUT_OIHW, W, k8, "gamma", 1.0f, 1e-2f, 1e-3, 1, 0);
    const char *k9[] = {"method=dorefa", "bit=2", "gamma=true", NULL};
    s_fd_check(EQ_QTAG_OT, EQ_LAYOUT_NCHW, A, k9, "gamma", 1.0f, 1e-2f, 1e-3, 1, 0);
}
END_TEST

/* ---- warm-up, counters, progressive levels ----------------------------------- */

START_TEST(test_warmup_stable)
{
    const int64_t S[2] = {1, 4};
    const char *kv[] = {"method=lsq", "bit=2", "stable=2", NULL};
    eq_quant *q = s_make(EQ_QTAG_FM, EQ_LAYOUT_NC, 2, S, kv);
    eq_quant_tensor *c = eq_quant_find(q, "clip_val");
    float x1[4] = {0.1f, -2.0f, 0.5f, 1.0f}, x2[4] = {0.2f, 0.3f, 4.0f, 0.0f}, y[4], g[4] = {1, 1, 1, 1}, gx[4];
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x1, y, 1); /* iteration 1 <= 2: y = x, clip = 2 */
    ck_assert(memcmp(x1, y, sizeof y) == 0);
    ck_assert_float_eq(c->data[0], 2.0f);
    s_bwd(q, x1, g, gx);
    ck_assert(memcmp(gx, g, sizeof g) == 0 && c->grad[0] == 0.0f);
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x2, y, 0); /* eval counts too: clip = (4 + 1*2)/2 */
    ck_assert(memcmp(x2, y, sizeof y) == 0);
    ck_assert_float_eq(c->data[0], 3.0f);
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x1, y, 1); /* iteration 3: quantized with c = 3 */
    ck_assert_float_eq(*eq_quant_find(q, "iteration")->data, 3.0f);
    ck_assert(y[0] == 0.0f && y[1] == 0.0f && y[2] == 0.0f && y[3] == 1.0f);
    eq_quant_destroy(&q);

    /* xnor has no warm-up and no counter (the intended behaviour) */
    const char *kx[] = {"method=xnor", "bit=1", "stable=5", NULL};
    q = s_make(EQ_QTAG_FM, EQ_LAYOUT_NC, 2, S, kx);
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x1, y, 1);
    ck_assert(y[0] == 1 && y[1] == -1);
    ck_assert_float_eq(*eq_quant_find(q, "iteration")->data, 0.0f);
    eq_quant_destroy(&q);

    /* LQ-Net: returns x for the first `stable` training steps, basis still updated */
    const char *kl[] = {"method=lqnet", "bit=2", "stable=1", NULL};
    q = s_make(EQ_QTAG_FM, EQ_LAYOUT_NC, 2, S, kl);
    float b0 = eq_quant_find(q, "basis")->data[0];
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x2, y, 1);
    ck_assert(memcmp(x2, y, sizeof y) == 0);
    ck_assert(eq_quant_find(q, "basis")->data[0] != b0);
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x2, y, 0); /* eval: counter stays at 1 <= 1 */
    ck_assert(memcmp(x2, y, sizeof y) == 0);
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x2, y, 1);
    ck_assert(memcmp(x2, y, sizeof y) != 0);
    ck_assert_float_eq(*eq_quant_find(q, "iteration")->data, 2.0f);
    eq_quant_destroy(&q);

    /* the original returns x when a fresh LQ-Net is evaluated (0 <= stable 0);
     * warmup_train_only makes evaluation always quantize */
    const char *kl0[] = {"method=lqnet", "bit=2", NULL};
    const char *kl1[] = {"method=lqnet", "bit=2", "warmup_train_only=true", NULL};
    q = s_make(EQ_QTAG_FM, EQ_LAYOUT_NC, 2, S, kl0);
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x2, y, 0);
    ck_assert(memcmp(x2, y, sizeof y) == 0);
    eq_quant_destroy(&q);
    q = s_make(EQ_QTAG_FM, EQ_LAYOUT_NC, 2, S, kl1);
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x2, y, 0);
    ck_assert(memcmp(x2, y, sizeof y) != 0);
    eq_quant_destroy(&q);
    /* dorefa family: with warmup_train_only an eval forward neither counts nor warms up */
    const char *kw[] = {"method=lsq", "bit=2", "stable=1", "warmup_train_only=true", NULL};
    q = s_make(EQ_QTAG_FM, EQ_LAYOUT_NC, 2, S, kw);
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x2, y, 0);
    ck_assert(memcmp(x2, y, sizeof y) != 0);
    ck_assert_float_eq(*eq_quant_find(q, "iteration")->data, 0.0f);
    ck_assert_float_eq(eq_quant_find(q, "clip_val")->data[0], 1.0f);
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x2, y, 1);
    ck_assert(memcmp(x2, y, sizeof y) == 0);
    eq_quant_destroy(&q);
}
END_TEST

START_TEST(test_lq_custom_update_and_closed_form)
{
    const int64_t S[2] = {2, 8};
    float x[16], y[16];
    s_fill(x, 16, 1.0f, 1.0f);
    /* custom_update: basis = cumulative mean of the per-batch solutions (auxil) */
    const char *kl[] = {"method=lqnet", "bit=2", "custom_update=true", NULL};
    eq_quant *q = s_make(EQ_QTAG_FM, EQ_LAYOUT_NC, 2, S, kl);
    eq_quant_tensor *b = eq_quant_find(q, "basis"), *a = eq_quant_find(q, "auxil");
    float sum0 = 0, sum1 = 0;
    for (int step = 0; step < 3; step++) {
        for (int i = 0; i < 16; i++) x[i] += 0.05f * (float)step;
        s_fwd(q, EQ_LAYOUT_NC, 2, S, x, y, 1);
        sum0 += a->data[0];
        sum1 += a->data[1];
        ck_assert(fabsf(b->data[0] - sum0 / (float)(step + 1)) < 1e-5f);
        ck_assert(fabsf(b->data[1] - sum1 / (float)(step + 1)) < 1e-5f);
    }
    eq_quant_destroy(&q);
    /* non-uniform closed form: one step, output = integer levels * basis; counter +2 */
    const char *kn[] = {"method=nonuniform", "bit=2", "closed_form=true", "scale=3", NULL};
    q = s_make(EQ_QTAG_FM, EQ_LAYOUT_NC, 2, S, kn);
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x, y, 1);
    float bs = eq_quant_find(q, "basis")->data[0];
    ck_assert(bs != 1.0f && bs > 0);
    for (int i = 0; i < 16; i++) {
        float lv = y[i] / bs;
        ck_assert(fabsf(lv - rintf(lv)) < 1e-4f && lv >= 0 && lv <= 3.0001f);
    }
    ck_assert_float_eq(*eq_quant_find(q, "iteration")->data, 2.0f);
    eq_quant_destroy(&q);
}
END_TEST

/* lq_codes=zero (the original under torch >= 1.5): the basis update sees
 * codec row 0 for every element, so a half-range fm solve has B = 0 and
 * auxil = 0 exactly; the default floor-division codes give a non-zero
 * solution.  y does not depend on it; other methods refuse the option. */
START_TEST(test_lq_codes_option)
{
    const int64_t S[2] = {2, 8};
    float x[16], y0[16], y1[16];
    s_fill(x, 16, 1.0f, 1.0f);
    const char *kf[] = {"method=lqnet", "bit=2", NULL};
    const char *kz[] = {"method=lqnet", "bit=2", "lq_codes=zero", NULL};
    eq_quant *qf = s_make(EQ_QTAG_FM, EQ_LAYOUT_NC, 2, S, kf);
    eq_quant *qz = s_make(EQ_QTAG_FM, EQ_LAYOUT_NC, 2, S, kz);
    s_fwd(qf, EQ_LAYOUT_NC, 2, S, x, y0, 1);
    s_fwd(qz, EQ_LAYOUT_NC, 2, S, x, y1, 1);
    ck_assert_int_eq(memcmp(y0, y1, sizeof y0), 0);
    const float *af = eq_quant_find(qf, "auxil")->data, *az = eq_quant_find(qz, "auxil")->data;
    ck_assert(af[0] != 0.0f || af[1] != 0.0f);
    ck_assert_float_eq(az[0], 0.0f);
    ck_assert_float_eq(az[1], 0.0f);
    /* basis = 0.9 old + 0.1 * 0 */
    ck_assert_float_eq(eq_quant_find(qz, "basis")->data[0], 0.9f * (0.6745f * 2.0f / 2.0f));
    eq_quant_destroy(&qf);
    eq_quant_destroy(&qz);
    eq_quant_opts o;
    eq_err e = {0};
    eq_quant_opts_init(&o, EQ_QTAG_FM);
    ck_assert(s_err_contains(eq_quant_opts_set(&o, "lq_codes", "true", &e), &e, "not one of: floor, zero"));
    ck_assert_int_eq(eq_quant_opts_set(&o, "lq_codes", "zero", &e), EQ_OK);
    eq_quant_opts_set(&o, "bit", "2", &e);
    eq_tensor_desc d;
    eq_tensor_desc_init(&d, EQ_DT_F32, EQ_LAYOUT_NC, 2, S, &e);
    ck_assert_ptr_null(eq_quant_new(&o, &d, &e));
    ck_assert_ptr_nonnull(strstr(e.msg, "lq_codes"));
}
END_TEST

START_TEST(test_progressive_levels)
{
    const int64_t S[2] = {1, 4};
    const char *kv[] = {"method=lsq", "bit=3", "boundary=2", "progressive=true", NULL};
    eq_quant *q = s_make(EQ_QTAG_FM, EQ_LAYOUT_NC, 2, S, kv);
    eq_err e = {0};
    ck_assert_int_eq(eq_quant_levels(q), 8);
    ck_assert_int_eq(eq_quant_set_levels(q, 4, &e), EQ_OK);
    ck_assert_int_eq(eq_quant_levels(q), 4);
    ck_assert(fabsf(eq_quant_find(q, "clip_val")->data[0] - 2.0f * 3.0f / 7.0f) < 1e-6f);
    ck_assert_int_eq(eq_quant_set_levels(q, -1, &e), EQ_OK); /* current - 1 */
    ck_assert_int_eq(eq_quant_levels(q), 3);
    ck_assert_int_eq(eq_quant_set_levels(q, -2, &e), EQ_ERR_INVALID);
    float x[4] = {0.1f, 0.3f, 0.35f, 3.0f}, y[4];
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x, y, 1); /* 3 levels {0, c/2, c} */
    float c = eq_quant_find(q, "clip_val")->data[0];
    ck_assert(y[0] == 0 && y[1] == c / 2 && y[2] == c / 2 && y[3] == c);
    eq_quant_destroy(&q);
    const char *kl[] = {"method=lqnet", "bit=2", NULL};
    q = s_make(EQ_QTAG_FM, EQ_LAYOUT_NC, 2, S, kl);
    ck_assert_int_eq(eq_quant_set_levels(q, 3, &e), EQ_ERR_UNSUPPORTED);
    ck_assert_int_eq(eq_quant_check_state(q, &e), EQ_OK);
    *eq_quant_find(q, "level_num")->data = 3.0f; /* as a stray checkpoint would */
    ck_assert_int_eq(eq_quant_check_state(q, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "built for 4 levels"));
    *eq_quant_find(q, "level_num")->data = 4.0f;
    eq_quant_find(q, "basis")->data[1] = NAN;
    ck_assert_int_eq(eq_quant_check_state(q, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "basis[1]"));
    eq_quant_destroy(&q);
}
END_TEST

START_TEST(test_quirk_options)
{
    /* grad factor 1.5: the original skips it (int(1.5) == 1); exact_grad_scale applies it */
    const int64_t S[2] = {1, 4};
    float x[4] = {0.1f, 0.7f, 2.0f, -0.3f}, y[4], g[4] = {1, 1, 1, 1}, gx[4];
    const char *k1[] = {"method=lsq", "bit=2", "grad_scale=fan-scale", "scale=0.75", NULL};
    const char *k2[] = {"method=lsq", "bit=2", "grad_scale=fan-scale", "scale=0.75", "exact_grad_scale=true", NULL};
    eq_quant *q1 = s_make(EQ_QTAG_FM, EQ_LAYOUT_NC, 2, S, k1); /* fan = C = 4 -> f = 1.5 */
    eq_quant *q2 = s_make(EQ_QTAG_FM, EQ_LAYOUT_NC, 2, S, k2);
    s_fwd(q1, EQ_LAYOUT_NC, 2, S, x, y, 1);
    s_bwd(q1, x, g, gx);
    s_fwd(q2, EQ_LAYOUT_NC, 2, S, x, y, 1);
    s_bwd(q2, x, g, gx);
    float a = eq_quant_find(q1, "clip_val")->grad[0], b = eq_quant_find(q2, "clip_val")->grad[0];
    ck_assert(a != 0 && fabsf(b - 1.5f * a) < 1e-6f);
    eq_quant_destroy(&q1);
    eq_quant_destroy(&q2);
    /* var-mean with eps 0 divides a constant group by zero; norm_eps avoids it */
    const int64_t W[4] = {1, 1, 1, 4};
    float w[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    const char *k3[] = {"method=lsq", "bit=2", "adaptive=var-mean", NULL};
    const char *k4[] = {"method=lsq", "bit=2", "adaptive=var-mean", "norm_eps=1e-5", NULL};
    q1 = s_make(EQ_QTAG_WT, EQ_LAYOUT_OIHW, 4, W, k3);
    s_fwd(q1, EQ_LAYOUT_OIHW, 4, W, w, y, 1);
    ck_assert(isnan(y[0]));
    eq_quant_destroy(&q1);
    q1 = s_make(EQ_QTAG_WT, EQ_LAYOUT_OIHW, 4, W, k4);
    s_fwd(q1, EQ_LAYOUT_OIHW, 4, W, w, y, 1);
    ck_assert(isfinite(y[0]));
    eq_quant_destroy(&q1);
}
END_TEST

/* eq_qtanh against tanh in double rounded to float: at most 2 ulp off, and
 * exact for at least 99 % of a sweep over [0, 10] (it is for 99.7 % of all
 * floats there); odd, NaN/inf/-0/subnormals handled. */
static int64_t s_ulp_key(float f)
{
    int32_t i;
    memcpy(&i, &f, sizeof i);
    return i < 0 ? -(int64_t)(i & 0x7fffffff) : (int64_t)i;
}

START_TEST(test_qtanh)
{
    int64_t n = 0, exact = 0, worst = 0;
    for (uint32_t u = 0; u < 0x41200000u; u += 997) {
        float x;
        memcpy(&x, &u, sizeof x);
        float want = (float)tanh((double)x), got = eq_qtanh(x);
        int64_t d = llabs(s_ulp_key(got) - s_ulp_key(want));
        /* (no ck_assert per value: each one is a message to the parent) */
        if (d > worst || eq_qtanh(-x) != -got) {
            ck_assert_msg(d <= 2, "eq_qtanh(%.9g) = %.9g, tanh %.9g", x, got, want);
            ck_assert_msg(eq_qtanh(-x) == -got, "eq_qtanh(-%.9g) is not -eq_qtanh", x);
            worst = d;
        }
        exact += d == 0;
        n++;
    }
    ck_assert_msg(exact >= n - n / 100, "%lld of %lld exact", (long long)exact, (long long)n);
    ck_assert(isnan(eq_qtanh(NAN)));
    ck_assert_msg(eq_qtanh(INFINITY) == 1.0f && eq_qtanh(-INFINITY) == -1.0f, "eq_qtanh(+-inf) = %g, %g", eq_qtanh(INFINITY), eq_qtanh(-INFINITY));
    ck_assert(eq_qtanh(20.0f) == 1.0f && eq_qtanh(-9.5f) == -1.0f);
    ck_assert(eq_qtanh(-0.0f) == 0.0f && signbit(eq_qtanh(-0.0f)));
    ck_assert(eq_qtanh(1e-40f) == 1e-40f);
}
END_TEST

/* DoReFa weights route dL/dm to every arg-max of |tanh w|: two of them,
 * of opposite signs, in different chunks of the parallel loops; in-place
 * backward (gx == gy) gives the same bits. */
START_TEST(test_dorefa_wt_argmax)
{
    const int64_t W[4] = {64, 64, 3, 3};
    const int64_t n = 64 * 64 * 9;
    float *w = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    float *g = malloc(n * sizeof(float)), *gx = malloc(n * sizeof(float)), *gi = malloc(n * sizeof(float));
    s_fill(w, n, 0.1f, 0.0f);
    for (int64_t i = 0; i < n; i++) w[i] = fmaxf(fminf(w[i], 0.5f), -0.5f);
    w[100] = 0.75f;
    w[n - 7] = -0.75f; /* the last chunk */
    s_fill(g, n, 1.0f, 0.0f);
    const char *kv[] = {"method=dorefa", "bit=2", NULL};
    eq_quant *q = s_make(EQ_QTAG_WT, EQ_LAYOUT_OIHW, 4, W, kv);
    s_fwd(q, EQ_LAYOUT_OIHW, 4, W, w, y, 1);
    s_bwd(q, w, g, gx);
    double m = tanh(0.75), dot = 0;
    for (int64_t i = 0; i < n; i++) dot += (double)g[i] * tanh((double)w[i]);
    double dm = -dot / (m * m);
    for (int64_t i = 0; i < n; i++) {
        double t = tanh((double)w[i]), want = g[i] / m * (1 - t * t);
        if (i == 100 || i == n - 7) want += dm * (t > 0 ? 1 : -1) * (1 - t * t);
        ck_assert_msg(fabs(gx[i] - want) <= 1e-5 * fabs(want) + 1e-6, "gx[%lld] = %.9g, want %.9g", (long long)i,
                      gx[i], want);
    }
    ck_assert(y[100] == 1.0f && y[n - 7] == -1.0f);
    memcpy(gi, g, n * sizeof(float));
    s_bwd(q, w, gi, gi);
    ck_assert(memcmp(gi, gx, n * sizeof(float)) == 0);
    eq_quant_destroy(&q);
    free(w), free(y), free(g), free(gx), free(gi);
}
END_TEST

/* In-place backward (gx == gy, as the trainer's activations do) gives the
 * bits of a separate gx, for the methods whose loops keep per-position
 * state (NHWC per channel) or scale the gradient first (closed form). */
START_TEST(test_backward_in_place)
{
    const int64_t A[4] = {2, 8, 8, 64};
    const int64_t n = 2 * 8 * 8 * 64;
    const char *c1[] = {"method=nonuniform", "bit=2", "scale=3", "quant_group=64", NULL};
    const char *c2[] = {"method=nonuniform", "level=3", "half_range=false", "quant_group=64", NULL};
    const char *c3[] = {"method=nonuniform", "bit=2", "closed_form=true", "scale=3", NULL};
    const char *c4[] = {"method=lsq", "bit=2", "quant_group=64", NULL};
    const char *const *cs[] = {c1, c2, c3, c4};
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    float *g = malloc(n * sizeof(float)), *gx = malloc(n * sizeof(float)), *gi = malloc(n * sizeof(float));
    s_fill(x, n, 0.6f, 0.3f);
    s_fill(g, n, 1.0f, 0.0f);
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        eq_quant *q = s_make(EQ_QTAG_FM, EQ_LAYOUT_NHWC, 4, A, cs[c]);
        s_fwd(q, EQ_LAYOUT_NHWC, 4, A, x, y, 1);
        s_bwd(q, x, g, gx);
        memcpy(gi, g, n * sizeof(float));
        s_bwd(q, x, gi, gi);
        ck_assert_msg(memcmp(gi, gx, n * sizeof(float)) == 0, "%s %s: in-place grad_x differs", cs[c][0], cs[c][1]);
        eq_quant_destroy(&q);
    }
    free(x), free(y), free(g), free(gx), free(gi);
}
END_TEST

/* eq_quant_zero_pad_exact: which quantizers may quantize unpadded and pad
 * after, and that doing so gives the padded quantization's values and
 * clip gradient (half-range lsq, one group and per channel). */
START_TEST(test_zero_pad_exact)
{
    const int64_t C = 8, H = 5, W = 6, P[4] = {2, H + 2, W + 2, C}, U[4] = {2, H, W, C};
    const int64_t np = 2 * (H + 2) * (W + 2) * C, nu = 2 * H * W * C;
    const char *lsq[] = {"method=lsq", "bit=2", NULL};
    const char *lsq_c[] = {"method=lsq", "bit=2", "quant_group=8", NULL};
    const char *full[] = {"method=lsq", "bit=2", "half_range=false", NULL};
    const char *ste[] = {"method=lsq", "bit=2", "grad_type=STE-scale", NULL};
    const char *dorefa[] = {"method=dorefa", "bit=2", NULL};
    const char *pact[] = {"method=pact", "bit=2", NULL};
    const char *step[] = {"method=lsq-step", "bit=2", NULL};
    ck_assert(!eq_quant_zero_pad_exact(NULL));
    const char *const *no[] = {full, ste, dorefa, pact, step};
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        eq_quant *q = s_make(EQ_QTAG_FM, EQ_LAYOUT_NHWC, 4, U, no[i]);
        ck_assert_msg(!eq_quant_zero_pad_exact(q), "%s %s", no[i][0], no[i][2] ? no[i][2] : "");
        eq_quant_destroy(&q);
    }
    const int64_t WS[4] = {4, C, 3, 3};
    eq_quant *w = s_make(EQ_QTAG_WT, EQ_LAYOUT_OIHW, 4, WS, lsq);
    ck_assert(!eq_quant_zero_pad_exact(w)); /* full range: 0 -> c/3 */
    eq_quant_destroy(&w);
    float *xu = malloc(nu * 4), *xp = calloc(np, 4), *yu = malloc(nu * 4), *yp = malloc(np * 4);
    float *gu = malloc(nu * 4), *gp = malloc(np * 4), *gxu = malloc(nu * 4), *gxp = malloc(np * 4);
    s_fill(xu, nu, 0.8f, 0.4f);
    s_fill(gp, np, 1.0f, 0.0f); /* the padded border gets gradients too, as from a conv */
    for (int64_t n = 0; n < 2; n++)
        for (int64_t h = 0; h < H; h++) {
            memcpy(&xp[((n * (H + 2) + h + 1) * (W + 2) + 1) * C], &xu[((n * H + h) * W) * C], (size_t)(W * C) * 4);
            memcpy(&gu[((n * H + h) * W) * C], &gp[((n * (H + 2) + h + 1) * (W + 2) + 1) * C], (size_t)(W * C) * 4);
        }
    const char *const *yes[] = {lsq, lsq_c};
    for (size_t i = 0; i < 2; i++) {
        eq_quant *a = s_make(EQ_QTAG_FM, EQ_LAYOUT_NHWC, 4, U, yes[i]);
        eq_quant *b = s_make(EQ_QTAG_FM, EQ_LAYOUT_NHWC, 4, P, yes[i]);
        ck_assert(eq_quant_zero_pad_exact(a));
        s_fwd(a, EQ_LAYOUT_NHWC, 4, U, xu, yu, 1);
        s_fwd(b, EQ_LAYOUT_NHWC, 4, P, xp, yp, 1);
        s_bwd(a, xu, gu, gxu);
        s_bwd(b, xp, gp, gxp);
        for (int64_t n = 0; n < 2; n++)
            for (int64_t h = 0; h < H + 2; h++)
                for (int64_t x = 0; x < W + 2; x++)
                    for (int64_t c = 0; c < C; c++) {
                        int64_t pi = ((n * (H + 2) + h) * (W + 2) + x) * C + c;
                        int in = h >= 1 && h <= H && x >= 1 && x <= W;
                        int64_t ui = in ? ((n * H + h - 1) * W + x - 1) * C + c : 0;
                        ck_assert_msg(in ? yp[pi] == yu[ui] : yp[pi] == 0.0f, "%s: y at %lld", yes[i][2] ? "per channel" : "one group", (long long)pi);
                        if (in) ck_assert(gxp[pi] == gxu[ui]);
                    }
        eq_quant_tensor *ca = eq_quant_find(a, "clip_val"), *cb = eq_quant_find(b, "clip_val");
        for (int64_t k = 0; k < ca->numel; k++)
            ck_assert_msg(fabsf(ca->grad[k] - cb->grad[k]) <= 1e-6f * fabsf(cb->grad[k]), "clip grad %lld: %g vs %g",
                          (long long)k, ca->grad[k], cb->grad[k]);
        ca->data[ca->numel - 1] = 0.0f; /* c = 0: 0/0 is NaN, not 0 */
        ck_assert(!eq_quant_zero_pad_exact(a));
        eq_quant_destroy(&a);
        eq_quant_destroy(&b);
    }
    eq_quant *q = s_make(EQ_QTAG_FM, EQ_LAYOUT_NHWC, 4, U, lsq);
    eq_err err = {0};
    ck_assert_int_eq(eq_quant_set_option(q, "quant_loss_enable", "true", &err), EQ_OK);
    ck_assert_int_eq(eq_quant_set_option(q, "quant_loss_function", "L2", &err), EQ_OK);
    ck_assert(!eq_quant_zero_pad_exact(q)); /* a mean over the elements */
    eq_quant_destroy(&q);
    free(xu), free(xp), free(yu), free(yp), free(gu), free(gp), free(gxu), free(gxp);
}
END_TEST

/* A thread pool gives bit-identical results (fixed chunking). */
static void s_thread_case(eq_quant_tag tag, eq_layout lay, const int64_t *S, const char *const *kv,
                          eq_pool *pool)
{
    int64_t n = S[0] * S[1] * S[2] * S[3];
    float *x = malloc(n * sizeof(float)), *g = malloc(n * sizeof(float));
    float *y1 = malloc(n * sizeof(float)), *y2 = malloc(n * sizeof(float));
    float *g1 = malloc(n * sizeof(float)), *g2 = malloc(n * sizeof(float));
    s_fill(x, n, 1.0f, 0.2f);
    s_fill(g, n, 1.0f, 0.0f);
    eq_quant *a = s_make(tag, lay, 4, S, kv), *b = s_make(tag, lay, 4, S, kv);
    eq_quant_set_pool(b, pool);
    s_fwd(a, lay, 4, S, x, y1, 1);
    s_fwd(b, lay, 4, S, x, y2, 1);
    s_bwd(a, x, g, g1);
    s_bwd(b, x, g, g2);
    ck_assert_msg(memcmp(y1, y2, n * sizeof(float)) == 0, "%s: y differs with threads", kv[0]);
    ck_assert_msg(memcmp(g1, g2, n * sizeof(float)) == 0, "%s: grad_x differs with threads", kv[0]);
    for (size_t t = 0; t < eq_quant_tensor_count(a); t++) {
        eq_quant_tensor *ta = eq_quant_tensor_at(a, t), *tb = eq_quant_tensor_at(b, t);
        ck_assert(memcmp(ta->data, tb->data, ta->numel * sizeof(float)) == 0);
        if (ta->grad) ck_assert_msg(memcmp(ta->grad, tb->grad, ta->numel * sizeof(float)) == 0, "%s: %s grad", kv[0], ta->name);
    }
    eq_quant_destroy(&a);
    eq_quant_destroy(&b);
    free(x), free(g), free(y1), free(y2), free(g1), free(g2);
}

START_TEST(test_threads_match)
{
    eq_err e = {0};
    eq_pool *pool = eq_pool_new(3, &e);
    ck_assert_ptr_nonnull(pool);
    const int64_t A[4] = {8, 16, 16, 64}, W[4] = {64, 64, 3, 3};
    const char *f1[] = {"method=dorefa", "bit=2", NULL};
    const char *f2[] = {"method=pact", "bit=3", NULL};
    const char *f3[] = {"method=lsq", "bit=2", "quant_group=64", "grad_type=STE-scale", "boundary=0.3", NULL};
    const char *f4[] = {"method=lsq-step", "bit=2", NULL};
    const char *f5[] = {"method=xnor", "bit=1", "grad_type=Triangle", NULL};
    const char *w1[] = {"method=dorefa", "bit=2", "gamma=true", NULL};
    const char *w2[] = {"method=lsq", "bit=2", "adaptive=var-mean", NULL};
    const char *w3[] = {"method=bin", "bit=1", NULL};
    const char *w4[] = {"method=xnor", "bit=1", "grad_type=STE", NULL};
    const char *w5[] = {"method=lsq-step", "bit=3", NULL};
    const char *w6[] = {"method=lsq", "bit=2", "quant_group=1", NULL};
    const char *w7[] = {"method=dorefa", "bit=2", NULL};
    const char *w8[] = {"method=nonuniform", "level=3", NULL};
    const char *w9[] = {"method=nonuniform", "level=3", "quant_group=1", "grad_type=STE-scale", NULL};
    const char *f6[] = {"method=nonuniform", "bit=2", "scale=3", NULL};
    const char *f7[] = {"method=nonuniform", "bit=2", "scale=3", "quant_group=64", "grad_type=STE-scale", NULL};
    const char *f8[] = {"method=nonuniform", "bit=2", "closed_form=true", NULL};
    s_thread_case(EQ_QTAG_FM, EQ_LAYOUT_NHWC, A, f1, pool);
    s_thread_case(EQ_QTAG_FM, EQ_LAYOUT_NHWC, A, f2, pool);
    s_thread_case(EQ_QTAG_FM, EQ_LAYOUT_NHWC, A, f3, pool);
    s_thread_case(EQ_QTAG_FM, EQ_LAYOUT_NCHW, (const int64_t[]){8, 64, 16, 16}, f3, pool);
    s_thread_case(EQ_QTAG_FM, EQ_LAYOUT_NHWC, A, f4, pool);
    s_thread_case(EQ_QTAG_FM, EQ_LAYOUT_NHWC, A, f5, pool);
    s_thread_case(EQ_QTAG_WT, EQ_LAYOUT_OIHW, W, w1, pool);
    s_thread_case(EQ_QTAG_WT, EQ_LAYOUT_OIHW, W, w2, pool);
    s_thread_case(EQ_QTAG_WT, EQ_LAYOUT_OIHW, W, w3, pool);
    s_thread_case(EQ_QTAG_WT, EQ_LAYOUT_OIHW, W, w4, pool);
    s_thread_case(EQ_QTAG_WT, EQ_LAYOUT_OIHW, W, w5, pool);
    s_thread_case(EQ_QTAG_WT, EQ_LAYOUT_OIHW, W, w6, pool);
    s_thread_case(EQ_QTAG_WT, EQ_LAYOUT_OIHW, W, w7, pool);
    s_thread_case(EQ_QTAG_WT, EQ_LAYOUT_OIHW, W, w8, pool);
    s_thread_case(EQ_QTAG_WT, EQ_LAYOUT_OIHW, W, w9, pool);
    s_thread_case(EQ_QTAG_FM, EQ_LAYOUT_NHWC, A, f6, pool);
    s_thread_case(EQ_QTAG_FM, EQ_LAYOUT_NHWC, A, f7, pool);
    s_thread_case(EQ_QTAG_FM, EQ_LAYOUT_NCHW, (const int64_t[]){8, 64, 16, 16}, f7, pool);
    s_thread_case(EQ_QTAG_FM, EQ_LAYOUT_NHWC, A, f8, pool);
    const char *l1[] = {"method=lqnet", "bit=2", NULL};
    const char *l2[] = {"method=lqnet", "bit=3", "adaptive=var", "quant_group=64", NULL};
    const char *l3[] = {"method=lqnet", "bit=2", "adaptive=mean-var", "custom_update=true", NULL};
    const char *l4[] = {"method=lqnet", "bit=2", "quant_group=1", NULL};
    s_thread_case(EQ_QTAG_FM, EQ_LAYOUT_NHWC, A, l1, pool);
    s_thread_case(EQ_QTAG_FM, EQ_LAYOUT_NCHW, (const int64_t[]){8, 64, 16, 16}, l2, pool);
    s_thread_case(EQ_QTAG_FM, EQ_LAYOUT_NHWC, A, l2, pool);
    s_thread_case(EQ_QTAG_WT, EQ_LAYOUT_OIHW, W, l1, pool);
    s_thread_case(EQ_QTAG_WT, EQ_LAYOUT_OIHW, W, l3, pool);
    s_thread_case(EQ_QTAG_WT, EQ_LAYOUT_OIHW, W, l4, pool);
    eq_pool_destroy(&pool);
}
END_TEST

/* ---- run-time (policy) options ----------------------------------------------- */

START_TEST(test_runtime_options)
{
    const int64_t S[2] = {1, 4};
    const char *kv[] = {"method=lsq", "bit=2", NULL};
    eq_quant *q = s_make(EQ_QTAG_FM, EQ_LAYOUT_NC, 2, S, kv);
    eq_err err = {0};
    eq_status st;
    /* bad key / value: error names both, quantizer unchanged */
    st = eq_quant_set_option(q, "enabel", "False", &err);
    ck_assert_msg(s_err_contains(st, &err, "'enabel'") && strstr(err.msg, "False"), "%s", err.msg);
    st = eq_quant_set_option(q, "enable", "maybe", &err);
    ck_assert_msg(s_err_contains(st, &err, "enable") && strstr(err.msg, "'maybe'"), "%s", err.msg);
    ck_assert(eq_quant_enabled(q));
    st = eq_quant_set_option(q, "stable", "-3", &err);
    ck_assert_msg(s_err_contains(st, &err, "stable") && strstr(err.msg, "-3"), "%s", err.msg);
    st = eq_quant_set_option(q, "stable", "2.5", &err);
    ck_assert_msg(s_err_contains(st, &err, "stable") && strstr(err.msg, "'2.5'"), "%s", err.msg);
    ck_assert_int_eq(eq_quant_options(q)->stable, 0);
    st = eq_quant_set_option(q, "quant_loss_function", "L3", &err);
    ck_assert_msg(s_err_contains(st, &err, "quant_loss_function") && strstr(err.msg, "'L3'"), "%s", err.msg);
    st = eq_quant_set_option(q, "quant_loss_alpha", "nan", &err);
    ck_assert_msg(s_err_contains(st, &err, "quant_loss_alpha") && strstr(err.msg, "'nan'"), "%s", err.msg);
    ck_assert(eq_quant_is_runtime_option("adaptive_restore") && !eq_quant_is_runtime_option("bit"));

    /* enable False: y = x, gx = gy, parameter gradients 0, no counter */
    float x[4] = {0.1f, -2.0f, 0.5f, 1.4f}, y[4], g[4] = {1, 2, 3, 4}, gx[4];
    ck_assert_int_eq(eq_quant_set_option(q, "enable", "False", &err), EQ_OK);
    ck_assert(!eq_quant_enabled(q));
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x, y, 1);
    ck_assert(memcmp(x, y, sizeof y) == 0);
    s_bwd(q, x, g, gx);
    ck_assert(memcmp(gx, g, sizeof g) == 0);
    ck_assert_float_eq(eq_quant_find(q, "clip_val")->grad[0], 0.0f);
    ck_assert_float_eq(*eq_quant_find(q, "iteration")->data, 0.0f);
    ck_assert_int_eq(eq_quant_set_option(q, "enable", "1", &err), EQ_OK);
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x, y, 1);
    ck_assert(memcmp(x, y, sizeof y) != 0);
    ck_assert_float_eq(*eq_quant_find(q, "iteration")->data, 1.0f);

    /* stable set mid-training: the counter keeps counting, so a warm-up runs
     * while iteration <= stable (iterations 2 and 3 here), with the running
     * mean of maxima weighted by the iteration (§2.13) */
    ck_assert_int_eq(eq_quant_set_option(q, "stable", "3", &err), EQ_OK);
    ck_assert_int_eq(eq_quant_options(q)->stable, 3);
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x, y, 1); /* k = 2: clip = (2 + 1*1)/2 */
    ck_assert(memcmp(x, y, sizeof y) == 0);
    ck_assert_float_eq(eq_quant_find(q, "clip_val")->data[0], 1.5f);
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x, y, 1); /* k = 3: (2 + 2*1.5)/3 */
    ck_assert(memcmp(x, y, sizeof y) == 0);
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x, y, 1);
    ck_assert(memcmp(x, y, sizeof y) != 0);

    /* quantization loss: only training forwards, 0 when disabled or None */
    ck_assert_int_eq(eq_quant_set_option(q, "quant_loss_function", "'L2'", &err), EQ_OK);
    ck_assert_int_eq(eq_quant_set_option(q, "quant_loss_alpha", "2", &err), EQ_OK);
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x, y, 1);
    ck_assert(eq_quant_aux_loss(q) == 0.0); /* quant_loss_enable still false */
    ck_assert_int_eq(eq_quant_set_option(q, "quant_loss_enable", "True", &err), EQ_OK);
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x, y, 1);
    double want = 0;
    for (int i = 0; i < 4; i++) want += (double)(x[i] - y[i]) * (x[i] - y[i]);
    want = 2.0 * want / 4.0;
    ck_assert_msg(fabs(eq_quant_aux_loss(q) - want) < 1e-6 && want > 0, "%g vs %g", eq_quant_aux_loss(q), want);
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x, y, 0);
    ck_assert(eq_quant_aux_loss(q) == 0.0);
    ck_assert_int_eq(eq_quant_set_option(q, "quant_loss_function", "None", &err), EQ_OK);
    s_fwd(q, EQ_LAYOUT_NC, 2, S, x, y, 1);
    ck_assert(eq_quant_aux_loss(q) == 0.0);
    eq_quant_destroy(&q);
}
END_TEST

/* gamma's gradient with the loss on (y = gamma*Q(x), finalize's x = gamma*x:
 * both exact in gamma) against central differences of sum(gy*y) +
 * alpha*loss.  The x and clip paths go through STEs, not derivatives; the
 * PyTorch fixtures (gen_rt_*) check those. */
static double s_total(eq_quant *q, const int64_t *S, const float *x, const float *gy, int64_t n)
{
    float *y = malloc((size_t)n * sizeof(float));
    s_fwd(q, EQ_LAYOUT_OIHW, 4, S, x, y, 1);
    double t = 0;
    for (int64_t i = 0; i < n; i++) t += (double)gy[i] * y[i];
    t += eq_quant_aux_loss(q);
    free(y);
    return t;
}

START_TEST(test_quant_loss_fd)
{
    const int64_t S[4] = {2, 3, 2, 2};
    const int64_t n = 24;
    const char *fns[] = {"L2", "L1", "QDL"};
    for (int f = 0; f < 3; f++) {
        const char *kv[] = {"method=lsq", "bit=3", "gamma=true", "quant_group=1", NULL};
        eq_quant *q = s_make(EQ_QTAG_WT, EQ_LAYOUT_OIHW, 4, S, kv);
        eq_err err = {0};
        ck_assert_int_eq(eq_quant_set_option(q, "quant_loss_enable", "true", &err), EQ_OK);
        ck_assert_int_eq(eq_quant_set_option(q, "quant_loss_function", fns[f], &err), EQ_OK);
        ck_assert_int_eq(eq_quant_set_option(q, "quant_loss_alpha", "3", &err), EQ_OK);
        eq_quant_tensor *c = eq_quant_find(q, "clip_val"), *gm = eq_quant_find(q, "gamma");
        c->data[0] = 1.3f;
        gm->data[0] = 0.8f;
        float x[24], gy[24], gx[24];
        s_fill(x, n, 0.6f, 0.0f);
        s_fill(gy, n, 1.0f, 0.0f);
        s_total(q, S, x, gy, n);
        s_bwd(q, x, gy, gx);
        float gg = gm->grad[0];
        (void)c;
        float v0 = gm->data[0], h = 1e-3f;
        gm->data[0] = v0 + h;
        double tp = s_total(q, S, x, gy, n);
        gm->data[0] = v0 - h;
        double tm = s_total(q, S, x, gy, n);
        gm->data[0] = v0;
        double fd = (tp - tm) / (2.0 * h);
        ck_assert_msg(fabs(fd - gg) <= 1e-2 * (1 + fabs(fd)), "%s: gamma fd %g analytic %g", fns[f], fd, gg);
        eq_quant_destroy(&q);
    }
}
END_TEST

/* ---- OHWI weights ------------------------------------------------------------ */

/* OIHW (O, I, H, W) -> OHWI (O, H, W, I) and back. */
static void s_oihw_to_ohwi(const float *a, float *b, const int64_t *S, int back)
{
    int64_t O = S[0], I = S[1], H = S[2], W = S[3];
    for (int64_t o = 0; o < O; o++)
        for (int64_t i = 0; i < I; i++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t w = 0; w < W; w++) {
                    int64_t ci = ((o * I + i) * H + h) * W + w, hi = ((o * H + h) * W + w) * I + i;
                    if (back)
                        b[ci] = a[hi];
                    else
                        b[hi] = a[ci];
                }
}

/* Two steps (so state written by the first, e.g. LQ-Net's basis, is used by
 * the second) of the same weight as OIHW and as OHWI: y and gx permuted
 * back, every parameter gradient and state tensor bit-identical. */
static void s_ohwi_case(const char *const *kv, const char *const *rt, int train)
{
    const int64_t S[4] = {8, 6, 3, 3}, T[4] = {8, 3, 3, 6};
    const int64_t n = 8 * 6 * 3 * 3;
    float *x = malloc(n * sizeof(float)), *g = malloc(n * sizeof(float));
    float *y1 = malloc(n * sizeof(float)), *gx1 = malloc(n * sizeof(float));
    float *xt = malloc(n * sizeof(float)), *gt = malloc(n * sizeof(float));
    float *y2 = malloc(n * sizeof(float)), *gx2 = malloc(n * sizeof(float));
    float *tmp = malloc(n * sizeof(float));
    eq_quant *a = s_make(EQ_QTAG_WT, EQ_LAYOUT_OIHW, 4, S, kv);
    eq_quant *b = s_make(EQ_QTAG_WT, EQ_LAYOUT_OHWI, 4, T, kv);
    ck_assert_int_eq(eq_quant_groups(a), eq_quant_groups(b));
    for (; rt && *rt; rt += 2) {
        eq_err err = {0};
        ck_assert_int_eq(eq_quant_set_option(a, rt[0], rt[1], &err), EQ_OK);
        ck_assert_int_eq(eq_quant_set_option(b, rt[0], rt[1], &err), EQ_OK);
    }
    for (int step = 0; step < 2; step++) {
        s_fill(x, n, 0.4f, 0.02f);
        s_fill(g, n, 1.0f, 0.0f);
        s_oihw_to_ohwi(x, xt, S, 0);
        s_oihw_to_ohwi(g, gt, S, 0);
        s_fwd(a, EQ_LAYOUT_OIHW, 4, S, x, y1, train);
        s_fwd(b, EQ_LAYOUT_OHWI, 4, T, xt, y2, train);
        s_oihw_to_ohwi(y2, tmp, S, 1);
        ck_assert_msg(memcmp(y1, tmp, n * sizeof(float)) == 0, "%s %s: y differs (step %d)", kv[0], kv[1], step);
        if (train) {
            s_bwd(a, x, g, gx1);
            s_bwd(b, xt, gt, gx2);
            s_oihw_to_ohwi(gx2, tmp, S, 1);
            ck_assert_msg(memcmp(gx1, tmp, n * sizeof(float)) == 0, "%s %s: grad_x differs", kv[0], kv[1]);
        }
        ck_assert_int_eq(eq_quant_tensor_count(a), eq_quant_tensor_count(b));
        for (size_t i = 0; i < eq_quant_tensor_count(a); i++) {
            eq_quant_tensor *ta = eq_quant_tensor_at(a, i), *tb = eq_quant_tensor_at(b, i);
            ck_assert_str_eq(ta->name, tb->name);
            ck_assert_msg(memcmp(ta->data, tb->data, ta->numel * sizeof(float)) == 0, "%s %s: state %s differs",
                          kv[0], kv[1], ta->name);
            if (ta->grad && train)
                ck_assert_msg(memcmp(ta->grad, tb->grad, ta->numel * sizeof(float)) == 0,
                              "%s %s: grad.%s differs", kv[0], kv[1], ta->name);
        }
    }
    eq_quant_destroy(&a);
    eq_quant_destroy(&b);
    free(x), free(g), free(y1), free(gx1), free(xt), free(gt), free(y2), free(gx2), free(tmp);
}

START_TEST(test_ohwi_equals_oihw)
{
    static const char *const cases[][7] = {
        {"method=dorefa", "bit=2", NULL},
        {"method=dorefa", "bit=3", "gamma=true", "adaptive=var-mean", NULL},
        {"method=bin", "bit=1", "adaptive=var-mean", NULL},
        {"method=lsq", "bit=2", NULL},
        {"method=lsq", "bit=3", "quant_group=4", "grad_scale=fan-scale", "stable=1", NULL},
        {"method=lsq", "level=3", "grad_type=STE-scale", "adaptive=var-mean", "independent_norm=true", NULL},
        {"method=lsq-step", "bit=3", NULL},
        {"method=nonuniform", "level=3", "scale=1.0", "adaptive=var-mean", NULL},
        {"method=xnor", "bit=1", "gamma=true", "grad_type=STE", NULL},
        {"method=lqnet", "bit=2", NULL},
        {"method=lqnet", "bit=3", "adaptive=mean-var", "quant_group=2", "custom_update=true", NULL},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        s_ohwi_case(cases[c], NULL, 1);
        s_ohwi_case(cases[c], NULL, 0);
    }
    /* run-time options: adaptive_restore and the quantization loss */
    const char *kr[] = {"method=lsq", "bit=2", "adaptive=var-mean", "gamma=true", NULL};
    const char *rt[] = {"adaptive_restore", "true", "quant_loss_enable", "true", "quant_loss_function", "QDL",
                        "quant_loss_alpha", "0.5", NULL};
    s_ohwi_case(kr, rt, 1);
    /* groups inside an output channel are not contiguous in OHWI: refused */
    eq_quant_opts o;
    eq_quant_opts_init(&o, EQ_QTAG_WT);
    eq_err err = {0};
    ck_assert_int_eq(eq_quant_opts_set(&o, "method", "lsq", &err), EQ_OK);
    ck_assert_int_eq(eq_quant_opts_set(&o, "bit", "2", &err), EQ_OK);
    ck_assert_int_eq(eq_quant_opts_set(&o, "quant_group", "16", &err), EQ_OK);
    eq_tensor_desc d;
    const int64_t T[4] = {8, 3, 3, 6};
    ck_assert_int_eq(eq_tensor_desc_init(&d, EQ_DT_F32, EQ_LAYOUT_OHWI, 4, T, &err), EQ_OK);
    eq_quant *q = eq_quant_new(&o, &d, &err);
    ck_assert_msg(q == NULL && strstr(err.msg, "OHWI") && strstr(err.msg, "16"), "%s", err.msg);
    /* ... while OIHW accepts them (P = O*I = 48 divisible by 16) */
    const int64_t S[4] = {8, 6, 3, 3};
    ck_assert_int_eq(eq_tensor_desc_init(&d, EQ_DT_F32, EQ_LAYOUT_OIHW, 4, S, &err), EQ_OK);
    q = eq_quant_new(&o, &d, &err);
    ck_assert_msg(q != NULL && eq_quant_groups(q) == 16, "%s", err.msg);
    eq_quant_destroy(&q);
    ck_assert_int_eq(eq_layout_channel_axis(EQ_LAYOUT_OHWI), 0);
}
END_TEST

/* LQ-Net's forward against a plain per-element reference (ORIGINAL.md
 * §2.11.3-4: idx = the last i with x > theta_{i-1}; y = level[idx]; B^T B,
 * B^T x; the 0.9/0.1 basis blend): fm, half range, 2 bits, one group, with
 * thresholds in order (scale 0.5) and out of order (scale 3 with basis
 * (1, 3): levels 0, 1, 3, 4, thresholds -2, -3, 1), which take different
 * paths in lqnet.c. */
START_TEST(test_lqnet_reference)
{
    const int64_t S[4] = {3, 5, 7, 11};
    const int64_t n = 3 * 5 * 7 * 11;
    const char *scales[] = {"scale=0.5", "scale=3"};
    for (int sc = 0; sc < 2; sc++) {
        const char *kv[] = {"method=lqnet", "bit=2", scales[sc], NULL};
        eq_quant *q = s_make(EQ_QTAG_FM, EQ_LAYOUT_NCHW, 4, S, kv);
        float *bs = eq_quant_find(q, "basis")->data;
        bs[0] = 1.0f;
        bs[1] = 3.0f;
        *eq_quant_find(q, "iteration")->data = 5.0f; /* past the warm-up */
        float s = sc ? 3.0f : 0.5f;
        float lev[4] = {0.0f, 1.0f, 3.0f, 4.0f}, th[3];
        for (int i = 1; i < 4; i++) th[i - 1] = s * lev[i - 1] + (1.0f - s) * lev[i];
        float code[4][2] = {{0, 0}, {1, 0}, {0, 1}, {1, 1}}; /* rank r -> bits (levels already sorted) */
        float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
        s_fill(x, n, 2.5f, 0.5f); /* about 8 % in (-3, -2), where the two orders differ */
        for (int train = 0; train < 2; train++) {
            s_fwd(q, EQ_LAYOUT_NCHW, 4, S, x, y, train);
            double ata[4] = {0}, atx[2] = {0};
            int64_t bad = 0;
            for (int64_t e = 0; e < n; e++) {
                int idx = 0;
                for (int i = 1; i < 4; i++)
                    if (x[e] > th[i - 1]) idx = i;
                if (y[e] != lev[idx]) bad++;
                for (int a = 0; a < 2; a++) {
                    atx[a] += (double)code[idx][a] * x[e];
                    for (int b = 0; b < 2; b++) ata[a * 2 + b] += (double)code[idx][a] * code[idx][b];
                }
            }
            ck_assert_msg(bad == 0, "%s train %d: %lld elements on the wrong level", scales[sc], train, (long long)bad);
            if (!train) {
                ck_assert(bs[0] == 1.0f && bs[1] == 3.0f);
                continue;
            }
            for (int a = 0; a < 2; a++)
                if (ata[a * 3] == 0) ata[a * 3] = 1e-5;
            double det = ata[0] * ata[3] - ata[1] * ata[2];
            double z0 = (atx[0] * ata[3] - ata[1] * atx[1]) / det, z1 = (ata[0] * atx[1] - ata[2] * atx[0]) / det;
            float w0 = 0.9f * 1.0f + 0.1f * (float)z0, w1 = 0.9f * 3.0f + 0.1f * (float)z1;
            ck_assert_msg(fabsf(bs[0] - w0) <= 1e-6f * fabsf(w0) && fabsf(bs[1] - w1) <= 1e-6f * fabsf(w1),
                          "%s: basis %.9g %.9g, reference %.9g %.9g", scales[sc], bs[0], bs[1], w0, w1);
        }
        free(x);
        free(y);
        eq_quant_destroy(&q);
    }
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("quant");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60); /* each case well under 1 s of CPU; the machine is shared (load 10-20) */
    tcase_add_test(tc, test_opts_defaults_and_set);
    tcase_add_test(tc, test_opts_errors_name_the_key);
    tcase_add_test(tc, test_construction_errors);
    tcase_add_test(tc, test_dorefa_values);
    tcase_add_test(tc, test_lsq_pact_bin_xnor_values);
    tcase_add_test(tc, test_level_count_range_idempotence);
    tcase_add_test(tc, test_per_channel_independence);
    tcase_add_test(tc, test_nchw_equals_nhwc);
    tcase_add_test(tc, test_fd_gradients);
    tcase_add_test(tc, test_warmup_stable);
    tcase_add_test(tc, test_lq_custom_update_and_closed_form);
    tcase_add_test(tc, test_lq_codes_option);
    tcase_add_test(tc, test_progressive_levels);
    tcase_add_test(tc, test_quirk_options);
    tcase_add_test(tc, test_threads_match);
    tcase_add_test(tc, test_qtanh);
    tcase_add_test(tc, test_dorefa_wt_argmax);
    tcase_add_test(tc, test_backward_in_place);
    tcase_add_test(tc, test_zero_pad_exact);
    tcase_add_test(tc, test_runtime_options);
    tcase_add_test(tc, test_quant_loss_fd);
    tcase_add_test(tc, test_ohwi_equals_oihw);
    tcase_add_test(tc, test_lqnet_reference);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return eq_test_run(s_suite()); }
