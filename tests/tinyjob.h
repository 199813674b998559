/*
 * tests/tinyjob.h -- a tiny training job for tests that run eq-trainer:
 * a synthetic ImageFolder (eq_synth_imagefolder), a config on it and an
 * eq-loader serving it, in a scratch directory; and the comparison of two
 * runs' checkpoints bit for bit.  Used by check_scaler, check_pipeline and
 * check_dist (link the loader and safetensors libraries; include after
 * testutil.h).
 */
#ifndef EQ_TESTS_TINYJOB_H
#define EQ_TESTS_TINYJOB_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/safetensors.h"
#include "loader/loader.h"
#include "trainer/train.h"

typedef struct eq_tinyjob {
    char *dir;                 /* the scratch directory */
    char cfg[4200], ld_ep[4300];
    pid_t loader;
} eq_tinyjob;

/* The data set `sc` in dir/ds, the config `cfg_fmt` (its one %s: the data
 * set's path) in dir/tiny.cfg, an eq-loader (one thread) serving it on
 * ipc://dir/loader, its log dir/loader.log. */
static inline void eq_tinyjob_up(eq_tinyjob *v, const char *name, const eq_synth_cfg *sc, const char *cfg_fmt)
{
    eq_err e = { 0 };
    char path[4200], dsarg[4300], ld_ctl[4300], logp[4300];
    v->dir = eq_test_scratch(name);
    snprintf(path, sizeof path, "%s/ds", v->dir);
    ck_assert_msg(eq_synth_imagefolder(path, sc, &e) == EQ_OK, "%s", e.msg);
    snprintf(v->cfg, sizeof v->cfg, "%s/tiny.cfg", v->dir);
    FILE *f = fopen(v->cfg, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, cfg_fmt, path);
    fclose(f);
    snprintf(v->ld_ep, sizeof v->ld_ep, "ipc://%s/loader", v->dir);
    snprintf(ld_ctl, sizeof ld_ctl, "ipc://%s/loader.ctl", v->dir);
    snprintf(dsarg, sizeof dsarg, "tiny=%s", path);
    char *lav[] = { "eq-loader", "--bind", v->ld_ep, "--control", ld_ctl, "--threads", "1", "--dataset", dsarg, NULL };
    snprintf(logp, sizeof logp, "%s/loader.log", v->dir);
    v->loader = eq_test_spawn(lav, logp);
}

/* Stop the loader; remove the directory unless the environment variable
 * `keep_var` is set (then say where it is, for a look at logs and
 * checkpoints). */
static inline void eq_tinyjob_down(eq_tinyjob *v, const char *keep_var)
{
    kill(v->loader, SIGTERM);
    eq_test_wait(v->loader, 10000);
    if (keep_var && getenv(keep_var))
        fprintf(stderr, "kept %s\n", v->dir);
    else
        eq_test_scratch_rm(v->dir);
}

/* The tiny model's experiment (ResNet-20 at width 1/8, 4 classes, 3
 * channels) loaded from dir/m.cfg, which this writes: for tests that
 * build the model in process, without a loader. */
static inline void eq_tinyjob_experiment(const char *dir, eq_experiment *x)
{
    char cfg[4200];
    snprintf(cfg, sizeof cfg, "%s/m.cfg", dir);
    FILE *f = fopen(cfg, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "[data]\nchannels = 3\n[model]\nnum_classes = 4\nin_channels = 3\nwidth_alpha = 0.125\n"
               "[train]\nmean = 0.5, 0.5, 0.5\nstd = 0.25, 0.25, 0.25\n");
    fclose(f);
    eq_err e = { 0 };
    ck_assert_msg(eq_experiment_load(x, cfg, NULL, 0, NULL, &e) == EQ_OK, "%s", e.msg);
}

/* dir/tag/file, opened (the test fails if it cannot be). */
static inline eq_st_file *eq_test_ckpt(const char *dir, const char *tag, const char *file)
{
    char p[4400];
    eq_err e = { 0 };
    snprintf(p, sizeof p, "%s/%s/%s", dir, tag, file);
    eq_st_file *f = eq_st_open(p, NULL, &e);
    ck_assert_msg(f != NULL, "%s", e.msg);
    return f;
}
/* The same in v's directory. */
static inline eq_st_file *eq_tinyjob_ckpt(const eq_tinyjob *v, const char *tag, const char *file)
{
    return eq_test_ckpt(v->dir, tag, file);
}

/* Every tensor of run a's last checkpoint (dir/a/last.safetensors) has the
 * bits of run b's (and there are more than 50); with `position`, also the
 * same epoch and step in the metadata. */
static inline void eq_test_same_bits(const char *dir, const char *a, const char *b, int position)
{
    eq_st_file *fa = eq_test_ckpt(dir, a, "last.safetensors"), *fb = eq_test_ckpt(dir, b, "last.safetensors");
    ck_assert_uint_eq(eq_st_count(fa), eq_st_count(fb));
    ck_assert_uint_gt(eq_st_count(fa), 50);
    if (position) {
        ck_assert_str_eq(eq_st_meta_get(fa, "epoch"), eq_st_meta_get(fb, "epoch"));
        ck_assert_str_eq(eq_st_meta_get(fa, "step"), eq_st_meta_get(fb, "step"));
    }
    for (size_t i = 0; i < eq_st_count(fa); i++) {
        const char *nm = eq_st_name(fa, i);
        long j = eq_st_find(fb, nm);
        ck_assert_msg(j >= 0, "%s missing from %s", nm, b);
        size_t na, nb;
        const void *da = eq_st_data(fa, i, &na), *db = eq_st_data(fb, (size_t)j, &nb);
        ck_assert_uint_eq(na, nb);
        ck_assert_msg(!memcmp(da, db, na), "%s: %s and %s differ", nm, a, b);
    }
    fprintf(stderr, "%s and %s: %zu tensors, the same bits\n", a, b, eq_st_count(fa));
    eq_st_close(&fa);
    eq_st_close(&fb);
}

#endif
