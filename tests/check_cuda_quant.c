/*
 * tests/check_cuda_quant.c -- eq_cuda_quant against quant/'s CPU
 * quantizers.
 *
 * Each case builds two identical eq_quant objects; one runs on the host
 * (eq_quant_forward/backward), the other through eq_cuda_quant on device
 * copies of the same random inputs (fresh seed each run, printed; never
 * zeros), for three training steps.  Outputs y and gx may differ on at most
 * 0.1 % of the elements (a level flipped by a division landing on a
 * rounding boundary), parameter gradients within 1e-5 relative, and the
 * counters and parameters stay equal.  Cases cover the device kernels (lsq
 * half/full range, per-tensor and per-channel, lsq-step unsigned/signed,
 * pact, dorefa activations) and the host path (dorefa weights, warm-up,
 * bin); each checks which path it took.
 *
 * The backend's quantizer members (eq_backend_quant_*, 2026-11-28): the
 * same comparisons through the CUDA backend's members (a device-kernel and
 * a host-path quantizer, state released and remade, state left for the
 * backend to free), and a small quantized network (trainer/layers.h: two
 * quantized convs, one with an output quantizer, BN, ReLU, GAP, a quantized
 * linear) trained two steps on the CUDA backend against the CPU backend:
 * every quantizer output equal except at most 0.1 % of its elements, fp32
 * outputs and gradients within 1e-5 norm-wise (when no level flipped
 * upstream; a flipped level moves what follows it by a whole step, which
 * is then printed instead), quantizer state equal.
 *
 * Without a usable GPU the program prints why and exits 77 (SKIP).
 */
#include "config.h"

#include "core/rng.h"
#include "quant/quant.h"
#include "trainer/backend.h"
#include "trainer/layers.h"
#include "trainer/cuda/cuda.h"
#include "trainer/cuda/quant_cuda.h"
#include "tests/testutil.h"

#include <time.h>

static uint64_t g_seed;
static eq_quant *s_left; /* test_members: a quantizer that outlives its backend */

typedef struct s_case {
    const char *name;
    eq_quant_tag tag;
    eq_layout layout;
    int64_t shape[4];
    const char *kv[6]; /* KEY=VALUE, NULL-terminated */
    int device[3];     /* expected path per step: 1 device kernels, 0 host */
} s_case;

static const s_case s_cases[] = {
    {"lsq fm per-tensor", EQ_QTAG_FM, EQ_LAYOUT_NHWC, {4, 6, 6, 16}, {"method=lsq", "bit=2", NULL}, {1, 1, 1}},
    {"lsq fm per-channel", EQ_QTAG_FM, EQ_LAYOUT_NHWC, {4, 5, 5, 16},
     {"method=lsq", "bit=3", "quant_group=16", NULL}, {1, 1, 1}},
    {"lsq wt per-channel", EQ_QTAG_WT, EQ_LAYOUT_OIHW, {16, 8, 3, 3}, {"method=lsq", "bit=2", NULL}, {1, 1, 1}},
    {"lsq wt per-tensor", EQ_QTAG_WT, EQ_LAYOUT_OIHW, {16, 8, 3, 3},
     {"method=lsq", "bit=4", "quant_group=1", NULL}, {1, 1, 1}},
    {"lsq nc", EQ_QTAG_FM, EQ_LAYOUT_NC, {8, 100}, {"method=lsq", "bit=2", NULL}, {1, 1, 1}},
    {"lsq-step fm", EQ_QTAG_FM, EQ_LAYOUT_NHWC, {4, 6, 6, 8}, {"method=lsq-step", "bit=2", NULL}, {0, 1, 1}},
    {"lsq-step wt signed", EQ_QTAG_WT, EQ_LAYOUT_OIHW, {8, 4, 3, 3},
     {"method=lsq-step", "bit=3", NULL}, {0, 1, 1}},
    {"pact fm", EQ_QTAG_FM, EQ_LAYOUT_NHWC, {4, 6, 6, 8}, {"method=pact", "bit=4", "boundary=1.5", NULL}, {1, 1, 1}},
    {"dorefa fm", EQ_QTAG_FM, EQ_LAYOUT_NHWC, {4, 6, 6, 8}, {"method=dorefa", "bit=2", NULL}, {1, 1, 1}},
    {"dorefa wt (host)", EQ_QTAG_WT, EQ_LAYOUT_OIHW, {8, 4, 3, 3}, {"method=dorefa", "bit=2", NULL}, {0, 0, 0}},
    {"lsq warm-up", EQ_QTAG_FM, EQ_LAYOUT_NHWC, {2, 4, 4, 8}, {"method=lsq", "bit=2", "stable=1", NULL}, {0, 1, 1}},
};
#define NCASE ((int)(sizeof s_cases / sizeof s_cases[0]))

static float *s_rand(size_t n, float lo, float hi, uint64_t stream)
{
    eq_rng r;
    eq_rng_init(&r, g_seed, stream);
    float *p = malloc(n * sizeof *p + 4);
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++) {
        float v;
        do v = lo + (hi - lo) * eq_rng_uniform(&r);
        while (v == 0.0f);
        p[i] = v;
    }
    return p;
}

static eq_quant *s_make(const s_case *c, const eq_tensor_desc *xd)
{
    eq_quant_opts o;
    eq_quant_opts_init(&o, c->tag);
    eq_err err = {0};
    for (int i = 0; c->kv[i]; i++) {
        char key[32];
        const char *eqs = strchr(c->kv[i], '=');
        snprintf(key, sizeof key, "%.*s", (int)(eqs - c->kv[i]), c->kv[i]);
        ck_assert_msg(eq_quant_opts_set(&o, key, eqs + 1, &err) == EQ_OK, "%s: %s", c->name, err.msg);
    }
    eq_quant *q = eq_quant_new(&o, xd, &err);
    ck_assert_msg(q != NULL, "%s: %s", c->name, err.msg);
    return q;
}

static size_t s_diff(const float *a, const float *b, size_t n)
{
    size_t d = 0;
    for (size_t i = 0; i < n; i++) d += a[i] != b[i];
    return d;
}

START_TEST(test_quant)
{
    const s_case *c = &s_cases[_i];
    eq_err err = {0};
    eq_cuda_opts co = {.device = 0};
    eq_backend *be = eq_backend_cuda_new(&co, &err);
    ck_assert_msg(be != NULL, "%s", err.msg);
    int ndim = c->layout == EQ_LAYOUT_NC ? 2 : 4;
    eq_tensor_desc xd;
    ck_assert(eq_tensor_desc_init(&xd, EQ_DT_F32, c->layout, ndim, c->shape, &err) == EQ_OK);
    size_t n = (size_t)eq_tensor_numel(&xd);
    eq_quant *qh = s_make(c, &xd), *qd = s_make(c, &xd);
    eq_cuda_quant *cq = eq_cuda_quant_new(be, qd, &err);
    ck_assert_msg(cq != NULL, "%s", err.msg);
    float *y = malloc(n * 4), *gx = malloc(n * 4), *yd = malloc(n * 4), *gxd = malloc(n * 4);
    float *dx = eq_backend_alloc(be, n * 4, &err), *dy = eq_backend_alloc(be, n * 4, &err);
    float *dg = eq_backend_alloc(be, n * 4, &err), *dgx = eq_backend_alloc(be, n * 4, &err);
    ck_assert(dx && dy && dg && dgx);
    for (int step = 0; step < 3; step++) {
        float lo = c->tag == EQ_QTAG_WT ? -1.0f : -0.5f, hi = c->tag == EQ_QTAG_WT ? 1.0f : 2.5f;
        float *x = s_rand(n, lo, hi, 10 * (uint64_t)step + 1), *gy = s_rand(n, -1, 1, 10 * (uint64_t)step + 2);
        ck_assert(eq_quant_forward(qh, &xd, x, y, 1, &err) == EQ_OK);
        ck_assert(eq_quant_backward(qh, x, gy, gx, &err) == EQ_OK);
        ck_assert(eq_backend_upload(be, dx, x, n * 4, &err) == EQ_OK);
        ck_assert(eq_backend_upload(be, dg, gy, n * 4, &err) == EQ_OK);
        ck_assert_msg(eq_cuda_quant_forward(cq, &xd, dx, dy, 1, &err) == EQ_OK, "%s: %s", c->name, err.msg);
        ck_assert_int_eq(eq_cuda_quant_on_device(cq), c->device[step]);
        ck_assert_msg(eq_cuda_quant_backward(cq, dx, dg, dgx, &err) == EQ_OK, "%s: %s", c->name, err.msg);
        ck_assert(eq_backend_download(be, yd, dy, n * 4, &err) == EQ_OK);
        ck_assert(eq_backend_download(be, gxd, dgx, n * 4, &err) == EQ_OK);
        size_t fy = s_diff(y, yd, n), fg = s_diff(gx, gxd, n);
        ck_assert_msg(fy * 1000 <= n && fg * 1000 <= n,
                      "%s step %d: %zu of %zu outputs and %zu gradients differ (seed %llu)", c->name,
                      step, fy, n, fg, (unsigned long long)g_seed);
        /* state and parameter gradients */
        ck_assert_uint_eq(eq_quant_tensor_count(qh), eq_quant_tensor_count(qd));
        for (size_t t = 0; t < eq_quant_tensor_count(qh); t++) {
            eq_quant_tensor *a = eq_quant_tensor_at(qh, t), *b = eq_quant_tensor_at(qd, t);
            ck_assert_msg(memcmp(a->data, b->data, (size_t)a->numel * 4) == 0,
                          "%s step %d: state %s differs", c->name, step, a->name);
            if (a->grad) {
                double e = eq_test_relerr(b->grad, a->grad, (size_t)a->numel);
                ck_assert_msg(e <= 1e-5, "%s step %d: grad of %s: relative error %.3g (seed %llu)",
                              c->name, step, a->name, e, (unsigned long long)g_seed);
                /* an SGD step on both, so the next step sees moved parameters */
                for (int64_t j = 0; j < a->numel; j++) {
                    a->data[j] -= 0.01f * a->grad[j];
                    b->data[j] -= 0.01f * a->grad[j];
                }
            }
        }
        free(x);
        free(gy);
    }
    eq_backend_release(be, dx);
    eq_backend_release(be, dy);
    eq_backend_release(be, dg);
    eq_backend_release(be, dgx);
    free(y);
    free(gx);
    free(yd);
    free(gxd);
    eq_cuda_quant_destroy(&cq);
    ck_assert_ptr_null(cq);
    eq_quant_destroy(&qh);
    eq_quant_destroy(&qd);
    eq_backend_destroy(&be);
}
END_TEST

START_TEST(test_args)
{
    eq_err err = {0};
    eq_backend *cpu = eq_backend_cpu_new(1, &err);
    eq_quant_opts o;
    eq_quant_opts_init(&o, EQ_QTAG_FM);
    /* a real quantizer: eq_quant_new refuses the defaults (32 bits: "more
     * than 2^24 levels"), which this test used until the CPU emulation ran
     * it (it had never run: no GPU) */
    ck_assert(eq_quant_opts_set(&o, "method", "lsq", &err) == EQ_OK);
    ck_assert(eq_quant_opts_set(&o, "bit", "2", &err) == EQ_OK);
    eq_tensor_desc xd;
    int64_t shape[2] = {2, 3};
    ck_assert(eq_tensor_desc_init(&xd, EQ_DT_F32, EQ_LAYOUT_NC, 2, shape, &err) == EQ_OK);
    eq_quant *q = eq_quant_new(&o, &xd, &err);
    ck_assert_msg(q != NULL, "%s", err.msg);
    ck_assert_ptr_null(eq_cuda_quant_new(cpu, q, &err)); /* not a cuda backend */
    ck_assert_int_eq(err.code, EQ_ERR_INVALID);
    eq_cuda_opts co = {.device = 0};
    eq_backend *be = eq_backend_cuda_new(&co, &err);
    eq_cuda_quant *cq = eq_cuda_quant_new(be, q, &err);
    ck_assert_ptr_nonnull(cq);
    float *d = eq_backend_alloc(be, 64, &err);
    ck_assert_int_eq(eq_cuda_quant_backward(cq, d, d, d, &err), EQ_ERR_INVALID); /* no forward */
    eq_backend_release(be, d);
    eq_cuda_quant_destroy(&cq);
    eq_quant_destroy(&q);
    eq_backend_destroy(&be);
    eq_backend_destroy(&cpu);
}
END_TEST

/* The members on the CUDA backend against quant/ on host copies. */
START_TEST(test_members)
{
    eq_err err = {0};
    eq_cuda_opts co = {.device = 0};
    eq_backend *be = eq_backend_cuda_new(&co, &err);
    ck_assert_msg(be != NULL, "%s", err.msg);
    ck_assert_int_eq(eq_backend_host_memory(be), 0);
    ck_assert_int_eq(eq_backend_runs_quant(be), 1);
    /* lsq fm (device kernels) and bin wt (host path) */
    const s_case *cs[2] = {&s_cases[0], NULL};
    static const s_case bin = {"bin wt", EQ_QTAG_WT, EQ_LAYOUT_OIHW, {8, 4, 3, 3}, {"method=bin", "bit=1", NULL}, {0, 0, 0}};
    cs[1] = &bin;
    for (int k = 0; k < 2; k++) {
        const s_case *c = cs[k];
        eq_tensor_desc xd;
        ck_assert(eq_tensor_desc_init(&xd, EQ_DT_F32, c->layout, 4, c->shape, &err) == EQ_OK);
        size_t n = (size_t)eq_tensor_numel(&xd);
        eq_quant *qh = s_make(c, &xd), *qd = s_make(c, &xd);
        float *y = malloc(n * 4), *gx = malloc(n * 4), *yd = malloc(n * 4), *gxd = malloc(n * 4);
        float *dx = eq_backend_alloc(be, n * 4, &err), *dy = eq_backend_alloc(be, n * 4, &err);
        float *dg = eq_backend_alloc(be, n * 4, &err);
        ck_assert(y && gx && yd && gxd && dx && dy && dg);
        for (int step = 0; step < 3; step++) {
            float *x = s_rand(n, -1.0f, 2.0f, 100 + (uint64_t)step), *gy = s_rand(n, -1, 1, 200 + (uint64_t)step);
            ck_assert(eq_quant_forward(qh, &xd, x, y, 1, &err) == EQ_OK);
            ck_assert(eq_quant_backward(qh, x, gy, gx, &err) == EQ_OK);
            ck_assert(eq_backend_upload(be, dx, x, n * 4, &err) == EQ_OK);
            ck_assert(eq_backend_upload(be, dg, gy, n * 4, &err) == EQ_OK);
            ck_assert_msg(eq_backend_quant_forward(be, qd, &xd, dx, dy, 1, &err) == EQ_OK, "%s: %s", c->name, err.msg);
            ck_assert_msg(eq_backend_quant_backward(be, qd, dx, dg, dg, &err) == EQ_OK, "%s: %s", c->name, err.msg);
            /* the parameter gradients are the host's once quant_grads_wait
             * returns (interface 7; the test above fails without it) */
            ck_assert(eq_backend_quant_grads_deferred(be));
            ck_assert_msg(eq_backend_quant_grads_wait(be, &err) == EQ_OK, "%s: %s", c->name, err.msg);
            ck_assert(eq_backend_download(be, yd, dy, n * 4, &err) == EQ_OK);
            ck_assert(eq_backend_download(be, gxd, dg, n * 4, &err) == EQ_OK);
            size_t fy = s_diff(y, yd, n), fg = s_diff(gx, gxd, n);
            ck_assert_msg(fy * 1000 <= n && fg * 1000 <= n, "%s step %d: %zu / %zu of %zu differ (seed %llu)",
                          c->name, step, fy, fg, n, (unsigned long long)g_seed);
            for (size_t t = 0; t < eq_quant_tensor_count(qh); t++) {
                eq_quant_tensor *a = eq_quant_tensor_at(qh, t), *b = eq_quant_tensor_at(qd, t);
                ck_assert_msg(memcmp(a->data, b->data, (size_t)a->numel * 4) == 0, "%s: state %s", c->name, a->name);
                if (a->grad)
                    ck_assert_msg(eq_test_relerr(b->grad, a->grad, (size_t)a->numel) <= 1e-5, "%s: grad %s",
                                  c->name, a->name);
            }
            /* step 1: the state is dropped and remade (same results) */
            if (step == 1) eq_backend_quant_release(be, qd);
            free(x);
            free(gy);
        }
        /* backward with no forward since the release */
        eq_backend_quant_release(be, qd);
        ck_assert_int_eq(eq_backend_quant_backward(be, qd, dx, dg, dg, &err), EQ_ERR_INVALID);
        /* the lsq one is forwarded again and left for the backend to free */
        if (k == 0) ck_assert(eq_backend_quant_forward(be, qd, &xd, dx, dy, 0, &err) == EQ_OK);
        ck_assert(eq_backend_synchronize(be, &err) == EQ_OK);
        eq_backend_release(be, dx);
        eq_backend_release(be, dy);
        eq_backend_release(be, dg);
        free(y);
        free(gx);
        free(yd);
        free(gxd);
        eq_quant_destroy(&qh);
        if (k == 1) eq_quant_destroy(&qd);
        else s_left = qd; /* destroyed after the backend */
    }
    eq_backend_destroy(&be);
    eq_quant_destroy(&s_left);
}
END_TEST

static void s_qopts(eq_quant_opts *o, eq_quant_tag tag, const char *method, const char *bit)
{
    eq_err err = {0};
    eq_quant_opts_init(o, tag);
    ck_assert(eq_quant_opts_set(o, "method", method, &err) == EQ_OK);
    ck_assert(eq_quant_opts_set(o, "bit", bit, &err) == EQ_OK);
}

/* input [4][8][8][8] -> conv1 (lsq wt/fm, 2 bit) -> bn1 -> relu -> conv2
 * (dorefa wt: host path; pact fm; lsq output quantizer) -> bn2 -> relu ->
 * gap -> fc (lsq wt/fm) [4][10] */
static eq_layers *s_net(eq_backend *be)
{
    eq_err err = {0};
    eq_layers *g = eq_layers_new(be, &err);
    ck_assert_ptr_nonnull(g);
    eq_quant_opts w1, f1, w2, f2, o2, wf, ff;
    s_qopts(&w1, EQ_QTAG_WT, "lsq", "2");
    s_qopts(&f1, EQ_QTAG_FM, "lsq", "2");
    s_qopts(&w2, EQ_QTAG_WT, "dorefa", "2");
    s_qopts(&f2, EQ_QTAG_FM, "pact", "4");
    s_qopts(&o2, EQ_QTAG_OT, "lsq", "4");
    s_qopts(&wf, EQ_QTAG_WT, "lsq", "4");
    s_qopts(&ff, EQ_QTAG_FM, "lsq", "4");
    int x = eq_layers_input(g, 4, 8, 8, 8, &err);
    int c1 = eq_layers_conv(g, "conv1", x, 16, 3, 1, 1, 1, &w1, &f1, false, &err);
    int r1 = eq_layers_relu(g, eq_layers_bn(g, "bn1", c1, &err), &err);
    int c2 = eq_layers_conv(g, "conv2", r1, 16, 3, 2, 1, 1, &w2, &f2, false, &err);
    ck_assert_msg(c2 >= 0 && eq_layers_conv_output_quant(g, c2, &o2, &err) == EQ_OK, "%s", err.msg);
    int r2 = eq_layers_relu(g, eq_layers_bn(g, "bn2", c2, &err), &err);
    int fc = eq_layers_linear(g, "fc", eq_layers_gap(g, r2, &err), 10, &wf, &ff, &err);
    ck_assert_msg(fc >= 0, "%s", err.msg);
    ck_assert_msg(eq_layers_finalize(g, 1234, &err) == EQ_OK, "%s", err.msg);
    return g;
}

static float *s_host_copy(eq_backend *be, const void *p, size_t n, int host)
{
    float *h = malloc(n * 4 + 4);
    eq_err err = {0};
    ck_assert_ptr_nonnull(h);
    if (host) memcpy(h, p, n * 4);
    else ck_assert_msg(eq_backend_download(be, h, p, n * 4, &err) == EQ_OK, "%s", err.msg);
    return h;
}

/* Elements that are exactly 0 on one backend only, over every node's
 * stored activation (grads 0) or gradient (grads 1): a ReLU or straight-
 * through-estimator mask that differs, as a flipped level does. */
static size_t s_zero_mismatch(eq_backend *gpu, const eq_layers *gc, const eq_layers *gg, int grads)
{
    size_t count = 0;
    for (int nd = 0; nd < eq_layers_node_count(gc); nd++) {
        const float *y[2] = {NULL, NULL}, *d[2] = {NULL, NULL};
        size_t n[2] = {0, 0};
        if (eq_layers_node_buffers(gc, nd, &y[0], &d[0], &n[0]) != 0 ||
            eq_layers_node_buffers(gg, nd, &y[1], &d[1], &n[1]) != 0)
            continue;
        const float *a = grads ? d[0] : y[0], *b = grads ? d[1] : y[1];
        if (!a || !b || n[0] != n[1]) continue;
        float *hb = s_host_copy(gpu, b, n[1], 0);
        for (size_t i = 0; i < n[0]; i++) count += (a[i] == 0.0f) != (hb[i] == 0.0f);
        free(hb);
    }
    return count;
}

START_TEST(test_layers)
{
    eq_err err = {0};
    eq_cuda_opts co = {.device = 0};
    eq_backend *gpu = eq_backend_cuda_new(&co, &err), *cpu = eq_backend_cpu_new(2, &err);
    ck_assert(gpu && cpu);
    eq_layers *gc = s_net(cpu), *gg = s_net(gpu);
    int64_t xs = 4 * 8 * 8 * 8, os[4];
    float *dx = eq_backend_alloc(gpu, (size_t)xs * 4, &err), *hx = eq_backend_alloc(cpu, (size_t)xs * 4, &err);
    ck_assert(dx && hx);
    static const char *const qn[3] = {"conv1", "conv2", "fc"};
    for (int step = 0; step < 2; step++) {
        float *x = s_rand((size_t)xs, -1.0f, 1.0f, 300 + (uint64_t)step);
        memcpy(hx, x, (size_t)xs * 4);
        ck_assert(eq_backend_upload(gpu, dx, x, (size_t)xs * 4, &err) == EQ_OK);
        ck_assert_msg(eq_layers_forward(gc, hx, true, &err) == EQ_OK, "cpu: %s", err.msg);
        ck_assert_msg(eq_layers_forward(gg, dx, true, &err) == EQ_OK, "cuda: %s", err.msg);
        /* quantizer outputs: levels equal except a few flips */
        size_t flips = 0;
        for (int l = 0; l < 3; l++)
            for (int tag = 0; tag < EQ_QTAG_COUNT; tag++) {
                int64_t na = 0, nb = 0;
                const float *a = eq_layers_quant_output(gc, qn[l], (eq_quant_tag)tag, &na);
                const float *b = eq_layers_quant_output(gg, qn[l], (eq_quant_tag)tag, &nb);
                ck_assert_int_eq(na, nb);
                if (!a) continue;
                float *hb = s_host_copy(gpu, b, (size_t)nb, 0);
                size_t f = s_diff(a, hb, (size_t)na);
                /* 1 % plus two: a flipped level upstream moves up to k r s
                 * outputs of the next convolution, and its output quantizer
                 * then flips several (7 of 1024 seen on the CPU emulation);
                 * the plus two for small arrays (fc's 64 inputs: 2 seen in
                 * the second step, after the first step's flips) */
                ck_assert_msg(f <= (size_t)na / 100 + 2, "step %d %s %s: %zu of %lld levels differ (seed %llu)",
                              step, qn[l], eq_quant_tag_name((eq_quant_tag)tag), f, (long long)na,
                              (unsigned long long)g_seed);
                flips += f;
                free(hb);
            }
        /* ReLU masks: an activation within rounding of 0 may be 0 on one
         * backend and positive on the other; its gradient then passes on
         * one only, as with a flipped level (the CPU emulation showed it:
         * conv1.weight off by 0.7 % with no level flipped).  Counted as
         * flips: an exact 0 on one side only, in any stored activation. */
        flips += s_zero_mismatch(gpu, gc, gg, 0);
        /* fp32: the output, then (after the backward) every gradient */
        float *dyc, *dyg;
        float *yc = eq_layers_output(gc, &dyc, os), *yg = eq_layers_output(gg, &dyg, os);
        size_t no = (size_t)(os[0] * os[1] * os[2] * os[3]);
        float *hy = s_host_copy(gpu, yg, no, 0);
        double ey = eq_test_relerr(hy, yc, no);
        free(hy);
        float *gy = s_rand(no, -1.0f, 1.0f, 400 + (uint64_t)step);
        memcpy(dyc, gy, no * 4);
        ck_assert(eq_backend_upload(gpu, dyg, gy, no * 4, &err) == EQ_OK);
        free(gy);
        ck_assert_msg(eq_layers_backward(gc, &err) == EQ_OK, "cpu: %s", err.msg);
        ck_assert_msg(eq_layers_backward(gg, &err) == EQ_OK, "cuda: %s", err.msg);
        /* The same for the backward's masks: a straight-through estimator
         * passes the gradient where its input is inside the clip range,
         * and an input within rounding of the clip value (the same level
         * either way, so no forward flip) can be in on one backend only
         * (the emulation showed it: bn1.bias off by 0.15 % with no flip).
         * Counted as flips: a gradient exactly 0 on one side only. */
        flips += s_zero_mismatch(gpu, gc, gg, 1);
        /* A quantizer parameter's gradient is one sum over a whole layer
         * of terms whose upstream gradient differs from the CPU's in the
         * last bits (another convolution summation order); where the terms
         * cancel, the sum's relative error grows without bound: up to
         * 1.4e-4 in 12 runs of the CPU emulation (which failed this check
         * at 1e-5 in 2 of them).  Those sums get 1e-3 (a wrong kernel is
         * off by O(1)), everything else 1e-5. */
        double emax = ey, qmax = 0.0;
        const char *worst = "output", *qworst = "";
        ck_assert_uint_eq(eq_layers_tensor_count(gc), eq_layers_tensor_count(gg));
        for (size_t i = 0; i < eq_layers_tensor_count(gc); i++) {
            const eq_model_tensor *a = eq_layers_tensor_at(gc, i), *b = eq_layers_tensor_at(gg, i);
            ck_assert_str_eq(a->name, b->name);
            if (a->dtype != EQ_DT_F32) continue;
            if (a->quant) /* quantizer state: host memory on both, equal */
                ck_assert_msg(memcmp(a->data, b->data, a->numel * 4) == 0 || flips,
                              "step %d: %s differs", step, a->name);
            if (!a->grad) continue;
            float *hb = s_host_copy(gpu, b->grad, b->numel, b->quant);
            double e = eq_test_relerr(hb, a->grad, a->numel);
            free(hb);
            if (a->quant) {
                if (e > qmax) qmax = e, qworst = a->name;
            } else if (e > emax) {
                emax = e, worst = a->name;
            }
        }
        printf("check_cuda_quant: layers step %d: %zu flipped level(s), worst fp32 relative error %.3g (%s), "
               "quantizer parameter gradients %.3g (%s)\n",
               step, flips, emax, worst, qmax, qworst);
        /* One mask stays invisible: an input within rounding of a clip
         * value gives the saturated level on both backends, but the
         * estimator passes its gradient on one only, which moves that
         * clip value's gradient by about |gy| (1.3 % of the sum, seen 2
         * runs in 30, with bn1.bias then 0.15 % off).  So a quantizer
         * parameter gradient off by more than 1e-3 with no flip seen is
         * taken as such a mask flip and the step's gradients are printed,
         * not compared (quantizer backwards are compared on identical
         * inputs, parameter gradients within 1e-5, by test_quant). */
        if (!flips && qmax <= 1e-3)
            ck_assert_msg(emax <= 1e-5, "step %d: %s: relative error %.3g (seed %llu)", step, worst, emax,
                          (unsigned long long)g_seed);
        free(x);
    }
    eq_backend_release(gpu, dx);
    eq_backend_release(cpu, hx);
    eq_layers_destroy(&gg); /* releases the backend's quantizer state */
    eq_layers_destroy(&gc);
    eq_backend_destroy(&gpu);
    eq_backend_destroy(&cpu);
}
END_TEST

/* ---- mixed precision through the graph (#9) ---- */

/* input [4][8][8][16] -> conv1 3x3 32 -> bn1 -> relu -> conv2 3x3 32 -> bn2
 * (+ down: conv 1x1 32 of the input) -> add -> relu -> gap -> fc [4][10],
 * activations in `p` (eq_layers_set_precision), no quantizers. */
static eq_layers *s_amp_net(eq_backend *be, eq_precision p)
{
    eq_err err = {0};
    eq_layers *g = eq_layers_new(be, &err);
    ck_assert_ptr_nonnull(g);
    int x = eq_layers_input(g, 4, 8, 8, 16, &err);
    int c1 = eq_layers_conv(g, "conv1", x, 32, 3, 1, 1, 1, NULL, NULL, false, &err);
    int r1 = eq_layers_relu(g, eq_layers_bn(g, "bn1", c1, &err), &err);
    int c2 = eq_layers_conv(g, "conv2", r1, 32, 3, 1, 1, 1, NULL, NULL, false, &err);
    int b2 = eq_layers_bn(g, "bn2", c2, &err);
    int dn = eq_layers_conv(g, "down", x, 32, 1, 1, 0, 1, NULL, NULL, false, &err);
    int r2 = eq_layers_relu(g, eq_layers_add(g, b2, dn, &err), &err);
    int fc = eq_layers_linear(g, "fc", eq_layers_gap(g, r2, &err), 10, NULL, NULL, &err);
    ck_assert_msg(fc >= 0, "%s", err.msg);
    ck_assert_msg(eq_layers_set_precision(g, p, &err) == EQ_OK, "%s", err.msg);
    ck_assert_msg(eq_layers_finalize(g, 4321, &err) == EQ_OK, "%s", err.msg);
    return g;
}

static size_t s_not_representable(eq_precision p, const float *h, size_t n)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        float r = eq_precision_round(p, h[i]);
        bad += memcmp(&r, &h[i], 4) != 0;
    }
    return bad;
}

/* The graph in bf16 and fp16 on the CUDA backend (round_to, 16-bit
 * convolutions) against the same graph on the CPU backend, one training
 * step: every activation and gradient the GPU graph stores is a value of
 * the precision (exact), and the output and every parameter gradient are
 * within 4u norm-wise of the CPU's (u = 2^-8 bf16, 2^-11 fp16: the two
 * differ only where a sum in another order rounds to the other neighbour,
 * a small fraction of elements, so the bound is loose; it catches layout
 * or conversion errors, which are O(1)).  The errors are printed for
 * calibration. */
START_TEST(test_layers_amp)
{
    const eq_precision p = _i ? EQ_PREC_FP16 : EQ_PREC_BF16;
    const double u = p == EQ_PREC_BF16 ? 1.0 / 256 : 1.0 / 2048;
    eq_err err = {0};
    eq_cuda_opts co = {.device = 0};
    eq_backend *gpu = eq_backend_cuda_new(&co, &err), *cpu = eq_backend_cpu_new(2, &err);
    ck_assert(gpu && cpu);
    eq_layers *gc = s_amp_net(cpu, p), *gg = s_amp_net(gpu, p);
    int64_t xs = 4 * 8 * 8 * 16, os[4];
    float *dx = eq_backend_alloc(gpu, (size_t)xs * 4, &err), *hx = eq_backend_alloc(cpu, (size_t)xs * 4, &err);
    ck_assert(dx && hx);
    float *x = s_rand((size_t)xs, -1.0f, 1.0f, 500);
    memcpy(hx, x, (size_t)xs * 4);
    ck_assert(eq_backend_upload(gpu, dx, x, (size_t)xs * 4, &err) == EQ_OK);
    ck_assert_msg(eq_layers_forward(gc, hx, true, &err) == EQ_OK, "cpu: %s", err.msg);
    ck_assert_msg(eq_layers_forward(gg, dx, true, &err) == EQ_OK, "cuda: %s", err.msg);
    float *dyc, *dyg;
    float *yc = eq_layers_output(gc, &dyc, os), *yg = eq_layers_output(gg, &dyg, os);
    size_t no = (size_t)(os[0] * os[1] * os[2] * os[3]);
    float *hy = s_host_copy(gpu, yg, no, 0);
    double ey = eq_test_relerr(hy, yc, no);
    free(hy);
    float *gy = s_rand(no, -1.0f, 1.0f, 501);
    for (size_t i = 0; i < no; i++) gy[i] = eq_precision_round(p, gy[i]);
    memcpy(dyc, gy, no * 4);
    ck_assert(eq_backend_upload(gpu, dyg, gy, no * 4, &err) == EQ_OK);
    free(gy);
    ck_assert_msg(eq_layers_backward(gc, &err) == EQ_OK, "cpu: %s", err.msg);
    ck_assert_msg(eq_layers_backward(gg, &err) == EQ_OK, "cuda: %s", err.msg);
    /* every stored activation and gradient of the GPU graph */
    int nbuf = 0;
    for (int i = 1; i < eq_layers_node_count(gg); i++) {
        const float *y, *dy;
        size_t n;
        ck_assert_int_eq(eq_layers_node_buffers(gg, i, &y, &dy, &n), 0);
        const float *b[2] = {y, dy};
        for (int k = 0; k < 2; k++) {
            if (!b[k]) continue;
            float *h = s_host_copy(gpu, b[k], n, 0);
            size_t bad = s_not_representable(p, h, n);
            ck_assert_msg(bad == 0, "%s: node %d %s: %zu of %zu values not %s (seed %llu)",
                          eq_precision_name(p), i, k ? "dy" : "y", bad, n, eq_precision_name(p),
                          (unsigned long long)g_seed);
            free(h);
            nbuf++;
        }
    }
    ck_assert_int_ge(nbuf, 8);
    double emax = ey, emax1 = 0.0;
    const char *worst = "output", *worst1 = "";
    ck_assert_uint_eq(eq_layers_tensor_count(gc), eq_layers_tensor_count(gg));
    for (size_t i = 0; i < eq_layers_tensor_count(gc); i++) {
        const eq_model_tensor *a = eq_layers_tensor_at(gc, i), *b = eq_layers_tensor_at(gg, i);
        ck_assert_str_eq(a->name, b->name);
        if (a->dtype != EQ_DT_F32 || !a->grad) continue;
        float *hb = s_host_copy(gpu, b->grad, b->numel, 0);
        double e = eq_test_relerr(hb, a->grad, a->numel);
        free(hb);
        /* per-channel parameters (BN weight and bias, the classifier's
         * bias): each gradient element is one sum over the whole batch of
         * terms rounded to the precision, which cancel, so u-sized term
         * errors are far larger relative to the sum (bn1.bias 0.0204 =
         * 42u in fp16, 1 run in 30 of the CPU emulation): 64u */
        if (a->ndim == 1) {
            if (e > emax1) emax1 = e, worst1 = a->name;
        } else if (e > emax) {
            emax = e, worst = a->name;
        }
    }
    printf("check_cuda_quant: %s graph: output relative error %.3g, worst %.3g (%s), "
           "per-channel %.3g (%s), u %.3g\n",
           eq_precision_name(p), ey, emax, worst, emax1, worst1, u);
    /* ReLU masks (as test_layers): an activation or gradient exactly 0 on
     * one backend only passes or stops a gradient on one side; then the
     * gradients are printed, not bounded (conv2.weight 0.016 = 33u seen) */
    size_t masks = s_zero_mismatch(gpu, gc, gg, 0) + s_zero_mismatch(gpu, gc, gg, 1);
    printf("check_cuda_quant: %s graph: %zu mask(s) differ\n", eq_precision_name(p), masks);
    if (!masks) {
        ck_assert_msg(emax <= 4 * u, "%s graph: %s: relative error %.3g > 4u (seed %llu)",
                      eq_precision_name(p), worst, emax, (unsigned long long)g_seed);
        ck_assert_msg(emax1 <= 64 * u, "%s graph: %s: relative error %.3g > 64u (seed %llu)",
                      eq_precision_name(p), worst1, emax1, (unsigned long long)g_seed);
    }
    free(x);
    eq_backend_release(gpu, dx);
    eq_backend_release(cpu, hx);
    eq_layers_destroy(&gg);
    eq_layers_destroy(&gc);
    eq_backend_destroy(&gpu);
    eq_backend_destroy(&cpu);
}
END_TEST

int main(void)
{
    char why[256] = "";
    if (eq_cuda_device_count(why, sizeof why) == 0) {
        printf("SKIP: check_cuda_quant: no CUDA device: %s\n", why);
        return 77;
    }
    const char *s = getenv("EQ_TEST_SEED");
    g_seed = s && *s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    printf("check_cuda_quant: seed %llu\n", (unsigned long long)g_seed);
    Suite *su = suite_create("cuda_quant");
    TCase *tc = tcase_create("parity");
    tcase_add_loop_test(tc, test_quant, 0, NCASE);
    tcase_add_test(tc, test_args);
    tcase_add_test(tc, test_members);
    tcase_add_test(tc, test_layers);
    tcase_add_loop_test(tc, test_layers_amp, 0, 2);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(su, tc);
    /* no fork: CUDA is initialised in this process already */
    SRunner *sr = srunner_create(su);
#ifdef EQ_CUDA_EMU
    /* The CPU emulation (tests/cudaemu) has no driver state a fork breaks:
     * each test in its own process, under the timeout (a fault, sticky for
     * the process as for a CUDA context, stays in its test). */
    srunner_set_fork_status(sr, CK_FORK);
#else
    srunner_set_fork_status(sr, CK_NOFORK);
#endif
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
