/*
 * evaluator/cocoeval.c -- datasets, loadRes, and COCOeval's evaluate /
 * accumulate / summarize (../shared/COCOEVAL.md §2-§7, §9-§11).
 *
 * Layout of the work (no pass is quadratic in the number of images or
 * annotations; matching is quadratic only within one (image, category)):
 *   1. gather: the GT and results of the evaluated images and categories,
 *      bucketed by (image, category) in pycocotools' order (one sort);
 *   2. per bucket, in parallel: stable score sort and cap of the results;
 *   3. segm only: image sizes by id;
 *   4. per bucket, in parallel: (segm) the bucket's masks, made and freed
 *      on the spot, IoU/OKS matrix, then greedy matching for every area
 *      range and threshold; each kept result gets a TP / FP / ignored
 *      state per (area, threshold);
 *   5. per category, in parallel: one stable score sort of its results,
 *      then precision/recall for every (area, cap, threshold);
 *   6. summarize with numpy's pairwise summation.
 */
#include "evaluator/coco_internal.h"
#include "evaluator/mask.h"

#include "core/clock.h"
#include "core/pool.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- names ------------------------------------------------------------- */

const char *eq_coco_iou_name(eq_coco_iou t)
{
    switch (t) {
    case EQ_COCO_BBOX: return "bbox";
    case EQ_COCO_SEGM: return "segm";
    case EQ_COCO_KEYPOINTS: return "keypoints";
    }
    return NULL;
}

int eq_coco_iou_parse(const char *name, eq_coco_iou *out)
{
    for (int t = 0; t <= EQ_COCO_KEYPOINTS; t++)
        if (name && strcmp(name, eq_coco_iou_name((eq_coco_iou)t)) == 0) {
            *out = (eq_coco_iou)t;
            return 0;
        }
    return -1;
}

/* ---- datasets ---------------------------------------------------------- */

eq_status eq_coco_grow(void **p, size_t *cap, size_t need, size_t size, eq_err *err)
{
    if (need <= *cap) return EQ_OK;
    size_t n = *cap ? *cap : 16;
    while (n < need) n *= 2;
    if (n > SIZE_MAX / size) return eq_err_set(err, EQ_ERR_NOMEM, "out of memory (%zu elements)", n);
    void *q = realloc(*p, n * size);
    if (!q) return eq_err_set(err, EQ_ERR_NOMEM, "out of memory (%zu elements)", n);
    *p = q;
    *cap = n;
    return EQ_OK;
}

#define S_GROW(arr, cap, need, err) eq_coco_grow((void **)&(arr), &(cap), (need), sizeof *(arr), err)
/* p + off where the pool may still be NULL (nothing stored yet): NULL + 0 is
 * undefined behaviour in C, so keep NULL instead. */
#define S_OFF(p, off) ((p) ? (p) + (off) : (p))

eq_coco *eq_coco_new(const char *name, eq_err *err)
{
    eq_coco *c = calloc(1, sizeof *c);
    if (!c) {
        eq_err_set(err, EQ_ERR_NOMEM, "out of memory");
        return NULL;
    }
    snprintf(c->name, sizeof c->name, "%s", name ? name : "coco");
    return c;
}

void eq_coco_destroy(eq_coco **coco_p)
{
    if (!coco_p || !*coco_p) return;
    eq_coco *c = *coco_p;
    free(c->img_id);
    free(c->img_h);
    free(c->img_w);
    free(c->cat_id);
    free(c->anns);
    free(c->dpool);
    free(c->rpool);
    free(c->upool);
    free(c);
    *coco_p = NULL;
}

size_t eq_coco_num_images(const eq_coco *c) { return c->n_img; }
size_t eq_coco_num_categories(const eq_coco *c) { return c->n_cat; }
size_t eq_coco_num_anns(const eq_coco *c) { return c->n_ann; }

eq_status eq_coco_add_image(eq_coco *c, int64_t id, int64_t height, int64_t width, eq_err *err)
{
    if (c->n_img == c->cap_img) {
        /* three parallel arrays share one capacity */
        size_t cap = c->cap_img, cap2 = c->cap_img, cap3 = c->cap_img;
        if (S_GROW(c->img_id, cap, c->n_img + 1, err) || S_GROW(c->img_h, cap2, c->n_img + 1, err) ||
            S_GROW(c->img_w, cap3, c->n_img + 1, err))
            return EQ_ERR_NOMEM;
        c->cap_img = cap; /* all three grew to the same size */
    }
    c->img_id[c->n_img] = id;
    c->img_h[c->n_img] = height;
    c->img_w[c->n_img] = width;
    c->n_img++;
    return EQ_OK;
}

eq_status eq_coco_add_category(eq_coco *c, int64_t id, eq_err *err)
{
    if (S_GROW(c->cat_id, c->cap_cat, c->n_cat + 1, err)) return EQ_ERR_NOMEM;
    c->cat_id[c->n_cat++] = id;
    return EQ_OK;
}

eq_status eq_coco_add_ann(eq_coco *c, const eq_coco_ann *a, eq_err *err)
{
    if (S_GROW(c->anns, c->cap_ann, c->n_ann + 1, err)) return EQ_ERR_NOMEM;
    eq_coco_rec *r = &c->anns[c->n_ann];
    memset(r, 0, sizeof *r);
    r->id = a->id;
    r->image_id = a->image_id;
    r->category_id = a->category_id;
    r->has = a->has;
    r->line = a->line;
    r->col = a->col;
    r->iscrowd = a->iscrowd;
    r->area = a->area;
    r->score = a->score;
    memcpy(r->bbox, a->bbox, sizeof r->bbox);
    r->num_keypoints = a->num_keypoints;
    if (a->has & EQ_COCO_F_KEYPOINTS) {
        if (S_GROW(c->dpool, c->cap_d, c->n_d + a->n_keypoints, err)) return EQ_ERR_NOMEM;
        r->kp_off = c->n_d;
        r->n_kp = a->n_keypoints;
        if (a->n_keypoints) memcpy(c->dpool + c->n_d, a->keypoints, a->n_keypoints * sizeof(double));
        c->n_d += a->n_keypoints;
    }
    r->seg_kind = (a->has & EQ_COCO_F_SEGM) ? (int)a->seg_kind : EQ_COCO_SEG_NONE;
    if (r->seg_kind == EQ_COCO_SEG_POLY) {
        size_t nv = 0;
        for (size_t i = 0; i < a->n_rings; i++) nv += a->ring_len[i];
        if (S_GROW(c->dpool, c->cap_d, c->n_d + nv, err)) return EQ_ERR_NOMEM;
        if (S_GROW(c->rpool, c->cap_r, c->n_r + a->n_rings, err)) return EQ_ERR_NOMEM;
        r->seg_doff = c->n_d;
        r->seg_off = c->n_r;
        r->seg_n = a->n_rings;
        if (nv) memcpy(c->dpool + c->n_d, a->poly, nv * sizeof(double));
        if (a->n_rings) memcpy(c->rpool + c->n_r, a->ring_len, a->n_rings * sizeof(size_t));
        c->n_d += nv;
        c->n_r += a->n_rings;
    } else if (r->seg_kind == EQ_COCO_SEG_COUNTS || r->seg_kind == EQ_COCO_SEG_STRING) {
        if ((uint64_t)a->seg_h * a->seg_w > UINT32_MAX)
            return eq_err_set(err, EQ_ERR_INVALID, "segmentation size %ux%u exceeds 2^32 pixels",
                              a->seg_h, a->seg_w);
        if (S_GROW(c->upool, c->cap_u, c->n_u + a->n_counts, err)) return EQ_ERR_NOMEM;
        r->seg_off = c->n_u;
        r->seg_n = a->n_counts;
        r->seg_h = a->seg_h;
        r->seg_w = a->seg_w;
        if (a->n_counts) memcpy(c->upool + c->n_u, a->counts, a->n_counts * sizeof(uint32_t));
        c->n_u += a->n_counts;
    } else if (r->seg_kind != EQ_COCO_SEG_NONE) {
        return eq_err_set(err, EQ_ERR_INVALID, "unknown segmentation kind %d", r->seg_kind);
    }
    c->n_ann++;
    return EQ_OK;
}

/* "name: result 3 (line 7, column 5): " */
static void s_where(const eq_coco *c, size_t i, const eq_coco_rec *r, char *buf, size_t cap)
{
    const char *what = c->is_res ? "result" : "annotations";
    if (r->line)
        snprintf(buf, cap, "%s: %s[%zu] (line %u, column %u)", c->name, what, i, r->line, r->col);
    else
        snprintf(buf, cap, "%s: %s[%zu] (id %lld)", c->name, what, i, (long long)r->id);
}

static int s_i64_cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Sort and de-duplicate in place; returns the new length. */
static size_t s_unique(int64_t *v, size_t n)
{
    if (n == 0) return 0;
    qsort(v, n, sizeof *v, s_i64_cmp);
    size_t k = 1;
    for (size_t i = 1; i < n; i++)
        if (v[i] != v[k - 1]) v[k++] = v[i];
    return k;
}

/* Index of x in sorted v[n], or -1. */
static long s_find(const int64_t *v, size_t n, int64_t x)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && v[lo] == x ? (long)lo : -1;
}

static const char *s_where_str(const eq_coco *c, size_t i, char *buf, size_t cap)
{
    s_where(c, i, &c->anns[i], buf, cap);
    return buf;
}

eq_status eq_coco_res_begin(eq_coco *res, const eq_coco *gt, eq_coco_res_ctx *x, eq_err *err)
{
    memset(x, 0, sizeof *x);
    res->is_res = 1;
    /* res.dataset['images'] = gt images; categories copied too. */
    res->n_img = 0;
    for (size_t i = 0; i < gt->n_img; i++)
        if (eq_coco_add_image(res, gt->img_id[i], gt->img_h[i], gt->img_w[i], err))
            return EQ_ERR_NOMEM;
    res->n_cat = 0;
    for (size_t i = 0; i < gt->n_cat; i++)
        if (eq_coco_add_category(res, gt->cat_id[i], err)) return EQ_ERR_NOMEM;
    if (res->n_ann == 0)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "%s: the results list is empty (pycocotools fails with IndexError); "
                          "there is nothing to evaluate", res->name);
    x->ids = eq_malloc_array(gt->n_img + 1, sizeof *x->ids);
    if (!x->ids) return eq_err_set(err, EQ_ERR_NOMEM, "out of memory");
    if (gt->n_img) memcpy(x->ids, gt->img_id, gt->n_img * sizeof *x->ids);
    x->nid = s_unique(x->ids, gt->n_img);
    /* the first result picks the branch for all (quirk Q9) */
    const eq_coco_rec *first = &res->anns[0];
    char where[400];
    if (first->has & EQ_COCO_F_CAPTION) {
        s_where(res, 0, first, where, sizeof where);
        return eq_err_set(err, EQ_ERR_UNSUPPORTED, "%s: caption results are not supported", where);
    } else if ((first->has & EQ_COCO_F_BBOX) || (first->bad & S_BAD_BBOX))
        x->branch = S_RES_BOX;
    else if (first->has & EQ_COCO_F_SEGM)
        x->branch = S_RES_MASK;
    else if (first->has & EQ_COCO_F_KEYPOINTS)
        x->branch = S_RES_KPS;
    else {
        s_where(res, 0, first, where, sizeof where);
        return eq_err_set(err, EQ_ERR_INVALID,
                          "%s: the first result has none of 'bbox', 'segmentation', 'keypoints' "
                          "(it decides how all results are read)", where);
    }
    return EQ_OK;
}

void eq_coco_res_step(eq_coco *res, size_t i, eq_coco_res_ctx *x)
{
    eq_coco_rec *r = &res->anns[i];
    char where_buf[400];
/* the entry's name, formatted only on the error paths */
#define S_AT s_where_str(res, i, where_buf, sizeof where_buf)
    if (!x->bad_img && s_find(x->ids, x->nid, r->image_id) < 0) {
        /* loadRes asserts this before anything else: remembered apart */
        x->bad_img = i + 1;
        eq_err_set(&x->img_err, EQ_ERR_INVALID,
                   "%s: image_id %lld is not an image of the ground truth "
                   "(pycocotools: \"Results do not correspond to current coco set\")",
                   S_AT, (long long)r->image_id);
    }
    if (x->have_err) return;
    eq_err *err = &x->err;
    if (x->branch == S_RES_BOX) {
        if (!(r->has & EQ_COCO_F_BBOX) || (r->bad & S_BAD_BBOX)) {
            x->have_err = 1;
            eq_err_set(err, EQ_ERR_INVALID,
                       "%s: 'bbox' must be 4 numbers (the first result has a bbox, so every "
                       "result needs one)", S_AT);
            return;
        }
        const double *b = r->bbox;
        if (!(b[2] >= 0 && b[3] >= 0)) {
            x->have_err = 1;
            eq_err_set(err, EQ_ERR_INVALID, "%s: bbox [%g, %g, %g, %g] has a negative size", S_AT,
                       b[0], b[1], b[2], b[3]);
            return;
        }
        if (r->seg_kind == EQ_COCO_SEG_NONE && !(r->has & EQ_COCO_F_SEGM)) {
            /* the polygon [x1,y1, x1,y2, x2,y2, x2,y1] is made from the
             * box when a segm evaluation needs it */
            r->seg_kind = S_SEG_FROM_BOX;
            r->has |= EQ_COCO_F_SEGM;
        }
        r->area = b[2] * b[3];
        r->iscrowd = 0;
        r->has |= EQ_COCO_F_AREA | EQ_COCO_F_ISCROWD;
        r->bad &= ~(S_BAD_AREA | S_BAD_ISCROWD);
    } else if (x->branch == S_RES_MASK) {
        if (r->seg_kind == S_SEG_INVALID) {
            /* say what is wrong with it, not only what it should be */
            x->have_err = 1;
            eq_err_set(err, EQ_ERR_INVALID, "%s: 'segmentation': %s (the first result is a mask, so every "
                       "result needs a compressed RLE)", S_AT, r->seg_why);
            return;
        }
        if (r->seg_kind != EQ_COCO_SEG_STRING) {
            x->have_err = 1;
            eq_err_set(err, EQ_ERR_INVALID,
                       "%s: 'segmentation' must be a compressed RLE ({\"size\": [h, w], "
                       "\"counts\": \"...\"}) since the first result is a mask", S_AT);
            return;
        }
        eq_rle rle = {r->seg_h, r->seg_w, r->seg_n, S_OFF(res->upool, r->seg_off)};
        eq_err e2;
        if (eq_rle_check(&rle, &e2)) {
            x->have_err = 1;
            eq_err_set(err, EQ_ERR_INVALID, "%s: segmentation: %s", S_AT, e2.msg);
            return;
        }
        r->area = eq_rle_area(&rle);
        if (!(r->has & (EQ_COCO_F_BBOX | EQ_COCO_F_BBOX_EMPTY)) && !(r->bad & S_BAD_BBOX)) {
            eq_rle_to_bbox(&rle, r->bbox);
            r->has |= EQ_COCO_F_BBOX;
        }
        r->iscrowd = 0;
        r->has |= EQ_COCO_F_AREA | EQ_COCO_F_ISCROWD;
        r->bad &= ~(S_BAD_AREA | S_BAD_ISCROWD);
    } else {
        if (!(r->has & EQ_COCO_F_KEYPOINTS) || (r->bad & S_BAD_KEYPOINTS) || r->n_kp < 2) {
            x->have_err = 1;
            eq_err_set(err, EQ_ERR_INVALID, "%s: 'keypoints' must be a list of x, y, v numbers",
                       S_AT);
            return;
        }
        const double *s = S_OFF(res->dpool, r->kp_off);
        double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
        for (size_t j = 0; j < r->n_kp; j += 3) {
            x0 = fmin(x0, s[j]);
            x1 = fmax(x1, s[j]);
        }
        for (size_t j = 1; j < r->n_kp; j += 3) {
            y0 = fmin(y0, s[j]);
            y1 = fmax(y1, s[j]);
        }
        r->area = (x1 - x0) * (y1 - y0);
        r->bbox[0] = x0;
        r->bbox[1] = y0;
        r->bbox[2] = x1 - x0;
        r->bbox[3] = y1 - y0;
        r->has |= EQ_COCO_F_AREA | EQ_COCO_F_BBOX;
        r->bad &= ~(S_BAD_AREA | S_BAD_BBOX);
    }
    r->id = (int64_t)i + 1;
    r->has |= EQ_COCO_F_ID;
#undef S_AT
}

eq_status eq_coco_res_end(eq_coco_res_ctx *x, eq_err *err)
{
    eq_status st = EQ_OK;
    if (x->bad_img) {
        st = x->img_err.code;
        if (err) *err = x->img_err;
    } else if (x->have_err) {
        st = x->err.code;
        if (err) *err = x->err;
    }
    free(x->ids);
    x->ids = NULL;
    return st;
}

eq_status eq_coco_load_res_finish(eq_coco *res, const eq_coco *gt, eq_err *err)
{
    eq_coco_res_ctx x;
    eq_status st = eq_coco_res_begin(res, gt, &x, err);
    if (st) {
        free(x.ids);
        return st;
    }
    for (size_t i = 0; i < res->n_ann; i++) eq_coco_res_step(res, i, &x);
    return eq_coco_res_end(&x, err);
}

/* ---- numpy-compatible helpers ------------------------------------------ */

/* numpy/core/src/umath/loops_utils.h.src, DOUBLE_pairwise_sum. */
static double s_pairwise(const double *a, size_t n)
{
    if (n < 8) {
        double res = 0.;
        for (size_t i = 0; i < n; i++) res += a[i];
        return res;
    } else if (n <= 128) {
        double r[8], res;
        size_t i;
        for (int j = 0; j < 8; j++) r[j] = a[j];
        for (i = 8; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; j++) r[j] += a[i + j];
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i];
        return res;
    } else {
        size_t n2 = n / 2;
        n2 -= n2 % 8;
        return s_pairwise(a, n2) + s_pairwise(a + n2, n - n2);
    }
}

double eq_coco_np_sum(const double *a, size_t n)
{
    /* np.add.reduce starts from the identity 0.0 and feeds the inner loop
     * buffers of at most 8192 elements (NPY_BUFSIZE); each call adds the
     * pairwise sum of its block to the running result. */
    double res = 0.0;
    for (size_t i = 0; i < n; i += 8192) res += s_pairwise(a + i, n - i < 8192 ? n - i : 8192);
    return res;
}

/* ---- evaluation context ------------------------------------------------ */

#define T_ EQ_COCO_T
#define R_ EQ_COCO_R
#define S_NPSPACING1 2.220446049250313e-16 /* np.spacing(1) = 2^-52 */

enum { S_FP = 0, S_TP = 1, S_IGN = 2 };

typedef struct s_bucket {
    uint32_t img, cat;   /* indices into the sorted evaluated ids */
    size_t g0, ng;       /* range in ctx.gt_list */
    size_t d0, nd;       /* range in ctx.dt_list (score-sorted after phase 2) */
    size_t D;            /* kept results: min(nd, max maxDets) */
} s_bucket;

typedef struct s_ctx {
    const eq_coco *gt, *dt;
    eq_coco_iou type;
    size_t I, K, A, M;
    int64_t *imgs, *cats;
    int *maxdets;
    int maxdet;          /* the largest cap */
    double area_rng[4][2];
    double iou_thrs[T_], rec_thrs[R_];
    /* gathered annotations, bucket order; values are rec indices */
    size_t *gt_list, *dt_list, n_gt, n_dt;
    s_bucket *b;
    size_t nb;
    size_t max_ng, max_nd;
    /* per category: its buckets in image order */
    size_t *cat_b0, *cat_bucket; /* cat_b0[K+1] offsets into cat_bucket */
    /* segm: GT image id -> index of its last entry, for image sizes */
    int64_t *img_sorted;
    size_t *img_last, nimg;
    /* results */
    uint8_t *state;      /* [dt_list position][A][T] */
    uint32_t *npos;      /* [bucket][A]: non-ignored GTs */
    double *precision, *recall, *scores;
    /* per-worker scratch and errors */
    int nworkers;
    struct s_scratch *scr;
    eq_err *werr;        /* [n items] for phases that can fail, or NULL */
    int failed;
} s_ctx;

typedef struct s_scratch {
    double *iou;         /* [max_nd * max_ng] */
    size_t *perm;        /* [max_ng] */
    uint8_t *gtig, *crowd, *gtm, *dtig, *dtnz;
    /* segm: the bucket's masks and their boxes, converted on the spot */
    eq_rle *grle, *drle;
    double *gbb, *dbb;
    int nomem;
    size_t err_bucket; /* bucket index + 1 of this worker's first error */
    eq_err err;
} s_scratch;

static const char *s_area_lbl_det[4] = {"all", "small", "medium", "large"};
static const char *s_area_lbl_kps[3] = {"all", "medium", "large"};

/* COCO person keypoint sigmas (cocoeval.py setKpParams), each /10.0. */
static const double s_kp_sigma_x10[17] = {.26, .25, .25, .35, .35, .79, .79, .72, .72,
                                          .62, .62, 1.07, 1.07, .87, .87, .89, .89};
#define S_NKP 17

static void s_linspace(double start, double stop, size_t num, double *out)
{
    double step = (stop - start) / (double)(num - 1);
    for (size_t i = 0; i < num; i++) out[i] = (double)i * step + start;
    out[num - 1] = stop;
}

/* ---- phase 1: gather --------------------------------------------------- */

typedef struct s_gath {
    uint64_t key;  /* img * K + cat of the evaluated annotation */
    uint64_t pos;  /* gathering position (image order, then file order) */
    size_t rec;
} s_gath;

static int s_gath_cmp(const void *a, const void *b)
{
    const s_gath *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

typedef struct s_idpos {
    int64_t id;
    size_t rec;
} s_idpos;

static int s_idpos_cmp(const void *a, const void *b)
{
    const s_idpos *x = a, *y = b;
    if (x->id != y->id) return x->id < y->id ? -1 : 1;
    return x->rec < y->rec ? -1 : x->rec > y->rec;
}

/* Gather the annotations of `c` for the evaluated images and categories,
 * as _prepare does (getAnnIds + loadAnns), bucketed by (image, category).
 * For GT, loadAnns looks ids up in a map that keeps the last annotation of
 * each id (quirk Q15). */
static eq_status s_gather(s_ctx *x, const eq_coco *c, int is_gt, s_gath **out, size_t *nout,
                          eq_err *err)
{
    size_t n = c->n_ann;
    s_gath *g = eq_malloc_array(n + 1, sizeof *g);
    size_t *last = NULL;
    if (!g) return eq_err_set(err, EQ_ERR_NOMEM, "out of memory gathering annotations");
    if (is_gt && n > 0) {
        /* last[i] = index of the last annotation with anns[i].id */
        s_idpos *ip = eq_malloc_array(n, sizeof *ip);
        last = eq_malloc_array(n, sizeof *last);
        if (!ip || !last) {
            free(ip);
            free(last);
            free(g);
            return eq_err_set(err, EQ_ERR_NOMEM, "out of memory gathering annotations");
        }
        for (size_t i = 0; i < n; i++) {
            ip[i].id = c->anns[i].id;
            ip[i].rec = i;
        }
        qsort(ip, n, sizeof *ip, s_idpos_cmp);
        for (size_t i = 0; i < n;) {
            size_t j = i;
            while (j < n && ip[j].id == ip[i].id) j++;
            for (size_t k = i; k < j; k++) last[ip[k].rec] = ip[j - 1].rec;
            i = j;
        }
        free(ip);
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const eq_coco_rec *r = &c->anns[i];
        long ii = s_find(x->imgs, x->I, r->image_id);
        if (ii < 0) continue;
        if (s_find(x->cats, x->K, r->category_id) < 0) continue;
        size_t rec = last ? last[i] : i;
        const eq_coco_rec *e = &c->anns[rec];
        long ei = s_find(x->imgs, x->I, e->image_id), ec = s_find(x->cats, x->K, e->category_id);
        if (ei < 0 || ec < 0) continue; /* bucketed where evaluate never looks */
        g[k].key = (uint64_t)ei * x->K + (uint64_t)ec;
        g[k].pos = (uint64_t)ii * ((uint64_t)n + 1) + i;
        g[k].rec = rec;
        k++;
    }
    free(last);
    qsort(g, k, sizeof *g, s_gath_cmp);
    *out = g;
    *nout = k;
    return EQ_OK;
}

/* ---- field validation -------------------------------------------------- */

static eq_status s_need(const s_ctx *x, const eq_coco *c, size_t rec, uint32_t field,
                        uint32_t badbit, const char *name, eq_err *err)
{
    const eq_coco_rec *r = &c->anns[rec];
    if ((r->has & field) && !(r->bad & badbit)) return EQ_OK;
    char where[400];
    s_where(c, rec, r, where, sizeof where);
    return eq_err_set(err, EQ_ERR_INVALID, "%s: %s '%s', needed for %s evaluation", where,
                      (r->bad & badbit) ? "unusable" : "missing", name, eq_coco_iou_name(x->type));
}

static eq_status s_validate(s_ctx *x, eq_err *err)
{
    eq_status st;
    for (size_t bi = 0; bi < x->nb; bi++) {
        const s_bucket *b = &x->b[bi];
        for (size_t j = 0; j < b->ng; j++) {
            size_t rec = x->gt_list[b->g0 + j];
            if ((st = s_need(x, x->gt, rec, EQ_COCO_F_ISCROWD, S_BAD_ISCROWD, "iscrowd", err)))
                return st;
            if ((st = s_need(x, x->gt, rec, EQ_COCO_F_AREA, S_BAD_AREA, "area", err))) return st;
            if (x->type == EQ_COCO_BBOX &&
                (st = s_need(x, x->gt, rec, EQ_COCO_F_BBOX, S_BAD_BBOX, "bbox", err)))
                return st;
            if (x->type == EQ_COCO_SEGM &&
                (st = s_need(x, x->gt, rec, EQ_COCO_F_SEGM, 0, "segmentation", err)))
                return st;
            if (x->type == EQ_COCO_KEYPOINTS) {
                if ((st = s_need(x, x->gt, rec, EQ_COCO_F_NUM_KEYPOINTS, S_BAD_NUM_KEYPOINTS,
                                 "num_keypoints", err)))
                    return st;
                if (b->nd > 0) {
                    if ((st = s_need(x, x->gt, rec, EQ_COCO_F_BBOX, S_BAD_BBOX, "bbox", err)))
                        return st;
                    if ((st = s_need(x, x->gt, rec, EQ_COCO_F_KEYPOINTS, S_BAD_KEYPOINTS,
                                     "keypoints", err)))
                        return st;
                    const eq_coco_rec *r = &x->gt->anns[rec];
                    if (r->n_kp != 3 * S_NKP) {
                        char where[400];
                        s_where(x->gt, rec, r, where, sizeof where);
                        return eq_err_set(err, EQ_ERR_INVALID,
                                          "%s: 'keypoints' has %zu values, expected %d (17 COCO "
                                          "keypoints)", where, r->n_kp, 3 * S_NKP);
                    }
                }
            }
        }
        for (size_t j = 0; j < b->nd; j++) {
            size_t rec = x->dt_list[b->d0 + j];
            if ((st = s_need(x, x->dt, rec, EQ_COCO_F_SCORE, S_BAD_SCORE, "score", err))) return st;
            if ((st = s_need(x, x->dt, rec, EQ_COCO_F_AREA, S_BAD_AREA, "area", err))) return st;
            if (x->type == EQ_COCO_BBOX &&
                (st = s_need(x, x->dt, rec, EQ_COCO_F_BBOX, S_BAD_BBOX, "bbox", err)))
                return st;
            if (x->type == EQ_COCO_SEGM &&
                (st = s_need(x, x->dt, rec, EQ_COCO_F_SEGM, 0, "segmentation", err)))
                return st;
            if (x->type == EQ_COCO_KEYPOINTS && b->ng > 0) {
                if ((st = s_need(x, x->dt, rec, EQ_COCO_F_KEYPOINTS, S_BAD_KEYPOINTS, "keypoints",
                                 err)))
                    return st;
                const eq_coco_rec *r = &x->dt->anns[rec];
                if (r->n_kp != 3 * S_NKP) {
                    char where[400];
                    s_where(x->dt, rec, r, where, sizeof where);
                    return eq_err_set(err, EQ_ERR_INVALID,
                                      "%s: 'keypoints' has %zu values, expected %d (17 COCO "
                                      "keypoints)", where, r->n_kp, 3 * S_NKP);
                }
            }
        }
    }
    return EQ_OK;
}

/* ---- phase 2: per-bucket score sort ------------------------------------ */

typedef struct s_sortent {
    double negscore;
    size_t pos;
    size_t rec;
} s_sortent;

static int s_sortent_cmp(const void *a, const void *b)
{
    const s_sortent *x = a, *y = b;
    if (x->negscore < y->negscore) return -1;
    if (x->negscore > y->negscore) return 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static void s_phase_sort(void *vctx, size_t bi, int worker)
{
    s_ctx *x = vctx;
    s_bucket *b = &x->b[bi];
    b->D = b->nd < (size_t)x->maxdet ? b->nd : (size_t)x->maxdet;
    if (b->nd < 2) return;
    s_sortent small[128];
    s_sortent *e = b->nd <= 128 ? small : eq_malloc_array(b->nd, sizeof *e);
    if (!e) {
        x->scr[worker].nomem = 1;
        return;
    }
    /* np.argsort(-scores, kind='mergesort'): stable on the negated scores */
    for (size_t j = 0; j < b->nd; j++) {
        e[j].rec = x->dt_list[b->d0 + j];
        e[j].negscore = -x->dt->anns[e[j].rec].score;
        e[j].pos = j;
    }
    qsort(e, b->nd, sizeof *e, s_sortent_cmp);
    for (size_t j = 0; j < b->nd; j++) x->dt_list[b->d0 + j] = e[j].rec;
    if (e != small) free(e);
}

/* ---- phase 3: segmentations to RLE (annToRLE, frPyObjects) ------------- */

/* A given RLE (uncompressed counts or a decoded string), used with its own
 * size as annToRLE does; invalid segmentations report why. */
static eq_status s_to_rle(const eq_coco *c, size_t rec, eq_rle *out, eq_err *err)
{
    const eq_coco_rec *r = &c->anns[rec];
    memset(out, 0, sizeof *out);
    if (r->seg_kind == S_SEG_INVALID)
        return eq_err_set(err, EQ_ERR_INVALID, "segmentation: %s", r->seg_why);
    if (r->seg_kind != EQ_COCO_SEG_COUNTS && r->seg_kind != EQ_COCO_SEG_STRING)
        return eq_err_set(err, EQ_ERR_INVALID, "no segmentation");
    eq_rle rle = {r->seg_h, r->seg_w, r->seg_n, S_OFF(c->upool, r->seg_off)};
    if (eq_rle_check(&rle, err)) return eq_err_prefix(err, "segmentation: ");
    return eq_rle_copy(&rle, out, err);
}

static eq_status s_poly_to_rle(const eq_coco *c, size_t rec, uint32_t h, uint32_t w, eq_rle *out,
                               eq_err *err)
{
    const eq_coco_rec *r = &c->anns[rec];
    const size_t *rl = S_OFF(c->rpool, r->seg_off);
    const double *v = S_OFF(c->dpool, r->seg_doff);
    size_t nr = r->seg_n;
    /* frPyObjects dispatch: the first ring must have more than 4 values */
    if (nr == 0) return eq_err_set(err, EQ_ERR_INVALID, "segmentation: empty polygon list");
    if (rl[0] <= 4)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "segmentation: the first polygon has %zu values; pycocotools needs more "
                          "than 4 (it reads 4 as a box and fails)", rl[0]);
    eq_rle *parts = nr > 1 ? eq_calloc_array(nr, sizeof *parts) : out;
    if (!parts) return eq_err_set(err, EQ_ERR_NOMEM, "out of memory");
    eq_status st = EQ_OK;
    size_t off = 0;
    for (size_t i = 0; i < nr && !st; i++) {
        st = eq_rle_fr_poly(v + off, rl[i] / 2, h, w, &parts[i], err);
        off += rl[i];
    }
    if (nr > 1) {
        if (!st) st = eq_rle_merge(parts, nr, 0, out, err);
        for (size_t i = 0; i < nr; i++) eq_rle_free(&parts[i]);
        free(parts);
    }
    if (st) eq_err_prefix(err, "segmentation: ");
    return st;
}

static eq_status s_convert_one(s_ctx *x, const eq_coco *c, size_t rec, eq_rle *out, double *bb,
                               eq_err *err)
{
    const int64_t *img_sorted = x->img_sorted;
    const size_t *img_last = x->img_last;
    size_t nimg = x->nimg;
    const eq_coco_rec *r = &c->anns[rec];
    eq_status st;
    if (r->seg_kind == EQ_COCO_SEG_POLY || r->seg_kind == S_SEG_FROM_BOX) {
        long ii = s_find(img_sorted, nimg, r->image_id);
        if (ii < 0)
            return eq_err_set(err, EQ_ERR_INVALID,
                              "image %lld is not in the ground truth's images, so its size is unknown",
                              (long long)r->image_id);
        size_t gi = img_last[ii];
        int64_t h = x->gt->img_h[gi], w = x->gt->img_w[gi];
        if (h < 0 || w < 0)
            return eq_err_set(err, EQ_ERR_INVALID,
                              "image %lld has no 'height'/'width', needed to rasterise polygons",
                              (long long)r->image_id);
        if (h > UINT32_MAX || w > UINT32_MAX || (uint64_t)h * (uint64_t)w > UINT32_MAX)
            return eq_err_set(err, EQ_ERR_INVALID, "image %lld: size %lldx%lld is too large",
                              (long long)r->image_id, (long long)h, (long long)w);
        if (r->seg_kind == S_SEG_FROM_BOX) {
            const double *b = r->bbox;
            double x1 = b[0], x2 = b[0] + b[2], y1 = b[1], y2 = b[1] + b[3];
            double poly[8] = {x1, y1, x1, y2, x2, y2, x2, y1};
            st = eq_rle_fr_poly(poly, 4, (uint32_t)h, (uint32_t)w, out, err);
            if (st) eq_err_prefix(err, "segmentation from bbox: ");
        } else
            st = s_poly_to_rle(c, rec, (uint32_t)h, (uint32_t)w, out, err);
    } else {
        st = s_to_rle(c, rec, out, err);
    }
    if (!st) eq_rle_to_bbox(out, bb);
    return st;
}

/* ---- phase 4: IoU and matching (computeIoU/computeOks + evaluateImg) --- */

/* pycocotools reads iscrowd as int(v): computeIoU passes it through a uint8
 * array (so 256 counts as "not crowd"), evaluateImg tests int(v) != 0.
 * Values beyond int64 (which pycocotools would turn into a Python long and
 * then overflow the uint8 cast) are defined here as crowd, without the
 * undefined float-to-integer conversion. */
static int s_crowd_u8(double v)
{
    if (!(fabs(v) < 9.2e18)) return 1;
    return (uint8_t)(int64_t)v != 0;
}

static int s_crowd_int(double v)
{
    if (!(fabs(v) < 9.2e18)) return 1;
    return (int64_t)v != 0;
}

static void s_compute_iou(s_ctx *x, const s_bucket *b, s_scratch *sc, double *iou)
{
    size_t D = b->D, G = b->ng;
    const eq_coco *gt = x->gt, *dt = x->dt;
    if (x->type == EQ_COCO_BBOX) {
        for (size_t d = 0; d < D; d++) {
            const double *db = dt->anns[x->dt_list[b->d0 + d]].bbox;
            for (size_t g = 0; g < G; g++) {
                const eq_coco_rec *gr = &gt->anns[x->gt_list[b->g0 + g]];
                int crowd = s_crowd_u8(gr->iscrowd);
                iou[d * G + g] = eq_bbox_iou(db, gr->bbox, crowd);
            }
        }
    } else if (x->type == EQ_COCO_SEGM) {
        for (size_t d = 0; d < D; d++) {
            for (size_t g = 0; g < G; g++) {
                const eq_coco_rec *gr = &gt->anns[x->gt_list[b->g0 + g]];
                int crowd = s_crowd_u8(gr->iscrowd);
                iou[d * G + g] = eq_rle_iou(&sc->drle[d], &sc->grle[g], crowd, &sc->dbb[4 * d],
                                            &sc->gbb[4 * g]);
            }
        }
    } else {
        /* computeOks: empty when there is no GT or no result */
        double var[S_NKP];
        for (int k = 0; k < S_NKP; k++) {
            double s = s_kp_sigma_x10[k] / 10.0;
            double s2 = s * 2;
            var[k] = s2 * s2;
        }
        for (size_t g = 0; g < G; g++) {
            const eq_coco_rec *gr = &gt->anns[x->gt_list[b->g0 + g]];
            const double *gk = S_OFF(gt->dpool, gr->kp_off);
            int k1 = 0;
            for (int k = 0; k < S_NKP; k++) k1 += gk[3 * k + 2] > 0;
            const double *bb = gr->bbox;
            double x0 = bb[0] - bb[2], x1 = bb[0] + bb[2] * 2;
            double y0 = bb[1] - bb[3], y1 = bb[1] + bb[3] * 2;
            double area_eps = gr->area + S_NPSPACING1;
            for (size_t d = 0; d < D; d++) {
                const double *dk = S_OFF(dt->dpool, dt->anns[x->dt_list[b->d0 + d]].kp_off);
                double ex[S_NKP];
                int ne = 0;
                for (int k = 0; k < S_NKP; k++) {
                    double xd = dk[3 * k], yd = dk[3 * k + 1], dx, dy;
                    if (k1 > 0) {
                        if (!(gk[3 * k + 2] > 0)) continue;
                        dx = xd - gk[3 * k];
                        dy = yd - gk[3 * k + 1];
                    } else {
                        double a1 = x0 - xd, a2 = xd - x1, b1 = y0 - yd, b2 = yd - y1;
                        dx = (a1 > 0 ? a1 : 0) + (a2 > 0 ? a2 : 0);
                        dy = (b1 > 0 ? b1 : 0) + (b2 > 0 ? b2 : 0);
                    }
                    double e = (dx * dx + dy * dy) / var[k] / area_eps / 2;
                    ex[ne++] = exp(-e);
                }
                iou[d * G + g] = eq_coco_np_sum(ex, (size_t)ne) / (double)ne;
            }
        }
    }
}

static void s_phase_match(void *vctx, size_t bi, int worker)
{
    s_ctx *x = vctx;
    const s_bucket *b = &x->b[bi];
    s_scratch *s = &x->scr[worker];
    size_t D = b->D, G = b->ng, A = x->A;
    const eq_coco *gt = x->gt, *dt = x->dt;
    int have_iou = D > 0 && G > 0;
    if (x->type == EQ_COCO_SEGM) {
        /* annToRLE for every gathered GT and result of the bucket (also the
         * results beyond the cap, which pycocotools converts too) */
        size_t ng = 0, nd = 0;
        eq_err e1;
        const eq_coco *c = gt;
        size_t rec = 0;
        eq_status st = EQ_OK;
        for (; ng < G && !st; ng++) {
            rec = x->gt_list[b->g0 + ng];
            st = s_convert_one(x, gt, rec, &s->grle[ng], &s->gbb[4 * ng], &e1);
        }
        for (; nd < b->nd && !st; nd++) {
            c = dt;
            rec = x->dt_list[b->d0 + nd];
            st = s_convert_one(x, dt, rec, &s->drle[nd], &s->dbb[4 * nd], &e1);
        }
        if (!st && have_iou) s_compute_iou(x, b, s, s->iou);
        for (size_t g = 0; g < ng; g++) eq_rle_free(&s->grle[g]);
        for (size_t d = 0; d < nd; d++) eq_rle_free(&s->drle[d]);
        if (st) {
            /* a worker takes indices in increasing order: its first error
             * is its lowest bucket */
            if (!s->err_bucket) {
                char where[400];
                s_where(c, rec, &c->anns[rec], where, sizeof where);
                s->err = e1;
                eq_err_prefix(&s->err, "%s: ", where);
                s->err_bucket = bi + 1;
            }
            return;
        }
    } else if (have_iou)
        s_compute_iou(x, b, s, s->iou);
    for (size_t g = 0; g < G; g++) {
        const eq_coco_rec *gr = &gt->anns[x->gt_list[b->g0 + g]];
        s->crowd[g] = s_crowd_int(gr->iscrowd);
    }
    for (size_t a = 0; a < A; a++) {
        double lo = x->area_rng[a][0], hi = x->area_rng[a][1];
        /* _ignore, then a stable order with non-ignored GTs first */
        uint32_t npos = 0;
        size_t k = 0;
        for (int pass = 0; pass < 2; pass++)
            for (size_t g = 0; g < G; g++) {
                const eq_coco_rec *gr = &gt->anns[x->gt_list[b->g0 + g]];
                int ign = gr->iscrowd != 0;
                if (x->type == EQ_COCO_KEYPOINTS) ign = gr->num_keypoints == 0 || ign;
                ign = ign || gr->area < lo || gr->area > hi;
                if (ign != pass) continue;
                s->perm[k] = g;
                s->gtig[k] = (uint8_t)ign;
                k++;
                npos += !ign;
            }
        x->npos[bi * A + a] = npos;
        memset(s->gtm, 0, T_ * G);
        memset(s->dtig, 0, T_ * D);
        memset(s->dtnz, 0, T_ * D);
        if (have_iou) {
            for (size_t t = 0; t < T_; t++) {
                uint8_t *gtm = s->gtm + t * G;
                double thr = x->iou_thrs[t];
                for (size_t d = 0; d < D; d++) {
                    const double *row = s->iou + d * G;
                    double best = thr < 1 - 1e-10 ? thr : 1 - 1e-10;
                    long m = -1;
                    for (size_t gi = 0; gi < G; gi++) {
                        size_t g = s->perm[gi];
                        if (gtm[gi] && !s->crowd[g]) continue;
                        if (m > -1 && s->gtig[m] == 0 && s->gtig[gi] == 1) break;
                        if (row[g] < best) continue;
                        best = row[g];
                        m = (long)gi;
                    }
                    if (m == -1) continue;
                    const eq_coco_rec *gr = &gt->anns[x->gt_list[b->g0 + s->perm[m]]];
                    s->dtig[t * D + d] = s->gtig[m];
                    s->dtnz[t * D + d] = gr->id != 0; /* quirk Q1: id 0 reads as unmatched */
                    gtm[m] = 1;
                }
            }
        }
        for (size_t d = 0; d < D; d++) {
            double ar = dt->anns[x->dt_list[b->d0 + d]].area;
            int out = ar < lo || ar > hi;
            uint8_t *st = x->state + (b->d0 + d) * A * T_ + a * T_;
            for (size_t t = 0; t < T_; t++) {
                int nz = s->dtnz[t * D + d];
                int ig = s->dtig[t * D + d] || (!nz && out);
                st[t] = ig ? S_IGN : nz ? S_TP : S_FP;
            }
        }
    }
}

/* ---- phase 5: accumulate ----------------------------------------------- */

typedef struct s_accent {
    double negscore;
    size_t seq;   /* concatenation position: image order, then rank */
    size_t pos;   /* dt_list position */
    uint32_t rank;
} s_accent;

static int s_accent_cmp(const void *a, const void *b)
{
    const s_accent *x = a, *y = b;
    if (x->negscore < y->negscore) return -1;
    if (x->negscore > y->negscore) return 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void s_phase_accumulate(void *vctx, size_t k, int worker)
{
    s_ctx *x = vctx;
    size_t b0 = x->cat_b0[k], b1 = x->cat_b0[k + 1];
    if (b0 == b1) return; /* no entry for any image: stays -1 */
    size_t A = x->A, M = x->M, K = x->K, AT = A * T_;
    size_t n = 0;
    for (size_t i = b0; i < b1; i++) n += x->b[x->cat_bucket[i]].D;
    s_accent *e = eq_malloc_array(n + 1, sizeof *e);
    uint32_t *fl = eq_malloc_array(n + 1, sizeof *fl);
    uint8_t *ls = eq_malloc_array(n * AT + 1, 1);
    double *rc = eq_malloc_array(n + 1, sizeof *rc), *pr = eq_malloc_array(n + 1, sizeof *pr);
    if (!e || !fl || !ls || !rc || !pr) {
        x->scr[worker].nomem = 1;
        goto done;
    }
    size_t seq = 0;
    for (size_t i = b0; i < b1; i++) {
        const s_bucket *b = &x->b[x->cat_bucket[i]];
        for (size_t d = 0; d < b->D; d++) {
            e[seq].negscore = -x->dt->anns[x->dt_list[b->d0 + d]].score;
            e[seq].seq = seq;
            e[seq].pos = b->d0 + d;
            e[seq].rank = (uint32_t)d;
            seq++;
        }
    }
    /* One stable sort serves every cap: taking the first m of each image
     * and sorting equals filtering this order by rank < m. */
    qsort(e, n, sizeof *e, s_accent_cmp);
    /* states in sorted order, one contiguous row per (area, threshold) */
    for (size_t i = 0; i < n; i++) {
        const uint8_t *st = x->state + e[i].pos * AT;
        for (size_t j = 0; j < AT; j++) ls[j * n + i] = st[j];
    }
    size_t prev_nd = (size_t)-1;
    for (size_t m = 0; m < M; m++) {
        size_t nd = 0;
        for (size_t i = 0; i < n; i++)
            if (e[i].rank < (uint32_t)x->maxdets[m]) fl[nd++] = (uint32_t)i;
        if (nd == prev_nd) {
            /* the caps are sorted, so the same count means the same list:
             * copy the previous cap's results */
            for (size_t a = 0; a < A; a++)
                for (size_t t = 0; t < T_; t++) {
                    size_t at = ((t * K + k) * A + a) * M + m;
                    x->recall[at] = x->recall[at - 1];
                    for (size_t r = 0; r < R_; r++) {
                        at = (((t * R_ + r) * K + k) * A + a) * M + m;
                        x->precision[at] = x->precision[at - 1];
                        x->scores[at] = x->scores[at - 1];
                    }
                }
            continue;
        }
        prev_nd = nd;
        for (size_t a = 0; a < A; a++) {
            uint64_t npig = 0;
            for (size_t i = b0; i < b1; i++) npig += x->npos[x->cat_bucket[i] * A + a];
            if (npig == 0) continue; /* stays -1 */
            for (size_t t = 0; t < T_; t++) {
                const uint8_t *row = ls + (a * T_ + t) * n;
                double tp = 0, fp = 0;
                for (size_t i = 0; i < nd; i++) {
                    uint8_t st = row[fl[i]];
                    if (st == S_TP)
                        tp += 1;
                    else if (st == S_FP)
                        fp += 1;
                    rc[i] = tp / (double)npig;
                    pr[i] = tp / (fp + tp + S_NPSPACING1);
                }
                x->recall[((t * K + k) * A + a) * M + m] = nd ? rc[nd - 1] : 0;
                for (size_t i = nd; i-- > 1;)
                    if (pr[i] > pr[i - 1]) pr[i - 1] = pr[i];
                /* searchsorted(rc, recThrs, 'left'); the first point past
                 * the end stops the filling (the rest stay 0) */
                size_t i = 0, r = 0;
                for (; r < R_; r++) {
                    while (i < nd && rc[i] < x->rec_thrs[r]) i++;
                    if (i >= nd) break;
                    size_t at = (((t * R_ + r) * K + k) * A + a) * M + m;
                    x->precision[at] = pr[i];
                    x->scores[at] = -e[fl[i]].negscore;
                }
                for (; r < R_; r++) {
                    size_t at = (((t * R_ + r) * K + k) * A + a) * M + m;
                    x->precision[at] = 0;
                    x->scores[at] = 0;
                }
            }
        }
    }
done:
    free(e);
    free(fl);
    free(ls);
    free(rc);
    free(pr);
}

/* ---- phase 6: summarize ------------------------------------------------ */

typedef struct s_statspec {
    int ap;         /* 1: AP, 0: AR */
    double iou;     /* < 0: all thresholds */
    const char *area;
    int maxdets;
} s_statspec;

static double s_summarize(const eq_coco_eval *e, const s_statspec *sp, double *buf)
{
    size_t T = e->T, R = e->R, K = e->K, A = e->A, M = e->M;
    size_t aind[4], na = 0, mind[64], nm = 0;
    for (size_t a = 0; a < A; a++)
        if (strcmp(e->area_lbl[a], sp->area) == 0) aind[na++] = a;
    for (size_t m = 0; m < M && nm < 64; m++)
        if (e->max_dets[m] == sp->maxdets) mind[nm++] = m;
    /* s[:, :, :, aind, mind]: the two index lists broadcast together */
    size_t nj = na == nm ? na : (na == 1 ? nm : (nm == 1 ? na : 0));
    size_t n = 0;
    for (size_t t = 0; t < T; t++) {
        if (sp->iou >= 0 && e->iou_thrs[t] != sp->iou) continue;
        if (sp->ap) {
            for (size_t r = 0; r < R; r++)
                for (size_t k = 0; k < K; k++)
                    for (size_t j = 0; j < nj; j++) {
                        size_t a = aind[na == 1 ? 0 : j], m = mind[nm == 1 ? 0 : j];
                        double v = e->precision[(((t * R + r) * K + k) * A + a) * M + m];
                        if (v > -1) buf[n++] = v;
                    }
        } else {
            for (size_t k = 0; k < K; k++)
                for (size_t j = 0; j < nj; j++) {
                    size_t a = aind[na == 1 ? 0 : j], m = mind[nm == 1 ? 0 : j];
                    double v = e->recall[((t * K + k) * A + a) * M + m];
                    if (v > -1) buf[n++] = v;
                }
        }
    }
    if (n == 0) return -1;
    return eq_coco_np_sum(buf, n) / (double)n;
}

static void s_stat_specs(const eq_coco_eval *e, s_statspec *sp)
{
    if (e->iou_type == EQ_COCO_KEYPOINTS) {
        const s_statspec k[10] = {
            {1, -1, "all", 20},   {1, .5, "all", 20},   {1, .75, "all", 20}, {1, -1, "medium", 20},
            {1, -1, "large", 20}, {0, -1, "all", 20},   {0, .5, "all", 20},  {0, .75, "all", 20},
            {0, -1, "medium", 20}, {0, -1, "large", 20}};
        memcpy(sp, k, sizeof k);
    } else {
        int m0 = e->max_dets[0], m1 = e->max_dets[1], m2 = e->max_dets[2];
        const s_statspec d[12] = {
            {1, -1, "all", 100},  {1, .5, "all", m2},    {1, .75, "all", m2},
            {1, -1, "small", m2}, {1, -1, "medium", m2}, {1, -1, "large", m2},
            {0, -1, "all", m0},   {0, -1, "all", m1},    {0, -1, "all", m2},
            {0, -1, "small", m2}, {0, -1, "medium", m2}, {0, -1, "large", m2}};
        memcpy(sp, d, sizeof d);
    }
}

const char *eq_coco_stat_label(const eq_coco_eval *e, size_t i)
{
    static const char *det[12] = {"AP",  "AP50", "AP75", "APs",  "APm",  "APl",
                                  "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"};
    static const char *kps[10] = {"AP", "AP50", "AP75", "APm", "APl",
                                  "AR", "AR50", "AR75", "ARm", "ARl"};
    if (i >= e->n_stats) return NULL;
    return e->iou_type == EQ_COCO_KEYPOINTS ? kps[i] : det[i];
}

int eq_coco_summary_line(const eq_coco_eval *e, size_t i, char *buf, size_t cap)
{
    if (i >= e->n_stats) return snprintf(buf, cap, "%s", "");
    s_statspec sp[12];
    s_stat_specs(e, sp);
    char iou[32];
    if (sp[i].iou < 0)
        snprintf(iou, sizeof iou, "%0.2f:%0.2f", e->iou_thrs[0], e->iou_thrs[e->T - 1]);
    else
        snprintf(iou, sizeof iou, "%0.2f", sp[i].iou);
    return snprintf(buf, cap, " %-18s %s @[ IoU=%-9s | area=%6s | maxDets=%3d ] = %0.3f",
                    sp[i].ap ? "Average Precision" : "Average Recall", sp[i].ap ? "(AP)" : "(AR)",
                    iou, sp[i].area, sp[i].maxdets, e->stats[i]);
}

/* ---- driver ------------------------------------------------------------ */

void eq_coco_eval_destroy(eq_coco_eval **e_p)
{
    if (!e_p || !*e_p) return;
    eq_coco_eval *e = *e_p;
    free(e->img_ids);
    free(e->cat_ids);
    free(e->max_dets);
    free(e->precision);
    free(e->recall);
    free(e->scores);
    free(e->cat_ap);
    free(e->cat_ap50);
    free(e->cat_ap75);
    free(e->cat_ar);
    free(e);
    *e_p = NULL;
}

static int s_int_cmp(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return x < y ? -1 : x > y;
}

static void s_ctx_free(s_ctx *x)
{
    free(x->gt_list);
    free(x->dt_list);
    free(x->b);
    free(x->cat_b0);
    free(x->cat_bucket);
    free(x->img_sorted);
    free(x->img_last);
    free(x->state);
    free(x->npos);
    if (x->scr)
        for (int w = 0; w < x->nworkers; w++) {
            free(x->scr[w].iou);
            free(x->scr[w].perm);
            free(x->scr[w].gtig);
            free(x->scr[w].crowd);
            free(x->scr[w].gtm);
            free(x->scr[w].dtig);
            free(x->scr[w].dtnz);
            free(x->scr[w].grle);
            free(x->scr[w].drle);
            free(x->scr[w].gbb);
            free(x->scr[w].dbb);
        }
    free(x->scr);
}

static int s_any_nomem(const s_ctx *x)
{
    for (int w = 0; w < x->nworkers; w++)
        if (x->scr[w].nomem) return 1;
    return 0;
}

/* Build buckets from the sorted gathered GT and results. */
static eq_status s_build_buckets(s_ctx *x, const s_gath *g, size_t ng, const s_gath *d, size_t nd,
                                 eq_err *err)
{
    x->gt_list = eq_malloc_array(ng + 1, sizeof *x->gt_list);
    x->dt_list = eq_malloc_array(nd + 1, sizeof *x->dt_list);
    x->b = eq_malloc_array(ng + nd + 1, sizeof *x->b);
    x->cat_b0 = eq_calloc_array(x->K + 2, sizeof *x->cat_b0);
    if (!x->gt_list || !x->dt_list || !x->b || !x->cat_b0)
        return eq_err_set(err, EQ_ERR_NOMEM, "out of memory for buckets");
    size_t i = 0, j = 0;
    x->nb = 0;
    while (i < ng || j < nd) {
        uint64_t key;
        if (i < ng && j < nd)
            key = g[i].key < d[j].key ? g[i].key : d[j].key;
        else
            key = i < ng ? g[i].key : d[j].key;
        s_bucket *b = &x->b[x->nb++];
        b->img = (uint32_t)(key / x->K);
        b->cat = (uint32_t)(key % x->K);
        b->g0 = i;
        while (i < ng && g[i].key == key) {
            x->gt_list[i] = g[i].rec;
            i++;
        }
        b->ng = i - b->g0;
        b->d0 = j;
        while (j < nd && d[j].key == key) {
            x->dt_list[j] = d[j].rec;
            j++;
        }
        b->nd = j - b->d0;
        b->D = 0;
        if (b->ng > x->max_ng) x->max_ng = b->ng;
        if (b->nd > x->max_nd) x->max_nd = b->nd;
        x->cat_b0[b->cat + 1]++;
    }
    x->n_gt = ng;
    x->n_dt = nd;
    for (size_t k = 0; k < x->K; k++) x->cat_b0[k + 1] += x->cat_b0[k];
    x->cat_bucket = eq_malloc_array(x->nb + 1, sizeof *x->cat_bucket);
    size_t *fill = eq_malloc_array(x->K + 1, sizeof *fill);
    if (!x->cat_bucket || !fill) {
        free(fill);
        return eq_err_set(err, EQ_ERR_NOMEM, "out of memory for buckets");
    }
    memcpy(fill, x->cat_b0, x->K * sizeof *fill);
    /* buckets are in (image, category) order, so each category's list is
     * in image order */
    for (size_t bi = 0; bi < x->nb; bi++) x->cat_bucket[fill[x->b[bi].cat]++] = bi;
    free(fill);
    return EQ_OK;
}

eq_status eq_coco_evaluate(const eq_coco *gt, const eq_coco *dt, const eq_coco_params *p,
                           eq_coco_eval **out, eq_err *err)
{
    *out = NULL;
    s_ctx x;
    memset(&x, 0, sizeof x);
    eq_coco_eval *e = calloc(1, sizeof *e);
    eq_pool *pool = NULL;
    s_gath *gg = NULL, *dg = NULL;
    size_t ngg = 0, ndg = 0;
    eq_status st = EQ_OK;
    double t0 = eq_clock_sec();
    if (!e) return eq_err_set(err, EQ_ERR_NOMEM, "out of memory");
    x.gt = gt;
    x.dt = dt;
    x.type = p->iou_type;
    e->iou_type = p->iou_type;
    if (!eq_coco_iou_name(p->iou_type)) {
        st = eq_err_set(err, EQ_ERR_INVALID, "unknown iou type %d", (int)p->iou_type);
        goto fail;
    }
    /* parameters (Params.setDetParams / setKpParams) */
    s_linspace(0.5, 0.95, T_, x.iou_thrs);
    s_linspace(0.0, 1.00, R_, x.rec_thrs);
    memcpy(e->iou_thrs, x.iou_thrs, sizeof x.iou_thrs);
    memcpy(e->rec_thrs, x.rec_thrs, sizeof x.rec_thrs);
    if (p->iou_type == EQ_COCO_KEYPOINTS) {
        x.A = 3;
        const double rng[3][2] = {{0, 1e10}, {1024, 9216}, {9216, 1e10}};
        memcpy(x.area_rng, rng, sizeof rng);
        for (int a = 0; a < 3; a++) e->area_lbl[a] = s_area_lbl_kps[a];
    } else {
        x.A = 4;
        const double rng[4][2] = {{0, 1e10}, {0, 1024}, {1024, 9216}, {9216, 1e10}};
        memcpy(x.area_rng, rng, sizeof rng);
        for (int a = 0; a < 4; a++) e->area_lbl[a] = s_area_lbl_det[a];
    }
    memcpy(e->area_rng, x.area_rng, sizeof x.area_rng);
    static const int det_md[3] = {1, 10, 100}, kps_md[1] = {20};
    const int *md = p->max_dets;
    size_t nmd = p->n_max_dets;
    if (!md) {
        md = p->iou_type == EQ_COCO_KEYPOINTS ? kps_md : det_md;
        nmd = p->iou_type == EQ_COCO_KEYPOINTS ? 1 : 3;
    }
    if (nmd == 0 || nmd > 64) {
        st = eq_err_set(err, EQ_ERR_INVALID, "max dets: give between 1 and 64 values");
        goto fail;
    }
    if (p->iou_type != EQ_COCO_KEYPOINTS && nmd < 3) {
        st = eq_err_set(err, EQ_ERR_INVALID,
                        "max dets: bbox/segm summaries use the first three caps; %zu given", nmd);
        goto fail;
    }
    e->max_dets = eq_malloc_array(nmd, sizeof *e->max_dets);
    if (!e->max_dets) goto nomem;
    for (size_t i = 0; i < nmd; i++) {
        if (md[i] < 0) {
            st = eq_err_set(err, EQ_ERR_INVALID, "max dets: %d is negative", md[i]);
            goto fail;
        }
        e->max_dets[i] = md[i];
    }
    qsort(e->max_dets, nmd, sizeof *e->max_dets, s_int_cmp);
    x.maxdets = e->max_dets;
    x.M = nmd;
    x.maxdet = e->max_dets[nmd - 1];
    /* image and category ids: np.unique */
    size_t ni = p->img_ids ? p->n_img_ids : gt->n_img;
    size_t nk = p->cat_ids ? p->n_cat_ids : gt->n_cat;
    e->img_ids = eq_malloc_array(ni + 1, sizeof *e->img_ids);
    e->cat_ids = eq_malloc_array(nk + 1, sizeof *e->cat_ids);
    if (!e->img_ids || !e->cat_ids) goto nomem;
    if (ni) memcpy(e->img_ids, p->img_ids ? p->img_ids : gt->img_id, ni * sizeof(int64_t));
    if (nk) memcpy(e->cat_ids, p->cat_ids ? p->cat_ids : gt->cat_id, nk * sizeof(int64_t));
    x.I = e->n_img_ids = s_unique(e->img_ids, ni);
    x.K = s_unique(e->cat_ids, nk);
    x.imgs = e->img_ids;
    x.cats = e->cat_ids;
    if (x.I > UINT32_MAX || x.K > UINT32_MAX) {
        st = eq_err_set(err, EQ_ERR_LIMIT, "too many images or categories");
        goto fail;
    }
    e->T = T_;
    e->R = R_;
    e->K = x.K;
    e->A = x.A;
    e->M = x.M;

    /* threads */
    int nthreads = p->threads > 0 ? p->threads : eq_cpu_count();
    if (nthreads > 1) {
        pool = eq_pool_new(nthreads, err);
        if (!pool) {
            st = err ? err->code : EQ_ERR_NOMEM;
            goto fail;
        }
    }
    x.nworkers = pool ? eq_pool_size(pool) : 1;

    /* 1. gather */
    if ((st = s_gather(&x, gt, 1, &gg, &ngg, err))) goto fail;
    if ((st = s_gather(&x, dt, 0, &dg, &ndg, err))) goto fail;
    if ((st = s_build_buckets(&x, gg, ngg, dg, ndg, err))) goto fail;
    free(gg);
    free(dg);
    gg = dg = NULL;
    if ((st = s_validate(&x, err))) goto fail;
    x.scr = calloc((size_t)x.nworkers, sizeof *x.scr);
    if (!x.scr) goto nomem;
    for (int w = 0; w < x.nworkers; w++) {
        s_scratch *s = &x.scr[w];
        size_t D = x.max_nd < (size_t)x.maxdet ? x.max_nd : (size_t)x.maxdet;
        s->iou = eq_malloc_array(D * x.max_ng + 1, sizeof *s->iou);
        s->perm = eq_malloc_array(x.max_ng + 1, sizeof *s->perm);
        s->gtig = eq_malloc_array(x.max_ng + 1, 1);
        s->crowd = eq_malloc_array(x.max_ng + 1, 1);
        s->gtm = eq_malloc_array(T_ * x.max_ng + 1, 1);
        s->dtig = eq_malloc_array(T_ * D + 1, 1);
        s->dtnz = eq_malloc_array(T_ * D + 1, 1);
        if (!s->iou || !s->perm || !s->gtig || !s->crowd || !s->gtm || !s->dtig || !s->dtnz)
            goto nomem;
    }
    /* 2. sort results per bucket */
    eq_pool_for(pool, x.nb, s_phase_sort, &x);
    if (s_any_nomem(&x)) goto nomem;
    /* 3. segm: image sizes by id (the dict keeps the last entry of an id);
     * the masks themselves are made per bucket in phase 4 */
    if (x.type == EQ_COCO_SEGM) {
        x.img_sorted = eq_malloc_array(gt->n_img + 1, sizeof *x.img_sorted);
        x.img_last = eq_malloc_array(gt->n_img + 1, sizeof *x.img_last);
        s_idpos *ip = eq_malloc_array(gt->n_img + 1, sizeof *ip);
        if (!x.img_sorted || !x.img_last || !ip) {
            free(ip);
            goto nomem;
        }
        for (size_t i = 0; i < gt->n_img; i++) {
            ip[i].id = gt->img_id[i];
            ip[i].rec = i;
        }
        qsort(ip, gt->n_img, sizeof *ip, s_idpos_cmp);
        size_t nu = 0;
        for (size_t i = 0; i < gt->n_img; i++) {
            if (nu && x.img_sorted[nu - 1] == ip[i].id)
                x.img_last[nu - 1] = ip[i].rec;
            else {
                x.img_sorted[nu] = ip[i].id;
                x.img_last[nu] = ip[i].rec;
                nu++;
            }
        }
        x.nimg = nu;
        free(ip);
        for (int w = 0; w < x.nworkers; w++) {
            s_scratch *sc = &x.scr[w];
            sc->grle = eq_calloc_array(x.max_ng + 1, sizeof *sc->grle);
            sc->drle = eq_calloc_array(x.max_nd + 1, sizeof *sc->drle);
            sc->gbb = eq_malloc_array(4 * x.max_ng + 1, sizeof *sc->gbb);
            sc->dbb = eq_malloc_array(4 * x.max_nd + 1, sizeof *sc->dbb);
            if (!sc->grle || !sc->drle || !sc->gbb || !sc->dbb) goto nomem;
        }
    }
    e->t_prepare = eq_clock_sec() - t0;
    t0 = eq_clock_sec();
    /* 4. match */
    x.state = eq_malloc_array(x.n_dt * x.A * T_ + 1, 1);
    x.npos = eq_calloc_array(x.nb * x.A + 1, sizeof *x.npos);
    if (!x.state || !x.npos) goto nomem;
    eq_pool_for(pool, x.nb, s_phase_match, &x);
    {
        /* the error of the lowest bucket, whichever worker met it */
        int wbest = -1;
        for (int w = 0; w < x.nworkers; w++)
            if (x.scr[w].err_bucket &&
                (wbest < 0 || x.scr[w].err_bucket < x.scr[wbest].err_bucket))
                wbest = w;
        if (wbest >= 0) {
            st = x.scr[wbest].err.code ? x.scr[wbest].err.code : EQ_ERR_INVALID;
            if (err) *err = x.scr[wbest].err;
            goto fail;
        }
    }
    e->t_evaluate = eq_clock_sec() - t0;
    t0 = eq_clock_sec();
    /* 5. accumulate */
    size_t np = T_ * R_ * x.K * x.A * x.M, nr = T_ * x.K * x.A * x.M;
    e->precision = eq_malloc_array(np + 1, sizeof *e->precision);
    e->scores = eq_malloc_array(np + 1, sizeof *e->scores);
    e->recall = eq_malloc_array(nr + 1, sizeof *e->recall);
    if (!e->precision || !e->scores || !e->recall) goto nomem;
    for (size_t i = 0; i < np; i++) e->precision[i] = e->scores[i] = -1;
    for (size_t i = 0; i < nr; i++) e->recall[i] = -1;
    x.precision = e->precision;
    x.recall = e->recall;
    x.scores = e->scores;
    eq_pool_for(pool, x.K, s_phase_accumulate, &x);
    if (s_any_nomem(&x)) goto nomem;
    e->t_accumulate = eq_clock_sec() - t0;
    /* 6. summarize */
    {
        size_t nbuf = T_ * R_ * x.K * x.M + 1;
        double *buf = eq_malloc_array(nbuf, sizeof *buf);
        e->cat_ap = eq_malloc_array(x.K + 1, sizeof(double));
        e->cat_ap50 = eq_malloc_array(x.K + 1, sizeof(double));
        e->cat_ap75 = eq_malloc_array(x.K + 1, sizeof(double));
        e->cat_ar = eq_malloc_array(x.K + 1, sizeof(double));
        if (!buf || !e->cat_ap || !e->cat_ap50 || !e->cat_ap75 || !e->cat_ar) {
            free(buf);
            goto nomem;
        }
        s_statspec sp[12];
        e->n_stats = x.type == EQ_COCO_KEYPOINTS ? 10 : 12;
        s_stat_specs(e, sp);
        for (size_t i = 0; i < e->n_stats; i++) e->stats[i] = s_summarize(e, &sp[i], buf);
        /* per category: area all, the last cap */
        size_t m = x.M - 1;
        for (size_t k = 0; k < x.K; k++) {
            double thr[3] = {-1, .5, .75}, *dst[3] = {e->cat_ap, e->cat_ap50, e->cat_ap75};
            for (int q = 0; q < 3; q++) {
                size_t n = 0;
                for (size_t t = 0; t < T_; t++) {
                    if (thr[q] >= 0 && x.iou_thrs[t] != thr[q]) continue;
                    for (size_t r = 0; r < R_; r++) {
                        double v = e->precision[(((t * R_ + r) * x.K + k) * x.A + 0) * x.M + m];
                        if (v > -1) buf[n++] = v;
                    }
                }
                dst[q][k] = n ? eq_coco_np_sum(buf, n) / (double)n : -1;
            }
            size_t n = 0;
            for (size_t t = 0; t < T_; t++) {
                double v = e->recall[((t * x.K + k) * x.A + 0) * x.M + m];
                if (v > -1) buf[n++] = v;
            }
            e->cat_ar[k] = n ? eq_coco_np_sum(buf, n) / (double)n : -1;
        }
        free(buf);
    }
    eq_pool_destroy(&pool);
    s_ctx_free(&x);
    *out = e;
    return EQ_OK;
nomem:
    st = eq_err_set(err, EQ_ERR_NOMEM, "out of memory during COCO evaluation");
fail:
    free(gg);
    free(dg);
    eq_pool_destroy(&pool);
    s_ctx_free(&x);
    eq_coco_eval_destroy(&e);
    return st;
}
