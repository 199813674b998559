/*
 * tests/check_cuda_nccl.c -- the NCCL communicator (trainer/cuda/nccl.h
 * under trainer/cuda/collective.h) on one GPU: a one-rank communicator
 * runs SUM, AVG and BCAST buckets of device memory (in place and staged),
 * of host memory and of both (over one rank every op leaves the values as
 * they are, so the bytes must come back unchanged), directly and through
 * the CUDA module (eq_comm_nccl_unique_id, eq_comm_nccl_new, as eq-trainer
 * does); argument errors are refused by name; a communicator whose second
 * rank never arrives fails with a timeout and is aborted instead of
 * hanging.  Multi-GPU runs need a multi-GPU machine; the logic shared with
 * them is tests/check_nccl_comm.c's, which needs no GPU.
 *
 * Without a usable GPU the program prints why and exits 77 (SKIP).
 */
#include "config.h"

#include "trainer/backend.h"
#include "trainer/backend_select.h"
#include "trainer/cuda/collective.h"
#include "trainer/cuda/cuda.h"
#include "trainer/cuda/nccl.h"
#include "trainer/dist.h"
#include "tests/testutil.h"

#include <time.h>

static eq_backend *s_gpu(void)
{
    eq_err err = { 0 };
    eq_cuda_opts o = { .device = 0 };
    eq_backend *be = eq_backend_cuda_new(&o, &err);
    ck_assert_msg(be != NULL, "%s", err.msg);
    return be;
}

/* Buckets over device and host memory on comm c of backend be, `steps`
 * steps; every value must come back as it was (one rank). */
static void s_exercise(eq_backend *be, eq_comm *c, void *ctx)
{
    eq_err err = { 0 };
    const size_t n = 10000;
    float *h = malloc(n * 4), *back = malloc(n * 4), host[6] = { 1.5f, -2, 3, 4, 5, 6 }, want[6];
    memcpy(want, host, sizeof want);
    for (size_t i = 0; i < n; i++) h[i] = (float)i * 0.25f - 7.0f;
    float *d = eq_backend_alloc(be, n * 4, &err);
    ck_assert_ptr_nonnull(d);
    ck_assert(eq_backend_upload(be, d, h, n * 4, &err) == EQ_OK);
    eq_comm_seg s0[2] = { { d, 3000 }, { d + 3000, 3000 } }; /* contiguous: in place */
    eq_comm_seg s1[2] = { { d + 8000, 2000 }, { d + 6000, 2000 } }; /* out of order: staged */
    eq_comm_seg s2[2] = { { host, 4 }, { d + 100, 10 } }; /* mixed */
    eq_comm_seg s3[1] = { { host + 4, 2 } };               /* host */
    int b0 = eq_comm_bucket_new(c, s0, 2, EQ_COMM_AVG, &err);
    int b1 = eq_comm_bucket_new(c, s1, 2, EQ_COMM_SUM, &err);
    int b2 = eq_comm_bucket_new(c, s2, 2, EQ_COMM_BCAST, &err);
    int b3 = eq_comm_bucket_new(c, s3, 1, EQ_COMM_SUM, &err);
    ck_assert_msg(b0 >= 0 && b1 >= 0 && b2 >= 0 && b3 >= 0, "%s", err.msg);
    if (ctx) {
        ck_assert_int_eq(eq_coll_in_place(ctx, b0), 1);
        ck_assert_int_eq(eq_coll_in_place(ctx, b1), 0);
        ck_assert_int_eq(eq_coll_in_place(ctx, b2), 0);
    }
    for (int step = 0; step < 3; step++) {
        int ids[4] = { b0, b1, b2, b3 };
        for (int k = 0; k < 4; k++) ck_assert_msg(eq_comm_start(c, ids[k], &err) == EQ_OK, "%s", err.msg);
        ck_assert_int_eq(eq_comm_start(c, b1, &err), EQ_ERR_INVALID); /* twice */
        for (int k = 3; k >= 0; k--) ck_assert_msg(eq_comm_wait(c, ids[k], &err) == EQ_OK, "%s", err.msg);
        ck_assert_int_eq(eq_comm_wait(c, b0, &err), EQ_ERR_INVALID); /* not started */
    }
    /* the download runs on the compute stream, which waits for the buckets */
    ck_assert(eq_backend_download(be, back, d, n * 4, &err) == EQ_OK);
    ck_assert(memcmp(back, h, n * 4) == 0);
    ck_assert(memcmp(host, want, sizeof want) == 0);
    eq_backend_release(be, d);
    free(h);
    free(back);
}

START_TEST(test_one_rank)
{
    eq_err err = { 0 };
    eq_backend *be = s_gpu();
    uint8_t id[EQ_NCCL_ID_BYTES];
    ck_assert_msg(eq_nccl_unique_id(id, sizeof id, &err) == EQ_OK, "%s", err.msg);
    const eq_comm_i *iface;
    void *ctx;
    ck_assert_msg(eq_nccl_comm_new(be, id, sizeof id, 0, 1, 30.0, &iface, &ctx, &err) == EQ_OK, "%s", err.msg);
    eq_comm *c = eq_comm_new(iface, ctx, 0, 1, &err);
    ck_assert_ptr_nonnull(c);
    s_exercise(be, c, ctx);
    ck_assert_int_eq(eq_coll_aborted(ctx), 0);
    eq_comm_destroy(&c);
    ck_assert_ptr_null(c);
    eq_backend_destroy(&be);
}
END_TEST

/* As eq-trainer: the backend and the communicator from the module. */
START_TEST(test_one_rank_module)
{
    eq_err err = { 0 };
    eq_backend *be = NULL;
    ck_assert_msg(eq_backend_open("cuda", 0, &be, &err) == EQ_OK, "%s", err.msg);
    eq_dist_world w = { .rank = 0, .world = 1, .blob_len = EQ_COMM_NCCL_ID_BYTES };
    ck_assert_msg(eq_comm_nccl_unique_id(w.blob, w.blob_len, &err) == EQ_OK, "%s", err.msg);
    eq_comm *c = eq_comm_nccl_new(be, &w, 30000, &err);
    ck_assert_msg(c != NULL, "%s", err.msg);
    ck_assert_str_eq(eq_comm_name(c), "nccl");
    s_exercise(be, c, NULL);
    eq_comm_destroy(&c);
    eq_backend_destroy(&be);
}
END_TEST

START_TEST(test_missing_peer)
{
    eq_err err = { 0 };
    eq_backend *be = s_gpu();
    uint8_t id[EQ_NCCL_ID_BYTES];
    ck_assert(eq_nccl_unique_id(id, sizeof id, &err) == EQ_OK);
    struct timespec t0, t1;
    const eq_comm_i *iface;
    void *ctx;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    eq_status st = eq_nccl_comm_new(be, id, sizeof id, 0, 2, 3.0, &iface, &ctx, &err); /* rank 1 never comes */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ck_assert_int_ne(st, EQ_OK);
    ck_assert_ptr_null(ctx);
    ck_assert_msg(err.code == EQ_ERR_TIMEOUT || err.code == EQ_ERR_NET, "%d %s", err.code, err.msg);
    ck_assert_msg(strstr(err.msg, "nccl rank 0/2") && strstr(err.msg, "aborted"), "%s", err.msg);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    ck_assert_msg(s < 30.0, "gave up after %.1f s", s);
    eq_backend_destroy(&be);
}
END_TEST

START_TEST(test_args)
{
    eq_err err = { 0 };
    eq_backend *be = s_gpu(), *cpu = eq_backend_cpu_new(1, &err);
    uint8_t id[EQ_NCCL_ID_BYTES] = { 0 };
    const eq_comm_i *iface;
    void *ctx;
    ck_assert_int_eq(eq_nccl_comm_new(cpu, id, sizeof id, 0, 1, 1.0, &iface, &ctx, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "cuda backend") != NULL, "%s", err.msg);
    ck_assert_int_eq(eq_nccl_comm_new(be, id, 12, 0, 1, 1.0, &iface, &ctx, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "128 bytes") != NULL, "%s", err.msg);
    ck_assert_int_eq(eq_nccl_comm_new(be, id, sizeof id, 2, 2, 1.0, &iface, &ctx, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "rank 2 of 2") != NULL, "%s", err.msg);
    ck_assert_int_eq(eq_nccl_comm_new(be, id, sizeof id, 0, 1, 0.0, &iface, &ctx, &err), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_nccl_unique_id(id, 64, &err), EQ_ERR_INVALID);
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
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_args);
    tcase_add_test(tc, test_one_rank);
    tcase_add_test(tc, test_one_rank_module);
    tcase_add_test(tc, test_missing_peer);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_set_fork_status(sr, CK_NOFORK); /* CUDA is initialised in this process */
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
