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
#include <jpegint.h> /* struct jpeg_entropy_decoder: see s_fast_install */
#include <png.h>

#include "loader/loader_internal.h"

/* Extra scaled pixels decoded around a requested region, so that the rows
 * and columns the caller uses are never the edge of the decoded block
 * (libjpeg's fancy upsampling replicates edge chroma at a crop border). */
#define S_MARGIN 8
#define S_MAX_SCANS 500

/* ------------------------------------------------ baseline Huffman decoder
 *
 * perf put libjpeg-turbo's Huffman decoder at 60-75% of a sample's CPU
 * time on ImageNet-like files (~4.5 bits per pixel): it cannot be skipped
 * for the rows above and inside a crop, and its 8-bit lookahead decodes a
 * symbol, then its extra bits, in separate steps.  For baseline sequential
 * single-scan files without restart markers we put our own decode_mcu in
 * libjpeg's entropy module after jpeg_start_decompress: the same
 * coefficients from the same bits (DC prediction in unsigned arithmetic as
 * libjpeg-turbo 2.1 does), with 11-bit tables whose entries resolve one
 * or two whole AC symbols (code, run and sign-extended value) or a DC
 * difference per load, and 8 bytes at a time read into a 64-bit buffer
 * when they hold no 0xFF.  Anything unusual (a code no table
 * has, bits needed past a marker, reaching the end of the data, FF FF fill
 * bytes) abandons the file's decode and runs it again with libjpeg's own
 * decoder, so corrupt files give exactly libjpeg's result.
 * check_loader compares both decoders' pixels on many files. */
#define S_LB 11 /* lookup bits */

/* One AC table entry: the next S_LB bits resolve one or two whole symbols
 * (code and extra bits) when they fit.  n: the bits of both (0: the slow
 * path, for a code or value that does not fit); n1: the first's alone; r1:
 * its run; d2: 0 for one symbol, else the second's run + 1, plus S_EOB when
 * the entry ends the block (an end-of-block code alone or after the first
 * symbol).  v1, v2: the values, sign-extended; with one symbol v2 = v1 and
 * d2 & 31 = 0, so the second store repeats the first (no branch). */
typedef struct s_acent {
    uint8_t n, n1, r1, d2;
    int16_t v1, v2;
} s_acent;
#define S_EOB 0x80

typedef struct s_htab {
    s_acent ac[1 << S_LB];     /* AC tables */
    int32_t dc[1 << S_LB];     /* DC tables: diff * 256 + code and extra bits; 0: slow path */
    uint16_t lut[1 << S_LB];   /* len << 8 | symbol; len 0: code longer than S_LB */
    int32_t maxcode[18];       /* longest code of each length (-1: none) */
    int32_t valoff[18];        /* symbol index of code c of length l: c + valoff[l] */
    uint8_t val[256];
    uint8_t bits[17];          /* the JHUFF_TBL these were built from */
    uint8_t huffval[256];
    int valid, is_ac;
} s_htab;

typedef struct s_huff {
    const uint8_t *p, *end;
    uint64_t buf;  /* next bit at bit 63; bits below nbits are 0 */
    int nbits;     /* bits in buf, counting `fake` zero bits appended */
    int fake;      /* zero bits appended past a marker / the end of data */
    int stopped;   /* a marker or the end of data was reached */
    int dc[4];     /* DC predictions per component of the scan */
    const s_htab *dct[D_MAX_BLOCKS_IN_MCU], *act[D_MAX_BLOCKS_IN_MCU];
    int comp[D_MAX_BLOCKS_IN_MCU];
    int nblk;
    s_htab tab[8]; /* DC 0-3, AC 0-3 */
} s_huff;

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
    int fast_huff;      /* use s_huff where it applies (default 1) */
    int fast_try;       /* this attempt may install it */
    uint64_t n_fast, n_fallback;
    s_huff *huff;
};

#define S_JMP_ERROR 1
#define S_JMP_RETRY 2 /* s_huff met something unusual: decode again with libjpeg's */

static void s_error_exit(j_common_ptr c)
{
    s_jerr *e = (s_jerr *)c->err;
    (*c->err->format_message)(c, e->msg);
    longjmp(e->jb, S_JMP_ERROR);
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
    d->fast_huff = 1;
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
    free(d->huff);
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

void eq_decoder_fast_huffman(eq_decoder *d, int enable, uint64_t *n_fast, uint64_t *n_fallback)
{
    if (enable >= 0) d->fast_huff = enable != 0;
    if (n_fast) *n_fast = d->n_fast;
    if (n_fallback) *n_fallback = d->n_fallback;
}

/* An AC symbol as the decode loop reads it: size 0 with a run other than
 * 15 ends the block in libjpeg (only run 0 is a valid EOB, but a table may
 * hold the others), so all of them become 0, the loop's EOB. */
static inline int s_ac_sym(int sym) { return (sym & 15) == 0 && sym >> 4 != 15 ? 0 : sym; }

/* HUFF_EXTEND: the value of size s (1-15) whose extra bits are v */
static inline int s_extend(uint32_t v, int s)
{
    return (int)v < (1 << (s - 1)) ? (int)v + (int)(-1u << s) + 1 : (int)v;
}

/* Build t from a JHUFF_TBL (libjpeg validated it in jpeg_make_d_derived_tbl
 * at start_pass: counts fit, codes do not overflow, DC symbols <= 15). */
static void s_htab_build(s_htab *t, const JHUFF_TBL *h, int ac)
{
    if (t->valid && t->is_ac == ac && !memcmp(t->bits, h->bits, 17) &&
        !memcmp(t->huffval, h->huffval, 256))
        return;
    memcpy(t->bits, h->bits, 17);
    memcpy(t->huffval, h->huffval, 256);
    memcpy(t->val, h->huffval, 256);
    t->is_ac = ac;
    memset(t->lut, 0, sizeof t->lut);
    int32_t code = 0;
    int k = 0;
    for (int l = 1; l <= 16; l++) {
        int n = h->bits[l];
        t->valoff[l] = k - code;
        for (int i = 0; i < n; i++, k++, code++) {
            if (l > S_LB) continue;
            uint32_t lo = (uint32_t)code << (S_LB - l), hi = (uint32_t)(code + 1) << (S_LB - l);
            for (uint32_t e = lo; e < hi; e++) t->lut[e] = (uint16_t)(l << 8 | h->huffval[k]);
        }
        t->maxcode[l] = n ? code - 1 : -1;
        code <<= 1;
    }
    t->maxcode[17] = 0x7fffffff;
    const uint32_t mask = (1u << S_LB) - 1;
    for (uint32_t e = 0; e <= mask; e++) {
        int l1 = t->lut[e] >> 8, sym = t->lut[e] & 0xff;
        if (!ac) {
            /* DC: code and extra bits in S_LB bits */
            int s = sym & 15;
            t->dc[e] = 0;
            if (l1 && l1 + s <= S_LB)
                t->dc[e] = (s ? s_extend((e >> (S_LB - l1 - s)) & ((1u << s) - 1), s) : 0) * 256 +
                           l1 + s;
            continue;
        }
        s_acent *a = &t->ac[e];
        memset(a, 0, sizeof *a);
        sym = s_ac_sym(sym);
        int s1 = sym & 15;
        if (!l1 || l1 + s1 > S_LB) continue; /* slow path */
        a->n = a->n1 = (uint8_t)(l1 + s1);
        if (!sym) { /* end of block */
            a->d2 = S_EOB;
            continue;
        }
        a->r1 = (uint8_t)(sym >> 4);
        a->v1 = a->v2 = (int16_t)(s1 ? s_extend((e >> (S_LB - l1 - s1)) & ((1u << s1) - 1), s1) : 0);
        /* a second symbol wholly inside the remaining bits */
        int rem = S_LB - a->n1;
        uint32_t e2 = (e << a->n1) & mask;
        int l2 = t->lut[e2] >> 8, sym2 = s_ac_sym(t->lut[e2] & 0xff), s2 = sym2 & 15;
        if (!l2 || l2 + s2 > rem) continue;
        a->n = (uint8_t)(a->n1 + l2 + s2);
        if (!sym2) {
            a->d2 = S_EOB;
            continue;
        }
        a->d2 = (uint8_t)((sym2 >> 4) + 1);
        a->v2 = (int16_t)(s2 ? s_extend((e2 >> (S_LB - l2 - s2)) & ((1u << s2) - 1), s2) : 0);
    }
    t->valid = 1;
}

static void s_huff_refill(eq_decoder *d, s_huff *h)
{
    if (!h->stopped && h->end - h->p >= 8 && h->nbits < 56) {
        uint64_t w;
        memcpy(&w, h->p, 8);
        uint64_t x = ~w; /* a 0xFF byte of w is a zero byte of x */
        if (!((x - 0x0101010101010101ull) & ~x & 0x8080808080808080ull)) {
            int take = (63 - h->nbits) >> 3;
            w = __builtin_bswap64(w) & (~0ull << (64 - 8 * take));
            h->buf |= w >> h->nbits;
            h->nbits += 8 * take;
            h->p += take;
            return;
        }
    }
    while (h->nbits < 56) { /* at most 63 bits unless stopped: S_REFILL shifts by nbits */
        if (!h->stopped) {
            if (h->p >= h->end) {
                /* no marker before the end of the data: libjpeg's source
                 * manager warns there (an error for us) as soon as its
                 * greedy refill gets there, which may be before the bits
                 * are needed: let it decide */
                longjmp(d->jerr.jb, S_JMP_RETRY);
            } else if (h->p[0] != 0xFF) {
                h->buf |= (uint64_t)h->p[0] << (56 - h->nbits);
                h->p++;
                h->nbits += 8;
                continue;
            } else if (h->p + 1 >= h->end) {
                longjmp(d->jerr.jb, S_JMP_RETRY); /* a last byte 0xFF: as above */
            } else if (h->p[1] == 0x00) {
                h->buf |= (uint64_t)0xFF << (56 - h->nbits);
                h->p += 2;
                h->nbits += 8;
                continue;
            } else if (h->p[1] == 0xFF) {
                longjmp(d->jerr.jb, S_JMP_RETRY); /* fill bytes: libjpeg's job */
            } else {
                h->stopped = 1; /* a marker: the end of the scan's data */
            }
        }
        /* zeros from here on, as libjpeg; using them is an error below */
        h->fake += 64 - h->nbits;
        h->nbits = 64;
    }
}

/* Code of more than S_LB bits at the top of buf: its symbol and length. */
static int s_huff_slow(eq_decoder *d, const s_htab *t, uint64_t buf, int *len);

static int s_huff_slow(eq_decoder *d, const s_htab *t, uint64_t buf, int *len)
{
    for (int l = S_LB + 1; l <= 16; l++) {
        int32_t code = (int32_t)(buf >> (64 - l));
        if (code <= t->maxcode[l]) {
            *len = l;
            return t->val[(code + t->valoff[l]) & 0xff];
        }
    }
    longjmp(d->jerr.jb, S_JMP_RETRY); /* no such code */
}

/* zigzag -> natural order, with libjpeg's 16 extra entries: a corrupt run
 * past coefficient 63 stores at 63, as jpeg_natural_order makes it do */
static const uint8_t s_zz[80] = {0,  1,  8,  16, 9,  2,  3,  10, 17, 24, 32, 25, 18, 11, 4,  5,
                                 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6,  7,  14, 21, 28,
                                 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
                                 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
                                 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63};

static boolean s_fast_mcu(j_decompress_ptr c, JBLOCKROW *MCU_data)
{
    eq_decoder *d = (eq_decoder *)c; /* cinfo is the first member */
    s_huff *h = d->huff;
    uint64_t buf = h->buf;
    int nbits = h->nbits;
    const uint8_t *p = h->p;
    /* the 8-byte refill reads [p, p + 8): never at or past a marker */
    const uint8_t *lim = h->stopped || h->end - p < 8 ? p - 1 : h->end - 8;
    JBLOCK skip; /* jpeg_skip_scanlines passes no blocks: decode into this */
    /* At least 56 bits in buf, without a branch on nbits: the next 8 bytes
     * when none is 0xFF, OR-ed in at bit nbits.  Bytes it reads past those
     * it counts are OR-ed again at the same place by the next refill
     * (bits below nbits are the data's next bits, not zeros), which
     * changes nothing.  Else (0xFF, a marker, the end) byte by byte. */
#define S_REFILL()                                                                                 \
    do {                                                                                           \
        uint64_t w_, x_;                                                                           \
        if (__builtin_expect(p <= lim, 1) && (memcpy(&w_, p, 8), x_ = ~w_,                        \
            !((x_ - 0x0101010101010101ull) & ~x_ & 0x8080808080808080ull))) {                     \
            buf |= __builtin_bswap64(w_) >> nbits;                                                 \
            p += 7 - (nbits >> 3);                                                                 \
            nbits |= 56;                                                                           \
        } else {                                                                                   \
            h->buf = buf;                                                                          \
            h->nbits = nbits;                                                                      \
            h->p = p;                                                                              \
            s_huff_refill(d, h);                                                                   \
            buf = h->buf;                                                                          \
            nbits = h->nbits;                                                                      \
            p = h->p;                                                                              \
            lim = h->stopped || h->end - p < 8 ? p - 1 : h->end - 8;                               \
        }                                                                                          \
    } while (0)
#define S_SKIP(n)                                                                                  \
    do {                                                                                           \
        buf <<= (n);                                                                               \
        nbits -= (n);                                                                              \
    } while (0)
    /* One table entry: one or two symbols with their values (at most
     * S_LB bits).  A ZRL (run 15, size 0) stores a 0 at the last zero of
     * its run, which changes nothing.  A symbol that reaches coefficient
     * 63 ends the block: the entry's second symbol is not read. */
#define S_STEP()                                                                                   \
    do {                                                                                           \
        const s_acent *a_ = &t->ac[buf >> (64 - S_LB)];                                            \
        uint32_t n_ = a_->n;                                                                       \
        if (__builtin_expect(n_ == 0, 0)) goto slow;                                               \
        int p1_ = k + a_->r1;                                                                      \
        if (__builtin_expect(p1_ >= 63, 0)) {                                                      \
            S_SKIP(a_->n1);                                                                        \
            blk[s_zz[p1_]] = a_->v1;                                                               \
            goto next_block;                                                                       \
        }                                                                                          \
        S_SKIP(n_);                                                                                \
        blk[s_zz[p1_]] = a_->v1;                                                                   \
        int p2_ = p1_ + (a_->d2 & 31);                                                             \
        blk[s_zz[p2_]] = a_->v2;                                                                   \
        k = p2_ + 1;                                                                               \
        if (a_->d2 & S_EOB) goto next_block;                                                       \
    } while (0)
    for (int b = 0; b < h->nblk; b++) {
        JCOEF *blk = MCU_data ? MCU_data[b][0] : skip;
        const s_htab *t = h->dct[b];
        S_REFILL();
        int32_t de = t->dc[buf >> (64 - S_LB)];
        int diff;
        if (de) {
            S_SKIP(de & 0xff);
            diff = de >> 8;
        } else {
            int e = t->lut[buf >> (64 - S_LB)], len = e >> 8, s;
            if (len)
                s = e & 0xff;
            else
                s = s_huff_slow(d, t, buf, &len);
            S_SKIP(len);
            diff = 0;
            if (s) {
                uint32_t v = (uint32_t)(buf >> (64 - s));
                S_SKIP(s);
                diff = s_extend(v, s);
            }
        }
        int ci = h->comp[b];
        int dc = (int)((unsigned)diff + (unsigned)h->dc[ci]);
        h->dc[ci] = dc;
        blk[0] = (JCOEF)dc;
        t = h->act[b];
        /* two steps per refill: 56 bits hold two fast steps (<= 2 S_LB) or
         * one step and a slow symbol (<= S_LB + 31); the slow symbol goes
         * back to the refill */
        for (int k = 1; k < 64;) {
            S_REFILL();
            S_STEP();
            if (k >= 64) break;
            S_STEP();
            continue;
        slow: { /* a code longer than S_LB bits, or code and value together */
            int e = t->lut[buf >> (64 - S_LB)], len = e >> 8, sym;
            if (len)
                sym = e & 0xff;
            else
                sym = s_huff_slow(d, t, buf, &len);
            sym = s_ac_sym(sym);
            S_SKIP(len);
            if (!sym) break; /* EOB */
            int s = sym & 15, v = 0;
            if (s) {
                v = s_extend((uint32_t)(buf >> (64 - s)), s);
                S_SKIP(s);
            }
            k += sym >> 4;
            blk[s_zz[k]] = (JCOEF)v;
            k++;
        }
        }
    next_block:;
    }
#undef S_REFILL
#undef S_SKIP
#undef S_STEP
    if (nbits < h->fake) longjmp(d->jerr.jb, S_JMP_RETRY); /* read past the data */
    h->buf = buf;
    h->nbits = nbits;
    h->p = p;
    c->src->next_input_byte = p;
    c->src->bytes_in_buffer = (size_t)(h->end - p);
    return TRUE;
}

/* After jpeg_start_decompress: our decode_mcu for a baseline sequential
 * single-scan 8-bit Huffman file without restart markers (libjpeg's
 * decoder otherwise).  The entropy module is re-created by every
 * jpeg_start_decompress, so this lasts for one image. */
static void s_fast_install(eq_decoder *d)
{
    struct jpeg_decompress_struct *c = &d->cinfo;
#if defined(LIBJPEG_TURBO_VERSION_NUMBER) && LIBJPEG_TURBO_VERSION_NUMBER >= 2000000 &&          \
    LIBJPEG_TURBO_VERSION_NUMBER < 3000000
    if (c->progressive_mode || c->arith_code || c->restart_interval || c->data_precision != 8 ||
        jpeg_has_multiple_scans(c) || c->comps_in_scan < 1 || c->comps_in_scan > 4 ||
        c->blocks_in_MCU < 1 || c->blocks_in_MCU > D_MAX_BLOCKS_IN_MCU || !c->entropy ||
        c->entropy->insufficient_data || c->unread_marker || !c->src)
        return;
    if (!d->huff && !(d->huff = calloc(1, sizeof *d->huff))) return;
    s_huff *h = d->huff;
    for (int i = 0; i < c->comps_in_scan; i++) {
        const jpeg_component_info *ci = c->cur_comp_info[i];
        if (ci->dc_tbl_no < 0 || ci->dc_tbl_no > 3 || ci->ac_tbl_no < 0 || ci->ac_tbl_no > 3 ||
            !c->dc_huff_tbl_ptrs[ci->dc_tbl_no] || !c->ac_huff_tbl_ptrs[ci->ac_tbl_no])
            return;
    }
    for (int i = 0; i < c->comps_in_scan; i++) {
        const jpeg_component_info *ci = c->cur_comp_info[i];
        s_htab_build(&h->tab[ci->dc_tbl_no], c->dc_huff_tbl_ptrs[ci->dc_tbl_no], 0);
        s_htab_build(&h->tab[4 + ci->ac_tbl_no], c->ac_huff_tbl_ptrs[ci->ac_tbl_no], 1);
    }
    h->nblk = c->blocks_in_MCU;
    for (int b = 0; b < h->nblk; b++) {
        const jpeg_component_info *ci = c->cur_comp_info[c->MCU_membership[b]];
        h->comp[b] = c->MCU_membership[b];
        h->dct[b] = &h->tab[ci->dc_tbl_no];
        h->act[b] = &h->tab[4 + ci->ac_tbl_no];
    }
    memset(h->dc, 0, sizeof h->dc);
    h->p = c->src->next_input_byte;
    h->end = h->p + c->src->bytes_in_buffer;
    h->buf = 0;
    h->nbits = h->fake = h->stopped = 0;
    c->entropy->decode_mcu = s_fast_mcu;
    d->n_fast++;
#else
    (void)c;
#endif
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
    if (d->fast_try) s_fast_install(d);
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
    for (volatile int attempt = 0;; attempt++) {
        d->jerr.msg[0] = '\0';
        d->jerr.pub.num_warnings = 0;
        d->fail_code = EQ_ERR_CORRUPT;
        d->fast_try = d->fast_huff && attempt == 0;
        int jr = setjmp(d->jerr.jb);
        if (jr == S_JMP_RETRY && attempt == 0) {
            jpeg_abort_decompress(&d->cinfo);
            d->n_fallback++;
            continue;
        }
        if (jr) {
            jpeg_abort_decompress(&d->cinfo);
            return eq_err_set(err, d->fail_code, "JPEG: %s", d->jerr.msg);
        }
        /* A fresh decompressor for every file (0.2 us): libjpeg keeps the
         * Huffman and quantisation tables of the files it read before, so
         * a file using a table it does not define would decode with
         * whatever file this thread's decoder read last (a different result
         * per thread and process) instead of failing or getting libjpeg's
         * standard tables as in a fresh process. */
        jpeg_destroy_decompress(&d->cinfo);
        jpeg_create_decompress(&d->cinfo);
        d->cinfo.progress = &d->progress;
        return s_jpeg_body(d, data, len, header_only, num, rx0, ry0, rx1, ry1, out, fw, fh, err);
    }
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
