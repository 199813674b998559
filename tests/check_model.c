/*
 * tests/check_model.c -- trainer/model.h, layers.h, optim.h and
 * checkpoint.h on the CPU backend.
 *
 * 1. Parity with PyTorch (tests/fixtures/models/gen_models.py, float64
 *    references): torchvision ResNet-18 (thin), the original's ResNet-20
 *    (origin,cbsa,fix,real_skip...), a Bi-Real ResNet-20 with PReLU on one
 *    input channel, a pre-activation ResNet-18 (preBN,bacs): weights loaded
 *    by PyTorch name from safetensors, then logits, loss, every gradient
 *    and the BN running statistics within 1e-4 relative (norm-wise); then
 *    three SGD steps.  The 2-bit LSQ ResNet-20 is also compared layer by
 *    layer (each quantized conv's activation levels against PyTorch's) and
 *    its steps are teacher-forced (each starts from PyTorch's state), so a
 *    level that another float32 summation order rounds the other way is
 *    told from a bug and does not compound (s_levels).
 * 2. torchvision names and shapes of torch-resnet18/50 at full width.
 * 3. Quantized conv: the layer equals conv(Qf(pad(x)), Qw(W)) computed from
 *    the quantizers directly, for padding before and after quantization;
 *    its input gradient and the quantizer parameter gradient are non-zero
 *    and match finite differences of the loss through the clip value where
 *    the quantizer is differentiable.
 * 4. Checkpoints: save/load round trip, errors that name the tensor, keep
 *    last N and best, and bit-exact resume of SGD training.
 * 5. Config schemas, lr schedules, decay groups.
 */
#include "trainer/checkpoint.h"
#include "trainer/layers.h"
#include "trainer/model.h"
#include "trainer/model_run.h"
#include "trainer/optim.h"
#include "tests/testutil.h"

#include <math.h>
#include <sys/stat.h>

#define TOL 1e-4

#define OK(call)                                                              \
    do {                                                                      \
        eq_status s_ = (call);                                                \
        ck_assert_msg(s_ == EQ_OK, "%s failed: %s", #call, err.msg);          \
    } while (0)

static eq_st_file *s_fixture(const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/models/%s", eq_test_srcdir(), name);
    eq_err err = {0};
    eq_st_file *f = eq_st_open(path, NULL, &err);
    ck_assert_msg(f != NULL, "fixture %s: %s", path, err.msg);
    return f;
}

/* Model config from the fixture's metadata. */
static void s_cfg_from(const eq_st_file *f, eq_model_cfg *c)
{
    eq_err err = {0};
    eq_config_section secs[EQ_MODEL_CONFIG_NSECTIONS];
    eq_model_config_sections(c, NULL, NULL, secs);
    OK(eq_config_defaults(secs, EQ_MODEL_CONFIG_NSECTIONS, &err));
    snprintf(c->arch, sizeof c->arch, "%s", eq_st_meta_get(f, "arch"));
    c->width_alpha = atof(eq_st_meta_get(f, "width_alpha"));
    c->num_classes = atoi(eq_st_meta_get(f, "num_classes"));
    c->in_channels = atoi(eq_st_meta_get(f, "in_channels"));
    const char *kw = eq_st_meta_get(f, "keyword");
    c->nkeyword = 0;
    while (kw && *kw) {
        const char *e = strchr(kw, ',');
        size_t len = e ? (size_t)(e - kw) : strlen(kw);
        snprintf(c->keyword[c->nkeyword++], sizeof c->keyword[0], "%.*s", (int)len, kw);
        kw = e ? e + 1 : kw + len;
    }
}

/* Quantizers from the fixture's "quant" metadata ("lsq2": LSQ 2 bits). */
static void s_quant_from(const eq_st_file *f, eq_model_quant_cfg *wt, eq_model_quant_cfg *fm)
{
    eq_err err = {0};
    eq_config_section secs[EQ_MODEL_CONFIG_NSECTIONS];
    eq_model_config_sections(NULL, wt, fm, secs);
    OK(eq_config_defaults(secs, EQ_MODEL_CONFIG_NSECTIONS, &err));
    const char *q = eq_st_meta_get(f, "quant");
    if (!q) return;
    wt->enable = fm->enable = true;
    if (!strcmp(q, "xnor")) { /* Bi-Real: Triangle activation gradient */
        snprintf(wt->method, sizeof wt->method, "xnor");
        snprintf(fm->method, sizeof fm->method, "xnor");
        wt->bit = fm->bit = 1;
        fm->grad_type = 2; /* "Triangle" */
        return;
    }
    ck_assert_str_eq(q, "lsq2");
    snprintf(wt->method, sizeof wt->method, "lsq");
    snprintf(fm->method, sizeof fm->method, "lsq");
    wt->bit = fm->bit = 2;
}

static const float *s_get(const eq_st_file *f, const char *name, size_t numel)
{
    eq_err err = {0};
    const float *p = eq_st_get_f32(f, name, (int64_t)numel, &err);
    ck_assert_msg(p != NULL, "%s", err.msg);
    return p;
}

/* Every F32 model tensor equals the fixture's `prefix` + name (quantizer
 * state: prefix + "quant." + name) within TOL. */
static void s_cmp_state(const eq_model *m, const eq_st_file *f, const char *fixture, const char *prefix,
                        const char *when)
{
    for (size_t i = 0; i < eq_model_tensor_count(m); i++) {
        const eq_model_tensor *t = eq_model_tensor_at(m, i);
        char name[512];
        snprintf(name, sizeof name, "%s%s%s", prefix, t->quant ? "quant." : "", t->name);
        if (t->dtype != EQ_DT_F32) continue;
        double e = eq_test_relerr(t->data, s_get(f, name, t->numel), t->numel);
        ck_assert_msg(e < TOL, "%s: %s %s: rel err %g", fixture, name, when, e);
    }
}

/* Layer by layer, the quantized activations of the last forward against
 * the fixture's levels<step>.<layer> (gen_models.py: the float64 level of
 * each element of the quantizer's input, flagged when that value lies
 * within LEVEL_NEAR = 1e-3 of the boundary to the next level up or down).
 * An element whose level differs is a flip; a flip to the flagged
 * neighbour is explained (float32 rounding: any summation order that is
 * not PyTorch's float64 one may do it), any other fails the test.  Layers
 * come in forward order (the fixture's, which is also the names' order);
 * after the first layer with a flip the rest are not compared: a flipped
 * input moves the later layers' values by far more than rounding, and
 * their levels with them.  Returns the number of explained flips; the
 * caller then skips the values downstream of them too. */
static size_t s_levels(const eq_model *m, const eq_st_file *f, const char *fixture, int step,
                       size_t *nlayers)
{
    char pre[32];
    int pl = snprintf(pre, sizeof pre, "levels%d.", step);
    size_t flips = 0, total = 0;
    const char *last = "";
    *nlayers = 0;
    for (size_t i = 0; i < eq_st_count(f); i++) {
        const char *nm = eq_st_name(f, i);
        if (strncmp(nm, pre, (size_t)pl) != 0) continue;
        const char *layer = nm + pl;
        ck_assert_msg(*nlayers == 0 || strcmp(layer, last) > 0, "%s: %s: levels out of forward order",
                      fixture, nm);
        last = layer;
        ++*nlayers;
        size_t nb = 0;
        const uint8_t *code = eq_st_data(f, i, &nb);
        ck_assert_int_eq(eq_st_desc(f, i)->dtype, EQ_DT_U8);
        total += nb;
        if (flips) continue; /* downstream of a flip */
        int64_t n = 0;
        const float *q = eq_model_quant_output(m, layer, EQ_QTAG_FM, &n);
        ck_assert_msg(q != NULL && (size_t)n == nb, "%s: %s: %lld quantized inputs, fixture %zu", fixture,
                      nm, (long long)n, nb);
        char cn[512];
        snprintf(cn, sizeof cn, "%s.quant_activation.clip_val", layer);
        const eq_model_tensor *ct = eq_model_tensor_find(m, cn);
        snprintf(cn, sizeof cn, "%s.quant_activation.level_num", layer);
        const eq_model_tensor *lt = eq_model_tensor_find(m, cn);
        ck_assert_msg(ct && lt, "%s: %s: no clip_val / level_num", fixture, layer);
        const double c = fabs((double)*(const float *)ct->data);
        const double lv = (double)*(const float *)lt->data - 1.0;
        size_t lf = 0;
        for (size_t e = 0; e < nb; e++) {
            const int want = code[e] & 0x0f;
            const int got = (int)lrint((double)q[e] / c * lv);
            if (got == want) continue;
            const bool explained = (got == want + 1 && (code[e] & 0x10)) || (got == want - 1 && (code[e] & 0x20));
            ck_assert_msg(explained,
                          "%s: step %d %s: element %zu at level %d, PyTorch's %d (code 0x%02x): a flip "
                          "that float32 rounding does not explain",
                          fixture, step, layer, e, got, want, code[e]);
            lf++;
        }
        if (lf)
            fprintf(stderr, "%s: step %d %s: %zu of %zu quantizer levels flipped, each explained (the "
                            "float64 value within 1e-3 of the boundary); this step's later layers and "
                            "values not compared\n",
                    fixture, step, layer, lf, nb);
        flips += lf;
    }
    /* a bounded fraction: more than 1 in 10^4 of the step's quantized
     * inputs is not rounding any more */
    ck_assert_msg(flips * 10000 <= total, "%s: step %d: %zu of %zu levels flipped", fixture, step, flips,
                  total);
    return flips;
}

static void s_parity(const char *fixture)
{
    eq_err err = {0};
    eq_st_file *f = s_fixture(fixture);
    eq_model_cfg cfg;
    s_cfg_from(f, &cfg);
    long xi = eq_st_find(f, "x");
    ck_assert(xi >= 0);
    const eq_tensor_desc *xd = eq_st_desc(f, (size_t)xi);
    int64_t n = xd->shape[0], h = xd->shape[1], w = xd->shape[2], c = xd->shape[3];
    eq_backend *be = eq_backend_cpu_new(2, &err);
    ck_assert_msg(be != NULL, "%s", err.msg);
    eq_model_quant_cfg wt, fm;
    s_quant_from(f, &wt, &fm);
    const char *qm = eq_st_meta_get(f, "quant");
    cfg.padding_after_quant = qm && !strcmp(qm, "xnor");
    eq_model *m = eq_model_new(be, &cfg, &wt, &fm, n, h, w, &err);
    ck_assert_msg(m != NULL, "%s: %s", fixture, err.msg);
    /* exactly the fixture's tensors, by name, dtype and shape */
    size_t missing = 9;
    OK(eq_checkpoint_load_tensors(m, f, "param.", false, false, &missing, &err));
    ck_assert_uint_eq(missing, 0);

    const float *x = s_get(f, "x", (size_t)(n * h * w * c));
    long yi = eq_st_find(f, "y");
    const int32_t *y = eq_st_data(f, (size_t)yi, NULL);
    OK(eq_model_forward(m, x, true, &err));
    size_t nlayers = 0, flips = s_levels(m, f, fixture, 0, &nlayers), flipped_steps = flips > 0;
    int64_t bn, k;
    const float *logits = eq_model_logits(m, &bn, &k);
    ck_assert_int_eq(bn, n);
    double e = eq_test_relerr(logits, s_get(f, "logits", (size_t)(n * k)), (size_t)(n * k));
    ck_assert_msg(flips || e < TOL, "%s: logits rel err %g", fixture, e);
    float loss;
    OK(eq_model_loss(m, y, NULL, NULL, 0.0f, &loss, &err));
    const float *ref_loss = s_get(f, "loss", 1);
    ck_assert_msg(flips || fabs(loss - ref_loss[0]) <= TOL * fabs(ref_loss[0]), "%s: loss %g vs %g",
                  fixture, loss, ref_loss[0]);
    OK(eq_model_backward(m, NULL, &err));
    size_t ngrad = 0, nstats = 0;
    for (size_t i = 0; i < eq_model_tensor_count(m); i++) {
        const eq_model_tensor *t = eq_model_tensor_at(m, i);
        char name[512];
        const char *qp = t->quant ? "quant." : "";
        if (t->kind == EQ_MT_PARAM) {
            snprintf(name, sizeof name, "grad.%s%s", qp, t->name);
            e = eq_test_relerr(t->grad, s_get(f, name, t->numel), t->numel);
            ck_assert_msg(flips || e < TOL, "%s: %s rel err %g", fixture, name, e);
            ngrad++;
        } else if (t->dtype == EQ_DT_F32) {
            snprintf(name, sizeof name, "stats.%s%s", qp, t->name);
            e = eq_test_relerr(t->data, s_get(f, name, t->numel), t->numel);
            ck_assert_msg(flips || e < TOL, "%s: %s rel err %g", fixture, name, e);
            nstats++;
        } else {
            snprintf(name, sizeof name, "stats.%s", t->name);
            long si = eq_st_find(f, name);
            ck_assert(si >= 0);
            int64_t want; /* the fixture's I64 data is not 8-byte aligned: memcpy, not a cast */
            memcpy(&want, eq_st_data(f, (size_t)si, NULL), sizeof want);
            ck_assert_int_eq(want, *(int64_t *)t->data);
        }
    }
    ck_assert_uint_gt(ngrad, 10);
    ck_assert_uint_gt(nstats, 4);
    long li = eq_st_find(f, "steps.loss");
    if (li >= 0) {
        /* SGD steps against torch.optim.SGD with the original's decay
         * groups.  Where the fixture has tf<s>.* (teacher forcing), step s
         * starts from PyTorch's state instead of eq's own: each step is
         * compared on its own (loss, then the state it leaves against the
         * next step's start), so that a flipped quantizer level, which
         * changes the gradients, cannot compound over the steps. */
        const eq_tensor_desc *ld = eq_st_desc(f, (size_t)li);
        const float *ref = s_get(f, "steps.loss", (size_t)ld->shape[0]);
        eq_optim_cfg oc;
        eq_config_section os[EQ_OPTIM_CONFIG_NSECTIONS];
        eq_optim_config_sections(&oc, NULL, os);
        OK(eq_config_defaults(os, 1, &err));
        oc.lr = 0.1, oc.nesterov = true;
        eq_optim *o = eq_optim_new(m, &oc, &err);
        ck_assert_msg(o != NULL, "%s", err.msg);
        OK(eq_optim_step(o, oc.lr, &err));
        size_t forced = 0;
        for (int64_t s = 1; s < ld->shape[0]; s++) {
            char pre[32];
            snprintf(pre, sizeof pre, "tf%d.", (int)s);
            char probe[512];
            snprintf(probe, sizeof probe, "%s%s", pre, eq_model_tensor_at(m, 0)->name);
            if (eq_st_find(f, probe) >= 0) {
                char when[64];
                snprintf(when, sizeof when, "after step %d", (int)s - 1);
                if (!flips) s_cmp_state(m, f, fixture, pre, when);
                OK(eq_checkpoint_load_tensors(m, f, pre, false, false, &missing, &err));
                forced++;
            } else {
                ck_assert_uint_eq(nlayers, 0); /* free-running steps compound flips */
            }
            OK(eq_model_forward(m, x, true, &err));
            flips = s_levels(m, f, fixture, (int)s, &nlayers);
            flipped_steps += flips > 0;
            OK(eq_model_loss(m, y, NULL, NULL, 0.0f, &loss, &err));
            ck_assert_msg(flips || fabs(loss - ref[s]) <= TOL * fabs(ref[s]), "%s: step %d: loss %g vs %g",
                          fixture, (int)s, loss, ref[s]);
            OK(eq_model_backward(m, NULL, &err));
            OK(eq_optim_step(o, oc.lr, &err));
        }
        if (!flips) s_cmp_state(m, f, fixture, "steps.", "after SGD");
        /* explained flips skip at most one step of three */
        ck_assert_msg(flipped_steps * 3 <= (size_t)ld->shape[0], "%s: levels flipped in %zu of %d steps",
                      fixture, flipped_steps, (int)ld->shape[0]);
        if (forced) ck_assert_uint_eq(forced, (size_t)ld->shape[0] - 1);
        eq_optim_destroy(&o);
    }
    ck_assert_msg(flipped_steps == 0 || li >= 0, "%s: levels flipped in its only step", fixture);
    eq_model_destroy(&m);
    ck_assert_ptr_null(m);
    eq_backend_destroy(&be);
    eq_st_close(&f);
}

START_TEST(test_parity_torch_resnet18)
{
    s_parity("torch_resnet18.safetensors");
}
END_TEST

START_TEST(test_parity_resnet20)
{
    s_parity("resnet20.safetensors");
}
END_TEST

START_TEST(test_parity_resnet20_bireal)
{
    s_parity("resnet20_bireal.safetensors");
}
END_TEST

START_TEST(test_parity_resnet20_lsq)
{
    s_parity("resnet20_lsq.safetensors");
}
END_TEST

START_TEST(test_parity_resnet20_xnor_bireal)
{
    s_parity("resnet20_xnor_bireal.safetensors");
}
END_TEST

START_TEST(test_parity_resnet18_prebn)
{
    s_parity("resnet18_prebn.safetensors");
}
END_TEST

/* ---- helpers for the remaining tests ---------------------------------------- */

static void s_defaults(eq_model_cfg *m, eq_model_quant_cfg *wt, eq_model_quant_cfg *fm)
{
    eq_err err = {0};
    eq_config_section secs[EQ_MODEL_CONFIG_NSECTIONS];
    eq_model_config_sections(m, wt, fm, secs);
    OK(eq_config_defaults(secs, EQ_MODEL_CONFIG_NSECTIONS, &err));
}

static void s_kw(eq_model_cfg *c, const char *list)
{
    c->nkeyword = 0;
    while (*list) {
        const char *e = strchr(list, ',');
        size_t len = e ? (size_t)(e - list) : strlen(list);
        snprintf(c->keyword[c->nkeyword++], sizeof c->keyword[0], "%.*s", (int)len, list);
        list = e ? e + 1 : list + len;
    }
}

/* ---- full-size torchvision ResNet-18 at 224x224 --------------------------------
 * tests/fixtures/models/gen_resnet18_224.py: weights, buffers and input from
 * a closed-form formula evaluated here and in numpy (the fixture keeps only
 * logits, loss and reductions of every gradient). */

static uint64_t s_fnv1a(const char *s)
{
    uint64_t h = 0xCBF29CE484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001B3ull;
    return h;
}

static double s_unit(uint64_t seed, uint64_t i)
{
    uint64_t z = seed + i + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return ((double)(z >> 40) * 2.0 + 1.0) / 16777216.0 - 1.0;
}

/* The generator's value(): the tensor `name` of `shape`, numel elements. */
static void s_r18_fill(const char *name, int ndim, const int64_t *shape, float *v, size_t numel)
{
    uint64_t seed = s_fnv1a(name);
    size_t len = strlen(name);
#define ENDS(suf) (len >= strlen(suf) && !strcmp(name + len - strlen(suf), suf))
    for (size_t i = 0; i < numel; i++) {
        double u = s_unit(seed, i);
        if (!strcmp(name, "x")) v[i] = (float)u;
        else if (ENDS("running_mean")) v[i] = (float)(0.1 * u);
        else if (ENDS("running_var")) v[i] = (float)(1.25 + 0.25 * u);
        else if (!strncmp(name, "fc.", 3)) v[i] = (float)(u / sqrt(512.0));
        else if (ndim == 4)
            v[i] = (float)(u * (sqrt(3.0) * sqrt(2.0 / (double)(shape[0] * shape[2] * shape[3]))));
        else if (ndim == 2) v[i] = (float)(u / sqrt((double)shape[1]));
        else if (ENDS(".weight")) v[i] = (float)(1.0 + 0.2 * u);
        else v[i] = (float)(0.1 * u);
    }
#undef ENDS
}

/* Parity against a closed-form fixture (gen_resnet18_224.py's format): the
 * model of the metadata's arch/num_classes/width_alpha/keyword at
 * batch x size x size x 3, weights and input from the formula. */
static void s_parity_closed_form(const char *fixture, size_t want_params, size_t want_stats)
{
    eq_err err = {0};
    eq_st_file *f = s_fixture(fixture);
    eq_backend *be = eq_backend_cpu_new(2, &err);
    ck_assert_msg(be != NULL, "%s", err.msg);
    eq_model_cfg cfg;
    s_defaults(&cfg, NULL, NULL);
    snprintf(cfg.arch, sizeof cfg.arch, "%s", eq_st_meta_get(f, "arch"));
    cfg.num_classes = atoi(eq_st_meta_get(f, "num_classes"));
    const char *wa = eq_st_meta_get(f, "width_alpha");
    if (wa) cfg.width_alpha = atof(wa);
    const char *kw = eq_st_meta_get(f, "keyword");
    if (kw) s_kw(&cfg, kw);
    const char *sk = eq_st_meta_get(f, "stem_kernel");
    if (sk) cfg.stem_kernel = atoi(sk);
    const char *bs = eq_st_meta_get(f, "base");
    if (bs) cfg.base = atoi(bs);
    const char *od = eq_st_meta_get(f, "order");
    if (od) snprintf(cfg.order, sizeof cfg.order, "%s", od);
    const int64_t n = atoi(eq_st_meta_get(f, "batch")), hw = atoi(eq_st_meta_get(f, "size"));
    eq_model *m = eq_model_new(be, &cfg, NULL, NULL, n, hw, hw, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    size_t maxn = (size_t)(n * hw * hw * 3), nx = maxn;
    for (size_t t = 0; t < eq_model_tensor_count(m); t++)
        if (eq_model_tensor_at(m, t)->numel > maxn) maxn = eq_model_tensor_at(m, t)->numel;
    float *host = malloc(maxn * sizeof *host);
    ck_assert_ptr_nonnull(host);
    for (size_t t = 0; t < eq_model_tensor_count(m); t++) {
        const eq_model_tensor *mt = eq_model_tensor_at(m, t);
        if (mt->dtype != EQ_DT_F32) continue;
        s_r18_fill(mt->name, mt->ndim, mt->shape, host, mt->numel);
        OK(eq_backend_upload(be, mt->data, host, mt->numel * sizeof *host, &err));
    }
    s_r18_fill("x", 4, NULL, host, nx);
    float *x = eq_backend_alloc(be, nx * sizeof *x, &err);
    int32_t *y = eq_backend_alloc(be, (size_t)n * sizeof *y, &err);
    ck_assert_msg(x && y, "%s", err.msg);
    OK(eq_backend_upload(be, x, host, nx * sizeof *x, &err));
    long yi = eq_st_find(f, "y");
    ck_assert(yi >= 0);
    OK(eq_backend_upload(be, y, eq_st_data(f, (size_t)yi, NULL), (size_t)n * sizeof *y, &err));
    OK(eq_model_forward(m, x, true, &err));
    int64_t bn, k;
    const float *logits = eq_model_logits(m, &bn, &k);
    ck_assert_int_eq(k, cfg.num_classes);
    double e = eq_test_relerr(logits, s_get(f, "logits", (size_t)(n * k)), (size_t)(n * k));
    ck_assert_msg(e < TOL, "logits rel err %g", e);
    float loss;
    OK(eq_model_loss(m, y, NULL, NULL, 0.0f, &loss, &err));
    float ref_loss = s_get(f, "loss", 1)[0];
    ck_assert_msg(fabs(loss - ref_loss) <= TOL * fabs(ref_loss), "loss %g vs %g", loss, ref_loss);
    OK(eq_model_backward(m, NULL, &err));
    size_t nparam = 0, nstats = 0;
    double worst = 0;
    for (size_t t = 0; t < eq_model_tensor_count(m); t++) {
        const eq_model_tensor *mt = eq_model_tensor_at(m, t);
        char name[512];
        float smp[64];
        size_t ns = mt->numel < 64 ? mt->numel : 64;
        if (mt->kind == EQ_MT_PARAM) {
            float *g = malloc(mt->numel * sizeof *g);
            ck_assert_ptr_nonnull(g);
            OK(eq_backend_download(be, g, mt->grad, mt->numel * sizeof *g, &err));
            double nrm = 0, proj = 0, vn = 0;
            char probe[300];
            snprintf(probe, sizeof probe, "probe.%s", mt->name);
            uint64_t seed = s_fnv1a(probe);
            for (size_t i = 0; i < mt->numel; i++) {
                double v = s_unit(seed, i);
                nrm += (double)g[i] * g[i], proj += (double)g[i] * v, vn += v * v;
            }
            nrm = sqrt(nrm);
            for (size_t j = 0; j < ns; j++) smp[j] = g[j * mt->numel / ns];
            free(g);
            /* max(1e-4, 3x PyTorch's own float32 error on this tensor):
             * gen_resnet18_224.py says why */
            snprintf(name, sizeof name, "f32err.%s", mt->name);
            double tol = 3.0 * s_get(f, name, 1)[0];
            if (tol < TOL) tol = TOL;
            snprintf(name, sizeof name, "norm.%s", mt->name);
            double rn = s_get(f, name, 1)[0];
            e = fabs(nrm - rn) / rn;
            ck_assert_msg(e < tol, "%s: %g vs %g (tol %g)", name, nrm, rn, tol);
            snprintf(name, sizeof name, "proj.%s", mt->name);
            double rp = s_get(f, name, 1)[0];
            e = fabs(proj - rp) / (rn * sqrt(vn));
            ck_assert_msg(e < tol, "%s: %g vs %g (scale %g, tol %g)", name, proj, rp,
                          rn * sqrt(vn), tol);
            snprintf(name, sizeof name, "sample.%s", mt->name);
            e = eq_test_relerr(smp, s_get(f, name, ns), ns);
            ck_assert_msg(e < tol, "%s: rel err %g (tol %g)", name, e, tol);
            if (getenv("EQ_TEST_VERBOSE"))
                fprintf(stderr, "%-40s sample err %.2e tol %.2e\n", mt->name, e, tol);
            if (e > worst) worst = e;
            nparam++;
        } else if (strstr(mt->name, "running")) {
            float *v = malloc(mt->numel * sizeof *v);
            ck_assert_ptr_nonnull(v);
            OK(eq_backend_download(be, v, mt->data, mt->numel * sizeof *v, &err));
            for (size_t j = 0; j < ns; j++) smp[j] = v[j * mt->numel / ns];
            free(v);
            snprintf(name, sizeof name, "stats.%s", mt->name);
            e = eq_test_relerr(smp, s_get(f, name, ns), ns);
            ck_assert_msg(e < TOL, "%s: rel err %g", name, e);
            nstats++;
        }
    }
    ck_assert_uint_eq(nparam, want_params);
    ck_assert_uint_eq(nstats, want_stats);
    if (getenv("EQ_TEST_VERBOSE")) fprintf(stderr, "worst sample error %.2e\n", worst);
    free(host);
    eq_backend_release(be, x);
    eq_backend_release(be, y);
    eq_model_destroy(&m);
    eq_backend_destroy(&be);
    eq_st_close(&f);
}

START_TEST(test_parity_torch_resnet18_224)
{
    s_parity_closed_form("resnet18_224.safetensors", 62, 40);
}
END_TEST

START_TEST(test_parity_mobilenet_v2)
{
    /* 52 convs (17 depthwise) each with a BN, the classifier's weight and bias */
    s_parity_closed_form("mobilenet_v2.safetensors", 52 + 52 * 2 + 2, 52 * 2);
}
END_TEST

/* TResNet stems (space-to-depth 4 + 1x1, and 2 + 3x3 + max-pool) on the
 * original's resnet18 (gen_tresnet.py) */
START_TEST(test_parity_tresnet_stem)
{
    s_parity_closed_form("resnet18_tresnet.safetensors", 62, 40);
    s_parity_closed_form("resnet18_tresnet_mp.safetensors", 62, 40);
}
END_TEST

/* Fixup (no BN; scalar biases and multipliers) on the original's resnet20
 * and resnet50 (gen_fixup.py) */
START_TEST(test_parity_fixup)
{
    s_parity_closed_form("resnet20_fixup.safetensors", 70, 0);
    s_parity_closed_form("resnet50_fixup.safetensors", 169, 0);
}
END_TEST

/* Group-Net: three branches per block with learnable scales, cabs,
 * group-net stem (gen_groupnet.py) */
START_TEST(test_parity_groupnet)
{
    s_parity_closed_form("resnet20_groupnet.safetensors", 200, 114);
}
END_TEST

/* ReShapeResolution with order cb: space-to-depth + FP 1x1 + BN shrink in
 * the strided blocks (gen_ldn.py) */
START_TEST(test_parity_ldn)
{
    s_parity_closed_form("resnet20_ldn.safetensors", 65, 42);
}
END_TEST

START_TEST(test_parity_mobilenet_v1)
{
    s_parity_closed_form("mobilenet_v1.safetensors", 27 + 27 * 2 + 2, 27 * 2);
}
END_TEST

START_TEST(test_torchvision_names)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    eq_model_cfg cfg;
    s_defaults(&cfg, NULL, NULL);
    snprintf(cfg.arch, sizeof cfg.arch, "torch-resnet18");
    cfg.num_classes = 1000;
    /* at full width: 62 weights/biases/buffers + 20 num_batches_tracked,
     * 11689512 parameters as torchvision's resnet18 */
    eq_model *m = eq_model_new(be, &cfg, NULL, NULL, 1, 32, 32, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    size_t np = 0, nt = eq_model_tensor_count(m);
    for (size_t i = 0; i < nt; i++)
        if (eq_model_tensor_at(m, i)->kind == EQ_MT_PARAM) np += eq_model_tensor_at(m, i)->numel;
    ck_assert_uint_eq(np, 11689512);
    ck_assert_uint_eq(nt, 122);
    ck_assert_str_eq(eq_model_tensor_at(m, 0)->name, "conv1.weight");
    ck_assert_str_eq(eq_model_tensor_at(m, 5)->name, "bn1.num_batches_tracked");
    ck_assert_int_eq(eq_model_tensor_at(m, 5)->dtype, EQ_DT_I64);
    ck_assert_int_eq(eq_model_tensor_at(m, 5)->ndim, 0);
    const eq_model_tensor *t = eq_model_tensor_find(m, "layer2.0.downsample.0.weight");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->shape[0], 128);
    ck_assert_int_eq(t->shape[1], 64);
    ck_assert_str_eq(eq_model_tensor_at(m, nt - 1)->name, "fc.bias");
    eq_model_destroy(&m);
    /* resnet50: 25557032 parameters */
    snprintf(cfg.arch, sizeof cfg.arch, "torch-resnet50");
    m = eq_model_new(be, &cfg, NULL, NULL, 1, 32, 32, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    np = 0;
    for (size_t i = 0; i < eq_model_tensor_count(m); i++)
        if (eq_model_tensor_at(m, i)->kind == EQ_MT_PARAM) np += eq_model_tensor_at(m, i)->numel;
    ck_assert_uint_eq(np, 25557032);
    ck_assert_ptr_nonnull(eq_model_tensor_find(m, "layer4.2.bn3.running_var"));
    eq_model_destroy(&m);
    eq_backend_destroy(&be);
}
END_TEST

START_TEST(test_model_errors)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    eq_model_cfg cfg;
    s_defaults(&cfg, NULL, NULL);
    snprintf(cfg.arch, sizeof cfg.arch, "resnet7");
    ck_assert_ptr_null(eq_model_new(be, &cfg, NULL, NULL, 2, 32, 32, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "resnet7"));
    snprintf(cfg.arch, sizeof cfg.arch, "resnet20");
    s_kw(&cfg, "origin,cbsa,prone");
    ck_assert_ptr_null(eq_model_new(be, &cfg, NULL, NULL, 2, 32, 32, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "'prone'"));
    s_kw(&cfg, "origin");
    ck_assert_ptr_null(eq_model_new(be, &cfg, NULL, NULL, 2, 32, 32, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "order"));
    /* a bad input shape */
    snprintf(cfg.arch, sizeof cfg.arch, "torch-resnet18");
    s_kw(&cfg, "");
    ck_assert_ptr_null(eq_model_new(be, &cfg, NULL, NULL, 0, 32, 32, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "input"));
    /* PReLU cannot follow torchvision's shared activation module */
    s_kw(&cfg, "PReLU");
    ck_assert_ptr_null(eq_model_new(be, &cfg, NULL, NULL, 2, 32, 32, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "PReLU"));
    /* TResNet stems belong to resnetNN; space-to-depth needs a divisible input */
    s_kw(&cfg, "TResNetStem");
    ck_assert_ptr_null(eq_model_new(be, &cfg, NULL, NULL, 2, 32, 32, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "resnetNN family"));
    snprintf(cfg.arch, sizeof cfg.arch, "resnet18");
    s_kw(&cfg, "origin,cbsa,TResNetStem");
    ck_assert_ptr_null(eq_model_new(be, &cfg, NULL, NULL, 2, 30, 30, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "block 4 must divide 30x30"));
    cfg.stem_kernel = 2;
    ck_assert_ptr_null(eq_model_new(be, &cfg, NULL, NULL, 2, 32, 32, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "stem_kernel"));
    cfg.stem_kernel = 1;
    /* Group-Net: base > 1 on BasicBlocks only; scales start at 1/base */
    snprintf(cfg.arch, sizeof cfg.arch, "resnet20");
    s_kw(&cfg, "cabs,fix,group-net,singleconv");
    cfg.base = 4;
    eq_model *gm = eq_model_new(be, &cfg, NULL, NULL, 2, 8, 8, &err);
    ck_assert_msg(gm != NULL, "%s", err.msg);
    ck_assert(*(float *)eq_model_tensor_find(gm, "layer2.1.scales.3")->data == 0.25f);
    ck_assert_ptr_nonnull(eq_model_tensor_find(gm, "layer3.0.conv2.3.weight"));
    ck_assert_ptr_null(eq_model_tensor_find(gm, "layer3.0.conv2.4.weight"));
    eq_model_destroy(&gm);
    snprintf(cfg.arch, sizeof cfg.arch, "resnet50");
    s_kw(&cfg, "origin,cbsa");
    ck_assert_ptr_null(eq_model_new(be, &cfg, NULL, NULL, 2, 32, 32, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "base: 4 branches"));
    cfg.base = 1;
    snprintf(cfg.arch, sizeof cfg.arch, "resnet18");
    /* ReShapeResolution: order must hold one c */
    snprintf(cfg.arch, sizeof cfg.arch, "resnet20");
    s_kw(&cfg, "origin,cbsa,ReShapeResolution");
    snprintf(cfg.order, sizeof cfg.order, "bx");
    ck_assert_ptr_null(eq_model_new(be, &cfg, NULL, NULL, 2, 32, 32, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "order: 'bx'"));
    snprintf(cfg.order, sizeof cfg.order, "c");
    snprintf(cfg.arch, sizeof cfg.arch, "resnet18");
    /* a Bi-Real bottleneck does not exist */
    snprintf(cfg.arch, sizeof cfg.arch, "resnet50");
    s_kw(&cfg, "cbsa");
    ck_assert_ptr_null(eq_model_new(be, &cfg, NULL, NULL, 2, 32, 32, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "origin"));
    eq_backend_destroy(&be);
}
END_TEST

/* ---- finite differences ------------------------------------------------------ */

/* L = sum(logits * r) through conv, BN (training), PReLU, max-pool,
 * avg-pool, ReLU, 1x1 conv, add, GAP and linear: every parameter's gradient
 * against central differences (float32: eps 2e-3, 2% norm-wise; the errors are below 0.5%). */
static double s_fd_loss(eq_layers *g, const float *x, const float *r)
{
    eq_err err = {0};
    OK(eq_layers_forward(g, x, true, &err));
    int64_t sh[4];
    const float *y = eq_layers_output(g, NULL, sh);
    double l = 0;
    for (int64_t i = 0; i < sh[0] * sh[3]; i++) l += (double)y[i] * r[i];
    return l;
}

START_TEST(test_finite_differences)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    eq_layers *g = eq_layers_new(be, &err);
    int x = eq_layers_input(g, 2, 6, 6, 3, &err);
    int c1 = eq_layers_conv(g, "c1", x, 4, 3, 1, 1, 1, NULL, NULL, false, &err);
    int b1 = eq_layers_bn(g, "b1", c1, &err);
    int p1 = eq_layers_prelu(g, "p1", b1, &err);
    int mp = eq_layers_maxpool(g, p1, 2, 2, 0, &err);
    int c2 = eq_layers_conv(g, "c2", mp, 4, 1, 1, 0, 1, NULL, NULL, false, &err);
    int r2 = eq_layers_relu(g, c2, &err);
    int ap = eq_layers_avgpool(g, p1, 3, 2, 1, &err);
    int ad = eq_layers_add(g, r2, ap, &err);
    int gp = eq_layers_gap(g, ad, &err);
    int fc = eq_layers_linear(g, "fc", gp, 3, NULL, NULL, &err);
    ck_assert_msg(fc >= 0, "%s", err.msg);
    OK(eq_layers_finalize(g, 11, &err));
    /* non-trivial BN affine and PReLU slope */
    for (size_t i = 0; i < eq_layers_tensor_count(g); i++) {
        const eq_model_tensor *t = eq_layers_tensor_at(g, i);
        if (t->dtype != EQ_DT_F32 || t->kind != EQ_MT_PARAM) continue;
        float *d = t->data;
        if (strstr(t->name, "b1.") || strstr(t->name, "p1."))
            for (size_t k = 0; k < t->numel; k++) d[k] += 0.3f * (float)sin(1.0 + 2.0 * (double)k);
    }
    float xin[2 * 6 * 6 * 3], r[2 * 3];
    for (size_t i = 0; i < sizeof xin / 4; i++) xin[i] = (float)sin(0.91 * (double)i + 0.2);
    for (size_t i = 0; i < 6; i++) r[i] = (float)cos(1.3 * (double)i);
    s_fd_loss(g, xin, r);
    float *dy;
    eq_layers_output(g, &dy, NULL);
    memcpy(dy, r, sizeof r);
    OK(eq_layers_backward(g, &err));
    size_t checked = 0;
    for (size_t i = 0; i < eq_layers_tensor_count(g); i++) {
        const eq_model_tensor *t = eq_layers_tensor_at(g, i);
        if (t->kind != EQ_MT_PARAM) continue;
        float *an = malloc(t->numel * sizeof *an), *fd = malloc(t->numel * sizeof *fd);
        memcpy(an, t->grad, t->numel * sizeof *an);
        float *d = t->data;
        for (size_t k = 0; k < t->numel; k++) {
            const float e = 2e-3f, v = d[k];
            d[k] = v + e;
            double lp = s_fd_loss(g, xin, r);
            d[k] = v - e;
            double lm = s_fd_loss(g, xin, r);
            d[k] = v;
            fd[k] = (float)((lp - lm) / (2.0 * (double)e));
        }
        double rel = eq_test_relerr(an, fd, t->numel);
        ck_assert_msg(rel < 2e-2, "%s: analytic vs finite differences rel err %g", t->name, rel);
        checked++;
        free(an);
        free(fd);
    }
    ck_assert_uint_eq(checked, 7); /* c1, b1 w/b, p1, c2, fc w/b */
    eq_layers_destroy(&g);
    eq_backend_destroy(&be);
}
END_TEST

static const eq_model_tensor *s_ltensor(const eq_layers *g, const char *name);

/* Dropout: a mask of zeros and 1/(1-p) scales drawn from (seed, noise key,
 * node, element) -- the same key gives the same mask, the key advances by
 * one per training forward, eval is the identity -- and its backward
 * against finite differences with the key held fixed. */
static double s_fd_loss_key(eq_layers *g, const float *x, const float *r, uint64_t key)
{
    eq_layers_set_noise_key(g, key);
    return s_fd_loss(g, x, r);
}

START_TEST(test_dropout)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    enum { N = 4, C = 1000 };
    eq_layers *g = eq_layers_new(be, &err);
    int x = eq_layers_input(g, N, 1, 1, C, &err);
    x = eq_layers_relu(g, x, &err);
    ck_assert_int_lt(eq_layers_dropout(g, x, 1.0, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "[0, 1)"));
    eq_layers_destroy(&g);
    g = eq_layers_new(be, &err);
    x = eq_layers_input(g, N, 1, 1, C, &err);
    x = eq_layers_relu(g, x, &err);
    ck_assert_int_ge(eq_layers_dropout(g, x, 0.3, &err), 0);
    OK(eq_layers_finalize(g, 3, &err));
    ck_assert_uint_eq(eq_layers_tensor_count(g), 0);
    static float xin[N * C], y1[N * C], y2[N * C];
    for (size_t i = 0; i < N * C; i++) xin[i] = 0.5f + (float)(sin(0.37 * (double)i) * sin(0.37 * (double)i));
    eq_layers_set_noise_key(g, 7);
    OK(eq_layers_forward(g, xin, true, &err));
    ck_assert(eq_layers_noise_key(g) == 8);
    const float *y = eq_layers_output(g, NULL, NULL);
    memcpy(y1, y, sizeof y1);
    const float scale = 1.0f / (float)(1.0 - 0.3);
    size_t dropped = 0;
    for (size_t i = 0; i < N * C; i++) {
        if (y1[i] == 0.0f) dropped++;
        else ck_assert_msg(y1[i] == xin[i] * scale, "element %zu: %g, input %g", i, (double)y1[i], (double)xin[i]);
    }
    ck_assert_msg(dropped > 1050 && dropped < 1350, "%zu of 4000 dropped at p = 0.3", dropped);
    OK(eq_layers_forward(g, xin, true, &err)); /* key 8: another mask */
    ck_assert(memcmp(y, y1, sizeof y1) != 0);
    memcpy(y2, y, sizeof y2);
    eq_layers_set_noise_key(g, 7); /* key 7 again: the same mask */
    OK(eq_layers_forward(g, xin, true, &err));
    ck_assert_mem_eq(y, y1, sizeof y1);
    OK(eq_layers_forward(g, xin, false, &err)); /* eval: identity, key unchanged */
    ck_assert_mem_eq(y, xin, sizeof xin);
    ck_assert(eq_layers_noise_key(g) == 8);
    OK(eq_layers_forward(g, xin, true, &err));
    ck_assert_mem_eq(y, y2, sizeof y2);
    eq_layers_destroy(&g);

    /* backward vs finite differences, with dropout between two layers */
    g = eq_layers_new(be, &err);
    x = eq_layers_input(g, 2, 3, 3, 2, &err);
    int c1 = eq_layers_conv(g, "c1", x, 4, 3, 1, 1, 1, NULL, NULL, false, &err);
    int dr = eq_layers_dropout(g, c1, 0.5, &err);
    int gp = eq_layers_gap(g, dr, &err);
    int fc = eq_layers_linear(g, "fc", gp, 3, NULL, NULL, &err);
    ck_assert_msg(fc >= 0, "%s", err.msg);
    OK(eq_layers_finalize(g, 11, &err));
    float xs[2 * 3 * 3 * 2], r[2 * 3];
    for (size_t i = 0; i < sizeof xs / 4; i++) xs[i] = (float)sin(0.91 * (double)i + 0.2);
    for (size_t i = 0; i < 6; i++) r[i] = (float)cos(1.3 * (double)i);
    double l0 = s_fd_loss_key(g, xs, r, 5);
    float *dy;
    eq_layers_output(g, &dy, NULL);
    memcpy(dy, r, sizeof r);
    OK(eq_layers_backward(g, &err));
    ck_assert(fabs(l0 - s_fd_loss(g, xs, r)) > 1e-6); /* key 6 drops other elements */
    for (size_t i = 0; i < eq_layers_tensor_count(g); i++) {
        const eq_model_tensor *t = eq_layers_tensor_at(g, i);
        float *an = malloc(t->numel * sizeof *an), *fd = malloc(t->numel * sizeof *fd);
        memcpy(an, t->grad, t->numel * sizeof *an);
        float *d = t->data;
        for (size_t k = 0; k < t->numel; k++) {
            const float e = 2e-3f, v = d[k];
            d[k] = v + e;
            double lp = s_fd_loss_key(g, xs, r, 5);
            d[k] = v - e;
            double lm = s_fd_loss_key(g, xs, r, 5);
            d[k] = v;
            fd[k] = (float)((lp - lm) / (2.0 * (double)e));
        }
        double rel = eq_test_relerr(an, fd, t->numel);
        ck_assert_msg(rel < 2e-2, "%s: analytic vs finite differences rel err %g", t->name, rel);
        free(an);
        free(fd);
    }
    eq_layers_destroy(&g);
    eq_backend_destroy(&be);
}
END_TEST

/* The same for the layers MobileNet, Fixup and the TResNet stem added:
 * 1x1 conv -> space-to-depth -> conv -> scalar affine (scale and bias) ->
 * clamp -> depthwise conv -> GAP -> linear; the 1x1 conv's gradient passes
 * through the space-to-depth backward. */
START_TEST(test_finite_differences_2)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    eq_layers *g = eq_layers_new(be, &err);
    int x = eq_layers_input(g, 2, 4, 4, 3, &err);
    int c0 = eq_layers_conv(g, "c0", x, 3, 1, 1, 0, 1, NULL, NULL, false, &err);
    int sd = eq_layers_space_to_depth(g, c0, 2, &err);
    int c1 = eq_layers_conv(g, "c1", sd, 6, 3, 1, 1, 1, NULL, NULL, false, &err);
    int sa = eq_layers_scalar_affine(g, "s1", "scale", "bias", c1, &err);
    int cl = eq_layers_clamp(g, sa, -1.0f, 1.0f, &err);
    int dw = eq_layers_conv(g, "dw", cl, 6, 3, 1, 1, 6, NULL, NULL, false, &err);
    int gp = eq_layers_gap(g, dw, &err);
    int fc = eq_layers_linear(g, "fc", gp, 3, NULL, NULL, &err);
    ck_assert_msg(fc >= 0, "%s", err.msg);
    OK(eq_layers_finalize(g, 13, &err));
    float *sc = (float *)s_ltensor(g, "s1.scale")->data, *bi = (float *)s_ltensor(g, "s1.bias")->data;
    sc[0] = 0.7f, bi[0] = 0.1f;
    float xin[2 * 4 * 4 * 3], r[2 * 3];
    for (size_t i = 0; i < sizeof xin / 4; i++) xin[i] = (float)sin(0.77 * (double)i + 0.4);
    for (size_t i = 0; i < 6; i++) r[i] = (float)cos(1.1 * (double)i);
    s_fd_loss(g, xin, r);
    float *dy;
    eq_layers_output(g, &dy, NULL);
    memcpy(dy, r, sizeof r);
    OK(eq_layers_backward(g, &err));
    size_t checked = 0;
    for (size_t i = 0; i < eq_layers_tensor_count(g); i++) {
        const eq_model_tensor *t = eq_layers_tensor_at(g, i);
        if (t->kind != EQ_MT_PARAM) continue;
        float *an = malloc(t->numel * sizeof *an), *fd = malloc(t->numel * sizeof *fd);
        memcpy(an, t->grad, t->numel * sizeof *an);
        float *d = t->data;
        for (size_t k = 0; k < t->numel; k++) {
            const float e = 1e-3f, v = d[k];
            d[k] = v + e;
            double lp = s_fd_loss(g, xin, r);
            d[k] = v - e;
            double lm = s_fd_loss(g, xin, r);
            d[k] = v;
            fd[k] = (float)((lp - lm) / (2.0 * (double)e));
        }
        double rel = eq_test_relerr(an, fd, t->numel);
        ck_assert_msg(rel < 2e-2, "%s: analytic vs finite differences rel err %g", t->name, rel);
        checked++;
        free(an);
        free(fd);
    }
    ck_assert_uint_eq(checked, 7); /* c0, c1, s1 scale/bias, dw, fc w/b */
    eq_layers_destroy(&g);
    eq_backend_destroy(&be);
}
END_TEST

/* ---- quantized conv ---------------------------------------------------------- */

static const eq_model_tensor *s_ltensor(const eq_layers *g, const char *name)
{
    for (size_t i = 0; i < eq_layers_tensor_count(g); i++)
        if (!strcmp(eq_layers_tensor_at(g, i)->name, name)) return eq_layers_tensor_at(g, i);
    ck_abort_msg("no tensor %s", name);
    return NULL;
}

/* One quantized 3x3 conv (pad 1) + GAP + linear; compares with a graph
 * without quantizers fed Qf(pad(x)) by hand and weights Qw(W). */
static void s_quant_conv_case(bool pad_after)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    eq_quant_opts wq, fq;
    eq_quant_opts_init(&wq, EQ_QTAG_WT);
    eq_quant_opts_init(&fq, EQ_QTAG_FM);
    OK(eq_quant_opts_set(&wq, "method", "lsq", &err));
    OK(eq_quant_opts_set(&wq, "bit", "2", &err));
    OK(eq_quant_opts_set(&fq, "method", "lsq", &err));
    OK(eq_quant_opts_set(&fq, "bit", "2", &err));
    OK(eq_quant_opts_set(&fq, "half_range", "false", &err)); /* padded zeros move to a level */
    const int64_t N = 2, H = 5, W = 5, C = 3, K = 4;
    eq_layers *g = eq_layers_new(be, &err);
    int x = eq_layers_input(g, N, H, W, C, &err);
    x = eq_layers_conv(g, "conv", x, K, 3, 1, 1, 1, &wq, &fq, pad_after, &err);
    ck_assert_msg(x >= 0, "%s", err.msg);
    OK(eq_layers_finalize(g, 7, &err));
    ck_assert_uint_eq(eq_layers_tensor_count(g), 1 + 3 + 3); /* weight, 2 x (clip_val, iteration, level_num) */
    float xin[2 * 5 * 5 * 3];
    for (size_t i = 0; i < sizeof xin / sizeof xin[0]; i++) xin[i] = (float)sin(0.7 * (double)i) * 1.3f;
    OK(eq_layers_forward(g, xin, true, &err));
    int64_t sh[4];
    float *dy;
    float *y = eq_layers_output(g, &dy, sh);

    /* the reference: quantizers on their own + a plain conv */
    const eq_model_tensor *wt = eq_layers_tensor_at(g, 0);
    ck_assert_str_eq(wt->name, "conv.weight");
    int64_t ps = pad_after ? H : H + 2;
    int64_t xs[4] = {N, ps, pad_after ? W : W + 2, C};
    eq_tensor_desc xd, wd;
    OK(eq_tensor_desc_init(&xd, EQ_DT_F32, EQ_LAYOUT_NHWC, 4, xs, &err));
    OK(eq_tensor_desc_init(&wd, EQ_DT_F32, EQ_LAYOUT_OIHW, 4, wt->shape, &err));
    eq_quant *rq = eq_quant_new(&fq, &xd, &err), *rw = eq_quant_new(&wq, &wd, &err);
    ck_assert(rq && rw);
    float xp[2 * 7 * 7 * 3] = {0}, a[2 * 7 * 7 * 3], a2[2 * 7 * 7 * 3] = {0}, wq_[4 * 3 * 9];
    const float *src = xin;
    if (!pad_after) {
        for (int64_t n = 0; n < N; n++)
            for (int64_t i = 0; i < H; i++)
                memcpy(&xp[((n * 7 + i + 1) * 7 + 1) * C], &xin[(n * H + i) * W * C], (size_t)(W * C) * 4);
        src = xp;
    }
    OK(eq_quant_forward(rq, &xd, src, a, true, &err));
    OK(eq_quant_forward(rw, &wd, wt->data, wq_, true, &err));
    if (pad_after) { /* pad the quantized tensor with true zeros */
        for (int64_t n = 0; n < N; n++)
            for (int64_t i = 0; i < H; i++)
                memcpy(&a2[((n * 7 + i + 1) * 7 + 1) * C], &a[(n * H + i) * W * C], (size_t)(W * C) * 4);
    } else {
        memcpy(a2, a, sizeof a);
    }
    eq_conv2d_desc cd = {.n = N, .h = 7, .w = 7, .c = C, .k = K, .r = 3, .s = 3, .stride_h = 1,
                         .stride_w = 1, .dil_h = 1, .dil_w = 1, .groups = 1};
    OK(eq_conv2d_desc_init(&cd, &err));
    float yref[2 * 5 * 5 * 4];
    OK(eq_backend_conv2d_fwd(be, &cd, a2, wq_, yref, &err));
    ck_assert_msg(eq_test_relerr(y, yref, (size_t)(N * H * W * K)) < 1e-6, "quantized conv output differs");
    /* the quantizers and their outputs by layer name and tag */
    int64_t qn = -1;
    ck_assert_ptr_nonnull(eq_layers_quant(g, "conv", EQ_QTAG_WT));
    ck_assert_ptr_nonnull(eq_layers_quant(g, "conv", EQ_QTAG_FM));
    ck_assert(eq_layers_quant(g, "conv", EQ_QTAG_WT) != eq_layers_quant(g, "conv", EQ_QTAG_FM));
    ck_assert_ptr_null(eq_layers_quant(g, "conv", EQ_QTAG_OT));
    ck_assert_ptr_null(eq_layers_quant(g, "conv2", EQ_QTAG_WT));
    ck_assert_ptr_null(eq_layers_quant(g, NULL, EQ_QTAG_WT));
    const float *qo = eq_layers_quant_output(g, "conv", EQ_QTAG_WT, &qn);
    ck_assert_int_eq(qn, (int64_t)wt->numel);
    ck_assert_mem_eq(qo, wq_, sizeof wq_);
    qo = eq_layers_quant_output(g, "conv", EQ_QTAG_FM, &qn);
    ck_assert_int_eq(qn, N * xs[1] * xs[2] * C);
    ck_assert_mem_eq(qo, a, (size_t)qn * sizeof(float));
    ck_assert_ptr_null(eq_layers_quant_output(g, "conv", EQ_QTAG_OT, &qn));
    ck_assert_int_eq(qn, 0);
    /* some quantization actually happened: the output is not the FP conv */
    float yfp[2 * 5 * 5 * 4];
    eq_conv2d_desc fd = cd;
    fd.h = H, fd.w = W, fd.pad_h = fd.pad_w = 1;
    OK(eq_conv2d_desc_init(&fd, &err));
    OK(eq_backend_conv2d_fwd(be, &fd, xin, wt->data, yfp, &err));
    ck_assert(eq_test_relerr(yfp, yref, (size_t)(N * H * W * K)) > 1e-2);

    /* backward: dy = 1 everywhere; quantizer parameter gradients appear */
    for (size_t i = 0; i < (size_t)(N * H * W * K); i++) dy[i] = 1.0f;
    OK(eq_layers_backward(g, &err));
    const eq_model_tensor *cv = s_ltensor(g, "conv.quant_activation.clip_val");
    const eq_model_tensor *cw = s_ltensor(g, "conv.quant_weight.clip_val");
    ck_assert_int_eq(cv->kind, EQ_MT_PARAM);
    ck_assert_ptr_nonnull(cv->grad);
    double gsum = 0;
    for (size_t i = 0; i < cw->numel; i++) gsum += fabs(cw->grad[i]);
    ck_assert(gsum > 0);
    double wsum = 0;
    for (size_t i = 0; i < wt->numel; i++) wsum += fabs(wt->grad[i]);
    ck_assert(wsum > 0);
    /* the weight gradient equals Qw's backward of the conv's filter gradient */
    float dwq[4 * 3 * 9], dwref[4 * 3 * 9];
    float ones[2 * 5 * 5 * 4];
    for (size_t i = 0; i < sizeof ones / 4; i++) ones[i] = 1.0f;
    OK(eq_backend_conv2d_bwd_filter(be, &cd, a2, ones, dwq, &err));
    OK(eq_quant_backward(rw, wt->data, dwq, dwref, &err));
    ck_assert(eq_test_relerr(wt->grad, dwref, wt->numel) < 1e-6);
    eq_quant_destroy(&rq);
    eq_quant_destroy(&rw);
    eq_layers_destroy(&g);
    eq_backend_destroy(&be);
}

START_TEST(test_quant_conv_pad_before)
{
    s_quant_conv_case(false);
}
END_TEST

START_TEST(test_quant_conv_pad_after)
{
    s_quant_conv_case(true);
}
END_TEST

/* A quantized ResNet-20 from config: first and last layers stay FP, every
 * other conv has both quantizers, training reduces the loss. */
/* MobileNets: torchvision's mobilenet_v2 parameter count and names,
 * keyword checks, and real_dp / real_pt keeping depthwise / pointwise convs
 * full precision in a quantized MobileNet v1 that trains. */
START_TEST(test_mobilenet_build)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    eq_model_cfg cfg;
    eq_model_quant_cfg wt, fm;
    s_defaults(&cfg, &wt, &fm);
    snprintf(cfg.arch, sizeof cfg.arch, "mobilenet-v2");
    cfg.num_classes = 1000;
    eq_model *m = eq_model_new(be, &cfg, NULL, NULL, 1, 32, 32, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    size_t np = 0, nt = eq_model_tensor_count(m);
    for (size_t i = 0; i < nt; i++)
        if (eq_model_tensor_at(m, i)->kind == EQ_MT_PARAM) np += eq_model_tensor_at(m, i)->numel;
    ck_assert_uint_eq(np, 3504872); /* torchvision.models.mobilenet_v2() */
    ck_assert_uint_eq(nt, 52 * 6 + 2);
    ck_assert_str_eq(eq_model_tensor_at(m, 0)->name, "features.0.0.weight");
    ck_assert_str_eq(eq_model_tensor_at(m, nt - 1)->name, "classifier.1.bias");
    const eq_model_tensor *t = eq_model_tensor_find(m, "features.17.conv.1.0.weight");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->shape[0], 960);
    ck_assert_int_eq(t->shape[1], 1);
    ck_assert_ptr_nonnull(eq_model_tensor_find(m, "features.1.conv.2.running_var"));
    ck_assert_ptr_nonnull(eq_model_tensor_find(m, "features.18.0.weight"));
    eq_model_destroy(&m);
    /* keywords */
    s_kw(&cfg, "origin");
    ck_assert_ptr_null(eq_model_new(be, &cfg, NULL, NULL, 1, 32, 32, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "'origin' (item 1) does not apply to mobilenet-v2"));
    snprintf(cfg.arch, sizeof cfg.arch, "resnet20");
    s_kw(&cfg, "origin,cbsa,real_dp");
    ck_assert_ptr_null(eq_model_new(be, &cfg, NULL, NULL, 1, 32, 32, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "'real_dp' (item 3) does not apply to resnet20"));
    /* quantized v1, depthwise kept FP */
    snprintf(cfg.arch, sizeof cfg.arch, "mobilenet-v1");
    s_kw(&cfg, "real_dp,cifar10");
    cfg.num_classes = 4;
    cfg.width_alpha = 0.125;
    wt.enable = fm.enable = true;
    snprintf(wt.method, sizeof wt.method, "lsq");
    snprintf(fm.method, sizeof fm.method, "lsq");
    wt.bit = fm.bit = 4;
    m = eq_model_new(be, &cfg, &wt, &fm, 4, 32, 32, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    ck_assert_ptr_null(eq_model_tensor_find(m, "model.0.0.quant_weight.clip_val"));  /* stem */
    ck_assert_ptr_null(eq_model_tensor_find(m, "model.1.0.quant_weight.clip_val"));  /* real_dp */
    ck_assert_ptr_nonnull(eq_model_tensor_find(m, "model.1.3.quant_weight.clip_val"));
    ck_assert_ptr_null(eq_model_tensor_find(m, "fc.quant_weight.clip_val"));
    eq_optim_cfg oc;
    eq_config_section os[EQ_OPTIM_CONFIG_NSECTIONS];
    eq_optim_config_sections(&oc, NULL, os);
    OK(eq_config_defaults(os, 1, &err));
    oc.lr = 0.05;
    eq_optim *o = eq_optim_new(m, &oc, &err);
    ck_assert_ptr_nonnull(o);
    float x[4 * 32 * 32 * 3];
    int32_t y[4] = {0, 1, 2, 3};
    for (size_t i = 0; i < sizeof x / 4; i++) x[i] = (float)sin(0.29 * (double)i + (double)(i / 3072));
    /* Memorising 4 samples: BN over 4 values makes the first steps noisy
     * (+-0.2), so judge the mean of the last 5 of 40 steps (about 0.02 when
     * it learns; 1.2-1.7 when gradients are wrong or missing). */
    float first = 0, last = 0, tail = 0;
    for (int step = 0; step < 40; step++) {
        OK(eq_model_forward(m, x, true, &err));
        OK(eq_model_loss(m, y, NULL, NULL, 0.0f, &last, &err));
        ck_assert_msg(isfinite(last), "step %d: loss %g", step, last);
        if (step == 0) first = last;
        if (step >= 35) tail += last / 5;
        if (getenv("EQ_TEST_VERBOSE")) fprintf(stderr, "step %d loss %g\n", step, last);
        OK(eq_model_backward(m, NULL, &err));
        OK(eq_optim_step(o, oc.lr, &err));
    }
    ck_assert_msg(tail < 0.5f * first, "loss %g -> %g (mean of the last 5 steps)", first, tail);
    eq_optim_destroy(&o);
    eq_model_destroy(&m);
    eq_backend_destroy(&be);
}
END_TEST

/* Fixup's initialisation and keyword rules; a Fixup ResNet-20 trains. */
START_TEST(test_fixup_build)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    eq_model_cfg cfg;
    s_defaults(&cfg, NULL, NULL);
    snprintf(cfg.arch, sizeof cfg.arch, "resnet20");
    cfg.width_alpha = 0.125;
    s_kw(&cfg, "origin,cbsa,fix,fixup,bias,singleconv");
    eq_model *m = eq_model_new(be, &cfg, NULL, NULL, 4, 16, 16, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    for (size_t i = 0; i < eq_model_tensor_count(m); i++)
        ck_assert_msg(!strstr(eq_model_tensor_at(m, i)->name, "bn"), "%s", eq_model_tensor_at(m, i)->name);
    const char *zero[] = {"layer1.0.conv2.weight", "layer3.2.conv2.weight", "fc.weight", "fc.bias",
                          "layer2.1.bias1a", "bias1", "bias2"};
    for (size_t z = 0; z < sizeof zero / sizeof zero[0]; z++) {
        const eq_model_tensor *t = eq_model_tensor_find(m, zero[z]);
        ck_assert_msg(t != NULL, "%s missing", zero[z]);
        for (size_t k = 0; k < t->numel; k++) ck_assert_msg(((float *)t->data)[k] == 0.0f, "%s[%zu]", zero[z], k);
    }
    ck_assert(*(float *)eq_model_tensor_find(m, "layer1.1.scale")->data == 1.0f);
    /* conv1 of a block: kaiming fan_out times L^-1/2, L = 3 stages; the
     * shortcut conv keeps plain kaiming */
    const char *nm[2] = {"layer3.0.conv1.weight", "layer3.0.downsample.0.weight"};
    const double want[2] = {sqrt(2.0 / (32 * 9)) / sqrt(3.0), sqrt(2.0 / 32)};
    for (int i = 0; i < 2; i++) {
        const eq_model_tensor *t = eq_model_tensor_find(m, nm[i]);
        ck_assert_ptr_nonnull(t);
        double ss = 0;
        for (size_t k = 0; k < t->numel; k++) ss += (double)((float *)t->data)[k] * ((float *)t->data)[k];
        double sd = sqrt(ss / (double)t->numel);
        ck_assert_msg(fabs(sd / want[i] - 1.0) < 0.15, "%s: std %g, want %g", nm[i], sd, want[i]);
    }
    eq_optim_cfg oc;
    eq_config_section os[EQ_OPTIM_CONFIG_NSECTIONS];
    eq_optim_config_sections(&oc, NULL, os);
    OK(eq_config_defaults(os, 1, &err));
    oc.lr = 0.05;
    eq_optim *o = eq_optim_new(m, &oc, &err);
    float x[4 * 16 * 16 * 3];
    int32_t y[4] = {0, 1, 2, 3};
    for (size_t i = 0; i < sizeof x / 4; i++) x[i] = (float)sin(0.29 * (double)i + (double)(i / 768));
    float first = 0, last = 0;
    for (int step = 0; step < 10; step++) {
        OK(eq_model_forward(m, x, true, &err));
        OK(eq_model_loss(m, y, NULL, NULL, 0.0f, &last, &err));
        if (step == 0) first = last;
        OK(eq_model_backward(m, NULL, &err));
        OK(eq_optim_step(o, oc.lr, &err));
    }
    ck_assert_msg(isfinite(last) && last < first, "loss %g -> %g", first, last);
    eq_optim_destroy(&o);
    eq_model_destroy(&m);
    s_kw(&cfg, "cbsa,fixup");
    ck_assert_ptr_null(eq_model_new(be, &cfg, NULL, NULL, 4, 16, 16, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "fixup: implemented for"));
    s_kw(&cfg, "origin,cbsa,bias");
    ck_assert_ptr_null(eq_model_new(be, &cfg, NULL, NULL, 4, 16, 16, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "bias: needs fixup"));
    eq_backend_destroy(&be);
}
END_TEST

/* The output quantizer (ot): y = Qo(conv(x, W)); the weight gradient is the
 * conv's filter gradient of Qo's backward of dy; Qo's clip value learns. */
START_TEST(test_conv_output_quant)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    eq_quant_opts oq;
    eq_quant_opts_init(&oq, EQ_QTAG_OT);
    OK(eq_quant_opts_set(&oq, "method", "lsq", &err));
    OK(eq_quant_opts_set(&oq, "bit", "2", &err));
    OK(eq_quant_opts_set(&oq, "half_range", "false", &err));
    const int64_t N = 2, H = 5, W = 5, C = 3, K = 4, NY = N * H * W * K;
    eq_layers *g = eq_layers_new(be, &err);
    int x = eq_layers_input(g, N, H, W, C, &err);
    int cv = eq_layers_conv(g, "conv", x, K, 3, 1, 1, 1, NULL, NULL, false, &err);
    ck_assert_msg(cv >= 0, "%s", err.msg);
    OK(eq_layers_conv_output_quant(g, cv, &oq, &err));
    ck_assert_int_eq(eq_layers_conv_output_quant(g, cv, &oq, &err), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "already"));
    OK(eq_layers_finalize(g, 5, &err));
    const eq_model_tensor *clip = s_ltensor(g, "conv.quant_output.clip_val");
    ck_assert_int_eq(clip->kind, EQ_MT_PARAM);
    float xin[2 * 5 * 5 * 3], r[2 * 5 * 5 * 4];
    for (size_t i = 0; i < sizeof xin / 4; i++) xin[i] = (float)sin(0.7 * (double)i) * 1.3f;
    for (size_t i = 0; i < sizeof r / 4; i++) r[i] = (float)cos(0.31 * (double)i);
    OK(eq_layers_forward(g, xin, true, &err));
    int64_t sh[4];
    float *dy;
    const float *y = eq_layers_output(g, &dy, sh);
    /* reference: a plain conv, then the same quantizer on its own */
    const eq_model_tensor *wt = s_ltensor(g, "conv.weight");
    eq_conv2d_desc cd = {.n = N, .h = H, .w = W, .c = C, .k = K, .r = 3, .s = 3, .stride_h = 1,
                         .stride_w = 1, .pad_h = 1, .pad_w = 1, .dil_h = 1, .dil_w = 1, .groups = 1};
    OK(eq_conv2d_desc_init(&cd, &err));
    float raw[2 * 5 * 5 * 4], yref[2 * 5 * 5 * 4], draw[2 * 5 * 5 * 4], dwref[4 * 3 * 9];
    OK(eq_backend_conv2d_fwd(be, &cd, xin, wt->data, raw, &err));
    int64_t ys[4] = {N, H, W, K};
    eq_tensor_desc yd;
    OK(eq_tensor_desc_init(&yd, EQ_DT_F32, EQ_LAYOUT_NHWC, 4, ys, &err));
    eq_quant *rq = eq_quant_new(&oq, &yd, &err);
    ck_assert_msg(rq != NULL, "%s", err.msg);
    OK(eq_quant_forward(rq, &yd, raw, yref, true, &err));
    ck_assert_mem_eq(y, yref, sizeof yref);
    ck_assert(eq_test_relerr(raw, yref, (size_t)NY) > 1e-2); /* it quantized */
    ck_assert_ptr_nonnull(eq_layers_quant(g, "conv", EQ_QTAG_OT));
    ck_assert_ptr_null(eq_layers_quant(g, "conv", EQ_QTAG_WT));
    int64_t qn = -1;
    const float *qy = eq_layers_quant_output(g, "conv", EQ_QTAG_OT, &qn);
    ck_assert_int_eq(qn, NY);
    ck_assert_mem_eq(qy, yref, sizeof yref);
    memcpy(dy, r, sizeof r);
    OK(eq_layers_backward(g, &err));
    OK(eq_quant_backward(rq, raw, r, draw, &err));
    OK(eq_backend_conv2d_bwd_filter(be, &cd, xin, draw, dwref, &err));
    ck_assert_mem_eq(wt->grad, dwref, sizeof dwref);
    ck_assert(clip->grad[0] != 0.0f);
    eq_quant_destroy(&rq);
    eq_layers_destroy(&g);
    eq_backend_destroy(&be);
}
END_TEST

START_TEST(test_quant_resnet20_config)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    eq_model_cfg cfg;
    eq_model_quant_cfg wt, fm;
    eq_config_section secs[EQ_MODEL_CONFIG_NSECTIONS];
    eq_model_config_sections(&cfg, &wt, &fm, secs);
    const char *text = "[model]\narch = resnet20\nkeyword = origin, cbsa, fix_pooling, singleconv, fix, real_skip\n"
                       "width_alpha = 0.0625\nin_channels = 1\n"
                       "[quant.wt]\nenable = true\nmethod = lsq\nbit = 2\n"
                       "[quant.fm]\nenable = true\nmethod = lsq\nbit = 2\n";
    OK(eq_config_parse_buffer(secs, EQ_MODEL_CONFIG_NSECTIONS, "t.cfg", text, strlen(text), NULL, 0, &err));
    eq_model *m = eq_model_new(be, &cfg, &wt, &fm, 4, 12, 12, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    ck_assert_ptr_null(eq_model_tensor_find(m, "conv1.quant_weight.clip_val"));
    ck_assert_ptr_null(eq_model_tensor_find(m, "fc.quant_weight.clip_val"));
    ck_assert_ptr_null(eq_model_tensor_find(m, "layer2.0.downsample.0.quant_weight.clip_val")); /* real_skip */
    ck_assert_ptr_nonnull(eq_model_tensor_find(m, "layer1.0.conv1.quant_weight.clip_val"));
    const eq_model_tensor *cv = eq_model_tensor_find(m, "layer3.2.conv2.quant_activation.clip_val");
    ck_assert_ptr_nonnull(cv);
    ck_assert(cv->quant && cv->kind == EQ_MT_PARAM && cv->no_decay);
    /* quantizers by layer name: none in the FP first/last layers or the real
     * skip; outputs only after a forward */
    int64_t qn = -1;
    ck_assert_ptr_null(eq_model_quant(m, "conv1", EQ_QTAG_WT));
    ck_assert_ptr_null(eq_model_quant(m, "fc", EQ_QTAG_FM));
    ck_assert_ptr_null(eq_model_quant(m, "layer2.0.downsample.0", EQ_QTAG_WT));
    ck_assert_ptr_null(eq_model_quant(m, "layer1.0.conv1", EQ_QTAG_OT));
    ck_assert_ptr_null(eq_model_quant(NULL, "layer1.0.conv1", EQ_QTAG_WT));
    eq_quant *q11 = eq_model_quant(m, "layer1.0.conv1", EQ_QTAG_FM);
    ck_assert_ptr_nonnull(q11);
    ck_assert_ptr_nonnull(eq_model_quant(m, "layer1.0.conv1", EQ_QTAG_WT));
    ck_assert_ptr_null(eq_model_quant_output(m, "layer1.0.conv1", EQ_QTAG_FM, &qn));
    ck_assert_int_eq(qn, 0);
    eq_optim_cfg oc;
    eq_schedule_cfg sc;
    eq_config_section os[EQ_OPTIM_CONFIG_NSECTIONS];
    eq_optim_config_sections(&oc, &sc, os);
    OK(eq_config_defaults(os, EQ_OPTIM_CONFIG_NSECTIONS, &err));
    oc.lr = 0.05;
    eq_optim *o = eq_optim_new(m, &oc, &err);
    ck_assert_ptr_nonnull(o);
    float x[4 * 12 * 12];
    int32_t y[4] = {1, 2, 3, 4};
    for (size_t i = 0; i < sizeof x / 4; i++) x[i] = (float)cos(0.37 * (double)i + (double)(i / 144));
    float first = 0, last = 0;
    for (int step = 0; step < 8; step++) {
        OK(eq_model_forward(m, x, true, &err));
        OK(eq_model_loss(m, y, NULL, NULL, 0.0f, &last, &err));
        if (step == 0) first = last;
        OK(eq_model_backward(m, NULL, &err));
        OK(eq_optim_step(o, oc.lr, &err));
    }
    ck_assert_msg(isfinite(last) && last < first, "loss %g -> %g", first, last);
    OK(eq_model_forward(m, x, false, &err));
    ck_assert_ptr_eq(eq_model_quant(m, "layer1.0.conv1", EQ_QTAG_FM), q11);
    /* layer1.0.conv1's input after the 2-bit fm quantizer (padded first): 4
     * levels at most, the padding on one of them; the weight's shape */
    const float *qa = eq_model_quant_output(m, "layer1.0.conv1", EQ_QTAG_FM, &qn);
    ck_assert_ptr_nonnull(qa);
    ck_assert_int_eq(qn, 4 * 14 * 14 * 4);
    float lv[5];
    int nlv = 0;
    for (int64_t i = 0; i < qn; i++) {
        int k = 0;
        while (k < nlv && lv[k] != qa[i]) k++;
        if (k == nlv) {
            ck_assert_msg(nlv < 4, "more than 4 levels in a 2-bit activation");
            lv[nlv++] = qa[i];
        }
    }
    ck_assert_int_ge(nlv, 2);
    ck_assert_ptr_nonnull(eq_model_quant_output(m, "layer1.0.conv1", EQ_QTAG_WT, &qn));
    ck_assert_int_eq(qn, 4 * 4 * 3 * 3);
    ck_assert_ptr_null(eq_model_quant_output(m, "conv1", EQ_QTAG_WT, &qn));
    ck_assert_int_eq(qn, 0);
    /* a failed forward invalidates them */
    ck_assert_int_ne(eq_model_forward(m, NULL, false, &err), EQ_OK);
    ck_assert_ptr_null(eq_model_quant_output(m, "layer1.0.conv1", EQ_QTAG_FM, &qn));
    eq_optim_destroy(&o);
    eq_model_destroy(&m);
    eq_backend_destroy(&be);
}
END_TEST

/* [quant.ot]: every quantized conv gets an output quantizer, the FP ones
 * none; layer1.0.conv1's output equals Qo(conv(Qf(pad(x)), Qw(W))) composed
 * by hand from its quantizers' outputs and a fresh ot quantizer. */
START_TEST(test_quant_ot_config)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    eq_model_cfg cfg;
    eq_model_quant_cfg wt, fm, ot;
    eq_config_section secs[EQ_MODEL_CONFIG_NSECTIONS_OT];
    eq_model_config_sections_ot(&cfg, &wt, &fm, &ot, secs);
    ck_assert_str_eq(secs[3].name, "quant.ot");
    const char *text = "[model]\narch = resnet20\nkeyword = origin, cbsa, fix_pooling, singleconv, fix, real_skip\n"
                       "width_alpha = 0.0625\nin_channels = 1\n"
                       "[quant.wt]\nenable = true\nmethod = lsq\nbit = 2\n"
                       "[quant.fm]\nenable = true\nmethod = lsq\nbit = 2\n"
                       "[quant.ot]\nenable = true\nmethod = lsq\nbit = 3\n";
    OK(eq_config_parse_buffer(secs, EQ_MODEL_CONFIG_NSECTIONS_OT, "t.cfg", text, strlen(text), NULL, 0, &err));
    ck_assert(ot.enable && ot.bit == 3);
    eq_model *m = eq_model_new_ot(be, &cfg, &wt, &fm, &ot, 4, 12, 12, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    ck_assert_ptr_nonnull(strstr(eq_model_summary(m), "ot quantized"));
    ck_assert_ptr_null(eq_model_tensor_find(m, "conv1.quant_output.clip_val"));
    ck_assert_ptr_null(eq_model_tensor_find(m, "layer2.0.downsample.0.quant_output.clip_val")); /* real_skip */
    const eq_model_tensor *oc = eq_model_tensor_find(m, "layer3.2.conv2.quant_output.clip_val");
    ck_assert(oc && oc->quant && oc->kind == EQ_MT_PARAM && oc->no_decay);
    ck_assert_ptr_nonnull(eq_model_tensor_find(m, "layer1.0.conv1.quant_output.level_num"));
    ck_assert_ptr_null(eq_model_quant(m, "fc", EQ_QTAG_OT));
    ck_assert_ptr_null(eq_model_quant(m, "conv1", EQ_QTAG_OT));
    ck_assert_ptr_nonnull(eq_model_quant(m, "layer1.0.conv1", EQ_QTAG_OT));

    float x[4 * 12 * 12];
    int32_t y[4] = {1, 2, 3, 4};
    for (size_t i = 0; i < sizeof x / 4; i++) x[i] = (float)cos(0.37 * (double)i + (double)(i / 144));
    OK(eq_model_forward(m, x, true, &err));
    int64_t na, nw, no;
    const float *a = eq_model_quant_output(m, "layer1.0.conv1", EQ_QTAG_FM, &na);
    const float *wq = eq_model_quant_output(m, "layer1.0.conv1", EQ_QTAG_WT, &nw);
    const float *yo = eq_model_quant_output(m, "layer1.0.conv1", EQ_QTAG_OT, &no);
    ck_assert(a && wq && yo);
    ck_assert_int_eq(na, 4 * 14 * 14 * 4);
    ck_assert_int_eq(nw, 4 * 4 * 9);
    ck_assert_int_eq(no, 4 * 12 * 12 * 4);
    eq_conv2d_desc cd = {.n = 4, .h = 14, .w = 14, .c = 4, .k = 4, .r = 3, .s = 3, .stride_h = 1,
                         .stride_w = 1, .dil_h = 1, .dil_w = 1, .groups = 1};
    OK(eq_conv2d_desc_init(&cd, &err));
    static float raw[4 * 12 * 12 * 4], yref[4 * 12 * 12 * 4];
    OK(eq_backend_conv2d_fwd(be, &cd, a, wq, raw, &err));
    eq_quant_opts oq;
    eq_quant_opts_init(&oq, EQ_QTAG_OT);
    OK(eq_quant_opts_set(&oq, "method", "lsq", &err));
    OK(eq_quant_opts_set(&oq, "bit", "3", &err));
    int64_t ys[4] = {4, 12, 12, 4};
    eq_tensor_desc yd;
    OK(eq_tensor_desc_init(&yd, EQ_DT_F32, EQ_LAYOUT_NHWC, 4, ys, &err));
    eq_quant *rq = eq_quant_new(&oq, &yd, &err);
    ck_assert_msg(rq != NULL, "%s", err.msg);
    OK(eq_quant_forward(rq, &yd, raw, yref, true, &err));
    ck_assert_mem_eq(yo, yref, sizeof yref);
    ck_assert(eq_test_relerr(raw, yref, sizeof raw / 4) > 1e-2); /* it quantized */
    eq_quant_destroy(&rq);
    /* it trains: the output clips get gradients */
    float loss;
    OK(eq_model_loss(m, y, NULL, NULL, 0.0f, &loss, &err));
    OK(eq_model_backward(m, NULL, &err));
    ck_assert(isfinite(loss));
    ck_assert(oc->grad[0] != 0.0f);
    /* the output quantizers' state goes through a checkpoint by name */
    ((float *)oc->data)[0] = 0.625f;
    char *dir = eq_test_scratch("ot");
    char path[4200];
    snprintf(path, sizeof path, "%s/ot.safetensors", dir);
    eq_ckpt_run run = {.metric = NAN};
    OK(eq_checkpoint_save(path, m, NULL, &run, &err));
    eq_model *m2 = eq_model_new_ot(be, &cfg, &wt, &fm, &ot, 4, 12, 12, &err);
    ck_assert_msg(m2 != NULL, "%s", err.msg);
    OK(eq_checkpoint_load(path, m2, NULL, NULL, NULL, &err));
    const eq_model_tensor *oc2 = eq_model_tensor_find(m2, "layer3.2.conv2.quant_output.clip_val");
    ck_assert(oc2 && ((const float *)oc2->data)[0] == 0.625f);
    /* ... and a model without [quant.ot] refuses that checkpoint's extra tensors */
    eq_model *m3 = eq_model_new(be, &cfg, &wt, &fm, 4, 12, 12, &err);
    ck_assert_int_ne(eq_checkpoint_load(path, m3, NULL, NULL, NULL, &err), EQ_OK);
    ck_assert_msg(strstr(err.msg, "quant_output") != NULL, "%s", err.msg);
    eq_model_destroy(&m3);
    eq_model_destroy(&m2);
    eq_test_scratch_rm(dir);
    eq_model_destroy(&m);
    /* disabled [quant.ot] (and NULL) builds no output quantizers */
    ot.enable = false;
    m = eq_model_new_ot(be, &cfg, &wt, &fm, &ot, 4, 12, 12, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    ck_assert_ptr_null(eq_model_tensor_find(m, "layer1.0.conv1.quant_output.clip_val"));
    eq_model_destroy(&m);
    /* a bad [quant.ot] option is named */
    ot.enable = true;
    snprintf(ot.method, sizeof ot.method, "nosuch");
    ck_assert_ptr_null(eq_model_new_ot(be, &cfg, &wt, &fm, &ot, 4, 12, 12, &err));
    ck_assert_msg(strstr(err.msg, "quant.ot") != NULL, "%s", err.msg);
    eq_backend_destroy(&be);
}
END_TEST

/* ---- checkpoints ---------------------------------------------------------------- */

static eq_model *s_small_d(eq_backend *be, const char *kw, bool quant, double dropout)
{
    eq_err err = {0};
    eq_model_cfg cfg;
    eq_model_quant_cfg wt, fm;
    s_defaults(&cfg, &wt, &fm);
    cfg.dropout = dropout;
    snprintf(cfg.arch, sizeof cfg.arch, "resnet20");
    s_kw(&cfg, kw);
    cfg.width_alpha = 0.0625;
    cfg.seed = 5;
    wt.enable = fm.enable = quant;
    snprintf(wt.method, sizeof wt.method, "lsq");
    snprintf(fm.method, sizeof fm.method, "lsq");
    wt.bit = fm.bit = 2;
    eq_model *m = eq_model_new(be, &cfg, &wt, &fm, 2, 8, 8, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    return m;
}

static eq_model *s_small(eq_backend *be, const char *kw, bool quant)
{
    return s_small_d(be, kw, quant, 0.0);
}

static void s_train(eq_model *m, eq_optim *o, int steps, int first_step)
{
    eq_err err = {0};
    float x[2 * 8 * 8 * 3];
    int32_t y[2];
    for (int s = first_step; s < first_step + steps; s++) {
        for (size_t i = 0; i < sizeof x / 4; i++) x[i] = (float)sin(0.1 * (double)i + 0.77 * s);
        y[0] = s % 10, y[1] = (3 * s + 1) % 10;
        float loss;
        eq_model_set_noise_key(m, (uint64_t)s); /* dropout masks from the step, as eq-trainer */
        OK(eq_model_forward(m, x, true, &err));
        OK(eq_model_loss(m, y, NULL, NULL, 0.1f, &loss, &err));
        OK(eq_model_backward(m, NULL, &err));
        OK(eq_optim_step(o, 0.05, &err));
    }
}

static eq_optim *s_sgd(eq_model *m)
{
    eq_err err = {0};
    eq_optim_cfg oc;
    eq_config_section os[EQ_OPTIM_CONFIG_NSECTIONS];
    eq_optim_config_sections(&oc, NULL, os);
    OK(eq_config_defaults(os, 1, &err));
    oc.nesterov = true;
    eq_optim *o = eq_optim_new(m, &oc, &err);
    ck_assert_msg(o != NULL, "%s", err.msg);
    return o;
}

/* Bytes of every model and optimiser tensor are identical. */
static void s_same(const eq_model *a, const eq_model *b, const eq_optim *oa, const eq_optim *ob)
{
    ck_assert_uint_eq(eq_model_tensor_count(a), eq_model_tensor_count(b));
    for (size_t i = 0; i < eq_model_tensor_count(a); i++) {
        const eq_model_tensor *x = eq_model_tensor_at(a, i), *y = eq_model_tensor_at(b, i);
        ck_assert_msg(!memcmp(x->data, y->data, x->numel * (x->dtype == EQ_DT_I64 ? 8 : 4)),
                      "tensor %s differs", x->name);
    }
    for (size_t i = 0; oa && i < eq_optim_state_count(oa); i++) {
        const eq_model_tensor *x = eq_optim_state_at(oa, i), *y = eq_optim_state_at(ob, i);
        ck_assert_msg(!memcmp(x->data, y->data, x->numel * 4), "optimiser state %s differs", x->name);
    }
}

static void s_resume_case(bool quant, double dropout)
{
    eq_err err = {0};
    char *dir = eq_test_scratch("ckpt");
    eq_backend *be = eq_backend_cpu_new(2, &err);
    const char *kw = "origin,cbsa,fix_pooling,singleconv,fix";
    /* uninterrupted: 6 steps */
    eq_model *a = s_small_d(be, kw, quant, dropout);
    eq_optim *oa = s_sgd(a);
    s_train(a, oa, 6, 0);
    /* interrupted after 3, saved, loaded into fresh objects, 3 more */
    eq_model *b = s_small_d(be, kw, quant, dropout);
    eq_optim *ob = s_sgd(b);
    s_train(b, ob, 3, 0);
    char path[4200];
    snprintf(path, sizeof path, "%s/c.safetensors", dir);
    eq_ckpt_run run = {.epoch = 1, .step = 3, .rng = {1, 2, 3, 0xfedcba9876543210ull}, .metric = 0.5,
                       .config = "[model]\narch = resnet20\n"};
    OK(eq_checkpoint_save(path, b, ob, &run, &err));
    eq_optim_destroy(&ob);
    eq_model_destroy(&b);
    eq_model *c = s_small_d(be, kw, quant, dropout);
    eq_optim *oc = s_sgd(c);
    eq_ckpt_run r2;
    char *cfgtext = NULL;
    OK(eq_checkpoint_load(path, c, oc, &r2, &cfgtext, &err));
    ck_assert_int_eq(r2.step, 3);
    ck_assert_int_eq(r2.epoch, 1);
    ck_assert(r2.rng[3] == 0xfedcba9876543210ull);
    ck_assert(r2.metric == 0.5);
    ck_assert_str_eq(cfgtext, "[model]\narch = resnet20\n");
    free(cfgtext);
    ck_assert_int_eq(eq_optim_steps(oc), 3);
    s_train(c, oc, 3, 3);
    s_same(a, c, oa, oc);
    eq_optim_destroy(&oa);
    eq_optim_destroy(&oc);
    eq_model_destroy(&a);
    eq_model_destroy(&c);
    eq_backend_destroy(&be);
    eq_test_scratch_rm(dir);
}

/* A policy-enabled quantization loss (eq_quant_aux_loss) is added to the
 * reported loss after a training forward, its gradient reaches the
 * quantizer's parameters, and an eval forward reports the task loss only. */
START_TEST(test_quant_aux_loss)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    const char *kw = "origin,cbsa,fix_pooling,singleconv,fix";
    eq_model *a = s_small(be, kw, true), *b = s_small(be, kw, true);
    eq_quant *qf = eq_model_quant(b, "layer1.0.conv1", EQ_QTAG_FM);
    eq_quant *qw = eq_model_quant(b, "layer2.1.conv2", EQ_QTAG_WT);
    ck_assert(qf && qw);
    OK(eq_quant_set_option(qf, "quant_loss_enable", "true", &err));
    OK(eq_quant_set_option(qf, "quant_loss_function", "L2", &err));
    OK(eq_quant_set_option(qf, "quant_loss_alpha", "0.5", &err));
    OK(eq_quant_set_option(qw, "quant_loss_enable", "true", &err));
    OK(eq_quant_set_option(qw, "quant_loss_function", "QDL", &err));
    OK(eq_quant_set_option(qw, "quant_loss_alpha", "3", &err));
    float x[2 * 8 * 8 * 3];
    int32_t y[2] = {3, 7};
    for (size_t i = 0; i < sizeof x / 4; i++) x[i] = (float)sin(0.1 * (double)i + 0.3);
    float la, lb;
    OK(eq_model_forward(a, x, true, &err));
    OK(eq_model_loss(a, y, NULL, NULL, 0.0f, &la, &err));
    OK(eq_model_forward(b, x, true, &err));
    OK(eq_model_loss(b, y, NULL, NULL, 0.0f, &lb, &err));
    double af = eq_quant_aux_loss(qf), aw = eq_quant_aux_loss(qw);
    ck_assert_msg(af > 1e-4 && aw > 1e-4, "aux losses %g %g", af, aw);
    ck_assert_msg(fabs((double)lb - ((double)la + af + aw)) < 1e-5 * (double)lb, "loss %.9g, task %.9g + %.9g + %.9g",
                  (double)lb, (double)la, af, aw);
    OK(eq_model_backward(a, NULL, &err));
    OK(eq_model_backward(b, NULL, &err));
    /* the L2 term's gradient moves the fm clip; the other quantizers' do not change */
    const eq_model_tensor *ca = eq_model_tensor_find(a, "layer1.0.conv1.quant_activation.clip_val");
    const eq_model_tensor *cb = eq_model_tensor_find(b, "layer1.0.conv1.quant_activation.clip_val");
    ck_assert(ca && cb && ca->grad[0] != cb->grad[0]);
    ca = eq_model_tensor_find(a, "layer3.0.conv1.quant_activation.clip_val");
    cb = eq_model_tensor_find(b, "layer3.0.conv1.quant_activation.clip_val");
    ck_assert(ca && cb && ca->grad[0] == cb->grad[0]);
    /* eval: task loss only, identical in both */
    OK(eq_model_forward(a, x, false, &err));
    OK(eq_model_loss(a, y, NULL, NULL, 0.0f, &la, &err));
    OK(eq_model_forward(b, x, false, &err));
    OK(eq_model_loss(b, y, NULL, NULL, 0.0f, &lb, &err));
    ck_assert_msg(la == lb, "eval loss %.9g vs %.9g", (double)la, (double)lb);
    eq_model_destroy(&a);
    eq_model_destroy(&b);
    eq_backend_destroy(&be);
}
END_TEST

/* eq_layers_channel_repeat: torch.cat([x] * 3, dim=1) exactly; its
 * backward (the copies' gradients summed) against finite differences. */
START_TEST(test_channel_repeat)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    eq_layers *g = eq_layers_new(be, &err);
    int x = eq_layers_input(g, 2, 3, 3, 2, &err);
    ck_assert_int_lt(eq_layers_channel_repeat(g, x, 0, &err), 0);
    eq_layers_destroy(&g);
    g = eq_layers_new(be, &err);
    x = eq_layers_input(g, 2, 3, 3, 2, &err);
    ck_assert_int_ge(eq_layers_channel_repeat(g, x, 3, &err), 0);
    OK(eq_layers_finalize(g, 1, &err));
    float xs[2 * 3 * 3 * 2], r[2 * 3];
    for (size_t i = 0; i < sizeof xs / 4; i++) xs[i] = (float)sin(0.91 * (double)i + 0.2);
    OK(eq_layers_forward(g, xs, true, &err));
    int64_t sh[4];
    const float *y = eq_layers_output(g, NULL, sh);
    ck_assert(sh[0] == 2 && sh[1] == 3 && sh[2] == 3 && sh[3] == 6);
    for (int p = 0; p < 18; p++)
        for (int o = 0; o < 6; o++) ck_assert(y[p * 6 + o] == xs[p * 2 + o % 2]);
    eq_layers_destroy(&g);
    g = eq_layers_new(be, &err);
    x = eq_layers_input(g, 2, 3, 3, 2, &err);
    int c1 = eq_layers_conv(g, "c1", x, 2, 3, 1, 1, 1, NULL, NULL, false, &err);
    int cr = eq_layers_channel_repeat(g, c1, 3, &err);
    int c2 = eq_layers_conv(g, "c2", cr, 2, 1, 1, 0, 1, NULL, NULL, false, &err);
    int gp = eq_layers_gap(g, c2, &err);
    int fc = eq_layers_linear(g, "fc", gp, 3, NULL, NULL, &err);
    ck_assert_msg(fc >= 0, "%s", err.msg);
    OK(eq_layers_finalize(g, 11, &err));
    for (size_t i = 0; i < 6; i++) r[i] = (float)cos(1.3 * (double)i);
    s_fd_loss(g, xs, r);
    float *dy;
    eq_layers_output(g, &dy, NULL);
    memcpy(dy, r, sizeof r);
    OK(eq_layers_backward(g, &err));
    for (size_t i = 0; i < eq_layers_tensor_count(g); i++) {
        const eq_model_tensor *t = eq_layers_tensor_at(g, i);
        float *an = malloc(t->numel * sizeof *an), *fd = malloc(t->numel * sizeof *fd);
        memcpy(an, t->grad, t->numel * sizeof *an);
        float *d = t->data;
        for (size_t k = 0; k < t->numel; k++) {
            const float e = 2e-3f, v = d[k];
            d[k] = v + e;
            double lp = s_fd_loss(g, xs, r);
            d[k] = v - e;
            double lm = s_fd_loss(g, xs, r);
            d[k] = v;
            fd[k] = (float)((lp - lm) / (2.0 * (double)e));
        }
        double rel = eq_test_relerr(an, fd, t->numel);
        ck_assert_msg(rel < 2e-2, "%s: analytic vs finite differences rel err %g", t->name, rel);
        free(an);
        free(fd);
    }
    eq_layers_destroy(&g);
    eq_backend_destroy(&be);
}
END_TEST

static eq_model *s_kw_model(eq_backend *be, const char *arch, const char *kw, int64_t base, int64_t hw, eq_err *err)
{
    eq_model_cfg cfg;
    eq_model_quant_cfg wt, fm;
    s_defaults(&cfg, &wt, &fm);
    snprintf(cfg.arch, sizeof cfg.arch, "%s", arch);
    s_kw(&cfg, kw);
    cfg.width_alpha = 0.0625;
    cfg.base = base;
    return eq_model_new(be, &cfg, NULL, NULL, 2, hw, hw, err);
}

/* Every tensor whose name ends in `suffix` (under layer*) holds `v`;
 * returns how many there are. */
static int s_all_eq(const eq_model *m, const char *suffix, float v)
{
    int n = 0;
    for (size_t i = 0; i < eq_model_tensor_count(m); i++) {
        const eq_model_tensor *t = eq_model_tensor_at(m, i);
        size_t len = strlen(t->name), sl = strlen(suffix);
        if (strncmp(t->name, "layer", 5) || len < sl || strcmp(t->name + len - sl, suffix)) continue;
        for (size_t k = 0; k < t->numel; k++)
            ck_assert_msg(((const float *)t->data)[k] == v, "%s[%zu] = %g, expected %g", t->name, k,
                          (double)((const float *)t->data)[k], (double)v);
        n++;
    }
    return n;
}

/* Keywords DCHR (parameter-free shortcuts) and zir (the residual branch's
 * last BN scale starts at 0), and their refusals. */
START_TEST(test_dchr_zir)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    eq_model *a = s_kw_model(be, "resnet20", "origin,cbsa,fix_pooling,singleconv,fix", 1, 8, &err);
    eq_model *m = s_kw_model(be, "resnet20", "origin,cbsa,fix_pooling,singleconv,fix,DCHR", 1, 8, &err);
    ck_assert_msg(a && m, "%s", err.msg);
    for (size_t i = 0; i < eq_model_tensor_count(m); i++)
        ck_assert_msg(!strstr(eq_model_tensor_at(m, i)->name, "downsample"), "%s", eq_model_tensor_at(m, i)->name);
    ck_assert_uint_eq(eq_model_tensor_count(a), eq_model_tensor_count(m) + 2 * 6); /* 2 x (conv + 5 BN) */
    float x[2 * 8 * 8 * 3], loss;
    int32_t y[2] = {1, 5};
    for (size_t i = 0; i < sizeof x / 4; i++) x[i] = (float)sin(0.1 * (double)i + 0.3);
    OK(eq_model_forward(m, x, true, &err));
    OK(eq_model_loss(m, y, NULL, NULL, 0.0f, &loss, &err));
    OK(eq_model_backward(m, NULL, &err));
    ck_assert(isfinite(loss));
    eq_model_destroy(&a);
    eq_model_destroy(&m);

    m = s_kw_model(be, "resnet20", "origin,cbsa,fix_pooling,singleconv,fix,zir", 1, 8, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    ck_assert_int_eq(s_all_eq(m, ".bn2.weight", 0.0f), 9);
    ck_assert_int_eq(s_all_eq(m, ".bn1.weight", 1.0f), 9);
    ck_assert(((const float *)eq_model_tensor_find(m, "bn1.weight")->data)[0] == 1.0f);
    eq_model_destroy(&m);
    m = s_kw_model(be, "resnet20", "origin,preBN,bacs,fix,zir", 1, 8, &err); /* fix_bn when present */
    ck_assert_msg(m != NULL, "%s", err.msg);
    ck_assert_int_eq(s_all_eq(m, ".fix_bn.weight", 0.0f), 9);
    ck_assert_int_eq(s_all_eq(m, ".bn2.weight", 1.0f), 9);
    eq_model_destroy(&m);
    m = s_kw_model(be, "resnet20", "cabs,fix,group-net,singleconv,zir", 2, 8, &err); /* every branch */
    ck_assert_msg(m != NULL, "%s", err.msg);
    ck_assert_int_eq(s_all_eq(m, ".bn2.0.weight", 0.0f), 9);
    ck_assert_int_eq(s_all_eq(m, ".bn2.1.weight", 0.0f), 9);
    ck_assert_int_eq(s_all_eq(m, ".bn1.1.weight", 1.0f), 9);
    eq_model_destroy(&m);
    m = s_kw_model(be, "resnet50", "origin,cbsa,fix_pooling,singleconv,fix,zir", 1, 32, &err); /* bn3 */
    ck_assert_msg(m != NULL, "%s", err.msg);
    ck_assert_int_eq(s_all_eq(m, ".bn3.weight", 0.0f), 16);
    ck_assert_int_eq(s_all_eq(m, ".bn2.weight", 1.0f), 16);
    eq_model_destroy(&m);

    ck_assert_ptr_null(s_kw_model(be, "resnet50", "origin,cbsa,DCHR", 1, 32, &err));
    ck_assert_msg(strstr(err.msg, "DCHR") && strstr(err.msg, "BasicBlock"), "%s", err.msg);
    ck_assert_ptr_null(s_kw_model(be, "torch-resnet18", "zir", 1, 32, &err));
    ck_assert_msg(strstr(err.msg, "zir"), "%s", err.msg);
    ck_assert_ptr_null(s_kw_model(be, "resnet20", "origin,cbsa,fix,fixup,zir", 1, 8, &err));
    ck_assert_msg(strstr(err.msg, "fixup"), "%s", err.msg);
    eq_backend_destroy(&be);
}
END_TEST

/* [model] dropout: no tensors, eval unchanged, training differs; the
 * checkpoint resume stays bit-exact (masks keyed by the step). */
START_TEST(test_dropout_model)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    const char *kw = "origin,cbsa,fix_pooling,singleconv,fix";
    eq_model *a = s_small(be, kw, false), *b = s_small_d(be, kw, false, 0.5);
    ck_assert_uint_eq(eq_model_tensor_count(a), eq_model_tensor_count(b));
    float x[2 * 8 * 8 * 3];
    for (size_t i = 0; i < sizeof x / 4; i++) x[i] = (float)sin(0.1 * (double)i + 0.3);
    int64_t nb, nc;
    OK(eq_model_forward(a, x, false, &err));
    OK(eq_model_forward(b, x, false, &err));
    ck_assert_mem_eq(eq_model_logits(a, &nb, &nc), eq_model_logits(b, NULL, NULL), (size_t)(nb * nc) * 4);
    OK(eq_model_forward(a, x, true, &err));
    eq_model_set_noise_key(b, 42);
    OK(eq_model_forward(b, x, true, &err));
    ck_assert(memcmp(eq_model_logits(a, NULL, NULL), eq_model_logits(b, NULL, NULL), (size_t)(nb * nc) * 4) != 0);
    eq_model_destroy(&a);
    eq_model_destroy(&b);
    eq_backend_destroy(&be);
    s_resume_case(true, 0.5);
}
END_TEST

START_TEST(test_resume_bit_exact)
{
    s_resume_case(false, 0.0);
}
END_TEST

START_TEST(test_resume_bit_exact_quant)
{
    s_resume_case(true, 0.0);
}
END_TEST

START_TEST(test_checkpoint_errors)
{
    eq_err err = {0};
    char *dir = eq_test_scratch("ckpterr");
    eq_backend *be = eq_backend_cpu_new(1, &err);
    eq_model *a = s_small(be, "origin,cbsa", false);
    eq_model *b = s_small(be, "origin,cbsa,fix", false); /* no layer*.act2 ... same tensors? */
    eq_model *pre = s_small(be, "origin,preBN,bacs", false);
    char path[4200];
    snprintf(path, sizeof path, "%s/a.safetensors", dir);
    eq_ckpt_run run = {.metric = NAN};
    OK(eq_checkpoint_save(path, a, NULL, &run, &err));
    /* a different architecture: the first mismatch is named */
    ck_assert_int_ne(eq_checkpoint_load(path, pre, NULL, NULL, NULL, &err), EQ_OK);
    ck_assert_msg(strstr(err.msg, "tensor '") != NULL, "%s", err.msg);
    /* an optimiser asked for but not saved */
    eq_optim *o = s_sgd(b);
    ck_assert_int_eq(eq_checkpoint_load(path, b, o, NULL, NULL, &err), EQ_ERR_NOTFOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, "optimiser"));
    eq_optim_destroy(&o);
    /* a shape mismatch names the tensor and both shapes */
    eq_st_file *f = eq_st_open(path, NULL, &err);
    ck_assert_ptr_nonnull(f);
    eq_model_cfg cfg;
    s_defaults(&cfg, NULL, NULL);
    s_kw(&cfg, "origin,cbsa");
    cfg.width_alpha = 0.125;
    eq_model *wide = eq_model_new(be, &cfg, NULL, NULL, 2, 8, 8, &err);
    ck_assert_ptr_nonnull(wide);
    ck_assert_int_eq(eq_checkpoint_load_tensors(wide, f, "", false, false, NULL, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "'conv1.weight'") && strstr(err.msg, "[4,3,3,3]") && strstr(err.msg, "[8,3,3,3]"),
                  "%s", err.msg);
    /* pretrained FP weights into a quantized model: quantizer state missing */
    eq_model *q = s_small(be, "origin,cbsa", true);
    size_t missing = 0;
    ck_assert_int_eq(eq_checkpoint_load_tensors(q, f, "", false, false, NULL, &err), EQ_ERR_NOTFOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, "quant."));
    OK(eq_checkpoint_load_tensors(q, f, "", true, false, &missing, &err));
    ck_assert_uint_gt(missing, 0);
    const eq_model_tensor *w1 = eq_model_tensor_find(q, "layer1.0.conv1.weight");
    const eq_model_tensor *w0 = eq_model_tensor_find(a, "layer1.0.conv1.weight");
    ck_assert(!memcmp(w1->data, w0->data, w0->numel * 4));
    eq_st_close(&f);
    /* not a checkpoint */
    snprintf(path, sizeof path, "%s/tests/fixtures/models/resnet20.safetensors", eq_test_srcdir());
    ck_assert_int_eq(eq_checkpoint_load(path, a, NULL, NULL, NULL, &err), EQ_ERR_VERSION);
    eq_model_destroy(&q);
    eq_model_destroy(&wide);
    eq_model_destroy(&pre);
    eq_model_destroy(&b);
    eq_model_destroy(&a);
    eq_backend_destroy(&be);
    eq_test_scratch_rm(dir);
}
END_TEST

START_TEST(test_checkpoint_rotation)
{
    eq_err err = {0};
    char *dir = eq_test_scratch("rot");
    eq_backend *be = eq_backend_cpu_new(1, &err);
    eq_model *m = s_small(be, "origin,cbsa", false);
    double best = NAN;
    double metrics[5] = {0.1, 0.4, 0.3, NAN, 0.2};
    for (int s = 0; s < 5; s++) {
        eq_ckpt_run run = {.step = 10 * (s + 1), .metric = metrics[s]};
        char out[4200];
        OK(eq_checkpoint_save_rotating(dir, 2, m, NULL, &run, &best, out, sizeof out, &err));
        ck_assert_ptr_nonnull(strstr(out, "ckpt-"));
    }
    ck_assert(best == 0.4);
    char p[4300];
    struct stat sb;
    for (int s = 1; s <= 5; s++) {
        snprintf(p, sizeof p, "%s/ckpt-%d.safetensors", dir, 10 * s);
        ck_assert_int_eq(stat(p, &sb) == 0, s >= 4);
    }
    snprintf(p, sizeof p, "%s/best.safetensors", dir);
    eq_ckpt_run r;
    OK(eq_checkpoint_load(p, m, NULL, &r, NULL, &err));
    ck_assert_int_eq(r.step, 20);
    eq_model_destroy(&m);
    eq_backend_destroy(&be);
    eq_test_scratch_rm(dir);
}
END_TEST

/* ---- eq-model run ------------------------------------------------------------ */

/* The ResNet-20 fixture through eq_model_run: weights from an eq checkpoint,
 * x as NCHW, --train --step; the gradients equal PyTorch's. */
START_TEST(test_model_run)
{
    eq_err err = {0};
    char *dir = eq_test_scratch("mrun");
    eq_st_file *f = s_fixture("resnet20.safetensors");
    eq_model_cfg cfg;
    s_cfg_from(f, &cfg);
    eq_backend *be = eq_backend_cpu_new(1, &err);
    eq_model *m = eq_model_new(be, &cfg, NULL, NULL, 2, 16, 16, &err);
    ck_assert_ptr_nonnull(m);
    OK(eq_checkpoint_load_tensors(m, f, "param.", false, false, NULL, &err));
    char wpath[4200], xpath[4200], ypath[4200], cpath[4200];
    snprintf(wpath, sizeof wpath, "%s/w.safetensors", dir);
    snprintf(xpath, sizeof xpath, "%s/x.safetensors", dir);
    snprintf(ypath, sizeof ypath, "%s/y.safetensors", dir);
    snprintf(cpath, sizeof cpath, "%s/c.cfg", dir);
    eq_ckpt_run run = {.metric = NAN};
    OK(eq_checkpoint_save(wpath, m, NULL, &run, &err));
    /* X: the fixture's NHWC input as NCHW */
    const float *xh = s_get(f, "x", 2 * 16 * 16 * 3);
    static float xc[2 * 3 * 16 * 16];
    for (int n = 0; n < 2; n++)
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < 256; i++) xc[(n * 3 + c) * 256 + i] = xh[(n * 256 + i) * 3 + c];
    const int32_t *yv = eq_st_data(f, (size_t)eq_st_find(f, "y"), NULL);
    eq_st_writer *w = eq_st_writer_new();
    OK(eq_st_writer_add(w, "x", EQ_DT_F32, 4, (int64_t[]){2, 3, 16, 16}, xc, &err));
    OK(eq_st_writer_add(w, "y", EQ_DT_I32, 1, (int64_t[]){2}, yv, &err));
    OK(eq_st_writer_save(w, xpath, &err));
    eq_st_writer_destroy(&w);
    FILE *cf = fopen(cpath, "w");
    fprintf(cf, "[data]\nwhatever = 1\n[model]\narch = resnet20\n"
                "keyword = cifar100, origin, cbsa, fix_pooling, singleconv, fix, real_skip\n"
                "width_alpha = 0.125\n[optim]\nlr = 0.1\n[train]\nx = 2\n");
    fclose(cf);
    eq_model_run_args a = {.config = cpath, .weights = wpath, .in = xpath, .out = ypath,
                           .train = true, .step = true, .threads = 1};
    OK(eq_model_run(&a, &err));
    eq_st_file *out = eq_st_open(ypath, NULL, &err);
    ck_assert_ptr_nonnull(out);
    ck_assert(eq_test_relerr(s_get(out, "logits", 20), s_get(f, "logits", 20), 20) < TOL);
    ck_assert(fabs(s_get(out, "loss", 1)[0] - s_get(f, "loss", 1)[0]) < TOL * 3);
    size_t ng = 0;
    for (size_t i = 0; i < eq_model_tensor_count(m); i++) {
        const eq_model_tensor *t = eq_model_tensor_at(m, i);
        if (t->kind != EQ_MT_PARAM) continue;
        char name[512];
        snprintf(name, sizeof name, "grad.%s", t->name);
        ck_assert_msg(eq_test_relerr(s_get(out, name, t->numel), s_get(f, name, t->numel), t->numel) < TOL, "%s", name);
        snprintf(name, sizeof name, "%s", t->name); /* updated by --step: moved */
        ck_assert(eq_test_relerr(s_get(out, name, t->numel), t->data, t->numel) > 0);
        ng++;
    }
    ck_assert_uint_gt(ng, 20);
    eq_st_close(&out);
    /* errors name the file and line, or the option */
    cf = fopen(cpath, "w");
    fprintf(cf, "[model]\narch = resnet20\nwidht_alpha = 2\n");
    fclose(cf);
    ck_assert_int_ne(eq_model_run(&a, &err), EQ_OK);
    ck_assert_msg(strstr(err.msg, "c.cfg:3"), "%s", err.msg);
    a.train = false;
    ck_assert_int_eq(eq_model_run(&a, &err), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "--step"));
    char *argv[] = {"run", "--config", cpath, "--bogus", NULL};
    ck_assert_int_eq(eq_model_cli(4, argv), 2);
    eq_model_destroy(&m);
    eq_backend_destroy(&be);
    eq_st_close(&f);
    eq_test_scratch_rm(dir);
}
END_TEST

/* ---- config, schedules, decay ---------------------------------------------------- */

START_TEST(test_config_schemas)
{
    eq_err err = {0};
    eq_config_section secs[EQ_MODEL_CONFIG_NSECTIONS + EQ_OPTIM_CONFIG_NSECTIONS];
    eq_model_cfg m;
    eq_model_quant_cfg wt, fm;
    eq_optim_cfg o;
    eq_schedule_cfg s;
    eq_model_config_sections(&m, &wt, &fm, secs);
    eq_optim_config_sections(&o, &s, secs + EQ_MODEL_CONFIG_NSECTIONS);
    size_t ns = EQ_MODEL_CONFIG_NSECTIONS + EQ_OPTIM_CONFIG_NSECTIONS;
    OK(eq_config_check_schema(secs, ns, &err));
    const char *bad = "[quant.fm]\nadaptive = sideways\n";
    ck_assert_int_eq(eq_config_parse_buffer(secs, ns, "b.cfg", bad, strlen(bad), NULL, 0, &err), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "b.cfg:2"));
    /* a method quant/ does not know is caught when the model is built */
    const char *t = "[quant.wt]\nenable = true\nmethod = ternary\n";
    OK(eq_config_parse_buffer(secs, ns, "t.cfg", t, strlen(t), NULL, 0, &err));
    eq_backend *be = eq_backend_cpu_new(1, &err);
    s_kw(&m, "origin,cbsa");
    ck_assert_ptr_null(eq_model_new(be, &m, &wt, &fm, 2, 8, 8, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "[quant.wt]"));
    eq_backend_destroy(&be);
    char *doc = NULL;
    OK(eq_config_doc(secs, ns, &doc, NULL, &err));
    ck_assert_ptr_nonnull(strstr(doc, "padding_after_quant"));
    free(doc);
}
END_TEST

START_TEST(test_schedules)
{
    eq_err err = {0};
    eq_schedule_cfg s;
    eq_config_section secs[EQ_OPTIM_CONFIG_NSECTIONS];
    eq_optim_config_sections(NULL, &s, secs);
    OK(eq_config_defaults(secs, EQ_OPTIM_CONFIG_NSECTIONS, &err));
    double lr;
    s.epochs = 90;
    s.nlr_custom_step = 2, s.lr_custom_step[0] = 30, s.lr_custom_step[1] = 60;
    s.policy = EQ_LR_CUSTOM_STEP, s.lr_decay = 0.1;
    OK(eq_schedule_lr(&s, 0.1, 29, 0, 100, &lr, &err));
    ck_assert_double_eq_tol(lr, 0.1, 1e-15);
    OK(eq_schedule_lr(&s, 0.1, 30, 0, 100, &lr, &err));
    ck_assert_double_eq_tol(lr, 0.01, 1e-15);
    OK(eq_schedule_lr(&s, 0.1, 95, 0, 100, &lr, &err)); /* extra epochs keep the last lr */
    ck_assert_double_eq_tol(lr, 0.001, 1e-15);
    s.policy = EQ_LR_COS, s.nlr_custom_step = 0, s.eta_min = 0;
    OK(eq_schedule_lr(&s, 0.1, 45, 0, 100, &lr, &err));
    ck_assert_double_eq_tol(lr, 0.05, 1e-12);
    s.policy = EQ_LR_SGDR;
    OK(eq_schedule_lr(&s, 0.1, 45, 0, 100, &lr, &err));
    ck_assert_double_eq_tol(lr, 0.05, 1e-12);
    OK(eq_schedule_lr(&s, 0.1, 0, 50, 100, &lr, &err));
    ck_assert_double_eq_tol(lr, 0.05 * (1 + cos(M_PI * 50.0 / 9000.0)), 1e-12);
    s.policy = EQ_LR_POLY, s.lr_decay = 2.0;
    OK(eq_schedule_lr(&s, 0.1, 45, 0, 100, &lr, &err));
    ck_assert_double_eq_tol(lr, 0.1 * 0.25, 1e-12);
    s.policy = EQ_LR_DECAY, s.lr_decay = 0.98;
    OK(eq_schedule_lr(&s, 0.1, 3, 0, 100, &lr, &err));
    ck_assert_double_eq_tol(lr, 0.1 * pow(0.98, 3), 1e-15);
    s.policy = EQ_LR_FIX_STEP, s.lr_fix_step = 30, s.lr_decay = 0.1;
    OK(eq_schedule_lr(&s, 0.1, 61, 0, 100, &lr, &err));
    ck_assert_double_eq_tol(lr, 0.001, 1e-15);
    s.policy = EQ_LR_FIX, s.warmup_epochs = 2;
    OK(eq_schedule_lr(&s, 0.1, 0, 0, 100, &lr, &err));
    ck_assert_double_eq_tol(lr, 0.1 / 200, 1e-15);
    OK(eq_schedule_lr(&s, 0.1, 1, 99, 100, &lr, &err));
    ck_assert_double_eq_tol(lr, 0.1, 1e-15);
    s.nlr_custom_step = 2, s.lr_custom_step[0] = 60, s.lr_custom_step[1] = 30;
    ck_assert_int_eq(eq_schedule_lr(&s, 0.1, 0, 0, 100, &lr, &err), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "lr_custom_step"));
}
END_TEST

START_TEST(test_decay_groups)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    eq_model *m = s_small(be, "origin,cbsa,PReLU", true);
    eq_optim_cfg oc;
    eq_config_section os[EQ_OPTIM_CONFIG_NSECTIONS];
    eq_optim_config_sections(&oc, NULL, os);
    OK(eq_config_defaults(os, 1, &err));
    eq_optim *o = eq_optim_new(m, &oc, &err);
    ck_assert_double_eq(eq_optim_decay_of(o, "layer1.0.conv1.weight"), (float)1e-4);
    ck_assert_double_eq(eq_optim_decay_of(o, "fc.weight"), (float)1e-4);
    ck_assert_double_eq(eq_optim_decay_of(o, "fc.bias"), 0);
    ck_assert_double_eq(eq_optim_decay_of(o, "layer1.0.bn1.weight"), 0);
    ck_assert_double_eq(eq_optim_decay_of(o, "layer1.0.act1.weight"), 0);
    ck_assert_double_eq(eq_optim_decay_of(o, "layer1.0.conv1.quant_activation.clip_val"), 0);
    ck_assert(eq_optim_decay_of(o, "layer1.0.bn1.running_mean") < 0);
    eq_optim_destroy(&o);
    oc.decay_small = true;
    oc.ncustom_decay_list = 1;
    snprintf(oc.custom_decay_list[0], sizeof oc.custom_decay_list[0], "clip_val");
    o = eq_optim_new(m, &oc, &err);
    ck_assert_double_eq(eq_optim_decay_of(o, "fc.bias"), (float)1e-4);
    ck_assert_double_eq(eq_optim_decay_of(o, "layer1.0.conv1.quant_activation.clip_val"), (float)0.02);
    /* SGD state names follow torch.optim */
    ck_assert_ptr_nonnull(strstr(eq_optim_state_at(o, 0)->name, ".momentum_buffer"));
    eq_optim_destroy(&o);
    /* Adam: two moments per parameter; a step moves every parameter by about
     * lr (Adam's first step is lr * sign(g) where g != 0) */
    oc.method = 1, oc.lr = 1e-3, oc.weight_decay = 0, oc.ncustom_decay_list = 0;
    o = eq_optim_new(m, &oc, &err);
    ck_assert_ptr_nonnull(o);
    ck_assert_uint_eq(eq_optim_state_count(o) % 2, 0);
    ck_assert_ptr_nonnull(strstr(eq_optim_state_at(o, 0)->name, ".exp_avg"));
    ck_assert_ptr_nonnull(strstr(eq_optim_state_at(o, 1)->name, ".exp_avg_sq"));
    const eq_model_tensor *fw = eq_model_tensor_find(m, "fc.weight");
    float before = ((float *)fw->data)[0];
    float x[2 * 8 * 8 * 3];
    int32_t y[2] = {1, 2};
    for (size_t i = 0; i < sizeof x / 4; i++) x[i] = (float)sin(0.3 * (double)i);
    float loss;
    OK(eq_model_forward(m, x, true, &err));
    OK(eq_model_loss(m, y, NULL, NULL, 0.0f, &loss, &err));
    OK(eq_model_backward(m, NULL, &err));
    OK(eq_optim_step(o, oc.lr, &err));
    ck_assert_int_eq(eq_optim_steps(o), 1);
    ck_assert(fabs(fabs(((float *)fw->data)[0] - before) - 1e-3) < 1e-5);
    eq_optim_destroy(&o);
    eq_model_destroy(&m);
    eq_backend_destroy(&be);
}
END_TEST

/* custom_lr_list: "quant_weight" puts quantized layers' FP weights at a
 * constant custom_lr and their weight quantizers' parameters at custom_lr
 * scaled by the schedule; other entries scale too; the step applies them. */
START_TEST(test_custom_lr)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    eq_model *m = s_small(be, "origin,cbsa", true);
    eq_optim_cfg oc;
    eq_config_section os[EQ_OPTIM_CONFIG_NSECTIONS];
    eq_optim_config_sections(&oc, NULL, os);
    const char *text = "[optim]\nlr = 0.1\nmomentum = 0\nweight_decay = 0\n"
                       "custom_lr_list = quant_weight, fc.\ncustom_lr = 0.001\n";
    OK(eq_config_parse_buffer(os, 1, "o.cfg", text, strlen(text), NULL, 0, &err));
    eq_optim *o = eq_optim_new(m, &oc, &err);
    ck_assert_msg(o != NULL, "%s", err.msg);
    const char *names[5] = {"layer1.0.conv1.weight", "layer1.0.conv1.quant_weight.clip_val", "fc.weight",
                            "conv1.weight", "layer1.0.bn1.weight"};
    const double want[5] = {0.001, 0.0005, 0.0005, 0.05, 0.05}; /* at a scheduled lr of 0.05 */
    for (int i = 0; i < 5; i++)
        ck_assert_msg(fabs(eq_optim_lr_of(o, names[i], 0.05) - want[i]) < 1e-12, "%s: lr %g, want %g",
                      names[i], eq_optim_lr_of(o, names[i], 0.05), want[i]);
    ck_assert(eq_optim_lr_of(o, "layer1.0.bn1.running_mean", 0.05) < 0);
    float x[2 * 8 * 8 * 3];
    int32_t y[2] = {1, 2};
    for (size_t i = 0; i < sizeof x / 4; i++) x[i] = (float)sin(0.3 * (double)i);
    float loss;
    OK(eq_model_forward(m, x, true, &err));
    OK(eq_model_loss(m, y, NULL, NULL, 0.0f, &loss, &err));
    OK(eq_model_backward(m, NULL, &err));
    float before[5], grad[5];
    for (int i = 0; i < 5; i++) {
        const eq_model_tensor *t = eq_model_tensor_find(m, names[i]);
        ck_assert_ptr_nonnull(t);
        before[i] = ((float *)t->data)[0], grad[i] = t->grad[0];
    }
    OK(eq_optim_step(o, 0.05, &err));
    for (int i = 0; i < 5; i++) {
        float after = ((float *)eq_model_tensor_find(m, names[i])->data)[0];
        float expect = before[i] - (float)want[i] * grad[i];
        ck_assert_msg(grad[i] != 0.0f, "%s: zero gradient", names[i]);
        ck_assert_msg(after == expect, "%s: %.9g after the step, want %.9g", names[i], after, expect);
    }
    eq_optim_destroy(&o);
    eq_model_destroy(&m);
    eq_backend_destroy(&be);
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("parity");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_parity_torch_resnet18);
    tcase_add_test(tc, test_parity_resnet20);
    tcase_add_test(tc, test_parity_resnet20_bireal);
    tcase_add_test(tc, test_parity_resnet18_prebn);
    tcase_add_test(tc, test_parity_resnet20_lsq);
    tcase_add_test(tc, test_parity_resnet20_xnor_bireal);
    suite_add_tcase(s, tc);
    tc = tcase_create("full-size");
    tcase_set_timeout(tc, 120); /* ~2 GFLOP x 3 per image; seconds on two cores */
    tcase_add_test(tc, test_parity_torch_resnet18_224);
    tcase_add_test(tc, test_parity_mobilenet_v2);
    tcase_add_test(tc, test_parity_mobilenet_v1);
    tcase_add_test(tc, test_parity_tresnet_stem);
    tcase_add_test(tc, test_parity_fixup);
    tcase_add_test(tc, test_parity_groupnet);
    tcase_add_test(tc, test_parity_ldn);
    suite_add_tcase(s, tc);
    tc = tcase_create("build");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_torchvision_names);
    tcase_add_test(tc, test_model_errors);
    tcase_add_test(tc, test_config_schemas);
    tcase_add_test(tc, test_finite_differences);
    tcase_add_test(tc, test_finite_differences_2);
    tcase_add_test(tc, test_dropout);
    tcase_add_test(tc, test_channel_repeat);
    tcase_add_test(tc, test_dchr_zir);
    suite_add_tcase(s, tc);
    tc = tcase_create("quant");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_quant_conv_pad_before);
    tcase_add_test(tc, test_conv_output_quant);
    tcase_add_test(tc, test_quant_conv_pad_after);
    tcase_add_test(tc, test_quant_resnet20_config);
    tcase_add_test(tc, test_quant_ot_config);
    tcase_add_test(tc, test_mobilenet_build);
    tcase_add_test(tc, test_fixup_build);
    suite_add_tcase(s, tc);
    tc = tcase_create("checkpoint");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_quant_aux_loss);
    tcase_add_test(tc, test_resume_bit_exact);
    tcase_add_test(tc, test_dropout_model);
    tcase_add_test(tc, test_resume_bit_exact_quant);
    tcase_add_test(tc, test_checkpoint_errors);
    tcase_add_test(tc, test_checkpoint_rotation);
    tcase_add_test(tc, test_model_run);
    suite_add_tcase(s, tc);
    tc = tcase_create("optim");
    tcase_add_test(tc, test_schedules);
    tcase_add_test(tc, test_decay_groups);
    tcase_add_test(tc, test_custom_lr);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return eq_test_run(s_suite());
}
