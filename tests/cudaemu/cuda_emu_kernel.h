/*
 * tests/cudaemu/cuda_emu_kernel.h -- the kernel side of the CUDA emulation:
 * what nvcc gives a .cu file implicitly (__global__, __device__,
 * __shared__, dim3, threadIdx/blockIdx/blockDim/gridDim, __syncthreads)
 * for g++, and the launcher behind EQ_LAUNCH (trainer/cuda/launch.h).
 *
 * Execution model (tests/cudaemu/runtime.cc): the blocks of a grid run one
 * after another on the calling host thread, under one process-wide lock;
 * within a block every CUDA thread is a coroutine with its own stack that
 * runs until it reaches __syncthreads() or returns.  __syncthreads is a
 * real barrier (a block whose threads neither all wait nor all return is a
 * divergent barrier, reported as a launch failure), and the order in which
 * a block's threads run between barriers is a seeded permutation, so a
 * missing barrier changes results.  __shared__ variables are static
 * storage, right while one block runs at a time, refilled with 0xff bytes
 * before every block (undefined on a GPU).  Kernel arguments that
 * are pointers must point into device or pinned host memory (a host
 * pointer passed to a kernel is an illegal address on a GPU).  Nothing of
 * this shows real concurrency, warp behaviour, the memory model or speed.
 */
#ifndef EQ_CUDAEMU_CUDA_EMU_KERNEL_H
#define EQ_CUDAEMU_CUDA_EMU_KERNEL_H

#ifndef __cplusplus
#error "the kernel side of the CUDA emulation is C++ (kernels are compiled with g++ -x c++)"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <functional>
#include <type_traits>

#include "cuda_runtime_api.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
/* All __shared__ variables in one section, which the scheduler fills
 * with 0xff bytes (NaN as float) before every block: a thread that reads
 * shared memory no thread of its block wrote sees garbage, as on a GPU. */
#define __shared__ static __attribute__((section("eqemu_shared")))

struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

extern "C" {
/* the running thread's indices; set by the scheduler before it resumes a
 * thread (one launch at a time, under the emulation's lock) */
extern uint3 eq_emu_threadIdx, eq_emu_blockIdx;
extern dim3 eq_emu_blockDim, eq_emu_gridDim;
extern const char eq_emu_notptr;
void eq_emu_syncthreads(void);
/* Queues body(ctx) as every thread of grid x block on `stream` (run when
 * the stream's work runs; drop(ctx) afterwards, or at once if the launch
 * fails); ptrs[i] is argument i when it is a pointer, &eq_emu_notptr else.
 * Errors as the runtime reports them: cudaGetLastError() afterwards. */
void eq_emu_launch(const char *kernel, dim3 grid, dim3 block, size_t shmem, cudaStream_t stream,
                   const void *const *ptrs, int nargs, void (*body)(void *), void *ctx,
                   void (*drop)(void *));
}

#define threadIdx eq_emu_threadIdx
#define blockIdx eq_emu_blockIdx
#define blockDim eq_emu_blockDim
#define gridDim eq_emu_gridDim
#define __syncthreads() eq_emu_syncthreads()

template <typename T> static inline const void *eq_emu_ptrarg(const T &v)
{
    if constexpr (std::is_pointer<T>::value)
        return (const void *)v;
    else
        return &eq_emu_notptr;
}

/* EQ_LAUNCH(k, grid, block, shmem, stream)(args...): the arguments convert
 * to the kernel's parameter types as they do in a real launch. */
template <typename... P> struct eq_emu_launcher {
    void (*k)(P...);
    const char *name;
    dim3 grid, block;
    size_t shmem;
    cudaStream_t stream;
    void operator()(P... p) const
    {
        const void *ptrs[sizeof...(P) + 1] = {eq_emu_ptrarg(p)..., nullptr};
        void (*kern)(P...) = k;
        /* the arguments by value: the launch may run after this returns */
        auto *body = new std::function<void()>([=]() { kern(p...); });
        eq_emu_launch(
            name, grid, block, shmem, stream, ptrs, (int)sizeof...(P),
            [](void *c) { (*static_cast<std::function<void()> *>(c))(); }, body,
            [](void *c) { delete static_cast<std::function<void()> *>(c); });
    }
};

template <typename... P>
static inline eq_emu_launcher<P...> eq_emu_make_launcher(void (*k)(P...), const char *name,
                                                         dim3 grid, dim3 block, size_t shmem,
                                                         cudaStream_t stream)
{
    return eq_emu_launcher<P...>{k, name, grid, block, shmem, stream};
}

#define EQ_LAUNCH(k, grid, block, shmem, stream) \
    eq_emu_make_launcher(k, #k, grid, block, shmem, stream)

#endif
