/*
 * loader/synth.c -- a synthetic ImageNet-like ImageFolder.
 *
 * Each image: a background of two random colours in a gradient with a low-
 * frequency texture and per-pixel noise (so JPEG cannot compress it to
 * nothing: ~110 KB at 0.2 MP, q90, 4:2:0), plus 1-3 shapes whose kind
 * (disc, square, triangle, ring) and hue are set by the class, with jitter
 * in size, position and colour.  A small CNN learns the classes; nothing
 * about them is in the file names.  Sizes spread like ImageNet's:
 * area = mean * exp(N(0, 0.3^2)), aspect ratio uniform in [3/4, 4/3].
 */
#include "loader/loader.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <turbojpeg.h>

#include "core/pool.h"
#include "core/rng.h"

static uint8_t s_u8(double v) { return v <= 0 ? 0 : v >= 255 ? 255 : (uint8_t)(v + 0.5); }

static void s_hue(double hue, double sat, double val, double rgb[3])
{
    double h6 = fmod(hue, 1.0) * 6.0, f = h6 - floor(h6);
    double p = val * (1 - sat), q = val * (1 - sat * f), t = val * (1 - sat * (1 - f));
    switch ((int)h6 % 6) {
    case 0: rgb[0] = val, rgb[1] = t, rgb[2] = p; break;
    case 1: rgb[0] = q, rgb[1] = val, rgb[2] = p; break;
    case 2: rgb[0] = p, rgb[1] = val, rgb[2] = t; break;
    case 3: rgb[0] = p, rgb[1] = q, rgb[2] = val; break;
    case 4: rgb[0] = t, rgb[1] = p, rgb[2] = val; break;
    default: rgb[0] = val, rgb[1] = p, rgb[2] = q; break;
    }
}

eq_status eq_synth_image(uint64_t seed, uint32_t cls, uint32_t nclasses, uint64_t index,
                         uint32_t w, uint32_t h, uint8_t **pix, eq_err *err)
{
    *pix = NULL;
    if (w == 0 || h == 0 || (uint64_t)w * h > (64u << 20) || nclasses == 0 || cls >= nclasses)
        return eq_err_set(err, EQ_ERR_INVALID, "synth: bad size %ux%u or class %u of %u", w, h,
                          cls, nclasses);
    uint8_t *img = malloc((size_t)w * h * 3);
    if (!img) return eq_err_set(err, EQ_ERR_NOMEM, "synth: out of memory");
    eq_rng r;
    eq_rng_init(&r, seed, eq_rng_mix(eq_rng_mix(0x53594e5448ull, cls), index));
    double c0[3], c1[3];
    s_hue(eq_rng_uniform_double(&r), 0.2 + 0.4 * eq_rng_uniform_double(&r),
          0.3 + 0.6 * eq_rng_uniform_double(&r), c0);
    s_hue(eq_rng_uniform_double(&r), 0.2 + 0.4 * eq_rng_uniform_double(&r),
          0.3 + 0.6 * eq_rng_uniform_double(&r), c1);
    double gdir = 2 * M_PI * eq_rng_uniform_double(&r), gx = cos(gdir), gy = sin(gdir);
    double fx = (2 + 10 * eq_rng_uniform_double(&r)) / w, fy = (2 + 10 * eq_rng_uniform_double(&r)) / h;
    double ph = 2 * M_PI * eq_rng_uniform_double(&r);
    uint64_t xs = eq_rng_u64(&r) | 1; /* xorshift for pixel noise */
    /* Luma noise (shared by the channels: JPEG keeps luma at full
     * resolution) plus a little chroma noise. */
    const double amp = 130.0, camp = 12.0;
    for (uint32_t y = 0; y < h; y++) {
        uint8_t *row = img + (size_t)y * w * 3;
        for (uint32_t x = 0; x < w; x++) {
            double t = 0.5 + 0.5 * (gx * ((double)x / w - 0.5) + gy * ((double)y / h - 0.5));
            double tex = 18.0 * sin(2 * M_PI * (fx * x + fy * y) + ph) * cos(2 * M_PI * fy * x);
            xs ^= xs << 13;
            xs ^= xs >> 7;
            xs ^= xs << 17;
            double lum = ((double)(xs >> 40) / (double)(1 << 24) - 0.5) * amp;
            for (int ch = 0; ch < 3; ch++) {
                double noise = ((double)((xs >> (8 * ch)) & 0xff) / 256.0 - 0.5) * camp;
                row[3 * x + ch] = s_u8(255.0 * (c0[ch] * (1 - t) + c1[ch] * t) + tex + lum + noise);
            }
        }
    }
    /* Class: hue (spread over the circle) and shape kind. */
    double hue = (double)cls / nclasses + 0.05 * (eq_rng_uniform_double(&r) - 0.5);
    int kind = (int)(cls % 4);
    int nshapes = 1 + (int)eq_rng_below(&r, 3);
    double m = w < h ? w : h;
    for (int s = 0; s < nshapes; s++) {
        double col[3];
        s_hue(hue, 0.7 + 0.3 * eq_rng_uniform_double(&r), 0.6 + 0.4 * eq_rng_uniform_double(&r),
              col);
        double rad = m * (0.12 + 0.18 * eq_rng_uniform_double(&r));
        double cx = rad + (w - 2 * rad) * eq_rng_uniform_double(&r);
        double cy = rad + (h - 2 * rad) * eq_rng_uniform_double(&r);
        int y0 = (int)(cy - rad), y1 = (int)(cy + rad) + 1, x0 = (int)(cx - rad), x1 = (int)(cx + rad) + 1;
        if (y0 < 0) y0 = 0;
        if (x0 < 0) x0 = 0;
        if (y1 > (int)h) y1 = (int)h;
        if (x1 > (int)w) x1 = (int)w;
        for (int y = y0; y < y1; y++)
            for (int x = x0; x < x1; x++) {
                double dx = (x - cx) / rad, dy = (y - cy) / rad, d2 = dx * dx + dy * dy;
                int in = 0;
                switch (kind) {
                case 0: in = d2 <= 1.0; break;
                case 1: in = fabs(dx) <= 0.8 && fabs(dy) <= 0.8; break;
                case 2: in = dy <= 0.8 && dy >= -0.9 + 2 * fabs(dx); break;
                default: in = d2 <= 1.0 && d2 >= 0.36; break;
                }
                if (!in) continue;
                uint8_t *px = img + ((size_t)y * w + x) * 3;
                for (int ch = 0; ch < 3; ch++) {
                    xs ^= xs << 13;
                    xs ^= xs >> 7;
                    xs ^= xs << 17;
                    double noise = ((double)(xs >> 40) / (double)(1 << 24) - 0.5) * 20.0;
                    px[ch] = s_u8(255.0 * col[ch] + noise);
                }
            }
    }
    *pix = img;
    return EQ_OK;
}

typedef struct s_synth_job {
    const char *root;
    const eq_synth_cfg *cfg;
    tjhandle *tj;
    eq_err *errs;
    int *failed;
} s_synth_job;

static void s_synth_one(void *ctx, size_t i, int worker)
{
    s_synth_job *j = ctx;
    const eq_synth_cfg *c = j->cfg;
    uint32_t per = c->train_per_class + c->val_per_class;
    uint32_t cls = (uint32_t)(i / per), k = (uint32_t)(i % per);
    int val = k >= c->train_per_class;
    uint64_t index = val ? (1ull << 40) + (k - c->train_per_class) : k;
    eq_rng r;
    eq_rng_init(&r, c->seed, eq_rng_mix(eq_rng_mix(0x53495a45ull, cls), index));
    double mean = c->mean_pixels ? c->mean_pixels : 200000;
    double area = mean * exp(0.3 * eq_rng_normal(&r) - 0.045); /* E[exp(N)] = mean */
    double ar = 0.75 + (4.0 / 3.0 - 0.75) * eq_rng_uniform_double(&r);
    uint32_t w = (uint32_t)(sqrt(area * ar) + 0.5), h = (uint32_t)(sqrt(area / ar) + 0.5);
    if (w < 16) w = 16;
    if (h < 16) h = 16;
    uint8_t *img = NULL;
    eq_err *err = &j->errs[worker];
    if (eq_synth_image(c->seed, cls, c->classes, index, w, h, &img, err) != EQ_OK) {
        j->failed[worker] = 1;
        return;
    }
    unsigned char *jpg = NULL;
    unsigned long jlen = 0;
    if (tjCompress2(j->tj[worker], img, (int)w, 0, (int)h, TJPF_RGB, &jpg, &jlen, TJSAMP_420,
                    c->quality ? c->quality : 90, 0) != 0) {
        eq_err_set(err, EQ_ERR_INTERNAL, "synth: tjCompress2: %s",
                   tjGetErrorStr2(j->tj[worker]));
        j->failed[worker] = 1;
        free(img);
        return;
    }
    free(img);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/c%03u/%07u.JPEG", j->root, val ? "val" : "train", cls,
             val ? k - c->train_per_class : k);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(jpg, 1, jlen, f) != jlen || fclose(f) != 0) {
        eq_err_set(err, EQ_ERR_IO, "%s: %s", path, strerror(errno));
        j->failed[worker] = 1;
    }
    tjFree(jpg);
}

static eq_status s_mkdir(const char *path, eq_err *err)
{
    if (mkdir(path, 0777) != 0 && errno != EEXIST)
        return eq_err_set(err, EQ_ERR_IO, "%s: mkdir: %s", path, strerror(errno));
    return EQ_OK;
}

eq_status eq_synth_imagefolder(const char *root, const eq_synth_cfg *cfg, eq_err *err)
{
    if (!root || !cfg || cfg->classes == 0 || cfg->classes > 100000 ||
        (cfg->train_per_class == 0 && cfg->val_per_class == 0))
        return eq_err_set(err, EQ_ERR_INVALID, "synth: need a root, classes in [1, 100000] and "
                                               "at least one image per class");
    char path[4096];
    if (s_mkdir(root, err) != EQ_OK) return EQ_ERR_IO;
    for (int v = 0; v < 2; v++) {
        if ((v ? cfg->val_per_class : cfg->train_per_class) == 0) continue;
        snprintf(path, sizeof path, "%s/%s", root, v ? "val" : "train");
        if (s_mkdir(path, err) != EQ_OK) return EQ_ERR_IO;
        for (uint32_t c = 0; c < cfg->classes; c++) {
            snprintf(path, sizeof path, "%s/%s/c%03u", root, v ? "val" : "train", c);
            if (s_mkdir(path, err) != EQ_OK) return EQ_ERR_IO;
        }
    }
    eq_pool *pool = NULL;
    if (cfg->nthreads > 1 && !(pool = eq_pool_new(cfg->nthreads, err))) return EQ_ERR_NOMEM;
    int nw = pool ? eq_pool_size(pool) : 1;
    tjhandle *tj = calloc((size_t)nw, sizeof *tj);
    eq_err *errs = calloc((size_t)nw, sizeof *errs);
    int *failed = calloc((size_t)nw, sizeof *failed);
    eq_status st = EQ_OK;
    if (!tj || !errs || !failed) {
        st = eq_err_set(err, EQ_ERR_NOMEM, "synth: out of memory");
        goto out;
    }
    for (int i = 0; i < nw; i++)
        if (!(tj[i] = tjInitCompress())) {
            st = eq_err_set(err, EQ_ERR_INTERNAL, "synth: tjInitCompress failed");
            goto out;
        }
    s_synth_job job = {root, cfg, tj, errs, failed};
    eq_pool_for(pool, (size_t)cfg->classes * (cfg->train_per_class + cfg->val_per_class),
                s_synth_one, &job);
    for (int i = 0; i < nw; i++)
        if (failed[i]) {
            if (err) *err = errs[i];
            st = errs[i].code ? errs[i].code : EQ_ERR_INTERNAL;
            break;
        }
out:
    if (tj)
        for (int i = 0; i < nw; i++)
            if (tj[i]) tjDestroy(tj[i]);
    free(tj);
    free(errs);
    free(failed);
    eq_pool_destroy(&pool);
    return st;
}
