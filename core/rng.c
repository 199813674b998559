/* core/rng.c -- Philox4x32-10 (Salmon et al., SC'11; Random123 constants). */
#include "core/rng.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void eq_philox4x32_10(const uint32_t key[2], const uint32_t ctr[4], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

void eq_rng_block(uint64_t seed, uint64_t stream, uint64_t counter, uint32_t out[4])
{
    const uint32_t key[2] = { (uint32_t)seed, (uint32_t)(seed >> 32) };
    const uint32_t ctr[4] = { (uint32_t)counter, (uint32_t)(counter >> 32), (uint32_t)stream,
                              (uint32_t)(stream >> 32) };
    eq_philox4x32_10(key, ctr, out);
}

void eq_rng_init(eq_rng *r, uint64_t seed, uint64_t stream)
{
    r->seed = seed;
    r->stream = stream;
    r->counter = 0;
    r->pos = 4;
}

void eq_rng_seek(eq_rng *r, uint64_t word)
{
    r->counter = word / 4;
    r->pos = 4;
    if (word % 4) {
        eq_rng_block(r->seed, r->stream, r->counter++, r->buf);
        r->pos = (int)(word % 4);
    }
}

uint32_t eq_rng_u32(eq_rng *r)
{
    if (r->pos >= 4) {
        eq_rng_block(r->seed, r->stream, r->counter++, r->buf);
        r->pos = 0;
    }
    return r->buf[r->pos++];
}

uint64_t eq_rng_u64(eq_rng *r)
{
    uint64_t lo = eq_rng_u32(r);
    uint64_t hi = eq_rng_u32(r);
    return lo | (hi << 32);
}

float eq_rng_uniform(eq_rng *r) { return (float)(eq_rng_u32(r) >> 8) * (1.0f / 16777216.0f); }

double eq_rng_uniform_double(eq_rng *r) { return (double)(eq_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0); }

uint32_t eq_rng_below(eq_rng *r, uint32_t n)
{
    if (n <= 1) return 0;
    uint64_t m = (uint64_t)eq_rng_u32(r) * n;
    uint32_t low = (uint32_t)m;
    if (low < n) {
        uint32_t threshold = (uint32_t)(-n) % n;
        while (low < threshold) {
            m = (uint64_t)eq_rng_u32(r) * n;
            low = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

double eq_rng_normal(eq_rng *r)
{
    double u1 = 1.0 - eq_rng_uniform_double(r); /* (0, 1] */
    double u2 = eq_rng_uniform_double(r);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

double eq_rng_gamma(eq_rng *r, double shape)
{
    if (!(shape > 0)) return 0.0;
    if (shape < 1.0) {
        /* Gamma(a) = Gamma(a + 1) * U^(1/a) */
        double u = 1.0 - eq_rng_uniform_double(r);
        return eq_rng_gamma(r, shape + 1.0) * pow(u, 1.0 / shape);
    }
    double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x, v;
        do {
            x = eq_rng_normal(r);
            v = 1.0 + c * x;
        } while (v <= 0.0);
        v = v * v * v;
        double u = 1.0 - eq_rng_uniform_double(r);
        if (u < 1.0 - 0.0331 * x * x * x * x) return d * v;
        if (log(u) < 0.5 * x * x + d * (1.0 - v + log(v))) return d * v;
    }
}

double eq_rng_beta(eq_rng *r, double a, double b)
{
    double x = eq_rng_gamma(r, a), y = eq_rng_gamma(r, b);
    if (x + y <= 0.0) return 0.5;
    return x / (x + y);
}

void eq_rng_permute(eq_rng *r, uint32_t *idx, size_t n)
{
    for (size_t i = n; i > 1; i--) {
        uint32_t j = eq_rng_below(r, (uint32_t)i);
        uint32_t t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
}

static uint64_t s_splitmix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t eq_rng_mix(uint64_t a, uint64_t b) { return s_splitmix64(s_splitmix64(a) ^ (b * 0xD6E8FEB86659FD93ull)); }
