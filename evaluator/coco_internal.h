/*
 * evaluator/coco_internal.h -- the dataset representation shared by the
 * COCO loader (coco_load.c) and the evaluation (cocoeval.c).  Not a public
 * interface.
 */
#ifndef EQ_COCO_INTERNAL_H
#define EQ_COCO_INTERNAL_H

#include "evaluator/cocoeval.h"

/* Internal seg kinds beyond eq_coco_seg_kind: a segmentation that was given
 * but cannot be used; the reason is reported when (and only when) the
 * evaluation needs it, since pycocotools only fails then. */
#define S_SEG_INVALID 100
/* A box result without a segmentation: loadRes's polygon
 * [x1,y1, x1,y2, x2,y2, x2,y1], built from bbox when segm needs it. */
#define S_SEG_FROM_BOX 101

/* Bits for fields given with an unusable type (reported on use). */
enum {
    S_BAD_BBOX = 1u << 0,
    S_BAD_AREA = 1u << 1,
    S_BAD_ISCROWD = 1u << 2,
    S_BAD_KEYPOINTS = 1u << 3,
    S_BAD_NUM_KEYPOINTS = 1u << 4,
    S_BAD_SCORE = 1u << 5
};

typedef struct eq_coco_rec {
    int64_t id, image_id, category_id;
    uint32_t has;  /* EQ_COCO_F_* */
    uint32_t bad;  /* S_BAD_* */
    uint32_t line, col;
    double iscrowd, area, score;
    double bbox[4];
    int64_t num_keypoints;
    size_t kp_off, n_kp;     /* values in dpool */
    int seg_kind;            /* eq_coco_seg_kind or S_SEG_INVALID */
    size_t seg_doff;         /* POLY: first value in dpool */
    size_t seg_off, seg_n;   /* POLY: ring lengths in rpool; COUNTS/STRING: upool */
    uint32_t seg_h, seg_w;
    const char *seg_why;     /* S_SEG_INVALID: static reason */
} eq_coco_rec;

struct eq_coco {
    char name[256];
    int is_res;
    int64_t *img_id, *img_h, *img_w;
    size_t n_img, cap_img;
    int64_t *cat_id;
    size_t n_cat, cap_cat;
    eq_coco_rec *anns;
    size_t n_ann, cap_ann;
    double *dpool;
    size_t n_d, cap_d;
    size_t *rpool;
    size_t n_r, cap_r;
    uint32_t *upool;
    size_t n_u, cap_u;
};

/* loadRes in steps, so a loader can fix each result while it is hot in
 * the cache: begin (after the first result is added: it picks the branch),
 * step for every result in order, end (reports the first error, an image
 * not in the GT taking precedence as in pycocotools; frees the context).
 * eq_coco_load_res_finish() is the three in a row. */
enum { S_RES_BOX = 1, S_RES_MASK, S_RES_KPS };
typedef struct eq_coco_res_ctx {
    int64_t *ids; /* sorted unique GT image ids */
    size_t nid;
    int branch;
    size_t bad_img; /* index + 1 of the first result on an unknown image */
    eq_err img_err;
    int have_err;
    eq_err err;
} eq_coco_res_ctx;
eq_status eq_coco_res_begin(eq_coco *res, const eq_coco *gt, eq_coco_res_ctx *x, eq_err *err);
void eq_coco_res_step(eq_coco *res, size_t i, eq_coco_res_ctx *x);
eq_status eq_coco_res_end(eq_coco_res_ctx *x, eq_err *err);

/* Grow *p (elements of `size`) to hold at least `need`. */
eq_status eq_coco_grow(void **p, size_t *cap, size_t need, size_t size, eq_err *err);

#endif
