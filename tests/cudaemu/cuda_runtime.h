/*
 * tests/cudaemu/cuda_runtime.h -- shadow of <cuda_runtime.h> for the CPU
 * emulation: the runtime API, plus in C++ the kernel side (the real header
 * is what nvcc includes implicitly into every .cu file).
 */
#ifndef EQ_CUDAEMU_CUDA_RUNTIME_H
#define EQ_CUDAEMU_CUDA_RUNTIME_H

#include "cuda_runtime_api.h"
#ifdef __cplusplus
#include "cuda_emu_kernel.h"
#endif

#endif
