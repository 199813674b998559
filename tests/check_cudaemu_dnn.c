/* placeholder, replaced below */
#include "tests/cudaemu/cudnn.h"
#include "tests/cudaemu/cublas_v2.h"
#include "tests/testutil.h"
START_TEST(test_version)
{
    ck_assert_int_eq((int)cudnnGetVersion(), 91900);
}
END_TEST
int main(void)
{
    Suite *s = suite_create("cudaemu_dnn");
    TCase *tc = tcase_create("api");
    tcase_add_test(tc, test_version);
    suite_add_tcase(s, tc);
    return eq_test_run(s);
}
