/*
 * trainer/model.c -- the [model] / [quant.*] config schemas and the model
 * builders: torchvision's ResNets (torch-resnetNN, the original's
 * models/resnet.py) and the original's flexible ResNet (resnetNN,
 * models/resnet_.py, ORIGINAL.md §3.2) with its structure keywords.
 */
#include "trainer/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"
#include "trainer/layers.h"

/* ---- config schemas ------------------------------------------------------ */

static const eq_config_key s_model_keys[] = {
    EQ_CONFIG_STRING_KEY(eq_model_cfg, arch, "resnet20",
                         "torch-resnet18/34/50 (torchvision names), resnet18/34/50/101, resnet20/32/44/56, "
                         "mobilenet-v1, mobilenet-v2 (torchvision names)"),
    EQ_CONFIG_STRING_LIST_KEY(eq_model_cfg, keyword, nkeyword, "", 0,
                              "structure keywords (origin, preBN, cbsa, fix, ...; doc/models.md)"),
    EQ_CONFIG_INT_KEY(eq_model_cfg, num_classes, "10", 1, 1000000, "classifier outputs"),
    EQ_CONFIG_INT_KEY(eq_model_cfg, in_channels, "3", 1, 64, "input image channels (1 for Fashion-MNIST)"),
    EQ_CONFIG_FLOAT_KEY(eq_model_cfg, width_alpha, "1.0", 0.01, 16.0,
                        "first stage width = int(64 * width_alpha) (the CIFAR ResNet-20 configs use 0.25)"),
    EQ_CONFIG_BOOL_KEY(eq_model_cfg, quant_first_last, "false",
                       "quantize the stem conv and the classifier too (keyword first-last does the same)"),
    EQ_CONFIG_BOOL_KEY(eq_model_cfg, padding_after_quant, "false",
                       "zero-pad after the activation quantizer instead of before"),
    EQ_CONFIG_INT_KEY(eq_model_cfg, seed, "0", 0, INT64_MAX, "parameter initialisation seed"),
    EQ_CONFIG_INT_KEY(eq_model_cfg, base, "1", 1, 64,
                      "Group-Net: parallel branches per BasicBlock, summed with learnable scales (init 1/base)"),
    EQ_CONFIG_STRING_KEY(eq_model_cfg, order, "c",
                         "ReShapeResolution: the shrink of strided blocks, from c (space-to-depth + "
                         "conv 1x1), b (BN), a (activation), e.g. cb"),
    EQ_CONFIG_FLOAT_KEY(eq_model_cfg, dropout, "0", 0.0, 0.99,
                        "dropout probability on the classifier's input in training (torchvision's MobileNet v2 "
                        "uses 0.2); 0 = none"),
    EQ_CONFIG_INT_KEY(eq_model_cfg, stem_kernel, "1", 1, 3,
                      "TResNetStem/TResNetStemMaxPool: kernel of the conv after space-to-depth (1 or 3)"),
};

static const char *const s_half_range_choices[] = {"default", "true", "false", NULL};
static const char *const s_adaptive_choices[] = {"none", "var", "mean", "mean-var", "var-mean", "min", NULL};
static const char *const s_grad_type_choices[] = {"none", "STE", "Triangle", "STE-scale", NULL};
static const char *const s_grad_scale_choices[] = {"none",          "fan-scale",     "scale-fan",
                                                   "element-scale", "scale-element", NULL};
static const char *const s_custom_choices[] = {"none", "channel", "resolution", NULL};
static const char *const s_lq_codes_choices[] = {"floor", "zero", NULL};

#define Q eq_model_quant_cfg
static const eq_config_key s_quant_keys[] = {
    EQ_CONFIG_BOOL_KEY(Q, enable, "false", "quantize this tag (otherwise it is the identity)"),
    EQ_CONFIG_STRING_KEY(Q, method, "dorefa", "dorefa, bin, pact, lsq, lsq-step, nonuniform, xnor, lqnet"),
    EQ_CONFIG_FLOAT_KEY(Q, bit, "32", 1.0, 32.0, "bit width (levels 2^bit unless level is set)"),
    EQ_CONFIG_INT_KEY(Q, level, "0", 0, 65536, "explicit level count (0: from bit)"),
    EQ_CONFIG_ENUM_KEY(Q, half_range, "default", s_half_range_choices,
                       "unsigned range [0, c] (default: on for fm, off for wt and ot)"),
    EQ_CONFIG_FLOAT_KEY(Q, boundary, "1.0", 0.0, 1e6, "initial / fixed clip value"),
    EQ_CONFIG_FLOAT_KEY(Q, scale, "0.5", -1e6, 1e6, "multi-use multiplier (doc/quantizers.md)"),
    EQ_CONFIG_INT_KEY(Q, quant_group, "0", -1000000, 1000000, "parameter groups (0: the method's default)"),
    EQ_CONFIG_ENUM_KEY(Q, adaptive, "none", s_adaptive_choices, "pre-normalisation of the tensor"),
    EQ_CONFIG_ENUM_KEY(Q, grad_type, "none", s_grad_type_choices, "surrogate gradient"),
    EQ_CONFIG_ENUM_KEY(Q, grad_scale, "none", s_grad_scale_choices, "gradient scaling of the clip parameter"),
    EQ_CONFIG_ENUM_KEY(Q, custom, "none", s_custom_choices, "XNOR activation scale type"),
    EQ_CONFIG_BOOL_KEY(Q, gamma, "false", "learnable output scale"),
    EQ_CONFIG_BOOL_KEY(Q, custom_update, "false", "cumulative mean instead of EMA (LQ-Net, closed form)"),
    EQ_CONFIG_BOOL_KEY(Q, closed_form, "false", "nonuniform fm: least-squares output scale"),
    EQ_CONFIG_BOOL_KEY(Q, progressive, "false", "a level change rescales clip_val"),
    EQ_CONFIG_BOOL_KEY(Q, independent_norm, "false", "var-mean statistics per layer even if grouped"),
    EQ_CONFIG_INT_KEY(Q, stable, "0", 0, INT64_MAX, "warm-up iterations returning x and initialising clips"),
    EQ_CONFIG_FLOAT_KEY(Q, correlate, "-1", -1e6, 1e6, "> 0: multiplies max|x| in the warm-up clip init"),
    EQ_CONFIG_BOOL_KEY(Q, exact_grad_scale, "false", "apply grad-scale factors f with int(f) == 1 (the original skips them)"),
    EQ_CONFIG_BOOL_KEY(Q, warmup_train_only, "false", "eval forwards never count, warm up or return x"),
    EQ_CONFIG_FLOAT_KEY(Q, norm_eps, "0", 0.0, 1.0, "var-mean epsilon (0 in the original)"),
    EQ_CONFIG_ENUM_KEY(Q, lq_codes, "floor", s_lq_codes_choices,
                       "lqnet: codes the basis update sees (zero = the original under torch >= 1.5)"),
};
#undef Q

void eq_model_config_sections_ot(eq_model_cfg *m, eq_model_quant_cfg *wt, eq_model_quant_cfg *fm,
                                 eq_model_quant_cfg *ot,
                                 eq_config_section secs[EQ_MODEL_CONFIG_NSECTIONS_OT])
{
    eq_model_config_sections(m, wt, fm, secs);
    secs[3] = (eq_config_section){"quant.ot", "output quantizer of every quantized conv (custom_conv's quant_output)",
                                  s_quant_keys, EQ_CONFIG_NKEYS(s_quant_keys), ot};
}

void eq_model_config_sections(eq_model_cfg *m, eq_model_quant_cfg *wt, eq_model_quant_cfg *fm,
                              eq_config_section secs[EQ_MODEL_CONFIG_NSECTIONS])
{
    if (m) m->precision = EQ_PREC_FP32; /* no [model] key: the caller sets it after loading */
    secs[0] = (eq_config_section){"model", "the network (doc/models.md)", s_model_keys,
                                  EQ_CONFIG_NKEYS(s_model_keys), m};
    secs[1] = (eq_config_section){"quant.wt", "weight quantizer of every quantized conv/linear",
                                  s_quant_keys, EQ_CONFIG_NKEYS(s_quant_keys), wt};
    secs[2] = (eq_config_section){"quant.fm", "input (activation) quantizer of every quantized conv/linear",
                                  s_quant_keys, EQ_CONFIG_NKEYS(s_quant_keys), fm};
}

/* Translate a [quant.*] section into quant's option record, through
 * eq_quant_opts_set so quant/ stays the authority on values. */
static eq_status s_quant_opts(const eq_model_quant_cfg *c, eq_quant_tag tag, eq_quant_opts *o,
                              eq_err *err)
{
    eq_quant_opts_init(o, tag);
    char v[64];
    const char *sec = tag == EQ_QTAG_WT ? "quant.wt" : tag == EQ_QTAG_FM ? "quant.fm" : "quant.ot";
#define SET(key, ...)                                                                      \
    do {                                                                                   \
        snprintf(v, sizeof v, __VA_ARGS__);                                                \
        if (eq_quant_opts_set(o, key, v, err) != EQ_OK) return eq_err_prefix(err, "[%s] ", sec); \
    } while (0)
#define B(x) ((x) ? "true" : "false")
    SET("method", "%s", c->method);
    SET("bit", "%.17g", c->bit);
    SET("level", "%lld", (long long)c->level);
    if (c->half_range) SET("half_range", "%s", c->half_range == 1 ? "true" : "false");
    SET("boundary", "%.17g", c->boundary);
    SET("scale", "%.17g", c->scale);
    SET("quant_group", "%lld", (long long)c->quant_group);
    SET("adaptive", "%s", s_adaptive_choices[c->adaptive]);
    SET("grad_type", "%s", s_grad_type_choices[c->grad_type]);
    SET("grad_scale", "%s", s_grad_scale_choices[c->grad_scale]);
    SET("custom", "%s", s_custom_choices[c->custom]);
    SET("gamma", "%s", B(c->gamma));
    SET("custom_update", "%s", B(c->custom_update));
    SET("closed_form", "%s", B(c->closed_form));
    SET("progressive", "%s", B(c->progressive));
    SET("independent_norm", "%s", B(c->independent_norm));
    SET("stable", "%lld", (long long)c->stable);
    SET("correlate", "%.17g", c->correlate);
    SET("exact_grad_scale", "%s", B(c->exact_grad_scale));
    SET("warmup_train_only", "%s", B(c->warmup_train_only));
    SET("norm_eps", "%.17g", c->norm_eps);
    SET("lq_codes", "%s", s_lq_codes_choices[c->lq_codes]);
#undef SET
#undef B
    return EQ_OK;
}

/* ---- builder context ------------------------------------------------------ */

enum s_order { O_CBAS, O_CBSA, O_CABS, O_BACS, O_BCAS, O_NONE };

typedef struct s_build {
    eq_layers *g;
    const eq_model_cfg *cfg;
    eq_quant_opts wq, fq, oq;
    int has_wq, has_fq, has_oq;
    int origin, prebn, fix, fix_pooling, singleconv, real_skip, prelu, nrelu, cifar, first_last;
    int real_dp, real_pt; /* MobileNet: depthwise / pointwise convs in full precision */
    int tresnet;          /* 1: TResNetStem (space-to-depth 4), 2: TResNetStemMaxPool (2 + max-pool) */
    int fixup, fbias;     /* Fixup: no BN, scalar multiplier; with `bias` the scalar biases */
    int groupnet;         /* group-net: the stem BN has no activation */
    int ldn;              /* ReShapeResolution: strided blocks start with a lossless shrink */
    int dchr;             /* DCHR: parameter-free shortcuts (avg-pool + channel copies) */
    enum s_order order;
    eq_err *err;
} s_build;

static int s_has(const eq_model_cfg *c, const char *kw)
{
    for (size_t i = 0; i < c->nkeyword; i++)
        if (!strcmp(c->keyword[i], kw)) return 1;
    return 0;
}

static const char *const s_supported_kw[] = {
    "origin", "preBN", "cbas", "cbsa", "cabs", "bacs", "bcas", "fix", "fix_pooling", "singleconv",
    "real_skip", "PReLU", "NReLU", "cifar10", "cifar100", "first-last", "real_dp", "real_pt", "TResNetStem",
    "TResNetStemMaxPool", "fixup", "bias", "group-net", "ReShapeResolution", "DCHR", "zir", NULL};

/* The keywords a MobileNet takes (the others shape ResNet blocks). */
static const char *const s_mobile_kw[] = {"cifar10", "cifar100", "first-last", "real_dp", "real_pt", NULL};

static eq_status s_check_keywords(const eq_model_cfg *c, eq_err *err)
{
    for (size_t i = 0; i < c->nkeyword; i++) {
        int ok = 0;
        for (size_t k = 0; s_supported_kw[k]; k++) ok |= !strcmp(c->keyword[i], s_supported_kw[k]);
        if (!ok)
            return eq_err_set(err, EQ_ERR_INVALID,
                              "[model] keyword: '%s' (item %zu) is unknown or not implemented; "
                              "supported: origin, preBN, cbas, cbsa, cabs, bacs, bcas, fix, "
                              "fix_pooling, singleconv, real_skip, PReLU, NReLU, cifar10, cifar100, "
                              "first-last, real_dp, real_pt, TResNetStem, TResNetStemMaxPool, fixup, bias, "
                              "group-net, ReShapeResolution, DCHR, zir "
                              "(quantizer methods go in "
                              "[quant.wt]/[quant.fm] method)",
                              c->keyword[i], i + 1);
    }
    return EQ_OK;
}

/* Activation A per the actv() factory: ReLU, PReLU (named), or identity
 * for NReLU. */
static int s_act(s_build *b, const char *name, int x)
{
    if (x < 0) return x;
    if (b->nrelu) return x;
    if (b->prelu) return eq_layers_prelu(b->g, name, x, b->err);
    return eq_layers_relu(b->g, x, b->err);
}

/* Quantized conv unless fp. */
static int s_convg(s_build *b, const char *name, int x, int64_t k, int64_t r, int64_t s, int64_t p,
                   int64_t groups, int fp)
{
    if (x < 0) return x;
    int y = eq_layers_conv(b->g, name, x, k, r, s, p, groups, fp || !b->has_wq ? NULL : &b->wq,
                           fp || !b->has_fq ? NULL : &b->fq, b->cfg->padding_after_quant, b->err);
    if (y >= 0 && !fp && b->has_oq && eq_layers_conv_output_quant(b->g, y, &b->oq, b->err) != EQ_OK) return -1;
    return y;
}

static int s_conv(s_build *b, const char *name, int x, int64_t k, int64_t r, int64_t s, int64_t p,
                  int fp)
{
    return s_convg(b, name, x, k, r, s, p, 1, fp);
}

/* The classifier: [model] dropout (when > 0) on its input, as
 * torchvision's MobileNet v2 classifier (Dropout, Linear), then the
 * linear layer, quantized unless fp. */
static int s_classifier(s_build *b, const char *name, int x, int fp)
{
    if (x >= 0 && b->cfg->dropout > 0.0) x = eq_layers_dropout(b->g, x, b->cfg->dropout, b->err);
    if (x < 0) return x;
    return eq_layers_linear(b->g, name, x, b->cfg->num_classes, fp || !b->has_wq ? NULL : &b->wq,
                            fp || !b->has_fq ? NULL : &b->fq, b->err);
}

static int64_t s_chan(s_build *b, int x)
{
    int64_t sh[4] = {0, 0, 0, 0};
    eq_layers_shape(b->g, x, sh);
    return sh[3];
}

#define NM(buf, ...) snprintf(buf, sizeof buf, __VA_ARGS__)

/* ---- torchvision ResNet (torch-resnetNN) ---------------------------------- */

static int s_tv_block(s_build *b, const char *pfx, int x, int64_t planes, int64_t stride,
                      int bottleneck)
{
    char n[160];
    int64_t inplanes = s_chan(b, x), out = bottleneck ? planes * 4 : planes;
    int h = x;
    if (bottleneck) {
        NM(n, "%s.conv1", pfx), h = s_conv(b, n, h, planes, 1, 1, 0, 0);
        if (h >= 0) NM(n, "%s.bn1", pfx), h = eq_layers_bn(b->g, n, h, b->err);
        h = s_act(b, NULL, h);
        NM(n, "%s.conv2", pfx), h = s_conv(b, n, h, planes, 3, stride, 1, 0);
        if (h >= 0) NM(n, "%s.bn2", pfx), h = eq_layers_bn(b->g, n, h, b->err);
        h = s_act(b, NULL, h);
        NM(n, "%s.conv3", pfx), h = s_conv(b, n, h, out, 1, 1, 0, 0);
        if (h >= 0) NM(n, "%s.bn3", pfx), h = eq_layers_bn(b->g, n, h, b->err);
    } else {
        NM(n, "%s.conv1", pfx), h = s_conv(b, n, h, planes, 3, stride, 1, 0);
        if (h >= 0) NM(n, "%s.bn1", pfx), h = eq_layers_bn(b->g, n, h, b->err);
        h = s_act(b, NULL, h);
        NM(n, "%s.conv2", pfx), h = s_conv(b, n, h, planes, 3, 1, 1, 0);
        if (h >= 0) NM(n, "%s.bn2", pfx), h = eq_layers_bn(b->g, n, h, b->err);
    }
    int skip = x;
    if (h >= 0 && (stride != 1 || inplanes != out)) {
        NM(n, "%s.downsample.0", pfx), skip = s_conv(b, n, x, out, 1, stride, 0, b->real_skip);
        if (skip >= 0) NM(n, "%s.downsample.1", pfx), skip = eq_layers_bn(b->g, n, skip, b->err);
    }
    if (h < 0 || skip < 0) return -1;
    h = eq_layers_add(b->g, h, skip, b->err);
    return s_act(b, NULL, h);
}

static int s_build_torch_resnet(s_build *b, const int blocks[4], int bottleneck, int64_t w0,
                                int x)
{
    if (b->tresnet || b->fixup || b->fbias || b->groupnet || b->ldn || b->cfg->base > 1)
        return eq_err_set(b->err, EQ_ERR_INVALID,
                          "[model] TResNetStem/TResNetStemMaxPool/fixup/bias/group-net/ReShapeResolution and base > 1: apply to the "
                          "resnetNN family, not to torchvision's ResNet"),
               -1;
    if (b->prelu)
        return eq_err_set(b->err, EQ_ERR_INVALID,
                          "[model] keyword PReLU: torch-resnet shares one activation module per "
                          "block; use the resnetNN family for PReLU"),
               -1;
    int fp = !b->first_last;
    x = s_conv(b, "conv1", x, w0, 7, 2, 3, fp);
    if (x >= 0) x = eq_layers_bn(b->g, "bn1", x, b->err);
    x = s_act(b, NULL, x);
    if (x >= 0) x = eq_layers_maxpool(b->g, x, 3, 2, 1, b->err);
    for (int st = 0; st < 4 && x >= 0; st++)
        for (int i = 0; i < blocks[st] && x >= 0; i++) {
            char pfx[64];
            NM(pfx, "layer%d.%d", st + 1, i);
            x = s_tv_block(b, pfx, x, w0 << st, i == 0 && st > 0 ? 2 : 1, bottleneck);
        }
    if (x >= 0) x = eq_layers_gap(b->g, x, b->err);
    if (x >= 0)
        x = s_classifier(b, "fc", x, fp);
    return x;
}

/* ---- the original's flexible ResNet (resnetNN) ----------------------------- */

/* One step of a layer-order helper (ORIGINAL.md §3.1): conv, act, bn in the
 * block's order, then +skip (skip >= 0), then for cbsa the activation. */
static int s_seq(s_build *b, int x, const char *conv, int64_t k, int64_t r, int64_t s,
                 const char *bn, const char *act, int use_act, int skip)
{
    int p = r / 2;
    switch (b->order) {
    case O_CBAS:
        x = s_conv(b, conv, x, k, r, s, p, 0);
        if (x >= 0) x = eq_layers_bn(b->g, bn, x, b->err);
        if (use_act) x = s_act(b, act, x);
        break;
    case O_CBSA:
        x = s_conv(b, conv, x, k, r, s, p, 0);
        if (x >= 0) x = eq_layers_bn(b->g, bn, x, b->err);
        if (x >= 0 && skip >= 0) x = eq_layers_add(b->g, x, skip, b->err);
        skip = -1;
        if (use_act) x = s_act(b, act, x);
        break;
    case O_CABS:
        x = s_conv(b, conv, x, k, r, s, p, 0);
        if (use_act) x = s_act(b, act, x);
        if (x >= 0) x = eq_layers_bn(b->g, bn, x, b->err);
        break;
    case O_BCAS:
        x = eq_layers_bn(b->g, bn, x, b->err);
        x = s_conv(b, conv, x, k, r, s, p, 0);
        if (use_act) x = s_act(b, act, x);
        break;
    case O_BACS:
    default:
        x = eq_layers_bn(b->g, bn, x, b->err);
        if (use_act) x = s_act(b, act, x);
        x = s_conv(b, conv, x, k, r, s, p, 0);
        break;
    }
    if (x >= 0 && skip >= 0) x = eq_layers_add(b->g, x, skip, b->err);
    return x;
}

/* The shortcut (ORIGINAL.md §3.2.3): returns x itself when none is needed. */
static int s_skip(s_build *b, const char *pfx, int x, int64_t out, int64_t s)
{
    int64_t in = s_chan(b, x);
    if (s == 1 && in == out) return x;
    if (b->dchr) { /* AvgPool(s) or identity, out/in copies concatenated */
        if (s != 1) x = eq_layers_avgpool(b->g, x, s, s, 0, b->err);
        if (x < 0 || in == out) return x;
        if (out % in)
            return eq_err_set(b->err, EQ_ERR_INVALID, "%s: DCHR needs the output width %lld to be a multiple of "
                              "the input width %lld", pfx, (long long)out, (long long)in), -1;
        return eq_layers_channel_repeat(b->g, x, out / in, b->err);
    }
    char n[160];
    int idx = 0;
    int pre = b->order == O_BACS || b->order == O_BCAS;
    int conv_s = b->singleconv ? s : 1;
    if (s != 1 && !(b->singleconv && in != out)) {
        x = eq_layers_avgpool(b->g, x, s, s, 0, b->err);
        idx++;
    }
    if (in == out || x < 0) return x;
    if (pre) {
        NM(n, "%s.downsample.%d", pfx, idx++), x = eq_layers_bn(b->g, n, x, b->err);
        if (b->order == O_BACS) NM(n, "%s.downsample.%d", pfx, idx++), x = s_act(b, n, x);
        NM(n, "%s.downsample.%d", pfx, idx++), x = s_conv(b, n, x, out, 1, conv_s, 0, b->real_skip);
        if (b->order == O_BCAS) NM(n, "%s.downsample.%d", pfx, idx++), x = s_act(b, n, x);
        if (b->fix && x >= 0) NM(n, "%s.downsample.%d", pfx, idx++), x = eq_layers_bn(b->g, n, x, b->err);
    } else {
        NM(n, "%s.downsample.%d", pfx, idx++), x = s_conv(b, n, x, out, 1, conv_s, 0, b->real_skip);
        if (x >= 0) NM(n, "%s.downsample.%d", pfx, idx++), x = eq_layers_bn(b->g, n, x, b->err);
        if (!b->fix) NM(n, "%s.downsample.%d", pfx, idx++), x = s_act(b, n, x);
    }
    return x;
}

/* ReShapeResolution's shrink (ORIGINAL.md 3.2.5) for a block with stride
 * s to `out` channels, from [model] order: c = space-to-depth by s + conv
 * 1x1 (I*s*s -> out; FP iff real_skip), b = BN, a = activation, as the
 * Sequential "<pfx>.shrink.N". */
static int s_shrink(s_build *b, const char *pfx, int x, int64_t out, int64_t s)
{
    char n[160];
    const char *o = b->cfg->order;
    for (int i = 0; o[i] && x >= 0; i++) {
        NM(n, "%s.shrink.%d", pfx, i);
        if (o[i] == 'c') {
            x = eq_layers_space_to_depth(b->g, x, s, b->err);
            x = s_conv(b, n, x, out, 1, 1, 0, b->real_skip);
        } else if (o[i] == 'b') {
            x = eq_layers_bn(b->g, n, x, b->err);
        } else {
            x = s_act(b, n, x);
        }
    }
    return x;
}

static int s_xx_block(s_build *b, const char *pfx, int x, int64_t planes, int64_t s, int bottleneck)
{
    char c1[160], c2[160], c3[160], b1[160], b2[160], b3[160], a1[160], a2[160], a3[160], n[160];
    NM(c1, "%s.conv1", pfx), NM(c2, "%s.conv2", pfx), NM(c3, "%s.conv3", pfx);
    NM(b1, "%s.bn1", pfx), NM(b2, "%s.bn2", pfx), NM(b3, "%s.bn3", pfx);
    NM(a1, "%s.act1", pfx), NM(a2, "%s.act2", pfx), NM(a3, "%s.act3", pfx);
    int post = b->order == O_CBAS || b->order == O_CBSA;
    int pre = b->order == O_BACS || b->order == O_BCAS;
    int64_t out = bottleneck ? 4 * planes : planes;
    if (b->ldn && s != 1) { /* shrink first; the block then runs at stride 1, I = O */
        x = s_shrink(b, pfx, x, out, s);
        s = 1;
        if (x < 0) return -1;
    }
    int r = s_skip(b, pfx, x, out, s);
    if (r < 0) return -1;
    int last_act = !(b->fix && post);
    int o;
    if (bottleneck) {
        if (!b->origin)
            return eq_err_set(b->err, EQ_ERR_INVALID,
                              "%s: the bottleneck block needs keyword origin (layer-wise "
                              "residuals do not fit its channel counts)", pfx),
                   -1;
        int h = s_seq(b, x, c1, planes, 1, 1, b1, a1, 1, -1);
        h = s_seq(b, h, c2, planes, 3, s, b2, a2, 1, -1);
        o = s_seq(b, h, c3, out, 1, 1, b3, a3, last_act, -1);
    } else {
        /* `base` parallel branches (Group-Net): o = sum_j scales.j * o_j */
        int64_t nb = b->cfg->base > 1 ? b->cfg->base : 1;
        o = -1;
        for (int64_t j = 0; j < nb; j++) {
            if (nb > 1) {
                NM(c1, "%s.conv1.%lld", pfx, (long long)j), NM(c2, "%s.conv2.%lld", pfx, (long long)j);
                NM(b1, "%s.bn1.%lld", pfx, (long long)j), NM(b2, "%s.bn2.%lld", pfx, (long long)j);
                NM(a1, "%s.act1.%lld", pfx, (long long)j), NM(a2, "%s.act2.%lld", pfx, (long long)j);
            }
            int h, oj;
            if (b->origin) {
                h = s_seq(b, x, c1, planes, 3, s, b1, a1, 1, -1);
                oj = s_seq(b, h, c2, planes, 3, 1, b2, a2, last_act, -1);
            } else { /* Bi-Real: a residual around every conv */
                h = s_seq(b, x, c1, planes, 3, s, b1, a1, 1, r);
                oj = s_seq(b, h, c2, planes, 3, 1, b2, a2, last_act, h);
            }
            if (oj >= 0 && nb > 1) {
                char sc[48];
                NM(sc, "scales.%lld", (long long)j);
                oj = eq_layers_scalar_affine(b->g, pfx, sc, NULL, oj, b->err);
            }
            if (oj < 0) return -1;
            o = j == 0 ? oj : eq_layers_add(b->g, o, oj, b->err);
            if (o < 0) return -1;
        }
        if (!b->origin) return o;
    }
    if (o >= 0 && b->fix && pre) NM(n, "%s.fix_bn", pfx), o = eq_layers_bn(b->g, n, o, b->err);
    if (o >= 0) o = eq_layers_add(b->g, o, r, b->err);
    if (o >= 0 && b->fix && post) NM(n, "%s.fix_relu", pfx), o = s_act(b, n, o);
    return o;
}

/* Scalar bias "<pfx>.<name>" (Fixup with `bias`), or x itself. */
static int s_fbias(s_build *b, const char *pfx, const char *name, int x)
{
    if (x < 0 || !b->fbias) return x;
    return eq_layers_scalar_affine(b->g, pfx, NULL, name, x, b->err);
}

/* Fixup residual block (ORIGINAL.md 3.3 G; names as the Fixup reference
 * code: bias1a, bias1b, ..., scale).  BasicBlock:
 *   x' = x + b1a;  h = ReLU(conv1(x') + b1b) + b2a;  o = conv2(h)*m + b2b
 * BottleNeck:
 *   h1 = ReLU(conv1(x') + b1b) + b2a;  h2 = ReLU(conv2(h1) + b2b) + b3a;  o = conv3(h2)*m + b3b
 * out = ReLU(o + r), r = x, or the shortcut conv of x' (no BN; avg-pool
 * first unless singleconv). */
static int s_fixup_block(s_build *b, const char *pfx, int x, int64_t planes, int64_t s,
                         int bottleneck)
{
    char n[160];
    int64_t in = s_chan(b, x), out = bottleneck ? 4 * planes : planes;
    int xa = s_fbias(b, pfx, "bias1a", x);
    int r = x;
    if (s != 1 || in != out) {
        int idx = 0;
        r = xa;
        if (s != 1 && !b->singleconv) r = eq_layers_avgpool(b->g, r, s, s, 0, b->err), idx++;
        if (in != out) {
            NM(n, "%s.downsample.%d", pfx, idx);
            r = s_conv(b, n, r, out, 1, b->singleconv ? s : 1, 0, b->real_skip);
        }
    }
    int h = xa;
    /* the biases after conv i and after its ReLU, for the convs before the last */
    static const char *const ab[2][2] = {{"bias1b", "bias2a"}, {"bias2b", "bias3a"}};
    int nconv = bottleneck ? 3 : 2;
    for (int i = 0; i < nconv && h >= 0; i++) {
        int last = i == nconv - 1;
        int64_t k = last ? out : planes, r3 = bottleneck && i != 1 ? 1 : 3;
        int64_t st = (bottleneck ? i == 1 : i == 0) ? s : 1;
        NM(n, "%s.conv%d", pfx, i + 1), h = s_conv(b, n, h, k, r3, st, r3 / 2, 0);
        if (last) {
            if (h >= 0)
                h = eq_layers_scalar_affine(b->g, pfx, "scale", b->fbias ? (bottleneck ? "bias3b" : "bias2b") : NULL,
                                            h, b->err);
        } else {
            h = s_fbias(b, pfx, ab[i][0], h);
            h = h >= 0 ? eq_layers_relu(b->g, h, b->err) : h;
            h = s_fbias(b, pfx, ab[i][1], h);
        }
    }
    if (h < 0 || r < 0) return -1;
    h = eq_layers_add(b->g, h, r, b->err);
    return h >= 0 ? eq_layers_relu(b->g, h, b->err) : h;
}

static int s_build_resnetxx(s_build *b, const int *blocks, int nstages, int bottleneck, int64_t w0,
                            int x)
{
    if (b->fbias && !b->fixup)
        return eq_err_set(b->err, EQ_ERR_INVALID, "[model] keyword bias: needs fixup"), -1;
    if (b->ldn) {
        const char *o = b->cfg->order;
        int nc = 0, bad = !*o;
        for (int i = 0; o[i]; i++) nc += o[i] == 'c', bad |= !strchr("cba", o[i]);
        if (bad || nc != 1)
            return eq_err_set(b->err, EQ_ERR_INVALID,
                              "[model] order: '%s' must hold one c and otherwise b or a "
                              "(ReShapeResolution's shrink)", o),
                   -1;
        if (bottleneck || b->fixup)
            return eq_err_set(b->err, EQ_ERR_INVALID,
                              "[model] keyword ReShapeResolution: BasicBlocks without fixup only"),
                   -1;
    }
    if (b->cfg->base > 1 && (bottleneck || b->fixup))
        return eq_err_set(b->err, EQ_ERR_INVALID,
                          "[model] base: %lld branches exist for the BasicBlock without fixup only",
                          (long long)b->cfg->base),
               -1;
    if (b->fixup && (!b->origin || b->order != O_CBSA || b->prebn))
        return eq_err_set(b->err, EQ_ERR_INVALID,
                          "[model] keyword fixup: implemented for the original's recipe "
                          "origin, cbsa (no preBN)"),
               -1;
    if (b->order == O_NONE)
        return eq_err_set(b->err, EQ_ERR_INVALID,
                          "[model] keyword: %s needs a layer order keyword (cbas, cbsa, cabs, "
                          "bacs or bcas)", b->cfg->arch),
               -1;
    /* BN widths of the blocks: the pre-activation orders normalise the
     * block input, so a block's bn1 has I channels (handled by s_seq). */
    int fp = !b->first_last;
    if (b->tresnet) { /* space-to-depth, then a full-precision conv (ORIGINAL.md 3.2.1) */
        int64_t k = b->cfg->stem_kernel;
        if (k != 1 && k != 3)
            return eq_err_set(b->err, EQ_ERR_INVALID, "[model] stem_kernel: %lld must be 1 or 3",
                              (long long)k),
                   -1;
        x = eq_layers_space_to_depth(b->g, x, b->tresnet == 1 ? 4 : 2, b->err);
        x = s_conv(b, "conv1", x, w0, k, 1, k / 2, 1);
    } else if (b->cifar) {
        x = s_conv(b, "conv1", x, w0, 3, 1, 1, fp);
    } else {
        x = s_conv(b, "conv1", x, w0, 7, 2, 3, fp);
    }
    int stem_bn = !b->prebn, pool = b->tresnet ? b->tresnet == 2 : !b->cifar;
    if (b->fixup) { /* ReLU(x + b1) instead of BN + act */
        if (x >= 0 && !b->fix_pooling && pool) x = eq_layers_maxpool(b->g, x, 3, 2, 1, b->err);
        x = s_fbias(b, "", "bias1", x);
        if (x >= 0) x = eq_layers_relu(b->g, x, b->err);
        if (x >= 0 && b->fix_pooling && pool) x = eq_layers_maxpool(b->g, x, 3, 2, 1, b->err);
    } else if (x >= 0 && b->fix_pooling) {
        if (stem_bn) x = eq_layers_bn(b->g, "bn1", x, b->err), x = b->groupnet ? x : s_act(b, "relu", x);
        if (x >= 0 && pool) x = eq_layers_maxpool(b->g, x, 3, 2, 1, b->err);
    } else if (x >= 0) {
        if (pool) x = eq_layers_maxpool(b->g, x, 3, 2, 1, b->err);
        if (x >= 0 && stem_bn)
            x = eq_layers_bn(b->g, "bn1", x, b->err), x = b->groupnet ? x : s_act(b, "relu", x);
    }
    for (int st = 0; st < nstages && x >= 0; st++)
        for (int i = 0; i < blocks[st] && x >= 0; i++) {
            char pfx[64];
            NM(pfx, "layer%d.%d", st + 1, i);
            x = b->fixup ? s_fixup_block(b, pfx, x, w0 << st, i == 0 && st > 0 ? 2 : 1, bottleneck)
                         : s_xx_block(b, pfx, x, w0 << st, i == 0 && st > 0 ? 2 : 1, bottleneck);
        }
    if (x >= 0 && b->prebn) x = eq_layers_bn(b->g, "bn2", x, b->err);
    if (x >= 0) x = eq_layers_gap(b->g, x, b->err);
    if (b->fixup) x = s_fbias(b, "", "bias2", x);
    if (x >= 0)
        x = s_classifier(b, "fc", x, fp);
    return x;
}

/* ---- MobileNet v1 / v2 ------------------------------------------------------ */

/* conv -> BN -> activation (ReLU, or ReLU6 when relu6) under "<pfx>.<ci>",
 * "<pfx>.<ci+1>". */
static int s_cba(s_build *b, const char *pfx, int ci, int x, int64_t k, int64_t r, int64_t s,
                 int64_t groups, int fp, int relu6)
{
    char n[160];
    NM(n, "%s.%d", pfx, ci), x = s_convg(b, n, x, k, r, s, (r - 1) / 2, groups, fp);
    if (x >= 0) NM(n, "%s.%d", pfx, ci + 1), x = eq_layers_bn(b->g, n, x, b->err);
    if (x < 0) return x;
    return relu6 ? eq_layers_clamp(b->g, x, 0.0f, 6.0f, b->err) : eq_layers_relu(b->g, x, b->err);
}

/* MobileNet v1 (Howard et al. 2017) in the layout of the common PyTorch
 * port (model.N.* Sequential, fc): stem conv 3x3/2 + BN + ReLU, 13
 * depthwise-separable blocks (dw 3x3 + BN + ReLU as model.i.0/.1, pw 1x1 +
 * BN + ReLU as model.i.3/.4), global average pool, fc. */
static int s_build_mobilenet_v1(s_build *b, int x)
{
    static const int64_t cfg[13][2] = {{64, 1},  {128, 2}, {128, 1}, {256, 2}, {256, 1},
                                       {512, 2}, {512, 1}, {512, 1}, {512, 1}, {512, 1},
                                       {512, 1}, {1024, 2}, {1024, 1}};
    double a = b->cfg->width_alpha;
    int64_t c0 = (int64_t)(32 * a) > 0 ? (int64_t)(32 * a) : 1;
    x = s_cba(b, "model.0", 0, x, c0, 3, b->cifar ? 1 : 2, 1, !b->first_last, 0);
    for (int i = 0; i < 13 && x >= 0; i++) {
        char pfx[32];
        NM(pfx, "model.%d", i + 1);
        int64_t in = s_chan(b, x), out = (int64_t)(cfg[i][0] * a) > 0 ? (int64_t)(cfg[i][0] * a) : 1;
        x = s_cba(b, pfx, 0, x, in, 3, cfg[i][1], in, b->real_dp, 0);
        x = s_cba(b, pfx, 3, x, out, 1, 1, 1, b->real_pt, 0);
    }
    if (x >= 0) x = eq_layers_gap(b->g, x, b->err);
    int fp = !b->first_last;
    if (x >= 0)
        x = s_classifier(b, "fc", x, fp);
    return x;
}

/* torchvision's _make_divisible(v, 8). */
static int64_t s_divisible(double v)
{
    int64_t nv = (int64_t)(v + 4.0) / 8 * 8;
    if (nv < 8) nv = 8;
    if ((double)nv < 0.9 * v) nv += 8;
    return nv;
}

/* torchvision.models.mobilenet_v2 (names, layouts, order): features.0 stem
 * conv 3x3/2 + BN + ReLU6; features.1..17 inverted residuals (expand 1x1
 * conv.0 when t > 1, depthwise 3x3 conv.{0|1}, projection 1x1 + BN without
 * activation; identity residual when stride 1 and in == out); features.18
 * conv 1x1 to 1280 + BN + ReLU6; global average pool; classifier.0 dropout
 * ([model] dropout; torchvision's 0.2 only when configured) and
 * classifier.1. */
static int s_build_mobilenet_v2(s_build *b, int x)
{
    static const int64_t set[7][4] = {{1, 16, 1, 1},  {6, 24, 2, 2},  {6, 32, 3, 2}, {6, 64, 4, 2},
                                      {6, 96, 3, 1},  {6, 160, 3, 2}, {6, 320, 1, 1}};
    double a = b->cfg->width_alpha;
    int fl = b->first_last;
    x = s_cba(b, "features.0", 0, x, s_divisible(32 * a), 3, b->cifar ? 1 : 2, 1, !fl, 1);
    int idx = 1;
    for (int si = 0; si < 7 && x >= 0; si++) {
        int64_t out = s_divisible((double)set[si][1] * a);
        int64_t st0 = b->cifar && si == 1 ? 1 : set[si][3];
        for (int64_t i = 0; i < set[si][2] && x >= 0; i++, idx++) {
            char pfx[48], n[160];
            int64_t in = s_chan(b, x), stride = i == 0 ? st0 : 1, t = set[si][0];
            int64_t hid = (int64_t)llround((double)in * (double)t);
            int h = x, ci = 0;
            NM(pfx, "features.%d.conv", idx);
            if (t != 1) {
                NM(n, "%s.%d", pfx, ci++);
                h = s_cba(b, n, 0, h, hid, 1, 1, 1, b->real_pt, 1);
            }
            NM(n, "%s.%d", pfx, ci++);
            h = s_cba(b, n, 0, h, hid, 3, stride, hid, b->real_dp, 1);
            NM(n, "%s.%d", pfx, ci++), h = s_conv(b, n, h, out, 1, 1, 0, b->real_pt);
            if (h >= 0) NM(n, "%s.%d", pfx, ci++), h = eq_layers_bn(b->g, n, h, b->err);
            if (h >= 0 && stride == 1 && in == out) h = eq_layers_add(b->g, h, x, b->err);
            x = h;
        }
    }
    char n[32];
    NM(n, "features.%d", idx);
    int64_t last = s_divisible(1280.0 * (a > 1.0 ? a : 1.0));
    if (x >= 0) x = s_cba(b, n, 0, x, last, 1, 1, 1, b->real_pt, 1);
    if (x >= 0) x = eq_layers_gap(b->g, x, b->err);
    if (x >= 0)
        x = s_classifier(b, "classifier.1", x, !fl);
    return x;
}

/* ---- the model ------------------------------------------------------------- */

struct eq_model {
    eq_backend *be;
    eq_layers *g;
    float *dev_loss;
    int have_dlogits;
    /* eq_model_loss_async: the loss on its way to the host */
    eq_backend_event *loss_ev; /* made on first use */
    float loss_host;           /* download_async's destination */
    double loss_aux;           /* the quantization losses of that forward */
    int loss_pending;
    float loss_scale; /* eq_model_set_loss_scale: d loss/d logits is multiplied by it */
    char summary[256];
    /* gradient-ready hook (eq_model_set_grad_hook) */
    size_t ng;              /* tensors with a gradient */
    size_t *gorder;         /* [ng]: their indices in the order backward finishes them */
    size_t *grange;         /* [2 nnodes]: node k's are gorder[grange[2k] .. grange[2k + 1]) */
    int nnodes;             /* layer nodes that own gradients (0: the layers report none) */
    unsigned char *gdone;   /* [tensor count]: reported in the backward running now */
    eq_model_grad_fn *grad_fn;
    void *grad_arg;
};

typedef struct s_arch {
    const char *name;
    int torch, bottleneck, nstages, cifar;
    int blocks[4];
    int mobile; /* 1: MobileNet v1, 2: v2 */
} s_arch;

static const s_arch s_archs[] = {
    {"torch-resnet18", 1, 0, 4, 0, {2, 2, 2, 2}, 0}, {"torch-resnet34", 1, 0, 4, 0, {3, 4, 6, 3}, 0},
    {"torch-resnet50", 1, 1, 4, 0, {3, 4, 6, 3}, 0}, {"resnet18", 0, 0, 4, 0, {2, 2, 2, 2}, 0},
    {"resnet34", 0, 0, 4, 0, {3, 4, 6, 3}, 0},       {"resnet50", 0, 1, 4, 0, {3, 4, 6, 3}, 0},
    {"resnet101", 0, 1, 4, 0, {3, 4, 23, 3}, 0},     {"resnet20", 0, 0, 3, 1, {3, 3, 3, 0}, 0},
    {"resnet32", 0, 0, 3, 1, {5, 5, 5, 0}, 0},       {"resnet44", 0, 0, 3, 1, {7, 7, 7, 0}, 0},
    {"resnet56", 0, 0, 3, 1, {9, 9, 9, 0}, 0},
    {"mobilenet-v1", 0, 0, 0, 0, {0, 0, 0, 0}, 1},   {"mobilenet-v2", 0, 0, 0, 0, {0, 0, 0, 0}, 2},
};

/* Fixup's initialisation (ORIGINAL.md 3.3 G) over the kaiming-normal
 * fan_out defaults: BasicBlock conv1 x L^-1/2, conv2 = 0; BottleNeck conv1
 * and conv2 x L^-1/4, conv3 = 0; shortcut convs unchanged; fc weight and
 * bias 0.  L is the number of stages (the original's choice, not the
 * number of residual branches as in the paper). */
static eq_status s_fixup_init(eq_backend *be, eq_layers *g, int nstages, int bottleneck, eq_err *err)
{
    double f1 = bottleneck ? pow((double)nstages, -0.25) : pow((double)nstages, -0.5);
    for (size_t i = 0; i < eq_layers_tensor_count(g); i++) {
        const eq_model_tensor *t = eq_layers_tensor_at(g, i);
        size_t len = strlen(t->name);
#define ENDS(suf) (len > strlen(suf) && !strcmp(t->name + len - strlen(suf), suf))
        double f = -1;
        if (!strncmp(t->name, "layer", 5) && ENDS(".conv1.weight")) f = f1;
        else if (!strncmp(t->name, "layer", 5) && ENDS(".conv2.weight")) f = bottleneck ? f1 : 0.0;
        else if (!strncmp(t->name, "layer", 5) && ENDS(".conv3.weight")) f = 0.0;
        else if (!strcmp(t->name, "fc.weight") || !strcmp(t->name, "fc.bias")) f = 0.0;
#undef ENDS
        if (f < 0) continue;
        float *v = malloc(t->numel * sizeof *v);
        if (!v) return eq_err_set(err, EQ_ERR_NOMEM, "fixup init: out of memory");
        eq_status st = eq_backend_download(be, v, t->data, t->numel * sizeof *v, err);
        for (size_t k = 0; k < t->numel; k++) v[k] = f == 0.0 ? 0.0f : (float)(v[k] * f);
        if (st == EQ_OK) st = eq_backend_upload(be, t->data, v, t->numel * sizeof *v, err);
        free(v);
        if (st != EQ_OK) return eq_err_prefix(err, "fixup init: %s: ", t->name);
    }
    return EQ_OK;
}

/* zir (ORIGINAL.md 3.2.1): the last BN scale of every residual branch
 * starts at 0 -- a block's fix_bn if it has one, else its bn2 (BasicBlock,
 * every Group-Net branch's) or bn3 (BottleNeck). */
static eq_status s_zir_init(eq_backend *be, eq_layers *g, int bottleneck, size_t *nzero, eq_err *err)
{
    *nzero = 0;
    for (size_t i = 0; i < eq_layers_tensor_count(g); i++) {
        const eq_model_tensor *t = eq_layers_tensor_at(g, i);
        const char *dot1 = strncmp(t->name, "layer", 5) ? NULL : strchr(t->name, '.');
        const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
        if (!dot2) continue;
        const char *rest = dot2 + 1; /* after "layerA.B." */
        char fix[256];
        snprintf(fix, sizeof fix, "%.*s.fix_bn.weight", (int)(dot2 - t->name), t->name);
        int has_fix = 0;
        for (size_t k = 0; k < eq_layers_tensor_count(g) && !has_fix; k++)
            has_fix = !strcmp(eq_layers_tensor_at(g, k)->name, fix);
        const char *last = bottleneck ? "bn3." : "bn2.";
        int zero = has_fix ? !strcmp(rest, "fix_bn.weight")
                           : !strncmp(rest, last, 4) && (!strcmp(rest + 4, "weight") ||
                                                          (strspn(rest + 4, "0123456789") > 0 &&
                                                           !strcmp(rest + 4 + strspn(rest + 4, "0123456789"), ".weight")));
        if (!zero) continue;
        if (eq_backend_zero(be, t->data, t->numel * sizeof(float), err) != EQ_OK)
            return eq_err_prefix(err, "zir init: %s: ", t->name);
        (*nzero)++;
    }
    return EQ_OK;
}

/* m->gorder: the tensors with a gradient by the node whose backward
 * writes it (eq_layers_tensor_node), the last node first (the backward's
 * order), within a node by decreasing index; any of no node last, also by
 * decreasing index.  m->grange: each node's range. */
static eq_status s_grad_order(eq_model *m, eq_err *err)
{
    size_t nt = eq_layers_tensor_count(m->g);
    int nn = 0;
    for (size_t i = 0; i < nt; i++) {
        int k = eq_layers_tensor_node(m->g, i);
        if (eq_layers_tensor_at(m->g, i)->grad && k + 1 > nn) nn = k + 1;
    }
    m->nnodes = nn;
    m->gorder = eq_calloc_array(nt ? nt : 1, sizeof *m->gorder);
    m->grange = eq_calloc_array(2 * (size_t)nn + 1, sizeof *m->grange);
    m->gdone = eq_calloc_array(nt ? nt : 1, 1);
    if (!m->gorder || !m->grange || !m->gdone) return eq_err_set(err, EQ_ERR_NOMEM, "model: out of memory");
    for (size_t i = 0; i < nt; i++) { /* count per node */
        int k = eq_layers_tensor_node(m->g, i);
        if (eq_layers_tensor_at(m->g, i)->grad && k >= 0) m->grange[2 * k + 1]++;
    }
    size_t pos = 0;
    for (int k = nn - 1; k >= 0; k--) { /* the last node first */
        size_t c = m->grange[2 * k + 1];
        m->grange[2 * k] = m->grange[2 * k + 1] = pos;
        pos += c;
    }
    for (size_t i = nt; i-- > 0;) {
        if (!eq_layers_tensor_at(m->g, i)->grad) continue;
        int k = eq_layers_tensor_node(m->g, i);
        m->gorder[k >= 0 ? m->grange[2 * k + 1]++ : pos++] = i;
    }
    m->ng = pos;
    return EQ_OK;
}

eq_model *eq_model_new(eq_backend *be, const eq_model_cfg *cfg, const eq_model_quant_cfg *wt,
                       const eq_model_quant_cfg *fm, int64_t batch, int64_t h, int64_t w,
                       eq_err *err)
{
    return eq_model_new_ot(be, cfg, wt, fm, NULL, batch, h, w, err);
}

eq_model *eq_model_new_ot(eq_backend *be, const eq_model_cfg *cfg, const eq_model_quant_cfg *wt,
                          const eq_model_quant_cfg *fm, const eq_model_quant_cfg *ot, int64_t batch,
                          int64_t h, int64_t w, eq_err *err)
{
    if (!be || !cfg) {
        eq_err_set(err, EQ_ERR_INVALID, "model: backend and config are required");
        return NULL;
    }
    const s_arch *arch = NULL;
    for (size_t i = 0; i < sizeof s_archs / sizeof s_archs[0]; i++)
        if (!strcmp(s_archs[i].name, cfg->arch)) arch = &s_archs[i];
    if (!arch) {
        eq_err_set(err, EQ_ERR_INVALID,
                   "[model] arch: unknown architecture '%s' (torch-resnet18/34/50, "
                   "resnet18/34/50/101, resnet20/32/44/56, mobilenet-v1, mobilenet-v2)", cfg->arch);
        return NULL;
    }
    if (s_check_keywords(cfg, err) != EQ_OK) return NULL;
    if (arch->mobile && cfg->base > 1) {
        eq_err_set(err, EQ_ERR_INVALID, "[model] base: %lld branches apply to resnetNN BasicBlocks, not to %s",
                   (long long)cfg->base, cfg->arch);
        return NULL;
    }
    for (size_t i = 0; i < cfg->nkeyword; i++) {
        int mob = 0;
        for (size_t k = 0; s_mobile_kw[k]; k++) mob |= !strcmp(cfg->keyword[i], s_mobile_kw[k]);
        int dp = !strcmp(cfg->keyword[i], "real_dp") || !strcmp(cfg->keyword[i], "real_pt");
        if (arch->mobile ? !mob : dp) {
            eq_err_set(err, EQ_ERR_INVALID, "[model] keyword: '%s' (item %zu) does not apply to %s%s",
                       cfg->keyword[i], i + 1, cfg->arch,
                       arch->mobile ? " (MobileNets take cifar10, cifar100, first-last, real_dp, real_pt)" : "");
            return NULL;
        }
    }
    s_build b = {.cfg = cfg, .err = err};
    if (wt && wt->enable) {
        if (s_quant_opts(wt, EQ_QTAG_WT, &b.wq, err) != EQ_OK) return NULL;
        b.has_wq = 1;
    }
    if (fm && fm->enable) {
        if (s_quant_opts(fm, EQ_QTAG_FM, &b.fq, err) != EQ_OK) return NULL;
        b.has_fq = 1;
    }
    if (ot && ot->enable) {
        if (s_quant_opts(ot, EQ_QTAG_OT, &b.oq, err) != EQ_OK) return NULL;
        b.has_oq = 1;
    }
    b.origin = s_has(cfg, "origin"), b.prebn = s_has(cfg, "preBN"), b.fix = s_has(cfg, "fix");
    b.fix_pooling = s_has(cfg, "fix_pooling"), b.singleconv = s_has(cfg, "singleconv");
    b.real_skip = s_has(cfg, "real_skip"), b.prelu = s_has(cfg, "PReLU");
    b.nrelu = s_has(cfg, "NReLU");
    b.real_dp = s_has(cfg, "real_dp"), b.real_pt = s_has(cfg, "real_pt");
    b.tresnet = s_has(cfg, "TResNetStem") ? 1 : s_has(cfg, "TResNetStemMaxPool") ? 2 : 0;
    b.fixup = s_has(cfg, "fixup"), b.fbias = s_has(cfg, "bias");
    b.groupnet = s_has(cfg, "group-net");
    b.ldn = s_has(cfg, "ReShapeResolution");
    b.dchr = s_has(cfg, "DCHR");
    int zir = s_has(cfg, "zir");
    const char *bad = NULL, *why = "";
    if (b.dchr && arch->torch) bad = "DCHR", why = " (torchvision layout; use resnetNN)";
    else if (b.dchr && arch->bottleneck) bad = "DCHR", why = " (DCHR shortcuts are for BasicBlock networks)";
    else if (zir && arch->torch) bad = "zir", why = " (torchvision layout; use resnetNN)";
    else if (zir && b.fixup) bad = "zir", why = " with fixup (no BN)";
    if (bad) {
        eq_err_set(err, EQ_ERR_INVALID, "[model] keyword: '%s' does not apply to %s%s", bad, cfg->arch, why);
        return NULL;
    }
    b.cifar = arch->cifar || s_has(cfg, "cifar10") || s_has(cfg, "cifar100");
    b.first_last = cfg->quant_first_last || s_has(cfg, "first-last");
    static const char *const orders[] = {"cbas", "cbsa", "cabs", "bacs", "bcas"};
    b.order = O_NONE;
    for (int i = 0; i < 5 && b.order == O_NONE; i++) /* the original's priority order */
        if (s_has(cfg, orders[i])) b.order = (enum s_order)i;
    int64_t w0 = (int64_t)(64.0 * cfg->width_alpha);
    if (w0 < 1) {
        eq_err_set(err, EQ_ERR_INVALID, "[model] width_alpha: %g gives no channels", cfg->width_alpha);
        return NULL;
    }
    eq_model *m = calloc(1, sizeof *m);
    if (!m) {
        eq_err_set(err, EQ_ERR_NOMEM, "model: out of memory");
        return NULL;
    }
    m->loss_scale = 1.0f;
    m->be = be;
    if (!(m->g = b.g = eq_layers_new(be, err))) goto fail;
    if (eq_layers_set_precision(b.g, (eq_precision)cfg->precision, err) != EQ_OK) {
        eq_err_prefix(err, "model: ");
        goto fail;
    }
    int x = eq_layers_input(b.g, batch, h, w, cfg->in_channels, err);
    if (x >= 0 && arch->mobile)
        x = arch->mobile == 1 ? s_build_mobilenet_v1(&b, x) : s_build_mobilenet_v2(&b, x);
    else if (x >= 0)
        x = arch->torch ? s_build_torch_resnet(&b, arch->blocks, arch->bottleneck, w0, x)
                        : s_build_resnetxx(&b, arch->blocks, arch->nstages, arch->bottleneck, w0, x);
    if (x < 0) {
        eq_err_prefix(err, "model %s: ", cfg->arch);
        goto fail;
    }
    if (eq_layers_finalize(b.g, (uint64_t)cfg->seed, err) != EQ_OK) goto fail;
    if (b.fixup && s_fixup_init(be, b.g, arch->nstages, arch->bottleneck, err) != EQ_OK) goto fail;
    if (zir) {
        size_t nz = 0;
        if (s_zir_init(be, b.g, arch->bottleneck, &nz, err) != EQ_OK) goto fail;
        if (nz == 0) {
            eq_err_set(err, EQ_ERR_INVALID, "[model] keyword zir: %s has no residual-branch BN to zero", cfg->arch);
            goto fail;
        }
    }
    if (cfg->base > 1) { /* Group-Net scales start at 1/base */
        float v = (float)(1.0 / (double)cfg->base);
        for (size_t i = 0; i < eq_layers_tensor_count(b.g); i++) {
            const eq_model_tensor *t = eq_layers_tensor_at(b.g, i);
            if (strstr(t->name, ".scales.") && eq_backend_upload(be, t->data, &v, sizeof v, err) != EQ_OK)
                goto fail;
        }
    }
    if (!(m->dev_loss = eq_backend_alloc(be, 16 * sizeof(float), err))) goto fail;
    if (s_grad_order(m, err) != EQ_OK) goto fail;
    size_t np = 0, nt = eq_layers_tensor_count(b.g);
    for (size_t i = 0; i < nt; i++) {
        const eq_model_tensor *t = eq_layers_tensor_at(b.g, i);
        if (t->kind == EQ_MT_PARAM) np += t->numel;
    }
    snprintf(m->summary, sizeof m->summary, "%s: %zu parameters in %zu tensors, input %lldx%lldx%lldx%lld%s%s%s%s%s",
             cfg->arch, np, nt, (long long)batch, (long long)h, (long long)w,
             (long long)cfg->in_channels, b.has_wq ? ", wt quantized" : "",
             b.has_fq ? ", fm quantized" : "", b.has_oq ? ", ot quantized" : "",
             cfg->precision != EQ_PREC_FP32 ? ", activations " : "",
             cfg->precision != EQ_PREC_FP32 ? eq_precision_name((eq_precision)cfg->precision) : "");
    return m;
fail:
    eq_model_destroy(&m);
    return NULL;
}

void eq_model_destroy(eq_model **m_p)
{
    if (!m_p || !*m_p) return;
    eq_model *m = *m_p;
    if (m->dev_loss) eq_backend_release(m->be, m->dev_loss);
    eq_backend_event_destroy(m->be, &m->loss_ev);
    free(m->gorder);
    free(m->grange);
    free(m->gdone);
    eq_layers_destroy(&m->g);
    free(m);
    *m_p = NULL;
}

eq_status eq_model_forward(eq_model *m, const float *x, bool train, eq_err *err)
{
    if (!m) return eq_err_set(err, EQ_ERR_INVALID, "model forward: model is NULL");
    m->have_dlogits = 0;
    return eq_layers_forward(m->g, x, train, err);
}

const float *eq_model_logits(const eq_model *m, int64_t *batch, int64_t *classes)
{
    int64_t sh[4];
    const float *y = m ? eq_layers_output(m->g, NULL, sh) : NULL;
    if (y && batch) *batch = sh[0];
    if (y && classes) *classes = sh[3];
    return y;
}

/* The loss: synchronously into *loss (non-NULL), asynchronously
 * (async: into m->loss_host behind m->loss_ev), or not at all. */
static eq_status s_loss(eq_model *m, const int32_t *labels_a, const int32_t *labels_b, const float *lambda,
                        float smoothing, float *loss, bool async, eq_err *err)
{
    int64_t sh[4];
    float *dy = NULL;
    const float *y = eq_layers_output(m->g, &dy, sh);
    eq_xent_desc d;
    eq_status st = eq_xent_desc_init(&d, sh[0], sh[3], smoothing, err);
    if (st == EQ_OK) st = eq_backend_xent_fwd(m->be, &d, y, labels_a, labels_b, lambda, m->dev_loss, err);
    if (st == EQ_OK && loss) st = eq_backend_download(m->be, loss, m->dev_loss, sizeof *loss, err);
    if (st == EQ_OK && async && !m->loss_ev && !(m->loss_ev = eq_backend_event_new(m->be, err))) st = EQ_ERR_NOMEM;
    if (st == EQ_OK && async)
        st = eq_backend_download_async(m->be, &m->loss_host, m->dev_loss, sizeof m->loss_host, m->loss_ev, err);
    /* policy-enabled quantization losses (0 unless enabled): host values
     * of this forward, read now */
    double aux = st == EQ_OK ? eq_layers_quant_aux_loss(m->g) : 0.0;
    if (st == EQ_OK && loss && aux != 0.0) *loss = (float)((double)*loss + aux);
    if (st == EQ_OK && async) {
        m->loss_aux = aux;
        m->loss_pending = 1;
    }
    if (st == EQ_OK)
        st = eq_backend_xent_bwd(m->be, &d, y, labels_a, labels_b, lambda, m->loss_scale, dy, err);
    if (st != EQ_OK) return eq_err_prefix(err, "model loss: ");
    m->have_dlogits = 1;
    return EQ_OK;
}

eq_status eq_model_loss(eq_model *m, const int32_t *labels_a, const int32_t *labels_b,
                        const float *lambda, float smoothing, float *loss, eq_err *err)
{
    if (!m) return eq_err_set(err, EQ_ERR_INVALID, "model loss: model is NULL");
    return s_loss(m, labels_a, labels_b, lambda, smoothing, loss, false, err);
}

eq_status eq_model_loss_async(eq_model *m, const int32_t *labels_a, const int32_t *labels_b,
                              const float *lambda, float smoothing, eq_err *err)
{
    if (!m) return eq_err_set(err, EQ_ERR_INVALID, "model loss: model is NULL");
    if (m->loss_pending)
        return eq_err_set(err, EQ_ERR_INVALID, "model loss: the previous loss was not fetched (eq_model_loss_fetch)");
    return s_loss(m, labels_a, labels_b, lambda, smoothing, NULL, true, err);
}

eq_status eq_model_loss_fetch(eq_model *m, float *loss, eq_err *err)
{
    if (!m || !loss) return eq_err_set(err, EQ_ERR_INVALID, "model loss fetch: %s is NULL", m ? "loss" : "model");
    if (!m->loss_pending)
        return eq_err_set(err, EQ_ERR_INVALID, "model loss fetch: no eq_model_loss_async since the last fetch");
    m->loss_pending = 0;
    eq_status st = eq_backend_event_synchronize(m->be, m->loss_ev, err);
    if (st != EQ_OK) return eq_err_prefix(err, "model loss: ");
    /* the arithmetic of eq_model_loss: the same float */
    *loss = m->loss_aux != 0.0 ? (float)((double)m->loss_host + m->loss_aux) : m->loss_host;
    return EQ_OK;
}

bool eq_model_loss_pending(const eq_model *m)
{
    return m && m->loss_pending;
}

eq_status eq_model_set_loss_scale(eq_model *m, float scale, eq_err *err)
{
    if (!m) return eq_err_set(err, EQ_ERR_INVALID, "loss scale: model is NULL");
    if (!(scale > 0.0f) || !isfinite(scale))
        return eq_err_set(err, EQ_ERR_INVALID, "loss scale %g must be finite and > 0", (double)scale);
    /* every call: cheap, and right for quantizers made since the last one */
    eq_status st = eq_layers_set_quant_loss_scale(m->g, scale, err);
    if (st) return eq_err_prefix(err, "loss scale: ");
    m->loss_scale = scale;
    return EQ_OK;
}

float eq_model_loss_scale(const eq_model *m)
{
    return m ? m->loss_scale : 1.0f;
}

eq_status eq_model_backward(eq_model *m, const float *dlogits, eq_err *err)
{
    if (!m) return eq_err_set(err, EQ_ERR_INVALID, "model backward: model is NULL");
    int64_t sh[4];
    float *dy = NULL;
    eq_layers_output(m->g, &dy, sh);
    if (dlogits) {
        eq_status st = eq_backend_copy(m->be, dy, dlogits, (size_t)(sh[0] * sh[3]) * sizeof(float), err);
        if (st != EQ_OK) return eq_err_prefix(err, "model backward: ");
    } else if (!m->have_dlogits) {
        return eq_err_set(err, EQ_ERR_INVALID, "model backward: no dlogits given and no eq_model_loss since the forward");
    }
    m->have_dlogits = 0;
    if (!m->grad_fn) return eq_layers_backward(m->g, err);
    memset(m->gdone, 0, eq_layers_tensor_count(m->g));
    eq_status st = eq_layers_backward(m->g, err);
    for (size_t j = 0; j < m->ng && st == EQ_OK; j++) /* the rest: not reported by a layer */
        if (!m->gdone[m->gorder[j]]) {
            m->gdone[m->gorder[j]] = 1;
            m->grad_fn(m->grad_arg, m->gorder[j]);
        }
    return st;
}

/* eq_layers_grad_fn: node `node` finished; report its tensors (a
 * quantizer's, on a backend that defers their gradients, only once
 * eq_layers_backward has waited for them: with "the rest"). */
static void s_node_done(void *arg, int node)
{
    eq_model *m = arg;
    if (node < 0 || node >= m->nnodes) return;
    bool defer = eq_backend_quant_grads_deferred(m->be);
    for (size_t j = m->grange[2 * node]; j < m->grange[2 * node + 1]; j++) {
        if (defer && eq_layers_tensor_at(m->g, m->gorder[j])->quant) continue;
        m->gdone[m->gorder[j]] = 1;
        m->grad_fn(m->grad_arg, m->gorder[j]);
    }
}

void eq_model_set_grad_hook(eq_model *m, eq_model_grad_fn *fn, void *arg)
{
    if (!m) return;
    m->grad_fn = fn;
    m->grad_arg = arg;
    eq_layers_set_grad_hook(m->g, fn ? s_node_done : NULL, m);
}

eq_status eq_model_grads_nonfinite(eq_model *m, int64_t *count, eq_err *err)
{
    if (!m || !count) return eq_err_set(err, EQ_ERR_INVALID, "gradients: NULL argument");
    size_t n = 0;
    const float *blk = eq_layers_grad_block(m->g, &n);
    int64_t total = 0;
    if (n) {
        eq_status st = eq_backend_nonfinite(m->be, n, blk, &total, err);
        if (st) return eq_err_prefix(err, "gradients: ");
    }
    for (size_t i = 0; i < eq_layers_tensor_count(m->g); i++) {
        const eq_model_tensor *t = eq_layers_tensor_at(m->g, i);
        if (!t->quant || !t->grad) continue;
        for (size_t k = 0; k < t->numel; k++) total += !isfinite(t->grad[k]);
    }
    *count = total;
    return EQ_OK;
}

size_t eq_model_grad_order(const eq_model *m, size_t *order, size_t cap)
{
    if (!m) return 0;
    if (!eq_backend_quant_grads_deferred(m->be)) {
        for (size_t j = 0; j < m->ng && j < cap && order; j++) order[j] = m->gorder[j];
        return m->ng;
    }
    /* as s_node_done and eq_model_backward report them: the layers'
     * tensors but the quantizers', then the rest (quantizers' and late
     * ones) in gorder's order */
    size_t n = 0;
    for (int pass = 0; pass < 2; pass++)
        for (size_t j = 0; j < m->ng; j++) {
            size_t i = m->gorder[j];
            bool early = eq_layers_tensor_node(m->g, i) >= 0 && !eq_layers_tensor_at(m->g, i)->quant;
            if (early == (pass == 0)) {
                if (order && n < cap) order[n] = i;
                n++;
            }
        }
    return n;
}

size_t eq_model_tensor_count(const eq_model *m)
{
    return m ? eq_layers_tensor_count(m->g) : 0;
}

const eq_model_tensor *eq_model_tensor_at(const eq_model *m, size_t i)
{
    return m ? eq_layers_tensor_at(m->g, i) : NULL;
}

const eq_model_tensor *eq_model_tensor_find(const eq_model *m, const char *name)
{
    if (!m || !name) return NULL;
    for (size_t i = 0; i < eq_layers_tensor_count(m->g); i++) {
        const eq_model_tensor *t = eq_layers_tensor_at(m->g, i);
        if (!strcmp(t->name, name)) return t;
    }
    return NULL;
}

void eq_model_set_noise_key(eq_model *m, uint64_t key)
{
    if (m) eq_layers_set_noise_key(m->g, key);
}

struct eq_quant *eq_model_quant(eq_model *m, const char *layer, eq_quant_tag tag)
{
    return m ? eq_layers_quant(m->g, layer, tag) : NULL;
}

const float *eq_model_quant_output(const eq_model *m, const char *layer, eq_quant_tag tag,
                                   int64_t *n)
{
    if (n) *n = 0;
    return m ? eq_layers_quant_output(m->g, layer, tag, n) : NULL;
}

eq_backend *eq_model_backend(const eq_model *m)
{
    return m ? m->be : NULL;
}

const char *eq_model_summary(const eq_model *m)
{
    return m ? m->summary : "";
}

struct eq_layers *eq_model_layers(const eq_model *m)
{
    return m ? m->g : NULL;
}
