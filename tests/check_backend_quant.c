/*
 * tests/check_backend_quant.c -- the backend's quantizer members
 * (eq_backend_quant_forward / _backward / _release, trainer/backend.h).
 *
 * On the CPU backend (1 and 3 threads) they must give bitwise what quant/
 * gives called directly: for every registered method, weight and activation
 * quantizers, three training steps (forward, backward, an SGD nudge of the
 * parameters) each followed by an eval forward; outputs, input gradients,
 * parameter gradients and every state tensor compared bit for bit.  A fake
 * host-memory backend without the members takes the generic default (same
 * bits); a fake "device" backend without host memory is refused with an
 * error naming it; a backend with its own members gets the calls and the
 * release.  Argument errors name the op.  A quantized ResNet-20 trained
 * (forward, loss, backward, SGD with momentum) on the CPU backend and on a
 * "device" table over the same CPU context (host_memory 0, the CPU's
 * members): the model's code paths for a backend whose memory is not host
 * memory (quantizer members, quantizer parameters stepped in device copies)
 * give the same bits; skipped, saying so, while the layer graph still
 * refuses quantizers on a backend not named cpu.
 */
#include "config.h"

#include "core/rng.h"
#include "quant/quant.h"
#include "trainer/backend.h"
#include "trainer/model.h"
#include "trainer/optim.h"
#include "tests/testutil.h"

#include <math.h>

static float *s_rand(size_t n, float lo, float hi, uint64_t seed, uint64_t stream)
{
    eq_rng r;
    eq_rng_init(&r, seed, stream);
    float *p = malloc(n * sizeof *p + 4);
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++) p[i] = lo + (hi - lo) * eq_rng_uniform(&r);
    return p;
}

/* A quantizer of `method` for tag/xd at 2 bits, else 1 bit (bin), or NULL
 * when the method refuses the tag (its error code in *code). */
static eq_quant *s_make(const char *method, eq_quant_tag tag, const eq_tensor_desc *xd, int *code)
{
    eq_quant *q = NULL;
    eq_err err = {0};
    for (int bit = 2; bit >= 1 && !q; bit--) {
        eq_quant_opts o;
        eq_quant_opts_init(&o, tag);
        char b[4];
        snprintf(b, sizeof b, "%d", bit);
        ck_assert_msg(eq_quant_opts_set(&o, "method", method, &err) == EQ_OK, "%s: %s", method, err.msg);
        ck_assert(eq_quant_opts_set(&o, "bit", b, &err) == EQ_OK);
        q = eq_quant_new(&o, xd, &err);
    }
    *code = q ? EQ_OK : (int)err.code;
    return q;
}

static void s_same(const char *what, const char *method, int step, const float *a, const float *b,
                   size_t n)
{
    ck_assert_msg(memcmp(a, b, n * sizeof *a) == 0, "%s step %d: %s differs", method, step, what);
}

static void s_same_state(const char *method, int step, eq_quant *qa, eq_quant *qb)
{
    ck_assert_uint_eq(eq_quant_tensor_count(qa), eq_quant_tensor_count(qb));
    for (size_t t = 0; t < eq_quant_tensor_count(qa); t++) {
        eq_quant_tensor *a = eq_quant_tensor_at(qa, t), *b = eq_quant_tensor_at(qb, t);
        s_same(a->name, method, step, a->data, b->data, (size_t)a->numel);
        if (a->grad) s_same("a parameter gradient", method, step, a->grad, b->grad, (size_t)a->numel);
    }
}

/* Three training steps plus eval forwards of quant/ direct (qa) against the
 * backend (qb); 1 when the method took this tag. */
static int s_compare(eq_backend *be, const char *method, eq_quant_tag tag)
{
    int64_t fm[4] = {3, 5, 5, 8}, wt[4] = {8, 4, 3, 3};
    eq_tensor_desc xd;
    eq_err err = {0};
    ck_assert(eq_tensor_desc_init(&xd, EQ_DT_F32, tag == EQ_QTAG_WT ? EQ_LAYOUT_OIHW : EQ_LAYOUT_NHWC, 4,
                                  tag == EQ_QTAG_WT ? wt : fm, &err) == EQ_OK);
    int ca, cb;
    eq_quant *qa = s_make(method, tag, &xd, &ca), *qb = s_make(method, tag, &xd, &cb);
    ck_assert_int_eq(ca, cb);
    if (!qa) {
        ck_assert_ptr_null(qb);
        return 0;
    }
    size_t n = (size_t)eq_tensor_numel(&xd);
    float *ya = malloc(n * 4), *yb = malloc(n * 4), *ga = malloc(n * 4), *gb = malloc(n * 4);
    ck_assert(ya && yb && ga && gb);
    for (int step = 0; step < 3; step++) {
        float lo = tag == EQ_QTAG_WT ? -1.0f : -0.5f, hi = tag == EQ_QTAG_WT ? 1.0f : 2.5f;
        float *x = s_rand(n, lo, hi, 77, 10 * (uint64_t)step + 1);
        float *gy = s_rand(n, -1, 1, 77, 10 * (uint64_t)step + 2);
        eq_status sa = eq_quant_forward(qa, &xd, x, ya, 1, &err);
        ck_assert_msg(sa == EQ_OK, "%s: %s", method, err.msg);
        ck_assert_msg(eq_backend_quant_forward(be, qb, &xd, x, yb, 1, &err) == EQ_OK, "%s: %s", method,
                      err.msg);
        s_same("y (train)", method, step, ya, yb, n);
        ck_assert(eq_quant_backward(qa, x, gy, ga, &err) == EQ_OK);
        ck_assert_msg(eq_backend_quant_backward(be, qb, x, gy, gb, &err) == EQ_OK, "%s: %s", method,
                      err.msg);
        s_same("gx", method, step, ga, gb, n);
        s_same_state(method, step, qa, qb);
        /* move the parameters the same way on both, then an eval forward */
        for (size_t t = 0; t < eq_quant_tensor_count(qa); t++) {
            eq_quant_tensor *a = eq_quant_tensor_at(qa, t), *b = eq_quant_tensor_at(qb, t);
            for (int64_t j = 0; a->grad && j < a->numel; j++) {
                a->data[j] -= 0.01f * a->grad[j];
                b->data[j] -= 0.01f * a->grad[j];
            }
        }
        ck_assert(eq_quant_forward(qa, &xd, x, ya, 0, &err) == EQ_OK);
        ck_assert(eq_backend_quant_forward(be, qb, &xd, x, yb, 0, &err) == EQ_OK);
        s_same("y (eval)", method, step, ya, yb, n);
        s_same_state(method, step, qa, qb);
        free(x);
        free(gy);
    }
    eq_backend_quant_release(be, qb);
    eq_quant_destroy(&qa);
    eq_quant_destroy(&qb);
    free(ya);
    free(yb);
    free(ga);
    free(gb);
    return 1;
}

static void s_all_methods(eq_backend *be)
{
    const char *const *m = eq_quant_method_names();
    int nm = 0;
    for (; m[nm]; nm++) {
        int took = s_compare(be, m[nm], EQ_QTAG_WT) + s_compare(be, m[nm], EQ_QTAG_FM);
        ck_assert_msg(took > 0, "%s: took neither a weight nor an activation", m[nm]);
    }
    ck_assert_int_ge(nm, 8);
}

START_TEST(test_cpu_bitwise)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(_i == 0 ? 1 : 3, &err);
    ck_assert_msg(be != NULL, "%s", err.msg);
    ck_assert_int_eq(eq_backend_host_memory(be), 1);
    ck_assert_int_eq(eq_backend_runs_quant(be), 1);
    s_all_methods(be);
    eq_backend_destroy(&be);
}
END_TEST

/* A host-memory backend without quantizer members: the generic default. */
START_TEST(test_default_host)
{
    eq_err err = {0};
    eq_backend *cpu = eq_backend_cpu_new(1, &err);
    ck_assert_ptr_nonnull(cpu);
    struct eq_backend_i fi = *cpu->iface;
    fi.name = "plain";
    fi.quant_forward = NULL;
    fi.quant_backward = NULL;
    fi.quant_release = NULL;
    eq_backend fake = {&fi, cpu->context};
    ck_assert_int_eq(eq_backend_runs_quant(&fake), 1);
    s_all_methods(&fake);
    eq_backend_destroy(&cpu);
}
END_TEST

/* A "device" backend: memory not host memory, no members: refused. */
START_TEST(test_default_device)
{
    eq_err err = {0};
    eq_backend *cpu = eq_backend_cpu_new(1, &err);
    ck_assert_ptr_nonnull(cpu);
    struct eq_backend_i fi = *cpu->iface;
    fi.name = "fakegpu";
    fi.host_memory = 0;
    fi.quant_forward = NULL;
    fi.quant_backward = NULL;
    fi.quant_release = NULL;
    eq_backend fake = {&fi, cpu->context};
    ck_assert_int_eq(eq_backend_host_memory(&fake), 0);
    ck_assert_int_eq(eq_backend_runs_quant(&fake), 0);
    int64_t s[2] = {2, 4};
    eq_tensor_desc xd;
    ck_assert(eq_tensor_desc_init(&xd, EQ_DT_F32, EQ_LAYOUT_NC, 2, s, &err) == EQ_OK);
    int code;
    eq_quant *q = s_make("lsq", EQ_QTAG_FM, &xd, &code);
    ck_assert_ptr_nonnull(q);
    float x[8] = {0}, y[8];
    ck_assert_int_eq(eq_backend_quant_forward(&fake, q, &xd, x, y, 1, &err), EQ_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(err.msg, "quant_forward") && strstr(err.msg, "fakegpu"), "%s", err.msg);
    ck_assert_int_eq(eq_backend_quant_backward(&fake, q, x, y, y, &err), EQ_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(err.msg, "quant_backward") && strstr(err.msg, "fakegpu"), "%s", err.msg);
    eq_backend_quant_release(&fake, q); /* no member: nothing to do */
    eq_quant_destroy(&q);
    eq_backend_destroy(&cpu);
}
END_TEST

/* A backend with its own members gets the calls (and the release). */
static int g_fwd, g_bwd, g_rel;
static struct eq_quant *g_last;

static eq_status s_fwd(void *ctx, struct eq_quant *q, const eq_tensor_desc *xd, const float *x,
                       float *y, int train, eq_err *err)
{
    (void)ctx;
    g_fwd++;
    g_last = q;
    return eq_quant_forward(q, xd, x, y, train, err);
}

static eq_status s_bwd(void *ctx, struct eq_quant *q, const float *x, const float *gy, float *gx,
                       eq_err *err)
{
    (void)ctx;
    g_bwd++;
    return eq_quant_backward(q, x, gy, gx, err);
}

static void s_rel(void *ctx, struct eq_quant *q)
{
    (void)ctx;
    g_rel += q == g_last;
}

START_TEST(test_members_and_args)
{
    eq_err err = {0};
    eq_backend *cpu = eq_backend_cpu_new(1, &err);
    ck_assert_ptr_nonnull(cpu);
    struct eq_backend_i fi = *cpu->iface;
    fi.name = "own";
    fi.host_memory = 0;
    fi.quant_forward = s_fwd;
    fi.quant_backward = s_bwd;
    fi.quant_release = s_rel;
    eq_backend own = {&fi, cpu->context};
    ck_assert_int_eq(eq_backend_runs_quant(&own), 1);
    int64_t s[2] = {2, 4};
    eq_tensor_desc xd;
    ck_assert(eq_tensor_desc_init(&xd, EQ_DT_F32, EQ_LAYOUT_NC, 2, s, &err) == EQ_OK);
    int code;
    eq_quant *q = s_make("lsq", EQ_QTAG_FM, &xd, &code);
    ck_assert_ptr_nonnull(q);
    float x[8] = {0.1f, 0.5f, 1.0f, 2.0f, -1.0f, 0.25f, 0.75f, 3.0f}, y[8], g[8];
    ck_assert(eq_backend_quant_forward(&own, q, &xd, x, y, 1, &err) == EQ_OK);
    ck_assert(eq_backend_quant_backward(&own, q, x, y, g, &err) == EQ_OK);
    ck_assert_int_eq(g_fwd, 1);
    ck_assert_int_eq(g_bwd, 1);
    eq_backend_quant_release(&own, q);
    ck_assert_int_eq(g_rel, 1);
    eq_backend_quant_release(&own, NULL); /* NULL-safe, not passed on */
    eq_backend_quant_release(NULL, q);
    ck_assert_int_eq(g_rel, 1);
    /* argument errors, named, before the member is called */
    ck_assert_int_eq(eq_backend_quant_forward(&own, NULL, &xd, x, y, 1, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "quant_forward: q is NULL"), "%s", err.msg);
    ck_assert_int_eq(eq_backend_quant_forward(&own, q, NULL, x, y, 1, &err), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_backend_quant_forward(&own, q, &xd, x, NULL, 1, &err), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_backend_quant_forward(&own, q, &xd, x, x, 1, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "same buffer"), "%s", err.msg);
    ck_assert_int_eq(eq_backend_quant_backward(&own, q, x, NULL, g, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "quant_backward: gy is NULL"), "%s", err.msg);
    ck_assert_int_eq(eq_backend_quant_forward(NULL, q, &xd, x, y, 1, &err), EQ_ERR_INVALID);
    ck_assert_int_eq(g_fwd, 1);
    ck_assert_int_eq(g_bwd, 1);
    /* quant/'s own errors come through: a descriptor with other channels */
    int64_t s2[2] = {2, 3};
    eq_tensor_desc bad;
    ck_assert(eq_tensor_desc_init(&bad, EQ_DT_F32, EQ_LAYOUT_NC, 2, s2, &err) == EQ_OK);
    ck_assert_int_eq(eq_backend_quant_forward(cpu, q, &bad, x, y, 1, &err), EQ_ERR_INVALID);
    eq_quant_destroy(&q);
    eq_backend_destroy(&cpu);
}
END_TEST

/* Two steps of a quantized resnet20 on `be`; *loss: the last loss.  NULL
 * when the model refuses the backend (message printed). */
static eq_model *s_train(eq_backend *be, eq_optim **o, float *loss)
{
    eq_err err = {0};
    eq_model_cfg cfg;
    eq_model_quant_cfg wt, fm;
    eq_config_section secs[EQ_MODEL_CONFIG_NSECTIONS];
    eq_model_config_sections(&cfg, &wt, &fm, secs);
    const char *text = "[model]\narch = resnet20\nkeyword = origin, cbsa, fix_pooling, singleconv, fix, real_skip\n"
                       "width_alpha = 0.0625\nin_channels = 1\n"
                       "[quant.wt]\nenable = true\nmethod = lsq\nbit = 2\n"
                       "[quant.fm]\nenable = true\nmethod = pact\nbit = 2\n";
    ck_assert(eq_config_parse_buffer(secs, EQ_MODEL_CONFIG_NSECTIONS, "t.cfg", text, strlen(text), NULL, 0,
                                     &err) == EQ_OK);
    eq_model *m = eq_model_new(be, &cfg, &wt, &fm, 4, 12, 12, &err);
    if (!m) {
        printf("check_backend_quant: the model refuses the %s backend (%s): device path not checked\n",
               eq_backend_name(be), err.msg);
        ck_assert_int_eq(err.code, EQ_ERR_UNSUPPORTED);
        return NULL;
    }
    eq_optim_cfg oc;
    eq_schedule_cfg sc;
    eq_config_section os[EQ_OPTIM_CONFIG_NSECTIONS];
    eq_optim_config_sections(&oc, &sc, os);
    ck_assert(eq_config_defaults(os, EQ_OPTIM_CONFIG_NSECTIONS, &err) == EQ_OK);
    oc.lr = 0.05;
    *o = eq_optim_new(m, &oc, &err);
    ck_assert_msg(*o != NULL, "%s", err.msg);
    float *x = eq_backend_alloc(be, 4 * 12 * 12 * sizeof(float), &err);
    int32_t *y = eq_backend_alloc(be, 4 * sizeof(int32_t), &err);
    ck_assert(x && y);
    for (size_t i = 0; i < 4 * 12 * 12; i++) x[i] = (float)cos(0.37 * (double)i + (double)(i / 144));
    for (int i = 0; i < 4; i++) y[i] = i + 1;
    for (int step = 0; step < 2; step++) {
        ck_assert_msg(eq_model_forward(m, x, true, &err) == EQ_OK, "%s", err.msg);
        ck_assert_msg(eq_model_loss(m, y, NULL, NULL, 0.0f, loss, &err) == EQ_OK, "%s", err.msg);
        ck_assert_msg(eq_model_backward(m, NULL, &err) == EQ_OK, "%s", err.msg);
        ck_assert_msg(eq_optim_step(*o, oc.lr, &err) == EQ_OK, "%s", err.msg);
    }
    eq_backend_release(be, x);
    eq_backend_release(be, y);
    return m;
}

START_TEST(test_fake_device_model)
{
    eq_err err = {0};
    eq_backend *cpu = eq_backend_cpu_new(2, &err);
    ck_assert_ptr_nonnull(cpu);
    struct eq_backend_i fi = *cpu->iface; /* the CPU's members, memory declared not host */
    fi.name = "fakedev";
    fi.host_memory = 0;
    eq_backend dev = {&fi, cpu->context};
    eq_optim *oa = NULL, *ob = NULL;
    float la = 0, lb = 0;
    eq_model *ma = s_train(cpu, &oa, &la);
    ck_assert_ptr_nonnull(ma);
    eq_model *mb = s_train(&dev, &ob, &lb);
    if (mb) {
        ck_assert(memcmp(&la, &lb, sizeof la) == 0);
        ck_assert_uint_eq(eq_model_tensor_count(ma), eq_model_tensor_count(mb));
        for (size_t i = 0; i < eq_model_tensor_count(ma); i++) {
            const eq_model_tensor *a = eq_model_tensor_at(ma, i), *b = eq_model_tensor_at(mb, i);
            size_t el = a->dtype == EQ_DT_I64 ? 8 : 4;
            ck_assert_msg(memcmp(a->data, b->data, a->numel * el) == 0, "%s differs", a->name);
            if (a->grad) ck_assert_msg(memcmp(a->grad, b->grad, a->numel * 4) == 0, "grad of %s differs", a->name);
        }
        for (size_t i = 0; i < eq_optim_state_count(oa); i++) {
            const eq_model_tensor *a = eq_optim_state_at(oa, i), *b = eq_optim_state_at(ob, i);
            ck_assert_msg(memcmp(a->data, b->data, a->numel * 4) == 0, "%s differs", a->name);
        }
        eq_optim_destroy(&ob);
        eq_model_destroy(&mb);
    }
    eq_optim_destroy(&oa);
    eq_model_destroy(&ma);
    eq_backend_destroy(&cpu);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("backend_quant");
    TCase *tc = tcase_create("quant");
    tcase_set_timeout(tc, 30);
    tcase_add_loop_test(tc, test_cpu_bitwise, 0, 2);
    tcase_add_test(tc, test_default_host);
    tcase_add_test(tc, test_default_device);
    tcase_add_test(tc, test_members_and_args);
    tcase_add_test(tc, test_fake_device_model);
    suite_add_tcase(su, tc);
    return eq_test_run(su);
}
