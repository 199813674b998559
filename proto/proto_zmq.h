/*
 * proto/proto_zmq.h -- eq messages over ZeroMQ: sockets, multipart send
 * and receive without copying payloads, CurveZMQ keys and the ZAP
 * allow-list handler.
 *
 * Socket pattern: a trainer's DEALER talks to a loader's ROUTER (one hop,
 * no proxies).  A ROUTER receives [identity][header][frames...] and replies
 * [identity][header][frames...]; there is no empty delimiter frame (that is
 * REQ's convention, which eq does not use).  ROUTER sockets are created
 * with ROUTER_MANDATORY so a reply to a vanished peer fails loudly
 * (EQ_ERR_NET, "Host unreachable") instead of being dropped.
 *
 * Only the stable (non-draft) libzmq API is used.  Thread safety: a ZeroMQ
 * socket belongs to one thread; so do the structs here that hold frames.
 */
#ifndef EQ_PROTO_ZMQ_H
#define EQ_PROTO_ZMQ_H

#include <zmq.h>

#include "proto/proto.h"

/* ---- sockets ------------------------------------------------------------- */

typedef struct eq_proto_sockopts {
    int linger_ms;       /* ZMQ_LINGER; default 0 (close never blocks) */
    int sndhwm, rcvhwm;  /* messages; default 1000 each (flow control is the
                          * caller's: eq keeps a bounded number in flight) */
    int sndtimeo_ms;     /* ZMQ_SNDTIMEO; default -1 (block) */
    int rcvtimeo_ms;     /* ZMQ_RCVTIMEO; default -1 (block) */
    int64_t maxmsgsize;  /* ZMQ_MAXMSGSIZE per frame; default from limits
                          * (max(max_frame_bytes, max_header_bytes)), -1 none */
} eq_proto_sockopts;

/* Defaults as documented above; `lim` may be NULL (eq_proto_limits_default). */
void eq_proto_sockopts_default(eq_proto_sockopts *o, const eq_proto_limits *lim);

/* Create a socket of `type` (ZMQ_DEALER, ZMQ_ROUTER, ...) with the options
 * (NULL: defaults); ROUTER sockets also get ZMQ_ROUTER_MANDATORY.  Returns
 * NULL and fills `err` (EQ_ERR_NET, with zmq_strerror) on failure.  Close
 * with eq_proto_socket_close. */
void *eq_proto_socket(void *ctx, int type, const eq_proto_sockopts *o, eq_err *err);
/* zmq_close with linger already set; NULL-safe, NULLs *sock. */
void eq_proto_socket_close(void **sock);
/* Bind or connect; on success for a bind, `endpoint_out` (may be NULL,
 * `cap` bytes) receives ZMQ_LAST_ENDPOINT (the real port for "tcp://...:*"). */
eq_status eq_proto_bind(void *sock, const char *endpoint, char *endpoint_out, size_t cap, eq_err *err);
eq_status eq_proto_connect(void *sock, const char *endpoint, eq_err *err);
/* 1 when `endpoint` is reachable from this host only (inproc://, ipc://,
 * tcp://127.x, localhost, [::1], lo): the rule by which eq-loader and
 * eq-eval serve refuse a public bind without CURVE keys or --insecure. */
int eq_proto_endpoint_local(const char *endpoint);

/* ---- send ------------------------------------------------------------------ */

/* ZeroMQ's free callback: called once when ZeroMQ is done with the bytes,
 * possibly from one of its I/O threads, so it must be thread-safe. */
typedef void eq_proto_free_fn(void *data, void *hint);

/* One payload frame to send.  With free_fn, the bytes are sent zero-copy and
 * ownership passes to eq_proto_send (see there).  Without free_fn they are
 * copied (only for small frames: the caller keeps ownership). */
typedef struct eq_proto_payload {
    void *data;
    size_t size;
    eq_proto_free_fn *free_fn;
    void *hint;
} eq_proto_payload;

/* A ROUTER peer identity (routing id). */
#define EQ_PROTO_PEER_CAP 256
typedef struct eq_proto_peer {
    uint8_t id[EQ_PROTO_PEER_CAP];
    size_t len; /* 0: none (not received on a ROUTER) */
} eq_proto_peer;

/* Send `m` with its payload frames.  `to`: the peer on a ROUTER socket, NULL
 * on others.  `flags`: 0 or ZMQ_DONTWAIT (applies to the first frame; the
 * rest of a multipart message goes with it).  The message is validated and
 * npayloads must equal m->nframes with each size equal to the frame's shape
 * x dtype size (EQ_ERR_INVALID otherwise): eq never sends what it refuses.
 * Ownership: every payload that has a free_fn is released exactly once by a
 * call to its free_fn, whether the send succeeds or fails (on failure,
 * possibly before this function returns).
 * Errors: EQ_ERR_INVALID, EQ_ERR_NOMEM, EQ_ERR_TIMEOUT (EAGAIN: DONTWAIT or
 * SNDTIMEO with a full queue), EQ_ERR_NET (other zmq errors, e.g.
 * EHOSTUNREACH from ROUTER_MANDATORY). */
eq_status eq_proto_send(void *sock, const eq_proto_peer *to, const eq_msg *m, eq_proto_payload *payloads,
                        size_t npayloads, int flags, eq_err *err);

/* Encode and send an ERROR reply (eq_proto_make_error). */
eq_status eq_proto_send_error(void *sock, const eq_proto_peer *to, bool has_req, uint64_t req, eq_status code,
                              const char *message, eq_err *err);

/* ---- receive ----------------------------------------------------------------- */

/* A received message: the decoded header plus the payload frames, kept as
 * the zmq_msg_t ZeroMQ filled (no copy).  Initialise with
 * eq_proto_recvd_init once, release with eq_proto_recvd_close (also safe
 * after a failed receive, and before reuse). */
typedef struct eq_proto_recvd {
    eq_proto_peer from; /* ROUTER sockets: the sender's identity */
    eq_msg msg;         /* decoded header */
    size_t nparts;      /* payload frames held in part[] */
    zmq_msg_t part[EQ_PROTO_MAX_FRAMES];
} eq_proto_recvd;

void eq_proto_recvd_init(eq_proto_recvd *r);
void eq_proto_recvd_close(eq_proto_recvd *r);
/* Payload frame i (0-based, after the header); NULL if out of range.  The
 * bytes stay valid until eq_proto_recvd_close.  No alignment is guaranteed:
 * over TCP, libzmq may leave a frame at any offset of its receive buffer,
 * so read multi-byte elements with memcpy (or check the alignment first). */
const void *eq_proto_recvd_frame(const eq_proto_recvd *r, size_t i, size_t *size);

/* Receive one whole multipart message from `sock` and decode it (ROUTER
 * sockets: the first frame is the peer identity, stored in r->from).
 * `lim` may be NULL (defaults).  Closes whatever `r` held before.
 * `flags`: 0 or ZMQ_DONTWAIT.
 * On a decode failure the rest of the multipart message is still consumed
 * (the socket stays in step), payload frames are released, and r->from,
 * r->msg.type, r->msg.has_req/req keep what could be read so the caller
 * can answer with eq_proto_send_error.
 * Errors: EQ_ERR_TIMEOUT (nothing to receive: DONTWAIT or RCVTIMEO),
 * EQ_ERR_NET (zmq error, e.g. ETERM), EQ_ERR_INTERRUPTED (EINTR), and the
 * decode errors of eq_proto_decode (EQ_ERR_LIMIT for too many frames). */
eq_status eq_proto_recv(void *sock, eq_proto_recvd *r, const eq_proto_limits *lim, int flags, eq_err *err);

/* ---- CurveZMQ ------------------------------------------------------------------ */

#define EQ_PROTO_KEY_Z85 41 /* 40 z85 characters + NUL */

/* Generate a key pair and write it: `public_path` (mode 0644) and
 * `secret_path` (mode 0600), each a comment line and the z85 key.  Refuses
 * to overwrite an existing file (EQ_ERR_IO naming it).  EQ_ERR_UNSUPPORTED
 * if libzmq has no CURVE. */
eq_status eq_proto_curve_keygen(const char *public_path, const char *secret_path, eq_err *err);

/* Read a key file written by eq_proto_curve_keygen (lines starting with '#'
 * and blank lines ignored; one 40-character z85 key).  With `secret`, the
 * file must not be readable or writable by group or others (EQ_ERR_IO,
 * like ssh).  EQ_ERR_PARSE names the file and line for a malformed key. */
eq_status eq_proto_curve_load(const char *path, bool secret, char key[EQ_PROTO_KEY_Z85], eq_err *err);

/* Derive the public key from a secret key (z85 both). */
eq_status eq_proto_curve_public(const char secret[EQ_PROTO_KEY_Z85], char public_out[EQ_PROTO_KEY_Z85],
                                eq_err *err);

/* ZAP handler: the authentication service of one ZeroMQ context, bound at
 * inproc://zeromq.zap.01 in a thread of its own.  It accepts a CURVE client
 * only if its public key is in the allow-list, and refuses every other
 * mechanism on sockets that ask it (a ZAP domain set).  Started and stopped
 * synchronously (actor style): when eq_proto_zap_new returns, the handler
 * is answering; eq_proto_zap_destroy returns after the thread has exited.
 * One per context (EQ_ERR_NET if the endpoint is taken).  The allow-list
 * (z85 public keys) is copied.  Start it before binding CURVE servers. */
typedef struct eq_proto_zap eq_proto_zap;
eq_proto_zap *eq_proto_zap_new(void *ctx, const char (*allowed)[EQ_PROTO_KEY_Z85], size_t n, eq_err *err);
void eq_proto_zap_destroy(eq_proto_zap **self);
/* Requests answered so far: accepted and refused (for logs and tests). */
void eq_proto_zap_counts(eq_proto_zap *self, uint64_t *accepted, uint64_t *refused);

/* Make `sock` a CURVE server with the given secret key, its connections
 * checked by `zap` (required: without a running handler libzmq would
 * accept any client key).  Call before bind. */
eq_status eq_proto_curve_server(void *sock, const eq_proto_zap *zap, const char secret[EQ_PROTO_KEY_Z85],
                                eq_err *err);
/* Make `sock` a CURVE client: its own key pair and the server's public key.
 * Call before connect. */
eq_status eq_proto_curve_client(void *sock, const char public_key[EQ_PROTO_KEY_Z85],
                                const char secret[EQ_PROTO_KEY_Z85], const char server_public[EQ_PROTO_KEY_Z85],
                                eq_err *err);

#endif
