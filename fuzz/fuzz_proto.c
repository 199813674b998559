/*
 * fuzz/fuzz_proto.c -- libFuzzer target for the wire decoder.
 *
 * The input is split into parts at each occurrence of the 4-byte separator
 * "\xfe\xfeEQ" (part 0 is the header, the others payload frames); the whole
 * input is also decoded as one header.  Limits are fixed and small.  Every
 * message that decodes is re-encoded and decoded again: the result must be
 * accepted and equal in type, request id and frames (the encoder and the
 * decoder agree on what is valid).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

#define SEP "\xfe\xfe" "EQ"
#define MAX_PARTS 24

static void s_check_reencode(const eq_msg *m, const eq_proto_limits *lim)
{
    uint8_t *buf;
    size_t len;
    eq_err e;
    if (eq_proto_encode(m, &buf, &len, &e) != EQ_OK) abort(); /* decoded => valid => encodable */
    eq_msg m2;
    if (eq_proto_decode_header(&m2, buf, len, NULL, &e) != EQ_OK) abort();
    if (m2.type != m->type || m2.has_req != m->has_req || m2.req != m->req || m2.nframes != m->nframes) abort();
    for (uint32_t i = 0; i < m->nframes; i++)
        if (m2.frames[i].nbytes != m->frames[i].nbytes || strcmp(m2.frames[i].name, m->frames[i].name)) abort();
    if (len > lim->max_header_bytes * 2 + 64) abort(); /* canonical form is never much larger */
    eq_proto_msg_reset(&m2);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    eq_proto_limits lim;
    eq_proto_limits_default(&lim);
    lim.max_header_bytes = 4096;
    lim.max_frames = 8;
    lim.max_frame_bytes = 1 << 16;
    lim.max_str_len = 255;
    lim.max_list_len = 1024;
    lim.max_map_len = 32;
    lim.max_depth = 6;

    eq_msg m;
    eq_err e;
    if (eq_proto_decode_header(&m, data, size, &lim, &e) == EQ_OK) s_check_reencode(&m, &lim);
    eq_proto_msg_reset(&m);

    const void *parts[MAX_PARTS];
    size_t sizes[MAX_PARTS], n = 0, start = 0;
    for (size_t i = 0; n < MAX_PARTS - 1 && i + 4 <= size; i++)
        if (memcmp(data + i, SEP, 4) == 0) {
            parts[n] = data + start;
            sizes[n++] = i - start;
            start = i + 4;
            i += 3;
        }
    parts[n] = data + start;
    sizes[n++] = size - start;
    if (eq_proto_decode(&m, n, parts, sizes, &lim, &e) == EQ_OK) {
        if (m.nframes != n - 1) abort();
        s_check_reencode(&m, &lim);
    }
    eq_proto_msg_reset(&m);
    return 0;
}
