/* fuzz/fuzz_json.c -- arbitrary bytes into eq_json_parse: must never crash,
 * read out of bounds or leak; every node of an accepted document must be
 * reachable and consistent. */
#include <stdint.h>
#include <string.h>

#include "core/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void walk(const eq_json *v, int depth)
{
    if (depth > 600) __builtin_trap();
    if (eq_json_line(v) == 0 || eq_json_col(v) == 0) __builtin_trap();
    switch (eq_json_typeof(v)) {
    case EQ_JSON_STRING: {
        size_t n;
        const char *s = eq_json_str(v, &n);
        if (!s || s[n] != '\0') __builtin_trap();
        break;
    }
    case EQ_JSON_NUMBER: {
        int64_t i;
        double d = eq_json_num(v);
        if (eq_json_int(v, &i) && (double)i != d) __builtin_trap();
        break;
    }
    case EQ_JSON_ARRAY:
        for (size_t i = 0; i < eq_json_len(v); i++) walk(eq_json_at(v, i), depth + 1);
        if (eq_json_at(v, eq_json_len(v)) != NULL) __builtin_trap();
        break;
    case EQ_JSON_OBJECT:
        for (size_t i = 0; i < eq_json_len(v); i++) {
            size_t kl;
            const char *k = eq_json_key_at(v, i, &kl);
            if (!k || k[kl] != '\0') __builtin_trap();
            if (strlen(k) == kl && eq_json_get(v, k) == NULL) __builtin_trap();
            walk(eq_json_at(v, i), depth + 1);
        }
        break;
    default: break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    eq_err err = { 0 };
    eq_json_doc *d = eq_json_parse((const char *)data, size, NULL, &err);
    if (!d) {
        if (err.code == EQ_OK || !err.msg[0]) __builtin_trap();
        return 0;
    }
    walk(eq_json_root(d), 0);
    eq_json_doc_destroy(&d);
    return 0;
}
