/*
 * trainer/backend.h -- the compute backend interface of eq-trainer.
 *
 * The trainer runs a static graph of layers with explicit forward and
 * backward functions; every number it computes goes through a backend.  A
 * backend is an object { iface, context } (ggml style): `iface` is a table of
 * function pointers, `context` the backend's private state.  The CPU backend
 * (trainer/cpu/, C + OpenBLAS) is the reference implementation; the CUDA
 * backend implements the same table and is tested against it.
 *
 * Callers use the eq_backend_* functions below, never `iface` directly: they
 * validate arguments once for every backend (shapes, NULL pointers, missing
 * optional members) and give errors that name the op and the field, so a
 * backend's members may assume valid arguments.
 *
 * Memory.  Device memory comes from eq_backend_alloc (host memory on the CPU
 * backend, GPU memory on CUDA) and moves with upload/download/copy.  The
 * `float *` / `int32_t *` arguments of every op are DEVICE pointers from
 * alloc (or offsets into such a block).  Ops that need scratch memory take
 * it from the backend's workspace, which grows to the high-water mark of
 * the first step (eq_backend_workspace_reserve preallocates it), so a
 * steady-state training step allocates nothing.
 *
 * Layouts.  Activations are NHWC (eq's native layout; DESIGN.md "Tensors"),
 * 2-D activations NC.  Weights are kept in PyTorch's checkpoint layouts:
 * conv weights OIHW = [K][C/groups][R][S], linear weights OI.  A backend may
 * repack them internally (the CPU backend repacks conv weights to
 * [K][R][S][C/groups] into its workspace on every call: O(weights), small
 * next to the O(N*P*Q*K*R*S*C/groups) GEMM).  Letters: N batch, H/W input
 * height/width, C input channels, K output channels, R/S kernel height/width,
 * P/Q output height/width, G groups.  Data type: fp32 everywhere (int32
 * labels and indices) but the uint8 images stage_images reads.
 *
 * Streams and synchronisation.  A backend executes ops on one compute stream
 * in issue order; an op may return before its results exist (CUDA).  The
 * host sees results only after eq_backend_download (which waits for the
 * stream) or eq_backend_synchronize.  Events mark points in the stream:
 * eq_backend_event_record after the last op that writes a gradient bucket,
 * eq_backend_event_wait to order later work after it, and
 * eq_backend_event_synchronize to block the host.  download_async (a few
 * bytes, e.g. the loss) queues a download and records an event behind it,
 * so the host can issue more work and later wait for that point only
 * (event_synchronize), not for everything issued since.  The CPU backend runs
 * every op synchronously, so for it events are complete as soon as they are
 * recorded and synchronize returns at once.
 *
 * Fused ops.  bn_relu_* (batch norm, an optional residual add, ReLU: the
 * tails of ResNet blocks) are optional members with a generic default: a
 * backend that leaves them NULL gets the composition of its separate ops
 * (trainer/backend.c), so they cost a new backend nothing.  The separate
 * ops stay the reference that the fused ones are tested against.
 *
 * Quantizers.  quant_forward / quant_backward run a quant/ quantizer
 * (struct eq_quant: options, parameters, gradients and counters stay in
 * that host object, where checkpoints and the policy find them) on device
 * tensors, with the results of eq_quant_forward / eq_quant_backward on
 * host copies.  They are optional members with a generic default that
 * calls quant/ on the pointers themselves: right for a backend whose
 * device memory is host memory (host_memory set: the CPU backend, which
 * also implements them to run the quantizer on its threads), refused
 * (EQ_ERR_UNSUPPORTED naming the backend) for any other.  A backend may
 * keep state per quantizer (the CUDA backend: device buffers, one
 * eq_cuda_quant per eq_quant); quant_release drops it, and the caller
 * calls eq_backend_quant_release before eq_quant_destroy (the backend
 * frees what is left when it is destroyed itself).
 *
 * Input pipeline.  The trainer overlaps the next batch's data wait and
 * host-to-device copy with the current step: the raw uint8 images and
 * the labels go to the device with upload_async (on CUDA: through pinned
 * staging buffers on a copy stream) into one of two buffers, and
 * upload_wait + stage_images turn them into the network's fp32 input on
 * the device at the next step's start.  upload_async's copy is ordered
 * after every op issued on the compute stream before it, so a buffer
 * whose readers were all issued earlier may be refilled; a buffer an op
 * issued later still reads may not (hence two: trainer/train.c, "the
 * input pipeline").  The defaults make this the plain synchronous path on
 * any backend (upload, nothing to wait for; stage_images as a host loop
 * where memory is host memory).
 *
 * Room for what comes next (deliberately not in the table yet, since an
 * unimplemented member would be a stub):
 *  - fused conv epilogues: conv2d_fwd_fused(desc, x, w, epilogue, y, aux) where
 *    `epilogue` lists BN (eval or frozen affine) + activation + an output
 *    quantizer (quant/'s parameter struct and group descriptor) applied in
 *    the GEMM's store; the backward twin takes the saved aux (activation
 *    mask, quantizer clip flags).  The unfused ops below stay the reference
 *    that the fused ones are tested against.
 *  - asynchronous bucketed collectives: allreduce_start(bucket, event) runs
 *    on the backend's own communication stream after waiting on the event
 *    recorded behind the bucket's last gradient, and allreduce_wait(bucket)
 *    orders the optimiser after it (NCCL on CUDA, a ring over ZeroMQ on the
 *    CPU backend).  The events below are what those calls will take.
 *
 * Thread safety: one backend object is used by one thread at a time; the
 * backend may use threads of its own inside an op.
 */
#ifndef EQ_TRAINER_BACKEND_H
#define EQ_TRAINER_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "core/tensor.h"

struct eq_quant; /* quant/quant.h */

/* ---- precision ---------------------------------------------------------- */

/* Mixed precision (the original's apex AMP, PyTorch autocast): the layer
 * graph keeps fp32 master weights, quantizer math, BN parameters and the
 * loss in fp32, and stores activations and activation gradients as values
 * of a narrower type.  Buffers stay `float *`: a value "in bf16/fp16" is a
 * float exactly representable in that type (eq_backend_round_to makes it
 * one).  bf16: 8-bit mantissa, fp32's range; fp16: 11-bit mantissa,
 * largest finite 65504, subnormals below 2^-14 (needs loss scaling). */
typedef enum eq_precision {
    EQ_PREC_FP32 = 0,
    EQ_PREC_BF16 = 1,
    EQ_PREC_FP16 = 2,
} eq_precision;
/* "fp32", "bf16", "fp16"; "?" for anything else. */
const char *eq_precision_name(eq_precision p);
/* The inverse of eq_precision_name; -1 for an unknown name (NULL too). */
int eq_precision_parse(const char *name);
/* The nearest value of `p` to x, as a float (round to nearest, ties to
 * even, as a C/CUDA cast does): bf16 keeps the top 16 bits; fp16 rounds to
 * 11 significant bits with IEEE half subnormals, values >= 65520 in
 * magnitude become +-inf; NaN stays NaN (quiet), +-inf stays.  fp32: x. */
float eq_precision_round(eq_precision p, float x);

/* ---- op descriptors (plain data, validated by the *_init functions) ----- */

/* 2-D convolution, no bias (every conv of the ResNet family has none).
 * x: [N][H][W][C], w: [K][C/G][R][S] (OIHW), y: [N][P][Q][K], with
 * P = (H + 2*pad_h - dil_h*(R-1) - 1) / stride_h + 1 (same for Q), as
 * torch.nn.Conv2d.  Depthwise: groups == C (K a multiple of C). */
typedef struct eq_conv2d_desc {
    int64_t n, h, w, c; /* input */
    int64_t k;          /* output channels */
    int64_t r, s;       /* kernel height, width */
    int64_t stride_h, stride_w;
    int64_t pad_h, pad_w;
    int64_t dil_h, dil_w;
    int64_t groups;
    int64_t p, q;       /* output height, width: set by eq_conv2d_desc_init */
    /* EQ_PREC_FP32 (0, the default of a zeroed descriptor), or the precision
     * of mixed-precision training: x, w and dy hold values of that type
     * (the caller rounded them), so a backend may compute with operands of
     * that type and fp32 accumulation (tensor cores); the results are
     * rounded by the caller (eq_backend_round_to), not by the op.  The CPU
     * backend computes in fp32 either way. */
    int prec;
} eq_conv2d_desc;

/* Check every field of a filled descriptor (all > 0 except pads >= 0;
 * groups divides c and k; the kernel fits the padded input; all sizes fit in
 * int for BLAS) and compute p and q.  EQ_ERR_INVALID names the bad field. */
eq_status eq_conv2d_desc_init(eq_conv2d_desc *d, eq_err *err);

/* Batch normalisation over the rows of an [M][C] matrix (M = N*H*W for NHWC
 * activations, M = N for NC), as torch.nn.BatchNorm2d/1d: eps (1e-5) and
 * momentum (0.1) as PyTorch; the running variance is updated with the
 * UNBIASED batch variance (M/(M-1) times the biased one), normalisation uses
 * the biased one. */
typedef struct eq_bn_desc {
    int64_t m, c;
    float eps, momentum;
} eq_bn_desc;
/* Requires m >= 1 (train mode needs m >= 2, as PyTorch), c >= 1, eps > 0,
 * momentum in [0, 1]. */
eq_status eq_bn_desc_init(eq_bn_desc *d, int64_t m, int64_t c, float eps, float momentum,
                          eq_err *err);

/* Max/average pooling, NHWC, as torch.nn.MaxPool2d / AvgPool2d (dilation 1).
 * Output size: floor or (ceil_mode) ceil of (H + 2*pad_h - kh)/stride_h + 1,
 * with PyTorch's rule that the last window must start inside the input or
 * left padding.  Average pooling divides by the window clipped to the
 * padded input when count_include_pad (PyTorch's default), else by the
 * window clipped to the input. */
typedef struct eq_pool2d_desc {
    int64_t n, h, w, c;
    int64_t kh, kw, stride_h, stride_w, pad_h, pad_w;
    int ceil_mode, count_include_pad;
    int64_t p, q; /* set by eq_pool2d_desc_init */
} eq_pool2d_desc;
/* pad must be <= kernel/2 (as PyTorch requires). */
eq_status eq_pool2d_desc_init(eq_pool2d_desc *d, eq_err *err);

/* Softmax cross-entropy over [N][K] logits with hard int32 labels, mean over
 * the batch.  With label smoothing eps the target is (1-eps)*onehot + eps/K
 * (torch.nn.CrossEntropyLoss(label_smoothing=eps)).  With mixup pairs
 * (labels_b and lambda given, lambda per sample) the loss is
 *     mean_i lambda_i * CE_i(labels_a) + mean_i (1 - lambda_i) * CE_i(labels_b). */
typedef struct eq_xent_desc {
    int64_t n, k;
    float smoothing; /* in [0, 1] */
} eq_xent_desc;
eq_status eq_xent_desc_init(eq_xent_desc *d, int64_t n, int64_t k, float smoothing, eq_err *err);

/* Optimiser updates, elementwise over one parameter tensor, exactly as
 * torch.optim.SGD and torch.optim.Adam (amsgrad=False, L2 weight decay
 * added to the gradient).  SGD with momentum m, dampening d, decay wd:
 *     g' = g + wd*p;  buf = first ? g' : m*buf + (1-d)*g'
 *     step = nesterov ? g' + m*buf : buf  (m == 0: step = g', buf unused)
 *     p -= lr * step
 * Adam at step t >= 1:
 *     g' = g + wd*p;  mu = b1*mu + (1-b1)*g';  nu = b2*nu + (1-b2)*g'^2
 *     p -= lr/(1-b1^t) * mu / (sqrt(nu)/sqrt(1-b2^t) + eps) */
typedef struct eq_sgd_params {
    float lr, momentum, dampening, weight_decay;
    int nesterov; /* requires momentum > 0 and dampening == 0, as PyTorch */
    int first;    /* first step for this buffer: buf = g' (PyTorch's lazy init) */
} eq_sgd_params;

typedef struct eq_adam_params {
    float lr, beta1, beta2, eps, weight_decay;
    int64_t step; /* t, counting from 1 */
} eq_adam_params;

/* ---- the interface ------------------------------------------------------ */

typedef struct eq_backend eq_backend;
typedef struct eq_backend_event eq_backend_event; /* owned by its backend's implementation */

/* Bump when members change meaning or order (out-of-tree backends check it). */
#define EQ_BACKEND_IFACE_VERSION 7 /* 2: optional clamp_* and scalar_affine_* after add;
                                     * 3: optional bn_relu_* after bn_bwd;
                                     * 4: host_memory after name, optional quant_*
                                     *    after adam_step;
                                     * 5: optional round_to, nonfinite after
                                     *    quant_release; eq_conv2d_desc.prec
                                     * 6: optional stage_images, upload_async,
                                     *    upload_wait after nonfinite
                                     * 7: optional download_async,
                                     *    quant_grads_wait after upload_wait */

/* Each member receives the backend's `context`.  Members marked (optional)
 * may be NULL: the eq_backend_* wrapper then answers EQ_ERR_UNSUPPORTED
 * naming the backend and the op, unless a default is stated.  All pointers
 * are device pointers unless marked host.  Arguments are already validated
 * by the wrappers. */
struct eq_backend_i {
    const char *name; /* "cpu", "cuda" */
    /* 1 when device pointers are host pointers (alloc returns host memory:
     * the CPU backend), so host code may read and write them directly. */
    int host_memory;

    /* Release everything the context owns (buffers still allocated are the
     * caller's bug; the CPU backend frees them anyway by not tracking them). */
    void (*free)(void *ctx);

    /* -- memory -- */
    /* Device memory of `nbytes` (> 0), 64-byte aligned, uninitialised. */
    void *(*alloc)(void *ctx, size_t nbytes, eq_err *err);
    void (*release)(void *ctx, void *ptr); /* ptr may be NULL */
    /* Host -> device / device -> host / device -> device, `nbytes` bytes.
     * download waits until the stream has produced the source. */
    eq_status (*upload)(void *ctx, void *dst, const void *host_src, size_t nbytes, eq_err *err);
    eq_status (*download)(void *ctx, void *host_dst, const void *src, size_t nbytes, eq_err *err);
    eq_status (*copy)(void *ctx, void *dst, const void *src, size_t nbytes, eq_err *err);
    eq_status (*zero)(void *ctx, void *dst, size_t nbytes, eq_err *err);
    /* (optional; default: the workspace grows on first use) Grow the
     * workspace to at least `nbytes` now. */
    eq_status (*workspace_reserve)(void *ctx, size_t nbytes, eq_err *err);
    /* Current workspace size in bytes (the high-water mark so far). */
    size_t (*workspace_size)(void *ctx);

    /* -- synchronisation -- */
    eq_status (*synchronize)(void *ctx, eq_err *err);
    eq_backend_event *(*event_new)(void *ctx, eq_err *err);
    void (*event_free)(void *ctx, eq_backend_event *ev);
    eq_status (*event_record)(void *ctx, eq_backend_event *ev, eq_err *err);
    eq_status (*event_wait)(void *ctx, eq_backend_event *ev, eq_err *err);
    eq_status (*event_synchronize)(void *ctx, eq_backend_event *ev, eq_err *err);

    /* -- convolution (see eq_conv2d_desc) -- */
    eq_status (*conv2d_fwd)(void *ctx, const eq_conv2d_desc *d, const float *x, const float *w,
                            float *y, eq_err *err);
    /* dx = conv2d_fwd's gradient w.r.t. x (overwritten). */
    eq_status (*conv2d_bwd_data)(void *ctx, const eq_conv2d_desc *d, const float *dy,
                                 const float *w, float *dx, eq_err *err);
    /* dw (OIHW) = gradient w.r.t. w (overwritten). */
    eq_status (*conv2d_bwd_filter)(void *ctx, const eq_conv2d_desc *d, const float *x,
                                   const float *dy, float *dw, eq_err *err);

    /* -- batch norm (see eq_bn_desc); gamma/beta NULL mean 1/0 (affine=False) -- */
    /* Normalise with batch statistics; save_mean/save_invstd [C] keep the
     * batch mean and 1/sqrt(biased var + eps) for the backward; running
     * mean/var [C] are updated in place. */
    eq_status (*bn_fwd_train)(void *ctx, const eq_bn_desc *d, const float *x, const float *gamma,
                              const float *beta, float *running_mean, float *running_var,
                              float *y, float *save_mean, float *save_invstd, eq_err *err);
    eq_status (*bn_fwd_eval)(void *ctx, const eq_bn_desc *d, const float *x, const float *gamma,
                             const float *beta, const float *running_mean,
                             const float *running_var, float *y, eq_err *err);
    /* Backward of bn_fwd_train.  dgamma/dbeta may be NULL (not wanted); dx
     * may be dy (in place). */
    eq_status (*bn_bwd)(void *ctx, const eq_bn_desc *d, const float *x, const float *dy,
                        const float *gamma, const float *save_mean, const float *save_invstd,
                        float *dx, float *dgamma, float *dbeta, eq_err *err);

    /* -- fused batch norm + residual add + ReLU (a ResNet block's tails) -- */
    /* (optional; default: bn_fwd_train, add, relu_fwd) y = max(bn(x) + z, 0)
     * with batch statistics, z [M][C] (NULL: none); save_mean/save_invstd and
     * the running statistics as bn_fwd_train.  bn(x) is rounded to float
     * before z is added, as the separate ops do, so a backend can give the
     * same bits as the composition. */
    eq_status (*bn_relu_fwd_train)(void *ctx, const eq_bn_desc *d, const float *x,
                                   const float *z, const float *gamma, const float *beta,
                                   float *running_mean, float *running_var, float *y,
                                   float *save_mean, float *save_invstd, eq_err *err);
    /* (optional; default: bn_fwd_eval, add, relu_fwd) the same with the
     * running statistics. */
    eq_status (*bn_relu_fwd_eval)(void *ctx, const eq_bn_desc *d, const float *x,
                                  const float *z, const float *gamma, const float *beta,
                                  const float *running_mean, const float *running_var, float *y,
                                  eq_err *err);
    /* (optional; default: add, relu_bwd, bn_bwd) Backward of
     * bn_relu_fwd_train from its output y: g = dy + dy2 (dy2 NULL: dy alone)
     * where y > 0, else 0; dz = g (the residual's gradient; NULL: not
     * wanted; may be dy); dx, dgamma, dbeta = bn_bwd of g (dgamma/dbeta may
     * be NULL).  dx must not alias the other arguments. */
    eq_status (*bn_relu_bwd)(void *ctx, const eq_bn_desc *d, const float *x, const float *y,
                             const float *dy, const float *dy2, const float *gamma,
                             const float *save_mean, const float *save_invstd, float *dx,
                             float *dz, float *dgamma, float *dbeta, eq_err *err);

    /* -- elementwise; n elements; outputs may alias inputs -- */
    /* y = x where x > 0 or NaN (as torch.relu), else +0. */
    eq_status (*relu_fwd)(void *ctx, size_t n, const float *x, float *y, eq_err *err);
    /* dx = 0 where y <= 0, else dy (torch's threshold_backward; y is the
     * forward output, dy passes at a NaN). */
    eq_status (*relu_bwd)(void *ctx, size_t n, const float *y, const float *dy, float *dx,
                          eq_err *err);
    /* x: [M][C]; slope: [nslope] with nslope 1 or C (torch.nn.PReLU). */
    eq_status (*prelu_fwd)(void *ctx, int64_t m, int64_t c, int64_t nslope, const float *x,
                           const float *slope, float *y, eq_err *err);
    eq_status (*prelu_bwd)(void *ctx, int64_t m, int64_t c, int64_t nslope, const float *x,
                           const float *slope, const float *dy, float *dx, float *dslope,
                           eq_err *err);
    /* y = a + b (residual add; also sums the two gradients reaching a fork). */
    eq_status (*add)(void *ctx, size_t n, const float *a, const float *b, float *y, eq_err *err);
    /* (optional) y = min(max(x, lo), hi) (torch.nn.Hardtanh; ReLU6 is lo 0,
     * hi 6).  lo < hi, both finite. */
    eq_status (*clamp_fwd)(void *ctx, size_t n, float lo, float hi, const float *x, float *y,
                           eq_err *err);
    /* (optional) dx = dy where lo < y < hi, else 0 (y is the forward output;
     * the same mask as PyTorch's hardtanh_backward, which tests x). */
    eq_status (*clamp_bwd)(void *ctx, size_t n, float lo, float hi, const float *y,
                           const float *dy, float *dx, eq_err *err);
    /* (optional) y = x * scale[0] + bias[0] with device scalars scale and bias
     * (NULL: 1 and 0; Fixup's scalar biases and multipliers). */
    eq_status (*scalar_affine_fwd)(void *ctx, size_t n, const float *x, const float *scale,
                                   const float *bias, float *y, eq_err *err);
    /* (optional) dx = dy * scale[0] (dx NULL: not wanted; may alias dy),
     * dscale[0] = sum(dy * x), dbias[0] = sum(dy) (each NULL: not wanted),
     * overwritten; sums in a fixed order. */
    eq_status (*scalar_affine_bwd)(void *ctx, size_t n, const float *x, const float *dy,
                                   const float *scale, float *dx, float *dscale, float *dbias,
                                   eq_err *err);

    /* -- pooling (see eq_pool2d_desc) -- */
    /* argmax: [N][P][Q][C] int32, the input position h*W+w of each maximum
     * (first one in scan order on ties, as PyTorch), kept for the backward. */
    eq_status (*maxpool_fwd)(void *ctx, const eq_pool2d_desc *d, const float *x, float *y,
                             int32_t *argmax, eq_err *err);
    eq_status (*maxpool_bwd)(void *ctx, const eq_pool2d_desc *d, const int32_t *argmax,
                             const float *dy, float *dx, eq_err *err);
    eq_status (*avgpool_fwd)(void *ctx, const eq_pool2d_desc *d, const float *x, float *y,
                             eq_err *err);
    eq_status (*avgpool_bwd)(void *ctx, const eq_pool2d_desc *d, const float *dy, float *dx,
                             eq_err *err);
    /* Global average pool: x [N][HW][C] -> y [N][C]. */
    eq_status (*gap_fwd)(void *ctx, int64_t n, int64_t hw, int64_t c, const float *x, float *y,
                         eq_err *err);
    eq_status (*gap_bwd)(void *ctx, int64_t n, int64_t hw, int64_t c, const float *dy,
                         float *dx, eq_err *err);

    /* -- linear: x [N][I], w [O][I], b [O] (may be NULL), y [N][O] -- */
    eq_status (*linear_fwd)(void *ctx, int64_t n, int64_t in, int64_t out, const float *x,
                            const float *w, const float *b, float *y, eq_err *err);
    eq_status (*linear_bwd_data)(void *ctx, int64_t n, int64_t in, int64_t out, const float *dy,
                                 const float *w, float *dx, eq_err *err);
    /* dw [O][I] and db [O] (db may be NULL) overwritten. */
    eq_status (*linear_bwd_weight)(void *ctx, int64_t n, int64_t in, int64_t out,
                                   const float *x, const float *dy, float *dw, float *db,
                                   eq_err *err);

    /* -- loss (see eq_xent_desc); labels_b and lambda both NULL or both set -- */
    /* loss: one device float.  A label outside [0, K) is EQ_ERR_INVALID
     * (backends that cannot check on the host may report it later). */
    eq_status (*xent_fwd)(void *ctx, const eq_xent_desc *d, const float *logits,
                          const int32_t *labels_a, const int32_t *labels_b, const float *lambda,
                          float *loss, eq_err *err);
    /* dlogits = dloss (host value) * d loss / d logits. */
    eq_status (*xent_bwd)(void *ctx, const eq_xent_desc *d, const float *logits,
                          const int32_t *labels_a, const int32_t *labels_b, const float *lambda,
                          float dloss, float *dlogits, eq_err *err);

    /* -- optimiser updates (see eq_sgd_params / eq_adam_params), in place -- */
    /* buf: momentum buffer [n], unused (may be NULL) when momentum == 0. */
    eq_status (*sgd_step)(void *ctx, size_t n, const eq_sgd_params *hp, float *param,
                          const float *grad, float *buf, eq_err *err);
    /* mu, nu: first and second moment buffers [n] (zero before step 1). */
    eq_status (*adam_step)(void *ctx, size_t n, const eq_adam_params *hp, float *param,
                           const float *grad, float *mu, float *nu, eq_err *err);

    /* -- quantizers (quant/quant.h) on device tensors -- */
    /* (optional; default: eq_quant_forward(q, xd, x, y, train) on the
     * pointers when host_memory, else EQ_ERR_UNSUPPORTED) y = Q(x), x and y
     * contiguous F32 described by xd (host), not aliasing.  q's state (its
     * counters, LQ-Net basis, ...) changes as eq_quant_forward changes it. */
    eq_status (*quant_forward)(void *ctx, struct eq_quant *q, const eq_tensor_desc *xd,
                               const float *x, float *y, int train, eq_err *err);
    /* (optional; default as quant_forward) Backward of q's last forward
     * through this member: gx and the gradients of q's parameters (in q's
     * host arrays), as eq_quant_backward.  x is that forward's x; gy and
     * gx may alias.  The parameter gradients are visible to the host when
     * this returns, or, on a backend with quant_grads_wait (interface 7),
     * once quant_grads_wait has returned: not before. */
    eq_status (*quant_backward)(void *ctx, struct eq_quant *q, const float *x, const float *gy,
                                float *gx, eq_err *err);
    /* (optional; default: nothing to drop) Drop what the backend keeps for
     * q; q may be used again afterwards (state is made anew). */
    void (*quant_release)(void *ctx, struct eq_quant *q);

    /* -- mixed precision -- */
    /* (optional; default: eq_precision_round per element on the pointers
     * when host_memory, else EQ_ERR_UNSUPPORTED) y[i] =
     * eq_precision_round(prec, x[i]), bitwise; y may alias x. */
    eq_status (*round_to)(void *ctx, eq_precision prec, size_t n, const float *x, float *y,
                          eq_err *err);
    /* (optional; default: a loop on the pointers when host_memory, else
     * EQ_ERR_UNSUPPORTED) *count (host) = the number of elements of x that
     * are inf or NaN; waits for the work before it (the loss scaler's
     * found-inf test). */
    eq_status (*nonfinite)(void *ctx, size_t n, const float *x, int64_t *count, eq_err *err);

    /* -- input pipeline (see "Input pipeline" above) -- */
    /* (optional; default: a host loop on the pointers when host_memory,
     * else EQ_ERR_UNSUPPORTED) uint8 NHWC images to the fp32 network
     * input: src [n][per_image] bytes with c channels innermost (c in
     * [1, 16], dividing per_image), dst [n][per_image] floats,
     *     v = (float)src[i][k] * scale[k % c] + shift[k % c]
     * (scale, shift: HOST arrays of c floats), in fp32 without contraction
     * (eq-trainer passes scale = (float)(1/(255 std)), shift =
     * (float)(-mean/std), so dst is bitwise eq_train_stage's).  With
     * partner and lambda (device, n each; both or neither: mixup) image i
     * becomes lambda[i] * v_i + (1 - lambda[i]) * v_partner[i], computed as
     * written.  A partner outside [0, n) is EQ_ERR_INVALID naming the
     * image (a backend that cannot check on the host stages that image
     * unblended and reports it at the next download/synchronize). */
    eq_status (*stage_images)(void *ctx, int64_t n, int64_t per_image, int64_t c,
                              const uint8_t *src, const float *scale, const float *shift,
                              const int32_t *partner, const float *lambda, float *dst,
                              eq_err *err);
    /* (optional; default: upload, synchronous) Start copying nbytes of
     * host memory to dst and return; the caller may reuse host_src as soon
     * as this returns.  Ordering: the copy starts after every op issued on
     * the compute stream before this call (so it may overwrite what those
     * ops read), and the compute stream sees the data only after a later
     * upload_wait.  Ops issued between the two must not touch dst. */
    eq_status (*upload_async)(void *ctx, void *dst, const void *host_src, size_t nbytes,
                              eq_err *err);
    /* (optional; default: nothing to wait for) Order the compute stream
     * after every upload_async issued so far; the host does not block. */
    eq_status (*upload_wait)(void *ctx, eq_err *err);

    /* (optional; default: download, which waits, then event_record) Queue
     * a copy of nbytes (at most EQ_BACKEND_DOWNLOAD_ASYNC_MAX) from device
     * src to host_dst after every op issued so far, record ev after it and
     * return without waiting.  host_dst holds the bytes once
     * event_synchronize(ev) has returned (EQ_OK), not before: the caller
     * must neither read nor free host_dst until then.  A later
     * event_record or download_async of ev before that synchronize is
     * allowed (the synchronize then also waits for the later record; a
     * second download_async first completes the pending one, waiting). */
    eq_status (*download_async)(void *ctx, void *host_dst, const void *src, size_t nbytes,
                                eq_backend_event *ev, eq_err *err);
    /* (optional; default: nothing to wait for) The parameter gradients of
     * every quant_backward issued so far are in their quantizers' host
     * arrays when this returns: a backend with this member may return from
     * quant_backward before they are (CUDA: summed on the device and
     * copied asynchronously) and waits here once for all of them, for the
     * last of those copies only. */
    eq_status (*quant_grads_wait)(void *ctx, eq_err *err);
};

#define EQ_BACKEND_DOWNLOAD_ASYNC_MAX 256 /* bytes */

struct eq_backend {
    const struct eq_backend_i *iface;
    void *context;
};

/* ---- creating backends -------------------------------------------------- */

/* The CPU backend with `nthreads` threads (<= 0: one per online CPU).  Its
 * GEMMs use OpenBLAS with exactly that many threads: the OpenBLAS thread
 * count is process-wide, so it is set before every GEMM if another user
 * changed it.  Results are bit-identical between runs for a fixed thread
 * count.  Caller owns the result (eq_backend_destroy). */
eq_backend *eq_backend_cpu_new(int nthreads, eq_err *err);

/* Free the backend and its context.  NULL-safe; NULLs *be_p. */
void eq_backend_destroy(eq_backend **be_p);
const char *eq_backend_name(const eq_backend *be);

/* ---- calling backends: validate, then dispatch to the iface ------------- */

void *eq_backend_alloc(eq_backend *be, size_t nbytes, eq_err *err);
void eq_backend_release(eq_backend *be, void *ptr);
eq_status eq_backend_upload(eq_backend *be, void *dst, const void *host_src, size_t nbytes,
                            eq_err *err);
eq_status eq_backend_download(eq_backend *be, void *host_dst, const void *src, size_t nbytes,
                              eq_err *err);
eq_status eq_backend_copy(eq_backend *be, void *dst, const void *src, size_t nbytes, eq_err *err);
eq_status eq_backend_zero(eq_backend *be, void *dst, size_t nbytes, eq_err *err);
eq_status eq_backend_workspace_reserve(eq_backend *be, size_t nbytes, eq_err *err);
size_t eq_backend_workspace_size(eq_backend *be);

eq_status eq_backend_synchronize(eq_backend *be, eq_err *err);
/* Caller owns the event (eq_backend_event_destroy with the same backend). */
eq_backend_event *eq_backend_event_new(eq_backend *be, eq_err *err);
void eq_backend_event_destroy(eq_backend *be, eq_backend_event **ev_p);
eq_status eq_backend_event_record(eq_backend *be, eq_backend_event *ev, eq_err *err);
eq_status eq_backend_event_wait(eq_backend *be, eq_backend_event *ev, eq_err *err);
eq_status eq_backend_event_synchronize(eq_backend *be, eq_backend_event *ev, eq_err *err);

/* The descriptor must have been through eq_conv2d_desc_init (checked again). */
eq_status eq_backend_conv2d_fwd(eq_backend *be, const eq_conv2d_desc *d, const float *x,
                                const float *w, float *y, eq_err *err);
eq_status eq_backend_conv2d_bwd_data(eq_backend *be, const eq_conv2d_desc *d, const float *dy,
                                     const float *w, float *dx, eq_err *err);
eq_status eq_backend_conv2d_bwd_filter(eq_backend *be, const eq_conv2d_desc *d, const float *x,
                                       const float *dy, float *dw, eq_err *err);

eq_status eq_backend_bn_fwd_train(eq_backend *be, const eq_bn_desc *d, const float *x,
                                  const float *gamma, const float *beta, float *running_mean,
                                  float *running_var, float *y, float *save_mean,
                                  float *save_invstd, eq_err *err);
eq_status eq_backend_bn_fwd_eval(eq_backend *be, const eq_bn_desc *d, const float *x,
                                 const float *gamma, const float *beta,
                                 const float *running_mean, const float *running_var, float *y,
                                 eq_err *err);
eq_status eq_backend_bn_bwd(eq_backend *be, const eq_bn_desc *d, const float *x, const float *dy,
                            const float *gamma, const float *save_mean, const float *save_invstd,
                            float *dx, float *dgamma, float *dbeta, eq_err *err);

/* The fused ops: the backend's member, or (member NULL) the composition of
 * the separate ops stated at the member, on any backend.  The composed
 * backward uses dz, else dx, as its scratch for g. */
eq_status eq_backend_bn_relu_fwd_train(eq_backend *be, const eq_bn_desc *d, const float *x,
                                       const float *z, const float *gamma, const float *beta,
                                       float *running_mean, float *running_var, float *y,
                                       float *save_mean, float *save_invstd, eq_err *err);
eq_status eq_backend_bn_relu_fwd_eval(eq_backend *be, const eq_bn_desc *d, const float *x,
                                      const float *z, const float *gamma, const float *beta,
                                      const float *running_mean, const float *running_var,
                                      float *y, eq_err *err);
eq_status eq_backend_bn_relu_bwd(eq_backend *be, const eq_bn_desc *d, const float *x,
                                 const float *y, const float *dy, const float *dy2,
                                 const float *gamma, const float *save_mean,
                                 const float *save_invstd, float *dx, float *dz, float *dgamma,
                                 float *dbeta, eq_err *err);

eq_status eq_backend_relu_fwd(eq_backend *be, size_t n, const float *x, float *y, eq_err *err);
eq_status eq_backend_relu_bwd(eq_backend *be, size_t n, const float *y, const float *dy,
                              float *dx, eq_err *err);
eq_status eq_backend_prelu_fwd(eq_backend *be, int64_t m, int64_t c, int64_t nslope,
                               const float *x, const float *slope, float *y, eq_err *err);
eq_status eq_backend_prelu_bwd(eq_backend *be, int64_t m, int64_t c, int64_t nslope,
                               const float *x, const float *slope, const float *dy, float *dx,
                               float *dslope, eq_err *err);
eq_status eq_backend_add(eq_backend *be, size_t n, const float *a, const float *b, float *y,
                         eq_err *err);
/* lo < hi, both finite, else EQ_ERR_INVALID. */
eq_status eq_backend_clamp_fwd(eq_backend *be, size_t n, float lo, float hi, const float *x,
                               float *y, eq_err *err);
eq_status eq_backend_clamp_bwd(eq_backend *be, size_t n, float lo, float hi, const float *y,
                               const float *dy, float *dx, eq_err *err);
/* dscale needs x; n == 0 is a no-op only for the forward (the backward
 * still zeroes dscale/dbias). */
eq_status eq_backend_scalar_affine_fwd(eq_backend *be, size_t n, const float *x,
                                       const float *scale, const float *bias, float *y,
                                       eq_err *err);
eq_status eq_backend_scalar_affine_bwd(eq_backend *be, size_t n, const float *x, const float *dy,
                                       const float *scale, float *dx, float *dscale,
                                       float *dbias, eq_err *err);

eq_status eq_backend_maxpool_fwd(eq_backend *be, const eq_pool2d_desc *d, const float *x,
                                 float *y, int32_t *argmax, eq_err *err);
eq_status eq_backend_maxpool_bwd(eq_backend *be, const eq_pool2d_desc *d, const int32_t *argmax,
                                 const float *dy, float *dx, eq_err *err);
eq_status eq_backend_avgpool_fwd(eq_backend *be, const eq_pool2d_desc *d, const float *x,
                                 float *y, eq_err *err);
eq_status eq_backend_avgpool_bwd(eq_backend *be, const eq_pool2d_desc *d, const float *dy,
                                 float *dx, eq_err *err);
eq_status eq_backend_gap_fwd(eq_backend *be, int64_t n, int64_t hw, int64_t c, const float *x,
                             float *y, eq_err *err);
eq_status eq_backend_gap_bwd(eq_backend *be, int64_t n, int64_t hw, int64_t c, const float *dy,
                             float *dx, eq_err *err);

eq_status eq_backend_linear_fwd(eq_backend *be, int64_t n, int64_t in, int64_t out,
                                const float *x, const float *w, const float *b, float *y,
                                eq_err *err);
eq_status eq_backend_linear_bwd_data(eq_backend *be, int64_t n, int64_t in, int64_t out,
                                     const float *dy, const float *w, float *dx, eq_err *err);
eq_status eq_backend_linear_bwd_weight(eq_backend *be, int64_t n, int64_t in, int64_t out,
                                       const float *x, const float *dy, float *dw, float *db,
                                       eq_err *err);

eq_status eq_backend_xent_fwd(eq_backend *be, const eq_xent_desc *d, const float *logits,
                              const int32_t *labels_a, const int32_t *labels_b,
                              const float *lambda, float *loss, eq_err *err);
eq_status eq_backend_xent_bwd(eq_backend *be, const eq_xent_desc *d, const float *logits,
                              const int32_t *labels_a, const int32_t *labels_b,
                              const float *lambda, float dloss, float *dlogits, eq_err *err);

/* Quantizers: the backend's member, or (member NULL) quant/ itself on a
 * host_memory backend; EQ_ERR_UNSUPPORTED naming the backend otherwise.
 * q, xd, x, y (gy, gx) are required; x and y must differ.  Errors of the
 * quantizer come back as quant/ words them. */
eq_status eq_backend_quant_forward(eq_backend *be, struct eq_quant *q, const eq_tensor_desc *xd,
                                   const float *x, float *y, int train, eq_err *err);
eq_status eq_backend_quant_backward(eq_backend *be, struct eq_quant *q, const float *x,
                                    const float *gy, float *gx, eq_err *err);
/* Drop the backend's state for q (call before eq_quant_destroy; NULL-safe,
 * a no-op for a quantizer the backend never saw). */
void eq_backend_quant_release(eq_backend *be, struct eq_quant *q);
/* The member, or nothing (EQ_OK) on a backend without it.  Every reader of
 * a quantizer's parameter gradients after quant_backward calls it first
 * (eq_layers_backward does, at its end). */
eq_status eq_backend_quant_grads_wait(eq_backend *be, eq_err *err);
/* Whether quant_backward may leave parameter gradients for
 * eq_backend_quant_grads_wait (the backend has the member). */
int eq_backend_quant_grads_deferred(const eq_backend *be);
/* 1 when be's device pointers are host pointers (iface host_memory). */
int eq_backend_host_memory(const eq_backend *be);
/* 1 when eq_backend_quant_forward/backward can run on be (it has the
 * members, or host memory for the default). */
int eq_backend_runs_quant(const eq_backend *be);

/* Mixed precision: the backend's member, or (member NULL) a host loop on
 * a host_memory backend; EQ_ERR_UNSUPPORTED naming the backend otherwise.
 * prec must be a known eq_precision (fp32 copies x to y unless they alias).
 * count is a host pointer. */
eq_status eq_backend_round_to(eq_backend *be, eq_precision prec, size_t n, const float *x,
                              float *y, eq_err *err);
eq_status eq_backend_nonfinite(eq_backend *be, size_t n, const float *x, int64_t *count,
                               eq_err *err);

/* Input pipeline: the backend's members, or their defaults (stage_images:
 * a host loop on a host_memory backend, EQ_ERR_UNSUPPORTED naming the
 * backend otherwise; upload_async: eq_backend_upload; upload_wait:
 * nothing).  stage_images needs n >= 0 (0: nothing to do), per_image >= 1,
 * c in [1, 16] dividing per_image, src, scale, shift, dst, and partner
 * and lambda both or neither; scale/shift are host arrays of c floats. */
eq_status eq_backend_stage_images(eq_backend *be, int64_t n, int64_t per_image, int64_t c,
                                  const uint8_t *src, const float *scale, const float *shift,
                                  const int32_t *partner, const float *lambda, float *dst,
                                  eq_err *err);
eq_status eq_backend_upload_async(eq_backend *be, void *dst, const void *host_src, size_t nbytes,
                                  eq_err *err);
eq_status eq_backend_upload_wait(eq_backend *be, eq_err *err);
/* The member, or its default: download (waits) then event_record.  nbytes
 * in [1, EQ_BACKEND_DOWNLOAD_ASYNC_MAX]; host_dst, src and ev needed. */
eq_status eq_backend_download_async(eq_backend *be, void *host_dst, const void *src, size_t nbytes,
                                    eq_backend_event *ev, eq_err *err);

/* Hyper-parameters are checked: lr >= 0, momentum/dampening/betas in [0, 1)
 * ([0, 1] for dampening), weight decay >= 0, eps > 0, step >= 1, nesterov
 * only with momentum > 0 and dampening 0. */
eq_status eq_backend_sgd_step(eq_backend *be, size_t n, const eq_sgd_params *hp, float *param,
                              const float *grad, float *buf, eq_err *err);
eq_status eq_backend_adam_step(eq_backend *be, size_t n, const eq_adam_params *hp, float *param,
                               const float *grad, float *mu, float *nu, eq_err *err);

#endif
