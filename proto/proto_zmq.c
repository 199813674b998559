/* proto/proto_zmq.c -- sockets, multipart send/receive; see proto_zmq.h. */
#include "proto/proto_zmq.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* Record a zmq failure: EAGAIN -> timeout, EINTR -> interrupted, else net. */
static eq_status s_zerr(eq_err *err, const char *what)
{
    int e = zmq_errno();
    eq_status code = e == EAGAIN ? EQ_ERR_TIMEOUT : e == EINTR ? EQ_ERR_INTERRUPTED : EQ_ERR_NET;
    return eq_err_set(err, code, "%s: %s", what, zmq_strerror(e));
}

/* ---- sockets ---------------------------------------------------------------- */

void eq_proto_sockopts_default(eq_proto_sockopts *o, const eq_proto_limits *lim)
{
    eq_proto_limits l;
    if (!lim) {
        eq_proto_limits_default(&l);
        lim = &l;
    }
    o->linger_ms = 0;
    o->sndhwm = o->rcvhwm = 1000;
    o->sndtimeo_ms = o->rcvtimeo_ms = -1;
    uint64_t m = lim->max_frame_bytes > lim->max_header_bytes ? lim->max_frame_bytes : lim->max_header_bytes;
    o->maxmsgsize = m > (uint64_t)INT64_MAX ? -1 : (int64_t)m;
}

void *eq_proto_socket(void *ctx, int type, const eq_proto_sockopts *opts, eq_err *err)
{
    eq_proto_sockopts o;
    if (opts) o = *opts;
    else eq_proto_sockopts_default(&o, NULL);
    void *s = zmq_socket(ctx, type);
    if (!s) {
        s_zerr(err, "zmq_socket");
        return NULL;
    }
    int one = 1;
    const char *what = NULL;
    if (zmq_setsockopt(s, ZMQ_LINGER, &o.linger_ms, sizeof o.linger_ms)) what = "ZMQ_LINGER";
    else if (zmq_setsockopt(s, ZMQ_SNDHWM, &o.sndhwm, sizeof o.sndhwm)) what = "ZMQ_SNDHWM";
    else if (zmq_setsockopt(s, ZMQ_RCVHWM, &o.rcvhwm, sizeof o.rcvhwm)) what = "ZMQ_RCVHWM";
    else if (zmq_setsockopt(s, ZMQ_SNDTIMEO, &o.sndtimeo_ms, sizeof o.sndtimeo_ms)) what = "ZMQ_SNDTIMEO";
    else if (zmq_setsockopt(s, ZMQ_RCVTIMEO, &o.rcvtimeo_ms, sizeof o.rcvtimeo_ms)) what = "ZMQ_RCVTIMEO";
    else if (zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &o.maxmsgsize, sizeof o.maxmsgsize)) what = "ZMQ_MAXMSGSIZE";
    else if (type == ZMQ_ROUTER && zmq_setsockopt(s, ZMQ_ROUTER_MANDATORY, &one, sizeof one))
        what = "ZMQ_ROUTER_MANDATORY";
    if (what) {
        s_zerr(err, what);
        zmq_close(s);
        return NULL;
    }
    return s;
}

void eq_proto_socket_close(void **sock)
{
    if (!sock || !*sock) return;
    zmq_close(*sock);
    *sock = NULL;
}

/* libzmq binds ipc://PATH by unlinking whatever PATH is first: a regular
 * file is destroyed, and another process serving PATH silently loses its
 * endpoint.  Refuse both, as a tcp port in use is refused; a stale socket
 * (nobody listening) is left for libzmq to replace. */
static eq_status s_ipc_check(const char *endpoint, eq_err *err)
{
    const char *path = endpoint + 6;
    if (!*path || !strcmp(path, "*") || path[0] == '@') return EQ_OK; /* wildcard, abstract */
    struct stat st;
    if (lstat(path, &st) != 0) return EQ_OK;
    if (!S_ISSOCK(st.st_mode))
        return eq_err_set(err, EQ_ERR_NET, "bind %s: %s exists and is not a socket (binding would delete it)",
                          endpoint, path);
    struct sockaddr_un a;
    if (strlen(path) >= sizeof a.sun_path) return EQ_OK; /* libzmq reports it */
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    memcpy(a.sun_path, path, strlen(path));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return EQ_OK;
    int in_use = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    if (in_use)
        return eq_err_set(err, EQ_ERR_NET, "bind %s: address already in use (another process is serving it)",
                          endpoint);
    return EQ_OK;
}

int eq_proto_endpoint_local(const char *ep)
{
    if (!strncmp(ep, "inproc://", 9) || !strncmp(ep, "ipc://", 6)) return 1;
    static const char *const ok[] = { "tcp://127.", "tcp://localhost:", "tcp://[::1]:", "tcp://lo:", NULL };
    for (int i = 0; ok[i]; i++)
        if (!strncmp(ep, ok[i], strlen(ok[i]))) return 1;
    return 0;
}

eq_status eq_proto_bind(void *sock, const char *endpoint, char *endpoint_out, size_t cap, eq_err *err)
{
    if (!strncmp(endpoint, "ipc://", 6)) {
        eq_status st = s_ipc_check(endpoint, err);
        if (st) return st;
    }
    if (zmq_bind(sock, endpoint)) {
        int e = zmq_errno();
        return eq_err_set(err, EQ_ERR_NET, "bind %s: %s", endpoint, zmq_strerror(e));
    }
    if (endpoint_out && cap) {
        size_t len = cap;
        if (zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, endpoint_out, &len)) return s_zerr(err, "ZMQ_LAST_ENDPOINT");
        endpoint_out[cap - 1] = '\0';
    }
    return EQ_OK;
}

eq_status eq_proto_connect(void *sock, const char *endpoint, eq_err *err)
{
    if (zmq_connect(sock, endpoint)) {
        int e = zmq_errno();
        return eq_err_set(err, EQ_ERR_NET, "connect %s: %s", endpoint, zmq_strerror(e));
    }
    return EQ_OK;
}

/* ---- send ---------------------------------------------------------------------- */

static void s_free_header(void *data, void *hint)
{
    (void)hint;
    free(data);
}

static void s_release_payloads(eq_proto_payload *p, size_t from, size_t n)
{
    for (size_t i = from; i < n; i++)
        if (p[i].free_fn) p[i].free_fn(p[i].data, p[i].hint);
}

eq_status eq_proto_send(void *sock, const eq_proto_peer *to, const eq_msg *m, eq_proto_payload *payloads,
                        size_t npayloads, int flags, eq_err *err)
{
    const char *tn = eq_msg_type_name(m->type);
    /* Everything is checked before anything is handed to ZeroMQ. */
    if (npayloads != m->nframes || npayloads > EQ_PROTO_MAX_FRAMES) {
        s_release_payloads(payloads, 0, npayloads);
        return eq_err_set(err, EQ_ERR_INVALID, "%s: %zu payloads for %u frames", tn, npayloads, m->nframes);
    }
    for (size_t i = 0; i < npayloads; i++) {
        const eq_proto_frame_desc *fd = &m->frames[i];
        size_t es = eq_dtype_size(fd->dtype);
        int64_t numel = es ? eq_shape_numel(fd->ndim, fd->shape, INT64_MAX / (int64_t)es) : -1;
        if (numel < 0 || (uint64_t)numel * es != (uint64_t)payloads[i].size) {
            s_release_payloads(payloads, 0, npayloads);
            return eq_err_set(err, EQ_ERR_INVALID, "%s: frame %zu '%s': %zu bytes do not match its shape x %s", tn, i,
                              fd->name, payloads[i].size, eq_dtype_name(fd->dtype));
        }
    }
    if (to && (to->len == 0 || to->len > EQ_PROTO_PEER_CAP)) {
        s_release_payloads(payloads, 0, npayloads);
        return eq_err_set(err, EQ_ERR_INVALID, "%s: bad peer identity length %zu", tn, to->len);
    }
    uint8_t *hdr;
    size_t hlen;
    eq_status st = eq_proto_encode(m, &hdr, &hlen, err);
    if (st) {
        s_release_payloads(payloads, 0, npayloads);
        return st;
    }

    zmq_msg_t part[2 + EQ_PROTO_MAX_FRAMES];
    size_t np = 0;
    if (to) {
        if (zmq_msg_init_size(&part[np], to->len)) goto nomem;
        memcpy(zmq_msg_data(&part[np]), to->id, to->len);
        np++;
    }
    if (zmq_msg_init_data(&part[np], hdr, hlen, s_free_header, NULL)) {
        free(hdr);
        goto nomem;
    }
    hdr = NULL;
    np++;
    for (size_t i = 0; i < npayloads; i++) {
        eq_proto_payload *p = &payloads[i];
        if (p->free_fn && p->size > 0) {
            if (zmq_msg_init_data(&part[np], p->data, p->size, p->free_fn, p->hint)) {
                s_release_payloads(payloads, i, npayloads);
                goto nomem;
            }
        } else {
            if (zmq_msg_init_size(&part[np], p->size)) {
                s_release_payloads(payloads, i, npayloads);
                goto nomem;
            }
            if (p->size) memcpy(zmq_msg_data(&part[np]), p->data, p->size);
            if (p->free_fn) p->free_fn(p->data, p->hint); /* empty frame: nothing to hand over */
        }
        np++;
    }
    for (size_t i = 0; i < np; i++) {
        int f = (i + 1 < np ? ZMQ_SNDMORE : 0) | (i == 0 ? flags : 0);
        int rc;
        while ((rc = zmq_msg_send(&part[i], sock, f)) < 0 && i > 0 && zmq_errno() == EINTR) {
        }
        if (rc < 0) {
            st = s_zerr(err, "send");
            eq_err_prefix(err, "%s: ", tn);
            for (size_t k = i; k < np; k++) zmq_msg_close(&part[k]); /* runs the free callbacks */
            return st;
        }
    }
    return EQ_OK;

nomem:
    for (size_t k = 0; k < np; k++) zmq_msg_close(&part[k]);
    return eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory building the message", tn);
}

eq_status eq_proto_send_error(void *sock, const eq_proto_peer *to, bool has_req, uint64_t req, eq_status code,
                              const char *message, eq_err *err)
{
    eq_msg m;
    eq_proto_make_error(&m, has_req, req, code, message);
    return eq_proto_send(sock, to, &m, NULL, 0, 0, err);
}

/* ---- receive ------------------------------------------------------------------- */

void eq_proto_recvd_init(eq_proto_recvd *r)
{
    memset(&r->from, 0, sizeof r->from);
    memset(&r->msg, 0, sizeof r->msg);
    r->msg.type = EQ_MSG_TYPE_COUNT;
    r->nparts = 0;
}

void eq_proto_recvd_close(eq_proto_recvd *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->nparts; i++) zmq_msg_close(&r->part[i]);
    r->nparts = 0;
    eq_proto_msg_reset(&r->msg);
    r->msg.type = EQ_MSG_TYPE_COUNT;
    r->from.len = 0;
}

const void *eq_proto_recvd_frame(const eq_proto_recvd *r, size_t i, size_t *size)
{
    if (i >= r->nparts) {
        if (size) *size = 0;
        return NULL;
    }
    zmq_msg_t *p = (zmq_msg_t *)&r->part[i]; /* zmq's accessors take non-const */
    if (size) *size = zmq_msg_size(p);
    return zmq_msg_data(p);
}

/* Receive the next part of a multipart message already under way. */
static int s_recv_more(zmq_msg_t *p, void *sock)
{
    int rc;
    zmq_msg_init(p);
    while ((rc = zmq_msg_recv(p, sock, 0)) < 0 && zmq_errno() == EINTR) {
    }
    if (rc < 0) zmq_msg_close(p);
    return rc;
}

eq_status eq_proto_recv(void *sock, eq_proto_recvd *r, const eq_proto_limits *lim, int flags, eq_err *err)
{
    eq_proto_limits deflim;
    if (!lim) {
        eq_proto_limits_default(&deflim);
        lim = &deflim;
    }
    eq_proto_recvd_close(r);
    int type = 0;
    size_t tlen = sizeof type;
    if (zmq_getsockopt(sock, ZMQ_TYPE, &type, &tlen)) return s_zerr(err, "ZMQ_TYPE");

    zmq_msg_t first;
    zmq_msg_init(&first);
    if (zmq_msg_recv(&first, sock, flags) < 0) {
        zmq_msg_close(&first);
        return s_zerr(err, "receive");
    }
    bool more = zmq_msg_more(&first);
    eq_status st = EQ_OK;
    zmq_msg_t hdr;
    if (type == ZMQ_ROUTER) {
        size_t n = zmq_msg_size(&first);
        r->from.len = n <= EQ_PROTO_PEER_CAP ? n : 0;
        memcpy(r->from.id, zmq_msg_data(&first), r->from.len);
        zmq_msg_close(&first);
        if (!more) return eq_err_set(err, EQ_ERR_PROTO, "message: identity frame without a header");
        if (s_recv_more(&hdr, sock) < 0) return s_zerr(err, "receive");
        more = zmq_msg_more(&hdr);
    } else {
        hdr = first;
    }

    /* Take the payload frames; drain any beyond the limit. */
    size_t max = lim->max_frames < EQ_PROTO_MAX_FRAMES ? lim->max_frames : EQ_PROTO_MAX_FRAMES;
    size_t extra = 0;
    while (more) {
        zmq_msg_t *p, spare;
        p = r->nparts < max ? &r->part[r->nparts] : &spare;
        if (s_recv_more(p, sock) < 0) {
            st = s_zerr(err, "receive");
            break;
        }
        more = zmq_msg_more(p);
        if (p == &spare) {
            zmq_msg_close(&spare);
            extra++;
        } else {
            r->nparts++;
        }
    }
    if (!st) st = eq_proto_decode_header(&r->msg, zmq_msg_data(&hdr), zmq_msg_size(&hdr), lim, err);
    zmq_msg_close(&hdr);
    if (!st && extra)
        st = eq_err_set(err, EQ_ERR_LIMIT, "%s: %zu payload frames, at most %zu", eq_msg_type_name(r->msg.type),
                        r->nparts + extra, max);
    if (!st) {
        size_t sizes[EQ_PROTO_MAX_FRAMES];
        for (size_t i = 0; i < r->nparts; i++) sizes[i] = zmq_msg_size(&r->part[i]);
        st = eq_proto_check_frames(&r->msg, r->nparts, sizes, err);
    }
    if (st) {
        /* Keep the peer, type and request id for an ERROR reply. */
        eq_msg_type t = r->msg.type;
        bool has_req = r->msg.has_req;
        uint64_t req = r->msg.req;
        eq_proto_peer from = r->from;
        eq_proto_recvd_close(r);
        r->from = from;
        r->msg.type = t;
        r->msg.has_req = has_req;
        r->msg.req = req;
    }
    return st;
}
