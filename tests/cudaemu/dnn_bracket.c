/*
 * tests/cudaemu/dnn_bracket.c -- EQ_CUDA_EMU_PROTECT for the emulated
 * cuDNN/cuBLAS: the calls that read or write device memory run between
 * eq_cudaemu_device_enter() and eq_cudaemu_device_leave(), through the
 * linker's --wrap (tests/cudaemu.am), so the emulated libraries need not
 * know about the runtime emulation.  Without EQ_CUDA_EMU_PROTECT the
 * bracket only takes the emulation's lock.
 */
#include <cublas_v2.h>
#include <cudnn.h>

#include "cudaemu.h"

cudnnStatus_t __real_cudnnConvolutionForward(cudnnHandle_t h, const void *alpha,
                                             const cudnnTensorDescriptor_t xd, const void *x,
                                             const cudnnFilterDescriptor_t wd, const void *w,
                                             const cudnnConvolutionDescriptor_t cd,
                                             cudnnConvolutionFwdAlgo_t algo, void *ws, size_t wsb,
                                             const void *beta, const cudnnTensorDescriptor_t yd,
                                             void *y);
cudnnStatus_t __wrap_cudnnConvolutionForward(cudnnHandle_t h, const void *alpha,
                                             const cudnnTensorDescriptor_t xd, const void *x,
                                             const cudnnFilterDescriptor_t wd, const void *w,
                                             const cudnnConvolutionDescriptor_t cd,
                                             cudnnConvolutionFwdAlgo_t algo, void *ws, size_t wsb,
                                             const void *beta, const cudnnTensorDescriptor_t yd,
                                             void *y);
cudnnStatus_t __wrap_cudnnConvolutionForward(cudnnHandle_t h, const void *alpha,
                                             const cudnnTensorDescriptor_t xd, const void *x,
                                             const cudnnFilterDescriptor_t wd, const void *w,
                                             const cudnnConvolutionDescriptor_t cd,
                                             cudnnConvolutionFwdAlgo_t algo, void *ws, size_t wsb,
                                             const void *beta, const cudnnTensorDescriptor_t yd,
                                             void *y)
{
    eq_cudaemu_device_enter();
    cudnnStatus_t s = __real_cudnnConvolutionForward(h, alpha, xd, x, wd, w, cd, algo, ws, wsb,
                                                     beta, yd, y);
    eq_cudaemu_device_leave();
    return s;
}

cudnnStatus_t __real_cudnnConvolutionBackwardData(
    cudnnHandle_t h, const void *alpha, const cudnnFilterDescriptor_t wd, const void *w,
    const cudnnTensorDescriptor_t dyd, const void *dy, const cudnnConvolutionDescriptor_t cd,
    cudnnConvolutionBwdDataAlgo_t algo, void *ws, size_t wsb, const void *beta,
    const cudnnTensorDescriptor_t dxd, void *dx);
cudnnStatus_t __wrap_cudnnConvolutionBackwardData(
    cudnnHandle_t h, const void *alpha, const cudnnFilterDescriptor_t wd, const void *w,
    const cudnnTensorDescriptor_t dyd, const void *dy, const cudnnConvolutionDescriptor_t cd,
    cudnnConvolutionBwdDataAlgo_t algo, void *ws, size_t wsb, const void *beta,
    const cudnnTensorDescriptor_t dxd, void *dx);
cudnnStatus_t __wrap_cudnnConvolutionBackwardData(
    cudnnHandle_t h, const void *alpha, const cudnnFilterDescriptor_t wd, const void *w,
    const cudnnTensorDescriptor_t dyd, const void *dy, const cudnnConvolutionDescriptor_t cd,
    cudnnConvolutionBwdDataAlgo_t algo, void *ws, size_t wsb, const void *beta,
    const cudnnTensorDescriptor_t dxd, void *dx)
{
    eq_cudaemu_device_enter();
    cudnnStatus_t s = __real_cudnnConvolutionBackwardData(h, alpha, wd, w, dyd, dy, cd, algo, ws,
                                                          wsb, beta, dxd, dx);
    eq_cudaemu_device_leave();
    return s;
}

cudnnStatus_t __real_cudnnConvolutionBackwardFilter(
    cudnnHandle_t h, const void *alpha, const cudnnTensorDescriptor_t xd, const void *x,
    const cudnnTensorDescriptor_t dyd, const void *dy, const cudnnConvolutionDescriptor_t cd,
    cudnnConvolutionBwdFilterAlgo_t algo, void *ws, size_t wsb, const void *beta,
    const cudnnFilterDescriptor_t dwd, void *dw);
cudnnStatus_t __wrap_cudnnConvolutionBackwardFilter(
    cudnnHandle_t h, const void *alpha, const cudnnTensorDescriptor_t xd, const void *x,
    const cudnnTensorDescriptor_t dyd, const void *dy, const cudnnConvolutionDescriptor_t cd,
    cudnnConvolutionBwdFilterAlgo_t algo, void *ws, size_t wsb, const void *beta,
    const cudnnFilterDescriptor_t dwd, void *dw);
cudnnStatus_t __wrap_cudnnConvolutionBackwardFilter(
    cudnnHandle_t h, const void *alpha, const cudnnTensorDescriptor_t xd, const void *x,
    const cudnnTensorDescriptor_t dyd, const void *dy, const cudnnConvolutionDescriptor_t cd,
    cudnnConvolutionBwdFilterAlgo_t algo, void *ws, size_t wsb, const void *beta,
    const cudnnFilterDescriptor_t dwd, void *dw)
{
    eq_cudaemu_device_enter();
    cudnnStatus_t s = __real_cudnnConvolutionBackwardFilter(h, alpha, xd, x, dyd, dy, cd, algo, ws,
                                                            wsb, beta, dwd, dw);
    eq_cudaemu_device_leave();
    return s;
}

cublasStatus_t __real_cublasSgemm_v2(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                     int m, int n, int k, const float *alpha, const float *a,
                                     int lda, const float *b, int ldb, const float *beta, float *c,
                                     int ldc);
cublasStatus_t __wrap_cublasSgemm_v2(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                     int m, int n, int k, const float *alpha, const float *a,
                                     int lda, const float *b, int ldb, const float *beta, float *c,
                                     int ldc);
cublasStatus_t __wrap_cublasSgemm_v2(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                     int m, int n, int k, const float *alpha, const float *a,
                                     int lda, const float *b, int ldb, const float *beta, float *c,
                                     int ldc)
{
    eq_cudaemu_device_enter();
    cublasStatus_t s =
        __real_cublasSgemm_v2(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    eq_cudaemu_device_leave();
    return s;
}
