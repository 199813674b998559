/*
 * loader/transform.c -- geometry of the torchvision transforms eq mirrors,
 * and PIL's bilinear resampling.
 *
 * Resampling follows Pillow's libImaging/Resample.c (precompute_coeffs,
 * normalize_coeffs_8bpc, ImagingResampleHorizontal/Vertical_8bpc): same
 * filter support, same float/double types in the coefficient computation,
 * same 22-bit fixed point, same pass order and uint8 rounding between the
 * passes.  The only difference is that we compute a window of the output
 * (CenterCrop after Resize), which is exact because every output pixel has
 * its own coefficients.
 */
/* The resampling loops are the hottest code of the loader after libjpeg's
 * Huffman decoder.  -O2 (the default CFLAGS) leaves the row-at-a-time
 * vertical pass scalar; -O3 vectorises it and halves the resize time
 * (measured 2.0 -> 0.95 ms for 320x300 -> 224x224).  Integer arithmetic
 * only, so the result is the same bytes either way.  clang: no pragma. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("O3")
#endif

#include "loader/loader.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "loader/loader_internal.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define S_X86 1
#else
#define S_X86 0
#endif

#define S_PREC 22 /* PIL: PRECISION_BITS = 32 - 8 - 2 */

typedef struct s_axis {
    int ksize;
    int *bounds; /* per output in window: xmin, xmax (count) relative to in */
    int32_t *k;  /* per output: ksize coefficients */
    int lo, hi;  /* union of taps, relative to in */
} s_axis;

static double s_bilinear(double x)
{
    if (x < 0.0) x = -x;
    if (x < 1.0) return 1.0 - x;
    return 0.0;
}

static int s_ksize(int in_size, float in0, float in1, int out_size)
{
    (void)in_size;
    double filterscale = (double)(in1 - in0) / out_size;
    if (filterscale < 1.0) filterscale = 1.0;
    return (int)ceil(1.0 * filterscale) * 2 + 1;
}

/* Coefficients of outputs [w0, w0+wn) (PIL precompute_coeffs +
 * normalize_coeffs_8bpc).  `dk` is double scratch of wn*ksize. */
static void s_coeffs(int in_size, float in0, float in1, int out_size, int w0, int wn, s_axis *ax,
                     double *dk)
{
    double scale, filterscale, support, center, ww, ss;
    filterscale = scale = (double)(in1 - in0) / out_size;
    if (filterscale < 1.0) filterscale = 1.0;
    support = 1.0 * filterscale;
    int ksize = ax->ksize;
    ax->lo = in_size;
    ax->hi = 0;
    for (int i = 0; i < wn; i++) {
        int xx = w0 + i;
        center = in0 + (xx + 0.5) * scale;
        ww = 0.0;
        ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double *k = &dk[(size_t)i * ksize];
        int x;
        for (x = 0; x < xmax; x++) {
            double w = s_bilinear((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        for (; x < ksize; x++) k[x] = 0;
        ax->bounds[2 * i] = xmin;
        ax->bounds[2 * i + 1] = xmax;
        if (xmax > 0) {
            if (xmin < ax->lo) ax->lo = xmin;
            if (xmin + xmax > ax->hi) ax->hi = xmin + xmax;
        }
        int32_t *kk = &ax->k[(size_t)i * ksize];
        for (x = 0; x < ksize; x++) {
            double v = k[x];
            kk[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << S_PREC)) : (int32_t)(0.5 + v * (1 << S_PREC));
        }
    }
    if (ax->lo > ax->hi) ax->lo = ax->hi = 0;
}

static inline uint8_t s_clip8(int v)
{
    if (v >= (1 << S_PREC << 8)) return 255;
    if (v <= 0) return 0;
    return (uint8_t)(v >> S_PREC);
}

#define S_KFIX 8 /* longest tap count of the fixed-length horizontal loop */
#define S_KPAIR 8 /* longest tap count of the AVX2 two-outputs kernel */

/* One RGB row of the horizontal pass with K taps per output (K a constant
 * at the call sites, so the tap loop unrolls). */
static inline __attribute__((always_inline)) void s_hrow3(const uint8_t *row, uint8_t *mrow,
                                                           uint32_t ww, const int *off,
                                                           const int32_t *kf, const int K)
{
    for (uint32_t xx = 0; xx < ww; xx++) {
        const uint8_t *s = row + off[xx];
        const int32_t *k = kf + (size_t)xx * K;
        int s0 = 1 << (S_PREC - 1), s1 = s0, s2 = s0;
        for (int t = 0; t < K; t++) {
            s0 += s[3 * t] * k[t];
            s1 += s[3 * t + 1] * k[t];
            s2 += s[3 * t + 2] * k[t];
        }
        mrow[3 * xx] = s_clip8(s0);
        mrow[3 * xx + 1] = s_clip8(s1);
        mrow[3 * xx + 2] = s_clip8(s2);
    }
}

/* ------------------------------------------------- x86 AVX2 kernels
 *
 * The same integer sums as the scalar loops above (products of uint8 and
 * the 22-bit coefficients, 32-bit adds, which are exact and so order-free),
 * the same rounding constant and the same clip: the same bytes.  Chosen at
 * run time when the CPU has AVX2 (the build targets plain x86-64);
 * check_loader compares them with the scalar code on random geometries. */
static int s_simd_mode = -1; /* -1: not probed, 0: scalar, 1: AVX2, 2: AVX2 + AVX-512 */

/* The best of the levels up to `want` that the CPU has. */
static int s_simd_best(int want)
{
#if S_X86
    __builtin_cpu_init();
    /* AVX-512VBMI as well: not on Skylake-SP / Cascade Lake, where 512-bit
     * multiplies lower the core's clock for milliseconds, which would slow
     * the Huffman decoding that runs between two resizes more than the
     * kernel saves (Ice Lake and later, AMD Zen 4 and later have it) */
    if (want >= 2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx2"))
        return 2;
    if (want >= 1 && __builtin_cpu_supports("avx2")) return 1;
#else
    (void)want;
#endif
    return 0;
}

static int s_simd(void)
{
    int m = __atomic_load_n(&s_simd_mode, __ATOMIC_RELAXED);
    if (m < 0) {
        m = s_simd_best(2);
        __atomic_store_n(&s_simd_mode, m, __ATOMIC_RELAXED);
    }
    return m;
}

int eq_resize_simd(int enable)
{
    int was = s_simd();
    if (enable >= 0) __atomic_store_n(&s_simd_mode, s_simd_best(enable), __ATOMIC_RELAXED);
    return was;
}

#if S_X86
/* One RGB row of the horizontal pass: output xx reads the K4 pixels at
 * byte offset off[xx] (K4 a multiple of 4, zero coefficients padding the
 * real taps) with 16-byte loads, so the row must be followed by at least 4
 * readable bytes. */
__attribute__((target("avx2"))) static void s_hrow3_avx2(const uint8_t *row, uint8_t *mrow,
                                                          uint32_t ww, const int *off,
                                                          const int32_t *kf, int K4)
{
    const __m128i sh = _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
    const __m256i lo = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    const __m256i hi = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);
    const __m128i rnd = _mm_set1_epi32(1 << (S_PREC - 1));
    for (uint32_t xx = 0; xx < ww; xx++) {
        const uint8_t *s = row + off[xx];
        const int32_t *k = kf + (size_t)xx * K4;
        __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
        for (int t = 0; t < K4; t += 4) {
            __m128i v = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(s + 3 * t)), sh);
            __m256i kk = _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(k + t)));
            __m256i p01 = _mm256_cvtepu8_epi32(v);
            __m256i p23 = _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(v, v));
            a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(p01, _mm256_permutevar8x32_epi32(kk, lo)));
            a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(p23, _mm256_permutevar8x32_epi32(kk, hi)));
        }
        __m256i a = _mm256_add_epi32(a0, a1);
        __m128i r = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
        r = _mm_srai_epi32(_mm_add_epi32(r, rnd), S_PREC);
        r = _mm_packus_epi16(_mm_packs_epi32(r, r), r);
        uint32_t px = (uint32_t)_mm_cvtsi128_si32(r);
        memcpy(mrow + 3 * xx, &px, 3);
    }
}

/* One RGB row of the horizontal pass, two outputs at a time (for K <= 8
 * taps: no padding to 4): per tap one 4-byte load per output (its RGB and
 * the next byte, which gets coefficient 0) into one 8-lane vector.  Reads
 * 1 byte past the last tap and writes 2 bytes past the row (mid has room:
 * the next row is written after, and the plan adds 64 bytes). */
static inline __attribute__((always_inline, target("avx2"))) void
s_hrow3_pairs_avx2_k(const uint8_t *row, uint8_t *mrow, uint32_t ww, const int *off,
                     const int32_t *kp, const int K)
{
    const __m128i rnd = _mm_set1_epi32(1 << (S_PREC - 1));
    const __m128i sh6 = _mm_setr_epi8(0, 1, 2, 4, 5, 6, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    for (uint32_t xx = 0; xx + 2 <= ww; xx += 2) {
        const uint8_t *s0 = row + off[xx], *s1 = row + off[xx + 1];
        const int32_t *k = kp + (size_t)(xx / 2) * K * 8;
        __m256i a = _mm256_setzero_si256();
        for (int t = 0; t < K; t++) {
            uint32_t u0, u1;
            memcpy(&u0, s0 + 3 * t, 4);
            memcpy(&u1, s1 + 3 * t, 4);
            __m128i v = _mm_unpacklo_epi32(_mm_cvtsi32_si128((int)u0), _mm_cvtsi32_si128((int)u1));
            a = _mm256_add_epi32(a, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(v),
                                                       _mm256_load_si256((const __m256i *)(k + 8 * t))));
        }
        __m128i lo = _mm_srai_epi32(_mm_add_epi32(_mm256_castsi256_si128(a), rnd), S_PREC);
        __m128i hi = _mm_srai_epi32(_mm_add_epi32(_mm256_extracti128_si256(a, 1), rnd), S_PREC);
        __m128i b = _mm_packs_epi32(lo, hi);
        b = _mm_shuffle_epi8(_mm_packus_epi16(b, b), sh6);
        uint64_t q = (uint64_t)_mm_cvtsi128_si64(b);
        memcpy(mrow + 3 * xx, &q, 8);
    }
}

__attribute__((target("avx2"))) static void s_hrow3_pairs_avx2(const uint8_t *row, uint8_t *mrow,
                                                                uint32_t ww, const int *off,
                                                                const int32_t *kp,
                                                                const int32_t *kf, int K)
{
    switch (K) { /* a constant tap count: the loop unrolls */
    case 1: s_hrow3_pairs_avx2_k(row, mrow, ww, off, kp, 1); break;
    case 2: s_hrow3_pairs_avx2_k(row, mrow, ww, off, kp, 2); break;
    case 3: s_hrow3_pairs_avx2_k(row, mrow, ww, off, kp, 3); break;
    case 4: s_hrow3_pairs_avx2_k(row, mrow, ww, off, kp, 4); break;
    case 5: s_hrow3_pairs_avx2_k(row, mrow, ww, off, kp, 5); break;
    case 6: s_hrow3_pairs_avx2_k(row, mrow, ww, off, kp, 6); break;
    case 7: s_hrow3_pairs_avx2_k(row, mrow, ww, off, kp, 7); break;
    default: s_hrow3_pairs_avx2_k(row, mrow, ww, off, kp, 8); break; /* K <= S_KPAIR = 8 */
    }
    if (ww & 1) /* odd width: the last output as the scalar loop does it */
        s_hrow3(row, mrow + 3 * (ww - 1), 1, off + ww - 1, kf + (size_t)(ww - 1) * K, K);
}

/* The pairs kernel with AVX-512 (for K <= 8 taps): two outputs in one
 * 16-lane vector, two taps per 8-byte load (R G B R G B and two bytes that
 * get coefficient 0; with K odd a last tap K of coefficient 0), so about
 * half the loads and multiplies; the two taps' sums of each output are
 * added at the end.  kq: per pair of outputs and pair of taps 16 lanes,
 * k(2j) k(2j) k(2j) k(2j+1) k(2j+1) k(2j+1) 0 0 for each output.  Reads up
 * to 5 bytes past the last tap (in the next row: not for the region's last
 * row) and writes 2 bytes past the row, as the AVX2 pairs kernel. */
static inline __attribute__((always_inline, target("avx2,avx512f,avx512bw"))) void
s_hrow3_pairs_avx512_j(const uint8_t *row, uint8_t *mrow, uint32_t ww, const int *off,
                       const int32_t *kq, const int J)
{
    const __m512i ia = _mm512_setr_epi32(0, 1, 2, 8, 9, 10, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i ib = _mm512_setr_epi32(3, 4, 5, 11, 12, 13, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m256i rnd = _mm256_set1_epi32(1 << (S_PREC - 1));
    for (uint32_t xx = 0; xx + 2 <= ww; xx += 2) {
        const uint8_t *s0 = row + off[xx], *s1 = row + off[xx + 1];
        const int32_t *k = kq + (size_t)(xx / 2) * J * 16;
        __m512i a = _mm512_setzero_si512();
        for (int j = 0; j < J; j++) {
            __m128i v = _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)(s0 + 6 * j)),
                                           _mm_loadl_epi64((const __m128i *)(s1 + 6 * j)));
            a = _mm512_add_epi32(a, _mm512_mullo_epi32(_mm512_cvtepu8_epi32(v),
                                                       _mm512_loadu_si512(k + 16 * j)));
        }
        /* lanes 0-5: the first output's R G B, then the second's */
        __m512i sum =
            _mm512_add_epi32(_mm512_permutexvar_epi32(ia, a), _mm512_permutexvar_epi32(ib, a));
        __m256i r = _mm256_srai_epi32(_mm256_add_epi32(_mm512_castsi512_si256(sum), rnd), S_PREC);
        __m128i b = _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
        b = _mm_packus_epi16(b, b);
        uint64_t q = (uint64_t)_mm_cvtsi128_si64(b);
        memcpy(mrow + 3 * xx, &q, 8);
    }
}

__attribute__((target("avx2,avx512f,avx512bw"))) static void
s_hrow3_pairs_avx512(const uint8_t *row, uint8_t *mrow, uint32_t ww, const int *off,
                     const int32_t *kq, const int32_t *kf, int K)
{
    switch ((K + 1) / 2) { /* a constant tap-pair count: the loop unrolls */
    case 1: s_hrow3_pairs_avx512_j(row, mrow, ww, off, kq, 1); break;
    case 2: s_hrow3_pairs_avx512_j(row, mrow, ww, off, kq, 2); break;
    case 3: s_hrow3_pairs_avx512_j(row, mrow, ww, off, kq, 3); break;
    default: s_hrow3_pairs_avx512_j(row, mrow, ww, off, kq, 4); break; /* K <= S_KPAIR = 8 */
    }
    if (ww & 1) /* odd width: the last output as the scalar loop does it */
        s_hrow3(row, mrow + 3 * (ww - 1), 1, off + ww - 1, kf + (size_t)(ww - 1) * K, K);
}

/* Output row drow[0, n) of the vertical pass: taps rows m + y * mstride,
 * coefficients k[0, ymax). */
__attribute__((target("avx2"))) static void s_vrow_avx2(const uint8_t *m, size_t mstride,
                                                         const int32_t *k, int ymax,
                                                         uint8_t *drow, size_t n)
{
    const __m256i rnd = _mm256_set1_epi32(1 << (S_PREC - 1));
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    size_t x = 0;
    for (; x + 32 <= n; x += 32) {
        __m256i a0 = rnd, a1 = rnd, a2 = rnd, a3 = rnd;
        for (int y = 0; y < ymax; y++) {
            const uint8_t *r = m + (size_t)y * mstride + x;
            __m256i ky = _mm256_set1_epi32(k[y]);
            __m128i v0 = _mm_loadu_si128((const __m128i *)r);
            __m128i v1 = _mm_loadu_si128((const __m128i *)(r + 16));
            a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(v0), ky));
            a1 = _mm256_add_epi32(
                a1, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(v0, v0)), ky));
            a2 = _mm256_add_epi32(a2, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(v1), ky));
            a3 = _mm256_add_epi32(
                a3, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(v1, v1)), ky));
        }
        a0 = _mm256_srai_epi32(a0, S_PREC);
        a1 = _mm256_srai_epi32(a1, S_PREC);
        a2 = _mm256_srai_epi32(a2, S_PREC);
        a3 = _mm256_srai_epi32(a3, S_PREC);
        __m256i b = _mm256_packus_epi16(_mm256_packs_epi32(a0, a1), _mm256_packs_epi32(a2, a3));
        _mm256_storeu_si256((__m256i *)(drow + x), _mm256_permutevar8x32_epi32(b, perm));
    }
    for (; x < n; x++) {
        int acc = 1 << (S_PREC - 1);
        for (int y = 0; y < ymax; y++) acc += m[(size_t)y * mstride + x] * k[y];
        drow[x] = s_clip8(acc);
    }
}
#endif

static eq_status s_check_geom(const eq_resize_geom *g, eq_err *err)
{
    if (g->iw == 0 || g->ih == 0 || g->out_w == 0 || g->out_h == 0 || g->ww == 0 || g->wh == 0 ||
        (uint64_t)g->wx + g->ww > g->out_w || (uint64_t)g->wy + g->wh > g->out_h ||
        !(g->bx1 > g->bx0) || !(g->by1 > g->by0) || g->out_w > 65536 || g->out_h > 65536)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "resize: bad geometry (in %ux%u box %.3f,%.3f-%.3f,%.3f out %ux%u "
                          "window %u,%u+%ux%u)",
                          g->iw, g->ih, (double)g->bx0, (double)g->by0, (double)g->bx1,
                          (double)g->by1, g->out_w, g->out_h, g->wx, g->wy, g->ww, g->wh);
    return EQ_OK;
}

/* Carve the scratch buffer: coefficients for both axes + intermediate. */
typedef struct s_plan {
    s_axis h, v;
    double *dk;
    int32_t *acc;  /* one output row of accumulators */
    int32_t *kfix; /* fixed-length horizontal coefficients (ww x ksize) */
    int *off;      /* their start byte offset in a region row */
    int32_t *kpair; /* kfix of outputs 2i, 2i+1 interleaved: per tap k0 k0 k0 0 k1 k1 k1 0
                     * (AVX2), or as s_hrow3_pairs_avx512's kq */
    uint8_t *mid;
} s_plan;

static eq_status s_plan_make(const eq_resize_geom *g, uint32_t c, s_plan *p, void **tmp,
                             size_t *tmp_cap, eq_err *err)
{
    p->h.ksize = s_ksize((int)g->iw, g->bx0, g->bx1, (int)g->out_w);
    p->v.ksize = s_ksize((int)g->ih, g->by0, g->by1, (int)g->out_h);
    size_t kh = (size_t)g->ww * p->h.ksize, kv = (size_t)g->wh * p->v.ksize;
    size_t kh4 = (size_t)g->ww * (size_t)((p->h.ksize + 3) & ~3); /* kfix: taps padded to 4 */
    /* kpair: per pair of outputs and tap, 8 lanes (the AVX2 pair kernel),
     * or per pair of outputs and pair of taps 16 (AVX-512) */
    /* (the pair kernels run when the outputs' most taps, which may be
     * less than ksize, are at most S_KPAIR) */
    size_t kp = ((size_t)g->ww + 1) / 2 * (size_t)((p->h.ksize < S_KPAIR ? p->h.ksize : S_KPAIR) + 1) * 8;
    size_t kmax = kh > kv ? kh : kv;
    /* rows of the intermediate: at most ih */
    size_t need = kmax * sizeof(double) + (kh + kv) * sizeof(int32_t) +
                  2 * ((size_t)g->ww + g->wh) * sizeof(int) + (size_t)g->ww * c * sizeof(int32_t) +
                  kh4 * sizeof(int32_t) + (size_t)g->ww * sizeof(int) + kp * sizeof(int32_t) + 32 +
                  (size_t)g->ih * g->ww * c + 64;
    if (*tmp_cap < need) {
        void *nt = realloc(*tmp, need);
        if (!nt) return eq_err_set(err, EQ_ERR_NOMEM, "resize: cannot allocate %zu bytes", need);
        *tmp = nt;
        *tmp_cap = need;
    }
    uint8_t *b = *tmp;
    p->dk = (double *)b;
    b += kmax * sizeof(double);
    p->h.k = (int32_t *)b;
    b += kh * sizeof(int32_t);
    p->v.k = (int32_t *)b;
    b += kv * sizeof(int32_t);
    p->h.bounds = (int *)b;
    b += 2 * (size_t)g->ww * sizeof(int);
    p->v.bounds = (int *)b;
    b += 2 * (size_t)g->wh * sizeof(int);
    p->acc = (int32_t *)b;
    b += (size_t)g->ww * c * sizeof(int32_t);
    p->kfix = (int32_t *)b;
    b += kh4 * sizeof(int32_t);
    p->off = (int *)b;
    b += (size_t)g->ww * sizeof(int);
    p->kpair = (int32_t *)(((uintptr_t)b + 31) & ~(uintptr_t)31);
    b = (uint8_t *)(p->kpair + kp);
    p->mid = b;
    s_coeffs((int)g->iw, g->bx0, g->bx1, (int)g->out_w, (int)g->wx, (int)g->ww, &p->h, p->dk);
    s_coeffs((int)g->ih, g->by0, g->by1, (int)g->out_h, (int)g->wy, (int)g->wh, &p->v, p->dk);
    return EQ_OK;
}

void eq_resize_taps(const eq_resize_geom *g, uint32_t *sx0, uint32_t *sy0, uint32_t *sx1,
                    uint32_t *sy1)
{
    /* Same computation as the resize, bounds only. */
    int64_t lo[2], hi[2];
    for (int a = 0; a < 2; a++) {
        int in_size = (int)(a ? g->ih : g->iw);
        float in0 = a ? g->by0 : g->bx0, in1 = a ? g->by1 : g->bx1;
        int out_size = (int)(a ? g->out_h : g->out_w);
        int w0 = (int)(a ? g->wy : g->wx), wn = (int)(a ? g->wh : g->ww);
        double scale, filterscale, support;
        filterscale = scale = (double)(in1 - in0) / out_size;
        if (filterscale < 1.0) filterscale = 1.0;
        support = filterscale;
        lo[a] = in_size;
        hi[a] = 0;
        for (int i = 0; i < wn; i++) {
            double center = in0 + (w0 + i + 0.5) * scale;
            int xmin = (int)(center - support + 0.5);
            if (xmin < 0) xmin = 0;
            int xmax = (int)(center + support + 0.5);
            if (xmax > in_size) xmax = in_size;
            if (xmax > xmin) {
                if (xmin < lo[a]) lo[a] = xmin;
                if (xmax > hi[a]) hi[a] = xmax;
            }
        }
        if (lo[a] > hi[a]) lo[a] = hi[a] = 0;
    }
    *sx0 = g->ix0 + (uint32_t)lo[0];
    *sx1 = g->ix0 + (uint32_t)hi[0];
    *sy0 = g->iy0 + (uint32_t)lo[1];
    *sy1 = g->iy0 + (uint32_t)hi[1];
}

eq_status eq_resize_bilinear(const eq_resize_src *src, const eq_resize_geom *g, uint8_t *dst,
                             void **tmp, size_t *tmp_cap, eq_err *err)
{
    if (s_check_geom(g, err) != EQ_OK) return EQ_ERR_INVALID;
    const uint32_t c = src->c;
    if (c == 0 || c > 4) return eq_err_set(err, EQ_ERR_INVALID, "resize: %u channels", c);
    s_plan p;
    if (s_plan_make(g, c, &p, tmp, tmp_cap, err) != EQ_OK) return EQ_ERR_NOMEM;
    /* Taps in picture coordinates must lie in the source region. */
    int64_t ax0 = (int64_t)g->ix0 + p.h.lo, ax1 = (int64_t)g->ix0 + p.h.hi;
    int64_t ay0 = (int64_t)g->iy0 + p.v.lo, ay1 = (int64_t)g->iy0 + p.v.hi;
    if (ax0 < src->x0 || ax1 > (int64_t)src->x0 + src->w || ay0 < src->y0 ||
        ay1 > (int64_t)src->y0 + src->h)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "resize: taps [%lld,%lld)x[%lld,%lld) outside the source region "
                          "[%u,%u)x[%u,%u)",
                          (long long)ax0, (long long)ax1, (long long)ay0, (long long)ay1, src->x0,
                          src->x0 + src->w, src->y0, src->y0 + src->h);
    const size_t sstride = (size_t)src->w * c;
    const int rows = p.v.hi - p.v.lo;
    const size_t mstride = (size_t)g->ww * c;
    /* Horizontal pass over rows [v.lo, v.hi) of `in`.  RGB with at most
     * S_KFIX taps takes a fixed-length loop: each output's taps are moved
     * to start at off[xx] (kept inside the region) with zero coefficients
     * padding the shift, which adds exactly 0 to PIL's integer sums. */
    /* kh: the most taps any output of the window has (PIL's ksize, the
     * stride of p.h.k, can be one or two more: 5 for a 1.46x downscale
     * whose outputs all have 3 or 4); the fixed-length loops run kh */
    const int ks = p.h.ksize;
    int kh = 1;
    for (uint32_t xx = 0; xx < g->ww; xx++)
        if (p.h.bounds[2 * xx + 1] > kh) kh = p.h.bounds[2 * xx + 1];
    const int kh4 = (kh + 3) & ~3;
    const ptrdiff_t sx = (ptrdiff_t)g->ix0 - (ptrdiff_t)src->x0; /* in's left edge in the region */
    /* AVX2 paths, RGB: two outputs at a time for up to 8 taps (scales up
     * to ~3.5x), else taps padded to kh4 <= 32 (downscales up to ~15x) */
    const int avx2 = S_X86 && c == 3 && s_simd();
    /* (its loads reach 5 bytes into the next row: rows of 3 pixels or more) */
    const int avx512 = avx2 && s_simd() >= 2 && src->w >= 3;
    const int pairs = avx2 && kh <= S_KPAIR && (int64_t)src->w >= kh;
    const int simd = pairs || (avx2 && kh4 <= 32 && (int64_t)src->w >= kh4);
    const int kfl = simd && !pairs ? kh4 : kh; /* taps per output in kfix */
    int fixed = simd || (c == 3 && kh <= S_KFIX && (int64_t)src->w >= kh);
    if (fixed) {
        for (uint32_t xx = 0; xx < g->ww; xx++) {
            int xmin = p.h.bounds[2 * xx], xmax = p.h.bounds[2 * xx + 1];
            ptrdiff_t start = sx + xmin; /* region column of the first tap */
            ptrdiff_t shift = start + kfl > (ptrdiff_t)src->w ? start + kfl - (ptrdiff_t)src->w : 0;
            const int32_t *k = &p.h.k[(size_t)xx * ks];
            int32_t *kf = &p.kfix[(size_t)xx * kfl];
            p.off[xx] = (int)((start - shift) * 3);
            for (int t = 0; t < kfl; t++) {
                ptrdiff_t x = t - shift; /* index into k */
                kf[t] = x >= 0 && x < xmax ? k[x] : 0;
            }
        }
    }
    if (pairs && avx512)
        for (uint32_t xx = 0; xx < g->ww; xx++)
            for (int j = 0; j < (kh + 1) / 2; j++) {
                int32_t *q = &p.kpair[((size_t)(xx / 2) * ((kh + 1) / 2) + j) * 16 + 8 * (xx & 1)];
                int32_t k0 = p.kfix[(size_t)xx * kh + 2 * j];
                int32_t k1 = 2 * j + 1 < kh ? p.kfix[(size_t)xx * kh + 2 * j + 1] : 0;
                q[0] = q[1] = q[2] = k0;
                q[3] = q[4] = q[5] = k1;
                q[6] = q[7] = 0;
            }
    else if (pairs)
        for (uint32_t xx = 0; xx < g->ww; xx++)
            for (int t = 0; t < kh; t++) {
                int32_t *q = &p.kpair[((size_t)(xx / 2) * kh + t) * 8 + 4 * (xx & 1)];
                q[0] = q[1] = q[2] = p.kfix[(size_t)xx * kh + t];
                q[3] = 0;
            }
    for (int r = 0; r < rows; r++) {
        /* in (ix0, iy0) may start left of / above the region held: signed */
        ptrdiff_t sy = (ptrdiff_t)g->iy0 + p.v.lo + r - (ptrdiff_t)src->y0;
        const uint8_t *rrow = src->pix + sy * (ptrdiff_t)sstride;
        uint8_t *mrow = p.mid + (size_t)r * mstride;
#if S_X86
        /* the AVX2 loads read up to 4 bytes past a row's last tap: in the
         * next row, except on the region's last row (scalar there) */
        if (simd && sy + 1 < (ptrdiff_t)src->h) {
            if (pairs && avx512)
                s_hrow3_pairs_avx512(rrow, mrow, g->ww, p.off, p.kpair, p.kfix, kh);
            else if (pairs)
                s_hrow3_pairs_avx2(rrow, mrow, g->ww, p.off, p.kpair, p.kfix, kh);
            else
                s_hrow3_avx2(rrow, mrow, g->ww, p.off, p.kfix, kh4);
            continue;
        }
#endif
        if (simd) {
            s_hrow3(rrow, mrow, g->ww, p.off, p.kfix, kfl);
            continue;
        }
        if (fixed) {
            switch (kh) {
            case 3: s_hrow3(rrow, mrow, g->ww, p.off, p.kfix, 3); break;
            case 5: s_hrow3(rrow, mrow, g->ww, p.off, p.kfix, 5); break;
            case 7: s_hrow3(rrow, mrow, g->ww, p.off, p.kfix, 7); break;
            default: s_hrow3(rrow, mrow, g->ww, p.off, p.kfix, kh); break;
            }
            continue;
        }
        const uint8_t *srow = rrow + sx * (ptrdiff_t)c;
        for (uint32_t xx = 0; xx < g->ww; xx++) {
            int xmin = p.h.bounds[2 * xx], xmax = p.h.bounds[2 * xx + 1];
            const int32_t *k = &p.h.k[(size_t)xx * ks];
            const uint8_t *s = srow + (size_t)xmin * c;
            if (c == 3) {
                int s0 = 1 << (S_PREC - 1), s1 = s0, s2 = s0;
                for (int x = 0; x < xmax; x++, s += 3) {
                    s0 += s[0] * k[x];
                    s1 += s[1] * k[x];
                    s2 += s[2] * k[x];
                }
                mrow[3 * xx] = s_clip8(s0);
                mrow[3 * xx + 1] = s_clip8(s1);
                mrow[3 * xx + 2] = s_clip8(s2);
            } else {
                for (uint32_t ch = 0; ch < c; ch++) {
                    int acc = 1 << (S_PREC - 1);
                    for (int x = 0; x < xmax; x++) acc += s[(size_t)x * c + ch] * k[x];
                    mrow[xx * c + ch] = s_clip8(acc);
                }
            }
        }
    }
    /* Vertical pass, a row at a time: acc[x] += mid[y][x] * k[y] runs over
     * contiguous memory, which the compiler vectorises.  Same sums in the
     * same order as PIL's per-pixel loop (integer adds), so the same bytes. */
    const int kv = p.v.ksize;
    int32_t *acc = p.acc;
    const int vsimd = S_X86 && s_simd();
    (void)vsimd;
    for (uint32_t yy = 0; yy < g->wh; yy++) {
        int ymin = p.v.bounds[2 * yy] - p.v.lo, ymax = p.v.bounds[2 * yy + 1];
        const int32_t *k = &p.v.k[(size_t)yy * kv];
#if S_X86
        if (vsimd) {
            s_vrow_avx2(p.mid + (size_t)ymin * mstride, mstride, k, ymax,
                        dst + (size_t)yy * mstride, mstride);
            continue;
        }
#endif
        for (size_t x = 0; x < mstride; x++) acc[x] = 1 << (S_PREC - 1);
        for (int y = 0; y < ymax; y++) {
            const uint8_t *m = p.mid + (size_t)(ymin + y) * mstride;
            const int32_t ky = k[y];
            for (size_t x = 0; x < mstride; x++) acc[x] += m[x] * ky;
        }
        uint8_t *drow = dst + (size_t)yy * mstride;
        for (size_t x = 0; x < mstride; x++) drow[x] = s_clip8(acc[x]);
    }
    return EQ_OK;
}

/* ------------------------------------------------------------ geometry */

eq_box eq_rrc_params_draws(const eq_draws *d, uint32_t width, uint32_t height, double s0,
                           double s1, double r0, double r1)
{
    /* torchvision 0.14 RandomResizedCrop.get_params, line by line:
     *   area = height * width
     *   log_ratio = torch.log(torch.tensor(ratio))             float32
     *   target_area = area * torch.empty(1).uniform_(*scale)    float32 draw
     *   aspect_ratio = torch.exp(torch.empty(1).uniform_(*log_ratio))
     *   w = int(round(math.sqrt(target_area * aspect_ratio)))
     *   h = int(round(math.sqrt(target_area / aspect_ratio)))
     * torch's uniform_(a, b) on float computes u * (b - a) + a in float with
     * a, b converted to float. */
    eq_box b = {0, 0, (int32_t)height, (int32_t)width};
    const double area = (double)height * (double)width;
    const float fs0 = (float)s0, fs1 = (float)s1;
    const float lr0 = logf((float)r0), lr1 = logf((float)r1);
    for (int attempt = 0; attempt < 10; attempt++) {
        float u = d->uniform(d->ctx);
        float sc = u * (fs1 - fs0) + fs0;
        double target_area = area * (double)sc;
        float u2 = d->uniform(d->ctx);
        float lr = u2 * (lr1 - lr0) + lr0;
        double ar = (double)expf(lr);
        double wf = rint(sqrt(target_area * ar)), hf = rint(sqrt(target_area / ar));
        if (wf > 0 && wf <= width && hf > 0 && hf <= height) {
            int32_t w = (int32_t)wf, h = (int32_t)hf;
            b.top = (int32_t)d->below(d->ctx, height - (uint32_t)h + 1);
            b.left = (int32_t)d->below(d->ctx, width - (uint32_t)w + 1);
            b.height = h;
            b.width = w;
            return b;
        }
    }
    /* Central fallback (Python doubles). */
    double in_ratio = (double)width / (double)height;
    double rmin = r0 < r1 ? r0 : r1, rmax = r0 < r1 ? r1 : r0;
    int32_t w, h;
    if (in_ratio < rmin) {
        w = (int32_t)width;
        h = (int32_t)rint(w / rmin);
    } else if (in_ratio > rmax) {
        h = (int32_t)height;
        w = (int32_t)rint(h * rmax);
    } else {
        w = (int32_t)width;
        h = (int32_t)height;
    }
    /* Python's // floors: (height - h) is >= 0 here except by rounding. */
    b.top = (int32_t)floor(((int64_t)height - h) / 2.0);
    b.left = (int32_t)floor(((int64_t)width - w) / 2.0);
    b.height = h;
    b.width = w;
    return b;
}

static float s_rng_uniform(void *ctx) { return eq_rng_uniform(ctx); }
static uint32_t s_rng_below(void *ctx, uint32_t n) { return eq_rng_below(ctx, n); }

eq_box eq_rrc_params(eq_rng *rng, uint32_t width, uint32_t height, double s0, double s1,
                     double r0, double r1)
{
    eq_draws d = {s_rng_uniform, s_rng_below, rng};
    return eq_rrc_params_draws(&d, width, height, s0, s1, r0, r1);
}

void eq_resize_shorter(uint32_t w, uint32_t h, uint32_t size, uint32_t *ow, uint32_t *oh)
{
    /* torchvision _compute_resized_output_size: new_long = int(size * long / short) */
    if (w <= h) {
        *ow = size;
        *oh = (uint32_t)((double)size * h / w);
    } else {
        *oh = size;
        *ow = (uint32_t)((double)size * w / h);
    }
}

int32_t eq_center_offset(uint32_t n, uint32_t crop)
{
    return (int32_t)rint(((double)n - (double)crop) / 2.0);
}

void eq_hflip(uint8_t *img, uint32_t w, uint32_t h, uint32_t c)
{
    if (c == 3 && w > 1) { /* the train pipeline's case: fixed-size swaps */
        for (uint32_t y = 0; y < h; y++) {
            uint8_t *a = img + (size_t)y * w * 3, *b = a + (size_t)(w - 1) * 3;
            for (; a < b; a += 3, b -= 3) {
                uint8_t t0 = a[0], t1 = a[1], t2 = a[2];
                a[0] = b[0];
                a[1] = b[1];
                a[2] = b[2];
                b[0] = t0;
                b[1] = t1;
                b[2] = t2;
            }
        }
        return;
    }
    for (uint32_t y = 0; y < h; y++) {
        uint8_t *row = img + (size_t)y * w * c;
        for (uint32_t a = 0, b = w - 1; a < b; a++, b--)
            for (uint32_t ch = 0; ch < c; ch++) {
                uint8_t t = row[a * c + ch];
                row[a * c + ch] = row[b * c + ch];
                row[b * c + ch] = t;
            }
    }
}

/* ------------------------------------------------------- colour jitter */

/* PIL's RGB -> L (Convert.c: L24). */
static inline unsigned s_luma(const uint8_t *px)
{
    return (px[0] * 19595u + px[1] * 38470u + px[2] * 7471u + 0x8000u) >> 16;
}

/* PIL Image.blend(a, b, alpha) per channel value, alpha a C float:
 * a + alpha * (b - a) in float, truncated; clipped when alpha is outside
 * [0, 1] (Blend.c). */
static inline uint8_t s_blend(int a, int b, float alpha)
{
    if (alpha >= 0 && alpha <= 1.0f) return (uint8_t)((float)a + alpha * (float)(b - a));
    float t = (float)a + alpha * (float)(b - a);
    if (t <= 0.0f) return 0;
    if (t >= 255.0f) return 255;
    return (uint8_t)t;
}

void eq_color_jitter_apply(uint8_t *img, uint32_t w, uint32_t h, const uint8_t order[3],
                           const float factor[3])
{
    const size_t n = (size_t)w * h;
    for (int k = 0; k < 3; k++) {
        const int op = order[k];
        const float f = factor[op];
        if (op == 0) { /* ImageEnhance.Brightness: blend(black, img, f) */
            for (size_t i = 0; i < 3 * n; i++) img[i] = s_blend(0, img[i], f);
        } else if (op == 1) { /* Contrast: blend(mean grey, img, f) */
            uint64_t sum = 0;
            for (size_t i = 0; i < n; i++) sum += s_luma(img + 3 * i);
            int mean = (int)((double)sum / (double)n + 0.5);
            for (size_t i = 0; i < 3 * n; i++) img[i] = s_blend(mean, img[i], f);
        } else if (op == 2) { /* Color: blend(img as L as RGB, img, f) */
            for (size_t i = 0; i < n; i++) {
                uint8_t *px = img + 3 * i;
                int l = (int)s_luma(px);
                px[0] = s_blend(l, px[0], f);
                px[1] = s_blend(l, px[1], f);
                px[2] = s_blend(l, px[2], f);
            }
        }
    }
}

void eq_color_jitter_params(eq_rng *r, const float strength[3], uint8_t order[3], float factor[3])
{
    /* torchvision ColorJitter.get_params: fn_idx = randperm(4) (hue is
     * never on here, so a permutation of the three), then one uniform
     * factor in [1 - s, 1 + s] per enabled adjustment. */
    uint32_t perm[3] = {0, 1, 2};
    eq_rng_permute(r, perm, 3);
    for (int k = 0; k < 3; k++) {
        order[k] = (uint8_t)perm[k];
        factor[k] = 1.0f;
        if (strength[k] > 0) {
            float lo = 1.0f - strength[k] < 0 ? 0 : 1.0f - strength[k], hi = 1.0f + strength[k];
            factor[k] = eq_rng_uniform(r) * (hi - lo) + lo;
        }
    }
}

/* torchvision adjust_hue on a PIL RGB image: convert("HSV") (Pillow's
 * rgb2hsv, float/double arithmetic as written there), H += uint8(f * 255)
 * modulo 256, convert back (Pillow's hsv2rgb). */
static void s_rgb_to_hsv(const uint8_t *px, uint8_t *hsv)
{
    uint8_t r = px[0], g = px[1], b = px[2];
    uint8_t mx = r > g ? (r > b ? r : b) : (g > b ? g : b);
    uint8_t mn = r < g ? (r < b ? r : b) : (g < b ? g : b);
    hsv[2] = mx;
    if (mx == mn) {
        hsv[0] = hsv[1] = 0;
        return;
    }
    float cr = (float)(mx - mn);
    float sat = cr / (float)mx;
    float rc = (float)(mx - r) / cr, gc = (float)(mx - g) / cr, bc = (float)(mx - b) / cr;
    float hh;
    if (r == mx)
        hh = bc - gc;
    else if (g == mx)
        hh = (float)(2.0 + rc - bc);
    else
        hh = (float)(4.0 + gc - rc);
    hh = (float)fmod(hh / 6.0 + 1.0, 1.0);
    int ih = (int)(hh * 255.0), is = (int)(sat * 255.0);
    hsv[0] = (uint8_t)(ih < 0 ? 0 : ih > 255 ? 255 : ih);
    hsv[1] = (uint8_t)(is < 0 ? 0 : is > 255 ? 255 : is);
}

/* Pillow's CLIP8 */
static inline uint8_t s_pil_clip8(int v) { return (uint8_t)(v <= 0 ? 0 : v < 256 ? v : 255); }

static void s_hsv_to_rgb(const uint8_t *hsv, uint8_t *px)
{
    uint8_t h = hsv[0], sat = hsv[1], v = hsv[2];
    if (sat == 0) {
        px[0] = px[1] = px[2] = v;
        return;
    }
    int i = (int)floor((float)h * 6.0 / 255.0);
    float f = (float)((float)h * 6.0 / 255.0 - (float)i);
    float fs = (float)((float)sat / 255.0);
    uint8_t up = s_pil_clip8((int)round((float)v * (1.0 - fs)));
    uint8_t uq = s_pil_clip8((int)round((float)v * (1.0 - fs * f)));
    uint8_t ut = s_pil_clip8((int)round((float)v * (1.0 - fs * (1.0 - f))));
    switch (i % 6) {
    case 0: px[0] = v, px[1] = ut, px[2] = up; break;
    case 1: px[0] = uq, px[1] = v, px[2] = up; break;
    case 2: px[0] = up, px[1] = v, px[2] = ut; break;
    case 3: px[0] = up, px[1] = uq, px[2] = v; break;
    case 4: px[0] = ut, px[1] = up, px[2] = v; break;
    default: px[0] = v, px[1] = up, px[2] = uq; break;
    }
}

void eq_adjust_hue(uint8_t *img, uint32_t w, uint32_t h, float factor)
{
    /* np.uint8(hue_factor * 255): the double product truncated toward zero,
     * then taken modulo 256 (a negative factor wraps) */
    uint8_t shift = (uint8_t)(int)((double)factor * 255.0);
    const size_t n = (size_t)w * h;
    for (size_t i = 0; i < n; i++) {
        uint8_t hsv[3];
        s_rgb_to_hsv(img + 3 * i, hsv);
        hsv[0] = (uint8_t)(hsv[0] + shift);
        s_hsv_to_rgb(hsv, img + 3 * i);
    }
}

/* AlexNet PCA lighting (the original's Lighting(0.1, eigval, eigvec)). */
void eq_lighting_offset(uint64_t seed, uint32_t split, uint64_t epoch, uint64_t index, float sigma,
                        float rgb[3])
{
    static const double eigval[3] = {0.2175, 0.0188, 0.0045};
    static const double eigvec[3][3] = {{-0.5675, 0.7192, 0.4009},
                                        {-0.5808, -0.0045, -0.8140},
                                        {-0.5836, -0.6948, 0.4203}};
    eq_rng r;
    eq_rng_init(&r, seed, eq_rng_mix(eq_rng_mix(eq_rng_mix(EQ_TAG_LIGHT, split), epoch), index));
    double alpha[3];
    for (int j = 0; j < 3; j++) alpha[j] = sigma * eq_rng_normal(&r);
    for (int i = 0; i < 3; i++) {
        double v = 0;
        for (int j = 0; j < 3; j++) v += eigvec[i][j] * alpha[j] * eigval[j];
        rgb[i] = (float)v;
    }
}
