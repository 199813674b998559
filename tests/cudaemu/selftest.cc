/*
 * tests/cudaemu/selftest.cc (program tests/check_cudaemu) -- the CPU
 * emulation of the CUDA runtime and execution model (tests/cudaemu/)
 * itself: that it refuses what a GPU
 * refuses and finds what compute-sanitizer would, so a pass of
 * check_cuda_emu means something.  Each test runs in its own process
 * (faults are sticky for the process, as for a CUDA context).
 */
#include <cuda_runtime.h>

#include "cudaemu.h"

#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_N 256

__global__ void k_rotate(int *out, int salt, int barrier)
{
    __shared__ int sh[S_N];
    unsigned t = threadIdx.x;
    sh[t] = (int)t + salt;
    if (barrier) __syncthreads();
    out[t] = sh[(t + 1) % S_N];
}

__global__ void k_diverge(int *out)
{
    if (threadIdx.x == 3) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

/* every (block, thread) of a 3-D grid of 3-D blocks counts itself once */
__global__ void k_cover(int *count)
{
    unsigned b = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    unsigned t = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    count[b * blockDim.x * blockDim.y * blockDim.z + t] += 1;
}

__global__ void k_nop(int *p) {}

/* a tree reduction with a barrier per step (kernels.cu's pattern) */
__global__ void k_tree(const int *x, int *out)
{
    __shared__ int sh[S_N];
    sh[threadIdx.x] = x[blockIdx.x * S_N + threadIdx.x];
    __syncthreads();
    for (int w = S_N / 2; w > 0; w /= 2) {
        if ((int)threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = sh[0];
}

static int *s_dev(size_t n)
{
    void *p = NULL;
    ck_assert_int_eq(cudaMalloc(&p, n * sizeof(int)), cudaSuccess);
    return (int *)p;
}

START_TEST(test_barrier)
{
    int *d = s_dev(S_N), h[S_N];
    EQ_LAUNCH(k_rotate, 1, S_N, 0, 0)(d, 1000, 1);
    ck_assert_int_eq(cudaGetLastError(), cudaSuccess);
    ck_assert_int_eq(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost), cudaSuccess);
    for (int t = 0; t < S_N; t++) ck_assert_int_eq(h[t], (t + 1) % S_N + 1000);
    /* without the barrier a thread reads its neighbour's slot before the
     * neighbour wrote it whenever the seeded order runs it first: about
     * half the threads */
    EQ_LAUNCH(k_rotate, 1, S_N, 0, 0)(d, 2000, 0);
    ck_assert_int_eq(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost), cudaSuccess);
    int wrong = 0;
    for (int t = 0; t < S_N; t++) wrong += h[t] != (t + 1) % S_N + 2000;
    ck_assert_int_gt(wrong, S_N / 4);
    ck_assert_int_lt(wrong, S_N * 3 / 4);
    ck_assert_int_eq(cudaFree(d), cudaSuccess);
}
END_TEST

__global__ void k_uninit(int *out)
{
    __shared__ int sh[4];
    if (blockIdx.x == 0) sh[threadIdx.x] = 5; /* block 1 never writes it */
    __syncthreads();
    out[blockIdx.x * 4 + threadIdx.x] = sh[threadIdx.x];
}

/* shared memory no thread of the block wrote reads as 0xff bytes, not as
 * what the previous block left */
START_TEST(test_shared_uninit)
{
    int *d = s_dev(8), h[8];
    EQ_LAUNCH(k_uninit, 2, 4, 0, 0)(d);
    ck_assert_int_eq(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost), cudaSuccess);
    for (int t = 0; t < 4; t++) {
        ck_assert_int_eq(h[t], 5);
        ck_assert_int_eq(h[4 + t], -1);
    }
}
END_TEST

START_TEST(test_tree)
{
    enum { NB = 7 };
    int *dx = s_dev(NB * S_N), *dy = s_dev(NB), hx[NB * S_N], hy[NB];
    for (int i = 0; i < NB * S_N; i++) hx[i] = i % 97 + 1;
    ck_assert_int_eq(cudaMemcpy(dx, hx, sizeof hx, cudaMemcpyHostToDevice), cudaSuccess);
    EQ_LAUNCH(k_tree, NB, S_N, 0, 0)(dx, dy);
    ck_assert_int_eq(cudaGetLastError(), cudaSuccess);
    ck_assert_int_eq(cudaMemcpy(hy, dy, sizeof hy, cudaMemcpyDeviceToHost), cudaSuccess);
    for (int b = 0; b < NB; b++) {
        int s = 0;
        for (int t = 0; t < S_N; t++) s += hx[b * S_N + t];
        ck_assert_int_eq(hy[b], s);
    }
    ck_assert_uint_ge(eq_cudaemu_launches(), 1);
}
END_TEST

START_TEST(test_divergent)
{
    int *d = s_dev(S_N);
    EQ_LAUNCH(k_diverge, 1, 32, 0, 0)(d);
    ck_assert_int_eq(cudaGetLastError(), cudaErrorLaunchFailure);
    /* sticky, as a real context after a fault */
    ck_assert_int_eq(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
    void *p;
    ck_assert_int_eq(cudaMalloc(&p, 16), cudaErrorLaunchFailure);
}
END_TEST

START_TEST(test_cover)
{
    dim3 g(3, 2, 2), b(4, 3, 2);
    size_t n = 3 * 2 * 2 * 4 * 3 * 2;
    int *d = s_dev(n), h[3 * 2 * 2 * 4 * 3 * 2];
    ck_assert_int_eq(cudaMemset(d, 0, n * sizeof(int)), cudaSuccess);
    EQ_LAUNCH(k_cover, g, b, 0, 0)(d);
    ck_assert_int_eq(cudaGetLastError(), cudaSuccess);
    ck_assert_int_eq(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost), cudaSuccess);
    for (size_t i = 0; i < n; i++) ck_assert_int_eq(h[i], 1);
}
END_TEST

START_TEST(test_config)
{
    int *d = s_dev(1);
    cudaStream_t s;
    ck_assert_int_eq(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    EQ_LAUNCH(k_nop, 1, 1025, 0, s)(d);
    ck_assert_int_eq(cudaGetLastError(), cudaErrorInvalidConfiguration);
    ck_assert_int_eq(cudaGetLastError(), cudaSuccess); /* not sticky */
    EQ_LAUNCH(k_nop, 1, dim3(32, 32, 2), 0, s)(d);
    ck_assert_int_eq(cudaGetLastError(), cudaErrorInvalidConfiguration);
    EQ_LAUNCH(k_nop, dim3(1, 65536), 1, 0, s)(d);
    ck_assert_int_eq(cudaGetLastError(), cudaErrorInvalidConfiguration);
    EQ_LAUNCH(k_nop, 0, 32, 0, s)(d);
    ck_assert_int_eq(cudaGetLastError(), cudaErrorInvalidConfiguration);
    EQ_LAUNCH(k_nop, dim3(2, 65535, 1), 1, 0, s)(d);
    ck_assert_int_eq(cudaGetLastError(), cudaSuccess);
    EQ_LAUNCH(k_nop, 1, 1, 64 * 1024, s)(d);
    ck_assert_int_eq(cudaGetLastError(), cudaErrorInvalidValue);
    ck_assert_int_eq(cudaStreamDestroy(s), cudaSuccess);
    EQ_LAUNCH(k_nop, 1, 1, 0, s)(d); /* a destroyed stream */
    ck_assert_int_eq(cudaGetLastError(), cudaErrorInvalidResourceHandle);
    ck_assert_str_eq(cudaGetErrorString(cudaErrorInvalidConfiguration), "invalid configuration argument");
    ck_assert_str_eq(cudaGetErrorName(cudaErrorIllegalAddress), "cudaErrorIllegalAddress");
}
END_TEST

START_TEST(test_host_pointer)
{
    static int host[4];
    EQ_LAUNCH(k_nop, 1, 1, 0, 0)(host);
    ck_assert_int_eq(cudaGetLastError(), cudaErrorIllegalAddress);
    ck_assert_int_eq(cudaStreamSynchronize(0), cudaErrorIllegalAddress);
}
END_TEST

START_TEST(test_pinned)
{
    int *h = NULL, *dp = NULL;
    ck_assert_int_eq(cudaHostAlloc((void **)&h, 64, cudaHostAllocMapped), cudaSuccess);
    ck_assert_int_eq(cudaHostGetDevicePointer((void **)&dp, h, 0), cudaSuccess);
    EQ_LAUNCH(k_nop, 1, 1, 0, 0)(dp + 16); /* one past the end is a pointer, not an access */
    ck_assert_int_eq(cudaGetLastError(), cudaSuccess);
    int x;
    ck_assert_int_eq(cudaHostGetDevicePointer((void **)&dp, &x, 0), cudaErrorInvalidValue);
    ck_assert_int_eq(cudaFree(h), cudaErrorInvalidValue);
    ck_assert_int_eq(cudaFreeHost(h), cudaSuccess);
}
END_TEST

START_TEST(test_copies)
{
    int *d = s_dev(8), h[16];
    memset(h, 0, sizeof h);
    ck_assert_int_eq(cudaMemcpy(h, d, 9 * sizeof(int), cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
    ck_assert_int_eq(cudaMemcpy(d + 1, h, 8 * sizeof(int), cudaMemcpyHostToDevice), cudaErrorInvalidValue);
    ck_assert_int_eq(cudaMemcpy(h, d, 8 * sizeof(int), cudaMemcpyHostToDevice), cudaErrorInvalidValue);
    ck_assert_int_eq(cudaMemcpy(d, d + 2, 4 * sizeof(int), cudaMemcpyDeviceToDevice), cudaErrorInvalidValue);
    ck_assert_int_eq(cudaMemset(h, 0, 4), cudaErrorInvalidValue);
    ck_assert_int_eq(cudaMemsetAsync(d, 0, 33, 0), cudaErrorInvalidValue);
    ck_assert_int_eq(cudaFree(d + 1), cudaErrorInvalidValue);
    ck_assert_int_eq(cudaFree(h), cudaErrorInvalidValue);
    /* none of these is sticky */
    ck_assert_int_eq(cudaMemcpy(h, d, 8 * sizeof(int), cudaMemcpyDefault), cudaSuccess);
    /* fresh device memory is not zero */
    ck_assert_int_eq(h[0], -1);
    size_t fr, tot;
    ck_assert_int_eq(cudaMemGetInfo(&fr, &tot), cudaSuccess);
    ck_assert_uint_eq(tot - fr, 8 * sizeof(int));
    ck_assert_int_eq(cudaFree(d), cudaSuccess);
    ck_assert_int_eq(cudaFree(d), cudaErrorInvalidValue); /* double free */
}
END_TEST

__global__ void k_set(int *p, int v)
{
    p[threadIdx.x] = v;
}

/* Work on a created stream runs when the host waits for it: a kernel's
 * store to mapped pinned memory is not visible before, a copy from pinned
 * memory reads it when the stream runs it, and a stream waiting on an
 * event of another runs that stream's recorded work first. */
START_TEST(test_deferred)
{
    cudaStream_t a, b;
    ck_assert_int_eq(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking), cudaSuccess);
    ck_assert_int_eq(cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking), cudaSuccess);
    int *h = NULL, *d = s_dev(4), out[4];
    ck_assert_int_eq(cudaHostAlloc((void **)&h, 4 * sizeof(int), cudaHostAllocMapped), cudaSuccess);
    h[0] = 1;
    EQ_LAUNCH(k_set, 1, 1, 0, a)(h, 7);
    ck_assert_int_eq(cudaGetLastError(), cudaSuccess);
    ck_assert_int_eq(h[0], 1); /* not yet */
    ck_assert_int_eq(cudaStreamQuery(a), cudaErrorNotReady);
    ck_assert_int_eq(cudaStreamSynchronize(a), cudaSuccess);
    ck_assert_int_eq(h[0], 7);
    /* a copy from pinned memory reads it when it runs */
    h[1] = 5;
    ck_assert_int_eq(cudaMemcpyAsync(d, h + 1, sizeof(int), cudaMemcpyHostToDevice, a), cudaSuccess);
    h[1] = 6; /* a race on a GPU: the emulation shows the late value */
    cudaEvent_t ev;
    ck_assert_int_eq(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), cudaSuccess);
    ck_assert_int_eq(cudaEventRecord(ev, a), cudaSuccess);
    EQ_LAUNCH(k_set, 1, 1, 0, a)(d + 1, 9); /* after the record */
    ck_assert_int_eq(cudaStreamWaitEvent(b, ev, 0), cudaSuccess);
    ck_assert_int_eq(cudaEventDestroy(ev), cudaSuccess); /* the wait keeps the record */
    ck_assert_int_eq(cudaMemcpyAsync(d + 2, d, sizeof(int), cudaMemcpyDeviceToDevice, b), cudaSuccess);
    ck_assert_int_eq(cudaStreamSynchronize(b), cudaSuccess);
    ck_assert_int_eq(cudaStreamQuery(a), cudaErrorNotReady); /* k_set(d + 1) not run yet */
    ck_assert_int_eq(cudaMemcpy(out, d, 3 * sizeof(int), cudaMemcpyDeviceToHost), cudaSuccess);
    ck_assert_int_eq(out[0], 6);
    ck_assert_int_eq(out[2], 6);
    ck_assert_int_eq(out[1], -1); /* (fresh device memory) */
    ck_assert_int_eq(cudaFree(d), cudaSuccess); /* synchronises the device */
    ck_assert_int_eq(cudaStreamQuery(a), cudaSuccess);
    ck_assert_int_eq(cudaFreeHost(h), cudaSuccess);
}
END_TEST

/* the host-wait counts (eq_cudaemu_waits_get, EQ_CUDA_EMU_WAITS) */
START_TEST(test_waits)
{
    eq_cudaemu_waits w0, w;
    eq_cudaemu_waits_get(&w0);
    cudaStream_t a; /* blocking: the legacy stream's cudaMemcpy waits for it */
    ck_assert_int_eq(cudaStreamCreate(&a), cudaSuccess);
    int *d = s_dev(4), *h = NULL, out[4];
    ck_assert_int_eq(cudaHostAlloc((void **)&h, 4 * sizeof(int), 0), cudaSuccess);
    ck_assert_int_eq(cudaStreamSynchronize(a), cudaSuccess); /* nothing queued: a call, not blocked */
    eq_cudaemu_waits_get(&w);
    ck_assert_uint_eq(w.calls - w0.calls, 1);
    ck_assert_uint_eq(w.blocked - w0.blocked, 0);
    /* an event wait with work queued behind the event: blocked, not drained */
    cudaEvent_t ev;
    ck_assert_int_eq(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), cudaSuccess);
    EQ_LAUNCH(k_set, 1, 1, 0, a)(d, 7);
    ck_assert_int_eq(cudaMemcpyAsync(h, d, sizeof(int), cudaMemcpyDeviceToHost, a), cudaSuccess); /* pinned: no wait */
    ck_assert_int_eq(cudaEventRecord(ev, a), cudaSuccess);
    EQ_LAUNCH(k_set, 1, 1, 0, a)(d + 1, 8);
    ck_assert_int_eq(cudaEventSynchronize(ev), cudaSuccess);
    ck_assert_int_eq(h[0], 7);
    eq_cudaemu_waits_get(&w);
    ck_assert_uint_eq(w.calls - w0.calls, 2);
    ck_assert_uint_eq(w.event_sync - w0.event_sync, 1);
    ck_assert_uint_eq(w.blocked - w0.blocked, 1);
    ck_assert_uint_eq(w.drained - w0.drained, 0);
    /* a download into pageable memory waits for everything before it */
    ck_assert_int_eq(cudaMemcpyAsync(out, d + 1, sizeof(int), cudaMemcpyDeviceToHost, a), cudaSuccess);
    ck_assert_int_eq(out[0], 8);
    eq_cudaemu_waits_get(&w);
    ck_assert_uint_eq(w.memcpy_async - w0.memcpy_async, 1);
    ck_assert_uint_eq(w.drained - w0.drained, 1);
    /* cudaMemcpy to the host, and device to device (not a wait) */
    EQ_LAUNCH(k_set, 1, 1, 0, a)(d + 2, 9);
    ck_assert_int_eq(cudaMemcpy(d + 3, d + 2, sizeof(int), cudaMemcpyDeviceToDevice), cudaSuccess);
    ck_assert_int_eq(cudaMemcpy(out, d + 3, sizeof(int), cudaMemcpyDeviceToHost), cudaSuccess);
    ck_assert_int_eq(out[0], 9);
    eq_cudaemu_waits_get(&w);
    ck_assert_uint_eq(w.memcpy - w0.memcpy, 1); /* the D2H one */
    ck_assert_uint_eq(w.calls - w0.calls, 4);
    ck_assert_int_eq(cudaEventDestroy(ev), cudaSuccess);
    ck_assert_int_eq(cudaFree(d), cudaSuccess);
    ck_assert_int_eq(cudaFreeHost(h), cudaSuccess);
    eq_cudaemu_waits_get(&w);
    ck_assert_uint_eq(w.free - w0.free, 2);
    ck_assert_uint_eq(w.calls - w0.calls, 6);
}
END_TEST

START_TEST(test_no_device)
{
    setenv("EQ_CUDA_EMU_DEVICES", "0", 1);
    int n = 42;
    ck_assert_int_eq(cudaGetDeviceCount(&n), cudaErrorNoDevice);
    ck_assert_int_eq(n, 42);
}
END_TEST

START_TEST(test_protect)
{
    setenv("EQ_CUDA_EMU_PROTECT", "1", 1);
    int *d = s_dev(4), h[4] = {1, 2, 3, 4};
    ck_assert_int_eq(cudaMemcpy(d, h, sizeof h, cudaMemcpyHostToDevice), cudaSuccess);
    EQ_LAUNCH(k_cover, 1, 4, 0, 0)(d);
    ck_assert_int_eq(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost), cudaSuccess);
    ck_assert_int_eq(h[3], 5);
    *(volatile int *)d = 0; /* the host touching device memory: SIGSEGV */
}
END_TEST

int main(void)
{
    fprintf(stderr, "check_cudaemu: the cudaemu lines below are the errors these tests provoke\n");
    Suite *su = suite_create("cudaemu");
    TCase *tc = tcase_create("emulation");
    tcase_add_test(tc, test_barrier);
    tcase_add_test(tc, test_tree);
    tcase_add_test(tc, test_shared_uninit);
    tcase_add_test(tc, test_divergent);
    tcase_add_test(tc, test_cover);
    tcase_add_test(tc, test_config);
    tcase_add_test(tc, test_host_pointer);
    tcase_add_test(tc, test_pinned);
    tcase_add_test(tc, test_copies);
    tcase_add_test(tc, test_deferred);
    tcase_add_test(tc, test_waits);
    tcase_add_test(tc, test_no_device);
    tcase_add_test_raise_signal(tc, test_protect, SIGSEGV);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_set_fork_status(sr, CK_FORK); /* a fault is sticky for its process */
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
