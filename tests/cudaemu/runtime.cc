/*
 * tests/cudaemu/runtime.cc -- a CPU emulation of the CUDA runtime subset
 * and of the execution model that trainer/cuda/ uses (doc/gpu.md, "CPU
 * emulation"), so the CUDA backend's own kernels and host logic run in
 * every `make check` against the CPU backend.
 *
 * What it does:
 *  - one device (EQ_CUDA_EMU_DEVICES=0: none, cudaGetDeviceCount fails
 *    with cudaErrorNoDevice as on a host without a GPU);
 *  - device memory is tracked host memory (posix_memalign, filled with
 *    0xff bytes, NaN as float, since cudaMalloc does not clear it); pinned
 *    host memory is tracked too and is its own device pointer (UVA);
 *  - every copy and memset checks its ranges as compute-sanitizer would:
 *    a device range outside any allocation, a host range inside device
 *    memory, overlapping copies and cudaFree/cudaFreeHost of an unknown
 *    pointer are errors (cudaErrorInvalidValue, and a line on stderr);
 *  - kernel launches check their configuration as the runtime does (block
 *    at most 1024 threads and 1024 x 1024 x 64, grid.x < 2^31, grid.y/z at
 *    most 65535, nothing zero: cudaErrorInvalidConfiguration; a dead
 *    stream: cudaErrorInvalidResourceHandle), then check that every pointer
 *    argument is NULL or points into device or pinned memory (else an
 *    illegal-address fault), then run the grid: blocks in order on the
 *    calling thread, each CUDA thread a coroutine (own stack, switched by a
 *    few instructions of assembly on x86-64, ucontext elsewhere) running to
 *    __syncthreads() or its return, the threads of a block resumed in a
 *    seeded random order each phase (EQ_CUDA_EMU_SEED), so a missing
 *    barrier changes results; a divergent barrier (some threads returned while
 *    others wait) is a launch failure; __shared__ memory is refilled with
 *    0xff bytes before every block, so a read of shared memory no thread
 *    wrote shows;
 *  - work on a created stream is queued and runs when the host waits for
 *    it (cudaStreamSynchronize, cudaEventSynchronize on a later record,
 *    cudaDeviceSynchronize, cudaFree/cudaFreeHost) or when a stream that
 *    waits on one of its events gets there, in issue order: one valid
 *    schedule of the real streams, and the latest one, so host code that
 *    reads a kernel's result in pinned memory before waiting, or rewrites
 *    a pinned buffer a queued copy still reads, sees the difference
 *    (EQ_CUDA_EMU_DEFER=0: everything at call time).  A pageable host side
 *    of a copy is read or written at the call, as the runtime stages it;
 *    the legacy default stream runs at call time after the blocking
 *    streams; the emulated cuDNN/cuBLAS run at call time after all queued
 *    work (eq_cudaemu_device_enter);
 *  - faults (illegal address, launch failure) are sticky, as a real CUDA
 *    context's: every later call returns them; the reason goes to stderr
 *    (EQ_CUDA_EMU_ABORT=1 aborts there instead, for a debugger);
 *  - EQ_CUDA_EMU_PROTECT=1 makes device memory inaccessible to the host
 *    outside emulated device work (mprotect), so host code that
 *    dereferences a device pointer crashes;
 *  - host waits are counted (eq_cudaemu_waits_get; EQ_CUDA_EMU_WAITS=FILE
 *    appends the counts to FILE at exit): every call that blocks the host
 *    until device work is done on a GPU (cudaStreamSynchronize,
 *    cudaEventSynchronize, cudaDeviceSynchronize, cudaMemcpy other than
 *    device to device, cudaMemcpyAsync into pageable host memory,
 *    cudaFree, cudaFreeHost), how many of them found queued work to wait
 *    for ("blocked") and how many of those left a stream they ran work of
 *    with nothing queued ("drained": that stream's GPU work stops until
 *    the host issues more; a wait for an event with work queued behind it
 *    is blocked but not drained).
 * What it cannot show: concurrency between threads, blocks or streams,
 * the memory model, warp-level behaviour, tensor cores, timing.
 */
#include "cuda_emu_kernel.h"
#include "cudaemu.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <mutex>
#include <set>
#include <vector>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h> /* the fibers' stacks, made known to valgrind */
#define S_VALGRIND 1
#endif
#endif

#if !defined(__x86_64__) || defined(EQ_CUDA_EMU_UCONTEXT)
#define S_UCONTEXT 1
#include <ucontext.h>
#else
#define S_UCONTEXT 0
#endif

#define S_HIDDEN __attribute__((visibility("hidden")))

/* ---- state --------------------------------------------------------------- */

/* A stream: its queued work (EQ_CUDA_EMU_DEFER, the default) runs when the
 * host waits for it (or for something after it), in issue order; issued
 * and executed count its operations, so an event is (stream, issued at
 * the record). */
struct CUstream_st {
    unsigned flags;
    uint64_t id;
    std::deque<std::function<void()>> q;
    unsigned long long issued, executed;
};
struct CUevent_st {
    unsigned flags;
    uint64_t stream; /* id of the stream of the last record; 0: none */
    unsigned long long target;
};

namespace {

enum { A_DEVICE = 1, A_PINNED = 2 };

struct Alloc {
    size_t size;
    int kind;
    size_t mapped; /* PROTECT mode: bytes of the mmap */
};

struct State {
    std::recursive_mutex mu;
    std::map<uintptr_t, Alloc> allocs;
    std::set<const void *> events;
    std::map<uint64_t, struct CUstream_st *> streams; /* live streams by id */
    uint64_t next_stream = 1;
    int defer = 1;
    size_t device_bytes = 0;
    cudaError_t sticky = cudaSuccess;
    int ndev = -1;
    int abort_on_fault = 0;
    int protect = 0;
    int enter_depth = 0;
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    unsigned long long launches = 0;
    eq_cudaemu_waits waits = {};
    std::string waits_file; /* EQ_CUDA_EMU_WAITS */
};

State &st()
{
    static State *s = new State; /* never destroyed: usable from atexit */
    return *s;
}

thread_local cudaError_t t_last = cudaSuccess;
thread_local int t_device = 0;

struct Lock {
    std::lock_guard<std::recursive_mutex> g;
    Lock() : g(st().mu) {}
};

void s_waits_at_exit()
{
    State &s = st();
    FILE *f = fopen(s.waits_file.c_str(), "a");
    if (!f) {
        fprintf(stderr, "cudaemu: EQ_CUDA_EMU_WAITS=%s: %s\n", s.waits_file.c_str(), strerror(errno));
        return;
    }
    const eq_cudaemu_waits &w = s.waits;
    fprintf(f,
            "cudaemu_waits pid=%ld calls=%llu blocked=%llu drained=%llu stream_sync=%llu event_sync=%llu "
            "device_sync=%llu memcpy=%llu memcpy_async=%llu free=%llu defer=%d\n",
            (long)getpid(), w.calls, w.blocked, w.drained, w.stream_sync, w.event_sync, w.device_sync,
            w.memcpy, w.memcpy_async, w.free, s.defer);
    fclose(f);
}

void s_init_env()
{
    State &s = st();
    if (s.ndev >= 0) return;
    const char *e = getenv("EQ_CUDA_EMU_DEVICES");
    s.ndev = e && *e ? atoi(e) : 1;
    if (s.ndev < 0) s.ndev = 0;
    e = getenv("EQ_CUDA_EMU_ABORT");
    s.abort_on_fault = e && *e && strcmp(e, "0") != 0;
    e = getenv("EQ_CUDA_EMU_PROTECT");
    s.protect = e && *e && strcmp(e, "0") != 0;
    e = getenv("EQ_CUDA_EMU_DEFER");
    s.defer = !(e && *e && strcmp(e, "0") == 0);
    e = getenv("EQ_CUDA_EMU_SEED");
    if (e && *e) s.seed = strtoull(e, NULL, 0);
    e = getenv("EQ_CUDA_EMU_WAITS");
    if (e && *e) {
        s.waits_file = e;
        atexit(s_waits_at_exit);
    }
}

cudaError_t s_ret(cudaError_t e)
{
    if (e != cudaSuccess) t_last = e;
    return e;
}

/* Start of every API call: the sticky fault, if any. */
#define S_ENTER()                                    \
    Lock lock_;                                      \
    s_init_env();                                    \
    if (st().sticky != cudaSuccess) return s_ret(st().sticky)

void s_vfault(cudaError_t code, const char *fmt, va_list ap)
{
    State &s = st();
    fprintf(stderr, "cudaemu: device fault (%s): ", cudaGetErrorName(code));
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    fflush(stderr);
    if (s.abort_on_fault) abort();
    if (s.sticky == cudaSuccess) s.sticky = code;
    t_last = s.sticky;
}

void s_fault(cudaError_t code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void s_fault(cudaError_t code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s_vfault(code, fmt, ap);
    va_end(ap);
}

/* An API misuse the real runtime answers with an error code (not sticky):
 * say what on stderr, since the code alone rarely names the culprit. */
cudaError_t s_misuse(cudaError_t code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
cudaError_t s_misuse(cudaError_t code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cudaemu: %s: ", cudaGetErrorName(code));
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    fflush(stderr);
    va_end(ap);
    if (st().abort_on_fault) abort();
    return s_ret(code);
}

/* The allocation holding [p, p + n) (n = 0: p inside or one past the end),
 * or NULL. */
const Alloc *s_find(const void *p, size_t n, uintptr_t *base)
{
    State &s = st();
    uintptr_t a = (uintptr_t)p;
    auto it = s.allocs.upper_bound(a);
    if (it == s.allocs.begin()) return NULL;
    --it;
    uintptr_t b = it->first;
    const Alloc &al = it->second;
    if (a < b || a - b > al.size || n > al.size - (a - b)) return NULL;
    if (base) *base = b;
    return &al;
}

/* Does [p, p + n) overlap any device allocation? */
bool s_touches_device(const void *p, size_t n)
{
    State &s = st();
    uintptr_t a = (uintptr_t)p, e = a + (n ? n : 1);
    auto it = s.allocs.lower_bound(e);
    while (it != s.allocs.begin()) {
        --it;
        if (it->first + it->second.size <= a) break;
        if (it->second.kind == A_DEVICE) return true;
    }
    return false;
}

/* PROTECT mode: device memory readable only inside device work. */
void s_protect_all(int prot)
{
    State &s = st();
    for (auto &kv : s.allocs)
        if (kv.second.kind == A_DEVICE && kv.second.mapped)
            mprotect((void *)kv.first, kv.second.mapped, prot);
}

struct Device {
    Device()
    {
        State &s = st();
        if (s.protect && s.enter_depth++ == 0) s_protect_all(PROT_READ | PROT_WRITE);
    }
    ~Device()
    {
        State &s = st();
        if (s.protect && --s.enter_depth == 0) s_protect_all(PROT_NONE);
    }
};

bool s_legacy(cudaStream_t sm)
{
    return sm == NULL || sm == cudaStreamLegacy || sm == cudaStreamPerThread;
}

bool s_stream_ok(cudaStream_t sm)
{
    /* by address: a destroyed stream's memory is freed, so it is not read */
    if (s_legacy(sm)) return true;
    for (auto &kv : st().streams)
        if (kv.second == sm) return true;
    return false;
}

/* Run stream `id`'s queued work up to its operation `target` (all: ~0).
 * Work after a fault is dropped, as a faulted context runs nothing. */
void s_drain_until(uint64_t id, unsigned long long target)
{
    auto it = st().streams.find(id);
    if (it == st().streams.end()) return; /* destroyed: its work ran then */
    CUstream_st *sm = it->second;
    while (sm->executed < target && !sm->q.empty()) {
        std::function<void()> fn = std::move(sm->q.front());
        sm->q.pop_front();
        if (st().sticky == cudaSuccess) fn();
        sm->executed++;
    }
}

void s_drain(cudaStream_t sm)
{
    if (!s_legacy(sm)) s_drain_until(sm->id, ~0ull);
}

/* every stream (device-wide synchronisation), or the blocking ones (what
 * the legacy default stream waits for) */
void s_drain_all(bool blocking_only)
{
    std::vector<uint64_t> ids;
    for (auto &kv : st().streams)
        if (!blocking_only || !(kv.second->flags & cudaStreamNonBlocking)) ids.push_back(kv.first);
    for (uint64_t id : ids) s_drain_until(id, ~0ull);
}

/* Counts one host wait (see the top): construct before the call's
 * draining, with the counter of its kind.  Blocked: the call ran queued
 * work; drained: a stream it ran work of has nothing queued after it (that
 * engine idles until the host issues more). */
struct Wait {
    std::map<uint64_t, unsigned long long> before; /* stream id: executed */
    Wait(unsigned long long eq_cudaemu_waits::*kind)
    {
        for (auto &kv : st().streams) before[kv.first] = kv.second->executed;
        eq_cudaemu_waits &w = st().waits;
        w.calls++;
        w.*kind += 1;
    }
    ~Wait()
    {
        bool ran = false, idle = false;
        for (auto &kv : before) {
            auto it = st().streams.find(kv.first);
            if (it == st().streams.end() || it->second->executed == kv.second) continue;
            ran = true;
            if (it->second->q.empty()) idle = true;
        }
        eq_cudaemu_waits &w = st().waits;
        w.blocked += ran;
        w.drained += idle;
    }
};

/* Issue fn on sm: queued on a created stream when deferring; on the
 * legacy default stream (after the blocking streams' work) or without
 * deferral, run now. */
void s_submit(cudaStream_t sm, std::function<void()> fn)
{
    if (!st().defer || s_legacy(sm)) {
        if (s_legacy(sm)) s_drain_all(true);
        if (!s_legacy(sm)) s_drain(sm);
        if (st().sticky == cudaSuccess) fn();
        return;
    }
    sm->q.push_back(std::move(fn));
    sm->issued++;
}

} // namespace

/* ---- errors ----------------------------------------------------------------- */

extern "C" const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
#define S_N(x) \
    case x:    \
        return #x;
        S_N(cudaSuccess)
        S_N(cudaErrorInvalidValue)
        S_N(cudaErrorMemoryAllocation)
        S_N(cudaErrorInvalidConfiguration)
        S_N(cudaErrorInvalidHostPointer)
        S_N(cudaErrorInvalidDevicePointer)
        S_N(cudaErrorInvalidMemcpyDirection)
        S_N(cudaErrorInsufficientDriver)
        S_N(cudaErrorNoDevice)
        S_N(cudaErrorInvalidDevice)
        S_N(cudaErrorInvalidResourceHandle)
        S_N(cudaErrorNotReady)
        S_N(cudaErrorIllegalAddress)
        S_N(cudaErrorLaunchOutOfResources)
        S_N(cudaErrorLaunchFailure)
        S_N(cudaErrorUnknown)
#undef S_N
    }
    return "cudaErrorUnknown";
}

extern "C" const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidHostPointer: return "invalid host pointer";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInsufficientDriver:
        return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorUnknown: return "unknown error";
    }
    return "unrecognized error code";
}

extern "C" cudaError_t cudaGetLastError(void)
{
    Lock lock_;
    if (st().sticky != cudaSuccess) return st().sticky;
    cudaError_t e = t_last;
    t_last = cudaSuccess;
    return e;
}

extern "C" cudaError_t cudaPeekAtLastError(void)
{
    Lock lock_;
    return st().sticky != cudaSuccess ? st().sticky : t_last;
}

/* ---- device ------------------------------------------------------------------ */

extern "C" cudaError_t cudaGetDeviceCount(int *count)
{
    Lock lock_;
    s_init_env();
    if (!count) return s_ret(cudaErrorInvalidValue);
    if (st().ndev == 0) return s_ret(cudaErrorNoDevice); /* *count untouched */
    *count = st().ndev;
    return cudaSuccess;
}

extern "C" cudaError_t cudaSetDevice(int device)
{
    S_ENTER();
    if (st().ndev == 0) return s_ret(cudaErrorNoDevice);
    if (device < 0 || device >= st().ndev) return s_ret(cudaErrorInvalidDevice);
    t_device = device;
    return cudaSuccess;
}

extern "C" cudaError_t cudaGetDevice(int *device)
{
    S_ENTER();
    if (!device) return s_ret(cudaErrorInvalidValue);
    *device = t_device;
    return cudaSuccess;
}

extern "C" cudaError_t cudaDeviceSynchronize(void)
{
    S_ENTER();
    Wait w_(&eq_cudaemu_waits::device_sync);
    s_drain_all(false);
    return s_ret(st().sticky);
}

#define S_TOTAL ((size_t)80 << 30) /* an H100's 80 GiB */

extern "C" cudaError_t cudaMemGetInfo(size_t *fr, size_t *total)
{
    S_ENTER();
    if (!fr || !total) return s_ret(cudaErrorInvalidValue);
    *total = S_TOTAL;
    *fr = st().device_bytes < S_TOTAL ? S_TOTAL - st().device_bytes : 0;
    return cudaSuccess;
}

extern "C" cudaError_t cudaDriverGetVersion(int *v)
{
    if (!v) return s_ret(cudaErrorInvalidValue);
    *v = CUDART_VERSION;
    return cudaSuccess;
}

extern "C" cudaError_t cudaRuntimeGetVersion(int *v)
{
    if (!v) return s_ret(cudaErrorInvalidValue);
    *v = CUDART_VERSION;
    return cudaSuccess;
}

/* ---- memory -------------------------------------------------------------------- */

extern "C" cudaError_t cudaMalloc(void **p, size_t size)
{
    S_ENTER();
    if (!p) return s_ret(cudaErrorInvalidValue);
    if (size == 0) {
        *p = NULL;
        return cudaSuccess;
    }
    if (size > S_TOTAL - (st().device_bytes < S_TOTAL ? st().device_bytes : S_TOTAL))
        return s_ret(cudaErrorMemoryAllocation);
    void *m = NULL;
    size_t mapped = 0;
    if (st().protect) {
        long pg = sysconf(_SC_PAGESIZE);
        mapped = (size + (size_t)pg - 1) / (size_t)pg * (size_t)pg;
        m = mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) return s_ret(cudaErrorMemoryAllocation);
    } else if (posix_memalign(&m, 256, size) != 0) {
        return s_ret(cudaErrorMemoryAllocation);
    }
    memset(m, 0xff, size); /* not cleared on a GPU either: NaN as float */
    if (st().protect && st().enter_depth == 0) mprotect(m, mapped, PROT_NONE);
    st().allocs[(uintptr_t)m] = Alloc{size, A_DEVICE, mapped};
    st().device_bytes += size;
    *p = m;
    return cudaSuccess;
}

extern "C" cudaError_t cudaFree(void *p)
{
    S_ENTER();
    Wait w_(&eq_cudaemu_waits::free);
    s_drain_all(false); /* cudaFree synchronises the device */
    if (st().sticky != cudaSuccess) return s_ret(st().sticky);
    if (!p) return cudaSuccess;
    auto it = st().allocs.find((uintptr_t)p);
    if (it == st().allocs.end() || it->second.kind != A_DEVICE)
        return s_misuse(cudaErrorInvalidValue, "cudaFree(%p): not the start of a cudaMalloc block%s",
                        p, it != st().allocs.end() ? " (pinned host memory: cudaFreeHost)" : "");
    st().device_bytes -= it->second.size;
    if (it->second.mapped)
        munmap(p, it->second.mapped);
    else
        free(p);
    st().allocs.erase(it);
    return cudaSuccess;
}

extern "C" cudaError_t cudaHostAlloc(void **p, size_t size, unsigned int flags)
{
    S_ENTER();
    if (!p || (flags & ~0x0fu)) return s_ret(cudaErrorInvalidValue);
    void *m = NULL;
    if (posix_memalign(&m, 4096, size ? size : 1) != 0) return s_ret(cudaErrorMemoryAllocation);
    st().allocs[(uintptr_t)m] = Alloc{size, A_PINNED, 0};
    *p = m;
    return cudaSuccess;
}

extern "C" cudaError_t cudaMallocHost(void **p, size_t size)
{
    return cudaHostAlloc(p, size, cudaHostAllocDefault);
}

extern "C" cudaError_t cudaFreeHost(void *p)
{
    S_ENTER();
    Wait w_(&eq_cudaemu_waits::free);
    s_drain_all(false); /* as cudaFree: queued copies may still read it */
    if (st().sticky != cudaSuccess) return s_ret(st().sticky);
    if (!p) return cudaSuccess;
    auto it = st().allocs.find((uintptr_t)p);
    if (it == st().allocs.end() || it->second.kind != A_PINNED)
        return s_misuse(cudaErrorInvalidValue, "cudaFreeHost(%p): not the start of a cudaHostAlloc block",
                        p);
    free(p);
    st().allocs.erase(it);
    return cudaSuccess;
}

extern "C" cudaError_t cudaHostGetDevicePointer(void **pd, void *ph, unsigned int flags)
{
    S_ENTER();
    const Alloc *a = pd && flags == 0 ? s_find(ph, 0, NULL) : NULL;
    if (!a || a->kind != A_PINNED)
        return s_misuse(cudaErrorInvalidValue, "cudaHostGetDevicePointer(%p): not pinned host memory",
                        ph);
    *pd = ph; /* UVA: the same address */
    return cudaSuccess;
}

namespace {

const char *s_kind_name(cudaMemcpyKind k)
{
    static const char *n[] = {"HostToHost", "HostToDevice", "DeviceToHost", "DeviceToDevice",
                              "Default"};
    return (unsigned)k <= 4 ? n[k] : "?";
}

/* A range the device side of a copy reads or writes: inside one device or
 * pinned allocation. */
bool s_dev_range(const void *p, size_t n)
{
    return s_find(p, n, NULL) != NULL;
}

cudaError_t s_copy(const char *fn, void *dst, const void *src, size_t n, cudaMemcpyKind kind,
                   cudaStream_t sm)
{
    if (!s_stream_ok(sm))
        return s_misuse(cudaErrorInvalidResourceHandle, "%s: stream %p is not a live stream", fn,
                        (void *)sm);
    if ((unsigned)kind > 4)
        return s_misuse(cudaErrorInvalidMemcpyDirection, "%s: kind %d", fn, (int)kind);
    if (n == 0) return cudaSuccess;
    if (!dst || !src) return s_misuse(cudaErrorInvalidValue, "%s: NULL pointer", fn);
    if (kind == cudaMemcpyDefault) { /* UVA: inferred from the pointers */
        bool sd = s_find(src, n, NULL) != NULL, dd = s_find(dst, n, NULL) != NULL;
        kind = sd ? (dd ? cudaMemcpyDeviceToDevice : cudaMemcpyDeviceToHost)
                  : (dd ? cudaMemcpyHostToDevice : cudaMemcpyHostToHost);
    }
    bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    if (src_dev ? !s_dev_range(src, n) : s_touches_device(src, n))
        return s_misuse(cudaErrorInvalidValue, "%s(%s, %zu bytes): source %p is %s", fn,
                        s_kind_name(kind), n, src,
                        src_dev ? "not (wholly) inside a device allocation" : "device memory");
    if (dst_dev ? !s_dev_range(dst, n) : s_touches_device(dst, n))
        return s_misuse(cudaErrorInvalidValue, "%s(%s, %zu bytes): destination %p is %s", fn,
                        s_kind_name(kind), n, dst,
                        dst_dev ? "not (wholly) inside a device allocation" : "device memory");
    uintptr_t d = (uintptr_t)dst, s = (uintptr_t)src;
    if (d < s + n && s < d + n)
        return s_misuse(cudaErrorInvalidValue, "%s(%s, %zu bytes): %p and %p overlap", fn,
                        s_kind_name(kind), n, dst, src);
    /* A pageable host side is copied at the call (the runtime stages a
     * source before it returns; a pageable destination is written before
     * it returns, after the stream's earlier work); pinned memory and
     * device memory are read and written when the stream runs the copy. */
    bool src_pageable = !src_dev && !s_find(src, n, NULL);
    bool dst_pageable = !dst_dev && !s_find(dst, n, NULL);
    if (dst_pageable) {
        /* the host waits for the copy (cudaMemcpy counts its own) */
        std::unique_ptr<Wait> w_(sm ? new Wait(&eq_cudaemu_waits::memcpy_async) : nullptr);
        if (!s_legacy(sm)) s_drain(sm);
        else s_drain_all(true);
        if (st().sticky != cudaSuccess) return s_ret(st().sticky);
        Device dv;
        memcpy(dst, src, n);
        return cudaSuccess;
    }
    if (src_pageable) {
        auto buf = std::make_shared<std::vector<unsigned char>>((const unsigned char *)src,
                                                                (const unsigned char *)src + n);
        s_submit(sm, [dst, buf, n]() {
            Device dv;
            memcpy(dst, buf->data(), n);
        });
        return cudaSuccess;
    }
    s_submit(sm, [dst, src, n]() {
        Device dv;
        memcpy(dst, src, n);
    });
    return cudaSuccess;
}

cudaError_t s_set(const char *fn, void *p, int v, size_t n, cudaStream_t sm)
{
    if (!s_stream_ok(sm))
        return s_misuse(cudaErrorInvalidResourceHandle, "%s: stream %p is not a live stream", fn,
                        (void *)sm);
    if (n == 0) return cudaSuccess;
    if (!s_dev_range(p, n))
        return s_misuse(cudaErrorInvalidValue, "%s(%p, %zu bytes): not (wholly) inside a device allocation",
                        fn, p, n);
    s_submit(sm, [p, v, n]() {
        Device dv;
        memset(p, v, n);
    });
    return cudaSuccess;
}

} // namespace

extern "C" cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind)
{
    S_ENTER();
    /* synchronous for the host unless device to device (the legacy stream
     * runs it after the blocking streams' work) */
    bool d2d = kind == cudaMemcpyDeviceToDevice ||
               (kind == cudaMemcpyDefault && s_find(src, n, NULL) && s_find(dst, n, NULL));
    if (n && dst && src && !d2d) {
        Wait w_(&eq_cudaemu_waits::memcpy);
        return s_copy("cudaMemcpy", dst, src, n, kind, NULL);
    }
    return s_copy("cudaMemcpy", dst, src, n, kind, NULL);
}

extern "C" cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n,
                                       enum cudaMemcpyKind kind, cudaStream_t sm)
{
    S_ENTER();
    return s_copy("cudaMemcpyAsync", dst, src, n, kind, sm);
}

extern "C" cudaError_t cudaMemset(void *p, int v, size_t n)
{
    S_ENTER();
    return s_set("cudaMemset", p, v, n, NULL);
}

extern "C" cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t sm)
{
    S_ENTER();
    return s_set("cudaMemsetAsync", p, v, n, sm);
}

/* ---- streams and events ------------------------------------------------------------ */

extern "C" cudaError_t cudaStreamCreateWithFlags(cudaStream_t *p, unsigned int flags)
{
    S_ENTER();
    if (!p || (flags & ~1u)) return s_ret(cudaErrorInvalidValue);
    cudaStream_t sm = new CUstream_st{flags, st().next_stream++, {}, 0, 0};
    st().streams[sm->id] = sm;
    *p = sm;
    return cudaSuccess;
}

extern "C" cudaError_t cudaStreamCreate(cudaStream_t *p)
{
    return cudaStreamCreateWithFlags(p, cudaStreamDefault);
}

extern "C" cudaError_t cudaStreamDestroy(cudaStream_t sm)
{
    S_ENTER();
    if (s_legacy(sm) || !s_stream_ok(sm))
        return s_misuse(cudaErrorInvalidResourceHandle, "cudaStreamDestroy(%p): not a live stream",
                        (void *)sm);
    s_drain(sm); /* queued work still completes */
    st().streams.erase(sm->id);
    sm->id = 0;
    delete sm;
    return cudaSuccess;
}

extern "C" cudaError_t cudaStreamSynchronize(cudaStream_t sm)
{
    S_ENTER();
    if (!s_stream_ok(sm))
        return s_misuse(cudaErrorInvalidResourceHandle, "cudaStreamSynchronize(%p): not a live stream",
                        (void *)sm);
    Wait w_(&eq_cudaemu_waits::stream_sync);
    if (s_legacy(sm))
        s_drain_all(true);
    else
        s_drain(sm);
    return s_ret(st().sticky);
}

extern "C" cudaError_t cudaStreamQuery(cudaStream_t sm)
{
    S_ENTER();
    if (!s_stream_ok(sm))
        return s_misuse(cudaErrorInvalidResourceHandle, "cudaStreamQuery(%p): not a live stream",
                        (void *)sm);
    return !s_legacy(sm) && !sm->q.empty() ? cudaErrorNotReady : cudaSuccess;
}

extern "C" cudaError_t cudaEventCreateWithFlags(cudaEvent_t *p, unsigned int flags)
{
    S_ENTER();
    if (!p || (flags & ~0x0fu)) return s_ret(cudaErrorInvalidValue);
    cudaEvent_t ev = new CUevent_st{flags, 0, 0};
    st().events.insert(ev);
    *p = ev;
    return cudaSuccess;
}

extern "C" cudaError_t cudaEventCreate(cudaEvent_t *p)
{
    return cudaEventCreateWithFlags(p, cudaEventDefault);
}

#define S_EVENT(fn, ev)                                                                       \
    if (!st().events.count(ev))                                                               \
    return s_misuse(cudaErrorInvalidResourceHandle, "%s(%p): not a live event", fn, (void *)(ev))

extern "C" cudaError_t cudaEventDestroy(cudaEvent_t ev)
{
    S_ENTER();
    S_EVENT("cudaEventDestroy", ev);
    st().events.erase(ev); /* waits already issued captured the record */
    delete ev;
    return cudaSuccess;
}

extern "C" cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t sm)
{
    S_ENTER();
    S_EVENT("cudaEventRecord", ev);
    if (!s_stream_ok(sm))
        return s_misuse(cudaErrorInvalidResourceHandle, "cudaEventRecord: stream %p is not a live stream",
                        (void *)sm);
    if (s_legacy(sm) || !st().defer) {
        if (s_legacy(sm)) s_drain_all(true);
        ev->stream = 0; /* complete */
    } else {
        ev->stream = sm->id;
        ev->target = sm->issued;
    }
    return cudaSuccess;
}

extern "C" cudaError_t cudaEventSynchronize(cudaEvent_t ev)
{
    S_ENTER();
    S_EVENT("cudaEventSynchronize", ev);
    Wait w_(&eq_cudaemu_waits::event_sync);
    if (ev->stream) s_drain_until(ev->stream, ev->target);
    return s_ret(st().sticky);
}

extern "C" cudaError_t cudaEventQuery(cudaEvent_t ev)
{
    S_ENTER();
    S_EVENT("cudaEventQuery", ev);
    if (!ev->stream) return cudaSuccess;
    auto it = st().streams.find(ev->stream);
    return it == st().streams.end() || it->second->executed >= ev->target ? cudaSuccess
                                                                          : cudaErrorNotReady;
}

extern "C" cudaError_t cudaStreamWaitEvent(cudaStream_t sm, cudaEvent_t ev, unsigned int flags)
{
    S_ENTER();
    S_EVENT("cudaStreamWaitEvent", ev);
    if (!s_stream_ok(sm))
        return s_misuse(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent: stream %p is not a live stream",
                        (void *)sm);
    if (flags & ~1u) return s_ret(cudaErrorInvalidValue);
    if (!ev->stream) return cudaSuccess;
    uint64_t id = ev->stream;
    unsigned long long target = ev->target;
    /* when sm reaches this point, the recorded work of the other stream
     * runs first (the event may be destroyed meanwhile: the record is
     * captured here, as CUDA does) */
    s_submit(sm, [id, target]() { s_drain_until(id, target); });
    return cudaSuccess;
}

/* ---- for the other emulated libraries (cudaemu.h) ---------------------------------- */

extern "C" int eq_cudaemu_device_range(const void *p, size_t n, const char *who)
{
    Lock lock_;
    s_init_env();
    if (n == 0 || s_find(p, n, NULL)) return 0;
    s_fault(cudaErrorIllegalAddress, "%s: [%p, +%zu bytes) is not inside a device allocation",
            who ? who : "?", p, n);
    return -1;
}

extern "C" int eq_cudaemu_stream_valid(struct CUstream_st *sm)
{
    Lock lock_;
    return s_stream_ok(sm) ? 0 : -1;
}

extern "C" void eq_cudaemu_fault(const char *fmt, ...)
{
    Lock lock_;
    s_init_env();
    va_list ap;
    va_start(ap, fmt);
    s_vfault(cudaErrorIllegalAddress, fmt, ap);
    va_end(ap);
}

extern "C" void eq_cudaemu_device_enter(void)
{
    st().mu.lock();
    s_init_env();
    State &s = st();
    s_drain_all(false); /* the library's work runs now: after everything issued */
    if (s.protect && s.enter_depth++ == 0) s_protect_all(PROT_READ | PROT_WRITE);
}

extern "C" void eq_cudaemu_device_leave(void)
{
    State &s = st();
    if (s.protect && --s.enter_depth == 0) s_protect_all(PROT_NONE);
    s.mu.unlock();
}

extern "C" unsigned long long eq_cudaemu_launches(void)
{
    Lock lock_;
    return st().launches;
}

extern "C" void eq_cudaemu_waits_get(eq_cudaemu_waits *w)
{
    Lock lock_;
    s_init_env();
    *w = st().waits;
}

/* ---- kernel execution ----------------------------------------------------------------- */

extern "C" {
uint3 eq_emu_threadIdx, eq_emu_blockIdx;
dim3 eq_emu_blockDim, eq_emu_gridDim;
const char eq_emu_notptr = 0;
}

namespace {

enum { F_RUN, F_BARRIER, F_DONE };

struct Fiber {
    void *sp;
#if S_UCONTEXT
    ucontext_t uc;
#endif
    int state;
    uint3 idx;
};

#define S_STACK ((size_t)64 << 10)
#define S_MAXT 1024

struct Sched {
    Fiber fib[S_MAXT];
    char *stacks = NULL; /* S_MAXT stacks of S_STACK, each below a guard page */
    size_t pg = 0;
    void *main_sp = NULL;
#if S_UCONTEXT
    ucontext_t main_uc;
#endif
    Fiber *cur = NULL;
    void (*body)(void *) = NULL;
    void *ctx = NULL;
};

Sched g_s;

char *s_stack(int i)
{
    return g_s.stacks + (size_t)i * (S_STACK + g_s.pg) + g_s.pg;
}

} // namespace

extern "C" S_HIDDEN __attribute__((used, noreturn)) void eq_emu_fiber_main(Fiber *f);

#if !S_UCONTEXT
/* eq_emu_switch(save, to): push the callee-saved registers, store the stack
 * pointer in *save, load `to`, pop and return into the other context.  A
 * new fiber's stack holds six register slots (r12 = its Fiber) and the
 * address of eq_emu_tramp. */
extern "C" S_HIDDEN void eq_emu_switch(void **save, void *to);
extern "C" S_HIDDEN void eq_emu_tramp(void);
__asm__(".pushsection .text\n"
        ".globl eq_emu_switch\n"
        ".hidden eq_emu_switch\n"
        ".type eq_emu_switch,@function\n"
        "eq_emu_switch:\n"
        "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
        "  movq %rsp, (%rdi)\n"
        "  movq %rsi, %rsp\n"
        "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
        "  ret\n"
        ".size eq_emu_switch, .-eq_emu_switch\n"
        ".globl eq_emu_tramp\n"
        ".hidden eq_emu_tramp\n"
        ".type eq_emu_tramp,@function\n"
        "eq_emu_tramp:\n"
        "  movq %r12, %rdi\n"
        "  call eq_emu_fiber_main\n"
        "  ud2\n"
        ".size eq_emu_tramp, .-eq_emu_tramp\n"
        ".popsection\n");

static void s_fiber_init(Fiber *f, int i)
{
    uintptr_t top = ((uintptr_t)(s_stack(i) + S_STACK)) & ~(uintptr_t)15;
    void **sp = (void **)top - 7;
    for (int k = 0; k < 6; k++) sp[k] = NULL;
    sp[3] = f;                      /* r12 (popped 4th: r15 r14 r13 r12) */
    sp[6] = (void *)&eq_emu_tramp; /* ret */
    f->sp = sp;
}

static void s_resume(Fiber *f)
{
    eq_emu_switch(&g_s.main_sp, f->sp);
}

static void s_yield(Fiber *f)
{
    eq_emu_switch(&f->sp, g_s.main_sp);
}
#else
static void s_uc_entry(unsigned lo, unsigned hi)
{
    eq_emu_fiber_main((Fiber *)(((uintptr_t)hi << 32) | lo));
}

static void s_fiber_init(Fiber *f, int i)
{
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = s_stack(i);
    f->uc.uc_stack.ss_size = S_STACK;
    f->uc.uc_link = NULL;
    uintptr_t v = (uintptr_t)f;
    makecontext(&f->uc, (void (*)(void))s_uc_entry, 2, (unsigned)(v & 0xffffffffu),
                (unsigned)(v >> 32));
}

static void s_resume(Fiber *f)
{
    swapcontext(&g_s.main_uc, &f->uc);
}

static void s_yield(Fiber *f)
{
    swapcontext(&f->uc, &g_s.main_uc);
}
#endif

extern "C" void eq_emu_fiber_main(Fiber *f)
{
    g_s.body(g_s.ctx);
    f->state = F_DONE;
    s_yield(f);
    abort(); /* never resumed */
}

extern "C" void eq_emu_syncthreads(void)
{
    Fiber *f = g_s.cur;
    if (!f) {
        fprintf(stderr, "cudaemu: __syncthreads() outside a kernel\n");
        abort();
    }
    f->state = F_BARRIER;
    s_yield(f);
}

namespace {

uint64_t s_next(uint64_t *x)
{
    /* splitmix64 */
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

bool s_stacks()
{
    if (g_s.stacks) return true;
    g_s.pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t total = (size_t)S_MAXT * (S_STACK + g_s.pg);
    void *m = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) return false;
    g_s.stacks = (char *)m;
    for (int i = 0; i < S_MAXT; i++) {
        mprotect(s_stack(i) - g_s.pg, g_s.pg, PROT_NONE); /* guard */
#ifdef S_VALGRIND
        (void)VALGRIND_STACK_REGISTER(s_stack(i), s_stack(i) + S_STACK);
#endif
    }
    return true;
}

} // namespace

/* the __shared__ variables of every kernel linked with this runtime
 * (cuda_emu_kernel.h puts them in this section; the linker defines these) */
extern "C" char __start_eqemu_shared[] __attribute__((weak));
extern "C" char __stop_eqemu_shared[] __attribute__((weak));

namespace {

/* Runs one block; false after a divergent barrier (fault recorded). */
bool s_block(const char *kernel, dim3 b, uint64_t *rng, std::vector<int> &order)
{
    const int nt = (int)(b.x * b.y * b.z);
    uintptr_t sh0 = (uintptr_t)__start_eqemu_shared, sh1 = (uintptr_t)__stop_eqemu_shared;
    if (sh0 && sh1 > sh0) memset(__start_eqemu_shared, 0xff, (size_t)(sh1 - sh0));
    for (int t = 0; t < nt; t++) {
        Fiber *f = &g_s.fib[t];
        f->state = F_RUN;
        f->idx = uint3{(unsigned)t % b.x, ((unsigned)t / b.x) % b.y, (unsigned)t / (b.x * b.y)};
        s_fiber_init(f, t);
        order[t] = t;
    }
    for (;;) {
        for (int t = nt - 1; t > 0; t--) { /* a fresh order each phase */
            int j = (int)(s_next(rng) % (uint64_t)(t + 1));
            int v = order[t];
            order[t] = order[j];
            order[j] = v;
        }
        for (int k = 0; k < nt; k++) {
            Fiber *f = &g_s.fib[order[k]];
            if (f->state != F_RUN) continue;
            g_s.cur = f;
            eq_emu_threadIdx = f->idx;
            s_resume(f);
        }
        g_s.cur = NULL;
        int ndone = 0;
        for (int t = 0; t < nt; t++) ndone += g_s.fib[t].state == F_DONE;
        if (ndone == nt) return true;
        if (ndone > 0) { /* (which __syncthreads each waits at is not compared: g++ may
                          * duplicate a call into both arms of a branch) */
            const Fiber *w = NULL, *d = NULL;
            for (int t = 0; t < nt; t++)
                (g_s.fib[t].state == F_DONE ? d : w) = &g_s.fib[t];
            s_fault(cudaErrorLaunchFailure,
                    "kernel %s block (%u,%u,%u): divergent __syncthreads: %d of %d threads "
                    "returned while the others wait at a barrier (e.g. thread (%u,%u,%u) waits, "
                    "thread (%u,%u,%u) returned)",
                    kernel, eq_emu_blockIdx.x, eq_emu_blockIdx.y, eq_emu_blockIdx.z, ndone, nt,
                    w->idx.x, w->idx.y, w->idx.z, d->idx.x, d->idx.y, d->idx.z);
            return false;
        }
        for (int t = 0; t < nt; t++) g_s.fib[t].state = F_RUN;
    }
}

} // namespace

extern "C" void eq_emu_launch(const char *kernel, dim3 grid, dim3 block, size_t shmem,
                              cudaStream_t sm, const void *const *ptrs, int nargs,
                              void (*body)(void *), void *ctx, void (*drop)(void *))
{
    Lock lock_;
    s_init_env();
    State &s = st();
    struct Drop { /* ctx is dropped unless the queued launch owns it */
        void (*fn)(void *);
        void *c;
        ~Drop()
        {
            if (c) fn(c);
        }
    } dr{drop, ctx};
    if (s.sticky != cudaSuccess) {
        t_last = s.sticky;
        return;
    }
    if (s.ndev == 0) {
        s_ret(cudaErrorNoDevice);
        return;
    }
    unsigned long long nt = (unsigned long long)block.x * block.y * block.z;
    if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 ||
        grid.z == 0 || block.x > 1024 || block.y > 1024 || block.z > 64 || nt > 1024 ||
        grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
        s_misuse(cudaErrorInvalidConfiguration, "kernel %s: grid (%u,%u,%u) block (%u,%u,%u)",
                 kernel, grid.x, grid.y, grid.z, block.x, block.y, block.z);
        return;
    }
    if (shmem > 48 * 1024) {
        s_misuse(cudaErrorInvalidValue, "kernel %s: %zu bytes of dynamic shared memory", kernel,
                 shmem);
        return;
    }
    if (!s_stream_ok(sm)) {
        s_misuse(cudaErrorInvalidResourceHandle, "kernel %s: stream %p is not a live stream",
                 kernel, (void *)sm);
        return;
    }
    for (int i = 0; i < nargs; i++) {
        const void *p = ptrs[i];
        if (p == &eq_emu_notptr || p == NULL) continue;
        if (!s_find(p, 0, NULL)) {
            s_fault(cudaErrorIllegalAddress,
                    "kernel %s argument %d: %p is not device memory (a host pointer passed to a "
                    "kernel)",
                    kernel, i + 1, p);
            return;
        }
    }
    if (g_s.cur) {
        fprintf(stderr, "cudaemu: kernel %s launched from inside a kernel\n", kernel);
        abort();
    }
    if (!s_stacks()) {
        s_ret(cudaErrorMemoryAllocation);
        return;
    }
    dr.c = NULL;
    std::string name = kernel;
    std::shared_ptr<void> own(ctx, drop);
    s_submit(sm, [name, grid, block, body, own]() {
        State &s2 = st();
        uint64_t rng = s2.seed ^ (s2.launches * 0xd1342543de82ef95ull);
        s2.launches++;
        std::vector<int> order((size_t)block.x * block.y * block.z);
        Device dv;
        g_s.body = body;
        g_s.ctx = own.get();
        eq_emu_gridDim = grid;
        eq_emu_blockDim = block;
        for (unsigned z = 0; z < grid.z; z++)
            for (unsigned y = 0; y < grid.y; y++)
                for (unsigned x = 0; x < grid.x; x++) {
                    eq_emu_blockIdx = uint3{x, y, z};
                    if (!s_block(name.c_str(), block, &rng, order)) return;
                }
    });
}
