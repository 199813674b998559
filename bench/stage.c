/*
 * bench/stage.c -- input staging: a batch of uint8 NHWC images (what the
 * loader delivers) to the network's normalised fp32 input, plain and with
 * mixup, on eq's CPU backend (eq_backend_stage_images, trainer/backend.h)
 * and the same conversion as a PyTorch user writes it, same batch, same
 * thread count, in one run.
 *
 *   bench/stage [--shape imagenet|cifar|fmnist|all] [--threads T]
 *               [--rounds R] [--iters N] [--no-torch] [--python PATH]
 *               [--script PATH]
 *
 * Shapes: imagenet 256 x 224 x 224 x 3 (38.5 M pixels), cifar 128 x 32 x
 * 32 x 3, fmnist 256 x 28 x 28 x 1, with their usual mean / std.  Mixup is
 * the original's (Fixup's mixup_data): one lambda for the batch and a
 * random permutation, lam * x + (1 - lam) * x[perm] after normalising;
 * eq gets the same permutation as its partners and lambda for every image.
 * The PyTorch side (bench/stage.py via /usr/bin/python3, one child kept for
 * the whole run, torch.set_num_threads(T)) times four formulations of the
 * same thing on the same bytes (its docstring lists them); eq's output
 * buffer is allocated once, as the trainer's slots are.
 *
 * Before any timing both sides' results are compared element by element
 * over the whole batch (eq's outputs go to a temporary folder, the child
 * reads them): a formulation that differs by more than 1e-5 (the values
 * are within about +-3, so that is tens of ulps) fails the run.
 *
 * Times: R rounds (default 2) alternating eq and PyTorch, each the best
 * of N calls after one warm-up (default: about 10 M pixels' worth, at
 * least 3);
 * each side's best over all rounds, in wall time and in process CPU time
 * (all threads; a busy machine disturbs it less).  "ratio" is PyTorch's
 * fastest formulation's time over eq's (> 1: eq is faster), in CPU time
 * and wall time.
 */
#define _GNU_SOURCE /* mkdtemp */
#include "core/clock.h"
#include "trainer/backend.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef EQ_BENCH_DIR
#define EQ_BENCH_DIR "bench"
#endif

typedef struct shape {
    const char *name;
    int64_t n, h, w, c;
    float mean[3], std[3];
} shape;

static const shape SHAPES[] = {
    {"imagenet", 256, 224, 224, 3, {0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}},
    {"cifar", 128, 32, 32, 3, {0.4914f, 0.4822f, 0.4465f}, {0.2470f, 0.2435f, 0.2616f}},
    {"fmnist", 256, 28, 28, 1, {0.2860f}, {0.3530f}},
};
#define NSHAPES (sizeof SHAPES / sizeof SHAPES[0])
#define LAMBDA 0.3f

static double s_cpu_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t s_next(uint64_t *s)
{
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return *s;
}

/* The PyTorch child: bench/stage.py --serve on two pipes. */
typedef struct s_child {
    pid_t pid;
    FILE *to, *from;
} s_child;

static int s_child_start(s_child *ch, const char *python, const char *script, const char *dir,
                         const shape *S, int threads)
{
    int in[2], out[2];
    if (pipe(in) != 0) return -1;
    if (pipe(out) != 0) {
        close(in[0]), close(in[1]);
        return -1;
    }
    char shp[128], mean[64], std[64], th[16], lam[32];
    snprintf(shp, sizeof shp, "%lld,%lld,%lld,%lld", (long long)S->n, (long long)S->h,
             (long long)S->w, (long long)S->c);
    if (S->c == 3) {
        snprintf(mean, sizeof mean, "%.9g,%.9g,%.9g", S->mean[0], S->mean[1], S->mean[2]);
        snprintf(std, sizeof std, "%.9g,%.9g,%.9g", S->std[0], S->std[1], S->std[2]);
    } else {
        snprintf(mean, sizeof mean, "%.9g", S->mean[0]);
        snprintf(std, sizeof std, "%.9g", S->std[0]);
    }
    snprintf(th, sizeof th, "%d", threads);
    snprintf(lam, sizeof lam, "%.9g", LAMBDA);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[0]), close(in[1]), close(out[0]), close(out[1]);
        execl(python, python, script, "--serve", "--dir", dir, "--shape", shp, "--mean", mean,
              "--std", std, "--threads", th, "--lam", lam, (char *)NULL);
        fprintf(stderr, "bench/stage: cannot run %s: %s\n", python, strerror(errno));
        _exit(127);
    }
    close(in[0]), close(out[1]);
    ch->pid = pid;
    ch->to = fdopen(in[1], "w");
    ch->from = fdopen(out[0], "r");
    return ch->to && ch->from ? 0 : -1;
}

static int s_child_stop(s_child *ch)
{
    int st = 0;
    if (ch->to) fclose(ch->to);
    if (ch->from) fclose(ch->from);
    ch->to = ch->from = NULL;
    if (ch->pid > 0 && waitpid(ch->pid, &st, 0) < 0) return -1;
    ch->pid = 0;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

/* Best times of the PyTorch formulations, per mode (0 plain, 1 mixup). */
#define MAXV 8
typedef struct s_torch {
    int nv;
    char name[MAXV][32];
    double wall[MAXV][2], cpu[MAXV][2]; /* ms, best so far (0: none) */
} s_torch;

static int s_torch_slot(s_torch *t, const char *name)
{
    for (int i = 0; i < t->nv; i++)
        if (!strcmp(t->name[i], name)) return i;
    if (t->nv == MAXV) return -1;
    snprintf(t->name[t->nv], sizeof t->name[0], "%s", name);
    return t->nv++;
}

/* Send a command, read lines until "done"; "check"/"torch" lines parsed.
 * Returns 0, or -1 when the child failed or a check failed. */
static int s_child_cmd(s_child *ch, const char *cmd, s_torch *t, int *bad)
{
    fprintf(ch->to, "%s\n", cmd);
    fflush(ch->to);
    char line[512];
    while (fgets(line, sizeof line, ch->from)) {
        char v[32], mode[16];
        double a, b;
        if (!strcmp(line, "done\n")) return 0;
        if (sscanf(line, "check %31s %15s maxdiff=%lf", v, mode, &a) == 3) {
            int ok = a <= 1e-5;
            printf("  check torch %-10s %-5s max |torch - eq| = %.3g %s\n", v, mode, a,
                   ok ? "ok" : "FAIL (> 1e-5)");
            if (!ok) *bad = 1;
        } else if (sscanf(line, "torch %31s %15s wall_ms=%lf cpu_ms=%lf", v, mode, &a, &b) == 4) {
            int i = s_torch_slot(t, v), m = !strcmp(mode, "mixup");
            if (i < 0) continue;
            if (t->wall[i][m] == 0.0 || a < t->wall[i][m]) t->wall[i][m] = a;
            if (t->cpu[i][m] == 0.0 || b < t->cpu[i][m]) t->cpu[i][m] = b;
        } else {
            fputs(line, stdout);
        }
    }
    return -1;
}

static int s_write(const char *dir, const char *name, const void *p, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "bench/stage: cannot write %s: %s\n", path, strerror(errno));
        if (f) fclose(f);
        return -1;
    }
    return 0;
}

static void s_rm(const char *dir)
{
    static const char *const names[] = {"src.u8", "perm.i32", "eq_plain.f32", "eq_mixup.f32"};
    char path[4096];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

static int s_bench(const shape *S, int threads, int rounds, int iters, int torch,
                   const char *python, const char *script)
{
    eq_err err = {0};
    const int64_t per = S->h * S->w * S->c, n = S->n;
    const size_t nb = (size_t)(n * per);
    if (iters <= 0) { /* about 10 M pixels per round, at least 3 calls */
        iters = (int)(10000000 / nb);
        if (iters < 3) iters = 3;
    }
    eq_backend *be = eq_backend_cpu_new(threads, &err);
    if (!be) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    uint8_t *host = malloc(nb);
    int32_t *perm = malloc((size_t)n * sizeof *perm);
    float *lam = malloc((size_t)n * sizeof *lam), *out = malloc(nb * sizeof *out);
    uint8_t *src = eq_backend_alloc(be, nb, &err);
    float *dst = src ? eq_backend_alloc(be, nb * sizeof *dst, &err) : NULL;
    int32_t *dperm = dst ? eq_backend_alloc(be, (size_t)n * sizeof *dperm, &err) : NULL;
    float *dlam = dperm ? eq_backend_alloc(be, (size_t)n * sizeof *dlam, &err) : NULL;
    if (!host || !perm || !lam || !out || !dlam) {
        fprintf(stderr, "bench/stage: out of memory (%s)\n", err.msg);
        return 1;
    }
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < nb; i++) host[i] = (uint8_t)(s_next(&s) >> 56);
    for (int64_t i = 0; i < n; i++) perm[i] = (int32_t)i, lam[i] = LAMBDA;
    for (int64_t i = n - 1; i > 0; i--) { /* Fisher-Yates: a random permutation */
        int64_t j = (int64_t)(s_next(&s) % (uint64_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    float scale[3], shift[3];
    for (int64_t c = 0; c < S->c; c++) { /* as eq-trainer computes them (trainer/train.c) */
        scale[c] = (float)(1.0 / (255.0 * S->std[c]));
        shift[c] = (float)(-S->mean[c] / S->std[c]);
    }
    int rc = 0;
    if (eq_backend_upload(be, src, host, nb, &err) != EQ_OK ||
        eq_backend_upload(be, dperm, perm, (size_t)n * sizeof *perm, &err) != EQ_OK ||
        eq_backend_upload(be, dlam, lam, (size_t)n * sizeof *lam, &err) != EQ_OK) {
        fprintf(stderr, "bench/stage: %s\n", err.msg);
        return 1;
    }
    printf("%s: %lld x %lld x %lld x %lld uint8 NHWC (%.1f M pixels), threads %d, %d rounds of "
           "best of %d\n",
           S->name, (long long)n, (long long)S->h, (long long)S->w, (long long)S->c,
           (double)nb / 1e6, threads, rounds, iters);

    s_child ch = {0};
    s_torch t = {0};
    char dir[] = "/tmp/eq-bench-stage-XXXXXX";
    int have_torch = 0, bad = 0;
    if (torch) {
        if (!mkdtemp(dir)) {
            perror("mkdtemp");
            return 1;
        }
        /* eq's results, for the child to compare with its own */
        int wrc = s_write(dir, "src.u8", host, nb) || s_write(dir, "perm.i32", perm, (size_t)n * 4);
        for (int m = 0; m < 2 && !wrc; m++) {
            if (eq_backend_stage_images(be, n, per, S->c, src, scale, shift, m ? dperm : NULL,
                                        m ? dlam : NULL, dst, &err) != EQ_OK ||
                eq_backend_download(be, out, dst, nb * sizeof *out, &err) != EQ_OK) {
                fprintf(stderr, "bench/stage: %s\n", err.msg);
                wrc = 1;
                break;
            }
            wrc = s_write(dir, m ? "eq_mixup.f32" : "eq_plain.f32", out, nb * sizeof *out);
        }
        if (wrc) {
            s_rm(dir);
            return 1;
        }
        if (s_child_start(&ch, python, script, dir, S, threads) == 0 &&
            s_child_cmd(&ch, "check", &t, &bad) == 0)
            have_torch = 1;
        s_rm(dir); /* the child has read everything it needs */
        if (!have_torch) {
            s_child_stop(&ch);
            printf("  torch: not available (is python3-torch installed?)\n");
        }
        if (bad) {
            printf("  results differ: not timing %s\n", S->name);
            s_child_stop(&ch);
            rc = 1;
            goto out;
        }
    }

    double ew[2] = {0, 0}, ec[2] = {0, 0};
    for (int r = 0; r < rounds; r++) {
        for (int m = 0; m < 2; m++)
            for (int it = -1; it < iters; it++) { /* one warm-up call */
                double t0 = eq_clock_sec(), c0 = s_cpu_sec();
                eq_status st = eq_backend_stage_images(be, n, per, S->c, src, scale, shift,
                                                       m ? dperm : NULL, m ? dlam : NULL, dst, &err);
                if (st == EQ_OK) st = eq_backend_synchronize(be, &err);
                double w = (eq_clock_sec() - t0) * 1e3, c = (s_cpu_sec() - c0) * 1e3;
                if (st != EQ_OK) {
                    fprintf(stderr, "bench/stage: %s\n", err.msg);
                    rc = 1;
                    goto out;
                }
                if (it < 0) continue;
                if (ew[m] == 0.0 || w < ew[m]) ew[m] = w;
                if (ec[m] == 0.0 || c < ec[m]) ec[m] = c;
            }
        if (have_torch) {
            char cmd[64];
            snprintf(cmd, sizeof cmd, "time %d", iters);
            if (s_child_cmd(&ch, cmd, &t, &bad) != 0) {
                printf("  torch child failed\n");
                have_torch = 0;
            }
        }
    }
    if (have_torch && s_child_stop(&ch) != 0) printf("  torch child exited with an error\n");
    static const char *const modes[2] = {"plain", "mixup"};
    for (int m = 0; m < 2; m++) {
        printf("  %-5s eq stage_images          wall %8.2f ms  cpu %8.2f ms  (%.0f M px/s)\n",
               modes[m], ew[m], ec[m], (double)nb / 1e3 / ew[m]);
        int best = -1;
        for (int i = 0; have_torch && i < t.nv; i++) {
            if (t.cpu[i][m] == 0.0) continue;
            printf("  %-5s torch %-18s wall %8.2f ms  cpu %8.2f ms  (%.0f M px/s)\n", modes[m],
                   t.name[i], t.wall[i][m], t.cpu[i][m], (double)nb / 1e3 / t.wall[i][m]);
            if (best < 0 || t.cpu[i][m] < t.cpu[best][m]) best = i;
        }
        if (best >= 0)
            printf("  %-5s ratio torch/eq = %.2f (CPU time, against torch %s; wall %.2f)\n",
                   modes[m], t.cpu[best][m] / ec[m], t.name[best], t.wall[best][m] / ew[m]);
    }
out:
    fflush(stdout);
    free(host), free(perm), free(lam), free(out);
    eq_backend_release(be, src), eq_backend_release(be, dst);
    eq_backend_release(be, dperm), eq_backend_release(be, dlam);
    eq_backend_destroy(&be);
    return rc;
}

int main(int argc, char **argv)
{
    const char *only = "all", *python = "/usr/bin/python3", *script = EQ_BENCH_DIR "/stage.py";
    int threads = 2, rounds = 2, iters = 0, torch = 1;
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows through a pipe (tee) */
    static const struct option opts[] = {
        {"shape", required_argument, 0, 'S'},   {"threads", required_argument, 0, 't'},
        {"rounds", required_argument, 0, 'r'},  {"iters", required_argument, 0, 'i'},
        {"no-torch", no_argument, 0, 'n'},      {"python", required_argument, 0, 'p'},
        {"script", required_argument, 0, 's'},  {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "S:t:r:i:np:s:h", opts, NULL)) != -1) {
        char *end = NULL;
        long v;
        switch (o) {
        case 'S': only = optarg; break;
        case 't':
        case 'r':
        case 'i':
            v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > 1000) {
                fprintf(stderr, "--%s: expected 1..1000, got '%s'\n",
                        o == 't' ? "threads" : o == 'r' ? "rounds" : "iters", optarg);
                return 2;
            }
            *(o == 't' ? &threads : o == 'r' ? &rounds : &iters) = (int)v;
            break;
        case 'n': torch = 0; break;
        case 'p': python = optarg; break;
        case 's': script = optarg; break;
        default:
            fprintf(stderr,
                    "usage: %s [--shape imagenet|cifar|fmnist|all] [--threads T] [--rounds R] "
                    "[--iters N] [--no-torch] [--python PATH] [--script PATH]\n",
                    argv[0]);
            return o == 'h' ? 0 : 2;
        }
    }
    int found = 0, rc = 0;
    for (size_t i = 0; i < NSHAPES; i++)
        if (!strcmp(only, "all") || !strcmp(only, SHAPES[i].name)) {
            found = 1;
            rc |= s_bench(&SHAPES[i], threads, rounds, iters, torch, python, script);
        }
    if (!found) {
        fprintf(stderr, "unknown shape '%s' (imagenet, cifar, fmnist, all)\n", only);
        return 2;
    }
    return rc;
}
