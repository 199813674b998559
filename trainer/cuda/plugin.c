/*
 * trainer/cuda/plugin.c -- eqcuda.so's entry point and its logging
 * (trainer/cuda/plugin.h).  Compiled only into the module.
 */
#include "config.h"

#include "trainer/cuda/plugin.h"
#include "quant/quant_internal.h" /* the struct sizes in the table */
#if defined(EQ_HAVE_NCCL) && !defined(EQ_CUDA_EMU) /* the emulated module has no NCCL */
#include "trainer/cuda/nccl.h"
#endif

#include <stdio.h>

/* The host's eq_logv; NULL until set_logv (then lines go to stderr). */
static eq_cuda_plugin_logv_fn s_logv;

static void s_set_logv(eq_cuda_plugin_logv_fn fn)
{
    s_logv = fn;
}

/* core/log.h's eq_logv/eq_log for the code inside the module: forwarded to
 * the host, whose settings (level, sink, role, JSON) decide what happens. */
void eq_logv(eq_log_level level, const char *fmt, va_list ap)
{
    if (s_logv) {
        s_logv(level, fmt, ap);
        return;
    }
    if (level < EQ_LOG_INFO || level >= EQ_LOG_OFF) return;
    fputs("eqcuda: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void eq_log(eq_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    eq_logv(level, fmt, ap);
    va_end(ap);
}

static const eq_cuda_plugin s_table = {
    .abi = EQ_CUDA_PLUGIN_ABI,
    .backend_iface = EQ_BACKEND_IFACE_VERSION,
    .size_table = sizeof(eq_cuda_plugin),
    .size_err = sizeof(eq_err),
    .size_opts = sizeof(eq_cuda_opts),
    .size_backend = sizeof(struct eq_backend),
    .size_iface = sizeof(struct eq_backend_i),
    .size_comm_iface = sizeof(eq_comm_i),
    .size_comm_seg = sizeof(eq_comm_seg),
    .size_quant = sizeof(struct eq_quant),
    .size_quant_method = sizeof(eq_quant_method),
    .size_quant_opts = sizeof(eq_quant_opts),
    .set_logv = s_set_logv,
    .device_count = eq_cuda_device_count,
    .backend_new = eq_backend_cuda_new,
#if defined(EQ_HAVE_NCCL) && !defined(EQ_CUDA_EMU) /* the emulated module has no NCCL */
    .nccl_unique_id = eq_nccl_unique_id,
    .nccl_comm_new = eq_nccl_comm_new,
#endif
};

const eq_cuda_plugin *eq_cuda_plugin_entry(void)
{
    return &s_table;
}
