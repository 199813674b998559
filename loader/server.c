/*
 * loader/server.c -- eq_loader_server: the poll loop, the job table and
 * the worker threads of eq-loader (the model is described in server.h).
 *
 * Ownership: the main thread (eq_loader_server_run) owns the sockets, the
 * dataset and job tables and every request until it is queued; a queued
 * request belongs to the queue (mutex) and to the workers computing its
 * samples; the worker that completes it passes it back over inproc, and
 * the main thread sends and frees it.  A job is not evicted while requests
 * use it (refs).
 */
#include "config.h"

#include "loader/server.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/pool.h"
#include "loader/coco.h"
#include "proto/det.h"
#include "proto/proto_zmq.h"

#define S_MAX_SPLITS 4      /* opened splits per declared dataset */
#define S_CHUNK 4           /* samples a worker takes at a time */
#define S_DRAIN_MS 5000     /* stop: time to finish the requests in hand */
#define S_CTL_MAX 4096      /* largest control command */
#define S_MAX_WAITERS 65536 /* peers waiting for the same job to open (every rank of a big run) */

typedef struct s_decl {
    char name[EQ_PROTO_NAME_CAP];
    char path[EQ_LOADER_PATH_CAP];
    eq_ds_kind kind;
    int nopen;
    struct {
        char split[EQ_PROTO_NAME_CAP];
        eq_dataset *ds;
    } open[S_MAX_SPLITS];
} s_decl;

typedef struct s_job {
    char id[EQ_PROTO_ID_CAP];
    eq_msg_job job;
    s_decl *decl;
    const eq_dataset *ds;
    eq_pipeline *pipe;
    eq_sampler *sampler;
    eq_pipeline_cfg cfg;
    eq_det *det;      /* COCO jobs (pipe is NULL then) */
    eq_det_cfg dcfg;
    uint32_t H, W, C;
    uint64_t used;  /* tick of last use (LRU) */
    int refs;       /* requests in flight */
    char fingerprint[EQ_PROTO_TEXT_CAP];
} s_job;

typedef struct s_req {
    struct s_req *next;
    eq_proto_peer peer;
    uint64_t req;
    s_job *job;
    uint64_t epoch, step;
    uint32_t offset, n;
    size_t per;              /* bytes per sample */
    uint32_t *indices;       /* n */
    int32_t *labels;         /* n */
    uint8_t *rep;            /* n */
    uint8_t *images;         /* n * per */
    /* mixed jobs only (NULL otherwise): filled by the worker that makes
     * the last sample, with eq_pipeline_mix */
    int32_t *mix_index;      /* n: partner position within this batch */
    float *mix_lambda;       /* n: weight of the sample itself */
    uint8_t *mix_mode;       /* n: eq_mix_mode */
    uint32_t *partner;       /* n: partner position in the global batch */
    eq_err mix_err;          /* code != 0: the plan failed, answer ERROR */
    /* detection jobs: samples made by the workers, collated by the one
     * that makes the last sample (images/labels are then unused) */
    eq_det_sample *dsamples; /* n */
    eq_det_batch dbatch;
    eq_err det_err;          /* code != 0: answer ERROR */
    int det_failed;          /* atomic: det_err was written */
    uint64_t deadline_ns;    /* 0: none */
    uint32_t next_i;         /* under the queue lock */
    uint32_t done;           /* atomic */
    int expired;             /* atomic */
} s_req;

/* A JOB being set up by the opener thread (dataset walk, pipeline), and
 * the peers waiting for its JOB_OK. */
typedef struct s_pending {
    struct s_pending *next;  /* s->pending (main thread), which owns it */
    struct s_pending *qnext; /* s->open_head (under mu) */
    char id[EQ_PROTO_ID_CAP];
    eq_msg msg;
    struct s_waiter {
        eq_proto_peer peer;
        bool has_req;
        uint64_t req;
    } *waiters;     /* grown as peers ask (malloc'd) */
    int nwait, capwait;
    s_job *job; /* result, or NULL and err */
    eq_err err;
} s_pending;

/* What workers and the opener hand back to the main thread. */
typedef struct s_note {
    char tag; /* 'R': a finished s_req, 'J': an s_pending with its result */
    void *ptr;
} s_note;

typedef struct s_worker {
    struct eq_loader_server *s;
    pthread_t thread;
    int started;
    int index;
} s_worker;

struct eq_loader_server {
    void *zctx;
    void *data, *ctl, *done; /* main thread's sockets */
    char endpoint[256], ctl_endpoint[256], done_endpoint[64];
    int pipe_fd[2];
    eq_proto_limits lim;

    s_decl *decls;
    size_t ndecls;
    s_job **jobs;
    size_t njobs, max_jobs;
    uint64_t tick;

    /* work queue */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    s_req *head, *tail;
    int quit;
    int mu_ok;
    s_worker *workers;
    int nworkers;
    s_pending *pending;       /* main thread: jobs being opened */
    s_pending *open_head;     /* opener queue (under mu) */
    pthread_cond_t open_cv;
    pthread_t opener;
    int opener_started;
    pthread_mutex_t ds_mu;    /* decls[].open lists: opener writes, status reads */
    int ready;  /* workers started (under mu) */
    int failed; /* of which could not connect or make a decoder */

    uint64_t max_inflight;
    uint64_t started_ms;
    int stopping;
    eq_loader_stats st; /* counters: written by the main thread, read atomically */
};

/* ------------------------------------------------------------- helpers */

#define S_ADD(s, field, v) __atomic_fetch_add(&(s)->st.field, (v), __ATOMIC_RELAXED)
#define S_SET(s, field, v) __atomic_store_n(&(s)->st.field, (v), __ATOMIC_RELAXED)

static int s_valid_name(const char *n)
{
    if (!*n || *n == '.') return 0;
    for (const char *p = n; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              strchr("_.:@+-", *p)))
            return 0;
    return 1;
}

static void s_free_cb(void *data, void *hint)
{
    (void)hint;
    free(data);
}

static void s_req_free(s_req *r)
{
    if (!r) return;
    free(r->indices);
    free(r->labels);
    free(r->rep);
    free(r->images);
    free(r->mix_index);
    free(r->mix_lambda);
    free(r->mix_mode);
    free(r->partner);
    if (r->dsamples)
        for (uint32_t i = 0; i < r->n; i++) eq_det_sample_free(&r->dsamples[i]);
    free(r->dsamples);
    eq_det_batch_free(&r->dbatch);
    free(r);
}

static int s_mixing(const s_job *j)
{
    return j->cfg.mix.mixup_alpha > 0 || j->cfg.mix.cutmix_alpha > 0;
}

/* Mixup/CutMix of a request whose samples are all made (partners are in
 * the request: it covers whole blocks): pastes the CutMix boxes and fills
 * the plan's fields.  Runs on the worker that made the last sample. */
static void s_mix_req(s_req *r, eq_decoder *dec)
{
    eq_batch b = {.images = r->images,
                  .indices = r->indices,
                  .label_a = r->labels,
                  .lambda = r->mix_lambda,
                  .mix_mode = r->mix_mode,
                  .partner = r->partner,
                  .n = r->n};
    if (eq_pipeline_mix(r->job->pipe, dec, r->epoch, r->step, r->offset, &b, &r->mix_err) != EQ_OK) {
        if (!r->mix_err.code) r->mix_err.code = EQ_ERR_INTERNAL;
        return;
    }
    for (uint32_t i = 0; i < r->n; i++) {
        if (r->partner[i] < r->offset || r->partner[i] - r->offset >= r->n) {
            eq_err_set(&r->mix_err, EQ_ERR_INTERNAL, "mix: partner %u of position %u outside the batch [%u, %u)",
                       r->partner[i], r->offset + i, r->offset, r->offset + r->n);
            return;
        }
        r->mix_index[i] = (int32_t)(r->partner[i] - r->offset);
    }
}

static uint64_t s_job_steps(const s_job *j)
{
    return j->det ? eq_sampler_steps(&j->dcfg.sampler, eq_det_size(j->det)) : eq_pipeline_steps(j->pipe);
}

/* Detection request: collate the samples (on the worker that made the
 * last one) and release them. */
static void s_det_req(s_req *r)
{
    for (uint32_t i = 0; i < r->n; i++) r->rep[i] = r->dsamples[i].replaced;
    if (eq_det_collate(r->job->det, r->dsamples, r->n, &r->dbatch, &r->det_err) != EQ_OK && !r->det_err.code)
        r->det_err.code = EQ_ERR_INTERNAL;
    for (uint32_t i = 0; i < r->n; i++) eq_det_sample_free(&r->dsamples[i]);
    free(r->dsamples);
    r->dsamples = NULL;
}

static void s_job_free(s_job *j)
{
    if (!j) return;
    eq_pipeline_destroy(&j->pipe);
    eq_det_destroy(&j->det);
    eq_sampler_destroy(&j->sampler);
    free(j);
}

/* ------------------------------------------------------------- workers */

static void *s_worker_main(void *arg)
{
    s_worker *w = arg;
    eq_loader_server *s = w->s;
    eq_err e = {0};
    void *push = zmq_socket(s->zctx, ZMQ_PUSH);
    int zero = 0;
    if (push) zmq_setsockopt(push, ZMQ_LINGER, &zero, sizeof zero);
    if (push && zmq_connect(push, s->done_endpoint) != 0) {
        zmq_close(push);
        push = NULL;
    }
    eq_decoder *dec = eq_decoder_new(0, &e);
    pthread_mutex_lock(&s->mu);
    s->ready++;
    s->failed += !push || !dec;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (!push || !dec) {
        eq_error("loader: worker %d cannot start: %s", w->index, dec ? zmq_strerror(zmq_errno()) : e.msg);
        if (push) zmq_close(push);
        eq_decoder_destroy(&dec);
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->quit && !s->head) pthread_cond_wait(&s->cv, &s->mu);
        if (s->quit) {
            pthread_mutex_unlock(&s->mu);
            break;
        }
        s_req *r = s->head;
        uint32_t i0 = r->next_i, take = r->n - i0 < S_CHUNK ? r->n - i0 : S_CHUNK;
        r->next_i += take;
        /* Round robin: the request goes to the back of the queue (or
         * leaves it when every sample is handed out). */
        s->head = r->next;
        if (!s->head) s->tail = NULL;
        r->next = NULL;
        if (r->next_i < r->n) {
            if (s->tail)
                s->tail->next = r;
            else
                s->head = r;
            s->tail = r;
        }
        pthread_mutex_unlock(&s->mu);

        if (r->deadline_ns && eq_clock_ns() > r->deadline_ns)
            __atomic_store_n(&r->expired, 1, __ATOMIC_RELAXED);
        if (!__atomic_load_n(&r->expired, __ATOMIC_RELAXED)) {
            for (uint32_t i = i0; i < i0 + take && r->dsamples; i++) {
                eq_err se = {0};
                if (eq_det_make(r->job->det, dec, r->epoch, r->indices[i], &r->dsamples[i], &se) != EQ_OK) {
                    /* out of memory only (bad files become substitutes) */
                    eq_error("loader: sample %u of job %s: %s", r->indices[i], r->job->id, se.msg);
                    if (__atomic_exchange_n(&r->det_failed, 1, __ATOMIC_ACQ_REL) == 0) r->det_err = se;
                }
            }
            for (uint32_t i = i0; i < i0 + take && !r->dsamples; i++) {
                int rep = 0;
                eq_err se = {0};
                if (eq_pipeline_sample(r->job->pipe, dec, r->epoch, r->indices[i], r->images + (size_t)i * r->per,
                                       NULL, &rep, &se) != EQ_OK) {
                    /* Only an index out of range fails, which the sampler
                     * rules out; keep the batch whole anyway. */
                    eq_error("loader: sample %u of job %s: %s", r->indices[i], r->job->id, se.msg);
                    memset(r->images + (size_t)i * r->per, 0, r->per);
                    rep = 1;
                }
                r->rep[i] = (uint8_t)rep;
            }
        }
        /* r->n is read before the add: once this worker's samples count as
         * done, the one that finishes the request hands it to the main
         * thread, which may free it (ThreadSanitizer: read of r->n at this
         * line racing with free in s_req_free). */
        const uint32_t n = r->n;
        if (__atomic_add_fetch(&r->done, take, __ATOMIC_ACQ_REL) == n) {
            if (r->mix_index && !__atomic_load_n(&r->expired, __ATOMIC_RELAXED)) s_mix_req(r, dec);
            if (r->dsamples && !__atomic_load_n(&r->expired, __ATOMIC_RELAXED) && !r->det_err.code) s_det_req(r);
            /* Hand the finished request to the main thread. */
            s_note nt = {'R', r};
            while (zmq_send(push, &nt, sizeof nt, 0) < 0 && zmq_errno() == EINTR) {
            }
        }
    }
    zmq_close(push);
    eq_decoder_destroy(&dec);
    return NULL;
}

static void s_workers_stop(eq_loader_server *s)
{
    if (s->mu_ok) {
        pthread_mutex_lock(&s->mu);
        s->quit = 1;
        pthread_cond_broadcast(&s->cv);
        pthread_cond_broadcast(&s->open_cv);
        pthread_mutex_unlock(&s->mu);
    }
    if (s->opener_started) pthread_join(s->opener, NULL);
    s->opener_started = 0;
    if (!s->workers) return;
    for (int i = 0; i < s->nworkers; i++)
        if (s->workers[i].started) pthread_join(s->workers[i].thread, NULL);
    free(s->workers);
    s->workers = NULL;
}

static eq_status s_make_job(eq_loader_server *s, const eq_msg *m, const char *id, s_job **out, eq_err *err);

/* The opener: sets up new jobs (opening a dataset can mean walking a
 * million files) so that the main thread keeps serving meanwhile.  One
 * thread, so datasets are opened one at a time and exactly once. */
static void *s_opener_main(void *arg)
{
    eq_loader_server *s = arg;
    void *push = zmq_socket(s->zctx, ZMQ_PUSH);
    int zero = 0;
    if (push) zmq_setsockopt(push, ZMQ_LINGER, &zero, sizeof zero);
    if (push && zmq_connect(push, s->done_endpoint) != 0) {
        zmq_close(push);
        push = NULL;
    }
    pthread_mutex_lock(&s->mu);
    s->ready++;
    s->failed += !push;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (!push) {
        eq_error("loader: job opener cannot start: %s", zmq_strerror(zmq_errno()));
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->quit && !s->open_head) pthread_cond_wait(&s->open_cv, &s->mu);
        s_pending *p = s->quit ? NULL : s->open_head;
        if (p) s->open_head = p->qnext;
        pthread_mutex_unlock(&s->mu);
        if (!p) break;
        s_make_job(s, &p->msg, p->id, &p->job, &p->err);
        s_note nt = {'J', p};
        while (zmq_send(push, &nt, sizeof nt, 0) < 0 && zmq_errno() == EINTR) {
        }
    }
    zmq_close(push);
    return NULL;
}

/* ------------------------------------------------------------ lifecycle */

static eq_status s_parse_decl(s_decl *d, const char *arg, eq_err *err)
{
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg || !eq[1])
        return eq_err_set(err, EQ_ERR_INVALID, "--dataset '%s': expected NAME=PATH", arg);
    size_t nl = (size_t)(eq - arg);
    if (nl >= sizeof d->name)
        return eq_err_set(err, EQ_ERR_INVALID, "--dataset '%s': name longer than %zu bytes", arg,
                          sizeof d->name - 1);
    memcpy(d->name, arg, nl);
    d->name[nl] = 0;
    if (!s_valid_name(d->name))
        return eq_err_set(err, EQ_ERR_INVALID,
                          "--dataset '%s': name '%s' may hold only letters, digits and _ . : @ + -", arg, d->name);
    if (strlen(eq + 1) >= sizeof d->path)
        return eq_err_set(err, EQ_ERR_LIMIT, "--dataset '%s': path too long", arg);
    snprintf(d->path, sizeof d->path, "%s", eq + 1);
    eq_status st = eq_loader_detect(d->path, &d->kind, err);
    if (st) return eq_err_prefix(err, "--dataset %s: ", d->name);
    return EQ_OK;
}

static eq_status s_bind(eq_loader_server *s, void **sock, const char *ep, char *out, size_t cap,
                        const eq_loader_server_cfg *cfg, int64_t maxmsg, eq_err *err)
{
    eq_proto_sockopts o;
    eq_proto_sockopts_default(&o, &s->lim);
    o.maxmsgsize = maxmsg;
    if (!(*sock = eq_proto_socket(s->zctx, ZMQ_ROUTER, &o, err))) return err ? err->code : EQ_ERR_NET;
    eq_status st;
    if (cfg->curve_secret && (st = eq_proto_curve_server(*sock, cfg->zap, cfg->curve_secret, err))) return st;
    if ((st = eq_proto_bind(*sock, ep, out, cap, err))) return st;
    return EQ_OK;
}

eq_loader_server *eq_loader_server_new(void *zctx, const eq_loader_server_cfg *cfg, eq_err *err)
{
    if (!zctx || !cfg || !cfg->bind || !*cfg->bind) {
        eq_err_set(err, EQ_ERR_INVALID, "loader: a context and a bind endpoint are required");
        return NULL;
    }
    if (cfg->ndatasets == 0 || !cfg->datasets) {
        eq_err_set(err, EQ_ERR_INVALID, "loader: no dataset declared (--dataset NAME=PATH)");
        return NULL;
    }
    if (!!cfg->curve_secret != !!cfg->zap) {
        eq_err_set(err, EQ_ERR_INVALID, "loader: CURVE needs both a secret key and an allow-list");
        return NULL;
    }
    const char *ctl = cfg->control && *cfg->control ? cfg->control : NULL;
    if (!cfg->curve_secret && !cfg->insecure) {
        const char *bad = !eq_proto_endpoint_local(cfg->bind) ? cfg->bind : ctl && !eq_proto_endpoint_local(ctl) ? ctl : NULL;
        if (bad) {
            eq_err_set(err, EQ_ERR_INVALID,
                       "loader: refusing to bind %s (not loopback) without CURVE keys: give --curve-secret and "
                       "--curve-allow, or --insecure",
                       bad);
            return NULL;
        }
    }
    eq_loader_server *s = calloc(1, sizeof *s);
    if (!s) {
        eq_err_set(err, EQ_ERR_NOMEM, "loader: out of memory");
        return NULL;
    }
    s->zctx = zctx;
    s->pipe_fd[0] = s->pipe_fd[1] = -1;
    s->started_ms = eq_clock_ms();
    s->max_inflight = cfg->max_inflight_bytes ? cfg->max_inflight_bytes : (uint64_t)1 << 30;
    s->max_jobs = cfg->max_jobs ? cfg->max_jobs : 64;
    eq_proto_limits_default(&s->lim);
    s->lim.max_frames = 0; /* requests carry no payload */
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->ds_mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_cond_init(&s->open_cv, NULL);
    s->mu_ok = 1;

    if (!(s->decls = calloc(cfg->ndatasets, sizeof *s->decls)) ||
        !(s->jobs = calloc(s->max_jobs, sizeof *s->jobs))) {
        eq_err_set(err, EQ_ERR_NOMEM, "loader: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < cfg->ndatasets; i++) {
        if (s_parse_decl(&s->decls[i], cfg->datasets[i], err)) goto fail;
        for (size_t k = 0; k < i; k++)
            if (!strcmp(s->decls[k].name, s->decls[i].name)) {
                eq_err_set(err, EQ_ERR_INVALID, "--dataset %s: declared twice", s->decls[i].name);
                goto fail;
            }
        s->ndecls++;
        eq_info("loader: dataset %s = %s (%s)", s->decls[i].name, s->decls[i].path,
                eq_loader_kind_name(s->decls[i].kind));
    }
    if (pipe(s->pipe_fd) != 0) {
        eq_err_set(err, EQ_ERR_IO, "loader: pipe: %s", strerror(errno));
        goto fail;
    }
    for (int i = 0; i < 2; i++) {
        fcntl(s->pipe_fd[i], F_SETFL, fcntl(s->pipe_fd[i], F_GETFL) | O_NONBLOCK);
        fcntl(s->pipe_fd[i], F_SETFD, FD_CLOEXEC);
    }
    /* Requests are small: a peer that sends a big frame is cut off by
     * ZeroMQ before we read it. */
    if (s_bind(s, &s->data, cfg->bind, s->endpoint, sizeof s->endpoint, cfg, 1 << 20, err) ||
        (ctl && s_bind(s, &s->ctl, ctl, s->ctl_endpoint, sizeof s->ctl_endpoint, cfg, S_CTL_MAX, err)))
        goto fail;

    snprintf(s->done_endpoint, sizeof s->done_endpoint, "inproc://eq-loader-done-%p", (void *)s);
    eq_proto_sockopts o;
    eq_proto_sockopts_default(&o, NULL);
    o.rcvhwm = 0; /* never block a worker */
    o.maxmsgsize = -1;
    if (!(s->done = eq_proto_socket(zctx, ZMQ_PULL, &o, err)) ||
        eq_proto_bind(s->done, s->done_endpoint, NULL, 0, err))
        goto fail;

    s->nworkers = cfg->threads > 0 ? cfg->threads : eq_cpu_count();
    if (!(s->workers = calloc((size_t)s->nworkers, sizeof *s->workers))) {
        eq_err_set(err, EQ_ERR_NOMEM, "loader: out of memory");
        goto fail;
    }
    for (int i = 0; i < s->nworkers; i++) {
        s->workers[i].s = s;
        s->workers[i].index = i;
        int rc = pthread_create(&s->workers[i].thread, NULL, s_worker_main, &s->workers[i]);
        if (rc != 0) {
            eq_err_set(err, EQ_ERR_INTERNAL, "loader: cannot start worker %d: %s", i, strerror(rc));
            goto fail;
        }
        s->workers[i].started = 1;
    }
    {
        int rc = pthread_create(&s->opener, NULL, s_opener_main, s);
        if (rc != 0) {
            eq_err_set(err, EQ_ERR_INTERNAL, "loader: cannot start the job opener: %s", strerror(rc));
            goto fail;
        }
        s->opener_started = 1;
    }
    /* Synchronous start: every thread is connected when we return. */
    pthread_mutex_lock(&s->mu);
    while (s->ready < s->nworkers + 1) pthread_cond_wait(&s->cv, &s->mu);
    int failed = s->failed;
    pthread_mutex_unlock(&s->mu);
    if (failed) {
        eq_err_set(err, EQ_ERR_INTERNAL, "loader: %d of %d threads could not start (see the log)", failed,
                   s->nworkers + 1);
        goto fail;
    }
    eq_info("loader: serving on %s%s%s with %d workers", s->endpoint, ctl ? ", control on " : "",
            ctl ? s->ctl_endpoint : "", s->nworkers);
    return s;
fail:
    eq_loader_server_destroy(&s);
    return NULL;
}

const char *eq_loader_server_endpoint(const eq_loader_server *s)
{
    return s->endpoint;
}

const char *eq_loader_server_control_endpoint(const eq_loader_server *s)
{
    return s->ctl_endpoint;
}

void eq_loader_server_stop(eq_loader_server *s)
{
    char c = 's';
    if (s && s->pipe_fd[1] >= 0) {
        ssize_t r = write(s->pipe_fd[1], &c, 1);
        (void)r; /* a full pipe already says "stop" */
    }
}

void eq_loader_server_destroy(eq_loader_server **self_p)
{
    if (!self_p || !*self_p) return;
    eq_loader_server *s = *self_p;
    s_workers_stop(s);
    /* Requests still queued (run was not called, or stopped early). */
    for (s_req *r = s->head, *nx; r; r = nx) {
        nx = r->next;
        s_req_free(r);
    }
    /* Notes not read (the threads are stopped): requests are freed here,
     * jobs being opened below through s->pending, which owns them. */
    s_note nt;
    while (s->done && zmq_recv(s->done, &nt, sizeof nt, ZMQ_DONTWAIT) == (int)sizeof nt)
        if (nt.tag == 'R') s_req_free(nt.ptr);
    s->open_head = NULL;
    for (s_pending *p = s->pending, *nx; p; p = nx) {
        nx = p->next;
        s_job_free(p->job);
        free(p->waiters);
        free(p);
    }
    eq_proto_socket_close(&s->data);
    eq_proto_socket_close(&s->ctl);
    eq_proto_socket_close(&s->done);
    for (size_t i = 0; i < s->njobs; i++) s_job_free(s->jobs[i]);
    free(s->jobs);
    for (size_t i = 0; i < s->ndecls; i++)
        for (int k = 0; k < s->decls[i].nopen; k++) eq_dataset_destroy(&s->decls[i].open[k].ds);
    free(s->decls);
    for (int i = 0; i < 2; i++)
        if (s->pipe_fd[i] >= 0) close(s->pipe_fd[i]);
    if (s->mu_ok) {
        pthread_mutex_destroy(&s->mu);
        pthread_mutex_destroy(&s->ds_mu);
        pthread_cond_destroy(&s->cv);
        pthread_cond_destroy(&s->open_cv);
    }
    free(s);
    *self_p = NULL;
}

void eq_loader_server_stats(const eq_loader_server *s, eq_loader_stats *out)
{
    const uint64_t *src = (const uint64_t *)&s->st;
    uint64_t *dst = (uint64_t *)out;
    for (size_t i = 0; i < sizeof *out / sizeof(uint64_t); i++) dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

/* --------------------------------------------------------------- replies */

static void s_send_error_req(eq_loader_server *s, const eq_proto_peer *to, bool has_req, uint64_t req,
                             eq_status code, const char *msg)
{
    eq_err e = {0};
    S_ADD(s, errors_sent, 1);
    eq_debug("loader: ERROR to peer: %s", msg);
    /* Never block the loop on a peer that does not read its replies. */
    eq_msg m;
    eq_proto_make_error(&m, has_req, req, code, msg);
    if (eq_proto_send(s->data, to, &m, NULL, 0, ZMQ_DONTWAIT, &e) != EQ_OK) {
        S_ADD(s, dropped, 1);
        eq_debug("loader: cannot send ERROR: %s", e.msg);
    }
}

static void s_send_error(eq_loader_server *s, const eq_proto_peer *to, const eq_msg *req, eq_status code,
                         const char *msg)
{
    s_send_error_req(s, to, req ? req->has_req : false, req ? req->req : 0, code, msg);
}

static void s_reply(eq_loader_server *s, const eq_proto_peer *to, const eq_msg *m)
{
    eq_err e = {0};
    if (eq_proto_send(s->data, to, m, NULL, 0, ZMQ_DONTWAIT, &e) != EQ_OK) {
        S_ADD(s, dropped, 1);
        eq_debug("loader: cannot send %s: %s", eq_msg_type_name(m->type), e.msg);
    }
}

static void s_hello(eq_loader_server *s, const eq_proto_recvd *r)
{
    eq_msg m;
    eq_proto_msg_init(&m, EQ_MSG_HELLO);
    eq_msg_hello *h = &m.u.hello;
    char host[64] = "host";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    for (char *p = host; *p; p++)
        if (!s_valid_name((char[]){*p, 0})) *p = '_';
    snprintf(h->role, sizeof h->role, "loader");
    snprintf(h->name, sizeof h->name, "%.40s:%ld", host, (long)getpid());
    h->versions[0] = EQ_PROTO_VERSION;
    h->nversions = 1;
    snprintf(h->software, sizeof h->software, "eq %s", PACKAGE_VERSION);
    snprintf(h->caps[0], sizeof h->caps[0], "batch");
    h->ncaps = 1;
    m.has_req = r->msg.has_req;
    m.req = r->msg.req;
    s_reply(s, &r->from, &m);
    eq_proto_msg_reset(&m);
}

/* --------------------------------------------------------------- JOB */

static const eq_dataset *s_dataset(eq_loader_server *s, s_decl *d, const char *split, eq_err *err)
{
    for (int k = 0; k < d->nopen; k++)
        if (!strcmp(d->open[k].split, split)) return d->open[k].ds;
    if (d->nopen == S_MAX_SPLITS) {
        eq_err_set(err, EQ_ERR_LIMIT, "dataset '%s': more than %d splits asked for", d->name, S_MAX_SPLITS);
        return NULL;
    }
    uint64_t t0 = eq_clock_ms();
    eq_dataset *ds = eq_loader_open(d->path, d->kind, split, s->nworkers, err);
    if (!ds) {
        eq_err_prefix(err, "dataset '%s' split '%s': ", d->name, split);
        return NULL;
    }
    eq_info("loader: opened %s/%s: %zu samples, %u classes in %" PRIu64 " ms", d->name, split,
            eq_dataset_size(ds), eq_dataset_num_classes(ds), eq_clock_ms() - t0);
    pthread_mutex_lock(&s->ds_mu);
    snprintf(d->open[d->nopen].split, sizeof d->open[0].split, "%s", split);
    d->open[d->nopen].ds = ds;
    d->nopen++;
    pthread_mutex_unlock(&s->ds_mu);
    return ds;
}

static s_job *s_find_job(eq_loader_server *s, const char *id)
{
    for (size_t i = 0; i < s->njobs; i++)
        if (!strcmp(s->jobs[i]->id, id)) {
            s->jobs[i]->used = ++s->tick;
            return s->jobs[i];
        }
    return NULL;
}

/* Make room in the job table: evict the least recently used idle job. */
static int s_evict(eq_loader_server *s)
{
    size_t best = s->njobs;
    for (size_t i = 0; i < s->njobs; i++)
        if (s->jobs[i]->refs == 0 && (best == s->njobs || s->jobs[i]->used < s->jobs[best]->used)) best = i;
    if (best == s->njobs) return -1;
    eq_info("loader: forgetting job %s (least recently used)", s->jobs[best]->id);
    s_job_free(s->jobs[best]);
    s->jobs[best] = s->jobs[--s->njobs];
    return 0;
}

/* A job whose epoch has no step (last=drop with G larger than the split)
 * is refused at JOB time, naming why, instead of every BATCH_REQ saying
 * "step 0 >= 0 steps per epoch". */
static eq_status s_job_has_steps(const s_job *j, uint64_t n, eq_err *err)
{
    if (s_job_steps(j) > 0) return EQ_OK;
    return eq_err_set(err, EQ_ERR_INVALID,
                      "JOB: global_batch %u is larger than the %" PRIu64 " samples of '%s' split '%s' and last is "
                      "'drop': an epoch has no step (use a smaller global batch, or last 'wrap' or 'partial')",
                      j->job.global_batch, n, j->job.dataset, j->job.split);
}

static eq_status s_make_job(eq_loader_server *s, const eq_msg *m, const char *id, s_job **out, eq_err *err)
{
    const eq_msg_job *jm = &m->u.job;
    s_decl *d = NULL;
    for (size_t i = 0; i < s->ndecls; i++)
        if (!strcmp(s->decls[i].name, jm->dataset)) d = &s->decls[i];
    if (!d) {
        char names[256] = "";
        size_t off = 0;
        for (size_t i = 0; i < s->ndecls && off < sizeof names; i++)
            off += (size_t)snprintf(names + off, sizeof names - off, "%s%s", i ? ", " : "", s->decls[i].name);
        return eq_err_set(err, EQ_ERR_NOTFOUND, "JOB: dataset '%s' is not served by this loader (it serves: %s)",
                          jm->dataset, names);
    }
    s_job *j = calloc(1, sizeof *j);
    if (!j) return eq_err_set(err, EQ_ERR_NOMEM, "JOB: out of memory");
    eq_status st;
    if (d->kind == EQ_DS_COCO) {
        if ((st = eq_loader_det_job(jm, &j->dcfg, err))) goto fail;
        if (!(j->ds = s_dataset(s, d, jm->split, err))) {
            st = err ? err->code : EQ_ERR_INVALID;
            goto fail;
        }
        if (!(j->det = eq_det_new(eq_dataset_coco(j->ds), eq_dataset_root(j->ds), &j->dcfg, err))) {
            st = err ? err->code : EQ_ERR_INVALID;
            eq_err_prefix(err, "JOB: ");
            goto fail;
        }
        j->H = j->W = eq_det_max_side(j->det);
        j->C = 3;
        if (!(j->sampler = eq_sampler_new(&j->dcfg.sampler, eq_det_size(j->det), err))) {
            st = err ? err->code : EQ_ERR_INVALID;
            goto fail;
        }
        snprintf(j->id, sizeof j->id, "%s", id);
        j->job = *jm;
        j->decl = d;
        eq_loader_det_fingerprint(&j->dcfg, j->fingerprint, sizeof j->fingerprint);
        if ((st = s_job_has_steps(j, eq_det_size(j->det), err))) goto fail;
        *out = j;
        return EQ_OK;
    }
    if ((st = eq_loader_job_pipeline(jm, &j->cfg, err))) goto fail;
    if (!(j->ds = s_dataset(s, d, jm->split, err))) {
        st = err ? err->code : EQ_ERR_INVALID;
        goto fail;
    }
    if (!(j->pipe = eq_pipeline_new(j->ds, &j->cfg, 1, err))) {
        st = err ? err->code : EQ_ERR_INVALID;
        eq_err_prefix(err, "JOB: ");
        goto fail;
    }
    eq_pipeline_geometry(j->pipe, &j->H, &j->W, &j->C);
    if (j->H != jm->height || j->W != jm->width || j->C != jm->channels) {
        st = eq_err_set(err, EQ_ERR_INVALID,
                        "JOB: asks for %ux%ux%u (height x width x channels) but dataset '%s' gives %ux%ux%u with "
                        "this pipeline",
                        jm->height, jm->width, jm->channels, d->name, j->H, j->W, j->C);
        goto fail;
    }
    if (!(j->sampler = eq_sampler_new(&j->cfg.sampler, eq_dataset_size(j->ds), err))) {
        st = err ? err->code : EQ_ERR_INVALID;
        goto fail;
    }
    snprintf(j->id, sizeof j->id, "%s", id);
    j->job = *jm;
    j->decl = d;
    eq_loader_pipeline_fingerprint(&j->cfg, j->fingerprint, sizeof j->fingerprint);
    if ((st = s_job_has_steps(j, eq_dataset_size(j->ds), err))) goto fail;
    *out = j;
    return EQ_OK;
fail:
    s_job_free(j);
    return st;
}

static void s_job_ok(eq_loader_server *s, const eq_proto_peer *to, bool has_req, uint64_t req, const s_job *j)
{
    eq_msg m;
    eq_proto_msg_init(&m, EQ_MSG_JOB_OK);
    m.has_req = has_req;
    m.req = req;
    eq_msg_job_ok *ok = &m.u.job_ok;
    eq_ds_fingerprint fp = eq_dataset_fingerprint(j->ds);
    snprintf(ok->job, sizeof ok->job, "%s", j->id);
    ok->size = eq_dataset_size(j->ds);
    ok->classes = eq_dataset_num_classes(j->ds);
    ok->data_count = fp.count;
    snprintf(ok->data_hash, sizeof ok->data_hash, "%016" PRIx64, fp.hash);
    snprintf(ok->pipeline, sizeof ok->pipeline, "%s", j->fingerprint);
    if (j->det) {
        /* served images, and the class mapping appended to the header */
        ok->size = eq_det_size(j->det);
        const eq_cocoidx *x = eq_det_index(j->det);
        const char **names = eq_malloc_array(x->n_cat + 1, sizeof *names);
        uint8_t *hdr = NULL;
        size_t len = 0;
        eq_err e = {0};
        if (names)
            for (uint32_t k = 0; k < x->n_cat; k++) names[k] = eq_cocoidx_cat_name(x, k);
        if (!names || eq_proto_det_job_ok_encode(&m, x->cat_id, names, x->n_cat, &hdr, &len, &e) != EQ_OK ||
            zmq_send(s->data, to->id, to->len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
            zmq_send(s->data, hdr, len, ZMQ_DONTWAIT) < 0) {
            S_ADD(s, dropped, 1);
            eq_debug("loader: cannot send JOB_OK: %s", names ? e.msg : "out of memory");
        }
        free(names);
        free(hdr);
        eq_proto_msg_reset(&m);
        return;
    }
    s_reply(s, to, &m);
    eq_proto_msg_reset(&m);
}

static void s_on_job(eq_loader_server *s, const eq_proto_recvd *r)
{
    eq_err e = {0};
    char id[EQ_PROTO_ID_CAP];
    if (eq_proto_job_id(&r->msg, id, &e) != EQ_OK) {
        s_send_error(s, &r->from, &r->msg, EQ_ERR_INVALID, e.msg);
        return;
    }
    s_job *j = s_find_job(s, id);
    if (j) {
        s_job_ok(s, &r->from, r->msg.has_req, r->msg.req, j);
        return;
    }
    /* New: the opener sets it up; the reply goes out when it is done (the
     * same job asked again meanwhile waits for the same result). */
    s_pending *p;
    for (p = s->pending; p && strcmp(p->id, id); p = p->next) {
    }
    if (!p) {
        if (!(p = calloc(1, sizeof *p))) {
            s_send_error(s, &r->from, &r->msg, EQ_ERR_NOMEM, "JOB: out of memory");
            return;
        }
        snprintf(p->id, sizeof p->id, "%s", id);
        p->msg = r->msg;
        p->next = s->pending;
        s->pending = p;
        pthread_mutex_lock(&s->mu);
        s_pending **tail = &s->open_head;
        while (*tail) tail = &(*tail)->qnext;
        *tail = p;
        pthread_cond_signal(&s->open_cv);
        pthread_mutex_unlock(&s->mu);
    }
    /* Every rank of a run sends the same JOB at start-up, while a big
     * ImageFolder is still being walked: a JOB error is fatal to a trainer,
     * so the list grows (it held 16 before: the 17th rank failed). */
    if (p->nwait == p->capwait) {
        int nc = p->capwait ? 2 * p->capwait : 16;
        struct s_waiter *nw = nc <= S_MAX_WAITERS ? realloc(p->waiters, (size_t)nc * sizeof *nw) : NULL;
        if (!nw) {
            s_send_error(s, &r->from, &r->msg, EQ_ERR_LIMIT, "JOB: this job is being opened; retry later");
            return;
        }
        p->waiters = nw;
        p->capwait = nc;
    }
    p->waiters[p->nwait].peer = r->from;
    p->waiters[p->nwait].has_req = r->msg.has_req;
    p->waiters[p->nwait++].req = r->msg.req;
}

/* The opener's result for a pending job: into the table, then the replies. */
static void s_job_opened(eq_loader_server *s, s_pending *p)
{
    s_pending **pp = &s->pending;
    while (*pp && *pp != p) pp = &(*pp)->next;
    if (*pp) *pp = p->next;
    s_job *j = p->job;
    p->job = NULL;
    if (j && s->njobs == s->max_jobs && s_evict(s) != 0) {
        s_job_free(j);
        j = NULL;
        eq_err_set(&p->err, EQ_ERR_LIMIT, "JOB: job table full and every job has requests in flight; retry later");
    }
    if (j) {
        j->used = ++s->tick;
        s->jobs[s->njobs++] = j;
        S_SET(s, jobs, s->njobs);
        eq_info("loader: job %s: %s/%s %ux%ux%u G=%u seed=%" PRIu64 ", %" PRIu64 " steps per epoch", j->id,
                j->job.dataset, j->job.split, j->H, j->W, j->C, j->job.global_batch, j->job.seed, s_job_steps(j));
    } else {
        eq_warn("loader: JOB refused: %s", p->err.msg);
    }
    for (int i = 0; i < p->nwait; i++) {
        if (j)
            s_job_ok(s, &p->waiters[i].peer, p->waiters[i].has_req, p->waiters[i].req, j);
        else
            s_send_error_req(s, &p->waiters[i].peer, p->waiters[i].has_req, p->waiters[i].req,
                             p->err.code ? p->err.code : EQ_ERR_INTERNAL, p->err.msg);
    }
    free(p->waiters);
    free(p);
}

/* ------------------------------------------------------------ BATCH_REQ */

static void s_batch_req(eq_loader_server *s, const eq_proto_recvd *r)
{
    const eq_msg_batch_req *q = &r->msg.u.batch_req;
    char msg[EQ_ERR_MSG_LEN + 64];
    s_job *j = s_find_job(s, q->job);
    if (!j) {
        snprintf(msg, sizeof msg, "BATCH_REQ: unknown job '%s': send the JOB again", q->job);
        s_send_error(s, &r->from, &r->msg, EQ_ERR_NOTFOUND, msg);
        return;
    }
    const size_t per = (size_t)j->H * j->W * j->C;
    uint64_t bytes = (uint64_t)q->count * (per + sizeof(int32_t));
    /* The sampler refuses count > G; check before allocating for it. */
    if (q->count > j->job.global_batch || (uint64_t)q->offset + q->count > j->job.global_batch) {
        snprintf(msg, sizeof msg, "BATCH_REQ: offset %u + count %u exceeds the global batch %u", q->offset, q->count,
                 j->job.global_batch);
        s_send_error(s, &r->from, &r->msg, EQ_ERR_INVALID, msg);
        return;
    }
    if (s_mixing(j)) {
        /* Partners are drawn inside blocks, and a BATCH names partners by
         * position within itself: a request covers whole blocks. */
        const eq_mix_cfg *mc = &j->cfg.mix;
        uint32_t B = mc->block ? mc->block : j->job.global_batch;
        if (q->offset % B || q->count % B) {
            snprintf(msg, sizeof msg,
                     "BATCH_REQ: job %s mixes inside blocks of %u positions: offset %u and count %u must be "
                     "multiples of %u",
                     j->id, B, q->offset, q->count, B);
            s_send_error(s, &r->from, &r->msg, EQ_ERR_INVALID, msg);
            return;
        }
        if (mc->mixup_alpha > 0 && mc->cutmix_alpha > 0 && q->count != B) {
            snprintf(msg, sizeof msg,
                     "BATCH_REQ: job %s has mixup and cutmix on (one kind per block): count %u must be one block "
                     "(%u)",
                     j->id, q->count, B);
            s_send_error(s, &r->from, &r->msg, EQ_ERR_INVALID, msg);
            return;
        }
    }
    if (bytes > s->max_inflight) {
        /* Never servable: LIMIT would make a requester retry for ever. */
        snprintf(msg, sizeof msg,
                 "BATCH_REQ: count %u asks for %" PRIu64 " bytes, more than this loader's whole budget of %" PRIu64
                 " bytes in flight (--max-inflight-mb): ask for fewer samples",
                 q->count, bytes, s->max_inflight);
        s_send_error(s, &r->from, &r->msg, EQ_ERR_INVALID, msg);
        return;
    }
    uint64_t inflight = __atomic_load_n(&s->st.inflight_bytes, __ATOMIC_RELAXED);
    if (inflight + bytes > s->max_inflight) {
        snprintf(msg, sizeof msg,
                 "BATCH_REQ: loader busy: %" PRIu64 " bytes in flight + %" PRIu64 " asked > budget %" PRIu64
                 "; retry later or ask for fewer samples",
                 inflight, bytes, s->max_inflight);
        s_send_error(s, &r->from, &r->msg, EQ_ERR_LIMIT, msg);
        return;
    }
    s_req *rq = calloc(1, sizeof *rq);
    eq_err e = {0};
    if (!rq || !(rq->indices = eq_malloc_array(q->count, sizeof *rq->indices))) {
        s_req_free(rq);
        s_send_error(s, &r->from, &r->msg, EQ_ERR_NOMEM, "BATCH_REQ: out of memory");
        return;
    }
    uint32_t n = 0;
    if (eq_sampler_range(j->sampler, q->epoch, q->step, q->offset, q->count, rq->indices, &n, &e) != EQ_OK) {
        s_req_free(rq);
        snprintf(msg, sizeof msg, "BATCH_REQ: %s", e.msg);
        s_send_error(s, &r->from, &r->msg, e.code, msg);
        return;
    }
    if (n == 0) {
        s_req_free(rq);
        snprintf(msg, sizeof msg, "BATCH_REQ: positions %u..%u of step %" PRIu64 " are past the end of the epoch",
                 q->offset, q->offset + q->count - 1, q->step);
        s_send_error(s, &r->from, &r->msg, EQ_ERR_INVALID, msg);
        return;
    }
    rq->n = n;
    rq->per = per;
    rq->labels = eq_malloc_array(n, sizeof *rq->labels);
    rq->rep = calloc(n, 1);
    if (j->det)
        rq->dsamples = eq_calloc_array(n, sizeof *rq->dsamples);
    else
        rq->images = eq_malloc_array(n, per);
    if (!rq->labels || !rq->rep || (!rq->images && !rq->dsamples)) {
        s_req_free(rq);
        s_send_error(s, &r->from, &r->msg, EQ_ERR_NOMEM, "BATCH_REQ: out of memory for the batch");
        return;
    }
    if (s_mixing(j) &&
        (!(rq->mix_index = eq_malloc_array(n, sizeof *rq->mix_index)) ||
         !(rq->mix_lambda = eq_malloc_array(n, sizeof *rq->mix_lambda)) ||
         !(rq->mix_mode = eq_malloc_array(n, sizeof *rq->mix_mode)) ||
         !(rq->partner = eq_malloc_array(n, sizeof *rq->partner)))) {
        s_req_free(rq);
        s_send_error(s, &r->from, &r->msg, EQ_ERR_NOMEM, "BATCH_REQ: out of memory for the mix plan");
        return;
    }
    for (uint32_t i = 0; i < n && !j->det; i++) rq->labels[i] = eq_dataset_label(j->ds, rq->indices[i]);
    rq->peer = r->from;
    rq->req = r->msg.req;
    rq->job = j;
    rq->epoch = q->epoch;
    rq->step = q->step;
    rq->offset = q->offset;
    rq->deadline_ns = q->deadline_ms ? eq_clock_ns() + (uint64_t)q->deadline_ms * 1000000u : 0;
    j->refs++;
    S_ADD(s, inflight_bytes, bytes);
    pthread_mutex_lock(&s->mu);
    if (s->tail)
        s->tail->next = rq;
    else
        s->head = rq;
    s->tail = rq;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* The frames of a detection BATCH (proto/det.h), zero-copy: the arrays
 * move from the request's batch to ZeroMQ. */
static void s_send_det(eq_loader_server *s, s_req *rq, eq_msg *m)
{
    eq_det_batch *db = &rq->dbatch;
    eq_err e = {0};
    int64_t n = db->n, nb = db->nbox;
    struct {
        const char *name;
        eq_dtype dt;
        int ndim;
        int64_t d[4];
        void **ptr;
        size_t bytes;
    } f[14] = {
        {"images", EQ_DT_U8, 4, {n, db->H, db->W, 3}, (void **)&db->images, (size_t)n * db->H * db->W * 3},
        {"labels", EQ_DT_I64, 1, {n}, (void **)&db->image_ids, (size_t)n * 8},
        {"sizes", EQ_DT_I32, 2, {n, 2}, (void **)&db->sizes, (size_t)n * 8},
        {"scales", EQ_DT_F32, 2, {n, 2}, (void **)&db->scales, (size_t)n * 8},
        {"flipped", EQ_DT_U8, 1, {n}, (void **)&db->flipped, (size_t)n},
        {"dropped", EQ_DT_I32, 1, {n}, (void **)&db->dropped, (size_t)n * 4},
        {"box_offsets", EQ_DT_I32, 1, {n + 1}, (void **)&db->box_off, (size_t)(n + 1) * 4},
        {"boxes", EQ_DT_F32, 2, {nb, 4}, (void **)&db->boxes, (size_t)nb * 16},
        {"classes", EQ_DT_I32, 1, {nb}, (void **)&db->classes, (size_t)nb * 4},
        {"crowd", EQ_DT_U8, 1, {nb}, (void **)&db->crowd, (size_t)nb},
        {"mask_kind", EQ_DT_U8, 1, {nb}, (void **)&db->mask_kind, (size_t)nb},
        {"mask_rects", EQ_DT_I32, 2, {nb, 4}, (void **)&db->mask_rect, (size_t)nb * 16},
        {"mask_offsets", EQ_DT_I64, 1, {nb + 1}, (void **)&db->mask_off, (size_t)(nb + 1) * 8},
        {"mask_data", EQ_DT_U8, 1, {(int64_t)db->mask_bytes}, (void **)&db->mask_data, (size_t)db->mask_bytes},
    };
    int nf = db->masks ? 14 : 10;
    eq_proto_payload pay[14];
    for (int i = 0; i < nf; i++) {
        if (eq_proto_add_frame(m, f[i].name, f[i].dt, f[i].ndim, f[i].d, &e)) {
            eq_error("loader: cannot describe a detection batch: %s", e.msg);
            eq_proto_msg_reset(m);
            return;
        }
        pay[i] = (eq_proto_payload){*f[i].ptr, f[i].bytes, s_free_cb, NULL};
    }
    for (int i = 0; i < nf; i++) *f[i].ptr = NULL; /* ZeroMQ owns them now, sent or not */
    uint64_t bytes = 0;
    for (int i = 0; i < nf; i++) bytes += pay[i].size;
    if (eq_proto_send(s->data, &rq->peer, m, pay, (size_t)nf, ZMQ_DONTWAIT, &e) != EQ_OK) {
        S_ADD(s, dropped, 1);
        eq_debug("loader: BATCH for request %" PRIu64 " not sent: %s", rq->req, e.msg);
    } else {
        S_ADD(s, batches_sent, 1);
        S_ADD(s, samples_sent, rq->n);
        S_ADD(s, bytes_sent, bytes);
    }
    eq_proto_msg_reset(m);
}

/* A finished request: send its BATCH (zero-copy) and release it. */
static void s_finish(eq_loader_server *s, s_req *rq)
{
    s_job *j = rq->job;
    uint64_t bytes = (uint64_t)rq->n * (rq->per + sizeof(int32_t));
    eq_err e = {0};
    if (__atomic_load_n(&rq->expired, __ATOMIC_RELAXED)) {
        S_ADD(s, expired, 1);
        eq_debug("loader: request %" PRIu64 " of job %s expired", rq->req, j->id);
        goto out;
    }
    /* The BATCH's `mix`: one kind for the whole batch (the JOB and request
     * checks rule out both in one batch); absent when nothing is mixed. */
    const char *mix = NULL;
    if (rq->mix_index && !rq->mix_err.code) {
        int kinds = 0;
        for (uint32_t i = 0; i < rq->n; i++) kinds |= 1 << rq->mix_mode[i];
        if ((kinds & (1 << EQ_MIX_MIXUP)) && (kinds & (1 << EQ_MIX_CUTMIX)))
            eq_err_set(&rq->mix_err, EQ_ERR_INTERNAL, "mix: batch holds both mixup and cutmix samples");
        else if (kinds & (1 << EQ_MIX_CUTMIX))
            mix = "cutmix";
        else if (kinds & (1 << EQ_MIX_MIXUP))
            mix = "mixup";
    }
    if (rq->mix_err.code) {
        char emsg[EQ_ERR_MSG_LEN + 64];
        eq_error("loader: request %" PRIu64 " of job %s: %s", rq->req, j->id, rq->mix_err.msg);
        snprintf(emsg, sizeof emsg, "BATCH_REQ: %s", rq->mix_err.msg);
        s_send_error_req(s, &rq->peer, true, rq->req, rq->mix_err.code, emsg);
        goto out;
    }
    if (rq->det_err.code) {
        char emsg[EQ_ERR_MSG_LEN + 64];
        snprintf(emsg, sizeof emsg, "BATCH_REQ: %s", rq->det_err.msg);
        s_send_error_req(s, &rq->peer, true, rq->req, rq->det_err.code, emsg);
        goto out;
    }
    eq_msg m;
    eq_proto_msg_init(&m, EQ_MSG_BATCH);
    m.has_req = true;
    m.req = rq->req;
    eq_msg_batch *b = &m.u.batch;
    snprintf(b->job, sizeof b->job, "%s", j->id);
    b->epoch = rq->epoch;
    b->step = rq->step;
    b->offset = rq->offset;
    b->count = rq->n;
    uint32_t nrep = 0;
    for (uint32_t i = 0; i < rq->n; i++) nrep += rq->rep[i] != 0;
    if (nrep) {
        uint32_t *pos = eq_malloc_array(nrep, sizeof *pos);
        if (pos) {
            uint32_t k = 0;
            for (uint32_t i = 0; i < rq->n; i++)
                if (rq->rep[i]) pos[k++] = i;
            eq_proto_batch_set_replaced(&m, pos, nrep, NULL);
            free(pos);
        }
        S_ADD(s, replaced, nrep);
    }
    if (j->det) {
        s_send_det(s, rq, &m);
        goto out;
    }
    int64_t ish[4] = {rq->n, j->H, j->W, j->C}, lsh[1] = {rq->n};
    if (eq_proto_add_frame(&m, "images", EQ_DT_U8, 4, ish, &e) || eq_proto_add_frame(&m, "labels", EQ_DT_I32, 1, lsh, &e)) {
        eq_error("loader: cannot describe a batch: %s", e.msg);
        eq_proto_msg_reset(&m);
        goto out;
    }
    eq_proto_payload pay[4] = {{rq->images, (size_t)rq->n * rq->per, s_free_cb, NULL},
                               {rq->labels, (size_t)rq->n * sizeof(int32_t), s_free_cb, NULL},
                               {rq->mix_index, (size_t)rq->n * sizeof(int32_t), s_free_cb, NULL},
                               {rq->mix_lambda, (size_t)rq->n * sizeof(float), s_free_cb, NULL}};
    int npay = 2;
    if (mix) {
        snprintf(b->mix, sizeof b->mix, "%s", mix);
        if (eq_proto_add_frame(&m, "mix_index", EQ_DT_I32, 1, lsh, &e) ||
            eq_proto_add_frame(&m, "mix_lambda", EQ_DT_F32, 1, lsh, &e)) {
            eq_error("loader: cannot describe a batch: %s", e.msg);
            eq_proto_msg_reset(&m);
            goto out;
        }
        npay = 4;
        rq->mix_index = NULL;
        rq->mix_lambda = NULL;
    }
    rq->images = NULL; /* ZeroMQ owns them now, sent or not */
    rq->labels = NULL;
    if (eq_proto_send(s->data, &rq->peer, &m, pay, npay, ZMQ_DONTWAIT, &e) != EQ_OK) {
        S_ADD(s, dropped, 1);
        eq_debug("loader: BATCH for request %" PRIu64 " not sent: %s", rq->req, e.msg);
    } else {
        S_ADD(s, batches_sent, 1);
        S_ADD(s, samples_sent, rq->n);
        S_ADD(s, bytes_sent, bytes);
    }
    eq_proto_msg_reset(&m);
out:
    j->refs--;
    __atomic_fetch_sub(&s->st.inflight_bytes, bytes, __ATOMIC_RELAXED);
    s_req_free(rq);
}

/* ------------------------------------------------------------- dispatch */

static void s_on_data(eq_loader_server *s, eq_proto_recvd *r)
{
    eq_err e = {0};
    eq_status st = eq_proto_recv(s->data, r, &s->lim, ZMQ_DONTWAIT, &e);
    if (st == EQ_ERR_TIMEOUT || st == EQ_ERR_INTERRUPTED) return;
    if (st == EQ_ERR_NET) {
        eq_warn("loader: receive: %s", e.msg);
        return;
    }
    S_ADD(s, received, 1);
    if (st != EQ_OK) {
        if (r->from.len == 0) {
            S_ADD(s, dropped, 1);
            eq_proto_recvd_close(r);
            return;
        }
        eq_debug("loader: bad message: %s", e.msg);
        s_send_error(s, &r->from, &r->msg, st, e.msg);
        eq_proto_recvd_close(r);
        return;
    }
    switch (r->msg.type) {
    case EQ_MSG_HELLO:
        S_ADD(s, hello, 1);
        s_hello(s, r);
        break;
    case EQ_MSG_JOB:
        S_ADD(s, job, 1);
        s_on_job(s, r);
        break;
    case EQ_MSG_BATCH_REQ:
        S_ADD(s, batch_req, 1);
        s_batch_req(s, r);
        break;
    default: {
        char msg[128];
        snprintf(msg, sizeof msg, "%s: a loader does not accept this message (expected HELLO, JOB, BATCH_REQ)",
                 eq_msg_type_name(r->msg.type));
        s_send_error(s, &r->from, &r->msg, EQ_ERR_PROTO, msg);
    }
    }
    eq_proto_recvd_close(r);
}

static void s_on_done(eq_loader_server *s)
{
    for (;;) {
        s_note nt;
        int n = zmq_recv(s->done, &nt, sizeof nt, ZMQ_DONTWAIT);
        if (n < 0) return;
        if (n != (int)sizeof nt || !nt.ptr) continue;
        if (nt.tag == 'R')
            s_finish(s, nt.ptr);
        else if (nt.tag == 'J')
            s_job_opened(s, nt.ptr);
    }
}

/* Append to a bounded buffer; returns the new offset (clamped). */
static size_t s_cat(char *buf, size_t cap, size_t off, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static size_t s_cat(char *buf, size_t cap, size_t off, const char *fmt, ...)
{
    if (off >= cap) return cap;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + off, cap - off, fmt, ap);
    va_end(ap);
    return n < 0 ? cap : off + (size_t)n >= cap ? cap : off + (size_t)n;
}

/* JSON string body: escapes quotes, backslashes and control bytes. */
static size_t s_cat_str(char *buf, size_t cap, size_t off, const char *v)
{
    off = s_cat(buf, cap, off, "\"");
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        if (*p == '"' || *p == '\\')
            off = s_cat(buf, cap, off, "\\%c", *p);
        else if (*p < 0x20)
            off = s_cat(buf, cap, off, "\\u%04x", *p);
        else
            off = s_cat(buf, cap, off, "%c", *p);
    }
    return s_cat(buf, cap, off, "\"");
}

static size_t s_status_json(eq_loader_server *s, char *b, size_t cap)
{
    eq_loader_stats st;
    eq_loader_server_stats(s, &st);
    size_t o = s_cat(b, cap, 0, "{\"ok\":true,\"role\":\"loader\",\"software\":\"eq %s\",\"pid\":%ld,", PACKAGE_VERSION,
                     (long)getpid());
    o = s_cat(b, cap, o, "\"endpoint\":");
    o = s_cat_str(b, cap, o, s->endpoint);
    o = s_cat(b, cap, o, ",\"uptime_s\":%.3f,\"workers\":%d,\"datasets\":[",
              (double)(eq_clock_ms() - s->started_ms) / 1000.0, s->nworkers);
    pthread_mutex_lock(&s->ds_mu);
    for (size_t i = 0; i < s->ndecls; i++) {
        const s_decl *d = &s->decls[i];
        o = s_cat(b, cap, o, "%s{\"name\":", i ? "," : "");
        o = s_cat_str(b, cap, o, d->name);
        o = s_cat(b, cap, o, ",\"path\":");
        o = s_cat_str(b, cap, o, d->path);
        o = s_cat(b, cap, o, ",\"kind\":\"%s\",\"open\":{", eq_loader_kind_name(d->kind));
        for (int k = 0; k < d->nopen; k++) {
            o = s_cat(b, cap, o, "%s", k ? "," : "");
            o = s_cat_str(b, cap, o, d->open[k].split);
            o = s_cat(b, cap, o, ":%zu", eq_dataset_size(d->open[k].ds));
        }
        o = s_cat(b, cap, o, "}}");
    }
    pthread_mutex_unlock(&s->ds_mu);
    size_t opening = 0;
    for (const s_pending *p = s->pending; p; p = p->next) opening++;
    o = s_cat(b, cap, o, "],\"opening\":%zu,\"jobs\":[", opening);
    for (size_t i = 0; i < s->njobs; i++) {
        const s_job *j = s->jobs[i];
        o = s_cat(b, cap, o, "%s{\"id\":\"%s\",\"dataset\":", i ? "," : "", j->id);
        o = s_cat_str(b, cap, o, j->job.dataset);
        o = s_cat(b, cap, o, ",\"split\":");
        o = s_cat_str(b, cap, o, j->job.split);
        o = s_cat(b, cap, o, ",\"shape\":[%u,%u,%u],\"global_batch\":%u,\"steps\":%" PRIu64 ",\"in_flight\":%d}", j->H,
                  j->W, j->C, j->job.global_batch, s_job_steps(j), j->refs);
    }
    o = s_cat(b, cap, o,
              "],\"received\":%" PRIu64 ",\"hello\":%" PRIu64 ",\"job\":%" PRIu64 ",\"batch_req\":%" PRIu64
              ",\"batches_sent\":%" PRIu64 ",\"samples_sent\":%" PRIu64 ",\"bytes_sent\":%" PRIu64
              ",\"replaced\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"dropped\":%" PRIu64 ",\"expired\":%" PRIu64
              ",\"inflight_bytes\":%" PRIu64 "}",
              st.received, st.hello, st.job, st.batch_req, st.batches_sent, st.samples_sent, st.bytes_sent, st.replaced,
              st.errors_sent, st.dropped, st.expired, st.inflight_bytes);
    return o;
}

/* Control: [identity][command] -> [identity][JSON]. */
static void s_on_ctl(eq_loader_server *s)
{
    zmq_msg_t id, part;
    zmq_msg_init(&id);
    if (zmq_msg_recv(&id, s->ctl, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&id);
        return;
    }
    char cmd[64] = "";
    int nparts = 0, more = zmq_msg_more(&id);
    size_t cmdlen = 0;
    while (more) {
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, s->ctl, 0) < 0) {
            zmq_msg_close(&part);
            break;
        }
        if (nparts++ == 0) {
            cmdlen = zmq_msg_size(&part);
            if (cmdlen < sizeof cmd) {
                memcpy(cmd, zmq_msg_data(&part), cmdlen);
                cmd[cmdlen] = 0;
            }
        }
        more = zmq_msg_more(&part);
        zmq_msg_close(&part);
    }
    size_t cap = 65536;
    char *out = malloc(cap);
    if (!out) {
        zmq_msg_close(&id);
        return;
    }
    size_t n;
    if (nparts == 1 && cmdlen < sizeof cmd && memchr(cmd, 0, cmdlen) == NULL && !strcmp(cmd, "status")) {
        n = s_status_json(s, out, cap);
    } else if (nparts == 1 && cmdlen < sizeof cmd && !strcmp(cmd, "stop")) {
        n = (size_t)snprintf(out, cap, "{\"ok\":true,\"stopping\":true}");
        eq_info("loader: stop requested on the control socket");
        s->stopping = 1;
    } else {
        size_t o = s_cat(out, cap, 0, "{\"ok\":false,\"error\":");
        char why[160];
        if (nparts != 1)
            snprintf(why, sizeof why, "expected one frame holding a command, got %d", nparts);
        else if (cmdlen >= sizeof cmd)
            snprintf(why, sizeof why, "command of %zu bytes is too long (expected status or stop)", cmdlen);
        else {
            char safe[sizeof cmd];
            size_t k = 0;
            for (; k < cmdlen; k++) safe[k] = (cmd[k] >= 0x20 && cmd[k] < 0x7f) ? cmd[k] : '?'; /* NUL too */
            safe[k] = 0;
            snprintf(why, sizeof why, "unknown command '%s' (expected status or stop)", safe);
        }
        o = s_cat_str(out, cap, o, why);
        n = s_cat(out, cap, o, "}");
    }
    if (n >= cap) n = cap - 1;
    if (zmq_msg_send(&id, s->ctl, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 || zmq_send(s->ctl, out, n, ZMQ_DONTWAIT) < 0)
        S_ADD(s, dropped, 1);
    zmq_msg_close(&id);
    free(out);
}

eq_status eq_loader_server_run(eq_loader_server *s, eq_err *err)
{
    eq_proto_recvd *r = malloc(sizeof *r);
    if (!r) return eq_err_set(err, EQ_ERR_NOMEM, "loader: out of memory");
    eq_proto_recvd_init(r);
    uint64_t drain_until = 0;
    eq_status ret = EQ_OK;
    for (;;) {
        if (s->stopping && !drain_until) {
            drain_until = eq_clock_ms() + S_DRAIN_MS;
            eq_info("loader: stopping; finishing %" PRIu64 " bytes in flight",
                    __atomic_load_n(&s->st.inflight_bytes, __ATOMIC_RELAXED));
        }
        if (drain_until) {
            int busy = 0;
            for (size_t i = 0; i < s->njobs; i++) busy |= s->jobs[i]->refs > 0;
            if (!busy || eq_clock_ms() >= drain_until) break;
        }
        zmq_pollitem_t items[4] = {{s->done, 0, ZMQ_POLLIN, 0}, {NULL, s->pipe_fd[0], ZMQ_POLLIN, 0}};
        int ni = 2, i_data = -1, i_ctl = -1;
        if (!drain_until) {
            i_data = ni;
            items[ni++] = (zmq_pollitem_t){s->data, 0, ZMQ_POLLIN, 0};
            if (s->ctl) {
                i_ctl = ni;
                items[ni++] = (zmq_pollitem_t){s->ctl, 0, ZMQ_POLLIN, 0};
            }
        }
        int rc = zmq_poll(items, ni, drain_until ? 100 : -1);
        if (rc < 0) {
            if (zmq_errno() == EINTR) continue;
            ret = eq_err_set(err, EQ_ERR_NET, "loader: zmq_poll: %s", zmq_strerror(zmq_errno()));
            break;
        }
        if (items[1].revents & ZMQ_POLLIN) {
            char buf[16];
            while (read(s->pipe_fd[0], buf, sizeof buf) > 0) {
            }
            if (!s->stopping) eq_info("loader: stop requested");
            s->stopping = 1;
        }
        if (items[0].revents & ZMQ_POLLIN) s_on_done(s);
        /* A few messages per wake-up from each socket, so that neither
         * starves the other. */
        for (int k = 0; k < 32 && i_data >= 0 && (items[i_data].revents & ZMQ_POLLIN); k++) {
            int ev = 0;
            size_t evl = sizeof ev;
            if (zmq_getsockopt(s->data, ZMQ_EVENTS, &ev, &evl) != 0 || !(ev & ZMQ_POLLIN)) break;
            s_on_data(s, r);
        }
        for (int k = 0; k < 8 && i_ctl >= 0 && (items[i_ctl].revents & ZMQ_POLLIN); k++) {
            int ev = 0;
            size_t evl = sizeof ev;
            if (zmq_getsockopt(s->ctl, ZMQ_EVENTS, &ev, &evl) != 0 || !(ev & ZMQ_POLLIN)) break;
            s_on_ctl(s);
        }
    }
    s_on_done(s);
    eq_proto_recvd_close(r);
    free(r);
    /* Stop the workers now: requests still queued are freed by destroy. */
    s_workers_stop(s);
    s_on_done(s);
    for (s_req *q = s->head, *nx; q; q = nx) {
        nx = q->next;
        q->job->refs--;
        s_req_free(q);
    }
    s->head = s->tail = NULL;
    eq_loader_stats st;
    eq_loader_server_stats(s, &st);
    eq_info("loader: stopped: %" PRIu64 " batches (%" PRIu64 " samples) sent, %" PRIu64 " errors, %" PRIu64
            " dropped",
            st.batches_sent, st.samples_sent, st.errors_sent, st.dropped);
    return ret;
}
