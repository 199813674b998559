/*
 * evaluator/eval_daemon.c -- `eq-eval serve`: the classification evaluator
 * daemon.  Trainers PUSH PRED messages (proto/proto.h) to its PULL socket;
 * per (job, epoch) it keeps an eq_classify, and once every sender said
 * final it reports Top-1/Top-5 (or the accounting error that names the
 * missing or duplicated samples) to a JSONL file, its PUB socket (METRICS,
 * kind "eval", status 0 or the error code) and the log.  The control
 * socket (ROUTER) answers the plain-text commands "status" (one JSON frame)
 * and "stop", like eq-loader's.  SIGINT/SIGTERM stop it too.
 *
 * It is the one source of accuracy numbers: trainers never compute their own.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "evaluator/classify.h"
#include "proto/proto_zmq.h"

#define S_MAX_PASSES 16

typedef struct s_pass {
    char job[EQ_PROTO_NAME_CAP];
    uint64_t epoch, total;
    uint32_t world;
    eq_classify *acc;
    bool failed; /* an accounting error was already reported */
    uint64_t last_ms;
} s_pass;

typedef struct s_daemon {
    void *pull, *pub, *ctl;
    FILE *jsonl;
    s_pass pass[S_MAX_PASSES];
    uint64_t reported, errors, received, dropped;
} s_daemon;

static volatile sig_atomic_t s_stop_flag;

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop_flag = 1;
}

static void s_usage(FILE *f)
{
    fprintf(f, "usage: eq-eval serve [options]\n"
               "Collect the trainers' val predictions (PRED) and report Top-1/Top-5 per epoch.\n"
               "\n"
               "  --pull ENDPOINT     PRED socket to bind (default tcp://127.0.0.1:5560)\n"
               "  --pub ENDPOINT      METRICS publisher to bind (default tcp://127.0.0.1:5561; \"\" none)\n"
               "  --control ENDPOINT  control socket: status, stop (default tcp://127.0.0.1:5562; \"\" none)\n"
               "  --metrics FILE      append one JSON line per evaluated epoch\n"
               "  --insecure          allow binding a non-loopback address (there is no CURVE here)\n"
               "  --log-level LEVEL   debug, info, warn, error (default info)\n"
               "  --help\n");
}

static void s_publish(s_daemon *d, const s_pass *p, const eq_classify_result *r, eq_status code)
{
    if (!d->pub) return;
    eq_msg m;
    eq_proto_msg_init(&m, EQ_MSG_METRICS);
    eq_msg_metrics *x = &m.u.metrics;
    snprintf(x->job, sizeof x->job, "%s", p->job);
    snprintf(x->source, sizeof x->source, "eval");
    snprintf(x->kind, sizeof x->kind, "eval");
    x->epoch = p->epoch;
    x->samples = r ? r->samples : eq_classify_received(p->acc);
    x->status = (uint32_t)code;
    if (r) {
        x->top1 = r->top1;
        x->top5 = r->top5;
    }
    eq_err e = { 0 };
    if (eq_proto_send(d->pub, NULL, &m, NULL, 0, ZMQ_DONTWAIT, &e) != EQ_OK) eq_warn("publish: %s", e.msg);
}

/* The JSONL file: a failed write (disk full, a FIFO whose reader went) is
 * logged, never fatal. */
static void s_flush(s_daemon *d)
{
    if (fflush(d->jsonl) != 0 || ferror(d->jsonl)) {
        eq_warn("--metrics: write failed: %s", strerror(errno));
        clearerr(d->jsonl);
    }
}

static void s_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void s_report(s_daemon *d, s_pass *p)
{
    eq_classify_result r;
    eq_err e = { 0 };
    eq_status st = eq_classify_result_get(p->acc, &r, &e);
    if (st == EQ_OK) {
        d->reported++;
        eq_info("%s epoch %" PRIu64 ": top1 %.2f%% top5 %.2f%% (%" PRIu64 " samples)", p->job, p->epoch, r.top1,
                r.top5, r.samples);
    } else {
        d->errors++;
        eq_error("%s epoch %" PRIu64 ": %s", p->job, p->epoch, e.msg);
    }
    if (d->jsonl) {
        fprintf(d->jsonl, "{\"wall_ms\":%" PRIu64 ",\"job\":", eq_wall_ms());
        s_json_str(d->jsonl, p->job);
        fprintf(d->jsonl, ",\"epoch\":%" PRIu64, p->epoch);
        if (st == EQ_OK)
            fprintf(d->jsonl,
                    ",\"top1\":%.4f,\"top5\":%.4f,\"samples\":%" PRIu64 ",\"correct1\":%" PRIu64
                    ",\"correct5\":%" PRIu64 "}\n",
                    r.top1, r.top5, r.samples, r.correct1, r.correct5);
        else {
            fputs(",\"error\":", d->jsonl);
            s_json_str(d->jsonl, e.msg);
            fputs("}\n", d->jsonl);
        }
        s_flush(d);
    }
    s_publish(d, p, st == EQ_OK ? &r : NULL, st);
}

static void s_pass_close(s_pass *p)
{
    eq_classify_destroy(&p->acc);
    memset(p, 0, sizeof *p);
}

/* The pass for (job, epoch), opened on its first PRED; the least recently
 * used one is evicted (and reported as incomplete) when the table is full. */
static s_pass *s_pass_get(s_daemon *d, const eq_msg_pred *pr, int *conflict, eq_err *err)
{
    s_pass *free_slot = NULL, *oldest = NULL, *failed = NULL;
    for (int i = 0; i < S_MAX_PASSES; i++) {
        s_pass *p = &d->pass[i];
        if (!p->acc) {
            if (!free_slot) free_slot = p;
            continue;
        }
        if (!strcmp(p->job, pr->job) && p->epoch == pr->epoch) {
            if (p->total != pr->total || p->world != pr->world) {
                eq_err_set(err, EQ_ERR_INVALID,
                           "rank %u says total %" PRIu64 " world %u, earlier messages said %" PRIu64
                           " and %u (two runs with one name, or ranks that disagree)",
                           pr->rank, pr->total, pr->world, p->total, p->world);
                *conflict = 1; /* the pass cannot be counted: it fails, reported */
            }
            return p;
        }
        if (p->failed && (!failed || p->last_ms < failed->last_ms)) failed = p;
        if (!oldest || p->last_ms < oldest->last_ms) oldest = p;
    }
    if (!free_slot && failed) {
        /* A failed pass was reported when it failed and is kept only to
         * ignore the rest of its messages: it goes first, and silently. */
        eq_debug("%s epoch %" PRIu64 ": failed pass forgotten (too many open passes)", failed->job, failed->epoch);
        s_pass_close(failed);
        free_slot = failed;
    }
    if (!free_slot) {
        eq_warn("%s epoch %" PRIu64 ": evicted before completion (too many open passes)", oldest->job, oldest->epoch);
        s_report(d, oldest);
        s_pass_close(oldest);
        free_slot = oldest;
    }
    free_slot->acc = eq_classify_new(pr->total, pr->world, err);
    if (!free_slot->acc) return NULL;
    snprintf(free_slot->job, sizeof free_slot->job, "%s", pr->job);
    free_slot->epoch = pr->epoch;
    free_slot->total = pr->total;
    free_slot->world = pr->world;
    return free_slot;
}

static void s_on_pred(s_daemon *d, eq_proto_recvd *rv)
{
    const eq_msg_pred *pr = &rv->msg.u.pred;
    eq_err e = { 0 };
    int conflict = 0;
    s_pass *p = s_pass_get(d, pr, &conflict, &e);
    if (!p) {
        d->errors++;
        eq_error("PRED: %s", e.msg);
        return;
    }
    p->last_ms = eq_clock_ms();
    if (p->failed) return;
    size_t n = pr->count;
    int width = (int)rv->msg.frames[pr->frame_topk].shape[1];
    /* Frames may be unaligned (proto_zmq.h): copy them. */
    int64_t *ids = NULL;
    int32_t *labels = NULL, *topk = NULL;
    eq_status st = conflict ? EQ_ERR_INVALID : EQ_OK;
    if (n && !conflict) {
        ids = malloc(n * sizeof *ids);
        labels = malloc(n * sizeof *labels);
        topk = malloc(n * (size_t)width * sizeof *topk);
        if (!ids || !labels || !topk) {
            st = eq_err_set(&e, EQ_ERR_NOMEM, "PRED: out of memory for %zu samples", n);
        } else {
            memcpy(ids, eq_proto_recvd_frame(rv, (size_t)pr->frame_ids, NULL), n * sizeof *ids);
            memcpy(labels, eq_proto_recvd_frame(rv, (size_t)pr->frame_labels, NULL), n * sizeof *labels);
            memcpy(topk, eq_proto_recvd_frame(rv, (size_t)pr->frame_topk, NULL), n * (size_t)width * sizeof *topk);
            st = eq_classify_add(p->acc, pr->rank, n, ids, labels, topk, width, &e);
        }
    }
    free(ids);
    free(labels);
    free(topk);
    if (st == EQ_OK && pr->final) st = eq_classify_final(p->acc, pr->rank, &e);
    if (st != EQ_OK) {
        /* An accounting error ends the pass: report it once, naming it. */
        d->errors++;
        eq_error("%s epoch %" PRIu64 ": %s", p->job, p->epoch, e.msg);
        if (d->jsonl) {
            fprintf(d->jsonl, "{\"wall_ms\":%" PRIu64 ",\"job\":", eq_wall_ms());
            s_json_str(d->jsonl, p->job);
            fprintf(d->jsonl, ",\"epoch\":%" PRIu64 ",\"error\":", p->epoch);
            s_json_str(d->jsonl, e.msg);
            fputs("}\n", d->jsonl);
            s_flush(d);
        }
        s_publish(d, p, NULL, st);
        p->failed = true;
        return;
    }
    if (eq_classify_done(p->acc)) {
        s_report(d, p);
        s_pass_close(p);
    }
}

static void s_on_control(s_daemon *d)
{
    zmq_msg_t id, cmd;
    zmq_msg_init(&id);
    zmq_msg_init(&cmd);
    if (zmq_msg_recv(&id, d->ctl, ZMQ_DONTWAIT) < 0) goto out;
    if (!zmq_msg_more(&id) || zmq_msg_recv(&cmd, d->ctl, 0) < 0) goto out;
    while (zmq_msg_more(&cmd)) { /* drop extra frames */
        zmq_msg_t x;
        zmq_msg_init(&x);
        zmq_msg_recv(&x, d->ctl, 0);
        int more = zmq_msg_more(&x);
        zmq_msg_close(&x);
        if (!more) break;
    }
    char reply[512];
    size_t len = zmq_msg_size(&cmd);
    const char *c = zmq_msg_data(&cmd);
    int open = 0;
    for (int i = 0; i < S_MAX_PASSES; i++) open += d->pass[i].acc != NULL;
    if (len == 6 && !memcmp(c, "status", 6))
        snprintf(reply, sizeof reply,
                 "{\"role\":\"eval\",\"pid\":%ld,\"received\":%" PRIu64 ",\"reported\":%" PRIu64 ",\"errors\":%" PRIu64
                 ",\"dropped\":%" PRIu64 ",\"open\":%d}",
                 (long)getpid(), d->received, d->reported, d->errors, d->dropped, open);
    else if (len == 4 && !memcmp(c, "stop", 4)) {
        snprintf(reply, sizeof reply, "{\"ok\":true}");
        s_stop_flag = 1;
    } else
        snprintf(reply, sizeof reply, "{\"ok\":false,\"error\":\"unknown command (status, stop)\"}");
    zmq_send(d->ctl, zmq_msg_data(&id), zmq_msg_size(&id), ZMQ_SNDMORE | ZMQ_DONTWAIT);
    zmq_send(d->ctl, reply, strlen(reply), ZMQ_DONTWAIT);
out:
    zmq_msg_close(&id);
    zmq_msg_close(&cmd);
}

int eq_eval_serve_main(int argc, char **argv)
{
    static const struct option o[] = { { "pull", required_argument, 0, 'p' },
                                       { "pub", required_argument, 0, 'b' },
                                       { "control", required_argument, 0, 'c' },
                                       { "metrics", required_argument, 0, 'm' },
                                       { "log-level", required_argument, 0, 'l' },
                                       { "insecure", no_argument, 0, 'i' },
                                       { "help", no_argument, 0, 'h' },
                                       { 0, 0, 0, 0 } };
    const char *pull_ep = "tcp://127.0.0.1:5560", *pub_ep = "tcp://127.0.0.1:5561",
               *ctl_ep = "tcp://127.0.0.1:5562", *metrics = NULL;
    int c, insecure = 0;
    eq_log_set_role("eval", -1);
    s_stop_flag = 0; /* callable more than once in a process (tests) */
    optind = 1;
    while ((c = getopt_long(argc, argv, "", o, NULL)) != -1) {
        switch (c) {
        case 'p': pull_ep = optarg; break;
        case 'b': pub_ep = optarg; break;
        case 'c': ctl_ep = optarg; break;
        case 'm': metrics = optarg; break;
        case 'i': insecure = 1; break;
        case 'l': {
            eq_log_level lv;
            if (eq_log_level_parse(optarg, &lv)) {
                fprintf(stderr, "eq-eval serve: --log-level '%s': expected debug, info, warn or error\n", optarg);
                return 2;
            }
            eq_log_set_level(lv);
            break;
        }
        case 'h': s_usage(stdout); return 0;
        default: s_usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        s_usage(stderr);
        return 2;
    }
    /* As eq-loader: anyone who reaches the control socket can stop the
     * daemon, and anyone who reaches the PULL socket can spoil a pass. */
    const char *eps[3] = { pull_ep, pub_ep, ctl_ep }, *const flag[3] = { "--pull", "--pub", "--control" };
    for (int i = 0; i < 3 && !insecure; i++)
        if (*eps[i] && !eq_proto_endpoint_local(eps[i])) {
            eq_error("refusing to bind %s %s (not loopback): eq-eval serve has no CURVE keys; give --insecure to "
                     "bind it anyway",
                     flag[i], eps[i]);
            return 1;
        }
    s_daemon d;
    memset(&d, 0, sizeof d);
    int rc = 1;
    eq_err e = { 0 };
    void *ctx = zmq_ctx_new();
    char pull_real[256] = "", pub_real[256] = "", ctl_real[256] = "";
    eq_proto_sockopts so;
    eq_proto_sockopts_default(&so, NULL);
    if (metrics && !(d.jsonl = fopen(metrics, "a"))) {
        eq_error("--metrics %s: %s", metrics, strerror(errno));
        goto out;
    }
    if (!(d.pull = eq_proto_socket(ctx, ZMQ_PULL, &so, &e)) ||
        eq_proto_bind(d.pull, pull_ep, pull_real, sizeof pull_real, &e))
        goto fail;
    if (*pub_ep && (!(d.pub = eq_proto_socket(ctx, ZMQ_PUB, &so, &e)) ||
                    eq_proto_bind(d.pub, pub_ep, pub_real, sizeof pub_real, &e)))
        goto fail;
    if (*ctl_ep && (!(d.ctl = eq_proto_socket(ctx, ZMQ_ROUTER, &so, &e)) ||
                    eq_proto_bind(d.ctl, ctl_ep, ctl_real, sizeof ctl_real, &e)))
        goto fail;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* a --metrics FIFO or a log pipe whose reader went must not kill the
     * daemon (write errors are reported instead), as in eq-loader */
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    eq_info("serving on %s, pub on %s, control on %s (pid %ld)", pull_real, *pub_real ? pub_real : "-",
            *ctl_real ? ctl_real : "-", (long)getpid());
    eq_proto_recvd rv;
    eq_proto_recvd_init(&rv);
    while (!s_stop_flag) {
        zmq_pollitem_t it[2] = { { d.pull, 0, ZMQ_POLLIN, 0 }, { d.ctl, 0, ZMQ_POLLIN, 0 } };
        int n = zmq_poll(it, d.ctl ? 2 : 1, 200);
        if (n < 0) {
            if (zmq_errno() == EINTR) continue;
            eq_error("poll: %s", zmq_strerror(zmq_errno()));
            break;
        }
        if (it[0].revents & ZMQ_POLLIN) {
            eq_status st = eq_proto_recv(d.pull, &rv, NULL, ZMQ_DONTWAIT, &e);
            if (st == EQ_OK && rv.msg.type == EQ_MSG_PRED) {
                d.received++;
                s_on_pred(&d, &rv);
            } else if (st == EQ_OK) {
                d.dropped++;
                eq_warn("dropped a %s message (only PRED is served here)", eq_msg_type_name(rv.msg.type));
            } else if (st != EQ_ERR_TIMEOUT && st != EQ_ERR_INTERRUPTED) {
                d.dropped++;
                eq_warn("dropped a malformed message: %s", e.msg);
            }
            eq_proto_recvd_close(&rv);
        }
        if (d.ctl && (it[1].revents & ZMQ_POLLIN)) s_on_control(&d);
    }
    eq_proto_recvd_close(&rv);
    for (int i = 0; i < S_MAX_PASSES; i++)
        if (d.pass[i].acc) {
            if (!d.pass[i].failed)
                eq_warn("%s epoch %" PRIu64 ": stopped with %" PRIu64 " of %" PRIu64 " samples", d.pass[i].job,
                        d.pass[i].epoch, eq_classify_received(d.pass[i].acc), d.pass[i].total);
            s_pass_close(&d.pass[i]);
        }
    eq_info("stopped: %" PRIu64 " epochs reported, %" PRIu64 " errors", d.reported, d.errors);
    rc = d.errors ? 1 : 0;
    goto out;
fail:
    eq_error("%s", e.msg);
out:
    eq_proto_socket_close(&d.pull);
    eq_proto_socket_close(&d.pub);
    eq_proto_socket_close(&d.ctl);
    zmq_ctx_term(ctx);
    if (d.jsonl) fclose(d.jsonl);
    return rc;
}
