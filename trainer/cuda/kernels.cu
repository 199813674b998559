/*
 * trainer/cuda/kernels.cu -- the CUDA backend's own kernels (see kernels.h
 * for the contracts).  Compiled with --fmad=false so that a*b+c is two
 * rounded operations, as in the CPU backend (-ffp-contract=off).
 */
#include "trainer/cuda/kernels.h"
#include "trainer/cuda/launch.h"
#include "trainer/prec.h"

#include <math.h>

#define S_T 256 /* threads per block of elementwise kernels */

/* Most blocks of an elementwise grid; the grid-stride loops (S_FOR) cover
 * the rest.  The CPU emulation (tests/cudaemu) caps at 7 blocks so that
 * every such loop takes several turns in the tests, which never reach
 * 2^29 elements. */
#ifdef EQ_CUDA_EMU
#define S_MAXB 7u
#else
#define S_MAXB (65535u * 32u)
#endif

static unsigned s_blocks(size_t n)
{
    size_t b = (n + S_T - 1) / S_T;
    if (b > S_MAXB) b = S_MAXB; /* grid-stride beyond */
    return b ? (unsigned)b : 1u;
}

#define S_FOR(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

/* ---- elementwise ---------------------------------------------------------- */

__global__ void k_relu_fwd(size_t n, const float *x, float *y)
{
    S_FOR(i, n) y[i] = x[i] <= 0.0f ? 0.0f : x[i]; /* NaN kept, as torch */
}

__global__ void k_relu_bwd(size_t n, const float *y, const float *dy, float *dx)
{
    S_FOR(i, n) dx[i] = y[i] <= 0.0f ? 0.0f : dy[i];
}

__global__ void k_add(size_t n, const float *a, const float *b, float *y)
{
    S_FOR(i, n) y[i] = a[i] + b[i];
}

__global__ void k_prelu_fwd(size_t n, int64_t c, int64_t nslope, const float *x, const float *slope,
                            float *y)
{
    S_FOR(i, n)
    {
        float v = x[i], a = slope[nslope == 1 ? 0 : (int64_t)(i % (size_t)c)];
        y[i] = v > 0.0f ? v : a * v;
    }
}

__global__ void k_prelu_bwd_dx(size_t n, int64_t c, int64_t nslope, const float *x,
                               const float *slope, const float *dy, float *dx)
{
    S_FOR(i, n)
    {
        float v = x[i], g = dy[i], a = slope[nslope == 1 ? 0 : (int64_t)(i % (size_t)c)];
        dx[i] = v > 0.0f ? g : a * g;
    }
}

extern "C" cudaError_t eq_cuk_relu_fwd(cudaStream_t s, size_t n, const float *x, float *y)
{
    EQ_LAUNCH(k_relu_fwd, s_blocks(n), S_T, 0, s)(n, x, y);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuk_relu_bwd(cudaStream_t s, size_t n, const float *y, const float *dy,
                                       float *dx)
{
    EQ_LAUNCH(k_relu_bwd, s_blocks(n), S_T, 0, s)(n, y, dy, dx);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuk_add(cudaStream_t s, size_t n, const float *a, const float *b, float *y)
{
    EQ_LAUNCH(k_add, s_blocks(n), S_T, 0, s)(n, a, b, y);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuk_prelu_fwd(cudaStream_t s, int64_t m, int64_t c, int64_t nslope,
                                        const float *x, const float *slope, float *y)
{
    size_t n = (size_t)(m * c);
    EQ_LAUNCH(k_prelu_fwd, s_blocks(n), S_T, 0, s)(n, c, nslope, x, slope, y);
    return cudaGetLastError();
}

/* ---- column reductions over [m][c] ---------------------------------------
 * Rows are cut into nrb fixed blocks (a function of m only); block (bx, by)
 * sums rows of row block by for 32 channels with 8 row lanes, the lanes are
 * added in lane order, and a second kernel adds the row blocks in order.
 * Modes: 0 sum x; 1 sum (x - mu)^2; 2 sum g and sum g*(x - mu) with g =
 * s_bn_g (dy, or the fused bn_relu's masked dy + dy2);
 * 3 sum over x <= 0 of dy*x (PReLU slope gradient). */

#define S_CX 32
#define S_RY 8

/* The gradient batch norm's backward sees at element i: dy[i] (+ dy2[i]
 * when dy2), zeroed where the fused forward's output y[i] is not > 0 (y
 * NULL: plain bn_bwd, no mask).  The float sum before the mask, as the
 * composition add + relu_bwd computes it. */
__device__ static inline float s_bn_g(size_t i, const float *dy, const float *dy2, const float *y)
{
    float g = dy2 ? dy[i] + dy2[i] : dy[i];
    return y && y[i] <= 0.0f ? 0.0f : g;
}

static int64_t s_nrb(int64_t m)
{
    int64_t nrb = (m + 255) / 256;
    return nrb > 1024 ? 1024 : (nrb < 1 ? 1 : nrb);
}

extern "C" size_t eq_cuk_colsum_scratch(int64_t m, int64_t c, int nsum)
{
    return (size_t)(s_nrb(m) * c * nsum) * sizeof(double);
}

__global__ void k_colsum_partial(int mode, int64_t m, int64_t c, int64_t nrb, const float *x,
                                 const float *dy, const float *dy2, const float *y,
                                 const double *mu_d, const float *mu_f, double *partial)
{
    __shared__ double sh0[S_RY][S_CX], sh1[S_RY][S_CX];
    const int64_t ch = (int64_t)blockIdx.x * S_CX + threadIdx.x, by = blockIdx.y;
    const int64_t per = (m + nrb - 1) / nrb, r0 = by * per, r1 = r0 + per < m ? r0 + per : m;
    double a0 = 0.0, a1 = 0.0;
    if (ch < c) {
        double mu = mode == 1 ? mu_d[ch] : (mode == 2 ? (double)mu_f[ch] : 0.0);
        for (int64_t r = r0 + threadIdx.y; r < r1; r += S_RY) {
            float v = x[r * c + ch];
            if (mode == 0) {
                a0 += v;
            } else if (mode == 1) {
                double t = (double)v - mu;
                a0 += t * t;
            } else if (mode == 2) {
                float g = s_bn_g((size_t)(r * c + ch), dy, dy2, y);
                a0 += g;
                a1 += (double)g * ((double)v - mu);
            } else if (v <= 0.0f) {
                a0 += (double)dy[r * c + ch] * (double)v;
            }
        }
    }
    sh0[threadIdx.y][threadIdx.x] = a0;
    sh1[threadIdx.y][threadIdx.x] = a1;
    __syncthreads();
    if (threadIdx.y == 0 && ch < c) {
        double t0 = 0.0, t1 = 0.0;
        for (int j = 0; j < S_RY; j++) {
            t0 += sh0[j][threadIdx.x];
            t1 += sh1[j][threadIdx.x];
        }
        partial[by * c + ch] = t0;
        if (mode == 2) partial[(nrb + by) * c + ch] = t1;
    }
}

/* out[ch] (and out[c + ch] for two sums) = sum over row blocks, in order. */
__global__ void k_colsum_final(int nsum, int64_t c, int64_t nrb, const double *partial, double *out)
{
    int64_t ch = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    for (int k = 0; k < nsum; k++) {
        double t = 0.0;
        for (int64_t b = 0; b < nrb; b++) t += partial[(k * nrb + b) * c + ch];
        out[k * c + ch] = t;
    }
}

static cudaError_t s_colsum(cudaStream_t s, int mode, int64_t m, int64_t c, const float *x,
                            const float *dy, const float *dy2, const float *y,
                            const double *mu_d, const float *mu_f, double *partial, double *out)
{
    int64_t nrb = s_nrb(m);
    dim3 grid((unsigned)((c + S_CX - 1) / S_CX), (unsigned)nrb), block(S_CX, S_RY);
    EQ_LAUNCH(k_colsum_partial, grid, block, 0, s)(mode, m, c, nrb, x, dy, dy2, y, mu_d, mu_f, partial);
    EQ_LAUNCH(k_colsum_final, (unsigned)((c + 127) / 128), 128, 0, s)
    (mode == 2 ? 2 : 1, c, nrb, partial, out);
    return cudaGetLastError();
}

__global__ void k_prelu_dslope(int64_t c, int64_t nslope, const double *acc, float *dslope)
{
    if (nslope == 1) {
        if (blockIdx.x == 0 && threadIdx.x == 0) {
            double t = 0.0;
            for (int64_t j = 0; j < c; j++) t += acc[j];
            dslope[0] = (float)t;
        }
        return;
    }
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j < c) dslope[j] = (float)acc[j];
}

extern "C" cudaError_t eq_cuk_prelu_bwd(cudaStream_t s, int64_t m, int64_t c, int64_t nslope,
                                        const float *x, const float *slope, const float *dy,
                                        float *dx, float *dslope, void *scratch)
{
    size_t n = (size_t)(m * c);
    double *partial = (double *)scratch;
    double *acc = partial + s_nrb(m) * c;
    cudaError_t e = s_colsum(s, 3, m, c, x, dy, NULL, NULL, NULL, NULL, partial, acc);
    if (e != cudaSuccess) return e;
    EQ_LAUNCH(k_prelu_bwd_dx, s_blocks(n), S_T, 0, s)(n, c, nslope, x, slope, dy, dx);
    EQ_LAUNCH(k_prelu_dslope, (unsigned)((c + 127) / 128), 128, 0, s)(c, nslope, acc, dslope);
    return cudaGetLastError();
}

/* ---- batch norm ------------------------------------------------------------ */

extern "C" size_t eq_cuk_bn_scratch(int64_t m, int64_t c)
{
    return eq_cuk_colsum_scratch(m, c, 2) + (size_t)(5 * c) * sizeof(double);
}

/* y = (float)(x * a + sh) per channel, a/sh double; with relu (the fused
 * bn_relu) then + z[i] when z and max(., 0), each rounded to float as the
 * separate ops (add, relu_fwd) round them. */
__global__ void k_affine(size_t n, int64_t c, const float *x, const double *a, const double *sh,
                         const float *z, int relu, float *y)
{
    S_FOR(i, n)
    {
        int64_t ch = (int64_t)(i % (size_t)c);
        float v = (float)((double)x[i] * a[ch] + sh[ch]);
        if (relu) {
            if (z) v = v + z[i];
            v = v <= 0.0f ? 0.0f : v;
        }
        y[i] = v;
    }
}

__global__ void k_bn_mean(int64_t m, int64_t c, double *sum_to_mean)
{
    int64_t ch = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (ch < c) sum_to_mean[ch] /= (double)m;
}

__global__ void k_bn_train_finalize(int64_t m, int64_t c, float eps, float momentum,
                                    const double *mean, const double *sq, const float *gamma,
                                    const float *beta, float *rm, float *rv, float *save_mean,
                                    float *save_invstd, double *a, double *sh)
{
    int64_t ch = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    const double mom = momentum;
    double var = sq[ch] / (double)m;
    double invstd = 1.0 / sqrt(var + (double)eps);
    save_mean[ch] = (float)mean[ch];
    save_invstd[ch] = (float)invstd;
    rm[ch] = (float)((1.0 - mom) * rm[ch] + mom * mean[ch]);
    rv[ch] = (float)((1.0 - mom) * rv[ch] + mom * var * (double)m / (double)(m - 1));
    a[ch] = invstd * (gamma ? gamma[ch] : 1.0f);
    sh[ch] = (beta ? beta[ch] : 0.0f) - mean[ch] * a[ch];
}

extern "C" cudaError_t eq_cuk_bn_fwd_train(cudaStream_t s, int64_t m, int64_t c, float eps,
                                           float momentum, const float *x, const float *z,
                                           int relu, const float *gamma, const float *beta,
                                           float *rmean, float *rvar, float *y, float *save_mean,
                                           float *save_invstd, void *scratch)
{
    double *partial = (double *)scratch;
    double *mean = partial + 2 * s_nrb(m) * c, *sq = mean + c, *a = sq + c, *sh = a + c;
    unsigned cb = (unsigned)((c + 127) / 128);
    cudaError_t e = s_colsum(s, 0, m, c, x, NULL, NULL, NULL, NULL, NULL, partial, mean);
    if (e != cudaSuccess) return e;
    EQ_LAUNCH(k_bn_mean, cb, 128, 0, s)(m, c, mean);
    e = s_colsum(s, 1, m, c, x, NULL, NULL, NULL, mean, NULL, partial, sq);
    if (e != cudaSuccess) return e;
    EQ_LAUNCH(k_bn_train_finalize, cb, 128, 0, s)
    (m, c, eps, momentum, mean, sq, gamma, beta, rmean, rvar, save_mean, save_invstd, a, sh);
    size_t n = (size_t)(m * c);
    EQ_LAUNCH(k_affine, s_blocks(n), S_T, 0, s)(n, c, x, a, sh, z, relu, y);
    return cudaGetLastError();
}

__global__ void k_bn_eval_coef(int64_t c, float eps, const float *gamma, const float *beta,
                               const float *rm, const float *rv, double *a, double *sh)
{
    int64_t ch = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    a[ch] = (gamma ? gamma[ch] : 1.0f) / sqrt((double)rv[ch] + (double)eps);
    sh[ch] = (beta ? beta[ch] : 0.0f) - rm[ch] * a[ch];
}

extern "C" cudaError_t eq_cuk_bn_fwd_eval(cudaStream_t s, int64_t m, int64_t c, float eps,
                                          const float *x, const float *z, int relu,
                                          const float *gamma, const float *beta,
                                          const float *rmean, const float *rvar, float *y,
                                          void *scratch)
{
    double *a = (double *)scratch, *sh = a + c;
    EQ_LAUNCH(k_bn_eval_coef, (unsigned)((c + 127) / 128), 128, 0, s)
    (c, eps, gamma, beta, rmean, rvar, a, sh);
    size_t n = (size_t)(m * c);
    EQ_LAUNCH(k_affine, s_blocks(n), S_T, 0, s)(n, c, x, a, sh, z, relu, y);
    return cudaGetLastError();
}

__global__ void k_bn_bwd_finalize(int64_t m, int64_t c, const double *sums, const float *gamma,
                                  const float *invstd, float *dgamma, float *dbeta, double *k)
{
    int64_t ch = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double sdy = sums[ch], sdyx = sums[c + ch], is = invstd[ch];
    if (dbeta) dbeta[ch] = (float)sdy;
    if (dgamma) dgamma[ch] = (float)(sdyx * is);
    k[ch] = (gamma ? gamma[ch] : 1.0f) * is;
    k[c + ch] = sdy / (double)m;
    k[2 * c + ch] = sdyx / (double)m * is * is;
}

/* dz[i] (when dz) = g, read before written: dz may be dy or dy2; dx may be
 * dy only when there is no y/dy2 (plain bn_bwd in place). */
__global__ void k_bn_bwd_dx(size_t n, int64_t c, const float *x, const float *dy,
                            const float *dy2, const float *y, const float *mean, const double *k,
                            float *dx, float *dz)
{
    S_FOR(i, n)
    {
        int64_t ch = (int64_t)(i % (size_t)c);
        double mu = mean[ch];
        float g = s_bn_g(i, dy, dy2, y);
        if (dz) dz[i] = g;
        dx[i] = (float)(k[ch] * ((double)g - k[c + ch] - ((double)x[i] - mu) * k[2 * c + ch]));
    }
}

extern "C" cudaError_t eq_cuk_bn_bwd(cudaStream_t s, int64_t m, int64_t c, const float *x,
                                     const float *y, const float *dy, const float *dy2,
                                     const float *gamma, const float *mean, const float *invstd,
                                     float *dx, float *dz, float *dgamma, float *dbeta,
                                     void *scratch)
{
    double *partial = (double *)scratch;
    double *sums = partial + 2 * s_nrb(m) * c, *k = sums + 2 * c; /* 2c + 3c */
    cudaError_t e = s_colsum(s, 2, m, c, x, dy, dy2, y, NULL, mean, partial, sums);
    if (e != cudaSuccess) return e;
    EQ_LAUNCH(k_bn_bwd_finalize, (unsigned)((c + 127) / 128), 128, 0, s)
    (m, c, sums, gamma, invstd, dgamma, dbeta, k);
    size_t n = (size_t)(m * c);
    EQ_LAUNCH(k_bn_bwd_dx, s_blocks(n), S_T, 0, s)(n, c, x, dy, dy2, y, mean, k, dx, dz);
    return cudaGetLastError();
}

/* ---- pooling ----------------------------------------------------------------- */

struct s_win {
    int64_t h0, h1, w0, w1, div;
};

__device__ static s_win s_window(const eq_cuk_pool d, int64_t p, int64_t q)
{
    s_win w;
    int64_t h0 = p * d.sh - d.ph, w0 = q * d.sw - d.pw;
    int64_t h1 = h0 + d.kh, w1 = w0 + d.kw;
    if (h1 > d.h + d.ph) h1 = d.h + d.ph;
    if (w1 > d.w + d.pw) w1 = d.w + d.pw;
    int64_t padded = (h1 - h0) * (w1 - w0);
    if (h0 < 0) h0 = 0;
    if (w0 < 0) w0 = 0;
    if (h1 > d.h) h1 = d.h;
    if (w1 > d.w) w1 = d.w;
    w.h0 = h0;
    w.h1 = h1;
    w.w0 = w0;
    w.w1 = w1;
    w.div = d.count_include_pad ? padded : (h1 - h0) * (w1 - w0);
    return w;
}

__global__ void k_maxpool_fwd(const eq_cuk_pool d, const float *x, float *y, int32_t *am)
{
    size_t total = (size_t)(d.n * d.p * d.q * d.c);
    S_FOR(i, total)
    {
        int64_t ch = (int64_t)(i % (size_t)d.c), o = (int64_t)(i / (size_t)d.c);
        int64_t q = o % d.q, p = (o / d.q) % d.p, n = o / (d.q * d.p);
        s_win w = s_window(d, p, q);
        const float *xn = x + n * d.h * d.w * d.c + ch;
        float best = -INFINITY;
        int32_t arg = (int32_t)(w.h0 * d.w + w.w0);
        for (int64_t ih = w.h0; ih < w.h1; ih++)
            for (int64_t iw = w.w0; iw < w.w1; iw++) {
                float v = xn[(ih * d.w + iw) * d.c];
                if (v > best || isnan(v)) {
                    best = v;
                    arg = (int32_t)(ih * d.w + iw);
                }
            }
        y[i] = best;
        am[i] = arg;
    }
}

/* First output row/col whose window covers input row ih (and the last). */
__device__ static void s_cover(int64_t ih, int64_t pad, int64_t k, int64_t stride, int64_t nout,
                               int64_t *lo, int64_t *hi)
{
    int64_t t = ih + pad - k;
    *lo = t < 0 ? 0 : t / stride + 1;
    int64_t h = (ih + pad) / stride;
    *hi = h < nout - 1 ? h : nout - 1;
}

__global__ void k_argmax_check(size_t total, int64_t hw, const int32_t *am, int32_t *flag)
{
    S_FOR(i, total)
    {
        if (am[i] < 0 || am[i] >= hw) flag[2] = (int32_t)(i < 0x7ffffffe ? i + 1 : 0x7fffffff);
    }
}

__global__ void k_maxpool_bwd(const eq_cuk_pool d, const int32_t *am, const float *dy, float *dx)
{
    size_t total = (size_t)(d.n * d.h * d.w * d.c);
    S_FOR(i, total)
    {
        int64_t ch = (int64_t)(i % (size_t)d.c), pix = (int64_t)(i / (size_t)d.c);
        int64_t iw = pix % d.w, ih = (pix / d.w) % d.h, n = pix / (d.w * d.h);
        int64_t p0, p1, q0, q1;
        s_cover(ih, d.ph, d.kh, d.sh, d.p, &p0, &p1);
        s_cover(iw, d.pw, d.kw, d.sw, d.q, &q0, &q1);
        int32_t pos = (int32_t)(ih * d.w + iw);
        float acc = 0.0f;
        for (int64_t p = p0; p <= p1; p++)
            for (int64_t q = q0; q <= q1; q++) {
                int64_t o = ((n * d.p + p) * d.q + q) * d.c + ch;
                if (am[o] == pos) acc += dy[o];
            }
        dx[i] = acc;
    }
}

__global__ void k_avgpool_fwd(const eq_cuk_pool d, const float *x, float *y)
{
    size_t total = (size_t)(d.n * d.p * d.q * d.c);
    S_FOR(i, total)
    {
        int64_t ch = (int64_t)(i % (size_t)d.c), o = (int64_t)(i / (size_t)d.c);
        int64_t q = o % d.q, p = (o / d.q) % d.p, n = o / (d.q * d.p);
        s_win w = s_window(d, p, q);
        const float *xn = x + n * d.h * d.w * d.c + ch;
        double acc = 0.0;
        for (int64_t ih = w.h0; ih < w.h1; ih++)
            for (int64_t iw = w.w0; iw < w.w1; iw++) acc += xn[(ih * d.w + iw) * d.c];
        y[i] = (float)(acc / (double)w.div);
    }
}

__global__ void k_avgpool_bwd(const eq_cuk_pool d, const float *dy, float *dx)
{
    size_t total = (size_t)(d.n * d.h * d.w * d.c);
    S_FOR(i, total)
    {
        int64_t ch = (int64_t)(i % (size_t)d.c), pix = (int64_t)(i / (size_t)d.c);
        int64_t iw = pix % d.w, ih = (pix / d.w) % d.h, n = pix / (d.w * d.h);
        int64_t p0, p1, q0, q1;
        s_cover(ih, d.ph, d.kh, d.sh, d.p, &p0, &p1);
        s_cover(iw, d.pw, d.kw, d.sw, d.q, &q0, &q1);
        float acc = 0.0f;
        for (int64_t p = p0; p <= p1; p++)
            for (int64_t q = q0; q <= q1; q++) {
                s_win w = s_window(d, p, q);
                if (ih < w.h0 || ih >= w.h1 || iw < w.w0 || iw >= w.w1) continue;
                float inv = (float)(1.0 / (double)w.div);
                acc += dy[((n * d.p + p) * d.q + q) * d.c + ch] * inv;
            }
        dx[i] = acc;
    }
}

extern "C" cudaError_t eq_cuk_maxpool_fwd(cudaStream_t s, const eq_cuk_pool *p, const float *x,
                                          float *y, int32_t *argmax)
{
    EQ_LAUNCH(k_maxpool_fwd, s_blocks((size_t)(p->n * p->p * p->q * p->c)), S_T, 0, s)(*p, x, y, argmax);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuk_maxpool_bwd(cudaStream_t s, const eq_cuk_pool *p,
                                          const int32_t *argmax, const float *dy, float *dx,
                                          int32_t *flag)
{
    size_t nout = (size_t)(p->n * p->p * p->q * p->c);
    EQ_LAUNCH(k_argmax_check, s_blocks(nout), S_T, 0, s)(nout, p->h * p->w, argmax, flag);
    EQ_LAUNCH(k_maxpool_bwd, s_blocks((size_t)(p->n * p->h * p->w * p->c)), S_T, 0, s)(*p, argmax, dy, dx);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuk_avgpool_fwd(cudaStream_t s, const eq_cuk_pool *p, const float *x,
                                          float *y)
{
    EQ_LAUNCH(k_avgpool_fwd, s_blocks((size_t)(p->n * p->p * p->q * p->c)), S_T, 0, s)(*p, x, y);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuk_avgpool_bwd(cudaStream_t s, const eq_cuk_pool *p, const float *dy,
                                          float *dx)
{
    EQ_LAUNCH(k_avgpool_bwd, s_blocks((size_t)(p->n * p->h * p->w * p->c)), S_T, 0, s)(*p, dy, dx);
    return cudaGetLastError();
}

__global__ void k_gap_fwd(int64_t n, int64_t hw, int64_t c, const float *x, float *y)
{
    S_FOR(i, (size_t)(n * c))
    {
        int64_t b = (int64_t)i / c, ch = (int64_t)i % c;
        const float *xb = x + b * hw * c + ch;
        double acc = 0.0;
        for (int64_t r = 0; r < hw; r++) acc += xb[r * c];
        y[i] = (float)(acc / (double)hw);
    }
}

__global__ void k_gap_bwd(int64_t n, int64_t hw, int64_t c, const float *dy, float *dx)
{
    const float inv = (float)(1.0 / (double)hw);
    S_FOR(i, (size_t)(n * hw * c))
    {
        int64_t ch = (int64_t)(i % (size_t)c), b = (int64_t)(i / (size_t)(hw * c));
        dx[i] = dy[b * c + ch] * inv;
    }
}

extern "C" cudaError_t eq_cuk_gap_fwd(cudaStream_t s, int64_t n, int64_t hw, int64_t c,
                                      const float *x, float *y)
{
    EQ_LAUNCH(k_gap_fwd, s_blocks((size_t)(n * c)), S_T, 0, s)(n, hw, c, x, y);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuk_gap_bwd(cudaStream_t s, int64_t n, int64_t hw, int64_t c,
                                      const float *dy, float *dx)
{
    EQ_LAUNCH(k_gap_bwd, s_blocks((size_t)(n * hw * c)), S_T, 0, s)(n, hw, c, dy, dx);
    return cudaGetLastError();
}

/* ---- linear helpers ---------------------------------------------------------------- */

__global__ void k_bias_add(int64_t n, int64_t out, const float *b, float *y)
{
    S_FOR(i, (size_t)(n * out)) y[i] += b[(int64_t)(i % (size_t)out)];
}

__global__ void k_bias_grad(int64_t n, int64_t out, const float *dy, float *db)
{
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= out) return;
    double acc = 0.0;
    for (int64_t i = 0; i < n; i++) acc += dy[i * out + j];
    db[j] = (float)acc;
}

extern "C" cudaError_t eq_cuk_bias_add(cudaStream_t s, int64_t n, int64_t out, const float *b,
                                       float *y)
{
    EQ_LAUNCH(k_bias_add, s_blocks((size_t)(n * out)), S_T, 0, s)(n, out, b, y);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuk_bias_grad(cudaStream_t s, int64_t n, int64_t out, const float *dy,
                                        float *db)
{
    EQ_LAUNCH(k_bias_grad, (unsigned)((out + 127) / 128), 128, 0, s)(n, out, dy, db);
    return cudaGetLastError();
}

/* ---- softmax cross-entropy --------------------------------------------------------- */

__device__ static int s_label_ok(int32_t l, int64_t k)
{
    return l >= 0 && l < k;
}

/* flag[0] = row + 1 and flag[1] = label in one aligned 64-bit store (the
 * flags are page-aligned pinned memory; little-endian, flag[0] the low
 * word): two threads flagging different rows at once could otherwise leave
 * one row with the other row's label, and the error would name a label the
 * row does not have.  Which bad row wins is unspecified. */
__device__ static void s_flag_label(int32_t *flag, int64_t row, int32_t label)
{
    if (flag[0] == 0) {
        unsigned long long v = (unsigned long long)(uint32_t)(int32_t)(row + 1) |
                               ((unsigned long long)(uint32_t)label << 32);
        *(volatile unsigned long long *)flag = v;
    }
}

/* Per row: lse[i] and, for the forward, the row's loss. */
__global__ void k_xent_rows(int64_t n, int64_t k, float smoothing, const float *logits,
                            const int32_t *la, const int32_t *lb, const float *lam, double *lse_out,
                            double *loss_out, int32_t *flag)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float *z = logits + i * k;
    double mx = z[0], s = 0.0, sz = 0.0;
    for (int64_t j = 1; j < k; j++)
        if (z[j] > mx) mx = z[j];
    for (int64_t j = 0; j < k; j++) {
        s += exp((double)z[j] - mx);
        sz += z[j];
    }
    double lse = mx + log(s);
    if (lse_out) lse_out[i] = lse;
    int ok = s_label_ok(la[i], k) && (!lb || s_label_ok(lb[i], k));
    if (!ok) s_flag_label(flag, i, s_label_ok(la[i], k) ? lb[i] : la[i]);
    if (!loss_out) return;
    if (!ok) {
        loss_out[i] = 0.0;
        return;
    }
    const double e = smoothing;
    double smooth = lse - sz / (double)k;
    double a = (1.0 - e) * (lse - z[la[i]]) + e * smooth;
    if (lb) {
        double b = (1.0 - e) * (lse - z[lb[i]]) + e * smooth;
        loss_out[i] = (double)lam[i] * a + (1.0 - (double)lam[i]) * b;
    } else {
        loss_out[i] = a;
    }
}

__global__ void k_xent_total(int64_t n, const double *rows, float *loss)
{
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double t = 0.0;
    for (int64_t i = 0; i < n; i++) t += rows[i];
    *loss = (float)(t / (double)n);
}

__global__ void k_xent_grad(int64_t n, int64_t k, float smoothing, const float *logits,
                            const int32_t *la, const int32_t *lb, const float *lam, float dloss,
                            const double *lse, float *dlogits)
{
    const double e = smoothing, scale = (double)dloss / (double)n;
    S_FOR(idx, (size_t)(n * k))
    {
        int64_t i = (int64_t)(idx / (size_t)k), j = (int64_t)(idx % (size_t)k);
        double lm = lb ? (double)lam[i] : 1.0;
        double t = e / (double)k;
        if (j == la[i]) t += (1.0 - e) * lm;
        if (lb && j == lb[i]) t += (1.0 - e) * (1.0 - lm);
        dlogits[idx] = (float)(scale * (exp((double)logits[idx] - lse[i]) - t));
    }
}

extern "C" cudaError_t eq_cuk_xent_fwd(cudaStream_t s, int64_t n, int64_t k, float smoothing,
                                       const float *logits, const int32_t *la, const int32_t *lb,
                                       const float *lam, float *loss, double *scratch,
                                       int32_t *flag)
{
    EQ_LAUNCH(k_xent_rows, (unsigned)((n + 127) / 128), 128, 0, s)
    (n, k, smoothing, logits, la, lb, lam, NULL, scratch, flag);
    EQ_LAUNCH(k_xent_total, 1, 1, 0, s)(n, scratch, loss);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuk_xent_bwd(cudaStream_t s, int64_t n, int64_t k, float smoothing,
                                       const float *logits, const int32_t *la, const int32_t *lb,
                                       const float *lam, float dloss, float *dlogits,
                                       double *scratch, int32_t *flag)
{
    EQ_LAUNCH(k_xent_rows, (unsigned)((n + 127) / 128), 128, 0, s)
    (n, k, smoothing, logits, la, lb, lam, scratch, NULL, flag);
    EQ_LAUNCH(k_xent_grad, s_blocks((size_t)(n * k)), S_T, 0, s)
    (n, k, smoothing, logits, la, lb, lam, dloss, scratch, dlogits);
    return cudaGetLastError();
}

/* ---- optimisers ------------------------------------------------------------------------ */

__global__ void k_sgd(size_t n, float lr, float momentum, float dampening, float wd, int nesterov,
                      int first, float *p, const float *gr, float *buf)
{
    S_FOR(k, n)
    {
        float g = gr[k];
        if (wd != 0.0f) g = g + wd * p[k];
        float step = g;
        if (momentum != 0.0f) {
            float b = first ? g : momentum * buf[k] + (1.0f - dampening) * g;
            buf[k] = b;
            step = nesterov ? g + momentum * b : b;
        }
        p[k] = p[k] - lr * step;
    }
}

__global__ void k_adam(size_t n, float beta1, float beta2, float eps, float wd, float c1, float c2s,
                       float *p, const float *gr, float *mu, float *nu)
{
    S_FOR(k, n)
    {
        float g = gr[k];
        if (wd != 0.0f) g = g + wd * p[k];
        float m = mu[k] * beta1 + (1.0f - beta1) * g;
        float v = nu[k] * beta2 + (1.0f - beta2) * g * g;
        mu[k] = m;
        nu[k] = v;
        float denom = sqrtf(v) / c2s + eps;
        p[k] = p[k] - c1 * (m / denom);
    }
}

extern "C" cudaError_t eq_cuk_sgd(cudaStream_t s, size_t n, float lr, float momentum,
                                  float dampening, float wd, int nesterov, int first, float *p,
                                  const float *g, float *buf)
{
    EQ_LAUNCH(k_sgd, s_blocks(n), S_T, 0, s)(n, lr, momentum, dampening, wd, nesterov, first, p, g, buf);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuk_adam(cudaStream_t s, size_t n, float beta1, float beta2, float eps,
                                   float wd, float c1, float c2s, float *p, const float *g,
                                   float *mu, float *nu)
{
    EQ_LAUNCH(k_adam, s_blocks(n), S_T, 0, s)(n, beta1, beta2, eps, wd, c1, c2s, p, g, mu, nu);
    return cudaGetLastError();
}

/* ---- layouts and input staging ---------------------------------------------------------- */

__global__ void k_oihw_krsc(int64_t k, int64_t c, int64_t r, int64_t sd, const float *src,
                            float *dst, int to_krsc)
{
    S_FOR(i, (size_t)(k * c * r * sd))
    {
        /* i indexes OIHW: [kk][cc][rr][ss] */
        int64_t ss = (int64_t)i % sd, rr = ((int64_t)i / sd) % r, cc = ((int64_t)i / (sd * r)) % c,
                kk = (int64_t)i / (sd * r * c);
        int64_t j = ((kk * r + rr) * sd + ss) * c + cc;
        if (to_krsc)
            dst[j] = src[i];
        else
            dst[i] = src[j];
    }
}

extern "C" cudaError_t eq_cuk_oihw_to_krsc(cudaStream_t s, int64_t k, int64_t c, int64_t r,
                                           int64_t sdim, const float *src, float *dst)
{
    EQ_LAUNCH(k_oihw_krsc, s_blocks((size_t)(k * c * r * sdim)), S_T, 0, s)(k, c, r, sdim, src, dst, 1);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuk_krsc_to_oihw(cudaStream_t s, int64_t k, int64_t c, int64_t r,
                                           int64_t sdim, const float *src, float *dst)
{
    EQ_LAUNCH(k_oihw_krsc, s_blocks((size_t)(k * c * r * sdim)), S_T, 0, s)(k, c, r, sdim, src, dst, 0);
    return cudaGetLastError();
}

struct s_norm16 {
    float scale[16], shift[16];
};

/* A partner outside [0, n) would read past src (an illegal address, which
 * ends the CUDA context): it sets flag[3] = image + 1 instead and that
 * image is staged unblended. */
__global__ void k_u8_input(int64_t n, int64_t per, int64_t c, const uint8_t *src, s_norm16 nm,
                           const int32_t *partner, const float *lam, float *dst, int32_t *flag)
{
    S_FOR(i, (size_t)(n * per))
    {
        int64_t img = (int64_t)(i / (size_t)per), k = (int64_t)(i % (size_t)per);
        int64_t ch = k % c;
        float va = (float)src[i] * nm.scale[ch] + nm.shift[ch];
        if (partner && (partner[img] < 0 || partner[img] >= n)) {
            if (k == 0) flag[3] = (int32_t)(img < 0x7ffffffe ? img + 1 : 0x7fffffff);
        } else if (partner) {
            float l = lam[img];
            float vb = (float)src[(int64_t)partner[img] * per + k] * nm.scale[ch] + nm.shift[ch];
            va = l * va + (1.0f - l) * vb;
        }
        dst[i] = va;
    }
}

extern "C" cudaError_t eq_cuk_u8_input(cudaStream_t s, int64_t n, int64_t per_image, int64_t c,
                                       const uint8_t *src, const float *scale_host,
                                       const float *shift_host, const int32_t *partner,
                                       const float *lam, float *dst, int32_t *flag)
{
    if (c < 1 || c > 16) return cudaErrorInvalidValue;
    s_norm16 nm;
    for (int64_t j = 0; j < 16; j++) {
        nm.scale[j] = j < c ? scale_host[j] : 0.0f;
        nm.shift[j] = j < c ? shift_host[j] : 0.0f;
    }
    EQ_LAUNCH(k_u8_input, s_blocks((size_t)(n * per_image)), S_T, 0, s)
    (n, per_image, c, src, nm, partner, lam, dst, flag);
    return cudaGetLastError();
}

/* ---- clamp (Hardtanh / ReLU6) and Fixup's scalar affine ---------------------------------- */

__global__ void k_clamp_fwd(size_t n, float lo, float hi, const float *x, float *y)
{
    S_FOR(i, n)
    {
        float v = x[i];
        y[i] = v < lo ? lo : v > hi ? hi : v; /* NaN stays NaN */
    }
}

__global__ void k_clamp_bwd(size_t n, float lo, float hi, const float *y, const float *dy, float *dx)
{
    S_FOR(i, n) dx[i] = y[i] > lo && y[i] < hi ? dy[i] : 0.0f;
}

extern "C" cudaError_t eq_cuk_clamp_fwd(cudaStream_t s, size_t n, float lo, float hi,
                                        const float *x, float *y)
{
    EQ_LAUNCH(k_clamp_fwd, s_blocks(n), S_T, 0, s)(n, lo, hi, x, y);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuk_clamp_bwd(cudaStream_t s, size_t n, float lo, float hi,
                                        const float *y, const float *dy, float *dx)
{
    EQ_LAUNCH(k_clamp_bwd, s_blocks(n), S_T, 0, s)(n, lo, hi, y, dy, dx);
    return cudaGetLastError();
}

__global__ void k_saff_fwd(size_t n, const float *x, const float *scale, const float *bias, float *y)
{
    const float a = scale ? scale[0] : 1.0f, b = bias ? bias[0] : 0.0f;
    /* no bias: x * a alone, so -0 stays -0 (torch's x * scale; the loss
     * scaler's unscale of gradients, trainer/scaler.c) */
    if (bias)
        S_FOR(i, n) y[i] = x[i] * a + b;
    else
        S_FOR(i, n) y[i] = x[i] * a;
}

/* Fixed blocks of S_SUMB elements, tree-reduced in shared memory; the
 * final kernel adds the blocks in order. */
#define S_SUMB 4096

__global__ void k_saff_partial(size_t n, const float *x, const float *dy, double *part)
{
    __shared__ double s0[S_T], s1[S_T];
    size_t lo = (size_t)blockIdx.x * S_SUMB, hi = lo + S_SUMB < n ? lo + S_SUMB : n;
    double a = 0.0, b = 0.0;
    for (size_t i = lo + threadIdx.x; i < hi; i += S_T) {
        if (x) a += (double)dy[i] * (double)x[i];
        b += (double)dy[i];
    }
    s0[threadIdx.x] = a;
    s1[threadIdx.x] = b;
    __syncthreads();
    for (int w = S_T / 2; w > 0; w /= 2) {
        if ((int)threadIdx.x < w) {
            s0[threadIdx.x] += s0[threadIdx.x + w];
            s1[threadIdx.x] += s1[threadIdx.x + w];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        part[2 * blockIdx.x] = s0[0];
        part[2 * blockIdx.x + 1] = s1[0];
    }
}

__global__ void k_saff_final(size_t nb, const double *part, float *dscale, float *dbias)
{
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double a = 0.0, b = 0.0;
    for (size_t i = 0; i < nb; i++) {
        a += part[2 * i];
        b += part[2 * i + 1];
    }
    if (dscale) dscale[0] = (float)a;
    if (dbias) dbias[0] = (float)b;
}

__global__ void k_saff_dx(size_t n, const float *dy, const float *scale, float *dx)
{
    const float a = scale ? scale[0] : 1.0f;
    S_FOR(i, n) dx[i] = dy[i] * a;
}

extern "C" size_t eq_cuk_saff_scratch(size_t n)
{
    size_t nb = (n + S_SUMB - 1) / S_SUMB;
    return (nb ? nb : 1) * 2 * sizeof(double);
}

extern "C" cudaError_t eq_cuk_saff_fwd(cudaStream_t s, size_t n, const float *x, const float *scale,
                                       const float *bias, float *y)
{
    EQ_LAUNCH(k_saff_fwd, s_blocks(n), S_T, 0, s)(n, x, scale, bias, y);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuk_saff_bwd(cudaStream_t s, size_t n, const float *x, const float *dy,
                                       const float *scale, float *dx, float *dscale, float *dbias,
                                       void *scratch)
{
    size_t nb = (n + S_SUMB - 1) / S_SUMB;
    if (dscale || dbias) {
        if (nb)
            EQ_LAUNCH(k_saff_partial, (unsigned)nb, S_T, 0, s)(n, dscale ? x : NULL, dy, (double *)scratch);
        EQ_LAUNCH(k_saff_final, 1, 1, 0, s)(nb, (const double *)scratch, dscale, dbias);
    }
    /* dx after the sums: dx may alias dy */
    if (dx && n) EQ_LAUNCH(k_saff_dx, s_blocks(n), S_T, 0, s)(n, dy, scale, dx);
    return cudaGetLastError();
}

/* ---- mixed precision (prec.h's element functions) ------------------------------- */

__global__ void k_round(int p, size_t n, const float *x, float *y)
{
    S_FOR(i, n) y[i] = eq_pr_round(p, x[i]);
}

__global__ void k_to16(int p, size_t n, const float *x, uint16_t *y)
{
    S_FOR(i, n) y[i] = eq_pr_bits16(p, x[i]);
}

__global__ void k_from16(int p, size_t n, const uint16_t *x, float *y)
{
    S_FOR(i, n) y[i] = eq_pr_from16(p, x[i]);
}

/* k_oihw_krsc's index map, converting on the way: OIHW float -> KRSC 16-bit
 * (to_krsc), or KRSC 16-bit -> OIHW float. */
__global__ void k_oihw_krsc16(int p, int64_t k, int64_t c, int64_t r, int64_t sd, const float *src,
                              uint16_t *dst, const uint16_t *src16, float *dstf, int to_krsc)
{
    S_FOR(i, (size_t)(k * c * r * sd))
    {
        int64_t ss = (int64_t)i % sd, rr = ((int64_t)i / sd) % r, cc = ((int64_t)i / (sd * r)) % c,
                kk = (int64_t)i / (sd * r * c);
        int64_t j = ((kk * r + rr) * sd + ss) * c + cc;
        if (to_krsc)
            dst[j] = eq_pr_bits16(p, src[i]);
        else
            dstf[i] = eq_pr_from16(p, src16[j]);
    }
}

extern "C" cudaError_t eq_cuk_round(cudaStream_t s, int prec, size_t n, const float *x, float *y)
{
    if (n) EQ_LAUNCH(k_round, s_blocks(n), S_T, 0, s)(prec, n, x, y);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuk_to16(cudaStream_t s, int prec, size_t n, const float *x, void *y)
{
    if (n) EQ_LAUNCH(k_to16, s_blocks(n), S_T, 0, s)(prec, n, x, (uint16_t *)y);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuk_from16(cudaStream_t s, int prec, size_t n, const void *x, float *y)
{
    if (n) EQ_LAUNCH(k_from16, s_blocks(n), S_T, 0, s)(prec, n, (const uint16_t *)x, y);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuk_oihw_to_krsc16(cudaStream_t s, int prec, int64_t k, int64_t c,
                                             int64_t r, int64_t sdim, const float *src, void *dst)
{
    EQ_LAUNCH(k_oihw_krsc16, s_blocks((size_t)(k * c * r * sdim)), S_T, 0, s)(
        prec, k, c, r, sdim, src, (uint16_t *)dst, NULL, NULL, 1);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuk_krsc16_to_oihw(cudaStream_t s, int prec, int64_t k, int64_t c,
                                             int64_t r, int64_t sdim, const void *src, float *dst)
{
    EQ_LAUNCH(k_oihw_krsc16, s_blocks((size_t)(k * c * r * sdim)), S_T, 0, s)(
        prec, k, c, r, sdim, NULL, NULL, (const uint16_t *)src, dst, 0);
    return cudaGetLastError();
}

/* Non-finite count: fixed blocks of S_SUMB elements (as k_saff_partial),
 * each counted by S_T threads and tree-added in shared memory; the final
 * kernel adds the block counts in order.  An exponent of all ones is inf
 * or NaN (an integer test: no float compare to be optimised away). */
__global__ void k_nonfinite_partial(size_t n, const float *x, unsigned long long *part)
{
    __shared__ unsigned long long sc[S_T];
    size_t lo = (size_t)blockIdx.x * S_SUMB, hi = lo + S_SUMB < n ? lo + S_SUMB : n;
    unsigned long long c = 0;
    for (size_t i = lo + threadIdx.x; i < hi; i += S_T)
        c += (eq_pr_u32(x[i]) & 0x7f800000u) == 0x7f800000u;
    sc[threadIdx.x] = c;
    __syncthreads();
    for (int w = S_T / 2; w > 0; w /= 2) {
        if ((int)threadIdx.x < w) sc[threadIdx.x] += sc[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[blockIdx.x] = sc[0];
}

__global__ void k_nonfinite_final(size_t nb, const unsigned long long *part, long long *out)
{
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    unsigned long long c = 0;
    for (size_t i = 0; i < nb; i++) c += part[i];
    *out = (long long)c;
}

extern "C" size_t eq_cuk_nonfinite_scratch(size_t n)
{
    size_t nb = (n + S_SUMB - 1) / S_SUMB;
    return (nb + 1) * sizeof(unsigned long long);
}

extern "C" cudaError_t eq_cuk_nonfinite(cudaStream_t s, size_t n, const float *x, void *scratch,
                                        long long **count)
{
    size_t nb = (n + S_SUMB - 1) / S_SUMB;
    unsigned long long *part = (unsigned long long *)scratch;
    long long *out = (long long *)(part + nb);
    *count = out;
    if (nb) EQ_LAUNCH(k_nonfinite_partial, (unsigned)nb, S_T, 0, s)(n, x, part);
    EQ_LAUNCH(k_nonfinite_final, 1, 1, 0, s)(nb, part, out);
    return cudaGetLastError();
}
