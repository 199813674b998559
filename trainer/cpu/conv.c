/*
 * trainer/cpu/conv.c -- 2-D convolution, NHWC activations, OIHW weights,
 * as im2col + SGEMM (OpenBLAS).  Stride-1 layers (one group, C and K
 * <= 512, not 1x1: CIFAR and ImageNet ResNets' 3x3s) and stride-2 ones up
 * to 3x3 and 64 channels (CIFAR ResNet's downsampling 3x3s) run the direct kernels of
 * conv_direct.c instead (eq_cpu_conv_direct_ok decides; the members at the
 * end of this file dispatch); eq_cpu_conv2d_gemm_* stay callable for every
 * shape, as the reference the direct kernels are tested against.
 *
 * Per group g (Cg = C/G input and Kg = K/G output channels, RSC = R*S*Cg):
 *   weights are repacked to wr = [K][R][S][Cg], so group g is the Kg x RSC
 *   matrix at wr + g*Kg*RSC;
 *   col = im2col(x) is [rows = n*P*Q][R][S][Cg] (each (r, s) a contiguous
 *   run of Cg input channels, the natural copy unit of NHWC);
 *   forward      y[:, g]  = col * wr_g^T             (M x Kg)
 *   bwd data     dcol     = dy[:, g] * wr_g          (M x RSC), col2im-added to dx
 *   bwd filter   dwr_g   += dy[:, g]^T * col         (Kg x RSC), unpacked to OIHW
 * Strided 1x1 kernels (no padding, C and K <= 64: ResNet-20's shortcuts)
 * run their backward ops in place instead (conv_1x1.h; backward filter
 * through conv_direct_bf.c's kernel), without im2col or col2im.
 * 1x1 kernels with stride 1 and no padding skip im2col: x itself is the
 * [N*H*W][C] matrix (leading dimension C).  Backward data of other stride-1
 * convolutions (ResNet's 3x3s) runs as the forward convolution of dy with
 * the flipped, transposed kernel (s_bwd_data_flipped): an im2col copy of dy
 * and an M x C GEMM instead of an M x RSC GEMM and a col2im of adds (which
 * was 14 % of a ResNet-20 step).  With one group and dilation 1, im2col
 * copies and col2im adds the S taps of a kernel row as one run of S*C
 * floats.
 *
 * The batch is processed in tiles of whole images so the col buffer stays
 * under S_COL_BUDGET bytes (at least one image per tile).  im2col runs one
 * output row per index of eq_cpu_for, col2im one input row (a gather, so
 * rows are independent); GEMMs are tiled over the pool (eq_cpu_sgemm); bwd filter
 * accumulates tiles in order.  The result depends only on the shapes and
 * the thread count.
 *
 * Depthwise convolutions (groups == C == K, MobileNet's 3x3s) would be C
 * GEMMs of one column each; they run as direct NHWC loops instead, over
 * blocks of S_DW_VEC channels (contiguous in NHWC and in the repacked
 * weights [R][S][C], so the compiler vectorises the fixed-length inner
 * loops): forward one output row per task, backward data one input row per
 * task (a gather, as col2im), backward filter S_DW_CHUNKS fixed slices of
 * the output rows, each summed into its own partial [R][S][C] in the
 * workspace, then the partials added in slice order.  The slicing does not
 * depend on the thread count, so depthwise results are identical for any
 * thread count.
 */
#include "trainer/cpu/conv_1x1.h"
#include "trainer/cpu/conv_direct.h"

#include <string.h>

#define S_COL_BUDGET ((size_t)16 << 20)

typedef struct s_geom {
    const eq_conv2d_desc *d;
    int64_t cg, kg, rsc, pq, hwc;
    int fast; /* 1x1, stride 1, no padding: no im2col */
    int run;  /* one group, dilation 1 in w: a row's S taps are contiguous in x */
    int64_t tile; /* images per tile */
} s_geom;

static void s_geom_init(s_geom *g, const eq_conv2d_desc *d)
{
    g->d = d;
    g->cg = d->c / d->groups;
    g->kg = d->k / d->groups;
    g->rsc = d->r * d->s * g->cg;
    g->pq = d->p * d->q;
    g->hwc = d->h * d->w * d->c;
    g->fast = d->r == 1 && d->s == 1 && d->stride_h == 1 && d->stride_w == 1 && d->pad_h == 0 &&
              d->pad_w == 0;
    g->run = d->groups == 1 && d->dil_w == 1;
    size_t per_image = (size_t)g->pq * (size_t)g->rsc * sizeof(float);
    int64_t t = (int64_t)(S_COL_BUDGET / (per_image ? per_image : 1));
    if (t < 1) t = 1;
    if (t > d->n) t = d->n;
    g->tile = t;
}

static size_t s_round16(size_t n)
{
    return (n + 15) / 16 * 16;
}

/* Workspace: [wr or dwr: K*RSC][col: tile*PQ*RSC] floats. */
static eq_status s_workspace(eq_cpu *cpu, const s_geom *g, const char *op, float **wr,
                             float **col, eq_err *err)
{
    size_t nw = s_round16((size_t)g->d->k * (size_t)g->rsc);
    size_t nc = g->fast ? 0 : (size_t)g->tile * (size_t)g->pq * (size_t)g->rsc;
    float *ws = eq_cpu_workspace(cpu, (nw + nc) * sizeof(float), op, err);
    if (!ws) return EQ_ERR_NOMEM;
    *wr = ws;
    *col = g->fast ? NULL : ws + nw;
    return EQ_OK;
}

/* OIHW [K][Cg][R][S] -> [K][R][S][Cg] */
static void s_pack_weights(const s_geom *g, const float *w, float *wr)
{
    int64_t rs = g->d->r * g->d->s;
    for (int64_t k = 0; k < g->d->k; k++)
        for (int64_t c = 0; c < g->cg; c++)
            for (int64_t t = 0; t < rs; t++)
                wr[k * g->rsc + t * g->cg + c] = w[(k * g->cg + c) * rs + t];
}

static void s_unpack_weights(const s_geom *g, const float *wr, float *w)
{
    int64_t rs = g->d->r * g->d->s;
    for (int64_t k = 0; k < g->d->k; k++)
        for (int64_t c = 0; c < g->cg; c++)
            for (int64_t t = 0; t < rs; t++)
                w[(k * g->cg + c) * rs + t] = wr[k * g->rsc + t * g->cg + c];
}

typedef struct s_colctx {
    const s_geom *g;
    const float *x; /* im2col source */
    float *dx;      /* col2im destination */
    float *col;
    int64_t n0, grp;
} s_colctx;

/* col rows of output row p = i % P of image n0 + i / P. */
static void s_im2col_row(void *vctx, size_t i)
{
    const s_colctx *c = vctx;
    const eq_conv2d_desc *d = c->g->d;
    const int64_t cg = c->g->cg, rsc = c->g->rsc;
    const int64_t ni = (int64_t)i / d->p, p = (int64_t)i % d->p;
    const float *xn = c->x + (c->n0 + ni) * c->g->hwc + c->grp * cg;
    float *dst = c->col + (ni * c->g->pq + p * d->q) * rsc;
    for (int64_t q = 0; q < d->q; q++, dst += rsc) {
        for (int64_t r = 0; r < d->r; r++) {
            int64_t ih = p * d->stride_h - d->pad_h + r * d->dil_h;
            float *dr = dst + r * d->s * cg;
            if (ih < 0 || ih >= d->h) {
                memset(dr, 0, (size_t)(d->s * cg) * sizeof(float));
                continue;
            }
            int64_t iw0 = q * d->stride_w - d->pad_w;
            if (c->g->run && iw0 >= 0 && iw0 + d->s <= d->w) {
                /* the S taps are adjacent pixels: one run of S*C floats */
                memcpy(dr, xn + (ih * d->w + iw0) * d->c, (size_t)(d->s * cg) * sizeof(float));
                continue;
            }
            for (int64_t s = 0; s < d->s; s++) {
                int64_t iw = iw0 + s * d->dil_w;
                if (iw < 0 || iw >= d->w)
                    memset(dr + s * cg, 0, (size_t)cg * sizeof(float));
                else
                    memcpy(dr + s * cg, xn + (ih * d->w + iw) * d->c, (size_t)cg * sizeof(float));
            }
        }
    }
}

/* col2im as a gather: input row ih = i % H of image n0 + i / H adds every
 * col entry that im2col copied from it, in the fixed order (r, q, s), so
 * rows are independent and the sums reproducible.  dx must be zero or hold
 * the previous groups' disjoint channels. */
static void s_col2im_row(void *vctx, size_t i)
{
    const s_colctx *c = vctx;
    const eq_conv2d_desc *d = c->g->d;
    const int64_t cg = c->g->cg, rsc = c->g->rsc;
    const int64_t ni = (int64_t)i / d->h, ih = (int64_t)i % d->h;
    float *dxr = c->dx + (c->n0 + ni) * c->g->hwc + ih * d->w * d->c + c->grp * cg;
    const float *coln = c->col + ni * c->g->pq * rsc;
    for (int64_t r = 0; r < d->r; r++) {
        int64_t t = ih + d->pad_h - r * d->dil_h;
        if (t < 0 || t % d->stride_h != 0) continue;
        int64_t p = t / d->stride_h;
        if (p >= d->p) continue;
        for (int64_t q = 0; q < d->q; q++) {
            const float *src = coln + (p * d->q + q) * rsc + r * d->s * cg;
            int64_t iw0 = q * d->stride_w - d->pad_w;
            if (c->g->run && iw0 >= 0 && iw0 + d->s <= d->w) {
                /* the S taps are adjacent pixels: one run of S*C floats
                 * (each element still gets one addition per (r, q)) */
                float *restrict o = dxr + iw0 * d->c;
                const float *restrict sr = src;
                for (int64_t k = 0; k < d->s * cg; k++) o[k] += sr[k];
                continue;
            }
            for (int64_t s = 0; s < d->s; s++) {
                int64_t iw = iw0 + s * d->dil_w;
                if (iw < 0 || iw >= d->w) continue;
                const float *sr = src + s * cg;
                float *o = dxr + iw * d->c;
                for (int64_t k = 0; k < cg; k++) o[k] += sr[k];
            }
        }
    }
}

/* ---- depthwise ---------------------------------------------------------- */

#define S_DW_VEC 8
#define S_DW_CHUNKS 32

static int s_depthwise(const eq_conv2d_desc *d)
{
    return d->groups > 1 && d->groups == d->c && d->k == d->c;
}

typedef struct s_dwctx {
    const eq_conv2d_desc *d;
    const float *x, *dy, *wr; /* wr: [R][S][C] */
    float *y, *dx, *part;     /* part: S_DW_CHUNKS x [R][S][C] */
    int64_t rows;             /* N*P */
} s_dwctx;

/* acc[0..nc) += a[0..nc) * b[0..nc), in blocks the compiler vectorises. */
static inline void s_fma_run(float *restrict acc, const float *restrict a, const float *restrict b,
                             int64_t nc)
{
    int64_t c = 0;
    for (; c + S_DW_VEC <= nc; c += S_DW_VEC)
        for (int j = 0; j < S_DW_VEC; j++) acc[c + j] += a[c + j] * b[c + j];
    for (; c < nc; c++) acc[c] += a[c] * b[c];
}

/* Output row i = n*P + p. */
static void s_dw_fwd_row(void *vctx, size_t i)
{
    const s_dwctx *c = vctx;
    const eq_conv2d_desc *d = c->d;
    const int64_t C = d->c, n = (int64_t)i / d->p, p = (int64_t)i % d->p;
    const float *xn = c->x + n * d->h * d->w * C;
    float *yr = c->y + (int64_t)i * d->q * C;
    for (int64_t q = 0; q < d->q; q++) {
        float *yo = yr + q * C;
        memset(yo, 0, (size_t)C * sizeof *yo);
        for (int64_t r = 0; r < d->r; r++) {
            int64_t ih = p * d->stride_h - d->pad_h + r * d->dil_h;
            if (ih < 0 || ih >= d->h) continue;
            for (int64_t s = 0; s < d->s; s++) {
                int64_t iw = q * d->stride_w - d->pad_w + s * d->dil_w;
                if (iw < 0 || iw >= d->w) continue;
                s_fma_run(yo, xn + (ih * d->w + iw) * C, c->wr + (r * d->s + s) * C, C);
            }
        }
    }
}

/* Input row i = n*H + ih: dx gathers every (p, q, r, s) that read it. */
static void s_dw_bwd_data_row(void *vctx, size_t i)
{
    const s_dwctx *c = vctx;
    const eq_conv2d_desc *d = c->d;
    const int64_t C = d->c, n = (int64_t)i / d->h, ih = (int64_t)i % d->h;
    const float *dyn = c->dy + n * d->p * d->q * C;
    float *dxr = c->dx + (int64_t)i * d->w * C;
    memset(dxr, 0, (size_t)(d->w * C) * sizeof *dxr);
    for (int64_t r = 0; r < d->r; r++) {
        int64_t t = ih + d->pad_h - r * d->dil_h;
        if (t < 0 || t % d->stride_h != 0) continue;
        int64_t p = t / d->stride_h;
        if (p >= d->p) continue;
        for (int64_t iw = 0; iw < d->w; iw++)
            for (int64_t s = 0; s < d->s; s++) {
                int64_t u = iw + d->pad_w - s * d->dil_w;
                if (u < 0 || u % d->stride_w != 0) continue;
                int64_t q = u / d->stride_w;
                if (q >= d->q) continue;
                s_fma_run(dxr + iw * C, dyn + (p * d->q + q) * C, c->wr + (r * d->s + s) * C, C);
            }
    }
}

/* Slice i of the output rows into partial i. */
static void s_dw_bwd_filter_chunk(void *vctx, size_t i)
{
    const s_dwctx *c = vctx;
    const eq_conv2d_desc *d = c->d;
    const int64_t C = d->c, rsc = d->r * d->s * C;
    float *part = c->part + (int64_t)i * rsc;
    memset(part, 0, (size_t)rsc * sizeof *part);
    int64_t r0 = c->rows * (int64_t)i / S_DW_CHUNKS, r1 = c->rows * ((int64_t)i + 1) / S_DW_CHUNKS;
    for (int64_t row = r0; row < r1; row++) {
        const int64_t n = row / d->p, p = row % d->p;
        const float *xn = c->x + n * d->h * d->w * C;
        for (int64_t q = 0; q < d->q; q++) {
            const float *g = c->dy + (row * d->q + q) * C;
            for (int64_t r = 0; r < d->r; r++) {
                int64_t ih = p * d->stride_h - d->pad_h + r * d->dil_h;
                if (ih < 0 || ih >= d->h) continue;
                for (int64_t s = 0; s < d->s; s++) {
                    int64_t iw = q * d->stride_w - d->pad_w + s * d->dil_w;
                    if (iw < 0 || iw >= d->w) continue;
                    s_fma_run(part + (r * d->s + s) * C, g, xn + (ih * d->w + iw) * C, C);
                }
            }
        }
    }
}

/* OIHW [C][1][R][S] <-> [R][S][C] */
static void s_dw_pack(const eq_conv2d_desc *d, const float *w, float *wr, int unpack)
{
    int64_t rs = d->r * d->s;
    for (int64_t k = 0; k < d->c; k++)
        for (int64_t t = 0; t < rs; t++) {
            if (unpack) wr[k * rs + t] = w[t * d->c + k];
            else wr[t * d->c + k] = w[k * rs + t];
        }
}

static eq_status s_dw_run(eq_cpu *cpu, const eq_conv2d_desc *d, int op, const float *x,
                          const float *w, const float *dy, float *out, eq_err *err)
{
    static const char *const names[] = {"conv2d_fwd", "conv2d_bwd_data", "conv2d_bwd_filter"};
    size_t rsc = (size_t)(d->r * d->s * d->c);
    size_t nws = s_round16(rsc) + (op == 2 ? (size_t)S_DW_CHUNKS * rsc : 0);
    float *ws = eq_cpu_workspace(cpu, nws * sizeof(float), names[op], err);
    if (!ws) return EQ_ERR_NOMEM;
    s_dwctx c = {.d = d, .x = x, .dy = dy, .wr = ws, .rows = d->n * d->p};
    if (op == 0) {
        s_dw_pack(d, w, ws, 0);
        c.y = out;
        eq_cpu_for(cpu, (size_t)(d->n * d->p), s_dw_fwd_row, &c);
    } else if (op == 1) {
        s_dw_pack(d, w, ws, 0);
        c.dx = out;
        eq_cpu_for(cpu, (size_t)(d->n * d->h), s_dw_bwd_data_row, &c);
    } else {
        c.part = ws + s_round16(rsc);
        eq_cpu_for(cpu, S_DW_CHUNKS, s_dw_bwd_filter_chunk, &c);
        memcpy(ws, c.part, rsc * sizeof(float));
        for (int i = 1; i < S_DW_CHUNKS; i++) {
            const float *pi = c.part + (size_t)i * rsc;
            for (size_t j = 0; j < rsc; j++) ws[j] += pi[j];
        }
        s_dw_pack(d, ws, out, 1);
    }
    return EQ_OK;
}

/* Left operand for group `grp` of the tile starting at image n0: x itself
 * (fast path) or its im2col. */
static const float *s_cols(eq_cpu *cpu, const s_geom *g, const float *x, float *col, int64_t n0,
                           int64_t tn, int64_t grp, int *ld)
{
    if (g->fast) {
        *ld = (int)g->d->c;
        return x + n0 * g->hwc + grp * g->cg;
    }
    s_colctx c = {.g = g, .x = x, .col = col, .n0 = n0, .grp = grp};
    eq_cpu_for(cpu, (size_t)(tn * g->d->p), s_im2col_row, &c);
    *ld = (int)g->rsc;
    return col;
}

/* y = conv(x) with the weights packed in wr, col the im2col buffer. */
static void s_fwd(eq_cpu *cpu, const s_geom *g, const float *x, const float *wr, float *col,
                  float *y)
{
    const eq_conv2d_desc *d = g->d;
    for (int64_t n0 = 0; n0 < d->n; n0 += g->tile) {
        int64_t tn = d->n - n0 < g->tile ? d->n - n0 : g->tile;
        int m = (int)(tn * g->pq);
        for (int64_t grp = 0; grp < d->groups; grp++) {
            int lda;
            const float *a = s_cols(cpu, g, x, col, n0, tn, grp, &lda);
            eq_cpu_sgemm(cpu, 0, 1, m, (int)g->kg, (int)g->rsc, 1.0f, a, lda,
                         wr + grp * g->kg * g->rsc, (int)g->rsc, 0.0f,
                         y + n0 * g->pq * d->k + grp * g->kg, (int)d->k);
        }
    }
}

eq_status eq_cpu_conv2d_gemm_fwd(eq_cpu *cpu, const eq_conv2d_desc *d, const float *x,
                                 const float *w, float *y, eq_err *err)
{
    if (s_depthwise(d)) return s_dw_run(cpu, d, 0, x, w, NULL, y, err);
    s_geom g;
    s_geom_init(&g, d);
    float *wr, *col;
    eq_status st = s_workspace(cpu, &g, "conv2d_fwd", &wr, &col, err);
    if (st != EQ_OK) return st;
    s_pack_weights(&g, w, wr);
    s_fwd(cpu, &g, x, wr, col, y);
    return EQ_OK;
}

/* Backward data of a stride-1 convolution as the forward convolution of dy
 * with the flipped, transposed kernel (no col2im):
 *   dx = conv(dy, W'), W'[g*Cg + c][k][r][s] = W[g*Kg + k][c][R-1-r][S-1-s],
 *   stride 1, pad' = dil*(R-1) - pad (>= 0), same dilation and groups.
 * The caller checked stride 1 and pad <= dil*(R-1) on both axes. */
static eq_status s_bwd_data_flipped(eq_cpu *cpu, const eq_conv2d_desc *d, const float *dy,
                                    const float *w, float *dx, eq_err *err)
{
    eq_conv2d_desc t = {.n = d->n, .h = d->p, .w = d->q, .c = d->k, .k = d->c, .r = d->r,
                        .s = d->s, .stride_h = 1, .stride_w = 1,
                        .pad_h = d->dil_h * (d->r - 1) - d->pad_h,
                        .pad_w = d->dil_w * (d->s - 1) - d->pad_w, .dil_h = d->dil_h,
                        .dil_w = d->dil_w, .groups = d->groups, .p = d->h, .q = d->w};
    s_geom g;
    s_geom_init(&g, &t);
    float *wr, *col;
    eq_status st = s_workspace(cpu, &g, "conv2d_bwd_data", &wr, &col, err);
    if (st != EQ_OK) return st;
    /* wr = [C][R][S][Kg] (t's [K][R][S][Cg]) from OIHW [K][Cg][R][S] */
    const int64_t R = d->r, S = d->s, cg = d->c / d->groups, kg = d->k / d->groups;
    for (int64_t grp = 0; grp < d->groups; grp++)
        for (int64_t k = 0; k < kg; k++)
            for (int64_t c = 0; c < cg; c++) {
                const float *src = w + ((grp * kg + k) * cg + c) * R * S;
                float *dst = wr + (grp * cg + c) * g.rsc + k;
                for (int64_t r = 0; r < R; r++)
                    for (int64_t s = 0; s < S; s++)
                        dst[(r * S + s) * kg] = src[(R - 1 - r) * S + (S - 1 - s)];
            }
    s_fwd(cpu, &g, dy, wr, col, dx);
    return EQ_OK;
}

eq_status eq_cpu_conv2d_gemm_bwd_data(eq_cpu *cpu, const eq_conv2d_desc *d, const float *dy,
                                      const float *w, float *dx, eq_err *err)
{
    if (s_depthwise(d)) return s_dw_run(cpu, d, 1, NULL, w, dy, dx, err);
    s_geom g;
    s_geom_init(&g, d);
    if (!g.fast && d->stride_h == 1 && d->stride_w == 1 && d->pad_h <= d->dil_h * (d->r - 1) &&
        d->pad_w <= d->dil_w * (d->s - 1))
        return s_bwd_data_flipped(cpu, d, dy, w, dx, err);
    float *wr, *col;
    eq_status st = s_workspace(cpu, &g, "conv2d_bwd_data", &wr, &col, err);
    if (st != EQ_OK) return st;
    s_pack_weights(&g, w, wr);
    if (!g.fast) memset(dx, 0, (size_t)(d->n * g.hwc) * sizeof(float));
    for (int64_t n0 = 0; n0 < d->n; n0 += g.tile) {
        int64_t tn = d->n - n0 < g.tile ? d->n - n0 : g.tile;
        int m = (int)(tn * g.pq);
        for (int64_t grp = 0; grp < d->groups; grp++) {
            const float *a = dy + n0 * g.pq * d->k + grp * g.kg;
            const float *b = wr + grp * g.kg * g.rsc;
            if (g.fast) {
                eq_cpu_sgemm(cpu, 0, 0, m, (int)g.cg, (int)g.kg, 1.0f, a, (int)d->k, b, (int)g.rsc,
                             0.0f, dx + n0 * g.hwc + grp * g.cg, (int)d->c);
                continue;
            }
            eq_cpu_sgemm(cpu, 0, 0, m, (int)g.rsc, (int)g.kg, 1.0f, a, (int)d->k, b, (int)g.rsc,
                         0.0f, col, (int)g.rsc);
            s_colctx c = {.g = &g, .dx = dx, .col = col, .n0 = n0, .grp = grp};
            eq_cpu_for(cpu, (size_t)(tn * d->h), s_col2im_row, &c);
        }
    }
    return EQ_OK;
}

eq_status eq_cpu_conv2d_gemm_bwd_filter(eq_cpu *cpu, const eq_conv2d_desc *d, const float *x,
                                        const float *dy, float *dw, eq_err *err)
{
    if (s_depthwise(d)) return s_dw_run(cpu, d, 2, x, NULL, dy, dw, err);
    s_geom g;
    s_geom_init(&g, d);
    float *dwr, *col;
    eq_status st = s_workspace(cpu, &g, "conv2d_bwd_filter", &dwr, &col, err);
    if (st != EQ_OK) return st;
    for (int64_t n0 = 0; n0 < d->n; n0 += g.tile) {
        int64_t tn = d->n - n0 < g.tile ? d->n - n0 : g.tile;
        int m = (int)(tn * g.pq);
        for (int64_t grp = 0; grp < d->groups; grp++) {
            int ldb;
            const float *b = s_cols(cpu, &g, x, col, n0, tn, grp, &ldb);
            eq_cpu_sgemm(cpu, 1, 0, (int)g.kg, (int)g.rsc, m, 1.0f,
                         dy + n0 * g.pq * d->k + grp * g.kg, (int)d->k, b, ldb,
                         n0 == 0 ? 0.0f : 1.0f, dwr + grp * g.kg * g.rsc, (int)g.rsc);
        }
    }
    s_unpack_weights(&g, dwr, dw);
    return EQ_OK;
}

/* ---- the backend's members: direct kernels where they apply ------------ */

eq_status eq_cpu_conv2d_fwd(void *ctx, const eq_conv2d_desc *d, const float *x, const float *w,
                            float *y, eq_err *err)
{
    if (eq_cpu_conv_direct_ok(d))
        return eq_cpu_conv_direct_fwd(ctx, d, x, w, y, EQ_CPU_DIRECT_AUTO, err);
    /* Strided 1x1 (ResNet-20's shortcuts): in place, 2.5x fewer CPU ms
     * than im2col + OpenBLAS (doc/performance.md, session 7).  Its outputs
     * differ from OpenBLAS's by an ulp in about a quarter of the elements
     * (another summation order); check_model's LSQ parity test compares
     * quantizer levels layer by layer and one step at a time, so such
     * differences no longer compound there. */
    if (eq_cpu_conv_1x1_ok(d))
        return eq_cpu_conv_1x1_fwd(ctx, d, x, w, y, EQ_CPU_DIRECT_AUTO, err);
    return eq_cpu_conv2d_gemm_fwd(ctx, d, x, w, y, err);
}

eq_status eq_cpu_conv2d_bwd_data(void *ctx, const eq_conv2d_desc *d, const float *dy,
                                 const float *w, float *dx, eq_err *err)
{
    if (eq_cpu_conv_direct_ok(d))
        return eq_cpu_conv_direct_bwd_data(ctx, d, dy, w, dx, EQ_CPU_DIRECT_AUTO, err);
    if (eq_cpu_conv_1x1_ok(d))
        return eq_cpu_conv_1x1_bwd_data(ctx, d, dy, w, dx, EQ_CPU_DIRECT_AUTO, err);
    return eq_cpu_conv2d_gemm_bwd_data(ctx, d, dy, w, dx, err);
}

eq_status eq_cpu_conv2d_bwd_filter(void *ctx, const eq_conv2d_desc *d, const float *x,
                                   const float *dy, float *dw, eq_err *err)
{
    /* the direct filter kernel reads a strided 1x1's pixels in place too */
    if (eq_cpu_conv_direct_ok(d) || eq_cpu_conv_1x1_ok(d))
        return eq_cpu_conv_direct_bwd_filter(ctx, d, x, dy, dw, EQ_CPU_DIRECT_AUTO, err);
    return eq_cpu_conv2d_gemm_bwd_filter(ctx, d, x, dy, dw, err);
}
