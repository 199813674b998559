/*
 * quant/apply.c -- one quantizer step over safetensors files, and the
 * `apply` command line around it (used by eq-quant and eqctl).
 */
#include "quant/quant.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/safetensors.h"

/* NCHW <-> NHWC copies (also OIHW <-> OHWI). */
static void s_to_nhwc(const float *src, float *dst, const int64_t *s)
{
    int64_t B = s[0], C = s[1], HW = s[2] * s[3];
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < HW; i++) dst[(b * HW + i) * C + c] = src[(b * C + c) * HW + i];
}
static void s_to_nchw(const float *src, float *dst, const int64_t *s)
{
    int64_t B = s[0], C = s[1], HW = s[2] * s[3];
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < HW; i++) dst[(b * C + c) * HW + i] = src[(b * HW + i) * C + c];
}

eq_status eq_quant_apply_file(eq_quant_tag tag, const char *in_path, const char *out_path, int train,
                              int nhwc, const char *const *kv, size_t nkv, eq_err *err)
{
    eq_status st = EQ_OK;
    eq_st_file *in = NULL;
    eq_quant *q = NULL;
    eq_st_writer *w = NULL;
    float *x = NULL, *g = NULL, *y = NULL, *gx = NULL, *tmp = NULL;
    char (*names)[40] = NULL;

    eq_quant_opts o;
    eq_quant_opts_init(&o, tag);
    for (size_t i = 0; i < nkv; i++) {
        const char *eqs = strchr(kv[i], '=');
        if (!eqs || eqs == kv[i])
            return eq_err_set(err, EQ_ERR_INVALID, "option '%s': expected KEY=VALUE", kv[i]);
        char key[64];
        size_t kl = (size_t)(eqs - kv[i]);
        if (kl >= sizeof key) return eq_err_set(err, EQ_ERR_INVALID, "option '%s': key too long", kv[i]);
        memcpy(key, kv[i], kl);
        key[kl] = '\0';
        if (eq_quant_is_runtime_option(key) && strcmp(key, "stable") != 0) continue; /* after eq_quant_new */
        st = eq_quant_opts_set(&o, key, eqs + 1, err);
        if (st) return st;
    }

    in = eq_st_open(in_path, NULL, err);
    if (!in) return err ? (err->code ? err->code : EQ_ERR_IO) : EQ_ERR_IO;
    long xi = eq_st_find(in, "x");
    if (xi < 0) {
        st = eq_err_set(err, EQ_ERR_NOTFOUND, "%s: no tensor 'x'", in_path);
        goto out;
    }
    const eq_tensor_desc *xd0 = eq_st_desc(in, (size_t)xi);
    if (xd0->dtype != EQ_DT_F32 || (xd0->ndim != 4 && xd0->ndim != 2)) {
        st = eq_err_set(err, EQ_ERR_INVALID, "%s: tensor 'x' must be F32 of rank 4 or 2 (is %s, rank %d)",
                        in_path, eq_dtype_name(xd0->dtype), xd0->ndim);
        goto out;
    }
    int64_t n = eq_tensor_numel(xd0);
    eq_layout lay = tag == EQ_QTAG_WT ? (xd0->ndim == 4 ? EQ_LAYOUT_OIHW : EQ_LAYOUT_OI)
                                      : (xd0->ndim == 4 ? EQ_LAYOUT_NCHW : EQ_LAYOUT_NC);
    /* --nhwc: NCHW activations as NHWC, OIHW weights as OHWI (the same permutation) */
    int transpose = nhwc && (lay == EQ_LAYOUT_NCHW || lay == EQ_LAYOUT_OIHW);
    int64_t shp[4];
    for (int i = 0; i < xd0->ndim; i++) shp[i] = xd0->shape[i];
    eq_tensor_desc xd;
    if (transpose) {
        int64_t s2[4] = {shp[0], shp[2], shp[3], shp[1]};
        st = eq_tensor_desc_init(&xd, EQ_DT_F32, lay == EQ_LAYOUT_OIHW ? EQ_LAYOUT_OHWI : EQ_LAYOUT_NHWC,
                                 4, s2, err);
    } else {
        st = eq_tensor_desc_init(&xd, EQ_DT_F32, lay, xd0->ndim, shp, err);
    }
    if (st) goto out;
    x = eq_malloc_array((size_t)n, sizeof(float));
    y = eq_malloc_array((size_t)n, sizeof(float));
    gx = eq_malloc_array((size_t)n, sizeof(float));
    tmp = eq_malloc_array((size_t)n, sizeof(float));
    if (!x || !y || !gx || !tmp) {
        st = eq_err_set(err, EQ_ERR_NOMEM, "out of memory for %lld elements", (long long)n);
        goto out;
    }
    /* The file's F32 data need not be 4-byte aligned (a valid file may put
     * a U8 tensor of odd size first): read it bytewise, transpose the copy. */
    const void *xsrc = eq_st_data(in, (size_t)xi, NULL);
    if (transpose) {
        memcpy(tmp, xsrc, (size_t)n * sizeof(float));
        s_to_nhwc(tmp, x, shp);
    } else {
        memcpy(x, xsrc, (size_t)n * sizeof(float));
    }
    long gi = eq_st_find(in, "grad");
    if (gi >= 0) {
        const eq_tensor_desc *gd = eq_st_desc(in, (size_t)gi);
        int same = gd->dtype == EQ_DT_F32 && gd->ndim == xd0->ndim;
        for (int i = 0; same && i < gd->ndim; i++) same = gd->shape[i] == xd0->shape[i];
        if (!same) {
            st = eq_err_set(err, EQ_ERR_INVALID, "%s: tensor 'grad' must be F32 with the shape of 'x'",
                            in_path);
            goto out;
        }
        g = eq_malloc_array((size_t)n, sizeof(float));
        if (!g) {
            st = eq_err_set(err, EQ_ERR_NOMEM, "out of memory");
            goto out;
        }
        const void *gsrc = eq_st_data(in, (size_t)gi, NULL);
        if (transpose) {
            memcpy(tmp, gsrc, (size_t)n * sizeof(float));
            s_to_nhwc(tmp, g, shp);
        } else {
            memcpy(g, gsrc, (size_t)n * sizeof(float));
        }
    }

    q = eq_quant_new(&o, &xd, err);
    if (!q) {
        st = err && err->code ? err->code : EQ_ERR_INVALID;
        goto out;
    }
    /* run-time (policy) options */
    for (size_t i = 0; i < nkv; i++) {
        const char *eqs = strchr(kv[i], '=');
        char key[64];
        size_t kl = (size_t)(eqs - kv[i]);
        memcpy(key, kv[i], kl);
        key[kl] = '\0';
        if (!eq_quant_is_runtime_option(key) || strcmp(key, "stable") == 0) continue;
        st = eq_quant_set_option(q, key, eqs + 1, err);
        if (st) goto out;
    }
    /* initial state */
    for (size_t i = 0; i < eq_st_count(in); i++) {
        const char *nm = eq_st_name(in, i);
        if (strcmp(nm, "x") == 0 || strcmp(nm, "grad") == 0) continue;
        eq_quant_tensor *t = eq_quant_find(q, nm);
        if (!t) {
            char have[256] = "";
            size_t used = 0;
            for (size_t j = 0; j < eq_quant_tensor_count(q) && used < sizeof have; j++)
                used += (size_t)snprintf(have + used, sizeof have - used, "%s%s", j ? ", " : "",
                                         eq_quant_tensor_at(q, j)->name);
            st = eq_err_set(err, EQ_ERR_INVALID, "%s: tensor '%s' is not state of method %s (has: %s)",
                            in_path, nm, o.method, have);
            goto out;
        }
        const float *src = eq_st_get_f32(in, nm, t->numel, err);
        if (!src) {
            st = eq_err_prefix(err, "%s: state tensor '%s' (want %lld F32 elements): ", in_path, nm,
                               (long long)t->numel);
            if (!st) st = EQ_ERR_INVALID;
            goto out;
        }
        memcpy(t->data, src, (size_t)t->numel * sizeof(float));
    }

    st = eq_quant_check_state(q, err);
    if (st) {
        eq_err_prefix(err, "%s: ", in_path);
        goto out;
    }
    st = eq_quant_forward(q, &xd, x, y, train, err);
    if (st) goto out;
    if (g) {
        st = eq_quant_backward(q, x, g, gx, err);
        if (st) goto out;
    }
    if (transpose) {
        s_to_nchw(y, tmp, shp);
        memcpy(y, tmp, (size_t)n * sizeof(float));
        if (g) {
            s_to_nchw(gx, tmp, shp);
            memcpy(gx, tmp, (size_t)n * sizeof(float));
        }
    }

    w = eq_st_writer_new();
    size_t nt = eq_quant_tensor_count(q);
    names = calloc(2 * nt + 1, sizeof *names);
    if (!w || !names) {
        st = eq_err_set(err, EQ_ERR_NOMEM, "out of memory");
        goto out;
    }
    st = eq_st_writer_add(w, "y", EQ_DT_F32, xd0->ndim, shp, y, err);
    if (!st && g) st = eq_st_writer_add(w, "grad_x", EQ_DT_F32, xd0->ndim, shp, gx, err);
    for (size_t i = 0; !st && i < nt; i++) {
        eq_quant_tensor *t = eq_quant_tensor_at(q, i);
        if (g && t->grad) {
            snprintf(names[2 * i], sizeof names[0], "grad.%s", t->name);
            st = eq_st_writer_add(w, names[2 * i], EQ_DT_F32, t->ndim, t->shape, t->grad, err);
        }
        snprintf(names[2 * i + 1], sizeof names[0], "state.%s", t->name);
        if (!st) st = eq_st_writer_add(w, names[2 * i + 1], EQ_DT_F32, t->ndim, t->shape, t->data, err);
    }
    float aux = (float)eq_quant_aux_loss(q);
    if (!st && train && aux != 0.0f) st = eq_st_writer_add(w, "aux_loss", EQ_DT_F32, 1, (int64_t[]){1}, &aux, err);
    if (!st) st = eq_st_writer_meta(w, "method", o.method, err);
    if (!st) st = eq_st_writer_save(w, out_path, err);
out:
    eq_st_writer_destroy(&w);
    eq_quant_destroy(&q);
    eq_st_close(&in);
    free(names);
    free(x);
    free(g);
    free(y);
    free(gx);
    free(tmp);
    return st;
}

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: apply --tag wt|fm|ot --in IN.safetensors --out OUT.safetensors [--eval] [--nhwc]\n"
            "             KEY=VALUE...\n"
            "       methods\n"
            "KEYs are those of the [quant.<tag>] config section (method, bit, level, half_range,\n"
            "boundary, scale, quant_group, adaptive, grad_type, grad_scale, custom, gamma,\n"
            "custom_update, closed_form, stable, ...; see doc/quantizers.md) and the run-time\n"
            "(policy) keys enable, adaptive_restore, quant_loss_enable, quant_loss_function,\n"
            "quant_loss_alpha.\n"
            "IN: x (OIHW/OI weights, NCHW/NC activations), grad (optional), initial state by name.\n"
            "OUT: y, grad_x, grad.<param>, state.<name>, aux_loss (alpha*quantization loss, when\n"
            "not 0).  --nhwc runs activations as NHWC and conv weights as OHWI.\n");
}

int eq_quant_cli(int argc, char **argv)
{
    if (argc < 1 || strcmp(argv[0], "help") == 0 || strcmp(argv[0], "--help") == 0) {
        s_usage(argc < 1 ? stderr : stdout);
        return argc < 1 ? 2 : 0;
    }
    if (strcmp(argv[0], "methods") == 0) {
        for (const char *const *m = eq_quant_method_names(); *m; m++) printf("%s\n", *m);
        return 0;
    }
    if (strcmp(argv[0], "apply") != 0) {
        fprintf(stderr, "quant: unknown subcommand '%s'\n", argv[0]);
        s_usage(stderr);
        return 2;
    }
    static const struct option lopts[] = {
        {"tag", required_argument, NULL, 't'}, {"in", required_argument, NULL, 'i'},
        {"out", required_argument, NULL, 'o'}, {"eval", no_argument, NULL, 'e'},
        {"nhwc", no_argument, NULL, 'n'},      {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *tagname = NULL, *inp = NULL, *outp = NULL;
    int train = 1, nhwc = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "+", lopts, NULL)) != -1) {
        switch (c) {
        case 't': tagname = optarg; break;
        case 'i': inp = optarg; break;
        case 'o': outp = optarg; break;
        case 'e': train = 0; break;
        case 'n': nhwc = 1; break;
        case 'h': s_usage(stdout); return 0;
        default: s_usage(stderr); return 2;
        }
    }
    eq_quant_tag tag;
    if (!tagname || eq_quant_tag_parse(tagname, &tag) != 0) {
        fprintf(stderr, "quant apply: --tag must be wt, fm or ot\n");
        return 2;
    }
    if (!inp || !outp) {
        fprintf(stderr, "quant apply: --in and --out are required\n");
        return 2;
    }
    eq_err err = {0};
    eq_status st = eq_quant_apply_file(tag, inp, outp, train, nhwc, (const char *const *)argv + optind,
                                       (size_t)(argc - optind), &err);
    if (st) {
        fprintf(stderr, "quant apply: %s\n", err.msg[0] ? err.msg : eq_status_str(st));
        return 1;
    }
    return 0;
}
