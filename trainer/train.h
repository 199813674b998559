/*
 * trainer/train.h -- the experiment config as the trainer reads it, and
 * the training loop of eq-trainer: batches from the loaders (feeder.h),
 * normalisation, forward/backward/optimiser on the model (model.h,
 * optim.h), val predictions to eq-eval (PRED), progress to a PUB socket and
 * a JSONL file (METRICS), checkpoints (checkpoint.h).
 *
 * The experiment config is one file with the sections [loader] and [data]
 * (loader/server.h), [model], [quant.wt], [quant.fm] (model.h), [optim],
 * [schedule] (optim.h), and [train] (below).  Its defaults are the
 * embedded Fashion-MNIST run (a file with only [loader] and [data] is a
 * complete experiment): where the trainer's default differs from the
 * owning module's, eq_experiment_sections says so in the key's doc line
 * (ResNet-20 at width 16 on 1 channel, 1 epoch, cosine lr per iteration,
 * weights and activations quantized with LSQ).
 *
 * The loop (one rank):
 *   for each epoch e (from the resume point):
 *     train pass: steps [s0, S) with S = floor(train size / G) (or
 *       max_steps); each step: uint8 NHWC -> fp32 (x/255 - mean)/std on
 *       the device (eq_backend_stage_images), forward, the next batch's
 *       fetch and asynchronous upload (the input pipeline, below), loss
 *       (a NaN/inf loss stops the run naming the step; the last good
 *       checkpoint is kept), backward, lr from the schedule, optimiser
 *       step; progress every log_every steps;
 *     val pass (every eval_every epochs): forward in eval mode on every val
 *       sample (positions [0, N) of the unshuffled val order, the last batch
 *       padded), top-k indices sent to eq-eval as PRED with the samples'
 *       positions as ids and a final PRED; no accuracy is computed here;
 *     checkpoint (atomic) at the epoch end, and every ckpt_every steps.
 *   A stop (eq_train_stop, from SIGTERM/SIGINT or the control socket)
 *   finishes the current step, writes a checkpoint that resumes at the next
 *   step, and returns EQ_ERR_INTERRUPTED.
 *
 * The input pipeline: step s's batch is fetched from the feeder (the data
 * wait), checked on the host (labels, mix partners, lambdas) and its raw
 * uint8 images and labels uploaded with eq_backend_upload_async into one
 * of two device slots while step s - 1 computes: after its forward is
 * queued, before its loss is downloaded.  On an asynchronous backend
 * (CUDA: pinned staging buffers, a copy stream) the wait and the copy
 * overlap compute; on the CPU backend the results are bitwise those of
 * host staging.  The val pass is pipelined the same way.  trainer/train.c
 * ("the input pipeline") says why two slots are safe.
 *
 * Resume: eq_train_opts.resume names a checkpoint; training continues at
 * its (epoch, step) with exactly the batches the uninterrupted run would
 * have seen (they are pure functions of (job, epoch, position)).
 * Pretrained: eq_train_opts.pretrained loads weights only, matched by name
 * (a "module." prefix stripped; same element count but another shape is
 * reshaped; other shapes skipped), reporting what was missing, unexpected,
 * reshaped or skipped (ORIGINAL.md §4.7).  Evaluate: eq_train_opts.evaluate
 * runs the val pass once on the loaded weights and returns.
 *
 * Policy ([train] policy = FILE, trainer/policy.h): the file is parsed and
 * checked against the model's quantized layers in eq_train_new; its `init`
 * section is applied before any weights are loaded (as the original does,
 * so a checkpoint or --pretrained file overrides the quantizer state it
 * sets), each trigger epoch's rules before that epoch's first step, on
 * every rank alike.  A resumed run re-applies the option attributes of
 * the triggers before its resume point (the checkpoint holds the tensor
 * ones).
 *
 * Metrics: rank 0 appends to <out_dir>/metrics.jsonl one JSON object per
 * line: kind "train" (every log_every steps: loss, lr, img/s, data-wait),
 * "epoch" (the epoch's mean loss, samples), "quant" (after each epoch: the
 * state of every quantizer, eq_qlayers_stats_json) and "policy" (a policy
 * section applied).  doc/eq-trainer.md describes the fields.
 *
 * Gradient accumulation ([train] iter_size = I, the original's): the
 * gradients of I consecutive steps are summed (the loss is not divided) and
 * the optimiser steps after the last of them, with the lr of that step.
 *
 * Mixed precision ([train] precision, the original's --fp16 --opt_level O1):
 * the model's activations and activation gradients are stored as bf16/fp16
 * values (model.h; on the CPU backend an emulation: values rounded as on a
 * GPU, fp32 arithmetic).  Loss scaling ([train] loss_scale, trainer/
 * scaler.h, PyTorch's GradScaler): the loss's backward is seeded with the
 * scale; at the end of each iter_size window, after the all-reduce, every
 * gradient the optimiser uses is tested for inf/NaN.  Any: the optimiser
 * step is skipped (parameters, momentum, Adam's state and step count keep
 * their values; BN running statistics and quantizer buffers moved with the
 * forward, as in PyTorch) and a dynamic scale backs off; none: the
 * gradients are multiplied by 1/scale (exact for powers of two) and the
 * optimiser steps.  Skipped steps are logged (warn), counted per epoch
 * (epoch log line, metrics.jsonl "skipped", control "status"), and the
 * scale and growth tracker are kept in checkpoints.  With several ranks the
 * gradients are averaged before the test, so every rank finds the same and
 * skips the same steps.  A NaN/inf loss still stops the run (the loss is
 * not scaled: a smaller scale would not help).
 *
 * Several ranks (eq_train_opts.world > 1, trainer/dist.h): rank r of W
 * trains on positions [r*G/W, (r+1)*G/W) of every global step (G must be a
 * multiple of W), so the model's batch is G/W.  Rank 0 binds the control
 * socket, where the others join (rendezvous) before the first step; all
 * ranks then form a ring (eq_comm).  Each step the ranks sum their loss and
 * stop flags (a NaN/inf loss on any rank, or a stop on any, stops all at the
 * same step), average the gradients in buckets of at most 4 MiB in reverse
 * tensor order, step the optimiser identically, then take rank 0's BN
 * running statistics and average the quantizer buffers (and, during a
 * quantizer warm-up, its parameters).  Only rank 0 writes checkpoints,
 * metrics.jsonl and METRICS; each rank sends the PRED of its share of the
 * val set to eq-eval.
 *
 * Thread safety: one thread runs eq_train_run; eq_train_stop may be called
 * from a signal handler or any thread.
 */
#ifndef EQ_TRAINER_TRAIN_H
#define EQ_TRAINER_TRAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/status.h"
#include "loader/server.h"
#include "trainer/feeder.h"
#include "trainer/model.h"
#include "trainer/optim.h"

/* [train] */
typedef struct eq_train_cfg {
    char name[64];          /* job name in PRED/METRICS */
    int64_t max_steps;      /* per epoch; 0 = the whole epoch */
    int64_t eval_every;     /* epochs; 0 = never */
    int64_t eval_max;       /* val samples evaluated; 0 = all */
    int64_t log_every;      /* steps */
    char out_dir[1024];     /* checkpoints and metrics.jsonl */
    int64_t ckpt_every;     /* steps; 0 = epoch ends only */
    int64_t keep_last;      /* checkpoints kept */
    int64_t threads;        /* CPU backend threads; 0 = one per CPU */
    double mean[16], std[16]; /* per channel, on x/255 */
    size_t nmean, nstd;
    int64_t inflight;       /* batch requests in flight over all loaders */
    int64_t timeout_ms;     /* request deadline before asking again */
    int64_t loader_timeout; /* s without any loader reply before the run fails */
    int64_t eval_timeout;   /* s a PRED waits for eq-eval to connect or take it before the run fails */
    double smoothing;       /* label smoothing */
    int64_t iter_size;      /* gradient accumulation steps */
    int64_t ranks;          /* trainer ranks `eqctl run` starts (eq-trainer: --world) */
    int64_t dist_timeout_ms; /* rendezvous and collective deadline */
    bool overlap;           /* several ranks: all-reduce gradient buckets during the backward */
    double bucket_mb;       /* MiB of gradients per all-reduce bucket */
    int backend;            /* 0 cpu, 1 cuda (trainer/backend_select.h) */
    int64_t device;         /* cuda: device ordinal */
    char policy[1024];      /* policy file (trainer/policy.h); "" = none */
    int precision;          /* eq_precision (backend.h): fp32, bf16, fp16 -> [model] precision */
    char loss_scale[32];    /* auto, dynamic, none, or a positive number */
    double loss_scale_init, loss_scale_growth_factor, loss_scale_backoff_factor;
    int64_t loss_scale_growth_interval;
    /* set by eq_experiment_load from loss_scale (auto: dynamic for fp16) */
    int loss_scale_mode;    /* EQ_LOSS_SCALE_NONE, _DYNAMIC, _STATIC */
    double loss_scale_value; /* _STATIC: the scale */
} eq_train_cfg;

enum { EQ_LOSS_SCALE_NONE = 0, EQ_LOSS_SCALE_DYNAMIC = 1, EQ_LOSS_SCALE_STATIC = 2 };

typedef struct eq_experiment {
    eq_loader_cfg loader;
    eq_loader_data_cfg data;
    eq_model_cfg model;
    eq_model_quant_cfg wt, fm, ot;
    eq_optim_cfg optim;
    eq_schedule_cfg sched;
    eq_train_cfg train;
} eq_experiment;

#define EQ_EXPERIMENT_NSECTIONS 9 /* data loader 2, model 4, optim 2, train 1 */

/* Every section of an experiment config, bound to `x` (NULL: validate and
 * discard), with the trainer's defaults.  The tables are static (one set
 * per process; the first call builds them).  Not thread-safe on the first
 * call. */
void eq_experiment_sections(eq_experiment *x, eq_config_section secs[EQ_EXPERIMENT_NSECTIONS]);

/* Load the experiment at `path` with `sets` overrides, and check the
 * cross-section rules (mean/std per channel, model input channels equal to
 * [data] channels).  *text_out (may be NULL) receives the effective config
 * as text (eq_config_dump; caller frees).  Errors as eq_config_load. */
eq_status eq_experiment_load(eq_experiment *x, const char *path, const char *const *sets, size_t nsets,
                             char **text_out, eq_err *err);

typedef struct eq_train_opts {
    const char *const *loaders; /* data endpoints of the eq-loaders, >= 1 */
    size_t nloaders;
    const char *eval;       /* eq-eval PULL endpoint; NULL: no evaluation */
    const char *pub;        /* METRICS PUB endpoint to bind; NULL: none */
    const char *control;    /* control ROUTER to bind ("status", "stop"); NULL: none */
    const char *resume;     /* checkpoint to resume from; NULL: start fresh */
    const char *config_text; /* saved in checkpoints; may be NULL */
    const char *pretrained; /* weights to start from (name-matched); NULL: none */
    bool evaluate;          /* run the val pass once and return */
    int rank, world;        /* this rank of `world` (0 and 0 mean 0 of 1) */
    const char *rendezvous; /* ranks > 0: rank 0's control endpoint */
    const char *dist_bind;  /* this rank's collective endpoint; NULL: tcp://127.0.0.1:* */
    /* Tests only (tests/check_pipeline.c: a fake asynchronous backend):
     * train on this backend instead of opening [train] backend/threads/
     * device.  The caller owns it and destroys it after eq_train_destroy.
     * NULL: open the configured one (every program). */
    struct eq_backend *backend;
} eq_train_opts;

typedef struct eq_train eq_train;

/* Validate, build the backend and model, connect; nothing is trained yet.
 * Caller owns the result. */
eq_train *eq_train_new(const eq_experiment *x, const eq_train_opts *o, eq_err *err);
void eq_train_destroy(eq_train **self_p);

/* Train to the end (EQ_OK), until stopped (EQ_ERR_INTERRUPTED, after the
 * stop checkpoint), or until an error (NaN/inf loss: EQ_ERR_INVALID naming
 * epoch and step, and eq_train_diverged is then true; loader errors; I/O;
 * a rank that fails or falls silent). */
eq_status eq_train_run(eq_train *self, eq_err *err);

/* The run stopped because the loss was NaN or infinite (no checkpoint was
 * written for that step). */
bool eq_train_diverged(const eq_train *self);

/* Ask the loop to stop after the current step.  Async-signal-safe. */
void eq_train_stop(eq_train *self);

/* Convert a batch to the model's input on the host (the reference for
 * eq_backend_stage_images, which the steps use on the device): dst [rows][h][w][c] fp32 (x/255 - mean[c]) / std[c],
 * rows past b->count zero; ya[rows] the labels (0 past b->count).  With a
 * mix plan (b->mix non-empty) *mixed is true, yb[i] is the partner's label,
 * lam[i] the sample's own weight (1 past b->count), and for "mixup"
 * dst[i] = lam[i] * x_i + (1 - lam[i]) * x_partner in fp32 from the uint8
 * bytes (CutMix images arrive pasted); otherwise yb and lam are untouched.
 * mean/std have b->c values.  Errors: EQ_ERR_INVALID for a label outside
 * [0, classes) naming the sample; EQ_ERR_PROTO for a partner or lambda out
 * of range or more samples than rows.  Touches only its arguments. */
eq_status eq_train_stage(const eq_feeder_batch *b, int64_t rows, int64_t classes, const double *mean,
                         const double *std, float *dst, int32_t *ya, int32_t *yb, float *lam, bool *mixed,
                         eq_err *err);

/* Bound endpoints ("" when not bound). */
const char *eq_train_pub_endpoint(const eq_train *self);
const char *eq_train_control_endpoint(const eq_train *self);

#endif
