/*
 * bench/ckpt.c -- checkpoint save and load of a ResNet-18 training state
 * (torchvision's resnet18, 1000 classes, with SGD momentum buffers: ~90
 * MB), eq's safetensors checkpoints (trainer/checkpoint.h) beside
 * torch.save / torch.load of the same tensors, in the same run.
 *
 *   bench/ckpt [--iters N] [--rounds R] [--dir DIR] [--no-torch]
 *              [--python PATH] [--script PATH]
 *
 * eq:    eq_checkpoint_save (model + optimiser + run state, written to a
 *        temporary file, fsync'd, renamed over the target, directory
 *        fsync'd) and eq_checkpoint_load (validates every name, dtype,
 *        shape and that no float is NaN or infinite, then copies into the
 *        model and optimiser).
 * torch: bench/ckpt.py (via /usr/bin/python3, one thread) reads eq's file
 *        itself (the safetensors layout: 8-byte header length, JSON header,
 *        raw little-endian data), loads the model tensors into
 *        torchvision's resnet18 with load_state_dict(strict=True) and the
 *        momentum buffers into torch.optim.SGD's state, then times
 *          save         torch.save({"model", "optimizer"}) (no fsync: what
 *                       most scripts do)
 *          save_atomic  the same written to a temporary file, flushed,
 *                       os.fsync'd, os.replace'd and the directory fsync'd
 *                       (eq's guarantee: a crash leaves the old file or
 *                       the new one)
 *          load         torch.load + model.load_state_dict +
 *                       optimizer.load_state_dict
 * Checks before timing: eq's load of its own file followed by a second
 * save gives a byte-identical file; the torch side's strict load of eq's
 * tensors succeeds and its torch.load gives back every tensor bitwise.
 * Times are the best of --iters after one warm-up, over --rounds rounds
 * alternating eq and PyTorch (wall time: the fsyncs wait for the disk;
 * CPU time beside it).  "ratio" is PyTorch's time over eq's (> 1: eq is
 * faster), save against save_atomic (the same guarantee) and against plain
 * save.  The files go to DIR (default: a new folder under /tmp), removed
 * at the end.
 */
#define _GNU_SOURCE /* mkdtemp */
#include "core/clock.h"
#include "trainer/checkpoint.h"
#include "trainer/model.h"
#include "trainer/optim.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#ifndef EQ_BENCH_DIR
#define EQ_BENCH_DIR "bench"
#endif

static double s_cpu_sec(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static int s_same_file(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    char ba[65536], bb[65536];
    while (same) {
        size_t na = fread(ba, 1, sizeof ba, fa), nb = fread(bb, 1, sizeof bb, fb);
        if (na != nb || memcmp(ba, bb, na)) same = 0;
        if (na == 0) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

typedef struct best {
    double wall, cpu; /* ms; 0: none */
} best;

static void s_keep(best *b, double wall, double cpu)
{
    if (b->wall == 0.0 || wall < b->wall) b->wall = wall;
    if (b->cpu == 0.0 || cpu < b->cpu) b->cpu = cpu;
}

/* One torch round: returns 0 and fills t[0..2] (save, save_atomic, load). */
static int s_torch_round(const char *python, const char *script, const char *file, const char *dir,
                         int iters, best t[3], int *bad)
{
    char cmd[16384];
    int k = snprintf(cmd, sizeof cmd, "%s %s --eq %s --dir %s --iters %d", python, script, file,
                     dir, iters);
    if (k < 0 || (size_t)k >= sizeof cmd) return -1;
    fflush(stdout);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[1024];
    int got = 0;
    static const char *const names[3] = {"save", "save_atomic", "load"};
    while (fgets(line, sizeof line, p)) {
        char what[32];
        double w, c;
        if (!strncmp(line, "check ", 6)) {
            printf("  %s", line);
            if (!strstr(line, " ok")) *bad = 1;
        } else if (sscanf(line, "torch %31s wall_ms=%lf cpu_ms=%lf", what, &w, &c) == 3) {
            for (int i = 0; i < 3; i++)
                if (!strcmp(what, names[i])) s_keep(&t[i], w, c), got++;
        } else {
            fputs(line, stdout);
        }
    }
    return pclose(p) == 0 && got == 3 ? 0 : -1;
}

int main(int argc, char **argv)
{
    const char *python = "/usr/bin/python3", *script = EQ_BENCH_DIR "/ckpt.py", *user_dir = NULL;
    int iters = 3, rounds = 2, torch = 1;
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows through a pipe (tee) */
    static const struct option opts[] = {
        {"iters", required_argument, 0, 'i'},  {"rounds", required_argument, 0, 'r'},
        {"dir", required_argument, 0, 'd'},    {"no-torch", no_argument, 0, 'n'},
        {"python", required_argument, 0, 'p'}, {"script", required_argument, 0, 's'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "i:r:d:np:s:h", opts, NULL)) != -1) {
        char *end = NULL;
        long v;
        switch (o) {
        case 'i':
        case 'r':
            v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > 100) {
                fprintf(stderr, "--%s: expected 1..100, got '%s'\n", o == 'i' ? "iters" : "rounds",
                        optarg);
                return 2;
            }
            *(o == 'i' ? &iters : &rounds) = (int)v;
            break;
        case 'd': user_dir = optarg; break;
        case 'n': torch = 0; break;
        case 'p': python = optarg; break;
        case 's': script = optarg; break;
        default:
            fprintf(stderr,
                    "usage: %s [--iters N] [--rounds R] [--dir DIR] [--no-torch] [--python PATH] "
                    "[--script PATH]\n",
                    argv[0]);
            return o == 'h' ? 0 : 2;
        }
    }
    char tmpl[] = "/tmp/eq-bench-ckpt-XXXXXX", sub[4096], file[4160], file2[4160];
    const char *dir;
    if (user_dir) {
        snprintf(sub, sizeof sub, "%s/eq-bench-ckpt-XXXXXX", user_dir);
        dir = mkdtemp(sub);
    } else {
        dir = mkdtemp(tmpl);
    }
    if (!dir) {
        fprintf(stderr, "bench/ckpt: cannot create a folder: %s\n", strerror(errno));
        return 1;
    }
    snprintf(file, sizeof file, "%s/eq.safetensors", dir);
    snprintf(file2, sizeof file2, "%s/eq2.safetensors", dir);

    /* torchvision's resnet18 with SGD momentum state from one step */
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(1, &err);
    eq_model_cfg mc;
    eq_model_quant_cfg wt, fm;
    eq_optim_cfg oc;
    eq_config_section ms[EQ_MODEL_CONFIG_NSECTIONS], os[EQ_OPTIM_CONFIG_NSECTIONS];
    eq_model_config_sections(&mc, &wt, &fm, ms);
    eq_optim_config_sections(&oc, NULL, os);
    eq_model *m = NULL;
    eq_optim *opt = NULL;
    int rc = 1;
    const int64_t n = 2, s = 32;
    float x[2 * 32 * 32 * 3];
    int32_t y[2] = {3, 7};
    uint64_t r = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        x[i] = (float)(r >> 40) / 16777216.0f - 0.5f;
    }
    float loss;
    if (!be || eq_config_defaults(ms, EQ_MODEL_CONFIG_NSECTIONS, &err) != EQ_OK ||
        eq_config_defaults(os, 1, &err) != EQ_OK)
        goto fail;
    snprintf(mc.arch, sizeof mc.arch, "torch-resnet18");
    mc.nkeyword = 0;
    mc.width_alpha = 1.0;
    mc.num_classes = 1000;
    oc.lr = 0.01, oc.momentum = 0.9, oc.nesterov = true, oc.weight_decay = 1e-4;
    if (!(m = eq_model_new(be, &mc, &wt, &fm, n, s, s, &err)) || !(opt = eq_optim_new(m, &oc, &err)) ||
        eq_model_forward(m, x, true, &err) != EQ_OK ||
        eq_model_loss(m, y, NULL, NULL, 0.0f, &loss, &err) != EQ_OK ||
        eq_model_backward(m, NULL, &err) != EQ_OK || eq_optim_step(opt, oc.lr, &err) != EQ_OK)
        goto fail;
    eq_ckpt_run run = {.epoch = 1, .step = 100, .metric = NAN};
    if (eq_checkpoint_save(file, m, opt, &run, &err) != EQ_OK ||
        eq_checkpoint_load(file, m, opt, NULL, NULL, &err) != EQ_OK ||
        eq_checkpoint_save(file2, m, opt, &run, &err) != EQ_OK)
        goto fail;
    int same = s_same_file(file, file2);
    unlink(file2);
    FILE *f = fopen(file, "rb");
    long size = -1;
    if (f && fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (f) fclose(f);
    printf("resnet18 + SGD momentum checkpoint: %.1f MB, %d rounds of best of %d, folder %s\n",
           (double)size / 1e6, rounds, iters, dir);
    printf("  check eq: load then save again gives the same bytes: %s\n", same ? "ok" : "FAIL");
    if (!same) goto fail_quiet;

    best es = {0}, el = {0}, t[3] = {{0}};
    int bad = 0;
    for (int round = 0; round < rounds; round++) {
        for (int it = -1; it < iters; it++) {
            double t0 = eq_clock_sec(), c0 = s_cpu_sec();
            if (eq_checkpoint_save(file, m, opt, &run, &err) != EQ_OK) goto fail;
            double t1 = eq_clock_sec(), c1 = s_cpu_sec();
            if (eq_checkpoint_load(file, m, opt, NULL, NULL, &err) != EQ_OK) goto fail;
            double t2 = eq_clock_sec(), c2 = s_cpu_sec();
            if (it < 0) continue;
            s_keep(&es, (t1 - t0) * 1e3, (c1 - c0) * 1e3);
            s_keep(&el, (t2 - t1) * 1e3, (c2 - c1) * 1e3);
        }
        if (torch && s_torch_round(python, script, file, dir, iters, t, &bad) != 0) {
            printf("  torch: not available or failed (python3-torch, torchvision?)\n");
            torch = 0;
        }
        if (bad) goto fail_quiet;
    }
    printf("  eq save (atomic, fsync)   wall %8.1f ms  cpu %7.1f ms\n", es.wall, es.cpu);
    if (torch) {
        printf("  torch save_atomic         wall %8.1f ms  cpu %7.1f ms\n", t[1].wall, t[1].cpu);
        printf("  torch save (no fsync)     wall %8.1f ms  cpu %7.1f ms\n", t[0].wall, t[0].cpu);
    }
    printf("  eq load (validated)       wall %8.1f ms  cpu %7.1f ms\n", el.wall, el.cpu);
    if (torch) {
        printf("  torch load                wall %8.1f ms  cpu %7.1f ms\n", t[2].wall, t[2].cpu);
        printf("  ratio torch/eq: save %.2f against save_atomic, %.2f against plain save; "
               "load %.2f (wall; CPU %.2f, %.2f, %.2f)\n",
               t[1].wall / es.wall, t[0].wall / es.wall, t[2].wall / el.wall, t[1].cpu / es.cpu,
               t[0].cpu / es.cpu, t[2].cpu / el.cpu);
    }
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "bench/ckpt: %s\n", err.msg);
fail_quiet:
    rc = 1;
out:
    unlink(file);
    unlink(file2);
    rmdir(dir);
    eq_optim_destroy(&opt);
    eq_model_destroy(&m);
    eq_backend_destroy(&be);
    return rc;
}
