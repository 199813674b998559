/*
 * tests/check_cocoeval.c -- COCO evaluation against pycocotools.
 *
 * 1. Every case in tests/fixtures/coco (pycocotools 8c9bcc3 outputs, see
 *    the README there): all stats, per-category AP/AP50/AP75/AR and the
 *    printed summary lines must be identical (== on doubles).
 * 2. One small hand-made case per quirk of ../shared/COCOEVAL.md §9, whose
 *    expected numbers follow from the rules by hand.
 * 3. Bad input: each error names the entry.
 */
#include "core/json.h"
#include "evaluator/cocoeval.h"
#include "tests/testutil.h"

#include <math.h>
#include <sys/wait.h>

/* ---- helpers ----------------------------------------------------------- */

static char *s_path(const char *rel)
{
    char *p = malloc(4096);
    ck_assert_ptr_nonnull(p);
    snprintf(p, 4096, "%s/tests/fixtures/coco/%s", eq_test_srcdir(), rel);
    return p;
}

static int s_exists(const char *path) { return access(path, R_OK) == 0; }

/* Parse GT and results from JSON text. */
static void s_load(const char *gt_json, const char *dt_json, eq_coco **gt, eq_coco **dt)
{
    eq_err err;
    eq_err_clear(&err);
    eq_json_doc *g = eq_json_parse(gt_json, strlen(gt_json), NULL, &err);
    ck_assert_msg(g != NULL, "gt json: %s", err.msg);
    ck_assert_msg(eq_coco_load_gt_json(eq_json_root(g), "gt", gt, &err) == EQ_OK, "gt: %s",
                  err.msg);
    eq_json_doc_destroy(&g);
    eq_json_doc *d = eq_json_parse(dt_json, strlen(dt_json), NULL, &err);
    ck_assert_msg(d != NULL, "dt json: %s", err.msg);
    ck_assert_msg(eq_coco_load_res_json(*gt, eq_json_root(d), "dt", dt, &err) == EQ_OK, "dt: %s",
                  err.msg);
    eq_json_doc_destroy(&d);
}

/* Evaluate; returns the eval (caller destroys). */
static eq_coco_eval *s_eval(const char *gt_json, const char *dt_json, eq_coco_iou type,
                            const int *md, size_t nmd)
{
    eq_coco *gt = NULL, *dt = NULL;
    s_load(gt_json, dt_json, &gt, &dt);
    eq_coco_params p;
    memset(&p, 0, sizeof p);
    p.iou_type = type;
    p.max_dets = md;
    p.n_max_dets = nmd;
    p.threads = 2;
    eq_coco_eval *e = NULL;
    eq_err err;
    eq_err_clear(&err);
    ck_assert_msg(eq_coco_evaluate(gt, dt, &p, &e, &err) == EQ_OK, "evaluate: %s", err.msg);
    eq_coco_destroy(&gt);
    eq_coco_destroy(&dt);
    return e;
}

/* Expect loading or evaluation to fail with a message containing `needle`. */
static void s_expect_error(const char *gt_json, const char *dt_json, eq_coco_iou type,
                           const char *needle)
{
    eq_err err;
    eq_err_clear(&err);
    eq_json_doc *g = eq_json_parse(gt_json, strlen(gt_json), NULL, &err);
    eq_json_doc *d = eq_json_parse(dt_json, strlen(dt_json), NULL, &err);
    ck_assert_ptr_nonnull(g);
    ck_assert_ptr_nonnull(d);
    eq_coco *gt = NULL, *dt = NULL;
    eq_coco_eval *e = NULL;
    eq_status st = eq_coco_load_gt_json(eq_json_root(g), "gt", &gt, &err);
    if (!st) st = eq_coco_load_res_json(gt, eq_json_root(d), "dt", &dt, &err);
    if (!st) {
        eq_coco_params p;
        memset(&p, 0, sizeof p);
        p.iou_type = type;
        p.threads = 1;
        st = eq_coco_evaluate(gt, dt, &p, &e, &err);
    }
    ck_assert_msg(st != EQ_OK, "expected an error containing '%s'", needle);
    ck_assert_msg(strstr(err.msg, needle) != NULL, "error '%s' lacks '%s'", err.msg, needle);
    ck_assert_ptr_null(e);
    eq_coco_destroy(&gt);
    eq_coco_destroy(&dt);
    eq_json_doc_destroy(&g);
    eq_json_doc_destroy(&d);
}

/* ---- 1. pycocotools fixtures ------------------------------------------- */

static const char *s_cases[] = {"basic_small",    "crowd",           "empty_and_absent",
                                "float_geometry", "keypoints",       "perfect_and_zero",
                                "segm_mixed",     "err_empty_results"};
static const char *s_types[] = {"bbox", "segm", "keypoints"};

static void s_check_case(const char *name, int threads)
{
    int ran = 0, errors = 0;
    for (int ti = 0; ti < 3; ti++) {
        char rel[256];
        snprintf(rel, sizeof rel, "%s/expected.%s.json", name, s_types[ti]);
        char *exp_path = s_path(rel);
        if (!s_exists(exp_path)) {
            free(exp_path);
            continue;
        }
        eq_err err;
        eq_err_clear(&err);
        eq_json_doc *exp = eq_json_parse_file(exp_path, NULL, &err);
        ck_assert_msg(exp != NULL, "%s", err.msg);
        const eq_json *ex = eq_json_root(exp);
        /* results: dt_<type>.json, or the only results file of the case */
        snprintf(rel, sizeof rel, "%s/dt_%s.json", name, s_types[ti]);
        char *dt_path = s_path(rel);
        for (int tj = 0; tj < 3 && !s_exists(dt_path); tj++) {
            free(dt_path);
            snprintf(rel, sizeof rel, "%s/dt_%s.json", name, s_types[tj]);
            dt_path = s_path(rel);
        }
        snprintf(rel, sizeof rel, "%s/gt.json", name);
        char *gt_path = s_path(rel);
        eq_coco *gt = NULL, *dt = NULL;
        eq_coco_eval *e = NULL;
        ck_assert_msg(eq_coco_load_gt(gt_path, &gt, &err) == EQ_OK, "%s", err.msg);
        eq_status st = eq_coco_load_res(gt, dt_path, &dt, &err);
        const char *expect = eq_json_str(eq_json_get(ex, "expect"), NULL);
        if (expect && strcmp(expect, "error") == 0) {
            ck_assert_msg(st != EQ_OK, "%s/%s: pycocotools fails, eq must refuse", name,
                          s_types[ti]);
            ck_assert_msg(strstr(err.msg, "empty") != NULL, "%s", err.msg);
        } else {
            ck_assert_msg(st == EQ_OK, "%s", err.msg);
            eq_coco_params p;
            memset(&p, 0, sizeof p);
            eq_coco_iou_parse(s_types[ti], &p.iou_type);
            p.threads = threads;
            ck_assert_msg(eq_coco_evaluate(gt, dt, &p, &e, &err) == EQ_OK, "%s", err.msg);
            const eq_json *stats = eq_json_get(ex, "stats");
            ck_assert_uint_eq(eq_json_len(stats), e->n_stats);
            for (size_t i = 0; i < e->n_stats; i++) {
                double want = eq_json_num(eq_json_at(stats, i));
                ck_assert_msg(e->stats[i] == want, "%s/%s stats[%zu]: %.17g, pycocotools %.17g",
                              name, s_types[ti], i, e->stats[i], want);
            }
            const eq_json *pc = eq_json_get(ex, "per_category");
            ck_assert_uint_eq(eq_json_len(pc), e->K);
            for (size_t k = 0; k < e->K; k++) {
                char key[32];
                snprintf(key, sizeof key, "%lld", (long long)e->cat_ids[k]);
                const eq_json *c = eq_json_get(pc, key);
                ck_assert_msg(c != NULL, "%s: category %s missing", name, key);
                const char *f[4] = {"ap", "ap50", "ap75", "ar"};
                double got[4] = {e->cat_ap[k], e->cat_ap50[k], e->cat_ap75[k], e->cat_ar[k]};
                for (int q = 0; q < 4; q++) {
                    double want = eq_json_num(eq_json_get(c, f[q]));
                    ck_assert_msg(got[q] == want, "%s/%s category %s %s: %.17g, pycocotools %.17g",
                                  name, s_types[ti], key, f[q], got[q], want);
                }
                double ap = eq_json_num(eq_json_get(eq_json_get(ex, "per_category_ap"), key));
                ck_assert(e->cat_ap[k] == ap);
            }
            const eq_json *lines = eq_json_get(ex, "summary_lines");
            for (size_t i = 0; i < e->n_stats; i++) {
                char line[256];
                eq_coco_summary_line(e, i, line, sizeof line);
                ck_assert_str_eq(line, eq_json_str(eq_json_at(lines, i), NULL));
            }
            ran++;
        }
        if (expect && strcmp(expect, "error") == 0) errors++;
        eq_coco_eval_destroy(&e);
        eq_coco_destroy(&gt);
        eq_coco_destroy(&dt);
        eq_json_doc_destroy(&exp);
        free(exp_path);
        free(dt_path);
        free(gt_path);
    }
    ck_assert_msg(ran + errors > 0, "%s: no expected.*.json found", name);
}

START_TEST(test_fixture_case)
{
    s_check_case(s_cases[_i], 1);
    s_check_case(s_cases[_i], 3); /* same numbers whatever the thread count */
}
END_TEST

/* ---- 2. quirks ---------------------------------------------------------- */

#define IMG1 "\"images\": [{\"id\": 1, \"height\": 100, \"width\": 100}]"
#define CAT1 "\"categories\": [{\"id\": 1}]"

START_TEST(test_thresholds_linspace)
{
    /* Q5: numpy linspace doubles */
    eq_coco_eval *e = s_eval("{" IMG1 ", " CAT1 ", \"annotations\": [{\"id\": 1, \"image_id\": 1, "
                             "\"category_id\": 1, \"bbox\": [0, 0, 10, 10], \"area\": 100, "
                             "\"iscrowd\": 0}]}",
                             "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 10, 10], "
                             "\"score\": 1}]",
                             EQ_COCO_BBOX, NULL, 0);
    ck_assert(e->iou_thrs[7] == 0.85);
    ck_assert(e->iou_thrs[8] == 0.8999999999999999);
    ck_assert(e->iou_thrs[9] == 0.95);
    ck_assert(e->iou_thrs[5] == 0.75);
    ck_assert(e->rec_thrs[35] == 0.35000000000000003);
    ck_assert(e->rec_thrs[100] == 1.0);
    /* Q13: one perfect detection: precision 1/(1 + 2^-52) */
    ck_assert(e->stats[0] == 1.0 / (1.0 + 2.220446049250313e-16));
    ck_assert(e->stats[0] == 0.9999999999999998);
    ck_assert(e->stats[8] == 1.0);
    eq_coco_eval_destroy(&e);
}
END_TEST

START_TEST(test_iou_exactly_threshold)
{
    /* IoU 0.85 exactly (17/20): matched at the 8th threshold (0.85) but not
     * the 9th; AR = 8/10 over thresholds. */
    eq_coco_eval *e = s_eval("{" IMG1 ", " CAT1 ", \"annotations\": [{\"id\": 1, \"image_id\": 1, "
                             "\"category_id\": 1, \"bbox\": [0, 0, 20, 1], \"area\": 20, "
                             "\"iscrowd\": 0}]}",
                             "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 17, 1], "
                             "\"score\": 0.5}]",
                             EQ_COCO_BBOX, NULL, 0);
    ck_assert(e->stats[8] == 0.8);
    eq_coco_eval_destroy(&e);
}
END_TEST

START_TEST(test_gt_id_zero)
{
    /* Q1: a result matched to GT id 0 counts as a false positive, and the
     * GT still counts: recall 0. */
    eq_coco_eval *e = s_eval("{" IMG1 ", " CAT1 ", \"annotations\": [{\"id\": 0, \"image_id\": 1, "
                             "\"category_id\": 1, \"bbox\": [0, 0, 10, 10], \"area\": 100, "
                             "\"iscrowd\": 0}]}",
                             "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 10, 10], "
                             "\"score\": 1}]",
                             EQ_COCO_BBOX, NULL, 0);
    ck_assert(e->stats[0] == 0.0);
    ck_assert(e->stats[8] == 0.0);
    eq_coco_eval_destroy(&e);
}
END_TEST

START_TEST(test_ignore_field_discarded)
{
    /* Q2: "ignore": 1 has no effect; iscrowd decides. */
    eq_coco_eval *e = s_eval("{" IMG1 ", " CAT1 ", \"annotations\": [{\"id\": 1, \"image_id\": 1, "
                             "\"category_id\": 1, \"bbox\": [0, 0, 10, 10], \"area\": 100, "
                             "\"iscrowd\": 0, \"ignore\": 1}, {\"id\": 2, \"image_id\": 1, "
                             "\"category_id\": 1, \"bbox\": [50, 50, 10, 10], \"area\": 100, "
                             "\"iscrowd\": 0}]}",
                             "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 10, 10], "
                             "\"score\": 1}]",
                             EQ_COCO_BBOX, NULL, 0);
    ck_assert(e->stats[8] == 0.5); /* 1 of 2 GTs found */
    eq_coco_eval_destroy(&e);
}
END_TEST

START_TEST(test_tie_goes_to_later_gt)
{
    /* Q3: two GTs with the same IoU: the later one is matched, so a second
     * result can still match the earlier one. GT 1 covers [0,10), GT 2 the
     * same box; result a (score .9) takes GT 2, result b (.8) takes GT 1:
     * both TP.  With GT ids 0 and 5 the later (id 5) is taken by the first
     * result and the second matches id 0 (FP by Q1): AP differs. */
    const char *gt = "{" IMG1 ", " CAT1 ", \"annotations\": ["
                     "{\"id\": 0, \"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 10, 10], "
                     "\"area\": 100, \"iscrowd\": 0},"
                     "{\"id\": 5, \"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 10, 10], "
                     "\"area\": 100, \"iscrowd\": 0}]}";
    const char *dt = "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 10, 10], "
                     "\"score\": 0.9}, {\"image_id\": 1, \"category_id\": 1, \"bbox\": "
                     "[0, 0, 10, 10], \"score\": 0.8}]";
    eq_coco_eval *e = s_eval(gt, dt, EQ_COCO_BBOX, NULL, 0);
    /* first result TP (id 5), second FP (id 0): recall 0.5 at precision 1 */
    ck_assert(e->stats[8] == 0.5);
    ck_assert(fabs(e->stats[0] - 51.0 / 101.0 * (1.0 - 2.220446049250313e-16)) < 1e-15);
    eq_coco_eval_destroy(&e);
}
END_TEST

START_TEST(test_equal_scores_file_order)
{
    /* Q3: equal scores keep file order: the FP listed first ranks first,
     * so precision at the TP is 1/2. */
    const char *gt = "{" IMG1 ", " CAT1 ", \"annotations\": [{\"id\": 1, \"image_id\": 1, "
                     "\"category_id\": 1, \"bbox\": [0, 0, 10, 10], \"area\": 100, "
                     "\"iscrowd\": 0}]}";
    eq_coco_eval *e =
        s_eval(gt,
               "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [60, 60, 10, 10], \"score\": 0.5},"
               " {\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 10, 10], \"score\": 0.5}]",
               EQ_COCO_BBOX, NULL, 0);
    ck_assert(e->stats[0] == 0.5);
    eq_coco_eval_destroy(&e);
    e = s_eval(gt,
               "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 10, 10], \"score\": 0.5},"
               " {\"image_id\": 1, \"category_id\": 1, \"bbox\": [60, 60, 10, 10], \"score\": 0.5}]",
               EQ_COCO_BBOX, NULL, 0);
    ck_assert(e->stats[0] == 0.9999999999999998);
    eq_coco_eval_destroy(&e);
}
END_TEST

START_TEST(test_max_dets_by_value)
{
    /* Q11: stats[0] uses maxDets 100 by value: absent -> -1; stats[8] uses
     * the third cap by position. */
    int md[3] = {1, 10, 50};
    eq_coco_eval *e = s_eval("{" IMG1 ", " CAT1 ", \"annotations\": [{\"id\": 1, \"image_id\": 1, "
                             "\"category_id\": 1, \"bbox\": [0, 0, 10, 10], \"area\": 100, "
                             "\"iscrowd\": 0}]}",
                             "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 10, 10], "
                             "\"score\": 1}]",
                             EQ_COCO_BBOX, md, 3);
    ck_assert(e->stats[0] == -1);
    /* numpy: np.mean(np.full(101, 1/(1+2**-52))) == 0.9999999999999999 */
    ck_assert(e->stats[1] == 0.9999999999999999);
    ck_assert(e->stats[8] == 1);
    char line[256];
    eq_coco_summary_line(e, 1, line, sizeof line);
    ck_assert_str_eq(line, " Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets= 50 ]"
                           " = 1.000");
    eq_coco_summary_line(e, 0, line, sizeof line);
    ck_assert_str_eq(line, " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]"
                           " = -1.000");
    eq_coco_eval_destroy(&e);
}
END_TEST

START_TEST(test_cap_per_image_and_category)
{
    /* maxDets counts per (image, category): with caps 1,1,1 the second
     * (lower-scored) result on the same image and category is dropped, one
     * on another category is kept. */
    int md[3] = {1, 1, 1};
    const char *gt = "{" IMG1 ", \"categories\": [{\"id\": 1}, {\"id\": 2}], \"annotations\": ["
                     "{\"id\": 1, \"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 10, 10], "
                     "\"area\": 100, \"iscrowd\": 0},"
                     "{\"id\": 2, \"image_id\": 1, \"category_id\": 1, \"bbox\": [50, 50, 10, 10], "
                     "\"area\": 100, \"iscrowd\": 0},"
                     "{\"id\": 3, \"image_id\": 1, \"category_id\": 2, \"bbox\": [20, 20, 10, 10], "
                     "\"area\": 100, \"iscrowd\": 0}]}";
    const char *dt = "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 10, 10], \"score\": 0.9},"
                     "{\"image_id\": 1, \"category_id\": 1, \"bbox\": [50, 50, 10, 10], \"score\": 0.8},"
                     "{\"image_id\": 1, \"category_id\": 2, \"bbox\": [20, 20, 10, 10], \"score\": 0.1}]";
    eq_coco_eval *e = s_eval(gt, dt, EQ_COCO_BBOX, md, 3);
    ck_assert(e->cat_ar[0] == 0.5);
    ck_assert(e->cat_ar[1] == 1.0);
    ck_assert(e->stats[8] == 0.75);
    eq_coco_eval_destroy(&e);
}
END_TEST

START_TEST(test_area_inclusive)
{
    /* Q12: a GT of area exactly 1024 is small and medium. */
    eq_coco_eval *e = s_eval("{" IMG1 ", " CAT1 ", \"annotations\": [{\"id\": 1, \"image_id\": 1, "
                             "\"category_id\": 1, \"bbox\": [0, 0, 32, 32], \"area\": 1024, "
                             "\"iscrowd\": 0}]}",
                             "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 32, 32], "
                             "\"score\": 1}]",
                             EQ_COCO_BBOX, NULL, 0);
    ck_assert(e->stats[9] == 1.0);  /* ARs */
    ck_assert(e->stats[10] == 1.0); /* ARm */
    ck_assert(e->stats[11] == -1);  /* ARl: no large GT */
    eq_coco_eval_destroy(&e);
}
END_TEST

START_TEST(test_recall_abort)
{
    /* Q14: recall reaches 1/2 only: precision beyond it stays 0, so AP50 =
     * 51 points of ~1 over 101. */
    eq_coco_eval *e = s_eval("{" IMG1 ", " CAT1 ", \"annotations\": ["
                             "{\"id\": 1, \"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 10, 10], "
                             "\"area\": 100, \"iscrowd\": 0},"
                             "{\"id\": 2, \"image_id\": 1, \"category_id\": 1, \"bbox\": [50, 50, 10, 10], "
                             "\"area\": 100, \"iscrowd\": 0}]}",
                             "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 10, 10], "
                             "\"score\": 1}]",
                             EQ_COCO_BBOX, NULL, 0);
    size_t K = e->K, A = e->A, M = e->M;
    for (size_t r = 0; r < e->R; r++) {
        double v = e->precision[(((0 * e->R + r) * K + 0) * A + 0) * M + 2];
        ck_assert(v == (r <= 50 ? 0.9999999999999998 : 0.0));
    }
    eq_coco_eval_destroy(&e);
}
END_TEST

START_TEST(test_duplicate_gt_ids)
{
    /* Q15: two GTs with id 7: the later one is evaluated twice (it takes both
     * slots), the earlier never.  Result on the earlier box: FP; on the
     * later: TP; n_pos = 2. */
    const char *gt = "{" IMG1 ", " CAT1 ", \"annotations\": ["
                     "{\"id\": 7, \"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 10, 10], "
                     "\"area\": 100, \"iscrowd\": 0},"
                     "{\"id\": 7, \"image_id\": 1, \"category_id\": 1, \"bbox\": [50, 50, 10, 10], "
                     "\"area\": 100, \"iscrowd\": 0}]}";
    eq_coco_eval *e = s_eval(gt,
                             "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 10, 10], "
                             "\"score\": 0.9}, {\"image_id\": 1, \"category_id\": 1, \"bbox\": "
                             "[50, 50, 10, 10], \"score\": 0.8}]",
                             EQ_COCO_BBOX, NULL, 0);
    ck_assert(e->stats[8] == 0.5);
    eq_coco_eval_destroy(&e);
}
END_TEST

START_TEST(test_crowd_absorbs)
{
    /* Crowd GTs match any number of results (ignored, neither TP nor FP);
     * crowd IoU divides by the result's area. */
    const char *gt = "{" IMG1 ", " CAT1 ", \"annotations\": ["
                     "{\"id\": 1, \"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 50, 50], "
                     "\"area\": 2500, \"iscrowd\": 1},"
                     "{\"id\": 2, \"image_id\": 1, \"category_id\": 1, \"bbox\": [60, 60, 10, 10], "
                     "\"area\": 100, \"iscrowd\": 0}]}";
    const char *dt = "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 10, 10], \"score\": 0.9},"
                     "{\"image_id\": 1, \"category_id\": 1, \"bbox\": [10, 10, 10, 10], \"score\": 0.8},"
                     "{\"image_id\": 1, \"category_id\": 1, \"bbox\": [60, 60, 10, 10], \"score\": 0.7}]";
    eq_coco_eval *e = s_eval(gt, dt, EQ_COCO_BBOX, NULL, 0);
    ck_assert(e->stats[0] == 0.9999999999999998); /* two ignored, then a TP */
    ck_assert(e->stats[8] == 1.0);
    eq_coco_eval_destroy(&e);
}
END_TEST

START_TEST(test_segm_result_with_bbox_area)
{
    /* Q4/Q9: segm results that carry a bbox go down the box branch: their
     * area is w*h, not the mask's pixel count.  The first result misses
     * (mask in the lower-right corner) but its box area 10000 is not
     * 'small', so it is ignored there: APs is ~1, not 0.5. */
    const char *gt = "{\"images\": [{\"id\": 1, \"height\": 4, \"width\": 4}], " CAT1
                     ", \"annotations\": [{\"id\": 1, \"image_id\": 1, \"category_id\": 1, "
                     "\"segmentation\": [[0, 0, 0, 2, 2, 2, 2, 0]], \"area\": 4, \"bbox\": "
                     "[0, 0, 2, 2], \"iscrowd\": 0}]}";
    const char *dt = "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 100, 100], "
                     "\"score\": 0.9, \"segmentation\": {\"size\": [4, 4], \"counts\": [10, 2, 2, 2]}},"
                     "{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 2, 2], "
                     "\"score\": 0.8, \"segmentation\": {\"size\": [4, 4], \"counts\": [0, 2, 2, 2, 10]}}]";
    eq_coco_eval *e = s_eval(gt, dt, EQ_COCO_SEGM, NULL, 0);
    ck_assert(e->stats[3] > 0.99); /* APs */
    ck_assert(e->stats[0] == 0.5); /* area all: the miss ranks first */
    eq_coco_eval_destroy(&e);
}
END_TEST

START_TEST(test_mask_results_bbox_and_area)
{
    /* Mask results evaluated as bbox: box and area come from the mask
     * (counts [10, 2, 2, 2] on 4x4 = the block at x, y in [2, 4)). */
    const char *gt = "{\"images\": [{\"id\": 1, \"height\": 4, \"width\": 4}], " CAT1
                     ", \"annotations\": [{\"id\": 1, \"image_id\": 1, \"category_id\": 1, "
                     "\"bbox\": [2, 2, 2, 2], \"area\": 4, \"iscrowd\": 0}]}";
    eq_coco_eval *e = s_eval(gt,
                             "[{\"image_id\": 1, \"category_id\": 1, \"score\": 0.9, "
                             "\"segmentation\": {\"size\": [4, 4], \"counts\": \":220\"}}]",
                             EQ_COCO_BBOX, NULL, 0);
    ck_assert(e->stats[8] == 1.0);  /* box [2, 2, 2, 2]: IoU 1 */
    ck_assert(e->stats[9] == 1.0);  /* area 4: small */
    ck_assert(e->stats[11] == -1.0);
    eq_coco_eval_destroy(&e);
}
END_TEST

START_TEST(test_keypoints_oks)
{
    /* Identical keypoints: OKS 1 -> AP 1-eps; a GT with num_keypoints 0 is
     * ignored. Keypoint result area comes from the keypoint extent. */
    char kp[1024], gt[4096], dt[4096];
    size_t o = 0;
    for (int i = 0; i < 17; i++)
        o += (size_t)snprintf(kp + o, sizeof kp - o, "%s%d, %d, 2", i ? ", " : "", 10 + 3 * i,
                              20 + 2 * i);
    snprintf(gt, sizeof gt,
             "{" IMG1 ", " CAT1 ", \"annotations\": [{\"id\": 1, \"image_id\": 1, "
             "\"category_id\": 1, \"bbox\": [10, 20, 48, 32], \"area\": 5000, \"iscrowd\": 0, "
             "\"num_keypoints\": 17, \"keypoints\": [%s]}]}",
             kp);
    snprintf(dt, sizeof dt,
             "[{\"image_id\": 1, \"category_id\": 1, \"score\": 0.9, \"keypoints\": [%s]}]", kp);
    eq_coco_eval *e = s_eval(gt, dt, EQ_COCO_KEYPOINTS, NULL, 0);
    ck_assert_uint_eq(e->n_stats, 10);
    ck_assert(e->stats[0] == 0.9999999999999998);
    ck_assert(e->stats[5] == 1.0);
    char line[256];
    eq_coco_summary_line(e, 4, line, sizeof line);
    ck_assert_str_eq(line, " Average Precision  (AP) @[ IoU=0.50:0.95 | area= large | maxDets= 20 ]"
                           " = -1.000");
    ck_assert(e->stats[3] == 0.9999999999999998); /* area 5000: medium */
    eq_coco_eval_destroy(&e);
}
END_TEST

START_TEST(test_in_memory_matches_json)
{
    /* The daemon builds datasets in memory: same numbers as from JSON. */
    const char *gt_json =
        "{\"images\": [{\"id\": 1, \"height\": 30, \"width\": 40}, {\"id\": 2, \"height\": 30, "
        "\"width\": 40}], \"categories\": [{\"id\": 3}, {\"id\": 5}], \"annotations\": ["
        "{\"id\": 1, \"image_id\": 1, \"category_id\": 3, \"bbox\": [2, 2, 10, 8], \"area\": 70, "
        "\"iscrowd\": 0, \"segmentation\": [[2, 2, 12, 2, 12, 10, 2, 10]]},"
        "{\"id\": 2, \"image_id\": 1, \"category_id\": 5, \"bbox\": [20, 5, 15, 20], \"area\": 250, "
        "\"iscrowd\": 0, \"segmentation\": [[20, 5, 35, 5, 27, 25]]},"
        "{\"id\": 3, \"image_id\": 2, \"category_id\": 3, \"bbox\": [0, 0, 40, 30], \"area\": 1200, "
        "\"iscrowd\": 1, \"segmentation\": {\"size\": [30, 40], \"counts\": [0, 600, 600]}}]}";
    const char *dt_json =
        "[{\"image_id\": 1, \"category_id\": 3, \"bbox\": [3, 2, 10, 8], \"score\": 0.9},"
        " {\"image_id\": 1, \"category_id\": 5, \"bbox\": [21, 6, 14, 18], \"score\": 0.6},"
        " {\"image_id\": 2, \"category_id\": 3, \"bbox\": [5, 5, 10, 10], \"score\": 0.7},"
        " {\"image_id\": 1, \"category_id\": 3, \"bbox\": [25, 2, 5, 5], \"score\": 0.8}]";
    eq_err err;
    eq_coco *gt = eq_coco_new("gt-mem", &err), *dt = eq_coco_new("dt-mem", &err);
    ck_assert_ptr_nonnull(gt);
    ck_assert_ptr_nonnull(dt);
    ck_assert_int_eq(eq_coco_add_image(gt, 1, 30, 40, &err), EQ_OK);
    ck_assert_int_eq(eq_coco_add_image(gt, 2, 30, 40, &err), EQ_OK);
    ck_assert_int_eq(eq_coco_add_category(gt, 3, &err), EQ_OK);
    ck_assert_int_eq(eq_coco_add_category(gt, 5, &err), EQ_OK);
    const uint32_t F = EQ_COCO_F_ID | EQ_COCO_F_BBOX | EQ_COCO_F_AREA | EQ_COCO_F_ISCROWD |
                       EQ_COCO_F_SEGM;
    double p1[8] = {2, 2, 12, 2, 12, 10, 2, 10}, p2[6] = {20, 5, 35, 5, 27, 25};
    size_t r1 = 8, r2 = 6;
    uint32_t counts[3] = {0, 600, 600};
    eq_coco_ann a;
    memset(&a, 0, sizeof a);
    a = (eq_coco_ann){.has = F, .id = 1, .image_id = 1, .category_id = 3, .area = 70,
                      .bbox = {2, 2, 10, 8}, .seg_kind = EQ_COCO_SEG_POLY, .poly = p1,
                      .ring_len = &r1, .n_rings = 1};
    ck_assert_int_eq(eq_coco_add_ann(gt, &a, &err), EQ_OK);
    a = (eq_coco_ann){.has = F, .id = 2, .image_id = 1, .category_id = 5, .area = 250,
                      .bbox = {20, 5, 15, 20}, .seg_kind = EQ_COCO_SEG_POLY, .poly = p2,
                      .ring_len = &r2, .n_rings = 1};
    ck_assert_int_eq(eq_coco_add_ann(gt, &a, &err), EQ_OK);
    a = (eq_coco_ann){.has = F, .id = 3, .image_id = 2, .category_id = 3, .area = 1200,
                      .iscrowd = 1, .bbox = {0, 0, 40, 30}, .seg_kind = EQ_COCO_SEG_COUNTS,
                      .counts = counts, .n_counts = 3, .seg_h = 30, .seg_w = 40};
    ck_assert_int_eq(eq_coco_add_ann(gt, &a, &err), EQ_OK);
    const double boxes[4][4] = {{3, 2, 10, 8}, {21, 6, 14, 18}, {5, 5, 10, 10}, {25, 2, 5, 5}};
    const int64_t img[4] = {1, 1, 2, 1}, cat[4] = {3, 5, 3, 3};
    const double score[4] = {0.9, 0.6, 0.7, 0.8};
    for (int i = 0; i < 4; i++) {
        a = (eq_coco_ann){.has = EQ_COCO_F_BBOX | EQ_COCO_F_SCORE, .image_id = img[i],
                          .category_id = cat[i], .score = score[i]};
        memcpy(a.bbox, boxes[i], sizeof a.bbox);
        ck_assert_int_eq(eq_coco_add_ann(dt, &a, &err), EQ_OK);
    }
    ck_assert_msg(eq_coco_load_res_finish(dt, gt, &err) == EQ_OK, "%s", err.msg);
    ck_assert_uint_eq(eq_coco_num_anns(dt), 4);
    ck_assert_uint_eq(eq_coco_num_images(dt), 2);
    for (int type = EQ_COCO_BBOX; type <= EQ_COCO_SEGM; type++) {
        eq_coco_params p;
        memset(&p, 0, sizeof p);
        p.iou_type = (eq_coco_iou)type;
        p.threads = 1;
        eq_coco_eval *e = NULL;
        ck_assert_msg(eq_coco_evaluate(gt, dt, &p, &e, &err) == EQ_OK, "%s", err.msg);
        eq_coco_eval *j = s_eval(gt_json, dt_json, (eq_coco_iou)type, NULL, 0);
        for (size_t i = 0; i < e->n_stats; i++) ck_assert(e->stats[i] == j->stats[i]);
        ck_assert(e->stats[1] > 0); /* the case is not trivially -1 */
        eq_coco_eval_destroy(&e);
        eq_coco_eval_destroy(&j);
    }
    eq_coco_destroy(&gt);
    eq_coco_destroy(&dt);
    ck_assert_ptr_null(gt);
    eq_coco_destroy(&gt); /* NULL-safe */
}
END_TEST

/* ---- 3. bad input ------------------------------------------------------- */

#define GT_OK                                                                                  \
    "{" IMG1 ", " CAT1 ", \"annotations\": [{\"id\": 1, \"image_id\": 1, \"category_id\": 1, " \
    "\"bbox\": [0, 0, 10, 10], \"area\": 100, \"iscrowd\": 0, \"segmentation\": "              \
    "[[0, 0, 0, 10, 10, 10, 10, 0]]}]}"

START_TEST(test_errors)
{
    /* Q10: empty results, results on unknown images */
    s_expect_error(GT_OK, "[]", EQ_COCO_BBOX, "empty");
    s_expect_error(GT_OK,
                   "[{\"image_id\": 9, \"category_id\": 1, \"bbox\": [0, 0, 1, 1], \"score\": 1}]",
                   EQ_COCO_BBOX, "image_id 9 is not an image");
    /* negative box, missing score, mistyped ids, results not a list */
    s_expect_error(GT_OK,
                   "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, -1, 1], \"score\": 1}]",
                   EQ_COCO_BBOX, "negative size");
    s_expect_error(GT_OK, "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 1, 1]}]",
                   EQ_COCO_BBOX, "missing 'score'");
    s_expect_error(GT_OK,
                   "[{\"image_id\": \"a\", \"category_id\": 1, \"bbox\": [0, 0, 1, 1], \"score\": 1}]",
                   EQ_COCO_BBOX, "result[0] (line 1, column 15): 'image_id' must be an integer");
    s_expect_error(GT_OK, "{}", EQ_COCO_BBOX, "must be a JSON list");
    s_expect_error(GT_OK,
                   "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 1, 1], \"score\": 1},\n"
                   " {\"image_id\": 1, \"category_id\": 1, \"score\": 1}]",
                   EQ_COCO_BBOX, "result[1] (line 2, column 2): 'bbox' must be 4 numbers");
    /* first result decides (Q9): a mask after a box result needs a bbox */
    s_expect_error(GT_OK,
                   "[{\"image_id\": 1, \"category_id\": 1, \"score\": 1, \"segmentation\": "
                   "[[0, 0, 0, 5, 5, 5]]}]",
                   EQ_COCO_SEGM, "must be a compressed RLE");
    /* a mask result that is an RLE but a broken one: the reason is named
     * (it used to say only "must be a compressed RLE") */
    s_expect_error(GT_OK,
                   "[{\"image_id\": 1, \"category_id\": 1, \"score\": 1, \"segmentation\": "
                   "{\"size\": [10, 10], \"counts\": \"\\u0001\\u0002\"}}]",
                   EQ_COCO_SEGM, "result[0] (line 1, column 2): 'segmentation': the compressed RLE 'counts' "
                   "string is malformed");
    s_expect_error(GT_OK,
                   "[{\"image_id\": 1, \"category_id\": 1, \"score\": 1, \"segmentation\": "
                   "{\"size\": [-10, 10], \"counts\": \"9\"}}]",
                   EQ_COCO_SEGM, "'segmentation': an RLE 'size' must be [height, width]");
    s_expect_error(GT_OK,
                   "[{\"image_id\": 1, \"category_id\": 1, \"score\": 1, \"segmentation\": "
                   "{\"size\": [10, 10]}}]",
                   EQ_COCO_SEGM, "'segmentation': an RLE object needs 'size' and 'counts'");
    /* Q8: a first polygon of 4 values is read as a box and fails */
    s_expect_error("{" IMG1 ", " CAT1 ", \"annotations\": [{\"id\": 1, \"image_id\": 1, "
                   "\"category_id\": 1, \"area\": 1, \"iscrowd\": 0, \"segmentation\": "
                   "[[0, 0, 1, 1], [0, 0, 5, 0, 5, 5]]}]}",
                   "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 1, 1], \"score\": 1}]",
                   EQ_COCO_SEGM, "first polygon has 4 values");
    /* GT without iscrowd: needed by evaluateImg */
    s_expect_error("{" IMG1 ", " CAT1 ", \"annotations\": [{\"id\": 1, \"image_id\": 1, "
                   "\"category_id\": 1, \"bbox\": [0, 0, 10, 10], \"area\": 100}]}",
                   "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 1, 1], \"score\": 1}]",
                   EQ_COCO_BBOX, "missing 'iscrowd'");
    /* segm without image size */
    s_expect_error("{\"images\": [{\"id\": 1}], " CAT1 ", \"annotations\": [{\"id\": 1, "
                   "\"image_id\": 1, \"category_id\": 1, \"area\": 1, \"iscrowd\": 0, "
                   "\"segmentation\": [[0, 0, 0, 5, 5, 5]]}]}",
                   "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 1, 1], \"score\": 1}]",
                   EQ_COCO_SEGM, "no 'height'/'width'");
    /* RLE counts that do not cover the mask (pycocotools would hang) */
    s_expect_error("{" IMG1 ", " CAT1 ", \"annotations\": [{\"id\": 1, \"image_id\": 1, "
                   "\"category_id\": 1, \"area\": 1, \"iscrowd\": 1, \"segmentation\": "
                   "{\"size\": [100, 100], \"counts\": [5, 5]}}]}",
                   "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 1, 1], \"score\": 1}]",
                   EQ_COCO_SEGM, "counts sum to 10");
    /* keypoints of the wrong length */
    s_expect_error("{" IMG1 ", " CAT1 ", \"annotations\": [{\"id\": 1, \"image_id\": 1, "
                   "\"category_id\": 1, \"bbox\": [0, 0, 10, 10], \"area\": 100, \"iscrowd\": 0, "
                   "\"num_keypoints\": 1, \"keypoints\": [1, 2, 2]}]}",
                   "[{\"image_id\": 1, \"category_id\": 1, \"keypoints\": [1, 2, 2], \"score\": 1}]",
                   EQ_COCO_KEYPOINTS, "expected 51");
}
END_TEST

START_TEST(test_error_independent_of_threads)
{
    /* Two bad polygons in different buckets: the first (lowest image id)
     * is reported, whatever the number of threads. */
    const char *gt = "{\"images\": [{\"id\": 1, \"height\": 9, \"width\": 9}, {\"id\": 2, "
                     "\"height\": 9, \"width\": 9}], " CAT1 ", \"annotations\": ["
                     "{\"id\": 7, \"image_id\": 2, \"category_id\": 1, \"area\": 1, \"iscrowd\": 0, "
                     "\"segmentation\": [[0, 0, 1, 1]]},"
                     "{\"id\": 8, \"image_id\": 1, \"category_id\": 1, \"area\": 1, \"iscrowd\": 0, "
                     "\"segmentation\": [[0, 0, 1]]}]}";
    const char *dt = "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 1, 1], \"score\": 1},"
                     " {\"image_id\": 2, \"category_id\": 1, \"bbox\": [0, 0, 1, 1], \"score\": 1}]";
    char first[EQ_ERR_MSG_LEN] = "";
    for (int threads = 1; threads <= 4; threads++) {
        eq_coco *g = NULL, *d = NULL;
        s_load(gt, dt, &g, &d);
        eq_coco_params p;
        memset(&p, 0, sizeof p);
        p.iou_type = EQ_COCO_SEGM;
        p.threads = threads;
        eq_coco_eval *e = NULL;
        eq_err err;
        ck_assert_int_ne(eq_coco_evaluate(g, d, &p, &e, &err), EQ_OK);
        ck_assert_ptr_null(e);
        ck_assert_msg(strstr(err.msg, "annotations[1]") != NULL, "%s", err.msg);
        if (threads == 1)
            snprintf(first, sizeof first, "%s", err.msg);
        else
            ck_assert_str_eq(err.msg, first);
        eq_coco_destroy(&g);
        eq_coco_destroy(&d);
    }
}
END_TEST

START_TEST(test_bad_json_file)
{
    char *dir = eq_test_scratch("cocoeval");
    char path[4200];
    snprintf(path, sizeof path, "%s/bad.json", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"images\": [\n  {\"id\": 1,}\n]}", f);
    fclose(f);
    eq_coco *gt = NULL;
    eq_err err;
    eq_err_clear(&err);
    ck_assert_int_ne(eq_coco_load_gt(path, &gt, &err), EQ_OK);
    ck_assert_ptr_null(gt);
    ck_assert_msg(strstr(err.msg, "line 2") != NULL, "%s", err.msg);
    eq_test_scratch_rm(dir);
}
END_TEST

START_TEST(test_np_sum_blocks)
{
    /* numpy adds blocks of 8192 elements, each summed pairwise: for these
     * values the block order matters in the last bit. */
    size_t n = 10100;
    double *a = malloc(n * sizeof *a);
    ck_assert_ptr_nonnull(a);
    for (size_t i = 0; i < n; i++) a[i] = 1.0 / (double)(i % 97 + 1) + 1e-3 * (double)(i % 13);
    double naive = 0;
    for (size_t i = 0; i < n; i++) naive += a[i];
    double s = eq_coco_np_sum(a, n);
    ck_assert(fabs(s - naive) < 1e-9);
    /* small sizes: the exact numpy orders */
    double b[9] = {1e16, 1, 1, 1, 1, 1, 1, 1, 1};
    ck_assert(eq_coco_np_sum(b, 7) == ((((((0 + 1e16) + 1) + 1) + 1) + 1) + 1) + 1);
    double r = ((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + (b[6] + b[7]));
    ck_assert(eq_coco_np_sum(b, 9) == r + b[8]);
    free(a);
}
END_TEST

/* ---- 4. the command line ------------------------------------------------ */

/* Run a command, capture stdout; returns the exit status. */
static int s_run(const char *cmd, char *out, size_t cap)
{
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

START_TEST(test_cli)
{
    const char *bd = getenv("EQ_BUILDDIR");
    char bin[4096], cmd[16384], *out = malloc(1 << 16);
    ck_assert_ptr_nonnull(out);
    snprintf(bin, sizeof bin, "%s/eq-eval", bd && *bd ? bd : ".");
    if (access(bin, X_OK) != 0) {
        /* the test binary may run before eq-eval is built outside make check */
        free(out);
        return;
    }
    char *gt = s_path("basic_small/gt.json"), *dt = s_path("basic_small/dt_segm.json");
    char *ex = s_path("basic_small/expected.segm.json");
    /* the summary exactly as pycocotools prints it */
    snprintf(cmd, sizeof cmd, "'%s' coco --gt '%s' --dt '%s' --iou segm --threads 2", bin, gt, dt);
    ck_assert_int_eq(s_run(cmd, out, 1 << 16), 0);
    eq_err err;
    eq_json_doc *exp = eq_json_parse_file(ex, NULL, &err);
    ck_assert_ptr_nonnull(exp);
    const eq_json *lines = eq_json_get(eq_json_root(exp), "summary_lines");
    char want[4096];
    size_t o = 0;
    for (size_t i = 0; i < eq_json_len(lines); i++)
        o += (size_t)snprintf(want + o, sizeof want - o, "%s\n",
                              eq_json_str(eq_json_at(lines, i), NULL));
    ck_assert_str_eq(out, want);
    /* --json: stats at full precision read back to the same doubles */
    snprintf(cmd, sizeof cmd, "'%s' coco --gt '%s' --dt '%s' --iou segm --json", bin, gt, dt);
    ck_assert_int_eq(s_run(cmd, out, 1 << 16), 0);
    eq_json_doc *got = eq_json_parse(out, strlen(out), NULL, &err);
    ck_assert_msg(got != NULL, "--json output is not JSON: %s", err.msg);
    const eq_json *gs = eq_json_get(eq_json_root(got), "stats");
    const eq_json *es = eq_json_get(eq_json_root(exp), "stats");
    ck_assert_uint_eq(eq_json_len(gs), 12);
    for (size_t i = 0; i < 12; i++)
        ck_assert(eq_json_num(eq_json_at(gs, i)) == eq_json_num(eq_json_at(es, i)));
    ck_assert_ptr_nonnull(eq_json_get(eq_json_get(eq_json_root(got), "per_category_ap"), "2"));
    ck_assert_ptr_nonnull(eq_json_get(eq_json_root(got), "params"));
    eq_json_doc_destroy(&got);
    /* restricted ids and caps are accepted; bad input exits 1, usage 2 */
    snprintf(cmd, sizeof cmd,
             "'%s' coco --gt '%s' --dt '%s' --img-ids 1,2,3 --cat-ids 1 --max-dets 1,5,50 "
             "--per-category",
             bin, gt, dt);
    ck_assert_int_eq(s_run(cmd, out, 1 << 16), 0);
    ck_assert_ptr_nonnull(strstr(out, "maxDets= 50"));
    ck_assert_ptr_nonnull(strstr(out, "category"));
    char *empty = s_path("err_empty_results/dt_bbox.json");
    snprintf(cmd, sizeof cmd, "'%s' coco --gt '%s' --dt '%s' 2>/dev/null", bin, gt, empty);
    ck_assert_int_eq(s_run(cmd, out, 1 << 16), 1);
    snprintf(cmd, sizeof cmd, "'%s' coco --gt '%s' --iou nope 2>/dev/null", bin, gt);
    ck_assert_int_eq(s_run(cmd, out, 1 << 16), 2);
    snprintf(cmd, sizeof cmd, "'%s' coco --gt '%s' --dt '%s' --max-dets 1,x 2>/dev/null", bin, gt,
             dt);
    ck_assert_int_eq(s_run(cmd, out, 1 << 16), 2);
    /* fewer than three caps for bbox/segm: a usage error (doc/eq-eval.md),
     * not status 1 after reading both files */
    snprintf(cmd, sizeof cmd, "'%s' coco --gt '%s' --dt '%s' --max-dets 1,10 2>&1", bin, gt, dt);
    ck_assert_int_eq(s_run(cmd, out, 1 << 16), 2);
    ck_assert_msg(strstr(out, "--max-dets: the bbox summary uses three caps"), "%s", out);
    eq_json_doc_destroy(&exp);
    free(empty);
    free(gt);
    free(dt);
    free(ex);
    free(out);
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("cocoeval");
    TCase *tc = tcase_create("fixtures");
    tcase_set_timeout(tc, 20);
    tcase_add_loop_test(tc, test_fixture_case, 0, (int)(sizeof s_cases / sizeof *s_cases));
    suite_add_tcase(s, tc);
    tc = tcase_create("quirks");
    tcase_add_test(tc, test_thresholds_linspace);
    tcase_add_test(tc, test_iou_exactly_threshold);
    tcase_add_test(tc, test_gt_id_zero);
    tcase_add_test(tc, test_ignore_field_discarded);
    tcase_add_test(tc, test_tie_goes_to_later_gt);
    tcase_add_test(tc, test_equal_scores_file_order);
    tcase_add_test(tc, test_max_dets_by_value);
    tcase_add_test(tc, test_cap_per_image_and_category);
    tcase_add_test(tc, test_area_inclusive);
    tcase_add_test(tc, test_recall_abort);
    tcase_add_test(tc, test_duplicate_gt_ids);
    tcase_add_test(tc, test_crowd_absorbs);
    tcase_add_test(tc, test_segm_result_with_bbox_area);
    tcase_add_test(tc, test_mask_results_bbox_and_area);
    tcase_add_test(tc, test_keypoints_oks);
    tcase_add_test(tc, test_np_sum_blocks);
    tcase_add_test(tc, test_in_memory_matches_json);
    suite_add_tcase(s, tc);
    tc = tcase_create("errors");
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_bad_json_file);
    tcase_add_test(tc, test_error_independent_of_threads);
    suite_add_tcase(s, tc);
    tc = tcase_create("cli");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_cli);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return eq_test_run(s_suite()); }
