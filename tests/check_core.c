/* tests/check_core.c -- status codes, error records and logging. */
#include "core/log.h"
#include "core/status.h"
#include "tests/testutil.h"

START_TEST(test_status_names)
{
    ck_assert_str_eq(eq_status_str(EQ_OK), "ok");
    ck_assert_str_eq(eq_status_str(EQ_ERR_IO), "io");
    ck_assert_str_eq(eq_status_str(EQ_ERR_INTERNAL), "internal");
    ck_assert_str_eq(eq_status_str((eq_status)999), "unknown");
    for (int i = 0; i < EQ_STATUS_COUNT; i++) ck_assert_ptr_nonnull(eq_status_str((eq_status)i));
}
END_TEST

START_TEST(test_err_set_prefix)
{
    eq_err e;
    eq_err_clear(&e);
    ck_assert_int_eq(e.code, EQ_OK);
    ck_assert_int_eq(eq_err_set(&e, EQ_ERR_PARSE, "line %d: bad", 7), EQ_ERR_PARSE);
    ck_assert_str_eq(e.msg, "line 7: bad");
    ck_assert_int_eq(eq_err_prefix(&e, "%s:", "a.cfg"), EQ_ERR_PARSE);
    ck_assert_str_eq(e.msg, "a.cfg:line 7: bad");
    ck_assert_int_eq(eq_err_set(NULL, EQ_ERR_IO, "dropped"), EQ_ERR_IO);
    ck_assert_int_eq(eq_err_prefix(NULL, "x"), EQ_OK);
}
END_TEST

START_TEST(test_checked_alloc)
{
    ck_assert_ptr_null(eq_malloc_array((size_t)-1 / 2, 4));
    ck_assert_ptr_null(eq_calloc_array((size_t)-1 / 2, 4));
    void *p = eq_calloc_array(0, 8);
    ck_assert_ptr_nonnull(p);
    free(p);
}
END_TEST

static char s_last[4096];
static void s_sink(eq_log_level level, const char *line, void *user)
{
    (void)level;
    int *count = user;
    (*count)++;
    snprintf(s_last, sizeof s_last, "%s", line);
}

START_TEST(test_log_text_and_json)
{
    int count = 0;
    eq_log_set_sink(s_sink, &count);
    eq_log_set_level(EQ_LOG_INFO);
    eq_log_set_role("loader", 3);
    eq_debug("hidden");
    ck_assert_int_eq(count, 0);
    eq_info("hello %d", 42);
    ck_assert_int_eq(count, 1);
    ck_assert_ptr_nonnull(strstr(s_last, "INFO  loader[3] hello 42"));
    ck_assert(s_last[4] == '-' && s_last[10] == 'T');

    eq_log_set_json(1);
    eq_warn("quote \" and\nnewline");
    ck_assert_int_eq(count, 2);
    ck_assert_ptr_nonnull(strstr(s_last, "\"level\":\"warn\",\"role\":\"loader\",\"rank\":3"));
    ck_assert_ptr_nonnull(strstr(s_last, "\"msg\":\"quote \\\" and\\nnewline\"}"));
    eq_log_set_json(0);
    eq_log_set_sink(NULL, NULL);

    eq_log_level lv;
    ck_assert_int_eq(eq_log_level_parse("warn", &lv), 0);
    ck_assert_int_eq(lv, EQ_LOG_WARN);
    ck_assert_int_eq(eq_log_level_parse("loud", &lv), -1);
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("core");
    TCase *tc = tcase_create("status");
    tcase_add_test(tc, test_status_names);
    tcase_add_test(tc, test_err_set_prefix);
    tcase_add_test(tc, test_checked_alloc);
    suite_add_tcase(s, tc);
    tc = tcase_create("log");
    tcase_add_test(tc, test_log_text_and_json);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return eq_test_run(s_suite()); }
