/*
 * proto/det.c -- detection batches and the JOB_OK class mapping; see det.h.
 */
#include "proto/det.h"

#include <inttypes.h>
#include <math.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "proto/mpread.h"

int eq_proto_det_is(const eq_msg *m)
{
    return m->type == EQ_MSG_BATCH && eq_proto_find_frame(m, "boxes") >= 0;
}

static eq_status s_frame(const eq_msg *m, const char *name, eq_dtype dt, int ndim, int64_t d0, int64_t d1, int *idx,
                         eq_err *err)
{
    int i = eq_proto_find_frame(m, name);
    *idx = i;
    if (i < 0) return eq_err_set(err, EQ_ERR_PROTO, "BATCH (detection): missing frame '%s'", name);
    const eq_proto_frame_desc *f = &m->frames[i];
    if (f->dtype != dt || f->ndim != ndim || f->shape[0] != d0 || (ndim == 2 && f->shape[1] != d1))
        return eq_err_set(err, EQ_ERR_PROTO,
                          "BATCH (detection): frame '%s': %s rank %d [%" PRId64 "%s], expected %s [%" PRId64 "%s]", name,
                          eq_dtype_name(f->dtype), f->ndim, f->shape[0], f->ndim == 2 ? ", ..." : "", eq_dtype_name(dt),
                          d0, ndim == 2 ? ", ..." : "");
    return EQ_OK;
}


/* Pixels described by an RLE of varints, or UINT64_MAX if malformed. */
static uint64_t s_rle_pixels(const uint8_t *d, size_t len)
{
    uint64_t total = 0;
    size_t i = 0;
    while (i < len) {
        uint64_t v = 0;
        int shift = 0;
        for (;;) {
            if (i >= len || shift > 56) return UINT64_MAX;
            uint8_t b = d[i++];
            v |= (uint64_t)(b & 0x7f) << shift;
            shift += 7;
            if (!(b & 0x80)) break;
        }
        if (v > (UINT64_MAX >> 1) - total) return UINT64_MAX;
        total += v;
    }
    return total;
}

eq_status eq_proto_det_check(const eq_msg *m, const void *const *fr, const size_t *sizes, uint32_t nclasses,
                             eq_det_view *v, eq_err *err)
{
    memset(v, 0, sizeof *v);
    if (m->type != EQ_MSG_BATCH) return eq_err_set(err, EQ_ERR_PROTO, "%s: not a BATCH", eq_msg_type_name(m->type));
    for (uint32_t i = 0; i < m->nframes; i++)
        if (sizes[i] != m->frames[i].nbytes)
            return eq_err_set(err, EQ_ERR_PROTO, "BATCH (detection): frame '%s' holds %zu bytes, expected %" PRIu64,
                              m->frames[i].name, sizes[i], m->frames[i].nbytes);
    int64_t n = m->u.batch.count;
    eq_status st;
    v->n = (uint32_t)n;
    if ((st = s_frame(m, "images", EQ_DT_U8, 4, n, 0, &v->images, err))) return st;
    const eq_proto_frame_desc *im = &m->frames[v->images];
    if (im->shape[3] != 3) return eq_err_set(err, EQ_ERR_PROTO, "BATCH (detection): frame 'images': not 3 channels");
    v->H = (uint32_t)im->shape[1];
    v->W = (uint32_t)im->shape[2];
    if ((st = s_frame(m, "labels", EQ_DT_I64, 1, n, 0, &v->image_ids, err)) ||
        (st = s_frame(m, "sizes", EQ_DT_I32, 2, n, 2, &v->sizes, err)) ||
        (st = s_frame(m, "scales", EQ_DT_F32, 2, n, 2, &v->scales, err)) ||
        (st = s_frame(m, "flipped", EQ_DT_U8, 1, n, 0, &v->flipped, err)) ||
        (st = s_frame(m, "dropped", EQ_DT_I32, 1, n, 0, &v->dropped, err)) ||
        (st = s_frame(m, "box_offsets", EQ_DT_I32, 1, n + 1, 0, &v->box_off, err)))
        return st;
    int bi = eq_proto_find_frame(m, "boxes");
    if (bi < 0) return eq_err_set(err, EQ_ERR_PROTO, "BATCH (detection): missing frame 'boxes'");
    int64_t nbox = m->frames[bi].shape[0];
    if (nbox < 0 || nbox > EQ_DET_MAX_BOXES)
        return eq_err_set(err, EQ_ERR_LIMIT, "BATCH (detection): %" PRId64 " boxes, at most %u", nbox, EQ_DET_MAX_BOXES);
    v->nbox = (uint32_t)nbox;
    if ((st = s_frame(m, "boxes", EQ_DT_F32, 2, nbox, 4, &v->boxes, err)) ||
        (st = s_frame(m, "classes", EQ_DT_I32, 1, nbox, 0, &v->classes, err)) ||
        (st = s_frame(m, "crowd", EQ_DT_U8, 1, nbox, 0, &v->crowd, err)))
        return st;
    for (int64_t i = 0; i < n; i++) {
        int32_t h = eq_det_i32(fr[v->sizes], 2 * (size_t)i), w = eq_det_i32(fr[v->sizes], 2 * (size_t)i + 1);
        if (h < 1 || w < 1 || (uint32_t)h > v->H || (uint32_t)w > v->W)
            return eq_err_set(err, EQ_ERR_PROTO, "BATCH (detection): sizes[%" PRId64 "] = %dx%d outside the padded %ux%u",
                              i, h, w, v->H, v->W);
        float sy = eq_det_f32(fr[v->scales], 2 * (size_t)i), sx = eq_det_f32(fr[v->scales], 2 * (size_t)i + 1);
        if (!(sy > 0 && sx > 0 && isfinite(sy) && isfinite(sx)))
            return eq_err_set(err, EQ_ERR_PROTO, "BATCH (detection): scales[%" PRId64 "] not finite and positive", i);
        if (((const uint8_t *)fr[v->flipped])[i] > 1)
            return eq_err_set(err, EQ_ERR_PROTO, "BATCH (detection): flipped[%" PRId64 "] not 0 or 1", i);
        if (eq_det_i32(fr[v->dropped], (size_t)i) < 0)
            return eq_err_set(err, EQ_ERR_PROTO, "BATCH (detection): dropped[%" PRId64 "] negative", i);
    }
    for (int64_t i = 0; i <= n; i++) {
        int32_t o = eq_det_i32(fr[v->box_off], (size_t)i);
        int32_t prev = i ? eq_det_i32(fr[v->box_off], (size_t)i - 1) : 0;
        if (o < prev || o > nbox || (i == 0 && o != 0) || (i == n && o != nbox))
            return eq_err_set(err, EQ_ERR_PROTO,
                              "BATCH (detection): box_offsets[%" PRId64 "] = %d (must start at 0, not decrease, end at %" PRId64
                              ")",
                              i, o, nbox);
    }
    for (int64_t k = 0; k < nbox; k++) {
        for (int q = 0; q < 4; q++)
            if (!isfinite(eq_det_f32(fr[v->boxes], 4 * (size_t)k + q)))
                return eq_err_set(err, EQ_ERR_PROTO, "BATCH (detection): boxes[%" PRId64 "] not finite", k);
        int32_t c = eq_det_i32(fr[v->classes], (size_t)k);
        if (c < 0 || (nclasses && (uint32_t)c >= nclasses))
            return eq_err_set(err, EQ_ERR_PROTO, "BATCH (detection): classes[%" PRId64 "] = %d outside [0, %u)", k, c,
                              nclasses);
        if (((const uint8_t *)fr[v->crowd])[k] > 1)
            return eq_err_set(err, EQ_ERR_PROTO, "BATCH (detection): crowd[%" PRId64 "] not 0 or 1", k);
    }
    int have = (eq_proto_find_frame(m, "mask_kind") >= 0) + (eq_proto_find_frame(m, "mask_rects") >= 0) +
               (eq_proto_find_frame(m, "mask_offsets") >= 0) + (eq_proto_find_frame(m, "mask_data") >= 0);
    v->mask_kind = v->mask_rects = v->mask_off = v->mask_data = -1;
    if (have == 0) return EQ_OK;
    if (have != 4)
        return eq_err_set(err, EQ_ERR_PROTO,
                          "BATCH (detection): mask frames come as four (mask_kind, mask_rects, mask_offsets, mask_data)");
    v->masks = 1;
    int di = eq_proto_find_frame(m, "mask_data");
    int64_t bytes = m->frames[di].shape[0];
    if ((st = s_frame(m, "mask_kind", EQ_DT_U8, 1, nbox, 0, &v->mask_kind, err)) ||
        (st = s_frame(m, "mask_rects", EQ_DT_I32, 2, nbox, 4, &v->mask_rects, err)) ||
        (st = s_frame(m, "mask_offsets", EQ_DT_I64, 1, nbox + 1, 0, &v->mask_off, err)) ||
        (st = s_frame(m, "mask_data", EQ_DT_U8, 1, bytes, 0, &v->mask_data, err)))
        return st;
    v->mask_bytes = (uint64_t)bytes;
    const uint8_t *md = fr[v->mask_data];
    for (int64_t i = 0; i < n; i++) {
        int32_t h = eq_det_i32(fr[v->sizes], 2 * (size_t)i), w = eq_det_i32(fr[v->sizes], 2 * (size_t)i + 1);
        for (int32_t k = eq_det_i32(fr[v->box_off], (size_t)i); k < eq_det_i32(fr[v->box_off], (size_t)i + 1); k++) {
            int32_t rx = eq_det_i32(fr[v->mask_rects], 4 * (size_t)k), ry = eq_det_i32(fr[v->mask_rects], 4 * (size_t)k + 1);
            int32_t rw = eq_det_i32(fr[v->mask_rects], 4 * (size_t)k + 2), rh = eq_det_i32(fr[v->mask_rects], 4 * (size_t)k + 3);
            if (rx < 0 || ry < 0 || rw < 1 || rh < 1 || rw > w - rx || rh > h - ry)
                return eq_err_set(err, EQ_ERR_PROTO,
                                  "BATCH (detection): mask_rects[%d] = %d,%d %dx%d outside image %" PRId64 " (%dx%d)", k,
                                  rx, ry, rw, rh, i, w, h);
            int64_t o0 = eq_det_i64(fr[v->mask_off], (size_t)k), o1 = eq_det_i64(fr[v->mask_off], (size_t)k + 1);
            if ((k == 0 && o0 != 0) || o1 < o0 || o1 > bytes)
                return eq_err_set(err, EQ_ERR_PROTO, "BATCH (detection): mask_offsets[%d..%d] = %" PRId64 "..%" PRId64
                                                     " not a range of the %" PRId64 " bytes",
                                  k, k + 1, o0, o1, bytes);
            uint8_t kind = ((const uint8_t *)fr[v->mask_kind])[k];
            uint64_t px = (uint64_t)rw * (uint64_t)rh, len = (uint64_t)(o1 - o0);
            int ok = kind == 0 ? len == 0
                   : kind == 1 ? len == (px + 7) / 8
                   : kind == 2 ? s_rle_pixels(md + o0, (size_t)len) == px
                               : 0;
            if (!ok)
                return eq_err_set(err, EQ_ERR_PROTO,
                                  "BATCH (detection): mask %d (kind %u, %" PRIu64 " bytes) does not describe %dx%d pixels",
                                  k, kind, len, rw, rh);
        }
    }
    if (nbox && eq_det_i64(fr[v->mask_off], (size_t)nbox) != bytes)
        return eq_err_set(err, EQ_ERR_PROTO, "BATCH (detection): mask_offsets end at %" PRId64 ", mask_data holds %" PRId64,
                          eq_det_i64(fr[v->mask_off], (size_t)nbox), bytes);
    if (!nbox && bytes)
        return eq_err_set(err, EQ_ERR_PROTO, "BATCH (detection): mask_data holds bytes but there is no box");
    return EQ_OK;
}

/* ---------------------------------------------------------------- JOB_OK */

static int s_pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    return msgpack_pack_str_with_body(pk, s, n);
}

eq_status eq_proto_det_job_ok_encode(const eq_msg *m, const int64_t *cat_ids, const char *const *names, uint32_t n,
                                     uint8_t **out, size_t *out_len, eq_err *err)
{
    *out = NULL;
    *out_len = 0;
    if (m->type != EQ_MSG_JOB_OK || n > EQ_DET_MAX_CLASSES)
        return eq_err_set(err, EQ_ERR_INVALID, "JOB_OK (detection): not a JOB_OK or %u classes (at most %d)", n,
                          EQ_DET_MAX_CLASSES);
    uint8_t *h = NULL;
    size_t hl = 0;
    eq_status st = eq_proto_encode(m, &h, &hl, err);
    if (st) return st;
    uint32_t cnt;
    size_t skip;
    if (hl >= 1 && (h[0] & 0xf0) == 0x80) {
        cnt = h[0] & 0x0f;
        skip = 1;
    } else if (hl >= 3 && h[0] == 0xde) {
        cnt = (uint32_t)h[1] << 8 | h[2];
        skip = 3;
    } else {
        free(h);
        return eq_err_set(err, EQ_ERR_INTERNAL, "JOB_OK (detection): encoded header is not a map");
    }
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    int rc = msgpack_pack_map(&pk, cnt + 2);
    rc |= msgpack_sbuffer_write(&sb, (const char *)h + skip, hl - skip);
    free(h);
    rc |= s_pack_str(&pk, "categories") | msgpack_pack_array(&pk, n);
    for (uint32_t k = 0; k < n; k++) rc |= msgpack_pack_int64(&pk, cat_ids[k]);
    rc |= s_pack_str(&pk, "category_names") | msgpack_pack_array(&pk, n);
    for (uint32_t k = 0; k < n; k++) {
        const char *s = names && names[k] ? names[k] : "";
        size_t l = strlen(s);
        if (l >= EQ_DET_CLASS_NAME_CAP) l = EQ_DET_CLASS_NAME_CAP - 1;
        rc |= msgpack_pack_str_with_body(&pk, s, l);
    }
    if (rc) {
        msgpack_sbuffer_destroy(&sb);
        return eq_err_set(err, EQ_ERR_NOMEM, "JOB_OK (detection): out of memory while encoding");
    }
    *out = (uint8_t *)sb.data;
    *out_len = sb.size;
    return EQ_OK;
}

eq_status eq_proto_det_job_ok_classes(const void *hdr, size_t len, int64_t *ids, char (*names)[EQ_DET_CLASS_NAME_CAP],
                                      uint32_t cap, uint32_t *n, eq_err *err)
{
    *n = 0;
    eq_mp_reader r;
    eq_mp_item it;
    eq_mp_reader_init(&r, hdr, len);
    if (eq_mp_next(&r, &it) != EQ_MP_OK || it.kind != EQ_MP_MAP)
        return eq_err_set(err, EQ_ERR_PROTO, "JOB_OK: header is not a map");
    uint32_t nent = it.v.n, nids = 0, nnames = 0;
    int have_names = 0;
    for (uint32_t e = 0; e < nent; e++) {
        eq_mp_item key;
        if (eq_mp_next(&r, &key) != EQ_MP_OK) return eq_err_set(err, EQ_ERR_PROTO, "JOB_OK: truncated header");
        int is_ids = key.kind == EQ_MP_STR && key.v.s.len == 10 && !memcmp(key.v.s.ptr, "categories", 10);
        int is_names = key.kind == EQ_MP_STR && key.v.s.len == 14 && !memcmp(key.v.s.ptr, "category_names", 14);
        if (!is_ids && !is_names) {
            if (eq_mp_skip(&r, 8) != EQ_MP_OK) return eq_err_set(err, EQ_ERR_PROTO, "JOB_OK: bad value in header");
            continue;
        }
        const char *what = is_ids ? "categories" : "category_names";
        if (eq_mp_next(&r, &it) != EQ_MP_OK || it.kind != EQ_MP_ARRAY)
            return eq_err_set(err, EQ_ERR_PROTO, "JOB_OK: field '%s' is not an array", what);
        if (it.v.n > cap || it.v.n > EQ_DET_MAX_CLASSES)
            return eq_err_set(err, EQ_ERR_LIMIT, "JOB_OK: field '%s': %u entries, at most %u", what, it.v.n,
                              cap < EQ_DET_MAX_CLASSES ? cap : EQ_DET_MAX_CLASSES);
        uint32_t cnt = it.v.n;
        for (uint32_t k = 0; k < cnt; k++) {
            eq_mp_item el;
            if (eq_mp_next(&r, &el) != EQ_MP_OK) return eq_err_set(err, EQ_ERR_PROTO, "JOB_OK: field '%s' truncated", what);
            if (is_ids) {
                if (el.kind == EQ_MP_UINT && el.v.u <= INT64_MAX)
                    ids[k] = (int64_t)el.v.u;
                else if (el.kind == EQ_MP_INT)
                    ids[k] = el.v.i;
                else
                    return eq_err_set(err, EQ_ERR_PROTO, "JOB_OK: field 'categories[%u]' is not an integer", k);
            } else {
                if (el.kind != EQ_MP_STR)
                    return eq_err_set(err, EQ_ERR_PROTO, "JOB_OK: field 'category_names[%u]' is not a string", k);
                if (names) {
                    size_t l = el.v.s.len < EQ_DET_CLASS_NAME_CAP - 1 ? el.v.s.len : EQ_DET_CLASS_NAME_CAP - 1;
                    memcpy(names[k], el.v.s.ptr, l);
                    names[k][l] = 0;
                }
            }
        }
        if (is_ids)
            nids = cnt;
        else {
            nnames = cnt;
            have_names = 1;
        }
    }
    if (have_names && nnames != nids)
        return eq_err_set(err, EQ_ERR_PROTO, "JOB_OK: %u category_names for %u categories", nnames, nids);
    if (names && !have_names)
        for (uint32_t k = 0; k < nids; k++) names[k][0] = 0;
    *n = nids;
    return EQ_OK;
}
