/*
 * trainer/backend_select.c -- eq_backend_open: backends by name, in every
 * build (the CUDA branch compiles only where configure found CUDA).
 */
#include "config.h"

#include "trainer/backend_select.h"

#include <stdio.h>
#include <string.h>

#ifdef EQ_HAVE_CUDA
#include "trainer/cuda/cuda.h"
#endif

int eq_backend_cuda_built(void)
{
#ifdef EQ_HAVE_CUDA
    return 1;
#else
    return 0;
#endif
}

int eq_backend_cuda_devices(char *why, size_t why_len)
{
#ifdef EQ_HAVE_CUDA
    return eq_cuda_device_count(why, why_len);
#else
    if (why && why_len) snprintf(why, why_len, "built without CUDA");
    return 0;
#endif
}

eq_status eq_backend_open_opts(const eq_backend_opts *o, eq_backend **out, eq_err *err)
{
    if (!out) return eq_err_set(err, EQ_ERR_INVALID, "backend: output pointer is NULL");
    *out = NULL;
    if (!o || !o->name) return eq_err_set(err, EQ_ERR_INVALID, "backend: no backend name given");
    if (strcmp(o->name, "cpu") == 0) {
        *out = eq_backend_cpu_new(o->device, err);
        return *out ? EQ_OK : (err && err->code != EQ_OK ? err->code : EQ_ERR_NOMEM);
    }
    if (strcmp(o->name, "cuda") == 0) {
#ifdef EQ_HAVE_CUDA
        eq_cuda_opts co = {.device = o->device, .deterministic = o->deterministic};
        *out = eq_backend_cuda_new(&co, err);
        return *out ? EQ_OK : (err && err->code != EQ_OK ? err->code : EQ_ERR_INTERNAL);
#else
        return eq_err_set(err, EQ_ERR_UNSUPPORTED,
                          "backend 'cuda': eq was built without CUDA (configure found no nvcc; "
                          "rebuild with --with-cuda=DIR)");
#endif
    }
    return eq_err_set(err, EQ_ERR_INVALID, "backend '%s': unknown (known: cpu, cuda)", o->name);
}

eq_status eq_backend_open(const char *name, int device, eq_backend **out, eq_err *err)
{
    eq_backend_opts o = {.name = name, .device = device, .deterministic = 0};
    return eq_backend_open_opts(&o, out, err);
}
