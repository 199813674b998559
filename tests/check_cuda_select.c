/*
 * tests/check_cuda_select.c -- trainer/backend_select: backends by name in
 * every build.  Runs without a GPU: "cuda" must either open (a GPU is
 * there) or fail with the documented message (built without CUDA / no
 * CUDA device: <reason>).
 */
#include "config.h"

#include "trainer/backend_select.h"
#include "tests/testutil.h"

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
}
END_TEST

START_TEST(test_cuda)
{
    eq_err err = {0};
    eq_backend *be = NULL;
    char why[256] = "";
    int ndev = eq_backend_cuda_devices(why, sizeof why);
    eq_status st = eq_backend_open("cuda", 0, &be, &err);
    if (!eq_backend_cuda_built()) {
        ck_assert_int_eq(ndev, 0);
        ck_assert_str_eq(why, "built without CUDA");
        ck_assert_int_eq(st, EQ_ERR_UNSUPPORTED);
        ck_assert_msg(strstr(err.msg, "built without CUDA") != NULL, "%s", err.msg);
        ck_assert_ptr_null(be);
    } else if (ndev == 0) {
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

int main(void)
{
    Suite *s = suite_create("backend_select");
    TCase *tc = tcase_create("select");
    tcase_add_test(tc, test_cpu);
    tcase_add_test(tc, test_unknown);
    tcase_add_test(tc, test_cuda);
    suite_add_tcase(s, tc);
    return eq_test_run(s);
}
