/*
 * tests/testutil.h -- small helpers shared by the Check suites.
 *
 * eq_test_scratch(): a fresh directory under $TMPDIR (or /tmp) for files a
 * test writes; the source tree may be read-only (make distcheck).
 * eq_test_srcdir(): the top source directory ($EQ_SRCDIR, set by make check),
 * for reading fixtures committed under tests/.
 * eq_test_run(): run a suite with Check's defaults and return the exit code.
 */
#ifndef EQ_TESTUTIL_H
#define EQ_TESTUTIL_H

#include <check.h>
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

static inline int eq_test_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
