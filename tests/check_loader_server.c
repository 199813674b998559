/* tests/check_loader_server.c -- eq-loader's serving half: dataset kind
 * detection, the JOB -> pipeline mapping and config sections, and the
 * server over inproc (and tcp on 127.0.0.1 for CURVE): HELLO, JOB, BATCH
 * bytes equal to the loader library's own batches, determinism, several
 * requests in flight, every class of bad request, the control socket. */
#include <pthread.h>
#include <sys/stat.h>

#include "core/json.h"
#include "core/log.h"
#include "loader/server.h"
#include "proto/proto_zmq.h"
#include "tests/testutil.h"

#define S_N 100  /* samples in the test IDX set */
#define S_HW 12  /* image side */

static void s_be32(FILE *f, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    ck_assert_uint_eq(fwrite(b, 1, 4, f), 4);
}

/* An MNIST-like IDX directory: train (S_N samples) and t10k (S_N / 2). */
static void s_write_idx(const char *dir)
{
    static const char *const pre[2] = {"train", "t10k"};
    for (int k = 0; k < 2; k++) {
        uint32_t n = k ? S_N / 2 : S_N;
        char p[4200];
        snprintf(p, sizeof p, "%s/%s-images-idx3-ubyte", dir, pre[k]);
        FILE *f = fopen(p, "wb");
        ck_assert_ptr_nonnull(f);
        s_be32(f, 0x803);
        s_be32(f, n);
        s_be32(f, S_HW);
        s_be32(f, S_HW);
        for (uint32_t i = 0; i < n * S_HW * S_HW; i++) fputc((int)((i * 2654435761u) >> 24), f);
        fclose(f);
        snprintf(p, sizeof p, "%s/%s-labels-idx1-ubyte", dir, pre[k]);
        f = fopen(p, "wb");
        ck_assert_ptr_nonnull(f);
        s_be32(f, 0x801);
        s_be32(f, n);
        for (uint32_t i = 0; i < n; i++) fputc((int)(i % 10), f);
        fclose(f);
    }
}

/* ------------------------------------------------------------ detection */

static void s_touch(const char *dir, const char *name)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    ck_assert_ptr_nonnull(f);
    fclose(f);
}

START_TEST(test_detect)
{
    char *root = eq_test_scratch("detect");
    char p[4200];
    eq_ds_kind k;
    eq_err e = {0};
    snprintf(p, sizeof p, "%s/idx", root);
    mkdir(p, 0755);
    s_touch(p, "t10k-images-idx3-ubyte.gz");
    ck_assert_int_eq(eq_loader_detect(p, &k, &e), EQ_OK);
    ck_assert_int_eq(k, EQ_DS_IDX);
    snprintf(p, sizeof p, "%s/c10", root);
    mkdir(p, 0755);
    s_touch(p, "data_batch_1.bin");
    ck_assert_int_eq(eq_loader_detect(p, &k, &e), EQ_OK);
    ck_assert_int_eq(k, EQ_DS_CIFAR10);
    snprintf(p, sizeof p, "%s/c100", root);
    mkdir(p, 0755);
    s_touch(p, "train.bin");
    ck_assert_int_eq(eq_loader_detect(p, &k, &e), EQ_OK);
    ck_assert_int_eq(k, EQ_DS_CIFAR100);
    ck_assert_str_eq(eq_loader_kind_name(k), "cifar100");
    snprintf(p, sizeof p, "%s/folder", root);
    mkdir(p, 0755);
    ck_assert_int_eq(eq_loader_detect(p, &k, &e), EQ_OK);
    ck_assert_int_eq(k, EQ_DS_IMAGEFOLDER);
    snprintf(p, sizeof p, "%s/missing", root);
    ck_assert_int_eq(eq_loader_detect(p, &k, &e), EQ_ERR_NOTFOUND);
    ck_assert_ptr_nonnull(strstr(e.msg, "missing"));
    snprintf(p, sizeof p, "%s/c10/data_batch_1.bin", root);
    ck_assert_int_eq(eq_loader_detect(p, &k, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "not a directory"));
    eq_test_scratch_rm(root);
}
END_TEST

/* ------------------------------------------------------------ mapping */

static void s_job_defaults(eq_msg *m, eq_loader_data_cfg *dc)
{
    eq_config_section secs[2];
    eq_loader_config_sections(NULL, dc, secs);
    eq_err e = {0};
    ck_assert_msg(eq_config_defaults(secs, 2, &e) == EQ_OK, "%s", e.msg);
    ck_assert_msg(eq_loader_data_job(dc, "train", m, &e) == EQ_OK, "%s", e.msg);
}

START_TEST(test_schema_and_mapping)
{
    eq_loader_cfg lc;
    eq_loader_data_cfg dc;
    eq_config_section secs[2];
    eq_loader_config_sections(&lc, &dc, secs);
    eq_err e = {0};
    ck_assert_msg(eq_config_check_schema(secs, 2, &e) == EQ_OK, "%s", e.msg);
    const char *text = "[loader]\nthreads = 3\ndatasets = a=/x, b=/y\n[data]\ndataset = a\nheight = 20\n"
                       "width = 24\naug_train = center\nresize = 30\n";
    ck_assert_msg(eq_config_parse_buffer(secs, 2, "t.cfg", text, strlen(text), NULL, 0, &e) == EQ_OK, "%s", e.msg);
    ck_assert_int_eq(lc.threads, 3);
    ck_assert_uint_eq(lc.ndatasets, 2);
    ck_assert_str_eq(lc.datasets[1], "b=/y");

    eq_msg m;
    ck_assert_int_eq(eq_loader_data_job(&dc, "train", &m, &e), EQ_OK);
    ck_assert_str_eq(m.u.job.dataset, "a");
    m.has_req = true;
    m.req = 1;
    uint8_t *buf;
    size_t len;
    ck_assert_msg(eq_proto_encode(&m, &buf, &len, &e) == EQ_OK, "%s", e.msg); /* a valid JOB */
    free(buf);
    eq_pipeline_cfg pc;
    ck_assert_msg(eq_loader_job_pipeline(&m.u.job, &pc, &e) == EQ_OK, "%s", e.msg);
    ck_assert_int_eq(pc.aug, EQ_AUG_CENTER);
    ck_assert_uint_eq(pc.out_h, 20);
    ck_assert_uint_eq(pc.out_w, 24);
    ck_assert_uint_eq(pc.resize, 30);
    ck_assert_int_eq(pc.hflip, 1);
    ck_assert_int_eq(pc.sampler.shuffle, 1);
    ck_assert_int_eq(pc.sampler.last, EQ_LAST_DROP);

    /* val: partial last batch, no shuffle, val augmentation */
    ck_assert_int_eq(eq_loader_data_job(&dc, "val", &m, &e), EQ_OK);
    ck_assert_int_eq(m.u.job.last, EQ_PROTO_LAST_PARTIAL);
    ck_assert_int_eq(eq_loader_job_pipeline(&m.u.job, &pc, &e), EQ_OK);
    ck_assert_int_eq(pc.sampler.last, EQ_LAST_PARTIAL);
    ck_assert_int_eq(pc.sampler.shuffle, 0);

    /* strict transforms */
    s_job_defaults(&m, &dc);
    eq_proto_kv *kv = &m.u.job.transforms[m.u.job.ntransforms++];
    snprintf(kv->key, sizeof kv->key, "colour");
    kv->type = EQ_PROTO_VAL_FLOAT;
    ck_assert_int_eq(eq_loader_job_pipeline(&m.u.job, &pc, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "'colour' unknown"));
    snprintf(kv->key, sizeof kv->key, "hflip");
    ck_assert_int_eq(eq_loader_job_pipeline(&m.u.job, &pc, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "'hflip' is a float, expected a bool"));
    snprintf(kv->key, sizeof kv->key, "pad");
    kv->type = EQ_PROTO_VAL_INT;
    kv->i = 65;
    ck_assert_int_eq(eq_loader_job_pipeline(&m.u.job, &pc, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "out of range"));
    snprintf(kv->key, sizeof kv->key, "aug");
    kv->type = EQ_PROTO_VAL_STR;
    snprintf(kv->s, sizeof kv->s, "zoom");
    ck_assert_int_eq(eq_loader_job_pipeline(&m.u.job, &pc, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "\"zoom\""));
    m.u.job.ntransforms--;

    char fp[256], fp2[256];
    ck_assert_int_eq(eq_loader_job_pipeline(&m.u.job, &pc, &e), EQ_OK);
    eq_loader_pipeline_fingerprint(&pc, fp, sizeof fp);
    ck_assert_ptr_nonnull(strstr(fp, "libjpeg-turbo"));
    ck_assert_ptr_nonnull(strstr(fp, "dct_scale=1"));

    /* mixup/cutmix map to cfg->mix */
    m.u.job.mixup_alpha = 0.2;
    m.u.job.mix_prob = 0.5;
    ck_assert_msg(eq_loader_job_pipeline(&m.u.job, &pc, &e) == EQ_OK, "%s", e.msg);
    ck_assert(pc.mix.mixup_alpha == 0.2f && pc.mix.prob == 0.5f && pc.mix.batch_lambda == 1);
    snprintf(m.u.job.mix_mode, sizeof m.u.job.mix_mode, "elem");
    ck_assert_int_eq(eq_loader_job_pipeline(&m.u.job, &pc, &e), EQ_OK);
    ck_assert_int_eq(pc.mix.batch_lambda, 0);
    m.u.job.cutmix_alpha = 1.0; /* both on, per element: one batch would hold both kinds */
    ck_assert_int_eq(eq_loader_job_pipeline(&m.u.job, &pc, &e), EQ_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(e.msg, "one mix kind"));
    snprintf(m.u.job.mix_mode, sizeof m.u.job.mix_mode, "pair");
    ck_assert_int_eq(eq_loader_job_pipeline(&m.u.job, &pc, &e), EQ_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(e.msg, "pair"));
    snprintf(m.u.job.mix_mode, sizeof m.u.job.mix_mode, "batch");
    kv = &m.u.job.transforms[m.u.job.ntransforms++];
    snprintf(kv->key, sizeof kv->key, "mix_block");
    kv->type = EQ_PROTO_VAL_INT;
    kv->i = 100; /* G = 256: does not divide it */
    ck_assert_int_eq(eq_loader_job_pipeline(&m.u.job, &pc, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "'mix_block' = 100 does not divide global_batch 256"));
    kv->i = 64;
    ck_assert_msg(eq_loader_job_pipeline(&m.u.job, &pc, &e) == EQ_OK, "%s", e.msg);
    ck_assert_uint_eq(pc.mix.block, 64);

    /* every option that changes bytes changes the fingerprint */
    eq_pipeline_cfg base = pc, v;
    eq_loader_pipeline_fingerprint(&base, fp, sizeof fp);
    ck_assert_ptr_nonnull(strstr(fp, "mix_block=64; batch_lambda=1"));
    v = base;
    v.dct_scale = EQ_DCT_ANY;
    eq_loader_pipeline_fingerprint(&v, fp2, sizeof fp2);
    ck_assert_ptr_nonnull(strstr(fp2, "dct_scale=2"));
    v.dct_scale = EQ_DCT_OFF;
    eq_loader_pipeline_fingerprint(&v, fp2, sizeof fp2);
    ck_assert_ptr_nonnull(strstr(fp2, "dct_scale=0"));
    v.dct_scale = 7; /* read as POW2 by the library */
    eq_loader_pipeline_fingerprint(&v, fp2, sizeof fp2);
    ck_assert_str_eq(fp2, fp);
    v = base;
    v.jitter[2] = 0.4f;
    eq_loader_pipeline_fingerprint(&v, fp2, sizeof fp2);
    ck_assert_str_ne(fp2, fp);
    v = base;
    v.mix.block = 32;
    eq_loader_pipeline_fingerprint(&v, fp2, sizeof fp2);
    ck_assert_str_ne(fp2, fp);
    v = base;
    v.mix.batch_lambda = 0;
    eq_loader_pipeline_fingerprint(&v, fp2, sizeof fp2);
    ck_assert_str_ne(fp2, fp);
    v = base;
    v.max_pixels = 1000;
    eq_loader_pipeline_fingerprint(&v, fp2, sizeof fp2);
    ck_assert_str_ne(fp2, fp);

    /* dct_scale as the mode number; jitter keys */
    snprintf(kv->key, sizeof kv->key, "dct_scale");
    kv->i = 2;
    ck_assert_int_eq(eq_loader_job_pipeline(&m.u.job, &pc, &e), EQ_OK);
    ck_assert_int_eq(pc.dct_scale, EQ_DCT_ANY);
    kv->i = 3;
    ck_assert_int_eq(eq_loader_job_pipeline(&m.u.job, &pc, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "'dct_scale' = 3 out of range"));
    snprintf(kv->key, sizeof kv->key, "jitter_contrast");
    kv->type = EQ_PROTO_VAL_FLOAT;
    kv->f = 0.4;
    ck_assert_int_eq(eq_loader_job_pipeline(&m.u.job, &pc, &e), EQ_OK);
    ck_assert(pc.jitter[0] == 0 && pc.jitter[1] == 0.4f && pc.jitter[2] == 0);
}
END_TEST

/* The committed example config parses, with the expected values. */
START_TEST(test_example_config)
{
    eq_loader_cfg lc;
    eq_loader_data_cfg dc;
    eq_config_section secs[2];
    eq_loader_config_sections(&lc, &dc, secs);
    char path[4200];
    snprintf(path, sizeof path, "%s/configs/fashion-mnist.cfg", eq_test_srcdir());
    eq_err e = {0};
    const char *sets[] = {"data.seed=3"};
    ck_assert_msg(eq_config_load(secs, 2, path, sets, 1, &e) == EQ_OK, "%s", e.msg);
    ck_assert_str_eq(lc.bind, "tcp://127.0.0.1:5555");
    ck_assert_uint_eq(lc.ndatasets, 1);
    ck_assert_str_eq(lc.datasets[0], "fashion-mnist=" EQ_FASHION_MNIST_DIR);
    ck_assert_str_eq(dc.dataset, "fashion-mnist");
    ck_assert_int_eq(dc.height, 28);
    ck_assert_int_eq(dc.channels, 1);
    ck_assert_int_eq(dc.seed, 3);
    ck_assert_int_eq(dc.aug_train, EQ_AUG_PADCROP);
    ck_assert_int_eq(dc.pad, 2);
    ck_assert_int_eq(dc.aug_val, EQ_AUG_NONE);
}
END_TEST

/* ------------------------------------------------------------ server */

typedef struct s_fixture {
    char *root;
    char decl[4300];
    const char *decls[1];
    void *ctx;
    eq_loader_server *srv;
    pthread_t th;
    eq_status rc;
    int running;
    void *dealer;
    uint64_t req;
} s_fixture;

static void *s_run(void *arg)
{
    s_fixture *f = arg;
    eq_err e = {0};
    f->rc = eq_loader_server_run(f->srv, &e);
    return NULL;
}

static void s_start(s_fixture *f, const char *bind, int threads, uint64_t budget)
{
    memset(f, 0, sizeof *f);
    f->root = eq_test_scratch("srv");
    s_write_idx(f->root);
    snprintf(f->decl, sizeof f->decl, "tiny=%s", f->root);
    f->decls[0] = f->decl;
    f->ctx = zmq_ctx_new();
    eq_loader_server_cfg cfg = {
        .bind = bind, .control = "inproc://ctl", .datasets = f->decls, .ndatasets = 1, .threads = threads,
        .max_inflight_bytes = budget,
    };
    eq_err e = {0};
    f->srv = eq_loader_server_new(f->ctx, &cfg, &e);
    ck_assert_msg(f->srv != NULL, "%s", e.msg);
    ck_assert_int_eq(pthread_create(&f->th, NULL, s_run, f), 0);
    f->running = 1;
    eq_proto_sockopts o;
    eq_proto_sockopts_default(&o, NULL);
    o.rcvtimeo_ms = 3000;
    f->dealer = eq_proto_socket(f->ctx, ZMQ_DEALER, &o, &e);
    ck_assert_ptr_nonnull(f->dealer);
    ck_assert_int_eq(eq_proto_connect(f->dealer, eq_loader_server_endpoint(f->srv), &e), EQ_OK);
}

static void s_finish(s_fixture *f)
{
    eq_proto_socket_close(&f->dealer);
    if (f->running) {
        eq_loader_server_stop(f->srv);
        pthread_join(f->th, NULL);
        ck_assert_int_eq(f->rc, EQ_OK);
    }
    eq_loader_server_destroy(&f->srv);
    ck_assert_ptr_null(f->srv);
    zmq_ctx_term(f->ctx);
    eq_test_scratch_rm(f->root);
}

/* Counters are updated by the server thread just after it sends: wait (at
 * most 2 s) until `sent` batches are counted and nothing is in flight. */
static void s_settle(s_fixture *f, uint64_t sent, eq_loader_stats *st)
{
    for (int i = 0; i < 200; i++) {
        eq_loader_server_stats(f->srv, st);
        if (st->batches_sent >= sent && st->inflight_bytes == 0) return;
        usleep(10000);
    }
}

static void s_send(s_fixture *f, eq_msg *m)
{
    eq_err e = {0};
    ck_assert_msg(eq_proto_send(f->dealer, NULL, m, NULL, 0, 0, &e) == EQ_OK, "%s", e.msg);
}

static void s_recv(s_fixture *f, eq_proto_recvd *r, eq_msg_type want)
{
    eq_err e = {0};
    ck_assert_msg(eq_proto_recv(f->dealer, r, NULL, 0, &e) == EQ_OK, "%s", e.msg);
    ck_assert_msg(r->msg.type == want, "got %s (%s), expected %s", eq_msg_type_name(r->msg.type),
                  r->msg.type == EQ_MSG_ERROR ? r->msg.u.error.message : "", eq_msg_type_name(want));
}

/* JOB for the tiny set: `aug` for the train split, G = 16. */
static void s_tiny_job(eq_msg *m, const char *split, const char *aug)
{
    eq_loader_data_cfg dc;
    s_job_defaults(m, &dc);
    snprintf(dc.dataset, sizeof dc.dataset, "tiny");
    dc.height = dc.width = 10;
    dc.global_batch = 16;
    dc.seed = 7;
    dc.aug_train = !strcmp(aug, "rrc") ? EQ_AUG_RRC : !strcmp(aug, "none") ? EQ_AUG_NONE : EQ_AUG_CENTER;
    if (dc.aug_train == EQ_AUG_NONE) dc.height = dc.width = S_HW;
    eq_err e = {0};
    ck_assert_int_eq(eq_loader_data_job(&dc, split, m, &e), EQ_OK);
}

static void s_job_ok(s_fixture *f, const char *split, const char *aug, char id[EQ_PROTO_ID_CAP],
                     eq_proto_recvd *r)
{
    eq_msg m;
    s_tiny_job(&m, split, aug);
    m.has_req = true;
    m.req = ++f->req;
    s_send(f, &m);
    s_recv(f, r, EQ_MSG_JOB_OK);
    ck_assert_uint_eq(r->msg.req, m.req);
    char want[EQ_PROTO_ID_CAP];
    ck_assert_int_eq(eq_proto_job_id(&m, want, NULL), EQ_OK);
    ck_assert_str_eq(r->msg.u.job_ok.job, want);
    snprintf(id, EQ_PROTO_ID_CAP, "%s", want);
}

static void s_breq(s_fixture *f, const char *id, uint64_t epoch, uint64_t step, uint32_t off, uint32_t count,
                   uint64_t req)
{
    eq_msg m;
    eq_proto_msg_init(&m, EQ_MSG_BATCH_REQ);
    m.has_req = true;
    m.req = req;
    snprintf(m.u.batch_req.job, sizeof m.u.batch_req.job, "%s", id);
    m.u.batch_req.epoch = epoch;
    m.u.batch_req.step = step;
    m.u.batch_req.offset = off;
    m.u.batch_req.count = count;
    s_send(f, &m);
}

/* Fetch a batch: images into a malloc'd buffer (caller frees), labels. */
static uint8_t *s_fetch(s_fixture *f, const char *id, uint64_t epoch, uint64_t step, uint32_t off, uint32_t count,
                        size_t *size, int32_t *labels)
{
    eq_proto_recvd *r = malloc(sizeof *r);
    eq_proto_recvd_init(r);
    uint64_t req = ++f->req;
    s_breq(f, id, epoch, step, off, count, req);
    s_recv(f, r, EQ_MSG_BATCH);
    ck_assert_uint_eq(r->msg.req, req);
    ck_assert_uint_eq(r->msg.u.batch.count, count);
    ck_assert_uint_eq(r->msg.u.batch.offset, off);
    size_t sz, lsz;
    const void *img = eq_proto_recvd_frame(r, (size_t)r->msg.u.batch.frame_images, &sz);
    const void *lab = eq_proto_recvd_frame(r, (size_t)r->msg.u.batch.frame_labels, &lsz);
    ck_assert_uint_eq(lsz, count * 4);
    if (labels) memcpy(labels, lab, lsz);
    uint8_t *out = malloc(sz);
    memcpy(out, img, sz);
    *size = sz;
    eq_proto_recvd_close(r);
    free(r);
    return out;
}

START_TEST(test_roundtrip_equals_library)
{
    s_fixture f;
    s_start(&f, "inproc://data", 3, 0);
    eq_proto_recvd *r = malloc(sizeof *r);
    eq_proto_recvd_init(r);

    eq_msg m;
    eq_proto_msg_init(&m, EQ_MSG_HELLO);
    snprintf(m.u.hello.role, sizeof m.u.hello.role, "trainer");
    snprintf(m.u.hello.name, sizeof m.u.hello.name, "t0");
    m.u.hello.versions[0] = 1;
    m.u.hello.nversions = 1;
    snprintf(m.u.hello.software, sizeof m.u.hello.software, "test");
    s_send(&f, &m);
    s_recv(&f, r, EQ_MSG_HELLO);
    ck_assert_str_eq(r->msg.u.hello.role, "loader");

    char id[EQ_PROTO_ID_CAP];
    s_job_ok(&f, "train", "rrc", id, r);
    ck_assert_uint_eq(r->msg.u.job_ok.size, S_N);
    ck_assert_uint_eq(r->msg.u.job_ok.classes, 10);
    ck_assert_uint_eq(r->msg.u.job_ok.data_count, S_N);

    /* The library's own batch for the same pipeline. */
    eq_msg jm;
    s_tiny_job(&jm, "train", "rrc");
    eq_pipeline_cfg pc;
    eq_err e = {0};
    ck_assert_int_eq(eq_loader_job_pipeline(&jm.u.job, &pc, &e), EQ_OK);
    eq_dataset *ds = eq_loader_open(f.root, EQ_DS_IDX, "train", 1, &e);
    ck_assert_msg(ds != NULL, "%s", e.msg);
    eq_pipeline *p = eq_pipeline_new(ds, &pc, 2, &e);
    ck_assert_msg(p != NULL, "%s", e.msg);
    const size_t per = 10 * 10;
    uint8_t ref[16 * 100];
    uint32_t idx[16], rep[16];
    int32_t la[16], got_l[16];
    eq_batch b = {.images = ref, .indices = idx, .label_a = la, .replaced = rep};

    for (uint64_t epoch = 0; epoch < 2; epoch++) {
        ck_assert_int_eq(eq_pipeline_batch(p, epoch, 3, 0, 16, &b, &e), EQ_OK);
        size_t sz;
        uint8_t *whole = s_fetch(&f, id, epoch, 3, 0, 16, &sz, got_l);
        ck_assert_uint_eq(sz, 16 * per);
        ck_assert_msg(memcmp(whole, ref, sz) == 0, "server bytes differ from eq_pipeline_batch (epoch %d)",
                      (int)epoch);
        ck_assert(memcmp(got_l, la, sizeof la) == 0);
        /* the same request again: the same bytes */
        uint8_t *again = s_fetch(&f, id, epoch, 3, 0, 16, &sz, NULL);
        ck_assert(memcmp(again, whole, sz) == 0);
        /* split into 5 + 11 equals the whole */
        size_t s1, s2;
        uint8_t *a = s_fetch(&f, id, epoch, 3, 0, 5, &s1, NULL);
        uint8_t *c = s_fetch(&f, id, epoch, 3, 5, 11, &s2, NULL);
        ck_assert_uint_eq(s1 + s2, sz);
        ck_assert(memcmp(a, whole, s1) == 0);
        ck_assert(memcmp(c, whole + s1, s2) == 0);
        free(a);
        free(c);
        free(again);
        free(whole);
    }
    eq_pipeline_destroy(&p);
    eq_dataset_destroy(&ds);

    eq_loader_stats st;
    s_settle(&f, 8, &st);
    ck_assert_uint_eq(st.batches_sent, 8);
    ck_assert_uint_eq(st.jobs, 1);
    ck_assert_uint_eq(st.errors_sent, 0);
    eq_proto_recvd_close(r);
    free(r);
    s_finish(&f);
}
END_TEST

/* 1 worker and 4 workers, in two servers: identical bytes. */
START_TEST(test_threads_identical)
{
    uint8_t *got[2];
    size_t sz[2];
    for (int k = 0; k < 2; k++) {
        s_fixture f;
        s_start(&f, "inproc://data", k ? 4 : 1, 0);
        eq_proto_recvd *r = malloc(sizeof *r);
        eq_proto_recvd_init(r);
        char id[EQ_PROTO_ID_CAP];
        s_job_ok(&f, "train", "rrc", id, r);
        got[k] = s_fetch(&f, id, 1, 2, 0, 16, &sz[k], NULL);
        eq_proto_recvd_close(r);
        free(r);
        s_finish(&f);
    }
    ck_assert_uint_eq(sz[0], sz[1]);
    ck_assert(memcmp(got[0], got[1], sz[0]) == 0);
    free(got[0]);
    free(got[1]);
}
END_TEST

/* Several requests in flight on one connection, of two jobs: each gets its
 * own answer (matched by req), whatever the order. */
START_TEST(test_many_in_flight)
{
    s_fixture f;
    s_start(&f, "inproc://data", 2, 0);
    eq_proto_recvd *r = malloc(sizeof *r);
    eq_proto_recvd_init(r);
    char id1[EQ_PROTO_ID_CAP], id2[EQ_PROTO_ID_CAP];
    s_job_ok(&f, "train", "rrc", id1, r);
    s_job_ok(&f, "val", "center", id2, r);
    ck_assert_uint_eq(r->msg.u.job_ok.size, S_N / 2);
    ck_assert_str_ne(id1, id2);
    enum { K = 12 };
    int seen[K] = {0};
    for (int i = 0; i < K; i++) s_breq(&f, i % 2 ? id2 : id1, 0, (uint64_t)(i / 2 % 3), 0, 16, 1000 + (uint64_t)i);
    for (int i = 0; i < K; i++) {
        s_recv(&f, r, EQ_MSG_BATCH);
        ck_assert_uint_ge(r->msg.req, 1000);
        ck_assert_uint_lt(r->msg.req, 1000 + K);
        int k = (int)(r->msg.req - 1000);
        ck_assert_int_eq(seen[k], 0);
        seen[k] = 1;
        ck_assert_str_eq(r->msg.u.batch.job, k % 2 ? id2 : id1);
        ck_assert_uint_eq(r->msg.u.batch.step, (uint64_t)(k / 2 % 3));
    }
    /* The same new job asked twice before it is set up: both get JOB_OK. */
    eq_msg jm;
    s_tiny_job(&jm, "train", "center");
    jm.has_req = true;
    for (uint64_t q = 501; q <= 503; q++) {
        jm.req = q;
        s_send(&f, &jm);
    }
    int okseen = 0;
    char id3[EQ_PROTO_ID_CAP];
    ck_assert_int_eq(eq_proto_job_id(&jm, id3, NULL), EQ_OK);
    for (int i = 0; i < 3; i++) {
        s_recv(&f, r, EQ_MSG_JOB_OK);
        ck_assert_uint_ge(r->msg.req, 501);
        ck_assert_uint_le(r->msg.req, 503);
        okseen |= 1 << (r->msg.req - 501);
        ck_assert_str_eq(r->msg.u.job_ok.job, id3);
    }
    ck_assert_int_eq(okseen, 7);
    /* val: the last global batch of 50 samples at G = 16 is short (2). */
    s_breq(&f, id2, 0, 3, 0, 16, 77);
    s_recv(&f, r, EQ_MSG_BATCH);
    ck_assert_uint_eq(r->msg.u.batch.count, 2);
    eq_proto_recvd_close(r);
    free(r);
    s_finish(&f);
}
END_TEST

static void s_expect_error(s_fixture *f, eq_proto_recvd *r, eq_status code, const char *needle, uint64_t req)
{
    s_recv(f, r, EQ_MSG_ERROR);
    ck_assert_msg(r->msg.u.error.code == (uint32_t)code, "code %u (%s), expected %d", r->msg.u.error.code,
                  r->msg.u.error.message, code);
    ck_assert_msg(strstr(r->msg.u.error.message, needle) != NULL, "'%s' not in '%s'", needle,
                  r->msg.u.error.message);
    if (req) ck_assert_uint_eq(r->msg.req, req);
}

START_TEST(test_bad_requests)
{
    s_fixture f;
    s_start(&f, "inproc://data", 2, 4 * 100 * 16 + 1);
    eq_proto_recvd *r = malloc(sizeof *r);
    eq_proto_recvd_init(r);

    /* not MessagePack */
    zmq_send(f.dealer, "\xc1garbage", 8, 0);
    s_expect_error(&f, r, EQ_ERR_PARSE, "", 0);
    /* a header then a stray payload frame */
    eq_msg m;
    eq_proto_msg_init(&m, EQ_MSG_BATCH_REQ);
    m.has_req = true;
    m.req = 5;
    snprintf(m.u.batch_req.job, sizeof m.u.batch_req.job, "0123456789abcdef");
    m.u.batch_req.count = 1;
    uint8_t *hdr;
    size_t hl;
    ck_assert_int_eq(eq_proto_encode(&m, &hdr, &hl, NULL), EQ_OK);
    zmq_send(f.dealer, hdr, hl, ZMQ_SNDMORE);
    zmq_send(f.dealer, "x", 1, 0);
    free(hdr);
    s_recv(&f, r, EQ_MSG_ERROR);
    /* unknown job: NOTFOUND, the trainer re-sends the JOB */
    s_send(&f, &m);
    s_expect_error(&f, r, EQ_ERR_NOTFOUND, "unknown job '0123456789abcdef'", 5);
    int served_extra = 0;
    /* a JOB naming a dataset the loader does not declare */
    s_tiny_job(&m, "train", "rrc");
    snprintf(m.u.job.dataset, sizeof m.u.job.dataset, "imagenet");
    m.has_req = true;
    m.req = 6;
    s_send(&f, &m);
    s_expect_error(&f, r, EQ_ERR_NOTFOUND, "dataset 'imagenet' is not served by this loader (it serves: tiny)", 6);
    /* wrong geometry */
    s_tiny_job(&m, "train", "rrc");
    m.u.job.channels = 3;
    m.has_req = true;
    m.req = 7;
    s_send(&f, &m);
    s_expect_error(&f, r, EQ_ERR_INVALID, "gives 10x10x1", 7);
    /* a split the dataset lacks */
    s_tiny_job(&m, "train", "rrc");
    snprintf(m.u.job.split, sizeof m.u.job.split, "extra");
    m.has_req = true;
    m.req = 8;
    s_send(&f, &m);
    s_recv(&f, r, EQ_MSG_ERROR);
    ck_assert_ptr_nonnull(strstr(r->msg.u.error.message, "extra"));
    /* unsupported mix mode */
    s_tiny_job(&m, "train", "rrc");
    m.u.job.cutmix_alpha = 1.0;
    snprintf(m.u.job.mix_mode, sizeof m.u.job.mix_mode, "pair");
    m.has_req = true;
    m.req = 9;
    s_send(&f, &m);
    s_expect_error(&f, r, EQ_ERR_UNSUPPORTED, "mix_mode \"pair\"", 9);
    /* a loader refuses BATCH / ERROR messages */
    eq_proto_make_error(&m, true, 10, EQ_ERR_IO, "hi");
    s_send(&f, &m);
    s_expect_error(&f, r, EQ_ERR_PROTO, "does not accept", 10);
    /* G larger than the split with last=drop: no step in an epoch; refused
     * at JOB time (it was JOB_OK, then every BATCH_REQ "step 0 >= 0") */
    s_tiny_job(&m, "train", "rrc");
    m.u.job.global_batch = S_N + 1;
    m.u.job.last = EQ_PROTO_LAST_DROP;
    m.has_req = true;
    m.req = 12;
    s_send(&f, &m);
    s_expect_error(&f, r, EQ_ERR_INVALID,
                   "global_batch 101 is larger than the 100 samples of 'tiny' split 'train' and last is 'drop'", 12);
    m.u.job.last = EQ_PROTO_LAST_WRAP; /* wrap fills the one step */
    m.req = 16;
    s_send(&f, &m);
    s_recv(&f, r, EQ_MSG_JOB_OK);
    /* A request larger than the whole budget can never be served: INVALID,
     * not LIMIT (the feeder retries LIMIT for ever).  40x40 samples: 16 x
     * (1600 + 4) bytes > 6401; one sample fits. */
    {
        eq_loader_data_cfg dc;
        s_job_defaults(&m, &dc);
        snprintf(dc.dataset, sizeof dc.dataset, "tiny");
        dc.height = dc.width = 40;
        dc.global_batch = 16;
        eq_err je = {0};
        ck_assert_int_eq(eq_loader_data_job(&dc, "train", &m, &je), EQ_OK);
        m.has_req = true;
        m.req = 13;
        s_send(&f, &m);
        s_recv(&f, r, EQ_MSG_JOB_OK);
        char big[EQ_PROTO_ID_CAP];
        snprintf(big, sizeof big, "%s", r->msg.u.job_ok.job);
        s_breq(&f, big, 0, 0, 0, 16, 14);
        s_expect_error(&f, r, EQ_ERR_INVALID, "more than this loader's whole budget of 6401 bytes", 14);
        s_breq(&f, big, 0, 0, 0, 1, 15);
        s_recv(&f, r, EQ_MSG_BATCH);
        ck_assert_uint_eq(r->msg.req, 15);
        served_extra = 1;
    }

    char id[EQ_PROTO_ID_CAP];
    s_job_ok(&f, "train", "rrc", id, r);
    s_breq(&f, id, 0, 0, 10, 7, 11); /* 10 + 7 > G = 16 */
    s_expect_error(&f, r, EQ_ERR_INVALID, "exceeds the global batch 16", 11);
    s_breq(&f, id, 0, 6, 0, 16, 12); /* 100 / 16 = 6 steps: 0..5 */
    s_recv(&f, r, EQ_MSG_ERROR);
    ck_assert_uint_eq(r->msg.req, 12);
    ck_assert_uint_eq(r->msg.u.error.code, EQ_ERR_INVALID);
    /* budget: 4 batches of 16 fit (plus labels: not quite), the 5th in a
     * burst may not: either served or refused with LIMIT, never lost. */
    for (int i = 0; i < 8; i++) s_breq(&f, id, 0, 0, 0, 16, 100 + (uint64_t)i);
    int served = 0, limited = 0;
    for (int i = 0; i < 8; i++) {
        eq_err e = {0};
        ck_assert_msg(eq_proto_recv(f.dealer, r, NULL, 0, &e) == EQ_OK, "%s", e.msg);
        if (r->msg.type == EQ_MSG_BATCH)
            served++;
        else {
            ck_assert_int_eq(r->msg.type, EQ_MSG_ERROR);
            ck_assert_uint_eq(r->msg.u.error.code, EQ_ERR_LIMIT);
            ck_assert_ptr_nonnull(strstr(r->msg.u.error.message, "retry"));
            limited++;
        }
    }
    ck_assert_int_eq(served + limited, 8);
    ck_assert_int_ge(served, 1);
    /* random multipart messages: each answered or dropped, never fatal */
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 300; i++) {
        int parts = 1 + (int)(x % 3);
        for (int k = 0; k < parts; k++) {
            uint8_t junk[64];
            size_t len = (size_t)((x >> 7) % sizeof junk);
            for (size_t j = 0; j < len; j++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                junk[j] = (uint8_t)x;
            }
            if (i % 4 == 0 && len) junk[0] = 0x80 | (uint8_t)(x & 15); /* a small map: deeper parsing */
            zmq_send(f.dealer, junk, len, k + 1 < parts ? ZMQ_SNDMORE : 0);
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        }
    }
    s_breq(&f, id, 0, 2, 0, 16, 999);
    int got = 0;
    for (int i = 0; i < 301 && !got; i++) {
        eq_err e = {0};
        ck_assert_msg(eq_proto_recv(f.dealer, r, NULL, 0, &e) == EQ_OK, "reply %d: %s", i, e.msg);
        if (r->msg.type == EQ_MSG_BATCH) {
            ck_assert_uint_eq(r->msg.req, 999);
            got = 1;
        } else {
            ck_assert_int_eq(r->msg.type, EQ_MSG_ERROR);
        }
    }
    ck_assert_int_eq(got, 1);
    /* after all that, it still serves */
    size_t sz;
    free(s_fetch(&f, id, 0, 1, 0, 16, &sz, NULL));
    served++;
    eq_loader_stats st;
    s_settle(&f, (uint64_t)(served + served_extra) + 1, &st);
    ck_assert_uint_eq(st.batches_sent, (uint64_t)(served + served_extra) + 1);
    ck_assert_uint_ge(st.errors_sent, 10);
    ck_assert_uint_eq(st.inflight_bytes, 0);
    eq_proto_recvd_close(r);
    free(r);
    s_finish(&f);
}
END_TEST

/* Every rank of a run sends the same JOB at start-up, while the dataset is
 * still being opened: each gets JOB_OK (the 17th and later got ERROR limit,
 * which a trainer takes as fatal). 64 JOBs in one burst; most arrive while
 * the split is being opened. */
START_TEST(test_many_waiters)
{
    s_fixture f;
    s_start(&f, "inproc://data", 1, 0);
    eq_proto_recvd *r = malloc(sizeof *r);
    eq_proto_recvd_init(r);
    eq_msg m;
    s_tiny_job(&m, "train", "rrc");
    m.has_req = true;
    enum { N = 64 };
    for (int i = 0; i < N; i++) {
        m.req = 1000 + (uint64_t)i;
        s_send(&f, &m);
    }
    uint64_t seen = 0;
    for (int i = 0; i < N; i++) {
        s_recv(&f, r, EQ_MSG_JOB_OK);
        ck_assert_uint_ge(r->msg.req, 1000);
        ck_assert_uint_lt(r->msg.req, 1000 + N);
        seen |= 1ull << (r->msg.req - 1000);
    }
    ck_assert(seen == ~0ull);
    eq_proto_recvd_close(r);
    free(r);
    s_finish(&f);
}
END_TEST

static char *s_ctl(void *ctx, const char *ep, const char *cmd, int nframes)
{
    void *d = zmq_socket(ctx, ZMQ_DEALER);
    int t = 3000, z = 0;
    zmq_setsockopt(d, ZMQ_RCVTIMEO, &t, sizeof t);
    zmq_setsockopt(d, ZMQ_LINGER, &z, sizeof z);
    ck_assert_int_eq(zmq_connect(d, ep), 0);
    for (int i = 0; i < nframes; i++) zmq_send(d, cmd, strlen(cmd), i + 1 < nframes ? ZMQ_SNDMORE : 0);
    char *buf = calloc(1, 65537);
    int n = zmq_recv(d, buf, 65536, 0);
    ck_assert_int_gt(n, 0);
    zmq_close(d);
    return buf;
}

START_TEST(test_control)
{
    s_fixture f;
    s_start(&f, "inproc://data", 1, 0);
    eq_proto_recvd *r = malloc(sizeof *r);
    eq_proto_recvd_init(r);
    char id[EQ_PROTO_ID_CAP];
    s_job_ok(&f, "train", "none", id, r);
    size_t sz;
    free(s_fetch(&f, id, 0, 0, 0, 4, &sz, NULL));
    ck_assert_uint_eq(sz, 4 * S_HW * S_HW);

    char *js = s_ctl(f.ctx, "inproc://ctl", "status", 1);
    eq_err e = {0};
    eq_json_doc *doc = eq_json_parse(js, strlen(js), NULL, &e);
    ck_assert_msg(doc != NULL, "%s: %s", e.msg, js);
    const eq_json *root = eq_json_root(doc);
    ck_assert_int_eq(eq_json_typeof(eq_json_get(root, "ok")), EQ_JSON_TRUE);
    ck_assert_double_eq(eq_json_num(eq_json_get(root, "batches_sent")), 1);
    ck_assert_double_eq(eq_json_num(eq_json_get(root, "samples_sent")), 4);
    const eq_json *jobs = eq_json_get(root, "jobs");
    ck_assert_uint_eq(eq_json_len(jobs), 1);
    ck_assert_str_eq(eq_json_str(eq_json_get(eq_json_at(jobs, 0), "id"), NULL), id);
    const eq_json *dss = eq_json_get(root, "datasets");
    ck_assert_str_eq(eq_json_str(eq_json_get(eq_json_at(dss, 0), "kind"), NULL), "idx");
    eq_json_doc_destroy(&doc);
    free(js);

    js = s_ctl(f.ctx, "inproc://ctl", "reboot", 1);
    ck_assert_ptr_nonnull(strstr(js, "\"ok\":false"));
    ck_assert_ptr_nonnull(strstr(js, "unknown command 'reboot'"));
    free(js);
    {
        /* a NUL inside: the whole command is shown ("status" before) */
        void *d = zmq_socket(f.ctx, ZMQ_DEALER);
        int t = 3000, z = 0;
        zmq_setsockopt(d, ZMQ_RCVTIMEO, &t, sizeof t);
        zmq_setsockopt(d, ZMQ_LINGER, &z, sizeof z);
        ck_assert_int_eq(zmq_connect(d, "inproc://ctl"), 0);
        ck_assert_int_eq(zmq_send(d, "status\0junk", 11, 0), 11);
        js = calloc(1, 4097);
        ck_assert_int_gt(zmq_recv(d, js, 4096, 0), 0);
        zmq_close(d);
        ck_assert_msg(strstr(js, "unknown command 'status?junk'"), "%s", js);
    }
    free(js);
    js = s_ctl(f.ctx, "inproc://ctl", "status", 2);
    ck_assert_ptr_nonnull(strstr(js, "expected one frame"));
    free(js);

    js = s_ctl(f.ctx, "inproc://ctl", "stop", 1);
    ck_assert_ptr_nonnull(strstr(js, "\"stopping\":true"));
    free(js);
    pthread_join(f.th, NULL); /* run returns by itself */
    f.running = 0;
    ck_assert_int_eq(f.rc, EQ_OK);
    eq_proto_recvd_close(r);
    free(r);
    s_finish(&f);
}
END_TEST

/* Stop while requests are queued: run returns, nothing leaks or hangs. */
START_TEST(test_stop_with_work)
{
    s_fixture f;
    s_start(&f, "inproc://data", 1, 0);
    eq_proto_recvd *r = malloc(sizeof *r);
    eq_proto_recvd_init(r);
    char id[EQ_PROTO_ID_CAP];
    s_job_ok(&f, "train", "rrc", id, r);
    for (int i = 0; i < 20; i++) s_breq(&f, id, 0, (uint64_t)(i % 6), 0, 16, (uint64_t)i + 1);
    eq_loader_server_stop(f.srv);
    pthread_join(f.th, NULL);
    f.running = 0;
    ck_assert_int_eq(f.rc, EQ_OK);
    eq_proto_recvd_close(r);
    free(r);
    s_finish(&f);
}
END_TEST

START_TEST(test_refuse_public_bind)
{
    char *root = eq_test_scratch("pub");
    s_write_idx(root);
    char decl[4300];
    snprintf(decl, sizeof decl, "tiny=%s", root);
    const char *decls[2] = {decl, decl};
    void *ctx = zmq_ctx_new();
    eq_err e = {0};
    eq_loader_server_cfg cfg = {.bind = "tcp://0.0.0.0:*", .datasets = decls, .ndatasets = 1, .threads = 1};
    ck_assert_ptr_null(eq_loader_server_new(ctx, &cfg, &e));
    ck_assert_int_eq(e.code, EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "--insecure"));
    cfg.bind = "tcp://127.0.0.1:*";
    cfg.control = "tcp://*:*";
    ck_assert_ptr_null(eq_loader_server_new(ctx, &cfg, &e));
    ck_assert_ptr_nonnull(strstr(e.msg, "tcp://*:*"));
    cfg.control = NULL;
    cfg.ndatasets = 2; /* declared twice */
    ck_assert_ptr_null(eq_loader_server_new(ctx, &cfg, &e));
    ck_assert_ptr_nonnull(strstr(e.msg, "declared twice"));
    decls[1] = "bad/name=/tmp";
    ck_assert_ptr_null(eq_loader_server_new(ctx, &cfg, &e));
    ck_assert_ptr_nonnull(strstr(e.msg, "may hold only"));
    zmq_ctx_term(ctx);
    eq_test_scratch_rm(root);
}
END_TEST

/* CURVE on tcp loopback: an allowed client is served, another is not. */
START_TEST(test_curve)
{
    char *root = eq_test_scratch("curve");
    s_write_idx(root);
    char decl[4300];
    snprintf(decl, sizeof decl, "tiny=%s", root);
    const char *decls[1] = {decl};
    char spub[41], ssec[41], cpub[41], csec[41], opub[41], osec[41];
    ck_assert_int_eq(zmq_curve_keypair(spub, ssec), 0);
    ck_assert_int_eq(zmq_curve_keypair(cpub, csec), 0);
    ck_assert_int_eq(zmq_curve_keypair(opub, osec), 0);
    void *ctx = zmq_ctx_new();
    eq_err e = {0};
    char allowed[1][EQ_PROTO_KEY_Z85];
    memcpy(allowed[0], cpub, 41);
    eq_proto_zap *zap = eq_proto_zap_new(ctx, allowed, 1, &e);
    ck_assert_msg(zap != NULL, "%s", e.msg);
    eq_loader_server_cfg cfg = {.bind = "tcp://127.0.0.1:*", .datasets = decls, .ndatasets = 1, .threads = 1,
                                .curve_secret = ssec, .zap = zap};
    s_fixture f;
    memset(&f, 0, sizeof f);
    f.srv = eq_loader_server_new(ctx, &cfg, &e);
    ck_assert_msg(f.srv != NULL, "%s", e.msg);
    ck_assert_int_eq(pthread_create(&f.th, NULL, s_run, &f), 0);
    for (int k = 0; k < 2; k++) {
        eq_proto_sockopts o;
        eq_proto_sockopts_default(&o, NULL);
        o.rcvtimeo_ms = k ? 300 : 3000;
        void *d = eq_proto_socket(ctx, ZMQ_DEALER, &o, &e);
        ck_assert_int_eq(eq_proto_curve_client(d, k ? opub : cpub, k ? osec : csec, spub, &e), EQ_OK);
        ck_assert_int_eq(eq_proto_connect(d, eq_loader_server_endpoint(f.srv), &e), EQ_OK);
        eq_msg m;
        eq_proto_msg_init(&m, EQ_MSG_HELLO);
        snprintf(m.u.hello.role, sizeof m.u.hello.role, "trainer");
        snprintf(m.u.hello.name, sizeof m.u.hello.name, "t%d", k);
        m.u.hello.versions[0] = 1;
        m.u.hello.nversions = 1;
        snprintf(m.u.hello.software, sizeof m.u.hello.software, "test");
        ck_assert_int_eq(eq_proto_send(d, NULL, &m, NULL, 0, ZMQ_DONTWAIT, &e) == EQ_OK || k, 1);
        eq_proto_recvd *r = malloc(sizeof *r);
        eq_proto_recvd_init(r);
        eq_status st = eq_proto_recv(d, r, NULL, 0, &e);
        if (k == 0) {
            ck_assert_msg(st == EQ_OK, "%s", e.msg);
            ck_assert_int_eq(r->msg.type, EQ_MSG_HELLO);
        } else {
            ck_assert_int_eq(st, EQ_ERR_TIMEOUT);
        }
        eq_proto_recvd_close(r);
        free(r);
        eq_proto_socket_close(&d);
    }
    eq_loader_server_stop(f.srv);
    pthread_join(f.th, NULL);
    eq_loader_server_destroy(&f.srv);
    uint64_t acc, ref;
    eq_proto_zap_counts(zap, &acc, &ref);
    ck_assert_uint_ge(acc, 1);
    ck_assert_uint_ge(ref, 1);
    eq_proto_zap_destroy(&zap);
    zmq_ctx_term(ctx);
    eq_test_scratch_rm(root);
}
END_TEST

/* JOB with one transform added (key, int or float value). */
static void s_add_kv(eq_msg *m, const char *key, eq_proto_val_type t, double v)
{
    eq_proto_kv *kv = &m->u.job.transforms[m->u.job.ntransforms++];
    snprintf(kv->key, sizeof kv->key, "%s", key);
    kv->type = t;
    if (t == EQ_PROTO_VAL_INT)
        kv->i = (int64_t)v;
    else
        kv->f = v;
}

/* Send a JOB, expect JOB_OK; the job id and the pipeline fingerprint. */
static void s_job_ok_msg(s_fixture *f, eq_msg *m, char id[EQ_PROTO_ID_CAP], char fp[EQ_PROTO_TEXT_CAP],
                         eq_proto_recvd *r)
{
    m->has_req = true;
    m->req = ++f->req;
    s_send(f, m);
    s_recv(f, r, EQ_MSG_JOB_OK);
    snprintf(id, EQ_PROTO_ID_CAP, "%s", r->msg.u.job_ok.job);
    snprintf(fp, EQ_PROTO_TEXT_CAP, "%s", r->msg.u.job_ok.pipeline);
}

/* Two JOBs differing only in a byte-changing transform: different ids and
 * fingerprints. */
START_TEST(test_fingerprint_differs)
{
    s_fixture f;
    s_start(&f, "inproc://data", 1, 0);
    eq_proto_recvd *r = malloc(sizeof *r);
    eq_proto_recvd_init(r);
    char id0[EQ_PROTO_ID_CAP], id1[EQ_PROTO_ID_CAP], fp0[EQ_PROTO_TEXT_CAP], fp1[EQ_PROTO_TEXT_CAP];
    const struct {
        const char *key;
        eq_proto_val_type t;
        double v;
    } opts[] = {{"jitter_brightness", EQ_PROTO_VAL_FLOAT, 0.4}, {"dct_scale", EQ_PROTO_VAL_INT, 2}};
    eq_msg m;
    s_tiny_job(&m, "train", "rrc");
    s_job_ok_msg(&f, &m, id0, fp0, r);
    for (size_t k = 0; k < sizeof opts / sizeof opts[0]; k++) {
        s_tiny_job(&m, "train", "rrc");
        s_add_kv(&m, opts[k].key, opts[k].t, opts[k].v);
        s_job_ok_msg(&f, &m, id1, fp1, r);
        ck_assert_str_ne(id0, id1);
        ck_assert_msg(strcmp(fp0, fp1) != 0, "%s: same fingerprint '%s'", opts[k].key, fp0);
    }
    /* mixing on: mix_block 4 vs 8 */
    s_tiny_job(&m, "train", "rrc");
    m.u.job.mixup_alpha = 0.5;
    s_add_kv(&m, "mix_block", EQ_PROTO_VAL_INT, 4);
    s_job_ok_msg(&f, &m, id0, fp0, r);
    m.u.job.transforms[m.u.job.ntransforms - 1].i = 8;
    s_job_ok_msg(&f, &m, id1, fp1, r);
    ck_assert_str_ne(id0, id1);
    ck_assert_str_ne(fp0, fp1);
    ck_assert_ptr_nonnull(strstr(fp1, "mix_block=8"));
    eq_proto_recvd_close(r);
    free(r);
    s_finish(&f);
}
END_TEST

/* Mixed jobs: the served batch equals eq_pipeline_batch bytes for bytes
 * (CutMix pasted), mix frames match the plan, misaligned ranges refused. */
START_TEST(test_mixed_batches)
{
    s_fixture f;
    s_start(&f, "inproc://data", 3, 0);
    eq_proto_recvd *r = malloc(sizeof *r);
    eq_proto_recvd_init(r);
    eq_err e = {0};
    eq_dataset *ds = eq_loader_open(f.root, EQ_DS_IDX, "train", 1, &e);
    ck_assert_msg(ds != NULL, "%s", e.msg);
    for (int kind = 0; kind < 2; kind++) { /* 0 cutmix, per element; 1 mixup, per block */
        eq_msg m;
        s_tiny_job(&m, "train", "rrc");
        if (kind == 0) {
            m.u.job.cutmix_alpha = 1.0;
            snprintf(m.u.job.mix_mode, sizeof m.u.job.mix_mode, "elem");
        } else {
            m.u.job.mixup_alpha = 0.4;
        }
        m.u.job.mix_prob = 0.8;
        s_add_kv(&m, "mix_block", EQ_PROTO_VAL_INT, 8);
        char id[EQ_PROTO_ID_CAP], fp[EQ_PROTO_TEXT_CAP];
        s_job_ok_msg(&f, &m, id, fp, r);
        eq_pipeline_cfg pc;
        ck_assert_int_eq(eq_loader_job_pipeline(&m.u.job, &pc, &e), EQ_OK);
        eq_pipeline *p = eq_pipeline_new(ds, &pc, 2, &e);
        ck_assert_msg(p != NULL, "%s", e.msg);
        uint8_t ref[16 * 100], plain[16 * 100];
        uint32_t idx[16], rep[16], part[16];
        int32_t la[16];
        float lam[16];
        uint8_t mode[16];
        int mixed = 0, pasted = 0;
        for (uint64_t step = 0; step < 3; step++)
            for (uint32_t off = 0; off < 16; off += 8)
                for (uint32_t cnt = 8; off + cnt <= 16; cnt += 8) {
                    eq_batch b = {.images = ref, .indices = idx, .label_a = la, .lambda = lam, .mix_mode = mode,
                                  .partner = part, .replaced = rep};
                    ck_assert_int_eq(eq_pipeline_batch(p, 1, step, off, cnt, &b, &e), EQ_OK);
                    uint64_t req = ++f.req;
                    s_breq(&f, id, 1, step, off, cnt, req);
                    s_recv(&f, r, EQ_MSG_BATCH);
                    const eq_msg_batch *mb = &r->msg.u.batch;
                    ck_assert_uint_eq(mb->count, cnt);
                    size_t sz;
                    const uint8_t *img = eq_proto_recvd_frame(r, (size_t)mb->frame_images, &sz);
                    ck_assert_uint_eq(sz, cnt * 100u);
                    ck_assert_msg(memcmp(img, ref, sz) == 0, "step %u [%u, +%u): bytes differ from eq_pipeline_batch",
                                  (unsigned)step, off, cnt);
                    const int32_t *lab = eq_proto_recvd_frame(r, (size_t)mb->frame_labels, &sz);
                    ck_assert(memcmp(lab, la, cnt * 4) == 0);
                    int any = 0, anycut = 0;
                    for (uint32_t i = 0; i < cnt; i++) {
                        any |= mode[i] != EQ_MIX_NONE;
                        anycut |= mode[i] == EQ_MIX_CUTMIX;
                    }
                    if (!any) {
                        ck_assert_str_eq(mb->mix, "");
                        ck_assert_int_eq(mb->frame_mix_index, -1);
                        continue;
                    }
                    mixed++;
                    ck_assert_str_eq(mb->mix, kind == 0 ? "cutmix" : "mixup");
                    ck_assert_int_eq(anycut, kind == 0);
                    ck_assert_int_ge(mb->frame_mix_index, 0);
                    ck_assert_int_ge(mb->frame_mix_lambda, 0);
                    const int32_t *mi = eq_proto_recvd_frame(r, (size_t)mb->frame_mix_index, &sz);
                    ck_assert_uint_eq(sz, cnt * 4u);
                    const float *ml = eq_proto_recvd_frame(r, (size_t)mb->frame_mix_lambda, &sz);
                    ck_assert_uint_eq(sz, cnt * 4u);
                    for (uint32_t i = 0; i < cnt; i++) {
                        ck_assert_int_eq(mi[i], (int32_t)(part[i] - off));
                        ck_assert_int_ge(mi[i], 0);
                        ck_assert_int_lt(mi[i], (int32_t)cnt);
                        /* partners stay in the sample's block of 8 */
                        ck_assert_uint_eq((off + (uint32_t)mi[i]) / 8, (off + i) / 8);
                        ck_assert(ml[i] == lam[i] && ml[i] >= 0 && ml[i] <= 1);
                        if (mode[i] == EQ_MIX_NONE) ck_assert(ml[i] == 1.0f && mi[i] == (int32_t)i);
                    }
                    if (kind == 0) {
                        /* the pastes are real: the unmixed samples differ */
                        eq_msg um;
                        s_tiny_job(&um, "train", "rrc");
                        eq_pipeline_cfg upc;
                        ck_assert_int_eq(eq_loader_job_pipeline(&um.u.job, &upc, &e), EQ_OK);
                        eq_pipeline *up = eq_pipeline_new(ds, &upc, 1, &e);
                        ck_assert_msg(up != NULL, "%s", e.msg);
                        uint32_t uidx[16];
                        eq_batch ub = {.images = plain, .indices = uidx};
                        ck_assert_int_eq(eq_pipeline_batch(up, 1, step, off, cnt, &ub, &e), EQ_OK);
                        for (uint32_t i = 0; i < cnt; i++)
                            if (mode[i] == EQ_MIX_CUTMIX && lam[i] < 1 && mi[i] != (int32_t)i &&
                                memcmp(plain + i * 100, img + i * 100, 100) != 0)
                                pasted++;
                        eq_pipeline_destroy(&up);
                    }
                }
        ck_assert_int_gt(mixed, 0);
        if (kind == 0) ck_assert_int_gt(pasted, 0);
        /* misaligned: offset or count not a multiple of the block of 8 */
        s_breq(&f, id, 0, 0, 4, 8, 900);
        s_expect_error(&f, r, EQ_ERR_INVALID, "offset 4 and count 8 must be multiples of 8", 900);
        s_breq(&f, id, 0, 0, 0, 5, 901);
        s_expect_error(&f, r, EQ_ERR_INVALID, "mixes inside blocks of 8 positions", 901);
        eq_pipeline_destroy(&p);
    }
    /* both kinds on (per block): a request is exactly one block */
    eq_msg m;
    s_tiny_job(&m, "train", "rrc");
    m.u.job.mixup_alpha = 0.4;
    m.u.job.cutmix_alpha = 1.0;
    s_add_kv(&m, "mix_block", EQ_PROTO_VAL_INT, 8);
    char id[EQ_PROTO_ID_CAP], fp[EQ_PROTO_TEXT_CAP];
    s_job_ok_msg(&f, &m, id, fp, r);
    s_breq(&f, id, 0, 0, 0, 16, 902);
    s_expect_error(&f, r, EQ_ERR_INVALID, "count 16 must be one block (8)", 902);
    s_breq(&f, id, 0, 0, 8, 8, 903);
    s_recv(&f, r, EQ_MSG_BATCH);
    eq_dataset_destroy(&ds);
    eq_proto_recvd_close(r);
    free(r);
    s_finish(&f);
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("loader_server");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_detect);
    tcase_add_test(tc, test_schema_and_mapping);
    tcase_add_test(tc, test_example_config);
    tcase_add_test(tc, test_roundtrip_equals_library);
    tcase_add_test(tc, test_threads_identical);
    tcase_add_test(tc, test_many_in_flight);
    tcase_add_test(tc, test_bad_requests);
    tcase_add_test(tc, test_many_waiters);
    tcase_add_test(tc, test_fingerprint_differs);
    tcase_add_test(tc, test_mixed_batches);
    tcase_add_test(tc, test_control);
    tcase_add_test(tc, test_stop_with_work);
    tcase_add_test(tc, test_refuse_public_bind);
    tcase_add_test(tc, test_curve);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    eq_log_set_level(EQ_LOG_WARN); /* the refused JOBs still show */
    return eq_test_run(s_suite());
}
