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
 *
 * Also here, because it needs no GPU: the element functions of mixed
 * precision that the CUDA kernels run (trainer/prec.h, plain C on the
 * host) against eq_precision_round (bitwise torch's casts), and their
 * 16-bit patterns against the compiler's _Float16 where it has one.
 */
#include "config.h"

#include "trainer/backend.h"
#include "trainer/backend_select.h"
#include "trainer/prec.h"
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

/* ---- mixed precision: prec.h's device code, run on the host ---- */

static uint32_t s_u32(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float s_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* One value in both precisions: eq_pr_round == eq_precision_round bitwise,
 * the 16-bit pattern decodes to it, and (fp16) the pattern is the
 * compiler's _Float16 conversion (round to nearest even; NaN: any NaN).
 * Millions of calls: plain ifs, since every passing ck_assert_msg marks its
 * point through a pipe to the parent. */
static void s_prec_one(uint32_t u)
{
    float x = s_f32(u);
    for (int p = EQ_PR_BF16; p <= EQ_PR_FP16; p++) {
        uint32_t ref = s_u32(eq_precision_round((eq_precision)p, x));
        uint32_t got = s_u32(eq_pr_round(p, x));
        if (got != ref)
            ck_abort_msg("prec %d: round(0x%08x) = 0x%08x, eq_precision_round 0x%08x", p, u, got,
                         ref);
        uint16_t h = eq_pr_bits16(p, x);
        uint32_t back = s_u32(eq_pr_from16(p, h));
        if (back != ref)
            ck_abort_msg("prec %d: 0x%08x -> bits 0x%04x -> 0x%08x, want 0x%08x", p, u, h, back,
                         ref);
    }
#ifdef __FLT16_MAX__
    _Float16 c = (_Float16)x;
    uint16_t hc;
    memcpy(&hc, &c, sizeof hc);
    uint16_t h = eq_pr_bits16(EQ_PR_FP16, x);
    if (isnan(x) ? !((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) && (hc & 0x3ffu)) : h != hc)
        ck_abort_msg("fp16 bits of 0x%08x (%.9g): 0x%04x, _Float16 0x%04x", u, (double)x, h, hc);
#endif
}

START_TEST(test_prec_elements)
{
    /* edges: zeros, fp16 subnormal ties (2^-25, 3*2^-25), the normal
     * boundary 2^-14, 65504 / 65519.99 / 65520, bf16's overflow into inf,
     * ties to even in both types, inf, quiet/signalling/negative NaNs */
    static const uint32_t edge[] = {
        0x00000000u, 0x80000000u, 0x00000001u, 0x807fffffu, 0x33000000u, 0x33000001u,
        0x32ffffffu, 0x33c00000u, 0xb3c00000u, 0x387fe000u, 0x387ff000u, 0x387fffffu,
        0x38800000u, 0x477fe000u, 0x477fefffu, 0x477ff000u, 0xc77ff000u, 0x47800000u,
        0x7f7fffffu, 0x7f7f8000u, 0x7f7f7fffu, 0xff7fffffu, 0x3f808000u, 0x3f818000u,
        0x3f800fffu, 0x3f801000u, 0x3f803000u, 0x3f801001u, 0x7f800000u, 0xff800000u,
        0x7fc00000u, 0x7f800001u, 0xffc00001u, 0x7fbfffffu, 0x7f802000u, 0x7fffe000u,
        0x3f800000u, 0x3eaaaaabu, 0x00800000u, 0x0000ffffu,
    };
    for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++)
        for (int32_t d = -3; d <= 3; d++) s_prec_one(edge[i] + (uint32_t)d);
    /* every 16-bit pattern back and forth: the decoded value encodes to
     * the same pattern (NaNs: to a NaN; signalling ones become quiet) */
    for (int p = EQ_PR_BF16; p <= EQ_PR_FP16; p++)
        for (uint32_t h = 0; h < 65536; h++) {
            float f = eq_pr_from16(p, (uint16_t)h);
            s_prec_one(s_u32(f));
            if (!isnan(f) && eq_pr_bits16(p, f) != h)
                ck_abort_msg("prec %d: pattern 0x%04x round trip", p, h);
        }
    /* 2M random bit patterns, half of them at or next to a rounding tie */
    uint64_t st = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = (uint32_t)eq_test_next(&st);
        if (i & 1) { /* exponent within or near fp16's range, low bits at a tie */
            static const uint32_t tie[] = {0x7fffu, 0x8000u, 0x8001u, 0xfffu, 0x1000u, 0x1001u};
            uint32_t t = tie[eq_test_next(&st) % 6];
            u = (u & 0x807fffffu) | (uint32_t)(100 + eq_test_next(&st) % 46) << 23;
            u = (u & (t >= 0x7fffu ? 0xffff0000u : 0xffffe000u)) | t;
        }
        s_prec_one(u);
    }
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
    TCase *tp = tcase_create("precision");
    tcase_set_timeout(tp, 30);
    tcase_add_test(tp, test_prec_elements);
    suite_add_tcase(s, tp);
    /* loading the module maps ~1 GB of CUDA libraries: well under a second
     * when they are in the page cache, but 5-10 s on a loaded machine after
     * they left it (measured here at load 11) */
    TCase *tl = tcase_create("load");
    tcase_set_timeout(tl, 60);
    tcase_add_test(tl, test_cuda);
    suite_add_tcase(s, tl);
    return eq_test_run(s);
}
