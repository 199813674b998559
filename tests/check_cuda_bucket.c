/*
 * tests/check_cuda_bucket.c -- gradient bucket planning for the NCCL
 * all-reduce (trainer/cuda/bucket.h).  Pure logic: runs without a GPU.
 */
#include "trainer/cuda/bucket.h"
#include "core/rng.h"
#include "tests/testutil.h"

START_TEST(test_example)
{
    /* layer order; planned from the last parameter backwards */
    size_t bytes[6] = {100, 4000, 36, 1u << 20, 8, 8};
    eq_bucket_plan *p = NULL;
    eq_err err = {0};
    ck_assert_int_eq(eq_bucket_plan_new(6, bytes, 8192, 1024, &p, &err), EQ_OK);
    ck_assert_uint_eq(p->nbuckets, 3);
    /* bucket 0: params 5, 4 (64 + 64 bytes aligned); bucket 1: param 3
     * alone (larger than the cap); bucket 2: params 2, 1, 0 */
    size_t order[6] = {5, 4, 3, 2, 1, 0};
    for (int j = 0; j < 6; j++) ck_assert_uint_eq(p->order[j], order[j]);
    ck_assert_uint_eq(p->buckets[0].count, 2);
    ck_assert_uint_eq(p->buckets[0].bytes, 128);
    ck_assert_uint_eq(p->buckets[1].count, 1);
    ck_assert_uint_eq(p->buckets[1].bytes, 1u << 20);
    ck_assert_uint_eq(p->buckets[2].count, 3);
    ck_assert_uint_eq(p->buckets[2].bytes, 64 + 4032 + 128);
    ck_assert_uint_eq(p->offset[5], 0);
    ck_assert_uint_eq(p->offset[4], 64);
    ck_assert_uint_eq(p->offset[3], 128);
    ck_assert_uint_eq(p->offset[2], 128 + (1u << 20));
    ck_assert_uint_eq(p->arena_bytes, 128 + (1u << 20) + 4224);
    ck_assert_uint_eq(p->bucket_of[0], 2);
    /* readiness in backward order: a bucket completes with its last gradient */
    for (int step = 0; step < 2; step++) {
        eq_bucket_reset(p);
        ck_assert_int_eq(eq_bucket_mark_ready(p, 5, &err), -1);
        ck_assert_int_eq(eq_bucket_mark_ready(p, 4, &err), 0);
        ck_assert_int_eq(eq_bucket_mark_ready(p, 3, &err), 1);
        ck_assert_int_eq(eq_bucket_mark_ready(p, 1, &err), -1); /* any order inside a bucket */
        ck_assert_int_eq(eq_bucket_mark_ready(p, 2, &err), -1);
        ck_assert_int_eq(eq_bucket_mark_ready(p, 0, &err), 2);
    }
    ck_assert_int_eq(eq_bucket_mark_ready(p, 0, &err), -2);
    ck_assert_msg(strstr(err.msg, "twice") != NULL, "%s", err.msg);
    ck_assert_int_eq(eq_bucket_mark_ready(p, 6, &err), -2);
    ck_assert_msg(strstr(err.msg, "out of range") != NULL, "%s", err.msg);
    eq_bucket_plan_destroy(&p);
    ck_assert_ptr_null(p);
}
END_TEST

START_TEST(test_errors)
{
    eq_bucket_plan *p = (eq_bucket_plan *)0x1;
    eq_err err = {0};
    size_t b[2] = {4, 0};
    ck_assert_int_eq(eq_bucket_plan_new(0, b, 100, 0, &p, &err), EQ_ERR_INVALID);
    ck_assert_ptr_null(p);
    ck_assert_int_eq(eq_bucket_plan_new(2, b, 100, 0, &p, &err), EQ_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "parameter 1") != NULL, "%s", err.msg);
    ck_assert_int_eq(eq_bucket_plan_new(1, b, 0, 0, &p, &err), EQ_ERR_INVALID);
    eq_bucket_plan_destroy(NULL);
}
END_TEST

/* Random sizes: the invariants of any plan. */
START_TEST(test_random)
{
    eq_rng r;
    eq_rng_init(&r, 12345, (uint64_t)_i);
    size_t n = 1 + eq_rng_below(&r, 200), cap = 256 + eq_rng_below(&r, 1 << 16);
    size_t first = eq_rng_below(&r, 2) ? 0 : 64 + eq_rng_below(&r, 4096);
    size_t *bytes = malloc(n * sizeof *bytes);
    for (size_t i = 0; i < n; i++)
        bytes[i] = 4 * (1 + (eq_rng_below(&r, 8) == 0 ? eq_rng_below(&r, 1 << 16) : eq_rng_below(&r, 512)));
    eq_bucket_plan *p = NULL;
    eq_err err = {0};
    ck_assert_int_eq(eq_bucket_plan_new(n, bytes, cap, first, &p, &err), EQ_OK);
    size_t seen = 0, off = 0;
    for (size_t b = 0; b < p->nbuckets; b++) {
        const eq_bucket *k = &p->buckets[b];
        size_t lim = b == 0 && first ? first : cap;
        ck_assert_uint_eq(k->first, seen);
        ck_assert_uint_eq(k->offset, off);
        ck_assert(k->count >= 1);
        ck_assert(k->bytes <= lim || k->count == 1);
        ck_assert_uint_eq(k->bytes % EQ_BUCKET_ALIGN, 0);
        size_t sum = 0;
        for (size_t j = k->first; j < k->first + k->count; j++) {
            size_t i = p->order[j];
            ck_assert_uint_eq(i, n - 1 - j); /* reverse layer order */
            ck_assert_uint_eq(p->bucket_of[i], b);
            ck_assert_uint_eq(p->offset[i], off + sum);
            ck_assert(p->offset[i] % EQ_BUCKET_ALIGN == 0);
            sum += (bytes[i] + EQ_BUCKET_ALIGN - 1) / EQ_BUCKET_ALIGN * EQ_BUCKET_ALIGN;
        }
        ck_assert_uint_eq(sum, k->bytes);
        /* greedy: the next parameter did not fit */
        if (b + 1 < p->nbuckets) {
            size_t nx = p->order[k->first + k->count];
            size_t a = (bytes[nx] + EQ_BUCKET_ALIGN - 1) / EQ_BUCKET_ALIGN * EQ_BUCKET_ALIGN;
            ck_assert(k->bytes + a > lim);
        }
        seen += k->count;
        off += k->bytes;
    }
    ck_assert_uint_eq(seen, n);
    ck_assert_uint_eq(off, p->arena_bytes);
    /* every bucket completes exactly once per step, whatever the order */
    eq_bucket_reset(p);
    uint32_t *perm = malloc(n * sizeof *perm);
    for (size_t i = 0; i < n; i++) perm[i] = (uint32_t)i;
    eq_rng_permute(&r, perm, n);
    size_t done = 0;
    for (size_t i = 0; i < n; i++) {
        long b = eq_bucket_mark_ready(p, perm[i], &err);
        ck_assert(b >= -1);
        if (b >= 0) {
            done++;
            ck_assert_uint_eq(p->buckets[b].ready, p->buckets[b].count);
        }
    }
    ck_assert_uint_eq(done, p->nbuckets);
    free(perm);
    eq_bucket_plan_destroy(&p);
    free(bytes);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cuda_bucket");
    TCase *tc = tcase_create("plan");
    tcase_add_test(tc, test_example);
    tcase_add_test(tc, test_errors);
    tcase_add_loop_test(tc, test_random, 0, 50);
    suite_add_tcase(s, tc);
    return eq_test_run(s);
}
