/*
 * tests/testutil.h -- small helpers shared by the Check suites.
 *
 * eq_test_scratch(): a fresh directory under $TMPDIR (or /tmp) for files a
 * test writes; the source tree may be read-only (make distcheck).
 * eq_test_srcdir(): the top source directory ($EQ_SRCDIR, set by make check),
 * for reading fixtures committed under tests/.
 * eq_test_run(): run a suite with Check's defaults and return the exit code.
 * eq_test_spawn()/eq_test_wait()/eq_test_cat(): run a built program of the
 * tree with its output in a log, wait with a deadline, show the log.
 */
#ifndef EQ_TESTUTIL_H
#define EQ_TESTUTIL_H

#include <check.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static inline const char *eq_test_srcdir(void)
{
    const char *s = getenv("EQ_SRCDIR");
    return s && *s ? s : ".";
}

/* Returns a malloc'd path of a new empty directory; the caller frees it. */
static inline char *eq_test_scratch(const char *tag)
{
    const char *tmp = getenv("TMPDIR");
    char *path = malloc(4096);
    ck_assert_ptr_nonnull(path);
    snprintf(path, 4096, "%s/eq-test-%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", tag);
    ck_assert_ptr_nonnull(mkdtemp(path));
    return path;
}

/* Remove a scratch directory and the plain files directly inside it. */
static inline void eq_test_scratch_rm(char *path)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    int r = system(cmd);
    (void)r;
    free(path);
}

/* Norm-wise relative error ||a - ref|| / ||ref|| in double (the absolute
 * norm when ref is all zeros): the tolerance measure of the parity tests. */
static inline double eq_test_relerr(const float *a, const float *ref, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * (double)ref[i];
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

/* A test's own deterministic random stream (xorshift64; the state is the
 * caller's, seeded per file): next value, an integer in [lo, hi], and n
 * floats in [-scale, scale) -- poisoned with NaN when scale is 0, for
 * outputs that must be overwritten (64 bytes of slack after them). */
static inline uint64_t eq_test_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static inline int64_t eq_test_uniform(uint64_t *s, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(eq_test_next(s) % (uint64_t)(hi - lo + 1));
}

static inline float *eq_test_vec(uint64_t *s, size_t n, float scale)
{
    float *v = malloc(n * sizeof *v + 64);
    ck_assert_ptr_nonnull(v);
    for (size_t i = 0; i < n; i++)
        v[i] = scale == 0.0f
                   ? NAN
                   : (float)((double)(eq_test_next(s) >> 11) / 9007199254740992.0 * 2.0 - 1.0) *
                         scale;
    return v;
}

/* Read a raw fixture file holding exactly `n` 4-byte elements (F32 or I32,
 * little-endian, as the generator scripts write them).  Fails the test,
 * naming the path, if it is missing or has another size.  Caller frees. */
static inline void *eq_test_read_words(const char *path, size_t n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open fixture %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    ck_assert_msg(len == (long)(n * 4), "fixture %s has %ld bytes, expected %zu elements", path, len, n);
    void *p = malloc(n * 4 + 4);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq(fread(p, 4, n, f), n);
    fclose(f);
    return p;
}

/* Processes, for tests that run the built programs: start `argv` (argv[0]
 * relative to $EQ_BUILDDIR) with its stdout and stderr in `log`. */
static inline pid_t eq_test_spawn(char *const argv[], const char *log)
{
    const char *bd = getenv("EQ_BUILDDIR");
    char prog[4096];
    snprintf(prog, sizeof prog, "%s/%s", bd && *bd ? bd : ".", argv[0]);
    ck_assert_msg(access(prog, X_OK) == 0, "%s not built", prog);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(prog, argv);
        _exit(127);
    }
    return pid;
}

/* Wait for pid at most ms; kill it after that.  Returns the exit status
 * (-1: killed). */
static inline int eq_test_wait(pid_t pid, int ms)
{
    for (int t = 0; t < ms; t += 20) {
        int st;
        pid_t p = waitpid(pid, &st, WNOHANG);
        if (p == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        usleep(20000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

/* Copy a log file to stderr (after a failure). */
static inline void eq_test_cat(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[1024];
    fprintf(stderr, "--- %s\n", path);
    while (fgets(line, sizeof line, f)) fputs(line, stderr);
    fclose(f);
}

static inline int eq_test_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
