/*
 * bench/coco_loader.c -- the COCO side of the loader, timed (driven by
 * bench/coco_loader.sh, which runs Python beside it):
 *
 *   coco_loader gen OUT.json [IMAGES [ANNS_PER_IMAGE [SEED]]]
 *       a COCO-train-like instances file (defaults 118287 images, 7.3
 *       annotations each: ~860k; polygons of 8..40 vertices with two
 *       decimals, 1 % crowd RLE counts), ~450 MB at the defaults;
 *   coco_loader index FILE.json
 *       parse it into the index (seconds, peak RSS), write the cache and
 *       load it back (seconds);
 *   coco_loader pipeline ROOT [SECONDS]
 *       images/s of the train pipeline (shorter side 640..800, longer
 *       <= 1333, flip, masks) on one thread over ROOT/train2017.
 * Output lines are "key value" pairs the driver script reads.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "core/clock.h"
#include "core/rng.h"
#include "loader/coco.h"

static double s_now(void) { return (double)eq_clock_ns() / 1e9; }

/* CPU seconds of this process (user + system): meaningful on a loaded
 * machine where wall time is not. */
static double s_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static long s_maxrss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024;
}

static int s_gen(const char *out, uint32_t nimg, double per, uint64_t seed)
{
    FILE *f = fopen(out, "w");
    if (!f) {
        perror(out);
        return 1;
    }
    setvbuf(f, NULL, _IOFBF, 1 << 20);
    eq_rng r;
    eq_rng_init(&r, seed, 0x47454e);
    uint16_t *sz = malloc(2 * sizeof *sz * (nimg ? nimg : 1));
    if (!sz) return 1;
    fprintf(f, "{\"info\": {\"description\": \"synthetic COCO-train-like\"}, \"licenses\": [],\n\"images\": [");
    for (uint32_t i = 0; i < nimg; i++) {
        uint32_t w = 480 + eq_rng_below(&r, 161), h = 360 + eq_rng_below(&r, 161);
        sz[2 * i] = (uint16_t)w, sz[2 * i + 1] = (uint16_t)h;
        fprintf(f, "%s\n{\"license\": 1, \"file_name\": \"%012u.jpg\", \"coco_url\": \"http://images.cocodataset.org/train2017/%012u.jpg\", "
                   "\"height\": %u, \"width\": %u, \"date_captured\": \"2013-11-14 16:28:13\", \"id\": %u}",
                i ? "," : "", i + 1, i + 1, h, w, i + 1);
    }
    fprintf(f, "],\n\"annotations\": [");
    uint64_t aid = 1;
    for (uint32_t i = 0; i < nimg; i++) {
        uint32_t w = sz[2 * i], h = sz[2 * i + 1];
        uint32_t n = (uint32_t)(per * 2 * eq_rng_uniform_double(&r) + 0.5);
        for (uint32_t k = 0; k < n; k++, aid++) {
            int crowd = eq_rng_below(&r, 100) == 0;
            double cx = 40 + eq_rng_uniform_double(&r) * (w - 80), cy = 40 + eq_rng_uniform_double(&r) * (h - 80);
            double rad = 5 + eq_rng_uniform_double(&r) * 35;
            fprintf(f, "%s\n{\"segmentation\": ", aid > 1 ? "," : "");
            double x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
            if (!crowd) {
                uint32_t nv = 8 + eq_rng_below(&r, 33);
                fputs("[[", f);
                for (uint32_t v = 0; v < nv; v++) {
                    double a = 2 * M_PI * v / nv, rr = rad * (0.6 + 0.4 * eq_rng_uniform_double(&r));
                    double px = floor((cx + rr * cos(a)) * 100) / 100, py = floor((cy + rr * sin(a)) * 100) / 100;
                    x0 = fmin(x0, px), y0 = fmin(y0, py), x1 = fmax(x1, px), y1 = fmax(y1, py);
                    fprintf(f, "%s%.2f, %.2f", v ? ", " : "", px, py);
                }
                fputs("]]", f);
            } else {
                /* a rectangle as COCO's uncompressed RLE (column-major) */
                uint32_t bx = (uint32_t)(cx - rad), by = (uint32_t)(cy - rad), bw = (uint32_t)(2 * rad),
                         bh = (uint32_t)(2 * rad);
                fprintf(f, "{\"counts\": [%u", bx * h + by);
                for (uint32_t c = 0; c < bw; c++) fprintf(f, ", %u, %u", bh, c + 1 < bw ? h - bh : h * (w - bx - bw) + h - bh - by);
                fprintf(f, "], \"size\": [%u, %u]}", h, w);
                x0 = bx, y0 = by, x1 = bx + bw, y1 = by + bh;
            }
            fprintf(f, ", \"area\": %.4f, \"iscrowd\": %d, \"image_id\": %u, \"bbox\": [%.2f, %.2f, %.2f, %.2f], "
                       "\"category_id\": %u, \"id\": %" PRIu64 "}",
                    (x1 - x0) * (y1 - y0) * 0.7, crowd, i + 1, x0, y0, x1 - x0, y1 - y0, 1 + eq_rng_below(&r, 80), aid);
        }
    }
    fprintf(f, "],\n\"categories\": [");
    for (int k = 0; k < 80; k++)
        fprintf(f, "%s\n{\"supercategory\": \"thing\", \"id\": %d, \"name\": \"class%02d\"}", k ? "," : "", k + 1, k);
    fprintf(f, "]}\n");
    free(sz);
    if (fclose(f) != 0) {
        perror(out);
        return 1;
    }
    return 0;
}

static int s_index(const char *path)
{
    eq_err e = {0};
    double c0 = s_cpu(), t0 = s_now();
    eq_cocoidx *x = eq_cocoidx_parse(path, &e);
    double t1 = s_now(), c1 = s_cpu();
    if (!x) {
        fprintf(stderr, "coco_loader: %s\n", e.msg);
        return 1;
    }
    printf("images %u\nannotations %" PRIu64 "\npolygon_values %" PRIu64 "\n", x->n_img, x->n_ann, x->n_coords);
    printf("parse_s %.3f\nparse_cpu_s %.3f\nparse_peak_rss_mb %ld\n", t1 - t0, c1 - c0, s_maxrss_mb());
    char cache[4200];
    snprintf(cache, sizeof cache, "%s.eqidx", path);
    if (eq_cocoidx_save(x, cache, 0, 0, &e) != EQ_OK) {
        fprintf(stderr, "coco_loader: %s\n", e.msg);
        return 1;
    }
    eq_cocoidx_destroy(&x);
    double c2 = s_cpu(), t2 = s_now();
    x = eq_cocoidx_load(cache, NULL, NULL, &e);
    double t3 = s_now(), c3 = s_cpu();
    if (!x) {
        fprintf(stderr, "coco_loader: %s\n", e.msg);
        return 1;
    }
    printf("cache_load_s %.3f\ncache_load_cpu_s %.3f\n", t3 - t2, c3 - c2);
    eq_cocoidx_destroy(&x);
    remove(cache);
    return 0;
}

static int s_pipeline(const char *root, double secs)
{
    char ann[4200], img[4200];
    snprintf(ann, sizeof ann, "%s/annotations/instances_train2017.json", root);
    snprintf(img, sizeof img, "%s/train2017", root);
    eq_err e = {0};
    eq_cocoidx *x = eq_cocoidx_parse(ann, &e);
    if (!x) {
        fprintf(stderr, "coco_loader: %s\n", e.msg);
        return 1;
    }
    eq_det_cfg c;
    eq_det_cfg_default(&c, "train", 1, 0);
    eq_det *d = eq_det_new(x, img, &c, &e);
    eq_decoder *dec = eq_decoder_new(0, &e);
    if (!d || !dec) {
        fprintf(stderr, "coco_loader: %s\n", e.msg);
        return 1;
    }
    eq_det_sample s = {0};
    uint64_t n = 0, boxes = 0;
    double t0 = s_now(), c0 = s_cpu(), t;
    do {
        for (int k = 0; k < 8; k++, n++) {
            if (eq_det_make(d, dec, n / eq_det_size(d), n % eq_det_size(d), &s, &e) != EQ_OK) {
                fprintf(stderr, "coco_loader: %s\n", e.msg);
                return 1;
            }
            boxes += s.n;
        }
        t = s_now();
    } while (t - t0 < secs);
    printf("pipeline_images %" PRIu64 "\npipeline_boxes %" PRIu64 "\npipeline_img_s %.2f\npipeline_img_per_cpu_s %.2f\n"
           "pipeline_peak_rss_mb %ld\n",
           n, boxes, (double)n / (t - t0), (double)n / (s_cpu() - c0), s_maxrss_mb());
    eq_det_sample_free(&s);
    eq_decoder_destroy(&dec);
    eq_det_destroy(&d);
    eq_cocoidx_destroy(&x);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[1], "gen"))
        return s_gen(argv[2], argc > 3 ? (uint32_t)strtoul(argv[3], NULL, 10) : 118287,
                     argc > 4 ? strtod(argv[4], NULL) : 7.3, argc > 5 ? strtoull(argv[5], NULL, 10) : 1);
    if (argc == 3 && !strcmp(argv[1], "index")) return s_index(argv[2]);
    if (argc >= 3 && !strcmp(argv[1], "pipeline")) return s_pipeline(argv[2], argc > 3 ? strtod(argv[3], NULL) : 10);
    fprintf(stderr, "usage: coco_loader gen OUT.json [IMAGES [ANNS_PER_IMAGE [SEED]]]\n"
                    "       coco_loader index FILE.json\n"
                    "       coco_loader pipeline ROOT [SECONDS]\n");
    return 2;
}
