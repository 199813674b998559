/*
 * evaluator/mask.c -- RLE masks, a line-by-line port of pycocotools'
 * common/maskApi.c (cocoapi 8c9bcc3).  Where the reference has undefined
 * behaviour (counts that do not sum to h*w, non-finite or huge polygon
 * coordinates, over-long compressed values) eq reports an error instead;
 * on every well-formed input the results are bit-identical.
 */
#include "evaluator/mask.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Largest number of traced boundary points a polygon may produce (the
 * reference allocates one int pair per point); 2^28 points = 2 GiB. */
#define S_POLY_MAX_POINTS ((uint64_t)1 << 28)

void eq_rle_free(eq_rle *r)
{
    if (!r) return;
    free(r->cnts);
    memset(r, 0, sizeof *r);
}

static eq_status s_check_size(uint32_t h, uint32_t w, eq_err *err)
{
    if ((uint64_t)h * w > UINT32_MAX)
        return eq_err_set(err, EQ_ERR_INVALID, "mask size %ux%u exceeds 2^32 pixels", h, w);
    return EQ_OK;
}

/* Take ownership of cnts (may be NULL when m == 0). */
static void s_rle_set(eq_rle *out, uint32_t h, uint32_t w, uint32_t *cnts, size_t m)
{
    out->h = h;
    out->w = w;
    out->m = m;
    out->cnts = cnts;
}

eq_status eq_rle_init(eq_rle *out, uint32_t h, uint32_t w, const uint32_t *cnts, size_t m,
                      eq_err *err)
{
    memset(out, 0, sizeof *out);
    eq_status st = s_check_size(h, w, err);
    if (st) return st;
    uint32_t *c = eq_malloc_array(m ? m : 1, sizeof *c);
    if (!c) return eq_err_set(err, EQ_ERR_NOMEM, "out of memory for %zu RLE counts", m);
    if (m) memcpy(c, cnts, m * sizeof *c);
    s_rle_set(out, h, w, c, m);
    return EQ_OK;
}

eq_status eq_rle_copy(const eq_rle *src, eq_rle *out, eq_err *err)
{
    return eq_rle_init(out, src->h, src->w, src->cnts, src->m, err);
}

eq_status eq_rle_check(const eq_rle *r, eq_err *err)
{
    if (r->m == 0) return EQ_OK;
    uint64_t sum = 0;
    for (size_t j = 0; j < r->m; j++) sum += r->cnts[j];
    if (sum != (uint64_t)r->h * r->w)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "RLE counts sum to %llu but the mask has %ux%u = %llu pixels",
                          (unsigned long long)sum, r->h, r->w,
                          (unsigned long long)r->h * r->w);
    return EQ_OK;
}

eq_status eq_rle_encode(const uint8_t *mask, uint32_t h, uint32_t w, eq_rle *out, eq_err *err)
{
    memset(out, 0, sizeof *out);
    eq_status st = s_check_size(h, w, err);
    if (st) return st;
    size_t a = (size_t)h * w;
    uint32_t *cnts = eq_malloc_array(a + 1, sizeof *cnts);
    if (!cnts) return eq_err_set(err, EQ_ERR_NOMEM, "out of memory encoding a %ux%u mask", h, w);
    size_t k = 0;
    uint8_t p = 0;
    uint32_t c = 0;
    for (size_t j = 0; j < a; j++) {
        uint8_t v = mask[j] != 0;
        if (v != p) {
            cnts[k++] = c;
            c = 0;
            p = v;
        }
        c++;
    }
    cnts[k++] = c;
    uint32_t *shrunk = realloc(cnts, k * sizeof *cnts);
    s_rle_set(out, h, w, shrunk ? shrunk : cnts, k);
    return EQ_OK;
}

eq_status eq_rle_decode(const eq_rle *r, uint8_t *mask, eq_err *err)
{
    eq_status st = eq_rle_check(r, err);
    if (st) return st;
    size_t a = (size_t)r->h * r->w, p = 0;
    uint8_t v = 0;
    for (size_t j = 0; j < r->m; j++) {
        memset(mask + p, v, r->cnts[j]);
        p += r->cnts[j];
        v = !v;
    }
    if (r->m == 0) memset(mask, 0, a);
    return EQ_OK;
}

uint32_t eq_rle_area(const eq_rle *r)
{
    uint32_t a = 0;
    for (size_t j = 1; j < r->m; j += 2) a += r->cnts[j];
    return a;
}

void eq_rle_to_bbox(const eq_rle *r, double bb[4])
{
    /* maskApi.c rleToBbox, uint32 arithmetic and all (wrap-around included). */
    uint32_t h = r->h, w = r->w, xs = w, ys = h, xe = 0, ye = 0, cc = 0, xp = 0;
    size_t m = (r->m / 2) * 2;
    if (m == 0 || h == 0) { /* h == 0: the reference divides by zero */
        bb[0] = bb[1] = bb[2] = bb[3] = 0;
        return;
    }
    for (size_t j = 0; j < m; j++) {
        cc += r->cnts[j];
        uint32_t t = cc - (uint32_t)(j % 2);
        uint32_t y = t % h, x = (t - y) / h;
        if (j % 2 == 0)
            xp = x;
        else if (xp < x) {
            ys = 0;
            ye = h - 1;
        }
        if (x < xs) xs = x;
        if (x > xe) xe = x;
        if (y < ys) ys = y;
        if (y > ye) ye = y;
    }
    bb[0] = xs;
    bb[2] = (uint32_t)(xe - xs + 1);
    bb[1] = ys;
    bb[3] = (uint32_t)(ye - ys + 1);
}

eq_status eq_rle_merge(const eq_rle *rs, size_t n, int intersect, eq_rle *out, eq_err *err)
{
    memset(out, 0, sizeof *out);
    if (n == 0) return eq_rle_init(out, 0, 0, NULL, 0, err);
    if (n == 1) return eq_rle_copy(&rs[0], out, err);
    uint32_t h = rs[0].h, w = rs[0].w;
    size_t m = rs[0].m;
    /* Every merged mask has at most h*w+1 runs, and never more runs than
     * the inputs together (each output boundary is an input boundary). */
    size_t cap = 1;
    for (size_t i = 0; i < n; i++) cap += rs[i].m ? rs[i].m : 1;
    if (cap > (size_t)h * w + 1) cap = (size_t)h * w + 1;
    if (cap < m) cap = m;
    uint32_t *cnts = eq_malloc_array(cap ? cap : 1, sizeof *cnts);
    uint32_t *tmp = eq_malloc_array(cap ? cap : 1, sizeof *tmp);
    if (!cnts || !tmp) {
        free(cnts);
        free(tmp);
        return eq_err_set(err, EQ_ERR_NOMEM, "out of memory merging %zu masks", n);
    }
    if (m) memcpy(cnts, rs[0].cnts, m * sizeof *cnts);
    for (size_t i = 1; i < n; i++) {
        const eq_rle *B = &rs[i];
        if (B->h != h || B->w != w) {
            h = w = 0;
            m = 0;
            break;
        }
        /* A = the running result (copied to tmp), B = the next input.  An
         * RLE without counts is an empty mask (the reference would read
         * cnts[0] of it): use the single count h*w. */
        size_t am = m;
        memcpy(tmp, cnts, am * sizeof *tmp);
        uint32_t all = h * w;
        if (am == 0) {
            tmp[0] = all;
            am = 1;
        }
        const uint32_t *bc = B->m ? B->cnts : &all;
        size_t bm = B->m ? B->m : 1;
        uint32_t ca = tmp[0], cb = bc[0], c, cc = 0;
        uint64_t ct = 1;
        int v = 0, va = 0, vb = 0, vp;
        size_t a = 1, b = 1;
        m = 0;
        while (ct > 0) {
            c = ca < cb ? ca : cb;
            cc += c;
            ct = 0;
            ca -= c;
            if (!ca && a < am) {
                ca = tmp[a++];
                va = !va;
            }
            ct += ca;
            cb -= c;
            if (!cb && b < bm) {
                cb = bc[b++];
                vb = !vb;
            }
            ct += cb;
            vp = v;
            v = intersect ? (va && vb) : (va || vb);
            if (v != vp || ct == 0) {
                if (m == cap) { /* cannot happen for checked inputs */
                    free(cnts);
                    free(tmp);
                    return eq_err_set(err, EQ_ERR_INVALID,
                                      "merging masks: counts do not sum to %ux%u", h, w);
                }
                cnts[m++] = cc;
                cc = 0;
            }
        }
    }
    free(tmp);
    uint32_t *shrunk = realloc(cnts, (m ? m : 1) * sizeof *cnts);
    s_rle_set(out, h, w, shrunk ? shrunk : cnts, m);
    return EQ_OK;
}

static int s_uint_cmp(const void *a, const void *b)
{
    uint32_t c = *(const uint32_t *)a, d = *(const uint32_t *)b;
    return c > d ? 1 : c < d ? -1 : 0;
}

eq_status eq_rle_fr_poly(const double *xy, size_t k, uint32_t h, uint32_t w, eq_rle *out,
                         eq_err *err)
{
    memset(out, 0, sizeof *out);
    eq_status st = s_check_size(h, w, err);
    if (st) return st;
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
    if (m > S_POLY_MAX_POINTS) {
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
    qsort(a, nc, sizeof *a, s_uint_cmp);
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
    s_rle_set(out, h, w, shrunk ? shrunk : b, bm);
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

eq_status eq_rle_fr_bbox(const double bb[4], uint32_t h, uint32_t w, eq_rle *out, eq_err *err)
{
    double xs = bb[0], xe = xs + bb[2];
    double ys = bb[1], ye = ys + bb[3];
    double xy[8] = {xs, ys, xs, ye, xe, ye, xe, ys};
    return eq_rle_fr_poly(xy, 4, h, w, out, err);
}

char *eq_rle_to_string(const eq_rle *r, size_t *len)
{
    /* Similar to LEB128 but using 6 bits/char and ascii chars 48-111.  A
     * 64-bit value needs at most 13 characters. */
    size_t m = r->m, p = 0;
    char *s = eq_malloc_array(m * 13 + 1, 1);
    if (!s) return NULL;
    for (size_t i = 0; i < m; i++) {
        int64_t x = (int64_t)r->cnts[i];
        if (i > 2) x -= (int64_t)r->cnts[i - 2];
        int more = 1;
        while (more) {
            char c = (char)(x & 0x1f);
            x >>= 5; /* arithmetic shift (gcc/clang guarantee it) */
            more = (c & 0x10) ? x != -1 : x != 0;
            if (more) c |= 0x20;
            c += 48;
            s[p++] = c;
        }
    }
    s[p] = 0;
    if (len) *len = p;
    return s;
}

eq_status eq_rle_fr_string(const char *s, size_t len, uint32_t h, uint32_t w, eq_rle *out,
                           eq_err *err)
{
    memset(out, 0, sizeof *out);
    eq_status st = s_check_size(h, w, err);
    if (st) return st;
    uint32_t *cnts = eq_malloc_array(len ? len : 1, sizeof *cnts);
    if (!cnts) return eq_err_set(err, EQ_ERR_NOMEM, "out of memory decoding an RLE string");
    size_t m = 0, p = 0;
    while (p < len) {
        int64_t x = 0;
        unsigned k = 0;
        int more = 1;
        size_t start = p;
        while (more) {
            if (p >= len) {
                free(cnts);
                return eq_err_set(err, EQ_ERR_PARSE,
                                  "RLE string ends inside the value that starts at offset %zu",
                                  start);
            }
            int c = (unsigned char)s[p] - 48;
            if (c < 0 || c > 63) {
                free(cnts);
                return eq_err_set(err, EQ_ERR_PARSE,
                                  "RLE string: invalid character 0x%02x at offset %zu",
                                  (unsigned char)s[p], p);
            }
            if (k >= 13) {
                free(cnts);
                return eq_err_set(err, EQ_ERR_PARSE,
                                  "RLE string: value at offset %zu is wider than 64 bits", start);
            }
            x |= (int64_t)((uint64_t)(c & 0x1f) << (5 * k));
            more = c & 0x20;
            p++;
            k++;
            if (!more && (c & 0x10) && 5 * k < 64) x |= (int64_t)(~(uint64_t)0 << (5 * k));
        }
        if (m > 2) x += (int64_t)cnts[m - 2];
        cnts[m++] = (uint32_t)x;
    }
    uint32_t *shrunk = realloc(cnts, (m ? m : 1) * sizeof *cnts);
    s_rle_set(out, h, w, shrunk ? shrunk : cnts, m);
    return EQ_OK;
}

double eq_bbox_iou(const double D[4], const double G[4], int crowd)
{
    double ga = G[2] * G[3], da = D[2] * D[3];
    double w = fmin(D[2] + D[0], G[2] + G[0]) - fmax(D[0], G[0]);
    if (w <= 0) return 0;
    double h = fmin(D[3] + D[1], G[3] + G[1]) - fmax(D[1], G[1]);
    if (h <= 0) return 0;
    double i = w * h;
    double u = crowd ? da : da + ga - i;
    return i / u;
}

double eq_rle_iou(const eq_rle *d, const eq_rle *g, int crowd, const double *dbb,
                  const double *gbb)
{
    double db[4], gb[4];
    if (!dbb) {
        eq_rle_to_bbox(d, db);
        dbb = db;
    }
    if (!gbb) {
        eq_rle_to_bbox(g, gb);
        gbb = gb;
    }
    double o = eq_bbox_iou(dbb, gbb, crowd);
    if (!(o > 0)) return o;
    if (d->h != g->h || d->w != g->w) return -1;
    if (d->m == 0 || g->m == 0) return 0; /* empty masks (never reached: box 0) */
    uint32_t ca = d->cnts[0], cb = g->cnts[0], c, i = 0, u = 0;
    size_t ka = d->m, kb = g->m, a = 1, b = 1;
    int va = 0, vb = 0;
    uint64_t ct = 1;
    while (ct > 0) {
        c = ca < cb ? ca : cb;
        if (va || vb) {
            u += c;
            if (va && vb) i += c;
        }
        ct = 0;
        ca -= c;
        if (!ca && a < ka) {
            ca = d->cnts[a++];
            va = !va;
        }
        ct += ca;
        cb -= c;
        if (!cb && b < kb) {
            cb = g->cnts[b++];
            vb = !vb;
        }
        ct += cb;
    }
    if (i == 0)
        u = 1;
    else if (crowd)
        u = eq_rle_area(d);
    return (double)i / (double)u;
}

void eq_bbox_iou_matrix(const double *dt, size_t m, const double *gt, size_t n,
                        const uint8_t *iscrowd, double *o)
{
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++)
            o[i * n + j] = eq_bbox_iou(dt + 4 * i, gt + 4 * j, iscrowd && iscrowd[j]);
}

eq_status eq_rle_iou_matrix(const eq_rle *dt, size_t m, const eq_rle *gt, size_t n,
                            const uint8_t *iscrowd, double *o, eq_err *err)
{
    for (size_t i = 0; i < m; i++) {
        eq_status st = eq_rle_check(&dt[i], err);
        if (st) return eq_err_prefix(err, "result mask %zu: ", i);
    }
    for (size_t j = 0; j < n; j++) {
        eq_status st = eq_rle_check(&gt[j], err);
        if (st) return eq_err_prefix(err, "GT mask %zu: ", j);
    }
    double *bb = eq_malloc_array((m + n) * 4 + 1, sizeof *bb);
    if (!bb) return eq_err_set(err, EQ_ERR_NOMEM, "out of memory for mask IoU");
    for (size_t i = 0; i < m; i++) eq_rle_to_bbox(&dt[i], bb + 4 * i);
    for (size_t j = 0; j < n; j++) eq_rle_to_bbox(&gt[j], bb + 4 * (m + j));
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++)
            o[i * n + j] = eq_rle_iou(&dt[i], &gt[j], iscrowd && iscrowd[j], bb + 4 * i,
                                      bb + 4 * (m + j));
    free(bb);
    return EQ_OK;
}
