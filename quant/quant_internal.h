/*
 * quant/quant_internal.h -- what the method files share: the object layout,
 * the method vtable and small numeric helpers.  Not installed; only quant/
 * includes it.
 */
#ifndef EQ_QUANT_INTERNAL_H
#define EQ_QUANT_INTERNAL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/pool.h"
#include "quant/quant.h"

#define EQ_QUANT_MAX_TENSORS 12

/* How the generic layer wraps a method (ORIGINAL.md §2.2). */
typedef enum eq_quant_family {
    EQ_QFAM_DOREFA = 0, /* counter +1 per forward (train and eval), warm-up, gamma */
    EQ_QFAM_LQNET,      /* method owns counters and warm-up */
    EQ_QFAM_XNOR,       /* no counter, no warm-up (the intended behaviour) */
} eq_quant_family;

typedef struct eq_quant_method {
    const char *name;
    unsigned tags;           /* bit (1 << tag) per supported tag */
    eq_quant_family family;
    int fixed_levels;        /* 1: refuses eq_quant_set_levels */
    int uses_var_mean;       /* 1: wt adaptive var-mean handled by the generic layer */
    /* Validate options, create parameters/buffers (eq_quant_add_tensor). */
    eq_status (*init)(eq_quant *q, eq_err *err);
    /* y = Q(x) over q->n elements grouped by q->grp (x already normalized). */
    eq_status (*forward)(eq_quant *q, const float *x, float *y, eq_err *err);
    /* gx from gy; writes parameter gradients. x as given to forward. */
    void (*backward)(eq_quant *q, const float *x, const float *gy, float *gx);
    void (*destroy)(eq_quant *q); /* frees q->priv; may be NULL */
    /* eq_quant_zero_pad_exact's method part (the generic layer has checked
     * the rest); NULL: never */
    int (*zero_pad_exact)(const eq_quant *q);
} eq_quant_method;

struct eq_quant {
    eq_quant_opts o;
    const eq_quant_method *m;
    /* resolved at construction (§2.1) */
    int bit;              /* int(bit) */
    int L0;               /* level count at construction */
    int64_t g;            /* quant groups */
    int64_t norm_g;       /* var-mean groups */
    int64_t fan;          /* prod of PyTorch shape[1:] */
    int64_t channels;     /* C (fm/ot) or O (wt; 1 for linear) */
    int linear;           /* OI weight or NC activation */
    eq_layout layout;
    eq_tensor_desc shape0; /* descriptor given at construction */
    /* state */
    eq_quant_tensor t[EQ_QUANT_MAX_TENSORS];
    size_t nt;
    float *iteration;     /* -> data of "iteration" */
    float *level_num;     /* -> data of "level_num" */
    eq_quant_tensor *gamma;
    eq_quant_tensor *clip;  /* "clip_val" when the method owns one (warm-up init) */
    /* per call */
    eq_tensor_desc xd;
    int64_t n;
    int64_t batch;        /* B of fm/ot (1 for wt) */
    eq_group_desc grp;    /* element -> quant group */
    int train;
    int have_fwd;
    int passthrough;      /* warm-up: y = x, backward identity */
    int normed;           /* var-mean applied */
    float *nmean, *nstd;  /* [norm_g] */
    float *xn;            /* normalized x [cap] */
    float *ypre;          /* y before gamma [cap] */
    float *gtmp;          /* scratch gradient [cap] */
    int64_t cap;
    /* run-time options (eq_quant_set_option, the policy attributes) */
    int enabled;          /* 0: forward copies, backward passes through */
    int adaptive_restore; /* var-mean weights mapped back to the weight's scale */
    int ql_enable;        /* quantization loss (§2.15) */
    int ql_fn;            /* S_QL_*: 0 none, 1 L2, 2 L1, 3 QDL */
    double ql_alpha;
    double ql_grad_scale; /* eq_quant_set_loss_scale: the loss gradient's factor (1) */
    /* per call, run-time options */
    int bypass;           /* the last forward ran disabled */
    int restored;         /* the last forward applied adaptive_restore */
    int ql_active;        /* the last forward computed the loss: backward adds its gradient */
    double ql_value;      /* alpha * loss */
    double ql_sxy, ql_syy; /* QDL sums */
    float *qly;           /* y of the last forward (loss gradient) [qlcap] */
    float *qlg;           /* gy + dloss/dy [qlcap] */
    int64_t qlcap;
    void *priv;
    /* threading: the element range is cut into fixed chunks of whole runs
     * (a function of n and the grouping only, never of the thread count),
     * so results are identical for any pool size */
    eq_pool *pool;
    int64_t chunk;        /* elements per chunk (multiple of the run length) */
    int64_t nchunks;
    double *cacc;         /* per-chunk accumulators */
    int64_t cacc_cap;
};

/* 1 when no run-time option changes what forward/backward compute beyond
 * the method itself: enabled, no quantization loss (adaptive_restore acts
 * only with var-mean weights).  A backend that mirrors the methods (the
 * CUDA one) must send quantizers for which this is 0 through
 * eq_quant_forward/backward. */
static inline int eq_quant_runtime_plain(const eq_quant *q)
{
    return q->enabled && !(q->ql_enable && q->ql_fn != 0) &&
           !(q->adaptive_restore && q->o.adaptive == EQ_QADAPT_VAR_MEAN);
}

/* Registered methods (one per file). */
extern const eq_quant_method eq_quant_dorefa_method;
extern const eq_quant_method eq_quant_bin_method;
extern const eq_quant_method eq_quant_pact_method;
extern const eq_quant_method eq_quant_lsq_method;
extern const eq_quant_method eq_quant_lsq_step_method;
extern const eq_quant_method eq_quant_nonuniform_method;
extern const eq_quant_method eq_quant_xnor_method;
extern const eq_quant_method eq_quant_lqnet_method;

/* Add a state tensor filled with `fill`; learnable tensors get a zeroed
 * gradient.  Returns NULL (err set) when out of room or memory. */
eq_quant_tensor *eq_quant_add_tensor(eq_quant *q, const char *name, int ndim,
                                     const int64_t *shape, float fill, int learnable, eq_err *err);
/* Shape of a per-group parameter as the original makes it: wt (g,1,1,1);
 * fm/ot [1] if g == 1 else (1,g,1,1).  Returns ndim. */
int eq_quant_param_shape(const eq_quant *q, int64_t g, int64_t shape[4]);

/* Steps n = level_num - 1. */
static inline int eq_quant_steps(const eq_quant *q) { return (int)*q->level_num - 1; }

/* EQ_QSIMD marks the functions that hold the elementwise loops: GCC builds
 * each of them for AVX2 and baseline x86-64 and picks one at load time
 * (target_clones; an ifunc); EQ_QSIMD_WIDE adds an AVX-512 clone.  The loops
 * do the same IEEE operations in the same order in every clone (no FMA: none
 * of these targets implies it, and -ffp-contract=off forbids contraction
 * anyway), so results are bit-identical whichever clone runs; only the
 * vector width differs.  AVX-512 is used only where it measured faster
 * (doc/performance.md, 2026-11-27 session 4: the DoReFa weight's tanh and
 * max/backward loops, lsq, lsq-step, nonuniform and the var-mean
 * normalisation); the compare-and-blend loops of pact, DoReFa activations,
 * bin and xnor ran 10-40 % slower with it.  Other compilers and targets, and
 * sanitizer builds, get the plain function.  Define EQ_QSIMD (e.g. empty:
 * -DEQ_QSIMD=) to give every loop that attribute instead. */
#ifndef EQ_QSIMD
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define EQ_QSIMD __attribute__((target_clones("avx2", "default")))
#define EQ_QSIMD_WIDE __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define EQ_QSIMD
#endif
#endif
#ifndef EQ_QSIMD_WIDE
#define EQ_QSIMD_WIDE EQ_QSIMD
#endif

/* PyTorch round(): half to even. */
static inline float eq_qround(float v)
{
    /* rintf under the default rounding mode, without a libm call: adding
     * 1.5 * 2^23 leaves no fraction bits, so the FPU rounds half to even.
     * |v| >= 2^22 is already an integer (or NaN/inf) and is returned. */
    float a = fabsf(v);
    float r = copysignf((a + 12582912.0f) - 12582912.0f, v);
    return a < 4194304.0f ? r : v;
}
/* tanh in float without a libm call, so loops over it vectorize.  Odd;
 * |x| < 0.55: x + x z P(z), z = x^2, P a degree-5 minimax fit of
 * (tanh x - x)/x^3; else 1 - 2/(e^{2|x|} + 1) with e^y = 2^k p(r) (Cody-Waite
 * reduction, degree-7 Taylor p), |x| clamped at 9.5 (tanh rounds to 1 there).
 * Over every float in [0, 10]: 99.7 % correctly rounded, the rest 1 ulp
 * off (two values 2 ulp); glibc 2.36's tanhf is correctly rounded for
 * 94.6 % (2 ulp at worst).  NaN in, NaN out; +-inf: +-1; -0: -0.  Tested
 * against tanh in double by tests/check_quant. */
static inline float eq_qbits_f(int32_t i)
{
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}
static inline int32_t eq_qf_bits(float f)
{
    int32_t i;
    memcpy(&i, &f, sizeof i);
    return i;
}
static inline float eq_qtanh(float x)
{
    int32_t xi = eq_qf_bits(x);
    int32_t sgn = (int32_t)((uint32_t)xi & 0x80000000u);
    float a = eq_qbits_f(xi & 0x7fffffff);
    float z = a * a;
    float p = -0.008413956500589848f + z * 0.002395821502432227f;
    p = 0.021782824769616127f + z * p;
    p = -0.05395964905619621f + z * p;
    p = 0.13333293795585632f + z * p;
    p = -0.3333333134651184f + z * p;
    float small = a + a * (z * p);
    float b = a < 9.5f ? a : 9.5f; /* tanh rounds to 1 from 9.011; NaN: 9.5 (k stays an int) */
    b = b + b;
    float kf = (b * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(b / ln 2) */
    float r = b - kf * 0.693145751953125f;                              /* ln 2, high part */
    r = r - kf * 1.428606765330187045e-06f;                             /* low part */
    float e = 1.0f / 5040.0f;
    e = 1.0f / 720.0f + r * e;
    e = 1.0f / 120.0f + r * e;
    e = 1.0f / 24.0f + r * e;
    e = 1.0f / 6.0f + r * e;
    e = 0.5f + r * e;
    e = 1.0f + r * e;
    e = 1.0f + r * e;
    e = eq_qbits_f(eq_qf_bits(e) + (int32_t)((uint32_t)(int32_t)kf << 23)); /* times 2^k, 0 <= k <= 28 */
    float large = 1.0f - 2.0f / (e + 1.0f);
    float t = a < 0.55f ? small : large;
    t = a != a ? a : t;
    return eq_qbits_f(eq_qf_bits(t) | sgn);
}
static inline float eq_qclamp(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }
static inline float eq_qsgn(float v) { return v < 0.0f ? -1.0f : 1.0f; } /* sgn+ */
static inline float eq_qsign(float v) { return v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : 0.0f); }

/* Sum of v[0..n) in double over four interleaved lanes: a fixed order that
 * keeps the float loops producing v vectorizable. */
static inline double eq_qsum(const float *v, int64_t n)
{
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a0 += v[i];
        a1 += v[i + 1];
        a2 += v[i + 2];
        a3 += v[i + 3];
    }
    for (; i < n; i++) a0 += v[i];
    return (a0 + a1) + (a2 + a3);
}
#define EQ_QBLOCK 256 /* elements per stack block of products */

/* sum |x| and sum a*b in double, through float blocks (vectorizable). */
static inline double eq_qsum_abs(const float *x, int64_t n)
{
    double acc = 0;
    float t[EQ_QBLOCK];
    for (int64_t b = 0; b < n; b += EQ_QBLOCK) {
        int64_t m = n - b < EQ_QBLOCK ? n - b : EQ_QBLOCK;
        for (int64_t j = 0; j < m; j++) t[j] = fabsf(x[b + j]);
        acc += eq_qsum(t, m);
    }
    return acc;
}
static inline double eq_qdot(const float *a, const float *b2, int64_t n)
{
    double acc = 0;
    float t[EQ_QBLOCK];
    for (int64_t b = 0; b < n; b += EQ_QBLOCK) {
        int64_t m = n - b < EQ_QBLOCK ? n - b : EQ_QBLOCK;
        for (int64_t j = 0; j < m; j++) t[j] = a[b + j] * b2[b + j];
        acc += eq_qsum(t, m);
    }
    return acc;
}

/* GradientScale's effective factor (§2.3): returns 1 when the original
 * skips the scaling (int(f) == 1 unless exact_grad_scale), else f. */
double eq_quant_gs_factor(const eq_quant *q, double f);
/* The value GradientScale produces in the forward pass: v*f + (v - v*f)
 * in float32 (not always exactly v). */
static inline float eq_quant_gs_value(float v, float f)
{
    if (f == 1.0f) return v;
    float vf = v * f;
    return vf + (v - vf);
}
/* LSQ grad factor f of the clip parameter (§2.8 table). */
double eq_quant_grad_factor(const eq_quant *q);

/* Iterate runs of elements sharing one group: for each run, [start, start+len)
 * all belong to group k.  A run is `inner * block` consecutive elements
 * (eq_quant_forward makes a single-group tensor one run). */
#define EQ_QFOR_RUNS(q, start, len, k) EQ_QFOR_RUNS_IN(q, 0, (q)->n, start, len, k)

/* Call fn(q, ctx, c, lo, hi) for every chunk c = [lo, hi) of the last
 * forward's element range, on the pool when one is set.  fn must only write
 * elements of its own chunk and its own accumulator slots. */
typedef void (*eq_qchunk_fn)(eq_quant *q, void *ctx, int64_t c, int64_t lo, int64_t hi);
void eq_quant_for_chunks(eq_quant *q, eq_qchunk_fn fn, void *ctx);
/* Zeroed per-chunk accumulators: nchunks * per_chunk doubles (chunk c at
 * c * per_chunk), per_chunk <= EQ_QUANT_ACC_PER_GROUP * (groups + 1);
 * reserved by eq_quant_forward, so it does not fail.  Valid until the next
 * call. */
#define EQ_QUANT_ACC_PER_GROUP 4
double *eq_quant_chunk_acc(eq_quant *q, int64_t per_chunk);

/* Runs within [lo, hi) (lo a multiple of the run length, or any lo when
 * there is one group); the last run is cut at hi. */
#define EQ_QFOR_RUNS_IN(q, lo, hi, start, len, k)                                            \
    for (int64_t _rl = (q)->grp.inner * (q)->grp.block, _j = (lo) / _rl,                     \
                 _ng = (q)->grp.period / (q)->grp.block, start = (lo),                       \
                 len = _rl < (hi) - (lo) ? _rl : (hi) - (lo), k = _j % _ng;                  \
         start < (hi); start += len, _j++, len = _rl < (hi) - start ? _rl : (hi) - start,    \
                 k = _j % _ng)

/* 1 when every group is a single position of the innermost axis, so that
 * element i belongs to group i % period (per-channel NHWC/NC activations):
 * runs are one element long there, and methods iterate rows instead, with
 * per-position parameter vectors, so the loops still vectorize. */
static inline int eq_quant_rowwise(const eq_quant *q)
{
    return q->grp.inner == 1 && q->grp.block == 1 && q->grp.period > 1;
}

/* Row segments within [lo, hi) for eq_quant_rowwise tensors: [start,
 * start+len) holds groups j0 .. j0+len-1 (a row cut at lo, hi and the row
 * ends). */
#define EQ_QFOR_ROWS_IN(q, lo, hi, start, len, j0)                                            \
    for (int64_t _p = (q)->grp.period, start = (lo), j0 = (lo) % _p,                          \
                 len = _p - j0 < (hi) - (lo) ? _p - j0 : (hi) - (lo);                         \
         start < (hi); start += len, j0 = 0, len = _p < (hi) - start ? _p : (hi) - start)

#endif
