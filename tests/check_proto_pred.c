/* tests/check_proto_pred.c -- the eval and metrics messages (PRED, METRICS):
 * round trips, and malformed headers built by hand with msgpack-c (so the
 * decoder, not only the encoder, is shown to refuse them). */
#include <math.h>
#include <msgpack.h>
#include <stdint.h>

#include "proto/proto.h"
#include "tests/testutil.h"

static void s_pred(eq_msg *m, uint32_t count, int64_t k, uint32_t final)
{
    eq_proto_msg_init(m, EQ_MSG_PRED);
    eq_msg_pred *p = &m->u.pred;
    snprintf(p->job, sizeof p->job, "fmnist-run_1");
    p->epoch = 3;
    p->total = 10000;
    p->rank = 1;
    p->world = 2;
    p->count = count;
    p->final = final;
    int64_t s1[1] = { count }, s2[2] = { count, k };
    ck_assert_int_eq(eq_proto_add_frame(m, "ids", EQ_DT_I64, 1, s1, NULL), EQ_OK);
    ck_assert_int_eq(eq_proto_add_frame(m, "labels", EQ_DT_I32, 1, s1, NULL), EQ_OK);
    ck_assert_int_eq(eq_proto_add_frame(m, "topk", EQ_DT_I32, 2, s2, NULL), EQ_OK);
}

static void s_roundtrip(const eq_msg *in, eq_msg *out)
{
    uint8_t *buf;
    size_t len;
    eq_err e = { 0 };
    ck_assert_msg(eq_proto_encode(in, &buf, &len, &e) == EQ_OK, "encode: %s", e.msg);
    ck_assert_msg(eq_proto_decode_header(out, buf, len, NULL, &e) == EQ_OK, "decode: %s", e.msg);
    free(buf);
    ck_assert_int_eq(out->type, in->type);
    ck_assert_uint_eq(out->nframes, in->nframes);
}

START_TEST(test_roundtrip_pred)
{
    eq_msg a, b;
    s_pred(&a, 7, 5, 0);
    s_roundtrip(&a, &b);
    const eq_msg_pred *y = &b.u.pred;
    ck_assert_str_eq(y->job, "fmnist-run_1");
    ck_assert_uint_eq(y->epoch, 3);
    ck_assert_uint_eq(y->total, 10000);
    ck_assert_uint_eq(y->rank, 1);
    ck_assert_uint_eq(y->world, 2);
    ck_assert_uint_eq(y->count, 7);
    ck_assert_uint_eq(y->final, 0);
    ck_assert_int_eq(y->frame_ids, 0);
    ck_assert_int_eq(y->frame_labels, 1);
    ck_assert_int_eq(y->frame_topk, 2);
    ck_assert_uint_eq(b.frames[2].nbytes, 7u * 5 * 4);
    size_t sizes[3] = { 7 * 8, 7 * 4, 7 * 5 * 4 };
    ck_assert_int_eq(eq_proto_check_frames(&b, 3, sizes, NULL), EQ_OK);
    sizes[2] = 7 * 4;
    ck_assert_int_eq(eq_proto_check_frames(&b, 3, sizes, NULL), EQ_ERR_PROTO);
    /* A final message with no samples: empty frames. */
    s_pred(&a, 0, 5, 1);
    s_roundtrip(&a, &b);
    ck_assert_uint_eq(b.u.pred.count, 0);
    ck_assert_uint_eq(b.u.pred.final, 1);
    ck_assert_uint_eq(b.frames[0].nbytes, 0);
    eq_proto_msg_reset(&a);
    eq_proto_msg_reset(&b);
}
END_TEST

START_TEST(test_roundtrip_metrics)
{
    eq_msg a, b;
    eq_proto_msg_init(&a, EQ_MSG_METRICS);
    eq_msg_metrics *x = &a.u.metrics;
    snprintf(x->job, sizeof x->job, "run");
    snprintf(x->source, sizeof x->source, "trainer");
    snprintf(x->kind, sizeof x->kind, "train");
    x->epoch = 2;
    x->step = 17;
    x->steps = 234;
    x->loss = 0.4375;
    x->lr = 0.1;
    x->img_s = 1234.5;
    x->wait_pct = 1.25;
    x->eta_s = 60;
    s_roundtrip(&a, &b);
    const eq_msg_metrics *y = &b.u.metrics;
    ck_assert_str_eq(y->source, "trainer");
    ck_assert_str_eq(y->kind, "train");
    ck_assert_uint_eq(y->epoch, 2);
    ck_assert_uint_eq(y->step, 17);
    ck_assert_uint_eq(y->steps, 234);
    ck_assert(y->loss == 0.4375 && y->lr == 0.1 && y->img_s == 1234.5 && y->wait_pct == 1.25);
    ck_assert(y->eta_s == 60 && y->top1 == 0 && y->top5 == 0);
    snprintf(x->kind, sizeof x->kind, "eval");
    x->top1 = 91.25;
    x->top5 = 99.5;
    x->samples = 10000;
    s_roundtrip(&a, &b);
    ck_assert(b.u.metrics.top1 == 91.25 && b.u.metrics.top5 == 99.5 && b.u.metrics.samples == 10000);
    /* The encoder refuses what the decoder would. */
    eq_err e = { 0 };
    uint8_t *buf;
    size_t len;
    snprintf(x->kind, sizeof x->kind, "bogus");
    ck_assert_int_eq(eq_proto_encode(&a, &buf, &len, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "kind"));
    snprintf(x->kind, sizeof x->kind, "eval");
    x->loss = NAN;
    ck_assert_int_eq(eq_proto_encode(&a, &buf, &len, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "loss"));
}
END_TEST

START_TEST(test_type_names)
{
    ck_assert_str_eq(eq_msg_type_name(EQ_MSG_PRED), "PRED");
    ck_assert_str_eq(eq_msg_type_name(EQ_MSG_METRICS), "METRICS");
    eq_msg_type t;
    ck_assert_int_eq(eq_msg_type_parse("PRED", 4, &t), 0);
    ck_assert_int_eq(t, EQ_MSG_PRED);
    ck_assert_int_eq(eq_msg_type_parse("METRICS", 7, &t), 0);
    ck_assert_int_eq(t, EQ_MSG_METRICS);
}
END_TEST

/* ---- malformed PRED headers, packed by hand -------------------------------- */

typedef struct s_hdr {
    const char *drop;      /* key to leave out, or NULL */
    uint64_t total, count; /* header fields */
    uint64_t rank, world, final;
    const char *dt_ids, *dt_topk;
    int64_t n_ids, n_labels, n_topk, k;
    int nframes; /* 2 or 3 */
} s_hdr;

static void s_str(msgpack_packer *pk, const char *s) { msgpack_pack_str_with_body(pk, s, strlen(s)); }

static void s_frame(msgpack_packer *pk, const char *name, const char *dt, int ndim, int64_t d0, int64_t d1)
{
    msgpack_pack_map(pk, 3);
    s_str(pk, "name");
    s_str(pk, name);
    s_str(pk, "dtype");
    s_str(pk, dt);
    s_str(pk, "shape");
    msgpack_pack_array(pk, (size_t)ndim);
    msgpack_pack_int64(pk, d0);
    if (ndim > 1) msgpack_pack_int64(pk, d1);
}

static msgpack_sbuffer s_pack(const s_hdr *h)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    const char *keys[] = { "job", "epoch", "total", "rank", "world", "count", "final" };
    size_t n = 0;
    for (size_t i = 0; i < 7; i++) n += !(h->drop && !strcmp(h->drop, keys[i]));
    msgpack_pack_map(&pk, n + 3);
    s_str(&pk, "v");
    msgpack_pack_uint32(&pk, EQ_PROTO_VERSION);
    s_str(&pk, "t");
    s_str(&pk, "PRED");
    for (size_t i = 0; i < 7; i++) {
        if (h->drop && !strcmp(h->drop, keys[i])) continue;
        s_str(&pk, keys[i]);
        switch (i) {
        case 0: s_str(&pk, "run"); break;
        case 1: msgpack_pack_uint64(&pk, 0); break;
        case 2: msgpack_pack_uint64(&pk, h->total); break;
        case 3: msgpack_pack_uint64(&pk, h->rank); break;
        case 4: msgpack_pack_uint64(&pk, h->world); break;
        case 5: msgpack_pack_uint64(&pk, h->count); break;
        case 6: msgpack_pack_uint64(&pk, h->final); break;
        }
    }
    s_str(&pk, "frames");
    msgpack_pack_array(&pk, (size_t)h->nframes);
    s_frame(&pk, "ids", h->dt_ids, 1, h->n_ids, 0);
    s_frame(&pk, "labels", "I32", 1, h->n_labels, 0);
    if (h->nframes > 2) s_frame(&pk, "topk", h->dt_topk, 2, h->n_topk, h->k);
    return sb;
}

static s_hdr s_good(void)
{
    return (s_hdr){ .total = 100, .count = 4, .rank = 0, .world = 1, .final = 0, .dt_ids = "I64",
                    .dt_topk = "I32", .n_ids = 4, .n_labels = 4, .n_topk = 4, .k = 5, .nframes = 3 };
}

static void s_expect(const s_hdr *h, eq_status code, const char *needle)
{
    msgpack_sbuffer sb = s_pack(h);
    eq_msg m;
    eq_err e = { 0 };
    eq_status st = eq_proto_decode_header(&m, sb.data, sb.size, NULL, &e);
    msgpack_sbuffer_destroy(&sb);
    ck_assert_msg(st == code, "expected %d, got %d (%s)", (int)code, (int)st, e.msg);
    if (needle) ck_assert_msg(strstr(e.msg, needle) != NULL, "'%s' not in '%s'", needle, e.msg);
    if (code == EQ_OK) ck_assert_int_eq(m.type, EQ_MSG_PRED);
    eq_proto_msg_reset(&m);
}

START_TEST(test_bad_pred)
{
    s_hdr h = s_good();
    s_expect(&h, EQ_OK, NULL);
    h.drop = "total";
    s_expect(&h, EQ_ERR_PROTO, "PRED: missing required key 'total'");
    h = s_good();
    h.drop = "job";
    s_expect(&h, EQ_ERR_PROTO, "'job'");
    h = s_good();
    h.total = 0;
    s_expect(&h, EQ_ERR_PROTO, "total");
    h = s_good();
    h.rank = 1;
    s_expect(&h, EQ_ERR_PROTO, "PRED: field 'rank': 1 not below world 1");
    h = s_good();
    h.world = 0;
    s_expect(&h, EQ_ERR_PROTO, "world");
    h = s_good();
    h.final = 2;
    s_expect(&h, EQ_ERR_PROTO, "final");
    h = s_good();
    h.count = h.n_ids = h.n_labels = h.n_topk = 0;
    s_expect(&h, EQ_ERR_PROTO, "count': 0 is allowed only with final");
    h.final = 1;
    s_expect(&h, EQ_OK, NULL);
    h = s_good();
    h.total = 3;
    s_expect(&h, EQ_ERR_PROTO, "count': 4 over total 3");
    h = s_good();
    h.dt_ids = "I32";
    s_expect(&h, EQ_ERR_PROTO, "PRED: frame 'ids': dtype I32, expected I64");
    h = s_good();
    h.dt_topk = "F32";
    s_expect(&h, EQ_ERR_PROTO, "PRED: frame 'topk': dtype F32");
    h = s_good();
    h.n_labels = 3;
    s_expect(&h, EQ_ERR_PROTO, "PRED: frame 'labels': first dimension 3, expected count 4");
    h = s_good();
    h.k = 0;
    s_expect(&h, EQ_ERR_PROTO, "width 0");
    h.k = EQ_PROTO_MAX_TOPK + 1;
    s_expect(&h, EQ_ERR_PROTO, "width 17");
    h = s_good();
    h.nframes = 2;
    s_expect(&h, EQ_ERR_PROTO, "PRED: missing frame 'topk'");
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("proto_pred");
    TCase *tc = tcase_create("pred");
    tcase_add_test(tc, test_roundtrip_pred);
    tcase_add_test(tc, test_roundtrip_metrics);
    tcase_add_test(tc, test_type_names);
    tcase_add_test(tc, test_bad_pred);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return eq_test_run(s_suite()); }
