/*
 * loader/fuzz_decode.c -- libFuzzer target for the image decode paths
 * (built twice: EQ_FUZZ_PNG=0 for JPEG, 1 for PNG).  The first input byte
 * picks the DCT scale and a region; the rest is the file.  Everything must
 * come back as EQ_OK or an error: no crash, no leak, no huge allocation
 * (the decoder's pixel limit is set to 4 MP so fuzz/run's 256 MiB RSS
 * limit holds).  JPEG: the region is decoded again with libjpeg's Huffman
 * decoder in place of decode.c's own, and both must give the same status
 * and the same bytes (abort() otherwise, which libFuzzer reports).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "loader/loader.h"
#include "loader/loader_internal.h"

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
        eq_status st =
            eq_decode_region(d, data, size, num, x0, y0, x0 + sw / 3 + 1, y0 + sh / 3 + 1, &o, &e);
        if (st == EQ_OK) {
            /* touch every decoded byte (ASan checks the bounds) */
            volatile uint8_t acc = 0;
            for (size_t i = 0; i < (size_t)o.w * o.h * 3; i++) acc ^= o.pix[i];
            (void)acc;
        }
#if !EQ_FUZZ_PNG
        static eq_decoder *ref;
        static uint8_t *keep;
        static size_t keep_cap;
        if (!ref) {
            ref = eq_decoder_new(4u << 20, NULL);
            eq_decoder_fast_huffman(ref, 0, NULL, NULL);
        }
        size_t n = st == EQ_OK ? (size_t)o.w * o.h * 3 : 0;
        if (n > keep_cap) {
            free(keep);
            keep = malloc(n);
            keep_cap = keep ? n : 0;
            if (!keep) return 0;
        }
        if (n) memcpy(keep, o.pix, n);
        eq_decoded r;
        eq_status rs =
            eq_decode_region(ref, data, size, num, x0, y0, x0 + sw / 3 + 1, y0 + sh / 3 + 1, &r, &e);
        if (rs != st || (st == EQ_OK && (r.w != o.w || r.h != o.h || memcmp(keep, r.pix, n))))
            abort(); /* decode.c's Huffman decoder and libjpeg's disagree */
#endif
    }
    return 0;
}
