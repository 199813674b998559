/*
 * trainer/model.h -- a network built from the [model], [quant.wt],
 * [quant.fm] and [quant.ot] config sections, trained with explicit forward and backward
 * on a backend (trainer/backend.h).  This is the trainer daemon's view of a
 * model; doc/models.md lists the architectures and keywords.
 *
 * A training step (all pointers are device pointers of the model's
 * backend; the CPU backend's device memory is host memory):
 *     eq_model_forward(m, x, 1)            x: NHWC float [N][H][W][C]
 *     eq_model_loss(m, labels, ..., &loss) softmax cross-entropy, seeds d/dlogits
 *       (or write your own d/dlogits and pass it to eq_model_backward)
 *     eq_model_backward(m, NULL)           every trainable tensor's grad
 *     optimiser over eq_model_tensor_at(m, i) with grad != NULL (trainer/optim.h)
 * Nothing in a step allocates after the first one.
 *
 * Tensors.  Every parameter and buffer has a name and a layout exactly as
 * PyTorch would name it in the state dict of the same network (torchvision's
 * names for torch-resnetNN: "conv1.weight" OIHW, "layer1.0.bn1.running_mean",
 * "fc.weight" [out][in], "bn1.num_batches_tracked" I64 [] ...); for
 * torch-resnetNN also in torchvision's state-dict order (resnetNN registers a
 * block's shortcut before its main path).  Quantizer state follows the
 * original's module names:
 * "<conv>.quant_weight.<name>", "<conv>.quant_activation.<name>" and
 * "<conv>.quant_output.<name>" (e.g.
 * "layer1.0.conv1.quant_activation.clip_val").  Parameters, gradients and
 * the model's buffers each live in one block (llm.c style); quantizer state
 * is owned by its quantizer (quant/quant.h).  Gradients are overwritten by
 * every backward, never accumulated.
 *
 * Threads: a model is used by one thread at a time.  Errors: every function
 * returns an eq_status and fills `err` (may be NULL) naming the layer.
 */
#ifndef EQ_TRAINER_MODEL_H
#define EQ_TRAINER_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/status.h"
#include "core/tensor.h"
#include "quant/quant.h"
#include "trainer/backend.h"

/* ---- configuration ------------------------------------------------------- */

#define EQ_MODEL_MAX_KEYWORDS 48

/* [model] */
typedef struct eq_model_cfg {
    char arch[32];   /* torch-resnet18/34/50, resnet18/34/50, resnet20/32/44/56 */
    char keyword[EQ_MODEL_MAX_KEYWORDS][32]; /* ORIGINAL.md §3 structure keywords */
    size_t nkeyword;
    int64_t num_classes;
    int64_t in_channels;       /* 3 (RGB), 1 (Fashion-MNIST) */
    double width_alpha;        /* first stage width = int(64 * width_alpha) (16 for resnet20..) */
    bool quant_first_last;     /* also quantize the stem conv and the classifier */
    bool padding_after_quant;  /* zero-pad after the fm quantizer (binary configs) */
    int64_t seed;              /* initialisation seed (core/rng.h) */
    int64_t stem_kernel;       /* TResNet stems: 1x1 or 3x3 conv after space-to-depth */
    int64_t base;              /* Group-Net branches per BasicBlock (1: none) */
    char order[16];            /* ReShapeResolution shrink: c, b, a characters */
    double dropout;            /* dropout probability on the classifier input (0: none) */
    /* eq_precision of activations and activation gradients (mixed
     * precision; backend.h, doc/precision.md).  Not a [model] key:
     * eq-trainer sets it from [train] precision.  EQ_PREC_FP32 (0) by
     * default: eq_model_config_sections sets it so (set it after that);
     * eq_model_new refuses a value that is no eq_precision. */
    int precision;
} eq_model_cfg;

/* [quant.wt] / [quant.fm] / [quant.ot]: one quantizer per quantized
 * conv/linear (ot: per quantized conv; linear layers have none, as in the
 * original); the keys are quant/quant.h's option names (doc/quantizers.md). */
typedef struct eq_model_quant_cfg {
    bool enable;
    char method[16];
    double bit;
    int64_t level;
    int half_range;            /* 0 "default" (fm: on, wt: off), 1 "true", 2 "false" */
    double boundary;
    double scale;
    int64_t quant_group;
    int adaptive, grad_type, grad_scale, custom; /* indices into quant's choice names */
    bool gamma, custom_update, closed_form, progressive, independent_norm;
    int64_t stable;
    double correlate;
    bool exact_grad_scale, warmup_train_only;
    double norm_eps;
    int lq_codes; /* index into {floor, zero} */
} eq_model_quant_cfg;

/* Fill secs[0..3] with the [model], [quant.wt], [quant.fm], [quant.ot]
 * sections writing into m, wt, fm, ot (any may be NULL: that section is
 * validated and discarded).  The tables are static; use the result with
 * core/config.h's eq_config_load / eq_config_doc. */
#define EQ_MODEL_CONFIG_NSECTIONS_OT 4
void eq_model_config_sections_ot(eq_model_cfg *m, eq_model_quant_cfg *wt, eq_model_quant_cfg *fm,
                                 eq_model_quant_cfg *ot,
                                 eq_config_section secs[EQ_MODEL_CONFIG_NSECTIONS_OT]);
/* The same without [quant.ot] (secs[0..2]), for callers whose configs have
 * no output quantizer. */
#define EQ_MODEL_CONFIG_NSECTIONS 3
void eq_model_config_sections(eq_model_cfg *m, eq_model_quant_cfg *wt, eq_model_quant_cfg *fm,
                              eq_config_section secs[EQ_MODEL_CONFIG_NSECTIONS]);

/* ---- the model ------------------------------------------------------------ */

typedef struct eq_model eq_model;

/* Build the network for inputs of [batch][h][w][cfg->in_channels] on `be`
 * (borrowed; must outlive the model), initialise its parameters from
 * cfg->seed as the original does (doc/models.md).  wt/fm/ot may be NULL
 * (full precision); a section with enable = false is the same.  Every
 * quantized conv gets the weight, input and output quantizers that are
 * enabled (the original's custom_conv: y = Qo(conv(Qf(x), Qw(W)))); the
 * full-precision layers (stem, classifier unless quant_first_last,
 * real_skip shortcuts, real_dp/real_pt) get none.  Errors: EQ_ERR_INVALID
 * naming the unknown arch or keyword, a keyword combination not
 * implemented, a quantizer option quant/ refuses (naming the section), or a
 * layer whose shapes do not fit (input too small); EQ_ERR_NOMEM.  Caller
 * owns the result. */
eq_model *eq_model_new_ot(eq_backend *be, const eq_model_cfg *cfg, const eq_model_quant_cfg *wt,
                          const eq_model_quant_cfg *fm, const eq_model_quant_cfg *ot, int64_t batch,
                          int64_t h, int64_t w, eq_err *err);
/* eq_model_new_ot without an output quantizer. */
eq_model *eq_model_new(eq_backend *be, const eq_model_cfg *cfg, const eq_model_quant_cfg *wt,
                       const eq_model_quant_cfg *fm, int64_t batch, int64_t h, int64_t w,
                       eq_err *err);
void eq_model_destroy(eq_model **m_p);

/* Forward on x (device, NHWC [batch][h][w][c] as given to eq_model_new; read
 * again by the backward, so keep it unchanged until then).  train: BN uses
 * and updates batch statistics, quantizers run in training mode. */
eq_status eq_model_forward(eq_model *m, const float *x, bool train, eq_err *err);
/* Key of the next training forward's random masks (dropout): a mask is a
 * pure function of (cfg->seed, key, layer, element).  Every successful
 * training forward adds 1 to it; to resume a run bit-exactly, set it from
 * the run's position before each training forward (eq-trainer uses epoch,
 * step and rank).  0 after eq_model_new. */
void eq_model_set_noise_key(eq_model *m, uint64_t key);
/* The last forward's logits (device, [batch][classes]). */
const float *eq_model_logits(const eq_model *m, int64_t *batch, int64_t *classes);
/* Mean softmax cross-entropy of the logits (backend xent: labels device
 * int32 [batch]; labels_b/lambda NULL or a mixup pair; label smoothing):
 * writes the host loss and keeps d loss/d logits for eq_model_backward.
 * The host loss also includes the quantization losses a policy enabled
 * (quant_loss_enable: the sum of every quantizer's eq_quant_aux_loss after
 * a training forward, ORIGINAL.md §2.15); their gradients enter in the
 * backward through the quantizers, not through d/dlogits. */
eq_status eq_model_loss(eq_model *m, const int32_t *labels_a, const int32_t *labels_b,
                        const float *lambda, float smoothing, float *loss, eq_err *err);
/* eq_model_loss without the host wait: the loss is downloaded
 * asynchronously (eq_backend_download_async), so the caller can issue the
 * backward and the optimiser first; eq_model_loss_fetch waits for the loss
 * only (not for what was issued after it) and returns the same float
 * eq_model_loss would have.  One loss at a time: a second
 * eq_model_loss_async before the fetch is EQ_ERR_INVALID, as is a fetch
 * with none pending. */
eq_status eq_model_loss_async(eq_model *m, const int32_t *labels_a, const int32_t *labels_b,
                              const float *lambda, float smoothing, eq_err *err);
eq_status eq_model_loss_fetch(eq_model *m, float *loss, eq_err *err);
bool eq_model_loss_pending(const eq_model *m);
/* Loss scaling (mixed precision, PyTorch's GradScaler): later
 * eq_model_loss calls keep scale * d loss/d logits for the backward, so
 * every gradient comes out multiplied by scale (the host loss is not
 * scaled).  scale: finite, > 0; 1 after eq_model_new.  The quantization
 * losses a policy enables (quant_loss_enable) add their gradients inside
 * the quantizers' backward: each quantizer gets the scale too
 * (eq_quant_set_loss_scale), so the total loss's gradient is scaled, as
 * the original's apex scales task + quantization loss. */
eq_status eq_model_set_loss_scale(eq_model *m, float scale, eq_err *err);
float eq_model_loss_scale(const eq_model *m);
/* *count = the inf/NaN values among every gradient of m (the loss
 * scaler's found-inf test): one backend nonfinite over the layer graph's
 * gradient block (one host wait) plus the quantizers' host gradients. */
eq_status eq_model_grads_nonfinite(eq_model *m, int64_t *count, eq_err *err);
/* Backward of the last training forward from dlogits (device
 * [batch][classes]; NULL: the gradient eq_model_loss kept).  Writes the
 * grad of every trainable tensor. */
eq_status eq_model_backward(eq_model *m, const float *dlogits, eq_err *err);

/* Gradient-ready hook (data-parallel training overlaps the all-reduce
 * with the backward, as PyTorch DDP does): during every later
 * eq_model_backward, fn(arg, i) runs once for each tensor i
 * (eq_model_tensor_at) with a grad, as soon as that gradient is final: a
 * layer's tensors right after that layer's backward, the layers in reverse
 * order; tensors no layer reported (a layer that does not reach the
 * output) at the end of a successful backward.  The order depends on the
 * network alone (eq_model_grad_order's, those late tensors moved to the
 * end), so it is the same on every rank.  fn runs on the
 * backward's thread, between two layers; on a backend with a compute
 * stream (CUDA) "final" means queued on that stream.  On a backend that
 * defers quantizer parameter gradients (eq_backend_quant_grads_deferred:
 * CUDA) the quantizers' tensors are reported with the late ones, after
 * the backward has waited for them (eq_model_grad_order follows).  After
 * a failed backward some tensors were not reported.  fn NULL: no hook. */
typedef void eq_model_grad_fn(void *arg, size_t tensor);
void eq_model_set_grad_hook(eq_model *m, eq_model_grad_fn *fn, void *arg);
/* The order of the hook's reports: the indices of the tensors with a grad,
 * first reported first, into order[0 .. min(n, cap)) (order may be NULL).
 * Returns n, the number of such tensors. */
size_t eq_model_grad_order(const eq_model *m, size_t *order, size_t cap);

/* ---- tensors --------------------------------------------------------------- */

typedef enum eq_model_tensor_kind {
    EQ_MT_PARAM = 0, /* trainable, has grad */
    EQ_MT_BUFFER,    /* running statistics, num_batches_tracked, quantizer buffers */
} eq_model_tensor_kind;

typedef struct eq_model_tensor {
    const char *name;      /* PyTorch state-dict name; owned by the model */
    eq_model_tensor_kind kind;
    eq_dtype dtype;        /* F32, or I64 for num_batches_tracked */
    int ndim;              /* 0 for scalars */
    int64_t shape[4];
    size_t numel;
    void *data;            /* device (F32) / host (I64, and quantizer state) */
    float *grad;           /* device; NULL unless EQ_MT_PARAM */
    bool no_decay;         /* a BN/PReLU/bias/quantizer parameter ("decay_small") */
    bool quant;            /* quantizer state (checkpoints put it under "quant.") */
} eq_model_tensor;

size_t eq_model_tensor_count(const eq_model *m);
/* i-th tensor (order as above); NULL when out of range.  Valid until the
 * model is destroyed. */
const eq_model_tensor *eq_model_tensor_at(const eq_model *m, size_t i);
const eq_model_tensor *eq_model_tensor_find(const eq_model *m, const char *name);
eq_backend *eq_model_backend(const eq_model *m);
/* ---- quantizers ------------------------------------------------------------ */

/* The quantizer of layer `layer` (its PyTorch module name, e.g.
 * "layer1.0.conv1", as in the tensor names "<layer>.quant_weight.*") for
 * `tag` (EQ_QTAG_WT: the weight, FM: the input, OT: a conv's output), or NULL
 * if that layer has no quantizer for that tag (or m/layer is NULL).  The
 * model keeps ownership; valid while the model lives. */
struct eq_quant *eq_model_quant(eq_model *m, const char *layer, eq_quant_tag tag);
/* The output of that quantizer in the model's most recent forward (device
 * memory as eq_backend_download reads it; *n elements: WT the quantized
 * weight in its tensor's layout, FM the quantized input NHWC -- zero-padded
 * first when the conv pads before quantizing --, OT the conv's quantized
 * output NHWC), or NULL with *n = 0 if there was no forward yet, the last
 * one failed, or there is no such quantizer.  Valid until the next forward
 * (a backward leaves it unchanged).  n may be NULL. */
const float *eq_model_quant_output(const eq_model *m, const char *layer, eq_quant_tag tag,
                                   int64_t *n);

/* A one-line summary: "torch-resnet18: 11689512 parameters, 62 tensors, ...". */
const char *eq_model_summary(const eq_model *m);
/* The model's layer graph (trainer/layers.h; for tests: node buffers,
 * precision).  Owned by the model. */
struct eq_layers;
struct eq_layers *eq_model_layers(const eq_model *m);

#endif
