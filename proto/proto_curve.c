/* proto/proto_curve.c -- CurveZMQ key files and the ZAP allow-list handler;
 * see proto_zmq.h.  ZAP is RFC 27 (rfc.zeromq.org/spec/27). */
#include "proto/proto_zmq.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_KEY_LEN 40 /* z85 characters of a 32-byte key */

/* ---- key files ------------------------------------------------------------------ */

static eq_status s_write_new(const char *path, mode_t mode, const char *comment, const char *key, eq_err *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) return eq_err_set(err, EQ_ERR_IO, "%s: %s", path, strerror(errno));
    char buf[256];
    int n = snprintf(buf, sizeof buf, "# %s\n%s\n", comment, key);
    bool ok = fchmod(fd, mode) == 0 && write(fd, buf, (size_t)n) == n && fsync(fd) == 0;
    int e = errno;
    if (close(fd) != 0 && ok) {
        ok = false;
        e = errno;
    }
    if (!ok) {
        unlink(path);
        return eq_err_set(err, EQ_ERR_IO, "%s: %s", path, strerror(e));
    }
    return EQ_OK;
}

eq_status eq_proto_curve_keygen(const char *public_path, const char *secret_path, eq_err *err)
{
    if (!zmq_has("curve")) return eq_err_set(err, EQ_ERR_UNSUPPORTED, "this libzmq has no CURVE support");
    char pub[EQ_PROTO_KEY_Z85], sec[EQ_PROTO_KEY_Z85];
    if (zmq_curve_keypair(pub, sec))
        return eq_err_set(err, EQ_ERR_INTERNAL, "zmq_curve_keypair: %s", zmq_strerror(zmq_errno()));
    /* Check both first, so a clash leaves nothing behind. */
    struct stat st;
    if (lstat(public_path, &st) == 0) return eq_err_set(err, EQ_ERR_IO, "%s: exists; not overwriting a key", public_path);
    if (lstat(secret_path, &st) == 0) return eq_err_set(err, EQ_ERR_IO, "%s: exists; not overwriting a key", secret_path);
    eq_status s = s_write_new(secret_path, 0600, "eq CURVE secret key (keep private)", sec, err);
    memset(sec, 0, sizeof sec);
    if (s) return s;
    if ((s = s_write_new(public_path, 0644, "eq CURVE public key", pub, err))) {
        unlink(secret_path);
        return s;
    }
    return EQ_OK;
}

eq_status eq_proto_curve_load(const char *path, bool secret, char key[EQ_PROTO_KEY_Z85], eq_err *err)
{
    key[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return eq_err_set(err, EQ_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return eq_err_set(err, EQ_ERR_IO, "%s: %s", path, strerror(e));
    }
    if (secret && (st.st_mode & 077)) {
        close(fd);
        return eq_err_set(err, EQ_ERR_IO, "%s: secret key is accessible by others (mode %03o); chmod 600 it", path,
                          (unsigned)(st.st_mode & 0777));
    }
    char buf[4097];
    size_t len = 0;
    ssize_t n;
    while (len < sizeof buf - 1 && (n = read(fd, buf + len, sizeof buf - 1 - len)) != 0) {
        if (n < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd);
            return eq_err_set(err, EQ_ERR_IO, "%s: %s", path, strerror(e));
        }
        len += (size_t)n;
    }
    close(fd);
    if (len == sizeof buf - 1) return eq_err_set(err, EQ_ERR_PARSE, "%s: larger than 4 KiB, not a key file", path);
    buf[len] = '\0';

    int line = 0, found = 0;
    for (char *p = buf, *next; p && *p; p = next) {
        line++;
        char *nl = strchr(p, '\n');
        next = nl ? nl + 1 : NULL;
        if (nl) *nl = '\0';
        size_t l = strlen(p);
        while (l && (p[l - 1] == '\r' || p[l - 1] == ' ' || p[l - 1] == '\t')) p[--l] = '\0';
        while (*p == ' ' || *p == '\t') p++, l--;
        if (l == 0 || p[0] == '#') continue;
        uint8_t bin[32];
        if (l != S_KEY_LEN || !zmq_z85_decode(bin, p))
            return eq_err_set(err, EQ_ERR_PARSE, "%s:%d: not a 40-character z85 key", path, line);
        if (found++) return eq_err_set(err, EQ_ERR_PARSE, "%s:%d: more than one key", path, line);
        memcpy(key, p, S_KEY_LEN + 1);
    }
    memset(buf, 0, sizeof buf);
    if (!found) return eq_err_set(err, EQ_ERR_PARSE, "%s: no key found", path);
    return EQ_OK;
}

eq_status eq_proto_curve_public(const char secret[EQ_PROTO_KEY_Z85], char public_out[EQ_PROTO_KEY_Z85], eq_err *err)
{
    if (strnlen(secret, EQ_PROTO_KEY_Z85) != S_KEY_LEN || zmq_curve_public(public_out, secret))
        return eq_err_set(err, EQ_ERR_INVALID, "not a z85 CURVE secret key");
    return EQ_OK;
}

/* ---- ZAP handler --------------------------------------------------------------------- */

struct eq_proto_zap {
    void *ctx;
    void *pipe;     /* our end of the control pipe */
    void *zap;      /* REP at inproc://zeromq.zap.01, used by the thread */
    void *tpipe;    /* the thread's end of the pipe */
    pthread_t thread;
    uint8_t (*keys)[32];
    size_t nkeys;
    atomic_uint_least64_t accepted, refused;
};

static bool s_allowed(const eq_proto_zap *z, const uint8_t *key)
{
    for (size_t i = 0; i < z->nkeys; i++)
        if (memcmp(z->keys[i], key, 32) == 0) return true;
    return false;
}

/* Answer one ZAP request (all its frames already read into f[0..n)). */
static void s_zap_reply(eq_proto_zap *z, zmq_msg_t *f, size_t n, size_t total)
{
    const char *status = "400", *text = "refused";
    char user[EQ_PROTO_KEY_Z85] = "";
    bool wellformed = total >= 6 && total <= 8 && zmq_msg_size(&f[0]) == 3 && memcmp(zmq_msg_data(&f[0]), "1.0", 3) == 0;
    if (!wellformed) {
        text = "malformed ZAP request";
    } else if (zmq_msg_size(&f[5]) == 5 && memcmp(zmq_msg_data(&f[5]), "CURVE", 5) == 0 && n >= 7 &&
               zmq_msg_size(&f[6]) == 32) {
        if (s_allowed(z, zmq_msg_data(&f[6]))) {
            status = "200";
            text = "OK";
            zmq_z85_encode(user, zmq_msg_data(&f[6]), 32);
        } else {
            text = "client key not in the allow-list";
        }
    } else {
        text = "only CURVE clients are accepted";
    }
    if (status[0] == '2') atomic_fetch_add(&z->accepted, 1);
    else atomic_fetch_add(&z->refused, 1);

    /* version, request id, status code, status text, user id, metadata */
    const void *req_id = n >= 2 ? zmq_msg_data(&f[1]) : "";
    size_t req_len = n >= 2 ? zmq_msg_size(&f[1]) : 0;
    zmq_send(z->zap, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(z->zap, req_id, req_len, ZMQ_SNDMORE);
    zmq_send(z->zap, status, 3, ZMQ_SNDMORE);
    zmq_send(z->zap, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(z->zap, user, strlen(user), ZMQ_SNDMORE);
    zmq_send(z->zap, "", 0, 0);
}

static void *s_zap_thread(void *arg)
{
    eq_proto_zap *z = arg;
    zmq_send(z->tpipe, "READY", 5, 0);
    for (;;) {
        zmq_pollitem_t items[2] = { { z->tpipe, 0, ZMQ_POLLIN, 0 }, { z->zap, 0, ZMQ_POLLIN, 0 } };
        if (zmq_poll(items, 2, -1) < 0) {
            if (zmq_errno() == EINTR) continue;
            break; /* ETERM: the context is going away */
        }
        if (items[0].revents & ZMQ_POLLIN) break; /* $TERM: the only message the pipe carries */
        if (!(items[1].revents & ZMQ_POLLIN)) continue;
        zmq_msg_t f[8];
        size_t n = 0, total = 0;
        int more = 1;
        while (more) {
            zmq_msg_t tmp, *p = n < 8 ? &f[n] : &tmp;
            zmq_msg_init(p);
            if (zmq_msg_recv(p, z->zap, 0) < 0) {
                zmq_msg_close(p);
                break;
            }
            more = zmq_msg_more(p);
            total++;
            if (p == &tmp) zmq_msg_close(&tmp);
            else n++;
        }
        if (!more) s_zap_reply(z, f, n, total);
        for (size_t i = 0; i < n; i++) zmq_msg_close(&f[i]);
        if (more) break; /* receive failed mid-request: the context is terminating */
    }
    zmq_close(z->zap);
    zmq_close(z->tpipe);
    return NULL;
}

eq_proto_zap *eq_proto_zap_new(void *ctx, const char (*allowed)[EQ_PROTO_KEY_Z85], size_t n, eq_err *err)
{
    eq_proto_zap *z = calloc(1, sizeof *z);
    if (!z) {
        eq_err_set(err, EQ_ERR_NOMEM, "ZAP handler: out of memory");
        return NULL;
    }
    z->ctx = ctx;
    atomic_init(&z->accepted, 0);
    atomic_init(&z->refused, 0);
    if (n && !(z->keys = eq_malloc_array(n, sizeof *z->keys))) {
        eq_err_set(err, EQ_ERR_NOMEM, "ZAP handler: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        if (strnlen(allowed[i], EQ_PROTO_KEY_Z85) != S_KEY_LEN || !zmq_z85_decode(z->keys[i], allowed[i])) {
            eq_err_set(err, EQ_ERR_INVALID, "ZAP handler: allow-list entry %zu is not a z85 public key", i);
            goto fail;
        }
    }
    z->nkeys = n;
    eq_proto_sockopts o;
    eq_proto_sockopts_default(&o, NULL);
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://eq-zap-pipe-%p", (void *)z);
    if (!(z->zap = eq_proto_socket(ctx, ZMQ_REP, &o, err)) || !(z->pipe = eq_proto_socket(ctx, ZMQ_PAIR, &o, err)) ||
        !(z->tpipe = eq_proto_socket(ctx, ZMQ_PAIR, &o, err)))
        goto fail;
    if (eq_proto_bind(z->zap, "inproc://zeromq.zap.01", NULL, 0, err) || eq_proto_bind(z->pipe, ep, NULL, 0, err) ||
        eq_proto_connect(z->tpipe, ep, err)) {
        eq_err_prefix(err, "ZAP handler: ");
        goto fail;
    }
    int rc = pthread_create(&z->thread, NULL, s_zap_thread, z);
    if (rc) {
        eq_err_set(err, EQ_ERR_INTERNAL, "ZAP handler: pthread_create: %s", strerror(rc));
        goto fail;
    }
    char ready[8];
    if (zmq_recv(z->pipe, ready, sizeof ready, 0) != 5) { /* cannot happen short of ETERM */
        eq_err_set(err, EQ_ERR_NET, "ZAP handler: no READY from the thread");
        zmq_send(z->pipe, "$TERM", 5, 0);
        pthread_join(z->thread, NULL);
        z->zap = z->tpipe = NULL; /* closed by the thread */
        goto fail;
    }
    return z;

fail:
    eq_proto_socket_close(&z->zap);
    eq_proto_socket_close(&z->tpipe);
    eq_proto_socket_close(&z->pipe);
    free(z->keys);
    free(z);
    return NULL;
}

void eq_proto_zap_destroy(eq_proto_zap **self)
{
    if (!self || !*self) return;
    eq_proto_zap *z = *self;
    zmq_send(z->pipe, "$TERM", 5, 0);
    pthread_join(z->thread, NULL);
    eq_proto_socket_close(&z->pipe);
    free(z->keys);
    free(z);
    *self = NULL;
}

void eq_proto_zap_counts(eq_proto_zap *self, uint64_t *accepted, uint64_t *refused)
{
    if (accepted) *accepted = atomic_load(&self->accepted);
    if (refused) *refused = atomic_load(&self->refused);
}

eq_status eq_proto_curve_server(void *sock, const eq_proto_zap *zap, const char secret[EQ_PROTO_KEY_Z85], eq_err *err)
{
    if (!zap) return eq_err_set(err, EQ_ERR_INVALID, "CURVE server without a ZAP handler would accept any client");
    if (strnlen(secret, EQ_PROTO_KEY_Z85) != S_KEY_LEN) return eq_err_set(err, EQ_ERR_INVALID, "CURVE server: bad secret key");
    int one = 1;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, secret, EQ_PROTO_KEY_Z85) ||
        zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, "eq", 2))
        return eq_err_set(err, EQ_ERR_NET, "CURVE server: %s", zmq_strerror(zmq_errno()));
    return EQ_OK;
}

eq_status eq_proto_curve_client(void *sock, const char public_key[EQ_PROTO_KEY_Z85], const char secret[EQ_PROTO_KEY_Z85],
                                const char server_public[EQ_PROTO_KEY_Z85], eq_err *err)
{
    if (strnlen(public_key, EQ_PROTO_KEY_Z85) != S_KEY_LEN || strnlen(secret, EQ_PROTO_KEY_Z85) != S_KEY_LEN ||
        strnlen(server_public, EQ_PROTO_KEY_Z85) != S_KEY_LEN)
        return eq_err_set(err, EQ_ERR_INVALID, "CURVE client: keys must be 40-character z85 strings");
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server_public, EQ_PROTO_KEY_Z85) ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, public_key, EQ_PROTO_KEY_Z85) ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, secret, EQ_PROTO_KEY_Z85))
        return eq_err_set(err, EQ_ERR_NET, "CURVE client: %s", zmq_strerror(zmq_errno()));
    return EQ_OK;
}
