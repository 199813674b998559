/*
 * core/rng.h -- counter-based random numbers (Philox4x32-10).
 *
 * Every draw is a pure function of (seed, stream, counter): any sample's
 * randomness can be derived without replaying the draws of others, on any
 * host or thread.  Convention in eq: a stream names one consumer, built with
 * eq_rng_mix() from what identifies it, e.g. for the augmentation of sample
 * `index` in `epoch`:  eq_rng_init(&r, seed, eq_rng_mix(eq_rng_mix(TAG, epoch), index)).
 *
 * The key is the 64-bit seed; the 128-bit Philox counter holds the 64-bit
 * block counter (low words) and the 64-bit stream (high words).  Each block
 * yields four 32-bit words, consumed in order.  The generator matches the
 * Random123 reference (known-answer vectors in tests/check_rng.c).
 */
#ifndef EQ_RNG_H
#define EQ_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct eq_rng {
    uint64_t seed;
    uint64_t stream;
    uint64_t counter; /* next block to generate */
    uint32_t buf[4];
    int pos;          /* next unread word of buf; 4 = empty */
} eq_rng;

/* The raw bijection: out = Philox4x32-10(key, ctr). */
void eq_philox4x32_10(const uint32_t key[2], const uint32_t ctr[4], uint32_t out[4]);
/* One block for (seed, stream, counter). */
void eq_rng_block(uint64_t seed, uint64_t stream, uint64_t counter, uint32_t out[4]);

void eq_rng_init(eq_rng *r, uint64_t seed, uint64_t stream);
/* Jump to word `n` of the stream (n/4 blocks in). */
void eq_rng_seek(eq_rng *r, uint64_t word);

uint32_t eq_rng_u32(eq_rng *r);
uint64_t eq_rng_u64(eq_rng *r);
/* Uniform in [0, 1): float from 24 bits, double from 53 bits. */
float eq_rng_uniform(eq_rng *r);
double eq_rng_uniform_double(eq_rng *r);
/* Uniform integer in [0, n), unbiased (Lemire's method); n >= 1. */
uint32_t eq_rng_below(eq_rng *r, uint32_t n);
/* Standard normal (Box-Muller, double precision internally). */
double eq_rng_normal(eq_rng *r);
/* Gamma(shape, 1) (Marsaglia-Tsang) and Beta(a, b), for mixup's lambda. */
double eq_rng_gamma(eq_rng *r, double shape);
double eq_rng_beta(eq_rng *r, double a, double b);
/* In-place Fisher-Yates shuffle of idx[0..n). */
void eq_rng_permute(eq_rng *r, uint32_t *idx, size_t n);

/* Hash two 64-bit values into one (splitmix64 finaliser based), for
 * deriving seeds and streams from tuples such as (seed, epoch). */
uint64_t eq_rng_mix(uint64_t a, uint64_t b);

#endif
