/* tests/check_loader.c -- datasets, decode, transforms, sampler, mix plans,
 * batch assembly (loader/).  Reference fixtures: tests/fixtures/loader/,
 * made by gen_fixtures.py there with torchvision 0.14 + PIL 9.4. */
#include "core/log.h"
#include "core/rng.h"
#include "loader/loader.h"
#include "loader/loader_internal.h"
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <jpeglib.h>
#include <png.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <turbojpeg.h>
#include <zlib.h>

/* ------------------------------------------------------------ helpers */

static void s_write(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

static void s_mkdir(const char *path) { ck_assert_int_eq(mkdir(path, 0777), 0); }

static uint8_t *s_read(const char *path, size_t *len)
{
    uint8_t *b = NULL;
    size_t cap = 0;
    eq_err e = {0};
    ck_assert_msg(eq_read_file(path, &b, &cap, len, 1u << 30, &e) == EQ_OK, "%s", e.msg);
    return b;
}

static void s_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* A JPEG of a synthetic picture, made with tjCompress2. */
/* samp may be or'ed with S_PROGRESSIVE for a progressive JPEG. */
#define S_PROGRESSIVE 0x100

static unsigned char *s_jpeg(uint32_t w, uint32_t h, int samp, int pf, int quality,
                             unsigned long *len, uint8_t **pix_out)
{
    int flags = samp & S_PROGRESSIVE ? TJFLAG_PROGRESSIVE : 0;
    samp &= ~S_PROGRESSIVE;
    uint8_t *pix = NULL;
    ck_assert_int_eq(eq_synth_image(99, 2, 5, w * 31 + h, w, h, &pix, NULL), EQ_OK);
    uint8_t *src = pix;
    int ps = tjPixelSize[pf];
    if (pf != TJPF_RGB) {
        src = malloc((size_t)w * h * ps);
        for (size_t i = 0; i < (size_t)w * h; i++)
            for (int c = 0; c < ps; c++) src[i * ps + c] = pix[i * 3 + (c % 3)] ^ (uint8_t)(c * 40);
    }
    tjhandle tj = tjInitCompress();
    ck_assert_ptr_nonnull(tj);
    unsigned char *jpg = NULL;
    ck_assert_msg(tjCompress2(tj, src, (int)w, 0, (int)h, pf, &jpg, len, samp, quality, flags) == 0,
                  "%s", tjGetErrorStr2(tj));
    tjDestroy(tj);
    if (src != pix) free(src);
    if (pix_out)
        *pix_out = pix;
    else
        free(pix);
    return jpg;
}

/* ---------------------------------------------------------------- IDX */

static void s_idx(const char *path, int gz, int ndim, const uint32_t *dims, uint32_t actual_items)
{
    uint8_t hdr[16] = {0, 0, 8, (uint8_t)ndim};
    size_t per = 1;
    for (int i = 0; i < ndim; i++) {
        s_be32(hdr + 4 + 4 * i, dims[i]);
        if (i) per *= dims[i];
    }
    size_t n = per * actual_items;
    uint8_t *body = malloc(n + 1);
    for (size_t i = 0; i < n; i++) body[i] = (uint8_t)(ndim == 1 ? i % 10 : i * 7);
    if (gz) {
        gzFile f = gzopen(path, "wb");
        ck_assert_ptr_nonnull(f);
        gzwrite(f, hdr, 4 + 4 * ndim);
        if (n) gzwrite(f, body, (unsigned)n);
        gzclose(f);
    } else {
        FILE *f = fopen(path, "wb");
        fwrite(hdr, 1, 4 + 4 * ndim, f);
        fwrite(body, 1, n, f);
        fclose(f);
    }
    free(body);
}

START_TEST(test_idx_parse)
{
    char *dir = eq_test_scratch("idx");
    char ip[4200], lp[4200];
    uint32_t idims[3] = {5, 3, 4}, ldims[1] = {5};
    for (int gz = 0; gz < 2; gz++) {
        snprintf(ip, sizeof ip, "%s/img%d", dir, gz);
        snprintf(lp, sizeof lp, "%s/lab%d", dir, gz);
        s_idx(ip, gz, 3, idims, 5);
        s_idx(lp, gz, 1, ldims, 5);
        eq_err e = {0};
        eq_dataset *ds = eq_dataset_open_idx(ip, lp, 0, &e);
        ck_assert_msg(ds != NULL, "%s", e.msg);
        ck_assert_uint_eq(eq_dataset_size(ds), 5);
        ck_assert_uint_eq(eq_dataset_num_classes(ds), 5);
        ck_assert_int_eq(eq_dataset_label(ds, 3), 3);
        ck_assert_int_eq(eq_dataset_label(ds, 5), -1);
        const uint8_t *px;
        uint32_t h, w, c;
        ck_assert_int_eq(eq_dataset_pixels(ds, 2, &px, &h, &w, &c, NULL), EQ_OK);
        ck_assert_uint_eq(h, 3);
        ck_assert_uint_eq(w, 4);
        ck_assert_uint_eq(c, 1);
        ck_assert_uint_eq(px[1], (uint8_t)((2 * 12 + 1) * 7));
        ck_assert_int_eq(eq_dataset_pixels(ds, 5, &px, &h, &w, &c, NULL), EQ_ERR_INVALID);
        ck_assert_uint_eq(eq_dataset_fingerprint(ds).count, 5);
        eq_dataset_destroy(&ds);
        ck_assert_ptr_null(ds);
    }
    /* gz and raw hold the same content: same fingerprint */
    snprintf(ip, sizeof ip, "%s/img0", dir);
    snprintf(lp, sizeof lp, "%s/lab0", dir);
    eq_dataset *a = eq_dataset_open_idx(ip, lp, 0, NULL);
    snprintf(ip, sizeof ip, "%s/img1", dir);
    snprintf(lp, sizeof lp, "%s/lab1", dir);
    eq_dataset *b = eq_dataset_open_idx(ip, lp, 0, NULL);
    ck_assert(eq_dataset_fingerprint(a).hash == eq_dataset_fingerprint(b).hash);
    eq_dataset_destroy(&a);
    eq_dataset_destroy(&b);
    eq_test_scratch_rm(dir);
}
END_TEST

START_TEST(test_idx_errors)
{
    char *dir = eq_test_scratch("idxbad");
    char ip[4200], lp[4200], bad[4200];
    uint32_t idims[3] = {5, 3, 4}, ldims[1] = {5}, l4[1] = {4};
    snprintf(ip, sizeof ip, "%s/img", dir);
    snprintf(lp, sizeof lp, "%s/lab", dir);
    s_idx(lp, 0, 1, ldims, 5);
    eq_err e = {0};
    for (int gz = 0; gz < 2; gz++) {
        /* header declares 5 items, the file holds 3 */
        s_idx(ip, gz, 3, idims, 3);
        ck_assert_ptr_null(eq_dataset_open_idx(ip, lp, 0, &e));
        ck_assert_int_eq(e.code, EQ_ERR_CORRUPT);
        ck_assert_msg(strstr(e.msg, ip) && strstr(e.msg, "truncated"), "%s", e.msg);
    }
    /* missing */
    snprintf(bad, sizeof bad, "%s/nope", dir);
    ck_assert_ptr_null(eq_dataset_open_idx(bad, lp, 0, &e));
    ck_assert_int_eq(e.code, EQ_ERR_NOTFOUND);
    ck_assert_ptr_nonnull(strstr(e.msg, bad));
    /* bad magic: an image file given as labels */
    s_idx(ip, 0, 3, idims, 5);
    ck_assert_ptr_null(eq_dataset_open_idx(ip, ip, 0, &e));
    ck_assert_int_eq(e.code, EQ_ERR_PARSE);
    ck_assert_ptr_nonnull(strstr(e.msg, "magic"));
    /* truncated header, empty file */
    s_write(bad, "\0\0\x08", 3);
    ck_assert_ptr_null(eq_dataset_open_idx(bad, lp, 0, &e));
    ck_assert_int_eq(e.code, EQ_ERR_CORRUPT);
    s_write(bad, "", 0);
    ck_assert_ptr_null(eq_dataset_open_idx(bad, lp, 0, &e));
    ck_assert_int_eq(e.code, EQ_ERR_CORRUPT);
    /* count mismatch */
    s_idx(ip, 0, 3, idims, 5);
    s_idx(lp, 0, 1, l4, 4);
    ck_assert_ptr_null(eq_dataset_open_idx(ip, lp, 0, &e));
    ck_assert_int_eq(e.code, EQ_ERR_CORRUPT);
    /* huge declared size: limit, no allocation */
    uint32_t huge[3] = {0xffffffffu, 0xffff, 0xffff};
    s_idx(ip, 0, 3, huge, 0);
    ck_assert_ptr_null(eq_dataset_open_idx(ip, lp, 0, &e));
    ck_assert_int_eq(e.code, EQ_ERR_LIMIT);
    /* corrupt gzip stream */
    s_idx(ip, 1, 3, idims, 5);
    size_t len;
    uint8_t *g = s_read(ip, &len);
    for (size_t i = 20; i < len; i++) g[i] ^= 0x5a;
    s_write(ip, g, len);
    free(g);
    ck_assert_ptr_null(eq_dataset_open_idx(ip, lp, 0, &e));
    ck_assert_int_eq(e.code, EQ_ERR_CORRUPT);
    ck_assert_ptr_nonnull(strstr(e.msg, ip));
    eq_test_scratch_rm(dir);
}
END_TEST

START_TEST(test_fashion_mnist_default)
{
    struct stat st;
    if (stat(EQ_FASHION_MNIST_DIR, &st) != 0) {
        fprintf(stderr, "note: %s not installed; skipping\n", EQ_FASHION_MNIST_DIR);
        return;
    }
    eq_err e = {0};
    eq_dataset *ds = eq_dataset_open_mnist_dir(NULL, "val", &e);
    ck_assert_msg(ds != NULL, "%s", e.msg);
    ck_assert_uint_eq(eq_dataset_size(ds), 10000);
    ck_assert_uint_eq(eq_dataset_num_classes(ds), 10);
    const uint8_t *px;
    uint32_t h, w, c;
    ck_assert_int_eq(eq_dataset_pixels(ds, 0, &px, &h, &w, &c, NULL), EQ_OK);
    ck_assert_uint_eq(h, 28);
    ck_assert_uint_eq(w, 28);
    ck_assert_uint_eq(c, 1);
    /* first test label of Fashion-MNIST is 9 (ankle boot) */
    ck_assert_int_eq(eq_dataset_label(ds, 0), 9);
    eq_dataset_destroy(&ds);
    ck_assert_ptr_null(eq_dataset_open_mnist_dir(NULL, "bogus", &e));
    ck_assert_int_eq(e.code, EQ_ERR_INVALID);
}
END_TEST

/* -------------------------------------------------------------- CIFAR */

START_TEST(test_cifar)
{
    char *dir = eq_test_scratch("cifar");
    char p[4200];
    snprintf(p, sizeof p, "%s/data.bin", dir);
    uint8_t rec[3 * 3073];
    for (int r = 0; r < 3; r++) {
        rec[r * 3073] = (uint8_t)(r * 4);
        for (int i = 0; i < 3072; i++) rec[r * 3073 + 1 + i] = (uint8_t)(i / 1024 * 100 + r);
    }
    s_write(p, rec, sizeof rec);
    const char *paths[2] = {p, p};
    eq_err e = {0};
    eq_dataset *ds = eq_dataset_open_cifar(EQ_DS_CIFAR10, paths, 2, &e);
    ck_assert_msg(ds != NULL, "%s", e.msg);
    ck_assert_uint_eq(eq_dataset_size(ds), 6);
    ck_assert_int_eq(eq_dataset_label(ds, 4), 4);
    const uint8_t *px;
    uint32_t h, w, c;
    ck_assert_int_eq(eq_dataset_pixels(ds, 2, &px, &h, &w, &c, NULL), EQ_OK);
    ck_assert_uint_eq(h * w * c, 3072);
    /* CHW planes became HWC */
    ck_assert_uint_eq(px[0], 2);
    ck_assert_uint_eq(px[1], 102);
    ck_assert_uint_eq(px[2], 202);
    ck_assert_uint_eq(px[3 * 500 + 2], 202);
    eq_dataset_destroy(&ds);
    /* CIFAR-100 records are 3074 bytes: a CIFAR-10 file is not a multiple */
    ck_assert_ptr_null(eq_dataset_open_cifar(EQ_DS_CIFAR100, paths, 1, &e));
    ck_assert_int_eq(e.code, EQ_ERR_CORRUPT);
    ck_assert_ptr_nonnull(strstr(e.msg, p));
    /* truncated */
    s_write(p, rec, sizeof rec - 100);
    ck_assert_ptr_null(eq_dataset_open_cifar(EQ_DS_CIFAR10, paths, 1, &e));
    ck_assert_int_eq(e.code, EQ_ERR_CORRUPT);
    /* label out of range */
    rec[0] = 10;
    s_write(p, rec, sizeof rec);
    ck_assert_ptr_null(eq_dataset_open_cifar(EQ_DS_CIFAR10, paths, 1, &e));
    ck_assert_int_eq(e.code, EQ_ERR_CORRUPT);
    ck_assert_ptr_nonnull(strstr(e.msg, "record 0"));
    /* missing directory layout */
    ck_assert_ptr_null(eq_dataset_open_cifar_dir(EQ_DS_CIFAR10, dir, "train", &e));
    ck_assert_int_eq(e.code, EQ_ERR_NOTFOUND);
    eq_test_scratch_rm(dir);
}
END_TEST

/* -------------------------------------------------------- ImageFolder */

START_TEST(test_imagefolder_walk)
{
    char *dir = eq_test_scratch("imf");
    char p[4200];
    const char *dirs[] = {"train", "train/b", "train/a", "train/B", "train/.hid", "train/a/sub",
                          "train/a/sub2", "train/empty"};
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, dirs[i]);
        s_mkdir(p);
    }
    const char *files[] = {"train/b/z.jpg",        "train/b/a.JPEG",   "train/a/sub/y.png",
                           "train/a/x.jpeg",      "train/a/sub2/a.jpg", "train/a/notes.txt",
                           "train/.hid/h.jpg",    "train/B/q.Png",    "train/a/.hidden.jpg",
                           "train/a/a b.jpg",     "train/loose.jpg"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        s_write(p, files[i], i + 1);
    }
    eq_err e = {0};
    /* a class folder without an image file is refused, as torchvision's
     * ImageFolder does ("Found no valid file for the classes empty") */
    ck_assert_ptr_null(eq_dataset_open_imagefolder(dir, "train", 2, &e));
    ck_assert_int_eq(e.code, EQ_ERR_NOTFOUND);
    ck_assert_msg(strstr(e.msg, "1 class folder without image files: 'empty'") && strstr(e.msg, "/train"), "%s",
                  e.msg);
    snprintf(p, sizeof p, "%s/train/empty", dir);
    ck_assert_int_eq(rmdir(p), 0);
    eq_dataset *ds = eq_dataset_open_imagefolder(dir, "train", 1, &e);
    ck_assert_msg(ds != NULL, "%s", e.msg);
    /* classes: B < a < b (strcmp); hidden folders skipped */
    ck_assert_uint_eq(eq_dataset_num_classes(ds), 3);
    ck_assert_str_eq(eq_dataset_class_name(ds, 0), "B");
    ck_assert_str_eq(eq_dataset_class_name(ds, 1), "a");
    ck_assert_str_eq(eq_dataset_class_name(ds, 2), "b");
    /* torchvision order: sorted(os.walk()) then sorted(fnames) */
    const char *want[] = {"B/q.Png", "a/a b.jpg", "a/x.jpeg", "a/sub/y.png", "a/sub2/a.jpg",
                          "b/a.JPEG", "b/z.jpg"};
    const int32_t lab[] = {0, 1, 1, 1, 1, 2, 2};
    ck_assert_uint_eq(eq_dataset_size(ds), 7);
    for (size_t i = 0; i < 7; i++) {
        uint64_t sz = 0;
        ck_assert_str_eq(eq_dataset_relpath(ds, i, &sz), want[i]);
        ck_assert_int_eq(eq_dataset_label(ds, i), lab[i]);
        ck_assert(sz > 0);
    }
    eq_ds_fingerprint f1 = eq_dataset_fingerprint(ds);
    ck_assert_uint_eq(f1.count, 7);
    eq_dataset *ds4 = eq_dataset_open_imagefolder(dir, "train", 4, &e);
    ck_assert_ptr_nonnull(ds4);
    ck_assert(eq_dataset_fingerprint(ds4).hash == f1.hash);
    for (size_t i = 0; i < 7; i++)
        ck_assert_str_eq(eq_dataset_relpath(ds4, i, NULL), eq_dataset_relpath(ds, i, NULL));
    eq_dataset_destroy(&ds4);
    /* index file round trip and its checks */
    char ip[4200];
    snprintf(ip, sizeof ip, "%s/index.eqi", dir);
    ck_assert_int_eq(eq_dataset_save_index(ds, ip, &e), EQ_OK);
    eq_dataset *dx = eq_dataset_open_index(ip, &e);
    ck_assert_msg(dx != NULL, "%s", e.msg);
    ck_assert(eq_dataset_fingerprint(dx).hash == f1.hash);
    ck_assert_uint_eq(eq_dataset_size(dx), 7);
    ck_assert_uint_eq(eq_dataset_num_classes(dx), 3);
    ck_assert_str_eq(eq_dataset_class_name(dx, 2), "b");
    ck_assert_str_eq(eq_dataset_root(dx), eq_dataset_root(ds));
    for (size_t i = 0; i < 7; i++) {
        uint64_t s1, s2;
        ck_assert_str_eq(eq_dataset_relpath(dx, i, &s1), eq_dataset_relpath(ds, i, &s2));
        ck_assert_uint_eq(s1, s2);
        ck_assert_int_eq(eq_dataset_label(dx, i), eq_dataset_label(ds, i));
    }
    eq_dataset_destroy(&dx);
    size_t ilen;
    uint8_t *ib = s_read(ip, &ilen);
    char bp[4200];
    snprintf(bp, sizeof bp, "%s/bad.eqi", dir);
    struct {
        size_t at;
        uint8_t val;
        size_t cut;
        eq_status want;
    } bad[] = {{0, 'X', 0, EQ_ERR_PARSE},        {8, 2, 0, EQ_ERR_VERSION},
               {ilen - 3, 'Q', 0, EQ_ERR_CORRUPT}, {0, 0, ilen - 5, EQ_ERR_CORRUPT},
               {19, 0x7f, 0, EQ_ERR_CORRUPT},      {0, 0, 30, EQ_ERR_CORRUPT}};
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        uint8_t *cp = malloc(ilen);
        memcpy(cp, ib, ilen);
        if (!bad[k].cut) cp[bad[k].at] = bad[k].val;
        s_write(bp, cp, bad[k].cut ? bad[k].cut : ilen);
        free(cp);
        ck_assert_ptr_null(eq_dataset_open_index(bp, &e));
        ck_assert_msg(e.code == bad[k].want, "case %zu: %s", k, e.msg);
        ck_assert_ptr_nonnull(strstr(e.msg, bp));
    }
    free(ib);
    /* a changed size changes the fingerprint */
    snprintf(p, sizeof p, "%s/train/a/x.jpeg", dir);
    s_write(p, "longer content", 14);
    ds4 = eq_dataset_open_imagefolder(dir, "train", 2, &e);
    ck_assert(eq_dataset_fingerprint(ds4).hash != f1.hash);
    eq_dataset_destroy(&ds4);
    eq_dataset_destroy(&ds);
    /* errors */
    ck_assert_ptr_null(eq_dataset_open_imagefolder(dir, "val", 1, &e));
    ck_assert_int_eq(e.code, EQ_ERR_NOTFOUND);
    ck_assert_ptr_nonnull(strstr(e.msg, "/val"));
    snprintf(p, sizeof p, "%s/train/empty", dir);
    s_mkdir(p);
    ck_assert_ptr_null(eq_dataset_open_imagefolder(p, NULL, 1, &e));
    ck_assert_int_eq(e.code, EQ_ERR_NOTFOUND);
    eq_test_scratch_rm(dir);
}
END_TEST

/* A FIFO where an image should be (a COCO file_name, or an ImageFolder
 * file replaced after the walk): refused at once as not a regular file.
 * open() used to block the worker for ever, and with it the loader's stop. */
START_TEST(test_read_file_fifo)
{
    char *dir = eq_test_scratch("fifo");
    char p[4200];
    snprintf(p, sizeof p, "%s/img.jpg", dir);
    ck_assert_int_eq(mkfifo(p, 0600), 0);
    uint8_t *buf = NULL;
    size_t cap = 0, len = 0;
    eq_err e = {0};
    ck_assert_int_eq(eq_read_file(p, &buf, &cap, &len, 1u << 20, &e), EQ_ERR_IO);
    ck_assert_msg(strstr(e.msg, "img.jpg: not a regular file"), "%s", e.msg);
    free(buf);
    eq_test_scratch_rm(dir);
}
END_TEST

START_TEST(test_flat_labels)
{
    char *dir = eq_test_scratch("flat");
    char p[4200], lp[4200];
    snprintf(p, sizeof p, "%s/v", dir);
    s_mkdir(p);
    snprintf(p, sizeof p, "%s/v/sub", dir);
    s_mkdir(p);
    const char *files[] = {"v/b.JPEG", "v/a.JPEG", "v/sub/c.png"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        s_write(p, files[i], (size_t)i + 3);
    }
    snprintf(lp, sizeof lp, "%s/labels.txt", dir);
    const char *txt = "# val labels\nb.JPEG n02\n\na.JPEG,n01\nsub/c.png\tn02\n";
    s_write(lp, txt, strlen(txt));
    snprintf(p, sizeof p, "%s/v", dir);
    eq_err e = {0};
    eq_dataset *ds = eq_dataset_open_flat(p, lp, NULL, &e);
    ck_assert_msg(ds != NULL, "%s", e.msg);
    ck_assert_uint_eq(eq_dataset_size(ds), 3);
    ck_assert_uint_eq(eq_dataset_num_classes(ds), 2);
    ck_assert_str_eq(eq_dataset_class_name(ds, 1), "n02");
    ck_assert_str_eq(eq_dataset_relpath(ds, 0, NULL), "a.JPEG");
    ck_assert_str_eq(eq_dataset_relpath(ds, 2, NULL), "sub/c.png");
    ck_assert_int_eq(eq_dataset_label(ds, 0), 0);
    ck_assert_int_eq(eq_dataset_label(ds, 1), 1);
    ck_assert_int_eq(eq_dataset_label(ds, 2), 1);
    /* names mapped through another dataset's classes (train folders) */
    char tp[4200];
    const char *cls[] = {"n00", "n01", "n02"};
    snprintf(tp, sizeof tp, "%s/t", dir);
    s_mkdir(tp);
    for (int i = 0; i < 3; i++) {
        snprintf(tp, sizeof tp, "%s/t/%s", dir, cls[i]);
        s_mkdir(tp);
        snprintf(tp, sizeof tp, "%s/t/%s/x.jpg", dir, cls[i]);
        s_write(tp, "x", 1);
    }
    snprintf(tp, sizeof tp, "%s/t", dir);
    eq_dataset *train = eq_dataset_open_imagefolder(tp, NULL, 1, &e);
    ck_assert_ptr_nonnull(train);
    eq_dataset *ds2 = eq_dataset_open_flat(p, lp, train, &e);
    ck_assert_msg(ds2 != NULL, "%s", e.msg);
    ck_assert_uint_eq(eq_dataset_num_classes(ds2), 3);
    ck_assert_int_eq(eq_dataset_label(ds2, 0), 1);
    ck_assert_int_eq(eq_dataset_label(ds2, 1), 2);
    ck_assert(eq_dataset_fingerprint(ds2).hash != eq_dataset_fingerprint(ds).hash);
    eq_dataset_destroy(&ds2);
    /* numeric labels */
    const char *num = "a.JPEG 4\nb.JPEG 0\nsub/c.png 2\n";
    s_write(lp, num, strlen(num));
    ds2 = eq_dataset_open_flat(p, lp, NULL, &e);
    ck_assert_ptr_nonnull(ds2);
    ck_assert_uint_eq(eq_dataset_num_classes(ds2), 5);
    ck_assert_int_eq(eq_dataset_label(ds2, 0), 4);
    eq_dataset_destroy(&ds2);
    /* errors name file:line */
    const char *bad[] = {"a.JPEG n01\nmissing.JPEG n01\n", "a.JPEG\n", "a.JPEG x\na.JPEG y\n",
                         "../etc/passwd 1\n", "a.JPEG n09\n"};
    const eq_status want[] = {EQ_ERR_NOTFOUND, EQ_ERR_PARSE, EQ_ERR_INVALID, EQ_ERR_PARSE,
                              EQ_ERR_INVALID};
    for (int i = 0; i < 5; i++) {
        s_write(lp, bad[i], strlen(bad[i]));
        ck_assert_ptr_null(eq_dataset_open_flat(p, lp, i == 4 ? train : NULL, &e));
        ck_assert_msg(e.code == want[i], "case %d: %s", i, e.msg);
        ck_assert_msg(strstr(e.msg, lp) != NULL, "case %d: %s", i, e.msg);
    }
    ck_assert_ptr_nonnull(strstr(eq_dataset_open_flat(p, lp, train, &e) ? "" : e.msg, "n09"));
    s_write(lp, bad[0], strlen(bad[0]));
    eq_dataset_open_flat(p, lp, NULL, &e);
    ck_assert_msg(strstr(e.msg, ":2:") != NULL, "%s", e.msg);
    eq_dataset_destroy(&train);
    eq_dataset_destroy(&ds);
    eq_test_scratch_rm(dir);
}
END_TEST

/* --------------------------------------------------------- transforms */

typedef struct s_tab_draws {
    uint32_t u[32], b[4];
    int nu, nb, iu, ib;
} s_tab_draws;

static float s_tab_uniform(void *ctx)
{
    s_tab_draws *t = ctx;
    ck_assert_int_lt(t->iu, t->nu);
    return (float)t->u[t->iu++] / 16777216.0f;
}

static uint32_t s_tab_below(void *ctx, uint32_t n)
{
    s_tab_draws *t = ctx;
    ck_assert_int_lt(t->ib, t->nb);
    return (uint32_t)(((uint64_t)t->b[t->ib++] * n) >> 32);
}

START_TEST(test_rrc_matches_torchvision)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/tests/fixtures/loader/rrc_table.txt", eq_test_srcdir());
    FILE *f = fopen(p, "r");
    ck_assert_msg(f != NULL, "%s", p);
    int rows = 0, fallbacks = 0;
    uint32_t W, H;
    while (fscanf(f, "%u %u", &W, &H) == 2) {
        s_tab_draws t = {0};
        ck_assert_int_eq(fscanf(f, "%d", &t.nu), 1);
        for (int i = 0; i < t.nu; i++) ck_assert_int_eq(fscanf(f, "%u", &t.u[i]), 1);
        ck_assert_int_eq(fscanf(f, "%d", &t.nb), 1);
        for (int i = 0; i < t.nb; i++) ck_assert_int_eq(fscanf(f, "%u", &t.b[i]), 1);
        int top, left, h, w;
        ck_assert_int_eq(fscanf(f, "%d %d %d %d", &top, &left, &h, &w), 4);
        eq_draws d = {s_tab_uniform, s_tab_below, &t};
        eq_box b = eq_rrc_params_draws(&d, W, H, 0.08, 1.0, 3.0 / 4.0, 4.0 / 3.0);
        ck_assert_msg(b.top == top && b.left == left && b.height == h && b.width == w,
                      "row %d (%ux%u): got %d %d %d %d want %d %d %d %d", rows, W, H, b.top,
                      b.left, b.height, b.width, top, left, h, w);
        ck_assert_int_eq(t.iu, t.nu); /* consumed exactly the same draws */
        ck_assert_int_eq(t.ib, t.nb);
        if (t.nu == 20) fallbacks++;
        rows++;
    }
    fclose(f);
    ck_assert_int_eq(rows, 66);
    ck_assert_int_ge(fallbacks, 6); /* the table exercises the fallback */
}
END_TEST

START_TEST(test_rrc_range)
{
    eq_rng r;
    eq_rng_init(&r, 5, 6);
    const uint32_t sizes[][2] = {{500, 375}, {375, 500}, {64, 64}, {1000, 50}, {3, 2}};
    for (size_t s = 0; s < 5; s++)
        for (int k = 0; k < 2000; k++) {
            uint32_t W = sizes[s][0], H = sizes[s][1];
            eq_box b = eq_rrc_params(&r, W, H, 0.08, 1.0, 0.75, 4.0 / 3.0);
            ck_assert(b.top >= 0 && b.left >= 0 && b.width > 0 && b.height > 0);
            ck_assert((uint32_t)(b.top + b.height) <= H && (uint32_t)(b.left + b.width) <= W);
            if (W >= 64 && H >= 64 && W < 4 * H && H < 4 * W) {
                double a = (double)b.width * b.height / ((double)W * H);
                double ar = (double)b.width / b.height;
                /* rounding of w and h to integers widens the bounds a little */
                ck_assert_msg(a > 0.07 && a <= 1.0, "area fraction %g", a);
                ck_assert_msg(ar > 0.70 && ar < 1.43, "aspect %g", ar);
            }
        }
}
END_TEST

static int s_hexval(int c) { return c <= '9' ? c - '0' : c - 'a' + 10; }

START_TEST(test_resize_matches_pil)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/tests/fixtures/loader/resize.txt", eq_test_srcdir());
    FILE *f = fopen(p, "r");
    ck_assert_msg(f != NULL, "%s", p);
    char mode[8];
    uint32_t W, H, ow, oh;
    double b[4];
    static char hex[200000];
    int cases = 0;
    void *tmp = NULL;
    size_t tcap = 0;
    while (fscanf(f, "%7s %u %u %lf %lf %lf %lf %u %u %199999s", mode, &W, &H, &b[0], &b[1], &b[2],
                  &b[3], &ow, &oh, hex) == 10) {
        uint32_t c = strcmp(mode, "RGB") ? 1 : 3;
        uint8_t *img = malloc((size_t)W * H * c);
        for (uint32_t y = 0; y < H; y++)
            for (uint32_t x = 0; x < W; x++)
                for (uint32_t k = 0; k < c; k++)
                    img[((size_t)y * W + x) * c + k] =
                        (uint8_t)((x * x * 7 + y * y * 3 + x * y * 5 + k * 91 + ((x * 131) ^ (y * 71))) % 256);
        size_t n = (size_t)ow * oh * c;
        ck_assert_uint_eq(strlen(hex), 2 * n);
        uint8_t *out = malloc(n);
        eq_resize_src src = {img, 0, 0, W, H, c};
        eq_resize_geom g = {0, 0, W, H, (float)b[0], (float)b[1], (float)b[2], (float)b[3],
                            ow, oh, 0, 0, ow, oh};
        /* the scalar loops and (where the CPU has them) the AVX2 and AVX-512 kernels */
        for (int simd = 0; simd < 3; simd++) {
            int was = eq_resize_simd(simd);
            eq_err e = {0};
            ck_assert_msg(eq_resize_bilinear(&src, &g, out, &tmp, &tcap, &e) == EQ_OK, "%s",
                          e.msg);
            eq_resize_simd(was);
            size_t diff = 0;
            for (size_t i = 0; i < n; i++) {
                int want = s_hexval(hex[2 * i]) * 16 + s_hexval(hex[2 * i + 1]);
                diff += out[i] != want;
            }
            ck_assert_msg(diff == 0, "case %d (%s %ux%u -> %ux%u, simd %d): %zu bytes differ from PIL",
                          cases, mode, W, H, ow, oh, simd, diff);
        }
        /* a window of the output equals the same part of the full output */
        if (ow > 4 && oh > 4) {
            uint8_t *win = malloc(n);
            eq_resize_geom gw = g;
            gw.wx = 2;
            gw.wy = 1;
            gw.ww = ow - 3;
            gw.wh = oh - 2;
            ck_assert_int_eq(eq_resize_bilinear(&src, &gw, win, &tmp, &tcap, NULL), EQ_OK);
            for (uint32_t y = 0; y < gw.wh; y++)
                ck_assert(!memcmp(win + (size_t)y * gw.ww * c,
                                  out + ((size_t)(y + 1) * ow + 2) * c, (size_t)gw.ww * c));
            free(win);
        }
        free(out);
        free(img);
        cases++;
    }
    fclose(f);
    free(tmp);
    ck_assert_int_eq(cases, 9);
}
END_TEST

/* The AVX2 kernels against the scalar loops on random geometries: RGB and
 * gray, up- and downscales (1 to 32 taps), fractional boxes, windows, and
 * source regions offset inside the picture with the taps at their edges. */
START_TEST(test_resize_simd_equals_scalar)
{
    eq_rng r;
    eq_rng_init(&r, 7, 11);
    void *tmp = NULL;
    size_t tcap = 0;
    int cases = 0, simd_cases = 0;
    for (int it = 0; it < 400; it++) {
        uint32_t c = it % 5 == 4 ? 1 : 3;
        uint32_t W = 1 + eq_rng_below(&r, it % 3 ? 400 : 40), H = 1 + eq_rng_below(&r, 300);
        uint32_t ow = 1 + eq_rng_below(&r, it % 4 ? 80 : 500), oh = 1 + eq_rng_below(&r, 120);
        double bx0 = eq_rng_uniform(&r) * W * 0.5, by0 = eq_rng_uniform(&r) * H * 0.5;
        double bx1 = bx0 + (W - bx0) * (0.05 + 0.95 * eq_rng_uniform(&r));
        double by1 = by0 + (H - by0) * (0.05 + 0.95 * eq_rng_uniform(&r));
        if (!(bx1 > bx0) || !(by1 > by0)) continue;
        eq_resize_geom g = {0, 0, W, H, (float)bx0, (float)by0, (float)bx1, (float)by1,
                            ow, oh, 0, 0, ow, oh};
        if (it % 2) { /* a window */
            g.wx = eq_rng_below(&r, ow);
            g.wy = eq_rng_below(&r, oh);
            g.ww = 1 + eq_rng_below(&r, ow - g.wx);
            g.wh = 1 + eq_rng_below(&r, oh - g.wy);
        }
        /* hold exactly the rectangle the resampler reads, as the decoder does */
        uint32_t sx0, sy0, sx1, sy1;
        eq_resize_taps(&g, &sx0, &sy0, &sx1, &sy1);
        if (sx1 <= sx0 || sy1 <= sy0) continue;
        uint32_t rw = sx1 - sx0, rh = sy1 - sy0;
        uint8_t *img = malloc((size_t)rw * rh * c);
        for (size_t i = 0; i < (size_t)rw * rh * c; i++) img[i] = (uint8_t)eq_rng_below(&r, 256);
        eq_resize_src src = {img, sx0, sy0, rw, rh, c};
        size_t n = (size_t)g.ww * g.wh * c;
        uint8_t *a = malloc(n), *b = malloc(n);
        int was = eq_resize_simd(0);
        eq_err e = {0};
        ck_assert_msg(eq_resize_bilinear(&src, &g, a, &tmp, &tcap, &e) == EQ_OK, "%s", e.msg);
        for (int level = 1; level <= 2; level++) {
            eq_resize_simd(level);
            int got = eq_resize_simd(-1);
            if (got < level) continue; /* the CPU lacks it */
            simd_cases += got == 2 ? 1000 : 1;
            memset(b, 0xA5, n);
            ck_assert_msg(eq_resize_bilinear(&src, &g, b, &tmp, &tcap, &e) == EQ_OK, "%s", e.msg);
            ck_assert_msg(!memcmp(a, b, n),
                          "case %d: c %u %ux%u box %.2f,%.2f-%.2f,%.2f -> %ux%u window "
                          "%u,%u+%ux%u: SIMD level %d and scalar differ",
                          it, c, W, H, bx0, by0, bx1, by1, ow, oh, g.wx, g.wy, g.ww, g.wh, level);
        }
        eq_resize_simd(was);
        free(a);
        free(b);
        free(img);
        cases++;
    }
    free(tmp);
    fprintf(stderr, "resize SIMD vs scalar: %d cases, AVX2 %s, AVX-512 %s\n", cases,
            simd_cases % 1000 ? "compared" : "not available",
            simd_cases >= 1000 ? "compared" : "not available");
    ck_assert_int_gt(cases, 300);
}
END_TEST

/* eq_hflip mirrors every row: RGB (its own loop) and 1/4 channels, odd
 * and even widths, width 1 */
START_TEST(test_hflip)
{
    static const uint32_t ws[] = {1, 2, 5, 224};
    for (uint32_t c = 1; c <= 4; c++)
        for (int wi = 0; wi < 4; wi++) {
            uint32_t w = ws[wi], h = 3;
            size_t n = (size_t)w * h * c;
            uint8_t *img = malloc(n), *ref = malloc(n);
            for (size_t i = 0; i < n; i++) img[i] = (uint8_t)(i * 37 + 11);
            for (uint32_t y = 0; y < h; y++)
                for (uint32_t x = 0; x < w; x++)
                    memcpy(ref + ((size_t)y * w + x) * c, img + ((size_t)y * w + (w - 1 - x)) * c, c);
            eq_hflip(img, w, h, c);
            ck_assert_msg(!memcmp(img, ref, n), "c %u w %u", c, w);
            free(img);
            free(ref);
        }
}
END_TEST

START_TEST(test_color_jitter_matches_torchvision)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/tests/fixtures/loader/jitter.txt", eq_test_srcdir());
    FILE *f = fopen(p, "r");
    ck_assert_msg(f != NULL, "%s", p);
    char ord[8];
    double fb, fc, fs;
    static char hex[8192];
    int cases = 0;
    while (fscanf(f, "%7s %lf %lf %lf %8191s", ord, &fb, &fc, &fs, hex) == 5) {
        const uint32_t W = 23, H = 17;
        uint8_t img[23 * 17 * 3];
        for (uint32_t y = 0; y < H; y++)
            for (uint32_t x = 0; x < W; x++)
                for (uint32_t k = 0; k < 3; k++)
                    img[(y * W + x) * 3 + k] =
                        (uint8_t)((x * x * 7 + y * y * 3 + x * y * 5 + k * 91 + ((x * 131) ^ (y * 71))) % 256);
        uint8_t order[3] = {(uint8_t)(ord[0] - '0'), (uint8_t)(ord[1] - '0'), (uint8_t)(ord[2] - '0')};
        float fac[3] = {(float)fb, (float)fc, (float)fs};
        eq_color_jitter_apply(img, W, H, order, fac);
        ck_assert_uint_eq(strlen(hex), sizeof img * 2);
        size_t diff = 0;
        for (size_t i = 0; i < sizeof img; i++)
            diff += img[i] != s_hexval(hex[2 * i]) * 16 + s_hexval(hex[2 * i + 1]);
        ck_assert_msg(diff == 0, "case %d (%s): %zu bytes differ from torchvision", cases, ord, diff);
        cases++;
    }
    fclose(f);
    ck_assert_int_eq(cases, 6);
    /* parameters: a permutation and factors in range */
    eq_rng r;
    eq_rng_init(&r, 3, 4);
    const float st[3] = {0.4f, 0.4f, 0.0f};
    for (int k = 0; k < 200; k++) {
        uint8_t o[3];
        float fa[3];
        eq_color_jitter_params(&r, st, o, fa);
        ck_assert_uint_eq((1u << o[0]) | (1u << o[1]) | (1u << o[2]), 7);
        ck_assert(fa[0] >= 0.6f && fa[0] <= 1.4f && fa[1] >= 0.6f && fa[1] <= 1.4f);
        ck_assert(fa[2] == 1.0f);
    }
    /* lighting: deterministic, small, not constant */
    float a[3], b[3];
    eq_lighting_offset(1, 0, 2, 3, 0.1f, a);
    eq_lighting_offset(1, 0, 2, 3, 0.1f, b);
    ck_assert(!memcmp(a, b, sizeof a));
    eq_lighting_offset(1, 0, 2, 4, 0.1f, b);
    ck_assert(memcmp(a, b, sizeof a) != 0);
    for (int k = 0; k < 3; k++) ck_assert(fabsf(a[k]) < 0.2f);
}
END_TEST

/* adjust_hue == torchvision's F.adjust_hue on PIL, byte for byte, for
 * negative (wrapping), zero, tiny and extreme factors (hue.txt). */
START_TEST(test_hue_matches_torchvision)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/tests/fixtures/loader/hue.txt", eq_test_srcdir());
    FILE *f = fopen(p, "r");
    ck_assert_msg(f != NULL, "%s", p);
    enum { W = 64, H = 48 };
    static char hex[W * H * 6 + 16];
    static uint8_t img[W * H * 3];
    double fac;
    int cases = 0, changed = 0;
    while (fscanf(f, "%lf %18440s", &fac, hex) == 2) {
        for (uint32_t y = 0; y < H; y++)
            for (uint32_t x = 0; x < W; x++) {
                uint8_t *px = img + (y * W + x) * 3;
                px[0] = (uint8_t)((x * 37 + y * 11) % 256);
                px[1] = (uint8_t)((x * 5 + y * 53) % 256);
                px[2] = (uint8_t)((x * y * 7 + 13) % 256);
            }
        static const uint8_t first[8][3] = {{0, 0, 0},   {255, 255, 255}, {128, 128, 128}, {255, 0, 0},
                                            {0, 255, 0}, {0, 0, 255},     {255, 255, 0},   {1, 2, 3}};
        memcpy(img, first, sizeof first);
        uint8_t before[3] = {img[300], img[301], img[302]};
        eq_adjust_hue(img, W, H, (float)fac);
        ck_assert_uint_eq(strlen(hex), sizeof img * 2);
        size_t diff = 0;
        for (size_t i = 0; i < sizeof img; i++)
            diff += img[i] != s_hexval(hex[2 * i]) * 16 + s_hexval(hex[2 * i + 1]);
        ck_assert_msg(diff == 0, "factor %g: %zu bytes differ from torchvision", fac, diff);
        changed += memcmp(before, img + 300, 3) != 0;
        cases++;
    }
    fclose(f);
    ck_assert_int_eq(cases, 10);
    ck_assert_int_ge(changed, 6); /* the factors do move colours */
}
END_TEST

START_TEST(test_resize_geometry_errors)
{
    uint8_t img[12] = {0}, out[64];
    void *tmp = NULL;
    size_t cap = 0;
    eq_resize_src src = {img, 0, 0, 2, 2, 3};
    eq_resize_geom g = {0, 0, 2, 2, 0, 0, 2, 2, 4, 4, 0, 0, 4, 4};
    ck_assert_int_eq(eq_resize_bilinear(&src, &g, out, &tmp, &cap, NULL), EQ_OK);
    g.ww = 5; /* window past the output */
    ck_assert_int_eq(eq_resize_bilinear(&src, &g, out, &tmp, &cap, NULL), EQ_ERR_INVALID);
    g.ww = 4;
    g.bx1 = 0; /* empty box */
    ck_assert_int_eq(eq_resize_bilinear(&src, &g, out, &tmp, &cap, NULL), EQ_ERR_INVALID);
    g.bx1 = 2;
    g.iw = 4; /* taps outside the region held */
    eq_err e = {0};
    ck_assert_int_eq(eq_resize_bilinear(&src, &g, out, &tmp, &cap, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "outside"));
    free(tmp);
    /* Resize / CenterCrop helpers as torchvision computes them */
    uint32_t ow, oh;
    eq_resize_shorter(500, 375, 256, &ow, &oh);
    ck_assert_uint_eq(ow, 341);
    ck_assert_uint_eq(oh, 256);
    eq_resize_shorter(375, 500, 256, &ow, &oh);
    ck_assert_uint_eq(ow, 256);
    ck_assert_uint_eq(oh, 341);
    ck_assert_int_eq(eq_center_offset(341, 224), 58); /* round(58.5) = 58 (half even) */
    ck_assert_int_eq(eq_center_offset(256, 224), 16);
    ck_assert_int_eq(eq_center_offset(227, 224), 2); /* round(1.5) = 2 */
}
END_TEST

/* -------------------------------------------------------------- decode */

static double s_diff(const uint8_t *a, const uint8_t *b, size_t n, int *maxd)
{
    double s = 0;
    *maxd = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)a[i] - (int)b[i]);
        s += d;
        if (d > *maxd) *maxd = d;
    }
    return s / (double)n;
}

START_TEST(test_crop_decode_equals_full)
{
    eq_decoder *d = eq_decoder_new(0, NULL);
    ck_assert_ptr_nonnull(d);
    const int samps[] = {TJSAMP_420, TJSAMP_444, TJSAMP_422, TJSAMP_GRAY,
                         TJSAMP_420 | S_PROGRESSIVE};
    const uint32_t rects[][4] = {{0, 0, 40, 30}, {37, 21, 150, 97}, {100, 70, 203, 151},
                                 {1, 150, 202, 151}, {17, 3, 18, 140}};
    int worst = 0;
    for (size_t s = 0; s < 5; s++) {
        unsigned long len;
        unsigned char *jpg = s_jpeg(203, 151, samps[s], TJPF_RGB, 85, &len, NULL);
        for (uint32_t num = 1; num <= 8; num++) {
            eq_decoded full;
            ck_assert_int_eq(eq_decode_full(d, jpg, len, num, &full, NULL), EQ_OK);
            ck_assert_uint_eq(full.sw, eq_decode_scaled(203, num));
            ck_assert_uint_eq(full.sh, eq_decode_scaled(151, num));
            size_t fsz = (size_t)full.w * full.h * 3;
            uint8_t *copy = malloc(fsz);
            memcpy(copy, full.pix, fsz);
            uint32_t fw = full.w;
            for (size_t r = 0; r < 5; r++) {
                uint32_t x0 = rects[r][0] * num / 8, y0 = rects[r][1] * num / 8;
                uint32_t x1 = (rects[r][2] * num + 7) / 8, y1 = (rects[r][3] * num + 7) / 8;
                if (x1 <= x0) x1 = x0 + 1;
                if (y1 <= y0) y1 = y0 + 1;
                eq_decoded cr;
                eq_err e = {0};
                ck_assert_msg(eq_decode_region(d, jpg, len, num, x0, y0, x1, y1, &cr, &e) == EQ_OK,
                              "%s", e.msg);
                ck_assert(cr.x0 <= x0 && cr.y0 <= y0 && cr.x0 + cr.w >= x1 && cr.y0 + cr.h >= y1);
                for (uint32_t y = y0; y < y1; y++)
                    for (uint32_t x = x0; x < x1; x++)
                        for (int c = 0; c < 3; c++) {
                            int a = copy[((size_t)y * fw + x) * 3 + c];
                            int b = cr.pix[((size_t)(y - cr.y0) * cr.w + (x - cr.x0)) * 3 + c];
                            if (abs(a - b) > worst) worst = abs(a - b);
                        }
            }
            free(copy);
        }
        tjFree(jpg);
    }
    /* Measured: 0.  The margin around the region keeps libjpeg's edge
     * handling of a cropped block away from the pixels we use. */
    ck_assert_msg(worst == 0, "crop-aware decode differs from full decode by %d", worst);
    eq_decoder_destroy(&d);
    ck_assert_ptr_null(d);
}
END_TEST

START_TEST(test_decode_matches_tj_and_cmyk)
{
    eq_decoder *d = eq_decoder_new(0, NULL);
    tjhandle tj = tjInitDecompress();
    /* 4:2:0 RGB against tjDecompress2 (same library, ISLOW, fancy) */
    unsigned long len;
    unsigned char *jpg = s_jpeg(97, 66, TJSAMP_420, TJPF_RGB, 90, &len, NULL);
    uint8_t *ref = malloc(97 * 66 * 3);
    ck_assert_int_eq(tjDecompress2(tj, jpg, len, ref, 97, 0, 66, TJPF_RGB, 0), 0);
    eq_decoded o;
    ck_assert_int_eq(eq_decode_full(d, jpg, len, 8, &o, NULL), EQ_OK);
    ck_assert(!memcmp(o.pix, ref, 97 * 66 * 3));
    tjFree(jpg);
    /* grayscale JPEG becomes R = G = B */
    jpg = s_jpeg(40, 30, TJSAMP_GRAY, TJPF_RGB, 90, &len, NULL);
    ck_assert_int_eq(eq_decode_full(d, jpg, len, 8, &o, NULL), EQ_OK);
    for (int i = 0; i < 40 * 30; i++) {
        ck_assert_uint_eq(o.pix[3 * i], o.pix[3 * i + 1]);
        ck_assert_uint_eq(o.pix[3 * i], o.pix[3 * i + 2]);
    }
    tjFree(jpg);
    /* CMYK source -> YCCK JPEG (Adobe marker) -> RGB as PIL converts it */
    jpg = s_jpeg(48, 32, TJSAMP_444, TJPF_CMYK, 95, &len, NULL);
    uint8_t *cmyk = malloc(48 * 32 * 4);
    ck_assert_int_eq(tjDecompress2(tj, jpg, len, cmyk, 48, 0, 32, TJPF_CMYK, 0), 0);
    ck_assert_int_eq(eq_decode_full(d, jpg, len, 8, &o, NULL), EQ_OK);
    ck_assert(eq_decoder_is_cmyk(d));
    for (int i = 0; i < 48 * 32; i++)
        for (int c = 0; c < 3; c++) {
            unsigned want = (cmyk[4 * i + c] * cmyk[4 * i + 3] + 127) / 255;
            ck_assert_uint_eq(o.pix[3 * i + c], want);
        }
    free(cmyk);
    tjFree(jpg);
    free(ref);
    tjDestroy(tj);
    eq_decoder_destroy(&d);
}
END_TEST

/* A JPEG through the libjpeg API: optimised Huffman tables (per-image
 * code lengths, long codes) and/or restart markers every `restart` MCU
 * rows, which TurboJPEG 2.1 cannot ask for. */
static unsigned char *s_jpeg_lib(uint32_t w, uint32_t h, int h_samp, int v_samp, int quality,
                                 int optimize, int restart, unsigned long *len)
{
    uint8_t *pix = NULL;
    ck_assert_int_eq(eq_synth_image(7, 1, 3, w * 7 + h, w, h, &pix, NULL), EQ_OK);
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr jerr;
    c.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&c);
    unsigned char *out = NULL;
    *len = 0;
    jpeg_mem_dest(&c, &out, len);
    c.image_width = w;
    c.image_height = h;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, quality, TRUE);
    c.comp_info[0].h_samp_factor = h_samp;
    c.comp_info[0].v_samp_factor = v_samp;
    c.optimize_coding = optimize ? TRUE : FALSE;
    c.restart_in_rows = restart;
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < h) {
        JSAMPROW row = pix + (size_t)c.next_scanline * w * 3;
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    free(pix);
    return out;
}

/* Decode fully and in a region at scale num with the decoder's Huffman
 * path on and off: the same status and the same bytes. */
static int s_both_huffman(eq_decoder *d, const uint8_t *jpg, unsigned long len, uint32_t num,
                          uint32_t rx0, uint32_t ry0, uint32_t rx1, uint32_t ry1)
{
    eq_decoded a, b;
    eq_status sa, sb;
    size_t n = 0;
    uint8_t *keep = NULL;
    eq_decoder_fast_huffman(d, 0, NULL, NULL);
    sa = eq_decode_region(d, jpg, len, num, rx0, ry0, rx1, ry1, &a, NULL);
    if (sa == EQ_OK) {
        n = (size_t)a.w * a.h * 3;
        keep = malloc(n);
        memcpy(keep, a.pix, n);
    }
    eq_decoder_fast_huffman(d, 1, NULL, NULL);
    sb = eq_decode_region(d, jpg, len, num, rx0, ry0, rx1, ry1, &b, NULL);
    ck_assert_int_eq(sa, sb);
    if (sa == EQ_OK) {
        ck_assert_uint_eq(a.w, b.w);
        ck_assert_uint_eq(a.h, b.h);
        ck_assert_uint_eq(a.x0, b.x0);
        ck_assert_uint_eq(a.y0, b.y0);
        ck_assert_msg(!memcmp(keep, b.pix, n), "pixels differ (len %lu, num %u, region %u,%u-%u,%u)",
                      len, num, rx0, ry0, rx1, ry1);
    }
    free(keep);
    return sa == EQ_OK;
}

/* decode.c's own baseline Huffman decoder gives libjpeg's pixels: every
 * sampling, qualities 30-100, standard and optimised tables, partial MCUs,
 * DCT scales 1-8/8, crops (rows skipped by jpeg_skip_scanlines), and on
 * corrupted and truncated files (where it hands over to libjpeg) the same
 * status and bytes; restart markers and progressive files stay libjpeg's. */
START_TEST(test_fast_huffman_equals_libjpeg)
{
    eq_decoder *d = eq_decoder_new(0, NULL);
    static const int samp[4][2] = {{2, 2}, {2, 1}, {1, 1}, {1, 2}};
    uint64_t fast0, fb0, fast1, fb1;
    eq_decoder_fast_huffman(d, -1, &fast0, &fb0);
    int files = 0;
    for (int i = 0; i < 12; i++) {
        uint32_t w = 37 + 53 * (uint32_t)i, h = 29 + 41 * (uint32_t)((i * 5) % 12);
        unsigned long len;
        unsigned char *jpg = s_jpeg_lib(w, h, samp[i % 4][0], samp[i % 4][1], 30 + 7 * i, i % 3 != 0,
                                        0, &len);
        for (uint32_t num = 1; num <= 8; num += (num < 4 ? 1 : 4)) {
            ck_assert(s_both_huffman(d, jpg, len, num, 0, 0, UINT32_MAX, UINT32_MAX));
            ck_assert(s_both_huffman(d, jpg, len, num, w * num / 40, h * num / 20, w * num / 9,
                                     h * num / 10));
        }
        free(jpg);
        files++;
    }
    /* grayscale and 4:2:0 from TurboJPEG (standard tables) */
    unsigned long len;
    unsigned char *jpg = s_jpeg(211, 97, TJSAMP_GRAY, TJPF_RGB, 95, &len, NULL);
    ck_assert(s_both_huffman(d, jpg, len, 8, 0, 0, UINT32_MAX, UINT32_MAX));
    tjFree(jpg);
    jpg = s_jpeg(300, 200, TJSAMP_420, TJPF_RGB, 100, &len, NULL);
    ck_assert(s_both_huffman(d, jpg, len, 8, 30, 40, 200, 150));
    eq_decoder_fast_huffman(d, -1, &fast1, &fb1);
    ck_assert_uint_gt(fast1 - fast0, 100); /* it did decode those */
    ck_assert_uint_eq(fb1, fb0);           /* without handing any back */
    /* no EOI: the data ends with the last MCU (libjpeg's source manager
     * warns when its refill reaches the end, which is an error for us) */
    s_both_huffman(d, jpg, len - 2, 8, 0, 0, UINT32_MAX, UINT32_MAX);
    s_both_huffman(d, jpg, len - 2, 8, 0, 170, 300, 185);
    /* corrupted entropy data and truncations: both decoders agree */
    eq_rng r;
    eq_rng_init(&r, 5, 3);
    unsigned char *bad = malloc(len);
    int ok = 0;
    for (int t = 0; t < 150; t++) {
        memcpy(bad, jpg, len);
        unsigned long blen = len;
        if (t % 3 == 2) {
            blen = 700 + eq_rng_below(&r, (uint32_t)(len - 700));
        } else {
            int nflip = 1 + (int)eq_rng_below(&r, 4);
            for (int k = 0; k < nflip; k++) /* past the headers (~620 bytes) */
                bad[700 + eq_rng_below(&r, (uint32_t)(len - 702))] = (uint8_t)eq_rng_below(&r, 256);
        }
        ok += s_both_huffman(d, bad, blen, t % 2 ? 8 : 4, 0, 0, UINT32_MAX, UINT32_MAX);
        ok += s_both_huffman(d, bad, blen, 8, 20, 150, 120, 190);
    }
    free(bad);
    tjFree(jpg);
    eq_decoder_fast_huffman(d, -1, &fast1, &fb1);
    fprintf(stderr, "own Huffman decoder: %d files, %llu decodes, %llu handed to libjpeg; "
            "%d of 300 corrupted decodes succeeded\n", files, (unsigned long long)(fast1 - fast0),
            (unsigned long long)(fb1 - fb0), ok);
    ck_assert_uint_gt(fb1, fb0); /* the corrupt files did take the hand-over */
    /* restart markers: libjpeg's decoder (not counted), same pixels */
    jpg = s_jpeg_lib(160, 120, 2, 2, 85, 1, 1, &len);
    eq_decoder_fast_huffman(d, -1, &fast0, NULL);
    ck_assert(s_both_huffman(d, jpg, len, 8, 0, 0, UINT32_MAX, UINT32_MAX));
    eq_decoder_fast_huffman(d, -1, &fast1, NULL);
    ck_assert_uint_eq(fast1, fast0);
    free(jpg);
    eq_decoder_destroy(&d);
}
END_TEST

/* fuzz_loader_jpeg's first disagreement between the two Huffman decoders
 * (kept as a fixture: first byte the fuzzer's control byte, then the
 * file): an AC table holding a size-0 symbol with a run other than 0 or 15,
 * which libjpeg takes as an end of block. */
START_TEST(test_fast_huffman_fuzz_cases)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/tests/fixtures/loader/huff_eobn.bin", eq_test_srcdir());
    uint8_t *buf = NULL;
    size_t cap = 0, len = 0;
    ck_assert_int_eq(eq_read_file(p, &buf, &cap, &len, 1u << 20, NULL), EQ_OK);
    eq_decoder *d = eq_decoder_new(4u << 20, NULL);
    uint32_t w, h;
    ck_assert_int_eq(eq_decode_info(d, buf + 1, len - 1, NULL, &w, &h, NULL), EQ_OK);
    uint32_t num = 1 + (buf[0] & 7), sw = eq_decode_scaled(w, num), sh = eq_decode_scaled(h, num);
    ck_assert(s_both_huffman(d, buf + 1, len - 1, num, 0, 0, UINT32_MAX, UINT32_MAX));
    /* the fuzzer's region (a full decode reaches the end of the data
     * without a marker, where both hand over to libjpeg's decoder) */
    uint32_t x0 = sw * ((buf[0] >> 4) & 3) / 4, y0 = sh * (buf[0] >> 6) / 4;
    ck_assert(s_both_huffman(d, buf + 1, len - 1, num, x0, y0, x0 + sw / 3 + 1, y0 + sh / 3 + 1));
    free(buf);
    eq_decoder_destroy(&d);
}
END_TEST

/* Noise through the libjpeg API at high quality: entropy data full of
 * 0xFF 0x00 stuffing (at every position relative to the decoder's 8-byte
 * refills) and blocks whose last coefficient (63) is not zero, where a
 * table entry's second symbol must stay unread.  Smooth rows between the
 * noise give long runs and end-of-block codes. */
static unsigned char *s_jpeg_noise(uint32_t w, uint32_t h, int h_samp, int v_samp, int quality,
                                   int optimize, uint64_t seed, unsigned long *len)
{
    uint8_t *pix = malloc((size_t)w * h * 3);
    eq_rng r;
    eq_rng_init(&r, seed, 11);
    for (uint32_t y = 0; y < h; y++)
        for (uint32_t x = 0; x < w * 3; x++)
            pix[(size_t)y * w * 3 + x] = (y / 8) % 3 == 2 ? (uint8_t)(x + y)
                                                           : (uint8_t)eq_rng_below(&r, 256);
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr jerr;
    c.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&c);
    unsigned char *out = NULL;
    *len = 0;
    jpeg_mem_dest(&c, &out, len);
    c.image_width = w;
    c.image_height = h;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, quality, TRUE);
    c.comp_info[0].h_samp_factor = h_samp;
    c.comp_info[0].v_samp_factor = v_samp;
    c.optimize_coding = optimize ? TRUE : FALSE;
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < h) {
        JSAMPROW row = pix + (size_t)c.next_scanline * w * 3;
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    free(pix);
    return out;
}

/* The own Huffman decoder on stuffed bytes at every refill offset, on
 * coefficient 63, and on files cut at every byte of their last 40 and
 * around stuffed bytes (a lone 0xFF at the end, 0xFF without its 0x00):
 * libjpeg's status and bytes every time, no hand-over on the whole files. */
START_TEST(test_fast_huffman_stuffing_and_cuts)
{
    eq_decoder *d = eq_decoder_new(0, NULL);
    uint64_t fast0, fb0, fast1, fb1;
    static const int samp[3][2] = {{1, 1}, {2, 2}, {2, 1}};
    unsigned long ff00 = 0;
    for (int i = 0; i < 6; i++) {
        uint32_t w = 97 + 37 * (uint32_t)i, h = 67 + 19 * (uint32_t)i;
        unsigned long len;
        unsigned char *jpg =
            s_jpeg_noise(w, h, samp[i % 3][0], samp[i % 3][1], 90 + 2 * i, i & 1, (uint64_t)i, &len);
        for (unsigned long j = 0; j + 1 < len; j++) ff00 += jpg[j] == 0xFF && jpg[j + 1] == 0;
        eq_decoder_fast_huffman(d, -1, &fast0, &fb0);
        ck_assert(s_both_huffman(d, jpg, len, 8, 0, 0, UINT32_MAX, UINT32_MAX));
        ck_assert(s_both_huffman(d, jpg, len, 8, w / 5, h / 3, w / 2, h / 2 + 3));
        ck_assert(s_both_huffman(d, jpg, len, 4, 0, 0, UINT32_MAX, UINT32_MAX));
        eq_decoder_fast_huffman(d, -1, &fast1, &fb1);
        ck_assert_uint_eq(fast1 - fast0, 3);
        ck_assert_uint_eq(fb1, fb0);
        /* cuts: the last 40 bytes, and at and after 10-20 stuffed bytes */
        for (unsigned long cut = len - 40; cut < len; cut++)
            s_both_huffman(d, jpg, cut, 8, 0, 0, UINT32_MAX, UINT32_MAX);
        int n = 0;
        for (unsigned long j = len / 3; j + 1 < len && n < 20; j++)
            if (jpg[j] == 0xFF && jpg[j + 1] == 0) {
                s_both_huffman(d, jpg, j + 1, 8, 0, 0, UINT32_MAX, UINT32_MAX);
                s_both_huffman(d, jpg, j + 2, 8, 0, 0, UINT32_MAX, UINT32_MAX);
                /* 0xFF followed by a non-zero byte: a marker in mid-scan */
                unsigned char keep = jpg[j + 1];
                jpg[j + 1] = (unsigned char)(0xD0 + n % 8);
                s_both_huffman(d, jpg, len, 8, 0, 0, UINT32_MAX, UINT32_MAX);
                jpg[j + 1] = keep;
                n++;
                j += len / 200;
            }
        ck_assert_int_ge(n, 10);
        free(jpg);
    }
    ck_assert_uint_gt(ff00, 500);
    eq_decoder_destroy(&d);
}
END_TEST

/* A file that uses Huffman tables it does not define decodes the same in a
 * decoder that read another file before as in a fresh one (libjpeg keeps a
 * decompressor's tables from file to file; libjpeg-turbo gives a fresh one
 * the standard tables, which TurboJPEG's files use). */
START_TEST(test_decode_independent_of_history)
{
    unsigned long la, lb;
    unsigned char *a = s_jpeg_lib(120, 90, 2, 2, 80, 1, 0, &la); /* optimised tables */
    unsigned char *b = s_jpeg(120, 90, TJSAMP_420, TJPF_RGB, 80, &lb, NULL);
    /* drop b's DHT segments */
    unsigned char *nb = malloc(lb);
    unsigned long n = 0, i = 0;
    int dropped = 0;
    while (i < lb) {
        if (i + 3 < lb && b[i] == 0xFF && b[i + 1] == 0xC4) {
            i += 2 + ((unsigned long)b[i + 2] << 8 | b[i + 3]);
            dropped++;
            continue;
        }
        if (i + 1 < lb && b[i] == 0xFF && b[i + 1] == 0xDA) { /* SOS: copy the rest */
            memcpy(nb + n, b + i, lb - i);
            n += lb - i;
            break;
        }
        nb[n++] = b[i++];
    }
    ck_assert_int_gt(dropped, 0);
    for (int fast = 0; fast < 2; fast++) {
        eq_decoder *fresh = eq_decoder_new(0, NULL), *used = eq_decoder_new(0, NULL);
        eq_decoder_fast_huffman(fresh, fast, NULL, NULL);
        eq_decoder_fast_huffman(used, fast, NULL, NULL);
        eq_decoded o1, o2;
        eq_status s1 = eq_decode_full(fresh, nb, n, 8, &o1, NULL);
        ck_assert_int_eq(eq_decode_full(used, a, la, 8, &o2, NULL), EQ_OK);
        eq_status s2 = eq_decode_full(used, nb, n, 8, &o2, NULL);
        ck_assert_int_eq(s1, s2);
        if (s1 == EQ_OK) {
            ck_assert_uint_eq(o1.w * o1.h, o2.w * o2.h);
            ck_assert_msg(!memcmp(o1.pix, o2.pix, (size_t)o1.w * o1.h * 3),
                          "fast %d: the result depends on the file decoded before", fast);
        }
        eq_decoder_destroy(&fresh);
        eq_decoder_destroy(&used);
    }
    free(nb);
    free(a);
    tjFree(b);
}
END_TEST

static uint8_t *s_png(uint32_t w, uint32_t h, int gray, size_t *len)
{
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    img.width = w;
    img.height = h;
    img.format = gray ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
    size_t n = (size_t)w * h * (gray ? 1 : 3);
    uint8_t *pix = malloc(n);
    for (size_t i = 0; i < n; i++) pix[i] = (uint8_t)(i * 13 + i / 7);
    png_alloc_size_t sz = 0;
    ck_assert(png_image_write_to_memory(&img, NULL, &sz, 0, pix, 0, NULL));
    uint8_t *buf = malloc(sz);
    ck_assert(png_image_write_to_memory(&img, buf, &sz, 0, pix, 0, NULL));
    free(pix);
    *len = sz;
    return buf;
}

START_TEST(test_png_decode)
{
    eq_decoder *d = eq_decoder_new(0, NULL);
    size_t len;
    uint8_t *png = s_png(33, 21, 0, &len);
    ck_assert_int_eq(eq_image_sniff(png, len), EQ_IMG_PNG);
    eq_decoded o;
    ck_assert_int_eq(eq_decode_full(d, png, len, 3, &o, NULL), EQ_OK);
    ck_assert_uint_eq(o.w, 33);
    ck_assert_uint_eq(o.h, 21);
    ck_assert_uint_eq(o.scale_num, 8);
    for (size_t i = 0; i < 33 * 21 * 3; i++) ck_assert_uint_eq(o.pix[i], (uint8_t)(i * 13 + i / 7));
    free(png);
    png = s_png(10, 4, 1, &len);
    ck_assert_int_eq(eq_decode_full(d, png, len, 8, &o, NULL), EQ_OK);
    for (size_t i = 0; i < 40; i++) ck_assert_uint_eq(o.pix[3 * i + 1], (uint8_t)(i * 13 + i / 7));
    /* truncated PNG */
    eq_err e = {0};
    ck_assert_int_ne(eq_decode_full(d, png, len / 2, 8, &o, &e), EQ_OK);
    ck_assert_ptr_nonnull(strstr(e.msg, "PNG"));
    free(png);
    eq_decoder_destroy(&d);
}
END_TEST

START_TEST(test_decode_bad_inputs)
{
    eq_decoder *d = eq_decoder_new(100 * 100, NULL);
    eq_decoded o;
    eq_err e = {0};
    /* empty, text, random bytes */
    ck_assert_int_eq(eq_decode_full(d, (const uint8_t *)"", 0, 8, &o, &e), EQ_ERR_PARSE);
    ck_assert_ptr_nonnull(strstr(e.msg, "empty"));
    ck_assert_int_eq(eq_decode_full(d, (const uint8_t *)"hello world", 11, 8, &o, &e), EQ_ERR_PARSE);
    uint8_t junk[512];
    for (int i = 0; i < 512; i++) junk[i] = (uint8_t)(i * 97 + 3);
    junk[0] = 0xFF;
    junk[1] = 0xD8;
    junk[2] = 0xFF; /* JPEG magic, garbage after */
    ck_assert_int_ne(eq_decode_full(d, junk, sizeof junk, 8, &o, &e), EQ_OK);
    ck_assert_ptr_nonnull(strstr(e.msg, "JPEG"));
    /* truncated JPEG at many lengths: errors, never a crash, decoder reusable */
    unsigned long len;
    unsigned char *jpg = s_jpeg(64, 48, TJSAMP_420, TJPF_RGB, 90, &len, NULL);
    int failures = 0;
    for (unsigned long cut = 1; cut < len; cut += 37) {
        eq_status st = eq_decode_full(d, jpg, cut, 8, &o, &e);
        if (st != EQ_OK) failures++;
        st = eq_decode_region(d, jpg, cut, 4, 3, 5, 20, 21, &o, &e);
    }
    ck_assert_int_eq(failures, (int)((len - 1 + 36) / 37));
    ck_assert_int_eq(eq_decode_full(d, jpg, len, 8, &o, &e), EQ_OK);
    tjFree(jpg);
    /* above the pixel limit: refused from the header */
    jpg = s_jpeg(120, 100, TJSAMP_420, TJPF_RGB, 50, &len, NULL);
    ck_assert_int_eq(eq_decode_full(d, jpg, len, 8, &o, &e), EQ_ERR_LIMIT);
    ck_assert_ptr_nonnull(strstr(e.msg, "limit"));
    uint32_t w, h;
    ck_assert_int_eq(eq_decode_info(d, jpg, len, NULL, &w, &h, &e), EQ_ERR_LIMIT);
    tjFree(jpg);
    /* a header claiming 65500 x 65500 (a bomb) with the default limit */
    eq_decoder *d2 = eq_decoder_new(0, NULL);
    jpg = s_jpeg(16, 16, TJSAMP_420, TJPF_RGB, 50, &len, NULL);
    for (unsigned long i = 0; i + 8 < len; i++)
        if (jpg[i] == 0xFF && jpg[i + 1] == 0xC0) { /* SOF0: len(2) P(1) H(2) W(2) */
            jpg[i + 5] = jpg[i + 7] = 0xFF;
            jpg[i + 6] = jpg[i + 8] = 0xDC;
            break;
        }
    ck_assert_int_eq(eq_decode_full(d2, jpg, len, 8, &o, &e), EQ_ERR_LIMIT);
    tjFree(jpg);
    eq_decoder_destroy(&d2);
    eq_decoder_destroy(&d);
}
END_TEST

/* JPEG fixture from PIL: with DCT scaling off (or when the crop needs full
 * resolution) our path equals torchvision + PIL exactly; with DCT scaling
 * the difference is measured and bounded (doc/loader.md records it). */
typedef struct s_tv_case {
    const char *file;
    int val;          /* 0: resized_crop(box) to `size`; 1: Resize(resize)+CenterCrop(size) */
    eq_box box;
    uint32_t size, resize;
    int exact_pow2;   /* EQ_DCT_POW2 keeps full scale for this case */
} s_tv_case;

START_TEST(test_pipeline_matches_torchvision)
{
    static const s_tv_case cases[] = {
        {"crop48.bin", 0, {13, 21, 90, 70}, 48, 0, 1},
        {"crop48b.bin", 0, {5, 10, 110, 150}, 48, 0, 0},
        {"val56.bin", 1, {0, 0, 0, 0}, 56, 64, 1},
        {"val28.bin", 1, {0, 0, 0, 0}, 28, 32, 0},
    };
    char p[4200];
    size_t len;
    snprintf(p, sizeof p, "%s/tests/fixtures/loader/pic.jpg", eq_test_srcdir());
    uint8_t *jpg = s_read(p, &len);
    eq_decoder *d = eq_decoder_new(0, NULL);
    void *tmp = NULL;
    size_t tcap = 0;
    uint8_t out[56 * 56 * 3];
    char *dir = eq_test_scratch("tv");
    snprintf(p, sizeof p, "%s/c", dir);
    s_mkdir(p);
    snprintf(p, sizeof p, "%s/c/pic.jpg", dir);
    s_write(p, jpg, len);
    eq_dataset *ds = eq_dataset_open_imagefolder(dir, NULL, 1, NULL);
    ck_assert_ptr_nonnull(ds);
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        const s_tv_case *tc = &cases[k];
        size_t rlen;
        snprintf(p, sizeof p, "%s/tests/fixtures/loader/%s", eq_test_srcdir(), tc->file);
        uint8_t *ref = s_read(p, &rlen);
        ck_assert_uint_eq(rlen, (size_t)tc->size * tc->size * 3);
        for (int dct = EQ_DCT_OFF; dct <= EQ_DCT_ANY; dct++) {
            eq_err e = {0};
            if (!tc->val) {
                ck_assert_msg(eq_render_crop(d, jpg, len, tc->box, tc->size, tc->size, dct, out,
                                             &tmp, &tcap, &e) == EQ_OK, "%s", e.msg);
            } else {
                eq_pipeline_cfg cfg;
                eq_pipeline_cfg_default(&cfg, "val", tc->size, 1, 0);
                cfg.resize = tc->resize;
                cfg.dct_scale = dct;
                eq_pipeline *pl = eq_pipeline_new(ds, &cfg, 1, &e);
                ck_assert_msg(pl != NULL, "%s", e.msg);
                int rep = 1;
                int32_t lab = -1;
                ck_assert_int_eq(eq_pipeline_sample(pl, NULL, 0, 0, out, &lab, &rep, NULL), EQ_OK);
                ck_assert_int_eq(rep, 0);
                ck_assert_int_eq(lab, 0);
                eq_pipeline_destroy(&pl);
            }
            int maxd;
            double mae = s_diff(out, ref, rlen, &maxd), mse = 0;
            for (size_t i = 0; i < rlen; i++) mse += (double)(out[i] - ref[i]) * (out[i] - ref[i]);
            mse /= (double)rlen;
            fprintf(stderr, "%-12s vs torchvision, dct_scale %d: MAE %.3f levels, max %d, PSNR %.1f dB\n",
                    tc->file, dct, mae, maxd, mse > 0 ? 10 * log10(255.0 * 255.0 / mse) : INFINITY);
            if (dct == EQ_DCT_OFF || (dct == EQ_DCT_POW2 && tc->exact_pow2))
                ck_assert_msg(maxd == 0, "%s dct %d: max diff %d", tc->file, dct, maxd);
            else
                ck_assert_msg(mae < 3.0 && maxd < 40, "%s dct %d: MAE %.3f max %d", tc->file, dct,
                              mae, maxd);
            /* the bar for the default mode: >= 40 dB against PIL */
            if (dct == EQ_DCT_POW2)
                ck_assert_msg(mse == 0 || 10 * log10(255.0 * 255.0 / mse) >= 40.0, "%s: PSNR",
                              tc->file);
        }
        free(ref);
    }
    eq_dataset_destroy(&ds);
    eq_test_scratch_rm(dir);
    free(tmp);
    eq_decoder_destroy(&d);
    free(jpg);
}
END_TEST

/* ------------------------------------------------------------- sampler */

START_TEST(test_sampler)
{
    const size_t N = 103;
    eq_sampler_cfg cfg = {.seed = 7, .split = 0, .global_batch = 10, .shuffle = 1,
                          .last = EQ_LAST_DROP};
    ck_assert_uint_eq(eq_sampler_steps(&cfg, N), 10);
    eq_sampler *s = eq_sampler_new(&cfg, N, NULL);
    ck_assert_ptr_nonnull(s);
    uint32_t seen[103];
    uint32_t buf[10], n;
    for (uint64_t epoch = 0; epoch < 3; epoch++) {
        memset(seen, 0, sizeof seen);
        for (uint64_t step = 0; step < 10; step++)
            /* three "ranks" with shares 3, 3, 4 */
            for (uint32_t off = 0; off < 10; off += (off < 6 ? 3 : 4)) {
                uint32_t cnt = off < 6 ? 3 : 4;
                ck_assert_int_eq(eq_sampler_range(s, epoch, step, off, cnt, buf, &n, NULL), EQ_OK);
                ck_assert_uint_eq(n, cnt);
                for (uint32_t i = 0; i < n; i++) seen[buf[i]]++;
            }
        uint32_t total = 0;
        for (size_t i = 0; i < N; i++) {
            ck_assert_uint_le(seen[i], 1);
            total += seen[i];
        }
        ck_assert_uint_eq(total, 100); /* 3 dropped */
    }
    /* epochs differ; same epoch same order whatever the split of the range */
    uint32_t a[10], b[10], c5[5];
    eq_sampler_range(s, 0, 4, 0, 10, a, &n, NULL);
    eq_sampler_range(s, 1, 4, 0, 10, b, &n, NULL);
    ck_assert(memcmp(a, b, sizeof a) != 0);
    eq_sampler_range(s, 2, 0, 0, 1, b, &n, NULL); /* evicts epoch 0 */
    eq_sampler_range(s, 0, 4, 5, 5, c5, &n, NULL);
    ck_assert(!memcmp(a + 5, c5, sizeof c5));
    /* errors */
    eq_err e = {0};
    ck_assert_int_eq(eq_sampler_range(s, 0, 10, 0, 1, buf, &n, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "step 10"));
    ck_assert_int_eq(eq_sampler_range(s, 0, 0, 8, 3, buf, &n, &e), EQ_ERR_INVALID);
    eq_sampler_destroy(&s);

    /* wrap: 11 steps, the last completed from the start of the order */
    cfg.last = EQ_LAST_WRAP;
    ck_assert_uint_eq(eq_sampler_steps(&cfg, N), 11);
    s = eq_sampler_new(&cfg, N, NULL);
    uint32_t first[7];
    eq_sampler_range(s, 0, 0, 0, 7, first, &n, NULL);
    eq_sampler_range(s, 0, 10, 0, 10, buf, &n, NULL);
    ck_assert_uint_eq(n, 10);
    ck_assert(!memcmp(buf + 3, first, sizeof first));
    eq_sampler_destroy(&s);

    /* val: identity order, last batch short, never padded */
    cfg.last = EQ_LAST_PARTIAL;
    cfg.shuffle = 0;
    s = eq_sampler_new(&cfg, N, NULL);
    eq_sampler_range(s, 0, 10, 0, 10, buf, &n, NULL);
    ck_assert_uint_eq(n, 3);
    ck_assert_uint_eq(buf[0], 100);
    ck_assert_uint_eq(buf[2], 102);
    eq_sampler_range(s, 0, 10, 4, 6, buf, &n, NULL);
    ck_assert_uint_eq(n, 0);
    eq_sampler_destroy(&s);
    ck_assert_ptr_null(eq_sampler_new(&cfg, 0, &e));
}
END_TEST

START_TEST(test_mix_plan)
{
    eq_mix_cfg m = {.mixup_alpha = 0.2f, .cutmix_alpha = 1.0f, .prob = 0.8f, .switch_prob = 0.5f,
                    .block = 8};
    eq_mix_entry a[32], b[32];
    ck_assert_int_eq(eq_mix_plan(&m, 1, 0, 3, 9, 32, 40, 50, a, NULL), EQ_OK);
    ck_assert_int_eq(eq_mix_plan(&m, 1, 0, 3, 9, 32, 40, 50, b, NULL), EQ_OK);
    ck_assert(!memcmp(a, b, sizeof a));
    ck_assert_int_eq(eq_mix_plan(&m, 1, 0, 3, 10, 32, 40, 50, b, NULL), EQ_OK);
    ck_assert(memcmp(a, b, sizeof a) != 0);
    int nmix = 0, ncut = 0, nnone = 0;
    for (uint64_t step = 0; step < 50; step++) {
        ck_assert_int_eq(eq_mix_plan(&m, 1, 0, 3, step, 32, 40, 50, a, NULL), EQ_OK);
        for (uint32_t i = 0; i < 32; i++) {
            ck_assert_uint_eq(a[i].partner / 8, i / 8); /* inside its block */
            ck_assert(a[i].lambda >= 0 && a[i].lambda <= 1);
            if (a[i].mode == EQ_MIX_NONE) {
                nnone++;
                ck_assert(a[i].lambda == 1.0f);
            } else if (a[i].mode == EQ_MIX_MIXUP) {
                nmix++;
            } else {
                ncut++;
                ck_assert(a[i].y0 <= a[i].y1 && a[i].y1 <= 40 && a[i].x0 <= a[i].x1 &&
                          a[i].x1 <= 50);
                double area = (double)(a[i].y1 - a[i].y0) * (a[i].x1 - a[i].x0);
                ck_assert(fabs(a[i].lambda - (1.0 - area / 2000.0)) < 1e-6);
            }
        }
    }
    /* 1600 draws: prob 0.8, switch 0.5 */
    ck_assert_msg(nnone > 250 && nnone < 400 && nmix > 550 && ncut > 550, "%d %d %d", nnone, nmix,
                  ncut);
    /* each block's partners form a permutation */
    uint32_t cnt[32] = {0};
    for (uint32_t i = 0; i < 32; i++) cnt[a[i].partner]++;
    /* one lambda per block (the original's mixup_data) */
    eq_mix_cfg per = {.mixup_alpha = 0.7f, .prob = 1.0f, .block = 8, .batch_lambda = 1};
    ck_assert_int_eq(eq_mix_plan(&per, 1, 0, 3, 1, 32, 40, 50, a, NULL), EQ_OK);
    for (uint32_t i = 0; i < 32; i++) {
        ck_assert_int_eq(a[i].mode, EQ_MIX_MIXUP);
        ck_assert(a[i].lambda == a[i - i % 8].lambda);
        ck_assert_uint_eq(a[i].partner / 8, i / 8);
    }
    ck_assert(a[0].lambda != a[8].lambda);
    eq_mix_cfg off = {0};
    ck_assert_int_eq(eq_mix_plan(&off, 1, 0, 0, 0, 4, 8, 8, b, NULL), EQ_OK);
    for (int i = 0; i < 4; i++) ck_assert_int_eq(b[i].mode, EQ_MIX_NONE);
    eq_mix_cfg bad = m;
    bad.prob = 2;
    ck_assert_int_eq(eq_mix_plan(&bad, 1, 0, 0, 0, 4, 8, 8, b, NULL), EQ_ERR_INVALID);
}
END_TEST

/* ------------------------------------------------------------ pipeline */

static char *s_synth_dir(uint32_t classes, uint32_t per)
{
    char *dir = eq_test_scratch("synth");
    eq_synth_cfg sc = {.classes = classes, .train_per_class = per, .val_per_class = 1,
                       .mean_pixels = 12000, .quality = 85, .seed = 3, .nthreads = 2};
    eq_err e = {0};
    ck_assert_msg(eq_synth_imagefolder(dir, &sc, &e) == EQ_OK, "%s", e.msg);
    return dir;
}

static void s_batch_alloc(eq_batch *b, uint32_t count, size_t per)
{
    memset(b, 0, sizeof *b);
    b->images = malloc(count * per);
    b->indices = malloc(count * 4);
    b->label_a = malloc(count * 4);
    b->label_b = malloc(count * 4);
    b->lambda = malloc(count * 4);
    b->mix_mode = malloc(count);
    b->partner = malloc(count * 4);
    b->replaced = malloc(count * 4);
}

static void s_batch_free(eq_batch *b)
{
    free(b->images);
    free(b->indices);
    free(b->label_a);
    free(b->label_b);
    free(b->lambda);
    free(b->mix_mode);
    free(b->partner);
    free(b->replaced);
}

/* ColorJitter hue in the pipeline: same bytes on 1 and 4 threads, the
 * colours move against the same pipeline without hue (same geometry: the
 * hue draws come after it), and an out-of-range strength is refused. */
START_TEST(test_pipeline_hue)
{
    char *dir = s_synth_dir(2, 4);
    eq_err e = {0};
    eq_dataset *ds = eq_dataset_open_imagefolder(dir, "train", 2, &e);
    ck_assert_msg(ds != NULL, "%s", e.msg);
    eq_pipeline_cfg cfg;
    eq_pipeline_cfg_default(&cfg, "train", 32, 8, 7);
    cfg.hflip = 0;
    eq_pipeline *plain = eq_pipeline_new(ds, &cfg, 1, &e);
    ck_assert_msg(plain != NULL, "%s", e.msg);
    cfg.hue = 0.3f;
    eq_pipeline *p1 = eq_pipeline_new(ds, &cfg, 1, &e), *p4 = eq_pipeline_new(ds, &cfg, 4, &e);
    ck_assert_ptr_nonnull(p1);
    ck_assert_ptr_nonnull(p4);
    const size_t per = 32 * 32 * 3;
    uint8_t *a = malloc(per), *b = malloc(per), *c = malloc(per);
    int moved = 0;
    for (size_t i = 0; i < eq_dataset_size(ds); i++) {
        ck_assert_int_eq(eq_pipeline_sample(p1, NULL, 1, i, a, NULL, NULL, &e), EQ_OK);
        ck_assert_int_eq(eq_pipeline_sample(p4, NULL, 1, i, b, NULL, NULL, &e), EQ_OK);
        ck_assert(!memcmp(a, b, per));
        ck_assert_int_eq(eq_pipeline_sample(plain, NULL, 1, i, c, NULL, NULL, &e), EQ_OK);
        size_t diff = 0;
        for (size_t k = 0; k < per; k++) diff += a[k] != c[k];
        moved += diff > per / 4;
    }
    ck_assert_int_ge(moved, (int)eq_dataset_size(ds) - 1);
    eq_pipeline_destroy(&p1);
    eq_pipeline_destroy(&p4);
    eq_pipeline_destroy(&plain);
    cfg.hue = 0.6f;
    ck_assert_ptr_null(eq_pipeline_new(ds, &cfg, 1, &e));
    ck_assert_ptr_nonnull(strstr(e.msg, "hue"));
    free(a), free(b), free(c);
    eq_dataset_destroy(&ds);
    eq_test_scratch_rm(dir);
}
END_TEST

START_TEST(test_pipeline_determinism)
{
    char *dir = s_synth_dir(3, 6);
    eq_err e = {0};
    eq_dataset *ds = eq_dataset_open_imagefolder(dir, "train", 2, &e);
    ck_assert_msg(ds != NULL, "%s", e.msg);
    ck_assert_uint_eq(eq_dataset_size(ds), 18);
    eq_pipeline_cfg cfg;
    eq_pipeline_cfg_default(&cfg, "train", 40, 8, 42);
    cfg.jitter[0] = cfg.jitter[1] = cfg.jitter[2] = 0.4f;
    cfg.mix.cutmix_alpha = 1.0f;
    cfg.mix.mixup_alpha = 0.4f;
    cfg.mix.prob = 0.9f;
    eq_pipeline *p1 = eq_pipeline_new(ds, &cfg, 1, &e);
    eq_pipeline *p4 = eq_pipeline_new(ds, &cfg, 4, &e);
    ck_assert_ptr_nonnull(p1);
    ck_assert_ptr_nonnull(p4);
    ck_assert_uint_eq(eq_pipeline_steps(p1), 2);
    const size_t per = 40 * 40 * 3;
    eq_batch a, b, c;
    s_batch_alloc(&a, 8, per);
    s_batch_alloc(&b, 8, per);
    s_batch_alloc(&c, 8, per);
    for (uint64_t epoch = 0; epoch < 2; epoch++) {
        ck_assert_int_eq(eq_pipeline_batch(p1, epoch, 1, 0, 8, &a, &e), EQ_OK);
        ck_assert_int_eq(eq_pipeline_batch(p4, epoch, 1, 0, 8, &b, &e), EQ_OK);
        ck_assert_uint_eq(a.n, 8);
        ck_assert_uint_eq(a.n_replaced, 0);
        ck_assert(!memcmp(a.images, b.images, 8 * per));
        ck_assert(!memcmp(a.label_b, b.label_b, 8 * 4));
        ck_assert(!memcmp(a.lambda, b.lambda, 8 * 4));
        /* the same positions as two sub-ranges: identical bytes */
        ck_assert_int_eq(eq_pipeline_batch(p4, epoch, 1, 0, 3, &c, &e), EQ_OK);
        ck_assert(!memcmp(a.images, c.images, 3 * per));
        ck_assert_int_eq(eq_pipeline_batch(p1, epoch, 1, 3, 5, &c, &e), EQ_OK);
        ck_assert(!memcmp(a.images + 3 * per, c.images, 5 * per));
        ck_assert(!memcmp(a.label_b + 3, c.label_b, 5 * 4));
        /* unmixed and cutmix samples vs the single-sample function */
        uint8_t *one = malloc(per), *partner = malloc(per);
        for (uint32_t i = 0; i < 8; i++) {
            int32_t lab;
            int rep;
            ck_assert_int_eq(eq_pipeline_sample(p1, NULL, epoch, a.indices[i], one, &lab, &rep,
                                                NULL), EQ_OK);
            ck_assert_int_eq(lab, a.label_a[i]);
            if (a.mix_mode[i] != EQ_MIX_CUTMIX) {
                ck_assert(!memcmp(one, a.images + i * per, per));
                continue;
            }
            /* pasted box = partner's pixels, outside = own: exact */
            uint32_t q = a.partner[i];
            ck_assert_int_eq(eq_pipeline_sample(p1, NULL, epoch, a.indices[q], partner, NULL,
                                                NULL, NULL), EQ_OK);
            eq_mix_entry plan[8];
            ck_assert_int_eq(eq_mix_plan(&cfg.mix, 42, 0, epoch, 1, 8, 40, 40, plan, NULL), EQ_OK);
            for (uint32_t y = 0; y < 40; y++)
                for (uint32_t x = 0; x < 40; x++) {
                    int in = y >= plan[i].y0 && y < plan[i].y1 && x >= plan[i].x0 && x < plan[i].x1;
                    const uint8_t *want = (in ? partner : one) + (y * 40 + x) * 3;
                    ck_assert(!memcmp(a.images + i * per + (y * 40 + x) * 3, want, 3));
                }
            ck_assert_int_eq(a.label_b[i], eq_dataset_label(ds, a.indices[q]));
        }
        free(one);
        free(partner);
    }
    /* the daemon's way: samples one by one with its own decoder, then
     * eq_pipeline_mix: identical to eq_pipeline_batch */
    {
        eq_decoder *dd = eq_decoder_new(0, NULL);
        ck_assert_int_eq(eq_pipeline_batch(p4, 1, 1, 2, 5, &a, &e), EQ_OK);
        ck_assert_int_eq(eq_pipeline_batch(p4, 1, 1, 2, 5, &c, &e), EQ_OK); /* indices */
        c.n = 5;
        for (uint32_t i = 0; i < 5; i++)
            ck_assert_int_eq(eq_pipeline_sample(p1, dd, 1, c.indices[i], c.images + i * per, NULL,
                                                NULL, NULL), EQ_OK);
        ck_assert_int_eq(eq_pipeline_mix(p1, dd, 1, 1, 2, &c, &e), EQ_OK);
        ck_assert(!memcmp(a.images, c.images, 5 * per));
        ck_assert(!memcmp(a.label_a, c.label_a, 5 * 4));
        ck_assert(!memcmp(a.label_b, c.label_b, 5 * 4));
        ck_assert(!memcmp(a.lambda, c.lambda, 5 * 4));
        ck_assert(!memcmp(a.partner, c.partner, 5 * 4));
        int mixed = 0;
        for (uint32_t i = 0; i < 5; i++) mixed += a.mix_mode[i] != EQ_MIX_NONE;
        ck_assert_int_gt(mixed, 0);
        eq_decoder_destroy(&dd);
    }
    /* a different epoch gives different samples */
    ck_assert_int_eq(eq_pipeline_batch(p1, 0, 0, 0, 8, &a, &e), EQ_OK);
    ck_assert_int_eq(eq_pipeline_batch(p1, 5, 0, 0, 8, &b, &e), EQ_OK);
    ck_assert(memcmp(a.images, b.images, 8 * per) != 0);
    /* bad requests */
    ck_assert_int_eq(eq_pipeline_batch(p1, 0, 2, 0, 8, &a, &e), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_pipeline_batch(p1, 0, 0, 4, 8, &a, &e), EQ_ERR_INVALID);
    eq_pipeline_stats st;
    eq_pipeline_get_stats(p1, &st);
    ck_assert(st.samples > 0 && st.replaced == 0 && st.bytes_read > 0);
    s_batch_free(&a);
    s_batch_free(&b);
    s_batch_free(&c);
    eq_pipeline_destroy(&p1);
    eq_pipeline_destroy(&p4);
    eq_dataset_destroy(&ds);
    eq_test_scratch_rm(dir);
}
END_TEST

/* The same range from a separate process (its own dataset walk, pipeline
 * and 3 worker threads) and from this one (1 thread): identical bytes. */
START_TEST(test_pipeline_two_processes)
{
    char *dir = s_synth_dir(2, 5);
    const size_t per = 48 * 48 * 3;
    uint8_t *mine = malloc(6 * per), *theirs = malloc(6 * per);
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    for (int side = 0; side < 2; side++) {
        if ((side == 0) != (pid == 0)) continue; /* child: side 0, parent: side 1 */
        eq_dataset *ds = eq_dataset_open_imagefolder(dir, "train", side ? 1 : 3, NULL);
        eq_pipeline_cfg cfg;
        eq_pipeline_cfg_default(&cfg, "train", 48, 6, 77);
        cfg.mix.cutmix_alpha = 1.0f;
        eq_pipeline *pl = eq_pipeline_new(ds, &cfg, side ? 1 : 3, NULL);
        eq_batch b;
        s_batch_alloc(&b, 6, per);
        eq_status st = pl ? eq_pipeline_batch(pl, 3, 0, 0, 6, &b, NULL) : EQ_ERR_INTERNAL;
        if (side == 0) { /* child */
            size_t off = 0;
            if (st == EQ_OK)
                while (off < 6 * per) {
                    ssize_t w = write(fds[1], b.images + off, 6 * per - off);
                    if (w <= 0) break;
                    off += (size_t)w;
                }
            /* free everything: under valgrind the child is checked too */
            s_batch_free(&b);
            eq_pipeline_destroy(&pl);
            eq_dataset_destroy(&ds);
            free(mine);
            free(theirs);
            free(dir);
            close(fds[0]);
            close(fds[1]);
            _exit(off == 6 * per ? 0 : 1);
        }
        ck_assert_int_eq(st, EQ_OK);
        memcpy(mine, b.images, 6 * per);
        s_batch_free(&b);
        eq_pipeline_destroy(&pl);
        eq_dataset_destroy(&ds);
    }
    close(fds[1]);
    size_t got = 0;
    while (got < 6 * per) {
        ssize_t r = read(fds[0], theirs + got, 6 * per - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fds[0]);
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    ck_assert_uint_eq(got, 6 * per);
    ck_assert(!memcmp(mine, theirs, 6 * per));
    free(mine);
    free(theirs);
    eq_test_scratch_rm(dir);
}
END_TEST

static void s_quiet(eq_log_level l, const char *line, void *u)
{
    (void)l;
    (void)line;
    (*(int *)u)++;
}

START_TEST(test_pipeline_bad_files)
{
    char *dir = s_synth_dir(2, 3);
    char p[4200];
    /* class c000 gets: empty, text, truncated JPEG, PNG named .JPEG, bomb */
    snprintf(p, sizeof p, "%s/train/c000/0000000.JPEG", dir);
    size_t len;
    uint8_t *good = s_read(p, &len);
    snprintf(p, sizeof p, "%s/train/c000/a_empty.JPEG", dir);
    s_write(p, "", 0);
    snprintf(p, sizeof p, "%s/train/c000/b_text.jpg", dir);
    s_write(p, "not an image\n", 13);
    snprintf(p, sizeof p, "%s/train/c000/c_trunc.jpg", dir);
    s_write(p, good, len / 2);
    size_t plen;
    uint8_t *png = s_png(50, 40, 0, &plen);
    snprintf(p, sizeof p, "%s/train/c000/d_png.JPEG", dir);
    s_write(p, png, plen);
    free(png);
    free(good);
    eq_err e = {0};
    eq_dataset *ds = eq_dataset_open_imagefolder(dir, "train", 1, &e);
    ck_assert_uint_eq(eq_dataset_size(ds), 10);
    /* val pipeline: identity order, so positions = indices */
    eq_pipeline_cfg cfg;
    eq_pipeline_cfg_default(&cfg, "val", 32, 10, 1);
    eq_pipeline *pl = eq_pipeline_new(ds, &cfg, 2, &e);
    ck_assert_ptr_nonnull(pl);
    eq_batch b;
    s_batch_alloc(&b, 10, 32 * 32 * 3);
    int logged = 0;
    eq_log_set_sink(s_quiet, &logged);
    ck_assert_int_eq(eq_pipeline_batch(pl, 0, 0, 0, 10, &b, &e), EQ_OK);
    eq_log_set_sink(NULL, NULL);
    ck_assert_uint_eq(b.n, 10);
    /* sorted: 0000000..0000002, a_empty, b_text, c_trunc, d_png */
    ck_assert_uint_eq(b.n_replaced, 3);
    ck_assert_uint_eq(b.replaced[0], 3);
    ck_assert_uint_eq(b.replaced[1], 4);
    ck_assert_uint_eq(b.replaced[2], 5);
    ck_assert_int_eq(logged, 3);
    for (int k = 0; k < 32 * 32; k++) {
        ck_assert_uint_eq(b.images[4 * 32 * 32 * 3 + 3 * k], 124);
        ck_assert_uint_eq(b.images[4 * 32 * 32 * 3 + 3 * k + 2], 104);
    }
    ck_assert_str_eq(eq_dataset_relpath(ds, 6, NULL), "c000/d_png.JPEG");
    /* the PNG decoded fine: not the substitute colour everywhere */
    int differs = 0;
    for (int k = 0; k < 32 * 32 * 3; k++) differs |= b.images[6 * 32 * 32 * 3 + k] != 124;
    ck_assert(differs);
    eq_pipeline_stats st;
    eq_pipeline_get_stats(pl, &st);
    ck_assert_uint_eq(st.replaced, 3);
    /* a file removed after the walk is replaced too */
    snprintf(p, sizeof p, "%s/train/c001/0000001.JPEG", dir);
    ck_assert_int_eq(unlink(p), 0);
    eq_log_set_sink(s_quiet, &logged);
    ck_assert_int_eq(eq_pipeline_batch(pl, 0, 0, 0, 10, &b, &e), EQ_OK);
    eq_log_set_sink(NULL, NULL);
    ck_assert_uint_eq(b.n_replaced, 4);
    ck_assert_uint_eq(b.replaced[3], 8);
    s_batch_free(&b);
    eq_pipeline_destroy(&pl);
    eq_dataset_destroy(&ds);
    eq_test_scratch_rm(dir);
}
END_TEST

/* Degenerate shapes (1-2 pixel wide strips, 1x1) go through every pipeline
 * and DCT mode (RandomResizedCrop's fallback, Resize of a strip to a very
 * long side, scaled decodes of 1-pixel images). */
START_TEST(test_pipeline_extreme_shapes)
{
    char *dir = eq_test_scratch("shapes");
    char p[4200];
    snprintf(p, sizeof p, "%s/c", dir);
    s_mkdir(p);
    const uint32_t shapes[][2] = {{1500, 2}, {2, 1500}, {1, 1}, {9, 7}};
    for (int i = 0; i < 4; i++) {
        unsigned long len;
        unsigned char *jpg = s_jpeg(shapes[i][0], shapes[i][1], TJSAMP_420, TJPF_RGB, 80, &len, NULL);
        snprintf(p, sizeof p, "%s/c/%d.jpg", dir, i);
        s_write(p, jpg, len);
        tjFree(jpg);
    }
    eq_dataset *ds = eq_dataset_open_imagefolder(dir, NULL, 1, NULL);
    ck_assert_uint_eq(eq_dataset_size(ds), 4);
    int logged = 0;
    eq_log_set_sink(s_quiet, &logged);
    for (int split = 0; split < 2; split++)
        for (int dct = EQ_DCT_OFF; dct <= EQ_DCT_ANY; dct++) {
            eq_pipeline_cfg cfg;
            eq_pipeline_cfg_default(&cfg, split ? "val" : "train", 32, 4, 5);
            cfg.dct_scale = dct;
            eq_pipeline *pl = eq_pipeline_new(ds, &cfg, 2, NULL);
            ck_assert_ptr_nonnull(pl);
            eq_batch b;
            s_batch_alloc(&b, 4, 32 * 32 * 3);
            for (uint64_t ep = 0; ep < 3; ep++) {
                ck_assert_int_eq(eq_pipeline_batch(pl, ep, 0, 0, 4, &b, NULL), EQ_OK);
                ck_assert_uint_eq(b.n, 4);
            }
            s_batch_free(&b);
            eq_pipeline_destroy(&pl);
        }
    eq_log_set_sink(NULL, NULL);
    /* all of them are real images: none was substituted */
    ck_assert_int_eq(logged, 0);
    eq_dataset_destroy(&ds);
    eq_test_scratch_rm(dir);
}
END_TEST

START_TEST(test_pipeline_memory_sets)
{
    /* a tiny IDX set: PADCROP keeps the stored size, NONE copies */
    char *dir = eq_test_scratch("memset");
    char ip[4200], lp[4200];
    uint32_t idims[3] = {6, 8, 8}, ldims[1] = {6};
    snprintf(ip, sizeof ip, "%s/img", dir);
    snprintf(lp, sizeof lp, "%s/lab", dir);
    s_idx(ip, 0, 3, idims, 6);
    s_idx(lp, 0, 1, ldims, 6);
    eq_dataset *ds = eq_dataset_open_idx(ip, lp, 0, NULL);
    eq_pipeline_cfg cfg;
    eq_pipeline_cfg_default(&cfg, "train", 0, 3, 9);
    cfg.aug = EQ_AUG_NONE;
    eq_err e = {0};
    eq_pipeline *pl = eq_pipeline_new(ds, &cfg, 1, &e);
    ck_assert_msg(pl != NULL, "%s", e.msg);
    uint32_t h, w, c;
    eq_pipeline_geometry(pl, &h, &w, &c);
    ck_assert_uint_eq(h * w * c, 64);
    uint8_t out[64];
    const uint8_t *px;
    eq_dataset_pixels(ds, 4, &px, &h, &w, &c, NULL);
    ck_assert_int_eq(eq_pipeline_sample(pl, NULL, 0, 4, out, NULL, NULL, NULL), EQ_OK);
    ck_assert(!memcmp(out, px, 64));
    eq_pipeline_destroy(&pl);
    cfg.aug = EQ_AUG_PADCROP;
    cfg.pad = 2;
    cfg.hflip = 1;
    pl = eq_pipeline_new(ds, &cfg, 1, &e);
    ck_assert_ptr_nonnull(pl);
    int shifted = 0;
    for (uint64_t ep = 0; ep < 20; ep++) {
        ck_assert_int_eq(eq_pipeline_sample(pl, NULL, ep, 4, out, NULL, NULL, NULL), EQ_OK);
        /* every output pixel is 0 (padding) or a source pixel */
        for (int k = 0; k < 64; k++) {
            int found = out[k] == 0;
            for (int j = 0; j < 64 && !found; j++) found = px[j] == out[k];
            ck_assert(found);
        }
        shifted += memcmp(out, px, 64) != 0;
    }
    ck_assert_int_gt(shifted, 10);
    eq_pipeline_destroy(&pl);
    /* RRC on an in-memory set needs an output size */
    cfg.aug = EQ_AUG_RRC;
    cfg.out_h = cfg.out_w = 0;
    ck_assert_ptr_null(eq_pipeline_new(ds, &cfg, 1, &e));
    ck_assert_int_eq(e.code, EQ_ERR_INVALID);
    cfg.out_h = cfg.out_w = 6;
    pl = eq_pipeline_new(ds, &cfg, 1, &e);
    ck_assert_ptr_nonnull(pl);
    ck_assert_int_eq(eq_pipeline_sample(pl, NULL, 0, 1, out, NULL, NULL, NULL), EQ_OK);
    ck_assert_int_eq(eq_pipeline_sample(pl, NULL, 0, 6, out, NULL, NULL, &e), EQ_ERR_INVALID);
    eq_pipeline_destroy(&pl);
    eq_dataset_destroy(&ds);
    eq_test_scratch_rm(dir);
}
END_TEST

START_TEST(test_synth_properties)
{
    /* Deterministic content, class visible in colour statistics. */
    uint8_t *a = NULL, *b = NULL;
    ck_assert_int_eq(eq_synth_image(1, 3, 10, 5, 120, 90, &a, NULL), EQ_OK);
    ck_assert_int_eq(eq_synth_image(1, 3, 10, 5, 120, 90, &b, NULL), EQ_OK);
    ck_assert(!memcmp(a, b, 120 * 90 * 3));
    free(b);
    ck_assert_int_eq(eq_synth_image(1, 3, 10, 6, 120, 90, &b, NULL), EQ_OK);
    ck_assert(memcmp(a, b, 120 * 90 * 3) != 0);
    free(a);
    free(b);
    ck_assert_int_eq(eq_synth_image(1, 10, 10, 6, 120, 90, &b, NULL), EQ_ERR_INVALID);
    /* ImageNet-like JPEG sizes: ~0.2 MP -> ~110 KB at q90 4:2:0 */
    ck_assert_int_eq(eq_synth_image(1, 0, 10, 0, 500, 400, &a, NULL), EQ_OK);
    tjhandle tj = tjInitCompress();
    unsigned char *jpg = NULL;
    unsigned long len = 0;
    ck_assert_int_eq(tjCompress2(tj, a, 500, 0, 400, TJPF_RGB, &jpg, &len, TJSAMP_420, 90, 0), 0);
    fprintf(stderr, "synthetic 500x400 q90 4:2:0: %lu bytes\n", len);
    ck_assert_msg(len > 70000 && len < 170000, "%lu bytes", len);
    tjFree(jpg);
    tjDestroy(tj);
    free(a);
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("loader");
    TCase *t = tcase_create("datasets");
    tcase_add_test(t, test_idx_parse);
    tcase_add_test(t, test_idx_errors);
    tcase_add_test(t, test_fashion_mnist_default);
    tcase_add_test(t, test_cifar);
    tcase_add_test(t, test_imagefolder_walk);
    tcase_add_test(t, test_read_file_fifo);
    tcase_add_test(t, test_flat_labels);
    suite_add_tcase(s, t);
    t = tcase_create("transforms");
    tcase_add_test(t, test_rrc_matches_torchvision);
    tcase_add_test(t, test_rrc_range);
    tcase_add_test(t, test_resize_matches_pil);
    tcase_add_test(t, test_resize_simd_equals_scalar);
    tcase_add_test(t, test_hflip);
    tcase_add_test(t, test_resize_geometry_errors);
    tcase_add_test(t, test_color_jitter_matches_torchvision);
    tcase_add_test(t, test_hue_matches_torchvision);
    suite_add_tcase(s, t);
    t = tcase_create("decode");
    tcase_set_timeout(t, 20);
    tcase_add_test(t, test_crop_decode_equals_full);
    tcase_add_test(t, test_decode_matches_tj_and_cmyk);
    tcase_add_test(t, test_fast_huffman_equals_libjpeg);
    tcase_add_test(t, test_fast_huffman_fuzz_cases);
    tcase_add_test(t, test_fast_huffman_stuffing_and_cuts);
    tcase_add_test(t, test_decode_independent_of_history);
    tcase_add_test(t, test_png_decode);
    tcase_add_test(t, test_decode_bad_inputs);
    tcase_add_test(t, test_pipeline_matches_torchvision);
    suite_add_tcase(s, t);
    t = tcase_create("sampling");
    tcase_add_test(t, test_sampler);
    tcase_add_test(t, test_mix_plan);
    suite_add_tcase(s, t);
    t = tcase_create("pipeline");
    tcase_set_timeout(t, 20);
    tcase_add_test(t, test_pipeline_determinism);
    tcase_add_test(t, test_pipeline_hue);
    tcase_add_test(t, test_pipeline_two_processes);
    tcase_add_test(t, test_pipeline_bad_files);
    tcase_add_test(t, test_pipeline_memory_sets);
    tcase_add_test(t, test_pipeline_extreme_shapes);
    tcase_add_test(t, test_synth_properties);
    suite_add_tcase(s, t);
    return s;
}

int main(void) { return eq_test_run(s_suite()); }
