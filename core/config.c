/*
 * core/config.c -- config file parser, schema checks, dump and docs.
 *
 * One pass over the text, line by line; every value goes through
 * s_assign_value(), which defaults, file lines and --set overrides share, so
 * a default in a schema is checked by the same code as user input.  User
 * text in messages is shown through s_snip() (quoted, escaped, cut at
 * SNIP_MAX bytes) so a 64 KiB value or a binary line cannot flood a log.
 */
#include "core/config.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SNIP_MAX 60
#define WHAT_MAX 320
#define FORM_MAX 256

/* ---------------------------------------------------------------- text */

static bool s_is_ws(char c) { return c == ' ' || c == '\t'; }

static void s_trim(const char **s, size_t *n)
{
    while (*n && s_is_ws(**s))
        (*s)++, (*n)--;
    while (*n && s_is_ws((*s)[*n - 1]))
        (*n)--;
}

static bool s_is_name_char(char c, bool dot)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || (dot && c == '.');
}

static bool s_valid_name(const char *s, size_t n, bool dot)
{
    if (n == 0) return false;
    for (size_t i = 0; i < n; i++)
        if (!s_is_name_char(s[i], dot)) return false;
    return true;
}

static bool s_eq(const char *name, const char *s, size_t n)
{
    return strlen(name) == n && memcmp(name, s, n) == 0;
}

/* Render user text for a message: "quoted" (or bare), control and non-ASCII
 * bytes as \xHH, cut after SNIP_MAX bytes with "...". */
static const char *s_snip(char *out, size_t cap, const char *s, size_t n, bool quote)
{
    size_t o = 0;
    if (quote && o + 1 < cap) out[o++] = '"';
    for (size_t i = 0; i < n && i < SNIP_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o + 5 >= cap) break;
        if (c < 0x20 || c >= 0x7f || (quote && (c == '"' || c == '\\'))) {
            if (c == '"' || c == '\\') {
                out[o++] = '\\';
                out[o++] = (char)c;
            } else {
                o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
            }
        } else {
            out[o++] = (char)c;
        }
    }
    if (n > SNIP_MAX && o + 4 < cap) memcpy(out + o, "...", 3), o += 3;
    if (quote && o + 1 < cap) out[o++] = '"';
    out[o] = '\0';
    return out;
}

/* Growable output text for dump and doc. */
typedef struct s_buf {
    char *p;
    size_t len, cap;
    bool failed;
} s_buf;

static void s_add(s_buf *b, const char *s, size_t n)
{
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void s_adds(s_buf *b, const char *s) { s_add(b, s, strlen(s)); }

__attribute__((format(printf, 2, 3))) static void s_addf(s_buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = true;
        return;
    }
    s_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static eq_status s_buf_finish(s_buf *b, char **out, size_t *len, eq_err *err)
{
    if (!b->failed && !b->p) s_add(b, "", 0);
    if (b->failed) {
        free(b->p);
        return eq_err_set(err, EQ_ERR_NOMEM, "config: out of memory writing text");
    }
    *out = b->p;
    if (len) *len = b->len;
    return EQ_OK;
}

/* Shortest "%.Ng" that reads back as exactly x; whole numbers below 1e15
 * without an exponent ("10", not "1e+01"). */
static void s_fmt_double(char *buf, size_t cap, double x)
{
    if (x == floor(x) && fabs(x) < 1e15) {
        snprintf(buf, cap, "%.0f", x);
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, cap, "%.*g", p, x);
        if (strtod(buf, NULL) == x) return;
    }
}

/* ------------------------------------------------------ "did you mean" */

static char s_lower(char c) { return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c; }

/* Case-insensitive Levenshtein distance between s[0..n) and cand, or a
 * large number when the lengths alone differ by more than 2. */
static size_t s_distance(const char *s, size_t n, const char *cand)
{
    size_t m = strlen(cand);
    if (m > 64 || (n > m ? n - m : m - n) > 2) return SIZE_MAX;
    size_t row[65];
    for (size_t j = 0; j <= m; j++)
        row[j] = j;
    for (size_t i = 1; i <= n; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= m; j++) {
            size_t up = row[j];
            size_t cost = s_lower(s[i - 1]) == s_lower(cand[j - 1]) ? 0 : 1;
            size_t best = diag + cost;
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[m];
}

/* Keep in *best the candidate closest to s, if close enough to suggest. */
static void s_closer(const char *cand, const char *s, size_t n, const char **best, size_t *bestd)
{
    size_t d = s_distance(s, n, cand);
    size_t len = strlen(cand);
    size_t limit = len / 3 < 1 ? 1 : (len / 3 > 2 ? 2 : len / 3);
    if (d <= limit && d < *bestd) {
        *best = cand;
        *bestd = d;
    }
}

/* ------------------------------------------------------- forms, ranges */

const char *eq_config_type_str(eq_config_type t)
{
    static const char *const names[EQ_CONFIG_TYPE_COUNT] = {
        [EQ_CONFIG_BOOL] = "bool",
        [EQ_CONFIG_INT] = "int",
        [EQ_CONFIG_FLOAT] = "float",
        [EQ_CONFIG_STRING] = "string",
        [EQ_CONFIG_ENUM] = "enum",
        [EQ_CONFIG_INT_LIST] = "int list",
        [EQ_CONFIG_FLOAT_LIST] = "float list",
        [EQ_CONFIG_STRING_LIST] = "string list",
    };
    if ((unsigned)t >= EQ_CONFIG_TYPE_COUNT) return "unknown";
    return names[t];
}

/* "[lo, hi]", ">= lo", "<= hi" or "" for the key's numeric range. */
static void s_range(const eq_config_key *k, char *buf, size_t cap)
{
    char lo[40], hi[40];
    bool has_lo, has_hi;
    if (k->type == EQ_CONFIG_INT || k->type == EQ_CONFIG_INT_LIST) {
        has_lo = k->int_min != INT64_MIN;
        has_hi = k->int_max != INT64_MAX;
        snprintf(lo, sizeof lo, "%" PRId64, k->int_min);
        snprintf(hi, sizeof hi, "%" PRId64, k->int_max);
    } else {
        has_lo = isfinite(k->float_min);
        has_hi = isfinite(k->float_max);
        s_fmt_double(lo, sizeof lo, k->float_min);
        s_fmt_double(hi, sizeof hi, k->float_max);
    }
    if (has_lo && has_hi)
        snprintf(buf, cap, "[%s, %s]", lo, hi);
    else if (has_lo)
        snprintf(buf, cap, ">= %s", lo);
    else if (has_hi)
        snprintf(buf, cap, "<= %s", hi);
    else
        buf[0] = '\0';
}

/* "2 to 8 items", "at most 8 items", "2 items". */
static void s_count_text(const eq_config_key *k, char *buf, size_t cap)
{
    if (k->min_count == k->max_count)
        snprintf(buf, cap, "%zu item%s", k->max_count, k->max_count == 1 ? "" : "s");
    else if (k->min_count == 0)
        snprintf(buf, cap, "at most %zu item%s", k->max_count, k->max_count == 1 ? "" : "s");
    else
        snprintf(buf, cap, "%zu to %zu items", k->min_count, k->max_count);
}

static void s_choices(const eq_config_key *k, char *buf, size_t cap, const char *quote)
{
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; k->choices && k->choices[i] && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%s%s%s", i ? ", " : "", quote, k->choices[i], quote);
}

/* What a valid value looks like, for "(expected ...)". */
static void s_form(const eq_config_key *k, char *buf, size_t cap)
{
    char r[100], c[60];
    s_range(k, r, sizeof r);
    switch (k->type) {
    case EQ_CONFIG_BOOL:
        snprintf(buf, cap, "true/false, yes/no, on/off or 1/0");
        break;
    case EQ_CONFIG_INT:
    case EQ_CONFIG_FLOAT:
        snprintf(buf, cap, "%s%s%s", k->type == EQ_CONFIG_INT ? "int" : "float",
                 !*r           ? ""
                 : r[0] == '[' ? " in "
                               : " ",
                 r);
        break;
    case EQ_CONFIG_STRING:
        snprintf(buf, cap, "string of at most %zu bytes", k->size - 1);
        break;
    case EQ_CONFIG_ENUM:
        snprintf(buf, cap, "one of: ");
        s_choices(k, buf + strlen(buf), cap - strlen(buf), "");
        break;
    case EQ_CONFIG_INT_LIST:
    case EQ_CONFIG_FLOAT_LIST:
        s_count_text(k, c, sizeof c);
        snprintf(buf, cap, "comma-separated list of %s, each %s%s%s", c,
                 k->type == EQ_CONFIG_INT_LIST ? "an int" : "a float",
                 !*r           ? ""
                 : r[0] == '[' ? " in "
                               : " ",
                 r);
        break;
    case EQ_CONFIG_STRING_LIST:
        s_count_text(k, c, sizeof c);
        snprintf(buf, cap, "comma-separated list of %s, each of at most %zu bytes", c, k->size - 1);
        break;
    default:
        snprintf(buf, cap, "a valid key type");
    }
}

/* ------------------------------------------------------- value parsing */

/* Write the "what went wrong" part of a message (cut at WHAT_MAX: long
 * lists of names in it are allowed to be truncated). */
__attribute__((format(printf, 2, 3))) static int s_what(char *what, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(what, WHAT_MAX, fmt, ap);
    va_end(ap);
    return n;
}
#define WHAT(...) s_what(what, __VA_ARGS__)

static eq_status s_parse_int(const eq_config_key *k, const char *s, size_t n, int64_t *out, char *what)
{
    char tmp[32], sn[SNIP_MAX * 4 + 8];
    s_snip(sn, sizeof sn, s, n, true);
    bool digits = n > 0;
    for (size_t i = (n && (s[0] == '-' || s[0] == '+')); i < n; i++)
        if (s[i] < '0' || s[i] > '9') digits = false;
    if (n && (s[0] == '-' || s[0] == '+') && n == 1) digits = false;
    if (!digits) return WHAT("%s is not an integer", sn), EQ_ERR_INVALID;
    if (n >= sizeof tmp) return WHAT("%s is out of range", sn), EQ_ERR_INVALID;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    errno = 0;
    long long v = strtoll(tmp, NULL, 10);
    if (errno == ERANGE || v < k->int_min || v > k->int_max)
        return WHAT("%s is out of range", tmp), EQ_ERR_INVALID;
    *out = v;
    return EQ_OK;
}

static eq_status s_parse_float(const eq_config_key *k, const char *s, size_t n, double *out, char *what)
{
    char tmp[72], sn[SNIP_MAX * 4 + 8];
    s_snip(sn, sizeof sn, s, n, true);
    if (n == 0 || n >= sizeof tmp) return WHAT("%s is not a number", sn), EQ_ERR_INVALID;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    /* decimal only: strtod alone would also take "nan", "inf", hex and leading spaces */
    if (strspn(tmp, "0123456789+-.eE") != n) return WHAT("%s is not a number", sn), EQ_ERR_INVALID;
    char *end;
    double v = strtod(tmp, &end);
    if (end != tmp + n) return WHAT("%s is not a number", sn), EQ_ERR_INVALID;
    if (!isfinite(v)) return WHAT("%s is too large", sn), EQ_ERR_INVALID;
    if (!(v >= k->float_min && v <= k->float_max)) return WHAT("%s is out of range", tmp), EQ_ERR_INVALID;
    *out = v;
    return EQ_OK;
}

static int s_parse_bool(const char *s, size_t n)
{
    static const char *const t[] = {"true", "yes", "on", "1"}, *const f[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strlen(t[i]) == n && strncasecmp(t[i], s, n) == 0) return 1;
        if (strlen(f[i]) == n && strncasecmp(f[i], s, n) == 0) return 0;
    }
    return -1;
}

static int s_hex(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decode the quoted string at s (s[0] == '"') into dst[cap] (cut at cap-1
 * bytes, always terminated when cap > 0).  *used: bytes consumed with both
 * quotes; *outlen: decoded length, also when it exceeds cap-1. */
static eq_status s_unquote(const char *s, size_t n, size_t *used, char *dst, size_t cap, size_t *outlen,
                           char *what)
{
    size_t i = 1, o = 0;
    while (i < n && s[i] != '"') {
        char c = s[i];
        if (c == '\\') {
            if (i + 1 >= n) break;
            char e = s[i + 1];
            i += 2;
            switch (e) {
            case '\\':
                c = '\\';
                break;
            case '"':
                c = '"';
                break;
            case 'n':
                c = '\n';
                break;
            case 't':
                c = '\t';
                break;
            case 'r':
                c = '\r';
                break;
            case 'x': {
                int h = i + 1 < n ? s_hex(s[i]) : -1, l = i + 1 < n ? s_hex(s[i + 1]) : -1;
                if (h < 0 || l < 0)
                    return WHAT("bad escape \\x in quoted string, want two hex digits"), EQ_ERR_PARSE;
                c = (char)(h * 16 + l);
                if (c == '\0') return WHAT("\\x00 in quoted string: strings cannot hold NUL"), EQ_ERR_INVALID;
                i += 2;
                break;
            }
            default: {
                char sn[16];
                return WHAT("bad escape \\%s in quoted string, want \\\\ \\\" \\n \\t \\r or \\xHH",
                            s_snip(sn, sizeof sn, &e, 1, false)),
                       EQ_ERR_PARSE;
            }
            }
        } else {
            i++;
        }
        if (o + 1 < cap) dst[o] = c;
        o++;
    }
    if (i >= n) return WHAT("unterminated quoted string"), EQ_ERR_PARSE;
    if (cap) dst[o < cap ? o : cap - 1] = '\0';
    *used = i + 1;
    *outlen = o;
    return EQ_OK;
}

/* Scalar string value: quoted, or the trimmed text verbatim. */
static eq_status s_parse_string(const eq_config_key *k, const char *s, size_t n, char *dst, char *what)
{
    size_t len = n;
    if (n && s[0] == '"') {
        size_t used;
        eq_status st = s_unquote(s, n, &used, dst, k->size, &len, what);
        if (st) return st;
        if (used != n) return WHAT("text after the closing quote"), EQ_ERR_PARSE;
    } else if (n < k->size) {
        memcpy(dst, s, n);
        dst[n] = '\0';
    }
    if (len >= k->size) return WHAT("value is %zu bytes long", len), EQ_ERR_INVALID;
    return EQ_OK;
}

static eq_status s_parse_enum(const eq_config_key *k, const char *s, size_t n, int *out, char *what)
{
    const char *best = NULL;
    size_t bestd = SIZE_MAX;
    for (int i = 0; k->choices[i]; i++) {
        if (s_eq(k->choices[i], s, n)) {
            *out = i;
            return EQ_OK;
        }
        s_closer(k->choices[i], s, n, &best, &bestd);
    }
    char sn[SNIP_MAX * 4 + 8];
    s_snip(sn, sizeof sn, s, n, true);
    if (best)
        WHAT("%s is not a choice, did you mean \"%s\"?", sn, best);
    else
        WHAT("%s is not a choice", sn);
    return EQ_ERR_INVALID;
}

/* Bytes of the key's value storage (the whole array for lists). */
static size_t s_storage(const eq_config_key *k)
{
    switch (k->type) {
    case EQ_CONFIG_BOOL:
        return sizeof(bool);
    case EQ_CONFIG_INT:
        return sizeof(int64_t);
    case EQ_CONFIG_FLOAT:
        return sizeof(double);
    case EQ_CONFIG_STRING:
        return k->size;
    case EQ_CONFIG_ENUM:
        return sizeof(int);
    case EQ_CONFIG_INT_LIST:
        return k->max_count * sizeof(int64_t);
    case EQ_CONFIG_FLOAT_LIST:
        return k->max_count * sizeof(double);
    default:
        return k->max_count * k->size;
    }
}

/* Lists: items separated by commas; string items may be quoted. */
static eq_status s_parse_list(const eq_config_key *k, const char *s, size_t n, unsigned char *base,
                              char *what)
{
    unsigned char *arr = base + k->offset;
    size_t count = 0;
    memset(arr, 0, s_storage(k)); /* unused items read as zero, not as stale values */
    const char *p = s, *end = s + n;
    eq_status st = EQ_OK;
    while (n) {
        const char *item = p;
        size_t len;
        while (item < end && s_is_ws(*item))
            item++;
        if (count == k->max_count) {
            WHAT("more than %zu item%s", k->max_count, k->max_count == 1 ? "" : "s");
            return EQ_ERR_INVALID;
        }
        if (k->type == EQ_CONFIG_STRING_LIST && item < end && *item == '"') {
            size_t used, outlen;
            char *dst = (char *)arr + count * k->size;
            st = s_unquote(item, (size_t)(end - item), &used, dst, k->size, &outlen, what);
            if (st) goto item_error;
            p = item + used;
            while (p < end && s_is_ws(*p))
                p++;
            if (p < end && *p != ',') {
                WHAT("text after the closing quote");
                st = EQ_ERR_PARSE;
                goto item_error;
            }
            if (outlen >= k->size) {
                WHAT("%zu bytes long", outlen);
                st = EQ_ERR_INVALID;
                goto item_error;
            }
        } else {
            const char *c = memchr(item, ',', (size_t)(end - item));
            p = c ? c : end;
            len = (size_t)(p - item);
            s_trim(&item, &len);
            if (len == 0) {
                WHAT("empty item");
                st = EQ_ERR_INVALID;
                goto item_error;
            }
            switch (k->type) {
            case EQ_CONFIG_INT_LIST:
                st = s_parse_int(k, item, len, (int64_t *)(void *)arr + count, what);
                break;
            case EQ_CONFIG_FLOAT_LIST:
                st = s_parse_float(k, item, len, (double *)(void *)arr + count, what);
                break;
            default:
                if (len >= k->size) {
                    WHAT("%zu bytes long", len);
                    st = EQ_ERR_INVALID;
                    break;
                }
                memcpy(arr + count * k->size, item, len);
                arr[count * k->size + len] = '\0';
            }
            if (st) goto item_error;
        }
        count++;
        if (p == end) break;
        p++; /* the comma */
    }
    if (count < k->min_count) {
        WHAT("only %zu item%s", count, count == 1 ? "" : "s");
        return EQ_ERR_INVALID;
    }
    memcpy(base + k->count_offset, &count, sizeof count);
    return EQ_OK;

item_error : {
    char inner[WHAT_MAX];
    memcpy(inner, what, WHAT_MAX);
    inner[WHAT_MAX - 1] = '\0';
    WHAT("item %zu: %s", count + 1, inner); /* e.g. item 2: "x" is not an integer */
    return st;
}
}

/* Parse value text s[0..n) (already trimmed) for key k into the struct at
 * base.  On failure writes what went wrong into what[WHAT_MAX]. */
static eq_status s_assign_value(const eq_config_key *k, unsigned char *base, const char *s, size_t n,
                                char *what)
{
    char sn[SNIP_MAX * 4 + 8];
    switch (k->type) {
    case EQ_CONFIG_BOOL: {
        int b = s_parse_bool(s, n);
        if (b < 0) return WHAT("%s is not a bool", s_snip(sn, sizeof sn, s, n, true)), EQ_ERR_INVALID;
        bool v = b;
        memcpy(base + k->offset, &v, sizeof v);
        return EQ_OK;
    }
    case EQ_CONFIG_INT: {
        int64_t v;
        eq_status st = s_parse_int(k, s, n, &v, what);
        if (!st) memcpy(base + k->offset, &v, sizeof v);
        return st;
    }
    case EQ_CONFIG_FLOAT: {
        double v;
        eq_status st = s_parse_float(k, s, n, &v, what);
        if (!st) memcpy(base + k->offset, &v, sizeof v);
        return st;
    }
    case EQ_CONFIG_STRING:
        return s_parse_string(k, s, n, (char *)base + k->offset, what);
    case EQ_CONFIG_ENUM: {
        int v;
        eq_status st = s_parse_enum(k, s, n, &v, what);
        if (!st) memcpy(base + k->offset, &v, sizeof v);
        return st;
    }
    case EQ_CONFIG_INT_LIST:
    case EQ_CONFIG_FLOAT_LIST:
    case EQ_CONFIG_STRING_LIST:
        return s_parse_list(k, s, n, base, what);
    default:
        return WHAT("key has an unknown type %d", (int)k->type), EQ_ERR_INTERNAL;
    }
}

/* Same, with the full "[sec] key: what (expected form)" message. */
static eq_status s_assign(const eq_config_section *sec, const eq_config_key *k, unsigned char *base,
                          const char *s, size_t n, eq_err *err)
{
    char what[WHAT_MAX], form[FORM_MAX];
    eq_status st = s_assign_value(k, base, s, n, what);
    if (st == EQ_OK) return EQ_OK;
    s_form(k, form, sizeof form);
    return eq_err_set(err, st, "[%s] %s: %s (expected %s)", sec->name, k->name, what, form);
}

/* ------------------------------------------------------------- schema */

/* Bytes from the start of the struct to the end of the key's storage,
 * count field included. */
static size_t s_extent(const eq_config_key *k)
{
    size_t end = k->offset + s_storage(k);
    if (k->type >= EQ_CONFIG_INT_LIST && k->count_offset + sizeof(size_t) > end)
        end = k->count_offset + sizeof(size_t);
    return end;
}

static bool s_valid_section_name(const char *s)
{
    size_t n = strlen(s);
    if (!s_valid_name(s, n, true) || s[0] == '.' || s[n - 1] == '.' || strstr(s, "..")) return false;
    return true;
}

static eq_status s_check_key(const eq_config_section *sec, const eq_config_key *k, unsigned char *scratch,
                             eq_err *err)
{
#define BAD(...)                                                                                             \
    eq_err_set(err, EQ_ERR_INTERNAL, "config schema [%s] %s: %s", sec->name, k->name, __VA_ARGS__)
    if ((unsigned)k->type >= EQ_CONFIG_TYPE_COUNT) return BAD("unknown type");
    if (!k->doc) return BAD("no doc line");
    bool list = k->type >= EQ_CONFIG_INT_LIST;
    if (list && (k->max_count == 0 || k->min_count > k->max_count))
        return BAD("list bounds are inconsistent");
    if ((k->type == EQ_CONFIG_STRING || k->type == EQ_CONFIG_STRING_LIST) && k->size == 0)
        return BAD("string capacity is 0");
    if (list && k->max_count > SIZE_MAX / 2 / (k->size > 8 ? k->size : 8)) return BAD("list is too large");
    if ((k->type == EQ_CONFIG_INT || k->type == EQ_CONFIG_INT_LIST) && k->int_min > k->int_max)
        return BAD("empty range");
    if ((k->type == EQ_CONFIG_FLOAT || k->type == EQ_CONFIG_FLOAT_LIST) && !(k->float_min <= k->float_max))
        return BAD("empty range");
    if (k->type == EQ_CONFIG_ENUM) {
        if (!k->choices || !k->choices[0]) return BAD("enum without choices");
        for (size_t i = 0; k->choices[i]; i++) {
            if (!s_valid_name(k->choices[i], strlen(k->choices[i]), true)) return BAD("bad choice name");
            for (size_t j = 0; j < i; j++)
                if (!strcmp(k->choices[i], k->choices[j])) return BAD("duplicate choice");
        }
    }
    if (k->def && scratch) {
        char what[WHAT_MAX];
        const char *d = k->def;
        size_t n = strlen(d);
        s_trim(&d, &n);
        if (s_assign_value(k, scratch, d, n, what) != EQ_OK)
            return eq_err_set(err, EQ_ERR_INTERNAL, "config schema [%s] %s: bad default: %s", sec->name,
                              k->name, what);
    }
    return EQ_OK;
#undef BAD
}

/* Check the schema; with scratch, also parse every default into it; with
 * max_extent, return the largest struct extent of any key (scratch size). */
static eq_status s_check(const eq_config_section *secs, size_t nsecs, unsigned char *scratch,
                         size_t *max_extent, eq_err *err)
{
    if (nsecs && !secs) return eq_err_set(err, EQ_ERR_INTERNAL, "config schema: no sections");
    size_t ext = 1;
    for (size_t i = 0; i < nsecs; i++) {
        const eq_config_section *sec = &secs[i];
        if (!sec->name || !s_valid_section_name(sec->name))
            return eq_err_set(err, EQ_ERR_INTERNAL, "config schema: section %zu has a bad name", i);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(secs[j].name, sec->name))
                return eq_err_set(err, EQ_ERR_INTERNAL, "config schema: duplicate section [%s]", sec->name);
        if (sec->nkeys && !sec->keys)
            return eq_err_set(err, EQ_ERR_INTERNAL, "config schema [%s]: no keys", sec->name);
        for (size_t k = 0; k < sec->nkeys; k++) {
            const eq_config_key *key = &sec->keys[k];
            if (!key->name || !s_valid_name(key->name, strlen(key->name), false))
                return eq_err_set(err, EQ_ERR_INTERNAL, "config schema [%s]: key %zu has a bad name",
                                  sec->name, k);
            for (size_t j = 0; j < k; j++)
                if (!strcmp(sec->keys[j].name, key->name))
                    return eq_err_set(err, EQ_ERR_INTERNAL, "config schema [%s]: duplicate key %s", sec->name,
                                      key->name);
            eq_status st = s_check_key(sec, key, scratch, err);
            if (st) return st;
            size_t e = s_extent(key);
            if (e > ext) ext = e;
        }
    }
    if (max_extent) *max_extent = ext;
    return EQ_OK;
}

/* Structure checks, then defaults parsed into a scratch struct. */
eq_status eq_config_check_schema(const eq_config_section *secs, size_t nsecs, eq_err *err)
{
    size_t ext = 1;
    eq_status st = s_check(secs, nsecs, NULL, &ext, err);
    if (st) return st;
    unsigned char *scratch = calloc(1, ext);
    if (!scratch) return eq_err_set(err, EQ_ERR_NOMEM, "config: out of memory");
    st = s_check(secs, nsecs, scratch, NULL, err);
    free(scratch);
    return st;
}

static eq_status s_defaults(const eq_config_section *secs, size_t nsecs, eq_err *err)
{
    for (size_t i = 0; i < nsecs; i++) {
        unsigned char *base = secs[i].dst;
        if (!base) continue;
        for (size_t k = 0; k < secs[i].nkeys; k++) {
            const eq_config_key *key = &secs[i].keys[k];
            memset(base + key->offset, 0, s_storage(key));
            if (key->type >= EQ_CONFIG_INT_LIST) memset(base + key->count_offset, 0, sizeof(size_t));
            if (!key->def) continue;
            const char *d = key->def;
            size_t n = strlen(d);
            s_trim(&d, &n);
            eq_status st = s_assign(&secs[i], key, base, d, n, err);
            if (st) return st; /* not reached: s_check tried every default */
        }
    }
    return EQ_OK;
}

eq_status eq_config_defaults(const eq_config_section *secs, size_t nsecs, eq_err *err)
{
    eq_status st = eq_config_check_schema(secs, nsecs, err);
    return st ? st : s_defaults(secs, nsecs, err);
}

/* -------------------------------------------------------------- parse */

typedef struct s_ctx {
    const eq_config_section *secs;
    size_t nsecs;
    size_t *first;          /* [nsecs] index of each section's first key in line[] */
    size_t *line;           /* [total keys] line that set it; 0 unset; SIZE_MAX --set */
    size_t *header;         /* [nsecs] first header line of the section, 0 if absent */
    unsigned char *scratch; /* storage for sections with dst NULL */
} s_ctx;

static unsigned char *s_base(const s_ctx *c, size_t sec)
{
    return c->secs[sec].dst ? c->secs[sec].dst : c->scratch;
}

static void s_name_list(char *buf, size_t cap, const eq_config_section *secs, size_t nsecs,
                        const eq_config_section *keys_of)
{
    size_t o = 0;
    buf[0] = '\0';
    size_t n = keys_of ? keys_of->nkeys : nsecs;
    for (size_t i = 0; i < n && o < cap; i++) {
        if (keys_of)
            o += (size_t)snprintf(buf + o, cap - o, "%s%s", i ? ", " : "", keys_of->keys[i].name);
        else
            o += (size_t)snprintf(buf + o, cap - o, "%s[%s]", i ? ", " : "", secs[i].name);
    }
}

/* Find section s[0..n) or explain.  Returns its index or SIZE_MAX. */
static size_t s_find_section(const s_ctx *c, const char *s, size_t n, char *what)
{
    const char *best = NULL;
    size_t bestd = SIZE_MAX;
    for (size_t i = 0; i < c->nsecs; i++) {
        if (s_eq(c->secs[i].name, s, n)) return i;
        s_closer(c->secs[i].name, s, n, &best, &bestd);
    }
    char sn[SNIP_MAX * 4 + 8], list[200];
    s_snip(sn, sizeof sn, s, n, false);
    s_name_list(list, sizeof list, c->secs, c->nsecs, NULL);
    if (best)
        WHAT("unknown section [%s], did you mean [%s]? (expected one of: %s)", sn, best, list);
    else
        WHAT("unknown section [%s] (expected one of: %s)", sn, list);
    return SIZE_MAX;
}

static size_t s_find_key(const eq_config_section *sec, const char *s, size_t n, char *what)
{
    const char *best = NULL;
    size_t bestd = SIZE_MAX;
    for (size_t i = 0; i < sec->nkeys; i++) {
        if (s_eq(sec->keys[i].name, s, n)) return i;
        s_closer(sec->keys[i].name, s, n, &best, &bestd);
    }
    char sn[SNIP_MAX * 4 + 8], list[240];
    s_snip(sn, sizeof sn, s, n, true);
    s_name_list(list, sizeof list, NULL, 0, sec);
    if (best)
        WHAT("[%s] unknown key %s, did you mean \"%s\"? (expected one of: %s)", sec->name, sn, best, list);
    else
        WHAT("[%s] unknown key %s (expected one of: %s)", sec->name, sn, list);
    return SIZE_MAX;
}

static eq_status s_parse_text(s_ctx *c, const char *name, const char *text, size_t len, eq_err *err)
{
    const char *p = text, *end = text + len;
    size_t lineno = 0, cur = SIZE_MAX;
    char what[WHAT_MAX], sn[SNIP_MAX * 4 + 8];
    if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) p += 3; /* UTF-8 byte order mark */
    while (p < end) {
        lineno++;
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *s = p;
        size_t n = (size_t)((nl ? nl : end) - p);
        p = nl ? nl + 1 : end;
        if (n && s[n - 1] == '\r') n--;
        if (n > EQ_CONFIG_MAX_LINE)
            return eq_err_set(err, EQ_ERR_PARSE, "%s:%zu: line is %zu bytes long (expected at most %d)", name,
                              lineno, n, EQ_CONFIG_MAX_LINE);
        if (memchr(s, '\0', n))
            return eq_err_set(err, EQ_ERR_PARSE, "%s:%zu: NUL byte in line (expected text)", name, lineno);
        s_trim(&s, &n);
        if (n == 0 || s[0] == '#' || s[0] == ';') continue;
        if (s[0] == '[') {
            const char *close = memchr(s, ']', n);
            if (!close)
                return eq_err_set(err, EQ_ERR_PARSE,
                                  "%s:%zu: syntax error: unterminated section header %s (expected [name])",
                                  name, lineno, s_snip(sn, sizeof sn, s, n, true));
            if (close != s + n - 1)
                return eq_err_set(
                    err, EQ_ERR_PARSE,
                    "%s:%zu: syntax error: text after ] in %s (expected [name] alone on its line)", name,
                    lineno, s_snip(sn, sizeof sn, s, n, true));
            const char *sec = s + 1;
            size_t sn_len = n - 2;
            s_trim(&sec, &sn_len);
            if (!s_valid_name(sec, sn_len, true))
                return eq_err_set(
                    err, EQ_ERR_PARSE,
                    "%s:%zu: syntax error: bad section name %s (expected letters, digits, '_', '-' and '.')",
                    name, lineno, s_snip(sn, sizeof sn, sec, sn_len, true));
            cur = s_find_section(c, sec, sn_len, what);
            if (cur == SIZE_MAX) return eq_err_set(err, EQ_ERR_INVALID, "%s:%zu: %s", name, lineno, what);
            if (!c->header[cur]) c->header[cur] = lineno;
            continue;
        }
        const char *eq = memchr(s, '=', n);
        if (!eq)
            return eq_err_set(err, EQ_ERR_PARSE,
                              "%s:%zu: syntax error: %s (expected key = value, [section] or a # comment)",
                              name, lineno, s_snip(sn, sizeof sn, s, n, true));
        const char *key = s, *val = eq + 1;
        size_t kn = (size_t)(eq - s), vn = n - kn - 1;
        s_trim(&key, &kn);
        s_trim(&val, &vn);
        if (!s_valid_name(key, kn, false))
            return eq_err_set(
                err, EQ_ERR_PARSE,
                "%s:%zu: syntax error: bad key %s (expected letters, digits, '_' and '-' before '=')", name,
                lineno, s_snip(sn, sizeof sn, key, kn, true));
        if (cur == SIZE_MAX)
            return eq_err_set(err, EQ_ERR_PARSE,
                              "%s:%zu: key %s is outside any section (expected a [section] line first)", name,
                              lineno, s_snip(sn, sizeof sn, key, kn, true));
        const eq_config_section *sec = &c->secs[cur];
        size_t k = s_find_key(sec, key, kn, what);
        if (k == SIZE_MAX) return eq_err_set(err, EQ_ERR_INVALID, "%s:%zu: %s", name, lineno, what);
        size_t *set = &c->line[c->first[cur] + k];
        if (*set && *set != SIZE_MAX)
            return eq_err_set(
                err, EQ_ERR_INVALID,
                "%s:%zu: [%s] %s: duplicate key, first set on line %zu (expected each key once per section)",
                name, lineno, sec->name, sec->keys[k].name, *set);
        eq_status st = s_assign(sec, &sec->keys[k], s_base(c, cur), val, vn, err);
        if (st) {
            eq_err_prefix(err, "%s:%zu: ", name, lineno);
            return st;
        }
        *set = lineno;
    }
    return EQ_OK;
}

static eq_status s_set(s_ctx *c, const char *arg, eq_err *err)
{
    char src[SNIP_MAX * 4 + 8], what[WHAT_MAX];
    s_snip(src, sizeof src, arg, strlen(arg), false);
    const char *eq = strchr(arg, '=');
    const char *lhs = arg;
    size_t ln = eq ? (size_t)(eq - arg) : 0;
    s_trim(&lhs, &ln);
    const char *dot = NULL;
    for (size_t i = 0; i < ln; i++)
        if (lhs[i] == '.') dot = lhs + i;
    if (!eq || !dot || dot == lhs || dot == lhs + ln - 1 || !s_valid_name(lhs, ln, true))
        return eq_err_set(err, EQ_ERR_PARSE, "--set %s: syntax error (expected --set section.key=value)",
                          src);
    /* "parsed exactly as in a file": a file's value cannot hold a line
     * break (out_dir = "a<LF>b" made a directory with a newline in it) */
    if (strpbrk(eq + 1, "\n\r"))
        return eq_err_set(err, EQ_ERR_PARSE, "--set %s: line break in the value (expected one line; quote it and "
                          "write \\n for a newline in a string)", src);
    size_t sec = s_find_section(c, lhs, (size_t)(dot - lhs), what);
    if (sec == SIZE_MAX) return eq_err_set(err, EQ_ERR_INVALID, "--set %s: %s", src, what);
    const eq_config_section *s = &c->secs[sec];
    size_t k = s_find_key(s, dot + 1, (size_t)(lhs + ln - dot - 1), what);
    if (k == SIZE_MAX) return eq_err_set(err, EQ_ERR_INVALID, "--set %s: %s", src, what);
    const char *val = eq + 1;
    size_t vn = strlen(val);
    s_trim(&val, &vn);
    eq_status st = s_assign(s, &s->keys[k], s_base(c, sec), val, vn, err);
    if (st) {
        eq_err_prefix(err, "--set %s: ", src);
        return st;
    }
    if (c->line) c->line[c->first[sec] + k] = SIZE_MAX;
    return EQ_OK;
}

static eq_status s_required(const s_ctx *c, const char *name, eq_err *err)
{
    for (size_t i = 0; i < c->nsecs; i++) {
        const eq_config_section *sec = &c->secs[i];
        for (size_t k = 0; k < sec->nkeys; k++) {
            if (sec->keys[k].def || c->line[c->first[i] + k]) continue;
            char form[FORM_MAX], at[32] = "";
            s_form(&sec->keys[k], form, sizeof form);
            if (c->header[i]) snprintf(at, sizeof at, ":%zu", c->header[i]);
            return eq_err_set(err, EQ_ERR_INVALID, "%s%s: [%s] %s: required key is missing (expected %s)",
                              name, at, sec->name, sec->keys[k].name, form);
        }
    }
    return EQ_OK;
}

static void s_ctx_free(s_ctx *c)
{
    free(c->first);
    free(c->line);
    free(c->header);
    free(c->scratch);
}

static eq_status s_ctx_init(s_ctx *c, const eq_config_section *secs, size_t nsecs, eq_err *err)
{
    memset(c, 0, sizeof *c);
    c->secs = secs;
    c->nsecs = nsecs;
    size_t ext = 1, total = 0;
    eq_status st = s_check(secs, nsecs, NULL, &ext, err);
    if (st) return st;
    for (size_t i = 0; i < nsecs; i++)
        total += secs[i].nkeys;
    c->first = eq_calloc_array(nsecs, sizeof(size_t));
    c->header = eq_calloc_array(nsecs, sizeof(size_t));
    c->line = eq_calloc_array(total, sizeof(size_t));
    c->scratch = calloc(1, ext);
    if (!c->first || !c->header || !c->line || !c->scratch) {
        s_ctx_free(c);
        return eq_err_set(err, EQ_ERR_NOMEM, "config: out of memory");
    }
    for (size_t i = 1; i < nsecs; i++)
        c->first[i] = c->first[i - 1] + secs[i - 1].nkeys;
    /* Check defaults (into scratch) and apply them to the real structs. */
    st = s_check(secs, nsecs, c->scratch, NULL, err);
    if (!st) st = s_defaults(secs, nsecs, err);
    if (st) s_ctx_free(c);
    return st;
}

eq_status eq_config_parse_buffer(const eq_config_section *secs, size_t nsecs, const char *name,
                                 const char *text, size_t len, const char *const *sets, size_t nsets,
                                 eq_err *err)
{
    if (!name) name = "config";
    if (!text && len) return eq_err_set(err, EQ_ERR_INVALID, "%s: no text", name);
    s_ctx c;
    eq_status st = s_ctx_init(&c, secs, nsecs, err);
    if (st) return st;
    st = s_parse_text(&c, name, text ? text : "", len, err);
    for (size_t i = 0; !st && i < nsets; i++) {
        if (!sets || !sets[i])
            st = eq_err_set(err, EQ_ERR_INVALID, "--set: override %zu is NULL", i);
        else
            st = s_set(&c, sets[i], err);
    }
    if (!st) st = s_required(&c, name, err);
    s_ctx_free(&c);
    return st;
}

eq_status eq_config_set(const eq_config_section *secs, size_t nsecs, const char *arg, eq_err *err)
{
    if (!arg) return eq_err_set(err, EQ_ERR_INVALID, "--set: no argument");
    size_t ext = 1;
    eq_status st = s_check(secs, nsecs, NULL, &ext, err);
    if (st) return st;
    s_ctx c = {.secs = secs, .nsecs = nsecs};
    c.scratch = calloc(1, ext);
    if (!c.scratch) return eq_err_set(err, EQ_ERR_NOMEM, "config: out of memory");
    st = s_set(&c, arg, err);
    free(c.scratch);
    return st;
}

eq_status eq_config_load(const eq_config_section *secs, size_t nsecs, const char *path,
                         const char *const *sets, size_t nsets, eq_err *err)
{
    if (!path) return eq_err_set(err, EQ_ERR_INVALID, "config: no file name");
    FILE *f = fopen(path, "rb");
    if (!f)
        return eq_err_set(err, errno == ENOENT ? EQ_ERR_NOTFOUND : EQ_ERR_IO,
                          "%s: cannot open config file: %s", path, strerror(errno));
    size_t len = 0, cap = 0;
    char *text = NULL;
    eq_status st = EQ_OK;
    for (;;) {
        if (len == cap) {
            if (cap > EQ_CONFIG_MAX_FILE) {
                st = eq_err_set(err, EQ_ERR_LIMIT, "%s: config file is larger than %u bytes", path,
                                (unsigned)EQ_CONFIG_MAX_FILE);
                break;
            }
            cap = cap ? cap * 2 : 16384;
            char *t = realloc(text, cap + 1);
            if (!t) {
                st = eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory reading config", path);
                break;
            }
            text = t;
        }
        size_t got = fread(text + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f))
                st = eq_err_set(err, EQ_ERR_IO, "%s: cannot read config file: %s", path, strerror(errno));
            break;
        }
    }
    fclose(f);
    if (!st && len > EQ_CONFIG_MAX_FILE)
        st = eq_err_set(err, EQ_ERR_LIMIT, "%s: config file is larger than %u bytes", path,
                        (unsigned)EQ_CONFIG_MAX_FILE);
    if (!st) st = eq_config_parse_buffer(secs, nsecs, path, text, len, sets, nsets, err);
    free(text);
    return st;
}

/* --------------------------------------------------------------- dump */

/* A string needs quotes when reading it back raw would change it. */
static bool s_needs_quotes(const char *s, bool list_item)
{
    size_t n = strlen(s);
    if (n == 0) return list_item;
    if (s_is_ws(s[0]) || s_is_ws(s[n - 1]) || s[0] == '"') return true;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f || (list_item && c == ',')) return true;
    }
    return false;
}

static void s_put_string(s_buf *b, const char *s, bool list_item)
{
    if (!s_needs_quotes(s, list_item)) {
        s_adds(b, s);
        return;
    }
    s_add(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        switch (c) {
        case '\\':
            s_add(b, "\\\\", 2);
            break;
        case '"':
            s_add(b, "\\\"", 2);
            break;
        case '\n':
            s_add(b, "\\n", 2);
            break;
        case '\t':
            s_add(b, "\\t", 2);
            break;
        case '\r':
            s_add(b, "\\r", 2);
            break;
        default:
            if (c < 0x20 || c == 0x7f)
                s_addf(b, "\\x%02x", c);
            else
                s_add(b, p, 1);
        }
    }
    s_add(b, "\"", 1);
}

/* Append key k's value from base, or explain why it cannot be written. */
static eq_status s_put_value(s_buf *b, const eq_config_key *k, const unsigned char *base, char *what)
{
    char num[40];
    size_t count = 0;
    if (k->type >= EQ_CONFIG_INT_LIST) {
        memcpy(&count, base + k->count_offset, sizeof count);
        if (count > k->max_count) return WHAT("holds %zu items", count), EQ_ERR_INVALID;
    }
    switch (k->type) {
    case EQ_CONFIG_BOOL: {
        bool v;
        memcpy(&v, base + k->offset, sizeof v);
        s_adds(b, v ? "true" : "false");
        return EQ_OK;
    }
    case EQ_CONFIG_INT:
    case EQ_CONFIG_INT_LIST:
        for (size_t i = 0; i < (k->type == EQ_CONFIG_INT ? 1 : count); i++) {
            int64_t v;
            memcpy(&v, base + k->offset + i * sizeof v, sizeof v);
            if (v < k->int_min || v > k->int_max)
                return WHAT("value %" PRId64 " is out of range", v), EQ_ERR_INVALID;
            s_addf(b, "%s%" PRId64, i ? ", " : "", v);
        }
        return EQ_OK;
    case EQ_CONFIG_FLOAT:
    case EQ_CONFIG_FLOAT_LIST:
        for (size_t i = 0; i < (k->type == EQ_CONFIG_FLOAT ? 1 : count); i++) {
            double v;
            memcpy(&v, base + k->offset + i * sizeof v, sizeof v);
            if (!isfinite(v) || v < k->float_min || v > k->float_max)
                return WHAT("value %g is out of range", v), EQ_ERR_INVALID;
            s_fmt_double(num, sizeof num, v);
            s_addf(b, "%s%s", i ? ", " : "", num);
        }
        return EQ_OK;
    case EQ_CONFIG_STRING:
    case EQ_CONFIG_STRING_LIST:
        for (size_t i = 0; i < (k->type == EQ_CONFIG_STRING ? 1 : count); i++) {
            const char *s = (const char *)base + k->offset + i * k->size;
            if (!memchr(s, '\0', k->size)) return WHAT("string is not terminated"), EQ_ERR_INVALID;
            if (i) s_add(b, ", ", 2);
            s_put_string(b, s, k->type == EQ_CONFIG_STRING_LIST);
        }
        return EQ_OK;
    case EQ_CONFIG_ENUM: {
        int v, n = 0;
        memcpy(&v, base + k->offset, sizeof v);
        while (k->choices[n])
            n++;
        if (v < 0 || v >= n) return WHAT("enum index %d is out of range", v), EQ_ERR_INVALID;
        s_adds(b, k->choices[v]);
        return EQ_OK;
    }
    default:
        return WHAT("unknown type"), EQ_ERR_INTERNAL;
    }
}

eq_status eq_config_dump(const eq_config_section *secs, size_t nsecs, char **out, size_t *len, eq_err *err)
{
    if (!out) return eq_err_set(err, EQ_ERR_INVALID, "config dump: no output pointer");
    *out = NULL;
    eq_status st = s_check(secs, nsecs, NULL, NULL, err);
    if (st) return st;
    s_buf b = {0};
    bool first = true;
    for (size_t i = 0; i < nsecs; i++) {
        const eq_config_section *sec = &secs[i];
        if (!sec->dst) continue;
        s_addf(&b, "%s[%s]\n", first ? "" : "\n", sec->name);
        first = false;
        for (size_t k = 0; k < sec->nkeys; k++) {
            char what[WHAT_MAX], form[FORM_MAX];
            s_addf(&b, "%s = ", sec->keys[k].name);
            st = s_put_value(&b, &sec->keys[k], sec->dst, what);
            if (st) {
                free(b.p);
                s_form(&sec->keys[k], form, sizeof form);
                return eq_err_set(err, st, "config dump: [%s] %s: %s (expected %s)", sec->name,
                                  sec->keys[k].name, what, form);
            }
            s_add(&b, "\n", 1);
        }
    }
    return s_buf_finish(&b, out, len, err);
}

/* ---------------------------------------------------------------- doc */

/* Markdown table cell text: '|' escaped, newlines as spaces. */
static void s_cell(s_buf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '|')
            s_add(b, "\\|", 2);
        else if (*s == '\n' || *s == '\r')
            s_add(b, " ", 1);
        else
            s_add(b, s, 1);
    }
}

eq_status eq_config_doc(const eq_config_section *secs, size_t nsecs, char **out, size_t *len, eq_err *err)
{
    if (!out) return eq_err_set(err, EQ_ERR_INVALID, "config doc: no output pointer");
    *out = NULL;
    eq_status st = s_check(secs, nsecs, NULL, NULL, err);
    if (st) return st;
    s_buf b = {0};
    for (size_t i = 0; i < nsecs; i++) {
        const eq_config_section *sec = &secs[i];
        s_addf(&b, "%s### [%s]\n\n", i ? "\n" : "", sec->name);
        if (sec->doc && *sec->doc) {
            s_adds(&b, sec->doc);
            s_adds(&b, "\n\n");
        }
        s_adds(&b, "| key | type | default | range / choices | doc |\n");
        s_adds(&b, "| --- | --- | --- | --- | --- |\n");
        for (size_t j = 0; j < sec->nkeys; j++) {
            const eq_config_key *k = &sec->keys[j];
            char r[100], c[60], cell[400];
            s_addf(&b, "| `%s` | %s | ", k->name, eq_config_type_str(k->type));
            if (!k->def)
                s_adds(&b, "*required*");
            else if (!*k->def)
                s_adds(&b, "*empty*");
            else {
                s_add(&b, "`", 1);
                s_cell(&b, k->def);
                s_add(&b, "`", 1);
            }
            s_adds(&b, " | ");
            s_range(k, r, sizeof r);
            switch (k->type) {
            case EQ_CONFIG_BOOL:
                snprintf(cell, sizeof cell, "true, false");
                break;
            case EQ_CONFIG_INT:
            case EQ_CONFIG_FLOAT:
                snprintf(cell, sizeof cell, "%s", *r ? r : "any");
                break;
            case EQ_CONFIG_STRING:
                snprintf(cell, sizeof cell, "at most %zu bytes", k->size - 1);
                break;
            case EQ_CONFIG_ENUM:
                s_choices(k, cell, sizeof cell, "`");
                break;
            case EQ_CONFIG_STRING_LIST:
                s_count_text(k, c, sizeof c);
                snprintf(cell, sizeof cell, "%s of at most %zu bytes", c, k->size - 1);
                break;
            default:
                s_count_text(k, c, sizeof c);
                snprintf(cell, sizeof cell, "%s%s%s", c,
                         !*r           ? ""
                         : r[0] == '[' ? ", each in "
                                       : ", each ",
                         r);
            }
            s_cell(&b, cell);
            s_adds(&b, " | ");
            s_cell(&b, k->doc);
            s_adds(&b, " |\n");
        }
    }
    return s_buf_finish(&b, out, len, err);
}
