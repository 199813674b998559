/*
 * proto/proto.h -- eq's wire messages: catalogue, encode, strict decode.
 *
 * A message is a ZeroMQ multipart message: frame 0 is a MessagePack map
 * (the header) that always carries `v` (protocol version) and `t` (message
 * type); the following frames are raw little-endian arrays described by the
 * header's `frames` list (name, dtype, shape).  doc/protocol.md is the
 * reference for every field; this header is the C view of it.
 *
 * Decoding never trusts the peer: the header is read with a bounded reader
 * (no allocation sized by a declared count beyond the input's own size),
 * every known key is type- and range-checked, required keys must be
 * present, unknown keys are skipped (forward compatibility), and the frame
 * list is checked against eq_proto_limits.  Every error message names the
 * message type and the field.  Encoding validates with the same rules, so
 * eq never sends what it would refuse.
 *
 * This header does not depend on ZeroMQ; proto/proto_zmq.h adds the socket
 * side.  Adding a message type = one struct below + one entry in the union
 * + one field table (and optionally a validate function) in proto.c.
 *
 * Thread safety: all functions are reentrant; an eq_msg belongs to one
 * thread at a time.
 */
#ifndef EQ_PROTO_H
#define EQ_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "core/tensor.h"

/* The protocol version this build speaks (and the only one it accepts). */
#define EQ_PROTO_VERSION 1

/* Compile-time capacities of the decoded structs (bytes incl. the NUL for
 * strings).  The runtime limits in eq_proto_limits may only be smaller. */
#define EQ_PROTO_MAX_FRAMES 16     /* payload frames per message */
#define EQ_PROTO_NAME_CAP 64       /* names: dataset, split, frame, peer, keys */
#define EQ_PROTO_ID_CAP 65         /* job ids, hashes */
#define EQ_PROTO_TEXT_CAP 256      /* software version, fingerprints, strings in transforms */
#define EQ_PROTO_MSG_CAP 512       /* ERROR message text */
#define EQ_PROTO_MAX_VERSIONS 16   /* HELLO/ERROR `versions` */
#define EQ_PROTO_MAX_CAPS 32       /* HELLO `caps` */
#define EQ_PROTO_MAX_TRANSFORMS 32 /* JOB `transforms` entries */

typedef struct eq_proto_limits {
    size_t max_header_bytes;  /* size of frame 0 */
    uint32_t max_frames;      /* payload frames (<= EQ_PROTO_MAX_FRAMES) */
    uint64_t max_frame_bytes; /* one payload frame */
    uint32_t max_str_len;     /* any string, in bytes (field capacities also apply) */
    uint32_t max_list_len;    /* elements of any array (e.g. BATCH `replaced`) */
    uint32_t max_map_len;     /* entries of any map, unknown keys included */
    uint32_t max_depth;       /* container nesting, the header map being level 1 */
} eq_proto_limits;

/* Defaults: 64 KiB header, 16 frames, 1 GiB per frame, 511-byte strings,
 * 65536-element lists, 64-entry maps, depth 8. */
void eq_proto_limits_default(eq_proto_limits *lim);

/* ---- message catalogue ------------------------------------------------- */

/* Append-only, like eq_status; the wire carries the names ("HELLO"...). */
typedef enum eq_msg_type {
    EQ_MSG_HELLO = 0,
    EQ_MSG_JOB,
    EQ_MSG_JOB_OK,
    EQ_MSG_BATCH_REQ,
    EQ_MSG_BATCH,
    EQ_MSG_ERROR,
    EQ_MSG_PRED,    /* trainer -> eq-eval: top-k predictions of val samples */
    EQ_MSG_METRICS, /* trainer, eq-eval -> PUB subscribers: progress and results */
    EQ_MSG_TYPE_COUNT
} eq_msg_type;

/* "HELLO", ...; "?" if invalid. */
const char *eq_msg_type_name(eq_msg_type t);
/* Exact, case-sensitive; 0 or -1. */
int eq_msg_type_parse(const char *name, size_t len, eq_msg_type *out);

/* HELLO (both directions): who is talking and what it speaks. */
typedef struct eq_msg_hello {
    char role[EQ_PROTO_NAME_CAP];      /* required: "trainer", "loader", "eval", "ctl" */
    char name[EQ_PROTO_NAME_CAP];      /* required: peer name (host:pid, rank...) */
    uint32_t versions[EQ_PROTO_MAX_VERSIONS]; /* required, >= 1 entry */
    uint32_t nversions;
    char software[EQ_PROTO_TEXT_CAP];  /* required: "eq 0.1.0" */
    char caps[EQ_PROTO_MAX_CAPS][EQ_PROTO_NAME_CAP]; /* optional capability names */
    uint32_t ncaps;
} eq_msg_hello;

/* What a loader does with the last partial global batch of an epoch. */
typedef enum eq_proto_last {
    EQ_PROTO_LAST_DROP = 0, /* "drop": fewer steps, every step full */
    EQ_PROTO_LAST_WRAP,     /* "wrap": fill from the start of the same order */
    EQ_PROTO_LAST_PARTIAL,  /* "partial": a short last step (val) */
    EQ_PROTO_LAST_COUNT
} eq_proto_last;

typedef enum eq_proto_val_type {
    EQ_PROTO_VAL_INT = 0,
    EQ_PROTO_VAL_FLOAT,
    EQ_PROTO_VAL_BOOL,
    EQ_PROTO_VAL_STR,
} eq_proto_val_type;

/* One typed transform parameter ("hflip" = 0.5, "rrc_scale_min" = 0.08). */
typedef struct eq_proto_kv {
    char key[EQ_PROTO_NAME_CAP];
    eq_proto_val_type type;
    int64_t i;
    double f;
    bool b;
    char s[EQ_PROTO_TEXT_CAP];
} eq_proto_kv;

/* JOB (trainer -> loader): the pipeline.  Its id is a hash of its content
 * (eq_proto_job_id), never sent by the trainer; the loader computes it. */
typedef struct eq_msg_job {
    char dataset[EQ_PROTO_NAME_CAP]; /* required: a dataset NAME the loader declares */
    char split[EQ_PROTO_NAME_CAP];   /* required: "train", "val" */
    uint64_t seed;                   /* required */
    uint32_t global_batch;           /* required: G, 1..2^24 */
    uint32_t height, width;          /* required: 1..65535 */
    uint32_t channels;               /* required: 1..16 */
    eq_proto_last last;              /* required: "drop" | "wrap" | "partial" */
    eq_proto_kv transforms[EQ_PROTO_MAX_TRANSFORMS]; /* optional; keys unique */
    uint32_t ntransforms;
    /* optional mixup/cutmix (timm's meaning); absent = the default shown */
    double mixup_alpha;       /* 0 (off) */
    double cutmix_alpha;      /* 0 (off) */
    double mix_prob;          /* 1 */
    double mix_switch_prob;   /* 0.5 */
    char mix_mode[EQ_PROTO_NAME_CAP]; /* "batch" | "pair" | "elem"; default
                                       * (also for "") "batch" */
} eq_msg_job;

/* JOB_OK (loader -> trainer). */
typedef struct eq_msg_job_ok {
    char job[EQ_PROTO_ID_CAP];        /* required: eq_proto_job_id of the JOB */
    uint64_t size;                    /* required: samples in the split */
    uint32_t classes;                 /* required */
    uint64_t data_count;              /* required: files counted for the fingerprint */
    char data_hash[EQ_PROTO_ID_CAP];  /* required */
    char pipeline[EQ_PROTO_TEXT_CAP]; /* required: library versions + decode options */
} eq_msg_job_ok;

/* BATCH_REQ (trainer -> loader): positions [step*G + offset, + count) of
 * the epoch's global order. */
typedef struct eq_msg_batch_req {
    char job[EQ_PROTO_ID_CAP]; /* required */
    uint64_t epoch, step;      /* required */
    uint32_t offset;           /* required */
    uint32_t count;            /* required, >= 1 */
    uint32_t deadline_ms;      /* optional, 0 = none: give up after this long */
} eq_msg_batch_req;

/* BATCH (loader -> trainer).  Frames: "images" U8 [count,H,W,C], "labels"
 * I32 or I64 [count], and with `mix`: "mix_index" I32 [count] (partner
 * position in this batch), "mix_lambda" F32 [count] (weight of the sample
 * itself).  The frame_* members are indices into eq_msg.frames, filled by
 * decode (and by encode's validation); -1 = absent. */
typedef struct eq_msg_batch {
    char job[EQ_PROTO_ID_CAP];
    uint64_t epoch, step;
    uint32_t offset, count;
    uint32_t *replaced;  /* optional: positions in [0,count) holding a substitute
                          * (source unreadable); strictly increasing.  Heap:
                          * owned by the eq_msg, freed by eq_proto_msg_reset */
    uint32_t nreplaced;
    char mix[EQ_PROTO_NAME_CAP]; /* optional: "" none, "mixup" (trainer blends
                                  * images and labels), "cutmix" (pasted; blend labels) */
    int frame_images, frame_labels, frame_mix_index, frame_mix_lambda;
} eq_msg_batch;

/* ERROR (either direction). */
typedef struct eq_msg_error {
    uint32_t code;                /* required: an eq_status value */
    char name[EQ_PROTO_NAME_CAP]; /* required: eq_status_str(code) ("version"...) */
    char message[EQ_PROTO_MSG_CAP]; /* required */
    uint32_t versions[EQ_PROTO_MAX_VERSIONS]; /* optional: supported versions
                                               * (sent with code EQ_ERR_VERSION) */
    uint32_t nversions;
} eq_msg_error;

/* Most predictions a PRED carries per sample (the `topk` frame's width). */
#define EQ_PROTO_MAX_TOPK 16

/* PRED (trainer -> eq-eval, PUSH/PULL): predictions for `count` samples of
 * the val pass `epoch`.  Frames: "ids" I64 [count] (the samples' dataset
 * indices, each in [0, total)), "labels" I32 [count] (true class), "topk"
 * I32 [count][k] (class indices by decreasing score, 1 <= k <=
 * EQ_PROTO_MAX_TOPK).  `total` is the val split's size, the same in every
 * PRED of an epoch; `final` = 1 says the sender has sent all its
 * predictions of the epoch (a final PRED may have count 0; it still carries
 * the three frames, with first dimension 0).  The frame_* members are
 * filled by decode (and encode's validation) as for BATCH. */
typedef struct eq_msg_pred {
    char job[EQ_PROTO_NAME_CAP];  /* required: run name (one eq-eval may serve several) */
    uint64_t epoch;               /* required */
    uint64_t total;               /* required: val samples in the epoch, >= 1 */
    uint32_t rank, world;         /* required: sender's rank in [0, world), world >= 1 */
    uint32_t count;               /* required: samples in this message (0 only with final) */
    uint32_t final;               /* optional, 0 or 1 (default 0) */
    int frame_ids, frame_labels, frame_topk;
} eq_msg_pred;

/* METRICS (PUB): one record of progress or results.  `kind` says which
 * optional numbers are meaningful: "train" (step progress: loss, lr, img_s,
 * wait_pct, eta_s), "epoch" (end of a train epoch: loss = epoch mean),
 * "eval" (eq-eval's result: top1, top5 in percent, samples), "done" (the
 * sender finished; status 0 ok or an eq_status code).  Unset numbers are
 * sent only when nonzero. */
typedef struct eq_msg_metrics {
    char job[EQ_PROTO_NAME_CAP];  /* required */
    char source[EQ_PROTO_NAME_CAP]; /* required: "trainer", "eval" */
    char kind[EQ_PROTO_NAME_CAP];   /* required: "train" | "epoch" | "eval" | "done" */
    uint64_t epoch, step;           /* required: step within the epoch (0-based) */
    uint64_t steps;                 /* optional: steps per epoch */
    uint64_t samples;               /* optional */
    uint32_t status;                /* optional: "done" */
    double loss, lr, img_s, wait_pct, eta_s, top1, top5, elapsed_s; /* optional, finite */
} eq_msg_metrics;

/* One payload frame as the header describes it. */
typedef struct eq_proto_frame_desc {
    char name[EQ_PROTO_NAME_CAP];
    eq_dtype dtype;
    int ndim;
    int64_t shape[EQ_TENSOR_MAX_DIMS];
    uint64_t nbytes; /* shape x dtype size, computed */
} eq_proto_frame_desc;

/* A decoded (or to-be-encoded) message. */
typedef struct eq_msg {
    eq_msg_type type;
    uint32_t version; /* as received; EQ_PROTO_VERSION after init */
    bool has_req;
    uint64_t req;     /* request id: unique per requester; replies echo it.
                       * Required in JOB, JOB_OK, BATCH_REQ, BATCH */
    uint32_t nframes;
    eq_proto_frame_desc frames[EQ_PROTO_MAX_FRAMES];
    union {
        eq_msg_hello hello;
        eq_msg_job job;
        eq_msg_job_ok job_ok;
        eq_msg_batch_req batch_req;
        eq_msg_batch batch;
        eq_msg_error error;
        eq_msg_pred pred;
        eq_msg_metrics metrics;
    } u;
} eq_msg;

/* Zero `m` and set type, version and the type's defaults. */
void eq_proto_msg_init(eq_msg *m, eq_msg_type type);
/* Free what the message owns (BATCH `replaced`) and zero it; NULL-safe. */
void eq_proto_msg_reset(eq_msg *m);

/* Append a frame description (for encoding).  EQ_ERR_LIMIT past
 * EQ_PROTO_MAX_FRAMES; EQ_ERR_INVALID for a bad dtype, ndim or shape. */
eq_status eq_proto_add_frame(eq_msg *m, const char *name, eq_dtype dtype, int ndim,
                             const int64_t *shape, eq_err *err);
/* Index of the frame called `name`, or -1. */
int eq_proto_find_frame(const eq_msg *m, const char *name);
/* BATCH: set `replaced` (copied; the message owns the copy). */
eq_status eq_proto_batch_set_replaced(eq_msg *m, const uint32_t *pos, uint32_t n, eq_err *err);

/* ---- encode / decode ---------------------------------------------------- */

/* Validate `m` (the rules decode applies) and encode its header.  On success
 * *out is a malloc'd buffer of *out_len bytes that the caller frees with
 * free().  Errors: EQ_ERR_INVALID (message fails validation, the text names
 * the type and field), EQ_ERR_NOMEM.  For BATCH, the frame_* members of
 * m->u.batch are ignored (recomputed from the frame names). */
eq_status eq_proto_encode(const eq_msg *m, uint8_t **out, size_t *out_len, eq_err *err);

/* Decode and validate a header (frame 0).  `lim` may be NULL (defaults).
 * On success `m` holds the message (reset it with eq_proto_msg_reset).  On
 * failure `m` is reset, except that m->type, m->version and m->has_req/req
 * keep what could be read (so the receiver can answer with an ERROR naming
 * the request): m->type is EQ_MSG_TYPE_COUNT when unknown.
 * Errors: EQ_ERR_PARSE (not MessagePack, not a map, truncated, trailing
 * bytes), EQ_ERR_VERSION (`v` is not EQ_PROTO_VERSION), EQ_ERR_UNSUPPORTED
 * (unknown `t`), EQ_ERR_PROTO (missing key, wrong type, value out of range,
 * duplicate key, unknown dtype, bad frame list), EQ_ERR_LIMIT (a size or
 * count over `lim` or a field's capacity, nesting too deep). */
eq_status eq_proto_decode_header(eq_msg *m, const void *hdr, size_t len, const eq_proto_limits *lim,
                                 eq_err *err);

/* Check the payload frames actually received against the decoded header:
 * their number equals m->nframes and frame i holds exactly
 * m->frames[i].nbytes bytes.  EQ_ERR_PROTO otherwise, naming the frame. */
eq_status eq_proto_check_frames(const eq_msg *m, size_t nframes, const size_t *sizes, eq_err *err);

/* Decode a whole multipart message held in memory: part 0 is the header,
 * parts 1.. the payload frames (eq_proto_decode_header +
 * eq_proto_check_frames; EQ_ERR_LIMIT for more than lim->max_frames). */
eq_status eq_proto_decode(eq_msg *m, size_t nparts, const void *const *parts, const size_t *sizes,
                          const eq_proto_limits *lim, eq_err *err);

/* ---- job ids and hashing ------------------------------------------------- */

#define EQ_PROTO_JOB_ID_LEN 16 /* hex digits */

/* 64-bit FNV-1a (not cryptographic): used for job ids. */
uint64_t eq_proto_hash64(const void *data, size_t len);

/* Job id of a JOB message: 16 lowercase hex digits of eq_proto_hash64 over
 * the canonical encoding of its content (every field but v, t and req, in
 * a fixed order, transforms sorted by key, optional fields equal to their
 * default omitted).  Equal jobs have equal ids whoever computes them; the
 * loader computes it from the decoded JOB and never trusts a peer's id.
 * `out` receives EQ_PROTO_JOB_ID_LEN + 1 bytes.  EQ_ERR_INVALID if `m` is
 * not a valid JOB. */
eq_status eq_proto_job_id(const eq_msg *m, char out[EQ_PROTO_ID_CAP], eq_err *err);

/* Fill `m` as an ERROR reply: code, its name, the message and, for
 * EQ_ERR_VERSION, the versions this build supports.  `req` echoes the
 * request when has_req. */
void eq_proto_make_error(eq_msg *m, bool has_req, uint64_t req, eq_status code, const char *message);

#endif
