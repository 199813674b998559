/*
 * bench/loader.c -- images/s of eq's decode + augment on one core, beside
 * torchvision + PIL doing the same on the same files in the same run.
 *
 *   bench/loader [--root DIR] [--size 224] [--seconds S] [--classes N
 *                --per-class N] [--no-torch] [--python PATH] [--script PATH]
 *                [--json]
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
 *   tv-train, tv-val  torchvision + PIL (bench/loader.py via /usr/bin/python3)
 * and the ratios eq/torchvision.  Files are read from disk each time (page
 * cache warm after the first pass).
 */
#define _GNU_SOURCE /* nftw, mkdtemp */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/resource.h>
#include <unistd.h>

#include <turbojpeg.h>

#include "core/clock.h"
#include "core/log.h"
#include "loader/loader.h"
#include "loader/loader_internal.h"

#ifndef EQ_BENCH_DIR
#define EQ_BENCH_DIR "bench"
#endif

static double s_run_pipeline(const eq_dataset *ds, const char *split, uint32_t size, int dct,
                             double seconds, size_t *count)
{
    eq_pipeline_cfg cfg;
    eq_pipeline_cfg_default(&cfg, split, size, 1, 1);
    cfg.dct_scale = dct;
    eq_err e = {0};
    eq_pipeline *p = eq_pipeline_new(ds, &cfg, 1, &e);
    if (!p) {
        fprintf(stderr, "bench/loader: %s\n", e.msg);
        exit(1);
    }
    uint8_t *out = malloc((size_t)size * size * 3);
    size_t n = eq_dataset_size(ds), k = 0;
    double t0 = eq_clock_sec(), t;
    do {
        for (int i = 0; i < 16; i++, k++) eq_pipeline_sample(p, NULL, k / n, k % n, out, NULL, NULL, NULL);
        t = eq_clock_sec() - t0;
    } while (t < seconds);
    eq_pipeline_stats st;
    eq_pipeline_get_stats(p, &st);
    if (st.replaced) fprintf(stderr, "bench/loader: %llu samples replaced\n", (unsigned long long)st.replaced);
    free(out);
    eq_pipeline_destroy(&p);
    *count = k;
    return (double)k / t;
}

static double s_run_full_decode(const eq_dataset *ds, double seconds, size_t *count)
{
    tjhandle tj = tjInitDecompress();
    uint8_t *file = NULL, *pix = NULL;
    size_t cap = 0, pcap = 0, n = eq_dataset_size(ds), k = 0;
    double t0 = eq_clock_sec(), t;
    do {
        for (int i = 0; i < 16; i++, k++) {
            char path[4096];
            size_t len;
            snprintf(path, sizeof path, "%s/%s", eq_dataset_root(ds), eq_dataset_relpath(ds, k % n, NULL));
            if (eq_read_file(path, &file, &cap, &len, 1u << 28, NULL) != EQ_OK) continue;
            int w, h, ss, cs;
            if (tjDecompressHeader3(tj, file, len, &w, &h, &ss, &cs) != 0) continue;
            size_t need = (size_t)w * h * 3;
            if (need > pcap) {
                pix = realloc(pix, need);
                pcap = need;
            }
            tjDecompress2(tj, file, len, pix, w, 0, h, TJPF_RGB, 0);
        }
        t = eq_clock_sec() - t0;
    } while (t < seconds);
    free(file);
    free(pix);
    tjDestroy(tj);
    *count = k;
    return (double)k / t;
}

static int s_rm(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)flag, (void)f;
    return remove(path);
}

/* torchvision's images/s from bench/loader.py --json; 0 when unavailable. */
static int s_torch(const char *python, const char *script, const char *root, uint32_t size, double seconds,
                   double *tv_train, double *tv_val)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s %s '%s' --size %u --seconds %g --json", python, script, root, size, seconds);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[1024];
    int got = 0;
    while (fgets(line, sizeof line, p)) {
        const char *a = strstr(line, "\"tv_train\":"), *b = strstr(line, "\"tv_val\":");
        if (a && b && sscanf(a + 11, "%lf", tv_train) == 1 && sscanf(b + 9, "%lf", tv_val) == 1) got = 1;
    }
    int rc = pclose(p);
    return rc == 0 && got ? 0 : -1;
}

int main(int argc, char **argv)
{
    const char *root = NULL, *synth = NULL, *python = "/usr/bin/python3", *script = EQ_BENCH_DIR "/loader.py";
    uint32_t size = 224, classes = 10, per = 20;
    double seconds = 3.0;
    int json = 0, torch = 1;
    static const struct option opts[] = {
        {"root", required_argument, 0, 'r'},      {"synth", required_argument, 0, 'S'},
        {"size", required_argument, 0, 'z'},      {"seconds", required_argument, 0, 't'},
        {"classes", required_argument, 0, 'c'},   {"per-class", required_argument, 0, 'p'},
        {"json", no_argument, 0, 'j'},            {"no-torch", no_argument, 0, 'n'},
        {"python", required_argument, 0, 'P'},    {"script", required_argument, 0, 'C'},
        {"help", no_argument, 0, 'h'},            {0, 0, 0, 0}};
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
        case 'j': json = 1; break;
        case 'n': torch = 0; break;
        case 'P': python = optarg; break;
        case 'C': script = optarg; break;
        default:
            fprintf(stderr, "usage: bench/loader [--root DIR] [--size N] [--seconds S] [--classes N "
                            "--per-class N] [--no-torch] [--python PATH] [--script PATH] [--json]\n"
                            "       bench/loader --synth DIR [--classes N --per-class N]\n");
            return o == 'h' ? 0 : 2;
        }
        if (end && *end) {
            fprintf(stderr, "bench/loader: bad number '%s'\n", optarg);
            return 2;
        }
    }
    if (size == 0 || !(seconds > 0) || classes == 0 || per == 0) {
        fprintf(stderr, "bench/loader: --size, --seconds, --classes and --per-class must be > 0\n");
        return 2;
    }
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
    size_t n[5];
    double full = s_run_full_decode(ds, seconds, &n[0]);
    double train = s_run_pipeline(ds, "train", size, EQ_DCT_POW2, seconds, &n[1]);
    double traina = s_run_pipeline(ds, "train", size, EQ_DCT_ANY, seconds, &n[4]);
    double trainf = s_run_pipeline(ds, "train", size, EQ_DCT_OFF, seconds, &n[2]);
    double val = s_run_pipeline(ds, "val", size, EQ_DCT_POW2, seconds, &n[3]);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double tvt = 0, tvv = 0;
    if (torch && s_torch(python, script, root, size, seconds, &tvt, &tvv) != 0) {
        fprintf(stderr, "bench/loader: %s failed (python3-torchvision / python3-pil missing?)\n", script);
        tvt = tvv = 0;
    }
    if (json) {
        printf("{\"files\":%zu,\"mean_bytes\":%.0f,\"full_decode\":%.1f,\"eq_train\":%.1f,"
               "\"eq_train_any\":%.1f,\"eq_train_nodct\":%.1f,\"eq_val\":%.1f,\"tv_train\":%.1f,"
               "\"tv_val\":%.1f,\"max_rss_kb\":%ld}\n",
               eq_dataset_size(ds), (double)bytes / eq_dataset_size(ds), full, train, traina, trainf, val, tvt,
               tvv, ru.ru_maxrss);
    } else {
        printf("files %zu (mean %.0f bytes), one thread each, images/s:\n"
               "  full-decode    %8.1f  (libjpeg-turbo tjDecompress2, whole image)\n"
               "  eq-train       %8.1f  (RandomResizedCrop %u + flip, pow2 DCT scaling + crop decode)\n"
               "  eq-train-any   %8.1f  (same, any M/8 DCT scaling)\n"
               "  eq-train-full  %8.1f  (same, DCT scaling off)\n"
               "  eq-val         %8.1f  (Resize %u + CenterCrop %u)\n",
               eq_dataset_size(ds), (double)bytes / eq_dataset_size(ds), full, train, size, traina, trainf,
               val, (uint32_t)(size / 0.875 + 0.5), size);
        if (tvt > 0 && tvv > 0)
            printf("  tv-train       %8.1f  (torchvision + PIL, same transforms)\n"
                   "  tv-val         %8.1f\n"
                   "ratios eq/torchvision: train %.2fx (any M/8 %.2fx, DCT off %.2fx), val %.2fx\n",
                   tvt, tvv, train / tvt, traina / tvt, trainf / tvt, val / tvv);
        printf("eq max RSS %ld KiB\n", ru.ru_maxrss);
    }
    eq_dataset_destroy(&ds);
out:
    if (tmp[0]) nftw(tmp, s_rm, 16, FTW_DEPTH | FTW_PHYS);
    return rc;
}
