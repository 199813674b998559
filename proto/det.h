/*
 * proto/det.h -- detection batches on the wire (COCO jobs): the frames of
 * a detection BATCH, their validation, and the class mapping carried by
 * the JOB_OK of a detection job.  doc/protocol.md ("Detection batches") is
 * the reference.
 *
 * A detection BATCH is a BATCH whose frames are:
 *   images        U8  [n, H, W, 3]  padded (zeros right and bottom)
 *   labels        I64 [n]           COCO image ids
 *   sizes         I32 [n, 2]        h, w of each image before padding
 *   scales        F32 [n, 2]        output / annotated size: y, x
 *   flipped       U8  [n]           0/1
 *   dropped       I32 [n]           degenerate boxes left out
 *   box_offsets   I32 [n + 1]       image i owns boxes [off[i], off[i+1])
 *   boxes         F32 [nbox, 4]     in the job's box format
 *   classes       I32 [nbox]        contiguous class indices
 *   crowd         U8  [nbox]        iscrowd
 * and, when the job asks for masks, all four of:
 *   mask_kind     U8  [nbox]        0 none, 1 bitmap, 2 RLE (loader/coco.h)
 *   mask_rects    I32 [nbox, 4]     x, y, w, h inside the unpadded image
 *   mask_offsets  I64 [nbox + 1]    byte ranges in mask_data
 *   mask_data     U8  [bytes]
 * The JOB_OK of a detection job carries two more header keys (skipped by
 * decoders that do not know them): "categories" (array of the category ids,
 * class k = categories[k]) and "category_names" (array of strings).
 *
 * The header codec itself (proto.c) knows nothing of these: the frames are
 * ordinary frames and the extra JOB_OK keys are appended to an encoded
 * header, so messages stay valid for every receiver.
 */
#ifndef EQ_PROTO_DET_H
#define EQ_PROTO_DET_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/status.h"
#include "proto/proto.h"

#define EQ_DET_MAX_CLASSES 4096
#define EQ_DET_CLASS_NAME_CAP 64
#define EQ_DET_MAX_BOXES (1u << 24)

/* Frame indices of a checked detection BATCH (-1: absent). */
typedef struct eq_det_view {
    uint32_t n, H, W, nbox;
    uint64_t mask_bytes;
    int masks;
    int images, image_ids, sizes, scales, flipped, dropped, box_off, boxes, classes, crowd;
    int mask_kind, mask_rects, mask_off, mask_data;
} eq_det_view;

/* 1 if the decoded BATCH header describes detection frames (has "boxes"). */
int eq_proto_det_is(const eq_msg *m);

/* Check a decoded BATCH and its payload frames (frames[i], sizes[i] for
 * i < m->nframes, unaligned bytes) as a detection batch: every frame above
 * present with its dtype and shape, offsets starting at 0, non-decreasing
 * and ending at the counts, sizes within the padded size, finite positive
 * scales, flags 0/1, finite boxes, classes in [0, nclasses) (nclasses 0:
 * unchecked), mask rectangles inside their image and every mask's bytes
 * describing exactly w * h pixels.  EQ_ERR_PROTO naming the frame and the
 * element otherwise.  Fills *v. */
eq_status eq_proto_det_check(const eq_msg *m, const void *const *frames, const size_t *sizes, uint32_t nclasses,
                             eq_det_view *v, eq_err *err);

/* Encode a JOB_OK header (eq_proto_encode) with "categories" and
 * "category_names" appended (n <= EQ_DET_MAX_CLASSES; names may be NULL).
 * *out is malloc'd (caller frees).  EQ_ERR_INVALID for a bad message or n. */
eq_status eq_proto_det_job_ok_encode(const eq_msg *m, const int64_t *cat_ids, const char *const *names, uint32_t n,
                                     uint8_t **out, size_t *out_len, eq_err *err);

/* Read "categories" / "category_names" from an encoded JOB_OK header
 * (bounded reader; the rest of the header is not checked here: decode it
 * with eq_proto_decode_header).  ids gets up to `cap` ids, names (may be
 * NULL) the names truncated to EQ_DET_CLASS_NAME_CAP - 1 bytes; *n the
 * count (0 when absent).  EQ_ERR_PROTO for wrong types, EQ_ERR_LIMIT past
 * cap or EQ_DET_MAX_CLASSES, names not matching ids in number. */
eq_status eq_proto_det_job_ok_classes(const void *hdr, size_t len, int64_t *ids,
                                      char (*names)[EQ_DET_CLASS_NAME_CAP], uint32_t cap, uint32_t *n, eq_err *err);


/* Element i of a detection frame's data, which a ZeroMQ message does not
 * align: read through memcpy.  For int32 (offsets, classes, sizes), float
 * (boxes, scales) and int64 (image ids) frames. */
static inline int32_t eq_det_i32(const void *p, size_t i)
{
    int32_t v;
    memcpy(&v, (const uint8_t *)p + 4 * i, 4);
    return v;
}
static inline float eq_det_f32(const void *p, size_t i)
{
    float v;
    memcpy(&v, (const uint8_t *)p + 4 * i, 4);
    return v;
}
static inline int64_t eq_det_i64(const void *p, size_t i)
{
    int64_t v;
    memcpy(&v, (const uint8_t *)p + 8 * i, 8);
    return v;
}

#endif
