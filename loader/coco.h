/*
 * loader/coco.h -- COCO detection/segmentation samples in the loader:
 * the instances-file index (parsed once, cached in a binary file), the
 * detection transforms (shorter side S from a list, longer side <= L,
 * horizontal flip, the same geometry on boxes and masks), batch collation
 * (padding, box formats, per-instance masks for the wire) and a synthetic
 * COCO-format set.
 *
 * Geometry follows detectron2's ResizeShortestEdge + RandomFlip: the output
 * size is detectron2's get_output_shape (scale = S / short side, capped so
 * the long side is <= L, each side int(v + 0.5)); boxes scale by
 * (new_w / W, new_h / H), a flip maps x to new_w - x; polygons get the same
 * map on every vertex and are then rasterised at the output size with the
 * evaluator's rasteriser (evaluator/mask.h, pycocotools' algorithm); RLE
 * masks are resampled nearest-neighbour (PIL NEAREST's pixel-centre rule)
 * and mirrored.  Boxes are clipped to the image; a box whose clipped width
 * or height is <= min_box is dropped (counted per image).  Images are
 * resized with the loader's PIL-exact bilinear resampler.
 *
 * Randomness: per image, eq_rng_init(seed, mix(mix(mix(EQ_TAG_AUG, split),
 * epoch), image)) where `image` is the image's position in the index
 * (sorted by id), drawn in this order: the size (eq_rng_below(n_sizes),
 * only when n_sizes > 1), then the flip (eq_rng_uniform < 0.5, only when
 * hflip is on).  So a sample is a pure function of (config, seed, epoch,
 * image), whichever thread or loader makes it.
 *
 * Thread safety: an index is immutable after it is built or loaded; a
 * eq_det is immutable after eq_det_new and may be shared; an eq_det_sample
 * and an eq_decoder belong to one thread at a time.
 */
#ifndef EQ_LOADER_COCO_H
#define EQ_LOADER_COCO_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "loader/loader.h"

/* ======================================================================
 * Index of an instances file
 * ====================================================================== */

enum { EQ_COCOIDX_SEG_NONE = 0, EQ_COCOIDX_SEG_POLY = 1, EQ_COCOIDX_SEG_RLE = 2 };

typedef struct eq_cocoidx_img {
    int64_t id;
    uint32_t width, height; /* as annotated */
    uint32_t file;          /* offset of the NUL-terminated file name in names */
    uint32_t ann0, nann;    /* its annotations: ann[ann0 .. ann0 + nann) */
    uint32_t pad_;          /* zero */
} eq_cocoidx_img;

typedef struct eq_cocoidx_ann {
    double bbox[4];   /* x, y, w, h as in the file */
    uint64_t seg_off; /* POLY: first value in coords; RLE: first count in counts */
    uint32_t seg_n;   /* POLY: rings; RLE: counts */
    uint32_t seg_ring;/* POLY: first ring length in rings */
    uint16_t cls;     /* contiguous class index (categories sorted by id) */
    uint8_t crowd;    /* iscrowd != 0 */
    uint8_t seg;      /* EQ_COCOIDX_SEG_* */
    uint32_t pad_;    /* zero */
} eq_cocoidx_ann;

/* Plain data, immutable once built.  Images are sorted by id; each image's
 * annotations keep the file's order.  Polygons: ring r of an annotation
 * holds rings[seg_ring + r] values (x, y pairs) in coords, consecutively
 * from seg_off.  RLE: seg_n counts (column-major, COCO's) of the image's
 * height x width, summing to height * width. */
typedef struct eq_cocoidx {
    uint32_t n_img, n_cat;
    uint64_t n_ann, n_names, n_coords, n_rings, n_counts;
    eq_cocoidx_img *img;
    eq_cocoidx_ann *ann;
    int64_t *cat_id;   /* n_cat, increasing: class k is category cat_id[k] */
    uint64_t *cat_name;/* n_cat offsets into names */
    char *names;       /* n_names bytes of NUL-terminated strings */
    double *coords;
    uint32_t *rings;
    uint32_t *counts;
    uint64_t hash;     /* content hash (the dataset fingerprint) */
    void *block_;      /* storage (one allocation when loaded from a cache) */
} eq_cocoidx;

/* Limits against hostile files: 2^31 images, 65535 categories (cls is
 * 16-bit), names and file names shorter than 4096 bytes. */
#define EQ_COCOIDX_MAX_CATS 65535u

/* Parse an instances file (images, annotations, categories; annotations
 * may be absent, as in the test-set info files) with core/json.h.
 * Requirements, each an EQ_ERR_INVALID naming the file, the entry
 * ("annotations[12]"), its line and column and the field: integer ids,
 * unique image and category ids; images with width/height >= 1 and a
 * relative file_name without ".." components; annotations whose image_id
 * and category_id exist, bbox of 4 finite numbers, iscrowd a number or
 * bool, segmentation absent, a list of polygons (each an even number of
 * finite values) or an RLE {counts: list or compressed string, size:
 * [h, w]} whose size equals the image's and whose counts sum to h * w.
 * Caller owns the result (eq_cocoidx_destroy). */
eq_cocoidx *eq_cocoidx_parse(const char *json_path, eq_err *err);
/* Same from bytes in memory (`name` prefixes messages); for tests and
 * the fuzz target. */
eq_cocoidx *eq_cocoidx_parse_mem(const char *text, size_t len, const char *name, eq_err *err);
void eq_cocoidx_destroy(eq_cocoidx **self_p);

/* Binary cache.  Format (little endian): magic "EQCOCOIX", u32 version (1),
 * u32 0x01020304 (byte order), u64 source size, i64 source mtime (ns),
 * u64 content hash, u32 n_img, u32 n_cat, u64 n_ann, n_names, n_coords,
 * n_rings, n_counts, then the arrays img, ann, cat_id, cat_name, names,
 * coords, rings, counts, each padded to 8 bytes.  Written to path.tmp,
 * fsynced, renamed.  src_size / src_mtime_ns identify the instances file
 * the cache was made from. */
eq_status eq_cocoidx_save(const eq_cocoidx *x, const char *path, uint64_t src_size,
                          int64_t src_mtime_ns, eq_err *err);
/* Load a cache.  Checks the magic (EQ_ERR_PARSE), version and byte order
 * (EQ_ERR_VERSION, "delete it to rebuild"), every count against the file
 * size (EQ_ERR_CORRUPT: truncated), the content hash (EQ_ERR_CORRUPT) and
 * every cross reference (eq_cocoidx_validate).  *src_size / *src_mtime_ns
 * (may be NULL) receive what the cache records. */
eq_cocoidx *eq_cocoidx_load(const char *path, uint64_t *src_size, int64_t *src_mtime_ns,
                            eq_err *err);
/* Same from bytes in memory (copied); for tests and the fuzz target. */
eq_cocoidx *eq_cocoidx_load_mem(const void *data, size_t len, const char *name, eq_err *err);
/* Every offset, count, class and kind in range, ids increasing, strings
 * terminated, RLE counts summing to h * w: what makes the index safe to
 * use.  EQ_ERR_CORRUPT naming the first bad entry. */
eq_status eq_cocoidx_validate(const eq_cocoidx *x, eq_err *err);
/* The content hash as stored in x->hash. */
uint64_t eq_cocoidx_content_hash(const eq_cocoidx *x);

/* Parse json_path, using the cache at cache_path when it is valid and
 * records the instances file's current size and mtime; otherwise parse
 * and (re)write the cache (a failure to write is logged, not an error).
 * cache_path NULL: no cache.  *from_cache (may be NULL) says which. */
eq_cocoidx *eq_cocoidx_open(const char *json_path, const char *cache_path, int *from_cache,
                            eq_err *err);

static inline const char *eq_cocoidx_file(const eq_cocoidx *x, uint32_t i)
{
    return x->names + x->img[i].file;
}
static inline const char *eq_cocoidx_cat_name(const eq_cocoidx *x, uint32_t k)
{
    return x->names + x->cat_name[k];
}

/* Images with at least one usable annotation: not crowd, w > 0 and h > 0
 * (detectron2's filter of images with only crowd or empty annotations). */
int eq_cocoidx_usable(const eq_cocoidx *x, uint32_t i);

/* ======================================================================
 * Detection pipeline
 * ====================================================================== */

typedef enum eq_box_format {
    EQ_BOX_XYXY = 0, /* x0, y0, x1, y1 */
    EQ_BOX_XYWH,     /* x0, y0, w, h (COCO's) */
    EQ_BOX_CXCYWH,   /* centre x, centre y, w, h */
    EQ_BOX_FORMAT_COUNT
} eq_box_format;

const char *eq_box_format_name(eq_box_format f);
int eq_box_format_parse(const char *s, eq_box_format *out);

#define EQ_DET_MAX_SIZES 16
#define EQ_DET_MAX_SIDE 8192

typedef struct eq_det_cfg {
    uint32_t min_sizes[EQ_DET_MAX_SIZES]; /* shorter side S, one drawn per image */
    uint32_t n_min_sizes;                 /* >= 1 */
    uint32_t max_size;                    /* longer side L (<= EQ_DET_MAX_SIDE) */
    int hflip;                            /* flip with probability 1/2 */
    uint32_t pad_divisor;                 /* batch padded to multiples (0/1: none) */
    eq_box_format box_format;
    int masks;                            /* make instance masks */
    int skip_empty;                       /* leave out images without a usable
                                             annotation (train default) */
    double min_box;                       /* drop boxes with w or h <= this */
    int dct_scale;                        /* JPEG DCT scaling (EQ_DCT_*) */
    uint64_t max_pixels;                  /* decode limit (0 = default) */
    eq_sampler_cfg sampler;
} eq_det_cfg;

/* Detectron2's COCO defaults: train S = 640..800 step 32, L = 1333, flip,
 * skip empty, shuffle, drop; other splits S = 800, no flip, keep all, in
 * order, partial last batch.  pad 32, xyxy, masks on, min_box 0, POW2. */
void eq_det_cfg_default(eq_det_cfg *cfg, const char *split, uint32_t global_batch,
                        uint64_t seed);

/* Output size for an image of w x h (detectron2's get_output_shape). */
void eq_det_output_size(uint32_t w, uint32_t h, uint32_t short_side, uint32_t max_size,
                        uint32_t *ow, uint32_t *oh);

/* Wire encodings of one instance mask (doc/protocol.md): the mask of the
 * rectangle [x, x+w) x [y, y+h) of the output image, pixels in column-major
 * order (index = col * h + row, COCO's), either as a bitmap (bit i in
 * byte i/8, least significant bit first) or as run lengths (alternating
 * 0-runs and 1-runs starting with 0s, each an unsigned LEB128 varint,
 * summing to w * h), whichever is shorter (the bitmap on a tie). */
enum { EQ_DET_MASK_NONE = 0, EQ_DET_MASK_BITMAP = 1, EQ_DET_MASK_RLE = 2 };

/* One image after the transforms (buffers owned, reused across calls). */
typedef struct eq_det_sample {
    uint32_t image;        /* index position */
    int64_t image_id;
    uint32_t h, w;         /* output size */
    float scale_y, scale_x;/* output / annotated size */
    uint8_t flipped;
    uint8_t replaced;      /* unreadable file: a mean-colour image, annotations kept */
    uint32_t dropped;      /* degenerate boxes left out */
    uint8_t *pix;          /* h * w * 3 */
    size_t pix_cap;
    uint32_t n;            /* instances kept */
    uint32_t cap;
    float *boxes;          /* n * 4, xyxy in output pixels */
    int32_t *cls;          /* n */
    uint8_t *crowd;        /* n */
    uint8_t *mkind;        /* n: EQ_DET_MASK_* */
    int32_t *mrect;        /* n * 4: x, y, w, h */
    uint64_t *moff;        /* n + 1: byte offsets into mdata */
    uint8_t *mdata;
    size_t mdata_len, mdata_cap;
    uint8_t *tmp;          /* mask scratch */
    size_t tmp_cap;
} eq_det_sample;

void eq_det_sample_free(eq_det_sample *s);

typedef struct eq_det eq_det;

/* A pipeline over an index whose images live in `img_root` (borrowed, both
 * must outlive it).  Checks the config (EQ_ERR_INVALID naming the field)
 * and builds the list of served images (all, or the usable ones with
 * skip_empty; EQ_ERR_NOTFOUND if none is left). */
eq_det *eq_det_new(const eq_cocoidx *idx, const char *img_root, const eq_det_cfg *cfg,
                   eq_err *err);
void eq_det_destroy(eq_det **self_p);

const eq_det_cfg *eq_det_config(const eq_det *d);
/* Served images and their index positions. */
size_t eq_det_size(const eq_det *d);
uint32_t eq_det_image(const eq_det *d, size_t pos);
const eq_cocoidx *eq_det_index(const eq_det *d);
/* Largest padded side a batch can have: max_size rounded up to pad_divisor. */
uint32_t eq_det_max_side(const eq_det *d);

/* Make the sample of served position `pos` (0 <= pos < eq_det_size) for
 * `epoch` into *out with decoder dec.  An unreadable image gives a
 * substitute (mean colour, replaced = 1, logged); errors only for pos out
 * of range or out of memory. */
eq_status eq_det_make(const eq_det *d, eq_decoder *dec, uint64_t epoch, size_t pos,
                      eq_det_sample *out, eq_err *err);

/* A collated batch (all arrays malloc'd; eq_det_batch_free). */
typedef struct eq_det_batch {
    uint32_t n;            /* images */
    uint32_t H, W;         /* padded size */
    uint8_t *images;       /* n * H * W * 3, zero padding right and bottom */
    int64_t *image_ids;    /* n */
    int32_t *sizes;        /* n * 2: h, w before padding */
    float *scales;         /* n * 2: scale_y, scale_x */
    uint8_t *flipped;      /* n */
    int32_t *dropped;      /* n */
    int32_t *box_off;      /* n + 1 */
    uint32_t nbox;
    float *boxes;          /* nbox * 4 in the configured format */
    int32_t *classes;      /* nbox */
    uint8_t *crowd;        /* nbox */
    int masks;             /* the mask arrays below are set */
    uint8_t *mask_kind;    /* nbox */
    int32_t *mask_rect;    /* nbox * 4 */
    int64_t *mask_off;     /* nbox + 1 */
    uint8_t *mask_data;
    uint64_t mask_bytes;
    uint32_t n_replaced;
} eq_det_batch;

void eq_det_batch_free(eq_det_batch *b);

/* Collate n samples (n >= 1) into *out: pad to the largest h and w rounded
 * up to pad_divisor, boxes in cfg->box_format. */
eq_status eq_det_collate(const eq_det *d, const eq_det_sample *s, uint32_t n, eq_det_batch *out,
                         eq_err *err);

/* Positions [offset, offset + count) of (epoch, step) of the pipeline's
 * sampler, made with `pool` (NULL: serially, one decoder per pool worker,
 * `decs` of eq_pool_size entries) and collated.  Output independent of
 * the pool.  For tests and tools; the daemon makes samples itself. */
struct eq_pool;
eq_status eq_det_batch_make(const eq_det *d, struct eq_pool *pool, eq_decoder **decs,
                            uint64_t epoch, uint64_t step, uint32_t offset, uint32_t count,
                            eq_det_batch *out, eq_err *err);

/* Decode a wire mask (kind, w x h, `len` bytes) into out[w * h] (0/1,
 * column-major).  EQ_ERR_PROTO if the bytes do not describe exactly
 * w * h pixels. */
eq_status eq_det_mask_decode(uint8_t kind, uint32_t w, uint32_t h, const uint8_t *data,
                             size_t len, uint8_t *out, eq_err *err);

/* ======================================================================
 * Synthetic COCO-format set
 * ====================================================================== */

typedef struct eq_coco_synth_cfg {
    uint32_t train_images, val_images;
    uint32_t classes;      /* 1..80 */
    uint32_t min_side, max_side; /* image sides drawn in [min, max] (0: 160, 320) */
    int quality;           /* JPEG quality (0 = 92) */
    uint64_t seed;
} eq_coco_synth_cfg;

/* Write root/annotations/instances_{train,val}2017.json and
 * root/{train,val}2017/NNNNNNNNNNNN.jpg: filled polygons (triangles,
 * quadrilaterals, pentagons) in class colours on a gradient, each
 * annotated with its polygon, its exact bounding box (min/max of the
 * vertices) and area; the shapes' pixels are exactly the evaluator's
 * rasterisation of the polygon.  Every 5th image also has a crowd region
 * (RLE counts), every 7th image has no annotation.  Pure function of the
 * config. */
eq_status eq_coco_synth(const char *root, const eq_coco_synth_cfg *cfg, eq_err *err);

#endif
