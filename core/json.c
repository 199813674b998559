/*
 * core/json.c -- strict RFC 8259 DOM reader (see json.h for the contract).
 *
 * Design (speed and memory for 450 MB COCO files):
 * - The text is parsed from a buffer followed by EQ_FILE_PAD zero bytes, so
 *   no loop needs an end check: the NUL sentinel stops every scanner, and a
 *   NUL is only "end of input" when it sits at `end` (elsewhere it is an
 *   error).  eq_json_parse copies the caller's text into such a buffer
 *   (freed after parsing); eq_json_parse_file reads the file straight into
 *   one.
 * - Nodes are 24 bytes: type, int flag, a 32-bit length/count, line and
 *   byte column (computed while parsing: only whitespace holds newlines)
 *   and an 8-byte payload (double, int64, string pointer or children).
 * - Everything lives in one chunked arena owned by the document: strings are
 *   copied there unescaped and NUL-terminated, containers keep their
 *   children contiguously (objects as key node, value node, key node, ...).
 *   The parser is iterative: values pile up on a temporary stack, and when a
 *   container closes its children are copied once into the arena.
 * - Numbers: integer literals that fit int64 are kept exactly; other
 *   numbers use Clinger's exact fast path (<= 19 significant digits held
 *   exactly, mantissa <= 2^53, |power of ten| <= 22 (+15 for integers)),
 *   otherwise glibc's correctly rounded strtod_l in the "C" locale.  Like
 *   Python's json, a number too large for a double becomes +-inf, not an
 *   error.
 * Limits: a single string or container may hold < 2^32 bytes/elements;
 * columns saturate at 2^32-1.
 */
#define _GNU_SOURCE /* strtod_l, newlocale */
#include "core/json.h"

#include <errno.h>
#include <locale.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"

struct eq_json {
    uint8_t type;  /* eq_json_type */
    uint8_t isint; /* number written as an int64 literal: u.i is exact */
    uint16_t pad_;
    uint32_t len;  /* string bytes, array elements, object members */
    uint32_t line; /* 1-based */
    uint32_t col;  /* 1-based byte column */
    union {
        double d;
        int64_t i;
        const char *s;
        const eq_json *kids; /* arrays: len nodes; objects: 2*len (key, value) */
    } u;
};

typedef struct s_block {
    struct s_block *next;
    size_t cap, used;
    _Alignas(16) unsigned char data[];
} s_block;

struct eq_json_doc {
    s_block *blocks; /* head is the block being filled */
    eq_json root;
};

#define S_BLOCK_MIN ((size_t)64 << 10)
#define S_BLOCK_MAX ((size_t)16 << 20)

static void *s_alloc(eq_json_doc *doc, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    s_block *b = doc->blocks;
    if (b && b->cap - b->used >= n) {
        void *r = b->data + b->used;
        b->used += n;
        return r;
    }
    size_t cap = b ? b->cap * 2 : S_BLOCK_MIN;
    if (cap > S_BLOCK_MAX) cap = S_BLOCK_MAX;
    if (n > cap / 4) {
        /* big request: a block of its own, behind the current one */
        s_block *nb = malloc(sizeof *nb + n);
        if (!nb) return NULL;
        nb->cap = nb->used = n;
        if (b) {
            nb->next = b->next;
            b->next = nb;
        } else {
            nb->next = NULL;
            doc->blocks = nb;
        }
        return nb->data;
    }
    s_block *nb = malloc(sizeof *nb + cap);
    if (!nb) return NULL;
    nb->cap = cap;
    nb->used = n;
    nb->next = b;
    doc->blocks = nb;
    return nb->data;
}

/* ---- parser state ------------------------------------------------------- */

typedef struct s_frame {
    size_t start; /* first child on the value stack */
    eq_json node; /* the container being built (type, line, col) */
} s_frame;

typedef struct s_parser {
    const unsigned char *end; /* text end; *end == 0 (sentinel) */
    const unsigned char *ls;  /* start of the current line */
    uint32_t line;
    eq_json *stk; /* value stack */
    size_t ntop, cap;
    s_frame *frames;
    size_t nframes, fcap, max_depth;
    eq_json_doc *doc;
    locale_t cloc; /* "C" locale for strtod_l, created on first need */
    eq_err *err;
} s_parser;

/* 1: byte needs attention inside a string (quote, backslash, control, non-ASCII) */
static const unsigned char s_strspecial[256] = {
#define R16(v) v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v
    R16(1), R16(1),
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x20: '"' */
    R16(0), R16(0),
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, /* 0x50: '\\' */
    R16(0), R16(0),
    R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1),
#undef R16
};

static uint32_t s_col(const s_parser *ps, const unsigned char *p)
{
    size_t c = (size_t)(p - ps->ls) + 1;
    return c > UINT32_MAX ? UINT32_MAX : (uint32_t)c;
}

static int s_fail(s_parser *ps, const unsigned char *p, eq_status code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int s_fail(s_parser *ps, const unsigned char *p, eq_status code, const char *fmt, ...)
{
    if (ps->err) {
        char msg[EQ_ERR_MSG_LEN];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        eq_err_set(ps->err, code, "line %u, column %u: %s", (unsigned)ps->line,
                   (unsigned)s_col(ps, p), msg);
    }
    return -1;
}

static int s_nomem(s_parser *ps)
{
    eq_err_set(ps->err, EQ_ERR_NOMEM, "out of memory while parsing JSON");
    return -1;
}

/* Describe the byte at p for "unexpected ..." messages. */
static const char *s_what(const s_parser *ps, const unsigned char *p, char buf[32])
{
    if (p >= ps->end) return "end of input";
    if (*p >= 0x21 && *p < 0x7f)
        snprintf(buf, 32, "character '%c'", *p);
    else
        snprintf(buf, 32, "byte 0x%02x", *p);
    return buf;
}

static inline eq_json *s_push(s_parser *ps)
{
    if (ps->ntop == ps->cap) {
        size_t ncap = ps->cap ? ps->cap * 2 : 1024;
        eq_json *n = eq_malloc_array(ncap, sizeof *n);
        if (!n) return NULL;
        if (ps->ntop) memcpy(n, ps->stk, ps->ntop * sizeof *n);
        free(ps->stk);
        ps->stk = n;
        ps->cap = ncap;
    }
    return &ps->stk[ps->ntop++];
}

static inline const unsigned char *s_ws(s_parser *ps, const unsigned char *p)
{
    for (;;) {
        unsigned char c = *p;
        if (c > ' ') return p;
        if (c == ' ' || c == '\t' || c == '\r')
            p++;
        else if (c == '\n') {
            p++;
            ps->line++;
            ps->ls = p;
        } else
            return p;
    }
}

/* ---- strings ------------------------------------------------------------ */

static int s_hex4(const unsigned char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v * 16 + d;
    }
    *out = v;
    return 0;
}

/* Length of a valid UTF-8 sequence at p (2..4), or 0 if invalid. */
static int s_utf8_len(const unsigned char *p)
{
    unsigned c = p[0];
#define CONT(x) (((x) & 0xC0) == 0x80)
    if (c >= 0xC2 && c <= 0xDF) return CONT(p[1]) ? 2 : 0;
    if (c == 0xE0) return (p[1] >= 0xA0 && p[1] <= 0xBF && CONT(p[2])) ? 3 : 0;
    if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) return (CONT(p[1]) && CONT(p[2])) ? 3 : 0;
    if (c == 0xED) return (p[1] >= 0x80 && p[1] <= 0x9F && CONT(p[2])) ? 3 : 0;
    if (c == 0xF0) return (p[1] >= 0x90 && p[1] <= 0xBF && CONT(p[2]) && CONT(p[3])) ? 4 : 0;
    if (c >= 0xF1 && c <= 0xF3) return (CONT(p[1]) && CONT(p[2]) && CONT(p[3])) ? 4 : 0;
    if (c == 0xF4) return (p[1] >= 0x80 && p[1] <= 0x8F && CONT(p[2]) && CONT(p[3])) ? 4 : 0;
    return 0;
#undef CONT
}

static inline int s_swar_special(uint64_t x)
{
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');
    uint64_t t = ((x - ones * 0x20) & ~x) | ((q - ones) & ~q) | ((b - ones) & ~b) | x;
    return (t & high) != 0;
}

/* p at the opening quote; fills a string node; returns the position after
 * the closing quote or NULL on error. */
static const unsigned char *s_string(s_parser *ps, const unsigned char *p, eq_json *out)
{
    const unsigned char *open = p, *s = p + 1, *q = s;
    for (;;) { /* safe: the buffer has EQ_FILE_PAD zero bytes after end */
        uint64_t x;
        memcpy(&x, q, 8);
        if (s_swar_special(x)) break;
        q += 8;
    }
    while (!s_strspecial[*q]) q++;
    size_t rawlen;
    if (*q == '"') {
        rawlen = (size_t)(q - s);
        if (rawlen > UINT32_MAX) return s_fail(ps, open, EQ_ERR_LIMIT, "string longer than 4 GiB"), NULL;
        char *dst = s_alloc(ps->doc, rawlen + 1);
        if (!dst) return s_nomem(ps), NULL;
        memcpy(dst, s, rawlen);
        dst[rawlen] = '\0';
        out->type = EQ_JSON_STRING;
        out->len = (uint32_t)rawlen;
        out->u.s = dst;
        return q + 1;
    }
    /* slow path: find the closing quote, then decode */
    const unsigned char *r = q;
    for (;;) {
        unsigned char c = *r;
        if (c == '"') break;
        if (r >= ps->end) return s_fail(ps, open, EQ_ERR_PARSE, "unterminated string"), NULL;
        if (c == '\\') {
            r++;
            if (r >= ps->end) return s_fail(ps, open, EQ_ERR_PARSE, "unterminated string"), NULL;
        }
        r++;
    }
    rawlen = (size_t)(r - s);
    if (rawlen > UINT32_MAX) return s_fail(ps, open, EQ_ERR_LIMIT, "string longer than 4 GiB"), NULL;
    char *dst = s_alloc(ps->doc, rawlen + 1), *o = dst;
    if (!dst) return s_nomem(ps), NULL;
    memcpy(o, s, (size_t)(q - s));
    o += q - s;
    while (q < r) {
        unsigned c = *q;
        if (c == '\\') {
            unsigned e = q[1];
            switch (e) {
            case '"': *o++ = '"'; q += 2; continue;
            case '\\': *o++ = '\\'; q += 2; continue;
            case '/': *o++ = '/'; q += 2; continue;
            case 'b': *o++ = '\b'; q += 2; continue;
            case 'f': *o++ = '\f'; q += 2; continue;
            case 'n': *o++ = '\n'; q += 2; continue;
            case 'r': *o++ = '\r'; q += 2; continue;
            case 't': *o++ = '\t'; q += 2; continue;
            case 'u': break;
            default:
                if (e >= 0x21 && e < 0x7f)
                    return s_fail(ps, q, EQ_ERR_PARSE, "invalid escape '\\%c' in string", e), NULL;
                return s_fail(ps, q, EQ_ERR_PARSE, "invalid escape (backslash before byte 0x%02x) in string", e), NULL;
            }
            unsigned u;
            if (s_hex4(q + 2, &u) != 0)
                return s_fail(ps, q, EQ_ERR_PARSE, "invalid \\u escape: expected 4 hex digits"), NULL;
            if (u >= 0xDC00 && u <= 0xDFFF)
                return s_fail(ps, q, EQ_ERR_PARSE, "invalid \\u escape: unpaired low surrogate \\u%04X", u), NULL;
            if (u >= 0xD800 && u <= 0xDBFF) {
                unsigned lo;
                if (q[6] != '\\' || q[7] != 'u' || s_hex4(q + 8, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF)
                    return s_fail(ps, q, EQ_ERR_PARSE,
                                  "invalid \\u escape: high surrogate \\u%04X not followed by a low surrogate", u),
                           NULL;
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                q += 12;
            } else
                q += 6;
            if (u < 0x80)
                *o++ = (char)u;
            else if (u < 0x800) {
                *o++ = (char)(0xC0 | (u >> 6));
                *o++ = (char)(0x80 | (u & 0x3F));
            } else if (u < 0x10000) {
                *o++ = (char)(0xE0 | (u >> 12));
                *o++ = (char)(0x80 | ((u >> 6) & 0x3F));
                *o++ = (char)(0x80 | (u & 0x3F));
            } else {
                *o++ = (char)(0xF0 | (u >> 18));
                *o++ = (char)(0x80 | ((u >> 12) & 0x3F));
                *o++ = (char)(0x80 | ((u >> 6) & 0x3F));
                *o++ = (char)(0x80 | (u & 0x3F));
            }
        } else if (c < 0x20) {
            return s_fail(ps, q, EQ_ERR_PARSE, "control character 0x%02x in string (must be escaped)", c), NULL;
        } else if (c >= 0x80) {
            int n = s_utf8_len(q);
            if (n == 0 || q + n > r) return s_fail(ps, q, EQ_ERR_PARSE, "invalid UTF-8 byte 0x%02x in string", c), NULL;
            memcpy(o, q, (size_t)n);
            o += n;
            q += n;
        } else {
            *o++ = (char)c;
            q++;
        }
    }
    *o = '\0';
    out->type = EQ_JSON_STRING;
    out->len = (uint32_t)(o - dst);
    out->u.s = dst;
    return r + 1;
}

/* ---- numbers ------------------------------------------------------------ */

static const double s_pow10[23] = { 1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                    1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                    1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22 };

static inline int s_digit(unsigned c) { return c - '0' < 10u; }

static const unsigned char *s_number(s_parser *ps, const unsigned char *p, eq_json *out)
{
    const unsigned char *start = p;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    uint64_t m = 0;
    int nd = 0;        /* significant digits held in m */
    int inexact = 0;   /* a nonzero digit did not fit in m */
    int64_t e10 = 0;   /* value = m * 10^e10 (when !inexact) */
    int isint = 1;
    if (*p == '0') {
        p++;
        if (s_digit(*p)) return s_fail(ps, start, EQ_ERR_PARSE, "invalid number: leading zero"), NULL;
    } else if (*p >= '1' && *p <= '9') {
        do {
            unsigned d = *p - '0';
            if (nd < 19) {
                m = m * 10 + d;
                nd++;
            } else {
                e10++;
                if (d) inexact = 1;
            }
            p++;
        } while (s_digit(*p));
    } else {
        char buf[32];
        return s_fail(ps, p, EQ_ERR_PARSE, "invalid number: expected a digit, got %s", s_what(ps, p, buf)), NULL;
    }
    if (*p == '.') {
        isint = 0;
        p++;
        if (!s_digit(*p)) return s_fail(ps, p, EQ_ERR_PARSE, "invalid number: expected a digit after '.'"), NULL;
        do {
            unsigned d = *p - '0';
            if (m == 0 && d == 0)
                e10--;
            else if (nd < 19) {
                m = m * 10 + d;
                nd++;
                e10--;
            } else if (d)
                inexact = 1;
            p++;
        } while (s_digit(*p));
    }
    if (*p == 'e' || *p == 'E') {
        isint = 0;
        p++;
        int eneg = 0;
        if (*p == '+' || *p == '-') eneg = *p++ == '-';
        if (!s_digit(*p)) return s_fail(ps, p, EQ_ERR_PARSE, "invalid number: expected a digit in the exponent"), NULL;
        int64_t ex = 0;
        do {
            if (ex < 1000000000) ex = ex * 10 + (*p - '0');
            p++;
        } while (s_digit(*p));
        e10 += eneg ? -ex : ex;
    }
    out->type = EQ_JSON_NUMBER;
    if (isint && !inexact && e10 == 0) {
        if (!neg && m <= (uint64_t)INT64_MAX) {
            out->isint = 1;
            out->u.i = (int64_t)m;
            return p;
        }
        if (neg && m <= (uint64_t)INT64_MAX + 1) {
            out->isint = 1;
            out->u.i = m == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)m;
            return p;
        }
    }
    if (!inexact && m <= ((uint64_t)1 << 53)) {
        double d;
        int ok = 1;
        if (m == 0)
            d = 0.0;
        else if (e10 >= 0 && e10 <= 22)
            d = (double)m * s_pow10[e10];
        else if (e10 < 0 && e10 >= -22)
            d = (double)m / s_pow10[-e10];
        else if (e10 > 22 && e10 <= 22 + 16) {
            /* m * 10^(e10-22) may still be an exact integer < 2^53 */
            uint64_t mm = m;
            for (int64_t k = 22; k < e10 && ok; k++) {
                if (mm > ((uint64_t)1 << 53) / 10) ok = 0;
                mm *= 10;
            }
            d = (double)mm * 1e22;
        } else
            ok = 0;
        if (ok) {
            out->isint = 0;
            out->u.d = neg ? -d : d;
            return p;
        }
    }
    /* correctly rounded fallback */
    if (!ps->cloc) {
        ps->cloc = newlocale(LC_ALL_MASK, "C", (locale_t)0);
        if (!ps->cloc) return s_nomem(ps), NULL;
    }
    char *endp;
    double d = strtod_l((const char *)start, &endp, ps->cloc);
    if ((const unsigned char *)endp != p) {
        /* strtod read more than the JSON grammar allows ("0x1"): parse a copy */
        size_t n = (size_t)(p - start);
        char *tmp = malloc(n + 1);
        if (!tmp) return s_nomem(ps), NULL;
        memcpy(tmp, start, n);
        tmp[n] = '\0';
        d = strtod_l(tmp, &endp, ps->cloc);
        int bad = endp != tmp + n;
        free(tmp);
        if (bad) return s_fail(ps, start, EQ_ERR_INTERNAL, "number not converted"), NULL;
    }
    out->isint = 0;
    out->u.d = d;
    return p;
}

/* ---- values ------------------------------------------------------------- */

static int s_lit(const unsigned char *p, const char *lit, size_t n)
{
    return memcmp(p, lit, n) == 0; /* safe: the sentinel padding is >= 8 bytes */
}

/* Scalar value at p (not '[' or '{'); pushes it.  Returns next position. */
static const unsigned char *s_scalar(s_parser *ps, const unsigned char *p)
{
    eq_json *v = s_push(ps);
    if (!v) return s_nomem(ps), NULL;
    v->isint = 0;
    v->pad_ = 0;
    v->len = 0;
    v->line = ps->line;
    v->col = s_col(ps, p);
    v->u.i = 0;
    unsigned c = *p;
    if (c == '"') return s_string(ps, p, v);
    if (c == '-' || s_digit(c)) return s_number(ps, p, v);
    if (c == 't' && s_lit(p, "true", 4)) {
        v->type = EQ_JSON_TRUE;
        return p + 4;
    }
    if (c == 'f' && s_lit(p, "false", 5)) {
        v->type = EQ_JSON_FALSE;
        return p + 5;
    }
    if (c == 'n' && s_lit(p, "null", 4)) {
        v->type = EQ_JSON_NULL;
        return p + 4;
    }
    if (p < ps->end && (s_lit(p, "NaN", 3) || s_lit(p, "Infinity", 8)))
        return s_fail(ps, p, EQ_ERR_PARSE, "NaN and Infinity are not valid JSON"), NULL;
    if (p + 2 < ps->end && p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF)
        return s_fail(ps, p, EQ_ERR_PARSE, "unexpected UTF-8 byte order mark"), NULL;
    char buf[32];
    return s_fail(ps, p, EQ_ERR_PARSE, "expected a value, got %s", s_what(ps, p, buf)), NULL;
}

/* Parse an object key (p at '"' expected), then ':'.  Returns the position
 * of the value (after whitespace). */
static const unsigned char *s_key(s_parser *ps, const unsigned char *p, int first)
{
    if (*p != '"') {
        char buf[32];
        return s_fail(ps, p, EQ_ERR_PARSE, first ? "expected a string key or '}', got %s" : "expected a string key, got %s",
                      s_what(ps, p, buf)),
               NULL;
    }
    p = s_scalar(ps, p);
    if (!p) return NULL;
    p = s_ws(ps, p);
    if (*p != ':') {
        char buf[32];
        return s_fail(ps, p, EQ_ERR_PARSE, "expected ':' after the key, got %s", s_what(ps, p, buf)), NULL;
    }
    return s_ws(ps, p + 1);
}

static int s_close(s_parser *ps)
{
    s_frame *f = &ps->frames[--ps->nframes];
    size_t n = ps->ntop - f->start;
    eq_json node = f->node;
    size_t count = node.type == EQ_JSON_OBJECT ? n / 2 : n;
    if (count > UINT32_MAX) {
        eq_err_set(ps->err, EQ_ERR_LIMIT, "line %u, column %u: container with more than 2^32 elements",
                   (unsigned)node.line, (unsigned)node.col);
        return -1;
    }
    node.len = (uint32_t)count;
    if (n) {
        eq_json *kids = s_alloc(ps->doc, n * sizeof *kids);
        if (!kids) return s_nomem(ps);
        memcpy(kids, ps->stk + f->start, n * sizeof *kids);
        node.u.kids = kids;
    } else
        node.u.kids = NULL;
    ps->ntop = f->start;
    eq_json *v = s_push(ps);
    if (!v) return s_nomem(ps);
    *v = node;
    return 0;
}

static int s_open(s_parser *ps, const unsigned char *p, eq_json_type t)
{
    if (ps->nframes >= ps->max_depth)
        return s_fail(ps, p, EQ_ERR_LIMIT, "nesting deeper than %zu levels", ps->max_depth);
    if (ps->nframes == ps->fcap) {
        size_t ncap = ps->fcap ? ps->fcap * 2 : 32;
        s_frame *nf = eq_malloc_array(ncap, sizeof *nf);
        if (!nf) return s_nomem(ps);
        if (ps->nframes) memcpy(nf, ps->frames, ps->nframes * sizeof *nf);
        free(ps->frames);
        ps->frames = nf;
        ps->fcap = ncap;
    }
    s_frame *f = &ps->frames[ps->nframes++];
    f->start = ps->ntop;
    memset(&f->node, 0, sizeof f->node);
    f->node.type = (uint8_t)t;
    f->node.line = ps->line;
    f->node.col = s_col(ps, p);
    return 0;
}

static int s_run(s_parser *ps, const unsigned char *p)
{
    p = s_ws(ps, p);
    for (;;) {
        /* expecting a value at p (whitespace skipped) */
        unsigned c = *p;
        if (c == '{' || c == '[') {
            int obj = c == '{';
            if (s_open(ps, p, obj ? EQ_JSON_OBJECT : EQ_JSON_ARRAY) != 0) return -1;
            p = s_ws(ps, p + 1);
            if (*p == (obj ? '}' : ']')) {
                p++;
                if (s_close(ps) != 0) return -1;
            } else {
                if (obj && !(p = s_key(ps, p, 1))) return -1;
                continue;
            }
        } else {
            p = s_scalar(ps, p);
            if (!p) return -1;
        }
        /* after a value: close containers or move to the next element */
        for (;;) {
            if (ps->nframes == 0) {
                p = s_ws(ps, p);
                if (p != ps->end) {
                    char buf[32];
                    return s_fail(ps, p, EQ_ERR_PARSE, "unexpected %s after the JSON value", s_what(ps, p, buf));
                }
                return 0;
            }
            p = s_ws(ps, p);
            int obj = ps->frames[ps->nframes - 1].node.type == EQ_JSON_OBJECT;
            if (*p == ',') {
                p = s_ws(ps, p + 1);
                if (obj && !(p = s_key(ps, p, 0))) return -1;
                break;
            }
            if (*p == (obj ? '}' : ']')) {
                p++;
                if (s_close(ps) != 0) return -1;
                continue;
            }
            char buf[32];
            return s_fail(ps, p, EQ_ERR_PARSE, obj ? "expected ',' or '}', got %s" : "expected ',' or ']', got %s",
                          s_what(ps, p, buf));
        }
    }
}

/* Parse text[0..len) where text[len..len+EQ_FILE_PAD) are zero bytes. */
static eq_json_doc *s_parse_padded(const char *text, size_t len, const eq_json_opts *opts, eq_err *err)
{
    eq_json_doc *doc = calloc(1, sizeof *doc);
    if (!doc) {
        eq_err_set(err, EQ_ERR_NOMEM, "out of memory while parsing JSON");
        return NULL;
    }
    s_parser ps = { 0 };
    ps.end = (const unsigned char *)text + len;
    ps.ls = (const unsigned char *)text;
    ps.line = 1;
    ps.max_depth = opts && opts->max_depth ? opts->max_depth : 512;
    ps.doc = doc;
    ps.err = err;
    int rc = s_run(&ps, (const unsigned char *)text);
    if (rc == 0) doc->root = ps.stk[0];
    free(ps.stk);
    free(ps.frames);
    if (ps.cloc) freelocale(ps.cloc);
    if (rc != 0) {
        eq_json_doc_destroy(&doc);
        return NULL;
    }
    return doc;
}

eq_json_doc *eq_json_parse(const char *text, size_t len, const eq_json_opts *opts, eq_err *err)
{
    if (!text && len) {
        eq_err_set(err, EQ_ERR_INVALID, "eq_json_parse: NULL text");
        return NULL;
    }
    if (opts && opts->max_bytes && len > opts->max_bytes) {
        eq_err_set(err, EQ_ERR_LIMIT, "JSON text of %zu bytes exceeds the limit of %zu bytes", len, opts->max_bytes);
        return NULL;
    }
    if (len > SIZE_MAX - EQ_FILE_PAD) {
        eq_err_set(err, EQ_ERR_NOMEM, "JSON text too large");
        return NULL;
    }
    char *buf = malloc(len + EQ_FILE_PAD);
    if (!buf) {
        eq_err_set(err, EQ_ERR_NOMEM, "out of memory copying %zu bytes of JSON", len);
        return NULL;
    }
    if (len) memcpy(buf, text, len);
    memset(buf + len, 0, EQ_FILE_PAD);
    eq_json_doc *doc = s_parse_padded(buf, len, opts, err);
    free(buf);
    return doc;
}

eq_json_doc *eq_json_parse_file(const char *path, const eq_json_opts *opts, eq_err *err)
{
    char *buf;
    size_t len;
    size_t limit = opts && opts->max_bytes ? opts->max_bytes : 0;
    if (eq_file_read(path, limit, &buf, &len, err) != EQ_OK) return NULL;
    eq_json_doc *doc = s_parse_padded(buf, len, opts, err);
    free(buf);
    if (!doc) eq_err_prefix(err, "%s: ", path);
    return doc;
}

void eq_json_doc_destroy(eq_json_doc **doc_p)
{
    if (!doc_p || !*doc_p) return;
    s_block *b = (*doc_p)->blocks;
    while (b) {
        s_block *n = b->next;
        free(b);
        b = n;
    }
    free(*doc_p);
    *doc_p = NULL;
}

/* ---- accessors ---------------------------------------------------------- */

const eq_json *eq_json_root(const eq_json_doc *doc) { return doc ? &doc->root : NULL; }

eq_json_type eq_json_typeof(const eq_json *v) { return v ? (eq_json_type)v->type : EQ_JSON_NULL; }

const char *eq_json_type_name(eq_json_type t)
{
    switch (t) {
    case EQ_JSON_NULL: return "null";
    case EQ_JSON_FALSE: return "false";
    case EQ_JSON_TRUE: return "true";
    case EQ_JSON_NUMBER: return "number";
    case EQ_JSON_STRING: return "string";
    case EQ_JSON_ARRAY: return "array";
    case EQ_JSON_OBJECT: return "object";
    }
    return "?";
}

size_t eq_json_len(const eq_json *v)
{
    return v && (v->type == EQ_JSON_ARRAY || v->type == EQ_JSON_OBJECT) ? v->len : 0;
}

const eq_json *eq_json_at(const eq_json *v, size_t i)
{
    if (!v || i >= v->len) return NULL;
    if (v->type == EQ_JSON_ARRAY) return &v->u.kids[i];
    if (v->type == EQ_JSON_OBJECT) return &v->u.kids[2 * i + 1];
    return NULL;
}

const char *eq_json_key_at(const eq_json *v, size_t i, size_t *len)
{
    if (!v || v->type != EQ_JSON_OBJECT || i >= v->len) return NULL;
    const eq_json *k = &v->u.kids[2 * i];
    if (len) *len = k->len;
    return k->u.s;
}

const eq_json *eq_json_get(const eq_json *obj, const char *key)
{
    if (!obj || obj->type != EQ_JSON_OBJECT || !key) return NULL;
    size_t n = strlen(key);
    for (size_t i = obj->len; i-- > 0;) {
        const eq_json *k = &obj->u.kids[2 * i];
        if (k->len == n && memcmp(k->u.s, key, n) == 0) return &obj->u.kids[2 * i + 1];
    }
    return NULL;
}

double eq_json_num(const eq_json *v)
{
    if (!v || v->type != EQ_JSON_NUMBER) return 0;
    return v->isint ? (double)v->u.i : v->u.d;
}

int eq_json_int(const eq_json *v, int64_t *out)
{
    if (!v || v->type != EQ_JSON_NUMBER || !v->isint) return 0;
    if (out) *out = v->u.i;
    return 1;
}

const char *eq_json_str(const eq_json *v, size_t *len)
{
    if (!v || v->type != EQ_JSON_STRING) return NULL;
    if (len) *len = v->len;
    return v->u.s;
}

uint32_t eq_json_line(const eq_json *v) { return v ? v->line : 0; }
uint32_t eq_json_col(const eq_json *v) { return v ? v->col : 0; }
