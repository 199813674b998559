/*
 * core/status.h -- status codes and error messages.
 *
 * Library code never exits: a function that can fail returns an eq_status
 * and, when the caller passes an eq_err, writes a human message into it
 * (redis anet style: error text without globals). EQ_ASSERT is for broken
 * invariants only (programming errors) and aborts with file:line.
 */
#ifndef EQ_STATUS_H
#define EQ_STATUS_H

#include <stdarg.h>
#include <stddef.h>

/* Values are append-only: they travel in ERROR messages on the wire. */
typedef enum eq_status {
    EQ_OK = 0,
    EQ_ERR_INVALID,     /* bad argument or value (config, flag, field) */
    EQ_ERR_NOMEM,       /* allocation failed */
    EQ_ERR_IO,          /* open/read/write/fsync/rename failed */
    EQ_ERR_PARSE,       /* syntax error in a text or binary format */
    EQ_ERR_CORRUPT,     /* structurally inconsistent file or message */
    EQ_ERR_LIMIT,       /* a size or count exceeds a configured limit */
    EQ_ERR_VERSION,     /* unsupported format or protocol version */
    EQ_ERR_NOTFOUND,    /* missing file, key, dataset, job, tensor */
    EQ_ERR_UNSUPPORTED, /* valid but not supported by this build */
    EQ_ERR_TIMEOUT,     /* deadline passed */
    EQ_ERR_PROTO,       /* protocol violation by a peer */
    EQ_ERR_NET,         /* socket-level failure */
    EQ_ERR_INTERRUPTED, /* stopped by a signal or a stop request */
    EQ_ERR_INTERNAL,    /* should not happen; a bug */
    EQ_STATUS_COUNT
} eq_status;

/* Short constant name of a status ("invalid", "io", ...). Never NULL. */
const char *eq_status_str(eq_status s);

#define EQ_ERR_MSG_LEN 512

/* Caller-owned error record. A zeroed eq_err means "no error". */
typedef struct eq_err {
    eq_status code;
    char msg[EQ_ERR_MSG_LEN];
} eq_err;

/* Record an error and return `code`, so callers can write
 *     return eq_err_set(err, EQ_ERR_IO, "%s: %s", path, strerror(errno));
 * `err` may be NULL (the message is then dropped). */
eq_status eq_err_set(eq_err *err, eq_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
eq_status eq_err_vset(eq_err *err, eq_status code, const char *fmt, va_list ap);

/* Prefix the message already in `err` with more context ("file.cfg: ..."),
 * keeping its code; returns err->code (EQ_OK when err is NULL). */
eq_status eq_err_prefix(eq_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Reset to "no error". */
void eq_err_clear(eq_err *err);

/* Invariant check: prints file:line and the expression, then aborts. */
#define EQ_ASSERT(x)                                                       \
    do {                                                                   \
        if (!(x)) eq_abort(__FILE__, __LINE__, "assertion failed: %s", #x); \
    } while (0)

_Noreturn void eq_abort(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Checked allocation for sizes computed from untrusted counts:
 * returns NULL on overflow of n*size as well as on allocation failure. */
void *eq_calloc_array(size_t n, size_t size);
void *eq_malloc_array(size_t n, size_t size);

#endif
