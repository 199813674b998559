/*
 * quant/bench_quant.c -- forward+backward throughput of each quantizer on a
 * ResNet-18-sized weight (512x512x3x3) and activation (32x64x56x56, NHWC),
 * printed as GB/s beside a memcpy of the same bytes in the same run, and
 * LQ-Net's training step (with its basis update).
 *     quant/bench-quant [--threads N] [--reps N]
 * Bytes per element counted: x and dL/dy read, y and dL/dx written (16).
 */
#include "quant/quant.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/pool.h"

/* Single-threaded runs are timed in CPU time of the process, so a busy
 * shared machine does not distort the per-core figures; threaded runs use
 * wall time. */
static clockid_t s_clock = CLOCK_MONOTONIC;
static double s_now(void)
{
    struct timespec ts;
    clock_gettime(s_clock, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double s_memcpy_gbs(float *dst, const float *src, int64_t n, int reps)
{
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = s_now();
        memcpy(dst, src, (size_t)n * sizeof(float) * 2); /* 16 bytes/element in all */
        memcpy(dst + 2 * n, src + 2 * n, (size_t)n * sizeof(float) * 2);
        double t = s_now() - t0;
        if (t < best) best = t;
    }
    return 16.0 * (double)n / best / 1e9;
}

int main(int argc, char **argv)
{
    int threads = 1, reps = 5;
    static const struct option lo[] = {{"threads", required_argument, NULL, 't'},
                                       {"reps", required_argument, NULL, 'r'},
                                       {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (c == 't') threads = atoi(optarg);
        else if (c == 'r') reps = atoi(optarg);
        else return 2;
    }
    if (threads < 1 || reps < 1) return 2;
    if (threads == 1) s_clock = CLOCK_PROCESS_CPUTIME_ID;
    eq_err err = {0};
    eq_pool *pool = threads > 1 ? eq_pool_new(threads, &err) : NULL;
    if (threads > 1 && !pool) {
        fprintf(stderr, "bench-quant: %s\n", err.msg);
        return 1;
    }
    const int64_t W[4] = {512, 512, 3, 3}, A[4] = {32, 56, 56, 64};
    struct {
        eq_quant_tag tag;
        const char *kv[6];
    } cases[] = {
        {EQ_QTAG_WT, {"method=dorefa", "bit=2", NULL}},
        {EQ_QTAG_WT, {"method=bin", "bit=1", NULL}},
        {EQ_QTAG_WT, {"method=lsq", "bit=2", NULL}},
        {EQ_QTAG_WT, {"method=lsq", "bit=2", "adaptive=var-mean", NULL}},
        {EQ_QTAG_WT, {"method=lsq-step", "bit=2", NULL}},
        {EQ_QTAG_WT, {"method=nonuniform", "level=3", NULL}},
        {EQ_QTAG_WT, {"method=xnor", "bit=1", "grad_type=STE", NULL}},
        {EQ_QTAG_WT, {"method=lqnet", "bit=2", NULL}},
        {EQ_QTAG_FM, {"method=dorefa", "bit=2", NULL}},
        {EQ_QTAG_FM, {"method=pact", "bit=2", NULL}},
        {EQ_QTAG_FM, {"method=lsq", "bit=2", NULL}},
        {EQ_QTAG_FM, {"method=lsq", "bit=2", "quant_group=64", NULL}},
        {EQ_QTAG_FM, {"method=lsq-step", "bit=2", NULL}},
        {EQ_QTAG_FM, {"method=nonuniform", "bit=2", "scale=3", NULL}},
        {EQ_QTAG_FM, {"method=xnor", "bit=1", "grad_type=Triangle", NULL}},
        {EQ_QTAG_FM, {"method=lqnet", "bit=2", NULL}},
    };
    int64_t nmax = 32 * 56 * 56 * 64;
    float *x = malloc((size_t)nmax * 4 * sizeof(float)), *y = x + nmax, *g = y + nmax, *gx = g + nmax;
    float *dst = malloc((size_t)nmax * 4 * sizeof(float));
    if (!x || !dst) return 1;
    uint64_t s = 1;
    for (int64_t i = 0; i < 4 * nmax; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 4.0 - 2.0) * 0.5f;
        dst[i] = 0;
    }
    printf("threads %d (%s time); bytes per element 16 (x, dL/dy in; y, dL/dx out)\n", threads,
           threads == 1 ? "CPU" : "wall");
    printf("%-4s %-40s %10s %10s %10s %8s\n", "tag", "options", "elements", "GB/s", "memcpy", "ratio");
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        eq_quant_opts o;
        eq_quant_opts_init(&o, cases[k].tag);
        char label[128] = "";
        for (const char *const *p = cases[k].kv; *p; p++) {
            char key[64];
            const char *e = strchr(*p, '=');
            snprintf(key, sizeof key, "%.*s", (int)(e - *p), *p);
            eq_quant_opts_set(&o, key, e + 1, &err);
            strncat(label, *p, sizeof label - strlen(label) - 2);
            strcat(label, " ");
        }
        eq_tensor_desc d;
        if (cases[k].tag == EQ_QTAG_WT)
            eq_tensor_desc_init(&d, EQ_DT_F32, EQ_LAYOUT_OIHW, 4, W, &err);
        else
            eq_tensor_desc_init(&d, EQ_DT_F32, EQ_LAYOUT_NHWC, 4, A, &err);
        int64_t n = eq_tensor_numel(&d);
        eq_quant *q = eq_quant_new(&o, &d, &err);
        if (!q) {
            fprintf(stderr, "%s: %s\n", label, err.msg);
            return 1;
        }
        eq_quant_set_pool(q, pool);
        double best = 1e30;
        for (int r = 0; r < reps; r++) {
            double t0 = s_now();
            if (eq_quant_forward(q, &d, x, y, 1, &err) || eq_quant_backward(q, x, g, gx, &err)) {
                fprintf(stderr, "%s: %s\n", label, err.msg);
                return 1;
            }
            double t = s_now() - t0;
            if (t < best) best = t;
        }
        double gbs = 16.0 * (double)n / best / 1e9, mc = s_memcpy_gbs(dst, x, n, reps);
        printf("%-4s %-40s %10lld %10.2f %10.2f %8.2f   (%.2f ms)\n", eq_quant_tag_name(cases[k].tag), label,
               (long long)n, gbs, mc, gbs / mc, best * 1e3);
        eq_quant_destroy(&q);
    }
    free(x);
    free(dst);
    eq_pool_destroy(&pool);
    return 0;
}
