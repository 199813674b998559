/*
 * tests/cudaemu/emu_blas.c -- cuBLAS's handle and cublasSgemm on the host,
 * over OpenBLAS (cblas_sgemm, column-major), for the CUDA emulation.
 *
 * What the emulation takes from cuBLAS's documentation (the cuBLAS
 * Library User Guide's cublas<t>gemm, as we remember it: not re-read this
 * session; types and values from the 13.1 headers installed here), and
 * what it chose:
 *  - cublas<t>gemm returns CUBLAS_STATUS_INVALID_VALUE if m, n or k < 0,
 *    if transa or transb is not N, T or C, if lda < max(1, m) (transa N)
 *    or max(1, k) (otherwise), if ldb < max(1, k) (transb N) or
 *    max(1, n) (otherwise), if ldc < max(1, m), or if alpha or beta is
 *    NULL; CUBLAS_STATUS_NOT_INITIALIZED for a handle that is not one.
 *  - beta == 0: C is not read (it may hold NaN); OpenBLAS does the same.
 *  - Math modes: CUBLAS_TF32_TENSOR_OP_MATH lets single-precision routines
 *    use TF32 tensor cores, so the emulation rounds A and B to TF32 (10
 *    explicit mantissa bits, to nearest even) before the product; every
 *    other mode is full fp32.  (Which kernels a real GPU picks, and how
 *    they round, is not documented: this only makes a TF32 product
 *    measurably different from an fp32 one, as on the GPU.)
 *  - Atomics mode is recorded; the emulation never uses atomics.
 *  - Streams are synchronous: the product is done when the call returns.
 */
#include "tests/cudaemu/cublas_v2.h"
#include "tests/cudaemu/cudaemu.h"

#include <cblas.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The CUDA runtime emulation's hooks, weak (see emu_dnn.c): operand
 * ranges checked (a fault is the runtime's, recorded for later calls; the
 * call does nothing and returns SUCCESS), a dead stream is
 * CUBLAS_STATUS_EXECUTION_FAILED (choice), the product runs between
 * device_enter/leave. */
#pragma weak eq_cudaemu_device_range
#pragma weak eq_cudaemu_stream_valid
#pragma weak eq_cudaemu_device_enter
#pragma weak eq_cudaemu_device_leave

#define S_TAG 0xb1a5c0deU

struct cublasContext {
    uint32_t tag;
    cudaStream_t stream;
    cublasMath_t math;
    cublasAtomicsMode_t atomics;
    cublasPointerMode_t pointer;
};

static int s_ok(cublasHandle_t h)
{
    return h && h->tag == S_TAG;
}

cublasStatus_t cublasCreate_v2(cublasHandle_t *handle)
{
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    struct cublasContext *h = calloc(1, sizeof *h);
    if (!h) return CUBLAS_STATUS_ALLOC_FAILED;
    h->tag = S_TAG;
    h->math = CUBLAS_DEFAULT_MATH;
    h->atomics = CUBLAS_ATOMICS_NOT_ALLOWED;
    h->pointer = CUBLAS_POINTER_MODE_HOST;
    *handle = h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle)
{
    if (!s_ok(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->tag = 0xdeadbeefU;
    free(handle);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetVersion_v2(cublasHandle_t handle, int *version)
{
    if (!s_ok(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!version) return CUBLAS_STATUS_INVALID_VALUE;
    *version = CUBLAS_VER_MAJOR * 10000 + CUBLAS_VER_MINOR * 100;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t streamId)
{
    if (!s_ok(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = streamId;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream_v2(cublasHandle_t handle, cudaStream_t *streamId)
{
    if (!s_ok(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!streamId) return CUBLAS_STATUS_INVALID_VALUE;
    *streamId = handle->stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t *mode)
{
    if (!s_ok(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = handle->pointer;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t mode)
{
    if (!s_ok(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (mode != CUBLAS_POINTER_MODE_HOST && mode != CUBLAS_POINTER_MODE_DEVICE)
        return CUBLAS_STATUS_INVALID_VALUE;
    handle->pointer = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetAtomicsMode(cublasHandle_t handle, cublasAtomicsMode_t *mode)
{
    if (!s_ok(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = handle->atomics;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetAtomicsMode(cublasHandle_t handle, cublasAtomicsMode_t mode)
{
    if (!s_ok(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (mode != CUBLAS_ATOMICS_NOT_ALLOWED && mode != CUBLAS_ATOMICS_ALLOWED)
        return CUBLAS_STATUS_INVALID_VALUE;
    handle->atomics = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t *mode)
{
    if (!s_ok(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = handle->math;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode)
{
    if (!s_ok(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    /* one of the modes, optionally with the DISALLOW_REDUCED_PRECISION flag */
    int base = (int)mode & ~(int)CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
    if (base != CUBLAS_DEFAULT_MATH && base != CUBLAS_TENSOR_OP_MATH &&
        base != CUBLAS_PEDANTIC_MATH && base != CUBLAS_TF32_TENSOR_OP_MATH &&
        base != CUBLAS_FP32_EMULATED_BF16X9_MATH && base != CUBLAS_FP64_EMULATED_FIXEDPOINT_MATH)
        return CUBLAS_STATUS_INVALID_VALUE;
    handle->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusName(cublasStatus_t status)
{
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

const char *cublasGetStatusString(cublasStatus_t status)
{
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "error detected trying to check the license";
    }
    return "unknown error";
}

/* x rounded to TF32 (8-bit exponent, 10 explicit mantissa bits), to
 * nearest even; inf and NaN unchanged. */
static float s_tf32(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7f800000u) != 0x7f800000u) {
        u += 0xfffu + ((u >> 13) & 1u);
        u &= 0xffffe000u;
    }
    memcpy(&x, &u, sizeof x);
    return x;
}

/* A copy of the op(X) operand, cols x rows column-major with leading
 * dimension ld, rounded to TF32 (NULL when out of memory). */
static float *s_tf32_copy(const float *x, int rows, int cols, int ld)
{
    float *c = malloc((size_t)ld * (size_t)cols * sizeof *c);
    if (!c) return NULL;
    for (int j = 0; j < cols; j++)
        for (int i = 0; i < ld; i++)
            c[(size_t)j * (size_t)ld + (size_t)i] =
                i < rows ? s_tf32(x[(size_t)j * (size_t)ld + (size_t)i]) : 0.0f;
    return c;
}

static cublasStatus_t s_gemm(cublasHandle_t handle, cublasOperation_t transa,
                             cublasOperation_t transb, int m, int n, int k, const float *alpha,
                             const float *A, int lda, const float *B, int ldb, const float *beta,
                             float *C, int ldc);

static int s_max1(int a)
{
    return a > 1 ? a : 1;
}

static int s_op_ok(cublasOperation_t op)
{
    return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C;
}

cublasStatus_t cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa,
                              cublasOperation_t transb, int m, int n, int k, const float *alpha,
                              const float *A, int lda, const float *B, int ldb, const float *beta,
                              float *C, int ldc)
{
    if (!s_ok(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (m < 0 || n < 0 || k < 0 || !s_op_ok(transa) || !s_op_ok(transb))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (lda < s_max1(transa == CUBLAS_OP_N ? m : k)) return CUBLAS_STATUS_INVALID_VALUE;
    if (ldb < s_max1(transb == CUBLAS_OP_N ? k : n)) return CUBLAS_STATUS_INVALID_VALUE;
    if (ldc < s_max1(m)) return CUBLAS_STATUS_INVALID_VALUE;
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    if (!C) return CUBLAS_STATUS_INVALID_VALUE;
    /* A and B are only read when they contribute */
    if (k > 0 && *alpha != 0.0f && (!A || !B)) return CUBLAS_STATUS_INVALID_VALUE;
    if (eq_cudaemu_stream_valid && eq_cudaemu_stream_valid(handle->stream) != 0)
        return CUBLAS_STATUS_EXECUTION_FAILED;
    if (eq_cudaemu_device_range) {
        /* the extents read and written: (cols - 1) * ld + rows elements */
        const int reads = k > 0 && *alpha != 0.0f;
        const size_t ea = (size_t)((transa == CUBLAS_OP_N ? k : m) - 1) * (size_t)lda +
                          (size_t)(transa == CUBLAS_OP_N ? m : k);
        const size_t eb = (size_t)((transb == CUBLAS_OP_N ? n : k) - 1) * (size_t)ldb +
                          (size_t)(transb == CUBLAS_OP_N ? k : n);
        const size_t ec = (size_t)(n - 1) * (size_t)ldc + (size_t)m;
        if ((reads && eq_cudaemu_device_range(A, ea * sizeof(float), "cublasSgemm A")) ||
            (reads && eq_cudaemu_device_range(B, eb * sizeof(float), "cublasSgemm B")) ||
            eq_cudaemu_device_range(C, ec * sizeof(float), "cublasSgemm C"))
            return CUBLAS_STATUS_SUCCESS; /* the fault is the runtime's now */
    }
    if (eq_cudaemu_device_enter) eq_cudaemu_device_enter();
    cublasStatus_t st = s_gemm(handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
    if (eq_cudaemu_device_leave) eq_cudaemu_device_leave();
    return st;
}

/* The product itself (arguments checked). */
static cublasStatus_t s_gemm(cublasHandle_t handle, cublasOperation_t transa,
                             cublasOperation_t transb, int m, int n, int k, const float *alpha,
                             const float *A, int lda, const float *B, int ldb, const float *beta,
                             float *C, int ldc)
{
    const enum CBLAS_TRANSPOSE ta = transa == CUBLAS_OP_N ? CblasNoTrans : CblasTrans;
    const enum CBLAS_TRANSPOSE tb = transb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans;
    int base = (int)handle->math & ~(int)CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
    if (base == CUBLAS_TF32_TENSOR_OP_MATH && k > 0 && *alpha != 0.0f) {
        /* stored shapes: A is (transa N ? m x k : k x m), B (transb N ? k x n : n x k) */
        float *a = s_tf32_copy(A, transa == CUBLAS_OP_N ? m : k, transa == CUBLAS_OP_N ? k : m, lda);
        float *b = s_tf32_copy(B, transb == CUBLAS_OP_N ? k : n, transb == CUBLAS_OP_N ? n : k, ldb);
        if (!a || !b) {
            free(a);
            free(b);
            return CUBLAS_STATUS_ALLOC_FAILED;
        }
        cblas_sgemm(CblasColMajor, ta, tb, m, n, k, *alpha, a, lda, b, ldb, *beta, C, ldc);
        free(a);
        free(b);
        return CUBLAS_STATUS_SUCCESS;
    }
    cblas_sgemm(CblasColMajor, ta, tb, m, n, k, *alpha, A ? A : C, lda, B ? B : C, ldb, *beta, C,
                ldc);
    return CUBLAS_STATUS_SUCCESS;
}
