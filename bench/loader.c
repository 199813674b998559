/*
 * bench/loader.c -- images per CPU-second of eq's decode + augment on one
 * core, beside torchvision + PIL doing the same on the same files in the
 * same run.
 *
 *   bench/loader [--root DIR] [--size 224] [--seconds S] [--rounds R]
 *                [--classes N --per-class N] [--only LIST] [--no-torch]
 *                [--python PATH] [--script PATH] [--json]
 *   bench/loader --synth DIR [--classes N --per-class N]    (write a set only)
 *
 * Without --root it writes a synthetic ImageNet-like set (eq dataset synth:
 * ~0.2 MP, ~110 KB, 4:2:0 JPEGs) to a temporary folder, benchmarks it and
 * removes it.  Timed on the same files, one thread each (per-core numbers):
 *   full-decode   libjpeg-turbo alone: tjDecompress2 of the whole image to
 *                 RGB (what any pipeline that decodes first pays)
 *   eq-train      RandomResizedCrop(size) + flip (power-of-two DCT scaling,
 *                 crop-aware decode: the default)
 *   eq-train-any  the same with any M/8 DCT scale
 *   eq-train-full the same with DCT scaling off (full-resolution decode of
 *                 the rows/columns needed)
 *   eq-val        Resize(size/0.875) + CenterCrop(size)
 *   tv-train, tv-val  torchvision + PIL (bench/loader.py --serve via
 *                 /usr/bin/python3, one child kept for the whole run)
 * --only takes a comma list of full, train, train-any, train-full, val, tv
 * (default all; e.g. `--only train,val --no-torch` for a profile).
 *
 * The machine this runs on is shared and often loaded (load 10+ on 2
 * cores), so wall-clock rates say little: every pipeline is timed in wall
 * time AND in CPU time of the thread (eq: CLOCK_THREAD_CPUTIME_ID) or
 * process (python: time.process_time()) doing the work, the pipelines run
 * in R rounds of S/R seconds each, alternating eq and torchvision, and the
 * ratios are computed from images per CPU-second.  Files are read from
 * disk each time (page cache warm after the first pass).
 */
#define _GNU_SOURCE /* nftw, mkdtemp, getloadavg */
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <turbojpeg.h>

#include "core/clock.h"
#include "core/log.h"
#include "loader/loader.h"
#include "loader/loader_internal.h"

#ifndef EQ_BENCH_DIR
#define EQ_BENCH_DIR "bench"
#endif

enum { P_FULL, P_TRAIN, P_TRAIN_ANY, P_TRAIN_FULL, P_VAL, P_TV_TRAIN, P_TV_VAL, P_N };

static const char *const s_names[P_N] = {"full-decode", "eq-train", "eq-train-any",
                                         "eq-train-full", "eq-val", "tv-train", "tv-val"};
static const char *const s_keys[P_N] = {"full_decode", "eq_train", "eq_train_any",
                                        "eq_train_nodct", "eq_val", "tv_train", "tv_val"};

typedef struct s_res {
    size_t n;
    double wall, cpu;
} s_res;

static double s_thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One eq pipeline kept across rounds (k continues where the last round
 * stopped, so rounds cover different files). */
typedef struct s_eq {
    eq_pipeline *p;
    size_t k;
} s_eq;

static void s_run_pipeline(const eq_dataset *ds, s_eq *q, uint8_t *out, double seconds, s_res *r)
{
    size_t n = eq_dataset_size(ds), k = q->k;
    double t0 = eq_clock_sec(), c0 = s_thread_cpu(), t;
    do {
        for (int i = 0; i < 16; i++, k++)
            eq_pipeline_sample(q->p, NULL, k / n, k % n, out, NULL, NULL, NULL);
        t = eq_clock_sec() - t0;
    } while (t < seconds);
    r->cpu += s_thread_cpu() - c0;
    r->wall += t;
    r->n += k - q->k;
    q->k = k;
}

typedef struct s_full {
    tjhandle tj;
    uint8_t *file, *pix;
    size_t cap, pcap, k;
} s_full;

static void s_run_full_decode(const eq_dataset *ds, s_full *f, double seconds, s_res *r)
{
    size_t n = eq_dataset_size(ds), k = f->k;
    double t0 = eq_clock_sec(), c0 = s_thread_cpu(), t;
    do {
        for (int i = 0; i < 16; i++, k++) {
            char path[4096];
            size_t len;
            snprintf(path, sizeof path, "%s/%s", eq_dataset_root(ds),
                     eq_dataset_relpath(ds, k % n, NULL));
            if (eq_read_file(path, &f->file, &f->cap, &len, 1u << 28, NULL) != EQ_OK) continue;
            int w, h, ss, cs;
            if (tjDecompressHeader3(f->tj, f->file, len, &w, &h, &ss, &cs) != 0) continue;
            size_t need = (size_t)w * h * 3;
            if (need > f->pcap) {
                uint8_t *np = realloc(f->pix, need);
                if (!np) continue;
                f->pix = np;
                f->pcap = need;
            }
            tjDecompress2(f->tj, f->file, len, f->pix, w, 0, h, TJPF_RGB, 0);
        }
        t = eq_clock_sec() - t0;
    } while (t < seconds);
    r->cpu += s_thread_cpu() - c0;
    r->wall += t;
    r->n += k - f->k;
    f->k = k;
}

static int s_rm(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)flag, (void)f;
    return remove(path);
}

/* The torchvision child: bench/loader.py --serve on two pipes. */
typedef struct s_tv {
    pid_t pid;
    FILE *to, *from;
} s_tv;

static int s_tv_start(s_tv *tv, const char *python, const char *script, const char *root,
                      uint32_t size)
{
    int in[2], out[2];
    if (pipe(in) != 0) return -1;
    if (pipe(out) != 0) {
        close(in[0]);
        close(in[1]);
        return -1;
    }
    char sz[16];
    snprintf(sz, sizeof sz, "%u", size);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[0]);
        close(in[1]);
        close(out[0]);
        close(out[1]);
        execl(python, python, script, root, "--serve", "--size", sz, (char *)NULL);
        fprintf(stderr, "bench/loader: cannot run %s: %s\n", python, strerror(errno));
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    tv->pid = pid;
    tv->to = fdopen(in[1], "w");
    tv->from = fdopen(out[0], "r");
    return tv->to && tv->from ? 0 : -1;
}

static int s_tv_run(s_tv *tv, const char *split, double seconds, s_res *r)
{
    fprintf(tv->to, "%s %g\n", split, seconds);
    fflush(tv->to);
    char line[1024];
    if (!fgets(line, sizeof line, tv->from)) return -1;
    const char *a = strstr(line, "\"n\":"), *b = strstr(line, "\"wall\":"),
               *c = strstr(line, "\"cpu\":");
    size_t n;
    double wall, cpu;
    if (!a || !b || !c || sscanf(a + 4, "%zu", &n) != 1 || sscanf(b + 7, "%lf", &wall) != 1 ||
        sscanf(c + 6, "%lf", &cpu) != 1)
        return -1;
    r->n += n;
    r->wall += wall;
    r->cpu += cpu;
    return 0;
}

static int s_tv_stop(s_tv *tv)
{
    int st = 0;
    if (tv->to) fclose(tv->to);
    if (tv->from) fclose(tv->from);
    tv->to = tv->from = NULL;
    if (tv->pid > 0 && waitpid(tv->pid, &st, 0) < 0) return -1;
    tv->pid = 0;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

/* --only LIST -> selection bits; -1 on an unknown name. */
static int s_parse_only(const char *list, int sel[P_N])
{
    static const char *const names[] = {"full", "train", "train-any", "train-full", "val", "tv"};
    for (int i = 0; i < P_N; i++) sel[i] = 0;
    const char *s = list;
    while (*s) {
        size_t len = strcspn(s, ",");
        int found = 0;
        for (int i = 0; i < 6; i++)
            if (strlen(names[i]) == len && !strncmp(s, names[i], len)) {
                found = 1;
                if (i == 5)
                    sel[P_TV_TRAIN] = sel[P_TV_VAL] = 1;
                else
                    sel[i] = 1;
            }
        if (!found) {
            fprintf(stderr, "bench/loader: --only: unknown pipeline '%.*s' (full, train, "
                            "train-any, train-full, val, tv)\n", (int)len, s);
            return -1;
        }
        s += len;
        if (*s == ',') s++;
    }
    return 0;
}

static double s_rate(const s_res *r, int cpu)
{
    double d = cpu ? r->cpu : r->wall;
    return d > 0 ? (double)r->n / d : 0;
}

int main(int argc, char **argv)
{
    const char *root = NULL, *synth = NULL, *python = "/usr/bin/python3",
               *script = EQ_BENCH_DIR "/loader.py";
    uint32_t size = 224, classes = 10, per = 20, rounds = 3;
    double seconds = 3.0;
    int json = 0, torch = 1, sel[P_N];
    for (int i = 0; i < P_N; i++) sel[i] = 1;
    static const struct option opts[] = {
        {"root", required_argument, 0, 'r'},    {"synth", required_argument, 0, 'S'},
        {"size", required_argument, 0, 'z'},    {"seconds", required_argument, 0, 't'},
        {"classes", required_argument, 0, 'c'}, {"per-class", required_argument, 0, 'p'},
        {"json", no_argument, 0, 'j'},          {"no-torch", no_argument, 0, 'n'},
        {"python", required_argument, 0, 'P'},  {"script", required_argument, 0, 'C'},
        {"rounds", required_argument, 0, 'R'},  {"only", required_argument, 0, 'o'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        switch (o) {
        case 'r': root = optarg; break;
        case 'S': synth = optarg; break;
        case 'z': size = (uint32_t)strtoul(optarg, &end, 10); break;
        case 't': seconds = strtod(optarg, &end); break;
        case 'c': classes = (uint32_t)strtoul(optarg, &end, 10); break;
        case 'p': per = (uint32_t)strtoul(optarg, &end, 10); break;
        case 'R': rounds = (uint32_t)strtoul(optarg, &end, 10); break;
        case 'j': json = 1; break;
        case 'n': torch = 0; break;
        case 'P': python = optarg; break;
        case 'C': script = optarg; break;
        case 'o':
            if (s_parse_only(optarg, sel) != 0) return 2;
            break;
        default:
            fprintf(stderr,
                    "usage: bench/loader [--root DIR] [--size N] [--seconds S] [--rounds R] "
                    "[--classes N --per-class N] [--only full,train,train-any,train-full,val,tv] "
                    "[--no-torch] [--python PATH] [--script PATH] [--json]\n"
                    "       bench/loader --synth DIR [--classes N --per-class N]\n");
            return o == 'h' ? 0 : 2;
        }
        if (end && *end) {
            fprintf(stderr, "bench/loader: bad number '%s'\n", optarg);
            return 2;
        }
    }
    if (size == 0 || !(seconds > 0) || classes == 0 || per == 0 || rounds == 0) {
        fprintf(stderr, "bench/loader: --size, --seconds, --rounds, --classes and --per-class "
                        "must be > 0\n");
        return 2;
    }
    if (!torch) sel[P_TV_TRAIN] = sel[P_TV_VAL] = 0;
    eq_err e = {0};
    eq_synth_cfg sc = {.classes = classes, .train_per_class = per, .val_per_class = per / 4 + 1,
                       .seed = 1, .nthreads = 2};
    if (synth) {
        if (eq_synth_imagefolder(synth, &sc, &e) != EQ_OK) {
            fprintf(stderr, "bench/loader: %s\n", e.msg);
            return 1;
        }
        return 0;
    }
    char tmp[4096] = "";
    if (!root) {
        const char *td = getenv("TMPDIR");
        snprintf(tmp, sizeof tmp, "%s/eq-bench-loader-XXXXXX", td && *td ? td : "/tmp");
        if (!mkdtemp(tmp)) {
            perror("bench/loader: mkdtemp");
            return 1;
        }
        if (eq_synth_imagefolder(tmp, &sc, &e) != EQ_OK) {
            fprintf(stderr, "bench/loader: %s\n", e.msg);
            nftw(tmp, s_rm, 16, FTW_DEPTH | FTW_PHYS);
            return 1;
        }
        root = tmp;
    }
    int rc = 0;
    s_eq q[P_N] = {{0}};
    s_full full = {0};
    s_tv tv = {0};
    s_res res[P_N] = {{0}};
    uint8_t *out = NULL;
    double load0[1] = {0}, load1[1] = {0};
    eq_dataset *ds = eq_dataset_open_imagefolder(root, "train", 1, &e);
    if (!ds) {
        fprintf(stderr, "bench/loader: %s\n", e.msg);
        rc = 1;
        goto out;
    }
    uint64_t bytes = 0;
    for (size_t i = 0; i < eq_dataset_size(ds); i++) {
        uint64_t b;
        eq_dataset_relpath(ds, i, &b);
        bytes += b;
    }
    static const int dct[P_N] = {0, EQ_DCT_POW2, EQ_DCT_ANY, EQ_DCT_OFF, EQ_DCT_POW2, 0, 0};
    for (int i = P_TRAIN; i <= P_VAL; i++) {
        if (!sel[i]) continue;
        eq_pipeline_cfg cfg;
        eq_pipeline_cfg_default(&cfg, i == P_VAL ? "val" : "train", size, 1, 1);
        cfg.dct_scale = dct[i];
        if (!(q[i].p = eq_pipeline_new(ds, &cfg, 1, &e))) {
            fprintf(stderr, "bench/loader: %s\n", e.msg);
            rc = 1;
            goto out;
        }
    }
    if (!(out = malloc((size_t)size * size * 3))) {
        rc = 1;
        goto out;
    }
    if (sel[P_FULL] && !(full.tj = tjInitDecompress())) {
        fprintf(stderr, "bench/loader: tjInitDecompress failed\n");
        rc = 1;
        goto out;
    }
    if ((sel[P_TV_TRAIN] || sel[P_TV_VAL]) && s_tv_start(&tv, python, script, root, size) != 0) {
        fprintf(stderr, "bench/loader: cannot start %s %s\n", python, script);
        sel[P_TV_TRAIN] = sel[P_TV_VAL] = 0;
    }
    getloadavg(load0, 1);
    const double slice = seconds / rounds;
    for (uint32_t round = 0; round < rounds; round++) {
        /* eq and torchvision alternate: train peers, then val peers */
        if (sel[P_FULL]) s_run_full_decode(ds, &full, slice, &res[P_FULL]);
        for (int i = P_TRAIN; i <= P_TRAIN_FULL; i++)
            if (sel[i]) s_run_pipeline(ds, &q[i], out, slice, &res[i]);
        if (sel[P_TV_TRAIN] && s_tv_run(&tv, "train", slice, &res[P_TV_TRAIN]) != 0) {
            fprintf(stderr, "bench/loader: %s failed (python3-torchvision / python3-pil "
                            "missing?)\n", script);
            sel[P_TV_TRAIN] = sel[P_TV_VAL] = 0;
        }
        if (sel[P_VAL]) s_run_pipeline(ds, &q[P_VAL], out, slice, &res[P_VAL]);
        if (sel[P_TV_VAL] && s_tv_run(&tv, "val", slice, &res[P_TV_VAL]) != 0) {
            fprintf(stderr, "bench/loader: %s failed\n", script);
            sel[P_TV_TRAIN] = sel[P_TV_VAL] = 0;
        }
    }
    getloadavg(load1, 1);
    if (tv.pid > 0 && s_tv_stop(&tv) != 0) fprintf(stderr, "bench/loader: %s exited badly\n", script);
    for (int i = P_TRAIN; i <= P_VAL; i++) {
        if (!q[i].p) continue;
        eq_pipeline_stats st;
        eq_pipeline_get_stats(q[i].p, &st);
        if (st.replaced)
            fprintf(stderr, "bench/loader: %s: %llu samples replaced\n", s_names[i],
                    (unsigned long long)st.replaced);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    const int tvt = sel[P_TV_TRAIN] && res[P_TV_TRAIN].n, tvv = sel[P_TV_VAL] && res[P_TV_VAL].n;
    const double ct = tvt ? s_rate(&res[P_TV_TRAIN], 1) : 0, cv = tvv ? s_rate(&res[P_TV_VAL], 1) : 0;
    const double wt = tvt ? s_rate(&res[P_TV_TRAIN], 0) : 0, wv = tvv ? s_rate(&res[P_TV_VAL], 0) : 0;
    if (json) {
        printf("{\"files\":%zu,\"mean_bytes\":%.0f,\"rounds\":%u,\"seconds\":%g,"
               "\"load_start\":%.2f,\"load_end\":%.2f",
               eq_dataset_size(ds), (double)bytes / eq_dataset_size(ds), rounds, seconds, load0[0],
               load1[0]);
        for (int i = 0; i < P_N; i++) {
            if (!sel[i]) continue;
            printf(",\"%s\":%.1f,\"%s_cpu\":%.1f", s_keys[i], s_rate(&res[i], 0), s_keys[i],
                   s_rate(&res[i], 1));
        }
        if (tvt && sel[P_TRAIN]) printf(",\"ratio_train_cpu\":%.3f", s_rate(&res[P_TRAIN], 1) / ct);
        if (tvv && sel[P_VAL]) printf(",\"ratio_val_cpu\":%.3f", s_rate(&res[P_VAL], 1) / cv);
        printf(",\"max_rss_kb\":%ld}\n", ru.ru_maxrss);
    } else {
        printf("files %zu (mean %.0f bytes), one thread each, %u rounds of %.2f s alternating, "
               "load average %.1f -> %.1f\n"
               "  %-14s %8s %8s %8s %10s %10s\n",
               eq_dataset_size(ds), (double)bytes / eq_dataset_size(ds), rounds, slice, load0[0],
               load1[0], "pipeline", "images", "wall s", "CPU s", "img/s", "img/CPU-s");
        static const char *const what[P_N] = {
            "libjpeg-turbo tjDecompress2, whole image",
            "RandomResizedCrop + flip, pow2 DCT scaling + crop decode",
            "same, any M/8 DCT scaling",
            "same, DCT scaling off",
            "Resize + CenterCrop",
            "torchvision + PIL, same transforms",
            "torchvision + PIL"};
        for (int i = 0; i < P_N; i++) {
            if (!sel[i]) continue;
            printf("  %-14s %8zu %8.2f %8.2f %10.1f %10.1f  (%s)\n", s_names[i], res[i].n,
                   res[i].wall, res[i].cpu, s_rate(&res[i], 0), s_rate(&res[i], 1), what[i]);
        }
        if (tvt && sel[P_TRAIN]) {
            printf("ratio eq/torchvision train per CPU-second %.2fx", s_rate(&res[P_TRAIN], 1) / ct);
            if (sel[P_TRAIN_ANY]) printf(" (any M/8 %.2fx", s_rate(&res[P_TRAIN_ANY], 1) / ct);
            if (sel[P_TRAIN_FULL])
                printf("%s DCT off %.2fx", sel[P_TRAIN_ANY] ? "," : " (",
                       s_rate(&res[P_TRAIN_FULL], 1) / ct);
            if (sel[P_TRAIN_ANY] || sel[P_TRAIN_FULL]) printf(")");
            printf("; wall %.2fx\n", s_rate(&res[P_TRAIN], 0) / wt);
        }
        if (tvv && sel[P_VAL])
            printf("ratio eq/torchvision val per CPU-second %.2fx; wall %.2fx\n",
                   s_rate(&res[P_VAL], 1) / cv, s_rate(&res[P_VAL], 0) / wv);
        printf("eq max RSS %ld KiB\n", ru.ru_maxrss);
    }
out:
    if (tv.pid > 0) {
        kill(tv.pid, SIGTERM);
        s_tv_stop(&tv);
    }
    for (int i = 0; i < P_N; i++) eq_pipeline_destroy(&q[i].p);
    if (full.tj) tjDestroy(full.tj);
    free(full.file);
    free(full.pix);
    free(out);
    eq_dataset_destroy(&ds);
    if (tmp[0]) nftw(tmp, s_rm, 16, FTW_DEPTH | FTW_PHYS);
    return rc;
}
