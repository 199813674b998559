/*
 * core/pool.h -- a fixed thread pool with a blocking parallel-for.
 *
 * eq_pool_for(pool, n, fn, ctx) calls fn(ctx, i, worker) once for every i in
 * [0, n), spread over the pool's threads (the calling thread takes part as
 * worker 0), and returns when all calls have returned.  Work is handed out
 * one index at a time from a shared counter, so callers choose the grain by
 * what an index means (a sample, a row block, a tile).  `worker` is in
 * [0, eq_pool_size(pool)) and is stable for the duration of one call: use it
 * to index per-thread scratch buffers.
 *
 * Calls from different threads are serialised.  A call made from inside a
 * worker of the same pool runs inline on that thread (no deadlock).  Which
 * worker runs which index is not deterministic: results must not depend on
 * it (write outputs by index).
 */
#ifndef EQ_POOL_H
#define EQ_POOL_H

#include <stddef.h>

#include "core/status.h"

typedef struct eq_pool eq_pool;

typedef void (*eq_pool_fn)(void *ctx, size_t i, int worker);

/* nthreads <= 0: one per online CPU.  Caller owns the result. */
eq_pool *eq_pool_new(int nthreads, eq_err *err);
/* Stops and joins the threads.  NULL-safe; NULLs *pool_p. */
void eq_pool_destroy(eq_pool **pool_p);
int eq_pool_size(const eq_pool *pool);
/* pool may be NULL: then everything runs on the calling thread (worker 0). */
void eq_pool_for(eq_pool *pool, size_t n, eq_pool_fn fn, void *ctx);

/* Number of online CPUs (>= 1). */
int eq_cpu_count(void);

#endif
