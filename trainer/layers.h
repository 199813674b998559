/*
 * trainer/layers.h -- the static layer graph under trainer/model.h: layers
 * with explicit forward and backward on a backend (no general autograd),
 * including convolutions and linear layers wrapped with quant/ quantizers.
 *
 * Build node by node (each builder returns the new node's id, or -1 with err
 * set; after a failed builder the graph can only be destroyed), then
 * eq_layers_finalize allocates everything once: parameters (and buffers) in
 * one block, their gradients in another, one activation and one gradient
 * buffer per node plus the state the backward needs (BN batch statistics,
 * max-pool argmax, quantized weights and activations), and initialises the
 * parameters.  Forward walks the nodes in order, backward in reverse; a
 * node's gradient is the sum of its consumers' contributions.  Activations
 * are NHWC.
 *
 * Quantized conv (the original's custom_conv, ORIGINAL.md §2.14):
 *     Wq = Qw(W);  a = pad_after_quant ? pad(Qf(x)) : Qf(pad(x));  y = conv(a, Wq)
 * Qw/Qf are eq_quant objects built from the given option records (NULL: no
 * quantizer).  Quantizers run through the backend's quantizer members
 * (eq_backend_quant_*: quant/ itself on the CPU backend, eq_cuda_quant on
 * CUDA); their state stays in host memory; finalize refuses a backend that
 * runs no quantizers.
 *
 * Not thread-safe: one thread per graph.
 */
#ifndef EQ_TRAINER_LAYERS_H
#define EQ_TRAINER_LAYERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "quant/quant.h"
#include "trainer/backend.h"
#include "trainer/model.h"

typedef struct eq_layers eq_layers;

/* `be` is borrowed.  Caller owns the result. */
eq_layers *eq_layers_new(eq_backend *be, eq_err *err);
void eq_layers_destroy(eq_layers **g_p);

/* The input, NHWC; exactly one, first. */
int eq_layers_input(eq_layers *g, int64_t n, int64_t h, int64_t w, int64_t c, eq_err *err);
/* Conv without bias, "<name>.weight" [k][c/groups][r][r]; wq/fq: quantizer
 * options for the weight and the input (NULL: none), state under
 * "<name>.quant_activation.*" and "<name>.quant_weight.*".  Unless
 * pad_after_quant, the input quantizer sees the zero-padded input (the
 * original's order); a forward whose quantizer is eq_quant_zero_pad_exact
 * quantizes the unpadded input and lets the conv pad instead (the same
 * numbers, less work). */
int eq_layers_conv(eq_layers *g, const char *name, int in, int64_t k, int64_t r, int64_t stride,
                   int64_t pad, int64_t groups, const eq_quant_opts *wq, const eq_quant_opts *fq,
                   bool pad_after_quant, eq_err *err);
/* Give conv node `node` (built by eq_layers_conv, before finalize) the
 * original's output quantizer (custom_conv's quant_output, ORIGINAL.md
 * 2.14: out = Qo(conv(a, Wq))) from `oq` (tag ot); its state is
 * "<name>.quant_output.*".  Errors: not a named conv, finalized graph, a
 * second call; a failure leaves the graph broken. */
eq_status eq_layers_conv_output_quant(eq_layers *g, int node, const eq_quant_opts *oq, eq_err *err);
/* Space-to-depth by s (s divides h and w): [n][h][w][c] -> [n][h/s][w/s][c*s*s],
 * output channel c*s*s + dy*s + dx from input (s*p + dy, s*q + dx, c), the
 * original's TResNetStem order.  Runs as a conv with a fixed one-hot weight
 * (exact for finite inputs; no tensors). */
int eq_layers_space_to_depth(eq_layers *g, int in, int64_t s, eq_err *err);
/* torch.cat([x] * copies, dim=1): [n][h][w][c] -> [n][h][w][c*copies],
 * output channel o from input channel o mod c (the original's DCHR
 * shortcut).  Runs as a 1x1 conv with a fixed one-hot weight (exact for
 * finite inputs; the backward sums the copies' gradients; no tensors). */
int eq_layers_channel_repeat(eq_layers *g, int in, int64_t copies, eq_err *err);
/* BatchNorm2d (eps 1e-5, momentum 0.1): weight, bias, running_mean,
 * running_var, num_batches_tracked (I64 scalar). */
int eq_layers_bn(eq_layers *g, const char *name, int in, eq_err *err);
int eq_layers_relu(eq_layers *g, int in, eq_err *err);
/* min(max(x, lo), hi) (ReLU6: 0, 6); needs the backend's optional clamp op. */
int eq_layers_clamp(eq_layers *g, int in, float lo, float hi, eq_err *err);
/* y = x * s + b with learnable scalars "<prefix>.<scale>" (init 1) and
 * "<prefix>.<bias>" (init 0), each [1] (prefix "": top-level names "<scale>",
 * "<bias>"); scale or bias NULL: absent (Fixup).
 * Needs the backend's optional scalar_affine op. */
int eq_layers_scalar_affine(eq_layers *g, const char *prefix, const char *scale,
                            const char *bias, int in, eq_err *err);
/* Dropout with probability p in [0, 1) (PyTorch's nn.Dropout, inverted: a
 * kept element is scaled by 1/(1-p)); identity in eval forwards and for
 * p == 0.  The mask of a training forward is a pure function of (the
 * finalize seed, the graph's noise key, the node, the element) drawn from
 * core/rng.h, so it does not depend on threads or on earlier forwards; the
 * backward applies the same mask.  Runs through host memory (download,
 * scale, upload), meant for a classifier's small input.  No tensors. */
int eq_layers_dropout(eq_layers *g, int in, double p, eq_err *err);
/* The key of the next training forward's random masks.  Every successful
 * training forward then adds 1; a caller that resumes a run bit-exactly
 * sets it from its own position (e.g. epoch and step) before each forward.
 * 0 after eq_layers_new. */
void eq_layers_set_noise_key(eq_layers *g, uint64_t key);
uint64_t eq_layers_noise_key(const eq_layers *g);
/* PReLU with one learnable slope "<name>.weight" [1], initialised to 0.25. */
int eq_layers_prelu(eq_layers *g, const char *name, int in, eq_err *err);
int eq_layers_maxpool(eq_layers *g, int in, int64_t k, int64_t stride, int64_t pad, eq_err *err);
/* AvgPool2d(k, stride, pad), count_include_pad as PyTorch's default. */
int eq_layers_avgpool(eq_layers *g, int in, int64_t k, int64_t stride, int64_t pad, eq_err *err);
int eq_layers_add(eq_layers *g, int a, int b, eq_err *err);
/* Global average pool to [n][1][1][c]. */
int eq_layers_gap(eq_layers *g, int in, eq_err *err);
/* Linear on the flattened node (NHWC order; equals PyTorch's flatten when
 * h == w == 1): "<name>.weight" [out][in], "<name>.bias" [out]; optional
 * quantizers as for conv (weight quantized as one [1][1][out][in] tensor,
 * input as [n][in], as the original's custom_linear). */
int eq_layers_linear(eq_layers *g, const char *name, int in, int64_t out,
                     const eq_quant_opts *wq, const eq_quant_opts *fq, eq_err *err);
/* Shape of a node's output (NHWC); returns 0 or -1 for a bad id. */
int eq_layers_shape(const eq_layers *g, int node, int64_t shape[4]);

/* Fusion (on by default): finalize runs each BN -> ReLU and BN -> add ->
 * ReLU chain whose intermediates feed only the next node as one backend
 * bn_relu op (fewer passes over memory; the same bits as the separate ops
 * on the CPU backend), and gives the absorbed BN and add nodes no buffers
 * of their own.  Off: every node runs its own op (the reference the fused
 * graph is tested against).  Only before finalize. */
eq_status eq_layers_set_fusion(eq_layers *g, bool on, eq_err *err);

/* Mixed precision (doc/precision.md; EQ_PREC_FP32 after eq_layers_new:
 * everything fp32, no extra passes).  With bf16 or fp16 (PyTorch autocast /
 * apex O1 semantics, emulated on the CPU backend: values rounded with
 * eq_backend_round_to, arithmetic fp32):
 *  - every activation a node stores, and every activation gradient (each
 *    contribution and each sum of contributions, d/dlogits included), holds
 *    values of that precision; a fused BN -> [add ->] ReLU chain rounds its
 *    output once (its intermediates are not stored);
 *  - conv/linear read rounded copies of their weight (and linear's bias;
 *    the master weights stay fp32) and of an input that is no stored
 *    activation (the input quantizer's output, the network input); their
 *    conv descriptors carry `prec`; the gradients of those operands are
 *    rounded (the cast's backward), then the weight's is the fp32 master
 *    gradient (or goes through the weight quantizer, in fp32);
 *  - quantizer math, BN statistics and parameters, PReLU/scalar-affine
 *    parameters and all other parameter gradients stay fp32.
 * Quantizer outputs (eq_layers_quant_output) stay unrounded for WT and FM;
 * OT is the conv node's stored activation, rounded.  Non-finite values
 * (fp16 overflow) propagate; nothing fails on them.  Only before finalize. */
eq_status eq_layers_set_precision(eq_layers *g, eq_precision p, eq_err *err);
eq_precision eq_layers_precision(const eq_layers *g);

/* Allocate and initialise as the original/torchvision do, from `seed`: conv
 * weights kaiming-normal (fan_out, ReLU gain), linear weight and bias
 * U(+-1/sqrt(in)), BN 1/0, running stats 0/1, PReLU 0.25; quantizer state as
 * its quantizer initialises it.  The last node added is the output. */
eq_status eq_layers_finalize(eq_layers *g, uint64_t seed, eq_err *err);

eq_status eq_layers_forward(eq_layers *g, const float *x, bool train, eq_err *err);
/* Output node: activation, its gradient buffer, and its shape. */
float *eq_layers_output(const eq_layers *g, float **dy, int64_t shape[4]);
/* The gradients of every tensor but the quantizers' (those are host
 * arrays of quant/), as one backend block of *n floats: each tensor's
 * gradient at a multiple of 16 floats, the padding between them zero
 * (nothing writes it), so a reduction over the block (inf/NaN count,
 * norm) sees the tensors' values only.  NULL, *n = 0: no such tensor. */
float *eq_layers_grad_block(const eq_layers *g, size_t *n);
/* Backward from the output gradient (its dy buffer, filled by the caller).
 * Every gradient is written when it returns, the quantizers' parameter
 * gradients (host arrays) included: on a backend that defers them
 * (eq_backend_quant_grads_deferred) it ends with
 * eq_backend_quant_grads_wait. */
eq_status eq_layers_backward(eq_layers *g, eq_err *err);

/* The quantizer of the conv/linear node named `layer` for `tag` (EQ_QTAG_WT:
 * its weight, FM: its input, OT: a conv's output), or NULL if there is no
 * such node or it has no quantizer for that tag.  Owned by the graph. */
eq_quant *eq_layers_quant(const eq_layers *g, const char *layer, eq_quant_tag tag);
/* What that quantizer produced in the graph's most recent successful
 * forward (device memory; *n elements: WT the weight, FM the input as the
 * quantizer saw it -- padded first unless pad_after_quant --, OT the conv's
 * output), or NULL (*n = 0) before any forward, after a failed one, or for
 * no such quantizer.  Valid until the next forward (a backward leaves it). */
const float *eq_layers_quant_output(const eq_layers *g, const char *layer, eq_quant_tag tag,
                                    int64_t *n);

/* Sum of eq_quant_aux_loss over every quantizer of the graph, in node order
 * (weight, input, output): the policy-enabled quantization losses of the
 * last forward (0 unless a training forward with quant_loss_enable). */
double eq_layers_quant_aux_loss(const eq_layers *g);
/* eq_quant_set_loss_scale on every quantizer of the graph (the model's
 * loss scale: their quantization losses' gradients scale with it). */
eq_status eq_layers_set_quant_loss_scale(eq_layers *g, float scale, eq_err *err);

/* Gradient-ready hook (data-parallel overlap, trainer/model.h): during
 * eq_layers_backward, fn(arg, node) runs right after node `node` has
 * written the gradients of its tensors (those with eq_layers_tensor_node
 * == node), nodes in decreasing order; a node that does not reach the
 * output, or one whose backward failed, is not reported.  fn NULL: none.
 * On a backend that defers quantizer parameter gradients
 * (eq_backend_quant_grads_deferred) those are not written yet at fn: only
 * when eq_layers_backward returns. */
typedef void eq_layers_grad_fn(void *arg, int node);
void eq_layers_set_grad_hook(eq_layers *g, eq_layers_grad_fn *fn, void *arg);
/* The node whose backward writes tensor i's gradient: the node that
 * registered it, or after finalize the fused ReLU that runs a BN's backward;
 * -1 when i is out of range. */
int eq_layers_tensor_node(const eq_layers *g, size_t i);

/* For tests (mixed precision checks every stored value): node `node`'s
 * activation and gradient buffers as the last forward and backward left
 * them (device memory, *n elements each).  *y NULL for the input and for a
 * node that stores none (a fused BN or add); *dy NULL where the last
 * backward set none (the input, a fused node, an add that passed its
 * buffer on to an input, a node that does not reach the output; before
 * any backward).  Returns 0, or -1 for a bad id or an unfinalized graph. */
int eq_layers_node_buffers(const eq_layers *g, int node, const float **y, const float **dy,
                           size_t *n);
int eq_layers_node_count(const eq_layers *g);

size_t eq_layers_tensor_count(const eq_layers *g);
const eq_model_tensor *eq_layers_tensor_at(const eq_layers *g, size_t i);

#endif
