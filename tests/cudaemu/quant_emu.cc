/* tests/cudaemu/quant_emu.cc -- trainer/cuda/quant.cu compiled by g++ for
 * the CPU emulation (EQ_CUDA_EMU; tests/cudaemu.am). */
#include "trainer/cuda/quant.cu"
