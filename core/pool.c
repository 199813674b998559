/* core/pool.c -- fixed thread pool, blocking parallel-for. */
#include "core/pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct eq_pool {
    int nthreads;           /* including the caller (worker 0) */
    pthread_t *threads;     /* nthreads - 1 */
    pthread_mutex_t call_mu; /* serialises eq_pool_for calls */
    pthread_mutex_t mu;
    pthread_cond_t start_cv, done_cv;
    /* the current job */
    uint64_t generation;
    eq_pool_fn fn;
    void *ctx;
    size_t n;
    atomic_size_t next;
    int active;             /* helper threads still working on this generation */
    int stop;
};

static _Thread_local const eq_pool *s_current_pool;

int eq_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

static void s_drain(eq_pool *p, int worker)
{
    for (;;) {
        size_t i = atomic_fetch_add(&p->next, 1);
        if (i >= p->n) break;
        p->fn(p->ctx, i, worker);
    }
}

typedef struct {
    eq_pool *pool;
    int worker;
} s_thread_arg;

static void *s_worker_main(void *arg_)
{
    s_thread_arg *arg = arg_;
    eq_pool *p = arg->pool;
    int worker = arg->worker;
    free(arg);
    s_current_pool = p;
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->generation == seen) pthread_cond_wait(&p->start_cv, &p->mu);
        if (p->stop) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        s_drain(p, worker);
        pthread_mutex_lock(&p->mu);
        if (--p->active == 0) pthread_cond_signal(&p->done_cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

eq_pool *eq_pool_new(int nthreads, eq_err *err)
{
    if (nthreads <= 0) nthreads = eq_cpu_count();
    eq_pool *p = calloc(1, sizeof *p);
    if (!p) {
        eq_err_set(err, EQ_ERR_NOMEM, "thread pool: out of memory");
        return NULL;
    }
    p->nthreads = nthreads;
    pthread_mutex_init(&p->call_mu, NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start_cv, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    atomic_init(&p->next, 0);
    if (nthreads > 1) {
        p->threads = calloc((size_t)nthreads - 1, sizeof *p->threads);
        if (!p->threads) {
            eq_err_set(err, EQ_ERR_NOMEM, "thread pool: out of memory");
            p->nthreads = 1;
            eq_pool_destroy(&p);
            return NULL;
        }
        for (int t = 1; t < nthreads; t++) {
            s_thread_arg *arg = malloc(sizeof *arg);
            int rc = arg ? 0 : -1;
            if (arg) {
                arg->pool = p;
                arg->worker = t;
                rc = pthread_create(&p->threads[t - 1], NULL, s_worker_main, arg);
                if (rc != 0) free(arg);
            }
            if (rc != 0) {
                eq_err_set(err, EQ_ERR_INTERNAL, "thread pool: cannot start thread %d of %d: %s", t,
                           nthreads, strerror(rc > 0 ? rc : ENOMEM));
                p->nthreads = t; /* join the ones started */
                eq_pool_destroy(&p);
                return NULL;
            }
        }
    }
    return p;
}

void eq_pool_destroy(eq_pool **pool_p)
{
    if (!pool_p || !*pool_p) return;
    eq_pool *p = *pool_p;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    for (int t = 1; t < p->nthreads; t++) pthread_join(p->threads[t - 1], NULL);
    free(p->threads);
    pthread_cond_destroy(&p->start_cv);
    pthread_cond_destroy(&p->done_cv);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->call_mu);
    free(p);
    *pool_p = NULL;
}

int eq_pool_size(const eq_pool *pool) { return pool ? pool->nthreads : 1; }

void eq_pool_for(eq_pool *p, size_t n, eq_pool_fn fn, void *ctx)
{
    if (n == 0) return;
    if (!p || p->nthreads == 1 || n == 1 || s_current_pool == p) {
        for (size_t i = 0; i < n; i++) fn(ctx, i, 0);
        return;
    }
    pthread_mutex_lock(&p->call_mu);
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    atomic_store(&p->next, 0);
    p->active = p->nthreads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);

    const eq_pool *outer = s_current_pool;
    s_current_pool = p;
    s_drain(p, 0);
    s_current_pool = outer;

    pthread_mutex_lock(&p->mu);
    while (p->active > 0) pthread_cond_wait(&p->done_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_unlock(&p->call_mu);
}
