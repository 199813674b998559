/*
 * fuzz/fuzz_config.c -- libFuzzer target for core/config.
 *
 * Parses the input as a config file against a schema using every key type
 * (shared key tables, a discarded section, a required key), then as up to
 * four --set overrides (one per input line).  Besides "no crash, no leak",
 * it checks two properties:
 *   - an error leaves a terminated, non-empty message with the same code;
 *   - a successful parse dumps, the dump parses back, and dumping that
 *     gives the same text (the effective config round-trips exactly).
 */
#include "core/config.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct fz_data {
    char path[256];
    int64_t batch;
    bool shuffle;
    char splits[3][8];
    size_t nsplits;
} fz_data;

typedef struct fz_optim {
    int method;
    double lr;
    double wd;
    int64_t milestones[4];
    size_t nmilestones;
    double betas[2];
    size_t nbetas;
} fz_optim;

typedef struct fz_quant {
    int method;
    int64_t bits;
    bool per_channel;
} fz_quant;

static const char *const s_optims[] = {"sgd", "adam", "adamw", NULL};
static const char *const s_quants[] = {"none", "lsq", "dorefa", "lqnet", NULL};

static const eq_config_key s_data_keys[] = {
    EQ_CONFIG_STRING_KEY(fz_data, path, EQ_CONFIG_REQUIRED, "dataset"),
    EQ_CONFIG_INT_KEY(fz_data, batch, "32", 1, INT64_MAX, "batch"),
    EQ_CONFIG_BOOL_KEY(fz_data, shuffle, "true", "shuffle"),
    EQ_CONFIG_STRING_LIST_KEY(fz_data, splits, nsplits, "train, val", 1, "splits"),
};
static const eq_config_key s_optim_keys[] = {
    EQ_CONFIG_ENUM_KEY(fz_optim, method, "sgd", s_optims, "optimiser"),
    EQ_CONFIG_FLOAT_KEY(fz_optim, lr, "0.1", 0, 10, "lr"),
    EQ_CONFIG_FLOAT_KEY(fz_optim, wd, "0", -INFINITY, INFINITY, "weight decay"),
    EQ_CONFIG_INT_LIST_KEY(fz_optim, milestones, nmilestones, "30, 60", 0, INT64_MIN, INT64_MAX,
                           "milestones"),
    EQ_CONFIG_FLOAT_LIST_KEY(fz_optim, betas, nbetas, "0.9, 0.999", 2, 0, 1, "betas"),
};
static const eq_config_key s_quant_keys[] = {
    EQ_CONFIG_ENUM_KEY(fz_quant, method, "none", s_quants, "quantizer"),
    EQ_CONFIG_INT_KEY(fz_quant, bits, "4", 1, 8, "bits"),
    EQ_CONFIG_BOOL_KEY(fz_quant, per_channel, "false", "per channel"),
};

typedef struct fz_cfg {
    fz_data data;
    fz_optim optim;
    fz_quant wt, fm;
    eq_config_section secs[5];
} fz_cfg;

static void s_bind(fz_cfg *c)
{
    memset(c, 0, sizeof *c);
    eq_config_section secs[5] = {
        {"data", NULL, s_data_keys, EQ_CONFIG_NKEYS(s_data_keys), &c->data},
        {"optim", NULL, s_optim_keys, EQ_CONFIG_NKEYS(s_optim_keys), &c->optim},
        {"quant.wt", NULL, s_quant_keys, EQ_CONFIG_NKEYS(s_quant_keys), &c->wt},
        {"quant.fm", NULL, s_quant_keys, EQ_CONFIG_NKEYS(s_quant_keys), &c->fm},
        {"eval", NULL, s_quant_keys, EQ_CONFIG_NKEYS(s_quant_keys), NULL},
    };
    memcpy(c->secs, secs, sizeof secs);
}

static void s_check_error(eq_status st, const eq_err *err)
{
    if (err->code != st || !memchr(err->msg, '\0', sizeof err->msg) || !err->msg[0]) abort();
}

/* Dump, parse the dump, dump again: both dumps must be identical. */
static void s_round_trip(fz_cfg *a)
{
    eq_err err;
    char *d1 = NULL, *d2 = NULL;
    size_t n1;
    if (eq_config_dump(a->secs, 5, &d1, &n1, &err) != EQ_OK) abort();
    static fz_cfg b;
    s_bind(&b);
    if (eq_config_parse_buffer(b.secs, 5, "dump", d1, n1, NULL, 0, &err) != EQ_OK) abort();
    if (eq_config_dump(b.secs, 5, &d2, NULL, &err) != EQ_OK) abort();
    if (strcmp(d1, d2) != 0) abort();
    free(d1);
    free(d2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static fz_cfg c;
    eq_err err;
    eq_status st;

    /* 1. the input as a file */
    s_bind(&c);
    st = eq_config_parse_buffer(c.secs, 5, "fuzz.cfg", (const char *)data, size, NULL, 0, &err);
    if (st == EQ_OK)
        s_round_trip(&c);
    else
        s_check_error(st, &err);

    /* 2. up to four input lines as --set overrides of an empty file */
    char *copy = malloc(size + 1);
    if (!copy) return 0;
    memcpy(copy, data, size);
    copy[size] = '\0';
    const char *sets[5] = {"data.path=p"};
    size_t nsets = 1;
    for (char *p = copy; nsets < 5 && p < copy + size;) {
        sets[nsets++] = p;
        char *nl = strchr(p, '\n');
        if (!nl) break;
        *nl = '\0';
        p = nl + 1;
    }
    s_bind(&c);
    st = eq_config_parse_buffer(c.secs, 5, "empty.cfg", "", 0, sets, nsets, &err);
    if (st == EQ_OK)
        s_round_trip(&c);
    else
        s_check_error(st, &err);
    free(copy);
    return 0;
}
