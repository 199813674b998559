/*
 * proto/proto.c -- message catalogue, encoding (msgpack-c's packer) and
 * strict decoding (proto/mpread.h, our bounded reader).
 *
 * Each message type is described by a table of fields (s_field): key, kind,
 * whether required, where it lives in the struct, its capacity, range,
 * allowed values and default.  The same table drives decoding, encoding,
 * defaults, the generic checks run on both paths, and the canonical form
 * hashed into job ids.  What a table cannot say (cross-field rules, frames)
 * goes into the type's validate function.
 *
 * Keys common to all types -- v, t, req, frames -- are handled here, not
 * in the tables.
 */
#include "proto/proto.h"

#include <inttypes.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/mpread.h"

_Static_assert(sizeof(eq_proto_last) == sizeof(int), "enum fields are stored as int");

/* ---- limits -------------------------------------------------------------- */

void eq_proto_limits_default(eq_proto_limits *lim)
{
    lim->max_header_bytes = 64 * 1024;
    lim->max_frames = EQ_PROTO_MAX_FRAMES;
    lim->max_frame_bytes = (uint64_t)1 << 30;
    lim->max_str_len = EQ_PROTO_MSG_CAP - 1;
    lim->max_list_len = 65536;
    lim->max_map_len = 64;
    lim->max_depth = 8;
}

/* ---- field tables ---------------------------------------------------------- */

typedef enum s_kind {
    K_U64,      /* uint64_t */
    K_U32,      /* uint32_t */
    K_F64,      /* double, finite; integers accepted on decode */
    K_STR,      /* char[cap] */
    K_ENUM,     /* int index into `names`, sent as the name */
    K_U32_ARR,  /* uint32_t[cap] + uint32_t count at cnt_off */
    K_STR_ARR,  /* char[cap][cap2] + uint32_t count at cnt_off */
    K_U32_LIST, /* uint32_t * (heap) + uint32_t count at cnt_off */
    K_KV,       /* eq_proto_kv[cap] + uint32_t count at cnt_off */
} s_kind;

typedef enum s_charset {
    CS_TEXT = 0, /* any bytes but control characters */
    CS_NAME,     /* [A-Za-z0-9_.:@+-], not starting with '.', never a path */
} s_charset;

#define F_REQ 1u /* required key */

typedef struct s_field {
    const char *key;
    s_kind kind;
    unsigned flags;
    size_t off;     /* from the start of the union in eq_msg */
    size_t cnt_off; /* arrays: offset of the uint32_t element count */
    size_t cap;     /* STR: bytes incl. NUL; arrays: max elements */
    size_t cap2;    /* STR_ARR: bytes per element incl. NUL */
    uint64_t lo, hi;            /* U64/U32 range; arrays: min/max count (hi 0 = cap) */
    double flo, fhi, fdef;      /* F64 range and default */
    uint64_t udef;              /* U64/U32 default (optional fields) */
    const char *const *names;   /* ENUM names / STR allowed values (NULL-terminated) */
    const char *sdef;           /* STR default */
    s_charset cs;
} s_field;

typedef struct s_msgdef {
    const char *name;
    const s_field *fields;
    size_t nfields;
    bool req_required;
    bool frames_allowed;
    eq_status (*validate)(eq_msg *m, eq_err *err); /* after the generic checks; may be NULL */
} s_msgdef;

#define OFF(T, f) offsetof(T, f)
#define STRF(T, f, fl, cs_)                                                                 \
    { .key = #f, .kind = K_STR, .flags = fl, .off = OFF(T, f), .cap = sizeof(((T *)0)->f), \
      .cs = cs_ }

/* HELLO */
static const s_field s_hello_fields[] = {
    STRF(eq_msg_hello, role, F_REQ, CS_NAME),
    STRF(eq_msg_hello, name, F_REQ, CS_NAME),
    { .key = "versions", .kind = K_U32_ARR, .flags = F_REQ, .off = OFF(eq_msg_hello, versions),
      .cnt_off = OFF(eq_msg_hello, nversions), .cap = EQ_PROTO_MAX_VERSIONS, .lo = 1 },
    STRF(eq_msg_hello, software, F_REQ, CS_TEXT),
    { .key = "caps", .kind = K_STR_ARR, .off = OFF(eq_msg_hello, caps),
      .cnt_off = OFF(eq_msg_hello, ncaps), .cap = EQ_PROTO_MAX_CAPS, .cap2 = EQ_PROTO_NAME_CAP,
      .cs = CS_NAME },
};

/* JOB */
static const char *const s_last_names[] = { "drop", "wrap", "partial", NULL };
static const char *const s_mix_modes[] = { "batch", "pair", "elem", NULL };
static const s_field s_job_fields[] = {
    STRF(eq_msg_job, dataset, F_REQ, CS_NAME),
    STRF(eq_msg_job, split, F_REQ, CS_NAME),
    { .key = "seed", .kind = K_U64, .flags = F_REQ, .off = OFF(eq_msg_job, seed), .hi = UINT64_MAX },
    { .key = "global_batch", .kind = K_U32, .flags = F_REQ, .off = OFF(eq_msg_job, global_batch),
      .lo = 1, .hi = 1u << 24 },
    { .key = "height", .kind = K_U32, .flags = F_REQ, .off = OFF(eq_msg_job, height), .lo = 1, .hi = 65535 },
    { .key = "width", .kind = K_U32, .flags = F_REQ, .off = OFF(eq_msg_job, width), .lo = 1, .hi = 65535 },
    { .key = "channels", .kind = K_U32, .flags = F_REQ, .off = OFF(eq_msg_job, channels), .lo = 1, .hi = 16 },
    { .key = "last", .kind = K_ENUM, .flags = F_REQ, .off = OFF(eq_msg_job, last), .names = s_last_names },
    { .key = "transforms", .kind = K_KV, .off = OFF(eq_msg_job, transforms),
      .cnt_off = OFF(eq_msg_job, ntransforms), .cap = EQ_PROTO_MAX_TRANSFORMS },
    { .key = "mixup_alpha", .kind = K_F64, .off = OFF(eq_msg_job, mixup_alpha), .flo = 0, .fhi = 1e6 },
    { .key = "cutmix_alpha", .kind = K_F64, .off = OFF(eq_msg_job, cutmix_alpha), .flo = 0, .fhi = 1e6 },
    { .key = "mix_prob", .kind = K_F64, .off = OFF(eq_msg_job, mix_prob), .flo = 0, .fhi = 1, .fdef = 1 },
    { .key = "mix_switch_prob", .kind = K_F64, .off = OFF(eq_msg_job, mix_switch_prob), .flo = 0,
      .fhi = 1, .fdef = 0.5 },
    { .key = "mix_mode", .kind = K_STR, .off = OFF(eq_msg_job, mix_mode),
      .cap = sizeof(((eq_msg_job *)0)->mix_mode), .names = s_mix_modes, .sdef = "batch", .cs = CS_NAME },
};

/* JOB_OK */
static const s_field s_job_ok_fields[] = {
    STRF(eq_msg_job_ok, job, F_REQ, CS_NAME),
    { .key = "size", .kind = K_U64, .flags = F_REQ, .off = OFF(eq_msg_job_ok, size), .hi = UINT64_MAX },
    { .key = "classes", .kind = K_U32, .flags = F_REQ, .off = OFF(eq_msg_job_ok, classes), .hi = UINT32_MAX },
    { .key = "data_count", .kind = K_U64, .flags = F_REQ, .off = OFF(eq_msg_job_ok, data_count),
      .hi = UINT64_MAX },
    STRF(eq_msg_job_ok, data_hash, F_REQ, CS_NAME),
    STRF(eq_msg_job_ok, pipeline, F_REQ, CS_TEXT),
};

/* BATCH_REQ */
static const s_field s_batch_req_fields[] = {
    STRF(eq_msg_batch_req, job, F_REQ, CS_NAME),
    { .key = "epoch", .kind = K_U64, .flags = F_REQ, .off = OFF(eq_msg_batch_req, epoch), .hi = UINT64_MAX },
    { .key = "step", .kind = K_U64, .flags = F_REQ, .off = OFF(eq_msg_batch_req, step), .hi = UINT64_MAX },
    { .key = "offset", .kind = K_U32, .flags = F_REQ, .off = OFF(eq_msg_batch_req, offset), .hi = UINT32_MAX },
    { .key = "count", .kind = K_U32, .flags = F_REQ, .off = OFF(eq_msg_batch_req, count), .lo = 1,
      .hi = UINT32_MAX },
    { .key = "deadline_ms", .kind = K_U32, .off = OFF(eq_msg_batch_req, deadline_ms), .hi = UINT32_MAX },
};

/* BATCH */
static const char *const s_batch_mix[] = { "mixup", "cutmix", NULL };
static const s_field s_batch_fields[] = {
    STRF(eq_msg_batch, job, F_REQ, CS_NAME),
    { .key = "epoch", .kind = K_U64, .flags = F_REQ, .off = OFF(eq_msg_batch, epoch), .hi = UINT64_MAX },
    { .key = "step", .kind = K_U64, .flags = F_REQ, .off = OFF(eq_msg_batch, step), .hi = UINT64_MAX },
    { .key = "offset", .kind = K_U32, .flags = F_REQ, .off = OFF(eq_msg_batch, offset), .hi = UINT32_MAX },
    { .key = "count", .kind = K_U32, .flags = F_REQ, .off = OFF(eq_msg_batch, count), .lo = 1,
      .hi = UINT32_MAX },
    { .key = "replaced", .kind = K_U32_LIST, .off = OFF(eq_msg_batch, replaced),
      .cnt_off = OFF(eq_msg_batch, nreplaced), .cap = UINT32_MAX },
    { .key = "mix", .kind = K_STR, .off = OFF(eq_msg_batch, mix), .cap = sizeof(((eq_msg_batch *)0)->mix),
      .names = s_batch_mix, .sdef = "", .cs = CS_NAME },
};

/* ERROR */
static const s_field s_error_fields[] = {
    { .key = "code", .kind = K_U32, .flags = F_REQ, .off = OFF(eq_msg_error, code), .hi = UINT32_MAX },
    STRF(eq_msg_error, name, F_REQ, CS_NAME),
    STRF(eq_msg_error, message, F_REQ, CS_TEXT),
    { .key = "versions", .kind = K_U32_ARR, .off = OFF(eq_msg_error, versions),
      .cnt_off = OFF(eq_msg_error, nversions), .cap = EQ_PROTO_MAX_VERSIONS },
};

/* PRED */
static const s_field s_pred_fields[] = {
    STRF(eq_msg_pred, job, F_REQ, CS_NAME),
    { .key = "epoch", .kind = K_U64, .flags = F_REQ, .off = OFF(eq_msg_pred, epoch), .hi = UINT64_MAX },
    { .key = "total", .kind = K_U64, .flags = F_REQ, .off = OFF(eq_msg_pred, total), .lo = 1,
      .hi = (uint64_t)1 << 40 },
    { .key = "rank", .kind = K_U32, .flags = F_REQ, .off = OFF(eq_msg_pred, rank), .hi = 65535 },
    { .key = "world", .kind = K_U32, .flags = F_REQ, .off = OFF(eq_msg_pred, world), .lo = 1, .hi = 65536 },
    { .key = "count", .kind = K_U32, .flags = F_REQ, .off = OFF(eq_msg_pred, count), .hi = UINT32_MAX },
    { .key = "final", .kind = K_U32, .off = OFF(eq_msg_pred, final), .hi = 1 },
};

/* METRICS */
static const char *const s_metrics_kinds[] = { "train", "epoch", "eval", "done", NULL };
#define MF64(f) { .key = #f, .kind = K_F64, .off = OFF(eq_msg_metrics, f), .flo = -1e300, .fhi = 1e300 }
static const s_field s_metrics_fields[] = {
    STRF(eq_msg_metrics, job, F_REQ, CS_NAME),
    STRF(eq_msg_metrics, source, F_REQ, CS_NAME),
    { .key = "kind", .kind = K_STR, .flags = F_REQ, .off = OFF(eq_msg_metrics, kind),
      .cap = sizeof(((eq_msg_metrics *)0)->kind), .names = s_metrics_kinds, .cs = CS_NAME },
    { .key = "epoch", .kind = K_U64, .flags = F_REQ, .off = OFF(eq_msg_metrics, epoch), .hi = UINT64_MAX },
    { .key = "step", .kind = K_U64, .flags = F_REQ, .off = OFF(eq_msg_metrics, step), .hi = UINT64_MAX },
    { .key = "steps", .kind = K_U64, .off = OFF(eq_msg_metrics, steps), .hi = UINT64_MAX },
    { .key = "samples", .kind = K_U64, .off = OFF(eq_msg_metrics, samples), .hi = UINT64_MAX },
    { .key = "status", .kind = K_U32, .off = OFF(eq_msg_metrics, status), .hi = UINT32_MAX },
    MF64(loss), MF64(lr), MF64(img_s), MF64(wait_pct), MF64(eta_s), MF64(top1), MF64(top5), MF64(elapsed_s),
};
#undef MF64

static eq_status s_validate_batch(eq_msg *m, eq_err *err);
static eq_status s_validate_pred(eq_msg *m, eq_err *err);

#define NF(a) (sizeof(a) / sizeof((a)[0]))
static const s_msgdef s_defs[EQ_MSG_TYPE_COUNT] = {
    [EQ_MSG_HELLO] = { "HELLO", s_hello_fields, NF(s_hello_fields), false, false, NULL },
    [EQ_MSG_JOB] = { "JOB", s_job_fields, NF(s_job_fields), true, false, NULL },
    [EQ_MSG_JOB_OK] = { "JOB_OK", s_job_ok_fields, NF(s_job_ok_fields), true, false, NULL },
    [EQ_MSG_BATCH_REQ] = { "BATCH_REQ", s_batch_req_fields, NF(s_batch_req_fields), true, false, NULL },
    [EQ_MSG_BATCH] = { "BATCH", s_batch_fields, NF(s_batch_fields), true, true, s_validate_batch },
    [EQ_MSG_ERROR] = { "ERROR", s_error_fields, NF(s_error_fields), false, false, NULL },
    [EQ_MSG_PRED] = { "PRED", s_pred_fields, NF(s_pred_fields), false, true, s_validate_pred },
    [EQ_MSG_METRICS] = { "METRICS", s_metrics_fields, NF(s_metrics_fields), false, false, NULL },
};
_Static_assert(NF(s_hello_fields) <= 64 && NF(s_job_fields) <= 64, "seen-bitmask is 64 bits");

const char *eq_msg_type_name(eq_msg_type t)
{
    return (unsigned)t < EQ_MSG_TYPE_COUNT ? s_defs[t].name : "?";
}

int eq_msg_type_parse(const char *name, size_t len, eq_msg_type *out)
{
    for (int i = 0; i < EQ_MSG_TYPE_COUNT; i++)
        if (strlen(s_defs[i].name) == len && memcmp(s_defs[i].name, name, len) == 0) {
            *out = (eq_msg_type)i;
            return 0;
        }
    return -1;
}

/* ---- message helpers ------------------------------------------------------- */

static void *s_at(void *base, size_t off) { return (char *)base + off; }
static const void *s_cat(const void *base, size_t off) { return (const char *)base + off; }
static uint32_t s_count(const void *base, const s_field *f) { return *(const uint32_t *)s_cat(base, f->cnt_off); }

void eq_proto_msg_init(eq_msg *m, eq_msg_type type)
{
    memset(m, 0, sizeof *m);
    m->type = type;
    m->version = EQ_PROTO_VERSION;
    if ((unsigned)type >= EQ_MSG_TYPE_COUNT) return;
    void *base = &m->u;
    const s_msgdef *d = &s_defs[type];
    for (size_t i = 0; i < d->nfields; i++) {
        const s_field *f = &d->fields[i];
        switch (f->kind) {
        case K_U64: *(uint64_t *)s_at(base, f->off) = f->udef; break;
        case K_U32: *(uint32_t *)s_at(base, f->off) = (uint32_t)f->udef; break;
        case K_F64: *(double *)s_at(base, f->off) = f->fdef; break;
        case K_STR:
            if (f->sdef) snprintf(s_at(base, f->off), f->cap, "%s", f->sdef);
            break;
        default: break;
        }
    }
    if (type == EQ_MSG_PRED) m->u.pred.frame_ids = m->u.pred.frame_labels = m->u.pred.frame_topk = -1;
    if (type == EQ_MSG_BATCH)
        m->u.batch.frame_images = m->u.batch.frame_labels = m->u.batch.frame_mix_index =
            m->u.batch.frame_mix_lambda = -1;
}

void eq_proto_msg_reset(eq_msg *m)
{
    if (!m) return;
    if (m->type == EQ_MSG_BATCH) free(m->u.batch.replaced);
    memset(m, 0, sizeof *m);
}

eq_status eq_proto_add_frame(eq_msg *m, const char *name, eq_dtype dtype, int ndim, const int64_t *shape,
                             eq_err *err)
{
    if (m->nframes >= EQ_PROTO_MAX_FRAMES)
        return eq_err_set(err, EQ_ERR_LIMIT, "%s: more than %d frames", eq_msg_type_name(m->type),
                          EQ_PROTO_MAX_FRAMES);
    if (!name || strlen(name) >= EQ_PROTO_NAME_CAP)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: frame name missing or too long", eq_msg_type_name(m->type));
    if ((unsigned)dtype >= EQ_DT_COUNT || ndim < 0 || ndim > EQ_TENSOR_MAX_DIMS)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: frame '%s': bad dtype or rank", eq_msg_type_name(m->type),
                          name);
    int64_t numel = eq_shape_numel(ndim, shape, INT64_MAX / (int64_t)eq_dtype_size(dtype));
    if (numel < 0)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: frame '%s': negative or overflowing shape",
                          eq_msg_type_name(m->type), name);
    eq_proto_frame_desc *fd = &m->frames[m->nframes++];
    memset(fd, 0, sizeof *fd);
    snprintf(fd->name, sizeof fd->name, "%s", name);
    fd->dtype = dtype;
    fd->ndim = ndim;
    for (int i = 0; i < ndim; i++) fd->shape[i] = shape[i];
    fd->nbytes = (uint64_t)numel * eq_dtype_size(dtype);
    return EQ_OK;
}

int eq_proto_find_frame(const eq_msg *m, const char *name)
{
    for (uint32_t i = 0; i < m->nframes && i < EQ_PROTO_MAX_FRAMES; i++)
        if (strcmp(m->frames[i].name, name) == 0) return (int)i;
    return -1;
}

eq_status eq_proto_batch_set_replaced(eq_msg *m, const uint32_t *pos, uint32_t n, eq_err *err)
{
    if (m->type != EQ_MSG_BATCH) return eq_err_set(err, EQ_ERR_INVALID, "replaced: not a BATCH");
    uint32_t *copy = NULL;
    if (n) {
        copy = eq_malloc_array(n, sizeof *copy);
        if (!copy) return eq_err_set(err, EQ_ERR_NOMEM, "BATCH: replaced: out of memory");
        memcpy(copy, pos, (size_t)n * sizeof *copy);
    }
    free(m->u.batch.replaced);
    m->u.batch.replaced = copy;
    m->u.batch.nreplaced = n;
    return EQ_OK;
}

/* ---- generic checks (decode and encode) ------------------------------------ */

static bool s_name_ok(const char *s)
{
    if (s[0] == '.') return false;
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '.' || c == ':' || c == '@' || c == '+' || c == '-'))
            return false;
    }
    return true;
}

static bool s_text_ok(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f) return false;
    return true;
}

static int s_name_index(const char *const *names, const char *s)
{
    for (int i = 0; names[i]; i++)
        if (strcmp(names[i], s) == 0) return i;
    return -1;
}

static void s_join(char *buf, size_t cap, const char *const *names)
{
    size_t o = 0;
    buf[0] = '\0';
    for (int i = 0; names[i] && o < cap; i++) o += (size_t)snprintf(buf + o, cap - o, "%s%s", i ? "|" : "", names[i]);
}

/* Check a string value against a field's rules.  `what` names it. */
static eq_status s_check_str(const char *tn, const char *what, const char *s, size_t cap, s_charset cs,
                             const char *const *names, bool required, eq_err *err)
{
    if (strnlen(s, cap) >= cap)
        return eq_err_set(err, EQ_ERR_LIMIT, "%s: field '%s': string longer than %zu bytes", tn, what, cap - 1);
    if (s[0] == '\0') {
        if (required) return eq_err_set(err, EQ_ERR_PROTO, "%s: field '%s': empty string", tn, what);
        return EQ_OK;
    }
    if (names && s_name_index(names, s) < 0) {
        char alts[128];
        s_join(alts, sizeof alts, names);
        return eq_err_set(err, EQ_ERR_PROTO, "%s: field '%s': '%s' is not one of %s", tn, what, s, alts);
    }
    if (cs == CS_NAME && !s_name_ok(s))
        return eq_err_set(err, EQ_ERR_PROTO,
                          "%s: field '%s': '%s' is not a name ([A-Za-z0-9_.:@+-], not starting with '.')", tn,
                          what, s);
    if (cs == CS_TEXT && !s_text_ok(s))
        return eq_err_set(err, EQ_ERR_PROTO, "%s: field '%s': control character in string", tn, what);
    return EQ_OK;
}

static eq_status s_check_field(const char *tn, const s_field *f, const void *base, eq_err *err)
{
    bool req = f->flags & F_REQ;
    switch (f->kind) {
    case K_U64:
    case K_U32: {
        uint64_t v = f->kind == K_U64 ? *(const uint64_t *)s_cat(base, f->off) : *(const uint32_t *)s_cat(base, f->off);
        if (v < f->lo || v > f->hi)
            return eq_err_set(err, EQ_ERR_PROTO, "%s: field '%s': %" PRIu64 " outside [%" PRIu64 ", %" PRIu64 "]",
                              tn, f->key, v, f->lo, f->hi);
        return EQ_OK;
    }
    case K_F64: {
        double v = *(const double *)s_cat(base, f->off);
        if (!isfinite(v) || v < f->flo || v > f->fhi)
            return eq_err_set(err, EQ_ERR_PROTO, "%s: field '%s': %g outside [%g, %g]", tn, f->key, v, f->flo,
                              f->fhi);
        return EQ_OK;
    }
    case K_STR: return s_check_str(tn, f->key, s_cat(base, f->off), f->cap, f->cs, f->names, req, err);
    case K_ENUM: {
        int v = *(const int *)s_cat(base, f->off);
        int n = 0;
        while (f->names[n]) n++;
        if (v < 0 || v >= n)
            return eq_err_set(err, EQ_ERR_PROTO, "%s: field '%s': invalid value %d", tn, f->key, v);
        return EQ_OK;
    }
    case K_U32_ARR:
    case K_STR_ARR:
    case K_U32_LIST:
    case K_KV: {
        uint32_t n = s_count(base, f);
        if (n > f->cap)
            return eq_err_set(err, EQ_ERR_LIMIT, "%s: field '%s': %u elements, at most %zu", tn, f->key, n, f->cap);
        if (n < f->lo)
            return eq_err_set(err, EQ_ERR_PROTO, "%s: field '%s': %u elements, at least %" PRIu64, tn, f->key, n,
                              f->lo);
        if (f->kind == K_STR_ARR) {
            const char *a = s_cat(base, f->off);
            for (uint32_t i = 0; i < n; i++) {
                char what[96];
                snprintf(what, sizeof what, "%s[%u]", f->key, i);
                eq_status st = s_check_str(tn, what, a + i * f->cap2, f->cap2, f->cs, NULL, true, err);
                if (st) return st;
            }
        }
        if (f->kind == K_U32_LIST && n && !*(uint32_t *const *)s_cat(base, f->off))
            return eq_err_set(err, EQ_ERR_INVALID, "%s: field '%s': NULL list", tn, f->key);
        if (f->kind == K_KV) {
            const eq_proto_kv *kv = s_cat(base, f->off);
            for (uint32_t i = 0; i < n; i++) {
                char what[96];
                snprintf(what, sizeof what, "%s[%u]", f->key, i);
                eq_status st = s_check_str(tn, what, kv[i].key, sizeof kv[i].key, CS_NAME, NULL, true, err);
                if (st) return st;
                snprintf(what, sizeof what, "%s.%s", f->key, kv[i].key);
                if (kv[i].type == EQ_PROTO_VAL_STR) {
                    if ((st = s_check_str(tn, what, kv[i].s, sizeof kv[i].s, CS_TEXT, NULL, false, err))) return st;
                } else if (kv[i].type == EQ_PROTO_VAL_FLOAT) {
                    if (!isfinite(kv[i].f))
                        return eq_err_set(err, EQ_ERR_PROTO, "%s: field '%s': not a finite number", tn, what);
                } else if (kv[i].type != EQ_PROTO_VAL_INT && kv[i].type != EQ_PROTO_VAL_BOOL) {
                    return eq_err_set(err, EQ_ERR_PROTO, "%s: field '%s': invalid value type", tn, what);
                }
                for (uint32_t j = 0; j < i; j++)
                    if (strcmp(kv[j].key, kv[i].key) == 0)
                        return eq_err_set(err, EQ_ERR_PROTO, "%s: field '%s': duplicate key '%s'", tn, f->key,
                                          kv[i].key);
            }
        }
        return EQ_OK;
    }
    }
    return eq_err_set(err, EQ_ERR_INTERNAL, "%s: field '%s': unknown kind", tn, f->key);
}

/* Frame names are unique names; BATCH's frame rules live in its validator. */
static eq_status s_check_frames_desc(const eq_msg *m, eq_err *err)
{
    const char *tn = eq_msg_type_name(m->type);
    if (m->nframes > EQ_PROTO_MAX_FRAMES)
        return eq_err_set(err, EQ_ERR_LIMIT, "%s: %u frames, at most %d", tn, m->nframes, EQ_PROTO_MAX_FRAMES);
    if (m->nframes && !s_defs[m->type].frames_allowed)
        return eq_err_set(err, EQ_ERR_PROTO, "%s: field 'frames': this message carries no frames", tn);
    for (uint32_t i = 0; i < m->nframes; i++) {
        const eq_proto_frame_desc *fd = &m->frames[i];
        char what[32];
        snprintf(what, sizeof what, "frames[%u].name", i);
        eq_status st = s_check_str(tn, what, fd->name, sizeof fd->name, CS_NAME, NULL, true, err);
        if (st) return st;
        for (uint32_t j = 0; j < i; j++)
            if (strcmp(m->frames[j].name, fd->name) == 0)
                return eq_err_set(err, EQ_ERR_PROTO, "%s: frames[%u]: duplicate frame name '%s'", tn, i, fd->name);
        /* Checked again here for messages built by hand rather than by
         * eq_proto_add_frame or the decoder. */
        size_t es = eq_dtype_size(fd->dtype);
        if (!es || fd->ndim < 0 || fd->ndim > EQ_TENSOR_MAX_DIMS ||
            eq_shape_numel(fd->ndim, fd->shape, INT64_MAX / (int64_t)es) < 0)
            return eq_err_set(err, EQ_ERR_PROTO, "%s: frames[%u] '%s': bad dtype, rank or shape", tn, i, fd->name);
    }
    return EQ_OK;
}

/* A frame `name` of the given dtype(s) and rank whose first dimension is n. */
static eq_status s_want_frame(eq_msg *m, const char *name, bool required, eq_dtype dt1, eq_dtype dt2, int ndim,
                              uint64_t n, int *index, eq_err *err)
{
    int i = eq_proto_find_frame(m, name);
    *index = i;
    if (i < 0) return required ? eq_err_set(err, EQ_ERR_PROTO, "%s: missing frame '%s'", eq_msg_type_name(m->type), name) : EQ_OK;
    const eq_proto_frame_desc *fd = &m->frames[i];
    if (fd->dtype != dt1 && fd->dtype != dt2)
        return eq_err_set(err, EQ_ERR_PROTO, "%s: frame '%s': dtype %s, expected %s%s%s", eq_msg_type_name(m->type), name,
                          eq_dtype_name(fd->dtype), eq_dtype_name(dt1), dt2 != dt1 ? " or " : "",
                          dt2 != dt1 ? eq_dtype_name(dt2) : "");
    if (fd->ndim != ndim)
        return eq_err_set(err, EQ_ERR_PROTO, "%s: frame '%s': rank %d, expected %d", eq_msg_type_name(m->type), name, fd->ndim, ndim);
    if ((uint64_t)fd->shape[0] != n)
        return eq_err_set(err, EQ_ERR_PROTO, "%s: frame '%s': first dimension %" PRId64 ", expected count %" PRIu64,
                          eq_msg_type_name(m->type), name, fd->shape[0], n);
    return EQ_OK;
}

static eq_status s_validate_batch(eq_msg *m, eq_err *err)
{
    eq_msg_batch *b = &m->u.batch;
    for (uint32_t i = 0; i < b->nreplaced; i++) {
        if (b->replaced[i] >= b->count)
            return eq_err_set(err, EQ_ERR_PROTO, "BATCH: field 'replaced[%u]': position %u not below count %u", i,
                              b->replaced[i], b->count);
        if (i && b->replaced[i] <= b->replaced[i - 1])
            return eq_err_set(err, EQ_ERR_PROTO, "BATCH: field 'replaced': positions not strictly increasing at %u",
                              i);
    }
    eq_status st;
    if ((st = s_want_frame(m, "images", true, EQ_DT_U8, EQ_DT_U8, 4, b->count, &b->frame_images, err))) return st;
    int64_t c = m->frames[b->frame_images].shape[3];
    if (c < 1 || c > 16)
        return eq_err_set(err, EQ_ERR_PROTO, "BATCH: frame 'images': %" PRId64 " channels, expected 1..16", c);
    if ((st = s_want_frame(m, "labels", true, EQ_DT_I32, EQ_DT_I64, 1, b->count, &b->frame_labels, err))) return st;
    bool mix = b->mix[0] != '\0';
    if ((st = s_want_frame(m, "mix_index", mix, EQ_DT_I32, EQ_DT_I32, 1, b->count, &b->frame_mix_index, err)))
        return st;
    if ((st = s_want_frame(m, "mix_lambda", mix, EQ_DT_F32, EQ_DT_F32, 1, b->count, &b->frame_mix_lambda, err)))
        return st;
    if (!mix && (b->frame_mix_index >= 0 || b->frame_mix_lambda >= 0))
        return eq_err_set(err, EQ_ERR_PROTO, "BATCH: mix_index/mix_lambda frames without field 'mix'");
    return EQ_OK;
}

static eq_status s_validate_pred(eq_msg *m, eq_err *err)
{
    eq_msg_pred *p = &m->u.pred;
    if (p->rank >= p->world)
        return eq_err_set(err, EQ_ERR_PROTO, "PRED: field 'rank': %u not below world %u", p->rank, p->world);
    if (p->count == 0 && !p->final)
        return eq_err_set(err, EQ_ERR_PROTO, "PRED: field 'count': 0 is allowed only with final = 1");
    if ((uint64_t)p->count > p->total)
        return eq_err_set(err, EQ_ERR_PROTO, "PRED: field 'count': %u over total %" PRIu64, p->count, p->total);
    eq_status st;
    if ((st = s_want_frame(m, "ids", true, EQ_DT_I64, EQ_DT_I64, 1, p->count, &p->frame_ids, err))) return st;
    if ((st = s_want_frame(m, "labels", true, EQ_DT_I32, EQ_DT_I32, 1, p->count, &p->frame_labels, err)))
        return st;
    if ((st = s_want_frame(m, "topk", true, EQ_DT_I32, EQ_DT_I32, 2, p->count, &p->frame_topk, err))) return st;
    int64_t k = m->frames[p->frame_topk].shape[1];
    if (k < 1 || k > EQ_PROTO_MAX_TOPK)
        return eq_err_set(err, EQ_ERR_PROTO, "PRED: frame 'topk': width %" PRId64 ", expected 1..%d", k,
                          EQ_PROTO_MAX_TOPK);
    if (m->nframes != 3)
        return eq_err_set(err, EQ_ERR_PROTO, "PRED: %u frames, expected ids, labels, topk", m->nframes);
    return EQ_OK;
}

/* Everything a valid message satisfies, whichever way it travels. */
static eq_status s_validate(eq_msg *m, eq_err *err)
{
    if ((unsigned)m->type >= EQ_MSG_TYPE_COUNT)
        return eq_err_set(err, EQ_ERR_UNSUPPORTED, "message type %d unknown", (int)m->type);
    const s_msgdef *d = &s_defs[m->type];
    if (d->req_required && !m->has_req)
        return eq_err_set(err, EQ_ERR_PROTO, "%s: missing required key 'req'", d->name);
    for (size_t i = 0; i < d->nfields; i++) {
        eq_status st = s_check_field(d->name, &d->fields[i], &m->u, err);
        if (st) return st;
    }
    eq_status st = s_check_frames_desc(m, err);
    if (st) return st;
    return d->validate ? d->validate(m, err) : EQ_OK;
}

/* ---- encoding ---------------------------------------------------------------- */

static int s_pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    return msgpack_pack_str_with_body(pk, s, n);
}

static int s_kv_cmp(const void *a, const void *b)
{
    const eq_proto_kv *x = *(const eq_proto_kv *const *)a, *y = *(const eq_proto_kv *const *)b;
    return strcmp(x->key, y->key);
}

/* Whether an optional field differs from its default (and so is sent). */
static bool s_field_present(const s_field *f, const void *base)
{
    if (f->flags & F_REQ) return true;
    switch (f->kind) {
    case K_U64: return *(const uint64_t *)s_cat(base, f->off) != f->udef;
    case K_U32: return *(const uint32_t *)s_cat(base, f->off) != (uint32_t)f->udef;
    case K_F64: {
        double v = *(const double *)s_cat(base, f->off);
        return memcmp(&v, &f->fdef, sizeof v) != 0;
    }
    case K_STR: { /* "" also means the default */
        const char *v = s_cat(base, f->off);
        return v[0] && strcmp(v, f->sdef ? f->sdef : "") != 0;
    }
    case K_ENUM: return true;
    default: return s_count(base, f) > 0;
    }
}

static int s_pack_field(msgpack_packer *pk, const s_field *f, const void *base)
{
    int rc = s_pack_str(pk, f->key);
    uint32_t n;
    switch (f->kind) {
    case K_U64: return rc | msgpack_pack_uint64(pk, *(const uint64_t *)s_cat(base, f->off));
    case K_U32: return rc | msgpack_pack_uint64(pk, *(const uint32_t *)s_cat(base, f->off));
    case K_F64: return rc | msgpack_pack_double(pk, *(const double *)s_cat(base, f->off));
    case K_STR: return rc | s_pack_str(pk, s_cat(base, f->off));
    case K_ENUM: return rc | s_pack_str(pk, f->names[*(const int *)s_cat(base, f->off)]);
    case K_U32_ARR:
    case K_U32_LIST: {
        n = s_count(base, f);
        const uint32_t *a = f->kind == K_U32_ARR ? s_cat(base, f->off) : *(uint32_t *const *)s_cat(base, f->off);
        rc |= msgpack_pack_array(pk, n);
        for (uint32_t i = 0; i < n; i++) rc |= msgpack_pack_uint64(pk, a[i]);
        return rc;
    }
    case K_STR_ARR: {
        n = s_count(base, f);
        const char *a = s_cat(base, f->off);
        rc |= msgpack_pack_array(pk, n);
        for (uint32_t i = 0; i < n; i++) rc |= s_pack_str(pk, a + i * f->cap2);
        return rc;
    }
    case K_KV: {
        /* Sorted by key: the encoding (and so the job id) is canonical. */
        n = s_count(base, f);
        const eq_proto_kv *kv = s_cat(base, f->off);
        const eq_proto_kv *sorted[EQ_PROTO_MAX_TRANSFORMS];
        for (uint32_t i = 0; i < n; i++) sorted[i] = &kv[i];
        qsort(sorted, n, sizeof sorted[0], s_kv_cmp);
        rc |= msgpack_pack_map(pk, n);
        for (uint32_t i = 0; i < n; i++) {
            const eq_proto_kv *e = sorted[i];
            rc |= s_pack_str(pk, e->key);
            switch (e->type) {
            case EQ_PROTO_VAL_INT: rc |= msgpack_pack_int64(pk, e->i); break;
            case EQ_PROTO_VAL_FLOAT: rc |= msgpack_pack_double(pk, e->f); break;
            case EQ_PROTO_VAL_BOOL: rc |= e->b ? msgpack_pack_true(pk) : msgpack_pack_false(pk); break;
            case EQ_PROTO_VAL_STR: rc |= s_pack_str(pk, e->s); break;
            }
        }
        return rc;
    }
    }
    return -1;
}

static size_t s_count_present(const s_msgdef *d, const void *base)
{
    size_t n = 0;
    for (size_t i = 0; i < d->nfields; i++) n += s_field_present(&d->fields[i], base);
    return n;
}

static int s_pack_fields(msgpack_packer *pk, const s_msgdef *d, const void *base)
{
    int rc = 0;
    for (size_t i = 0; i < d->nfields; i++)
        if (s_field_present(&d->fields[i], base)) rc |= s_pack_field(pk, &d->fields[i], base);
    return rc;
}

eq_status eq_proto_encode(const eq_msg *msg, uint8_t **out, size_t *out_len, eq_err *err)
{
    *out = NULL;
    *out_len = 0;
    eq_msg m = *msg; /* shallow: the validator fills BATCH's frame indices */
    eq_status st = s_validate(&m, err);
    if (st) {
        if (err) err->code = EQ_ERR_INVALID;
        return EQ_ERR_INVALID;
    }
    const s_msgdef *d = &s_defs[m.type];
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    size_t nkeys = 2 + (m.has_req ? 1 : 0) + (m.nframes ? 1 : 0) + s_count_present(d, &m.u);
    int rc = msgpack_pack_map(&pk, (uint32_t)nkeys);
    rc |= s_pack_str(&pk, "v") | msgpack_pack_uint32(&pk, EQ_PROTO_VERSION);
    rc |= s_pack_str(&pk, "t") | s_pack_str(&pk, d->name);
    if (m.has_req) rc |= s_pack_str(&pk, "req") | msgpack_pack_uint64(&pk, m.req);
    rc |= s_pack_fields(&pk, d, &m.u);
    if (m.nframes) {
        rc |= s_pack_str(&pk, "frames") | msgpack_pack_array(&pk, m.nframes);
        for (uint32_t i = 0; i < m.nframes; i++) {
            const eq_proto_frame_desc *fd = &m.frames[i];
            rc |= msgpack_pack_map(&pk, 3);
            rc |= s_pack_str(&pk, "name") | s_pack_str(&pk, fd->name);
            rc |= s_pack_str(&pk, "dtype") | s_pack_str(&pk, eq_dtype_name(fd->dtype));
            rc |= s_pack_str(&pk, "shape") | msgpack_pack_array(&pk, (size_t)fd->ndim);
            for (int k = 0; k < fd->ndim; k++) rc |= msgpack_pack_uint64(&pk, (uint64_t)fd->shape[k]);
        }
    }
    if (rc) {
        msgpack_sbuffer_destroy(&sb);
        return eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory while encoding", d->name);
    }
    *out = (uint8_t *)sb.data;
    *out_len = sb.size;
    return EQ_OK;
}

uint64_t eq_proto_hash64(const void *data, size_t len)
{
    const uint8_t *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

eq_status eq_proto_job_id(const eq_msg *msg, char out[EQ_PROTO_ID_CAP], eq_err *err)
{
    out[0] = '\0';
    if (msg->type != EQ_MSG_JOB) return eq_err_set(err, EQ_ERR_INVALID, "job id: message is %s, not JOB",
                                                   eq_msg_type_name(msg->type));
    eq_msg m = *msg;
    m.has_req = true; /* the id does not depend on req; validate the rest */
    if (s_validate(&m, err)) {
        if (err) err->code = EQ_ERR_INVALID;
        return EQ_ERR_INVALID;
    }
    const s_msgdef *d = &s_defs[EQ_MSG_JOB];
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    int rc = msgpack_pack_map(&pk, s_count_present(d, &m.u));
    rc |= s_pack_fields(&pk, d, &m.u);
    if (rc) {
        msgpack_sbuffer_destroy(&sb);
        return eq_err_set(err, EQ_ERR_NOMEM, "job id: out of memory");
    }
    snprintf(out, EQ_PROTO_ID_CAP, "%016" PRIx64, eq_proto_hash64(sb.data, sb.size));
    msgpack_sbuffer_destroy(&sb);
    return EQ_OK;
}

void eq_proto_make_error(eq_msg *m, bool has_req, uint64_t req, eq_status code, const char *message)
{
    eq_proto_msg_init(m, EQ_MSG_ERROR);
    m->has_req = has_req;
    m->req = req;
    eq_msg_error *e = &m->u.error;
    e->code = (uint32_t)code;
    snprintf(e->name, sizeof e->name, "%s", eq_status_str(code));
    /* Copy the message, replacing control characters (a log line stays one line). */
    size_t n = 0;
    for (const char *p = message ? message : ""; *p && n < sizeof e->message - 1; p++, n++)
        e->message[n] = ((unsigned char)*p < 0x20 || *p == 0x7f) ? ' ' : *p;
    e->message[n] = '\0';
    if (!e->message[0]) snprintf(e->message, sizeof e->message, "%s", eq_status_str(code));
    if (code == EQ_ERR_VERSION) {
        e->versions[0] = EQ_PROTO_VERSION;
        e->nversions = 1;
    }
}

/* ---- decoding ------------------------------------------------------------------ */

typedef struct s_dec {
    eq_mp_reader r;
    const eq_proto_limits *lim;
    const char *tn; /* message type name for errors */
    eq_err *err;
} s_dec;

static eq_status s_mp_fail(s_dec *d, eq_mp_rc rc, const char *what)
{
    switch (rc) {
    case EQ_MP_TRUNCATED:
        return eq_err_set(d->err, EQ_ERR_PARSE, "%s: %s: truncated MessagePack (or a count larger than the bytes left)",
                          d->tn, what);
    case EQ_MP_INVALID: return eq_err_set(d->err, EQ_ERR_PARSE, "%s: %s: invalid MessagePack byte 0xc1", d->tn, what);
    case EQ_MP_TOO_DEEP:
        return eq_err_set(d->err, EQ_ERR_LIMIT, "%s: %s: nesting deeper than %u", d->tn, what, d->lim->max_depth);
    default: return eq_err_set(d->err, EQ_ERR_INTERNAL, "%s: %s: reader error %d", d->tn, what, (int)rc);
    }
}

/* Read one item head of the expected kind.  `kind2` is a second accepted
 * kind (or the same). */
static eq_status s_expect(s_dec *d, eq_mp_item *it, eq_mp_kind kind, eq_mp_kind kind2, const char *what,
                          const char *expected)
{
    eq_mp_rc rc = eq_mp_next(&d->r, it);
    if (rc) return s_mp_fail(d, rc, what);
    if (it->kind != kind && it->kind != kind2)
        return eq_err_set(d->err, EQ_ERR_PROTO, "%s: field '%s': expected %s, got %s", d->tn, what, expected,
                          eq_mp_kind_name(it->kind));
    return EQ_OK;
}

/* A container head at nesting level `level` (header map = 1). */
static eq_status s_expect_container(s_dec *d, eq_mp_item *it, eq_mp_kind kind, unsigned level, uint32_t max,
                                    const char *what)
{
    eq_status st = s_expect(d, it, kind, kind, what, eq_mp_kind_name(kind));
    if (st) return st;
    if (level > d->lim->max_depth)
        return eq_err_set(d->err, EQ_ERR_LIMIT, "%s: field '%s': nesting deeper than %u", d->tn, what,
                          d->lim->max_depth);
    if (it->v.n > max)
        return eq_err_set(d->err, EQ_ERR_LIMIT, "%s: field '%s': %u entries, at most %u", d->tn, what, it->v.n, max);
    return EQ_OK;
}

static eq_status s_skip(s_dec *d, unsigned level, const char *what)
{
    /* A value inside a container of level `level` may open max_depth - level more. */
    int left = (int)d->lim->max_depth - (int)level;
    eq_mp_rc rc = eq_mp_skip(&d->r, left < 0 ? 0 : left);
    return rc ? s_mp_fail(d, rc, what) : EQ_OK;
}

static eq_status s_read_str(s_dec *d, char *dst, size_t cap, const char *what)
{
    eq_mp_item it;
    eq_status st = s_expect(d, &it, EQ_MP_STR, EQ_MP_STR, what, "string");
    if (st) return st;
    size_t max = cap - 1 < d->lim->max_str_len ? cap - 1 : d->lim->max_str_len;
    if (it.v.s.len > max)
        return eq_err_set(d->err, EQ_ERR_LIMIT, "%s: field '%s': string of %u bytes, at most %zu", d->tn, what,
                          it.v.s.len, max);
    if (memchr(it.v.s.ptr, 0, it.v.s.len))
        return eq_err_set(d->err, EQ_ERR_PROTO, "%s: field '%s': NUL byte in string", d->tn, what);
    memcpy(dst, it.v.s.ptr, it.v.s.len);
    dst[it.v.s.len] = '\0';
    return EQ_OK;
}

static eq_status s_read_uint(s_dec *d, uint64_t *v, uint64_t max, const char *what)
{
    eq_mp_item it;
    eq_status st = s_expect(d, &it, EQ_MP_UINT, EQ_MP_UINT, what, "unsigned integer");
    if (st) return st;
    if (it.v.u > max)
        return eq_err_set(d->err, EQ_ERR_PROTO, "%s: field '%s': %" PRIu64 " larger than %" PRIu64, d->tn, what,
                          it.v.u, max);
    *v = it.v.u;
    return EQ_OK;
}

static eq_status s_decode_kv(s_dec *d, const s_field *f, void *base)
{
    eq_mp_item it;
    uint32_t max = d->lim->max_map_len < f->cap ? d->lim->max_map_len : (uint32_t)f->cap;
    eq_status st = s_expect_container(d, &it, EQ_MP_MAP, 2, max, f->key);
    if (st) return st;
    eq_proto_kv *kv = s_at(base, f->off);
    for (uint32_t i = 0; i < it.v.n; i++) {
        eq_proto_kv *e = &kv[i];
        memset(e, 0, sizeof *e);
        char what[96];
        snprintf(what, sizeof what, "%s[%u]", f->key, i);
        if ((st = s_read_str(d, e->key, sizeof e->key, what))) return st;
        snprintf(what, sizeof what, "%s.%s", f->key, e->key);
        eq_mp_item v;
        eq_mp_rc rc = eq_mp_next(&d->r, &v);
        if (rc) return s_mp_fail(d, rc, what);
        switch (v.kind) {
        case EQ_MP_UINT:
            if (v.v.u > INT64_MAX)
                return eq_err_set(d->err, EQ_ERR_PROTO, "%s: field '%s': integer larger than INT64_MAX", d->tn, what);
            e->type = EQ_PROTO_VAL_INT;
            e->i = (int64_t)v.v.u;
            break;
        case EQ_MP_INT: e->type = EQ_PROTO_VAL_INT; e->i = v.v.i; break;
        case EQ_MP_FLOAT: e->type = EQ_PROTO_VAL_FLOAT; e->f = v.v.f; break;
        case EQ_MP_BOOL: e->type = EQ_PROTO_VAL_BOOL; e->b = v.v.b; break;
        case EQ_MP_STR: {
            size_t cap = sizeof e->s - 1 < d->lim->max_str_len ? sizeof e->s - 1 : d->lim->max_str_len;
            if (v.v.s.len > cap)
                return eq_err_set(d->err, EQ_ERR_LIMIT, "%s: field '%s': string of %u bytes, at most %zu", d->tn, what,
                                  v.v.s.len, cap);
            if (memchr(v.v.s.ptr, 0, v.v.s.len))
                return eq_err_set(d->err, EQ_ERR_PROTO, "%s: field '%s': NUL byte in string", d->tn, what);
            e->type = EQ_PROTO_VAL_STR;
            memcpy(e->s, v.v.s.ptr, v.v.s.len);
            e->s[v.v.s.len] = '\0';
            break;
        }
        default:
            return eq_err_set(d->err, EQ_ERR_PROTO, "%s: field '%s': expected integer, float, bool or string, got %s",
                              d->tn, what, eq_mp_kind_name(v.kind));
        }
        *(uint32_t *)s_at(base, f->cnt_off) = i + 1;
    }
    return EQ_OK;
}

static eq_status s_decode_field(s_dec *d, const s_field *f, void *base)
{
    eq_mp_item it;
    eq_status st;
    uint64_t u;
    switch (f->kind) {
    case K_U64:
        if ((st = s_read_uint(d, &u, UINT64_MAX, f->key))) return st;
        *(uint64_t *)s_at(base, f->off) = u;
        return EQ_OK;
    case K_U32:
        if ((st = s_read_uint(d, &u, UINT32_MAX, f->key))) return st;
        *(uint32_t *)s_at(base, f->off) = (uint32_t)u;
        return EQ_OK;
    case K_F64: {
        eq_mp_rc rc = eq_mp_next(&d->r, &it);
        if (rc) return s_mp_fail(d, rc, f->key);
        double v;
        if (it.kind == EQ_MP_FLOAT) v = it.v.f;
        else if (it.kind == EQ_MP_UINT) v = (double)it.v.u;
        else if (it.kind == EQ_MP_INT) v = (double)it.v.i;
        else
            return eq_err_set(d->err, EQ_ERR_PROTO, "%s: field '%s': expected number, got %s", d->tn, f->key,
                              eq_mp_kind_name(it.kind));
        *(double *)s_at(base, f->off) = v;
        return EQ_OK;
    }
    case K_STR:
        if ((st = s_read_str(d, s_at(base, f->off), f->cap, f->key))) return st;
        if (!*(char *)s_at(base, f->off) && f->sdef) snprintf(s_at(base, f->off), f->cap, "%s", f->sdef);
        return EQ_OK;
    case K_ENUM: {
        char buf[EQ_PROTO_NAME_CAP];
        if ((st = s_read_str(d, buf, sizeof buf, f->key))) return st;
        int i = s_name_index(f->names, buf);
        if (i < 0) return s_check_str(d->tn, f->key, buf, sizeof buf, CS_TEXT, f->names, true, d->err);
        *(int *)s_at(base, f->off) = i;
        return EQ_OK;
    }
    case K_U32_ARR:
    case K_U32_LIST: {
        uint32_t max = d->lim->max_list_len < f->cap ? d->lim->max_list_len : (uint32_t)f->cap;
        if ((st = s_expect_container(d, &it, EQ_MP_ARRAY, 2, max, f->key))) return st;
        uint32_t *a;
        if (f->kind == K_U32_ARR) {
            a = s_at(base, f->off);
        } else {
            /* it.v.n <= bytes left (mpread), so this is bounded by the input size. */
            uint32_t **slot = s_at(base, f->off);
            free(*slot);
            *slot = NULL;
            *(uint32_t *)s_at(base, f->cnt_off) = 0;
            if (it.v.n && !(*slot = eq_malloc_array(it.v.n, sizeof(uint32_t))))
                return eq_err_set(d->err, EQ_ERR_NOMEM, "%s: field '%s': out of memory", d->tn, f->key);
            a = *slot;
        }
        for (uint32_t i = 0; i < it.v.n; i++) {
            char what[96];
            snprintf(what, sizeof what, "%s[%u]", f->key, i);
            if ((st = s_read_uint(d, &u, UINT32_MAX, what))) return st;
            a[i] = (uint32_t)u;
            *(uint32_t *)s_at(base, f->cnt_off) = i + 1;
        }
        return EQ_OK;
    }
    case K_STR_ARR: {
        uint32_t max = d->lim->max_list_len < f->cap ? d->lim->max_list_len : (uint32_t)f->cap;
        if ((st = s_expect_container(d, &it, EQ_MP_ARRAY, 2, max, f->key))) return st;
        char *a = s_at(base, f->off);
        for (uint32_t i = 0; i < it.v.n; i++) {
            char what[96];
            snprintf(what, sizeof what, "%s[%u]", f->key, i);
            if ((st = s_read_str(d, a + i * f->cap2, f->cap2, what))) return st;
            *(uint32_t *)s_at(base, f->cnt_off) = i + 1;
        }
        return EQ_OK;
    }
    case K_KV: return s_decode_kv(d, f, base);
    }
    return eq_err_set(d->err, EQ_ERR_INTERNAL, "%s: field '%s': unknown kind", d->tn, f->key);
}

static bool s_key_is(const eq_mp_item *k, const char *s)
{
    size_t n = strlen(s);
    return k->v.s.len == n && memcmp(k->v.s.ptr, s, n) == 0;
}

static eq_status s_decode_frames(s_dec *d, eq_msg *m)
{
    eq_mp_item it;
    uint32_t max = d->lim->max_frames < EQ_PROTO_MAX_FRAMES ? d->lim->max_frames : EQ_PROTO_MAX_FRAMES;
    eq_status st = s_expect_container(d, &it, EQ_MP_ARRAY, 2, max, "frames");
    if (st) return st;
    uint32_t n = it.v.n;
    for (uint32_t i = 0; i < n; i++) {
        eq_proto_frame_desc *fd = &m->frames[i];
        memset(fd, 0, sizeof *fd);
        m->nframes = i + 1;
        char what[64];
        snprintf(what, sizeof what, "frames[%u]", i);
        eq_mp_item fm;
        if ((st = s_expect_container(d, &fm, EQ_MP_MAP, 3, d->lim->max_map_len, what))) return st;
        bool seen_name = false, seen_dtype = false, seen_shape = false;
        for (uint32_t k = 0; k < fm.v.n; k++) {
            eq_mp_item key;
            snprintf(what, sizeof what, "frames[%u]", i);
            if ((st = s_expect(d, &key, EQ_MP_STR, EQ_MP_STR, what, "string key"))) return st;
            bool *seen = s_key_is(&key, "name") ? &seen_name : s_key_is(&key, "dtype") ? &seen_dtype : s_key_is(&key, "shape") ? &seen_shape : NULL;
            if (!seen) {
                if ((st = s_skip(d, 3, what))) return st;
                continue;
            }
            snprintf(what, sizeof what, "frames[%u].%.*s", i, (int)key.v.s.len, (const char *)key.v.s.ptr);
            if (*seen) return eq_err_set(d->err, EQ_ERR_PROTO, "%s: field '%s': duplicate key", d->tn, what);
            *seen = true;
            if (s_key_is(&key, "name")) {
                if ((st = s_read_str(d, fd->name, sizeof fd->name, what))) return st;
            } else if (s_key_is(&key, "dtype")) {
                char dt[16];
                if ((st = s_read_str(d, dt, sizeof dt, what))) {
                    if (d->err && d->err->code == EQ_ERR_LIMIT) d->err->code = st = EQ_ERR_PROTO;
                    return st;
                }
                if (eq_dtype_parse(dt, strlen(dt), &fd->dtype))
                    return eq_err_set(d->err, EQ_ERR_PROTO, "%s: field '%s': unknown dtype '%s'", d->tn, what, dt);
            } else {
                eq_mp_item sh;
                if ((st = s_expect_container(d, &sh, EQ_MP_ARRAY, 4, EQ_TENSOR_MAX_DIMS, what))) return st;
                for (uint32_t j = 0; j < sh.v.n; j++) {
                    eq_mp_item dim;
                    eq_mp_rc rc = eq_mp_next(&d->r, &dim);
                    if (rc) return s_mp_fail(d, rc, what);
                    if (dim.kind == EQ_MP_INT)
                        return eq_err_set(d->err, EQ_ERR_PROTO, "%s: field '%s[%u]': negative dimension %" PRId64,
                                          d->tn, what, j, dim.v.i);
                    if (dim.kind != EQ_MP_UINT)
                        return eq_err_set(d->err, EQ_ERR_PROTO, "%s: field '%s[%u]': expected unsigned integer, got %s",
                                          d->tn, what, j, eq_mp_kind_name(dim.kind));
                    if (dim.v.u > INT64_MAX)
                        return eq_err_set(d->err, EQ_ERR_LIMIT, "%s: field '%s[%u]': dimension too large", d->tn, what, j);
                    fd->shape[j] = (int64_t)dim.v.u;
                }
                fd->ndim = (int)sh.v.n;
            }
        }
        const char *missing = !seen_name ? "name" : !seen_dtype ? "dtype" : !seen_shape ? "shape" : NULL;
        if (missing)
            return eq_err_set(d->err, EQ_ERR_PROTO, "%s: frames[%u]: missing required key '%s'", d->tn, i, missing);
        size_t es = eq_dtype_size(fd->dtype);
        uint64_t cap = d->lim->max_frame_bytes < (uint64_t)INT64_MAX ? d->lim->max_frame_bytes : (uint64_t)INT64_MAX;
        int64_t numel = eq_shape_numel(fd->ndim, fd->shape, (int64_t)(cap / es));
        if (numel < 0)
            return eq_err_set(d->err, EQ_ERR_LIMIT, "%s: frames[%u] '%s': shape x %s exceeds %" PRIu64 " bytes", d->tn,
                              i, fd->name, eq_dtype_name(fd->dtype), cap);
        fd->nbytes = (uint64_t)numel * es;
    }
    return EQ_OK;
}

/* Pass 1: v, t, req (whatever their position in the map). */
static eq_status s_pass1(s_dec *d, eq_msg *m, uint32_t nkeys)
{
    bool seen_v = false, seen_t = false;
    m->type = EQ_MSG_TYPE_COUNT;
    char tname[EQ_PROTO_NAME_CAP] = "";
    eq_status st;
    for (uint32_t i = 0; i < nkeys; i++) {
        eq_mp_item key;
        char what[32];
        snprintf(what, sizeof what, "key #%u", i);
        if ((st = s_expect(d, &key, EQ_MP_STR, EQ_MP_STR, what, "string key"))) return st;
        if (s_key_is(&key, "v") || s_key_is(&key, "t") || s_key_is(&key, "req")) {
            bool is_v = s_key_is(&key, "v"), is_t = s_key_is(&key, "t");
            const char *k = is_v ? "v" : is_t ? "t" : "req";
            if ((is_v && seen_v) || (is_t && seen_t) || (!is_v && !is_t && m->has_req))
                return eq_err_set(d->err, EQ_ERR_PROTO, "%s: field '%s': duplicate key", d->tn, k);
            uint64_t u;
            if (is_t) {
                if ((st = s_read_str(d, tname, sizeof tname, "t"))) return st;
                seen_t = true;
            } else if (is_v) {
                if ((st = s_read_uint(d, &u, UINT32_MAX, "v"))) return st;
                m->version = (uint32_t)u;
                seen_v = true;
            } else {
                if ((st = s_read_uint(d, &u, UINT64_MAX, "req"))) return st;
                m->req = u;
                m->has_req = true;
            }
        } else if ((st = s_skip(d, 1, what))) {
            return st;
        }
    }
    if (eq_mp_left(&d->r))
        return eq_err_set(d->err, EQ_ERR_PARSE, "%s: %zu trailing bytes after the map", d->tn, eq_mp_left(&d->r));
    if (seen_t && eq_msg_type_parse(tname, strlen(tname), &m->type) == 0) d->tn = s_defs[m->type].name;
    if (!seen_v) return eq_err_set(d->err, EQ_ERR_PROTO, "%s: missing required key 'v'", d->tn);
    if (m->version != EQ_PROTO_VERSION)
        return eq_err_set(d->err, EQ_ERR_VERSION, "%s: protocol version %u, this build speaks %d", d->tn, m->version,
                          EQ_PROTO_VERSION);
    if (!seen_t) return eq_err_set(d->err, EQ_ERR_PROTO, "header: missing required key 't'");
    if (m->type == EQ_MSG_TYPE_COUNT)
        return eq_err_set(d->err, EQ_ERR_UNSUPPORTED, "header: unknown message type '%s'", tname);
    return EQ_OK;
}

/* Pass 2: the type's fields and the frame list. */
static eq_status s_pass2(s_dec *d, eq_msg *m, uint32_t nkeys)
{
    const s_msgdef *def = &s_defs[m->type];
    uint64_t seen = 0;
    bool seen_frames = false;
    eq_status st;
    for (uint32_t i = 0; i < nkeys; i++) {
        eq_mp_item key;
        if ((st = s_expect(d, &key, EQ_MP_STR, EQ_MP_STR, "key", "string key"))) return st;
        if (s_key_is(&key, "v") || s_key_is(&key, "t") || s_key_is(&key, "req")) {
            if ((st = s_skip(d, 1, "v/t/req"))) return st;
            continue;
        }
        if (s_key_is(&key, "frames")) {
            if (seen_frames) return eq_err_set(d->err, EQ_ERR_PROTO, "%s: field 'frames': duplicate key", d->tn);
            seen_frames = true;
            if ((st = s_decode_frames(d, m))) return st;
            continue;
        }
        size_t f = 0;
        while (f < def->nfields && !s_key_is(&key, def->fields[f].key)) f++;
        if (f == def->nfields) { /* unknown key: a newer peer's optional field */
            if ((st = s_skip(d, 1, "unknown key"))) return st;
            continue;
        }
        if (seen & (1ull << f))
            return eq_err_set(d->err, EQ_ERR_PROTO, "%s: field '%s': duplicate key", d->tn, def->fields[f].key);
        seen |= 1ull << f;
        if ((st = s_decode_field(d, &def->fields[f], &m->u))) return st;
    }
    for (size_t f = 0; f < def->nfields; f++)
        if ((def->fields[f].flags & F_REQ) && !(seen & (1ull << f)))
            return eq_err_set(d->err, EQ_ERR_PROTO, "%s: missing required key '%s'", d->tn, def->fields[f].key);
    return EQ_OK;
}

eq_status eq_proto_decode_header(eq_msg *m, const void *hdr, size_t len, const eq_proto_limits *lim, eq_err *err)
{
    eq_proto_limits deflim;
    if (!lim) {
        eq_proto_limits_default(&deflim);
        lim = &deflim;
    }
    memset(m, 0, sizeof *m);
    m->type = EQ_MSG_TYPE_COUNT;
    s_dec d = { .lim = lim, .tn = "header", .err = err };
    if (len > lim->max_header_bytes)
        return eq_err_set(err, EQ_ERR_LIMIT, "header: %zu bytes, at most %zu", len, lim->max_header_bytes);
    if (len == 0) return eq_err_set(err, EQ_ERR_PARSE, "header: empty frame (expected a MessagePack map)");
    eq_mp_reader_init(&d.r, hdr, len);
    eq_mp_item top;
    eq_mp_rc rc = eq_mp_next(&d.r, &top);
    if (rc) return s_mp_fail(&d, rc, "top-level map");
    if (top.kind != EQ_MP_MAP)
        return eq_err_set(err, EQ_ERR_PARSE, "header: not a MessagePack map (got %s)", eq_mp_kind_name(top.kind));
    if (top.v.n > lim->max_map_len)
        return eq_err_set(err, EQ_ERR_LIMIT, "header: %u keys, at most %u", top.v.n, lim->max_map_len);
    if (lim->max_depth < 1) return eq_err_set(err, EQ_ERR_LIMIT, "header: max_depth is 0");
    const uint8_t *entries = d.r.p;

    eq_status st = s_pass1(&d, m, top.v.n);
    if (st) return st;
    /* Keep what pass 1 learnt (for an ERROR reply), start the body afresh. */
    eq_msg_type type = m->type;
    bool has_req = m->has_req;
    uint64_t req = m->req;
    eq_proto_msg_init(m, type);
    m->has_req = has_req;
    m->req = req;
    d.r.p = entries;
    if ((st = s_pass2(&d, m, top.v.n)) || (st = s_validate(m, err))) {
        eq_proto_msg_reset(m);
        m->type = type;
        m->version = EQ_PROTO_VERSION;
        m->has_req = has_req;
        m->req = req;
        return st;
    }
    return EQ_OK;
}

eq_status eq_proto_check_frames(const eq_msg *m, size_t nframes, const size_t *sizes, eq_err *err)
{
    const char *tn = eq_msg_type_name(m->type);
    if (nframes != m->nframes)
        return eq_err_set(err, EQ_ERR_PROTO, "%s: header lists %u frames, message has %zu", tn, m->nframes, nframes);
    for (size_t i = 0; i < nframes; i++)
        if ((uint64_t)sizes[i] != m->frames[i].nbytes)
            return eq_err_set(err, EQ_ERR_PROTO, "%s: frame %zu '%s': %zu bytes, shape x %s needs %" PRIu64, tn, i,
                              m->frames[i].name, sizes[i], eq_dtype_name(m->frames[i].dtype), m->frames[i].nbytes);
    return EQ_OK;
}

eq_status eq_proto_decode(eq_msg *m, size_t nparts, const void *const *parts, const size_t *sizes,
                          const eq_proto_limits *lim, eq_err *err)
{
    eq_proto_limits deflim;
    if (!lim) {
        eq_proto_limits_default(&deflim);
        lim = &deflim;
    }
    if (nparts < 1) {
        memset(m, 0, sizeof *m);
        m->type = EQ_MSG_TYPE_COUNT;
        return eq_err_set(err, EQ_ERR_PROTO, "message: no header frame");
    }
    eq_status st = eq_proto_decode_header(m, parts[0], sizes[0], lim, err);
    if (st) return st;
    if (nparts - 1 > lim->max_frames) {
        st = eq_err_set(err, EQ_ERR_LIMIT, "%s: %zu payload frames, at most %u", eq_msg_type_name(m->type), nparts - 1,
                        lim->max_frames);
    } else {
        st = eq_proto_check_frames(m, nparts - 1, sizes + 1, err);
    }
    if (st) {
        eq_msg_type type = m->type;
        bool has_req = m->has_req;
        uint64_t req = m->req;
        eq_proto_msg_reset(m);
        m->type = type;
        m->version = EQ_PROTO_VERSION;
        m->has_req = has_req;
        m->req = req;
    }
    return st;
}
