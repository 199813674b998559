/*
 * loader/fuzz_decode.c -- libFuzzer target for the image decode paths
 * (built twice: EQ_FUZZ_PNG=0 for JPEG, 1 for PNG).  The first input byte
 * picks the DCT scale and a region; the rest is the file.  Everything must
 * come back as EQ_OK or an error: no crash, no leak, no huge allocation
 * (the decoder's pixel limit is set to 4 MP so fuzz/run's 256 MiB RSS
 * limit holds).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "loader/loader.h"

#ifndef EQ_FUZZ_PNG
#define EQ_FUZZ_PNG 0
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static eq_decoder *d;
    if (!d) d = eq_decoder_new(4u << 20, NULL);
    if (size < 2) return 0;
    uint8_t ctl = data[0];
    data++;
    size--;
    eq_img_format f = eq_image_sniff(data, size);
    if (f != (EQ_FUZZ_PNG ? EQ_IMG_PNG : EQ_IMG_JPEG)) return 0;
    uint32_t w = 0, h = 0;
    eq_err e;
    if (eq_decode_info(d, data, size, NULL, &w, &h, &e) != EQ_OK) return 0;
    uint32_t num = 1 + (ctl & 7);
    eq_decoded o;
    if (ctl & 8) {
        eq_decode_full(d, data, size, num, &o, &e);
    } else {
        uint32_t sw = eq_decode_scaled(w, num), sh = eq_decode_scaled(h, num);
        uint32_t x0 = sw * ((ctl >> 4) & 3) / 4, y0 = sh * (ctl >> 6) / 4;
        if (eq_decode_region(d, data, size, num, x0, y0, x0 + sw / 3 + 1, y0 + sh / 3 + 1, &o, &e) ==
            EQ_OK) {
            /* touch every decoded byte (ASan checks the bounds) */
            volatile uint8_t acc = 0;
            for (size_t i = 0; i < (size_t)o.w * o.h * 3; i++) acc ^= o.pix[i];
            (void)acc;
        }
    }
    return 0;
}
