/*
 * tests/check_coco_loader.c -- the COCO part of the loader: the instances
 * index (errors naming the entry, the binary cache and its rejection of
 * corrupt files), the detection transforms against hand-computed boxes and
 * masks, degenerate boxes, skipping of unusable images, padding, the wire
 * mask encodings, and determinism across runs and thread counts.
 */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <turbojpeg.h>

#include <pthread.h>

#include "core/pool.h"
#include "evaluator/mask.h"
#include "loader/coco.h"
#include "loader/server.h"
#include "proto/det.h"
#include "proto/proto_zmq.h"
#include "tests/testutil.h"

/* ------------------------------------------------------------ fixtures */

/* The hand-made set (see the test comments for the numbers):
 *   image 1: 200x100 a.jpg (left half red, right half blue)
 *     ann 10: cat 5, bbox [10,20,30,40], rectangle polygon
 *     ann 11: cat 3, bbox [-50,0,40,10] (outside: degenerate after clipping)
 *     ann 12: cat 3, bbox [150,50,50,50], RLE of that square
 *   image 2: 100x100, one crowd annotation only
 *   image 3: 100x100, one zero-width box only
 *   image 4: 50x60 (w x h), no annotation
 * Categories 5 "cat" and 3 "dog": classes 0 = 3, 1 = 5. */
static char *s_hand_json(void)
{
    size_t cap = 1 << 16, o = 0;
    char *j = malloc(cap);
    ck_assert_ptr_nonnull(j);
    o += (size_t)snprintf(j + o, cap - o,
                          "{\"images\": [\n"
                          "{\"id\": 3, \"width\": 100, \"height\": 100, \"file_name\": \"c.jpg\"},\n"
                          "{\"id\": 1, \"width\": 200, \"height\": 100, \"file_name\": \"a.jpg\"},\n"
                          "{\"id\": 4, \"width\": 50, \"height\": 60, \"file_name\": \"sub/d.jpg\"},\n"
                          "{\"id\": 2, \"width\": 100, \"height\": 100, \"file_name\": \"b.jpg\"}],\n"
                          "\"categories\": [{\"id\": 5, \"name\": \"cat\"}, {\"id\": 3, \"name\": \"dog\"}],\n"
                          "\"annotations\": [\n"
                          "{\"id\": 10, \"image_id\": 1, \"category_id\": 5, \"iscrowd\": 0, \"bbox\": [10, 20, 30, 40],"
                          " \"segmentation\": [[10, 20, 40, 20, 40, 60, 10, 60]]},\n"
                          "{\"id\": 11, \"image_id\": 1, \"category_id\": 3, \"bbox\": [-50, 0, 40, 10]},\n"
                          "{\"id\": 13, \"image_id\": 2, \"category_id\": 5, \"iscrowd\": 1, \"bbox\": [0, 0, 10, 10]},\n"
                          "{\"id\": 14, \"image_id\": 3, \"category_id\": 5, \"bbox\": [5, 5, 0, 10]},\n"
                          "{\"id\": 12, \"image_id\": 1, \"category_id\": 3, \"iscrowd\": 0, \"bbox\": [150, 50, 50, 50],"
                          " \"segmentation\": {\"size\": [100, 200], \"counts\": [15050");
    for (int c = 0; c < 50; c++) o += (size_t)snprintf(j + o, cap - o, ", 50, %d", c < 49 ? 50 : 0);
    o += (size_t)snprintf(j + o, cap - o, "]}}]}\n");
    ck_assert_uint_lt(o, cap);
    return j;
}

static void s_write_jpeg(const char *path, uint32_t w, uint32_t h)
{
    uint8_t *img = malloc((size_t)w * h * 3);
    for (uint32_t y = 0; y < h; y++)
        for (uint32_t x = 0; x < w; x++) {
            uint8_t *p = img + ((size_t)y * w + x) * 3;
            p[0] = x < w / 2 ? 220 : 20;
            p[1] = 20;
            p[2] = x < w / 2 ? 20 : 220;
        }
    tjhandle tj = tjInitCompress();
    unsigned char *jpg = NULL;
    unsigned long len = 0;
    ck_assert_int_eq(tjCompress2(tj, img, (int)w, 0, (int)h, TJPF_RGB, &jpg, &len, TJSAMP_444, 95, 0), 0);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(jpg, 1, len, f), len);
    fclose(f);
    tjFree(jpg);
    tjDestroy(tj);
    free(img);
}

static eq_cocoidx *s_hand_index(void)
{
    char *j = s_hand_json();
    eq_err e = {0};
    eq_cocoidx *x = eq_cocoidx_parse_mem(j, strlen(j), "hand.json", &e);
    ck_assert_msg(x != NULL, "%s", e.msg);
    free(j);
    return x;
}

static void s_hand_cfg(eq_det_cfg *c, const char *split, int skip_empty)
{
    eq_det_cfg_default(c, split, 4, 7);
    c->min_sizes[0] = 50;
    c->n_min_sizes = 1;
    c->max_size = 1000;
    c->hflip = 1;
    c->skip_empty = skip_empty;
    c->sampler.shuffle = 0;
    c->sampler.last = EQ_LAST_PARTIAL;
}

/* ---------------------------------------------------------------- index */

START_TEST(index_hand)
{
    eq_cocoidx *x = s_hand_index();
    ck_assert_uint_eq(x->n_img, 4);
    ck_assert_uint_eq(x->n_cat, 2);
    ck_assert_uint_eq(x->n_ann, 5);
    /* sorted by id; class = rank of the category id */
    for (uint32_t i = 0; i < 4; i++) ck_assert_int_eq(x->img[i].id, (int64_t)i + 1);
    ck_assert_int_eq(x->cat_id[0], 3);
    ck_assert_int_eq(x->cat_id[1], 5);
    ck_assert_str_eq(eq_cocoidx_cat_name(x, 0), "dog");
    ck_assert_str_eq(eq_cocoidx_cat_name(x, 1), "cat");
    ck_assert_str_eq(eq_cocoidx_file(x, 0), "a.jpg");
    ck_assert_str_eq(eq_cocoidx_file(x, 3), "sub/d.jpg");
    /* image 1 keeps the file order of its annotations: 10, 11, 12 */
    ck_assert_uint_eq(x->img[0].nann, 3);
    const eq_cocoidx_ann *a = &x->ann[x->img[0].ann0];
    ck_assert_uint_eq(a[0].cls, 1);
    ck_assert_uint_eq(a[0].seg, EQ_COCOIDX_SEG_POLY);
    ck_assert_uint_eq(a[1].seg, EQ_COCOIDX_SEG_NONE);
    ck_assert_uint_eq(a[2].cls, 0);
    ck_assert_uint_eq(a[2].seg, EQ_COCOIDX_SEG_RLE);
    ck_assert_uint_eq(a[2].seg_n, 101);
    ck_assert_uint_eq(x->img[1].nann, 1);
    ck_assert_uint_eq(x->ann[x->img[1].ann0].crowd, 1);
    ck_assert(eq_cocoidx_usable(x, 0));
    ck_assert(!eq_cocoidx_usable(x, 1)); /* crowd only */
    ck_assert(!eq_cocoidx_usable(x, 2)); /* zero width only */
    ck_assert(!eq_cocoidx_usable(x, 3)); /* none */
    ck_assert_int_eq(eq_cocoidx_validate(x, NULL), EQ_OK);
    eq_cocoidx_destroy(&x);
    ck_assert_ptr_null(x);
}
END_TEST

typedef struct s_bad_case {
    const char *json;
    const char *want[2];
} s_bad_case;

START_TEST(index_malformed)
{
    static const s_bad_case cases[] = {
        {"{\"images\": [{\"id\": 1, \"width\": 9, \"height\": 9, \"file_name\": \"a.jpg\"}],\n"
         "\"categories\": [{\"id\": 1}],\n\"annotations\": [{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0,0,1,1]},\n"
         "{\"image_id\": 1, \"category_id\": 99, \"bbox\": [0,0,1,1]}]}",
         {"annotations[1] (line 4", "category_id 99"}},
        {"{\"images\": [{\"id\": 1, \"width\": 9, \"height\": 9, \"file_name\": \"a.jpg\"}], \"categories\": [{\"id\": 1}],"
         " \"annotations\": [{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 1]}]}",
         {"annotations[0]", "'bbox'"}},
        {"{\"images\": [{\"id\": 1, \"width\": 9, \"height\": 9, \"file_name\": \"a.jpg\"}], \"categories\": [{\"id\": 1}],"
         " \"annotations\": [{\"image_id\": 2, \"category_id\": 1, \"bbox\": [0, 0, 1, 1]}]}",
         {"annotations[0]", "image_id 2 is not in 'images'"}},
        {"{\"images\": [{\"id\": 1, \"width\": 9, \"height\": 9, \"file_name\": \"a.jpg\"}], \"categories\": [{\"id\": 1}],"
         " \"annotations\": [{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 1, 1], \"segmentation\": [[1, 2, 3]]}]}",
         {"annotations[0]", "segmentation[0]"}},
        {"{\"images\": [{\"id\": 1, \"width\": 9, \"height\": 9, \"file_name\": \"a.jpg\"}], \"categories\": [{\"id\": 1}],"
         " \"annotations\": [{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 1, 1],"
         " \"segmentation\": {\"size\": [9, 8], \"counts\": [72]}}]}",
         {"annotations[0]", "segmentation.size"}},
        {"{\"images\": [{\"id\": 1, \"width\": 9, \"height\": 9, \"file_name\": \"a.jpg\"}], \"categories\": [{\"id\": 1}],"
         " \"annotations\": [{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 1, 1],"
         " \"segmentation\": {\"size\": [9, 9], \"counts\": [70, 2, 1]}}]}",
         {"annotations[0]", "sum to 73"}},
        {"{\"images\": [{\"id\": 1, \"width\": 9, \"height\": 9, \"file_name\": \"a.jpg\"},\n"
         "{\"id\": 1, \"width\": 9, \"height\": 9, \"file_name\": \"b.jpg\"}], \"categories\": []}",
         {"images[1] (line 2", "duplicate id 1"}},
        {"{\"images\": [{\"id\": 1, \"width\": 9, \"height\": 9, \"file_name\": \"../etc/passwd\"}], \"categories\": []}",
         {"images[0]", "file_name"}},
        {"{\"images\": [{\"id\": 1, \"width\": 0, \"height\": 9, \"file_name\": \"a.jpg\"}], \"categories\": []}",
         {"images[0]", "'width'"}},
        {"{\"images\": [], \"categories\": [{\"id\": 1.5}]}", {"categories[0]", "'id'"}},
        {"{\"images\": []}", {"missing key 'categories'", NULL}},
        {"{\"images\": [}", {"bad.json", "line 1"}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        eq_err e = {0};
        eq_cocoidx *x = eq_cocoidx_parse_mem(cases[i].json, strlen(cases[i].json), "bad.json", &e);
        ck_assert_msg(x == NULL, "case %zu parsed", i);
        ck_assert_int_ne(e.code, EQ_OK);
        for (int k = 0; k < 2; k++)
            if (cases[i].want[k])
                ck_assert_msg(strstr(e.msg, cases[i].want[k]), "case %zu: '%s' lacks '%s'", i, e.msg, cases[i].want[k]);
    }
}
END_TEST

static void s_flip_byte(const char *path, long at)
{
    FILE *f = fopen(path, "r+b");
    ck_assert_ptr_nonnull(f);
    fseek(f, at, SEEK_SET);
    int c = fgetc(f);
    fseek(f, at, SEEK_SET);
    fputc(c ^ 0x40, f);
    fclose(f);
}

START_TEST(index_cache)
{
    char *dir = eq_test_scratch("cocoidx");
    char jp[4200], cp[4200], tp[4200];
    snprintf(jp, sizeof jp, "%s/instances.json", dir);
    snprintf(cp, sizeof cp, "%s/instances.json.eqidx", dir);
    snprintf(tp, sizeof tp, "%s/trunc.eqidx", dir);
    char *j = s_hand_json();
    FILE *f = fopen(jp, "w");
    fputs(j, f);
    fclose(f);
    free(j);
    eq_err e = {0};
    int cached = -1;
    eq_cocoidx *a = eq_cocoidx_open(jp, cp, &cached, &e);
    ck_assert_msg(a != NULL, "%s", e.msg);
    ck_assert_int_eq(cached, 0);
    eq_cocoidx *b = eq_cocoidx_open(jp, cp, &cached, &e);
    ck_assert_msg(b != NULL, "%s", e.msg);
    ck_assert_int_eq(cached, 1);
    ck_assert_uint_eq(a->hash, b->hash);
    ck_assert_uint_eq(a->n_counts, b->n_counts);
    ck_assert_int_eq(memcmp(a->ann, b->ann, a->n_ann * sizeof *a->ann), 0);
    ck_assert_int_eq(memcmp(a->counts, b->counts, a->n_counts * sizeof *a->counts), 0);
    ck_assert_int_eq(memcmp(a->coords, b->coords, a->n_coords * sizeof *a->coords), 0);
    ck_assert_str_eq(eq_cocoidx_file(b, 3), "sub/d.jpg");
    eq_cocoidx_destroy(&b);

    struct stat st;
    ck_assert_int_eq(stat(cp, &st), 0);
    /* truncated: every prefix is refused without crashing */
    char *all = malloc((size_t)st.st_size);
    f = fopen(cp, "rb");
    ck_assert_uint_eq(fread(all, 1, (size_t)st.st_size, f), (size_t)st.st_size);
    fclose(f);
    for (long n = 0; n < st.st_size; n += n < 128 ? 1 : 37) {
        f = fopen(tp, "wb");
        fwrite(all, 1, (size_t)n, f);
        fclose(f);
        eq_err te = {0};
        eq_cocoidx *t = eq_cocoidx_load(tp, NULL, NULL, &te);
        ck_assert_msg(t == NULL, "prefix of %ld bytes accepted", n);
        ck_assert_msg(te.code == EQ_ERR_PARSE || te.code == EQ_ERR_CORRUPT, "prefix %ld: %s", n, te.msg);
    }
    free(all);
    /* a flipped byte in the payload: hash mismatch */
    s_flip_byte(cp, st.st_size - 20);
    b = eq_cocoidx_load(cp, NULL, NULL, &e);
    ck_assert_ptr_null(b);
    ck_assert_int_eq(e.code, EQ_ERR_CORRUPT);
    ck_assert(strstr(e.msg, "hash") != NULL);
    /* ... and open() falls back to parsing (and rewrites the cache) */
    b = eq_cocoidx_open(jp, cp, &cached, &e);
    ck_assert_ptr_nonnull(b);
    ck_assert_int_eq(cached, 0);
    eq_cocoidx_destroy(&b);
    ck_assert_ptr_nonnull(b = eq_cocoidx_open(jp, cp, &cached, &e));
    ck_assert_int_eq(cached, 1);
    eq_cocoidx_destroy(&b);
    /* version and magic */
    s_flip_byte(cp, 8);
    ck_assert_ptr_null(eq_cocoidx_load(cp, NULL, NULL, &e));
    ck_assert_int_eq(e.code, EQ_ERR_VERSION);
    ck_assert(strstr(e.msg, "delete it") != NULL);
    s_flip_byte(cp, 0);
    ck_assert_ptr_null(eq_cocoidx_load(cp, NULL, NULL, &e));
    ck_assert_int_eq(e.code, EQ_ERR_PARSE);
    eq_cocoidx_destroy(&a);
    eq_test_scratch_rm(dir);
}
END_TEST

/* ------------------------------------------------------------ geometry */

START_TEST(output_size)
{
    uint32_t w, h;
    eq_det_output_size(640, 480, 800, 1333, &w, &h);
    ck_assert_uint_eq(w, 1067); /* 800 * 640 / 480 = 1066.67 */
    ck_assert_uint_eq(h, 800);
    eq_det_output_size(640, 200, 800, 1333, &w, &h);
    ck_assert_uint_eq(w, 1333); /* capped: 2560 x 800 scaled by 1333 / 2560 */
    ck_assert_uint_eq(h, 417);  /* 416.56 */
    eq_det_output_size(427, 640, 640, 1333, &w, &h);
    ck_assert_uint_eq(w, 640);
    ck_assert_uint_eq(h, 959); /* 959.25 */
}
END_TEST

/* The expected crop of a polygon rasterised by the evaluator. */
static void s_expect_poly(const double *xy, size_t k, uint32_t oh, uint32_t ow, const int32_t *rc, uint8_t *out)
{
    eq_rle r = {0};
    ck_assert_int_eq(eq_rle_fr_poly(xy, k, oh, ow, &r, NULL), EQ_OK);
    uint8_t *full = malloc((size_t)oh * ow);
    ck_assert_int_eq(eq_rle_decode(&r, full, NULL), EQ_OK);
    for (int32_t x = 0; x < rc[2]; x++)
        for (int32_t y = 0; y < rc[3]; y++)
            out[(size_t)x * rc[3] + y] = full[(size_t)(rc[0] + x) * oh + (rc[1] + y)];
    free(full);
    eq_rle_free(&r);
}

static void s_check_mask(const eq_det_sample *s, uint32_t k, const uint8_t *want)
{
    const int32_t *rc = s->mrect + 4 * k;
    size_t n = (size_t)rc[2] * rc[3];
    uint8_t *got = malloc(n);
    eq_err e = {0};
    ck_assert_msg(eq_det_mask_decode(s->mkind[k], (uint32_t)rc[2], (uint32_t)rc[3], s->mdata + s->moff[k],
                                     s->moff[k + 1] - s->moff[k], got, &e) == EQ_OK,
                  "%s", e.msg);
    ck_assert_int_eq(memcmp(got, want, n), 0);
    free(got);
}

START_TEST(hand_geometry)
{
    char *dir = eq_test_scratch("cocodet");
    char p[4200];
    snprintf(p, sizeof p, "%s/a.jpg", dir);
    s_write_jpeg(p, 200, 100);
    eq_cocoidx *x = s_hand_index();
    eq_det_cfg c;
    s_hand_cfg(&c, "train", 1);
    eq_err e = {0};
    eq_det *d = eq_det_new(x, dir, &c, &e);
    ck_assert_msg(d != NULL, "%s", e.msg);
    ck_assert_uint_eq(eq_det_size(d), 1); /* train skips images 2, 3, 4 */
    ck_assert_uint_eq(eq_det_image(d, 0), 0);
    eq_decoder *dec = eq_decoder_new(0, &e);
    eq_det_sample s = {0};
    int seen[2] = {0, 0};
    for (uint64_t ep = 0; ep < 16; ep++) {
        ck_assert_int_eq(eq_det_make(d, dec, ep, 0, &s, &e), EQ_OK);
        int f = s.flipped;
        seen[f]++;
        /* 200x100 -> shorter side 50: 100x50, scale 0.5 */
        ck_assert_uint_eq(s.w, 100);
        ck_assert_uint_eq(s.h, 50);
        ck_assert(s.scale_x == 0.5f && s.scale_y == 0.5f);
        ck_assert_int_eq(s.image_id, 1);
        ck_assert_uint_eq(s.replaced, 0);
        ck_assert_uint_eq(s.dropped, 1); /* ann 11 is left of the image */
        ck_assert_uint_eq(s.n, 2);
        /* ann 10: [10,20,40,60] * 0.5, mirrored as x -> 100 - x */
        const float b0[2][4] = {{5, 10, 20, 30}, {80, 10, 95, 30}};
        const float b1[2][4] = {{75, 25, 100, 50}, {0, 25, 25, 50}};
        for (int q = 0; q < 4; q++) {
            ck_assert_float_eq(s.boxes[q], b0[f][q]);
            ck_assert_float_eq(s.boxes[4 + q], b1[f][q]);
        }
        ck_assert_int_eq(s.cls[0], 1);
        ck_assert_int_eq(s.cls[1], 0);
        ck_assert_int_eq(s.crowd[0], 0);
        /* polygon mask: the evaluator's rasterisation of the mapped polygon */
        const int32_t r0[2][4] = {{5, 10, 15, 20}, {80, 10, 15, 20}};
        ck_assert_int_eq(memcmp(s.mrect, r0[f], sizeof r0[f]), 0);
        double xy[8] = {10, 20, 40, 20, 40, 60, 10, 60};
        for (int v = 0; v < 8; v++) xy[v] *= 0.5;
        if (f)
            for (int v = 0; v < 8; v += 2) xy[v] = 100 - xy[v];
        uint8_t want[25 * 25];
        s_expect_poly(xy, 4, 50, 100, s.mrect, want);
        s_check_mask(&s, 0, want);
        size_t area = 0;
        for (size_t i = 0; i < 15 * 20; i++) area += want[i];
        ck_assert_uint_gt(area, 14 * 19 - 1);
        /* RLE mask: nearest resampling of the 50x50 square -> 25x25, all set */
        const int32_t r1[2][4] = {{75, 25, 25, 25}, {0, 25, 25, 25}};
        ck_assert_int_eq(memcmp(s.mrect + 4, r1[f], sizeof r1[f]), 0);
        memset(want, 1, sizeof want);
        s_check_mask(&s, 1, want);
        /* the picture is mirrored with the boxes: left half red unless flipped */
        const uint8_t *px = s.pix + (25 * 100 + 10) * 3;
        ck_assert_msg(f ? px[2] > 150 && px[0] < 80 : px[0] > 150 && px[2] < 80, "pixel %u %u %u flip %d", px[0],
                      px[1], px[2], f);
    }
    ck_assert(seen[0] > 0 && seen[1] > 0);
    /* val keeps every image; the crowd-only one keeps its crowd box */
    eq_det_destroy(&d);
    s_hand_cfg(&c, "val", 0);
    c.hflip = 0;
    ck_assert_ptr_nonnull(d = eq_det_new(x, dir, &c, &e));
    ck_assert_uint_eq(eq_det_size(d), 4);
    ck_assert_int_eq(eq_det_make(d, dec, 0, 1, &s, &e), EQ_OK); /* image 2: file missing */
    ck_assert_uint_eq(s.replaced, 1);
    ck_assert_uint_eq(s.n, 1);
    ck_assert_uint_eq(s.crowd[0], 1);
    ck_assert_uint_eq(s.mkind[0], EQ_DET_MASK_NONE);
    ck_assert_float_eq(s.boxes[2], 5); /* 100 -> 50: [0,0,10,10] * 0.5 */
    ck_assert_int_eq(eq_det_make(d, dec, 0, 2, &s, &e), EQ_OK); /* image 3: zero-width box */
    ck_assert_uint_eq(s.n, 0);
    ck_assert_uint_eq(s.dropped, 1);
    /* image 4 (annotated 50x60): a file of another size is replaced, not
     * stretched under boxes that no longer fit it; the right size is not */
    snprintf(p, sizeof p, "%s/sub", dir);
    ck_assert_int_eq(mkdir(p, 0777), 0);
    snprintf(p, sizeof p, "%s/sub/d.jpg", dir);
    s_write_jpeg(p, 60, 50);
    ck_assert_int_eq(eq_det_make(d, dec, 0, 3, &s, &e), EQ_OK);
    ck_assert_int_eq(s.image_id, 4);
    ck_assert_uint_eq(s.replaced, 1);
    s_write_jpeg(p, 50, 60);
    ck_assert_int_eq(eq_det_make(d, dec, 0, 3, &s, &e), EQ_OK);
    ck_assert_uint_eq(s.replaced, 0);
    /* min_box drops small boxes too */
    eq_det_destroy(&d);
    c.min_box = 16;
    ck_assert_ptr_nonnull(d = eq_det_new(x, dir, &c, &e));
    ck_assert_int_eq(eq_det_make(d, dec, 0, 0, &s, &e), EQ_OK);
    ck_assert_uint_eq(s.n, 1); /* 15x20 goes, 25x25 stays */
    ck_assert_uint_eq(s.dropped, 2);
    ck_assert_float_eq(s.boxes[0], 75);
    eq_det_sample_free(&s);
    eq_decoder_destroy(&dec);
    eq_det_destroy(&d);
    /* nothing usable: refused */
    s_hand_cfg(&c, "train", 1);
    eq_cocoidx *y = NULL;
    {
        const char *j = "{\"images\": [{\"id\": 1, \"width\": 9, \"height\": 9, \"file_name\": \"a.jpg\"}],"
                        " \"categories\": [{\"id\": 1}], \"annotations\": [{\"image_id\": 1, \"category_id\": 1,"
                        " \"iscrowd\": 1, \"bbox\": [0, 0, 3, 3]}]}";
        ck_assert_ptr_nonnull(y = eq_cocoidx_parse_mem(j, strlen(j), "crowd.json", &e));
    }
    ck_assert_ptr_null(eq_det_new(y, dir, &c, &e));
    ck_assert_int_eq(e.code, EQ_ERR_NOTFOUND);
    eq_cocoidx_destroy(&y);
    eq_cocoidx_destroy(&x);
    eq_test_scratch_rm(dir);
}
END_TEST

/* RLE masks are resampled from their runs: the same as decoding the whole
 * mask and sampling nearest pixels (PIL NEAREST's centre rule), mirrored. */
START_TEST(rle_resample)
{
    const uint32_t W = 37, H = 23;
    uint8_t full[37 * 23];
    uint64_t st = 12345;
    for (size_t i = 0; i < sizeof full; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        full[i] = (st >> 60) < 7; /* blobs of runs */
    }
    eq_rle r = {0};
    ck_assert_int_eq(eq_rle_encode(full, H, W, &r, NULL), EQ_OK);
    size_t cap = 1 << 16, o = 0;
    char *j = malloc(cap);
    o += (size_t)snprintf(j + o, cap - o,
                          "{\"images\": [{\"id\": 1, \"width\": %u, \"height\": %u, \"file_name\": \"x.jpg\"}],"
                          " \"categories\": [{\"id\": 1}], \"annotations\": [{\"image_id\": 1, \"category_id\": 1,"
                          " \"iscrowd\": 1, \"bbox\": [0, 0, %u, %u], \"segmentation\": {\"size\": [%u, %u], \"counts\": [",
                          W, H, W, H, H, W);
    for (size_t q = 0; q < r.m; q++) o += (size_t)snprintf(j + o, cap - o, "%s%u", q ? ", " : "", r.cnts[q]);
    o += (size_t)snprintf(j + o, cap - o, "]}}]}");
    eq_rle_free(&r);
    eq_err e = {0};
    eq_cocoidx *x = eq_cocoidx_parse_mem(j, o, "rle.json", &e);
    ck_assert_msg(x != NULL, "%s", e.msg);
    free(j);
    eq_decoder *dec = eq_decoder_new(0, &e);
    eq_det_sample s = {0};
    const uint32_t sizes[] = {9, 23, 50};
    for (size_t si = 0; si < 3; si++) {
        eq_det_cfg c;
        eq_det_cfg_default(&c, "val", 1, 1);
        c.min_sizes[0] = sizes[si];
        c.max_size = 1000;
        c.hflip = 1;
        eq_det *d = eq_det_new(x, "/nonexistent", &c, &e);
        ck_assert_ptr_nonnull(d);
        int seen[2] = {0, 0};
        for (uint64_t ep = 0; ep < 12; ep++) {
            ck_assert_int_eq(eq_det_make(d, dec, ep, 0, &s, &e), EQ_OK);
            ck_assert_uint_eq(s.n, 1);
            seen[s.flipped] = 1;
            const int32_t *rc = s.mrect;
            ck_assert_int_eq(rc[0], 0);
            ck_assert_int_eq(rc[2], (int32_t)s.w);
            ck_assert_int_eq(rc[3], (int32_t)s.h);
            uint8_t *want = malloc((size_t)s.w * s.h);
            for (uint32_t ox = 0; ox < s.w; ox++)
                for (uint32_t oy = 0; oy < s.h; oy++) {
                    uint32_t ux = s.flipped ? s.w - 1 - ox : ox;
                    uint32_t sx = (uint32_t)((ux + 0.5) * W / s.w), sy = (uint32_t)((oy + 0.5) * H / s.h);
                    want[(size_t)ox * s.h + oy] = full[(size_t)(sx < W ? sx : W - 1) * H + (sy < H ? sy : H - 1)];
                }
            s_check_mask(&s, 0, want);
            free(want);
        }
        ck_assert(seen[0] && seen[1]);
        eq_det_destroy(&d);
    }
    eq_det_sample_free(&s);
    eq_decoder_destroy(&dec);
    eq_cocoidx_destroy(&x);
}
END_TEST

START_TEST(mask_codec)
{
    /* both encodings round-trip; the shorter one is chosen */
    uint8_t m[64 * 40], out[64 * 40];
    for (size_t i = 0; i < sizeof m; i++) m[i] = (i / 40) > 10 && (i / 40) < 50 && (i % 40) > 5;
    eq_cocoidx *x = s_hand_index();
    (void)x;
    eq_cocoidx_destroy(&x);
    /* a hand-coded RLE: 3 zeros, 2 ones, 1 zero over 6 pixels */
    const uint8_t rle[3] = {3, 2, 1};
    ck_assert_int_eq(eq_det_mask_decode(EQ_DET_MASK_RLE, 2, 3, rle, 3, out, NULL), EQ_OK);
    const uint8_t want[6] = {0, 0, 0, 1, 1, 0};
    ck_assert_int_eq(memcmp(out, want, 6), 0);
    /* runs that do not cover the rect, or overrun it, are refused */
    const uint8_t shortr[2] = {3, 2};
    ck_assert_int_eq(eq_det_mask_decode(EQ_DET_MASK_RLE, 2, 3, shortr, 2, out, NULL), EQ_ERR_PROTO);
    const uint8_t longr[2] = {3, 4};
    ck_assert_int_eq(eq_det_mask_decode(EQ_DET_MASK_RLE, 2, 3, longr, 2, out, NULL), EQ_ERR_PROTO);
    const uint8_t bad[1] = {0x80};
    ck_assert_int_eq(eq_det_mask_decode(EQ_DET_MASK_RLE, 2, 3, bad, 1, out, NULL), EQ_ERR_PROTO);
    /* bitmap: exact size only, LSB first */
    const uint8_t bm[1] = {0x18};
    ck_assert_int_eq(eq_det_mask_decode(EQ_DET_MASK_BITMAP, 2, 3, bm, 1, out, NULL), EQ_OK);
    ck_assert_int_eq(memcmp(out, want, 6), 0);
    ck_assert_int_eq(eq_det_mask_decode(EQ_DET_MASK_BITMAP, 2, 3, bm, 2, out, NULL), EQ_ERR_PROTO);
    ck_assert_int_eq(eq_det_mask_decode(7, 2, 3, bm, 1, out, NULL), EQ_ERR_PROTO);
    /* a 300-byte varint (> 64 bits) */
    uint8_t big[12];
    memset(big, 0xff, sizeof big);
    ck_assert_int_eq(eq_det_mask_decode(EQ_DET_MASK_RLE, 2, 3, big, sizeof big, out, NULL), EQ_ERR_PROTO);
}
END_TEST

/* ------------------------------------------------- synthetic set, batches */

static char *s_synth(eq_cocoidx **train, eq_cocoidx **val)
{
    char *dir = eq_test_scratch("cocosyn");
    eq_coco_synth_cfg sc = {.train_images = 14, .val_images = 6, .classes = 5, .min_side = 96, .max_side = 200,
                            .seed = 3};
    eq_err e = {0};
    ck_assert_msg(eq_coco_synth(dir, &sc, &e) == EQ_OK, "%s", e.msg);
    char p[4200];
    snprintf(p, sizeof p, "%s/annotations/instances_train2017.json", dir);
    ck_assert_msg((*train = eq_cocoidx_parse(p, &e)) != NULL, "%s", e.msg);
    if (val) {
        snprintf(p, sizeof p, "%s/annotations/instances_val2017.json", dir);
        ck_assert_msg((*val = eq_cocoidx_parse(p, &e)) != NULL, "%s", e.msg);
    }
    return dir;
}

static void s_batch_eq(const eq_det_batch *a, const eq_det_batch *b)
{
    ck_assert_uint_eq(a->n, b->n);
    ck_assert_uint_eq(a->H, b->H);
    ck_assert_uint_eq(a->W, b->W);
    ck_assert_uint_eq(a->nbox, b->nbox);
    ck_assert_uint_eq(a->mask_bytes, b->mask_bytes);
    ck_assert_int_eq(memcmp(a->images, b->images, (size_t)a->n * a->H * a->W * 3), 0);
    ck_assert_int_eq(memcmp(a->image_ids, b->image_ids, a->n * sizeof *a->image_ids), 0);
    ck_assert_int_eq(memcmp(a->sizes, b->sizes, 2 * a->n * sizeof *a->sizes), 0);
    ck_assert_int_eq(memcmp(a->box_off, b->box_off, (a->n + 1) * sizeof *a->box_off), 0);
    ck_assert_int_eq(memcmp(a->boxes, b->boxes, 4 * (size_t)a->nbox * sizeof *a->boxes), 0);
    ck_assert_int_eq(memcmp(a->classes, b->classes, a->nbox * sizeof *a->classes), 0);
    ck_assert_int_eq(memcmp(a->mask_kind, b->mask_kind, a->nbox), 0);
    ck_assert_int_eq(memcmp(a->mask_rect, b->mask_rect, 4 * (size_t)a->nbox * sizeof *a->mask_rect), 0);
    ck_assert_int_eq(memcmp(a->mask_data, b->mask_data, a->mask_bytes), 0);
}

START_TEST(synth_batches)
{
    eq_cocoidx *x = NULL;
    char *dir = s_synth(&x, NULL);
    char root[4200];
    snprintf(root, sizeof root, "%s/train2017", dir);
    ck_assert_uint_eq(x->n_img, 14);
    ck_assert_uint_eq(x->n_cat, 5);
    eq_det_cfg c;
    eq_det_cfg_default(&c, "train", 6, 11);
    c.min_sizes[0] = 128, c.min_sizes[1] = 160, c.min_sizes[2] = 192;
    c.n_min_sizes = 3;
    c.max_size = 300;
    eq_err e = {0};
    eq_det *d = eq_det_new(x, root, &c, &e);
    ck_assert_msg(d != NULL, "%s", e.msg);
    ck_assert_uint_eq(eq_det_size(d), 12); /* images 7 and 14 have no annotation */
    eq_decoder *d1[1] = {eq_decoder_new(0, &e)};
    eq_pool *pool = eq_pool_new(3, &e);
    eq_decoder *d3[8] = {0};
    for (int i = 0; i < eq_pool_size(pool); i++) d3[i] = eq_decoder_new(0, &e);
    eq_det_batch a, b, cb;
    ck_assert_msg(eq_det_batch_make(d, NULL, d1, 1, 0, 0, 6, &a, &e) == EQ_OK, "%s", e.msg);
    ck_assert_msg(eq_det_batch_make(d, NULL, d1, 1, 0, 0, 6, &b, &e) == EQ_OK, "%s", e.msg);
    ck_assert_msg(eq_det_batch_make(d, pool, d3, 1, 0, 0, 6, &cb, &e) == EQ_OK, "%s", e.msg);
    s_batch_eq(&a, &b);
    s_batch_eq(&a, &cb);
    ck_assert_uint_eq(a.n, 6);
    ck_assert_uint_eq(a.n_replaced, 0);
    ck_assert_uint_gt(a.nbox, 6);
    /* padding: multiples of 32 covering every image, zeros outside */
    ck_assert_uint_eq(a.H % 32, 0);
    ck_assert_uint_eq(a.W % 32, 0);
    int sizes_seen = 0;
    for (uint32_t i = 0; i < a.n; i++) {
        uint32_t h = (uint32_t)a.sizes[2 * i], w = (uint32_t)a.sizes[2 * i + 1];
        ck_assert_uint_le(h, a.H);
        ck_assert_uint_le(w, a.W);
        ck_assert_uint_le(h > w ? h : w, 300);
        uint32_t sh = h < w ? h : w;
        sizes_seen |= (sh == 128) << 0 | (sh == 160) << 1 | (sh == 192) << 2;
        ck_assert_uint_gt(a.H - h + a.W - w, 0);
        const uint8_t *im = a.images + (size_t)i * a.H * a.W * 3;
        for (uint32_t y = 0; y < a.H; y++)
            for (uint32_t xx = (y < h ? w : 0); xx < a.W; xx++) ck_assert_uint_eq(im[((size_t)y * a.W + xx) * 3], 0);
        for (int32_t k = a.box_off[i]; k < a.box_off[i + 1]; k++) {
            const float *bx = a.boxes + 4 * (size_t)k;
            ck_assert(bx[0] >= 0 && bx[0] < bx[2] && bx[2] <= w && bx[1] >= 0 && bx[1] < bx[3] && bx[3] <= h);
            ck_assert_int_lt(a.classes[k], 5);
            const int32_t *rc = a.mask_rect + 4 * (size_t)k;
            ck_assert(rc[0] >= 0 && rc[1] >= 0 && rc[0] + rc[2] <= (int32_t)w && rc[1] + rc[3] <= (int32_t)h);
            uint8_t *m = malloc((size_t)rc[2] * rc[3]);
            ck_assert_int_eq(eq_det_mask_decode(a.mask_kind[k], (uint32_t)rc[2], (uint32_t)rc[3],
                                                a.mask_data + a.mask_off[k], (size_t)(a.mask_off[k + 1] - a.mask_off[k]),
                                                m, &e),
                             EQ_OK);
            size_t on = 0;
            for (size_t q = 0; q < (size_t)rc[2] * rc[3]; q++) on += m[q];
            ck_assert_uint_gt(on, 0); /* every synthetic shape covers pixels of its box */
            free(m);
        }
    }
    ck_assert_int_ne(sizes_seen, 0);
    ck_assert_int_eq(a.box_off[a.n], (int32_t)a.nbox);
    eq_det_batch_free(&b);
    eq_det_batch_free(&cb);
    /* a different epoch draws differently; box formats convert */
    ck_assert_int_eq(eq_det_batch_make(d, NULL, d1, 2, 0, 0, 6, &b, &e), EQ_OK);
    ck_assert(b.H != a.H || b.W != a.W || memcmp(b.image_ids, a.image_ids, 6 * 8) ||
              memcmp(b.boxes, a.boxes, 4 * sizeof(float)));
    eq_det_batch_free(&b);
    eq_det_destroy(&d);
    c.box_format = EQ_BOX_CXCYWH;
    ck_assert_ptr_nonnull(d = eq_det_new(x, root, &c, &e));
    ck_assert_int_eq(eq_det_batch_make(d, pool, d3, 1, 0, 0, 6, &b, &e), EQ_OK);
    ck_assert_uint_eq(b.nbox, a.nbox);
    for (uint32_t k = 0; k < a.nbox; k++) {
        const float *p = a.boxes + 4 * k, *q = b.boxes + 4 * k;
        ck_assert_float_eq(q[0], (p[0] + p[2]) / 2);
        ck_assert_float_eq(q[3], p[3] - p[1]);
    }
    eq_det_batch_free(&b);
    eq_det_batch_free(&a);
    eq_det_destroy(&d);
    eq_decoder_destroy(&d1[0]);
    for (int i = 0; i < 8; i++) eq_decoder_destroy(&d3[i]);
    eq_pool_destroy(&pool);
    eq_cocoidx_destroy(&x);
    eq_test_scratch_rm(dir);
}
END_TEST


/* ------------------------------------------------------------ eq-loader */

typedef struct s_srv {
    eq_loader_server *srv;
    eq_status rc;
} s_srv;

static void *s_srv_run(void *arg)
{
    s_srv *v = arg;
    v->rc = eq_loader_server_run(v->srv, NULL);
    return NULL;
}

static void s_det_data_cfg(eq_loader_data_cfg *dc)
{
    eq_loader_cfg lc;
    eq_config_section secs[2];
    eq_loader_config_sections(&lc, dc, secs);
    ck_assert_int_eq(eq_config_defaults(secs, 2, NULL), EQ_OK);
    snprintf(dc->dataset, sizeof dc->dataset, "coco");
    dc->aug_train = dc->aug_val = EQ_AUG_DET;
    dc->min_sizes[0] = 96, dc->min_sizes[1] = 128;
    dc->nmin_sizes = 2;
    dc->min_size_val = 112;
    dc->max_size = 256;
    dc->global_batch = 6;
    dc->seed = 5;
}

START_TEST(server_det)
{
    eq_cocoidx *x = NULL;
    char *dir = s_synth(&x, NULL);
    eq_cocoidx_destroy(&x);
    char decl[4300];
    snprintf(decl, sizeof decl, "coco=%s", dir);
    const char *decls[1] = {decl};
    eq_ds_kind kind;
    ck_assert_int_eq(eq_loader_detect(dir, &kind, NULL), EQ_OK);
    ck_assert_int_eq(kind, EQ_DS_COCO);
    ck_assert_str_eq(eq_loader_kind_name(kind), "coco");
    void *ctx = zmq_ctx_new();
    eq_loader_server_cfg cfg = {.bind = "inproc://coco", .datasets = decls, .ndatasets = 1, .threads = 3};
    eq_err e = {0};
    s_srv v = {0};
    ck_assert_msg((v.srv = eq_loader_server_new(ctx, &cfg, &e)) != NULL, "%s", e.msg);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, s_srv_run, &v), 0);
    eq_proto_sockopts o;
    eq_proto_sockopts_default(&o, NULL);
    o.rcvtimeo_ms = 5000;
    void *dl = eq_proto_socket(ctx, ZMQ_DEALER, &o, &e);
    ck_assert_int_eq(eq_proto_connect(dl, "inproc://coco", &e), EQ_OK);

    eq_loader_data_cfg dc;
    s_det_data_cfg(&dc);
    eq_msg job;
    ck_assert_msg(eq_loader_data_job(&dc, "train", &job, &e) == EQ_OK, "%s", e.msg);
    ck_assert_uint_eq(job.u.job.height, 128);
    ck_assert_uint_eq(job.u.job.width, 256);
    job.has_req = true;
    job.req = 1;
    ck_assert_int_eq(eq_proto_send(dl, NULL, &job, NULL, 0, 0, &e), EQ_OK);
    /* JOB_OK, raw: the class mapping rides in the header */
    uint8_t hdr[65536];
    int hl = zmq_recv(dl, hdr, sizeof hdr, 0);
    ck_assert_int_gt(hl, 0);
    eq_msg ok;
    ck_assert_msg(eq_proto_decode_header(&ok, hdr, (size_t)hl, NULL, &e) == EQ_OK, "%s", e.msg);
    ck_assert_msg(ok.type == EQ_MSG_JOB_OK, "%s", ok.type == EQ_MSG_ERROR ? ok.u.error.message : "?");
    ck_assert_uint_eq(ok.u.job_ok.size, 12);
    ck_assert_uint_eq(ok.u.job_ok.classes, 5);
    ck_assert_ptr_nonnull(strstr(ok.u.job_ok.pipeline, "det;"));
    int64_t ids[8];
    char names[8][EQ_DET_CLASS_NAME_CAP];
    uint32_t nc = 0;
    ck_assert_int_eq(eq_proto_det_job_ok_classes(hdr, (size_t)hl, ids, names, 8, &nc, &e), EQ_OK);
    ck_assert_uint_eq(nc, 5);
    for (uint32_t k = 0; k < nc; k++) ck_assert_int_eq(ids[k], (int64_t)k + 1);
    ck_assert_str_eq(names[2], "shape02");
    uint32_t nc4 = 0;
    ck_assert_int_eq(eq_proto_det_job_ok_classes(hdr, (size_t)hl, ids, names, 4, &nc4, &e), EQ_ERR_LIMIT);

    /* a BATCH equals the library's batch for the same JOB */
    eq_msg rq;
    eq_proto_msg_init(&rq, EQ_MSG_BATCH_REQ);
    rq.has_req = true;
    rq.req = 2;
    snprintf(rq.u.batch_req.job, sizeof rq.u.batch_req.job, "%s", ok.u.job_ok.job);
    rq.u.batch_req.epoch = 3;
    rq.u.batch_req.step = 1;
    rq.u.batch_req.count = 6;
    ck_assert_int_eq(eq_proto_send(dl, NULL, &rq, NULL, 0, 0, &e), EQ_OK);
    eq_proto_recvd *r = malloc(sizeof *r);
    eq_proto_recvd_init(r);
    ck_assert_msg(eq_proto_recv(dl, r, NULL, 0, &e) == EQ_OK, "%s", e.msg);
    ck_assert_msg(r->msg.type == EQ_MSG_BATCH, "%s", r->msg.type == EQ_MSG_ERROR ? r->msg.u.error.message : "?");
    ck_assert(eq_proto_det_is(&r->msg));
    const void *fr[EQ_PROTO_MAX_FRAMES];
    size_t fs[EQ_PROTO_MAX_FRAMES];
    for (size_t i = 0; i < r->nparts; i++) fr[i] = eq_proto_recvd_frame(r, i, &fs[i]);
    eq_det_view dv;
    ck_assert_msg(eq_proto_det_check(&r->msg, fr, fs, nc, &dv, &e) == EQ_OK, "%s", e.msg);
    ck_assert(dv.masks);
    eq_det_cfg c;
    ck_assert_int_eq(eq_loader_det_job(&job.u.job, &c, &e), EQ_OK);
    ck_assert_uint_eq(c.n_min_sizes, 2);
    char p[4200];
    snprintf(p, sizeof p, "%s/annotations/instances_train2017.json", dir);
    ck_assert_ptr_nonnull(x = eq_cocoidx_parse(p, &e));
    snprintf(p, sizeof p, "%s/train2017", dir);
    eq_det *d = eq_det_new(x, p, &c, &e);
    ck_assert_ptr_nonnull(d);
    eq_decoder *dec[1] = {eq_decoder_new(0, &e)};
    eq_det_batch b;
    ck_assert_int_eq(eq_det_batch_make(d, NULL, dec, 3, 1, 0, 6, &b, &e), EQ_OK);
    ck_assert_uint_eq(dv.n, b.n);
    ck_assert_uint_eq(dv.H, b.H);
    ck_assert_uint_eq(dv.nbox, b.nbox);
    ck_assert_uint_eq(dv.mask_bytes, b.mask_bytes);
    ck_assert_int_eq(memcmp(fr[dv.images], b.images, fs[dv.images]), 0);
    ck_assert_int_eq(memcmp(fr[dv.image_ids], b.image_ids, fs[dv.image_ids]), 0);
    ck_assert_int_eq(memcmp(fr[dv.boxes], b.boxes, fs[dv.boxes]), 0);
    ck_assert_int_eq(memcmp(fr[dv.mask_data], b.mask_data, fs[dv.mask_data]), 0);

    /* validation: every kind of damage is refused, naming the frame */
    size_t tot = 0;
    for (size_t i = 0; i < r->nparts; i++) tot += fs[i];
    uint8_t *copy = malloc(tot);
    const void *cf[EQ_PROTO_MAX_FRAMES];
    struct {
        int frame;
        size_t at;
        uint8_t val;
        const char *want;
    } dmg[] = {
        {dv.box_off, fs[dv.box_off] - 4, 0x7f, "box_offsets"},
        {dv.classes, 0, 9, "classes[0]"},
        {dv.crowd, 0, 2, "crowd[0]"},
        {dv.sizes, 3, 0x40, "sizes[0]"},
        {dv.mask_rects, 0, 0xff, "mask_rects[0]"},
        {dv.mask_off, 15, 0x7f, "mask_offsets"},
        {dv.mask_kind, 0, 3, "mask 0"},
        {dv.flipped, 0, 5, "flipped[0]"},
    };
    for (size_t t = 0; t < sizeof dmg / sizeof dmg[0]; t++) {
        size_t o2 = 0;
        for (size_t i = 0; i < r->nparts; i++) {
            memcpy(copy + o2, fr[i], fs[i]);
            cf[i] = copy + o2;
            o2 += fs[i];
        }
        ((uint8_t *)cf[dmg[t].frame])[dmg[t].at] = dmg[t].val;
        eq_det_view dv2;
        eq_err de = {0};
        ck_assert_msg(eq_proto_det_check(&r->msg, cf, fs, nc, &dv2, &de) == EQ_ERR_PROTO, "damage %zu accepted", t);
        ck_assert_msg(strstr(de.msg, dmg[t].want), "damage %zu: '%s' lacks '%s'", t, de.msg, dmg[t].want);
    }
    free(copy);
    eq_det_batch_free(&b);
    eq_proto_recvd_close(r);

    /* val serves every image; wrong augmentations are refused by name */
    ck_assert_int_eq(eq_loader_data_job(&dc, "val", &job, &e), EQ_OK);
    job.has_req = true;
    job.req = 3;
    ck_assert_int_eq(eq_proto_send(dl, NULL, &job, NULL, 0, 0, &e), EQ_OK);
    hl = zmq_recv(dl, hdr, sizeof hdr, 0);
    ck_assert_int_eq(eq_proto_decode_header(&ok, hdr, (size_t)hl, NULL, &e), EQ_OK);
    ck_assert_int_eq(ok.type, EQ_MSG_JOB_OK);
    ck_assert_uint_eq(ok.u.job_ok.size, 6);
    dc.aug_train = EQ_AUG_RRC;
    ck_assert_int_eq(eq_loader_data_job(&dc, "train", &job, &e), EQ_OK);
    job.has_req = true;
    job.req = 4;
    ck_assert_int_eq(eq_proto_send(dl, NULL, &job, NULL, 0, 0, &e), EQ_OK);
    ck_assert_int_eq(eq_proto_recv(dl, r, NULL, 0, &e), EQ_OK);
    ck_assert_int_eq(r->msg.type, EQ_MSG_ERROR);
    ck_assert_msg(strstr(r->msg.u.error.message, "aug \"det\""), "%s", r->msg.u.error.message);
    eq_proto_recvd_close(r);
    free(r);

    eq_decoder_destroy(&dec[0]);
    eq_det_destroy(&d);
    eq_cocoidx_destroy(&x);
    eq_proto_socket_close(&dl);
    eq_loader_server_stop(v.srv);
    pthread_join(th, NULL);
    ck_assert_int_eq(v.rc, EQ_OK);
    eq_loader_server_destroy(&v.srv);
    zmq_ctx_term(ctx);
    /* the dataset's index cache was written beside the instances file */
    snprintf(p, sizeof p, "%s/annotations/instances_train2017.json.eqidx", dir);
    struct stat st;
    ck_assert_int_eq(stat(p, &st), 0);
    eq_test_scratch_rm(dir);
}
END_TEST

/* [data]'s mixup/CutMix and jitter keys reach the train JOB and, through
 * it, the pipeline config; val never mixes or jitters. */
START_TEST(job_data_mix_keys)
{
    eq_loader_cfg lc;
    eq_loader_data_cfg dc;
    eq_config_section secs[2];
    eq_loader_config_sections(&lc, &dc, secs);
    const char *sets[] = {"data.aug_train=rrc", "data.height=32", "data.width=32", "data.channels=3",
                          "data.global_batch=16", "data.mixup_alpha=0.4", "data.cutmix_alpha=1.0",
                          "data.mix_prob=0.8", "data.mix_switch_prob=0.25", "data.mix_block=8",
                          "data.jitter=0.4, 0, 0.2", "data.jitter_hue=0.1"};
    eq_err e = {0};
    ck_assert_msg(eq_config_parse_buffer(secs, 2, "(t)", "", 0, sets, 12, &e) == EQ_OK, "%s", e.msg);
    eq_msg m;
    ck_assert_int_eq(eq_loader_data_job(&dc, "train", &m, &e), EQ_OK);
    ck_assert(m.u.job.mixup_alpha == 0.4 && m.u.job.cutmix_alpha == 1.0);
    eq_pipeline_cfg pc;
    ck_assert_msg(eq_loader_job_pipeline(&m.u.job, &pc, &e) == EQ_OK, "%s", e.msg);
    ck_assert(pc.mix.mixup_alpha == 0.4f && pc.mix.cutmix_alpha == 1.0f && pc.mix.prob == 0.8f);
    ck_assert(pc.mix.switch_prob == 0.25f && pc.mix.block == 8 && pc.mix.batch_lambda == 1);
    ck_assert(pc.jitter[0] == 0.4f && pc.jitter[1] == 0 && pc.jitter[2] == 0.2f && pc.hue == 0.1f);
    char fp[EQ_PROTO_TEXT_CAP];
    eq_loader_pipeline_fingerprint(&pc, fp, sizeof fp);
    ck_assert_msg(strstr(fp, "hue=0.1") != NULL, "%s", fp);
    ck_assert_int_eq(eq_loader_data_job(&dc, "val", &m, &e), EQ_OK);
    ck_assert(m.u.job.mixup_alpha == 0 && m.u.job.cutmix_alpha == 0);
    ck_assert_int_eq(eq_loader_job_pipeline(&m.u.job, &pc, &e), EQ_OK);
    ck_assert(pc.jitter[0] == 0 && pc.hue == 0 && pc.mix.block == 0);
    /* out of range and det + mixing are refused */
    const char *bad[] = {"data.jitter_hue=0.6"};
    ck_assert_int_eq(eq_config_parse_buffer(secs, 2, "(t)", "", 0, bad, 1, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "jitter_hue"));
    const char *det[] = {"data.aug_train=det", "data.mixup_alpha=0.2"};
    ck_assert_int_eq(eq_config_parse_buffer(secs, 2, "(t)", "", 0, det, 2, &e), EQ_OK);
    ck_assert_int_eq(eq_loader_data_job(&dc, "train", &m, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "mixup_alpha"));
}
END_TEST

START_TEST(job_det_keys)
{
    eq_loader_data_cfg dc;
    s_det_data_cfg(&dc);
    eq_msg m;
    eq_err e = {0};
    eq_det_cfg c;
    ck_assert_int_eq(eq_loader_data_job(&dc, "train", &m, &e), EQ_OK);
    ck_assert_int_eq(eq_loader_det_job(&m.u.job, &c, &e), EQ_OK);
    ck_assert_uint_eq(c.min_sizes[1], 128);
    ck_assert_uint_eq(c.max_size, 256);
    ck_assert(c.hflip && c.skip_empty && c.masks && c.sampler.shuffle);
    ck_assert_uint_eq(c.pad_divisor, 32);
    struct {
        const char *key;
        eq_proto_val_type t;
        const char *s;
        int64_t i;
        const char *want;
    } bad[] = {
        {"min_sizes", EQ_PROTO_VAL_STR, "96,x", 0, "'min_sizes'"},
        {"min_sizes", EQ_PROTO_VAL_STR, "96,100", 0, "largest of min_sizes"},
        {"box_format", EQ_PROTO_VAL_STR, "yxyx", 0, "'box_format'"},
        {"pad_divisor", EQ_PROTO_VAL_INT, NULL, 4096, "'pad_divisor'"},
        {"resize", EQ_PROTO_VAL_INT, NULL, 3, "'resize' unknown"},
        {"masks", EQ_PROTO_VAL_INT, NULL, 1, "'masks' is a int"},
    };
    for (size_t t = 0; t < sizeof bad / sizeof bad[0]; t++) {
        eq_msg j = m;
        eq_proto_kv *kv = NULL;
        for (uint32_t i = 0; i < j.u.job.ntransforms; i++)
            if (!strcmp(j.u.job.transforms[i].key, bad[t].key)) kv = &j.u.job.transforms[i];
        if (!kv) {
            kv = &j.u.job.transforms[j.u.job.ntransforms++];
            snprintf(kv->key, sizeof kv->key, "%s", bad[t].key);
        }
        kv->type = bad[t].t;
        if (bad[t].s) snprintf(kv->s, sizeof kv->s, "%s", bad[t].s);
        kv->i = bad[t].i;
        ck_assert_int_ne(eq_loader_det_job(&j.u.job, &c, &e), EQ_OK);
        ck_assert_msg(strstr(e.msg, bad[t].want), "case %zu: '%s' lacks '%s'", t, e.msg, bad[t].want);
    }
    eq_msg j = m;
    j.u.job.channels = 1;
    ck_assert_int_eq(eq_loader_det_job(&j.u.job, &c, &e), EQ_ERR_INVALID);
    j = m;
    j.u.job.mixup_alpha = 0.2;
    ck_assert_int_eq(eq_loader_det_job(&j.u.job, &c, &e), EQ_ERR_UNSUPPORTED);
    /* val: one size, no flip, every image */
    ck_assert_int_eq(eq_loader_data_job(&dc, "val", &m, &e), EQ_OK);
    ck_assert_int_eq(eq_loader_det_job(&m.u.job, &c, &e), EQ_OK);
    ck_assert_uint_eq(c.n_min_sizes, 1);
    ck_assert_uint_eq(c.min_sizes[0], 112);
    ck_assert(!c.hflip && !c.skip_empty && !c.sampler.shuffle);
    ck_assert_int_eq(c.sampler.last, EQ_LAST_PARTIAL);
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("coco_loader");
    TCase *tc = tcase_create("index");
    tcase_add_test(tc, index_hand);
    tcase_add_test(tc, index_malformed);
    tcase_add_test(tc, index_cache);
    suite_add_tcase(s, tc);
    tc = tcase_create("det");
    tcase_add_test(tc, output_size);
    tcase_add_test(tc, hand_geometry);
    tcase_add_test(tc, mask_codec);
    tcase_add_test(tc, rle_resample);
    tcase_add_test(tc, synth_batches);
    tcase_set_timeout(tc, 20);
    suite_add_tcase(s, tc);
    tc = tcase_create("server");
    tcase_add_test(tc, job_det_keys);
    tcase_add_test(tc, job_data_mix_keys);
    tcase_add_test(tc, server_det);
    tcase_set_timeout(tc, 20);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return eq_test_run(s_suite()); }
