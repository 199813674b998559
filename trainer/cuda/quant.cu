/*
 * trainer/cuda/quant.cu -- quantizer kernels (see quant_kernels.h).  Each
 * element is computed with the float operations of quant/'s CPU code in
 * the same order (--fmad=false; s_round is eq_qround's own formula).
 */
#include "trainer/cuda/quant_kernels.h"
#include "trainer/cuda/launch.h"

#define S_T 256

/* as kernels.cu: grid-stride beyond S_MAXB blocks; 7 in the CPU emulation
 * so the loops take several turns in the tests */
#ifdef EQ_CUDA_EMU
#define S_MAXB 7
#else
#define S_MAXB (65535 * 32)
#endif

static unsigned s_blocks(int64_t n)
{
    int64_t b = (n + S_T - 1) / S_T;
    if (b > S_MAXB) b = S_MAXB;
    return b > 0 ? (unsigned)b : 1u;
}

#define S_FOR(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

__device__ static inline int64_t s_group(const eq_cuq_geom g, int64_t i)
{
    return ((i / g.inner) % g.period) / g.block;
}

/* quant/'s eq_qround exactly: round half to even by adding 1.5 * 2^23;
 * |v| >= 2^22 is returned as it is. */
__device__ static inline float s_round(float v)
{
    float a = fabsf(v);
    float r = copysignf((a + 12582912.0f) - 12582912.0f, v);
    return a < 4194304.0f ? r : v;
}

__device__ static inline float s_clamp(float v, float lo, float hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

/* ---- lsq: clip per group, cl[k] = GradientScale(|clip|, fe) (host) ---- */

__global__ void k_lsq_fwd(const eq_cuq_geom g, int half, float n, const float *cl, const float *x,
                          float *y)
{
    const float lb = half ? 0.0f : -1.0f;
    S_FOR(i, g.n)
    {
        float c = cl[s_group(g, i)];
        float u = s_clamp(x[i] / c, lb, 1.0f);
        if (half) {
            y[i] = c * (s_round(u * n) / n);
        } else {
            u = (u + 1.0f) / 2.0f;
            y[i] = c * (2.0f * (s_round(u * n) / n) - 1.0f);
        }
    }
}

__global__ void k_lsq_bwd(const eq_cuq_geom g, int half, float n, const float *cl, const float *x,
                          const float *gy, float *gx, float *t)
{
    const float lb = half ? 0.0f : -1.0f;
    S_FOR(i, g.n)
    {
        float c = cl[s_group(g, i)];
        float r = x[i] / c;
        int in = r >= lb && r <= 1.0f;
        float u = s_clamp(r, lb, 1.0f), dydc;
        if (half) {
            dydc = s_round(u * n) / n - (in ? r : 0.0f);
        } else {
            u = (u + 1.0f) / 2.0f;
            dydc = (2.0f * (s_round(u * n) / n) - 1.0f) - (in ? r : 0.0f);
        }
        float gv = gy[i];
        t[i] = gv * dydc;
        gx[i] = in ? gv : 0.0f;
    }
}

/* ---- lsq-step: step per group, bounds [qn, qp] ---- */

__global__ void k_step_fwd(const eq_cuq_geom g, float qn, float qp, const float *st, const float *x,
                           float *y)
{
    S_FOR(i, g.n)
    {
        float s = st[s_group(g, i)];
        y[i] = s_round(s_clamp(x[i] / s, qn, qp)) * s;
    }
}

__global__ void k_step_bwd(const eq_cuq_geom g, float qn, float qp, const float *st, const float *x,
                           const float *gy, float *gx, float *t)
{
    S_FOR(i, g.n)
    {
        float s = st[s_group(g, i)];
        float r = x[i] / s, gv = gy[i];
        int below = r < qn, above = r > qp;
        float d = below ? qn : (above ? qp : s_round(r) - r);
        gx[i] = (below || above) ? 0.0f : gv;
        t[i] = gv * d;
    }
}

/* ---- pact: one alpha ---- */

__global__ void k_pact_fwd(int64_t n, float a, float s, const float *x, float *y)
{
    S_FOR(i, n)
    {
        float z = x[i] > 0.0f ? x[i] : 0.0f;
        if (!(z < a)) z = a;
        y[i] = s_round(z * s) / s;
    }
}

__global__ void k_pact_bwd(int64_t n, float a, const float *x, const float *gy, float *gx, float *t)
{
    S_FOR(i, n)
    {
        float v = x[i], gv = gy[i];
        float z = v > 0.0f ? v : 0.0f;
        t[i] = z >= a ? gv : 0.0f;
        gx[i] = (v >= 0.0f && v < a) ? gv : 0.0f;
    }
}

/* ---- dorefa activations: fixed clip c ---- */

__global__ void k_dorefa_fm_fwd(int64_t n, float c, float s, const float *x, float *y)
{
    S_FOR(i, n) y[i] = s_round(s_clamp(x[i], 0.0f, c) * s) / s;
}

__global__ void k_dorefa_fm_bwd(int64_t n, float c, const float *x, const float *gy, float *gx)
{
    S_FOR(i, n)
    {
        float v = x[i];
        gx[i] = (v >= 0.0f && v <= c) ? gy[i] : 0.0f;
    }
}

/* ---- per-group sums of t: block (k, s) sums slice s of group k's
 * elements in a fixed order; the host adds the slices in order. ---- */

#define S_RT 256

__global__ void k_group_sum(const eq_cuq_geom g, int64_t nslice, const float *t, double *partial)
{
    __shared__ double sh[S_RT];
    const int64_t k = blockIdx.x, s = blockIdx.y;
    const int64_t rows = g.n / (g.inner * g.period); /* outer repeats */
    const int64_t cnt = rows * g.block * g.inner;    /* elements of group k */
    const int64_t per = (cnt + nslice - 1) / nslice, e0 = s * per;
    const int64_t e1 = e0 + per < cnt ? e0 + per : cnt;
    double a = 0.0;
    for (int64_t e = e0 + threadIdx.x; e < e1; e += S_RT) {
        int64_t tt = e % g.inner, b = (e / g.inner) % g.block, r = e / (g.inner * g.block);
        int64_t i = r * g.inner * g.period + (k * g.block + b) * g.inner + tt;
        a += t[i];
    }
    sh[threadIdx.x] = a;
    __syncthreads();
    for (int w = S_RT / 2; w > 0; w /= 2) {
        if ((int)threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[k * nslice + s] = sh[0];
}

extern "C" int64_t eq_cuq_slices(const eq_cuq_geom *g)
{
    int64_t cnt = g->n / (g->period / g->block);
    int64_t s = (cnt + 8191) / 8192;
    return s < 1 ? 1 : (s > 256 ? 256 : s);
}

extern "C" cudaError_t eq_cuq_group_sum(cudaStream_t st, const eq_cuq_geom *g, const float *t,
                                        double *partial)
{
    int64_t ns = eq_cuq_slices(g);
    dim3 grid((unsigned)(g->period / g->block), (unsigned)ns);
    EQ_LAUNCH(k_group_sum, grid, S_RT, 0, st)(*g, ns, t, partial);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuq_lsq_fwd(cudaStream_t s, const eq_cuq_geom *g, int half, float n,
                                      const float *cl, const float *x, float *y)
{
    EQ_LAUNCH(k_lsq_fwd, s_blocks(g->n), S_T, 0, s)(*g, half, n, cl, x, y);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuq_lsq_bwd(cudaStream_t s, const eq_cuq_geom *g, int half, float n,
                                      const float *cl, const float *x, const float *gy, float *gx,
                                      float *t)
{
    EQ_LAUNCH(k_lsq_bwd, s_blocks(g->n), S_T, 0, s)(*g, half, n, cl, x, gy, gx, t);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuq_step_fwd(cudaStream_t s, const eq_cuq_geom *g, float qn, float qp,
                                       const float *st, const float *x, float *y)
{
    EQ_LAUNCH(k_step_fwd, s_blocks(g->n), S_T, 0, s)(*g, qn, qp, st, x, y);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuq_step_bwd(cudaStream_t s, const eq_cuq_geom *g, float qn, float qp,
                                       const float *st, const float *x, const float *gy, float *gx,
                                       float *t)
{
    EQ_LAUNCH(k_step_bwd, s_blocks(g->n), S_T, 0, s)(*g, qn, qp, st, x, gy, gx, t);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuq_pact_fwd(cudaStream_t s, int64_t n, float a, float sc, const float *x,
                                       float *y)
{
    EQ_LAUNCH(k_pact_fwd, s_blocks(n), S_T, 0, s)(n, a, sc, x, y);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuq_pact_bwd(cudaStream_t s, int64_t n, float a, const float *x,
                                       const float *gy, float *gx, float *t)
{
    EQ_LAUNCH(k_pact_bwd, s_blocks(n), S_T, 0, s)(n, a, x, gy, gx, t);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuq_dorefa_fm_fwd(cudaStream_t s, int64_t n, float c, float sc,
                                            const float *x, float *y)
{
    EQ_LAUNCH(k_dorefa_fm_fwd, s_blocks(n), S_T, 0, s)(n, c, sc, x, y);
    return cudaGetLastError();
}

extern "C" cudaError_t eq_cuq_dorefa_fm_bwd(cudaStream_t s, int64_t n, float c, const float *x,
                                            const float *gy, float *gx)
{
    EQ_LAUNCH(k_dorefa_fm_bwd, s_blocks(n), S_T, 0, s)(n, c, x, gy, gx);
    return cudaGetLastError();
}
