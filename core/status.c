/* core/status.c -- status names, error records, abort. */
#include "core/status.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const s_names[EQ_STATUS_COUNT] = {
    [EQ_OK] = "ok",
    [EQ_ERR_INVALID] = "invalid",
    [EQ_ERR_NOMEM] = "nomem",
    [EQ_ERR_IO] = "io",
    [EQ_ERR_PARSE] = "parse",
    [EQ_ERR_CORRUPT] = "corrupt",
    [EQ_ERR_LIMIT] = "limit",
    [EQ_ERR_VERSION] = "version",
    [EQ_ERR_NOTFOUND] = "notfound",
    [EQ_ERR_UNSUPPORTED] = "unsupported",
    [EQ_ERR_TIMEOUT] = "timeout",
    [EQ_ERR_PROTO] = "proto",
    [EQ_ERR_NET] = "net",
    [EQ_ERR_INTERRUPTED] = "interrupted",
    [EQ_ERR_INTERNAL] = "internal",
};

const char *eq_status_str(eq_status s)
{
    if ((unsigned)s >= EQ_STATUS_COUNT) return "unknown";
    return s_names[s];
}

eq_status eq_err_vset(eq_err *err, eq_status code, const char *fmt, va_list ap)
{
    if (err) {
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    }
    return code;
}

eq_status eq_err_set(eq_err *err, eq_status code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    eq_err_vset(err, code, fmt, ap);
    va_end(ap);
    return code;
}

eq_status eq_err_prefix(eq_err *err, const char *fmt, ...)
{
    if (!err) return EQ_OK;
    char pre[EQ_ERR_MSG_LEN], old[EQ_ERR_MSG_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    old[sizeof old - 1] = '\0';
    size_t n = strlen(pre), m = strlen(old);
    if (n > sizeof err->msg - 1) n = sizeof err->msg - 1;
    if (m > sizeof err->msg - 1 - n) m = sizeof err->msg - 1 - n;
    memcpy(err->msg, pre, n);
    memcpy(err->msg + n, old, m);
    err->msg[n + m] = '\0';
    return err->code;
}

void eq_err_clear(eq_err *err)
{
    if (err) {
        err->code = EQ_OK;
        err->msg[0] = '\0';
    }
}

void eq_abort(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "eq: fatal at %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    abort();
}

void *eq_malloc_array(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size) return NULL;
    size_t bytes = n * size;
    return malloc(bytes ? bytes : 1);
}

void *eq_calloc_array(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size) return NULL;
    return calloc(n ? n : 1, size ? size : 1);
}
