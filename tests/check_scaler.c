/*
 * tests/check_scaler.c -- loss scaling (trainer/scaler.h) and [train]
 * precision / loss_scale in eq-trainer: the update rule against
 * trajectories derived by hand from torch's _amp_update_scale_ (growth
 * after the interval, backoff, growth to inf refused, non-power factors in
 * double), parameter errors, the inf/NaN count and the in-place unscale
 * over a model's gradients (quantizer parameters included, -0 kept), also
 * on a fake device backend (the device branch: nonfinite member,
 * scalar_affine_fwd with a device scalar); the
 * [train] keys and their errors; then the real programs on a tiny
 * synthetic set (CPU backend): a static power-of-two scale and a dynamic
 * scale that never overflows give the bits of no scaling; a huge initial
 * scale overflows, skips exactly the steps an in-process reference finds
 * (parameters and optimiser state unchanged, then backs off until a step
 * succeeds; two ranks skip the same steps); checkpoint/resume carries the
 * scale and growth tracker, and a checkpoint without them resumes at
 * loss_scale_init; precision fp16 (the layer graph's rounding, emulated on
 * the CPU) overflows at 65536 where fp32 does not, backs off and trains,
 * and bf16 without scaling trains.  EQ_SCALER_KEEP=1 keeps the programs'
 * scratch folders (logs, checkpoints).
 */
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <signal.h>
#include <sys/wait.h>
#include <zmq.h>

#include "core/safetensors.h"
#include "loader/loader.h"
#include "testutil.h"
#include "tinyjob.h"
#include "trainer/backend.h"
#include "trainer/checkpoint.h"
#include "trainer/feeder.h"
#include "trainer/scaler.h"
#include "trainer/train.h"

/* ---- the update rule ---------------------------------------------------------- */

static void s_step(eq_scaler *s, bool inf, float scale, int64_t tracker)
{
    eq_scaler_update(s, inf);
    ck_assert_msg(s->scale == scale && s->growth_tracker == tracker,
                  "after found_inf=%d: scale %.9g tracker %lld, expected %.9g %lld", inf, (double)s->scale,
                  (long long)s->growth_tracker, (double)scale, (long long)tracker);
}

START_TEST(test_update_rule)
{
    eq_scaler s;
    eq_err e = { 0 };
    /* GradScaler(init_scale=65536, growth_factor=2, backoff_factor=0.5,
     * growth_interval=3): the tracker counts successful steps and resets
     * when the scale changes */
    ck_assert_msg(eq_scaler_init(&s, true, 65536, 2, 0.5, 3, &e) == EQ_OK, "%s", e.msg);
    ck_assert(s.scale == 65536.0f && s.growth_tracker == 0);
    ck_assert(eq_scaler_inv_scale(&s) == 1.0f / 65536.0f);
    s_step(&s, false, 65536, 1);
    s_step(&s, false, 65536, 2);
    s_step(&s, false, 131072, 0); /* the 3rd success: grows */
    s_step(&s, true, 65536, 0);   /* backoff, tracker reset */
    s_step(&s, false, 65536, 1);
    s_step(&s, false, 65536, 2);
    s_step(&s, true, 32768, 0);   /* an inf just before the interval: no growth */
    s_step(&s, true, 16384, 0);
    s_step(&s, false, 16384, 1);
    s_step(&s, false, 16384, 2);
    s_step(&s, false, 32768, 0);
    ck_assert_uint_eq(s.updates, 11);
    ck_assert_uint_eq(s.skipped, 3);
    ck_assert_uint_eq(s.grown, 2);
    ck_assert_uint_eq(s.backoffs, 3);
    /* growth to inf refused: 2^127 * 2 is not a float; the tracker resets */
    ck_assert(eq_scaler_init(&s, true, ldexp(1, 127), 2, 0.5, 1, &e) == EQ_OK);
    s_step(&s, false, ldexpf(1, 127), 0);
    s_step(&s, false, ldexpf(1, 127), 0);
    ck_assert_uint_eq(s.grown, 0);
    s_step(&s, true, ldexpf(1, 126), 0);
    s_step(&s, false, ldexpf(1, 127), 0);
    /* factors that are not powers of two: float * double in double, then
     * rounded to float (as the CUDA kernel's float = float * double) */
    ck_assert(eq_scaler_init(&s, true, 1000, 1.7, 0.3, 2, &e) == EQ_OK);
    s_step(&s, true, (float)(1000.0 * 0.3), 0);
    float v = (float)(1000.0 * 0.3);
    s_step(&s, false, v, 1);
    s_step(&s, false, (float)((double)v * 1.7), 0);
    v = (float)((double)v * 1.7);
    ck_assert(eq_scaler_inv_scale(&s) == (float)(1.0 / (double)v));
    /* growth_interval 1: every success grows */
    ck_assert(eq_scaler_init(&s, true, 1, 2, 0.5, 1, &e) == EQ_OK);
    s_step(&s, false, 2, 0);
    s_step(&s, false, 4, 0);
    /* a static scale never changes; skips are still counted */
    ck_assert(eq_scaler_init(&s, false, 1024, 0, 0, 0, &e) == EQ_OK);
    s_step(&s, true, 1024, 0);
    s_step(&s, false, 1024, 0);
    ck_assert_uint_eq(s.skipped, 1);
    ck_assert(eq_scaler_inv_scale(&s) == 1.0f / 1024.0f);
}
END_TEST

START_TEST(test_init_errors)
{
    eq_scaler s;
    eq_err e = { 0 };
    ck_assert_int_eq(eq_scaler_init(&s, true, 0, 2, 0.5, 10, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "loss scale 0"));
    ck_assert_int_eq(eq_scaler_init(&s, false, 1e39, 2, 0.5, 10, &e), EQ_ERR_INVALID); /* inf as a float */
    ck_assert_int_eq(eq_scaler_init(&s, true, NAN, 2, 0.5, 10, &e), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_scaler_init(&s, true, 8, 1, 0.5, 10, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "growth_factor 1"));
    ck_assert_int_eq(eq_scaler_init(&s, true, 8, 2, 1, 10, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "backoff_factor 1"));
    ck_assert_int_eq(eq_scaler_init(&s, true, 8, 2, 0, 10, &e), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_scaler_init(&s, true, 8, 2, 0.5, 0, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "growth_interval 0"));
    ck_assert_int_eq(eq_scaler_init(NULL, true, 8, 2, 0.5, 1, &e), EQ_ERR_INVALID);
    /* below FLT_MIN the unscale factor (float)(1/scale) is inf: a zero
     * gradient would become NaN; FLT_MIN itself unscales by 2^126 */
    ck_assert_int_eq(eq_scaler_init(&s, false, 1e-40, 2, 0.5, 10, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "loss scale 1e-40"));
    ck_assert_int_eq(eq_scaler_init(&s, true, 1e-45, 2, 0.5, 10, &e), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_scaler_init(&s, false, FLT_MIN, 2, 0.5, 10, &e), EQ_OK);
    ck_assert(isfinite(eq_scaler_inv_scale(&s)) && eq_scaler_inv_scale(&s) == 0x1p126f);
}
END_TEST

/* ---- the count and the unscale over a model's gradients ------------------------ */

/* A small quantized model (LSQ 4-bit weights and activations, so quantizer
 * parameters have gradients) with random gradients. */
static eq_model *s_model(eq_backend *be, eq_experiment *x)
{
    eq_err e = { 0 };
    char *dir = eq_test_scratch("scaler-model");
    char cfg[4200];
    snprintf(cfg, sizeof cfg, "%s/m.cfg", dir);
    FILE *f = fopen(cfg, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "[data]\nheight = 8\nwidth = 8\nchannels = 3\n[model]\nnum_classes = 4\nin_channels = 3\n"
               "[train]\nmean = 0.5, 0.5, 0.5\nstd = 0.25, 0.25, 0.25\n");
    fclose(f);
    ck_assert_msg(eq_experiment_load(x, cfg, NULL, 0, NULL, &e) == EQ_OK, "%s", e.msg);
    eq_test_scratch_rm(dir);
    eq_model *m = eq_model_new(be, &x->model, &x->wt, &x->fm, 2, 8, 8, &e);
    ck_assert_msg(m != NULL, "%s", e.msg);
    uint64_t seed = 11;
    size_t nq = 0;
    for (size_t i = 0; i < eq_model_tensor_count(m); i++) {
        const eq_model_tensor *t = eq_model_tensor_at(m, i);
        if (!t->grad) continue;
        nq += t->quant;
        for (size_t k = 0; k < t->numel; k++) t->grad[k] = (float)eq_test_uniform(&seed, -3, 3);
    }
    ck_assert_uint_gt(nq, 2);
    return m;
}

/* Every gradient of m, in tensor order (caller frees). */
static float *s_grads(const eq_model *m)
{
    size_t total = 0, off = 0;
    for (size_t i = 0; i < eq_model_tensor_count(m); i++)
        total += eq_model_tensor_at(m, i)->grad ? eq_model_tensor_at(m, i)->numel : 0;
    float *g = malloc(total * sizeof *g);
    ck_assert_ptr_nonnull(g);
    for (size_t i = 0; i < eq_model_tensor_count(m); i++) {
        const eq_model_tensor *t = eq_model_tensor_at(m, i);
        if (!t->grad) continue;
        memcpy(g + off, t->grad, t->numel * sizeof(float));
        off += t->numel;
    }
    return g;
}

/* Every gradient of m is bitwise before[] * inv (s_grads' order; -0 too). */
static void s_grads_scaled(const eq_model *m, const float *before, float inv)
{
    size_t off = 0;
    for (size_t i = 0; i < eq_model_tensor_count(m); i++) {
        const eq_model_tensor *t = eq_model_tensor_at(m, i);
        if (!t->grad) continue;
        for (size_t k = 0; k < t->numel; k++) {
            float want = before[off + k] * inv;
            ck_assert_msg(!memcmp(&want, &t->grad[k], 4), "%s[%zu]: %.9g, expected %.9g", t->name, k,
                          (double)t->grad[k], (double)want);
        }
        off += t->numel;
    }
}

START_TEST(test_model_ops)
{
    eq_err e = { 0 };
    eq_backend *be = eq_backend_cpu_new(1, &e);
    ck_assert_msg(be != NULL, "%s", e.msg);
    eq_experiment x;
    eq_model *m = s_model(be, &x);
    int64_t n = -1;
    ck_assert_msg(eq_scaler_nonfinite(m, &n, &e) == EQ_OK, "%s", e.msg);
    ck_assert_int_eq(n, 0);
    /* inf in a conv weight's gradient, NaN and -inf in quantizer parameters' */
    const eq_model_tensor *w = NULL, *q1 = NULL, *q2 = NULL;
    for (size_t i = 0; i < eq_model_tensor_count(m); i++) {
        const eq_model_tensor *t = eq_model_tensor_at(m, i);
        if (!t->grad) continue;
        if (t->quant) {
            if (!q1) q1 = t;
            else q2 = t;
        } else if (!w && t->ndim == 4) {
            w = t;
        }
    }
    ck_assert(w && q1 && q2);
    float keep[3] = { w->grad[3], q1->grad[0], q2->grad[0] };
    w->grad[3] = INFINITY;
    q1->grad[0] = NAN;
    q2->grad[0] = -INFINITY;
    ck_assert_msg(eq_scaler_nonfinite(m, &n, &e) == EQ_OK, "%s", e.msg);
    ck_assert_int_eq(n, 3);
    w->grad[3] = keep[0];
    q1->grad[0] = keep[1];
    q2->grad[0] = keep[2];
    /* the unscale: g * (float)(1/scale), every gradient, -0 stays -0 */
    w->grad[0] = -0.0f;
    float *before = s_grads(m);
    eq_scaler s;
    ck_assert(eq_scaler_init(&s, false, 3.0, 0, 0, 0, &e) == EQ_OK); /* not a power of two: rounding shows */
    float inv = eq_scaler_inv_scale(&s), *dev = NULL;
    ck_assert(inv == (float)(1.0 / 3.0));
    ck_assert_msg(eq_scaler_unscale(&s, m, &dev, &e) == EQ_OK, "%s", e.msg);
    s_grads_scaled(m, before, inv);
    ck_assert(signbit(w->grad[0]) && w->grad[0] == 0.0f);
    /* scale 1: nothing to do */
    ck_assert(eq_scaler_init(&s, false, 1.0, 0, 0, 0, &e) == EQ_OK);
    float g0 = w->grad[1];
    ck_assert(eq_scaler_unscale(&s, m, &dev, &e) == EQ_OK);
    ck_assert(w->grad[1] == g0);
    ck_assert_int_eq(eq_scaler_nonfinite(NULL, &n, &e), EQ_ERR_INVALID);
    eq_backend_release(be, dev);
    free(before);
    eq_model_destroy(&m);
    eq_backend_destroy(&be);
}
END_TEST

/* The quantization loss a policy enables adds its gradient inside the
 * quantizer's backward; with a loss scale it must be scaled too, so that
 * the total loss's gradient is: two identical models, one step each at
 * scale 1 and 1024 with an L2 quantization loss on a weight quantizer and
 * a QDL loss on an input quantizer -- the same host loss, every gradient
 * (weights, BN, quantizer parameters) exactly 1024 times the unscaled one
 * (a power of two scales exactly).  Without the quantizer's share of the
 * scale, the quantized layers' gradients would differ. */
static struct eq_quant *s_quant_of(eq_model *m, const char *what, eq_quant_tag tag)
{
    for (size_t i = 0; i < eq_model_tensor_count(m); i++) {
        const eq_model_tensor *t = eq_model_tensor_at(m, i);
        const char *dot = strstr(t->name, what);
        if (!t->quant || !dot) continue;
        char layer[256];
        snprintf(layer, sizeof layer, "%.*s", (int)(dot - t->name), t->name);
        struct eq_quant *q = eq_model_quant(m, layer, tag);
        if (q) return q;
    }
    return NULL;
}

START_TEST(test_quant_loss_scaled)
{
    eq_err e = { 0 };
    eq_backend *be = eq_backend_cpu_new(1, &e);
    ck_assert_msg(be != NULL, "%s", e.msg);
    eq_experiment x[2];
    eq_model *m[2] = { s_model(be, &x[0]), s_model(be, &x[1]) };
    uint64_t seed = 21;
    float *in = eq_test_vec(&seed, 2 * 8 * 8 * 3, 1.0f);
    const int32_t y[2] = { 1, 3 };
    float loss[2];
    for (int r = 0; r < 2; r++) {
        struct eq_quant *qw = s_quant_of(m[r], ".quant_weight.", EQ_QTAG_WT);
        struct eq_quant *qf = s_quant_of(m[r], ".quant_activation.", EQ_QTAG_FM);
        ck_assert(qw && qf);
        ck_assert_msg(eq_quant_set_option(qw, "quant_loss_enable", "true", &e) == EQ_OK, "%s", e.msg);
        ck_assert_msg(eq_quant_set_option(qw, "quant_loss_function", "L2", &e) == EQ_OK, "%s", e.msg);
        ck_assert_msg(eq_quant_set_option(qw, "quant_loss_alpha", "0.5", &e) == EQ_OK, "%s", e.msg);
        ck_assert_msg(eq_quant_set_option(qf, "quant_loss_enable", "true", &e) == EQ_OK, "%s", e.msg);
        ck_assert_msg(eq_quant_set_option(qf, "quant_loss_function", "QDL", &e) == EQ_OK, "%s", e.msg);
        ck_assert_msg(eq_quant_set_option(qf, "quant_loss_alpha", "3", &e) == EQ_OK, "%s", e.msg);
        /* the quantizers' first training forward is their warm-up (iteration 0 <= stable 0): no loss yet */
        ck_assert_msg(eq_model_forward(m[r], in, true, &e) == EQ_OK, "%s", e.msg);
        ck_assert(eq_model_set_loss_scale(m[r], r ? 1024.0f : 1.0f, &e) == EQ_OK);
        ck_assert_msg(eq_model_forward(m[r], in, true, &e) == EQ_OK, "%s", e.msg);
        ck_assert(eq_quant_aux_loss(qw) > 0.0 && eq_quant_aux_loss(qf) > 0.0);
        ck_assert_msg(eq_model_loss(m[r], y, NULL, NULL, 0.0f, &loss[r], &e) == EQ_OK, "%s", e.msg);
        ck_assert_msg(eq_model_backward(m[r], NULL, &e) == EQ_OK, "%s", e.msg);
    }
    ck_assert(!memcmp(&loss[0], &loss[1], sizeof(float)));
    size_t nq = 0, nz = 0;
    for (size_t i = 0; i < eq_model_tensor_count(m[0]); i++) {
        const eq_model_tensor *a = eq_model_tensor_at(m[0], i), *b = eq_model_tensor_at(m[1], i);
        ck_assert_str_eq(a->name, b->name);
        if (!a->grad) continue;
        nq += a->quant;
        for (size_t k = 0; k < a->numel; k++) {
            float want = a->grad[k] * 1024.0f;
            nz += a->grad[k] != 0.0f;
            ck_assert_msg(!memcmp(&want, &b->grad[k], 4), "%s[%zu]: %.9g at scale 1024, %.9g at 1", a->name, k,
                          (double)b->grad[k], (double)a->grad[k]);
        }
    }
    ck_assert_uint_gt(nq, 2);
    ck_assert_uint_gt(nz, 100);
    /* a scale below FLT_MIN is refused by the quantizer too, naming it */
    struct eq_quant *qw = s_quant_of(m[0], ".quant_weight.", EQ_QTAG_WT);
    ck_assert_int_eq(eq_quant_set_loss_scale(qw, 1e-39f, &e), EQ_ERR_INVALID);
    ck_assert_msg(strstr(e.msg, "loss scale") != NULL, "%s", e.msg);
    free(in);
    eq_model_destroy(&m[0]);
    eq_model_destroy(&m[1]);
    eq_backend_destroy(&be);
}
END_TEST

/* The same on a backend whose memory is not host memory (the CPU's members
 * under another name, as tests/check_backend_quant.c's fake device): model
 * gradients take the device path (the backend's nonfinite member, the
 * unscale by scalar_affine_fwd with a device scalar), quantizer parameters'
 * the host loop; the results are the host's, bitwise (-0 included:
 * scalar_affine_fwd without a bias is x * a). */
START_TEST(test_model_ops_device)
{
    eq_err e = { 0 };
    eq_backend *cpu = eq_backend_cpu_new(1, &e);
    ck_assert_msg(cpu != NULL, "%s", e.msg);
    struct eq_backend_i fi = *cpu->iface;
    fi.name = "fakedev";
    fi.host_memory = 0;
    eq_backend be = { &fi, cpu->context };
    ck_assert_int_eq(eq_backend_host_memory(&be), 0);
    eq_experiment x;
    eq_model *m = s_model(&be, &x);
    const eq_model_tensor *w = NULL, *q = NULL;
    for (size_t i = 0; i < eq_model_tensor_count(m); i++) {
        const eq_model_tensor *t = eq_model_tensor_at(m, i);
        if (!t->grad) continue;
        if (t->quant && !q) q = t;
        if (!t->quant && !w && t->ndim == 4) w = t;
    }
    ck_assert(w && q);
    int64_t n = -1;
    float kw = w->grad[5], kq = q->grad[0];
    w->grad[5] = NAN;
    q->grad[0] = INFINITY;
    ck_assert_msg(eq_scaler_nonfinite(m, &n, &e) == EQ_OK, "%s", e.msg);
    ck_assert_int_eq(n, 2);
    w->grad[5] = kw;
    q->grad[0] = kq;
    w->grad[0] = -0.0f;
    float *before = s_grads(m), *dev = NULL;
    eq_scaler s;
    ck_assert(eq_scaler_init(&s, true, 1024, 2, 0.5, 10, &e) == EQ_OK);
    ck_assert_msg(eq_scaler_unscale(&s, m, &dev, &e) == EQ_OK, "%s", e.msg);
    ck_assert_ptr_nonnull(dev); /* the device scalar was made */
    float inv = eq_scaler_inv_scale(&s);
    ck_assert(inv == 1.0f / 1024.0f);
    s_grads_scaled(m, before, inv);
    eq_backend_release(&be, dev);
    free(before);
    eq_model_destroy(&m);
    eq_backend_destroy(&cpu);
}
END_TEST

/* ---- [train] keys ------------------------------------------------------------------ */

/* ---- the scaler's checkpoint metadata --------------------------------------------- */

/* Copy src to dst with the first `from` of its safetensors header replaced
 * by `to` padded with spaces to the same length (JSON whitespace). */
static void s_patch_file(const char *src, const char *dst, const char *from, const char *to)
{
    size_t n = 0;
    FILE *f = fopen(src, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc(n + 1);
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_eq(fread(b, 1, n, f), n);
    fclose(f);
    b[n] = 0;
    uint64_t hl = 0;
    memcpy(&hl, b, 8); /* little-endian header length */
    ck_assert_uint_le(8 + hl, n);
    char *hit = NULL;
    for (size_t i = 8; i + strlen(from) <= 8 + hl && !hit; i++)
        if (!memcmp(b + i, from, strlen(from))) hit = b + i;
    ck_assert_msg(hit != NULL, "'%s' not in %s's header", from, src);
    ck_assert_uint_le(strlen(to), strlen(from));
    memset(hit, ' ', strlen(from));
    memcpy(hit, to, strlen(to));
    f = fopen(dst, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(b, 1, n, f), n);
    fclose(f);
    free(b);
}

/* Odd or corrupt loss-scaler metadata in a checkpoint is refused as
 * corrupt, naming the key, and changes nothing in the model: a scale that
 * is no float, NaN, inf, 0, negative or below FLT_MIN (its inverse, the
 * unscale factor, would be inf and turn zero gradients into NaN), a
 * tracker that is negative, beyond int64 or missing, a tracker without a
 * scale.  A file with both, well formed, gives them back. */
START_TEST(test_ckpt_meta)
{
    eq_err e = { 0 };
    eq_backend *be = eq_backend_cpu_new(1, &e);
    ck_assert_msg(be != NULL, "%s", e.msg);
    eq_experiment x;
    eq_model *m = s_model(be, &x);
    char *dir = eq_test_scratch("scaler-ckpt");
    char good[4200], bad[4200];
    snprintf(good, sizeof good, "%s/good.safetensors", dir);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
    eq_ckpt_run run = { .epoch = 1, .step = 0, .metric = NAN, .loss_scale = 1572864.0f,
                        .loss_scale_growth_tracker = 1234567890123456789 };
    ck_assert_msg(eq_checkpoint_save(good, m, NULL, &run, &e) == EQ_OK, "%s", e.msg);
    eq_ckpt_run got;
    ck_assert_msg(eq_checkpoint_load(good, m, NULL, &got, NULL, &e) == EQ_OK, "%s", e.msg);
    ck_assert(got.loss_scale == 1572864.0f && got.loss_scale_growth_tracker == 1234567890123456789);
    /* a weight to watch: a failed load must leave it alone */
    const eq_model_tensor *w = NULL;
    for (size_t i = 0; i < eq_model_tensor_count(m) && !w; i++)
        if (eq_model_tensor_at(m, i)->ndim == 4) w = eq_model_tensor_at(m, i);
    ck_assert_ptr_nonnull(w);
    static const struct {
        const char *from, *to, *want;
    } cases[] = {
        { "\"1572864\"", "\"1e-40\"", "'loss_scale' is '1e-40'" }, /* subnormal: 1/scale is inf */
        { "\"1572864\"", "\"1e-45\"", "'loss_scale' is '1e-45'" },
        { "\"1572864\"", "\"nan\"", "'loss_scale' is 'nan'" },
        { "\"1572864\"", "\"inf\"", "'loss_scale' is 'inf'" },
        { "\"1572864\"", "\"1e39\"", "'loss_scale' is '1e39'" },
        { "\"1572864\"", "\"0\"", "'loss_scale' is '0'" },
        { "\"1572864\"", "\"-1024\"", "'loss_scale' is '-1024'" },
        { "\"1572864\"", "\"big\"", "'loss_scale' is 'big'" },
        { "\"1572864\"", "\"\"", "'loss_scale' is ''" },
        { "\"1234567890123456789\"", "\"-1\"", "'loss_scale_growth_tracker' is negative" },
        { "\"1234567890123456789\"", "\"9999999999999999999\"", "'loss_scale_growth_tracker' is not an integer" },
        { "\"1234567890123456789\"", "\"x\"", "'loss_scale_growth_tracker' is not an integer" },
        { "\"loss_scale_growth_tracker\"", "\"loss_scale_growth_trackeX\"", "'loss_scale_growth_tracker' is missing" },
        { "\"loss_scale\":", "\"loss_scalX\":", "'loss_scale_growth_tracker' without 'loss_scale'" },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        s_patch_file(good, bad, cases[c].from, cases[c].to);
        ((float *)w->data)[0] = 12345.0f;
        e = (eq_err){ 0 };
        eq_status st = eq_checkpoint_load(bad, m, NULL, &got, NULL, &e);
        ck_assert_msg(st == EQ_ERR_CORRUPT, "%s -> %s: status %d (%s)", cases[c].from, cases[c].to, (int)st, e.msg);
        ck_assert_msg(strstr(e.msg, cases[c].want) && strstr(e.msg, "bad.safetensors"), "%s: '%s' does not say '%s'",
                      cases[c].to, e.msg, cases[c].want);
        ck_assert_msg(((const float *)w->data)[0] == 12345.0f, "%s: the model changed", cases[c].to);
    }
    /* a small normal scale is a scale */
    s_patch_file(good, bad, "\"1572864\"", "\"0x1p-99\"");
    ck_assert_msg(eq_checkpoint_load(bad, m, NULL, &got, NULL, &e) == EQ_OK, "%s", e.msg);
    ck_assert(got.loss_scale == 0x1p-99f);
    eq_test_scratch_rm(dir);
    eq_model_destroy(&m);
    eq_backend_destroy(&be);
}
END_TEST

static eq_status s_load(const char *cfg, const char *const *sets, size_t n, eq_experiment *x, eq_err *e)
{
    return eq_experiment_load(x, cfg, sets, n, NULL, e);
}

START_TEST(test_config)
{
    char *dir = eq_test_scratch("scaler-cfg");
    char cfg[4200];
    snprintf(cfg, sizeof cfg, "%s/c.cfg", dir);
    FILE *f = fopen(cfg, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "[data]\nheight = 8\nwidth = 8\n");
    fclose(f);
    eq_experiment x;
    eq_err e = { 0 };
    ck_assert_msg(s_load(cfg, NULL, 0, &x, &e) == EQ_OK, "%s", e.msg);
    ck_assert_int_eq(x.train.precision, EQ_PREC_FP32);
    ck_assert_int_eq(x.model.precision, EQ_PREC_FP32);
    ck_assert_int_eq(x.train.loss_scale_mode, EQ_LOSS_SCALE_NONE); /* auto, fp32 */
    ck_assert(x.train.loss_scale_init == 65536 && x.train.loss_scale_growth_factor == 2 &&
              x.train.loss_scale_backoff_factor == 0.5 && x.train.loss_scale_growth_interval == 2000);
    const char *fp16[] = { "train.precision=fp16" };
    ck_assert_msg(s_load(cfg, fp16, 1, &x, &e) == EQ_OK, "%s", e.msg);
    ck_assert_int_eq(x.train.precision, EQ_PREC_FP16);
    ck_assert_int_eq(x.model.precision, EQ_PREC_FP16);
    ck_assert_int_eq(x.train.loss_scale_mode, EQ_LOSS_SCALE_DYNAMIC);
    const char *bf16[] = { "train.precision=bf16" };
    ck_assert_msg(s_load(cfg, bf16, 1, &x, &e) == EQ_OK, "%s", e.msg);
    ck_assert_int_eq(x.model.precision, EQ_PREC_BF16);
    ck_assert_int_eq(x.train.loss_scale_mode, EQ_LOSS_SCALE_NONE);
    const char *fp16none[] = { "train.precision=fp16", "train.loss_scale=none" };
    ck_assert(s_load(cfg, fp16none, 2, &x, &e) == EQ_OK);
    ck_assert_int_eq(x.train.loss_scale_mode, EQ_LOSS_SCALE_NONE);
    const char *dyn[] = { "train.loss_scale=dynamic", "train.loss_scale_init=1024",
                          "train.loss_scale_growth_interval=5" };
    ck_assert(s_load(cfg, dyn, 3, &x, &e) == EQ_OK);
    ck_assert_int_eq(x.train.loss_scale_mode, EQ_LOSS_SCALE_DYNAMIC);
    ck_assert(x.train.loss_scale_init == 1024 && x.train.loss_scale_growth_interval == 5);
    const char *stat[] = { "train.loss_scale=128" };
    ck_assert(s_load(cfg, stat, 1, &x, &e) == EQ_OK);
    ck_assert_int_eq(x.train.loss_scale_mode, EQ_LOSS_SCALE_STATIC);
    ck_assert(x.train.loss_scale_value == 128);
    /* errors name the key and the value */
    static const struct {
        const char *set, *want1, *want2;
    } bad[] = {
        { "train.loss_scale=big", "loss_scale", "big" },
        { "train.loss_scale=-4", "loss_scale", "-4" },
        { "train.loss_scale=0", "loss_scale", "'0'" },
        { "train.loss_scale=1e39", "loss_scale", "1e39" },
        { "train.loss_scale=nan", "loss_scale", "nan" },
        { "train.loss_scale_backoff_factor=1", "loss_scale_backoff_factor", "(0, 1)" },
        { "train.loss_scale_backoff_factor=0", "loss_scale_backoff_factor", "(0, 1)" },
        { "train.loss_scale_backoff_factor=1.5", "loss_scale_backoff_factor", "1.5" },
        { "train.loss_scale_growth_factor=1", "loss_scale_growth_factor", "> 1" },
        { "train.loss_scale_growth_factor=0.5", "loss_scale_growth_factor", "0.5" },
        { "train.loss_scale_init=0", "loss_scale_init", ">= 1.17549e-38" },
        { "train.loss_scale_init=1e-40", "loss_scale_init", "1e-40" }, /* 1/scale: inf as a float */
        { "train.loss_scale=1e-40", "loss_scale", "1e-40" },
        { "train.loss_scale_init=1e40", "loss_scale_init", "1e40" },
        { "train.loss_scale_growth_interval=0", "loss_scale_growth_interval", "0" },
        { "train.precision=fp8", "precision", "fp8" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *sets[1] = { bad[i].set };
        ck_assert_msg(s_load(cfg, sets, 1, &x, &e) == EQ_ERR_INVALID, "%s accepted", bad[i].set);
        ck_assert_msg(strstr(e.msg, bad[i].want1) && strstr(e.msg, bad[i].want2), "%s: '%s' does not say %s and %s",
                      bad[i].set, e.msg, bad[i].want1, bad[i].want2);
    }
    eq_test_scratch_rm(dir);
}
END_TEST

/* ---- the real programs ---------------------------------------------------------------- */


/* A tiny synthetic ImageFolder (4 classes x 16, 12x12x3), an experiment on
 * it (the default one -- LSQ 4-bit, weight decay, SGDR -- at width 2, batch
 * 16: 4 steps per epoch) and an eq-loader serving it. */
typedef eq_tinyjob s_env;

static void s_env_up(s_env *v, const char *name)
{
    eq_synth_cfg sc = { .classes = 4, .train_per_class = 16, .val_per_class = 2, .mean_pixels = 600, .seed = 9,
                        .nthreads = 1 };
    eq_tinyjob_up(v, name, &sc,
            "[loader]\nthreads = 1\ndatasets = tiny=%s\n[data]\ndataset = tiny\nheight = 12\nwidth = 12\nchannels = 3\n"
            "global_batch = 16\naug_train = center\naug_val = center\n[model]\nnum_classes = 4\nin_channels = 3\n"
            "width_alpha = 0.125\n[train]\nname = amp\nmean = 0.5, 0.5, 0.5\nstd = 0.25, 0.25, 0.25\nthreads = 1\n"
            "eval_every = 0\ntimeout_ms = 20000\n");
}

/* EQ_SCALER_KEEP: keep logs and checkpoints for a look */
static void s_env_down(s_env *v) { eq_tinyjob_down(v, "EQ_SCALER_KEEP"); }

/* eq-trainer on v with out_dir dir/tag, the `sets` (NULL-ended) and
 * optionally --resume; its exit status (the log is printed when it is not
 * `expect`). */
static int s_train(s_env *v, const char *tag, const char *const *sets, const char *resume, int expect)
{
    char out[4300], logp[4300];
    snprintf(out, sizeof out, "train.out_dir=%s/%s", v->dir, tag);
    snprintf(logp, sizeof logp, "%s/%s.log", v->dir, tag);
    char *a[48];
    int k = 0;
    a[k++] = "eq-trainer", a[k++] = "--config", a[k++] = v->cfg, a[k++] = "--set", a[k++] = out;
    for (int i = 0; sets && sets[i]; i++) a[k++] = "--set", a[k++] = (char *)sets[i];
    if (resume) a[k++] = "--resume", a[k++] = (char *)resume;
    a[k++] = "--loaders", a[k++] = v->ld_ep, a[k] = NULL;
    int rc = eq_test_wait(eq_test_spawn(a, logp), 90000);
    if (rc != expect) eq_test_cat(logp);
    ck_assert_msg(rc == expect, "eq-trainer %s: exit %d, expected %d", tag, rc, expect);
    return rc;
}

/* How many lines of dir/tag.log contain `pat`. */
static int s_log_count(s_env *v, const char *tag, const char *pat)
{
    char path[4300], line[2048];
    snprintf(path, sizeof path, "%s/%s.log", v->dir, tag);
    FILE *f = fopen(path, "r");
    int n = 0;
    while (f && fgets(line, sizeof line, f)) n += strstr(line, pat) != NULL;
    if (f) fclose(f);
    return n;
}

/* How many lines of `path` contain `pat`. */
static int s_file_count(const char *path, const char *pat)
{
    char line[4096];
    FILE *f = fopen(path, "r");
    int n = 0;
    while (f && fgets(line, sizeof line, f)) n += strstr(line, pat) != NULL;
    if (f) fclose(f);
    return n;
}

/* Two ranks of v with out_dir dir/tag and `sets`; logs dir/tag.rankR.log;
 * both must exit 0. */
static void s_two_ranks(s_env *v, const char *tag, const char *const *sets)
{
    char out[4300], ctl[4300], ring[2][4300], logp[2][4300];
    snprintf(out, sizeof out, "train.out_dir=%s/%s", v->dir, tag);
    snprintf(ctl, sizeof ctl, "ipc://%s/%s.ctl", v->dir, tag);
    pid_t p[2];
    for (int r = 0; r < 2; r++) {
        snprintf(ring[r], sizeof ring[r], "ipc://%s/%s.ring%d", v->dir, tag, r);
        snprintf(logp[r], sizeof logp[r], "%s/%s.rank%d.log", v->dir, tag, r);
        char *a[48];
        int k = 0;
        a[k++] = "eq-trainer", a[k++] = "--config", a[k++] = v->cfg, a[k++] = "--set", a[k++] = out;
        for (int i = 0; sets[i]; i++) a[k++] = "--set", a[k++] = (char *)sets[i];
        a[k++] = "--loaders", a[k++] = v->ld_ep, a[k++] = r ? "--rendezvous" : "--control", a[k++] = ctl;
        a[k++] = "--rank", a[k++] = r ? "1" : "0", a[k++] = "--world", a[k++] = "2", a[k++] = "--dist-bind";
        a[k++] = ring[r], a[k] = NULL;
        p[r] = eq_test_spawn(a, logp[r]);
    }
    int rc0 = eq_test_wait(p[0], 90000), rc1 = eq_test_wait(p[1], 10000);
    if (rc0 || rc1) {
        eq_test_cat(logp[0]);
        eq_test_cat(logp[1]);
    }
    ck_assert_msg(rc0 == 0 && rc1 == 0, "two ranks (%s): exit %d and %d", tag, rc0, rc1);
}

static const char *s_meta(eq_st_file *f, const char *key)
{
    const char *v = eq_st_meta_get(f, key);
    return v ? v : "(absent)";
}

static bool s_differ(s_env *v, const char *a, const char *b, const char *name);

START_TEST(test_static_scale_same_bits)
{
    s_env v;
    s_env_up(&v, "scaler-static");
    const char *none[] = { "train.loss_scale=none", NULL };
    const char *s1024[] = { "train.loss_scale=1024", NULL };
    const char *big[] = { "train.loss_scale=1099511627776", NULL }; /* 2^40 */
    const char *dyn[] = { "train.loss_scale=dynamic", "train.loss_scale_growth_interval=2", NULL };
    const char *none2[] = { "train.loss_scale=none", "train.iter_size=2", NULL };
    const char *dyn2[] = { "train.loss_scale=dynamic", "train.iter_size=2", NULL };
    s_train(&v, "none", none, NULL, 0);
    s_train(&v, "s1024", s1024, NULL, 0);
    s_train(&v, "big", big, NULL, 0);
    s_train(&v, "dyn", dyn, NULL, 0);
    s_train(&v, "none2", none2, NULL, 0);
    s_train(&v, "dyn2", dyn2, NULL, 0);
    eq_test_same_bits(v.dir, "none", "s1024", 0);
    eq_test_same_bits(v.dir, "none", "big", 0);
    eq_test_same_bits(v.dir, "none", "dyn", 0);
    eq_test_same_bits(v.dir, "none2", "dyn2", 0);
    /* with quantization losses (a policy from the start): still the bits of
     * no scaling, and not the bits of no quantization loss */
    char pol[4300], polset[4400];
    snprintf(pol, sizeof pol, "%s/ql.policy", v.dir);
    FILE *pf = fopen(pol, "w");
    ck_assert_ptr_nonnull(pf);
    fprintf(pf, "on init:\nby_index: all\nby_tag: wt\nquant_loss_enable: True\nquant_loss_function: L2\n"
                "quant_loss_alpha: 0.5\nby_index: all\nby_tag: fm\nquant_loss_enable: True\n"
                "quant_loss_function: L1\nquant_loss_alpha: 2\n");
    fclose(pf);
    snprintf(polset, sizeof polset, "train.policy=%s", pol);
    const char *qnone[] = { "train.loss_scale=none", polset, NULL };
    const char *qdyn[] = { "train.loss_scale=dynamic", "train.loss_scale_growth_interval=2", polset, NULL };
    s_train(&v, "qnone", qnone, NULL, 0);
    s_train(&v, "qdyn", qdyn, NULL, 0);
    eq_test_same_bits(v.dir, "qnone", "qdyn", 0);
    ck_assert_msg(s_differ(&v, "qnone", "none", "fc.weight"), "the quantization loss changed nothing");
    /* dyn grew twice in its 4 steps (interval 2) and skipped nothing */
    eq_st_file *f = eq_tinyjob_ckpt(&v, "dyn", "last.safetensors");
    ck_assert_str_eq(s_meta(f, "loss_scale"), "262144");
    ck_assert_str_eq(s_meta(f, "loss_scale_growth_tracker"), "0");
    eq_st_close(&f);
    ck_assert_int_eq(s_log_count(&v, "dyn", "optimiser step skipped"), 0);
    ck_assert_int_eq(s_log_count(&v, "dyn", "0 optimiser step(s) skipped (inf/NaN gradients), loss scale 262144"), 1);
    /* no scaling: no scaler metadata */
    f = eq_tinyjob_ckpt(&v, "none", "last.safetensors");
    ck_assert_ptr_null(eq_st_meta_get(f, "loss_scale"));
    eq_st_close(&f);
    s_env_down(&v);
}
END_TEST

/* What the trainer should do with a dynamic scale starting at `init`
 * (backoff 0.5, no growth): the steps it skips before the first one whose
 * gradients are finite, found in this process -- the same batches from the
 * loader, forward/loss/backward on the initial weights (a skipped step
 * changes no parameter) and the inf/NaN count. */
static int s_expected_skips(s_env *v, double init, int max)
{
    eq_err e = { 0 };
    eq_experiment x;
    ck_assert_msg(eq_experiment_load(&x, v->cfg, NULL, 0, NULL, &e) == EQ_OK, "%s", e.msg);
    eq_backend *be = eq_backend_cpu_new(1, &e);
    ck_assert_msg(be != NULL, "%s", e.msg);
    eq_model *m = eq_model_new_ot(be, &x.model, &x.wt, &x.fm, &x.ot, 16, 12, 12, &e);
    ck_assert_msg(m != NULL, "%s", e.msg);
    void *z = zmq_ctx_new();
    const char *lds[1] = { v->ld_ep };
    eq_feeder_cfg fc = { .loaders = lds, .nloaders = 1, .timeout_ms = 20000, .name = "scaler-ref" };
    eq_feeder *fd = eq_feeder_new(z, &fc, &e);
    ck_assert_msg(fd != NULL, "%s", e.msg);
    eq_msg job;
    eq_msg_job_ok ok;
    int ji;
    ck_assert_msg(eq_loader_data_job(&x.data, "train", &job, &e) == EQ_OK, "%s", e.msg);
    ck_assert_msg(eq_feeder_add_job(fd, &job, &ok, &ji, &e) == EQ_OK, "%s", e.msg);
    float *xin = malloc(16 * 12 * 12 * 3 * sizeof(float)), lam[16];
    int32_t ya[16], yb[16];
    ck_assert_ptr_nonnull(xin);
    float scale = (float)init;
    int skips = -1;
    for (int g = 0; g < max && skips < 0; g++) {
        int ep = g / 4, s = g % 4; /* 4 steps per epoch */
        if (s == 0)
            ck_assert_msg(eq_feeder_pass(fd, ji, (uint64_t)ep, 0, 4, 0, 16, UINT64_MAX, &e) == EQ_OK, "%s", e.msg);
        eq_feeder_batch b;
        bool mixed;
        ck_assert_msg(eq_feeder_next(fd, &b, &e) == EQ_OK, "%s", e.msg);
        ck_assert_msg(eq_train_stage(&b, 16, 4, x.train.mean, x.train.std, xin, ya, yb, lam, &mixed, &e) == EQ_OK,
                      "%s", e.msg);
        float loss;
        int64_t n;
        eq_model_set_noise_key(m, eq_rng_mix(eq_rng_mix((uint64_t)ep, (uint64_t)s), 0));
        ck_assert_msg(eq_model_set_loss_scale(m, scale, &e) == EQ_OK, "%s", e.msg);
        ck_assert_msg(eq_model_forward(m, xin, true, &e) == EQ_OK, "%s", e.msg);
        ck_assert_msg(eq_model_loss(m, ya, NULL, NULL, 0, &loss, &e) == EQ_OK, "%s", e.msg);
        ck_assert_msg(eq_model_backward(m, NULL, &e) == EQ_OK, "%s", e.msg);
        ck_assert_msg(eq_scaler_nonfinite(m, &n, &e) == EQ_OK, "%s", e.msg);
        fprintf(stderr, "reference epoch %d step %d: scale %g, %lld inf/NaN gradient values\n", ep, s, (double)scale,
                (long long)n);
        if (n == 0) skips = g;
        scale = (float)((double)scale * 0.5);
    }
    free(xin);
    eq_feeder_destroy(&fd);
    zmq_ctx_term(z);
    eq_model_destroy(&m);
    eq_backend_destroy(&be);
    return skips;
}

/* The model's initial parameters (the trainer builds the same). */
static void s_initial_params(s_env *v, const char *tag, int64_t optim_steps)
{
    eq_err e = { 0 };
    eq_experiment x;
    ck_assert_msg(eq_experiment_load(&x, v->cfg, NULL, 0, NULL, &e) == EQ_OK, "%s", e.msg);
    eq_backend *be = eq_backend_cpu_new(1, &e);
    eq_model *m = eq_model_new_ot(be, &x.model, &x.wt, &x.fm, &x.ot, 16, 12, 12, &e);
    ck_assert_msg(m != NULL, "%s", e.msg);
    eq_st_file *f = eq_tinyjob_ckpt(v, tag, "last.safetensors");
    size_t nparam = 0, nopt = 0;
    for (size_t i = 0; i < eq_model_tensor_count(m); i++) {
        const eq_model_tensor *t = eq_model_tensor_at(m, i);
        if (t->kind != EQ_MT_PARAM || t->quant) continue; /* LSQ's step sizes initialise on the first forward */
        long j = eq_st_find(f, t->name);
        ck_assert_int_ge(j, 0);
        ck_assert_msg(!memcmp(eq_st_data(f, (size_t)j, NULL), t->data, t->numel * 4), "%s moved on a skipped step",
                      t->name);
        nparam++;
    }
    for (size_t i = 0; i < eq_st_count(f); i++) {
        if (strncmp(eq_st_name(f, i), "optim.", 6)) continue;
        size_t nb;
        const float *d = eq_st_data(f, i, &nb);
        for (size_t k = 0; k < nb / 4; k++) ck_assert_msg(d[k] == 0.0f, "%s is not zero", eq_st_name(f, i));
        nopt++;
    }
    char want[32];
    snprintf(want, sizeof want, "%lld", (long long)optim_steps);
    ck_assert_str_eq(s_meta(f, "optim_steps"), want);
    ck_assert_uint_gt(nparam, 10);
    ck_assert_uint_gt(nopt, 10);
    eq_st_close(&f);
    eq_model_destroy(&m);
    eq_backend_destroy(&be);
}

START_TEST(test_dynamic_overflow)
{
    s_env v;
    s_env_up(&v, "scaler-overflow");
    /* 2^127: fp32's largest power of two; the backward overflows */
    const double init = ldexp(1, 127);
    int K = s_expected_skips(&v, init, 60);
    fprintf(stderr, "reference: %d skipped steps from 2^127\n", K);
    ck_assert_msg(K >= 1, "the reference found no step to skip from 2^127");
    /* the trainer over the epochs (of 4 steps) that hold step K, no growth */
    char ep[64];
    snprintf(ep, sizeof ep, "schedule.epochs=%d", K / 4 + 1);
    const char *run[] = { "train.loss_scale=dynamic", "train.loss_scale_init=1.7014118346046923e38",
                          "train.loss_scale_growth_interval=1000", ep, NULL };
    s_train(&v, "dyn", run, NULL, 0);
    ck_assert_int_eq(s_log_count(&v, "dyn", "optimiser step skipped"), K);
    char pat[128];
    for (int s = 0; s < K; s++) {
        snprintf(pat, sizeof pat, "epoch %d step %d: ", s / 4, s % 4);
        ck_assert_msg(s_log_count(&v, "dyn", pat) == 1, "step %d was not skipped", s);
    }
    /* the scale after K backoffs, in the checkpoint */
    eq_st_file *f = eq_tinyjob_ckpt(&v, "dyn", "last.safetensors");
    char want[64];
    snprintf(want, sizeof want, "%.17g", ldexp(1, 127 - K));
    ck_assert_str_eq(s_meta(f, "loss_scale"), want);
    eq_st_close(&f);
    /* metrics.jsonl: the epoch lines carry the skips and the scale */
    char mpath[4400];
    snprintf(mpath, sizeof mpath, "%s/dyn/metrics.jsonl", v.dir);
    snprintf(pat, sizeof pat, "\"kind\":\"epoch\",\"epoch\":0,");
    ck_assert_int_eq(s_file_count(mpath, pat), 1);
    snprintf(pat, sizeof pat, "\"skipped\":%d}", K < 4 ? K : 4);
    ck_assert_int_ge(s_file_count(mpath, pat), 1);
    /* the skipped steps alone: parameters and optimiser state untouched */
    char ep2[64];
    const char *only[] = { "train.loss_scale=dynamic", "train.loss_scale_init=1.7014118346046923e38",
                           "train.loss_scale_growth_interval=1000", ep2, NULL };
    if (K % 4 == 0) {
        snprintf(ep2, sizeof ep2, "schedule.epochs=%d", K / 4);
    } else if (K < 4) {
        snprintf(ep2, sizeof ep2, "train.max_steps=%d", K);
    } else {
        fprintf(stderr, "%d skipped steps: not a whole number of epochs, the parameters are not checked\n", K);
        s_env_down(&v);
        return;
    }
    s_train(&v, "skipped", only, NULL, 0);
    s_initial_params(&v, "skipped", 0);
    snprintf(pat, sizeof pat, "%d optimiser step(s) skipped (inf/NaN gradients)", K < 4 ? K : 4);
    ck_assert_int_eq(s_log_count(&v, "skipped", pat), K < 4 ? 1 : K / 4);
    /* two ranks: the gradients are averaged before the test, so both ranks
     * find the same inf/NaN and skip the same steps (a rank that stepped
     * alone would leave the ranks' weights apart; here both report the
     * same counts and finish) */
    s_two_ranks(&v, "dp", run);
    for (int r = 0; r < 2; r++) {
        char tag[24];
        snprintf(tag, sizeof tag, "dp.rank%d", r);
        snprintf(pat, sizeof pat, "epoch 0 loss scaling: %d optimiser step(s) skipped", K < 4 ? K : 4);
        ck_assert_msg(s_log_count(&v, tag, pat) == 1, "rank %d: no '%s'", r, pat);
    }
    s_env_down(&v);
}
END_TEST

START_TEST(test_resume)
{
    s_env v;
    s_env_up(&v, "scaler-resume");
    /* two epochs of 4 steps, growth every 3 successes: after epoch 0 the
     * scale grew once and the tracker is 1; resumed from there the second
     * epoch ends with the bits and the scaler state of the uninterrupted run */
    const char *dyn[] = { "train.loss_scale=dynamic", "train.loss_scale_init=256", "train.loss_scale_growth_interval=3",
                          "schedule.epochs=2", NULL };
    s_train(&v, "full", dyn, NULL, 0);
    eq_st_file *f = eq_tinyjob_ckpt(&v, "full", "epoch0.safetensors");
    ck_assert_str_eq(s_meta(f, "loss_scale"), "512");
    ck_assert_str_eq(s_meta(f, "loss_scale_growth_tracker"), "1");
    eq_st_close(&f);
    f = eq_tinyjob_ckpt(&v, "full", "last.safetensors");
    ck_assert_str_eq(s_meta(f, "loss_scale"), "1024"); /* grew after the 3rd and 6th step */
    ck_assert_str_eq(s_meta(f, "loss_scale_growth_tracker"), "2");
    eq_st_close(&f);
    char from[4400];
    snprintf(from, sizeof from, "%s/full/epoch0.safetensors", v.dir);
    s_train(&v, "resumed", dyn, from, 0);
    ck_assert_int_eq(s_log_count(&v, "resumed", "loss scale 512, growth tracker 1 from"), 1);
    eq_test_same_bits(v.dir, "full", "resumed", 0);
    f = eq_tinyjob_ckpt(&v, "resumed", "last.safetensors");
    ck_assert_str_eq(s_meta(f, "loss_scale"), "1024");
    ck_assert_str_eq(s_meta(f, "loss_scale_growth_tracker"), "2");
    eq_st_close(&f);
    /* resumed with a growth_interval (1) at or below the saved tracker (1):
     * grows at the next success, then at every one: 512 -> 8192 */
    const char *dyn1[] = { "train.loss_scale=dynamic", "train.loss_scale_init=256", "train.loss_scale_growth_interval=1",
                           "schedule.epochs=2", NULL };
    snprintf(from, sizeof from, "%s/full/epoch0.safetensors", v.dir);
    s_train(&v, "interval1", dyn1, from, 0);
    f = eq_tinyjob_ckpt(&v, "interval1", "last.safetensors");
    ck_assert_str_eq(s_meta(f, "loss_scale"), "8192");
    ck_assert_str_eq(s_meta(f, "loss_scale_growth_tracker"), "0");
    eq_st_close(&f);
    /* resumed without loss scaling: the saved scale is not used, and the log says so */
    const char *nosc[] = { "train.loss_scale=none", "schedule.epochs=2", NULL };
    s_train(&v, "tonone", nosc, from, 0);
    ck_assert_int_eq(s_log_count(&v, "tonone", "holds loss scale 512 (growth tracker 1), not used: [train] "
                                               "loss_scale is none (precision fp32)"),
                     1);
    f = eq_tinyjob_ckpt(&v, "tonone", "last.safetensors");
    ck_assert_str_eq(s_meta(f, "loss_scale"), "(absent)");
    eq_st_close(&f);
    /* a checkpoint without scaler state (a run without loss scaling, as an
     * older checkpoint): loss_scale_init, tracker 0 -> grows after steps 3
     * of the resumed epoch only */
    const char *none[] = { "train.loss_scale=none", "schedule.epochs=2", NULL };
    s_train(&v, "plain", none, NULL, 0);
    snprintf(from, sizeof from, "%s/plain/epoch0.safetensors", v.dir);
    s_train(&v, "fromplain", dyn, from, 0);
    ck_assert_int_eq(s_log_count(&v, "fromplain", "holds no loss scale: starting at loss_scale_init 256"), 1);
    f = eq_tinyjob_ckpt(&v, "fromplain", "last.safetensors");
    ck_assert_str_eq(s_meta(f, "loss_scale"), "512");
    ck_assert_str_eq(s_meta(f, "loss_scale_growth_tracker"), "1");
    eq_st_close(&f);
    eq_test_same_bits(v.dir, "plain", "fromplain", 0); /* fp32, powers of two: the same weights */
    s_env_down(&v);
}
END_TEST

/* The number in the last "N optimiser step(s) skipped" line of tag's log
 * (-1: none). */
static int s_skipped(s_env *v, const char *tag)
{
    char path[4300], line[2048];
    snprintf(path, sizeof path, "%s/%s.log", v->dir, tag);
    FILE *f = fopen(path, "r");
    int n = -1;
    while (f && fgets(line, sizeof line, f)) {
        char *p = strstr(line, " optimiser step(s) skipped");
        if (!p) continue;
        while (p > line && p[-1] >= '0' && p[-1] <= '9') p--;
        n = atoi(p);
    }
    if (f) fclose(f);
    return n;
}

/* Did training move fc.weight away from tag b's (bitwise)? */
static bool s_differ(s_env *v, const char *a, const char *b, const char *name)
{
    eq_st_file *fa = eq_tinyjob_ckpt(v, a, "last.safetensors"), *fb = eq_tinyjob_ckpt(v, b, "last.safetensors");
    long i = eq_st_find(fa, name), j = eq_st_find(fb, name);
    ck_assert(i >= 0 && j >= 0);
    size_t na, nb;
    const float *da = eq_st_data(fa, (size_t)i, &na), *db = eq_st_data(fb, (size_t)j, &nb);
    ck_assert_uint_eq(na, nb);
    bool differ = memcmp(da, db, na) != 0;
    for (size_t k = 0; k < na / 4; k++) ck_assert_msg(isfinite(da[k]) && isfinite(db[k]), "%s[%zu] not finite", name, k);
    eq_st_close(&fa);
    eq_st_close(&fb);
    return differ;
}

/* fp16 and bf16 through the layer graph (an emulation on the CPU backend):
 * the default fp16 run (dynamic from 65536) overflows where fp32 from the
 * same scale does not (fp16's range ends at 65504), backs off until steps
 * succeed and trains; a bf16 run (no scaling by default) trains.  Both end
 * with finite losses and weights that differ from fp32's. */
START_TEST(test_fp16_bf16)
{
    s_env v;
    s_env_up(&v, "scaler-fp16");
    const char *f32[] = { "schedule.epochs=2", "train.loss_scale=dynamic", NULL };
    const char *f16[] = { "schedule.epochs=2", "train.precision=fp16", NULL };
    const char *b16[] = { "schedule.epochs=2", "train.precision=bf16", NULL };
    const char *plain[] = { "schedule.epochs=2", NULL };
    s_train(&v, "fp32", f32, NULL, 0);
    s_train(&v, "plain", plain, NULL, 0);
    s_train(&v, "fp16", f16, NULL, 0);
    s_train(&v, "bf16", b16, NULL, 0);
    /* fp32 from 65536: nothing overflows, the bits of no scaling */
    ck_assert_int_eq(s_log_count(&v, "fp32", "optimiser step skipped"), 0);
    eq_test_same_bits(v.dir, "fp32", "plain", 0);
    /* fp16 from 65536: overflows, backs off, then steps */
    int sk = s_log_count(&v, "fp16", "optimiser step skipped");
    eq_st_file *f = eq_tinyjob_ckpt(&v, "fp16", "last.safetensors");
    const char *ls = s_meta(f, "loss_scale");
    fprintf(stderr, "fp16 from 65536: %d of 8 steps skipped, loss scale %s at the end\n", sk, ls);
    ck_assert_msg(sk >= 1 && sk < 8, "fp16 from 65536: %d of 8 steps skipped", sk);
    ck_assert_msg(strtod(ls, NULL) < 65536.0 && strtod(ls, NULL) >= 1.0, "fp16: loss scale %s at the end", ls);
    char want[64];
    snprintf(want, sizeof want, "%d", 8 - sk); /* the optimiser stepped on the other steps */
    ck_assert_str_eq(s_meta(f, "optim_steps"), want);
    eq_st_close(&f);
    ck_assert_int_eq(s_log_count(&v, "fp16", "precision fp16 on the cpu backend is an emulation"), 1);
    ck_assert_int_eq(s_log_count(&v, "fp16", "inf/NaN gradient values at loss scale 65536: optimiser step skipped; "
                                             "loss scale now 32768"),
                     1);
    ck_assert_msg(s_differ(&v, "fp16", "plain", "fc.weight"), "fp16: the weights of fp32");
    /* bf16: no scaling by default, trains, rounds */
    f = eq_tinyjob_ckpt(&v, "bf16", "last.safetensors");
    ck_assert_ptr_null(eq_st_meta_get(f, "loss_scale"));
    ck_assert_str_eq(s_meta(f, "optim_steps"), "8");
    eq_st_close(&f);
    ck_assert_int_eq(s_skipped(&v, "bf16"), -1);
    ck_assert_int_eq(s_log_count(&v, "bf16", "precision bf16 on the cpu backend is an emulation"), 1);
    ck_assert_msg(s_differ(&v, "bf16", "plain", "fc.weight"), "bf16: the weights of fp32 (nothing rounded?)");
    /* every run's losses are finite (a NaN/inf loss would have stopped it) */
    const char *tags[] = { "fp16", "bf16" };
    for (int i = 0; i < 2; i++) ck_assert_int_ge(s_log_count(&v, tags[i], "epoch 1 done: mean loss "), 1);
    s_env_down(&v);
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("scaler");
    TCase *tc = tcase_create("unit");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_update_rule);
    tcase_add_test(tc, test_init_errors);
    tcase_add_test(tc, test_model_ops);
    tcase_add_test(tc, test_quant_loss_scaled);
    tcase_add_test(tc, test_model_ops_device);
    tcase_add_test(tc, test_config);
    tcase_add_test(tc, test_ckpt_meta);
    suite_add_tcase(s, tc);
    TCase *tp = tcase_create("programs");
    tcase_set_timeout(tp, 240);
    tcase_add_test(tp, test_static_scale_same_bits);
    tcase_add_test(tp, test_dynamic_overflow);
    tcase_add_test(tp, test_resume);
    tcase_add_test(tp, test_fp16_bf16);
    suite_add_tcase(s, tp);
    return s;
}

int main(void) { return eq_test_run(s_suite()); }
