/*
 * core/safetensors.h -- safetensors files, compatible with PyTorch's
 * (safetensors.torch.save_file / load_file).
 *
 * Format: u64 little-endian header length N, N bytes of JSON header
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
 *  ..., "__metadata__": {"key": "string", ...}}, then the data buffer.
 * Offsets are relative to the buffer, end - begin == numel * dtype size,
 * tensors tile the buffer without holes or overlaps (as the reference
 * implementation checks).  Reading validates all of that against the real
 * file size before touching data: a truncated, oversized or inconsistent
 * file is rejected with a clear error and never read past its end.
 * Writing goes to a temporary file in the same directory, fsync, rename,
 * fsync of the directory: a crash never leaves a half-written file.
 */
#ifndef EQ_SAFETENSORS_H
#define EQ_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "core/tensor.h"

/* ---- reading ------------------------------------------------------------ */

typedef struct eq_st_file eq_st_file; /* opaque: a validated, loaded file */

typedef struct eq_st_limits {
    uint64_t max_header_bytes; /* 0: default 100 MB (reference implementation's limit) */
    uint64_t max_file_bytes;   /* 0: no limit */
} eq_st_limits;

/* Open and validate a file (limits may be NULL).  Caller owns the result.
 * A regular file whose data starts on an 8-byte boundary (all that the
 * reference and eq write) is mapped read-only rather than read (no copy of
 * the file); it must then not be truncated in place while open (eq only
 * replaces such files by rename): see s_map in safetensors.c. */
eq_st_file *eq_st_open(const char *path, const eq_st_limits *limits, eq_err *err);
/* Validate a file image in memory (copied; `bytes` may be freed after). */
eq_st_file *eq_st_parse(const void *bytes, size_t len, const eq_st_limits *limits, eq_err *err);
void eq_st_close(eq_st_file **f_p);

/* Tensors in file order (ascending data offset). */
size_t eq_st_count(const eq_st_file *f);
const char *eq_st_name(const eq_st_file *f, size_t i);
/* Index of the tensor called `name`, or -1. */
long eq_st_find(const eq_st_file *f, const char *name);
/* Descriptor (contiguous) and pointer to the raw little-endian bytes, valid
 * until eq_st_close.  *nbytes may be NULL. */
const eq_tensor_desc *eq_st_desc(const eq_st_file *f, size_t i);
const void *eq_st_data(const eq_st_file *f, size_t i, size_t *nbytes);
/* Convenience: find `name`, check it is F32 and has `numel` elements (any
 * shape), and return its data; otherwise NULL with err naming the tensor. */
const float *eq_st_get_f32(const eq_st_file *f, const char *name, int64_t numel, eq_err *err);

/* Index of the first of the n little-endian F32 values at `data` (any
 * alignment) that is NaN or infinite, or -1 when all are finite
 * (vectorised: a 94 MB checkpoint is checked in milliseconds). */
int64_t eq_st_first_nonfinite_f32(const void *data, size_t n);

/* __metadata__ entries (string values only, as the format requires). */
size_t eq_st_meta_count(const eq_st_file *f);
const char *eq_st_meta_key(const eq_st_file *f, size_t i);
const char *eq_st_meta_value(const eq_st_file *f, size_t i);
const char *eq_st_meta_get(const eq_st_file *f, const char *key); /* NULL if absent */

/* ---- writing ------------------------------------------------------------ */

typedef struct eq_st_writer eq_st_writer; /* opaque: tensors collected for one file */

eq_st_writer *eq_st_writer_new(void);
void eq_st_writer_destroy(eq_st_writer **w_p);
/* Add a tensor (data is referenced, not copied: keep it alive until
 * eq_st_writer_save returns).  Names must be unique and non-empty. */
eq_status eq_st_writer_add(eq_st_writer *w, const char *name, eq_dtype dt, int ndim,
                           const int64_t *shape, const void *data, eq_err *err);
eq_status eq_st_writer_meta(eq_st_writer *w, const char *key, const char *value, eq_err *err);
/* Write atomically to `path` (temporary file, fsync, rename, dir fsync). */
eq_status eq_st_writer_save(eq_st_writer *w, const char *path, eq_err *err);

#endif
