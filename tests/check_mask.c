/*
 * tests/check_mask.c -- RLE masks against pycocotools' C mask library.
 *
 * tests/fixtures/coco/masks/masks.txt holds ~1500 cases computed by the
 * reference maskApi.c (gen_masks.py beside it says how): rasterised
 * polygons and boxes (compared as compressed strings, i.e. bit for bit),
 * toBbox (with the zero-run quirk Q6), area, merge, mask IoU (crowd and
 * not, size mismatch), box IoU and the string format.  Hand-made unit
 * tests cover encode/decode and the error paths.
 */
#include "evaluator/mask.h"
#include "tests/testutil.h"

#include <math.h>

/* ---- fixture file ------------------------------------------------------ */

typedef struct s_tok {
    char **v;
    size_t n, i;
} s_tok;

static void s_split(char *line, s_tok *t)
{
    t->n = t->i = 0;
    size_t cap = 64;
    t->v = malloc(cap * sizeof *t->v);
    ck_assert_ptr_nonnull(t->v);
    for (char *p = strtok(line, " \n"); p; p = strtok(NULL, " \n")) {
        if (t->n == cap) {
            cap *= 2;
            t->v = realloc(t->v, cap * sizeof *t->v);
            ck_assert_ptr_nonnull(t->v);
        }
        t->v[t->n++] = p;
    }
}

static const char *s_next(s_tok *t)
{
    ck_assert_uint_lt(t->i, t->n);
    return t->v[t->i++];
}
static long s_long(s_tok *t) { return strtol(s_next(t), NULL, 10); }
static double s_dbl(s_tok *t) { return strtod(s_next(t), NULL); }
static void s_eq(s_tok *t) { ck_assert_str_eq(s_next(t), "="); }

static eq_rle s_from_str(const char *s, uint32_t h, uint32_t w)
{
    eq_rle r;
    eq_err err;
    ck_assert_msg(eq_rle_fr_string(s, strlen(s), h, w, &r, &err) == EQ_OK, "%s", err.msg);
    return r;
}

static void s_check_str(const eq_rle *r, const char *want, size_t lineno)
{
    char *s = eq_rle_to_string(r, NULL);
    ck_assert_ptr_nonnull(s);
    ck_assert_msg(strcmp(s, want) == 0, "masks.txt:%zu: got %s, reference %s", lineno, s, want);
    free(s);
}

START_TEST(test_reference_cases)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/coco/masks/masks.txt", eq_test_srcdir());
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "%s", path);
    static char line[1 << 16];
    size_t lineno = 0, ncases = 0;
    eq_err err;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        s_tok t;
        s_split(line, &t);
        if (t.n == 0) {
            free(t.v);
            continue;
        }
        const char *kind = s_next(&t);
        eq_rle r;
        memset(&r, 0, sizeof r);
        if (strcmp(kind, "poly") == 0) {
            uint32_t h = (uint32_t)s_long(&t), w = (uint32_t)s_long(&t);
            size_t k = (size_t)s_long(&t);
            double *xy = malloc((2 * k + 1) * sizeof *xy);
            for (size_t j = 0; j < 2 * k; j++) xy[j] = s_dbl(&t);
            s_eq(&t);
            ck_assert_int_eq(eq_rle_fr_poly(xy, k, h, w, &r, &err), EQ_OK);
            ck_assert_int_eq(eq_rle_check(&r, NULL), EQ_OK);
            s_check_str(&r, s_next(&t), lineno);
            free(xy);
        } else if (strcmp(kind, "bbox") == 0) {
            uint32_t h = (uint32_t)s_long(&t), w = (uint32_t)s_long(&t);
            double bb[4];
            for (int j = 0; j < 4; j++) bb[j] = s_dbl(&t);
            s_eq(&t);
            ck_assert_int_eq(eq_rle_fr_bbox(bb, h, w, &r, &err), EQ_OK);
            s_check_str(&r, s_next(&t), lineno);
        } else if (strcmp(kind, "tobbox") == 0) {
            uint32_t h = (uint32_t)s_long(&t), w = (uint32_t)s_long(&t);
            size_t m = (size_t)s_long(&t);
            uint32_t *c = malloc((m + 1) * sizeof *c);
            for (size_t j = 0; j < m; j++) c[j] = (uint32_t)s_long(&t);
            s_eq(&t);
            ck_assert_int_eq(eq_rle_init(&r, h, w, c, m, &err), EQ_OK);
            double bb[4];
            eq_rle_to_bbox(&r, bb);
            for (int j = 0; j < 4; j++) {
                double want = s_dbl(&t);
                ck_assert_msg(bb[j] == want, "masks.txt:%zu: bbox[%d] %.17g, reference %.17g",
                              lineno, j, bb[j], want);
            }
            free(c);
        } else if (strcmp(kind, "area") == 0) {
            uint32_t h = (uint32_t)s_long(&t), w = (uint32_t)s_long(&t);
            r = s_from_str(s_next(&t), h, w);
            s_eq(&t);
            ck_assert_uint_eq(eq_rle_area(&r), (unsigned long)s_long(&t));
        } else if (strcmp(kind, "merge") == 0) {
            int inter = (int)s_long(&t);
            uint32_t h = (uint32_t)s_long(&t), w = (uint32_t)s_long(&t);
            size_t n = (size_t)s_long(&t);
            eq_rle *in = calloc(n, sizeof *in);
            for (size_t j = 0; j < n; j++) in[j] = s_from_str(s_next(&t), h, w);
            s_eq(&t);
            ck_assert_int_eq(eq_rle_merge(in, n, inter, &r, &err), EQ_OK);
            s_check_str(&r, s_next(&t), lineno);
            for (size_t j = 0; j < n; j++) eq_rle_free(&in[j]);
            free(in);
        } else if (strcmp(kind, "iou") == 0) {
            int crowd = (int)s_long(&t);
            uint32_t h1 = (uint32_t)s_long(&t), w1 = (uint32_t)s_long(&t);
            eq_rle a = s_from_str(s_next(&t), h1, w1);
            uint32_t h2 = (uint32_t)s_long(&t), w2 = (uint32_t)s_long(&t);
            eq_rle b = s_from_str(s_next(&t), h2, w2);
            s_eq(&t);
            double want = s_dbl(&t), got = eq_rle_iou(&a, &b, crowd, NULL, NULL), o;
            ck_assert_msg(got == want, "masks.txt:%zu: iou %.17g, reference %.17g", lineno, got,
                          want);
            uint8_t cr = (uint8_t)crowd;
            ck_assert_int_eq(eq_rle_iou_matrix(&a, 1, &b, 1, &cr, &o, &err), EQ_OK);
            ck_assert(o == want);
            eq_rle_free(&a);
            eq_rle_free(&b);
        } else if (strcmp(kind, "bbiou") == 0) {
            int crowd = (int)s_long(&t);
            double d[4], g[4];
            for (int j = 0; j < 4; j++) d[j] = s_dbl(&t);
            for (int j = 0; j < 4; j++) g[j] = s_dbl(&t);
            s_eq(&t);
            double want = s_dbl(&t), o;
            ck_assert(eq_bbox_iou(d, g, crowd) == want);
            uint8_t cr = (uint8_t)crowd;
            eq_bbox_iou_matrix(d, 1, g, 1, &cr, &o);
            ck_assert(o == want);
        } else if (strcmp(kind, "str") == 0) {
            size_t m = (size_t)s_long(&t);
            uint32_t *c = malloc((m + 1) * sizeof *c);
            uint64_t sum = 0;
            for (size_t j = 0; j < m; j++) sum += c[j] = (uint32_t)s_long(&t);
            s_eq(&t);
            const char *want = s_next(&t);
            ck_assert_int_eq(eq_rle_init(&r, 1, (uint32_t)sum, c, m, &err), EQ_OK);
            s_check_str(&r, want, lineno);
            eq_rle back = s_from_str(want, 1, (uint32_t)sum);
            ck_assert_uint_eq(back.m, m);
            for (size_t j = 0; j < m; j++) ck_assert_uint_eq(back.cnts[j], c[j]);
            eq_rle_free(&back);
            free(c);
        } else {
            ck_abort_msg("masks.txt:%zu: unknown case '%s'", lineno, kind);
        }
        eq_rle_free(&r);
        free(t.v);
        ncases++;
    }
    fclose(f);
    ck_assert_uint_gt(ncases, 1000);
}
END_TEST

/* ---- the literal port of maskApi.c rleFrPoly (the library's version
 * skips the traced points that cannot cross a pixel centre; this one keeps
 * them all), for differential testing --------------------------------- */

static int s_ref_uint_cmp(const void *a, const void *b)
{
    uint32_t c = *(const uint32_t *)a, d = *(const uint32_t *)b;
    return c > d ? 1 : c < d ? -1 : 0;
}

static eq_status s_ref_fr_poly(const double *xy, size_t k, uint32_t h, uint32_t w, eq_rle *out,
                         eq_err *err)
{
    memset(out, 0, sizeof *out);
    eq_status st;
    const double scale = 5;
    const double lim = (double)(1 << 30);
    for (size_t j = 0; j < 2 * k; j++) {
        double v = scale * xy[j] + .5;
        if (!(v > -lim && v < lim))
            return eq_err_set(err, EQ_ERR_INVALID,
                              "polygon coordinate %zu (%g) is not finite or too large", j, xy[j]);
    }
    if (h == 0 || w == 0) {
        /* The reference's column test compares against w-1 computed in
         * unsigned arithmetic; a 0-pixel mask is defined here as [0]. */
        uint32_t zero = 0;
        return eq_rle_init(out, h, w, &zero, 1, err);
    }
    int *x = eq_malloc_array(k + 1, sizeof *x), *y = eq_malloc_array(k + 1, sizeof *y);
    int *u = NULL, *v = NULL;
    uint32_t *a = NULL, *b = NULL;
    st = EQ_ERR_NOMEM;
    if (!x || !y) goto done;
    /* upsample and get discrete points densely along the entire boundary */
    for (size_t j = 0; j < k; j++) x[j] = (int)(scale * xy[j * 2 + 0] + .5);
    for (size_t j = 0; j < k; j++) y[j] = (int)(scale * xy[j * 2 + 1] + .5);
    if (k > 0) {
        x[k] = x[0];
        y[k] = y[0];
    }
    uint64_t m = 0;
    for (size_t j = 0; j < k; j++) {
        uint32_t dx = (uint32_t)abs(x[j] - x[j + 1]), dy = (uint32_t)abs(y[j] - y[j + 1]);
        m += (dx > dy ? dx : dy) + 1;
    }
    if (m > ((uint64_t)1 << 28)) {
        st = eq_err_set(err, EQ_ERR_LIMIT, "polygon boundary too long (%llu points)",
                        (unsigned long long)m);
        goto done;
    }
    u = eq_malloc_array(m ? m : 1, sizeof *u);
    v = eq_malloc_array(m ? m : 1, sizeof *v);
    if (!u || !v) goto done;
    m = 0;
    for (size_t j = 0; j < k; j++) {
        int xs = x[j], xe = x[j + 1], ys = y[j], ye = y[j + 1], dx, dy, t, d;
        int flip;
        double s;
        dx = abs(xe - xs);
        dy = abs(ys - ye);
        flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
        if (flip) {
            t = xs;
            xs = xe;
            xe = t;
            t = ys;
            ys = ye;
            ye = t;
        }
        if (dx == 0 && dy == 0) {
            /* A repeated vertex: the reference computes 0/0 here and converts
             * NaN to int; that point's row is never used (its column equals
             * its neighbours'), so any value will do. */
            u[m] = xs;
            v[m] = ys;
            m++;
            continue;
        }
        s = dx >= dy ? (double)(ye - ys) / dx : (double)(xe - xs) / dy;
        if (dx >= dy)
            for (d = 0; d <= dx; d++) {
                t = flip ? dx - d : d;
                u[m] = t + xs;
                v[m] = (int)(ys + s * t + .5);
                m++;
            }
        else
            for (d = 0; d <= dy; d++) {
                t = flip ? dy - d : d;
                v[m] = t + ys;
                u[m] = (int)(xs + s * t + .5);
                m++;
            }
    }
    /* get points along the y-boundary and downsample */
    free(x);
    free(y);
    x = y = NULL;
    size_t np = (size_t)m, nc = 0;
    a = eq_malloc_array(np + 1, sizeof *a);
    if (!a) goto done;
    for (size_t j = 1; j < np; j++) {
        if (u[j] == u[j - 1]) continue;
        double xd = (double)(u[j] < u[j - 1] ? u[j] : u[j] - 1);
        xd = (xd + .5) / scale - .5;
        if (floor(xd) != xd || xd < 0 || xd > (double)(w - 1)) continue;
        double yd = (double)(v[j] < v[j - 1] ? v[j] : v[j - 1]);
        yd = (yd + .5) / scale - .5;
        if (yd < 0)
            yd = 0;
        else if (yd > h)
            yd = h;
        yd = ceil(yd);
        a[nc++] = (uint32_t)((uint64_t)(int)xd * h + (uint64_t)(int)yd);
    }
    /* compute the rle encoding given the y-boundary points */
    a[nc++] = h * w;
    qsort(a, nc, sizeof *a, s_ref_uint_cmp);
    uint32_t p = 0;
    for (size_t j = 0; j < nc; j++) {
        uint32_t t = a[j];
        a[j] -= p;
        p = t;
    }
    b = eq_malloc_array(nc, sizeof *b);
    if (!b) goto done;
    size_t j = 0, bm = 0;
    b[bm++] = a[j++];
    while (j < nc) {
        if (a[j] > 0)
            b[bm++] = a[j++];
        else {
            j++;
            if (j < nc) b[bm - 1] += a[j++];
        }
    }
    uint32_t *shrunk = realloc(b, bm * sizeof *b);
    out->h = h;
    out->w = w;
    out->m = bm;
    out->cnts = shrunk ? shrunk : b;
    b = NULL;
    st = EQ_OK;
done:
    if (st == EQ_ERR_NOMEM) eq_err_set(err, st, "out of memory rasterising a polygon");
    free(x);
    free(y);
    free(u);
    free(v);
    free(a);
    free(b);
    return st;
}

START_TEST(test_fr_poly_vs_literal_port)
{
    /* random polygons on random grids, with negative, off-image, repeated
     * and grid-aligned vertices */
    uint64_t st = 0x9e3779b97f4a7c15ull;
#define RND() (st ^= st << 13, st ^= st >> 7, st ^= st << 17, st)
    for (int it = 0; it < 20000; it++) {
        uint32_t h = 1 + (uint32_t)(RND() % 50), w = 1 + (uint32_t)(RND() % 50);
        size_t k = 1 + (size_t)(RND() % 9);
        double xy[20];
        for (size_t j = 0; j < 2 * k; j++) {
            int64_t lim = j % 2 ? h : w;
            uint64_t r = RND();
            switch (r % 4) {
            case 0: xy[j] = (double)((int64_t)((r >> 8) % (uint64_t)(lim + 20)) - 10); break;
            case 1:
                xy[j] = (double)((int64_t)((r >> 8) % (uint64_t)(5 * lim + 60)) - 30) / 5.0 +
                        0.1 * (double)((r >> 40) % 3);
                break;
            case 2: xy[j] = (double)(r >> 11) / 9007199254740992.0 * (double)(lim + 10) - 5; break;
            default: xy[j] = j >= 2 ? xy[j - 2] : 0; break;
            }
        }
        eq_rle r1, r2;
        ck_assert_int_eq(eq_rle_fr_poly(xy, k, h, w, &r1, NULL), EQ_OK);
        ck_assert_int_eq(s_ref_fr_poly(xy, k, h, w, &r2, NULL), EQ_OK);
        ck_assert_uint_eq(r1.m, r2.m);
        ck_assert_mem_eq(r1.cnts, r2.cnts, r1.m * sizeof *r1.cnts);
        eq_rle_free(&r1);
        eq_rle_free(&r2);
    }
#undef RND
}
END_TEST

/* ---- unit tests ---------------------------------------------------------- */

START_TEST(test_encode_decode)
{
    /* 3x4 column-major mask */
    const uint8_t m[12] = {1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1};
    eq_rle r;
    ck_assert_int_eq(eq_rle_encode(m, 3, 4, &r, NULL), EQ_OK);
    ck_assert_uint_eq(r.m, 4);
    uint32_t want[4] = {0, 2, 5, 5};
    for (int i = 0; i < 4; i++) ck_assert_uint_eq(r.cnts[i], want[i]);
    ck_assert_uint_eq(eq_rle_area(&r), 7);
    uint8_t back[12];
    ck_assert_int_eq(eq_rle_decode(&r, back, NULL), EQ_OK);
    ck_assert_mem_eq(back, m, 12);
    double bb[4];
    eq_rle_to_bbox(&r, bb);
    /* a run spans columns 2-3 ... and column 0: x 0..3, rows full */
    ck_assert(bb[0] == 0 && bb[1] == 0 && bb[2] == 4 && bb[3] == 3);
    eq_rle_free(&r);
    /* all zeros: one count h*w */
    const uint8_t z[6] = {0};
    ck_assert_int_eq(eq_rle_encode(z, 2, 3, &r, NULL), EQ_OK);
    ck_assert_uint_eq(r.m, 1);
    ck_assert_uint_eq(r.cnts[0], 6);
    eq_rle_to_bbox(&r, bb);
    ck_assert(bb[0] == 0 && bb[1] == 0 && bb[2] == 0 && bb[3] == 0);
    eq_rle_free(&r);
}
END_TEST

START_TEST(test_decode_checks_sum)
{
    uint32_t c[2] = {5, 5};
    eq_rle r;
    eq_err err;
    ck_assert_int_eq(eq_rle_init(&r, 3, 3, c, 2, NULL), EQ_OK);
    uint8_t out[9];
    ck_assert_int_eq(eq_rle_decode(&r, out, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "sum to 10") != NULL, "%s", err.msg);
    eq_rle_free(&r);
    ck_assert_int_eq(eq_rle_init(&r, 70000, 70000, c, 2, &err), EQ_ERR_INVALID);
}
END_TEST

START_TEST(test_triangle_from_spec)
{
    /* COCOEVAL.md §8.5: the triangle (0,0),(10,0),(0,10) covers 45 pixels,
     * 9 of them in the first column. */
    const double xy[6] = {0, 0, 10, 0, 0, 10};
    eq_rle r;
    ck_assert_int_eq(eq_rle_fr_poly(xy, 3, 10, 10, &r, NULL), EQ_OK);
    ck_assert_uint_eq(eq_rle_area(&r), 45);
    uint8_t m[100];
    ck_assert_int_eq(eq_rle_decode(&r, m, NULL), EQ_OK);
    int col0 = 0;
    for (int y = 0; y < 10; y++) col0 += m[y];
    ck_assert_int_eq(col0, 9);
    eq_rle_free(&r);
    /* box [0, 0, 1, 1] covers exactly the first pixel */
    const double bb[4] = {0, 0, 1, 1};
    ck_assert_int_eq(eq_rle_fr_bbox(bb, 3, 3, &r, NULL), EQ_OK);
    ck_assert_uint_eq(r.m, 3);
    ck_assert_uint_eq(r.cnts[0], 0);
    ck_assert_uint_eq(r.cnts[1], 1);
    ck_assert_uint_eq(r.cnts[2], 8);
    eq_rle_free(&r);
    /* non-finite coordinates are refused */
    const double bad[6] = {0, 0, NAN, 0, 0, 10};
    eq_err err;
    ck_assert_int_eq(eq_rle_fr_poly(bad, 3, 10, 10, &r, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "coordinate 2") != NULL, "%s", err.msg);
}
END_TEST

START_TEST(test_bbox_zero_runs_quirk)
{
    /* Q6: zero-length runs confuse rleToBbox exactly as in the reference */
    uint32_t c1[5] = {0, 0, 5, 2, 9}, c2[5] = {3, 0, 2, 2, 9};
    eq_rle r;
    double bb[4];
    ck_assert_int_eq(eq_rle_init(&r, 4, 4, c1, 5, NULL), EQ_OK);
    eq_rle_to_bbox(&r, bb);
    ck_assert(bb[2] == 1073741824.0);
    eq_rle_free(&r);
    ck_assert_int_eq(eq_rle_init(&r, 4, 4, c2, 5, NULL), EQ_OK);
    eq_rle_to_bbox(&r, bb);
    ck_assert(bb[0] == 0 && bb[1] == 1 && bb[2] == 2 && bb[3] == 3);
    eq_rle_free(&r);
}
END_TEST

START_TEST(test_merge_and_iou_edges)
{
    /* Q7: merge of different sizes -> empty 0x0; IoU -1 */
    uint32_t a[3] = {0, 4, 5}, b[3] = {0, 4, 8};
    eq_rle ra, rb, out;
    ck_assert_int_eq(eq_rle_init(&ra, 3, 3, a, 3, NULL), EQ_OK);
    ck_assert_int_eq(eq_rle_init(&rb, 3, 4, b, 3, NULL), EQ_OK);
    eq_rle both[2] = {ra, rb};
    ck_assert_int_eq(eq_rle_merge(both, 2, 0, &out, NULL), EQ_OK);
    ck_assert_uint_eq(out.h, 0);
    ck_assert_uint_eq(out.w, 0);
    ck_assert_uint_eq(out.m, 0);
    eq_rle_free(&out);
    ck_assert(eq_rle_iou(&ra, &rb, 0, NULL, NULL) == -1);
    /* crowd IoU divides by the result's area */
    uint32_t c[3] = {0, 2, 7};
    eq_rle rc;
    ck_assert_int_eq(eq_rle_init(&rc, 3, 3, c, 3, NULL), EQ_OK);
    ck_assert(eq_rle_iou(&rc, &ra, 1, NULL, NULL) == 1.0);
    ck_assert(eq_rle_iou(&rc, &ra, 0, NULL, NULL) == 0.5);
    /* union with itself is itself; intersection of disjoint masks empty */
    eq_rle same[2] = {ra, ra};
    ck_assert_int_eq(eq_rle_merge(same, 2, 0, &out, NULL), EQ_OK);
    ck_assert_uint_eq(out.m, 3);
    ck_assert_uint_eq(out.cnts[1], 4);
    eq_rle_free(&out);
    uint32_t d[2] = {4, 5};
    eq_rle rd;
    ck_assert_int_eq(eq_rle_init(&rd, 3, 3, d, 2, NULL), EQ_OK);
    eq_rle dis[2] = {ra, rd};
    ck_assert_int_eq(eq_rle_merge(dis, 2, 1, &out, NULL), EQ_OK);
    ck_assert_uint_eq(out.m, 1);
    ck_assert_uint_eq(out.cnts[0], 9);
    eq_rle_free(&out);
    eq_rle_free(&ra);
    eq_rle_free(&rb);
    eq_rle_free(&rc);
    eq_rle_free(&rd);
}
END_TEST

START_TEST(test_string_errors)
{
    eq_rle r;
    eq_err err;
    ck_assert_int_eq(eq_rle_fr_string("12 3", 4, 1, 6, &r, &err), EQ_ERR_PARSE);
    ck_assert_msg(strstr(err.msg, "offset 2") != NULL, "%s", err.msg);
    ck_assert_int_eq(eq_rle_fr_string("1P", 2, 1, 6, &r, &err), EQ_ERR_PARSE); /* 'P' = 0x20 more */
    ck_assert_msg(strstr(err.msg, "ends inside") != NULL, "%s", err.msg);
    ck_assert_int_eq(eq_rle_fr_string("", 0, 0, 0, &r, &err), EQ_OK);
    ck_assert_uint_eq(r.m, 0);
    eq_rle_free(&r);
    /* a 13-character value of INT64_MAX ('o' = 31 and more, '7' = 7) plus
     * the count two back: the low 32 bits, (2^32 - 1) + 7 = 6, as the
     * reference's long arithmetic keeps them, without the signed overflow
     * fuzz_coco found (fuzz/seeds/fuzz_coco/regress-rle-string-int64-overflow) */
    ck_assert_int_eq(eq_rle_fr_string("777oooooooooooo7", 16, 7, 9, &r, &err), EQ_OK);
    ck_assert_uint_eq(r.m, 4);
    ck_assert_uint_eq(r.cnts[2], 7);
    ck_assert_uint_eq(r.cnts[3], 6);
    eq_rle_free(&r);
    /* negative differences round-trip: counts 5, 1, 9, 0 */
    uint32_t c[4] = {5, 1, 9, 0};
    ck_assert_int_eq(eq_rle_init(&r, 1, 15, c, 4, NULL), EQ_OK);
    size_t len;
    char *s = eq_rle_to_string(&r, &len);
    ck_assert_ptr_nonnull(s);
    ck_assert_uint_eq(len, strlen(s));
    eq_rle back;
    ck_assert_int_eq(eq_rle_fr_string(s, len, 1, 15, &back, NULL), EQ_OK);
    ck_assert_uint_eq(back.m, 4);
    for (int i = 0; i < 4; i++) ck_assert_uint_eq(back.cnts[i], c[i]);
    free(s);
    eq_rle_free(&r);
    eq_rle_free(&back);
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("mask");
    TCase *tc = tcase_create("reference");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_reference_cases);
    tcase_add_test(tc, test_fr_poly_vs_literal_port);
    suite_add_tcase(s, tc);
    tc = tcase_create("unit");
    tcase_add_test(tc, test_encode_decode);
    tcase_add_test(tc, test_decode_checks_sum);
    tcase_add_test(tc, test_triangle_from_spec);
    tcase_add_test(tc, test_bbox_zero_runs_quirk);
    tcase_add_test(tc, test_merge_and_iou_edges);
    tcase_add_test(tc, test_string_errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return eq_test_run(s_suite()); }
