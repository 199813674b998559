/*
 * tests/check_backend.c -- the trainer's backend interface and CPU backend.
 *
 * 1. Parity: every op against PyTorch reference values (float64 references
 *    from float32 inputs, made by tests/fixtures/trainer/gen_backend.py and
 *    committed under tests/fixtures/trainer/backend/), tolerance 1e-5
 *    relative, norm-wise: ||ours - ref|| / ||ref||.
 * 2. Every backward against central finite differences of the forward,
 *    with the loss L = sum(g * y) accumulated in double (small shapes).
 * 3. Determinism, argument validation, memory and event calls.
 * The parity tests move data with upload/download as a device backend
 * would; the finite-difference tests use the CPU backend's property that
 * device memory is host memory and perturb inputs in place.
 */
#include "trainer/backend.h"
#include "tests/testutil.h"

#include <math.h>
#include <stdint.h>

#define PARITY_TOL 1e-5

/* ---- helpers ----------------------------------------------------------- */

static eq_backend *s_cpu(int nthreads)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(nthreads, &err);
    ck_assert_msg(be != NULL, "eq_backend_cpu_new: %s", err.msg);
    return be;
}

/* Read tests/fixtures/trainer/backend/<c>/<name>.<ext> holding exactly
 * `n` 4-byte elements.  Caller frees. */
static void *s_load(const char *c, const char *name, const char *ext, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/trainer/backend/%s/%s.%s", eq_test_srcdir(), c,
             name, ext);
    return eq_test_read_words(path, n);
}

static float *s_f32(const char *c, const char *name, size_t n)
{
    return s_load(c, name, "f32", n);
}

static int32_t *s_i32(const char *c, const char *name, size_t n)
{
    return s_load(c, name, "i32", n);
}

#define CHECK_CLOSE(what, a, ref, n, tol)                                                  \
    do {                                                                                   \
        double e_ = eq_test_relerr((a), (ref), (n));                                             \
        ck_assert_msg(e_ <= (tol), "%s: relative error %.3g > %.3g", (what), e_, (double)(tol)); \
    } while (0)

/* Device copies through the memory API. */
static void *s_up(eq_backend *be, const void *host, size_t nbytes)
{
    eq_err err = {0};
    void *d = eq_backend_alloc(be, nbytes, &err);
    ck_assert_msg(d != NULL, "alloc: %s", err.msg);
    ck_assert_int_eq(eq_backend_upload(be, d, host, nbytes, &err), EQ_OK);
    return d;
}

static void *s_dev(eq_backend *be, size_t nbytes)
{
    eq_err err = {0};
    void *d = eq_backend_alloc(be, nbytes, &err);
    ck_assert_msg(d != NULL, "alloc: %s", err.msg);
    /* poison: ops must overwrite their outputs */
    float nanv = NAN;
    float *h = malloc(nbytes);
    for (size_t i = 0; i < nbytes / 4; i++) h[i] = nanv;
    ck_assert_int_eq(eq_backend_upload(be, d, h, nbytes, &err), EQ_OK);
    free(h);
    return d;
}

static float *s_down(eq_backend *be, const void *dev, size_t n)
{
    eq_err err = {0};
    float *h = malloc(n * 4 + 4);
    ck_assert_int_eq(eq_backend_download(be, h, dev, n * 4, &err), EQ_OK);
    return h;
}

/* `call` fills the local `err` */
#define OK(call)                                                              \
    do {                                                                      \
        eq_status s_ = (call);                                                \
        ck_assert_msg(s_ == EQ_OK, "%s failed: %s", #call, err.msg);          \
    } while (0)

/* deterministic pseudo-random floats in [-1, 1) */
static uint64_t s_rng = 88172645463325252ull;
static float s_rand(void)
{
    s_rng ^= s_rng << 13;
    s_rng ^= s_rng >> 7;
    s_rng ^= s_rng << 17;
    return (float)((double)(s_rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float *s_randv(size_t n, float scale)
{
    float *v = malloc(n * 4 + 4);
    for (size_t i = 0; i < n; i++) v[i] = s_rand() * scale;
    return v;
}

/* ---- finite differences ------------------------------------------------- */

/* Loss of the op's forward at the current inputs (double). */
typedef double (*s_loss_fn)(void *ctx);

static double s_dot(const float *g, const float *y, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)g[i] * (double)y[i];
    return s;
}

/* Relative norm-wise error between `analytic` and central differences of
 * f w.r.t. each element of `param` (perturbed in place and restored). */
static double s_fd(s_loss_fn f, void *ctx, float *param, size_t n, const float *analytic, float h)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        float v = param[i];
        float up = v + h, dn = v - h;
        param[i] = up;
        double lp = f(ctx);
        param[i] = dn;
        double lm = f(ctx);
        param[i] = v;
        double fd = (lp - lm) / ((double)up - (double)dn);
        double d = fd - analytic[i];
        num += d * d;
        den += fd * fd;
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

#define CHECK_FD(what, f, ctx, param, n, an, h, tol)                                       \
    do {                                                                                   \
        double e_ = s_fd((f), (ctx), (param), (n), (an), (h));                             \
        ck_assert_msg(e_ <= (tol), "%s: finite-difference error %.3g > %.3g", (what), e_,   \
                      (double)(tol));                                                      \
    } while (0)

/* ---- convolution -------------------------------------------------------- */

typedef struct conv_case {
    const char *name;
    int64_t n, h, w, c, k, r, s, sh, sw, ph, pw, dh, dw, g;
} conv_case;

static const conv_case CONV[] = {
    {"conv_3x3", 2, 7, 6, 4, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1},
    {"conv_s2_g2", 2, 9, 8, 6, 4, 3, 3, 2, 2, 1, 1, 1, 1, 2},
    {"conv_dil_rect", 1, 10, 9, 3, 5, 3, 2, 1, 2, 2, 1, 2, 3, 1},
    {"conv_dw", 2, 8, 8, 6, 6, 3, 3, 2, 2, 1, 1, 1, 1, 6},
    {"conv_dw_mult", 1, 6, 5, 3, 6, 3, 3, 1, 1, 1, 1, 1, 1, 3},
    {"conv_1x1", 3, 5, 4, 8, 5, 1, 1, 1, 1, 0, 0, 1, 1, 1},
    {"conv_1x1_s2", 2, 7, 7, 4, 8, 1, 1, 2, 2, 0, 0, 1, 1, 1},
    {"conv_stem", 1, 16, 14, 3, 8, 7, 7, 2, 2, 3, 3, 1, 1, 1},
    /* depthwise: the CPU backend's direct path (vector blocks + tail) */
    {"conv_dw_c20", 2, 9, 7, 20, 20, 3, 3, 1, 1, 1, 1, 1, 1, 20},
    {"conv_dw_c16_s2", 2, 10, 9, 16, 16, 3, 3, 2, 2, 1, 1, 1, 1, 16},
    {"conv_dw_c9_5x5_dil", 1, 11, 10, 9, 9, 5, 5, 2, 1, 2, 3, 1, 2, 9},
};
#define NCONV (sizeof CONV / sizeof CONV[0])

static eq_conv2d_desc s_conv_desc(const conv_case *t)
{
    eq_conv2d_desc d = {.n = t->n, .h = t->h, .w = t->w, .c = t->c, .k = t->k, .r = t->r,
                        .s = t->s, .stride_h = t->sh, .stride_w = t->sw, .pad_h = t->ph,
                        .pad_w = t->pw, .dil_h = t->dh, .dil_w = t->dw, .groups = t->g};
    eq_err err = {0};
    ck_assert_msg(eq_conv2d_desc_init(&d, &err) == EQ_OK, "%s: %s", t->name, err.msg);
    return d;
}

START_TEST(test_conv_parity)
{
    const conv_case *t = &CONV[_i];
    eq_backend *be = s_cpu(1);
    eq_err err = {0};
    eq_conv2d_desc d = s_conv_desc(t);
    size_t nx = d.n * d.h * d.w * d.c, ny = d.n * d.p * d.q * d.k, nw = d.k * (d.c / d.groups) * d.r * d.s;
    float *x = s_f32(t->name, "x", nx), *w = s_f32(t->name, "w", nw), *y = s_f32(t->name, "y", ny);
    float *dy = s_f32(t->name, "dy", ny), *dx = s_f32(t->name, "dx", nx), *dw = s_f32(t->name, "dw", nw);
    float *xd = s_up(be, x, nx * 4), *wd = s_up(be, w, nw * 4), *dyd = s_up(be, dy, ny * 4);
    float *yd = s_dev(be, ny * 4), *dxd = s_dev(be, nx * 4), *dwd = s_dev(be, nw * 4);
    OK(eq_backend_conv2d_fwd(be, &d, xd, wd, yd, &err));
    OK(eq_backend_conv2d_bwd_data(be, &d, dyd, wd, dxd, &err));
    OK(eq_backend_conv2d_bwd_filter(be, &d, xd, dyd, dwd, &err));
    float *yo = s_down(be, yd, ny), *dxo = s_down(be, dxd, nx), *dwo = s_down(be, dwd, nw);
    char what[128];
    snprintf(what, sizeof what, "%s y", t->name);
    CHECK_CLOSE(what, yo, y, ny, PARITY_TOL);
    snprintf(what, sizeof what, "%s dx", t->name);
    CHECK_CLOSE(what, dxo, dx, nx, PARITY_TOL);
    snprintf(what, sizeof what, "%s dw", t->name);
    CHECK_CLOSE(what, dwo, dw, nw, PARITY_TOL);
    void *all[] = {x, w, y, dy, dx, dw, yo, dxo, dwo};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
    void *dev[] = {xd, wd, dyd, yd, dxd, dwd};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) eq_backend_release(be, dev[i]);
    eq_backend_destroy(&be);
    ck_assert_ptr_null(be);
}
END_TEST

typedef struct conv_fd {
    eq_backend *be;
    eq_conv2d_desc d;
    float *x, *w, *y, *g;
    size_t ny;
} conv_fd;

static double s_conv_loss(void *vctx)
{
    conv_fd *c = vctx;
    eq_err err = {0};
    OK(eq_backend_conv2d_fwd(c->be, &c->d, c->x, c->w, c->y, &err));
    return s_dot(c->g, c->y, c->ny);
}

START_TEST(test_conv_fd)
{
    const conv_case *t = &CONV[_i];
    eq_err err = {0};
    conv_fd c = {.be = s_cpu(1), .d = s_conv_desc(t)};
    size_t nx = c.d.n * c.d.h * c.d.w * c.d.c, nw = c.d.k * (c.d.c / c.d.groups) * c.d.r * c.d.s;
    c.ny = c.d.n * c.d.p * c.d.q * c.d.k;
    c.x = s_randv(nx, 1.0f);
    c.w = s_randv(nw, 0.5f);
    c.g = s_randv(c.ny, 1.0f);
    c.y = malloc(c.ny * 4);
    float *dx = malloc(nx * 4), *dw = malloc(nw * 4);
    OK(eq_backend_conv2d_bwd_data(c.be, &c.d, c.g, c.w, dx, &err));
    OK(eq_backend_conv2d_bwd_filter(c.be, &c.d, c.x, c.g, dw, &err));
    /* the loss is linear in x and in w: a large step has no truncation error */
    CHECK_FD(t->name, s_conv_loss, &c, c.x, nx, dx, 0.25f, 1e-5);
    CHECK_FD(t->name, s_conv_loss, &c, c.w, nw, dw, 0.25f, 1e-5);
    free(c.x), free(c.w), free(c.g), free(c.y), free(dx), free(dw);
    eq_backend_destroy(&c.be);
}
END_TEST

/* Several tiles: one image's im2col (96*96 rows x 576) exceeds half the
 * 16 MiB col budget, so each image is its own tile; checked against a
 * naive double-precision convolution written here. */
START_TEST(test_conv_tiles)
{
    eq_conv2d_desc d = {.n = 3, .h = 96, .w = 96, .c = 64, .k = 4, .r = 3, .s = 3,
                        .stride_h = 1, .stride_w = 1, .pad_h = 1, .pad_w = 1,
                        .dil_h = 1, .dil_w = 1, .groups = 1};
    eq_err err = {0};
    OK(eq_conv2d_desc_init(&d, &err));
    const int64_t N = d.n, H = d.h, W = d.w, C = d.c, K = d.k;
    size_t nx = N * H * W * C, ny = N * H * W * K, nw = K * C * 9;
    float *x = s_randv(nx, 1.0f), *w = s_randv(nw, 0.2f), *dy = s_randv(ny, 1.0f);
    float *y = malloc(ny * 4), *dx = malloc(nx * 4), *dw = malloc(nw * 4);
    eq_backend *be = s_cpu(2);
    OK(eq_backend_conv2d_fwd(be, &d, x, w, y, &err));
    OK(eq_backend_conv2d_bwd_data(be, &d, dy, w, dx, &err));
    OK(eq_backend_conv2d_bwd_filter(be, &d, x, dy, dw, &err));
    double *ry = calloc(ny, 8), *rdx = calloc(nx, 8), *rdw = calloc(nw, 8);
    for (int64_t n = 0; n < N; n++)
        for (int64_t p = 0; p < H; p++)
            for (int64_t q = 0; q < W; q++)
                for (int64_t r = 0; r < 3; r++)
                    for (int64_t s2 = 0; s2 < 3; s2++) {
                        int64_t ih = p - 1 + r, iw = q - 1 + s2;
                        if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                        const float *xr = x + ((n * H + ih) * W + iw) * C;
                        for (int64_t k = 0; k < K; k++) {
                            size_t o = ((n * H + p) * W + q) * K + k;
                            double acc = 0.0, g = dy[o];
                            for (int64_t c = 0; c < C; c++) {
                                size_t wi = ((k * C + c) * 3 + r) * 3 + s2;
                                acc += (double)xr[c] * w[wi];
                                rdx[((n * H + ih) * W + iw) * C + c] += g * w[wi];
                                rdw[wi] += g * xr[c];
                            }
                            ry[o] += acc;
                        }
                    }
    float *fy = malloc(ny * 4), *fdx = malloc(nx * 4), *fdw = malloc(nw * 4);
    for (size_t i = 0; i < ny; i++) fy[i] = (float)ry[i];
    for (size_t i = 0; i < nx; i++) fdx[i] = (float)rdx[i];
    for (size_t i = 0; i < nw; i++) fdw[i] = (float)rdw[i];
    CHECK_CLOSE("tiled y", y, fy, ny, PARITY_TOL);
    CHECK_CLOSE("tiled dx", dx, fdx, nx, PARITY_TOL);
    CHECK_CLOSE("tiled dw", dw, fdw, nw, PARITY_TOL);
    void *all[] = {x, w, dy, y, dx, dw, ry, rdx, rdw, fy, fdx, fdw};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
    eq_backend_destroy(&be);
}
END_TEST

/* ---- batch norm --------------------------------------------------------- */

typedef struct bn_case {
    const char *name;
    int64_t n, h, w, c;
} bn_case;
static const bn_case BN[] = {{"bn_a", 2, 3, 4, 5}, {"bn_b", 4, 1, 1, 3}};

START_TEST(test_bn_parity)
{
    const bn_case *t = &BN[_i];
    eq_backend *be = s_cpu(1);
    eq_err err = {0};
    eq_bn_desc d;
    size_t m = t->n * t->h * t->w, c = t->c, nx = m * c;
    OK(eq_bn_desc_init(&d, m, c, 1e-5f, 0.1f, &err));
    float *x = s_f32(t->name, "x", nx), *ga = s_f32(t->name, "gamma", c), *be_ = s_f32(t->name, "beta", c);
    float *rm = s_f32(t->name, "rm", c), *rv = s_f32(t->name, "rv", c), *dy = s_f32(t->name, "dy", nx);
    float *xd = s_up(be, x, nx * 4), *gd = s_up(be, ga, c * 4), *bd = s_up(be, be_, c * 4);
    float *rmd = s_up(be, rm, c * 4), *rvd = s_up(be, rv, c * 4), *dyd = s_up(be, dy, nx * 4);
    float *yd = s_dev(be, nx * 4), *smd = s_dev(be, c * 4), *sid = s_dev(be, c * 4);
    float *dxd = s_dev(be, nx * 4), *dgd = s_dev(be, c * 4), *dbd = s_dev(be, c * 4);
    float *yed = s_dev(be, nx * 4);
    /* eval first: it reads the running stats before the train step moves them */
    OK(eq_backend_bn_fwd_eval(be, &d, xd, gd, bd, rmd, rvd, yed, &err));
    OK(eq_backend_bn_fwd_train(be, &d, xd, gd, bd, rmd, rvd, yd, smd, sid, &err));
    OK(eq_backend_bn_bwd(be, &d, xd, dyd, gd, smd, sid, dxd, dgd, dbd, &err));
    struct { const char *name; float *dev; size_t n; } outs[] = {
        {"y", yd, nx}, {"y_eval", yed, nx}, {"rm_out", rmd, c}, {"rv_out", rvd, c},
        {"dx", dxd, nx}, {"dgamma", dgd, c}, {"dbeta", dbd, c}};
    for (size_t i = 0; i < sizeof outs / sizeof outs[0]; i++) {
        float *ref = s_f32(t->name, outs[i].name, outs[i].n), *got = s_down(be, outs[i].dev, outs[i].n);
        char what[128];
        snprintf(what, sizeof what, "%s %s", t->name, outs[i].name);
        CHECK_CLOSE(what, got, ref, outs[i].n, PARITY_TOL);
        free(ref), free(got);
    }
    float *all[] = {x, ga, be_, rm, rv, dy};
    for (size_t i = 0; i < 6; i++) free(all[i]);
    float *dev[] = {xd, gd, bd, rmd, rvd, dyd, yd, smd, sid, dxd, dgd, dbd, yed};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) eq_backend_release(be, dev[i]);
    eq_backend_destroy(&be);
}
END_TEST

typedef struct bn_fd {
    eq_backend *be;
    eq_bn_desc d;
    float *x, *gamma, *beta, *rm, *rv, *y, *sm, *si, *g;
} bn_fd;

static double s_bn_loss(void *vctx)
{
    bn_fd *b = vctx;
    eq_err err = {0};
    OK(eq_backend_bn_fwd_train(b->be, &b->d, b->x, b->gamma, b->beta, b->rm, b->rv, b->y, b->sm,
                               b->si, &err));
    return s_dot(b->g, b->y, b->d.m * b->d.c);
}

START_TEST(test_bn_fd)
{
    eq_err err = {0};
    bn_fd b = {.be = s_cpu(1)};
    const int64_t m = 12, c = 3;
    OK(eq_bn_desc_init(&b.d, m, c, 1e-5f, 0.1f, &err));
    b.x = s_randv(m * c, 2.0f);
    b.gamma = s_randv(c, 1.0f);
    b.beta = s_randv(c, 1.0f);
    b.rm = calloc(c, 4);
    b.rv = calloc(c, 4);
    b.y = malloc(m * c * 4);
    b.sm = malloc(c * 4);
    b.si = malloc(c * 4);
    b.g = s_randv(m * c, 1.0f);
    float *dx = malloc(m * c * 4), *dg = malloc(c * 4), *db = malloc(c * 4);
    s_bn_loss(&b);
    OK(eq_backend_bn_bwd(b.be, &b.d, b.x, b.g, b.gamma, b.sm, b.si, dx, dg, db, &err));
    CHECK_FD("bn dx", s_bn_loss, &b, b.x, m * c, dx, 1e-2f, 1e-4);
    CHECK_FD("bn dgamma", s_bn_loss, &b, b.gamma, c, dg, 1e-2f, 1e-4);
    CHECK_FD("bn dbeta", s_bn_loss, &b, b.beta, c, db, 1e-2f, 1e-4);
    /* affine=False: gamma/beta NULL mean 1/0 */
    float *ones = malloc(c * 4), *zeros = calloc(c, 4), *y1 = malloc(m * c * 4);
    for (int64_t j = 0; j < c; j++) ones[j] = 1.0f;
    OK(eq_backend_bn_fwd_train(b.be, &b.d, b.x, NULL, NULL, b.rm, b.rv, b.y, b.sm, b.si, &err));
    OK(eq_backend_bn_fwd_train(b.be, &b.d, b.x, ones, zeros, b.rm, b.rv, y1, b.sm, b.si, &err));
    ck_assert_mem_eq(b.y, y1, m * c * 4);
    float *dx1 = malloc(m * c * 4);
    OK(eq_backend_bn_bwd(b.be, &b.d, b.x, b.g, NULL, b.sm, b.si, dx, NULL, NULL, &err));
    OK(eq_backend_bn_bwd(b.be, &b.d, b.x, b.g, ones, b.sm, b.si, dx1, dg, db, &err));
    ck_assert_mem_eq(dx, dx1, m * c * 4);
    float *all[] = {b.x, b.gamma, b.beta, b.rm, b.rv, b.y, b.sm, b.si, b.g, dx, dg, db, ones, zeros, y1, dx1};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
    eq_backend_destroy(&b.be);
}
END_TEST

/* ---- fused bn_relu against the separate ops -------------------------------- */

typedef struct fuse_case {
    int64_t m, c;
    int z, dy2; /* with a residual, with a second incoming gradient */
} fuse_case;
/* full 16-channel blocks over several row slices, blocks plus a tail, a
 * tail alone, one row slice with dy2 only */
static const fuse_case FUSE[] = {{4100, 16, 1, 1}, {300, 40, 0, 0}, {97, 5, 1, 0}, {2050, 24, 0, 1}};
#define NFUSE (sizeof FUSE / sizeof FUSE[0])

/* The CPU backend's table without the fused members: backend.c composes them. */
static struct eq_backend_i s_unfused_iface;

typedef struct fuse_out {
    float *y, *ye, *sm, *si, *rm, *rv, *dx, *dz, *dg, *db;
} fuse_out;

static void s_fuse_free(fuse_out *o)
{
    float *v[] = {o->y, o->ye, o->sm, o->si, o->rm, o->rv, o->dx, o->dz, o->dg, o->db};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) free(v[i]);
}

/* Run case t three ways: 0 the separate ops by hand, 1 the CPU's fused
 * members, 2 backend.c's composition. */
static void s_fuse_run(eq_backend *be, const fuse_case *t, int how, const float *x, const float *z,
                       const float *dy, const float *dy2, const float *gamma, const float *beta,
                       fuse_out *o)
{
    eq_err err = {0};
    const size_t m = t->m, c = t->c, n = m * c;
    eq_bn_desc d;
    OK(eq_bn_desc_init(&d, t->m, t->c, 1e-5f, 0.1f, &err));
    *o = (fuse_out){.y = malloc(n * 4), .ye = malloc(n * 4), .sm = malloc(c * 4),
                    .si = malloc(c * 4), .rm = malloc(c * 4), .rv = malloc(c * 4),
                    .dx = malloc(n * 4), .dz = malloc(n * 4), .dg = malloc(c * 4),
                    .db = malloc(c * 4)};
    for (size_t j = 0; j < c; j++) o->rm[j] = 0.1f * (float)j, o->rv[j] = 1.0f + 0.5f * (float)j;
    const float *zz = t->z ? z : NULL, *g2 = t->dy2 ? dy2 : NULL;
    eq_backend alt = {.iface = &s_unfused_iface, .context = be->context};
    eq_backend *b = how == 2 ? &alt : be;
    if (how == 0) {
        OK(eq_backend_bn_fwd_eval(be, &d, x, gamma, beta, o->rm, o->rv, o->ye, &err));
        if (zz) OK(eq_backend_add(be, n, o->ye, zz, o->ye, &err));
        OK(eq_backend_relu_fwd(be, n, o->ye, o->ye, &err));
        OK(eq_backend_bn_fwd_train(be, &d, x, gamma, beta, o->rm, o->rv, o->y, o->sm, o->si, &err));
        if (zz) OK(eq_backend_add(be, n, o->y, zz, o->y, &err));
        OK(eq_backend_relu_fwd(be, n, o->y, o->y, &err));
        float *g = o->dz;
        memcpy(g, dy, n * 4);
        if (g2) OK(eq_backend_add(be, n, g, g2, g, &err));
        OK(eq_backend_relu_bwd(be, n, o->y, g, g, &err));
        OK(eq_backend_bn_bwd(be, &d, x, g, gamma, o->sm, o->si, o->dx, o->dg, o->db, &err));
        return;
    }
    OK(eq_backend_bn_relu_fwd_eval(b, &d, x, zz, gamma, beta, o->rm, o->rv, o->ye, &err));
    OK(eq_backend_bn_relu_fwd_train(b, &d, x, zz, gamma, beta, o->rm, o->rv, o->y, o->sm, o->si, &err));
    OK(eq_backend_bn_relu_bwd(b, &d, x, o->y, dy, g2, gamma, o->sm, o->si, o->dx, o->dz, o->dg,
                              o->db, &err));
}

START_TEST(test_bn_relu_fused)
{
    const fuse_case *t = &FUSE[_i];
    eq_err err = {0};
    eq_backend *be = s_cpu(2);
    s_unfused_iface = *be->iface;
    s_unfused_iface.bn_relu_fwd_train = NULL;
    s_unfused_iface.bn_relu_fwd_eval = NULL;
    s_unfused_iface.bn_relu_bwd = NULL;
    const size_t m = t->m, c = t->c, n = m * c;
    /* x off-centre (mean 3 per channel, rms 1), so the statistics see a
     * mean larger than the spread */
    float *x = s_randv(n, 1.7f), *z = s_randv(n, 1.0f), *dy = s_randv(n, 1.0f), *dy2 = s_randv(n, 0.5f);
    for (size_t i = 0; i < n; i++) x[i] += 3.0f + 0.25f * (float)(i % c);
    float *gamma = s_randv(c, 1.0f), *beta = s_randv(c, 0.5f);
    fuse_out o[3];
    for (int how = 0; how < 3; how++) s_fuse_run(be, t, how, x, z, dy, dy2, gamma, beta, &o[how]);
    for (int how = 1; how < 3; how++) {
        struct { const char *name; const float *a, *b; size_t n; } cmp[] = {
            {"y", o[0].y, o[how].y, n},     {"y eval", o[0].ye, o[how].ye, n},
            {"mean", o[0].sm, o[how].sm, c}, {"invstd", o[0].si, o[how].si, c},
            {"running mean", o[0].rm, o[how].rm, c}, {"running var", o[0].rv, o[how].rv, c},
            {"dx", o[0].dx, o[how].dx, n},   {"dz", o[0].dz, o[how].dz, n},
            {"dgamma", o[0].dg, o[how].dg, c}, {"dbeta", o[0].db, o[how].db, c}};
        for (size_t k = 0; k < sizeof cmp / sizeof cmp[0]; k++)
            ck_assert_msg(memcmp(cmp[k].a, cmp[k].b, cmp[k].n * 4) == 0,
                          "case %d %s: %s differs from the separate ops", _i,
                          how == 1 ? "cpu" : "composed", cmp[k].name);
    }
    /* the statistics against a float64 reference */
    for (size_t j = 0; j < c; j++) {
        double s = 0, q = 0;
        for (size_t i = 0; i < m; i++) s += x[i * c + j];
        double mu = s / (double)m;
        for (size_t i = 0; i < m; i++) q += (x[i * c + j] - mu) * (x[i * c + j] - mu);
        double is = 1.0 / sqrt(q / (double)m + 1e-5);
        ck_assert_msg(fabs(o[1].sm[j] - mu) <= 1e-6 * fabs(mu), "mean[%zu] %.9g vs %.9g", j,
                      (double)o[1].sm[j], mu);
        ck_assert_msg(fabs(o[1].si[j] - is) <= 1e-6 * is, "invstd[%zu] %.9g vs %.9g", j,
                      (double)o[1].si[j], is);
    }
    /* dz may be dy (in place); dgamma/dbeta may be NULL */
    eq_bn_desc d;
    OK(eq_bn_desc_init(&d, t->m, t->c, 1e-5f, 0.1f, &err));
    float *g = malloc(n * 4), *dx = malloc(n * 4);
    memcpy(g, dy, n * 4);
    OK(eq_backend_bn_relu_bwd(be, &d, x, o[1].y, g, t->dy2 ? dy2 : NULL, gamma, o[1].sm, o[1].si,
                              dx, g, NULL, NULL, &err));
    ck_assert_mem_eq(g, o[1].dz, n * 4);
    ck_assert_mem_eq(dx, o[1].dx, n * 4);
    /* without dz the backward forms g again in its second pass */
    OK(eq_backend_bn_relu_bwd(be, &d, x, o[1].y, dy, t->dy2 ? dy2 : NULL, gamma, o[1].sm, o[1].si,
                              dx, NULL, NULL, NULL, &err));
    ck_assert_mem_eq(dx, o[1].dx, n * 4);
    /* bn_bwd in place (dx == dy), as the composition uses it */
    memcpy(g, o[1].dz, n * 4);
    OK(eq_backend_bn_bwd(be, &d, x, g, gamma, o[1].sm, o[1].si, g, NULL, NULL, &err));
    ck_assert_mem_eq(g, o[1].dx, n * 4);
    ck_assert_int_eq(eq_backend_bn_relu_bwd(be, &d, x, o[1].y, dy, NULL, gamma, o[1].sm, o[1].si,
                                            (float *)dy, NULL, NULL, NULL, &err),
                     EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "bn_relu_bwd: dx aliases"), "%s", err.msg);
    for (int how = 0; how < 3; how++) s_fuse_free(&o[how]);
    free(x), free(z), free(dy), free(dy2), free(gamma), free(beta), free(g), free(dx);
    eq_backend_destroy(&be);
}
END_TEST

/* Finite differences through y = relu(bn(x) + z), with z chosen so that no
 * pre-activation lies within 0.2 of the kink. */
typedef struct bnr_fd {
    eq_backend *be;
    eq_bn_desc d;
    float *x, *z, *gamma, *beta, *rm, *rv, *y, *sm, *si, *g;
} bnr_fd;

static double s_bnr_loss(void *vctx)
{
    bnr_fd *b = vctx;
    eq_err err = {0};
    OK(eq_backend_bn_relu_fwd_train(b->be, &b->d, b->x, b->z, b->gamma, b->beta, b->rm, b->rv,
                                    b->y, b->sm, b->si, &err));
    return s_dot(b->g, b->y, b->d.m * b->d.c);
}

START_TEST(test_bn_relu_fd)
{
    eq_err err = {0};
    bnr_fd b = {.be = s_cpu(1)};
    const int64_t m = 12, c = 3, n = m * c;
    OK(eq_bn_desc_init(&b.d, m, c, 1e-5f, 0.1f, &err));
    b.x = s_randv(n, 2.0f);
    b.z = s_randv(n, 1.0f);
    b.gamma = s_randv(c, 1.0f);
    b.beta = s_randv(c, 1.0f);
    b.rm = calloc(c, 4);
    b.rv = calloc(c, 4);
    b.y = malloc(n * 4);
    b.sm = malloc(c * 4);
    b.si = malloc(c * 4);
    b.g = s_randv(n, 1.0f);
    float *pre = malloc(n * 4);
    OK(eq_backend_bn_fwd_train(b.be, &b.d, b.x, b.gamma, b.beta, b.rm, b.rv, pre, b.sm, b.si, &err));
    for (int64_t i = 0; i < n; i++)
        if (fabsf(pre[i] + b.z[i]) < 0.2f) b.z[i] += pre[i] + b.z[i] >= 0 ? 0.4f : -0.4f;
    float *dx = malloc(n * 4), *dz = malloc(n * 4), *dg = malloc(c * 4), *db = malloc(c * 4);
    s_bnr_loss(&b);
    OK(eq_backend_bn_relu_bwd(b.be, &b.d, b.x, b.y, b.g, NULL, b.gamma, b.sm, b.si, dx, dz, dg,
                              db, &err));
    CHECK_FD("bn_relu dx", s_bnr_loss, &b, b.x, n, dx, 1e-2f, 1e-4);
    CHECK_FD("bn_relu dz", s_bnr_loss, &b, b.z, n, dz, 1e-2f, 1e-4);
    CHECK_FD("bn_relu dgamma", s_bnr_loss, &b, b.gamma, c, dg, 1e-2f, 1e-4);
    CHECK_FD("bn_relu dbeta", s_bnr_loss, &b, b.beta, c, db, 1e-2f, 1e-4);
    float *all[] = {b.x, b.z, b.gamma, b.beta, b.rm, b.rv, b.y, b.sm, b.si, b.g, pre, dx, dz, dg, db};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
    eq_backend_destroy(&b.be);
}
END_TEST

/* ---- activations, add ---------------------------------------------------- */

START_TEST(test_relu_parity)
{
    eq_backend *be = s_cpu(1);
    eq_err err = {0};
    size_t n = 2 * 3 * 4 * 5;
    float *x = s_f32("relu", "x", n), *y = s_f32("relu", "y", n), *dy = s_f32("relu", "dy", n),
          *dx = s_f32("relu", "dx", n);
    float *yo = malloc(n * 4), *dxo = malloc(n * 4);
    OK(eq_backend_relu_fwd(be, n, x, yo, &err));
    OK(eq_backend_relu_bwd(be, n, yo, dy, dxo, &err));
    ck_assert_mem_eq(yo, y, n * 4);
    ck_assert_mem_eq(dxo, dx, n * 4);
    /* in place */
    OK(eq_backend_relu_fwd(be, n, x, x, &err));
    ck_assert_mem_eq(x, y, n * 4);
    free(x), free(y), free(dy), free(dx), free(yo), free(dxo);
    eq_backend_destroy(&be);
}
END_TEST

/* NaN goes through ReLU as through torch.relu (relu(NaN) = NaN; its
 * backward, threshold_backward, zeroes only where y <= 0, so dy passes at a
 * NaN), in the vector body and the scalar tail, and through the fused
 * bn_relu's ReLU: a NaN activation stays visible instead of becoming 0. */
START_TEST(test_relu_nan)
{
    eq_backend *be = s_cpu(1);
    eq_err err = {0};
    const float nan = NAN;
    const float x[7] = {-1.0f, nan, 2.0f, 0.0f, 3.0f, nan, -4.0f};
    const float dy[7] = {1, 2, 3, 4, 5, 6, 7};
    const float dx_ref[7] = {0, 2, 3, 0, 5, 6, 0};
    float y[7], dx[7];
    OK(eq_backend_relu_fwd(be, 7, x, y, &err));
    OK(eq_backend_relu_bwd(be, 7, y, dy, dx, &err));
    for (int i = 0; i < 7; i++) {
        if (isnan(x[i])) ck_assert(isnan(y[i]));
        else ck_assert_float_eq(y[i], x[i] > 0 ? x[i] : 0.0f);
        ck_assert_float_eq(dx[i], dx_ref[i]);
    }
    /* fused: one channel of an [8][2] batch holds a NaN; its outputs are NaN,
     * the other channel's are finite */
    float bx[16], by[16], rm[2] = {0, 0}, rv[2] = {1, 1}, sm[2], si[2];
    for (int i = 0; i < 16; i++) bx[i] = (float)((i * 7) % 5) - 2.0f;
    bx[4] = nan; /* row 2, channel 0 */
    eq_bn_desc d;
    OK(eq_bn_desc_init(&d, 8, 2, 1e-5f, 0.1f, &err));
    OK(eq_backend_bn_relu_fwd_train(be, &d, bx, NULL, NULL, NULL, rm, rv, by, sm, si, &err));
    for (int i = 0; i < 16; i++) {
        if (i % 2 == 0) ck_assert_msg(isnan(by[i]), "channel 0 row %d: %g", i / 2, (double)by[i]);
        else ck_assert(isfinite(by[i]));
    }
    eq_backend_destroy(&be);
}
END_TEST

/* Hardtanh / ReLU6: the values PyTorch gives (F.hardtanh and
 * hardtanh_backward, whose mask is lo < x < hi: no gradient at the bounds). */
START_TEST(test_clamp)
{
    eq_backend *be = s_cpu(1);
    eq_err err = {0};
    const float x[8] = {-2.0f, 0.0f, 1e-7f, 3.5f, 6.0f, 6.0001f, 100.0f, -0.0f};
    const float y_ref[8] = {0.0f, 0.0f, 1e-7f, 3.5f, 6.0f, 6.0f, 6.0f, 0.0f};
    const float dy[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    const float dx_ref[8] = {0, 0, 3, 4, 0, 0, 0, 0};
    float y[8], dx[8];
    OK(eq_backend_clamp_fwd(be, 8, 0.0f, 6.0f, x, y, &err));
    OK(eq_backend_clamp_bwd(be, 8, 0.0f, 6.0f, y, dy, dx, &err));
    for (int i = 0; i < 8; i++) {
        ck_assert_msg(y[i] == y_ref[i], "clamp(%g) = %g, expected %g", x[i], y[i], y_ref[i]);
        ck_assert_msg(dx[i] == dx_ref[i], "dx[%d] = %g, expected %g", i, dx[i], dx_ref[i]);
    }
    /* a large input goes through the threaded chunks */
    size_t n = 100000;
    float *a = s_randv(n, 8.0f), *b = malloc(n * 4);
    eq_backend *be3 = s_cpu(3);
    OK(eq_backend_clamp_fwd(be3, n, -1.0f, 2.0f, a, b, &err));
    for (size_t i = 0; i < n; i++)
        ck_assert(b[i] == (a[i] < -1.0f ? -1.0f : a[i] > 2.0f ? 2.0f : a[i]));
    free(a), free(b);
    eq_backend_destroy(&be3);
    ck_assert_int_eq(eq_backend_clamp_fwd(be, 8, 6.0f, 6.0f, x, y, &err), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "clamp_fwd: bounds [6, 6]"));
    ck_assert_int_eq(eq_backend_clamp_bwd(be, 8, 0.0f, INFINITY, y, dy, dx, &err), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_backend_clamp_fwd(be, 8, 0.0f, 6.0f, NULL, y, &err), EQ_ERR_INVALID);
    eq_backend_destroy(&be);
}
END_TEST

/* Fixup's scalar bias / multiplier: y = x*a + b, dx = dy*a, da = sum(dy*x),
 * db = sum(dy) (double references), defaults for NULL, in place, and 1 vs
 * 3 threads bit for bit. */
START_TEST(test_scalar_affine)
{
    eq_err err = {0};
    const size_t n = 70000; /* several chunks */
    float *x = s_randv(n, 2.0f), *dy = s_randv(n, 1.0f), *y = malloc(n * 4), *dx = malloc(n * 4);
    float a = 1.5f, b = -0.25f, da[2], db[2];
    for (int th = 0; th < 2; th++) {
        eq_backend *be = s_cpu(th ? 3 : 1);
        OK(eq_backend_scalar_affine_fwd(be, n, x, &a, &b, y, &err));
        OK(eq_backend_scalar_affine_bwd(be, n, x, dy, &a, dx, &da[th], &db[th], &err));
        double sx = 0, s1 = 0;
        for (size_t i = 0; i < n; i++) {
            ck_assert(y[i] == x[i] * a + b);
            ck_assert(dx[i] == dy[i] * a);
            sx += (double)dy[i] * x[i], s1 += dy[i];
        }
        ck_assert_msg(fabs(da[th] - sx) <= 1e-6 * fabs(sx) + 1e-6, "dscale %g vs %g", da[th], sx);
        ck_assert_msg(fabs(db[th] - s1) <= 1e-6 * fabs(s1) + 1e-6, "dbias %g vs %g", db[th], s1);
        /* NULL scale and bias: identity; dx NULL and in place */
        OK(eq_backend_scalar_affine_fwd(be, n, x, NULL, NULL, y, &err));
        ck_assert_mem_eq(y, x, n * 4);
        float dbo;
        OK(eq_backend_scalar_affine_bwd(be, n, NULL, dy, NULL, NULL, NULL, &dbo, &err));
        ck_assert(dbo == db[th]);
        memcpy(y, dy, n * 4);
        OK(eq_backend_scalar_affine_bwd(be, n, x, y, &a, y, NULL, NULL, &err));
        ck_assert_mem_eq(y, dx, n * 4);
        ck_assert_int_eq(eq_backend_scalar_affine_bwd(be, n, NULL, dy, &a, dx, da, NULL, &err), EQ_ERR_INVALID);
        eq_backend_destroy(&be);
    }
    ck_assert(da[0] == da[1] && db[0] == db[1]);
    free(x), free(dy), free(y), free(dx);
}
END_TEST

typedef struct act_fd {
    eq_backend *be;
    int64_t m, c, ns;
    float *x, *a, *y, *g;
} act_fd;

static double s_relu_loss(void *vctx)
{
    act_fd *t = vctx;
    eq_err err = {0};
    OK(eq_backend_relu_fwd(t->be, t->m * t->c, t->x, t->y, &err));
    return s_dot(t->g, t->y, t->m * t->c);
}

static double s_prelu_loss(void *vctx)
{
    act_fd *t = vctx;
    eq_err err = {0};
    OK(eq_backend_prelu_fwd(t->be, t->m, t->c, t->ns, t->x, t->a, t->y, &err));
    return s_dot(t->g, t->y, t->m * t->c);
}

/* Inputs kept at least 0.05 away from the kink at 0. */
static float *s_away_from_zero(size_t n)
{
    float *v = s_randv(n, 1.0f);
    for (size_t i = 0; i < n; i++) v[i] = v[i] >= 0 ? v[i] + 0.05f : v[i] - 0.05f;
    return v;
}

START_TEST(test_act_fd)
{
    eq_err err = {0};
    act_fd t = {.be = s_cpu(1), .m = 10, .c = 4};
    size_t n = t.m * t.c;
    t.x = s_away_from_zero(n);
    t.y = malloc(n * 4);
    t.g = s_randv(n, 1.0f);
    float *dx = malloc(n * 4), *da = malloc(4 * 4);
    s_relu_loss(&t);
    OK(eq_backend_relu_bwd(t.be, n, t.y, t.g, dx, &err));
    CHECK_FD("relu dx", s_relu_loss, &t, t.x, n, dx, 1e-2f, 1e-5);
    for (t.ns = 1; t.ns <= t.c; t.ns += t.c - 1) {
        t.a = s_randv(t.ns, 0.5f);
        OK(eq_backend_prelu_bwd(t.be, t.m, t.c, t.ns, t.x, t.a, t.g, dx, da, &err));
        CHECK_FD("prelu dx", s_prelu_loss, &t, t.x, n, dx, 1e-2f, 1e-5);
        CHECK_FD("prelu dslope", s_prelu_loss, &t, t.a, t.ns, da, 1e-2f, 1e-5);
        free(t.a);
    }
    free(t.x), free(t.y), free(t.g), free(dx), free(da);
    eq_backend_destroy(&t.be);
}
END_TEST

typedef struct prelu_case {
    const char *name;
    int64_t n, h, w, c, ns;
} prelu_case;
static const prelu_case PRELU[] = {{"prelu_1", 2, 3, 3, 4, 1}, {"prelu_c", 2, 3, 3, 4, 4}};

START_TEST(test_prelu_parity)
{
    const prelu_case *t = &PRELU[_i];
    eq_backend *be = s_cpu(1);
    eq_err err = {0};
    int64_t m = t->n * t->h * t->w;
    size_t n = m * t->c;
    float *x = s_f32(t->name, "x", n), *a = s_f32(t->name, "a", t->ns), *dy = s_f32(t->name, "dy", n);
    float *y = s_f32(t->name, "y", n), *dx = s_f32(t->name, "dx", n), *da = s_f32(t->name, "da", t->ns);
    float *yo = malloc(n * 4), *dxo = malloc(n * 4), *dao = malloc(t->ns * 4);
    OK(eq_backend_prelu_fwd(be, m, t->c, t->ns, x, a, yo, &err));
    OK(eq_backend_prelu_bwd(be, m, t->c, t->ns, x, a, dy, dxo, dao, &err));
    CHECK_CLOSE("prelu y", yo, y, n, PARITY_TOL);
    CHECK_CLOSE("prelu dx", dxo, dx, n, PARITY_TOL);
    CHECK_CLOSE("prelu da", dao, da, t->ns, PARITY_TOL);
    free(x), free(a), free(dy), free(y), free(dx), free(da), free(yo), free(dxo), free(dao);
    eq_backend_destroy(&be);
}
END_TEST

START_TEST(test_add)
{
    eq_backend *be = s_cpu(1);
    eq_err err = {0};
    float a[5] = {1, 2, 3, 4, 5}, b[5] = {0.5f, -2, 0, 1e-3f, -7}, y[5];
    OK(eq_backend_add(be, 5, a, b, y, &err));
    for (int i = 0; i < 5; i++) ck_assert_float_eq(y[i], a[i] + b[i]);
    OK(eq_backend_add(be, 5, a, b, a, &err)); /* in place */
    ck_assert_mem_eq(a, y, sizeof y);
    eq_backend_destroy(&be);
}
END_TEST

/* ---- pooling ------------------------------------------------------------ */

typedef struct pool_case {
    const char *name;
    int max;
    int64_t n, h, w, c, kh, kw, sh, sw, ph, pw;
    int ceil, cip;
} pool_case;

static const pool_case POOL[] = {
    {"maxpool_3s2p1", 1, 2, 9, 8, 3, 3, 3, 2, 2, 1, 1, 0, 1},
    {"maxpool_2s2_ceil", 1, 1, 7, 5, 4, 2, 2, 2, 2, 0, 0, 1, 1},
    {"avgpool_3s2p1", 0, 2, 9, 8, 3, 3, 3, 2, 2, 1, 1, 0, 1},
    {"avgpool_3s2p1_nopad", 0, 2, 9, 8, 3, 3, 3, 2, 2, 1, 1, 0, 0},
    {"avgpool_2s2_ceil", 0, 1, 7, 5, 4, 2, 2, 2, 2, 0, 0, 1, 0},
    {"avgpool_3s2p1_ceil_pad", 0, 1, 8, 6, 2, 3, 3, 2, 2, 1, 1, 1, 1},
};
#define NPOOL (sizeof POOL / sizeof POOL[0])

static eq_pool2d_desc s_pool_desc(const pool_case *t)
{
    eq_pool2d_desc d = {.n = t->n, .h = t->h, .w = t->w, .c = t->c, .kh = t->kh, .kw = t->kw,
                        .stride_h = t->sh, .stride_w = t->sw, .pad_h = t->ph, .pad_w = t->pw,
                        .ceil_mode = t->ceil, .count_include_pad = t->cip};
    eq_err err = {0};
    ck_assert_msg(eq_pool2d_desc_init(&d, &err) == EQ_OK, "%s: %s", t->name, err.msg);
    return d;
}

START_TEST(test_pool_parity)
{
    const pool_case *t = &POOL[_i];
    eq_backend *be = s_cpu(1);
    eq_err err = {0};
    eq_pool2d_desc d = s_pool_desc(t);
    size_t nx = d.n * d.h * d.w * d.c, ny = d.n * d.p * d.q * d.c;
    float *x = s_f32(t->name, "x", nx), *y = s_f32(t->name, "y", ny), *dy = s_f32(t->name, "dy", ny);
    float *dx = s_f32(t->name, "dx", nx);
    float *yo = malloc(ny * 4), *dxo = malloc(nx * 4);
    if (t->max) {
        int32_t *am = s_i32(t->name, "argmax", ny), *amo = malloc(ny * 4);
        OK(eq_backend_maxpool_fwd(be, &d, x, yo, amo, &err));
        OK(eq_backend_maxpool_bwd(be, &d, amo, dy, dxo, &err));
        ck_assert_mem_eq(amo, am, ny * 4);
        free(am), free(amo);
    } else {
        OK(eq_backend_avgpool_fwd(be, &d, x, yo, &err));
        OK(eq_backend_avgpool_bwd(be, &d, dy, dxo, &err));
    }
    char what[128];
    snprintf(what, sizeof what, "%s y", t->name);
    CHECK_CLOSE(what, yo, y, ny, PARITY_TOL);
    snprintf(what, sizeof what, "%s dx", t->name);
    CHECK_CLOSE(what, dxo, dx, nx, PARITY_TOL);
    free(x), free(y), free(dy), free(dx), free(yo), free(dxo);
    eq_backend_destroy(&be);
}
END_TEST

typedef struct pool_fd {
    eq_backend *be;
    eq_pool2d_desc d;
    int max;
    float *x, *y, *g;
    int32_t *am;
} pool_fd;

static double s_pool_loss(void *vctx)
{
    pool_fd *t = vctx;
    eq_err err = {0};
    if (t->max)
        OK(eq_backend_maxpool_fwd(t->be, &t->d, t->x, t->y, t->am, &err));
    else
        OK(eq_backend_avgpool_fwd(t->be, &t->d, t->x, t->y, &err));
    return s_dot(t->g, t->y, t->d.n * t->d.p * t->d.q * t->d.c);
}

START_TEST(test_pool_fd)
{
    const pool_case *pc = &POOL[_i];
    eq_err err = {0};
    pool_fd t = {.be = s_cpu(1), .d = s_pool_desc(pc), .max = pc->max};
    size_t nx = t.d.n * t.d.h * t.d.w * t.d.c, ny = t.d.n * t.d.p * t.d.q * t.d.c;
    /* distinct values 0.01 apart (a shuffled grid): no max ties within 2h */
    t.x = malloc(nx * 4);
    for (size_t i = 0; i < nx; i++) t.x[i] = 0.01f * (float)i - 0.005f * (float)nx;
    for (size_t i = nx - 1; i > 0; i--) {
        size_t j = (size_t)((s_rand() + 1.0f) * 0.5f * (float)(i + 1)) % (i + 1);
        float tmp = t.x[i];
        t.x[i] = t.x[j];
        t.x[j] = tmp;
    }
    t.y = malloc(ny * 4);
    t.am = malloc(ny * 4);
    t.g = s_randv(ny, 1.0f);
    float *dx = malloc(nx * 4);
    s_pool_loss(&t);
    if (t.max)
        OK(eq_backend_maxpool_bwd(t.be, &t.d, t.am, t.g, dx, &err));
    else
        OK(eq_backend_avgpool_bwd(t.be, &t.d, t.g, dx, &err));
    /* max: small steps stay inside one argmax; avg is linear */
    CHECK_FD(pc->name, s_pool_loss, &t, t.x, nx, dx, t.max ? 1e-3f : 0.25f, 1e-5);
    free(t.x), free(t.y), free(t.am), free(t.g), free(dx);
    eq_backend_destroy(&t.be);
}
END_TEST

typedef struct gap_fd {
    eq_backend *be;
    float *x, *y, *g;
} gap_fd;

static double s_gap_loss(void *vctx)
{
    gap_fd *t = vctx;
    eq_err err = {0};
    OK(eq_backend_gap_fwd(t->be, 3, 20, 6, t->x, t->y, &err));
    return s_dot(t->g, t->y, 18);
}

START_TEST(test_gap)
{
    eq_backend *be = s_cpu(1);
    eq_err err = {0};
    size_t nx = 3 * 4 * 5 * 6, ny = 3 * 6;
    float *x = s_f32("gap", "x", nx), *y = s_f32("gap", "y", ny), *dy = s_f32("gap", "dy", ny);
    float *dx = s_f32("gap", "dx", nx), *yo = malloc(ny * 4), *dxo = malloc(nx * 4);
    OK(eq_backend_gap_fwd(be, 3, 20, 6, x, yo, &err));
    OK(eq_backend_gap_bwd(be, 3, 20, 6, dy, dxo, &err));
    CHECK_CLOSE("gap y", yo, y, ny, PARITY_TOL);
    CHECK_CLOSE("gap dx", dxo, dx, nx, PARITY_TOL);
    gap_fd t = {.be = be, .x = x, .y = yo, .g = dy};
    CHECK_FD("gap", s_gap_loss, &t, x, nx, dxo, 0.25f, 1e-5);
    free(x), free(y), free(dy), free(dx), free(yo), free(dxo);
    eq_backend_destroy(&be);
}
END_TEST

/* ---- linear --------------------------------------------------------------- */

typedef struct lin_fd {
    eq_backend *be;
    float *x, *w, *b, *y, *g;
} lin_fd;

static double s_lin_loss(void *vctx)
{
    lin_fd *t = vctx;
    eq_err err = {0};
    OK(eq_backend_linear_fwd(t->be, 4, 7, 5, t->x, t->w, t->b, t->y, &err));
    return s_dot(t->g, t->y, 20);
}

START_TEST(test_linear)
{
    eq_backend *be = s_cpu(1);
    eq_err err = {0};
    const int64_t n = 4, in = 7, out = 5;
    float *x = s_f32("linear", "x", n * in), *w = s_f32("linear", "w", out * in);
    float *b = s_f32("linear", "b", out), *dy = s_f32("linear", "dy", n * out);
    float *y = s_f32("linear", "y", n * out), *dx = s_f32("linear", "dx", n * in);
    float *dw = s_f32("linear", "dw", out * in), *db = s_f32("linear", "db", out);
    float *yo = malloc(n * out * 4), *dxo = malloc(n * in * 4), *dwo = malloc(out * in * 4),
          *dbo = malloc(out * 4);
    OK(eq_backend_linear_fwd(be, n, in, out, x, w, b, yo, &err));
    OK(eq_backend_linear_bwd_data(be, n, in, out, dy, w, dxo, &err));
    OK(eq_backend_linear_bwd_weight(be, n, in, out, x, dy, dwo, dbo, &err));
    CHECK_CLOSE("linear y", yo, y, n * out, PARITY_TOL);
    CHECK_CLOSE("linear dx", dxo, dx, n * in, PARITY_TOL);
    CHECK_CLOSE("linear dw", dwo, dw, out * in, PARITY_TOL);
    CHECK_CLOSE("linear db", dbo, db, out, PARITY_TOL);
    lin_fd t = {.be = be, .x = x, .w = w, .b = b, .y = yo, .g = dy};
    CHECK_FD("linear dx", s_lin_loss, &t, x, n * in, dxo, 0.25f, 1e-5);
    CHECK_FD("linear dw", s_lin_loss, &t, w, out * in, dwo, 0.25f, 1e-5);
    CHECK_FD("linear db", s_lin_loss, &t, b, out, dbo, 0.25f, 1e-5);
    /* no bias */
    OK(eq_backend_linear_fwd(be, n, in, out, x, w, NULL, yo, &err));
    OK(eq_backend_linear_bwd_weight(be, n, in, out, x, dy, dwo, NULL, &err));
    for (int64_t i = 0; i < n * out; i++) ck_assert(fabsf(yo[i] + b[i % out] - y[i]) < 1e-4f);
    float *all[] = {x, w, b, dy, y, dx, dw, db, yo, dxo, dwo, dbo};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
    eq_backend_destroy(&be);
}
END_TEST

/* ---- cross-entropy ---------------------------------------------------------- */

typedef struct xent_case {
    const char *name;
    int64_t n, k;
    float eps;
    int mix;
} xent_case;
static const xent_case XENT[] = {
    {"xent_plain", 5, 7, 0.0f, 0},
    {"xent_smooth", 5, 7, 0.1f, 0},
    {"xent_mixup", 6, 4, 0.0f, 1},
    {"xent_mixup_smooth", 6, 4, 0.2f, 1},
};
#define NXENT (sizeof XENT / sizeof XENT[0])

typedef struct xent_fd {
    eq_backend *be;
    eq_xent_desc d;
    float *z, *lam;
    int32_t *ya, *yb;
} xent_fd;

static double s_xent_loss(void *vctx)
{
    xent_fd *t = vctx;
    eq_err err = {0};
    float loss;
    OK(eq_backend_xent_fwd(t->be, &t->d, t->z, t->ya, t->yb, t->lam, &loss, &err));
    return loss;
}

START_TEST(test_xent)
{
    const xent_case *t = &XENT[_i];
    eq_backend *be = s_cpu(1);
    eq_err err = {0};
    eq_xent_desc d;
    OK(eq_xent_desc_init(&d, t->n, t->k, t->eps, &err));
    size_t nz = t->n * t->k;
    float *z = s_f32(t->name, "z", nz), *loss = s_f32(t->name, "loss", 1), *dz = s_f32(t->name, "dz", nz);
    int32_t *ya = s_i32(t->name, "ya", t->n), *yb = t->mix ? s_i32(t->name, "yb", t->n) : NULL;
    float *lam = t->mix ? s_f32(t->name, "lambda", t->n) : NULL;
    float lo, *dzo = malloc(nz * 4);
    OK(eq_backend_xent_fwd(be, &d, z, ya, yb, lam, &lo, &err));
    OK(eq_backend_xent_bwd(be, &d, z, ya, yb, lam, 1.0f, dzo, &err));
    CHECK_CLOSE("xent loss", &lo, loss, 1, PARITY_TOL);
    CHECK_CLOSE("xent dz", dzo, dz, nz, PARITY_TOL);
    /* dloss scales the gradient */
    float *dz2 = malloc(nz * 4);
    OK(eq_backend_xent_bwd(be, &d, z, ya, yb, lam, 2.0f, dz2, &err));
    for (size_t i = 0; i < nz; i++) ck_assert(fabsf(dz2[i] - 2.0f * dzo[i]) <= 1e-6f);
    xent_fd f = {.be = be, .d = d, .z = z, .lam = lam, .ya = ya, .yb = yb};
    CHECK_FD(t->name, s_xent_loss, &f, z, nz, dzo, 1e-2f, 5e-4);
    free(z), free(loss), free(dz), free(ya), free(yb), free(lam), free(dzo), free(dz2);
    eq_backend_destroy(&be);
}
END_TEST

/* ---- optimisers --------------------------------------------------------------- */

typedef struct optim_case {
    const char *name;
    int adam;
    eq_sgd_params sgd;
    eq_adam_params ad;
} optim_case;
static const optim_case OPTIM[] = {
    {"sgd_plain", 0, {.lr = 0.1f}, {.lr = 0}},
    {"sgd_momentum_wd", 0, {.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.05f}, {.lr = 0}},
    {"sgd_nesterov", 0, {.lr = 0.05f, .momentum = 0.9f, .nesterov = 1, .weight_decay = 0.01f}, {.lr = 0}},
    {"sgd_dampening", 0, {.lr = 0.1f, .momentum = 0.8f, .dampening = 0.3f}, {.lr = 0}},
    {"adam", 1, {.lr = 0}, {.lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f}},
    {"adam_wd", 1, {.lr = 0}, {.lr = 0.003f, .beta1 = 0.8f, .beta2 = 0.99f, .eps = 1e-6f, .weight_decay = 0.02f}},
};
#define NOPTIM (sizeof OPTIM / sizeof OPTIM[0])

START_TEST(test_optim)
{
    const optim_case *t = &OPTIM[_i];
    eq_backend *be = s_cpu(1);
    eq_err err = {0};
    const size_t n = 37;
    float *p = s_f32(t->name, "p0", n), *s1 = calloc(n, 4), *s2 = calloc(n, 4);
    for (int step = 0; step < 3; step++) {
        char gname[8], pname[8];
        snprintf(gname, sizeof gname, "g%d", step);
        snprintf(pname, sizeof pname, "p%d", step + 1);
        float *g = s_f32(t->name, gname, n), *ref = s_f32(t->name, pname, n);
        if (t->adam) {
            eq_adam_params hp = t->ad;
            hp.step = step + 1;
            OK(eq_backend_adam_step(be, n, &hp, p, g, s1, s2, &err));
        } else {
            eq_sgd_params hp = t->sgd;
            hp.first = step == 0;
            OK(eq_backend_sgd_step(be, n, &hp, p, g, hp.momentum > 0 ? s1 : NULL, &err));
        }
        char what[64];
        snprintf(what, sizeof what, "%s step %d", t->name, step + 1);
        CHECK_CLOSE(what, p, ref, n, PARITY_TOL);
        free(g), free(ref);
    }
    free(p), free(s1), free(s2);
    eq_backend_destroy(&be);
}
END_TEST

START_TEST(test_optim_validation)
{
    eq_backend *be = s_cpu(1);
    eq_err err = {0};
    float p[2] = {0}, g[2] = {0};
    eq_sgd_params sp = {.lr = 0.1f, .nesterov = 1};
    ck_assert_int_eq(eq_backend_sgd_step(be, 2, &sp, p, g, NULL, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "nesterov needs momentum > 0"), "%s", err.msg);
    sp = (eq_sgd_params){.lr = 0.1f, .momentum = 0.9f};
    ck_assert_int_eq(eq_backend_sgd_step(be, 2, &sp, p, g, NULL, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "buf is NULL"), "%s", err.msg);
    sp.lr = -1.0f;
    ck_assert_int_eq(eq_backend_sgd_step(be, 2, &sp, p, g, p, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "lr = -1"), "%s", err.msg);
    eq_adam_params ap = {.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .step = 0};
    ck_assert_int_eq(eq_backend_adam_step(be, 2, &ap, p, g, p, p, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "step = 0"), "%s", err.msg);
    ap.step = 1;
    ap.beta2 = 1.0f;
    ck_assert_int_eq(eq_backend_adam_step(be, 2, &ap, p, g, p, p, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "betas"), "%s", err.msg);
    eq_backend_destroy(&be);
}
END_TEST

/* ---- determinism, threads ---------------------------------------------------- */

START_TEST(test_deterministic)
{
    /* a layer big enough to tile and to thread inside OpenBLAS */
    eq_conv2d_desc d = {.n = 4, .h = 14, .w = 14, .c = 32, .k = 48, .r = 3, .s = 3,
                        .stride_h = 1, .stride_w = 1, .pad_h = 1, .pad_w = 1,
                        .dil_h = 1, .dil_w = 1, .groups = 1};
    eq_err err = {0};
    OK(eq_conv2d_desc_init(&d, &err));
    size_t nx = d.n * d.h * d.w * d.c, ny = d.n * d.p * d.q * d.k, nw = d.k * d.c * 9;
    float *x = s_randv(nx, 1.0f), *w = s_randv(nw, 0.1f), *dy = s_randv(ny, 1.0f);
    float *out[2][3][2];
    for (int th = 0; th < 2; th++) {
        eq_backend *be = s_cpu(th + 1);
        for (int rep = 0; rep < 2; rep++) {
            float *y = malloc(ny * 4), *dx = malloc(nx * 4), *dw = malloc(nw * 4);
            OK(eq_backend_conv2d_fwd(be, &d, x, w, y, &err));
            OK(eq_backend_conv2d_bwd_data(be, &d, dy, w, dx, &err));
            OK(eq_backend_conv2d_bwd_filter(be, &d, x, dy, dw, &err));
            out[th][0][rep] = y, out[th][1][rep] = dx, out[th][2][rep] = dw;
        }
        eq_backend_destroy(&be);
    }
    size_t sz[3] = {ny, nx, nw};
    for (int th = 0; th < 2; th++)
        for (int k = 0; k < 3; k++) {
            ck_assert_mem_eq(out[th][k][0], out[th][k][1], sz[k] * 4);
            CHECK_CLOSE("threads", out[1][k][0], out[0][k][0], sz[k], 1e-6);
        }
    for (int th = 0; th < 2; th++)
        for (int k = 0; k < 3; k++) free(out[th][k][0]), free(out[th][k][1]);
    free(x), free(w), free(dy);
}
END_TEST

/* Ops without GEMMs split work so that no sum depends on the thread count:
 * 1 and 3 threads must agree bit for bit. */
typedef struct thr_out {
    float *y[24];
    size_t n[24];
    int count;
} thr_out;

static void s_keep(thr_out *o, const float *v, size_t n)
{
    o->y[o->count] = malloc(n * 4);
    memcpy(o->y[o->count], v, n * 4);
    o->n[o->count++] = n;
}

static void s_run_all(int nthreads, const float *x, const float *g, thr_out *o)
{
    eq_backend *be = s_cpu(nthreads);
    eq_err err = {0};
    const int64_t n = 4, h = 20, w = 20, c = 40, m = n * h * w;
    const size_t nx = m * c;
    float *y = malloc(nx * 4), *dx = malloc(nx * 4), st[6 * 40];
    float *gamma = st, *beta = st + c, *rm = st + 2 * c, *rv = st + 3 * c, *sm = st + 4 * c,
          *si = st + 5 * c;
    for (int64_t j = 0; j < c; j++) gamma[j] = 1.0f + 0.01f * j, beta[j] = 0.1f * j, rm[j] = 0, rv[j] = 1;
    eq_bn_desc bd;
    OK(eq_bn_desc_init(&bd, m, c, 1e-5f, 0.1f, &err));
    OK(eq_backend_bn_fwd_train(be, &bd, x, gamma, beta, rm, rv, y, sm, si, &err));
    s_keep(o, y, nx);
    s_keep(o, rv, c);
    float dg[40], db[40];
    OK(eq_backend_bn_bwd(be, &bd, x, g, gamma, sm, si, dx, dg, db, &err));
    s_keep(o, dx, nx);
    s_keep(o, dg, c);
    OK(eq_backend_relu_fwd(be, nx, x, y, &err));
    OK(eq_backend_relu_bwd(be, nx, y, g, dx, &err));
    s_keep(o, dx, nx);
    /* fused: y = relu(bn(x) + g), backward with dy = g, dy2 = x */
    float *dz = malloc(nx * 4);
    OK(eq_backend_bn_relu_fwd_train(be, &bd, x, g, gamma, beta, rm, rv, y, sm, si, &err));
    s_keep(o, y, nx);
    OK(eq_backend_bn_relu_bwd(be, &bd, x, y, g, x, gamma, sm, si, dx, dz, dg, db, &err));
    s_keep(o, dx, nx);
    s_keep(o, dz, nx);
    free(dz);
    float slope[1] = {0.25f}, ds[1];
    OK(eq_backend_prelu_bwd(be, m, c, 1, x, slope, g, dx, ds, &err));
    s_keep(o, ds, 1);
    eq_pool2d_desc pd = {.n = n, .h = h, .w = w, .c = c, .kh = 3, .kw = 3, .stride_h = 2,
                         .stride_w = 2, .pad_h = 1, .pad_w = 1, .count_include_pad = 1};
    OK(eq_pool2d_desc_init(&pd, &err));
    int32_t *am = malloc(nx * 4);
    OK(eq_backend_maxpool_fwd(be, &pd, x, y, am, &err));
    OK(eq_backend_maxpool_bwd(be, &pd, am, g, dx, &err));
    s_keep(o, dx, nx);
    OK(eq_backend_avgpool_fwd(be, &pd, x, y, &err));
    s_keep(o, y, n * pd.p * pd.q * c);
    OK(eq_backend_avgpool_bwd(be, &pd, g, dx, &err));
    s_keep(o, dx, nx);
    OK(eq_backend_gap_fwd(be, n, h * w, c, x, y, &err));
    s_keep(o, y, n * c);
    /* depthwise conv (direct loops; the filter gradient sums fixed slices) */
    eq_conv2d_desc cd = {.n = n, .h = h, .w = w, .c = c, .k = c, .r = 3, .s = 3, .stride_h = 1,
                         .stride_w = 1, .pad_h = 1, .pad_w = 1, .dil_h = 1, .dil_w = 1, .groups = c};
    OK(eq_conv2d_desc_init(&cd, &err));
    float wdw[40 * 9], dwdw[40 * 9];
    for (int j = 0; j < 40 * 9; j++) wdw[j] = 0.1f * (float)((j * 7) % 11) - 0.5f;
    OK(eq_backend_conv2d_fwd(be, &cd, x, wdw, y, &err));
    s_keep(o, y, nx);
    OK(eq_backend_conv2d_bwd_data(be, &cd, g, wdw, dx, &err));
    s_keep(o, dx, nx);
    OK(eq_backend_conv2d_bwd_filter(be, &cd, x, g, dwdw, &err));
    s_keep(o, dwdw, 40 * 9);
    free(y), free(dx), free(am);
    eq_backend_destroy(&be);
}

START_TEST(test_threads_bitwise)
{
    const size_t nx = 4 * 20 * 20 * 40;
    float *x = s_randv(nx, 2.0f), *g = s_randv(nx, 1.0f);
    thr_out a = {0}, b = {0};
    s_run_all(1, x, g, &a);
    s_run_all(3, x, g, &b);
    ck_assert_int_eq(a.count, b.count);
    for (int i = 0; i < a.count; i++) {
        ck_assert_msg(memcmp(a.y[i], b.y[i], a.n[i] * 4) == 0, "output %d differs with 3 threads", i);
        free(a.y[i]), free(b.y[i]);
    }
    free(x), free(g);
}
END_TEST

/* ---- validation and the non-op members ----------------------------------- */

START_TEST(test_validation)
{
    eq_backend *be = s_cpu(1);
    eq_err err = {0};
    float buf[64] = {0};
    eq_conv2d_desc d = {.n = 1, .h = 4, .w = 4, .c = 6, .k = 4, .r = 3, .s = 3, .stride_h = 1,
                        .stride_w = 1, .pad_h = 0, .pad_w = 0, .dil_h = 1, .dil_w = 1, .groups = 4};
    ck_assert_int_eq(eq_conv2d_desc_init(&d, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "groups = 4 does not divide c = 6"), "%s", err.msg);
    d.groups = 2;
    d.r = 6;
    ck_assert_int_eq(eq_conv2d_desc_init(&d, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "kernel height 6"), "%s", err.msg);
    d.r = 3;
    d.stride_w = 0;
    ck_assert_int_eq(eq_conv2d_desc_init(&d, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "stride_w"), "%s", err.msg);
    d.stride_w = 1;
    OK(eq_conv2d_desc_init(&d, &err));
    ck_assert_int_eq(d.p, 2);
    ck_assert_int_eq(d.q, 2);
    /* an edited descriptor is caught */
    d.h = 5;
    ck_assert_int_eq(eq_backend_conv2d_fwd(be, &d, buf, buf, buf, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "conv2d_fwd") && strstr(err.msg, "eq_conv2d_desc_init"), "%s",
                  err.msg);
    d.h = 4;
    ck_assert_int_eq(eq_backend_conv2d_fwd(be, &d, buf, NULL, buf, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "conv2d_fwd: w is NULL"), "%s", err.msg);

    eq_bn_desc bd;
    ck_assert_int_eq(eq_bn_desc_init(&bd, 4, 2, 0.0f, 0.1f, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "eps"), "%s", err.msg);
    ck_assert_int_eq(eq_bn_desc_init(&bd, 4, 2, 1e-5f, 1.5f, &err), EQ_ERR_INVALID);
    OK(eq_bn_desc_init(&bd, 1, 2, 1e-5f, 0.1f, &err));
    ck_assert_int_eq(eq_backend_bn_fwd_train(be, &bd, buf, NULL, NULL, buf, buf, buf, buf, buf, &err),
                     EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "more than one value"), "%s", err.msg);

    eq_pool2d_desc pd = {.n = 1, .h = 4, .w = 4, .c = 1, .kh = 2, .kw = 2, .stride_h = 2,
                         .stride_w = 2, .pad_h = 2, .pad_w = 0};
    ck_assert_int_eq(eq_pool2d_desc_init(&pd, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "half the kernel"), "%s", err.msg);

    ck_assert_int_eq(eq_backend_prelu_fwd(be, 2, 3, 2, buf, buf, buf, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "nslope = 2"), "%s", err.msg);

    eq_xent_desc xd;
    ck_assert_int_eq(eq_xent_desc_init(&xd, 2, 3, 1.5f, &err), EQ_ERR_INVALID);
    OK(eq_xent_desc_init(&xd, 3, 4, 0.0f, &err));
    int32_t lab[3] = {0, 3, 4};
    float loss;
    ck_assert_int_eq(eq_backend_xent_fwd(be, &xd, buf, lab, NULL, NULL, &loss, &err),
                     EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "labels_a[2] = 4 outside [0, 4)"), "%s", err.msg);
    lab[2] = 1;
    ck_assert_int_eq(eq_backend_xent_fwd(be, &xd, buf, lab, lab, NULL, &loss, &err),
                     EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "mixup"), "%s", err.msg);
    int32_t labb[3] = {0, -1, 0};
    ck_assert_int_eq(eq_backend_xent_bwd(be, &xd, buf, lab, labb, buf, 1.0f, buf, &err),
                     EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "labels_b[1] = -1"), "%s", err.msg);

    int32_t bad[1] = {99};
    pd.pad_h = 0;
    OK(eq_pool2d_desc_init(&pd, &err));
    pd.h = pd.w = 2;
    pd.p = pd.q = 1;
    ck_assert_int_eq(eq_backend_maxpool_bwd(be, &pd, bad, buf, buf, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "argmax[0] = 99"), "%s", err.msg);
    ck_assert_int_eq(eq_backend_linear_fwd(be, 0, 1, 1, buf, buf, NULL, buf, &err), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_backend_relu_fwd(NULL, 1, buf, buf, &err), EQ_ERR_INVALID);
    eq_backend_destroy(&be);
    eq_backend_destroy(&be); /* NULL-safe */
}
END_TEST

START_TEST(test_missing_member)
{
    /* A backend that implements memory only: ops answer "unsupported". */
    eq_backend *cpu = s_cpu(1);
    struct eq_backend_i partial = {.name = "partial", .alloc = cpu->iface->alloc,
                                   .release = cpu->iface->release};
    eq_backend be = {.iface = &partial, .context = cpu->context};
    eq_err err = {0};
    eq_conv2d_desc d = {.n = 1, .h = 3, .w = 3, .c = 1, .k = 1, .r = 1, .s = 1, .stride_h = 1,
                        .stride_w = 1, .dil_h = 1, .dil_w = 1, .groups = 1};
    OK(eq_conv2d_desc_init(&d, &err));
    float buf[16];
    ck_assert_int_eq(eq_backend_conv2d_fwd(&be, &d, buf, buf, buf, &err), EQ_ERR_UNSUPPORTED);
    ck_assert_str_eq(err.msg, "conv2d_fwd: not implemented by the partial backend");
    ck_assert_int_eq(eq_backend_synchronize(&be, &err), EQ_ERR_UNSUPPORTED);
    ck_assert_ptr_null(eq_backend_event_new(&be, &err));
    ck_assert_int_eq(eq_backend_clamp_fwd(&be, 4, 0.0f, 6.0f, buf, buf, &err), EQ_ERR_UNSUPPORTED);
    ck_assert_str_eq(err.msg, "clamp_fwd: not implemented by the partial backend");
    /* optional member: workspace_reserve defaults to growing on use */
    OK(eq_backend_workspace_reserve(&be, 100, &err));
    ck_assert_uint_eq(eq_backend_workspace_size(&be), 0);
    eq_backend_destroy(&cpu);
}
END_TEST

START_TEST(test_memory_events)
{
    eq_backend *be = s_cpu(2);
    eq_err err = {0};
    ck_assert_str_eq(eq_backend_name(be), "cpu");
    ck_assert_ptr_null(eq_backend_alloc(be, 0, &err));
    float h[8] = {1, 2, 3, 4, 5, 6, 7, 8}, back[8];
    float *d = eq_backend_alloc(be, sizeof h, &err), *d2 = eq_backend_alloc(be, sizeof h, &err);
    ck_assert_ptr_nonnull(d);
    ck_assert_uint_eq((uintptr_t)d % 64, 0);
    OK(eq_backend_upload(be, d, h, sizeof h, &err));
    OK(eq_backend_copy(be, d2, d, sizeof h, &err));
    OK(eq_backend_zero(be, d, sizeof h, &err));
    OK(eq_backend_download(be, back, d2, sizeof h, &err));
    ck_assert_mem_eq(back, h, sizeof h);
    OK(eq_backend_download(be, back, d, sizeof h, &err));
    for (int i = 0; i < 8; i++) ck_assert_float_eq(back[i], 0.0f);
    ck_assert_int_eq(eq_backend_upload(be, NULL, h, 4, &err), EQ_ERR_INVALID);
    eq_backend_release(be, d);
    eq_backend_release(be, d2);

    OK(eq_backend_workspace_reserve(be, 1 << 20, &err));
    ck_assert_uint_ge(eq_backend_workspace_size(be), 1 << 20);

    eq_backend_event *ev = eq_backend_event_new(be, &err);
    ck_assert_ptr_nonnull(ev);
    OK(eq_backend_event_record(be, ev, &err));
    OK(eq_backend_event_wait(be, ev, &err));
    OK(eq_backend_event_synchronize(be, ev, &err));
    OK(eq_backend_synchronize(be, &err));
    ck_assert_int_eq(eq_backend_event_record(be, NULL, &err), EQ_ERR_INVALID);
    eq_backend_event_destroy(be, &ev);
    ck_assert_ptr_null(ev);
    eq_backend_event_destroy(be, &ev);
    eq_backend_destroy(&be);
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("backend");
    TCase *tc = tcase_create("parity");
    tcase_set_timeout(tc, 20); /* thread-count checks start pools; the machine is shared */
    tcase_add_loop_test(tc, test_conv_parity, 0, NCONV);
    tcase_add_loop_test(tc, test_bn_parity, 0, 2);
    tcase_add_loop_test(tc, test_bn_relu_fused, 0, NFUSE);
    tcase_add_test(tc, test_relu_parity);
    tcase_add_test(tc, test_relu_nan);
    tcase_add_test(tc, test_clamp);
    tcase_add_test(tc, test_scalar_affine);
    tcase_add_loop_test(tc, test_prelu_parity, 0, 2);
    tcase_add_test(tc, test_add);
    tcase_add_loop_test(tc, test_pool_parity, 0, NPOOL);
    tcase_add_test(tc, test_gap);
    tcase_add_test(tc, test_linear);
    tcase_add_loop_test(tc, test_xent, 0, NXENT);
    tcase_add_loop_test(tc, test_optim, 0, NOPTIM);
    suite_add_tcase(s, tc);
    TCase *fd = tcase_create("finite_differences");
    tcase_add_loop_test(fd, test_conv_fd, 0, NCONV);
    tcase_add_test(fd, test_bn_fd);
    tcase_add_test(fd, test_bn_relu_fd);
    tcase_add_test(fd, test_act_fd);
    tcase_add_loop_test(fd, test_pool_fd, 0, NPOOL);
    suite_add_tcase(s, fd);
    TCase *misc = tcase_create("misc");
    tcase_set_timeout(misc, 20); /* test_conv_tiles: ~1 s of CPU, the machine is shared */
    tcase_add_test(misc, test_deterministic);
    tcase_add_test(misc, test_conv_tiles);
    tcase_add_test(misc, test_threads_bitwise);
    tcase_add_test(misc, test_validation);
    tcase_add_test(misc, test_optim_validation);
    tcase_add_test(misc, test_missing_member);
    tcase_add_test(misc, test_memory_events);
    suite_add_tcase(s, misc);
    return s;
}

int main(void)
{
    return eq_test_run(s_suite());
}
