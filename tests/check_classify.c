/* tests/check_classify.c -- Top-1/Top-5 and the exact sample accounting of
 * evaluator/classify.h: counts against a hand-computed case, duplicates,
 * out-of-range ids, missing samples, finals, and that a refused call
 * counts nothing; the eq-eval serve daemon over ipc: failed passes are
 * reported once, and public binds are refused. */
#include <pthread.h>
#include <signal.h>

#include "evaluator/classify.h"
#include "proto/proto_zmq.h"
#include "tests/testutil.h"

START_TEST(test_topk_counts)
{
    eq_err e = { 0 };
    eq_classify *c = eq_classify_new(4, 2, &e);
    ck_assert_ptr_nonnull(c);
    /* rank 0: ids 0, 2; rank 1: ids 1, 3.  width 6 (only the first 5 count for top5). */
    const int64_t ids0[2] = { 0, 2 }, ids1[2] = { 3, 1 };
    const int32_t lab0[2] = { 7, 1 }, lab1[2] = { 4, 9 };
    const int32_t top0[12] = { 7, 1, 2, 3, 4, 5,  /* top1 hit */
                               0, 2, 3, 4, 1, 6 }; /* top5 hit (5th) */
    const int32_t top1[12] = { 0, 1, 2, 3, 5, 4,  /* 6th only: miss */
                               9, 0, 0, 0, 0, 0 }; /* top1 hit */
    ck_assert_int_eq(eq_classify_add(c, 0, 2, ids0, lab0, top0, 6, &e), EQ_OK);
    ck_assert(!eq_classify_done(c));
    ck_assert_int_eq(eq_classify_final(c, 0, &e), EQ_OK);
    ck_assert_int_eq(eq_classify_add(c, 1, 2, ids1, lab1, top1, 6, &e), EQ_OK);
    ck_assert_int_eq(eq_classify_final(c, 1, &e), EQ_OK);
    ck_assert(eq_classify_done(c));
    eq_classify_result r;
    ck_assert_int_eq(eq_classify_result_get(c, &r, &e), EQ_OK);
    ck_assert_uint_eq(r.samples, 4);
    ck_assert_uint_eq(r.correct1, 2);
    ck_assert_uint_eq(r.correct5, 3);
    ck_assert(r.top1 == 50.0 && r.top5 == 75.0);
    eq_classify_destroy(&c);
    ck_assert_ptr_null(c);
    eq_classify_destroy(&c);
}
END_TEST

START_TEST(test_narrow_topk)
{
    /* width 1: top5 == top1. */
    eq_classify *c = eq_classify_new(3, 1, NULL);
    const int64_t ids[3] = { 2, 0, 1 };
    const int32_t lab[3] = { 1, 1, 0 }, top[3] = { 1, 0, 0 };
    ck_assert_int_eq(eq_classify_add(c, 0, 3, ids, lab, top, 1, NULL), EQ_OK);
    ck_assert_int_eq(eq_classify_final(c, 0, NULL), EQ_OK);
    eq_classify_result r;
    ck_assert_int_eq(eq_classify_result_get(c, &r, NULL), EQ_OK);
    ck_assert_uint_eq(r.correct1, 2);
    ck_assert_uint_eq(r.correct5, 2);
    eq_classify_destroy(&c);
}
END_TEST

START_TEST(test_accounting_errors)
{
    eq_err e = { 0 };
    eq_classify *c = eq_classify_new(100, 2, &e);
    const int64_t ids[3] = { 5, 6, 5 };
    const int32_t lab[3] = { 0 }, top[3] = { 0 };
    /* A duplicate inside one call: refused, and nothing of it counted. */
    ck_assert_int_eq(eq_classify_add(c, 0, 3, ids, lab, top, 1, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "sample 5 from rank 0: duplicated"));
    ck_assert_uint_eq(eq_classify_received(c), 0);
    ck_assert_int_eq(eq_classify_add(c, 0, 2, ids, lab, top, 1, &e), EQ_OK);
    /* Across ranks. */
    ck_assert_int_eq(eq_classify_add(c, 1, 1, ids + 1, lab, top, 1, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "sample 6 from rank 1: duplicated"));
    const int64_t bad[2] = { 100, -1 };
    ck_assert_int_eq(eq_classify_add(c, 1, 1, bad, lab, top, 1, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "sample 100 from rank 1: outside [0, 100)"));
    ck_assert_int_eq(eq_classify_add(c, 1, 1, bad + 1, lab, top, 1, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "sample -1"));
    ck_assert_int_eq(eq_classify_add(c, 2, 1, ids, lab, top, 1, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "rank 2 not below world 2"));
    ck_assert_int_eq(eq_classify_final(c, 0, &e), EQ_OK);
    ck_assert_int_eq(eq_classify_final(c, 0, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "final message twice"));
    const int64_t late[1] = { 50 };
    ck_assert_int_eq(eq_classify_add(c, 0, 1, late, lab, top, 1, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "after its final"));
    ck_assert_int_eq(eq_classify_final(c, 1, &e), EQ_OK);
    ck_assert(eq_classify_done(c));
    /* Missing samples: named. */
    eq_classify_result r;
    ck_assert_int_eq(eq_classify_result_get(c, &r, &e), EQ_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.msg, "98 of 100 samples missing (first: 0, 1, 2, 3, 4, 7, 8, 9, ...)"));
    eq_classify_destroy(&c);
    ck_assert_ptr_null(eq_classify_new(0, 1, &e));
    ck_assert_ptr_null(eq_classify_new(1, 0, &e));
}
END_TEST

/* ---- eq-eval serve ------------------------------------------------------ */

typedef struct s_srv {
    char *argv[12];
    int argc, rc;
} s_srv;

static void *s_serve(void *arg)
{
    s_srv *v = arg;
    v->rc = eq_eval_serve_main(v->argc, v->argv);
    return NULL;
}

/* One PRED of `n` ids starting at `id0` (label 1, predicted 1). */
static void s_pred(void *push, const char *job, uint64_t epoch, uint32_t rank, uint32_t world, int64_t id0,
                   uint32_t n, uint32_t final)
{
    eq_msg m;
    eq_proto_msg_init(&m, EQ_MSG_PRED);
    snprintf(m.u.pred.job, sizeof m.u.pred.job, "%s", job);
    m.u.pred.epoch = epoch;
    m.u.pred.total = 4;
    m.u.pred.rank = rank;
    m.u.pred.world = world;
    m.u.pred.count = n;
    m.u.pred.final = final;
    int64_t ids[4], s1[1] = { n }, s2[2] = { n, 1 };
    int32_t lab[4] = { 1, 1, 1, 1 };
    for (uint32_t i = 0; i < n; i++) ids[i] = id0 + (int64_t)i;
    eq_proto_add_frame(&m, "ids", EQ_DT_I64, 1, s1, NULL);
    eq_proto_add_frame(&m, "labels", EQ_DT_I32, 1, s1, NULL);
    eq_proto_add_frame(&m, "topk", EQ_DT_I32, 2, s2, NULL);
    eq_proto_payload pl[3] = { { ids, n * 8u, NULL, NULL }, { lab, n * 4u, NULL, NULL }, { lab, n * 4u, NULL, NULL } };
    eq_err e = { 0 };
    ck_assert_msg(eq_proto_send(push, NULL, &m, pl, 3, 0, &e) == EQ_OK, "%s", e.msg);
}

/* Reproduction: 17 passes that each fail (a duplicated id) while a two-rank
 * pass waits for its second rank.  The table holds 16 passes: eq-eval used
 * to evict the oldest (the live pass, reported as "2 of 4 samples missing")
 * and to report every evicted failed pass a second time ("4 of 4 samples
 * missing").  Now failed passes go first and silently: 17 error lines, and
 * the live pass completes. */
START_TEST(test_serve_failed_passes_reported_once)
{
    char *dir = eq_test_scratch("evs");
    char pull[4200], ctl[4200], jsonl[4200];
    snprintf(pull, sizeof pull, "ipc://%s/pull", dir);
    snprintf(ctl, sizeof ctl, "ipc://%s/ctl", dir);
    snprintf(jsonl, sizeof jsonl, "%s/eval.jsonl", dir);
    s_srv v = { .argv = { "serve", "--pull", pull, "--pub", "", "--control", ctl, "--metrics", jsonl,
                          "--log-level", "error", NULL },
                .argc = 11 };
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, s_serve, &v), 0);
    void *ctx = zmq_ctx_new();
    eq_proto_sockopts o;
    eq_proto_sockopts_default(&o, NULL);
    o.rcvtimeo_ms = 5000;
    eq_err e = { 0 };
    void *push = eq_proto_socket(ctx, ZMQ_PUSH, &o, &e);
    ck_assert_ptr_nonnull(push);
    ck_assert_int_eq(eq_proto_connect(push, pull, &e), EQ_OK);
    s_pred(push, "live", 0, 0, 2, 0, 2, 1);
    for (int k = 0; k < 17; k++) {
        char job[16];
        snprintf(job, sizeof job, "bad%d", k);
        s_pred(push, job, 0, 0, 1, 0, 2, 0);
        s_pred(push, job, 0, 0, 1, 1, 2, 1); /* id 1 again */
    }
    s_pred(push, "live", 0, 1, 2, 2, 2, 1);
    /* a PRED that disagrees on world: the pass fails, reported once like
     * any accounting error (it was only logged, and the pass waited on) */
    s_pred(push, "conf", 0, 0, 2, 0, 2, 1);
    s_pred(push, "conf", 0, 1, 3, 2, 2, 1);
    s_pred(push, "conf", 0, 1, 2, 2, 2, 1); /* ignored: the pass failed */
    /* status until all 39 messages are in, then stop */
    void *d = eq_proto_socket(ctx, ZMQ_DEALER, &o, &e);
    ck_assert_ptr_nonnull(d);
    ck_assert_int_eq(eq_proto_connect(d, ctl, &e), EQ_OK);
    char buf[1024];
    for (int tries = 0;; tries++) {
        ck_assert_int_lt(tries, 200);
        ck_assert_int_eq(zmq_send(d, "status", 6, 0), 6);
        int n = zmq_recv(d, buf, sizeof buf - 1, 0);
        ck_assert_int_gt(n, 0);
        buf[n] = 0;
        if (strstr(buf, "\"received\":39,")) break;
        usleep(10000);
    }
    ck_assert_msg(strstr(buf, "\"reported\":1,\"errors\":18,"), "%s", buf);
    /* SIGPIPE (a --metrics FIFO or log pipe whose reader went) is ignored
     * while serving: it used to end the process (status 141) */
    ck_assert_int_eq(raise(SIGPIPE), 0);
    ck_assert_int_eq(zmq_send(d, "status", 6, 0), 6);
    ck_assert_int_gt(zmq_recv(d, buf, sizeof buf - 1, 0), 0);
    ck_assert_int_eq(zmq_send(d, "stop", 4, 0), 4);
    ck_assert_int_gt(zmq_recv(d, buf, sizeof buf - 1, 0), 0);
    pthread_join(th, NULL);
    ck_assert_int_eq(v.rc, 1); /* accounting errors were reported */
    eq_proto_socket_close(&d);
    eq_proto_socket_close(&push);
    zmq_ctx_term(ctx);
    FILE *f = fopen(jsonl, "r");
    ck_assert_ptr_nonnull(f);
    char line[1024];
    int ok = 0, dup = 0, conf = 0, other = 0;
    while (fgets(line, sizeof line, f)) {
        if (strstr(line, "\"job\":\"live\"") && strstr(line, "\"top1\":100.0000") && strstr(line, "\"samples\":4"))
            ok++;
        else if (strstr(line, "sample 1 from rank 0: duplicated"))
            dup++;
        else if (strstr(line, "\"job\":\"conf\"") && strstr(line, "rank 1 says total 4 world 3, earlier messages said 4 and 2"))
            conf++;
        else
            other++;
    }
    fclose(f);
    ck_assert_int_eq(ok, 1);
    ck_assert_int_eq(dup, 17);
    ck_assert_int_eq(conf, 1);
    ck_assert_int_eq(other, 0);
    eq_test_scratch_rm(dir);
}
END_TEST

START_TEST(test_serve_refuses_public_bind)
{
    char *dir = eq_test_scratch("evp");
    char ctl[4200];
    snprintf(ctl, sizeof ctl, "ipc://%s/ctl", dir);
    /* a control socket anyone could "stop", without --insecure: refused
     * before anything is bound */
    char *av[] = { "serve", "--pull", "tcp://0.0.0.0:*", "--pub", "", "--control", ctl, "--log-level", "error", NULL };
    ck_assert_int_eq(eq_eval_serve_main(9, av), 1);
    char *av2[] = { "serve", "--pull", "ipc://x", "--pub", "", "--control", "tcp://0.0.0.0:*", "--log-level", "error",
                    NULL };
    ck_assert_int_eq(eq_eval_serve_main(9, av2), 1);
    eq_test_scratch_rm(dir);
}
END_TEST

static Suite *s_suite(void)
{
    Suite *s = suite_create("classify");
    TCase *tc = tcase_create("classify");
    tcase_add_test(tc, test_topk_counts);
    tcase_add_test(tc, test_narrow_topk);
    tcase_add_test(tc, test_accounting_errors);
    tcase_add_test(tc, test_serve_failed_passes_reported_once);
    tcase_add_test(tc, test_serve_refuses_public_bind);
    tcase_set_timeout(tc, 20);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return eq_test_run(s_suite()); }
