/*
 * trainer/cpu/conv_1x1.c -- strided 1x1 convolutions in place (see
 * conv_1x1.h).
 *
 * Both ops are out[m][0..N) = sum over j < J of in[m][j] * B[j][0..N) over
 * the output pixels m = (n, p, q), with B the weights packed [J][NP] (NP:
 * N rounded up to 16, zero padded):
 *   forward       in = x at pixel (p*stride_h, q*stride_w), J = C; out = y, N = K
 *   backward data in = dy, J = K; out = dx at that pixel, N = C
 * Each out element is one FMA chain over j in order, from zero.
 */
#include "trainer/cpu/conv_1x1.h"
#include "trainer/cpu/conv_direct_impl.h"

#define S_1X1_PIX 256 /* output pixels per task (whole output rows, at least one) */
#define S_1X1_MB 8    /* pixels per register block */

typedef struct s_rg {
    const eq_conv2d_desc *d;
    const float *in, *bp;
    float *out;
    int64_t J, N, NP, rpt; /* rpt: output rows per task */
    int bwd, isa;
} s_rg;

/* mb pixels (in + i*istep, out + i*ostep) x output columns [n0, n0 + nw) */
static void s_blk_generic(const s_rg *g, const float *in, int64_t istep, float *out, int64_t ostep,
                          int mb, int64_t n0, int64_t nw)
{
    for (int i = 0; i < mb; i++)
        for (int64_t n = n0; n < n0 + nw; n++) {
            float a = 0.0f;
            for (int64_t j = 0; j < g->J; j++) a = fmaf(in[i * istep + j], g->bp[j * g->NP + n], a);
            out[i * ostep + n] = a;
        }
}

#if S_X86
#define S_1A(i)                                                                     \
    __m512 a##i = _mm512_setzero_ps(), b##i = _mm512_setzero_ps();                  \
    const float *in##i = in + (MB > i ? i : 0) * istep
#define S_1F(i)                                                                     \
    if (MB > i) {                                                                   \
        __m512 v = _mm512_set1_ps(in##i[j]);                                        \
        a##i = _mm512_fmadd_ps(v, w0, a##i);                                        \
        if (NV > 1) b##i = _mm512_fmadd_ps(v, w1, b##i);                            \
    }
#define S_1S(i)                                                                     \
    if (MB > i) {                                                                   \
        _mm512_mask_storeu_ps(out + i * ostep, m0, a##i);                           \
        if (NV > 1) _mm512_mask_storeu_ps(out + i * ostep + 16, m1, b##i);          \
    }

/* MB (<= 8) pixels x NV (1 or 2) vectors of 16 columns from bp's column
 * n0; m0, m1: the columns stored. */
S_TGT512 S_INLINE void s_blk512_mb(const s_rg *g, const float *in, int64_t istep, float *out,
                                   int64_t ostep, int64_t n0, __mmask16 m0, __mmask16 m1,
                                   const int MB, const int NV)
{
    S_1A(0);
    S_1A(1);
    S_1A(2);
    S_1A(3);
    S_1A(4);
    S_1A(5);
    S_1A(6);
    S_1A(7);
    const float *bp = g->bp + n0;
    out += n0;
    const int64_t np = g->NP, J = g->J;
    for (int64_t j = 0; j < J; j++, bp += np) {
        __m512 w0 = _mm512_loadu_ps(bp), w1 = NV > 1 ? _mm512_loadu_ps(bp + 16) : w0;
        S_1F(0) S_1F(1) S_1F(2) S_1F(3) S_1F(4) S_1F(5) S_1F(6) S_1F(7)
    }
    S_1S(0) S_1S(1) S_1S(2) S_1S(3) S_1S(4) S_1S(5) S_1S(6) S_1S(7)
}

#define S_1CASE(mb)                                                                    \
    case mb:                                                                           \
        if (nw > 16) s_blk512_mb(g, in, istep, out, ostep, n0, 0xffff, m1, mb, 2);     \
        else s_blk512_mb(g, in, istep, out, ostep, n0, m0, 0, mb, 1);                  \
        break;

S_TGT512 static void s_blk512(const s_rg *g, const float *in, int64_t istep, float *out,
                              int64_t ostep, int mb, int64_t n0, int64_t nw)
{
    __mmask16 m0, m1;
    s_mask2(nw, &m0, &m1);
    switch (mb) {
        S_1CASE(1)
        S_1CASE(2)
        S_1CASE(3)
        S_1CASE(4)
        S_1CASE(5)
        S_1CASE(6)
        S_1CASE(7)
    default:
        S_1CASE(8)
    }
}
#endif

/* Output rows [i*rpt, ...) (row = n*P + p). */
static void s_rg_task(void *vctx, size_t ti)
{
    const s_rg *g = vctx;
    const eq_conv2d_desc *d = g->d;
    const int64_t C = d->c, K = d->k, sh = d->stride_h, sw = d->stride_w;
    const int64_t r0 = (int64_t)ti * g->rpt, r1 = s_min(r0 + g->rpt, d->n * d->p);
    for (int64_t row = r0; row < r1; row++) {
        const int64_t n = row / d->p, p = row % d->p, ih = p * sh;
        const int64_t xo = (n * d->h + ih) * d->w * C; /* input row ih */
        const float *in;
        float *out;
        int64_t istep, ostep;
        if (g->bwd) {
            /* dx rows ih..min(H, ih + sh) - 1: only row ih's every sw-th
             * pixel is written below, the rest is zero */
            int64_t ie = s_min(d->h, ih + sh);
            out = g->out + xo, ostep = sw * C;
            if (ie > ih + 1)
                memset(out + d->w * C, 0, (size_t)((ie - ih - 1) * d->w * C) * sizeof(float));
            if (sw > 1) memset(out, 0, (size_t)(d->w * C) * sizeof(float));
            in = g->in + row * d->q * K, istep = K;
        } else {
            in = g->in + xo, istep = sw * C;
            out = g->out + row * d->q * K, ostep = K;
        }
        for (int64_t q = 0; q < d->q; q += S_1X1_MB) {
            const int mb = (int)s_min(S_1X1_MB, d->q - q);
            for (int64_t n0 = 0; n0 < g->N; n0 += 32) {
                const int64_t nw = s_min(32, g->N - n0);
#if S_X86
                if (g->isa == 2) {
                    s_blk512(g, in + q * istep, istep, out + q * ostep, ostep, mb, n0, nw);
                    continue;
                }
#endif
                s_blk_generic(g, in + q * istep, istep, out + q * ostep, ostep, mb, n0, nw);
            }
        }
    }
}

int eq_cpu_conv_1x1_ok(const eq_conv2d_desc *d)
{
    return d->r == 1 && d->s == 1 && d->pad_h == 0 && d->pad_w == 0 && d->groups == 1 &&
           (d->stride_h > 1 || d->stride_w > 1) && d->c <= EQ_CPU_1X1_MAX_CK &&
           d->k <= EQ_CPU_1X1_MAX_CK && s_isa(EQ_CPU_DIRECT_AUTO) == 2;
}

static eq_status s_rg_run(eq_cpu *cpu, const eq_conv2d_desc *d, const float *in, const float *w,
                          float *out, int bwd, int kernels, const char *op, eq_err *err)
{
    s_rg g = {.d = d, .in = in, .out = out, .bwd = bwd, .isa = s_isa(kernels)};
    g.J = bwd ? d->k : d->c;
    g.N = bwd ? d->c : d->k;
    g.NP = (int64_t)s_round16((size_t)g.N);
    float *bp = eq_cpu_workspace(cpu, (size_t)(g.J * g.NP) * sizeof(float), op, err);
    if (!bp) return EQ_ERR_NOMEM;
    /* w is OIHW [K][C] */
    for (int64_t j = 0; j < g.J; j++)
        for (int64_t n = 0; n < g.NP; n++)
            bp[j * g.NP + n] = n >= g.N ? 0.0f : bwd ? w[j * d->c + n] : w[n * d->c + j];
    g.bp = bp;
    g.rpt = s_min(d->n * d->p, (S_1X1_PIX + d->q - 1) / d->q);
    if (g.rpt < 1) g.rpt = 1;
    const int64_t rows = d->n * d->p;
    eq_cpu_for(cpu, (size_t)((rows + g.rpt - 1) / g.rpt), s_rg_task, &g);
    return EQ_OK;
}

eq_status eq_cpu_conv_1x1_fwd(eq_cpu *cpu, const eq_conv2d_desc *d, const float *x,
                              const float *w, float *y, int kernels, eq_err *err)
{
    return s_rg_run(cpu, d, x, w, y, 0, kernels, "conv2d_fwd", err);
}

eq_status eq_cpu_conv_1x1_bwd_data(eq_cpu *cpu, const eq_conv2d_desc *d, const float *dy,
                                   const float *w, float *dx, int kernels, eq_err *err)
{
    return s_rg_run(cpu, d, dy, w, dx, 1, kernels, "conv2d_bwd_data", err);
}
