/*
 * tests/check_amp.c -- mixed precision (doc/precision.md) on the CPU
 * backend, the reference semantics of every GPU kernel.
 *
 * 1. The CPU backend's round_to and nonfinite members against
 *    eq_precision_round and isfinite, bit for bit: random bit patterns,
 *    random values around fp16's limits and subnormals, and edge values
 *    (ties, 65504/65520, NaN payloads, fp32 denormals), 1 and 3 threads,
 *    each kernel width the CPU has (4-lane, AVX2, AVX-512F), unaligned
 *    lengths, in place.
 * 2. A small graph (conv, BN, ReLU, a residual add, a strided conv, an
 *    LSQ-quantized conv, max and average pooling, GAP, linear) in bf16 and
 *    fp16, fused and unfused: every stored activation and activation
 *    gradient, the rounded weight gradients and the logits hold values of
 *    the precision; with precision FP32 set explicitly, outputs and
 *    gradients are bitwise the default graph's.  A second graph covers the
 *    other node kinds (space-to-depth, padded and unpadded input
 *    quantizers, an output quantizer, PReLU, clamp, scalar affine, channel
 *    repeat, dropout, a quantized linear).
 * 3. Against PyTorch (tests/fixtures/trainer/amp/gen_amp.py): the same net
 *    with eq's rounding points written as explicit casts in torch (tight),
 *    unfused and fused, and under torch.autocast("cpu", bfloat16) (loose).
 * 4. fp16 loss scaling through eq_model_set_loss_scale: power-of-two scales
 *    scale every gradient exactly; an overflowing scale gives non-finite
 *    gradients (eq_backend_nonfinite > 0) and no error.
 * 5. The model zoo's other graphs (Bi-Real, Group-Net, TResNet stem,
 *    ReShapeResolution, Fixup, preBN + DCHR, MobileNet v1/v2), one training
 *    step and one eval forward each in bf16 and fp16: every stored value
 *    representable, every gradient finite.
 */
#include "core/config.h"
#include "trainer/cpu/cpu_internal.h" /* eq_cpu_round_isa */
#include "trainer/layers.h"
#include "trainer/model.h"
#include "tests/testutil.h"

#include <math.h>

#define OK(call)                                                              \
    do {                                                                      \
        eq_status s_ = (call);                                                \
        ck_assert_msg(s_ == EQ_OK, "%s failed: %s", #call, err.msg);          \
    } while (0)

static uint32_t s_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float s_flt(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static int s_representable(eq_precision p, const float *v, size_t n, size_t *bad)
{
    for (size_t i = 0; i < n; i++)
        if (s_bits(eq_precision_round(p, v[i])) != s_bits(v[i])) {
            if (bad) *bad = i;
            return 0;
        }
    return 1;
}

/* ---- 1. round_to / nonfinite --------------------------------------------- */

static const uint32_t S_EDGES[] = {
    0x00000000u, 0x80000000u, 0x00000001u, 0x807fffffu, 0x00400000u, /* zeros, fp32 denormals */
    0x3f808000u, 0x3f818000u, 0x3f80ffffu, 0x3f807fffu, 0xbf808000u, /* bf16 ties, near-ties */
    0x7f7fffffu, 0xff7fffffu, 0x7f7f8000u, 0x7f7f7fffu,             /* bf16 overflow to inf */
    0x7f800000u, 0xff800000u,                                        /* inf */
    0x7f800001u, 0x7fc00000u, 0xffc00001u, 0x7fbfffffu, 0x7f802000u, /* NaN payloads */
    0xff801fffu, 0x7fffffffu, 0xffffffffu, 0x7f801000u,
    0x477fe000u, 0x477fefffu, 0x477ff000u, 0x477fffffu, 0x47800000u, /* 65504 .. 65536 */
    0xc77ff000u, 0xc77fefffu,
    0x38800000u, 0x387fffffu, 0x38801000u, 0x38800fffu,             /* 2^-14, fp16's smallest normal */
    0x33800000u, 0x33000000u, 0x33000001u, 0x33400000u, 0x33c00000u, /* 2^-24 and ties below it */
    0x34200000u, 0xb3400000u, 0x2f000000u, 0x387fe000u, 0x387ff000u,
    0x3f801000u, 0x3f803000u, 0x3f800fffu,                           /* fp16 ties at 1 */
};

/* n values: the edges first, then a mix of random bit patterns, values
 * around fp16's range and subnormals, and ordinary ones. */
static float *s_round_inputs(uint64_t *seed, size_t n)
{
    float *x = malloc(n * sizeof *x + 64);
    ck_assert_ptr_nonnull(x);
    size_t ne = sizeof S_EDGES / sizeof S_EDGES[0];
    for (size_t i = 0; i < n; i++) {
        uint64_t r = eq_test_next(seed);
        float u = (float)((double)(r >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
        switch (i < ne ? 4 : (int)(r & 3)) {
        case 0: x[i] = s_flt((uint32_t)(r >> 32)); break;
        case 1: x[i] = u * 70000.0f; break;
        case 2: x[i] = u * 1.3e-4f; break;
        case 3: x[i] = u * 3.0f; break;
        default: x[i] = s_flt(S_EDGES[i]); break;
        }
    }
    return x;
}

/* The first i with y[i] != eq_precision_round(p, x[i]) bitwise, else n. */
static size_t s_first_diff(eq_precision p, const float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s_bits(y[i]) != s_bits(eq_precision_round(p, x[i]))) return i;
    return n;
}

/* generated by tests/fixtures/trainer/amp/gen_round_edges.py (torch 1.13.0a0) */
static const uint32_t S_TORCH_ROUND[][3] = {
    {0x00000000u, 0x00000000u, 0x00000000u},
    {0x80000000u, 0x80000000u, 0x80000000u},
    {0x00000001u, 0x00000000u, 0x00000000u},
    {0x807fffffu, 0x80800000u, 0x80000000u},
    {0x00400000u, 0x00400000u, 0x00000000u},
    {0x3f808000u, 0x3f800000u, 0x3f808000u},
    {0x3f818000u, 0x3f820000u, 0x3f818000u},
    {0x3f80ffffu, 0x3f810000u, 0x3f810000u},
    {0x3f807fffu, 0x3f800000u, 0x3f808000u},
    {0xbf808000u, 0xbf800000u, 0xbf808000u},
    {0x7f7fffffu, 0x7f800000u, 0x7f800000u},
    {0xff7fffffu, 0xff800000u, 0xff800000u},
    {0x7f7f8000u, 0x7f800000u, 0x7f800000u},
    {0x7f7f7fffu, 0x7f7f0000u, 0x7f800000u},
    {0x7f800000u, 0x7f800000u, 0x7f800000u},
    {0xff800000u, 0xff800000u, 0xff800000u},
    {0x7f800001u, 0x7fc00000u, 0x7fc00000u},
    {0x7fc00000u, 0x7fc00000u, 0x7fc00000u},
    {0xffc00001u, 0x7fc00000u, 0x7fc00000u},
    {0x7fbfffffu, 0x7fc00000u, 0x7fc00000u},
    {0x7f802000u, 0x7fc00000u, 0x7fc00000u},
    {0xff801fffu, 0x7fc00000u, 0x7fc00000u},
    {0x7fffffffu, 0x7fc00000u, 0x7fc00000u},
    {0xffffffffu, 0x7fc00000u, 0x7fc00000u},
    {0x7f801000u, 0x7fc00000u, 0x7fc00000u},
    {0x477fe000u, 0x47800000u, 0x477fe000u},
    {0x477fefffu, 0x47800000u, 0x477fe000u},
    {0x477ff000u, 0x47800000u, 0x7f800000u},
    {0x477fffffu, 0x47800000u, 0x7f800000u},
    {0x47800000u, 0x47800000u, 0x7f800000u},
    {0xc77ff000u, 0xc7800000u, 0xff800000u},
    {0xc77fefffu, 0xc7800000u, 0xc77fe000u},
    {0x38800000u, 0x38800000u, 0x38800000u},
    {0x387fffffu, 0x38800000u, 0x38800000u},
    {0x38801000u, 0x38800000u, 0x38800000u},
    {0x38800fffu, 0x38800000u, 0x38800000u},
    {0x33800000u, 0x33800000u, 0x33800000u},
    {0x33000000u, 0x33000000u, 0x00000000u},
    {0x33000001u, 0x33000000u, 0x33800000u},
    {0x33400000u, 0x33400000u, 0x33800000u},
    {0x33c00000u, 0x33c00000u, 0x34000000u},
    {0x34200000u, 0x34200000u, 0x34000000u},
    {0xb3400000u, 0xb3400000u, 0xb3800000u},
    {0x2f000000u, 0x2f000000u, 0x00000000u},
    {0x387fe000u, 0x38800000u, 0x38800000u},
    {0x387ff000u, 0x38800000u, 0x38800000u},
    {0x3f801000u, 0x3f800000u, 0x3f800000u},
    {0x3f803000u, 0x3f800000u, 0x3f804000u},
    {0x3f800fffu, 0x3f800000u, 0x3f800000u},
};

/* eq_precision_round against PyTorch's own casts on the edge values (an
 * outside reference: the other tests compare eq's implementations with
 * each other).  NaN results compare as NaN (torch canonicalises payloads). */
START_TEST(test_round_torch)
{
    size_t n = sizeof S_TORCH_ROUND / sizeof S_TORCH_ROUND[0];
    ck_assert_uint_eq(n, sizeof S_EDGES / sizeof S_EDGES[0]); /* regenerate the table after editing S_EDGES */
    for (size_t i = 0; i < n; i++) {
        ck_assert_uint_eq(S_TORCH_ROUND[i][0], S_EDGES[i]);
        float x = s_flt(S_TORCH_ROUND[i][0]);
        for (int p = 1; p <= 2; p++) {
            uint32_t want = S_TORCH_ROUND[i][p], got = s_bits(eq_precision_round((eq_precision)p, x));
            if (want == 0x7fc00000u) ck_assert_msg(isnan(s_flt(got)), "%s(0x%08x): 0x%08x, torch NaN",
                                                    eq_precision_name((eq_precision)p), S_EDGES[i], got);
            else ck_assert_msg(got == want, "%s(0x%08x): 0x%08x, torch 0x%08x",
                               eq_precision_name((eq_precision)p), S_EDGES[i], got, want);
        }
    }
}
END_TEST

START_TEST(test_round_members)
{
    static const int threads[2] = {1, 3};
    eq_cpu_round_isa(_i); /* 0 4-lane, 1 AVX2, 2 AVX-512F (capped at the CPU's) */
    eq_err err = {0};
    uint64_t seed = 0x616d70726f756e64ull;
    const size_t n = (size_t)3 * (1 << 17) + 7; /* 24 chunks and a tail */
    float *x = s_round_inputs(&seed, n), *y = malloc(n * sizeof *y + 64), *z = malloc(n * sizeof *z + 64);
    ck_assert_ptr_nonnull(y);
    ck_assert_ptr_nonnull(z);
    for (int t = 0; t < 2; t++) {
        eq_backend *be = eq_backend_cpu_new(threads[t], &err);
        ck_assert_msg(be && be->iface->round_to && be->iface->nonfinite, "cpu backend members");
        for (int p = EQ_PREC_FP32; p <= EQ_PREC_FP16; p++) {
            static const size_t lens[4] = {0, 1, 3, 0};
            size_t lenv[4] = {lens[0], lens[1], lens[2], n};
            for (int l = 0; l < 4; l++) {
                size_t m = lenv[l], off = l == 2 ? 5 : 0; /* an unaligned start too */
                if (m + off > n) m = n - off;
                memset(y, 0x5a, n * sizeof *y + 64);
                OK(eq_backend_round_to(be, (eq_precision)p, m, x + off, y + off, &err));
                /* one assertion per array: Check reports every assertion
                 * to its parent process */
                size_t bad = s_first_diff((eq_precision)p, x + off, y + off, m);
                ck_assert_msg(bad == m, "%s, %d threads, isa %d: x = 0x%08x -> 0x%08x, want 0x%08x",
                              eq_precision_name(p), threads[t], _i, s_bits(x[off + bad]), s_bits(y[off + bad]),
                              s_bits(eq_precision_round((eq_precision)p, x[off + bad])));
                ck_assert_uint_eq(s_bits(y[off + m]), 0x5a5a5a5au); /* nothing past the end */
            }
            /* in place */
            memcpy(z, x, n * sizeof *z);
            OK(eq_backend_round_to(be, (eq_precision)p, n, z, z, &err));
            ck_assert_uint_eq(s_first_diff((eq_precision)p, x, z, n), n);
        }
        /* nonfinite: the raw inputs (many NaN/inf bit patterns) and an fp16
         * rounding of them (overflowed values too); lengths 0, 3, n */
        memcpy(z, x, n * sizeof *z);
        for (size_t i = 0; i < n; i++) z[i] = eq_precision_round(EQ_PREC_FP16, z[i]);
        const float *srcs[2] = {x, z};
        for (int s = 0; s < 2; s++) {
            size_t lenv[3] = {0, 3, n};
            for (int l = 0; l < 3; l++) {
                int64_t want = 0, got = -1;
                for (size_t i = 0; i < lenv[l]; i++) want += !isfinite(srcs[s][i]);
                OK(eq_backend_nonfinite(be, lenv[l], srcs[s], &got, &err));
                ck_assert_int_eq(got, want);
            }
        }
        int64_t got = -1;
        for (size_t i = 0; i < n; i++) y[i] = (float)i * 0.5f;
        OK(eq_backend_nonfinite(be, n, y, &got, &err));
        ck_assert_int_eq(got, 0);
        eq_backend_destroy(&be);
    }
    free(x), free(y), free(z);
    eq_cpu_round_isa(-1);
}
END_TEST

/* ---- 2. the graph ---------------------------------------------------------- */

#define GN 2
#define GH 8
#define GCLS 10

static eq_quant_opts s_lsq(eq_quant_tag tag)
{
    eq_err err = {0};
    eq_quant_opts o;
    eq_quant_opts_init(&o, tag);
    OK(eq_quant_opts_set(&o, "method", "lsq", &err));
    OK(eq_quant_opts_set(&o, "bit", "3", &err));
    OK(eq_quant_opts_set(&o, "quant_group", "1", &err));
    return o;
}

/* The test net (names as in gen_amp.py):
 *   x [2][8][8][3] -> conv1 3x3 (8) -> bn1 -> relu  = r1
 *   r1 -> qconv 3x3 (8, LSQ 3-bit weight and input) -> bn2 -> + r1 -> relu = r2
 *   r2 -> conv3 3x3 stride 2 (16) -> bn3 -> relu -> maxpool 3/2/1
 *      -> avgpool 3/1/1 (count_include_pad) -> GAP -> fc (10) */
static eq_layers *s_net(eq_backend *be, int prec, int fuse, eq_err *err)
{
    eq_layers *g = eq_layers_new(be, err);
    if (!g) return NULL;
    if (prec >= 0 && eq_layers_set_precision(g, (eq_precision)prec, err) != EQ_OK) goto fail;
    if (eq_layers_set_fusion(g, fuse, err) != EQ_OK) goto fail;
    eq_quant_opts wq = s_lsq(EQ_QTAG_WT), fq = s_lsq(EQ_QTAG_FM);
    int x = eq_layers_input(g, GN, GH, GH, 3, err);
    x = eq_layers_conv(g, "conv1", x, 8, 3, 1, 1, 1, NULL, NULL, false, err);
    x = eq_layers_bn(g, "bn1", x, err);
    int r1 = eq_layers_relu(g, x, err);
    x = eq_layers_conv(g, "qconv", r1, 8, 3, 1, 1, 1, &wq, &fq, false, err);
    x = eq_layers_bn(g, "bn2", x, err);
    x = eq_layers_add(g, x, r1, err);
    x = eq_layers_relu(g, x, err);
    x = eq_layers_conv(g, "conv3", x, 16, 3, 2, 1, 1, NULL, NULL, false, err);
    x = eq_layers_bn(g, "bn3", x, err);
    x = eq_layers_relu(g, x, err);
    x = eq_layers_maxpool(g, x, 3, 2, 1, err);
    x = eq_layers_avgpool(g, x, 3, 1, 1, err);
    x = eq_layers_gap(g, x, err);
    x = eq_layers_linear(g, "fc", x, GCLS, NULL, NULL, err);
    if (x < 0 || eq_layers_finalize(g, 7, err) != EQ_OK) goto fail;
    return g;
fail:
    eq_layers_destroy(&g);
    return NULL;
}

static const eq_model_tensor *s_find(const eq_layers *g, const char *name)
{
    for (size_t i = 0; i < eq_layers_tensor_count(g); i++)
        if (!strcmp(eq_layers_tensor_at(g, i)->name, name)) return eq_layers_tensor_at(g, i);
    return NULL;
}

/* Forward (training), cross-entropy with labels, d/dlogits * scale,
 * backward; the loss in *loss. */
static void s_step(eq_layers *g, eq_backend *be, const float *x, const int32_t *labels, float scale,
                   float *loss)
{
    eq_err err = {0};
    OK(eq_layers_forward(g, x, true, &err));
    float *dy;
    int64_t sh[4];
    float *y = eq_layers_output(g, &dy, sh);
    eq_xent_desc d;
    OK(eq_xent_desc_init(&d, sh[0], sh[3], 0.0f, &err));
    float *dl = eq_backend_alloc(be, 16, &err);
    OK(eq_backend_xent_fwd(be, &d, y, labels, NULL, NULL, dl, &err));
    if (loss) OK(eq_backend_download(be, loss, dl, sizeof *loss, &err));
    OK(eq_backend_xent_bwd(be, &d, y, labels, NULL, NULL, scale, dy, &err));
    eq_backend_release(be, dl);
    OK(eq_layers_backward(g, &err));
}

static float *s_input(uint64_t *seed)
{
    return eq_test_vec(seed, (size_t)GN * GH * GH * 3, 2.0f);
}

static const int32_t S_LABELS[GN] = {3, 7};

START_TEST(test_graph_representable)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(2, &err);
    uint64_t seed = 0x6772617068ull;
    float *x = s_input(&seed);
    for (int p = EQ_PREC_BF16; p <= EQ_PREC_FP16; p++)
        for (int fuse = 0; fuse < 2; fuse++) {
            eq_layers *g = s_net(be, p, fuse, &err);
            ck_assert_msg(g != NULL, "%s", err.msg);
            ck_assert_int_eq(eq_layers_precision(g), p);
            s_step(g, be, x, S_LABELS, 1.0f, NULL);
            int nact = 0, ngrad = 0;
            for (int i = 1; i < eq_layers_node_count(g); i++) {
                const float *y, *dy;
                size_t n, bad = 0;
                ck_assert_int_eq(eq_layers_node_buffers(g, i, &y, &dy, &n), 0);
                ck_assert_msg(!y || s_representable(p, y, n, &bad), "%s fuse %d: node %d y[%zu] = %.9g",
                              eq_precision_name(p), fuse, i, bad, (double)y[bad]);
                ck_assert_msg(!dy || s_representable(p, dy, n, &bad), "%s fuse %d: node %d dy[%zu] = %.9g",
                              eq_precision_name(p), fuse, i, bad, (double)dy[bad]);
                nact += y != NULL, ngrad += dy != NULL;
            }
            /* 14 layers; fused: bn1, bn2, the add and bn3 store nothing */
            ck_assert_int_eq(nact, fuse ? 10 : 14);
            ck_assert_int_ge(ngrad, fuse ? 9 : 12);
            /* the rounded operands' gradients: conv/linear weights (not the
             * LSQ conv's: Qw's backward is fp32) and the linear bias */
            static const char *const rounded[4] = {"conv1.weight", "conv3.weight", "fc.weight", "fc.bias"};
            for (int k = 0; k < 4; k++) {
                const eq_model_tensor *t = s_find(g, rounded[k]);
                size_t bad = 0;
                ck_assert_msg(s_representable(p, t->grad, t->numel, &bad), "%s: %s grad[%zu]",
                              eq_precision_name(p), rounded[k], bad);
            }
            /* the master weights and the quantizer outputs stay fp32 */
            const eq_model_tensor *w = s_find(g, "conv1.weight");
            ck_assert(!s_representable(p, w->data, w->numel, NULL));
            int64_t nq = 0;
            const float *a = eq_layers_quant_output(g, "qconv", EQ_QTAG_FM, &nq);
            ck_assert(a && nq > 0 && !s_representable(EQ_PREC_BF16, a, (size_t)nq, NULL));
            eq_layers_destroy(&g);
        }
    free(x);
    eq_backend_destroy(&be);
}
END_TEST

/* The other node kinds: space-to-depth on the network input, a conv whose
 * LSQ input quantizer sees the unpadded input (the conv pads), one whose
 * full-range quantizer sees the padded input, an output quantizer, PReLU,
 * clamp, scalar affine, channel repeat, dropout in training, a linear with
 * an input quantizer. */
static eq_layers *s_net2(eq_backend *be, int prec, eq_err *err)
{
    eq_layers *g = eq_layers_new(be, err);
    if (!g || eq_layers_set_precision(g, (eq_precision)prec, err) != EQ_OK) goto fail;
    eq_quant_opts wq = s_lsq(EQ_QTAG_WT), fq = s_lsq(EQ_QTAG_FM), ffull = s_lsq(EQ_QTAG_FM), oq = s_lsq(EQ_QTAG_OT);
    ffull.half_range = 0;
    int x = eq_layers_input(g, GN, GH, GH, 4, err);
    x = eq_layers_space_to_depth(g, x, 2, err);
    int qa = x = eq_layers_conv(g, "qa", x, 8, 3, 1, 1, 1, &wq, &fq, false, err);
    if (x >= 0 && eq_layers_conv_output_quant(g, qa, &oq, err) != EQ_OK) goto fail;
    x = eq_layers_prelu(g, "pr", x, err);
    x = eq_layers_clamp(g, x, 0.0f, 0.3f, err); /* 0.3: not representable, rounded */
    x = eq_layers_conv(g, "qb", x, 8, 3, 1, 1, 1, NULL, &ffull, false, err);
    x = eq_layers_scalar_affine(g, "sa", "scale", "bias", x, err);
    x = eq_layers_channel_repeat(g, x, 2, err);
    x = eq_layers_dropout(g, x, 0.3, err);
    x = eq_layers_gap(g, x, err);
    x = eq_layers_linear(g, "fc2", x, GCLS, NULL, &fq, err);
    if (x < 0 || eq_layers_finalize(g, 11, err) != EQ_OK) goto fail;
    return g;
fail:
    eq_layers_destroy(&g);
    return NULL;
}

START_TEST(test_graph2_representable)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(2, &err);
    uint64_t seed = 0x6772617068ull;
    float *x = eq_test_vec(&seed, (size_t)GN * GH * GH * 4, 2.0f);
    for (int p = EQ_PREC_BF16; p <= EQ_PREC_FP16; p++) {
        eq_layers *g = s_net2(be, p, &err);
        ck_assert_msg(g != NULL, "%s", err.msg);
        s_step(g, be, x, S_LABELS, 1.0f, NULL);
        int ngrad = 0;
        for (int i = 1; i < eq_layers_node_count(g); i++) {
            const float *y, *dy;
            size_t n, bad = 0;
            ck_assert_int_eq(eq_layers_node_buffers(g, i, &y, &dy, &n), 0);
            ck_assert_msg(y && s_representable(p, y, n, &bad), "%s: node %d y[%zu] = %.9g",
                          eq_precision_name(p), i, bad, y ? (double)y[bad] : 0.0);
            ck_assert_msg(!dy || s_representable(p, dy, n, &bad), "%s: node %d dy[%zu] = %.9g",
                          eq_precision_name(p), i, bad, (double)dy[bad]);
            ngrad += dy != NULL;
        }
        ck_assert_int_eq(ngrad, eq_layers_node_count(g) - 1); /* every node but the input */
        int64_t nq = 0;
        ck_assert_ptr_nonnull(eq_layers_quant_output(g, "qa", EQ_QTAG_OT, &nq));
        for (size_t i = 0; i < eq_layers_tensor_count(g); i++) {
            const eq_model_tensor *t = eq_layers_tensor_at(g, i);
            int64_t nf = -1;
            if (!t->grad) continue;
            OK(eq_backend_nonfinite(be, t->numel, t->grad, &nf, &err));
            ck_assert_msg(nf == 0, "%s: %s", eq_precision_name(p), t->name);
        }
        eq_layers_destroy(&g);
    }
    free(x);
    eq_backend_destroy(&be);
}
END_TEST

START_TEST(test_graph_fp32_bitwise)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(2, &err);
    uint64_t seed = 0x6670333262ull;
    float *x = s_input(&seed);
    for (int fuse = 0; fuse < 2; fuse++) {
        eq_layers *g[2];
        float loss[2];
        for (int k = 0; k < 2; k++) {
            g[k] = s_net(be, k ? EQ_PREC_FP32 : -1, fuse, &err); /* -1: never set */
            ck_assert_msg(g[k] != NULL, "%s", err.msg);
            s_step(g[k], be, x, S_LABELS, 1.0f, &loss[k]);
        }
        ck_assert_uint_eq(s_bits(loss[0]), s_bits(loss[1]));
        int64_t sh[4];
        const float *y0 = eq_layers_output(g[0], NULL, sh), *y1 = eq_layers_output(g[1], NULL, sh);
        ck_assert_int_eq(memcmp(y0, y1, (size_t)(sh[0] * sh[3]) * sizeof *y0), 0);
        for (size_t i = 0; i < eq_layers_tensor_count(g[0]); i++) {
            const eq_model_tensor *a = eq_layers_tensor_at(g[0], i), *b = eq_layers_tensor_at(g[1], i);
            if (a->dtype != EQ_DT_F32) continue;
            ck_assert_msg(!memcmp(a->data, b->data, a->numel * 4), "%s", a->name);
            ck_assert_msg(!a->grad || !memcmp(a->grad, b->grad, a->numel * 4), "%s grad", a->name);
        }
        /* and fp32 values do not all happen to be representable */
        ck_assert(!s_representable(EQ_PREC_BF16, y0, (size_t)(sh[0] * sh[3]), NULL));
        eq_layers_destroy(&g[0]);
        eq_layers_destroy(&g[1]);
    }
    eq_layers *g = eq_layers_new(be, &err);
    ck_assert_int_eq(eq_layers_set_precision(g, (eq_precision)3, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "precision 3"), "%s", err.msg);
    eq_layers_destroy(&g);
    free(x);
    eq_backend_destroy(&be);
}
END_TEST

/* ---- 3. against PyTorch ---------------------------------------------------- */

static char s_fx[64]; /* fixture set, one of S_FIXTURES */

static float *s_load(const char *rel, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/trainer/amp/%s.f32", eq_test_srcdir(), rel);
    return eq_test_read_words(path, n);
}

/* emul_*: eq's rounding points as explicit casts in torch, for the unfused
 * graph and (_fused) the default one; autocast_bf16: torch.autocast. */
static const char *const S_FIXTURES[5] = {"emul_bf16", "emul_fp16", "autocast_bf16", "emul_bf16_fused",
                                          "emul_fp16_fused"};

START_TEST(test_torch)
{
    eq_err err = {0};
    snprintf(s_fx, sizeof s_fx, "%s", S_FIXTURES[_i]);
    const int prec = _i == 1 || _i == 4 ? EQ_PREC_FP16 : EQ_PREC_BF16, fuse = _i >= 3;
    /* explicit casts: only summation order differs (an fp32 result near a
     * rounding boundary flips now and then, see gen_amp.py; measured: loss
     * and logits bitwise, gradients <= 1.1e-4 bf16, 2.2e-7 fp16).
     * autocast: its forward is bitwise eq's here, but CPU autocast's bf16
     * backward kernels round intermediates (linear's input gradient,
     * avg_pool2d's accumulation), which BN's backward on a batch of 2
     * amplifies: loss and logits 1e-2, gradients 2e-2 (measured 1.34e-2,
     * bn2.bias; doc/precision.md) */
    const int verbose = getenv("EQ_AMP_VERBOSE") != NULL; /* report every error */
    const double tol = verbose ? 1e30 : _i == 2 ? 1e-2 : prec == EQ_PREC_BF16 ? 2e-3 : 4e-4;
    const double gtol = verbose ? 1e30 : _i == 2 ? 2e-2 : tol;
    eq_backend *be = eq_backend_cpu_new(2, &err);
    /* unfused: BN, add and ReLU each store (round) their output; fused:
     * each BN -> [add ->] ReLU chain rounds once */
    eq_layers *g = s_net(be, prec, fuse, &err);
    ck_assert_msg(g != NULL, "%s", err.msg);
    for (size_t i = 0; i < eq_layers_tensor_count(g); i++) {
        const eq_model_tensor *t = eq_layers_tensor_at(g, i);
        if (t->dtype != EQ_DT_F32 || (t->quant && t->kind != EQ_MT_PARAM)) continue; /* counters */
        char rel[256];
        snprintf(rel, sizeof rel, "param/%s", t->name);
        float *v = s_load(rel, t->numel);
        OK(eq_backend_upload(be, t->data, v, t->numel * 4, &err));
        free(v);
    }
    size_t nx = (size_t)GN * GH * GH * 3;
    float *x = s_load("x", nx);
    float loss;
    s_step(g, be, x, S_LABELS, 1.0f, &loss);
    char rel[256];
    snprintf(rel, sizeof rel, "%s/loss", s_fx);
    float *want = s_load(rel, 1);
    double e = fabs((double)loss - want[0]) / fabs((double)want[0]);
    if (verbose) fprintf(stderr, "%s loss %.3g\n", s_fx, e);
    ck_assert_msg(e <= tol, "%s: loss %.7g, torch %.7g (%.3g)", s_fx, (double)loss, (double)want[0], e);
    free(want);
    int64_t sh[4];
    const float *y = eq_layers_output(g, NULL, sh);
    snprintf(rel, sizeof rel, "%s/logits", s_fx);
    want = s_load(rel, (size_t)(GN * GCLS));
    e = eq_test_relerr(y, want, (size_t)(GN * GCLS));
    if (verbose) fprintf(stderr, "%s logits %.3g\n", s_fx, e);
    ck_assert_msg(e <= tol, "%s: logits relative error %.3g > %.3g", s_fx, e, tol);
    free(want);
    int ngrad = 0;
    for (size_t i = 0; i < eq_layers_tensor_count(g); i++) {
        const eq_model_tensor *t = eq_layers_tensor_at(g, i);
        if (!t->grad) continue;
        snprintf(rel, sizeof rel, "%s/grad/%s", s_fx, t->name);
        want = s_load(rel, t->numel);
        e = eq_test_relerr(t->grad, want, t->numel);
        if (verbose) fprintf(stderr, "%s %s %.3g\n", s_fx, t->name, e);
        ck_assert_msg(e <= gtol, "%s: %s gradient relative error %.3g > %.3g", s_fx, t->name, e, gtol);
        free(want);
        ngrad++;
    }
    ck_assert_int_eq(ngrad, 13); /* 3 convs, 3 BN pairs, fc's pair, 2 LSQ clips */
    free(x);
    eq_layers_destroy(&g);
    eq_backend_destroy(&be);
}
END_TEST

/* ---- 4. fp16 loss scaling through the model ------------------------------- */

static eq_model *s_model(eq_backend *be, int prec, eq_err *err)
{
    eq_model_cfg cfg;
    eq_config_section secs[EQ_MODEL_CONFIG_NSECTIONS];
    eq_model_config_sections(&cfg, NULL, NULL, secs);
    if (eq_config_defaults(secs, EQ_MODEL_CONFIG_NSECTIONS, err) != EQ_OK) return NULL;
    snprintf(cfg.arch, sizeof cfg.arch, "resnet20");
    snprintf(cfg.keyword[0], sizeof cfg.keyword[0], "cbas");
    cfg.nkeyword = 1;
    cfg.num_classes = 10;
    cfg.width_alpha = 0.25; /* 16 channels: the CIFAR ResNet-20 */
    cfg.precision = prec;
    return eq_model_new(be, &cfg, NULL, NULL, 4, 16, 16, err);
}

/* Forward, loss and backward with `scale`; the gradients (host copies) in
 * one array. */
static float *s_model_grads(eq_model *m, const float *x, const int32_t *labels, float scale, size_t *ng)
{
    eq_err err = {0};
    OK(eq_model_set_loss_scale(m, scale, &err));
    OK(eq_model_forward(m, x, true, &err));
    float loss;
    OK(eq_model_loss(m, labels, NULL, NULL, 0.0f, &loss, &err));
    OK(eq_model_backward(m, NULL, &err));
    size_t total = 0;
    for (size_t i = 0; i < eq_model_tensor_count(m); i++)
        if (eq_model_tensor_at(m, i)->grad) total += eq_model_tensor_at(m, i)->numel;
    float *gr = malloc(total * sizeof *gr), *p = gr;
    for (size_t i = 0; i < eq_model_tensor_count(m); i++) {
        const eq_model_tensor *t = eq_model_tensor_at(m, i);
        if (!t->grad) continue;
        memcpy(p, t->grad, t->numel * sizeof *p);
        p += t->numel;
    }
    *ng = total;
    return gr;
}

START_TEST(test_loss_scale_fp16)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(2, &err);
    eq_model *m = s_model(be, EQ_PREC_FP16, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    uint64_t seed = 0x7363616c65ull;
    float *x = eq_test_vec(&seed, (size_t)4 * 16 * 16 * 3, 1.5f);
    static const int32_t labels[4] = {1, 4, 9, 0};
    /* BN running statistics move with each training forward, the
     * gradients do not depend on them.  At scale 1 many fp16 activation
     * gradients fall into fp16's subnormals (or to 0) and lose bits; for
     * this net and batch the scales from 2^12 to 2^16 are exact multiples
     * of each other, 2^17 overflows somewhere: 2^13 and 2^15 leave a binade
     * on each side */
    size_t n1, n2;
    float *g1 = s_model_grads(m, x, labels, 8192.0f, &n1);
    float *g2 = s_model_grads(m, x, labels, 32768.0f, &n2);
    ck_assert_uint_eq(n1, n2);
    int64_t nf = -1;
    OK(eq_backend_nonfinite(be, n1, g1, &nf, &err));
    ck_assert_int_eq(nf, 0);
    size_t i = 0;
    while (i < n1 && s_bits(g2[i]) == s_bits(g1[i] * 4.0f)) i++;
    ck_assert_msg(i == n1, "gradient %zu: %.9g at 2^15, %.9g at 2^13", i, (double)g2[i], (double)g1[i]);
    free(g2);
    /* overflow: 2^40 * d/dlogits is far beyond 65504 */
    g2 = s_model_grads(m, x, labels, 1099511627776.0f, &n2);
    OK(eq_backend_nonfinite(be, n2, g2, &nf, &err));
    ck_assert_int_gt(nf, 0);
    free(g1), free(g2);
    /* bf16 has fp32's range: 2^40 scales exactly */
    eq_model_destroy(&m);
    m = s_model(be, EQ_PREC_BF16, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    g1 = s_model_grads(m, x, labels, 1.0f, &n1);
    g2 = s_model_grads(m, x, labels, 1099511627776.0f, &n2);
    i = 0;
    while (i < n1 && s_bits(g2[i]) == s_bits(g1[i] * 1099511627776.0f)) i++;
    ck_assert_msg(i == n1, "bf16 gradient %zu", i);
    free(g1), free(g2), free(x);
    eq_model_destroy(&m);
    /* a bad precision in the config is refused, naming it */
    ck_assert_ptr_null(s_model(be, 7, &err));
    ck_assert_msg(strstr(err.msg, "precision 7"), "%s", err.msg);
    eq_backend_destroy(&be);
}
END_TEST

/* ---- 5. every architecture and keyword family -------------------------------- */

/* The model zoo's other graphs in bf16 and fp16, one training step (scale
 * 1) and one eval forward each: Bi-Real's layer-wise shortcuts with PReLU,
 * Group-Net's branches, the TResNet space-to-depth stem, ReShapeResolution,
 * Fixup's scalar affines (no BN), pre-activation with DCHR channel copies,
 * MobileNet v1/v2's depthwise convs (quantized, with dropout; fp16 at loss
 * scale 2^-8, see below): every
 * activation and activation gradient each node stores, and the eval
 * forward's, holds values of the precision; every gradient is finite. */
static const struct {
    const char *arch, *kw;
    int64_t base, hw;
    bool quant;
    double dropout;
} S_ZOO[] = {
    {"resnet20", "origin,cbsa,fix_pooling,singleconv,fix,real_skip", 1, 8, true, 0.0},
    {"resnet20", "cbsa,singleconv,real_skip,PReLU", 1, 8, true, 0.0}, /* Bi-Real */
    {"resnet20", "cabs,fix,group-net,singleconv", 2, 8, true, 0.0},
    {"resnet20", "origin,cbsa,TResNetStem", 1, 16, true, 0.0},
    {"resnet20", "origin,cbsa,ReShapeResolution", 1, 8, true, 0.0},
    {"resnet20", "origin,cbsa,fix,fixup,bias,singleconv", 1, 8, false, 0.0},
    {"resnet20", "origin,preBN,bacs,DCHR", 1, 8, true, 0.0},
    {"mobilenet-v1", "cifar10", 1, 16, true, 0.0},
    {"mobilenet-v2", "cifar10", 1, 16, true, 0.25},
};

static void s_kwlist(eq_model_cfg *c, const char *list)
{
    c->nkeyword = 0;
    while (*list) {
        const char *e = strchr(list, ',');
        size_t len = e ? (size_t)(e - list) : strlen(list);
        snprintf(c->keyword[c->nkeyword++], sizeof c->keyword[0], "%.*s", (int)len, list);
        list = e ? e + 1 : list + len;
    }
}

/* Every node's stored y (and dy when `grads`) holds values of p. */
static void s_nodes_representable(eq_model *m, eq_precision p, bool grads, const char *what)
{
    const eq_layers *g = eq_model_layers(m);
    ck_assert_ptr_nonnull(g);
    ck_assert_int_eq(eq_layers_precision(g), p);
    int ny = 0;
    for (int i = 1; i < eq_layers_node_count(g); i++) {
        const float *y, *dy;
        size_t n, bad = 0;
        ck_assert_int_eq(eq_layers_node_buffers(g, i, &y, grads ? &dy : NULL, &n), 0);
        ck_assert_msg(!y || s_representable(p, y, n, &bad), "%s %s: node %d y[%zu] = %.9g", what,
                      eq_precision_name(p), i, bad, (double)y[bad]);
        ck_assert_msg(!grads || !dy || s_representable(p, dy, n, &bad), "%s %s: node %d dy[%zu] = %.9g", what,
                      eq_precision_name(p), i, bad, (double)dy[bad]);
        ny += y != NULL;
    }
    ck_assert_int_gt(ny, 3);
}

START_TEST(test_zoo)
{
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(2, &err);
    int z = _i / 2;
    eq_precision p = _i % 2 ? EQ_PREC_FP16 : EQ_PREC_BF16;
    eq_model_cfg cfg;
    eq_model_quant_cfg wt, fm;
    eq_config_section secs[EQ_MODEL_CONFIG_NSECTIONS];
    eq_model_config_sections(&cfg, &wt, &fm, secs);
    OK(eq_config_defaults(secs, EQ_MODEL_CONFIG_NSECTIONS, &err));
    snprintf(cfg.arch, sizeof cfg.arch, "%s", S_ZOO[z].arch);
    s_kwlist(&cfg, S_ZOO[z].kw);
    cfg.width_alpha = 0.125;
    cfg.num_classes = 10;
    cfg.base = S_ZOO[z].base;
    cfg.dropout = S_ZOO[z].dropout;
    cfg.seed = 3;
    cfg.precision = p;
    wt.enable = fm.enable = S_ZOO[z].quant;
    snprintf(wt.method, sizeof wt.method, "lsq");
    snprintf(fm.method, sizeof fm.method, "lsq");
    wt.bit = fm.bit = 3;
    int64_t hw = S_ZOO[z].hw;
    char what[160];
    snprintf(what, sizeof what, "%s [%s]", S_ZOO[z].arch, S_ZOO[z].kw);
    eq_model *m = eq_model_new(be, &cfg, &wt, &fm, GN, hw, hw, &err);
    ck_assert_msg(m != NULL, "%s: %s", what, err.msg);
    uint64_t seed = 0x7a6f6fu + (uint64_t)z;
    float *x = eq_test_vec(&seed, (size_t)(GN * hw * hw * 3), 2.0f);
    float loss;
    /* fp16: these nets on a batch of 2 have activation gradients up to
     * 1.6e5 (MobileNet v2, measured in bf16) and a stem weight gradient
     * beyond fp16's 65504 at 2^-4: scale by 2^-8, as the dynamic scaler
     * would after enough back-offs */
    OK(eq_model_set_loss_scale(m, p == EQ_PREC_FP16 ? 0x1p-8f : 1.0f, &err));
    OK(eq_model_forward(m, x, true, &err));
    OK(eq_model_loss(m, S_LABELS, NULL, NULL, 0.1f, &loss, &err));
    OK(eq_model_backward(m, NULL, &err));
    ck_assert_msg(isfinite(loss), "%s: loss %g", what, (double)loss);
    s_nodes_representable(m, p, true, what);
    for (size_t i = 0; i < eq_model_tensor_count(m); i++) {
        const eq_model_tensor *t = eq_model_tensor_at(m, i);
        int64_t nf = -1;
        if (!t->grad || !t->numel) continue;
        OK(eq_backend_nonfinite(be, t->numel, t->grad, &nf, &err));
        ck_assert_msg(nf == 0, "%s %s: %s has %lld non-finite gradients", what, eq_precision_name(p), t->name,
                      (long long)nf);
    }
    OK(eq_model_forward(m, x, false, &err)); /* eval */
    s_nodes_representable(m, p, false, what);
    int64_t nb, nc;
    const float *logits = eq_model_logits(m, &nb, &nc);
    ck_assert_ptr_nonnull(logits);
    ck_assert(s_representable(p, logits, (size_t)(nb * nc), NULL));
    free(x);
    eq_model_destroy(&m);
    eq_backend_destroy(&be);
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("amp");
    TCase *r = tcase_create("round");
    tcase_set_timeout(r, 30); /* ~0.3 s of CPU */
    tcase_add_test(r, test_round_torch);
    tcase_add_loop_test(r, test_round_members, 0, 3);
    suite_add_tcase(s, r);
    TCase *g = tcase_create("graph");
    tcase_set_timeout(g, 30);
    tcase_add_test(g, test_graph_representable);
    tcase_add_test(g, test_graph2_representable);
    tcase_add_test(g, test_graph_fp32_bitwise);
    tcase_add_loop_test(g, test_torch, 0, 5);
    tcase_add_test(g, test_loss_scale_fp16);
    tcase_add_loop_test(g, test_zoo, 0, 2 * (int)(sizeof S_ZOO / sizeof S_ZOO[0]));
    suite_add_tcase(s, g);
    return s;
}

int main(void)
{
    return eq_test_run(s_suite());
}
