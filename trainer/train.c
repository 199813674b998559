/*
 * trainer/train.c -- the experiment config and the training loop (train.h).
 */
#include "trainer/train.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "proto/proto_zmq.h"
#include "trainer/checkpoint.h"
#include "trainer/feeder.h"

/* ================================================================ config */

static const eq_config_key s_train_keys[] = {
    EQ_CONFIG_STRING_KEY(eq_train_cfg, name, "run", "job name in predictions and metrics (letters, digits, _ . - :)"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, max_steps, "0", 0, INT64_MAX, "train steps per epoch; 0 = the whole epoch"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, eval_every, "1", 0, 1000000, "evaluate every N epochs (and after the last); 0 = never"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, eval_max, "0", 0, INT64_MAX, "val samples evaluated (the first N); 0 = all"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, log_every, "20", 1, 1000000, "progress line and metrics every N steps"),
    EQ_CONFIG_STRING_KEY(eq_train_cfg, out_dir, "runs/fashion-mnist",
                         "checkpoints (last.safetensors, epochN.safetensors) and metrics.jsonl go here"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, ckpt_every, "0", 0, INT64_MAX, "also checkpoint every N steps; 0 = epoch ends only"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, threads, "0", 0, 1024, "CPU backend threads; 0 = one per CPU"),
    EQ_CONFIG_FLOAT_LIST_KEY(eq_train_cfg, mean, nmean, "0.2860", 1, -10, 10,
                             "per-channel mean of x/255 (default: Fashion-MNIST)"),
    EQ_CONFIG_FLOAT_LIST_KEY(eq_train_cfg, std, nstd, "0.3530", 1, 1e-6, 10,
                             "per-channel std of x/255 (default: Fashion-MNIST)"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, inflight, "0", 0, EQ_FEEDER_MAX_INFLIGHT,
                      "batch requests in flight over all loaders; 0 = 4 per loader"),
    EQ_CONFIG_INT_KEY(eq_train_cfg, timeout_ms, "30000", 100, 3600000,
                      "a batch request unanswered this long is asked again (elsewhere)"),
    EQ_CONFIG_FLOAT_KEY(eq_train_cfg, smoothing, "0", 0, 1, "label smoothing of the cross-entropy"),
};

/* The trainer's defaults where they differ from the owning module's: the
 * embedded Fashion-MNIST experiment. */
typedef struct s_def {
    const char *section, *key, *def;
} s_def;
static const s_def s_defaults[] = {
    { "model", "arch", "resnet20" },
    { "model", "keyword", "origin, cbsa, fix_pooling, singleconv, fix, real_skip, cifar10" },
    { "model", "in_channels", "1" },
    { "model", "width_alpha", "0.125" },
    { "quant.wt", "enable", "true" },
    { "quant.wt", "method", "lsq" },
    { "quant.wt", "bit", "4" },
    { "quant.fm", "enable", "true" },
    { "quant.fm", "method", "lsq" },
    { "quant.fm", "bit", "4" },
    { "optim", "lr", "0.1" },
    { "optim", "weight_decay", "5e-4" },
    { "schedule", "policy", "sgdr" },
    { "schedule", "lr_custom_step", "" },
    { "schedule", "epochs", "1" },
};

#define S_MAX_KEYS 64
static eq_config_key s_keys[EQ_EXPERIMENT_NSECTIONS][S_MAX_KEYS];
static bool s_keys_built;

void eq_experiment_sections(eq_experiment *x, eq_config_section secs[EQ_EXPERIMENT_NSECTIONS])
{
    eq_loader_config_sections(x ? &x->loader : NULL, x ? &x->data : NULL, secs);
    eq_model_config_sections(x ? &x->model : NULL, x ? &x->wt : NULL, x ? &x->fm : NULL, secs + 2);
    eq_optim_config_sections(x ? &x->optim : NULL, x ? &x->sched : NULL, secs + 5);
    secs[7] = (eq_config_section){ "train", "the trainer's loop, outputs and data path (eq-trainer)", s_train_keys,
                                   EQ_CONFIG_NKEYS(s_train_keys), x ? &x->train : NULL };
    /* Copy the owners' tables and put the trainer's defaults in. */
    for (int i = 0; i < EQ_EXPERIMENT_NSECTIONS; i++) {
        EQ_ASSERT(secs[i].nkeys <= S_MAX_KEYS);
        if (!s_keys_built) {
            memcpy(s_keys[i], secs[i].keys, secs[i].nkeys * sizeof(eq_config_key));
            for (size_t d = 0; d < sizeof s_defaults / sizeof s_defaults[0]; d++) {
                if (strcmp(s_defaults[d].section, secs[i].name)) continue;
                size_t k = 0;
                while (k < secs[i].nkeys && strcmp(s_keys[i][k].name, s_defaults[d].key)) k++;
                EQ_ASSERT(k < secs[i].nkeys);
                s_keys[i][k].def = s_defaults[d].def;
            }
        }
        secs[i].keys = s_keys[i];
    }
    s_keys_built = true;
}

eq_status eq_experiment_load(eq_experiment *x, const char *path, const char *const *sets, size_t nsets,
                             char **text_out, eq_err *err)
{
    eq_config_section secs[EQ_EXPERIMENT_NSECTIONS];
    memset(x, 0, sizeof *x);
    eq_experiment_sections(x, secs);
    eq_status st = eq_config_load(secs, EQ_EXPERIMENT_NSECTIONS, path, sets, nsets, err);
    if (st) return st;
    int64_t C = x->data.channels;
    if ((int64_t)x->train.nmean != C || (int64_t)x->train.nstd != C)
        return eq_err_set(err, EQ_ERR_INVALID,
                          "%s: [train] mean and std need one value per channel ([data] channels = %" PRId64
                          "; got %zu and %zu)",
                          path, C, x->train.nmean, x->train.nstd);
    if (x->model.in_channels != C)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: [model] in_channels = %" PRId64 " but [data] channels = %" PRId64,
                          path, x->model.in_channels, C);
    for (const char *p = x->train.name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || strchr("_.-:", *p)))
            return eq_err_set(err, EQ_ERR_INVALID, "%s: [train] name '%s': only letters, digits and _ . - :", path,
                              x->train.name);
    if (!x->train.name[0]) return eq_err_set(err, EQ_ERR_INVALID, "%s: [train] name is empty", path);
    if (text_out) return eq_config_dump(secs, EQ_EXPERIMENT_NSECTIONS, text_out, NULL, err);
    return EQ_OK;
}

/* ================================================================== loop */

struct eq_train {
    eq_experiment x;
    char *config_text;
    char *resume;
    eq_backend *be;
    eq_model *model;
    eq_optim *optim;
    void *zctx;
    eq_feeder *feeder;
    void *pub, *ctl, *eval;
    char pub_ep[256], ctl_ep[256];
    FILE *jsonl;
    float *x_dev, *x_host;
    int32_t *y_dev, *y_host;
    int32_t *yb_dev, *yb_host; /* mixup/cutmix: the partners' labels */
    float *lam_dev, *lam_host; /* ... and each sample's own weight */
    bool mixed;                /* the staged batch is mixed */
    float *logits_host;
    int64_t G, H, W, C, classes;
    int train_job, val_job;
    uint64_t train_size, val_size;
    volatile sig_atomic_t stop;
    bool done_sent;
    /* progress */
    uint64_t epoch, step, steps;
    double last_loss, img_s, wait_pct;
    double t_start;
};

static eq_status s_mkdirs(const char *dir, eq_err *err)
{
    char p[1024];
    snprintf(p, sizeof p, "%s", dir);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0777) != 0 && errno != EEXIST) return eq_err_set(err, EQ_ERR_IO, "mkdir %s: %s", p, strerror(errno));
        *s = '/';
    }
    if (mkdir(p, 0777) != 0 && errno != EEXIST) return eq_err_set(err, EQ_ERR_IO, "mkdir %s: %s", p, strerror(errno));
    return EQ_OK;
}

void eq_train_destroy(eq_train **self_p)
{
    if (!self_p || !*self_p) return;
    eq_train *t = *self_p;
    eq_feeder_destroy(&t->feeder);
    eq_proto_socket_close(&t->pub);
    eq_proto_socket_close(&t->ctl);
    eq_proto_socket_close(&t->eval);
    if (t->zctx) zmq_ctx_term(t->zctx);
    eq_optim_destroy(&t->optim);
    eq_model_destroy(&t->model);
    if (t->be) {
        eq_backend_release(t->be, t->x_dev);
        eq_backend_release(t->be, t->y_dev);
        eq_backend_release(t->be, t->yb_dev);
        eq_backend_release(t->be, t->lam_dev);
    }
    free(t->yb_host);
    free(t->lam_host);
    eq_backend_destroy(&t->be);
    free(t->x_host);
    free(t->y_host);
    free(t->logits_host);
    free(t->config_text);
    free(t->resume);
    if (t->jsonl) fclose(t->jsonl);
    free(t);
    *self_p = NULL;
}

void eq_train_stop(eq_train *t)
{
    t->stop = 1;
    if (t->feeder) eq_feeder_interrupt(t->feeder);
}

const char *eq_train_pub_endpoint(const eq_train *t) { return t->pub_ep; }
const char *eq_train_control_endpoint(const eq_train *t) { return t->ctl_ep; }

eq_train *eq_train_new(const eq_experiment *x, const eq_train_opts *o, eq_err *err)
{
    eq_train *t = calloc(1, sizeof *t);
    if (!t) {
        eq_err_set(err, EQ_ERR_NOMEM, "trainer: out of memory");
        return NULL;
    }
    t->x = *x;
    if (o->config_text && !(t->config_text = strdup(o->config_text))) goto nomem;
    if (o->resume && !(t->resume = strdup(o->resume))) goto nomem;
    t->G = x->data.global_batch;
    t->H = x->data.height;
    t->W = x->data.width;
    t->C = x->data.channels;
    t->classes = x->model.num_classes;
    if (s_mkdirs(x->train.out_dir, err)) goto fail;
    char path[1100];
    snprintf(path, sizeof path, "%s/metrics.jsonl", x->train.out_dir);
    if (!(t->jsonl = fopen(path, "a"))) {
        eq_err_set(err, EQ_ERR_IO, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (!(t->be = eq_backend_cpu_new((int)x->train.threads, err))) goto fail;
    if (!(t->model = eq_model_new(t->be, &x->model, &x->wt, &x->fm, t->G, t->H, t->W, err))) goto fail;
    if (!(t->optim = eq_optim_new(t->model, &x->optim, err))) goto fail;
    size_t xn = (size_t)(t->G * t->H * t->W * t->C);
    if (!(t->x_dev = eq_backend_alloc(t->be, xn * sizeof(float), err))) goto fail;
    if (!(t->y_dev = eq_backend_alloc(t->be, (size_t)t->G * sizeof(int32_t), err))) goto fail;
    if (!(t->yb_dev = eq_backend_alloc(t->be, (size_t)t->G * sizeof(int32_t), err))) goto fail;
    if (!(t->lam_dev = eq_backend_alloc(t->be, (size_t)t->G * sizeof(float), err))) goto fail;
    if (!(t->yb_host = calloc((size_t)t->G, sizeof(int32_t))) || !(t->lam_host = calloc((size_t)t->G, sizeof(float))))
        goto nomem;
    if (!(t->x_host = malloc(xn * sizeof(float))) || !(t->y_host = malloc((size_t)t->G * sizeof(int32_t))) ||
        !(t->logits_host = malloc((size_t)(t->G * t->classes) * sizeof(float))))
        goto nomem;
    t->zctx = zmq_ctx_new();
    if (!t->zctx) {
        eq_err_set(err, EQ_ERR_NET, "zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    char fname[EQ_PROTO_NAME_CAP];
    snprintf(fname, sizeof fname, "trainer:%ld", (long)getpid());
    eq_feeder_cfg fc = { .loaders = o->loaders, .nloaders = o->nloaders, .inflight = (uint32_t)x->train.inflight,
                         .timeout_ms = (uint32_t)x->train.timeout_ms, .name = fname };
    if (!(t->feeder = eq_feeder_new(t->zctx, &fc, err))) goto fail;
    eq_proto_sockopts so;
    eq_proto_sockopts_default(&so, NULL);
    so.linger_ms = 2000; /* the last METRICS and PRED messages must leave before exit */
    if (o->pub && *o->pub) {
        if (!(t->pub = eq_proto_socket(t->zctx, ZMQ_PUB, &so, err)) ||
            eq_proto_bind(t->pub, o->pub, t->pub_ep, sizeof t->pub_ep, err))
            goto fail;
    }
    if (o->control && *o->control) {
        if (!(t->ctl = eq_proto_socket(t->zctx, ZMQ_ROUTER, &so, err)) ||
            eq_proto_bind(t->ctl, o->control, t->ctl_ep, sizeof t->ctl_ep, err))
            goto fail;
    }
    if (o->eval && *o->eval) {
        eq_proto_sockopts eo = so;
        eo.sndtimeo_ms = 30000; /* eq-eval slow or absent: fail instead of hanging forever */
        if (!(t->eval = eq_proto_socket(t->zctx, ZMQ_PUSH, &eo, err)) || eq_proto_connect(t->eval, o->eval, err))
            goto fail;
    }
    return t;
nomem:
    eq_err_set(err, EQ_ERR_NOMEM, "trainer: out of memory");
fail:
    eq_train_destroy(&t);
    return NULL;
}

/* ---------------------------------------------------------------- helpers */

static void s_publish(eq_train *t, const char *kind, double loss, double lr, double eta, uint32_t status)
{
    if (!t->pub) return;
    eq_msg m;
    eq_proto_msg_init(&m, EQ_MSG_METRICS);
    eq_msg_metrics *x = &m.u.metrics;
    snprintf(x->job, sizeof x->job, "%s", t->x.train.name);
    snprintf(x->source, sizeof x->source, "trainer");
    snprintf(x->kind, sizeof x->kind, "%s", kind);
    x->epoch = t->epoch;
    x->step = t->step;
    x->steps = t->steps;
    x->loss = isfinite(loss) ? loss : 0;
    x->lr = lr;
    x->img_s = t->img_s;
    x->wait_pct = t->wait_pct;
    x->eta_s = eta;
    x->status = status;
    x->elapsed_s = eq_clock_sec() - t->t_start;
    if (!strcmp(kind, "done")) t->done_sent = true;
    eq_err e = { 0 };
    if (eq_proto_send(t->pub, NULL, &m, NULL, 0, ZMQ_DONTWAIT, &e) != EQ_OK) eq_debug("publish: %s", e.msg);
}

static void s_control(eq_train *t)
{
    if (!t->ctl) return;
    for (;;) {
        zmq_msg_t id, cmd;
        zmq_msg_init(&id);
        zmq_msg_init(&cmd);
        if (zmq_msg_recv(&id, t->ctl, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&id);
            zmq_msg_close(&cmd);
            return;
        }
        if (!zmq_msg_more(&id) || zmq_msg_recv(&cmd, t->ctl, 0) < 0) {
            zmq_msg_close(&id);
            zmq_msg_close(&cmd);
            continue;
        }
        while (zmq_msg_more(&cmd)) {
            zmq_msg_t x;
            zmq_msg_init(&x);
            zmq_msg_recv(&x, t->ctl, 0);
            int more = zmq_msg_more(&x);
            zmq_msg_close(&x);
            if (!more) break;
        }
        char reply[768];
        size_t len = zmq_msg_size(&cmd);
        const char *c = zmq_msg_data(&cmd);
        if (len == 6 && !memcmp(c, "status", 6)) {
            eq_feeder_stats fs;
            eq_feeder_stats_get(t->feeder, &fs);
            snprintf(reply, sizeof reply,
                     "{\"role\":\"trainer\",\"pid\":%ld,\"job\":\"%s\",\"epoch\":%" PRIu64 ",\"step\":%" PRIu64
                     ",\"steps\":%" PRIu64 ",\"loss\":%.6g,\"img_s\":%.1f,\"wait_pct\":%.2f,\"loaders_alive\":%u"
                     ",\"batches\":%" PRIu64 ",\"reissued\":%" PRIu64 ",\"late_dropped\":%" PRIu64 "}",
                     (long)getpid(), t->x.train.name, t->epoch, t->step, t->steps,
                     isfinite(t->last_loss) ? t->last_loss : -1.0, t->img_s, t->wait_pct, fs.loaders_alive,
                     fs.batches, fs.reissued, fs.late_dropped);
        } else if (len == 4 && !memcmp(c, "stop", 4)) {
            snprintf(reply, sizeof reply, "{\"ok\":true}");
            eq_train_stop(t);
        } else {
            snprintf(reply, sizeof reply, "{\"ok\":false,\"error\":\"unknown command (status, stop)\"}");
        }
        zmq_send(t->ctl, zmq_msg_data(&id), zmq_msg_size(&id), ZMQ_SNDMORE | ZMQ_DONTWAIT);
        zmq_send(t->ctl, reply, strlen(reply), ZMQ_DONTWAIT);
        zmq_msg_close(&id);
        zmq_msg_close(&cmd);
    }
}

/* uint8 NHWC -> fp32 (x/255 - mean)/std into x_host, labels into y_host;
 * rows past b->count are zero (a padded val batch). */
static eq_status s_stage(eq_train *t, const eq_feeder_batch *b, eq_err *err)
{
    if (b->h != t->H || b->w != t->W || b->c != t->C)
        return eq_err_set(err, EQ_ERR_PROTO, "batch of %ux%ux%u images, the model wants %" PRId64 "x%" PRId64 "x%" PRId64,
                          b->h, b->w, b->c, t->H, t->W, t->C);
    size_t per = (size_t)(t->H * t->W * t->C), n = (size_t)b->count * per;
    float scale[16], shift[16];
    for (int64_t c = 0; c < t->C; c++) {
        scale[c] = (float)(1.0 / (255.0 * t->x.train.std[c]));
        shift[c] = (float)(-t->x.train.mean[c] / t->x.train.std[c]);
    }
    const uint8_t *src = b->images;
    float *dst = t->x_host;
    if (t->C == 1) {
        for (size_t i = 0; i < n; i++) dst[i] = (float)src[i] * scale[0] + shift[0];
    } else {
        for (size_t i = 0; i < n; i++) {
            size_t c = i % (size_t)t->C;
            dst[i] = (float)src[i] * scale[c] + shift[c];
        }
    }
    memset(dst + n, 0, ((size_t)t->G * per - n) * sizeof(float));
    for (uint32_t i = 0; i < b->count; i++) {
        int64_t y;
        if (b->labels_i64) {
            memcpy(&y, (const uint8_t *)b->labels + 8 * (size_t)i, 8);
        } else {
            int32_t y32;
            memcpy(&y32, (const uint8_t *)b->labels + 4 * (size_t)i, 4);
            y = y32;
        }
        if (y < 0 || y >= t->classes)
            return eq_err_set(err, EQ_ERR_INVALID,
                              "epoch %" PRIu64 " step %" PRIu64 ": label %" PRId64 " of sample %u outside [0, %" PRId64
                              ") (set [model] num_classes)",
                              b->epoch, b->step, y, i, t->classes);
        t->y_host[i] = (int32_t)y;
    }
    for (int64_t i = b->count; i < t->G; i++) t->y_host[i] = 0;
    /* Mixup/CutMix from the plan in the BATCH (DESIGN.md): the partner's
     * label and the sample's own weight for the loss; for mixup also the
     * image blend, done here in fp32 from the uint8 bytes (CutMix images
     * arrive pasted). */
    t->mixed = b->mix && b->mix[0] && b->mix_index && b->mix_lambda;
    if (t->mixed) {
        bool blend = !strcmp(b->mix, "mixup");
        for (uint32_t i = 0; i < b->count; i++) {
            int32_t j;
            float lam;
            memcpy(&j, (const uint8_t *)b->mix_index + 4 * (size_t)i, 4);
            memcpy(&lam, (const uint8_t *)b->mix_lambda + 4 * (size_t)i, 4);
            if (j < 0 || (uint32_t)j >= b->count || !(lam >= 0.0f && lam <= 1.0f))
                return eq_err_set(err, EQ_ERR_PROTO,
                                  "epoch %" PRIu64 " step %" PRIu64 ": sample %u: mix partner %d or lambda %g invalid",
                                  b->epoch, b->step, i, j, (double)lam);
            t->yb_host[i] = t->y_host[j];
            t->lam_host[i] = lam;
            if (!blend) continue;
            const uint8_t *a = src + (size_t)i * per, *p = src + (size_t)j * per;
            float *d = dst + (size_t)i * per;
            for (size_t k = 0; k < per; k++) {
                size_t c = k % (size_t)t->C;
                float va = (float)a[k] * scale[c] + shift[c], vb = (float)p[k] * scale[c] + shift[c];
                d[k] = lam * va + (1.0f - lam) * vb;
            }
        }
        for (int64_t i = b->count; i < t->G; i++) {
            t->yb_host[i] = 0;
            t->lam_host[i] = 1.0f;
        }
    }
    eq_status st = eq_backend_upload(t->be, t->x_dev, t->x_host, (size_t)t->G * per * sizeof(float), err);
    if (!st) st = eq_backend_upload(t->be, t->y_dev, t->y_host, (size_t)t->G * sizeof(int32_t), err);
    if (!st && t->mixed) st = eq_backend_upload(t->be, t->yb_dev, t->yb_host, (size_t)t->G * sizeof(int32_t), err);
    if (!st && t->mixed) st = eq_backend_upload(t->be, t->lam_dev, t->lam_host, (size_t)t->G * sizeof(float), err);
    return st;
}

static eq_status s_checkpoint(eq_train *t, uint64_t epoch, uint64_t step, const char *tag, eq_err *err)
{
    char path[1200];
    eq_ckpt_run run = { .epoch = (int64_t)epoch, .step = (int64_t)step, .metric = NAN, .config = t->config_text };
    snprintf(path, sizeof path, "%s/last.safetensors", t->x.train.out_dir);
    eq_status st = eq_checkpoint_save(path, t->model, t->optim, &run, err);
    if (st) return st;
    if (tag) {
        snprintf(path, sizeof path, "%s/%s.safetensors", t->x.train.out_dir, tag);
        if ((st = eq_checkpoint_save(path, t->model, t->optim, &run, err))) return st;
    }
    eq_info("checkpoint %s/%s.safetensors (resumes at epoch %" PRIu64 " step %" PRIu64 ")", t->x.train.out_dir,
            tag ? tag : "last", epoch, step);
    return EQ_OK;
}

/* Indices of the k largest of row[0..n) by decreasing value (ties: lower
 * index first, as torch.topk on CPU). */
static void s_topk(const float *row, int64_t n, int k, int32_t *out)
{
    for (int j = 0; j < k; j++) out[j] = -1;
    for (int64_t c = 0; c < n; c++) {
        float v = row[c];
        int j = k;
        while (j > 0 && (out[j - 1] < 0 || v > row[out[j - 1]])) j--;
        if (j >= k) continue;
        memmove(out + j + 1, out + j, (size_t)(k - j - 1) * sizeof *out);
        out[j] = (int32_t)c;
    }
}

/* Val pass of `epoch`: predictions to eq-eval. */
static eq_status s_validate(eq_train *t, uint64_t epoch, eq_err *err)
{
    uint64_t N = t->val_size;
    if (t->x.train.eval_max > 0 && (uint64_t)t->x.train.eval_max < N) N = (uint64_t)t->x.train.eval_max;
    uint64_t steps = (N + (uint64_t)t->G - 1) / (uint64_t)t->G;
    eq_status st = eq_feeder_pass(t->feeder, t->val_job, epoch, 0, steps, 0, (uint32_t)t->G, N, err);
    if (st) return st;
    int k = t->classes < 5 ? (int)t->classes : 5;
    int32_t *topk = malloc((size_t)t->G * (size_t)k * sizeof *topk);
    int64_t *ids = malloc((size_t)t->G * sizeof *ids);
    if (!topk || !ids) {
        free(topk);
        free(ids);
        return eq_err_set(err, EQ_ERR_NOMEM, "val: out of memory");
    }
    double t0 = eq_clock_sec();
    uint64_t seen = 0;
    for (;;) {
        eq_feeder_batch b;
        st = eq_feeder_next(t->feeder, &b, err);
        if (st == EQ_ERR_NOTFOUND) {
            st = EQ_OK;
            break;
        }
        if (st) break;
        if ((st = s_stage(t, &b, err))) break;
        if ((st = eq_model_forward(t->model, t->x_dev, false, err))) break;
        int64_t nb, nc;
        const float *logits = eq_model_logits(t->model, &nb, &nc);
        if ((st = eq_backend_download(t->be, t->logits_host, logits, (size_t)(nb * nc) * sizeof(float), err))) break;
        for (uint32_t i = 0; i < b.count; i++) {
            s_topk(t->logits_host + (size_t)i * (size_t)nc, nc, k, topk + (size_t)i * (size_t)k);
            ids[i] = (int64_t)(b.step * (uint64_t)t->G + b.offset + i);
        }
        seen += b.count;
        if (t->eval) {
            eq_msg m;
            eq_proto_msg_init(&m, EQ_MSG_PRED);
            eq_msg_pred *p = &m.u.pred;
            snprintf(p->job, sizeof p->job, "%s", t->x.train.name);
            p->epoch = epoch;
            p->total = N;
            p->rank = 0;
            p->world = 1;
            p->count = b.count;
            p->final = seen == N;
            int64_t s1[1] = { b.count }, s2[2] = { b.count, k };
            eq_proto_add_frame(&m, "ids", EQ_DT_I64, 1, s1, NULL);
            eq_proto_add_frame(&m, "labels", EQ_DT_I32, 1, s1, NULL);
            eq_proto_add_frame(&m, "topk", EQ_DT_I32, 2, s2, NULL);
            eq_proto_payload pl[3] = { { ids, (size_t)b.count * 8, NULL, NULL },
                                       { t->y_host, (size_t)b.count * 4, NULL, NULL },
                                       { topk, (size_t)b.count * (size_t)k * 4, NULL, NULL } };
            if ((st = eq_proto_send(t->eval, NULL, &m, pl, 3, 0, err))) break;
        }
        if (t->stop) {
            st = eq_err_set(err, EQ_ERR_INTERRUPTED, "stopped during the val pass");
            break;
        }
    }
    free(topk);
    free(ids);
    if (st == EQ_OK && seen != N)
        st = eq_err_set(err, EQ_ERR_INTERNAL, "val pass of epoch %" PRIu64 ": %" PRIu64 " samples, expected %" PRIu64,
                        epoch, seen, N);
    if (st == EQ_OK)
        eq_info("epoch %" PRIu64 ": val predictions for %" PRIu64 " samples sent to eq-eval in %.1f s", epoch, N,
                eq_clock_sec() - t0);
    return st;
}

static eq_status s_run(eq_train *t, eq_err *err);

eq_status eq_train_run(eq_train *t, eq_err *err)
{
    eq_status st = s_run(t, err);
    if (st != EQ_OK && st != EQ_ERR_INTERRUPTED && !t->done_sent) s_publish(t, "done", t->last_loss, 0, 0, st);
    return st;
}

static eq_status s_run(eq_train *t, eq_err *err)
{
    const eq_experiment *x = &t->x;
    eq_status st;
    t->t_start = eq_clock_sec();
    eq_info("model: %s", eq_model_summary(t->model));
    /* Jobs: train and val pipelines from [data]. */
    eq_msg job;
    eq_msg_job_ok ok;
    if ((st = eq_loader_data_job(&x->data, "train", &job, err)) ||
        (st = eq_feeder_add_job(t->feeder, &job, &ok, &t->train_job, err)))
        return st;
    t->train_size = ok.size;
    if (ok.classes > (uint32_t)t->classes)
        return eq_err_set(err, EQ_ERR_INVALID, "the dataset has %u classes, [model] num_classes = %" PRId64, ok.classes,
                          t->classes);
    if ((st = eq_loader_data_job(&x->data, "val", &job, err)) ||
        (st = eq_feeder_add_job(t->feeder, &job, &ok, &t->val_job, err)))
        return st;
    t->val_size = ok.size;
    uint64_t G = (uint64_t)t->G;
    uint64_t steps = x->data.last_train == 1 ? (t->train_size + G - 1) / G : t->train_size / G;
    if (steps == 0)
        return eq_err_set(err, EQ_ERR_INVALID, "train split of %" PRIu64 " samples has no full global batch of %" PRIu64,
                          t->train_size, G);
    if (x->train.max_steps > 0 && (uint64_t)x->train.max_steps < steps) steps = (uint64_t)x->train.max_steps;
    t->steps = steps;
    uint64_t epochs = (uint64_t)x->sched.epochs, e0 = 0, s0 = 0;
    if (t->resume) {
        eq_ckpt_run run;
        if ((st = eq_checkpoint_load(t->resume, t->model, t->optim, &run, NULL, err))) return st;
        e0 = (uint64_t)run.epoch;
        s0 = (uint64_t)run.step;
        if (s0 >= steps) {
            e0++;
            s0 = 0;
        }
        eq_info("resumed from %s at epoch %" PRIu64 " step %" PRIu64, t->resume, e0, s0);
    }
    eq_info("train: %" PRIu64 " samples, %" PRIu64 " steps of %" PRIu64 " per epoch, %" PRIu64
            " epochs; val: %" PRIu64 " samples",
            t->train_size, steps, G, epochs, t->val_size);
    uint64_t total_steps = epochs * steps, done_steps = e0 * steps + s0, steps_this_run = 0;
    double run_t0 = eq_clock_sec();
    for (uint64_t e = e0; e < epochs; e++) {
        t->epoch = e;
        uint64_t first = e == e0 ? s0 : 0;
        if ((st = eq_feeder_pass(t->feeder, t->train_job, e, first, steps, 0, (uint32_t)G, UINT64_MAX, err)))
            return st;
        double win_t0 = eq_clock_sec(), loss_sum = 0, epoch_loss = 0;
        eq_feeder_stats fs0;
        eq_feeder_stats_get(t->feeder, &fs0);
        uint64_t win_n = 0, epoch_n = 0;
        for (uint64_t s = first; s < steps; s++) {
            t->step = s;
            eq_feeder_batch b;
            st = eq_feeder_next(t->feeder, &b, err);
            if (st == EQ_ERR_INTERRUPTED || (st == EQ_OK && t->stop)) {
                if (st == EQ_OK) s_control(t); /* answer a pending stop */
                eq_warn("stopping: checkpoint at epoch %" PRIu64 " step %" PRIu64, e, s);
                eq_status cst = s_checkpoint(t, e, s, NULL, err);
                if (cst) return cst;
                s_publish(t, "done", t->last_loss, 0, 0, EQ_ERR_INTERRUPTED);
                return eq_err_set(err, EQ_ERR_INTERRUPTED, "stopped at epoch %" PRIu64 " step %" PRIu64, e, s);
            }
            if (st) return st;
            if (b.count != G)
                return eq_err_set(err, EQ_ERR_PROTO, "epoch %" PRIu64 " step %" PRIu64 ": %u samples, expected %" PRIu64,
                                  e, s, b.count, G);
            if ((st = s_stage(t, &b, err))) return st;
            float loss;
            double lr;
            if ((st = eq_model_forward(t->model, t->x_dev, true, err)) ||
                (st = eq_model_loss(t->model, t->y_dev, t->mixed ? t->yb_dev : NULL, t->mixed ? t->lam_dev : NULL,
                                    (float)x->train.smoothing, &loss, err)))
                return st;
            if (!isfinite(loss)) {
                s_publish(t, "done", 0, 0, 0, EQ_ERR_INVALID);
                return eq_err_set(err, EQ_ERR_INVALID,
                                  "loss is %s at epoch %" PRIu64 " step %" PRIu64
                                  ": stopped; the last good checkpoint is %s/last.safetensors",
                                  isnan(loss) ? "NaN" : "infinite", e, s, x->train.out_dir);
            }
            if ((st = eq_model_backward(t->model, NULL, err)) ||
                (st = eq_schedule_lr(&x->sched, x->optim.lr, (int64_t)e, (int64_t)s, (int64_t)steps, &lr, err)) ||
                (st = eq_optim_step(t->optim, lr, err)))
                return st;
            t->last_loss = loss;
            loss_sum += loss;
            epoch_loss += loss;
            win_n++;
            epoch_n++;
            done_steps++;
            steps_this_run++;
            s_control(t);
            bool last = s + 1 == steps;
            if (win_n == (uint64_t)x->train.log_every || last) {
                double now = eq_clock_sec(), dt = now - win_t0;
                eq_feeder_stats fs;
                eq_feeder_stats_get(t->feeder, &fs);
                t->img_s = dt > 0 ? (double)(win_n * G) / dt : 0;
                t->wait_pct = dt > 0 ? 100.0 * (fs.wait_s - fs0.wait_s) / dt : 0;
                double per_step = (now - run_t0) / (double)steps_this_run;
                double eta = per_step * (double)(total_steps - done_steps);
                char etas[32];
                eq_clock_fmt_eta(eta, etas, sizeof etas);
                double mean = loss_sum / (double)win_n;
                eq_info("epoch %" PRIu64 " step %" PRIu64 "/%" PRIu64 " loss %.4f lr %.4g %.0f img/s data-wait %.1f%% eta %s",
                        e, s + 1, steps, mean, lr, t->img_s, t->wait_pct, etas);
                fprintf(t->jsonl,
                        "{\"wall_ms\":%" PRIu64 ",\"kind\":\"train\",\"epoch\":%" PRIu64 ",\"step\":%" PRIu64
                        ",\"steps\":%" PRIu64 ",\"loss\":%.6g,\"lr\":%.6g,\"img_s\":%.1f,\"wait_pct\":%.2f}\n",
                        eq_wall_ms(), e, s + 1, steps, mean, lr, t->img_s, t->wait_pct);
                fflush(t->jsonl);
                t->step = s + 1;
                s_publish(t, "train", mean, lr, eta, 0);
                win_t0 = now;
                fs0 = fs;
                win_n = 0;
                loss_sum = 0;
            }
            if (x->train.ckpt_every > 0 && (s + 1) % (uint64_t)x->train.ckpt_every == 0 && !last &&
                (st = s_checkpoint(t, e, s + 1, NULL, err)))
                return st;
        }
        eq_feeder_stats fs;
        eq_feeder_stats_get(t->feeder, &fs);
        double mean = epoch_n ? epoch_loss / (double)epoch_n : 0;
        eq_info("epoch %" PRIu64 " done: mean loss %.4f, %" PRIu64 " batches so far, %" PRIu64
                " requests re-issued, %" PRIu64 " late replies dropped",
                e, mean, fs.batches, fs.reissued, fs.late_dropped);
        fprintf(t->jsonl,
                "{\"wall_ms\":%" PRIu64 ",\"kind\":\"epoch\",\"epoch\":%" PRIu64 ",\"steps\":%" PRIu64
                ",\"loss\":%.6g,\"samples\":%" PRIu64 ",\"elapsed_s\":%.3f}\n",
                eq_wall_ms(), e, epoch_n, mean, epoch_n * G, eq_clock_sec() - t->t_start);
        fflush(t->jsonl);
        t->step = steps;
        s_publish(t, "epoch", mean, 0, 0, 0);
        char tag[32];
        snprintf(tag, sizeof tag, "epoch%" PRIu64, e);
        if ((st = s_checkpoint(t, e + 1, 0, tag, err))) return st;
        bool eval_now = x->train.eval_every > 0 && ((e + 1) % (uint64_t)x->train.eval_every == 0 || e + 1 == epochs);
        if (eval_now && (st = s_validate(t, e, err))) {
            if (st == EQ_ERR_INTERRUPTED) s_publish(t, "done", t->last_loss, 0, 0, EQ_ERR_INTERRUPTED);
            return st;
        }
        if (t->stop) {
            s_publish(t, "done", t->last_loss, 0, 0, EQ_ERR_INTERRUPTED);
            return eq_err_set(err, EQ_ERR_INTERRUPTED, "stopped after epoch %" PRIu64, e);
        }
    }
    t->epoch = epochs;
    s_publish(t, "done", t->last_loss, 0, 0, 0);
    eq_info("done: %" PRIu64 " epochs in %.1f s", epochs, eq_clock_sec() - t->t_start);
    return EQ_OK;
}
