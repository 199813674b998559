/*
 * trainer/train.c -- the experiment config and the training loop (train.h).
 */
#include "trainer/train.h"

#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/rng.h"
#include "proto/proto_zmq.h"
#include "trainer/backend_select.h"
#include "trainer/checkpoint.h"
#include "trainer/cuda/bucket.h"
#include "trainer/dist.h"
#include "trainer/feeder.h"
#include "trainer/policy.h"
#include "trainer/scaler.h"

/* ================================================================ config */

static const char *const s_backend_names[] = { "cpu", "cuda", NULL };
static const char *const s_precision_names[] = { "fp32", "bf16", "fp16", NULL }; /* eq_precision order */

static const eq_config_key s_train_keys[] = {
    EQ_CONFIG_STRING_KEY(eq_train_cfg, name, "run", "job name in predictions and metrics (letters, digits, _ . - :)"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, max_steps, "0", 0, INT64_MAX, "train steps per epoch; 0 = the whole epoch"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, eval_every, "1", 0, 1000000, "evaluate every N epochs (and after the last); 0 = never"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, eval_max, "0", 0, INT64_MAX, "val samples evaluated (the first N); 0 = all"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, log_every, "20", 1, 1000000, "progress line and metrics every N steps"),
    EQ_CONFIG_STRING_KEY(eq_train_cfg, out_dir, "runs/fashion-mnist",
                         "checkpoints (last.safetensors, epochN.safetensors) and metrics.jsonl go here"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, ckpt_every, "0", 0, INT64_MAX, "also checkpoint every N steps; 0 = epoch ends only"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, threads, "0", 0, 1024, "CPU backend threads; 0 = one per CPU"),
    EQ_CONFIG_FLOAT_LIST_KEY(eq_train_cfg, mean, nmean, "0.2860", 1, -10, 10,
                             "per-channel mean of x/255 (default: Fashion-MNIST)"),
    EQ_CONFIG_FLOAT_LIST_KEY(eq_train_cfg, std, nstd, "0.3530", 1, 1e-6, 10,
                             "per-channel std of x/255 (default: Fashion-MNIST)"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, inflight, "0", 0, EQ_FEEDER_MAX_INFLIGHT,
                      "batch requests in flight over all loaders; 0 = 4 per loader"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, timeout_ms, "30000", 100, 3600000,
                      "a batch request unanswered this long is asked again (elsewhere)"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, loader_timeout, "120", 1, 86400,
                      "seconds without any reply from any loader (a job being opened, a batch) before the run "
                      "fails; raise it for a large ImageFolder on a slow filesystem"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, eval_timeout, "30", 1, 86400,
                      "seconds the val pass waits for eq-eval (--eval) to be connected and take predictions "
                      "before the run fails naming the endpoint (eq-eval may start after the trainer)"),
    EQ_CONFIG_FLOAT_KEY(eq_train_cfg, smoothing, "0", 0, 1, "label smoothing of the cross-entropy"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, iter_size, "1", 1, 1000000,
                      "gradient accumulation: sum the gradients of N steps (loss not divided), then one optimiser step"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, ranks, "1", 1, EQ_DIST_MAX_WORLD,
                      "trainer ranks (data parallel) that `eqctl run` starts; global_batch must be a multiple"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, dist_timeout_ms, "120000", 1000, 3600000,
                      "several ranks: how long the rendezvous and a collective wait for a rank"),
    EQ_CONFIG_BOOL_KEY(eq_train_cfg, overlap, "true",
                       "several ranks: all-reduce each gradient bucket as soon as the backward has finished its "
                       "gradients (false: after the whole backward; the results are the same bits)"),
    EQ_CONFIG_FLOAT_KEY(eq_train_cfg, bucket_mb, "25", 0.001, 1024,
                        "several ranks: MiB of gradients per all-reduce bucket (PyTorch DDP's bucket_cap_mb; the "
                        "first bucket holds at most 1 MiB)"),
    EQ_CONFIG_ENUM_KEY(eq_train_cfg, backend, "cpu", s_backend_names,
                       "compute backend: cpu (OpenBLAS, `threads`) or cuda (a build with CUDA and a GPU)"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, device, "0", 0, 1024,
                      "cuda: the GPU's device ordinal (with several ranks, rank r uses (device + r) mod the number of GPUs)"),
    EQ_CONFIG_STRING_KEY(eq_train_cfg, policy, "",
                         "policy file: quantizer changes at start-up and at given epochs (doc/config.md "
                         "\"Policy files\"); relative to the working directory; empty = none"),
    EQ_CONFIG_ENUM_KEY(eq_train_cfg, precision, "fp32", s_precision_names,
                       "activations and their gradients stored as fp32, bf16 or fp16 values, weights and "
                       "optimiser in fp32 (the original's --fp16 --opt_level O1 is fp16); meaningful on a GPU, "
                       "an emulation on the CPU backend (values rounded as on a GPU, fp32 arithmetic: slower)"),
    EQ_CONFIG_STRING_KEY(eq_train_cfg, loss_scale, "auto",
                         "loss scaling (PyTorch GradScaler): dynamic, none, or a fixed scale (>= 1.17549e-38, fp32's "
                         "smallest normal value); auto = dynamic for precision fp16, none otherwise. A step with an "
                         "inf/NaN gradient is skipped"),
    EQ_CONFIG_FLOAT_KEY(eq_train_cfg, loss_scale_init, "65536", 0, 3.4028234663852886e38,
                        "dynamic loss scale: the initial scale (GradScaler init_scale), >= 1.17549e-38 (fp32's "
                        "smallest normal value)"),
    EQ_CONFIG_FLOAT_KEY(eq_train_cfg, loss_scale_growth_factor, "2", 1, 1e6,
                        "dynamic loss scale: multiplied by this after growth_interval steps without inf/NaN, > 1"),
    EQ_CONFIG_FLOAT_KEY(eq_train_cfg, loss_scale_backoff_factor, "0.5", 0, 1,
                        "dynamic loss scale: multiplied by this on a step with an inf/NaN gradient, in (0, 1)"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, loss_scale_growth_interval, "2000", 1, INT32_MAX,
                      "dynamic loss scale: successful steps (optimiser updates) before the scale grows"),
};

/* The trainer's defaults where they differ from the owning module's: the
 * embedded Fashion-MNIST experiment. */
typedef struct s_def {
    const char *section, *key, *def;
} s_def;
static const s_def s_defaults[] = {
    { "model", "arch", "resnet20" },
    { "model", "keyword", "origin, cbsa, fix_pooling, singleconv, fix, real_skip, cifar10" },
    { "model", "in_channels", "1" },
    { "model", "width_alpha", "0.125" },
    { "quant.wt", "enable", "true" },
    { "quant.wt", "method", "lsq" },
    { "quant.wt", "bit", "4" },
    { "quant.fm", "enable", "true" },
    { "quant.fm", "method", "lsq" },
    { "quant.fm", "bit", "4" },
    { "optim", "lr", "0.1" },
    { "optim", "weight_decay", "5e-4" },
    { "schedule", "policy", "sgdr" },
    { "schedule", "lr_custom_step", "" },
    { "schedule", "epochs", "1" },
};

#define S_MAX_KEYS 64
static eq_config_key s_keys[EQ_EXPERIMENT_NSECTIONS][S_MAX_KEYS];
static bool s_keys_built;

void eq_experiment_sections(eq_experiment *x, eq_config_section secs[EQ_EXPERIMENT_NSECTIONS])
{
    eq_loader_config_sections(x ? &x->loader : NULL, x ? &x->data : NULL, secs);
    eq_model_config_sections_ot(x ? &x->model : NULL, x ? &x->wt : NULL, x ? &x->fm : NULL, x ? &x->ot : NULL,
                                secs + 2);
    eq_optim_config_sections(x ? &x->optim : NULL, x ? &x->sched : NULL, secs + 2 + EQ_MODEL_CONFIG_NSECTIONS_OT);
    secs[2 + EQ_MODEL_CONFIG_NSECTIONS_OT + EQ_OPTIM_CONFIG_NSECTIONS] = (eq_config_section){ "train", "the trainer's loop, outputs and data path (eq-trainer)", s_train_keys,
                                   EQ_CONFIG_NKEYS(s_train_keys), x ? &x->train : NULL };
    _Static_assert(2 + EQ_MODEL_CONFIG_NSECTIONS_OT + EQ_OPTIM_CONFIG_NSECTIONS + 1 == EQ_EXPERIMENT_NSECTIONS,
                   "EQ_EXPERIMENT_NSECTIONS counts every section");
    /* Copy the owners' tables and put the trainer's defaults in. */
    for (int i = 0; i < EQ_EXPERIMENT_NSECTIONS; i++) {
        EQ_ASSERT(secs[i].nkeys <= S_MAX_KEYS);
        if (!s_keys_built) {
            memcpy(s_keys[i], secs[i].keys, secs[i].nkeys * sizeof(eq_config_key));
            for (size_t d = 0; d < sizeof s_defaults / sizeof s_defaults[0]; d++) {
                if (strcmp(s_defaults[d].section, secs[i].name)) continue;
                size_t k = 0;
                while (k < secs[i].nkeys && strcmp(s_keys[i][k].name, s_defaults[d].key)) k++;
                EQ_ASSERT(k < secs[i].nkeys);
                s_keys[i][k].def = s_defaults[d].def;
            }
        }
        secs[i].keys = s_keys[i];
    }
    s_keys_built = true;
}

/* [train] loss_scale and its parameters: the mode and static value, and
 * the ranges the key table cannot say (open intervals). */
static eq_status s_loss_scale_cfg(eq_train_cfg *c, const char *path, eq_err *err)
{
    const char *v = c->loss_scale;
    if (!strcmp(v, "auto"))
        c->loss_scale_mode = c->precision == EQ_PREC_FP16 ? EQ_LOSS_SCALE_DYNAMIC : EQ_LOSS_SCALE_NONE;
    else if (!strcmp(v, "dynamic"))
        c->loss_scale_mode = EQ_LOSS_SCALE_DYNAMIC;
    else if (!strcmp(v, "none"))
        c->loss_scale_mode = EQ_LOSS_SCALE_NONE;
    else {
        char *end = NULL;
        errno = 0;
        double d = strtod(v, &end);
        if (end == v || *end || errno || !(d > 0) || !isfinite((float)d) || !((float)d >= FLT_MIN))
            return eq_err_set(err, EQ_ERR_INVALID,
                              "%s: [train] loss_scale = '%s': expected auto, dynamic, none or a positive number "
                              "(finite and >= %g, fp32's smallest normal value, as a float)",
                              path, v, (double)FLT_MIN);
        c->loss_scale_mode = EQ_LOSS_SCALE_STATIC;
        c->loss_scale_value = d;
    }
    /* below FLT_MIN the unscale factor 1/scale is inf as a float */
    if (!((float)c->loss_scale_init >= FLT_MIN))
        return eq_err_set(err, EQ_ERR_INVALID,
                          "%s: [train] loss_scale_init = %g: must be >= %g (fp32's smallest normal value) as a float",
                          path, c->loss_scale_init, (double)FLT_MIN);
    if (!(c->loss_scale_growth_factor > 1))
        return eq_err_set(err, EQ_ERR_INVALID, "%s: [train] loss_scale_growth_factor = %g: must be > 1", path,
                          c->loss_scale_growth_factor);
    if (!(c->loss_scale_backoff_factor > 0 && c->loss_scale_backoff_factor < 1))
        return eq_err_set(err, EQ_ERR_INVALID, "%s: [train] loss_scale_backoff_factor = %g: must be in (0, 1)", path,
                          c->loss_scale_backoff_factor);
    return EQ_OK;
}

eq_status eq_experiment_load(eq_experiment *x, const char *path, const char *const *sets, size_t nsets,
                             char **text_out, eq_err *err)
{
    eq_config_section secs[EQ_EXPERIMENT_NSECTIONS];
    memset(x, 0, sizeof *x);
    eq_experiment_sections(x, secs);
    eq_status st = eq_config_load(secs, EQ_EXPERIMENT_NSECTIONS, path, sets, nsets, err);
    if (st) return st;
    int64_t C = x->data.channels;
    if ((int64_t)x->train.nmean != C || (int64_t)x->train.nstd != C)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "%s: [train] mean and std need one value per channel ([data] channels = %" PRId64
                          "; got %zu and %zu)",
                          path, C, x->train.nmean, x->train.nstd);
    if (x->model.in_channels != C)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: [model] in_channels = %" PRId64 " but [data] channels = %" PRId64,
                          path, x->model.in_channels, C);
    for (const char *p = x->train.name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || strchr("_.-:", *p)))
            return eq_err_set(err, EQ_ERR_INVALID, "%s: [train] name '%s': only letters, digits and _ . - :", path,
                              x->train.name);
    if (!x->train.name[0]) return eq_err_set(err, EQ_ERR_INVALID, "%s: [train] name is empty", path);
    if ((st = s_loss_scale_cfg(&x->train, path, err))) return st;
    x->model.precision = x->train.precision;
    if (text_out) return eq_config_dump(secs, EQ_EXPERIMENT_NSECTIONS, text_out, NULL, err);
    return EQ_OK;
}

/* ================================================================== loop */

/* A batch fetched into one of the pipeline's two device slots. */
typedef struct s_slot {
    uint64_t epoch, step;
    uint32_t offset, count;
    bool mixed; /* mixup/CutMix labels: the loss takes yb and lambda */
    bool blend; /* mixup: the images are blended while staged */
} s_slot;

struct eq_train {
    eq_experiment x;
    char *config_text;
    char *resume;
    eq_backend *be;
    eq_model *model;
    eq_optim *optim;
    eq_qlayers *qlayers; /* the model's quantized layers (policy, quant metrics) */
    eq_policy *policy;   /* [train] policy; NULL: none */
    void *zctx;
    eq_feeder *feeder;
    void *pub, *ctl, *eval;
    char pub_ep[256], ctl_ep[256];
    char eval_ep[256]; /* --eval, for messages */
    FILE *jsonl;
    bool be_borrowed;          /* eq_train_opts.backend: the caller's, not destroyed here */
    float *x_dev;              /* the network input [B][H][W][C], staged on the device */
    /* the input pipeline ("The input pipeline" above s_fetch): two slots */
    uint8_t *slot_dev[2];      /* device: images [B][H][W][C] uint8, then at lab_off the label block */
    int32_t *lab_host[2];      /* host: the label block: ya, yb, partner [B] int32, lambda [B] float */
    s_slot slot[2];            /* what the host keeps of each slot's batch */
    size_t lab_off;            /* the label block's offset in a device slot */
    int next_slot;             /* the slot the next fetch fills */
    float scale[16], shift[16]; /* staging: v = u * scale[c] + shift[c] (eq_train_stage's) */
    float *logits_host;
    int64_t G, H, W, C, classes;
    int train_job, val_job;
    uint64_t train_size, val_size;
    volatile sig_atomic_t stop;
    bool done_sent;
    bool diverged;
    /* options */
    char *pretrained;
    bool evaluate;
    /* ranks (dist.h); comm is NULL for one rank */
    int rank, world;
    int64_t B; /* this rank's batch: G / world */
    char *rendezvous, *dist_bind;
    eq_comm *comm;
    int b_ctl, b_bn, b_qbuf, b_qpar; /* bucket ids, -1: none */
    int b_grad[EQ_COMM_MAX_BUCKETS]; /* gradient buckets, in the order backward finishes them */
    int nb_grad;
    eq_bucket_plan *plan;  /* which gradients each bucket holds (trainer/cuda/bucket.h) */
    size_t *gparam;        /* per tensor: its parameter in the plan (SIZE_MAX: no gradient) */
    /* overlap: the model's grad-ready hook starts the buckets (s_grad_ready) */
    bool comm_step;        /* this backward's gradients are reduced (the window's last step) */
    bool acc_first;        /* iter_size > 1, comm_step: this step also starts the accumulator */
    int next_bucket;       /* the next bucket to start (they start in order) */
    eq_status hook_st;     /* the hook's first error, reported after the backward */
    eq_err hook_err;
    double bwd_s, wait_s;  /* this epoch's reducing steps: backward, then waiting for the buckets */
    uint64_t comm_n;       /* and their count */
    float ctlv[2];         /* loss sum, stop flags */
    int64_t warmup_steps;  /* quantizer warm-up: average its parameters until then */
    /* iter_size > 1: gradients summed here (device), one region per tensor */
    float *acc;
    size_t *acc_off;       /* per tensor: its region's offset in acc (or qacc) */
    float *qacc;           /* quantizer gradients (host memory, quant/) on a device-memory backend */
    /* loss scaling ([train] loss_scale; trainer/scaler.h) */
    bool scaling;          /* a scaler runs (loss_scale not none) */
    eq_scaler scaler;
    float *dev_inv;        /* the unscale's device scalar */
    bool scaler_agree;     /* several ranks: some gradient is not all-reduced, agree on inf/NaN explicitly */
    uint64_t epoch_skipped; /* optimiser steps skipped this epoch */
    uint64_t epoch_updates; /* optimiser updates (taken or skipped) this epoch */
    /* progress */
    uint64_t epoch, step, steps;
    double last_loss, img_s, wait_pct;
    double t_start;
};

static eq_status s_mkdirs(const char *dir, eq_err *err)
{
    char p[1024];
    snprintf(p, sizeof p, "%s", dir);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0777) != 0 && errno != EEXIST) return eq_err_set(err, EQ_ERR_IO, "mkdir %s: %s", p, strerror(errno));
        *s = '/';
    }
    if (mkdir(p, 0777) != 0 && errno != EEXIST) return eq_err_set(err, EQ_ERR_IO, "mkdir %s: %s", p, strerror(errno));
    return EQ_OK;
}

void eq_train_destroy(eq_train **self_p)
{
    if (!self_p || !*self_p) return;
    eq_train *t = *self_p;
    eq_comm_destroy(&t->comm);
    eq_bucket_plan_destroy(&t->plan);
    free(t->gparam);
    free(t->acc_off);
    free(t->qacc);
    eq_feeder_destroy(&t->feeder);
    eq_proto_socket_close(&t->pub);
    eq_proto_socket_close(&t->ctl);
    eq_proto_socket_close(&t->eval);
    if (t->zctx) zmq_ctx_term(t->zctx);
    eq_policy_destroy(&t->policy);
    eq_qlayers_destroy(&t->qlayers);
    eq_optim_destroy(&t->optim);
    eq_model_destroy(&t->model);
    if (t->be) {
        eq_backend_release(t->be, t->x_dev);
        eq_backend_release(t->be, t->slot_dev[0]);
        eq_backend_release(t->be, t->slot_dev[1]);
        eq_backend_release(t->be, t->acc);
        eq_backend_release(t->be, t->dev_inv);
    }
    free(t->lab_host[0]);
    free(t->lab_host[1]);
    if (!t->be_borrowed) eq_backend_destroy(&t->be);
    free(t->logits_host);
    free(t->config_text);
    free(t->resume);
    free(t->pretrained);
    free(t->rendezvous);
    free(t->dist_bind);
    if (t->jsonl) fclose(t->jsonl);
    free(t);
    *self_p = NULL;
}

void eq_train_stop(eq_train *t)
{
    t->stop = 1;
    /* Several ranks stop together at a step boundary (the stop flag travels
     * with the loss); a rank leaving mid-step would hang the others. */
    if (t->feeder && t->world <= 1) eq_feeder_interrupt(t->feeder);
}

bool eq_train_diverged(const eq_train *t) { return t->diverged; }

const char *eq_train_pub_endpoint(const eq_train *t) { return t->pub_ep; }
const char *eq_train_control_endpoint(const eq_train *t) { return t->ctl_ep; }

eq_train *eq_train_new(const eq_experiment *x, const eq_train_opts *o, eq_err *err)
{
    eq_train *t = calloc(1, sizeof *t);
    if (!t) {
        eq_err_set(err, EQ_ERR_NOMEM, "trainer: out of memory");
        return NULL;
    }
    t->x = *x;
    if (o->config_text && !(t->config_text = strdup(o->config_text))) goto nomem;
    if (o->resume && !(t->resume = strdup(o->resume))) goto nomem;
    if (o->pretrained && !(t->pretrained = strdup(o->pretrained))) goto nomem;
    if (o->rendezvous && !(t->rendezvous = strdup(o->rendezvous))) goto nomem;
    if (!(t->dist_bind = strdup(o->dist_bind && *o->dist_bind ? o->dist_bind : "tcp://127.0.0.1:*"))) goto nomem;
    t->evaluate = o->evaluate;
    t->rank = o->rank;
    t->world = o->world > 0 ? o->world : 1;
    t->b_ctl = t->b_bn = t->b_qbuf = t->b_qpar = -1;
    t->G = x->data.global_batch;
    t->H = x->data.height;
    t->W = x->data.width;
    t->C = x->data.channels;
    t->classes = x->model.num_classes;
    if (t->world > EQ_DIST_MAX_WORLD || t->rank < 0 || t->rank >= t->world) {
        eq_err_set(err, EQ_ERR_INVALID, "rank %d of world %d: need 0 <= rank < world <= %d", t->rank, t->world,
                   EQ_DIST_MAX_WORLD);
        goto fail;
    }
    if (t->G % t->world) {
        eq_err_set(err, EQ_ERR_INVALID, "[data] global_batch = %" PRId64 " is not a multiple of the %d ranks", t->G,
                   t->world);
        goto fail;
    }
    t->B = t->G / t->world;
    /* aug "det" makes detection batches: image ids, boxes and masks, no
     * class labels to train a classifier on. */
    if (x->data.aug_train == EQ_AUG_DET || x->data.aug_val == EQ_AUG_DET) {
        eq_err_set(err, EQ_ERR_INVALID,
                   "[data] aug_%s = det: eq-trainer trains classifiers; detection batches (COCO) have no "
                   "trainer yet",
                   x->data.aug_train == EQ_AUG_DET ? "train" : "val");
        goto fail;
    }
    if (t->world > 1 && t->rank == 0 && !(o->control && *o->control)) {
        eq_err_set(err, EQ_ERR_INVALID, "rank 0 of %d needs a control endpoint (--control): the others join there",
                   t->world);
        goto fail;
    }
    if (t->world > 1 && t->rank > 0 && !(o->rendezvous && *o->rendezvous)) {
        eq_err_set(err, EQ_ERR_INVALID, "rank %d of %d needs rank 0's control endpoint (--rendezvous)", t->rank,
                   t->world);
        goto fail;
    }
    if (o->resume && o->pretrained) {
        eq_err_set(err, EQ_ERR_INVALID, "--resume and --pretrained together: give one (resume restores everything)");
        goto fail;
    }
    if (s_mkdirs(x->train.out_dir, err)) goto fail;
    char path[1100];
    snprintf(path, sizeof path, "%s/metrics.jsonl", x->train.out_dir);
    if (t->rank == 0 && !(t->jsonl = fopen(path, "a"))) {
        eq_err_set(err, EQ_ERR_IO, "%s: %s", path, strerror(errno));
        goto fail;
    }
    int device = (int)x->train.device;
    if (x->train.backend == 1 && t->world > 1 && !o->backend) { /* one GPU per rank: (device + r) mod #GPUs */
        int ndev = eq_backend_cuda_devices(NULL, 0);
        if (ndev > 0) device = (int)((x->train.device + t->rank) % ndev); /* else eq_backend_open says why */
    }
    if (o->backend) {
        t->be = o->backend;
        t->be_borrowed = true;
    } else if (eq_backend_open(s_backend_names[x->train.backend],
                               x->train.backend == 0 ? (int)x->train.threads : device, &t->be, err)) {
        goto fail;
    }
    /* [train] precision: the model's (eq_experiment_load sets it too) */
    t->x.model.precision = x->train.precision;
    if (x->train.precision != EQ_PREC_FP32 && x->train.backend == 0 && t->rank == 0)
        eq_info("precision %s on the cpu backend is an emulation: activations and their gradients are rounded to "
                "%s values as on a GPU, the arithmetic stays fp32 (a reference for GPU runs: slower, not faster)",
                eq_precision_name((eq_precision)x->train.precision), eq_precision_name((eq_precision)x->train.precision));
    if (!(t->model = eq_model_new_ot(t->be, &t->x.model, &x->wt, &x->fm, &x->ot, t->B, t->H, t->W, err))) goto fail;
    if (x->train.loss_scale_mode != EQ_LOSS_SCALE_NONE) {
        bool dyn = x->train.loss_scale_mode == EQ_LOSS_SCALE_DYNAMIC;
        if (eq_scaler_init(&t->scaler, dyn, dyn ? x->train.loss_scale_init : x->train.loss_scale_value,
                           x->train.loss_scale_growth_factor, x->train.loss_scale_backoff_factor,
                           x->train.loss_scale_growth_interval, err)) {
            eq_err_prefix(err, "[train] loss_scale: ");
            goto fail;
        }
        t->scaling = true;
    }
    if (!(t->optim = eq_optim_new(t->model, &x->optim, err))) goto fail;
    {
        const eq_model_quant_cfg *qc[EQ_QTAG_COUNT] = { x->wt.enable ? &x->wt : NULL, x->fm.enable ? &x->fm : NULL,
                                                        x->ot.enable ? &x->ot : NULL };
        if (!(t->qlayers = eq_qlayers_new(t->model, qc, err))) goto fail;
    }
    if (x->train.policy[0] &&
        (!(t->policy = eq_policy_load(x->train.policy, err)) || eq_policy_check(t->policy, t->qlayers, err)))
        goto fail;
    size_t xn = (size_t)(t->B * t->H * t->W * t->C);
    if (!(t->x_dev = eq_backend_alloc(t->be, xn * sizeof(float), err))) goto fail;
    t->lab_off = (xn + 63) / 64 * 64;
    for (int k = 0; k < 2; k++) {
        if (!(t->slot_dev[k] = eq_backend_alloc(t->be, t->lab_off + 4 * (size_t)t->B * sizeof(int32_t), err)))
            goto fail;
        if (!(t->lab_host[k] = calloc(4 * (size_t)t->B, sizeof(int32_t)))) goto nomem;
    }
    for (int64_t c = 0; c < t->C; c++) { /* eq_train_stage's */
        t->scale[c] = (float)(1.0 / (255.0 * x->train.std[c]));
        t->shift[c] = (float)(-x->train.mean[c] / x->train.std[c]);
    }
    if (!(t->logits_host = malloc((size_t)(t->B * t->classes) * sizeof(float)))) goto nomem;
    if (x->train.iter_size > 1) {
        size_t ng = 0, nq = 0, nt = eq_model_tensor_count(t->model);
        if (!(t->acc_off = eq_calloc_array(nt ? nt : 1, sizeof *t->acc_off))) goto nomem;
        for (size_t i = 0; i < nt; i++) {
            const eq_model_tensor *m = eq_model_tensor_at(t->model, i);
            if (!m->grad) continue;
            size_t *n = m->quant && !eq_backend_host_memory(t->be) ? &nq : &ng;
            t->acc_off[i] = *n;
            *n += m->numel;
        }
        if (ng && !(t->acc = eq_backend_alloc(t->be, ng * sizeof(float), err))) goto fail;
        if (nq && !(t->qacc = eq_calloc_array(nq, sizeof *t->qacc))) goto nomem;
    }
    t->zctx = zmq_ctx_new();
    if (!t->zctx) {
        eq_err_set(err, EQ_ERR_NET, "zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    char fname[EQ_PROTO_NAME_CAP];
    snprintf(fname, sizeof fname, "trainer:%d:%ld", t->rank, (long)getpid());
    eq_feeder_cfg fc = { .loaders = o->loaders, .nloaders = o->nloaders, .inflight = (uint32_t)x->train.inflight,
                         .timeout_ms = (uint32_t)x->train.timeout_ms,
                         .give_up_ms = (uint32_t)(x->train.loader_timeout * 1000), .name = fname };
    if (!(t->feeder = eq_feeder_new(t->zctx, &fc, err))) goto fail;
    eq_proto_sockopts so;
    eq_proto_sockopts_default(&so, NULL);
    so.linger_ms = 2000; /* the last METRICS and PRED messages must leave before exit */
    if (o->pub && *o->pub) {
        if (!(t->pub = eq_proto_socket(t->zctx, ZMQ_PUB, &so, err)) ||
            eq_proto_bind(t->pub, o->pub, t->pub_ep, sizeof t->pub_ep, err))
            goto fail;
    }
    if (o->control && *o->control) {
        if (!(t->ctl = eq_proto_socket(t->zctx, ZMQ_ROUTER, &so, err)) ||
            eq_proto_bind(t->ctl, o->control, t->ctl_ep, sizeof t->ctl_ep, err))
            goto fail;
    }
    if (o->eval && *o->eval) {
        /* ZMQ_IMMEDIATE: a PRED is queued only to a completed connection.
         * Without it, with no eq-eval listening, it went into the pipe of
         * the pending connection, the pass "succeeded" and the linger
         * dropped everything at exit (exit 0, no result, no error).  Now
         * s_send_pred waits for POLLOUT, at most eval_timeout s. */
        int one = 1;
        snprintf(t->eval_ep, sizeof t->eval_ep, "%s", o->eval);
        if (!(t->eval = eq_proto_socket(t->zctx, ZMQ_PUSH, &so, err))) goto fail;
        if (zmq_setsockopt(t->eval, ZMQ_IMMEDIATE, &one, sizeof one)) {
            eq_err_set(err, EQ_ERR_NET, "eval socket: ZMQ_IMMEDIATE: %s", zmq_strerror(zmq_errno()));
            goto fail;
        }
        if (eq_proto_connect(t->eval, o->eval, err)) goto fail;
    }
    return t;
nomem:
    eq_err_set(err, EQ_ERR_NOMEM, "trainer: out of memory");
fail:
    eq_train_destroy(&t);
    return NULL;
}

/* ---------------------------------------------------------------- helpers */

static void s_publish(eq_train *t, const char *kind, double loss, double lr, double eta, uint32_t status)
{
    if (!t->pub) return;
    eq_msg m;
    eq_proto_msg_init(&m, EQ_MSG_METRICS);
    eq_msg_metrics *x = &m.u.metrics;
    snprintf(x->job, sizeof x->job, "%s", t->x.train.name);
    snprintf(x->source, sizeof x->source, "trainer");
    snprintf(x->kind, sizeof x->kind, "%s", kind);
    x->epoch = t->epoch;
    x->step = t->step;
    x->steps = t->steps;
    x->loss = isfinite(loss) ? loss : 0;
    x->lr = lr;
    x->img_s = t->img_s;
    x->wait_pct = t->wait_pct;
    x->eta_s = eta;
    x->status = status;
    x->elapsed_s = eq_clock_sec() - t->t_start;
    if (!strcmp(kind, "done")) t->done_sent = true;
    eq_err e = { 0 };
    if (eq_proto_send(t->pub, NULL, &m, NULL, 0, ZMQ_DONTWAIT, &e) != EQ_OK) eq_debug("publish: %s", e.msg);
}

/* Answer one control command (text frame `c`, `len` bytes) from `id`. */
static void s_ctl_answer(eq_train *t, void *router, const void *id, size_t idlen, const char *c, size_t len)
{
    char reply[1024], arg[300] = "";
    if (len == 6 && !memcmp(c, "status", 6)) {
        eq_feeder_stats fs;
        eq_feeder_stats_get(t->feeder, &fs);
        snprintf(reply, sizeof reply,
                 "{\"role\":\"trainer\",\"pid\":%ld,\"job\":\"%s\",\"rank\":%d,\"world\":%d,\"epoch\":%" PRIu64
                 ",\"step\":%" PRIu64 ",\"steps\":%" PRIu64
                 ",\"loss\":%.6g,\"img_s\":%.1f,\"wait_pct\":%.2f,\"loaders\":%u,\"loaders_alive\":%u"
                 ",\"batches\":%" PRIu64 ",\"reissued\":%" PRIu64 ",\"late_dropped\":%" PRIu64
                 ",\"precision\":\"%s\",\"loss_scale\":%.9g,\"skipped_steps\":%" PRIu64 "}",
                 (long)getpid(), t->x.train.name, t->rank, t->world, t->epoch, t->step, t->steps,
                 isfinite(t->last_loss) ? t->last_loss : -1.0, t->img_s, t->wait_pct, fs.loaders, fs.loaders_alive,
                 fs.batches, fs.reissued, fs.late_dropped, eq_precision_name((eq_precision)t->x.train.precision),
                 t->scaling ? (double)t->scaler.scale : 1.0, t->epoch_skipped);
    } else if (len == 4 && !memcmp(c, "stop", 4)) {
        snprintf(reply, sizeof reply, "{\"ok\":true}");
        eq_train_stop(t);
    } else if ((len > 11 && !memcmp(c, "add-loader ", 11)) || (len > 14 && !memcmp(c, "remove-loader ", 14))) {
        bool add = c[0] == 'a';
        size_t skip = add ? 11 : 14, n = len - skip;
        if (n >= sizeof arg) n = sizeof arg - 1;
        memcpy(arg, c + skip, n);
        arg[n] = 0;
        eq_err e = { 0 };
        eq_status st = add ? eq_feeder_add_loader(t->feeder, arg, &e) : eq_feeder_remove_loader(t->feeder, arg, &e);
        if (st == EQ_OK) {
            eq_info("control: %s loader %s", add ? "added" : "removed", arg);
            snprintf(reply, sizeof reply, "{\"ok\":true}");
        } else {
            for (char *p = e.msg; *p; p++)
                if (*p == '"' || *p == '\\') *p = '\'';
            snprintf(reply, sizeof reply, "{\"ok\":false,\"error\":\"%s\"}", e.msg);
        }
    } else if (len == 4 && !memcmp(c, "join", 4)) {
        eq_dist_refuse_late(router, id, idlen,
                            t->world > 1 ? "the ranks have already met (restart the whole job to change them)"
                                         : "this trainer runs alone (--world 1)");
        return;
    } else {
        snprintf(reply, sizeof reply,
                 "{\"ok\":false,\"error\":\"unknown command (status, stop, add-loader EP, remove-loader EP)\"}");
    }
    zmq_send(router, id, idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    zmq_send(router, reply, strlen(reply), ZMQ_DONTWAIT);
}

/* eq_dist_other_fn: control commands that arrive during the rendezvous. */
static void s_ctl_other(void *arg, void *router, const void *id, size_t idlen, void *frames, int nframes)
{
    (void)nframes;
    zmq_msg_t *f = frames;
    s_ctl_answer(arg, router, id, idlen, zmq_msg_data(&f[0]), zmq_msg_size(&f[0]));
}

static void s_control(eq_train *t)
{
    if (!t->ctl) return;
    for (;;) {
        zmq_msg_t id, cmd;
        zmq_msg_init(&id);
        zmq_msg_init(&cmd);
        if (zmq_msg_recv(&id, t->ctl, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&id);
            zmq_msg_close(&cmd);
            return;
        }
        if (!zmq_msg_more(&id) || zmq_msg_recv(&cmd, t->ctl, 0) < 0) {
            zmq_msg_close(&id);
            zmq_msg_close(&cmd);
            continue;
        }
        while (zmq_msg_more(&cmd)) {
            zmq_msg_t x;
            zmq_msg_init(&x);
            zmq_msg_recv(&x, t->ctl, 0);
            int more = zmq_msg_more(&x);
            zmq_msg_close(&x);
            if (!more) break;
        }
        s_ctl_answer(t, t->ctl, zmq_msg_data(&id), zmq_msg_size(&id), zmq_msg_data(&cmd), zmq_msg_size(&cmd));
        zmq_msg_close(&id);
        zmq_msg_close(&cmd);
    }
}

/* The labels of batch b, checked: ya[rows] (0 past b->count); with a mix
 * plan *mixed, yb[i] the partner's label, lam[i] the sample's own weight
 * (0 and 1 past b->count) and, when partner is not NULL, partner[i] the
 * partner's position (0 past b->count); *blend for mixup (the images are
 * blended; CutMix's arrive pasted).  eq_train_stage's errors. */
static eq_status s_labels(const eq_feeder_batch *b, int64_t rows, int64_t classes, int32_t *ya, int32_t *yb,
                          float *lam, int32_t *partner, bool *mixed, bool *blend, eq_err *err)
{
    for (uint32_t i = 0; i < b->count; i++) {
        int64_t y;
        if (b->labels_i64) {
            memcpy(&y, (const uint8_t *)b->labels + 8 * (size_t)i, 8);
        } else {
            int32_t y32;
            memcpy(&y32, (const uint8_t *)b->labels + 4 * (size_t)i, 4);
            y = y32;
        }
        if (y < 0 || y >= classes)
            return eq_err_set(err, EQ_ERR_INVALID,
                              "epoch %" PRIu64 " step %" PRIu64 ": label %" PRId64 " of sample %u outside [0, %" PRId64
                              ") (set [model] num_classes)",
                              b->epoch, b->step, y, i, classes);
        ya[i] = (int32_t)y;
    }
    for (int64_t i = b->count; i < rows; i++) ya[i] = 0;
    /* Mixup/CutMix from the plan in the BATCH (DESIGN.md): the partner's
     * label and the sample's own weight for the loss; for mixup also the
     * image blend, done in fp32 from the uint8 bytes while staging. */
    *mixed = b->mix && b->mix[0] && b->mix_index && b->mix_lambda;
    *blend = *mixed && !strcmp(b->mix, "mixup");
    if (!*mixed) return EQ_OK;
    for (uint32_t i = 0; i < b->count; i++) {
        int32_t j;
        float lam_i;
        memcpy(&j, (const uint8_t *)b->mix_index + 4 * (size_t)i, 4);
        memcpy(&lam_i, (const uint8_t *)b->mix_lambda + 4 * (size_t)i, 4);
        if (j < 0 || (uint32_t)j >= b->count || !(lam_i >= 0.0f && lam_i <= 1.0f))
            return eq_err_set(err, EQ_ERR_PROTO,
                              "epoch %" PRIu64 " step %" PRIu64 ": sample %u: mix partner %d or lambda %g invalid",
                              b->epoch, b->step, i, j, (double)lam_i);
        yb[i] = ya[j];
        lam[i] = lam_i;
        if (partner) partner[i] = j;
    }
    for (int64_t i = b->count; i < rows; i++) {
        yb[i] = 0;
        lam[i] = 1.0f;
        if (partner) partner[i] = 0;
    }
    return EQ_OK;
}

eq_status eq_train_stage(const eq_feeder_batch *b, int64_t rows, int64_t classes, const double *mean,
                         const double *std, float *dst, int32_t *ya, int32_t *yb, float *lam, bool *mixed,
                         eq_err *err)
{
    if (b->count > rows || b->c < 1 || b->c > 16)
        return eq_err_set(err, EQ_ERR_PROTO, "batch of %u samples with %u channels for %" PRId64 " rows", b->count, b->c,
                          rows);
    bool blend;
    eq_status st = s_labels(b, rows, classes, ya, yb, lam, NULL, mixed, &blend, err);
    if (st) return st;
    const size_t C = b->c, per = (size_t)b->h * b->w * C, n = (size_t)b->count * per;
    float scale[16], shift[16];
    for (size_t c = 0; c < C; c++) {
        scale[c] = (float)(1.0 / (255.0 * std[c]));
        shift[c] = (float)(-mean[c] / std[c]);
    }
    const uint8_t *src = b->images;
    if (C == 1) {
        for (size_t i = 0; i < n; i++) dst[i] = (float)src[i] * scale[0] + shift[0];
    } else {
        for (size_t i = 0; i < n; i++) {
            size_t c = i % C;
            dst[i] = (float)src[i] * scale[c] + shift[c];
        }
    }
    memset(dst + n, 0, ((size_t)rows * per - n) * sizeof(float));
    for (uint32_t i = 0; blend && i < b->count; i++) {
        int32_t j;
        memcpy(&j, (const uint8_t *)b->mix_index + 4 * (size_t)i, 4); /* checked by s_labels */
        const float lam_i = lam[i];
        const uint8_t *a = src + (size_t)i * per, *p = src + (size_t)j * per;
        float *d = dst + (size_t)i * per;
        for (size_t k = 0; k < per; k++) {
            size_t c = k % C;
            float va = (float)a[k] * scale[c] + shift[c], vb = (float)p[k] * scale[c] + shift[c];
            d[k] = lam_i * va + (1.0f - lam_i) * vb;
        }
    }
    return EQ_OK;
}

/* ---------------------------------------------------------------- the input pipeline
 *
 * A batch goes to the device in two halves.  s_fetch, on the host: the
 * feeder's next batch (the data wait), its checks (labels, mix partners
 * and lambdas: eq_train_stage's errors, naming epoch, step and sample),
 * then eq_backend_upload_async of the raw uint8 images and of the label
 * block (ya, yb, partner, lambda) into a device slot.  s_stage, on the
 * device: eq_backend_upload_wait, then eq_backend_stage_images from the
 * slot into x_dev (eq_train_stage's arithmetic; the rows past a short
 * batch zeroed).  The loss reads the labels straight from the slot.
 *
 * The loops fetch batch s+1 right after step s's forward is queued and
 * before the host waits on anything of step s, so on
 * an asynchronous backend the data wait and the copy overlap the step.
 *
 * Two slots, each fetch filling the one the previous fetch did not: batch
 * s+1 must not land in step s's slot, whose labels step s's loss still
 * reads after the fetch (xent_fwd and xent_bwd, issued later).  Batch s+2
 * refills step s's slot during step s+1, after every op of step s was
 * issued, and upload_async orders its copy after every compute-stream op
 * issued before it (trainer/backend.h; on CUDA an event recorded on the
 * compute stream that the copy stream waits for), so the copy cannot
 * overtake step s's last read on a GPU either.  upload_wait at the next
 * stage orders the compute stream after the copy.  On the CPU backend
 * every op is synchronous (upload_async is a plain copy): the same
 * results, bitwise, as staging on the host. */

/* The next batch of the current pass into the next slot (*k, set on
 * success): checks, then the asynchronous uploads.  `train`: a training
 * batch must be full.  EQ_ERR_NOTFOUND at the pass's end. */
static eq_status s_fetch(eq_train *t, bool train, int *k, eq_err *err)
{
    eq_feeder_batch b;
    eq_status st = eq_feeder_next(t->feeder, &b, err);
    if (st) return st;
    if (train && b.count != t->B)
        return eq_err_set(err, EQ_ERR_PROTO, "epoch %" PRIu64 " step %" PRIu64 ": %u samples, expected %" PRId64,
                          b.epoch, b.step, b.count, t->B);
    if (b.h != t->H || b.w != t->W || b.c != t->C)
        return eq_err_set(err, EQ_ERR_PROTO, "batch of %ux%ux%u images, the model wants %" PRId64 "x%" PRId64 "x%" PRId64,
                          b.h, b.w, b.c, t->H, t->W, t->C);
    if (b.count > t->B || b.c < 1 || b.c > 16)
        return eq_err_set(err, EQ_ERR_PROTO, "batch of %u samples with %u channels for %" PRId64 " rows", b.count, b.c,
                          t->B);
    int j = t->next_slot;
    int32_t *lab = t->lab_host[j];
    size_t B = (size_t)t->B;
    s_slot *sl = &t->slot[j];
    if ((st = s_labels(&b, t->B, t->classes, lab, lab + B, (float *)(lab + 3 * B), lab + 2 * B, &sl->mixed,
                       &sl->blend, err)))
        return st;
    size_t per = (size_t)(t->H * t->W * t->C);
    if ((st = eq_backend_upload_async(t->be, t->slot_dev[j], b.images, (size_t)b.count * per, err)) ||
        (st = eq_backend_upload_async(t->be, t->slot_dev[j] + t->lab_off, lab,
                                      (sl->mixed ? 4 : 1) * B * sizeof(int32_t), err)))
        return st;
    sl->epoch = b.epoch;
    sl->step = b.step;
    sl->offset = b.offset;
    sl->count = b.count;
    t->next_slot = j ^ 1;
    *k = j;
    return EQ_OK;
}

/* Slot k's labels on the device: ya, yb, partner [B] int32, lambda [B] float. */
static int32_t *s_lab_dev(eq_train *t, int k, int which)
{
    return (int32_t *)(t->slot_dev[k] + t->lab_off) + (size_t)which * (size_t)t->B;
}

/* Stage slot k's batch into x_dev on the device (after its upload). */
static eq_status s_stage(eq_train *t, int k, eq_err *err)
{
    const s_slot *sl = &t->slot[k];
    size_t per = (size_t)(t->H * t->W * t->C);
    eq_status st = eq_backend_upload_wait(t->be, err);
    if (st == EQ_OK)
        st = eq_backend_stage_images(t->be, sl->count, (int64_t)per, t->C, t->slot_dev[k], t->scale, t->shift,
                                     sl->blend ? s_lab_dev(t, k, 2) : NULL,
                                     sl->blend ? (const float *)s_lab_dev(t, k, 3) : NULL, t->x_dev, err);
    if (st == EQ_OK && sl->count < t->B)
        st = eq_backend_zero(t->be, t->x_dev + (size_t)sl->count * per, ((size_t)t->B - sl->count) * per * sizeof(float),
                             err);
    return st;
}

static eq_status s_checkpoint(eq_train *t, uint64_t epoch, uint64_t step, const char *tag, eq_err *err)
{
    char path[1200];
    eq_ckpt_run run = { .epoch = (int64_t)epoch, .step = (int64_t)step, .metric = NAN, .config = t->config_text,
                        .loss_scale = t->scaling ? t->scaler.scale : 0.0f,
                        .loss_scale_growth_tracker = t->scaling ? t->scaler.growth_tracker : 0 };
    snprintf(path, sizeof path, "%s/last.safetensors", t->x.train.out_dir);
    eq_status st = eq_checkpoint_save(path, t->model, t->optim, &run, err);
    if (st) return st;
    if (tag) {
        snprintf(path, sizeof path, "%s/%s.safetensors", t->x.train.out_dir, tag);
        if ((st = eq_checkpoint_save(path, t->model, t->optim, &run, err))) return st;
    }
    eq_info("checkpoint %s/%s.safetensors (resumes at epoch %" PRIu64 " step %" PRIu64 ")", t->x.train.out_dir,
            tag ? tag : "last", epoch, step);
    return EQ_OK;
}

/* Indices of the k largest of row[0..n) by decreasing value (ties: lower
 * index first, as torch.topk on CPU). */
static void s_topk(const float *row, int64_t n, int k, int32_t *out)
{
    for (int j = 0; j < k; j++) out[j] = -1;
    for (int64_t c = 0; c < n; c++) {
        float v = row[c];
        int j = k;
        while (j > 0 && (out[j - 1] < 0 || v > row[out[j - 1]])) j--;
        if (j >= k) continue;
        memmove(out + j + 1, out + j, (size_t)(k - j - 1) * sizeof *out);
        out[j] = (int32_t)c;
    }
}

/* ------------------------------------------------------------ ranks */

#define S_FIRST_BUCKET_BYTES ((size_t)1 << 20) /* DDP's: a small first bucket starts early */

static void s_grad_ready(void *arg, size_t tensor);

/* The gradient buckets: the gradients in the order the backward finishes
 * them (eq_model_grad_order) cut into buckets of [train] bucket_mb (the
 * first at most 1 MiB) by trainer/cuda/bucket.h's plan, whose parameter j
 * is order[ng - 1 - j] (it takes "layer order" and fills buckets from the
 * last parameter backwards).  The same buckets whether they overlap the
 * backward or not. */
static eq_status s_grad_buckets(eq_train *t, eq_err *err)
{
    size_t nt = eq_model_tensor_count(t->model), ng = eq_model_grad_order(t->model, NULL, 0);
    size_t *order = eq_calloc_array(ng ? ng : 1, sizeof *order), *bytes = eq_calloc_array(ng ? ng : 1, sizeof *bytes);
    eq_comm_seg *segs = eq_calloc_array(ng ? ng : 1, sizeof *segs);
    t->gparam = eq_malloc_array(nt ? nt : 1, sizeof *t->gparam);
    eq_status st = EQ_OK;
    if (!order || !bytes || !segs || !t->gparam) st = eq_err_set(err, EQ_ERR_NOMEM, "trainer: out of memory");
    if (st == EQ_OK) {
        eq_model_grad_order(t->model, order, ng);
        size_t k = 0; /* empty tensors have nothing to reduce */
        for (size_t j = 0; j < ng; j++)
            if (eq_model_tensor_at(t->model, order[j])->numel) order[k++] = order[j];
        ng = k;
        for (size_t i = 0; i < nt; i++) t->gparam[i] = SIZE_MAX;
        for (size_t j = 0; j < ng; j++) {
            size_t ti = order[ng - 1 - j];
            bytes[j] = eq_model_tensor_at(t->model, ti)->numel * sizeof(float);
            t->gparam[ti] = j;
        }
        double cap = t->x.train.bucket_mb * 1048576.0;
        size_t capb = cap < 64 ? 64 : (size_t)cap;
        size_t first = capb < S_FIRST_BUCKET_BYTES ? capb : S_FIRST_BUCKET_BYTES;
        if (ng) st = eq_bucket_plan_new(ng, bytes, capb, first, &t->plan, err);
    }
    if (st == EQ_OK && t->plan && t->plan->nbuckets > EQ_COMM_MAX_BUCKETS - 8)
        st = eq_err_set(err, EQ_ERR_LIMIT, "trainer: %zu gradient buckets of [train] bucket_mb = %g, at most %d: raise it",
                        t->plan->nbuckets, t->x.train.bucket_mb, EQ_COMM_MAX_BUCKETS - 8);
    for (size_t b = 0; st == EQ_OK && t->plan && b < t->plan->nbuckets; b++) {
        const eq_bucket *B = &t->plan->buckets[b];
        for (size_t q = 0; q < B->count; q++) {
            const eq_model_tensor *m = eq_model_tensor_at(t->model, order[ng - 1 - t->plan->order[B->first + q]]);
            segs[q] = (eq_comm_seg){ m->grad, m->numel };
        }
        if ((t->b_grad[t->nb_grad++] = eq_comm_bucket_new(t->comm, segs, B->count, EQ_COMM_AVG, err)) < 0)
            st = err ? err->code : EQ_ERR_INTERNAL;
    }
    free(order);
    free(bytes);
    free(segs);
    if (st == EQ_OK && t->plan && t->x.train.overlap) eq_model_set_grad_hook(t->model, s_grad_ready, t);
    return st;
}

/* Register the buckets of one category of tensors (kind, quant, F32). */
static int s_bucket_of(eq_train *t, eq_model_tensor_kind kind, bool quant, eq_comm_op op, eq_err *err)
{
    size_t n = eq_model_tensor_count(t->model), k = 0;
    eq_comm_seg *segs = eq_calloc_array(n ? n : 1, sizeof *segs);
    if (!segs) {
        eq_err_set(err, EQ_ERR_NOMEM, "trainer: out of memory");
        return -2;
    }
    for (size_t i = 0; i < n; i++) {
        const eq_model_tensor *m = eq_model_tensor_at(t->model, i);
        if (m->kind == kind && m->quant == quant && m->dtype == EQ_DT_F32 && m->numel)
            segs[k++] = (eq_comm_seg){ m->data, m->numel };
    }
    int id = k ? eq_comm_bucket_new(t->comm, segs, k, op, err) : -1;
    free(segs);
    return k && id < 0 ? -2 : id;
}

/* Rendezvous, ring and buckets (several ranks only). */
static eq_status s_dist_setup(eq_train *t, eq_err *err)
{
    if (t->world <= 1) return EQ_OK;
    eq_status st;
    char digest[EQ_DIST_DIGEST_CAP];
    eq_dist_digest(t->config_text, digest);
    /* backend = cuda: NCCL, its unique id (made by rank 0) travels as the
     * rendezvous blob; cpu: the ring, whose endpoints the rendezvous swaps. */
    bool nccl = t->x.train.backend == 1;
    eq_comm_ring *ring = NULL;
    uint8_t id[EQ_COMM_NCCL_ID_BYTES];
    if (nccl ? t->rank == 0 && eq_comm_nccl_unique_id(id, sizeof id, err)
             : !(ring = eq_comm_ring_listen(t->zctx, t->dist_bind, (int)t->x.train.dist_timeout_ms, err)))
        return err ? err->code : EQ_ERR_NET;
    eq_dist_me me = { .rank = t->rank, .world = t->world, .ep = nccl ? "nccl" : eq_comm_ring_endpoint(ring),
                      .digest = digest, .blob = nccl && t->rank == 0 ? id : NULL,
                      .blob_len = nccl && t->rank == 0 ? sizeof id : 0 };
    eq_dist_world *w = malloc(sizeof *w);
    if (!w) {
        eq_comm_ring_destroy(&ring);
        return eq_err_set(err, EQ_ERR_NOMEM, "trainer: out of memory");
    }
    eq_info("rank %d of %d: %s the others (collectives on %s)", t->rank, t->world,
            t->rank ? "joining" : "waiting for", me.ep);
    if (t->rank == 0)
        st = eq_dist_rendezvous_root(t->ctl, &me, (int)t->x.train.dist_timeout_ms, s_ctl_other, t, &t->stop, w, err);
    else
        st = eq_dist_rendezvous_join(t->zctx, t->rendezvous, &me, (int)t->x.train.dist_timeout_ms, &t->stop, w, err);
    if (st == EQ_OK && !(t->comm = nccl ? eq_comm_nccl_new(t->be, w, (int)t->x.train.dist_timeout_ms, err)
                                        : eq_comm_ring_connect(&ring, w, err)))
        st = err ? err->code : EQ_ERR_NET;
    eq_comm_ring_destroy(&ring);
    free(w);
    if (st) return st;
    if ((st = s_grad_buckets(t, err))) return st;
    /* The loss scaler's inf/NaN test reads the averaged gradients: the same
     * on every rank when every gradient is in a bucket (the usual case);
     * otherwise the ranks agree on it explicitly each update. */
    for (size_t i = 0; i < eq_model_tensor_count(t->model); i++) {
        const eq_model_tensor *m = eq_model_tensor_at(t->model, i);
        if (m->grad && m->numel && t->gparam[i] == SIZE_MAX) t->scaler_agree = true;
    }
    if (t->scaling && t->scaler_agree)
        eq_info("rank %d of %d: some gradients are not all-reduced: the ranks agree on the loss scaler's inf/NaN "
                "test explicitly", t->rank, t->world);
    eq_comm_seg cs = { t->ctlv, 2 };
    if ((t->b_ctl = eq_comm_bucket_new(t->comm, &cs, 1, EQ_COMM_SUM, err)) < 0) return err ? err->code : EQ_ERR_INTERNAL;
    if ((t->b_bn = s_bucket_of(t, EQ_MT_BUFFER, false, EQ_COMM_BCAST, err)) < -1 ||
        (t->b_qbuf = s_bucket_of(t, EQ_MT_BUFFER, true, EQ_COMM_AVG, err)) < -1 ||
        (t->b_qpar = s_bucket_of(t, EQ_MT_PARAM, true, EQ_COMM_AVG, err)) < -1)
        return err ? err->code : EQ_ERR_INTERNAL;
    int64_t ws = t->x.wt.enable ? t->x.wt.stable : 0, fs = t->x.fm.enable ? t->x.fm.stable : 0;
    t->warmup_steps = ws > fs ? ws : fs;
    eq_info("rank %d of %d: %s ready; %d gradient bucket(s) %s, batch %" PRId64 " of %" PRId64 " per step", t->rank,
            t->world, eq_comm_name(t->comm), t->nb_grad,
            t->x.train.overlap ? "overlapping the backward" : "after the backward", t->B, t->G);
    return EQ_OK;
}

/* Make every rank agree at this point: the loss (summed), stop flags.
 * One rank: nothing to do. */
static eq_status s_agree(eq_train *t, float *loss, bool *stop, eq_err *err)
{
    if (!t->comm) {
        *stop = t->stop;
        return EQ_OK;
    }
    t->ctlv[0] = *loss;
    t->ctlv[1] = t->stop ? 1.0f : 0.0f;
    eq_status st = eq_comm_run(t->comm, t->b_ctl, err);
    if (st) return st;
    *loss = t->ctlv[0] / (float)t->world;
    *stop = t->ctlv[1] > 0;
    return EQ_OK;
}

/* ------------------------------------------------------------ pretrained */

static void s_list_add(char *buf, size_t cap, size_t *used, size_t *count, const char *name)
{
    (*count)++;
    if (*count > 12) {
        if (*count == 13 && *used + 5 < cap) *used += (size_t)snprintf(buf + *used, cap - *used, ", ...");
        return;
    }
    if (*used + 2 < cap) *used += (size_t)snprintf(buf + *used, cap - *used, "%s%s", *count > 1 ? ", " : "", name);
    if (*used >= cap) *used = cap - 1;
}

/* ORIGINAL.md §4.7: weights only, by name ("module." stripped), reshape on
 * a shape mismatch with the same element count, skip otherwise; everything
 * else keeps its initial value.  Validates before copying anything. */
static eq_status s_pretrained(eq_train *t, const char *path, eq_err *err)
{
    eq_st_file *f = eq_st_open(path, NULL, err);
    if (!f) return eq_err_prefix(err, "--pretrained: ");
    size_t nf = eq_st_count(f), nm = eq_model_tensor_count(t->model);
    long *src = eq_malloc_array(nm ? nm : 1, sizeof *src);
    bool *used = eq_calloc_array(nf ? nf : 1, sizeof *used);
    if (!src || !used) {
        free(src);
        free(used);
        eq_st_close(&f);
        return eq_err_set(err, EQ_ERR_NOMEM, "--pretrained: out of memory");
    }
    char miss[600] = "", unexp[600] = "", resh[600] = "", skip[900] = "", name[600];
    size_t um = 0, uu = 0, ur = 0, us = 0, cm = 0, cu = 0, cr = 0, cs = 0, loaded = 0;
    for (size_t i = 0; i < nm; i++) {
        const eq_model_tensor *m = eq_model_tensor_at(t->model, i);
        static const char *const pre[2] = { "", "module." };
        src[i] = -1;
        for (int p = 0; p < 2 && src[i] < 0; p++) {
            snprintf(name, sizeof name, "%s%s%s", pre[p], m->quant ? "quant." : "", m->name);
            src[i] = eq_st_find(f, name);
            if (src[i] < 0 && m->quant) { /* the original's quantizer names carry no "quant." */
                snprintf(name, sizeof name, "%s%s", pre[p], m->name);
                src[i] = eq_st_find(f, name);
            }
        }
        if (src[i] < 0) {
            s_list_add(miss, sizeof miss, &um, &cm, m->name);
            continue;
        }
        used[src[i]] = true;
        const eq_tensor_desc *d = eq_st_desc(f, (size_t)src[i]);
        int64_t numel = 1;
        bool same = d->ndim == m->ndim;
        for (int k = 0; k < d->ndim; k++) numel *= d->shape[k];
        for (int k = 0; same && k < m->ndim; k++) same = d->shape[k] == m->shape[k];
        if (d->dtype != m->dtype || (!same && (size_t)numel != m->numel)) {
            char why[700];
            snprintf(why, sizeof why, "%s (%s%s)", m->name, d->dtype != m->dtype ? "dtype " : "shape",
                     d->dtype != m->dtype ? eq_dtype_name(d->dtype) : "");
            s_list_add(skip, sizeof skip, &us, &cs, why);
            src[i] = -1;
            continue;
        }
        if (!same) s_list_add(resh, sizeof resh, &ur, &cr, m->name);
    }
    for (size_t j = 0; j < nf; j++) {
        const char *nmj = eq_st_name(f, j);
        if (!used[j] && strncmp(nmj, "optim.", 6)) s_list_add(unexp, sizeof unexp, &uu, &cu, nmj);
    }
    eq_status st = EQ_OK;
    for (size_t i = 0; i < nm && st == EQ_OK; i++) {
        if (src[i] < 0) continue;
        const eq_model_tensor *m = eq_model_tensor_at(t->model, i);
        const void *data = eq_st_data(f, (size_t)src[i], NULL);
        size_t nb = m->numel * (m->dtype == EQ_DT_I64 ? 8 : 4);
        if (m->quant || m->dtype == EQ_DT_I64)
            memcpy(m->data, data, nb);
        else
            st = eq_backend_upload(t->be, m->data, data, nb, err);
        loaded++;
    }
    eq_st_close(&f);
    free(src);
    free(used);
    if (st) return eq_err_prefix(err, "--pretrained %s: ", path);
    if (!loaded) return eq_err_set(err, EQ_ERR_INVALID, "--pretrained %s: no tensor matches the model (missing: %s)", path, miss);
    eq_info("pretrained %s: %zu of %zu model tensors loaded", path, loaded, nm);
    if (cm) eq_warn("pretrained: %zu model tensor(s) not in the file keep their initial values: %s", cm, miss);
    if (cu) eq_warn("pretrained: %zu tensor(s) of the file are not in the model (ignored): %s", cu, unexp);
    if (cr) eq_warn("pretrained: %zu tensor(s) reshaped (same element count): %s", cr, resh);
    if (cs) eq_warn("pretrained: %zu tensor(s) skipped (dtype or element count differs): %s", cs, skip);
    return EQ_OK;
}

/* ------------------------------------------------------------ gradients */

/* iter_size: fold tensor i's gradient into the accumulator (`first`:
 * start it), or, with `finish`, put the sum back into the gradient. */
static eq_status s_accumulate_one(eq_train *t, size_t i, bool first, bool finish, eq_err *err)
{
    const eq_model_tensor *m = eq_model_tensor_at(t->model, i);
    if (m->quant && !eq_backend_host_memory(t->be)) {
        /* a quantizer's gradient is host memory (quant/): summed in a host
         * accumulator, as the backend's add would (one float add each) */
        float *h = t->qacc + t->acc_off[i];
        if (first) memcpy(h, m->grad, m->numel * sizeof(float));
        else
            for (size_t k = 0; k < m->numel; k++) h[k] += m->grad[k];
        if (finish) memcpy(m->grad, h, m->numel * sizeof(float));
        return EQ_OK;
    }
    float *a = t->acc + t->acc_off[i];
    eq_status st = first ? eq_backend_copy(t->be, a, m->grad, m->numel * sizeof(float), err)
                         : eq_backend_add(t->be, m->numel, a, m->grad, a, err);
    if (st == EQ_OK && finish) st = eq_backend_copy(t->be, m->grad, a, m->numel * sizeof(float), err);
    return st;
}

/* The same for every tensor with a gradient. */
static eq_status s_accumulate(eq_train *t, bool first, bool finish, eq_err *err)
{
    eq_status st = EQ_OK;
    for (size_t i = 0; i < eq_model_tensor_count(t->model) && st == EQ_OK; i++)
        if (eq_model_tensor_at(t->model, i)->grad) st = s_accumulate_one(t, i, first, finish, err);
    return st;
}

/* Several ranks, after the optimiser step: the gradients were averaged
 * before it; now rank 0's BN statistics and averaged quantizer state. */
static eq_status s_sync_state(eq_train *t, eq_err *err)
{
    if (!t->comm) return EQ_OK;
    eq_status st = EQ_OK;
    int ids[3] = { t->b_bn, t->b_qbuf,
                   t->warmup_steps > 0 && eq_optim_steps(t->optim) <= t->warmup_steps + 1 ? t->b_qpar : -1 };
    for (int i = 0; i < 3 && st == EQ_OK; i++)
        if (ids[i] >= 0) st = eq_comm_start(t->comm, ids[i], err);
    for (int i = 0; i < 3 && st == EQ_OK; i++)
        if (ids[i] >= 0) st = eq_comm_wait(t->comm, ids[i], err);
    return st;
}

/* Start the gradient buckets whose gradients are all final, in bucket
 * order (a bucket waits for the ones before it: every rank starts them in
 * the same order). */
static eq_status s_start_ready(eq_train *t, eq_err *err)
{
    eq_status st = EQ_OK;
    while (st == EQ_OK && t->next_bucket < t->nb_grad &&
           t->plan->buckets[t->next_bucket].ready == t->plan->buckets[t->next_bucket].count)
        st = eq_comm_start(t->comm, t->b_grad[t->next_bucket++], err);
    return st;
}

/* eq_model_grad_fn (overlap): tensor `i`'s gradient is final.  On the
 * window's last step: fold it into the accumulator (iter_size > 1), mark
 * it, start the buckets it completes.  Errors wait for the backward's end. */
static void s_grad_ready(void *arg, size_t i)
{
    eq_train *t = arg;
    if (!t->comm_step || t->hook_st || t->gparam[i] == SIZE_MAX) return;
    eq_status st = EQ_OK;
    if (t->x.train.iter_size > 1) st = s_accumulate_one(t, i, t->acc_first, true, &t->hook_err);
    if (st == EQ_OK && eq_bucket_mark_ready(t->plan, t->gparam[i], &t->hook_err) == -2) st = EQ_ERR_INVALID;
    if (st == EQ_OK) st = s_start_ready(t, &t->hook_err);
    t->hook_st = st;
}

/* Backward, then gradient accumulation and the all-reduce of the window's
 * last step (`first`, `last`: the step's place in its accumulation window).
 * overlap: the hook starts each bucket during the backward; otherwise all
 * of them start after it.  Both end waiting for every bucket in order. */
static eq_status s_backward(eq_train *t, bool first, bool last, eq_err *err)
{
    bool I1 = t->x.train.iter_size == 1, hook = t->comm && t->x.train.overlap;
    t->comm_step = hook && last;
    t->acc_first = first;
    t->next_bucket = 0;
    t->hook_st = EQ_OK;
    if (t->comm_step) eq_bucket_reset(t->plan);
    double t0 = eq_clock_sec();
    eq_status st = eq_model_backward(t->model, NULL, err);
    double t1 = eq_clock_sec();
    if (st == EQ_OK && t->hook_st) {
        if (err) *err = t->hook_err;
        st = t->hook_st;
    }
    if (st == EQ_OK && !I1 && !t->comm_step) st = s_accumulate(t, first, last, err);
    if (st || !last || !t->comm) return st;
    while (st == EQ_OK && t->next_bucket < t->nb_grad) /* not overlapped, or a bucket left */
        st = eq_comm_start(t->comm, t->b_grad[t->next_bucket++], err);
    for (int b = 0; b < t->nb_grad && st == EQ_OK; b++) st = eq_comm_wait(t->comm, t->b_grad[b], err);
    t->bwd_s += t1 - t0;
    t->wait_s += eq_clock_sec() - t1;
    t->comm_n++;
    return st;
}

/* Loss scaling, at the end of an iter_size window (the gradients are
 * final: accumulated and all-reduced): test every gradient for inf/NaN;
 * none: unscale them (the optimiser steps); some: *skip, no optimiser step.
 * Then the scale's update (trainer/scaler.h). */
static eq_status s_scaler_step(eq_train *t, uint64_t e, uint64_t s, bool *skip, eq_err *err)
{
    int64_t n = 0;
    /* eq_scaler_nonfinite's count in one wait (it waits per tensor) */
    eq_status st = eq_model_grads_nonfinite(t->model, &n, err);
    if (st) eq_err_prefix(err, "loss scaler: ");
    if (st) return st;
    t->epoch_updates++;
    bool found = n > 0;
    if (t->comm && t->scaler_agree) {
        t->ctlv[0] = found ? 1.0f : 0.0f;
        t->ctlv[1] = 0.0f;
        if ((st = eq_comm_run(t->comm, t->b_ctl, err))) return st;
        found = t->ctlv[0] > 0;
    }
    if (!found && (st = eq_scaler_unscale(&t->scaler, t->model, &t->dev_inv, err))) return st;
    float old = t->scaler.scale;
    eq_scaler_update(&t->scaler, found);
    *skip = found;
    if (!found) return EQ_OK;
    t->epoch_skipped++;
    if (t->rank == 0)
        eq_warn("epoch %" PRIu64 " step %" PRIu64 ": %" PRId64 " inf/NaN gradient values at loss scale %g: optimiser "
                "step skipped; loss scale now %g",
                e, s, n, (double)old, (double)t->scaler.scale);
    if (!(t->scaler.scale >= FLT_MIN)) {
        t->diverged = true;
        s_publish(t, "done", 0, 0, 0, EQ_ERR_INVALID);
        return eq_err_set(err, EQ_ERR_INVALID,
                          "epoch %" PRIu64 " step %" PRIu64 ": the loss scale fell to %g: the gradients are inf/NaN "
                          "at any scale; stopped without a checkpoint of this step",
                          e, s, (double)t->scaler.scale);
    }
    return EQ_OK;
}

/* Send one PRED of the val pass of `epoch` to eq-eval.  The eval socket
 * has ZMQ_IMMEDIATE, so POLLOUT means a connected eq-eval with room in its
 * queue: wait for it in 100 ms slices (a stop ends the wait, one rank;
 * control commands are answered), warn after 5 s and every 30 s, fail
 * after [train] eval_timeout naming the endpoint.  eq-eval may start after
 * the trainer (eqctl run starts them together): it only has to be there by
 * the first val batch. */
static eq_status s_send_pred(eq_train *t, uint64_t epoch, const eq_msg *m, eq_proto_payload *pl, size_t npl,
                             eq_err *err)
{
    const uint64_t limit_ms = (uint64_t)t->x.train.eval_timeout * 1000;
    uint64_t t0 = eq_clock_ms(), next_note = t0 + 5000;
    for (;;) {
        zmq_pollitem_t it = { t->eval, 0, ZMQ_POLLOUT, 0 };
        int n = zmq_poll(&it, 1, 100);
        if (n < 0 && zmq_errno() != EINTR)
            return eq_err_set(err, EQ_ERR_NET, "eq-eval at %s: poll: %s", t->eval_ep, zmq_strerror(zmq_errno()));
        if (n > 0 && (it.revents & ZMQ_POLLOUT)) {
            eq_err e = { 0 };
            eq_status st = eq_proto_send(t->eval, NULL, m, pl, npl, ZMQ_DONTWAIT, &e);
            if (st == EQ_OK) return EQ_OK;
            /* EAGAIN: the connection went away since the poll; wait again (PRED
             * payloads have no free_fn: eq_proto_send copied them, a retry is safe) */
            if (st != EQ_ERR_TIMEOUT)
                return eq_err_set(err, st, "eq-eval at %s: %s", t->eval_ep, e.msg);
        }
        if (t->stop && t->world <= 1)
            return eq_err_set(err, EQ_ERR_INTERRUPTED, "stopped while waiting for eq-eval at %s", t->eval_ep);
        s_control(t);
        uint64_t now = eq_clock_ms();
        if (now - t0 >= limit_ms)
            return eq_err_set(err, EQ_ERR_TIMEOUT,
                              "eq-eval at %s took no predictions of epoch %" PRIu64 " in %" PRId64
                              " s (not listening, or not reading; [train] eval_timeout): the epoch's "
                              "evaluation is lost",
                              t->eval_ep, epoch, t->x.train.eval_timeout);
        if (now >= next_note) {
            eq_warn("eq-eval at %s has taken no predictions for %.0f s (not connected or not reading); "
                    "giving up after %" PRId64 " s",
                    t->eval_ep, (double)(now - t0) / 1000.0, t->x.train.eval_timeout);
            next_note = now + 30000;
        }
    }
}

/* Val pass of `epoch`: predictions to eq-eval. */
static eq_status s_validate(eq_train *t, uint64_t epoch, eq_err *err)
{
    uint64_t N = t->val_size;
    if (t->x.train.eval_max > 0 && (uint64_t)t->x.train.eval_max < N) N = (uint64_t)t->x.train.eval_max;
    uint64_t G = (uint64_t)t->G, B = (uint64_t)t->B, off = (uint64_t)t->rank * B;
    uint64_t steps = (N + G - 1) / G, mine = 0; /* this rank's share: [s*G + off, + B) of [0, N) */
    for (uint64_t s = 0; s < steps; s++) {
        uint64_t p = s * G + off;
        mine += p >= N ? 0 : N - p < B ? N - p : B;
    }
    int k = t->classes < 5 ? (int)t->classes : 5;
    eq_status st = mine ? eq_feeder_pass(t->feeder, t->val_job, epoch, 0, steps, (uint32_t)off, (uint32_t)B, N, err) : EQ_OK;
    if (st) return st;
    int32_t *topk = malloc((size_t)t->B * (size_t)k * sizeof *topk);
    int64_t *ids = malloc((size_t)t->B * sizeof *ids);
    if (!topk || !ids) {
        free(topk);
        free(ids);
        return eq_err_set(err, EQ_ERR_NOMEM, "val: out of memory");
    }
    double t0 = eq_clock_sec();
    uint64_t seen = 0, passed = 0; /* samples forwarded; of those, done (predictions sent) */
    /* pipelined as the train pass (s_fetch): the next batch is fetched
     * and uploaded after this one's forward is queued, before its logits
     * are downloaded; an error of the next fetch is reported once this
     * batch's predictions are sent */
    int ks = -1, kn = -1;
    eq_err ferr = { 0 };
    eq_status fst = mine ? s_fetch(t, false, &ks, &ferr) : EQ_ERR_NOTFOUND;
    while (mine) {
        if (fst == EQ_ERR_NOTFOUND) break;
        if (fst) {
            if (err) *err = ferr;
            st = fst;
            break;
        }
        const s_slot b = t->slot[ks];
        if ((st = s_stage(t, ks, err))) break;
        if ((st = eq_model_forward(t->model, t->x_dev, false, err))) break;
        fst = s_fetch(t, false, &kn, &ferr);
        int64_t nb, nc;
        const float *logits = eq_model_logits(t->model, &nb, &nc);
        if ((st = eq_backend_download(t->be, t->logits_host, logits, (size_t)(nb * nc) * sizeof(float), err))) break;
        for (uint32_t i = 0; i < b.count; i++) {
            s_topk(t->logits_host + (size_t)i * (size_t)nc, nc, k, topk + (size_t)i * (size_t)k);
            ids[i] = (int64_t)(b.step * G + b.offset + i);
        }
        seen += b.count;
        if (t->eval) {
            eq_msg m;
            eq_proto_msg_init(&m, EQ_MSG_PRED);
            eq_msg_pred *p = &m.u.pred;
            snprintf(p->job, sizeof p->job, "%s", t->x.train.name);
            p->epoch = epoch;
            p->total = N;
            p->rank = (uint32_t)t->rank;
            p->world = (uint32_t)t->world;
            p->count = b.count;
            p->final = seen == mine;
            int64_t s1[1] = { b.count }, s2[2] = { b.count, k };
            eq_proto_add_frame(&m, "ids", EQ_DT_I64, 1, s1, NULL);
            eq_proto_add_frame(&m, "labels", EQ_DT_I32, 1, s1, NULL);
            eq_proto_add_frame(&m, "topk", EQ_DT_I32, 2, s2, NULL);
            eq_proto_payload pl[3] = { { ids, (size_t)b.count * 8, NULL, NULL },
                                       { t->lab_host[ks], (size_t)b.count * 4, NULL, NULL },
                                       { topk, (size_t)b.count * (size_t)k * 4, NULL, NULL } };
            if ((st = s_send_pred(t, epoch, &m, pl, 3, err))) break;
        }
        passed = seen;
        if (t->stop && t->world <= 1) { /* several ranks finish the pass and stop together */
            st = EQ_ERR_INTERRUPTED; /* the message is set below */
            break;
        }
        ks = kn;
    }
    free(topk);
    free(ids);
    if (st == EQ_ERR_INTERRUPTED) { /* SIGTERM/SIGINT or a control stop: say what is lost and what is kept */
        if (t->evaluate)
            st = eq_err_set(err, EQ_ERR_INTERRUPTED,
                            "stopped during the val pass of epoch %" PRIu64 " (--evaluate), after %" PRIu64
                            " of %" PRIu64 " samples: no evaluation is reported",
                            epoch, passed, mine);
        else
            st = eq_err_set(err, EQ_ERR_INTERRUPTED,
                            "stopped during the val pass of epoch %" PRIu64 ", after %" PRIu64 " of %" PRIu64
                            " samples: its evaluation is not reported; the epoch-end checkpoint is kept "
                            "(--evaluate --resume %s/epoch%" PRIu64 ".safetensors evaluates it)",
                            epoch, passed, mine, t->x.train.out_dir, epoch);
    }
    if (st == EQ_OK && seen != mine)
        st = eq_err_set(err, EQ_ERR_INTERNAL, "val pass of epoch %" PRIu64 ": %" PRIu64 " samples, expected %" PRIu64,
                        epoch, seen, mine);
    if (st == EQ_OK && !mine && t->eval) { /* nothing here: say so, so eq-eval can finish */
        eq_msg m;
        eq_proto_msg_init(&m, EQ_MSG_PRED);
        eq_msg_pred *p = &m.u.pred;
        snprintf(p->job, sizeof p->job, "%s", t->x.train.name);
        p->epoch = epoch;
        p->total = N;
        p->rank = (uint32_t)t->rank;
        p->world = (uint32_t)t->world;
        p->count = 0;
        p->final = 1;
        int64_t s1[1] = { 0 }, s2[2] = { 0, k };
        eq_proto_add_frame(&m, "ids", EQ_DT_I64, 1, s1, NULL);
        eq_proto_add_frame(&m, "labels", EQ_DT_I32, 1, s1, NULL);
        eq_proto_add_frame(&m, "topk", EQ_DT_I32, 2, s2, NULL);
        eq_proto_payload pl[3] = { { NULL, 0, NULL, NULL }, { NULL, 0, NULL, NULL }, { NULL, 0, NULL, NULL } };
        st = s_send_pred(t, epoch, &m, pl, 3, err);
    }
    if (st == EQ_OK)
        eq_info("epoch %" PRIu64 ": val predictions for %" PRIu64 " of %" PRIu64 " samples sent to eq-eval in %.1f s",
                epoch, mine, N, eq_clock_sec() - t0);
    return st;
}

/* Apply policy section `sec` (the epoch section at `epoch`); rank 0 notes
 * it in metrics.jsonl. */
static eq_status s_policy(eq_train *t, eq_policy_section sec, uint64_t epoch, bool options_only, eq_err *err)
{
    if (!eq_policy_rule_count(t->policy, sec)) return EQ_OK;
    if (sec == EQ_POLICY_INIT)
        eq_info("policy %s: init section", t->x.train.policy);
    else
        eq_info("policy %s: epoch %" PRIu64 "%s", t->x.train.policy, epoch,
                options_only ? " again, options only (before the resume point)" : "");
    eq_status st = eq_policy_apply(t->policy, sec, options_only, t->qlayers, t->optim, err);
    if (st) return st;
    if (t->jsonl) {
        char *ch = NULL;
        if ((st = eq_policy_changes_json(t->policy, sec, options_only, t->qlayers, &ch, err))) return st;
        fprintf(t->jsonl, "{\"wall_ms\":%" PRIu64 ",\"kind\":\"policy\",\"section\":\"%s\"", eq_wall_ms(),
                sec == EQ_POLICY_INIT ? "init" : "epoch");
        if (sec == EQ_POLICY_EPOCH) fprintf(t->jsonl, ",\"epoch\":%" PRIu64, epoch);
        fprintf(t->jsonl, ",\"options_only\":%s,\"rules\":%zu,\"changes\":%s}\n", options_only ? "true" : "false",
                eq_policy_rule_count(t->policy, sec), ch);
        free(ch);
        fflush(t->jsonl);
    }
    return EQ_OK;
}

/* metrics.jsonl: the state of every quantizer after epoch `epoch`. */
static eq_status s_quant_metrics(eq_train *t, uint64_t epoch, eq_err *err)
{
    if (!t->jsonl || !eq_qlayers_count(t->qlayers)) return EQ_OK;
    char *js = NULL;
    eq_status st = eq_qlayers_stats_json(t->qlayers, &js, err);
    if (st) return st;
    fprintf(t->jsonl, "{\"wall_ms\":%" PRIu64 ",\"kind\":\"quant\",\"epoch\":%" PRIu64 ",\"quantizers\":%s}\n",
            eq_wall_ms(), epoch, js);
    fflush(t->jsonl);
    free(js);
    return EQ_OK;
}

static eq_status s_run(eq_train *t, eq_err *err);

eq_status eq_train_run(eq_train *t, eq_err *err)
{
    eq_status st = s_run(t, err);
    if (st != EQ_OK && st != EQ_ERR_INTERRUPTED && !t->done_sent) s_publish(t, "done", t->last_loss, 0, 0, st);
    return st;
}

static eq_status s_run(eq_train *t, eq_err *err)
{
    const eq_experiment *x = &t->x;
    eq_status st;
    t->t_start = eq_clock_sec();
    eq_info("model: %s", eq_model_summary(t->model));
    /* The other ranks first: a rank that is missing fails the run here. */
    if ((st = s_dist_setup(t, err))) return st;
    /* Jobs: train and val pipelines from [data]. */
    eq_msg job;
    eq_msg_job_ok ok;
    if (!t->evaluate) {
        if ((st = eq_loader_data_job(&x->data, "train", &job, err))) return st;
        const eq_msg_job *jb = &job.u.job;
        if (jb->mixup_alpha > 0 || jb->cutmix_alpha > 0) {
            /* Partners are drawn inside blocks (default: the global batch);
             * each rank must ask for whole blocks. */
            int64_t blk = t->G;
            for (uint32_t i = 0; i < jb->ntransforms; i++)
                if (!strcmp(jb->transforms[i].key, "mix_block") && jb->transforms[i].i > 0) blk = jb->transforms[i].i;
            if (t->B % blk)
                return eq_err_set(err, EQ_ERR_INVALID,
                                  "mixup/CutMix on %d ranks: partners are drawn in blocks of %" PRId64
                                  " positions, but each rank's share is %" PRId64 " (set [data] mix_block to %" PRId64
                                  " or a divisor of it)",
                                  t->world, blk, t->B, t->B);
        }
        if ((st = eq_feeder_add_job(t->feeder, &job, &ok, &t->train_job, err))) return st;
        t->train_size = ok.size;
        if (ok.classes > (uint32_t)t->classes)
            return eq_err_set(err, EQ_ERR_INVALID, "the dataset has %u classes, [model] num_classes = %" PRId64,
                              ok.classes, t->classes);
    }
    if ((st = eq_loader_data_job(&x->data, "val", &job, err)) ||
        (st = eq_feeder_add_job(t->feeder, &job, &ok, &t->val_job, err)))
        return st;
    t->val_size = ok.size;
    uint64_t G = (uint64_t)t->G;
    uint64_t epochs = (uint64_t)x->sched.epochs, e0 = 0, s0 = 0;
    /* The original deploys the init policy before loading any weights. */
    if (t->policy && (st = s_policy(t, EQ_POLICY_INIT, 0, false, err))) return st;
    if (t->pretrained && (st = s_pretrained(t, t->pretrained, err))) return st;
    if (t->resume) {
        eq_ckpt_run run;
        if ((st = eq_checkpoint_load(t->resume, t->model, t->optim, &run, NULL, err))) return st;
        e0 = (uint64_t)run.epoch;
        s0 = (uint64_t)run.step;
        if (t->scaling && t->scaler.dynamic) { /* a static scale is the config's */
            if (run.loss_scale > 0) {
                t->scaler.scale = run.loss_scale;
                t->scaler.growth_tracker = run.loss_scale_growth_tracker;
                /* a shorter growth_interval than the saved run's: grow at the next success (the rule
                 * compares tracker + 1 == interval) */
                if (t->scaler.growth_tracker >= t->scaler.growth_interval)
                    t->scaler.growth_tracker = t->scaler.growth_interval - 1;
                eq_info("loss scale %g, growth tracker %" PRId64 " from %s", (double)run.loss_scale,
                        run.loss_scale_growth_tracker, t->resume);
            } else {
                eq_info("%s holds no loss scale: starting at loss_scale_init %g", t->resume,
                        (double)t->scaler.scale);
            }
        } else if (run.loss_scale > 0) { /* the saved run scaled; this one does not, or statically */
            eq_info("%s holds loss scale %g (growth tracker %" PRId64 "), not used: [train] loss_scale is %s "
                    "(precision %s)",
                    t->resume, (double)run.loss_scale, run.loss_scale_growth_tracker,
                    t->scaling ? "a static scale" : "none", eq_precision_name((eq_precision)x->train.precision));
        }
    }
    if (t->evaluate) {
        /* The epoch whose end the weights are (a checkpoint at an epoch end
         * resumes at the next epoch's step 0), or 0. */
        uint64_t ev = t->resume && s0 == 0 && e0 > 0 ? e0 - 1 : e0;
        t->epoch = ev;
        eq_info("evaluating %s (epoch %" PRIu64 ") on %" PRIu64 " val samples", t->resume ? t->resume
                : t->pretrained ? t->pretrained : "the initial weights", ev, t->val_size);
        if ((st = s_validate(t, ev, err))) return st;
        s_publish(t, "done", 0, 0, 0, 0);
        return EQ_OK;
    }
    uint64_t steps = x->data.last_train == 1 ? (t->train_size + G - 1) / G : t->train_size / G;
    if (steps == 0)
        return eq_err_set(err, EQ_ERR_INVALID, "train split of %" PRIu64 " samples has no full global batch of %" PRIu64,
                          t->train_size, G);
    if (x->train.max_steps > 0 && (uint64_t)x->train.max_steps < steps) steps = (uint64_t)x->train.max_steps;
    t->steps = steps;
    if (t->resume) {
        if (s0 >= steps) {
            e0++;
            s0 = 0;
        }
        /* Nothing to train: say so, rather than exit 0 without an epoch
         * or an evaluation (eqctl run would wait for one). */
        if (e0 >= epochs)
            return eq_err_set(err, EQ_ERR_INVALID,
                              "%s resumes at epoch %" PRIu64 " step %" PRIu64 " and [schedule] epochs = %" PRIu64
                              ": nothing left to train (raise schedule.epochs, or --evaluate to evaluate it)",
                              t->resume, e0, s0, epochs);
        eq_info("resumed from %s at epoch %" PRIu64 " step %" PRIu64, t->resume, e0, s0);
        /* What the trigger epochs before this point set: the options again
         * (the checkpoint holds the tensors they changed). */
        for (uint64_t e = 0; t->policy && e <= e0; e++)
            if ((e < e0 || s0 > 0) && eq_policy_triggers(t->policy, (int64_t)e) &&
                (st = s_policy(t, EQ_POLICY_EPOCH, e, true, err)))
                return st;
    }
    uint64_t I = (uint64_t)x->train.iter_size;
    if (I > 1 && s0 % I)
        eq_warn("resuming inside a gradient accumulation window (step %" PRIu64 ", iter_size %" PRIu64
                "): the window's earlier steps are not in the first update",
                s0, I);
    eq_info("train: %" PRIu64 " samples, %" PRIu64 " steps of %" PRIu64 " per epoch%s, %" PRIu64
            " epochs; val: %" PRIu64 " samples",
            t->train_size, steps, G, t->world > 1 ? " (split over the ranks)" : "", epochs, t->val_size);
    uint64_t total_steps = epochs * steps, done_steps = e0 * steps + s0, steps_this_run = 0;
    double run_t0 = eq_clock_sec();
    uint32_t off = (uint32_t)((uint64_t)t->rank * (uint64_t)t->B);
    for (uint64_t e = e0; e < epochs; e++) {
        t->epoch = e;
        uint64_t first = e == e0 ? s0 : 0;
        if (t->policy && first == 0 && eq_policy_triggers(t->policy, (int64_t)e) &&
            (st = s_policy(t, EQ_POLICY_EPOCH, e, false, err)))
            return st;
        if ((st = eq_feeder_pass(t->feeder, t->train_job, e, first, steps, off, (uint32_t)t->B, UINT64_MAX, err)))
            return st;
        double win_t0 = eq_clock_sec(), loss_sum = 0, epoch_loss = 0;
        t->bwd_s = t->wait_s = 0;
        t->comm_n = 0;
        t->epoch_skipped = t->epoch_updates = 0;
        eq_feeder_stats fs0;
        eq_feeder_stats_get(t->feeder, &fs0);
        uint64_t win_n = 0, epoch_n = 0, epoch_mixed = 0;
        bool stop_all = false;
        /* The input pipeline (s_fetch): step s's batch was fetched into
         * slot ks during step s - 1 (the pass's first one here), with its
         * outcome in fst/ferr. */
        int ks = -1;
        eq_err ferr = { 0 };
        eq_status fst = s_fetch(t, true, &ks, &ferr);
        for (uint64_t s = first; s < steps; s++) {
            t->step = s;
            st = stop_all ? EQ_ERR_INTERRUPTED : fst;
            if (!stop_all && fst && err) *err = ferr;
            if (st == EQ_ERR_INTERRUPTED || (st == EQ_OK && t->stop && !t->comm)) {
                if (st == EQ_OK) s_control(t); /* answer a pending stop */
                eq_warn("stopping: %s at epoch %" PRIu64 " step %" PRIu64, t->rank ? "no checkpoint (rank 0 writes it)"
                        : "checkpoint", e, s);
                eq_status cst = t->rank == 0 ? s_checkpoint(t, e, s, NULL, err) : EQ_OK;
                if (cst) return cst;
                s_publish(t, "done", t->last_loss, 0, 0, EQ_ERR_INTERRUPTED);
                return eq_err_set(err, EQ_ERR_INTERRUPTED, "stopped at epoch %" PRIu64 " step %" PRIu64, e, s);
            }
            if (st) {
                /* The data failed (no loader answered for give_up_ms, a
                 * loader's error, a bad batch): steps [first, s) are done;
                 * keep them rather than fall back to the last epoch end. */
                if (s > first && t->rank == 0) {
                    eq_err ce = { 0 };
                    if (s_checkpoint(t, e, s, NULL, &ce) == EQ_OK)
                        eq_warn("the data failed at epoch %" PRIu64 " step %" PRIu64 ": checkpoint written first "
                                "(--resume %s/last.safetensors continues there)",
                                e, s, x->train.out_dir);
                    else
                        eq_error("the data failed at epoch %" PRIu64 " step %" PRIu64 ", and so did the checkpoint: %s",
                                 e, s, ce.msg);
                }
                return st;
            }
            int k = ks;
            const bool mixed = t->slot[k].mixed;
            if ((st = s_stage(t, k, err))) return st;
            epoch_mixed += mixed;
            float loss;
            double lr;
            /* dropout masks from the run's position: a resumed run draws the same */
            eq_model_set_noise_key(t->model, eq_rng_mix(eq_rng_mix(e, s), (uint64_t)t->rank));
            if (t->scaling && (st = eq_model_set_loss_scale(t->model, t->scaler.scale, err))) return st;
            if ((st = eq_model_forward(t->model, t->x_dev, true, err))) return st;
            /* The next batch while this step computes: its wait and upload
             * come before any host wait of the step. */
            if (s + 1 < steps) fst = s_fetch(t, true, &ks, &ferr);
            /* The loss goes to the host asynchronously: the host issues the
             * backward and the optimiser before it waits for it (only for
             * the loss, not for them; doc/gpu.md, "Host waits"). */
            if ((st = eq_model_loss_async(t->model, s_lab_dev(t, k, 0), mixed ? s_lab_dev(t, k, 1) : NULL,
                                          mixed ? (const float *)s_lab_dev(t, k, 3) : NULL,
                                          (float)x->train.smoothing, err)))
                return st;
            bool wfirst = I == 1 || s % I == 0 || s == first, wlast = I == 1 || s % I == I - 1;
            if ((st = s_backward(t, wfirst, wlast, err)) ||
                (st = eq_schedule_lr(&x->sched, x->optim.lr, (int64_t)e, (int64_t)s, (int64_t)steps, &lr, err)))
                return st;
            if (wlast) {
                bool skip = false;
                if ((t->scaling && (st = s_scaler_step(t, e, s, &skip, err))) ||
                    (!skip && (st = eq_optim_step(t->optim, lr, err))) || (st = s_sync_state(t, err)))
                    return st;
            }
            /* This step's loss, before anything that reports or saves it:
             * a non-finite one stops the run here, with no checkpoint
             * written after the step (the optimiser's update of this step,
             * already issued, is never saved). */
            if ((st = eq_model_loss_fetch(t->model, &loss, err))) return st;
            /* Every rank learns the mean loss and whether any rank stops. */
            if ((st = s_agree(t, &loss, &stop_all, err))) return st;
            if (!isfinite(loss)) {
                t->diverged = true;
                s_publish(t, "done", 0, 0, 0, EQ_ERR_INVALID);
                char last[1100];
                struct stat lst;
                snprintf(last, sizeof last, "%s/last.safetensors", x->train.out_dir);
                bool have_last = stat(last, &lst) == 0;
                return eq_err_set(err, EQ_ERR_INVALID,
                                  "loss is %s at epoch %" PRIu64 " step %" PRIu64
                                  "%s: stopped without a checkpoint of this step; %s%s%s",
                                  isnan(loss) ? "NaN" : "infinite", e, s, t->world > 1 ? " (mean over the ranks)" : "",
                                  have_last ? "the last good one is " : "no checkpoint was written before it",
                                  have_last ? last : "",
                                  x->train.precision == EQ_PREC_FP16
                                      ? " (precision fp16: an activation beyond 65504 overflows the forward, which "
                                        "loss scaling cannot help; bf16 has fp32's range)"
                                      : "");
            }
            t->last_loss = loss;
            loss_sum += loss;
            epoch_loss += loss;
            win_n++;
            epoch_n++;
            done_steps++;
            steps_this_run++;
            s_control(t);
            bool last = s + 1 == steps;
            if (win_n == (uint64_t)x->train.log_every || last) {
                double now = eq_clock_sec(), dt = now - win_t0;
                eq_feeder_stats fs;
                eq_feeder_stats_get(t->feeder, &fs);
                t->img_s = dt > 0 ? (double)(win_n * G) / dt : 0;
                t->wait_pct = dt > 0 ? 100.0 * (fs.wait_s - fs0.wait_s) / dt : 0;
                double per_step = (now - run_t0) / (double)steps_this_run;
                double eta = per_step * (double)(total_steps - done_steps);
                char etas[32];
                eq_clock_fmt_eta(eta, etas, sizeof etas);
                double mean = loss_sum / (double)win_n;
                eq_info("epoch %" PRIu64 " step %" PRIu64 "/%" PRIu64 " loss %.4f lr %.4g %.0f img/s data-wait %.1f%% eta %s",
                        e, s + 1, steps, mean, lr, t->img_s, t->wait_pct, etas);
                if (t->jsonl) {
                    fprintf(t->jsonl,
                            "{\"wall_ms\":%" PRIu64 ",\"kind\":\"train\",\"epoch\":%" PRIu64 ",\"step\":%" PRIu64
                            ",\"steps\":%" PRIu64 ",\"loss\":%.6g,\"lr\":%.6g,\"img_s\":%.1f,\"wait_pct\":%.2f",
                            eq_wall_ms(), e, s + 1, steps, mean, lr, t->img_s, t->wait_pct);
                    if (t->scaling)
                        fprintf(t->jsonl, ",\"loss_scale\":%.9g,\"skipped\":%" PRIu64, (double)t->scaler.scale,
                                t->epoch_skipped);
                    fputs("}\n", t->jsonl);
                    fflush(t->jsonl);
                }
                t->step = s + 1;
                s_publish(t, "train", mean, lr, eta, 0);
                win_t0 = now;
                fs0 = fs;
                win_n = 0;
                loss_sum = 0;
            }
            if (t->rank == 0 && x->train.ckpt_every > 0 && (s + 1) % (uint64_t)x->train.ckpt_every == 0 && !last &&
                (st = s_checkpoint(t, e, s + 1, NULL, err)))
                return st;
        }
        eq_feeder_stats fs;
        eq_feeder_stats_get(t->feeder, &fs);
        double mean = epoch_n ? epoch_loss / (double)epoch_n : 0;
        eq_info("epoch %" PRIu64 " done: mean loss %.4f, %" PRIu64 " batches so far, %" PRIu64
                " requests re-issued, %" PRIu64 " late replies dropped, %" PRIu64 " of %" PRIu64 " batches mixed here",
                e, mean, fs.batches, fs.reissued, fs.late_dropped, epoch_mixed, epoch_n);
        if (t->scaling)
            eq_info("epoch %" PRIu64 " loss scaling: %" PRIu64 " optimiser step(s) skipped (inf/NaN gradients), "
                    "loss scale %g",
                    e, t->epoch_skipped, (double)t->scaler.scale);
        if (t->scaling && t->rank == 0 && t->epoch_updates > 0 && t->epoch_skipped == t->epoch_updates)
            eq_warn("epoch %" PRIu64 ": every optimiser step (%" PRIu64 ") was skipped for inf/NaN gradients: the "
                    "model did not train this epoch%s",
                    e, t->epoch_updates,
                    t->scaler.dynamic ? "" : " (a fixed [train] loss_scale: try loss_scale = dynamic)");
        if (t->comm_n) /* how much of the all-reduce the backward hid (wall clock) */
            eq_info("epoch %" PRIu64 " gradient all-reduce (%s): backward %.1f ms, then waited %.1f ms per update",
                    e, t->x.train.overlap ? "overlapping the backward" : "after the backward",
                    1e3 * t->bwd_s / (double)t->comm_n, 1e3 * t->wait_s / (double)t->comm_n);
        if (t->jsonl) {
            fprintf(t->jsonl,
                    "{\"wall_ms\":%" PRIu64 ",\"kind\":\"epoch\",\"epoch\":%" PRIu64 ",\"steps\":%" PRIu64
                    ",\"loss\":%.6g,\"samples\":%" PRIu64 ",\"mixed\":%" PRIu64 ",\"elapsed_s\":%.3f",
                    eq_wall_ms(), e, epoch_n, mean, epoch_n * G, epoch_mixed, eq_clock_sec() - t->t_start);
            if (t->scaling)
                fprintf(t->jsonl, ",\"loss_scale\":%.9g,\"skipped\":%" PRIu64, (double)t->scaler.scale,
                        t->epoch_skipped);
            fputs("}\n", t->jsonl);
            fflush(t->jsonl);
        }
        if ((st = s_quant_metrics(t, e, err))) return st;
        t->step = steps;
        s_publish(t, "epoch", mean, 0, 0, 0);
        char tag[32];
        snprintf(tag, sizeof tag, "epoch%" PRIu64, e);
        if (t->rank == 0 && (st = s_checkpoint(t, e + 1, 0, tag, err))) return st;
        bool eval_now = x->train.eval_every > 0 && ((e + 1) % (uint64_t)x->train.eval_every == 0 || e + 1 == epochs);
        if (eval_now && (st = s_validate(t, e, err))) {
            if (st == EQ_ERR_INTERRUPTED) s_publish(t, "done", t->last_loss, 0, 0, EQ_ERR_INTERRUPTED);
            return st;
        }
        float zero = 0;
        if ((st = s_agree(t, &zero, &stop_all, err))) return st; /* a stop during the val pass, on any rank */
        if (stop_all) {
            s_publish(t, "done", t->last_loss, 0, 0, EQ_ERR_INTERRUPTED);
            return eq_err_set(err, EQ_ERR_INTERRUPTED, "stopped after epoch %" PRIu64, e);
        }
    }
    t->epoch = epochs;
    s_publish(t, "done", t->last_loss, 0, 0, 0);
    eq_info("done: %" PRIu64 " epochs in %.1f s", epochs, eq_clock_sec() - t->t_start);
    return EQ_OK;
}
