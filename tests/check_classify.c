/* tests/check_classify.c -- Top-1/Top-5 and the exact sample accounting of
 * evaluator/classify.h: counts against a hand-computed case, duplicates,
 * out-of-range ids, missing samples, finals, and that a refused call
 * counts nothing. */
#include "evaluator/classify.h"
#include "tests/testutil.h"

START_TEST(test_topk_counts)
{
    eq_err e = { 0 };
    eq_classify *c = eq_classify_new(4, 2, &e);
    ck_assert_ptr_nonnull(c);
    /* rank 0: ids 0, 2; rank 1: ids 1, 3.  width 6 (only the first 5 count for top5). */
    const int64_t ids0[2] = { 0, 2 }, ids1[2] = { 3, 1 };
    const int32_t lab0[2] = { 7, 1 }, lab1[2] = { 4, 9 };
    const int32_t top0[12] = { 7, 1, 2, 3, 4, 5,  /* top1 hit */
                               0, 2, 3, 4, 1, 6 }; /* top5 hit (5th) */
    const int32_t top1[12] = { 0, 1, 2, 3, 5, 4,  /* 6th only: miss */
                               9, 0, 0, 0, 0, 0 }; /* top1 hit */
    ck_assert_int_eq(eq_classify_add(c, 0, 2, ids0, lab0, top0, 6, &e), EQ_OK);
    ck_assert(!eq_classify_done(c));
    ck_assert_int_eq(eq_classify_final(c, 0, &e), EQ_OK);
    ck_assert_int_eq(eq_classify_add(c, 1, 2, ids1, lab1, top1, 6, &e), EQ_OK);
    ck_assert_int_eq(eq_classify_final(c, 1, &e), EQ_OK);
    ck_assert(eq_classify_done(c));
    eq_classify_result r;
    ck_assert_int_eq(eq_classify_result_get(c, &r, &e), EQ_OK);
    ck_assert_uint_eq(r.samples, 4);
    ck_assert_uint_eq(r.correct1, 2);
    ck_assert_uint_eq(r.correct5, 3);
    ck_assert(r.top1 == 50.0 && r.top5 == 75.0);
    eq_classify_destroy(&c);
    ck_assert_ptr_null(c);
    eq_classify_destroy(&c);
}
END_TEST

START_TEST(test_narrow_topk)
{
    /* width 1: top5 == top1. */
    eq_classify *c = eq_classify_new(3, 1, NULL);
    const int64_t ids[3] = { 2, 0, 1 };
    const int32_t lab[3] = { 1, 1, 0 }, top[3] = { 1, 0, 0 };
    ck_assert_int_eq(eq_classify_add(c, 0, 3, ids, lab, top, 1, NULL), EQ_OK);
    ck_assert_int_eq(eq_classify_final(c, 0, NULL), EQ_OK);
    eq_classify_result r;
    ck_assert_int_eq(eq_classify_result_get(c, &r, NULL), EQ_OK);
    ck_assert_uint_eq(r.correct1, 2);
    ck_assert_uint_eq(r.correct5, 2);
    eq_classify_destroy(&c);
}
END_TEST

START_TEST(test_accounting_errors)
{
    eq_err e = { 0 };
    eq_classify *c = eq_classify_new(100, 2, &e);
    const int64_t ids[3] = { 5, 6, 5 };
    const int32_t lab[3] = { 0 }, top[3] = { 0 };
    /* A duplicate inside one call: refused, and nothing of it counted. */
    ck_assert_int_eq(eq_classify_add(c, 0, 3, ids, lab, top, 1, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "sample 5 from rank 0: duplicated"));
    ck_assert_uint_eq(eq_classify_received(c), 0);
    ck_assert_int_eq(eq_classify_add(c, 0, 2, ids, lab, top, 1, &e), EQ_OK);
    /* Across ranks. */
    ck_assert_int_eq(eq_classify_add(c, 1, 1, ids + 1, lab, top, 1, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "sample 6 from rank 1: duplicated"));
    const int64_t bad[2] = { 100, -1 };
    ck_assert_int_eq(eq_classify_add(c, 1, 1, bad, lab, top, 1, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "sample 100 from rank 1: outside [0, 100)"));
    ck_assert_int_eq(eq_classify_add(c, 1, 1, bad + 1, lab, top, 1, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "sample -1"));
    ck_assert_int_eq(eq_classify_add(c, 2, 1, ids, lab, top, 1, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "rank 2 not below world 2"));
    ck_assert_int_eq(eq_classify_final(c, 0, &e), EQ_OK);
    ck_assert_int_eq(eq_classify_final(c, 0, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "final message twice"));
    const int64_t late[1] = { 50 };
    ck_assert_int_eq(eq_classify_add(c, 0, 1, late, lab, top, 1, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "after its final"));
    ck_assert_int_eq(eq_classify_final(c, 1, &e), EQ_OK);
    ck_assert(eq_classify_done(c));
    /* Missing samples: named. */
    eq_classify_result r;
    ck_assert_int_eq(eq_classify_result_get(c, &r, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "98 of 100 samples missing (first: 0, 1, 2, 3, 4, 7, 8, 9, ...)"));
    eq_classify_destroy(&c);
    ck_assert_ptr_null(eq_classify_new(0, 1, &e));
    ck_assert_ptr_null(eq_classify_new(1, 0, &e));
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("classify");
    TCase *tc = tcase_create("classify");
    tcase_add_test(tc, test_topk_counts);
    tcase_add_test(tc, test_narrow_topk);
    tcase_add_test(tc, test_accounting_errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return eq_test_run(s_suite()); }
