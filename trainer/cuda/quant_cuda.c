/*
 * trainer/cuda/quant_cuda.c -- eq_cuda_quant: quant/'s quantizers on
 * device tensors (contract in quant_cuda.h).
 *
 * It reads the eq_quant's resolved state (method, groups, clip values,
 * counters) through quant/quant_internal.h, the same view quant/'s method
 * files have, and mirrors eq_quant_forward's bookkeeping (grouping, the
 * dorefa-family iteration counter and warm-up) so both paths leave the
 * object in the same state.
 *
 * Parameter gradients: the backward sums its per-element terms per group
 * on the device (dpart) and queues their copy to pinned host memory
 * (hpart), recording sums_ev behind it; the per-group host sums and the
 * gradient formula run once the copy is done.  eq_cuda_quant_backward
 * waits for it at once; the backend member (eq_cuda_quant_bwd) leaves it
 * pending, and eq_cuda_quant_grads_wait (quant_grads_wait) waits once, for
 * the last pending copy, and finishes every pending quantizer: one host
 * wait per training step instead of one per quantizer, with the rest of
 * the backward still queued behind it.
 */
#include "trainer/cuda/cuda_internal.h"
#include "trainer/cuda/quant_cuda.h"
#include "trainer/cuda/quant_kernels.h"
#include "quant/quant_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef enum { S_HOST = 0, S_LSQ, S_STEP, S_PACT, S_DOREFA_FM } s_kind;

struct eq_cuda_quant {
    eq_backend *be;
    eq_cuda *cu;
    eq_quant *q;
    int64_t g0;        /* q->g when made (hpar/hpart/hsum are sized by it) */
    s_kind last;       /* path of the last forward (S_HOST: host copies) */
    int have_fwd;
    eq_cuq_geom geom;
    int64_t batch;
    /* device: per-group parameter values, per-element gradient terms,
     * per-group partial sums */
    float *dpar;
    int64_t dpar_cap;
    float *dt;
    int64_t dt_cap;
    double *dpart;
    int64_t dpart_cap;
    /* host: parameter values, partial sums (pinned), and the host path's copies */
    float *hpar;
    double *hpart, *hsum;
    /* a backward's parameter gradients on their way (see the top) */
    cudaEvent_t sums_ev; /* behind the copy to hpart; made on first use */
    int grad_pending;
    unsigned long long pseq; /* issue order of pending backwards (s_seq) */
    s_kind pkind;
    eq_cuq_geom pgeom; /* the geometry the sums were taken over */
    double pf;         /* LSQ: gradient scale; STEP: 1/sqrt(npg qp) */
    float *hx, *hy, *hg;
    int64_t h_cap;
};

static eq_status s_grow_dev(void **p, int64_t *cap, int64_t n, size_t el, const char *what,
                            eq_err *err)
{
    if (n <= *cap) return EQ_OK;
    if (*p) cudaFree(*p);
    *p = NULL;
    *cap = 0;
    cudaError_t e = cudaMalloc(p, (size_t)n * el);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return eq_err_set(err, EQ_ERR_NOMEM, "cuda quantizer: cannot allocate %s (%lld elements): %s",
                          what, (long long)n, cudaGetErrorString(e));
    }
    *cap = n;
    return EQ_OK;
}

static eq_status s_grow_host(eq_cuda_quant *cq, int64_t n, eq_err *err)
{
    if (n <= cq->h_cap) return EQ_OK;
    float *a = realloc(cq->hx, (size_t)n * sizeof(float));
    if (a) cq->hx = a;
    float *b = a ? realloc(cq->hy, (size_t)n * sizeof(float)) : NULL;
    if (b) cq->hy = b;
    float *c = b ? realloc(cq->hg, (size_t)n * sizeof(float)) : NULL;
    if (c) cq->hg = c;
    if (!c) return eq_err_set(err, EQ_ERR_NOMEM, "cuda quantizer: out of host memory (%lld elements)", (long long)n);
    cq->h_cap = n;
    return EQ_OK;
}

eq_cuda_quant *eq_cuda_quant_new(eq_backend *be, eq_quant *q, eq_err *err)
{
    if (!be || !q || !eq_cuda_stream(be)) {
        eq_err_set(err, EQ_ERR_INVALID, "cuda quantizer: needs a quantizer and a cuda backend");
        return NULL;
    }
    eq_cuda_quant *cq = calloc(1, sizeof *cq);
    if (cq) cq->hpar = calloc((size_t)q->g + 1, sizeof(float));
    /* pinned: the partial sums' copy does not make the host wait */
    if (cq && cq->hpar &&
        cudaHostAlloc((void **)&cq->hpart, ((size_t)q->g + 1) * 256 * sizeof(double), cudaHostAllocDefault) !=
            cudaSuccess) {
        (void)cudaGetLastError();
        cq->hpart = NULL;
    }
    if (cq && cq->hpart) cq->hsum = calloc((size_t)q->g + 1, sizeof(double));
    if (!cq || !cq->hpar || !cq->hpart || !cq->hsum) {
        if (cq) {
            free(cq->hpar);
            if (cq->hpart) cudaFreeHost(cq->hpart);
        }
        free(cq);
        eq_err_set(err, EQ_ERR_NOMEM, "cuda quantizer: out of (pinned) host memory");
        return NULL;
    }
    cq->be = be;
    cq->cu = be->context;
    cq->q = q;
    cq->g0 = q->g;
    return cq;
}

void eq_cuda_quant_destroy(eq_cuda_quant **cq_p)
{
    if (!cq_p || !*cq_p) return;
    eq_cuda_quant *cq = *cq_p;
    if (cq->dpar || cq->dt || cq->dpart) cudaStreamSynchronize(cq->cu->stream);
    if (cq->dpar) cudaFree(cq->dpar);
    if (cq->dt) cudaFree(cq->dt);
    if (cq->dpart) cudaFree(cq->dpart);
    if (cq->sums_ev) cudaEventDestroy(cq->sums_ev);
    free(cq->hpar);
    cudaFreeHost(cq->hpart);
    free(cq->hsum);
    free(cq->hx);
    free(cq->hy);
    free(cq->hg);
    free(cq);
    *cq_p = NULL;
}

int eq_cuda_quant_on_device(const eq_cuda_quant *cq)
{
    return cq && cq->have_fwd && cq->last != S_HOST;
}

/* Which device path fits this quantizer now (S_HOST: none). */
static s_kind s_kind_of(const eq_cuda_quant *cq, int train)
{
    const eq_quant *q = cq->q;
    if (q->gamma) return S_HOST;
    if (!eq_quant_runtime_plain(q)) return S_HOST; /* disabled, or a policy quantization loss: the host path has both */
    if (q->o.tag == EQ_QTAG_WT && q->o.adaptive == EQ_QADAPT_VAR_MEAN) return S_HOST;
    /* a forward that the dorefa family counts and that falls in warm-up */
    if (q->m->family == EQ_QFAM_DOREFA && (train || !q->o.warmup_train_only) &&
        *q->iteration + 1.0f <= (float)q->o.stable)
        return S_HOST;
    const char *m = q->m->name;
    if (strcmp(m, "lsq") == 0) return q->o.grad_type == EQ_QGRAD_NONE ? S_LSQ : S_HOST;
    if (strcmp(m, "lsq-step") == 0) {
        const eq_quant_tensor *st = eq_quant_find((eq_quant *)q, "step_size");
        for (int64_t k = 0; st && k < st->numel; k++)
            if (st->data[k] == 0.0f) return S_HOST; /* data-driven initialisation */
        return st ? S_STEP : S_HOST;
    }
    if (strcmp(m, "pact") == 0) return S_PACT;
    if (strcmp(m, "dorefa") == 0) return q->o.tag != EQ_QTAG_WT ? S_DOREFA_FM : S_HOST;
    return S_HOST;
}

/* eq_quant_forward's grouping for descriptor xd (n elements). */
static eq_status s_geom(eq_cuda_quant *cq, const eq_tensor_desc *xd, int64_t n, eq_err *err)
{
    eq_quant *q = cq->q;
    eq_group_desc grp;
    if (q->o.tag == EQ_QTAG_WT) {
        cq->batch = 1;
        grp.inner = n / q->g;
        grp.period = q->g;
        grp.block = 1;
    } else {
        int ax = eq_layout_channel_axis(xd->layout);
        cq->batch = xd->shape[0];
        eq_status st = eq_group_along(xd, ax, q->g, &grp, err);
        if (st) return st;
    }
    if (grp.period / grp.block == 1) {
        grp.inner = n;
        grp.period = grp.block = 1;
    }
    cq->geom = (eq_cuq_geom){n, grp.inner, grp.period, grp.block};
    if (n % (grp.inner * grp.period) != 0)
        return eq_err_set(err, EQ_ERR_INTERNAL, "cuda quantizer: %lld elements are not whole group periods",
                          (long long)n);
    return EQ_OK;
}

static eq_status s_host_forward(eq_cuda_quant *cq, const eq_tensor_desc *xd, const float *x,
                                float *y, int64_t n, int train, eq_err *err)
{
    eq_status st = s_grow_host(cq, n, err);
    if (st) return st;
    eq_backend *be = cq->be;
    if ((st = eq_backend_download(be, cq->hx, x, (size_t)n * sizeof(float), err))) return st;
    if ((st = eq_quant_forward(cq->q, xd, cq->hx, cq->hy, train, err))) return st;
    return eq_backend_upload(be, y, cq->hy, (size_t)n * sizeof(float), err);
}

eq_status eq_cuda_quant_forward(eq_cuda_quant *cq, const eq_tensor_desc *xd, const float *x,
                                float *y, int train, eq_err *err)
{
    static const char *op = "quant_forward";
    if (!cq || !xd || !x || !y) return eq_err_set(err, EQ_ERR_INVALID, "%s: NULL argument", op);
    eq_quant *q = cq->q;
    eq_cuda *cu = cq->cu;
    int64_t n = eq_tensor_numel(xd);
    cq->have_fwd = 0;
    s_kind kind = s_kind_of(cq, train);
    if (kind == S_HOST) {
        eq_status st = s_host_forward(cq, xd, x, y, n, train, err);
        if (st) return st;
        cq->last = S_HOST;
        cq->have_fwd = 1;
        return EQ_OK;
    }
    /* the host forward validates the descriptor; do the same checks */
    if (xd->layout != q->layout)
        return eq_err_set(err, EQ_ERR_INVALID, "quantizer %s: layout changed since construction",
                          eq_quant_tag_name(q->o.tag));
    if (q->o.tag == EQ_QTAG_WT) {
        for (int i = 0; i < xd->ndim; i++)
            if (xd->shape[i] != q->shape0.shape[i])
                return eq_err_set(err, EQ_ERR_INVALID,
                                  "quantizer wt: weight dimension %d is %lld, built for %lld", i,
                                  (long long)xd->shape[i], (long long)q->shape0.shape[i]);
    } else if (xd->shape[eq_layout_channel_axis(xd->layout)] != q->channels) {
        return eq_err_set(err, EQ_ERR_INVALID, "quantizer %s: %lld channels, built for %lld",
                          eq_quant_tag_name(q->o.tag),
                          (long long)xd->shape[eq_layout_channel_axis(xd->layout)],
                          (long long)q->channels);
    }
    eq_status st = s_geom(cq, xd, n, err);
    if (st) return st;
    const int64_t g = q->g;
    const float steps = (float)eq_quant_steps(q);
    if ((st = s_grow_dev((void **)&cq->dpar, &cq->dpar_cap, g + 1, sizeof(float), "parameters", err)))
        return st;
    switch (kind) {
    case S_LSQ: {
        float fe = (float)eq_quant_gs_factor(q, eq_quant_grad_factor(q));
        const eq_quant_tensor *c = q->clip;
        for (int64_t k = 0; k < g; k++)
            cq->hpar[k] = eq_quant_gs_value(fabsf(c->data[c->numel == 1 ? 0 : k]), fe);
        EQ_CU(op, cudaMemcpyAsync(cq->dpar, cq->hpar, (size_t)g * sizeof(float),
                                  cudaMemcpyHostToDevice, cu->stream));
        int half = q->o.tag != EQ_QTAG_WT && q->o.half_range;
        EQ_K(op, eq_cuq_lsq_fwd(cu->stream, &cq->geom, half, steps, cq->dpar, x, y));
        break;
    }
    case S_STEP: {
        const eq_quant_tensor *s = eq_quant_find(q, "step_size");
        for (int64_t k = 0; k < g; k++) cq->hpar[k] = s->data[s->numel == 1 ? 0 : k];
        EQ_CU(op, cudaMemcpyAsync(cq->dpar, cq->hpar, (size_t)g * sizeof(float),
                                  cudaMemcpyHostToDevice, cu->stream));
        int L = eq_quant_levels(q);
        float qn = q->o.half_range ? 0.0f : (float)-(L / 2);
        float qp = q->o.half_range ? (float)(L - 1) : (float)(L - 1 - L / 2);
        EQ_K(op, eq_cuq_step_fwd(cu->stream, &cq->geom, qn, qp, cq->dpar, x, y));
        break;
    }
    case S_PACT: {
        float a = q->clip->data[0];
        EQ_K(op, eq_cuq_pact_fwd(cu->stream, n, a, steps / a, x, y));
        break;
    }
    case S_DOREFA_FM: {
        float c = (float)q->o.boundary;
        EQ_K(op, eq_cuq_dorefa_fm_fwd(cu->stream, n, c, steps / c, x, y));
        break;
    }
    case S_HOST:
        break;
    }
    /* eq_quant_forward's counter (warm-up was excluded above) */
    if (q->m->family == EQ_QFAM_DOREFA && (train || !q->o.warmup_train_only)) *q->iteration += 1.0f;
    cq->last = kind;
    cq->have_fwd = 1;
    return EQ_OK;
}

static unsigned long long s_seq; /* issue order of the backwards (atomic) */

/* Sum the t terms per group of geom on the device and queue the copy of
 * the partial sums to hpart, sums_ev behind it; no wait. */
static eq_status s_sums_start(eq_cuda_quant *cq, const eq_cuq_geom *geom, eq_err *err)
{
    static const char *op = "quant_backward";
    eq_cuda *cu = cq->cu;
    int64_t ng = geom->period / geom->block, ns = eq_cuq_slices(geom);
    eq_status st = s_grow_dev((void **)&cq->dpart, &cq->dpart_cap, ng * ns, sizeof(double),
                              "partial sums", err);
    if (st) return st;
    if (!cq->sums_ev) EQ_CU(op, cudaEventCreateWithFlags(&cq->sums_ev, cudaEventDisableTiming));
    EQ_K(op, eq_cuq_group_sum(cu->stream, geom, cq->dt, cq->dpart));
    EQ_CU(op, cudaMemcpyAsync(cq->hpart, cq->dpart, (size_t)(ng * ns) * sizeof(double),
                              cudaMemcpyDeviceToHost, cu->stream));
    EQ_CU(op, cudaEventRecord(cq->sums_ev, cu->stream));
    return EQ_OK;
}

/* The pending backward's parameter gradients from hpart (its copy done):
 * the per-group sums in slice order, then each method's formula. */
static void s_grads_finish(eq_cuda_quant *cq)
{
    eq_quant *q = cq->q;
    const eq_cuq_geom *geom = &cq->pgeom;
    int64_t ng = geom->period / geom->block, ns = eq_cuq_slices(geom);
    double *sums = cq->hsum;
    for (int64_t k = 0; k < ng; k++) {
        double a = 0.0;
        for (int64_t s = 0; s < ns; s++) a += cq->hpart[k * ns + s];
        sums[k] = a;
    }
    const int64_t g = q->g;
    switch (cq->pkind) {
    case S_LSQ: {
        eq_quant_tensor *t = q->clip;
        for (int64_t k = 0; k < t->numel; k++) {
            double tot = 0;
            if (t->numel == 1)
                for (int64_t j = 0; j < g; j++) tot += sums[j];
            else
                tot = sums[k];
            t->grad[k] = (float)(cq->pf * eq_qsign(t->data[k]) * tot);
        }
        break;
    }
    case S_STEP: {
        eq_quant_tensor *s = eq_quant_find(q, "step_size");
        for (int64_t k = 0; k < s->numel; k++) {
            double tot = 0;
            if (s->numel == 1)
                for (int64_t j = 0; j < g; j++) tot += sums[j];
            else
                tot = sums[k];
            s->grad[k] = (float)(cq->pf * tot);
        }
        break;
    }
    case S_PACT:
        q->clip->grad[0] = (float)sums[0];
        break;
    default:
        break;
    }
    cq->grad_pending = 0;
}

/* The backward; `defer`: leave the parameter gradients pending (see the
 * top), else wait for them. */
static eq_status s_backward(eq_cuda_quant *cq, const float *x, const float *gy, float *gx, int defer,
                            eq_err *err)
{
    static const char *op = "quant_backward";
    if (!cq || !x || !gy || !gx) return eq_err_set(err, EQ_ERR_INVALID, "%s: NULL argument", op);
    eq_quant *q = cq->q;
    if (!cq->have_fwd)
        return eq_err_set(err, EQ_ERR_INVALID, "cuda quantizer %s: backward without a forward",
                          eq_quant_tag_name(q->o.tag));
    eq_cuda *cu = cq->cu;
    const int64_t n = cq->geom.n;
    eq_status st;
    /* a backward still pending is superseded: its gradients would be
     * overwritten (the copy of this one's sums is queued after its) */
    cq->grad_pending = 0;
    if (cq->last == S_HOST) {
        int64_t hn = q->n;
        if ((st = eq_backend_download(cq->be, cq->hg, gy, (size_t)hn * sizeof(float), err))) return st;
        if ((st = eq_quant_backward(q, cq->hx, cq->hg, cq->hg, err))) return st;
        return eq_backend_upload(cq->be, gx, cq->hg, (size_t)hn * sizeof(float), err);
    }
    for (size_t i = 0; i < q->nt; i++)
        if (q->t[i].grad) memset(q->t[i].grad, 0, (size_t)q->t[i].numel * sizeof(float));
    if (cq->last == S_DOREFA_FM) {
        float c = (float)q->o.boundary;
        EQ_K(op, eq_cuq_dorefa_fm_bwd(cu->stream, n, c, x, gy, gx));
        return EQ_OK;
    }
    if ((st = s_grow_dev((void **)&cq->dt, &cq->dt_cap, n, sizeof(float), "gradient terms", err)))
        return st;
    const int64_t g = q->g;
    const float steps = (float)eq_quant_steps(q);
    cq->pgeom = cq->geom;
    /* t goes first into dt (x, gy and gx may not alias dt; gy and gx may
     * alias each other: each element reads gy before writing gx) */
    switch (cq->last) {
    case S_LSQ: {
        int half = q->o.tag != EQ_QTAG_WT && q->o.half_range;
        EQ_K(op, eq_cuq_lsq_bwd(cu->stream, &cq->geom, half, steps, cq->dpar, x, gy, gx, cq->dt));
        cq->pf = (double)(float)eq_quant_gs_factor(q, eq_quant_grad_factor(q));
        break;
    }
    case S_STEP: {
        int L = eq_quant_levels(q);
        float qn = q->o.half_range ? 0.0f : (float)-(L / 2);
        float qp = q->o.half_range ? (float)(L - 1) : (float)(L - 1 - L / 2);
        EQ_K(op, eq_cuq_step_bwd(cu->stream, &cq->geom, qn, qp, cq->dpar, x, gy, gx, cq->dt));
        double npg = (double)n / (double)g / (double)cq->batch;
        cq->pf = 1.0 / sqrt(npg * (double)qp);
        break;
    }
    case S_PACT: {
        float a = q->clip->data[0];
        EQ_K(op, eq_cuq_pact_bwd(cu->stream, n, a, x, gy, gx, cq->dt));
        /* PACT's alpha is one parameter over the whole tensor */
        cq->pgeom = (eq_cuq_geom){n, n, 1, 1};
        break;
    }
    default:
        return EQ_OK;
    }
    cq->pkind = cq->last;
    if ((st = s_sums_start(cq, &cq->pgeom, err))) return st;
    cq->grad_pending = 1;
    cq->pseq = __atomic_add_fetch(&s_seq, 1, __ATOMIC_RELAXED);
    if (defer) return EQ_OK;
    EQ_CU(op, cudaEventSynchronize(cq->sums_ev));
    s_grads_finish(cq);
    return eq_cuda_check_flags(cu, op, err);
}

eq_status eq_cuda_quant_backward(eq_cuda_quant *cq, const float *x, const float *gy, float *gx,
                                 eq_err *err)
{
    return s_backward(cq, x, gy, gx, 0, err);
}

/* ---- the backend's quant_* members ------------------------------------------ */

/* The slot of q in cu's table, or -1. */
static long s_slot(const eq_cuda *cu, const eq_quant *q)
{
    for (size_t i = 0; i < cu->nquants; i++)
        if (cu->quants[i].q == q) return (long)i;
    return -1;
}

static void s_drop(eq_cuda *cu, size_t i)
{
    eq_cuda_quant_destroy(&cu->quants[i].cq);
    cu->quants[i] = cu->quants[--cu->nquants];
}

eq_status eq_cuda_quant_fwd(void *ctx, struct eq_quant *q, const eq_tensor_desc *xd,
                            const float *x, float *y, int train, eq_err *err)
{
    eq_cuda *cu = ctx;
    long i = s_slot(cu, q);
    /* a slot whose quantizer has another group count is a stale one (an
     * eq_quant destroyed without quant_release, its address reused) */
    if (i >= 0 && cu->quants[i].cq->g0 != q->g) {
        s_drop(cu, (size_t)i);
        i = -1;
    }
    if (i < 0) {
        if (cu->nquants == cu->quants_cap) {
            size_t cap = cu->quants_cap ? 2 * cu->quants_cap : 16;
            eq_cuda_qslot *a = realloc(cu->quants, cap * sizeof *a);
            if (!a) return eq_err_set(err, EQ_ERR_NOMEM, "quant_forward: out of memory");
            cu->quants = a;
            cu->quants_cap = cap;
        }
        eq_cuda_quant *cq = eq_cuda_quant_new(cu->self, q, err);
        if (!cq) return err ? err->code : EQ_ERR_NOMEM;
        i = (long)cu->nquants++;
        cu->quants[i] = (eq_cuda_qslot){q, cq};
    }
    return eq_cuda_quant_forward(cu->quants[i].cq, xd, x, y, train, err);
}

eq_status eq_cuda_quant_bwd(void *ctx, struct eq_quant *q, const float *x, const float *gy,
                            float *gx, eq_err *err)
{
    eq_cuda *cu = ctx;
    long i = s_slot(cu, q);
    if (i < 0)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "quant_backward: quantizer %s has had no forward on this cuda backend",
                          eq_quant_tag_name(q->o.tag));
    return s_backward(cu->quants[i].cq, x, gy, gx, 1, err);
}

/* quant_grads_wait (interface 7): wait for the last pending backward's
 * copy (the stream is in order: every earlier one is done too), then
 * finish them all. */
eq_status eq_cuda_quant_grads_wait(void *ctx, eq_err *err)
{
    eq_cuda *cu = ctx;
    eq_cuda_quant *last = NULL;
    for (size_t i = 0; i < cu->nquants; i++) {
        eq_cuda_quant *cq = cu->quants[i].cq;
        if (cq->grad_pending && (!last || cq->pseq > last->pseq)) last = cq;
    }
    if (!last) return EQ_OK;
    EQ_CU("quant_grads_wait", cudaEventSynchronize(last->sums_ev));
    for (size_t i = 0; i < cu->nquants; i++)
        if (cu->quants[i].cq->grad_pending) s_grads_finish(cu->quants[i].cq);
    return eq_cuda_check_flags(cu, "quant_grads_wait", err);
}

void eq_cuda_quant_release(void *ctx, struct eq_quant *q)
{
    eq_cuda *cu = ctx;
    long i = s_slot(cu, q);
    if (i >= 0) s_drop(cu, (size_t)i);
}

void eq_cuda_quants_free(eq_cuda *cu)
{
    while (cu->nquants) s_drop(cu, cu->nquants - 1);
    free(cu->quants);
    cu->quants = NULL;
    cu->quants_cap = 0;
}
