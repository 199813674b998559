/*
 * tests/check_cuda_select.c -- trainer/backend_select: backends by name in
 * every build.  Runs without a GPU: "cuda" must either open (a GPU is
 * there) or fail with the documented message (built without CUDA / no
 * CUDA device: <reason>).  In a CUDA build the backend is the module
 * eqcuda.so: these tests check that the program does not carry the CUDA
 * libraries, that "cpu" never loads them, that "cuda" loads the module
 * from the build tree and gets its answer, and that a bad or stale module
 * named by EQ_CUDA_PLUGIN is refused with an error naming it.  Check runs
 * each test in a child process, so each starts with nothing loaded.
 */
#include "config.h"

#include "trainer/backend_select.h"
#include "tests/testutil.h"

#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

/* 1 when a mapped file of this process has `needle` in its path. */
static int s_mapped(const char *needle)
{
    FILE *f = fopen("/proc/self/maps", "r");
    ck_assert_ptr_nonnull(f);
    char line[PATH_MAX + 128];
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

START_TEST(test_cpu)
{
    eq_err err = {0};
    eq_backend *be = (eq_backend *)0x1;
    ck_assert_int_eq(eq_backend_open("cpu", 1, &be, &err), EQ_OK);
    ck_assert_ptr_nonnull(be);
    ck_assert_str_eq(eq_backend_name(be), "cpu");
    /* it computes: relu of a small vector */
    float x[4] = {-1.0f, 2.0f, -3.0f, 4.0f}, y[4];
    float *d = eq_backend_alloc(be, sizeof x, &err);
    ck_assert_ptr_nonnull(d);
    ck_assert_int_eq(eq_backend_upload(be, d, x, sizeof x, &err), EQ_OK);
    ck_assert_int_eq(eq_backend_relu_fwd(be, 4, d, d, &err), EQ_OK);
    ck_assert_int_eq(eq_backend_download(be, y, d, sizeof y, &err), EQ_OK);
    ck_assert(y[0] == 0.0f && y[1] == 2.0f && y[2] == 0.0f && y[3] == 4.0f);
    eq_backend_release(be, d);
    eq_backend_destroy(&be);
    ck_assert_ptr_null(be);
    /* the CPU backend loads neither the module nor any CUDA library */
    ck_assert(!s_mapped("eqcuda.so"));
    ck_assert(!s_mapped("libcudart"));
}
END_TEST

START_TEST(test_unknown)
{
    eq_err err = {0};
    eq_backend *be = (eq_backend *)0x1;
    ck_assert_int_eq(eq_backend_open("tpu", 0, &be, &err), EQ_ERR_INVALID);
    ck_assert_ptr_null(be);
    ck_assert_msg(strstr(err.msg, "'tpu'") && strstr(err.msg, "cpu, cuda"), "%s", err.msg);
    ck_assert_int_eq(eq_backend_open(NULL, 0, &be, &err), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_backend_open("cpu", 0, NULL, &err), EQ_ERR_INVALID);
    ck_assert(!s_mapped("eqcuda.so"));
}
END_TEST

START_TEST(test_cuda)
{
    eq_err err = {0};
    eq_backend *be = NULL;
    char why[256] = "";
    /* make check leaves EQ_CUDA_PLUGIN unset (the build tree's module);
     * scripts/gpu-check names the module it carried */
    const char *env = getenv("EQ_CUDA_PLUGIN");
    /* the program itself does not load CUDA; asking for it loads the module */
    ck_assert(!s_mapped("libcudart"));
    int ndev = eq_backend_cuda_devices(why, sizeof why);
    eq_status st = eq_backend_open("cuda", 0, &be, &err);
    if (!eq_backend_cuda_built()) {
        ck_assert_int_eq(ndev, 0);
        ck_assert_str_eq(why, "built without CUDA");
        ck_assert_int_eq(st, EQ_ERR_UNSUPPORTED);
        ck_assert_msg(strstr(err.msg, "built without CUDA") != NULL, "%s", err.msg);
        ck_assert_ptr_null(be);
        return;
    }
    ck_assert_msg(s_mapped(env && *env ? "eqcuda.so" : "/.libs/eqcuda.so"),
                  "eqcuda.so not loaded (from the build tree unless EQ_CUDA_PLUGIN is set): %s",
                  why);
    ck_assert(s_mapped("libcudart"));
    if (ndev == 0) {
        /* cudaGetDeviceCount failed inside the module: it loaded and answered */
        ck_assert_int_eq(st, EQ_ERR_UNSUPPORTED);
        ck_assert_msg(strncmp(err.msg, "no CUDA device: ", 16) == 0 && strlen(err.msg) > 16,
                      "%s", err.msg);
        ck_assert_msg(strstr(err.msg, why) != NULL, "'%s' lacks '%s'", err.msg, why);
        ck_assert_ptr_null(be);
    } else {
        ck_assert_msg(st == EQ_OK, "cuda: %s", err.msg);
        ck_assert_str_eq(eq_backend_name(be), "cuda");
        eq_backend_destroy(&be);
        /* an ordinal past the last device is refused by name */
        st = eq_backend_open("cuda", ndev, &be, &err);
        ck_assert_int_eq(st, EQ_ERR_INVALID);
        ck_assert_msg(strstr(err.msg, "out of range") != NULL, "%s", err.msg);
    }
}
END_TEST

/* "cuda" with EQ_CUDA_PLUGIN=path must fail with an error containing each
 * of `want` (NULL-terminated), and load no CUDA library. */
static void s_bad_module(const char *path, const char *const *want)
{
    eq_err err = {0};
    eq_backend *be = (eq_backend *)0x1;
    char why[EQ_ERR_MSG_LEN] = "";
    ck_assert_int_eq(setenv("EQ_CUDA_PLUGIN", path, 1), 0);
    ck_assert_int_eq(eq_backend_cuda_devices(why, sizeof why), 0);
    eq_status st = eq_backend_open("cuda", 0, &be, &err);
    ck_assert_ptr_null(be);
    if (!eq_backend_cuda_built()) { /* the variable is never looked at */
        ck_assert_int_eq(st, EQ_ERR_UNSUPPORTED);
        ck_assert_msg(strstr(err.msg, "built without CUDA") != NULL, "%s", err.msg);
        return;
    }
    ck_assert_int_eq(st, EQ_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(err.msg, "backend 'cuda'") && strstr(err.msg, "EQ_CUDA_PLUGIN") &&
                      strstr(err.msg, path),
                  "%s", err.msg);
    for (int i = 0; want[i]; i++) {
        ck_assert_msg(strstr(err.msg, want[i]) != NULL, "'%s' lacks '%s'", err.msg, want[i]);
        ck_assert_msg(strstr(why, want[i]) != NULL, "'%s' lacks '%s'", why, want[i]);
    }
    ck_assert(!s_mapped("libcudart"));
}

START_TEST(test_plugin_missing)
{
    s_bad_module("/nonexistent/eqcuda.so", (const char *[]){"No such file", NULL});
}
END_TEST

START_TEST(test_plugin_not_elf)
{
    /* an existing file that is not a shared object: dlerror's text */
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/tests/check_cuda_select.c", eq_test_srcdir());
    s_bad_module(path, (const char *[]){"ELF", NULL});
}
END_TEST

START_TEST(test_plugin_stale)
{
    /* tests/cuda_plugin_stale.so (built beside this program): another ABI */
    char path[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 64);
    ck_assert(n > 0);
    path[n] = '\0';
    *strrchr(path, '/') = '\0';
    strcat(path, "/cuda_plugin_stale.so");
    if (eq_backend_cuda_built()) ck_assert_msg(access(path, R_OK) == 0, "%s missing", path);
    s_bad_module(path, (const char *[]){"stale module", "rebuild or reinstall", NULL});
}
END_TEST

int main(void)
{
    Suite *s = suite_create("backend_select");
    TCase *tc = tcase_create("select");
    tcase_add_test(tc, test_cpu);
    tcase_add_test(tc, test_unknown);
    tcase_add_test(tc, test_plugin_missing);
    tcase_add_test(tc, test_plugin_not_elf);
    tcase_add_test(tc, test_plugin_stale);
    suite_add_tcase(s, tc);
    /* loading the module maps ~1 GB of CUDA libraries: well under a second
     * when they are in the page cache, but 5-10 s on a loaded machine after
     * they left it (measured here at load 11) */
    TCase *tl = tcase_create("load");
    tcase_set_timeout(tl, 60);
    tcase_add_test(tl, test_cuda);
    suite_add_tcase(s, tl);
    return eq_test_run(s);
}
