/*
 * bench/conv_bench.c -- one ResNet-18 conv layer, forward + backward (data
 * and filter), on eq's CPU backend and on PyTorch's CPU in the same run,
 * with the same shape and thread count; prints both and the ratio.
 *
 *   bench/conv_bench [--layer NAME|all] [--threads T] [--iters N] [--no-torch]
 *                    [--python PATH] [--script PATH]
 *
 * Layers are those of torchvision's resnet18 at batch 16, 224x224, and the
 * three 3x3 shapes of CIFAR ResNet-20 at batch 128 (r20.layer1..3: 16, 32
 * and 64 channels on 32x32, 16x16 and 8x8) and its stride-2 3x3s and 1x1
 * downsampling convs (r20.layer2.0.*, r20.layer3.0.*).  --layer takes a
 * name, "all", or the part of names before a dot: "r20" runs
 * every r20.* layer, "r20.layer2" r20.layer2 and r20.layer2.0.*.  The CPU backend runs every
 * stride-1 3x3 here (up to 512 channels) with its direct kernels, the
 * rest with im2col + SGEMM.  Times are the best of N iterations after one
 * warm-up (the least disturbed run on a shared machine), for both sides;
 * besides wall times each side prints cpu_ms, the least process CPU time
 * (all threads) of one forward + backward, which a busy machine disturbs
 * far less than the wall time.  "ratio" is PyTorch's time over eq's (> 1:
 * eq is faster), against PyTorch's faster memory format, in CPU time when
 * both sides report it.  PyTorch runs in a child process
 * (bench/conv_bench.py via /usr/bin/python3); without torch the eq numbers
 * are still printed.
 */
#include "core/clock.h"
#include "trainer/backend.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef EQ_BENCH_DIR
#define EQ_BENCH_DIR "bench"
#endif

typedef struct layer {
    const char *name;
    int64_t n, h, w, c, k, r, stride, pad;
} layer;

static const layer LAYERS[] = {
    {"conv1", 16, 224, 224, 3, 64, 7, 2, 3},
    {"layer1", 16, 56, 56, 64, 64, 3, 1, 1},
    {"layer2.0.conv1", 16, 56, 56, 64, 128, 3, 2, 1},
    {"layer2", 16, 28, 28, 128, 128, 3, 1, 1},
    {"layer3", 16, 14, 14, 256, 256, 3, 1, 1},
    {"layer3.0.downsample", 16, 28, 28, 128, 256, 1, 2, 0},
    {"layer4", 16, 7, 7, 512, 512, 3, 1, 1},
    {"r20.layer1", 128, 32, 32, 16, 16, 3, 1, 1},
    {"r20.layer2", 128, 16, 16, 32, 32, 3, 1, 1},
    {"r20.layer3", 128, 8, 8, 64, 64, 3, 1, 1},
    {"r20.layer2.0.conv1", 128, 32, 32, 16, 32, 3, 2, 1},
    {"r20.layer2.0.downsample", 128, 32, 32, 16, 32, 1, 2, 0},
    {"r20.layer3.0.conv1", 128, 16, 16, 32, 64, 3, 2, 1},
    {"r20.layer3.0.downsample", 128, 16, 16, 32, 64, 1, 2, 0},
};
#define NLAYERS (sizeof LAYERS / sizeof LAYERS[0])

static int s_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* CPU seconds of all this process's threads. */
static double s_cpu_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Best of n: on a shared machine the minimum is the least disturbed run. */
static double s_best(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, s_cmp);
    return v[0];
}

static float *s_rand(size_t n, float scale)
{
    float *v = malloc(n * sizeof *v);
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; v && i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        v[i] = ((float)(s >> 40) / 16777216.0f - 0.5f) * scale;
    }
    return v;
}

static int s_bench(const layer *L, int threads, int iters, int torch, const char *python,
                   const char *script)
{
    eq_err err = {0};
    eq_conv2d_desc d = {.n = L->n, .h = L->h, .w = L->w, .c = L->c, .k = L->k, .r = L->r,
                        .s = L->r, .stride_h = L->stride, .stride_w = L->stride,
                        .pad_h = L->pad, .pad_w = L->pad, .dil_h = 1, .dil_w = 1, .groups = 1};
    if (eq_conv2d_desc_init(&d, &err) != EQ_OK) {
        fprintf(stderr, "%s: %s\n", L->name, err.msg);
        return 1;
    }
    eq_backend *be = eq_backend_cpu_new(threads, &err);
    if (!be) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    size_t nx = d.n * d.h * d.w * d.c, ny = d.n * d.p * d.q * d.k, nw = d.k * d.c * d.r * d.s;
    float *x = s_rand(nx, 2.0f), *w = s_rand(nw, 0.1f), *dy = s_rand(ny, 2.0f);
    float *y = malloc(ny * 4), *dx = malloc(nx * 4), *dw = malloc(nw * 4);
    double *tf = malloc(sizeof(double) * (size_t)iters), *tb = malloc(sizeof(double) * (size_t)iters),
           *tt = malloc(sizeof(double) * (size_t)iters);
    double *cf = malloc(sizeof(double) * (size_t)iters), *cd = malloc(sizeof(double) * (size_t)iters),
           *cw = malloc(sizeof(double) * (size_t)iters), *ct = malloc(sizeof(double) * (size_t)iters);
    if (!x || !w || !dy || !y || !dx || !dw || !tf || !tb || !tt || !cf || !cd || !cw || !ct) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (int it = -1; it < iters; it++) {
        double t0 = eq_clock_sec(), c0 = s_cpu_sec();
        eq_status st = eq_backend_conv2d_fwd(be, &d, x, w, y, &err);
        double t1 = eq_clock_sec(), c1 = s_cpu_sec();
        if (st == EQ_OK) st = eq_backend_conv2d_bwd_data(be, &d, dy, w, dx, &err);
        double c2 = s_cpu_sec();
        if (st == EQ_OK) st = eq_backend_conv2d_bwd_filter(be, &d, x, dy, dw, &err);
        double t2 = eq_clock_sec(), c3 = s_cpu_sec();
        if (st != EQ_OK) {
            fprintf(stderr, "%s: %s\n", L->name, err.msg);
            return 1;
        }
        if (it >= 0) {
            tf[it] = (t1 - t0) * 1e3;
            tb[it] = (t2 - t1) * 1e3;
            tt[it] = tf[it] + tb[it];
            cf[it] = (c1 - c0) * 1e3, cd[it] = (c2 - c1) * 1e3, cw[it] = (c3 - c2) * 1e3;
            ct[it] = cf[it] + cd[it] + cw[it];
        }
    }
    double gflop = 3.0 * 2.0 * (double)ny * (double)(d.c * d.r * d.s) / 1e9;
    double mf = s_best(tf, iters), mb = s_best(tb, iters), mt = s_best(tt, iters);
    double mcf = s_best(cf, iters), mcd = s_best(cd, iters), mcw = s_best(cw, iters);
    double mct = s_best(ct, iters);
    printf("%-20s n%lld %lldx%lld %lld->%lld k%lld s%lld threads %d: eq fwd %.1f ms bwd %.1f ms "
           "total %.1f ms (%.1f GFLOP/s)\n",
           L->name, (long long)d.n, (long long)d.h, (long long)d.w, (long long)d.c,
           (long long)d.k, (long long)d.r, (long long)L->stride, threads, mf, mb, mt,
           gflop / (mt / 1e3));
    printf("%-20s eq cpu_ms: fwd %.1f bwd_data %.1f bwd_filter %.1f total %.1f "
           "(%.1f GFLOP per CPU s)\n",
           "", mcf, mcd, mcw, mct, gflop / (mct / 1e3));
    fflush(stdout);
    free(x), free(w), free(dy), free(y), free(dx), free(dw), free(tf), free(tb), free(tt);
    free(cf), free(cd), free(cw), free(ct);
    eq_backend_destroy(&be);
    if (!torch) return 0;

    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s %s --threads %d --iters %d --shape %lld,%lld,%lld,%lld,%lld,%lld,%lld,%lld,%lld",
             python, script, threads, iters, (long long)L->n, (long long)L->h, (long long)L->w,
             (long long)L->c, (long long)L->k, (long long)L->r, (long long)L->r,
             (long long)L->stride, (long long)L->pad);
    FILE *p = popen(cmd, "r");
    if (!p) {
        perror("popen");
        return 1;
    }
    char line[512];
    double best = 0.0, best_cpu = 0.0;
    while (fgets(line, sizeof line, p)) {
        char fmt[64];
        double f, b, t, c = 0.0;
        if (sscanf(line, "torch %63s fwd_ms=%lf bwd_ms=%lf total_ms=%lf cpu_ms=%lf", fmt, &f, &b,
                   &t, &c) >= 4) {
            printf("%-20s torch %-13s fwd %.1f ms bwd %.1f ms total %.1f ms (%.1f GFLOP/s) "
                   "cpu_ms %.1f\n",
                   "", fmt, f, b, t, gflop / (t / 1e3), c);
            if (best == 0.0 || t < best) best = t;
            if (c > 0.0 && (best_cpu == 0.0 || c < best_cpu)) best_cpu = c;
        }
    }
    int rc = pclose(p);
    if (rc != 0 || best == 0.0) {
        printf("%-20s torch: not available (exit %d; is python3-torch installed?)\n", "", rc);
        return 0;
    }
    if (best_cpu > 0.0)
        printf("%-20s ratio torch/eq = %.2f (CPU time; wall %.2f)\n", "", best_cpu / mct,
               best / mt);
    else
        printf("%-20s ratio torch/eq = %.2f\n", "", best / mt);
    return 0;
}

int main(int argc, char **argv)
{
    const char *only = "layer2", *python = "/usr/bin/python3";
    const char *script = EQ_BENCH_DIR "/conv_bench.py";
    int threads = 2, iters = 5, torch = 1;
    static const struct option opts[] = {
        {"layer", required_argument, 0, 'l'},   {"threads", required_argument, 0, 't'},
        {"iters", required_argument, 0, 'i'},   {"no-torch", no_argument, 0, 'n'},
        {"python", required_argument, 0, 'p'},  {"script", required_argument, 0, 's'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "l:t:i:np:s:h", opts, NULL)) != -1) {
        char *end = NULL;
        switch (o) {
        case 'l': only = optarg; break;
        case 't':
            threads = (int)strtol(optarg, &end, 10);
            if (*end || threads < 1 || threads > 256) {
                fprintf(stderr, "--threads: expected 1..256, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'i':
            iters = (int)strtol(optarg, &end, 10);
            if (*end || iters < 1 || iters > 1000) {
                fprintf(stderr, "--iters: expected 1..1000, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'n': torch = 0; break;
        case 'p': python = optarg; break;
        case 's': script = optarg; break;
        default:
            fprintf(stderr,
                    "usage: %s [--layer NAME|all] [--threads T] [--iters N] [--no-torch] "
                    "[--python PATH] [--script PATH]\nlayers:",
                    argv[0]);
            for (size_t i = 0; i < NLAYERS; i++) fprintf(stderr, " %s", LAYERS[i].name);
            fprintf(stderr, "\n");
            return o == 'h' ? 0 : 2;
        }
    }
    int found = 0, rc = 0;
    for (size_t i = 0; i < NLAYERS; i++)
        if (!strcmp(only, "all") || !strcmp(only, LAYERS[i].name) ||
            (!strncmp(only, LAYERS[i].name, strlen(only)) && LAYERS[i].name[strlen(only)] == '.')) {
            found = 1;
            rc |= s_bench(&LAYERS[i], threads, iters, torch, python, script);
        }
    if (!found) {
        fprintf(stderr, "unknown layer '%s' (--help lists them)\n", only);
        return 2;
    }
    return rc;
}
