/*
 * loader/coco_index.c -- the COCO instances-file index: JSON (core/json.h)
 * into compact arrays, validation, the binary cache, the fingerprint.
 *
 * Parsing is two passes over the parsed document: the first checks every
 * entry and counts what the arrays need, the second fills them, so each
 * array is allocated once at its exact size.  The JSON tree is freed before
 * returning; what stays is ~56 bytes per annotation, 32 per image, the
 * names and the polygon values (8 bytes each) and RLE counts.
 */
#include "loader/coco.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/file.h"
#include "core/json.h"
#include "core/log.h"
#include "evaluator/mask.h"
#include "loader/loader_internal.h"

#define S_MAGIC "EQCOCOIX"
#define S_VERSION 1u
#define S_BOM 0x01020304u
#define S_NAME_MAX 4096

void eq_cocoidx_destroy(eq_cocoidx **self_p)
{
    if (!self_p || !*self_p) return;
    eq_cocoidx *x = *self_p;
    if (x->block_) {
        free(x->block_);
    } else {
        free(x->img);
        free(x->ann);
        free(x->cat_id);
        free(x->cat_name);
        free(x->names);
        free(x->coords);
        free(x->rings);
        free(x->counts);
    }
    free(x);
    *self_p = NULL;
}

/* ------------------------------------------------------------- parsing */

typedef struct s_ctx {
    const char *name;
    eq_err *err;
} s_ctx;

static eq_status s_bad(s_ctx *c, const char *what, size_t i, const eq_json *v, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static eq_status s_bad(s_ctx *c, const char *what, size_t i, const eq_json *v, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return eq_err_set(c->err, EQ_ERR_INVALID, "%s: %s[%zu] (line %u, column %u): %s", c->name, what, i,
                      eq_json_line(v), eq_json_col(v), msg);
}

/* An integer id (3.0 counts as 3, as pycocotools' dict keys compare). */
static int s_id(const eq_json *v, int64_t *out)
{
    if (!v || eq_json_typeof(v) != EQ_JSON_NUMBER) return 0;
    if (eq_json_int(v, out)) return 1;
    double d = eq_json_num(v);
    if (!(d == floor(d)) || !(fabs(d) < 9.2e18)) return 0;
    *out = (int64_t)d;
    return 1;
}

typedef struct s_pair {
    int64_t id;
    uint32_t pos;
} s_pair;

static int s_cmp_pair(const void *a, const void *b)
{
    const s_pair *x = a, *y = b;
    return x->id < y->id ? -1 : x->id > y->id ? 1 : (x->pos > y->pos) - (x->pos < y->pos);
}

/* Position of id in the sorted pairs, or -1. */
static int64_t s_find(const s_pair *p, size_t n, int64_t id)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && p[lo].id == id ? (int64_t)lo : -1;
}

static int s_safe_relpath(const char *s, size_t len)
{
    if (len == 0 || s[0] == '/' || memchr(s, 0, len) || memchr(s, '\\', len)) return 0;
    /* no ".." component */
    for (size_t i = 0; i < len;) {
        size_t j = i;
        while (j < len && s[j] != '/') j++;
        if (j - i == 2 && s[i] == '.' && s[i + 1] == '.') return 0;
        if (j == i) return 0; /* empty component ("a//b") */
        i = j + 1;
    }
    return 1;
}

/* Segmentation of annotation i: kind and sizes (pass 1: check and count;
 * pass 2 with x != NULL: fill). */
typedef struct s_seg_info {
    int kind;
    size_t nvals, nrings, ncounts;
} s_seg_info;

static eq_status s_seg(s_ctx *c, size_t i, const eq_json *sv, uint32_t ih, uint32_t iw, s_seg_info *si,
                       eq_cocoidx *x, eq_cocoidx_ann *a)
{
    memset(si, 0, sizeof *si);
    if (!sv || eq_json_typeof(sv) == EQ_JSON_NULL) return EQ_OK;
    eq_json_type t = eq_json_typeof(sv);
    if (t == EQ_JSON_ARRAY) {
        size_t nr = eq_json_len(sv);
        if (nr == 0) return EQ_OK; /* [] : no mask */
        if (nr > UINT32_MAX) return s_bad(c, "annotations", i, sv, "field 'segmentation': too many polygons");
        si->kind = EQ_COCOIDX_SEG_POLY;
        si->nrings = nr;
        for (size_t r = 0; r < nr; r++) {
            const eq_json *ring = eq_json_at(sv, r);
            if (eq_json_typeof(ring) != EQ_JSON_ARRAY)
                return s_bad(c, "annotations", i, ring, "field 'segmentation[%zu]': expected a list of numbers", r);
            size_t k = eq_json_len(ring);
            if (k % 2 || k > UINT32_MAX)
                return s_bad(c, "annotations", i, ring,
                             "field 'segmentation[%zu]': %zu values, expected an even number (x, y pairs)", r, k);
            for (size_t q = 0; q < k; q++) {
                const eq_json *v = eq_json_at(ring, q);
                double d = eq_json_num(v);
                if (eq_json_typeof(v) != EQ_JSON_NUMBER || !isfinite(d) || fabs(d) > 1e8)
                    return s_bad(c, "annotations", i, v,
                                 "field 'segmentation[%zu][%zu]': expected a finite number below 1e8", r, q);
                if (x) x->coords[a->seg_off + si->nvals + q] = d;
            }
            if (x) x->rings[a->seg_ring + r] = (uint32_t)k;
            si->nvals += k;
        }
        return EQ_OK;
    }
    if (t != EQ_JSON_OBJECT)
        return s_bad(c, "annotations", i, sv, "field 'segmentation': expected a list of polygons or an RLE object");
    const eq_json *cv = eq_json_get(sv, "counts"), *sz = eq_json_get(sv, "size");
    int64_t h = -1, w = -1;
    if (!sz || eq_json_typeof(sz) != EQ_JSON_ARRAY || eq_json_len(sz) != 2 || !s_id(eq_json_at(sz, 0), &h) ||
        !s_id(eq_json_at(sz, 1), &w))
        return s_bad(c, "annotations", i, sz ? sz : sv, "field 'segmentation.size': expected [height, width]");
    if (h != ih || w != iw)
        return s_bad(c, "annotations", i, sz,
                     "field 'segmentation.size': [%" PRId64 ", %" PRId64 "] differs from the image's [%u, %u]", h, w,
                     ih, iw);
    si->kind = EQ_COCOIDX_SEG_RLE;
    uint64_t total = (uint64_t)ih * iw, sum = 0;
    if (cv && eq_json_typeof(cv) == EQ_JSON_ARRAY) {
        size_t m = eq_json_len(cv);
        for (size_t q = 0; q < m; q++) {
            const eq_json *v = eq_json_at(cv, q);
            int64_t n;
            if (!s_id(v, &n) || n < 0 || n > UINT32_MAX)
                return s_bad(c, "annotations", i, v, "field 'segmentation.counts[%zu]': expected a count >= 0", q);
            sum += (uint64_t)n;
            if (x) x->counts[a->seg_off + q] = (uint32_t)n;
        }
        si->ncounts = m;
    } else if (cv && eq_json_typeof(cv) == EQ_JSON_STRING) {
        size_t len;
        const char *s = eq_json_str(cv, &len);
        eq_rle r = {0};
        eq_err e = {0};
        if (eq_rle_fr_string(s, len, ih, iw, &r, &e) != EQ_OK)
            return s_bad(c, "annotations", i, cv, "field 'segmentation.counts': %s", e.msg);
        for (size_t q = 0; q < r.m; q++) sum += r.cnts[q];
        if (x) memcpy(x->counts + a->seg_off, r.cnts, r.m * sizeof *r.cnts);
        si->ncounts = r.m;
        eq_rle_free(&r);
    } else {
        return s_bad(c, "annotations", i, cv ? cv : sv,
                     "field 'segmentation.counts': expected a list of counts or a compressed string");
    }
    if (si->ncounts && sum != total)
        return s_bad(c, "annotations", i, cv, "field 'segmentation.counts': runs sum to %" PRIu64 ", expected %" PRIu64,
                     sum, total);
    if (si->ncounts > UINT32_MAX) return s_bad(c, "annotations", i, cv, "field 'segmentation.counts': too many");
    if (!si->ncounts) si->kind = EQ_COCOIDX_SEG_NONE;
    return EQ_OK;
}

static const eq_json *s_array(s_ctx *c, const eq_json *root, const char *key, int required, eq_status *st)
{
    const eq_json *v = eq_json_get(root, key);
    *st = EQ_OK;
    if (!v) {
        if (required) *st = eq_err_set(c->err, EQ_ERR_INVALID, "%s: missing key '%s'", c->name, key);
        return NULL;
    }
    if (eq_json_typeof(v) != EQ_JSON_ARRAY)
        *st = eq_err_set(c->err, EQ_ERR_INVALID, "%s: '%s' (line %u) is a %s, expected a list", c->name, key,
                         eq_json_line(v), eq_json_type_name(eq_json_typeof(v)));
    return v;
}

static eq_cocoidx *s_from_json(const eq_json *root, const char *name, eq_err *err)
{
    s_ctx c = {name, err};
    eq_cocoidx *x = calloc(1, sizeof *x);
    s_pair *imgs = NULL, *cats = NULL;
    uint32_t *ann_img = NULL, *fill = NULL;
    uint8_t *ann_seg = NULL; /* pass 1's segmentation kind per annotation */
    eq_status st = EQ_OK;
    if (!x) {
        eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory", name);
        return NULL;
    }
    if (eq_json_typeof(root) != EQ_JSON_OBJECT) {
        eq_err_set(err, EQ_ERR_INVALID, "%s: the top level is a %s, expected an object", name,
                   eq_json_type_name(eq_json_typeof(root)));
        goto fail;
    }
    const eq_json *jimg = s_array(&c, root, "images", 1, &st);
    if (st) goto fail;
    const eq_json *jcat = s_array(&c, root, "categories", 1, &st);
    if (st) goto fail;
    const eq_json *jann = s_array(&c, root, "annotations", 0, &st);
    if (st) goto fail;
    size_t ni = eq_json_len(jimg), nc = eq_json_len(jcat), na = jann ? eq_json_len(jann) : 0;
    if (ni > INT32_MAX || na > UINT32_MAX) {
        eq_err_set(err, EQ_ERR_LIMIT, "%s: %zu images / %zu annotations exceed the limits", name, ni, na);
        goto fail;
    }
    if (nc > EQ_COCOIDX_MAX_CATS) {
        eq_err_set(err, EQ_ERR_LIMIT, "%s: %zu categories, at most %u", name, nc, EQ_COCOIDX_MAX_CATS);
        goto fail;
    }
    x->n_img = (uint32_t)ni;
    x->n_cat = (uint32_t)nc;
    x->n_ann = na;
    /* categories: sorted by id = class index */
    size_t names = 0;
    if (!(cats = eq_calloc_array(nc + 1, sizeof *cats)) || !(imgs = eq_calloc_array(ni + 1, sizeof *imgs))) goto nomem;
    for (size_t k = 0; k < nc; k++) {
        const eq_json *e = eq_json_at(jcat, k);
        if (eq_json_typeof(e) != EQ_JSON_OBJECT) {
            st = s_bad(&c, "categories", k, e, "expected an object");
            goto fail;
        }
        if (!s_id(eq_json_get(e, "id"), &cats[k].id)) {
            st = s_bad(&c, "categories", k, e, "field 'id': expected an integer");
            goto fail;
        }
        const eq_json *nm = eq_json_get(e, "name");
        size_t len = 0;
        const char *s = nm ? eq_json_str(nm, &len) : NULL;
        if (nm && (!s || len >= S_NAME_MAX || memchr(s, 0, len))) {
            st = s_bad(&c, "categories", k, nm, "field 'name': expected a string shorter than %d bytes", S_NAME_MAX);
            goto fail;
        }
        names += len + 1;
        cats[k].pos = (uint32_t)k;
    }
    qsort(cats, nc, sizeof *cats, s_cmp_pair);
    for (size_t k = 1; k < nc; k++)
        if (cats[k].id == cats[k - 1].id) {
            st = s_bad(&c, "categories", cats[k].pos, eq_json_at(jcat, cats[k].pos), "duplicate id %" PRId64,
                       cats[k].id);
            goto fail;
        }
    /* images */
    for (size_t k = 0; k < ni; k++) {
        const eq_json *e = eq_json_at(jimg, k);
        int64_t h, w;
        if (eq_json_typeof(e) != EQ_JSON_OBJECT) {
            st = s_bad(&c, "images", k, e, "expected an object");
            goto fail;
        }
        if (!s_id(eq_json_get(e, "id"), &imgs[k].id)) {
            st = s_bad(&c, "images", k, e, "field 'id': expected an integer");
            goto fail;
        }
        if (!s_id(eq_json_get(e, "height"), &h) || h < 1 || h > 65535 || !s_id(eq_json_get(e, "width"), &w) || w < 1 ||
            w > 65535) {
            st = s_bad(&c, "images", k, e, "fields 'height' and 'width': expected integers in [1, 65535]");
            goto fail;
        }
        const eq_json *fn = eq_json_get(e, "file_name");
        size_t len = 0;
        const char *s = fn ? eq_json_str(fn, &len) : NULL;
        if (!s || len >= S_NAME_MAX || !s_safe_relpath(s, len)) {
            st = s_bad(&c, "images", k, fn ? fn : e,
                       "field 'file_name': expected a relative path without '..' shorter than %d bytes", S_NAME_MAX);
            goto fail;
        }
        names += len + 1;
        imgs[k].pos = (uint32_t)k;
    }
    if (names > UINT32_MAX) {
        eq_err_set(err, EQ_ERR_LIMIT, "%s: names take more than 4 GiB", name);
        goto fail;
    }
    qsort(imgs, ni, sizeof *imgs, s_cmp_pair);
    for (size_t k = 1; k < ni; k++)
        if (imgs[k].id == imgs[k - 1].id) {
            st = s_bad(&c, "images", imgs[k].pos, eq_json_at(jimg, imgs[k].pos), "duplicate id %" PRId64, imgs[k].id);
            goto fail;
        }
    x->n_names = names;
    if (!(x->img = eq_calloc_array(ni + 1, sizeof *x->img)) || !(x->cat_id = eq_calloc_array(nc + 1, sizeof *x->cat_id)) ||
        !(x->cat_name = eq_calloc_array(nc + 1, sizeof *x->cat_name)) || !(x->names = calloc(names + 1, 1)) ||
        !(ann_img = eq_malloc_array(na + 1, sizeof *ann_img)) || !(ann_seg = malloc(na + 1)))
        goto nomem;
    size_t no = 0;
    for (size_t k = 0; k < nc; k++) {
        const eq_json *nm = eq_json_get(eq_json_at(jcat, cats[k].pos), "name");
        size_t len = 0;
        const char *s = nm ? eq_json_str(nm, &len) : "";
        x->cat_id[k] = cats[k].id;
        x->cat_name[k] = no;
        memcpy(x->names + no, s, len);
        no += len + 1;
    }
    for (size_t k = 0; k < ni; k++) {
        const eq_json *e = eq_json_at(jimg, imgs[k].pos);
        int64_t h = 0, w = 0;
        s_id(eq_json_get(e, "height"), &h);
        s_id(eq_json_get(e, "width"), &w);
        size_t len = 0;
        const char *s = eq_json_str(eq_json_get(e, "file_name"), &len);
        x->img[k].id = imgs[k].id;
        x->img[k].height = (uint32_t)h;
        x->img[k].width = (uint32_t)w;
        x->img[k].file = (uint32_t)no;
        memcpy(x->names + no, s, len);
        no += len + 1;
    }
    /* annotations, pass 1: check, count per image and the pool sizes */
    size_t nvals = 0, nrings = 0, ncounts = 0;
    for (size_t k = 0; k < na; k++) {
        const eq_json *e = eq_json_at(jann, k);
        int64_t iid, cid;
        if (eq_json_typeof(e) != EQ_JSON_OBJECT) {
            st = s_bad(&c, "annotations", k, e, "expected an object");
            goto fail;
        }
        if (!s_id(eq_json_get(e, "image_id"), &iid)) {
            st = s_bad(&c, "annotations", k, e, "field 'image_id': expected an integer");
            goto fail;
        }
        int64_t ip = s_find(imgs, ni, iid);
        if (ip < 0) {
            st = s_bad(&c, "annotations", k, eq_json_get(e, "image_id"), "image_id %" PRId64 " is not in 'images'", iid);
            goto fail;
        }
        if (!s_id(eq_json_get(e, "category_id"), &cid)) {
            st = s_bad(&c, "annotations", k, e, "field 'category_id': expected an integer");
            goto fail;
        }
        if (s_find(cats, nc, cid) < 0) {
            st = s_bad(&c, "annotations", k, eq_json_get(e, "category_id"),
                       "category_id %" PRId64 " is not in 'categories'", cid);
            goto fail;
        }
        const eq_json *bb = eq_json_get(e, "bbox");
        if (!bb || eq_json_typeof(bb) != EQ_JSON_ARRAY || eq_json_len(bb) != 4) {
            st = s_bad(&c, "annotations", k, bb ? bb : e, "field 'bbox': expected [x, y, width, height]");
            goto fail;
        }
        for (size_t q = 0; q < 4; q++) {
            const eq_json *v = eq_json_at(bb, q);
            if (eq_json_typeof(v) != EQ_JSON_NUMBER || !isfinite(eq_json_num(v))) {
                st = s_bad(&c, "annotations", k, v, "field 'bbox[%zu]': expected a finite number", q);
                goto fail;
            }
        }
        const eq_json *cr = eq_json_get(e, "iscrowd");
        if (cr && eq_json_typeof(cr) != EQ_JSON_NUMBER && eq_json_typeof(cr) != EQ_JSON_TRUE &&
            eq_json_typeof(cr) != EQ_JSON_FALSE) {
            st = s_bad(&c, "annotations", k, cr, "field 'iscrowd': expected 0 or 1");
            goto fail;
        }
        s_seg_info si;
        const eq_cocoidx_img *im = &x->img[ip];
        if ((st = s_seg(&c, k, eq_json_get(e, "segmentation"), im->height, im->width, &si, NULL, NULL))) goto fail;
        nvals += si.nvals;
        nrings += si.nrings;
        ncounts += si.ncounts;
        ann_img[k] = (uint32_t)ip;
        ann_seg[k] = (uint8_t)si.kind;
        x->img[ip].nann++;
    }
    x->n_coords = nvals;
    x->n_rings = nrings;
    x->n_counts = ncounts;
    if (!(x->ann = eq_calloc_array(na + 1, sizeof *x->ann)) || !(x->coords = eq_malloc_array(nvals + 1, sizeof *x->coords)) ||
        !(x->rings = eq_malloc_array(nrings + 1, sizeof *x->rings)) ||
        !(x->counts = eq_malloc_array(ncounts + 1, sizeof *x->counts)) || !(fill = eq_calloc_array(ni + 1, sizeof *fill)))
        goto nomem;
    {
        uint32_t a0 = 0;
        for (size_t k = 0; k < ni; k++) {
            x->img[k].ann0 = a0;
            a0 += x->img[k].nann;
        }
    }
    /* pass 2: fill (in file order within each image) */
    nvals = nrings = ncounts = 0;
    for (size_t k = 0; k < na; k++) {
        const eq_json *e = eq_json_at(jann, k);
        uint32_t ip = ann_img[k];
        eq_cocoidx_ann *a = &x->ann[x->img[ip].ann0 + fill[ip]++];
        int64_t cid = 0;
        s_id(eq_json_get(e, "category_id"), &cid);
        a->cls = (uint16_t)s_find(cats, nc, cid);
        const eq_json *bb = eq_json_get(e, "bbox");
        for (size_t q = 0; q < 4; q++) a->bbox[q] = eq_json_num(eq_json_at(bb, q));
        const eq_json *cr = eq_json_get(e, "iscrowd");
        a->crowd = cr && (eq_json_typeof(cr) == EQ_JSON_TRUE ||
                          (eq_json_typeof(cr) == EQ_JSON_NUMBER && eq_json_num(cr) != 0));
        /* one traversal: the values go to the pools' ends (pass 1 sized
         * them), the sizes found are the annotation's */
        s_seg_info si;
        const eq_json *sv = eq_json_get(e, "segmentation");
        a->seg = ann_seg[k];
        a->seg_off = a->seg == EQ_COCOIDX_SEG_POLY ? nvals : ncounts;
        a->seg_ring = a->seg == EQ_COCOIDX_SEG_POLY ? (uint32_t)nrings : 0;
        if (a->seg != EQ_COCOIDX_SEG_NONE &&
            (st = s_seg(&c, k, sv, x->img[ip].height, x->img[ip].width, &si, x, a)))
            goto fail;
        if (a->seg == EQ_COCOIDX_SEG_POLY) {
            a->seg_n = (uint32_t)si.nrings;
            nvals += si.nvals;
            nrings += si.nrings;
        } else if (a->seg == EQ_COCOIDX_SEG_RLE) {
            a->seg_n = (uint32_t)si.ncounts;
            ncounts += si.ncounts;
        }
    }
    if (nrings > UINT32_MAX) {
        eq_err_set(err, EQ_ERR_LIMIT, "%s: more than 2^32 polygons", name);
        goto fail;
    }
    free(imgs);
    free(cats);
    free(ann_img);
    free(ann_seg);
    free(fill);
    x->hash = eq_cocoidx_content_hash(x);
    if (eq_cocoidx_validate(x, err) != EQ_OK) {
        eq_err_prefix(err, "%s: internal: ", name);
        eq_cocoidx_destroy(&x);
    }
    return x;
nomem:
    eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory for the index", name);
fail:
    free(imgs);
    free(cats);
    free(ann_img);
    free(ann_seg);
    free(fill);
    eq_cocoidx_destroy(&x);
    return NULL;
}

eq_cocoidx *eq_cocoidx_parse_mem(const char *text, size_t len, const char *name, eq_err *err)
{
    eq_json_doc *doc = eq_json_parse(text, len, NULL, err);
    if (!doc) {
        eq_err_prefix(err, "%s: ", name);
        return NULL;
    }
    eq_cocoidx *x = s_from_json(eq_json_root(doc), name, err);
    eq_json_doc_destroy(&doc);
    return x;
}

eq_cocoidx *eq_cocoidx_parse(const char *json_path, eq_err *err)
{
    eq_json_doc *doc = eq_json_parse_file(json_path, NULL, err);
    if (!doc) return NULL;
    eq_cocoidx *x = s_from_json(eq_json_root(doc), json_path, err);
    eq_json_doc_destroy(&doc);
    return x;
}

/* --------------------------------------------------------- validation */

uint64_t eq_cocoidx_content_hash(const eq_cocoidx *x)
{
    eq_hash64 h;
    eq_hash64_init(&h);
    eq_hash64_u64(&h, x->n_img);
    eq_hash64_u64(&h, x->n_cat);
    eq_hash64_u64(&h, x->n_ann);
    eq_hash64_u64(&h, x->n_names);
    eq_hash64_u64(&h, x->n_coords);
    eq_hash64_u64(&h, x->n_rings);
    eq_hash64_u64(&h, x->n_counts);
    eq_hash64_bytes(&h, x->img, (size_t)x->n_img * sizeof *x->img);
    eq_hash64_bytes(&h, x->ann, x->n_ann * sizeof *x->ann);
    eq_hash64_bytes(&h, x->cat_id, (size_t)x->n_cat * sizeof *x->cat_id);
    eq_hash64_bytes(&h, x->cat_name, (size_t)x->n_cat * sizeof *x->cat_name);
    eq_hash64_bytes(&h, x->names, x->n_names);
    eq_hash64_bytes(&h, x->coords, x->n_coords * sizeof *x->coords);
    eq_hash64_bytes(&h, x->rings, x->n_rings * sizeof *x->rings);
    eq_hash64_bytes(&h, x->counts, x->n_counts * sizeof *x->counts);
    return eq_hash64_final(&h);
}

static int s_str_ok(const eq_cocoidx *x, uint64_t off)
{
    return off < x->n_names && memchr(x->names + off, 0, x->n_names - off) != NULL;
}

eq_status eq_cocoidx_validate(const eq_cocoidx *x, eq_err *err)
{
    if (x->n_names && x->names[x->n_names - 1] != 0)
        return eq_err_set(err, EQ_ERR_CORRUPT, "coco index: names not terminated");
    for (uint32_t k = 0; k < x->n_cat; k++) {
        if (k && x->cat_id[k] <= x->cat_id[k - 1])
            return eq_err_set(err, EQ_ERR_CORRUPT, "coco index: category %u: ids not increasing", k);
        if (!s_str_ok(x, x->cat_name[k]))
            return eq_err_set(err, EQ_ERR_CORRUPT, "coco index: category %u: bad name offset", k);
    }
    uint64_t a0 = 0;
    for (uint32_t i = 0; i < x->n_img; i++) {
        const eq_cocoidx_img *im = &x->img[i];
        if (i && im->id <= x->img[i - 1].id)
            return eq_err_set(err, EQ_ERR_CORRUPT, "coco index: image %u: ids not increasing", i);
        if (!im->width || !im->height || im->width > 65535 || im->height > 65535 || im->pad_)
            return eq_err_set(err, EQ_ERR_CORRUPT, "coco index: image %u: bad size %ux%u", i, im->width, im->height);
        if (!s_str_ok(x, im->file))
            return eq_err_set(err, EQ_ERR_CORRUPT, "coco index: image %u: bad file name offset", i);
        if (im->ann0 != a0 || (uint64_t)im->ann0 + im->nann > x->n_ann)
            return eq_err_set(err, EQ_ERR_CORRUPT, "coco index: image %u: annotations %u+%u out of order or range", i,
                              im->ann0, im->nann);
        a0 += im->nann;
        for (uint32_t q = 0; q < im->nann; q++) {
            const eq_cocoidx_ann *a = &x->ann[im->ann0 + q];
            uint64_t k = im->ann0 + q;
            for (int t = 0; t < 4; t++)
                if (!isfinite(a->bbox[t]))
                    return eq_err_set(err, EQ_ERR_CORRUPT, "coco index: annotation %" PRIu64 ": bbox not finite", k);
            if (a->cls >= x->n_cat || a->pad_ || a->seg > EQ_COCOIDX_SEG_RLE)
                return eq_err_set(err, EQ_ERR_CORRUPT, "coco index: annotation %" PRIu64 ": bad class or kind", k);
            if (a->seg == EQ_COCOIDX_SEG_POLY) {
                if ((uint64_t)a->seg_ring + a->seg_n > x->n_rings)
                    return eq_err_set(err, EQ_ERR_CORRUPT, "coco index: annotation %" PRIu64 ": rings out of range", k);
                uint64_t nv = 0;
                for (uint32_t r = 0; r < a->seg_n; r++) {
                    uint32_t len = x->rings[a->seg_ring + r];
                    if (len % 2)
                        return eq_err_set(err, EQ_ERR_CORRUPT, "coco index: annotation %" PRIu64 ": odd ring", k);
                    nv += len;
                }
                if (a->seg_off > x->n_coords || nv > x->n_coords - a->seg_off)
                    return eq_err_set(err, EQ_ERR_CORRUPT, "coco index: annotation %" PRIu64 ": values out of range",
                                      k);
                for (uint64_t v = 0; v < nv; v++) {
                    double d = x->coords[a->seg_off + v];
                    if (!isfinite(d) || fabs(d) > 1e8)
                        return eq_err_set(err, EQ_ERR_CORRUPT, "coco index: annotation %" PRIu64 ": bad vertex", k);
                }
            } else if (a->seg == EQ_COCOIDX_SEG_RLE) {
                if (a->seg_off > x->n_counts || a->seg_n > x->n_counts - a->seg_off)
                    return eq_err_set(err, EQ_ERR_CORRUPT, "coco index: annotation %" PRIu64 ": counts out of range",
                                      k);
                uint64_t sum = 0;
                for (uint32_t r = 0; r < a->seg_n; r++) sum += x->counts[a->seg_off + r];
                if (sum != (uint64_t)im->width * im->height)
                    return eq_err_set(err, EQ_ERR_CORRUPT, "coco index: annotation %" PRIu64 ": RLE sums to %" PRIu64,
                                      k, sum);
            }
        }
    }
    if (a0 != x->n_ann)
        return eq_err_set(err, EQ_ERR_CORRUPT, "coco index: images hold %" PRIu64 " of %" PRIu64 " annotations", a0,
                          x->n_ann);
    return EQ_OK;
}

int eq_cocoidx_usable(const eq_cocoidx *x, uint32_t i)
{
    const eq_cocoidx_img *im = &x->img[i];
    for (uint32_t q = 0; q < im->nann; q++) {
        const eq_cocoidx_ann *a = &x->ann[im->ann0 + q];
        if (!a->crowd && a->bbox[2] > 0 && a->bbox[3] > 0) return 1;
    }
    return 0;
}

/* --------------------------------------------------------------- cache */

#define S_HDR 96

static size_t s_pad8(size_t n) { return (n + 7) & ~(size_t)7; }

static void s_put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void s_put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t s_get32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static uint64_t s_get64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

eq_status eq_cocoidx_save(const eq_cocoidx *x, const char *path, uint64_t src_size, int64_t src_mtime_ns,
                          eq_err *err)
{
    uint8_t hdr[S_HDR] = {0};
    memcpy(hdr, S_MAGIC, 8);
    s_put32(hdr + 8, S_VERSION);
    s_put32(hdr + 12, S_BOM);
    s_put64(hdr + 16, src_size);
    s_put64(hdr + 24, (uint64_t)src_mtime_ns);
    s_put64(hdr + 32, x->hash);
    s_put32(hdr + 40, x->n_img);
    s_put32(hdr + 44, x->n_cat);
    s_put64(hdr + 48, x->n_ann);
    s_put64(hdr + 56, x->n_names);
    s_put64(hdr + 64, x->n_coords);
    s_put64(hdr + 72, x->n_rings);
    s_put64(hdr + 80, x->n_counts);
    eq_file_atomic *f = eq_file_atomic_open(path, err);
    if (!f) return err ? err->code : EQ_ERR_IO;
    const void *parts[8] = {x->img, x->ann, x->cat_id, x->cat_name, x->names, x->coords, x->rings, x->counts};
    size_t sizes[8] = {(size_t)x->n_img * sizeof *x->img,         x->n_ann * sizeof *x->ann,
                       (size_t)x->n_cat * sizeof *x->cat_id,      (size_t)x->n_cat * sizeof *x->cat_name,
                       x->n_names,                                x->n_coords * sizeof *x->coords,
                       x->n_rings * sizeof *x->rings,             x->n_counts * sizeof *x->counts};
    static const uint8_t zero[8] = {0};
    eq_status st = eq_file_atomic_write(f, hdr, sizeof hdr, err);
    for (int i = 0; i < 8 && !st; i++) {
        if (sizes[i]) st = eq_file_atomic_write(f, parts[i], sizes[i], err);
        if (!st && s_pad8(sizes[i]) != sizes[i]) st = eq_file_atomic_write(f, zero, s_pad8(sizes[i]) - sizes[i], err);
    }
    if (st) {
        eq_file_atomic_abort(&f);
        return st;
    }
    return eq_file_atomic_commit(&f, err);
}

/* Takes ownership of buf (malloc'd, len bytes). */
static eq_cocoidx *s_load_buf(char *buf, size_t len, const char *path, uint64_t *src_size, int64_t *src_mtime_ns,
                              eq_err *err)
{
    eq_cocoidx *x = NULL;
    const uint8_t *b = (const uint8_t *)buf;
    if (len < S_HDR || memcmp(b, S_MAGIC, 8)) {
        eq_err_set(err, EQ_ERR_PARSE, "%s: not an eq COCO index (bad magic)", path);
        goto fail;
    }
    if (s_get32(b + 8) != S_VERSION || s_get32(b + 12) != S_BOM) {
        eq_err_set(err, EQ_ERR_VERSION, "%s: COCO index version %u (byte order %08x); this build reads version %u: delete it to rebuild",
                   path, s_get32(b + 8), s_get32(b + 12), S_VERSION);
        goto fail;
    }
    if (!(x = calloc(1, sizeof *x))) {
        eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    x->hash = s_get64(b + 32);
    x->n_img = s_get32(b + 40);
    x->n_cat = s_get32(b + 44);
    x->n_ann = s_get64(b + 48);
    x->n_names = s_get64(b + 56);
    x->n_coords = s_get64(b + 64);
    x->n_rings = s_get64(b + 72);
    x->n_counts = s_get64(b + 80);
    if (x->n_cat > EQ_COCOIDX_MAX_CATS) {
        eq_err_set(err, EQ_ERR_CORRUPT, "%s: %u categories", path, x->n_cat);
        goto fail;
    }
    /* sizes of the 8 arrays, each checked against what is left */
    uint64_t counts[8] = {x->n_img, x->n_ann, x->n_cat, x->n_cat, x->n_names, x->n_coords, x->n_rings, x->n_counts};
    static const size_t es[8] = {sizeof(eq_cocoidx_img), sizeof(eq_cocoidx_ann), 8, 8, 1, 8, 4, 4};
    void **dst[8] = {(void **)&x->img,   (void **)&x->ann,    (void **)&x->cat_id, (void **)&x->cat_name,
                     (void **)&x->names, (void **)&x->coords, (void **)&x->rings,  (void **)&x->counts};
    size_t off = S_HDR;
    for (int i = 0; i < 8; i++) {
        uint64_t left = len - off;
        if (counts[i] > left / es[i] || s_pad8((size_t)(counts[i] * es[i])) > left) {
            eq_err_set(err, EQ_ERR_CORRUPT, "%s: truncated (array %d of %" PRIu64 " entries past the end)", path, i,
                       counts[i]);
            goto fail;
        }
        *dst[i] = buf + off;
        off += s_pad8((size_t)(counts[i] * es[i]));
    }
    if (off != len) {
        eq_err_set(err, EQ_ERR_CORRUPT, "%s: %zu bytes, expected %zu", path, len, off);
        goto fail;
    }
    x->block_ = buf;
    if (eq_cocoidx_content_hash(x) != x->hash) {
        eq_err_set(err, EQ_ERR_CORRUPT, "%s: content hash mismatch (corrupt): delete it to rebuild", path);
        eq_cocoidx_destroy(&x);
        return NULL;
    }
    if (eq_cocoidx_validate(x, err) != EQ_OK) {
        eq_err_prefix(err, "%s: ", path);
        eq_cocoidx_destroy(&x);
        return NULL;
    }
    if (src_size) *src_size = s_get64(b + 16);
    if (src_mtime_ns) *src_mtime_ns = (int64_t)s_get64(b + 24);
    return x;
fail:
    free(x);
    free(buf);
    return NULL;
}

eq_cocoidx *eq_cocoidx_load(const char *path, uint64_t *src_size, int64_t *src_mtime_ns, eq_err *err)
{
    char *buf = NULL;
    size_t len = 0;
    if (eq_file_read(path, 0, &buf, &len, err) != EQ_OK) return NULL;
    return s_load_buf(buf, len, path, src_size, src_mtime_ns, err);
}

eq_cocoidx *eq_cocoidx_load_mem(const void *data, size_t len, const char *name, eq_err *err)
{
    char *buf = malloc(len + 8);
    if (!buf) {
        eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory", name);
        return NULL;
    }
    memcpy(buf, data, len);
    return s_load_buf(buf, len, name, NULL, NULL, err);
}

eq_cocoidx *eq_cocoidx_open(const char *json_path, const char *cache_path, int *from_cache, eq_err *err)
{
    if (from_cache) *from_cache = 0;
    struct stat st;
    if (stat(json_path, &st) != 0) {
        eq_err_set(err, errno == ENOENT ? EQ_ERR_NOTFOUND : EQ_ERR_IO, "%s: %s", json_path, strerror(errno));
        return NULL;
    }
    int64_t mt = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    if (cache_path) {
        struct stat cs;
        if (stat(cache_path, &cs) == 0) {
            eq_err e = {0};
            uint64_t sz = 0;
            int64_t cm = 0;
            eq_cocoidx *x = eq_cocoidx_load(cache_path, &sz, &cm, &e);
            if (x && sz == (uint64_t)st.st_size && cm == mt) {
                if (from_cache) *from_cache = 1;
                return x;
            }
            if (x)
                eq_info("coco: %s is older than %s: rebuilding it", cache_path, json_path);
            else
                eq_warn("coco: ignoring the index cache (rebuilding it from %s): %s", json_path, e.msg);
            eq_cocoidx_destroy(&x);
        }
    }
    eq_cocoidx *x = eq_cocoidx_parse(json_path, err);
    if (x && cache_path) {
        eq_err e = {0};
        if (eq_cocoidx_save(x, cache_path, (uint64_t)st.st_size, mt, &e) != EQ_OK)
            eq_warn("coco: cannot write the index cache: %s", e.msg);
    }
    return x;
}
