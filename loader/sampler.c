/*
 * loader/sampler.c -- the epoch's global order and the mixup/cutmix plan.
 *
 * Order: position p of epoch e is perm_e[p], perm_e = Fisher-Yates of
 * [0, n) with eq_rng_init(seed, mix(mix(TAG_ORDER, split), e)).  Global step
 * s covers positions [s*G, (s+1)*G).  How the last partial global batch is
 * handled is eq_last_batch.  Nothing here depends on ranks or world size.
 */
#include "loader/loader.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "loader/loader_internal.h"

struct eq_sampler {
    eq_sampler_cfg cfg;
    size_t n;
    pthread_mutex_t mu;
    struct {
        uint32_t *perm;
        uint64_t epoch;
        uint64_t used; /* LRU tick; 0 = empty */
    } cache[2];
    uint64_t tick;
};

uint64_t eq_sampler_steps(const eq_sampler_cfg *cfg, size_t n)
{
    if (cfg->global_batch == 0) return 0;
    uint64_t g = cfg->global_batch;
    if (cfg->last == EQ_LAST_DROP) return n / g;
    return (n + g - 1) / g;
}

eq_sampler *eq_sampler_new(const eq_sampler_cfg *cfg, size_t n, eq_err *err)
{
    if (cfg->global_batch == 0) {
        eq_err_set(err, EQ_ERR_INVALID, "sampler: global_batch must be > 0");
        return NULL;
    }
    if (n == 0 || n > UINT32_MAX) {
        eq_err_set(err, EQ_ERR_INVALID, "sampler: dataset size %zu outside [1, 2^32)", n);
        return NULL;
    }
    if ((unsigned)cfg->last > EQ_LAST_PARTIAL) {
        eq_err_set(err, EQ_ERR_INVALID, "sampler: bad last-batch mode %d", (int)cfg->last);
        return NULL;
    }
    eq_sampler *s = calloc(1, sizeof *s);
    if (!s) {
        eq_err_set(err, EQ_ERR_NOMEM, "sampler: out of memory");
        return NULL;
    }
    s->cfg = *cfg;
    s->n = n;
    pthread_mutex_init(&s->mu, NULL);
    return s;
}

void eq_sampler_destroy(eq_sampler **self_p)
{
    if (!self_p || !*self_p) return;
    eq_sampler *s = *self_p;
    for (int i = 0; i < 2; i++) free(s->cache[i].perm);
    pthread_mutex_destroy(&s->mu);
    free(s);
    *self_p = NULL;
}

/* Permutation of `epoch`, from the cache or computed; called locked. */
static const uint32_t *s_perm(eq_sampler *s, uint64_t epoch, eq_err *err)
{
    s->tick++;
    for (int i = 0; i < 2; i++)
        if (s->cache[i].used && s->cache[i].epoch == epoch) {
            s->cache[i].used = s->tick;
            return s->cache[i].perm;
        }
    int v = s->cache[0].used <= s->cache[1].used ? 0 : 1;
    if (!s->cache[v].perm && !(s->cache[v].perm = eq_malloc_array(s->n, sizeof(uint32_t)))) {
        eq_err_set(err, EQ_ERR_NOMEM, "sampler: cannot allocate a permutation of %zu", s->n);
        return NULL;
    }
    uint32_t *p = s->cache[v].perm;
    for (size_t i = 0; i < s->n; i++) p[i] = (uint32_t)i;
    eq_rng r;
    eq_rng_init(&r, s->cfg.seed, eq_rng_mix(eq_rng_mix(EQ_TAG_ORDER, s->cfg.split), epoch));
    eq_rng_permute(&r, p, s->n);
    s->cache[v].epoch = epoch;
    s->cache[v].used = s->tick;
    return p;
}

eq_status eq_sampler_range(eq_sampler *s, uint64_t epoch, uint64_t step, uint32_t offset,
                           uint32_t count, uint32_t *out, uint32_t *n_out, eq_err *err)
{
    *n_out = 0;
    const uint64_t g = s->cfg.global_batch, steps = eq_sampler_steps(&s->cfg, s->n);
    if ((uint64_t)offset + count > g)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "sampler: offset %u + count %u exceeds the global batch %llu", offset,
                          count, (unsigned long long)g);
    if (step >= steps)
        return eq_err_set(err, EQ_ERR_INVALID, "sampler: step %llu >= %llu steps per epoch",
                          (unsigned long long)step, (unsigned long long)steps);
    const uint32_t *perm = NULL;
    pthread_mutex_lock(&s->mu);
    if (s->cfg.shuffle && !(perm = s_perm(s, epoch, err))) {
        pthread_mutex_unlock(&s->mu);
        return EQ_ERR_NOMEM;
    }
    uint32_t k = 0;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t pos = step * g + offset + i;
        if (pos >= s->n) {
            if (s->cfg.last == EQ_LAST_PARTIAL) break;
            pos %= s->n; /* WRAP (DROP never gets here) */
        }
        out[k++] = perm ? perm[pos] : (uint32_t)pos;
    }
    pthread_mutex_unlock(&s->mu);
    *n_out = k;
    return EQ_OK;
}

/* ----------------------------------------------------------------- mix */

eq_status eq_mix_plan(const eq_mix_cfg *cfg, uint64_t seed, uint32_t split, uint64_t epoch,
                      uint64_t step, uint32_t g, uint32_t h, uint32_t w, eq_mix_entry *out,
                      eq_err *err)
{
    if (!(cfg->mixup_alpha >= 0) || !(cfg->cutmix_alpha >= 0) || !(cfg->prob >= 0) ||
        !(cfg->prob <= 1) || !(cfg->switch_prob >= 0) || !(cfg->switch_prob <= 1))
        return eq_err_set(err, EQ_ERR_INVALID,
                          "mix: alphas must be >= 0 and probabilities in [0, 1] (mixup_alpha %g "
                          "cutmix_alpha %g prob %g switch_prob %g)",
                          (double)cfg->mixup_alpha, (double)cfg->cutmix_alpha, (double)cfg->prob,
                          (double)cfg->switch_prob);
    if (h == 0 || w == 0 || h > 65535 || w > 65535)
        return eq_err_set(err, EQ_ERR_INVALID, "mix: image size %ux%u", h, w);
    eq_rng r;
    eq_rng_init(&r, seed, eq_rng_mix(eq_rng_mix(eq_rng_mix(EQ_TAG_MIX, split), epoch), step));
    memset(out, 0, (size_t)g * sizeof *out); /* padding bytes too: plans compare bytewise */
    uint32_t block = cfg->block ? cfg->block : g;
    uint32_t *perm = eq_malloc_array(block ? block : 1, sizeof(uint32_t));
    if (!perm) return eq_err_set(err, EQ_ERR_NOMEM, "mix: out of memory");
    for (uint32_t b0 = 0; b0 < g; b0 += block) {
        uint32_t m = g - b0 < block ? g - b0 : block;
        for (uint32_t i = 0; i < m; i++) perm[i] = i;
        eq_rng_permute(&r, perm, m);
        for (uint32_t i = 0; i < m; i++) out[b0 + i].partner = b0 + perm[i];
    }
    free(perm);
    const int mixup = cfg->mixup_alpha > 0, cutmix = cfg->cutmix_alpha > 0;
    for (uint32_t i = 0; i < g; i++) {
        eq_mix_entry *e = &out[i];
        e->mode = EQ_MIX_NONE;
        e->lambda = 1.0f;
        e->y0 = e->x0 = e->y1 = e->x1 = 0;
        if (cfg->batch_lambda && i % block != 0) {
            /* the block's decision, lambda and box, drawn at its start */
            const eq_mix_entry *s0 = &out[i - i % block];
            e->mode = s0->mode;
            e->lambda = s0->lambda;
            e->y0 = s0->y0;
            e->x0 = s0->x0;
            e->y1 = s0->y1;
            e->x1 = s0->x1;
            if (e->mode == EQ_MIX_NONE) e->partner = i;
            continue;
        }
        float u = eq_rng_uniform(&r);
        if ((!mixup && !cutmix) || !(u < cfg->prob)) {
            e->partner = i;
            continue;
        }
        int use_cut = cutmix && (!mixup || eq_rng_uniform(&r) < cfg->switch_prob);
        double a = use_cut ? cfg->cutmix_alpha : cfg->mixup_alpha;
        double lam = eq_rng_beta(&r, a, a);
        if (!use_cut) {
            e->mode = EQ_MIX_MIXUP;
            e->lambda = (float)lam;
            continue;
        }
        /* timm rand_bbox: side sqrt(1 - lam), centre uniform, clipped. */
        double cut = sqrt(1.0 - lam);
        int32_t cw = (int32_t)(w * cut), ch = (int32_t)(h * cut);
        int32_t cy = (int32_t)eq_rng_below(&r, h), cx = (int32_t)eq_rng_below(&r, w);
        int32_t y0 = cy - ch / 2, y1 = cy + ch / 2, x0 = cx - cw / 2, x1 = cx + cw / 2;
        y0 = y0 < 0 ? 0 : y0;
        x0 = x0 < 0 ? 0 : x0;
        y1 = y1 > (int32_t)h ? (int32_t)h : y1;
        x1 = x1 > (int32_t)w ? (int32_t)w : x1;
        e->mode = EQ_MIX_CUTMIX;
        e->y0 = (uint16_t)y0;
        e->y1 = (uint16_t)y1;
        e->x0 = (uint16_t)x0;
        e->x1 = (uint16_t)x1;
        e->lambda = (float)(1.0 - (double)(y1 - y0) * (x1 - x0) / ((double)h * w));
    }
    return EQ_OK;
}
