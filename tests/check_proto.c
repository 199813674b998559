/* tests/check_proto.c -- wire messages: round trips of every type, job ids,
 * the bounded MessagePack reader, and every class of malformed header. */
#define _GNU_SOURCE /* memmem */
#include <math.h>
#include <msgpack.h>
#include <stdint.h>

#include "proto/mpread.h"
#include "proto/proto.h"
#include "tests/testutil.h"

/* Job id of s_job(): pins the canonical form (see test_job_id). */
#define EQ_PROTO_TEST_JOB_ID "c26831b600563359"

/* ---- sample messages ----------------------------------------------------- */

static void s_hello(eq_msg *m)
{
    eq_proto_msg_init(m, EQ_MSG_HELLO);
    m->has_req = true;
    m->req = 7;
    snprintf(m->u.hello.role, sizeof m->u.hello.role, "trainer");
    snprintf(m->u.hello.name, sizeof m->u.hello.name, "host-1:1234@rank0");
    m->u.hello.versions[0] = 1;
    m->u.hello.versions[1] = 2;
    m->u.hello.nversions = 2;
    snprintf(m->u.hello.software, sizeof m->u.hello.software, "eq 0.1.0 (gcc 12.2)");
    snprintf(m->u.hello.caps[0], sizeof m->u.hello.caps[0], "mixup");
    snprintf(m->u.hello.caps[1], sizeof m->u.hello.caps[1], "cutmix");
    m->u.hello.ncaps = 2;
}

static void s_kv(eq_proto_kv *kv, const char *key, eq_proto_val_type t)
{
    memset(kv, 0, sizeof *kv);
    snprintf(kv->key, sizeof kv->key, "%s", key);
    kv->type = t;
}

static void s_job(eq_msg *m)
{
    eq_proto_msg_init(m, EQ_MSG_JOB);
    m->has_req = true;
    m->req = UINT64_MAX;
    eq_msg_job *j = &m->u.job;
    snprintf(j->dataset, sizeof j->dataset, "imagenet");
    snprintf(j->split, sizeof j->split, "train");
    j->seed = 0x123456789abcdef0ull;
    j->global_batch = 1024;
    j->height = 224;
    j->width = 192;
    j->channels = 3;
    j->last = EQ_PROTO_LAST_WRAP;
    s_kv(&j->transforms[0], "rrc_scale_min", EQ_PROTO_VAL_FLOAT);
    j->transforms[0].f = 0.08;
    s_kv(&j->transforms[1], "hflip", EQ_PROTO_VAL_BOOL);
    j->transforms[1].b = true;
    s_kv(&j->transforms[2], "resize", EQ_PROTO_VAL_INT);
    j->transforms[2].i = -256;
    s_kv(&j->transforms[3], "interp", EQ_PROTO_VAL_STR);
    snprintf(j->transforms[3].s, sizeof j->transforms[3].s, "bilinear");
    j->ntransforms = 4;
    j->mixup_alpha = 0.8;
    j->cutmix_alpha = 1.0;
    j->mix_prob = 0.9;
    j->mix_switch_prob = 0.25;
    snprintf(j->mix_mode, sizeof j->mix_mode, "elem");
}

static void s_job_ok(eq_msg *m)
{
    eq_proto_msg_init(m, EQ_MSG_JOB_OK);
    m->has_req = true;
    m->req = 8;
    eq_msg_job_ok *o = &m->u.job_ok;
    snprintf(o->job, sizeof o->job, "0123456789abcdef");
    o->size = 1281167;
    o->classes = 1000;
    o->data_count = 1281167 + 50000;
    snprintf(o->data_hash, sizeof o->data_hash, "fedcba9876543210");
    snprintf(o->pipeline, sizeof o->pipeline, "eq 0.1.0; libjpeg-turbo 2.1.5; dct=islow");
}

static void s_batch_req(eq_msg *m)
{
    eq_proto_msg_init(m, EQ_MSG_BATCH_REQ);
    m->has_req = true;
    m->req = 1ull << 40;
    eq_msg_batch_req *b = &m->u.batch_req;
    snprintf(b->job, sizeof b->job, "0123456789abcdef");
    b->epoch = 3;
    b->step = 1251;
    b->offset = 256;
    b->count = 128;
    b->deadline_ms = 5000;
}

static void s_batch(eq_msg *m, uint32_t count, int64_t h, int64_t w, int64_t c, bool mix)
{
    eq_proto_msg_init(m, EQ_MSG_BATCH);
    m->has_req = true;
    m->req = 99;
    eq_msg_batch *b = &m->u.batch;
    snprintf(b->job, sizeof b->job, "0123456789abcdef");
    b->epoch = 1;
    b->step = 2;
    b->offset = 64;
    b->count = count;
    uint32_t rep[2] = { 0, count - 1 };
    ck_assert_int_eq(eq_proto_batch_set_replaced(m, rep, count > 1 ? 2 : 1, NULL), EQ_OK);
    int64_t ishape[4] = { count, h, w, c }, lshape[1] = { count };
    ck_assert_int_eq(eq_proto_add_frame(m, "images", EQ_DT_U8, 4, ishape, NULL), EQ_OK);
    ck_assert_int_eq(eq_proto_add_frame(m, "labels", EQ_DT_I64, 1, lshape, NULL), EQ_OK);
    if (mix) {
        snprintf(b->mix, sizeof b->mix, "cutmix");
        ck_assert_int_eq(eq_proto_add_frame(m, "mix_index", EQ_DT_I32, 1, lshape, NULL), EQ_OK);
        ck_assert_int_eq(eq_proto_add_frame(m, "mix_lambda", EQ_DT_F32, 1, lshape, NULL), EQ_OK);
    }
}

static void s_error(eq_msg *m)
{
    eq_proto_make_error(m, true, 5, EQ_ERR_VERSION, "BATCH_REQ: protocol version 2,\nthis build speaks 1");
}

/* Encode, decode, and return the decoded copy in `out`. */
static void s_roundtrip(const eq_msg *in, eq_msg *out)
{
    uint8_t *buf;
    size_t len;
    eq_err e = { 0 };
    ck_assert_msg(eq_proto_encode(in, &buf, &len, &e) == EQ_OK, "encode: %s", e.msg);
    ck_assert_msg(eq_proto_decode_header(out, buf, len, NULL, &e) == EQ_OK, "decode: %s", e.msg);
    free(buf);
    ck_assert_int_eq(out->type, in->type);
    ck_assert_uint_eq(out->version, EQ_PROTO_VERSION);
    ck_assert_int_eq(out->has_req, in->has_req);
    if (in->has_req) ck_assert_uint_eq(out->req, in->req);
    ck_assert_uint_eq(out->nframes, in->nframes);
    for (uint32_t i = 0; i < in->nframes; i++) {
        const eq_proto_frame_desc *a = &in->frames[i], *b = &out->frames[i];
        ck_assert_str_eq(a->name, b->name);
        ck_assert_int_eq(a->dtype, b->dtype);
        ck_assert_int_eq(a->ndim, b->ndim);
        for (int k = 0; k < a->ndim; k++) ck_assert_int_eq(a->shape[k], b->shape[k]);
        ck_assert_uint_eq(a->nbytes, b->nbytes);
    }
}

START_TEST(test_roundtrip_hello)
{
    eq_msg a, b;
    s_hello(&a);
    s_roundtrip(&a, &b);
    const eq_msg_hello *x = &a.u.hello, *y = &b.u.hello;
    ck_assert_str_eq(x->role, y->role);
    ck_assert_str_eq(x->name, y->name);
    ck_assert_uint_eq(y->nversions, 2);
    ck_assert_uint_eq(y->versions[0], 1);
    ck_assert_uint_eq(y->versions[1], 2);
    ck_assert_str_eq(x->software, y->software);
    ck_assert_uint_eq(y->ncaps, 2);
    ck_assert_str_eq(y->caps[0], "mixup");
    ck_assert_str_eq(y->caps[1], "cutmix");
    /* HELLO's req is optional. */
    a.has_req = false;
    s_roundtrip(&a, &b);
    ck_assert(!b.has_req);
}
END_TEST

START_TEST(test_roundtrip_job)
{
    eq_msg a, b;
    s_job(&a);
    s_roundtrip(&a, &b);
    const eq_msg_job *x = &a.u.job, *y = &b.u.job;
    ck_assert_str_eq(y->dataset, x->dataset);
    ck_assert_str_eq(y->split, x->split);
    ck_assert_uint_eq(y->seed, x->seed);
    ck_assert_uint_eq(y->global_batch, 1024);
    ck_assert_uint_eq(y->height, 224);
    ck_assert_uint_eq(y->width, 192);
    ck_assert_uint_eq(y->channels, 3);
    ck_assert_int_eq(y->last, EQ_PROTO_LAST_WRAP);
    ck_assert_uint_eq(y->ntransforms, 4);
    /* Sent sorted by key: hflip, interp, resize, rrc_scale_min. */
    ck_assert_str_eq(y->transforms[0].key, "hflip");
    ck_assert_int_eq(y->transforms[0].type, EQ_PROTO_VAL_BOOL);
    ck_assert(y->transforms[0].b);
    ck_assert_str_eq(y->transforms[1].key, "interp");
    ck_assert_int_eq(y->transforms[1].type, EQ_PROTO_VAL_STR);
    ck_assert_str_eq(y->transforms[1].s, "bilinear");
    ck_assert_str_eq(y->transforms[2].key, "resize");
    ck_assert_int_eq(y->transforms[2].type, EQ_PROTO_VAL_INT);
    ck_assert_int_eq(y->transforms[2].i, -256);
    ck_assert_str_eq(y->transforms[3].key, "rrc_scale_min");
    ck_assert_int_eq(y->transforms[3].type, EQ_PROTO_VAL_FLOAT);
    ck_assert(y->transforms[3].f == 0.08);
    ck_assert(y->mixup_alpha == 0.8 && y->cutmix_alpha == 1.0);
    ck_assert(y->mix_prob == 0.9 && y->mix_switch_prob == 0.25);
    ck_assert_str_eq(y->mix_mode, "elem");

    /* Optional fields at their defaults are omitted and come back as defaults. */
    eq_msg c;
    eq_proto_msg_init(&c, EQ_MSG_JOB);
    c.has_req = true;
    snprintf(c.u.job.dataset, sizeof c.u.job.dataset, "fashion-mnist");
    snprintf(c.u.job.split, sizeof c.u.job.split, "val");
    c.u.job.global_batch = c.u.job.height = c.u.job.width = c.u.job.channels = 1;
    c.u.job.last = EQ_PROTO_LAST_PARTIAL;
    s_roundtrip(&c, &b);
    ck_assert(b.u.job.mixup_alpha == 0 && b.u.job.mix_prob == 1 && b.u.job.mix_switch_prob == 0.5);
    ck_assert_str_eq(b.u.job.mix_mode, "batch");
    ck_assert_uint_eq(b.u.job.ntransforms, 0);
    ck_assert_int_eq(b.u.job.last, EQ_PROTO_LAST_PARTIAL);
    /* An empty optional name means its default, on both sides. */
    c.u.job.mix_mode[0] = '\0';
    s_roundtrip(&c, &b);
    ck_assert_str_eq(b.u.job.mix_mode, "batch");
    char id1[EQ_PROTO_ID_CAP], id2[EQ_PROTO_ID_CAP];
    ck_assert_int_eq(eq_proto_job_id(&c, id1, NULL), EQ_OK);
    ck_assert_int_eq(eq_proto_job_id(&b, id2, NULL), EQ_OK);
    ck_assert_str_eq(id1, id2);
}
END_TEST

START_TEST(test_roundtrip_job_ok)
{
    eq_msg a, b;
    s_job_ok(&a);
    s_roundtrip(&a, &b);
    const eq_msg_job_ok *x = &a.u.job_ok, *y = &b.u.job_ok;
    ck_assert_str_eq(y->job, x->job);
    ck_assert_uint_eq(y->size, x->size);
    ck_assert_uint_eq(y->classes, 1000);
    ck_assert_uint_eq(y->data_count, x->data_count);
    ck_assert_str_eq(y->data_hash, x->data_hash);
    ck_assert_str_eq(y->pipeline, x->pipeline);
}
END_TEST

START_TEST(test_roundtrip_batch_req)
{
    eq_msg a, b;
    s_batch_req(&a);
    s_roundtrip(&a, &b);
    const eq_msg_batch_req *x = &a.u.batch_req, *y = &b.u.batch_req;
    ck_assert_str_eq(y->job, x->job);
    ck_assert_uint_eq(y->epoch, 3);
    ck_assert_uint_eq(y->step, 1251);
    ck_assert_uint_eq(y->offset, 256);
    ck_assert_uint_eq(y->count, 128);
    ck_assert_uint_eq(y->deadline_ms, 5000);
    ck_assert_uint_eq(b.req, 1ull << 40);
}
END_TEST

START_TEST(test_roundtrip_batch)
{
    for (int mix = 0; mix < 2; mix++) {
        eq_msg a, b;
        s_batch(&a, 32, 224, 224, 3, mix);
        s_roundtrip(&a, &b);
        const eq_msg_batch *x = &a.u.batch, *y = &b.u.batch;
        ck_assert_str_eq(y->job, x->job);
        ck_assert_uint_eq(y->epoch, 1);
        ck_assert_uint_eq(y->step, 2);
        ck_assert_uint_eq(y->offset, 64);
        ck_assert_uint_eq(y->count, 32);
        ck_assert_uint_eq(y->nreplaced, 2);
        ck_assert_uint_eq(y->replaced[0], 0);
        ck_assert_uint_eq(y->replaced[1], 31);
        ck_assert_str_eq(y->mix, mix ? "cutmix" : "");
        ck_assert_int_eq(y->frame_images, 0);
        ck_assert_int_eq(y->frame_labels, 1);
        ck_assert_int_eq(y->frame_mix_index, mix ? 2 : -1);
        ck_assert_int_eq(y->frame_mix_lambda, mix ? 3 : -1);
        ck_assert_uint_eq(b.frames[0].nbytes, 32u * 224 * 224 * 3);
        ck_assert_uint_eq(b.frames[1].nbytes, 32u * 8);
        /* The payload sizes the header promises are what check_frames wants. */
        size_t sizes[4] = { 32u * 224 * 224 * 3, 32 * 8, 32 * 4, 32 * 4 };
        ck_assert_int_eq(eq_proto_check_frames(&b, mix ? 4 : 2, sizes, NULL), EQ_OK);
        eq_proto_msg_reset(&a);
        eq_proto_msg_reset(&b);
        eq_proto_msg_reset(&b); /* idempotent */
    }
}
END_TEST

START_TEST(test_roundtrip_error)
{
    eq_msg a, b;
    s_error(&a);
    ck_assert_str_eq(a.u.error.name, "version");
    ck_assert(strchr(a.u.error.message, '\n') == NULL); /* control characters replaced */
    s_roundtrip(&a, &b);
    const eq_msg_error *y = &b.u.error;
    ck_assert_uint_eq(y->code, EQ_ERR_VERSION);
    ck_assert_str_eq(y->name, "version");
    ck_assert_str_eq(y->message, a.u.error.message);
    ck_assert_uint_eq(y->nversions, 1);
    ck_assert_uint_eq(y->versions[0], EQ_PROTO_VERSION);
    ck_assert_uint_eq(b.req, 5);
    eq_proto_make_error(&a, false, 0, EQ_ERR_NOTFOUND, "BATCH_REQ: unknown job 0123");
    s_roundtrip(&a, &b);
    ck_assert(!b.has_req);
    ck_assert_uint_eq(b.u.error.nversions, 0);
    ck_assert_str_eq(b.u.error.name, "notfound");
}
END_TEST

/* A header written by another encoder: wide integer encodings, v and t last,
 * an unknown key with a nested value (ignored). */
START_TEST(test_decode_foreign_encoding)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 10);
    msgpack_pack_str_with_body(&pk, "future", 6);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, "x", 1);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_nil(&pk);
    msgpack_pack_bin_with_body(&pk, "ab", 2);
    msgpack_pack_str_with_body(&pk, "job", 3);
    msgpack_pack_str_with_body(&pk, "j1", 2);
    msgpack_pack_str_with_body(&pk, "epoch", 5);
    msgpack_pack_fix_uint64(&pk, 5); /* 0xcf + 8 bytes */
    msgpack_pack_str_with_body(&pk, "step", 4);
    msgpack_pack_fix_int32(&pk, 6); /* signed encoding, positive value */
    msgpack_pack_str_with_body(&pk, "offset", 6);
    msgpack_pack_fix_uint16(&pk, 0);
    msgpack_pack_str_with_body(&pk, "count", 5);
    msgpack_pack_fix_uint32(&pk, 3);
    msgpack_pack_str_with_body(&pk, "req", 3);
    msgpack_pack_fix_uint8(&pk, 1);
    msgpack_pack_str_with_body(&pk, "zz", 2);
    msgpack_pack_float(&pk, 1.5f);
    msgpack_pack_str_with_body(&pk, "t", 1);
    msgpack_pack_str_with_body(&pk, "BATCH_REQ", 9);
    msgpack_pack_str_with_body(&pk, "v", 1);
    msgpack_pack_fix_uint32(&pk, 1);
    eq_msg m;
    eq_err e = { 0 };
    ck_assert_msg(eq_proto_decode_header(&m, sb.data, sb.size, NULL, &e) == EQ_OK, "%s", e.msg);
    ck_assert_int_eq(m.type, EQ_MSG_BATCH_REQ);
    ck_assert_str_eq(m.u.batch_req.job, "j1");
    ck_assert_uint_eq(m.u.batch_req.epoch, 5);
    ck_assert_uint_eq(m.u.batch_req.step, 6);
    ck_assert_uint_eq(m.u.batch_req.count, 3);
    ck_assert_uint_eq(m.u.batch_req.deadline_ms, 0);
    msgpack_sbuffer_destroy(&sb);
}
END_TEST

START_TEST(test_job_id)
{
    eq_msg a, b;
    char ida[EQ_PROTO_ID_CAP], idb[EQ_PROTO_ID_CAP];
    s_job(&a);
    ck_assert_int_eq(eq_proto_job_id(&a, ida, NULL), EQ_OK);
    ck_assert_uint_eq(strlen(ida), EQ_PROTO_JOB_ID_LEN);
    /* Pinned: the canonical form is part of the protocol (a change here
     * changes every job id; bump the version if it is intended). */
    ck_assert_str_eq(ida, EQ_PROTO_TEST_JOB_ID);
    /* req is not content; transform order is not content. */
    b = a;
    b.req = 1;
    eq_proto_kv t = b.u.job.transforms[0];
    b.u.job.transforms[0] = b.u.job.transforms[3];
    b.u.job.transforms[3] = t;
    ck_assert_int_eq(eq_proto_job_id(&b, idb, NULL), EQ_OK);
    ck_assert_str_eq(ida, idb);
    /* The receiver computes the same id from what it decoded. */
    s_roundtrip(&a, &b);
    ck_assert_int_eq(eq_proto_job_id(&b, idb, NULL), EQ_OK);
    ck_assert_str_eq(ida, idb);
    /* Any content change changes it. */
    b.u.job.seed++;
    ck_assert_int_eq(eq_proto_job_id(&b, idb, NULL), EQ_OK);
    ck_assert_str_ne(ida, idb);
    b = a;
    b.u.job.transforms[2].i = 256;
    ck_assert_int_eq(eq_proto_job_id(&b, idb, NULL), EQ_OK);
    ck_assert_str_ne(ida, idb);
    /* Not a JOB / invalid JOB. */
    eq_err e = { 0 };
    s_hello(&b);
    ck_assert_int_eq(eq_proto_job_id(&b, idb, &e), EQ_ERR_INVALID);
    b = a;
    snprintf(b.u.job.dataset, sizeof b.u.job.dataset, "/etc");
    ck_assert_int_eq(eq_proto_job_id(&b, idb, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "dataset"));
    ck_assert_uint_eq(eq_proto_hash64("", 0), 0xcbf29ce484222325ull);
    ck_assert_uint_eq(eq_proto_hash64("a", 1), 0xaf63dc4c8601ec8cull); /* FNV-1a reference value */
}
END_TEST

/* ---- the bounded reader ---------------------------------------------------- */

START_TEST(test_mpread_scalars)
{
    static const int64_t ints[] = { 0, 1, 127, 128, 255, 256, 65535, 65536, 4294967295LL, 4294967296LL, INT64_MAX,
                                    -1, -32, -33, -128, -129, -32768, -32769, -2147483648LL, -2147483649LL, INT64_MIN };
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    size_t n = sizeof ints / sizeof ints[0];
    for (size_t i = 0; i < n; i++) msgpack_pack_int64(&pk, ints[i]);
    msgpack_pack_uint64(&pk, UINT64_MAX);
    msgpack_pack_double(&pk, -2.5);
    msgpack_pack_float(&pk, 0.25f);
    msgpack_pack_true(&pk);
    msgpack_pack_nil(&pk);
    msgpack_pack_ext_with_body(&pk, "abc", 3, 7);
    msgpack_pack_ext_with_body(&pk, "abcd", 4, 7); /* fixext 4 */
    eq_mp_reader r;
    eq_mp_reader_init(&r, sb.data, sb.size);
    eq_mp_item it;
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_eq(eq_mp_next(&r, &it), EQ_MP_OK);
        if (ints[i] >= 0) {
            ck_assert_int_eq(it.kind, EQ_MP_UINT);
            ck_assert_uint_eq(it.v.u, (uint64_t)ints[i]);
        } else {
            ck_assert_int_eq(it.kind, EQ_MP_INT);
            ck_assert_int_eq(it.v.i, ints[i]);
        }
    }
    ck_assert_int_eq(eq_mp_next(&r, &it), EQ_MP_OK);
    ck_assert_uint_eq(it.v.u, UINT64_MAX);
    ck_assert_int_eq(eq_mp_next(&r, &it), EQ_MP_OK);
    ck_assert(it.kind == EQ_MP_FLOAT && it.v.f == -2.5);
    ck_assert_int_eq(eq_mp_next(&r, &it), EQ_MP_OK);
    ck_assert(it.kind == EQ_MP_FLOAT && it.v.f == 0.25);
    ck_assert_int_eq(eq_mp_next(&r, &it), EQ_MP_OK);
    ck_assert(it.kind == EQ_MP_BOOL && it.v.b);
    ck_assert_int_eq(eq_mp_next(&r, &it), EQ_MP_OK);
    ck_assert_int_eq(it.kind, EQ_MP_NIL);
    ck_assert_int_eq(eq_mp_next(&r, &it), EQ_MP_OK);
    ck_assert(it.kind == EQ_MP_EXT && it.v.s.len == 3 && memcmp(it.v.s.ptr, "abc", 3) == 0);
    ck_assert_int_eq(eq_mp_next(&r, &it), EQ_MP_OK);
    ck_assert(it.kind == EQ_MP_EXT && it.v.s.len == 4 && memcmp(it.v.s.ptr, "abcd", 4) == 0);
    ck_assert_uint_eq(eq_mp_left(&r), 0);
    ck_assert_int_eq(eq_mp_next(&r, &it), EQ_MP_TRUNCATED);
    msgpack_sbuffer_destroy(&sb);
}
END_TEST

START_TEST(test_mpread_hostile_counts)
{
    /* Declared counts and lengths larger than the bytes that follow fail at
     * once, before anything could be sized from them. */
    static const uint8_t cases[][6] = {
        { 0xdd, 0x0f, 0xff, 0xff, 0xff, 0x00 }, /* array32, 268M elements */
        { 0xdf, 0x0f, 0xff, 0xff, 0xff, 0x00 }, /* map32 */
        { 0xdb, 0xff, 0xff, 0xff, 0xff, 0x00 }, /* str32 of 4 GiB */
        { 0xc6, 0x80, 0x00, 0x00, 0x00, 0x00 }, /* bin32 */
        { 0xc9, 0x00, 0x01, 0x00, 0x00, 0x01 }, /* ext32 */
        { 0xde, 0x00, 0x03, 0x01, 0x02, 0x03 }, /* map16 of 3 entries in 3 bytes */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        eq_mp_reader r;
        eq_mp_item it;
        eq_mp_reader_init(&r, cases[i], 6);
        ck_assert_int_eq(eq_mp_next(&r, &it), EQ_MP_TRUNCATED);
        ck_assert_uint_eq(eq_mp_left(&r), 6); /* cursor unchanged */
    }
    /* A map of 2 entries in exactly 4 bytes is fine; 0xc1 never is. */
    const uint8_t ok[] = { 0x82, 0x01, 0x02, 0x03, 0x04 }, bad[] = { 0xc1 };
    eq_mp_reader r;
    eq_mp_item it;
    eq_mp_reader_init(&r, ok, sizeof ok);
    ck_assert_int_eq(eq_mp_skip(&r, 1), EQ_MP_OK);
    ck_assert_uint_eq(eq_mp_left(&r), 0);
    eq_mp_reader_init(&r, bad, 1);
    ck_assert_int_eq(eq_mp_next(&r, &it), EQ_MP_INVALID);
    /* Nesting: [[[1]]] needs depth 3. */
    const uint8_t deep[] = { 0x91, 0x91, 0x91, 0x01 };
    eq_mp_reader_init(&r, deep, sizeof deep);
    ck_assert_int_eq(eq_mp_skip(&r, 2), EQ_MP_TOO_DEEP);
    eq_mp_reader_init(&r, deep, sizeof deep);
    ck_assert_int_eq(eq_mp_skip(&r, 3), EQ_MP_OK);
}
END_TEST

/* ---- malformed headers --------------------------------------------------- */

/* Writes a BATCH_REQ header.  `omit`: a key to leave out; `over`: a key
 * whose value `fn` writes instead of the valid one (NULL for neither). */
typedef void s_over_fn(msgpack_packer *pk);
static msgpack_sbuffer s_req_hdr(const char *omit, const char *over, s_over_fn *fn)
{
    static const char *const keys[] = { "v", "t", "req", "job", "epoch", "step", "offset", "count" };
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    size_t n = 8;
    if (omit) n--;
    if (over && (!omit || strcmp(over, omit))) {
        bool known = false;
        for (int i = 0; i < 8; i++) known |= strcmp(keys[i], over) == 0;
        if (!known) n++;
    }
    msgpack_pack_map(&pk, n);
    bool over_done = false;
    for (int i = 0; i < 8; i++) {
        const char *k = keys[i];
        if (omit && strcmp(k, omit) == 0) continue;
        msgpack_pack_str_with_body(&pk, k, strlen(k));
        if (over && strcmp(k, over) == 0) {
            fn(&pk);
            over_done = true;
        } else if (!strcmp(k, "v")) msgpack_pack_int(&pk, 1);
        else if (!strcmp(k, "t")) msgpack_pack_str_with_body(&pk, "BATCH_REQ", 9);
        else if (!strcmp(k, "job")) msgpack_pack_str_with_body(&pk, "j1", 2);
        else msgpack_pack_int(&pk, 4);
    }
    if (over && !over_done) {
        msgpack_pack_str_with_body(&pk, over, strlen(over));
        fn(&pk);
    }
    return sb;
}

static void s_expect_fail(const void *buf, size_t len, const eq_proto_limits *lim, eq_status want, const char *needle)
{
    eq_msg m;
    eq_err e = { 0 };
    eq_status st = eq_proto_decode_header(&m, buf, len, lim, &e);
    ck_assert_msg(st == want, "want %s, got %s: %s", eq_status_str(want), eq_status_str(st), e.msg);
    ck_assert_int_eq(e.code, want);
    ck_assert_msg(strstr(e.msg, needle) != NULL, "'%s' not in '%s'", needle, e.msg);
    eq_proto_msg_reset(&m);
}

static void s_expect_hdr_fail(const char *omit, const char *over, s_over_fn *fn, eq_status want, const char *needle)
{
    msgpack_sbuffer sb = s_req_hdr(omit, over, fn);
    s_expect_fail(sb.data, sb.size, NULL, want, needle);
    msgpack_sbuffer_destroy(&sb);
}

static void s_v2(msgpack_packer *pk) { msgpack_pack_int(pk, 2); }
static void s_str_x(msgpack_packer *pk) { msgpack_pack_str_with_body(pk, "x", 1); }
static void s_neg(msgpack_packer *pk) { msgpack_pack_int(pk, -3); }
static void s_big(msgpack_packer *pk) { msgpack_pack_uint64(pk, 1ull << 32); }
static void s_zero(msgpack_packer *pk) { msgpack_pack_int(pk, 0); }
static void s_foo(msgpack_packer *pk) { msgpack_pack_str_with_body(pk, "FOO", 3); }
static void s_long(msgpack_packer *pk)
{
    char s[300];
    memset(s, 'a', sizeof s);
    msgpack_pack_str_with_body(pk, s, sizeof s);
}
static void s_slash(msgpack_packer *pk) { msgpack_pack_str_with_body(pk, "../x", 4); }
static void s_nul(msgpack_packer *pk) { msgpack_pack_str_with_body(pk, "a\0b", 3); }
static void s_deep(msgpack_packer *pk)
{
    for (int i = 0; i < 20; i++) msgpack_pack_array(pk, 1);
    msgpack_pack_int(pk, 1);
}
static void s_shallow(msgpack_packer *pk)
{
    for (int i = 0; i < 6; i++) msgpack_pack_array(pk, 1);
    msgpack_pack_int(pk, 1);
}

START_TEST(test_bad_envelope)
{
    const uint8_t arr[] = { 0x91, 0x01 };
    s_expect_fail(arr, sizeof arr, NULL, EQ_ERR_PARSE, "not a MessagePack map");
    s_expect_fail(arr, 0, NULL, EQ_ERR_PARSE, "header: empty frame (expected a MessagePack map)");
    /* the section is named once ("header: header: ..." before) */
    const uint8_t map16[] = { 0xde, 0xff, 0xff };
    s_expect_fail(map16, sizeof map16, NULL, EQ_ERR_PARSE, "header: top-level map: truncated");
    const uint8_t c1[] = { 0xc1 };
    s_expect_fail(c1, 1, NULL, EQ_ERR_PARSE, "0xc1");
    const uint8_t trail[] = { 0x80, 0x00 };
    s_expect_fail(trail, sizeof trail, NULL, EQ_ERR_PARSE, "trailing");
    /* Keys must be strings. */
    const uint8_t intkey[] = { 0x81, 0x01, 0x01 };
    s_expect_fail(intkey, sizeof intkey, NULL, EQ_ERR_PROTO, "expected string key");
    /* Header larger than the limit. */
    eq_proto_limits lim;
    eq_proto_limits_default(&lim);
    lim.max_header_bytes = 1;
    s_expect_fail(trail, sizeof trail, &lim, EQ_ERR_LIMIT, "at most 1");
}
END_TEST

START_TEST(test_bad_version_and_type)
{
    eq_msg m;
    eq_err e = { 0 };
    msgpack_sbuffer sb = s_req_hdr(NULL, "v", s_v2);
    ck_assert_int_eq(eq_proto_decode_header(&m, sb.data, sb.size, NULL, &e), EQ_ERR_VERSION);
    ck_assert_ptr_nonnull(strstr(e.msg, "BATCH_REQ: protocol version 2"));
    /* What could be read is kept, for the ERROR reply. */
    ck_assert_int_eq(m.type, EQ_MSG_BATCH_REQ);
    ck_assert(m.has_req && m.req == 4);
    msgpack_sbuffer_destroy(&sb);

    s_expect_hdr_fail("v", NULL, NULL, EQ_ERR_PROTO, "missing required key 'v'");
    s_expect_hdr_fail("t", NULL, NULL, EQ_ERR_PROTO, "missing required key 't'");
    s_expect_hdr_fail(NULL, "t", s_foo, EQ_ERR_UNSUPPORTED, "unknown message type 'FOO'");
    s_expect_hdr_fail(NULL, "v", s_str_x, EQ_ERR_PROTO, "field 'v': expected unsigned integer, got string");
    s_expect_hdr_fail(NULL, "t", s_zero, EQ_ERR_PROTO, "field 't': expected string");
}
END_TEST

START_TEST(test_bad_fields)
{
    s_expect_hdr_fail("count", NULL, NULL, EQ_ERR_PROTO, "BATCH_REQ: missing required key 'count'");
    s_expect_hdr_fail("req", NULL, NULL, EQ_ERR_PROTO, "BATCH_REQ: missing required key 'req'");
    s_expect_hdr_fail(NULL, "count", s_str_x, EQ_ERR_PROTO,
                      "BATCH_REQ: field 'count': expected unsigned integer, got string");
    s_expect_hdr_fail(NULL, "epoch", s_neg, EQ_ERR_PROTO, "field 'epoch': expected unsigned integer, got negative");
    s_expect_hdr_fail(NULL, "offset", s_big, EQ_ERR_PROTO, "field 'offset': 4294967296 larger than");
    s_expect_hdr_fail(NULL, "count", s_zero, EQ_ERR_PROTO, "field 'count': 0 outside [1,");
    s_expect_hdr_fail(NULL, "job", s_long, EQ_ERR_LIMIT, "field 'job': string of 300 bytes");
    s_expect_hdr_fail(NULL, "job", s_slash, EQ_ERR_PROTO, "field 'job': '../x' is not a name");
    s_expect_hdr_fail(NULL, "job", s_nul, EQ_ERR_PROTO, "NUL byte");
    s_expect_hdr_fail(NULL, "deadline_ms", s_str_x, EQ_ERR_PROTO, "field 'deadline_ms'");
    /* Unknown keys are skipped, whatever they hold (within the depth limit). */
    msgpack_sbuffer sb = s_req_hdr(NULL, "later", s_shallow);
    eq_msg m;
    eq_err e = { 0 };
    ck_assert_msg(eq_proto_decode_header(&m, sb.data, sb.size, NULL, &e) == EQ_OK, "%s", e.msg);
    msgpack_sbuffer_destroy(&sb);
    s_expect_hdr_fail(NULL, "later", s_deep, EQ_ERR_LIMIT, "nesting deeper than 8");
    /* Duplicate keys are refused. */
    const uint8_t dup[] = { 0x83, 0xa1, 'v', 0x01, 0xa1, 't', 0xa5, 'H', 'E', 'L', 'L', 'O', 0xa1, 'v', 0x01 };
    s_expect_fail(dup, sizeof dup, NULL, EQ_ERR_PROTO, "field 'v': duplicate key");
}
END_TEST

/* Every prefix of a valid header fails cleanly. */
START_TEST(test_truncated)
{
    eq_msg a;
    s_batch(&a, 8, 32, 32, 3, true);
    uint8_t *buf;
    size_t len;
    ck_assert_int_eq(eq_proto_encode(&a, &buf, &len, NULL), EQ_OK);
    for (size_t n = 0; n < len; n++) {
        eq_msg m;
        eq_err e = { 0 };
        eq_status st = eq_proto_decode_header(&m, buf, n, NULL, &e);
        ck_assert_msg(st == EQ_ERR_PARSE, "prefix %zu/%zu: %s %s", n, len, eq_status_str(st), e.msg);
        eq_proto_msg_reset(&m);
    }
    free(buf);
    eq_proto_msg_reset(&a);
}
END_TEST

/* Huge declared counts inside a tiny header, even with limits wide open:
 * refused from the byte count before any allocation (msgpack-c asked for
 * 128 GiB on such input). */
START_TEST(test_hostile_counts_in_header)
{
    eq_proto_limits lim;
    eq_proto_limits_default(&lim);
    lim.max_list_len = UINT32_MAX;
    lim.max_map_len = UINT32_MAX;
    /* {"v":1,"t":"BATCH","replaced": array32(0x0fffffff) ...} */
    const uint8_t rep[] = { 0x83, 0xa1, 'v', 0x01, 0xa1, 't', 0xa5, 'B', 'A', 'T', 'C', 'H',
                            0xa8, 'r', 'e', 'p', 'l', 'a', 'c', 'e', 'd', 0xdd, 0x0f, 0xff, 0xff, 0xff, 0x01 };
    s_expect_fail(rep, sizeof rep, &lim, EQ_ERR_PARSE, "truncated");
    const uint8_t top[] = { 0xdf, 0x0f, 0xff, 0xff, 0xff, 0xa1, 'v', 0x01, 0x00, 0x00 };
    s_expect_fail(top, sizeof top, &lim, EQ_ERR_PARSE, "truncated");
    /* With default limits the count limit speaks first. */
    const uint8_t big[] = { 0xde, 0x01, 0x00 };
    s_expect_fail(big, sizeof big, NULL, EQ_ERR_PARSE, "truncated");
}
END_TEST

/* A BATCH header built by hand from frame descriptions. */
static msgpack_sbuffer s_batch_hdr(int nframes, const char *const *names, const char *const *dtypes,
                                   const int64_t (*shapes)[4], const int *ndims)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 9);
    msgpack_pack_str_with_body(&pk, "v", 1);
    msgpack_pack_int(&pk, 1);
    msgpack_pack_str_with_body(&pk, "t", 1);
    msgpack_pack_str_with_body(&pk, "BATCH", 5);
    const char *ks[] = { "req", "epoch", "step", "offset", "count" };
    for (int i = 0; i < 5; i++) {
        msgpack_pack_str_with_body(&pk, ks[i], strlen(ks[i]));
        msgpack_pack_int(&pk, 2);
    }
    msgpack_pack_str_with_body(&pk, "job", 3);
    msgpack_pack_str_with_body(&pk, "j", 1);
    msgpack_pack_str_with_body(&pk, "frames", 6);
    msgpack_pack_array(&pk, nframes);
    for (int i = 0; i < nframes; i++) {
        msgpack_pack_map(&pk, 3);
        msgpack_pack_str_with_body(&pk, "name", 4);
        msgpack_pack_str_with_body(&pk, names[i], strlen(names[i]));
        msgpack_pack_str_with_body(&pk, "dtype", 5);
        msgpack_pack_str_with_body(&pk, dtypes[i], strlen(dtypes[i]));
        msgpack_pack_str_with_body(&pk, "shape", 5);
        msgpack_pack_array(&pk, ndims[i]);
        for (int k = 0; k < ndims[i]; k++) msgpack_pack_int64(&pk, shapes[i][k]);
    }
    return sb;
}

static void s_expect_batch_fail(const char *dt0, const char *dt1, int64_t s00, int64_t s01, int64_t s10,
                                eq_status want, const char *needle)
{
    const char *names[] = { "images", "labels" }, *dtypes[] = { dt0, dt1 };
    const int64_t shapes[2][4] = { { s00, s01, 4, 3 }, { s10 } };
    const int ndims[] = { 4, 1 };
    msgpack_sbuffer sb = s_batch_hdr(2, names, dtypes, shapes, ndims);
    s_expect_fail(sb.data, sb.size, NULL, want, needle);
    msgpack_sbuffer_destroy(&sb);
}

START_TEST(test_bad_frames)
{
    const char *names[] = { "images", "labels" }, *dtypes[] = { "U8", "I32" };
    const int64_t shapes[2][4] = { { 2, 4, 4, 3 }, { 2 } };
    const int ndims[] = { 4, 1 };
    msgpack_sbuffer sb = s_batch_hdr(2, names, dtypes, shapes, ndims);
    eq_msg m;
    eq_err e = { 0 };
    ck_assert_msg(eq_proto_decode_header(&m, sb.data, sb.size, NULL, &e) == EQ_OK, "%s", e.msg);
    /* Wrong frame count, wrong frame size. */
    size_t sizes[3] = { 96, 8, 1 };
    ck_assert_int_eq(eq_proto_check_frames(&m, 1, sizes, &e), EQ_ERR_PROTO);
    ck_assert_ptr_nonnull(strstr(e.msg, "BATCH: header lists 2 frames, message has 1"));
    ck_assert_int_eq(eq_proto_check_frames(&m, 3, sizes, &e), EQ_ERR_PROTO);
    sizes[1] = 12;
    ck_assert_int_eq(eq_proto_check_frames(&m, 2, sizes, &e), EQ_ERR_PROTO);
    ck_assert_ptr_nonnull(strstr(e.msg, "frame 1 'labels': 12 bytes, shape x I32 needs 8"));
    sizes[1] = 8;
    ck_assert_int_eq(eq_proto_check_frames(&m, 2, sizes, &e), EQ_OK);
    /* The same through eq_proto_decode, and its frame-count limit. */
    uint8_t img[96] = { 0 }, lab[8] = { 0 };
    const void *parts[4] = { sb.data, img, lab, lab };
    size_t psizes[4] = { sb.size, 96, 8, 8 };
    ck_assert_int_eq(eq_proto_decode(&m, 3, parts, psizes, NULL, &e), EQ_OK);
    ck_assert_int_eq(eq_proto_decode(&m, 4, parts, psizes, NULL, &e), EQ_ERR_PROTO);
    ck_assert(m.has_req && m.req == 2 && m.type == EQ_MSG_BATCH);
    eq_proto_limits lim;
    eq_proto_limits_default(&lim);
    lim.max_frames = 2;
    ck_assert_int_eq(eq_proto_decode(&m, 4, parts, psizes, &lim, &e), EQ_ERR_LIMIT);
    ck_assert_int_eq(eq_proto_decode(&m, 0, parts, psizes, &lim, &e), EQ_ERR_PROTO);
    /* Frame list longer than the limit. */
    lim.max_frames = 1;
    s_expect_fail(sb.data, sb.size, &lim, EQ_ERR_LIMIT, "field 'frames': 2 entries, at most 1");
    msgpack_sbuffer_destroy(&sb);

    s_expect_batch_fail("U8", "F128", 2, 4, 2, EQ_ERR_PROTO, "frames[1].dtype': unknown dtype 'F128'");
    s_expect_batch_fail("U8", "a-very-long-dtype-name", 2, 4, 2, EQ_ERR_PROTO, "frames[1].dtype");
    s_expect_batch_fail("U8", "I32", -2, 4, 2, EQ_ERR_PROTO, "negative dimension -2");
    s_expect_batch_fail("U8", "I32", 2, INT64_MAX, 2, EQ_ERR_LIMIT, "frames[0] 'images': shape x U8 exceeds");
    s_expect_batch_fail("U8", "I32", 1ll << 40, 1ll << 40, 2, EQ_ERR_LIMIT, "exceeds");
    /* BATCH's own frame rules. */
    s_expect_batch_fail("F32", "I32", 2, 4, 2, EQ_ERR_PROTO, "frame 'images': dtype F32, expected U8");
    s_expect_batch_fail("U8", "F32", 2, 4, 2, EQ_ERR_PROTO, "frame 'labels': dtype F32, expected I32 or I64");
    s_expect_batch_fail("U8", "I32", 3, 4, 2, EQ_ERR_PROTO, "frame 'images': first dimension 3, expected count 2");
    s_expect_batch_fail("U8", "I32", 2, 4, 1, EQ_ERR_PROTO, "frame 'labels': first dimension 1");
    {
        const char *n2[] = { "images", "images" }, *d2[] = { "U8", "U8" };
        const int64_t sh2[2][4] = { { 2, 1, 1, 1 }, { 2, 1, 1, 1 } };
        const int nd2[] = { 4, 4 };
        msgpack_sbuffer s2 = s_batch_hdr(2, n2, d2, sh2, nd2);
        s_expect_fail(s2.data, s2.size, NULL, EQ_ERR_PROTO, "duplicate frame name 'images'");
        msgpack_sbuffer_destroy(&s2);
        const char *n3[] = { "images" };
        msgpack_sbuffer s3 = s_batch_hdr(1, n3, d2, sh2, nd2);
        s_expect_fail(s3.data, s3.size, NULL, EQ_ERR_PROTO, "BATCH: missing frame 'labels'");
        msgpack_sbuffer_destroy(&s3);
    }
}
END_TEST

START_TEST(test_bad_semantics)
{
    eq_msg a;
    eq_err e = { 0 };
    uint8_t *buf;
    size_t len;
    /* BATCH: replaced out of range / not increasing; mix without frames. */
    s_batch(&a, 4, 2, 2, 1, false);
    uint32_t rep[2] = { 3, 4 };
    eq_proto_batch_set_replaced(&a, rep, 2, NULL);
    ck_assert_int_eq(eq_proto_encode(&a, &buf, &len, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "BATCH: field 'replaced[1]': position 4 not below count 4"));
    rep[1] = 3;
    eq_proto_batch_set_replaced(&a, rep, 2, NULL);
    ck_assert_int_eq(eq_proto_encode(&a, &buf, &len, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "not strictly increasing"));
    eq_proto_batch_set_replaced(&a, rep, 1, NULL);
    snprintf(a.u.batch.mix, sizeof a.u.batch.mix, "mixup");
    ck_assert_int_eq(eq_proto_encode(&a, &buf, &len, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "missing frame 'mix_index'"));
    snprintf(a.u.batch.mix, sizeof a.u.batch.mix, "blend");
    ck_assert_int_eq(eq_proto_encode(&a, &buf, &len, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "field 'mix': 'blend' is not one of mixup|cutmix"));
    eq_proto_msg_reset(&a);

    /* JOB: a path for a dataset, an unknown enum, a NaN, duplicate transform keys. */
    s_job(&a);
    snprintf(a.u.job.dataset, sizeof a.u.job.dataset, "data/x");
    ck_assert_int_eq(eq_proto_encode(&a, &buf, &len, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "JOB: field 'dataset': 'data/x' is not a name"));
    s_job(&a);
    a.u.job.mix_prob = NAN;
    ck_assert_int_eq(eq_proto_encode(&a, &buf, &len, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "JOB: field 'mix_prob'"));
    s_job(&a);
    snprintf(a.u.job.transforms[1].key, sizeof a.u.job.transforms[1].key, "resize");
    ck_assert_int_eq(eq_proto_encode(&a, &buf, &len, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "duplicate key 'resize'"));
    s_job(&a);
    a.u.job.channels = 0;
    ck_assert_int_eq(eq_proto_encode(&a, &buf, &len, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "JOB: field 'channels': 0 outside [1, 16]"));
    /* Decoding a bare JOB names the first missing key; an unknown `last`. */
    const uint8_t job[] = { 0x82, 0xa1, 'v', 0x01, 0xa1, 't', 0xa3, 'J', 'O', 'B' };
    s_expect_fail(job, sizeof job, NULL, EQ_ERR_PROTO, "JOB: missing required key 'dataset'");
    s_job(&a);
    ck_assert_int_eq(eq_proto_encode(&a, &buf, &len, &e), EQ_OK);
    uint8_t *w = memmem(buf, len, "\xa4wrap", 5);
    ck_assert_ptr_nonnull(w);
    memcpy(w + 1, "warp", 4);
    s_expect_fail(buf, len, NULL, EQ_ERR_PROTO, "JOB: field 'last': 'warp' is not one of drop|wrap|partial");
    free(buf);
    /* HELLO with no versions; frames on a message that has none. */
    s_hello(&a);
    a.u.hello.nversions = 0;
    ck_assert_int_eq(eq_proto_encode(&a, &buf, &len, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "HELLO: field 'versions': 0 elements, at least 1"));
    s_hello(&a);
    int64_t one = 1;
    ck_assert_int_eq(eq_proto_add_frame(&a, "x", EQ_DT_U8, 1, &one, NULL), EQ_OK);
    ck_assert_int_eq(eq_proto_encode(&a, &buf, &len, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "HELLO: field 'frames': this message carries no frames"));
    /* Unknown type on encode; bad frame descriptions. */
    eq_proto_msg_init(&a, EQ_MSG_TYPE_COUNT);
    ck_assert_int_eq(eq_proto_encode(&a, &buf, &len, &e), EQ_ERR_INVALID);
    int64_t neg = -1;
    s_hello(&a);
    ck_assert_int_eq(eq_proto_add_frame(&a, "x", EQ_DT_U8, 1, &neg, NULL), EQ_ERR_INVALID);
    ck_assert_int_eq(eq_proto_add_frame(&a, "x", EQ_DT_COUNT, 1, &one, NULL), EQ_ERR_INVALID);
    for (int i = 0; i < EQ_PROTO_MAX_FRAMES; i++) eq_proto_add_frame(&a, "x", EQ_DT_U8, 1, &one, NULL);
    ck_assert_int_eq(eq_proto_add_frame(&a, "x", EQ_DT_U8, 1, &one, NULL), EQ_ERR_LIMIT);
    /* Frame descriptions filled by hand are checked too. */
    s_batch(&a, 2, 1, 1, 1, false);
    a.frames[1].dtype = EQ_DT_COUNT;
    ck_assert_int_eq(eq_proto_encode(&a, &buf, &len, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "frames[1] 'labels': bad dtype, rank or shape"));
    a.frames[1].dtype = EQ_DT_I32;
    a.frames[0].shape[1] = -1;
    ck_assert_int_eq(eq_proto_encode(&a, &buf, &len, &e), EQ_ERR_INVALID);
    eq_proto_msg_reset(&a);
}
END_TEST

START_TEST(test_type_names)
{
    for (int i = 0; i < EQ_MSG_TYPE_COUNT; i++) {
        eq_msg_type t;
        const char *n = eq_msg_type_name((eq_msg_type)i);
        ck_assert_int_eq(eq_msg_type_parse(n, strlen(n), &t), 0);
        ck_assert_int_eq(t, i);
    }
    ck_assert_str_eq(eq_msg_type_name(EQ_MSG_TYPE_COUNT), "?");
    eq_msg_type t;
    ck_assert_int_eq(eq_msg_type_parse("HELL", 4, &t), -1);
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("proto");
    TCase *tc = tcase_create("roundtrip");
    tcase_add_test(tc, test_roundtrip_hello);
    tcase_add_test(tc, test_roundtrip_job);
    tcase_add_test(tc, test_roundtrip_job_ok);
    tcase_add_test(tc, test_roundtrip_batch_req);
    tcase_add_test(tc, test_roundtrip_batch);
    tcase_add_test(tc, test_roundtrip_error);
    tcase_add_test(tc, test_decode_foreign_encoding);
    tcase_add_test(tc, test_job_id);
    tcase_add_test(tc, test_type_names);
    suite_add_tcase(s, tc);
    tc = tcase_create("mpread");
    tcase_add_test(tc, test_mpread_scalars);
    tcase_add_test(tc, test_mpread_hostile_counts);
    suite_add_tcase(s, tc);
    tc = tcase_create("malformed");
    tcase_add_test(tc, test_bad_envelope);
    tcase_add_test(tc, test_bad_version_and_type);
    tcase_add_test(tc, test_bad_fields);
    tcase_add_test(tc, test_truncated);
    tcase_add_test(tc, test_hostile_counts_in_header);
    tcase_add_test(tc, test_bad_frames);
    tcase_add_test(tc, test_bad_semantics);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return eq_test_run(s_suite()); }
