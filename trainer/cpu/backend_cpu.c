/*
 * trainer/cpu/backend_cpu.c -- the CPU backend: context, memory, events and
 * the interface table.  "Device" memory is host memory; every op runs
 * synchronously on the calling thread (plus the backend's pool), so events
 * are complete when recorded.
 */
#include "trainer/cpu/cpu_internal.h"

#include "quant/quant.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#define S_ALIGN 64
#define S_EVENT_TAG 0xe9e7e001u

struct eq_backend_event {
    uint32_t tag;       /* S_EVENT_TAG while alive: catches events of another backend */
    uint64_t recorded;  /* how often recorded (diagnostics) */
};

static void *s_aligned(size_t nbytes)
{
    void *p = NULL;
    size_t rounded = (nbytes + S_ALIGN - 1) / S_ALIGN * S_ALIGN;
    if (rounded < nbytes) return NULL;
    if (posix_memalign(&p, S_ALIGN, rounded ? rounded : S_ALIGN) != 0) return NULL;
    return p;
}

float *eq_cpu_workspace(eq_cpu *cpu, size_t nbytes, const char *op, eq_err *err)
{
    if (nbytes <= cpu->ws_bytes && cpu->ws) return cpu->ws;
    float *p = s_aligned(nbytes);
    if (!p) {
        eq_err_set(err, EQ_ERR_NOMEM, "%s: cannot allocate a workspace of %zu bytes", op, nbytes);
        return NULL;
    }
    free(cpu->ws);
    cpu->ws = p;
    cpu->ws_bytes = nbytes;
    return p;
}

typedef struct s_for {
    eq_cpu_fn fn;
    void *ctx;
} s_for;

static void s_for_one(void *vctx, size_t i, int worker)
{
    (void)worker;
    const s_for *f = vctx;
    f->fn(f->ctx, i);
}

void eq_cpu_for(eq_cpu *cpu, size_t n, eq_cpu_fn fn, void *ctx)
{
    if (n == 0) return;
    if (n == 1 || !cpu->pool) {
        for (size_t i = 0; i < n; i++) fn(ctx, i);
        return;
    }
    s_for f = {fn, ctx};
    eq_pool_for(cpu->pool, n, s_for_one, &f);
}

/* GEMMs run on our pool, never on OpenBLAS's threads: OpenBLAS is pinned
 * to one thread and each index of eq_cpu_for computes one tile of C with
 * its own single-threaded call.  (OpenBLAS's idle workers spin in
 * sched_yield for a while after every threaded call; between our elementwise
 * loops that took a third of a ResNet-20 step's CPU on two cores.)
 *
 * Tiles: rows of op(A) in blocks of S_GEMM_ROWS, columns of op(B) in blocks
 * of S_GEMM_COLS; when that gives fewer than S_GEMM_MIN_TILES tiles and the
 * reduction is long (conv's filter gradient, summed over all pixels of the
 * batch), K is also cut into up to S_GEMM_MAX_KSPLIT slices of at least
 * S_GEMM_KDEPTH: slice 0 is written to C (with beta), the others to
 * partials in cpu->gws, added to C in slice order afterwards.  The tiling
 * depends only on (m, n, k), so results do not depend on the thread count. */
#define S_GEMM_ROWS 1024
#define S_GEMM_COLS 256
#define S_GEMM_MIN_TILES 8
#define S_GEMM_KDEPTH 256
#define S_GEMM_MAX_KSPLIT 16

typedef struct s_gemm {
    int ta, tb, m, n, k, lda, ldb, ldc;
    int mt, nt, kt;     /* tile counts */
    int kstep;          /* K per slice */
    float alpha, beta;
    const float *a, *b;
    float *c, *part;    /* part: (kt - 1) x [m][n], ld n */
} s_gemm;

static void s_gemm_tile(void *vctx, size_t t)
{
    const s_gemm *g = vctx;
    int kk = (int)(t / ((size_t)g->mt * (size_t)g->nt));
    int rem = (int)(t % ((size_t)g->mt * (size_t)g->nt));
    int i0 = (rem / g->nt) * S_GEMM_ROWS, j0 = (rem % g->nt) * S_GEMM_COLS;
    int k0 = kk * g->kstep;
    int mm = g->m - i0 < S_GEMM_ROWS ? g->m - i0 : S_GEMM_ROWS;
    int nn = g->n - j0 < S_GEMM_COLS ? g->n - j0 : S_GEMM_COLS;
    int kl = g->k - k0 < g->kstep ? g->k - k0 : g->kstep;
    /* op(A)[i0.., k0..] and op(B)[k0.., j0..] */
    const float *a = g->ta ? g->a + (size_t)k0 * g->lda + i0 : g->a + (size_t)i0 * g->lda + k0;
    const float *b = g->tb ? g->b + (size_t)j0 * g->ldb + k0 : g->b + (size_t)k0 * g->ldb + j0;
    float *c;
    int ldc;
    float beta;
    if (kk == 0) {
        c = g->c + (size_t)i0 * g->ldc + j0, ldc = g->ldc, beta = g->beta;
    } else {
        c = g->part + ((size_t)(kk - 1) * g->m + i0) * g->n + j0, ldc = g->n, beta = 0.0f;
    }
    cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans,
                g->tb ? CblasTrans : CblasNoTrans, mm, nn, kl, g->alpha, a, g->lda, b, g->ldb,
                beta, c, ldc);
}

/* C rows [i*S_GEMM_ROWS, ...) += the partials in slice order */
static void s_gemm_reduce(void *vctx, size_t i)
{
    const s_gemm *g = vctx;
    int i0 = (int)i * S_GEMM_ROWS;
    int i1 = g->m - i0 < S_GEMM_ROWS ? g->m : i0 + S_GEMM_ROWS;
    for (int kk = 1; kk < g->kt; kk++)
        for (int r = i0; r < i1; r++) {
            float *restrict cr = g->c + (size_t)r * g->ldc;
            const float *restrict pr = g->part + ((size_t)(kk - 1) * g->m + r) * g->n;
            for (int j = 0; j < g->n; j++) cr[j] += pr[j];
        }
}

void eq_cpu_sgemm(eq_cpu *cpu, int trans_a, int trans_b, int m, int n, int k, float alpha,
                  const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    /* The OpenBLAS thread count is process-wide: pin it to one (cheap when
     * already right). */
    if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
    if (m <= 0 || n <= 0) return;
    s_gemm g = {.ta = trans_a, .tb = trans_b, .m = m, .n = n, .k = k, .lda = lda, .ldb = ldb,
                .ldc = ldc, .alpha = alpha, .beta = beta, .a = a, .b = b, .c = c};
    g.mt = (m + S_GEMM_ROWS - 1) / S_GEMM_ROWS;
    g.nt = (n + S_GEMM_COLS - 1) / S_GEMM_COLS;
    g.kt = 1;
    g.kstep = k > 0 ? k : 1;
    if (g.mt * g.nt < S_GEMM_MIN_TILES && k >= 2 * S_GEMM_KDEPTH) {
        int kt = k / S_GEMM_KDEPTH;
        if (kt > S_GEMM_MAX_KSPLIT) kt = S_GEMM_MAX_KSPLIT;
        int kstep = (k + kt - 1) / kt;
        kt = (k + kstep - 1) / kstep;
        size_t need = (size_t)(kt - 1) * (size_t)m * (size_t)n * sizeof(float);
        if (need > cpu->gws_bytes) {
            /* Out of memory: fall back to one slice (a different but still
             * correct summation order). */
            float *p = s_aligned(need);
            if (p) {
                free(cpu->gws);
                cpu->gws = p;
                cpu->gws_bytes = need;
            }
        }
        if (need <= cpu->gws_bytes) g.kt = kt, g.kstep = kstep, g.part = cpu->gws;
    }
    size_t ntiles = (size_t)g.mt * (size_t)g.nt * (size_t)g.kt;
    eq_cpu_for(cpu, ntiles, s_gemm_tile, &g);
    if (g.kt > 1) eq_cpu_for(cpu, (size_t)g.mt, s_gemm_reduce, &g);
}

static void s_free(void *ctx)
{
    eq_cpu *cpu = ctx;
    if (!cpu) return;
    eq_pool_destroy(&cpu->pool);
    free(cpu->ws);
    free(cpu->gws);
    free(cpu);
}

static void *s_alloc(void *ctx, size_t nbytes, eq_err *err)
{
    (void)ctx;
    void *p = s_aligned(nbytes);
    if (!p) eq_err_set(err, EQ_ERR_NOMEM, "cpu backend: cannot allocate %zu bytes", nbytes);
    return p;
}

static void s_release(void *ctx, void *ptr)
{
    (void)ctx;
    free(ptr);
}

static eq_status s_copy(void *ctx, void *dst, const void *src, size_t nbytes, eq_err *err)
{
    (void)ctx;
    (void)err;
    if (dst != src) memmove(dst, src, nbytes);
    return EQ_OK;
}

static eq_status s_zero(void *ctx, void *dst, size_t nbytes, eq_err *err)
{
    (void)ctx;
    (void)err;
    memset(dst, 0, nbytes);
    return EQ_OK;
}

static eq_status s_ws_reserve(void *ctx, size_t nbytes, eq_err *err)
{
    if (nbytes == 0) return EQ_OK;
    return eq_cpu_workspace(ctx, nbytes, "workspace_reserve", err) ? EQ_OK : EQ_ERR_NOMEM;
}

static size_t s_ws_size(void *ctx)
{
    return ((eq_cpu *)ctx)->ws_bytes;
}

static eq_status s_sync(void *ctx, eq_err *err)
{
    (void)ctx;
    (void)err;
    return EQ_OK; /* every op has finished when it returns */
}

static eq_backend_event *s_event_new(void *ctx, eq_err *err)
{
    (void)ctx;
    eq_backend_event *ev = calloc(1, sizeof *ev);
    if (!ev) {
        eq_err_set(err, EQ_ERR_NOMEM, "event_new: out of memory");
        return NULL;
    }
    ev->tag = S_EVENT_TAG;
    return ev;
}

static void s_event_free(void *ctx, eq_backend_event *ev)
{
    (void)ctx;
    if (!ev) return;
    EQ_ASSERT(ev->tag == S_EVENT_TAG);
    ev->tag = 0xdeadbeefu;
    free(ev);
}

static eq_status s_event_check(eq_backend_event *ev, const char *op, eq_err *err)
{
    if (ev->tag != S_EVENT_TAG)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: not an event of the cpu backend", op);
    return EQ_OK;
}

static eq_status s_event_record(void *ctx, eq_backend_event *ev, eq_err *err)
{
    (void)ctx;
    eq_status st = s_event_check(ev, "event_record", err);
    if (st == EQ_OK) ev->recorded++;
    return st;
}

/* Work before the record point is complete already: nothing to wait for. */
static eq_status s_event_wait(void *ctx, eq_backend_event *ev, eq_err *err)
{
    (void)ctx;
    return s_event_check(ev, "event_wait", err);
}

static eq_status s_event_sync(void *ctx, eq_backend_event *ev, eq_err *err)
{
    (void)ctx;
    return s_event_check(ev, "event_synchronize", err);
}

/* Quantizers: quant/ on the tensors themselves (host memory), split over
 * the backend's pool for the call only (results do not depend on it), so
 * the eq_quant keeps no pointer into this backend. */
static eq_status s_quant_fwd(void *ctx, struct eq_quant *q, const eq_tensor_desc *xd,
                             const float *x, float *y, int train, eq_err *err)
{
    eq_quant_set_pool(q, ((eq_cpu *)ctx)->pool);
    eq_status st = eq_quant_forward(q, xd, x, y, train, err);
    eq_quant_set_pool(q, NULL);
    return st;
}

static eq_status s_quant_bwd(void *ctx, struct eq_quant *q, const float *x, const float *gy,
                             float *gx, eq_err *err)
{
    eq_quant_set_pool(q, ((eq_cpu *)ctx)->pool);
    eq_status st = eq_quant_backward(q, x, gy, gx, err);
    eq_quant_set_pool(q, NULL);
    return st;
}

/* Input staging (backend.h stage_images): one image per index of the
 * pool, each element exactly as eq_train_stage computes it (the same
 * expressions, -ffp-contract=off), so the result does not depend on the
 * thread count and is bitwise the host reference's. */
typedef struct s_stage {
    size_t per, c;
    const uint8_t *src;
    const float *scale, *shift;
    const int32_t *partner;
    const float *lambda;
    float *dst;
} s_stage;

/* tree-vectorize, as quant/Makemodule.am gives libeqquant: at plain -O2
 * gcc 12 vectorizes none of these loops (they need a runtime alias check,
 * which its -O2 cost model refuses), and a small batch was 5x slower than
 * PyTorch's in-place normalisation (bench/stage --shape fmnist).  Bitwise
 * the same: -ffp-contract=off keeps the multiply and the add apart. */
__attribute__((optimize("tree-vectorize"))) static void s_stage_one(void *vctx, size_t i)
{
    const s_stage *g = vctx;
    const size_t per = g->per, C = g->c; /* C divides per */
    const uint8_t *a = g->src + i * per;
    float *d = g->dst + i * per;
    const float *scale = g->scale, *shift = g->shift;
    if (!g->partner) {
        /* pixel by pixel, channels innermost (no k % C per element) */
        if (C == 1) {
            const float sc = scale[0], sh = shift[0];
            for (size_t k = 0; k < per; k++) d[k] = (float)a[k] * sc + sh;
        } else if (C == 3) {
            const float s0 = scale[0], s1 = scale[1], s2 = scale[2];
            const float h0 = shift[0], h1 = shift[1], h2 = shift[2];
            for (size_t k = 0; k < per; k += 3) {
                d[k] = (float)a[k] * s0 + h0;
                d[k + 1] = (float)a[k + 1] * s1 + h1;
                d[k + 2] = (float)a[k + 2] * s2 + h2;
            }
        } else {
            for (size_t k = 0; k < per; k += C)
                for (size_t ch = 0; ch < C; ch++) d[k + ch] = (float)a[k + ch] * scale[ch] + shift[ch];
        }
        return;
    }
    const uint8_t *b = g->src + (size_t)g->partner[i] * per;
    const float lam = g->lambda[i], mu = 1.0f - lam;
    if (C == 1) { /* the same expressions, one flat loop (vectorized) */
        const float sc = scale[0], sh = shift[0];
        for (size_t k = 0; k < per; k++) {
            float va = (float)a[k] * sc + sh, vb = (float)b[k] * sc + sh;
            d[k] = lam * va + mu * vb;
        }
        return;
    }
    for (size_t k = 0; k < per; k += C)
        for (size_t ch = 0; ch < C; ch++) {
            float va = (float)a[k + ch] * scale[ch] + shift[ch], vb = (float)b[k + ch] * scale[ch] + shift[ch];
            d[k + ch] = lam * va + mu * vb;
        }
}

static eq_status s_stage_images(void *ctx, int64_t n, int64_t per_image, int64_t c,
                                const uint8_t *src, const float *scale, const float *shift,
                                const int32_t *partner, const float *lambda, float *dst,
                                eq_err *err)
{
    for (int64_t i = 0; partner && i < n; i++)
        if (partner[i] < 0 || partner[i] >= n)
            return eq_err_set(err, EQ_ERR_INVALID,
                              "stage_images: the mixup partner of image %lld is %d, outside [0, %lld)",
                              (long long)i, (int)partner[i], (long long)n);
    s_stage g = {(size_t)per_image, (size_t)c, src, scale, shift, partner, lambda, dst};
    eq_cpu_for(ctx, (size_t)n, s_stage_one, &g);
    return EQ_OK;
}

static const struct eq_backend_i s_cpu_iface = {
    .name = "cpu",
    .host_memory = 1,
    .free = s_free,
    .alloc = s_alloc,
    .release = s_release,
    .upload = s_copy,
    .download = s_copy,
    .copy = s_copy,
    .zero = s_zero,
    .workspace_reserve = s_ws_reserve,
    .workspace_size = s_ws_size,
    .synchronize = s_sync,
    .event_new = s_event_new,
    .event_free = s_event_free,
    .event_record = s_event_record,
    .event_wait = s_event_wait,
    .event_synchronize = s_event_sync,
    .conv2d_fwd = eq_cpu_conv2d_fwd,
    .conv2d_bwd_data = eq_cpu_conv2d_bwd_data,
    .conv2d_bwd_filter = eq_cpu_conv2d_bwd_filter,
    .bn_fwd_train = eq_cpu_bn_fwd_train,
    .bn_fwd_eval = eq_cpu_bn_fwd_eval,
    .bn_bwd = eq_cpu_bn_bwd,
    .bn_relu_fwd_train = eq_cpu_bn_relu_fwd_train,
    .bn_relu_fwd_eval = eq_cpu_bn_relu_fwd_eval,
    .bn_relu_bwd = eq_cpu_bn_relu_bwd,
    .relu_fwd = eq_cpu_relu_fwd,
    .relu_bwd = eq_cpu_relu_bwd,
    .clamp_fwd = eq_cpu_clamp_fwd,
    .clamp_bwd = eq_cpu_clamp_bwd,
    .scalar_affine_fwd = eq_cpu_scalar_affine_fwd,
    .scalar_affine_bwd = eq_cpu_scalar_affine_bwd,
    .prelu_fwd = eq_cpu_prelu_fwd,
    .prelu_bwd = eq_cpu_prelu_bwd,
    .add = eq_cpu_add,
    .maxpool_fwd = eq_cpu_maxpool_fwd,
    .maxpool_bwd = eq_cpu_maxpool_bwd,
    .avgpool_fwd = eq_cpu_avgpool_fwd,
    .avgpool_bwd = eq_cpu_avgpool_bwd,
    .gap_fwd = eq_cpu_gap_fwd,
    .gap_bwd = eq_cpu_gap_bwd,
    .linear_fwd = eq_cpu_linear_fwd,
    .linear_bwd_data = eq_cpu_linear_bwd_data,
    .linear_bwd_weight = eq_cpu_linear_bwd_weight,
    .xent_fwd = eq_cpu_xent_fwd,
    .xent_bwd = eq_cpu_xent_bwd,
    .sgd_step = eq_cpu_sgd_step,
    .adam_step = eq_cpu_adam_step,
    .quant_forward = s_quant_fwd,
    .quant_backward = s_quant_bwd,
    .round_to = eq_cpu_round_to,
    .nonfinite = eq_cpu_nonfinite,
    .stage_images = s_stage_images,
    /* upload_async, upload_wait: the defaults (every op is synchronous) */
};

eq_backend *eq_backend_cpu_new(int nthreads, eq_err *err)
{
    if (nthreads <= 0) nthreads = eq_cpu_count();
    eq_backend *be = calloc(1, sizeof *be);
    eq_cpu *cpu = calloc(1, sizeof *cpu);
    if (!be || !cpu) {
        free(be);
        free(cpu);
        eq_err_set(err, EQ_ERR_NOMEM, "cpu backend: out of memory");
        return NULL;
    }
    cpu->nthreads = nthreads;
    if (nthreads > 1) {
        cpu->pool = eq_pool_new(nthreads, err);
        if (!cpu->pool) {
            free(be);
            free(cpu);
            return NULL;
        }
    }
    be->iface = &s_cpu_iface;
    be->context = cpu;
    openblas_set_num_threads(1); /* GEMMs are tiled over our pool */
    return be;
}
