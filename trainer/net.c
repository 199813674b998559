/*
 * trainer/net.c -- the static layer graph of trainer/net.h and the
 * torchvision ResNet builder.
 *
 * Nodes are stored in topological order (a node's inputs were added before
 * it), so forward walks them in order and backward in reverse.  A node's
 * gradient buffer receives the sum of its consumers' contributions: the
 * first contribution is written straight into it, later ones go through
 * the scratch buffer `tmp` and an add (residual forks).
 */
#include "trainer/net.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"

typedef enum s_kind {
    S_INPUT,
    S_CONV,
    S_BN,
    S_RELU,
    S_MAXPOOL,
    S_ADD,
    S_GAP,
    S_LINEAR
} s_kind;

static const char *const S_KIND_NAME[] = {"input", "conv", "bn", "relu", "maxpool", "add", "gap", "linear"};

typedef struct s_node {
    s_kind kind;
    int in0, in1;
    int64_t n, h, w, c; /* output shape, NHWC */
    eq_conv2d_desc conv;
    eq_pool2d_desc pool;
    eq_bn_desc bn;
    int64_t lin_in;
    int pw, pb, prm, prv; /* parameter indices, -1 if none */
    float *y, *dy;        /* activation, gradient (device) */
    float *save;          /* BN: mean [c] then invstd [c] */
    int32_t *argmax;      /* max pool */
    int dy_set;           /* backward: dy holds a contribution */
} s_node;

struct eq_net {
    eq_backend *be;
    s_node *nodes;
    int nnodes, ncap;
    eq_net_tensor *params;
    size_t nparams, pcap;
    float *pdata, *pgrad; /* one block each */
    float *tmp;           /* scratch: largest activation */
    void *block;          /* activations, gradients, saved state */
    int finalized, broken;
    int64_t bn_batches;
};

static size_t s_numel(const s_node *nd)
{
    return (size_t)(nd->n * nd->h * nd->w * nd->c);
}

eq_net *eq_net_new(eq_backend *be, eq_err *err)
{
    if (!be) {
        eq_err_set(err, EQ_ERR_INVALID, "eq_net_new: backend is NULL");
        return NULL;
    }
    eq_net *net = calloc(1, sizeof *net);
    if (!net) {
        eq_err_set(err, EQ_ERR_NOMEM, "eq_net_new: out of memory");
        return NULL;
    }
    net->be = be;
    return net;
}

void eq_net_destroy(eq_net **net_p)
{
    if (!net_p || !*net_p) return;
    eq_net *net = *net_p;
    for (size_t i = 0; i < net->nparams; i++) free((char *)net->params[i].name);
    eq_backend_release(net->be, net->pdata);
    eq_backend_release(net->be, net->pgrad);
    eq_backend_release(net->be, net->block);
    free(net->params);
    free(net->nodes);
    free(net);
    *net_p = NULL;
}

/* ---- building ------------------------------------------------------------ */

static eq_status s_usable(eq_net *net, const char *what, eq_err *err)
{
    if (!net) return eq_err_set(err, EQ_ERR_INVALID, "%s: net is NULL", what);
    if (net->broken)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: an earlier builder call failed", what);
    if (net->finalized)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: the net is finalized", what);
    return EQ_OK;
}

static int s_fail(eq_net *net)
{
    if (net) net->broken = 1;
    return -1;
}

/* New node fed by in0 (and in1), or NULL with err (net then broken). */
static s_node *s_add_node(eq_net *net, s_kind kind, int in0, int in1, const char *what,
                          eq_err *err)
{
    if (s_usable(net, what, err) != EQ_OK) return NULL;
    if (kind != S_INPUT && net->nnodes == 0) {
        eq_err_set(err, EQ_ERR_INVALID, "%s: add the input first", what);
        return NULL;
    }
    if (kind == S_INPUT && net->nnodes != 0) {
        eq_err_set(err, EQ_ERR_INVALID, "%s: the net already has an input", what);
        return NULL;
    }
    if (kind != S_INPUT && (in0 < 0 || in0 >= net->nnodes || (kind == S_ADD && (in1 < 0 || in1 >= net->nnodes)))) {
        eq_err_set(err, EQ_ERR_INVALID, "%s: input node %d does not exist (net has %d)", what,
                   in0 < 0 || in0 >= net->nnodes ? in0 : in1, net->nnodes);
        return NULL;
    }
    if (net->nnodes == net->ncap) {
        int cap = net->ncap ? net->ncap * 2 : 32;
        s_node *p = realloc(net->nodes, (size_t)cap * sizeof *p);
        if (!p) {
            eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory", what);
            return NULL;
        }
        net->nodes = p;
        net->ncap = cap;
    }
    s_node *nd = &net->nodes[net->nnodes++];
    memset(nd, 0, sizeof *nd);
    nd->kind = kind;
    nd->in0 = in0;
    nd->in1 = in1;
    nd->pw = nd->pb = nd->prm = nd->prv = -1;
    if (kind != S_INPUT) {
        const s_node *a = &net->nodes[in0];
        nd->n = a->n, nd->h = a->h, nd->w = a->w, nd->c = a->c;
    }
    return nd;
}

/* Register a tensor "<prefix>.<suffix>"; returns its index or -1. */
static int s_param(eq_net *net, const char *prefix, const char *suffix, int ndim,
                   const int64_t *shape, int trainable, eq_err *err)
{
    char name[256];
    int len = snprintf(name, sizeof name, "%s.%s", prefix, suffix);
    if (len < 0 || (size_t)len >= sizeof name) {
        eq_err_set(err, EQ_ERR_INVALID, "parameter name '%s.%s' is too long", prefix, suffix);
        return -1;
    }
    for (size_t i = 0; i < net->nparams; i++)
        if (!strcmp(net->params[i].name, name)) {
            eq_err_set(err, EQ_ERR_INVALID, "parameter '%s' defined twice", name);
            return -1;
        }
    if (net->nparams == net->pcap) {
        size_t cap = net->pcap ? net->pcap * 2 : 64;
        eq_net_tensor *p = realloc(net->params, cap * sizeof *p);
        if (!p) {
            eq_err_set(err, EQ_ERR_NOMEM, "out of memory adding '%s'", name);
            return -1;
        }
        net->params = p;
        net->pcap = cap;
    }
    eq_net_tensor *t = &net->params[net->nparams];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) {
        eq_err_set(err, EQ_ERR_NOMEM, "out of memory adding '%s'", name);
        return -1;
    }
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->numel *= (size_t)shape[i];
    }
    t->trainable = trainable;
    return (int)net->nparams++;
}

static int s_name_ok(eq_net *net, const char *name, const char *what, eq_err *err)
{
    if (!name || !*name) {
        eq_err_set(err, EQ_ERR_INVALID, "%s: empty layer name", what);
        return s_fail(net);
    }
    return 0;
}

int eq_net_input(eq_net *net, int64_t n, int64_t h, int64_t w, int64_t c, eq_err *err)
{
    s_node *nd = s_add_node(net, S_INPUT, -1, -1, "input", err);
    if (!nd) return s_fail(net);
    if (n < 1 || h < 1 || w < 1 || c < 1) {
        eq_err_set(err, EQ_ERR_INVALID, "input: shape [%lld][%lld][%lld][%lld] must be positive",
                   (long long)n, (long long)h, (long long)w, (long long)c);
        return s_fail(net);
    }
    nd->n = n, nd->h = h, nd->w = w, nd->c = c;
    return net->nnodes - 1;
}

int eq_net_conv(eq_net *net, const char *name, int in, int64_t k, int64_t r, int64_t stride,
                int64_t pad, int64_t groups, eq_err *err)
{
    if (s_name_ok(net, name, "conv", err)) return -1;
    s_node *nd = s_add_node(net, S_CONV, in, -1, name, err);
    if (!nd) return s_fail(net);
    eq_conv2d_desc *d = &nd->conv;
    *d = (eq_conv2d_desc){.n = nd->n, .h = nd->h, .w = nd->w, .c = nd->c, .k = k, .r = r, .s = r,
                          .stride_h = stride, .stride_w = stride, .pad_h = pad, .pad_w = pad,
                          .dil_h = 1, .dil_w = 1, .groups = groups};
    if (eq_conv2d_desc_init(d, err) != EQ_OK) {
        eq_err_prefix(err, "%s: ", name);
        return s_fail(net);
    }
    nd->h = d->p, nd->w = d->q, nd->c = k;
    int64_t shape[4] = {k, d->c / groups, r, r};
    nd->pw = s_param(net, name, "weight", 4, shape, 1, err);
    return nd->pw < 0 ? s_fail(net) : net->nnodes - 1;
}

int eq_net_bn(eq_net *net, const char *name, int in, eq_err *err)
{
    if (s_name_ok(net, name, "bn", err)) return -1;
    s_node *nd = s_add_node(net, S_BN, in, -1, name, err);
    if (!nd) return s_fail(net);
    if (eq_bn_desc_init(&nd->bn, nd->n * nd->h * nd->w, nd->c, 1e-5f, 0.1f, err) != EQ_OK) {
        eq_err_prefix(err, "%s: ", name);
        return s_fail(net);
    }
    int64_t shape[1] = {nd->c};
    if ((nd->pw = s_param(net, name, "weight", 1, shape, 1, err)) < 0 ||
        (nd->pb = s_param(net, name, "bias", 1, shape, 1, err)) < 0 ||
        (nd->prm = s_param(net, name, "running_mean", 1, shape, 0, err)) < 0 ||
        (nd->prv = s_param(net, name, "running_var", 1, shape, 0, err)) < 0)
        return s_fail(net);
    return net->nnodes - 1;
}

int eq_net_relu(eq_net *net, int in, eq_err *err)
{
    return s_add_node(net, S_RELU, in, -1, "relu", err) ? net->nnodes - 1 : s_fail(net);
}

int eq_net_maxpool(eq_net *net, int in, int64_t k, int64_t stride, int64_t pad, eq_err *err)
{
    s_node *nd = s_add_node(net, S_MAXPOOL, in, -1, "maxpool", err);
    if (!nd) return s_fail(net);
    nd->pool = (eq_pool2d_desc){.n = nd->n, .h = nd->h, .w = nd->w, .c = nd->c, .kh = k, .kw = k,
                                .stride_h = stride, .stride_w = stride, .pad_h = pad,
                                .pad_w = pad, .count_include_pad = 1};
    if (eq_pool2d_desc_init(&nd->pool, err) != EQ_OK) return s_fail(net);
    nd->h = nd->pool.p, nd->w = nd->pool.q;
    return net->nnodes - 1;
}

int eq_net_add(eq_net *net, int a, int b, eq_err *err)
{
    s_node *nd = s_add_node(net, S_ADD, a, b, "add", err);
    if (!nd) return s_fail(net);
    const s_node *x = &net->nodes[a], *y = &net->nodes[b];
    if (x->n != y->n || x->h != y->h || x->w != y->w || x->c != y->c) {
        eq_err_set(err, EQ_ERR_INVALID,
                   "add: node %d [%lld][%lld][%lld][%lld] and node %d [%lld][%lld][%lld][%lld] differ",
                   a, (long long)x->n, (long long)x->h, (long long)x->w, (long long)x->c, b,
                   (long long)y->n, (long long)y->h, (long long)y->w, (long long)y->c);
        return s_fail(net);
    }
    return net->nnodes - 1;
}

int eq_net_gap(eq_net *net, int in, eq_err *err)
{
    s_node *nd = s_add_node(net, S_GAP, in, -1, "gap", err);
    if (!nd) return s_fail(net);
    nd->h = nd->w = 1;
    return net->nnodes - 1;
}

int eq_net_linear(eq_net *net, const char *name, int in, int64_t out, eq_err *err)
{
    if (s_name_ok(net, name, "linear", err)) return -1;
    s_node *nd = s_add_node(net, S_LINEAR, in, -1, name, err);
    if (!nd) return s_fail(net);
    if (out < 1) {
        eq_err_set(err, EQ_ERR_INVALID, "%s: out = %lld must be positive", name, (long long)out);
        return s_fail(net);
    }
    nd->lin_in = nd->h * nd->w * nd->c;
    nd->h = nd->w = 1;
    nd->c = out;
    int64_t ws[2] = {out, nd->lin_in}, bs[1] = {out};
    if ((nd->pw = s_param(net, name, "weight", 2, ws, 1, err)) < 0 ||
        (nd->pb = s_param(net, name, "bias", 1, bs, 1, err)) < 0)
        return s_fail(net);
    return net->nnodes - 1;
}

/* ---- finalize ------------------------------------------------------------ */

static size_t s_round16(size_t n)
{
    return (n + 15) / 16 * 16;
}

/* Host-side initial values, torchvision's ResNet init. */
static void s_init_tensor(const eq_net *net, size_t i, uint64_t seed, float *v)
{
    const eq_net_tensor *t = &net->params[i];
    const char *suffix = strrchr(t->name, '.');
    eq_rng r;
    eq_rng_init(&r, seed, eq_rng_mix(0x6e6574696e6974ull, i));
    if (!strcmp(suffix, ".running_var") || (t->ndim == 1 && !strcmp(suffix, ".weight"))) {
        for (size_t k = 0; k < t->numel; k++) v[k] = 1.0f; /* BN weight, running var */
    } else if (t->ndim == 4) {
        double std = sqrt(2.0 / (double)(t->shape[0] * t->shape[2] * t->shape[3]));
        for (size_t k = 0; k < t->numel; k++) v[k] = (float)(eq_rng_normal(&r) * std);
    } else if (t->ndim == 2 || (t->ndim == 1 && !strcmp(suffix, ".bias") && i > 0 &&
                                net->params[i - 1].ndim == 2)) {
        /* linear weight and its bias: U(-1/sqrt(in), 1/sqrt(in)) */
        int64_t fan_in = t->ndim == 2 ? t->shape[1] : net->params[i - 1].shape[1];
        double b = 1.0 / sqrt((double)fan_in);
        for (size_t k = 0; k < t->numel; k++) v[k] = (float)((eq_rng_uniform_double(&r) * 2.0 - 1.0) * b);
    } else {
        memset(v, 0, t->numel * sizeof *v); /* BN bias, running mean */
    }
}

eq_status eq_net_finalize(eq_net *net, uint64_t seed, eq_err *err)
{
    eq_status st = s_usable(net, "finalize", err);
    if (st != EQ_OK) return st;
    if (net->nnodes < 2) return eq_err_set(err, EQ_ERR_INVALID, "finalize: the net has no layers");
    /* parameters: one block of data, one of gradients (buffers get no grad) */
    size_t total = 0, gtotal = 0;
    for (size_t i = 0; i < net->nparams; i++) {
        total += s_round16(net->params[i].numel);
        if (net->params[i].trainable) gtotal += s_round16(net->params[i].numel);
    }
    net->pdata = eq_backend_alloc(net->be, total * sizeof(float), err);
    net->pgrad = gtotal ? eq_backend_alloc(net->be, gtotal * sizeof(float), err) : NULL;
    if (!net->pdata || (gtotal && !net->pgrad)) return eq_err_prefix(err, "finalize: ");
    size_t off = 0, goff = 0, maxp = 0;
    for (size_t i = 0; i < net->nparams; i++) {
        eq_net_tensor *t = &net->params[i];
        t->data = net->pdata + off;
        off += s_round16(t->numel);
        if (t->trainable) {
            t->grad = net->pgrad + goff;
            goff += s_round16(t->numel);
        }
        if (t->numel > maxp) maxp = t->numel;
    }
    float *host = malloc((maxp ? maxp : 1) * sizeof *host);
    if (!host) return eq_err_set(err, EQ_ERR_NOMEM, "finalize: out of memory");
    for (size_t i = 0; i < net->nparams && st == EQ_OK; i++) {
        s_init_tensor(net, i, seed, host);
        st = eq_backend_upload(net->be, net->params[i].data, host, net->params[i].numel * sizeof *host, err);
    }
    free(host);
    if (st != EQ_OK) return st;

    /* activations, gradients and saved state: one block */
    size_t need = 0, maxact = 0;
    for (int i = 0; i < net->nnodes; i++) {
        const s_node *nd = &net->nodes[i];
        size_t a = s_round16(s_numel(nd));
        if (nd->kind != S_INPUT) need += a; /* y (the input's is the caller's) */
        need += a;                          /* dy */
        if (nd->kind == S_BN) need += s_round16(2 * (size_t)nd->c);
        if (nd->kind == S_MAXPOOL) need += a; /* int32 argmax: same element size */
        if (s_numel(nd) > maxact) maxact = s_numel(nd);
    }
    need += s_round16(maxact);
    float *b = eq_backend_alloc(net->be, need * sizeof(float), err);
    if (!b) return eq_err_prefix(err, "finalize: activations: ");
    net->block = b;
    for (int i = 0; i < net->nnodes; i++) {
        s_node *nd = &net->nodes[i];
        size_t a = s_round16(s_numel(nd));
        if (nd->kind != S_INPUT) nd->y = b, b += a;
        nd->dy = b, b += a;
        if (nd->kind == S_BN) nd->save = b, b += s_round16(2 * (size_t)nd->c);
        if (nd->kind == S_MAXPOOL) nd->argmax = (int32_t *)b, b += a;
    }
    net->tmp = b;
    net->finalized = 1;
    return EQ_OK;
}

size_t eq_net_param_count(const eq_net *net)
{
    return net ? net->nparams : 0;
}

const eq_net_tensor *eq_net_param(const eq_net *net, size_t i)
{
    return net && i < net->nparams ? &net->params[i] : NULL;
}

const eq_net_tensor *eq_net_param_find(const eq_net *net, const char *name)
{
    if (!net || !name) return NULL;
    for (size_t i = 0; i < net->nparams; i++)
        if (!strcmp(net->params[i].name, name)) return &net->params[i];
    return NULL;
}

int64_t eq_net_bn_batches(const eq_net *net)
{
    return net ? net->bn_batches : 0;
}

/* ---- running ------------------------------------------------------------- */

static eq_status s_ready(const eq_net *net, const char *what, eq_err *err)
{
    if (!net) return eq_err_set(err, EQ_ERR_INVALID, "%s: net is NULL", what);
    if (!net->finalized) return eq_err_set(err, EQ_ERR_INVALID, "%s: call eq_net_finalize first", what);
    return EQ_OK;
}

static float *s_p(const eq_net *net, int i)
{
    return i < 0 ? NULL : net->params[i].data;
}

static float *s_g(const eq_net *net, int i)
{
    return i < 0 ? NULL : net->params[i].grad;
}

eq_status eq_net_forward(eq_net *net, const float *x, int train, eq_err *err)
{
    eq_status st = s_ready(net, "forward", err);
    if (st != EQ_OK) return st;
    if (!x) return eq_err_set(err, EQ_ERR_INVALID, "forward: input is NULL");
    eq_backend *be = net->be;
    net->nodes[0].y = (float *)x; /* borrowed until the next forward */
    for (int i = 1; i < net->nnodes && st == EQ_OK; i++) {
        s_node *nd = &net->nodes[i];
        const s_node *a = &net->nodes[nd->in0];
        switch (nd->kind) {
        case S_CONV:
            st = eq_backend_conv2d_fwd(be, &nd->conv, a->y, s_p(net, nd->pw), nd->y, err);
            break;
        case S_BN:
            if (train)
                st = eq_backend_bn_fwd_train(be, &nd->bn, a->y, s_p(net, nd->pw), s_p(net, nd->pb),
                                             s_p(net, nd->prm), s_p(net, nd->prv), nd->y,
                                             nd->save, nd->save + nd->c, err);
            else
                st = eq_backend_bn_fwd_eval(be, &nd->bn, a->y, s_p(net, nd->pw), s_p(net, nd->pb),
                                            s_p(net, nd->prm), s_p(net, nd->prv), nd->y, err);
            break;
        case S_RELU: st = eq_backend_relu_fwd(be, s_numel(nd), a->y, nd->y, err); break;
        case S_MAXPOOL:
            st = eq_backend_maxpool_fwd(be, &nd->pool, a->y, nd->y, nd->argmax, err);
            break;
        case S_ADD:
            st = eq_backend_add(be, s_numel(nd), a->y, net->nodes[nd->in1].y, nd->y, err);
            break;
        case S_GAP: st = eq_backend_gap_fwd(be, a->n, a->h * a->w, a->c, a->y, nd->y, err); break;
        case S_LINEAR:
            st = eq_backend_linear_fwd(be, nd->n, nd->lin_in, nd->c, a->y, s_p(net, nd->pw),
                                       s_p(net, nd->pb), nd->y, err);
            break;
        case S_INPUT: break;
        }
        if (st != EQ_OK) eq_err_prefix(err, "forward: node %d (%s): ", i, S_KIND_NAME[nd->kind]);
    }
    if (st == EQ_OK && train)
        for (int i = 0; i < net->nnodes; i++)
            if (net->nodes[i].kind == S_BN) {
                net->bn_batches++;
                break;
            }
    return st;
}

const float *eq_net_output(const eq_net *net, int64_t *numel)
{
    if (!net || !net->finalized) return NULL;
    const s_node *o = &net->nodes[net->nnodes - 1];
    if (numel) *numel = (int64_t)s_numel(o);
    return o->y;
}

eq_status eq_net_loss(eq_net *net, const int32_t *labels_a, const int32_t *labels_b,
                      const float *lambda, float smoothing, float *loss, eq_err *err)
{
    eq_status st = s_ready(net, "loss", err);
    if (st != EQ_OK) return st;
    s_node *o = &net->nodes[net->nnodes - 1];
    eq_xent_desc d;
    st = eq_xent_desc_init(&d, o->n, o->h * o->w * o->c, smoothing, err);
    float *dev_loss = net->tmp; /* one float of scratch */
    if (st == EQ_OK)
        st = eq_backend_xent_fwd(net->be, &d, o->y, labels_a, labels_b, lambda, dev_loss, err);
    if (st == EQ_OK && loss) st = eq_backend_download(net->be, loss, dev_loss, sizeof *loss, err);
    if (st == EQ_OK)
        st = eq_backend_xent_bwd(net->be, &d, o->y, labels_a, labels_b, lambda, 1.0f, o->dy, err);
    if (st != EQ_OK) return eq_err_prefix(err, "loss: ");
    for (int i = 0; i < net->nnodes; i++) net->nodes[i].dy_set = 0;
    o->dy_set = 1;
    return EQ_OK;
}

/* Where node `in`'s gradient contribution goes: straight into its dy if it
 * has none yet, else into tmp (then s_commit adds it). */
static float *s_target(eq_net *net, int in)
{
    return net->nodes[in].dy_set ? net->tmp : net->nodes[in].dy;
}

static eq_status s_commit(eq_net *net, int in, eq_err *err)
{
    s_node *nd = &net->nodes[in];
    if (!nd->dy_set) {
        nd->dy_set = 1;
        return EQ_OK;
    }
    return eq_backend_add(net->be, s_numel(nd), nd->dy, net->tmp, nd->dy, err);
}

eq_status eq_net_backward(eq_net *net, eq_err *err)
{
    eq_status st = s_ready(net, "backward", err);
    if (st != EQ_OK) return st;
    if (!net->nodes[net->nnodes - 1].dy_set)
        return eq_err_set(err, EQ_ERR_INVALID, "backward: call eq_net_loss first");
    eq_backend *be = net->be;
    for (int i = net->nnodes - 1; i > 0 && st == EQ_OK; i--) {
        s_node *nd = &net->nodes[i];
        if (!nd->dy_set) continue; /* does not reach the loss */
        s_node *a = &net->nodes[nd->in0];
        int need_dx = a->kind != S_INPUT;
        float *dx = need_dx ? s_target(net, nd->in0) : NULL;
        switch (nd->kind) {
        case S_CONV:
            st = eq_backend_conv2d_bwd_filter(be, &nd->conv, a->y, nd->dy, s_g(net, nd->pw), err);
            if (st == EQ_OK && need_dx)
                st = eq_backend_conv2d_bwd_data(be, &nd->conv, nd->dy, s_p(net, nd->pw), dx, err);
            break;
        case S_BN:
            /* bn_bwd needs dx even for the input: use tmp then */
            st = eq_backend_bn_bwd(be, &nd->bn, a->y, nd->dy, s_p(net, nd->pw), nd->save,
                                   nd->save + nd->c, need_dx ? dx : net->tmp, s_g(net, nd->pw),
                                   s_g(net, nd->pb), err);
            break;
        case S_RELU:
            if (need_dx) st = eq_backend_relu_bwd(be, s_numel(nd), nd->y, nd->dy, dx, err);
            break;
        case S_MAXPOOL:
            if (need_dx) st = eq_backend_maxpool_bwd(be, &nd->pool, nd->argmax, nd->dy, dx, err);
            break;
        case S_ADD:
            if (need_dx) st = eq_backend_copy(be, dx, nd->dy, s_numel(nd) * sizeof(float), err);
            if (st == EQ_OK && need_dx) st = s_commit(net, nd->in0, err);
            need_dx = 0; /* committed */
            if (st == EQ_OK && net->nodes[nd->in1].kind != S_INPUT) {
                float *dx1 = s_target(net, nd->in1);
                st = eq_backend_copy(be, dx1, nd->dy, s_numel(nd) * sizeof(float), err);
                if (st == EQ_OK) st = s_commit(net, nd->in1, err);
            }
            break;
        case S_GAP:
            if (need_dx) st = eq_backend_gap_bwd(be, a->n, a->h * a->w, a->c, nd->dy, dx, err);
            break;
        case S_LINEAR:
            st = eq_backend_linear_bwd_weight(be, nd->n, nd->lin_in, nd->c, a->y, nd->dy,
                                              s_g(net, nd->pw), s_g(net, nd->pb), err);
            if (st == EQ_OK && need_dx)
                st = eq_backend_linear_bwd_data(be, nd->n, nd->lin_in, nd->c, nd->dy,
                                                s_p(net, nd->pw), dx, err);
            break;
        case S_INPUT: break;
        }
        if (st == EQ_OK && need_dx) st = s_commit(net, nd->in0, err);
        if (st != EQ_OK) eq_err_prefix(err, "backward: node %d (%s): ", i, S_KIND_NAME[nd->kind]);
    }
    return st;
}

/* ---- models ---------------------------------------------------------------- */

/* torchvision BasicBlock: conv3x3-bn-relu-conv3x3-bn (+ downsample
 * conv1x1-bn when the shape changes), add, relu. */
static int s_basic_block(eq_net *net, const char *pfx, int in, int64_t planes, int64_t stride,
                         eq_err *err)
{
    char n1[128], n2[128], n3[128], n4[128], nd0[128], nd1[128];
    snprintf(n1, sizeof n1, "%s.conv1", pfx);
    snprintf(n2, sizeof n2, "%s.bn1", pfx);
    snprintf(n3, sizeof n3, "%s.conv2", pfx);
    snprintf(n4, sizeof n4, "%s.bn2", pfx);
    snprintf(nd0, sizeof nd0, "%s.downsample.0", pfx);
    snprintf(nd1, sizeof nd1, "%s.downsample.1", pfx);
    int64_t inplanes = net->nodes[in].c;
    int x = eq_net_conv(net, n1, in, planes, 3, stride, 1, 1, err);
    if (x >= 0) x = eq_net_bn(net, n2, x, err);
    if (x >= 0) x = eq_net_relu(net, x, err);
    if (x >= 0) x = eq_net_conv(net, n3, x, planes, 3, 1, 1, 1, err);
    if (x >= 0) x = eq_net_bn(net, n4, x, err);
    int skip = in;
    if (x >= 0 && (stride != 1 || inplanes != planes)) {
        skip = eq_net_conv(net, nd0, in, planes, 1, stride, 0, 1, err);
        if (skip >= 0) skip = eq_net_bn(net, nd1, skip, err);
    }
    if (x >= 0 && skip >= 0) x = eq_net_add(net, x, skip, err);
    if (x >= 0 && skip >= 0) x = eq_net_relu(net, x, err);
    return x >= 0 && skip >= 0 ? x : -1;
}

/* torchvision Bottleneck: conv1x1-bn-relu-conv3x3(stride)-bn-relu-
 * conv1x1(x4)-bn (+ downsample conv1x1(stride)-bn when the shape changes),
 * add, relu. */
static int s_bottleneck(eq_net *net, const char *pfx, int in, int64_t planes, int64_t stride,
                        eq_err *err)
{
    char nm[8][128];
    static const char *const suffix[8] = {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3",
                                          "downsample.0", "downsample.1"};
    for (int i = 0; i < 8; i++) snprintf(nm[i], sizeof nm[i], "%s.%s", pfx, suffix[i]);
    int64_t inplanes = net->nodes[in].c, out = planes * 4;
    int x = eq_net_conv(net, nm[0], in, planes, 1, 1, 0, 1, err);
    if (x >= 0) x = eq_net_bn(net, nm[1], x, err);
    if (x >= 0) x = eq_net_relu(net, x, err);
    if (x >= 0) x = eq_net_conv(net, nm[2], x, planes, 3, stride, 1, 1, err);
    if (x >= 0) x = eq_net_bn(net, nm[3], x, err);
    if (x >= 0) x = eq_net_relu(net, x, err);
    if (x >= 0) x = eq_net_conv(net, nm[4], x, out, 1, 1, 0, 1, err);
    if (x >= 0) x = eq_net_bn(net, nm[5], x, err);
    int skip = in;
    if (x >= 0 && (stride != 1 || inplanes != out)) {
        skip = eq_net_conv(net, nm[6], in, out, 1, stride, 0, 1, err);
        if (skip >= 0) skip = eq_net_bn(net, nm[7], skip, err);
    }
    if (x >= 0 && skip >= 0) x = eq_net_add(net, x, skip, err);
    if (x >= 0 && skip >= 0) x = eq_net_relu(net, x, err);
    return x >= 0 && skip >= 0 ? x : -1;
}

int eq_net_build_torch_resnet(eq_net *net, int bottleneck, const int blocks[4], int64_t width,
                              int64_t classes, int64_t n, int64_t h, int64_t w, eq_err *err)
{
    if (!blocks || width < 1 || classes < 1) {
        eq_err_set(err, EQ_ERR_INVALID, "torch_resnet: blocks, width and classes must be given");
        return s_fail(net);
    }
    int x = eq_net_input(net, n, h, w, 3, err);
    if (x >= 0) x = eq_net_conv(net, "conv1", x, width, 7, 2, 3, 1, err);
    if (x >= 0) x = eq_net_bn(net, "bn1", x, err);
    if (x >= 0) x = eq_net_relu(net, x, err);
    if (x >= 0) x = eq_net_maxpool(net, x, 3, 2, 1, err);
    for (int stage = 0; stage < 4 && x >= 0; stage++) {
        if (blocks[stage] < 1) {
            eq_err_set(err, EQ_ERR_INVALID, "torch_resnet: stage %d has %d blocks", stage + 1,
                       blocks[stage]);
            return s_fail(net);
        }
        for (int b = 0; b < blocks[stage] && x >= 0; b++) {
            char pfx[64];
            snprintf(pfx, sizeof pfx, "layer%d.%d", stage + 1, b);
            int64_t stride = b == 0 && stage > 0 ? 2 : 1;
            x = bottleneck ? s_bottleneck(net, pfx, x, width << stage, stride, err)
                           : s_basic_block(net, pfx, x, width << stage, stride, err);
        }
    }
    if (x >= 0) x = eq_net_gap(net, x, err);
    if (x >= 0) x = eq_net_linear(net, "fc", x, classes, err);
    return x;
}
