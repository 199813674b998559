/*
 * tests/check_layers.c -- the layer graph (trainer/net.h) on the CPU
 * backend.
 *
 * 1. Thin torchvision ResNets -- resnet18 (BasicBlocks [2,2,2,2], width 4)
 *    and a Bottleneck net ([2,2,2,2], width 4; the generator says why not
 *    resnet50's depth), batch 2 at 48x48 --
 *    against PyTorch (tests/fixtures/trainer/gen_layers.py, which also
 *    checks the thin models' names and shapes equal torchvision's):
 *    logits, loss, every gradient and the BN running statistics within 1e-4
 *    relative (norm-wise), then three SGD steps (momentum, nesterov, weight
 *    decay): losses and final parameters.
 * 2. Finite differences through a small residual net (fork + add, BN in
 *    training mode, GAP, linear, label-smoothed cross-entropy).
 * 3. Builder validation and torchvision's parameter names.
 */
#include "trainer/net.h"
#include "tests/testutil.h"

#include <math.h>

#define TOL 1e-4

#define OK(call)                                                              \
    do {                                                                      \
        eq_status s_ = (call);                                                \
        ck_assert_msg(s_ == EQ_OK, "%s failed: %s", #call, err.msg);          \
    } while (0)

/* The fixture set being read (a directory under tests/fixtures/trainer/). */
static const char *s_fixture = "resnet18_w4";

static void *s_load(const char *rel, const char *ext, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/trainer/%s/%s.%s", eq_test_srcdir(), s_fixture,
             rel, ext);
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open fixture %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    ck_assert_msg(len == (long)(n * 4), "fixture %s has %ld bytes, expected %zu elements", path,
                  len, n);
    void *p = malloc(n * 4 + 4);
    ck_assert_uint_eq(fread(p, 4, n, f), n);
    fclose(f);
    return p;
}

static double s_relerr(const float *a, const float *ref, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * (double)ref[i];
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

/* Compare device tensor `dev` with fixture `rel`. */
static void s_expect(eq_backend *be, const float *dev, const char *rel, size_t n, double tol)
{
    eq_err err = {0};
    float *ref = s_load(rel, "f32", n), *got = malloc(n * 4);
    OK(eq_backend_download(be, got, dev, n * 4, &err));
    double e = s_relerr(got, ref, n);
    ck_assert_msg(e <= tol, "%s: relative error %.3g > %.3g", rel, e, tol);
    free(ref), free(got);
}

static const int R18[4] = {2, 2, 2, 2};
static const int R50[4] = {3, 4, 6, 3};

typedef struct model_case {
    const char *dir;
    int bottleneck;
    const int *blocks;
    int64_t width;
    size_t ntensors, ngrad; /* state dict less num_batches_tracked; parameters */
    int steps;              /* check three SGD steps (gen_layers.py says why not always) */
} model_case;
static const model_case MODELS[] = {
    {"resnet18_w4", 0, R18, 4, 102, 62, 1},
    {"bottleneck_w4", 1, R18, 4, 147, 89, 0},
};

static eq_net *s_thin_resnet(eq_backend *be, const model_case *mc)
{
    eq_err err = {0};
    eq_net *net = eq_net_new(be, &err);
    ck_assert_ptr_nonnull(net);
    ck_assert_msg(eq_net_build_torch_resnet(net, mc->bottleneck, mc->blocks, mc->width, 10, 2, 48,
                                            48, &err) >= 0,
                  "%s", err.msg);
    OK(eq_net_finalize(net, 1, &err));
    /* load the fixture's parameters by PyTorch name */
    for (size_t i = 0; i < eq_net_param_count(net); i++) {
        const eq_net_tensor *t = eq_net_param(net, i);
        char rel[300];
        snprintf(rel, sizeof rel, "param/%s", t->name);
        float *v = s_load(rel, "f32", t->numel);
        OK(eq_backend_upload(be, t->data, v, t->numel * 4, &err));
        free(v);
    }
    return net;
}

/* Three SGD steps on the same batch (the first one's gradients are in
 * place; `loss` is its loss): each step's loss and the final parameters. */
static void s_sgd_steps(eq_backend *be, eq_net *net, const float *x, const int32_t *y, float loss)
{
    eq_err err = {0};
    float *ref_losses = s_load("loss_steps", "f32", 3);
    float **bufs = calloc(eq_net_param_count(net), sizeof *bufs);
    for (int step = 0; step < 3; step++) {
        if (step > 0) {
            OK(eq_net_forward(net, x, 1, &err));
            OK(eq_net_loss(net, y, NULL, NULL, 0.0f, &loss, &err));
            OK(eq_net_backward(net, &err));
        }
        ck_assert_msg(fabs(loss - ref_losses[step]) <= TOL * fabs(ref_losses[step]),
                      "step %d loss %.8g vs %.8g", step, loss, ref_losses[step]);
        for (size_t i = 0; i < eq_net_param_count(net); i++) {
            const eq_net_tensor *t = eq_net_param(net, i);
            if (!t->trainable) continue;
            if (!bufs[i]) bufs[i] = eq_backend_alloc(be, t->numel * 4, &err);
            eq_sgd_params hp = {.lr = 0.1f, .momentum = 0.9f, .weight_decay = 1e-4f,
                                .nesterov = 1, .first = step == 0};
            OK(eq_backend_sgd_step(be, t->numel, &hp, t->data, t->grad, bufs[i], &err));
        }
    }
    for (size_t i = 0; i < eq_net_param_count(net); i++) {
        const eq_net_tensor *t = eq_net_param(net, i);
        char rel[300];
        snprintf(rel, sizeof rel, "param3/%s", t->name);
        s_expect(be, t->data, rel, t->numel, TOL);
        eq_backend_release(be, bufs[i]);
    }
    free(bufs), free(ref_losses);
}

START_TEST(test_resnet_parity)
{
    const model_case *mc = &MODELS[_i];
    s_fixture = mc->dir;
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    ck_assert_ptr_nonnull(be);
    eq_net *net = s_thin_resnet(be, mc);
    ck_assert_uint_eq(eq_net_param_count(net), mc->ntensors);
    const size_t nx = 2 * 48 * 48 * 3;
    float *xh = s_load("x", "f32", nx);
    int32_t *yh = s_load("y", "i32", 2);
    float *x = eq_backend_alloc(be, nx * 4, &err);
    int32_t *y = eq_backend_alloc(be, 8, &err);
    OK(eq_backend_upload(be, x, xh, nx * 4, &err));
    OK(eq_backend_upload(be, y, yh, 8, &err));

    OK(eq_net_forward(net, x, 1, &err));
    int64_t nout;
    const float *logits = eq_net_output(net, &nout);
    ck_assert_int_eq(nout, 20);
    s_expect(be, logits, "logits", 20, TOL);
    float loss;
    OK(eq_net_loss(net, y, NULL, NULL, 0.0f, &loss, &err));
    float *ref_loss = s_load("loss", "f32", 1);
    ck_assert_msg(fabs(loss - ref_loss[0]) <= TOL * fabs(ref_loss[0]), "loss %.8g vs %.8g", loss,
                  ref_loss[0]);
    OK(eq_net_backward(net, &err));
    size_t ngrad = 0;
    for (size_t i = 0; i < eq_net_param_count(net); i++) {
        const eq_net_tensor *t = eq_net_param(net, i);
        char rel[300];
        if (t->trainable) {
            snprintf(rel, sizeof rel, "grad/%s", t->name);
            s_expect(be, t->grad, rel, t->numel, TOL);
            ngrad++;
        } else {
            snprintf(rel, sizeof rel, "stats1/%s", t->name);
            s_expect(be, t->data, rel, t->numel, TOL);
        }
    }
    ck_assert_uint_eq(ngrad, mc->ngrad);
    ck_assert_int_eq(eq_net_bn_batches(net), 1);

    if (mc->steps) s_sgd_steps(be, net, x, y, loss);
    free(xh), free(yh), free(ref_loss);
    eq_backend_release(be, x);
    eq_backend_release(be, y);
    eq_net_destroy(&net);
    ck_assert_ptr_null(net);
    eq_backend_destroy(&be);
}
END_TEST

/* ---- finite differences through a residual block -------------------------- */

typedef struct fd_net {
    eq_backend *be;
    eq_net *net;
    float *x;
    int32_t *y;
} fd_net;

static double s_net_loss(fd_net *f)
{
    eq_err err = {0};
    float loss;
    OK(eq_net_forward(f->net, f->x, 1, &err));
    OK(eq_net_loss(f->net, f->y, NULL, NULL, 0.1f, &loss, &err));
    return loss;
}

START_TEST(test_net_fd)
{
    eq_err err = {0};
    fd_net f = {.be = eq_backend_cpu_new(1, &err)};
    f.net = eq_net_new(f.be, &err);
    eq_net *net = f.net;
    int in = eq_net_input(net, 3, 6, 6, 2, &err);
    int a = eq_net_conv(net, "c1", in, 4, 3, 1, 1, 1, &err);
    a = eq_net_bn(net, "b1", a, &err);
    /* smooth on purpose (no ReLU or max pool, whose kinks a finite step
     * crosses): this checks the graph's plumbing; the kinked ops have their
     * own finite-difference tests and take part in the ResNet parity test */
    int b = eq_net_conv(net, "c2", a, 4, 3, 1, 1, 1, &err);
    b = eq_net_bn(net, "b2", b, &err);
    int s = eq_net_add(net, b, a, &err); /* a feeds two consumers */
    s = eq_net_gap(net, s, &err);
    ck_assert_int_ge(eq_net_linear(net, "fc", s, 5, &err), 0);
    OK(eq_net_finalize(net, 7, &err));
    f.x = malloc(3 * 36 * 2 * 4);
    for (int i = 0; i < 3 * 36 * 2; i++) f.x[i] = sinf(0.7f * (float)i) + 0.1f * (float)(i % 5);
    int32_t y[3] = {1, 4, 0};
    f.y = y;
    /* the CPU backend's device memory is host memory: perturb in place */
    s_net_loss(&f);
    OK(eq_net_backward(net, &err));
    const char *names[] = {"c1.weight", "b1.weight", "b1.bias", "c2.weight", "b2.weight", "fc.weight", "fc.bias"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        const eq_net_tensor *t = eq_net_param_find(net, names[k]);
        ck_assert_ptr_nonnull(t);
        float *an = malloc(t->numel * 4), *v0 = malloc(t->numel * 4);
        memcpy(an, t->grad, t->numel * 4);
        memcpy(v0, t->data, t->numel * 4);
        /* directional derivatives along +-1 directions: the signal adds up
         * over the tensor while the float loss's rounding noise does not */
        uint32_t rs = 12345u + (uint32_t)k;
        for (int dir = 0; dir < 3; dir++) {
            const float h = 3e-2f;
            double dot = 0.0, gn = 0.0;
            float *sg = malloc(t->numel * 4);
            for (size_t i = 0; i < t->numel; i++) {
                rs = rs * 1664525u + 1013904223u;
                sg[i] = (rs >> 31) ? 1.0f : -1.0f;
                dot += (double)sg[i] * an[i];
                gn += (double)an[i] * an[i];
            }
            for (size_t i = 0; i < t->numel; i++) t->data[i] = v0[i] + h * sg[i];
            double lp = s_net_loss(&f);
            for (size_t i = 0; i < t->numel; i++) t->data[i] = v0[i] - h * sg[i];
            double lm = s_net_loss(&f);
            memcpy(t->data, v0, t->numel * 4);
            double fd = (lp - lm) / (2.0 * h);
            /* error relative to |grad| * |direction|, the scale of the
             * directional derivative (a single one may cancel out); the
             * float loss's rounding limits this to ~2e-3 for the small BN
             * gradients, while a plumbing bug (a lost fork contribution)
             * gives errors of order 1 */
            double e = fabs(fd - dot) / sqrt(gn * (double)t->numel);
            ck_assert_msg(e < 5e-3, "%s direction %d: finite difference %.6g vs analytic %.6g",
                          names[k], dir, fd, dot);
            free(sg);
        }
        free(an), free(v0);
    }
    free(f.x);
    eq_net_destroy(&f.net);
    eq_backend_destroy(&f.be);
}
END_TEST

START_TEST(test_builder_errors)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    eq_net *net = eq_net_new(be, &err);
    ck_assert_int_eq(eq_net_relu(net, 0, &err), -1);
    ck_assert_msg(strstr(err.msg, "add the input first"), "%s", err.msg);
    eq_net_destroy(&net);

    net = eq_net_new(be, &err);
    int in = eq_net_input(net, 2, 8, 8, 3, &err);
    ck_assert_int_eq(eq_net_conv(net, "conv1", in, 8, 3, 1, 1, 2, &err), -1);
    ck_assert_msg(strstr(err.msg, "conv1: conv2d: groups = 2 does not divide c = 3"), "%s", err.msg);
    ck_assert_int_eq(eq_net_relu(net, in, &err), -1);
    ck_assert_msg(strstr(err.msg, "earlier builder call failed"), "%s", err.msg);
    eq_net_destroy(&net);

    net = eq_net_new(be, &err);
    in = eq_net_input(net, 2, 8, 8, 3, &err);
    int c = eq_net_conv(net, "a", in, 4, 3, 2, 1, 1, &err);
    ck_assert_int_eq(eq_net_add(net, c, in, &err), -1);
    ck_assert_msg(strstr(err.msg, "differ"), "%s", err.msg);
    eq_net_destroy(&net);

    net = eq_net_new(be, &err);
    in = eq_net_input(net, 2, 8, 8, 3, &err);
    c = eq_net_conv(net, "a", in, 4, 3, 1, 1, 1, &err);
    ck_assert_int_eq(eq_net_conv(net, "a", c, 4, 3, 1, 1, 1, &err), -1);
    ck_assert_msg(strstr(err.msg, "'a.weight' defined twice"), "%s", err.msg);
    eq_net_destroy(&net);

    net = eq_net_new(be, &err);
    float loss;
    ck_assert_int_eq(eq_net_forward(net, NULL, 1, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "finalize first"), "%s", err.msg);
    in = eq_net_input(net, 2, 4, 4, 1, &err);
    ck_assert_int_ge(eq_net_linear(net, "fc", in, 3, &err), 0);
    OK(eq_net_finalize(net, 1, &err));
    ck_assert_int_eq(eq_net_backward(net, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "eq_net_loss first"), "%s", err.msg);
    float x[32] = {0};
    int32_t lab[2] = {0, 3};
    OK(eq_net_forward(net, x, 1, &err));
    ck_assert_int_eq(eq_net_loss(net, lab, NULL, NULL, 0.0f, &loss, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "labels_a[1] = 3"), "%s", err.msg);
    ck_assert_int_eq(eq_net_relu(net, in, &err), -1);
    ck_assert_msg(strstr(err.msg, "finalized"), "%s", err.msg);
    eq_net_destroy(&net);
    eq_net_destroy(&net);
    eq_backend_destroy(&be);
}
END_TEST

START_TEST(test_resnet_names_and_init)
{
    /* full-width resnet18 and resnet34: torchvision's tensor names and sizes */
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    static const int r34[4] = {3, 4, 6, 3};
    const int *cfg[3] = {R18, r34, R50};
    const size_t expect_params[3] = {11689512, 21797672, 25557032}; /* torchvision, 1000 classes */
    for (int m = 0; m < 3; m++) {
        eq_net *net = eq_net_new(be, &err);
        /* 32x32 keeps the activations small; parameters do not depend on it */
        ck_assert_int_ge(eq_net_build_torch_resnet(net, m == 2, cfg[m], 64, 1000, 1, 32, 32, &err), 0);
        if (m == 0) {
            ck_assert_ptr_null(eq_net_param(net, 0)->data); /* inspectable before finalize */
            OK(eq_net_finalize(net, 3, &err));
        }
        size_t total = 0;
        for (size_t i = 0; i < eq_net_param_count(net); i++) {
            const eq_net_tensor *t = eq_net_param(net, i);
            if (t->trainable) total += t->numel;
        }
        ck_assert_uint_eq(total, expect_params[m]);
        const eq_net_tensor *t = eq_net_param_find(net, "layer2.0.downsample.0.weight");
        ck_assert_ptr_nonnull(t);
        ck_assert_int_eq(t->ndim, 4);
        ck_assert_int_eq(t->shape[0], m == 2 ? 512 : 128);
        ck_assert_int_eq(t->shape[1], m == 2 ? 256 : 64);
        ck_assert_ptr_nonnull(eq_net_param_find(net, "layer4.1.bn2.running_var"));
        /* resnet50's first block widens 64 -> 256: it has a downsample */
        if (m == 2)
            ck_assert_ptr_nonnull(eq_net_param_find(net, "layer1.0.downsample.0.weight"));
        else
            ck_assert_ptr_null(eq_net_param_find(net, "layer1.0.downsample.0.weight"));
        ck_assert_str_eq(eq_net_param(net, 0)->name, "conv1.weight");
        ck_assert_str_eq(eq_net_param(net, eq_net_param_count(net) - 1)->name, "fc.bias");
        if (m > 0) {
            eq_net_destroy(&net);
            continue;
        }
        /* init: kaiming-normal fan_out for convs, BN ones/zeros */
        t = eq_net_param_find(net, "layer3.0.conv2.weight");
        double ss = 0;
        for (size_t i = 0; i < t->numel; i++) ss += (double)t->data[i] * t->data[i];
        double std = sqrt(ss / (double)t->numel), want = sqrt(2.0 / (256.0 * 9.0));
        ck_assert_msg(fabs(std - want) < 0.02 * want, "conv init std %g, want %g", std, want);
        t = eq_net_param_find(net, "bn1.running_var");
        ck_assert_float_eq(t->data[5], 1.0f);
        t = eq_net_param_find(net, "fc.bias");
        for (size_t i = 0; i < t->numel; i++) ck_assert(fabsf(t->data[i]) <= 1.0f / sqrtf(512.0f));
        eq_net_destroy(&net);
    }
    eq_backend_destroy(&be);
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("layers");
    TCase *tc = tcase_create("resnet");
    tcase_set_timeout(tc, 30); /* ~1 s of CPU; the machine is shared */
    tcase_add_loop_test(tc, test_resnet_parity, 0, sizeof MODELS / sizeof MODELS[0]);
    suite_add_tcase(s, tc);
    TCase *g = tcase_create("graph");
    tcase_set_timeout(g, 30);
    tcase_add_test(g, test_net_fd);
    tcase_add_test(g, test_builder_errors);
    tcase_add_test(g, test_resnet_names_and_init);
    suite_add_tcase(s, g);
    return s;
}

int main(void)
{
    return eq_test_run(s_suite());
}
