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
 * - Nodes are 16 bytes: a tag (type, int flag, line, byte column --
 *   computed while parsing, since only whitespace holds newlines) and an
 *   8-byte payload (double, int64, string pointer or children pointer).
 * - Everything lives in one chunked arena owned by the document (big blocks
 *   are mmap'ed with transparent huge pages requested): strings are copied
 *   there unescaped, NUL-terminated, with their length just before them;
 *   object keys are shared through a small cache; containers keep their
 *   children contiguously after a count (objects as key, value, key, ...).
 *   The parser is iterative: values pile up on a temporary stack, and when a
 *   container closes its children are copied once into the arena.
 * - Numbers: integer literals that fit int64 are kept exactly; other
 *   numbers use Clinger's exact fast path (<= 19 significant digits held
 *   exactly, mantissa <= 2^53, |power of ten| <= 22 (+15 for integers)),
 *   otherwise glibc's correctly rounded strtod_l in the "C" locale.  Like
 *   Python's json, a number too large for a double becomes +-inf, not an
 *   error.
 * Limits: a single string may hold < 4 GiB; lines saturate at 2^28-1 and
 * columns at 2^32-1 (positions only; parsing is unaffected).
 */
#define _GNU_SOURCE /* strtod_l, newlocale */
#include "core/json.h"

#include <errno.h>
#include <locale.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/file.h"

/* A node is 16 bytes: memory traffic (and, on this VM, page faults) is
 * what a large document costs, so every byte counts. */
struct eq_json {
    /* bits 0-2 type, bit 3: number written as an int64 literal (u.i exact),
     * bits 4-31: line (1-based, saturating), bits 32-63: byte column */
    uint64_t tag;
    union {
        double d;
        int64_t i;
        const char *s;       /* NUL-terminated; uint32 length just before it */
        const eq_json *kids; /* uint64 count just before; arrays: count nodes,
                                objects: 2*count (key, value, key, ...) */
    } u;
};

#define S_TYPE(v) ((eq_json_type)((v)->tag & 7))
#define S_ISINT(v) (((v)->tag >> 3) & 1)
#define S_LINE_MAX 0x0FFFFFFFu
#define S_STRLEN(v) (((const uint32_t *)(const void *)(v)->u.s)[-1])
#define S_COUNT(v) (((const uint64_t *)(const void *)(v)->u.kids)[-1])

static const uint64_t s_empty_kids[2] = { 0, 0 }; /* count 0, then "kids" */

static inline uint64_t s_tag(eq_json_type t, uint32_t line, uint32_t col)
{
    if (line > S_LINE_MAX) line = S_LINE_MAX;
    return (uint64_t)t | ((uint64_t)line << 4) | ((uint64_t)col << 32);
}

typedef struct s_block {
    struct s_block *next;
    size_t cap, used;
    size_t mapped; /* bytes mmap'ed (0: malloc'ed) */
    _Alignas(8) unsigned char data[];
} s_block;

struct eq_json_doc {
    s_block *blocks; /* head is the block being filled */
    size_t first_cap; /* size of the first block: small documents stay small */
    eq_json root;
};

#define S_BLOCK_MIN ((size_t)64 << 10)
#define S_BLOCK_MAX ((size_t)16 << 20)
#define S_MAP_MIN ((size_t)2 << 20)

/* Big buffers come from mmap with transparent huge pages requested: on
 * large documents first-touch page faults otherwise cost as much as the
 * parsing itself (measured: ~40% of the time on a 50 MB file). */
static void *s_big_alloc(size_t n, size_t *mapped)
{
    *mapped = 0;
    if (n >= S_MAP_MIN) {
        void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED) {
#ifdef MADV_HUGEPAGE
            madvise(p, n, MADV_HUGEPAGE);
#endif
            *mapped = n;
            return p;
        }
    }
    return malloc(n);
}

static void s_big_free(void *p, size_t mapped)
{
    if (mapped)
        munmap(p, mapped);
    else
        free(p);
}

static s_block *s_block_new(size_t cap)
{
    size_t mapped;
    if (cap > SIZE_MAX - sizeof(s_block)) return NULL;
    s_block *b = s_big_alloc(sizeof(s_block) + cap, &mapped);
    if (!b) return NULL;
    b->cap = cap;
    b->used = 0;
    b->mapped = mapped;
    return b;
}

static void *s_alloc(eq_json_doc *doc, size_t n)
{
    n = (n + 7) & ~(size_t)7;
    s_block *b = doc->blocks;
    if (b && b->cap - b->used >= n) {
        void *r = b->data + b->used;
        b->used += n;
        return r;
    }
    size_t cap = b ? b->cap * 2 : doc->first_cap;
    if (cap > S_BLOCK_MAX) cap = S_BLOCK_MAX;
    if (n > cap / 4) {
        /* big request: a block of its own, behind the current one */
        s_block *nb = s_block_new(n);
        if (!nb) return NULL;
        nb->used = n;
        if (b) {
            nb->next = b->next;
            b->next = nb;
        } else {
            nb->next = NULL;
            doc->blocks = nb;
        }
        return nb->data;
    }
    s_block *nb = s_block_new(cap);
    if (!nb) return NULL;
    nb->used = n;
    nb->next = b;
    doc->blocks = nb;
    return nb->data;
}

/* ---- parser state ------------------------------------------------------- */

typedef struct s_frame {
    size_t start; /* first child on the value stack */
    uint64_t tag; /* the container being built (type, line, col) */
} s_frame;

/* Direct-mapped cache of object keys already copied to the arena: files of
 * records repeat the same few keys millions of times, and they share one
 * copy. */
#define S_KEYCACHE 512
#define S_KEYMAX 64
typedef struct s_keyent {
    const char *s; /* arena copy (length before it) */
    uint32_t len;
} s_keyent;

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
    s_keyent keys[S_KEYCACHE];
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
        size_t ncap = ps->cap ? ps->cap * 2 : 64;
        if (ncap > SIZE_MAX / sizeof(eq_json)) return NULL;
        eq_json *n = realloc(ps->stk, ncap * sizeof *n); /* big ones move by mremap */
        if (!n) return NULL;
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

/* Arena space for a string of up to `len` bytes: uint32 length (set to len),
 * the bytes, NUL. */
static char *s_newstr(s_parser *ps, size_t len)
{
    char *b = s_alloc(ps->doc, len + 5);
    if (!b) return s_nomem(ps), NULL;
    *(uint32_t *)(void *)b = (uint32_t)len;
    return b + 4;
}

/* p at the opening quote; sets out->u.s (the caller set the tag); returns
 * the position after the closing quote or NULL on error.  key: an object
 * key (shared through the key cache). */
static const unsigned char *s_string(s_parser *ps, const unsigned char *p, eq_json *out, int key)
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
        if (rawlen > UINT32_MAX - 8) return s_fail(ps, open, EQ_ERR_LIMIT, "string longer than 4 GiB"), NULL;
        s_keyent *ke = NULL;
        if (key && rawlen <= S_KEYMAX) {
            uint32_t h = 2166136261u;
            for (size_t i = 0; i < rawlen; i++) h = (h ^ s[i]) * 16777619u;
            ke = &ps->keys[(h ^ (h >> 15)) % S_KEYCACHE];
            if (ke->s && ke->len == rawlen && memcmp(ke->s, s, rawlen) == 0) {
                out->u.s = ke->s;
                return q + 1;
            }
        }
        char *dst = s_newstr(ps, rawlen);
        if (!dst) return NULL;
        memcpy(dst, s, rawlen);
        dst[rawlen] = '\0';
        if (ke) {
            ke->s = dst;
            ke->len = (uint32_t)rawlen;
        }
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
    if (rawlen > UINT32_MAX - 8) return s_fail(ps, open, EQ_ERR_LIMIT, "string longer than 4 GiB"), NULL;
    char *dst = s_newstr(ps, rawlen), *o = dst;
    if (!dst) return NULL;
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
    ((uint32_t *)(void *)dst)[-1] = (uint32_t)(o - dst);
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
    if (isint && !inexact && e10 == 0) {
        if (!neg && m <= (uint64_t)INT64_MAX) {
            out->tag |= 8;
            out->u.i = (int64_t)m;
            return p;
        }
        if (neg && m <= (uint64_t)INT64_MAX + 1) {
            out->tag |= 8;
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
    out->u.d = d;
    return p;
}

/* ---- values ------------------------------------------------------------- */

static int s_lit(const unsigned char *p, const char *lit, size_t n)
{
    return memcmp(p, lit, n) == 0; /* safe: the sentinel padding is >= 8 bytes */
}

/* Scalar value at p (not '[' or '{'); pushes it.  Returns next position. */
static const unsigned char *s_scalar(s_parser *ps, const unsigned char *p, int key)
{
    eq_json *v = s_push(ps);
    if (!v) return s_nomem(ps), NULL;
    uint32_t line = ps->line, col = s_col(ps, p);
    v->u.i = 0;
    unsigned c = *p;
    if (c == '"') {
        v->tag = s_tag(EQ_JSON_STRING, line, col);
        return s_string(ps, p, v, key);
    }
    if (c == '-' || s_digit(c)) {
        v->tag = s_tag(EQ_JSON_NUMBER, line, col);
        return s_number(ps, p, v);
    }
    if (c == 't' && s_lit(p, "true", 4)) {
        v->tag = s_tag(EQ_JSON_TRUE, line, col);
        return p + 4;
    }
    if (c == 'f' && s_lit(p, "false", 5)) {
        v->tag = s_tag(EQ_JSON_FALSE, line, col);
        return p + 5;
    }
    if (c == 'n' && s_lit(p, "null", 4)) {
        v->tag = s_tag(EQ_JSON_NULL, line, col);
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
    p = s_scalar(ps, p, 1);
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
    eq_json node;
    node.tag = f->tag;
    size_t count = S_TYPE(&node) == EQ_JSON_OBJECT ? n / 2 : n;
    if (n) {
        uint64_t *blk = s_alloc(ps->doc, 8 + n * sizeof(eq_json));
        if (!blk) return s_nomem(ps);
        blk[0] = count;
        memcpy(blk + 1, ps->stk + f->start, n * sizeof(eq_json));
        node.u.kids = (const eq_json *)(const void *)(blk + 1);
    } else
        node.u.kids = (const eq_json *)(const void *)(s_empty_kids + 1);
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
    f->tag = s_tag(t, ps->line, s_col(ps, p));
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
            p = s_scalar(ps, p, 0);
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
            int obj = (ps->frames[ps->nframes - 1].tag & 7) == EQ_JSON_OBJECT;
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
    /* nodes take at most ~16 bytes per 2 bytes of text ("0,") */
    doc->first_cap = len < S_BLOCK_MIN / 8 ? (len * 8 + 1023) & ~(size_t)1023 : S_BLOCK_MIN;
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
    size_t mapped;
    char *buf = s_big_alloc(len + EQ_FILE_PAD, &mapped);
    if (!buf) {
        eq_err_set(err, EQ_ERR_NOMEM, "out of memory copying %zu bytes of JSON", len);
        return NULL;
    }
    if (len) memcpy(buf, text, len);
    memset(buf + len, 0, EQ_FILE_PAD);
    eq_json_doc *doc = s_parse_padded(buf, len, opts, err);
    s_big_free(buf, mapped);
    return doc;
}

/* Read a regular file into an s_big_alloc'ed, zero-padded buffer (huge
 * pages: a 450 MB file is 110k page faults otherwise).  Returns 1 when it
 * did, 0 when the caller should use eq_file_read (not a regular file, or it
 * changed size while being read), -1 on error. */
static int s_read_file(const char *path, size_t limit, char **data, size_t *len, size_t *mapped, eq_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0; /* eq_file_read reports it */
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > SIZE_MAX - EQ_FILE_PAD) {
        close(fd);
        return 0;
    }
    size_t n = (size_t)st.st_size, got = 0;
    if (limit && n > limit) {
        close(fd);
        eq_err_set(err, EQ_ERR_LIMIT, "%s: file is %zu bytes, over the limit of %zu bytes", path, n, limit);
        return -1;
    }
    char *buf = s_big_alloc(n + EQ_FILE_PAD, mapped);
    if (!buf) {
        close(fd);
        eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, n);
        return -1;
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            s_big_free(buf, *mapped);
            eq_err_set(err, EQ_ERR_IO, "%s: read: %s", path, strerror(e));
            return -1;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    char extra;
    ssize_t more = got == n ? read(fd, &extra, 1) : 0;
    close(fd);
    if (got != n || more != 0) { /* changed under us */
        s_big_free(buf, *mapped);
        return 0;
    }
    memset(buf + n, 0, EQ_FILE_PAD);
    *data = buf;
    *len = n;
    return 1;
}

eq_json_doc *eq_json_parse_file(const char *path, const eq_json_opts *opts, eq_err *err)
{
    char *buf;
    size_t len, mapped = 0;
    size_t limit = opts && opts->max_bytes ? opts->max_bytes : 0;
    int r = s_read_file(path, limit, &buf, &len, &mapped, err);
    if (r < 0) return NULL;
    if (r == 0 && eq_file_read(path, limit, &buf, &len, err) != EQ_OK) return NULL;
    eq_json_doc *doc = s_parse_padded(buf, len, opts, err);
    s_big_free(buf, mapped);
    if (!doc) eq_err_prefix(err, "%s: ", path);
    return doc;
}

void eq_json_doc_destroy(eq_json_doc **doc_p)
{
    if (!doc_p || !*doc_p) return;
    s_block *b = (*doc_p)->blocks;
    while (b) {
        s_block *n = b->next;
        s_big_free(b, b->mapped);
        b = n;
    }
    free(*doc_p);
    *doc_p = NULL;
}

/* ---- accessors ---------------------------------------------------------- */

const eq_json *eq_json_root(const eq_json_doc *doc) { return doc ? &doc->root : NULL; }

eq_json_type eq_json_typeof(const eq_json *v) { return v ? S_TYPE(v) : EQ_JSON_NULL; }

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
    return v && (S_TYPE(v) == EQ_JSON_ARRAY || S_TYPE(v) == EQ_JSON_OBJECT) ? (size_t)S_COUNT(v) : 0;
}

const eq_json *eq_json_at(const eq_json *v, size_t i)
{
    if (!v) return NULL;
    eq_json_type t = S_TYPE(v);
    if (t == EQ_JSON_ARRAY) return i < S_COUNT(v) ? &v->u.kids[i] : NULL;
    if (t == EQ_JSON_OBJECT) return i < S_COUNT(v) ? &v->u.kids[2 * i + 1] : NULL;
    return NULL;
}

const char *eq_json_key_at(const eq_json *v, size_t i, size_t *len)
{
    if (!v || S_TYPE(v) != EQ_JSON_OBJECT || i >= S_COUNT(v)) return NULL;
    const eq_json *k = &v->u.kids[2 * i];
    if (len) *len = S_STRLEN(k);
    return k->u.s;
}

const eq_json *eq_json_get(const eq_json *obj, const char *key)
{
    if (!obj || S_TYPE(obj) != EQ_JSON_OBJECT || !key) return NULL;
    size_t n = strlen(key);
    for (size_t i = (size_t)S_COUNT(obj); i-- > 0;) {
        const eq_json *k = &obj->u.kids[2 * i];
        if (S_STRLEN(k) == n && memcmp(k->u.s, key, n) == 0) return &obj->u.kids[2 * i + 1];
    }
    return NULL;
}

double eq_json_num(const eq_json *v)
{
    if (!v || S_TYPE(v) != EQ_JSON_NUMBER) return 0;
    return S_ISINT(v) ? (double)v->u.i : v->u.d;
}

int eq_json_int(const eq_json *v, int64_t *out)
{
    if (!v || S_TYPE(v) != EQ_JSON_NUMBER || !S_ISINT(v)) return 0;
    if (out) *out = v->u.i;
    return 1;
}

const char *eq_json_str(const eq_json *v, size_t *len)
{
    if (!v || S_TYPE(v) != EQ_JSON_STRING) return NULL;
    if (len) *len = S_STRLEN(v);
    return v->u.s;
}

uint32_t eq_json_line(const eq_json *v) { return v ? (uint32_t)((v->tag >> 4) & S_LINE_MAX) : 0; }
uint32_t eq_json_col(const eq_json *v) { return v ? (uint32_t)(v->tag >> 32) : 0; }
