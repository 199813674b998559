/*
 * loader/coco_synth.c -- a small synthetic COCO-format set (coco.h):
 * polygons whose pixels are exactly the evaluator's rasterisation of their
 * annotation, so boxes and masks can be checked against the pictures.
 */
#include "loader/coco.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <turbojpeg.h>

#include "core/rng.h"
#include "evaluator/mask.h"

#define S_TAG 0x434f434f53594eull /* "COCOSYN" */

static eq_status s_mkdir(const char *path, eq_err *err)
{
    if (mkdir(path, 0777) != 0 && errno != EEXIST)
        return eq_err_set(err, EQ_ERR_IO, "%s: mkdir: %s", path, strerror(errno));
    return EQ_OK;
}

static void s_colour(uint32_t cls, uint8_t rgb[3])
{
    /* well separated hues, bright */
    double h = fmod(cls * 0.618033988749895, 1.0) * 6.0, f = h - floor(h);
    double v = 230, p = 40, q = v - (v - p) * f, t = p + (v - p) * f;
    double c[3];
    switch ((int)h % 6) {
    case 0: c[0] = v, c[1] = t, c[2] = p; break;
    case 1: c[0] = q, c[1] = v, c[2] = p; break;
    case 2: c[0] = p, c[1] = v, c[2] = t; break;
    case 3: c[0] = p, c[1] = q, c[2] = v; break;
    case 4: c[0] = t, c[1] = p, c[2] = v; break;
    default: c[0] = v, c[1] = p, c[2] = q; break;
    }
    for (int i = 0; i < 3; i++) rgb[i] = (uint8_t)c[i];
}

/* Paint the pixels of an RLE (column-major h x w) into an RGB image. */
static void s_paint(uint8_t *img, uint32_t w, uint32_t h, const uint8_t *mask, const uint8_t rgb[3])
{
    for (uint32_t x = 0; x < w; x++)
        for (uint32_t y = 0; y < h; y++)
            if (mask[(size_t)x * h + y]) memcpy(img + ((size_t)y * w + x) * 3, rgb, 3);
}

static eq_status s_split(const char *root, const char *split, uint32_t n, uint64_t id0, const eq_coco_synth_cfg *c,
                         tjhandle tj, eq_err *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s2017", root, split);
    if (s_mkdir(path, err)) return EQ_ERR_IO;
    snprintf(path, sizeof path, "%s/annotations/instances_%s2017.json", root, split);
    FILE *js = fopen(path, "w");
    if (!js) return eq_err_set(err, EQ_ERR_IO, "%s: %s", path, strerror(errno));
    eq_status st = EQ_OK;
    uint32_t lo = c->min_side ? c->min_side : 160, hi = c->max_side ? c->max_side : 320;
    fprintf(js, "{\"info\": {\"description\": \"eq synthetic COCO\"},\n\"images\": [");
    for (uint32_t i = 0; i < n; i++) {
        eq_rng r;
        eq_rng_init(&r, c->seed, eq_rng_mix(eq_rng_mix(S_TAG, id0), i));
        uint32_t w = lo + eq_rng_below(&r, hi - lo + 1), h = lo + eq_rng_below(&r, hi - lo + 1);
        fprintf(js, "%s\n{\"id\": %" PRIu64 ", \"width\": %u, \"height\": %u, \"file_name\": \"%012" PRIu64 ".jpg\"}",
                i ? "," : "", id0 + i, w, h, id0 + i);
    }
    fprintf(js, "],\n\"annotations\": [");
    uint64_t ann_id = id0 * 10 + 1;
    int first = 1;
    uint8_t *img = NULL, *mask = NULL;
    unsigned char *jpg = NULL;
    for (uint32_t i = 0; i < n && !st; i++) {
        eq_rng r;
        eq_rng_init(&r, c->seed, eq_rng_mix(eq_rng_mix(S_TAG, id0), i));
        uint32_t w = lo + eq_rng_below(&r, hi - lo + 1), h = lo + eq_rng_below(&r, hi - lo + 1);
        free(img);
        free(mask);
        img = malloc((size_t)w * h * 3);
        mask = malloc((size_t)w * h);
        if (!img || !mask) {
            st = eq_err_set(err, EQ_ERR_NOMEM, "coco synth: out of memory");
            break;
        }
        /* background: a soft gradient */
        double g0 = 60 + 80 * eq_rng_uniform_double(&r), gx = 60 * eq_rng_uniform_double(&r) / w,
               gy = 60 * eq_rng_uniform_double(&r) / h;
        for (uint32_t y = 0; y < h; y++)
            for (uint32_t x = 0; x < w; x++) {
                uint8_t v = (uint8_t)(g0 + gx * x + gy * y);
                uint8_t *p = img + ((size_t)y * w + x) * 3;
                p[0] = v, p[1] = (uint8_t)(v * 0.9), p[2] = (uint8_t)(v * 0.8);
            }
        uint32_t nshapes = (i % 7 == 6) ? 0 : 1 + eq_rng_below(&r, 4);
        for (uint32_t k = 0; k < nshapes && !st; k++) {
            uint32_t cls = eq_rng_below(&r, c->classes), nv = 3 + eq_rng_below(&r, 3);
            double cx = w * (0.15 + 0.7 * eq_rng_uniform_double(&r)), cy = h * (0.15 + 0.7 * eq_rng_uniform_double(&r));
            double rad = (w < h ? w : h) * (0.08 + 0.17 * eq_rng_uniform_double(&r));
            double ph = 2 * M_PI * eq_rng_uniform_double(&r), xy[10];
            double x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
            for (uint32_t v = 0; v < nv; v++) {
                double a = ph + 2 * M_PI * v / nv, rr = rad * (0.7 + 0.3 * eq_rng_uniform_double(&r));
                /* quarter pixels: exact in binary and in decimal */
                double vx = floor((cx + rr * cos(a)) * 4) / 4, vy = floor((cy + rr * sin(a)) * 4) / 4;
                vx = vx < 0 ? 0 : vx > w ? w : vx;
                vy = vy < 0 ? 0 : vy > h ? h : vy;
                xy[2 * v] = vx, xy[2 * v + 1] = vy;
                x0 = fmin(x0, vx), y0 = fmin(y0, vy), x1 = fmax(x1, vx), y1 = fmax(y1, vy);
            }
            eq_rle rl = {0};
            if ((st = eq_rle_fr_poly(xy, nv, h, w, &rl, err))) break;
            if ((st = eq_rle_decode(&rl, mask, err))) {
                eq_rle_free(&rl);
                break;
            }
            uint8_t rgb[3];
            s_colour(cls, rgb);
            s_paint(img, w, h, mask, rgb);
            fprintf(js, "%s\n{\"id\": %" PRIu64 ", \"image_id\": %" PRIu64 ", \"category_id\": %u, \"iscrowd\": 0, "
                        "\"area\": %u, \"bbox\": [%.2f, %.2f, %.2f, %.2f], \"segmentation\": [[",
                    first ? "" : ",", ann_id++, id0 + i, cls + 1, eq_rle_area(&rl), x0, y0, x1 - x0, y1 - y0);
            first = 0;
            for (uint32_t v = 0; v < 2 * nv; v++) fprintf(js, "%s%.2f", v ? ", " : "", xy[v]);
            fprintf(js, "]]}");
            eq_rle_free(&rl);
        }
        if (i % 5 == 4 && !st) {
            /* a crowd region: an axis-aligned ellipse given as RLE counts */
            uint32_t cls = eq_rng_below(&r, c->classes);
            double cx = w * (0.3 + 0.4 * eq_rng_uniform_double(&r)), cy = h * (0.3 + 0.4 * eq_rng_uniform_double(&r));
            double rx = w * 0.12, ry = h * 0.1;
            for (uint32_t x = 0; x < w; x++)
                for (uint32_t y = 0; y < h; y++) {
                    double dx = (x + 0.5 - cx) / rx, dy = (y + 0.5 - cy) / ry;
                    mask[(size_t)x * h + y] = dx * dx + dy * dy <= 1;
                }
            eq_rle rl = {0};
            if ((st = eq_rle_encode(mask, h, w, &rl, err))) break;
            double bb[4];
            eq_rle_to_bbox(&rl, bb);
            uint8_t rgb[3];
            s_colour(cls, rgb);
            for (int q = 0; q < 3; q++) rgb[q] = (uint8_t)(rgb[q] / 2 + 64);
            s_paint(img, w, h, mask, rgb);
            fprintf(js, "%s\n{\"id\": %" PRIu64 ", \"image_id\": %" PRIu64 ", \"category_id\": %u, \"iscrowd\": 1, "
                        "\"area\": %u, \"bbox\": [%g, %g, %g, %g], \"segmentation\": {\"size\": [%u, %u], \"counts\": [",
                    first ? "" : ",", ann_id++, id0 + i, cls + 1, eq_rle_area(&rl), bb[0], bb[1], bb[2], bb[3], h, w);
            first = 0;
            for (size_t q = 0; q < rl.m; q++) fprintf(js, "%s%u", q ? ", " : "", rl.cnts[q]);
            fprintf(js, "]}}");
            eq_rle_free(&rl);
        }
        if (st) break;
        unsigned long jlen = 0;
        if (tjCompress2(tj, img, (int)w, 0, (int)h, TJPF_RGB, &jpg, &jlen, TJSAMP_420, c->quality ? c->quality : 92,
                        0) != 0) {
            st = eq_err_set(err, EQ_ERR_INTERNAL, "coco synth: tjCompress2: %s", tjGetErrorStr2(tj));
            break;
        }
        snprintf(path, sizeof path, "%s/%s2017/%012" PRIu64 ".jpg", root, split, id0 + i);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(jpg, 1, jlen, f) != jlen || fclose(f) != 0) {
            st = eq_err_set(err, EQ_ERR_IO, "%s: %s", path, strerror(errno));
            if (f) fclose(f);
        }
        tjFree(jpg);
        jpg = NULL;
    }
    free(img);
    free(mask);
    fprintf(js, "],\n\"categories\": [");
    for (uint32_t k = 0; k < c->classes; k++)
        fprintf(js, "%s\n{\"id\": %u, \"name\": \"shape%02u\", \"supercategory\": \"shape\"}", k ? "," : "", k + 1, k);
    fprintf(js, "]}\n");
    if (fclose(js) != 0 && !st) st = eq_err_set(err, EQ_ERR_IO, "%s: %s", path, strerror(errno));
    return st;
}

eq_status eq_coco_synth(const char *root, const eq_coco_synth_cfg *cfg, eq_err *err)
{
    if (!root || !cfg || cfg->classes < 1 || cfg->classes > 80 || (cfg->train_images == 0 && cfg->val_images == 0) ||
        cfg->train_images > 1000000 || cfg->val_images > 1000000)
        return eq_err_set(err, EQ_ERR_INVALID, "coco synth: need a root, 1..80 classes and 1..1000000 images");
    uint32_t lo = cfg->min_side ? cfg->min_side : 160, hi = cfg->max_side ? cfg->max_side : 320;
    if (lo < 16 || hi < lo || hi > 4096)
        return eq_err_set(err, EQ_ERR_INVALID, "coco synth: sides must satisfy 16 <= min <= max <= 4096");
    char path[4096];
    if (s_mkdir(root, err)) return EQ_ERR_IO;
    snprintf(path, sizeof path, "%s/annotations", root);
    if (s_mkdir(path, err)) return EQ_ERR_IO;
    tjhandle tj = tjInitCompress();
    if (!tj) return eq_err_set(err, EQ_ERR_INTERNAL, "coco synth: tjInitCompress failed");
    eq_status st = EQ_OK;
    if (cfg->train_images) st = s_split(root, "train", cfg->train_images, 1, cfg, tj, err);
    if (!st && cfg->val_images) st = s_split(root, "val", cfg->val_images, 1000001, cfg, tj, err);
    tjDestroy(tj);
    return st;
}
