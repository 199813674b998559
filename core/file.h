/*
 * core/file.h -- whole-file reads with a size limit, and atomic writes.
 *
 * Reading: the file is read into one malloc'd buffer followed by
 * EQ_FILE_PAD zero bytes (so it is NUL-terminated, and parsers may read a
 * word past the end without bounds checks).
 *
 * Writing: data goes to a temporary file in the same directory
 * ("<path>.tmp-<pid>-<n>"), which is fsynced, renamed over `path`, and the
 * directory is fsynced: after a crash `path` holds either the old or the
 * new contents, never a mix.  The new file gets mode 0666 & ~umask.
 *
 * Errors name the path and the failing call's strerror (EQ_ERR_IO,
 * EQ_ERR_NOTFOUND for a missing file, EQ_ERR_LIMIT, EQ_ERR_NOMEM).
 * Thread-safety: all functions are safe to call from several threads on
 * different files; one eq_file_atomic handle belongs to one thread.
 */
#ifndef EQ_FILE_H
#define EQ_FILE_H

#include <stddef.h>

#include "core/status.h"

#define EQ_FILE_PAD 16

/* Read the whole file at `path`.  max_bytes: 0 for no limit, else files
 * larger than that fail with EQ_ERR_LIMIT before anything is allocated.
 * On success *data (caller frees with free()) holds *len bytes followed by
 * EQ_FILE_PAD zero bytes.  On failure *data is NULL. */
eq_status eq_file_read(const char *path, size_t max_bytes, char **data, size_t *len, eq_err *err);

/* Write `len` bytes atomically to `path` (see above). */
eq_status eq_file_write_atomic(const char *path, const void *data, size_t len, eq_err *err);

/* Streaming form of the atomic write, for data produced in pieces:
 *     eq_file_atomic *a = eq_file_atomic_open(path, err);
 *     eq_file_atomic_write(a, buf, n, err) ...;
 *     eq_file_atomic_commit(&a, err);   // or eq_file_atomic_abort(&a)
 * open returns NULL on failure; commit and abort always free the handle and
 * NULL the pointer; a failed write or commit removes the temporary file
 * (commit) or leaves it for abort to remove.  Caller owns the handle. */
typedef struct eq_file_atomic eq_file_atomic;
eq_file_atomic *eq_file_atomic_open(const char *path, eq_err *err);
eq_status eq_file_atomic_write(eq_file_atomic *a, const void *data, size_t len, eq_err *err);
eq_status eq_file_atomic_commit(eq_file_atomic **a_p, eq_err *err);
void eq_file_atomic_abort(eq_file_atomic **a_p); /* NULL-safe; unlinks the temporary file */

#endif
