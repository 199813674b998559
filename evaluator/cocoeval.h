/*
 * evaluator/cocoeval.h -- COCO evaluation (bbox, segm, keypoints) with the
 * numbers of pycocotools' COCOeval (cocoapi 8c9bcc3), bit for bit on
 * well-formed input.  ../shared/COCOEVAL.md is the specification; the
 * section numbers below refer to it, and doc/eq-eval.md lists what eq does
 * where pycocotools only crashes.
 *
 * A dataset (eq_coco) is either ground truth or a result set loaded against
 * one ("loadRes", §2).  Both are built from JSON files or in memory (the
 * eq-eval daemon feeds results from PRED messages), then eq_coco_evaluate()
 * runs evaluate + accumulate + summarize and returns plain arrays.
 *
 * Thread-safety: a finished dataset is immutable and may be evaluated from
 * several threads at once; building one is single-threaded.  Evaluation
 * splits its work by (image, category) over a private thread pool.
 */
#ifndef EQ_COCOEVAL_H
#define EQ_COCOEVAL_H

#include <stddef.h>
#include <stdint.h>

#include "core/json.h"
#include "core/status.h"

typedef enum eq_coco_iou {
    EQ_COCO_BBOX = 0,
    EQ_COCO_SEGM,
    EQ_COCO_KEYPOINTS
} eq_coco_iou;

/* "bbox", "segm", "keypoints"; NULL for an unknown value. */
const char *eq_coco_iou_name(eq_coco_iou t);
/* Parse a name; -1 if unknown. */
int eq_coco_iou_parse(const char *name, eq_coco_iou *out);

/* ---- datasets -------------------------------------------------------- */

typedef struct eq_coco eq_coco;

/* Which fields of an annotation or result were given (pycocotools tests key
 * presence, e.g. to pick the loadRes branch). */
enum {
    EQ_COCO_F_ID = 1u << 0,
    EQ_COCO_F_BBOX = 1u << 1,       /* bbox: 4 numbers */
    EQ_COCO_F_BBOX_EMPTY = 1u << 2, /* bbox: [] (counts as absent for loadRes) */
    EQ_COCO_F_AREA = 1u << 3,
    EQ_COCO_F_ISCROWD = 1u << 4,
    EQ_COCO_F_SEGM = 1u << 5,
    EQ_COCO_F_KEYPOINTS = 1u << 6,
    EQ_COCO_F_NUM_KEYPOINTS = 1u << 7,
    EQ_COCO_F_SCORE = 1u << 8,
    EQ_COCO_F_CAPTION = 1u << 9
};

typedef enum eq_coco_seg_kind {
    EQ_COCO_SEG_NONE = 0,
    EQ_COCO_SEG_POLY,   /* list of polygons (rings of x,y values) */
    EQ_COCO_SEG_COUNTS, /* uncompressed RLE: counts list with its own size */
    EQ_COCO_SEG_STRING  /* compressed RLE string (already decoded to counts) */
} eq_coco_seg_kind;

/* One annotation or result as given; eq_coco_add_ann copies everything. */
typedef struct eq_coco_ann {
    uint32_t has;            /* EQ_COCO_F_* */
    int64_t id, image_id, category_id;
    double iscrowd;          /* truthy = ignored; int(iscrowd) != 0 = crowd */
    double area, score;
    double bbox[4];          /* x, y, w, h */
    int64_t num_keypoints;
    const double *keypoints; /* x, y, v triples */
    size_t n_keypoints;      /* number of values (3 per point) */
    eq_coco_seg_kind seg_kind;
    const double *poly;      /* POLY: rings' values concatenated */
    const size_t *ring_len;  /* POLY: values per ring */
    size_t n_rings;
    const uint32_t *counts;  /* COUNTS/STRING */
    size_t n_counts;
    uint32_t seg_h, seg_w;   /* COUNTS/STRING: the RLE's own size */
    uint32_t line, col;      /* position in its file for messages (0: none) */
} eq_coco_ann;

/* An empty dataset; `name` (e.g. the file name, may be NULL) prefixes
 * messages.  Caller owns the result: eq_coco_destroy(). */
eq_coco *eq_coco_new(const char *name, eq_err *err);
void eq_coco_destroy(eq_coco **coco_p);
/* height/width < 0: not given (then segm evaluation of that image fails). */
eq_status eq_coco_add_image(eq_coco *c, int64_t id, int64_t height, int64_t width, eq_err *err);
eq_status eq_coco_add_category(eq_coco *c, int64_t id, eq_err *err);
eq_status eq_coco_add_ann(eq_coco *c, const eq_coco_ann *a, eq_err *err);

/* Turn a dataset holding raw results into a result set for `gt`, with the
 * semantics of COCO.loadRes (§2): the first result picks the branch, areas,
 * boxes and segmentations are derived, ids become 1..N, images are shared
 * with gt.  Errors: empty results (pycocotools: IndexError), results on
 * images absent from gt (AssertionError), missing or bad fields for the
 * branch -- each naming the result's index and position. */
eq_status eq_coco_load_res_finish(eq_coco *res, const eq_coco *gt, eq_err *err);

/* Load ground truth from a COCO annotation file / parsed JSON document.
 * Errors name the file, the entry (e.g. "annotations[12]") and its line. */
eq_status eq_coco_load_gt(const char *path, eq_coco **out, eq_err *err);
eq_status eq_coco_load_gt_json(const eq_json *root, const char *name, eq_coco **out,
                               eq_err *err);
/* Load a results file (a JSON list) against gt, as COCO.loadRes. */
eq_status eq_coco_load_res(const eq_coco *gt, const char *path, eq_coco **out, eq_err *err);
eq_status eq_coco_load_res_json(const eq_coco *gt, const eq_json *root, const char *name,
                                eq_coco **out, eq_err *err);

size_t eq_coco_num_images(const eq_coco *c);
size_t eq_coco_num_categories(const eq_coco *c);
size_t eq_coco_num_anns(const eq_coco *c);

/* ---- evaluation -------------------------------------------------------- */

typedef struct eq_coco_params {
    eq_coco_iou iou_type;
    const int64_t *img_ids; /* NULL: every GT image */
    size_t n_img_ids;
    const int64_t *cat_ids; /* NULL: every GT category */
    size_t n_cat_ids;
    const int *max_dets;    /* NULL: [1, 10, 100], or [20] for keypoints */
    size_t n_max_dets;
    int threads;            /* <= 0: one per CPU */
} eq_coco_params;

#define EQ_COCO_T 10  /* IoU thresholds 0.5:0.05:0.95 (numpy linspace doubles) */
#define EQ_COCO_R 101 /* recall points 0:0.01:1 */
#define EQ_COCO_MAX_STATS 12

/* The outcome, plain arrays in pycocotools' layouts. */
typedef struct eq_coco_eval {
    eq_coco_iou iou_type;
    size_t T, R, K, A, M;
    double iou_thrs[EQ_COCO_T];
    double rec_thrs[EQ_COCO_R];
    int64_t *img_ids;  /* sorted unique evaluated images */
    size_t n_img_ids;
    int64_t *cat_ids;  /* K, sorted unique */
    int *max_dets;     /* M, sorted */
    double area_rng[4][2];
    const char *area_lbl[4];
    double *precision; /* [T][R][K][A][M], -1 where no data */
    double *recall;    /* [T][K][A][M] */
    double *scores;    /* [T][R][K][A][M] */
    double stats[EQ_COCO_MAX_STATS];
    size_t n_stats;    /* 12, or 10 for keypoints */
    /* Per category (K each), area all, the last maxDets: AP@[.5:.95],
     * AP@.5, AP@.75, AR; -1 where the category has no data. */
    double *cat_ap, *cat_ap50, *cat_ap75, *cat_ar;
    /* Seconds spent in each stage. */
    double t_prepare, t_evaluate, t_accumulate;
} eq_coco_eval;

/* Run the evaluation.  Errors (bad params, a GT or result that lacks a
 * field this iou type needs, a segmentation that cannot be rasterised)
 * name the entry.  Caller owns *out: eq_coco_eval_destroy(). */
eq_status eq_coco_evaluate(const eq_coco *gt, const eq_coco *dt, const eq_coco_params *p,
                           eq_coco_eval **out, eq_err *err);
void eq_coco_eval_destroy(eq_coco_eval **e_p);

/* Summary line i (0 <= i < n_stats) exactly as pycocotools prints it
 * (without newline).  Returns the snprintf result. */
int eq_coco_summary_line(const eq_coco_eval *e, size_t i, char *buf, size_t cap);
/* Short stat names: "AP", "AP50", ... */
const char *eq_coco_stat_label(const eq_coco_eval *e, size_t i);

/* The sum np.add.reduce computes for a contiguous float64 array of n
 * elements (pairwise summation within blocks of 8192, blocks added in
 * order): the order pycocotools' means use, needed for the last bit. */
double eq_coco_np_sum(const double *a, size_t n);

#endif
