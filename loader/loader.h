/*
 * loader/loader.h -- the data half of eq-loader: datasets, decode, augment,
 * sampler, mixup/cutmix plans and batch assembly.
 *
 * Everything here follows DESIGN.md "Loaders are stateless and
 * deterministic": the bytes of a sample are a pure function of
 * (pipeline config, split, seed, epoch, dataset index), whatever thread or
 * process computes them.  Randomness comes only from core/rng.h (Philox,
 * counter based) with these keys (all documented in doc/loader.md):
 *   sampler order      eq_rng_init(seed, mix(mix(TAG_ORDER, split), epoch))
 *   sample augment     eq_rng_init(seed, mix(mix(mix(TAG_AUG, split), epoch), index))
 *   mixup/cutmix plan  eq_rng_init(seed, mix(mix(mix(TAG_MIX, split), epoch), step))
 *
 * What this header does not do: sockets, the wire format, the daemon (see
 * proto/ and the eq-loader program).
 *
 * Images are uint8, NHWC, channels RGB (C = 3) for ImageFolder and CIFAR,
 * C = 1 for IDX (MNIST/Fashion-MNIST).
 *
 * Thread safety: an eq_dataset is immutable after open and may be shared by
 * any number of threads.  An eq_decoder belongs to one thread at a time.  An
 * eq_pipeline serialises its own batch calls (one at a time; it runs them on
 * its own worker pool).  Pure functions (sampler, plans, transforms) are
 * thread-safe.
 */
#ifndef EQ_LOADER_H
#define EQ_LOADER_H

#include <stddef.h>
#include <stdint.h>

#include "core/rng.h"
#include "core/status.h"

/* ======================================================================
 * Datasets
 * ====================================================================== */

typedef enum eq_ds_kind {
    EQ_DS_IDX = 0,      /* MNIST / Fashion-MNIST IDX files, in memory */
    EQ_DS_CIFAR10,      /* CIFAR-10 binary batches, in memory */
    EQ_DS_CIFAR100,     /* CIFAR-100 binary (fine labels), in memory */
    EQ_DS_IMAGEFOLDER,  /* root/<split>/<class>/<file>, files read on demand */
    EQ_DS_COCO,         /* COCO instances file + image folder (loader/coco.h) */
    EQ_DS_KIND_COUNT
} eq_ds_kind;

typedef struct eq_dataset eq_dataset;

/* Count plus a 64-bit hash of the dataset's identity.  ImageFolder: hash of
 * the sorted relative paths ("class/file") with their byte sizes and
 * labels; in-memory sets: hash of the decoded pixels and labels.  Equal
 * fingerprints mean "same samples in the same order". */
typedef struct eq_ds_fingerprint {
    uint64_t count;
    uint64_t hash;
} eq_ds_fingerprint;

/* The installed location of Debian's dataset-fashion-mnist package. */
#define EQ_FASHION_MNIST_DIR "/usr/share/datasets/fashion-mnist"

/* Open an IDX image file (magic 0x00000803, u8, N x rows x cols) and its IDX
 * label file (0x00000801, u8, N).  Each may be gzip-compressed (detected by
 * its magic bytes, not by name) or raw.  Errors name the path and the field:
 * missing file (EQ_ERR_NOTFOUND / EQ_ERR_IO), bad magic (EQ_ERR_PARSE),
 * header declaring more items than the file holds (EQ_ERR_CORRUPT), count
 * mismatch between images and labels (EQ_ERR_CORRUPT), more than
 * `max_bytes` of pixels (EQ_ERR_LIMIT; 0 = 1 GiB).  Caller owns the result. */
eq_dataset *eq_dataset_open_idx(const char *images_path, const char *labels_path,
                                size_t max_bytes, eq_err *err);

/* Fashion-MNIST (or MNIST) from a directory holding the four standard files
 * (train-images-idx3-ubyte[.gz], ..., t10k-labels-idx1-ubyte[.gz]).
 * dir == NULL means EQ_FASHION_MNIST_DIR.  split is "train" or "val"/"test"
 * (the t10k files). */
eq_dataset *eq_dataset_open_mnist_dir(const char *dir, const char *split, eq_err *err);

/* CIFAR-10 or CIFAR-100 binary files (data_batch_*.bin / test_batch.bin:
 * records of 1 label byte + 3072 pixel bytes; CIFAR-100 train.bin/test.bin:
 * coarse + fine label bytes + 3072; the fine label is used).  The samples of
 * all files are concatenated in the given order.  A file whose size is not
 * a multiple of the record size is EQ_ERR_CORRUPT naming the file. */
eq_dataset *eq_dataset_open_cifar(eq_ds_kind kind, const char *const *paths, size_t npaths,
                                  eq_err *err);
/* A CIFAR directory as unpacked from the official tarballs:
 * cifar-10-batches-bin (data_batch_1..5.bin / test_batch.bin) or
 * cifar-100-binary (train.bin / test.bin).  split: "train" or "val"/"test". */
eq_dataset *eq_dataset_open_cifar_dir(eq_ds_kind kind, const char *dir, const char *split,
                                      eq_err *err);

/* ImageFolder: root/<split>/<class>/<file> (split may be NULL or "" for
 * root/<class>/<file>).  Classes are the sub-directories sorted by name
 * (strcmp, as Python's sorted() on str); files are walked recursively
 * inside each class folder and kept when their extension (case-insensitive)
 * is one of torchvision's IMG_EXTENSIONS (.jpg .jpeg .png .ppm .bmp .pgm
 * .tif .tiff .webp); samples are ordered by class, then by relative path
 * (strcmp).  Hidden entries (".*") are skipped.  The walk uses `nthreads`
 * threads (one class folder at a time each; <= 1 walks serially); the
 * result does not depend on nthreads.  An empty dataset (no classes, or no
 * files) is EQ_ERR_NOTFOUND naming the directory.  Only .jpg/.jpeg/.png
 * content is decoded; other kinds become substitute samples when read. */
eq_dataset *eq_dataset_open_imagefolder(const char *root, const char *split, int nthreads,
                                        eq_err *err);

/* A flat folder with a labels file (validation sets kept that way): each
 * non-blank, non-'#' line is "relative/path LABEL" (separated by a comma,
 * tab or space).  LABEL is a class index, or a class name: names map to
 * the classes of `classes_from` when given (e.g. the train ImageFolder, so
 * val labels use the same indices), otherwise to the sorted distinct names
 * of the file.  Samples are ordered by path.  Errors name file:line: a
 * malformed line, a listed file that does not exist (EQ_ERR_NOTFOUND), a
 * path with ".." or a leading '/', a duplicate, an unknown class.  The
 * result behaves as an ImageFolder (kind EQ_DS_IMAGEFOLDER, root = dir). */
eq_dataset *eq_dataset_open_flat(const char *dir, const char *labels_path,
                                 const eq_dataset *classes_from, eq_err *err);

/* File-list index cache (ImageFolder / flat sets), so a restart need not
 * walk a million files again.  Format (little endian): magic "EQDSIDX\n",
 * u32 version (1), u64 count, u32 classes, u64 fingerprint hash, root,
 * class names, then per sample u32 label, u64 size, path (strings: u32
 * length + bytes).  Written to path.tmp, fsynced, renamed.  Opening checks
 * the magic (EQ_ERR_PARSE), the version (EQ_ERR_VERSION, "delete it to
 * rebuild"), every count and length against the file size, and that the
 * content hashes to the stored fingerprint (EQ_ERR_CORRUPT).  The index is
 * trusted about the files themselves: it does not re-stat them (a file
 * changed since is read as it is now, a removed one becomes a substitute
 * sample); delete the index after changing the dataset. */
eq_status eq_dataset_save_index(const eq_dataset *ds, const char *path, eq_err *err);
eq_dataset *eq_dataset_open_index(const char *path, eq_err *err);

/* COCO detection/segmentation (loader/coco.h): the instances file
 * root/annotations/instances_<split>2017.json (or instances_<split>.json)
 * and the images in root/<split>2017 (or root/<split>).  The index is
 * cached in "<instances file>.eqidx" (rebuilt when the instances file's
 * size or mtime changes; a cache that cannot be written is only logged).
 * Samples are the images sorted by id; label(i) is the image id (or -1
 * beyond int32), classes are the categories sorted by id, class_name their
 * names, the fingerprint the index content hash.  Samples are made with
 * the detection pipeline (eq_det), not eq_pipeline. */
eq_dataset *eq_dataset_open_coco(const char *root, const char *split, eq_err *err);

struct eq_cocoidx;
/* The index of a COCO dataset (NULL for other kinds); owned by ds. */
const struct eq_cocoidx *eq_dataset_coco(const eq_dataset *ds);

void eq_dataset_destroy(eq_dataset **self_p);

eq_ds_kind eq_dataset_kind(const eq_dataset *ds);
size_t eq_dataset_size(const eq_dataset *ds);
uint32_t eq_dataset_num_classes(const eq_dataset *ds);
/* Class name (ImageFolder: the folder name; others: its decimal number in a
 * static table); NULL if out of range. */
const char *eq_dataset_class_name(const eq_dataset *ds, uint32_t cls);
eq_ds_fingerprint eq_dataset_fingerprint(const eq_dataset *ds);
/* Label of sample i (0 <= i < size), or -1 if out of range. */
int32_t eq_dataset_label(const eq_dataset *ds, size_t i);
/* ImageFolder: relative path "class/.../file" and byte size; NULL for other
 * kinds or i out of range. */
const char *eq_dataset_relpath(const eq_dataset *ds, size_t i, uint64_t *size);
/* The dataset's root directory (ImageFolder: root/split; COCO: the image
 * folder), or first file. */
const char *eq_dataset_root(const eq_dataset *ds);
/* In-memory sets: pointer to sample i's pixels (h x w x c, uint8, row
 * major) and its geometry; EQ_ERR_INVALID for ImageFolder or i out of range. */
eq_status eq_dataset_pixels(const eq_dataset *ds, size_t i, const uint8_t **pix, uint32_t *h,
                            uint32_t *w, uint32_t *c, eq_err *err);

/* ======================================================================
 * Decode (JPEG through libjpeg-turbo's libjpeg API, PNG through libpng)
 * ====================================================================== */

typedef enum eq_img_format {
    EQ_IMG_UNKNOWN = 0,
    EQ_IMG_JPEG,
    EQ_IMG_PNG,
} eq_img_format;

/* Format from magic bytes (never from the file name). */
eq_img_format eq_image_sniff(const uint8_t *data, size_t len);

/* Default pixel limit against decompression bombs (width * height). */
#define EQ_DECODE_MAX_PIXELS_DEFAULT (64ull * 1024 * 1024)

typedef struct eq_decoder eq_decoder;

/* One decoder per thread: it owns a libjpeg decompressor with an error
 * manager that longjmps back (libjpeg never exit()s) and scratch buffers
 * that grow to the largest image seen.  max_pixels 0 means the default. */
eq_decoder *eq_decoder_new(uint64_t max_pixels, eq_err *err);
void eq_decoder_destroy(eq_decoder **self_p);

/* Header only: format and full-resolution size.  Fails with EQ_ERR_PARSE /
 * EQ_ERR_CORRUPT for non-images and broken headers, EQ_ERR_LIMIT above the
 * pixel limit. */
eq_status eq_decode_info(eq_decoder *d, const uint8_t *data, size_t len, eq_img_format *fmt,
                         uint32_t *width, uint32_t *height, eq_err *err);

/* A decoded RGB image region: rows [y0, y0+h) and columns [x0, x0+w) of
 * the image scaled to sw x sh (scale num/8 for JPEG, 8/8 for PNG).  pix
 * points into the decoder's scratch buffer (stride w*3) and stays valid
 * until the next call on the same decoder. */
typedef struct eq_decoded {
    const uint8_t *pix;
    uint32_t x0, y0, w, h; /* region within the scaled image */
    uint32_t sw, sh;       /* scaled image size */
    uint32_t full_w, full_h;
    uint32_t scale_num;    /* JPEG: 1..8 over 8; PNG: 8 */
} eq_decoded;

/* Decode to RGB the region [rx0, rx1) x [ry0, ry1) of the image scaled by
 * scale_num/8 (1..8; PNG ignores it and uses 8).  Region coordinates are in
 * the scaled image and are clipped to it; the decoded region may be larger
 * than asked (JPEG crops on iMCU columns), never smaller.  Grayscale
 * becomes R=G=B; CMYK/YCCK are converted to RGB (Adobe inverted CMYK
 * handled); PNG alpha is composited onto black, 16-bit reduced to 8.
 * Any failure (corrupt data, truncated file, pixel limit) returns an error
 * naming the reason and leaves no state behind. */
eq_status eq_decode_region(eq_decoder *d, const uint8_t *data, size_t len, uint32_t scale_num,
                           uint32_t rx0, uint32_t ry0, uint32_t rx1, uint32_t ry1,
                           eq_decoded *out, eq_err *err);

/* Full image (no crop) at the given scale; same contract. */
eq_status eq_decode_full(eq_decoder *d, const uint8_t *data, size_t len, uint32_t scale_num,
                         eq_decoded *out, eq_err *err);

/* Size of the image scaled by num/8 as libjpeg computes it: ceil(n*num/8). */
static inline uint32_t eq_decode_scaled(uint32_t n, uint32_t num)
{
    return (uint32_t)(((uint64_t)n * num + 7) / 8);
}

/* ======================================================================
 * Transforms
 * ====================================================================== */

/* A crop box in full-resolution pixel coordinates (torchvision's i, j, h, w:
 * top, left, height, width). */
typedef struct eq_box {
    int32_t top, left, height, width;
} eq_box;

/* PIL's Image.resize(size, BILINEAR, box) on the image `in` (the clamp
 * rectangle [ix0, ix0+iw) x [iy0, iy0+ih) of a larger picture: taps never
 * leave it, as when torchvision crops first), box (bx0, by0)-(bx1, by1) in
 * float coordinates relative to `in`, output out_w x out_h of which only
 * the window [wx, wx+ww) x [wy, wy+wh) is written to dst (stride ww*c).
 * Bilinear filter with support 1 widened by the scale factor when
 * downscaling (= antialiased), PIL's 22-bit fixed-point coefficients, pass
 * order (horizontal then vertical, uint8 in between) and rounding: for the
 * same input pixels the result is bit-identical to PIL 9.
 * `src` holds a region of the larger picture that must contain every tap
 * (eq_resize_taps); EQ_ERR_INVALID otherwise.  *tmp / *tmp_cap: scratch
 * memory, grown with realloc (the caller frees *tmp). */
typedef struct eq_resize_src {
    const uint8_t *pix;
    uint32_t x0, y0, w, h; /* region held in pix (stride w*c), picture coords */
    uint32_t c;
} eq_resize_src;

typedef struct eq_resize_geom {
    uint32_t ix0, iy0, iw, ih;        /* PIL's input image (clamp rect) */
    float bx0, by0, bx1, by1;         /* PIL's box, relative to (ix0, iy0) */
    uint32_t out_w, out_h;            /* PIL's output size */
    uint32_t wx, wy, ww, wh;          /* window of the output to compute */
} eq_resize_geom;

eq_status eq_resize_bilinear(const eq_resize_src *src, const eq_resize_geom *g, uint8_t *dst,
                             void **tmp, size_t *tmp_cap, eq_err *err);

/* The picture rectangle [*sx0, *sx1) x [*sy0, *sy1) that eq_resize_bilinear
 * reads for this geometry. */
void eq_resize_taps(const eq_resize_geom *g, uint32_t *sx0, uint32_t *sy0, uint32_t *sx1,
                    uint32_t *sy1);

/* torchvision.transforms.RandomResizedCrop.get_params for an image of
 * width x height with scale (s0, s1) and ratio (r0, r1), drawing from
 * `rng`: per attempt two eq_rng_uniform floats (24-bit, as torch's
 * uniform_ on a float tensor) for the scale and the log-ratio, then if
 * accepted eq_rng_below(height-h+1) and eq_rng_below(width-w+1); after 10
 * failed attempts the central fallback.  Arithmetic follows torch (float32
 * uniform_ and exp, Python's round-half-even, double fallback). */
eq_box eq_rrc_params(eq_rng *rng, uint32_t width, uint32_t height, double s0, double s1,
                     double r0, double r1);

/* torchvision Resize(size) for an int size: the shorter side becomes
 * `size`, the longer int(size * long / short). */
void eq_resize_shorter(uint32_t w, uint32_t h, uint32_t size, uint32_t *ow, uint32_t *oh);
/* torchvision CenterCrop offsets: int(round((n - crop) / 2.0)). */
int32_t eq_center_offset(uint32_t n, uint32_t crop);

/* torchvision ColorJitter(brightness, contrast, saturation) on PIL images:
 * eq_color_jitter_params draws the order (a permutation of 0 brightness,
 * 1 contrast, 2 saturation) and a factor uniform in [max(0, 1 - s), 1 + s]
 * per adjustment whose strength s > 0 (1 otherwise);
 * eq_color_jitter_apply runs them on an RGB image in place exactly as PIL's
 * ImageEnhance does (blend with black / the mean grey / the L image, float
 * alpha, truncation), bit-identical to torchvision on PIL. */
void eq_color_jitter_params(eq_rng *r, const float strength[3], uint8_t order[3], float factor[3]);
void eq_color_jitter_apply(uint8_t *img, uint32_t w, uint32_t h, const uint8_t order[3],
                           const float factor[3]);
/* torchvision's adjust_hue(img, factor) on a PIL RGB image, in place and
 * bit-identical: Pillow's RGB -> HSV, H += uint8(factor * 255) modulo 256,
 * HSV -> RGB.  factor in [-0.5, 0.5] (ColorJitter(hue=h) draws it uniform in
 * [-h, h]). */
void eq_adjust_hue(uint8_t *img, uint32_t w, uint32_t h, float factor);

/* AlexNet PCA lighting noise (the original's Lighting(sigma), fb.resnet
 * eigenvalues/vectors): the per-channel offset, in [0, 1] image units, that
 * the trainer adds in fp32 before normalising (after ToTensor, like the
 * original; uint8 would lose it).  Keyed by (seed, split, epoch, index) on
 * its own stream, so it does not change the other draws. */
void eq_lighting_offset(uint64_t seed, uint32_t split, uint64_t epoch, uint64_t index, float sigma,
                        float rgb[3]);

/* Mirror an image left-right in place. */
void eq_hflip(uint8_t *img, uint32_t w, uint32_t h, uint32_t c);

/* ======================================================================
 * Sampler
 * ====================================================================== */

typedef enum eq_last_batch {
    EQ_LAST_DROP = 0, /* train: the last partial global batch is dropped */
    EQ_LAST_WRAP,     /* train: it is completed with positions 0,1,.. of
                         the same epoch's order */
    EQ_LAST_PARTIAL,  /* val: the last global batch is short, never padded */
} eq_last_batch;

typedef struct eq_sampler_cfg {
    uint64_t seed;
    uint32_t split;        /* key separating splits (0 train, 1 val, ...) */
    uint32_t global_batch; /* G > 0 */
    int shuffle;           /* 0: identity order (val) */
    eq_last_batch last;
} eq_sampler_cfg;

/* Steps per epoch for n samples. */
uint64_t eq_sampler_steps(const eq_sampler_cfg *cfg, size_t n);

typedef struct eq_sampler eq_sampler;

/* Caches the permutations of the two most recently used epochs
 * (Fisher-Yates with eq_rng_permute; 4 bytes per sample each). */
eq_sampler *eq_sampler_new(const eq_sampler_cfg *cfg, size_t n, eq_err *err);
void eq_sampler_destroy(eq_sampler **self_p);

/* Dataset indices of positions [step*G + offset, step*G + offset + count)
 * of the epoch's order into out[0..*n_out).  Errors (EQ_ERR_INVALID, with
 * the numbers): offset + count > G, step >= steps.  With EQ_LAST_PARTIAL
 * positions past the end are left out (*n_out < count).  Thread-safe. */
eq_status eq_sampler_range(eq_sampler *s, uint64_t epoch, uint64_t step, uint32_t offset,
                           uint32_t count, uint32_t *out, uint32_t *n_out, eq_err *err);

/* ======================================================================
 * Mixup / CutMix plan
 * ====================================================================== */

typedef struct eq_mix_cfg {
    float mixup_alpha;  /* 0: no mixup */
    float cutmix_alpha; /* 0: no cutmix */
    float prob;         /* probability that a sample is mixed at all */
    float switch_prob;  /* if both are on: probability of cutmix */
    uint32_t block;     /* partners are drawn inside aligned blocks of this
                           many positions (0 = the whole global batch); set it
                           to the per-rank share so mixup partners are local */
    int batch_lambda;   /* 1: one decision, lambda (and CutMix box) per block,
                           shared by its samples (the original's mixup_data:
                           one lambda per batch, x' = l x + (1 - l) x[perm]);
                           0: drawn per sample */
} eq_mix_cfg;

typedef enum eq_mix_mode { EQ_MIX_NONE = 0, EQ_MIX_MIXUP = 1, EQ_MIX_CUTMIX = 2 } eq_mix_mode;

typedef struct eq_mix_entry {
    uint32_t partner;  /* position in the global batch */
    float lambda;      /* weight of the sample's own label (1 = unmixed);
                          cutmix: 1 - pasted area / image area */
    uint8_t mode;      /* eq_mix_mode */
    uint16_t y0, x0, y1, x1; /* cutmix: box [y0,y1) x [x0,x1) from the partner */
} eq_mix_entry;

/* The plan for positions [0, g) of global step `step` (g = actual size of
 * that global batch), keyed by (seed, split, epoch, step): partners are a
 * random permutation inside each block, lambda ~ Beta(alpha, alpha), the
 * cutmix box as timm's rand_bbox (centre uniform, side sqrt(1-lambda),
 * clipped, lambda corrected to the clipped area).  out has g entries. */
eq_status eq_mix_plan(const eq_mix_cfg *cfg, uint64_t seed, uint32_t split, uint64_t epoch,
                      uint64_t step, uint32_t g, uint32_t h, uint32_t w, eq_mix_entry *out,
                      eq_err *err);

/* ======================================================================
 * Pipeline: dataset + transform + sampler + pool -> batches
 * ====================================================================== */

typedef enum eq_aug {
    EQ_AUG_NONE = 0,   /* samples as stored (in-memory sets only; ImageFolder
                          is resized to out_h x out_w, no crop) */
    EQ_AUG_RRC,        /* train: RandomResizedCrop + optional flip */
    EQ_AUG_CENTER,     /* val: Resize(shorter = resize) + CenterCrop */
    EQ_AUG_PADCROP,    /* CIFAR train: pad `pad` zeros, random crop, flip */
    EQ_AUG_DET,        /* COCO: the detection pipeline (loader/coco.h);
                          never an eq_pipeline */
} eq_aug;

/* DCT-domain scaling modes.  libjpeg-turbo has SIMD inverse DCTs only for
 * the 8x8, 4x4, 2x2 and 1x1 outputs (scales 8/8, 4/8, 2/8, 1/8); the other
 * M/8 use plain C IDCTs (and 4:2:0 chroma then needs 2M x 2M ones, e.g.
 * 12x12 for 6/8), which measured slower than decoding at the next power of
 * two.  So the default picks the smallest power-of-two scale that keeps the
 * crop at least the output size; EQ_DCT_ANY picks the smallest M/8. */
enum { EQ_DCT_OFF = 0, EQ_DCT_POW2 = 1, EQ_DCT_ANY = 2 };

typedef struct eq_pipeline_cfg {
    eq_aug aug;
    uint32_t out_h, out_w;  /* output size (in-memory, NONE: must equal the
                               stored size or be 0 = stored size) */
    uint32_t resize;        /* CENTER: shorter side (0 = out / 0.875) */
    double scale[2];        /* RRC: (0.08, 1) */
    double ratio[2];        /* RRC: (3/4, 4/3) */
    int hflip;              /* RRC / PADCROP: flip with probability 1/2 */
    uint32_t pad;           /* PADCROP: 4 */
    int dct_scale;          /* JPEG DCT-domain scaling: EQ_DCT_OFF, EQ_DCT_POW2
                               (default; any nonzero value but EQ_DCT_ANY) or
                               EQ_DCT_ANY */
    uint64_t max_pixels;    /* decompression-bomb limit (0 = default) */
    eq_sampler_cfg sampler;
    eq_mix_cfg mix;
    float jitter[3];        /* RRC: ColorJitter brightness, contrast,
                               saturation strengths (0 = off; the original's
                               --aa uses 0.4 each), applied after the flip */
    float hue;              /* RRC: ColorJitter hue strength h in [0, 0.5]
                               (0 = off): factor uniform in [-h, h], applied
                               at a uniformly drawn place among the other
                               three (torchvision's randperm(4)) */
} eq_pipeline_cfg;

/* Fill the defaults for a split: "train" (RRC 224, flip, shuffle, drop)
 * or "val" (CENTER 224 from 256, no shuffle, partial last batch). */
void eq_pipeline_cfg_default(eq_pipeline_cfg *cfg, const char *split, uint32_t size,
                             uint32_t global_batch, uint64_t seed);

typedef struct eq_pipeline eq_pipeline;

/* The dataset is borrowed (must outlive the pipeline).  nthreads <= 1:
 * serial; otherwise a pool of nthreads workers.  The output never depends
 * on nthreads.  Checks the config against the dataset (EQ_ERR_INVALID
 * naming the field). */
eq_pipeline *eq_pipeline_new(const eq_dataset *ds, const eq_pipeline_cfg *cfg, int nthreads,
                             eq_err *err);
void eq_pipeline_destroy(eq_pipeline **self_p);

/* Output geometry: H, W, C of each sample. */
void eq_pipeline_geometry(const eq_pipeline *p, uint32_t *h, uint32_t *w, uint32_t *c);
uint64_t eq_pipeline_steps(const eq_pipeline *p);

/* One sample, computed on the calling thread with decoder d (NULL: the
 * pipeline's first decoder; then not thread-safe).  The decoder's scratch
 * buffers are reused, so nothing is allocated per sample.  out holds H*W*C bytes.
 * *replaced = 1 when the file could not be decoded and a substitute (a
 * constant image of the ImageNet mean colour, 124/116/104, or 0 for gray)
 * was written; the path and reason are logged at WARN.  Never fails for
 * bad image data; fails only for i out of range. */
eq_status eq_pipeline_sample(eq_pipeline *p, eq_decoder *d, uint64_t epoch, size_t index,
                             uint8_t *out, int32_t *label, int *replaced, eq_err *err);

/* Caller-owned buffers for one batch of `count` positions. */
typedef struct eq_batch {
    uint8_t *images;    /* count * H * W * C */
    uint32_t *indices;  /* count: dataset index per position */
    int32_t *label_a;   /* count: own label */
    int32_t *label_b;   /* count: partner's label (= label_a when unmixed) */
    float *lambda;      /* count: weight of label_a */
    uint8_t *mix_mode;  /* count: eq_mix_mode (mixup: the trainer blends) */
    uint32_t *partner;  /* count: partner position in the global batch */
    uint32_t *replaced; /* count: positions (0..n-1) that were substituted */
    uint32_t n;         /* out: samples written (< count only at the end of
                           a val epoch) */
    uint32_t n_replaced;/* out */
} eq_batch;

/* Positions [offset, offset+count) of global step `step` in epoch `epoch`:
 * sampler -> decode/augment in parallel -> CutMix pastes (partners outside
 * the range are computed too) -> labels and plan.  Calls on one pipeline
 * are serialised.  Bad files never fail the call (see eq_pipeline_sample). */
eq_status eq_pipeline_batch(eq_pipeline *p, uint64_t epoch, uint64_t step, uint32_t offset,
                            uint32_t count, eq_batch *out, eq_err *err);

/* For callers that make the samples of a range themselves (the daemon's
 * workers, with eq_pipeline_sample): given b->n, b->indices and the unmixed
 * b->images of positions [offset, offset + b->n) of (epoch, step), apply
 * the mixup/CutMix plan: CutMix boxes are pasted from the partners' images
 * (partners outside the range are computed here with decoder d, or the
 * pipeline's first decoder when d is NULL), and label_a, label_b, lambda,
 * mix_mode, partner are filled (those left NULL are skipped).  Without
 * mixing configured it only fills the labels.  Thread-safe with distinct
 * decoders; allocates per call (batch-sized), never per sample. */
eq_status eq_pipeline_mix(eq_pipeline *p, eq_decoder *d, uint64_t epoch, uint64_t step,
                          uint32_t offset, eq_batch *b, eq_err *err);

/* Counters since creation. */
typedef struct eq_pipeline_stats {
    uint64_t samples, replaced, bytes_read;
} eq_pipeline_stats;
void eq_pipeline_get_stats(eq_pipeline *p, eq_pipeline_stats *st);

/* ======================================================================
 * Synthetic ImageFolder
 * ====================================================================== */

typedef struct eq_synth_cfg {
    uint32_t classes;         /* >= 1 */
    uint32_t train_per_class; /* files in root/train/<class>/ */
    uint32_t val_per_class;   /* files in root/val/<class>/ */
    uint32_t mean_pixels;     /* target mean width*height (0 = 200000) */
    int quality;              /* JPEG quality (0 = 90) */
    uint64_t seed;
    int nthreads;
} eq_synth_cfg;

/* Write root/{train,val}/cNNN/NNNNNNN.JPEG: 4:2:0 JPEGs whose class is
 * visible in shapes and colours (class-dependent hue, shape and position
 * statistics) over textured, noisy backgrounds, with sizes spread like
 * ImageNet's (aspect ratios 3/4..4/3, area around mean_pixels).  Output is
 * a pure function of the config.  Creates directories as needed. */
eq_status eq_synth_imagefolder(const char *root, const eq_synth_cfg *cfg, eq_err *err);

/* One synthetic RGB image in memory (caller frees *pix with free()). */
eq_status eq_synth_image(uint64_t seed, uint32_t cls, uint32_t nclasses, uint64_t index,
                         uint32_t w, uint32_t h, uint8_t **pix, eq_err *err);

#endif
