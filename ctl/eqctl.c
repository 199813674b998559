/*
 * ctl/eqctl.c -- eqctl, the command-line tool for eq: talks to a daemon's
 * data or control socket, makes keys and datasets, prints config docs.
 *
 * Subcommands live in one table of {name, fn, help}; each parses its own
 * flags with getopt_long and prints data as text or, with --json, as one
 * JSON object.  Exit status: 0 ok, 1 the operation failed, 2 bad usage.
 * doc/eqctl.md is the user's reference.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <png.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/config.h"
#include "core/json.h"
#include "core/log.h"
#include "core/pool.h"
#include "core/safetensors.h"
#include "loader/coco.h"
#include "loader/loader.h"
#include "loader/server.h"
#include "proto/det.h"
#include "ctl/run.h"
#include "quant/quant.h"
#include "trainer/model_run.h"
#include "trainer/train.h"
#include "proto/proto_zmq.h"

typedef int (*s_cmd_fn)(int argc, char **argv);

typedef struct s_cmd {
    const char *name; /* one or two words */
    s_cmd_fn fn;
    const char *help;
    const char *usage; /* flags, for --help */
} s_cmd;

#define S_U_VERSION "[--json]"
#define S_U_KEYGEN "NAME"
#define S_U_CONTROL "ENDPOINT [--json] [--timeout-ms N] [--server-key FILE --key FILE]"
#define S_U_CONTROL_ARG "TRAINER_CONTROL_EP LOADER_EP [--json] [--timeout-ms N] [--server-key FILE --key FILE]"
#define S_U_BATCH                                                                                          \
    "[--loader ENDPOINT] [--config FILE] [--set SECTION.KEY=VALUE] [--dataset NAME] [--split train|val]\n"  \
    "       [--epoch E] [--step S] [--offset O] [--count N] [--batch G] [--size HxW] [--channels C]\n"     \
    "       [--seed S] [--aug none|rrc|center|padcrop|det] [--png FILE|DIR] [--out FILE.safetensors]\n"   \
    "       [--raw FILE] [--json] [--timeout-ms N] [--server-key FILE --key FILE]"
#define S_U_SYNTH                                                                                          \
    "OUT --classes K --per-class N [--val-per-class M] [--mean-pixels P] [--quality Q] [--seed S] [--threads T]\n" \
    "       --coco OUT [--classes K] [--train N] [--val M] [--min-side A] [--max-side B] [--quality Q] [--seed S]"
#define S_U_INFO "PATH [--json] [--threads N]"
#define S_U_DOC "[--out FILE]"
#define S_U_BENCH "--root DIR --pipeline train|val [--threads N] [--seconds S] [--size HxW] [--json]"

/* ------------------------------------------------------------ helpers */

static int s_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int s_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("eqctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

static int s_usage_err(const char *cmd, const char *usage)
{
    fprintf(stderr, "usage: eqctl %s %s\n", cmd, usage);
    return 2;
}

/* Strict unsigned number: decimal, in [lo, hi]. */
static int s_u64(const char *flag, const char *v, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!v || !*v || *v == '-') goto bad;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || *end || x < lo || x > hi) goto bad;
    *out = x;
    return 0;
bad:
    fprintf(stderr, "eqctl: %s '%s': expected an integer in [%" PRIu64 ", %" PRIu64 "]\n", flag, v ? v : "", lo,
            hi);
    return -1;
}

/* CURVE client keys: --server-key FILE (the server's public key) and
 * --key FILE (our secret key; the public half is derived). */
typedef struct s_curve {
    const char *server_key, *key;
} s_curve;

static void *s_connect(void *ctx, int type, const char *ep, const s_curve *cv, int timeout_ms, eq_err *e)
{
    eq_proto_sockopts o;
    eq_proto_sockopts_default(&o, NULL);
    o.rcvtimeo_ms = timeout_ms;
    o.sndtimeo_ms = timeout_ms;
    void *s = eq_proto_socket(ctx, type, &o, e);
    if (!s) return NULL;
    if (cv && (cv->server_key || cv->key)) {
        char sp[EQ_PROTO_KEY_Z85], sec[EQ_PROTO_KEY_Z85], pub[EQ_PROTO_KEY_Z85];
        if (!cv->server_key || !cv->key) {
            eq_err_set(e, EQ_ERR_INVALID, "--server-key and --key go together");
            goto fail;
        }
        if (eq_proto_curve_load(cv->server_key, false, sp, e) || eq_proto_curve_load(cv->key, true, sec, e) ||
            eq_proto_curve_public(sec, pub, e) || eq_proto_curve_client(s, pub, sec, sp, e))
            goto fail;
    }
    if (eq_proto_connect(s, ep, e) == EQ_OK) return s;
fail:
    eq_proto_socket_close(&s);
    return NULL;
}

/* A JSON string (quotes included) on stdout. */
static void s_jstr(const char *v)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)(v ? v : ""); *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

/* ------------------------------------------------------------ version */

static int s_version(int argc, char **argv)
{
    static const struct option o[] = {{"json", no_argument, 0, 'j'}, {0, 0, 0, 0}};
    int json = 0, c;
    while ((c = getopt_long(argc, argv, "", o, NULL)) != -1) {
        if (c == 'j')
            json = 1;
        else
            return s_usage_err("version", S_U_VERSION);
    }
    int a, b, d;
    zmq_version(&a, &b, &d);
    if (json)
        printf("{\"eq\":\"%s\",\"protocol\":%d,\"libzmq\":\"%d.%d.%d\",\"curve\":%s}\n", PACKAGE_VERSION,
               EQ_PROTO_VERSION, a, b, d, zmq_has("curve") ? "true" : "false");
    else
        printf("eqctl (eq) %s, protocol %d, libzmq %d.%d.%d%s\n", PACKAGE_VERSION, EQ_PROTO_VERSION, a, b, d,
               zmq_has("curve") ? ", curve" : "");
    return 0;
}

/* ------------------------------------------------------------- keygen */

static int s_keygen(int argc, char **argv)
{
    static const struct option o[] = {{0, 0, 0, 0}};
    if (getopt_long(argc, argv, "", o, NULL) != -1 || optind != argc - 1) return s_usage_err("keygen", S_U_KEYGEN);
    const char *name = argv[optind];
    size_t n = strlen(name);
    if (!n || n > 4000) return s_fail("keygen: bad NAME");
    char pub[4096 + 8], sec[4096 + 8];
    snprintf(pub, sizeof pub, "%s.pub", name);
    snprintf(sec, sizeof sec, "%s.key", name);
    eq_err e = {0};
    if (eq_proto_curve_keygen(pub, sec, &e) != EQ_OK) return s_fail("keygen: %s", e.msg);
    printf("wrote %s (public, give it to peers) and %s (secret, mode 0600)\n", pub, sec);
    return 0;
}

/* ---------------------------------------------------- control: status, stop */

/* Send COMMAND (with " ARG" appended when `with_arg`: the second positional
 * argument) to the control socket ENDPOINT and print the answer. */
static int s_control(const char *cmdname, const char *command, int argc, char **argv, int json_default,
                     int with_arg)
{
    static const struct option o[] = {{"json", no_argument, 0, 'j'},
                                      {"timeout-ms", required_argument, 0, 't'},
                                      {"server-key", required_argument, 0, 's'},
                                      {"key", required_argument, 0, 'k'},
                                      {0, 0, 0, 0}};
    int json = json_default, c;
    uint64_t timeout = 5000;
    s_curve cv = {0};
    const char *usage = with_arg ? S_U_CONTROL_ARG : S_U_CONTROL;
    while ((c = getopt_long(argc, argv, "", o, NULL)) != -1) {
        switch (c) {
        case 'j': json = 1; break;
        case 't':
            if (s_u64("--timeout-ms", optarg, 1, 3600000, &timeout)) return 2;
            break;
        case 's': cv.server_key = optarg; break;
        case 'k': cv.key = optarg; break;
        default: return s_usage_err(cmdname, usage);
        }
    }
    if (optind != argc - 1 - (with_arg ? 1 : 0)) return s_usage_err(cmdname, usage);
    const char *ep = argv[optind];
    char full[512];
    if (with_arg) {
        const char *arg = argv[optind + 1];
        if (!*arg || strchr(arg, ' ') || snprintf(full, sizeof full, "%s %s", command, arg) >= (int)sizeof full)
            return s_fail("%s: '%s' is not a single endpoint", cmdname, arg);
        command = full;
    }
    eq_err e = {0};
    void *ctx = zmq_ctx_new();
    void *s = s_connect(ctx, ZMQ_DEALER, ep, &cv, (int)timeout, &e);
    int rc = 1;
    char *buf = NULL;
    if (!s) {
        s_fail("%s: %s", ep, e.msg);
        goto out;
    }
    if (zmq_send(s, command, strlen(command), 0) < 0) {
        s_fail("%s: send: %s", ep, zmq_strerror(zmq_errno()));
        goto out;
    }
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, s, 0) < 0) {
        s_fail("%s: no answer within %" PRIu64 " ms (%s)", ep, timeout, zmq_strerror(zmq_errno()));
        zmq_msg_close(&m);
        goto out;
    }
    size_t n = zmq_msg_size(&m);
    buf = malloc(n + 1);
    if (!buf) {
        zmq_msg_close(&m);
        goto out;
    }
    memcpy(buf, zmq_msg_data(&m), n);
    buf[n] = 0;
    zmq_msg_close(&m);
    eq_json_doc *doc = eq_json_parse(buf, n, NULL, &e);
    if (!doc) {
        s_fail("%s: answer is not JSON: %s", ep, e.msg);
        goto out;
    }
    const eq_json *root = eq_json_root(doc);
    const eq_json *ok = eq_json_get(root, "ok");
    int good = ok && eq_json_typeof(ok) == EQ_JSON_TRUE;
    if (json) {
        printf("%s\n", buf);
    } else if (!good) {
        const eq_json *er = eq_json_get(root, "error");
        s_fail("%s: %s", ep, er && eq_json_str(er, NULL) ? eq_json_str(er, NULL) : buf);
    } else if (!strcmp(command, "stop")) {
        printf("%s: stopping\n", ep);
    } else if (with_arg) {
        printf("%s: %s: ok\n", ep, command);
    } else {
        /* A readable summary of the status object. */
        for (size_t i = 0; i < eq_json_len(root); i++) {
            size_t kl;
            const char *k = eq_json_key_at(root, i, &kl);
            const eq_json *v = eq_json_at(root, i);
            if (eq_json_typeof(v) == EQ_JSON_NUMBER)
                printf("%-16.*s %g\n", (int)kl, k, eq_json_num(v));
            else if (eq_json_typeof(v) == EQ_JSON_STRING)
                printf("%-16.*s %s\n", (int)kl, k, eq_json_str(v, NULL));
            else if (eq_json_typeof(v) == EQ_JSON_ARRAY) {
                printf("%-16.*s %zu\n", (int)kl, k, eq_json_len(v));
                for (size_t j = 0; j < eq_json_len(v); j++) {
                    const eq_json *it = eq_json_at(v, j);
                    printf("  -");
                    for (size_t f = 0; f < eq_json_len(it); f++) {
                        size_t fl;
                        const char *fk = eq_json_key_at(it, f, &fl);
                        const eq_json *fv = eq_json_at(it, f);
                        if (eq_json_typeof(fv) == EQ_JSON_STRING)
                            printf(" %.*s=%s", (int)fl, fk, eq_json_str(fv, NULL));
                        else if (eq_json_typeof(fv) == EQ_JSON_NUMBER)
                            printf(" %.*s=%g", (int)fl, fk, eq_json_num(fv));
                    }
                    printf("\n");
                }
            }
        }
    }
    eq_json_doc_destroy(&doc);
    rc = good ? 0 : 1;
out:
    free(buf);
    eq_proto_socket_close(&s);
    zmq_ctx_term(ctx);
    return rc;
}

static int s_status(int argc, char **argv)
{
    return s_control("status", "status", argc, argv, 0, 0);
}

static int s_stop(int argc, char **argv)
{
    return s_control("stop", "stop", argc, argv, 0, 0);
}

/* A running eq-trainer's loaders: `add-loader EP` / `remove-loader EP` on
 * its control socket (doc/eq-trainer.md). */
static int s_loader_add(int argc, char **argv)
{
    return s_control("loader add", "add-loader", argc, argv, 0, 1);
}

static int s_loader_remove(int argc, char **argv)
{
    return s_control("loader remove", "remove-loader", argc, argv, 0, 1);
}

/* ------------------------------------------------------------ batch get */

/* One request and its answer of the expected type (an ERROR is reported). */
static eq_status s_call(void *sock, eq_msg *m, eq_msg_type want, eq_proto_recvd *r, eq_err *e)
{
    eq_status st = eq_proto_send(sock, NULL, m, NULL, 0, 0, e);
    if (st) return st;
    for (;;) {
        st = eq_proto_recv(sock, r, NULL, 0, e);
        if (st == EQ_ERR_TIMEOUT)
            return eq_err_set(e, st, "no answer to %s within the timeout (is an eq-loader serving there? --timeout-ms)",
                              eq_msg_type_name(m->type));
        if (st) return st;
        /* Replies to earlier requests (there are none here) would be skipped. */
        if (m->has_req && (!r->msg.has_req || r->msg.req != m->req)) continue;
        break;
    }
    if (r->msg.type == EQ_MSG_ERROR)
        return eq_err_set(e, (eq_status)(r->msg.u.error.code < EQ_STATUS_COUNT ? r->msg.u.error.code : EQ_ERR_PROTO),
                          "loader answered %s with ERROR %s: %s", eq_msg_type_name(m->type), r->msg.u.error.name,
                          r->msg.u.error.message);
    if (r->msg.type != want)
        return eq_err_set(e, EQ_ERR_PROTO, "loader answered %s with %s, expected %s", eq_msg_type_name(m->type),
                          eq_msg_type_name(r->msg.type), eq_msg_type_name(want));
    return EQ_OK;
}

static void s_png_err(png_structp p, png_const_charp msg)
{
    eq_err *e = png_get_error_ptr(p);
    eq_err_set(e, EQ_ERR_IO, "png: %s", msg);
    png_longjmp(p, 1);
}

static void s_png_warn(png_structp p, png_const_charp msg)
{
    (void)p;
    (void)msg;
}

/* n images (h x w x c, c = 1 or 3) as a grid PNG, each scaled up by an
 * integer factor so that small images (28 x 28) stay visible. */
static eq_status s_write_grid(const char *path, const uint8_t *img, uint32_t n, uint32_t h, uint32_t w, uint32_t c,
                              eq_err *e)
{
    if (c != 1 && c != 3) return eq_err_set(e, EQ_ERR_UNSUPPORTED, "--png: %u channels (only 1 or 3)", c);
    uint32_t cols = (uint32_t)ceil(sqrt((double)n)), rows = (n + cols - 1) / cols;
    uint32_t big = h > w ? h : w, sc = big >= 64 ? 1 : (64 + big - 1) / big;
    if (sc > 8) sc = 8;
    const uint32_t gap = 2;
    uint64_t W = (uint64_t)cols * (w * sc + gap) + gap, H = (uint64_t)rows * (h * sc + gap) + gap;
    if (W > 32768 || H > 32768) return eq_err_set(e, EQ_ERR_LIMIT, "--png: grid of %" PRIu64 "x%" PRIu64 " too large", W, H);
    uint8_t *pix = calloc((size_t)W * H, c);
    png_bytep *rowp = malloc(sizeof *rowp * H);
    FILE *f = NULL;
    png_structp png = NULL;
    png_infop info = NULL;
    eq_status st = EQ_OK;
    if (!pix || !rowp) {
        st = eq_err_set(e, EQ_ERR_NOMEM, "--png: out of memory");
        goto out;
    }
    memset(pix, 64, (size_t)W * H * c); /* dark grey gaps */
    for (uint32_t k = 0; k < n; k++) {
        uint32_t gx = k % cols, gy = k / cols;
        for (uint32_t y = 0; y < h * sc; y++) {
            uint8_t *dst = pix + (((size_t)gy * (h * sc + gap) + gap + y) * W + (size_t)gx * (w * sc + gap) + gap) * c;
            const uint8_t *src = img + (((size_t)k * h + y / sc) * w) * c;
            for (uint32_t x = 0; x < w * sc; x++) memcpy(dst + (size_t)x * c, src + (size_t)(x / sc) * c, c);
        }
    }
    for (uint64_t y = 0; y < H; y++) rowp[y] = pix + y * W * c;
    if (!(f = fopen(path, "wb"))) {
        st = eq_err_set(e, EQ_ERR_IO, "--png %s: %s", path, strerror(errno));
        goto out;
    }
    png = png_create_write_struct(PNG_LIBPNG_VER_STRING, e, s_png_err, s_png_warn);
    info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        st = eq_err_set(e, EQ_ERR_NOMEM, "--png: libpng init failed");
        goto out;
    }
    if (setjmp(png_jmpbuf(png))) {
        st = e->code ? e->code : EQ_ERR_IO;
        goto out;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)W, (png_uint_32)H, 8, c == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    png_write_image(png, rowp);
    png_write_end(png, NULL);
out:
    if (png) png_destroy_write_struct(&png, info ? &info : NULL);
    if (f && fclose(f) != 0 && st == EQ_OK) st = eq_err_set(e, EQ_ERR_IO, "--png %s: %s", path, strerror(errno));
    free(pix);
    free(rowp);
    return st;
}

static int s_parse_size(const char *v, eq_loader_data_cfg *dc)
{
    uint64_t h, w;
    char buf[64], *x;
    snprintf(buf, sizeof buf, "%s", v);
    if (!(x = strchr(buf, 'x'))) {
        if (s_u64("--size", buf, 1, 4096, &h)) return -1;
        w = h;
    } else {
        *x = 0;
        if (s_u64("--size (height)", buf, 1, 4096, &h) || s_u64("--size (width)", x + 1, 1, 4096, &w)) return -1;
    }
    dc->height = (int64_t)h;
    dc->width = (int64_t)w;
    return 0;
}

/* JOB of a detection job: the JOB_OK header is read raw for the class
 * mapping it carries (proto/det.h). */
static eq_status s_det_job(void *sock, eq_msg *job, eq_msg_job_ok *ok, int64_t *ids,
                           char (*names)[EQ_DET_CLASS_NAME_CAP], uint32_t *ncat, eq_err *e)
{
    eq_status st = eq_proto_send(sock, NULL, job, NULL, 0, 0, e);
    if (st) return st;
    for (;;) {
        zmq_msg_t hdr;
        zmq_msg_init(&hdr);
        if (zmq_msg_recv(&hdr, sock, 0) < 0) {
            zmq_msg_close(&hdr);
            return eq_err_set(e, EQ_ERR_TIMEOUT, "no answer to JOB within the timeout (is an eq-loader serving there?)");
        }
        int more = zmq_msg_more(&hdr);
        while (more) { /* a JOB_OK has no payload; drop whatever follows */
            zmq_msg_t part;
            zmq_msg_init(&part);
            if (zmq_msg_recv(&part, sock, 0) < 0) more = 0;
            else more = zmq_msg_more(&part);
            zmq_msg_close(&part);
        }
        eq_msg m;
        st = eq_proto_decode_header(&m, zmq_msg_data(&hdr), zmq_msg_size(&hdr), NULL, e);
        if (!st && (!m.has_req || m.req != job->req)) {
            eq_proto_msg_reset(&m);
            zmq_msg_close(&hdr);
            continue;
        }
        if (!st && m.type == EQ_MSG_ERROR)
            st = eq_err_set(e, (eq_status)(m.u.error.code < EQ_STATUS_COUNT ? m.u.error.code : EQ_ERR_PROTO),
                            "loader answered JOB with ERROR %s: %s", m.u.error.name, m.u.error.message);
        else if (!st && m.type != EQ_MSG_JOB_OK)
            st = eq_err_set(e, EQ_ERR_PROTO, "loader answered JOB with %s", eq_msg_type_name(m.type));
        if (!st) {
            *ok = m.u.job_ok;
            st = eq_proto_det_job_ok_classes(zmq_msg_data(&hdr), zmq_msg_size(&hdr), ids, names, EQ_DET_MAX_CLASSES,
                                             ncat, e);
        }
        eq_proto_msg_reset(&m);
        zmq_msg_close(&hdr);
        return st;
    }
}

static void s_det_colour(int32_t cls, uint8_t rgb[3])
{
    double h = fmod((cls + 1) * 0.618033988749895, 1.0) * 6.0, f = h - floor(h);
    double v = 255, p = 40, q = v - (v - p) * f, t = p + (v - p) * f, c[3];
    switch ((int)h % 6) {
    case 0: c[0] = v, c[1] = t, c[2] = p; break;
    case 1: c[0] = q, c[1] = v, c[2] = p; break;
    case 2: c[0] = p, c[1] = v, c[2] = t; break;
    case 3: c[0] = p, c[1] = q, c[2] = v; break;
    case 4: c[0] = t, c[1] = p, c[2] = v; break;
    default: c[0] = v, c[1] = p, c[2] = q; break;
    }
    for (int i = 0; i < 3; i++) rgb[i] = (uint8_t)c[i];
}


/* Image i of a detection batch as a PNG with its boxes and mask outlines. */
static eq_status s_det_png(const char *dir, const eq_det_view *v, const void *const *fr, uint32_t i, int box_format,
                           eq_err *e)
{
    int32_t h = eq_det_i32(fr[v->sizes], 2 * (size_t)i), w = eq_det_i32(fr[v->sizes], 2 * (size_t)i + 1);
    uint8_t *pix = malloc((size_t)h * w * 3);
    if (!pix) return eq_err_set(e, EQ_ERR_NOMEM, "--png: out of memory");
    const uint8_t *im = (const uint8_t *)fr[v->images] + (size_t)i * v->H * v->W * 3;
    for (int32_t y = 0; y < h; y++) memcpy(pix + (size_t)y * w * 3, im + (size_t)y * v->W * 3, (size_t)w * 3);
    int32_t k0 = eq_det_i32(fr[v->box_off], i), k1 = eq_det_i32(fr[v->box_off], (size_t)i + 1);
    eq_status st = EQ_OK;
    for (int32_t k = k0; k < k1 && v->masks && !st; k++) {
        uint8_t kind = ((const uint8_t *)fr[v->mask_kind])[k];
        if (kind == EQ_DET_MASK_NONE) continue;
        int32_t rx = eq_det_i32(fr[v->mask_rects], 4 * (size_t)k), ry = eq_det_i32(fr[v->mask_rects], 4 * (size_t)k + 1);
        int32_t rw = eq_det_i32(fr[v->mask_rects], 4 * (size_t)k + 2), rh = eq_det_i32(fr[v->mask_rects], 4 * (size_t)k + 3);
        int64_t o0 = eq_det_i64(fr[v->mask_off], (size_t)k), o1 = eq_det_i64(fr[v->mask_off], (size_t)k + 1);
        uint8_t *m = malloc((size_t)rw * rh);
        if (!m) {
            st = eq_err_set(e, EQ_ERR_NOMEM, "--png: out of memory");
            break;
        }
        st = eq_det_mask_decode(kind, (uint32_t)rw, (uint32_t)rh, (const uint8_t *)fr[v->mask_data] + o0,
                                (size_t)(o1 - o0), m, e);
        uint8_t rgb[3];
        s_det_colour(eq_det_i32(fr[v->classes], (size_t)k), rgb);
        for (int q = 0; q < 3; q++) rgb[q] = (uint8_t)((rgb[q] + 255) / 2);
        /* outline: a mask pixel with a 4-neighbour outside the mask */
        for (int32_t x = 0; x < rw && !st; x++)
            for (int32_t y = 0; y < rh; y++) {
                if (!m[(size_t)x * rh + y]) continue;
                int edge = x == 0 || y == 0 || x == rw - 1 || y == rh - 1 || !m[(size_t)(x - 1) * rh + y] ||
                           !m[(size_t)(x + 1) * rh + y] || !m[(size_t)x * rh + y - 1] || !m[(size_t)x * rh + y + 1];
                if (edge) memcpy(pix + ((size_t)(ry + y) * w + (rx + x)) * 3, rgb, 3);
            }
        free(m);
    }
    for (int32_t k = k0; k < k1 && !st; k++) {
        float b[4];
        for (int q = 0; q < 4; q++) b[q] = eq_det_f32(fr[v->boxes], 4 * (size_t)k + q);
        if (box_format == EQ_BOX_XYWH) b[2] += b[0], b[3] += b[1];
        if (box_format == EQ_BOX_CXCYWH) {
            float cx = b[0], cy = b[1];
            b[0] = cx - b[2] / 2, b[1] = cy - b[3] / 2, b[2] = cx + b[2] / 2, b[3] = cy + b[3] / 2;
        }
        int32_t x0 = (int32_t)floorf(b[0]), y0 = (int32_t)floorf(b[1]);
        int32_t x1 = (int32_t)ceilf(b[2]) - 1, y1 = (int32_t)ceilf(b[3]) - 1;
        x0 = x0 < 0 ? 0 : x0 >= w ? w - 1 : x0;
        x1 = x1 < 0 ? 0 : x1 >= w ? w - 1 : x1;
        y0 = y0 < 0 ? 0 : y0 >= h ? h - 1 : y0;
        y1 = y1 < 0 ? 0 : y1 >= h ? h - 1 : y1;
        uint8_t rgb[3];
        s_det_colour(eq_det_i32(fr[v->classes], (size_t)k), rgb);
        if (((const uint8_t *)fr[v->crowd])[k]) rgb[0] = rgb[1] = rgb[2] = 255; /* crowd: white */
        for (int32_t x = x0; x <= x1; x++) {
            memcpy(pix + ((size_t)y0 * w + x) * 3, rgb, 3);
            memcpy(pix + ((size_t)y1 * w + x) * 3, rgb, 3);
        }
        for (int32_t y = y0; y <= y1; y++) {
            memcpy(pix + ((size_t)y * w + x0) * 3, rgb, 3);
            memcpy(pix + ((size_t)y * w + x1) * 3, rgb, 3);
        }
    }
    if (!st) {
        char path[4200];
        snprintf(path, sizeof path, "%s/%03u_%" PRId64 ".png", dir, i, eq_det_i64(fr[v->image_ids], i));
        st = s_write_grid(path, pix, 1, (uint32_t)h, (uint32_t)w, 3, e);
    }
    free(pix);
    return st;
}

/* Summary (text or JSON), PNGs and safetensors of a detection BATCH. */
static int s_det_report(const eq_proto_recvd *r, const char *loader, const char *peer, const eq_msg_job_ok *ok,
                        const eq_loader_data_cfg *dc, const char *split, const int64_t *cat_ids, uint32_t ncat,
                        int json, const char *png, const char *out, const char *raw)
{
    const eq_msg_batch *b = &r->msg.u.batch;
    const void *fr[EQ_PROTO_MAX_FRAMES];
    size_t fs[EQ_PROTO_MAX_FRAMES];
    for (size_t i = 0; i < r->nparts; i++) fr[i] = eq_proto_recvd_frame(r, i, &fs[i]);
    eq_det_view v;
    eq_err e = {0};
    if (eq_proto_det_check(&r->msg, fr, fs, ok->classes, &v, &e)) return s_fail("%s: %s", loader, e.msg);
    uint64_t crowd = 0, dropped = 0, bitmaps = 0, rles = 0;
    for (uint32_t k = 0; k < v.nbox; k++) {
        crowd += ((const uint8_t *)fr[v.crowd])[k];
        if (v.masks) {
            uint8_t kind = ((const uint8_t *)fr[v.mask_kind])[k];
            bitmaps += kind == EQ_DET_MASK_BITMAP;
            rles += kind == EQ_DET_MASK_RLE;
        }
    }
    for (uint32_t i = 0; i < v.n; i++) dropped += (uint64_t)eq_det_i32(fr[v.dropped], i);
    uint64_t sum = eq_proto_hash64(fr[v.images], fs[v.images]);
    if (json) {
        printf("{\"loader\":");
        s_jstr(loader);
        printf(",\"job\":");
        s_jstr(ok->job);
        printf(",\"dataset\":");
        s_jstr(dc->dataset);
        printf(",\"split\":");
        s_jstr(split);
        printf(",\"size\":%" PRIu64 ",\"classes\":%u,\"categories\":[", ok->size, ok->classes);
        for (uint32_t k = 0; k < ncat; k++) printf("%s%" PRId64, k ? "," : "", cat_ids[k]);
        printf("],\"data_hash\":");
        s_jstr(ok->data_hash);
        printf(",\"pipeline\":");
        s_jstr(ok->pipeline);
        printf(",\"epoch\":%" PRIu64 ",\"step\":%" PRIu64 ",\"offset\":%u,\"count\":%u,\"shape\":[%u,%u,%u,3],"
               "\"images\":[",
               b->epoch, b->step, b->offset, v.n, v.n, v.H, v.W);
        for (uint32_t i = 0; i < v.n; i++)
            printf("%s{\"id\":%" PRId64 ",\"size\":[%d,%d],\"scale\":[%.9g,%.9g],\"flipped\":%s,\"boxes\":%d,"
                   "\"dropped\":%d}",
                   i ? "," : "", eq_det_i64(fr[v.image_ids], i), eq_det_i32(fr[v.sizes], 2 * (size_t)i),
                   eq_det_i32(fr[v.sizes], 2 * (size_t)i + 1), (double)eq_det_f32(fr[v.scales], 2 * (size_t)i),
                   (double)eq_det_f32(fr[v.scales], 2 * (size_t)i + 1), ((const uint8_t *)fr[v.flipped])[i] ? "true" : "false",
                   eq_det_i32(fr[v.box_off], (size_t)i + 1) - eq_det_i32(fr[v.box_off], i), eq_det_i32(fr[v.dropped], i));
        printf("],\"boxes\":%u,\"crowd\":%" PRIu64 ",\"dropped\":%" PRIu64 ",\"masks\":%s,\"mask_bytes\":%" PRIu64
               ",\"replaced\":[",
               v.nbox, crowd, dropped, v.masks ? "true" : "false", v.mask_bytes);
        for (uint32_t i = 0; i < b->nreplaced; i++) printf("%s%u", i ? "," : "", b->replaced[i]);
        printf("],\"checksum\":\"%016" PRIx64 "\"}\n", sum);
    } else {
        printf("loader     %s  %s\n", loader, peer);
        printf("job        %s  %s/%s, %" PRIu64 " images, %u classes, data %s\n", ok->job, dc->dataset, split,
               ok->size, ok->classes, ok->data_hash);
        printf("pipeline   %s\n", ok->pipeline);
        printf("batch      epoch %" PRIu64 " step %" PRIu64 " offset %u count %u: images u8 [%u, %u, %u, 3] (padded)\n",
               b->epoch, b->step, b->offset, v.n, v.n, v.H, v.W);
        printf("boxes      %u (%" PRIu64 " crowd), %" PRIu64 " degenerate dropped", v.nbox, crowd, dropped);
        if (v.masks)
            printf("; masks %" PRIu64 " bytes (%" PRIu64 " bitmaps, %" PRIu64 " RLE)", v.mask_bytes, bitmaps, rles);
        printf("\n");
        for (uint32_t i = 0; i < v.n; i++)
            printf("image %3u  id %-10" PRId64 " %4dx%-4d scale %.4f,%.4f%s  %d boxes, %d dropped\n", i,
                   eq_det_i64(fr[v.image_ids], i), eq_det_i32(fr[v.sizes], 2 * (size_t)i + 1),
                   eq_det_i32(fr[v.sizes], 2 * (size_t)i), (double)eq_det_f32(fr[v.scales], 2 * (size_t)i + 1),
                   (double)eq_det_f32(fr[v.scales], 2 * (size_t)i), ((const uint8_t *)fr[v.flipped])[i] ? " flipped" : "",
                   eq_det_i32(fr[v.box_off], (size_t)i + 1) - eq_det_i32(fr[v.box_off], i), eq_det_i32(fr[v.dropped], i));
        printf("replaced   %u\n", b->nreplaced);
        printf("checksum   %016" PRIx64 " (FNV-1a 64 of the image bytes)\n", sum);
    }
    int rc = 0;
    if (png) {
        if (mkdir(png, 0777) != 0 && errno != EEXIST) return s_fail("--png %s: %s", png, strerror(errno));
        for (uint32_t i = 0; i < v.n && !rc; i++)
            if (s_det_png(png, &v, fr, i, dc->box_format, &e)) rc = s_fail("%s", e.msg);
        if (!rc && !json) printf("wrote      %s/ (%u PNGs with boxes and mask outlines)\n", png, v.n);
    }
    if (raw) {
        FILE *f = fopen(raw, "wb");
        if (!f || fwrite(fr[v.images], 1, fs[v.images], f) != fs[v.images] || fclose(f) != 0)
            rc = s_fail("--raw %s: %s", raw, strerror(errno));
    }
    if (out) {
        eq_st_writer *w = eq_st_writer_new();
        eq_status ws = w ? EQ_OK : eq_err_set(&e, EQ_ERR_NOMEM, "out of memory");
        for (uint32_t i = 0; i < r->msg.nframes && !ws; i++) {
            const eq_proto_frame_desc *fd = &r->msg.frames[i];
            ws = eq_st_writer_add(w, fd->name, fd->dtype, fd->ndim, fd->shape, fr[i], &e);
        }
        if (!ws) ws = eq_st_writer_meta(w, "job", ok->job, &e);
        if (!ws) ws = eq_st_writer_save(w, out, &e);
        if (ws)
            rc = s_fail("--out %s: %s", out, e.msg);
        else if (!json)
            printf("wrote      %s\n", out);
        eq_st_writer_destroy(&w);
    }
    return rc;
}

static int s_batch_get(int argc, char **argv)
{
    static const char *usage = S_U_BATCH;
    enum {
        O_LOADER = 256, O_CONFIG, O_SET, O_DATASET, O_SPLIT, O_EPOCH, O_STEP, O_OFFSET, O_COUNT, O_BATCH, O_SIZE,
        O_CHANNELS, O_SEED, O_AUG, O_PNG, O_OUT, O_RAW, O_JSON, O_TIMEOUT, O_SKEY, O_KEY
    };
    static const struct option o[] = {
        {"loader", required_argument, 0, O_LOADER}, {"config", required_argument, 0, O_CONFIG},
        {"set", required_argument, 0, O_SET},       {"dataset", required_argument, 0, O_DATASET},
        {"split", required_argument, 0, O_SPLIT},   {"epoch", required_argument, 0, O_EPOCH},
        {"step", required_argument, 0, O_STEP},     {"offset", required_argument, 0, O_OFFSET},
        {"count", required_argument, 0, O_COUNT},   {"batch", required_argument, 0, O_BATCH},
        {"size", required_argument, 0, O_SIZE},     {"channels", required_argument, 0, O_CHANNELS},
        {"seed", required_argument, 0, O_SEED},     {"aug", required_argument, 0, O_AUG},
        {"png", required_argument, 0, O_PNG},       {"out", required_argument, 0, O_OUT},
        {"raw", required_argument, 0, O_RAW},       {"json", no_argument, 0, O_JSON},
        {"timeout-ms", required_argument, 0, O_TIMEOUT}, {"server-key", required_argument, 0, O_SKEY},
        {"key", required_argument, 0, O_KEY},       {0, 0, 0, 0},
    };
    const char *loader = NULL, *config = NULL, *split = "train", *png = NULL, *out = NULL, *raw = NULL, *aug = NULL;
    const char *sets[64];
    size_t nsets = 0;
    /* Flags that change [data] become --set overrides, after the user's. */
    char fsets[8][128];
    size_t nf = 0;
    uint64_t epoch = 0, step = 0, offset = 0, count = 0, timeout = 30000, tmp;
    int json = 0, c, have_count = 0;
    s_curve cv = {0};
    while ((c = getopt_long(argc, argv, "", o, NULL)) != -1) {
        switch (c) {
        case O_LOADER: loader = optarg; break;
        case O_CONFIG: config = optarg; break;
        case O_SET:
            if (nsets == 64) return s_fail("at most 64 --set");
            sets[nsets++] = optarg;
            break;
        case O_DATASET: snprintf(fsets[nf++], sizeof fsets[0], "data.dataset=%.100s", optarg); break;
        case O_SPLIT: split = optarg; break;
        case O_EPOCH:
            if (s_u64("--epoch", optarg, 0, UINT64_MAX, &epoch)) return 2;
            break;
        case O_STEP:
            if (s_u64("--step", optarg, 0, UINT64_MAX, &step)) return 2;
            break;
        case O_OFFSET:
            if (s_u64("--offset", optarg, 0, UINT32_MAX, &offset)) return 2;
            break;
        case O_COUNT:
            if (s_u64("--count", optarg, 1, UINT32_MAX, &count)) return 2;
            have_count = 1;
            break;
        case O_BATCH:
            if (s_u64("--batch", optarg, 1, 1u << 24, &tmp)) return 2;
            snprintf(fsets[nf++], sizeof fsets[0], "data.global_batch=%" PRIu64, tmp);
            break;
        case O_SIZE: {
            eq_loader_data_cfg d;
            if (s_parse_size(optarg, &d)) return 2;
            snprintf(fsets[nf++], sizeof fsets[0], "data.height=%" PRId64, d.height);
            snprintf(fsets[nf++], sizeof fsets[0], "data.width=%" PRId64, d.width);
            break;
        }
        case O_CHANNELS: snprintf(fsets[nf++], sizeof fsets[0], "data.channels=%.40s", optarg); break;
        case O_SEED: snprintf(fsets[nf++], sizeof fsets[0], "data.seed=%.40s", optarg); break;
        case O_AUG: aug = optarg; break;
        case O_PNG: png = optarg; break;
        case O_OUT: out = optarg; break;
        case O_RAW: raw = optarg; break;
        case O_JSON: json = 1; break;
        case O_TIMEOUT:
            if (s_u64("--timeout-ms", optarg, 1, 3600000, &timeout)) return 2;
            break;
        case O_SKEY: cv.server_key = optarg; break;
        case O_KEY: cv.key = optarg; break;
        default: return s_usage_err("batch get", usage);
        }
        if (nf > 6) return s_fail("too many pipeline flags");
    }
    if (optind != argc) return s_usage_err("batch get", usage);
    int train = !strcmp(split, "train");
    if (aug) snprintf(fsets[nf++], sizeof fsets[0], "data.%s=%.40s", train ? "aug_train" : "aug_val", aug);
    static eq_loader_data_cfg dc;
    static eq_loader_cfg lc; /* [loader].bind is the default --loader */
    eq_config_section secs[2];
    eq_loader_config_sections(&lc, &dc, secs);
    eq_err e = {0};
    const char *all[64 + 8];
    size_t nall = 0;
    for (size_t i = 0; i < nsets; i++) all[nall++] = sets[i];
    for (size_t i = 0; i < nf; i++) all[nall++] = fsets[i];
    eq_status st = config ? eq_config_load(secs, 2, config, all, nall, &e)
                          : eq_config_parse_buffer(secs, 2, "(defaults)", "", 0, all, nall, &e);
    if (st) {
        fprintf(stderr, "eqctl: %s\n", e.msg);
        return 2;
    }
    if (!loader) loader = lc.bind;
    if (!have_count) count = (uint64_t)dc.global_batch > offset ? (uint64_t)dc.global_batch - offset : 1;

    eq_msg job;
    if (eq_loader_data_job(&dc, split, &job, &e)) return s_fail("%s", e.msg);
    job.has_req = true;
    job.req = 2;

    void *ctx = zmq_ctx_new();
    int rc = 1;
    eq_proto_recvd *r = malloc(sizeof *r);
    eq_proto_recvd_init(r);
    void *sock = s_connect(ctx, ZMQ_DEALER, loader, &cv, (int)timeout, &e);
    eq_st_writer *w = NULL;
    if (!sock) {
        s_fail("%s: %s", loader, e.msg);
        goto done;
    }
    eq_msg m;
    eq_proto_msg_init(&m, EQ_MSG_HELLO);
    m.has_req = true;
    m.req = 1;
    char host[64] = "host";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    for (char *p = host; *p; p++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-", *p)) *p = '_';
    snprintf(m.u.hello.role, sizeof m.u.hello.role, "ctl");
    snprintf(m.u.hello.name, sizeof m.u.hello.name, "%.40s:%ld", host, (long)getpid());
    m.u.hello.versions[0] = EQ_PROTO_VERSION;
    m.u.hello.nversions = 1;
    snprintf(m.u.hello.software, sizeof m.u.hello.software, "eqctl %s", PACKAGE_VERSION);
    if (s_call(sock, &m, EQ_MSG_HELLO, r, &e)) {
        s_fail("%s: %s", loader, e.msg);
        goto done;
    }
    char peer[EQ_PROTO_NAME_CAP + EQ_PROTO_TEXT_CAP + 8];
    snprintf(peer, sizeof peer, "%s (%s)", r->msg.u.hello.name, r->msg.u.hello.software);
    int det = (train ? dc.aug_train : dc.aug_val) == EQ_AUG_DET;
    static int64_t cat_ids[EQ_DET_MAX_CLASSES];
    static char cat_names[EQ_DET_MAX_CLASSES][EQ_DET_CLASS_NAME_CAP];
    uint32_t ncat = 0;
    eq_msg_job_ok ok;
    if (det ? s_det_job(sock, &job, &ok, cat_ids, cat_names, &ncat, &e) : s_call(sock, &job, EQ_MSG_JOB_OK, r, &e)) {
        s_fail("%s: %s", loader, e.msg);
        goto done;
    }
    if (!det) ok = r->msg.u.job_ok;
    eq_proto_msg_init(&m, EQ_MSG_BATCH_REQ);
    m.has_req = true;
    m.req = 3;
    snprintf(m.u.batch_req.job, sizeof m.u.batch_req.job, "%s", ok.job);
    m.u.batch_req.epoch = epoch;
    m.u.batch_req.step = step;
    m.u.batch_req.offset = (uint32_t)offset;
    m.u.batch_req.count = (uint32_t)count;
    if (s_call(sock, &m, EQ_MSG_BATCH, r, &e)) {
        s_fail("%s: %s", loader, e.msg);
        goto done;
    }
    if (det) {
        rc = s_det_report(r, loader, peer, &ok, &dc, split, cat_ids, ncat, json, png, out, raw);
        goto done;
    }
    const eq_msg_batch *b = &r->msg.u.batch;
    size_t isz, lsz;
    const uint8_t *img = eq_proto_recvd_frame(r, (size_t)b->frame_images, &isz);
    const void *lab = eq_proto_recvd_frame(r, (size_t)b->frame_labels, &lsz);
    const eq_proto_frame_desc *fi = &r->msg.frames[b->frame_images], *fl = &r->msg.frames[b->frame_labels];
    uint32_t n = b->count, H = (uint32_t)fi->shape[1], W = (uint32_t)fi->shape[2], C = (uint32_t)fi->shape[3];
    int64_t *labels = malloc(sizeof *labels * (n ? n : 1));
    if (!labels) {
        s_fail("out of memory");
        goto done;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (fl->dtype == EQ_DT_I64) {
            int64_t v;
            memcpy(&v, (const uint8_t *)lab + 8 * (size_t)i, 8);
            labels[i] = v;
        } else {
            int32_t v;
            memcpy(&v, (const uint8_t *)lab + 4 * (size_t)i, 4);
            labels[i] = v;
        }
    }
    uint64_t hist_n = ok.classes ? ok.classes : 1;
    if (hist_n > 100000) hist_n = 100000;
    uint64_t *hist = calloc(hist_n, sizeof *hist), other = 0;
    for (uint32_t i = 0; i < n && hist; i++) {
        if (labels[i] >= 0 && (uint64_t)labels[i] < hist_n)
            hist[labels[i]]++;
        else
            other++;
    }
    uint64_t sum = eq_proto_hash64(img, isz);
    if (json) {
        printf("{\"loader\":");
        s_jstr(loader);
        printf(",\"job\":");
        s_jstr(ok.job);
        printf(",\"dataset\":");
        s_jstr(dc.dataset);
        printf(",\"split\":");
        s_jstr(split);
        printf(",\"size\":%" PRIu64 ",\"classes\":%u,\"data_hash\":", ok.size, ok.classes);
        s_jstr(ok.data_hash);
        printf(",\"pipeline\":");
        s_jstr(ok.pipeline);
        printf(",\"epoch\":%" PRIu64 ",\"step\":%" PRIu64 ",\"offset\":%u,\"count\":%u,\"shape\":[%u,%u,%u,%u],"
               "\"labels\":[",
               b->epoch, b->step, b->offset, n, n, H, W, C);
        for (uint32_t i = 0; i < n; i++) printf("%s%" PRId64, i ? "," : "", labels[i]);
        printf("],\"histogram\":[");
        for (uint64_t k = 0; hist && k < hist_n; k++) printf("%s%" PRIu64, k ? "," : "", hist[k]);
        printf("],\"replaced\":[");
        for (uint32_t i = 0; i < b->nreplaced; i++) printf("%s%u", i ? "," : "", b->replaced[i]);
        printf("],\"checksum\":\"%016" PRIx64 "\"}\n", sum);
    } else {
        printf("loader     %s  %s\n", loader, peer);
        printf("job        %s  %s/%s, %" PRIu64 " samples, %u classes, data %s\n", ok.job, dc.dataset, split,
               ok.size, ok.classes, ok.data_hash);
        printf("pipeline   %s\n", ok.pipeline);
        printf("batch      epoch %" PRIu64 " step %" PRIu64 " offset %u count %u: images u8 [%u, %u, %u, %u], labels %s\n",
               b->epoch, b->step, b->offset, n, n, H, W, C, fl->dtype == EQ_DT_I64 ? "i64" : "i32");
        printf("histogram ");
        for (uint64_t k = 0; hist && k < hist_n; k++) printf(" %" PRIu64 ":%" PRIu64, k, hist[k]);
        if (other) printf(" other:%" PRIu64, other);
        printf("\nreplaced   %u", b->nreplaced);
        for (uint32_t i = 0; i < b->nreplaced && i < 32; i++) printf("%s%u", i ? "," : " [", b->replaced[i]);
        printf("%s\n", b->nreplaced ? (b->nreplaced > 32 ? ",...]" : "]") : "");
        printf("checksum   %016" PRIx64 " (FNV-1a 64 of the image bytes)\n", sum);
    }
    free(hist);
    rc = 0;
    if (png) {
        if (s_write_grid(png, img, n, H, W, C, &e) != EQ_OK)
            rc = s_fail("%s", e.msg);
        else if (!json)
            printf("wrote      %s\n", png);
    }
    if (raw) {
        FILE *f = fopen(raw, "wb");
        if (!f || fwrite(img, 1, isz, f) != isz || fclose(f) != 0) {
            rc = s_fail("--raw %s: %s", raw, strerror(errno));
        } else if (!json)
            printf("wrote      %s (%zu image bytes)\n", raw, isz);
    }
    if (out) {
        w = eq_st_writer_new();
        int64_t ish[4] = {n, H, W, C}, lsh[1] = {n};
        char num[32];
        eq_status ws = w ? EQ_OK : eq_err_set(&e, EQ_ERR_NOMEM, "out of memory");
        if (!ws) ws = eq_st_writer_add(w, "images", EQ_DT_U8, 4, ish, img, &e);
        if (!ws) ws = eq_st_writer_add(w, "labels", fl->dtype, 1, lsh, lab, &e);
        if (!ws) ws = eq_st_writer_meta(w, "job", ok.job, &e);
        if (!ws) ws = eq_st_writer_meta(w, "dataset", dc.dataset, &e);
        if (!ws) ws = eq_st_writer_meta(w, "split", split, &e);
        snprintf(num, sizeof num, "%" PRIu64, b->epoch);
        if (!ws) ws = eq_st_writer_meta(w, "epoch", num, &e);
        snprintf(num, sizeof num, "%" PRIu64, b->step);
        if (!ws) ws = eq_st_writer_meta(w, "step", num, &e);
        snprintf(num, sizeof num, "%u", b->offset);
        if (!ws) ws = eq_st_writer_meta(w, "offset", num, &e);
        if (!ws) ws = eq_st_writer_save(w, out, &e);
        if (ws)
            rc = s_fail("--out %s: %s", out, e.msg);
        else if (!json)
            printf("wrote      %s\n", out);
    }
    free(labels);
done:
    eq_st_writer_destroy(&w);
    eq_proto_recvd_close(r);
    free(r);
    eq_proto_socket_close(&sock);
    zmq_ctx_term(ctx);
    return rc;
}

/* -------------------------------------------------------------- dataset */

static int s_dataset_synth(int argc, char **argv)
{
    static const char *usage = S_U_SYNTH;
    static const struct option o[] = {{"classes", required_argument, 0, 'k'},
                                      {"per-class", required_argument, 0, 'n'},
                                      {"val-per-class", required_argument, 0, 'v'},
                                      {"mean-pixels", required_argument, 0, 'p'},
                                      {"quality", required_argument, 0, 'q'},
                                      {"seed", required_argument, 0, 's'},
                                      {"threads", required_argument, 0, 't'},
                                      {"coco", no_argument, 0, 'c'},
                                      {"train", required_argument, 0, 'T'},
                                      {"val", required_argument, 0, 'V'},
                                      {"min-side", required_argument, 0, 'a'},
                                      {"max-side", required_argument, 0, 'b'},
                                      {0, 0, 0, 0}};
    eq_synth_cfg cfg = {0};
    eq_coco_synth_cfg cc = {.train_images = 64, .val_images = 16, .classes = 8};
    uint64_t v;
    int c, have_val = 0, coco = 0, ifflags = 0, cocoflags = 0;
    while ((c = getopt_long(argc, argv, "", o, NULL)) != -1) {
        switch (c) {
        case 'k':
            if (s_u64("--classes", optarg, 1, 100000, &v)) return 2;
            cfg.classes = (uint32_t)v;
            cc.classes = (uint32_t)v;
            break;
        case 'c': coco = 1; break;
        case 'T':
        case 'V':
            if (s_u64(c == 'T' ? "--train" : "--val", optarg, 0, 1000000, &v)) return 2;
            *(c == 'T' ? &cc.train_images : &cc.val_images) = (uint32_t)v;
            cocoflags = 1;
            break;
        case 'a':
        case 'b':
            if (s_u64(c == 'a' ? "--min-side" : "--max-side", optarg, 16, 4096, &v)) return 2;
            *(c == 'a' ? &cc.min_side : &cc.max_side) = (uint32_t)v;
            cocoflags = 1;
            break;
        case 'n':
            if (s_u64("--per-class", optarg, 0, 10000000, &v)) return 2;
            cfg.train_per_class = (uint32_t)v;
            ifflags = 1;
            break;
        case 'v':
            if (s_u64("--val-per-class", optarg, 0, 10000000, &v)) return 2;
            cfg.val_per_class = (uint32_t)v;
            have_val = 1;
            ifflags = 1;
            break;
        case 'p':
            if (s_u64("--mean-pixels", optarg, 64, 100000000, &v)) return 2;
            cfg.mean_pixels = (uint32_t)v;
            ifflags = 1;
            break;
        case 'q':
            if (s_u64("--quality", optarg, 1, 100, &v)) return 2;
            cfg.quality = (int)v;
            cc.quality = (int)v;
            break;
        case 's':
            if (s_u64("--seed", optarg, 0, UINT64_MAX, &v)) return 2;
            cfg.seed = v;
            cc.seed = v;
            break;
        case 't':
            if (s_u64("--threads", optarg, 0, 1024, &v)) return 2;
            cfg.nthreads = (int)v;
            break;
        default: return s_usage_err("dataset synth", usage);
        }
    }
    eq_err e = {0};
    if (coco) {
        if (optind != argc - 1 || ifflags) return s_usage_err("dataset synth", usage);
        if (eq_coco_synth(argv[optind], &cc, &e) != EQ_OK) return s_fail("dataset synth --coco: %s", e.msg);
        printf("wrote %s: COCO instances, %u classes, %u train and %u val images "
               "(annotations/instances_{train,val}2017.json, {train,val}2017/)\n",
               argv[optind], cc.classes, cc.train_images, cc.val_images);
        return 0;
    }
    if (cocoflags) return s_fail("dataset synth: --train, --val, --min-side, --max-side need --coco");
    if (optind != argc - 1 || !cfg.classes || (!cfg.train_per_class && !have_val))
        return s_usage_err("dataset synth", usage);
    if (!have_val) cfg.val_per_class = cfg.train_per_class / 5 ? cfg.train_per_class / 5 : 1;
    if (eq_synth_imagefolder(argv[optind], &cfg, &e) != EQ_OK) return s_fail("dataset synth: %s", e.msg);
    printf("wrote %s: %u classes, %u train and %u val images per class\n", argv[optind], cfg.classes,
           cfg.train_per_class, cfg.val_per_class);
    return 0;
}

static int s_dataset_info(int argc, char **argv)
{
    static const struct option o[] = {
        {"json", no_argument, 0, 'j'}, {"threads", required_argument, 0, 't'}, {0, 0, 0, 0}};
    int json = 0, c;
    uint64_t threads = 0;
    while ((c = getopt_long(argc, argv, "", o, NULL)) != -1) {
        if (c == 'j')
            json = 1;
        else if (c == 't') {
            if (s_u64("--threads", optarg, 0, 1024, &threads)) return 2;
        } else
            return s_usage_err("dataset info", S_U_INFO);
    }
    if (optind != argc - 1) return s_usage_err("dataset info", S_U_INFO);
    const char *path = argv[optind];
    eq_err e = {0};
    eq_ds_kind kind;
    if (eq_loader_detect(path, &kind, &e)) return s_fail("%s", e.msg);
    static const char *const splits[] = {"train", "val"};
    int found = 0;
    if (json) {
        printf("{\"path\":");
        s_jstr(path);
        printf(",\"kind\":\"%s\",\"splits\":{", eq_loader_kind_name(kind));
    } else
        printf("%s: %s\n", path, eq_loader_kind_name(kind));
    char first_err[EQ_ERR_MSG_LEN] = "";
    for (int i = 0; i < 2; i++) {
        eq_err se = {0};
        eq_dataset *ds = eq_loader_open(path, kind, splits[i], threads ? (int)threads : eq_cpu_count(), &se);
        if (!ds) {
            if (!first_err[0]) snprintf(first_err, sizeof first_err, "%s", se.msg);
            if (!json) printf("  %-5s  not available: %s\n", splits[i], se.msg);
            continue;
        }
        eq_ds_fingerprint fp = eq_dataset_fingerprint(ds);
        uint32_t k = eq_dataset_num_classes(ds);
        if (json) {
            printf("%s\"%s\":{\"size\":%zu,\"classes\":%u,\"fingerprint\":{\"count\":%" PRIu64 ",\"hash\":\"%016" PRIx64
                   "\"},\"class_names\":[",
                   found ? "," : "", splits[i], eq_dataset_size(ds), k, fp.count, fp.hash);
            for (uint32_t j = 0; j < k && j < 1000; j++) {
                printf("%s", j ? "," : "");
                s_jstr(eq_dataset_class_name(ds, j));
            }
            printf("]}");
        } else {
            printf("  %-5s  %zu samples, %u classes, fingerprint %" PRIu64 "/%016" PRIx64 "\n", splits[i],
                   eq_dataset_size(ds), k, fp.count, fp.hash);
            printf("         classes:");
            for (uint32_t j = 0; j < k && j < 10; j++) printf(" %s", eq_dataset_class_name(ds, j));
            printf("%s\n", k > 10 ? " ..." : "");
        }
        found++;
        eq_dataset_destroy(&ds);
    }
    if (json) printf("}}\n");
    if (!found) return s_fail("%s: no split could be opened: %s", path, first_err);
    return 0;
}

/* --------------------------------------------------------------- config */

static int s_config_doc(int argc, char **argv)
{
    static const struct option o[] = {{"out", required_argument, 0, 'o'}, {0, 0, 0, 0}};
    const char *out = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "", o, NULL)) != -1) {
        if (c == 'o')
            out = optarg;
        else
            return s_usage_err("config doc", S_U_DOC);
    }
    if (optind != argc) return s_usage_err("config doc", S_U_DOC);
    /* Every section an experiment file may hold ([loader] ... [train]),
     * with the defaults the programs use. */
    eq_config_section secs[EQ_EXPERIMENT_NSECTIONS];
    eq_experiment_sections(NULL, secs);
    char *md = NULL;
    size_t len = 0;
    eq_err e = {0};
    if (eq_config_doc(secs, EQ_EXPERIMENT_NSECTIONS, &md, &len, &e)) return s_fail("config doc: %s", e.msg);
    FILE *f = out ? fopen(out, "w") : stdout;
    int rc = 0;
    if (!f || fwrite(md, 1, len, f) != len) rc = s_fail("config doc: %s: %s", out ? out : "stdout", strerror(errno));
    if (out && f && fclose(f) != 0) rc = s_fail("config doc: %s: %s", out, strerror(errno));
    free(md);
    return rc;
}

/* ------------------------------------------------------- quant, model */

/* The quantizer and model inspection tools live with their libraries
 * (quant/quant.h eq_quant_cli, trainer/model_run.h eq_model_cli); eqctl
 * hands them everything after its own command word. */
static int s_quant(int argc, char **argv) { return eq_quant_cli(argc - 1, argv + 1); }
static int s_model(int argc, char **argv) { return eq_model_cli(argc - 1, argv + 1); }

/* ---------------------------------------------------------- bench loader */

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static long s_peak_rss_kb(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss : -1;
}

typedef struct s_bench_srv {
    eq_loader_server *srv;
    eq_status rc;
    eq_err e;
} s_bench_srv;

static void *s_bench_run(void *arg)
{
    s_bench_srv *b = arg;
    b->rc = eq_loader_server_run(b->srv, &b->e);
    return NULL;
}

/* Through an eq-loader server in this process (inproc data socket): HELLO,
 * JOB, then BATCH_REQs of one global batch each, 4 in flight, for `secs`
 * seconds.  *images gets the images received, *elapsed the time. */
static eq_status s_bench_server(const char *root, int threads, double secs, eq_msg *job, uint64_t *images,
                                double *elapsed, eq_err *e)
{
    char decl[EQ_LOADER_PATH_CAP + 16];
    snprintf(decl, sizeof decl, "bench=%s", root);
    const char *decls[1] = {decl};
    eq_loader_server_cfg cfg = {.bind = "inproc://eqctl-bench", .datasets = decls, .ndatasets = 1,
                                .threads = threads};
    void *ctx = zmq_ctx_new();
    s_bench_srv b = {0};
    pthread_t th;
    int started = 0;
    void *sock = NULL;
    eq_proto_recvd *r = malloc(sizeof *r);
    eq_status st = EQ_OK;
    if (!ctx || !r) {
        st = eq_err_set(e, EQ_ERR_NOMEM, "out of memory");
        goto done;
    }
    eq_proto_recvd_init(r);
    if (!(b.srv = eq_loader_server_new(ctx, &cfg, e))) {
        st = e ? e->code : EQ_ERR_INVALID;
        goto done;
    }
    if (pthread_create(&th, NULL, s_bench_run, &b)) {
        st = eq_err_set(e, EQ_ERR_IO, "cannot start the server thread");
        goto done;
    }
    started = 1;
    if (!(sock = s_connect(ctx, ZMQ_DEALER, cfg.bind, NULL, 60000, e))) {
        st = EQ_ERR_NET;
        goto done;
    }
    eq_msg m;
    eq_proto_msg_init(&m, EQ_MSG_HELLO);
    m.has_req = true;
    m.req = 1;
    snprintf(m.u.hello.role, sizeof m.u.hello.role, "ctl");
    snprintf(m.u.hello.name, sizeof m.u.hello.name, "bench:%ld", (long)getpid());
    m.u.hello.versions[0] = EQ_PROTO_VERSION;
    m.u.hello.nversions = 1;
    snprintf(m.u.hello.software, sizeof m.u.hello.software, "eqctl %s", PACKAGE_VERSION);
    if ((st = s_call(sock, &m, EQ_MSG_HELLO, r, e))) goto done;
    job->has_req = true;
    job->req = 2;
    if ((st = s_call(sock, job, EQ_MSG_JOB_OK, r, e))) goto done;
    eq_msg_job_ok ok = r->msg.u.job_ok;
    uint64_t G = job->u.job.global_batch, steps = 0;
    /* Steps per epoch as the sampler counts them (train drops the tail). */
    steps = job->u.job.last == EQ_PROTO_LAST_PARTIAL ? (ok.size + G - 1) / G : ok.size / G;
    if (!steps) {
        st = eq_err_set(e, EQ_ERR_INVALID, "dataset too small for a global batch of %" PRIu64, G);
        goto done;
    }
    uint64_t sent = 0, got = 0, req = 3;
    double t0 = s_now(), end = t0 + secs;
    int inflight = 0;
    for (;;) {
        while (inflight < 4 && s_now() < end) {
            eq_proto_msg_init(&m, EQ_MSG_BATCH_REQ);
            m.has_req = true;
            m.req = req++;
            snprintf(m.u.batch_req.job, sizeof m.u.batch_req.job, "%s", ok.job);
            m.u.batch_req.epoch = sent / steps;
            m.u.batch_req.step = sent % steps;
            m.u.batch_req.offset = 0;
            uint64_t left = ok.size - (sent % steps) * G;
            m.u.batch_req.count = (uint32_t)(left < G ? left : G);
            if ((st = eq_proto_send(sock, NULL, &m, NULL, 0, 0, e))) goto done;
            sent++;
            inflight++;
        }
        if (!inflight) break;
        if ((st = eq_proto_recv(sock, r, NULL, 0, e))) goto done;
        if (r->msg.type == EQ_MSG_ERROR) {
            st = eq_err_set(e, EQ_ERR_PROTO, "loader answered BATCH_REQ with ERROR %s: %s", r->msg.u.error.name,
                            r->msg.u.error.message);
            goto done;
        }
        if (r->msg.type != EQ_MSG_BATCH) continue;
        got += r->msg.u.batch.count;
        inflight--;
    }
    *elapsed = s_now() - t0;
    *images = got;
done:
    if (r) eq_proto_recvd_close(r);
    free(r);
    eq_proto_socket_close(&sock);
    if (started) {
        eq_loader_server_stop(b.srv);
        pthread_join(th, NULL);
        if (!st && b.rc) {
            if (e) *e = b.e;
            st = b.rc;
        }
    }
    eq_loader_server_destroy(&b.srv);
    if (ctx) zmq_ctx_term(ctx);
    return st;
}

static int s_bench_loader(int argc, char **argv)
{
    static const struct option o[] = {{"root", required_argument, 0, 'r'},    {"pipeline", required_argument, 0, 'p'},
                                      {"threads", required_argument, 0, 't'}, {"seconds", required_argument, 0, 's'},
                                      {"size", required_argument, 0, 'z'},    {"json", no_argument, 0, 'j'},
                                      {0, 0, 0, 0}};
    const char *root = NULL, *split = NULL, *size = NULL;
    uint64_t threads = 0, secs = 5;
    int json = 0, c;
    while ((c = getopt_long(argc, argv, "", o, NULL)) != -1) {
        switch (c) {
        case 'r': root = optarg; break;
        case 'p': split = optarg; break;
        case 't':
            if (s_u64("--threads", optarg, 1, 1024, &threads)) return 2;
            break;
        case 's':
            if (s_u64("--seconds", optarg, 1, 3600, &secs)) return 2;
            break;
        case 'z': size = optarg; break;
        case 'j': json = 1; break;
        default: return s_usage_err("bench loader", S_U_BENCH);
        }
    }
    if (optind != argc) return s_usage_err("bench loader", S_U_BENCH);
    if (!root) {
        fprintf(stderr, "eqctl: bench loader: --root DIR is required\n");
        return s_usage_err("bench loader", S_U_BENCH);
    }
    if (!split || (strcmp(split, "train") && strcmp(split, "val"))) {
        fprintf(stderr, "eqctl: bench loader: --pipeline '%s': expected train or val\n", split ? split : "");
        return 2;
    }
    eq_loader_data_cfg sz = {0};
    if (size && s_parse_size(size, &sz)) return 2;
    if (!threads) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (uint64_t)n : 1;
    }
    eq_err e = {0};
    eq_ds_kind kind;
    if (eq_loader_detect(root, &kind, &e)) return s_fail("bench loader: --root: %s", e.msg);
    eq_dataset *ds = eq_loader_open(root, kind, split, (int)threads, &e);
    if (!ds) return s_fail("bench loader: %s", e.msg);
    size_t n = eq_dataset_size(ds);
    /* Output size: --size, else the stored size of in-memory sets, 224 for
     * ImageFolder.  Channels follow the dataset. */
    int64_t H = sz.height, W = sz.width, C = kind == EQ_DS_IDX ? 1 : 3;
    if (!size) {
        uint32_t h = 224, w = 224, cc;
        const uint8_t *pix;
        if (kind != EQ_DS_IMAGEFOLDER && n) eq_dataset_pixels(ds, 0, &pix, &h, &w, &cc, NULL);
        H = h;
        W = w;
    }
    uint64_t G = n < 64 ? (n ? n : 1) : 64;
    char fs[8][128];
    const char *sets[8];
    snprintf(fs[0], sizeof fs[0], "data.dataset=bench");
    snprintf(fs[1], sizeof fs[1], "data.height=%" PRId64, H);
    snprintf(fs[2], sizeof fs[2], "data.width=%" PRId64, W);
    snprintf(fs[3], sizeof fs[3], "data.channels=%" PRId64, C);
    snprintf(fs[4], sizeof fs[4], "data.global_batch=%" PRIu64, G);
    snprintf(fs[5], sizeof fs[5], "data.aug_train=%s", kind == EQ_DS_IMAGEFOLDER ? "rrc" : kind == EQ_DS_IDX ? "none" : "padcrop");
    snprintf(fs[6], sizeof fs[6], "data.aug_val=%s", kind == EQ_DS_IMAGEFOLDER ? "center" : "none");
    for (int i = 0; i < 7; i++) sets[i] = fs[i];
    static eq_loader_data_cfg dc;
    eq_config_section csecs[2];
    eq_loader_config_sections(NULL, &dc, csecs);
    eq_msg job;
    eq_pipeline_cfg pc;
    eq_pipeline *p = NULL;
    eq_batch b = {0};
    int rc = 1;
    if (eq_config_parse_buffer(csecs, 2, "(bench)", "", 0, sets, 7, &e) || eq_loader_data_job(&dc, split, &job, &e) ||
        eq_loader_job_pipeline(&job.u.job, &pc, &e)) {
        rc = s_fail("bench loader: %s", e.msg);
        goto done;
    }
    if (!(p = eq_pipeline_new(ds, &pc, (int)threads, &e))) {
        rc = s_fail("bench loader: %s", e.msg);
        goto done;
    }
    uint32_t ph, pw, pcn;
    eq_pipeline_geometry(p, &ph, &pw, &pcn);
    uint64_t steps = eq_pipeline_steps(p);
    size_t per = (size_t)ph * pw * pcn;
    b.images = malloc(per * G);
    b.indices = malloc(sizeof *b.indices * G);
    b.label_a = malloc(sizeof *b.label_a * G);
    b.label_b = malloc(sizeof *b.label_b * G);
    b.lambda = malloc(sizeof *b.lambda * G);
    b.mix_mode = malloc(G);
    b.partner = malloc(sizeof *b.partner * G);
    b.replaced = malloc(sizeof *b.replaced * G);
    if (!b.images || !b.indices || !b.label_a || !b.label_b || !b.lambda || !b.mix_mode || !b.partner ||
        !b.replaced) {
        rc = s_fail("out of memory");
        goto done;
    }
    if (!steps) {
        rc = s_fail("bench loader: %s: no full batch of %" PRIu64, root, G);
        goto done;
    }
    /* (a) in process: eq_pipeline_batch on the pipeline's own pool. */
    uint64_t img_a = 0, it = 0;
    double t0 = s_now(), end = t0 + (double)secs, el_a;
    do {
        if (eq_pipeline_batch(p, it / steps, it % steps, 0, (uint32_t)G, &b, &e)) {
            rc = s_fail("bench loader: in process: %s", e.msg);
            goto done;
        }
        img_a += b.n;
        it++;
    } while (s_now() < end);
    el_a = s_now() - t0;
    long rss_a = s_peak_rss_kb();
    eq_pipeline_destroy(&p);
    /* (b) through an eq-loader server in this process. */
    uint64_t img_b = 0;
    double el_b = 0;
    if (s_bench_server(root, (int)threads, (double)secs, &job, &img_b, &el_b, &e)) {
        rc = s_fail("bench loader: server: %s", e.msg);
        goto done;
    }
    long rss_b = s_peak_rss_kb();
    double ra = img_a / el_a, rb = el_b > 0 ? img_b / el_b : 0;
    if (json) {
        printf("{\"root\":");
        s_jstr(root);
        printf(",\"kind\":\"%s\",\"pipeline\":\"%s\",\"samples\":%zu,\"size\":[%u,%u,%u],\"batch\":%" PRIu64
               ",\"threads\":%" PRIu64 ",\"seconds\":%" PRIu64 ","
               "\"in_process\":{\"images\":%" PRIu64 ",\"elapsed_s\":%.3f,\"images_per_s\":%.1f,"
               "\"images_per_s_per_thread\":%.1f,\"peak_rss_kb\":%ld},"
               "\"server\":{\"endpoint\":\"inproc://eqctl-bench\",\"images\":%" PRIu64 ",\"elapsed_s\":%.3f,"
               "\"images_per_s\":%.1f,\"images_per_s_per_thread\":%.1f,\"peak_rss_kb\":%ld}}\n",
               eq_loader_kind_name(kind), split, n, ph, pw, pcn, G, threads, secs, img_a, el_a, ra,
               ra / (double)threads, rss_a, img_b, el_b, rb, rb / (double)threads, rss_b);
    } else {
        printf("dataset     %s (%s, %s, %zu samples) -> %ux%ux%u, batch %" PRIu64 ", %" PRIu64 " threads\n", root,
               eq_loader_kind_name(kind), split, n, ph, pw, pcn, G, threads);
        printf("in process  %8.1f images/s  %8.1f per thread  (%" PRIu64 " in %.2f s)  peak RSS %ld KiB\n", ra,
               ra / (double)threads, img_a, el_a, rss_a);
        printf("server      %8.1f images/s  %8.1f per thread  (%" PRIu64 " in %.2f s, inproc)  peak RSS %ld KiB\n",
               rb, rb / (double)threads, img_b, el_b, rss_b);
    }
    rc = 0;
done:
    free(b.images);
    free(b.indices);
    free(b.label_a);
    free(b.label_b);
    free(b.lambda);
    free(b.mix_mode);
    free(b.partner);
    free(b.replaced);
    eq_pipeline_destroy(&p);
    eq_dataset_destroy(&ds);
    return rc;
}

/* ----------------------------------------------------------------- main */

static int s_help(int argc, char **argv);

static const s_cmd s_cmds[] = {
    {"version", s_version, "print versions", S_U_VERSION},
    {"keygen", s_keygen, "write a CURVE key pair NAME.pub and NAME.key", S_U_KEYGEN},
    {"status", s_status, "a daemon's status from its control socket", S_U_CONTROL},
    {"stop", s_stop, "ask a daemon to stop (control socket)", S_U_CONTROL},
    {"loader add", s_loader_add, "a running trainer starts using one more eq-loader", S_U_CONTROL_ARG},
    {"loader remove", s_loader_remove, "a running trainer stops using an eq-loader (its requests go elsewhere)",
     S_U_CONTROL_ARG},
    {"batch get", s_batch_get, "fetch one batch from a loader, print a summary, write PNG/safetensors", S_U_BATCH},
    {"dataset synth", s_dataset_synth, "write a synthetic JPEG ImageFolder (or, with --coco, a COCO-format set)",
     S_U_SYNTH},
    {"dataset info", s_dataset_info, "kind, size, classes and fingerprint of a dataset directory", S_U_INFO},
    {"bench loader", s_bench_loader, "images/s of the loader pipeline, in process and through a local server",
     S_U_BENCH},
    {"config doc", s_config_doc, "markdown reference of the config sections the programs define", S_U_DOC},
    {"quant", s_quant, "quantizer tool: apply one step to safetensors tensors, list methods",
     "apply --tag wt|fm|ot --in IN.safetensors --out OUT.safetensors [--eval] [--nhwc] KEY=VALUE... | methods"},
    {"model", s_model, "model tool: forward/backward/step of a config'd model on safetensors input",
     "run --config C [--weights W.safetensors] --in X.safetensors --out Y.safetensors [--train [--step]]"},
    {"run", eq_ctl_run_main, "train CONFIG: start loader(s), eq-eval and eq-trainer here, follow, summarise",
     EQ_CTL_RUN_USAGE},
    {"help", s_help, "this list", ""},
};
#define S_NCMDS (sizeof s_cmds / sizeof s_cmds[0])

static int s_help(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("usage: eqctl COMMAND [options]   (eqctl COMMAND --help for its flags)\n\n");
    for (size_t i = 0; i < S_NCMDS; i++) printf("  %-14s %s\n", s_cmds[i].name, s_cmds[i].help);
    printf("\nlog level: EQ_LOG_LEVEL=debug|info|warn|error (default warn)\n");
    return 0;
}

int main(int argc, char **argv)
{
    eq_log_set_role("ctl", -1);
    eq_log_set_level(EQ_LOG_WARN);
    const char *lv = getenv("EQ_LOG_LEVEL");
    eq_log_level level;
    if (lv && eq_log_level_parse(lv, &level) == 0) eq_log_set_level(level);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        s_help(0, NULL);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) return s_version(1, argv);
    for (size_t i = 0; i < S_NCMDS; i++) {
        const char *name = s_cmds[i].name, *sp = strchr(name, ' ');
        int words = sp ? 2 : 1;
        if (sp) {
            if (argc < 3 || strncmp(argv[1], name, (size_t)(sp - name)) || argv[1][sp - name] ||
                strcmp(argv[2], sp + 1))
                continue;
        } else if (strcmp(argv[1], name)) {
            continue;
        }
        if (argc > words + 1 && (!strcmp(argv[words + 1], "--help") || !strcmp(argv[words + 1], "-h"))) {
            printf("eqctl %s: %s\nusage: eqctl %s %s\n", name, s_cmds[i].help, name, s_cmds[i].usage);
            return 0;
        }
        /* getopt_long sees argv[0] = "eqctl NAME" and the rest. */
        optind = 1;
        return s_cmds[i].fn(argc - words, argv + words);
    }
    /* "eqctl loader frob": name the two words when the first begins a
     * two-word command, and the first alone otherwise */
    bool two = false;
    for (size_t i = 0; i < S_NCMDS && argc > 2; i++) {
        const char *sp = strchr(s_cmds[i].name, ' ');
        two |= sp && !strncmp(argv[1], s_cmds[i].name, (size_t)(sp - s_cmds[i].name)) &&
               !argv[1][sp - s_cmds[i].name];
    }
    fprintf(stderr, "eqctl: unknown command '%s%s%s'\n", argv[1], two ? " " : "", two ? argv[2] : "");
    s_help(0, NULL);
    return 2;
}
