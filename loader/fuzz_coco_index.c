/* loader/fuzz_coco_index.c -- libFuzzer target for the COCO annotation
 * reader and what consumes its output.  The first byte picks the input:
 *   even: an instances file (JSON) -> eq_cocoidx_parse_mem; an accepted
 *         index then makes every image's sample with the detection
 *         pipeline (image files are absent: substitutes) at a small size,
 *         flipped and not, so boxes, polygons and RLE masks are exercised;
 *   odd:  a binary index cache -> eq_cocoidx_load_mem.
 * Nothing may crash, leak, read out of bounds or grow past the RSS limit. */
#include <stdint.h>
#include <string.h>

#include "core/log.h"
#include "loader/coco.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int quiet;
    if (!quiet) {
        eq_log_set_level(EQ_LOG_ERROR);
        quiet = 1;
    }
    if (size < 1) return 0;
    eq_err e = {0};
    eq_cocoidx *x = (data[0] & 1) ? eq_cocoidx_load_mem(data + 1, size - 1, "fuzz.eqidx", &e)
                                  : eq_cocoidx_parse_mem((const char *)data + 1, size - 1, "fuzz.json", &e);
    if (!x) {
        if (!e.code || !e.msg[0]) __builtin_trap();
        return 0;
    }
    if (eq_cocoidx_validate(x, NULL) != EQ_OK || eq_cocoidx_content_hash(x) != x->hash) __builtin_trap();
    eq_det_cfg c;
    eq_det_cfg_default(&c, "val", 2, 1);
    c.min_sizes[0] = 24;
    c.max_size = 48;
    c.hflip = 1;
    eq_det *d = eq_det_new(x, "/nonexistent", &c, NULL);
    eq_decoder *dec = eq_decoder_new(0, NULL);
    eq_det_sample s = {0};
    for (size_t i = 0; d && dec && i < eq_det_size(d) && i < 8; i++)
        for (uint64_t ep = 0; ep < 2; ep++) {
            if (eq_det_make(d, dec, ep, i, &s, NULL) != EQ_OK) continue;
            for (uint32_t k = 0; k < s.n; k++) {
                const int32_t *rc = s.mrect + 4 * k;
                if (rc[0] < 0 || rc[1] < 0 || rc[0] + rc[2] > (int32_t)s.w || rc[1] + rc[3] > (int32_t)s.h)
                    __builtin_trap();
            }
        }
    eq_det_sample_free(&s);
    eq_decoder_destroy(&dec);
    eq_det_destroy(&d);
    eq_cocoidx_destroy(&x);
    return 0;
}
