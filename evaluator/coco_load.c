/*
 * evaluator/coco_load.c -- COCO ground truth and result files (JSON) into
 * eq_coco datasets, with pycocotools' reading rules (COCOEVAL.md §1, §2).
 *
 * Loading is lenient where pycocotools is: a field with an unusable type
 * (say a string 'area') is only an error when the evaluation needs it, and
 * then the message names the entry and its line.  Required everywhere:
 * integer ids (id, image_id, category_id; 3.0 counts as 3).
 */
#include "evaluator/coco_internal.h"
#include "evaluator/mask.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct s_buf {
    double *v;
    size_t nv, capv;
    size_t *rl;
    size_t nrl, caprl;
    uint32_t *u;
    size_t nu, capu;
    double *kp;
    size_t nkp, capkp;
} s_buf;

static void s_buf_free(s_buf *b)
{
    free(b->v);
    free(b->rl);
    free(b->u);
    free(b->kp);
}

#define S_GROW(arr, cap, need, err) eq_coco_grow((void **)&(arr), &(cap), (need), sizeof *(arr), err)

static int s_get_id(const eq_json *v, int64_t *out)
{
    if (eq_json_typeof(v) != EQ_JSON_NUMBER) return 0;
    if (eq_json_int(v, out)) return 1;
    double d = eq_json_num(v);
    if (!(d == floor(d)) || !(fabs(d) < 9.2e18)) return 0;
    *out = (int64_t)d;
    return 1;
}

static int s_is_num(const eq_json *v) { return eq_json_typeof(v) == EQ_JSON_NUMBER; }

/* pycocotools accepts Python bools where numbers are expected */
static int s_get_numlike(const eq_json *v, double *out)
{
    eq_json_type t = eq_json_typeof(v);
    if (t == EQ_JSON_NUMBER) {
        *out = eq_json_num(v);
        return 1;
    }
    if (t == EQ_JSON_TRUE || t == EQ_JSON_FALSE) {
        *out = t == EQ_JSON_TRUE;
        return 1;
    }
    return 0;
}

static eq_status s_fail(const char *name, const char *what, size_t i, const eq_json *v,
                        eq_err *err, const char *fmt, const char *field)
{
    char msg[256];
    snprintf(msg, sizeof msg, fmt, field);
    return eq_err_set(err, EQ_ERR_INVALID, "%s: %s[%zu] (line %u, column %u): %s", name, what, i,
                      eq_json_line(v), eq_json_col(v), msg);
}

/* Segmentation of an annotation or result (frPyObjects dispatch is done
 * when it is rasterised; here only shapes and types are recorded). */
static eq_status s_parse_seg(const eq_json *sv, eq_coco_ann *a, const char **why, s_buf *b,
                             eq_err *err)
{
    eq_json_type t = eq_json_typeof(sv);
    a->has |= EQ_COCO_F_SEGM;
    if (t == EQ_JSON_ARRAY) {
        size_t n = eq_json_len(sv);
        b->nv = b->nrl = 0;
        if (n > 0 && eq_json_typeof(eq_json_at(sv, 0)) == EQ_JSON_OBJECT) {
            *why = "a list of RLE objects is not supported";
            return EQ_OK;
        }
        for (size_t i = 0; i < n; i++) {
            const eq_json *ring = eq_json_at(sv, i);
            if (eq_json_typeof(ring) != EQ_JSON_ARRAY) {
                *why = "a polygon list must hold lists of numbers";
                return EQ_OK;
            }
            size_t m = eq_json_len(ring);
            if (S_GROW(b->v, b->capv, b->nv + m, err)) return EQ_ERR_NOMEM;
            if (S_GROW(b->rl, b->caprl, b->nrl + 1, err)) return EQ_ERR_NOMEM;
            for (size_t j = 0; j < m; j++) {
                const eq_json *c = eq_json_at(ring, j);
                if (!s_is_num(c)) {
                    *why = "a polygon holds a value that is not a number";
                    return EQ_OK;
                }
                b->v[b->nv++] = eq_json_num(c);
            }
            b->rl[b->nrl++] = m;
        }
        a->seg_kind = EQ_COCO_SEG_POLY;
        a->poly = b->v;
        a->ring_len = b->rl;
        a->n_rings = b->nrl;
        return EQ_OK;
    }
    if (t != EQ_JSON_OBJECT) {
        *why = "must be a polygon list or an RLE object";
        return EQ_OK;
    }
    const eq_json *size = eq_json_get(sv, "size"), *counts = eq_json_get(sv, "counts");
    int64_t h, w;
    if (!size || !counts) {
        *why = "an RLE object needs 'size' and 'counts'";
        return EQ_OK;
    }
    if (eq_json_typeof(size) != EQ_JSON_ARRAY || eq_json_len(size) != 2 ||
        !s_get_id(eq_json_at(size, 0), &h) || !s_get_id(eq_json_at(size, 1), &w) || h < 0 ||
        w < 0 || h > UINT32_MAX || w > UINT32_MAX || (uint64_t)h * (uint64_t)w > UINT32_MAX) {
        *why = "an RLE 'size' must be [height, width], non-negative, under 2^32 pixels";
        return EQ_OK;
    }
    a->seg_h = (uint32_t)h;
    a->seg_w = (uint32_t)w;
    if (eq_json_typeof(counts) == EQ_JSON_ARRAY) {
        size_t n = eq_json_len(counts);
        if (S_GROW(b->u, b->capu, n + 1, err)) return EQ_ERR_NOMEM;
        for (size_t i = 0; i < n; i++) {
            int64_t c;
            if (!s_get_id(eq_json_at(counts, i), &c) || c < 0 || c > UINT32_MAX) {
                *why = "RLE 'counts' must be non-negative integers below 2^32";
                return EQ_OK;
            }
            b->u[i] = (uint32_t)c;
        }
        a->seg_kind = EQ_COCO_SEG_COUNTS;
        a->counts = b->u;
        a->n_counts = n;
        return EQ_OK;
    }
    size_t len;
    const char *s = eq_json_str(counts, &len);
    if (!s) {
        *why = "RLE 'counts' must be a list or a compressed string";
        return EQ_OK;
    }
    eq_rle r;
    eq_err e2;
    if (eq_rle_fr_string(s, len, (uint32_t)h, (uint32_t)w, &r, &e2)) {
        if (e2.code == EQ_ERR_NOMEM) return eq_err_set(err, EQ_ERR_NOMEM, "%s", e2.msg);
        *why = "the compressed RLE 'counts' string is malformed";
        return EQ_OK;
    }
    if (S_GROW(b->u, b->capu, r.m + 1, err)) {
        eq_rle_free(&r);
        return EQ_ERR_NOMEM;
    }
    if (r.m) memcpy(b->u, r.cnts, r.m * sizeof *b->u);
    a->seg_kind = EQ_COCO_SEG_STRING;
    a->counts = b->u;
    a->n_counts = r.m;
    eq_rle_free(&r);
    return EQ_OK;
}

/* One annotation/result object into *a; *bad gets S_BAD_* bits. */
static eq_status s_parse_ann(const eq_json *o, const char *name, const char *what, size_t idx,
                             eq_coco_ann *a, uint32_t *bad, const char **why, s_buf *b, eq_err *err)
{
    memset(a, 0, sizeof *a);
    *bad = 0;
    *why = NULL;
    a->line = eq_json_line(o);
    a->col = eq_json_col(o);
    if (eq_json_typeof(o) != EQ_JSON_OBJECT)
        return s_fail(name, what, idx, o, err, "must be an object, not %s",
                      eq_json_type_name(eq_json_typeof(o)));
    int have_img = 0, have_cat = 0;
    size_t n = eq_json_len(o);
    const eq_json *seg = NULL;
    /* members in order, so a repeated key keeps its last value */
    for (size_t i = 0; i < n; i++) {
        size_t kl;
        const char *k = eq_json_key_at(o, i, &kl);
        const eq_json *v = eq_json_at(o, i);
        double d;
        if (strcmp(k, "id") == 0) {
            if (!s_get_id(v, &a->id))
                return s_fail(name, what, idx, v, err, "'%s' must be an integer", "id");
            a->has |= EQ_COCO_F_ID;
        } else if (strcmp(k, "image_id") == 0) {
            if (!s_get_id(v, &a->image_id))
                return s_fail(name, what, idx, v, err, "'%s' must be an integer", "image_id");
            have_img = 1;
        } else if (strcmp(k, "category_id") == 0) {
            if (!s_get_id(v, &a->category_id))
                return s_fail(name, what, idx, v, err, "'%s' must be an integer", "category_id");
            have_cat = 1;
        } else if (strcmp(k, "bbox") == 0) {
            a->has &= ~(EQ_COCO_F_BBOX | EQ_COCO_F_BBOX_EMPTY);
            *bad &= ~S_BAD_BBOX;
            if (eq_json_typeof(v) == EQ_JSON_ARRAY && eq_json_len(v) == 0)
                a->has |= EQ_COCO_F_BBOX_EMPTY;
            else if (eq_json_typeof(v) == EQ_JSON_ARRAY && eq_json_len(v) == 4 &&
                     s_is_num(eq_json_at(v, 0)) && s_is_num(eq_json_at(v, 1)) &&
                     s_is_num(eq_json_at(v, 2)) && s_is_num(eq_json_at(v, 3))) {
                for (int j = 0; j < 4; j++) a->bbox[j] = eq_json_num(eq_json_at(v, (size_t)j));
                a->has |= EQ_COCO_F_BBOX;
            } else
                *bad |= S_BAD_BBOX;
        } else if (strcmp(k, "area") == 0) {
            if (s_get_numlike(v, &d)) {
                a->area = d;
                a->has |= EQ_COCO_F_AREA;
                *bad &= ~S_BAD_AREA;
            } else {
                a->has &= ~EQ_COCO_F_AREA;
                *bad |= S_BAD_AREA;
            }
        } else if (strcmp(k, "iscrowd") == 0) {
            if (s_get_numlike(v, &d)) {
                a->iscrowd = d;
                a->has |= EQ_COCO_F_ISCROWD;
                *bad &= ~S_BAD_ISCROWD;
            } else {
                a->has &= ~EQ_COCO_F_ISCROWD;
                *bad |= S_BAD_ISCROWD;
            }
        } else if (strcmp(k, "score") == 0) {
            if (s_get_numlike(v, &d)) {
                a->score = d;
                a->has |= EQ_COCO_F_SCORE;
                *bad &= ~S_BAD_SCORE;
            } else {
                a->has &= ~EQ_COCO_F_SCORE;
                *bad |= S_BAD_SCORE;
            }
        } else if (strcmp(k, "num_keypoints") == 0) {
            if (s_get_numlike(v, &d)) {
                a->num_keypoints = d == 0 ? 0 : (d == floor(d) && fabs(d) < 9e18 ? (int64_t)d : 1);
                a->has |= EQ_COCO_F_NUM_KEYPOINTS;
                *bad &= ~S_BAD_NUM_KEYPOINTS;
            } else {
                a->has &= ~EQ_COCO_F_NUM_KEYPOINTS;
                *bad |= S_BAD_NUM_KEYPOINTS;
            }
        } else if (strcmp(k, "keypoints") == 0) {
            a->has &= ~EQ_COCO_F_KEYPOINTS;
            *bad &= ~S_BAD_KEYPOINTS;
            size_t m = eq_json_len(v);
            int ok = eq_json_typeof(v) == EQ_JSON_ARRAY;
            if (ok && S_GROW(b->kp, b->capkp, m + 1, err)) return EQ_ERR_NOMEM;
            for (size_t j = 0; ok && j < m; j++) {
                const eq_json *c = eq_json_at(v, j);
                if (!s_is_num(c))
                    ok = 0;
                else
                    b->kp[j] = eq_json_num(c);
            }
            if (ok) {
                a->has |= EQ_COCO_F_KEYPOINTS;
                a->keypoints = b->kp;
                a->n_keypoints = m;
            } else
                *bad |= S_BAD_KEYPOINTS;
        } else if (strcmp(k, "segmentation") == 0) {
            seg = v;
        } else if (strcmp(k, "caption") == 0) {
            a->has |= EQ_COCO_F_CAPTION;
        }
    }
    if (!have_img)
        return s_fail(name, what, idx, o, err, "missing '%s'", "image_id");
    if (!have_cat)
        return s_fail(name, what, idx, o, err, "missing '%s'", "category_id");
    if (seg) {
        eq_status st = s_parse_seg(seg, a, why, b, err);
        if (st) return st;
    }
    return EQ_OK;
}

static eq_status s_add_parsed(eq_coco *c, const eq_coco_ann *a, uint32_t bad, const char *why,
                              eq_err *err)
{
    eq_coco_ann tmp = *a;
    if (why) tmp.seg_kind = EQ_COCO_SEG_NONE;
    eq_status st = eq_coco_add_ann(c, &tmp, err);
    if (st) return st;
    eq_coco_rec *r = &c->anns[c->n_ann - 1];
    r->bad = bad;
    if (why) {
        r->seg_kind = S_SEG_INVALID;
        r->seg_why = why;
    }
    return EQ_OK;
}

eq_status eq_coco_load_gt_json(const eq_json *root, const char *name, eq_coco **out, eq_err *err)
{
    *out = NULL;
    if (!name) name = "ground truth";
    if (eq_json_typeof(root) != EQ_JSON_OBJECT)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: the ground truth must be a JSON object, not %s",
                          name, eq_json_type_name(eq_json_typeof(root)));
    eq_coco *c = eq_coco_new(name, err);
    if (!c) return EQ_ERR_NOMEM;
    eq_status st = EQ_OK;
    s_buf b;
    memset(&b, 0, sizeof b);
    const eq_json *imgs = eq_json_get(root, "images"), *cats = eq_json_get(root, "categories");
    const eq_json *anns = eq_json_get(root, "annotations");
    const char *lists[3] = {"images", "categories", "annotations"};
    const eq_json *lv[3] = {imgs, cats, anns};
    for (int i = 0; i < 3; i++)
        if (lv[i] && eq_json_typeof(lv[i]) != EQ_JSON_ARRAY) {
            st = eq_err_set(err, EQ_ERR_INVALID, "%s: line %u, column %u: '%s' must be a list",
                            name, eq_json_line(lv[i]), eq_json_col(lv[i]), lists[i]);
            goto done;
        }
    for (size_t i = 0; i < eq_json_len(imgs); i++) {
        const eq_json *o = eq_json_at(imgs, i), *v;
        int64_t id, h = -1, w = -1;
        if (eq_json_typeof(o) != EQ_JSON_OBJECT) {
            st = s_fail(name, "images", i, o, err, "must be an object, not %s",
                        eq_json_type_name(eq_json_typeof(o)));
            goto done;
        }
        if (!s_get_id(eq_json_get(o, "id"), &id)) {
            st = s_fail(name, "images", i, o, err, "'%s' must be an integer", "id");
            goto done;
        }
        if ((v = eq_json_get(o, "height")) && (!s_get_id(v, &h) || h < 0)) {
            st = s_fail(name, "images", i, v, err, "'%s' must be a non-negative integer", "height");
            goto done;
        }
        if ((v = eq_json_get(o, "width")) && (!s_get_id(v, &w) || w < 0)) {
            st = s_fail(name, "images", i, v, err, "'%s' must be a non-negative integer", "width");
            goto done;
        }
        if ((st = eq_coco_add_image(c, id, h, w, err))) goto done;
    }
    for (size_t i = 0; i < eq_json_len(cats); i++) {
        const eq_json *o = eq_json_at(cats, i);
        int64_t id;
        if (eq_json_typeof(o) != EQ_JSON_OBJECT || !s_get_id(eq_json_get(o, "id"), &id)) {
            st = s_fail(name, "categories", i, o, err, "must be an object with an integer '%s'",
                        "id");
            goto done;
        }
        if ((st = eq_coco_add_category(c, id, err))) goto done;
    }
    for (size_t i = 0; i < eq_json_len(anns); i++) {
        const eq_json *o = eq_json_at(anns, i);
        eq_coco_ann a;
        uint32_t bad;
        const char *why;
        if ((st = s_parse_ann(o, name, "annotations", i, &a, &bad, &why, &b, err))) goto done;
        if (!(a.has & EQ_COCO_F_ID)) {
            st = s_fail(name, "annotations", i, o, err, "missing '%s'", "id");
            goto done;
        }
        if ((st = s_add_parsed(c, &a, bad, why, err))) goto done;
    }
done:
    s_buf_free(&b);
    if (st)
        eq_coco_destroy(&c);
    else
        *out = c;
    return st;
}

eq_status eq_coco_load_res_json(const eq_coco *gt, const eq_json *root, const char *name,
                                eq_coco **out, eq_err *err)
{
    *out = NULL;
    if (!name) name = "results";
    if (eq_json_typeof(root) != EQ_JSON_ARRAY)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: results must be a JSON list, not %s", name,
                          eq_json_type_name(eq_json_typeof(root)));
    eq_coco *c = eq_coco_new(name, err);
    if (!c) return EQ_ERR_NOMEM;
    eq_status st = EQ_OK;
    s_buf b;
    memset(&b, 0, sizeof b);
    size_t n = eq_json_len(root);
    if (n && S_GROW(c->anns, c->cap_ann, n, err)) {
        st = EQ_ERR_NOMEM;
        goto done;
    }
    eq_coco_res_ctx x;
    memset(&x, 0, sizeof x);
    for (size_t i = 0; i < n; i++) {
        const eq_json *o = eq_json_at(root, i);
        eq_coco_ann a;
        uint32_t bad;
        const char *why;
        if ((st = s_parse_ann(o, name, "result", i, &a, &bad, &why, &b, err))) goto done;
        if ((st = s_add_parsed(c, &a, bad, why, err))) goto done;
        /* loadRes's work on this result while it is in the cache */
        if (i == 0 && (st = eq_coco_res_begin(c, gt, &x, err))) goto done;
        eq_coco_res_step(c, i, &x);
    }
    if (n == 0)
        st = eq_coco_load_res_finish(c, gt, err);
    else
        st = eq_coco_res_end(&x, err);
done:
    free(x.ids);
    s_buf_free(&b);
    if (st)
        eq_coco_destroy(&c);
    else
        *out = c;
    return st;
}

eq_status eq_coco_load_gt(const char *path, eq_coco **out, eq_err *err)
{
    *out = NULL;
    eq_json_doc *doc = eq_json_parse_file(path, NULL, err);
    if (!doc) return err ? err->code : EQ_ERR_PARSE;
    eq_status st = eq_coco_load_gt_json(eq_json_root(doc), path, out, err);
    eq_json_doc_destroy(&doc);
    return st;
}

eq_status eq_coco_load_res(const eq_coco *gt, const char *path, eq_coco **out, eq_err *err)
{
    *out = NULL;
    eq_json_doc *doc = eq_json_parse_file(path, NULL, err);
    if (!doc) return err ? err->code : EQ_ERR_PARSE;
    eq_status st = eq_coco_load_res_json(gt, eq_json_root(doc), path, out, err);
    eq_json_doc_destroy(&doc);
    return st;
}
