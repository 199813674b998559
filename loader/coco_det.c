/*
 * loader/coco_det.c -- the detection pipeline: per-image transforms
 * (resize shorter side / cap longer side, flip) applied identically to the
 * image, its boxes and its masks; mask wire encoding; batch collation.
 * The geometry and randomness rules are in coco.h.
 */
#include "loader/coco.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/pool.h"
#include "core/rng.h"
#include "evaluator/mask.h"
#include "loader/loader_internal.h"

#define S_MAX_FILE ((size_t)256 << 20)

struct eq_det {
    const eq_cocoidx *idx;
    char *root;
    eq_det_cfg cfg;
    uint32_t *keep; /* served positions -> image */
    size_t nkeep;
    eq_sampler *sampler;
};

static const char *const s_box_names[] = {"xyxy", "xywh", "cxcywh"};

const char *eq_box_format_name(eq_box_format f)
{
    return (unsigned)f < EQ_BOX_FORMAT_COUNT ? s_box_names[f] : "?";
}

int eq_box_format_parse(const char *s, eq_box_format *out)
{
    for (int i = 0; i < EQ_BOX_FORMAT_COUNT; i++)
        if (!strcmp(s, s_box_names[i])) {
            *out = (eq_box_format)i;
            return 0;
        }
    return -1;
}

void eq_det_cfg_default(eq_det_cfg *cfg, const char *split, uint32_t global_batch, uint64_t seed)
{
    memset(cfg, 0, sizeof *cfg);
    int train = split && !strcmp(split, "train");
    if (train) {
        for (uint32_t s = 640; s <= 800; s += 32) cfg->min_sizes[cfg->n_min_sizes++] = s;
    } else {
        cfg->min_sizes[0] = 800;
        cfg->n_min_sizes = 1;
    }
    cfg->max_size = 1333;
    cfg->hflip = train;
    cfg->pad_divisor = 32;
    cfg->box_format = EQ_BOX_XYXY;
    cfg->masks = 1;
    cfg->skip_empty = train;
    cfg->min_box = 0;
    cfg->dct_scale = EQ_DCT_POW2;
    cfg->sampler.seed = seed;
    cfg->sampler.split = train ? 0 : 1;
    cfg->sampler.global_batch = global_batch;
    cfg->sampler.shuffle = train;
    cfg->sampler.last = train ? EQ_LAST_DROP : EQ_LAST_PARTIAL;
}

void eq_det_output_size(uint32_t w, uint32_t h, uint32_t short_side, uint32_t max_size, uint32_t *ow, uint32_t *oh)
{
    /* detectron2 ResizeShortestEdge.get_output_shape, in double */
    double size = short_side, scale = size / (h < w ? h : w);
    double newh, neww;
    if (h < w) {
        newh = size;
        neww = scale * w;
    } else {
        newh = scale * h;
        neww = size;
    }
    double m = newh > neww ? newh : neww;
    if (m > max_size) {
        scale = max_size / m;
        newh *= scale;
        neww *= scale;
    }
    uint32_t W = (uint32_t)(neww + 0.5), H = (uint32_t)(newh + 0.5);
    *ow = W ? W : 1;
    *oh = H ? H : 1;
}

/* ---------------------------------------------------------------- new */

eq_det *eq_det_new(const eq_cocoidx *idx, const char *img_root, const eq_det_cfg *cfg, eq_err *err)
{
    const char *bad = NULL;
    if (!idx || !img_root || !cfg) bad = "index, image root and config are required";
    else if (cfg->n_min_sizes < 1 || cfg->n_min_sizes > EQ_DET_MAX_SIZES) bad = "min_sizes: 1..16 sizes";
    else if (cfg->max_size < 1 || cfg->max_size > EQ_DET_MAX_SIDE) bad = "max_size: 1..8192";
    else if (cfg->pad_divisor > 1024) bad = "pad_divisor: 0..1024";
    else if ((unsigned)cfg->box_format >= EQ_BOX_FORMAT_COUNT) bad = "box_format unknown";
    else if (!(cfg->min_box >= 0 && cfg->min_box < 1e6)) bad = "min_box: 0..1e6";
    else if (cfg->sampler.global_batch < 1) bad = "global_batch must be >= 1";
    for (uint32_t i = 0; !bad && cfg && i < cfg->n_min_sizes; i++)
        if (cfg->min_sizes[i] < 1 || cfg->min_sizes[i] > EQ_DET_MAX_SIDE) bad = "min_sizes: each in 1..8192";
    if (bad) {
        eq_err_set(err, EQ_ERR_INVALID, "detection pipeline: %s", bad);
        return NULL;
    }
    eq_det *d = calloc(1, sizeof *d);
    if (!d || !(d->root = strdup(img_root)) || !(d->keep = eq_malloc_array((size_t)idx->n_img + 1, sizeof *d->keep))) {
        eq_det_destroy(&d);
        eq_err_set(err, EQ_ERR_NOMEM, "detection pipeline: out of memory");
        return NULL;
    }
    d->idx = idx;
    d->cfg = *cfg;
    for (uint32_t i = 0; i < idx->n_img; i++)
        if (!cfg->skip_empty || eq_cocoidx_usable(idx, i)) d->keep[d->nkeep++] = i;
    if (d->nkeep == 0) {
        eq_err_set(err, EQ_ERR_NOTFOUND, "detection pipeline: no image to serve (%u images%s)", idx->n_img,
                   cfg->skip_empty ? ", none with a usable annotation" : "");
        eq_det_destroy(&d);
        return NULL;
    }
    if (!(d->sampler = eq_sampler_new(&cfg->sampler, d->nkeep, err))) eq_det_destroy(&d);
    return d;
}

void eq_det_destroy(eq_det **self_p)
{
    if (!self_p || !*self_p) return;
    eq_det *d = *self_p;
    eq_sampler_destroy(&d->sampler);
    free(d->root);
    free(d->keep);
    free(d);
    *self_p = NULL;
}

const eq_det_cfg *eq_det_config(const eq_det *d) { return &d->cfg; }
size_t eq_det_size(const eq_det *d) { return d->nkeep; }
uint32_t eq_det_image(const eq_det *d, size_t pos) { return pos < d->nkeep ? d->keep[pos] : UINT32_MAX; }
const eq_cocoidx *eq_det_index(const eq_det *d) { return d->idx; }

static uint32_t s_round_up(uint32_t v, uint32_t div) { return div > 1 ? (v + div - 1) / div * div : v; }

uint32_t eq_det_max_side(const eq_det *d)
{
    uint32_t m = d->cfg.max_size;
    for (uint32_t i = 0; i < d->cfg.n_min_sizes; i++)
        if (d->cfg.min_sizes[i] > m) m = d->cfg.min_sizes[i];
    return s_round_up(m, d->cfg.pad_divisor);
}

/* ------------------------------------------------------------- sample */

void eq_det_sample_free(eq_det_sample *s)
{
    if (!s) return;
    free(s->pix);
    free(s->boxes);
    free(s->cls);
    free(s->crowd);
    free(s->mkind);
    free(s->mrect);
    free(s->moff);
    free(s->mdata);
    free(s->tmp);
    memset(s, 0, sizeof *s);
}

static eq_status s_grow(void **p, size_t *cap, size_t need, eq_err *err)
{
    if (*cap >= need) return EQ_OK;
    size_t nc = *cap ? *cap : 64;
    while (nc < need) nc *= 2;
    void *q = realloc(*p, nc);
    if (!q) return eq_err_set(err, EQ_ERR_NOMEM, "detection sample: out of memory (%zu bytes)", nc);
    *p = q;
    *cap = nc;
    return EQ_OK;
}

static eq_status s_reserve(eq_det_sample *s, uint32_t n, eq_err *err)
{
    if (s->cap >= n && s->moff) return EQ_OK;
    uint32_t c = n < 8 ? 8 : n;
    float *b = realloc(s->boxes, (size_t)c * 4 * sizeof *b);
    if (b) s->boxes = b;
    int32_t *k = realloc(s->cls, (size_t)c * sizeof *k);
    if (k) s->cls = k;
    uint8_t *cr = realloc(s->crowd, c);
    if (cr) s->crowd = cr;
    uint8_t *mk = realloc(s->mkind, c);
    if (mk) s->mkind = mk;
    int32_t *mr = realloc(s->mrect, (size_t)c * 4 * sizeof *mr);
    if (mr) s->mrect = mr;
    uint64_t *mo = realloc(s->moff, ((size_t)c + 1) * sizeof *mo);
    if (mo) s->moff = mo;
    if (!b || !k || !cr || !mk || !mr || !mo) return eq_err_set(err, EQ_ERR_NOMEM, "detection sample: out of memory");
    s->cap = c;
    return EQ_OK;
}

static size_t s_varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint8_t *s_varint_put(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* Append the encoding of m[0..n) (0/1 bytes) to the sample's mask data;
 * returns the kind chosen. */
static eq_status s_mask_append(eq_det_sample *s, const uint8_t *m, size_t n, uint8_t *kind, eq_err *err)
{
    size_t rle = 0, run = 0;
    uint8_t cur = 0;
    for (size_t i = 0; i < n; i++) {
        if (m[i] != cur) {
            rle += s_varint_len(run);
            run = 0;
            cur ^= 1;
        }
        run++;
    }
    rle += s_varint_len(run);
    size_t bm = (n + 7) / 8;
    size_t need = bm <= rle ? bm : rle;
    if (s_grow((void **)&s->mdata, &s->mdata_cap, s->mdata_len + need, err)) return EQ_ERR_NOMEM;
    uint8_t *o = s->mdata + s->mdata_len;
    if (bm <= rle) {
        memset(o, 0, bm);
        for (size_t i = 0; i < n; i++)
            if (m[i]) o[i >> 3] |= (uint8_t)(1u << (i & 7));
        *kind = EQ_DET_MASK_BITMAP;
    } else {
        uint8_t *p = o;
        run = 0;
        cur = 0;
        for (size_t i = 0; i < n; i++) {
            if (m[i] != cur) {
                p = s_varint_put(p, run);
                run = 0;
                cur ^= 1;
            }
            run++;
        }
        p = s_varint_put(p, run);
        *kind = EQ_DET_MASK_RLE;
    }
    s->mdata_len += need;
    return EQ_OK;
}

eq_status eq_det_mask_decode(uint8_t kind, uint32_t w, uint32_t h, const uint8_t *data, size_t len, uint8_t *out,
                             eq_err *err)
{
    size_t n = (size_t)w * h;
    if (kind == EQ_DET_MASK_BITMAP) {
        if (len != (n + 7) / 8)
            return eq_err_set(err, EQ_ERR_PROTO, "mask bitmap of %zu bytes for %ux%u pixels", len, w, h);
        for (size_t i = 0; i < n; i++) out[i] = (data[i >> 3] >> (i & 7)) & 1;
        return EQ_OK;
    }
    if (kind != EQ_DET_MASK_RLE) return eq_err_set(err, EQ_ERR_PROTO, "mask kind %u unknown", kind);
    size_t pos = 0, i = 0;
    uint8_t cur = 0;
    while (i < len) {
        uint64_t v = 0;
        int shift = 0;
        for (;;) {
            if (i >= len || shift > 56) return eq_err_set(err, EQ_ERR_PROTO, "mask RLE: bad varint at byte %zu", i);
            uint8_t b = data[i++];
            v |= (uint64_t)(b & 0x7f) << shift;
            shift += 7;
            if (!(b & 0x80)) break;
        }
        if (v > n - pos) return eq_err_set(err, EQ_ERR_PROTO, "mask RLE: runs exceed %ux%u pixels", w, h);
        memset(out + pos, cur, (size_t)v);
        pos += (size_t)v;
        cur ^= 1;
    }
    if (pos != n) return eq_err_set(err, EQ_ERR_PROTO, "mask RLE: runs cover %zu of %zu pixels", pos, n);
    return EQ_OK;
}

/* Pixels of an output-size RLE (column-major, h = oh) inside the rect
 * [rx, rx+rw) x [ry, ry+rh) into m (column-major, rh rows), 0/1. */
static void s_rle_crop(const eq_rle *r, uint32_t oh, int32_t rx, int32_t ry, int32_t rw, int32_t rh, uint8_t *m)
{
    memset(m, 0, (size_t)rw * rh);
    uint64_t p = 0;
    for (size_t k = 0; k < r->m; k++) {
        uint64_t len = r->cnts[k];
        if (k & 1) {
            uint64_t q = p, end = p + len;
            while (q < end) {
                uint64_t col = q / oh, row = q % oh;
                uint64_t stop = end - q < oh - row ? end : q + (oh - row); /* end of this column piece */
                if (col >= (uint64_t)rx && col < (uint64_t)(rx + rw)) {
                    uint64_t r0 = row > (uint64_t)ry ? row : (uint64_t)ry;
                    uint64_t r1 = row + (stop - q);
                    if (r1 > (uint64_t)(ry + rh)) r1 = (uint64_t)(ry + rh);
                    if (r0 < r1) memset(m + (col - rx) * (uint64_t)rh + (r0 - ry), 1, (size_t)(r1 - r0));
                }
                q = stop;
            }
        }
        p += len;
    }
}

/* The mask of annotation a for this sample, cropped to the rect. */
static eq_status s_mask(const eq_det *d, const eq_cocoidx_img *im, const eq_cocoidx_ann *a, eq_det_sample *s,
                        double sx, double sy, int flip, const int32_t rect[4], uint8_t *kind, eq_err *err)
{
    const eq_cocoidx *x = d->idx;
    size_t rn = (size_t)rect[2] * rect[3];
    size_t need = rn;
    if (a->seg == EQ_COCOIDX_SEG_POLY) {
        uint64_t nv = 0;
        for (uint32_t r = 0; r < a->seg_n; r++) nv += x->rings[a->seg_ring + r];
        need = rn + 8 + (size_t)nv * sizeof(double);
    }
    if (s_grow((void **)&s->tmp, &s->tmp_cap, need + 8, err)) return EQ_ERR_NOMEM;
    uint8_t *m = s->tmp;
    uint32_t ow = s->w, oh = s->h;
    if (a->seg == EQ_COCOIDX_SEG_POLY) {
        double *xy = (double *)(void *)(s->tmp + ((rn + 7) & ~(size_t)7));
        eq_rle *rl = calloc(a->seg_n ? a->seg_n : 1, sizeof *rl);
        if (!rl) return eq_err_set(err, EQ_ERR_NOMEM, "mask: out of memory");
        uint64_t v0 = a->seg_off;
        int ok = 1;
        for (uint32_t r = 0; r < a->seg_n && ok; r++) {
            uint32_t len = x->rings[a->seg_ring + r];
            int far = 0;
            for (uint32_t q = 0; q < len; q += 2) {
                double vx = x->coords[v0 + q] * sx, vy = x->coords[v0 + q + 1] * sy;
                xy[q] = flip ? ow - vx : vx;
                xy[q + 1] = vy;
                /* the rasteriser's work and memory grow with the outline's
                 * length: vertices far outside the image are refused */
                far |= !(xy[q] >= -(double)ow && xy[q] <= 2.0 * ow && vy >= -(double)oh && vy <= 2.0 * oh);
            }
            v0 += len;
            eq_err e = {0};
            if (far) {
                eq_debug("coco: image %" PRId64 ": polygon reaches more than an image size outside it: empty mask",
                         im->id);
                ok = 0;
            } else if (eq_rle_fr_poly(xy, len / 2, oh, ow, &rl[r], &e) != EQ_OK) {
                eq_debug("coco: image %" PRId64 ": polygon not rasterised: %s", im->id, e.msg);
                ok = 0;
            }
        }
        eq_rle u = {0};
        eq_err e = {0};
        if (ok && a->seg_n > 1 && eq_rle_merge(rl, a->seg_n, 0, &u, &e) != EQ_OK) ok = 0;
        if (ok)
            s_rle_crop(a->seg_n > 1 ? &u : &rl[0], oh, rect[0], rect[1], rect[2], rect[3], m);
        else
            memset(m, 0, rn);
        eq_rle_free(&u);
        for (uint32_t r = 0; r < a->seg_n; r++) eq_rle_free(&rl[r]);
        free(rl);
    } else {
        /* RLE: nearest resample (and mirror) read straight from the runs,
         * so memory stays the rect's whatever the annotated size: the
         * rect's columns are visited in increasing source column, rows in
         * increasing source row, i.e. increasing source pixel index. */
        uint32_t W = im->width, H = im->height;
        const uint32_t *cn = x->counts + a->seg_off;
        size_t run = 0;
        uint64_t run_end = a->seg_n ? cn[0] : UINT64_MAX;
        int64_t prev_src = -1;
        int32_t prev_cx = -1;
        for (int32_t t = 0; t < rect[2]; t++) {
            int32_t cx = flip ? rect[2] - 1 - t : t; /* flipped: right to left is increasing source x */
            uint32_t ox = (uint32_t)(rect[0] + cx);
            uint32_t ux = flip ? ow - 1 - ox : ox;
            uint64_t srcx = (uint64_t)(((double)ux + 0.5) * W / ow);
            if (srcx >= W) srcx = W - 1;
            uint8_t *col = m + (size_t)cx * rect[3];
            if ((int64_t)srcx == prev_src) {
                memcpy(col, m + (size_t)prev_cx * rect[3], (size_t)rect[3]);
                continue;
            }
            prev_src = (int64_t)srcx;
            prev_cx = cx;
            for (int32_t cy = 0; cy < rect[3]; cy++) {
                uint32_t oy = (uint32_t)(rect[1] + cy);
                uint64_t srcy = (uint64_t)(((double)oy + 0.5) * H / oh);
                if (srcy >= H) srcy = H - 1;
                uint64_t idx = srcx * H + srcy;
                while (idx >= run_end && run + 1 < a->seg_n) run_end += cn[++run];
                col[cy] = idx < run_end ? (uint8_t)(run & 1) : 0;
            }
        }
    }
    return s_mask_append(s, m, rn, kind, err);
}

static void s_substitute(eq_det_sample *s)
{
    static const uint8_t mean[3] = {124, 116, 104};
    size_t n = (size_t)s->w * s->h;
    for (size_t i = 0; i < n; i++) memcpy(s->pix + 3 * i, mean, 3);
}

static eq_status s_image(const eq_det *d, eq_decoder *dec, const eq_cocoidx_img *im, eq_det_sample *s, eq_err *err)
{
    eq_scratch *w = eq_decoder_scratch(dec);
    char path[8192];
    const char *file = d->idx->names + im->file;
    if ((size_t)snprintf(path, sizeof path, "%s/%s", d->root, file) >= sizeof path)
        return eq_err_set(err, EQ_ERR_LIMIT, "path too long: %s/%s", d->root, file);
    size_t len = 0;
    if (eq_read_file(path, &w->file, &w->file_cap, &len, S_MAX_FILE, err) != EQ_OK) return err->code;
    eq_img_format fmt;
    uint32_t W, H, num;
    if (eq_decode_info(dec, w->file, len, &fmt, &W, &H, err) != EQ_OK) return eq_err_prefix(err, "%s: ", path);
    if (W != im->width || H != im->height)
        /* the boxes and masks are in the annotated frame: stretching the
         * file to it would misplace them (detectron2: SizeMismatchError) */
        return eq_err_set(err, EQ_ERR_CORRUPT, "%s: the file is %ux%u but the annotations say %ux%u (width x height)",
                          path, W, H, im->width, im->height);
    eq_box b = {0, 0, (int32_t)H, (int32_t)W};
    eq_resize_geom g;
    eq_crop_geometry(W, H, b, s->w, s->h, fmt == EQ_IMG_JPEG ? d->cfg.dct_scale : EQ_DCT_OFF, &num, &g);
    uint32_t sx0, sy0, sx1, sy1;
    eq_resize_taps(&g, &sx0, &sy0, &sx1, &sy1);
    eq_decoded dd;
    if (eq_decode_region(dec, w->file, len, num, sx0, sy0, sx1, sy1, &dd, err) != EQ_OK)
        return eq_err_prefix(err, "%s: ", path);
    if (dd.sw != eq_decode_scaled(W, num) || dd.sh != eq_decode_scaled(H, num))
        return eq_err_set(err, EQ_ERR_INTERNAL, "%s: decoder scaled %ux%u by %u/8 to %ux%u", path, W, H, num, dd.sw,
                          dd.sh);
    eq_resize_src src = {dd.pix, dd.x0, dd.y0, dd.w, dd.h, 3};
    if (eq_resize_bilinear(&src, &g, s->pix, &w->tmp, &w->tmp_cap, err) != EQ_OK) return err->code;
    return EQ_OK;
}

eq_status eq_det_make(const eq_det *d, eq_decoder *dec, uint64_t epoch, size_t pos, eq_det_sample *s, eq_err *err)
{
    if (pos >= d->nkeep)
        return eq_err_set(err, EQ_ERR_INVALID, "detection pipeline: position %zu out of range [0, %zu)", pos, d->nkeep);
    const eq_det_cfg *c = &d->cfg;
    const uint32_t ii = d->keep[pos];
    const eq_cocoidx_img *im = &d->idx->img[ii];
    eq_rng r;
    eq_rng_init(&r, c->sampler.seed, eq_rng_mix(eq_rng_mix(eq_rng_mix(EQ_TAG_AUG, c->sampler.split), epoch), ii));
    uint32_t S = c->min_sizes[c->n_min_sizes > 1 ? eq_rng_below(&r, c->n_min_sizes) : 0];
    int flip = c->hflip ? eq_rng_uniform(&r) < 0.5f : 0;
    uint32_t ow, oh;
    eq_det_output_size(im->width, im->height, S, c->max_size, &ow, &oh);
    s->image = ii;
    s->image_id = im->id;
    s->w = ow;
    s->h = oh;
    double sx = (double)ow / im->width, sy = (double)oh / im->height;
    s->scale_x = (float)sx;
    s->scale_y = (float)sy;
    s->flipped = (uint8_t)flip;
    s->replaced = 0;
    s->dropped = 0;
    s->n = 0;
    s->mdata_len = 0;
    if (s_grow((void **)&s->pix, &s->pix_cap, (size_t)ow * oh * 3, err)) return EQ_ERR_NOMEM;
    if (s_reserve(s, im->nann, err)) return EQ_ERR_NOMEM;
    eq_err e = {0};
    if (s_image(d, dec, im, s, &e) != EQ_OK) {
        if (e.code == EQ_ERR_NOMEM) return eq_err_set(err, EQ_ERR_NOMEM, "%s", e.msg);
        eq_warn("coco: image %" PRId64 " (%s) replaced by a substitute: %s", im->id, eq_cocoidx_file(d->idx, ii),
                e.msg);
        s_substitute(s);
        s->replaced = 1;
    } else if (flip) {
        eq_hflip(s->pix, ow, oh, 3);
    }
    s->moff[0] = 0;
    for (uint32_t q = 0; q < im->nann; q++) {
        const eq_cocoidx_ann *a = &d->idx->ann[im->ann0 + q];
        double x0 = a->bbox[0] * sx, x1 = (a->bbox[0] + a->bbox[2]) * sx;
        double y0 = a->bbox[1] * sy, y1 = (a->bbox[1] + a->bbox[3]) * sy;
        if (flip) {
            double t = ow - x1;
            x1 = ow - x0;
            x0 = t;
        }
        x0 = x0 < 0 ? 0 : x0 > ow ? ow : x0;
        x1 = x1 < 0 ? 0 : x1 > ow ? ow : x1;
        y0 = y0 < 0 ? 0 : y0 > oh ? oh : y0;
        y1 = y1 < 0 ? 0 : y1 > oh ? oh : y1;
        if (!(x1 - x0 > c->min_box) || !(y1 - y0 > c->min_box)) {
            s->dropped++;
            continue;
        }
        uint32_t k = s->n++;
        float *bx = s->boxes + 4 * (size_t)k;
        bx[0] = (float)x0;
        bx[1] = (float)y0;
        bx[2] = (float)x1;
        bx[3] = (float)y1;
        s->cls[k] = a->cls;
        s->crowd[k] = a->crowd;
        int32_t *rc = s->mrect + 4 * (size_t)k;
        int32_t rx0 = (int32_t)floor(x0), ry0 = (int32_t)floor(y0);
        int32_t rx1 = (int32_t)ceil(x1), ry1 = (int32_t)ceil(y1);
        if (rx1 <= rx0) rx1 = rx0 + 1;
        if (ry1 <= ry0) ry1 = ry0 + 1;
        if (rx1 > (int32_t)ow) rx0 -= rx1 - (int32_t)ow, rx1 = (int32_t)ow;
        if (ry1 > (int32_t)oh) ry0 -= ry1 - (int32_t)oh, ry1 = (int32_t)oh;
        rc[0] = rx0;
        rc[1] = ry0;
        rc[2] = rx1 - rx0;
        rc[3] = ry1 - ry0;
        s->mkind[k] = EQ_DET_MASK_NONE;
        if (c->masks && a->seg != EQ_COCOIDX_SEG_NONE) {
            eq_status st = s_mask(d, im, a, s, sx, sy, flip, rc, &s->mkind[k], err);
            if (st) return st;
        }
        s->moff[k + 1] = s->mdata_len;
    }
    return EQ_OK;
}

/* ------------------------------------------------------------ collate */

void eq_det_batch_free(eq_det_batch *b)
{
    if (!b) return;
    free(b->images);
    free(b->image_ids);
    free(b->sizes);
    free(b->scales);
    free(b->flipped);
    free(b->dropped);
    free(b->box_off);
    free(b->boxes);
    free(b->classes);
    free(b->crowd);
    free(b->mask_kind);
    free(b->mask_rect);
    free(b->mask_off);
    free(b->mask_data);
    memset(b, 0, sizeof *b);
}

eq_status eq_det_collate(const eq_det *d, const eq_det_sample *s, uint32_t n, eq_det_batch *b, eq_err *err)
{
    memset(b, 0, sizeof *b);
    if (n < 1) return eq_err_set(err, EQ_ERR_INVALID, "collate: no sample");
    uint32_t H = 0, W = 0;
    uint64_t nbox = 0, mbytes = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (s[i].h > H) H = s[i].h;
        if (s[i].w > W) W = s[i].w;
        nbox += s[i].n;
        mbytes += s[i].mdata_len;
    }
    if (nbox > INT32_MAX) return eq_err_set(err, EQ_ERR_LIMIT, "collate: %" PRIu64 " boxes", nbox);
    H = s_round_up(H, d->cfg.pad_divisor);
    W = s_round_up(W, d->cfg.pad_divisor);
    b->n = n;
    b->H = H;
    b->W = W;
    b->nbox = (uint32_t)nbox;
    b->masks = d->cfg.masks;
    b->images = calloc((size_t)n * H * W * 3 + 1, 1);
    b->image_ids = eq_malloc_array(n, sizeof *b->image_ids);
    b->sizes = eq_malloc_array((size_t)n * 2, sizeof *b->sizes);
    b->scales = eq_malloc_array((size_t)n * 2, sizeof *b->scales);
    b->flipped = eq_malloc_array(n, 1);
    b->dropped = eq_malloc_array(n, sizeof *b->dropped);
    b->box_off = eq_malloc_array((size_t)n + 1, sizeof *b->box_off);
    b->boxes = eq_malloc_array(nbox * 4 + 1, sizeof *b->boxes);
    b->classes = eq_malloc_array(nbox + 1, sizeof *b->classes);
    b->crowd = eq_malloc_array(nbox + 1, 1);
    int ok = b->images && b->image_ids && b->sizes && b->scales && b->flipped && b->dropped && b->box_off &&
             b->boxes && b->classes && b->crowd;
    if (ok && b->masks) {
        b->mask_kind = eq_malloc_array(nbox + 1, 1);
        b->mask_rect = eq_malloc_array(nbox * 4 + 1, sizeof *b->mask_rect);
        b->mask_off = eq_malloc_array(nbox + 1, sizeof *b->mask_off);
        b->mask_data = malloc(mbytes + 1);
        ok = b->mask_kind && b->mask_rect && b->mask_off && b->mask_data;
    }
    if (!ok) {
        eq_det_batch_free(b);
        return eq_err_set(err, EQ_ERR_NOMEM, "collate: out of memory for %u images of %ux%u", n, H, W);
    }
    uint32_t k = 0;
    uint64_t mo = 0;
    if (b->masks) b->mask_off[0] = 0;
    for (uint32_t i = 0; i < n; i++) {
        const eq_det_sample *si = &s[i];
        for (uint32_t y = 0; y < si->h; y++)
            memcpy(b->images + (((size_t)i * H + y) * W) * 3, si->pix + (size_t)y * si->w * 3, (size_t)si->w * 3);
        b->image_ids[i] = si->image_id;
        b->sizes[2 * i] = (int32_t)si->h;
        b->sizes[2 * i + 1] = (int32_t)si->w;
        b->scales[2 * i] = si->scale_y;
        b->scales[2 * i + 1] = si->scale_x;
        b->flipped[i] = si->flipped;
        b->dropped[i] = (int32_t)si->dropped;
        b->n_replaced += si->replaced;
        b->box_off[i] = (int32_t)k;
        for (uint32_t q = 0; q < si->n; q++, k++) {
            const float *x = si->boxes + 4 * (size_t)q;
            float *o = b->boxes + 4 * (size_t)k;
            switch (d->cfg.box_format) {
            case EQ_BOX_XYWH: o[0] = x[0], o[1] = x[1], o[2] = x[2] - x[0], o[3] = x[3] - x[1]; break;
            case EQ_BOX_CXCYWH:
                o[0] = (x[0] + x[2]) / 2, o[1] = (x[1] + x[3]) / 2, o[2] = x[2] - x[0], o[3] = x[3] - x[1];
                break;
            default: memcpy(o, x, 4 * sizeof *o);
            }
            b->classes[k] = si->cls[q];
            b->crowd[k] = si->crowd[q];
            if (b->masks) {
                b->mask_kind[k] = si->mkind[q];
                memcpy(b->mask_rect + 4 * (size_t)k, si->mrect + 4 * (size_t)q, 4 * sizeof(int32_t));
                uint64_t len = si->moff[q + 1] - si->moff[q];
                memcpy(b->mask_data + mo, si->mdata + si->moff[q], len);
                mo += len;
                b->mask_off[k + 1] = (int64_t)mo;
            }
        }
    }
    b->box_off[n] = (int32_t)k;
    b->mask_bytes = mo;
    return EQ_OK;
}

/* ------------------------------------------------------------ batches */

typedef struct s_bjob {
    const eq_det *d;
    eq_decoder **decs;
    uint64_t epoch;
    const uint32_t *pos;
    eq_det_sample *s;
    eq_status *st;
    eq_err *errs;
} s_bjob;

static void s_bjob_fn(void *ctx, size_t i, int worker)
{
    s_bjob *j = ctx;
    j->st[i] = eq_det_make(j->d, j->decs[worker], j->epoch, j->pos[i], &j->s[i], &j->errs[i]);
}

eq_status eq_det_batch_make(const eq_det *d, struct eq_pool *pool, eq_decoder **decs, uint64_t epoch, uint64_t step,
                            uint32_t offset, uint32_t count, eq_det_batch *out, eq_err *err)
{
    memset(out, 0, sizeof *out);
    uint32_t *pos = eq_malloc_array(count ? count : 1, sizeof *pos), n = 0;
    eq_det_sample *s = eq_calloc_array(count ? count : 1, sizeof *s);
    eq_status *st = eq_calloc_array(count ? count : 1, sizeof *st);
    eq_err *errs = eq_calloc_array(count ? count : 1, sizeof *errs);
    eq_status ret = EQ_OK;
    if (!pos || !s || !st || !errs) {
        ret = eq_err_set(err, EQ_ERR_NOMEM, "detection batch: out of memory");
        goto out;
    }
    if ((ret = eq_sampler_range(d->sampler, epoch, step, offset, count, pos, &n, err))) goto out;
    if (n == 0) {
        ret = eq_err_set(err, EQ_ERR_INVALID, "detection batch: positions past the end of the epoch");
        goto out;
    }
    s_bjob j = {d, decs, epoch, pos, s, st, errs};
    eq_pool_for(pool, n, s_bjob_fn, &j);
    for (uint32_t i = 0; i < n; i++)
        if (st[i]) {
            ret = eq_err_set(err, st[i], "%s", errs[i].msg);
            goto out;
        }
    ret = eq_det_collate(d, s, n, out, err);
out:
    if (s)
        for (uint32_t i = 0; i < count; i++) eq_det_sample_free(&s[i]);
    free(s);
    free(pos);
    free(st);
    free(errs);
    return ret;
}
