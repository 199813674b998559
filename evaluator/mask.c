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

/* Largest number of boundary points (at 1/5 pixel) a polygon may have: the
 * reference allocates an int pair per point (2^28 points = 2 GiB); eq walks
 * them without storing, but still bounds the work. */
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
        if (r->cnts[j]) memset(mask + p, v, r->cnts[j]);
        p += r->cnts[j];
        v = !v;
    }
    if (r->m == 0 && a) memset(mask, 0, a);
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

/* One polygon edge as rleFrPoly traces it: endpoints swapped so that the
 * major coordinate increases, points t = 0..major. */
typedef struct s_edge {
    int xs, ys, dx, dy, xmaj, flip;
    double s;
} s_edge;

static inline void s_edge_pt(const s_edge *e, int t, int *u, int *v)
{
    if (e->dx == 0 && e->dy == 0) {
        /* a repeated vertex: the reference computes 0/0 here and converts
         * NaN to int; that row is never used (see eq_rle_fr_poly), so the
         * vertex itself will do */
        *u = e->xs;
        *v = e->ys;
    } else if (e->xmaj) {
        *u = t + e->xs;
        *v = (int)(e->ys + e->s * t + .5);
    } else {
        *v = t + e->ys;
        *u = (int)(e->xs + e->s * t + .5);
    }
}

/* The reference's crossing test for consecutive traced points p, q. */
static inline void s_cross(int pu, int pv, int qu, int qv, uint32_t h, uint32_t w, uint32_t *a,
                           size_t *nc)
{
    if (pu == qu) return;
    double xd = (double)(qu < pu ? qu : qu - 1);
    xd = (xd + .5) / 5 - .5;
    if (floor(xd) != xd || xd < 0 || xd > (double)(w - 1)) return;
    double yd = (double)(qv < pv ? qv : pv);
    yd = (yd + .5) / 5 - .5;
    if (yd < 0)
        yd = 0;
    else if (yd > h)
        yd = h;
    yd = ceil(yd);
    a[(*nc)++] = (uint32_t)((uint64_t)(int)xd * h + (uint64_t)(int)yd);
}

/* Pairs (t, t+1) of one edge, in traversal order.  Within an edge the
 * columns of consecutive points differ by at most 1, so the crossing column
 * is their minimum and the reference's test (xd + .5)/5 - .5 integral and
 * inside the image is the integer test xd = 2 (mod 5), 2 <= xd <= hi_col
 * (see eq_rle_fr_poly); only pairs that pass it reach s_cross, which then
 * computes exactly what the reference does. */
static inline void s_edge_pair(const s_edge *e, int t, int64_t hi_col, uint32_t h, uint32_t w,
                               uint32_t *a, size_t *nc)
{
    int u0, v0, u1, v1;
    s_edge_pt(e, t, &u0, &v0);
    s_edge_pt(e, t + 1, &u1, &v1);
    if (u0 == u1) return;
    int64_t xd = u0 < u1 ? u0 : u1;
    if (xd < 2 || xd > hi_col || (xd - 2) % 5 != 0) return;
    if (e->flip)
        s_cross(u1, v1, u0, v0, h, w, a, nc);
    else
        s_cross(u0, v0, u1, v1, h, w, a, nc);
}

static void s_sort_u32(uint32_t *a, size_t n, uint32_t *tmp)
{
    if (n <= 48) {
        for (size_t i = 1; i < n; i++) {
            uint32_t x = a[i];
            size_t j = i;
            while (j > 0 && a[j - 1] > x) {
                a[j] = a[j - 1];
                j--;
            }
            a[j] = x;
        }
        return;
    }
    /* LSD radix sort, 8-bit digits, only as many as the largest value has */
    uint32_t mx = 0;
    for (size_t i = 0; i < n; i++)
        if (a[i] > mx) mx = a[i];
    for (int shift = 0; shift < 32 && (mx >> shift) != 0; shift += 8) {
        size_t cnt[257];
        memset(cnt, 0, sizeof cnt);
        for (size_t i = 0; i < n; i++) cnt[((a[i] >> shift) & 0xff) + 1]++;
        for (size_t d = 1; d <= 256; d++) cnt[d] += cnt[d - 1];
        for (size_t i = 0; i < n; i++) tmp[cnt[(a[i] >> shift) & 0xff]++] = a[i];
        memcpy(a, tmp, n * sizeof *a);
    }
}

/*
 * rleFrPoly without materialising the traced boundary.  The reference
 * traces every edge into 1/5-pixel points, then scans consecutive points
 * for a change of column whose lower column index xd satisfies
 * (xd + .5)/5 - .5 integral and inside the image.  Here each consecutive
 * pair is visited exactly as there (same formulas, same order within the
 * pair, edge junctions included), but along an x-major edge only the pairs
 * whose column test can pass are computed: there the columns are xs + t
 * and xs + t + 1, and (xd + .5)/5 - .5 is integral exactly when
 * xd = 2 (mod 5) (for |xd| < 2^30 the division is exact at k + .5 and at
 * least 0.1 away from it otherwise).  The crossings are the same set, so
 * after sorting the runs are bit-identical.
 */
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
    s_edge ebuf[64];
    s_edge *E = k <= 64 ? ebuf : eq_malloc_array(k, sizeof *E);
    uint32_t abuf[1024], tbuf[1024], *a = abuf, *tmp = tbuf, *b = NULL;
    if (!E) goto nomem;
    /* upsample and round (truncating conversions, as the reference) */
    uint64_t cap = 2, npts = 0; /* crossings bound; points the reference traces */
    int x0 = 0, y0 = 0, xp = 0, yp = 0;
    for (size_t j = 0; j <= k && k > 0; j++) {
        int x, y;
        if (j < k) {
            x = (int)(scale * xy[j * 2 + 0] + .5);
            y = (int)(scale * xy[j * 2 + 1] + .5);
        } else {
            x = x0;
            y = y0;
        }
        if (j == 0) {
            x0 = xp = x;
            y0 = yp = y;
            continue;
        }
        s_edge *e = &E[j - 1];
        int xs = xp, xe = x, ys = yp, ye = y, t;
        int dx = abs(xe - xs), dy = abs(ys - ye);
        e->flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
        if (e->flip) {
            t = xs;
            xs = xe;
            xe = t;
            t = ys;
            ys = ye;
            ye = t;
        }
        e->xs = xs;
        e->ys = ys;
        e->dx = dx;
        e->dy = dy;
        e->xmaj = dx >= dy;
        e->s = (dx == 0 && dy == 0) ? 0 : dx >= dy ? (double)(ye - ys) / dx : (double)(xe - xs) / dy;
        cap += (uint64_t)dx / 5 + 3;
        npts += (uint64_t)(dx > dy ? dx : dy) + 1;
        xp = x;
        yp = y;
    }
    if (npts > S_POLY_MAX_POINTS) {
        if (E != ebuf) free(E);
        return eq_err_set(err, EQ_ERR_LIMIT, "polygon boundary too long (%llu points)",
                          (unsigned long long)npts);
    }
    if (cap > sizeof abuf / sizeof *abuf) {
        a = eq_malloc_array((size_t)cap, sizeof *a);
        if (!a) goto nomem;
    }
    size_t nc = 0;
    const int64_t lo_col = 2, hi_col = 5 * (int64_t)(w - 1) + 2;
    for (size_t j = 0; j < k; j++) {
        const s_edge *e = &E[j];
        if (j > 0) {
            /* junction: last point of the previous edge, first of this one */
            const s_edge *f = &E[j - 1];
            int pu, pv, qu, qv;
            s_edge_pt(f, f->flip ? 0 : (f->xmaj ? f->dx : f->dy), &pu, &pv);
            s_edge_pt(e, e->flip ? (e->xmaj ? e->dx : e->dy) : 0, &qu, &qv);
            s_cross(pu, pv, qu, qv, h, w, a, &nc);
        }
        if (e->dx == 0 && e->dy == 0) continue;
        if (e->xmaj) {
            /* columns xs+t, xs+t+1: only xs+t = 2 (mod 5) inside the image */
            int64_t t0 = lo_col - e->xs;
            if (t0 < 0) t0 = 0;
            int64_t r = ((int64_t)e->xs + t0 - 2) % 5;
            if (r < 0) r += 5;
            if (r) t0 += 5 - r;
            int64_t t1 = hi_col - e->xs;
            if (t1 > e->dx - 1) t1 = e->dx - 1;
            for (int64_t t = t0; t <= t1; t += 5) s_edge_pair(e, (int)t, hi_col, h, w, a, &nc);
        } else if (e->dx != 0) {
            /* y-major: the column u(t) is monotone in t and moves by at most
             * one per step, so each candidate column c (c = 2 mod 5) is
             * crossed at most once, between t* - 1 and t*, where t* is the
             * first step whose column is past c.  t* is estimated from the
             * slope, then corrected by evaluating u exactly (monotonicity
             * makes the correction exact); the pair goes through the same
             * test as every other. */
            int us, ue, v;
            s_edge_pt(e, 0, &us, &v);
            s_edge_pt(e, e->dy, &ue, &v);
            int up = ue > us;
            int64_t clo = up ? us : ue, chi = (up ? ue : us) - 1;
            if (clo < lo_col) clo = lo_col;
            if (chi > hi_col) chi = hi_col;
            int64_t r = (clo - 2) % 5;
            if (r < 0) r += 5;
            if (r) clo += 5 - r;
            for (int64_t c = clo; c <= chi; c += 5) {
                /* first t with u(t) >= c + 1 (up) or u(t) <= c (down) */
                double est = ((double)(up ? c + 1 : c) - .5 - e->xs) / e->s;
                int64_t t = est < 0 ? 0 : est > e->dy ? e->dy : (int64_t)ceil(est);
                int u;
#define S_PAST(tt) (s_edge_pt(e, (int)(tt), &u, &v), up ? u >= c + 1 : u <= c)
                while (t > 0 && S_PAST(t - 1)) t--;
                while (t <= e->dy && !S_PAST(t)) t++;
#undef S_PAST
                if (t >= 1 && t <= e->dy) s_edge_pair(e, (int)t - 1, hi_col, h, w, a, &nc);
            }
        }
    }
    /* compute the rle encoding given the y-boundary points */
    a[nc++] = h * w;
    if (nc > sizeof tbuf / sizeof *tbuf) {
        tmp = eq_malloc_array(nc, sizeof *tmp);
        if (!tmp) goto nomem;
    }
    s_sort_u32(a, nc, tmp);
    uint32_t p = 0;
    for (size_t j = 0; j < nc; j++) {
        uint32_t t = a[j];
        a[j] -= p;
        p = t;
    }
    /* drop zero runs by merging, in place (the write index never passes
     * the read index), then one allocation of the exact size */
    size_t j = 0, bm = 0;
    a[bm++] = a[j++];
    while (j < nc) {
        if (a[j] > 0)
            a[bm++] = a[j++];
        else {
            j++;
            if (j < nc) a[bm - 1] += a[j++];
        }
    }
    b = eq_malloc_array(bm, sizeof *b);
    if (!b) goto nomem;
    memcpy(b, a, bm * sizeof *b);
    s_rle_set(out, h, w, b, bm);
    if (E != ebuf) free(E);
    if (a != abuf) free(a);
    if (tmp != tbuf) free(tmp);
    return EQ_OK;
nomem:
    if (E != ebuf) free(E);
    if (a != abuf) free(a);
    if (tmp != tbuf) free(tmp);
    free(b);
    return eq_err_set(err, EQ_ERR_NOMEM, "out of memory rasterising a polygon");
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
        /* the reference adds in long and keeps the low 32 bits; adding
         * there in uint32 gives the same bits without the signed overflow
         * a value near INT64_MAX would make (undefined behaviour) */
        uint32_t v = (uint32_t)(uint64_t)x;
        if (m > 2) v += cnts[m - 2];
        cnts[m++] = v;
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
