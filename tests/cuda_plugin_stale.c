/*
 * tests/cuda_plugin_stale.c -- a stand-in for an eqcuda.so left over from
 * an older build: it has the entry point but another plugin ABI.
 * tests/check_cuda_select loads it through EQ_CUDA_PLUGIN and expects
 * backend_select.c to refuse it by name before touching the rest of the
 * table (which is why the rest is empty).
 */
#include "trainer/cuda/plugin.h"

static const eq_cuda_plugin s_table = {.abi = EQ_CUDA_PLUGIN_ABI + 1};

const eq_cuda_plugin *eq_cuda_plugin_entry(void)
{
    return &s_table;
}
