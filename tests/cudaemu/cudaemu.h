/*
 * tests/cudaemu/cudaemu.h -- what the CUDA runtime emulation
 * (tests/cudaemu/runtime.cc) offers beyond the runtime API, for the other
 * emulated libraries (tests/cudaemu's cuDNN/cuBLAS) and the tests.  Not a
 * CUDA header: nothing under trainer/ may use it.
 *
 * "Device memory" is host memory that the emulation tracks (cudaMalloc).
 * An emulated library that reads or writes device memory on a stream's
 * behalf checks every operand range first and, where the device would
 * fault (an illegal address ends a real CUDA context), records the fault:
 * every later runtime call then returns it, as the real runtime does.
 * With EQ_CUDA_EMU_PROTECT=1 device memory is inaccessible to the host
 * outside emulated device work; such work runs between
 * eq_cudaemu_device_enter() and eq_cudaemu_device_leave() (nesting
 * allowed).
 */
#ifndef EQ_CUDAEMU_CUDAEMU_H
#define EQ_CUDAEMU_CUDAEMU_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 0 when [p, p + n) lies inside one device allocation (or pinned host
 * memory, which kernels may address); otherwise records an illegal-address
 * fault naming `who` (e.g. "cublasSgemm C") and returns -1.  n = 0: any p. */
int eq_cudaemu_device_range(const void *p, size_t n, const char *who);
/* 0 when s is the legacy default stream (0), cudaStreamLegacy,
 * cudaStreamPerThread or a live stream of cudaStreamCreate*; -1 else. */
int eq_cudaemu_stream_valid(struct CUstream_st *s);
/* Record a device-side fault (printf-style reason, printed on stderr). */
void eq_cudaemu_fault(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Bracket emulated device work (device memory readable and writable). */
void eq_cudaemu_device_enter(void);
void eq_cudaemu_device_leave(void);
/* Launches executed and threads run so far (tests). */
unsigned long long eq_cudaemu_launches(void);
/* Host waits so far (runtime.cc's top says which calls count). */
typedef struct eq_cudaemu_waits {
    unsigned long long calls;   /* calls that block the host on a GPU */
    unsigned long long blocked; /* of those, the ones that found queued work to wait for */
    unsigned long long drained; /* of those, the ones that left a stream they ran empty (its GPU work stops) */
    unsigned long long stream_sync, event_sync, device_sync, memcpy, memcpy_async, free; /* calls by kind */
} eq_cudaemu_waits;
void eq_cudaemu_waits_get(eq_cudaemu_waits *w);

#ifdef __cplusplus
}
#endif
#endif
