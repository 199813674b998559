/*
 * trainer/backend_select.h -- open a compute backend by name.
 *
 * The trainer's `[trainer] backend = cpu|cuda` key maps onto this: one call
 * that works in every build.  "cpu" is the OpenBLAS reference backend;
 * "cuda" is trainer/cuda/ (cuDNN, cuBLAS, own kernels), present only when
 * configure found the CUDA toolkit (EQ_HAVE_CUDA in config.h), as the
 * module eqcuda.so (trainer/cuda/plugin.h), which the first "cuda" request
 * (eq_backend_open, eq_backend_cuda_devices) loads with dlopen from
 * $EQ_CUDA_PLUGIN if set, else from the build tree beside the program
 * (<dir>/.libs, <dir>/../.libs), else from the installed pkglibdir
 * (doc/gpu.md).  "cpu" never loads it.
 *
 * Errors (EQ_ERR_UNSUPPORTED unless stated), each naming the backend:
 *   - unknown name (EQ_ERR_INVALID, listing the known names);
 *   - "cuda" in a build without CUDA: "... built without CUDA ...";
 *   - "cuda" when the module does not load: "cannot load the CUDA module
 *     ...", naming each path tried with dlerror()'s text, or a module that
 *     is not eq's or is stale (another plugin ABI or backend interface);
 *   - "cuda" with no usable GPU: "no CUDA device: <CUDA's error string>"
 *     (cudaGetDeviceCount failed, e.g. no driver) or "no CUDA device: 0
 *     devices", or a device ordinal out of range (EQ_ERR_INVALID);
 *   - allocation or library initialisation failures of the backend itself.
 *
 * Thread safety: any thread may call these; the only state is the loaded
 * module (loaded once under a mutex, never unloaded).  The backend returned
 * is used by one thread at a time (trainer/backend.h).
 */
#ifndef EQ_TRAINER_BACKEND_SELECT_H
#define EQ_TRAINER_BACKEND_SELECT_H

#include "core/status.h"
#include "trainer/backend.h"

typedef struct eq_backend_opts {
    const char *name;  /* "cpu" or "cuda" (case-sensitive) */
    int device;        /* cuda: device ordinal (>= 0); cpu: threads (<= 0: one per online CPU) */
    int deterministic; /* cuda: fixed convolution algorithms, no atomic reductions, so results
                        * are identical run to run; cpu: always deterministic, ignored */
} eq_backend_opts;

/* Open backend `name` on `device` (see eq_backend_opts for what device means
 * per backend) in the default (fast) mode.  On success *out is the caller's
 * (eq_backend_destroy); on error *out is NULL and err says why. */
eq_status eq_backend_open(const char *name, int device, eq_backend **out, eq_err *err);

/* The same with every option. */
eq_status eq_backend_open_opts(const eq_backend_opts *o, eq_backend **out, eq_err *err);

/* 1 when this build contains the CUDA backend (its module may still fail
 * to load, or find no GPU); loads nothing. */
int eq_backend_cuda_built(void);

/* Number of usable CUDA devices: 0 in a build without CUDA, when the
 * module does not load, or when cudaGetDeviceCount fails (no driver, no
 * device); then `why` (may be NULL, `why_len` bytes) receives the reason.
 * Never fails otherwise. */
int eq_backend_cuda_devices(char *why, size_t why_len);

#endif
