/*
 * trainer/scaler.h -- loss scaling for mixed-precision training: PyTorch's
 * torch.cuda.amp.GradScaler (the original's apex AMP O1 dynamic loss
 * scaling, ORIGINAL.md §4.7) as plain C state plus two model-wide
 * operations on a backend.
 *
 * Use (what eq-trainer's step does, trainer/train.c):
 *   eq_model_set_loss_scale(m, s->scale)      before eq_model_loss: every
 *                                              gradient comes out scaled
 *   forward, loss, backward (, iter_size accumulation, all-reduce)
 *   eq_scaler_nonfinite(m, &n)                 inf/NaN over every gradient
 *   n == 0: eq_scaler_unscale(s, m, ...), then the optimiser step;
 *   n > 0:  no optimiser step (the step is skipped: parameters and
 *           optimiser state keep their values, as GradScaler.step does)
 *   eq_scaler_update(s, n > 0)                 the scale for the next step
 *
 * The update is torch's _amp_update_scale_ (aten/src/ATen/native/cuda/
 * AmpKernels.cu), bit for bit: found_inf: scale = (float)(scale *
 * backoff_factor) in double, tracker = 0; otherwise tracker + 1, and when
 * that reaches growth_interval: new = (float)(scale * growth_factor), kept
 * only if finite, tracker = 0.  The unscale multiplies each gradient by
 * inv_scale = (float)(1 / (double)scale) in float, as
 * _amp_foreach_non_finite_check_and_unscale_ does (a power-of-two scale
 * unscales exactly).  A static scale (dynamic false) never changes; a step
 * with a non-finite gradient is still skipped.
 *
 * Thread safety: a scaler is touched by one thread.
 */
#ifndef EQ_TRAINER_SCALER_H
#define EQ_TRAINER_SCALER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "trainer/backend.h"
#include "trainer/model.h"

/* GradScaler's defaults. */
#define EQ_SCALER_INIT 65536.0
#define EQ_SCALER_GROWTH_FACTOR 2.0
#define EQ_SCALER_BACKOFF_FACTOR 0.5
#define EQ_SCALER_GROWTH_INTERVAL 2000

typedef struct eq_scaler {
    float scale;             /* the current loss scale */
    int64_t growth_tracker;  /* successful steps since the last change (dynamic) */
    bool dynamic;            /* false: a static scale */
    double growth_factor, backoff_factor;
    int64_t growth_interval;
    /* counts since eq_scaler_init */
    uint64_t updates, skipped, grown, backoffs;
} eq_scaler;

/* Check the parameters (init finite and >= FLT_MIN as a float, so that
 * 1/scale is finite, growth_factor > 1 and finite,
 * backoff_factor in (0, 1), growth_interval >= 1; a static scaler checks
 * init only) and start at scale (float)init, tracker 0, counts 0.
 * EQ_ERR_INVALID names the parameter and its value. */
eq_status eq_scaler_init(eq_scaler *s, bool dynamic, double init, double growth_factor,
                         double backoff_factor, int64_t growth_interval, eq_err *err);

/* (float)(1.0 / (double)s->scale): what the gradients are multiplied by. */
float eq_scaler_inv_scale(const eq_scaler *s);

/* After a step whose gradients were (found_inf) or were not all finite:
 * counts, and for a dynamic scaler the update rule above. */
void eq_scaler_update(eq_scaler *s, bool found_inf);

/* Non-finite values over the gradient of every model tensor that has one:
 * device gradients through eq_backend_nonfinite, quantizer parameters'
 * (host memory on a device-memory backend, quant/) on the host.  Waits for
 * the work before it. */
eq_status eq_scaler_nonfinite(eq_model *m, int64_t *count, eq_err *err);

/* Multiply every gradient of m in place by eq_scaler_inv_scale(s).  Host
 * gradients (host-memory backends, quantizer parameters) in a host loop,
 * g * inv in float (-0 stays -0); device gradients with the backend's
 * scalar_affine_fwd and the device scalar *dev_inv (one float, allocated on
 * m's backend the first time and reused; the caller releases it with
 * eq_backend_release).  A scale of 1 changes nothing and does nothing. */
eq_status eq_scaler_unscale(const eq_scaler *s, eq_model *m, float **dev_inv, eq_err *err);

#endif
