/*
 * trainer/cpu/conv_direct_bf.c -- the direct convolution's backward
 * filter (see conv_direct.h for the method and its guarantees; the
 * partial-sum layout is in conv_direct.c's header comment).
 */
#include "trainer/cpu/conv_direct_impl.h"

#define S_NC 6                         /* filter: input channels per AVX2 register block */
#define S_NC512 8                      /* filter: input channels per AVX-512 register block */
#define S_NC512W 16                    /* the same, for K <= 16 */
#define S_NC3 8                        /* filter, three taps at once: input channels for K <= 16 */
#define S_NC3W 4                       /* the same, K > 16 (32 output channels per block) */
#define S_BF_CHUNKS 32                 /* filter: slices of the output rows (at most) */
#define S_BF_BUDGET ((size_t)16 << 20) /* filter: bytes of slice partials (at least one) */
#define S_BF_PIX 64                    /* filter: pixels per register-block pass */
#define S_BF_RED 4096                  /* filter: partial elements per reduction task */

/* ---- backward filter ------------------------------------------------------- */

typedef struct s_bf {
    const eq_conv2d_desc *d;
    const float *x, *dy;
    float *part, *dw;
    int64_t kp, nkb, rows, nch, sr, rsc;
    int64_t ncb, nunit, ngroup; /* input channels per unit, units, groups per slice */
    int isa;  /* s_isa() */
    int t3;   /* units hold a kernel row's three taps (s_bf_t3) */
} s_bf;

/* One register block: acc[i][j] (row stride kp) += sum over the output rows
 * [row0, row1) and columns [qlo, qhi) of x[n][p+r-pad_h][q+s-pad_w][cb+i] *
 * dy[n][p][q][k0+j], i < nc, j < kr, one fmaf chain per element with the
 * pixels in order. */
typedef struct s_bfblk {
    int64_t row0, row1, r, s, qlo, qhi, cb, k0;
    int nc, kr;
    float *acc;
} s_bfblk;

static void s_bf_block_generic(const s_bf *b, const s_bfblk *k)
{
    const eq_conv2d_desc *d = b->d;
    const int64_t C = d->c, K = d->k;
    for (int i = 0; i < k->nc; i++)
        for (int j = 0; j < k->kr; j++) {
            float a = k->acc[i * b->kp + j];
            for (int64_t row = k->row0; row < k->row1; row++) {
                int64_t n = row / d->p, p = row % d->p, ih = p * d->stride_h + k->r - d->pad_h;
                if (ih < 0 || ih >= d->h) continue;
                const float *xr =
                    b->x + ((n * d->h + ih) * d->w + k->qlo * d->stride_w + k->s - d->pad_w) * C +
                    k->cb + i;
                const float *dr = b->dy + (row * d->q + k->qlo) * K + k->k0 + j;
                for (int64_t t = 0; t < k->qhi - k->qlo; t++)
                    a = fmaf(xr[t * C * d->stride_w], dr[t * K], a);
            }
            k->acc[i * b->kp + j] = a;
        }
}

#if S_X86
/* NC input channels (constant after inlining) x 16 output channels, in
 * named accumulators (GCC keeps an indexed array of vectors on the stack). */
#define S_BF_LOAD(i)                                                                    \
    __m256 a##i##0 = NC > i ? _mm256_loadu_ps(k->acc + i * kp) : _mm256_setzero_ps();   \
    __m256 a##i##1 = NC > i ? _mm256_loadu_ps(k->acc + i * kp + 8) : _mm256_setzero_ps()
#define S_BF_FMA(i)                                                                     \
    if (NC > i) {                                                                       \
        __m256 v = _mm256_broadcast_ss(xr + i);                                         \
        a##i##0 = _mm256_fmadd_ps(v, g0, a##i##0);                                      \
        a##i##1 = _mm256_fmadd_ps(v, g1, a##i##1);                                      \
    }
#define S_BF_STORE(i)                                                                   \
    if (NC > i) {                                                                       \
        _mm256_storeu_ps(k->acc + i * kp, a##i##0);                                     \
        _mm256_storeu_ps(k->acc + i * kp + 8, a##i##1);                                 \
    }

S_TGT S_INLINE void s_bf_block_avx2_nc(const s_bf *b, const s_bfblk *k, const int NC)
{
    const eq_conv2d_desc *d = b->d;
    const int64_t C = d->c, K = d->k, kp = b->kp, xst = C * d->stride_w;
    S_BF_LOAD(0);
    S_BF_LOAD(1);
    S_BF_LOAD(2);
    S_BF_LOAD(3);
    S_BF_LOAD(4);
    S_BF_LOAD(5);
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(k->kr), idx);
    const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(k->kr - 8), idx);
    const int full = k->kr == S_KB;
    const int64_t nq = k->qhi - k->qlo;
    for (int64_t row = k->row0; row < k->row1; row++) {
        int64_t n = row / d->p, p = row % d->p, ih = p * d->stride_h + k->r - d->pad_h;
        if (ih < 0 || ih >= d->h) continue;
        const float *xr = b->x +
                          ((n * d->h + ih) * d->w + k->qlo * d->stride_w + k->s - d->pad_w) * C +
                          k->cb;
        const float *dr = b->dy + (row * d->q + k->qlo) * K + k->k0;
        if (full) {
            for (int64_t t = 0; t < nq; t++, xr += xst, dr += K) {
                __m256 g0 = _mm256_loadu_ps(dr), g1 = _mm256_loadu_ps(dr + 8);
                S_BF_FMA(0) S_BF_FMA(1) S_BF_FMA(2) S_BF_FMA(3) S_BF_FMA(4) S_BF_FMA(5)
            }
        } else {
            for (int64_t t = 0; t < nq; t++, xr += xst, dr += K) {
                __m256 g0 = _mm256_maskload_ps(dr, m0), g1 = _mm256_maskload_ps(dr + 8, m1);
                S_BF_FMA(0) S_BF_FMA(1) S_BF_FMA(2) S_BF_FMA(3) S_BF_FMA(4) S_BF_FMA(5)
            }
        }
    }
    S_BF_STORE(0) S_BF_STORE(1) S_BF_STORE(2) S_BF_STORE(3) S_BF_STORE(4) S_BF_STORE(5)
}

S_TGT static void s_bf_block_avx2(const s_bf *b, const s_bfblk *k)
{
    switch (k->nc) {
    case 1: s_bf_block_avx2_nc(b, k, 1); break;
    case 2: s_bf_block_avx2_nc(b, k, 2); break;
    case 3: s_bf_block_avx2_nc(b, k, 3); break;
    case 4: s_bf_block_avx2_nc(b, k, 4); break;
    case 5: s_bf_block_avx2_nc(b, k, 5); break;
    default: s_bf_block_avx2_nc(b, k, 6); break;
    }
}

/* AVX-512: NC (<= 8) input channels x 32 output channels (KB2: the
 * block's kr > 16), or NC (<= 16) x 16, in up to 16 zmm accumulators
 * a0..a7, b0..b7 (b##i: output channels 16..31 of input channel i, or
 * input channel 8 + i).  Channels past kr load as zeros, so their (padded)
 * partial columns stay zero as in the AVX2 kernel.  With K <= 16, 8 x 16
 * (8 accumulators: two per FMA latency) ran ResNet-20's layer1 backward
 * filter ~17 % slower than 16 x 16. */
#define S_BL512(i)                                                                        \
    __m512 a##i = NC > i ? _mm512_loadu_ps(k->acc + i * kp) : _mm512_setzero_ps();        \
    __m512 b##i = KB2 && NC > i       ? _mm512_loadu_ps(k->acc + i * kp + S_KB)           \
                  : !KB2 && NC > i + 8 ? _mm512_loadu_ps(k->acc + (i + 8) * kp)           \
                                       : _mm512_setzero_ps()
#define S_BF512(i)                                                                        \
    if (NC > i) a##i = _mm512_fmadd_ps(_mm512_set1_ps(xr[i]), g0, a##i);                   \
    if (KB2 && NC > i) b##i = _mm512_fmadd_ps(_mm512_set1_ps(xr[i]), g1, b##i);            \
    if (!KB2 && NC > i + 8) b##i = _mm512_fmadd_ps(_mm512_set1_ps(xr[i + 8]), g0, b##i);
#define S_BS512(i)                                                                        \
    if (NC > i) _mm512_storeu_ps(k->acc + i * kp, a##i);                                  \
    if (KB2 && NC > i) _mm512_storeu_ps(k->acc + i * kp + S_KB, b##i);                    \
    if (!KB2 && NC > i + 8) _mm512_storeu_ps(k->acc + (i + 8) * kp, b##i);

S_TGT512 S_INLINE void s_bf_block512_nc(const s_bf *b, const s_bfblk *k, const int NC,
                                        const int KB2)
{
    const eq_conv2d_desc *d = b->d;
    const int64_t C = d->c, K = d->k, kp = b->kp, xst = C * d->stride_w;
    S_BL512(0);
    S_BL512(1);
    S_BL512(2);
    S_BL512(3);
    S_BL512(4);
    S_BL512(5);
    S_BL512(6);
    S_BL512(7);
    __mmask16 m0, m1;
    s_mask2(k->kr, &m0, &m1);
    const int64_t nq = k->qhi - k->qlo;
    for (int64_t row = k->row0; row < k->row1; row++) {
        int64_t n = row / d->p, p = row % d->p, ih = p * d->stride_h + k->r - d->pad_h;
        if (ih < 0 || ih >= d->h) continue;
        const float *xr = b->x +
                          ((n * d->h + ih) * d->w + k->qlo * d->stride_w + k->s - d->pad_w) * C +
                          k->cb;
        const float *dr = b->dy + (row * d->q + k->qlo) * K + k->k0;
        for (int64_t t = 0; t < nq; t++, xr += xst, dr += K) {
            __m512 g0 = _mm512_maskz_loadu_ps(m0, dr);
            __m512 g1 = KB2 ? _mm512_maskz_loadu_ps(m1, dr + S_KB) : g0;
            S_BF512(0) S_BF512(1) S_BF512(2) S_BF512(3)
            S_BF512(4) S_BF512(5) S_BF512(6) S_BF512(7)
        }
    }
    S_BS512(0) S_BS512(1) S_BS512(2) S_BS512(3) S_BS512(4) S_BS512(5) S_BS512(6) S_BS512(7)
}

/* AVX-512, the three taps of a kernel row at once (3-wide kernels, stride
 * 1 in w, pad 1: ResNet's 3x3s): x pixel iw meets dy pixels iw + 1, iw and
 * iw - 1 through taps s = 0, 1, 2, so each broadcast of x serves three
 * FMAs with dy vectors kept in registers (the per-tap kernel above loads
 * one broadcast per FMA, which bound it by loads).  NC (<= 8) input
 * channels x 16 output channels (NV 1) or NC (<= 4) x 32 (NV 2) per tap:
 * up to 24 zmm accumulators a<s><i> (vector 0) and b<s><i> (vector 1).
 * Each element's chain still runs over the rows, then q, in order: the
 * same bits as the per-tap kernels. */
#define S_T3L(s, i)                                                                          \
    __m512 a##s##i = NC > i ? _mm512_loadu_ps(acc + ((s) * C + (i)) * kp) : _mm512_setzero_ps(); \
    __m512 b##s##i = NV > 1 && NC > i ? _mm512_loadu_ps(acc + ((s) * C + (i)) * kp + S_KB)      \
                                     : _mm512_setzero_ps()
#define S_T3S(s, i)                                                                          \
    if (NC > i) _mm512_storeu_ps(acc + ((s) * C + (i)) * kp, a##s##i);                       \
    if (NV > 1 && NC > i) _mm512_storeu_ps(acc + ((s) * C + (i)) * kp + S_KB, b##s##i);
/* taps in `t` (bit s: tap s), x channel i (in xv) */
#define S_T3F(i, t)                                                                          \
    if (NC > i) {                                                                            \
        const __m512 xv = _mm512_set1_ps(xr[i]);                                             \
        if ((t) & 1) a0##i = _mm512_fmadd_ps(xv, gp0, a0##i);                                \
        if ((t) & 2) a1##i = _mm512_fmadd_ps(xv, gc0, a1##i);                                \
        if ((t) & 4) a2##i = _mm512_fmadd_ps(xv, gm0, a2##i);                                \
        if (NV > 1 && ((t) & 1)) b0##i = _mm512_fmadd_ps(xv, gp1, b0##i);                    \
        if (NV > 1 && ((t) & 2)) b1##i = _mm512_fmadd_ps(xv, gc1, b1##i);                    \
        if (NV > 1 && ((t) & 4)) b2##i = _mm512_fmadd_ps(xv, gm1, b2##i);                    \
    }
#define S_T3PIX(t)                                                                           \
    S_T3F(0, t) S_T3F(1, t) S_T3F(2, t) S_T3F(3, t) S_T3F(4, t) S_T3F(5, t) S_T3F(6, t)      \
    S_T3F(7, t)
#define S_T3ALL(M) M(0, 0) M(0, 1) M(0, 2) M(0, 3) M(0, 4) M(0, 5) M(0, 6) M(0, 7) \
    M(1, 0) M(1, 1) M(1, 2) M(1, 3) M(1, 4) M(1, 5) M(1, 6) M(1, 7) \
    M(2, 0) M(2, 1) M(2, 2) M(2, 3) M(2, 4) M(2, 5) M(2, 6) M(2, 7)
#define S_T3LS(s, i) S_T3L(s, i);

#define S_T3LD(m, p) (FULL ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p))

/* FULL: all 16 * NV output channels are there (unmasked loads of dy, which
 * ran the loop ~15 % faster than masked ones) */
S_TGT512 S_INLINE void s_bf_t3_nc(const s_bf *b, const s_bfblk *k, const int NC, const int NV,
                                  const int FULL)
{
    const eq_conv2d_desc *d = b->d;
    const int64_t C = d->c, K = d->k, kp = b->kp, W = d->w;
    float *acc = k->acc;
    S_T3ALL(S_T3LS)
    __mmask16 m0, m1;
    s_mask2(k->kr, &m0, &m1);
    for (int64_t row = k->row0; row < k->row1; row++) {
        int64_t n = row / d->p, p = row % d->p, ih = p * d->stride_h + k->r - d->pad_h;
        if (ih < 0 || ih >= d->h) continue;
        const float *xr = b->x + (n * d->h + ih) * W * C + k->cb;
        const float *dr = b->dy + row * d->q * K + k->k0;
        /* iw = 0: taps 0 (dy pixel 1) and 1 (dy pixel 0) */
        __m512 gc0 = S_T3LD(m0, dr), gp0 = S_T3LD(m0, dr + K);
        __m512 gc1 = NV > 1 ? S_T3LD(m1, dr + S_KB) : gc0;
        __m512 gp1 = NV > 1 ? S_T3LD(m1, dr + K + S_KB) : gp0;
        __m512 gm0 = gc0, gm1 = gc1;
        S_T3PIX(3)
        xr += C;
        for (int64_t iw = 1; iw < W - 1; iw++, xr += C) {
            gm0 = gc0, gc0 = gp0, gm1 = gc1, gc1 = gp1;
            gp0 = S_T3LD(m0, dr + (iw + 1) * K);
            if (NV > 1) gp1 = S_T3LD(m1, dr + (iw + 1) * K + S_KB);
            S_T3PIX(7)
        }
        /* iw = W - 1: taps 1 (dy pixel W - 1) and 2 (dy pixel W - 2) */
        gm0 = gc0, gc0 = gp0, gm1 = gc1, gc1 = gp1;
        S_T3PIX(6)
    }
    S_T3ALL(S_T3S)
}

/* One switch over k->nc per (NV, FULL), so every call has constant
 * arguments and s_bf_t3_nc is specialised for it. */
#define S_T3C(nc, nv, full) \
    case nc: s_bf_t3_nc(b, k, nc, nv, full); break;
#define S_T3_NC4(nv, full) \
    switch (k->nc) { S_T3C(1, nv, full) S_T3C(2, nv, full) S_T3C(3, nv, full) default: S_T3C(4, nv, full) }
#define S_T3_NC8(nv, full)                                                                   \
    switch (k->nc) {                                                                         \
        S_T3C(1, nv, full) S_T3C(2, nv, full) S_T3C(3, nv, full) S_T3C(4, nv, full)          \
        S_T3C(5, nv, full) S_T3C(6, nv, full) S_T3C(7, nv, full) default: S_T3C(8, nv, full) \
    }

/* k->nc channels from k->cb, all three taps of row k->r, output channels
 * from k->k0 (k->kr left: more than 16 takes 32, and k->nc <= 4). */
S_TGT512 static void s_bf_t3(const s_bf *b, const s_bfblk *k)
{
    if (k->kr >= 2 * S_KB) S_T3_NC4(2, 1)
    else if (k->kr > S_KB) S_T3_NC4(2, 0)
    else if (k->kr == S_KB) S_T3_NC8(1, 1)
    else S_T3_NC8(1, 0)
}

#define S_BF512_CASE(nc)                                     \
    case nc:                                                 \
        if (k->kr > S_KB) s_bf_block512_nc(b, k, nc, 1);     \
        else s_bf_block512_nc(b, k, nc, 0);                  \
        break;
#define S_BF512_CASEW(nc)                                    \
    case nc: s_bf_block512_nc(b, k, nc, 0); break;

/* k->kr: output channels left from k->k0 (more than 16: 32 of them, and
 * k->nc <= 8). */
S_TGT512 static void s_bf_block512(const s_bf *b, const s_bfblk *k)
{
    if (k->nc > S_NC512) {
        switch (k->nc) {
            S_BF512_CASEW(9)
            S_BF512_CASEW(10)
            S_BF512_CASEW(11)
            S_BF512_CASEW(12)
            S_BF512_CASEW(13)
            S_BF512_CASEW(14)
            S_BF512_CASEW(15)
            default:
            S_BF512_CASEW(16)
        }
        return;
    }
    switch (k->nc) {
        S_BF512_CASE(1)
        S_BF512_CASE(2)
        S_BF512_CASE(3)
        S_BF512_CASE(4)
        S_BF512_CASE(5)
        S_BF512_CASE(6)
        S_BF512_CASE(7)
        default:
        S_BF512_CASE(8)
    }
}
#endif

/* Task i: slice i / ngroup of the output rows, units [u0, u1) of its
 * partial [R][S][C][KP] for group i % ngroup, where a unit is one tap
 * (r, s) and one block of ncb input channels (all output channels).  Each
 * element's chain runs over the slice's pixels in order, however the units
 * are grouped. */
static void s_bf_task(void *vctx, size_t i)
{
    const s_bf *b = vctx;
    const eq_conv2d_desc *d = b->d;
    const int64_t ch = (int64_t)i / b->ngroup, g = (int64_t)i % b->ngroup;
    float *part = b->part + ch * b->rsc * b->kp;
    const int64_t u0 = b->nunit * g / b->ngroup, u1 = b->nunit * (g + 1) / b->ngroup;
    const int64_t r0 = b->rows * ch / b->nch, r1 = b->rows * (ch + 1) / b->nch;
    const int64_t ncbk = (d->c + b->ncb - 1) / b->ncb, kstep = b->isa == 2 ? 2 : 1;
    const int64_t tpu = b->t3 ? d->s : 1; /* taps per unit */
    for (int64_t u = u0; u < u1; u++) {
        int64_t rs = u / ncbk * tpu, cb = (u % ncbk) * b->ncb;
        for (int64_t t = 0; t < tpu; t++)
            memset(part + ((rs + t) * d->c + cb) * b->kp, 0,
                   (size_t)(s_min(b->ncb, d->c - cb) * b->kp) * sizeof *part);
    }
    for (int64_t sub = r0; sub < r1; sub += b->sr) {
        s_bfblk k = {.row0 = sub, .row1 = s_min(r1, sub + b->sr)};
#if S_X86
        if (b->t3) {
            for (int64_t u = u0; u < u1; u++) {
                k.r = u / ncbk, k.s = 0, k.cb = (u % ncbk) * b->ncb;
                k.nc = (int)s_min(b->ncb, d->c - k.cb);
                for (int64_t kb = 0; kb < b->nkb; kb += 2) {
                    k.k0 = kb * S_KB;
                    k.kr = (int)(d->k - k.k0);
                    k.acc = part + (k.r * d->s * d->c + k.cb) * b->kp + k.k0;
                    s_bf_t3(b, &k);
                }
            }
            continue;
        }
#endif
        for (int64_t u = u0; u < u1; u++) {
            const int64_t rs = u / ncbk;
            k.r = rs / d->s, k.s = rs % d->s, k.cb = (u % ncbk) * b->ncb;
            /* columns whose tap q*stride + s - pad_w lies inside the input */
            const int64_t sw = d->stride_w, lo = d->pad_w - k.s, hi = d->w - 1 + d->pad_w - k.s;
            k.qlo = lo > 0 ? (lo + sw - 1) / sw : 0;
            k.qhi = hi < 0 ? 0 : s_min(d->q, hi / sw + 1);
            if (k.qlo >= k.qhi) continue;
            k.nc = (int)s_min(b->ncb, d->c - k.cb);
            for (int64_t kb = 0; kb < b->nkb; kb += kstep) {
                k.k0 = kb * S_KB;
                k.acc = part + (rs * d->c + k.cb) * b->kp + k.k0;
#if S_X86
                if (b->isa == 2) {
                    k.kr = (int)(d->k - k.k0); /* all that is left */
                    s_bf_block512(b, &k);
                    continue;
                }
#endif
                k.kr = (int)s_min(S_KB, d->k - k.k0);
#if S_X86
                if (b->isa == 1) {
                    s_bf_block_avx2(b, &k);
                    continue;
                }
#endif
                s_bf_block_generic(b, &k);
            }
        }
    }
}

/* Elements [i*S_BF_RED, ...) of partial 0 += those of partials 1.. in
 * slice order (contiguous runs: the partials are read once, in order). */
static void s_bf_reduce(void *vctx, size_t i)
{
    const s_bf *b = vctx;
    const int64_t total = b->rsc * b->kp, e0 = (int64_t)i * S_BF_RED;
    const int64_t len = s_min(S_BF_RED, total - e0);
    float *restrict acc = b->part + e0;
    for (int64_t ch = 1; ch < b->nch; ch++) {
        const float *restrict src = b->part + ch * total + e0;
        for (int64_t j = 0; j < len; j++) acc[j] += src[j];
    }
}

/* dw[k] (OIHW) from the summed partial [R][S][C][KP]. */
static void s_bf_unpack(void *vctx, size_t ki)
{
    const s_bf *b = vctx;
    const eq_conv2d_desc *d = b->d;
    const int64_t k = (int64_t)ki, rs = d->r * d->s;
    float *dwk = b->dw + k * d->c * rs;
    for (int64_t t = 0; t < rs; t++)
        for (int64_t c = 0; c < d->c; c++) dwk[c * rs + t] = b->part[(t * d->c + c) * b->kp + k];
}

eq_status eq_cpu_conv_direct_bwd_filter(eq_cpu *cpu, const eq_conv2d_desc *d, const float *x,
                                        const float *dy, float *dw, int kernels, eq_err *err)
{
    s_bf b = {.d = d, .x = x, .dy = dy, .dw = dw, .isa = s_isa(kernels)};
    b.nkb = (d->k + S_KB - 1) / S_KB;
    b.kp = b.nkb * S_KB;
    b.rsc = d->r * d->s * d->c;
    b.rows = d->n * d->p;
    /* row slices: up to S_BF_CHUNKS, their partials within S_BF_BUDGET;
     * few slices (wide layers) are cut further into groups of units so
     * that there are about S_BF_CHUNKS tasks */
    const size_t pbytes = (size_t)(b.rsc * b.kp) * sizeof(float);
    int64_t fit = (int64_t)(S_BF_BUDGET / pbytes);
    b.nch = s_min(s_min(S_BF_CHUNKS, b.rows), fit < 1 ? 1 : fit);
#if S_X86
    b.t3 = b.isa == 2 && d->s == 3 && d->stride_w == 1 && d->pad_w == 1 && d->w >= 2;
#endif
    b.ncb = b.t3 ? (d->k <= S_KB ? S_NC3 : S_NC3W) : b.isa < 2 ? S_NC : d->k <= S_KB ? S_NC512W : S_NC512;
    b.nunit = d->r * (b.t3 ? 1 : d->s) * ((d->c + b.ncb - 1) / b.ncb);
    b.ngroup = s_min(b.nunit, (S_BF_CHUNKS + b.nch - 1) / b.nch);
    b.sr = (S_BF_PIX + d->q - 1) / d->q;
    float *ws = eq_cpu_workspace(cpu, (size_t)(b.nch * b.rsc * b.kp) * sizeof(float),
                                 "conv2d_bwd_filter", err);
    if (!ws) return EQ_ERR_NOMEM;
    b.part = ws;
    eq_cpu_for(cpu, (size_t)(b.nch * b.ngroup), s_bf_task, &b);
    const int64_t total = b.rsc * b.kp;
    eq_cpu_for(cpu, (size_t)((total + S_BF_RED - 1) / S_BF_RED), s_bf_reduce, &b);
    eq_cpu_for(cpu, (size_t)d->k, s_bf_unpack, &b);
    return EQ_OK;
}
