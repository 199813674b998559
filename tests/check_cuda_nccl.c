/*
 * tests/check_cuda_nccl.c -- the NCCL wrapper (trainer/cuda/nccl.h) on one
 * GPU: a one-rank communicator averages buckets in place (the values stay
 * as they are), bucket bookkeeping errors are refused by name, and a
 * communicator whose second rank never arrives fails with a timeout and is
 * aborted instead of hanging.  Multi-GPU scaling needs a multi-GPU machine.
 *
 * Without a usable GPU the program prints why and exits 77 (SKIP).
 */
#include "config.h"

#include "trainer/backend.h"
#include "trainer/cuda/cuda.h"
#include "trainer/cuda/nccl.h"
#include "tests/testutil.h"

#include <time.h>

static eq_backend *s_gpu(void)
{
    eq_err err = {0};
    eq_cuda_opts o = {.device = 0};
    eq_backend *be = eq_backend_cuda_new(&o, &err);
    ck_assert_msg(be != NULL, "%s", err.msg);
    return be;
}

START_TEST(test_one_rank)
{
    eq_err err = {0};
    eq_backend *be = s_gpu();
    uint8_t id[EQ_NCCL_ID_BYTES];
    ck_assert_msg(eq_nccl_unique_id(id, &err) == EQ_OK, "%s", err.msg);
    eq_nccl *c = eq_nccl_new(be, id, sizeof id, 1, 0, 2, 30.0, &err);
    ck_assert_msg(c != NULL, "%s", err.msg);
    const size_t n = 10000;
    float *h = malloc(n * 4), *back = malloc(n * 4);
    for (size_t i = 0; i < n; i++) h[i] = (float)i * 0.25f - 7.0f;
    float *d = eq_backend_alloc(be, n * 4, &err);
    ck_assert(eq_backend_upload(be, d, h, n * 4, &err) == EQ_OK);
    for (int step = 0; step < 2; step++) {
        ck_assert_msg(eq_nccl_allreduce_start(c, 0, d, 6000, &err) == EQ_OK, "%s", err.msg);
        ck_assert_msg(eq_nccl_allreduce_start(c, 1, d + 6000, n - 6000, &err) == EQ_OK, "%s", err.msg);
        ck_assert_int_eq(eq_nccl_allreduce_start(c, 1, d, 1, &err), EQ_ERR_INVALID); /* twice */
        ck_assert(eq_nccl_allreduce_wait(c, 0, &err) == EQ_OK);
        ck_assert(eq_nccl_allreduce_wait(c, 1, &err) == EQ_OK);
        ck_assert_msg(eq_nccl_synchronize(c, &err) == EQ_OK, "%s", err.msg);
        ck_assert_int_eq(eq_nccl_allreduce_wait(c, 0, &err), EQ_ERR_INVALID); /* not started */
    }
    ck_assert(eq_backend_download(be, back, d, n * 4, &err) == EQ_OK);
    ck_assert(memcmp(back, h, n * 4) == 0); /* the average over one rank */
    ck_assert(eq_nccl_check(c, &err) == EQ_OK);
    ck_assert_int_eq(eq_nccl_aborted(c), 0);
    eq_nccl_destroy(&c);
    ck_assert_ptr_null(c);
    eq_backend_release(be, d);
    eq_backend_destroy(&be);
    free(h);
    free(back);
}
END_TEST

START_TEST(test_missing_peer)
{
    eq_err err = {0};
    eq_backend *be = s_gpu();
    uint8_t id[EQ_NCCL_ID_BYTES];
    ck_assert(eq_nccl_unique_id(id, &err) == EQ_OK);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    eq_nccl *c = eq_nccl_new(be, id, sizeof id, 2, 0, 1, 3.0, &err); /* rank 1 never comes */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ck_assert_ptr_null(c);
    ck_assert_msg(err.code == EQ_ERR_TIMEOUT || err.code == EQ_ERR_NET, "%d %s", err.code, err.msg);
    ck_assert_msg(strstr(err.msg, "rank 0/2") && strstr(err.msg, "aborted"), "%s", err.msg);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    ck_assert_msg(s < 30.0, "gave up after %.1f s", s);
    eq_backend_destroy(&be);
}
END_TEST

START_TEST(test_args)
{
    eq_err err = {0};
    eq_backend *be = s_gpu(), *cpu = eq_backend_cpu_new(1, &err);
    uint8_t id[EQ_NCCL_ID_BYTES] = {0};
    ck_assert_ptr_null(eq_nccl_new(cpu, id, sizeof id, 1, 0, 1, 1.0, &err));
    ck_assert_msg(strstr(err.msg, "cuda backend") != NULL, "%s", err.msg);
    ck_assert_ptr_null(eq_nccl_new(be, id, 12, 1, 0, 1, 1.0, &err));
    ck_assert_msg(strstr(err.msg, "128 bytes") != NULL, "%s", err.msg);
    ck_assert_ptr_null(eq_nccl_new(be, id, sizeof id, 2, 2, 1, 1.0, &err));
    ck_assert_msg(strstr(err.msg, "rank 2 of 2") != NULL, "%s", err.msg);
    ck_assert_ptr_null(eq_nccl_new(be, id, sizeof id, 1, 0, 0, 1.0, &err));
    ck_assert_int_eq(eq_nccl_allreduce_start(NULL, 0, NULL, 0, &err), EQ_ERR_INVALID);
    eq_nccl_destroy(NULL);
    eq_backend_destroy(&be);
    eq_backend_destroy(&cpu);
}
END_TEST

int main(void)
{
    char why[256] = "";
    if (eq_cuda_device_count(why, sizeof why) == 0) {
        printf("SKIP: check_cuda_nccl: no CUDA device: %s\n", why);
        return 77;
    }
    Suite *su = suite_create("cuda_nccl");
    TCase *tc = tcase_create("nccl");
    tcase_add_test(tc, test_args);
    tcase_add_test(tc, test_one_rank);
    tcase_add_test(tc, test_missing_peer);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_set_fork_status(sr, CK_NOFORK); /* CUDA is initialised in this process */
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
