/*
 * evaluator/mask.h -- run-length encoded binary masks, bit-identical to
 * pycocotools' common/maskApi.c (cocoapi 8c9bcc3; ../shared/COCOEVAL.md §8).
 *
 * An RLE is (h, w, counts): pixels are scanned column by column (pixel of
 * row y, column x has index x*h + y); counts alternate runs of 0s and 1s,
 * starting with 0s (a leading 0 count when the first pixel is set).  A
 * well-formed RLE's counts sum to h*w; eq_rle_check() verifies it, and the
 * functions that walk runs (decode, IoU) require it (pycocotools writes out
 * of bounds or loops forever otherwise).  An RLE with no counts (m == 0) is
 * accepted everywhere as an empty mask.
 *
 * Sizes: h*w must fit in 32 bits (counts are uint32 as in the reference).
 *
 * Memory: an eq_rle owns its counts (malloc'd); eq_rle_free() releases them
 * and zeroes the struct.  Functions that produce an RLE write a fresh one
 * into *out (whatever *out held is not freed).  All functions are pure and
 * thread-safe.
 */
#ifndef EQ_MASK_H
#define EQ_MASK_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

typedef struct eq_rle {
    uint32_t h, w;   /* mask size */
    size_t m;        /* number of counts */
    uint32_t *cnts;  /* run lengths, owned */
} eq_rle;

/* Release the counts and zero the struct.  NULL-safe. */
void eq_rle_free(eq_rle *r);
/* Deep copy. EQ_ERR_NOMEM on failure. */
eq_status eq_rle_copy(const eq_rle *src, eq_rle *out, eq_err *err);
/* Wrap a copy of `m` counts.  EQ_ERR_INVALID if h*w exceeds 32 bits. */
eq_status eq_rle_init(eq_rle *out, uint32_t h, uint32_t w, const uint32_t *cnts, size_t m,
                      eq_err *err);
/* EQ_OK if the counts sum to h*w (or there are none); EQ_ERR_INVALID with
 * the two numbers otherwise. */
eq_status eq_rle_check(const eq_rle *r, eq_err *err);

/* Encode an h*w mask stored column-major (Fortran order, as pycocotools
 * requires); any nonzero byte is foreground. */
eq_status eq_rle_encode(const uint8_t *mask, uint32_t h, uint32_t w, eq_rle *out, eq_err *err);
/* Decode into `mask` (h*w bytes, column-major, 0/1).  Fails (EQ_ERR_INVALID)
 * without writing past h*w when the counts do not sum to h*w. */
eq_status eq_rle_decode(const eq_rle *r, uint8_t *mask, eq_err *err);

/* Foreground pixel count (sum of the odd counts, uint32 arithmetic). */
uint32_t eq_rle_area(const eq_rle *r);

/* Bounding box [x, y, w, h] exactly as the reference rleToBbox, including
 * its handling of interior zero-length runs (quirk Q6: such user-supplied
 * counts give a wrong box) -- this box feeds loadRes and the IoU shortcut. */
void eq_rle_to_bbox(const eq_rle *r, double bb[4]);

/* Union (intersect = 0) or intersection (1) of n RLEs with maximal runs.
 * n == 0 gives a 0x0 mask; n == 1 a copy; if any size differs from the
 * first's the result is an empty 0x0 mask (quirk Q7). */
eq_status eq_rle_merge(const eq_rle *rs, size_t n, int intersect, eq_rle *out, eq_err *err);

/* Rasterise a polygon of k vertices xy[2k] = x0,y0,x1,y1,... with the
 * reference algorithm (5x upsampling, truncating rounding, column
 * crossings), COCOEVAL.md §8.5.  k == 0 gives an empty mask.  Coordinates
 * must be finite with |5*v| < 2^30 (EQ_ERR_INVALID otherwise: the reference
 * converts them to int, undefined beyond that). */
eq_status eq_rle_fr_poly(const double *xy, size_t k, uint32_t h, uint32_t w, eq_rle *out,
                         eq_err *err);
/* Box [x, y, w, h] as the polygon (x,y),(x,y+h),(x+w,y+h),(x+w,y). */
eq_status eq_rle_fr_bbox(const double bb[4], uint32_t h, uint32_t w, eq_rle *out, eq_err *err);

/* Compressed string (COCOEVAL.md §8.3): characters '0'..'o'.  Returns a
 * malloc'd NUL-terminated string (length in *len if non-NULL) that the
 * caller frees, or NULL on allocation failure. */
char *eq_rle_to_string(const eq_rle *r, size_t *len);
/* Parse `len` bytes of a compressed string.  Characters outside '0'..'o',
 * a string ending inside a value, or a value wider than 64 bits are
 * EQ_ERR_PARSE errors naming the offset.  The counts are not checked
 * against h*w (call eq_rle_check). */
eq_status eq_rle_fr_string(const char *s, size_t len, uint32_t h, uint32_t w, eq_rle *out,
                           eq_err *err);

/* Box IoU of one result box d and one GT box g ([x, y, w, h]); a crowd GT
 * uses the result's area as the union (maskApi.c bbIou). */
double eq_bbox_iou(const double d[4], const double g[4], int crowd);
/* Mask IoU as rleIou: 0 if the boxes (precomputed eq_rle_to_bbox, may be
 * NULL to compute them) do not overlap, -1 if the sizes differ, else
 * intersection/union (union = result area for a crowd GT).  Both RLEs must
 * pass eq_rle_check. */
double eq_rle_iou(const eq_rle *d, const eq_rle *g, int crowd, const double *dbb,
                  const double *gbb);
/* Matrix forms: o[i*n + j] = IoU(dt[i], gt[j]) for m results, n GTs
 * (row-major results x GTs, the layout pycocotools returns).  iscrowd may
 * be NULL. */
void eq_bbox_iou_matrix(const double *dt, size_t m, const double *gt, size_t n,
                        const uint8_t *iscrowd, double *o);
eq_status eq_rle_iou_matrix(const eq_rle *dt, size_t m, const eq_rle *gt, size_t n,
                            const uint8_t *iscrowd, double *o, eq_err *err);

#endif
