/*
 * trainer/cuda/bucket.h -- gradient buckets for data-parallel all-reduce.
 *
 * Backward produces gradients in reverse layer order, so parameters are
 * grouped in that order into buckets of about `cap_bytes` (PyTorch DDP's
 * scheme, with a smaller first bucket so the first all-reduce starts
 * early): a bucket can be reduced as soon as its last gradient exists,
 * overlapping communication with the rest of the backward.  The plan also
 * lays the gradients out in one flat arena, bucket after bucket, so that
 * every bucket is one contiguous range (no copies before the collective).
 *
 * Plain C with no CUDA dependency: the plan is the same on every backend
 * and is unit-tested without a GPU (tests/check_cuda_bucket.c).  The NCCL
 * side (trainer/cuda/nccl.h) reduces arena ranges.
 *
 * Thread safety: a plan is used by one thread at a time.
 */
#ifndef EQ_TRAINER_CUDA_BUCKET_H
#define EQ_TRAINER_CUDA_BUCKET_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

/* Alignment of every gradient inside the arena (bytes): a multiple of the
 * 256 bytes cudaMalloc guarantees is not needed; 64 keeps vector loads and
 * NCCL's 16-byte preference happy. */
#define EQ_BUCKET_ALIGN 64

typedef struct eq_bucket {
    size_t first, count; /* params order[first .. first+count) (reverse layer order) */
    size_t offset;       /* arena byte offset of the bucket */
    size_t bytes;        /* bucket length in bytes (multiple of EQ_BUCKET_ALIGN) */
    size_t ready;        /* gradients marked ready this step */
} eq_bucket;

typedef struct eq_bucket_plan {
    size_t nparams, nbuckets;
    size_t *order;        /* [nparams]: parameter index in bucket order (reverse) */
    size_t *bucket_of;    /* [nparams]: bucket of parameter i */
    size_t *offset;       /* [nparams]: arena byte offset of parameter i's gradient */
    eq_bucket *buckets;   /* [nbuckets] */
    size_t arena_bytes;   /* total arena size */
    unsigned char *ready_mark; /* [nparams]: marked ready this step */
} eq_bucket_plan;

/* Plan buckets for `nparams` gradients of bytes[i] bytes (> 0, in layer
 * order: parameter 0 is the first layer's).  Buckets take parameters from
 * the last one backwards while their size stays <= cap (the first bucket:
 * first_cap; 0 means cap); a parameter larger than the cap gets a bucket of
 * its own.  Errors: EQ_ERR_INVALID (no parameters, a size 0, cap 0),
 * EQ_ERR_LIMIT (sizes overflow), EQ_ERR_NOMEM.  Caller owns *out. */
eq_status eq_bucket_plan_new(size_t nparams, const size_t *bytes, size_t cap, size_t first_cap,
                             eq_bucket_plan **out, eq_err *err);
void eq_bucket_plan_destroy(eq_bucket_plan **p);

/* Start of a step: no gradient is ready. */
void eq_bucket_reset(eq_bucket_plan *p);

/* Mark parameter i's gradient as produced.  Returns the index of the bucket
 * this completes (ready to reduce) or -1 if it is not complete yet.
 * EQ_ERR_INVALID (returned as -2 with err set) for an index out of range or a
 * parameter marked twice in one step. */
long eq_bucket_mark_ready(eq_bucket_plan *p, size_t i, eq_err *err);

#endif
