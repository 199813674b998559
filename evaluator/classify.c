/*
 * evaluator/classify.c -- Top-1/Top-5 with exact sample accounting: one
 * bit per sample id, so duplicates and missing samples are named exactly.
 */
#include "evaluator/classify.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct eq_classify {
    uint64_t total;
    uint32_t world;
    uint64_t *seen;  /* bit per id */
    uint8_t *final;  /* per rank */
    uint32_t nfinal;
    uint64_t received, correct1, correct5;
};

eq_classify *eq_classify_new(uint64_t total, uint32_t world, eq_err *err)
{
    if (total < 1 || total > ((uint64_t)1 << 40) || world < 1 || world > 65536) {
        eq_err_set(err, EQ_ERR_INVALID, "classify: total %" PRIu64 " or world %u out of range", total, world);
        return NULL;
    }
    eq_classify *c = calloc(1, sizeof *c);
    if (c) {
        c->seen = calloc((size_t)((total + 63) / 64), sizeof(uint64_t));
        c->final = calloc(world, 1);
    }
    if (!c || !c->seen || !c->final) {
        eq_classify_destroy(&c);
        eq_err_set(err, EQ_ERR_NOMEM, "classify: out of memory for %" PRIu64 " samples", total);
        return NULL;
    }
    c->total = total;
    c->world = world;
    return c;
}

void eq_classify_destroy(eq_classify **self_p)
{
    if (!self_p || !*self_p) return;
    free((*self_p)->seen);
    free((*self_p)->final);
    free(*self_p);
    *self_p = NULL;
}

static bool s_seen(const eq_classify *c, uint64_t id) { return (c->seen[id >> 6] >> (id & 63)) & 1; }

eq_status eq_classify_add(eq_classify *c, uint32_t rank, size_t n, const int64_t *ids, const int32_t *labels,
                          const int32_t *topk, int width, eq_err *err)
{
    if (rank >= c->world) return eq_err_set(err, EQ_ERR_INVALID, "rank %u not below world %u", rank, c->world);
    if (c->final[rank])
        return eq_err_set(err, EQ_ERR_INVALID, "rank %u sent predictions after its final message", rank);
    if (width < 1) return eq_err_set(err, EQ_ERR_INVALID, "top-k width %d", width);
    size_t i;
    eq_status st = EQ_OK;
    /* Mark as we go; undo on error so that nothing of this call counts. */
    for (i = 0; i < n; i++) {
        int64_t id = ids[i];
        if (id < 0 || (uint64_t)id >= c->total) {
            st = eq_err_set(err, EQ_ERR_INVALID, "sample %" PRId64 " from rank %u: outside [0, %" PRIu64 ")", id,
                            rank, c->total);
            break;
        }
        if (s_seen(c, (uint64_t)id)) {
            st = eq_err_set(err, EQ_ERR_INVALID, "sample %" PRId64 " from rank %u: duplicated (already received)",
                            id, rank);
            break;
        }
        c->seen[(uint64_t)id >> 6] |= (uint64_t)1 << (id & 63);
    }
    if (st) {
        while (i-- > 0) c->seen[(uint64_t)ids[i] >> 6] &= ~((uint64_t)1 << (ids[i] & 63));
        return st;
    }
    int k5 = width < 5 ? width : 5;
    for (i = 0; i < n; i++) {
        const int32_t *p = topk + i * (size_t)width;
        if (p[0] == labels[i]) c->correct1++;
        for (int j = 0; j < k5; j++)
            if (p[j] == labels[i]) {
                c->correct5++;
                break;
            }
    }
    c->received += n;
    return EQ_OK;
}

eq_status eq_classify_final(eq_classify *c, uint32_t rank, eq_err *err)
{
    if (rank >= c->world) return eq_err_set(err, EQ_ERR_INVALID, "rank %u not below world %u", rank, c->world);
    if (c->final[rank]) return eq_err_set(err, EQ_ERR_INVALID, "rank %u sent its final message twice", rank);
    c->final[rank] = 1;
    c->nfinal++;
    return EQ_OK;
}

bool eq_classify_done(const eq_classify *c) { return c->nfinal == c->world; }

uint64_t eq_classify_received(const eq_classify *c) { return c->received; }

eq_status eq_classify_result_get(const eq_classify *c, eq_classify_result *r, eq_err *err)
{
    if (c->received != c->total) {
        char list[256] = "";
        size_t len = 0;
        int shown = 0;
        for (uint64_t id = 0; id < c->total && shown < 8; id++) {
            if (s_seen(c, id)) continue;
            int w = snprintf(list + len, sizeof list - len, "%s%" PRIu64, shown ? ", " : "", id);
            if (w < 0 || (size_t)w >= sizeof list - len) break;
            len += (size_t)w;
            shown++;
        }
        return eq_err_set(err, EQ_ERR_INVALID, "%" PRIu64 " of %" PRIu64 " samples missing (first: %s%s)",
                          c->total - c->received, c->total, list, c->total - c->received > (uint64_t)shown ? ", ..." : "");
    }
    r->samples = c->total;
    r->correct1 = c->correct1;
    r->correct5 = c->correct5;
    r->top1 = 100.0 * (double)c->correct1 / (double)c->total;
    r->top5 = 100.0 * (double)c->correct5 / (double)c->total;
    return EQ_OK;
}
