/*
 * core/safetensors.c -- safetensors reading (validated) and atomic writing.
 *
 * Reading (eq_st_open): a regular file whose data buffer starts on an 8-byte
 * boundary of the file (every file the reference writer or eq writes: the
 * header is padded to 8) is mapped read-only (MAP_PRIVATE, pre-faulted);
 * otherwise (mmap refused, an odd header length) and for eq_st_parse, the
 * image is read into one allocation placed so that the data buffer starts
 * on a 64-byte boundary.  Either way a tensor's address has the alignment
 * of its offset in the buffer up to 8 bytes (the reference writer keeps
 * every tensor aligned to its dtype inside the buffer, so eq_st_get_f32 can
 * hand out float pointers).  Mapping instead of reading saves a fresh
 * allocation of the file's size, whose every page faulted (bench/ckpt: ~45 %
 * of a checkpoint load).  The header is parsed with core/json and checked in
 * full before any data pointer is handed out: field types, dtypes, shapes,
 * byte counts, bounds, and that the tensors tile the buffer exactly (no
 * holes, no overlaps), as the reference implementation requires.
 *
 * Writing follows the reference (Rust `safetensors::serialize`, used by
 * safetensors.torch.save_file) byte for byte: tensors sorted by dtype in
 * the reference's Dtype enum order, descending (I64, F64, F32, I32, BF16,
 * F16, I16, I8, U8, BOOL -- largest alignment first, so every tensor stays
 * aligned), then by name (bytewise); compact JSON header with
 * "__metadata__" first (metadata in insertion order; the reference uses a
 * hash map, so readers must not care), each entry {"dtype","shape",
 * "data_offsets"}; header padded with spaces to a multiple of 8 bytes.
 * Data is written as stored in memory: this code assumes a little-endian
 * host (checked at compile time).
 */
#include "core/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/file.h"
#include "core/json.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "core/safetensors.c assumes a little-endian host"
#endif

#define S_DEFAULT_MAX_HEADER 100000000ull /* the reference's MAX_HEADER_SIZE */
#define S_ALIGN 64

typedef struct s_tensor {
    const char *name; /* in the header document */
    eq_tensor_desc desc;
    uint64_t begin, end; /* data_offsets */
} s_tensor;

struct eq_st_file {
    unsigned char *mem;       /* allocation holding the file image (NULL when mapped) */
    void *map;                /* the file mapped read-only (NULL when read) */
    size_t map_len;
    const unsigned char *buf; /* data buffer (after the header): 64-byte aligned when read, 8 when mapped */
    uint64_t buf_len;
    eq_json_doc *doc; /* header; owns the name and metadata strings */
    s_tensor *t;      /* in file order (ascending offsets) */
    size_t n;
    size_t *by_name; /* indices of t sorted by name */
    const char **meta_k, **meta_v;
    size_t nmeta;
    char *label; /* path or "<memory>", for messages */
};

/* ---- reading ------------------------------------------------------------ */

static uint64_t s_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static eq_status s_fail(const eq_st_file *f, eq_err *err, eq_status code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static eq_status s_fail(const eq_st_file *f, eq_err *err, eq_status code, const char *fmt, ...)
{
    if (err) {
        char msg[EQ_ERR_MSG_LEN];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        eq_err_set(err, code, "%s: %s", f->label, msg);
    }
    return code;
}

/* Shape as "[2, 3]" for messages. */
static const char *s_shape_str(const eq_tensor_desc *d, char *buf, size_t cap)
{
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < d->ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%" PRId64, i ? ", " : "", d->shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
    return buf;
}

/* Non-negative integer literal, or -1. */
static int64_t s_uint(const eq_json *v)
{
    int64_t i;
    if (!eq_json_int(v, &i) || i < 0) return -1;
    return i;
}

static eq_status s_tensor_entry(eq_st_file *f, const char *name, const eq_json *e, s_tensor *t, eq_err *err)
{
    if (eq_json_typeof(e) != EQ_JSON_OBJECT)
        return s_fail(f, err, EQ_ERR_CORRUPT, "tensor '%s': entry is %s, expected an object", name,
                      eq_json_type_name(eq_json_typeof(e)));
    const eq_json *dt = NULL, *shape = NULL, *offs = NULL;
    for (size_t i = 0; i < eq_json_len(e); i++) {
        const char *k = eq_json_key_at(e, i, NULL);
        const eq_json **slot = strcmp(k, "dtype") == 0          ? &dt
                               : strcmp(k, "shape") == 0        ? &shape
                               : strcmp(k, "data_offsets") == 0 ? &offs
                                                                : NULL;
        if (!slot) return s_fail(f, err, EQ_ERR_CORRUPT, "tensor '%s': unknown field \"%s\"", name, k);
        if (*slot) return s_fail(f, err, EQ_ERR_CORRUPT, "tensor '%s': duplicate field \"%s\"", name, k);
        *slot = eq_json_at(e, i);
    }
    if (!dt) return s_fail(f, err, EQ_ERR_CORRUPT, "tensor '%s': missing \"dtype\"", name);
    if (!shape) return s_fail(f, err, EQ_ERR_CORRUPT, "tensor '%s': missing \"shape\"", name);
    if (!offs) return s_fail(f, err, EQ_ERR_CORRUPT, "tensor '%s': missing \"data_offsets\"", name);
    size_t dlen;
    const char *ds = eq_json_str(dt, &dlen);
    if (!ds)
        return s_fail(f, err, EQ_ERR_CORRUPT, "tensor '%s': \"dtype\" is %s, expected a string", name,
                      eq_json_type_name(eq_json_typeof(dt)));
    eq_dtype dtype;
    if (eq_dtype_parse(ds, dlen, &dtype) != 0)
        return s_fail(f, err, EQ_ERR_UNSUPPORTED, "tensor '%s': unsupported dtype \"%.40s\"", name, ds);
    if (eq_json_typeof(shape) != EQ_JSON_ARRAY)
        return s_fail(f, err, EQ_ERR_CORRUPT, "tensor '%s': \"shape\" is %s, expected an array", name,
                      eq_json_type_name(eq_json_typeof(shape)));
    size_t ndim = eq_json_len(shape);
    if (ndim > EQ_TENSOR_MAX_DIMS)
        return s_fail(f, err, EQ_ERR_UNSUPPORTED, "tensor '%s': %zu dimensions, at most %d are supported", name, ndim,
                      EQ_TENSOR_MAX_DIMS);
    int64_t dims[EQ_TENSOR_MAX_DIMS];
    for (size_t i = 0; i < ndim; i++) {
        dims[i] = s_uint(eq_json_at(shape, i));
        if (dims[i] < 0)
            return s_fail(f, err, EQ_ERR_CORRUPT, "tensor '%s': shape[%zu] is not a non-negative integer", name, i);
    }
    size_t esize = eq_dtype_size(dtype);
    if (eq_shape_numel((int)ndim, dims, INT64_MAX / (int64_t)esize) < 0)
        return s_fail(f, err, EQ_ERR_CORRUPT, "tensor '%s': shape is too large (byte size overflows)", name);
    if (eq_tensor_desc_init(&t->desc, dtype, EQ_LAYOUT_ANY, (int)ndim, dims, err) != EQ_OK)
        return s_fail(f, err, EQ_ERR_CORRUPT, "tensor '%s': invalid shape", name);
    if (eq_json_typeof(offs) != EQ_JSON_ARRAY || eq_json_len(offs) != 2)
        return s_fail(f, err, EQ_ERR_CORRUPT, "tensor '%s': \"data_offsets\" must be an array [begin, end]", name);
    int64_t b = s_uint(eq_json_at(offs, 0)), e2 = s_uint(eq_json_at(offs, 1));
    if (b < 0 || e2 < 0)
        return s_fail(f, err, EQ_ERR_CORRUPT, "tensor '%s': \"data_offsets\" must be non-negative integers", name);
    char sbuf[160];
    int64_t nbytes = eq_tensor_nbytes(&t->desc);
    if (e2 < b || e2 - b != nbytes)
        return s_fail(f, err, EQ_ERR_CORRUPT,
                      "tensor '%s': data_offsets [%" PRId64 ", %" PRId64 "] do not match shape %s x %s (%" PRId64
                      " bytes)",
                      name, b, e2, s_shape_str(&t->desc, sbuf, sizeof sbuf), eq_dtype_name(dtype), nbytes);
    if ((uint64_t)e2 > f->buf_len)
        return s_fail(f, err, EQ_ERR_CORRUPT,
                      "tensor '%s': data_offsets [%" PRId64 ", %" PRId64 "] run past the end of the data (%" PRIu64
                      " bytes)",
                      name, b, e2, f->buf_len);
    t->name = name;
    t->begin = (uint64_t)b;
    t->end = (uint64_t)e2;
    return EQ_OK;
}

static int s_by_offset(const void *a, const void *b)
{
    const s_tensor *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Sort a[0..n) (indices into names[]) by name: a bottom-up merge sort
 * (qsort has no context argument, and globals are out).  tmp: n slots. */
static void s_sort_idx(size_t *a, size_t *tmp, size_t n, const char *const *names)
{
    for (size_t i = 0; i < n; i++) a[i] = i;
    for (size_t w = 1; w < n; w *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) tmp[k++] = strcmp(names[a[j]], names[a[i]]) < 0 ? a[j++] : a[i++];
            while (i < mid) tmp[k++] = a[i++];
            while (j < hi) tmp[k++] = a[j++];
        }
        memcpy(a, tmp, n * sizeof *a);
    }
}

static eq_status s_metadata(eq_st_file *f, const eq_json *m, eq_err *err)
{
    if (eq_json_typeof(m) == EQ_JSON_NULL) return EQ_OK; /* serde's Option: null means none */
    if (eq_json_typeof(m) != EQ_JSON_OBJECT)
        return s_fail(f, err, EQ_ERR_CORRUPT, "\"__metadata__\" is %s, expected an object of strings",
                      eq_json_type_name(eq_json_typeof(m)));
    size_t n = eq_json_len(m);
    f->meta_k = eq_calloc_array(n, sizeof *f->meta_k);
    f->meta_v = eq_calloc_array(n, sizeof *f->meta_v);
    if (!f->meta_k || !f->meta_v) return s_fail(f, err, EQ_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        size_t kl, vl;
        const char *k = eq_json_key_at(m, i, &kl);
        const eq_json *v = eq_json_at(m, i);
        const char *s = eq_json_str(v, &vl);
        if (!s)
            return s_fail(f, err, EQ_ERR_CORRUPT, "metadata '%s': value is %s, expected a string", k,
                          eq_json_type_name(eq_json_typeof(v)));
        if (strlen(k) != kl || strlen(s) != vl)
            return s_fail(f, err, EQ_ERR_UNSUPPORTED, "metadata '%s': contains a NUL character", k);
        f->meta_k[i] = k;
        f->meta_v[i] = s;
    }
    f->nmeta = n;
    /* duplicate keys, in O(n log n): headers come from untrusted files */
    size_t *idx = eq_calloc_array(n, sizeof *idx), *tmp = eq_calloc_array(n, sizeof *tmp);
    eq_status rc = EQ_OK;
    if (!idx || !tmp)
        rc = s_fail(f, err, EQ_ERR_NOMEM, "out of memory");
    else {
        s_sort_idx(idx, tmp, n, f->meta_k);
        for (size_t i = 1; i < n && rc == EQ_OK; i++)
            if (strcmp(f->meta_k[idx[i - 1]], f->meta_k[idx[i]]) == 0)
                rc = s_fail(f, err, EQ_ERR_CORRUPT, "metadata '%s': duplicate key", f->meta_k[idx[i]]);
    }
    free(idx);
    free(tmp);
    return rc;
}

/* Validate the header of the file image `img` (f->buf, f->buf_len set). */
static eq_status s_validate(eq_st_file *f, const unsigned char *img, eq_err *err)
{
    uint64_t hlen = s_le64(img);
    const char *htext = (const char *)img + 8;
    eq_err jerr = { 0 };
    eq_json_opts jo = { .max_depth = 16 };
    f->doc = eq_json_parse(htext, (size_t)hlen, &jo, &jerr);
    if (!f->doc)
        return s_fail(f, err, jerr.code == EQ_ERR_NOMEM ? EQ_ERR_NOMEM : EQ_ERR_PARSE, "header: %s", jerr.msg);
    const eq_json *root = eq_json_root(f->doc);
    if (eq_json_typeof(root) != EQ_JSON_OBJECT)
        return s_fail(f, err, EQ_ERR_CORRUPT, "header is a JSON %s, expected an object",
                      eq_json_type_name(eq_json_typeof(root)));
    size_t nmem = eq_json_len(root), nt = 0;
    f->t = eq_calloc_array(nmem, sizeof *f->t);
    f->by_name = eq_calloc_array(nmem, sizeof *f->by_name);
    size_t *tmp = eq_calloc_array(nmem, sizeof *tmp);
    if (!f->t || !f->by_name || !tmp) {
        free(tmp);
        return s_fail(f, err, EQ_ERR_NOMEM, "out of memory");
    }
    int seen_meta = 0;
    eq_status rc = EQ_OK;
    for (size_t i = 0; i < nmem && rc == EQ_OK; i++) {
        size_t kl;
        const char *k = eq_json_key_at(root, i, &kl);
        if (strlen(k) != kl) {
            rc = s_fail(f, err, EQ_ERR_UNSUPPORTED, "tensor '%s': name contains a NUL character", k);
        } else if (strcmp(k, "__metadata__") == 0) {
            if (seen_meta++)
                rc = s_fail(f, err, EQ_ERR_CORRUPT, "duplicate \"__metadata__\"");
            else
                rc = s_metadata(f, eq_json_at(root, i), err);
        } else
            rc = s_tensor_entry(f, k, eq_json_at(root, i), &f->t[nt++], err);
    }
    f->n = nt;
    if (rc == EQ_OK) {
        /* file order, then names */
        qsort(f->t, nt, sizeof *f->t, s_by_offset);
        const char **names = eq_calloc_array(nt, sizeof *names);
        if (!names) {
            free(tmp);
            return s_fail(f, err, EQ_ERR_NOMEM, "out of memory");
        }
        for (size_t i = 0; i < nt; i++) names[i] = f->t[i].name;
        s_sort_idx(f->by_name, tmp, nt, names);
        free(names);
        for (size_t i = 1; i < nt; i++)
            if (strcmp(f->t[f->by_name[i - 1]].name, f->t[f->by_name[i]].name) == 0) {
                rc = s_fail(f, err, EQ_ERR_CORRUPT, "tensor '%s': duplicate name", f->t[f->by_name[i]].name);
                break;
            }
    }
    free(tmp);
    if (rc != EQ_OK) return rc;
    /* the tensors must tile the data buffer exactly */
    uint64_t pos = 0;
    for (size_t i = 0; i < nt; i++) {
        const s_tensor *t = &f->t[i];
        if (t->begin > pos)
            return s_fail(f, err, EQ_ERR_CORRUPT,
                          "tensor '%s': data starts at %" PRIu64 " but the previous tensor ends at %" PRIu64
                          " (a hole in the data)",
                          t->name, t->begin, pos);
        if (t->begin < pos)
            return s_fail(f, err, EQ_ERR_CORRUPT,
                          "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] overlap tensor '%s'", t->name,
                          t->begin, t->end, f->t[i - 1].name);
        pos = t->end;
    }
    if (pos != f->buf_len)
        return s_fail(f, err, EQ_ERR_CORRUPT,
                      "the data buffer has %" PRIu64 " bytes but the tensors cover %" PRIu64 " (%" PRIu64
                      " bytes belong to no tensor)",
                      f->buf_len, pos, f->buf_len - pos);
    return EQ_OK;
}

/* Check the 8-byte length against the sizes and limits.  `len`: file size. */
static eq_status s_check_len(eq_st_file *f, const unsigned char first8[8], uint64_t len, uint64_t max_header,
                             eq_err *err)
{
    if (len < 8)
        return s_fail(f, err, EQ_ERR_CORRUPT, "file is %" PRIu64 " bytes, too short for the 8-byte header length",
                      len);
    uint64_t hlen = s_le64(first8);
    if (hlen > max_header)
        return s_fail(f, err, EQ_ERR_LIMIT, "header length %" PRIu64 " exceeds the limit of %" PRIu64 " bytes", hlen,
                      max_header);
    if (hlen > len - 8)
        return s_fail(f, err, EQ_ERR_CORRUPT, "header length %" PRIu64 " exceeds the %" PRIu64
                      " bytes after the length field (truncated file?)", hlen, len - 8);
    return EQ_OK;
}

static eq_st_file *s_new(const char *label, eq_err *err)
{
    eq_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->label = strdup(label))) {
        free(f);
        eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory", label);
        return NULL;
    }
    return f;
}

/* Allocate f->mem for a file of `len` bytes whose header is hlen bytes,
 * so that the data buffer lands on an S_ALIGN boundary; returns where the
 * image starts. */
static unsigned char *s_alloc_image(eq_st_file *f, uint64_t len, uint64_t hlen, eq_err *err)
{
    if (len > SIZE_MAX - 2 * S_ALIGN) {
        s_fail(f, err, EQ_ERR_NOMEM, "file of %" PRIu64 " bytes does not fit in memory", len);
        return NULL;
    }
    void *p = NULL;
    if (posix_memalign(&p, S_ALIGN, (size_t)len + S_ALIGN) != 0) {
        s_fail(f, err, EQ_ERR_NOMEM, "out of memory loading %" PRIu64 " bytes", len);
        return NULL;
    }
    f->mem = p;
    size_t shift = (S_ALIGN - (size_t)((8 + hlen) % S_ALIGN)) % S_ALIGN;
    return f->mem + shift;
}

static eq_status s_finish(eq_st_file *f, const unsigned char *img, uint64_t len, eq_err *err)
{
    uint64_t hlen = s_le64(img);
    f->buf = img + 8 + hlen;
    f->buf_len = len - 8 - hlen;
    return s_validate(f, img, err);
}

static uint64_t s_max_header(const eq_st_limits *l)
{
    return l && l->max_header_bytes ? l->max_header_bytes : S_DEFAULT_MAX_HEADER;
}

eq_st_file *eq_st_parse(const void *bytes, size_t len, const eq_st_limits *limits, eq_err *err)
{
    eq_st_file *f = s_new("<memory>", err);
    if (!f) return NULL;
    uint64_t maxh = s_max_header(limits);
    eq_status rc;
    if (limits && limits->max_file_bytes && len > limits->max_file_bytes)
        rc = s_fail(f, err, EQ_ERR_LIMIT, "%zu bytes exceed the limit of %" PRIu64 " bytes", len,
                    limits->max_file_bytes);
    else
        rc = s_check_len(f, bytes, len, maxh, err);
    if (rc == EQ_OK) {
        unsigned char *img = s_alloc_image(f, len, s_le64(bytes), err);
        if (!img)
            rc = err ? err->code : EQ_ERR_NOMEM;
        else {
            memcpy(img, bytes, len);
            rc = s_finish(f, img, len, err);
        }
    }
    if (rc != EQ_OK) eq_st_close(&f);
    return f;
}

static eq_status s_read_at(eq_st_file *f, int fd, unsigned char *dst, uint64_t n, uint64_t off, eq_err *err)
{
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : (size_t)n;
        ssize_t r = pread(fd, dst, chunk, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return s_fail(f, err, EQ_ERR_IO, "read: %s", strerror(errno));
        if (r == 0) return s_fail(f, err, EQ_ERR_IO, "read: file shrank while being read");
        dst += r;
        off += (uint64_t)r;
        n -= (uint64_t)r;
    }
    return EQ_OK;
}

/* Map the `len` bytes of the regular file `fd` (header length hlen, both
 * validated by s_check_len against the fstat size) read-only; NULL (nothing
 * reported) where the caller should read instead: mmap refused, or a data
 * buffer that would start off an 8-byte boundary (reading places it on a
 * 64-byte one, and eq_st_get_f32 must not start refusing such a file).
 *
 * A mapping reads the file's pages as they are when touched, so a file
 * truncated after mmap would make a later access raise SIGBUS.  Before any
 * byte is touched, fstat is asked again: a file that shrank between the
 * first fstat and the mapping is refused by the caller (size differs from
 * len) -- every offset s_validate accepts is then inside the mapped size.
 * What remains is another process truncating the file in place while it
 * is open here.  That is accepted: nothing in eq does it (eq writes every
 * safetensors file to a temporary name and renames it over the old one, so
 * a mapped file's inode is never rewritten; a replaced one stays whole
 * while mapped), and a file rewritten in place under a reader was never
 * safe (the read path could copy half an old and half a new tensor);
 * avoiding it would cost the copy this mapping saves. */
static const unsigned char *s_map(eq_st_file *f, int fd, uint64_t len, uint64_t hlen)
{
    if ((8 + hlen) % 8 != 0 || len == 0 || len > SIZE_MAX) return NULL;
    int flags = MAP_PRIVATE;
#ifdef MAP_POPULATE
    flags |= MAP_POPULATE; /* one call maps the cached pages: no fault per page */
#endif
    void *p = mmap(NULL, (size_t)len, PROT_READ, flags, fd, 0);
    if (p == MAP_FAILED) return NULL;
    f->map = p;
    f->map_len = (size_t)len;
    return p;
}

eq_st_file *eq_st_open(const char *path, const eq_st_limits *limits, eq_err *err)
{
    eq_st_file *f = s_new(path, err);
    if (!f) return NULL;
    uint64_t maxh = s_max_header(limits);
    eq_status rc = EQ_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0) {
        int e = errno;
        rc = s_fail(f, err, e == ENOENT ? EQ_ERR_NOTFOUND : EQ_ERR_IO, "open: %s", strerror(e));
    } else if (fstat(fd, &st) != 0) {
        rc = s_fail(f, err, EQ_ERR_IO, "stat: %s", strerror(errno));
    } else if (!S_ISREG(st.st_mode)) {
        rc = s_fail(f, err, EQ_ERR_IO, "not a regular file");
    } else if (limits && limits->max_file_bytes && (uint64_t)st.st_size > limits->max_file_bytes) {
        rc = s_fail(f, err, EQ_ERR_LIMIT, "file is %lld bytes, over the limit of %" PRIu64 " bytes",
                    (long long)st.st_size, limits->max_file_bytes);
    } else {
        uint64_t len = (uint64_t)st.st_size;
        unsigned char first8[8] = { 0 };
        if (len >= 8) rc = s_read_at(f, fd, first8, 8, 0, err);
        if (rc == EQ_OK) rc = s_check_len(f, first8, len, maxh, err);
        const unsigned char *img = rc == EQ_OK ? s_map(f, fd, len, s_le64(first8)) : NULL;
        struct stat st2;
        if (img && fstat(fd, &st2) != 0)
            rc = s_fail(f, err, EQ_ERR_IO, "stat: %s", strerror(errno));
        else if (img && (uint64_t)st2.st_size != len)
            rc = s_fail(f, err, EQ_ERR_IO, "file changed while being read (%" PRIu64 " bytes, then %lld)", len,
                        (long long)st2.st_size);
        unsigned char *mem = NULL;
        if (rc == EQ_OK && !img) {
            if (!(mem = s_alloc_image(f, len, s_le64(first8), err))) rc = err ? err->code : EQ_ERR_NOMEM;
            if (rc == EQ_OK) rc = s_read_at(f, fd, mem, len, 0, err);
            img = mem;
        }
        if (rc == EQ_OK && memcmp(img, first8, 8) != 0) rc = s_fail(f, err, EQ_ERR_IO, "file changed while being read");
        if (rc == EQ_OK) rc = s_finish(f, img, len, err);
    }
    if (fd >= 0) close(fd);
    if (rc != EQ_OK) eq_st_close(&f);
    return f;
}

void eq_st_close(eq_st_file **f_p)
{
    if (!f_p || !*f_p) return;
    eq_st_file *f = *f_p;
    free(f->mem);
    if (f->map) munmap(f->map, f->map_len);
    eq_json_doc_destroy(&f->doc);
    free(f->t);
    free(f->by_name);
    free(f->meta_k);
    free(f->meta_v);
    free(f->label);
    free(f);
    *f_p = NULL;
}

size_t eq_st_count(const eq_st_file *f) { return f ? f->n : 0; }

const char *eq_st_name(const eq_st_file *f, size_t i) { return f && i < f->n ? f->t[i].name : NULL; }

long eq_st_find(const eq_st_file *f, const char *name)
{
    if (!f || !name) return -1;
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->t[f->by_name[mid]].name, name);
        if (c == 0) return (long)f->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

const eq_tensor_desc *eq_st_desc(const eq_st_file *f, size_t i) { return f && i < f->n ? &f->t[i].desc : NULL; }

const void *eq_st_data(const eq_st_file *f, size_t i, size_t *nbytes)
{
    if (!f || i >= f->n) return NULL;
    if (nbytes) *nbytes = (size_t)(f->t[i].end - f->t[i].begin);
    return f->buf + f->t[i].begin;
}

const float *eq_st_get_f32(const eq_st_file *f, const char *name, int64_t numel, eq_err *err)
{
    if (!f || !name) {
        eq_err_set(err, EQ_ERR_INVALID, "eq_st_get_f32: NULL argument");
        return NULL;
    }
    long i = eq_st_find(f, name);
    if (i < 0) {
        s_fail(f, err, EQ_ERR_NOTFOUND, "tensor '%s' not found", name);
        return NULL;
    }
    const eq_tensor_desc *d = &f->t[i].desc;
    char sbuf[160];
    if (d->dtype != EQ_DT_F32) {
        s_fail(f, err, EQ_ERR_INVALID, "tensor '%s' is %s, expected F32", name, eq_dtype_name(d->dtype));
        return NULL;
    }
    if (eq_tensor_numel(d) != numel) {
        s_fail(f, err, EQ_ERR_INVALID, "tensor '%s' has shape %s (%" PRId64 " elements), expected %" PRId64
               " elements", name, s_shape_str(d, sbuf, sizeof sbuf), eq_tensor_numel(d), numel);
        return NULL;
    }
    const unsigned char *p = f->buf + f->t[i].begin;
    if ((uintptr_t)p % sizeof(float) != 0) {
        s_fail(f, err, EQ_ERR_UNSUPPORTED, "tensor '%s': data at offset %" PRIu64 " is not 4-byte aligned", name,
               f->t[i].begin);
        return NULL;
    }
    return (const float *)(const void *)p;
}

size_t eq_st_meta_count(const eq_st_file *f) { return f ? f->nmeta : 0; }
const char *eq_st_meta_key(const eq_st_file *f, size_t i) { return f && i < f->nmeta ? f->meta_k[i] : NULL; }
const char *eq_st_meta_value(const eq_st_file *f, size_t i) { return f && i < f->nmeta ? f->meta_v[i] : NULL; }

const char *eq_st_meta_get(const eq_st_file *f, const char *key)
{
    if (!f || !key) return NULL;
    for (size_t i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta_k[i], key) == 0) return f->meta_v[i];
    return NULL;
}

/* An integer test on the raw words (exponent bits all set: NaN or +-inf),
 * OR-ed over fixed blocks so that gcc -O2 vectorises it (isfinite per
 * element did not: ~25 % of a checkpoint load in bench/ckpt); a block with
 * a hit is scanned again for the index. */
#define S_FIN_BLOCK 1024
int64_t eq_st_first_nonfinite_f32(const void *data, size_t n)
{
    const unsigned char *p = data;
    size_t i = 0;
    for (; i < n; i += S_FIN_BLOCK) {
        size_t m = n - i < S_FIN_BLOCK ? n - i : S_FIN_BLOCK;
        const unsigned char *q = p + 4 * i;
        uint32_t hit = 0;
        if (m == S_FIN_BLOCK) /* constant trip count: vectorised without an epilogue */
            for (size_t k = 0; k < S_FIN_BLOCK; k++) {
                uint32_t w;
                memcpy(&w, q + 4 * k, 4);
                hit |= (w & 0x7f800000u) == 0x7f800000u;
            }
        else
            hit = 1; /* the short tail: scanned below */
        if (!hit) continue;
        for (size_t k = 0; k < m; k++) {
            uint32_t w;
            memcpy(&w, q + 4 * k, 4);
            if ((w & 0x7f800000u) == 0x7f800000u) return (int64_t)(i + k);
        }
    }
    return -1;
}

/* ---- writing ------------------------------------------------------------ */

typedef struct s_wtensor {
    char *name;
    eq_tensor_desc desc;
    const void *data;
    uint64_t nbytes;
} s_wtensor;

struct eq_st_writer {
    s_wtensor *t;
    size_t n, cap;
    char **mk, **mv;
    size_t nmeta, mcap;
};

/* Rank of a dtype in the reference's Dtype enum (its sort key). */
static int s_dtype_rank(eq_dtype dt)
{
    switch (dt) {
    case EQ_DT_BOOL: return 0;
    case EQ_DT_U8: return 1;
    case EQ_DT_I8: return 2;
    case EQ_DT_I16: return 5;
    case EQ_DT_F16: return 7;
    case EQ_DT_BF16: return 8;
    case EQ_DT_I32: return 9;
    case EQ_DT_F32: return 11;
    case EQ_DT_F64: return 12;
    case EQ_DT_I64: return 13;
    default: return -1;
    }
}

static int s_utf8_ok(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p;
        int n;
        if (c < 0x80) {
            p++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF)
            n = 1;
        else if (c >= 0xE0 && c <= 0xEF)
            n = 2;
        else if (c >= 0xF0 && c <= 0xF4)
            n = 3;
        else
            return 0;
        for (int i = 1; i <= n; i++)
            if ((p[i] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && p[1] < 0xA0) return 0;
        if (c == 0xED && p[1] > 0x9F) return 0;
        if (c == 0xF0 && p[1] < 0x90) return 0;
        if (c == 0xF4 && p[1] > 0x8F) return 0;
        p += n + 1;
    }
    return 1;
}

eq_st_writer *eq_st_writer_new(void) { return calloc(1, sizeof(eq_st_writer)); }

void eq_st_writer_destroy(eq_st_writer **w_p)
{
    if (!w_p || !*w_p) return;
    eq_st_writer *w = *w_p;
    for (size_t i = 0; i < w->n; i++) free(w->t[i].name);
    for (size_t i = 0; i < w->nmeta; i++) {
        free(w->mk[i]);
        free(w->mv[i]);
    }
    free(w->t);
    free(w->mk);
    free(w->mv);
    free(w);
    *w_p = NULL;
}

eq_status eq_st_writer_add(eq_st_writer *w, const char *name, eq_dtype dt, int ndim, const int64_t *shape,
                           const void *data, eq_err *err)
{
    if (!w || !name) return eq_err_set(err, EQ_ERR_INVALID, "eq_st_writer_add: NULL argument");
    if (!*name) return eq_err_set(err, EQ_ERR_INVALID, "safetensors: empty tensor name");
    if (strcmp(name, "__metadata__") == 0)
        return eq_err_set(err, EQ_ERR_INVALID, "safetensors: tensor name \"__metadata__\" is reserved");
    if (!s_utf8_ok(name)) return eq_err_set(err, EQ_ERR_INVALID, "safetensors: tensor name is not valid UTF-8");
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return eq_err_set(err, EQ_ERR_INVALID, "safetensors: duplicate tensor name '%s'", name);
    if (s_dtype_rank(dt) < 0) return eq_err_set(err, EQ_ERR_INVALID, "safetensors: tensor '%s': invalid dtype %d", name, (int)dt);
    eq_tensor_desc d;
    eq_status rc = eq_tensor_desc_init(&d, dt, EQ_LAYOUT_ANY, ndim, shape, err);
    if (rc != EQ_OK) {
        eq_err_prefix(err, "safetensors: tensor '%s': ", name);
        return rc;
    }
    int64_t nbytes = eq_tensor_nbytes(&d);
    if (nbytes > 0 && !data) return eq_err_set(err, EQ_ERR_INVALID, "safetensors: tensor '%s': NULL data", name);
    if (w->n == w->cap) {
        size_t ncap = w->cap ? 2 * w->cap : 16;
        s_wtensor *nt = realloc(w->t, ncap * sizeof *nt);
        if (!nt) return eq_err_set(err, EQ_ERR_NOMEM, "out of memory");
        w->t = nt;
        w->cap = ncap;
    }
    char *copy = strdup(name);
    if (!copy) return eq_err_set(err, EQ_ERR_NOMEM, "out of memory");
    w->t[w->n++] = (s_wtensor){ .name = copy, .desc = d, .data = data, .nbytes = (uint64_t)nbytes };
    return EQ_OK;
}

eq_status eq_st_writer_meta(eq_st_writer *w, const char *key, const char *value, eq_err *err)
{
    if (!w || !key || !value) return eq_err_set(err, EQ_ERR_INVALID, "eq_st_writer_meta: NULL argument");
    if (!s_utf8_ok(key) || !s_utf8_ok(value))
        return eq_err_set(err, EQ_ERR_INVALID, "safetensors: metadata '%s' is not valid UTF-8", key);
    for (size_t i = 0; i < w->nmeta; i++)
        if (strcmp(w->mk[i], key) == 0)
            return eq_err_set(err, EQ_ERR_INVALID, "safetensors: duplicate metadata key '%s'", key);
    if (w->nmeta == w->mcap) {
        size_t ncap = w->mcap ? 2 * w->mcap : 8;
        char **nk = realloc(w->mk, ncap * sizeof *nk);
        if (!nk) return eq_err_set(err, EQ_ERR_NOMEM, "out of memory");
        w->mk = nk;
        char **nv = realloc(w->mv, ncap * sizeof *nv);
        if (!nv) return eq_err_set(err, EQ_ERR_NOMEM, "out of memory");
        w->mv = nv;
        w->mcap = ncap;
    }
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return eq_err_set(err, EQ_ERR_NOMEM, "out of memory");
    }
    w->mk[w->nmeta] = k;
    w->mv[w->nmeta++] = v;
    return EQ_OK;
}

/* Growable byte buffer for the header. */
typedef struct s_buf {
    char *p;
    size_t n, cap;
    int oom;
} s_buf;

static void s_put(s_buf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->cap - b->n < n + 1) {
        size_t ncap = b->cap ? b->cap : 1024;
        while (ncap - b->n < n + 1) ncap *= 2;
        char *np = realloc(b->p, ncap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void s_puts(s_buf *b, const char *s) { s_put(b, s, strlen(s)); }

/* JSON string as serde_json writes it: escapes " \ and control characters
 * (\b \f \n \r \t, others \u00XX); UTF-8 passes through. */
static void s_put_jstr(s_buf *b, const char *s)
{
    s_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        switch (*p) {
        case '"': s_put(b, "\\\"", 2); break;
        case '\\': s_put(b, "\\\\", 2); break;
        case '\b': s_put(b, "\\b", 2); break;
        case '\f': s_put(b, "\\f", 2); break;
        case '\n': s_put(b, "\\n", 2); break;
        case '\r': s_put(b, "\\r", 2); break;
        case '\t': s_put(b, "\\t", 2); break;
        default:
            if (*p < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", *p);
                s_put(b, esc, 6);
            } else
                s_put(b, (const char *)p, 1);
        }
    }
    s_put(b, "\"", 1);
}

static int s_wcmp(const eq_st_writer *w, size_t a, size_t b)
{
    const s_wtensor *x = &w->t[a], *y = &w->t[b];
    int rx = s_dtype_rank(x->desc.dtype), ry = s_dtype_rank(y->desc.dtype);
    if (rx != ry) return ry - rx; /* descending */
    return strcmp(x->name, y->name);
}

eq_status eq_st_writer_save(eq_st_writer *w, const char *path, eq_err *err)
{
    if (!w || !path) return eq_err_set(err, EQ_ERR_INVALID, "eq_st_writer_save: NULL argument");
    /* order: dtype rank descending, then name (insertion sort: no globals
     * and tensor counts are small) */
    size_t *ord = eq_calloc_array(w->n, sizeof *ord);
    if (!ord) return eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < w->n; i++) {
        size_t j = i;
        while (j > 0 && s_wcmp(w, ord[j - 1], i) > 0) {
            ord[j] = ord[j - 1];
            j--;
        }
        ord[j] = i;
    }
    s_buf b = { 0 };
    s_puts(&b, "{");
    int first = 1;
    if (w->nmeta) {
        s_puts(&b, "\"__metadata__\":{");
        for (size_t i = 0; i < w->nmeta; i++) {
            if (i) s_puts(&b, ",");
            s_put_jstr(&b, w->mk[i]);
            s_puts(&b, ":");
            s_put_jstr(&b, w->mv[i]);
        }
        s_puts(&b, "}");
        first = 0;
    }
    uint64_t off = 0;
    for (size_t k = 0; k < w->n; k++) {
        const s_wtensor *t = &w->t[ord[k]];
        char num[64];
        if (!first) s_puts(&b, ",");
        first = 0;
        s_put_jstr(&b, t->name);
        s_puts(&b, ":{\"dtype\":");
        s_put_jstr(&b, eq_dtype_name(t->desc.dtype));
        s_puts(&b, ",\"shape\":[");
        for (int d = 0; d < t->desc.ndim; d++) {
            snprintf(num, sizeof num, "%s%" PRId64, d ? "," : "", t->desc.shape[d]);
            s_puts(&b, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off, off + t->nbytes);
        s_puts(&b, num);
        off += t->nbytes;
    }
    s_puts(&b, "}");
    while (b.n % 8) s_puts(&b, " ");
    eq_status rc = EQ_OK;
    if (b.oom) rc = eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory", path);
    eq_file_atomic *a = rc == EQ_OK ? eq_file_atomic_open(path, err) : NULL;
    if (rc == EQ_OK && !a) rc = err ? err->code : EQ_ERR_IO;
    if (rc == EQ_OK) {
        unsigned char len8[8];
        for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)b.n >> (8 * i));
        rc = eq_file_atomic_write(a, len8, 8, err);
        if (rc == EQ_OK) rc = eq_file_atomic_write(a, b.p, b.n, err);
        for (size_t k = 0; k < w->n && rc == EQ_OK; k++) {
            const s_wtensor *t = &w->t[ord[k]];
            if (t->nbytes) rc = eq_file_atomic_write(a, t->data, (size_t)t->nbytes, err);
        }
        if (rc == EQ_OK)
            rc = eq_file_atomic_commit(&a, err);
        else
            eq_file_atomic_abort(&a);
    }
    free(b.p);
    free(ord);
    return rc;
}
