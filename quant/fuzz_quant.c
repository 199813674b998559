/*
 * quant/fuzz_quant.c -- libFuzzer target: options, shapes and data chosen by
 * the input drive eq_quant_new / forward / backward / check_state and the
 * option parser.  Bad combinations must be refused with an error, and any
 * accepted one must run without memory errors, UB or leaks (NaN/inf data
 * included).  Built by `make fuzz` (fuzz/Makemodule.am).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/pool.h"
#include "quant/quant.h"

static const char *const s_keys[][6] = {
    {"method", "dorefa", "bin", "pact", "lsq", "lsq-step"},
    {"method", "nonuniform", "xnor", "lqnet", "lsq", "dorefa"},
    {"bit", "1", "2", "3", "1.5", "8"},
    {"level", "0", "3", "5", "-1", "2"},
    {"half_range", "true", "false", "1", "0", "maybe"},
    {"boundary", "1.0", "0.5", "8", "0", "-1"},
    {"scale", "0.5", "3.0", "0", "-2", "1e-3"},
    {"quant_group", "0", "1", "2", "-1", "-3"},
    {"adaptive", "none", "var-mean", "mean", "var", "min"},
    {"grad_type", "none", "STE", "Triangle", "STE-scale", "mean-var"},
    {"grad_scale", "none", "fan-scale", "scale-fan", "element-scale", "scale-element"},
    {"custom", "none", "channel", "resolution", "none", "x"},
    {"gamma", "true", "false", "0", "1", "on"},
    {"custom_update", "true", "false", "0", "1", "off"},
    {"closed_form", "true", "false", "0", "1", "yes"},
    {"stable", "0", "1", "2", "5", "-1"},
    {"exact_grad_scale", "true", "false", "0", "1", "2"},
    {"norm_eps", "0", "1e-5", "1", "-1", "nan"},
    {"warmup_train_only", "true", "false", "0", "1", "?"},
    {"progressive", "true", "false", "0", "1", "?"},
    {"lq_codes", "floor", "zero", "zero", "true", ""},
};
#define S_NKEYS (sizeof s_keys / sizeof s_keys[0])

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 12) return 0;
    eq_quant_opts o;
    eq_quant_tag tag = (eq_quant_tag)(data[0] % 3);
    eq_quant_opts_init(&o, tag);
    size_t p = 1;
    int nopt = data[p++] % 8;
    for (int i = 0; i < nopt && p + 1 < size; i++, p += 2) {
        const char *const *k = s_keys[data[p] % S_NKEYS];
        eq_quant_opts_set(&o, k[0], k[1 + data[p + 1] % 5], NULL);
    }
    if (p + 6 > size) return 0;
    int64_t s[4] = {1 + data[p] % 4, 1 + data[p + 1] % 6, 1 + data[p + 2] % 4, 1 + data[p + 3] % 4};
    int lay_sel = data[p + 4] % 3, nsteps = 1 + data[p + 5] % 3;
    p += 6;
    eq_layout lay;
    int nd = 4;
    if (tag == EQ_QTAG_WT) {
        lay = lay_sel == 0 ? EQ_LAYOUT_OI : (lay_sel == 1 ? EQ_LAYOUT_OIHW : EQ_LAYOUT_OHWI);
    } else {
        lay = lay_sel == 0 ? EQ_LAYOUT_NC : (lay_sel == 1 ? EQ_LAYOUT_NCHW : EQ_LAYOUT_NHWC);
    }
    if (lay == EQ_LAYOUT_OI || lay == EQ_LAYOUT_NC) nd = 2;
    eq_tensor_desc d;
    if (eq_tensor_desc_init(&d, EQ_DT_F32, lay, nd, s, NULL) != EQ_OK) return 0;
    int64_t n = eq_tensor_numel(&d);
    float *x = calloc((size_t)n, sizeof(float)), *y = calloc((size_t)n, sizeof(float));
    float *g = calloc((size_t)n, sizeof(float)), *gx = calloc((size_t)n, sizeof(float));
    if (!x || !y || !g || !gx) abort();
    size_t avail = (size - p) / sizeof(float);
    for (int64_t i = 0; i < n; i++) {
        if ((size_t)i < avail) {
            memcpy(&x[i], data + p + 4 * (size_t)i, 4);
        } else {
            x[i] = (float)((i * 37) % 11) / 5.0f - 1.0f;
        }
        g[i] = (float)((i * 13) % 7) / 3.0f - 1.0f;
    }
    eq_err err = {0};
    eq_quant *q = eq_quant_new(&o, &d, &err);
    if (q) {
        /* run-time (policy) options from the last byte */
        static const char *const fns[] = {"None", "L2", "L1", "QDL"};
        unsigned rt = data[size - 1];
        eq_quant_set_option(q, "adaptive_restore", (rt & 1) ? "true" : "false", &err);
        eq_quant_set_option(q, "quant_loss_function", fns[(rt >> 1) & 3], &err);
        eq_quant_set_option(q, "quant_loss_enable", (rt & 8) ? "true" : "false", &err);
        eq_quant_set_option(q, "quant_loss_alpha", "0.5", &err);
        if ((rt & 0x30) == 0x30) eq_quant_set_option(q, "enable", "false", &err);
        for (int st = 0; st < nsteps; st++) {
            int train = (st + data[0]) & 1;
            if (eq_quant_forward(q, &d, x, y, train, &err) == EQ_OK) eq_quant_backward(q, x, g, gx, &err);
            if (st == 0) eq_quant_set_levels(q, -1, &err);
        }
        eq_quant_check_state(q, &err);
        for (size_t i = 0; i < eq_quant_tensor_count(q); i++) {
            eq_quant_tensor *t = eq_quant_tensor_at(q, i);
            volatile float sink = t->data[t->numel - 1];
            (void)sink;
        }
        eq_quant_destroy(&q);
    }
    free(x);
    free(y);
    free(g);
    free(gx);
    return 0;
}
