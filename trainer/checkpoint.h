/*
 * trainer/checkpoint.h -- model, optimiser and run state in safetensors
 * files (core/safetensors.h: atomic writes, validated reads).
 *
 * Layout of a checkpoint:
 *   <name>                 every model tensor under its PyTorch name (so
 *                          torchvision/PyTorch state dicts load directly)
 *   quant.<name>           quantizer state ("quant.layer1.0.conv1.quant_weight.clip_val")
 *   optim.<param>.<key>    optimiser state (momentum_buffer, exp_avg, exp_avg_sq)
 *   __metadata__           "format" = "eq-checkpoint", "format_version" = "1",
 *                          "epoch", "step", "optim_steps", "rng", "metric",
 *                          "config" (the run's config text), "arch";
 *                          with loss scaling also "loss_scale" (%.17g of
 *                          the float: reads back exactly) and
 *                          "loss_scale_growth_tracker"
 * Loading checks every name, dtype and shape, that the float tensors hold
 * no NaN or infinity, and that the run metadata is in range (epoch, step
 * >= 0), and names the offending tensor or key; nothing is modified unless the whole file matches (validation
 * runs before the first copy).
 *
 * Thread safety: functions touch only their arguments.
 */
#ifndef EQ_TRAINER_CHECKPOINT_H
#define EQ_TRAINER_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/safetensors.h"
#include "core/status.h"
#include "trainer/model.h"
#include "trainer/optim.h"

#define EQ_CKPT_FORMAT "eq-checkpoint"
#define EQ_CKPT_FORMAT_VERSION 1

/* Run state kept in the metadata. */
typedef struct eq_ckpt_run {
    int64_t epoch, step; /* where training continues */
    uint64_t rng[4];     /* the trainer's RNG state (opaque words) */
    double metric;       /* the eval metric of this checkpoint (NAN: none) */
    const char *config;  /* save: config text (may be NULL); load: not set */
    /* the loss scaler (trainer/scaler.h): save writes them when loss_scale
     * > 0; load gives 0 and 0 for a file without them (older, or a run
     * without loss scaling) */
    float loss_scale;
    int64_t loss_scale_growth_tracker;
} eq_ckpt_run;

/* Write model (+ optimiser when o != NULL) and run state to `path`
 * atomically.  Device tensors are downloaded first. */
eq_status eq_checkpoint_save(const char *path, eq_model *m, const eq_optim *o, const eq_ckpt_run *run,
                             eq_err *err);

/* Load a checkpoint written by eq_checkpoint_save into a model (and
 * optimiser, when o != NULL: the file must then hold its state) built with
 * the same config.  Every model tensor must be present with the same dtype
 * and shape, and the file may hold nothing else (an optimiser section is
 * ignored when o is NULL).  run (may be NULL) receives the run state;
 * *config_out (may be NULL) a malloc'd copy of the config text (caller
 * frees; NULL if none).  EQ_ERR_NOTFOUND / EQ_ERR_INVALID name the tensor;
 * EQ_ERR_VERSION for another format or version. */
eq_status eq_checkpoint_load(const char *path, eq_model *m, eq_optim *o, eq_ckpt_run *run,
                             char **config_out, eq_err *err);

/* The run state of the checkpoint at `path` (format, version and every
 * run metadata value validated as eq_checkpoint_load does; no tensor is
 * read), so that a program can refuse a checkpoint before it starts
 * anything: run->config is not set.  Errors name the file and the key. */
eq_status eq_checkpoint_peek(const char *path, eq_ckpt_run *run, eq_err *err);
/* Copy the tensors named `prefix` + <model tensor name> (quantizer state:
 * prefix + "quant." + name) from an open file into the model.  Validates
 * all of them before copying.  allow_missing: model tensors absent from the
 * file keep their values (pretrained weights into a quantized model); their
 * count goes to *nmissing (may be NULL) and each is logged.  Tensors of the
 * file under `prefix` that the model does not have are an error unless
 * allow_unexpected (then logged). */
eq_status eq_checkpoint_load_tensors(eq_model *m, const eq_st_file *f, const char *prefix,
                                     bool allow_missing, bool allow_unexpected, size_t *nmissing,
                                     eq_err *err);

/* Save `DIR/ckpt-<step>.safetensors`, then delete the oldest such files
 * beyond keep_last (>= 1); if run->metric is higher than *best_metric (NAN
 * counts as lower than anything; higher is better), also write
 * `DIR/best.safetensors` and update *best_metric.  The path written goes to
 * path_out (may be NULL, size path_cap). */
eq_status eq_checkpoint_save_rotating(const char *dir, int keep_last, eq_model *m, const eq_optim *o,
                                      const eq_ckpt_run *run, double *best_metric, char *path_out,
                                      size_t path_cap, eq_err *err);

#endif
