/*
 * trainer/model_run.h -- run a model once over safetensors files: the
 * `eq-model run` tool (and `eqctl model run`, which can dispatch to
 * eq_model_cli).  Users check a model with it; it is the parity tests' path
 * from PyTorch tensors to eq and back.
 *
 *   eq-model run --config C [--set section.key=value]... [--weights W]
 *                --in X --out Y [--train [--step]] [--threads N]
 *
 * C: a config file; only its [model] [quant.wt] [quant.fm] [optim]
 * [schedule] sections are read (other sections are skipped, so a whole
 * experiment config works; errors still name C:LINE).  W: weights under
 * PyTorch names -- an eq checkpoint or a converted state dict
 * (trainer/model_pth2safetensors.py); quantizer state absent from W keeps its
 * initial value.  X: `x` F32 NCHW [N][C][H][W] and, for --train, `y` (I32 or
 * I64 [N]).  Y receives `logits` [N][K]; with --train also `loss` [1] and
 * `grad.<name>` for every trainable tensor (`grad.quant.<name>` for quantizer
 * parameters); with --step (one optimiser step at [optim] lr) the updated
 * model tensors under their own names.
 */
#ifndef EQ_TRAINER_MODEL_RUN_H
#define EQ_TRAINER_MODEL_RUN_H

#include <stdbool.h>

#include "core/status.h"

typedef struct eq_model_run_args {
    const char *config;       /* required */
    const char *const *sets;  /* "section.key=value" overrides */
    size_t nsets;
    const char *weights;      /* may be NULL: initialise from [model] seed */
    const char *in, *out;     /* required */
    bool train, step;
    int threads;              /* CPU backend threads (<= 0: all CPUs) */
} eq_model_run_args;

/* Do one run as described above.  Errors name the file, section, key or
 * tensor. */
eq_status eq_model_run(const eq_model_run_args *a, eq_err *err);

/* Command line: argv[0] is the subcommand ("run", "help").  Returns a
 * process exit status (0 ok, 1 error, 2 usage). */
int eq_model_cli(int argc, char **argv);

#endif
