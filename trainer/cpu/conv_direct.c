/*
 * trainer/cpu/conv_direct.c -- direct NHWC convolution for stride-1 and
 * stride-2 layers (see conv_direct.h for the method and its guarantees).
 *
 * Layouts in the workspace:
 *   wp   weight panels per job [KB][ntap][C][16]: output channels in blocks
 *        of 16 (the last one zero-padded), so the micro-kernel loads two
 *        8-lane vectors (one with AVX-512) per (tap, c);
 *   scr  per worker, one zero-padded image [phases][Hh][Wh][C] (stride 1:
 *        one phase, [Hp][Wp]): a task pads just the rows its band of
 *        outputs reads (only those its worker's scratch lacks when the
 *        worker's previous task was on the same image: s_fwd's held) and
 *        computes the band from there while those rows are in its core's
 *        L1/L2 (no batch-sized padded copy written to
 *        memory and read back, no pass and barrier before the compute);
 *   part the filter gradient's per-slice partial sums [nch][R][S][C][KP],
 *        KP = K rounded up to 16.
 */
#include "trainer/cpu/conv_direct_impl.h"

int eq_cpu_conv_direct_ok(const eq_conv2d_desc *d)
{
    return d->groups == 1 && d->stride_h >= 1 && d->stride_h <= 2 && d->stride_w >= 1 &&
           d->stride_w <= 2 && d->dil_h == 1 && d->dil_w == 1 && d->pad_h <= d->r - 1 &&
           d->pad_w <= d->s - 1 && !(d->r == 1 && d->s == 1) && d->r * d->s <= S_MAXTAP &&
           d->c <= EQ_CPU_DIRECT_MAX_C && d->k <= EQ_CPU_DIRECT_MAX_K &&
           (d->stride_h * d->stride_w == 1 ||
            (d->c <= EQ_CPU_DIRECT_MAX_S2 && d->k <= EQ_CPU_DIRECT_MAX_S2 && d->r <= 3 &&
             d->s <= 3));
}

/* ---- forward (and backward data) ----------------------------------------- */

/* A job: one convolution over the padded image's flat pixel grid.  The
 * forward is one job; the backward data of a stride-2 convolution is one
 * job per phase of dx (rows and columns of one parity each), each a
 * stride-1 convolution of the padded dy with the taps of that phase. */
typedef struct s_job {
    const float *wp;        /* weight panels [KB][ntap][C][16] */
    int64_t ntap;           /* taps, in chain order (0: the outputs are zero) */
    int64_t toff[S_MAXTAP]; /* tap t of flat pixel j reads the padded image at j*C + toff[t] */
    /* Each output's sum of ntap*C terms runs as nblk FMA chains, each from
     * zero, added in order to the running total: one chain when ntap*C <=
     * S_CHAIN1 (CIFAR ResNet's 3x3s up to 64 channels), else chains of at
     * most S_CHAIN terms: blocks of tpb whole taps (C <= S_CHAIN) or one
     * tap's cpb-channel slices.  One chain of 4608 terms (3x3, 512
     * channels) has ~4x the error vs float64 of im2col + OpenBLAS (whose
     * K blocks are short chains added to C); chains of 64 terms have less. */
    int64_t tpb, cpb, nblk;
    int64_t p, q;           /* output grid: p rows of q pixels (flat row width: s_fwd's wh) */
    int64_t y0, yp, yq;     /* grid pixel (i, j) is output element y0 + i*yp + j*yq of an image */
    int64_t rt, tpi;        /* grid rows per task, tasks per image */
    int64_t rlo, rhi;       /* grid rows [p0, p1) read padded rows [p0 + rlo, p1 + rhi) */
} s_job;

typedef struct s_fwd {
    const float *x;       /* [N][H][W][C] */
    float *scr, *y;       /* scr: per-worker padded images (scrf floats apart); y: [N][..][K] */
    int64_t scrf;
    int64_t h, w, c, k, nkb;
    /* Padded image: the input with plh zero rows above and plw zero
     * columns left (and zeros below and right), split into nph x npw
     * phase images of hh x wh pixels, phase (a, b) holding padded pixels
     * (i*sh + a, j*sw + b): a stride-sh convolution's tap (r, s) is then
     * a stride-1 tap of phase (r % sh, s % sw).  Stride 1: one phase. */
    int64_t plh, plw, sh, sw, nph, npw, hh, wh;
    int64_t img, yimg;    /* floats per padded image (all phases), per output image */
    int64_t njob, tpimg;  /* jobs, tasks per image (all jobs) */
    /* per worker: {image, r0, r1}, the rows [r0, r1) of that image's padded
     * copy its scratch holds (image -1: none).  Every job pads the same
     * image layout, so a worker's next task on that image (another band,
     * or the backward data's next phase job) pads only the rows it lacks. */
    int64_t *held;
    s_job job[S_MAXJOB];
    int isa;              /* s_isa() */
} s_fwd;

/* Rows [r0, r1) of every phase of image n's padded copy into dst (a
 * whole padded image's layout; other rows untouched). */
static void s_pad_rows(const s_fwd *f, int64_t n, float *dst, int64_t r0, int64_t r1)
{
    const int64_t C = f->c, rowf = f->wh * C;
    const float *src = f->x + n * f->h * f->w * C;
    r0 = r0 < 0 ? 0 : r0;
    r1 = s_min(r1, f->hh);
    for (int64_t a = 0; a < f->nph; a++)
        for (int64_t b = 0; b < f->npw; b++) {
            float *ph = dst + (a * f->npw + b) * f->hh * rowf;
            for (int64_t ii = r0; ii < r1; ii++) {
                float *drow = ph + ii * rowf;
                const int64_t ih = ii * f->sh + a - f->plh;
                if (ih < 0 || ih >= f->h) {
                    memset(drow, 0, (size_t)rowf * sizeof *drow);
                    continue;
                }
                const float *srow = src + ih * f->w * C;
                if (f->sw == 1) { /* plw zeros, the row, zeros */
                    memset(drow, 0, (size_t)(f->plw * C) * sizeof *drow);
                    memcpy(drow + f->plw * C, srow, (size_t)(f->w * C) * sizeof *drow);
                    memset(drow + (f->plw + f->w) * C, 0,
                           (size_t)((f->wh - f->plw - f->w) * C) * sizeof *drow);
                    continue;
                }
                for (int64_t jj = 0; jj < f->wh; jj++) {
                    const int64_t iw = jj * f->sw + b - f->plw;
                    if (iw < 0 || iw >= f->w) memset(drow + jj * C, 0, (size_t)C * sizeof *drow);
                    else memcpy(drow + jj * C, srow + iw * C, (size_t)C * sizeof *drow);
                }
            }
        }
}

/* dst[t][0..kr) = sum over (r, s, c) of xb[off[t] + (r*Wp + s)*C + c] * panel:
 * per block (s_fwd's tpb, cpb) one fmaf chain in (r, s, c) order from
 * zero, the blocks' sums added in order to a total from zero (one block:
 * the chain is the sum); dst[t] NULL: skipped. */
static void s_fwd_block_generic(const s_fwd *f, const s_job *jb, const float *xb,
                                const int64_t off[S_NQ512], const float *wpk,
                                float *const dst[S_NQ512], int kr)
{
    const int64_t C = f->c, RS = jb->ntap;
    for (int t = 0; t < S_NQ; t++) {
        if (!dst[t]) continue;
        for (int j = 0; j < kr; j++) {
            float tot = 0.0f;
            for (int64_t t0 = 0; t0 < RS; t0 += jb->tpb)
                for (int64_t c0 = 0; c0 < C; c0 += jb->cpb) {
                    const int64_t t1 = s_min(RS, t0 + jb->tpb), c1 = s_min(C, c0 + jb->cpb);
                    float acc = 0.0f;
                    for (int64_t tap = t0; tap < t1; tap++) {
                        const float *xs = xb + jb->toff[tap] + off[t];
                        const float *ws = wpk + tap * C * S_KB + j;
                        for (int64_t c = c0; c < c1; c++) acc = fmaf(xs[c], ws[c * S_KB], acc);
                    }
                    tot = jb->nblk == 1 ? acc : tot + acc;
                }
            dst[t][j] = tot;
        }
    }
}

#if S_X86
S_TGT S_INLINE void s_store16(float *dst, __m256 lo, __m256 hi, int kr)
{
    if (kr == S_KB) {
        _mm256_storeu_ps(dst, lo);
        _mm256_storeu_ps(dst + 8, hi);
        return;
    }
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_maskstore_ps(dst, _mm256_cmpgt_epi32(_mm256_set1_epi32(kr), idx), lo);
    _mm256_maskstore_ps(dst + 8, _mm256_cmpgt_epi32(_mm256_set1_epi32(kr - 8), idx), hi);
}

/* Block (t0, c0)'s chains are done (accumulators a##t): add them to the
 * totals tot[t] (zero before the first block) and restart from zero; after
 * the last block the sums stay in the accumulators to be stored.  One
 * block (BLOCKED 0): the chain is the sum, no totals. */
#define S_FOLD2(t)                                                                      \
    do {                                                                                \
        if (!BLOCKED) break;                                                            \
        a##t##0 = _mm256_add_ps(_mm256_load_ps(tot[t]), a##t##0);                       \
        a##t##1 = _mm256_add_ps(_mm256_load_ps(tot[t] + 8), a##t##1);                   \
        if (last) break;                                                                \
        _mm256_store_ps(tot[t], a##t##0);                                               \
        _mm256_store_ps(tot[t] + 8, a##t##1);                                           \
        a##t##0 = a##t##1 = _mm256_setzero_ps();                                        \
    } while (0)

/* The same sums as s_fwd_block_generic: 6 pixels x 16 channels in 12
 * accumulators, one FMA per (r, s, c) each, the blocks' chains folded into
 * the totals in the same order. */
S_TGT S_INLINE void s_fwd_block_avx2_b(const s_fwd *f, const s_job *jb, const float *xb,
                                        const int64_t off[S_NQ512], const float *wpk,
                                        float *const dst[S_NQ512], int kr, const int BLOCKED)
{
    const int64_t C = f->c, RS = jb->ntap;
    float tot[S_NQ][S_KB] __attribute__((aligned(32)));
    if (BLOCKED) memset(tot, 0, sizeof tot);
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
    __m256 a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
    int64_t blk = 0;
    const int64_t tpb = BLOCKED ? jb->tpb : RS, cpb = BLOCKED ? jb->cpb : C;
    for (int64_t t0 = 0; t0 < RS; t0 += tpb)
        for (int64_t c0 = 0; c0 < C; c0 += cpb, blk++) {
            const int64_t t1 = s_min(RS, t0 + tpb), c1 = s_min(C, c0 + cpb);
            for (int64_t tap = t0; tap < t1; tap++) {
                const float *xs = xb + jb->toff[tap];
                const float *ws = wpk + tap * C * S_KB;
                const float *x0 = xs + off[0], *x1 = xs + off[1], *x2 = xs + off[2];
                const float *x3 = xs + off[3], *x4 = xs + off[4], *x5 = xs + off[5];
                for (int64_t c = c0; c < c1; c++) {
                    __m256 w0 = _mm256_loadu_ps(ws + c * S_KB), w1 = _mm256_loadu_ps(ws + c * S_KB + 8);
                    __m256 b = _mm256_broadcast_ss(x0 + c);
                    a00 = _mm256_fmadd_ps(b, w0, a00), a01 = _mm256_fmadd_ps(b, w1, a01);
                    b = _mm256_broadcast_ss(x1 + c);
                    a10 = _mm256_fmadd_ps(b, w0, a10), a11 = _mm256_fmadd_ps(b, w1, a11);
                    b = _mm256_broadcast_ss(x2 + c);
                    a20 = _mm256_fmadd_ps(b, w0, a20), a21 = _mm256_fmadd_ps(b, w1, a21);
                    b = _mm256_broadcast_ss(x3 + c);
                    a30 = _mm256_fmadd_ps(b, w0, a30), a31 = _mm256_fmadd_ps(b, w1, a31);
                    b = _mm256_broadcast_ss(x4 + c);
                    a40 = _mm256_fmadd_ps(b, w0, a40), a41 = _mm256_fmadd_ps(b, w1, a41);
                    b = _mm256_broadcast_ss(x5 + c);
                    a50 = _mm256_fmadd_ps(b, w0, a50), a51 = _mm256_fmadd_ps(b, w1, a51);
                }
            }
            const int last = !BLOCKED || blk == jb->nblk - 1;
            S_FOLD2(0); S_FOLD2(1); S_FOLD2(2); S_FOLD2(3); S_FOLD2(4); S_FOLD2(5);
        }
    if (dst[0]) s_store16(dst[0], a00, a01, kr);
    if (dst[1]) s_store16(dst[1], a10, a11, kr);
    if (dst[2]) s_store16(dst[2], a20, a21, kr);
    if (dst[3]) s_store16(dst[3], a30, a31, kr);
    if (dst[4]) s_store16(dst[4], a40, a41, kr);
    if (dst[5]) s_store16(dst[5], a50, a51, kr);
}

/* One chain (nblk 1, the thin layers) compiled apart: the blocked loop's
 * bookkeeping cost ~10 % on 16-channel layers. */
S_TGT static void s_fwd_block_avx2(const s_fwd *f, const s_job *jb, const float *xb,
                                   const int64_t off[S_NQ512], const float *wpk,
                                   float *const dst[S_NQ512], int kr)
{
    if (jb->nblk == 1) s_fwd_block_avx2_b(f, jb, xb, off, wpk, dst, kr, 0);
    else s_fwd_block_avx2_b(f, jb, xb, off, wpk, dst, kr, 1);
}

/* AVX-512: 12 pixels x 16 output channels (KB2 = 0) or 32 (KB2 = 1: two
 * panels) in 12 or 24 accumulators; the same chains as the other kernels. */
#define S_A512(t) __m512 a##t = _mm512_setzero_ps(), b##t = a##t
#define S_F512(t)                                                             \
    do {                                                                      \
        __m512 v = _mm512_set1_ps(xs[o##t + c]);                              \
        a##t = _mm512_fmadd_ps(v, w0, a##t);                                  \
        if (KB2) b##t = _mm512_fmadd_ps(v, w1, b##t);                         \
    } while (0)
#define S_FOLD512(t)                                                                    \
    do {                                                                                \
        if (!BLOCKED) break;                                                            \
        a##t = _mm512_add_ps(_mm512_load_ps(tot[t]), a##t);                             \
        if (KB2) b##t = _mm512_add_ps(_mm512_load_ps(tot[t] + S_KB), b##t);             \
        if (last) break;                                                                \
        _mm512_store_ps(tot[t], a##t);                                                  \
        if (KB2) _mm512_store_ps(tot[t] + S_KB, b##t);                                  \
        a##t = b##t = _mm512_setzero_ps();                                              \
    } while (0)
#define S_S512(t)                                                             \
    do {                                                                      \
        if (!dst[t]) break;                                                   \
        if (kr >= S_KB) _mm512_storeu_ps(dst[t], a##t);                       \
        else _mm512_mask_storeu_ps(dst[t], (__mmask16)((1u << kr) - 1), a##t); \
        if (!KB2) break;                                                      \
        if (kr >= 2 * S_KB) _mm512_storeu_ps(dst[t] + S_KB, b##t);            \
        else _mm512_mask_storeu_ps(dst[t] + S_KB, (__mmask16)((1u << (kr - S_KB)) - 1), b##t); \
    } while (0)

S_TGT512 S_INLINE void s_fwd_block512_kb(const s_fwd *f, const s_job *jb, const float *xb,
                                         const int64_t off[S_NQ512], const float *wpk,
                                         float *const dst[S_NQ512], int kr, const int KB2,
                                         const int BLOCKED)
{
    /* offsets from pixel 0's (one index register less: no spills with KB2) */
    const int64_t o0 = 0, o1 = off[1] - off[0], o2 = off[2] - off[0], o3 = off[3] - off[0];
    const int64_t o4 = off[4] - off[0], o5 = off[5] - off[0], o6 = off[6] - off[0];
    const int64_t o7 = off[7] - off[0], o8 = off[8] - off[0], o9 = off[9] - off[0];
    const int64_t o10 = off[10] - off[0], o11 = off[11] - off[0];
    xb += off[0];
    const int64_t C = f->c, RS = jb->ntap, panel = RS * C * S_KB;
    float tot[S_NQ512][2 * S_KB] __attribute__((aligned(64)));
    if (BLOCKED) memset(tot, 0, sizeof tot);
    S_A512(0); S_A512(1); S_A512(2); S_A512(3); S_A512(4); S_A512(5);
    S_A512(6); S_A512(7); S_A512(8); S_A512(9); S_A512(10); S_A512(11);
    int64_t blk = 0;
    const int64_t tpb = BLOCKED ? jb->tpb : RS, cpb = BLOCKED ? jb->cpb : C;
    for (int64_t t0 = 0; t0 < RS; t0 += tpb)
        for (int64_t c0 = 0; c0 < C; c0 += cpb, blk++) {
            const int64_t t1 = s_min(RS, t0 + tpb), c1 = s_min(C, c0 + cpb);
            for (int64_t tap = t0; tap < t1; tap++) {
                const float *xs = xb + jb->toff[tap];
                const float *ws = wpk + tap * C * S_KB;
                for (int64_t c = c0; c < c1; c++) {
                    __m512 w0 = _mm512_loadu_ps(ws + c * S_KB);
                    __m512 w1 = KB2 ? _mm512_loadu_ps(ws + panel + c * S_KB) : w0;
                    S_F512(0); S_F512(1); S_F512(2); S_F512(3); S_F512(4); S_F512(5);
                    S_F512(6); S_F512(7); S_F512(8); S_F512(9); S_F512(10); S_F512(11);
                }
            }
            const int last = !BLOCKED || blk == jb->nblk - 1;
            S_FOLD512(0); S_FOLD512(1); S_FOLD512(2); S_FOLD512(3);
            S_FOLD512(4); S_FOLD512(5); S_FOLD512(6); S_FOLD512(7);
            S_FOLD512(8); S_FOLD512(9); S_FOLD512(10); S_FOLD512(11);
        }
    S_S512(0); S_S512(1); S_S512(2); S_S512(3); S_S512(4); S_S512(5);
    S_S512(6); S_S512(7); S_S512(8); S_S512(9); S_S512(10); S_S512(11);
}

/* kr: channels left from this block's first (more than 16: two panels). */
S_TGT512 static void s_fwd_block512(const s_fwd *f, const s_job *jb, const float *xb,
                                    const int64_t off[S_NQ512], const float *wpk,
                                    float *const dst[S_NQ512], int kr)
{
    if (jb->nblk == 1) { /* one chain (see s_fwd_block_avx2) */
        if (kr > S_KB) s_fwd_block512_kb(f, jb, xb, off, wpk, dst, kr, 1, 0);
        else s_fwd_block512_kb(f, jb, xb, off, wpk, dst, kr, 0, 0);
    } else {
        if (kr > S_KB) s_fwd_block512_kb(f, jb, xb, off, wpk, dst, kr, 1, 1);
        else s_fwd_block512_kb(f, jb, xb, off, wpk, dst, kr, 0, 1);
    }
}
#endif

/* Task i: grid rows [p0, p1) of one job for image i / tpimg, padded
 * into the worker's scratch, in blocks of nq consecutive output pixels
 * (p, q) of those rows (the last block's missing ones: its last pixel
 * again, computed and dropped), each reading padded pixel p*wh + q. */
static void s_fwd_task(void *vctx, size_t i, int worker)
{
    const s_fwd *f = vctx;
    const int64_t img = (int64_t)i / f->tpimg;
    int64_t g = (int64_t)i % f->tpimg;
    const s_job *jb = f->job;
    while (g >= jb->tpi) g -= jb->tpi, jb++;
    const int64_t p0 = g * jb->rt, p1 = s_min(jb->p, p0 + jb->rt), wh = f->wh, C = f->c;
    float *xi = f->scr + worker * f->scrf;
    int64_t *held = f->held + 3 * worker;
    const int64_t r0 = p0 + jb->rlo < 0 ? 0 : p0 + jb->rlo, r1 = s_min(p1 + jb->rhi, f->hh);
    if (held[0] != img || r1 < held[1] || r0 > held[2]) { /* other image, or a gap */
        s_pad_rows(f, img, xi, r0, r1);
        held[0] = img, held[1] = r0, held[2] = r1;
    } else {
        if (r0 < held[1]) s_pad_rows(f, img, xi, r0, held[1]), held[1] = r0;
        if (r1 > held[2]) s_pad_rows(f, img, xi, held[2], r1), held[2] = r1;
    }
    float *yi = f->y + img * f->yimg + jb->y0;
    const int64_t panel = jb->ntap * C * S_KB;
    const int nq = f->isa == 2 ? S_NQ512 : S_NQ;
    /* AVX-512 takes two panels (32 channels) at a time while they last */
    const int64_t kstep = f->isa == 2 ? 2 : 1;
    for (int64_t kb = 0; kb < f->nkb; kb += kstep) {
        const float *wpk = jb->wp + kb * panel;
        const int kleft = (int)(f->k - kb * S_KB);
        const int kr = kleft < S_KB ? kleft : S_KB;
        int64_t p = p0, q = 0; /* the block's first pixel */
        while (p < p1) {
            int64_t off[S_NQ512];
            float *dst[S_NQ512];
            for (int t = 0; t < nq; t++) {
                if (p < p1) {
                    off[t] = (p * wh + q) * C;
                    dst[t] = yi + p * jb->yp + q * jb->yq + kb * S_KB;
                    if (++q == jb->q) q = 0, p++;
                } else {
                    off[t] = off[t - 1];
                    dst[t] = NULL;
                }
            }
#if S_X86
            if (f->isa == 2) {
                s_fwd_block512(f, jb, xi, off, wpk, dst, kleft);
                continue;
            }
            if (f->isa == 1) {
                s_fwd_block_avx2(f, jb, xi, off, wpk, dst, kr);
                continue;
            }
#endif
            s_fwd_block_generic(f, jb, xi, off, wpk, dst, kr);
        }
    }
}

/* The job's chain blocking (s_job) and task split, for ntap taps. */
static void s_job_shape(const s_fwd *f, s_job *jb)
{
    const int64_t c = f->c, ntap = jb->ntap;
    if (ntap * c <= S_CHAIN1) {
        jb->cpb = c;
        jb->tpb = ntap > 0 ? ntap : 1;
    } else if (c <= S_CHAIN) {
        jb->cpb = c;
        jb->tpb = S_CHAIN / c;
    } else { /* equal slices of at most S_CHAIN channels */
        int64_t ns = (c + S_CHAIN - 1) / S_CHAIN;
        jb->tpb = 1;
        jb->cpb = (c + ns - 1) / ns;
    }
    jb->nblk = ntap == 0 ? 1 : (ntap + jb->tpb - 1) / jb->tpb * ((c + jb->cpb - 1) / jb->cpb);
    /* bands of about S_FWD_PIX padded pixels, as equal as whole rows allow */
    const int64_t rows = s_min(jb->p, (S_FWD_PIX + f->wh - 1) / f->wh); /* p >= 1 */
    const int64_t nband = (jb->p + rows - 1) / rows;
    jb->rt = (jb->p + nband - 1) / nband;
    /* the rows its taps read past a grid row: tap t reads padded row
     * p + (toff[t] / C mod the phase's hh*wh) / wh of its phase */
    jb->rlo = ntap > 0 ? INT64_MAX : 0, jb->rhi = 0;
    for (int64_t t = 0; t < ntap; t++) {
        const int64_t ro = jb->toff[t] / c % (f->hh * f->wh) / f->wh;
        jb->rlo = s_min(jb->rlo, ro);
        jb->rhi = ro > jb->rhi ? ro : jb->rhi;
    }
    jb->tpi = (jb->p + jb->rt - 1) / jb->rt;
}

/* Runs f's jobs (set up but for their panels, which are packed here from
 * the OIHW weights: tap t of job j is weight tap wtap[j][t] (r*S + s),
 * flip as s_fwd_run's) over the batch: tasks of one job's band of rows
 * of one image, each padding the rows it reads into its worker's scratch. */
static eq_status s_fwd_exec(eq_cpu *cpu, s_fwd *f, int64_t n, const float *wt, int flip,
                            const int64_t wtap[S_MAXJOB][S_MAXTAP], int64_t rs, const char *op,
                            eq_err *err)
{
    const int64_t c = f->c, k = f->k;
    f->nkb = (k + S_KB - 1) / S_KB;
    f->tpimg = 0;
    size_t nwp = 0;
    for (int64_t j = 0; j < f->njob; j++) {
        s_job_shape(f, &f->job[j]);
        f->tpimg += f->job[j].tpi;
        nwp += s_round16((size_t)(f->nkb * f->job[j].ntap * c * S_KB));
    }
    f->scrf = (int64_t)s_round16((size_t)f->img);
    const int nw = eq_cpu_workers(cpu);
    const size_t nscr = (size_t)nw * (size_t)f->scrf;
    float *ws = eq_cpu_workspace(cpu, (nwp + nscr) * sizeof(float) + (size_t)(3 * nw) * sizeof(int64_t),
                                 op, err);
    if (!ws) return EQ_ERR_NOMEM;
    f->held = (int64_t *)(ws + nwp + nscr); /* nwp, nscr: multiples of 16 floats */
    for (int w = 0; w < nw; w++) f->held[3 * w] = -1;
    /* panels: wp[kb][t][c][jj] = weight of output channel kb*16 + jj */
    memset(ws, 0, nwp * sizeof *ws);
    float *wp = ws;
    for (int64_t j = 0; j < f->njob; j++) {
        s_job *jb = &f->job[j];
        const int64_t npanel = jb->ntap * c * S_KB;
        jb->wp = wp;
        for (int64_t ko = 0; ko < k; ko++)
            for (int64_t ci = 0; ci < c; ci++)
                for (int64_t t = 0; t < jb->ntap; t++) {
                    const int64_t tw = wtap[j][t];
                    float v = flip ? wt[(ci * k + ko) * rs + tw] : wt[(ko * c + ci) * rs + tw];
                    wp[(ko / S_KB) * npanel + (t * c + ci) * S_KB + ko % S_KB] = v;
                }
        wp += s_round16((size_t)(f->nkb * npanel));
    }
    f->scr = ws + nwp;
    eq_cpu_for_worker(cpu, (size_t)(n * f->tpimg), s_fwd_task, f);
    return EQ_OK;
}

/* y [N][P][Q][K] = conv(x [N][H][W][C]): one job over the stride's
 * phases, taps in (r, s) order. */
eq_status eq_cpu_conv_direct_fwd(eq_cpu *cpu, const eq_conv2d_desc *d, const float *x,
                                 const float *w, float *y, int kernels, eq_err *err)
{
    s_fwd f = {.x = x, .y = y, .h = d->h, .w = d->w, .c = d->c, .k = d->k, .plh = d->pad_h,
               .plw = d->pad_w, .sh = d->stride_h, .sw = d->stride_w, .njob = 1,
               .isa = s_isa(kernels)};
    const int64_t hp = d->h + 2 * d->pad_h, wp = d->w + 2 * d->pad_w;
    f.nph = s_min(f.sh, d->r), f.npw = s_min(f.sw, d->s);
    f.hh = (hp + f.sh - 1) / f.sh, f.wh = (wp + f.sw - 1) / f.sw;
    f.img = f.nph * f.npw * f.hh * f.wh * d->c;
    f.yimg = d->p * d->q * d->k;
    s_job *jb = &f.job[0];
    int64_t wtap[S_MAXJOB][S_MAXTAP];
    jb->ntap = d->r * d->s;
    for (int64_t r = 0; r < d->r; r++)
        for (int64_t s = 0; s < d->s; s++) {
            const int64_t ph = (r % f.sh) * f.npw + s % f.sw;
            jb->toff[r * d->s + s] = ((ph * f.hh + r / f.sh) * f.wh + s / f.sw) * d->c;
            wtap[0][r * d->s + s] = r * d->s + s;
        }
    jb->p = d->p, jb->q = d->q, jb->y0 = 0, jb->yp = d->q * d->k, jb->yq = d->k;
    return s_fwd_exec(cpu, &f, d->n, w, 0, wtap, d->r * d->s, "conv2d_fwd", err);
}

/* One axis of the backward data: output index h = st*i + e (phase e,
 * ni outputs) gathers dy[i + c0 - m] * w[r0 + st*m] for m < nm; with lo
 * zeros before dy that is a stride-1 correlation reading padded index
 * i + off + m' with the taps flipped (m' = nm-1-m).  s_bwd_axis fills the
 * phases and the padding (lo, hi) every phase needs. */
typedef struct s_axis {
    int64_t ni[2], nm[2], r0[2], c0[2], off[2], lo, hi;
} s_axis;

static void s_bwd_axis(int64_t len, int64_t out, int64_t r, int64_t st, int64_t pad, s_axis *a)
{
    a->lo = a->hi = 0;
    for (int64_t e = 0; e < st; e++) {
        a->ni[e] = len > e ? (len - e + st - 1) / st : 0;
        a->r0[e] = (e + pad) % st;
        a->nm[e] = a->r0[e] < r ? (r - a->r0[e] + st - 1) / st : 0;
        a->c0[e] = (e + pad - a->r0[e]) / st;
        if (!a->ni[e] || !a->nm[e]) continue;
        a->lo = a->nm[e] - 1 - a->c0[e] > a->lo ? a->nm[e] - 1 - a->c0[e] : a->lo;
        int64_t over = a->ni[e] - 1 + a->c0[e] - (out - 1);
        a->hi = over > a->hi ? over : a->hi;
    }
    for (int64_t e = 0; e < st; e++) a->off[e] = a->c0[e] - a->nm[e] + 1 + a->lo;
}

/* dx = the transposed convolution of dy: for stride 1 one job, the
 * forward convolution of dy with the flipped, transposed kernel (pad' =
 * R-1-pad); for stride 2 one job per phase (eh, ew) of dx with the taps
 * r = eh's r0 + 2m (flipped), writing every other row and column of dx. */
eq_status eq_cpu_conv_direct_bwd_data(eq_cpu *cpu, const eq_conv2d_desc *d, const float *dy,
                                      const float *w, float *dx, int kernels, eq_err *err)
{
    s_axis ah, aw;
    s_bwd_axis(d->h, d->p, d->r, d->stride_h, d->pad_h, &ah);
    s_bwd_axis(d->w, d->q, d->s, d->stride_w, d->pad_w, &aw);
    s_fwd f = {.x = dy, .y = dx, .h = d->p, .w = d->q, .c = d->k, .k = d->c, .plh = ah.lo,
               .plw = aw.lo, .sh = 1, .sw = 1, .nph = 1, .npw = 1, .isa = s_isa(kernels)};
    f.hh = d->p + ah.lo + ah.hi, f.wh = d->q + aw.lo + aw.hi;
    f.img = f.hh * f.wh * d->k;
    f.yimg = d->h * d->w * d->c;
    int64_t wtap[S_MAXJOB][S_MAXTAP];
    for (int64_t eh = 0; eh < d->stride_h; eh++)
        for (int64_t ew = 0; ew < d->stride_w; ew++) {
            if (!ah.ni[eh] || !aw.ni[ew]) continue;
            s_job *jb = &f.job[f.njob];
            jb->ntap = ah.nm[eh] * aw.nm[ew];
            for (int64_t mh = 0; mh < ah.nm[eh]; mh++)
                for (int64_t mw = 0; mw < aw.nm[ew]; mw++) {
                    const int64_t t = mh * aw.nm[ew] + mw;
                    const int64_t r = ah.r0[eh] + d->stride_h * (ah.nm[eh] - 1 - mh);
                    const int64_t s = aw.r0[ew] + d->stride_w * (aw.nm[ew] - 1 - mw);
                    jb->toff[t] = ((ah.off[eh] + mh) * f.wh + aw.off[ew] + mw) * d->k;
                    wtap[f.njob][t] = r * d->s + s;
                }
            jb->p = ah.ni[eh], jb->q = aw.ni[ew];
            jb->y0 = (eh * d->w + ew) * d->c;
            jb->yp = d->stride_h * d->w * d->c, jb->yq = d->stride_w * d->c;
            f.njob++;
        }
    return s_fwd_exec(cpu, &f, d->n, w, 1, wtap, d->r * d->s, "conv2d_bwd_data", err);
}
