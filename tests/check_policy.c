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
    {"on init:\nby_index: 0\nenable: False\n", "p.txt:3: attribute 'enable'"},
    {"on init:\nby_index: 0\nstable: 100\n", "p.txt:3: attribute 'stable'"},
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
} s_fix;

/* ResNet-20 as the Fashion-MNIST LSQ config builds it (real_skip: the two
 * strided blocks' shortcuts are FP), 2-bit LSQ weights (var-mean) and
 * activations; wt_method replaces the weight method. */
static void s_setup(s_fix *x, const char *wt_method)
{
    eq_err err = {0};
    memset(x, 0, sizeof *x);
    eq_model_cfg mc;
    eq_config_section secs[EQ_MODEL_CONFIG_NSECTIONS];
    eq_model_config_sections(&mc, &x->wt, &x->fm, secs);
    char text[1024];
    snprintf(
        text, sizeof text,
        "[model]\narch = resnet20\nkeyword = origin, cbsa, fix_pooling, singleconv, fix, real_skip, cifar10\n"
        "in_channels = 1\nwidth_alpha = 0.125\n"
        "[quant.wt]\nenable = true\nmethod = %s\nbit = 2\nquant_group = 1\n%s"
        "[quant.fm]\nenable = true\nmethod = lsq\nbit = 2\n",
        wt_method, strcmp(wt_method, "lsq") ? "" : "adaptive = var-mean\n");
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
}

static void s_teardown(s_fix *x)
{
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
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return eq_test_run(s_suite()); }
