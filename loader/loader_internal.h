/*
 * loader/loader_internal.h -- pieces shared between the loader's .c files
 * and the tests; not part of the module's interface.
 */
#ifndef EQ_LOADER_INTERNAL_H
#define EQ_LOADER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "loader/loader.h"

/* RNG stream tags (domain separation; see loader.h and doc/loader.md).
 * Append-only: changing one changes every sample. */
#define EQ_TAG_ORDER 0x4f52444552ull /* "ORDER" */
#define EQ_TAG_AUG 0x415547ull       /* "AUG" */
#define EQ_TAG_MIX 0x4d4958ull       /* "MIX" */
#define EQ_TAG_LIGHT 0x4c49474854ull /* "LIGHT" */

/* Streaming 64-bit hash (FNV-1a over bytes, finalised with eq_rng_mix).
 * Used for fingerprints; stable across hosts (byte order independent). */
typedef struct eq_hash64 {
    uint64_t h;
} eq_hash64;
void eq_hash64_init(eq_hash64 *s);
void eq_hash64_bytes(eq_hash64 *s, const void *p, size_t n);
void eq_hash64_u64(eq_hash64 *s, uint64_t v);
uint64_t eq_hash64_final(const eq_hash64 *s);

/* Read a whole file into *buf (realloc'd; capacity in *cap), size in *len.
 * Files above max_len are EQ_ERR_LIMIT.  Errors name the path. */
eq_status eq_read_file(const char *path, uint8_t **buf, size_t *cap, size_t *len, size_t max_len,
                       eq_err *err);

/* Source of draws for eq_rrc_params_draws: the tests substitute a table of
 * pre-drawn values to compare with torchvision fed the same values. */
typedef struct eq_draws {
    float (*uniform)(void *ctx);                 /* [0, 1), 24 bits */
    uint32_t (*below)(void *ctx, uint32_t n);    /* [0, n) */
    void *ctx;
} eq_draws;

eq_box eq_rrc_params_draws(const eq_draws *d, uint32_t width, uint32_t height, double s0,
                           double s1, double r0, double r1);

/* Geometry of "crop box b (full-resolution), resize to out_w x out_h" on
 * the image scaled by the smallest M/8 keeping the crop at least
 * out_w x out_h (dct_scale: EQ_DCT_OFF / POW2 / ANY); *num = M. */
void eq_crop_geometry(uint32_t W, uint32_t H, eq_box b, uint32_t out_w, uint32_t out_h,
                      int dct_scale, uint32_t *num, eq_resize_geom *g);

/* Decode + crop + resize of one encoded image for a given box: the
 * pipeline's path without the random draws (tests and benchmarks). */
eq_status eq_render_crop(eq_decoder *d, const uint8_t *data, size_t len, eq_box b, uint32_t out_w,
                         uint32_t out_h, int dct_scale, uint8_t *out, void **tmp, size_t *tmp_cap,
                         eq_err *err);

/* The resampler's SIMD kernels (same bytes as its scalar loops): enable
 * 2 = AVX2 and the AVX-512 one where the CPU has them (AVX-512BW and
 * VBMI: not on Skylake-SP / Cascade Lake, whose clock drops), 1 = AVX2
 * only (when the CPU has it), 0 = scalar only, -1 = leave as is; returns
 * the previous state (the level in use: 0, 1 or 2).  The default is the
 * best available.  For tests comparing them; not thread safe against a
 * concurrent resize's choice (every path gives the same bytes). */
int eq_resize_simd(int enable);

/* The decoder's own baseline Huffman decoder (decode.c; same coefficients
 * as libjpeg's, which takes over for anything unusual): enable 1 = use it
 * where it applies (the default), 0 = libjpeg's only, -1 = leave as is.
 * *n_fast / *n_fallback (may be NULL): images it decoded / handed back to
 * libjpeg since the decoder was made.  For tests and benchmarks. */
void eq_decoder_fast_huffman(eq_decoder *d, int enable, uint64_t *n_fast, uint64_t *n_fallback);

/* Per-thread scratch owned by a decoder (freed with it), so that the
 * per-sample path allocates nothing once buffers have grown. */
typedef struct eq_scratch {
    uint8_t *file; /* file contents */
    size_t file_cap;
    void *tmp;     /* resampler scratch */
    size_t tmp_cap;
} eq_scratch;
eq_scratch *eq_decoder_scratch(eq_decoder *d);

/* JPEG header access for the pipeline (format-specific decode plan). */
int eq_decoder_is_cmyk(const eq_decoder *d);

#endif
