/*
 * tests/check_layers.c -- the layer graph (trainer/layers.h) on the CPU
 * backend, full precision, built here as torchvision builds its ResNets.
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
 * 4. A half-range LSQ input quantizer quantizing the unpadded input (the
 *    conv pads) against the padded path, bit for bit.
 */
#include "trainer/layers.h"
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
    return eq_test_read_words(path, n);
}

/* Compare device tensor `dev` with fixture `rel`. */
static void s_expect(eq_backend *be, const float *dev, const char *rel, size_t n, double tol)
{
    eq_err err = {0};
    float *ref = s_load(rel, "f32", n), *got = malloc(n * 4);
    OK(eq_backend_download(be, got, dev, n * 4, &err));
    double e = eq_test_relerr(got, ref, n);
    ck_assert_msg(e <= tol, "%s: relative error %.3g > %.3g", rel, e, tol);
    free(ref), free(got);
}

/* ---- torchvision ResNets on eq_layers --------------------------------------- */

static int64_t s_ch(const eq_layers *g, int node)
{
    int64_t sh[4];
    ck_assert_int_eq(eq_layers_shape(g, node, sh), 0);
    return sh[3];
}

/* BasicBlock or Bottleneck (stride on the 3x3), torchvision's names. */
static int s_block(eq_layers *g, const char *pfx, int in, int64_t planes, int64_t stride,
                   int bottleneck, eq_err *err)
{
    char nm[8][128];
    static const char *const sfx[8] = {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3",
                                       "downsample.0", "downsample.1"};
    for (int i = 0; i < 8; i++) snprintf(nm[i], sizeof nm[i], "%s.%s", pfx, sfx[i]);
    int64_t inplanes = s_ch(g, in), out = bottleneck ? 4 * planes : planes;
    int x;
    if (bottleneck) {
        x = eq_layers_conv(g, nm[0], in, planes, 1, 1, 0, 1, NULL, NULL, false, err);
        x = eq_layers_bn(g, nm[1], x, err);
        x = eq_layers_relu(g, x, err);
        x = eq_layers_conv(g, nm[2], x, planes, 3, stride, 1, 1, NULL, NULL, false, err);
        x = eq_layers_bn(g, nm[3], x, err);
        x = eq_layers_relu(g, x, err);
        x = eq_layers_conv(g, nm[4], x, out, 1, 1, 0, 1, NULL, NULL, false, err);
        x = eq_layers_bn(g, nm[5], x, err);
    } else {
        x = eq_layers_conv(g, nm[0], in, planes, 3, stride, 1, 1, NULL, NULL, false, err);
        x = eq_layers_bn(g, nm[1], x, err);
        x = eq_layers_relu(g, x, err);
        x = eq_layers_conv(g, nm[2], x, planes, 3, 1, 1, 1, NULL, NULL, false, err);
        x = eq_layers_bn(g, nm[3], x, err);
    }
    int skip = in;
    if (stride != 1 || inplanes != out) {
        skip = eq_layers_conv(g, nm[6], in, out, 1, stride, 0, 1, NULL, NULL, false, err);
        skip = eq_layers_bn(g, nm[7], skip, err);
    }
    x = eq_layers_add(g, x, skip, err);
    return eq_layers_relu(g, x, err);
}

static int s_build_resnet(eq_layers *g, int bottleneck, const int blocks[4], int64_t width,
                          int64_t classes, int64_t n, int64_t h, int64_t w, eq_err *err)
{
    int x = eq_layers_input(g, n, h, w, 3, err);
    x = eq_layers_conv(g, "conv1", x, width, 7, 2, 3, 1, NULL, NULL, false, err);
    x = eq_layers_bn(g, "bn1", x, err);
    x = eq_layers_relu(g, x, err);
    x = eq_layers_maxpool(g, x, 3, 2, 1, err);
    for (int st = 0; st < 4; st++)
        for (int b = 0; b < blocks[st]; b++) {
            char pfx[32];
            snprintf(pfx, sizeof pfx, "layer%d.%d", st + 1, b);
            x = s_block(g, pfx, x, width << st, b == 0 && st > 0 ? 2 : 1, bottleneck, err);
        }
    x = eq_layers_gap(g, x, err);
    return eq_layers_linear(g, "fc", x, classes, NULL, NULL, err);
}

/* Cross-entropy of the output against device labels: the loss, and the
 * output's gradient seeded for eq_layers_backward. */
static eq_status s_loss(eq_layers *g, eq_backend *be, const int32_t *labels, float smoothing,
                        float *loss, eq_err *err)
{
    float *dy;
    int64_t sh[4];
    float *y = eq_layers_output(g, &dy, sh);
    eq_xent_desc d;
    eq_status st = eq_xent_desc_init(&d, sh[0], sh[1] * sh[2] * sh[3], smoothing, err);
    float *dl = eq_backend_alloc(be, sizeof(float), err);
    if (st == EQ_OK) st = eq_backend_xent_fwd(be, &d, y, labels, NULL, NULL, dl, err);
    if (st == EQ_OK) st = eq_backend_download(be, loss, dl, sizeof *loss, err);
    if (st == EQ_OK) st = eq_backend_xent_bwd(be, &d, y, labels, NULL, NULL, 1.0f, dy, err);
    eq_backend_release(be, dl);
    return st;
}

/* F32 tensors (num_batches_tracked is an I64 host scalar). */
static int64_t s_batches(const eq_layers *g, const char *bn)
{
    char name[128];
    snprintf(name, sizeof name, "%s.num_batches_tracked", bn);
    for (size_t i = 0; i < eq_layers_tensor_count(g); i++) {
        const eq_model_tensor *t = eq_layers_tensor_at(g, i);
        if (!strcmp(t->name, name)) return *(const int64_t *)t->data;
    }
    return -1;
}

static const int R18[4] = {2, 2, 2, 2};
static const int R50[4] = {3, 4, 6, 3};

typedef struct model_case {
    const char *dir;
    int bottleneck;
    const int *blocks;
    int64_t width;
    size_t ntensors, ngrad; /* state dict entries, parameters */
    int steps;              /* check three SGD steps (gen_layers.py says why not always) */
} model_case;
static const model_case MODELS[] = {
    {"resnet18_w4", 0, R18, 4, 122, 62, 1},
    {"bottleneck_w4", 1, R18, 4, 176, 89, 0},
};

static int s_f32(const eq_model_tensor *t)
{
    return t->dtype == EQ_DT_F32;
}

static eq_layers *s_thin_resnet(eq_backend *be, const model_case *mc)
{
    eq_err err = {0};
    eq_layers *net = eq_layers_new(be, &err);
    ck_assert_ptr_nonnull(net);
    ck_assert_msg(s_build_resnet(net, mc->bottleneck, mc->blocks, mc->width, 10, 2, 48, 48, &err) >= 0,
                  "%s", err.msg);
    OK(eq_layers_finalize(net, 1, &err));
    /* load the fixture's parameters by PyTorch name */
    for (size_t i = 0; i < eq_layers_tensor_count(net); i++) {
        const eq_model_tensor *t = eq_layers_tensor_at(net, i);
        if (!s_f32(t)) continue;
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
static void s_sgd_steps(eq_backend *be, eq_layers *net, const float *x, const int32_t *y, float loss)
{
    eq_err err = {0};
    float *ref_losses = s_load("loss_steps", "f32", 3);
    size_t nt = eq_layers_tensor_count(net);
    float **bufs = calloc(nt, sizeof *bufs);
    for (int step = 0; step < 3; step++) {
        if (step > 0) {
            OK(eq_layers_forward(net, x, true, &err));
            OK(s_loss(net, be, y, 0.0f, &loss, &err));
            OK(eq_layers_backward(net, &err));
        }
        ck_assert_msg(fabs(loss - ref_losses[step]) <= TOL * fabs(ref_losses[step]),
                      "step %d loss %.8g vs %.8g", step, loss, ref_losses[step]);
        for (size_t i = 0; i < nt; i++) {
            const eq_model_tensor *t = eq_layers_tensor_at(net, i);
            if (t->kind != EQ_MT_PARAM) continue;
            if (!bufs[i]) bufs[i] = eq_backend_alloc(be, t->numel * 4, &err);
            eq_sgd_params hp = {.lr = 0.1f, .momentum = 0.9f, .weight_decay = 1e-4f,
                                .nesterov = 1, .first = step == 0};
            OK(eq_backend_sgd_step(be, t->numel, &hp, t->data, t->grad, bufs[i], &err));
        }
    }
    for (size_t i = 0; i < nt; i++) {
        const eq_model_tensor *t = eq_layers_tensor_at(net, i);
        if (!s_f32(t)) continue;
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
    eq_layers *net = s_thin_resnet(be, mc);
    ck_assert_uint_eq(eq_layers_tensor_count(net), mc->ntensors);
    const size_t nx = 2 * 48 * 48 * 3;
    float *xh = s_load("x", "f32", nx);
    int32_t *yh = s_load("y", "i32", 2);
    float *x = eq_backend_alloc(be, nx * 4, &err);
    int32_t *y = eq_backend_alloc(be, 8, &err);
    OK(eq_backend_upload(be, x, xh, nx * 4, &err));
    OK(eq_backend_upload(be, y, yh, 8, &err));

    OK(eq_layers_forward(net, x, true, &err));
    int64_t sh[4];
    float *dy;
    const float *logits = eq_layers_output(net, &dy, sh);
    ck_assert_int_eq(sh[0] * sh[1] * sh[2] * sh[3], 20);
    s_expect(be, logits, "logits", 20, TOL);
    float loss;
    OK(s_loss(net, be, y, 0.0f, &loss, &err));
    float *ref_loss = s_load("loss", "f32", 1);
    ck_assert_msg(fabs(loss - ref_loss[0]) <= TOL * fabs(ref_loss[0]), "loss %.8g vs %.8g", loss,
                  ref_loss[0]);
    OK(eq_layers_backward(net, &err));
    size_t ngrad = 0;
    for (size_t i = 0; i < eq_layers_tensor_count(net); i++) {
        const eq_model_tensor *t = eq_layers_tensor_at(net, i);
        char rel[300];
        if (t->kind == EQ_MT_PARAM) {
            snprintf(rel, sizeof rel, "grad/%s", t->name);
            s_expect(be, t->grad, rel, t->numel, TOL);
            ngrad++;
        } else if (s_f32(t)) {
            snprintf(rel, sizeof rel, "stats1/%s", t->name);
            s_expect(be, t->data, rel, t->numel, TOL);
        }
    }
    ck_assert_uint_eq(ngrad, mc->ngrad);
    ck_assert_int_eq(s_batches(net, "layer1.0.bn1"), 1);

    if (mc->steps) s_sgd_steps(be, net, x, y, loss);
    free(xh), free(yh), free(ref_loss);
    eq_backend_release(be, x);
    eq_backend_release(be, y);
    eq_layers_destroy(&net);
    ck_assert_ptr_null(net);
    eq_backend_destroy(&be);
}
END_TEST

/* ---- finite differences through a residual block -------------------------- */

typedef struct fd_net {
    eq_backend *be;
    eq_layers *net;
    float *x;
    int32_t *y;
} fd_net;

static double s_net_loss(fd_net *f)
{
    eq_err err = {0};
    float loss;
    OK(eq_layers_forward(f->net, f->x, true, &err));
    OK(s_loss(f->net, f->be, f->y, 0.1f, &loss, &err));
    return loss;
}

static const eq_model_tensor *s_find(const eq_layers *g, const char *name)
{
    for (size_t i = 0; i < eq_layers_tensor_count(g); i++)
        if (!strcmp(eq_layers_tensor_at(g, i)->name, name)) return eq_layers_tensor_at(g, i);
    return NULL;
}

START_TEST(test_net_fd)
{
    eq_err err = {0};
    fd_net f = {.be = eq_backend_cpu_new(1, &err)};
    f.net = eq_layers_new(f.be, &err);
    eq_layers *net = f.net;
    int in = eq_layers_input(net, 3, 6, 6, 2, &err);
    int a = eq_layers_conv(net, "c1", in, 4, 3, 1, 1, 1, NULL, NULL, false, &err);
    a = eq_layers_bn(net, "b1", a, &err);
    /* smooth on purpose (no ReLU or max pool, whose kinks a finite step
     * crosses): this checks the graph's plumbing; the kinked ops have their
     * own finite-difference tests and take part in the ResNet parity test */
    int b = eq_layers_conv(net, "c2", a, 4, 3, 1, 1, 1, NULL, NULL, false, &err);
    b = eq_layers_bn(net, "b2", b, &err);
    int s = eq_layers_add(net, b, a, &err); /* a feeds two consumers */
    s = eq_layers_gap(net, s, &err);
    ck_assert_int_ge(eq_layers_linear(net, "fc", s, 5, NULL, NULL, &err), 0);
    OK(eq_layers_finalize(net, 7, &err));
    f.x = malloc(3 * 36 * 2 * 4);
    for (int i = 0; i < 3 * 36 * 2; i++) f.x[i] = sinf(0.7f * (float)i) + 0.1f * (float)(i % 5);
    int32_t y[3] = {1, 4, 0};
    f.y = y;
    /* the CPU backend's device memory is host memory: perturb in place */
    s_net_loss(&f);
    OK(eq_layers_backward(net, &err));
    const char *names[] = {"c1.weight", "b1.weight", "b1.bias", "c2.weight", "b2.weight", "fc.weight", "fc.bias"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        const eq_model_tensor *t = s_find(net, names[k]);
        ck_assert_ptr_nonnull(t);
        float *an = malloc(t->numel * 4), *v0 = malloc(t->numel * 4);
        memcpy(an, t->grad, t->numel * 4);
        memcpy(v0, t->data, t->numel * 4);
        float *data = t->data;
        /* directional derivatives along +-1 directions: the signal adds up
         * over the tensor while the float loss's rounding noise does not */
        uint32_t rs = 12345u + (uint32_t)k;
        for (int dir = 0; dir < 3; dir++) {
            /* step: 3% of the tensor's rms (at least 0.003) -- large
             * enough to rise above the float loss's rounding, small enough
             * for the curvature through BN */
            double rms = 0.0;
            for (size_t i = 0; i < t->numel; i++) rms += (double)v0[i] * v0[i];
            const float h = (float)(0.03 * fmax(sqrt(rms / (double)t->numel), 0.1));
            double dot = 0.0, gn = 0.0;
            float *sg = malloc(t->numel * 4);
            for (size_t i = 0; i < t->numel; i++) {
                rs = rs * 1664525u + 1013904223u;
                sg[i] = (rs >> 31) ? 1.0f : -1.0f;
                dot += (double)sg[i] * an[i];
                gn += (double)an[i] * an[i];
            }
            for (size_t i = 0; i < t->numel; i++) data[i] = v0[i] + h * sg[i];
            double lp = s_net_loss(&f);
            for (size_t i = 0; i < t->numel; i++) data[i] = v0[i] - h * sg[i];
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
    eq_layers_destroy(&f.net);
    eq_backend_destroy(&f.be);
}
END_TEST

/* ---- fused bn_relu chains against the same graph unfused ------------------ */

/* A net with every kind of chain: the thin resnet18's blocks (BN -> ReLU,
 * BN -> add -> ReLU with the add's BN first or second, a block conv right
 * after the shortcut's ReLU so its gradient goes pending into the fused
 * op), plus relu(bn(x) + x) (the residual is the BN's input), a BN on the
 * graph input (no dx wanted) and a BN with two consumers (not fused). */
static int s_build_fusion_net(eq_layers *g, eq_err *err)
{
    int in = eq_layers_input(g, 2, 12, 12, 3, err);
    int a = eq_layers_bn(g, "bn0", in, err); /* input BN: dx not wanted */
    a = eq_layers_relu(g, a, err);
    a = eq_layers_conv(g, "c1", a, 16, 3, 1, 1, 1, NULL, NULL, false, err);
    int b = eq_layers_bn(g, "b1", a, err);
    b = eq_layers_add(g, b, a, err); /* relu(bn(a) + a): residual = BN input */
    b = eq_layers_relu(g, b, err);
    b = s_block(g, "layer1.0", b, 16, 1, 0, err);
    b = s_block(g, "layer1.1", b, 16, 1, 0, err);
    int t = eq_layers_conv(g, "c2", b, 20, 1, 2, 0, 1, NULL, NULL, false, err);
    t = eq_layers_bn(g, "b2", t, err); /* two consumers: not fused */
    int u = eq_layers_relu(g, t, err);
    u = eq_layers_conv(g, "c3", u, 20, 3, 1, 1, 1, NULL, NULL, false, err);
    u = eq_layers_bn(g, "b3", u, err);
    u = eq_layers_add(g, t, u, err); /* the BN second */
    u = eq_layers_relu(g, u, err);
    u = eq_layers_gap(g, u, err);
    return eq_layers_linear(g, "fc", u, 7, NULL, NULL, err);
}

/* The CPU backend with counting bn_relu members (to see the graph use them). */
static struct eq_backend_i s_count_iface;
static const struct eq_backend_i *s_cpu_iface;
static int s_nfwd, s_nbwd, s_nbwd_dy2;

static eq_status s_count_fwd(void *ctx, const eq_bn_desc *d, const float *x, const float *z,
                             const float *gamma, const float *beta, float *rm, float *rv, float *y,
                             float *sm, float *si, eq_err *err)
{
    s_nfwd++;
    return s_cpu_iface->bn_relu_fwd_train(ctx, d, x, z, gamma, beta, rm, rv, y, sm, si, err);
}

static eq_status s_count_bwd(void *ctx, const eq_bn_desc *d, const float *x, const float *y,
                             const float *dy, const float *dy2, const float *gamma, const float *sm,
                             const float *si, float *dx, float *dz, float *dg, float *db, eq_err *err)
{
    s_nbwd++;
    s_nbwd_dy2 += dy2 != NULL;
    return s_cpu_iface->bn_relu_bwd(ctx, d, x, y, dy, dy2, gamma, sm, si, dx, dz, dg, db, err);
}

START_TEST(test_fusion_same_bits)
{
    eq_err err = {0};
    for (int threads = 1; threads <= 2; threads++) {
        eq_backend *be = eq_backend_cpu_new(threads, &err);
        ck_assert_ptr_nonnull(be);
        s_cpu_iface = be->iface;
        s_count_iface = *be->iface;
        s_count_iface.bn_relu_fwd_train = s_count_fwd;
        s_count_iface.bn_relu_bwd = s_count_bwd;
        be->iface = &s_count_iface;
        s_nfwd = s_nbwd = s_nbwd_dy2 = 0;
        eq_layers *net[2];
        for (int f = 0; f < 2; f++) {
            net[f] = eq_layers_new(be, &err);
            ck_assert_ptr_nonnull(net[f]);
            OK(eq_layers_set_fusion(net[f], f == 1, &err));
            ck_assert_msg(s_build_fusion_net(net[f], &err) >= 0, "%s", err.msg);
            OK(eq_layers_finalize(net[f], 5, &err));
        }
        ck_assert_int_eq(eq_layers_set_fusion(net[1], false, &err), EQ_ERR_INVALID);
        const size_t nx = 2 * 12 * 12 * 3;
        float *x = eq_backend_alloc(be, nx * 4, &err);
        int32_t *y = eq_backend_alloc(be, 8, &err);
        float *xh = malloc(nx * 4);
        for (size_t i = 0; i < nx; i++) xh[i] = sinf(0.37f * (float)i) + 0.3f * cosf((float)i);
        int32_t yh[2] = {3, 6};
        OK(eq_backend_upload(be, x, xh, nx * 4, &err));
        OK(eq_backend_upload(be, y, yh, 8, &err));
        float loss[2], *out[2], *evl[2];
        int64_t sh[4];
        for (int f = 0; f < 2; f++) {
            /* two training steps' worth of forwards (the running stats move),
             * one backward, then an eval forward */
            OK(eq_layers_forward(net[f], x, true, &err));
            OK(eq_layers_forward(net[f], x, true, &err));
            OK(s_loss(net[f], be, y, 0.0f, &loss[f], &err));
            OK(eq_layers_backward(net[f], &err));
            out[f] = eq_layers_output(net[f], NULL, sh);
            out[f] = memcpy(malloc(14 * 4), out[f], 14 * 4);
            OK(eq_layers_forward(net[f], x, false, &err));
            evl[f] = memcpy(malloc(14 * 4), eq_layers_output(net[f], NULL, sh), 14 * 4);
        }
        /* 7 chains (see s_build_fusion_net), two forwards; the two block
         * inputs get their first conv's gradient as dy2 */
        ck_assert_int_eq(s_nfwd, 14);
        ck_assert_int_eq(s_nbwd, 7);
        ck_assert_int_eq(s_nbwd_dy2, 2);
        ck_assert_mem_eq(out[0], out[1], 14 * 4);
        ck_assert_mem_eq(evl[0], evl[1], 14 * 4);
        ck_assert_mem_eq(&loss[0], &loss[1], 4);
        ck_assert_uint_eq(eq_layers_tensor_count(net[0]), eq_layers_tensor_count(net[1]));
        for (size_t i = 0; i < eq_layers_tensor_count(net[0]); i++) {
            const eq_model_tensor *t0 = eq_layers_tensor_at(net[0], i), *t1 = eq_layers_tensor_at(net[1], i);
            ck_assert_str_eq(t0->name, t1->name);
            size_t bytes = t0->numel * (t0->dtype == EQ_DT_I64 ? 8 : 4);
            ck_assert_msg(memcmp(t0->data, t1->data, bytes) == 0, "%s differs fused", t0->name);
            if (t0->kind == EQ_MT_PARAM)
                ck_assert_msg(memcmp(t0->grad, t1->grad, bytes) == 0, "%s gradient differs fused",
                              t0->name);
        }
        ck_assert_int_eq(s_batches(net[1], "b1"), 2);
        for (int f = 0; f < 2; f++) {
            free(out[f]), free(evl[f]);
            eq_layers_destroy(&net[f]);
        }
        free(xh);
        eq_backend_release(be, x);
        eq_backend_release(be, y);
        be->iface = s_cpu_iface; /* eq_backend_cpu_pool and free see their own table */
        eq_backend_destroy(&be);
    }
}
END_TEST

/* ---- a zero-pad exact input quantizer -------------------------------------- */

/* Two convs with 2-bit LSQ weights and half-range inputs (pad 1, padding
 * before the quantizer): such an input quantizer maps 0 to 0 and its zeros
 * add nothing to the clip gradient, so the graph quantizes the unpadded
 * input and lets the conv pad.  The reference graph gets an L2
 * quantization loss with alpha 0 on its input quantizers -- the same
 * numbers, but not zero-pad exact, so it pads, quantizes 34x34-style and
 * crops.  Outputs, losses, every parameter and gradient (clip values
 * included) and the quantizers' padded outputs are compared bit for bit,
 * with 1 and 2 threads. */
static int s_build_qnet(eq_layers *g, const eq_quant_opts *wq, const eq_quant_opts *fq, eq_err *err)
{
    int x = eq_layers_input(g, 2, 9, 7, 8, err);
    x = eq_layers_conv(g, "c1", x, 16, 3, 1, 1, 1, wq, fq, false, err);
    x = eq_layers_bn(g, "b1", x, err);
    x = eq_layers_relu(g, x, err);
    x = eq_layers_conv(g, "c2", x, 12, 3, 2, 1, 1, wq, fq, false, err);
    x = eq_layers_bn(g, "b2", x, err);
    x = eq_layers_relu(g, x, err);
    x = eq_layers_gap(g, x, err);
    return eq_layers_linear(g, "fc", x, 5, NULL, NULL, err);
}

START_TEST(test_quant_zero_pad_exact)
{
    eq_err err = {0};
    eq_quant_opts wq, fq;
    eq_quant_opts_init(&wq, EQ_QTAG_WT);
    eq_quant_opts_init(&fq, EQ_QTAG_FM);
    OK(eq_quant_opts_set(&wq, "method", "lsq", &err));
    OK(eq_quant_opts_set(&wq, "bit", "2", &err));
    OK(eq_quant_opts_set(&fq, "method", "lsq", &err));
    OK(eq_quant_opts_set(&fq, "bit", "2", &err));
    for (int threads = 1; threads <= 2; threads++) {
        eq_backend *be = eq_backend_cpu_new(threads, &err);
        ck_assert_ptr_nonnull(be);
        eq_layers *net[2];
        for (int f = 0; f < 2; f++) {
            net[f] = eq_layers_new(be, &err);
            ck_assert_ptr_nonnull(net[f]);
            ck_assert_msg(s_build_qnet(net[f], &wq, &fq, &err) >= 0, "%s", err.msg);
            OK(eq_layers_finalize(net[f], 11, &err));
        }
        const char *conv[2] = {"c1", "c2"};
        for (int c = 0; c < 2; c++) {
            eq_quant *q0 = eq_layers_quant(net[0], conv[c], EQ_QTAG_FM);
            ck_assert(eq_quant_zero_pad_exact(q0));
            ck_assert(!eq_quant_zero_pad_exact(eq_layers_quant(net[0], conv[c], EQ_QTAG_WT)));
            eq_quant *q1 = eq_layers_quant(net[1], conv[c], EQ_QTAG_FM);
            OK(eq_quant_set_option(q1, "quant_loss_enable", "true", &err));
            OK(eq_quant_set_option(q1, "quant_loss_function", "L2", &err));
            OK(eq_quant_set_option(q1, "quant_loss_alpha", "0", &err));
            ck_assert(!eq_quant_zero_pad_exact(q1));
        }
        const size_t nx = 2 * 9 * 7 * 8;
        float *x = eq_backend_alloc(be, nx * 4, &err);
        int32_t *y = eq_backend_alloc(be, 8, &err);
        float *xh = malloc(nx * 4);
        for (size_t i = 0; i < nx; i++) xh[i] = sinf(0.37f * (float)i) + 0.6f * cosf(1.3f * (float)i);
        int32_t yh[2] = {1, 4};
        OK(eq_backend_upload(be, x, xh, nx * 4, &err));
        OK(eq_backend_upload(be, y, yh, 8, &err));
        float loss[2], *out[2], *qa[2][2];
        int64_t sh[4], qn[2][2];
        for (int f = 0; f < 2; f++) {
            OK(eq_layers_forward(net[f], x, true, &err));
            OK(s_loss(net[f], be, y, 0.0f, &loss[f], &err));
            out[f] = eq_layers_output(net[f], NULL, sh);
            out[f] = memcpy(malloc(10 * 4), out[f], 10 * 4);
            for (int c = 0; c < 2; c++) {
                const float *p = eq_layers_quant_output(net[f], conv[c], EQ_QTAG_FM, &qn[f][c]);
                ck_assert_ptr_nonnull(p);
                qa[f][c] = memcpy(malloc((size_t)qn[f][c] * 4), p, (size_t)qn[f][c] * 4);
            }
            OK(eq_layers_backward(net[f], &err));
        }
        ck_assert_mem_eq(out[0], out[1], 10 * 4);
        ck_assert_mem_eq(&loss[0], &loss[1], 4);
        for (int c = 0; c < 2; c++) {
            ck_assert_int_eq(qn[0][c], qn[1][c]);
            ck_assert_mem_eq(qa[0][c], qa[1][c], (size_t)qn[0][c] * 4);
        }
        ck_assert_int_eq(qn[0][0], 2 * 11 * 9 * 8); /* padded, as the quantizer would see it */
        for (size_t i = 0; i < eq_layers_tensor_count(net[0]); i++) {
            const eq_model_tensor *t0 = eq_layers_tensor_at(net[0], i), *t1 = eq_layers_tensor_at(net[1], i);
            ck_assert_str_eq(t0->name, t1->name);
            size_t bytes = t0->numel * (t0->dtype == EQ_DT_I64 ? 8 : 4);
            ck_assert_msg(memcmp(t0->data, t1->data, bytes) == 0, "%s differs", t0->name);
            if (t0->kind == EQ_MT_PARAM)
                ck_assert_msg(memcmp(t0->grad, t1->grad, bytes) == 0, "%s gradient differs", t0->name);
        }
        for (int f = 0; f < 2; f++) {
            free(out[f]), free(qa[f][0]), free(qa[f][1]);
            eq_layers_destroy(&net[f]);
        }
        free(xh);
        eq_backend_release(be, x);
        eq_backend_release(be, y);
        eq_backend_destroy(&be);
    }
}
END_TEST

START_TEST(test_builder_errors)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    eq_layers *net = eq_layers_new(be, &err);
    ck_assert_int_eq(eq_layers_relu(net, 0, &err), -1);
    eq_layers_destroy(&net);

    net = eq_layers_new(be, &err);
    int in = eq_layers_input(net, 2, 8, 8, 3, &err);
    ck_assert_int_eq(eq_layers_conv(net, "conv1", in, 8, 3, 1, 1, 2, NULL, NULL, false, &err), -1);
    ck_assert_msg(strstr(err.msg, "groups = 2 does not divide c = 3"), "%s", err.msg);
    ck_assert_int_eq(eq_layers_relu(net, in, &err), -1);
    ck_assert_msg(strstr(err.msg, "earlier builder call failed"), "%s", err.msg);
    eq_layers_destroy(&net);

    net = eq_layers_new(be, &err);
    in = eq_layers_input(net, 2, 8, 8, 3, &err);
    int c = eq_layers_conv(net, "a", in, 4, 3, 2, 1, 1, NULL, NULL, false, &err);
    ck_assert_int_eq(eq_layers_add(net, c, in, &err), -1);
    eq_layers_destroy(&net);

    net = eq_layers_new(be, &err);
    in = eq_layers_input(net, 2, 8, 8, 3, &err);
    c = eq_layers_conv(net, "a", in, 4, 3, 1, 1, 1, NULL, NULL, false, &err);
    ck_assert_int_eq(eq_layers_conv(net, "a", c, 4, 3, 1, 1, 1, NULL, NULL, false, &err), -1);
    ck_assert_msg(strstr(err.msg, "'a.weight' defined twice"), "%s", err.msg);
    eq_layers_destroy(&net);

    net = eq_layers_new(be, &err);
    ck_assert_int_eq(eq_layers_forward(net, NULL, true, &err), EQ_ERR_INVALID);
    in = eq_layers_input(net, 2, 4, 4, 1, &err);
    ck_assert_int_ge(eq_layers_linear(net, "fc", in, 3, NULL, NULL, &err), 0);
    OK(eq_layers_finalize(net, 1, &err));
    ck_assert_int_eq(eq_layers_relu(net, in, &err), -1);
    ck_assert_msg(strstr(err.msg, "finalized"), "%s", err.msg);
    eq_layers_destroy(&net);
    eq_layers_destroy(&net);
    eq_backend_destroy(&be);
}
END_TEST

START_TEST(test_resnet_names_and_init)
{
    /* full-width resnet18/34/50 built as above: torchvision's tensor names
     * and parameter counts, and the initialisation */
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    static const int r34[4] = {3, 4, 6, 3};
    const int *cfg[3] = {R18, r34, R50};
    const size_t expect_params[3] = {11689512, 21797672, 25557032}; /* torchvision, 1000 classes */
    for (int m = 0; m < 3; m++) {
        eq_layers *net = eq_layers_new(be, &err);
        /* 32x32 keeps the activations small; parameters do not depend on it */
        ck_assert_int_ge(s_build_resnet(net, m == 2, cfg[m], 64, 1000, 1, 32, 32, &err), 0);
        OK(eq_layers_finalize(net, 3, &err));
        size_t total = 0;
        for (size_t i = 0; i < eq_layers_tensor_count(net); i++) {
            const eq_model_tensor *t = eq_layers_tensor_at(net, i);
            if (t->kind == EQ_MT_PARAM) total += t->numel;
        }
        ck_assert_uint_eq(total, expect_params[m]);
        const eq_model_tensor *t = s_find(net, "layer2.0.downsample.0.weight");
        ck_assert_ptr_nonnull(t);
        ck_assert_int_eq(t->ndim, 4);
        ck_assert_int_eq(t->shape[0], m == 2 ? 512 : 128);
        ck_assert_int_eq(t->shape[1], m == 2 ? 256 : 64);
        ck_assert_ptr_nonnull(s_find(net, "layer4.1.bn2.running_var"));
        ck_assert_str_eq(eq_layers_tensor_at(net, 0)->name, "conv1.weight");
        ck_assert_str_eq(eq_layers_tensor_at(net, eq_layers_tensor_count(net) - 1)->name, "fc.bias");
        /* init: kaiming-normal fan_out for convs, BN ones/zeros */
        t = s_find(net, "layer3.0.conv2.weight");
        const float *w = t->data;
        double ss = 0;
        for (size_t i = 0; i < t->numel; i++) ss += (double)w[i] * w[i];
        double std = sqrt(ss / (double)t->numel), want = sqrt(2.0 / (256.0 * 9.0));
        ck_assert_msg(fabs(std - want) < 0.02 * want, "conv init std %g, want %g", std, want);
        t = s_find(net, "bn1.running_var");
        ck_assert_float_eq(((const float *)t->data)[5], 1.0f);
        eq_layers_destroy(&net);
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
    tcase_set_timeout(g, 60); /* full-width resnets: ~2 s of CPU */
    tcase_add_test(g, test_net_fd);
    tcase_add_test(g, test_fusion_same_bits);
    tcase_add_test(g, test_quant_zero_pad_exact);
    tcase_add_test(g, test_builder_errors);
    tcase_add_test(g, test_resnet_names_and_init);
    suite_add_tcase(s, g);
    return s;
}

int main(void)
{
    return eq_test_run(s_suite());
}
