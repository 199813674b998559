/* proto/mpread.c -- bounded MessagePack reader; see mpread.h. */
#include "proto/mpread.h"

#include <string.h>

static uint64_t s_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

static const char *const s_kind_names[EQ_MP_KIND_COUNT] = {
    [EQ_MP_NIL] = "nil",     [EQ_MP_BOOL] = "bool",   [EQ_MP_UINT] = "unsigned integer",
    [EQ_MP_INT] = "negative integer", [EQ_MP_FLOAT] = "float", [EQ_MP_STR] = "string",
    [EQ_MP_BIN] = "binary",  [EQ_MP_ARRAY] = "array", [EQ_MP_MAP] = "map",
    [EQ_MP_EXT] = "extension",
};

const char *eq_mp_kind_name(eq_mp_kind k)
{
    return (unsigned)k < EQ_MP_KIND_COUNT ? s_kind_names[k] : "?";
}

/* Body of `len` bytes at p (after a head of `head` bytes) must fit. */
static eq_mp_rc s_body(eq_mp_reader *r, eq_mp_item *it, eq_mp_kind kind, size_t head, uint64_t len)
{
    size_t left = eq_mp_left(r);
    if (head > left || len > left - head) return EQ_MP_TRUNCATED;
    it->kind = kind;
    it->v.s.ptr = r->p + head;
    it->v.s.len = (uint32_t)len;
    r->p += head + len;
    return EQ_MP_OK;
}

/* Container of n elements of at least `per` bytes each must fit. */
static eq_mp_rc s_container(eq_mp_reader *r, eq_mp_item *it, eq_mp_kind kind, size_t head, uint64_t n,
                            unsigned per)
{
    size_t left = eq_mp_left(r) - head; /* head already checked by the caller */
    if (n > left / per) return EQ_MP_TRUNCATED;
    it->kind = kind;
    it->v.n = (uint32_t)n;
    r->p += head;
    return EQ_MP_OK;
}

static eq_mp_rc s_uint(eq_mp_reader *r, eq_mp_item *it, size_t head, uint64_t u)
{
    it->kind = EQ_MP_UINT;
    it->v.u = u;
    r->p += head;
    return EQ_MP_OK;
}

static eq_mp_rc s_int(eq_mp_reader *r, eq_mp_item *it, size_t head, int64_t i)
{
    if (i >= 0) return s_uint(r, it, head, (uint64_t)i);
    it->kind = EQ_MP_INT;
    it->v.i = i;
    r->p += head;
    return EQ_MP_OK;
}

eq_mp_rc eq_mp_next(eq_mp_reader *r, eq_mp_item *it)
{
    size_t left = eq_mp_left(r);
    if (left < 1) return EQ_MP_TRUNCATED;
    const uint8_t *p = r->p;
    uint8_t b = p[0];
    memset(it, 0, sizeof *it);

    if (b <= 0x7f) return s_uint(r, it, 1, b);
    if (b >= 0xe0) return s_int(r, it, 1, (int8_t)b);
    if ((b & 0xf0) == 0x80) return s_container(r, it, EQ_MP_MAP, 1, b & 0x0f, 2);
    if ((b & 0xf0) == 0x90) return s_container(r, it, EQ_MP_ARRAY, 1, b & 0x0f, 1);
    if ((b & 0xe0) == 0xa0) return s_body(r, it, EQ_MP_STR, 1, b & 0x1f);

    /* Fixed-size heads: 1 type byte + n bytes. */
    static const uint8_t head_len[32] = {
        [0x00] = 0, [0x01] = 0, [0x02] = 0, [0x03] = 0, /* nil, (c1), false, true */
        [0x04] = 1, [0x05] = 2, [0x06] = 4,             /* bin 8/16/32 */
        [0x07] = 1, [0x08] = 2, [0x09] = 4,             /* ext 8/16/32 */
        [0x0a] = 4, [0x0b] = 8,                         /* float 32/64 */
        [0x0c] = 1, [0x0d] = 2, [0x0e] = 4, [0x0f] = 8, /* uint 8..64 */
        [0x10] = 1, [0x11] = 2, [0x12] = 4, [0x13] = 8, /* int 8..64 */
        [0x14] = 2, [0x15] = 3, [0x16] = 5, [0x17] = 9, [0x18] = 17, /* fixext 1..16 */
        [0x19] = 1, [0x1a] = 2, [0x1b] = 4,             /* str 8/16/32 */
        [0x1c] = 2, [0x1d] = 4,                         /* array 16/32 */
        [0x1e] = 2, [0x1f] = 4,                         /* map 16/32 */
    };
    size_t n = head_len[b - 0xc0];
    if (b == 0xc1) return EQ_MP_INVALID;
    if (b >= 0xd4 && b <= 0xd8) /* fixext: type byte + 2^k data bytes */
        return s_body(r, it, EQ_MP_EXT, 2, n - 1);
    if (1 + n > left) return EQ_MP_TRUNCATED;
    uint64_t x = s_be(p + 1, (int)n);
    size_t head = 1 + n;

    switch (b) {
    case 0xc0: it->kind = EQ_MP_NIL; r->p += 1; return EQ_MP_OK;
    case 0xc2:
    case 0xc3:
        it->kind = EQ_MP_BOOL;
        it->v.b = b == 0xc3;
        r->p += 1;
        return EQ_MP_OK;
    case 0xc4: case 0xc5: case 0xc6: return s_body(r, it, EQ_MP_BIN, head, x);
    case 0xc7: case 0xc8: case 0xc9: return s_body(r, it, EQ_MP_EXT, head + 1, x); /* + type byte */
    case 0xca: {
        uint32_t w = (uint32_t)x;
        float f;
        memcpy(&f, &w, sizeof f);
        it->kind = EQ_MP_FLOAT;
        it->v.f = f;
        r->p += head;
        return EQ_MP_OK;
    }
    case 0xcb: {
        double d;
        memcpy(&d, &x, sizeof d);
        it->kind = EQ_MP_FLOAT;
        it->v.f = d;
        r->p += head;
        return EQ_MP_OK;
    }
    case 0xcc: case 0xcd: case 0xce: case 0xcf: return s_uint(r, it, head, x);
    case 0xd0: return s_int(r, it, head, (int8_t)x);
    case 0xd1: return s_int(r, it, head, (int16_t)x);
    case 0xd2: return s_int(r, it, head, (int32_t)x);
    case 0xd3: return s_int(r, it, head, (int64_t)x);
    case 0xd9: case 0xda: case 0xdb: return s_body(r, it, EQ_MP_STR, head, x);
    case 0xdc: case 0xdd: return s_container(r, it, EQ_MP_ARRAY, head, x, 1);
    case 0xde: case 0xdf: return s_container(r, it, EQ_MP_MAP, head, x, 2);
    }
    return EQ_MP_INVALID; /* unreachable: every byte value is handled above */
}

eq_mp_rc eq_mp_skip(eq_mp_reader *r, int max_depth)
{
    eq_mp_item it;
    eq_mp_rc rc = eq_mp_next(r, &it);
    if (rc != EQ_MP_OK) return rc;
    if (it.kind != EQ_MP_ARRAY && it.kind != EQ_MP_MAP) return EQ_MP_OK;
    if (max_depth <= 0) return EQ_MP_TOO_DEEP;
    uint64_t n = it.kind == EQ_MP_MAP ? 2 * (uint64_t)it.v.n : it.v.n;
    for (uint64_t k = 0; k < n; k++)
        if ((rc = eq_mp_skip(r, max_depth - 1)) != EQ_MP_OK) return rc;
    return EQ_MP_OK;
}
