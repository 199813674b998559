/*
 * bench/decode_bench.c -- images/s of eq's decode + augment on one core.
 *
 *   decode_bench --synth DIR [--classes N --per-class N]   write a synthetic set
 *   decode_bench --root DIR [--split train] [--size 224] [--seconds S] [--json]
 *
 * Timed on the same files, one thread each (per-core numbers):
 *   full-decode   libjpeg-turbo alone: tjDecompress2 of the whole image to
 *                 RGB (what any pipeline that decodes first pays)
 *   eq-train      RandomResizedCrop(size) + flip (power-of-two DCT scaling,
 *                 crop-aware decode: the default)
 *   eq-train-any  the same with any M/8 DCT scale
 *   eq-train-full the same with DCT scaling off (full-resolution decode of
 *                 the rows/columns needed)
 *   eq-val        Resize(size/0.875) + CenterCrop(size)
 * Files are read from disk each time (page cache warm after the first
 * pass).  bench/decode_bench.sh runs this and the torchvision peer
 * (bench/decode_bench.py) on the same files and prints the ratios.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <turbojpeg.h>

#include "core/clock.h"
#include "core/log.h"
#include "loader/loader.h"
#include "loader/loader_internal.h"

static double s_run_pipeline(const eq_dataset *ds, const char *split, uint32_t size, int dct,
                             double seconds, size_t *count)
{
    eq_pipeline_cfg cfg;
    eq_pipeline_cfg_default(&cfg, split, size, 1, 1);
    cfg.dct_scale = dct;
    eq_err e = {0};
    eq_pipeline *p = eq_pipeline_new(ds, &cfg, 1, &e);
    if (!p) {
        fprintf(stderr, "decode_bench: %s\n", e.msg);
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
    if (st.replaced) fprintf(stderr, "decode_bench: %llu samples replaced\n", (unsigned long long)st.replaced);
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

int main(int argc, char **argv)
{
    const char *root = NULL, *synth = NULL, *split = "train";
    uint32_t size = 224, classes = 10, per = 20;
    double seconds = 3.0;
    int json = 0;
    static const struct option opts[] = {
        {"root", required_argument, 0, 'r'},    {"synth", required_argument, 0, 'S'},
        {"split", required_argument, 0, 's'},   {"size", required_argument, 0, 'z'},
        {"seconds", required_argument, 0, 't'}, {"classes", required_argument, 0, 'c'},
        {"per-class", required_argument, 0, 'p'}, {"json", no_argument, 0, 'j'},
        {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        switch (o) {
        case 'r': root = optarg; break;
        case 'S': synth = optarg; break;
        case 's': split = optarg; break;
        case 'z': size = (uint32_t)strtoul(optarg, &end, 10); break;
        case 't': seconds = strtod(optarg, &end); break;
        case 'c': classes = (uint32_t)strtoul(optarg, &end, 10); break;
        case 'p': per = (uint32_t)strtoul(optarg, &end, 10); break;
        case 'j': json = 1; break;
        default:
            fprintf(stderr, "usage: decode_bench --synth DIR [--classes N --per-class N] | --root DIR "
                            "[--split S] [--size N] [--seconds S] [--json]\n");
            return 2;
        }
        if (end && *end) {
            fprintf(stderr, "decode_bench: bad number '%s'\n", optarg);
            return 2;
        }
    }
    eq_err e = {0};
    if (synth) {
        eq_synth_cfg sc = {.classes = classes, .train_per_class = per, .val_per_class = per / 4 + 1,
                           .seed = 1, .nthreads = 2};
        if (eq_synth_imagefolder(synth, &sc, &e) != EQ_OK) {
            fprintf(stderr, "decode_bench: %s\n", e.msg);
            return 1;
        }
        return 0;
    }
    if (!root || size == 0 || !(seconds > 0)) {
        fprintf(stderr, "decode_bench: --root DIR (or --synth DIR) is required\n");
        return 2;
    }
    eq_dataset *ds = eq_dataset_open_imagefolder(root, split, 1, &e);
    if (!ds) {
        fprintf(stderr, "decode_bench: %s\n", e.msg);
        return 1;
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
    if (json)
        printf("{\"files\":%zu,\"mean_bytes\":%.0f,\"full_decode\":%.1f,\"eq_train\":%.1f,"
               "\"eq_train_any\":%.1f,\"eq_train_nodct\":%.1f,\"eq_val\":%.1f,\"max_rss_kb\":%ld}\n",
               eq_dataset_size(ds), (double)bytes / eq_dataset_size(ds), full, train, traina, trainf, val,
               ru.ru_maxrss);
    else
        printf("files %zu (mean %.0f bytes), one thread, images/s:\n"
               "  full-decode    %8.1f  (libjpeg-turbo tjDecompress2, whole image)\n"
               "  eq-train       %8.1f  (RandomResizedCrop %u + flip, pow2 DCT scaling + crop decode)\n"
               "  eq-train-any   %8.1f  (same, any M/8 DCT scaling)\n"
               "  eq-train-full  %8.1f  (same, DCT scaling off)\n"
               "  eq-val         %8.1f  (Resize %u + CenterCrop %u)\n"
               "  max RSS %ld KiB\n",
               eq_dataset_size(ds), (double)bytes / eq_dataset_size(ds), full, train, size, traina, trainf,
               val, (uint32_t)(size / 0.875 + 0.5), size, ru.ru_maxrss);
    eq_dataset_destroy(&ds);
    return 0;
}
