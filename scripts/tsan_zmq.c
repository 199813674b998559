/*
 * scripts/tsan_zmq.c -- LD_PRELOAD shim that tells ThreadSanitizer about the
 * happens-before edges libzmq creates (used by scripts/sanitize --tsan only;
 * not part of the build).
 *
 * libzmq is not built with -fsanitize=thread, so TSan cannot see that a
 * message sent on one thread (eq's zero-copy zmq_msg_init_data buffers, the
 * loader's workers handing finished batches to the main thread over
 * inproc://) is received on another only after the send.  Every access to
 * such a buffer on the receiving side is then reported as a race with the
 * sender's writes (~150 reports per loader/feeder test program).  This shim
 * wraps the send and receive calls: a send releases one global sync object,
 * a receive acquires it, and a zero-copy buffer's free callback (which
 * libzmq may run on its I/O thread) acquires it too.  That is coarser than
 * the real edges (any send happens before any later receive), so it can
 * hide a race whose two sides are ordered only by an unrelated message; it
 * adds no edge between threads that do not talk over zmq.
 *
 *   gcc -O1 -g -fPIC -shared -o tsan_zmq.so scripts/tsan_zmq.c -ldl
 *   LD_PRELOAD=$PWD/tsan_zmq.so ./tests/check_feeder
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <zmq.h>

/* weak: a process without the TSan runtime (the shell, python) that
 * inherits LD_PRELOAD gets plain pass-through wrappers */
void __tsan_acquire(void *addr) __attribute__((weak));
void __tsan_release(void *addr) __attribute__((weak));
#define __tsan_acquire(a) (__tsan_acquire ? __tsan_acquire(a) : (void)0)
#define __tsan_release(a) (__tsan_release ? __tsan_release(a) : (void)0)

static char s_sync;

#define S_NEXT(name) \
    static __typeof__(name) *real; \
    if (!real) real = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)

int zmq_msg_send(zmq_msg_t *msg, void *s, int flags)
{
    S_NEXT(zmq_msg_send);
    __tsan_release(&s_sync);
    return real(msg, s, flags);
}

int zmq_send(void *s, const void *buf, size_t len, int flags)
{
    S_NEXT(zmq_send);
    __tsan_release(&s_sync);
    return real(s, buf, len, flags);
}

int zmq_send_const(void *s, const void *buf, size_t len, int flags)
{
    S_NEXT(zmq_send_const);
    __tsan_release(&s_sync);
    return real(s, buf, len, flags);
}

int zmq_msg_recv(zmq_msg_t *msg, void *s, int flags)
{
    S_NEXT(zmq_msg_recv);
    int rc = real(msg, s, flags);
    __tsan_acquire(&s_sync);
    return rc;
}

int zmq_recv(void *s, void *buf, size_t len, int flags)
{
    S_NEXT(zmq_recv);
    int rc = real(s, buf, len, flags);
    __tsan_acquire(&s_sync);
    return rc;
}

typedef struct {
    zmq_free_fn *ffn;
    void *hint;
} s_free;

static void s_free_tramp(void *data, void *hint)
{
    __tsan_acquire(&s_sync);
    s_free f = *(s_free *)hint;
    free(hint);
    f.ffn(data, f.hint);
}

int zmq_msg_init_data(zmq_msg_t *msg, void *data, size_t size, zmq_free_fn *ffn, void *hint)
{
    S_NEXT(zmq_msg_init_data);
    s_free *f = ffn ? malloc(sizeof *f) : NULL;
    if (!f) return real(msg, data, size, ffn, hint);
    f->ffn = ffn;
    f->hint = hint;
    int rc = real(msg, data, size, s_free_tramp, f);
    if (rc != 0) free(f);
    return rc;
}
