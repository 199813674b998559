/*
 * trainer/backend.c -- descriptor validation and the checked dispatch
 * wrappers of trainer/backend.h.  Backends themselves live in cpu/ (and
 * cuda/); nothing here computes.
 */
#include "trainer/backend.h"

#include "quant/quant.h"
#include "trainer/prec.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* BLAS takes int dimensions: every matrix side must fit. */
#define S_DIM_MAX ((int64_t)INT_MAX)

static eq_status s_pos(const char *op, const char *field, int64_t v, eq_err *err)
{
    if (v <= 0 || v > S_DIM_MAX)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: %s = %lld must be in [1, %d]", op, field,
                          (long long)v, INT_MAX);
    return EQ_OK;
}

static eq_status s_nonneg(const char *op, const char *field, int64_t v, eq_err *err)
{
    if (v < 0 || v > S_DIM_MAX)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: %s = %lld must be in [0, %d]", op, field,
                          (long long)v, INT_MAX);
    return EQ_OK;
}

/* a*b*... <= limit without overflow */
static int s_prod_ok(int64_t limit, int nf, const int64_t *f)
{
    int64_t acc = 1;
    for (int i = 0; i < nf; i++) {
        if (f[i] <= 0) return 0;
        if (acc > limit / f[i]) return 0;
        acc *= f[i];
    }
    return 1;
}

#define S_CHECK(e)                          \
    do {                                    \
        eq_status s_st_ = (e);              \
        if (s_st_ != EQ_OK) return s_st_;   \
    } while (0)

eq_status eq_conv2d_desc_init(eq_conv2d_desc *d, eq_err *err)
{
    static const char *op = "conv2d";
    if (!d) return eq_err_set(err, EQ_ERR_INVALID, "%s: descriptor is NULL", op);
    S_CHECK(s_pos(op, "n", d->n, err));
    S_CHECK(s_pos(op, "h", d->h, err));
    S_CHECK(s_pos(op, "w", d->w, err));
    S_CHECK(s_pos(op, "c", d->c, err));
    S_CHECK(s_pos(op, "k", d->k, err));
    S_CHECK(s_pos(op, "r", d->r, err));
    S_CHECK(s_pos(op, "s", d->s, err));
    S_CHECK(s_pos(op, "stride_h", d->stride_h, err));
    S_CHECK(s_pos(op, "stride_w", d->stride_w, err));
    S_CHECK(s_nonneg(op, "pad_h", d->pad_h, err));
    S_CHECK(s_nonneg(op, "pad_w", d->pad_w, err));
    S_CHECK(s_pos(op, "dil_h", d->dil_h, err));
    S_CHECK(s_pos(op, "dil_w", d->dil_w, err));
    S_CHECK(s_pos(op, "groups", d->groups, err));
    if (d->prec != EQ_PREC_FP32 && d->prec != EQ_PREC_BF16 && d->prec != EQ_PREC_FP16)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: prec = %d is not fp32 (0), bf16 (1) or fp16 (2)",
                          op, d->prec);
    if (d->c % d->groups != 0)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: groups = %lld does not divide c = %lld", op,
                          (long long)d->groups, (long long)d->c);
    if (d->k % d->groups != 0)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: groups = %lld does not divide k = %lld", op,
                          (long long)d->groups, (long long)d->k);
    int64_t ekh = d->dil_h * (d->r - 1) + 1, ekw = d->dil_w * (d->s - 1) + 1;
    if (d->h + 2 * d->pad_h < ekh)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "%s: kernel height %lld (dilated %lld) exceeds padded input height %lld",
                          op, (long long)d->r, (long long)ekh, (long long)(d->h + 2 * d->pad_h));
    if (d->w + 2 * d->pad_w < ekw)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "%s: kernel width %lld (dilated %lld) exceeds padded input width %lld",
                          op, (long long)d->s, (long long)ekw, (long long)(d->w + 2 * d->pad_w));
    d->p = (d->h + 2 * d->pad_h - ekh) / d->stride_h + 1;
    d->q = (d->w + 2 * d->pad_w - ekw) / d->stride_w + 1;
    /* Matrix sides used by the GEMM formulation must fit in int; whole
     * tensors must fit in memory-addressable element counts. */
    int64_t npq[3] = {d->n, d->p, d->q}, nhw[3] = {d->n, d->h, d->w};
    int64_t rsc[3] = {d->r, d->s, d->c / d->groups};
    if (!s_prod_ok(S_DIM_MAX, 3, npq) || !s_prod_ok(S_DIM_MAX, 3, nhw) ||
        !s_prod_ok(S_DIM_MAX, 3, rsc))
        return eq_err_set(err, EQ_ERR_LIMIT, "%s: n*h*w, n*p*q or r*s*c/groups exceeds %d", op,
                          INT_MAX);
    int64_t xs[4] = {d->n, d->h, d->w, d->c}, ys[4] = {d->n, d->p, d->q, d->k};
    int64_t ws[4] = {d->k, d->c / d->groups, d->r, d->s};
    if (!s_prod_ok(INT64_MAX / 8, 4, xs) || !s_prod_ok(INT64_MAX / 8, 4, ys) ||
        !s_prod_ok(INT64_MAX / 8, 4, ws))
        return eq_err_set(err, EQ_ERR_LIMIT, "%s: tensor sizes overflow", op);
    return EQ_OK;
}

eq_status eq_bn_desc_init(eq_bn_desc *d, int64_t m, int64_t c, float eps, float momentum,
                          eq_err *err)
{
    static const char *op = "batch_norm";
    if (!d) return eq_err_set(err, EQ_ERR_INVALID, "%s: descriptor is NULL", op);
    S_CHECK(s_pos(op, "m (rows = N*H*W)", m, err));
    S_CHECK(s_pos(op, "c", c, err));
    int64_t mc[2] = {m, c};
    if (!s_prod_ok(INT64_MAX / 8, 2, mc))
        return eq_err_set(err, EQ_ERR_LIMIT, "%s: m*c overflows", op);
    if (!(eps > 0.0f))
        return eq_err_set(err, EQ_ERR_INVALID, "%s: eps = %g must be > 0", op, (double)eps);
    if (!(momentum >= 0.0f && momentum <= 1.0f))
        return eq_err_set(err, EQ_ERR_INVALID, "%s: momentum = %g must be in [0, 1]", op,
                          (double)momentum);
    d->m = m;
    d->c = c;
    d->eps = eps;
    d->momentum = momentum;
    return EQ_OK;
}

/* PyTorch's pooling_output_shape (dilation 1). */
static int64_t s_pool_out(int64_t in, int64_t k, int64_t pad, int64_t stride, int ceil_mode)
{
    int64_t num = in + 2 * pad - k + (ceil_mode ? stride - 1 : 0);
    int64_t out = num / stride + 1;
    if (ceil_mode && (out - 1) * stride >= in + pad) out--;
    return out;
}

eq_status eq_pool2d_desc_init(eq_pool2d_desc *d, eq_err *err)
{
    static const char *op = "pool2d";
    if (!d) return eq_err_set(err, EQ_ERR_INVALID, "%s: descriptor is NULL", op);
    S_CHECK(s_pos(op, "n", d->n, err));
    S_CHECK(s_pos(op, "h", d->h, err));
    S_CHECK(s_pos(op, "w", d->w, err));
    S_CHECK(s_pos(op, "c", d->c, err));
    S_CHECK(s_pos(op, "kh", d->kh, err));
    S_CHECK(s_pos(op, "kw", d->kw, err));
    S_CHECK(s_pos(op, "stride_h", d->stride_h, err));
    S_CHECK(s_pos(op, "stride_w", d->stride_w, err));
    S_CHECK(s_nonneg(op, "pad_h", d->pad_h, err));
    S_CHECK(s_nonneg(op, "pad_w", d->pad_w, err));
    if (d->pad_h > d->kh / 2 || d->pad_w > d->kw / 2)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "%s: padding (%lld, %lld) must be at most half the kernel (%lld, %lld)",
                          op, (long long)d->pad_h, (long long)d->pad_w, (long long)d->kh,
                          (long long)d->kw);
    if (d->h + 2 * d->pad_h < d->kh || d->w + 2 * d->pad_w < d->kw)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "%s: kernel (%lld, %lld) exceeds padded input (%lld, %lld)", op,
                          (long long)d->kh, (long long)d->kw, (long long)(d->h + 2 * d->pad_h),
                          (long long)(d->w + 2 * d->pad_w));
    d->ceil_mode = d->ceil_mode != 0;
    d->count_include_pad = d->count_include_pad != 0;
    d->p = s_pool_out(d->h, d->kh, d->pad_h, d->stride_h, d->ceil_mode);
    d->q = s_pool_out(d->w, d->kw, d->pad_w, d->stride_w, d->ceil_mode);
    int64_t xs[4] = {d->n, d->h, d->w, d->c}, ys[4] = {d->n, d->p, d->q, d->c};
    int64_t hw[2] = {d->h, d->w};
    if (!s_prod_ok(INT64_MAX / 8, 4, xs) || !s_prod_ok(INT64_MAX / 8, 4, ys) ||
        !s_prod_ok(INT32_MAX, 2, hw))
        return eq_err_set(err, EQ_ERR_LIMIT, "%s: tensor sizes overflow", op);
    return EQ_OK;
}

eq_status eq_xent_desc_init(eq_xent_desc *d, int64_t n, int64_t k, float smoothing, eq_err *err)
{
    static const char *op = "cross_entropy";
    if (!d) return eq_err_set(err, EQ_ERR_INVALID, "%s: descriptor is NULL", op);
    S_CHECK(s_pos(op, "n", n, err));
    S_CHECK(s_pos(op, "k (classes)", k, err));
    int64_t nk[2] = {n, k};
    if (!s_prod_ok(INT64_MAX / 8, 2, nk))
        return eq_err_set(err, EQ_ERR_LIMIT, "%s: n*k overflows", op);
    if (!(smoothing >= 0.0f && smoothing <= 1.0f))
        return eq_err_set(err, EQ_ERR_INVALID, "%s: label smoothing = %g must be in [0, 1]", op,
                          (double)smoothing);
    d->n = n;
    d->k = k;
    d->smoothing = smoothing;
    return EQ_OK;
}

/* ---- wrappers ------------------------------------------------------------ */

static eq_status s_member(const eq_backend *be, const void *fn, const char *op, eq_err *err)
{
    if (!be || !be->iface) return eq_err_set(err, EQ_ERR_INVALID, "%s: backend is NULL", op);
    if (!fn)
        return eq_err_set(err, EQ_ERR_UNSUPPORTED, "%s: not implemented by the %s backend", op,
                          be->iface->name ? be->iface->name : "?");
    return EQ_OK;
}

/* Dispatch preamble: backend has the member, required pointers are set. */
#define S_ENTER(be, member, op)                                                \
    do {                                                                       \
        eq_status s_st_ = s_member((be), (const void *)(be && be->iface        \
                                                            ? (be)->iface->member \
                                                            : NULL),           \
                                   (op), err);                                 \
        if (s_st_ != EQ_OK) return s_st_;                                      \
    } while (0)

static eq_status s_need(const void *p, const char *op, const char *arg, eq_err *err)
{
    if (!p) return eq_err_set(err, EQ_ERR_INVALID, "%s: %s is NULL", op, arg);
    return EQ_OK;
}
#define S_NEED(p, op) S_CHECK(s_need((p), (op), #p, err))

/* Re-validate a descriptor the caller may have edited after init. */
static eq_status s_conv_ok(const eq_conv2d_desc *d, const char *op, eq_err *err)
{
    S_NEED(d, op);
    eq_conv2d_desc c = *d;
    eq_err e2;
    if (eq_conv2d_desc_init(&c, &e2) != EQ_OK) return eq_err_set(err, e2.code, "%s: %s", op, e2.msg);
    if (c.p != d->p || c.q != d->q)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "%s: descriptor output (%lld, %lld) disagrees with its input (expect "
                          "%lld, %lld): call eq_conv2d_desc_init after editing",
                          op, (long long)d->p, (long long)d->q, (long long)c.p, (long long)c.q);
    return EQ_OK;
}

static eq_status s_pool_ok(const eq_pool2d_desc *d, const char *op, eq_err *err)
{
    S_NEED(d, op);
    eq_pool2d_desc c = *d;
    eq_err e2;
    if (eq_pool2d_desc_init(&c, &e2) != EQ_OK) return eq_err_set(err, e2.code, "%s: %s", op, e2.msg);
    if (c.p != d->p || c.q != d->q)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "%s: descriptor output (%lld, %lld) disagrees with its input (expect "
                          "%lld, %lld): call eq_pool2d_desc_init after editing",
                          op, (long long)d->p, (long long)d->q, (long long)c.p, (long long)c.q);
    return EQ_OK;
}

static eq_status s_bn_ok(const eq_bn_desc *d, const char *op, int train, eq_err *err)
{
    S_NEED(d, op);
    eq_bn_desc c;
    eq_err e2;
    if (eq_bn_desc_init(&c, d->m, d->c, d->eps, d->momentum, &e2) != EQ_OK)
        return eq_err_set(err, e2.code, "%s: %s", op, e2.msg);
    if (train && d->m < 2)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "%s: training needs more than one value per channel (m = %lld)", op,
                          (long long)d->m);
    return EQ_OK;
}

static eq_status s_xent_ok(const eq_xent_desc *d, const int32_t *la, const int32_t *lb,
                           const float *lam, const char *op, eq_err *err)
{
    S_NEED(d, op);
    eq_xent_desc c;
    eq_err e2;
    if (eq_xent_desc_init(&c, d->n, d->k, d->smoothing, &e2) != EQ_OK)
        return eq_err_set(err, e2.code, "%s: %s", op, e2.msg);
    S_CHECK(s_need(la, op, "labels_a", err));
    if ((lb == NULL) != (lam == NULL))
        return eq_err_set(err, EQ_ERR_INVALID,
                          "%s: mixup needs both labels_b and lambda (got %s and %s)", op,
                          lb ? "labels_b" : "no labels_b", lam ? "lambda" : "no lambda");
    return EQ_OK;
}

static eq_status s_dims(const char *op, int nd, const char *const *names, const int64_t *v,
                        eq_err *err)
{
    for (int i = 0; i < nd; i++) S_CHECK(s_pos(op, names[i], v[i], err));
    return EQ_OK;
}

void eq_backend_destroy(eq_backend **be_p)
{
    if (!be_p || !*be_p) return;
    eq_backend *be = *be_p;
    if (be->iface && be->iface->free) be->iface->free(be->context);
    free(be);
    *be_p = NULL;
}

const char *eq_backend_name(const eq_backend *be)
{
    return be && be->iface && be->iface->name ? be->iface->name : "?";
}

void *eq_backend_alloc(eq_backend *be, size_t nbytes, eq_err *err)
{
    if (s_member(be, be && be->iface ? (const void *)be->iface->alloc : NULL, "alloc", err))
        return NULL;
    if (nbytes == 0) {
        eq_err_set(err, EQ_ERR_INVALID, "alloc: size is 0");
        return NULL;
    }
    return be->iface->alloc(be->context, nbytes, err);
}

void eq_backend_release(eq_backend *be, void *ptr)
{
    if (be && be->iface && be->iface->release && ptr) be->iface->release(be->context, ptr);
}

eq_status eq_backend_upload(eq_backend *be, void *dst, const void *host_src, size_t nbytes,
                            eq_err *err)
{
    S_ENTER(be, upload, "upload");
    if (nbytes == 0) return EQ_OK;
    S_NEED(dst, "upload");
    S_NEED(host_src, "upload");
    return be->iface->upload(be->context, dst, host_src, nbytes, err);
}

eq_status eq_backend_download(eq_backend *be, void *host_dst, const void *src, size_t nbytes,
                              eq_err *err)
{
    S_ENTER(be, download, "download");
    if (nbytes == 0) return EQ_OK;
    S_NEED(host_dst, "download");
    S_NEED(src, "download");
    return be->iface->download(be->context, host_dst, src, nbytes, err);
}

eq_status eq_backend_copy(eq_backend *be, void *dst, const void *src, size_t nbytes, eq_err *err)
{
    S_ENTER(be, copy, "copy");
    if (nbytes == 0) return EQ_OK;
    S_NEED(dst, "copy");
    S_NEED(src, "copy");
    return be->iface->copy(be->context, dst, src, nbytes, err);
}

eq_status eq_backend_zero(eq_backend *be, void *dst, size_t nbytes, eq_err *err)
{
    S_ENTER(be, zero, "zero");
    if (nbytes == 0) return EQ_OK;
    S_NEED(dst, "zero");
    return be->iface->zero(be->context, dst, nbytes, err);
}

eq_status eq_backend_workspace_reserve(eq_backend *be, size_t nbytes, eq_err *err)
{
    if (!be || !be->iface) return eq_err_set(err, EQ_ERR_INVALID, "workspace_reserve: backend is NULL");
    if (!be->iface->workspace_reserve) return EQ_OK; /* documented default: grow on use */
    return be->iface->workspace_reserve(be->context, nbytes, err);
}

size_t eq_backend_workspace_size(eq_backend *be)
{
    return be && be->iface && be->iface->workspace_size ? be->iface->workspace_size(be->context)
                                                        : 0;
}

eq_status eq_backend_synchronize(eq_backend *be, eq_err *err)
{
    S_ENTER(be, synchronize, "synchronize");
    return be->iface->synchronize(be->context, err);
}

eq_backend_event *eq_backend_event_new(eq_backend *be, eq_err *err)
{
    if (s_member(be, be && be->iface ? (const void *)be->iface->event_new : NULL, "event_new", err))
        return NULL;
    return be->iface->event_new(be->context, err);
}

void eq_backend_event_destroy(eq_backend *be, eq_backend_event **ev_p)
{
    if (!ev_p || !*ev_p) return;
    if (be && be->iface && be->iface->event_free) be->iface->event_free(be->context, *ev_p);
    *ev_p = NULL;
}

eq_status eq_backend_event_record(eq_backend *be, eq_backend_event *ev, eq_err *err)
{
    S_ENTER(be, event_record, "event_record");
    S_NEED(ev, "event_record");
    return be->iface->event_record(be->context, ev, err);
}

eq_status eq_backend_event_wait(eq_backend *be, eq_backend_event *ev, eq_err *err)
{
    S_ENTER(be, event_wait, "event_wait");
    S_NEED(ev, "event_wait");
    return be->iface->event_wait(be->context, ev, err);
}

eq_status eq_backend_event_synchronize(eq_backend *be, eq_backend_event *ev, eq_err *err)
{
    S_ENTER(be, event_synchronize, "event_synchronize");
    S_NEED(ev, "event_synchronize");
    return be->iface->event_synchronize(be->context, ev, err);
}

eq_status eq_backend_conv2d_fwd(eq_backend *be, const eq_conv2d_desc *d, const float *x,
                                const float *w, float *y, eq_err *err)
{
    static const char *op = "conv2d_fwd";
    S_ENTER(be, conv2d_fwd, op);
    S_CHECK(s_conv_ok(d, op, err));
    S_NEED(x, op);
    S_NEED(w, op);
    S_NEED(y, op);
    return be->iface->conv2d_fwd(be->context, d, x, w, y, err);
}

eq_status eq_backend_conv2d_bwd_data(eq_backend *be, const eq_conv2d_desc *d, const float *dy,
                                     const float *w, float *dx, eq_err *err)
{
    static const char *op = "conv2d_bwd_data";
    S_ENTER(be, conv2d_bwd_data, op);
    S_CHECK(s_conv_ok(d, op, err));
    S_NEED(dy, op);
    S_NEED(w, op);
    S_NEED(dx, op);
    return be->iface->conv2d_bwd_data(be->context, d, dy, w, dx, err);
}

eq_status eq_backend_conv2d_bwd_filter(eq_backend *be, const eq_conv2d_desc *d, const float *x,
                                       const float *dy, float *dw, eq_err *err)
{
    static const char *op = "conv2d_bwd_filter";
    S_ENTER(be, conv2d_bwd_filter, op);
    S_CHECK(s_conv_ok(d, op, err));
    S_NEED(x, op);
    S_NEED(dy, op);
    S_NEED(dw, op);
    return be->iface->conv2d_bwd_filter(be->context, d, x, dy, dw, err);
}

eq_status eq_backend_bn_fwd_train(eq_backend *be, const eq_bn_desc *d, const float *x,
                                  const float *gamma, const float *beta, float *running_mean,
                                  float *running_var, float *y, float *save_mean,
                                  float *save_invstd, eq_err *err)
{
    static const char *op = "bn_fwd_train";
    S_ENTER(be, bn_fwd_train, op);
    S_CHECK(s_bn_ok(d, op, 1, err));
    S_NEED(x, op);
    S_NEED(running_mean, op);
    S_NEED(running_var, op);
    S_NEED(y, op);
    S_NEED(save_mean, op);
    S_NEED(save_invstd, op);
    return be->iface->bn_fwd_train(be->context, d, x, gamma, beta, running_mean, running_var, y,
                                   save_mean, save_invstd, err);
}

eq_status eq_backend_bn_fwd_eval(eq_backend *be, const eq_bn_desc *d, const float *x,
                                 const float *gamma, const float *beta,
                                 const float *running_mean, const float *running_var, float *y,
                                 eq_err *err)
{
    static const char *op = "bn_fwd_eval";
    S_ENTER(be, bn_fwd_eval, op);
    S_CHECK(s_bn_ok(d, op, 0, err));
    S_NEED(x, op);
    S_NEED(running_mean, op);
    S_NEED(running_var, op);
    S_NEED(y, op);
    return be->iface->bn_fwd_eval(be->context, d, x, gamma, beta, running_mean, running_var, y,
                                  err);
}

eq_status eq_backend_bn_bwd(eq_backend *be, const eq_bn_desc *d, const float *x, const float *dy,
                            const float *gamma, const float *save_mean, const float *save_invstd,
                            float *dx, float *dgamma, float *dbeta, eq_err *err)
{
    static const char *op = "bn_bwd";
    S_ENTER(be, bn_bwd, op);
    S_CHECK(s_bn_ok(d, op, 1, err));
    S_NEED(x, op);
    S_NEED(dy, op);
    S_NEED(save_mean, op);
    S_NEED(save_invstd, op);
    S_NEED(dx, op);
    return be->iface->bn_bwd(be->context, d, x, dy, gamma, save_mean, save_invstd, dx, dgamma,
                             dbeta, err);
}

/* The fused ops: the member when the backend has one, else the composition
 * of the separate ops (each validated by its own wrapper). */
static eq_status s_bn_relu_ok(eq_backend *be, const eq_bn_desc *d, const char *op, int train,
                              eq_err *err)
{
    if (!be || !be->iface) return eq_err_set(err, EQ_ERR_INVALID, "%s: backend is NULL", op);
    return s_bn_ok(d, op, train, err);
}

eq_status eq_backend_bn_relu_fwd_train(eq_backend *be, const eq_bn_desc *d, const float *x,
                                       const float *z, const float *gamma, const float *beta,
                                       float *running_mean, float *running_var, float *y,
                                       float *save_mean, float *save_invstd, eq_err *err)
{
    static const char *op = "bn_relu_fwd_train";
    S_CHECK(s_bn_relu_ok(be, d, op, 1, err));
    S_NEED(x, op);
    S_NEED(running_mean, op);
    S_NEED(running_var, op);
    S_NEED(y, op);
    S_NEED(save_mean, op);
    S_NEED(save_invstd, op);
    if (be->iface->bn_relu_fwd_train)
        return be->iface->bn_relu_fwd_train(be->context, d, x, z, gamma, beta, running_mean,
                                            running_var, y, save_mean, save_invstd, err);
    size_t n = (size_t)(d->m * d->c);
    S_CHECK(eq_backend_bn_fwd_train(be, d, x, gamma, beta, running_mean, running_var, y,
                                    save_mean, save_invstd, err));
    if (z) S_CHECK(eq_backend_add(be, n, y, z, y, err));
    return eq_backend_relu_fwd(be, n, y, y, err);
}

eq_status eq_backend_bn_relu_fwd_eval(eq_backend *be, const eq_bn_desc *d, const float *x,
                                      const float *z, const float *gamma, const float *beta,
                                      const float *running_mean, const float *running_var,
                                      float *y, eq_err *err)
{
    static const char *op = "bn_relu_fwd_eval";
    S_CHECK(s_bn_relu_ok(be, d, op, 0, err));
    S_NEED(x, op);
    S_NEED(running_mean, op);
    S_NEED(running_var, op);
    S_NEED(y, op);
    if (be->iface->bn_relu_fwd_eval)
        return be->iface->bn_relu_fwd_eval(be->context, d, x, z, gamma, beta, running_mean,
                                           running_var, y, err);
    size_t n = (size_t)(d->m * d->c);
    S_CHECK(eq_backend_bn_fwd_eval(be, d, x, gamma, beta, running_mean, running_var, y, err));
    if (z) S_CHECK(eq_backend_add(be, n, y, z, y, err));
    return eq_backend_relu_fwd(be, n, y, y, err);
}

eq_status eq_backend_bn_relu_bwd(eq_backend *be, const eq_bn_desc *d, const float *x,
                                 const float *y, const float *dy, const float *dy2,
                                 const float *gamma, const float *save_mean,
                                 const float *save_invstd, float *dx, float *dz, float *dgamma,
                                 float *dbeta, eq_err *err)
{
    static const char *op = "bn_relu_bwd";
    S_CHECK(s_bn_relu_ok(be, d, op, 1, err));
    S_NEED(x, op);
    S_NEED(y, op);
    S_NEED(dy, op);
    S_NEED(save_mean, op);
    S_NEED(save_invstd, op);
    S_NEED(dx, op);
    if (dx == x || dx == y || dx == dy || (dy2 && dx == dy2) || dx == dz)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: dx aliases another argument", op);
    if (be->iface->bn_relu_bwd)
        return be->iface->bn_relu_bwd(be->context, d, x, y, dy, dy2, gamma, save_mean,
                                      save_invstd, dx, dz, dgamma, dbeta, err);
    /* g in dz when wanted, else in dx (bn_bwd may run in place) */
    size_t n = (size_t)(d->m * d->c);
    float *g = dz ? dz : dx;
    const float *src = dy;
    if (dy2) {
        S_CHECK(eq_backend_add(be, n, dy, dy2, g, err));
        src = g;
    }
    S_CHECK(eq_backend_relu_bwd(be, n, y, src, g, err));
    return eq_backend_bn_bwd(be, d, x, g, gamma, save_mean, save_invstd, dx, dgamma, dbeta, err);
}

eq_status eq_backend_relu_fwd(eq_backend *be, size_t n, const float *x, float *y, eq_err *err)
{
    static const char *op = "relu_fwd";
    S_ENTER(be, relu_fwd, op);
    if (n == 0) return EQ_OK;
    S_NEED(x, op);
    S_NEED(y, op);
    return be->iface->relu_fwd(be->context, n, x, y, err);
}

eq_status eq_backend_relu_bwd(eq_backend *be, size_t n, const float *y, const float *dy,
                              float *dx, eq_err *err)
{
    static const char *op = "relu_bwd";
    S_ENTER(be, relu_bwd, op);
    if (n == 0) return EQ_OK;
    S_NEED(y, op);
    S_NEED(dy, op);
    S_NEED(dx, op);
    return be->iface->relu_bwd(be->context, n, y, dy, dx, err);
}

static eq_status s_clamp_ok(const char *op, float lo, float hi, eq_err *err)
{
    if (!isfinite(lo) || !isfinite(hi) || !(lo < hi))
        return eq_err_set(err, EQ_ERR_INVALID, "%s: bounds [%g, %g] must be finite with lo < hi",
                          op, (double)lo, (double)hi);
    return EQ_OK;
}

eq_status eq_backend_clamp_fwd(eq_backend *be, size_t n, float lo, float hi, const float *x,
                               float *y, eq_err *err)
{
    static const char *op = "clamp_fwd";
    S_ENTER(be, clamp_fwd, op);
    S_CHECK(s_clamp_ok(op, lo, hi, err));
    if (n == 0) return EQ_OK;
    S_NEED(x, op);
    S_NEED(y, op);
    return be->iface->clamp_fwd(be->context, n, lo, hi, x, y, err);
}

eq_status eq_backend_clamp_bwd(eq_backend *be, size_t n, float lo, float hi, const float *y,
                               const float *dy, float *dx, eq_err *err)
{
    static const char *op = "clamp_bwd";
    S_ENTER(be, clamp_bwd, op);
    S_CHECK(s_clamp_ok(op, lo, hi, err));
    if (n == 0) return EQ_OK;
    S_NEED(y, op);
    S_NEED(dy, op);
    S_NEED(dx, op);
    return be->iface->clamp_bwd(be->context, n, lo, hi, y, dy, dx, err);
}

eq_status eq_backend_scalar_affine_fwd(eq_backend *be, size_t n, const float *x,
                                       const float *scale, const float *bias, float *y,
                                       eq_err *err)
{
    static const char *op = "scalar_affine_fwd";
    S_ENTER(be, scalar_affine_fwd, op);
    if (n == 0) return EQ_OK;
    S_NEED(x, op);
    S_NEED(y, op);
    return be->iface->scalar_affine_fwd(be->context, n, x, scale, bias, y, err);
}

eq_status eq_backend_scalar_affine_bwd(eq_backend *be, size_t n, const float *x, const float *dy,
                                       const float *scale, float *dx, float *dscale,
                                       float *dbias, eq_err *err)
{
    static const char *op = "scalar_affine_bwd";
    S_ENTER(be, scalar_affine_bwd, op);
    if (n > 0) S_NEED(dy, op);
    if (dscale) S_NEED(x, op);
    return be->iface->scalar_affine_bwd(be->context, n, x, dy, scale, dx, dscale, dbias, err);
}

static eq_status s_prelu_ok(const char *op, int64_t m, int64_t c, int64_t nslope, eq_err *err)
{
    static const char *const names[2] = {"m", "c"};
    int64_t v[2] = {m, c};
    S_CHECK(s_dims(op, 2, names, v, err));
    if (nslope != 1 && nslope != c)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: nslope = %lld must be 1 or c = %lld", op,
                          (long long)nslope, (long long)c);
    return EQ_OK;
}

eq_status eq_backend_prelu_fwd(eq_backend *be, int64_t m, int64_t c, int64_t nslope,
                               const float *x, const float *slope, float *y, eq_err *err)
{
    static const char *op = "prelu_fwd";
    S_ENTER(be, prelu_fwd, op);
    S_CHECK(s_prelu_ok(op, m, c, nslope, err));
    S_NEED(x, op);
    S_NEED(slope, op);
    S_NEED(y, op);
    return be->iface->prelu_fwd(be->context, m, c, nslope, x, slope, y, err);
}

eq_status eq_backend_prelu_bwd(eq_backend *be, int64_t m, int64_t c, int64_t nslope,
                               const float *x, const float *slope, const float *dy, float *dx,
                               float *dslope, eq_err *err)
{
    static const char *op = "prelu_bwd";
    S_ENTER(be, prelu_bwd, op);
    S_CHECK(s_prelu_ok(op, m, c, nslope, err));
    S_NEED(x, op);
    S_NEED(slope, op);
    S_NEED(dy, op);
    S_NEED(dx, op);
    S_NEED(dslope, op);
    return be->iface->prelu_bwd(be->context, m, c, nslope, x, slope, dy, dx, dslope, err);
}

eq_status eq_backend_add(eq_backend *be, size_t n, const float *a, const float *b, float *y,
                         eq_err *err)
{
    static const char *op = "add";
    S_ENTER(be, add, op);
    if (n == 0) return EQ_OK;
    S_NEED(a, op);
    S_NEED(b, op);
    S_NEED(y, op);
    return be->iface->add(be->context, n, a, b, y, err);
}

eq_status eq_backend_maxpool_fwd(eq_backend *be, const eq_pool2d_desc *d, const float *x,
                                 float *y, int32_t *argmax, eq_err *err)
{
    static const char *op = "maxpool_fwd";
    S_ENTER(be, maxpool_fwd, op);
    S_CHECK(s_pool_ok(d, op, err));
    S_NEED(x, op);
    S_NEED(y, op);
    S_NEED(argmax, op);
    return be->iface->maxpool_fwd(be->context, d, x, y, argmax, err);
}

eq_status eq_backend_maxpool_bwd(eq_backend *be, const eq_pool2d_desc *d, const int32_t *argmax,
                                 const float *dy, float *dx, eq_err *err)
{
    static const char *op = "maxpool_bwd";
    S_ENTER(be, maxpool_bwd, op);
    S_CHECK(s_pool_ok(d, op, err));
    S_NEED(argmax, op);
    S_NEED(dy, op);
    S_NEED(dx, op);
    return be->iface->maxpool_bwd(be->context, d, argmax, dy, dx, err);
}

eq_status eq_backend_avgpool_fwd(eq_backend *be, const eq_pool2d_desc *d, const float *x,
                                 float *y, eq_err *err)
{
    static const char *op = "avgpool_fwd";
    S_ENTER(be, avgpool_fwd, op);
    S_CHECK(s_pool_ok(d, op, err));
    S_NEED(x, op);
    S_NEED(y, op);
    return be->iface->avgpool_fwd(be->context, d, x, y, err);
}

eq_status eq_backend_avgpool_bwd(eq_backend *be, const eq_pool2d_desc *d, const float *dy,
                                 float *dx, eq_err *err)
{
    static const char *op = "avgpool_bwd";
    S_ENTER(be, avgpool_bwd, op);
    S_CHECK(s_pool_ok(d, op, err));
    S_NEED(dy, op);
    S_NEED(dx, op);
    return be->iface->avgpool_bwd(be->context, d, dy, dx, err);
}

static eq_status s_gap_ok(const char *op, int64_t n, int64_t hw, int64_t c, eq_err *err)
{
    static const char *const names[3] = {"n", "hw", "c"};
    int64_t v[3] = {n, hw, c};
    S_CHECK(s_dims(op, 3, names, v, err));
    if (!s_prod_ok(INT64_MAX / 8, 3, v)) return eq_err_set(err, EQ_ERR_LIMIT, "%s: size overflows", op);
    return EQ_OK;
}

eq_status eq_backend_gap_fwd(eq_backend *be, int64_t n, int64_t hw, int64_t c, const float *x,
                             float *y, eq_err *err)
{
    static const char *op = "gap_fwd";
    S_ENTER(be, gap_fwd, op);
    S_CHECK(s_gap_ok(op, n, hw, c, err));
    S_NEED(x, op);
    S_NEED(y, op);
    return be->iface->gap_fwd(be->context, n, hw, c, x, y, err);
}

eq_status eq_backend_gap_bwd(eq_backend *be, int64_t n, int64_t hw, int64_t c, const float *dy,
                             float *dx, eq_err *err)
{
    static const char *op = "gap_bwd";
    S_ENTER(be, gap_bwd, op);
    S_CHECK(s_gap_ok(op, n, hw, c, err));
    S_NEED(dy, op);
    S_NEED(dx, op);
    return be->iface->gap_bwd(be->context, n, hw, c, dy, dx, err);
}

static eq_status s_linear_ok(const char *op, int64_t n, int64_t in, int64_t out, eq_err *err)
{
    static const char *const names[3] = {"n", "in", "out"};
    int64_t v[3] = {n, in, out};
    return s_dims(op, 3, names, v, err);
}

eq_status eq_backend_linear_fwd(eq_backend *be, int64_t n, int64_t in, int64_t out,
                                const float *x, const float *w, const float *b, float *y,
                                eq_err *err)
{
    static const char *op = "linear_fwd";
    S_ENTER(be, linear_fwd, op);
    S_CHECK(s_linear_ok(op, n, in, out, err));
    S_NEED(x, op);
    S_NEED(w, op);
    S_NEED(y, op);
    return be->iface->linear_fwd(be->context, n, in, out, x, w, b, y, err);
}

eq_status eq_backend_linear_bwd_data(eq_backend *be, int64_t n, int64_t in, int64_t out,
                                     const float *dy, const float *w, float *dx, eq_err *err)
{
    static const char *op = "linear_bwd_data";
    S_ENTER(be, linear_bwd_data, op);
    S_CHECK(s_linear_ok(op, n, in, out, err));
    S_NEED(dy, op);
    S_NEED(w, op);
    S_NEED(dx, op);
    return be->iface->linear_bwd_data(be->context, n, in, out, dy, w, dx, err);
}

eq_status eq_backend_linear_bwd_weight(eq_backend *be, int64_t n, int64_t in, int64_t out,
                                       const float *x, const float *dy, float *dw, float *db,
                                       eq_err *err)
{
    static const char *op = "linear_bwd_weight";
    S_ENTER(be, linear_bwd_weight, op);
    S_CHECK(s_linear_ok(op, n, in, out, err));
    S_NEED(x, op);
    S_NEED(dy, op);
    S_NEED(dw, op);
    return be->iface->linear_bwd_weight(be->context, n, in, out, x, dy, dw, db, err);
}

eq_status eq_backend_xent_fwd(eq_backend *be, const eq_xent_desc *d, const float *logits,
                              const int32_t *labels_a, const int32_t *labels_b,
                              const float *lambda, float *loss, eq_err *err)
{
    static const char *op = "xent_fwd";
    S_ENTER(be, xent_fwd, op);
    S_CHECK(s_xent_ok(d, labels_a, labels_b, lambda, op, err));
    S_NEED(logits, op);
    S_NEED(loss, op);
    return be->iface->xent_fwd(be->context, d, logits, labels_a, labels_b, lambda, loss, err);
}

eq_status eq_backend_xent_bwd(eq_backend *be, const eq_xent_desc *d, const float *logits,
                              const int32_t *labels_a, const int32_t *labels_b,
                              const float *lambda, float dloss, float *dlogits, eq_err *err)
{
    static const char *op = "xent_bwd";
    S_ENTER(be, xent_bwd, op);
    S_CHECK(s_xent_ok(d, labels_a, labels_b, lambda, op, err));
    S_NEED(logits, op);
    S_NEED(dlogits, op);
    return be->iface->xent_bwd(be->context, d, logits, labels_a, labels_b, lambda, dloss,
                               dlogits, err);
}

eq_status eq_backend_sgd_step(eq_backend *be, size_t n, const eq_sgd_params *hp, float *param,
                              const float *grad, float *buf, eq_err *err)
{
    static const char *op = "sgd_step";
    S_ENTER(be, sgd_step, op);
    S_NEED(hp, op);
    if (!(hp->lr >= 0.0f) || !isfinite(hp->lr))
        return eq_err_set(err, EQ_ERR_INVALID, "%s: lr = %g must be finite and >= 0", op, (double)hp->lr);
    if (!(hp->momentum >= 0.0f && hp->momentum < 1.0f))
        return eq_err_set(err, EQ_ERR_INVALID, "%s: momentum = %g must be in [0, 1)", op,
                          (double)hp->momentum);
    if (!(hp->dampening >= 0.0f && hp->dampening <= 1.0f))
        return eq_err_set(err, EQ_ERR_INVALID, "%s: dampening = %g must be in [0, 1]", op,
                          (double)hp->dampening);
    if (!(hp->weight_decay >= 0.0f) || !isfinite(hp->weight_decay))
        return eq_err_set(err, EQ_ERR_INVALID, "%s: weight_decay = %g must be finite and >= 0", op,
                          (double)hp->weight_decay);
    if (hp->nesterov && (hp->momentum <= 0.0f || hp->dampening != 0.0f))
        return eq_err_set(err, EQ_ERR_INVALID,
                          "%s: nesterov needs momentum > 0 and dampening 0 (got %g, %g)", op,
                          (double)hp->momentum, (double)hp->dampening);
    if (n == 0) return EQ_OK;
    S_NEED(param, op);
    S_NEED(grad, op);
    if (hp->momentum > 0.0f) S_NEED(buf, op);
    return be->iface->sgd_step(be->context, n, hp, param, grad, buf, err);
}

eq_status eq_backend_adam_step(eq_backend *be, size_t n, const eq_adam_params *hp, float *param,
                               const float *grad, float *mu, float *nu, eq_err *err)
{
    static const char *op = "adam_step";
    S_ENTER(be, adam_step, op);
    S_NEED(hp, op);
    if (!(hp->lr >= 0.0f) || !isfinite(hp->lr))
        return eq_err_set(err, EQ_ERR_INVALID, "%s: lr = %g must be finite and >= 0", op, (double)hp->lr);
    if (!(hp->beta1 >= 0.0f && hp->beta1 < 1.0f) || !(hp->beta2 >= 0.0f && hp->beta2 < 1.0f))
        return eq_err_set(err, EQ_ERR_INVALID, "%s: betas (%g, %g) must be in [0, 1)", op,
                          (double)hp->beta1, (double)hp->beta2);
    if (!(hp->eps > 0.0f))
        return eq_err_set(err, EQ_ERR_INVALID, "%s: eps = %g must be > 0", op, (double)hp->eps);
    if (!(hp->weight_decay >= 0.0f) || !isfinite(hp->weight_decay))
        return eq_err_set(err, EQ_ERR_INVALID, "%s: weight_decay = %g must be finite and >= 0", op,
                          (double)hp->weight_decay);
    if (hp->step < 1)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: step = %lld must be >= 1", op,
                          (long long)hp->step);
    if (n == 0) return EQ_OK;
    S_NEED(param, op);
    S_NEED(grad, op);
    S_NEED(mu, op);
    S_NEED(nu, op);
    return be->iface->adam_step(be->context, n, hp, param, grad, mu, nu, err);
}

/* ---- precision ---- */

static const char *const S_PREC_NAME[] = {"fp32", "bf16", "fp16"};

const char *eq_precision_name(eq_precision p)
{
    return (unsigned)p < 3 ? S_PREC_NAME[p] : "?";
}

int eq_precision_parse(const char *name)
{
    for (int i = 0; name && i < 3; i++)
        if (strcmp(name, S_PREC_NAME[i]) == 0) return i;
    return -1;
}

_Static_assert(EQ_PR_BF16 == EQ_PREC_BF16 && EQ_PR_FP16 == EQ_PREC_FP16, "prec.h's codes are eq_precision's");

float eq_precision_round(eq_precision p, float x)
{
    return eq_pr_round((int)p, x); /* trainer/prec.h: the one implementation, also the CUDA kernels' */
}

static eq_status s_host_or_member(eq_backend *be, const void *fn, const char *op, eq_err *err)
{
    if (!be || !be->iface) return eq_err_set(err, EQ_ERR_INVALID, "%s: backend is NULL", op);
    if (!fn && !be->iface->host_memory)
        return eq_err_set(err, EQ_ERR_UNSUPPORTED,
                          "%s: the %s backend does not implement it (and its memory is not host "
                          "memory)",
                          op, eq_backend_name(be));
    return EQ_OK;
}

eq_status eq_backend_round_to(eq_backend *be, eq_precision prec, size_t n, const float *x,
                              float *y, eq_err *err)
{
    static const char *op = "round_to";
    S_CHECK(s_host_or_member(be, be && be->iface ? (const void *)be->iface->round_to : NULL, op, err));
    if (prec != EQ_PREC_FP32 && prec != EQ_PREC_BF16 && prec != EQ_PREC_FP16)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: precision %d is not fp32, bf16 or fp16", op,
                          (int)prec);
    if (n == 0) return EQ_OK;
    S_NEED(x, op);
    S_NEED(y, op);
    if (be->iface->round_to) return be->iface->round_to(be->context, prec, n, x, y, err);
    if (prec == EQ_PREC_FP32) {
        if (x != y) memmove(y, x, n * sizeof(float));
        return EQ_OK;
    }
    for (size_t i = 0; i < n; i++) y[i] = eq_precision_round(prec, x[i]);
    return EQ_OK;
}

eq_status eq_backend_nonfinite(eq_backend *be, size_t n, const float *x, int64_t *count,
                               eq_err *err)
{
    static const char *op = "nonfinite";
    S_CHECK(s_host_or_member(be, be && be->iface ? (const void *)be->iface->nonfinite : NULL, op, err));
    S_NEED(count, op);
    *count = 0;
    if (n == 0) return EQ_OK;
    S_NEED(x, op);
    if (be->iface->nonfinite) return be->iface->nonfinite(be->context, n, x, count, err);
    int64_t c = 0;
    for (size_t i = 0; i < n; i++) c += !isfinite(x[i]);
    *count = c;
    return EQ_OK;
}

/* ---- input pipeline -------------------------------------------------------- */

eq_status eq_backend_stage_images(eq_backend *be, int64_t n, int64_t per_image, int64_t c,
                                  const uint8_t *src, const float *scale, const float *shift,
                                  const int32_t *partner, const float *lambda, float *dst,
                                  eq_err *err)
{
    static const char *op = "stage_images";
    S_CHECK(s_host_or_member(be, be && be->iface ? (const void *)be->iface->stage_images : NULL, op,
                             err));
    if (n < 0 || per_image < 1 || c < 1 || c > 16 || per_image % c != 0)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "%s: n = %lld, per_image = %lld, c = %lld (need n >= 0, per_image >= 1, "
                          "c in [1, 16] dividing per_image)",
                          op, (long long)n, (long long)per_image, (long long)c);
    if (n == 0) return EQ_OK;
    int64_t f[3] = {n, per_image, (int64_t)sizeof(float)};
    if (!s_prod_ok(INT64_MAX, 3, f))
        return eq_err_set(err, EQ_ERR_INVALID, "%s: n = %lld images of %lld bytes overflow", op,
                          (long long)n, (long long)per_image);
    S_NEED(src, op);
    S_NEED(scale, op);
    S_NEED(shift, op);
    S_NEED(dst, op);
    if ((partner == NULL) != (lambda == NULL))
        return eq_err_set(err, EQ_ERR_INVALID,
                          "%s: mixup needs both partner and lambda (got %s and %s)", op,
                          partner ? "partner" : "no partner", lambda ? "lambda" : "no lambda");
    if (be->iface->stage_images)
        return be->iface->stage_images(be->context, n, per_image, c, src, scale, shift, partner,
                                       lambda, dst, err);
    /* host memory: eq_train_stage's loops (trainer/train.c) */
    for (int64_t i = 0; partner && i < n; i++)
        if (partner[i] < 0 || partner[i] >= n)
            return eq_err_set(err, EQ_ERR_INVALID,
                              "%s: the mixup partner of image %lld is %d, outside [0, %lld)", op,
                              (long long)i, (int)partner[i], (long long)n);
    const size_t per = (size_t)per_image, C = (size_t)c;
    for (size_t i = 0; i < (size_t)n; i++) {
        const uint8_t *a = src + i * per;
        float *d = dst + i * per;
        if (!partner) {
            for (size_t k = 0; k < per; k++) d[k] = (float)a[k] * scale[k % C] + shift[k % C];
            continue;
        }
        const uint8_t *b = src + (size_t)partner[i] * per;
        const float lam = lambda[i];
        for (size_t k = 0; k < per; k++) {
            size_t ch = k % C;
            float va = (float)a[k] * scale[ch] + shift[ch], vb = (float)b[k] * scale[ch] + shift[ch];
            d[k] = lam * va + (1.0f - lam) * vb;
        }
    }
    return EQ_OK;
}

eq_status eq_backend_upload_async(eq_backend *be, void *dst, const void *host_src, size_t nbytes,
                                  eq_err *err)
{
    static const char *op = "upload_async";
    if (!be || !be->iface) return eq_err_set(err, EQ_ERR_INVALID, "%s: backend is NULL", op);
    if (!be->iface->upload_async) return eq_backend_upload(be, dst, host_src, nbytes, err);
    if (nbytes == 0) return EQ_OK;
    S_NEED(dst, op);
    S_NEED(host_src, op);
    return be->iface->upload_async(be->context, dst, host_src, nbytes, err);
}

eq_status eq_backend_upload_wait(eq_backend *be, eq_err *err)
{
    if (!be || !be->iface) return eq_err_set(err, EQ_ERR_INVALID, "upload_wait: backend is NULL");
    return be->iface->upload_wait ? be->iface->upload_wait(be->context, err) : EQ_OK;
}

eq_status eq_backend_download_async(eq_backend *be, void *host_dst, const void *src, size_t nbytes,
                                    eq_backend_event *ev, eq_err *err)
{
    static const char *op = "download_async";
    if (!be || !be->iface) return eq_err_set(err, EQ_ERR_INVALID, "%s: backend is NULL", op);
    S_NEED(host_dst, op);
    S_NEED(src, op);
    S_NEED(ev, op);
    if (nbytes == 0 || nbytes > EQ_BACKEND_DOWNLOAD_ASYNC_MAX)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: %zu bytes (1 to %d allowed)", op, nbytes,
                          EQ_BACKEND_DOWNLOAD_ASYNC_MAX);
    if (be->iface->download_async)
        return be->iface->download_async(be->context, host_dst, src, nbytes, ev, err);
    eq_status st = eq_backend_download(be, host_dst, src, nbytes, err);
    return st ? st : eq_backend_event_record(be, ev, err);
}

/* The quantizer members: the backend's, else quant/ itself where device
 * memory is host memory. */
static eq_status s_quant_ok(eq_backend *be, const void *fn, const char *op, eq_err *err)
{
    if (!be || !be->iface) return eq_err_set(err, EQ_ERR_INVALID, "%s: backend is NULL", op);
    if (!fn && !be->iface->host_memory)
        return eq_err_set(err, EQ_ERR_UNSUPPORTED,
                          "%s: the %s backend runs no quantizers (its memory is not host memory, "
                          "so quant/ cannot run on it directly)",
                          op, eq_backend_name(be));
    return EQ_OK;
}

int eq_backend_host_memory(const eq_backend *be)
{
    return be && be->iface && be->iface->host_memory;
}

int eq_backend_runs_quant(const eq_backend *be)
{
    return be && be->iface &&
           (be->iface->host_memory || (be->iface->quant_forward && be->iface->quant_backward));
}

eq_status eq_backend_quant_forward(eq_backend *be, struct eq_quant *q, const eq_tensor_desc *xd,
                                   const float *x, float *y, int train, eq_err *err)
{
    static const char *op = "quant_forward";
    S_CHECK(s_quant_ok(be, be && be->iface ? (const void *)be->iface->quant_forward : NULL, op, err));
    S_NEED(q, op);
    S_NEED(xd, op);
    S_NEED(x, op);
    S_NEED(y, op);
    if (x == y) return eq_err_set(err, EQ_ERR_INVALID, "%s: x and y are the same buffer", op);
    if (be->iface->quant_forward)
        return be->iface->quant_forward(be->context, q, xd, x, y, train, err);
    return eq_quant_forward(q, xd, x, y, train, err);
}

eq_status eq_backend_quant_backward(eq_backend *be, struct eq_quant *q, const float *x,
                                    const float *gy, float *gx, eq_err *err)
{
    static const char *op = "quant_backward";
    S_CHECK(s_quant_ok(be, be && be->iface ? (const void *)be->iface->quant_backward : NULL, op, err));
    S_NEED(q, op);
    S_NEED(x, op);
    S_NEED(gy, op);
    S_NEED(gx, op);
    if (be->iface->quant_backward) return be->iface->quant_backward(be->context, q, x, gy, gx, err);
    return eq_quant_backward(q, x, gy, gx, err);
}

void eq_backend_quant_release(eq_backend *be, struct eq_quant *q)
{
    if (be && be->iface && be->iface->quant_release && q) be->iface->quant_release(be->context, q);
}

eq_status eq_backend_quant_grads_wait(eq_backend *be, eq_err *err)
{
    if (!be || !be->iface) return eq_err_set(err, EQ_ERR_INVALID, "quant_grads_wait: backend is NULL");
    return be->iface->quant_grads_wait ? be->iface->quant_grads_wait(be->context, err) : EQ_OK;
}

int eq_backend_quant_grads_deferred(const eq_backend *be)
{
    return be && be->iface && be->iface->quant_grads_wait;
}
