/* tests/check_json.c -- core/json: grammar, errors with positions, exact
 * numbers (table made by tests/fixtures/json/gen_numbers.py with Python),
 * unicode, duplicate keys, big documents, files. */
#include "core/file.h"
#include "core/json.h"
#include "tests/testutil.h"

#include <inttypes.h>
#include <math.h>
#include <stdint.h>

static eq_json_doc *parse_ok(const char *text)
{
    eq_err err = { 0 };
    eq_json_doc *d = eq_json_parse(text, strlen(text), NULL, &err);
    ck_assert_msg(d != NULL, "parse of '%s' failed: %s", text, err.msg);
    return d;
}

/* Parse must fail with exactly `msg` and `code`. */
static void parse_bad(const char *text, size_t len, eq_status code, const char *msg)
{
    eq_err err = { 0 };
    eq_json_doc *d = eq_json_parse(text, len, NULL, &err);
    ck_assert_msg(d == NULL, "parse of '%s' should fail", text);
    ck_assert_msg(err.code == code, "'%s': code %s, want %s (%s)", text, eq_status_str(err.code),
                  eq_status_str(code), err.msg);
    ck_assert_msg(strcmp(err.msg, msg) == 0, "'%s':\n got  \"%s\"\n want \"%s\"", text, err.msg, msg);
}
#define BAD(text, msg) parse_bad(text, strlen(text), EQ_ERR_PARSE, msg)

START_TEST(test_values)
{
    eq_json_doc *d = parse_ok(" {\"a\": [1, 2.5, \"x\", true, false, null, {}, []],\n \"b\": {\"c\": -7}} ");
    const eq_json *r = eq_json_root(d);
    ck_assert_int_eq(eq_json_typeof(r), EQ_JSON_OBJECT);
    ck_assert_uint_eq(eq_json_len(r), 2);
    size_t kl;
    ck_assert_str_eq(eq_json_key_at(r, 0, &kl), "a");
    ck_assert_uint_eq(kl, 1);
    ck_assert_str_eq(eq_json_key_at(r, 1, NULL), "b");
    ck_assert_ptr_null(eq_json_key_at(r, 2, NULL));
    const eq_json *a = eq_json_get(r, "a");
    ck_assert_ptr_eq(a, eq_json_at(r, 0));
    ck_assert_int_eq(eq_json_typeof(a), EQ_JSON_ARRAY);
    ck_assert_uint_eq(eq_json_len(a), 8);
    int64_t i = 0;
    ck_assert_int_eq(eq_json_int(eq_json_at(a, 0), &i), 1);
    ck_assert_int_eq(i, 1);
    ck_assert(eq_json_num(eq_json_at(a, 0)) == 1.0);
    ck_assert_int_eq(eq_json_int(eq_json_at(a, 1), &i), 0);
    ck_assert(eq_json_num(eq_json_at(a, 1)) == 2.5);
    size_t sl;
    ck_assert_str_eq(eq_json_str(eq_json_at(a, 2), &sl), "x");
    ck_assert_uint_eq(sl, 1);
    ck_assert_int_eq(eq_json_typeof(eq_json_at(a, 3)), EQ_JSON_TRUE);
    ck_assert_int_eq(eq_json_typeof(eq_json_at(a, 4)), EQ_JSON_FALSE);
    ck_assert_int_eq(eq_json_typeof(eq_json_at(a, 5)), EQ_JSON_NULL);
    ck_assert_int_eq(eq_json_typeof(eq_json_at(a, 6)), EQ_JSON_OBJECT);
    ck_assert_uint_eq(eq_json_len(eq_json_at(a, 6)), 0);
    ck_assert_int_eq(eq_json_typeof(eq_json_at(a, 7)), EQ_JSON_ARRAY);
    ck_assert_uint_eq(eq_json_len(eq_json_at(a, 7)), 0);
    ck_assert_ptr_null(eq_json_at(a, 8));
    ck_assert_ptr_null(eq_json_at(eq_json_at(a, 0), 0));
    ck_assert_ptr_null(eq_json_get(a, "a"));
    ck_assert_ptr_null(eq_json_get(r, "zz"));
    ck_assert_ptr_null(eq_json_str(eq_json_at(a, 0), NULL));
    ck_assert(eq_json_num(eq_json_at(a, 2)) == 0);
    ck_assert_int_eq(eq_json_int(eq_json_get(eq_json_get(r, "b"), "c"), &i), 1);
    ck_assert_int_eq(i, -7);
    /* positions: 1-based line and byte column */
    ck_assert_uint_eq(eq_json_line(r), 1);
    ck_assert_uint_eq(eq_json_col(r), 2);
    ck_assert_uint_eq(eq_json_line(eq_json_at(a, 1)), 1);
    ck_assert_uint_eq(eq_json_col(eq_json_at(a, 1)), 12);
    const eq_json *b = eq_json_get(r, "b");
    ck_assert_uint_eq(eq_json_line(b), 2);
    ck_assert_uint_eq(eq_json_col(b), 7);
    ck_assert_uint_eq(eq_json_col(eq_json_get(b, "c")), 13);
    ck_assert_str_eq(eq_json_type_name(EQ_JSON_NUMBER), "number");
    ck_assert_str_eq(eq_json_type_name(EQ_JSON_OBJECT), "object");
    /* NULL-safe accessors */
    ck_assert_uint_eq(eq_json_len(NULL), 0);
    ck_assert_ptr_null(eq_json_at(NULL, 0));
    ck_assert_ptr_null(eq_json_get(NULL, "a"));
    ck_assert_uint_eq(eq_json_line(NULL), 0);
    eq_json_doc_destroy(&d);
    ck_assert_ptr_null(d);
    eq_json_doc_destroy(&d);
    eq_json_doc_destroy(NULL);

    /* scalars as roots; not NUL-terminated input */
    const char buf[] = { '4', '2', 'x' };
    eq_err err = { 0 };
    d = eq_json_parse(buf, 2, NULL, &err);
    ck_assert_ptr_nonnull(d);
    ck_assert_int_eq(eq_json_int(eq_json_root(d), &i), 1);
    ck_assert_int_eq(i, 42);
    eq_json_doc_destroy(&d);
    d = parse_ok("\"s\"");
    ck_assert_str_eq(eq_json_str(eq_json_root(d), NULL), "s");
    eq_json_doc_destroy(&d);
    d = parse_ok("\r\n\t null \n");
    ck_assert_int_eq(eq_json_typeof(eq_json_root(d)), EQ_JSON_NULL);
    eq_json_doc_destroy(&d);
}
END_TEST

START_TEST(test_errors)
{
    BAD("", "line 1, column 1: expected a value, got end of input");
    BAD("   ", "line 1, column 4: expected a value, got end of input");
    BAD("[1,]", "line 1, column 4: expected a value, got character ']'");
    BAD("{\"a\":1,}", "line 1, column 8: expected a string key, got character '}'");
    BAD("{,}", "line 1, column 2: expected a string key or '}', got character ','");
    BAD("{\"a\" 1}", "line 1, column 6: expected ':' after the key, got character '1'");
    BAD("{\"a\":1 \"b\":2}", "line 1, column 8: expected ',' or '}', got character '\"'");
    BAD("{\n  \"a\": 1,\n  \"b\": 2\n  \"c\": 3}", "line 4, column 3: expected ',' or '}', got character '\"'");
    BAD("[1 2]", "line 1, column 4: expected ',' or ']', got character '2'");
    BAD("[1", "line 1, column 3: expected ',' or ']', got end of input");
    BAD("{\"a\":", "line 1, column 6: expected a value, got end of input");
    BAD("[1] [2]", "line 1, column 5: unexpected character '[' after the JSON value");
    BAD("1 x", "line 1, column 3: unexpected character 'x' after the JSON value");
    BAD("// c\n1", "line 1, column 1: expected a value, got character '/'");
    BAD("[1 /* c */]", "line 1, column 4: expected ',' or ']', got character '/'");
    BAD("NaN", "line 1, column 1: NaN and Infinity are not valid JSON");
    BAD("[Infinity]", "line 1, column 2: NaN and Infinity are not valid JSON");
    BAD("-Infinity", "line 1, column 2: invalid number: expected a digit, got character 'I'");
    BAD("tru", "line 1, column 1: expected a value, got character 't'");
    BAD("nul", "line 1, column 1: expected a value, got character 'n'");
    BAD("True", "line 1, column 1: expected a value, got character 'T'");
    BAD("'a'", "line 1, column 1: expected a value, got character '''");
    BAD("01", "line 1, column 1: invalid number: leading zero");
    BAD("[-01]", "line 1, column 2: invalid number: leading zero");
    BAD("1.", "line 1, column 3: invalid number: expected a digit after '.'");
    BAD(".5", "line 1, column 1: expected a value, got character '.'");
    BAD("1.e5", "line 1, column 3: invalid number: expected a digit after '.'");
    BAD("1e", "line 1, column 3: invalid number: expected a digit in the exponent");
    BAD("1e+", "line 1, column 4: invalid number: expected a digit in the exponent");
    BAD("+1", "line 1, column 1: expected a value, got character '+'");
    BAD("-", "line 1, column 2: invalid number: expected a digit, got end of input");
    BAD("0x10", "line 1, column 2: unexpected character 'x' after the JSON value");
    BAD("\"abc", "line 1, column 1: unterminated string");
    BAD("[\"a\\\"]", "line 1, column 2: unterminated string");
    BAD("\"a\tb\"", "line 1, column 3: control character 0x09 in string (must be escaped)");
    BAD("\"a\nb\"", "line 1, column 3: control character 0x0a in string (must be escaped)");
    BAD("\"\\x\"", "line 1, column 2: invalid escape '\\x' in string");
    BAD("\"\\'\"", "line 1, column 2: invalid escape '\\'' in string");
    BAD("\"\\u12\"", "line 1, column 2: invalid \\u escape: expected 4 hex digits");
    BAD("\"\\u12G4\"", "line 1, column 2: invalid \\u escape: expected 4 hex digits");
    BAD("\"ab\\uDE00\"", "line 1, column 4: invalid \\u escape: unpaired low surrogate \\uDE00");
    BAD("\"\\uD83D\"", "line 1, column 2: invalid \\u escape: high surrogate \\uD83D not followed by a low surrogate");
    BAD("\"\\uD83Dx\\uDE00\"", "line 1, column 2: invalid \\u escape: high surrogate \\uD83D not followed by a low surrogate");
    BAD("\"\\uD83D\\u0041\"", "line 1, column 2: invalid \\u escape: high surrogate \\uD83D not followed by a low surrogate");
    BAD("\"\xC3\"", "line 1, column 2: invalid UTF-8 byte 0xc3 in string");
    BAD("\"\xC0\x80\"", "line 1, column 2: invalid UTF-8 byte 0xc0 in string");       /* overlong */
    BAD("\"\xED\xA0\x80\"", "line 1, column 2: invalid UTF-8 byte 0xed in string");   /* surrogate */
    BAD("\"\xF4\x90\x80\x80\"", "line 1, column 2: invalid UTF-8 byte 0xf4 in string"); /* > U+10FFFF */
    BAD("\"\x80\"", "line 1, column 2: invalid UTF-8 byte 0x80 in string");
    BAD("\xEF\xBB\xBF{}", "line 1, column 1: unexpected UTF-8 byte order mark");
    BAD("[\xC3\xA9]", "line 1, column 2: expected a value, got byte 0xc3");
    BAD("{\"a\":1}}", "line 1, column 8: unexpected character '}' after the JSON value");
    BAD("[1}", "line 1, column 3: expected ',' or ']', got character '}'");
    BAD("{\"a\":1]", "line 1, column 7: expected ',' or '}', got character ']'");
    /* an embedded NUL is not the end of the input */
    parse_bad("[1]\0", 4, EQ_ERR_PARSE, "line 1, column 4: unexpected byte 0x00 after the JSON value");
    parse_bad("\"a\0b\"", 5, EQ_ERR_PARSE, "line 1, column 3: control character 0x00 in string (must be escaped)");
    /* a long line: the column counts bytes */
    char big[200];
    memset(big, ' ', sizeof big);
    big[150] = 'x';
    parse_bad(big, sizeof big, EQ_ERR_PARSE, "line 1, column 151: expected a value, got character 'x'");
}
END_TEST

START_TEST(test_depth_and_limits)
{
    char deep[2000];
    eq_err err = { 0 };
    for (int n = 510; n <= 514; n++) {
        for (int i = 0; i < n; i++) deep[i] = '[', deep[2 * n - 1 - i] = ']';
        eq_json_doc *d = eq_json_parse(deep, 2 * (size_t)n, NULL, &err);
        if (n <= 512)
            ck_assert_msg(d != NULL, "depth %d: %s", n, err.msg);
        else {
            ck_assert_ptr_null(d);
            ck_assert_int_eq(err.code, EQ_ERR_LIMIT);
            ck_assert_str_eq(err.msg, "line 1, column 513: nesting deeper than 512 levels");
        }
        eq_json_doc_destroy(&d);
    }
    eq_json_opts o = { .max_depth = 3 };
    eq_json_doc *d = eq_json_parse("[[{\"a\":1}]]", 11, &o, &err);
    ck_assert_ptr_nonnull(d);
    eq_json_doc_destroy(&d);
    d = eq_json_parse("[[{\"a\":[]}]]", 12, &o, &err);
    ck_assert_ptr_null(d);
    ck_assert_int_eq(err.code, EQ_ERR_LIMIT);
    ck_assert_str_eq(err.msg, "line 1, column 8: nesting deeper than 3 levels");
    eq_json_opts ob = { .max_bytes = 4 };
    d = eq_json_parse("[1,2]", 5, &ob, &err);
    ck_assert_ptr_null(d);
    ck_assert_int_eq(err.code, EQ_ERR_LIMIT);
    d = eq_json_parse("[12]", 4, &ob, &err);
    ck_assert_ptr_nonnull(d);
    eq_json_doc_destroy(&d);
}
END_TEST

static uint64_t bits_of(double x)
{
    uint64_t b;
    memcpy(&b, &x, 8);
    return b;
}

START_TEST(test_numbers_table)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/json/numbers.txt", eq_test_srcdir());
    char *text;
    size_t len;
    eq_err err = { 0 };
    ck_assert_msg(eq_file_read(path, 0, &text, &len, &err) == EQ_OK, "%s", err.msg);
    /* every literal alone, and all of them in one array */
    size_t cap = len + 16, alen = 0, count = 0;
    char *arr = malloc(cap);
    ck_assert_ptr_nonnull(arr);
    arr[alen++] = '[';
    char *line = text;
    uint64_t *want = NULL;
    size_t wcap = 0;
    while (*line) {
        char *nl = strchr(line, '\n');
        ck_assert_ptr_nonnull(nl);
        char *sp = memchr(line, ' ', (size_t)(nl - line));
        ck_assert_ptr_nonnull(sp);
        uint64_t w = strtoull(sp + 1, NULL, 16);
        eq_json_doc *d = eq_json_parse(line, (size_t)(sp - line), NULL, &err);
        ck_assert_msg(d != NULL, "%.*s: %s", (int)(sp - line), line, err.msg);
        double got = eq_json_num(eq_json_root(d));
        ck_assert_msg(bits_of(got) == w, "%.*s: got %016" PRIx64 " (%.17g), want %016" PRIx64, (int)(sp - line), line,
                      bits_of(got), got, w);
        eq_json_doc_destroy(&d);
        if (count) arr[alen++] = ',';
        memcpy(arr + alen, line, (size_t)(sp - line));
        alen += (size_t)(sp - line);
        if (count == wcap) {
            wcap = wcap ? 2 * wcap : 1024;
            want = realloc(want, wcap * sizeof *want);
            ck_assert_ptr_nonnull(want);
        }
        want[count++] = w;
        line = nl + 1;
    }
    arr[alen++] = ']';
    ck_assert_uint_gt(count, 2000);
    eq_json_doc *d = eq_json_parse(arr, alen, NULL, &err);
    ck_assert_msg(d != NULL, "%s", err.msg);
    ck_assert_uint_eq(eq_json_len(eq_json_root(d)), count);
    for (size_t i = 0; i < count; i++) ck_assert(bits_of(eq_json_num(eq_json_at(eq_json_root(d), i))) == want[i]);
    eq_json_doc_destroy(&d);
    free(want);
    free(arr);
    free(text);
}
END_TEST

START_TEST(test_integers)
{
    eq_json_doc *d = parse_ok("[0, -0, 9223372036854775807, -9223372036854775808, 9223372036854775808,"
                              " -9223372036854775809, 1.0, 1e2, 12345678901234567890, 9007199254740993]");
    const eq_json *a = eq_json_root(d);
    int64_t v = 99;
    ck_assert_int_eq(eq_json_int(eq_json_at(a, 0), &v), 1);
    ck_assert_int_eq(v, 0);
    ck_assert_int_eq(eq_json_int(eq_json_at(a, 1), &v), 1);
    ck_assert_int_eq(v, 0);
    ck_assert_int_eq(eq_json_int(eq_json_at(a, 2), &v), 1);
    ck_assert(v == INT64_MAX);
    ck_assert_int_eq(eq_json_int(eq_json_at(a, 3), &v), 1);
    ck_assert(v == INT64_MIN);
    ck_assert_int_eq(eq_json_int(eq_json_at(a, 4), &v), 0);
    ck_assert(eq_json_num(eq_json_at(a, 4)) == 9223372036854775808.0);
    ck_assert_int_eq(eq_json_int(eq_json_at(a, 5), &v), 0);
    ck_assert(eq_json_num(eq_json_at(a, 5)) == -9223372036854775808.0);
    ck_assert_int_eq(eq_json_int(eq_json_at(a, 6), NULL), 0);
    ck_assert_int_eq(eq_json_int(eq_json_at(a, 7), NULL), 0);
    ck_assert(eq_json_num(eq_json_at(a, 7)) == 100.0);
    ck_assert_int_eq(eq_json_int(eq_json_at(a, 8), NULL), 0);
    ck_assert(eq_json_num(eq_json_at(a, 8)) == 12345678901234567890.0);
    ck_assert_int_eq(eq_json_int(eq_json_at(a, 9), &v), 1);
    ck_assert(v == 9007199254740993);
    ck_assert(eq_json_num(eq_json_at(a, 9)) == 9007199254740992.0); /* rounds to even, as float() */
    ck_assert_int_eq(eq_json_int(eq_json_at(a, 10), NULL), 0);       /* out of range */
    eq_json_doc_destroy(&d);
}
END_TEST

START_TEST(test_unicode)
{
    eq_json_doc *d = parse_ok("[\"\\u00e9\\u20AC\\uD83D\\uDE00\", \"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80\","
                              " \"\\\"\\\\\\/\\b\\f\\n\\r\\t\", \"a\\u0000b\", \"\\uDBFF\\uDFFF\", \"\\u0041\\u07FF\\u0800\"]");
    const eq_json *a = eq_json_root(d);
    size_t n;
    ck_assert_str_eq(eq_json_str(eq_json_at(a, 0), &n), "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
    ck_assert_uint_eq(n, 9);
    ck_assert_str_eq(eq_json_str(eq_json_at(a, 1), NULL), "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
    ck_assert_str_eq(eq_json_str(eq_json_at(a, 2), &n), "\"\\/\b\f\n\r\t");
    ck_assert_uint_eq(n, 8);
    const char *s = eq_json_str(eq_json_at(a, 3), &n);
    ck_assert_uint_eq(n, 3);
    ck_assert(memcmp(s, "a\0b", 4) == 0);
    ck_assert_str_eq(eq_json_str(eq_json_at(a, 4), NULL), "\xF4\x8F\xBF\xBF");
    ck_assert_str_eq(eq_json_str(eq_json_at(a, 5), NULL), "A\xDF\xBF\xE0\xA0\x80");
    eq_json_doc_destroy(&d);
    /* long strings cross the 8-byte fast scan in every alignment */
    char buf[100];
    for (int k = 0; k < 40; k++) {
        memset(buf, 'a', sizeof buf);
        buf[0] = '"';
        buf[k + 1] = '"';
        eq_err err = { 0 };
        d = eq_json_parse(buf, (size_t)k + 2, NULL, &err);
        ck_assert_msg(d != NULL, "%s", err.msg);
        ck_assert_uint_eq(strlen(eq_json_str(eq_json_root(d), NULL)), (size_t)k);
        eq_json_doc_destroy(&d);
        buf[k + 1] = '\\';
        buf[k + 2] = 'n';
        buf[k + 3] = '"';
        d = eq_json_parse(buf, (size_t)k + 4, NULL, &err);
        ck_assert_msg(d != NULL, "%s", err.msg);
        ck_assert_uint_eq(strlen(eq_json_str(eq_json_root(d), NULL)), (size_t)k + 1);
        eq_json_doc_destroy(&d);
    }
}
END_TEST

START_TEST(test_duplicate_keys)
{
    eq_json_doc *d = parse_ok("{\"k\": 1, \"x\": true, \"k\": 2, \"\": 3, \"k\\u0000\": 4}");
    const eq_json *r = eq_json_root(d);
    ck_assert_uint_eq(eq_json_len(r), 5);
    int64_t v;
    ck_assert_int_eq(eq_json_int(eq_json_get(r, "k"), &v), 1);
    ck_assert_int_eq(v, 2); /* last wins */
    ck_assert_int_eq(eq_json_int(eq_json_at(r, 0), &v), 1);
    ck_assert_int_eq(v, 1); /* both kept in order */
    ck_assert_str_eq(eq_json_key_at(r, 2, NULL), "k");
    ck_assert_int_eq(eq_json_int(eq_json_get(r, ""), &v), 1);
    ck_assert_int_eq(v, 3);
    size_t kl;
    eq_json_key_at(r, 4, &kl);
    ck_assert_uint_eq(kl, 2); /* "k\0" is not "k" */
    eq_json_doc_destroy(&d);
}
END_TEST

START_TEST(test_large)
{
    /* 300k-element array of small objects: ~22 MB of nodes, so several
     * arena blocks and a dedicated block for the array itself */
    size_t n = 300000;
    size_t cap = n * 40 + 16, len = 0;
    char *t = malloc(cap);
    ck_assert_ptr_nonnull(t);
    t[len++] = '[';
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(t + len, cap - len, "%s{\"i\":%zu,\"f\":%zu.5}", i ? "," : "", i, i);
    t[len++] = ']';
    eq_err err = { 0 };
    eq_json_doc *d = eq_json_parse(t, len, NULL, &err);
    ck_assert_msg(d != NULL, "%s", err.msg);
    const eq_json *a = eq_json_root(d);
    ck_assert_uint_eq(eq_json_len(a), n);
    for (size_t i = 0; i < n; i += 9973) {
        int64_t v;
        ck_assert_int_eq(eq_json_int(eq_json_get(eq_json_at(a, i), "i"), &v), 1);
        ck_assert_int_eq(v, (int64_t)i);
        ck_assert(eq_json_num(eq_json_get(eq_json_at(a, i), "f")) == (double)i + 0.5);
    }
    eq_json_doc_destroy(&d);
    free(t);
    /* a single 3 MB string */
    size_t sl = 3u << 20;
    t = malloc(sl + 2);
    ck_assert_ptr_nonnull(t);
    memset(t, 'z', sl + 2);
    t[0] = t[sl + 1] = '"';
    d = eq_json_parse(t, sl + 2, NULL, &err);
    ck_assert_ptr_nonnull(d);
    size_t got;
    eq_json_str(eq_json_root(d), &got);
    ck_assert_uint_eq(got, sl);
    eq_json_doc_destroy(&d);
    free(t);
}
END_TEST

START_TEST(test_file)
{
    char *dir = eq_test_scratch("json");
    char path[4200];
    eq_err err = { 0 };
    snprintf(path, sizeof path, "%s/missing.json", dir);
    ck_assert_ptr_null(eq_json_parse_file(path, NULL, &err));
    ck_assert_int_eq(err.code, EQ_ERR_NOTFOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, "missing.json: open: No such file or directory"));
    snprintf(path, sizeof path, "%s/a.json", dir);
    const char *text = "{\"a\": [1,\n 2,, 3]}";
    ck_assert_int_eq(eq_file_write_atomic(path, text, strlen(text), &err), EQ_OK);
    ck_assert_ptr_null(eq_json_parse_file(path, NULL, &err));
    ck_assert_int_eq(err.code, EQ_ERR_PARSE);
    char want[4400];
    snprintf(want, sizeof want, "%s: line 2, column 4: expected a value, got character ','", path);
    ck_assert_str_eq(err.msg, want);
    text = "{\"a\": [1, 2, 3]}\n";
    ck_assert_int_eq(eq_file_write_atomic(path, text, strlen(text), &err), EQ_OK);
    eq_json_doc *d = eq_json_parse_file(path, NULL, &err);
    ck_assert_msg(d != NULL, "%s", err.msg);
    ck_assert_uint_eq(eq_json_len(eq_json_get(eq_json_root(d), "a")), 3);
    eq_json_doc_destroy(&d);
    eq_json_opts o = { .max_bytes = 10 };
    ck_assert_ptr_null(eq_json_parse_file(path, &o, &err));
    ck_assert_int_eq(err.code, EQ_ERR_LIMIT);
    ck_assert_ptr_nonnull(strstr(err.msg, "a.json: file is 17 bytes, over the limit of 10 bytes"));
    eq_test_scratch_rm(dir);
}
END_TEST

START_TEST(test_file_helpers)
{
    char *dir = eq_test_scratch("file");
    char path[4200];
    eq_err err = { 0 };
    snprintf(path, sizeof path, "%s/x.bin", dir);
    /* streaming write, then overwrite atomically; no temporary left */
    eq_file_atomic *a = eq_file_atomic_open(path, &err);
    ck_assert_ptr_nonnull(a);
    ck_assert_int_eq(eq_file_atomic_write(a, "abc", 3, &err), EQ_OK);
    ck_assert_int_eq(eq_file_atomic_write(a, "de", 2, &err), EQ_OK);
    ck_assert_int_eq(access(path, F_OK), -1); /* not visible before commit */
    ck_assert_int_eq(eq_file_atomic_commit(&a, &err), EQ_OK);
    ck_assert_ptr_null(a);
    char *data;
    size_t len;
    ck_assert_int_eq(eq_file_read(path, 0, &data, &len, &err), EQ_OK);
    ck_assert_uint_eq(len, 5);
    ck_assert_str_eq(data, "abcde");
    for (int i = 0; i < EQ_FILE_PAD; i++) ck_assert_int_eq(data[len + i], 0);
    free(data);
    ck_assert_int_eq(eq_file_read(path, 4, &data, &len, &err), EQ_ERR_LIMIT);
    ck_assert_ptr_null(data);
    ck_assert_int_eq(eq_file_read(path, 5, &data, &len, &err), EQ_OK);
    free(data);
    /* an aborted write leaves the old contents */
    a = eq_file_atomic_open(path, &err);
    ck_assert_ptr_nonnull(a);
    ck_assert_int_eq(eq_file_atomic_write(a, "zz", 2, &err), EQ_OK);
    eq_file_atomic_abort(&a);
    ck_assert_ptr_null(a);
    eq_file_atomic_abort(&a);
    ck_assert_int_eq(eq_file_read(path, 0, &data, &len, &err), EQ_OK);
    ck_assert_str_eq(data, "abcde");
    free(data);
    /* empty file */
    ck_assert_int_eq(eq_file_write_atomic(path, "", 0, &err), EQ_OK);
    ck_assert_int_eq(eq_file_read(path, 0, &data, &len, &err), EQ_OK);
    ck_assert_uint_eq(len, 0);
    free(data);
    /* the directory holds only x.bin */
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "test \"$(ls -A '%s')\" = x.bin", dir);
    ck_assert_int_eq(system(cmd), 0);
    /* errors name the path */
    snprintf(path, sizeof path, "%s/nodir/x.bin", dir);
    ck_assert_int_eq(eq_file_write_atomic(path, "a", 1, &err), EQ_ERR_NOTFOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, "nodir/x.bin.tmp-"));
    ck_assert_ptr_nonnull(strstr(err.msg, "No such file or directory"));
    ck_assert_int_eq(eq_file_read(dir, 0, &data, &len, &err), EQ_ERR_IO);
    ck_assert_ptr_nonnull(strstr(err.msg, "is a directory"));
    /* a relative path in the current directory */
    char cwd[4096];
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    ck_assert_int_eq(chdir(dir), 0);
    ck_assert_int_eq(eq_file_write_atomic("rel.txt", "r", 1, &err), EQ_OK);
    ck_assert_int_eq(chdir(cwd), 0);
    eq_test_scratch_rm(dir);
}
END_TEST

static Suite *json_suite(void)
{
    Suite *s = suite_create("json");
    TCase *tc = tcase_create("json");
    tcase_add_test(tc, test_values);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_depth_and_limits);
    tcase_add_test(tc, test_numbers_table);
    tcase_add_test(tc, test_integers);
    tcase_add_test(tc, test_unicode);
    tcase_add_test(tc, test_duplicate_keys);
    tcase_add_test(tc, test_large);
    tcase_add_test(tc, test_file);
    tcase_add_test(tc, test_file_helpers);
    tcase_set_timeout(tc, 20); /* the big-document cases on a loaded 2-core box */
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return eq_test_run(json_suite()); }
