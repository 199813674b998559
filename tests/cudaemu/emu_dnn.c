/*
 * tests/cudaemu/emu_dnn.c -- cuDNN 9's legacy convolution API on the host,
 * for the CUDA emulation (tests/cudaemu/cudnn.h declares what is here).
 *
 * An emulation checks eq's use of the API against our reading of cuDNN's
 * documentation; it cannot show what the real library accepts or how fast
 * it is.  Sources: the 9.19 headers installed here (every type, enum value
 * and signature; the header comments that bwd data ALGO_0 and bwd filter
 * ALGO_0/ALGO_3 are non-deterministic and bwd filter WINOGRAD is not
 * implemented); the cudnn_cnn library page of the API reference (the perf
 * structs: status, time in ms, memory = workspace bytes, determinism,
 * mathType); chainer/chainer#3922 (too small a workspace: BAD_PARAM).  The
 * statuses of the setters and of cudnnConvolutionForward's problem checks,
 * the configuration table, the scaling rule for beta == 0 and the math
 * types' meaning are from memory of the API reference, not re-read this
 * session (only page openings were reachable): treat them as our
 * understanding, marked "(choice)" where we know the documentation is
 * silent.  Behaviour:
 *
 * Descriptors.  cudnnSetTensor4dDescriptor(format, type, n, c, h, w): NCHW
 * or NHWC strides, the dimensions given in n, c, h, w order whatever the
 * format; BAD_PARAM for a negative dimension or an invalid format/type
 * enumerant, NOT_SUPPORTED above 2^31-1 elements.
 * Filters: CUDNN_TENSOR_NCHW means KCRS, CUDNN_TENSOR_NHWC means KRSC.
 * Convolution: BAD_PARAM for a negative pad, a non-positive stride or
 * dilation, an invalid mode; group count >= 1; math type an enumerant.
 * A zero dimension is accepted by the setters (the documentation names
 * only negative ones) and refused with BAD_PARAM by every function that
 * computes with the descriptor (choice).  NCHW_VECT_C: NOT_SUPPORTED
 * (not emulated).
 *
 * The problem (every Find/_v7/GetWorkspaceSize/convolution call checks it,
 * with the statuses cudnnConvolutionForward documents): NULL arguments,
 * descriptors never set, data types of x, w, y that differ, input channels
 * != filter channels x groups, output channels not a multiple of groups or
 * != the filter's k, batch sizes that differ, a filter larger than the
 * padded input: BAD_PARAM; y's spatial size not the one
 * cudnnGetConvolution2dForwardOutputDim gives: NOT_SUPPORTED.  Data type
 * configurations (cuDNN's table of supported configurations): FLOAT_CONFIG
 * (float data, float compute), PSEUDO_HALF_CONFIG (half data, float
 * compute), PSEUDO_BFLOAT16_CONFIG (bfloat16 data, float compute) are
 * emulated; TRUE_HALF_CONFIG and DOUBLE_CONFIG exist in cuDNN but are not
 * emulated (NOT_SUPPORTED here); every other combination is not in
 * cuDNN's table: NOT_SUPPORTED.  With EQ_CUDNN_EMU_REFUSE_16BIT=1 the
 * 16-bit configurations are NOT_SUPPORTED everywhere (the function itself
 * returns it); with =2, Find and _v7 succeed but report every algorithm's
 * status NOT_SUPPORTED (and running one is NOT_SUPPORTED): the two ways a
 * caller can learn that cuDNN has no plan.
 *
 * Arithmetic.  16-bit operands are uint16 bit patterns (IEEE binary16;
 * bfloat16 = the top half of a float); they are widened to float, every
 * product is accumulated in float, and the result y = alpha * conv +
 * beta * y_old (alpha, beta host floats, as cuDNN takes them for float
 * compute) is computed in float and rounded to nearest even into the
 * output type (fp16: subnormals, overflow to inf; NaN stays NaN).  beta ==
 * 0: y is not read (it may hold NaN).  CUDNN_CONVOLUTION flips the kernel;
 * CUDNN_CROSS_CORRELATION does not.  TF32: with float data, a math type
 * other than CUDNN_FMA_MATH permits tensor cores (cuDNN: DEFAULT_MATH
 * permits TF32 on A100 and later), and an algorithm the emulation marks as
 * a tensor-core one (fwd IMPLICIT_PRECOMP_GEMM, bwd data ALGO_1, bwd filter
 * ALGO_1) then rounds both operands of its products to TF32 (10 explicit
 * mantissa bits, nearest even), so TF32 slipping into an fp32 plan is
 * visible at 1e-5 (choice: which kernels a GPU runs is not documented).
 * (ALLOW_CONVERSION, which on a GPU may convert fp32 to fp16, is treated
 * like TENSOR_OP: unsure, eq does not set it.)
 *
 * Algorithms (which cuDNN runs for which shape is not documented in full;
 * this table is a choice): fwd IMPLICIT_GEMM (no workspace), IMPLICIT_PRECOMP_
 * GEMM (tensor cores, a small index workspace), GEMM (an im2col workspace
 * of one image), WINOGRAD_NONFUSED (3x3, stride 1, dilation 1, groups 1;
 * a transform workspace); DIRECT, FFT, FFT_TILING, WINOGRAD: NOT_SUPPORTED.
 * bwd data ALGO_0 (CUDNN_NON_DETERMINISTIC, as the header says; no
 * workspace), ALGO_1 (deterministic, tensor cores, a workspace),
 * WINOGRAD_NONFUSED (as fwd's); the others NOT_SUPPORTED.  bwd filter
 * ALGO_0 and ALGO_3 (non-deterministic, ALGO_3 with a workspace), ALGO_1
 * (deterministic, tensor cores, a workspace), WINOGRAD_NONFUSED (as
 * fwd's); the others NOT_SUPPORTED.  Non-deterministic algorithms
 * really are: they rotate the order of their reduction on every call, so
 * results differ in the last bits from run to run (a process-wide count
 * picks the order, so two handles doing the same work differ too).  Find* reports every
 * algorithm (requestedAlgoCount permitting), supported ones sorted by a
 * synthetic time, unsupported ones last with time -1; the tensor-core
 * algorithm is the fastest in every direction, whatever the math type (it
 * needs a workspace, so a caller must honour it, and a caller that finds
 * under FMA_MATH and runs under another math type gets TF32); _v7 reports
 * the same entries in a fixed heuristic order with time -1 (no timing),
 * a non-deterministic algorithm first in both backward directions (a
 * deterministic caller must skip it).  mathType
 * in a result is TENSOR_OP_MATH for a tensor-core algorithm where the
 * descriptor's math type permits tensor cores, else the descriptor's math
 * type (DEFAULT_MATH where the descriptor says TENSOR_OP).
 *
 * Workspace.  cudnnGet*WorkspaceSize and Find's `memory` agree.  A
 * convolution with workSpaceSizeInBytes below what the algorithm needs,
 * or a NULL workSpace when it needs some, is CUDNN_STATUS_BAD_PARAM (we
 * know of no documented status for it; BAD_PARAM is what cuDNN 7 returned
 * for too small a workspace in chainer/chainer#3922).  The emulation
 * writes a NaN pattern over the bytes it needs before it reads the
 * operands, as a real algorithm may use all of them, so operands placed
 * in the workspace come out wrong; an output overlapping them is refused
 * (BAD_PARAM, with a line on stderr), since a GPU would silently corrupt it.
 */
#include "tests/cudaemu/cudnn.h"
#include "tests/cudaemu/cudaemu.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The CUDA runtime emulation's hooks (tests/cudaemu/cudaemu.h), weak: a
 * program without tests/cudaemu/runtime.cc (check_cudaemu_dnn) has none,
 * and the emulation then treats every pointer as device memory.  With the
 * runtime, every operand range is checked first (outside one device
 * allocation: the runtime records an illegal-address fault that later
 * runtime calls return, as an asynchronous GPU fault would, and the call
 * does nothing and returns SUCCESS, as the launch would have), a handle's
 * stream must be live (else CUDNN_STATUS_EXECUTION_FAILED_CUDART, the
 * launch failing: choice), and the work runs between device_enter/leave
 * (EQ_CUDA_EMU_PROTECT=1 makes device memory inaccessible outside). */
#pragma weak eq_cudaemu_device_range
#pragma weak eq_cudaemu_stream_valid
#pragma weak eq_cudaemu_device_enter
#pragma weak eq_cudaemu_device_leave

static int s_range(const void *p, size_t n, const char *who)
{
    return eq_cudaemu_device_range ? eq_cudaemu_device_range(p, n, who) : 0;
}

static int s_stream_ok(cudaStream_t s)
{
    return eq_cudaemu_stream_valid ? eq_cudaemu_stream_valid(s) == 0 : 1;
}

static void s_enter(void)
{
    if (eq_cudaemu_device_enter) eq_cudaemu_device_enter();
}

static void s_leave(void)
{
    if (eq_cudaemu_device_leave) eq_cudaemu_device_leave();
}

#define S_HTAG 0xd11e0001U
#define S_TTAG 0xd11e0002U
#define S_FTAG 0xd11e0003U
#define S_CTAG 0xd11e0004U
#define S_DEAD 0xdeadbeefU

struct cudnnContext {
    uint32_t tag;
    cudaStream_t stream;
    cudnnEmuStats st;
};

struct cudnnTensorStruct {
    uint32_t tag;
    int set;
    cudnnDataType_t dt;
    int n, c, h, w;
    int64_t ns, cs, hs, ws;
};

struct cudnnFilterStruct {
    uint32_t tag;
    int set;
    cudnnDataType_t dt;
    cudnnTensorFormat_t fmt;
    int k, c, h, w;
};

struct cudnnConvolutionStruct {
    uint32_t tag;
    int set;
    int ph, pw, u, v, dh, dw;
    cudnnConvolutionMode_t mode;
    cudnnDataType_t ct;
    int groups;
    cudnnMathType_t math;
};

/* ---- handle, strings ----------------------------------------------------- */

size_t cudnnGetVersion(void)
{
    return CUDNN_VERSION;
}

const char *cudnnGetErrorString(cudnnStatus_t s)
{
    switch ((int)s) {
#define S_CASE(x) \
    case x: return #x;
        S_CASE(CUDNN_STATUS_SUCCESS)
        S_CASE(CUDNN_STATUS_NOT_INITIALIZED)
        S_CASE(CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH)
        S_CASE(CUDNN_STATUS_SERIALIZATION_VERSION_MISMATCH)
        S_CASE(CUDNN_STATUS_DEPRECATED)
        S_CASE(CUDNN_STATUS_LICENSE_ERROR)
        S_CASE(CUDNN_STATUS_RUNTIME_IN_PROGRESS)
        S_CASE(CUDNN_STATUS_RUNTIME_FP_OVERFLOW)
        S_CASE(CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED)
        S_CASE(CUDNN_STATUS_BAD_PARAM)
        S_CASE(CUDNN_STATUS_INVALID_VALUE)
        S_CASE(CUDNN_STATUS_BAD_PARAM_NULL_POINTER)
        S_CASE(CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER)
        S_CASE(CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED)
        S_CASE(CUDNN_STATUS_BAD_PARAM_OUT_OF_BOUND)
        S_CASE(CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT)
        S_CASE(CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH)
        S_CASE(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH)
        S_CASE(CUDNN_STATUS_BAD_PARAM_DUPLICATED_ENTRIES)
        S_CASE(CUDNN_STATUS_BAD_PARAM_ATTRIBUTE_TYPE)
        S_CASE(CUDNN_STATUS_BAD_PARAM_CUDA_GRAPH_MISMATCH)
        S_CASE(CUDNN_STATUS_BAD_PARAM_DESCRIPTOR_TYPE)
        S_CASE(CUDNN_STATUS_NOT_SUPPORTED)
        S_CASE(CUDNN_STATUS_NOT_SUPPORTED_GRAPH_PATTERN)
        S_CASE(CUDNN_STATUS_NOT_SUPPORTED_SHAPE)
        S_CASE(CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE)
        S_CASE(CUDNN_STATUS_NOT_SUPPORTED_LAYOUT)
        S_CASE(CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDA_DRIVER)
        S_CASE(CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDART)
        S_CASE(CUDNN_STATUS_NOT_SUPPORTED_ARCH_MISMATCH)
        S_CASE(CUDNN_STATUS_NOT_SUPPORTED_RUNTIME_PREREQUISITE_MISSING)
        S_CASE(CUDNN_STATUS_NOT_SUPPORTED_SUBLIBRARY_UNAVAILABLE)
        S_CASE(CUDNN_STATUS_NOT_SUPPORTED_SHARED_MEMORY_INSUFFICIENT)
        S_CASE(CUDNN_STATUS_NOT_SUPPORTED_PADDING)
        S_CASE(CUDNN_STATUS_NOT_SUPPORTED_BAD_LAUNCH_PARAM)
        S_CASE(CUDNN_STATUS_NOT_SUPPORTED_CUDA_GRAPH_NATIVE_API)
        S_CASE(CUDNN_STATUS_NOT_SUPPORTED_INVALID_DYNAMIC_SHAPE)
        S_CASE(CUDNN_STATUS_INTERNAL_ERROR)
        S_CASE(CUDNN_STATUS_INTERNAL_ERROR_COMPILATION_FAILED)
        S_CASE(CUDNN_STATUS_INTERNAL_ERROR_UNEXPECTED_VALUE)
        S_CASE(CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED)
        S_CASE(CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED)
        S_CASE(CUDNN_STATUS_INTERNAL_ERROR_BAD_LAUNCH_PARAM)
        S_CASE(CUDNN_STATUS_INTERNAL_ERROR_TEXTURE_CREATION_FAILED)
        S_CASE(CUDNN_STATUS_EXECUTION_FAILED)
        S_CASE(CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER)
        S_CASE(CUDNN_STATUS_EXECUTION_FAILED_CUBLAS)
        S_CASE(CUDNN_STATUS_EXECUTION_FAILED_CUDART)
        S_CASE(CUDNN_STATUS_EXECUTION_FAILED_CURAND)
#undef S_CASE
    }
    return "CUDNN_UNKNOWN_STATUS_FOUND";
}

static int s_handle_ok(cudnnHandle_t h)
{
    return h && h->tag == S_HTAG;
}

cudnnStatus_t cudnnCreate(cudnnHandle_t *handle)
{
    if (!handle) return CUDNN_STATUS_BAD_PARAM;
    struct cudnnContext *h = calloc(1, sizeof *h);
    if (!h) return CUDNN_STATUS_ALLOC_FAILED;
    h->tag = S_HTAG;
    h->st.last_dir = h->st.last_algo = -1;
    *handle = h;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroy(cudnnHandle_t handle)
{
    if (!handle) return CUDNN_STATUS_SUCCESS;
    if (!s_handle_ok(handle)) return CUDNN_STATUS_BAD_PARAM;
    handle->tag = S_DEAD;
    free(handle);
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetStream(cudnnHandle_t handle, cudaStream_t streamId)
{
    if (!s_handle_ok(handle)) return CUDNN_STATUS_BAD_PARAM;
    handle->stream = streamId;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetStream(cudnnHandle_t handle, cudaStream_t *streamId)
{
    if (!s_handle_ok(handle) || !streamId) return CUDNN_STATUS_BAD_PARAM;
    *streamId = handle->stream;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnEmuGetStats(cudnnHandle_t handle, cudnnEmuStats *stats)
{
    if (!s_handle_ok(handle) || !stats) return CUDNN_STATUS_BAD_PARAM;
    *stats = handle->st;
    return CUDNN_STATUS_SUCCESS;
}

/* ---- descriptors ---------------------------------------------------------- */

static int s_type_valid(cudnnDataType_t t)
{
    return (int)t >= (int)CUDNN_DATA_FLOAT && (int)t <= (int)CUDNN_DATA_COMPLEX_FP64;
}

static int s_math_valid(cudnnMathType_t m)
{
    return (int)m >= (int)CUDNN_DEFAULT_MATH && (int)m <= (int)CUDNN_FMA_MATH;
}

cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t *tensorDesc)
{
    if (!tensorDesc) return CUDNN_STATUS_BAD_PARAM;
    struct cudnnTensorStruct *t = calloc(1, sizeof *t);
    if (!t) return CUDNN_STATUS_ALLOC_FAILED;
    t->tag = S_TTAG;
    *tensorDesc = t;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t t)
{
    if (!t) return CUDNN_STATUS_SUCCESS;
    if (t->tag != S_TTAG) return CUDNN_STATUS_BAD_PARAM;
    t->tag = S_DEAD;
    free(t);
    return CUDNN_STATUS_SUCCESS;
}

static cudnnStatus_t s_tensor_set(cudnnTensorDescriptor_t t, cudnnDataType_t dt, int n, int c,
                                  int h, int w, int64_t ns, int64_t cs, int64_t hs, int64_t ws)
{
    if (!t || t->tag != S_TTAG) return CUDNN_STATUS_BAD_PARAM;
    if (!s_type_valid(dt) || n < 0 || c < 0 || h < 0 || w < 0) return CUDNN_STATUS_BAD_PARAM;
    if ((int64_t)n * c * h * w > INT_MAX) return CUDNN_STATUS_NOT_SUPPORTED;
    t->dt = dt;
    t->n = n;
    t->c = c;
    t->h = h;
    t->w = w;
    t->ns = ns;
    t->cs = cs;
    t->hs = hs;
    t->ws = ws;
    t->set = 1;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t t, cudnnTensorFormat_t format,
                                         cudnnDataType_t dt, int n, int c, int h, int w)
{
    if (format == CUDNN_TENSOR_NCHW)
        return s_tensor_set(t, dt, n, c, h, w, (int64_t)c * h * w, (int64_t)h * w, w, 1);
    if (format == CUDNN_TENSOR_NHWC)
        return s_tensor_set(t, dt, n, c, h, w, (int64_t)h * w * c, 1, (int64_t)w * c, c);
    if (format == CUDNN_TENSOR_NCHW_VECT_C) return CUDNN_STATUS_NOT_SUPPORTED; /* not emulated */
    return CUDNN_STATUS_BAD_PARAM;
}

cudnnStatus_t cudnnSetTensor4dDescriptorEx(cudnnTensorDescriptor_t t, cudnnDataType_t dt, int n,
                                           int c, int h, int w, int nStride, int cStride,
                                           int hStride, int wStride)
{
    if (nStride < 0 || cStride < 0 || hStride < 0 || wStride < 0)
        return CUDNN_STATUS_NOT_SUPPORTED; /* negative strides: not supported by convolutions */
    return s_tensor_set(t, dt, n, c, h, w, nStride, cStride, hStride, wStride);
}

cudnnStatus_t cudnnGetTensor4dDescriptor(const cudnnTensorDescriptor_t t, cudnnDataType_t *dt,
                                         int *n, int *c, int *h, int *w, int *nStride,
                                         int *cStride, int *hStride, int *wStride)
{
    if (!t || t->tag != S_TTAG || !t->set) return CUDNN_STATUS_BAD_PARAM;
    if (dt) *dt = t->dt;
    if (n) *n = t->n;
    if (c) *c = t->c;
    if (h) *h = t->h;
    if (w) *w = t->w;
    if (nStride) *nStride = (int)t->ns;
    if (cStride) *cStride = (int)t->cs;
    if (hStride) *hStride = (int)t->hs;
    if (wStride) *wStride = (int)t->ws;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t *filterDesc)
{
    if (!filterDesc) return CUDNN_STATUS_BAD_PARAM;
    struct cudnnFilterStruct *f = calloc(1, sizeof *f);
    if (!f) return CUDNN_STATUS_ALLOC_FAILED;
    f->tag = S_FTAG;
    *filterDesc = f;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t f)
{
    if (!f) return CUDNN_STATUS_SUCCESS;
    if (f->tag != S_FTAG) return CUDNN_STATUS_BAD_PARAM;
    f->tag = S_DEAD;
    free(f);
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t f, cudnnDataType_t dt,
                                         cudnnTensorFormat_t format, int k, int c, int h, int w)
{
    if (!f || f->tag != S_FTAG) return CUDNN_STATUS_BAD_PARAM;
    if (!s_type_valid(dt) || k < 0 || c < 0 || h < 0 || w < 0) return CUDNN_STATUS_BAD_PARAM;
    if (format == CUDNN_TENSOR_NCHW_VECT_C) return CUDNN_STATUS_NOT_SUPPORTED; /* not emulated */
    if (format != CUDNN_TENSOR_NCHW && format != CUDNN_TENSOR_NHWC) return CUDNN_STATUS_BAD_PARAM;
    if ((int64_t)k * c * h * w > INT_MAX) return CUDNN_STATUS_NOT_SUPPORTED;
    f->dt = dt;
    f->fmt = format;
    f->k = k;
    f->c = c;
    f->h = h;
    f->w = w;
    f->set = 1;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetFilter4dDescriptor(const cudnnFilterDescriptor_t f, cudnnDataType_t *dt,
                                         cudnnTensorFormat_t *format, int *k, int *c, int *h,
                                         int *w)
{
    if (!f || f->tag != S_FTAG || !f->set) return CUDNN_STATUS_BAD_PARAM;
    if (dt) *dt = f->dt;
    if (format) *format = f->fmt;
    if (k) *k = f->k;
    if (c) *c = f->c;
    if (h) *h = f->h;
    if (w) *w = f->w;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t *convDesc)
{
    if (!convDesc) return CUDNN_STATUS_BAD_PARAM;
    struct cudnnConvolutionStruct *d = calloc(1, sizeof *d);
    if (!d) return CUDNN_STATUS_ALLOC_FAILED;
    d->tag = S_CTAG;
    d->groups = 1;
    d->math = CUDNN_DEFAULT_MATH;
    *convDesc = d;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d)
{
    if (!d) return CUDNN_STATUS_SUCCESS;
    if (d->tag != S_CTAG) return CUDNN_STATUS_BAD_PARAM;
    d->tag = S_DEAD;
    free(d);
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t m)
{
    if (!d || d->tag != S_CTAG || !s_math_valid(m)) return CUDNN_STATUS_BAD_PARAM;
    d->math = m;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t *m)
{
    if (!d || d->tag != S_CTAG || !m) return CUDNN_STATUS_BAD_PARAM;
    *m = d->math;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolutionGroupCount(cudnnConvolutionDescriptor_t d, int groupCount)
{
    if (!d || d->tag != S_CTAG || groupCount < 1) return CUDNN_STATUS_BAD_PARAM;
    d->groups = groupCount;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionGroupCount(cudnnConvolutionDescriptor_t d, int *groupCount)
{
    if (!d || d->tag != S_CTAG || !groupCount) return CUDNN_STATUS_BAD_PARAM;
    *groupCount = d->groups;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int pad_h, int pad_w,
                                              int u, int v, int dilation_h, int dilation_w,
                                              cudnnConvolutionMode_t mode,
                                              cudnnDataType_t computeType)
{
    if (!d || d->tag != S_CTAG) return CUDNN_STATUS_BAD_PARAM;
    if (pad_h < 0 || pad_w < 0 || u <= 0 || v <= 0 || dilation_h <= 0 || dilation_w <= 0)
        return CUDNN_STATUS_BAD_PARAM;
    if (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION) return CUDNN_STATUS_BAD_PARAM;
    if (!s_type_valid(computeType)) return CUDNN_STATUS_BAD_PARAM;
    d->ph = pad_h;
    d->pw = pad_w;
    d->u = u;
    d->v = v;
    d->dh = dilation_h;
    d->dw = dilation_w;
    d->mode = mode;
    d->ct = computeType;
    d->set = 1;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolution2dDescriptor(const cudnnConvolutionDescriptor_t d, int *pad_h,
                                              int *pad_w, int *u, int *v, int *dilation_h,
                                              int *dilation_w, cudnnConvolutionMode_t *mode,
                                              cudnnDataType_t *computeType)
{
    if (!d || d->tag != S_CTAG || !d->set) return CUDNN_STATUS_BAD_PARAM;
    if (pad_h) *pad_h = d->ph;
    if (pad_w) *pad_w = d->pw;
    if (u) *u = d->u;
    if (v) *v = d->v;
    if (dilation_h) *dilation_h = d->dh;
    if (dilation_w) *dilation_w = d->dw;
    if (mode) *mode = d->mode;
    if (computeType) *computeType = d->ct;
    return CUDNN_STATUS_SUCCESS;
}

static int s_tensor_ok(const struct cudnnTensorStruct *t)
{
    return t && t->tag == S_TTAG && t->set;
}

static int s_filter_ok(const struct cudnnFilterStruct *f)
{
    return f && f->tag == S_FTAG && f->set;
}

static int s_conv_ok(const struct cudnnConvolutionStruct *d)
{
    return d && d->tag == S_CTAG && d->set;
}

/* 1 + (in + 2 pad - ((f - 1) dil + 1)) / stride; -1 when the dilated
 * filter is larger than the padded input. */
static int s_out_dim(int in, int pad, int f, int dil, int stride)
{
    int64_t span = (int64_t)(f - 1) * dil + 1, padded = (int64_t)in + 2 * (int64_t)pad;
    if (span > padded) return -1;
    return (int)(1 + (padded - span) / stride);
}

cudnnStatus_t cudnnGetConvolution2dForwardOutputDim(const cudnnConvolutionDescriptor_t d,
                                                    const cudnnTensorDescriptor_t x,
                                                    const cudnnFilterDescriptor_t f, int *n, int *c,
                                                    int *h, int *w)
{
    if (!s_conv_ok(d) || !s_tensor_ok(x) || !s_filter_ok(f) || !n || !c || !h || !w)
        return CUDNN_STATUS_BAD_PARAM;
    if (x->c != f->c * d->groups || f->h <= 0 || f->w <= 0) return CUDNN_STATUS_BAD_PARAM;
    int oh = s_out_dim(x->h, d->ph, f->h, d->dh, d->u), ow = s_out_dim(x->w, d->pw, f->w, d->dw, d->v);
    if (oh < 0 || ow < 0) return CUDNN_STATUS_BAD_PARAM;
    *n = x->n;
    *c = f->k;
    *h = oh;
    *w = ow;
    return CUDNN_STATUS_SUCCESS;
}

/* ---- the problem ---------------------------------------------------------- */

enum { S_FWD = 0, S_BWD_DATA = 1, S_BWD_FILTER = 2 };

typedef struct s_prob {
    const struct cudnnTensorStruct *xd, *yd;
    const struct cudnnFilterStruct *wd;
    const struct cudnnConvolutionStruct *cd;
    cudnnDataType_t dt;
    int n, c, h, w, k, r, s, p, q, g, cg, kg;
    int refuse_algos; /* EQ_CUDNN_EMU_REFUSE_16BIT=2: every algorithm NOT_SUPPORTED */
} s_prob;

static int s_refuse16(void)
{
    const char *e = getenv("EQ_CUDNN_EMU_REFUSE_16BIT");
    if (!e || !*e || !strcmp(e, "0")) return 0;
    return !strcmp(e, "2") ? 2 : 1;
}

static int s_el_size(cudnnDataType_t dt)
{
    return dt == CUDNN_DATA_FLOAT ? 4 : 2;
}

static cudnnStatus_t s_problem(const struct cudnnTensorStruct *xd,
                               const struct cudnnFilterStruct *wd,
                               const struct cudnnConvolutionStruct *cd,
                               const struct cudnnTensorStruct *yd, s_prob *pr)
{
    memset(pr, 0, sizeof *pr);
    if (!s_tensor_ok(xd) || !s_tensor_ok(yd) || !s_filter_ok(wd) || !s_conv_ok(cd))
        return CUDNN_STATUS_BAD_PARAM;
    if (xd->dt != wd->dt || xd->dt != yd->dt) return CUDNN_STATUS_BAD_PARAM;
    const int g = cd->groups;
    if (xd->c != wd->c * g || wd->k % g != 0 || yd->c != wd->k || yd->n != xd->n)
        return CUDNN_STATUS_BAD_PARAM;
    if (xd->n <= 0 || xd->c <= 0 || xd->h <= 0 || xd->w <= 0 || wd->k <= 0 || wd->h <= 0 ||
        wd->w <= 0)
        return CUDNN_STATUS_BAD_PARAM;
    int p = s_out_dim(xd->h, cd->ph, wd->h, cd->dh, cd->u);
    int q = s_out_dim(xd->w, cd->pw, wd->w, cd->dw, cd->v);
    if (p < 0 || q < 0) return CUDNN_STATUS_BAD_PARAM;
    if (yd->h != p || yd->w != q) return CUDNN_STATUS_NOT_SUPPORTED;
    /* cuDNN's supported configurations, as far as emulated */
    const cudnnDataType_t dt = xd->dt;
    if (cd->ct != CUDNN_DATA_FLOAT) return CUDNN_STATUS_NOT_SUPPORTED; /* TRUE_HALF, DOUBLE, ... */
    if (dt != CUDNN_DATA_FLOAT && dt != CUDNN_DATA_HALF && dt != CUDNN_DATA_BFLOAT16)
        return CUDNN_STATUS_NOT_SUPPORTED;
    if (dt != CUDNN_DATA_FLOAT) {
        int r16 = s_refuse16();
        if (r16 == 1) return CUDNN_STATUS_NOT_SUPPORTED;
        pr->refuse_algos = r16 == 2;
    }
    pr->xd = xd;
    pr->yd = yd;
    pr->wd = wd;
    pr->cd = cd;
    pr->dt = dt;
    pr->n = xd->n;
    pr->c = xd->c;
    pr->h = xd->h;
    pr->w = xd->w;
    pr->k = wd->k;
    pr->r = wd->h;
    pr->s = wd->w;
    pr->p = p;
    pr->q = q;
    pr->g = g;
    pr->cg = wd->c;
    pr->kg = wd->k / g;
    return CUDNN_STATUS_SUCCESS;
}

/* ---- the algorithm table -------------------------------------------------- */

typedef struct s_algo {
    int algo;
    int det;      /* CUDNN_DETERMINISTIC */
    int tc;       /* a tensor-core algorithm (TF32 for float data where permitted) */
    float speed;  /* relative cost: time = flops * speed (synthetic) */
} s_algo;

/* In _v7's heuristic order; every other enumerant is NOT_SUPPORTED. */
static const s_algo s_fwd_algos[] = {
    {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, 1, 1, 0.35f},
    {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, 1, 0, 1.0f},
    {CUDNN_CONVOLUTION_FWD_ALGO_GEMM, 1, 0, 0.45f},
    {CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED, 1, 0, 0.4f},
};
static const s_algo s_bwd_data_algos[] = {
    {CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, 0, 0, 0.4f},
    {CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, 1, 1, 0.35f},
    {CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED, 1, 0, 0.5f},
};
static const s_algo s_bwd_filter_algos[] = {
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, 0, 0, 0.4f},
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3, 0, 0, 0.45f},
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, 1, 1, 0.35f},
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED, 1, 0, 0.5f},
};
static const int s_algo_count[3] = {CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                    CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
                                    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT};

static const s_algo *s_algos(int dir, int *n)
{
    if (dir == S_FWD) {
        *n = (int)(sizeof s_fwd_algos / sizeof s_fwd_algos[0]);
        return s_fwd_algos;
    }
    if (dir == S_BWD_DATA) {
        *n = (int)(sizeof s_bwd_data_algos / sizeof s_bwd_data_algos[0]);
        return s_bwd_data_algos;
    }
    *n = (int)(sizeof s_bwd_filter_algos / sizeof s_bwd_filter_algos[0]);
    return s_bwd_filter_algos;
}

static const s_algo *s_find_algo(int dir, int algo)
{
    int n;
    const s_algo *a = s_algos(dir, &n);
    for (int i = 0; i < n; i++)
        if (a[i].algo == algo) return &a[i];
    return NULL;
}

/* WINOGRAD_NONFUSED's shapes (3x3, stride 1, dilation 1, one group) and
 * its workspace: 4x4 transformed tiles of input, filter and output. */
static int s_winograd(const s_prob *pr, size_t el, size_t *ws)
{
    const struct cudnnConvolutionStruct *cd = pr->cd;
    if (pr->r != 3 || pr->s != 3 || cd->u != 1 || cd->v != 1 || cd->dh != 1 || cd->dw != 1 ||
        pr->g != 1)
        return 0;
    *ws = 16 * el *
          ((size_t)pr->n * (size_t)((pr->p + 1) / 2) * (size_t)((pr->q + 1) / 2) *
               (size_t)(pr->c + pr->k) +
           (size_t)pr->c * (size_t)pr->k);
    return 1;
}

/* Whether the algorithm runs this problem; its workspace in bytes. */
static int s_algo_ws(int dir, const s_algo *a, const s_prob *pr, size_t *ws)
{
    *ws = 0;
    if (!a || pr->refuse_algos) return 0;
    const size_t el = (size_t)s_el_size(pr->dt);
    const size_t crs = (size_t)pr->cg * (size_t)pr->r * (size_t)pr->s;
    if (dir == S_FWD) {
        switch (a->algo) {
        case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM: return 1;
        case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM:
            *ws = crs * sizeof(int32_t) + 256; /* precomputed offsets */
            return 1;
        case CUDNN_CONVOLUTION_FWD_ALGO_GEMM: /* im2col of one image, all groups */
            *ws = crs * (size_t)pr->g * (size_t)pr->p * (size_t)pr->q * el;
            return 1;
        case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED: return s_winograd(pr, el, ws);
        }
        return 0;
    }
    if (dir == S_BWD_DATA) {
        if (a->algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED)
            return s_winograd(pr, el, ws);
        if (a->algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_1)
            *ws = (size_t)pr->k * crs * el; /* the transposed filter */
        return 1;
    }
    if (a->algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED)
        return s_winograd(pr, el, ws);
    if (a->algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1)
        *ws = (size_t)pr->k * crs * sizeof(float); /* an fp32 accumulator */
    else if (a->algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3)
        *ws = 4096; /* split-k partials */
    return 1;
}

/* Tensor cores permitted by the descriptor's math type. */
static int s_tc_allowed(const s_prob *pr)
{
    return pr->cd->math != CUDNN_FMA_MATH;
}

/* The math type a result reports. */
static cudnnMathType_t s_result_math(const s_algo *a, const s_prob *pr)
{
    if (a && a->tc && s_tc_allowed(pr)) return CUDNN_TENSOR_OP_MATH;
    cudnnMathType_t m = pr->cd->math;
    return m == CUDNN_FMA_MATH ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH;
}

typedef struct s_result {
    int algo;
    cudnnStatus_t status;
    float time;
    size_t memory;
    cudnnDeterminism_t det;
    cudnnMathType_t math;
} s_result;

/* All of a direction's algorithms for the problem; timed (Find) or in the
 * heuristic order (_v7). */
static int s_results(int dir, const s_prob *pr, int timed, s_result *out)
{
    int na;
    const s_algo *a = s_algos(dir, &na);
    const double flops = 2.0 * pr->n * (double)pr->k * pr->p * pr->q * (double)pr->cg * pr->r * pr->s;
    int n = 0;
    for (int i = 0; i < na; i++) {
        size_t ws;
        s_result r = {a[i].algo, CUDNN_STATUS_NOT_SUPPORTED, -1.0f, 0,
                      a[i].det ? CUDNN_DETERMINISTIC : CUDNN_NON_DETERMINISTIC,
                      s_result_math(&a[i], pr)};
        if (s_algo_ws(dir, &a[i], pr, &ws)) {
            r.status = CUDNN_STATUS_SUCCESS;
            r.memory = ws;
            if (timed) {
                double t = flops * a[i].speed * 1e-9; /* ms at a synthetic rate */
                if (a[i].tc && s_tc_allowed(pr)) t *= 0.25;
                r.time = (float)(t + 1e-3);
            }
        }
        out[n++] = r;
    }
    /* the enumerants the emulation does not run: NOT_SUPPORTED, last */
    for (int algo = 0; algo < s_algo_count[dir]; algo++) {
        if (s_find_algo(dir, algo)) continue;
        out[n++] = (s_result){algo, CUDNN_STATUS_NOT_SUPPORTED, -1.0f, 0, CUDNN_DETERMINISTIC,
                              s_result_math(NULL, pr)};
    }
    if (timed) { /* stable insertion sort: successes by time, failures after */
        for (int i = 1; i < n; i++) {
            s_result t = out[i];
            int j = i;
            while (j > 0) {
                const s_result *o = &out[j - 1];
                int before = t.status == CUDNN_STATUS_SUCCESS &&
                             (o->status != CUDNN_STATUS_SUCCESS || t.time < o->time);
                if (!before) break;
                out[j] = out[j - 1];
                j--;
            }
            out[j] = t;
        }
    }
    return n;
}

#define S_MAXR 16

#define S_FILL_PERF(perf, res, cnt)                          \
    do {                                                     \
        for (int i_ = 0; i_ < (cnt); i_++) {                 \
            memset(&(perf)[i_], 0, sizeof (perf)[i_]);       \
            (perf)[i_].algo = (res)[i_].algo;                \
            (perf)[i_].status = (res)[i_].status;            \
            (perf)[i_].time = (res)[i_].time;                \
            (perf)[i_].memory = (res)[i_].memory;            \
            (perf)[i_].determinism = (res)[i_].det;          \
            (perf)[i_].mathType = (res)[i_].math;            \
        }                                                    \
    } while (0)

/* Shared by Find* and _v7: *cnt results into res. */
static cudnnStatus_t s_query(cudnnHandle_t h, int dir, const struct cudnnTensorStruct *xd,
                             const struct cudnnFilterStruct *wd,
                             const struct cudnnConvolutionStruct *cd,
                             const struct cudnnTensorStruct *yd, int requested, int *returned,
                             const void *perf, int timed, s_result *res, int *cnt)
{
    if (!s_handle_ok(h) || !returned || !perf || requested <= 0) return CUDNN_STATUS_BAD_PARAM;
    s_prob pr;
    cudnnStatus_t st = s_problem(xd, wd, cd, yd, &pr);
    if (st) return st;
    int n = s_results(dir, &pr, timed, res);
    *cnt = n < requested ? n : requested;
    *returned = *cnt;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionForwardAlgorithmMaxCount(cudnnHandle_t h, int *count)
{
    if (!s_handle_ok(h) || !count) return CUDNN_STATUS_BAD_PARAM;
    *count = CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithmMaxCount(cudnnHandle_t h, int *count)
{
    if (!s_handle_ok(h) || !count) return CUDNN_STATUS_BAD_PARAM;
    *count = CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(cudnnHandle_t h, int *count)
{
    if (!s_handle_ok(h) || !count) return CUDNN_STATUS_BAD_PARAM;
    *count = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT;
    return CUDNN_STATUS_SUCCESS;
}

#define S_QUERY_FN(name, dir, timed, perf_t, X, W, C, Y)                                        \
    {                                                                                           \
        s_result res[S_MAXR];                                                                   \
        int cnt = 0;                                                                            \
        cudnnStatus_t st = s_query(h, dir, X, W, C, Y, requestedAlgoCount, returnedAlgoCount,   \
                                   perfResults, timed, res, &cnt);                              \
        if (st) return st;                                                                      \
        S_FILL_PERF(perfResults, res, cnt);                                                     \
        return CUDNN_STATUS_SUCCESS;                                                            \
    }

cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(
    cudnnHandle_t h, const cudnnTensorDescriptor_t srcDesc, const cudnnFilterDescriptor_t filterDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t destDesc,
    const int requestedAlgoCount, int *returnedAlgoCount, cudnnConvolutionFwdAlgoPerf_t *perfResults)
S_QUERY_FN(v7, S_FWD, 0, cudnnConvolutionFwdAlgoPerf_t, srcDesc, filterDesc, convDesc, destDesc)

cudnnStatus_t cudnnFindConvolutionForwardAlgorithm(
    cudnnHandle_t h, const cudnnTensorDescriptor_t xDesc, const cudnnFilterDescriptor_t wDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t yDesc,
    const int requestedAlgoCount, int *returnedAlgoCount, cudnnConvolutionFwdAlgoPerf_t *perfResults)
S_QUERY_FN(find, S_FWD, 1, cudnnConvolutionFwdAlgoPerf_t, xDesc, wDesc, convDesc, yDesc)

cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(
    cudnnHandle_t h, const cudnnFilterDescriptor_t filterDesc, const cudnnTensorDescriptor_t diffDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t gradDesc,
    const int requestedAlgoCount, int *returnedAlgoCount,
    cudnnConvolutionBwdDataAlgoPerf_t *perfResults)
S_QUERY_FN(v7, S_BWD_DATA, 0, cudnnConvolutionBwdDataAlgoPerf_t, gradDesc, filterDesc, convDesc,
           diffDesc)

cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithm(
    cudnnHandle_t h, const cudnnFilterDescriptor_t wDesc, const cudnnTensorDescriptor_t dyDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t dxDesc,
    const int requestedAlgoCount, int *returnedAlgoCount,
    cudnnConvolutionBwdDataAlgoPerf_t *perfResults)
S_QUERY_FN(find, S_BWD_DATA, 1, cudnnConvolutionBwdDataAlgoPerf_t, dxDesc, wDesc, convDesc, dyDesc)

cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(
    cudnnHandle_t h, const cudnnTensorDescriptor_t srcDesc, const cudnnTensorDescriptor_t diffDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnFilterDescriptor_t gradDesc,
    const int requestedAlgoCount, int *returnedAlgoCount,
    cudnnConvolutionBwdFilterAlgoPerf_t *perfResults)
S_QUERY_FN(v7, S_BWD_FILTER, 0, cudnnConvolutionBwdFilterAlgoPerf_t, srcDesc, gradDesc, convDesc,
           diffDesc)

cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithm(
    cudnnHandle_t h, const cudnnTensorDescriptor_t xDesc, const cudnnTensorDescriptor_t dyDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnFilterDescriptor_t dwDesc,
    const int requestedAlgoCount, int *returnedAlgoCount,
    cudnnConvolutionBwdFilterAlgoPerf_t *perfResults)
S_QUERY_FN(find, S_BWD_FILTER, 1, cudnnConvolutionBwdFilterAlgoPerf_t, xDesc, dwDesc, convDesc,
           dyDesc)

/* EQ_CUDNN_EMU_BROKEN_ALGOS="dir:algo,...": algorithms that Find and _v7
 * still report as SUCCESS but whose GetWorkspaceSize and execution return
 * CUDNN_STATUS_NOT_SUPPORTED (dir 0 fwd, 1 bwd data, 2 bwd filter), as an
 * algorithm recommended by Find failed to run for some NHWC fp16 shapes
 * (NVIDIA developer forum, "Algorithm recommended by
 * cudnnFindConvolutionForwardAlgorithm fails to run when output channels
 * are not a multiple of 8", cuDNN 7.0.5): tests whether a caller tries
 * the next candidate. */
static int s_broken(int dir, int algo)
{
    const char *e = getenv("EQ_CUDNN_EMU_BROKEN_ALGOS");
    while (e && *e) {
        char *end;
        long d = strtol(e, &end, 10);
        if (*end != ':') return 0;
        long a = strtol(end + 1, &end, 10);
        if (d == dir && a == algo) return 1;
        if (*end != ',') return 0;
        e = end + 1;
    }
    return 0;
}

static cudnnStatus_t s_ws_size(cudnnHandle_t h, int dir, const struct cudnnTensorStruct *xd,
                               const struct cudnnFilterStruct *wd,
                               const struct cudnnConvolutionStruct *cd,
                               const struct cudnnTensorStruct *yd, int algo, size_t *size)
{
    if (!s_handle_ok(h) || !size) return CUDNN_STATUS_BAD_PARAM;
    s_prob pr;
    cudnnStatus_t st = s_problem(xd, wd, cd, yd, &pr);
    if (st) return st;
    if (algo < 0 || algo >= s_algo_count[dir]) return CUDNN_STATUS_BAD_PARAM;
    if (!s_algo_ws(dir, s_find_algo(dir, algo), &pr, size) || s_broken(dir, algo))
        return CUDNN_STATUS_NOT_SUPPORTED;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(
    cudnnHandle_t h, const cudnnTensorDescriptor_t xDesc, const cudnnFilterDescriptor_t wDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t yDesc,
    cudnnConvolutionFwdAlgo_t algo, size_t *sizeInBytes)
{
    return s_ws_size(h, S_FWD, xDesc, wDesc, convDesc, yDesc, (int)algo, sizeInBytes);
}

cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(
    cudnnHandle_t h, const cudnnFilterDescriptor_t wDesc, const cudnnTensorDescriptor_t dyDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t dxDesc,
    cudnnConvolutionBwdDataAlgo_t algo, size_t *sizeInBytes)
{
    return s_ws_size(h, S_BWD_DATA, dxDesc, wDesc, convDesc, dyDesc, (int)algo, sizeInBytes);
}

cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(
    cudnnHandle_t h, const cudnnTensorDescriptor_t xDesc, const cudnnTensorDescriptor_t dyDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnFilterDescriptor_t gradDesc,
    cudnnConvolutionBwdFilterAlgo_t algo, size_t *sizeInBytes)
{
    return s_ws_size(h, S_BWD_FILTER, xDesc, gradDesc, convDesc, dyDesc, (int)algo, sizeInBytes);
}

/* ---- element conversions ------------------------------------------------- */

static float s_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t s_u32(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float s_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return s_f32(sign | 0x7f800000u | (m << 13)); /* inf, NaN */
    if (e == 0) { /* zero, subnormal: m * 2^-24, exact in float */
        float f = (float)m * (1.0f / 16777216.0f);
        return sign ? -f : f;
    }
    return s_f32(sign | ((e + 112u) << 23) | (m << 13));
}

/* IEEE binary16, round to nearest even; overflow to inf; NaN stays NaN. */
static uint16_t s_float_to_half(float f)
{
    uint32_t u = s_u32(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu)); /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 (or inf): inf */
    if (a >= 0x38800000u) { /* normal: >= 2^-14 */
        uint32_t r = a - 0x38000000u; /* rebias the exponent 127 -> 15 */
        r += 0xfffu + ((r >> 13) & 1u);
        return (uint16_t)(sign | (r >> 13));
    }
    /* subnormal: a multiple of 2^-24, rounded to nearest even by rintf
     * (default rounding mode); 1024 becomes the smallest normal, 0x400 */
    float v = s_f32(a) * 16777216.0f; /* exact: a power of two scaling */
    return (uint16_t)(sign | (uint32_t)rintf(v));
}

static float s_bf16_to_float(uint16_t b)
{
    return s_f32((uint32_t)b << 16);
}

static uint16_t s_float_to_bf16(float f)
{
    uint32_t u = s_u32(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static float s_tf32(float x)
{
    uint32_t u = s_u32(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return x;
    u += 0xfffu + ((u >> 13) & 1u);
    return s_f32(u & 0xffffe000u);
}

static float s_get(const void *p, int64_t i, cudnnDataType_t dt)
{
    if (dt == CUDNN_DATA_FLOAT) return ((const float *)p)[i];
    uint16_t b = ((const uint16_t *)p)[i];
    return dt == CUDNN_DATA_HALF ? s_half_to_float(b) : s_bf16_to_float(b);
}

static void s_put(void *p, int64_t i, cudnnDataType_t dt, float v)
{
    if (dt == CUDNN_DATA_FLOAT)
        ((float *)p)[i] = v;
    else
        ((uint16_t *)p)[i] = dt == CUDNN_DATA_HALF ? s_float_to_half(v) : s_float_to_bf16(v);
}

/* ---- canonical layouts: NHWC activations, KRSC filters, float ------------- */

static int64_t s_tidx(const struct cudnnTensorStruct *t, int n, int c, int h, int w)
{
    return n * t->ns + c * t->cs + h * t->hs + w * t->ws;
}

static int64_t s_fidx(const struct cudnnFilterStruct *f, int k, int c, int r, int s)
{
    if (f->fmt == CUDNN_TENSOR_NHWC) return (((int64_t)k * f->h + r) * f->w + s) * f->c + c;
    return (((int64_t)k * f->c + c) * f->h + r) * f->w + s;
}

/* The tensor as float NHWC. */
static void s_load_t(const struct cudnnTensorStruct *t, const void *p, float *out, int tf32)
{
    size_t o = 0;
    for (int n = 0; n < t->n; n++)
        for (int h = 0; h < t->h; h++)
            for (int w = 0; w < t->w; w++)
                for (int c = 0; c < t->c; c++) {
                    float v = s_get(p, s_tidx(t, n, c, h, w), t->dt);
                    out[o++] = tf32 ? s_tf32(v) : v;
                }
}

/* y = alpha * res + beta * y (y not read when beta == 0), res NHWC. */
static void s_store_t(const struct cudnnTensorStruct *t, void *p, const float *res, float alpha,
                      float beta)
{
    size_t o = 0;
    for (int n = 0; n < t->n; n++)
        for (int h = 0; h < t->h; h++)
            for (int w = 0; w < t->w; w++)
                for (int c = 0; c < t->c; c++) {
                    int64_t i = s_tidx(t, n, c, h, w);
                    float v = alpha * res[o++];
                    if (beta != 0.0f) v += beta * s_get(p, i, t->dt);
                    s_put(p, i, t->dt, v);
                }
}

/* The filter as float KRSC, flipped for CUDNN_CONVOLUTION. */
static void s_load_f(const struct cudnnFilterStruct *f, const void *p, int flip, float *out,
                     int tf32)
{
    size_t o = 0;
    for (int k = 0; k < f->k; k++)
        for (int r = 0; r < f->h; r++)
            for (int s = 0; s < f->w; s++)
                for (int c = 0; c < f->c; c++) {
                    int rr = flip ? f->h - 1 - r : r, ss = flip ? f->w - 1 - s : s;
                    float v = s_get(p, s_fidx(f, k, c, rr, ss), f->dt);
                    out[o++] = tf32 ? s_tf32(v) : v;
                }
}

static void s_store_f(const struct cudnnFilterStruct *f, void *p, int flip, const float *res,
                      float alpha, float beta)
{
    size_t o = 0;
    for (int k = 0; k < f->k; k++)
        for (int r = 0; r < f->h; r++)
            for (int s = 0; s < f->w; s++)
                for (int c = 0; c < f->c; c++) {
                    int rr = flip ? f->h - 1 - r : r, ss = flip ? f->w - 1 - s : s;
                    int64_t i = s_fidx(f, k, c, rr, ss);
                    float v = alpha * res[o++];
                    if (beta != 0.0f) v += beta * s_get(p, i, f->dt);
                    s_put(p, i, f->dt, v);
                }
}

/* ---- the three convolutions, canonical layouts, float accumulation ------- */

static void s_fwd(const s_prob *pr, const float *X, const float *W, float *Y)
{
    const int H = pr->h, Wd = pr->w, C = pr->c, K = pr->k, R = pr->r, S = pr->s;
    const int cg = pr->cg, kg = pr->kg, G = pr->g;
    const struct cudnnConvolutionStruct *cd = pr->cd;
    memset(Y, 0, (size_t)pr->n * pr->p * pr->q * K * sizeof *Y);
    for (int n = 0; n < pr->n; n++)
        for (int p = 0; p < pr->p; p++)
            for (int q = 0; q < pr->q; q++) {
                float *y = Y + (((size_t)n * pr->p + p) * pr->q + q) * K;
                for (int r = 0; r < R; r++) {
                    int ih = p * cd->u - cd->ph + r * cd->dh;
                    if (ih < 0 || ih >= H) continue;
                    for (int s = 0; s < S; s++) {
                        int iw = q * cd->v - cd->pw + s * cd->dw;
                        if (iw < 0 || iw >= Wd) continue;
                        const float *x = X + (((size_t)n * H + ih) * Wd + iw) * C;
                        for (int g = 0; g < G; g++) {
                            const float *xg = x + (size_t)g * cg;
                            for (int kk = 0; kk < kg; kk++) {
                                int k = g * kg + kk;
                                const float *w = W + (((size_t)k * R + r) * S + s) * cg;
                                float acc = 0.0f;
                                for (int c = 0; c < cg; c++) acc += xg[c] * w[c];
                                y[k] += acc;
                            }
                        }
                    }
                }
            }
}

/* rot: where the reduction over k starts (non-deterministic algorithms). */
static void s_bwd_data(const s_prob *pr, const float *DY, const float *W, float *DX, int rot)
{
    const int H = pr->h, Wd = pr->w, C = pr->c, K = pr->k, R = pr->r, S = pr->s;
    const int cg = pr->cg, kg = pr->kg, G = pr->g;
    const struct cudnnConvolutionStruct *cd = pr->cd;
    memset(DX, 0, (size_t)pr->n * H * Wd * C * sizeof *DX);
    for (int n = 0; n < pr->n; n++)
        for (int p = 0; p < pr->p; p++)
            for (int q = 0; q < pr->q; q++) {
                const float *dy = DY + (((size_t)n * pr->p + p) * pr->q + q) * K;
                for (int r = 0; r < R; r++) {
                    int ih = p * cd->u - cd->ph + r * cd->dh;
                    if (ih < 0 || ih >= H) continue;
                    for (int s = 0; s < S; s++) {
                        int iw = q * cd->v - cd->pw + s * cd->dw;
                        if (iw < 0 || iw >= Wd) continue;
                        float *dx = DX + (((size_t)n * H + ih) * Wd + iw) * C;
                        for (int g = 0; g < G; g++) {
                            float *dxg = dx + (size_t)g * cg;
                            for (int kk = 0; kk < kg; kk++) {
                                int k = g * kg + (kk + rot) % kg;
                                const float d = dy[k];
                                const float *w = W + (((size_t)k * R + r) * S + s) * cg;
                                for (int c = 0; c < cg; c++) dxg[c] += d * w[c];
                            }
                        }
                    }
                }
            }
}

/* rot: where the reduction over the (n, p) rows starts. */
static void s_bwd_filter(const s_prob *pr, const float *X, const float *DY, float *DW, int rot)
{
    const int H = pr->h, Wd = pr->w, C = pr->c, K = pr->k, R = pr->r, S = pr->s;
    const int cg = pr->cg, kg = pr->kg, G = pr->g;
    const struct cudnnConvolutionStruct *cd = pr->cd;
    const int rows = pr->n * pr->p;
    memset(DW, 0, (size_t)K * R * S * cg * sizeof *DW);
    for (int t = 0; t < rows; t++) {
        const int np = (t + rot) % rows, n = np / pr->p, p = np % pr->p;
        for (int q = 0; q < pr->q; q++) {
            const float *dy = DY + (((size_t)n * pr->p + p) * pr->q + q) * K;
            for (int r = 0; r < R; r++) {
                int ih = p * cd->u - cd->ph + r * cd->dh;
                if (ih < 0 || ih >= H) continue;
                for (int s = 0; s < S; s++) {
                    int iw = q * cd->v - cd->pw + s * cd->dw;
                    if (iw < 0 || iw >= Wd) continue;
                    const float *x = X + (((size_t)n * H + ih) * Wd + iw) * C;
                    for (int g = 0; g < G; g++) {
                        const float *xg = x + (size_t)g * cg;
                        for (int kk = 0; kk < kg; kk++) {
                            int k = g * kg + kk;
                            const float d = dy[k];
                            float *dw = DW + (((size_t)k * R + r) * S + s) * cg;
                            for (int c = 0; c < cg; c++) dw[c] += d * xg[c];
                        }
                    }
                }
            }
        }
    }
}

/* ---- running a convolution ----------------------------------------------- */

static size_t s_tensor_bytes(const struct cudnnTensorStruct *t)
{
    int64_t last = (t->n - 1) * t->ns + (t->c - 1) * t->cs + (t->h - 1) * t->hs + (t->w - 1) * t->ws;
    return (size_t)(last + 1) * (size_t)s_el_size(t->dt);
}

static size_t s_filter_bytes(const struct cudnnFilterStruct *f)
{
    return (size_t)f->k * f->c * f->h * f->w * (size_t)s_el_size(f->dt);
}

static int s_overlap(const void *a, size_t na, const void *b, size_t nb)
{
    const char *x = a, *y = b;
    return na && nb && x < y + nb && y < x + na;
}

static cudnnStatus_t s_run(cudnnHandle_t h, int dir, const void *alpha, const void *beta,
                           const struct cudnnTensorStruct *xd, const void *x,
                           const struct cudnnFilterStruct *wd, const void *w,
                           const struct cudnnConvolutionStruct *cd,
                           const struct cudnnTensorStruct *yd, const void *y, int algo, void *ws,
                           size_t ws_bytes, void *out)
{
    static const char *const name[3] = {"cudnnConvolutionForward", "cudnnConvolutionBackwardData",
                                        "cudnnConvolutionBackwardFilter"};
    if (!s_handle_ok(h) || !alpha || !beta || !x || !w || !y) return CUDNN_STATUS_BAD_PARAM;
    s_prob pr;
    cudnnStatus_t st = s_problem(xd, wd, cd, yd, &pr);
    if (st) return st;
    if (algo < 0 || algo >= s_algo_count[dir]) return CUDNN_STATUS_BAD_PARAM;
    const s_algo *a = s_find_algo(dir, algo);
    size_t need;
    if (!s_algo_ws(dir, a, &pr, &need) || s_broken(dir, algo)) return CUDNN_STATUS_NOT_SUPPORTED;
    if (ws_bytes < need || (need && !ws)) return CUDNN_STATUS_BAD_PARAM;
    size_t out_bytes = dir == S_FWD ? s_tensor_bytes(yd)
                       : dir == S_BWD_DATA ? s_tensor_bytes(xd) : s_filter_bytes(wd);
    if (s_overlap(out, out_bytes, ws, need)) {
        fprintf(stderr, "cudnn emulation: %s: the output [%p, +%zu) overlaps the %zu bytes of "
                        "workspace at %p the algorithm uses\n",
                name[dir], out, out_bytes, need, ws);
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (!s_stream_ok(h->stream)) return CUDNN_STATUS_EXECUTION_FAILED_CUDART;
    {
        char who[4][64];
        snprintf(who[0], sizeof who[0], "%s x", name[dir]);
        snprintf(who[1], sizeof who[1], "%s w", name[dir]);
        snprintf(who[2], sizeof who[2], "%s y", name[dir]);
        snprintf(who[3], sizeof who[3], "%s workSpace", name[dir]);
        /* x is dx and y is dy for bwd data, w is dw for bwd filter */
        if (s_range(x, s_tensor_bytes(xd), who[0]) || s_range(w, s_filter_bytes(wd), who[1]) ||
            s_range(y, s_tensor_bytes(yd), who[2]) || s_range(ws, need, who[3]))
            return CUDNN_STATUS_SUCCESS; /* the fault is the runtime's now */
    }

    const int tf32 = pr.dt == CUDNN_DATA_FLOAT && a->tc && s_tc_allowed(&pr);
    const int flip = cd->mode == CUDNN_CONVOLUTION;
    /* a non-deterministic algorithm's reduction order: a process-wide
     * count, so two handles running the same sequence differ too, as
     * atomics on a GPU would */
    static unsigned long long s_nondet;
    const int rot = a->det ? 0
                           : (int)((__atomic_fetch_add(&s_nondet, 1, __ATOMIC_RELAXED) + 1) *
                                       2654435761ULL >> 7 & 0x7fffffff);
    const size_t nx = (size_t)pr.n * pr.h * pr.w * pr.c, ny = (size_t)pr.n * pr.p * pr.q * pr.k;
    const size_t nw = (size_t)pr.k * pr.r * pr.s * pr.cg;
    float *X = malloc(nx * sizeof *X), *Y = malloc(ny * sizeof *Y), *W = malloc(nw * sizeof *W);
    if (!X || !Y || !W) {
        free(X);
        free(Y);
        free(W);
        return CUDNN_STATUS_ALLOC_FAILED;
    }
    const float fa = *(const float *)alpha, fb = *(const float *)beta;
    s_enter();
    /* the algorithm may use every byte it asked for */
    if (need) memset(ws, 0xff, need);
    if (dir == S_FWD) {
        s_load_t(xd, x, X, tf32);
        s_load_f(wd, w, flip, W, tf32);
        s_fwd(&pr, X, W, Y);
        s_store_t(yd, out, Y, fa, fb);
    } else if (dir == S_BWD_DATA) {
        s_load_t(yd, y, Y, tf32);
        s_load_f(wd, w, flip, W, tf32);
        s_bwd_data(&pr, Y, W, X, pr.kg > 1 ? rot % pr.kg : 0);
        s_store_t(xd, out, X, fa, fb);
    } else {
        s_load_t(xd, x, X, tf32);
        s_load_t(yd, y, Y, tf32);
        const int rows = pr.n * pr.p;
        s_bwd_filter(&pr, X, Y, W, rows > 1 ? rot % rows : 0);
        s_store_f(wd, out, flip, W, fa, fb);
    }
    s_leave();
    free(X);
    free(Y);
    free(W);
    h->st.calls++;
    h->st.last_dir = dir;
    h->st.last_algo = algo;
    h->st.last_type = pr.dt;
    h->st.last_math = cd->math;
    h->st.last_ws_given = ws_bytes;
    h->st.last_ws_needed = need;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t h, const void *alpha,
                                      const cudnnTensorDescriptor_t xDesc, const void *x,
                                      const cudnnFilterDescriptor_t wDesc, const void *w,
                                      const cudnnConvolutionDescriptor_t convDesc,
                                      cudnnConvolutionFwdAlgo_t algo, void *workSpace,
                                      size_t workSpaceSizeInBytes, const void *beta,
                                      const cudnnTensorDescriptor_t yDesc, void *y)
{
    return s_run(h, S_FWD, alpha, beta, xDesc, x, wDesc, w, convDesc, yDesc, y, (int)algo,
                 workSpace, workSpaceSizeInBytes, y);
}

cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t h, const void *alpha,
                                           const cudnnFilterDescriptor_t wDesc, const void *w,
                                           const cudnnTensorDescriptor_t dyDesc, const void *dy,
                                           const cudnnConvolutionDescriptor_t convDesc,
                                           cudnnConvolutionBwdDataAlgo_t algo, void *workSpace,
                                           size_t workSpaceSizeInBytes, const void *beta,
                                           const cudnnTensorDescriptor_t dxDesc, void *dx)
{
    return s_run(h, S_BWD_DATA, alpha, beta, dxDesc, dx, wDesc, w, convDesc, dyDesc, dy,
                 (int)algo, workSpace, workSpaceSizeInBytes, dx);
}

cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t h, const void *alpha,
                                             const cudnnTensorDescriptor_t xDesc, const void *x,
                                             const cudnnTensorDescriptor_t dyDesc, const void *dy,
                                             const cudnnConvolutionDescriptor_t convDesc,
                                             cudnnConvolutionBwdFilterAlgo_t algo, void *workSpace,
                                             size_t workSpaceSizeInBytes, const void *beta,
                                             const cudnnFilterDescriptor_t dwDesc, void *dw)
{
    return s_run(h, S_BWD_FILTER, alpha, beta, xDesc, x, dwDesc, dw, convDesc, dyDesc, dy,
                 (int)algo, workSpace, workSpaceSizeInBytes, dw);
}
