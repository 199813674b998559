/*
 * tests/check_pipeline.c -- eq-trainer's input pipeline (trainer/train.c,
 * "the input pipeline"; backend interface 6: stage_images, upload_async,
 * upload_wait) and its asynchronous loss (interface 7: download_async).
 *
 * - stage_images on the CPU backend (its pooled member) and through the
 *   wrapper's host default are bitwise eq_train_stage, the host reference:
 *   1, 3 and 4 channels, 1 and 3 threads, mixup and not, a partial batch (7 of
 *   10 rows); the wrappers' argument errors.
 * - A fake asynchronous backend: the CPU backend's table whose
 *   upload_async keeps the data aside and fills the destination with
 *   poison (0xA5 bytes) until upload_wait copies it in -- what an op
 *   issued too early would read on a GPU, where the copy runs on its own
 *   stream -- and whose stage_images / xent_fwd / xent_bwd count reads of
 *   a buffer with an upload still pending.  eq-trainer in this process on
 *   a tiny synthetic set (mixup, val pass with a short last batch, 2
 *   epochs) gives bitwise the checkpoint of the plain CPU run, with no
 *   such read: a missing upload_wait or a slot refilled while its step
 *   still reads it changes the weights (or poisons a label).  The fake is
 *   shown to catch both on its own (test_fake_detects).
 * - The loss (backend interface 7: download_async): the fake's
 *   download_async fills the host destination with NaN bytes and lands
 *   the value only at event_synchronize of its event, so a loss read
 *   before the trainer waits for it stops the run ("loss is NaN"); the
 *   fake run's reported losses are the plain run's, one download per step
 *   and none left pending.  A NaN landed for epoch 1 step 1 stops the run
 *   naming that step, and its last checkpoint is bitwise the plain run's
 *   epoch 0 one (nothing saved after the step).
 * - Deferred quantizer parameter gradients (interface 7: quant_grads_wait):
 *   with the member set, a quantized model's gradient hook reports the
 *   layers' tensors during the backward but every quantizer's only after
 *   eq_layers_backward has called quant_grads_wait, in
 *   eq_model_grad_order's order, and the gradients are bitwise the plain
 *   CPU backend's.
 * - A stop signalled while the next batch is already fetched and uploaded
 *   (from upload_async), and one signalled before that fetch (from
 *   stage_images), each checkpoint at the following step; resuming from
 *   there ends with bitwise the uninterrupted run's checkpoint, so no batch
 *   was lost or seen twice.
 */
#include <math.h>
#include <zmq.h>

#include "core/log.h"
#include "core/safetensors.h"
#include "loader/loader.h"
#include "testutil.h"
#include "tinyjob.h"
#include "trainer/backend.h"
#include "trainer/model.h"
#include "trainer/train.h"

static uint64_t s_seed = 0x9e3779b97f4a7c15ull;

/* ---- the fake asynchronous backend ------------------------------------------ */

#define S_POISON 0xA5
#define S_MAX_PENDING 16

typedef struct s_pending {
    uint8_t *dst;
    size_t n;
    uint8_t *data; /* host_src as it was at upload_async */
} s_pending;

static struct {
    const struct eq_backend_i *cpu; /* the wrapped CPU table */
    struct eq_backend_i fi;         /* the fake's table */
    eq_backend be;                  /* { &fi, the CPU backend's context } */
    s_pending p[S_MAX_PENDING];
    int np;
    long uploads, waits, stages, early; /* early: reads of a buffer with a pending upload */
    /* download_async: pending until event_synchronize of its event */
    struct {
        eq_backend_event *ev;
        void *dst;
        size_t n;
        uint8_t data[EQ_BACKEND_DOWNLOAD_ASYNC_MAX];
    } d[S_MAX_PENDING];
    int nd;
    long dl_async, dl_landed, dl_nan_at; /* dl_nan_at: 1-based download that lands a NaN; 0: none */
    long qwaits;                         /* quant_grads_wait calls */
    eq_train *train;                    /* eq_train_stop target */
    long stop_at_upload, stop_at_stage; /* 1-based call numbers; 0: never */
} g;

static bool s_pending_overlaps(const void *ptr, size_t n)
{
    const uint8_t *a = ptr;
    for (int i = 0; ptr && i < g.np; i++)
        if (a < g.p[i].dst + g.p[i].n && g.p[i].dst < a + n) return true;
    return false;
}

static eq_status s_fake_upload_async(void *ctx, void *dst, const void *src, size_t n, eq_err *err)
{
    (void)ctx;
    if (g.np == S_MAX_PENDING) return eq_err_set(err, EQ_ERR_LIMIT, "fake: too many pending uploads");
    uint8_t *copy = malloc(n);
    if (!copy) return eq_err_set(err, EQ_ERR_NOMEM, "fake: out of memory");
    memcpy(copy, src, n);
    memset(dst, S_POISON, n); /* the copy is under way: dst holds nothing usable */
    g.p[g.np++] = (s_pending){ dst, n, copy };
    if (++g.uploads == g.stop_at_upload && g.train) eq_train_stop(g.train);
    return EQ_OK;
}

static eq_status s_fake_upload_wait(void *ctx, eq_err *err)
{
    (void)ctx;
    (void)err;
    for (int i = 0; i < g.np; i++) {
        memcpy(g.p[i].dst, g.p[i].data, g.p[i].n);
        free(g.p[i].data);
    }
    g.np = 0;
    g.waits++;
    return EQ_OK;
}

static eq_status s_fake_stage(void *ctx, int64_t n, int64_t per, int64_t c, const uint8_t *src, const float *scale,
                              const float *shift, const int32_t *partner, const float *lambda, float *dst,
                              eq_err *err)
{
    g.early += s_pending_overlaps(src, (size_t)(n * per)) + s_pending_overlaps(partner, (size_t)n * 4) +
               s_pending_overlaps(lambda, (size_t)n * 4);
    if (++g.stages == g.stop_at_stage && g.train) eq_train_stop(g.train);
    return g.cpu->stage_images(ctx, n, per, c, src, scale, shift, partner, lambda, dst, err);
}

static void s_fake_labels(const eq_xent_desc *d, const int32_t *la, const int32_t *lb, const float *lam)
{
    size_t n = (size_t)d->n * 4;
    g.early += s_pending_overlaps(la, n) + s_pending_overlaps(lb, n) + s_pending_overlaps(lam, n);
}

static eq_status s_fake_xent_fwd(void *ctx, const eq_xent_desc *d, const float *logits, const int32_t *la,
                                 const int32_t *lb, const float *lam, float *loss, eq_err *err)
{
    s_fake_labels(d, la, lb, lam);
    return g.cpu->xent_fwd(ctx, d, logits, la, lb, lam, loss, err);
}

static eq_status s_fake_xent_bwd(void *ctx, const eq_xent_desc *d, const float *logits, const int32_t *la,
                                 const int32_t *lb, const float *lam, float dloss, float *dlogits, eq_err *err)
{
    s_fake_labels(d, la, lb, lam);
    return g.cpu->xent_bwd(ctx, d, logits, la, lb, lam, dloss, dlogits, err);
}

static eq_status s_fake_download_async(void *ctx, void *dst, const void *src, size_t n, eq_backend_event *ev,
                                       eq_err *err)
{
    (void)ctx;
    if (g.nd == S_MAX_PENDING) return eq_err_set(err, EQ_ERR_LIMIT, "fake: too many pending downloads");
    g.d[g.nd].ev = ev;
    g.d[g.nd].dst = dst;
    g.d[g.nd].n = n;
    memcpy(g.d[g.nd].data, src, n); /* the CPU ran every op issued before */
    if (++g.dl_async == g.dl_nan_at && n == sizeof(float)) {
        float nan = NAN;
        memcpy(g.d[g.nd].data, &nan, sizeof nan);
    }
    g.nd++;
    memset(dst, 0xff, n); /* NaN until the event is waited for */
    return EQ_OK;
}

static eq_status s_fake_event_sync(void *ctx, eq_backend_event *ev, eq_err *err)
{
    int k = 0;
    for (int i = 0; i < g.nd; i++)
        if (g.d[i].ev == ev) {
            memcpy(g.d[i].dst, g.d[i].data, g.d[i].n);
            g.dl_landed++;
        } else {
            g.d[k++] = g.d[i];
        }
    g.nd = k;
    return g.cpu->event_synchronize(ctx, ev, err);
}

static eq_status s_fake_qwait(void *ctx, eq_err *err)
{
    (void)ctx;
    (void)err;
    g.qwaits++;
    return EQ_OK;
}

/* Forget the uploads an interrupted run left pending (their buffers were
 * freed with the trainer); their count. */
static int s_fake_drop(void)
{
    int n = g.np;
    for (int i = 0; i < g.np; i++) free(g.p[i].data);
    g.np = 0;
    return n;
}

/* The fake around a new 1-thread CPU backend (returned: destroy it after
 * the fake's last use). */
static eq_backend *s_fake_new(void)
{
    eq_err e = { 0 };
    eq_backend *cpu = eq_backend_cpu_new(1, &e);
    ck_assert_msg(cpu != NULL, "%s", e.msg);
    ck_assert_ptr_nonnull(cpu->iface->stage_images);
    memset(&g, 0, sizeof g);
    g.cpu = cpu->iface;
    g.fi = *cpu->iface;
    g.fi.name = "fakeasync";
    g.fi.upload_async = s_fake_upload_async;
    g.fi.upload_wait = s_fake_upload_wait;
    g.fi.stage_images = s_fake_stage;
    g.fi.xent_fwd = s_fake_xent_fwd;
    g.fi.xent_bwd = s_fake_xent_bwd;
    g.fi.download_async = s_fake_download_async;
    g.fi.event_synchronize = s_fake_event_sync;
    g.be = (eq_backend){ &g.fi, cpu->context };
    return cpu;
}

/* ---- stage_images against eq_train_stage ---------------------------------- */

START_TEST(test_stage_cpu)
{
    eq_err e = { 0 };
    const int64_t rows = 10, h = 5, w = 4;
    const uint32_t count = 7; /* a partial batch */
    static const int chans[3] = { 1, 3, 4 }; /* the CPU member's three loops */
    for (int ci = 0; ci < 3; ci++)
        for (int threads = 1; threads <= 3; threads += 2)
            for (int mix = 0; mix < 2; mix++) {
                const int C = chans[ci];
                const size_t per = (size_t)(h * w * C), n = count * per;
                uint8_t *img = malloc(n);
                int32_t lab[16], partner[16];
                float lamv[16];
                double mean[4], std[4];
                ck_assert_ptr_nonnull(img);
                for (size_t i = 0; i < n; i++) img[i] = (uint8_t)eq_test_next(&s_seed);
                img[0] = 0, img[1] = 255; /* the ends of the range */
                for (uint32_t i = 0; i < count; i++) {
                    lab[i] = (int32_t)eq_test_uniform(&s_seed, 0, 5);
                    partner[i] = (int32_t)eq_test_uniform(&s_seed, 0, count - 1);
                    lamv[i] = (float)eq_test_uniform(&s_seed, 0, 1 << 20) / (float)(1 << 20);
                }
                lamv[0] = 0.0f, lamv[1] = 1.0f, partner[2] = 2; /* a sample its own partner */
                for (int c = 0; c < C; c++) {
                    mean[c] = 0.1 + 0.3 * (double)eq_test_uniform(&s_seed, 0, 1000) / 1000.0;
                    std[c] = 0.05 + 0.4 * (double)eq_test_uniform(&s_seed, 0, 1000) / 1000.0;
                }
                eq_feeder_batch b = { .epoch = 3, .step = 5, .count = count, .images = img, .labels = lab,
                                      .h = (uint32_t)h, .w = (uint32_t)w, .c = (uint32_t)C,
                                      .mix = mix ? "mixup" : "", .mix_index = mix ? partner : NULL,
                                      .mix_lambda = mix ? lamv : NULL };
                float *ref = eq_test_vec(&s_seed, (size_t)rows * per, 0.0f);
                float *got = eq_test_vec(&s_seed, (size_t)rows * per, 0.0f);
                int32_t ya[16], yb[16];
                float lam[16];
                bool mixed = false;
                ck_assert_msg(eq_train_stage(&b, rows, 6, mean, std, ref, ya, yb, lam, &mixed, &e) == EQ_OK, "%s",
                              e.msg);
                ck_assert(mixed == (mix != 0));
                float scale[4], shift[4]; /* as eq-trainer computes them */
                for (int c = 0; c < C; c++) {
                    scale[c] = (float)(1.0 / (255.0 * std[c]));
                    shift[c] = (float)(-mean[c] / std[c]);
                }
                eq_backend *be = eq_backend_cpu_new(threads, &e);
                ck_assert_msg(be != NULL, "%s", e.msg);
                /* the CPU backend's member, then the wrapper's host default */
                struct eq_backend_i plain = *be->iface;
                plain.stage_images = NULL;
                eq_backend dflt = { &plain, be->context };
                eq_backend *bes[2] = { be, &dflt };
                for (int v = 0; v < 2; v++) {
                    ck_assert_msg(eq_backend_stage_images(bes[v], count, (int64_t)per, C, img, scale, shift,
                                                          mix ? partner : NULL, mix ? lamv : NULL, got, &e) == EQ_OK,
                                  "%s", e.msg);
                    for (size_t i = 0; i < n; i++)
                        ck_assert_msg(!memcmp(&got[i], &ref[i], 4),
                                      "%s C=%d threads=%d mix=%d: element %zu: %.9g, eq_train_stage %.9g",
                                      v ? "default" : "cpu", C, threads, mix, i, (double)got[i], (double)ref[i]);
                    for (size_t i = n; i < (size_t)rows * per; i++) ck_assert(isnan(got[i])); /* untouched */
                    for (size_t i = 0; i < n; i++) got[i] = NAN;
                }
                eq_backend_destroy(&be);
                free(ref);
                free(got);
                free(img);
            }
}
END_TEST

START_TEST(test_stage_errors)
{
    eq_err e = { 0 };
    eq_backend *be = eq_backend_cpu_new(2, &e);
    ck_assert_msg(be != NULL, "%s", e.msg);
    uint8_t img[4 * 6] = { 1, 2, 3 };
    int32_t partner[4] = { 1, 0, 4, 3 };
    float lam[4] = { 0.5f, 0.5f, 0.5f, 0.5f }, sc[3] = { 1, 1, 1 }, sh[3] = { 0, 0, 0 }, dst[24];
    struct eq_backend_i plain = *be->iface;
    plain.stage_images = NULL;
    eq_backend dflt = { &plain, be->context };
    eq_backend *bes[2] = { be, &dflt };
    for (int v = 0; v < 2; v++) {
        eq_backend *b = bes[v];
        ck_assert_int_eq(eq_backend_stage_images(b, 4, 6, 3, img, sc, sh, partner, lam, dst, &e), EQ_ERR_INVALID);
        ck_assert_msg(strstr(e.msg, "stage_images") && strstr(e.msg, "partner of image 2") && strstr(e.msg, "is 4"),
                      "%s", e.msg);
        ck_assert_int_eq(eq_backend_stage_images(b, 4, 6, 4, img, sc, sh, NULL, NULL, dst, &e), EQ_ERR_INVALID);
        ck_assert_msg(strstr(e.msg, "c = 4"), "%s", e.msg);
        ck_assert_int_eq(eq_backend_stage_images(b, 4, 6, 17, img, sc, sh, NULL, NULL, dst, &e), EQ_ERR_INVALID);
        ck_assert_int_eq(eq_backend_stage_images(b, -1, 6, 3, img, sc, sh, NULL, NULL, dst, &e), EQ_ERR_INVALID);
        ck_assert_int_eq(eq_backend_stage_images(b, 4, 6, 3, img, sc, sh, partner, NULL, dst, &e), EQ_ERR_INVALID);
        ck_assert_msg(strstr(e.msg, "both partner and lambda"), "%s", e.msg);
        ck_assert_int_eq(eq_backend_stage_images(b, 4, 6, 3, img, NULL, sh, NULL, NULL, dst, &e), EQ_ERR_INVALID);
        ck_assert_msg(strstr(e.msg, "scale is NULL"), "%s", e.msg);
        ck_assert_int_eq(eq_backend_stage_images(b, 4, 6, 3, NULL, sc, sh, NULL, NULL, dst, &e), EQ_ERR_INVALID);
        ck_assert_int_eq(eq_backend_stage_images(b, 0, 6, 3, NULL, NULL, NULL, NULL, NULL, NULL, &e), EQ_OK);
    }
    /* no member and no host memory: refused naming the backend */
    struct eq_backend_i dev = plain;
    dev.name = "fakedev";
    dev.host_memory = 0;
    eq_backend d = { &dev, be->context };
    ck_assert_int_eq(eq_backend_stage_images(&d, 4, 6, 3, img, sc, sh, NULL, NULL, dst, &e), EQ_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(e.msg, "stage_images") && strstr(e.msg, "fakedev"), "%s", e.msg);
    /* upload_async / upload_wait defaults: a synchronous upload, nothing */
    uint8_t src[5] = { 9, 8, 7, 6, 5 }, out[5] = { 0 };
    ck_assert_ptr_null(be->iface->upload_async);
    ck_assert_int_eq(eq_backend_upload_async(be, out, src, 5, &e), EQ_OK);
    ck_assert(!memcmp(out, src, 5));
    ck_assert_int_eq(eq_backend_upload_wait(be, &e), EQ_OK);
    ck_assert_int_eq(eq_backend_upload_async(be, NULL, src, 5, &e), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_backend_upload_async(be, out, src, 0, &e), EQ_OK);
    ck_assert_int_eq(eq_backend_upload_wait(NULL, &e), EQ_ERR_INVALID);
    /* download_async's default: download (the bytes are there at once),
     * then event_record; its argument checks */
    ck_assert_ptr_null(be->iface->download_async);
    float *dv = eq_backend_alloc(be, 4 * sizeof(float), &e), v4[4] = { 1.5f, -2, 3, 4 }, h4[4] = { 0 };
    eq_backend_event *ev = eq_backend_event_new(be, &e);
    ck_assert(dv && ev);
    ck_assert_int_eq(eq_backend_upload(be, dv, v4, sizeof v4, &e), EQ_OK);
    ck_assert_int_eq(eq_backend_download_async(be, h4, dv, sizeof h4, ev, &e), EQ_OK);
    ck_assert_int_eq(eq_backend_event_synchronize(be, ev, &e), EQ_OK);
    ck_assert(!memcmp(h4, v4, sizeof v4));
    ck_assert_int_eq(eq_backend_download_async(be, h4, dv, 0, ev, &e), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_backend_download_async(be, h4, dv, EQ_BACKEND_DOWNLOAD_ASYNC_MAX + 1, ev, &e), EQ_ERR_INVALID);
    ck_assert_msg(strstr(e.msg, "download_async") && strstr(e.msg, "257 bytes"), "%s", e.msg);
    ck_assert_int_eq(eq_backend_download_async(be, h4, dv, 4, NULL, &e), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_backend_download_async(be, NULL, dv, 4, ev, &e), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_backend_download_async(NULL, h4, dv, 4, ev, &e), EQ_ERR_INVALID);
    eq_backend_event_destroy(be, &ev);
    eq_backend_release(be, dv);
    eq_backend_destroy(&be);
}
END_TEST

/* The fake sees what a GPU would do with a missing wait or a buffer
 * refilled too early. */
START_TEST(test_fake_detects)
{
    eq_err e = { 0 };
    eq_backend *cpu = s_fake_new();
    eq_backend *be = &g.be;
    uint8_t *slot = eq_backend_alloc(be, 64, &e), img[64];
    float *x = eq_backend_alloc(be, 64 * sizeof(float), &e), sc[1] = { 1.0f / 255 }, sh[1] = { 0 };
    ck_assert(slot && x);
    for (int i = 0; i < 64; i++) img[i] = (uint8_t)(i * 3);
    /* staged before the wait: the poison, and counted */
    ck_assert_int_eq(eq_backend_upload_async(be, slot, img, 64, &e), EQ_OK);
    memset(img, 0, sizeof img); /* the caller may reuse its buffer at once */
    ck_assert_int_eq(eq_backend_stage_images(be, 4, 16, 1, slot, sc, sh, NULL, NULL, x, &e), EQ_OK);
    ck_assert_int_eq(g.early, 1);
    ck_assert(x[0] == (float)S_POISON * sc[0]);
    /* after the wait: the data as it was uploaded */
    ck_assert_int_eq(eq_backend_upload_wait(be, &e), EQ_OK);
    ck_assert_int_eq(eq_backend_stage_images(be, 4, 16, 1, slot, sc, sh, NULL, NULL, x, &e), EQ_OK);
    ck_assert_int_eq(g.early, 1);
    ck_assert(x[5] == (float)15 * sc[0]);
    /* labels read by the loss while a refill is pending: counted */
    int32_t *lab = (int32_t *)(void *)slot, two[2] = { 1, 0 };
    float logits[4] = { 1, 2, 3, 4 }, *dl = eq_backend_alloc(be, 16, &e), loss;
    ck_assert_int_eq(eq_backend_upload_async(be, lab, two, 8, &e), EQ_OK);
    eq_xent_desc d;
    ck_assert_int_eq(eq_xent_desc_init(&d, 2, 2, 0, &e), EQ_OK);
    eq_status st = eq_backend_xent_fwd(be, &d, logits, lab, NULL, NULL, &loss, &e);
    ck_assert_int_eq(st, EQ_ERR_INVALID); /* the poisoned label is outside [0, 2) */
    ck_assert_int_eq(g.early, 2);
    ck_assert_int_eq(eq_backend_upload_wait(be, &e), EQ_OK);
    ck_assert_int_eq(eq_backend_xent_bwd(be, &d, logits, lab, NULL, NULL, 1.0f, dl, &e), EQ_OK);
    ck_assert_int_eq(g.early, 2);
    eq_backend_release(be, slot);
    eq_backend_release(be, x);
    eq_backend_release(be, dl);
    eq_backend_destroy(&cpu);
}
END_TEST

/* ---- eq-trainer in this process --------------------------------------------- */

/* A tiny synthetic ImageFolder (4 classes x 16 train, 7 val: a val pass of
 * 16 + 12), mixup, 2 epochs of 4 steps of 16, an eq-loader serving it. */
typedef eq_tinyjob s_env;

static void s_env_up(s_env *v, const char *name)
{
    eq_log_set_level(EQ_LOG_WARN);
    eq_synth_cfg sc = { .classes = 4, .train_per_class = 16, .val_per_class = 7, .mean_pixels = 600, .seed = 5,
                        .nthreads = 1 };
    eq_tinyjob_up(v, name, &sc,
            "[loader]\nthreads = 1\ndatasets = tiny=%s\n[data]\ndataset = tiny\nheight = 12\nwidth = 12\nchannels = 3\n"
            "global_batch = 16\naug_train = center\naug_val = center\nmixup_alpha = 0.4\n[model]\nnum_classes = 4\n"
            "in_channels = 3\nwidth_alpha = 0.125\n[schedule]\nepochs = 2\n[train]\nname = pipe\n"
            "mean = 0.5, 0.45, 0.4\nstd = 0.25, 0.2, 0.3\nthreads = 1\neval_every = 1\ntimeout_ms = 20000\n");
}

static void s_env_down(s_env *v) { eq_tinyjob_down(v, "EQ_PIPELINE_KEEP"); }

/* eq_train in this process with out_dir dir/tag, on `be` (NULL: the
 * configured CPU backend), optionally resuming; its status. */
static eq_status s_train(s_env *v, const char *tag, eq_backend *be, const char *resume)
{
    eq_err e = { 0 };
    char out[4300], rpath[4400];
    snprintf(out, sizeof out, "train.out_dir=%s/%s", v->dir, tag);
    const char *sets[1] = { out };
    eq_experiment x;
    char *text = NULL;
    ck_assert_msg(eq_experiment_load(&x, v->cfg, sets, 1, &text, &e) == EQ_OK, "%s", e.msg);
    if (resume) snprintf(rpath, sizeof rpath, "%s/%s/last.safetensors", v->dir, resume);
    const char *lds[1] = { v->ld_ep };
    eq_train_opts o = { .loaders = lds, .nloaders = 1, .config_text = text, .resume = resume ? rpath : NULL,
                        .backend = be };
    eq_train *t = eq_train_new(&x, &o, &e);
    ck_assert_msg(t != NULL, "%s", e.msg);
    g.train = be ? t : NULL;
    eq_status st = eq_train_run(t, &e);
    if (st && st != EQ_ERR_INTERRUPTED) fprintf(stderr, "%s: %s\n", tag, e.msg);
    g.train = NULL;
    eq_train_destroy(&t);
    free(text);
    return st;
}

/* s_train without resuming, keeping the error. */
static eq_status s_train_err(s_env *v, const char *tag, eq_backend *be, eq_err *e)
{
    char out[4300];
    snprintf(out, sizeof out, "train.out_dir=%s/%s", v->dir, tag);
    const char *sets[1] = { out };
    eq_experiment x;
    char *text = NULL;
    ck_assert_msg(eq_experiment_load(&x, v->cfg, sets, 1, &text, e) == EQ_OK, "%s", e->msg);
    const char *lds[1] = { v->ld_ep };
    eq_train_opts o = { .loaders = lds, .nloaders = 1, .config_text = text, .backend = be };
    eq_train *t = eq_train_new(&x, &o, e);
    ck_assert_msg(t != NULL, "%s", e->msg);
    eq_status st = eq_train_run(t, e);
    eq_train_destroy(&t);
    free(text);
    return st;
}

/* The "loss" values of tag's metrics.jsonl, in order, as printed. */
static void s_losses(s_env *v, const char *tag, char *out, size_t cap)
{
    char p[4400], line[4096];
    snprintf(p, sizeof p, "%s/%s/metrics.jsonl", v->dir, tag);
    FILE *f = fopen(p, "r");
    ck_assert_msg(f != NULL, "%s", p);
    size_t used = 0;
    out[0] = 0;
    while (fgets(line, sizeof line, f)) {
        const char *l = strstr(line, "\"loss\":");
        if (!l || (!strstr(line, "\"kind\":\"train\"") && !strstr(line, "\"kind\":\"epoch\""))) continue;
        l += 7;
        size_t k = strcspn(l, ",}");
        ck_assert_uint_lt(used + k + 2, cap);
        memcpy(out + used, l, k);
        used += k;
        out[used++] = ' ';
        out[used] = 0;
    }
    fclose(f);
}

/* Runs a and b reported the same losses (at least four). */
static void s_same_losses(s_env *v, const char *a, const char *b)
{
    char la[2048], lb[2048];
    s_losses(v, a, la, sizeof la);
    s_losses(v, b, lb, sizeof lb);
    int n = 0;
    for (const char *c = la; *c; c++) n += *c == ' ';
    ck_assert_msg(n >= 4, "losses of %s: '%s'", a, la);
    ck_assert_msg(!strcmp(la, lb), "losses of %s '%s', of %s '%s'", a, la, b, lb);
    fprintf(stderr, "%s and %s: losses %s\n", a, b, la);
}

/* The checkpoint of tag resumes at (epoch, step). */
static void s_resumes_at(s_env *v, const char *tag, const char *epoch, const char *step)
{
    eq_st_file *f = eq_tinyjob_ckpt(v, tag, "last.safetensors");
    ck_assert_str_eq(eq_st_meta_get(f, "epoch"), epoch);
    ck_assert_str_eq(eq_st_meta_get(f, "step"), step);
    eq_st_close(&f);
}

START_TEST(test_fake_same_bits)
{
    s_env v;
    s_env_up(&v, "pipe-fake");
    ck_assert_int_eq(s_train(&v, "plain", NULL, NULL), EQ_OK);
    eq_backend *cpu = s_fake_new();
    ck_assert_int_eq(s_train(&v, "fake", &g.be, NULL), EQ_OK);
    /* 2 epochs x (4 train + 2 val batches), images and labels each */
    ck_assert_int_eq(g.uploads, 24);
    ck_assert_int_eq(g.stages, 12);
    ck_assert_int_eq(g.waits, 12);
    ck_assert_int_eq(g.np, 0);
    ck_assert_msg(g.early == 0, "%ld reads of a buffer with an upload pending", g.early);
    eq_test_same_bits(v.dir, "plain", "fake", 1);
    /* one asynchronous loss download per step, each waited for */
    ck_assert_int_eq(g.dl_async, 8);
    ck_assert_int_eq(g.dl_landed, 8);
    ck_assert_int_eq(g.nd, 0);
    s_same_losses(&v, "plain", "fake");
    eq_backend_destroy(&cpu);
    s_env_down(&v);
}
END_TEST

/* A NaN loss at epoch 1 step 1 (the fake's sixth download) stops the run
 * naming that step, with no checkpoint after it: last.safetensors is the
 * epoch 0 checkpoint, bitwise the plain run's. */
START_TEST(test_loss_nan)
{
    s_env v;
    s_env_up(&v, "pipe-nan");
    ck_assert_int_eq(s_train(&v, "plain", NULL, NULL), EQ_OK);
    eq_backend *cpu = s_fake_new();
    g.dl_nan_at = 6;
    eq_err e = { 0 };
    ck_assert_int_eq(s_train_err(&v, "nan", &g.be, &e), EQ_ERR_INVALID);
    ck_assert_msg(strstr(e.msg, "loss is NaN at epoch 1 step 1"), "%s", e.msg);
    ck_assert_int_eq(g.dl_landed, 6);
    s_resumes_at(&v, "nan", "1", "0");
    eq_st_file *fa = eq_tinyjob_ckpt(&v, "plain", "epoch0.safetensors"), *fb = eq_tinyjob_ckpt(&v, "nan", "last.safetensors");
    ck_assert_uint_eq(eq_st_count(fa), eq_st_count(fb));
    ck_assert_uint_gt(eq_st_count(fa), 50);
    for (size_t i = 0; i < eq_st_count(fa); i++) {
        long j = eq_st_find(fb, eq_st_name(fa, i));
        ck_assert_int_ge(j, 0);
        size_t na, nb;
        const void *da = eq_st_data(fa, i, &na), *db = eq_st_data(fb, (size_t)j, &nb);
        ck_assert_msg(na == nb && !memcmp(da, db, na), "%s differs", eq_st_name(fa, i));
    }
    eq_st_close(&fa);
    eq_st_close(&fb);
    eq_backend_destroy(&cpu);
    s_env_down(&v);
}
END_TEST

/* A stop with the next batch already fetched and uploaded (signalled from
 * the upload of epoch 0 step 2's labels, during step 1), and one before
 * that fetch (signalled from epoch 1 step 1's staging): each finishes its
 * step and checkpoints at step 2; the resumed runs end bitwise as the
 * uninterrupted one. */
START_TEST(test_stop_resume)
{
    s_env v;
    s_env_up(&v, "pipe-stop");
    ck_assert_int_eq(s_train(&v, "whole", NULL, NULL), EQ_OK);
    eq_backend *cpu = s_fake_new();
    g.stop_at_upload = 6; /* uploads: step 0 images, labels, step 1 ..., step 2 images, labels */
    ck_assert_int_eq(s_train(&v, "a", &g.be, NULL), EQ_ERR_INTERRUPTED);
    ck_assert_int_eq(g.stages, 2); /* steps 0 and 1 ran, step 2 did not */
    ck_assert_int_eq(s_fake_drop(), 2); /* step 2's batch had been uploaded */
    ck_assert_int_eq(g.nd, 0);          /* step 1's loss was waited for before the checkpoint */
    s_resumes_at(&v, "a", "0", "2");
    g.stop_at_upload = 0;
    ck_assert_int_eq(s_train(&v, "a", &g.be, "a"), EQ_OK);
    eq_test_same_bits(v.dir, "whole", "a", 1);
    g.stages = 0;
    g.stop_at_stage = 8; /* stages: epoch 0 steps 0-3, val 2; epoch 1 steps 0, 1 */
    ck_assert_int_eq(s_train(&v, "b", &g.be, NULL), EQ_ERR_INTERRUPTED);
    ck_assert_int_eq(g.stages, 8);
    ck_assert_int_eq(g.nd, 0);
    s_fake_drop();
    s_resumes_at(&v, "b", "1", "2");
    g.stop_at_stage = 0;
    ck_assert_int_eq(s_train(&v, "b", &g.be, "b"), EQ_OK);
    eq_test_same_bits(v.dir, "whole", "b", 1);
    ck_assert_msg(g.early == 0, "%ld reads of a buffer with an upload pending", g.early);
    eq_backend_destroy(&cpu);
    s_env_down(&v);
}
END_TEST

/* The gradient hook's reports: tensor, and quant_grads_wait calls so far. */
typedef struct {
    size_t n, got[1024];
    long qw[1024];
} s_reports;

static void s_report(void *arg, size_t i)
{
    s_reports *r = arg;
    ck_assert_uint_lt(r->n, 1024);
    r->qw[r->n] = g.qwaits;
    r->got[r->n++] = i;
}

START_TEST(test_quant_grads_deferred)
{
    char *dir = eq_test_scratch("pipe-qdefer");
    eq_experiment x;
    eq_tinyjob_experiment(dir, &x);
    eq_err e = { 0 };
    eq_backend *cpu = s_fake_new(), *plain = eq_backend_cpu_new(1, &e);
    ck_assert_ptr_nonnull(plain);
    g.fi.quant_grads_wait = s_fake_qwait;
    ck_assert(eq_backend_quant_grads_deferred(&g.be) && !eq_backend_quant_grads_deferred(plain));
    const int64_t N = 4, H = 12;
    eq_model *md = eq_model_new_ot(&g.be, &x.model, &x.wt, &x.fm, &x.ot, N, H, H, &e);
    ck_assert_msg(md != NULL, "%s", e.msg);
    eq_model *mp = eq_model_new_ot(plain, &x.model, &x.wt, &x.fm, &x.ot, N, H, H, &e);
    ck_assert_msg(mp != NULL, "%s", e.msg);
    size_t nt = eq_model_tensor_count(md), ng = eq_model_grad_order(md, NULL, 0), nq = 0;
    ck_assert_uint_eq(ng, eq_model_grad_order(mp, NULL, 0));
    ck_assert_uint_le(ng, 1024);
    size_t *order = calloc(ng, sizeof *order);
    ck_assert_uint_eq(eq_model_grad_order(md, order, ng), ng);
    for (size_t i = 0; i < nt; i++) { /* the same initial values */
        const eq_model_tensor *a = eq_model_tensor_at(md, i), *b = eq_model_tensor_at(mp, i);
        ck_assert_str_eq(a->name, b->name);
        size_t nb = a->numel * (a->dtype == EQ_DT_I64 ? 8 : 4);
        memcpy(a->data, b->data, nb);
        nq += a->grad && a->quant;
    }
    ck_assert_uint_gt(nq, 10);
    s_reports *r = calloc(1, sizeof *r);
    ck_assert_ptr_nonnull(r);
    eq_model_set_grad_hook(md, s_report, r);
    size_t xn = (size_t)(N * H * H * 3);
    float *xin = eq_test_vec(&s_seed, xn, 1.0f);
    int32_t labels[4] = { 0, 1, 2, 3 };
    float loss[2];
    eq_model *ms[2] = { md, mp };
    for (int k = 0; k < 2; k++) {
        ck_assert_msg(eq_model_forward(ms[k], xin, true, &e) == EQ_OK, "%s", e.msg);
        ck_assert_msg(eq_model_loss(ms[k], labels, NULL, NULL, 0, &loss[k], &e) == EQ_OK, "%s", e.msg);
        ck_assert_msg(eq_model_backward(ms[k], NULL, &e) == EQ_OK, "%s", e.msg);
    }
    ck_assert_int_eq(g.qwaits, 1); /* once, at the backward's end */
    /* every tensor once, in eq_model_grad_order's order; the quantizers'
     * after the wait, the others before it (the overlap is kept) */
    ck_assert_uint_eq(r->n, ng);
    size_t early = 0;
    for (size_t j = 0; j < ng; j++) {
        ck_assert_uint_eq(r->got[j], order[j]);
        const eq_model_tensor *t = eq_model_tensor_at(md, r->got[j]);
        if (t->quant) ck_assert_msg(r->qw[j] == 1, "%s reported before quant_grads_wait", t->name);
        early += r->qw[j] == 0;
        if (j > 0 && r->qw[j - 1] == 1) ck_assert_int_eq(r->qw[j], 1);
    }
    ck_assert_uint_gt(early, ng / 2);
    /* the same numbers as the plain backend */
    ck_assert(memcmp(&loss[0], &loss[1], sizeof(float)) == 0);
    for (size_t i = 0; i < nt; i++) {
        const eq_model_tensor *a = eq_model_tensor_at(md, i), *b = eq_model_tensor_at(mp, i);
        if (a->grad) ck_assert_msg(!memcmp(a->grad, b->grad, a->numel * 4), "%s: gradients differ", a->name);
    }
    fprintf(stderr, "deferred quantizer gradients: %zu of %zu tensors reported during the backward, %zu quantizer "
            "tensors after its one quant_grads_wait\n", early, ng, nq);
    eq_model_destroy(&md);
    eq_model_destroy(&mp);
    eq_backend_destroy(&plain);
    eq_backend_destroy(&cpu);
    free(order);
    free(r);
    free(xin);
    eq_test_scratch_rm(dir);
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("pipeline");
    TCase *tc = tcase_create("stage");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_stage_cpu);
    tcase_add_test(tc, test_stage_errors);
    tcase_add_test(tc, test_fake_detects);
    tcase_add_test(tc, test_quant_grads_deferred);
    suite_add_tcase(s, tc);
    TCase *tp = tcase_create("trainer");
    tcase_set_timeout(tp, 240);
    tcase_add_test(tp, test_fake_same_bits);
    tcase_add_test(tp, test_stop_resume);
    tcase_add_test(tp, test_loss_nan);
    suite_add_tcase(s, tp);
    return s;
}

int main(void) { return eq_test_run(s_suite()); }
