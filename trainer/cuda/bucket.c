/*
 * trainer/cuda/bucket.c -- gradient bucket planning (see bucket.h).
 */
#include "trainer/cuda/bucket.h"

#include <stdlib.h>
#include <string.h>

static size_t s_align(size_t n)
{
    return (n + EQ_BUCKET_ALIGN - 1) / EQ_BUCKET_ALIGN * EQ_BUCKET_ALIGN;
}

void eq_bucket_plan_destroy(eq_bucket_plan **pp)
{
    if (!pp || !*pp) return;
    eq_bucket_plan *p = *pp;
    free(p->order);
    free(p->bucket_of);
    free(p->offset);
    free(p->buckets);
    free(p->ready_mark);
    free(p);
    *pp = NULL;
}

eq_status eq_bucket_plan_new(size_t nparams, const size_t *bytes, size_t cap, size_t first_cap,
                             eq_bucket_plan **out, eq_err *err)
{
    if (!out) return eq_err_set(err, EQ_ERR_INVALID, "bucket plan: output pointer is NULL");
    *out = NULL;
    if (nparams == 0 || !bytes) return eq_err_set(err, EQ_ERR_INVALID, "bucket plan: no parameters");
    if (cap == 0) return eq_err_set(err, EQ_ERR_INVALID, "bucket plan: bucket cap is 0 bytes");
    if (first_cap == 0) first_cap = cap;
    for (size_t i = 0; i < nparams; i++) {
        if (bytes[i] == 0)
            return eq_err_set(err, EQ_ERR_INVALID, "bucket plan: parameter %zu has 0 bytes", i);
        if (bytes[i] > SIZE_MAX / 4)
            return eq_err_set(err, EQ_ERR_LIMIT, "bucket plan: parameter %zu has %zu bytes", i, bytes[i]);
    }
    eq_bucket_plan *p = calloc(1, sizeof *p);
    if (!p) return eq_err_set(err, EQ_ERR_NOMEM, "bucket plan: out of memory");
    p->nparams = nparams;
    p->order = eq_calloc_array(nparams, sizeof *p->order);
    p->bucket_of = eq_calloc_array(nparams, sizeof *p->bucket_of);
    p->offset = eq_calloc_array(nparams, sizeof *p->offset);
    p->buckets = eq_calloc_array(nparams, sizeof *p->buckets); /* at most one per parameter */
    p->ready_mark = eq_calloc_array(nparams, 1);
    if (!p->order || !p->bucket_of || !p->offset || !p->buckets || !p->ready_mark) {
        eq_bucket_plan_destroy(&p);
        return eq_err_set(err, EQ_ERR_NOMEM, "bucket plan: out of memory for %zu parameters", nparams);
    }
    size_t nb = 0, off = 0;
    eq_bucket *b = NULL;
    for (size_t j = 0; j < nparams; j++) {
        size_t i = nparams - 1 - j, sz = s_align(bytes[i]);
        size_t limit = nb == 1 ? first_cap : cap; /* nb == 1: filling the first bucket */
        if (!b || b->bytes + sz > limit) {
            b = &p->buckets[nb++];
            b->first = j;
            b->offset = off;
        }
        if (off > SIZE_MAX - sz) {
            eq_bucket_plan_destroy(&p);
            return eq_err_set(err, EQ_ERR_LIMIT, "bucket plan: gradients exceed the address space");
        }
        p->order[j] = i;
        p->bucket_of[i] = nb - 1;
        p->offset[i] = off;
        off += sz;
        b->bytes += sz;
        b->count++;
    }
    p->nbuckets = nb;
    p->arena_bytes = off;
    *out = p;
    return EQ_OK;
}

void eq_bucket_reset(eq_bucket_plan *p)
{
    if (!p) return;
    for (size_t b = 0; b < p->nbuckets; b++) p->buckets[b].ready = 0;
    memset(p->ready_mark, 0, p->nparams);
}

long eq_bucket_mark_ready(eq_bucket_plan *p, size_t i, eq_err *err)
{
    if (!p || i >= p->nparams) {
        eq_err_set(err, EQ_ERR_INVALID, "bucket: parameter %zu out of range (%zu parameters)", i,
                   p ? p->nparams : (size_t)0);
        return -2;
    }
    if (p->ready_mark[i]) {
        eq_err_set(err, EQ_ERR_INVALID, "bucket: gradient of parameter %zu marked ready twice in one step", i);
        return -2;
    }
    p->ready_mark[i] = 1;
    eq_bucket *b = &p->buckets[p->bucket_of[i]];
    b->ready++;
    return b->ready == b->count ? (long)p->bucket_of[i] : -1;
}
