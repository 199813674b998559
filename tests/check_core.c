/* tests/check_core.c -- status codes, error records and logging. */
#include "core/clock.h"
#include "core/log.h"
#include "core/pool.h"
#include "core/rng.h"
#include "core/status.h"
#include "core/tensor.h"
#include "tests/testutil.h"

#include <math.h>
#include <stdatomic.h>

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


/* Known-answer vectors of the Random123 distribution (kat_vectors):
 * philox4x32 10 <ctr[4]> <key[2]> -> <out[4]>. */
START_TEST(test_philox_kat)
{
    static const uint32_t kat[3][10] = {
        { 0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8 },
        { 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d,
          0x41c83b0e, 0xa20bc7c6, 0x6d5451fd },
        { 0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09,
          0x94fdcceb, 0x5001e420, 0x24126ea1 },
    };
    for (int k = 0; k < 3; k++) {
        uint32_t out[4];
        eq_philox4x32_10(&kat[k][4], &kat[k][0], out);
        for (int j = 0; j < 4; j++) ck_assert_uint_eq(out[j], kat[k][6 + j]);
    }
}
END_TEST

START_TEST(test_rng_reproducible_and_seekable)
{
    eq_rng a, b;
    eq_rng_init(&a, 42, 7);
    eq_rng_init(&b, 42, 7);
    uint32_t first[64];
    for (int i = 0; i < 64; i++) {
        first[i] = eq_rng_u32(&a);
        ck_assert_uint_eq(first[i], eq_rng_u32(&b));
    }
    /* Any word is reachable directly: no replay of earlier draws. */
    for (int w = 0; w < 64; w += 5) {
        eq_rng c;
        eq_rng_init(&c, 42, 7);
        eq_rng_seek(&c, (uint64_t)w);
        ck_assert_uint_eq(eq_rng_u32(&c), first[w]);
    }
    /* The block function is the same sequence. */
    uint32_t blk[4];
    eq_rng_block(42, 7, 3, blk);
    ck_assert_uint_eq(blk[0], first[12]);
    ck_assert_uint_eq(blk[3], first[15]);
}
END_TEST

START_TEST(test_rng_streams_independent)
{
    /* Neighbouring streams and seeds must not produce related sequences:
     * count equal words at equal positions and check a correlation bound. */
    enum { N = 4096 };
    static double xa[N], xb[N];
    eq_rng a, b, c;
    eq_rng_init(&a, 1, 100);
    eq_rng_init(&b, 1, 101);
    eq_rng_init(&c, 2, 100);
    int same = 0;
    for (int i = 0; i < N; i++) {
        uint32_t ua = eq_rng_u32(&a), ub = eq_rng_u32(&b), uc = eq_rng_u32(&c);
        same += (ua == ub) + (ua == uc);
        xa[i] = ua / 4294967296.0 - 0.5;
        xb[i] = ub / 4294967296.0 - 0.5;
    }
    ck_assert_int_eq(same, 0);
    double sab = 0, saa = 0, sbb = 0;
    for (int i = 0; i < N; i++) {
        sab += xa[i] * xb[i];
        saa += xa[i] * xa[i];
        sbb += xb[i] * xb[i];
    }
    double corr = sab / sqrt(saa * sbb);
    ck_assert_msg(fabs(corr) < 5.0 / sqrt(N), "correlation %g between adjacent streams", corr);
    ck_assert(eq_rng_mix(1, 2) != eq_rng_mix(2, 1));
    ck_assert(eq_rng_mix(0, 0) != eq_rng_mix(0, 1));
}
END_TEST

START_TEST(test_rng_distributions)
{
    eq_rng r;
    eq_rng_init(&r, 123, 0);
    enum { N = 20000 };
    int hist[10] = { 0 };
    double sum = 0, sumsq = 0, bsum = 0;
    for (int i = 0; i < N; i++) {
        float u = eq_rng_uniform(&r);
        ck_assert(u >= 0.0f && u < 1.0f);
        uint32_t k = eq_rng_below(&r, 10);
        ck_assert_uint_lt(k, 10);
        hist[k]++;
        double z = eq_rng_normal(&r);
        sum += z;
        sumsq += z * z;
        double bt = eq_rng_beta(&r, 0.2, 0.2);
        ck_assert(bt >= 0.0 && bt <= 1.0);
        bsum += bt;
    }
    for (int k = 0; k < 10; k++) ck_assert_msg(abs(hist[k] - N / 10) < 300, "bucket %d: %d", k, hist[k]);
    ck_assert_msg(fabs(sum / N) < 0.03, "normal mean %g", sum / N);
    ck_assert_msg(fabs(sumsq / N - 1.0) < 0.05, "normal variance %g", sumsq / N);
    ck_assert_msg(fabs(bsum / N - 0.5) < 0.02, "beta mean %g", bsum / N);
    double gsum = 0;
    for (int i = 0; i < N; i++) gsum += eq_rng_gamma(&r, 3.0);
    ck_assert_msg(fabs(gsum / N - 3.0) < 0.06, "gamma mean %g", gsum / N);
}
END_TEST

START_TEST(test_rng_permute)
{
    enum { N = 1000 };
    uint32_t idx[N], seen[N] = { 0 };
    for (uint32_t i = 0; i < N; i++) idx[i] = i;
    eq_rng r;
    eq_rng_init(&r, 9, eq_rng_mix(1, 2));
    eq_rng_permute(&r, idx, N);
    int fixed = 0;
    for (uint32_t i = 0; i < N; i++) {
        ck_assert_uint_lt(idx[i], N);
        seen[idx[i]]++;
        fixed += idx[i] == i;
    }
    for (uint32_t i = 0; i < N; i++) ck_assert_uint_eq(seen[i], 1);
    ck_assert_int_lt(fixed, 10);
}
END_TEST

typedef struct {
    atomic_int hits[1000];
    double out[1000];
} s_pool_ctx;

static void s_pool_work(void *ctx_, size_t i, int worker)
{
    s_pool_ctx *ctx = ctx_;
    ck_assert_int_ge(worker, 0);
    ck_assert_int_lt(worker, 3);
    atomic_fetch_add(&ctx->hits[i], 1);
    ctx->out[i] = sqrt((double)i);
}

static void s_nested(void *ctx_, size_t i, int worker)
{
    (void)worker;
    eq_pool *pool = ctx_;
    /* A nested call on the same pool runs inline instead of deadlocking. */
    s_pool_ctx *inner = calloc(1, sizeof *inner);
    eq_pool_for(pool, 10, s_pool_work, inner);
    for (int k = 0; k < 10; k++) ck_assert_int_eq(atomic_load(&inner->hits[k]), 1);
    free(inner);
    (void)i;
}

START_TEST(test_pool_for)
{
    eq_err err;
    eq_pool *pool = eq_pool_new(3, &err);
    ck_assert_ptr_nonnull(pool);
    ck_assert_int_eq(eq_pool_size(pool), 3);
    for (int round = 0; round < 50; round++) {
        s_pool_ctx *ctx = calloc(1, sizeof *ctx);
        eq_pool_for(pool, 1000, s_pool_work, ctx);
        for (int i = 0; i < 1000; i++) {
            ck_assert_int_eq(atomic_load(&ctx->hits[i]), 1);
            ck_assert(ctx->out[i] == sqrt((double)i));
        }
        free(ctx);
    }
    eq_pool_for(pool, 8, s_nested, pool);
    eq_pool_for(pool, 0, s_pool_work, NULL);
    eq_pool_destroy(&pool);
    ck_assert_ptr_null(pool);
    eq_pool_destroy(&pool);
    /* NULL pool: serial on the caller. */
    s_pool_ctx *ctx = calloc(1, sizeof *ctx);
    eq_pool_for(NULL, 5, s_pool_work, ctx);
    ck_assert_int_eq(atomic_load(&ctx->hits[4]), 1);
    free(ctx);
}
END_TEST

START_TEST(test_tensor_desc)
{
    eq_tensor_desc d;
    eq_err err;
    int64_t shape[4] = { 2, 3, 4, 5 };
    ck_assert_int_eq(eq_tensor_desc_init(&d, EQ_DT_F32, EQ_LAYOUT_NHWC, 4, shape, &err), EQ_OK);
    ck_assert_int_eq(eq_tensor_numel(&d), 120);
    ck_assert_int_eq(eq_tensor_nbytes(&d), 480);
    ck_assert_int_eq(d.stride[0], 60);
    ck_assert_int_eq(d.stride[3], 1);
    ck_assert(eq_tensor_is_contiguous(&d));
    int64_t bad[2] = { -1, 3 };
    ck_assert_int_eq(eq_tensor_desc_init(&d, EQ_DT_F32, EQ_LAYOUT_ANY, 2, bad, &err), EQ_ERR_INVALID);
    int64_t huge[3] = { INT64_MAX / 2, 4, 4 };
    ck_assert_int_eq(eq_tensor_desc_init(&d, EQ_DT_F32, EQ_LAYOUT_ANY, 3, huge, &err), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_tensor_desc_init(&d, EQ_DT_F32, EQ_LAYOUT_ANY, 9, shape, &err), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_shape_numel(2, huge, INT64_MAX), -1);

    eq_dtype dt;
    ck_assert_int_eq(eq_dtype_parse("BF16", 4, &dt), 0);
    ck_assert_int_eq(dt, EQ_DT_BF16);
    ck_assert_int_eq(eq_dtype_parse("bf16", 4, &dt), -1);
    ck_assert_int_eq(eq_dtype_parse("F3", 2, &dt), -1);
    for (int i = 0; i < EQ_DT_COUNT; i++) {
        const char *nm = eq_dtype_name((eq_dtype)i);
        ck_assert_int_eq(eq_dtype_parse(nm, strlen(nm), &dt), 0);
        ck_assert_int_eq(dt, i);
        ck_assert_uint_gt(eq_dtype_size(dt), 0);
    }
}
END_TEST

START_TEST(test_group_desc_layouts)
{
    /* Per-channel groups of the same logical tensor in NHWC and NCHW must
     * assign every logical element (n, c, h, w) to group c. */
    eq_err err;
    eq_tensor_desc nhwc, nchw, oihw;
    int64_t s1[4] = { 2, 3, 4, 6 }, s2[4] = { 2, 6, 3, 4 }, s3[4] = { 6, 5, 3, 3 };
    eq_tensor_desc_init(&nhwc, EQ_DT_F32, EQ_LAYOUT_NHWC, 4, s1, &err);
    eq_tensor_desc_init(&nchw, EQ_DT_F32, EQ_LAYOUT_NCHW, 4, s2, &err);
    eq_tensor_desc_init(&oihw, EQ_DT_F32, EQ_LAYOUT_OIHW, 4, s3, &err);
    eq_group_desc g1, g2, g3, g4;
    ck_assert_int_eq(eq_group_along(&nhwc, eq_layout_channel_axis(EQ_LAYOUT_NHWC), 6, &g1, &err), EQ_OK);
    ck_assert_int_eq(eq_group_along(&nchw, eq_layout_channel_axis(EQ_LAYOUT_NCHW), 6, &g2, &err), EQ_OK);
    ck_assert_int_eq(eq_group_count(&g1), 6);
    for (int n = 0; n < 2; n++)
        for (int c = 0; c < 6; c++)
            for (int h = 0; h < 3; h++)
                for (int w = 0; w < 4; w++) {
                    int64_t i1 = ((n * 3 + h) * 4 + w) * 6 + c;
                    int64_t i2 = ((n * 6 + c) * 3 + h) * 4 + w;
                    ck_assert_int_eq(eq_group_of(&g1, i1), c);
                    ck_assert_int_eq(eq_group_of(&g2, i2), c);
                }
    /* Two groups of three output channels in OIHW. */
    ck_assert_int_eq(eq_group_along(&oihw, 0, 2, &g3, &err), EQ_OK);
    ck_assert_int_eq(eq_group_count(&g3), 2);
    ck_assert_int_eq(eq_group_of(&g3, 2 * 45 + 44), 0);
    ck_assert_int_eq(eq_group_of(&g3, 3 * 45), 1);
    ck_assert_int_eq(eq_group_along(&oihw, 0, 4, &g4, &err), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_group_along(&oihw, 4, 1, &g4, &err), EQ_ERR_INVALID);
    eq_group_desc all = eq_group_per_tensor();
    ck_assert_int_eq(eq_group_count(&all), 1);
    ck_assert_int_eq(eq_group_of(&all, 12345), 0);
}
END_TEST

START_TEST(test_clock)
{
    uint64_t a = eq_clock_ns();
    eq_sleep_ms(20);
    uint64_t b = eq_clock_ns();
    ck_assert_uint_ge(b - a, 19000000ull);
    ck_assert_uint_gt(eq_wall_ms(), 1600000000000ull);

    char buf[32];
    eq_clock_fmt_eta(247.4, buf, sizeof buf);
    ck_assert_str_eq(buf, "4m07s");
    eq_clock_fmt_eta(7980.0, buf, sizeof buf);
    ck_assert_str_eq(buf, "2h13m");
    eq_clock_fmt_eta(-1.0, buf, sizeof buf);
    ck_assert_str_eq(buf, "?");
    eq_clock_fmt_eta(NAN, buf, sizeof buf);
    ck_assert_str_eq(buf, "?");
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
    tc = tcase_create("rng");
    tcase_add_test(tc, test_philox_kat);
    tcase_add_test(tc, test_rng_reproducible_and_seekable);
    tcase_add_test(tc, test_rng_streams_independent);
    tcase_add_test(tc, test_rng_distributions);
    tcase_add_test(tc, test_rng_permute);
    suite_add_tcase(s, tc);
    tc = tcase_create("pool");
    tcase_add_test(tc, test_pool_for);
    suite_add_tcase(s, tc);
    tc = tcase_create("tensor");
    tcase_add_test(tc, test_tensor_desc);
    tcase_add_test(tc, test_group_desc_layouts);
    tcase_add_test(tc, test_clock);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return eq_test_run(s_suite()); }
