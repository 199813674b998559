/* tests/check_safetensors.c -- core/safetensors: the reference fixture
 * (tests/fixtures/safetensors/make_fixtures.py: bytes as the Rust
 * reference writes them, values from PyTorch), byte-identical writing,
 * one test per class of corrupt file, the mapped and the read opening, and
 * the vectorised NaN/inf locator. */
#include "core/file.h"
#include "core/safetensors.h"
#include "tests/testutil.h"

#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>

static char *fixture(const char *name)
{
    char *p = malloc(4096);
    ck_assert_ptr_nonnull(p);
    snprintf(p, 4096, "%s/tests/fixtures/safetensors/%s", eq_test_srcdir(), name);
    return p;
}

static float half_to_float(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    float v;
    if (e == 0)
        v = ldexpf((float)m, -24);
    else if (e == 31)
        v = m ? NAN : INFINITY;
    else
        v = ldexpf((float)(m | 1024), e - 25);
    return s ? -v : v;
}

/* Element i of a tensor as double (ints exactly as long as they fit). */
static double elem(const void *data, eq_dtype dt, size_t i, int64_t *ival)
{
    const unsigned char *p = data;
    *ival = 0;
    switch (dt) {
    case EQ_DT_F32: {
        float f;
        memcpy(&f, p + 4 * i, 4);
        return f;
    }
    case EQ_DT_F64: {
        double d;
        memcpy(&d, p + 8 * i, 8);
        return d;
    }
    case EQ_DT_F16: {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        return half_to_float(h);
    }
    case EQ_DT_BF16: {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        uint32_t u = (uint32_t)h << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    case EQ_DT_I64: memcpy(ival, p + 8 * i, 8); return 0;
    case EQ_DT_I32: {
        int32_t v;
        memcpy(&v, p + 4 * i, 4);
        *ival = v;
        return 0;
    }
    case EQ_DT_I16: {
        int16_t v;
        memcpy(&v, p + 2 * i, 2);
        *ival = v;
        return 0;
    }
    case EQ_DT_I8: *ival = (int8_t)p[i]; return 0;
    case EQ_DT_U8:
    case EQ_DT_BOOL: *ival = p[i]; return 0;
    default: ck_abort_msg("dtype %d", (int)dt);
    }
    return 0;
}

static int is_float(eq_dtype dt) { return dt == EQ_DT_F32 || dt == EQ_DT_F64 || dt == EQ_DT_F16 || dt == EQ_DT_BF16; }

/* Check every tensor of f against ref.values (also their order). */
static void check_against_values(const eq_st_file *f)
{
    char *vpath = fixture("ref.values");
    char *text;
    size_t len;
    eq_err err = { 0 };
    ck_assert_msg(eq_file_read(vpath, 0, &text, &len, &err) == EQ_OK, "%s", err.msg);
    size_t idx = 0, checked = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save), idx++) {
        char *sp2 = NULL;
        char *name = strtok_r(line, " ", &sp2);
        char *dtname = strtok_r(NULL, " ", &sp2);
        int ndim = atoi(strtok_r(NULL, " ", &sp2));
        ck_assert_str_eq(eq_st_name(f, idx), name); /* file order = reference order */
        long i = eq_st_find(f, name);
        ck_assert_int_eq(i, (long)idx);
        const eq_tensor_desc *d = eq_st_desc(f, (size_t)i);
        ck_assert_str_eq(eq_dtype_name(d->dtype), dtname);
        ck_assert_int_eq(d->ndim, ndim);
        for (int k = 0; k < ndim; k++) ck_assert_int_eq(d->shape[k], atoll(strtok_r(NULL, " ", &sp2)));
        ck_assert_str_eq(strtok_r(NULL, " ", &sp2), ":");
        size_t nbytes;
        const void *data = eq_st_data(f, (size_t)i, &nbytes);
        ck_assert_uint_eq(nbytes, (size_t)eq_tensor_nbytes(d));
        int64_t numel = eq_tensor_numel(d);
        for (int64_t e = 0; e < numel; e++) {
            char *tok = strtok_r(NULL, " ", &sp2);
            ck_assert_ptr_nonnull(tok);
            int64_t iv;
            double v = elem(data, d->dtype, (size_t)e, &iv);
            if (is_float(d->dtype)) {
                double want = strtod(tok, NULL);
                ck_assert_msg(v == want && signbit(v) == signbit(want), "%s[%" PRId64 "]: %.17g != %s", name, e, v,
                              tok);
            } else {
                ck_assert_msg(iv == strtoll(tok, NULL, 10), "%s[%" PRId64 "]: %" PRId64 " != %s", name, e, iv, tok);
            }
            checked++;
        }
        ck_assert_ptr_null(strtok_r(NULL, " ", &sp2));
    }
    ck_assert_uint_eq(idx, eq_st_count(f));
    ck_assert_uint_eq(idx, 14);
    ck_assert_uint_gt(checked, 150);
    free(text);
    free(vpath);
}

START_TEST(test_read_reference)
{
    char *path = fixture("ref.safetensors");
    eq_err err = { 0 };
    eq_st_file *f = eq_st_open(path, NULL, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    check_against_values(f);
    ck_assert_uint_eq(eq_st_meta_count(f), 2);
    ck_assert_str_eq(eq_st_meta_key(f, 0), "format");
    ck_assert_str_eq(eq_st_meta_value(f, 0), "pt");
    ck_assert_str_eq(eq_st_meta_get(f, "note"), "caf\xC3\xA9 \"quoted\"\n");
    ck_assert_ptr_null(eq_st_meta_get(f, "nope"));
    ck_assert_ptr_null(eq_st_meta_key(f, 2));
    ck_assert_int_eq(eq_st_find(f, "nope"), -1);
    ck_assert_ptr_null(eq_st_name(f, 14));
    ck_assert_ptr_null(eq_st_desc(f, 14));
    ck_assert_ptr_null(eq_st_data(f, 14, NULL));
    /* eq_st_get_f32 */
    const float *w = eq_st_get_f32(f, "conv1.weight", 4 * 3 * 3 * 3, &err);
    ck_assert_msg(w != NULL, "%s", err.msg);
    ck_assert_uint_eq((uintptr_t)w % 4, 0);
    const float *s = eq_st_get_f32(f, "scalar", 1, &err);
    ck_assert_ptr_nonnull(s);
    ck_assert(*s == 3.25f);
    ck_assert_ptr_null(eq_st_get_f32(f, "conv1.weight", 100, &err));
    ck_assert_int_eq(err.code, EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "tensor 'conv1.weight' has shape [4, 3, 3, 3] (108 elements), expected 100"));
    ck_assert_ptr_nonnull(strstr(err.msg, "ref.safetensors: "));
    ck_assert_ptr_null(eq_st_get_f32(f, "half", 24, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "tensor 'half' is F16, expected F32"));
    ck_assert_ptr_null(eq_st_get_f32(f, "missing", 1, &err));
    ck_assert_int_eq(err.code, EQ_ERR_NOTFOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, "tensor 'missing' not found"));
    eq_st_close(&f);
    ck_assert_ptr_null(f);
    eq_st_close(&f);
    eq_st_close(NULL);

    /* the same bytes from memory */
    char *bytes;
    size_t len;
    ck_assert_int_eq(eq_file_read(path, 0, &bytes, &len, &err), EQ_OK);
    f = eq_st_parse(bytes, len, NULL, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    free(bytes);
    check_against_values(f);
    eq_st_close(&f);
    free(path);
}
END_TEST

START_TEST(test_write_matches_reference)
{
    char *path = fixture("ref.safetensors");
    eq_err err = { 0 };
    eq_st_file *ref = eq_st_open(path, NULL, &err);
    ck_assert_msg(ref != NULL, "%s", err.msg);
    eq_st_writer *w = eq_st_writer_new();
    ck_assert_ptr_nonnull(w);
    /* add in reverse file order: the writer sorts as the reference does */
    for (size_t k = eq_st_count(ref); k-- > 0;) {
        const eq_tensor_desc *d = eq_st_desc(ref, k);
        ck_assert_int_eq(eq_st_writer_add(w, eq_st_name(ref, k), d->dtype, d->ndim, d->shape,
                                          eq_st_data(ref, k, NULL), &err),
                         EQ_OK);
    }
    ck_assert_int_eq(eq_st_writer_meta(w, "format", "pt", &err), EQ_OK);
    ck_assert_int_eq(eq_st_writer_meta(w, "note", "caf\xC3\xA9 \"quoted\"\n", &err), EQ_OK);
    char *dir = eq_test_scratch("st");
    char out[4200];
    snprintf(out, sizeof out, "%s/out.safetensors", dir);
    ck_assert_msg(eq_st_writer_save(w, out, &err) == EQ_OK, "%s", err.msg);
    eq_st_writer_destroy(&w);
    ck_assert_ptr_null(w);
    char *a, *b;
    size_t la, lb;
    ck_assert_int_eq(eq_file_read(path, 0, &a, &la, &err), EQ_OK);
    ck_assert_int_eq(eq_file_read(out, 0, &b, &lb, &err), EQ_OK);
    ck_assert_uint_eq(la, lb);
    ck_assert_msg(memcmp(a, b, la) == 0, "eq's file differs from the reference bytes");
    free(a);
    free(b);
    eq_st_file *back = eq_st_open(out, NULL, &err);
    ck_assert_msg(back != NULL, "%s", err.msg);
    check_against_values(back);
    eq_st_close(&back);
    eq_st_close(&ref);

    /* no metadata, no tensors: "{}" padded to 8 */
    w = eq_st_writer_new();
    ck_assert_int_eq(eq_st_writer_save(w, out, &err), EQ_OK);
    ck_assert_int_eq(eq_file_read(out, 0, &a, &la, &err), EQ_OK);
    ck_assert_uint_eq(la, 16);
    ck_assert(memcmp(a, "\x08\0\0\0\0\0\0\0{}      ", 16) == 0);
    free(a);
    /* control characters are escaped like serde_json */
    ck_assert_int_eq(eq_st_writer_meta(w, "k\x01", "tab\there\\", &err), EQ_OK);
    ck_assert_int_eq(eq_st_writer_save(w, out, &err), EQ_OK);
    ck_assert_int_eq(eq_file_read(out, 0, &a, &la, &err), EQ_OK);
    ck_assert_ptr_nonnull(strstr(a + 8, "{\"__metadata__\":{\"k\\u0001\":\"tab\\there\\\\\"}}"));
    free(a);
    back = eq_st_open(out, NULL, &err);
    ck_assert_ptr_nonnull(back);
    ck_assert_str_eq(eq_st_meta_get(back, "k\x01"), "tab\there\\");
    eq_st_close(&back);
    eq_st_writer_destroy(&w);
    eq_test_scratch_rm(dir);
    free(path);
}
END_TEST

START_TEST(test_writer_errors)
{
    eq_err err = { 0 };
    eq_st_writer *w = eq_st_writer_new();
    float x[4] = { 1, 2, 3, 4 };
    int64_t sh[2] = { 2, 2 }, neg[1] = { -1 };
    ck_assert_int_eq(eq_st_writer_add(w, "a", EQ_DT_F32, 2, sh, x, &err), EQ_OK);
    ck_assert_int_eq(eq_st_writer_add(w, "a", EQ_DT_F32, 2, sh, x, &err), EQ_ERR_INVALID);
    ck_assert_str_eq(err.msg, "safetensors: duplicate tensor name 'a'");
    ck_assert_int_eq(eq_st_writer_add(w, "", EQ_DT_F32, 2, sh, x, &err), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_st_writer_add(w, "__metadata__", EQ_DT_F32, 2, sh, x, &err), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_st_writer_add(w, "b", (eq_dtype)99, 2, sh, x, &err), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_st_writer_add(w, "b", EQ_DT_F32, 1, neg, x, &err), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "tensor 'b'"));
    ck_assert_int_eq(eq_st_writer_add(w, "b", EQ_DT_F32, 9, sh, x, &err), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_st_writer_add(w, "b", EQ_DT_F32, 2, sh, NULL, &err), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_st_writer_add(w, "b\xC3", EQ_DT_F32, 2, sh, x, &err), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_st_writer_add(w, "b", EQ_DT_F32, 2, sh, x, NULL), EQ_OK);
    ck_assert_int_eq(eq_st_writer_meta(w, "k", "v", &err), EQ_OK);
    ck_assert_int_eq(eq_st_writer_meta(w, "k", "v2", &err), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_st_writer_meta(w, "k2", "\xFF", &err), EQ_ERR_INVALID);
    char *dir = eq_test_scratch("stw");
    char out[4200];
    snprintf(out, sizeof out, "%s/no/such/dir/x.safetensors", dir);
    ck_assert_int_eq(eq_st_writer_save(w, out, &err), EQ_ERR_NOTFOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, "no/such/dir/x.safetensors"));
    /* the old file survives a failed save, and a good save replaces it */
    snprintf(out, sizeof out, "%s/x.safetensors", dir);
    ck_assert_int_eq(eq_file_write_atomic(out, "old", 3, &err), EQ_OK);
    ck_assert_int_eq(eq_st_writer_save(w, out, &err), EQ_OK);
    eq_st_file *f = eq_st_open(out, NULL, &err);
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(eq_st_count(f), 2);
    ck_assert_str_eq(eq_st_name(f, 0), "a");
    ck_assert(eq_st_get_f32(f, "b", 4, &err)[3] == 4.0f);
    eq_st_close(&f);
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "test \"$(ls -A '%s')\" = x.safetensors", dir);
    ck_assert_int_eq(system(cmd), 0); /* no temporary left behind */
    eq_st_writer_destroy(&w);
    eq_st_writer_destroy(&w);
    eq_test_scratch_rm(dir);
}
END_TEST

/* A file image: length, header text, `ndata` bytes of data (0..). */
static unsigned char *mk(const char *header, size_t ndata, size_t *len)
{
    size_t h = strlen(header);
    *len = 8 + h + ndata;
    unsigned char *b = malloc(*len + 1);
    ck_assert_ptr_nonnull(b);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(b + 8, header, h);
    for (size_t i = 0; i < ndata; i++) b[8 + h + i] = (unsigned char)i;
    return b;
}

static void bad_bytes(const unsigned char *b, size_t len, const eq_st_limits *lim, eq_status code, const char *want)
{
    eq_err err = { 0 };
    eq_st_file *f = eq_st_parse(b, len, lim, &err);
    ck_assert_msg(f == NULL, "should fail: %s", want);
    ck_assert_msg(err.code == code, "%s: got %s (%s)", want, eq_status_str(err.code), err.msg);
    ck_assert_msg(strcmp(err.msg, want) == 0, "\n got  \"%s\"\n want \"%s\"", err.msg, want);
}

static void bad(const char *header, size_t ndata, eq_status code, const char *want)
{
    size_t len;
    unsigned char *b = mk(header, ndata, &len);
    bad_bytes(b, len, NULL, code, want);
    free(b);
}

#define E "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":"

START_TEST(test_corrupt)
{
    /* sizes */
    bad_bytes((const unsigned char *)"abc", 3, NULL, EQ_ERR_CORRUPT,
              "<memory>: file is 3 bytes, too short for the 8-byte header length");
    bad_bytes((const unsigned char *)"", 0, NULL, EQ_ERR_CORRUPT,
              "<memory>: file is 0 bytes, too short for the 8-byte header length");
    size_t len;
    unsigned char *b = mk("{}", 0, &len);
    b[0] = 3; /* header length 3 > 2 bytes left */
    bad_bytes(b, len, NULL, EQ_ERR_CORRUPT,
              "<memory>: header length 3 exceeds the 2 bytes after the length field (truncated file?)");
    memset(b, 0xff, 8);
    bad_bytes(b, len, NULL, EQ_ERR_LIMIT,
              "<memory>: header length 18446744073709551615 exceeds the limit of 100000000 bytes");
    free(b);
    b = mk("{\"a\":" E "[0,4]}}", 4, &len);
    eq_st_limits lim = { .max_header_bytes = 16 };
    bad_bytes(b, len, &lim, EQ_ERR_LIMIT, "<memory>: header length 54 exceeds the limit of 16 bytes");
    eq_st_limits flim = { .max_file_bytes = 10 };
    bad_bytes(b, len, &flim, EQ_ERR_LIMIT, "<memory>: 66 bytes exceed the limit of 10 bytes");
    free(b);
    /* header syntax and shape */
    bad("{\"a\":", 0, EQ_ERR_PARSE, "<memory>: header: line 1, column 6: expected a value, got end of input");
    bad("{}x", 0, EQ_ERR_PARSE, "<memory>: header: line 1, column 3: unexpected character 'x' after the JSON value");
    /* NUL padding is not whitespace (the reference's serde_json refuses it too) */
    b = mk("{}xxxxxx", 0, &len);
    memset(b + 10, 0, 6);
    bad_bytes(b, len, NULL, EQ_ERR_PARSE, "<memory>: header: line 1, column 3: unexpected byte 0x00 after the JSON value");
    free(b);
    bad("[]", 0, EQ_ERR_CORRUPT, "<memory>: header is a JSON array, expected an object");
    bad("{\"a\":1}", 0, EQ_ERR_CORRUPT, "<memory>: tensor 'a': entry is number, expected an object");
    /* entries */
    bad("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, EQ_ERR_CORRUPT, "<memory>: tensor 'a': missing \"dtype\"");
    bad("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, EQ_ERR_CORRUPT, "<memory>: tensor 'a': missing \"shape\"");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, EQ_ERR_CORRUPT, "<memory>: tensor 'a': missing \"data_offsets\"");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4, EQ_ERR_CORRUPT,
        "<memory>: tensor 'a': unknown field \"x\"");
    bad("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, EQ_ERR_CORRUPT,
        "<memory>: tensor 'a': duplicate field \"dtype\"");
    bad("{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, EQ_ERR_CORRUPT,
        "<memory>: tensor 'a': \"dtype\" is number, expected a string");
    bad("{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, EQ_ERR_UNSUPPORTED,
        "<memory>: tensor 'a': unsupported dtype \"F8_E4M3\"");
    bad("{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, EQ_ERR_UNSUPPORTED,
        "<memory>: tensor 'a': unsupported dtype \"f32\"");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", 4, EQ_ERR_CORRUPT,
        "<memory>: tensor 'a': \"shape\" is string, expected an array");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,4]}}", 4, EQ_ERR_CORRUPT,
        "<memory>: tensor 'a': shape[1] is not a non-negative integer");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4, EQ_ERR_CORRUPT,
        "<memory>: tensor 'a': shape[0] is not a non-negative integer");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}", 4, EQ_ERR_CORRUPT,
        "<memory>: tensor 'a': shape[0] is not a non-negative integer");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, EQ_ERR_UNSUPPORTED,
        "<memory>: tensor 'a': 9 dimensions, at most 8 are supported");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,4]}}", 4, EQ_ERR_CORRUPT,
        "<memory>: tensor 'a': shape is too large (byte size overflows)");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2305843009213693952],\"data_offsets\":[0,4]}}", 4, EQ_ERR_CORRUPT,
        "<memory>: tensor 'a': shape is too large (byte size overflows)");
    bad("{\"a\":" E "[0]}}", 4, EQ_ERR_CORRUPT, "<memory>: tensor 'a': \"data_offsets\" must be an array [begin, end]");
    bad("{\"a\":" E "{}}}", 4, EQ_ERR_CORRUPT, "<memory>: tensor 'a': \"data_offsets\" must be an array [begin, end]");
    bad("{\"a\":" E "[0,\"4\"]}}", 4, EQ_ERR_CORRUPT,
        "<memory>: tensor 'a': \"data_offsets\" must be non-negative integers");
    bad("{\"a\":" E "[-4,0]}}", 4, EQ_ERR_CORRUPT, "<memory>: tensor 'a': \"data_offsets\" must be non-negative integers");
    /* offsets vs shape, bounds, tiling */
    bad("{\"a\":" E "[0,8]}}", 8, EQ_ERR_CORRUPT,
        "<memory>: tensor 'a': data_offsets [0, 8] do not match shape [1] x F32 (4 bytes)");
    bad("{\"a\":" E "[4,0]}}", 8, EQ_ERR_CORRUPT,
        "<memory>: tensor 'a': data_offsets [4, 0] do not match shape [1] x F32 (4 bytes)");
    bad("{\"a\":" E "[4,8]}}", 4, EQ_ERR_CORRUPT,
        "<memory>: tensor 'a': data_offsets [4, 8] run past the end of the data (4 bytes)");
    bad("{\"a\":" E "[9223372036854775800,9223372036854775804]}}", 4, EQ_ERR_CORRUPT,
        "<memory>: tensor 'a': data_offsets [9223372036854775800, 9223372036854775804] run past the end of the data "
        "(4 bytes)");
    bad("{\"a\":" E "[0,4]},\"b\":" E "[8,12]}}", 12, EQ_ERR_CORRUPT,
        "<memory>: tensor 'b': data starts at 8 but the previous tensor ends at 4 (a hole in the data)");
    bad("{\"a\":" E "[4,8]}}", 8, EQ_ERR_CORRUPT,
        "<memory>: tensor 'a': data starts at 4 but the previous tensor ends at 0 (a hole in the data)");
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":" E "[4,8]}}", 8, EQ_ERR_CORRUPT,
        "<memory>: tensor 'b': data_offsets [4, 8] overlap tensor 'a'");
    bad("{\"a\":" E "[0,4]},\"b\":" E "[0,4]}}", 4, EQ_ERR_CORRUPT,
        "<memory>: tensor 'b': data_offsets [0, 4] overlap tensor 'a'");
    bad("{\"a\":" E "[0,4]}}", 6, EQ_ERR_CORRUPT,
        "<memory>: the data buffer has 6 bytes but the tensors cover 4 (2 bytes belong to no tensor)");
    bad("{}", 1, EQ_ERR_CORRUPT, "<memory>: the data buffer has 1 bytes but the tensors cover 0 (1 bytes belong to no tensor)");
    bad("{\"a\":" E "[0,4]},\"a\":" E "[4,8]}}", 8, EQ_ERR_CORRUPT, "<memory>: tensor 'a': duplicate name");
    /* names and metadata */
    bad("{\"a\\u0000b\":" E "[0,4]}}", 4, EQ_ERR_UNSUPPORTED, "<memory>: tensor 'a': name contains a NUL character");
    bad("{\"__metadata__\":{\"k\":1}}", 0, EQ_ERR_CORRUPT, "<memory>: metadata 'k': value is number, expected a string");
    bad("{\"__metadata__\":{\"k\":{\"x\":\"y\"}}}", 0, EQ_ERR_CORRUPT,
        "<memory>: metadata 'k': value is object, expected a string");
    bad("{\"__metadata__\":[\"k\"]}", 0, EQ_ERR_CORRUPT,
        "<memory>: \"__metadata__\" is array, expected an object of strings");
    bad("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, EQ_ERR_CORRUPT, "<memory>: metadata 'k': duplicate key");
    bad("{\"__metadata__\":{},\"__metadata__\":{}}", 0, EQ_ERR_CORRUPT, "<memory>: duplicate \"__metadata__\"");
    bad("{\"__metadata__\":{\"k\":\"a\\u0000\"}}", 0, EQ_ERR_UNSUPPORTED,
        "<memory>: metadata 'k': contains a NUL character");
    bad("[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]", 0, EQ_ERR_PARSE,
        "<memory>: header: line 1, column 17: nesting deeper than 16 levels");
}
END_TEST

START_TEST(test_valid_edge_cases)
{
    eq_err err = { 0 };
    size_t len;
    /* empty file header, padding, zero-size tensors sharing an offset,
     * null metadata, entries in any order, fields in any order */
    unsigned char *b = mk("{\"z\":{\"data_offsets\":[0,0],\"shape\":[0,5],\"dtype\":\"I64\"},"
                          "\"__metadata__\":null,\"y\":" E "[0,4]},\"x\":{\"dtype\":\"BOOL\",\"shape\":[],"
                          "\"data_offsets\":[4,5]}}   \n\t ",
                          5, &len);
    eq_st_file *f = eq_st_parse(b, len, NULL, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    ck_assert_uint_eq(eq_st_count(f), 3);
    ck_assert_str_eq(eq_st_name(f, 0), "z"); /* [0,0] before [0,4] */
    ck_assert_str_eq(eq_st_name(f, 1), "y");
    ck_assert_str_eq(eq_st_name(f, 2), "x");
    ck_assert_uint_eq(eq_st_meta_count(f), 0);
    ck_assert_int_eq(eq_st_desc(f, 2)->ndim, 0);
    size_t nb;
    ck_assert_uint_eq(*(const unsigned char *)eq_st_data(f, 2, &nb), 4);
    ck_assert_uint_eq(nb, 1);
    eq_st_close(&f);
    free(b);
    b = mk("{}", 0, &len);
    f = eq_st_parse(b, len, NULL, &err);
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(eq_st_count(f), 0);
    ck_assert_int_eq(eq_st_find(f, "a"), -1);
    eq_st_close(&f);
    free(b);
    /* an F32 tensor behind 3 bytes of U8 is not 4-byte aligned: raw data is
     * fine, a float pointer is refused */
    b = mk("{\"u\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]},\"f\":" E "[3,7]}}", 7, &len);
    f = eq_st_parse(b, len, NULL, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    ck_assert_ptr_nonnull(eq_st_data(f, 1, NULL));
    ck_assert_ptr_null(eq_st_get_f32(f, "f", 1, &err));
    ck_assert_int_eq(err.code, EQ_ERR_UNSUPPORTED);
    ck_assert_str_eq(err.msg, "<memory>: tensor 'f': data at offset 3 is not 4-byte aligned");
    eq_st_close(&f);
    free(b);
    /* many tensors: name lookup */
    char hdr[200000];
    size_t n = 0;
    n += (size_t)snprintf(hdr + n, sizeof hdr - n, "{");
    for (int i = 0; i < 2000; i++)
        n += (size_t)snprintf(hdr + n, sizeof hdr - n, "%s\"t%d\":" E "[%d,%d]}", i ? "," : "", (i * 7919) % 2000,
                              4 * i, 4 * i + 4);
    snprintf(hdr + n, sizeof hdr - n, "}");
    b = mk(hdr, 8000, &len);
    f = eq_st_parse(b, len, NULL, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    for (int i = 0; i < 2000; i++) {
        char name[16];
        snprintf(name, sizeof name, "t%d", i);
        long k = eq_st_find(f, name);
        ck_assert_int_ge(k, 0);
        ck_assert_str_eq(eq_st_name(f, (size_t)k), name);
    }
    eq_st_close(&f);
    free(b);
    /* 100k metadata entries: duplicate detection is not quadratic */
    size_t cap = 3000000, m = 0;
    char *big = malloc(cap);
    ck_assert_ptr_nonnull(big);
    m += (size_t)snprintf(big + m, cap - m, "{\"__metadata__\":{");
    for (int i = 0; i < 100000; i++) m += (size_t)snprintf(big + m, cap - m, "%s\"k%d\":\"v\"", i ? "," : "", i);
    snprintf(big + m, cap - m, "}}");
    b = mk(big, 0, &len);
    f = eq_st_parse(b, len, NULL, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    ck_assert_uint_eq(eq_st_meta_count(f), 100000);
    ck_assert_str_eq(eq_st_meta_get(f, "k99999"), "v");
    eq_st_close(&f);
    free(b);
    snprintf(big + m, cap - m, ",\"k777\":\"w\"}}");
    b = mk(big, 0, &len);
    bad_bytes(b, len, NULL, EQ_ERR_CORRUPT, "<memory>: metadata 'k777': duplicate key");
    free(b);
    free(big);
}
END_TEST

START_TEST(test_open_errors)
{
    eq_err err = { 0 };
    char *dir = eq_test_scratch("sto");
    char p[4200];
    snprintf(p, sizeof p, "%s/missing.safetensors", dir);
    ck_assert_ptr_null(eq_st_open(p, NULL, &err));
    ck_assert_int_eq(err.code, EQ_ERR_NOTFOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, "missing.safetensors: open: No such file or directory"));
    ck_assert_ptr_null(eq_st_open(dir, NULL, &err));
    ck_assert_int_eq(err.code, EQ_ERR_IO);
    /* truncated copies of the reference file: every length fails cleanly */
    char *ref = fixture("ref.safetensors");
    char *bytes;
    size_t len;
    ck_assert_int_eq(eq_file_read(ref, 0, &bytes, &len, &err), EQ_OK);
    snprintf(p, sizeof p, "%s/t.safetensors", dir);
    size_t cuts[] = { 0, 5, 8, 100, 8 + 928, len - 1 };
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        ck_assert_int_eq(eq_file_write_atomic(p, bytes, cuts[i], &err), EQ_OK);
        eq_st_file *f = eq_st_open(p, NULL, &err);
        ck_assert_msg(f == NULL, "cut at %zu accepted", cuts[i]);
        ck_assert_msg(strncmp(err.msg, p, strlen(p)) == 0, "message does not name the file: %s", err.msg);
    }
    ck_assert_ptr_nonnull(strstr(err.msg, "tensor 'flags': data_offsets [653, 656] run past the end of the data (655 bytes)"));
    eq_st_limits lim = { .max_file_bytes = 100 };
    ck_assert_ptr_null(eq_st_open(ref, &lim, &err));
    ck_assert_int_eq(err.code, EQ_ERR_LIMIT);
    for (size_t cut = 0; cut < len; cut++) {
        eq_st_file *f = eq_st_parse(bytes, cut, NULL, &err);
        ck_assert_msg(f == NULL, "cut at %zu accepted", cut);
    }
    free(bytes);
    free(ref);
    eq_test_scratch_rm(dir);
}
END_TEST

/* Is `path` mapped into this process (/proc/self/maps)? */
static int mapped(const char *path)
{
    FILE *m = fopen("/proc/self/maps", "r");
    ck_assert_ptr_nonnull(m);
    char line[8192];
    int found = 0;
    size_t pl = strlen(path);
    while (!found && fgets(line, sizeof line, m)) {
        size_t n = strlen(line);
        while (n && line[n - 1] == '\n') line[--n] = 0;
        found = n >= pl && strcmp(line + n - pl, path) == 0;
    }
    fclose(m);
    return found;
}

/* eq_st_open maps a file whose data starts on an 8-byte boundary (the
 * reference's padding) and reads any other; both give the same tensors,
 * and the mapping goes with eq_st_close. */
START_TEST(test_open_mapped_or_read)
{
    eq_err err = { 0 };
    char *dir = eq_test_scratch("stm");
    char *ref = fixture("ref.safetensors"), *bytes;
    size_t len;
    ck_assert_int_eq(eq_file_read(ref, 0, &bytes, &len, &err), EQ_OK);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | (unsigned char)bytes[i];
    ck_assert_uint_eq((8 + hlen) % 8, 0);
    char pa[4200], pb[4200];
    snprintf(pa, sizeof pa, "%s/aligned.safetensors", dir);
    snprintf(pb, sizeof pb, "%s/odd.safetensors", dir);
    ck_assert_int_eq(eq_file_write_atomic(pa, bytes, len, &err), EQ_OK);
    /* the same file with one more space in the header: data at 8 + hlen + 1 */
    char *odd = malloc(len + 1);
    ck_assert_ptr_nonnull(odd);
    for (int i = 0; i < 8; i++) odd[i] = (char)((hlen + 1) >> (8 * i));
    memcpy(odd + 8, bytes + 8, hlen);
    odd[8 + hlen] = ' ';
    memcpy(odd + 9 + hlen, bytes + 8 + hlen, len - 8 - hlen);
    ck_assert_int_eq(eq_file_write_atomic(pb, odd, len + 1, &err), EQ_OK);
    eq_st_file *a = eq_st_open(pa, NULL, &err);
    ck_assert_msg(a != NULL, "%s", err.msg);
    ck_assert_msg(mapped(pa), "%s is not mapped", pa);
    eq_st_file *b = eq_st_open(pb, NULL, &err);
    ck_assert_msg(b != NULL, "%s", err.msg);
    ck_assert_msg(!mapped(pb), "%s is mapped (its data is off an 8-byte boundary)", pb);
    ck_assert_uint_eq(eq_st_count(a), eq_st_count(b));
    ck_assert_uint_gt(eq_st_count(a), 0);
    for (size_t i = 0; i < eq_st_count(a); i++) {
        size_t na, nb;
        const unsigned char *da = eq_st_data(a, i, &na), *db = eq_st_data(b, i, &nb);
        ck_assert_str_eq(eq_st_name(a, i), eq_st_name(b, i));
        ck_assert_uint_eq(na, nb);
        ck_assert_int_eq(memcmp(da, db, na), 0);
        /* tensor 0 starts the buffer (file order, tiled from 0) */
        size_t off = (size_t)(da - (const unsigned char *)eq_st_data(a, 0, NULL));
        ck_assert_int_eq(memcmp(da, bytes + 8 + hlen + off, na), 0);
        /* both keep a tensor's alignment inside the buffer, up to 8 bytes */
        ck_assert_uint_eq((uintptr_t)da % 8, off % 8);
        ck_assert_uint_eq((uintptr_t)db % 8, off % 8);
    }
    eq_st_close(&a);
    ck_assert_msg(!mapped(pa), "%s still mapped after eq_st_close", pa);
    eq_st_close(&b);
    free(odd);
    free(bytes);
    free(ref);
    eq_test_scratch_rm(dir);
}
END_TEST

/* eq_st_first_nonfinite_f32 against isfinite element by element: NaN
 * (quiet, signalling, negative), +-inf at block edges and in the tail, at
 * an odd address; the largest finite value and denormals pass. */
START_TEST(test_first_nonfinite)
{
    uint64_t seed = 0x5eedf1417eULL;
    const size_t n = 3 * 1024 + 77;
    float *v = eq_test_vec(&seed, n, 1e3f);
    unsigned char *raw = malloc(4 * n + 1);
    ck_assert_ptr_nonnull(raw);
    unsigned char *p = raw + 1; /* unaligned */
    v[5] = FLT_MAX;
    v[6] = -FLT_MAX;
    v[7] = 1e-45f; /* denormal */
    v[8] = -0.0f;
    memcpy(p, v, 4 * n);
    ck_assert_int_eq(eq_st_first_nonfinite_f32(p, n), -1);
    ck_assert_int_eq(eq_st_first_nonfinite_f32(p, 0), -1);
    const uint32_t bad[] = { 0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7fffffffu, 0x7f800000u, 0xff800000u };
    const size_t at[] = { 0, 1, 1023, 1024, 2047, 2048, 3071, 3072, 3100, n - 1 };
    for (size_t b = 0; b < sizeof bad / sizeof *bad; b++)
        for (size_t k = 0; k < sizeof at / sizeof *at; k++) {
            memcpy(p, v, 4 * n);
            memcpy(p + 4 * at[k], &bad[b], 4);
            if (at[k] + 700 < n) memcpy(p + 4 * (at[k] + 700), &bad[b], 4); /* a later one is not reported */
            float x;
            memcpy(&x, &bad[b], 4);
            ck_assert(!isfinite(x));
            ck_assert_msg(eq_st_first_nonfinite_f32(p, n) == (int64_t)at[k], "0x%08x at %zu: got %" PRId64,
                          bad[b], at[k], eq_st_first_nonfinite_f32(p, n));
            /* a count that stops before it does not see it */
            ck_assert_int_eq(eq_st_first_nonfinite_f32(p, at[k]), -1);
        }
    free(raw);
    free(v);
}
END_TEST

static Suite *st_suite(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("safetensors");
    tcase_add_test(tc, test_read_reference);
    tcase_add_test(tc, test_write_matches_reference);
    tcase_add_test(tc, test_writer_errors);
    tcase_add_test(tc, test_corrupt);
    tcase_add_test(tc, test_valid_edge_cases);
    tcase_add_test(tc, test_open_errors);
    tcase_add_test(tc, test_open_mapped_or_read);
    tcase_add_test(tc, test_first_nonfinite);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return eq_test_run(st_suite()); }
