/* tests/check_proto_zmq.c -- eq messages over real ZeroMQ sockets (inproc and
 * tcp on 127.0.0.1 only), zero-copy payloads, ROUTER envelopes, errors on
 * the wire, CURVE key files and the ZAP allow-list. */
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <time.h>

#include "proto/proto_zmq.h"
#include "tests/testutil.h"

#define MIB (1024 * 1024)

static atomic_int s_freed;
static void s_free_cb(void *data, void *hint)
{
    ck_assert_ptr_eq(hint, (void *)0x5eed);
    free(data);
    atomic_fetch_add(&s_freed, 1);
}

/* A DEALER connected to a ROUTER bound at `endpoint`. */
static void s_pair(void *ctx, const char *endpoint, void **router, void **dealer, int rcvtimeo_ms)
{
    eq_err e = { 0 };
    eq_proto_sockopts o;
    eq_proto_sockopts_default(&o, NULL);
    o.rcvtimeo_ms = rcvtimeo_ms;
    *router = eq_proto_socket(ctx, ZMQ_ROUTER, &o, &e);
    ck_assert_msg(*router != NULL, "%s", e.msg);
    *dealer = eq_proto_socket(ctx, ZMQ_DEALER, &o, &e);
    ck_assert_msg(*dealer != NULL, "%s", e.msg);
    char ep[256];
    ck_assert_msg(eq_proto_bind(*router, endpoint, ep, sizeof ep, &e) == EQ_OK, "%s", e.msg);
    ck_assert_msg(eq_proto_connect(*dealer, ep, &e) == EQ_OK, "%s", e.msg);
}

static void s_batch_transfer(const char *endpoint)
{
    atomic_store(&s_freed, 0);
    void *ctx = zmq_ctx_new();
    void *router, *dealer;
    s_pair(ctx, endpoint, &router, &dealer, 2000);
    eq_err e = { 0 };

    /* 1 MiB of images: count 16, 64x64x16... as U8 NHWC [16, 128, 128, 4]. */
    const uint32_t count = 16;
    size_t isize = (size_t)count * 128 * 128 * 4;
    ck_assert_uint_eq(isize, 1 * MIB);
    uint8_t *img = malloc(isize);
    int32_t *lab = malloc(count * sizeof *lab);
    for (size_t i = 0; i < isize; i++) img[i] = (uint8_t)(i * 2654435761u >> 24);
    for (uint32_t i = 0; i < count; i++) lab[i] = (int32_t)i * 7;
    uint8_t *expect = malloc(isize);
    memcpy(expect, img, isize);

    eq_msg m;
    eq_proto_msg_init(&m, EQ_MSG_BATCH);
    m.has_req = true;
    m.req = 42;
    snprintf(m.u.batch.job, sizeof m.u.batch.job, "abc");
    m.u.batch.count = count;
    int64_t ish[4] = { count, 128, 128, 4 }, lsh[1] = { count };
    ck_assert_int_eq(eq_proto_add_frame(&m, "images", EQ_DT_U8, 4, ish, NULL), EQ_OK);
    ck_assert_int_eq(eq_proto_add_frame(&m, "labels", EQ_DT_I32, 1, lsh, NULL), EQ_OK);
    eq_proto_payload pay[2] = { { img, isize, s_free_cb, (void *)0x5eed }, { lab, count * 4, s_free_cb, (void *)0x5eed } };
    ck_assert_msg(eq_proto_send(dealer, NULL, &m, pay, 2, 0, &e) == EQ_OK, "%s", e.msg);

    eq_proto_recvd *r = malloc(sizeof *r);
    eq_proto_recvd_init(r);
    ck_assert_msg(eq_proto_recv(router, r, NULL, 0, &e) == EQ_OK, "%s", e.msg);
    ck_assert_int_eq(r->msg.type, EQ_MSG_BATCH);
    ck_assert_uint_eq(r->msg.req, 42);
    ck_assert_uint_gt(r->from.len, 0);
    ck_assert_uint_eq(r->nparts, 2);
    size_t sz;
    const uint8_t *got = eq_proto_recvd_frame(r, (size_t)r->msg.u.batch.frame_images, &sz);
    ck_assert_uint_eq(sz, isize);
    ck_assert(memcmp(got, expect, isize) == 0);
    if (strncmp(endpoint, "inproc", 6) == 0) ck_assert_ptr_eq(got, img); /* not copied on the way */
    const uint8_t *gl = eq_proto_recvd_frame(r, (size_t)r->msg.u.batch.frame_labels, &sz);
    ck_assert_uint_eq(sz, count * 4);
    int32_t l15;
    memcpy(&l15, gl + 15 * 4, 4); /* frames may be unaligned */
    ck_assert_int_eq(l15, 105);
    ck_assert_ptr_null(eq_proto_recvd_frame(r, 2, &sz));

    /* The ROUTER answers through the envelope; the DEALER gets it. */
    eq_proto_peer peer = r->from;
    ck_assert_int_eq(eq_proto_send_error(router, &peer, true, 42, EQ_ERR_NOTFOUND, "unknown job abc", &e), EQ_OK);
    eq_proto_recvd *d = malloc(sizeof *d);
    eq_proto_recvd_init(d);
    ck_assert_msg(eq_proto_recv(dealer, d, NULL, 0, &e) == EQ_OK, "%s", e.msg);
    ck_assert_int_eq(d->msg.type, EQ_MSG_ERROR);
    ck_assert_uint_eq(d->msg.u.error.code, EQ_ERR_NOTFOUND);
    ck_assert_str_eq(d->msg.u.error.message, "unknown job abc");
    ck_assert_uint_eq(d->from.len, 0);

    eq_proto_recvd_close(r);
    eq_proto_recvd_close(d);
    eq_proto_recvd_close(d); /* idempotent */
    eq_proto_socket_close(&dealer);
    eq_proto_socket_close(&router);
    ck_assert_ptr_null(router);
    zmq_ctx_term(ctx);
    ck_assert_int_eq(atomic_load(&s_freed), 2); /* each payload released once */
    free(expect);
    free(r);
    free(d);
}

START_TEST(test_batch_inproc) { s_batch_transfer("inproc://eq-test-batch"); }
END_TEST

START_TEST(test_batch_tcp) { s_batch_transfer("tcp://127.0.0.1:*"); }
END_TEST

/* Bad messages on the wire: the receiver reports them, keeps the envelope
 * and request id for an ERROR, and stays in step with the socket. */
START_TEST(test_bad_on_wire)
{
    void *ctx = zmq_ctx_new();
    void *router, *dealer;
    s_pair(ctx, "inproc://eq-test-bad", &router, &dealer, 2000);
    eq_err e = { 0 };
    eq_proto_recvd *r = malloc(sizeof *r);
    eq_proto_recvd_init(r);

    /* 1. Not MessagePack. */
    zmq_send(dealer, "\xc1", 1, 0);
    ck_assert_int_eq(eq_proto_recv(router, r, NULL, 0, &e), EQ_ERR_PARSE);
    ck_assert_uint_gt(r->from.len, 0);
    /* 2. A valid BATCH_REQ header followed by 20 junk frames: limit, all drained. */
    eq_msg m;
    eq_proto_msg_init(&m, EQ_MSG_BATCH_REQ);
    m.has_req = true;
    m.req = 77;
    snprintf(m.u.batch_req.job, sizeof m.u.batch_req.job, "j");
    m.u.batch_req.count = 1;
    uint8_t *hdr;
    size_t hlen;
    ck_assert_int_eq(eq_proto_encode(&m, &hdr, &hlen, NULL), EQ_OK);
    zmq_send(dealer, hdr, hlen, ZMQ_SNDMORE);
    for (int i = 0; i < 20; i++) zmq_send(dealer, "x", 1, i < 19 ? ZMQ_SNDMORE : 0);
    ck_assert_int_eq(eq_proto_recv(router, r, NULL, 0, &e), EQ_ERR_LIMIT);
    ck_assert_ptr_nonnull(strstr(e.msg, "BATCH_REQ: 20 payload frames"));
    ck_assert(r->msg.has_req && r->msg.req == 77 && r->msg.type == EQ_MSG_BATCH_REQ);
    ck_assert_uint_eq(r->nparts, 0);
    eq_proto_peer peer = r->from;
    ck_assert_int_eq(eq_proto_send_error(router, &peer, true, 77, e.code, e.msg, &e), EQ_OK);
    /* 3. Then a good one arrives intact. */
    ck_assert_int_eq(eq_proto_send(dealer, NULL, &m, NULL, 0, 0, &e), EQ_OK);
    ck_assert_int_eq(eq_proto_recv(router, r, NULL, 0, &e), EQ_OK);
    ck_assert_int_eq(r->msg.type, EQ_MSG_BATCH_REQ);
    ck_assert_str_eq(r->msg.u.batch_req.job, "j");
    /* The DEALER got the ERROR for request 77. */
    eq_proto_recvd *d = malloc(sizeof *d);
    eq_proto_recvd_init(d);
    ck_assert_int_eq(eq_proto_recv(dealer, d, NULL, 0, &e), EQ_OK);
    ck_assert_int_eq(d->msg.type, EQ_MSG_ERROR);
    ck_assert_uint_eq(d->msg.req, 77);
    ck_assert_str_eq(d->msg.u.error.name, "limit");
    free(hdr);

    /* A frame size that disagrees with the header: refused. */
    eq_msg b;
    eq_proto_msg_init(&b, EQ_MSG_BATCH);
    b.has_req = true;
    snprintf(b.u.batch.job, sizeof b.u.batch.job, "j");
    b.u.batch.count = 1;
    int64_t ish[4] = { 1, 1, 1, 1 }, lsh[1] = { 1 };
    eq_proto_add_frame(&b, "images", EQ_DT_U8, 4, ish, NULL);
    eq_proto_add_frame(&b, "labels", EQ_DT_I64, 1, lsh, NULL);
    ck_assert_int_eq(eq_proto_encode(&b, &hdr, &hlen, NULL), EQ_OK);
    zmq_send(dealer, hdr, hlen, ZMQ_SNDMORE);
    zmq_send(dealer, "x", 1, ZMQ_SNDMORE);
    zmq_send(dealer, "1234", 4, 0);
    ck_assert_int_eq(eq_proto_recv(router, r, NULL, 0, &e), EQ_ERR_PROTO);
    ck_assert_ptr_nonnull(strstr(e.msg, "frame 1 'labels': 4 bytes"));
    free(hdr);
    /* ... and eq_proto_send will not send such a thing (payload released). */
    atomic_store(&s_freed, 0);
    eq_proto_payload pay[2] = { { malloc(1), 1, s_free_cb, (void *)0x5eed }, { malloc(4), 4, s_free_cb, (void *)0x5eed } };
    ck_assert_int_eq(eq_proto_send(dealer, NULL, &b, pay, 2, 0, &e), EQ_ERR_INVALID);
    ck_assert_int_eq(atomic_load(&s_freed), 2);

    /* ROUTER_MANDATORY: a reply to an unknown peer fails loudly. */
    eq_proto_peer ghost = { .id = "ghost", .len = 5 };
    ck_assert_int_eq(eq_proto_send_error(router, &ghost, false, 0, EQ_ERR_PROTO, "x", &e), EQ_ERR_NET);
    ck_assert_ptr_nonnull(strstr(e.msg, "unreachable"));
    /* Nothing to receive: timeout. */
    ck_assert_int_eq(eq_proto_recv(router, r, NULL, ZMQ_DONTWAIT, &e), EQ_ERR_TIMEOUT);
    /* Nobody to send to: timeout, and the payloads are still released once. */
    void *lonely = eq_proto_socket(ctx, ZMQ_DEALER, NULL, &e);
    ck_assert_ptr_nonnull(lonely);
    atomic_store(&s_freed, 0);
    eq_proto_payload pay2[2] = { { malloc(1), 1, s_free_cb, (void *)0x5eed }, { malloc(8), 8, s_free_cb, (void *)0x5eed } };
    ck_assert_int_eq(eq_proto_send(lonely, NULL, &b, pay2, 2, ZMQ_DONTWAIT, &e), EQ_ERR_TIMEOUT);
    ck_assert_ptr_nonnull(strstr(e.msg, "BATCH: send:"));
    ck_assert_int_eq(atomic_load(&s_freed), 2);
    eq_proto_socket_close(&lonely);

    eq_proto_recvd_close(r);
    eq_proto_recvd_close(d);
    free(r);
    free(d);
    eq_proto_socket_close(&dealer);
    eq_proto_socket_close(&router);
    zmq_ctx_term(ctx);
}
END_TEST

START_TEST(test_curve_keyfiles)
{
    char *dir = eq_test_scratch("curve");
    char pub[4200], sec[4200];
    snprintf(pub, sizeof pub, "%s/k.pub", dir);
    snprintf(sec, sizeof sec, "%s/k.key", dir);
    eq_err e = { 0 };
    ck_assert_msg(eq_proto_curve_keygen(pub, sec, &e) == EQ_OK, "%s", e.msg);
    struct stat st;
    ck_assert_int_eq(stat(sec, &st), 0);
    ck_assert_uint_eq(st.st_mode & 0777, 0600);
    ck_assert_int_eq(stat(pub, &st), 0);
    ck_assert_uint_eq(st.st_mode & 0777, 0644);
    char kp[EQ_PROTO_KEY_Z85], ks[EQ_PROTO_KEY_Z85], derived[EQ_PROTO_KEY_Z85];
    ck_assert_msg(eq_proto_curve_load(pub, false, kp, &e) == EQ_OK, "%s", e.msg);
    ck_assert_msg(eq_proto_curve_load(sec, true, ks, &e) == EQ_OK, "%s", e.msg);
    ck_assert_int_eq(eq_proto_curve_public(ks, derived, &e), EQ_OK);
    ck_assert_str_eq(kp, derived);
    /* Never overwrites. */
    ck_assert_int_eq(eq_proto_curve_keygen(pub, sec, &e), EQ_ERR_IO);
    ck_assert_ptr_nonnull(strstr(e.msg, "exists"));
    /* A secret readable by others is refused. */
    chmod(sec, 0644);
    ck_assert_int_eq(eq_proto_curve_load(sec, true, ks, &e), EQ_ERR_IO);
    ck_assert_ptr_nonnull(strstr(e.msg, "chmod 600"));
    /* Malformed files. */
    char bad[4200];
    snprintf(bad, sizeof bad, "%s/bad.pub", dir);
    FILE *f = fopen(bad, "w");
    fputs("# comment\n\nnot-a-key\n", f);
    fclose(f);
    ck_assert_int_eq(eq_proto_curve_load(bad, false, kp, &e), EQ_ERR_PARSE);
    ck_assert_ptr_nonnull(strstr(e.msg, "bad.pub:3: not a 40-character z85 key"));
    f = fopen(bad, "w");
    fputs("# only a comment\n", f);
    fclose(f);
    ck_assert_int_eq(eq_proto_curve_load(bad, false, kp, &e), EQ_ERR_PARSE);
    ck_assert_int_eq(eq_proto_curve_load("/nonexistent/k.pub", false, kp, &e), EQ_ERR_IO);
    eq_test_scratch_rm(dir);
}
END_TEST

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A CURVE DEALER with its own key pair, connected to `ep`. */
static void *s_curve_client(void *ctx, const char *ep, const char *server_pub, char pub[EQ_PROTO_KEY_Z85])
{
    char sec[EQ_PROTO_KEY_Z85];
    ck_assert_int_eq(zmq_curve_keypair(pub, sec), 0);
    eq_err e = { 0 };
    void *s = eq_proto_socket(ctx, ZMQ_DEALER, NULL, &e);
    ck_assert_ptr_nonnull(s);
    ck_assert_msg(eq_proto_curve_client(s, pub, sec, server_pub, &e) == EQ_OK, "%s", e.msg);
    ck_assert_int_eq(eq_proto_connect(s, ep, &e), EQ_OK);
    return s;
}

static void s_send_hello(void *sock, const char *name)
{
    eq_msg m;
    eq_proto_msg_init(&m, EQ_MSG_HELLO);
    snprintf(m.u.hello.role, sizeof m.u.hello.role, "trainer");
    snprintf(m.u.hello.name, sizeof m.u.hello.name, "%s", name);
    m.u.hello.versions[0] = EQ_PROTO_VERSION;
    m.u.hello.nversions = 1;
    snprintf(m.u.hello.software, sizeof m.u.hello.software, "eq test");
    eq_err e = { 0 };
    ck_assert_msg(eq_proto_send(sock, NULL, &m, NULL, 0, 0, &e) == EQ_OK, "%s", e.msg);
}

START_TEST(test_curve_allow_list)
{
    ck_assert(zmq_has("curve"));
    void *ctx = zmq_ctx_new();
    eq_err e = { 0 };
    char spub[EQ_PROTO_KEY_Z85], ssec[EQ_PROTO_KEY_Z85];
    ck_assert_int_eq(zmq_curve_keypair(spub, ssec), 0);
    char allowed_pub[EQ_PROTO_KEY_Z85], allowed_sec[EQ_PROTO_KEY_Z85];
    ck_assert_int_eq(zmq_curve_keypair(allowed_pub, allowed_sec), 0);
    char allow[1][EQ_PROTO_KEY_Z85];
    memcpy(allow[0], allowed_pub, EQ_PROTO_KEY_Z85);

    /* A CURVE server needs a ZAP handler. */
    void *srv = eq_proto_socket(ctx, ZMQ_ROUTER, NULL, &e);
    ck_assert_int_eq(eq_proto_curve_server(srv, NULL, ssec, &e), EQ_ERR_INVALID);
    eq_proto_zap *zap = eq_proto_zap_new(ctx, (const char(*)[EQ_PROTO_KEY_Z85])allow, 1, &e);
    ck_assert_msg(zap != NULL, "%s", e.msg);
    /* One per context. */
    eq_proto_zap *zap2 = eq_proto_zap_new(ctx, (const char(*)[EQ_PROTO_KEY_Z85])allow, 1, &e);
    ck_assert_ptr_null(zap2);
    ck_assert_int_eq(e.code, EQ_ERR_NET);
    /* Bad allow-list entry. */
    char junk[1][EQ_PROTO_KEY_Z85] = { "short" };
    ck_assert_ptr_null(eq_proto_zap_new(ctx, (const char(*)[EQ_PROTO_KEY_Z85])junk, 1, &e));
    ck_assert_int_eq(e.code, EQ_ERR_INVALID);

    ck_assert_msg(eq_proto_curve_server(srv, zap, ssec, &e) == EQ_OK, "%s", e.msg);
    int tmo = 200;
    zmq_setsockopt(srv, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    char ep[256];
    ck_assert_int_eq(eq_proto_bind(srv, "tcp://127.0.0.1:*", ep, sizeof ep, &e), EQ_OK);

    /* A client whose key is not allowed: its HELLO never arrives. */
    char other_pub[EQ_PROTO_KEY_Z85];
    void *intruder = s_curve_client(ctx, ep, spub, other_pub);
    s_send_hello(intruder, "intruder");
    uint64_t acc = 0, ref = 0;
    double t0 = s_now();
    while (ref == 0 && s_now() - t0 < 2.0) {
        zmq_poll(NULL, 0, 10);
        eq_proto_zap_counts(zap, &acc, &ref);
    }
    ck_assert_uint_ge(ref, 1);
    ck_assert_uint_eq(acc, 0);
    eq_proto_recvd *r = malloc(sizeof *r);
    eq_proto_recvd_init(r);
    ck_assert_int_eq(eq_proto_recv(srv, r, NULL, 0, &e), EQ_ERR_TIMEOUT);

    /* The allowed client gets through. */
    void *cli = eq_proto_socket(ctx, ZMQ_DEALER, NULL, &e);
    ck_assert_int_eq(eq_proto_curve_client(cli, allowed_pub, allowed_sec, spub, &e), EQ_OK);
    ck_assert_int_eq(eq_proto_connect(cli, ep, &e), EQ_OK);
    s_send_hello(cli, "friend");
    tmo = 2000;
    zmq_setsockopt(srv, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    ck_assert_msg(eq_proto_recv(srv, r, NULL, 0, &e) == EQ_OK, "%s", e.msg);
    ck_assert_int_eq(r->msg.type, EQ_MSG_HELLO);
    ck_assert_str_eq(r->msg.u.hello.name, "friend");
    eq_proto_zap_counts(zap, &acc, &ref);
    ck_assert_uint_eq(acc, 1);
    /* Still nothing from the intruder. */
    tmo = 100;
    zmq_setsockopt(srv, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    ck_assert_int_eq(eq_proto_recv(srv, r, NULL, 0, &e), EQ_ERR_TIMEOUT);

    /* Sockets without CURVE or a ZAP domain (loopback control, inproc) in
     * the same context do not consult the handler. */
    void *prouter, *pdealer;
    s_pair(ctx, "inproc://eq-test-plain", &prouter, &pdealer, 2000);
    s_send_hello(pdealer, "plain");
    ck_assert_msg(eq_proto_recv(prouter, r, NULL, 0, &e) == EQ_OK, "%s", e.msg);
    ck_assert_str_eq(r->msg.u.hello.name, "plain");
    eq_proto_zap_counts(zap, &acc, &ref);
    ck_assert_uint_eq(acc, 1);
    eq_proto_socket_close(&prouter);
    eq_proto_socket_close(&pdealer);

    eq_proto_recvd_close(r);
    free(r);
    eq_proto_socket_close(&intruder);
    eq_proto_socket_close(&cli);
    eq_proto_socket_close(&srv);
    eq_proto_zap_destroy(&zap);
    ck_assert_ptr_null(zap);
    eq_proto_zap_destroy(&zap); /* NULL-safe */
    zmq_ctx_term(ctx);
}
END_TEST

/* ipc://PATH: libzmq unlinks PATH before binding.  A regular file there
 * used to be deleted, and a second daemon on a served path silently took
 * the endpoint over; both are refused now, a stale socket is replaced. */
START_TEST(test_ipc_bind_in_use)
{
    char *dir = eq_test_scratch("ipc");
    char path[4200], ep[4300];
    void *ctx = zmq_ctx_new();
    eq_err e = {0};
    eq_proto_sockopts o;
    eq_proto_sockopts_default(&o, NULL);
    void *a = eq_proto_socket(ctx, ZMQ_ROUTER, &o, &e), *b = eq_proto_socket(ctx, ZMQ_ROUTER, &o, &e);
    ck_assert(a && b);
    /* a regular file: refused and kept */
    snprintf(path, sizeof path, "%s/notes.txt", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("keep me", f);
    fclose(f);
    snprintf(ep, sizeof ep, "ipc://%s", path);
    ck_assert_int_eq(eq_proto_bind(a, ep, NULL, 0, &e), EQ_ERR_NET);
    ck_assert_msg(strstr(e.msg, "exists and is not a socket"), "%s", e.msg);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert(S_ISREG(st.st_mode) && st.st_size == 7);
    /* served by a: b is refused, naming the endpoint */
    snprintf(path, sizeof path, "%s/d.sock", dir);
    snprintf(ep, sizeof ep, "ipc://%s", path);
    ck_assert_int_eq(eq_proto_bind(a, ep, NULL, 0, &e), EQ_OK);
    ck_assert_int_eq(eq_proto_bind(b, ep, NULL, 0, &e), EQ_ERR_NET);
    ck_assert_msg(strstr(e.msg, ep) && strstr(e.msg, "already in use"), "%s", e.msg);
    /* a stale socket file (its server gone without unlinking): replaced */
    snprintf(path, sizeof path, "%s/stale.sock", dir);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    ck_assert_uint_lt(strlen(path), sizeof sa.sun_path);
    memcpy(sa.sun_path, path, strlen(path));
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    close(fd);
    snprintf(ep, sizeof ep, "ipc://%s", path);
    ck_assert_msg(eq_proto_bind(b, ep, NULL, 0, &e) == EQ_OK, "%s", e.msg);
    eq_proto_socket_close(&a);
    eq_proto_socket_close(&b);
    zmq_ctx_term(ctx);
    eq_test_scratch_rm(dir);
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("proto_zmq");
    TCase *tc = tcase_create("zmq");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, test_batch_inproc);
    tcase_add_test(tc, test_batch_tcp);
    tcase_add_test(tc, test_bad_on_wire);
    tcase_add_test(tc, test_ipc_bind_in_use);
    suite_add_tcase(s, tc);
    tc = tcase_create("curve");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, test_curve_keyfiles);
    tcase_add_test(tc, test_curve_allow_list);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return eq_test_run(s_suite()); }
