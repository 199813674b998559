/*
 * core/tensor.h -- dtypes, tensor descriptors and group descriptors.
 *
 * A descriptor says what an array is (dtype, shape, strides in elements,
 * layout tag); it never owns memory.  A group descriptor says which elements
 * share one parameter (a quantizer's clip value or scale, a norm's channel
 * statistics), so kernels never assume a layout:
 *
 *     group(i) = ((i / inner) % period) / block,   ngroups = period / block
 *
 * for the element at linear (memory-order) index i of a contiguous tensor.
 *   per tensor:                 inner = 1,        period = 1, block = 1
 *   per channel, OIHW weights:  inner = I*H*W,    period = O, block = 1
 *   per channel, NHWC acts:     inner = 1,        period = C, block = 1
 *   g channel groups, NHWC:     inner = 1,        period = C, block = C/g
 *   g channel groups, OIHW:     inner = I*H*W,    period = O, block = O/g
 * Letters: N batch, C channels, H/W spatial, O/I output/input channels.
 */
#ifndef EQ_TENSOR_H
#define EQ_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

/* Values are append-only (they travel on the wire).  Names are those of
 * the safetensors format ("F32", "BF16", ...), used everywhere in eq. */
typedef enum eq_dtype {
    EQ_DT_F32 = 0,
    EQ_DT_F16,
    EQ_DT_BF16,
    EQ_DT_F64,
    EQ_DT_I64,
    EQ_DT_I32,
    EQ_DT_I16,
    EQ_DT_I8,
    EQ_DT_U8,
    EQ_DT_BOOL,
    EQ_DT_COUNT
} eq_dtype;

size_t eq_dtype_size(eq_dtype dt);            /* bytes per element; 0 if invalid */
const char *eq_dtype_name(eq_dtype dt);       /* "F32", ...; "?" if invalid */
/* Parse a dtype name (exact, case-sensitive); returns 0 or -1. */
int eq_dtype_parse(const char *name, size_t len, eq_dtype *out);

typedef enum eq_layout {
    EQ_LAYOUT_ANY = 0, /* no meaning attached to the axes */
    EQ_LAYOUT_NHWC,    /* activations (eq's native layout) */
    EQ_LAYOUT_NCHW,    /* activations as PyTorch keeps them */
    EQ_LAYOUT_OIHW,    /* conv weights (PyTorch's layout; checkpoints) */
    EQ_LAYOUT_NC,      /* 2-D activations (linear layers) */
    EQ_LAYOUT_OI,      /* linear weights */
    EQ_LAYOUT_OHWI,    /* conv weights with the input channel innermost (NHWC convs) */
    EQ_LAYOUT_COUNT
} eq_layout;

#define EQ_TENSOR_MAX_DIMS 8

typedef struct eq_tensor_desc {
    eq_dtype dtype;
    eq_layout layout;
    int ndim;
    int64_t shape[EQ_TENSOR_MAX_DIMS];
    int64_t stride[EQ_TENSOR_MAX_DIMS]; /* in elements */
} eq_tensor_desc;

/* Fill a contiguous (row-major) descriptor.  Fails (EQ_ERR_INVALID) on a bad
 * dtype, ndim outside [0, EQ_TENSOR_MAX_DIMS], a negative dimension, or an
 * element count whose byte size overflows int64. */
eq_status eq_tensor_desc_init(eq_tensor_desc *d, eq_dtype dt, eq_layout layout, int ndim,
                              const int64_t *shape, eq_err *err);
int64_t eq_tensor_numel(const eq_tensor_desc *d);
int64_t eq_tensor_nbytes(const eq_tensor_desc *d);
int eq_tensor_is_contiguous(const eq_tensor_desc *d);
/* Element count of a shape with overflow check: -1 if negative or > limit. */
int64_t eq_shape_numel(int ndim, const int64_t *shape, int64_t limit);
/* Index of the channel axis for a layout (NHWC: 3, NCHW: 1, OIHW: 0, NC: 1,
 * OI: 0, OHWI: 0), or -1 for EQ_LAYOUT_ANY. */
int eq_layout_channel_axis(eq_layout layout);

typedef struct eq_group_desc {
    int64_t inner;  /* stride of the grouped axis in elements (>= 1) */
    int64_t period; /* extent of the grouped axis (>= 1) */
    int64_t block;  /* consecutive indices of that axis per group (>= 1) */
} eq_group_desc;

static inline int64_t eq_group_count(const eq_group_desc *g) { return g->period / g->block; }
static inline int64_t eq_group_of(const eq_group_desc *g, int64_t i)
{
    return ((i / g->inner) % g->period) / g->block;
}

/* One group for the whole tensor. */
eq_group_desc eq_group_per_tensor(void);
/* `ngroups` groups along `axis` of a contiguous tensor (ngroups == shape[axis]
 * means per channel).  EQ_ERR_INVALID if the axis is out of range or its
 * extent is not divisible by ngroups. */
eq_status eq_group_along(const eq_tensor_desc *d, int axis, int64_t ngroups, eq_group_desc *out,
                         eq_err *err);

#endif
