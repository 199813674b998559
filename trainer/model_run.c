/*
 * trainer/model_run.c -- `eq-model run`: one forward (+ backward, + step)
 * of a model over safetensors files (model_run.h).
 */
#include "trainer/model_run.h"

#include <ctype.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "core/safetensors.h"
#include "trainer/checkpoint.h"
#include "trainer/model.h"
#include "trainer/optim.h"

/* Blank the lines of sections that are not ours, keeping line numbers. */
static void s_keep_sections(char *text, size_t len, const eq_config_section *secs, size_t nsecs)
{
    int keep = 1;
    for (size_t i = 0; i < len;) {
        size_t e = i;
        while (e < len && text[e] != '\n') e++;
        size_t b = i;
        while (b < e && isspace((unsigned char)text[b])) b++;
        if (b < e && text[b] == '[') {
            size_t c = b + 1;
            while (c < e && text[c] != ']') c++;
            keep = 0;
            for (size_t k = 0; k < nsecs; k++)
                if (strlen(secs[k].name) == c - b - 1 && !strncmp(text + b + 1, secs[k].name, c - b - 1)) keep = 1;
            if (!keep) text[b] = '#'; /* the header becomes a comment */
        } else if (!keep) {
            for (size_t k = i; k < e; k++) text[k] = ' ';
        }
        i = e + 1;
    }
}

typedef struct s_cfgs {
    eq_model_cfg model;
    eq_model_quant_cfg wt, fm, ot;
    eq_optim_cfg optim;
    eq_schedule_cfg sched;
} s_cfgs;

eq_status eq_model_run(const eq_model_run_args *a, eq_err *err)
{
    if (!a || !a->config || !a->in || !a->out)
        return eq_err_set(err, EQ_ERR_INVALID, "model run: --config, --in and --out are required");
    if (a->step && !a->train) return eq_err_set(err, EQ_ERR_INVALID, "model run: --step needs --train");
    static s_cfgs c; /* large (keyword lists); one run at a time per process */
    eq_config_section secs[EQ_MODEL_CONFIG_NSECTIONS_OT + EQ_OPTIM_CONFIG_NSECTIONS];
    eq_model_config_sections_ot(&c.model, &c.wt, &c.fm, &c.ot, secs);
    eq_optim_config_sections(&c.optim, &c.sched, secs + EQ_MODEL_CONFIG_NSECTIONS_OT);
    const size_t ns = EQ_MODEL_CONFIG_NSECTIONS_OT + EQ_OPTIM_CONFIG_NSECTIONS;
    char *text = NULL;
    size_t len = 0;
    eq_status st = eq_file_read(a->config, 16u << 20, &text, &len, err);
    if (st != EQ_OK) return st;
    s_keep_sections(text, len, secs, ns);
    st = eq_config_parse_buffer(secs, ns, a->config, text, len, a->sets, a->nsets, err);
    free(text);
    if (st != EQ_OK) return st;

    eq_st_file *in = eq_st_open(a->in, NULL, err);
    if (!in) return eq_err_prefix(err, "--in: ");
    eq_backend *be = NULL;
    eq_model *m = NULL;
    eq_optim *o = NULL;
    eq_st_file *wf = NULL;
    float *x = NULL, *host = NULL;
    int32_t *y = NULL;
    eq_st_writer *w = NULL;
    long xi = eq_st_find(in, "x");
    const eq_tensor_desc *xd = xi >= 0 ? eq_st_desc(in, (size_t)xi) : NULL;
    if (!xd || xd->dtype != EQ_DT_F32 || xd->ndim != 4) {
        st = eq_err_set(err, EQ_ERR_INVALID, "%s: needs a tensor 'x', F32 NCHW [N][C][H][W]", a->in);
        goto done;
    }
    int64_t N = xd->shape[0], C = xd->shape[1], H = xd->shape[2], W = xd->shape[3];
    if (C != c.model.in_channels) {
        st = eq_err_set(err, EQ_ERR_INVALID, "%s: 'x' has %lld channels, [model] in_channels is %lld", a->in,
                        (long long)C, (long long)c.model.in_channels);
        goto done;
    }
    if (!(be = eq_backend_cpu_new(a->threads, err))) goto fail;
    if (!(m = eq_model_new_ot(be, &c.model, &c.wt, &c.fm, &c.ot, N, H, W, err))) goto fail;
    if (a->weights) {
        size_t missing = 0;
        if (!(wf = eq_st_open(a->weights, NULL, err))) goto fail;
        /* an eq checkpoint's optimiser state is not loaded here (allowed,
         * and logged); in a plain state dict every tensor must be the
         * model's */
        const char *fmt = eq_st_meta_get(wf, "format");
        bool ckpt = fmt && !strcmp(fmt, EQ_CKPT_FORMAT);
        st = eq_checkpoint_load_tensors(m, wf, "", true, ckpt, &missing, err);
        if (st != EQ_OK) {
            eq_err_prefix(err, "--weights %s: ", a->weights);
            goto done;
        }
    }
    /* NCHW -> NHWC; the file's data need not be aligned (a valid
     * safetensors file may put a 1-byte U8 tensor first): bytewise reads */
    const unsigned char *xs = eq_st_data(in, (size_t)xi, NULL);
    size_t nx = (size_t)(N * C * H * W);
    if (!(x = malloc(nx * sizeof *x))) goto nomem;
    for (int64_t n = 0; n < N; n++)
        for (int64_t ch = 0; ch < C; ch++)
            for (int64_t i = 0; i < H * W; i++)
                memcpy(&x[(n * H * W + i) * C + ch], xs + (size_t)((n * C + ch) * H * W + i) * sizeof *x, sizeof *x);
    float *xdev = eq_backend_alloc(be, nx * sizeof *x, err);
    if (!xdev) goto fail;
    st = eq_backend_upload(be, xdev, x, nx * sizeof *x, err);
    free(x);
    x = xdev;
    if (st == EQ_OK) st = eq_model_forward(m, x, a->train, err);
    if (st != EQ_OK) goto done;
    int64_t nb, K;
    const float *logits = eq_model_logits(m, &nb, &K);
    size_t bytes = (size_t)(nb * K) * 4 + 16;
    for (size_t i = 0; i < eq_model_tensor_count(m); i++) bytes += eq_model_tensor_at(m, i)->numel * 8 * 2 + 16;
    if (!(host = malloc(bytes)) || !(w = eq_st_writer_new())) goto nomem;
    size_t off = 0;
#define TAKE(nbytes) (off += ((nbytes) + 15) / 16 * 16, (char *)host + off - ((nbytes) + 15) / 16 * 16)
    char *lg = TAKE((size_t)(nb * K) * 4);
    if ((st = eq_backend_download(be, lg, logits, (size_t)(nb * K) * 4, err)) != EQ_OK ||
        (st = eq_st_writer_add(w, "logits", EQ_DT_F32, 2, (int64_t[]){nb, K}, lg, err)) != EQ_OK)
        goto done;
    float *lossp = NULL;
    if (a->train) {
        long yi = eq_st_find(in, "y");
        const eq_tensor_desc *yd = yi >= 0 ? eq_st_desc(in, (size_t)yi) : NULL;
        if (!yd || yd->ndim != 1 || yd->shape[0] != N || (yd->dtype != EQ_DT_I32 && yd->dtype != EQ_DT_I64)) {
            st = eq_err_set(err, EQ_ERR_INVALID, "%s: --train needs 'y', I32 or I64 [%lld]", a->in, (long long)N);
            goto done;
        }
        int32_t *yh = malloc((size_t)N * sizeof *yh);
        if (!yh) goto nomem;
        const unsigned char *yv = eq_st_data(in, (size_t)yi, NULL);
        for (int64_t i = 0; i < N; i++) {
            if (yd->dtype == EQ_DT_I32) {
                memcpy(&yh[i], yv + (size_t)i * 4, 4);
            } else {
                int64_t v;
                memcpy(&v, yv + (size_t)i * 8, 8);
                yh[i] = (int32_t)v;
            }
        }
        y = eq_backend_alloc(be, (size_t)N * sizeof *y, err);
        st = y ? eq_backend_upload(be, y, yh, (size_t)N * sizeof *y, err) : EQ_ERR_NOMEM;
        free(yh);
        if (st != EQ_OK) goto done;
        lossp = (float *)TAKE(4);
        if ((st = eq_model_loss(m, y, NULL, NULL, 0.0f, lossp, err)) != EQ_OK ||
            (st = eq_model_backward(m, NULL, err)) != EQ_OK ||
            (st = eq_st_writer_add(w, "loss", EQ_DT_F32, 1, (int64_t[]){1}, lossp, err)) != EQ_OK)
            goto done;
        for (size_t i = 0; i < eq_model_tensor_count(m); i++) {
            const eq_model_tensor *t = eq_model_tensor_at(m, i);
            if (t->kind != EQ_MT_PARAM) continue;
            char *g = TAKE(t->numel * 4), name[512];
            if (t->quant) memcpy(g, t->grad, t->numel * 4); /* host */
            else if ((st = eq_backend_download(be, g, t->grad, t->numel * 4, err)) != EQ_OK) goto done;
            snprintf(name, sizeof name, "grad.%s%s", t->quant ? "quant." : "", t->name);
            if ((st = eq_st_writer_add(w, name, EQ_DT_F32, t->ndim, t->shape, g, err)) != EQ_OK) goto done;
        }
    }
    if (a->step) {
        if (!(o = eq_optim_new(m, &c.optim, err))) goto fail;
        if ((st = eq_optim_step(o, c.optim.lr, err)) != EQ_OK) goto done;
        for (size_t i = 0; i < eq_model_tensor_count(m); i++) {
            const eq_model_tensor *t = eq_model_tensor_at(m, i);
            size_t nbt = t->numel * (t->dtype == EQ_DT_I64 ? 8 : 4);
            char *d = TAKE(nbt), name[512];
            if (t->quant || t->dtype == EQ_DT_I64) memcpy(d, t->data, nbt);
            else if ((st = eq_backend_download(be, d, t->data, nbt, err)) != EQ_OK) goto done;
            snprintf(name, sizeof name, "%s%s", t->quant ? "quant." : "", t->name);
            if ((st = eq_st_writer_add(w, name, t->dtype, t->ndim, t->shape, d, err)) != EQ_OK) goto done;
        }
    }
#undef TAKE
    st = eq_st_writer_save(w, a->out, err);
    goto done;
nomem:
    st = eq_err_set(err, EQ_ERR_NOMEM, "model run: out of memory");
    goto done;
fail: /* a constructor returned NULL and filled err */
    st = err && err->code != EQ_OK ? err->code : EQ_ERR_INTERNAL;
done:
    eq_st_writer_destroy(&w);
    free(host);
    if (be && x) eq_backend_release(be, x);
    if (be && y) eq_backend_release(be, y);
    eq_optim_destroy(&o);
    eq_model_destroy(&m);
    eq_backend_destroy(&be);
    eq_st_close(&wf);
    eq_st_close(&in);
    return st;
}

static const char s_usage[] =
    "usage: eq-model run --config C [--set section.key=value]... [--weights W.safetensors]\n"
    "                    --in X.safetensors --out Y.safetensors [--train [--step]] [--threads N]\n"
    "X holds x (F32 NCHW) and, for --train, y (labels); Y gets logits, with --train loss and\n"
    "grad.<name>, with --step the updated tensors.  doc/models.md describes the config.\n";

int eq_model_cli(int argc, char **argv)
{
    if (argc < 1 || !strcmp(argv[0], "help") || !strcmp(argv[0], "--help")) {
        fputs(s_usage, argc < 1 ? stderr : stdout);
        return argc < 1 ? 2 : 0;
    }
    if (strcmp(argv[0], "run") != 0) {
        fprintf(stderr, "eq-model: unknown command '%s'\n%s", argv[0], s_usage);
        return 2;
    }
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'}, {"set", required_argument, 0, 's'},
        {"weights", required_argument, 0, 'w'}, {"in", required_argument, 0, 'i'},
        {"out", required_argument, 0, 'o'},    {"train", no_argument, 0, 't'},
        {"step", no_argument, 0, 'S'},         {"threads", required_argument, 0, 'j'},
        {0, 0, 0, 0}};
    eq_model_run_args a = {0};
    const char *sets[64];
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': a.config = optarg; break;
        case 's':
            if (a.nsets == 64) {
                fprintf(stderr, "eq-model: at most 64 --set\n");
                return 2;
            }
            sets[a.nsets++] = optarg;
            break;
        case 'w': a.weights = optarg; break;
        case 'i': a.in = optarg; break;
        case 'o': a.out = optarg; break;
        case 't': a.train = true; break;
        case 'S': a.step = true; break;
        case 'j': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 0 || v > 1024) {
                fprintf(stderr, "eq-model: --threads: '%s' is not a count in [0, 1024]\n", optarg);
                return 2;
            }
            a.threads = (int)v;
            break;
        }
        default: fputs(s_usage, stderr); return 2;
        }
    }
    a.sets = sets;
    if (optind != argc || !a.config || !a.in || !a.out) {
        fputs(s_usage, stderr);
        return 2;
    }
    eq_err err = {0};
    if (eq_model_run(&a, &err) != EQ_OK) {
        fprintf(stderr, "eq-model: %s\n", err.msg);
        return 1;
    }
    return 0;
}
