/*
 * loader/pipeline.c -- sample = f(config, split, seed, epoch, index) and
 * batch assembly over a thread pool.
 *
 * Encoded images (ImageFolder): read the file, parse the header, draw the
 * geometry (RandomResizedCrop box or Resize+CenterCrop window) in full-
 * resolution coordinates, pick the smallest DCT scale M/8 at which the crop
 * still has at least the output's resolution, decode only the rows and
 * columns the resampler reads (eq_resize_taps), resample with PIL's
 * bilinear filter, flip.  With M = 8 (dct_scale off, or a crop that needs
 * full resolution) the result equals torchvision + PIL on the same decoded
 * pixels; with M < 8 the source is libjpeg's scaled IDCT of the image
 * instead of the full image (see doc/loader.md for the measured difference).
 */
#include "loader/loader.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/pool.h"
#include "loader/loader_internal.h"

/* Largest image file read (bigger files are substituted). */
#define S_MAX_FILE (256u << 20)


struct eq_pipeline {
    const eq_dataset *ds;
    eq_pipeline_cfg cfg;
    uint32_t H, W, C;
    eq_pool *pool;
    int nworkers;
    eq_decoder **dec; /* one per worker (owns that worker's scratch) */
    eq_sampler *sampler;
    pthread_mutex_t mu;
    uint64_t n_samples, n_replaced, n_bytes; /* atomics */
};

void eq_pipeline_cfg_default(eq_pipeline_cfg *cfg, const char *split, uint32_t size,
                             uint32_t global_batch, uint64_t seed)
{
    memset(cfg, 0, sizeof *cfg);
    int train = !split || !strcmp(split, "train");
    cfg->aug = train ? EQ_AUG_RRC : EQ_AUG_CENTER;
    cfg->out_h = cfg->out_w = size;
    cfg->resize = 0;
    cfg->scale[0] = 0.08;
    cfg->scale[1] = 1.0;
    cfg->ratio[0] = 3.0 / 4.0;
    cfg->ratio[1] = 4.0 / 3.0;
    cfg->hflip = train;
    cfg->pad = 4;
    cfg->dct_scale = EQ_DCT_POW2;
    cfg->sampler.seed = seed;
    cfg->sampler.split = train ? 0 : 1;
    cfg->sampler.global_batch = global_batch;
    cfg->sampler.shuffle = train;
    cfg->sampler.last = train ? EQ_LAST_DROP : EQ_LAST_PARTIAL;
    cfg->mix.prob = 1.0f;
    cfg->mix.switch_prob = 0.5f;
}

static void s_workers_free(eq_pipeline *p)
{
    if (!p->dec) return;
    for (int i = 0; i < p->nworkers; i++) eq_decoder_destroy(&p->dec[i]);
    free(p->dec);
    p->dec = NULL;
}

void eq_pipeline_destroy(eq_pipeline **self_p)
{
    if (!self_p || !*self_p) return;
    eq_pipeline *p = *self_p;
    eq_pool_destroy(&p->pool);
    s_workers_free(p);
    eq_sampler_destroy(&p->sampler);
    pthread_mutex_destroy(&p->mu);
    free(p);
    *self_p = NULL;
}

eq_pipeline *eq_pipeline_new(const eq_dataset *ds, const eq_pipeline_cfg *cfg, int nthreads,
                             eq_err *err)
{
    if (!ds || !cfg) {
        eq_err_set(err, EQ_ERR_INVALID, "pipeline: dataset and config are required");
        return NULL;
    }
    eq_pipeline *p = calloc(1, sizeof *p);
    if (!p) {
        eq_err_set(err, EQ_ERR_NOMEM, "pipeline: out of memory");
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    p->ds = ds;
    p->cfg = *cfg;
    eq_pipeline_cfg *c = &p->cfg;
    const int encoded = eq_dataset_kind(ds) == EQ_DS_IMAGEFOLDER;
    uint32_t sh = 0, sw = 0, sc = 3;
    if (!encoded) {
        const uint8_t *px;
        if (eq_dataset_pixels(ds, 0, &px, &sh, &sw, &sc, err) != EQ_OK) goto fail;
    }
    if ((unsigned)c->aug > EQ_AUG_PADCROP) {
        eq_err_set(err, EQ_ERR_INVALID, "pipeline: unknown aug %d", (int)c->aug);
        goto fail;
    }
    if (c->out_h == 0 || c->out_w == 0) {
        if (encoded || c->aug == EQ_AUG_RRC || c->aug == EQ_AUG_CENTER) {
            eq_err_set(err, EQ_ERR_INVALID, "pipeline: out_h and out_w must be > 0");
            goto fail;
        }
        c->out_h = sh;
        c->out_w = sw;
    }
    if (c->out_h > 4096 || c->out_w > 4096) {
        eq_err_set(err, EQ_ERR_INVALID, "pipeline: output %ux%u larger than 4096", c->out_h,
                   c->out_w);
        goto fail;
    }
    if (c->aug == EQ_AUG_PADCROP && (encoded || c->out_h != sh || c->out_w != sw || c->pad > 64)) {
        eq_err_set(err, EQ_ERR_INVALID,
                   "pipeline: padcrop needs an in-memory set, output = stored size and pad <= 64");
        goto fail;
    }
    if (c->aug == EQ_AUG_CENTER) {
        if (c->resize == 0) c->resize = (uint32_t)(c->out_h / 0.875 + 0.5);
        if (c->resize < c->out_h || c->resize < c->out_w) {
            eq_err_set(err, EQ_ERR_INVALID, "pipeline: resize %u smaller than the crop %ux%u",
                       c->resize, c->out_h, c->out_w);
            goto fail;
        }
    }
    if (c->aug == EQ_AUG_RRC &&
        !(c->scale[0] > 0 && c->scale[0] <= c->scale[1] && c->scale[1] <= 1 && c->ratio[0] > 0 &&
          c->ratio[0] <= c->ratio[1])) {
        eq_err_set(err, EQ_ERR_INVALID, "pipeline: bad scale (%g, %g) or ratio (%g, %g)",
                   c->scale[0], c->scale[1], c->ratio[0], c->ratio[1]);
        goto fail;
    }
    for (int k = 0; k < 3; k++)
        if (!(c->jitter[k] >= 0 && c->jitter[k] <= 10)) {
            eq_err_set(err, EQ_ERR_INVALID, "pipeline: jitter[%d] = %g outside [0, 10]", k,
                       (double)c->jitter[k]);
            goto fail;
        }
    if (!(c->hue >= 0 && c->hue <= 0.5f)) {
        eq_err_set(err, EQ_ERR_INVALID, "pipeline: hue = %g outside [0, 0.5]", (double)c->hue);
        goto fail;
    }
    p->H = c->out_h;
    p->W = c->out_w;
    p->C = encoded ? 3 : sc;
    if (!(p->sampler = eq_sampler_new(&c->sampler, eq_dataset_size(ds), err))) goto fail;
    if (c->mix.mixup_alpha > 0 || c->mix.cutmix_alpha > 0) {
        eq_mix_entry probe;
        eq_mix_cfg one = c->mix;
        if (eq_mix_plan(&one, 0, 0, 0, 0, 1, p->H, p->W, &probe, err) != EQ_OK) goto fail;
    }
    p->nworkers = nthreads > 1 ? nthreads : 1;
    if (nthreads > 1 && !(p->pool = eq_pool_new(nthreads, err))) goto fail;
    if (p->pool) p->nworkers = eq_pool_size(p->pool);
    p->dec = calloc((size_t)p->nworkers, sizeof *p->dec);
    if (!p->dec) {
        eq_err_set(err, EQ_ERR_NOMEM, "pipeline: out of memory");
        goto fail;
    }
    for (int i = 0; i < p->nworkers; i++)
        if (!(p->dec[i] = eq_decoder_new(c->max_pixels, err))) goto fail;
    return p;
fail:
    eq_pipeline_destroy(&p);
    return NULL;
}

void eq_pipeline_geometry(const eq_pipeline *p, uint32_t *h, uint32_t *w, uint32_t *c)
{
    *h = p->H;
    *w = p->W;
    *c = p->C;
}

uint64_t eq_pipeline_steps(const eq_pipeline *p)
{
    return eq_sampler_steps(&p->cfg.sampler, eq_dataset_size(p->ds));
}

void eq_pipeline_get_stats(eq_pipeline *p, eq_pipeline_stats *st)
{
    st->samples = __atomic_load_n(&p->n_samples, __ATOMIC_RELAXED);
    st->replaced = __atomic_load_n(&p->n_replaced, __ATOMIC_RELAXED);
    st->bytes_read = __atomic_load_n(&p->n_bytes, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------ samples */

static void s_substitute(const eq_pipeline *p, uint8_t *out)
{
    static const uint8_t mean[3] = {124, 116, 104};
    size_t n = (size_t)p->H * p->W;
    if (p->C == 3)
        for (size_t i = 0; i < n; i++) memcpy(out + 3 * i, mean, 3);
    else
        memset(out, 0, n * p->C);
}

/* Smallest M (1..8) with have * M / 8 >= need; with mode EQ_DCT_POW2 M is
 * rounded up to 1, 2, 4 or 8.  (The box scales exactly by sw / W; libjpeg
 * rounds the scaled image size up, which only adds room.) */
static uint32_t s_scale_for(uint32_t have, uint32_t need, int mode)
{
    uint64_t m = ((uint64_t)need * 8 + have - 1) / have;
    if (m < 1) m = 1;
    if (m > 8) m = 8;
    if (mode == EQ_DCT_POW2) m = m <= 1 ? 1 : m <= 2 ? 2 : m <= 4 ? 4 : 8;
    return (uint32_t)m;
}

void eq_crop_geometry(uint32_t W, uint32_t H, eq_box b, uint32_t out_w, uint32_t out_h,
                      int dct_scale, uint32_t *num, eq_resize_geom *g)
{
    uint32_t m = 8;
    if (dct_scale) {
        uint32_t mw = s_scale_for((uint32_t)b.width, out_w, dct_scale);
        uint32_t mh = s_scale_for((uint32_t)b.height, out_h, dct_scale);
        m = mw > mh ? mw : mh;
    }
    uint32_t sw = eq_decode_scaled(W, m), sh = eq_decode_scaled(H, m);
    double fx = (double)sw / W, fy = (double)sh / H;
    double x0 = b.left * fx, x1 = (b.left + b.width) * fx;
    double y0 = b.top * fy, y1 = (b.top + b.height) * fy;
    uint32_t ix0 = (uint32_t)floor(x0), iy0 = (uint32_t)floor(y0);
    uint32_t ix1 = (uint32_t)ceil(x1), iy1 = (uint32_t)ceil(y1);
    if (ix1 > sw) ix1 = sw;
    if (iy1 > sh) iy1 = sh;
    g->ix0 = ix0;
    g->iy0 = iy0;
    g->iw = ix1 - ix0;
    g->ih = iy1 - iy0;
    g->bx0 = (float)(x0 - ix0);
    g->by0 = (float)(y0 - iy0);
    g->bx1 = (float)(x1 - ix0);
    g->by1 = (float)(y1 - iy0);
    g->out_w = out_w;
    g->out_h = out_h;
    g->wx = g->wy = 0;
    g->ww = out_w;
    g->wh = out_h;
    *num = m;
}

eq_status eq_render_crop(eq_decoder *d, const uint8_t *data, size_t len, eq_box b, uint32_t out_w,
                         uint32_t out_h, int dct_scale, uint8_t *out, void **tmp, size_t *tmp_cap,
                         eq_err *err)
{
    eq_img_format fmt;
    uint32_t W, H, num, sx0, sy0, sx1, sy1;
    if (eq_decode_info(d, data, len, &fmt, &W, &H, err) != EQ_OK) return err ? err->code : EQ_ERR_CORRUPT;
    if (b.top < 0 || b.left < 0 || b.height <= 0 || b.width <= 0 ||
        (uint64_t)b.top + b.height > H || (uint64_t)b.left + b.width > W)
        return eq_err_set(err, EQ_ERR_INVALID, "crop box %d,%d+%dx%d outside the %ux%u image",
                          b.left, b.top, b.width, b.height, W, H);
    eq_resize_geom g;
    eq_crop_geometry(W, H, b, out_w, out_h, fmt == EQ_IMG_JPEG ? dct_scale : EQ_DCT_OFF, &num, &g);
    eq_resize_taps(&g, &sx0, &sy0, &sx1, &sy1);
    eq_decoded dd;
    if (eq_decode_region(d, data, len, num, sx0, sy0, sx1, sy1, &dd, err) != EQ_OK)
        return err ? err->code : EQ_ERR_CORRUPT;
    eq_resize_src src = {dd.pix, dd.x0, dd.y0, dd.w, dd.h, 3};
    return eq_resize_bilinear(&src, &g, out, tmp, tmp_cap, err);
}

/* Geometry for an image of W x H: PIL input rect + box in the image scaled
 * by num/8, output size and window. */
static void s_geometry(const eq_pipeline *p, eq_rng *r, uint32_t W, uint32_t H, int can_scale,
                       uint32_t *num, eq_resize_geom *g, int *flip)
{
    const eq_pipeline_cfg *c = &p->cfg;
    *flip = 0;
    uint32_t m = 8;
    if (c->aug == EQ_AUG_CENTER) {
        uint32_t rw, rh;
        eq_resize_shorter(W, H, c->resize, &rw, &rh);
        if (can_scale && c->dct_scale) {
            uint32_t mw = s_scale_for(W, rw, c->dct_scale), mh = s_scale_for(H, rh, c->dct_scale);
            m = mw > mh ? mw : mh;
        }
        uint32_t sw = eq_decode_scaled(W, m), sh = eq_decode_scaled(H, m);
        g->ix0 = g->iy0 = 0;
        g->iw = sw;
        g->ih = sh;
        g->bx0 = g->by0 = 0;
        g->bx1 = (float)sw;
        g->by1 = (float)sh;
        g->out_w = rw;
        g->out_h = rh;
        g->wx = (uint32_t)eq_center_offset(rw, c->out_w);
        g->wy = (uint32_t)eq_center_offset(rh, c->out_h);
        g->ww = c->out_w;
        g->wh = c->out_h;
        *num = m;
        return;
    }
    eq_box b = {0, 0, (int32_t)H, (int32_t)W};
    if (c->aug == EQ_AUG_RRC)
        b = eq_rrc_params(r, W, H, c->scale[0], c->scale[1], c->ratio[0], c->ratio[1]);
    eq_crop_geometry(W, H, b, c->out_w, c->out_h, can_scale ? c->dct_scale : EQ_DCT_OFF, &m, g);
    *num = m;
    if (c->aug == EQ_AUG_RRC && c->hflip) *flip = eq_rng_uniform(r) < 0.5f;
}

/* Colour jitter (after the flip, as torchvision's Compose order): draws in
 * the sample's stream, applied to the resized RGB output.  With hue on, the
 * hue adjustment takes a uniformly drawn place among the other three (a
 * uniform permutation of the four, like torchvision's randperm(4)); without
 * it the draws are those of the three-op jitter. */
typedef struct s_jit {
    int on, hue_on;
    uint8_t order[3];
    float factor[3];
    uint32_t hue_pos; /* hue runs after the first hue_pos of order[] */
    float hue;
} s_jit;

static void s_jitter_draw(const eq_pipeline *p, eq_rng *r, s_jit *j)
{
    const eq_pipeline_cfg *c = &p->cfg;
    j->on = c->aug == EQ_AUG_RRC && p->C == 3 &&
            (c->jitter[0] > 0 || c->jitter[1] > 0 || c->jitter[2] > 0 || c->hue > 0);
    j->hue_on = j->on && c->hue > 0;
    if (!j->on) return;
    eq_color_jitter_params(r, c->jitter, j->order, j->factor);
    if (j->hue_on) {
        j->hue_pos = eq_rng_below(r, 4);
        j->hue = eq_rng_uniform(r) * (2.0f * c->hue) - c->hue;
    }
}

static void s_jitter_apply(const s_jit *j, uint8_t *img, uint32_t w, uint32_t h)
{
    if (!j->hue_on) {
        eq_color_jitter_apply(img, w, h, j->order, j->factor);
        return;
    }
    /* the ops before the hue, the hue, the ops after it (a factor of 1 is
     * an exact identity of the blend) */
    float before[3] = {1.0f, 1.0f, 1.0f}, after[3] = {1.0f, 1.0f, 1.0f};
    for (uint32_t k = 0; k < 3; k++) {
        int op = j->order[k];
        if (k < j->hue_pos)
            before[op] = j->factor[op];
        else
            after[op] = j->factor[op];
    }
    if (j->hue_pos > 0) eq_color_jitter_apply(img, w, h, j->order, before);
    eq_adjust_hue(img, w, h, j->hue);
    if (j->hue_pos < 3) eq_color_jitter_apply(img, w, h, j->order, after);
}

/* Encoded file -> out.  Returns EQ_OK or the reason in err. */
static eq_status s_encoded(eq_pipeline *p, eq_decoder *d, eq_rng *r, size_t index, uint8_t *out,
                           eq_err *err)
{
    eq_scratch *w = eq_decoder_scratch(d);
    char path[4096];
    uint64_t size = 0;
    const char *rel = eq_dataset_relpath(p->ds, index, &size);
    if ((size_t)snprintf(path, sizeof path, "%s/%s", eq_dataset_root(p->ds), rel) >= sizeof path)
        return eq_err_set(err, EQ_ERR_LIMIT, "path too long: %s/%s", eq_dataset_root(p->ds), rel);
    size_t len = 0;
    if (eq_read_file(path, &w->file, &w->file_cap, &len, S_MAX_FILE, err) != EQ_OK)
        return err->code;
    __atomic_fetch_add(&p->n_bytes, len, __ATOMIC_RELAXED);
    eq_img_format fmt;
    uint32_t W, H;
    if (eq_decode_info(d, w->file, len, &fmt, &W, &H, err) != EQ_OK) return err->code;
    uint32_t num;
    eq_resize_geom g;
    int flip;
    s_jit jit;
    s_geometry(p, r, W, H, fmt == EQ_IMG_JPEG, &num, &g, &flip);
    s_jitter_draw(p, r, &jit);
    uint32_t sx0, sy0, sx1, sy1;
    eq_resize_taps(&g, &sx0, &sy0, &sx1, &sy1);
    eq_decoded dd;
    if (eq_decode_region(d, w->file, len, num, sx0, sy0, sx1, sy1, &dd, err) != EQ_OK)
        return err->code;
    if (dd.sw != eq_decode_scaled(W, num) || dd.sh != eq_decode_scaled(H, num))
        return eq_err_set(err, EQ_ERR_INTERNAL, "decoder scaled %ux%u by %u/8 to %ux%u", W, H,
                          num, dd.sw, dd.sh);
    eq_resize_src src = {dd.pix, dd.x0, dd.y0, dd.w, dd.h, 3};
    if (eq_resize_bilinear(&src, &g, out, &w->tmp, &w->tmp_cap, err) != EQ_OK) return err->code;
    if (flip) eq_hflip(out, p->W, p->H, 3);
    if (jit.on) s_jitter_apply(&jit, out, p->W, p->H);
    return EQ_OK;
}

/* In-memory sample -> out. */
static eq_status s_memory(eq_pipeline *p, eq_decoder *d, eq_rng *r, size_t index, uint8_t *out,
                          eq_err *err)
{
    eq_scratch *w = eq_decoder_scratch(d);
    const uint8_t *px;
    uint32_t h, wd, c;
    if (eq_dataset_pixels(p->ds, index, &px, &h, &wd, &c, err) != EQ_OK) return err->code;
    const eq_pipeline_cfg *cf = &p->cfg;
    if (cf->aug == EQ_AUG_PADCROP) {
        uint32_t pad = cf->pad, ph = h + 2 * pad, pw = wd + 2 * pad;
        uint32_t top = eq_rng_below(r, 2 * pad + 1), left = eq_rng_below(r, 2 * pad + 1);
        int flip = cf->hflip && eq_rng_uniform(r) < 0.5f;
        (void)ph;
        (void)pw;
        for (uint32_t y = 0; y < h; y++) {
            int64_t sy = (int64_t)y + top - pad;
            uint8_t *drow = out + (size_t)y * wd * c;
            for (uint32_t x = 0; x < wd; x++) {
                int64_t sx = (int64_t)x + left - pad;
                if (sy < 0 || sy >= h || sx < 0 || sx >= wd)
                    memset(drow + (size_t)x * c, 0, c);
                else
                    memcpy(drow + (size_t)x * c, px + ((size_t)sy * wd + (size_t)sx) * c, c);
            }
        }
        if (flip) eq_hflip(out, wd, h, c);
        return EQ_OK;
    }
    if (cf->aug == EQ_AUG_NONE && p->H == h && p->W == wd) {
        memcpy(out, px, (size_t)h * wd * c);
        return EQ_OK;
    }
    uint32_t num;
    eq_resize_geom g;
    int flip;
    s_jit jit;
    s_geometry(p, r, wd, h, 0, &num, &g, &flip);
    s_jitter_draw(p, r, &jit);
    eq_resize_src src = {px, 0, 0, wd, h, c};
    if (eq_resize_bilinear(&src, &g, out, &w->tmp, &w->tmp_cap, err) != EQ_OK) return err->code;
    if (flip) eq_hflip(out, p->W, p->H, c);
    if (jit.on) s_jitter_apply(&jit, out, p->W, p->H);
    return EQ_OK;
}

static void s_make(eq_pipeline *p, eq_decoder *w, uint64_t epoch, size_t index, uint8_t *out,
                   int *replaced)
{
    eq_rng r;
    const eq_pipeline_cfg *c = &p->cfg;
    eq_rng_init(&r, c->sampler.seed,
                eq_rng_mix(eq_rng_mix(eq_rng_mix(EQ_TAG_AUG, c->sampler.split), epoch), index));
    eq_err e = {0};
    eq_status st = eq_dataset_kind(p->ds) == EQ_DS_IMAGEFOLDER ? s_encoded(p, w, &r, index, out, &e)
                                                                : s_memory(p, w, &r, index, out, &e);
    *replaced = st != EQ_OK;
    __atomic_fetch_add(&p->n_samples, 1, __ATOMIC_RELAXED);
    if (st != EQ_OK) {
        __atomic_fetch_add(&p->n_replaced, 1, __ATOMIC_RELAXED);
        const char *rel = eq_dataset_relpath(p->ds, index, NULL);
        eq_warn("loader: sample %zu (%s/%s) replaced by a substitute: %s", index,
                eq_dataset_root(p->ds), rel ? rel : "", e.msg);
        s_substitute(p, out);
    }
}

eq_status eq_pipeline_sample(eq_pipeline *p, eq_decoder *d, uint64_t epoch, size_t index,
                             uint8_t *out, int32_t *label, int *replaced, eq_err *err)
{
    if (index >= eq_dataset_size(p->ds))
        return eq_err_set(err, EQ_ERR_INVALID, "pipeline: index %zu out of range [0, %zu)", index,
                          eq_dataset_size(p->ds));
    int rep = 0;
    s_make(p, d ? d : p->dec[0], epoch, index, out, &rep);
    if (label) *label = eq_dataset_label(p->ds, index);
    if (replaced) *replaced = rep;
    return EQ_OK;
}

/* -------------------------------------------------------------- batch */

typedef struct s_job {
    eq_pipeline *p;
    uint64_t epoch;
    uint32_t n_own, n_extra;
    const uint32_t *own_idx, *extra_idx;
    uint8_t *own_out, *extra_out;
    uint8_t *rep; /* n_own + n_extra flags */
} s_job;

static void s_job_fn(void *ctx, size_t i, int worker)
{
    s_job *j = ctx;
    eq_pipeline *p = j->p;
    size_t per = (size_t)p->H * p->W * p->C;
    int rep = 0;
    if (i < j->n_own)
        s_make(p, p->dec[worker], j->epoch, j->own_idx[i], j->own_out + i * per, &rep);
    else
        s_make(p, p->dec[worker], j->epoch, j->extra_idx[i - j->n_own],
               j->extra_out + (i - j->n_own) * per, &rep);
    j->rep[i] = (uint8_t)rep;
}

static int s_mixing(const eq_pipeline *p)
{
    return p->cfg.mix.mixup_alpha > 0 || p->cfg.mix.cutmix_alpha > 0;
}

/* The state of one mix application: the plan of the global batch and the
 * partners outside [offset, offset+n) that CutMix needs.  Heap memory per
 * batch (not per sample); freed by s_mixwork_free. */
typedef struct s_mixwork {
    eq_mix_entry *plan; /* g entries */
    uint32_t g;
    uint32_t n_extra, n_cut;
    uint32_t *extra_pos, *extra_idx;
    uint8_t *extra; /* n_extra images */
    uint8_t *orig;  /* n own images before pasting (when n_cut) */
} s_mixwork;

static void s_mixwork_free(s_mixwork *m)
{
    free(m->plan);
    free(m->extra_pos);
    free(m->extra_idx);
    free(m->extra);
    free(m->orig);
    memset(m, 0, sizeof *m);
}

/* Plan + list of outside partners for positions [offset, offset+n). */
static eq_status s_mix_prepare(eq_pipeline *p, uint64_t epoch, uint64_t step, uint32_t offset,
                               uint32_t n, s_mixwork *m, eq_err *err)
{
    const eq_pipeline_cfg *c = &p->cfg;
    const uint32_t G = c->sampler.global_batch;
    const size_t per = (size_t)p->H * p->W * p->C, N = eq_dataset_size(p->ds);
    memset(m, 0, sizeof *m);
    m->g = G;
    if (c->sampler.last == EQ_LAST_PARTIAL && (uint64_t)(step + 1) * G > N)
        m->g = (uint32_t)(N - step * G);
    if (offset + n > m->g)
        return eq_err_set(err, EQ_ERR_INVALID, "mix: positions [%u, %u) outside the batch of %u",
                          offset, offset + n, m->g);
    m->plan = eq_malloc_array(m->g, sizeof *m->plan);
    m->extra_pos = eq_malloc_array(n ? n : 1, sizeof(uint32_t));
    m->extra_idx = eq_malloc_array(n ? n : 1, sizeof(uint32_t));
    if (!m->plan || !m->extra_pos || !m->extra_idx)
        return eq_err_set(err, EQ_ERR_NOMEM, "mix: out of memory for a plan of %u", m->g);
    eq_status st = eq_mix_plan(&c->mix, c->sampler.seed, c->sampler.split, epoch, step, m->g,
                               p->H, p->W, m->plan, err);
    if (st != EQ_OK) return st;
    for (uint32_t i = 0; i < n; i++) {
        const eq_mix_entry *e = &m->plan[offset + i];
        if (e->mode != EQ_MIX_CUTMIX) continue;
        m->n_cut++;
        if (e->partner >= offset && e->partner < offset + n) continue;
        uint32_t k;
        for (k = 0; k < m->n_extra && m->extra_pos[k] != e->partner; k++) {
        }
        if (k < m->n_extra) continue;
        uint32_t got;
        if ((st = eq_sampler_range(p->sampler, epoch, step, e->partner, 1,
                                   &m->extra_idx[m->n_extra], &got, err)) != EQ_OK)
            return st;
        m->extra_pos[m->n_extra++] = e->partner;
    }
    if ((m->n_extra && !(m->extra = eq_malloc_array(m->n_extra, per))) ||
        (m->n_cut && !(m->orig = eq_malloc_array(n, per))))
        return eq_err_set(err, EQ_ERR_NOMEM, "mix: out of memory for CutMix partners");
    return EQ_OK;
}

/* Labels, plan fields and CutMix pastes, once own and outside-partner
 * images are made. */
static eq_status s_mix_finish(eq_pipeline *p, uint64_t epoch, uint64_t step, uint32_t offset,
                              eq_batch *b, s_mixwork *m, eq_err *err)
{
    const size_t per = (size_t)p->H * p->W * p->C;
    const uint32_t n = b->n;
    if (m->n_cut) memcpy(m->orig, b->images, (size_t)n * per);
    for (uint32_t i = 0; i < n; i++) {
        int32_t ya = eq_dataset_label(p->ds, b->indices[i]);
        if (b->label_a) b->label_a[i] = ya;
        if (b->label_b) b->label_b[i] = ya;
        if (b->lambda) b->lambda[i] = 1.0f;
        if (b->mix_mode) b->mix_mode[i] = EQ_MIX_NONE;
        if (b->partner) b->partner[i] = offset + i;
        if (!m->plan) continue;
        const eq_mix_entry *e = &m->plan[offset + i];
        if (e->mode == EQ_MIX_NONE) continue;
        uint32_t pidx = 0;
        const uint8_t *psrc = NULL;
        if (e->partner >= offset && e->partner < offset + n) {
            pidx = b->indices[e->partner - offset];
            if (m->orig) psrc = m->orig + (size_t)(e->partner - offset) * per;
        } else {
            uint32_t got = 0;
            eq_status st = eq_sampler_range(p->sampler, epoch, step, e->partner, 1, &pidx, &got, err);
            if (st != EQ_OK) return st;
            for (uint32_t k = 0; k < m->n_extra; k++)
                if (m->extra_pos[k] == e->partner) psrc = m->extra + (size_t)k * per;
        }
        if (b->label_b) b->label_b[i] = eq_dataset_label(p->ds, pidx);
        if (b->lambda) b->lambda[i] = e->lambda;
        if (b->mix_mode) b->mix_mode[i] = e->mode;
        if (b->partner) b->partner[i] = e->partner;
        if (e->mode == EQ_MIX_CUTMIX && psrc) {
            size_t row = (size_t)p->W * p->C, x0 = (size_t)e->x0 * p->C,
                   bw = (size_t)(e->x1 - e->x0) * p->C;
            uint8_t *dimg = b->images + (size_t)i * per;
            for (uint32_t y = e->y0; y < e->y1; y++)
                memcpy(dimg + y * row + x0, psrc + y * row + x0, bw);
        }
    }
    return EQ_OK;
}

eq_status eq_pipeline_mix(eq_pipeline *p, eq_decoder *d, uint64_t epoch, uint64_t step,
                          uint32_t offset, eq_batch *b, eq_err *err)
{
    s_mixwork m = {0};
    eq_status st = EQ_OK;
    if (s_mixing(p)) {
        if ((st = s_mix_prepare(p, epoch, step, offset, b->n, &m, err)) != EQ_OK) goto out;
        const size_t per = (size_t)p->H * p->W * p->C;
        for (uint32_t k = 0; k < m.n_extra; k++) {
            int rep;
            s_make(p, d ? d : p->dec[0], epoch, m.extra_idx[k], m.extra + k * per, &rep);
        }
    }
    st = s_mix_finish(p, epoch, step, offset, b, &m, err);
out:
    s_mixwork_free(&m);
    return st;
}

eq_status eq_pipeline_batch(eq_pipeline *p, uint64_t epoch, uint64_t step, uint32_t offset,
                            uint32_t count, eq_batch *out, eq_err *err)
{
    out->n = out->n_replaced = 0;
    if (count == 0) return EQ_OK;
    pthread_mutex_lock(&p->mu);
    eq_status st;
    uint32_t n = 0;
    uint8_t *rep = NULL;
    s_mixwork m = {0};
    if ((st = eq_sampler_range(p->sampler, epoch, step, offset, count, out->indices, &n, err)) !=
        EQ_OK)
        goto out;
    if (s_mixing(p) && (st = s_mix_prepare(p, epoch, step, offset, n, &m, err)) != EQ_OK) goto out;
    rep = malloc((size_t)n + m.n_extra + 1);
    if (!rep) {
        st = eq_err_set(err, EQ_ERR_NOMEM, "pipeline: out of memory");
        goto out;
    }
    /* own samples and outside CutMix partners, all in parallel */
    s_job job = {p, epoch, n, m.n_extra, out->indices, m.extra_idx, out->images, m.extra, rep};
    eq_pool_for(p->pool, (size_t)n + m.n_extra, s_job_fn, &job);
    out->n = n;
    for (uint32_t i = 0; i < n; i++)
        if (rep[i] && out->replaced) out->replaced[out->n_replaced++] = i;
    st = s_mix_finish(p, epoch, step, offset, out, &m, err);
out:
    s_mixwork_free(&m);
    free(rep);
    pthread_mutex_unlock(&p->mu);
    return st;
}
