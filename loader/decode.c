/*
 * loader/decode.c -- JPEG (libjpeg API of libjpeg-turbo) and PNG (libpng's
 * simplified API) to RGB, with DCT-domain scaling and crop-aware decode.
 *
 * libjpeg's default error handler calls exit(); ours formats the message
 * and longjmps back to the call, which aborts the decompressor (it stays
 * reusable).  Warnings are ignored except "premature end of data", which
 * makes a truncated file an error rather than a grey-padded image.  A
 * progress monitor stops progressive files with more than 500 scans (the
 * TJFLAG_LIMITSCANS rule), and the pixel limit is checked on the header,
 * before any image-sized allocation.
 *
 * Decode options fixed here (they are part of the pipeline fingerprint):
 * JDCT_ISLOW, fancy upsampling on (libjpeg's defaults, what PIL uses).
 */
#include "loader/loader.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

#include "loader/loader_internal.h"

/* Extra scaled pixels decoded around a requested region, so that the rows
 * and columns the caller uses are never the edge of the decoded block
 * (libjpeg's fancy upsampling replicates edge chroma at a crop border). */
#define S_MARGIN 8
#define S_MAX_SCANS 500

typedef struct s_jerr {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
} s_jerr;

struct eq_decoder {
    struct jpeg_decompress_struct cinfo;
    s_jerr jerr;
    struct jpeg_progress_mgr progress;
    int cmyk_last;
    eq_status fail_code; /* status to report after a longjmp */
    uint64_t max_pixels;
    uint8_t *pix; /* decoded region, RGB */
    size_t pix_cap;
    uint8_t *row; /* CMYK rows */
    size_t row_cap;
    JSAMPROW *rowp; /* row pointers */
    size_t rowp_cap;
    eq_scratch scratch;
};

static void s_error_exit(j_common_ptr c)
{
    s_jerr *e = (s_jerr *)c->err;
    (*c->err->format_message)(c, e->msg);
    longjmp(e->jb, 1);
}

static void s_output_message(j_common_ptr c) { (void)c; }

static void s_emit_message(j_common_ptr c, int level)
{
    if (level < 0) {
        c->err->num_warnings++;
        /* A truncated file: libjpeg would pad it with grey; we refuse. */
        if (c->err->msg_code == JWRN_JPEG_EOF) s_error_exit(c);
    }
}

static void s_progress(j_common_ptr c)
{
    if (c->is_decompressor) {
        j_decompress_ptr d = (j_decompress_ptr)c;
        if (d->input_scan_number > S_MAX_SCANS) {
            s_jerr *e = (s_jerr *)c->err;
            snprintf(e->msg, sizeof e->msg, "progressive JPEG with more than %d scans",
                     S_MAX_SCANS);
            longjmp(e->jb, 1);
        }
    }
}

eq_decoder *eq_decoder_new(uint64_t max_pixels, eq_err *err)
{
    eq_decoder *volatile d = calloc(1, sizeof *d);
    if (!d) {
        eq_err_set(err, EQ_ERR_NOMEM, "decoder: out of memory");
        return NULL;
    }
    d->max_pixels = max_pixels ? max_pixels : EQ_DECODE_MAX_PIXELS_DEFAULT;
    d->cinfo.err = jpeg_std_error(&d->jerr.pub);
    d->jerr.pub.error_exit = s_error_exit;
    d->jerr.pub.output_message = s_output_message;
    d->jerr.pub.emit_message = s_emit_message;
    if (setjmp(d->jerr.jb)) {
        eq_err_set(err, EQ_ERR_NOMEM, "decoder: libjpeg: %s", d->jerr.msg);
        free(d);
        return NULL;
    }
    jpeg_create_decompress(&d->cinfo);
    d->progress.progress_monitor = s_progress;
    d->cinfo.progress = &d->progress;
    return d;
}

void eq_decoder_destroy(eq_decoder **self_p)
{
    if (!self_p || !*self_p) return;
    eq_decoder *d = *self_p;
    jpeg_destroy_decompress(&d->cinfo);
    free(d->pix);
    free(d->row);
    free(d->rowp);
    free(d->scratch.file);
    free(d->scratch.tmp);
    free(d);
    *self_p = NULL;
}

int eq_decoder_is_cmyk(const eq_decoder *d) { return d->cmyk_last; }

eq_scratch *eq_decoder_scratch(eq_decoder *d) { return &d->scratch; }

eq_img_format eq_image_sniff(const uint8_t *data, size_t len)
{
    if (len >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return EQ_IMG_JPEG;
    if (len >= 8 && !memcmp(data, "\x89PNG\r\n\x1a\n", 8)) return EQ_IMG_PNG;
    return EQ_IMG_UNKNOWN;
}

static eq_status s_grow(uint8_t **buf, size_t *cap, size_t need, eq_err *err)
{
    if (need <= *cap) return EQ_OK;
    uint8_t *nb = realloc(*buf, need);
    if (!nb) return eq_err_set(err, EQ_ERR_NOMEM, "decoder: cannot allocate %zu bytes", need);
    *buf = nb;
    *cap = need;
    return EQ_OK;
}

/* ------------------------------------------------------------------ JPEG */

/* Body of s_jpeg: any libjpeg error longjmps out to s_jpeg. */
static eq_status s_jpeg_body(eq_decoder *d, const uint8_t *data, size_t len, int header_only,
                             uint32_t num, uint32_t rx0, uint32_t ry0, uint32_t rx1, uint32_t ry1,
                             eq_decoded *out, uint32_t *fw, uint32_t *fh, eq_err *err)
{
    struct jpeg_decompress_struct *c = &d->cinfo;
    if (len > (size_t)(unsigned long)-1) len = (unsigned long)-1;
    jpeg_mem_src(c, data, (unsigned long)len);
    jpeg_read_header(c, TRUE);
    uint64_t px = (uint64_t)c->image_width * c->image_height;
    if (px > d->max_pixels) {
        jpeg_abort_decompress(c);
        return eq_err_set(err, EQ_ERR_LIMIT, "JPEG: %u x %u = %llu pixels exceeds the limit %llu",
                          c->image_width, c->image_height, (unsigned long long)px,
                          (unsigned long long)d->max_pixels);
    }
    if (fw) *fw = c->image_width;
    if (fh) *fh = c->image_height;
    if (header_only) {
        jpeg_abort_decompress(c);
        return EQ_OK;
    }
    int cmyk = c->jpeg_color_space == JCS_CMYK || c->jpeg_color_space == JCS_YCCK;
    int adobe_inverted = cmyk && c->saw_Adobe_marker;
    d->cmyk_last = cmyk;
    c->out_color_space = cmyk ? JCS_CMYK : JCS_EXT_RGB;
    if (num < 1 || num > 8) num = 8;
    c->scale_num = num;
    c->scale_denom = 8;
    c->dct_method = JDCT_ISLOW;
    c->do_fancy_upsampling = TRUE;
    jpeg_start_decompress(c);
    uint32_t sw = c->output_width, sh = c->output_height;
    /* clip + margin */
    if (rx1 > sw) rx1 = sw;
    if (ry1 > sh) ry1 = sh;
    if (rx0 >= rx1 || ry0 >= ry1) {
        d->fail_code = EQ_ERR_INVALID;
        snprintf(d->jerr.msg, sizeof d->jerr.msg, "empty region [%u,%u)x[%u,%u) in %ux%u", rx0,
                 rx1, ry0, ry1, sw, sh);
        longjmp(d->jerr.jb, 1);
    }
    rx0 = rx0 > S_MARGIN ? rx0 - S_MARGIN : 0;
    ry0 = ry0 > S_MARGIN ? ry0 - S_MARGIN : 0;
    rx1 = rx1 + S_MARGIN < sw ? rx1 + S_MARGIN : sw;
    ry1 = ry1 + S_MARGIN < sh ? ry1 + S_MARGIN : sh;
    JDIMENSION xoff = rx0, cw = rx1 - rx0;
    if (xoff > 0 || cw < sw) jpeg_crop_scanline(c, &xoff, &cw);
    uint32_t rows = ry1 - ry0;
    size_t stride = (size_t)cw * 3;
    /* CMYK rows land in d->row (4 bytes per pixel) and are converted after. */
    size_t rstride = cmyk ? (size_t)cw * 4 : stride;
    if (s_grow(&d->pix, &d->pix_cap, stride * rows, err) != EQ_OK ||
        (cmyk && s_grow(&d->row, &d->row_cap, rstride * rows, err) != EQ_OK) ||
        s_grow((uint8_t **)&d->rowp, &d->rowp_cap, sizeof(JSAMPROW) * rows, err) != EQ_OK) {
        jpeg_abort_decompress(c);
        return err ? err->code : EQ_ERR_NOMEM;
    }
    uint8_t *base = cmyk ? d->row : d->pix;
    for (uint32_t r = 0; r < rows; r++) d->rowp[r] = base + rstride * r;
    if (ry0 > 0) {
        JDIMENSION skipped = jpeg_skip_scanlines(c, ry0);
        if (skipped != ry0) {
            snprintf(d->jerr.msg, sizeof d->jerr.msg, "skipped %u of %u rows", skipped, ry0);
            longjmp(d->jerr.jb, 1);
        }
    }
    /* Many rows per call: libjpeg then writes upsampled row groups straight
     * into our rows instead of through its spare-row buffer. */
    for (uint32_t done = 0; done < rows;) {
        JDIMENSION got = jpeg_read_scanlines(c, d->rowp + done, rows - done);
        if (got == 0) {
            snprintf(d->jerr.msg, sizeof d->jerr.msg, "short read at row %u", ry0 + done);
            longjmp(d->jerr.jb, 1);
        }
        done += got;
    }
    if (cmyk) {
        /* PIL's CMYK -> RGB: (255 - c) * (255 - k) / 255 on ink values;
         * Adobe files store inverted ink. */
        for (uint32_t r = 0; r < rows; r++) {
            const uint8_t *sp = d->row + rstride * r;
            uint8_t *dst = d->pix + stride * r;
            for (uint32_t x = 0; x < cw; x++, sp += 4) {
                unsigned cc = sp[0], mm = sp[1], yy = sp[2], kk = sp[3];
                if (!adobe_inverted) {
                    cc = 255 - cc;
                    mm = 255 - mm;
                    yy = 255 - yy;
                    kk = 255 - kk;
                }
                dst[3 * x + 0] = (uint8_t)((cc * kk + 127) / 255);
                dst[3 * x + 1] = (uint8_t)((mm * kk + 127) / 255);
                dst[3 * x + 2] = (uint8_t)((yy * kk + 127) / 255);
            }
        }
    }
    if (ry1 == sh)
        jpeg_finish_decompress(c);
    else
        jpeg_abort_decompress(c);
    out->pix = d->pix;
    out->x0 = xoff;
    out->w = cw;
    out->y0 = ry0;
    out->h = rows;
    out->sw = sw;
    out->sh = sh;
    out->full_w = c->image_width;
    out->full_h = c->image_height;
    out->scale_num = num;
    return EQ_OK;
}

static eq_status s_jpeg(eq_decoder *d, const uint8_t *data, size_t len, int header_only,
                        uint32_t num, uint32_t rx0, uint32_t ry0, uint32_t rx1, uint32_t ry1,
                        eq_decoded *out, uint32_t *fw, uint32_t *fh, eq_err *err)
{
    d->jerr.msg[0] = '\0';
    d->jerr.pub.num_warnings = 0;
    d->fail_code = EQ_ERR_CORRUPT;
    if (setjmp(d->jerr.jb)) {
        jpeg_abort_decompress(&d->cinfo);
        return eq_err_set(err, d->fail_code, "JPEG: %s", d->jerr.msg);
    }
    return s_jpeg_body(d, data, len, header_only, num, rx0, ry0, rx1, ry1, out, fw, fh, err);
}

/* ------------------------------------------------------------------- PNG */

static eq_status s_png(eq_decoder *d, const uint8_t *data, size_t len, int header_only,
                       eq_decoded *out, uint32_t *fw, uint32_t *fh, eq_err *err)
{
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(&img, data, len)) {
        eq_status st = eq_err_set(err, EQ_ERR_CORRUPT, "PNG: %s", img.message);
        png_image_free(&img);
        return st;
    }
    uint64_t px = (uint64_t)img.width * img.height;
    if (px > d->max_pixels) {
        png_image_free(&img);
        return eq_err_set(err, EQ_ERR_LIMIT, "PNG: %u x %u = %llu pixels exceeds the limit %llu",
                          img.width, img.height, (unsigned long long)px,
                          (unsigned long long)d->max_pixels);
    }
    if (fw) *fw = img.width;
    if (fh) *fh = img.height;
    if (header_only) {
        png_image_free(&img);
        return EQ_OK;
    }
    img.format = PNG_FORMAT_RGB;
    size_t need = (size_t)PNG_IMAGE_SIZE(img);
    if (s_grow(&d->pix, &d->pix_cap, need, err) != EQ_OK) {
        png_image_free(&img);
        return err ? err->code : EQ_ERR_NOMEM;
    }
    png_color black = {0, 0, 0};
    if (!png_image_finish_read(&img, &black, d->pix, 0, NULL)) {
        eq_status st = eq_err_set(err, EQ_ERR_CORRUPT, "PNG: %s", img.message);
        png_image_free(&img);
        return st;
    }
    out->pix = d->pix;
    out->x0 = out->y0 = 0;
    out->w = out->sw = out->full_w = img.width;
    out->h = out->sh = out->full_h = img.height;
    out->scale_num = 8;
    png_image_free(&img);
    d->cmyk_last = 0;
    return EQ_OK;
}

/* ---------------------------------------------------------------- public */

eq_status eq_decode_info(eq_decoder *d, const uint8_t *data, size_t len, eq_img_format *fmt,
                         uint32_t *width, uint32_t *height, eq_err *err)
{
    eq_img_format f = eq_image_sniff(data, len);
    if (fmt) *fmt = f;
    if (f == EQ_IMG_JPEG) return s_jpeg(d, data, len, 1, 8, 0, 0, 0, 0, NULL, width, height, err);
    if (f == EQ_IMG_PNG) return s_png(d, data, len, 1, NULL, width, height, err);
    if (len == 0) return eq_err_set(err, EQ_ERR_PARSE, "empty file");
    return eq_err_set(err, EQ_ERR_PARSE, "not a JPEG or PNG file (first bytes %02x %02x %02x)",
                      data[0], len > 1 ? data[1] : 0, len > 2 ? data[2] : 0);
}

eq_status eq_decode_region(eq_decoder *d, const uint8_t *data, size_t len, uint32_t scale_num,
                           uint32_t rx0, uint32_t ry0, uint32_t rx1, uint32_t ry1,
                           eq_decoded *out, eq_err *err)
{
    eq_img_format f = eq_image_sniff(data, len);
    if (f == EQ_IMG_JPEG)
        return s_jpeg(d, data, len, 0, scale_num, rx0, ry0, rx1, ry1, out, NULL, NULL, err);
    if (f == EQ_IMG_PNG) return s_png(d, data, len, 0, out, NULL, NULL, err);
    return eq_decode_info(d, data, len, NULL, NULL, NULL, err);
}

eq_status eq_decode_full(eq_decoder *d, const uint8_t *data, size_t len, uint32_t scale_num,
                         eq_decoded *out, eq_err *err)
{
    return eq_decode_region(d, data, len, scale_num, 0, 0, UINT32_MAX, UINT32_MAX, out, err);
}
