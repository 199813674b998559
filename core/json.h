/*
 * core/json.h -- a strict, fast JSON reader (RFC 8259) for files of any
 * size: safetensors headers, COCO annotations (~450 MB), result files.
 *
 * The whole document is parsed into an immutable tree that lives in one
 * arena owned by the eq_json_doc; nodes and strings die with it.  Errors
 * name the line and column ("line 3, column 17: expected ',' or '}'").
 * Numbers are converted exactly as Python's float() and int() would
 * (correctly rounded), so values equal those pycocotools sees.
 * Duplicate object keys are kept in order; eq_json_get returns the last one
 * (Python's json semantics).  Nesting depth is limited (default 512).
 * Thread-safety: a parsed document may be read from many threads.
 * Notes: numbers beyond the double range become +-inf, as in Python;
 * integer literals beyond int64 are only available as (rounded) doubles;
 * a UTF-8 byte order mark is rejected; eq_json_get is a linear scan.
 * Memory: ~16 bytes per value plus string bytes (see json.c).
 */
#ifndef EQ_JSON_H
#define EQ_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

typedef enum eq_json_type {
    EQ_JSON_NULL = 0,
    EQ_JSON_FALSE,
    EQ_JSON_TRUE,
    EQ_JSON_NUMBER,
    EQ_JSON_STRING,
    EQ_JSON_ARRAY,
    EQ_JSON_OBJECT
} eq_json_type;

typedef struct eq_json eq_json;         /* a value (opaque node) */
typedef struct eq_json_doc eq_json_doc; /* a parsed document */

typedef struct eq_json_opts {
    size_t max_depth; /* 0: default 512 */
    size_t max_bytes; /* 0: no limit besides memory */
} eq_json_opts;

/* Parse `len` bytes (need not be NUL-terminated).  Returns NULL and fills
 * err (EQ_ERR_PARSE with line/column, EQ_ERR_NOMEM, EQ_ERR_LIMIT) on failure.
 * opts may be NULL.  Caller owns the result: eq_json_doc_destroy(). */
eq_json_doc *eq_json_parse(const char *text, size_t len, const eq_json_opts *opts, eq_err *err);
/* Same for a file; errors are prefixed with the path. */
eq_json_doc *eq_json_parse_file(const char *path, const eq_json_opts *opts, eq_err *err);
void eq_json_doc_destroy(eq_json_doc **doc_p);

const eq_json *eq_json_root(const eq_json_doc *doc);

eq_json_type eq_json_typeof(const eq_json *v);
const char *eq_json_type_name(eq_json_type t); /* "null", "number", ... */
/* Elements of an array or members of an object; 0 for other types. */
size_t eq_json_len(const eq_json *v);
/* i-th element of an array, or i-th member value of an object; NULL if out
 * of range or not a container. */
const eq_json *eq_json_at(const eq_json *v, size_t i);
/* i-th member key of an object (NUL-terminated, length in *len if non-NULL). */
const char *eq_json_key_at(const eq_json *v, size_t i, size_t *len);
/* Member of an object by key; NULL if absent or not an object. */
const eq_json *eq_json_get(const eq_json *obj, const char *key);

/* Number as double (0 if not a number). */
double eq_json_num(const eq_json *v);
/* 1 if the number was written as an integer literal (no '.', no exponent)
 * that fits int64; then *out gets it exactly. */
int eq_json_int(const eq_json *v, int64_t *out);
/* String contents (unescaped, UTF-8, NUL-terminated); NULL if not a string. */
const char *eq_json_str(const eq_json *v, size_t *len);
/* 1-based position of the value's first character in the text, for error
 * messages that name an entry.  The column counts bytes; lines count '\n'.
 * (Positions saturate at 2^28-1 lines and 2^32-1 columns.) */
uint32_t eq_json_line(const eq_json *v);
uint32_t eq_json_col(const eq_json *v);

#endif
