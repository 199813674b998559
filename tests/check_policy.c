/*
 * tests/check_policy.c -- policy files (trainer/policy.h): the original's
 * parsing rules, errors naming file:line, the quantized-layer table's
 * index order on a real ResNet-20, application (progressive level change,
 * state fills, optimiser reset, options-only re-application) and the
 * per-epoch quantizer statistics.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "testutil.h"
#include "trainer/backend.h"
#include "trainer/optim.h"
#include "trainer/policy.h"

#define OK(x)                                                                                                \
    do {                                                                                                     \
        eq_status st_ = (x);                                                                                 \
        ck_assert_msg(st_ == EQ_OK, "%s: %s", #x, err.msg);                                                  \
    } while (0)

/* ---- parsing ----------------------------------------------------------------- */

START_TEST(test_parse_sections)
{
    eq_err err = {0};
    const char *text = "# progressive LSQ\n"
                       "\n"
                       "on init:\n"
                       "by_index: all\n"
                       "by_tag: wt, fm   # both\n"
                       "progressive: True\n"
                       "by_index: 1 3\n"
                       "clip_val: 2.5\n"
                       "clip_val: 3\n"
                       "   on epoch: 2 4  \n"
                       "by_index: 0\n"
                       "level_num: -1\n";
    eq_policy *p = eq_policy_parse(text, "p.txt", &err);
    ck_assert_msg(p != NULL, "%s", err.msg);
    ck_assert_uint_eq(eq_policy_rule_count(p, EQ_POLICY_INIT), 2);
    ck_assert_uint_eq(eq_policy_rule_count(p, EQ_POLICY_EPOCH), 1);
    ck_assert(eq_policy_triggers(p, 2));
    ck_assert(eq_policy_triggers(p, 4));
    ck_assert(!eq_policy_triggers(p, 0));
    ck_assert(!eq_policy_triggers(p, 3));
    eq_policy_destroy(&p);
    ck_assert_ptr_null(p);
    eq_policy_destroy(&p); /* NULL-safe */
}
END_TEST

START_TEST(test_parse_stops_at_line_without_colon)
{
    eq_err err = {0};
    /* The original stops reading at a line without ':'; what follows (here
     * a rule that would be an error) is never read. */
    const char *text = "on epoch: 1\nby_index: all\nlevel_num: 3\nthis line ends it\nby_index: x\nbogus: 1\n";
    eq_policy *p = eq_policy_parse(text, "p.txt", &err);
    ck_assert_msg(p != NULL, "%s", err.msg);
    ck_assert_uint_eq(eq_policy_rule_count(p, EQ_POLICY_EPOCH), 1);
    eq_policy_destroy(&p);
    /* A tab-indented comment has no ':' either (the original strips spaces
     * only): it ends the policy too. */
    p = eq_policy_parse(
        "on init:\nby_index: 0\nclip_val: 1\n\t# note\non epoch: 1\nby_index: 0\nclip_val: 2\n", "p.txt",
        &err);
    ck_assert_msg(p != NULL, "%s", err.msg);
    ck_assert_uint_eq(eq_policy_rule_count(p, EQ_POLICY_INIT), 1);
    ck_assert_uint_eq(eq_policy_rule_count(p, EQ_POLICY_EPOCH), 0);
    eq_policy_destroy(&p);
}
END_TEST

static const struct {
    const char *text, *want;
} s_bad[] = {
    {"on init:\nby_index: 0\nfoo: 1\n", "p.txt:3: unknown attribute 'foo'"},
    {"on init:\nby_index: 0\nmethod: lsq\n", "p.txt:3: attribute 'method': eq's quantizers fix"},
    {"on init:\nby_index: 0\nbit: 3\n", "p.txt:3: attribute 'bit'"},
    {"on init:\nby_index: 0\nenable: maybe\n", "p.txt:3: quant option enable: 'maybe'"},
    {"on init:\nby_index: 0\nenable: True, False\n", "p.txt:3: attribute 'enable' takes one value"},
    {"on init:\nby_index: 0\nstable: -1\n", "p.txt:3: quant option stable"},
    {"on epoch: 2\nby_index: 0\nstable: 1.5\n", "p.txt:3: quant option stable: '1.5'"},
    {"on init:\nby_index: 0\nadaptive_restore: 2\n", "p.txt:3: quant option adaptive_restore"},
    {"on init:\nby_index: 0\nquant_loss_enable: x\n", "p.txt:3: quant option quant_loss_enable"},
    {"on init:\nby_index: 0\nquant_loss_function: L3\n", "p.txt:3: quant option quant_loss_function: 'L3'"},
    {"on init:\nby_index: 0\nquant_loss_alpha: nan\n", "p.txt:3: quant option quant_loss_alpha: 'nan'"},
    {"on norm:\nby_index: 0\nclip_val: 1\n", "p.txt:1: section 'norm'"},
    {"on:\n", "p.txt:1: header 'on' names no section"},
    {"on epoch: 1\nby_index: 0\nclip_val: 1\non epoch: 2\n", "p.txt:4: a second 'on epoch' section"},
    {"on epoch:\n", "p.txt:1: 'on epoch' without trigger epochs"},
    {"on epoch: 1,2\n", "p.txt:1: trigger '1,2'"},
    {"by_index: 0\n", "p.txt:1: 'by_index' outside a section"},
    {"on init:\nclip_val: 1\n", "p.txt:2: attribute 'clip_val' before the rule's by_index"},
    {"on init:\nby_tag: fm\nclip_val: 1\n", "p.txt:2: rule without by_index"},
    {"on init:\nby_index: 0\nby_tag: fm, xx\n", "p.txt:3: by_tag: 'xx'"},
    {"on init:\nby_index: 0 a\n", "p.txt:2: by_index: 'a'"},
    {"on init:\nby_index: -1\n", "p.txt:2: by_index: '-1'"},
    {"on init:\nby_index: 0\nlevel_num: 1\n", "p.txt:3: level_num: '1'"},
    {"on init:\nby_index: 0\nlevel_num: 2.5\n", "p.txt:3: level_num: '2.5'"},
    {"on init:\nby_index: 0\nprogressive: yes\n", "p.txt:3: progressive: 'yes'"},
    {"on init:\nby_index: 0\nclip_val: 1, 2\n", "p.txt:3: attribute 'clip_val' takes one value"},
    {"on init:\nby_index: 0\nclip_val: inf\n", "p.txt:3: clip_val: 'inf'"},
    {"on init:\nby_index: 0\n", "p.txt:2: rule without attributes"},
    {"on init:\nby_index: 0\nby_what: 1\n", "p.txt:3: unknown selector 'by_what'"},
    {"on init:\nby_index: 0\n: 1\n", "p.txt:3: empty key"},
};

START_TEST(test_parse_errors)
{
    eq_err err = {0};
    eq_policy *p = eq_policy_parse(s_bad[_i].text, "p.txt", &err);
    ck_assert_msg(p == NULL, "case %d parsed", _i);
    ck_assert_msg(strstr(err.msg, s_bad[_i].want) != NULL, "case %d: '%s' lacks '%s'", _i, err.msg,
                  s_bad[_i].want);
}
END_TEST

START_TEST(test_load_file)
{
    eq_err err = {0};
    char *dir = eq_test_scratch("policy");
    char path[4200];
    snprintf(path, sizeof path, "%s/missing.txt", dir);
    ck_assert_ptr_null(eq_policy_load(path, &err));
    ck_assert_msg(strstr(err.msg, "missing.txt") != NULL, "%s", err.msg);
    snprintf(path, sizeof path, "%s/p.txt", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("on epoch: 3\nby_index: all\nbogus: 1\n", f);
    fclose(f);
    ck_assert_ptr_null(eq_policy_load(path, &err));
    char want[4300];
    snprintf(want, sizeof want, "%s:3: unknown attribute", path);
    ck_assert_msg(strstr(err.msg, want) != NULL, "%s", err.msg);
    eq_test_scratch_rm(dir);
}
END_TEST

/* ---- a real model ------------------------------------------------------------- */

typedef struct s_fix {
    eq_backend *be;
    eq_model *m;
    eq_optim *o;
    eq_qlayers *t;
    eq_model_quant_cfg wt, fm;
    float *in; /* a device input [2][8][8][1] */
} s_fix;

/* ResNet-20 as the Fashion-MNIST LSQ config builds it (real_skip: the two
 * strided blocks' shortcuts are FP), weights and activations quantized by
 * the given methods with extra option lines (NULL: 2-bit lsq, var-mean
 * weights), for inputs of [2][8][8][1]; x->in is such an input on the
 * device. */
static void s_setup_q(s_fix *x, const char *wt_method, const char *wt_extra, const char *fm_method,
                      const char *fm_extra, const char *keyword)
{
    eq_err err = {0};
    memset(x, 0, sizeof *x);
    eq_model_cfg mc;
    eq_config_section secs[EQ_MODEL_CONFIG_NSECTIONS];
    eq_model_config_sections(&mc, &x->wt, &x->fm, secs);
    char text[1024];
    snprintf(text, sizeof text,
             "[model]\narch = resnet20\nkeyword = origin, cbsa, fix_pooling, singleconv, fix, real_skip, cifar10%s\n"
             "in_channels = 1\nwidth_alpha = 0.125\n"
             "[quant.wt]\nenable = true\nmethod = %s\nquant_group = 1\n%s"
             "[quant.fm]\nenable = true\nmethod = %s\n%s",
             keyword ? keyword : "", wt_method, wt_extra ? wt_extra : "bit = 2\nadaptive = var-mean\n", fm_method ? fm_method : "lsq",
             fm_extra ? fm_extra : "bit = 2\n");
    OK(eq_config_parse_buffer(secs, EQ_MODEL_CONFIG_NSECTIONS, "m.cfg", text, strlen(text), NULL, 0, &err));
    x->be = eq_backend_cpu_new(1, &err);
    ck_assert_ptr_nonnull(x->be);
    x->m = eq_model_new(x->be, &mc, &x->wt, &x->fm, 2, 8, 8, &err);
    ck_assert_msg(x->m != NULL, "%s", err.msg);
    eq_optim_cfg oc;
    eq_config_section os[EQ_OPTIM_CONFIG_NSECTIONS];
    eq_optim_config_sections(&oc, NULL, os);
    OK(eq_config_defaults(os, 1, &err));
    oc.momentum = 0.9;
    x->o = eq_optim_new(x->m, &oc, &err);
    ck_assert_msg(x->o != NULL, "%s", err.msg);
    const eq_model_quant_cfg *q[EQ_QTAG_COUNT] = {&x->wt, &x->fm, NULL};
    x->t = eq_qlayers_new(x->m, q, &err);
    ck_assert_msg(x->t != NULL, "%s", err.msg);
    float h[2 * 8 * 8];
    for (int i = 0; i < 2 * 8 * 8; i++)
        h[i] = sinf(0.37f * (float)i) + 0.25f * cosf(1.9f * (float)i);
    x->in = eq_backend_alloc(x->be, sizeof h, &err);
    ck_assert_ptr_nonnull(x->in);
    OK(eq_backend_upload(x->be, x->in, h, sizeof h, &err));
}

static void s_setup(s_fix *x, const char *wt_method)
{
    s_setup_q(x, wt_method, strcmp(wt_method, "lsq") ? "bit = 2\n" : NULL, NULL, NULL, NULL);
}

static void s_teardown(s_fix *x)
{
    if (x->in) eq_backend_release(x->be, x->in);
    eq_qlayers_destroy(&x->t);
    eq_optim_destroy(&x->o);
    eq_model_destroy(&x->m);
    eq_backend_destroy(&x->be);
}

static float s_val(const s_fix *x, size_t i, eq_quant_tag tag, const char *name)
{
    const eq_model_tensor *t = eq_qlayers_state(x->t, i, tag, name);
    ck_assert_msg(t != NULL, "layer %zu %s has no %s", i, eq_quant_tag_name(tag), name);
    return ((const float *)t->data)[0];
}

START_TEST(test_layer_order)
{
    s_fix x;
    s_setup(&x, "lsq");
    /* 18 quantized convs and 2 FP shortcuts (the original's force_fp
     * custom_convs take an index too); stem and classifier none. */
    ck_assert_uint_eq(eq_qlayers_count(x.t), 20);
    ck_assert_str_eq(eq_qlayers_name(x.t, 0), "layer1.0.conv1");
    ck_assert_str_eq(eq_qlayers_name(x.t, 5), "layer1.2.conv2");
    /* a block's shortcut before its main path, as model.modules() */
    ck_assert_str_eq(eq_qlayers_name(x.t, 6), "layer2.0.downsample.0");
    ck_assert(!eq_qlayers_has(x.t, 6, EQ_QTAG_WT));
    ck_assert_str_eq(eq_qlayers_name(x.t, 7), "layer2.0.conv1");
    ck_assert_str_eq(eq_qlayers_name(x.t, 13), "layer3.0.downsample.0");
    ck_assert_str_eq(eq_qlayers_name(x.t, 19), "layer3.2.conv2");
    ck_assert_ptr_null(eq_qlayers_name(x.t, 20));
    ck_assert(eq_qlayers_has(x.t, 7, EQ_QTAG_WT) && eq_qlayers_has(x.t, 7, EQ_QTAG_FM));
    ck_assert(!eq_qlayers_has(x.t, 7, EQ_QTAG_OT));
    ck_assert_int_eq(eq_qlayers_levels(x.t, 7, EQ_QTAG_WT), 4);
    ck_assert_int_eq(eq_qlayers_levels(x.t, 6, EQ_QTAG_WT), -1);
    s_teardown(&x);
}
END_TEST

START_TEST(test_apply_progressive)
{
    eq_err err = {0};
    s_fix x;
    s_setup(&x, "lsq");
    /* give layer 7's weight clip a known value and a momentum */
    float *clip = eq_qlayers_state(x.t, 7, EQ_QTAG_WT, "clip_val")->data;
    clip[0] = 1.5f;
    const eq_model_tensor *mom = NULL;
    for (size_t i = 0; i < eq_optim_state_count(x.o); i++)
        if (!strcmp(eq_optim_state_at(x.o, i)->name, "layer2.0.conv1.quant_weight.clip_val.momentum_buffer"))
            mom = eq_optim_state_at(x.o, i);
    ck_assert_ptr_nonnull(mom);
    ((float *)mom->data)[0] = 0.25f;
    float fm_before = s_val(&x, 7, EQ_QTAG_FM, "clip_val");
    eq_policy *p = eq_policy_parse("on init:\n"
                                   "by_index: all\n"
                                   "by_tag: fm\n"
                                   "clip_val: 2.5\n"
                                   "on epoch: 1\n"
                                   "by_index: 7\n"
                                   "by_tag: wt\n"
                                   "progressive: true\n"
                                   "level_num: -1\n",
                                   "p.txt", &err);
    ck_assert_msg(p != NULL, "%s", err.msg);
    OK(eq_policy_check(p, x.t, &err));
    /* a resume re-applying the epoch: options only -- nothing moves */
    OK(eq_policy_apply(p, EQ_POLICY_EPOCH, true, x.t, x.o, &err));
    ck_assert_int_eq(eq_qlayers_levels(x.t, 7, EQ_QTAG_WT), 4);
    ck_assert_float_eq(clip[0], 1.5f);
    OK(eq_policy_apply(p, EQ_POLICY_INIT, false, x.t, x.o, &err));
    for (size_t i = 0; i < eq_qlayers_count(x.t); i++)
        if (eq_qlayers_has(x.t, i, EQ_QTAG_FM))
            ck_assert_float_eq(s_val(&x, i, EQ_QTAG_FM, "clip_val"), 2.5f);
    ck_assert_float_ne(fm_before, 2.5f);
    ck_assert_float_eq(clip[0], 1.5f); /* by_tag fm only */
    OK(eq_policy_apply(p, EQ_POLICY_EPOCH, false, x.t, x.o, &err));
    ck_assert_int_eq(eq_qlayers_levels(x.t, 7, EQ_QTAG_WT), 3);
    ck_assert_int_eq(eq_qlayers_levels(x.t, 7, EQ_QTAG_FM), 4);
    ck_assert_int_eq(eq_qlayers_levels(x.t, 8, EQ_QTAG_WT), 4);
    ck_assert_float_eq_tol(clip[0], 1.5f * 2.0f / 3.0f, 1e-6f);
    ck_assert_float_eq(((float *)mom->data)[0], 0.0f);
    /* without progressive the clip stays */
    eq_policy_destroy(&p);
    p = eq_policy_parse("on epoch: 0\nby_index: 8\nby_tag: wt\nlevel_num: 8\n", "q.txt", &err);
    ck_assert_msg(p != NULL, "%s", err.msg);
    float c8 = s_val(&x, 8, EQ_QTAG_WT, "clip_val");
    OK(eq_policy_apply(p, EQ_POLICY_EPOCH, false, x.t, x.o, &err));
    ck_assert_int_eq(eq_qlayers_levels(x.t, 8, EQ_QTAG_WT), 8);
    ck_assert_float_eq(s_val(&x, 8, EQ_QTAG_WT, "clip_val"), c8);
    eq_policy_destroy(&p);
    s_teardown(&x);
}
END_TEST

START_TEST(test_check_against_model)
{
    eq_err err = {0};
    s_fix x;
    s_setup(&x, "lsq");
    eq_policy *p = eq_policy_parse("on epoch: 1\nby_index: 3 20\nclip_val: 1\n", "p.txt", &err);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(eq_policy_check(p, x.t, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "p.txt:2: by_index 20: beyond the model's 20 policy layers (0..19") != NULL,
                  "%s", err.msg);
    ck_assert_int_eq(eq_policy_apply(p, EQ_POLICY_EPOCH, false, x.t, x.o, &err), EQ_ERR_INVALID);
    eq_policy_destroy(&p);
    /* an FP layer alone: nothing to change */
    p = eq_policy_parse("on init:\nby_index: 6\nclip_val: 1\n", "p.txt", &err);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(eq_policy_check(p, x.t, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "p.txt:3: 'clip_val' selects no quantizer") != NULL, "%s", err.msg);
    eq_policy_destroy(&p);
    /* a level change that would leave fewer than 2 levels */
    p = eq_policy_parse("on init:\nby_index: 0\nby_tag: wt\nlevel_num: -3\n", "p.txt", &err);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(eq_policy_apply(p, EQ_POLICY_INIT, false, x.t, x.o, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "p.txt:4: level_num -3 on layer 0") != NULL, "%s", err.msg);
    ck_assert_int_eq(eq_policy_check(p, x.t, &err), EQ_ERR_INVALID); /* and before training */
    ck_assert_msg(
        strstr(err.msg,
               "p.txt:4: level_num -3 at start-up leaves layer 0 (layer1.0.conv1) wt with 1 levels") != NULL,
        "%s", err.msg);
    eq_policy_destroy(&p);
    /* the epoch rules run at every trigger: 4 levels, -1 at epochs 2, 5
     * and 7 would leave 1 at epoch 7 -- refused before training */
    p = eq_policy_parse("on epoch: 7 2 5\nby_index: 4\nby_tag: wt\nlevel_num: -1\n", "p.txt", &err);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(eq_policy_check(p, x.t, &err), EQ_ERR_INVALID);
    ck_assert_msg(
        strstr(err.msg,
               "p.txt:4: level_num -1 at epoch 7 leaves layer 4 (layer1.2.conv1) wt with 1 levels") != NULL,
        "%s", err.msg);
    eq_policy_destroy(&p);
    p = eq_policy_parse("on epoch: 2 5\nby_index: 4\nby_tag: wt\nlevel_num: -1\n", "p.txt", &err);
    ck_assert_ptr_nonnull(p);
    OK(eq_policy_check(p, x.t, &err));
    eq_policy_destroy(&p);
    s_teardown(&x);
    /* methods whose structure depends on the level count refuse */
    s_setup(&x, "xnor");
    p = eq_policy_parse("on epoch: 2\nby_index: all\nlevel_num: 3\n", "p.txt", &err);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(eq_policy_check(p, x.t, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "method xnor fixes its level count") != NULL, "%s", err.msg);
    eq_policy_destroy(&p);
    s_teardown(&x);
}
END_TEST

/* Fractions of the weights at each level, from the JSON, against a direct
 * count through quant/ itself (the quantizer's forward on the weight). */
START_TEST(test_stats)
{
    eq_err err = {0};
    s_fix x;
    s_setup(&x, "lsq");
    char *js = NULL;
    OK(eq_qlayers_stats_json(x.t, &js, &err));
    ck_assert_ptr_nonnull(js);
    ck_assert(js[0] == '[' && js[strlen(js) - 1] == ']');
    ck_assert_ptr_nonnull(strstr(
        js, "{\"index\":7,\"layer\":\"layer2.0.conv1\",\"tag\":\"wt\",\"method\":\"lsq\",\"levels\":4"));
    ck_assert_ptr_null(strstr(js, "\"index\":6,")); /* FP: no quantizer */
    const char *w7 = strstr(js, "\"layer\":\"layer2.0.conv1\",\"tag\":\"wt\"");
    const char *f = strstr(w7, "\"frac\":[");
    ck_assert_ptr_nonnull(f);
    f += 8;
    double fr[4], sum = 0;
    for (int k = 0; k < 4; k++) {
        char *end;
        fr[k] = strtod(f, &end);
        sum += fr[k];
        f = end + 1;
    }
    ck_assert_double_eq_tol(sum, 1.0, 1e-5); /* %.6g each */
    /* the quantizer itself: levels of Q(w) for layer2.0.conv1's weight */
    const eq_model_tensor *w = eq_model_tensor_find(x.m, "layer2.0.conv1.weight");
    ck_assert_ptr_nonnull(w);
    eq_quant_opts o;
    eq_quant_opts_init(&o, EQ_QTAG_WT);
    OK(eq_quant_opts_set(&o, "method", "lsq", &err));
    OK(eq_quant_opts_set(&o, "bit", "2", &err));
    OK(eq_quant_opts_set(&o, "quant_group", "1", &err));
    OK(eq_quant_opts_set(&o, "adaptive", "var-mean", &err));
    eq_tensor_desc d;
    OK(eq_tensor_desc_init(&d, EQ_DT_F32, EQ_LAYOUT_OIHW, 4, w->shape, &err));
    eq_quant *q = eq_quant_new(&o, &d, &err);
    ck_assert_msg(q != NULL, "%s", err.msg);
    eq_quant_find(q, "clip_val")->data[0] = s_val(&x, 7, EQ_QTAG_WT, "clip_val");
    float *y = malloc(w->numel * sizeof *y);
    OK(eq_quant_forward(q, &d, w->data, y, 1, &err));
    float c = fabsf(s_val(&x, 7, EQ_QTAG_WT, "clip_val"));
    double cnt[4] = {0};
    for (size_t i = 0; i < w->numel; i++) {
        long k = lrintf((y[i] / c + 1.0f) * 1.5f);
        ck_assert(k >= 0 && k < 4);
        cnt[k]++;
    }
    for (int k = 0; k < 4; k++)
        ck_assert_double_eq_tol(fr[k], cnt[k] / (double)w->numel, 1e-5);
    free(y);
    eq_quant_destroy(&q);
    free(js);
    s_teardown(&x);
}
END_TEST


/* ---- run-time options (enable, stable, adaptive_restore, quant_loss_*) ---- */

static int s_frac_of(const char *js, const char *layer, const char *tag, double *fr, int maxl);

/* A training forward of the fixture's input. */
static void s_forward(s_fix *x)
{
    eq_err err = {0};
    OK(eq_model_forward(x->m, x->in, true, &err));
}

/* A training step (forward, loss, backward, SGD at rate lr): afterwards
 * the learnable clip values differ from those the forward used. */
static void s_train_step(s_fix *x, double lr)
{
    eq_err err = {0};
    int32_t lab[2] = {1, 3};
    int32_t *d = eq_backend_alloc(x->be, sizeof lab, &err);
    ck_assert_ptr_nonnull(d);
    OK(eq_backend_upload(x->be, d, lab, sizeof lab, &err));
    float loss;
    s_forward(x);
    OK(eq_model_loss(x->m, d, NULL, NULL, 0.0f, &loss, &err));
    OK(eq_model_backward(x->m, NULL, &err));
    OK(eq_optim_step(x->o, lr, &err));
    eq_backend_release(x->be, d);
}

/* A host copy of what quantizer (layer, tag) produced in the last forward. */
static float *s_qout(const s_fix *x, const char *layer, eq_quant_tag tag, int64_t *n)
{
    eq_err err = {0};
    const float *d = eq_model_quant_output(x->m, layer, tag, n);
    ck_assert_msg(d != NULL && *n > 0, "%s %s: no quantizer output", layer, eq_quant_tag_name(tag));
    float *h = malloc((size_t)*n * sizeof *h);
    ck_assert_ptr_nonnull(h);
    OK(eq_backend_download(x->be, h, d, (size_t)*n * sizeof *h, &err));
    return h;
}

static int s_cmp_f(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Distinct values of v[n] (sorted into a copy). */
static size_t s_distinct(const float *v, int64_t n)
{
    float *c = malloc((size_t)n * sizeof *c);
    ck_assert_ptr_nonnull(c);
    memcpy(c, v, (size_t)n * sizeof *c);
    qsort(c, (size_t)n, sizeof *c, s_cmp_f);
    size_t d = n > 0;
    for (int64_t i = 1; i < n; i++)
        d += c[i] != c[i - 1];
    free(c);
    return d;
}

static void s_apply(s_fix *x, const char *text, eq_policy_section sec, bool options_only)
{
    eq_err err = {0};
    eq_policy *p = eq_policy_parse(text, "p.txt", &err);
    ck_assert_msg(p != NULL, "%s", err.msg);
    OK(eq_policy_check(p, x->t, &err));
    OK(eq_policy_apply(p, sec, options_only, x->t, x->o, &err));
    eq_policy_destroy(&p);
}

/* lsq 2-bit half range, as quant/ computes it: c * R(clip(x/c, 0, 1) * 3) / 3. */
static float s_lsq_fm(float v, float c)
{
    float r = v / c;
    r = r < 0 ? 0 : r > 1 ? 1 : r;
    return rintf(r * 3.0f) / 3.0f * c;
}

START_TEST(test_option_enable)
{
    eq_err err = {0};
    s_fix x;
    s_setup(&x, "lsq");
    const char *L7 = "layer2.0.conv1";
    eq_quant *fm7 = eq_model_quant(x.m, L7, EQ_QTAG_FM), *wt7 = eq_model_quant(x.m, L7, EQ_QTAG_WT);
    ck_assert(fm7 && wt7 && eq_quant_enabled(fm7) && eq_quant_enabled(wt7));
    s_forward(&x);
    int64_t n, nw;
    float *q0 = s_qout(&x, L7, EQ_QTAG_FM, &n);
    ck_assert_uint_le(s_distinct(q0, n), 4); /* 2 bits */
    /* both of layer 7's quantizers off: the identity */
    s_apply(&x, "on init:\nby_index: 7\nenable: False\n", EQ_POLICY_INIT, false);
    ck_assert(!eq_quant_enabled(fm7) && !eq_quant_enabled(wt7));
    ck_assert(eq_quant_enabled(eq_model_quant(x.m, "layer2.0.conv2", EQ_QTAG_FM)));
    s_forward(&x);
    float *xin = s_qout(&x, L7, EQ_QTAG_FM, &n);
    ck_assert_uint_gt(s_distinct(xin, n), 4);
    float *w = s_qout(&x, L7, EQ_QTAG_WT, &nw);
    const eq_model_tensor *wt = eq_model_tensor_find(x.m, "layer2.0.conv1.weight");
    ck_assert_int_eq(nw, (int64_t)wt->numel);
    ck_assert_mem_eq(w, wt->data, wt->numel * sizeof(float)); /* y = w exactly */
    free(w);
    /* back on, by an epoch rule re-applied as a resume does (options
     * only): the fm output is the quantized identity output again */
    s_apply(&x, "on epoch: 3\nby_index: 7\nby_tag: fm\nenable: True\n", EQ_POLICY_EPOCH, true);
    ck_assert(eq_quant_enabled(fm7) && !eq_quant_enabled(wt7));
    float c = fabsf(s_val(&x, 7, EQ_QTAG_FM, "clip_val"));
    s_forward(&x);
    float *y = s_qout(&x, L7, EQ_QTAG_FM, &n);
    size_t nonzero = 0;
    for (int64_t i = 0; i < n; i++) {
        ck_assert_msg(fabsf(y[i] - s_lsq_fm(xin[i], c)) <= 1e-6f * c, "element %lld: %g vs Q(%g) = %g",
                      (long long)i, y[i], xin[i], s_lsq_fm(xin[i], c));
        nonzero += y[i] != 0;
    }
    ck_assert_uint_gt(nonzero, 0);
    free(y);
    free(xin);
    free(q0);
    (void)err;
    s_teardown(&x);
}
END_TEST

START_TEST(test_option_stable)
{
    s_fix x;
    s_setup(&x, "lsq");
    const char *L8 = "layer2.0.conv2";
    /* warm-up of 100 iterations: x passes through and the clip becomes the
     * running mean of max|x| (the first forward: max|x| itself) */
    s_apply(&x, "on init:\nby_index: 8\nby_tag: fm\nstable: 100\n", EQ_POLICY_INIT, false);
    ck_assert_int_eq(eq_quant_options(eq_model_quant(x.m, L8, EQ_QTAG_FM))->stable, 100);
    s_forward(&x);
    int64_t n;
    float *y = s_qout(&x, L8, EQ_QTAG_FM, &n);
    ck_assert_uint_gt(s_distinct(y, n), 4);
    float mx = 0;
    for (int64_t i = 0; i < n; i++)
        mx = fabsf(y[i]) > mx ? fabsf(y[i]) : mx;
    ck_assert_float_eq_tol(s_val(&x, 8, EQ_QTAG_FM, "clip_val"), mx, 1e-6f * mx);
    free(y);
    /* enabled but not quantizing: no level fractions for it */
    eq_err err = {0};
    char *js = NULL;
    double fr[8];
    OK(eq_qlayers_stats_json(x.t, &js, &err));
    ck_assert_int_eq(s_frac_of(js, L8, "fm", fr, 8), -1);
    ck_assert_int_eq(s_frac_of(js, "layer2.0.conv1", "fm", fr, 8), 4);
    free(js);
    /* the layer before it quantizes as usual */
    y = s_qout(&x, "layer2.0.conv1", EQ_QTAG_FM, &n);
    ck_assert_uint_le(s_distinct(y, n), 4);
    free(y);
    /* stable 0: quantized from the next forward */
    s_apply(&x, "on epoch: 1\nby_index: 8\nby_tag: fm\nstable: 0\n", EQ_POLICY_EPOCH, false);
    s_forward(&x);
    y = s_qout(&x, L8, EQ_QTAG_FM, &n);
    ck_assert_uint_le(s_distinct(y, n), 4);
    free(y);
    s_teardown(&x);
}
END_TEST

START_TEST(test_option_adaptive_restore)
{
    s_fix x;
    s_setup(&x, "lsq"); /* var-mean weights, one norm group */
    const char *L7 = "layer2.0.conv1";
    s_forward(&x);
    int64_t n;
    float *y0 = s_qout(&x, L7, EQ_QTAG_WT, &n);
    ck_assert_uint_le(s_distinct(y0, n), 4);
    s_apply(&x, "on init:\nby_index: 7\nby_tag: wt\nadaptive_restore: True\n", EQ_POLICY_INIT, false);
    s_forward(&x);
    float *y1 = s_qout(&x, L7, EQ_QTAG_WT, &n);
    /* y * (std + norm_eps) + mean, unbiased std over the weight (eps 0) */
    const eq_model_tensor *w = eq_model_tensor_find(x.m, "layer2.0.conv1.weight");
    const float *wd = w->data;
    double sum = 0, var = 0;
    for (size_t i = 0; i < w->numel; i++)
        sum += wd[i];
    double mu = sum / (double)w->numel;
    for (size_t i = 0; i < w->numel; i++)
        var += (wd[i] - mu) * (wd[i] - mu);
    double sd = sqrt(var / (double)(w->numel - 1));
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(fabs(y1[i] - (y0[i] * sd + mu)) <= 1e-5 * (fabs(y0[i] * sd) + fabs(mu)) + 1e-7,
                      "element %lld: %g, expected %g", (long long)i, y1[i], y0[i] * sd + mu);
    ck_assert_uint_gt(s_distinct(y1, n), 1);
    free(y0);
    free(y1);
    s_teardown(&x);
}
END_TEST

START_TEST(test_option_quant_loss)
{
    s_fix x;
    s_setup(&x, "lsq");
    const char *L8 = "layer2.0.conv2";
    eq_quant *q = eq_model_quant(x.m, L8, EQ_QTAG_FM);
    /* the quantizer's input: its output while disabled */
    s_apply(&x, "on init:\nby_index: 8\nby_tag: fm\nenable: False\n", EQ_POLICY_INIT, false);
    s_forward(&x);
    ck_assert_double_eq(eq_quant_aux_loss(q), 0);
    int64_t n;
    float *xin = s_qout(&x, L8, EQ_QTAG_FM, &n);
    s_apply(&x,
            "on epoch: 2\nby_index: 8\nby_tag: fm\nenable: True\nquant_loss_enable: True\n"
            "quant_loss_function: 'L2'\nquant_loss_alpha: 0.5\n",
            EQ_POLICY_EPOCH, false);
    s_forward(&x);
    float *y = s_qout(&x, L8, EQ_QTAG_FM, &n);
    double mse = 0;
    for (int64_t i = 0; i < n; i++)
        mse += ((double)xin[i] - y[i]) * ((double)xin[i] - y[i]);
    mse /= (double)n;
    ck_assert_double_gt(mse, 0);
    ck_assert_double_eq_tol(eq_quant_aux_loss(q), 0.5 * mse, 1e-5 * mse);
    /* another layer has none; None switches it off */
    ck_assert_double_eq(eq_quant_aux_loss(eq_model_quant(x.m, "layer2.0.conv1", EQ_QTAG_FM)), 0);
    s_apply(&x, "on epoch: 3\nby_index: 8\nby_tag: fm\nquant_loss_function: None\n", EQ_POLICY_EPOCH, true);
    s_forward(&x);
    ck_assert_double_eq(eq_quant_aux_loss(q), 0);
    free(xin);
    free(y);
    s_teardown(&x);
}
END_TEST

/* The JSON of what an application changes: options only on a resume. */
START_TEST(test_changes_json)
{
    eq_err err = {0};
    s_fix x;
    s_setup(&x, "lsq");
    eq_policy *p = eq_policy_parse("on epoch: 1\nby_index: 7 8\nby_tag: fm\nclip_val: 2\nenable: False\n"
                                   "by_index: all\nquant_loss_function: \"QDL\"\n",
                                   "p.txt", &err);
    ck_assert_msg(p != NULL, "%s", err.msg);
    char *js = NULL;
    OK(eq_policy_changes_json(p, EQ_POLICY_EPOCH, false, x.t, &js, &err));
    ck_assert_str_eq(js, "[{\"line\":4,\"key\":\"clip_val\",\"value\":\"2\",\"quantizers\":2},"
                         "{\"line\":5,\"key\":\"enable\",\"value\":\"False\",\"quantizers\":2},"
                         "{\"line\":7,\"key\":\"quant_loss_function\",\"value\":\"\\\"QDL\\\"\","
                         "\"quantizers\":36}]");
    free(js);
    OK(eq_policy_changes_json(p, EQ_POLICY_EPOCH, true, x.t, &js, &err));
    ck_assert_str_eq(js, "[{\"line\":5,\"key\":\"enable\",\"value\":\"False\",\"quantizers\":2},"
                         "{\"line\":7,\"key\":\"quant_loss_function\",\"value\":\"\\\"QDL\\\"\","
                         "\"quantizers\":36}]");
    free(js);
    OK(eq_policy_changes_json(p, EQ_POLICY_INIT, false, x.t, &js, &err));
    ck_assert_str_eq(js, "[]");
    free(js);
    eq_policy_destroy(&p);
    s_teardown(&x);
}
END_TEST

/* ---- activation level fractions ------------------------------------------- */

/* frac of entry (layer, tag) in the stats JSON: its L values, or -1 when
 * the entry has no frac. */
static int s_frac_of(const char *js, const char *layer, const char *tag, double *fr, int maxl)
{
    char key[128];
    snprintf(key, sizeof key, "\"layer\":\"%s\",\"tag\":\"%s\"", layer, tag);
    const char *e = strstr(js, key);
    ck_assert_msg(e != NULL, "no entry %s", key);
    const char *end = strchr(e, '}');
    while (end && end[1] != ',' && end[1] != ']') /* per-group summaries nest objects */
        end = strchr(end + 1, '}');
    const char *f = strstr(e, "\"frac\":[");
    if (!f || (end && f > end)) return -1;
    f += 8;
    int L = 0;
    while (*f != ']' && L < maxl) {
        char *stop;
        fr[L++] = strtod(f, &stop);
        f = *stop == ',' ? stop + 1 : stop;
    }
    return L;
}

/* For a one-group quantizer the levels are increasing in k: the nonzero
 * fractions, in order, are the shares of the output's distinct values. */
static void s_check_frac(const s_fix *x, const char *js, const char *layer, eq_quant_tag tag, int L)
{
    double fr[256];
    int got = s_frac_of(js, layer, eq_quant_tag_name(tag), fr, 256);
    ck_assert_msg(got == L, "%s %s: %d fractions, expected %d (%.300s)", layer, eq_quant_tag_name(tag), got, L,
                  strstr(js, layer));
    int64_t n;
    float *y = s_qout(x, layer, tag, &n);
    qsort(y, (size_t)n, sizeof *y, s_cmp_f);
    double sum = 0;
    int k = 0, used = 0;
    for (int64_t i = 0; i < n;) {
        int64_t j = i;
        while (j < n && y[j] == y[i])
            j++;
        while (k < L && fr[k] == 0)
            k++;
        ck_assert_msg(k < L, "%s %s: more distinct values than levels", layer, eq_quant_tag_name(tag));
        ck_assert_msg(fabs(fr[k] - (double)(j - i) / (double)n) < 1e-5, "%s %s: level %d: %g vs %g", layer,
                      eq_quant_tag_name(tag), k, fr[k], (double)(j - i) / (double)n);
        sum += fr[k++];
        used++;
        i = j;
    }
    ck_assert_double_eq_tol(sum, 1.0, 1e-5);
    ck_assert_msg(used >= 2, "%s %s: one level only", layer, eq_quant_tag_name(tag)); /* a real check */
    free(y);
}

/* Methods of weights and activations, their options, level counts and an
 * extra model keyword (NReLU: signed activations for xnor's sign levels). */
static const struct {
    const char *wt, *wt_opts, *fm, *fm_opts;
    int wl, fl;
    const char *kw;
} s_methods[] = {
    {"dorefa", "bit = 2\n", "dorefa", "bit = 2\n", 4, 4, ""},
    {"lsq-step", "bit = 2\n", "pact", "bit = 3\n", 4, 8, ""},
    {"nonuniform", "level = 3\nscale = 8\n", "lsq-step", "bit = 2\n", 3, 4, ""},
    {"xnor", "bit = 1\n", "nonuniform", "bit = 2\n", 2, 4, ""},
    {"bin", "bit = 1\n", "xnor", "bit = 1\n", 2, 2, ", NReLU"},
    {"lsq", "bit = 2\n", "lsq", "bit = 2\n", 4, 4, ""},
};

START_TEST(test_stats_activations)
{
    eq_err err = {0};
    s_fix x;
    s_setup_q(&x, s_methods[_i].wt, s_methods[_i].wt_opts, s_methods[_i].fm, s_methods[_i].fm_opts,
              s_methods[_i].kw);
    /* as the trainer computes them: after a step, whose update moved the
     * clip values and step sizes away from those of its forward */
    float clip0 = eq_qlayers_state(x.t, 7, EQ_QTAG_FM, "clip_val") ? s_val(&x, 7, EQ_QTAG_FM, "clip_val") : 0;
    s_train_step(&x, 0.05);
    if (eq_qlayers_state(x.t, 7, EQ_QTAG_FM, "clip_val") && !strcmp(s_methods[_i].fm, "lsq"))
        ck_assert_float_ne(s_val(&x, 7, EQ_QTAG_FM, "clip_val"), clip0);
    char *js = NULL;
    OK(eq_qlayers_stats_json(x.t, &js, &err));
    /* every quantized layer; the wt ones from the weights (lsq) or the
     * forward's output */
    for (size_t i = 0; i < eq_qlayers_count(x.t); i++) {
        if (!eq_qlayers_has(x.t, i, EQ_QTAG_WT)) continue;
        const char *name = eq_qlayers_name(x.t, i);
        s_check_frac(&x, js, name, EQ_QTAG_FM, s_methods[_i].fl);
        if (strcmp(s_methods[_i].wt, "lsq")) s_check_frac(&x, js, name, EQ_QTAG_WT, s_methods[_i].wl);
    }
    free(js);
    /* a disabled quantizer's output is not on levels: no frac */
    s_apply(&x, "on init:\nby_index: 7\nby_tag: fm\nenable: False\n", EQ_POLICY_INIT, false);
    s_forward(&x);
    OK(eq_qlayers_stats_json(x.t, &js, &err));
    double fr[256];
    ck_assert_int_eq(s_frac_of(js, "layer2.0.conv1", "fm", fr, 256), -1);
    ck_assert_int_eq(s_frac_of(js, "layer2.0.conv2", "fm", fr, 256), s_methods[_i].fl);
    free(js);
    s_teardown(&x);
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("policy");
    TCase *tc = tcase_create("parse");
    tcase_add_test(tc, test_parse_sections);
    tcase_add_test(tc, test_parse_stops_at_line_without_colon);
    tcase_add_loop_test(tc, test_parse_errors, 0, (int)(sizeof s_bad / sizeof s_bad[0]));
    tcase_add_test(tc, test_load_file);
    suite_add_tcase(s, tc);
    tc = tcase_create("model");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_layer_order);
    tcase_add_test(tc, test_apply_progressive);
    tcase_add_test(tc, test_check_against_model);
    tcase_add_test(tc, test_stats);
    tcase_add_test(tc, test_option_enable);
    tcase_add_test(tc, test_option_stable);
    tcase_add_test(tc, test_option_adaptive_restore);
    tcase_add_test(tc, test_option_quant_loss);
    tcase_add_test(tc, test_changes_json);
    tcase_add_loop_test(tc, test_stats_activations, 0, (int)(sizeof s_methods / sizeof s_methods[0]));
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return eq_test_run(s_suite()); }
