/* core/file.c -- whole-file reads and atomic writes (see file.h). */
#include "core/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static eq_status s_errno_code(int e) { return e == ENOENT ? EQ_ERR_NOTFOUND : EQ_ERR_IO; }

eq_status eq_file_read(const char *path, size_t max_bytes, char **data, size_t *len, eq_err *err)
{
    *data = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return eq_err_set(err, s_errno_code(e), "%s: open: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return eq_err_set(err, EQ_ERR_IO, "%s: stat: %s", path, strerror(e));
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return eq_err_set(err, EQ_ERR_IO, "%s: is a directory", path);
    }
    /* Regular files: allocate the size once (+1 to see growth); others
     * (pipes, /dev/stdin) grow the buffer as they go. */
    size_t cap = S_ISREG(st.st_mode) ? (size_t)st.st_size + 1 : 65536;
    if (S_ISREG(st.st_mode) && ((uint64_t)st.st_size > SIZE_MAX - EQ_FILE_PAD - 1 ||
                                (max_bytes && (uint64_t)st.st_size > max_bytes))) {
        close(fd);
        return eq_err_set(err, EQ_ERR_LIMIT, "%s: file is %lld bytes, over the limit of %zu bytes", path,
                          (long long)st.st_size, max_bytes);
    }
    char *buf = malloc(cap + EQ_FILE_PAD);
    if (!buf) {
        close(fd);
        return eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, cap);
    }
    size_t n = 0;
    for (;;) {
        if (n == cap) {
            if (max_bytes && n > max_bytes) break;
            size_t ncap = cap * 2;
            char *nb = ncap > cap ? realloc(buf, ncap + EQ_FILE_PAD) : NULL;
            if (!nb) {
                free(buf);
                close(fd);
                return eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, ncap);
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            free(buf);
            close(fd);
            return eq_err_set(err, EQ_ERR_IO, "%s: read: %s", path, strerror(e));
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    close(fd);
    if (max_bytes && n > max_bytes) {
        free(buf);
        return eq_err_set(err, EQ_ERR_LIMIT, "%s: file is over the limit of %zu bytes", path, max_bytes);
    }
    memset(buf + n, 0, EQ_FILE_PAD);
    *data = buf;
    *len = n;
    return EQ_OK;
}

/* ---- atomic writes ------------------------------------------------------ */

struct eq_file_atomic {
    int fd;
    int failed; /* a write failed: commit must not rename */
    char *path;
    char *tmp;
};

static atomic_uint s_tmp_counter;

/* What a failed atomic write did not do (the point of writing atomically). */
#define S_KEPT "the previous file, if any, is unchanged"

eq_file_atomic *eq_file_atomic_open(const char *path, eq_err *err)
{
    eq_file_atomic *a = calloc(1, sizeof *a);
    size_t n = strlen(path);
    if (!a || !(a->path = strdup(path)) || !(a->tmp = malloc(n + 64))) {
        if (a) {
            free(a->path);
            free(a);
        }
        eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory", path);
        return NULL;
    }
    for (int tries = 0;; tries++) {
        snprintf(a->tmp, n + 64, "%s.tmp-%ld-%u", path, (long)getpid(), atomic_fetch_add(&s_tmp_counter, 1));
        a->fd = open(a->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (a->fd >= 0) break;
        int e = errno;
        if (e == EEXIST && tries < 100) continue;
        eq_err_set(err, s_errno_code(e), "%s: not written: create %s: %s", path, a->tmp, strerror(e));
        free(a->tmp);
        free(a->path);
        free(a);
        return NULL;
    }
    return a;
}

eq_status eq_file_atomic_write(eq_file_atomic *a, const void *data, size_t len, eq_err *err)
{
    const char *p = data;
    if (a->failed) return eq_err_set(err, EQ_ERR_IO, "%s: write after a failed write", a->tmp);
    while (len > 0) {
        ssize_t w = write(a->fd, p, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            a->failed = 1;
            return eq_err_set(err, EQ_ERR_IO, "%s: not written: write to %s: %s (%s)", a->path, a->tmp, strerror(e),
                              S_KEPT);
        }
        p += w;
        len -= (size_t)w;
    }
    return EQ_OK;
}

static void s_free(eq_file_atomic **a_p)
{
    eq_file_atomic *a = *a_p;
    free(a->tmp);
    free(a->path);
    free(a);
    *a_p = NULL;
}

void eq_file_atomic_abort(eq_file_atomic **a_p)
{
    if (!a_p || !*a_p) return;
    eq_file_atomic *a = *a_p;
    if (a->fd >= 0) close(a->fd);
    unlink(a->tmp);
    s_free(a_p);
}

eq_status eq_file_atomic_commit(eq_file_atomic **a_p, eq_err *err)
{
    eq_file_atomic *a = *a_p;
    eq_status rc = EQ_OK;
    if (a->failed) {
        rc = eq_err_set(err, EQ_ERR_IO, "%s: not written: an earlier write failed (%s)", a->path, S_KEPT);
    } else if (fsync(a->fd) != 0) {
        int e = errno;
        rc = eq_err_set(err, EQ_ERR_IO, "%s: not written: fsync %s: %s (%s)", a->path, a->tmp, strerror(e), S_KEPT);
    }
    int c = close(a->fd);
    a->fd = -1;
    if (rc == EQ_OK && c != 0) {
        int e = errno;
        rc = eq_err_set(err, EQ_ERR_IO, "%s: not written: close %s: %s (%s)", a->path, a->tmp, strerror(e), S_KEPT);
    }
    if (rc == EQ_OK && rename(a->tmp, a->path) != 0) {
        int e = errno;
        rc = eq_err_set(err, EQ_ERR_IO, "%s: not written: rename from %s: %s (%s)", a->path, a->tmp, strerror(e),
                        S_KEPT);
    }
    if (rc != EQ_OK) {
        unlink(a->tmp);
        s_free(a_p);
        return rc;
    }
    /* fsync the directory so the rename itself is durable */
    char *dir = strdup(a->path);
    if (!dir) {
        s_free(a_p);
        return eq_err_set(err, EQ_ERR_NOMEM, "out of memory");
    }
    char *slash = strrchr(dir, '/');
    const char *d = dir;
    if (!slash)
        d = ".";
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    int dfd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        int e = errno;
        rc = eq_err_set(err, EQ_ERR_IO, "%s: fsync of directory %s: %s", a->path, d, strerror(e));
    }
    if (dfd >= 0) close(dfd);
    free(dir);
    s_free(a_p);
    return rc;
}

eq_status eq_file_write_atomic(const char *path, const void *data, size_t len, eq_err *err)
{
    eq_err local;
    eq_err *e = err ? err : &local;
    eq_file_atomic *a = eq_file_atomic_open(path, e);
    if (!a) return e->code;
    if (eq_file_atomic_write(a, data, len, e) != EQ_OK) {
        eq_file_atomic_abort(&a);
        return e->code;
    }
    return eq_file_atomic_commit(&a, e);
}
