/*
 * evaluator/classify.h -- classification metrics (Top-1, Top-5) with exact
 * sample accounting, and the eq-eval daemon that computes them from the
 * trainers' PRED messages.
 *
 * eq_classify is the accounting of one val pass: `total` samples, predicted
 * by `world` senders.  Each sample id in [0, total) must arrive exactly
 * once: a duplicate or out-of-range id is an error naming it, and the
 * result is refused while samples are missing (the error names the first
 * missing ids and how many there are).  The pass is complete once every
 * sender has said `final` and every id has arrived.  Top-k counts a sample
 * as correct when its label is among its first min(k, width) predictions.
 *
 * Thread safety: an eq_classify belongs to one thread at a time.
 */
#ifndef EQ_EVAL_CLASSIFY_H
#define EQ_EVAL_CLASSIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

typedef struct eq_classify eq_classify;

/* total >= 1 samples, world >= 1 senders.  Caller owns the result. */
eq_classify *eq_classify_new(uint64_t total, uint32_t world, eq_err *err);
void eq_classify_destroy(eq_classify **self_p);

/* Add n predictions: ids[i] in [0, total), labels[i], and topk[i*width ..
 * i*width+width) the predicted classes by decreasing score (width >= 1).
 * EQ_ERR_INVALID naming the first bad id (out of range, already seen --
 * also within this call) and the sender rank; on error nothing of the call
 * is counted.  Not allowed after `rank` said final (EQ_ERR_INVALID). */
eq_status eq_classify_add(eq_classify *self, uint32_t rank, size_t n, const int64_t *ids, const int32_t *labels,
                          const int32_t *topk, int width, eq_err *err);

/* Sender `rank` has sent everything.  EQ_ERR_INVALID for a rank outside
 * [0, world) or a second final from the same rank. */
eq_status eq_classify_final(eq_classify *self, uint32_t rank, eq_err *err);

/* Every sender said final. */
bool eq_classify_done(const eq_classify *self);

typedef struct eq_classify_result {
    uint64_t samples; /* = total */
    uint64_t correct1, correct5;
    double top1, top5; /* percent */
} eq_classify_result;

/* The result once every sample has arrived; EQ_ERR_INVALID naming up to
 * eight missing ids and the count otherwise. */
eq_status eq_classify_result_get(const eq_classify *self, eq_classify_result *r, eq_err *err);

/* Samples received so far. */
uint64_t eq_classify_received(const eq_classify *self);

/* `eq-eval serve [options]`: the daemon (evaluator/eval_daemon.c).  PULLs
 * PRED messages, per (job, epoch) reports Top-1/Top-5 to a JSONL file, a
 * PUB socket (METRICS kind "eval") and the log; a control socket answers
 * "status" and "stop".  argv[0] is "serve".  Returns the exit status. */
int eq_eval_serve_main(int argc, char **argv);

#endif
