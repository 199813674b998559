/*
 * trainer/backend_select.c -- eq_backend_open: backends by name, in every
 * build.  The CUDA backend lives in a module (eqcuda.so, trainer/cuda/
 * plugin.h) loaded with dlopen the first time it is asked for, so programs
 * carry no dependency on the CUDA libraries and `backend = cpu` never
 * touches them.
 */
#include "config.h"

#include "trainer/backend_select.h"
#include "trainer/dist.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#ifdef EQ_HAVE_CUDA
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/log.h"
#include "trainer/cuda/plugin.h"
#include "quant/quant_internal.h" /* struct sizes checked against the module */

#ifndef EQ_PKGLIBDIR
#error "EQ_PKGLIBDIR (the installed module's directory) must be defined by the build"
#endif

/* Loaded once and never unloaded (backends from it may live until exit). */
static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static const eq_cuda_plugin *s_plugin;

/* Append "; " (after the first) and a formatted piece to buf (cap bytes,
 * truncating quietly). */
static void s_append(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void s_append(char *buf, size_t cap, const char *fmt, ...)
{
    size_t len = strlen(buf);
    if (len + 1 >= cap) return;
    if (len) {
        snprintf(buf + len, cap - len, "; ");
        len = strlen(buf);
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + len, cap - len, fmt, ap);
    va_end(ap);
}

/* dlopen `path` and check its table; NULL with the reason appended to why. */
static const eq_cuda_plugin *s_try(const char *path, char *why, size_t why_len)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        /* dlerror names the path for "not found" and most other failures */
        if (e && strstr(e, path))
            s_append(why, why_len, "%s", e);
        else
            s_append(why, why_len, "%s: %s", path, e ? e : "dlopen failed");
        return NULL;
    }
    eq_cuda_plugin_entry_fn entry;
    void *sym = dlsym(h, EQ_CUDA_PLUGIN_SYMBOL);
    memcpy(&entry, &sym, sizeof entry); /* object pointer to function pointer */
    if (!entry) {
        s_append(why, why_len, "%s: not an eq CUDA module (no %s)", path, EQ_CUDA_PLUGIN_SYMBOL);
        dlclose(h);
        return NULL;
    }
    const eq_cuda_plugin *p = entry();
    if (!p || p->abi != EQ_CUDA_PLUGIN_ABI) {
        s_append(why, why_len,
                 "%s: stale module (plugin ABI %d, this program needs %d): rebuild or reinstall it",
                 path, p ? p->abi : -1, EQ_CUDA_PLUGIN_ABI);
        dlclose(h);
        return NULL;
    }
    if (p->backend_iface != EQ_BACKEND_IFACE_VERSION || p->size_table != sizeof(eq_cuda_plugin) ||
        p->size_err != sizeof(eq_err) || p->size_opts != sizeof(eq_cuda_opts) ||
        p->size_backend != sizeof(struct eq_backend) ||
        p->size_iface != sizeof(struct eq_backend_i) || p->size_comm_iface != sizeof(eq_comm_i) ||
        p->size_comm_seg != sizeof(eq_comm_seg) || p->size_quant != sizeof(struct eq_quant) ||
        p->size_quant_method != sizeof(eq_quant_method) ||
        p->size_quant_opts != sizeof(eq_quant_opts)) {
        s_append(why, why_len,
                 "%s: stale module (built against backend interface %d with a %zu-byte table "
                 "and a %zu-byte quantizer; this program has %d, %zu and %zu bytes): rebuild or "
                 "reinstall it",
                 path, p->backend_iface, p->size_iface, p->size_quant, EQ_BACKEND_IFACE_VERSION,
                 sizeof(struct eq_backend_i), sizeof(struct eq_quant));
        dlclose(h);
        return NULL;
    }
    p->set_logv(eq_logv);
    return p;
}

/* The directory of the running program (no trailing slash), or 0. */
static int s_exe_dir(char *dir, size_t cap)
{
    ssize_t n = readlink("/proc/self/exe", dir, cap - 1);
    if (n <= 0 || (size_t)n >= cap - 1) return 0;
    dir[n] = '\0';
    char *slash = strrchr(dir, '/');
    if (!slash) return 0;
    if (slash == dir) slash[1] = '\0'; /* "/" */
    else *slash = '\0';
    return 1;
}

/* The loaded module, loading it on first use: $EQ_CUDA_PLUGIN alone when
 * set; else next to the program in the build tree (libtool's .libs/ of its
 * directory, then of the directory above, for tests/ and bench/), then the
 * installed pkglibdir.  NULL with every path tried and why in `why`. */
static const eq_cuda_plugin *s_load(char *why, size_t why_len)
{
    pthread_mutex_lock(&s_lock);
    const eq_cuda_plugin *p = s_plugin;
    if (p) goto out;
    char tried[EQ_ERR_MSG_LEN] = "";
    const char *env = getenv("EQ_CUDA_PLUGIN");
    if (env && *env) {
        if ((p = s_try(env, tried, sizeof tried))) goto done;
        snprintf(why, why_len, "cannot load the CUDA module named by EQ_CUDA_PLUGIN: %s", tried);
        goto out;
    }
    char dir[PATH_MAX], path[PATH_MAX + 32];
    if (s_exe_dir(dir, sizeof dir)) {
        snprintf(path, sizeof path, "%s/.libs/" EQ_CUDA_PLUGIN_FILE, dir);
        if ((p = s_try(path, tried, sizeof tried))) goto done;
        snprintf(path, sizeof path, "%s/../.libs/" EQ_CUDA_PLUGIN_FILE, dir);
        if ((p = s_try(path, tried, sizeof tried))) goto done;
    }
    if ((p = s_try(EQ_PKGLIBDIR "/" EQ_CUDA_PLUGIN_FILE, tried, sizeof tried))) goto done;
    snprintf(why, why_len,
             "cannot load the CUDA module (set EQ_CUDA_PLUGIN=/path/" EQ_CUDA_PLUGIN_FILE
             "); tried %s",
             tried);
    goto out;
done:
    s_plugin = p;
out:
    pthread_mutex_unlock(&s_lock);
    return p;
}
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
    char buf[EQ_ERR_MSG_LEN];
    const eq_cuda_plugin *p = s_load(buf, sizeof buf);
    if (!p) {
        if (why && why_len) snprintf(why, why_len, "%s", buf);
        return 0;
    }
    return p->device_count(why, why_len);
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
        char why[EQ_ERR_MSG_LEN];
        const eq_cuda_plugin *p = s_load(why, sizeof why);
        if (!p) return eq_err_set(err, EQ_ERR_UNSUPPORTED, "backend 'cuda': %s", why);
        eq_cuda_opts co = {.device = o->device, .deterministic = o->deterministic};
        *out = p->backend_new(&co, err);
        return *out ? EQ_OK : (err && err->code != EQ_OK ? err->code : EQ_ERR_INTERNAL);
#else
        return eq_err_set(err, EQ_ERR_UNSUPPORTED,
                          "backend 'cuda': eq was built without CUDA (configure found no nvcc; "
                          "rebuild with --with-cuda=DIR)");
#endif
    }
    return eq_err_set(err, EQ_ERR_INVALID, "backend '%s': unknown (known: cpu, cuda)", o->name);
}

eq_status eq_comm_nccl_unique_id(uint8_t *id, size_t len, eq_err *err)
{
    if (!id || len != EQ_COMM_NCCL_ID_BYTES)
        return eq_err_set(err, EQ_ERR_INVALID, "nccl: the unique id needs a buffer of %d bytes (got %zu)",
                          EQ_COMM_NCCL_ID_BYTES, id ? len : (size_t)0);
#ifdef EQ_HAVE_CUDA
    char why[EQ_ERR_MSG_LEN];
    const eq_cuda_plugin *p = s_load(why, sizeof why);
    if (!p) return eq_err_set(err, EQ_ERR_UNSUPPORTED, "nccl: %s", why);
    if (!p->nccl_unique_id)
        return eq_err_set(err, EQ_ERR_UNSUPPORTED, "nccl: the CUDA module was built without NCCL (configure found "
                                                   "no nccl.h/libnccl beside CUDA)");
    return p->nccl_unique_id(id, len, err);
#else
    return eq_err_set(err, EQ_ERR_UNSUPPORTED, "nccl: eq was built without CUDA");
#endif
}

eq_status eq_backend_cuda_nccl_comm(eq_backend *be, const uint8_t *id, size_t id_len, int rank, int world,
                                    double timeout_s, const eq_comm_i **iface, void **ctx, eq_err *err)
{
#ifdef EQ_HAVE_CUDA
    char why[EQ_ERR_MSG_LEN];
    const eq_cuda_plugin *p = s_load(why, sizeof why);
    if (!p) return eq_err_set(err, EQ_ERR_UNSUPPORTED, "nccl: %s", why);
    if (!p->nccl_comm_new)
        return eq_err_set(err, EQ_ERR_UNSUPPORTED, "nccl: the CUDA module was built without NCCL (configure found "
                                                   "no nccl.h/libnccl beside CUDA)");
    return p->nccl_comm_new(be, id, id_len, rank, world, timeout_s, iface, ctx, err);
#else
    (void)be, (void)id, (void)id_len, (void)rank, (void)world, (void)timeout_s, (void)iface, (void)ctx;
    return eq_err_set(err, EQ_ERR_UNSUPPORTED, "nccl: eq was built without CUDA");
#endif
}

eq_status eq_backend_open(const char *name, int device, eq_backend **out, eq_err *err)
{
    eq_backend_opts o = {.name = name, .device = device, .deterministic = 0};
    return eq_backend_open_opts(&o, out, err);
}
