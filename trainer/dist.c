/*
 * trainer/dist.c -- rendezvous on rank 0's control socket and the
 * collective interface with its CPU ring all-reduce over ZeroMQ (dist.h).
 */
#include "trainer/dist.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "core/clock.h"
#include "core/log.h"
#include "proto/proto_zmq.h"

#define S_MAX_FRAMES (EQ_DIST_MAX_WORLD + 4)
#define S_POLL_MS 100

/* ================================================================ frames */

/* Receive one whole multipart message (at most S_MAX_FRAMES frames kept;
 * the rest are drained and counted in *nframes as -1).  Returns the number
 * of frames kept, 0 when nothing was waiting (ZMQ_DONTWAIT), -1 on error. */
static int s_recv_all(void *sock, zmq_msg_t *f, int cap)
{
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            zmq_msg_close(&m);
            if (n == 0 && zmq_errno() == EAGAIN) return 0;
            for (int i = 0; i < n && i < cap; i++) zmq_msg_close(&f[i]);
            return -1;
        }
        more = zmq_msg_more(&m);
        if (n < cap) {
            f[n] = m;
        } else {
            zmq_msg_close(&m);
        }
        n++;
    }
    if (n > cap) {
        for (int i = 0; i < cap; i++) zmq_msg_close(&f[i]);
        return -1;
    }
    return n;
}

static void s_close_all(zmq_msg_t *f, int n)
{
    for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
}

/* Frame i as a NUL-terminated string into buf (truncated to cap-1). */
static const char *s_str(zmq_msg_t *f, char *buf, size_t cap)
{
    size_t n = zmq_msg_size(f);
    if (n >= cap) n = cap - 1;
    memcpy(buf, zmq_msg_data(f), n);
    buf[n] = 0;
    return buf;
}

static bool s_is(zmq_msg_t *f, const char *s)
{
    size_t n = strlen(s);
    return zmq_msg_size(f) == n && !memcmp(zmq_msg_data(f), s, n);
}

static bool s_parse_int(zmq_msg_t *f, long lo, long hi, long *out)
{
    char buf[32], *end;
    s_str(f, buf, sizeof buf);
    errno = 0;
    long v = strtol(buf, &end, 10);
    if (errno || end == buf || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

/* Send frames (strings or bytes) to `id` on a ROUTER (id NULL: a DEALER). */
static int s_send_frames(void *sock, const void *id, size_t idlen, const void *const *data, const size_t *len, int n)
{
    if (id && zmq_send(sock, id, idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) return -1;
    for (int i = 0; i < n; i++)
        if (zmq_send(sock, data[i], len[i], (i + 1 < n ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) < 0) return -1;
    return 0;
}

static void s_refuse(void *router, const void *id, size_t idlen, const char *why)
{
    const void *d[2] = { "refused", why };
    size_t l[2] = { 7, strlen(why) };
    if (s_send_frames(router, id, idlen, d, l, 2))
        eq_warn("rendezvous: could not answer a join: %s", zmq_strerror(zmq_errno()));
}

void eq_dist_refuse_late(void *router, const void *id, size_t idlen, const char *why)
{
    s_refuse(router, id, idlen, why);
}

void eq_dist_digest(const char *text, char out[EQ_DIST_DIGEST_CAP])
{
    uint64_t h = 1469598103934665603ull;
    for (const unsigned char *p = (const unsigned char *)(text ? text : ""); *p; p++) {
        h ^= *p;
        h *= 1099511628211ull;
    }
    snprintf(out, EQ_DIST_DIGEST_CAP, "%016" PRIx64, h);
}

static eq_status s_check_me(const eq_dist_me *me, eq_err *err)
{
    if (!me || me->world < 1 || me->world > EQ_DIST_MAX_WORLD || me->rank < 0 || me->rank >= me->world)
        return eq_err_set(err, EQ_ERR_INVALID, "rendezvous: rank %d of world %d: need 0 <= rank < world <= %d",
                          me ? me->rank : -1, me ? me->world : -1, EQ_DIST_MAX_WORLD);
    if (!me->ep || !*me->ep || strlen(me->ep) >= EQ_DIST_EP_CAP)
        return eq_err_set(err, EQ_ERR_INVALID, "rendezvous: rank %d: no collective endpoint (or longer than %d)",
                          me->rank, EQ_DIST_EP_CAP - 1);
    if (me->blob_len > EQ_DIST_BLOB_CAP)
        return eq_err_set(err, EQ_ERR_LIMIT, "rendezvous: blob of %zu bytes (at most %d)", me->blob_len,
                          EQ_DIST_BLOB_CAP);
    return EQ_OK;
}

/* ============================================================ rendezvous */

eq_status eq_dist_rendezvous_root(void *router, const eq_dist_me *me, int timeout_ms, eq_dist_other_fn *other,
                                  void *arg, volatile sig_atomic_t *stop, eq_dist_world *out, eq_err *err)
{
    eq_status st = s_check_me(me, err);
    if (st) return st;
    if (me->rank != 0) return eq_err_set(err, EQ_ERR_INVALID, "rendezvous: only rank 0 serves the rendezvous");
    memset(out, 0, sizeof *out);
    out->rank = 0;
    out->world = me->world;
    snprintf(out->ep[0], EQ_DIST_EP_CAP, "%s", me->ep);
    if (me->blob_len) memcpy(out->blob, me->blob, me->blob_len);
    out->blob_len = me->blob_len;
    if (me->world == 1) return EQ_OK;
    int W = me->world;
    bool joined[EQ_DIST_MAX_WORLD] = { false };
    uint8_t ids[EQ_DIST_MAX_WORLD][256];
    size_t idlen[EQ_DIST_MAX_WORLD] = { 0 };
    int njoined = 0;
    uint64_t t0 = eq_clock_ms();
    while (njoined < W - 1) {
        if (stop && *stop) return eq_err_set(err, EQ_ERR_INTERRUPTED, "rendezvous: stopped");
        if (timeout_ms > 0 && eq_clock_ms() - t0 > (uint64_t)timeout_ms) {
            char miss[256] = "";
            size_t u = 0;
            for (int r = 1; r < W && u < sizeof miss - 8; r++)
                if (!joined[r]) u += (size_t)snprintf(miss + u, sizeof miss - u, "%s%d", u ? ", " : "", r);
            return eq_err_set(err, EQ_ERR_TIMEOUT, "rendezvous: %d of %d ranks joined in %d ms; missing rank(s) %s",
                              njoined + 1, W, timeout_ms, miss);
        }
        zmq_pollitem_t it = { router, 0, ZMQ_POLLIN, 0 };
        if (zmq_poll(&it, 1, S_POLL_MS) < 0 && zmq_errno() != EINTR)
            return eq_err_set(err, EQ_ERR_NET, "rendezvous: poll: %s", zmq_strerror(zmq_errno()));
        for (;;) {
            zmq_msg_t f[8];
            int n = s_recv_all(router, f, 8);
            if (n == 0) break;
            if (n < 2) {
                if (n > 0) s_close_all(f, n);
                continue; /* malformed: no identity or no command */
            }
            const void *id = zmq_msg_data(&f[0]);
            size_t il = zmq_msg_size(&f[0]);
            if (!s_is(&f[1], "join")) {
                if (other) {
                    other(arg, router, id, il, &f[1], n - 1);
                } else {
                    const char *e = "{\"ok\":false,\"error\":\"waiting for the other ranks\"}";
                    const void *d[1] = { e };
                    size_t l[1] = { strlen(e) };
                    s_send_frames(router, id, il, d, l, 1);
                }
                s_close_all(f, n);
                continue;
            }
            char why[300] = "", ep[EQ_DIST_EP_CAP], dg[EQ_DIST_DIGEST_CAP];
            long rank = -1, world = -1;
            if (n != 6 || !s_parse_int(&f[2], 0, EQ_DIST_MAX_WORLD, &rank) ||
                !s_parse_int(&f[3], 1, EQ_DIST_MAX_WORLD, &world))
                snprintf(why, sizeof why, "join needs: join RANK WORLD ENDPOINT DIGEST");
            else if (world != W)
                snprintf(why, sizeof why, "rank %ld says the world has %ld ranks, rank 0 has %d", rank, world, W);
            else if (rank < 1 || rank >= W)
                snprintf(why, sizeof why, "rank %ld outside [1, %d)", rank, W);
            else if (strcmp(s_str(&f[5], dg, sizeof dg), me->digest ? me->digest : ""))
                snprintf(why, sizeof why, "rank %ld has another experiment config (digest %s, rank 0 has %s)", rank,
                         dg, me->digest ? me->digest : "");
            else if (joined[rank])
                snprintf(why, sizeof why, "rank %ld has already joined", rank);
            else if (zmq_msg_size(&f[4]) == 0 || zmq_msg_size(&f[4]) >= EQ_DIST_EP_CAP || il > sizeof ids[0])
                snprintf(why, sizeof why, "rank %ld: endpoint empty or too long", rank);
            if (why[0]) {
                eq_warn("rendezvous: refused a join: %s", why);
                s_refuse(router, id, il, why);
            } else {
                joined[rank] = true;
                njoined++;
                memcpy(ids[rank], id, il);
                idlen[rank] = il;
                snprintf(out->ep[rank], EQ_DIST_EP_CAP, "%s", s_str(&f[4], ep, sizeof ep));
                eq_info("rendezvous: rank %ld joined (%s); %d of %d", rank, out->ep[rank], njoined + 1, W);
            }
            s_close_all(f, n);
        }
    }
    /* welcome WORLD EP_0 .. EP_{W-1} BLOB */
    const void *d[EQ_DIST_MAX_WORLD + 3];
    size_t l[EQ_DIST_MAX_WORLD + 3];
    char ws[16];
    snprintf(ws, sizeof ws, "%d", W);
    int k = 0;
    d[k] = "welcome";
    l[k++] = 7;
    d[k] = ws;
    l[k++] = strlen(ws);
    for (int r = 0; r < W; r++) {
        d[k] = out->ep[r];
        l[k++] = strlen(out->ep[r]);
    }
    d[k] = out->blob;
    l[k++] = out->blob_len;
    for (int r = 1; r < W; r++)
        if (s_send_frames(router, ids[r], idlen[r], d, l, k))
            return eq_err_set(err, EQ_ERR_NET, "rendezvous: welcome to rank %d: %s", r, zmq_strerror(zmq_errno()));
    eq_info("rendezvous: all %d ranks joined", W);
    return EQ_OK;
}

eq_status eq_dist_rendezvous_join(void *zctx, const char *root_ep, const eq_dist_me *me, int timeout_ms,
                                  volatile sig_atomic_t *stop, eq_dist_world *out, eq_err *err)
{
    eq_status st = s_check_me(me, err);
    if (st) return st;
    if (me->rank == 0) return eq_err_set(err, EQ_ERR_INVALID, "rendezvous: rank 0 serves, it does not join");
    if (!root_ep || !*root_ep) return eq_err_set(err, EQ_ERR_INVALID, "rendezvous: rank %d: no endpoint of rank 0", me->rank);
    eq_proto_sockopts so;
    eq_proto_sockopts_default(&so, NULL);
    void *s = eq_proto_socket(zctx, ZMQ_DEALER, &so, err);
    if (!s) return err ? err->code : EQ_ERR_NET;
    if ((st = eq_proto_connect(s, root_ep, err))) {
        eq_proto_socket_close(&s);
        return st;
    }
    char rs[16], ws[16];
    snprintf(rs, sizeof rs, "%d", me->rank);
    snprintf(ws, sizeof ws, "%d", me->world);
    const char *dg = me->digest ? me->digest : "";
    const void *d[5] = { "join", rs, ws, me->ep, dg };
    size_t l[5] = { 4, strlen(rs), strlen(ws), strlen(me->ep), strlen(dg) };
    if (s_send_frames(s, NULL, 0, d, l, 5)) {
        st = eq_err_set(err, EQ_ERR_NET, "rendezvous: join %s: %s", root_ep, zmq_strerror(zmq_errno()));
        eq_proto_socket_close(&s);
        return st;
    }
    uint64_t t0 = eq_clock_ms();
    zmq_msg_t f[S_MAX_FRAMES];
    int n = 0;
    for (;;) {
        if (stop && *stop) {
            st = eq_err_set(err, EQ_ERR_INTERRUPTED, "rendezvous: stopped");
            break;
        }
        if (timeout_ms > 0 && eq_clock_ms() - t0 > (uint64_t)timeout_ms) {
            st = eq_err_set(err, EQ_ERR_TIMEOUT, "rendezvous: rank 0 (%s) did not welcome rank %d within %d ms",
                            root_ep, me->rank, timeout_ms);
            break;
        }
        zmq_pollitem_t it = { s, 0, ZMQ_POLLIN, 0 };
        if (zmq_poll(&it, 1, S_POLL_MS) < 0 && zmq_errno() != EINTR) {
            st = eq_err_set(err, EQ_ERR_NET, "rendezvous: poll: %s", zmq_strerror(zmq_errno()));
            break;
        }
        n = s_recv_all(s, f, S_MAX_FRAMES);
        if (n == 0) continue;
        if (n < 0) {
            st = eq_err_set(err, EQ_ERR_PROTO, "rendezvous: rank 0 (%s) answered with too many frames", root_ep);
            n = 0;
            break;
        }
        char buf[512];
        if (s_is(&f[0], "refused")) {
            st = eq_err_set(err, EQ_ERR_INVALID, "rendezvous: rank 0 (%s) refused rank %d: %s", root_ep, me->rank,
                            n > 1 ? s_str(&f[1], buf, sizeof buf) : "(no reason)");
            break;
        }
        long w = 0;
        if (!s_is(&f[0], "welcome") || n < 3 || !s_parse_int(&f[1], 1, EQ_DIST_MAX_WORLD, &w)) {
            /* e.g. the answer to a status request: not ours, keep waiting */
            s_close_all(f, n);
            n = 0;
            continue;
        }
        if (w != me->world || n != 3 + w) {
            st = eq_err_set(err, EQ_ERR_PROTO, "rendezvous: welcome for a world of %ld with %d frames (rank %d of %d)", w,
                            n, me->rank, me->world);
            break;
        }
        memset(out, 0, sizeof *out);
        out->rank = me->rank;
        out->world = (int)w;
        for (int r = 0; r < w; r++) {
            if (zmq_msg_size(&f[2 + r]) == 0 || zmq_msg_size(&f[2 + r]) >= EQ_DIST_EP_CAP) {
                st = eq_err_set(err, EQ_ERR_PROTO, "rendezvous: welcome: endpoint of rank %d empty or too long", r);
                break;
            }
            s_str(&f[2 + r], out->ep[r], EQ_DIST_EP_CAP);
        }
        if (st) break;
        size_t bl = zmq_msg_size(&f[2 + w]);
        if (bl > EQ_DIST_BLOB_CAP) {
            st = eq_err_set(err, EQ_ERR_LIMIT, "rendezvous: welcome: blob of %zu bytes", bl);
            break;
        }
        memcpy(out->blob, zmq_msg_data(&f[2 + w]), bl);
        out->blob_len = bl;
        st = EQ_OK;
        break;
    }
    s_close_all(f, n);
    eq_proto_socket_close(&s);
    return st;
}

/* ============================================================ the comm */

struct eq_comm {
    const eq_comm_i *iface;
    void *ctx;
    int rank, world;
    bool started[EQ_COMM_MAX_BUCKETS];
    int nbuckets;
};

eq_comm *eq_comm_new(const eq_comm_i *iface, void *ctx, int rank, int world, eq_err *err)
{
    eq_comm *c = calloc(1, sizeof *c);
    if (!c) {
        eq_err_set(err, EQ_ERR_NOMEM, "comm: out of memory");
        return NULL;
    }
    c->iface = iface;
    c->ctx = ctx;
    c->rank = rank;
    c->world = world;
    return c;
}

void eq_comm_destroy(eq_comm **c_p)
{
    if (!c_p || !*c_p) return;
    eq_comm *c = *c_p;
    if (c->iface && c->iface->destroy) c->iface->destroy(c->ctx);
    free(c);
    *c_p = NULL;
}

int eq_comm_bucket_new(eq_comm *c, const eq_comm_seg *segs, size_t nsegs, eq_comm_op op, eq_err *err)
{
    if (!segs || !nsegs || (op != EQ_COMM_SUM && op != EQ_COMM_AVG && op != EQ_COMM_BCAST)) {
        eq_err_set(err, EQ_ERR_INVALID, "comm: a bucket needs segments and an op");
        return -1;
    }
    size_t n = 0;
    for (size_t i = 0; i < nsegs; i++) {
        if (segs[i].n && !segs[i].data) {
            eq_err_set(err, EQ_ERR_INVALID, "comm: segment %zu of a bucket has no data", i);
            return -1;
        }
        n += segs[i].n;
    }
    if (!n) {
        eq_err_set(err, EQ_ERR_INVALID, "comm: an empty bucket");
        return -1;
    }
    if (c->nbuckets >= EQ_COMM_MAX_BUCKETS) {
        eq_err_set(err, EQ_ERR_LIMIT, "comm: more than %d buckets", EQ_COMM_MAX_BUCKETS);
        return -1;
    }
    int id = c->iface->bucket_new(c->ctx, segs, nsegs, op, err);
    if (id >= 0) c->nbuckets = id + 1 > c->nbuckets ? id + 1 : c->nbuckets;
    return id;
}

eq_status eq_comm_start(eq_comm *c, int b, eq_err *err)
{
    if (b < 0 || b >= c->nbuckets) return eq_err_set(err, EQ_ERR_INVALID, "comm: no bucket %d", b);
    if (c->started[b]) return eq_err_set(err, EQ_ERR_INVALID, "comm: bucket %d already started", b);
    eq_status st = c->iface->start(c->ctx, b, err);
    if (st == EQ_OK) c->started[b] = true;
    return st;
}

eq_status eq_comm_wait(eq_comm *c, int b, eq_err *err)
{
    if (b < 0 || b >= c->nbuckets) return eq_err_set(err, EQ_ERR_INVALID, "comm: no bucket %d", b);
    if (!c->started[b]) return eq_err_set(err, EQ_ERR_INVALID, "comm: bucket %d was not started", b);
    c->started[b] = false;
    return c->iface->wait(c->ctx, b, err);
}

eq_status eq_comm_run(eq_comm *c, int b, eq_err *err)
{
    eq_status st = eq_comm_start(c, b, err);
    return st ? st : eq_comm_wait(c, b, err);
}

int eq_comm_rank(const eq_comm *c) { return c->rank; }
int eq_comm_world(const eq_comm *c) { return c->world; }
const char *eq_comm_name(const eq_comm *c) { return c->iface->name; }

/* ================================================================ ring */

typedef struct s_bucket {
    eq_comm_seg *segs;
    size_t nsegs, n;
    eq_comm_op op;
    int state; /* 0 idle, 1 queued/running, 2 done */
    eq_status st;
    eq_err err;
} s_bucket;

/* The header of a ring message (frame 0; frame 1 is the floats).  A chunk
 * goes as pieces of at most S_PIECE floats, one message each (piece: its
 * index), so that a rank adds piece i while piece i+1 is on the way. */
typedef struct s_hdr {
    uint32_t magic, seq, bucket, phase, chunk, piece;
    uint64_t n;
} s_hdr;
#define S_MAGIC 0x47524245u /* "EBRG" */
#define S_PIECE ((size_t)1 << 18) /* floats per message: 1 MiB */
#define S_ZC_MIN ((size_t)1024)   /* pieces from this many floats go without a copy */

struct eq_comm_ring {
    void *zctx;
    void *pull, *push;
    char ep[EQ_DIST_EP_CAP];
    int timeout_ms;
    int rank, world;
    char left_ep[EQ_DIST_EP_CAP];
    s_bucket bk[EQ_COMM_MAX_BUCKETS];
    int nbk;
    float *buf, *tmp; /* buf: the packed bucket; tmp: S_PIECE floats for a misaligned piece */
    size_t cap;
    uint32_t seq;
    /* Messages sent straight from buf (zmq_msg_init_data): buf must not
     * change or go before ZeroMQ released them (nfreed == nsent). */
    pthread_mutex_t smu;
    pthread_cond_t scv;
    uint64_t nsent, nfreed;
    /* the thread */
    pthread_t th;
    bool running;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int queue[EQ_COMM_MAX_BUCKETS];
    int qhead, qlen;
    bool quit;
    bool broken;
    eq_err broken_err;
};

eq_comm_ring *eq_comm_ring_listen(void *zctx, const char *bind_ep, int timeout_ms, eq_err *err)
{
    eq_comm_ring *r = calloc(1, sizeof *r);
    if (!r) {
        eq_err_set(err, EQ_ERR_NOMEM, "ring: out of memory");
        return NULL;
    }
    r->zctx = zctx;
    r->timeout_ms = timeout_ms > 0 ? timeout_ms : 60000;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    pthread_mutex_init(&r->smu, NULL);
    pthread_cond_init(&r->scv, NULL);
    eq_proto_sockopts so;
    eq_proto_sockopts_default(&so, NULL);
    so.maxmsgsize = -1; /* gradient chunks; the peers are the job's own ranks */
    so.rcvhwm = so.sndhwm = 0;
    if (!(r->tmp = eq_malloc_array(S_PIECE, sizeof(float)))) {
        eq_err_set(err, EQ_ERR_NOMEM, "ring: out of memory");
        eq_comm_ring_destroy(&r);
        return NULL;
    }
    if (!(r->pull = eq_proto_socket(zctx, ZMQ_PULL, &so, err)) ||
        eq_proto_bind(r->pull, bind_ep, r->ep, sizeof r->ep, err)) {
        eq_err_prefix(err, "ring: ");
        eq_comm_ring_destroy(&r);
        return NULL;
    }
    return r;
}

const char *eq_comm_ring_endpoint(const eq_comm_ring *r) { return r->ep; }

/* ZeroMQ's I/O thread is done with a message sent from r->buf. */
static void s_ring_freed(void *data, void *hint)
{
    (void)data;
    eq_comm_ring *r = hint;
    pthread_mutex_lock(&r->smu);
    r->nfreed++;
    pthread_cond_broadcast(&r->scv);
    pthread_mutex_unlock(&r->smu);
}

/* Wait until ZeroMQ released every message sent from r->buf, at most
 * timeout_ms.  True when released. */
static bool s_ring_released(eq_comm_ring *r, int timeout_ms)
{
    uint64_t t0 = eq_clock_ms();
    pthread_mutex_lock(&r->smu);
    while (r->nfreed != r->nsent && eq_clock_ms() - t0 <= (uint64_t)timeout_ms) {
        struct timespec ts;
        eq_clock_deadline(&ts, S_POLL_MS);
        pthread_cond_timedwait(&r->scv, &r->smu, &ts);
    }
    bool done = r->nfreed == r->nsent;
    pthread_mutex_unlock(&r->smu);
    return done;
}

void eq_comm_ring_destroy(eq_comm_ring **r_p)
{
    if (!r_p || !*r_p) return;
    eq_comm_ring *r = *r_p;
    if (r->running) {
        pthread_mutex_lock(&r->mu);
        r->quit = true;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->th, NULL);
    }
    eq_proto_socket_close(&r->pull);
    eq_proto_socket_close(&r->push);
    /* A closed socket's pending messages go within its linger (1 s). */
    bool released = s_ring_released(r, 5000);
    if (!released) eq_warn("ring: rank %d: ZeroMQ kept messages from the ring's buffer: not freed", r->rank);
    for (int i = 0; i < r->nbk; i++) free(r->bk[i].segs);
    if (released) {
        free(r->buf);
        pthread_mutex_destroy(&r->smu);
        pthread_cond_destroy(&r->scv);
    }
    free(r->tmp);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    if (released) free(r);
    *r_p = NULL;
}

static bool s_quitting(eq_comm_ring *r)
{
    pthread_mutex_lock(&r->mu);
    bool q = r->quit;
    pthread_mutex_unlock(&r->mu);
    return q;
}

static eq_status s_ring_send_err(eq_comm_ring *r, eq_err *err)
{
    return zmq_errno() == EAGAIN
               ? eq_err_set(err, EQ_ERR_TIMEOUT, "ring: rank %d could not send to rank %d for %d ms: is that rank alive?",
                            r->rank, (r->rank + 1) % r->world, r->timeout_ms)
               : eq_err_set(err, EQ_ERR_NET, "ring: rank %d: send to rank %d: %s", r->rank, (r->rank + 1) % r->world,
                            zmq_strerror(zmq_errno()));
}

/* Send one piece: the header, then either fwd (a received message passed
 * on as it is; consumed in any case) or h->n floats at data: straight from
 * r->buf for S_ZC_MIN floats or more (data must stay as it is until
 * ZeroMQ released it, s_ring_released), else copied. */
static eq_status s_ring_send(eq_comm_ring *r, const s_hdr *h, const float *data, zmq_msg_t *fwd, eq_err *err)
{
    if (zmq_send(r->push, h, sizeof *h, ZMQ_SNDMORE) < 0) {
        if (fwd) zmq_msg_close(fwd);
        return s_ring_send_err(r, err);
    }
    if (fwd) {
        if (zmq_msg_send(fwd, r->push, 0) < 0) {
            eq_status st = s_ring_send_err(r, err);
            zmq_msg_close(fwd);
            return st;
        }
        return EQ_OK;
    }
    size_t bytes = (size_t)h->n * sizeof(float);
    if (h->n < S_ZC_MIN)
        return zmq_send(r->push, data, bytes, 0) < 0 ? s_ring_send_err(r, err) : EQ_OK;
    zmq_msg_t m;
    if (zmq_msg_init_data(&m, (void *)data, bytes, s_ring_freed, r))
        return eq_err_set(err, EQ_ERR_NOMEM, "ring: rank %d: out of memory for a message", r->rank);
    pthread_mutex_lock(&r->smu);
    r->nsent++; /* s_ring_freed counts it back, also when it is closed unsent */
    pthread_mutex_unlock(&r->smu);
    if (zmq_msg_send(&m, r->push, 0) < 0) {
        eq_status st = s_ring_send_err(r, err);
        zmq_msg_close(&m);
        return st;
    }
    return EQ_OK;
}

/* Receive the piece (seq, bucket, phase, chunk, piece) of want->n floats:
 * on EQ_OK *data is its floats (the caller closes or forwards it). */
static eq_status s_ring_recv(eq_comm_ring *r, const s_hdr *want, zmq_msg_t *data, eq_err *err)
{
    int left = (r->rank + r->world - 1) % r->world;
    uint64_t t0 = eq_clock_ms();
    for (;;) {
        zmq_pollitem_t it = { r->pull, 0, ZMQ_POLLIN, 0 };
        int np = zmq_poll(&it, 1, S_POLL_MS);
        if (np < 0 && zmq_errno() != EINTR)
            return eq_err_set(err, EQ_ERR_NET, "ring: poll: %s", zmq_strerror(zmq_errno()));
        if (np > 0) break;
        if (s_quitting(r)) return eq_err_set(err, EQ_ERR_INTERRUPTED, "ring: stopped");
        if (eq_clock_ms() - t0 > (uint64_t)r->timeout_ms)
            return eq_err_set(err, EQ_ERR_TIMEOUT,
                              "ring: rank %d heard nothing from rank %d (%s) for %d ms (bucket %u, step %u): "
                              "is that rank alive?",
                              r->rank, left, r->left_ep, r->timeout_ms, want->bucket, want->phase);
    }
    zmq_msg_t f[3];
    int n = s_recv_all(r->pull, f, 3);
    if (n != 2) {
        if (n > 0) s_close_all(f, n);
        return eq_err_set(err, EQ_ERR_PROTO, "ring: rank %d: a message from rank %d with %d frames (2 expected)",
                          r->rank, left, n);
    }
    eq_status st = EQ_OK;
    s_hdr h;
    if (zmq_msg_size(&f[0]) != sizeof h) {
        st = eq_err_set(err, EQ_ERR_PROTO, "ring: rank %d: a header of %zu bytes from rank %d", r->rank,
                        zmq_msg_size(&f[0]), left);
    } else {
        memcpy(&h, zmq_msg_data(&f[0]), sizeof h);
        if (h.magic != S_MAGIC || h.seq != want->seq || h.bucket != want->bucket || h.phase != want->phase ||
            h.chunk != want->chunk || h.piece != want->piece || h.n != want->n)
            st = eq_err_set(err, EQ_ERR_PROTO,
                            "ring: rank %d got (collective %u, bucket %u, step %u, chunk %u, piece %u, %" PRIu64
                            " floats) from rank %d, expected (%u, %u, %u, %u, %u, %" PRIu64
                            "): the ranks started different buckets",
                            r->rank, h.seq, h.bucket, h.phase, h.chunk, h.piece, h.n, left, want->seq, want->bucket,
                            want->phase, want->chunk, want->piece, want->n);
        else if (zmq_msg_size(&f[1]) != want->n * sizeof(float))
            st = eq_err_set(err, EQ_ERR_PROTO, "ring: rank %d: %zu bytes of data from rank %d, expected %" PRIu64,
                            r->rank, zmq_msg_size(&f[1]), left, want->n * sizeof(float));
    }
    zmq_msg_close(&f[0]);
    if (st)
        zmq_msg_close(&f[1]);
    else
        *data = f[1];
    return st;
}

/* The floats of a received piece of n floats, aligned (r->tmp if the
 * message's are not). */
static const float *s_ring_floats(eq_comm_ring *r, zmq_msg_t *m, size_t n)
{
    const void *p = zmq_msg_data(m);
    if (!((uintptr_t)p % _Alignof(float))) return p;
    memcpy(r->tmp, p, n * sizeof(float));
    return r->tmp;
}

/* The bucket's floats [lo, lo + n) are final (the sum): into its segments,
 * divided by div when div != 0 (an average). */
static void s_unpack(const s_bucket *B, size_t lo, const float *src, size_t n, float div)
{
    size_t off = 0;
    for (size_t i = 0; i < B->nsegs && n; off += B->segs[i].n, i++) {
        size_t sn = B->segs[i].n;
        if (lo >= off + sn) continue;
        size_t a = lo - off, m = sn - a < n ? sn - a : n;
        float *d = B->segs[i].data + a;
        if (div != 0.0f)
            for (size_t j = 0; j < m; j++) d[j] = src[j] / div;
        else
            memcpy(d, src, m * sizeof(float));
        src += m;
        lo += m;
        n -= m;
    }
}

/* The bucket's floats [lo, lo + n) into dst (zeros when zero). */
static void s_pack(const s_bucket *B, size_t lo, float *dst, size_t n, bool zero)
{
    size_t off = 0;
    for (size_t i = 0; i < B->nsegs && n; off += B->segs[i].n, i++) {
        size_t sn = B->segs[i].n;
        if (lo >= off + sn) continue;
        size_t a = lo - off, m = sn - a < n ? sn - a : n;
        if (zero)
            memset(dst, 0, m * sizeof(float));
        else
            memcpy(dst, B->segs[i].data + a, m * sizeof(float));
        dst += m;
        lo += m;
        n -= m;
    }
}

/* A reduce-scatter step on the bucket's floats [lo, lo + n): x = own + the
 * left's partial sum src (own: the bucket's values, zeros when zero; no
 * rank's own values were added to this chunk before).  When final (the
 * chunk holds every rank's sum now) also into the bucket's segments,
 * divided by div when div != 0. */
static void s_reduce(const s_bucket *B, size_t lo, const float *src, float *x, size_t n, bool zero, bool final,
                     float div)
{
    size_t off = 0;
    for (size_t i = 0; i < B->nsegs && n; off += B->segs[i].n, i++) {
        size_t sn = B->segs[i].n;
        if (lo >= off + sn) continue;
        size_t a = lo - off, m = sn - a < n ? sn - a : n;
        float *d = B->segs[i].data + a;
        if (zero)
            for (size_t j = 0; j < m; j++) x[j] = 0.0f + src[j];
        else
            for (size_t j = 0; j < m; j++) x[j] = d[j] + src[j];
        if (final && div != 0.0f)
            for (size_t j = 0; j < m; j++) d[j] = x[j] / div;
        else if (final)
            memcpy(d, x, m * sizeof(float));
        src += m;
        x += m;
        lo += m;
        n -= m;
    }
}

/* First element of chunk c of W over n (n < 2^56: no overflow). */
static size_t s_lo(size_t n, int c, int W) { return (size_t)((uint64_t)n * (uint64_t)c / (uint64_t)W); }

/* Pieces of a chunk of len floats (an empty chunk still goes, as one empty piece). */
static size_t s_npieces(size_t len) { return len ? (len + S_PIECE - 1) / S_PIECE : 1; }

/* The collective of bucket b: the classic ring, reduce-scatter then
 * all-gather, W - 1 steps each.  In step p, a rank sends chunk
 * (me - p) mod W and receives chunk (me - p - 1) mod W from its left;
 * each chunk goes as pieces of S_PIECE floats, and each piece received is
 * added (reduce-scatter) or stored (all-gather) and passed on as piece of
 * step p + 1 at once, while the next is on the way.  The sums are those of
 * the whole-chunk ring, in the same order: element-wise, own value + the
 * left's partial sum, so every rank ends with the same bits.  Copies: own
 * chunk into r->buf (the others are added from the bucket's segments into
 * r->buf), each piece added straight from the received message, a chunk's
 * final values written into the segments as they become final (divided
 * for an average), all-gather pieces passed on as the received message. */
static eq_status s_ring_allreduce(eq_comm_ring *r, int b, eq_err *err)
{
    s_bucket *B = &r->bk[b];
    const int W = r->world, me = r->rank;
    if (W == 1) return EQ_OK; /* the sum of one: the bucket as it is */
    size_t n = B->n;
    float *buf = r->buf;
    const float div = B->op == EQ_COMM_AVG ? (float)W : 0.0f;
    /* buf is about to change: the previous collective's messages must be out */
    if (!s_ring_released(r, r->timeout_ms))
        return eq_err_set(err, EQ_ERR_TIMEOUT, "ring: rank %d: rank %d took no data for %d ms: is that rank alive?",
                          me, (me + 1) % W, r->timeout_ms);
    const bool zero = B->op == EQ_COMM_BCAST && me != 0; /* a broadcast: only rank 0's values count */
    uint32_t seq = r->seq++;
    eq_status st;
    /* step 0: own chunk, packed into buf and sent from there (nothing
     * writes it again in this collective) */
    {
        size_t lo = s_lo(n, me, W), len = s_lo(n, me + 1, W) - lo, np = s_npieces(len);
        s_pack(B, lo, buf + lo, len, zero);
        for (size_t i = 0; i < np; i++) {
            size_t a = i * S_PIECE, m = len - a < S_PIECE ? len - a : S_PIECE;
            s_hdr h = { S_MAGIC, seq, (uint32_t)b, 0, (uint32_t)me, (uint32_t)i, m };
            if ((st = s_ring_send(r, &h, buf + lo + a, NULL, err))) return st;
        }
    }
    for (int p = 0; p < 2 * W - 2; p++) {
        int cr = ((me - p - 1) % W + W) % W;
        size_t lo = s_lo(n, cr, W), len = s_lo(n, cr + 1, W) - lo, np = s_npieces(len);
        for (size_t i = 0; i < np; i++) {
            size_t a = i * S_PIECE, m = len - a < S_PIECE ? len - a : S_PIECE;
            s_hdr hr = { S_MAGIC, seq, (uint32_t)b, (uint32_t)p, (uint32_t)cr, (uint32_t)i, m };
            s_hdr hs = { S_MAGIC, seq, (uint32_t)b, (uint32_t)(p + 1), (uint32_t)cr, (uint32_t)i, m };
            zmq_msg_t d;
            if ((st = s_ring_recv(r, &hr, &d, err))) return st;
            const float *src = s_ring_floats(r, &d, m);
            float *x = buf + lo + a;
            if (p < W - 1) {
                /* reduce-scatter: own partial sum + the left's */
                s_reduce(B, lo + a, src, x, m, zero, p == W - 2, div);
                zmq_msg_close(&d);
                if (p < 2 * W - 3 && (st = s_ring_send(r, &hs, x, NULL, err))) return st;
            } else {
                /* all-gather: a complete chunk, passed on as it came */
                s_unpack(B, lo + a, src, m, div);
                if (p < 2 * W - 3) {
                    if ((st = s_ring_send(r, &hs, NULL, &d, err))) return st;
                } else {
                    zmq_msg_close(&d);
                }
            }
        }
    }
    return EQ_OK;
}

static void *s_ring_thread(void *arg)
{
    eq_comm_ring *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->qlen && !r->quit) pthread_cond_wait(&r->cv, &r->mu);
        if (r->quit) break;
        int b = r->queue[r->qhead];
        r->qhead = (r->qhead + 1) % EQ_COMM_MAX_BUCKETS;
        r->qlen--;
        bool broken = r->broken;
        pthread_mutex_unlock(&r->mu);
        eq_err e = { 0 };
        eq_status st;
        if (broken) {
            e = r->broken_err;
            st = e.code;
        } else {
            st = s_ring_allreduce(r, b, &e);
        }
        pthread_mutex_lock(&r->mu);
        r->bk[b].st = st;
        r->bk[b].err = e;
        r->bk[b].state = 2;
        if (st && !r->broken) {
            r->broken = true;
            r->broken_err = e;
        }
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static int s_ring_bucket_new(void *ctx, const eq_comm_seg *segs, size_t nsegs, eq_comm_op op, eq_err *err)
{
    eq_comm_ring *r = ctx;
    size_t n = 0;
    for (size_t i = 0; i < nsegs; i++) n += segs[i].n;
    pthread_mutex_lock(&r->mu);
    int id = r->nbk;
    s_bucket *B = &r->bk[id];
    B->segs = eq_malloc_array(nsegs, sizeof *segs);
    bool ok = B->segs != NULL;
    bool held = false;
    if (ok && n > r->cap) {
        float *nb = eq_malloc_array(n, sizeof(float));
        /* ZeroMQ may still be sending from the old buffer */
        if (nb && !(held = !s_ring_released(r, r->timeout_ms))) {
            free(r->buf);
            r->buf = nb;
            r->cap = n;
        } else {
            free(nb);
            ok = false;
        }
    }
    if (ok) {
        memcpy(B->segs, segs, nsegs * sizeof *segs);
        B->nsegs = nsegs;
        B->n = n;
        B->op = op;
        B->state = 0;
        r->nbk++;
    } else {
        free(B->segs);
        B->segs = NULL;
    }
    pthread_mutex_unlock(&r->mu);
    if (held) {
        eq_err_set(err, EQ_ERR_TIMEOUT, "ring: rank %d: rank %d took no data for %d ms: is that rank alive?", r->rank,
                   (r->rank + 1) % r->world, r->timeout_ms);
        return -1;
    }
    if (!ok) {
        eq_err_set(err, EQ_ERR_NOMEM, "ring: out of memory for a bucket of %zu floats", n);
        return -1;
    }
    return id;
}

static eq_status s_ring_start(void *ctx, int b, eq_err *err)
{
    eq_comm_ring *r = ctx;
    (void)err;
    pthread_mutex_lock(&r->mu);
    r->bk[b].state = 1;
    r->queue[(r->qhead + r->qlen) % EQ_COMM_MAX_BUCKETS] = b;
    r->qlen++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return EQ_OK;
}

static eq_status s_ring_wait(void *ctx, int b, eq_err *err)
{
    eq_comm_ring *r = ctx;
    pthread_mutex_lock(&r->mu);
    while (r->bk[b].state != 2) pthread_cond_wait(&r->cv, &r->mu);
    r->bk[b].state = 0;
    eq_status st = r->bk[b].st;
    if (st && err) *err = r->bk[b].err;
    pthread_mutex_unlock(&r->mu);
    return st;
}

static void s_ring_destroy(void *ctx)
{
    eq_comm_ring *r = ctx;
    eq_comm_ring_destroy(&r);
}

static const eq_comm_i s_ring_iface = {
    .name = "ring",
    .bucket_new = s_ring_bucket_new,
    .start = s_ring_start,
    .wait = s_ring_wait,
    .destroy = s_ring_destroy,
};

eq_comm *eq_comm_ring_connect(eq_comm_ring **r_p, const eq_dist_world *w, eq_err *err)
{
    eq_comm_ring *r = *r_p;
    *r_p = NULL;
    if (!r) {
        eq_err_set(err, EQ_ERR_INVALID, "ring: not listening");
        return NULL;
    }
    if (!w || w->world < 1 || w->world > EQ_DIST_MAX_WORLD || w->rank < 0 || w->rank >= w->world) {
        eq_err_set(err, EQ_ERR_INVALID, "ring: bad world");
        eq_comm_ring_destroy(&r);
        return NULL;
    }
    r->rank = w->rank;
    r->world = w->world;
    snprintf(r->left_ep, sizeof r->left_ep, "%s", w->ep[(w->rank + w->world - 1) % w->world]);
    if (w->world > 1) {
        eq_proto_sockopts so;
        eq_proto_sockopts_default(&so, NULL);
        so.sndhwm = 0;
        so.sndtimeo_ms = r->timeout_ms;
        so.linger_ms = 1000;
        const char *right = w->ep[(w->rank + 1) % w->world];
        if (!(r->push = eq_proto_socket(r->zctx, ZMQ_PUSH, &so, err)) || eq_proto_connect(r->push, right, err)) {
            eq_err_prefix(err, "ring: rank %d: ", w->rank);
            eq_comm_ring_destroy(&r);
            return NULL;
        }
    }
    if (pthread_create(&r->th, NULL, s_ring_thread, r)) {
        eq_err_set(err, EQ_ERR_INTERNAL, "ring: cannot start the communication thread");
        eq_comm_ring_destroy(&r);
        return NULL;
    }
    r->running = true;
    eq_comm *c = eq_comm_new(&s_ring_iface, r, w->rank, w->world, err);
    if (!c) {
        eq_comm_ring_destroy(&r);
        return NULL;
    }
    /* Check the ring: every rank contributes 1. */
    float one = 1.0f;
    eq_comm_seg seg = { &one, 1 };
    int b = eq_comm_bucket_new(c, &seg, 1, EQ_COMM_SUM, err);
    if (b < 0 || eq_comm_run(c, b, err)) {
        eq_comm_destroy(&c);
        return NULL;
    }
    if (one != (float)w->world) {
        eq_err_set(err, EQ_ERR_INTERNAL, "ring: the check sum is %g, expected %d", (double)one, w->world);
        eq_comm_destroy(&c);
        return NULL;
    }
    /* The check bucket pointed at a local: forget it (ids stay unique). */
    r->bk[b].nsegs = 0;
    return c;
}

/* ================================================================ NCCL */

eq_comm *eq_comm_nccl_new(eq_backend *be, const eq_dist_world *w, int timeout_ms, eq_err *err)
{
    if (!w || w->world < 1 || w->world > EQ_DIST_MAX_WORLD || w->rank < 0 || w->rank >= w->world) {
        eq_err_set(err, EQ_ERR_INVALID, "nccl: bad world");
        return NULL;
    }
    if (w->blob_len != EQ_COMM_NCCL_ID_BYTES) {
        eq_err_set(err, EQ_ERR_PROTO,
                   "nccl rank %d/%d: the rendezvous carried %zu bytes from rank 0 where the NCCL unique id (%d "
                   "bytes) belongs: does rank 0 run [train] backend = cuda?",
                   w->rank, w->world, w->blob_len, EQ_COMM_NCCL_ID_BYTES);
        return NULL;
    }
    if (!be) {
        eq_err_set(err, EQ_ERR_INVALID, "nccl rank %d/%d: no CUDA backend", w->rank, w->world);
        return NULL;
    }
    const eq_comm_i *iface = NULL;
    void *ctx = NULL;
    double timeout_s = (timeout_ms > 0 ? timeout_ms : 60000) / 1000.0;
    if (eq_backend_cuda_nccl_comm(be, w->blob, w->blob_len, w->rank, w->world, timeout_s, &iface, &ctx, err))
        return NULL;
    eq_comm *c = eq_comm_new(iface, ctx, w->rank, w->world, err);
    if (!c) iface->destroy(ctx);
    return c;
}
