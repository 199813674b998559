/*
 * bench/allreduce.c -- the CPU data-parallel all-reduce: eq's ring over
 * ZeroMQ (trainer/dist.h, eq_comm_ring_*) against torch.distributed's gloo
 * backend, two processes on this machine, same gradient sizes, same
 * buckets, in one run.
 *
 *   bench/allreduce [--model resnet20|resnet18|all] [--iters N]
 *                   [--rounds R] [--no-torch] [--python PATH] [--script PATH]
 *
 * Gradients: ResNet-20 (CIFAR, 16/32/64 channels with 1x1 downsampling:
 * 272,474 floats, 1.04 MiB) and torchvision's ResNet-18 (11,689,512
 * floats, 44.6 MiB).  Two schedules:
 *   buckets  what a training step does: the gradient cut into buckets of
 *            1 MiB first, then 25 MiB (eq-trainer's bucket_mb default and
 *            its 1 MiB first bucket; DistributedDataParallel's
 *            bucket_cap_mb = 25 and its 1 MiB first bucket), all started,
 *            then all waited;
 *   flat     the whole gradient as one all-reduce.
 * Averaging as each does it for gradients: eq EQ_COMM_AVG (sum / 2), the
 * PyTorch side div_(2) then all_reduce(SUM) per bucket (DDP's default
 * hook), async_op=True for all buckets, then wait.
 * eq runs on tcp://127.0.0.1 (gloo's transport here: loopback TCP) and on
 * ipc:// (what `eqctl run --ranks` uses on one machine).  The PyTorch side
 * is bench/allreduce.py (via /usr/bin/python3; it starts its two ranks
 * with GLOO_SOCKET_IFNAME=lo and one intra-op thread each, as torchrun's
 * OMP_NUM_THREADS=1 does).
 *
 * Both sides first check one all-reduce of known values (rank r's element
 * i is a function of r and i) against the average computed locally
 * (within 1e-6: the sums are of two floats), then time --iters all-reduces
 * after that one.  Times are rank 0's: wall time of one all-reduce of the
 * schedule, best over all iterations and rounds, and rank 0's process CPU
 * time for it (all its threads: eq's communication thread, gloo's).
 * Rounds alternate eq and PyTorch.  "ratio" is gloo's time over eq's
 * (> 1: eq is faster).  The machine is shared: only the same-run ratio
 * means anything.
 */
#define _GNU_SOURCE
#include "core/clock.h"
#include "trainer/dist.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#ifndef EQ_BENCH_DIR
#define EQ_BENCH_DIR "bench"
#endif

typedef struct model {
    const char *name;
    size_t n; /* floats */
} model;

static const model MODELS[] = {
    {"resnet20", 272474},
    {"resnet18", 11689512},
};
#define NMODELS (sizeof MODELS / sizeof MODELS[0])
#define FIRST_BUCKET (1u << 18)  /* floats: 1 MiB */
#define BUCKET (25u << 18)       /* floats: 25 MiB */
#define MAXB 64

static const char *const SCHEDULES[] = {"buckets", "flat"};
static const char *const TRANSPORTS[] = {"tcp", "ipc"};

/* Bucket sizes of a schedule; returns their count. */
static int s_buckets(size_t n, int sched, size_t *out)
{
    if (sched == 1) {
        out[0] = n;
        return 1;
    }
    int k = 0;
    size_t left = n, cap = FIRST_BUCKET;
    while (left > 0 && k < MAXB) {
        out[k] = left < cap ? left : cap;
        left -= out[k++];
        cap = BUCKET;
    }
    return k;
}

/* Rank r's element i (the same formula in bench/allreduce.py). */
static float s_val(int r, uint64_t i)
{
    return (float)((int64_t)((i * 2654435761u + (uint64_t)r * 97u) % 2001u) - 1000) / 1000.0f;
}

static double s_cpu_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Results of rank 0, per model x schedule. */
typedef struct res {
    double wall, cpu; /* ms, best so far; 0: none */
} res;

static int s_line(int fd, char *buf, size_t cap)
{
    size_t k = 0;
    while (k + 1 < cap) {
        ssize_t r = read(fd, buf + k, 1);
        if (r <= 0) return -1;
        if (buf[k] == '\n') break;
        k++;
    }
    buf[k] = 0;
    return 0;
}

/* One rank's whole run: listen, swap endpoints with the other rank over
 * the pipes, connect, then per model and schedule: check, time.  Rank 0
 * fills r[model][sched]. */
static int s_rank(int rank, int rfd, int wfd, int transport, const int *sel, int iters,
                  res r[NMODELS][2])
{
    eq_err e = {0};
    void *zctx = zmq_ctx_new();
    char ep[128];
    if (transport == 0)
        snprintf(ep, sizeof ep, "tcp://127.0.0.1:*");
    else
        snprintf(ep, sizeof ep, "ipc:///tmp/eq-bench-allreduce-%ld-%d", (long)getpid(), rank);
    eq_comm_ring *ring = eq_comm_ring_listen(zctx, ep, 60000, &e);
    if (!ring) {
        fprintf(stderr, "rank %d: listen: %s\n", rank, e.msg);
        return 1;
    }
    eq_dist_world w = {.rank = rank, .world = 2};
    snprintf(w.ep[rank], EQ_DIST_EP_CAP, "%s", eq_comm_ring_endpoint(ring));
    char line[EQ_DIST_EP_CAP + 2];
    snprintf(line, sizeof line, "%s\n", w.ep[rank]);
    if (write(wfd, line, strlen(line)) != (ssize_t)strlen(line) || s_line(rfd, line, sizeof line) != 0) {
        fprintf(stderr, "rank %d: endpoint exchange failed\n", rank);
        return 1;
    }
    snprintf(w.ep[1 - rank], EQ_DIST_EP_CAP, "%s", line);
    eq_comm *c = eq_comm_ring_connect(&ring, &w, &e);
    if (!c) {
        fprintf(stderr, "rank %d: connect: %s\n", rank, e.msg);
        return 1;
    }
    int rc = 0;
    float *bufs[NMODELS][2] = {{0}};
    for (size_t m = 0; m < NMODELS && !rc; m++) {
        if (!sel[m]) continue;
        for (int s = 0; s < 2 && !rc; s++) {
            size_t n = MODELS[m].n, sz[MAXB];
            int nb = s_buckets(n, s, sz), ids[MAXB];
            float *x = bufs[m][s] = malloc(n * sizeof *x);
            if (!x) {
                fprintf(stderr, "out of memory\n");
                rc = 1;
                break;
            }
            for (size_t i = 0; i < n; i++) x[i] = s_val(rank, i);
            size_t off = 0;
            for (int b = 0; b < nb; b++) {
                eq_comm_seg seg = {x + off, sz[b]};
                off += sz[b];
                if ((ids[b] = eq_comm_bucket_new(c, &seg, 1, EQ_COMM_AVG, &e)) < 0) {
                    fprintf(stderr, "rank %d: bucket: %s\n", rank, e.msg);
                    rc = 1;
                    break;
                }
            }
            for (int it = -1; it < iters && !rc; it++) {
                double t0 = eq_clock_sec(), c0 = s_cpu_sec();
                for (int b = 0; b < nb && !rc; b++)
                    if (eq_comm_start(c, ids[b], &e) != EQ_OK) rc = 1;
                for (int b = 0; b < nb && !rc; b++)
                    if (eq_comm_wait(c, ids[b], &e) != EQ_OK) rc = 1;
                double wall = (eq_clock_sec() - t0) * 1e3, cpu = (s_cpu_sec() - c0) * 1e3;
                if (rc) {
                    fprintf(stderr, "rank %d: all-reduce: %s\n", rank, e.msg);
                    break;
                }
                if (it < 0) { /* the first one is the check */
                    double worst = 0.0;
                    for (size_t i = 0; i < n; i++) {
                        double want = ((double)s_val(0, i) + (double)s_val(1, i)) / 2.0;
                        double d = fabs((double)x[i] - want);
                        if (d > worst) worst = d;
                    }
                    if (rank == 0)
                        printf("  check eq %s %s %s: max |result - average| = %.3g %s\n",
                               TRANSPORTS[transport], MODELS[m].name, SCHEDULES[s], worst,
                               worst <= 1e-6 ? "ok" : "FAIL (> 1e-6)");
                    if (worst > 1e-6) rc = 1;
                    continue;
                }
                if (rank == 0) {
                    res *q = &r[m][s];
                    if (q->wall == 0.0 || wall < q->wall) q->wall = wall;
                    if (q->cpu == 0.0 || cpu < q->cpu) q->cpu = cpu;
                }
            }
        }
    }
    eq_comm_destroy(&c);
    for (size_t m = 0; m < NMODELS; m++) free(bufs[m][0]), free(bufs[m][1]);
    zmq_ctx_term(zctx);
    fflush(stdout);
    return rc;
}

/* One eq round on a transport: fork rank 1, be rank 0. */
static int s_eq_round(int transport, const int *sel, int iters, res r[NMODELS][2])
{
    int a[2], b[2]; /* a: rank 0 -> 1, b: 1 -> 0 */
    if (pipe(a) != 0 || pipe(b) != 0) {
        perror("pipe");
        return 1;
    }
    fflush(stdout);
    pid_t pid = fork(); /* before any ZeroMQ context exists */
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        close(a[1]), close(b[0]);
        res dummy[NMODELS][2];
        memset(dummy, 0, sizeof dummy);
        _exit(s_rank(1, a[0], b[1], transport, sel, iters, dummy));
    }
    close(a[0]), close(b[1]);
    int rc = s_rank(0, b[0], a[1], transport, sel, iters, r);
    close(a[1]), close(b[0]);
    int st = 0;
    if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) rc = 1;
    return rc;
}

/* One PyTorch round: bench/allreduce.py runs both ranks and prints rank
 * 0's lines. */
static int s_torch_round(const char *python, const char *script, const int *sel, int iters,
                         res r[NMODELS][2], int *bad)
{
    char cmd[4096];
    int k = snprintf(cmd, sizeof cmd, "%s %s --iters %d", python, script, iters);
    for (size_t m = 0; m < NMODELS; m++)
        for (int s = 0; sel[m] && s < 2; s++) {
            size_t sz[MAXB];
            int nb = s_buckets(MODELS[m].n, s, sz);
            k += snprintf(cmd + k, sizeof cmd - (size_t)k, " --case %s:%s:", MODELS[m].name,
                          SCHEDULES[s]);
            for (int i = 0; i < nb; i++)
                k += snprintf(cmd + k, sizeof cmd - (size_t)k, "%s%zu", i ? "+" : "", sz[i]);
        }
    fflush(stdout);
    FILE *p = popen(cmd, "r");
    if (!p) {
        perror("popen");
        return 1;
    }
    char line[512];
    int got = 0;
    while (fgets(line, sizeof line, p)) {
        char name[32], sched[16];
        double wall, cpu, diff;
        if (sscanf(line, "check torch %31[^:]:%15s maxdiff=%lf", name, sched, &diff) == 3) {
            printf("  check torch gloo %s %s: max |result - average| = %.3g %s\n", name, sched, diff,
                   diff <= 1e-6 ? "ok" : "FAIL (> 1e-6)");
            if (diff > 1e-6) *bad = 1;
        } else if (sscanf(line, "torch %31[^:]:%15s wall_ms=%lf cpu_ms=%lf", name, sched, &wall,
                          &cpu) == 4) {
            for (size_t m = 0; m < NMODELS; m++)
                for (int s = 0; s < 2; s++)
                    if (!strcmp(name, MODELS[m].name) && !strcmp(sched, SCHEDULES[s])) {
                        res *q = &r[m][s];
                        if (q->wall == 0.0 || wall < q->wall) q->wall = wall;
                        if (q->cpu == 0.0 || cpu < q->cpu) q->cpu = cpu;
                        got = 1;
                    }
        } else {
            fputs(line, stdout);
        }
    }
    int rc = pclose(p);
    return rc != 0 || !got;
}

int main(int argc, char **argv)
{
    const char *only = "all", *python = "/usr/bin/python3", *script = EQ_BENCH_DIR "/allreduce.py";
    int iters = 10, rounds = 2, torch = 1;
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows through a pipe (tee) */
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},  {"iters", required_argument, 0, 'i'},
        {"rounds", required_argument, 0, 'r'}, {"no-torch", no_argument, 0, 'n'},
        {"python", required_argument, 0, 'p'}, {"script", required_argument, 0, 's'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "m:i:r:np:s:h", opts, NULL)) != -1) {
        char *end = NULL;
        long v;
        switch (o) {
        case 'm': only = optarg; break;
        case 'i':
        case 'r':
            v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > 1000) {
                fprintf(stderr, "--%s: expected 1..1000, got '%s'\n", o == 'i' ? "iters" : "rounds",
                        optarg);
                return 2;
            }
            *(o == 'i' ? &iters : &rounds) = (int)v;
            break;
        case 'n': torch = 0; break;
        case 'p': python = optarg; break;
        case 's': script = optarg; break;
        default:
            fprintf(stderr,
                    "usage: %s [--model resnet20|resnet18|all] [--iters N] [--rounds R] "
                    "[--no-torch] [--python PATH] [--script PATH]\n",
                    argv[0]);
            return o == 'h' ? 0 : 2;
        }
    }
    int sel[NMODELS] = {0}, found = 0;
    for (size_t m = 0; m < NMODELS; m++)
        if (!strcmp(only, "all") || !strcmp(only, MODELS[m].name)) sel[m] = found = 1;
    if (!found) {
        fprintf(stderr, "unknown model '%s' (resnet20, resnet18, all)\n", only);
        return 2;
    }
    res eq[2][NMODELS][2], th[NMODELS][2];
    memset(eq, 0, sizeof eq);
    memset(th, 0, sizeof th);
    int rc = 0, have_torch = torch, bad = 0;
    printf("all-reduce (average) over 2 processes, %d rounds of %d iterations\n", rounds, iters);
    for (int round = 0; round < rounds && !rc; round++) {
        for (int t = 0; t < 2 && !rc; t++) rc = s_eq_round(t, sel, iters, eq[t]);
        if (have_torch && !rc) {
            if (s_torch_round(python, script, sel, iters, th, &bad) != 0) {
                printf("  torch gloo: not available (is python3-torch installed?)\n");
                have_torch = 0;
            }
            if (bad) rc = 1;
        }
    }
    if (rc) {
        printf("failed: no timings\n");
        return 1;
    }
    for (size_t m = 0; m < NMODELS; m++)
        for (int s = 0; sel[m] && s < 2; s++) {
            size_t sz[MAXB];
            int nb = s_buckets(MODELS[m].n, s, sz);
            double mb = (double)MODELS[m].n * 4.0 / (1 << 20);
            printf("%s %s (%.2f MiB, %d bucket%s):\n", MODELS[m].name, SCHEDULES[s], mb, nb,
                   nb > 1 ? "s" : "");
            for (int t = 0; t < 2; t++)
                printf("  eq ring %-4s wall %8.2f ms  cpu %8.2f ms  (%.2f GB/s of gradient)\n",
                       TRANSPORTS[t], eq[t][m][s].wall, eq[t][m][s].cpu,
                       (double)MODELS[m].n * 4.0 / 1e6 / eq[t][m][s].wall);
            if (!have_torch) continue;
            printf("  torch gloo   wall %8.2f ms  cpu %8.2f ms  (%.2f GB/s of gradient)\n",
                   th[m][s].wall, th[m][s].cpu, (double)MODELS[m].n * 4.0 / 1e6 / th[m][s].wall);
            printf("  ratio gloo/eq = %.2f on tcp, %.2f on ipc (wall; rank 0 CPU time %.2f, %.2f)\n",
                   th[m][s].wall / eq[0][m][s].wall, th[m][s].wall / eq[1][m][s].wall,
                   th[m][s].cpu / eq[0][m][s].cpu, th[m][s].cpu / eq[1][m][s].cpu);
        }
    return 0;
}
