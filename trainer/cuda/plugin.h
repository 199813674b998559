/*
 * trainer/cuda/plugin.h -- the CUDA backend as a loadable module (eqcuda.so).
 *
 * Programs do not link the CUDA libraries: trainer/backend_select.c
 * dlopen()s eqcuda.so the first time a CUDA backend is asked for and talks
 * to it only through the table below, which the module's one exported
 * symbol, eq_cuda_plugin_entry(), returns.  The module holds the CUDA
 * backend (trainer/cuda/) plus its own copies of what that code calls outside trainer/cuda (the
 * checked wrappers of trainer/backend.c, core/status.c, core/tensor.c and
 * quant/), so it needs no symbol of the program that loads it; everything
 * else in it is hidden (-fvisibility=hidden and a version script).
 *
 * Logging: the module has no copy of core/log.c.  Its eq_log/eq_logv
 * (trainer/cuda/plugin.c) forward every line to the host's eq_logv, handed
 * over by set_logv() right after loading, so the host's level, sink, role
 * and JSON setting apply to the module's lines too.
 *
 * Compatibility: objects cross the boundary by layout (eq_err,
 * eq_cuda_opts, eq_backend and its interface table), so the host checks
 * the module's EQ_CUDA_PLUGIN_ABI, its EQ_BACKEND_IFACE_VERSION and the
 * sizes of those structs before using anything else in the table; a
 * stale module is refused with an error naming it.  Bump
 * EQ_CUDA_PLUGIN_ABI when this table changes.
 *
 * ABI 2 added the NCCL communicator (trainer/cuda/nccl.h): nccl_unique_id
 * and nccl_comm_new, whose eq_comm_i table and eq_comm_seg arrays cross
 * the boundary too (their sizes are checked as well).  Both are NULL in a
 * module built without NCCL.
 *
 * ABI 3: the backend's quant_* members (backend interface 4) run the
 * program's eq_quant objects with the module's own copy of quant/, which
 * reads them by layout (quant/quant_internal.h): the sizes of struct
 * eq_quant, eq_quant_method and eq_quant_opts are checked too.
 */
#ifndef EQ_TRAINER_CUDA_PLUGIN_H
#define EQ_TRAINER_CUDA_PLUGIN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "core/log.h"
#include "core/status.h"
#include "trainer/backend.h"
#include "trainer/cuda/cuda.h"
#include "trainer/dist.h"

#define EQ_CUDA_PLUGIN_ABI 3
#define EQ_CUDA_PLUGIN_FILE "eqcuda.so"
#define EQ_CUDA_PLUGIN_SYMBOL "eq_cuda_plugin_entry"

typedef void (*eq_cuda_plugin_logv_fn)(eq_log_level level, const char *fmt, va_list ap);

typedef struct eq_cuda_plugin {
    int abi;                 /* EQ_CUDA_PLUGIN_ABI the module was built with: the first
                              * member in every version, so any host can read it */
    int backend_iface;       /* EQ_BACKEND_IFACE_VERSION the module was built with */
    size_t size_table;       /* sizeof(eq_cuda_plugin) */
    size_t size_err;         /* sizeof(eq_err) */
    size_t size_opts;        /* sizeof(eq_cuda_opts) */
    size_t size_backend;     /* sizeof(struct eq_backend) */
    size_t size_iface;       /* sizeof(struct eq_backend_i) */
    size_t size_comm_iface;  /* sizeof(eq_comm_i) */
    size_t size_comm_seg;    /* sizeof(eq_comm_seg) */
    size_t size_quant;       /* sizeof(struct eq_quant) (quant/quant_internal.h) */
    size_t size_quant_method; /* sizeof(eq_quant_method) */
    size_t size_quant_opts;  /* sizeof(eq_quant_opts) */
    /* Route the module's log lines to `fn` (the host's eq_logv); call once,
     * before anything else.  Until then the module writes them to stderr. */
    void (*set_logv)(eq_cuda_plugin_logv_fn fn);
    int (*device_count)(char *why, size_t why_len);                 /* eq_cuda_device_count */
    eq_backend *(*backend_new)(const eq_cuda_opts *o, eq_err *err); /* eq_backend_cuda_new */
    /* eq_nccl_unique_id and eq_nccl_comm_new (trainer/cuda/nccl.h); NULL
     * without NCCL.  `be` must come from this module's backend_new. */
    eq_status (*nccl_unique_id)(uint8_t *id, size_t len, eq_err *err);
    eq_status (*nccl_comm_new)(eq_backend *be, const uint8_t *id, size_t id_len, int rank, int world,
                               double timeout_s, const eq_comm_i **iface, void **ctx, eq_err *err);
} eq_cuda_plugin;

typedef const eq_cuda_plugin *(*eq_cuda_plugin_entry_fn)(void);

/* The module's only exported symbol: its table (static storage, never
 * NULL). */
__attribute__((visibility("default"))) const eq_cuda_plugin *eq_cuda_plugin_entry(void);

#endif
