/*
 * loader/server.h -- the serving half of eq-loader: declared datasets, the
 * JOB -> pipeline mapping, the [loader] and [data] config sections, and the
 * server object (ROUTER data socket, control socket, worker threads).
 *
 * The eq-loader program (loader/eq_loader_main.c) is a thin main() around
 * eq_loader_server; tests drive the same object over inproc sockets.
 *
 * Serving model (actor style, DESIGN.md "Daemons as actors"):
 *   - one main thread (eq_loader_server_run) owns every socket it polls:
 *     the data ROUTER, the control ROUTER, and an inproc PULL on which the
 *     other threads report; it answers HELLO and known JOBs itself,
 *     checks each BATCH_REQ (job known, range valid, bytes-in-flight
 *     budget), computes its dataset indices with the job's sampler and
 *     queues it;
 *   - one opener thread sets up new jobs (opening a dataset split may
 *     walk a million files) and hands them back; the JOB_OK goes out then,
 *     to every peer that asked for that job meanwhile;
 *   - N worker threads take samples from the queued requests a few at a
 *     time, round-robin across requests (so a large request does not hold
 *     up a small one), each with its own decoder; the worker that finishes
 *     a request's last sample hands it to the main thread over its own
 *     inproc PUSH socket;
 *   - the main thread sends the BATCH with the image and label buffers
 *     given to ZeroMQ without a copy (freed by ZeroMQ's callback).
 * Nothing a peer sends can stop the server: every malformed or refused
 * message is answered with an ERROR (or dropped and counted when it cannot
 * be answered), and the loop goes on.
 *
 * The control socket speaks plain text commands (one frame: "status" or
 * "stop") and answers one frame of JSON; doc/eq-loader.md documents it.
 */
#ifndef EQ_LOADER_SERVER_H
#define EQ_LOADER_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/status.h"
#include "loader/loader.h"
#include "proto/proto.h"

/* ======================================================================
 * Datasets by path
 * ====================================================================== */

/* Kind of the dataset at `path`, from what the directory holds:
 * train-/t10k-images-idx3-ubyte[.gz] -> EQ_DS_IDX; data_batch_1.bin or
 * test_batch.bin -> EQ_DS_CIFAR10; train.bin or test.bin -> EQ_DS_CIFAR100;
 * annotations/instances_{train,val}[2017].json -> EQ_DS_COCO;
 * any other directory -> EQ_DS_IMAGEFOLDER.  EQ_ERR_NOTFOUND (missing) or
 * EQ_ERR_INVALID (not a directory), naming the path. */
eq_status eq_loader_detect(const char *path, eq_ds_kind *kind, eq_err *err);

/* "idx", "cifar10", "cifar100", "imagefolder", "coco"; "?" if invalid. */
const char *eq_loader_kind_name(eq_ds_kind kind);

/* Open `split` of the dataset of `kind` at `path` ("train"; "val" or
 * "test" for IDX and CIFAR's test files; ImageFolder: the folder
 * path/split, walked with `nthreads`).  Caller owns the result. */
eq_dataset *eq_loader_open(const char *path, eq_ds_kind kind, const char *split, int nthreads,
                           eq_err *err);

/* ======================================================================
 * JOB <-> pipeline
 * ====================================================================== */

/* The pipeline a JOB asks for.  Starts from eq_pipeline_cfg_default(split,
 * height, global_batch, seed) with out_w = width, sampler.last from `last`,
 * then applies the JOB's `transforms`, each optional:
 *   aug        str   "none" | "rrc" | "center" | "padcrop"
 *   hflip      bool  random horizontal flip (rrc, padcrop)
 *   scale_min, scale_max, ratio_min, ratio_max   float (rrc)
 *   resize     int   shorter side before the centre crop (0 = size/0.875)
 *   pad        int   padcrop padding
 *   shuffle    bool  shuffle the epoch order (default: split == "train")
 *   dct_scale  bool or int  JPEG DCT-domain downscaling: false/0 off,
 *              true/1 power-of-two scales, 2 any M/8 (EQ_DCT_*)
 *   max_pixels int   decompression-bomb limit (0 = default)
 *   jitter_brightness, jitter_contrast, jitter_saturation  float (rrc)
 *   jitter_hue float (rrc) ColorJitter hue strength in [0, 0.5]
 *   mix_block  int   mixup/CutMix partners are drawn inside aligned blocks
 *              of this many positions (0 = the global batch); must
 *              divide global_batch
 * An unknown key, a value of the wrong type or out of range is
 * EQ_ERR_INVALID naming the key.  The JOB's mixup_alpha, cutmix_alpha,
 * mix_prob, mix_switch_prob go to cfg->mix; mix_mode "batch" (or "") is
 * batch_lambda = 1 (one decision per block), "elem" 0, "pair" is
 * EQ_ERR_UNSUPPORTED, and both alphas on with "elem" is EQ_ERR_UNSUPPORTED
 * (a BATCH carries one mix kind). */
eq_status eq_loader_job_pipeline(const eq_msg_job *job, eq_pipeline_cfg *cfg, eq_err *err);

/* The detection pipeline a JOB for a COCO dataset asks for.  Starts from
 * eq_det_cfg_default(split, global_batch, seed) with sampler.last from
 * `last`; `height` is the shorter side S (with `min_sizes`: the largest of
 * them), `width` the longer-side limit L, `channels` must be 3.  The JOB's
 * transforms, each optional:
 *   aug         str   "det" (any other value is refused)
 *   min_sizes   str   comma-separated shorter sides, one drawn per image
 *               (multi-scale training); their maximum must equal height
 *   hflip, shuffle, skip_empty, masks   bool
 *   pad_divisor int   0..1024 (0, 1: no rounding of the padded size)
 *   box_format  str   "xyxy" | "xywh" | "cxcywh"
 *   min_box     float boxes with a clipped side <= this are dropped
 *   dct_scale   bool or int, as for eq_loader_job_pipeline
 * Mixup/CutMix are EQ_ERR_UNSUPPORTED.  Errors name the key. */
struct eq_det_cfg;
eq_status eq_loader_det_job(const eq_msg_job *job, struct eq_det_cfg *cfg, eq_err *err);
/* The pipeline fingerprint of a detection job (library versions and every
 * option that changes bytes but is not in the JOB's own fields). */
void eq_loader_det_fingerprint(const struct eq_det_cfg *cfg, char *out, size_t cap);

/* The pipeline fingerprint sent in JOB_OK: library versions and the
 * options that change bytes without being visible in the sampler or the
 * JOB's own fields: dct_scale (0, 1, 2), max_pixels, jitter[3], hue, mix.block,
 * mix.batch_lambda.  `out` gets at most `cap` bytes. */
void eq_loader_pipeline_fingerprint(const eq_pipeline_cfg *cfg, char *out, size_t cap);

/* ======================================================================
 * Config sections
 * ====================================================================== */

#define EQ_LOADER_MAX_DATASETS 16
#define EQ_LOADER_PATH_CAP 1024

/* [loader]: the daemon's own settings (command-line flags override them). */
typedef struct eq_loader_cfg {
    char bind[256];
    char control[256];
    int64_t threads;
    char datasets[EQ_LOADER_MAX_DATASETS][EQ_LOADER_PATH_CAP + EQ_PROTO_NAME_CAP];
    size_t ndatasets;
    int64_t max_inflight_mb;
    int64_t max_jobs;
    char curve_secret[EQ_LOADER_PATH_CAP];
    char curve_allow[EQ_LOADER_PATH_CAP];
    bool insecure;
} eq_loader_cfg;

/* [data]: the pipeline a job asks a loader for (what a JOB carries). */
typedef struct eq_loader_data_cfg {
    char dataset[EQ_PROTO_NAME_CAP];
    int64_t height, width, channels;
    int64_t global_batch;
    int64_t seed;
    int aug_train, aug_val; /* index into "none", "rrc", "center", "padcrop" */
    bool hflip;
    double scale[2];
    size_t nscale;
    double ratio[2];
    size_t nratio;
    int64_t resize;
    int64_t pad;
    int last_train; /* "drop", "wrap" */
    bool dct_scale;
    /* aug = det (COCO): height/width/channels are then derived */
    int64_t min_sizes[16];
    size_t nmin_sizes;
    int64_t min_size_val;
    int64_t max_size;
    int box_format; /* "xyxy", "xywh", "cxcywh" */
    bool masks;
    int64_t pad_divisor;
    bool skip_empty;
    double min_box;
    /* train only: mixup / CutMix (timm's meanings) and colour jitter */
    double mixup_alpha, cutmix_alpha, mix_prob, mix_switch_prob;
    int mix_mode; /* "batch", "elem" */
    int64_t mix_block;
    double jitter[3];
    size_t njitter;
    double jitter_hue;
} eq_loader_data_cfg;

/* Section tables bound to the given structs (either may be NULL: that
 * section is then validated and discarded).  `secs` receives 2 entries:
 * [loader] then [data]. */
void eq_loader_config_sections(eq_loader_cfg *lc, eq_loader_data_cfg *dc, eq_config_section secs[2]);

/* Fill a JOB from [data] for `split` ("train" uses aug_train and
 * last_train; other splits aug_val and "partial").  `m` is initialised.
 * The train JOB also carries [data]'s mixup/CutMix settings (mixup_alpha,
 * cutmix_alpha, mix_prob, mix_switch_prob, mix_mode; transform mix_block
 * when nonzero) and jitter (transforms jitter_brightness, jitter_contrast,
 * jitter_saturation, jitter_hue when nonzero, rrc only); other splits
 * never mix or jitter.
 * With aug "det" the JOB is a detection job: height = the largest of
 * min_sizes (train) or min_size_val, width = max_size, channels 3, and the
 * det transforms of eq_loader_det_job. */
eq_status eq_loader_data_job(const eq_loader_data_cfg *dc, const char *split, eq_msg *m, eq_err *err);

/* ======================================================================
 * The server
 * ====================================================================== */

typedef struct eq_proto_zap eq_proto_zap;

typedef struct eq_loader_server_cfg {
    const char *bind;             /* data endpoint (required): "tcp://127.0.0.1:5555",
                                   * "tcp://127.0.0.1:*", "inproc://x" */
    const char *control;          /* control endpoint, NULL or "" for none */
    const char *const *datasets;  /* "NAME=PATH" declarations (>= 1) */
    size_t ndatasets;
    int threads;                  /* workers; <= 0: one per CPU */
    uint64_t max_inflight_bytes;  /* budget of image bytes being made or sent;
                                   * 0: 1 GiB */
    uint32_t max_jobs;            /* jobs remembered (least recently used
                                   * evicted first); 0: 64 */
    /* CURVE (both or neither): the server's secret key (z85) and the running
     * ZAP handler holding the allow-list of client keys. */
    const char *curve_secret;
    const eq_proto_zap *zap;
    bool insecure;                /* allow non-loopback binds without CURVE */
} eq_loader_server_cfg;

typedef struct eq_loader_server eq_loader_server;

/* Check the declarations (names unique and valid, paths exist, kinds
 * detected), create and bind the sockets in `zctx` and start the workers
 * and the job opener.
 * Binding a non-loopback TCP endpoint without CURVE is EQ_ERR_INVALID
 * unless cfg->insecure.  Datasets are opened on the first JOB that needs
 * them (one eq_dataset per dataset and split, shared by all its jobs).
 * Caller owns the result; call eq_loader_server_run from one thread. */
eq_loader_server *eq_loader_server_new(void *zctx, const eq_loader_server_cfg *cfg, eq_err *err);

/* The endpoints as bound (with the real port for "tcp://...:*"); "" for
 * no control socket. */
const char *eq_loader_server_endpoint(const eq_loader_server *s);
const char *eq_loader_server_control_endpoint(const eq_loader_server *s);

/* Serve until a stop (control "stop" or eq_loader_server_stop): then the
 * requests already being made are finished and sent (for at most 5 s) and
 * the function returns EQ_OK.  Errors only for a broken context
 * (EQ_ERR_NET). */
eq_status eq_loader_server_run(eq_loader_server *s, eq_err *err);

/* Ask the run loop to stop.  Async-signal-safe (one write(2) to a pipe),
 * callable from any thread. */
void eq_loader_server_stop(eq_loader_server *s);

/* Stops the workers, frees everything, closes the sockets (linger 0).
 * Call after eq_loader_server_run has returned (or was never called).
 * NULL-safe; NULLs *self_p. */
void eq_loader_server_destroy(eq_loader_server **self_p);

typedef struct eq_loader_stats {
    uint64_t received;      /* messages received on the data socket */
    uint64_t hello, job, batch_req;
    uint64_t batches_sent, samples_sent, bytes_sent;
    uint64_t replaced;      /* substituted samples */
    uint64_t errors_sent;   /* ERROR replies */
    uint64_t dropped;       /* messages that could not be answered, replies
                             * that could not be sent */
    uint64_t expired;       /* requests past their deadline, not sent */
    uint64_t jobs;          /* jobs in the table */
    uint64_t inflight_bytes;
} eq_loader_stats;

/* Counters so far; callable from any thread while the server runs. */
void eq_loader_server_stats(const eq_loader_server *s, eq_loader_stats *st);

#endif
