/*
 * trainer/layers.c -- the layer graph of trainer/layers.h.
 *
 * Nodes are stored in topological order (a node's inputs come before it).
 * Gradients: a node's dy receives the sum of its consumers' contributions;
 * the first contribution is written straight into it, later ones go through
 * the scratch buffer `tmp` and an add (residual forks).  An add node passes
 * its gradient on without copying: it swaps dy buffers with its first input
 * whose gradient is unset (so dy pointers change during backward; nothing
 * outside keeps them), and adds in place into one already set.  Tensors (the
 * state-dict table) are registered while building; their data pointers are
 * set by finalize (quantizer state: at once, the quantizer owns it).
 *
 * Fusion.  Finalize finds BN -> ReLU and BN -> add -> ReLU chains whose
 * intermediates have the next node as their only consumer (a quantizer
 * never sits between them: quantizers belong to the conv/linear that
 * reads the ReLU) and runs each as one bn_relu op at the ReLU: the BN and
 * add nodes then hold neither activation nor gradient buffers.  Its
 * backward writes the BN input's gradient and the residual's (dz) itself.
 * When the node right before the fused ReLU gives it a second gradient
 * contribution through `tmp` (a block's first conv, which shares the
 * block input with the shortcut), the contribution stays pending in `tmp`
 * and the fused op adds it while reading dy instead of a separate add.
 */
#include "trainer/layers.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"

typedef enum s_kind {
    S_INPUT, S_CONV, S_BN, S_RELU, S_PRELU, S_MAXPOOL, S_AVGPOOL, S_ADD, S_GAP, S_LINEAR, S_CLAMP,
    S_SAFF, S_DROPOUT
} s_kind;

static const char *const S_KIND_NAME[] = {"input",   "conv",    "bn",  "relu", "prelu", "maxpool",
                                          "avgpool", "add",     "gap", "linear", "clamp",
                                          "scalar_affine", "dropout"};

/* How finalize initialises a tensor. */
enum s_init { I_ZEROS, I_ONES, I_KAIMING, I_LINEAR, I_PRELU, I_OWNED };

typedef struct s_node {
    s_kind kind;
    int in0, in1;
    int64_t n, h, w, c; /* output shape, NHWC */
    char *name;         /* layer name (parameter prefix) or NULL */
    eq_conv2d_desc conv;
    eq_pool2d_desc pool;
    eq_bn_desc bn;
    int64_t lin_in;
    float lo, hi;       /* clamp bounds */
    double drop_p;      /* dropout probability */
    float *drop_mask;   /* dropout (host): the last training forward's scales, then a scratch copy */
    int drop_train;     /* the last forward applied the mask */
    int64_t s2d;        /* space-to-depth block (a conv with the fixed weight fixed_w) */
    int64_t rep;        /* channel repeat: copies (a 1x1 conv with the fixed weight; s2d == 1) */
    float *fixed_w;
    int pw, pb, prm, prv, pnbt; /* tensor indices, -1 if none */
    float *y, *dy;
    float *save;     /* BN: mean [c], invstd [c] */
    int32_t *argmax; /* max pool */
    int dy_set;
    int dy_pend;     /* fused ReLU: g->tmp holds a second gradient contribution (dy2) */
    /* fusion (finalize): a ReLU running BN fbn (+ the add's other input fz,
     * else -1) as one bn_relu op; the BN and add nodes it absorbs have
     * `fused` = the ReLU's index and neither y nor dy */
    int fbn, fz, fused;
    /* quantized conv / linear */
    eq_quant *qw, *qf, *qo; /* qo: conv output quantizer (the original's `ot`) */
    float *yo, *dyo;        /* with qo: the conv's raw output and its gradient */
    int pad_before;     /* conv: pad explicitly before Qf (conv then runs with pad 0) */
    int q_unpadded;     /* pad_before, but the last forward's Qf was zero-pad exact: it
                         * quantized the unpadded input and the conv padded (conv_up) */
    eq_conv2d_desc conv_up; /* pad_before: the conv on the unpadded input, padding itself */
    int64_t pad;        /* the requested padding */
    int64_t ph, pw_;    /* padded input height/width when pad_before */
    float *wq, *dwq;    /* quantized weight and its gradient */
    float *xp;          /* padded input (pad_before) */
    float *a, *da;      /* the conv/linear input after Qf, and its gradient */
    size_t a_numel;
    /* mixed precision (g->prec != FP32): the GEMM's operands rounded to it */
    float *wr;          /* conv/linear: the weight (linear: then the bias at br) */
    float *br;
    float *xr;          /* x_round: the input after Qf, or the network input */
    int x_round;        /* the input operand is rounded into xr */
} s_node;

struct eq_layers {
    eq_backend *be;
    s_node *nodes;
    int nnodes, ncap;
    eq_model_tensor *t;
    unsigned char *tinit; /* s_init per tensor */
    int *tnode;           /* per tensor: the node that registered it */
    size_t nt, tcap;
    float *pdata, *pgrad; /* parameters + F32 buffers; gradients */
    size_t npgrad;        /* floats in pgrad (each tensor's padded to 16, the padding zero) */
    int64_t *i64;         /* num_batches_tracked counters (host) */
    float *tmp;
    void *block;
    int finalized, broken;
    eq_layers_grad_fn *grad_fn; /* eq_layers_set_grad_hook */
    void *grad_arg;
    int nofuse; /* eq_layers_set_fusion(g, false) */
    int fwd_ok; /* the last forward completed (quantizer outputs are current) */
    uint64_t seed;      /* finalize's seed (also keys the dropout masks) */
    uint64_t noise_key; /* key of the next training forward's dropout masks */
    eq_precision prec;  /* eq_layers_set_precision */
};

static size_t s_numel(const s_node *nd)
{
    return (size_t)(nd->n * nd->h * nd->w * nd->c);
}

static size_t s_round16(size_t n)
{
    return (n + 15) / 16 * 16;
}

eq_layers *eq_layers_new(eq_backend *be, eq_err *err)
{
    if (!be) {
        eq_err_set(err, EQ_ERR_INVALID, "layers: backend is NULL");
        return NULL;
    }
    eq_layers *g = calloc(1, sizeof *g);
    if (!g) {
        eq_err_set(err, EQ_ERR_NOMEM, "layers: out of memory");
        return NULL;
    }
    g->be = be;
    return g;
}

void eq_layers_destroy(eq_layers **g_p)
{
    if (!g_p || !*g_p) return;
    eq_layers *g = *g_p;
    for (size_t i = 0; i < g->nt; i++) free((char *)g->t[i].name);
    for (int i = 0; i < g->nnodes; i++) {
        free(g->nodes[i].name);
        free(g->nodes[i].drop_mask);
        eq_backend_quant_release(g->be, g->nodes[i].qw); /* the backend's state for them */
        eq_backend_quant_release(g->be, g->nodes[i].qf);
        eq_backend_quant_release(g->be, g->nodes[i].qo);
        eq_quant_destroy(&g->nodes[i].qw);
        eq_quant_destroy(&g->nodes[i].qf);
        eq_quant_destroy(&g->nodes[i].qo);
    }
    eq_backend_release(g->be, g->pdata);
    eq_backend_release(g->be, g->pgrad);
    eq_backend_release(g->be, g->block);
    free(g->i64);
    free(g->t);
    free(g->tinit);
    free(g->tnode);
    free(g->nodes);
    free(g);
    *g_p = NULL;
}

/* ---- building ------------------------------------------------------------ */

static int s_fail(eq_layers *g)
{
    if (g) g->broken = 1;
    return -1;
}

static s_node *s_add_node(eq_layers *g, s_kind kind, int in0, int in1, const char *name,
                          eq_err *err)
{
    const char *what = name ? name : S_KIND_NAME[kind];
    if (!g) {
        eq_err_set(err, EQ_ERR_INVALID, "%s: graph is NULL", what);
        return NULL;
    }
    if (g->broken) {
        eq_err_set(err, EQ_ERR_INVALID, "%s: an earlier builder call failed", what);
        return NULL;
    }
    if (g->finalized) {
        eq_err_set(err, EQ_ERR_INVALID, "%s: the graph is finalized", what);
        return NULL;
    }
    if ((kind == S_INPUT) != (g->nnodes == 0)) {
        eq_err_set(err, EQ_ERR_INVALID, "%s: the input must be the first node, and only it",
                   what);
        return NULL;
    }
    if (kind != S_INPUT &&
        (in0 < 0 || in0 >= g->nnodes || (kind == S_ADD && (in1 < 0 || in1 >= g->nnodes)))) {
        eq_err_set(err, EQ_ERR_INVALID, "%s: input node %d does not exist (graph has %d)", what,
                   in0 < 0 || in0 >= g->nnodes ? in0 : in1, g->nnodes);
        return NULL;
    }
    if (g->nnodes == g->ncap) {
        int cap = g->ncap ? g->ncap * 2 : 64;
        s_node *p = realloc(g->nodes, (size_t)cap * sizeof *p);
        if (!p) {
            eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory", what);
            return NULL;
        }
        g->nodes = p;
        g->ncap = cap;
    }
    s_node *nd = &g->nodes[g->nnodes];
    memset(nd, 0, sizeof *nd);
    nd->kind = kind;
    nd->in0 = in0;
    nd->in1 = in1;
    nd->pw = nd->pb = nd->prm = nd->prv = nd->pnbt = -1;
    nd->fbn = nd->fz = -1;
    if (name && !(nd->name = strdup(name))) {
        eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory", what);
        return NULL;
    }
    if (kind != S_INPUT) {
        const s_node *a = &g->nodes[in0];
        nd->n = a->n, nd->h = a->h, nd->w = a->w, nd->c = a->c;
    }
    g->nnodes++;
    return nd;
}

/* Register tensor "<prefix>.<suffix>"; returns its index or -1. */
static int s_tensor(eq_layers *g, const char *prefix, const char *suffix, eq_model_tensor_kind kind,
                    eq_dtype dt, int ndim, const int64_t *shape, bool no_decay, int init,
                    eq_err *err)
{
    char name[256];
    int len = *prefix ? snprintf(name, sizeof name, "%s.%s", prefix, suffix)
                      : snprintf(name, sizeof name, "%s", suffix); /* top-level parameter */
    if (len < 0 || (size_t)len >= sizeof name) {
        eq_err_set(err, EQ_ERR_INVALID, "tensor name '%s.%s' is too long", prefix, suffix);
        return -1;
    }
    for (size_t i = 0; i < g->nt; i++)
        if (!strcmp(g->t[i].name, name)) {
            eq_err_set(err, EQ_ERR_INVALID, "tensor '%s' defined twice", name);
            return -1;
        }
    if (g->nt == g->tcap) {
        size_t cap = g->tcap ? g->tcap * 2 : 128;
        eq_model_tensor *p = realloc(g->t, cap * sizeof *p);
        if (p) g->t = p;
        unsigned char *pi = p ? realloc(g->tinit, cap) : NULL;
        if (pi) g->tinit = pi;
        int *pn = pi ? realloc(g->tnode, cap * sizeof *pn) : NULL;
        if (!pn) {
            eq_err_set(err, EQ_ERR_NOMEM, "out of memory adding '%s'", name);
            return -1;
        }
        g->tnode = pn;
        g->tcap = cap;
    }
    eq_model_tensor *t = &g->t[g->nt];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) {
        eq_err_set(err, EQ_ERR_NOMEM, "out of memory adding '%s'", name);
        return -1;
    }
    t->kind = kind;
    t->dtype = dt;
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->numel *= (size_t)shape[i];
    }
    t->no_decay = no_decay;
    g->tinit[g->nt] = (unsigned char)init;
    g->tnode[g->nt] = g->nnodes - 1; /* builders add their node before its tensors */
    return (int)g->nt++;
}

/* Build a quantizer for `xd` and register its state as "<name>.<sub>.*". */
static eq_quant *s_quant(eq_layers *g, const char *name, const char *sub, const eq_quant_opts *o,
                         const eq_tensor_desc *xd, eq_err *err)
{
    eq_quant *q = eq_quant_new(o, xd, err);
    if (!q) {
        eq_err_prefix(err, "%s.%s: ", name, sub);
        return NULL;
    }
    char prefix[200];
    snprintf(prefix, sizeof prefix, "%s.%s", name, sub);
    for (size_t i = 0; i < eq_quant_tensor_count(q); i++) {
        eq_quant_tensor *qt = eq_quant_tensor_at(q, i);
        int64_t shape[4];
        int nd = qt->ndim > 4 ? 4 : qt->ndim;
        for (int k = 0; k < nd; k++) shape[k] = qt->shape[k];
        int ti = s_tensor(g, prefix, qt->name, qt->grad ? EQ_MT_PARAM : EQ_MT_BUFFER, EQ_DT_F32,
                          nd, shape, true, I_OWNED, err);
        if (ti < 0) {
            eq_quant_destroy(&q);
            return NULL;
        }
        g->t[ti].data = qt->data;
        g->t[ti].grad = qt->grad;
        g->t[ti].numel = (size_t)qt->numel;
        g->t[ti].quant = true;
    }
    return q;
}

int eq_layers_input(eq_layers *g, int64_t n, int64_t h, int64_t w, int64_t c, eq_err *err)
{
    s_node *nd = s_add_node(g, S_INPUT, -1, -1, NULL, err);
    if (!nd) return s_fail(g);
    if (n < 1 || h < 1 || w < 1 || c < 1) {
        eq_err_set(err, EQ_ERR_INVALID, "input: shape [%lld][%lld][%lld][%lld] must be positive",
                   (long long)n, (long long)h, (long long)w, (long long)c);
        return s_fail(g);
    }
    nd->n = n, nd->h = h, nd->w = w, nd->c = c;
    return g->nnodes - 1;
}

static int s_name_ok(eq_layers *g, const char *name, const char *what, eq_err *err)
{
    if (!name || !*name) {
        eq_err_set(err, EQ_ERR_INVALID, "%s: empty layer name", what);
        s_fail(g);
        return -1;
    }
    return 0;
}

int eq_layers_conv(eq_layers *g, const char *name, int in, int64_t k, int64_t r, int64_t stride,
                   int64_t pad, int64_t groups, const eq_quant_opts *wq, const eq_quant_opts *fq,
                   bool pad_after_quant, eq_err *err)
{
    if (s_name_ok(g, name, "conv", err)) return -1;
    s_node *nd = s_add_node(g, S_CONV, in, -1, name, err);
    if (!nd) return s_fail(g);
    nd->pad = pad;
    nd->pad_before = fq && !pad_after_quant && pad > 0;
    int64_t cpad = nd->pad_before ? 0 : pad;
    nd->ph = nd->h + 2 * pad;
    nd->pw_ = nd->w + 2 * pad;
    eq_conv2d_desc *d = &nd->conv;
    *d = (eq_conv2d_desc){.n = nd->n, .h = nd->pad_before ? nd->ph : nd->h,
                          .w = nd->pad_before ? nd->pw_ : nd->w, .c = nd->c, .k = k, .r = r,
                          .s = r, .stride_h = stride, .stride_w = stride, .pad_h = cpad,
                          .pad_w = cpad, .dil_h = 1, .dil_w = 1, .groups = groups};
    if (eq_conv2d_desc_init(d, err) != EQ_OK) {
        eq_err_prefix(err, "%s: ", name);
        return s_fail(g);
    }
    if (nd->pad_before) { /* same output; only the padding moves into the conv */
        nd->conv_up = *d;
        nd->conv_up.h = nd->h, nd->conv_up.w = nd->w;
        nd->conv_up.pad_h = nd->conv_up.pad_w = pad;
        if (eq_conv2d_desc_init(&nd->conv_up, err) != EQ_OK) {
            eq_err_prefix(err, "%s: ", name);
            return s_fail(g);
        }
    }
    int64_t cin = nd->c;
    nd->h = d->p, nd->w = d->q, nd->c = k;
    int64_t shape[4] = {k, cin / groups, r, r};
    nd->pw = s_tensor(g, name, "weight", EQ_MT_PARAM, EQ_DT_F32, 4, shape, false, I_KAIMING, err);
    if (nd->pw < 0) return s_fail(g);
    if (fq) {
        int64_t xs[4] = {nd->n, d->h, d->w, cin};
        eq_tensor_desc xd;
        if (eq_tensor_desc_init(&xd, EQ_DT_F32, EQ_LAYOUT_NHWC, 4, xs, err) != EQ_OK ||
            !(nd->qf = s_quant(g, name, "quant_activation", fq, &xd, err)))
            return s_fail(g);
    }
    if (wq) {
        eq_tensor_desc wd;
        if (eq_tensor_desc_init(&wd, EQ_DT_F32, EQ_LAYOUT_OIHW, 4, shape, err) != EQ_OK ||
            !(nd->qw = s_quant(g, name, "quant_weight", wq, &wd, err)))
            return s_fail(g);
    }
    return g->nnodes - 1;
}

eq_status eq_layers_conv_output_quant(eq_layers *g, int node, const eq_quant_opts *oq, eq_err *err)
{
    if (!g || !oq) return eq_err_set(err, EQ_ERR_INVALID, "output quantizer: graph or options NULL");
    if (g->finalized || g->broken)
        return eq_err_set(err, EQ_ERR_INVALID, "output quantizer: the graph is %s",
                          g->finalized ? "finalized" : "broken");
    if (node < 0 || node >= g->nnodes || g->nodes[node].kind != S_CONV || !g->nodes[node].name)
        return eq_err_set(err, EQ_ERR_INVALID, "output quantizer: node %d is not a named conv", node);
    s_node *nd = &g->nodes[node];
    if (nd->qo) return eq_err_set(err, EQ_ERR_INVALID, "%s: has an output quantizer already", nd->name);
    int64_t ys[4] = {nd->n, nd->h, nd->w, nd->c};
    eq_tensor_desc yd;
    eq_status st = eq_tensor_desc_init(&yd, EQ_DT_F32, EQ_LAYOUT_NHWC, 4, ys, err);
    size_t nt0 = g->nt;
    if (st == EQ_OK && !(nd->qo = s_quant(g, nd->name, "quant_output", oq, &yd, err))) st = EQ_ERR_INVALID;
    for (size_t i = nt0; st == EQ_OK && i < g->nt; i++) g->tnode[i] = node; /* the conv's backward runs it */
    if (st != EQ_OK) g->broken = 1;
    return st == EQ_OK ? EQ_OK : (err ? err->code : st);
}

int eq_layers_space_to_depth(eq_layers *g, int in, int64_t s, eq_err *err)
{
    s_node *nd = s_add_node(g, S_CONV, in, -1, NULL, err);
    if (!nd) return s_fail(g);
    if (s < 1 || nd->h % s || nd->w % s) {
        eq_err_set(err, EQ_ERR_INVALID, "space_to_depth (node %d): block %lld must divide %lldx%lld",
                   g->nnodes - 1, (long long)s, (long long)nd->h, (long long)nd->w);
        return s_fail(g);
    }
    nd->s2d = s;
    eq_conv2d_desc *d = &nd->conv;
    *d = (eq_conv2d_desc){.n = nd->n, .h = nd->h, .w = nd->w, .c = nd->c, .k = nd->c * s * s,
                          .r = s, .s = s, .stride_h = s, .stride_w = s, .dil_h = 1, .dil_w = 1,
                          .groups = 1};
    if (eq_conv2d_desc_init(d, err) != EQ_OK) {
        eq_err_prefix(err, "space_to_depth (node %d): ", g->nnodes - 1);
        return s_fail(g);
    }
    nd->h = d->p, nd->w = d->q, nd->c = d->k;
    return g->nnodes - 1;
}

int eq_layers_channel_repeat(eq_layers *g, int in, int64_t copies, eq_err *err)
{
    s_node *nd = s_add_node(g, S_CONV, in, -1, NULL, err);
    if (!nd) return s_fail(g);
    if (copies < 1 || copies > 4096) {
        eq_err_set(err, EQ_ERR_INVALID, "channel_repeat (node %d): %lld copies (1..4096)", g->nnodes - 1,
                   (long long)copies);
        return s_fail(g);
    }
    nd->s2d = 1;
    nd->rep = copies;
    eq_conv2d_desc *d = &nd->conv;
    *d = (eq_conv2d_desc){.n = nd->n, .h = nd->h, .w = nd->w, .c = nd->c, .k = nd->c * copies,
                          .r = 1, .s = 1, .stride_h = 1, .stride_w = 1, .dil_h = 1, .dil_w = 1,
                          .groups = 1};
    if (eq_conv2d_desc_init(d, err) != EQ_OK) {
        eq_err_prefix(err, "channel_repeat (node %d): ", g->nnodes - 1);
        return s_fail(g);
    }
    nd->c = d->k;
    return g->nnodes - 1;
}

int eq_layers_bn(eq_layers *g, const char *name, int in, eq_err *err)
{
    if (s_name_ok(g, name, "bn", err)) return -1;
    s_node *nd = s_add_node(g, S_BN, in, -1, name, err);
    if (!nd) return s_fail(g);
    if (eq_bn_desc_init(&nd->bn, nd->n * nd->h * nd->w, nd->c, 1e-5f, 0.1f, err) != EQ_OK) {
        eq_err_prefix(err, "%s: ", name);
        return s_fail(g);
    }
    int64_t shape[1] = {nd->c};
    if ((nd->pw = s_tensor(g, name, "weight", EQ_MT_PARAM, EQ_DT_F32, 1, shape, true, I_ONES, err)) < 0 ||
        (nd->pb = s_tensor(g, name, "bias", EQ_MT_PARAM, EQ_DT_F32, 1, shape, true, I_ZEROS, err)) < 0 ||
        (nd->prm = s_tensor(g, name, "running_mean", EQ_MT_BUFFER, EQ_DT_F32, 1, shape, true, I_ZEROS, err)) < 0 ||
        (nd->prv = s_tensor(g, name, "running_var", EQ_MT_BUFFER, EQ_DT_F32, 1, shape, true, I_ONES, err)) < 0 ||
        (nd->pnbt = s_tensor(g, name, "num_batches_tracked", EQ_MT_BUFFER, EQ_DT_I64, 0, NULL, true, I_ZEROS, err)) < 0)
        return s_fail(g);
    return g->nnodes - 1;
}

int eq_layers_relu(eq_layers *g, int in, eq_err *err)
{
    return s_add_node(g, S_RELU, in, -1, NULL, err) ? g->nnodes - 1 : s_fail(g);
}

int eq_layers_clamp(eq_layers *g, int in, float lo, float hi, eq_err *err)
{
    if (!isfinite(lo) || !isfinite(hi) || !(lo < hi)) {
        eq_err_set(err, EQ_ERR_INVALID, "clamp: bounds [%g, %g] must be finite with lo < hi",
                   (double)lo, (double)hi);
        return s_fail(g);
    }
    s_node *nd = s_add_node(g, S_CLAMP, in, -1, NULL, err);
    if (!nd) return s_fail(g);
    nd->lo = lo, nd->hi = hi;
    return g->nnodes - 1;
}

int eq_layers_dropout(eq_layers *g, int in, double p, eq_err *err)
{
    if (!(p >= 0.0 && p < 1.0)) {
        eq_err_set(err, EQ_ERR_INVALID, "dropout: probability %g must be in [0, 1)", p);
        return s_fail(g);
    }
    s_node *nd = s_add_node(g, S_DROPOUT, in, -1, NULL, err);
    if (!nd) return s_fail(g);
    nd->drop_p = p;
    if (p > 0.0 && !(nd->drop_mask = malloc(2 * s_numel(nd) * sizeof(float)))) {
        eq_err_set(err, EQ_ERR_NOMEM, "dropout (node %d): out of memory", g->nnodes - 1);
        return s_fail(g);
    }
    return g->nnodes - 1;
}

void eq_layers_set_noise_key(eq_layers *g, uint64_t key)
{
    if (g) g->noise_key = key;
}

uint64_t eq_layers_noise_key(const eq_layers *g)
{
    return g ? g->noise_key : 0;
}

/* The dropout mask of node `i` for key `key`: element k keeps (scale
 * 1/(1-p)) when the k-th 24-bit uniform of the node's Philox stream is >= p,
 * else 0 -- a pure function of (seed, key, i, k). */
static void s_drop_mask(const eq_layers *g, int i, uint64_t key, s_node *nd)
{
    size_t n = s_numel(nd);
    uint64_t stream = eq_rng_mix(eq_rng_mix(0x64726f706f7574ull /* "dropout" */, key), (uint64_t)i);
    float scale = 1.0f / (float)(1.0 - nd->drop_p);
    uint32_t w[4];
    for (size_t k = 0; k < n; k++) {
        if (k % 4 == 0) eq_rng_block(g->seed, stream, k / 4, w);
        double u = (double)(w[k % 4] >> 8) * (1.0 / 16777216.0);
        nd->drop_mask[k] = u >= nd->drop_p ? scale : 0.0f;
    }
}

/* dst = src * mask on the backend through host memory (the dropout layer
 * sits on the small classifier input; any backend). */
static eq_status s_drop_apply(eq_backend *be, s_node *nd, const float *src, float *dst, eq_err *err)
{
    size_t n = s_numel(nd);
    float *h = nd->drop_mask + n;
    eq_status st = eq_backend_download(be, h, src, n * sizeof(float), err);
    if (st != EQ_OK) return st;
    for (size_t k = 0; k < n; k++) h[k] *= nd->drop_mask[k];
    return eq_backend_upload(be, dst, h, n * sizeof(float), err);
}

int eq_layers_scalar_affine(eq_layers *g, const char *prefix, const char *scale,
                            const char *bias, int in, eq_err *err)
{
    if (!prefix) {
        eq_err_set(err, EQ_ERR_INVALID, "scalar_affine: prefix is NULL");
        return s_fail(g);
    }
    if (!scale && !bias) {
        eq_err_set(err, EQ_ERR_INVALID, "%s: scalar_affine needs a scale or a bias", prefix);
        return s_fail(g);
    }
    s_node *nd = s_add_node(g, S_SAFF, in, -1, *prefix ? prefix : NULL, err);
    if (!nd) return s_fail(g);
    int64_t shape[1] = {1};
    if (scale && (nd->pw = s_tensor(g, prefix, scale, EQ_MT_PARAM, EQ_DT_F32, 1, shape, true, I_ONES, err)) < 0)
        return s_fail(g);
    if (bias && (nd->pb = s_tensor(g, prefix, bias, EQ_MT_PARAM, EQ_DT_F32, 1, shape, true, I_ZEROS, err)) < 0)
        return s_fail(g);
    return g->nnodes - 1;
}

int eq_layers_prelu(eq_layers *g, const char *name, int in, eq_err *err)
{
    if (s_name_ok(g, name, "prelu", err)) return -1;
    s_node *nd = s_add_node(g, S_PRELU, in, -1, name, err);
    if (!nd) return s_fail(g);
    int64_t shape[1] = {1};
    nd->pw = s_tensor(g, name, "weight", EQ_MT_PARAM, EQ_DT_F32, 1, shape, true, I_PRELU, err);
    return nd->pw < 0 ? s_fail(g) : g->nnodes - 1;
}

static int s_pool(eq_layers *g, s_kind kind, int in, int64_t k, int64_t stride, int64_t pad,
                  eq_err *err)
{
    s_node *nd = s_add_node(g, kind, in, -1, NULL, err);
    if (!nd) return s_fail(g);
    nd->pool = (eq_pool2d_desc){.n = nd->n, .h = nd->h, .w = nd->w, .c = nd->c, .kh = k, .kw = k,
                                .stride_h = stride, .stride_w = stride, .pad_h = pad,
                                .pad_w = pad, .count_include_pad = 1};
    if (eq_pool2d_desc_init(&nd->pool, err) != EQ_OK) {
        eq_err_prefix(err, "%s (node %d): ", S_KIND_NAME[kind], g->nnodes - 1);
        return s_fail(g);
    }
    nd->h = nd->pool.p, nd->w = nd->pool.q;
    return g->nnodes - 1;
}

int eq_layers_maxpool(eq_layers *g, int in, int64_t k, int64_t stride, int64_t pad, eq_err *err)
{
    return s_pool(g, S_MAXPOOL, in, k, stride, pad, err);
}

int eq_layers_avgpool(eq_layers *g, int in, int64_t k, int64_t stride, int64_t pad, eq_err *err)
{
    return s_pool(g, S_AVGPOOL, in, k, stride, pad, err);
}

int eq_layers_add(eq_layers *g, int a, int b, eq_err *err)
{
    s_node *nd = s_add_node(g, S_ADD, a, b, NULL, err);
    if (!nd) return s_fail(g);
    const s_node *x = &g->nodes[a], *y = &g->nodes[b];
    if (x->n != y->n || x->h != y->h || x->w != y->w || x->c != y->c) {
        eq_err_set(err, EQ_ERR_INVALID,
                   "add: node %d [%lld][%lld][%lld][%lld] and node %d [%lld][%lld][%lld][%lld] differ",
                   a, (long long)x->n, (long long)x->h, (long long)x->w, (long long)x->c, b,
                   (long long)y->n, (long long)y->h, (long long)y->w, (long long)y->c);
        return s_fail(g);
    }
    return g->nnodes - 1;
}

int eq_layers_gap(eq_layers *g, int in, eq_err *err)
{
    s_node *nd = s_add_node(g, S_GAP, in, -1, NULL, err);
    if (!nd) return s_fail(g);
    nd->h = nd->w = 1;
    return g->nnodes - 1;
}

int eq_layers_linear(eq_layers *g, const char *name, int in, int64_t out,
                     const eq_quant_opts *wq, const eq_quant_opts *fq, eq_err *err)
{
    if (s_name_ok(g, name, "linear", err)) return -1;
    s_node *nd = s_add_node(g, S_LINEAR, in, -1, name, err);
    if (!nd) return s_fail(g);
    if (out < 1) {
        eq_err_set(err, EQ_ERR_INVALID, "%s: out = %lld must be positive", name, (long long)out);
        return s_fail(g);
    }
    nd->lin_in = nd->h * nd->w * nd->c;
    int64_t n = nd->n;
    nd->h = nd->w = 1;
    nd->c = out;
    int64_t ws[2] = {out, nd->lin_in}, bs[1] = {out};
    if ((nd->pw = s_tensor(g, name, "weight", EQ_MT_PARAM, EQ_DT_F32, 2, ws, false, I_LINEAR, err)) < 0 ||
        (nd->pb = s_tensor(g, name, "bias", EQ_MT_PARAM, EQ_DT_F32, 1, bs, true, I_LINEAR, err)) < 0)
        return s_fail(g);
    if (fq) {
        int64_t xs[2] = {n, nd->lin_in};
        eq_tensor_desc xd;
        if (eq_tensor_desc_init(&xd, EQ_DT_F32, EQ_LAYOUT_NC, 2, xs, err) != EQ_OK ||
            !(nd->qf = s_quant(g, name, "quant_activation", fq, &xd, err)))
            return s_fail(g);
    }
    if (wq) {
        int64_t w4[4] = {1, 1, out, nd->lin_in};
        eq_tensor_desc wd;
        if (eq_tensor_desc_init(&wd, EQ_DT_F32, EQ_LAYOUT_OIHW, 4, w4, err) != EQ_OK ||
            !(nd->qw = s_quant(g, name, "quant_weight", wq, &wd, err)))
            return s_fail(g);
    }
    return g->nnodes - 1;
}

eq_status eq_layers_set_fusion(eq_layers *g, bool on, eq_err *err)
{
    if (!g) return eq_err_set(err, EQ_ERR_INVALID, "set_fusion: graph is NULL");
    if (g->finalized) return eq_err_set(err, EQ_ERR_INVALID, "set_fusion: the graph is finalized");
    g->nofuse = !on;
    return EQ_OK;
}

eq_status eq_layers_set_precision(eq_layers *g, eq_precision p, eq_err *err)
{
    if (!g) return eq_err_set(err, EQ_ERR_INVALID, "set_precision: graph is NULL");
    if (g->finalized) return eq_err_set(err, EQ_ERR_INVALID, "set_precision: the graph is finalized");
    if (p != EQ_PREC_FP32 && p != EQ_PREC_BF16 && p != EQ_PREC_FP16)
        return eq_err_set(err, EQ_ERR_INVALID, "set_precision: precision %d is not fp32 (0), bf16 (1) or fp16 (2)",
                          (int)p);
    g->prec = p;
    return EQ_OK;
}

eq_precision eq_layers_precision(const eq_layers *g)
{
    return g ? g->prec : EQ_PREC_FP32;
}

int eq_layers_shape(const eq_layers *g, int node, int64_t shape[4])
{
    if (!g || node < 0 || node >= g->nnodes) return -1;
    const s_node *nd = &g->nodes[node];
    shape[0] = nd->n, shape[1] = nd->h, shape[2] = nd->w, shape[3] = nd->c;
    return 0;
}

/* ---- finalize ------------------------------------------------------------ */

/* Plan the fused bn_relu chains (see the top of the file). */
static eq_status s_plan_fusion(eq_layers *g, eq_err *err)
{
    if (g->nofuse) return EQ_OK;
    int *uses = calloc((size_t)g->nnodes, sizeof *uses);
    if (!uses) return eq_err_set(err, EQ_ERR_NOMEM, "finalize: out of memory");
    for (int i = 1; i < g->nnodes; i++) {
        uses[g->nodes[i].in0]++;
        if (g->nodes[i].kind == S_ADD) uses[g->nodes[i].in1]++;
    }
    uses[g->nnodes - 1]++; /* the output: read by the caller */
    for (int j = 1; j < g->nnodes; j++) {
        s_node *r = &g->nodes[j];
        int a = r->in0, bn = -1, z = -1;
        if (r->kind != S_RELU || uses[a] != 1) continue;
        const s_node *an = &g->nodes[a];
        if (an->kind == S_BN) {
            bn = a;
        } else if (an->kind == S_ADD && an->in0 != an->in1) {
            int p = an->in0, q = an->in1;
            if (g->nodes[p].kind == S_BN && uses[p] == 1) bn = p, z = q;
            else if (g->nodes[q].kind == S_BN && uses[q] == 1) bn = q, z = p;
            else continue;
            g->nodes[a].fused = j;
        } else {
            continue;
        }
        g->nodes[bn].fused = j;
        r->fbn = bn, r->fz = z;
    }
    free(uses);
    return EQ_OK;
}

/* Host-side initial values of tensor i. */
static void s_init_tensor(const eq_layers *g, size_t i, uint64_t seed, float *v)
{
    const eq_model_tensor *t = &g->t[i];
    eq_rng r;
    eq_rng_init(&r, seed, eq_rng_mix(0x6c61796572696e69ull, i));
    switch (g->tinit[i]) {
    case I_ONES:
        for (size_t k = 0; k < t->numel; k++) v[k] = 1.0f;
        break;
    case I_PRELU:
        for (size_t k = 0; k < t->numel; k++) v[k] = 0.25f;
        break;
    case I_KAIMING: { /* normal, fan_out, ReLU gain */
        double std = sqrt(2.0 / (double)(t->shape[0] * t->shape[2] * t->shape[3]));
        for (size_t k = 0; k < t->numel; k++) v[k] = (float)(eq_rng_normal(&r) * std);
        break;
    }
    case I_LINEAR: { /* U(+-1/sqrt(in)) for the weight and its bias */
        int64_t fan_in = t->ndim == 2 ? t->shape[1] : g->t[i - 1].shape[1];
        double b = 1.0 / sqrt((double)fan_in);
        for (size_t k = 0; k < t->numel; k++)
            v[k] = (float)((eq_rng_uniform_double(&r) * 2.0 - 1.0) * b);
        break;
    }
    default: memset(v, 0, t->numel * sizeof *v); break;
    }
}

eq_status eq_layers_finalize(eq_layers *g, uint64_t seed, eq_err *err)
{
    if (!g) return eq_err_set(err, EQ_ERR_INVALID, "finalize: graph is NULL");
    if (g->broken) return eq_err_set(err, EQ_ERR_INVALID, "finalize: an earlier builder call failed");
    if (g->finalized) return eq_err_set(err, EQ_ERR_INVALID, "finalize: already finalized");
    if (g->nnodes < 2) return eq_err_set(err, EQ_ERR_INVALID, "finalize: the graph has no layers");
    int has_quant = 0;
    for (int i = 0; i < g->nnodes; i++) has_quant |= g->nodes[i].qw || g->nodes[i].qf || g->nodes[i].qo;
    if (has_quant && !eq_backend_runs_quant(g->be))
        return eq_err_set(err, EQ_ERR_UNSUPPORTED, "finalize: the %s backend runs no quantizers",
                          eq_backend_name(g->be));
    eq_status pst = s_plan_fusion(g, err);
    if (pst != EQ_OK) return pst;
    for (int i = 0; i < g->nnodes; i++) { /* mixed precision: the convs' operand hint */
        s_node *nd = &g->nodes[i];
        if (nd->kind != S_CONV) continue;
        nd->conv.prec = (int)g->prec;
        if (nd->pad_before) nd->conv_up.prec = (int)g->prec;
    }
    /* F32 model tensors in one block, gradients in another, I64 on the host */
    size_t total = 0, gtotal = 0, ni64 = 0, maxp = 1;
    for (size_t i = 0; i < g->nt; i++) {
        const eq_model_tensor *t = &g->t[i];
        if (t->quant) continue;
        if (t->dtype == EQ_DT_I64) {
            ni64++;
            continue;
        }
        total += s_round16(t->numel);
        if (t->kind == EQ_MT_PARAM) gtotal += s_round16(t->numel);
        if (t->numel > maxp) maxp = t->numel;
    }
    if (total && !(g->pdata = eq_backend_alloc(g->be, total * sizeof(float), err)))
        return eq_err_prefix(err, "finalize: parameters: "); /* none: a parameter-free graph */
    if (gtotal && !(g->pgrad = eq_backend_alloc(g->be, gtotal * sizeof(float), err)))
        return eq_err_prefix(err, "finalize: gradients: ");
    /* zero: the padding between tensors stays so, so that one pass over
     * the block (eq_layers_grad_block) sees the tensors' values only */
    if (gtotal && eq_backend_zero(g->be, g->pgrad, gtotal * sizeof(float), err) != EQ_OK)
        return eq_err_prefix(err, "finalize: gradients: ");
    g->npgrad = gtotal;
    if (!(g->i64 = calloc(ni64 ? ni64 : 1, sizeof *g->i64)))
        return eq_err_set(err, EQ_ERR_NOMEM, "finalize: out of memory");
    size_t off = 0, goff = 0, ioff = 0;
    for (size_t i = 0; i < g->nt; i++) {
        eq_model_tensor *t = &g->t[i];
        if (t->quant) continue;
        if (t->dtype == EQ_DT_I64) {
            t->data = &g->i64[ioff++];
            continue;
        }
        t->data = g->pdata + off;
        off += s_round16(t->numel);
        if (t->kind == EQ_MT_PARAM) {
            t->grad = g->pgrad + goff;
            goff += s_round16(t->numel);
        }
    }
    float *host = malloc(maxp * sizeof *host);
    if (!host) return eq_err_set(err, EQ_ERR_NOMEM, "finalize: out of memory");
    eq_status st = EQ_OK;
    for (size_t i = 0; i < g->nt && st == EQ_OK; i++) {
        if (g->t[i].quant || g->t[i].dtype != EQ_DT_F32) continue;
        s_init_tensor(g, i, seed, host);
        st = eq_backend_upload(g->be, g->t[i].data, host, g->t[i].numel * sizeof *host, err);
    }
    free(host);
    if (st != EQ_OK) return st;

    /* activations, gradients and saved state: one block */
    size_t need = 0, maxact = 1;
    for (int pass = 0; pass < 2; pass++) {
        float *b = pass ? g->block : NULL;
        for (int i = 0; i < g->nnodes; i++) {
            s_node *nd = &g->nodes[i];
            size_t a = s_round16(s_numel(nd));
#define S_TAKE(ptr, count)                              \
    do {                                                \
        size_t c_ = s_round16(count);                   \
        if (pass) (ptr) = (void *)b, b += c_;           \
        else need += c_;                                \
    } while (0)
            if (nd->kind != S_INPUT && !nd->fused) S_TAKE(nd->y, a);
            if (!nd->fused) S_TAKE(nd->dy, a);
            if (s_numel(nd) > maxact) maxact = s_numel(nd);
            if (nd->kind == S_BN) S_TAKE(nd->save, 2 * (size_t)nd->c);
            if (nd->s2d) S_TAKE(nd->fixed_w, (size_t)(nd->conv.k * nd->conv.c * nd->s2d * nd->s2d));
            if (nd->qo) {
                S_TAKE(nd->yo, a);
                S_TAKE(nd->dyo, a);
            }
            if (nd->kind == S_MAXPOOL) S_TAKE(nd->argmax, a); /* int32: same size as float */
            if (nd->qw) {
                size_t wn = g->t[nd->pw].numel;
                S_TAKE(nd->wq, wn);
                S_TAKE(nd->dwq, wn);
            }
            if (nd->qf) {
                const s_node *in = &g->nodes[nd->in0];
                nd->a_numel = nd->pad_before ? (size_t)(in->n * nd->ph * nd->pw_ * in->c) : s_numel(in);
                if (nd->pad_before) S_TAKE(nd->xp, nd->a_numel);
                S_TAKE(nd->a, nd->a_numel);
                S_TAKE(nd->da, nd->a_numel);
                if (nd->a_numel > maxact) maxact = nd->a_numel;
            }
            if (g->prec != EQ_PREC_FP32 && (nd->kind == S_CONV || nd->kind == S_LINEAR)) {
                /* rounded operands: the weight (and bias), and an input that
                 * is not a stored activation (Qf's output, the network's) */
                if (nd->pw >= 0) {
                    size_t wn = s_round16(g->t[nd->pw].numel);
                    S_TAKE(nd->wr, wn + (nd->pb >= 0 ? g->t[nd->pb].numel : 0));
                    if (pass && nd->pb >= 0) nd->br = nd->wr + wn;
                }
                nd->x_round = nd->qf || nd->in0 == 0;
                if (nd->x_round) S_TAKE(nd->xr, nd->qf ? nd->a_numel : s_numel(&g->nodes[nd->in0]));
            }
#undef S_TAKE
        }
        if (pass) {
            g->tmp = b;
        } else {
            need += s_round16(maxact);
            if (!(g->block = eq_backend_alloc(g->be, need * sizeof(float), err)))
                return eq_err_prefix(err, "finalize: activations: ");
        }
    }
    /* space-to-depth: output channel c*s*s + dy*s + dx takes input channel c
     * at (dy, dx) of each s x s cell (a one-hot conv, exact in float) */
    for (int i = 0; i < g->nnodes; i++) {
        s_node *nd = &g->nodes[i];
        if (!nd->s2d) continue;
        int64_t bs = nd->s2d, c = nd->conv.c, k = nd->conv.k;
        size_t nw = (size_t)(k * c * bs * bs);
        float *w = calloc(nw, sizeof *w);
        if (!w) return eq_err_set(err, EQ_ERR_NOMEM, "finalize: out of memory");
        if (nd->rep) /* channel repeat: output channel o takes input channel o mod c */
            for (int64_t o = 0; o < k; o++) w[o * c + o % c] = 1.0f;
        else
            for (int64_t ci = 0; ci < c; ci++)
                for (int64_t t = 0; t < bs * bs; t++) w[((ci * bs * bs + t) * c + ci) * bs * bs + t] = 1.0f;
        eq_status st2 = eq_backend_upload(g->be, nd->fixed_w, w, nw * sizeof *w, err);
        free(w);
        if (st2 != EQ_OK) return eq_err_prefix(err, "finalize: space_to_depth: ");
    }
    g->seed = seed;
    g->finalized = 1;
    return EQ_OK;
}

/* ---- running ------------------------------------------------------------- */

static float *s_p(const eq_layers *g, int i)
{
    return i < 0 ? NULL : (float *)g->t[i].data;
}

static float *s_g(const eq_layers *g, int i)
{
    return i < 0 ? NULL : g->t[i].grad;
}

/* Mixed precision: round n values in place to the graph's precision (no
 * pass at FP32). */
static eq_status s_rnd(eq_layers *g, float *p, size_t n, eq_err *err)
{
    if (g->prec == EQ_PREC_FP32 || !p) return EQ_OK;
    return eq_backend_round_to(g->be, g->prec, n, p, p, err);
}

/* xp[n][h+2p][w+2p][c] = zero-padded x[n][h][w][c] (dir 0), or the inverse
 * crop dx = interior of dxp (dir 1). */
static eq_status s_pad(eq_backend *be, const s_node *in, int64_t p, const float *src, float *dst,
                       int dir, eq_err *err)
{
    int64_t h = in->h, w = in->w, c = in->c, ph = h + 2 * p, pw = w + 2 * p;
    eq_status st = EQ_OK;
    size_t row = (size_t)(w * c) * sizeof(float), end = 0; /* end: padded offset zeroed or copied up to */
    for (int64_t n = 0; n < in->n && st == EQ_OK; n++)
        for (int64_t y = 0; y < h && st == EQ_OK; y++) {
            size_t xi = (size_t)((n * h + y) * w * c);
            size_t pi = (size_t)(((n * ph + y + p) * pw + p) * c);
            if (dir == 0) { /* only the border is zeroed: the rows are overwritten */
                st = eq_backend_zero(be, dst + end, (pi - end) * sizeof(float), err);
                if (st == EQ_OK) st = eq_backend_copy(be, dst + pi, src + xi, row, err);
                end = pi + (size_t)(w * c);
            } else {
                st = eq_backend_copy(be, dst + xi, src + pi, row, err);
            }
        }
    if (dir == 0 && st == EQ_OK)
        st = eq_backend_zero(be, dst + end, ((size_t)(in->n * ph * pw * c) - end) * sizeof(float), err);
    return st;
}

/* The conv a conv node runs in its last forward (see q_unpadded). */
static const eq_conv2d_desc *s_conv(const s_node *nd)
{
    return nd->q_unpadded ? &nd->conv_up : &nd->conv;
}

/* 1 when the last forward's Qf saw the explicitly padded input. */
static int s_qf_padded(const s_node *nd)
{
    return nd->pad_before && !nd->q_unpadded;
}

/* The descriptor of Qf's input: padded when `padded`. */
static eq_tensor_desc s_desc_of(const s_node *nd, const s_node *in, int padded)
{
    eq_tensor_desc d;
    int64_t s[4] = {in->n, padded ? nd->ph : in->h, padded ? nd->pw_ : in->w, in->c};
    if (nd->kind == S_LINEAR) {
        int64_t s2[2] = {in->n, nd->lin_in};
        eq_tensor_desc_init(&d, EQ_DT_F32, EQ_LAYOUT_NC, 2, s2, NULL);
    } else {
        eq_tensor_desc_init(&d, EQ_DT_F32, EQ_LAYOUT_NHWC, 4, s, NULL);
    }
    return d;
}

/* Quantized weight and input of a conv/linear node: sets *w and *x to what
 * the GEMM reads. */
static eq_status s_quant_fwd(eq_layers *g, s_node *nd, const s_node *in, bool train,
                             const float **w, const float **x, eq_err *err)
{
    eq_status st = EQ_OK;
    *w = s_p(g, nd->pw);
    *x = in->y;
    if (nd->qw) {
        const eq_model_tensor *t = &g->t[nd->pw];
        eq_tensor_desc wd;
        int64_t w4[4] = {1, 1, t->shape[0], t->shape[1]};
        st = t->ndim == 4 ? eq_tensor_desc_init(&wd, EQ_DT_F32, EQ_LAYOUT_OIHW, 4, t->shape, err)
                          : eq_tensor_desc_init(&wd, EQ_DT_F32, EQ_LAYOUT_OIHW, 4, w4, err);
        if (st == EQ_OK) st = eq_backend_quant_forward(g->be, nd->qw, &wd, t->data, nd->wq, train, err);
        if (st != EQ_OK) return eq_err_prefix(err, "quant_weight: ");
        *w = nd->wq;
    }
    if (nd->qf) {
        const float *src = in->y;
        /* padding then quantizing is quantizing then padding when the
         * quantizer maps 0 to 0 and zeros add nothing to its gradients: the
         * conv pads then (conv_up), and the pad, the crop and the border's
         * share of Qf go away */
        nd->q_unpadded = nd->pad_before && eq_quant_zero_pad_exact(nd->qf);
        int padded = s_qf_padded(nd);
        if (padded) {
            if ((st = s_pad(g->be, in, nd->pad, in->y, nd->xp, 0, err)) != EQ_OK) return st;
            src = nd->xp;
        }
        eq_tensor_desc xd = s_desc_of(nd, in, padded);
        st = eq_backend_quant_forward(g->be, nd->qf, &xd, src, nd->a, train, err);
        if (st != EQ_OK) return eq_err_prefix(err, "quant_activation: ");
        *x = nd->a;
    }
    if (g->prec != EQ_PREC_FP32) {
        /* mixed precision: the GEMM reads rounded copies of the weight (and
         * bias) -- the master weight stays fp32, and the quantizers' outputs
         * stay as they made them (eq_layers_quant_output, policy statistics)
         * -- and of an input that is no stored activation: Qf's output (fp32
         * quantizer math) or the network input.  Stored activations hold
         * values of the precision already. */
        if (nd->wr) {
            const eq_model_tensor *t = &g->t[nd->pw];
            st = eq_backend_round_to(g->be, g->prec, t->numel, *w, nd->wr, err);
            if (st == EQ_OK && nd->br)
                st = eq_backend_round_to(g->be, g->prec, g->t[nd->pb].numel, s_p(g, nd->pb), nd->br, err);
            if (st != EQ_OK) return st;
            *w = nd->wr;
        }
        if (nd->x_round) {
            size_t xn = nd->qf && s_qf_padded(nd) ? nd->a_numel : s_numel(in);
            if ((st = eq_backend_round_to(g->be, g->prec, xn, *x, nd->xr, err)) != EQ_OK) return st;
            *x = nd->xr;
        }
    }
    return EQ_OK;
}

/* A fused ReLU's forward: y = relu(bn(x) [+ z]) (see s_plan_fusion). */
static eq_status s_bn_relu_fwd(eq_layers *g, s_node *nd, bool train, eq_err *err)
{
    s_node *bn = &g->nodes[nd->fbn];
    const float *x = g->nodes[bn->in0].y, *z = nd->fz >= 0 ? g->nodes[nd->fz].y : NULL;
    if (!train)
        return eq_backend_bn_relu_fwd_eval(g->be, &bn->bn, x, z, s_p(g, bn->pw), s_p(g, bn->pb),
                                           s_p(g, bn->prm), s_p(g, bn->prv), nd->y, err);
    eq_status st = eq_backend_bn_relu_fwd_train(g->be, &bn->bn, x, z, s_p(g, bn->pw),
                                                s_p(g, bn->pb), s_p(g, bn->prm), s_p(g, bn->prv),
                                                nd->y, bn->save, bn->save + bn->c, err);
    if (st == EQ_OK) (*(int64_t *)g->t[bn->pnbt].data)++;
    return st;
}

/* Mixed precision: whether node nd's output needs a rounding pass after
 * its op.  Every stored activation holds values of the graph's precision,
 * so an op whose output values are some of its input values needs none --
 * ReLU (x or 0), max pool (one input per window), dropout in eval (a copy),
 * clamp (x, lo or hi, when the bounds are representable: ReLU6's 0 and 6
 * are) -- unless it reads the network input, which is fp32.  A fused BN or
 * add stores nothing (its ReLU rounds the chain's output once); everything
 * else computes new values (conv, BN, add, pools with sums, GAP, linear,
 * PReLU, scalar affine, dropout's 1/(1-p) scale, space-to-depth's and
 * channel repeat's one-hot convs -- exact copies, rounded anyway: cheap,
 * and right for an fp32 network input) and rounds. */
static int s_fwd_rounds(const eq_layers *g, const s_node *nd)
{
    switch (nd->kind) {
    case S_INPUT: return 0;
    case S_BN:
    case S_ADD: return !nd->fused;
    case S_RELU: return nd->fbn >= 0 || nd->in0 == 0;
    case S_MAXPOOL: return nd->in0 == 0;
    case S_CLAMP:
        return nd->in0 == 0 || eq_precision_round(g->prec, nd->lo) != nd->lo ||
               eq_precision_round(g->prec, nd->hi) != nd->hi;
    case S_DROPOUT: return nd->drop_train || nd->in0 == 0;
    default: return 1;
    }
}

/* What error messages call node nd. */
static void s_err_node(const eq_layers *g, const s_node *nd, int i, const char *dir, eq_err *err)
{
    if (nd->fbn >= 0)
        eq_err_prefix(err, "%s: %s (node %d, %s): ", dir, g->nodes[nd->fbn].name, i,
                      nd->fz >= 0 ? "bn+add+relu" : "bn+relu");
    else
        eq_err_prefix(err, "%s: %s (node %d, %s): ", dir, nd->name ? nd->name : "-", i,
                      S_KIND_NAME[nd->kind]);
}

eq_status eq_layers_forward(eq_layers *g, const float *x, bool train, eq_err *err)
{
    if (!g || !g->finalized) return eq_err_set(err, EQ_ERR_INVALID, "forward: graph not finalized");
    g->fwd_ok = 0;
    if (!x) return eq_err_set(err, EQ_ERR_INVALID, "forward: input is NULL");
    eq_backend *be = g->be;
    g->nodes[0].y = (float *)x; /* borrowed until the backward */
    eq_status st = EQ_OK;
    for (int i = 1; i < g->nnodes && st == EQ_OK; i++) {
        s_node *nd = &g->nodes[i];
        const s_node *a = &g->nodes[nd->in0];
        const float *wp, *xp;
        switch (nd->kind) {
        case S_CONV:
            st = s_quant_fwd(g, nd, a, train, &wp, &xp, err);
            if (nd->s2d) wp = nd->fixed_w;
            if (st == EQ_OK) st = eq_backend_conv2d_fwd(be, s_conv(nd), xp, wp, nd->qo ? nd->yo : nd->y, err);
            if (st == EQ_OK && nd->qo) {
                int64_t ys[4] = {nd->n, nd->h, nd->w, nd->c};
                eq_tensor_desc yd;
                st = s_rnd(g, nd->yo, s_numel(nd), err); /* the conv's output, before Qo */
                if (st == EQ_OK) st = eq_tensor_desc_init(&yd, EQ_DT_F32, EQ_LAYOUT_NHWC, 4, ys, err);
                if (st == EQ_OK) st = eq_backend_quant_forward(be, nd->qo, &yd, nd->yo, nd->y, train, err);
                if (st != EQ_OK) eq_err_prefix(err, "quant_output: ");
            }
            break;
        case S_BN:
            if (nd->fused) break; /* in its ReLU's bn_relu */
            if (train) {
                st = eq_backend_bn_fwd_train(be, &nd->bn, a->y, s_p(g, nd->pw), s_p(g, nd->pb),
                                             s_p(g, nd->prm), s_p(g, nd->prv), nd->y, nd->save,
                                             nd->save + nd->c, err);
                if (st == EQ_OK) (*(int64_t *)g->t[nd->pnbt].data)++;
            } else {
                st = eq_backend_bn_fwd_eval(be, &nd->bn, a->y, s_p(g, nd->pw), s_p(g, nd->pb),
                                            s_p(g, nd->prm), s_p(g, nd->prv), nd->y, err);
            }
            break;
        case S_RELU:
            st = nd->fbn >= 0 ? s_bn_relu_fwd(g, nd, train, err)
                              : eq_backend_relu_fwd(be, s_numel(nd), a->y, nd->y, err);
            break;
        case S_CLAMP: st = eq_backend_clamp_fwd(be, s_numel(nd), nd->lo, nd->hi, a->y, nd->y, err); break;
        case S_DROPOUT:
            nd->drop_train = train && nd->drop_p > 0.0;
            if (nd->drop_train) {
                s_drop_mask(g, i, g->noise_key, nd);
                st = s_drop_apply(be, nd, a->y, nd->y, err);
            } else {
                st = eq_backend_copy(be, nd->y, a->y, s_numel(nd) * sizeof(float), err);
            }
            break;
        case S_SAFF:
            st = eq_backend_scalar_affine_fwd(be, s_numel(nd), a->y, s_p(g, nd->pw), s_p(g, nd->pb), nd->y, err);
            break;
        case S_PRELU:
            st = eq_backend_prelu_fwd(be, (int64_t)(s_numel(nd) / (size_t)nd->c), nd->c, 1, a->y,
                                      s_p(g, nd->pw), nd->y, err);
            break;
        case S_MAXPOOL: st = eq_backend_maxpool_fwd(be, &nd->pool, a->y, nd->y, nd->argmax, err); break;
        case S_AVGPOOL: st = eq_backend_avgpool_fwd(be, &nd->pool, a->y, nd->y, err); break;
        case S_ADD:
            if (!nd->fused) st = eq_backend_add(be, s_numel(nd), a->y, g->nodes[nd->in1].y, nd->y, err);
            break;
        case S_GAP: st = eq_backend_gap_fwd(be, a->n, a->h * a->w, a->c, a->y, nd->y, err); break;
        case S_LINEAR:
            st = s_quant_fwd(g, nd, a, train, &wp, &xp, err);
            if (st == EQ_OK)
                st = eq_backend_linear_fwd(be, nd->n, nd->lin_in, nd->c, xp, wp,
                                           nd->br ? nd->br : s_p(g, nd->pb), nd->y, err);
            break;
        case S_INPUT: break;
        }
        if (st == EQ_OK && g->prec != EQ_PREC_FP32 && s_fwd_rounds(g, nd))
            st = s_rnd(g, nd->y, s_numel(nd), err);
        if (st != EQ_OK) s_err_node(g, nd, i, "forward", err);
    }
    g->fwd_ok = st == EQ_OK;
    if (st == EQ_OK && train) g->noise_key++; /* the next training forward draws new masks */
    return st;
}

float *eq_layers_output(const eq_layers *g, float **dy, int64_t shape[4])
{
    if (!g || !g->finalized) return NULL;
    const s_node *o = &g->nodes[g->nnodes - 1];
    if (dy) *dy = o->dy;
    if (shape) shape[0] = o->n, shape[1] = o->h, shape[2] = o->w, shape[3] = o->c;
    return o->y;
}

static float *s_target(eq_layers *g, int in)
{
    return g->nodes[in].dy_set ? g->tmp : g->nodes[in].dy;
}

/* Node `cur` has written its contribution to node `in`'s gradient into
 * s_target(g, in): count it.  A second contribution (in tmp) is added in,
 * or left pending for a fused ReLU processed right after `cur`. */
static eq_status s_commit(eq_layers *g, int in, int cur, eq_err *err)
{
    s_node *nd = &g->nodes[in];
    if (!nd->dy_set) {
        nd->dy_set = 1;
        return EQ_OK;
    }
    /* mixed precision: the sum is stored (rounded), so no pending part
     * for the fused op to add unrounded */
    if (in == cur - 1 && nd->fbn >= 0 && !nd->dy_pend && g->prec == EQ_PREC_FP32) {
        nd->dy_pend = 1;
        return EQ_OK;
    }
    eq_status st = eq_backend_add(g->be, s_numel(nd), nd->dy, g->tmp, nd->dy, err);
    return st == EQ_OK ? s_rnd(g, nd->dy, s_numel(nd), err) : st;
}

/* A fused ReLU's backward (node i): the BN input's gradient (dx) and the
 * residual's (dz), plus the BN's parameter gradients. */
static eq_status s_bn_relu_bwd(eq_layers *g, int i, eq_err *err)
{
    eq_backend *be = g->be;
    s_node *nd = &g->nodes[i], *bn = &g->nodes[nd->fbn];
    const int xi = bn->in0, zi = nd->fz;
    const size_t n = s_numel(nd);
    const int need_dx = g->nodes[xi].kind != S_INPUT;
    const int need_dz = zi >= 0 && g->nodes[zi].kind != S_INPUT;
    eq_status st = EQ_OK;
    float *dx = need_dx ? s_target(g, xi) : g->tmp; /* tmp: a scratch for an unwanted dx */
    if (nd->dy_pend && dx == g->tmp) { /* tmp is wanted for dx: add the pending part now */
        st = eq_backend_add(be, n, nd->dy, g->tmp, nd->dy, err);
        nd->dy_pend = 0;
        if (st != EQ_OK) return st;
    }
    /* dz straight into the residual's buffer when it has no gradient yet,
     * else (and when the residual is the BN's input) over our dy, added below */
    const int z_direct = need_dz && !g->nodes[zi].dy_set && zi != xi;
    float *dz = !need_dz ? NULL : z_direct ? g->nodes[zi].dy : nd->dy;
    st = eq_backend_bn_relu_bwd(be, &bn->bn, g->nodes[xi].y, nd->y, nd->dy,
                                nd->dy_pend ? g->tmp : NULL, s_p(g, bn->pw), bn->save,
                                bn->save + bn->c, dx, dz, s_g(g, bn->pw), s_g(g, bn->pb), err);
    nd->dy_pend = 0;
    /* mixed precision: dx is new values; dz is dy where y > 0, else 0 */
    if (st == EQ_OK && need_dx) st = s_rnd(g, dx, n, err);
    if (st == EQ_OK && need_dx) st = s_commit(g, xi, i, err);
    if (st == EQ_OK && need_dz) {
        s_node *z = &g->nodes[zi];
        if (!z_direct && z->dy_set) {
            st = eq_backend_add(be, n, z->dy, nd->dy, z->dy, err);
            if (st == EQ_OK) st = s_rnd(g, z->dy, n, err);
        } else if (!z_direct) {
            st = eq_backend_copy(be, z->dy, nd->dy, n * sizeof(float), err);
        }
        z->dy_set = 1;
    }
    return st;
}

/* Backward of a conv/linear node's quantizers, given the GEMM's gradient
 * w.r.t. its (quantized) input (when qf: in dx when dx is wanted and the
 * quantizer saw the unpadded input, else in nd->da) and weight in nd->dwq
 * (when qw).  dx: where the gradient w.r.t. the node's input goes (NULL:
 * not needed). */
static eq_status s_quant_bwd(eq_layers *g, s_node *nd, const s_node *in, float *dx, eq_err *err)
{
    eq_status st = EQ_OK;
    if (nd->qw) {
        const eq_model_tensor *t = &g->t[nd->pw];
        st = eq_backend_quant_backward(g->be, nd->qw, t->data, nd->dwq, t->grad, err);
        if (st != EQ_OK) return eq_err_prefix(err, "quant_weight: ");
    }
    if (nd->qf) {
        /* the quantizer's parameter gradients are wanted even when dx is
         * not; unpadded, it runs in place in dx */
        int padded = s_qf_padded(nd);
        float *qg = dx && !padded ? dx : nd->da;
        st = eq_backend_quant_backward(g->be, nd->qf, padded ? nd->xp : in->y, qg, qg, err);
        if (st != EQ_OK) return eq_err_prefix(err, "quant_activation: ");
        if (dx && padded) st = s_pad(g->be, in, nd->pad, nd->da, dx, 1, err);
    }
    return st;
}

eq_status eq_layers_backward(eq_layers *g, eq_err *err)
{
    if (!g || !g->finalized) return eq_err_set(err, EQ_ERR_INVALID, "backward: graph not finalized");
    eq_backend *be = g->be;
    for (int i = 0; i < g->nnodes; i++) g->nodes[i].dy_set = g->nodes[i].dy_pend = 0;
    g->nodes[g->nnodes - 1].dy_set = 1;
    /* mixed precision: the caller's d/dlogits (scaled by a loss scale) is
     * an activation gradient too */
    const s_node *out = &g->nodes[g->nnodes - 1];
    eq_status st = s_rnd(g, out->dy, s_numel(out), err);
    if (st != EQ_OK) return eq_err_prefix(err, "backward: output gradient: ");
    for (int i = g->nnodes - 1; i > 0 && st == EQ_OK; i--) {
        s_node *nd = &g->nodes[i];
        if (!nd->dy_set) continue; /* does not reach the output */
        s_node *a = &g->nodes[nd->in0];
        int need_dx = a->kind != S_INPUT;
        float *dx = need_dx ? s_target(g, nd->in0) : NULL;
        switch (nd->kind) {
        case S_CONV:
        case S_LINEAR: {
            /* the forward's operands (mixed precision: the rounded copies) */
            const float *xin = nd->x_round ? nd->xr : nd->qf ? nd->a : a->y;
            const float *w = nd->s2d ? nd->fixed_w : nd->wr ? nd->wr : nd->qw ? nd->wq : s_p(g, nd->pw);
            size_t xn = nd->qf && s_qf_padded(nd) ? nd->a_numel : s_numel(a);
            float *dw = nd->qw ? nd->dwq : s_g(g, nd->pw);
            /* with qf the GEMM's input gradient goes through Qf: in place in
             * dx when the input is not padded (the quantizer's gy and gx may
             * alias; no separate buffer to fill and read back), else in da */
            float *gx = nd->qf && (!dx || s_qf_padded(nd)) ? nd->da : dx;
            if (nd->kind == S_CONV) {
                const float *gy = nd->dy;
                if (nd->qo) { /* through the output quantizer first */
                    st = eq_backend_quant_backward(be, nd->qo, nd->yo, nd->dy, nd->dyo, err);
                    if (st != EQ_OK) eq_err_prefix(err, "quant_output: ");
                    if (st == EQ_OK) st = s_rnd(g, nd->dyo, s_numel(nd), err); /* the stored yo's */
                    gy = nd->dyo;
                }
                if (st == EQ_OK && !nd->s2d) st = eq_backend_conv2d_bwd_filter(be, s_conv(nd), xin, gy, dw, err);
                if (st == EQ_OK && gx) st = eq_backend_conv2d_bwd_data(be, s_conv(nd), gy, w, gx, err);
            } else {
                st = eq_backend_linear_bwd_weight(be, nd->n, nd->lin_in, nd->c, xin, nd->dy, dw,
                                                  s_g(g, nd->pb), err);
                if (st == EQ_OK && gx)
                    st = eq_backend_linear_bwd_data(be, nd->n, nd->lin_in, nd->c, nd->dy, w, gx, err);
                if (st == EQ_OK) st = s_rnd(g, nd->br ? s_g(g, nd->pb) : NULL, (size_t)nd->c, err);
            }
            /* mixed precision: the gradients of the rounded operands are
             * rounded (the backward of PyTorch's cast): the weight's (the
             * fp32 master gradient, or Qw's gy) and, through Qf, the input's
             * (Qf's gy; the input's own gradient is rounded below) */
            if (st == EQ_OK && !nd->s2d) st = s_rnd(g, dw, g->t[nd->pw].numel, err);
            if (st == EQ_OK && gx && nd->qf) st = s_rnd(g, gx, xn, err);
            if (st == EQ_OK) st = s_quant_bwd(g, nd, a, dx, err);
            break;
        }
        case S_BN:
            st = eq_backend_bn_bwd(be, &nd->bn, a->y, nd->dy, s_p(g, nd->pw), nd->save,
                                   nd->save + nd->c, need_dx ? dx : g->tmp, s_g(g, nd->pw),
                                   s_g(g, nd->pb), err);
            break;
        case S_RELU:
            if (nd->fbn >= 0) {
                st = s_bn_relu_bwd(g, i, err);
                need_dx = 0; /* committed */
            } else if (need_dx) {
                st = eq_backend_relu_bwd(be, s_numel(nd), nd->y, nd->dy, dx, err);
            }
            break;
        case S_SAFF:
            st = eq_backend_scalar_affine_bwd(be, s_numel(nd), a->y, nd->dy, s_p(g, nd->pw),
                                              need_dx ? dx : NULL, s_g(g, nd->pw), s_g(g, nd->pb), err);
            break;
        case S_DROPOUT:
            if (need_dx)
                st = nd->drop_train ? s_drop_apply(be, nd, nd->dy, dx, err)
                                    : eq_backend_copy(be, dx, nd->dy, s_numel(nd) * sizeof(float), err);
            break;
        case S_CLAMP:
            if (need_dx) st = eq_backend_clamp_bwd(be, s_numel(nd), nd->lo, nd->hi, nd->y, nd->dy, dx, err);
            break;
        case S_PRELU:
            st = eq_backend_prelu_bwd(be, (int64_t)(s_numel(nd) / (size_t)nd->c), nd->c, 1, a->y,
                                      s_p(g, nd->pw), nd->dy, need_dx ? dx : g->tmp,
                                      s_g(g, nd->pw), err);
            break;
        case S_MAXPOOL:
            if (need_dx) st = eq_backend_maxpool_bwd(be, &nd->pool, nd->argmax, nd->dy, dx, err);
            break;
        case S_AVGPOOL:
            if (need_dx) st = eq_backend_avgpool_bwd(be, &nd->pool, nd->dy, dx, err);
            break;
        case S_ADD: {
            /* Both inputs get dy: the first input whose gradient is still
             * unset takes the buffer itself (the two nodes swap dy buffers,
             * which have the same size; the output node's is never given
             * away, its caller fills it), the other a copy, and an input
             * with a gradient already adds dy in place. */
            const float *src = nd->dy;
            int own = i != g->nnodes - 1;
            for (int k = 0; k < 2 && st == EQ_OK; k++) {
                s_node *in = &g->nodes[k ? nd->in1 : nd->in0];
                if (in->kind == S_INPUT) continue;
                if (in->dy_set) {
                    st = eq_backend_add(be, s_numel(nd), in->dy, src, in->dy, err);
                    if (st == EQ_OK) st = s_rnd(g, in->dy, s_numel(nd), err);
                } else if (own) {
                    float *t = in->dy;
                    in->dy = nd->dy, nd->dy = t, own = 0;
                    src = in->dy;
                    nd->dy_set = 0; /* passed on (eq_layers_node_buffers) */
                } else {
                    st = eq_backend_copy(be, in->dy, src, s_numel(nd) * sizeof(float), err);
                }
                in->dy_set = 1;
            }
            need_dx = 0; /* committed */
            break;
        }
        case S_GAP:
            if (need_dx) st = eq_backend_gap_bwd(be, a->n, a->h * a->w, a->c, nd->dy, dx, err);
            break;
        case S_INPUT: break;
        }
        /* mixed precision: every gradient contribution is stored rounded;
         * ReLU's, clamp's (dy or 0) and dropout's in eval (a copy) are
         * some of dy's values already */
        if (st == EQ_OK && need_dx && g->prec != EQ_PREC_FP32 &&
            !(nd->kind == S_RELU || nd->kind == S_CLAMP || (nd->kind == S_DROPOUT && !nd->drop_train)))
            st = s_rnd(g, dx, s_numel(a), err);
        if (st == EQ_OK && need_dx) st = s_commit(g, nd->in0, i, err);
        if (st == EQ_OK && g->grad_fn) g->grad_fn(g->grad_arg, i);
        if (st != EQ_OK) s_err_node(g, nd, i, "backward", err);
    }
    /* the quantizers' parameter gradients, on a backend that leaves them
     * pending (CUDA): one wait for all, with the rest of the backward
     * still queued */
    if (st == EQ_OK && (st = eq_backend_quant_grads_wait(be, err)) != EQ_OK)
        eq_err_prefix(err, "backward: quantizer parameter gradients: ");
    return st;
}

static const s_node *s_named_qnode(const eq_layers *g, const char *layer)
{
    if (!g || !layer) return NULL;
    for (int i = 1; i < g->nnodes; i++) {
        const s_node *nd = &g->nodes[i];
        if ((nd->kind == S_CONV || nd->kind == S_LINEAR) && nd->name && !strcmp(nd->name, layer))
            return nd;
    }
    return NULL;
}

eq_quant *eq_layers_quant(const eq_layers *g, const char *layer, eq_quant_tag tag)
{
    const s_node *nd = s_named_qnode(g, layer);
    if (!nd) return NULL;
    switch (tag) {
    case EQ_QTAG_WT: return nd->qw;
    case EQ_QTAG_FM: return nd->qf;
    case EQ_QTAG_OT: return nd->qo;
    default: return NULL;
    }
}

const float *eq_layers_quant_output(const eq_layers *g, const char *layer, eq_quant_tag tag,
                                    int64_t *n)
{
    if (n) *n = 0;
    const s_node *nd = s_named_qnode(g, layer);
    if (!nd || !g->finalized || !g->fwd_ok) return NULL;
    const float *p = NULL;
    size_t cnt = 0;
    if (tag == EQ_QTAG_WT && nd->qw) p = nd->wq, cnt = g->t[nd->pw].numel;
    else if (tag == EQ_QTAG_FM && nd->qf) {
        p = nd->a, cnt = nd->a_numel;
        /* quantized unpadded: pad it now (Q(0) = 0), as the quantizer would
         * have seen it; xp is free then until the next forward */
        if (nd->q_unpadded) {
            eq_err e = {0};
            p = s_pad(g->be, &g->nodes[nd->in0], nd->pad, nd->a, nd->xp, 0, &e) == EQ_OK ? nd->xp : NULL;
            if (!p) cnt = 0;
        }
    }
    else if (tag == EQ_QTAG_OT && nd->qo) p = nd->y, cnt = s_numel(nd);
    if (p && n) *n = (int64_t)cnt;
    return p;
}

eq_status eq_layers_set_quant_loss_scale(eq_layers *g, float scale, eq_err *err)
{
    for (int i = 1; g && i < g->nnodes; i++) {
        s_node *nd = &g->nodes[i];
        eq_quant *q[3] = {nd->qw, nd->qf, nd->qo};
        for (int k = 0; k < 3; k++) {
            eq_status st = q[k] ? eq_quant_set_loss_scale(q[k], scale, err) : EQ_OK;
            if (st) return st;
        }
    }
    return EQ_OK;
}

float *eq_layers_grad_block(const eq_layers *g, size_t *n)
{
    if (n) *n = g ? g->npgrad : 0;
    return g ? g->pgrad : NULL;
}

double eq_layers_quant_aux_loss(const eq_layers *g)
{
    double sum = 0;
    for (int i = 1; g && i < g->nnodes; i++) {
        const s_node *nd = &g->nodes[i];
        if (nd->qw) sum += eq_quant_aux_loss(nd->qw);
        if (nd->qf) sum += eq_quant_aux_loss(nd->qf);
        if (nd->qo) sum += eq_quant_aux_loss(nd->qo);
    }
    return sum;
}

void eq_layers_set_grad_hook(eq_layers *g, eq_layers_grad_fn *fn, void *arg)
{
    if (!g) return;
    g->grad_fn = fn;
    g->grad_arg = arg;
}

int eq_layers_tensor_node(const eq_layers *g, size_t i)
{
    if (!g || i >= g->nt) return -1;
    int k = g->tnode[i];
    return k > 0 && g->nodes[k].fused ? g->nodes[k].fused : k; /* a fused BN's: its ReLU's backward */
}

int eq_layers_node_buffers(const eq_layers *g, int node, const float **y, const float **dy,
                           size_t *n)
{
    if (!g || !g->finalized || node < 0 || node >= g->nnodes) return -1;
    const s_node *nd = &g->nodes[node];
    if (y) *y = node > 0 ? nd->y : NULL;
    if (dy) *dy = node > 0 && nd->dy_set ? nd->dy : NULL;
    if (n) *n = s_numel(nd);
    return 0;
}

int eq_layers_node_count(const eq_layers *g)
{
    return g ? g->nnodes : 0;
}

size_t eq_layers_tensor_count(const eq_layers *g)
{
    return g ? g->nt : 0;
}

const eq_model_tensor *eq_layers_tensor_at(const eq_layers *g, size_t i)
{
    return g && i < g->nt ? &g->t[i] : NULL;
}
