/* fuzz/fuzz_safetensors.c -- arbitrary bytes into eq_st_parse: must never
 * crash, read out of bounds or leak; accepted files must be self-consistent
 * (every tensor's bytes readable, offsets inside the buffer). */
#include <stdint.h>
#include <string.h>

#include "core/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    eq_err err = { 0 };
    eq_st_limits lim = { .max_header_bytes = 1 << 20 };
    eq_st_file *f = eq_st_parse(data, size, &lim, &err);
    if (!f) {
        if (err.code == EQ_OK || !err.msg[0]) __builtin_trap(); /* a failure must say why */
        return 0;
    }
    size_t total = 0;
    volatile unsigned sum = 0;
    for (size_t i = 0; i < eq_st_count(f); i++) {
        size_t n;
        const unsigned char *p = eq_st_data(f, i, &n);
        const eq_tensor_desc *d = eq_st_desc(f, i);
        if ((int64_t)n != eq_tensor_nbytes(d)) __builtin_trap();
        if (eq_st_find(f, eq_st_name(f, i)) != (long)i) __builtin_trap();
        for (size_t k = 0; k < n; k++) sum += p[k];
        total += n;
        if (d->dtype == EQ_DT_F32) (void)eq_st_get_f32(f, eq_st_name(f, i), eq_tensor_numel(d), &err);
    }
    if (total > size) __builtin_trap();
    for (size_t i = 0; i < eq_st_meta_count(f); i++)
        if (eq_st_meta_get(f, eq_st_meta_key(f, i)) == NULL || strlen(eq_st_meta_value(f, i)) > size) __builtin_trap();
    eq_st_close(&f);
    return 0;
}
