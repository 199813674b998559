/*
 * bench/small_loader.c -- the in-memory loaders' per-sample work (CIFAR-10
 * and Fashion-MNIST: pad, random crop, flip) on one core, eq's pipeline
 * beside torchvision's dataset __getitem__ with the same transforms, on
 * the same samples, in the same run.
 *
 *   bench/small_loader [--set cifar|fmnist|all] [--seconds S] [--rounds R]
 *                      [--fmnist DIR] [--no-torch] [--python PATH]
 *                      [--script PATH]
 *
 * cifar:  10,000 synthetic CIFAR-10 binary records (data_batch_1.bin
 *         layout, written to a temporary folder), RandomCrop(32, padding=4)
 *         + RandomHorizontalFlip (eq: aug padcrop, pad 4, the CIFAR
 *         configs' train pipeline).
 * fmnist: Fashion-MNIST's training set from DIR (default
 *         /usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist;
 *         skipped when absent), RandomCrop(28, padding=2) + flip (eq:
 *         configs/fashion-mnist.cfg's aug_train = padcrop, pad = 2).
 * eq:     eq_pipeline_sample on the calling thread (what each loader
 *         worker does per sample), uint8 HWC out.
 * torch:  bench/small_loader.py, what torchvision.datasets.CIFAR10 /
 *         FashionMNIST.__getitem__ does (Image.fromarray of the stored
 *         array, then the transforms), ended by np.asarray (uint8 HWC, the
 *         same output as eq's: the float conversion is the trainer's on
 *         both sides, see bench/stage), with torch set to one thread; it
 *         also reports the usual ToTensor() + Normalize() ending as a
 *         second row (more work than eq's sample: no ratio).
 * Rates are samples per CPU-second of the thread (eq,
 * CLOCK_THREAD_CPUTIME_ID) or process (python, time.process_time()) doing
 * the work, over R rounds of S seconds alternating eq and torchvision;
 * "ratio" is eq's rate over torchvision's (> 1: eq is faster).  The crops
 * and flips are random on both sides (different generators), so the
 * outputs are not compared here; tests/check_loader tests eq's against
 * references.
 */
#define _GNU_SOURCE /* mkdtemp */
#include "core/clock.h"
#include "loader/loader.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef EQ_BENCH_DIR
#define EQ_BENCH_DIR "bench"
#endif

#define CIFAR_N 10000

static double s_thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct rate {
    double n, wall, cpu;
} rate;

/* eq: samples for `seconds` of wall time on this thread. */
static int s_eq_run(eq_pipeline *p, size_t count, double seconds, uint64_t *epoch, rate *r)
{
    uint8_t out[32 * 32 * 3];
    eq_err err = {0};
    double t0 = eq_clock_sec(), c0 = s_thread_cpu(), t = t0;
    size_t n = 0;
    while (t - t0 < seconds) {
        for (int k = 0; k < 256; k++, n++) {
            size_t i = n % count;
            if (i == 0) ++*epoch;
            int32_t label;
            if (eq_pipeline_sample(p, NULL, *epoch, i, out, &label, NULL, &err) != EQ_OK) {
                fprintf(stderr, "bench/small_loader: %s\n", err.msg);
                return -1;
            }
        }
        t = eq_clock_sec();
    }
    r->n += (double)n;
    r->wall += t - t0;
    r->cpu += s_thread_cpu() - c0;
    return 0;
}

/* torchvision: one child run of `seconds`; reads the lines
 * "tv ENDING n=N wall=W cpu=C". */
static int s_tv_run(const char *python, const char *script, const char *set, const char *a1,
                    const char *a2, double seconds, rate r[2])
{
    char cmd[16384];
    int k = snprintf(cmd, sizeof cmd, "%s %s --set %s --seconds %g %s %s", python, script, set,
                     seconds, a1, a2);
    if (k < 0 || (size_t)k >= sizeof cmd) return -1;
    fflush(stdout);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[512];
    int got = 0;
    while (fgets(line, sizeof line, p)) {
        char end[32];
        double n, w, c;
        if (sscanf(line, "tv %31s n=%lf wall=%lf cpu=%lf", end, &n, &w, &c) == 4) {
            int t = strcmp(end, "uint8") != 0; /* 0: uint8, 1: tensor */
            r[t].n += n, r[t].wall += w, r[t].cpu += c;
            got++;
        } else {
            fputs(line, stdout);
        }
    }
    return pclose(p) == 0 && got == 2 ? 0 : -1;
}

static int s_write_cifar(const char *path)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    uint64_t s = 0x243f6a8885a308d3ull;
    uint8_t rec[3073];
    for (int i = 0; i < CIFAR_N; i++) {
        rec[0] = (uint8_t)(i % 10);
        for (int k = 1; k < 3073; k++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            rec[k] = (uint8_t)(s >> 56);
        }
        if (fwrite(rec, 1, sizeof rec, f) != sizeof rec) {
            fclose(f);
            return -1;
        }
    }
    return fclose(f);
}

static int s_bench(const char *set, const char *fmnist_dir, double seconds, int rounds, int torch,
                   const char *python, const char *script)
{
    eq_err err = {0};
    char dir[] = "/tmp/eq-bench-small-XXXXXX", path[4096], img[4096 + 64], lab[4096 + 64];
    eq_dataset *ds = NULL;
    uint32_t size, pad;
    const char *a1 = "", *a2 = "";
    int is_cifar = !strcmp(set, "cifar");
    if (is_cifar) {
        if (!mkdtemp(dir)) {
            perror("mkdtemp");
            return 1;
        }
        snprintf(path, sizeof path, "%s/data_batch_1.bin", dir);
        if (s_write_cifar(path) != 0) {
            fprintf(stderr, "bench/small_loader: cannot write %s: %s\n", path, strerror(errno));
            return 1;
        }
        const char *paths[1] = {path};
        ds = eq_dataset_open_cifar(EQ_DS_CIFAR10, paths, 1, &err);
        size = 32, pad = 4;
        snprintf(img, sizeof img, "--cifar %s", path);
        a1 = img;
    } else {
        ds = eq_dataset_open_mnist_dir(fmnist_dir, "train", &err);
        if (!ds) {
            printf("fmnist: skipped (%s)\n", err.msg);
            return 0;
        }
        size = 28, pad = 2;
        snprintf(img, sizeof img, "--images %s/train-images-idx3-ubyte.gz", fmnist_dir);
        snprintf(lab, sizeof lab, "--labels %s/train-labels-idx1-ubyte.gz", fmnist_dir);
        a1 = img, a2 = lab;
        if (access(img + 9, R_OK) != 0) { /* the peer reads the .gz files */
            printf("fmnist: torch side skipped (no %s)\n", img + 9);
            torch = 0;
        }
    }
    if (!ds) {
        fprintf(stderr, "bench/small_loader: %s\n", err.msg);
        return 1;
    }
    eq_pipeline_cfg cfg;
    eq_pipeline_cfg_default(&cfg, "train", size, 1, 1);
    cfg.aug = EQ_AUG_PADCROP;
    cfg.pad = pad;
    cfg.hflip = 1;
    eq_pipeline *p = eq_pipeline_new(ds, &cfg, 1, &err);
    if (!p) {
        fprintf(stderr, "bench/small_loader: %s\n", err.msg);
        eq_dataset_destroy(&ds);
        return 1;
    }
    size_t count = eq_dataset_size(ds);
    printf("%s: %zu samples %ux%u, pad %u crop + flip, one core, %d rounds of %g s each side\n",
           set, count, size, size, pad, rounds, seconds);
    rate eq = {0}, tv[2] = {{0}};
    uint64_t epoch = 0;
    int rc = 0;
    for (int r = 0; r < rounds && !rc; r++) {
        if (s_eq_run(p, count, seconds, &epoch, &eq) != 0) rc = 1;
        if (!rc && torch && s_tv_run(python, script, set, a1, a2, seconds, tv) != 0) {
            printf("  torchvision: not available (is python3-torchvision installed?)\n");
            torch = 0;
        }
    }
    if (!rc) {
        printf("  eq pipeline_sample             %8.0f samples/CPU-s  (%.0f /s wall)\n",
               eq.n / eq.cpu, eq.n / eq.wall);
        if (torch) {
            printf("  torchvision __getitem__ uint8  %8.0f samples/CPU-s  (%.0f /s wall)\n",
                   tv[0].n / tv[0].cpu, tv[0].n / tv[0].wall);
            printf("  torchvision + ToTensor+Normalize %6.0f samples/CPU-s  (%.0f /s wall)\n",
                   tv[1].n / tv[1].cpu, tv[1].n / tv[1].wall);
            printf("  ratio eq/torchvision = %.2f (per CPU-second; wall %.2f)\n",
                   (eq.n / eq.cpu) / (tv[0].n / tv[0].cpu), (eq.n / eq.wall) / (tv[0].n / tv[0].wall));
        }
    }
    fflush(stdout);
    eq_pipeline_destroy(&p);
    eq_dataset_destroy(&ds);
    if (is_cifar) {
        unlink(path);
        rmdir(dir);
    }
    return rc;
}

int main(int argc, char **argv)
{
    const char *only = "all", *python = "/usr/bin/python3", *script = EQ_BENCH_DIR "/small_loader.py";
    const char *fmnist = EQ_FASHION_MNIST_DIR;
    double seconds = 2.0;
    int rounds = 3, torch = 1;
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows through a pipe (tee) */
    static const struct option opts[] = {
        {"set", required_argument, 0, 'S'},     {"seconds", required_argument, 0, 'x'},
        {"rounds", required_argument, 0, 'r'},  {"fmnist", required_argument, 0, 'f'},
        {"no-torch", no_argument, 0, 'n'},      {"python", required_argument, 0, 'p'},
        {"script", required_argument, 0, 's'},  {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "S:x:r:f:np:s:h", opts, NULL)) != -1) {
        char *end = NULL;
        switch (o) {
        case 'S': only = optarg; break;
        case 'x':
            seconds = strtod(optarg, &end);
            if (*end || !(seconds > 0.0 && seconds <= 600.0)) {
                fprintf(stderr, "--seconds: expected (0, 600], got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'r':
            rounds = (int)strtol(optarg, &end, 10);
            if (*end || rounds < 1 || rounds > 100) {
                fprintf(stderr, "--rounds: expected 1..100, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'f': fmnist = optarg; break;
        case 'n': torch = 0; break;
        case 'p': python = optarg; break;
        case 's': script = optarg; break;
        default:
            fprintf(stderr,
                    "usage: %s [--set cifar|fmnist|all] [--seconds S] [--rounds R] [--fmnist DIR] "
                    "[--no-torch] [--python PATH] [--script PATH]\n",
                    argv[0]);
            return o == 'h' ? 0 : 2;
        }
    }
    static const char *const sets[] = {"cifar", "fmnist"};
    int found = 0, rc = 0;
    for (int i = 0; i < 2; i++)
        if (!strcmp(only, "all") || !strcmp(only, sets[i])) {
            found = 1;
            rc |= s_bench(sets[i], fmnist, seconds, rounds, torch, python, script);
        }
    if (!found) {
        fprintf(stderr, "unknown set '%s' (cifar, fmnist, all)\n", only);
        return 2;
    }
    return rc;
}
