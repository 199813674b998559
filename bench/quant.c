/*
 * bench/quant.c -- forward+backward throughput of every quantizer method
 * on a ResNet-18-sized weight (512x512x3x3, OIHW) and activation
 * (32x56x56x64, NHWC as the trainer lays it out), beside
 *   - a memcpy of the same bytes (16 per element: x and dL/dy read, y and
 *     dL/dx written), measured in the same run, and
 *   - the original's PyTorch formulation of the same method on the same
 *     sizes (bench/quant.py through /usr/bin/python3, torch on the CPU with
 *     the same thread count), also in the same run;
 * then LQ-Net's training step (forward with its basis update + backward)
 * beside a 3x3 convolution (forward, backward data and filter on eq's CPU
 * backend) of the layer whose weight / input it quantizes.
 *
 *   bench/quant [--threads N] [--reps N] [--filter TEXT] [--no-torch]
 *               [--python PATH] [--script PATH]
 *
 * Times are the best of --reps after one warm-up.  With one thread they are
 * CPU time of the process (both sides), so a busy shared machine distorts
 * the per-core figures less; with more, wall time.  "x torch" is PyTorch's
 * time over eq's (> 1: eq is faster); "x memcpy" is eq's GB/s over
 * memcpy's.
 */
#include "core/pool.h"
#include "quant/quant.h"
#include "trainer/backend.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef EQ_BENCH_DIR
#define EQ_BENCH_DIR "bench"
#endif

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
    for (int r = 0; r <= reps; r++) {
        double t0 = s_now();
        memcpy(dst, src, (size_t)n * sizeof(float) * 2); /* 16 bytes/element in all */
        memcpy(dst + 2 * n, src + 2 * n, (size_t)n * sizeof(float) * 2);
        double t = s_now() - t0;
        if (r > 0 && t < best) best = t;
    }
    return 16.0 * (double)n / best / 1e9;
}

typedef struct s_case {
    eq_quant_tag tag;
    const char *kv[6];
} s_case;

static const s_case CASES[] = {
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
#define NCASES (sizeof CASES / sizeof CASES[0])

static const int64_t W_OIHW[4] = {512, 512, 3, 3};
static const int64_t A_NHWC[4] = {32, 56, 56, 64};

static void s_label(const s_case *c, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s", eq_quant_tag_name(c->tag));
    for (const char *const *p = c->kv; *p; p++) {
        size_t l = strlen(buf);
        snprintf(buf + l, cap - l, " %s", *p);
    }
}

/* Best fwd+bwd seconds of one case on eq, or < 0 on error. */
static double s_eq_case(const s_case *c, eq_pool *pool, const float *x, float *y, const float *g, float *gx,
                        int reps, double *fwd)
{
    eq_err err = {0};
    eq_quant_opts o;
    eq_quant_opts_init(&o, c->tag);
    for (const char *const *p = c->kv; *p; p++) {
        char key[64];
        const char *e = strchr(*p, '=');
        snprintf(key, sizeof key, "%.*s", (int)(e - *p), *p);
        if (eq_quant_opts_set(&o, key, e + 1, &err) != EQ_OK) {
            fprintf(stderr, "bench/quant: %s\n", err.msg);
            return -1;
        }
    }
    eq_tensor_desc d;
    if (c->tag == EQ_QTAG_WT)
        eq_tensor_desc_init(&d, EQ_DT_F32, EQ_LAYOUT_OIHW, 4, W_OIHW, &err);
    else
        eq_tensor_desc_init(&d, EQ_DT_F32, EQ_LAYOUT_NHWC, 4, A_NHWC, &err);
    eq_quant *q = eq_quant_new(&o, &d, &err);
    if (!q) {
        fprintf(stderr, "bench/quant: %s\n", err.msg);
        return -1;
    }
    eq_quant_set_pool(q, pool);
    double best = 1e30, bf = 1e30;
    for (int r = 0; r <= reps; r++) {
        double t0 = s_now();
        eq_status st = eq_quant_forward(q, &d, x, y, 1, &err);
        double t1 = s_now();
        if (st == EQ_OK) st = eq_quant_backward(q, x, g, gx, &err);
        double t2 = s_now();
        if (st != EQ_OK) {
            fprintf(stderr, "bench/quant: %s\n", err.msg);
            eq_quant_destroy(&q);
            return -1;
        }
        if (r > 0 && t2 - t0 < best) best = t2 - t0;
        if (r > 0 && t1 - t0 < bf) bf = t1 - t0;
    }
    eq_quant_destroy(&q);
    *fwd = bf;
    return best;
}

/* Runs the PyTorch side once for every selected case; fills tms[i] (ms,
 * 0: not available). */
static void s_torch(const char *python, const char *script, int threads, int reps, const int *sel,
                    double *tms)
{
    char cmd[8192];
    int l = snprintf(cmd, sizeof cmd, "%s %s --threads %d --reps %d", python, script, threads, reps);
    for (size_t i = 0; i < NCASES; i++) {
        if (!sel[i]) continue;
        char lab[256];
        s_label(&CASES[i], lab, sizeof lab);
        l += snprintf(cmd + l, sizeof cmd - (size_t)l, " --case '%s'", lab);
    }
    FILE *p = popen(cmd, "r");
    if (!p) {
        perror("bench/quant: popen");
        return;
    }
    /* the script numbers the cases it was given, in order */
    int map[NCASES], m = 0;
    for (size_t i = 0; i < NCASES; i++)
        if (sel[i]) map[m++] = (int)i;
    char line[512];
    while (fgets(line, sizeof line, p)) {
        int idx;
        double ms;
        if (sscanf(line, "torch %d ms=%lf", &idx, &ms) == 2 && idx >= 0 && idx < m) tms[map[idx]] = ms;
    }
    int rc = pclose(p);
    if (rc != 0) fprintf(stderr, "bench/quant: %s exited with status %d (python3-torch missing?)\n", script, rc);
}

/* Best seconds of a conv forward + backward data + backward filter. */
static double s_conv(eq_backend *be, int64_t n, int64_t h, int64_t c, int64_t k, int reps)
{
    eq_err err = {0};
    eq_conv2d_desc d = {.n = n, .h = h, .w = h, .c = c, .k = k, .r = 3, .s = 3, .stride_h = 1,
                        .stride_w = 1, .pad_h = 1, .pad_w = 1, .dil_h = 1, .dil_w = 1, .groups = 1};
    if (eq_conv2d_desc_init(&d, &err) != EQ_OK) return -1;
    size_t nx = (size_t)(n * h * h * c), ny = (size_t)(d.n * d.p * d.q * d.k), nw = (size_t)(k * c * 9);
    float *x = calloc(nx, 4), *w = calloc(nw, 4), *dy = calloc(ny, 4), *y = calloc(ny, 4),
          *dx = calloc(nx, 4), *dw = calloc(nw, 4);
    double best = -1;
    if (x && w && dy && y && dx && dw) {
        for (size_t i = 0; i < nx; i++) x[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
        for (size_t i = 0; i < nw; i++) w[i] = (float)((i * 40503u) % 1000) * 1e-4f - 0.05f;
        for (size_t i = 0; i < ny; i++) dy[i] = (float)((i * 69069u) % 1000) * 1e-3f - 0.5f;
        best = 1e30;
        for (int r = 0; r <= reps; r++) {
            double t0 = s_now();
            eq_status st = eq_backend_conv2d_fwd(be, &d, x, w, y, &err);
            if (st == EQ_OK) st = eq_backend_conv2d_bwd_data(be, &d, dy, w, dx, &err);
            if (st == EQ_OK) st = eq_backend_conv2d_bwd_filter(be, &d, x, dy, dw, &err);
            double t = s_now() - t0;
            if (st != EQ_OK) {
                fprintf(stderr, "bench/quant: conv: %s\n", err.msg);
                best = -1;
                break;
            }
            if (r > 0 && t < best) best = t;
        }
    }
    free(x), free(w), free(dy), free(y), free(dx), free(dw);
    return best;
}

int main(int argc, char **argv)
{
    int threads = 1, reps = 5, torch = 1;
    const char *filter = NULL, *python = "/usr/bin/python3", *script = EQ_BENCH_DIR "/quant.py";
    static const struct option lo[] = {{"threads", required_argument, NULL, 't'},
                                       {"reps", required_argument, NULL, 'r'},
                                       {"filter", required_argument, NULL, 'f'},
                                       {"no-torch", no_argument, NULL, 'n'},
                                       {"python", required_argument, NULL, 'p'},
                                       {"script", required_argument, NULL, 's'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        char *end = NULL;
        switch (c) {
        case 't':
            threads = (int)strtol(optarg, &end, 10);
            if (*end || threads < 1 || threads > 256) {
                fprintf(stderr, "bench/quant: --threads: expected 1..256, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'r':
            reps = (int)strtol(optarg, &end, 10);
            if (*end || reps < 1 || reps > 1000) {
                fprintf(stderr, "bench/quant: --reps: expected 1..1000, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'f': filter = optarg; break;
        case 'n': torch = 0; break;
        case 'p': python = optarg; break;
        case 's': script = optarg; break;
        default:
            fprintf(stderr,
                    "usage: %s [--threads N] [--reps N] [--filter TEXT] [--no-torch] [--python PATH] "
                    "[--script PATH]\n  --filter keeps the cases whose label contains TEXT, e.g. "
                    "'fm method=lsq'\n",
                    argv[0]);
            return c == 'h' ? 0 : 2;
        }
    }
    if (threads == 1) s_clock = CLOCK_PROCESS_CPUTIME_ID;
    eq_err err = {0};
    eq_pool *pool = threads > 1 ? eq_pool_new(threads, &err) : NULL;
    if (threads > 1 && !pool) {
        fprintf(stderr, "bench/quant: %s\n", err.msg);
        return 1;
    }
    int sel[NCASES], any = 0;
    for (size_t i = 0; i < NCASES; i++) {
        char lab[256];
        s_label(&CASES[i], lab, sizeof lab);
        sel[i] = !filter || strstr(lab, filter) != NULL;
        any |= sel[i];
    }
    if (!any) {
        fprintf(stderr, "bench/quant: no case matches '%s'\n", filter);
        return 2;
    }
    int64_t nmax = A_NHWC[0] * A_NHWC[1] * A_NHWC[2] * A_NHWC[3];
    float *x = malloc((size_t)nmax * 4 * sizeof(float)), *dst = malloc((size_t)nmax * 4 * sizeof(float));
    if (!x || !dst) {
        fprintf(stderr, "bench/quant: out of memory\n");
        return 1;
    }
    float *y = x + nmax, *g = y + nmax, *gx = g + nmax;
    uint64_t s = 1;
    for (int64_t i = 0; i < 4 * nmax; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 4.0 - 2.0) * 0.5f;
        dst[i] = 0;
    }
    double tms[NCASES] = {0};
    if (torch) s_torch(python, script, threads, reps, sel, tms);

    printf("threads %d (%s time), best of %d; weight %lldx%lldx%lldx%lld OIHW, activation "
           "%lldx%lldx%lldx%lld NHWC (torch: NCHW)\n",
           threads, threads == 1 ? "CPU" : "wall", reps, (long long)W_OIHW[0], (long long)W_OIHW[1],
           (long long)W_OIHW[2], (long long)W_OIHW[3], (long long)A_NHWC[0], (long long)A_NHWC[1],
           (long long)A_NHWC[2], (long long)A_NHWC[3]);
    printf("%-44s %9s %9s %9s %8s %9s %9s %8s\n", "case", "eq ms", "Melem/s", "GB/s", "x memcpy",
           "torch ms", "Melem/s", "x torch");
    double lq_ms[2] = {0, 0};
    int rc = 0;
    for (size_t k = 0; k < NCASES; k++) {
        if (!sel[k]) continue;
        char lab[256];
        s_label(&CASES[k], lab, sizeof lab);
        int64_t n = CASES[k].tag == EQ_QTAG_WT ? W_OIHW[0] * W_OIHW[1] * W_OIHW[2] * W_OIHW[3] : nmax;
        double fwd = 0, t = s_eq_case(&CASES[k], pool, x, y, g, gx, reps, &fwd);
        if (t < 0) {
            rc = 1;
            continue;
        }
        if (strstr(lab, "lqnet")) lq_ms[CASES[k].tag == EQ_QTAG_WT ? 0 : 1] = t * 1e3;
        double gbs = 16.0 * (double)n / t / 1e9, mc = s_memcpy_gbs(dst, x, n, reps);
        printf("%-44s %9.2f %9.1f %9.2f %8.2f", lab, t * 1e3, (double)n / t / 1e6, gbs, gbs / mc);
        if (tms[k] > 0)
            printf(" %9.2f %9.1f %8.2f\n", tms[k], (double)n / (tms[k] / 1e3) / 1e6, tms[k] / (t * 1e3));
        else
            printf(" %9s %9s %8s\n", "-", "-", "-");
        fflush(stdout);
    }
    /* LQ-Net's step beside the conv layer it belongs to: the weight
     * 512x512x3x3 is layer4's (input 32x7x7x512), the activation
     * 32x56x56x64 is layer1's input (64 -> 64 channels). */
    if (lq_ms[0] > 0 || lq_ms[1] > 0) {
        eq_backend *be = eq_backend_cpu_new(threads, &err);
        if (!be) {
            fprintf(stderr, "bench/quant: %s\n", err.msg);
            rc = 1;
        } else {
            struct {
                const char *what;
                int64_t n, h, c, k;
                double lq;
            } L[2] = {{"lqnet wt 512x512x3x3 vs layer4 conv (32x7x7x512)", 32, 7, 512, 512, lq_ms[0]},
                      {"lqnet fm 32x56x56x64 vs layer1 conv (64->64)", 32, 56, 64, 64, lq_ms[1]}};
            for (int i = 0; i < 2; i++) {
                if (L[i].lq <= 0) continue;
                double cv = s_conv(be, L[i].n, L[i].h, L[i].c, L[i].k, reps < 3 ? reps : 3);
                if (cv < 0) {
                    rc = 1;
                    continue;
                }
                printf("%s: lqnet train step %.2f ms, conv fwd+bwd %.2f ms: %.1f %% of the conv\n",
                       L[i].what, L[i].lq, cv * 1e3, 100.0 * L[i].lq / (cv * 1e3));
            }
            eq_backend_destroy(&be);
        }
    }
    free(x);
    free(dst);
    eq_pool_destroy(&pool);
    return rc;
}
