/*
 * trainer/cuda/launch.h -- EQ_LAUNCH(kernel, grid, block, shmem, stream)(args...),
 * the one way kernels.cu and quant.cu launch a kernel.  Under nvcc it is
 * exactly kernel<<<grid, block, shmem, stream>>>(args...); under the CPU
 * emulation (EQ_CUDA_EMU, g++; tests/cudaemu/cuda_emu_kernel.h, which
 * defines it) an emulated launch with the real runtime's checks, since
 * g++ cannot parse <<< >>>.
 */
#ifndef EQ_TRAINER_CUDA_LAUNCH_H
#define EQ_TRAINER_CUDA_LAUNCH_H

#ifdef EQ_CUDA_EMU
#include <cuda_runtime.h> /* tests/cudaemu's: the kernel side of the emulation */
#else
#define EQ_LAUNCH(kernel, grid, block, shmem, stream) kernel<<<grid, block, shmem, stream>>>
#endif

#endif
