/*
 * proto/mpread.h -- a bounded MessagePack reader (internal to proto/).
 *
 * msgpack-c's unpacker trusts declared sizes: it allocates count x 24 bytes
 * as soon as it parses an array or map header, so a 10-byte input can ask
 * for 128 GiB (DEPS.md).  This reader never allocates.  It is a cursor over
 * caller-owned bytes that yields one item head at a time:
 *   - str/bin/ext lengths are checked against the bytes left before the
 *     cursor moves, and the item points into the input (zero-copy);
 *   - array/map counts are checked against the bytes left (every element
 *     takes at least one byte, every map entry two) before being returned,
 *     so a caller that sizes an allocation from a count is bounded by the
 *     input size;
 *   - skipping a value descends at most `max_depth` levels.
 * Thread safety: a reader is a plain value; use one per thread.
 */
#ifndef EQ_PROTO_MPREAD_H
#define EQ_PROTO_MPREAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum eq_mp_kind {
    EQ_MP_NIL = 0,
    EQ_MP_BOOL,
    EQ_MP_UINT,  /* any integer >= 0, whatever its encoding */
    EQ_MP_INT,   /* any integer < 0 */
    EQ_MP_FLOAT, /* float 32 or float 64 */
    EQ_MP_STR,
    EQ_MP_BIN,
    EQ_MP_ARRAY,
    EQ_MP_MAP,
    EQ_MP_EXT,
    EQ_MP_KIND_COUNT
} eq_mp_kind;

typedef struct eq_mp_item {
    eq_mp_kind kind;
    union {
        bool b;
        uint64_t u;
        int64_t i;
        double f;
        struct {
            const uint8_t *ptr; /* into the input; not NUL-terminated */
            uint32_t len;
        } s;       /* str, bin, ext (ext type byte skipped) */
        uint32_t n; /* array elements or map entries */
    } v;
} eq_mp_item;

typedef struct eq_mp_reader {
    const uint8_t *p;
    const uint8_t *end;
} eq_mp_reader;

typedef enum eq_mp_rc {
    EQ_MP_OK = 0,
    EQ_MP_TRUNCATED = -1, /* input ends inside an item */
    EQ_MP_INVALID = -2,   /* the never-used byte 0xc1 */
    EQ_MP_TOO_DEEP = -3,  /* nesting exceeds max_depth (skip only) */
} eq_mp_rc;

static inline void eq_mp_reader_init(eq_mp_reader *r, const void *data, size_t len)
{
    r->p = (const uint8_t *)data;
    r->end = r->p + len;
}

static inline size_t eq_mp_left(const eq_mp_reader *r) { return (size_t)(r->end - r->p); }

/* Read one item head (see the file comment).  On failure the cursor is
 * unchanged. */
eq_mp_rc eq_mp_next(eq_mp_reader *r, eq_mp_item *it);

/* Skip one complete value (containers included).  `max_depth` counts
 * container levels: 0 allows scalars only. */
eq_mp_rc eq_mp_skip(eq_mp_reader *r, int max_depth);

/* "nil", "bool", "unsigned integer", ...: for error messages. */
const char *eq_mp_kind_name(eq_mp_kind k);

#endif
