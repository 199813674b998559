/* core/tensor.c -- dtype table, descriptors, group descriptors. */
#include "core/tensor.h"

#include <string.h>

static const struct {
    const char *name;
    size_t size;
} s_dtypes[EQ_DT_COUNT] = {
    [EQ_DT_F32] = { "F32", 4 }, [EQ_DT_F16] = { "F16", 2 }, [EQ_DT_BF16] = { "BF16", 2 },
    [EQ_DT_F64] = { "F64", 8 }, [EQ_DT_I64] = { "I64", 8 }, [EQ_DT_I32] = { "I32", 4 },
    [EQ_DT_I16] = { "I16", 2 }, [EQ_DT_I8] = { "I8", 1 },   [EQ_DT_U8] = { "U8", 1 },
    [EQ_DT_BOOL] = { "BOOL", 1 },
};

size_t eq_dtype_size(eq_dtype dt) { return (unsigned)dt < EQ_DT_COUNT ? s_dtypes[dt].size : 0; }
const char *eq_dtype_name(eq_dtype dt) { return (unsigned)dt < EQ_DT_COUNT ? s_dtypes[dt].name : "?"; }

int eq_dtype_parse(const char *name, size_t len, eq_dtype *out)
{
    for (int i = 0; i < EQ_DT_COUNT; i++)
        if (strlen(s_dtypes[i].name) == len && memcmp(s_dtypes[i].name, name, len) == 0) {
            *out = (eq_dtype)i;
            return 0;
        }
    return -1;
}

int64_t eq_shape_numel(int ndim, const int64_t *shape, int64_t limit)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] != 0 && n > limit / shape[i]) return -1;
        n *= shape[i];
    }
    return n > limit ? -1 : n;
}

eq_status eq_tensor_desc_init(eq_tensor_desc *d, eq_dtype dt, eq_layout layout, int ndim,
                              const int64_t *shape, eq_err *err)
{
    memset(d, 0, sizeof *d);
    if ((unsigned)dt >= EQ_DT_COUNT) return eq_err_set(err, EQ_ERR_INVALID, "invalid dtype %d", (int)dt);
    if (ndim < 0 || ndim > EQ_TENSOR_MAX_DIMS)
        return eq_err_set(err, EQ_ERR_INVALID, "tensor rank %d outside [0, %d]", ndim, EQ_TENSOR_MAX_DIMS);
    if ((unsigned)layout >= EQ_LAYOUT_COUNT) return eq_err_set(err, EQ_ERR_INVALID, "invalid layout %d", (int)layout);
    if (eq_shape_numel(ndim, shape, INT64_MAX / (int64_t)eq_dtype_size(dt)) < 0)
        return eq_err_set(err, EQ_ERR_INVALID, "tensor shape is negative or too large");
    d->dtype = dt;
    d->layout = layout;
    d->ndim = ndim;
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        d->shape[i] = shape[i];
        d->stride[i] = s;
        s *= shape[i] ? shape[i] : 1;
    }
    return EQ_OK;
}

int64_t eq_tensor_numel(const eq_tensor_desc *d)
{
    int64_t n = 1;
    for (int i = 0; i < d->ndim; i++) n *= d->shape[i];
    return n;
}

int64_t eq_tensor_nbytes(const eq_tensor_desc *d) { return eq_tensor_numel(d) * (int64_t)eq_dtype_size(d->dtype); }

int eq_tensor_is_contiguous(const eq_tensor_desc *d)
{
    int64_t s = 1;
    for (int i = d->ndim - 1; i >= 0; i--) {
        if (d->shape[i] != 1 && d->stride[i] != s) return 0;
        s *= d->shape[i];
    }
    return 1;
}

int eq_layout_channel_axis(eq_layout layout)
{
    switch (layout) {
    case EQ_LAYOUT_NHWC: return 3;
    case EQ_LAYOUT_NCHW: return 1;
    case EQ_LAYOUT_OIHW: return 0;
    case EQ_LAYOUT_NC: return 1;
    case EQ_LAYOUT_OI: return 0;
    case EQ_LAYOUT_OHWI: return 0;
    default: return -1;
    }
}

eq_group_desc eq_group_per_tensor(void) { return (eq_group_desc){ 1, 1, 1 }; }

eq_status eq_group_along(const eq_tensor_desc *d, int axis, int64_t ngroups, eq_group_desc *out, eq_err *err)
{
    if (axis < 0 || axis >= d->ndim)
        return eq_err_set(err, EQ_ERR_INVALID, "group axis %d outside a rank-%d tensor", axis, d->ndim);
    int64_t ext = d->shape[axis];
    if (ngroups < 1 || ext < 1 || ext % ngroups != 0)
        return eq_err_set(err, EQ_ERR_INVALID, "%lld groups do not divide axis %d of extent %lld",
                          (long long)ngroups, axis, (long long)ext);
    int64_t inner = 1;
    for (int i = axis + 1; i < d->ndim; i++) inner *= d->shape[i];
    out->inner = inner ? inner : 1;
    out->period = ext;
    out->block = ext / ngroups;
    return EQ_OK;
}
