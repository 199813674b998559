/*
 * loader/job.c -- what a loader serves and how a JOB becomes a pipeline:
 * dataset kind detection, the JOB transforms -> eq_pipeline_cfg mapping,
 * the pipeline fingerprint, and the [loader] / [data] config sections.
 */
#include "config.h"

#include "loader/server.h"

#include "loader/coco.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
/* after stdio.h: jpeglib.h uses FILE */
#include <jpeglib.h>
#include <png.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

/* ---------------------------------------------------------------- kinds */

static int s_exists(const char *dir, const char *name)
{
    char p[EQ_LOADER_PATH_CAP + 64];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

eq_status eq_loader_detect(const char *path, eq_ds_kind *kind, eq_err *err)
{
    struct stat st;
    if (!path || !*path) return eq_err_set(err, EQ_ERR_INVALID, "dataset path is empty");
    if (strlen(path) >= EQ_LOADER_PATH_CAP)
        return eq_err_set(err, EQ_ERR_LIMIT, "dataset path longer than %d bytes", EQ_LOADER_PATH_CAP - 1);
    if (stat(path, &st) != 0)
        return eq_err_set(err, errno == ENOENT ? EQ_ERR_NOTFOUND : EQ_ERR_IO, "dataset '%s': %s", path,
                          strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return eq_err_set(err, EQ_ERR_INVALID,
                          "dataset '%s' is not a directory (expected an IDX, CIFAR or ImageFolder directory)",
                          path);
    static const char *const idx[] = {"train-images-idx3-ubyte", "train-images-idx3-ubyte.gz",
                                      "t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz"};
    for (size_t i = 0; i < sizeof idx / sizeof idx[0]; i++)
        if (s_exists(path, idx[i])) {
            *kind = EQ_DS_IDX;
            return EQ_OK;
        }
    if (s_exists(path, "data_batch_1.bin") || s_exists(path, "test_batch.bin")) {
        *kind = EQ_DS_CIFAR10;
        return EQ_OK;
    }
    if (s_exists(path, "train.bin") || s_exists(path, "test.bin")) {
        *kind = EQ_DS_CIFAR100;
        return EQ_OK;
    }
    static const char *const coco[] = {"annotations/instances_train2017.json", "annotations/instances_val2017.json",
                                       "annotations/instances_train.json", "annotations/instances_val.json"};
    for (size_t i = 0; i < sizeof coco / sizeof coco[0]; i++)
        if (s_exists(path, coco[i])) {
            *kind = EQ_DS_COCO;
            return EQ_OK;
        }
    *kind = EQ_DS_IMAGEFOLDER;
    return EQ_OK;
}

const char *eq_loader_kind_name(eq_ds_kind kind)
{
    switch (kind) {
    case EQ_DS_IDX: return "idx";
    case EQ_DS_CIFAR10: return "cifar10";
    case EQ_DS_CIFAR100: return "cifar100";
    case EQ_DS_IMAGEFOLDER: return "imagefolder";
    case EQ_DS_COCO: return "coco";
    default: return "?";
    }
}

eq_dataset *eq_loader_open(const char *path, eq_ds_kind kind, const char *split, int nthreads,
                           eq_err *err)
{
    switch (kind) {
    case EQ_DS_IDX: return eq_dataset_open_mnist_dir(path, split, err);
    case EQ_DS_CIFAR10:
    case EQ_DS_CIFAR100: return eq_dataset_open_cifar_dir(kind, path, split, err);
    case EQ_DS_IMAGEFOLDER: return eq_dataset_open_imagefolder(path, split, nthreads, err);
    case EQ_DS_COCO: return eq_dataset_open_coco(path, split, err);
    default: eq_err_set(err, EQ_ERR_INVALID, "dataset '%s': unknown kind %d", path, (int)kind); return NULL;
    }
}

/* ------------------------------------------------------------ transforms */

static const char *const s_aug_names[] = {"none", "rrc", "center", "padcrop", "det", NULL};
static const char *const s_box_names[] = {"xyxy", "xywh", "cxcywh", NULL};
static const char *const s_mix_mode_names[] = {"batch", "elem", NULL};
static const char *const s_last_names[] = {"drop", "wrap", NULL};

static const char *s_type_name(eq_proto_val_type t)
{
    switch (t) {
    case EQ_PROTO_VAL_INT: return "int";
    case EQ_PROTO_VAL_FLOAT: return "float";
    case EQ_PROTO_VAL_BOOL: return "bool";
    case EQ_PROTO_VAL_STR: return "string";
    }
    return "?";
}

static eq_status s_want(const eq_proto_kv *kv, eq_proto_val_type t, eq_err *err)
{
    /* An integer is a fine float. */
    if (kv->type == t || (t == EQ_PROTO_VAL_FLOAT && kv->type == EQ_PROTO_VAL_INT)) return EQ_OK;
    return eq_err_set(err, EQ_ERR_INVALID, "JOB: transform '%s' is a %s, expected a %s", kv->key,
                      s_type_name(kv->type), s_type_name(t));
}

static double s_num(const eq_proto_kv *kv)
{
    return kv->type == EQ_PROTO_VAL_INT ? (double)kv->i : kv->f;
}

static eq_status s_int_in(const eq_proto_kv *kv, int64_t lo, int64_t hi, int64_t *out, eq_err *err)
{
    eq_status st = s_want(kv, EQ_PROTO_VAL_INT, err);
    if (st) return st;
    if (kv->i < lo || kv->i > hi)
        return eq_err_set(err, EQ_ERR_INVALID, "JOB: transform '%s' = %" PRId64 " out of range [%" PRId64
                                               ", %" PRId64 "]",
                          kv->key, kv->i, lo, hi);
    *out = kv->i;
    return EQ_OK;
}

static eq_status s_float_in(const eq_proto_kv *kv, double lo, double hi, double *out, eq_err *err)
{
    eq_status st = s_want(kv, EQ_PROTO_VAL_FLOAT, err);
    if (st) return st;
    double v = s_num(kv);
    if (!(v >= lo && v <= hi))
        return eq_err_set(err, EQ_ERR_INVALID, "JOB: transform '%s' = %g out of range [%g, %g]", kv->key, v, lo,
                          hi);
    *out = v;
    return EQ_OK;
}

eq_status eq_loader_job_pipeline(const eq_msg_job *job, eq_pipeline_cfg *cfg, eq_err *err)
{
    eq_pipeline_cfg_default(cfg, job->split, job->height, job->global_batch, job->seed);
    cfg->out_w = job->width;
    switch (job->last) {
    case EQ_PROTO_LAST_DROP: cfg->sampler.last = EQ_LAST_DROP; break;
    case EQ_PROTO_LAST_WRAP: cfg->sampler.last = EQ_LAST_WRAP; break;
    case EQ_PROTO_LAST_PARTIAL: cfg->sampler.last = EQ_LAST_PARTIAL; break;
    default: return eq_err_set(err, EQ_ERR_INVALID, "JOB: field 'last' = %d unknown", (int)job->last);
    }
    for (uint32_t i = 0; i < job->ntransforms && i < EQ_PROTO_MAX_TRANSFORMS; i++) {
        const eq_proto_kv *kv = &job->transforms[i];
        eq_status st = EQ_OK;
        int64_t v = 0;
        double f = 0;
        if (!strcmp(kv->key, "aug")) {
            if ((st = s_want(kv, EQ_PROTO_VAL_STR, err))) return st;
            int k = 0;
            while (s_aug_names[k] && strcmp(s_aug_names[k], kv->s)) k++;
            if (!s_aug_names[k])
                return eq_err_set(err, EQ_ERR_INVALID,
                                  "JOB: transform 'aug' = \"%s\" unknown (expected none, rrc, center, padcrop)",
                                  kv->s);
            if (k == EQ_AUG_DET)
                return eq_err_set(err, EQ_ERR_INVALID,
                                  "JOB: transform 'aug' = \"det\" is for COCO datasets (this dataset is not one)");
            cfg->aug = (eq_aug)k;
        } else if (!strcmp(kv->key, "hflip")) {
            if ((st = s_want(kv, EQ_PROTO_VAL_BOOL, err))) return st;
            cfg->hflip = kv->b;
        } else if (!strcmp(kv->key, "shuffle")) {
            if ((st = s_want(kv, EQ_PROTO_VAL_BOOL, err))) return st;
            cfg->sampler.shuffle = kv->b;
        } else if (!strcmp(kv->key, "dct_scale")) {
            /* bool (false = off, true = power-of-two scales) or the mode 0..2 */
            if (kv->type == EQ_PROTO_VAL_BOOL) {
                cfg->dct_scale = kv->b ? EQ_DCT_POW2 : EQ_DCT_OFF;
            } else {
                if ((st = s_int_in(kv, EQ_DCT_OFF, EQ_DCT_ANY, &v, err))) return st;
                cfg->dct_scale = (int)v;
            }
        } else if (!strcmp(kv->key, "jitter_brightness") || !strcmp(kv->key, "jitter_contrast") ||
                   !strcmp(kv->key, "jitter_saturation")) {
            if ((st = s_float_in(kv, 0, 100, &f, err))) return st;
            cfg->jitter[kv->key[7] == 'b' ? 0 : kv->key[7] == 'c' ? 1 : 2] = (float)f;
        } else if (!strcmp(kv->key, "jitter_hue")) {
            if ((st = s_float_in(kv, 0, 0.5, &f, err))) return st;
            cfg->hue = (float)f;
        } else if (!strcmp(kv->key, "mix_block")) {
            if ((st = s_int_in(kv, 0, job->global_batch, &v, err))) return st;
            cfg->mix.block = (uint32_t)v;
        } else if (!strcmp(kv->key, "scale_min")) {
            if ((st = s_float_in(kv, 1e-6, 1, &f, err))) return st;
            cfg->scale[0] = f;
        } else if (!strcmp(kv->key, "scale_max")) {
            if ((st = s_float_in(kv, 1e-6, 1, &f, err))) return st;
            cfg->scale[1] = f;
        } else if (!strcmp(kv->key, "ratio_min")) {
            if ((st = s_float_in(kv, 1e-3, 1e3, &f, err))) return st;
            cfg->ratio[0] = f;
        } else if (!strcmp(kv->key, "ratio_max")) {
            if ((st = s_float_in(kv, 1e-3, 1e3, &f, err))) return st;
            cfg->ratio[1] = f;
        } else if (!strcmp(kv->key, "resize")) {
            if ((st = s_int_in(kv, 0, 8192, &v, err))) return st;
            cfg->resize = (uint32_t)v;
        } else if (!strcmp(kv->key, "pad")) {
            if ((st = s_int_in(kv, 0, 64, &v, err))) return st;
            cfg->pad = (uint32_t)v;
        } else if (!strcmp(kv->key, "max_pixels")) {
            if ((st = s_int_in(kv, 0, INT64_MAX, &v, err))) return st;
            cfg->max_pixels = (uint64_t)v;
        } else {
            return eq_err_set(err, EQ_ERR_INVALID,
                              "JOB: transform '%s' unknown (expected aug, hflip, scale_min, scale_max, ratio_min, "
                              "ratio_max, resize, pad, shuffle, dct_scale, max_pixels, jitter_brightness, "
                              "jitter_contrast, jitter_saturation, jitter_hue, mix_block)",
                              kv->key);
        }
    }
    /* Mixup / CutMix (timm's meanings; the library checks the ranges). */
    cfg->mix.mixup_alpha = (float)job->mixup_alpha;
    cfg->mix.cutmix_alpha = (float)job->cutmix_alpha;
    cfg->mix.prob = (float)job->mix_prob;
    cfg->mix.switch_prob = (float)job->mix_switch_prob;
    if (!job->mix_mode[0] || !strcmp(job->mix_mode, "batch"))
        cfg->mix.batch_lambda = 1;
    else if (!strcmp(job->mix_mode, "elem"))
        cfg->mix.batch_lambda = 0;
    else if (!strcmp(job->mix_mode, "pair"))
        return eq_err_set(err, EQ_ERR_UNSUPPORTED, "JOB: mix_mode \"pair\" is not served (use batch or elem)");
    else
        return eq_err_set(err, EQ_ERR_INVALID, "JOB: mix_mode \"%s\" unknown (expected batch, pair, elem)",
                          job->mix_mode);
    if (cfg->mix.mixup_alpha > 0 || cfg->mix.cutmix_alpha > 0) {
        uint32_t g = job->global_batch, b = cfg->mix.block ? cfg->mix.block : g;
        if (g % b)
            return eq_err_set(err, EQ_ERR_INVALID, "JOB: transform 'mix_block' = %u does not divide global_batch %u",
                              b, g);
        /* A BATCH says "mixup" or "cutmix" for all its samples, so one
         * batch must never hold both kinds. */
        if (cfg->mix.mixup_alpha > 0 && cfg->mix.cutmix_alpha > 0 && !cfg->mix.batch_lambda)
            return eq_err_set(err, EQ_ERR_UNSUPPORTED,
                              "JOB: mixup and cutmix both on need mix_mode \"batch\" (a BATCH carries one mix kind; "
                              "mix_mode \"elem\" would mix both in one batch)");
    }
    return EQ_OK;
}

/* Comma-separated shorter sides ("640,672,704"). */
static eq_status s_sizes(const eq_proto_kv *kv, eq_det_cfg *cfg, eq_err *err)
{
    const char *p = kv->s;
    uint32_t n = 0;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 1 || v > EQ_DET_MAX_SIDE || n == EQ_DET_MAX_SIZES)
            return eq_err_set(err, EQ_ERR_INVALID,
                              "JOB: transform 'min_sizes' = \"%s\": expected 1..%d comma-separated sizes in [1, %d]",
                              kv->s, EQ_DET_MAX_SIZES, EQ_DET_MAX_SIDE);
        cfg->min_sizes[n++] = (uint32_t)v;
        p = end;
        while (*p == ' ') p++;
        if (*p == ',') p++;
        while (*p == ' ') p++;
    }
    if (!n) return eq_err_set(err, EQ_ERR_INVALID, "JOB: transform 'min_sizes' is empty");
    cfg->n_min_sizes = n;
    return EQ_OK;
}

eq_status eq_loader_det_job(const eq_msg_job *job, eq_det_cfg *cfg, eq_err *err)
{
    eq_det_cfg_default(cfg, job->split, job->global_batch, job->seed);
    switch (job->last) {
    case EQ_PROTO_LAST_DROP: cfg->sampler.last = EQ_LAST_DROP; break;
    case EQ_PROTO_LAST_WRAP: cfg->sampler.last = EQ_LAST_WRAP; break;
    case EQ_PROTO_LAST_PARTIAL: cfg->sampler.last = EQ_LAST_PARTIAL; break;
    default: return eq_err_set(err, EQ_ERR_INVALID, "JOB: field 'last' = %d unknown", (int)job->last);
    }
    if (job->mixup_alpha > 0 || job->cutmix_alpha > 0)
        return eq_err_set(err, EQ_ERR_UNSUPPORTED, "JOB: mixup/cutmix are not served for detection datasets");
    if (job->width > EQ_DET_MAX_SIDE || job->height > EQ_DET_MAX_SIDE)
        return eq_err_set(err, EQ_ERR_INVALID, "JOB: height (shorter side) and width (longer side limit) at most %d",
                          EQ_DET_MAX_SIDE);
    cfg->min_sizes[0] = job->height;
    cfg->n_min_sizes = 1;
    cfg->max_size = job->width;
    int sizes_given = 0;
    for (uint32_t i = 0; i < job->ntransforms && i < EQ_PROTO_MAX_TRANSFORMS; i++) {
        const eq_proto_kv *kv = &job->transforms[i];
        eq_status st = EQ_OK;
        int64_t v = 0;
        double f = 0;
        if (!strcmp(kv->key, "aug")) {
            if ((st = s_want(kv, EQ_PROTO_VAL_STR, err))) return st;
            if (strcmp(kv->s, "det"))
                return eq_err_set(err, EQ_ERR_INVALID,
                                  "JOB: transform 'aug' = \"%s\": a COCO dataset is served with aug \"det\"", kv->s);
        } else if (!strcmp(kv->key, "min_sizes")) {
            if ((st = s_want(kv, EQ_PROTO_VAL_STR, err)) || (st = s_sizes(kv, cfg, err))) return st;
            sizes_given = 1;
        } else if (!strcmp(kv->key, "hflip") || !strcmp(kv->key, "shuffle") || !strcmp(kv->key, "skip_empty") ||
                   !strcmp(kv->key, "masks")) {
            if ((st = s_want(kv, EQ_PROTO_VAL_BOOL, err))) return st;
            int *dst = kv->key[0] == 'h'   ? &cfg->hflip
                       : kv->key[1] == 'h' ? &cfg->sampler.shuffle
                       : kv->key[1] == 'k' ? &cfg->skip_empty
                                           : &cfg->masks;
            *dst = kv->b;
        } else if (!strcmp(kv->key, "pad_divisor")) {
            if ((st = s_int_in(kv, 0, 1024, &v, err))) return st;
            cfg->pad_divisor = (uint32_t)v;
        } else if (!strcmp(kv->key, "box_format")) {
            eq_box_format bf;
            if ((st = s_want(kv, EQ_PROTO_VAL_STR, err))) return st;
            if (eq_box_format_parse(kv->s, &bf))
                return eq_err_set(err, EQ_ERR_INVALID,
                                  "JOB: transform 'box_format' = \"%s\" unknown (expected xyxy, xywh, cxcywh)", kv->s);
            cfg->box_format = bf;
        } else if (!strcmp(kv->key, "min_box")) {
            if ((st = s_float_in(kv, 0, 1e6, &f, err))) return st;
            cfg->min_box = f;
        } else if (!strcmp(kv->key, "dct_scale")) {
            if (kv->type == EQ_PROTO_VAL_BOOL) {
                cfg->dct_scale = kv->b ? EQ_DCT_POW2 : EQ_DCT_OFF;
            } else {
                if ((st = s_int_in(kv, EQ_DCT_OFF, EQ_DCT_ANY, &v, err))) return st;
                cfg->dct_scale = (int)v;
            }
        } else {
            return eq_err_set(err, EQ_ERR_INVALID,
                              "JOB: transform '%s' unknown for a COCO dataset (expected aug, min_sizes, hflip, shuffle, "
                              "skip_empty, masks, pad_divisor, box_format, min_box, dct_scale)",
                              kv->key);
        }
    }
    if (job->channels != 3)
        return eq_err_set(err, EQ_ERR_INVALID, "JOB: a COCO dataset gives 3 channels, not %u", job->channels);
    if (sizes_given) {
        uint32_t mx = 0;
        for (uint32_t i = 0; i < cfg->n_min_sizes; i++)
            if (cfg->min_sizes[i] > mx) mx = cfg->min_sizes[i];
        if (mx != job->height)
            return eq_err_set(err, EQ_ERR_INVALID, "JOB: height %u must be the largest of min_sizes (%u)", job->height,
                              mx);
    }
    return EQ_OK;
}

#define S_STR_(x) #x
#define S_STR(x) S_STR_(x)

void eq_loader_pipeline_fingerprint(const eq_pipeline_cfg *cfg, char *out, size_t cap)
{
    snprintf(out, cap, "eq %s; libjpeg-turbo %s; libpng %s; zlib %s; dct_scale=%d; max_pixels=%" PRIu64
             "; jitter=%.9g,%.9g,%.9g; hue=%.9g; mix_block=%u; batch_lambda=%d",
             PACKAGE_VERSION, S_STR(LIBJPEG_TURBO_VERSION), png_get_libpng_ver(NULL), zlibVersion(),
             /* the mode as the library reads it: any nonzero value but ANY is POW2 */
             cfg->dct_scale == EQ_DCT_OFF ? EQ_DCT_OFF : cfg->dct_scale == EQ_DCT_ANY ? EQ_DCT_ANY : EQ_DCT_POW2,
             cfg->max_pixels ? cfg->max_pixels : (uint64_t)EQ_DECODE_MAX_PIXELS_DEFAULT, (double)cfg->jitter[0],
             (double)cfg->jitter[1], (double)cfg->jitter[2], (double)cfg->hue, cfg->mix.block,
             cfg->mix.batch_lambda ? 1 : 0);
}

void eq_loader_det_fingerprint(const eq_det_cfg *cfg, char *out, size_t cap)
{
    snprintf(out, cap, "eq %s; libjpeg-turbo %s; libpng %s; zlib %s; det; dct_scale=%d; pad=%u; box=%s; masks=%d; skip_empty=%d; "
             "min_box=%.17g",
             PACKAGE_VERSION, S_STR(LIBJPEG_TURBO_VERSION), png_get_libpng_ver(NULL), zlibVersion(),
             cfg->dct_scale == EQ_DCT_OFF ? EQ_DCT_OFF : cfg->dct_scale == EQ_DCT_ANY ? EQ_DCT_ANY : EQ_DCT_POW2,
             cfg->pad_divisor, eq_box_format_name(cfg->box_format), cfg->masks ? 1 : 0, cfg->skip_empty ? 1 : 0,
             cfg->min_box);
}

/* --------------------------------------------------------------- config */

static const eq_config_key s_loader_keys[] = {
    EQ_CONFIG_STRING_KEY(eq_loader_cfg, bind, "tcp://127.0.0.1:5555",
                         "data endpoint (ROUTER); a non-loopback address needs CURVE keys or insecure"),
    EQ_CONFIG_STRING_KEY(eq_loader_cfg, control, "tcp://127.0.0.1:5556",
                         "control endpoint (status, stop); empty for none"),
    EQ_CONFIG_INT_KEY(eq_loader_cfg, threads, "0", 0, 1024, "decode worker threads; 0 = one per CPU"),
    EQ_CONFIG_STRING_LIST_KEY(eq_loader_cfg, datasets, ndatasets, "fashion-mnist=" EQ_FASHION_MNIST_DIR, 1,
                              "served datasets as NAME=PATH (IDX, CIFAR or ImageFolder directory)"),
    EQ_CONFIG_INT_KEY(eq_loader_cfg, max_inflight_mb, "1024", 1, 1 << 20,
                      "MiB of batches being made or sent; requests past it are refused (retry later)"),
    EQ_CONFIG_INT_KEY(eq_loader_cfg, max_jobs, "64", 1, 4096, "jobs remembered (least recently used evicted)"),
    EQ_CONFIG_STRING_KEY(eq_loader_cfg, curve_secret, "", "CURVE secret key file (eqctl keygen); empty: no CURVE"),
    EQ_CONFIG_STRING_KEY(eq_loader_cfg, curve_allow, "",
                         "allowed client public keys: a key file or a directory of *.pub files"),
    EQ_CONFIG_BOOL_KEY(eq_loader_cfg, insecure, "false", "allow a non-loopback bind without CURVE"),
};

static const eq_config_key s_data_keys[] = {
    EQ_CONFIG_STRING_KEY(eq_loader_data_cfg, dataset, "fashion-mnist", "dataset NAME declared by the loaders"),
    EQ_CONFIG_INT_KEY(eq_loader_data_cfg, height, "28", 1, 4096, "output height"),
    EQ_CONFIG_INT_KEY(eq_loader_data_cfg, width, "28", 1, 4096, "output width"),
    EQ_CONFIG_INT_KEY(eq_loader_data_cfg, channels, "1", 1, 16,
                      "channels of the dataset (1 for IDX, 3 for CIFAR and ImageFolder)"),
    EQ_CONFIG_INT_KEY(eq_loader_data_cfg, global_batch, "256", 1, 1 << 24, "samples per global step (all ranks)"),
    EQ_CONFIG_INT_KEY(eq_loader_data_cfg, seed, "0", 0, INT64_MAX, "seed of the order and the augmentation"),
    EQ_CONFIG_ENUM_KEY(eq_loader_data_cfg, aug_train, "rrc", s_aug_names,
                       "train augmentation: none, rrc (RandomResizedCrop), center, padcrop (CIFAR), det (COCO)"),
    EQ_CONFIG_ENUM_KEY(eq_loader_data_cfg, aug_val, "center", s_aug_names,
                       "val augmentation (center = resize shorter side + centre crop)"),
    EQ_CONFIG_BOOL_KEY(eq_loader_data_cfg, hflip, "true", "train: random horizontal flip"),
    EQ_CONFIG_FLOAT_LIST_KEY(eq_loader_data_cfg, scale, nscale, "0.08, 1", 2, 1e-6, 1,
                             "rrc: area scale range (min, max)"),
    EQ_CONFIG_FLOAT_LIST_KEY(eq_loader_data_cfg, ratio, nratio, "0.75, 1.3333333333333333", 2, 1e-3, 1e3,
                             "rrc: aspect ratio range (min, max)"),
    EQ_CONFIG_INT_KEY(eq_loader_data_cfg, resize, "0", 0, 8192, "center: shorter side before the crop; 0 = size/0.875"),
    EQ_CONFIG_INT_KEY(eq_loader_data_cfg, pad, "4", 0, 64, "padcrop: zero padding"),
    EQ_CONFIG_ENUM_KEY(eq_loader_data_cfg, last_train, "drop", s_last_names,
                       "train: the last partial global batch is dropped or wrapped"),
    EQ_CONFIG_BOOL_KEY(eq_loader_data_cfg, dct_scale, "true", "JPEG: decode at M/8 scale when the crop allows"),
    EQ_CONFIG_INT_LIST_KEY(eq_loader_data_cfg, min_sizes, nmin_sizes, "640, 672, 704, 736, 768, 800", 1, 1, 8192,
                           "det, train: shorter sides, one drawn per image (height, width, channels are derived)"),
    EQ_CONFIG_INT_KEY(eq_loader_data_cfg, min_size_val, "800", 1, 8192, "det, val: shorter side"),
    EQ_CONFIG_INT_KEY(eq_loader_data_cfg, max_size, "1333", 1, 8192, "det: longer side at most this"),
    EQ_CONFIG_ENUM_KEY(eq_loader_data_cfg, box_format, "xyxy", s_box_names, "det: boxes as xyxy, xywh or cxcywh"),
    EQ_CONFIG_BOOL_KEY(eq_loader_data_cfg, masks, "true", "det: send instance masks"),
    EQ_CONFIG_INT_KEY(eq_loader_data_cfg, pad_divisor, "32", 0, 1024, "det: padded batch size a multiple of this"),
    EQ_CONFIG_BOOL_KEY(eq_loader_data_cfg, skip_empty, "true",
                       "det, train: leave out images without a non-crowd, non-empty box (val keeps all)"),
    EQ_CONFIG_FLOAT_KEY(eq_loader_data_cfg, min_box, "0", 0, 1e6, "det: drop boxes whose clipped side is <= this"),
    EQ_CONFIG_FLOAT_KEY(eq_loader_data_cfg, mixup_alpha, "0", 0, 100, "train: mixup Beta(alpha, alpha); 0 = off"),
    EQ_CONFIG_FLOAT_KEY(eq_loader_data_cfg, cutmix_alpha, "0", 0, 100, "train: CutMix Beta(alpha, alpha); 0 = off"),
    EQ_CONFIG_FLOAT_KEY(eq_loader_data_cfg, mix_prob, "1", 0, 1, "train: probability that a block/sample is mixed"),
    EQ_CONFIG_FLOAT_KEY(eq_loader_data_cfg, mix_switch_prob, "0.5", 0, 1,
                        "train: with both alphas on, probability of CutMix"),
    EQ_CONFIG_ENUM_KEY(eq_loader_data_cfg, mix_mode, "batch", s_mix_mode_names,
                       "train: one mix decision and lambda per block (batch) or per sample (elem)"),
    EQ_CONFIG_INT_KEY(eq_loader_data_cfg, mix_block, "0", 0, 1 << 24,
                      "train: mix partners within aligned blocks of this many positions (0 = the global batch; set "
                      "it to the per-rank share)"),
    EQ_CONFIG_FLOAT_LIST_KEY(eq_loader_data_cfg, jitter, njitter, "0, 0, 0", 3, 0, 100,
                             "train, rrc: ColorJitter brightness, contrast, saturation strengths (0 = off)"),
    EQ_CONFIG_FLOAT_KEY(eq_loader_data_cfg, jitter_hue, "0", 0, 0.5, "train, rrc: ColorJitter hue strength (0 = off)"),
};

void eq_loader_config_sections(eq_loader_cfg *lc, eq_loader_data_cfg *dc, eq_config_section secs[2])
{
    secs[0] = (eq_config_section){"loader", "the eq-loader daemon (flags override these)", s_loader_keys,
                                  EQ_CONFIG_NKEYS(s_loader_keys), lc};
    secs[1] = (eq_config_section){"data", "the pipeline a job asks the loaders for (sent as a JOB)", s_data_keys,
                                  EQ_CONFIG_NKEYS(s_data_keys), dc};
}

static void s_kv_str(eq_msg_job *j, const char *key, const char *v)
{
    eq_proto_kv *kv = &j->transforms[j->ntransforms++];
    snprintf(kv->key, sizeof kv->key, "%s", key);
    kv->type = EQ_PROTO_VAL_STR;
    snprintf(kv->s, sizeof kv->s, "%s", v);
}

static void s_kv_bool(eq_msg_job *j, const char *key, bool v)
{
    eq_proto_kv *kv = &j->transforms[j->ntransforms++];
    snprintf(kv->key, sizeof kv->key, "%s", key);
    kv->type = EQ_PROTO_VAL_BOOL;
    kv->b = v;
}

static void s_kv_int(eq_msg_job *j, const char *key, int64_t v)
{
    eq_proto_kv *kv = &j->transforms[j->ntransforms++];
    snprintf(kv->key, sizeof kv->key, "%s", key);
    kv->type = EQ_PROTO_VAL_INT;
    kv->i = v;
}

static void s_kv_float(eq_msg_job *j, const char *key, double v)
{
    eq_proto_kv *kv = &j->transforms[j->ntransforms++];
    snprintf(kv->key, sizeof kv->key, "%s", key);
    kv->type = EQ_PROTO_VAL_FLOAT;
    kv->f = v;
}

eq_status eq_loader_data_job(const eq_loader_data_cfg *dc, const char *split, eq_msg *m, eq_err *err)
{
    if (!split || !*split || strlen(split) >= EQ_PROTO_NAME_CAP)
        return eq_err_set(err, EQ_ERR_INVALID, "split name empty or too long");
    if (dc->nscale != 2 || dc->nratio != 2)
        return eq_err_set(err, EQ_ERR_INVALID, "[data] scale and ratio need 2 values each");
    eq_proto_msg_init(m, EQ_MSG_JOB);
    eq_msg_job *j = &m->u.job;
    int train = !strcmp(split, "train");
    snprintf(j->dataset, sizeof j->dataset, "%s", dc->dataset);
    snprintf(j->split, sizeof j->split, "%s", split);
    j->seed = (uint64_t)dc->seed;
    j->global_batch = (uint32_t)dc->global_batch;
    j->height = (uint32_t)dc->height;
    j->width = (uint32_t)dc->width;
    j->channels = (uint32_t)dc->channels;
    j->last = train ? (dc->last_train == 1 ? EQ_PROTO_LAST_WRAP : EQ_PROTO_LAST_DROP) : EQ_PROTO_LAST_PARTIAL;
    int aug = train ? dc->aug_train : dc->aug_val;
    s_kv_str(j, "aug", s_aug_names[aug]);
    int mixing = train && (dc->mixup_alpha > 0 || dc->cutmix_alpha > 0);
    if (aug == EQ_AUG_DET && mixing)
        return eq_err_set(err, EQ_ERR_INVALID, "[data] mixup_alpha / cutmix_alpha: not served with aug = det");
    if (mixing) {
        j->mixup_alpha = dc->mixup_alpha;
        j->cutmix_alpha = dc->cutmix_alpha;
        j->mix_prob = dc->mix_prob;
        j->mix_switch_prob = dc->mix_switch_prob;
        snprintf(j->mix_mode, sizeof j->mix_mode, "%s", s_mix_mode_names[dc->mix_mode]);
        if (dc->mix_block) s_kv_int(j, "mix_block", dc->mix_block);
    }
    if (aug == EQ_AUG_DET) {
        if (dc->nmin_sizes < 1 || dc->nmin_sizes > EQ_DET_MAX_SIZES)
            return eq_err_set(err, EQ_ERR_INVALID, "[data] min_sizes: 1..%d sizes", EQ_DET_MAX_SIZES);
        j->channels = 3;
        j->width = (uint32_t)dc->max_size;
        if (train) {
            char list[EQ_PROTO_TEXT_CAP];
            size_t o = 0;
            int64_t mx = 0;
            for (size_t i = 0; i < dc->nmin_sizes; i++) {
                o += (size_t)snprintf(list + o, sizeof list - o, "%s%" PRId64, i ? "," : "", dc->min_sizes[i]);
                if (dc->min_sizes[i] > mx) mx = dc->min_sizes[i];
            }
            j->height = (uint32_t)mx;
            s_kv_str(j, "min_sizes", list);
            s_kv_bool(j, "hflip", dc->hflip);
            s_kv_bool(j, "skip_empty", dc->skip_empty);
        } else {
            j->height = (uint32_t)dc->min_size_val;
        }
        s_kv_str(j, "box_format", s_box_names[dc->box_format]);
        s_kv_bool(j, "masks", dc->masks);
        s_kv_int(j, "pad_divisor", dc->pad_divisor);
        if (dc->min_box > 0) s_kv_float(j, "min_box", dc->min_box);
        if (!dc->dct_scale) s_kv_bool(j, "dct_scale", false);
        return EQ_OK;
    }
    if (train) s_kv_bool(j, "hflip", dc->hflip);
    if (aug == EQ_AUG_RRC) {
        s_kv_float(j, "scale_min", dc->scale[0]);
        s_kv_float(j, "scale_max", dc->scale[1]);
        s_kv_float(j, "ratio_min", dc->ratio[0]);
        s_kv_float(j, "ratio_max", dc->ratio[1]);
    }
    if (aug == EQ_AUG_CENTER && dc->resize) s_kv_int(j, "resize", dc->resize);
    if (aug == EQ_AUG_PADCROP) s_kv_int(j, "pad", dc->pad);
    if (!dc->dct_scale) s_kv_bool(j, "dct_scale", false);
    static const char *const jit[3] = {"jitter_brightness", "jitter_contrast", "jitter_saturation"};
    for (size_t i = 0; train && aug == EQ_AUG_RRC && i < dc->njitter && i < 3; i++)
        if (dc->jitter[i] > 0) s_kv_float(j, jit[i], dc->jitter[i]);
    if (train && aug == EQ_AUG_RRC && dc->jitter_hue > 0) s_kv_float(j, "jitter_hue", dc->jitter_hue);
    return EQ_OK;
}
