/*
 * trainer/net.h -- a static graph of layers on a backend, with explicit
 * forward and backward (no general autograd; DESIGN.md "Compute").
 *
 * Build a graph node by node (each call returns the new node's id, or -1
 * with err set), then eq_net_finalize allocates everything once on the
 * backend: parameters and their gradients in one block each (llm.c style),
 * one activation and one gradient buffer per node, and the saved state of
 * the backward (BN statistics, max-pool argmax).  A training step is then
 *     eq_net_forward(net, x, 1) -> eq_net_loss(net, labels, ...) ->
 *     eq_net_backward(net) -> optimiser on eq_net_param(...)
 * and allocates nothing.
 *
 * Parameters and buffers carry PyTorch's names and layouts ("conv1.weight"
 * OIHW, "bn1.running_var", "fc.weight" [out][in]) so checkpoints map 1:1 to
 * torchvision's state dicts.  Activations are NHWC; the batch size is fixed
 * by eq_net_input.  Gradients of parameters are overwritten by every
 * backward (no accumulation across calls).  BN's num_batches_tracked is a
 * host counter (eq_net_bn_batches), not a tensor.
 *
 * Errors: builders fail on shape mismatches naming the node; after a failed
 * builder call the net can only be destroyed.  Not thread-safe: one thread
 * per net.
 */
#ifndef EQ_TRAINER_NET_H
#define EQ_TRAINER_NET_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "trainer/backend.h"

typedef struct eq_net eq_net;

/* The net uses `be` (borrowed: it must outlive the net).  Caller owns the
 * result. */
eq_net *eq_net_new(eq_backend *be, eq_err *err);
void eq_net_destroy(eq_net **net_p);

/* ---- building ------------------------------------------------------------ */

/* The graph's input, NHWC [n][h][w][c]; exactly one, first. */
int eq_net_input(eq_net *net, int64_t n, int64_t h, int64_t w, int64_t c, eq_err *err);
/* Conv without bias; parameter "<name>.weight" [k][c/groups][r][r]. */
int eq_net_conv(eq_net *net, const char *name, int in, int64_t k, int64_t r, int64_t stride,
                int64_t pad, int64_t groups, eq_err *err);
/* BatchNorm2d (eps 1e-5, momentum 0.1): "<name>.weight" (ones), ".bias"
 * (zeros), buffers ".running_mean" (zeros), ".running_var" (ones). */
int eq_net_bn(eq_net *net, const char *name, int in, eq_err *err);
int eq_net_relu(eq_net *net, int in, eq_err *err);
int eq_net_maxpool(eq_net *net, int in, int64_t k, int64_t stride, int64_t pad, eq_err *err);
/* Residual add of two nodes of the same shape. */
int eq_net_add(eq_net *net, int a, int b, eq_err *err);
/* Global average pool to [n][1][1][c]. */
int eq_net_gap(eq_net *net, int in, eq_err *err);
/* Linear on the flattened node (NHWC order: h, w, c; equal to PyTorch's
 * flatten only when h == w == 1): "<name>.weight" [out][in], ".bias". */
int eq_net_linear(eq_net *net, const char *name, int in, int64_t out, eq_err *err);

/* Allocate everything; the last node added is the output (logits
 * [n][classes]).  Parameters are initialised as torchvision's ResNet does,
 * from `seed` (core/rng.h, one stream per tensor): conv weights
 * kaiming-normal with fan_out and ReLU gain (std sqrt(2 / (K*R*S))),
 * linear weight and bias uniform in
 * +-1/sqrt(in), BN weight 1 and bias 0, running mean 0 and variance 1.
 * Load trained values through eq_net_param + eq_backend_upload. */
eq_status eq_net_finalize(eq_net *net, uint64_t seed, eq_err *err);

/* ---- parameters -------------------------------------------------------- */

typedef struct eq_net_tensor {
    const char *name;   /* PyTorch name; owned by the net */
    int ndim;
    int64_t shape[4];
    size_t numel;
    int trainable;      /* 0: a buffer (running statistics) */
    float *data;        /* device pointer */
    float *grad;        /* device pointer; NULL for buffers */
} eq_net_tensor;

size_t eq_net_param_count(const eq_net *net);
/* i-th tensor in creation order (torchvision's state-dict order for the
 * models built here); NULL when out of range.  Names and shapes are valid
 * as soon as the tensor's layer is built (so a model can be inspected
 * without allocating it); data and grad are NULL until finalize. */
const eq_net_tensor *eq_net_param(const eq_net *net, size_t i);
const eq_net_tensor *eq_net_param_find(const eq_net *net, const char *name);
/* Batches seen in training mode (torch's num_batches_tracked). */
int64_t eq_net_bn_batches(const eq_net *net);

/* ---- running ------------------------------------------------------------- */

/* x: device NHWC input of the shape given to eq_net_input.  train: BN uses
 * batch statistics and updates its running ones. */
eq_status eq_net_forward(eq_net *net, const float *x, int train, eq_err *err);
/* Output node's activation (device), e.g. the logits [n][classes]. */
const float *eq_net_output(const eq_net *net, int64_t *numel);
/* Cross-entropy of the output against labels (device int32 [n]; mixup
 * pairs and smoothing as eq_xent_desc); writes the loss (host float) and
 * seeds the backward with d loss / d logits. */
eq_status eq_net_loss(eq_net *net, const int32_t *labels_a, const int32_t *labels_b,
                      const float *lambda, float smoothing, float *loss, eq_err *err);
/* Backward from the seeded output gradient: every parameter's grad. */
eq_status eq_net_backward(eq_net *net, eq_err *err);

/* ---- models ---------------------------------------------------------------- */

/* torchvision's ResNet and its exact tensor names, on an input of
 * [n][h][w][3]: BasicBlocks (bottleneck = 0; resnet18: blocks {2,2,2,2},
 * resnet34: {3,4,6,3}) or Bottlenecks (bottleneck = 1, expansion 4, stride
 * on the 3x3 ("v1.5"); resnet50: {3,4,6,3}, resnet101: {3,4,23,3}).
 * `width` is the first stage's channels (64 in torchvision; smaller values
 * give the same graph, thinner, for tests).  Returns the output node; call
 * eq_net_finalize after. */
int eq_net_build_torch_resnet(eq_net *net, int bottleneck, const int blocks[4], int64_t width,
                              int64_t classes, int64_t n, int64_t h, int64_t w, eq_err *err);

#endif
