/* fuzz/fuzz_coco.c -- arbitrary ground truth and results into the COCO
 * loaders and evaluation, and arbitrary bytes into the RLE string decoder:
 * must never crash, read out of bounds or leak.
 *
 * Input: byte 0 picks the iou type (bbox, segm, keypoints); the rest is
 * "GT JSON \0 results JSON".  Images larger than 512x512 are skipped so a
 * single input stays within the fuzzer's memory limit. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "evaluator/coco_internal.h"
#include "evaluator/mask.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    eq_coco_iou type = (eq_coco_iou)(data[0] % 3);
    const char *text = (const char *)data + 1;
    size_t n = size - 1;
    const char *sep = memchr(text, 0, n);
    size_t ng = sep ? (size_t)(sep - text) : n;
    const char *dt_text = sep ? sep + 1 : "";
    size_t nd = sep ? n - ng - 1 : 0;

    /* the string decoder on the results text */
    eq_rle r;
    if (eq_rle_fr_string(dt_text, nd, 7, 9, &r, NULL) == EQ_OK) {
        if (eq_rle_check(&r, NULL) == EQ_OK) {
            uint8_t m[63];
            if (eq_rle_decode(&r, m, NULL) != EQ_OK) __builtin_trap();
            double bb[4];
            eq_rle_to_bbox(&r, bb);
            char *s = eq_rle_to_string(&r, NULL);
            free(s);
        }
        eq_rle_free(&r);
    }

    eq_err err;
    eq_json_doc *g = eq_json_parse(text, ng, NULL, &err);
    eq_json_doc *d = eq_json_parse(dt_text, nd, NULL, &err);
    eq_coco *gt = NULL, *dt = NULL;
    eq_coco_eval *e = NULL;
    if (!g || !d) goto done;
    if (eq_coco_load_gt_json(eq_json_root(g), "gt", &gt, &err) != EQ_OK) goto done;
    for (size_t i = 0; i < gt->n_img; i++)
        if (gt->img_h[i] > 512 || gt->img_w[i] > 512) goto done;
    if (eq_coco_load_res_json(gt, eq_json_root(d), "dt", &dt, &err) != EQ_OK) goto done;
    for (size_t i = 0; i < dt->n_ann; i++)
        if (dt->anns[i].seg_h > 512 || dt->anns[i].seg_w > 512) goto done;
    for (size_t i = 0; i < gt->n_ann; i++)
        if (gt->anns[i].seg_h > 512 || gt->anns[i].seg_w > 512) goto done;
    eq_coco_params p;
    memset(&p, 0, sizeof p);
    p.iou_type = type;
    p.threads = 1;
    if (eq_coco_evaluate(gt, dt, &p, &e, &err) == EQ_OK) {
        for (size_t i = 0; i < e->n_stats; i++)
            if (!(e->stats[i] == -1 || (e->stats[i] >= 0 && e->stats[i] <= 1))) __builtin_trap();
        char line[256];
        for (size_t i = 0; i < e->n_stats; i++) eq_coco_summary_line(e, i, line, sizeof line);
    }
done:
    eq_coco_eval_destroy(&e);
    eq_coco_destroy(&gt);
    eq_coco_destroy(&dt);
    eq_json_doc_destroy(&g);
    eq_json_doc_destroy(&d);
    return 0;
}
