/*
 * trainer/cuda/backend_cuda.c -- the CUDA backend: device selection,
 * context, memory, workspace, streams, events, error flags, the batch
 * prefetch path and the interface table.
 */
#include "trainer/cuda/cuda_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_EVENT_TAG 0xe9e7c0daU

struct eq_backend_event {
    uint32_t tag; /* S_EVENT_TAG while alive */
    cudaEvent_t ev;
    /* download_async: the copy lands in pin (pinned, made on first use),
     * and event_synchronize moves it to host_dst */
    void *pin;
    void *host_dst;
    size_t n;
    int pending;
};

eq_status eq_cuda_fail(eq_err *err, const char *op, const char *call, cudaError_t e)
{
    return eq_err_set(err, EQ_ERR_INTERNAL, "cuda backend: %s: %s failed: %s (%s)", op, call,
                      cudaGetErrorString(e), cudaGetErrorName(e));
}

eq_status eq_cudnn_fail(eq_err *err, const char *op, const char *call, cudnnStatus_t s)
{
    return eq_err_set(err, EQ_ERR_INTERNAL, "cuda backend: %s: %s failed: %s", op, call,
                      cudnnGetErrorString(s));
}

eq_status eq_cublas_fail(eq_err *err, const char *op, const char *call, cublasStatus_t s)
{
    return eq_err_set(err, EQ_ERR_INTERNAL, "cuda backend: %s: %s failed: cuBLAS status %d", op,
                      call, (int)s);
}

int eq_cuda_device_count(char *why, size_t why_len)
{
    int n = 0; /* cudaGetDeviceCount leaves it untouched on error */
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        if (why && why_len) snprintf(why, why_len, "%s", cudaGetErrorString(e));
        (void)cudaGetLastError(); /* clear the sticky-free error */
        return 0;
    }
    if (n <= 0 && why && why_len) snprintf(why, why_len, "0 devices");
    return n > 0 ? n : 0;
}

void *eq_cuda_workspace(eq_cuda *cu, size_t nbytes, const char *op, eq_err *err)
{
    if (nbytes == 0) nbytes = 256;
    if (cu->ws && nbytes <= cu->ws_bytes) return cu->ws;
    /* cudaFree synchronises the device, so kernels queued on the old block
     * have finished with it. */
    if (cu->ws) cudaFree(cu->ws);
    cu->ws = NULL;
    cu->ws_bytes = 0;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, nbytes);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        eq_err_set(err, EQ_ERR_NOMEM, "cuda backend: %s: cannot allocate a workspace of %zu bytes: %s",
                   op, nbytes, cudaGetErrorString(e));
        return NULL;
    }
    cu->ws = p;
    cu->ws_bytes = nbytes;
    return p;
}

eq_status eq_cuda_check_flags(eq_cuda *cu, const char *op, eq_err *err)
{
    volatile int32_t *f = cu->hflag;
    if (f[0] != 0) {
        int32_t row = f[0] - 1, label = f[1];
        f[0] = f[1] = 0;
        return eq_err_set(err, EQ_ERR_INVALID,
                          "%s: a cross-entropy label was outside [0, classes): row %d has label %d "
                          "(reported by the loss kernel at this synchronisation)",
                          op, (int)row, (int)label);
    }
    if (f[2] != 0) {
        int32_t idx = f[2] - 1;
        f[2] = 0;
        return eq_err_set(err, EQ_ERR_INVALID,
                          "%s: maxpool_bwd: argmax[%d] outside the input (reported by the pooling "
                          "kernel at this synchronisation)",
                          op, (int)idx);
    }
    if (f[3] != 0) {
        int32_t img = f[3] - 1;
        f[3] = 0;
        return eq_err_set(err, EQ_ERR_INVALID,
                          "%s: stage_images: the mixup partner of image %d is outside [0, n) "
                          "(reported by the staging kernel at this synchronisation)",
                          op, (int)img);
    }
    return EQ_OK;
}

static void s_free(void *ctx)
{
    eq_cuda *cu = ctx;
    if (!cu) return;
    cudaSetDevice(cu->device);
    if (cu->stream) cudaStreamSynchronize(cu->stream);
    if (cu->copy_stream) cudaStreamSynchronize(cu->copy_stream);
    eq_cuda_quants_free(cu); /* quantizers never released (backend.h allows it) */
    eq_cuda_conv_plans_free(cu);
    for (int i = 0; i < EQ_CUDA_PREFETCH_SLOTS; i++) {
        if (cu->pin[i]) cudaFreeHost(cu->pin[i]);
        if (cu->pin_done[i]) cudaEventDestroy(cu->pin_done[i]);
    }
    if (cu->last_prefetch) cudaEventDestroy(cu->last_prefetch);
    if (cu->compute_mark) cudaEventDestroy(cu->compute_mark);
    if (cu->ws) cudaFree(cu->ws);
    if (cu->hflag) cudaFreeHost(cu->hflag);
    if (cu->blas) cublasDestroy(cu->blas);
    if (cu->dnn) cudnnDestroy(cu->dnn);
    if (cu->copy_stream) cudaStreamDestroy(cu->copy_stream);
    if (cu->stream) cudaStreamDestroy(cu->stream);
    free(cu);
}

static void *s_alloc(void *ctx, size_t nbytes, eq_err *err)
{
    (void)ctx;
    void *p = NULL;
    /* cudaMalloc aligns to at least 256 bytes (>= the 64 the iface promises) */
    cudaError_t e = cudaMalloc(&p, nbytes);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        eq_err_set(err, EQ_ERR_NOMEM, "cuda backend: cannot allocate %zu bytes of device memory: %s",
                   nbytes, cudaGetErrorString(e));
        return NULL;
    }
    return p;
}

static void s_release(void *ctx, void *ptr)
{
    (void)ctx;
    if (ptr) cudaFree(ptr);
}

/* Uploads are ordered on the compute stream; the host buffer is pageable,
 * so cudaMemcpyAsync stages it and returns once the source may be reused. */
static eq_status s_upload(void *ctx, void *dst, const void *src, size_t nbytes, eq_err *err)
{
    eq_cuda *cu = ctx;
    EQ_CU("upload", cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, cu->stream));
    return EQ_OK;
}

static eq_status s_download(void *ctx, void *dst, const void *src, size_t nbytes, eq_err *err)
{
    eq_cuda *cu = ctx;
    EQ_CU("download", cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, cu->stream));
    EQ_CU("download", cudaStreamSynchronize(cu->stream));
    return eq_cuda_check_flags(cu, "download", err);
}

static eq_status s_copy(void *ctx, void *dst, const void *src, size_t nbytes, eq_err *err)
{
    eq_cuda *cu = ctx;
    if (dst == src) return EQ_OK;
    EQ_CU("copy", cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, cu->stream));
    return EQ_OK;
}

static eq_status s_zero(void *ctx, void *dst, size_t nbytes, eq_err *err)
{
    eq_cuda *cu = ctx;
    EQ_CU("zero", cudaMemsetAsync(dst, 0, nbytes, cu->stream));
    return EQ_OK;
}

static eq_status s_ws_reserve(void *ctx, size_t nbytes, eq_err *err)
{
    if (nbytes == 0) return EQ_OK;
    return eq_cuda_workspace(ctx, nbytes, "workspace_reserve", err) ? EQ_OK : EQ_ERR_NOMEM;
}

static size_t s_ws_size(void *ctx)
{
    return ((eq_cuda *)ctx)->ws_bytes;
}

static eq_status s_sync(void *ctx, eq_err *err)
{
    eq_cuda *cu = ctx;
    EQ_CU("synchronize", cudaStreamSynchronize(cu->stream));
    return eq_cuda_check_flags(cu, "synchronize", err);
}

static eq_backend_event *s_event_new(void *ctx, eq_err *err)
{
    (void)ctx;
    eq_backend_event *ev = calloc(1, sizeof *ev);
    if (!ev) {
        eq_err_set(err, EQ_ERR_NOMEM, "event_new: out of memory");
        return NULL;
    }
    cudaError_t e = cudaEventCreateWithFlags(&ev->ev, cudaEventDisableTiming);
    if (e != cudaSuccess) {
        free(ev);
        eq_cuda_fail(err, "event_new", "cudaEventCreateWithFlags", e);
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
    if (ev->pin) cudaFreeHost(ev->pin); /* waits for a copy still queued */
    cudaEventDestroy(ev->ev);
    ev->tag = 0xdeadbeefU;
    free(ev);
}

static eq_status s_event_check(eq_backend_event *ev, const char *op, eq_err *err)
{
    if (ev->tag != S_EVENT_TAG)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: not an event of the cuda backend", op);
    return EQ_OK;
}

static eq_status s_event_record(void *ctx, eq_backend_event *ev, eq_err *err)
{
    eq_cuda *cu = ctx;
    eq_status st = s_event_check(ev, "event_record", err);
    if (st) return st;
    EQ_CU("event_record", cudaEventRecord(ev->ev, cu->stream));
    return EQ_OK;
}

static eq_status s_event_wait(void *ctx, eq_backend_event *ev, eq_err *err)
{
    eq_cuda *cu = ctx;
    eq_status st = s_event_check(ev, "event_wait", err);
    if (st) return st;
    EQ_CU("event_wait", cudaStreamWaitEvent(cu->stream, ev->ev, 0));
    return EQ_OK;
}

static eq_status s_event_sync(void *ctx, eq_backend_event *ev, eq_err *err)
{
    eq_cuda *cu = ctx;
    eq_status st = s_event_check(ev, "event_synchronize", err);
    if (st) return st;
    EQ_CU("event_synchronize", cudaEventSynchronize(ev->ev));
    if (ev->pending) { /* a download_async before the record waited for */
        memcpy(ev->host_dst, ev->pin, ev->n);
        ev->pending = 0;
    }
    return eq_cuda_check_flags(cu, "event_synchronize", err);
}

/* download_async (interface 7): the copy goes to the event's pinned
 * buffer on the compute stream, the event is recorded behind it, and
 * event_synchronize copies the bytes to host_dst after waiting for that
 * point only: the host does not wait for the work issued after this call
 * (a copy into pageable memory would make cudaMemcpyAsync wait for the
 * stream). */
static eq_status s_download_async(void *ctx, void *host_dst, const void *src, size_t nbytes,
                                  eq_backend_event *ev, eq_err *err)
{
    static const char *op = "download_async";
    eq_cuda *cu = ctx;
    eq_status st = s_event_check(ev, op, err);
    if (st) return st;
    if (ev->pending && (st = s_event_sync(ctx, ev, err))) return st;
    if (!ev->pin) EQ_CU(op, cudaHostAlloc(&ev->pin, EQ_BACKEND_DOWNLOAD_ASYNC_MAX, cudaHostAllocDefault));
    EQ_CU(op, cudaMemcpyAsync(ev->pin, src, nbytes, cudaMemcpyDeviceToHost, cu->stream));
    EQ_CU(op, cudaEventRecord(ev->ev, cu->stream));
    ev->host_dst = host_dst;
    ev->n = nbytes;
    ev->pending = 1;
    return EQ_OK;
}

/* ---- public ----------------------------------------------------------------- */

static eq_cuda *s_ctx(eq_backend *be)
{
    if (!be || be->iface != &eq_cuda_iface) return NULL;
    return be->context;
}

void *eq_cuda_stream(eq_backend *be)
{
    eq_cuda *cu = s_ctx(be);
    return cu ? (void *)cu->stream : NULL;
}

void eq_cuda_conv_force_fallback(eq_backend *be, int on)
{
    eq_cuda *cu = s_ctx(be);
    if (cu) cu->conv_no16 = on != 0;
}

eq_status eq_cuda_prefetch(eq_backend *be, void *dst, const void *host_src, size_t nbytes,
                           eq_err *err)
{
    static const char *op = "prefetch";
    eq_cuda *cu = s_ctx(be);
    if (!cu) return eq_err_set(err, EQ_ERR_INVALID, "%s: not a cuda backend", op);
    if (nbytes == 0) return EQ_OK;
    if (!dst || !host_src) return eq_err_set(err, EQ_ERR_INVALID, "%s: NULL buffer", op);
    int slot = cu->pin_next;
    /* the slot's previous copy must have left the pinned buffer */
    if (cu->pin_used[slot]) EQ_CU(op, cudaEventSynchronize(cu->pin_done[slot]));
    if (cu->pin_bytes[slot] < nbytes) {
        if (cu->pin[slot]) cudaFreeHost(cu->pin[slot]);
        cu->pin[slot] = NULL;
        cu->pin_bytes[slot] = 0;
        EQ_CU(op, cudaHostAlloc(&cu->pin[slot], nbytes, cudaHostAllocDefault));
        cu->pin_bytes[slot] = nbytes;
    }
    memcpy(cu->pin[slot], host_src, nbytes);
    EQ_CU(op, cudaMemcpyAsync(dst, cu->pin[slot], nbytes, cudaMemcpyHostToDevice, cu->copy_stream));
    EQ_CU(op, cudaEventRecord(cu->pin_done[slot], cu->copy_stream));
    EQ_CU(op, cudaEventRecord(cu->last_prefetch, cu->copy_stream));
    cu->pin_used[slot] = 1;
    cu->have_prefetch = 1;
    cu->pin_next = (slot + 1) % EQ_CUDA_PREFETCH_SLOTS;
    return EQ_OK;
}

eq_status eq_cuda_prefetch_wait(eq_backend *be, eq_err *err)
{
    static const char *op = "prefetch_wait";
    eq_cuda *cu = s_ctx(be);
    if (!cu) return eq_err_set(err, EQ_ERR_INVALID, "%s: not a cuda backend", op);
    if (!cu->have_prefetch) return EQ_OK;
    EQ_CU(op, cudaStreamWaitEvent(cu->stream, cu->last_prefetch, 0));
    return EQ_OK;
}

eq_status eq_cuda_stage_images(eq_backend *be, int64_t n, int64_t per_image, int64_t c,
                               const uint8_t *src, const float *scale, const float *shift,
                               const int32_t *partner, const float *lambda, float *dst,
                               eq_err *err)
{
    static const char *op = "stage_images";
    eq_cuda *cu = s_ctx(be);
    if (!cu) return eq_err_set(err, EQ_ERR_INVALID, "%s: not a cuda backend", op);
    if (n <= 0 || per_image <= 0 || c < 1 || c > 16 || per_image % c != 0)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "%s: n = %lld, per_image = %lld, c = %lld (need n, per_image > 0, c in "
                          "[1, 16] dividing per_image)",
                          op, (long long)n, (long long)per_image, (long long)c);
    if (!src || !scale || !shift || !dst)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: NULL buffer", op);
    if ((partner == NULL) != (lambda == NULL))
        return eq_err_set(err, EQ_ERR_INVALID, "%s: mixup needs both partner and lambda", op);
    EQ_K(op, eq_cuk_u8_input(cu->stream, n, per_image, c, src, scale, shift, partner, lambda, dst,
                             cu->dflag));
    return EQ_OK;
}

/* ---- the input pipeline's members (backend.h, interface 6) ------------------ */

/* upload_async: the copy must not start before the compute-stream ops
 * issued so far (they may still read dst: the trainer refills a batch
 * buffer once the step that read it has been issued, not finished), so
 * the copy stream waits for an event recorded on the compute stream now;
 * then eq_cuda_prefetch stages host_src in one of its two pinned buffers
 * (the host may reuse host_src on return) and queues the copy on the copy
 * stream.  A pinned buffer is reused every second call: the call waits on
 * the host for the copy issued two calls before to have left it (the
 * trainer makes two calls per batch, images and labels, so that is the
 * previous batch's copy, issued a step earlier).  One event serves every
 * call (made with the backend): cudaStreamWaitEvent captures the record it
 * waits for, so recording the event again later does not change what an
 * earlier wait waits for. */
static eq_status s_upload_async(void *ctx, void *dst, const void *src, size_t nbytes, eq_err *err)
{
    static const char *op = "upload_async";
    eq_cuda *cu = ctx;
    EQ_CU(op, cudaEventRecord(cu->compute_mark, cu->stream));
    EQ_CU(op, cudaStreamWaitEvent(cu->copy_stream, cu->compute_mark, 0));
    return eq_cuda_prefetch(cu->self, dst, src, nbytes, err);
}

/* upload_wait: the compute stream waits for the last prefetch's event (the
 * copy stream is in order, so for all of them); the host does not block. */
static eq_status s_upload_wait(void *ctx, eq_err *err)
{
    return eq_cuda_prefetch_wait(((eq_cuda *)ctx)->self, err);
}

static eq_status s_stage_images(void *ctx, int64_t n, int64_t per_image, int64_t c,
                                const uint8_t *src, const float *scale, const float *shift,
                                const int32_t *partner, const float *lambda, float *dst,
                                eq_err *err)
{
    return eq_cuda_stage_images(((eq_cuda *)ctx)->self, n, per_image, c, src, scale, shift, partner,
                                lambda, dst, err);
}

eq_backend *eq_backend_cuda_new(const eq_cuda_opts *o, eq_err *err)
{
    static const char *op = "open";
    eq_cuda_opts def = {0};
    if (!o) o = &def;
    char why[256] = "";
    int ndev = eq_cuda_device_count(why, sizeof why);
    if (ndev == 0) {
        eq_err_set(err, EQ_ERR_UNSUPPORTED, "no CUDA device: %s", why);
        return NULL;
    }
    if (o->device < 0 || o->device >= ndev) {
        eq_err_set(err, EQ_ERR_INVALID, "cuda backend: device %d out of range (%d device%s)",
                   o->device, ndev, ndev == 1 ? "" : "s");
        return NULL;
    }
    eq_backend *be = calloc(1, sizeof *be);
    eq_cuda *cu = calloc(1, sizeof *cu);
    if (!be || !cu) {
        free(be);
        free(cu);
        eq_err_set(err, EQ_ERR_NOMEM, "cuda backend: out of memory");
        return NULL;
    }
    cu->device = o->device;
    cu->deterministic = o->deterministic != 0;
    cu->tf32 = o->tf32 != 0;
    eq_status st = EQ_OK;
#define S_TRY(x)                        \
    do {                                \
        if ((st = (x)) != EQ_OK) goto fail; \
    } while (0)
    {
        cudaError_t e;
        cudnnStatus_t ds;
        cublasStatus_t bs;
        if ((e = cudaSetDevice(cu->device)) != cudaSuccess) S_TRY(eq_cuda_fail(err, op, "cudaSetDevice", e));
        if ((e = cudaStreamCreateWithFlags(&cu->stream, cudaStreamNonBlocking)) != cudaSuccess)
            S_TRY(eq_cuda_fail(err, op, "cudaStreamCreate (compute)", e));
        if ((e = cudaStreamCreateWithFlags(&cu->copy_stream, cudaStreamNonBlocking)) != cudaSuccess)
            S_TRY(eq_cuda_fail(err, op, "cudaStreamCreate (copy)", e));
        if ((e = cudaHostAlloc((void **)&cu->hflag, 4 * sizeof(int32_t), cudaHostAllocMapped)) != cudaSuccess)
            S_TRY(eq_cuda_fail(err, op, "cudaHostAlloc (flags)", e));
        memset(cu->hflag, 0, 4 * sizeof(int32_t));
        if ((e = cudaHostGetDevicePointer((void **)&cu->dflag, cu->hflag, 0)) != cudaSuccess)
            S_TRY(eq_cuda_fail(err, op, "cudaHostGetDevicePointer", e));
        for (int i = 0; i < EQ_CUDA_PREFETCH_SLOTS; i++)
            if ((e = cudaEventCreateWithFlags(&cu->pin_done[i], cudaEventDisableTiming)) != cudaSuccess)
                S_TRY(eq_cuda_fail(err, op, "cudaEventCreate", e));
        if ((e = cudaEventCreateWithFlags(&cu->last_prefetch, cudaEventDisableTiming)) != cudaSuccess ||
            (e = cudaEventCreateWithFlags(&cu->compute_mark, cudaEventDisableTiming)) != cudaSuccess)
            S_TRY(eq_cuda_fail(err, op, "cudaEventCreate", e));
        if ((bs = cublasCreate(&cu->blas)) != CUBLAS_STATUS_SUCCESS) S_TRY(eq_cublas_fail(err, op, "cublasCreate", bs));
        if ((bs = cublasSetStream(cu->blas, cu->stream)) != CUBLAS_STATUS_SUCCESS)
            S_TRY(eq_cublas_fail(err, op, "cublasSetStream", bs));
        /* fp32 numbers unless TF32 was asked for; cuBLAS's default atomics
         * mode is "not allowed" (deterministic), set it explicitly */
        if ((bs = cublasSetMathMode(cu->blas, cu->tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_PEDANTIC_MATH)) !=
            CUBLAS_STATUS_SUCCESS)
            S_TRY(eq_cublas_fail(err, op, "cublasSetMathMode", bs));
        if ((bs = cublasSetAtomicsMode(cu->blas, CUBLAS_ATOMICS_NOT_ALLOWED)) != CUBLAS_STATUS_SUCCESS)
            S_TRY(eq_cublas_fail(err, op, "cublasSetAtomicsMode", bs));
        if ((ds = cudnnCreate(&cu->dnn)) != CUDNN_STATUS_SUCCESS) S_TRY(eq_cudnn_fail(err, op, "cudnnCreate", ds));
        if ((ds = cudnnSetStream(cu->dnn, cu->stream)) != CUDNN_STATUS_SUCCESS)
            S_TRY(eq_cudnn_fail(err, op, "cudnnSetStream", ds));
    }
#undef S_TRY
    be->iface = &eq_cuda_iface;
    be->context = cu;
    cu->self = be;
    return be;
fail:
    (void)st;
    s_free(cu);
    free(be);
    return NULL;
}

const struct eq_backend_i eq_cuda_iface = {
    .name = "cuda",
    .free = s_free,
    .alloc = s_alloc,
    .release = s_release,
    .upload = s_upload,
    .download = s_download,
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
    .conv2d_fwd = eq_cuda_conv2d_fwd,
    .conv2d_bwd_data = eq_cuda_conv2d_bwd_data,
    .conv2d_bwd_filter = eq_cuda_conv2d_bwd_filter,
    .bn_fwd_train = eq_cuda_bn_fwd_train,
    .bn_fwd_eval = eq_cuda_bn_fwd_eval,
    .bn_bwd = eq_cuda_bn_bwd,
    .bn_relu_fwd_train = eq_cuda_bn_relu_fwd_train,
    .bn_relu_fwd_eval = eq_cuda_bn_relu_fwd_eval,
    .bn_relu_bwd = eq_cuda_bn_relu_bwd,
    .relu_fwd = eq_cuda_relu_fwd,
    .relu_bwd = eq_cuda_relu_bwd,
    .prelu_fwd = eq_cuda_prelu_fwd,
    .prelu_bwd = eq_cuda_prelu_bwd,
    .add = eq_cuda_add,
    .clamp_fwd = eq_cuda_clamp_fwd,
    .clamp_bwd = eq_cuda_clamp_bwd,
    .scalar_affine_fwd = eq_cuda_scalar_affine_fwd,
    .scalar_affine_bwd = eq_cuda_scalar_affine_bwd,
    .maxpool_fwd = eq_cuda_maxpool_fwd,
    .maxpool_bwd = eq_cuda_maxpool_bwd,
    .avgpool_fwd = eq_cuda_avgpool_fwd,
    .avgpool_bwd = eq_cuda_avgpool_bwd,
    .gap_fwd = eq_cuda_gap_fwd,
    .gap_bwd = eq_cuda_gap_bwd,
    .linear_fwd = eq_cuda_linear_fwd,
    .linear_bwd_data = eq_cuda_linear_bwd_data,
    .linear_bwd_weight = eq_cuda_linear_bwd_weight,
    .xent_fwd = eq_cuda_xent_fwd,
    .xent_bwd = eq_cuda_xent_bwd,
    .sgd_step = eq_cuda_sgd_step,
    .adam_step = eq_cuda_adam_step,
    .quant_forward = eq_cuda_quant_fwd,
    .quant_backward = eq_cuda_quant_bwd,
    .quant_release = eq_cuda_quant_release,
    .round_to = eq_cuda_round_to,
    .nonfinite = eq_cuda_nonfinite,
    .stage_images = s_stage_images,
    .upload_async = s_upload_async,
    .upload_wait = s_upload_wait,
    .download_async = s_download_async,
    .quant_grads_wait = eq_cuda_quant_grads_wait,
};
