/* tests/cudaemu/kernels_emu.cc -- trainer/cuda/kernels.cu compiled by g++
 * for the CPU emulation (EQ_CUDA_EMU; tests/cudaemu.am).  The kernel side
 * (cuda_emu_kernel.h) comes in through trainer/cuda/launch.h. */
#include "trainer/cuda/kernels.cu"
