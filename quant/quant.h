/*
 * quant/quant.h -- the quantizers of the original (aim-uofa/model-quantization),
 * forward and backward on the CPU in fp32.
 *
 * A quantizer is an eq_quant object built from an option record
 * (eq_quant_opts, the keys of the `[quant.wt]` / `[quant.fm]` / `[quant.ot]`
 * config sections) and the descriptor of the tensor it quantizes (its layout
 * tells which axis is the channel axis; nothing assumes NCHW or NHWC).  It
 * owns its state -- learnable parameters (`clip_val`, `alpha0`.., `gamma`,
 * `step_size`) with their gradients, and buffers (`iteration`, `level_num`,
 * `basis`, `auxil`, ...) -- under the original's parameter/buffer names, so
 * checkpoints can store them (eq_quant_tensor_at / eq_quant_find).
 *
 * Methods are registered by name in a table (eq_quant_method_names):
 *   dorefa     DoReFa activation (clip + uniform levels) / weight (tanh, global max)
 *   bin        DoReFa binary weight E*sgn(w)
 *   pact       PACT activation, learnable alpha (`clip_val`)
 *   lsq        the original's "LSQ": learnable clip value, half/full range
 *   lsq-step   LSQ as its paper defines it: learnable step size
 *   nonuniform FATNN-style non-uniform quantizer (integer outputs)
 *   xnor       XNOR-Net / XNOR-Net++ / Bi-Real binarizers
 *   lqnet      LQ-Net (learned basis, quantization-error minimisation)
 * doc/quantizers.md gives every method's forward/backward, options and the
 * original's quirks with the options that correct them; ../shared/ORIGINAL.md
 * §1-2 is the specification.
 *
 * Calling sequence per step: eq_quant_forward(q, xd, x, y, train), then
 * (training) eq_quant_backward(q, x, gy, gx) with the same x.  Backward writes
 * (does not accumulate) gx and the gradient of every learnable parameter.
 * Rounding is half-to-even (rintf under the default rounding mode).
 *
 * Thread safety: an eq_quant is used by one thread at a time; distinct
 * objects are independent.  Nothing here keeps global mutable state.
 */
#ifndef EQ_QUANT_H
#define EQ_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "core/tensor.h"

typedef enum eq_quant_tag {
    EQ_QTAG_WT = 0, /* conv/linear weight */
    EQ_QTAG_FM,     /* input activation ("feature map") */
    EQ_QTAG_OT,     /* conv output */
    EQ_QTAG_COUNT
} eq_quant_tag;

typedef enum eq_quant_adaptive {
    EQ_QADAPT_NONE = 0,
    EQ_QADAPT_VAR,      /* LQ-Net: divide by std (+1e-5) */
    EQ_QADAPT_MEAN,     /* LQ-Net: fm divides by the per-sample mean, wt subtracts the mean */
    EQ_QADAPT_MEAN_VAR, /* LQ-Net weights: (w - mean)/(std + 1e-5) */
    EQ_QADAPT_VAR_MEAN, /* dorefa family / xnor weights: (w - mean)/(std + norm_eps) */
    EQ_QADAPT_MIN,      /* LQ-Net fm: subtract the global minimum */
    EQ_QADAPT_COUNT
} eq_quant_adaptive;

typedef enum eq_quant_grad_type {
    EQ_QGRAD_NONE = 0,
    EQ_QGRAD_STE,
    EQ_QGRAD_TRIANGLE,
    EQ_QGRAD_STE_SCALE,
    EQ_QGRAD_COUNT
} eq_quant_grad_type;

typedef enum eq_quant_grad_scale {
    EQ_QGS_NONE = 0,
    EQ_QGS_FAN_SCALE,     /* sqrt(fan) * scale */
    EQ_QGS_SCALE_FAN,     /* scale / sqrt(fan) */
    EQ_QGS_ELEMENT_SCALE, /* sqrt(nElements) * scale */
    EQ_QGS_SCALE_ELEMENT, /* scale / sqrt(nElements) */
    EQ_QGS_COUNT
} eq_quant_grad_scale;

typedef enum eq_quant_custom {
    EQ_QCUSTOM_NONE = 0,
    EQ_QCUSTOM_CHANNEL,    /* XNOR fm: E[b,h,w] = mean_c |x| */
    EQ_QCUSTOM_RESOLUTION, /* XNOR fm: E[b,c] = mean_hw |x| */
    EQ_QCUSTOM_COUNT
} eq_quant_custom;

/* Options of one quantizer (one config section).  Defaults are the
 * original's (ORIGINAL.md §1.3) and depend on the tag: use
 * eq_quant_opts_init().  Keys accepted by eq_quant_opts_set() are the field
 * names below. */
typedef struct eq_quant_opts {
    eq_quant_tag tag;
    char method[16];          /* "dorefa" (default), "bin", "pact", "lsq", ... */
    double bit;               /* 32; may be fractional: L = int(2^bit) */
    int level;                /* explicit level count; <= 0: from bit */
    int half_range;           /* fm: 1, wt/ot: 0 */
    double boundary;          /* initial/fixed clip value, 1.0 */
    double scale;             /* multi-use multiplier, 0.5 */
    int quant_group;          /* 0: default grouping (see doc); -q: P/q; q: q */
    eq_quant_adaptive adaptive;
    eq_quant_grad_type grad_type;
    eq_quant_grad_scale grad_scale;
    eq_quant_custom custom;
    int gamma;                /* learnable output scale (wt/ot dorefa family, xnor wt) */
    int custom_update;        /* LQ-Net / closed form: cumulative mean instead of EMA */
    int closed_form;          /* nonuniform fm: least-squares output scale */
    long stable;              /* warm-up iterations returning x (and initialising clips) */
    double correlate;         /* > 0: multiplies max|x| in the warm-up clip init */
    int progressive;          /* a level change rescales clip_val (policy driven) */
    int independent_norm;     /* var-mean statistics per layer even if grouped */
    long batch_size;          /* nElements of fm/ot for element-* grad scales (1) */
    long input_size;          /* ditto: x (input_size)^2 when > 0 (0) */
    /* corrections of the original's quirks (defaults reproduce the original) */
    int exact_grad_scale;     /* 0: a factor f with int(f) == 1 is skipped (original) */
    double norm_eps;          /* var-mean epsilon, 0 in the original */
    int warmup_train_only;    /* 1: eval forwards never count, warm up or return x */
    int lq_zero_codes;        /* `lq_codes`: LQ-Net's basis update sees code 0 for every element,
                               * as the original does under torch >= 1.5 (0: floor-division
                               * bits, ORIGINAL.md §2.11.4) */
} eq_quant_opts;

/* Fill `o` with the original's defaults for `tag`. */
void eq_quant_opts_init(eq_quant_opts *o, eq_quant_tag tag);
/* Set one option from its config key and value text ("bit", "2").  Errors
 * (EQ_ERR_INVALID) name the key: unknown key, value not a number / not one of
 * the choices (listed in the message), out of range.  `o` is unchanged on
 * error.  Booleans accept true/false, 1/0, yes/no, on/off. */
eq_status eq_quant_opts_set(eq_quant_opts *o, const char *key, const char *value, eq_err *err);
/* Parse "wt"/"fm"/"ot"; returns 0 or -1. */
int eq_quant_tag_parse(const char *s, eq_quant_tag *out);
const char *eq_quant_tag_name(eq_quant_tag tag);
/* NULL-terminated list of registered method names. */
const char *const *eq_quant_method_names(void);

/* ---- quantizer objects --------------------------------------------------- */

typedef struct eq_quant eq_quant;

/* A state tensor, owned by the quantizer.  `grad` is non-NULL exactly for
 * learnable parameters (same shape as data).  Shapes are PyTorch's. */
typedef struct eq_quant_tensor {
    char name[24];
    int ndim;
    int64_t shape[4];
    int64_t numel;
    float *data;
    float *grad;
} eq_quant_tensor;

/* Build a quantizer for tensors like `xd`.  Layouts: wt: OIHW, OHWI or OI;
 * fm/ot: NCHW, NHWC or NC.  An OHWI weight gives the results of the same
 * weight in OIHW, permuted; its quant groups must be whole output channels
 * (a quant_group splitting a channel is EQ_ERR_INVALID).  For fm/ot only the channel count of xd is fixed (batch
 * and spatial size may change per call); for wt the whole shape is.  Errors:
 * EQ_ERR_INVALID for options the method does not support (naming the
 * option), EQ_ERR_NOTFOUND for an unknown method, EQ_ERR_NOMEM.  Caller owns
 * the result. */
eq_quant *eq_quant_new(const eq_quant_opts *o, const eq_tensor_desc *xd, eq_err *err);
void eq_quant_destroy(eq_quant **q_p);

/* Forward: y = Q(x) for a contiguous F32 tensor described by xd (same layout
 * and channels as at construction).  `train` selects training mode (LQ-Net
 * basis update, closed-form scale update, counters).  x and y may not alias. */
eq_status eq_quant_forward(eq_quant *q, const eq_tensor_desc *xd, const float *x, float *y,
                           int train, eq_err *err);
/* Backward of the last forward: gy = dL/dy, writes gx = dL/dx and the
 * gradients of the parameters.  x must be the x of that forward.  gy and gx
 * may alias. */
eq_status eq_quant_backward(eq_quant *q, const float *x, const float *gy, float *gx, eq_err *err);
/* 1 when the next forward of q, as q stands (method, options, parameters,
 * run-time options), treats zeros as nothing: Q(0) = 0 exactly, and an
 * element x = 0 adds exactly 0 to every parameter gradient of the backward
 * and changes no statistic or state the forward computes.  Then quantizing
 * a zero-padded tensor gives the zero padding of the quantized unpadded
 * tensor, with the same parameter gradients up to the order of summing
 * exact zeros, so a caller may quantize the unpadded tensor and pad after
 * (trainer/layers.c: a conv's own padding).  0 when unsure: every method
 * but half-range lsq (grad_type none) on activations, and any quantizer
 * with a quantization loss or gamma. */
int eq_quant_zero_pad_exact(const eq_quant *q);

/* State tensors (parameters and buffers), in a fixed order. */
size_t eq_quant_tensor_count(const eq_quant *q);
eq_quant_tensor *eq_quant_tensor_at(eq_quant *q, size_t i);
eq_quant_tensor *eq_quant_find(eq_quant *q, const char *name); /* NULL if absent */

/* Check state written from outside (a checkpoint, the apply tool's IN):
 * level_num an integer >= 2 (and, for nonuniform, lqnet, xnor and bin, the
 * count the quantizer was built for), iteration a count, every value
 * finite.  EQ_ERR_INVALID naming the tensor. */
eq_status eq_quant_check_state(const eq_quant *q, eq_err *err);
/* Number of levels in use (the `level_num` buffer). */
int eq_quant_levels(const eq_quant *q);
/* Policy-driven level change (ORIGINAL.md §2.8): v > 0 sets level_num := v,
 * v < 0 means current + v.  With the `progressive` option, clip_val is
 * multiplied by (v - 1)/(L_old - 1).  Methods whose structure depends on the
 * level count (nonuniform, lqnet, xnor, bin) refuse (EQ_ERR_UNSUPPORTED). */
eq_status eq_quant_set_levels(eq_quant *q, int v, eq_err *err);
const eq_quant_opts *eq_quant_options(const eq_quant *q);
/* ---- run-time options (the original's policy-file attributes) ----------- */

/* Change a run-time attribute of a live quantizer, as a policy file does
 * (ORIGINAL.md §5.5: the value is cast to the attribute's type).  Keys:
 *   enable              bool: false makes forward copy x to y and backward
 *                       pass gy to gx (parameter gradients 0); no state
 *                       (counter, warm-up, LQ-Net basis) changes
 *   stable              integer >= 0: the warm-up length (§2.13): a forward
 *                       passes x through while `iteration` <= stable, so a
 *                       warm-up starts mid-training only if stable is set
 *                       above the current iteration
 *   adaptive_restore    bool: var-mean weights (dorefa family) return
 *                       y*(std+eps) + mean instead of the normalised y
 *   quant_loss_enable   bool  \  training forwards also compute
 *   quant_loss_function L2, L1, QDL or None (quotes allowed)  > alpha*loss(x, y)
 *   quant_loss_alpha    float /  (eq_quant_aux_loss) and backward adds its
 *                       gradient (ORIGINAL.md §2.15)
 * Booleans accept true/false, True/False, 1/0, yes/no, on/off.  Errors
 * (EQ_ERR_INVALID) name the key and the value; `q` is unchanged on error.
 * Takes effect from the next forward (do not call between a forward and
 * its backward).  doc/quantizers.md "Run-time options" has the details. */
eq_status eq_quant_set_option(eq_quant *q, const char *key, const char *value, eq_err *err);
/* 1 when `key` is one of the run-time keys above. */
int eq_quant_is_runtime_option(const char *key);
/* The `enable` attribute (true unless a policy disabled the quantizer). */
bool eq_quant_enabled(const eq_quant *q);
/* alpha * quantization loss of the last forward: 0 unless quant_loss_enable
 * is set with a function other than None and that forward was a training
 * forward past the warm-up with the quantizer enabled.  (The original adds
 * it to the task loss through a global buffer.) */
double eq_quant_aux_loss(const eq_quant *q);
/* Mixed-precision loss scaling: the gradient reaching the quantizer's
 * backward is the loss's times `scale` (dynamic or static loss scaling,
 * apex/GradScaler), so the quantization loss's own gradient, added inside
 * the backward, is multiplied by `scale` too (the original scales the sum
 * of task and quantization loss before its backward).  eq_quant_aux_loss
 * stays unscaled.  1 by default; scale must be finite and >= FLT_MIN
 * (EQ_ERR_INVALID naming the quantizer).  Takes effect from the next
 * backward. */
eq_status eq_quant_set_loss_scale(eq_quant *q, float scale, eq_err *err);

/* Number of parameter groups (clip values / scales) in use. */
int64_t eq_quant_groups(const eq_quant *q);
/* Split large tensors across `pool` (not owned; NULL: calling thread only).
 * Results do not depend on the pool size.  Methods dorefa, pact, lsq,
 * lsq-step, bin, xnor, nonuniform and lqnet's forward run in parallel;
 * LQ-Net's normalisation and basis solve, var-mean and gamma bookkeeping
 * run on the calling thread. */
struct eq_pool;
void eq_quant_set_pool(eq_quant *q, struct eq_pool *pool);

/* ---- inspection: one step over safetensors files ------------------------- */

/* One quantizer step from files (the `eq-quant apply` / `eqctl quant apply`
 * tool; ../shared/testdata/README.md "quant/" describes the format).
 * IN holds `x` (weights OIHW or OI, activations NCHW or NC), optionally
 * `grad` (dL/dy, same shape) and initial state under the quantizer's tensor
 * names (`clip_val`, `alpha0`, `gamma`, `basis`, `iteration`, ...).  `kv` are
 * "KEY=VALUE" option strings.  OUT receives `y`, and with `grad` also
 * `grad_x` and `grad.<param>` per learnable parameter, plus `state.<name>`
 * for every state tensor after the step.  `train` selects training mode;
 * `nhwc` runs an NCHW activation through the NHWC code path and an OIHW
 * weight as OHWI (transposed in and out, for layout checks).  Run-time keys
 * (eq_quant_is_runtime_option) are applied with eq_quant_set_option after
 * construction; OUT then also holds `aux_loss` when it is not 0.  Errors
 * name the file, tensor or option. */
eq_status eq_quant_apply_file(eq_quant_tag tag, const char *in_path, const char *out_path, int train,
                              int nhwc, const char *const *kv, size_t nkv, eq_err *err);
/* Command line: argv[0] is the subcommand ("apply", "methods", "help").
 * Prints to stdout/stderr; returns a process exit status (0 ok, 1 error,
 * 2 usage). */
int eq_quant_cli(int argc, char **argv);

#endif
