/*
 * evaluator/eq_eval.c -- the eq-eval command line.
 *
 *   eq-eval coco --gt ANNOTATIONS.json --dt RESULTS.json [--iou bbox|segm|keypoints]
 *                [--json] [--per-category] [--img-ids 1,2,...] [--cat-ids 1,2,...]
 *                [--max-dets 1,10,100] [--threads N] [--dump FILE] [--timings]
 *
 * Prints pycocotools' summary lines (or, with --json, one JSON object) on
 * stdout; errors go to stderr and the exit status is 1 (2 for usage).
 * doc/eq-eval.md is the manual.
 */
#include "config.h"

#include "core/clock.h"
#include "core/status.h"
#include "evaluator/classify.h"
#include "evaluator/cocoeval.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/resource.h>

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: eq-eval coco --gt ANNOTATIONS.json --dt RESULTS.json [options]\n"
            "\n"
            "COCO evaluation with the numbers of pycocotools' COCOeval.\n"
            "\n"
            "  --iou TYPE          bbox (default), segm or keypoints\n"
            "  --json              print one JSON object (stats at full precision,\n"
            "                      per-category AP, parameters) instead of the summary\n"
            "  --per-category      also print AP, AP50, AP75, AR per category\n"
            "  --img-ids LIST      evaluate only these image ids (comma-separated)\n"
            "  --cat-ids LIST      evaluate only these category ids\n"
            "  --max-dets LIST     detection caps (default 1,10,100; keypoints 20)\n"
            "  --threads N         worker threads (default: one per CPU)\n"
            "  --dump FILE         write the precision and recall arrays as JSON\n"
            "  --timings           print stage times and peak memory on stderr\n"
            "  -h, --help          this text\n");
}

/* Parse "1,2,3" into a malloc'd int64 array. */
static int s_parse_i64_list(const char *opt, const char *s, int64_t **out, size_t *n)
{
    size_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    int64_t *v = malloc(cap * sizeof *v);
    if (!v) return -1;
    size_t k = 0;
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        long long x = strtoll(p, &end, 10);
        if (end == p || errno || (*end != ',' && *end != 0)) {
            fprintf(stderr, "eq-eval: %s: '%s' is not a comma-separated list of integers\n", opt,
                    s);
            free(v);
            return -1;
        }
        v[k++] = x;
        if (*end == 0) break;
        p = end + 1;
    }
    *out = v;
    *n = k;
    return 0;
}

static void s_print_double(FILE *f, double v)
{
    /* shortest text that reads back as the same double */
    char buf[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    /* JSON needs a digit after '.', and no "inf"/"nan" (cannot occur) */
    fputs(buf, f);
}

static void s_print_json(const eq_coco_eval *e, const char *gt, const char *dt, FILE *f)
{
    fprintf(f, "{\"iou_type\": \"%s\", \"stats\": [", eq_coco_iou_name(e->iou_type));
    for (size_t i = 0; i < e->n_stats; i++) {
        if (i) fputs(", ", f);
        s_print_double(f, e->stats[i]);
    }
    fputs("], \"stats_labels\": [", f);
    for (size_t i = 0; i < e->n_stats; i++)
        fprintf(f, "%s\"%s\"", i ? ", " : "", eq_coco_stat_label(e, i));
    fputs("], \"per_category_ap\": {", f);
    for (size_t k = 0; k < e->K; k++) {
        fprintf(f, "%s\"%lld\": ", k ? ", " : "", (long long)e->cat_ids[k]);
        s_print_double(f, e->cat_ap[k]);
    }
    fputs("}, \"per_category\": {", f);
    for (size_t k = 0; k < e->K; k++) {
        fprintf(f, "%s\"%lld\": {\"ap\": ", k ? ", " : "", (long long)e->cat_ids[k]);
        s_print_double(f, e->cat_ap[k]);
        fputs(", \"ap50\": ", f);
        s_print_double(f, e->cat_ap50[k]);
        fputs(", \"ap75\": ", f);
        s_print_double(f, e->cat_ap75[k]);
        fputs(", \"ar\": ", f);
        s_print_double(f, e->cat_ar[k]);
        fputs("}", f);
    }
    fputs("}, \"summary_lines\": [", f);
    for (size_t i = 0; i < e->n_stats; i++) {
        char line[256];
        eq_coco_summary_line(e, i, line, sizeof line);
        fprintf(f, "%s\"%s\"", i ? ", " : "", line);
    }
    fputs("], \"params\": {\"gt\": ", f);
    /* file names: escape the JSON specials */
    const char *names[2] = {gt, dt};
    for (int q = 0; q < 2; q++) {
        if (q) fputs(", \"dt\": ", f);
        fputc('"', f);
        for (const unsigned char *p = (const unsigned char *)names[q]; *p; p++) {
            if (*p == '"' || *p == '\\')
                fprintf(f, "\\%c", *p);
            else if (*p < 0x20)
                fprintf(f, "\\u%04x", *p);
            else
                fputc(*p, f);
        }
        fputc('"', f);
    }
    fputs(", \"iou_thrs\": [", f);
    for (size_t t = 0; t < e->T; t++) {
        if (t) fputs(", ", f);
        s_print_double(f, e->iou_thrs[t]);
    }
    fprintf(f, "], \"rec_thrs\": \"linspace(0, 1, %zu)\", \"max_dets\": [", e->R);
    for (size_t m = 0; m < e->M; m++) fprintf(f, "%s%d", m ? ", " : "", e->max_dets[m]);
    fputs("], \"area_rng\": {", f);
    for (size_t a = 0; a < e->A; a++) {
        fprintf(f, "%s\"%s\": [", a ? ", " : "", e->area_lbl[a]);
        s_print_double(f, e->area_rng[a][0]);
        fputs(", ", f);
        s_print_double(f, e->area_rng[a][1]);
        fputs("]", f);
    }
    fprintf(f, "}, \"num_images\": %zu, \"cat_ids\": [", e->n_img_ids);
    for (size_t k = 0; k < e->K; k++) fprintf(f, "%s%lld", k ? ", " : "", (long long)e->cat_ids[k]);
    fputs("]}}\n", f);
}

static int s_dump(const eq_coco_eval *e, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "eq-eval: %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f, "{\"layout\": {\"precision\": \"[T][R][K][A][M]\", \"recall\": \"[T][K][A][M]\"}, "
               "\"shape\": [%zu, %zu, %zu, %zu, %zu], \"precision\": [",
            e->T, e->R, e->K, e->A, e->M);
    size_t np = e->T * e->R * e->K * e->A * e->M, nr = e->T * e->K * e->A * e->M;
    for (size_t i = 0; i < np; i++) {
        if (i) fputc(',', f);
        s_print_double(f, e->precision[i]);
    }
    fputs("], \"recall\": [", f);
    for (size_t i = 0; i < nr; i++) {
        if (i) fputc(',', f);
        s_print_double(f, e->recall[i]);
    }
    fputs("]}\n", f);
    if (fclose(f) != 0) {
        fprintf(stderr, "eq-eval: %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

typedef struct s_parse_job {
    const char *path;
    eq_json_doc *doc; /* NULL on failure, then err says why */
    eq_err err;
} s_parse_job;

static void *s_parse_thread(void *arg)
{
    s_parse_job *j = arg;
    eq_err_clear(&j->err);
    j->doc = eq_json_parse_file(j->path, NULL, &j->err);
    return NULL;
}

static int s_coco(int argc, char **argv)
{
    enum { O_GT = 256, O_DT, O_IOU, O_JSON, O_PERCAT, O_IMG, O_CAT, O_MAXDETS, O_THREADS, O_DUMP,
           O_TIMINGS };
    static const struct option opts[] = {
        {"gt", required_argument, 0, O_GT},
        {"dt", required_argument, 0, O_DT},
        {"iou", required_argument, 0, O_IOU},
        {"json", no_argument, 0, O_JSON},
        {"per-category", no_argument, 0, O_PERCAT},
        {"img-ids", required_argument, 0, O_IMG},
        {"cat-ids", required_argument, 0, O_CAT},
        {"max-dets", required_argument, 0, O_MAXDETS},
        {"threads", required_argument, 0, O_THREADS},
        {"dump", required_argument, 0, O_DUMP},
        {"timings", no_argument, 0, O_TIMINGS},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *gt_path = NULL, *dt_path = NULL, *dump = NULL;
    int json = 0, percat = 0, timings = 0, rc = 1;
    eq_coco_params p;
    memset(&p, 0, sizeof p);
    p.iou_type = EQ_COCO_BBOX;
    int64_t *img_ids = NULL, *cat_ids = NULL, *md64 = NULL;
    int *md = NULL;
    size_t nmd = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_GT: gt_path = optarg; break;
        case O_DT: dt_path = optarg; break;
        case O_IOU:
            if (eq_coco_iou_parse(optarg, &p.iou_type)) {
                fprintf(stderr, "eq-eval: --iou: '%s' is not bbox, segm or keypoints\n", optarg);
                rc = 2;
                goto out;
            }
            break;
        case O_JSON: json = 1; break;
        case O_PERCAT: percat = 1; break;
        case O_TIMINGS: timings = 1; break;
        case O_DUMP: dump = optarg; break;
        case O_IMG:
            free(img_ids);
            img_ids = NULL;
            if (s_parse_i64_list("--img-ids", optarg, &img_ids, &p.n_img_ids)) {
                rc = 2;
                goto out;
            }
            p.img_ids = img_ids;
            break;
        case O_CAT:
            free(cat_ids);
            cat_ids = NULL;
            if (s_parse_i64_list("--cat-ids", optarg, &cat_ids, &p.n_cat_ids)) {
                rc = 2;
                goto out;
            }
            p.cat_ids = cat_ids;
            break;
        case O_MAXDETS:
            free(md64);
            free(md);
            md64 = NULL;
            md = NULL;
            if (s_parse_i64_list("--max-dets", optarg, &md64, &nmd)) {
                rc = 2;
                goto out;
            }
            md = malloc((nmd + 1) * sizeof *md);
            if (!md) goto out;
            for (size_t i = 0; i < nmd; i++) {
                if (md64[i] < 0 || md64[i] > 1000000000) {
                    fprintf(stderr, "eq-eval: --max-dets: %lld is out of range\n",
                            (long long)md64[i]);
                    rc = 2;
                    goto out;
                }
                md[i] = (int)md64[i];
            }
            p.max_dets = md;
            p.n_max_dets = nmd;
            break;
        case O_THREADS: {
            char *end;
            errno = 0;
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end || errno || v < 0 || v > 1024) {
                fprintf(stderr, "eq-eval: --threads: '%s' is not a number from 0 to 1024\n",
                        optarg);
                rc = 2;
                goto out;
            }
            p.threads = (int)v;
            break;
        }
        case 'h':
            s_usage(stdout);
            rc = 0;
            goto out;
        default:
            s_usage(stderr);
            rc = 2;
            goto out;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "eq-eval: unexpected argument '%s'\n", argv[optind]);
        rc = 2;
        goto out;
    }
    if (!gt_path || !dt_path) {
        fprintf(stderr, "eq-eval: coco needs --gt and --dt\n");
        s_usage(stderr);
        rc = 2;
        goto out;
    }
    if (md && nmd < 3 && p.iou_type != EQ_COCO_KEYPOINTS) {
        /* a usage error (status 2, as documented), said before the files
         * are read rather than after */
        fprintf(stderr, "eq-eval: --max-dets: the %s summary uses three caps (e.g. 1,10,100); %zu given\n",
                eq_coco_iou_name(p.iou_type), nmd);
        rc = 2;
        goto out;
    }
    {
        eq_err err;
        eq_err_clear(&err);
        eq_coco *gt = NULL, *dt = NULL;
        eq_coco_eval *e = NULL;
        double t0 = eq_clock_sec();
        /* parse the results file on a second thread while the GT loads */
        s_parse_job job = {.path = dt_path};
        pthread_t th;
        int threaded = pthread_create(&th, NULL, s_parse_thread, &job) == 0;
        if (!threaded) s_parse_thread(&job);
        eq_status gst = eq_coco_load_gt(gt_path, &gt, &err);
        if (threaded) pthread_join(th, NULL);
        if (gst) {
            fprintf(stderr, "eq-eval: %s\n", err.msg);
            eq_json_doc_destroy(&job.doc);
            goto out;
        }
        double t1 = eq_clock_sec();
        if (!job.doc) {
            fprintf(stderr, "eq-eval: %s\n", job.err.msg);
            eq_coco_destroy(&gt);
            goto out;
        }
        eq_status rst = eq_coco_load_res_json(gt, eq_json_root(job.doc), dt_path, &dt, &err);
        eq_json_doc_destroy(&job.doc);
        if (rst) {
            fprintf(stderr, "eq-eval: %s\n", err.msg);
            eq_coco_destroy(&gt);
            goto out;
        }
        double t2 = eq_clock_sec();
        if (eq_coco_evaluate(gt, dt, &p, &e, &err)) {
            fprintf(stderr, "eq-eval: %s\n", err.msg);
            eq_coco_destroy(&gt);
            eq_coco_destroy(&dt);
            goto out;
        }
        double t3 = eq_clock_sec();
        if (json) {
            s_print_json(e, gt_path, dt_path, stdout);
        } else {
            char line[256];
            for (size_t i = 0; i < e->n_stats; i++) {
                eq_coco_summary_line(e, i, line, sizeof line);
                puts(line);
            }
            if (percat) {
                printf("\n%12s %8s %8s %8s %8s\n", "category", "AP", "AP50", "AP75", "AR");
                for (size_t k = 0; k < e->K; k++)
                    printf("%12lld %8.3f %8.3f %8.3f %8.3f\n", (long long)e->cat_ids[k],
                           e->cat_ap[k], e->cat_ap50[k], e->cat_ap75[k], e->cat_ar[k]);
            }
        }
        rc = 0;
        if (dump && s_dump(e, dump)) rc = 1;
        if (fflush(stdout) != 0) rc = 1;
        if (timings) {
            struct rusage ru;
            getrusage(RUSAGE_SELF, &ru);
            double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
                         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
            fprintf(stderr,
                    "eq-eval: load gt (results parsed meanwhile) %.3f s, load results %.3f s, "
                    "prepare %.3f s, evaluate %.3f s, accumulate %.3f s, total %.3f s wall, "
                    "%.3f s CPU, peak RSS %.1f MiB\n",
                    t1 - t0, t2 - t1, e->t_prepare, e->t_evaluate, e->t_accumulate, t3 - t0, cpu,
                    ru.ru_maxrss / 1024.0);
        }
        eq_coco_eval_destroy(&e);
        eq_coco_destroy(&gt);
        eq_coco_destroy(&dt);
    }
out:
    free(img_ids);
    free(cat_ids);
    free(md64);
    free(md);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        fprintf(argc < 2 ? stderr : stdout,
                "usage: eq-eval coco --gt ANNOTATIONS.json --dt RESULTS.json [options]\n"
                "       eq-eval coco --help\n"
                "       eq-eval serve [--pull EP] [--pub EP] [--control EP] [--metrics FILE] (see --help)\n");
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "coco") == 0) return s_coco(argc - 1, argv + 1);
    if (strcmp(argv[1], "serve") == 0) return eq_eval_serve_main(argc - 1, argv + 1);
    fprintf(stderr, "eq-eval: unknown command '%s' (try 'eq-eval coco --help')\n", argv[1]);
    return 2;
}
