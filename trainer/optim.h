/*
 * trainer/optim.h -- SGD / Adam over a model's trainable tensors (the
 * backend's update ops, exactly torch.optim's arithmetic) and the
 * original's learning-rate policies (ORIGINAL.md §4.3, §4.5), configured by
 * the [optim] and [schedule] config sections.
 *
 * Weight decay per tensor, as the original groups parameters: a name
 * containing an entry of custom_decay_list gets custom_decay; otherwise,
 * unless decay_small is set, 1-D tensors and 4-D tensors with second
 * dimension 1 (depthwise weights, per-channel clip values) get none;
 * everything else gets weight_decay.
 *
 * Learning rate per tensor (ORIGINAL.md §4.3): a name containing an entry
 * of custom_lr_list starts at custom_lr instead of lr and follows the
 * schedule in proportion (it gets lr_t * custom_lr / lr); when the list
 * holds "quant_weight", the full-precision weights that own a weight
 * quantizer ("X.weight" beside "X.quant_weight.*") get custom_lr as a
 * constant that the schedule never changes.  (The original lets step/poly
 * schedules overwrite ordinary custom rates at epoch 0, ORIGINAL.md 7.22a,
 * which would make the list do nothing there; eq keeps the ratio.)
 *
 * Optimiser state (momentum buffers; Adam's exp_avg / exp_avg_sq) lives in
 * one backend block with a tensor per parameter, named as PyTorch's
 * optimizer state keys prefixed by the parameter: "<param>.momentum_buffer",
 * "<param>.exp_avg", "<param>.exp_avg_sq" (checkpoints add "optim.").
 * The step counter is host state (eq_optim_steps / eq_optim_set_steps).
 *
 * Not thread-safe: one thread per optimiser; the model must outlive it.
 */
#ifndef EQ_TRAINER_OPTIM_H
#define EQ_TRAINER_OPTIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/status.h"
#include "trainer/model.h"

/* [optim] */
typedef struct eq_optim_cfg {
    int method; /* 0 sgd, 1 adam */
    double lr;  /* base learning rate lr0 */
    double momentum, dampening;
    bool nesterov;
    double weight_decay;
    bool decay_small; /* decay every tensor, including 1-D ones */
    char custom_decay_list[16][64];
    size_t ncustom_decay_list;
    double custom_decay;
    char custom_lr_list[16][64];
    size_t ncustom_lr_list;
    double custom_lr;
    double beta1, beta2, eps;
} eq_optim_cfg;

/* [schedule]: the lr policy of ORIGINAL.md §4.5 plus a linear warm-up. */
typedef enum eq_lr_policy {
    EQ_LR_DECAY = 0, /* lr0 * d^e */
    EQ_LR_FIX,       /* lr0 */
    EQ_LR_FIX_STEP,  /* lr0 * d^floor(e / fix_step) */
    EQ_LR_CUSTOM_STEP, /* multistep: lr0 * d^#{m_k <= e} */
    EQ_LR_POLY,      /* eta + (lr0 - eta) (1 - e'/T)^d, restarting at each m_k */
    EQ_LR_COS,       /* cosine cycles [0,m_1),[m_1,m_2)..,[m_K,E), per epoch */
    EQ_LR_SGDR,      /* the same cycles, per iteration */
    EQ_LR_COUNT
} eq_lr_policy;

typedef struct eq_schedule_cfg {
    int policy; /* eq_lr_policy */
    double lr_decay;             /* d */
    int64_t lr_custom_step[32];  /* m_1 < ... < m_K (epochs) */
    size_t nlr_custom_step;
    int64_t lr_fix_step;
    double eta_min;
    int64_t epochs;              /* E */
    double warmup_epochs;        /* linear ramp from lr/W to lr over the first W epochs' iterations */
} eq_schedule_cfg;

/* secs[0] = [optim], secs[1] = [schedule]; o/s may be NULL (validate only). */
#define EQ_OPTIM_CONFIG_NSECTIONS 2
void eq_optim_config_sections(eq_optim_cfg *o, eq_schedule_cfg *s,
                              eq_config_section secs[EQ_OPTIM_CONFIG_NSECTIONS]);

/* Learning rate at `epoch` (0-based) and iteration `iter` within it, of
 * `iters` per epoch.  Errors: EQ_ERR_INVALID for steps not increasing or
 * beyond `epochs`, iters < 1. */
eq_status eq_schedule_lr(const eq_schedule_cfg *s, double lr0, int64_t epoch, int64_t iter,
                         int64_t iters, double *lr, eq_err *err);

typedef struct eq_optim eq_optim;

/* Allocate the state for every trainable tensor of `m` (zeroed).  Caller
 * owns the result. */
eq_optim *eq_optim_new(eq_model *m, const eq_optim_cfg *cfg, eq_err *err);
void eq_optim_destroy(eq_optim **o_p);
/* One update of every trainable tensor from its grad at learning rate lr. */
eq_status eq_optim_step(eq_optim *o, double lr, eq_err *err);
int64_t eq_optim_steps(const eq_optim *o);
void eq_optim_set_steps(eq_optim *o, int64_t steps);
/* State tensors (F32, on the model's backend), their names as above;
 * `numel` == the parameter's.  NULL when out of range. */
size_t eq_optim_state_count(const eq_optim *o);
const eq_model_tensor *eq_optim_state_at(const eq_optim *o, size_t i);
/* Weight decay chosen for trainable tensor `name` (for logs and tests);
 * negative if it is not a trainable tensor of the model. */
double eq_optim_decay_of(const eq_optim *o, const char *name);
/* Learning rate eq_optim_step(o, lr) applies to trainable tensor `name`
 * (see custom_lr_list above); negative if it is not a trainable tensor. */
double eq_optim_lr_of(const eq_optim *o, const char *name, double lr);

#endif
