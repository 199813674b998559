/*
 * trainer/feeder.c -- batches from eq-loaders in step order (feeder.h).
 *
 * Book-keeping: `req[]` holds the outstanding requests (request id, step,
 * loader, time sent); `slot[step % cap]` the replies received ahead of the
 * step being delivered; `retry[]` the steps whose request must be issued
 * again.  Invariant: every step in [next_deliver, next_issue) is exactly
 * one of outstanding, waiting in retry, or ready in its slot.
 */
#include "trainer/feeder.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/log.h"

#define S_CAP EQ_FEEDER_MAX_INFLIGHT
#define S_BUSY_BACKOFF_MS 50
/* While no loader answers: a warning after 5 s, then every 30 s. */
#define S_NOTE_FIRST_MS 5000
#define S_NOTE_EVERY_MS 30000

typedef struct s_loader {
    char ep[256];
    void *sock;
    uint32_t outstanding;
    uint64_t suspect_until_ms; /* skipped for new requests until then (timed out) */
    bool removed;              /* eq_feeder_remove_loader: socket closed, never used again */
    bool job_ok[EQ_FEEDER_MAX_JOBS];
    bool job_pending[EQ_FEEDER_MAX_JOBS];
    uint64_t job_req[EQ_FEEDER_MAX_JOBS];
    bool refused[EQ_FEEDER_MAX_JOBS]; /* answered JOB with an error, or a different dataset */
} s_loader;

typedef struct s_job {
    eq_msg msg;
    eq_msg_job_ok ok;
    bool have_ok;
    char id[EQ_PROTO_ID_CAP];
} s_job;

typedef struct s_req {
    bool used;
    uint64_t req, step, due_ms;
    uint32_t count;
    int loader;
} s_req;

typedef struct s_slot {
    bool ready;
    uint64_t step;
    eq_proto_recvd *rv;
} s_slot;

struct eq_feeder {
    eq_feeder_cfg cfg;
    void *zctx;
    char name[EQ_PROTO_NAME_CAP];
    s_loader *ld;
    size_t nld;
    s_job job[EQ_FEEDER_MAX_JOBS];
    int njobs;
    uint64_t next_req;
    /* the pass */
    bool active;
    int pj;
    uint64_t epoch, first, last, limit, next_issue, next_deliver;
    uint32_t offset, count;
    s_req req[S_CAP];
    s_slot slot[S_CAP];
    uint64_t retry[S_CAP];
    uint64_t retry_after_ms[S_CAP];
    size_t nretry;
    eq_proto_recvd *pool[S_CAP + 2];
    size_t npool;
    eq_proto_recvd *delivered; /* handed out by the last next(): closed on the next call */
    uint64_t last_reply_ms;
    uint64_t next_note_ms; /* eq_feeder_next: when to say again that no loader answers */
    volatile sig_atomic_t interrupted;
    eq_feeder_stats st;
};

/* ---------------------------------------------------------------- setup */

eq_feeder *eq_feeder_new(void *zctx, const eq_feeder_cfg *cfg, eq_err *err)
{
    if (!cfg || !cfg->loaders || cfg->nloaders < 1 || cfg->nloaders > EQ_FEEDER_MAX_LOADERS) {
        eq_err_set(err, EQ_ERR_INVALID, "feeder: 1 to %d loader endpoints needed", EQ_FEEDER_MAX_LOADERS);
        return NULL;
    }
    eq_feeder *f = calloc(1, sizeof *f);
    if (!f) goto nomem;
    f->cfg = *cfg;
    f->zctx = zctx;
    if (!f->cfg.inflight) f->cfg.inflight = 4 * (uint32_t)cfg->nloaders;
    if (f->cfg.inflight > S_CAP) f->cfg.inflight = S_CAP;
    if (!f->cfg.credit || f->cfg.credit > f->cfg.inflight) f->cfg.credit = f->cfg.inflight;
    if (!f->cfg.timeout_ms) f->cfg.timeout_ms = 30000;
    if (!f->cfg.give_up_ms) f->cfg.give_up_ms = 120000;
    snprintf(f->name, sizeof f->name, "%s", cfg->name ? cfg->name : "trainer");
    f->cfg.name = f->name;
    f->cfg.loaders = NULL; /* not kept */
    f->ld = calloc(EQ_FEEDER_MAX_LOADERS, sizeof *f->ld);
    if (!f->ld) goto nomem;
    f->nld = cfg->nloaders;
    for (size_t i = 0; i < S_CAP + 2; i++) {
        f->pool[i] = malloc(sizeof(eq_proto_recvd));
        if (!f->pool[i]) goto nomem;
        eq_proto_recvd_init(f->pool[i]);
        f->npool++;
    }
    eq_proto_sockopts so;
    eq_proto_sockopts_default(&so, NULL);
    so.sndtimeo_ms = 1000;
    for (size_t i = 0; i < f->nld; i++) {
        snprintf(f->ld[i].ep, sizeof f->ld[i].ep, "%s", cfg->loaders[i]);
        f->ld[i].sock = eq_proto_socket(zctx, ZMQ_DEALER, &so, err);
        if (!f->ld[i].sock || eq_proto_connect(f->ld[i].sock, cfg->loaders[i], err) != EQ_OK) {
            eq_feeder_destroy(&f);
            return NULL;
        }
    }
    f->next_req = 1;
    return f;
nomem:
    eq_feeder_destroy(&f);
    eq_err_set(err, EQ_ERR_NOMEM, "feeder: out of memory");
    return NULL;
}

static void s_pool_put(eq_feeder *f, eq_proto_recvd *r)
{
    if (!r) return;
    eq_proto_recvd_close(r);
    f->pool[f->npool++] = r;
}

static eq_proto_recvd *s_pool_get(eq_feeder *f)
{
    EQ_ASSERT(f->npool > 0);
    return f->pool[--f->npool];
}

static void s_cancel_pass(eq_feeder *f)
{
    for (size_t i = 0; i < S_CAP; i++) {
        if (f->req[i].used) f->ld[f->req[i].loader].outstanding--;
        f->req[i].used = false;
        if (f->slot[i].rv) s_pool_put(f, f->slot[i].rv);
        f->slot[i] = (s_slot){ 0 };
    }
    s_pool_put(f, f->delivered);
    f->delivered = NULL;
    f->nretry = 0;
    f->active = false;
}

void eq_feeder_destroy(eq_feeder **self_p)
{
    if (!self_p || !*self_p) return;
    eq_feeder *f = *self_p;
    if (f->ld) {
        s_cancel_pass(f);
        for (size_t i = 0; i < f->nld; i++) eq_proto_socket_close(&f->ld[i].sock);
    }
    for (size_t i = 0; i < f->npool; i++) {
        eq_proto_recvd_close(f->pool[i]);
        free(f->pool[i]);
    }
    for (int j = 0; j < f->njobs; j++) eq_proto_msg_reset(&f->job[j].msg);
    free(f->ld);
    free(f);
    *self_p = NULL;
}

void eq_feeder_interrupt(eq_feeder *self) { self->interrupted = 1; }

void eq_feeder_stats_get(const eq_feeder *f, eq_feeder_stats *st)
{
    *st = f->st;
    uint64_t now = eq_clock_ms();
    st->loaders = st->loaders_alive = 0;
    for (size_t i = 0; i < f->nld; i++) {
        st->loaders += !f->ld[i].removed;
        st->loaders_alive += !f->ld[i].removed && f->ld[i].suspect_until_ms <= now;
    }
}

/* ------------------------------------------------------------------ I/O */

static eq_status s_send_job(eq_feeder *f, size_t li, int j, eq_err *err)
{
    eq_msg m = f->job[j].msg; /* JOB owns no heap memory */
    m.has_req = true;
    m.req = f->next_req++;
    eq_status st = eq_proto_send(f->ld[li].sock, NULL, &m, NULL, 0, ZMQ_DONTWAIT, err);
    if (st == EQ_OK) {
        f->ld[li].job_pending[j] = true;
        f->ld[li].job_req[j] = m.req;
    } else if (st == EQ_ERR_TIMEOUT) {
        st = EQ_OK; /* queue full: try again later */
    }
    return st;
}

/* Handle one received message from loader li.  Returns an error only for
 * what ends the pass (a refused request that retrying cannot fix). */
static eq_status s_on_reply(eq_feeder *f, size_t li, eq_proto_recvd *rv, eq_err *err);

/* Receive everything waiting, waiting at most `wait_ms` for the first. */
static eq_status s_poll(eq_feeder *f, long wait_ms, eq_err *err)
{
    zmq_pollitem_t it[EQ_FEEDER_MAX_LOADERS];
    size_t map[EQ_FEEDER_MAX_LOADERS], nit = 0;
    for (size_t i = 0; i < f->nld; i++) {
        if (f->ld[i].removed) continue;
        map[nit] = i;
        it[nit++] = (zmq_pollitem_t){ f->ld[i].sock, 0, ZMQ_POLLIN, 0 };
    }
    int n = zmq_poll(it, (int)nit, wait_ms);
    if (n < 0) {
        if (zmq_errno() == EINTR) return EQ_OK;
        return eq_err_set(err, EQ_ERR_NET, "feeder: poll: %s", zmq_strerror(zmq_errno()));
    }
    for (size_t q = 0; q < nit; q++) {
        if (!(it[q].revents & ZMQ_POLLIN)) continue;
        size_t i = map[q];
        for (int k = 0; k < 64; k++) {
            eq_proto_recvd *rv = s_pool_get(f);
            eq_err e = { 0 };
            eq_status st = eq_proto_recv(f->ld[i].sock, rv, NULL, ZMQ_DONTWAIT, &e);
            if (st == EQ_ERR_TIMEOUT) {
                s_pool_put(f, rv);
                break;
            }
            if (st != EQ_OK) {
                eq_warn("loader %s: dropped a bad message: %s", f->ld[i].ep, e.msg);
                s_pool_put(f, rv);
                continue;
            }
            f->last_reply_ms = eq_clock_ms();
            st = s_on_reply(f, i, rv, err); /* takes rv */
            if (st) return st;
        }
    }
    return EQ_OK;
}

static int s_find_req(eq_feeder *f, size_t li, uint64_t req)
{
    for (int i = 0; i < S_CAP; i++)
        if (f->req[i].used && f->req[i].req == req && (size_t)f->req[i].loader == li) return i;
    return -1;
}

static void s_retry(eq_feeder *f, uint64_t step, uint64_t after_ms)
{
    EQ_ASSERT(f->nretry < S_CAP);
    f->retry[f->nretry] = step;
    f->retry_after_ms[f->nretry] = after_ms;
    f->nretry++;
    f->st.reissued++;
}

static void s_req_done(eq_feeder *f, int r)
{
    f->ld[f->req[r].loader].outstanding--;
    f->req[r].used = false;
}

static eq_status s_on_reply(eq_feeder *f, size_t li, eq_proto_recvd *rv, eq_err *err)
{
    s_loader *L = &f->ld[li];
    const eq_msg *m = &rv->msg;
    if (m->type == EQ_MSG_JOB_OK || (m->type == EQ_MSG_ERROR && m->has_req)) {
        for (int j = 0; j < f->njobs; j++) {
            if (!L->job_pending[j] || L->job_req[j] != m->req) continue;
            L->job_pending[j] = false;
            if (m->type == EQ_MSG_ERROR) {
                L->refused[j] = true;
                eq_status code = (eq_status)m->u.error.code;
                if (code == EQ_OK || code >= EQ_STATUS_COUNT) code = EQ_ERR_PROTO;
                eq_err_set(err, code, "loader %s refused the %s job: %s", L->ep, f->job[j].msg.u.job.split,
                           m->u.error.message);
                s_pool_put(f, rv);
                return code;
            }
            const eq_msg_job_ok *ok = &m->u.job_ok;
            s_job *J = &f->job[j];
            if (J->have_ok && (ok->size != J->ok.size || ok->classes != J->ok.classes ||
                               strcmp(ok->data_hash, J->ok.data_hash) || strcmp(ok->job, J->id))) {
                L->refused[j] = true;
                eq_warn("loader %s: %s job differs (size %" PRIu64 ", hash %s; expected %" PRIu64
                        ", %s): not used",
                        L->ep, J->msg.u.job.split, ok->size, ok->data_hash, J->ok.size, J->ok.data_hash);
            } else {
                if (!J->have_ok) {
                    J->ok = *ok;
                    J->have_ok = true;
                    snprintf(J->id, sizeof J->id, "%s", ok->job);
                }
                L->job_ok[j] = true;
            }
            s_pool_put(f, rv);
            return EQ_OK;
        }
    }
    if (m->type != EQ_MSG_BATCH && m->type != EQ_MSG_ERROR) {
        s_pool_put(f, rv);
        return EQ_OK; /* HELLO replies etc. */
    }
    int r = m->has_req ? s_find_req(f, li, m->req) : -1;
    if (r < 0) {
        f->st.late_dropped++;
        s_pool_put(f, rv);
        return EQ_OK;
    }
    uint64_t step = f->req[r].step;
    uint32_t count = f->req[r].count;
    if (m->type == EQ_MSG_ERROR) {
        f->st.errors++;
        eq_status code = (eq_status)m->u.error.code;
        s_req_done(f, r);
        if (code == EQ_ERR_NOTFOUND && strstr(m->u.error.message, "unknown job")) {
            /* Restarted or evicted: send the job again, then the request. */
            L->job_ok[f->pj] = false;
            eq_info("loader %s forgot the job; sending it again", L->ep);
            s_retry(f, step, 0);
        } else if (code == EQ_ERR_LIMIT) {
            s_retry(f, step, eq_clock_ms() + S_BUSY_BACKOFF_MS);
        } else {
            if (code == EQ_OK || code >= EQ_STATUS_COUNT) code = EQ_ERR_PROTO;
            eq_err_set(err, code, "loader %s, epoch %" PRIu64 " step %" PRIu64 ": %s", L->ep, f->epoch, step,
                       m->u.error.message);
            s_pool_put(f, rv);
            return code;
        }
        s_pool_put(f, rv);
        return EQ_OK;
    }
    const eq_msg_batch *b = &m->u.batch;
    if (b->epoch != f->epoch || b->step != step || b->offset != f->offset || b->count != count ||
        strcmp(b->job, f->job[f->pj].id)) {
        s_req_done(f, r);
        s_pool_put(f, rv);
        return eq_err_set(err, EQ_ERR_PROTO,
                          "loader %s answered request %" PRIu64 " (epoch %" PRIu64 " step %" PRIu64
                          ") with epoch %" PRIu64 " step %" PRIu64 " offset %u count %u",
                          L->ep, m->req, f->epoch, step, b->epoch, b->step, b->offset, b->count);
    }
    s_req_done(f, r);
    s_slot *s = &f->slot[step % S_CAP];
    EQ_ASSERT(!s->ready);
    s->ready = true;
    s->step = step;
    s->rv = rv;
    return EQ_OK;
}

/* The loader for a new request: live, knows the job, under its credit,
 * fewest outstanding.  -1 if none. */
static int s_pick(eq_feeder *f, uint64_t now)
{
    int best = -1, fallback = -1;
    for (size_t i = 0; i < f->nld; i++) {
        s_loader *L = &f->ld[i];
        if (L->removed || !L->job_ok[f->pj] || L->refused[f->pj] || L->outstanding >= f->cfg.credit) continue;
        if (L->suspect_until_ms > now) {
            if (fallback < 0 || L->outstanding < f->ld[fallback].outstanding) fallback = (int)i;
            continue;
        }
        if (best < 0 || L->outstanding < f->ld[best].outstanding) best = (int)i;
    }
    if (best >= 0) return best;
    /* Every usable loader is suspect: use one anyway (it may have recovered),
     * but keep one request at a time on it. */
    return fallback >= 0 && f->ld[fallback].outstanding == 0 ? fallback : -1;
}

static uint32_t s_step_count(const eq_feeder *f, uint64_t step)
{
    uint64_t G = f->job[f->pj].msg.u.job.global_batch;
    uint64_t pos = step * G + f->offset;
    if (pos >= f->limit) return 0;
    uint64_t n = f->limit - pos;
    return n < f->count ? (uint32_t)n : f->count;
}

static eq_status s_send_req(eq_feeder *f, int li, uint64_t step, eq_err *err, bool *sent)
{
    *sent = false;
    int r = -1;
    for (int i = 0; i < S_CAP; i++)
        if (!f->req[i].used) {
            r = i;
            break;
        }
    EQ_ASSERT(r >= 0);
    eq_msg m;
    eq_proto_msg_init(&m, EQ_MSG_BATCH_REQ);
    m.has_req = true;
    m.req = f->next_req++;
    eq_msg_batch_req *q = &m.u.batch_req;
    snprintf(q->job, sizeof q->job, "%s", f->job[f->pj].id);
    q->epoch = f->epoch;
    q->step = step;
    q->offset = f->offset;
    q->count = s_step_count(f, step);
    q->deadline_ms = f->cfg.timeout_ms;
    eq_err e = { 0 };
    eq_status st = eq_proto_send(f->ld[li].sock, NULL, &m, NULL, 0, ZMQ_DONTWAIT, &e);
    if (st == EQ_ERR_TIMEOUT) return EQ_OK; /* queue full; later */
    if (st != EQ_OK) return eq_err_set(err, st, "loader %s: %s", f->ld[li].ep, e.msg);
    uint64_t now = eq_clock_ms();
    f->req[r] = (s_req){ .used = true, .req = m.req, .step = step, .due_ms = now + f->cfg.timeout_ms,
                         .count = q->count, .loader = li };
    f->ld[li].outstanding++;
    *sent = true;
    return EQ_OK;
}

/* Issue what the window allows: retries first (in step order of arrival),
 * then new steps; send the job to loaders that lack it; re-issue requests
 * past their deadline. */
static eq_status s_pump(eq_feeder *f, eq_err *err)
{
    uint64_t now = eq_clock_ms();
    for (size_t i = 0; i < f->nld; i++) {
        s_loader *L = &f->ld[i];
        if (!L->removed && !L->job_ok[f->pj] && !L->job_pending[f->pj] && !L->refused[f->pj]) {
            eq_status st = s_send_job(f, i, f->pj, err);
            if (st) return st;
        }
    }
    for (int r = 0; r < S_CAP; r++) {
        if (!f->req[r].used || f->req[r].due_ms > now) continue;
        s_loader *L = &f->ld[f->req[r].loader];
        eq_warn("loader %s: no answer for epoch %" PRIu64 " step %" PRIu64 " in %u ms; asking again%s", L->ep,
                f->epoch, f->req[r].step, f->cfg.timeout_ms, f->nld > 1 ? " elsewhere" : "");
        L->suspect_until_ms = now + 2ull * f->cfg.timeout_ms;
        L->job_ok[f->pj] = false; /* it may have restarted: send the job before asking it again */
        L->job_pending[f->pj] = false;
        uint64_t step = f->req[r].step;
        s_req_done(f, r);
        s_retry(f, step, 0);
    }
    for (;;) {
        /* One request per iteration: a retry that is due, else a new step. */
        size_t ri = SIZE_MAX;
        for (size_t i = 0; i < f->nretry; i++)
            if (f->retry_after_ms[i] <= now && (ri == SIZE_MAX || f->retry[i] < f->retry[ri])) ri = i;
        uint64_t step;
        if (ri != SIZE_MAX)
            step = f->retry[ri];
        else if (f->next_issue < f->last && f->next_issue < f->next_deliver + f->cfg.inflight &&
                 s_step_count(f, f->next_issue) > 0)
            step = f->next_issue;
        else
            break;
        int li = s_pick(f, now);
        if (li < 0) break;
        bool sent;
        eq_status st = s_send_req(f, li, step, err, &sent);
        if (st) return st;
        if (!sent) break;
        if (ri != SIZE_MAX) {
            f->retry[ri] = f->retry[f->nretry - 1];
            f->retry_after_ms[ri] = f->retry_after_ms[f->nretry - 1];
            f->nretry--;
        } else {
            f->next_issue++;
        }
    }
    return EQ_OK;
}

/* "no loader has <what> for N s (ep, ...); giving up after M s": the
 * trainer waiting on loaders is never silent. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void s_note_silent(const eq_feeder *f, uint64_t ms, const char *what_fmt, ...)
{
    char what[160], eps[300] = "";
    va_list ap;
    va_start(ap, what_fmt);
    vsnprintf(what, sizeof what, what_fmt, ap);
    va_end(ap);
    size_t n = 0, shown = 0;
    for (size_t i = 0; i < f->nld && n < sizeof eps; i++) {
        if (f->ld[i].removed) continue;
        if (shown == 3) {
            snprintf(eps + n, sizeof eps - n, ", ...");
            break;
        }
        n += (size_t)snprintf(eps + n, sizeof eps - n, "%s%s", shown ? ", " : "", f->ld[i].ep);
        shown++;
    }
    eq_warn("no loader has %s for %.0f s (%s); is an eq-loader serving there? giving up after %.0f s", what,
            (double)ms / 1000.0, eps, (double)f->cfg.give_up_ms / 1000.0);
}

/* ------------------------------------------------------------------ API */

eq_status eq_feeder_add_job(eq_feeder *f, const eq_msg *job, eq_msg_job_ok *ok, int *job_index, eq_err *err)
{
    if (!job || job->type != EQ_MSG_JOB) return eq_err_set(err, EQ_ERR_INVALID, "feeder: not a JOB message");
    if (f->njobs >= EQ_FEEDER_MAX_JOBS)
        return eq_err_set(err, EQ_ERR_LIMIT, "feeder: more than %d jobs", EQ_FEEDER_MAX_JOBS);
    if (f->active) s_cancel_pass(f);
    int j = f->njobs++;
    f->job[j].msg = *job;
    f->job[j].have_ok = false;
    eq_status st;
    size_t live = 0;
    for (size_t i = 0; i < f->nld; i++) {
        if (f->ld[i].removed) continue;
        live++;
        if ((st = s_send_job(f, i, j, err))) return st;
    }
    uint64_t t0 = eq_clock_ms(), next_note = t0 + S_NOTE_FIRST_MS;
    for (;;) {
        size_t answered = 0, good = 0;
        for (size_t i = 0; i < f->nld; i++) {
            if (f->ld[i].removed) continue;
            answered += !f->ld[i].job_pending[j];
            good += f->ld[i].job_ok[j];
        }
        if (answered == live && good > 0) break;
        uint64_t now = eq_clock_ms();
        if (good > 0 && now - t0 > f->cfg.timeout_ms) break; /* slow ones join later */
        if (now - t0 > f->cfg.give_up_ms)
            return eq_err_set(err, EQ_ERR_TIMEOUT, "no loader answered the %s job in %.0f s (%s%s; [train] loader_timeout)",
                              job->u.job.split, (double)f->cfg.give_up_ms / 1000.0, f->ld[0].ep,
                              f->nld > 1 ? ", ..." : "");
        if (f->interrupted) return eq_err_set(err, EQ_ERR_INTERRUPTED, "feeder: interrupted");
        if (good == 0 && now >= next_note) { /* say why nothing happens */
            s_note_silent(f, now - t0, "answered the %s job", job->u.job.split);
            next_note = now + S_NOTE_EVERY_MS;
        }
        if ((st = s_poll(f, 100, err))) return st;
        if (answered == live && good == 0)
            return eq_err_set(err, EQ_ERR_INVALID, "every loader refused the %s job", job->u.job.split);
    }
    *ok = f->job[j].ok;
    *job_index = j;
    return EQ_OK;
}

eq_status eq_feeder_pass(eq_feeder *f, int job_index, uint64_t epoch, uint64_t first, uint64_t last,
                         uint32_t offset, uint32_t count, uint64_t limit, eq_err *err)
{
    if (job_index < 0 || job_index >= f->njobs || !f->job[job_index].have_ok)
        return eq_err_set(err, EQ_ERR_INVALID, "feeder: job %d not registered", job_index);
    uint32_t G = f->job[job_index].msg.u.job.global_batch;
    if (count < 1 || (uint64_t)offset + count > G || first > last)
        return eq_err_set(err, EQ_ERR_INVALID, "feeder: offset %u + count %u outside the global batch %u", offset,
                          count, G);
    s_cancel_pass(f);
    f->active = true;
    f->pj = job_index;
    f->epoch = epoch;
    f->first = f->next_issue = f->next_deliver = first;
    f->last = last;
    f->offset = offset;
    f->count = count;
    f->limit = limit;
    f->last_reply_ms = eq_clock_ms();
    f->next_note_ms = 0;
    return s_pump(f, err);
}

eq_status eq_feeder_next(eq_feeder *f, eq_feeder_batch *out, eq_err *err)
{
    s_pool_put(f, f->delivered);
    f->delivered = NULL;
    if (!f->active) return eq_err_set(err, EQ_ERR_INVALID, "feeder: no pass started");
    if (f->next_deliver >= f->last || s_step_count(f, f->next_deliver) == 0) {
        f->active = false;
        return eq_err_set(err, EQ_ERR_NOTFOUND, "feeder: pass over");
    }
    double t0 = eq_clock_sec();
    eq_status st;
    s_slot *s = &f->slot[f->next_deliver % S_CAP];
    for (;;) {
        /* Take what arrived while the caller computed before judging deadlines. */
        if ((st = s_poll(f, 0, err))) return st;
        if ((st = s_pump(f, err))) return st;
        if (s->ready && s->step == f->next_deliver) break;
        if (f->interrupted) return eq_err_set(err, EQ_ERR_INTERRUPTED, "feeder: interrupted");
        uint64_t now = eq_clock_ms();
        if (now - f->last_reply_ms >= S_NOTE_FIRST_MS && now >= f->next_note_ms) {
            s_note_silent(f, now - f->last_reply_ms, "sent anything (waiting for epoch %" PRIu64 " step %" PRIu64 ")",
                          f->epoch, f->next_deliver);
            f->next_note_ms = now + S_NOTE_EVERY_MS;
        }
        if (now - f->last_reply_ms > f->cfg.give_up_ms)
            return eq_err_set(err, EQ_ERR_TIMEOUT,
                              "no loader answered for %.0f s (waiting for epoch %" PRIu64 " step %" PRIu64
                              "; [train] loader_timeout)",
                              (double)f->cfg.give_up_ms / 1000.0, f->epoch, f->next_deliver);
        if ((st = s_poll(f, 100, err))) return st;
    }
    f->st.wait_s += eq_clock_sec() - t0;
    eq_proto_recvd *rv = s->rv;
    *s = (s_slot){ 0 };
    f->delivered = rv;
    f->next_deliver++;
    const eq_msg_batch *b = &rv->msg.u.batch;
    const eq_proto_frame_desc *im = &rv->msg.frames[b->frame_images];
    out->epoch = b->epoch;
    out->step = b->step;
    out->offset = b->offset;
    out->count = b->count;
    out->images = eq_proto_recvd_frame(rv, (size_t)b->frame_images, NULL);
    out->labels = eq_proto_recvd_frame(rv, (size_t)b->frame_labels, NULL);
    out->labels_i64 = rv->msg.frames[b->frame_labels].dtype == EQ_DT_I64;
    out->h = (uint32_t)im->shape[1];
    out->w = (uint32_t)im->shape[2];
    out->c = (uint32_t)im->shape[3];
    out->nreplaced = b->nreplaced;
    out->mix = b->mix;
    out->mix_index = b->frame_mix_index >= 0 ? eq_proto_recvd_frame(rv, (size_t)b->frame_mix_index, NULL) : NULL;
    out->mix_lambda = b->frame_mix_lambda >= 0 ? eq_proto_recvd_frame(rv, (size_t)b->frame_mix_lambda, NULL) : NULL;
    f->st.batches++;
    f->st.samples += b->count;
    /* Keep the window full while the caller computes. */
    return s_pump(f, err);
}

eq_status eq_feeder_add_loader(eq_feeder *f, const char *ep, eq_err *err)
{
    if (!ep || !*ep || strlen(ep) >= sizeof f->ld[0].ep)
        return eq_err_set(err, EQ_ERR_INVALID, "add loader: endpoint empty or longer than %zu", sizeof f->ld[0].ep - 1);
    for (size_t i = 0; i < f->nld; i++)
        if (!f->ld[i].removed && !strcmp(f->ld[i].ep, ep))
            return eq_err_set(err, EQ_ERR_INVALID, "add loader: %s is already in use", ep);
    if (f->nld >= EQ_FEEDER_MAX_LOADERS)
        return eq_err_set(err, EQ_ERR_LIMIT, "add loader: %d loaders have been used (removed ones count)",
                          EQ_FEEDER_MAX_LOADERS);
    eq_proto_sockopts so;
    eq_proto_sockopts_default(&so, NULL);
    so.sndtimeo_ms = 1000;
    s_loader *L = &f->ld[f->nld];
    memset(L, 0, sizeof *L);
    snprintf(L->ep, sizeof L->ep, "%s", ep);
    if (!(L->sock = eq_proto_socket(f->zctx, ZMQ_DEALER, &so, err))) return eq_err_prefix(err, "add loader %s: ", ep);
    if (eq_proto_connect(L->sock, ep, err) != EQ_OK) {
        eq_proto_socket_close(&L->sock);
        return eq_err_prefix(err, "add loader: ");
    }
    f->nld++;
    /* The current pass's job goes out with the next pump; other jobs when
     * their pass starts. */
    return f->active ? s_pump(f, err) : EQ_OK;
}

eq_status eq_feeder_remove_loader(eq_feeder *f, const char *ep, eq_err *err)
{
    size_t li = SIZE_MAX, live = 0;
    for (size_t i = 0; i < f->nld; i++) {
        if (f->ld[i].removed) continue;
        live++;
        if (ep && !strcmp(f->ld[i].ep, ep)) li = i;
    }
    if (li == SIZE_MAX) return eq_err_set(err, EQ_ERR_NOTFOUND, "remove loader: no loader %s", ep ? ep : "(null)");
    if (live == 1) return eq_err_set(err, EQ_ERR_INVALID, "remove loader: %s is the last loader", ep);
    for (int r = 0; r < S_CAP; r++) {
        if (!f->req[r].used || (size_t)f->req[r].loader != li) continue;
        uint64_t step = f->req[r].step;
        s_req_done(f, r);
        s_retry(f, step, 0);
    }
    eq_proto_socket_close(&f->ld[li].sock);
    f->ld[li].removed = true;
    return f->active ? s_pump(f, err) : EQ_OK;
}
