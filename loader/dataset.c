/*
 * loader/dataset.c -- IDX (MNIST / Fashion-MNIST), CIFAR-10/100 binary and
 * ImageFolder datasets, and their fingerprints.
 *
 * IDX and CIFAR sets are small enough to hold decoded in memory (HWC uint8);
 * ImageFolder keeps only the sorted file list (relative path, size, label)
 * and files are read when a sample is made.
 */
#define _GNU_SOURCE 1 /* qsort_r */
#include "loader/loader.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "core/log.h"
#include "core/pool.h"
#include "core/rng.h"
#include "loader/coco.h"
#include "loader/loader_internal.h"

struct eq_dataset {
    eq_ds_kind kind;
    char *root;
    size_t n;
    uint32_t nclasses;
    char **class_names; /* nclasses strings (one allocation each) */
    int32_t *labels;    /* n */
    /* in-memory sets */
    uint8_t *pix; /* n * h * w * c */
    uint32_t h, w, c;
    /* ImageFolder */
    char *arena;       /* NUL-terminated relative paths */
    size_t *path_off;  /* n offsets into arena */
    uint64_t *sizes;   /* n file sizes */
    /* COCO */
    eq_cocoidx *coco;
    eq_ds_fingerprint fp;
};

/* ---------------------------------------------------------------- hash -- */

void eq_hash64_init(eq_hash64 *s) { s->h = 0xcbf29ce484222325ull; }

void eq_hash64_bytes(eq_hash64 *s, const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = s->h;
    /* 8 bytes at a time through a multiply-xorshift step (fast enough for
     * the 47 MB of Fashion-MNIST), bytes one by one for the tail. */
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = (uint64_t)b[i] | (uint64_t)b[i + 1] << 8 | (uint64_t)b[i + 2] << 16 |
                     (uint64_t)b[i + 3] << 24 | (uint64_t)b[i + 4] << 32 |
                     (uint64_t)b[i + 5] << 40 | (uint64_t)b[i + 6] << 48 | (uint64_t)b[i + 7] << 56;
        h = (h ^ v) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    for (; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    s->h = h;
}

void eq_hash64_u64(eq_hash64 *s, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (8 * i));
    eq_hash64_bytes(s, b, 8);
}

uint64_t eq_hash64_final(const eq_hash64 *s) { return eq_rng_mix(s->h, 0x6571667075ull); }

/* ----------------------------------------------------------- file read -- */

eq_status eq_read_file(const char *path, uint8_t **buf, size_t *cap, size_t *len, size_t max_len,
                       eq_err *err)
{
    *len = 0;
    /* O_NONBLOCK: opening a FIFO (or a device) in place of an image must
     * not block a worker for ever; it is refused below as not a regular
     * file.  (No effect on regular files.) */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return eq_err_set(err, errno == ENOENT ? EQ_ERR_NOTFOUND : EQ_ERR_IO, "%s: %s", path,
                          strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return eq_err_set(err, EQ_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max_len) {
        close(fd);
        return eq_err_set(err, EQ_ERR_LIMIT, "%s: %lld bytes exceeds the limit of %zu", path,
                          (long long)st.st_size, max_len);
    }
    size_t want = (size_t)st.st_size;
    if (*cap < want + 1) {
        uint8_t *nb = realloc(*buf, want + 1);
        if (!nb) {
            close(fd);
            return eq_err_set(err, EQ_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, want);
        }
        *buf = nb;
        *cap = want + 1;
    }
    size_t got = 0;
    while (got < want) {
        ssize_t r = read(fd, *buf + got, want - got);
        if (r < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd);
            return eq_err_set(err, EQ_ERR_IO, "%s: read: %s", path, strerror(e));
        }
        if (r == 0) break; /* file shrank: decode what is there */
        got += (size_t)r;
    }
    close(fd);
    *len = got;
    return EQ_OK;
}

/* -------------------------------------------------------------- common -- */

static eq_dataset *s_ds_alloc(eq_ds_kind kind, const char *root, eq_err *err)
{
    eq_dataset *ds = calloc(1, sizeof *ds);
    if (!ds || !(ds->root = strdup(root ? root : ""))) {
        free(ds);
        eq_err_set(err, EQ_ERR_NOMEM, "dataset: out of memory");
        return NULL;
    }
    ds->kind = kind;
    return ds;
}

void eq_dataset_destroy(eq_dataset **self_p)
{
    if (!self_p || !*self_p) return;
    eq_dataset *ds = *self_p;
    if (ds->class_names)
        for (uint32_t i = 0; i < ds->nclasses; i++) free(ds->class_names[i]);
    free(ds->class_names);
    free(ds->labels);
    free(ds->pix);
    free(ds->arena);
    free(ds->path_off);
    free(ds->sizes);
    eq_cocoidx_destroy(&ds->coco);
    free(ds->root);
    free(ds);
    *self_p = NULL;
}

static eq_status s_numeric_classes(eq_dataset *ds, uint32_t n, eq_err *err)
{
    ds->class_names = calloc(n ? n : 1, sizeof(char *));
    if (!ds->class_names) return eq_err_set(err, EQ_ERR_NOMEM, "dataset: out of memory");
    ds->nclasses = n;
    for (uint32_t i = 0; i < n; i++) {
        char b[16];
        snprintf(b, sizeof b, "%u", i);
        if (!(ds->class_names[i] = strdup(b)))
            return eq_err_set(err, EQ_ERR_NOMEM, "dataset: out of memory");
    }
    return EQ_OK;
}

static void s_fingerprint_memory(eq_dataset *ds)
{
    eq_hash64 h;
    eq_hash64_init(&h);
    eq_hash64_u64(&h, ds->kind);
    eq_hash64_u64(&h, ds->n);
    eq_hash64_u64(&h, ((uint64_t)ds->h << 32) | ((uint64_t)ds->w << 8) | ds->c);
    eq_hash64_bytes(&h, ds->pix, ds->n * ds->h * ds->w * ds->c);
    for (size_t i = 0; i < ds->n; i++) eq_hash64_u64(&h, (uint64_t)(uint32_t)ds->labels[i]);
    ds->fp.count = ds->n;
    ds->fp.hash = eq_hash64_final(&h);
}

/* ----------------------------------------------------------------- IDX -- */

/* Read exactly n bytes from a gz stream (which reads raw files as they
 * are).  Returns bytes read, or -1 with the zlib message in *msg. */
static long long s_gz_read(gzFile f, void *dst, size_t n, const char **msg)
{
    size_t got = 0;
    uint8_t *p = dst;
    while (got < n) {
        size_t chunk = n - got > (1u << 30) ? (1u << 30) : n - got;
        int r = gzread(f, p + got, (unsigned)chunk);
        if (r < 0) {
            int e;
            *msg = gzerror(f, &e);
            return -1;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    return (long long)got;
}

static uint32_t s_be32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static gzFile s_gz_open(const char *path, eq_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        eq_err_set(err, errno == ENOENT ? EQ_ERR_NOTFOUND : EQ_ERR_IO, "%s: %s", path,
                   strerror(errno));
        return NULL;
    }
    gzFile f = gzdopen(fd, "rb");
    if (!f) {
        close(fd);
        eq_err_set(err, EQ_ERR_NOMEM, "%s: cannot open a zlib stream", path);
    }
    return f;
}

/* Reads an IDX u8 file with `ndim` dimensions into *data (malloc'd). */
static eq_status s_idx_read(const char *path, int ndim, size_t max_bytes, uint32_t dims[3],
                            uint8_t **data, eq_err *err)
{
    *data = NULL;
    gzFile f = s_gz_open(path, err);
    if (!f) return err ? err->code : EQ_ERR_IO;
    uint8_t hdr[16];
    const char *zmsg = NULL;
    size_t hlen = 4 + 4 * (size_t)ndim;
    long long r = s_gz_read(f, hdr, hlen, &zmsg);
    eq_status st = EQ_OK;
    if (r < 0) {
        st = eq_err_set(err, EQ_ERR_CORRUPT, "%s: %s", path, zmsg);
        goto out;
    }
    if ((size_t)r < hlen) {
        st = eq_err_set(err, EQ_ERR_CORRUPT, "%s: truncated IDX header (%lld of %zu bytes)", path,
                        r, hlen);
        goto out;
    }
    if (hdr[0] != 0 || hdr[1] != 0 || hdr[2] != 0x08 || hdr[3] != ndim) {
        st = eq_err_set(err, EQ_ERR_PARSE,
                        "%s: bad IDX magic %02x %02x %02x %02x (want 00 00 08 %02x: u8, %d dims)",
                        path, hdr[0], hdr[1], hdr[2], hdr[3], ndim, ndim);
        goto out;
    }
    uint64_t total = 1;
    for (int i = 0; i < ndim; i++) {
        dims[i] = s_be32(hdr + 4 + 4 * i);
        total *= dims[i];
        if (total > max_bytes) {
            st = eq_err_set(err, EQ_ERR_LIMIT,
                            "%s: IDX header declares more than %zu bytes (dimension %d = %u)",
                            path, max_bytes, i, dims[i]);
            goto out;
        }
    }
    if (dims[0] == 0) {
        st = eq_err_set(err, EQ_ERR_CORRUPT, "%s: IDX file declares 0 items", path);
        goto out;
    }
    *data = malloc(total ? total : 1);
    if (!*data) {
        st = eq_err_set(err, EQ_ERR_NOMEM, "%s: cannot allocate %llu bytes", path,
                        (unsigned long long)total);
        goto out;
    }
    r = s_gz_read(f, *data, total, &zmsg);
    if (r < 0) {
        st = eq_err_set(err, EQ_ERR_CORRUPT, "%s: %s", path, zmsg);
        goto out;
    }
    if ((uint64_t)r < total) {
        uint64_t per = total / dims[0];
        st = eq_err_set(err, EQ_ERR_CORRUPT,
                        "%s: header declares %u items (%llu bytes) but the file holds only %llu "
                        "bytes (%llu items): truncated",
                        path, dims[0], (unsigned long long)total, (unsigned long long)r,
                        (unsigned long long)(per ? (uint64_t)r / per : 0));
        goto out;
    }
out:
    gzclose(f);
    if (st != EQ_OK) {
        free(*data);
        *data = NULL;
    }
    return st;
}

eq_dataset *eq_dataset_open_idx(const char *images_path, const char *labels_path,
                                size_t max_bytes, eq_err *err)
{
    if (!images_path || !labels_path) {
        eq_err_set(err, EQ_ERR_INVALID, "idx: images and labels paths are required");
        return NULL;
    }
    if (max_bytes == 0) max_bytes = (size_t)1 << 30;
    uint32_t idim[3] = {0}, ldim[3] = {0};
    uint8_t *pix = NULL, *lab = NULL;
    if (s_idx_read(images_path, 3, max_bytes, idim, &pix, err) != EQ_OK) return NULL;
    if (s_idx_read(labels_path, 1, max_bytes, ldim, &lab, err) != EQ_OK) {
        free(pix);
        return NULL;
    }
    eq_dataset *ds = NULL;
    if (idim[0] != ldim[0]) {
        eq_err_set(err, EQ_ERR_CORRUPT, "%s holds %u images but %s holds %u labels", images_path,
                   idim[0], labels_path, ldim[0]);
        goto fail;
    }
    if (idim[1] == 0 || idim[2] == 0 || idim[1] > 65535 || idim[2] > 65535) {
        eq_err_set(err, EQ_ERR_CORRUPT, "%s: bad image size %u x %u", images_path, idim[1],
                   idim[2]);
        goto fail;
    }
    ds = s_ds_alloc(EQ_DS_IDX, images_path, err);
    if (!ds) goto fail;
    ds->n = idim[0];
    ds->h = idim[1];
    ds->w = idim[2];
    ds->c = 1;
    ds->pix = pix;
    pix = NULL;
    ds->labels = malloc(ds->n * sizeof(int32_t));
    if (!ds->labels) {
        eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory", labels_path);
        goto fail;
    }
    uint32_t maxl = 0;
    for (size_t i = 0; i < ds->n; i++) {
        ds->labels[i] = lab[i];
        if (lab[i] > maxl) maxl = lab[i];
    }
    if (s_numeric_classes(ds, maxl + 1, err) != EQ_OK) goto fail;
    free(lab);
    s_fingerprint_memory(ds);
    return ds;
fail:
    free(pix);
    free(lab);
    eq_dataset_destroy(&ds);
    return NULL;
}

/* First of path and path.gz that exists. */
static void s_pick(char *out, size_t cap, const char *dir, const char *name)
{
    snprintf(out, cap, "%s/%s", dir, name);
    if (access(out, F_OK) == 0) return;
    snprintf(out, cap, "%s/%s.gz", dir, name);
    if (access(out, F_OK) == 0) return;
    snprintf(out, cap, "%s/%s", dir, name); /* report the plain name */
}

static int s_split_is_train(const char *split, int *ok)
{
    *ok = 1;
    if (!split || !strcmp(split, "train")) return 1;
    if (!strcmp(split, "val") || !strcmp(split, "test")) return 0;
    *ok = 0;
    return 0;
}

eq_dataset *eq_dataset_open_mnist_dir(const char *dir, const char *split, eq_err *err)
{
    if (!dir) dir = EQ_FASHION_MNIST_DIR;
    int ok;
    int train = s_split_is_train(split, &ok);
    if (!ok) {
        eq_err_set(err, EQ_ERR_INVALID, "%s: unknown split '%s' (want train, val or test)", dir,
                   split);
        return NULL;
    }
    char ip[4096], lp[4096];
    s_pick(ip, sizeof ip, dir, train ? "train-images-idx3-ubyte" : "t10k-images-idx3-ubyte");
    s_pick(lp, sizeof lp, dir, train ? "train-labels-idx1-ubyte" : "t10k-labels-idx1-ubyte");
    return eq_dataset_open_idx(ip, lp, 0, err);
}

/* --------------------------------------------------------------- CIFAR -- */

eq_dataset *eq_dataset_open_cifar(eq_ds_kind kind, const char *const *paths, size_t npaths,
                                  eq_err *err)
{
    if (kind != EQ_DS_CIFAR10 && kind != EQ_DS_CIFAR100) {
        eq_err_set(err, EQ_ERR_INVALID, "cifar: kind must be CIFAR10 or CIFAR100");
        return NULL;
    }
    if (npaths == 0) {
        eq_err_set(err, EQ_ERR_INVALID, "cifar: no files given");
        return NULL;
    }
    const size_t lab_bytes = kind == EQ_DS_CIFAR10 ? 1 : 2, rec = lab_bytes + 3072;
    const uint32_t ncls = kind == EQ_DS_CIFAR10 ? 10 : 100;
    eq_dataset *ds = s_ds_alloc(kind, paths[0], err);
    if (!ds) return NULL;
    uint8_t *buf = NULL;
    size_t cap = 0, len = 0, total = 0;
    /* Sizes first, so the arrays are allocated once. */
    for (size_t f = 0; f < npaths; f++) {
        struct stat st;
        if (stat(paths[f], &st) != 0) {
            eq_err_set(err, errno == ENOENT ? EQ_ERR_NOTFOUND : EQ_ERR_IO, "%s: %s", paths[f],
                       strerror(errno));
            goto fail;
        }
        if (st.st_size == 0 || (size_t)st.st_size % rec != 0) {
            eq_err_set(err, EQ_ERR_CORRUPT,
                       "%s: %lld bytes is not a positive multiple of the %zu-byte CIFAR-%u "
                       "record: truncated or not a CIFAR file",
                       paths[f], (long long)st.st_size, rec, ncls);
            goto fail;
        }
        total += (size_t)st.st_size / rec;
    }
    ds->n = total;
    ds->h = ds->w = 32;
    ds->c = 3;
    ds->pix = eq_malloc_array(total, 3072);
    ds->labels = eq_malloc_array(total, sizeof(int32_t));
    if (!ds->pix || !ds->labels) {
        eq_err_set(err, EQ_ERR_NOMEM, "cifar: cannot allocate %zu samples", total);
        goto fail;
    }
    size_t k = 0;
    for (size_t f = 0; f < npaths; f++) {
        if (eq_read_file(paths[f], &buf, &cap, &len, (size_t)1 << 32, err) != EQ_OK) goto fail;
        if (len % rec != 0 || k + len / rec > total) {
            eq_err_set(err, EQ_ERR_CORRUPT, "%s: changed size while being read", paths[f]);
            goto fail;
        }
        for (size_t r = 0; r < len / rec; r++, k++) {
            const uint8_t *p = buf + r * rec;
            uint8_t y = p[lab_bytes - 1];
            if (y >= ncls) {
                eq_err_set(err, EQ_ERR_CORRUPT, "%s: record %zu: label %u out of range [0, %u)",
                           paths[f], r, y, ncls);
                goto fail;
            }
            ds->labels[k] = y;
            /* CHW planes -> HWC */
            uint8_t *o = ds->pix + k * 3072;
            const uint8_t *s = p + lab_bytes;
            for (int i = 0; i < 1024; i++) {
                o[3 * i] = s[i];
                o[3 * i + 1] = s[1024 + i];
                o[3 * i + 2] = s[2048 + i];
            }
        }
    }
    free(buf);
    buf = NULL;
    if (s_numeric_classes(ds, ncls, err) != EQ_OK) goto fail;
    s_fingerprint_memory(ds);
    return ds;
fail:
    free(buf);
    eq_dataset_destroy(&ds);
    return NULL;
}

eq_dataset *eq_dataset_open_cifar_dir(eq_ds_kind kind, const char *dir, const char *split,
                                      eq_err *err)
{
    int ok;
    int train = s_split_is_train(split, &ok);
    if (!ok || !dir) {
        eq_err_set(err, EQ_ERR_INVALID, "%s: unknown split '%s' (want train, val or test)",
                   dir ? dir : "(null)", split);
        return NULL;
    }
    char p[6][4096];
    const char *pp[6];
    size_t n = 0;
    if (kind == EQ_DS_CIFAR10 && train) {
        for (int i = 1; i <= 5; i++) {
            snprintf(p[n], sizeof p[n], "%s/data_batch_%d.bin", dir, i);
            pp[n] = p[n];
            n++;
        }
    } else {
        snprintf(p[0], sizeof p[0], "%s/%s", dir,
                 kind == EQ_DS_CIFAR10 ? "test_batch.bin" : train ? "train.bin" : "test.bin");
        pp[0] = p[0];
        n = 1;
    }
    return eq_dataset_open_cifar(kind, pp, n, err);
}

/* --------------------------------------------------------- ImageFolder -- */

static const char *const s_img_ext[] = {".jpg", ".jpeg", ".png", ".ppm", ".bmp",
                                        ".pgm", ".tif",  ".tiff", ".webp"};

static int s_has_img_ext(const char *name)
{
    const char *dot = strrchr(name, '.');
    if (!dot) return 0;
    for (size_t i = 0; i < sizeof s_img_ext / sizeof *s_img_ext; i++)
        if (!strcasecmp(dot, s_img_ext[i])) return 1;
    return 0;
}

typedef struct s_entry {
    size_t dir_off;  /* directory relative to the class folder ("" at top) */
    size_t name_off; /* file name */
    uint64_t size;
} s_entry;

/* One class folder's files. */
typedef struct s_class_list {
    char *str;
    size_t str_len, str_cap;
    s_entry *e;
    size_t n, cap;
    eq_err err;
    int failed;
} s_class_list;

static int s_str_push(s_class_list *cl, const char *s, size_t *off)
{
    size_t l = strlen(s) + 1;
    if (cl->str_len + l > cl->str_cap) {
        size_t nc = cl->str_cap ? cl->str_cap * 2 : 4096;
        while (nc < cl->str_len + l) nc *= 2;
        char *ns = realloc(cl->str, nc);
        if (!ns) return -1;
        cl->str = ns;
        cl->str_cap = nc;
    }
    memcpy(cl->str + cl->str_len, s, l);
    *off = cl->str_len;
    cl->str_len += l;
    return 0;
}

static int s_walk(s_class_list *cl, const char *abs, const char *rel, int depth)
{
    if (depth > 64) {
        eq_err_set(&cl->err, EQ_ERR_LIMIT, "%s: directories nested deeper than 64 (link loop?)",
                   abs);
        return -1;
    }
    DIR *d = opendir(abs);
    if (!d) {
        eq_err_set(&cl->err, EQ_ERR_IO, "%s: %s", abs, strerror(errno));
        return -1;
    }
    size_t dir_off;
    if (s_str_push(cl, rel, &dir_off) != 0) goto nomem;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/%s", abs, de->d_name) >= sizeof path) continue;
        struct stat st;
        if (stat(path, &st) != 0) continue; /* dangling link: skipped like torchvision */
        if (S_ISDIR(st.st_mode)) {
            char r2[4096];
            snprintf(r2, sizeof r2, "%s%s%s", rel, *rel ? "/" : "", de->d_name);
            if (s_walk(cl, path, r2, depth + 1) != 0) {
                closedir(d);
                return -1;
            }
        } else if (S_ISREG(st.st_mode) && s_has_img_ext(de->d_name)) {
            if (cl->n == cl->cap) {
                size_t nc = cl->cap ? cl->cap * 2 : 256;
                s_entry *ne = realloc(cl->e, nc * sizeof *ne);
                if (!ne) goto nomem;
                cl->e = ne;
                cl->cap = nc;
            }
            s_entry *e = &cl->e[cl->n];
            e->dir_off = dir_off;
            e->size = (uint64_t)st.st_size;
            if (s_str_push(cl, de->d_name, &e->name_off) != 0) goto nomem;
            cl->n++;
        }
    }
    closedir(d);
    return 0;
nomem:
    closedir(d);
    eq_err_set(&cl->err, EQ_ERR_NOMEM, "%s: out of memory", abs);
    return -1;
}

typedef struct s_walk_ctx {
    const char *base;
    char **classes;
    s_class_list *lists;
} s_walk_ctx;

/* torchvision: sorted(os.walk(dir)) then sorted(fnames): by directory, then
 * by file name. */
static int s_entry_cmp(const void *a, const void *b, void *strs)
{
    const s_entry *x = a, *y = b;
    const char *s = strs;
    int c = strcmp(s + x->dir_off, s + y->dir_off);
    return c ? c : strcmp(s + x->name_off, s + y->name_off);
}

static void s_walk_one(void *ctx, size_t i, int worker)
{
    s_walk_ctx *w = ctx;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", w->base, w->classes[i]);
    s_class_list *cl = &w->lists[i];
    if (s_walk(cl, path, "", 0) != 0) {
        cl->failed = 1;
        return;
    }
    if (cl->n > 1) qsort_r(cl->e, cl->n, sizeof *cl->e, s_entry_cmp, cl->str); /* e: NULL when empty */
}

static int s_strptr_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

eq_dataset *eq_dataset_open_imagefolder(const char *root, const char *split, int nthreads,
                                        eq_err *err)
{
    if (!root) {
        eq_err_set(err, EQ_ERR_INVALID, "imagefolder: root is required");
        return NULL;
    }
    char base[4096];
    if (split && *split)
        snprintf(base, sizeof base, "%s/%s", root, split);
    else
        snprintf(base, sizeof base, "%s", root);
    eq_dataset *ds = s_ds_alloc(EQ_DS_IMAGEFOLDER, base, err);
    if (!ds) return NULL;
    s_class_list *lists = NULL;
    eq_pool *pool = NULL;
    size_t ncls = 0, cap = 0;
    char **classes = NULL;

    DIR *d = opendir(base);
    if (!d) {
        eq_err_set(err, errno == ENOENT ? EQ_ERR_NOTFOUND : EQ_ERR_IO, "%s: %s", base,
                   strerror(errno));
        goto fail;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/%s", base, de->d_name) >= sizeof path) continue;
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
        if (ncls == cap) {
            cap = cap ? cap * 2 : 64;
            char **nc = realloc(classes, cap * sizeof *nc);
            if (!nc) {
                closedir(d);
                eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory", base);
                goto fail;
            }
            classes = nc;
        }
        if (!(classes[ncls] = strdup(de->d_name))) {
            closedir(d);
            eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory", base);
            goto fail;
        }
        ncls++;
    }
    closedir(d);
    if (ncls == 0) {
        eq_err_set(err, EQ_ERR_NOTFOUND, "%s: no class folders found", base);
        goto fail;
    }
    qsort(classes, ncls, sizeof *classes, s_strptr_cmp);
    lists = calloc(ncls, sizeof *lists);
    if (!lists) {
        eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory", base);
        goto fail;
    }
    if (nthreads > 1) {
        pool = eq_pool_new(nthreads, err);
        if (!pool) goto fail;
    }
    s_walk_ctx wc = {.base = base, .classes = classes, .lists = lists};
    eq_pool_for(pool, ncls, s_walk_one, &wc);
    eq_pool_destroy(&pool);

    size_t total = 0, bytes = 0;
    for (size_t c = 0; c < ncls; c++) {
        if (lists[c].failed) {
            if (err) *err = lists[c].err;
            goto fail;
        }
        total += lists[c].n;
        bytes += lists[c].str_len + lists[c].n * (strlen(classes[c]) + 2);
    }
    if (total == 0) {
        eq_err_set(err, EQ_ERR_NOTFOUND, "%s: %zu class folders but no image files", base, ncls);
        goto fail;
    }
    /* torchvision's ImageFolder refuses a class without a file (its label
     * would exist with no sample: usually an incomplete copy). */
    size_t nempty = 0;
    char names[512] = "";
    for (size_t c = 0; c < ncls; c++) {
        if (lists[c].n) continue;
        size_t l = strlen(names);
        if (nempty < 8 && l < sizeof names)
            snprintf(names + l, sizeof names - l, "%s'%s'", nempty ? ", " : "", classes[c]);
        nempty++;
    }
    if (nempty) {
        eq_err_set(err, EQ_ERR_NOTFOUND,
                   "%s: %zu class folder%s without image files: %s%s (torchvision's ImageFolder refuses this "
                   "too; add images or remove the folder)",
                   base, nempty, nempty > 1 ? "s" : "", names, nempty > 8 ? ", ..." : "");
        goto fail;
    }
    ds->n = total;
    ds->labels = malloc(total * sizeof *ds->labels);
    ds->path_off = malloc(total * sizeof *ds->path_off);
    ds->sizes = malloc(total * sizeof *ds->sizes);
    ds->arena = malloc(bytes + 1);
    if (!ds->labels || !ds->path_off || !ds->sizes || !ds->arena) {
        eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory for %zu files", base, total);
        goto fail;
    }
    eq_hash64 h;
    eq_hash64_init(&h);
    eq_hash64_u64(&h, EQ_DS_IMAGEFOLDER);
    eq_hash64_u64(&h, total);
    size_t k = 0, pos = 0;
    for (size_t c = 0; c < ncls; c++) {
        s_class_list *cl = &lists[c];
        for (size_t i = 0; i < cl->n; i++, k++) {
            const char *dir = cl->str + cl->e[i].dir_off, *name = cl->str + cl->e[i].name_off;
            int l = sprintf(ds->arena + pos, "%s/%s%s%s", classes[c], dir, *dir ? "/" : "", name);
            ds->path_off[k] = pos;
            ds->labels[k] = (int32_t)c;
            ds->sizes[k] = cl->e[i].size;
            eq_hash64_u64(&h, c);
            eq_hash64_bytes(&h, ds->arena + pos, (size_t)l + 1);
            eq_hash64_u64(&h, cl->e[i].size);
            pos += (size_t)l + 1;
        }
        free(cl->str);
        free(cl->e);
        cl->str = NULL;
        cl->e = NULL;
    }
    ds->fp.count = total;
    ds->fp.hash = eq_hash64_final(&h);
    ds->class_names = classes;
    ds->nclasses = (uint32_t)ncls;
    free(lists);
    return ds;
fail:
    if (lists)
        for (size_t c = 0; c < ncls; c++) {
            free(lists[c].str);
            free(lists[c].e);
        }
    free(lists);
    for (size_t c = 0; c < ncls; c++) free(classes[c]);
    free(classes);
    eq_pool_destroy(&pool);
    eq_dataset_destroy(&ds);
    return NULL;
}

/* ------------------------------------------------ flat folder + labels -- */

typedef struct s_flat_rec {
    char *path;  /* relative to dir */
    char *label; /* as written */
    uint64_t size;
    int32_t y;
} s_flat_rec;

static int s_flat_cmp(const void *a, const void *b)
{
    return strcmp(((const s_flat_rec *)a)->path, ((const s_flat_rec *)b)->path);
}

static int s_parse_index(const char *s, int32_t *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > INT32_MAX) return -1;
    *out = (int32_t)v;
    return 0;
}

eq_dataset *eq_dataset_open_flat(const char *dir, const char *labels_path,
                                 const eq_dataset *classes_from, eq_err *err)
{
    if (!dir || !labels_path) {
        eq_err_set(err, EQ_ERR_INVALID, "flat: a directory and a labels file are required");
        return NULL;
    }
    FILE *f = fopen(labels_path, "r");
    if (!f) {
        eq_err_set(err, errno == ENOENT ? EQ_ERR_NOTFOUND : EQ_ERR_IO, "%s: %s", labels_path,
                   strerror(errno));
        return NULL;
    }
    eq_dataset *ds = s_ds_alloc(EQ_DS_IMAGEFOLDER, dir, err);
    s_flat_rec *r = NULL;
    size_t n = 0, cap = 0, lineno = 0;
    char **names = NULL;
    size_t nnames = 0;
    char line[8192];
    if (!ds) goto fail;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        size_t l = strlen(line);
        if (l == sizeof line - 1 && line[l - 1] != '\n') {
            eq_err_set(err, EQ_ERR_PARSE, "%s:%zu: line longer than %zu bytes", labels_path,
                       lineno, sizeof line - 2);
            goto fail;
        }
        while (l && (line[l - 1] == '\n' || line[l - 1] == '\r' || line[l - 1] == ' ' ||
                     line[l - 1] == '\t'))
            line[--l] = '\0';
        char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        if (!*p || *p == '#') continue;
        char *sep = p + strcspn(p, ",\t ");
        if (!*sep) {
            eq_err_set(err, EQ_ERR_PARSE, "%s:%zu: want 'file label' (separated by a comma, tab or "
                                          "space)", labels_path, lineno);
            goto fail;
        }
        *sep++ = '\0';
        while (*sep == ' ' || *sep == '\t' || *sep == ',') sep++;
        if (!*sep || strstr(p, "..") || *p == '/') {
            eq_err_set(err, EQ_ERR_PARSE, "%s:%zu: missing label, or a path outside the folder",
                       labels_path, lineno);
            goto fail;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 1024;
            s_flat_rec *nr = realloc(r, cap * sizeof *nr);
            if (!nr) goto nomem;
            r = nr;
        }
        s_flat_rec *e = &r[n];
        memset(e, 0, sizeof *e);
        if (!(e->path = strdup(p)) || !(e->label = strdup(sep))) {
            free(e->path);
            free(e->label);
            goto nomem;
        }
        n++;
        char full[4096];
        struct stat st;
        if ((size_t)snprintf(full, sizeof full, "%s/%s", dir, p) >= sizeof full ||
            stat(full, &st) != 0 || !S_ISREG(st.st_mode)) {
            eq_err_set(err, EQ_ERR_NOTFOUND, "%s:%zu: %s: no such file", labels_path, lineno, full);
            goto fail;
        }
        e->size = (uint64_t)st.st_size;
    }
    if (ferror(f)) {
        eq_err_set(err, EQ_ERR_IO, "%s: read error", labels_path);
        goto fail;
    }
    if (n == 0) {
        eq_err_set(err, EQ_ERR_NOTFOUND, "%s: no samples listed", labels_path);
        goto fail;
    }
    /* Labels: integers are class indices; otherwise names, mapped through
     * classes_from's class names, or numbered in sorted order. */
    int numeric = 1;
    for (size_t i = 0; i < n && numeric; i++) numeric = s_parse_index(r[i].label, &r[i].y) == 0;
    if (numeric && !classes_from) {
        int32_t maxy = 0;
        for (size_t i = 0; i < n; i++)
            if (r[i].y > maxy) maxy = r[i].y;
        if (maxy >= 100000) {
            eq_err_set(err, EQ_ERR_LIMIT, "%s: class index %d too large", labels_path, maxy);
            goto fail;
        }
        if (s_numeric_classes(ds, (uint32_t)maxy + 1, err) != EQ_OK) goto fail;
    } else {
        if (classes_from) {
            nnames = eq_dataset_num_classes(classes_from);
            names = calloc(nnames ? nnames : 1, sizeof *names);
            if (!names) goto nomem;
            for (size_t c = 0; c < nnames; c++)
                if (!(names[c] = strdup(eq_dataset_class_name(classes_from, (uint32_t)c)))) goto nomem;
        } else {
            names = calloc(n, sizeof *names);
            if (!names) goto nomem;
            for (size_t i = 0; i < n; i++) names[i] = r[i].label;
            qsort(names, n, sizeof *names, s_strptr_cmp);
            for (size_t i = 0; i < n; i++)
                if (nnames == 0 || strcmp(names[nnames - 1], names[i])) names[nnames++] = names[i];
            for (size_t i = 0; i < nnames; i++)
                if (!(names[i] = strdup(names[i]))) {
                    nnames = i;
                    goto nomem;
                }
        }
        for (size_t i = 0; i < n; i++) {
            const char *lab = r[i].label;
            size_t lo = 0, hi = nnames;
            int found = 0;
            if (classes_from) {
                for (size_t c = 0; c < nnames && !found; c++)
                    if (!strcmp(names[c], lab)) {
                        r[i].y = (int32_t)c;
                        found = 1;
                    }
            } else {
                while (lo < hi) { /* binary search in the sorted names */
                    size_t mid = (lo + hi) / 2;
                    int c = strcmp(names[mid], lab);
                    if (!c) {
                        r[i].y = (int32_t)mid;
                        found = 1;
                        break;
                    }
                    if (c < 0) lo = mid + 1;
                    else hi = mid;
                }
            }
            if (!found) {
                if (!numeric || s_parse_index(lab, &r[i].y) != 0 || (size_t)r[i].y >= nnames) {
                    eq_err_set(err, EQ_ERR_INVALID, "%s: label '%s' of %s is not a class of %s",
                               labels_path, lab, r[i].path,
                               classes_from ? eq_dataset_root(classes_from) : "this file");
                    goto fail;
                }
            }
        }
        ds->class_names = names;
        ds->nclasses = (uint32_t)nnames;
        names = NULL;
    }
    qsort(r, n, sizeof *r, s_flat_cmp);
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) bytes += strlen(r[i].path) + 1;
    ds->n = n;
    ds->labels = malloc(n * sizeof *ds->labels);
    ds->path_off = malloc(n * sizeof *ds->path_off);
    ds->sizes = malloc(n * sizeof *ds->sizes);
    ds->arena = malloc(bytes + 1);
    if (!ds->labels || !ds->path_off || !ds->sizes || !ds->arena) goto nomem;
    eq_hash64 h;
    eq_hash64_init(&h);
    eq_hash64_u64(&h, EQ_DS_IMAGEFOLDER);
    eq_hash64_u64(&h, n);
    size_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        if (i && !strcmp(r[i].path, r[i - 1].path)) {
            eq_err_set(err, EQ_ERR_INVALID, "%s: %s is listed twice", labels_path, r[i].path);
            goto fail;
        }
        size_t l = strlen(r[i].path) + 1;
        memcpy(ds->arena + pos, r[i].path, l);
        ds->path_off[i] = pos;
        ds->labels[i] = r[i].y;
        ds->sizes[i] = r[i].size;
        eq_hash64_u64(&h, (uint64_t)r[i].y);
        eq_hash64_bytes(&h, r[i].path, l);
        eq_hash64_u64(&h, r[i].size);
        pos += l;
    }
    ds->fp.count = n;
    ds->fp.hash = eq_hash64_final(&h);
    for (size_t i = 0; i < n; i++) {
        free(r[i].path);
        free(r[i].label);
    }
    free(r);
    fclose(f);
    return ds;
nomem:
    eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory", labels_path);
fail:
    if (names) {
        if (classes_from || nnames) /* strdup'd copies */
            for (size_t i = 0; i < nnames; i++) free(names[i]);
        free(names);
    }
    for (size_t i = 0; i < n; i++) {
        free(r[i].path);
        free(r[i].label);
    }
    free(r);
    fclose(f);
    eq_dataset_destroy(&ds);
    return NULL;
}

/* ---------------------------------------------------------- index file -- */

#define S_IDX_MAGIC "EQDSIDX\n"
#define S_IDX_VERSION 1u

static int s_put(FILE *f, const void *p, size_t n) { return fwrite(p, 1, n, f) == n ? 0 : -1; }

static int s_put_u32(FILE *f, uint32_t v)
{
    uint8_t b[4];
    for (int i = 0; i < 4; i++) b[i] = (uint8_t)(v >> (8 * i));
    return s_put(f, b, 4);
}

static int s_put_u64(FILE *f, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (8 * i));
    return s_put(f, b, 8);
}

static int s_put_str(FILE *f, const char *s)
{
    size_t l = strlen(s);
    return s_put_u32(f, (uint32_t)l) || s_put(f, s, l);
}

eq_status eq_dataset_save_index(const eq_dataset *ds, const char *path, eq_err *err)
{
    if (ds->kind != EQ_DS_IMAGEFOLDER)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: only file-list datasets have an index", path);
    char tmp[4200];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: path too long", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return eq_err_set(err, EQ_ERR_IO, "%s: %s", tmp, strerror(errno));
    int bad = s_put(f, S_IDX_MAGIC, 8) || s_put_u32(f, S_IDX_VERSION) ||
              s_put_u64(f, ds->n) || s_put_u32(f, ds->nclasses) || s_put_u64(f, ds->fp.hash) ||
              s_put_str(f, ds->root);
    for (uint32_t c = 0; c < ds->nclasses && !bad; c++) bad = s_put_str(f, ds->class_names[c]);
    for (size_t i = 0; i < ds->n && !bad; i++)
        bad = s_put_u32(f, (uint32_t)ds->labels[i]) || s_put_u64(f, ds->sizes[i]) ||
              s_put_str(f, ds->arena + ds->path_off[i]);
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) bad = 1;
    if (fclose(f) != 0) bad = 1;
    if (bad || rename(tmp, path) != 0) {
        eq_status st = eq_err_set(err, EQ_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        unlink(tmp);
        return st;
    }
    return EQ_OK;
}

typedef struct s_rd {
    const uint8_t *p, *end;
} s_rd;

static int s_get(s_rd *r, void *dst, size_t n)
{
    if ((size_t)(r->end - r->p) < n) return -1;
    memcpy(dst, r->p, n);
    r->p += n;
    return 0;
}

static int s_get_u32(s_rd *r, uint32_t *v)
{
    uint8_t b[4];
    if (s_get(r, b, 4)) return -1;
    *v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    return 0;
}

static int s_get_u64(s_rd *r, uint64_t *v)
{
    uint32_t lo, hi;
    if (s_get_u32(r, &lo) || s_get_u32(r, &hi)) return -1;
    *v = (uint64_t)hi << 32 | lo;
    return 0;
}

/* A string: pointer into the buffer (not NUL-terminated) and length. */
static int s_get_str(s_rd *r, const char **s, uint32_t *len)
{
    if (s_get_u32(r, len) || *len > 4095 || (size_t)(r->end - r->p) < *len) return -1;
    *s = (const char *)r->p;
    if (memchr(*s, '\0', *len)) return -1;
    r->p += *len;
    return 0;
}

eq_dataset *eq_dataset_open_index(const char *path, eq_err *err)
{
    uint8_t *buf = NULL;
    size_t cap = 0, len = 0;
    if (eq_read_file(path, &buf, &cap, &len, (size_t)1 << 34, err) != EQ_OK) return NULL;
    s_rd r = {buf, buf + len};
    eq_dataset *ds = NULL;
    char magic[8];
    uint32_t version = 0, ncls = 0, l;
    uint64_t n = 0, hash = 0;
    const char *str;
    if (s_get(&r, magic, 8) || memcmp(magic, S_IDX_MAGIC, 8)) {
        eq_err_set(err, EQ_ERR_PARSE, "%s: not an eq dataset index (bad magic)", path);
        goto fail;
    }
    if (s_get_u32(&r, &version) || version != S_IDX_VERSION) {
        eq_err_set(err, EQ_ERR_VERSION,
                   "%s: index version %u, this build reads %u: delete it to rebuild", path,
                   version, S_IDX_VERSION);
        goto fail;
    }
    if (s_get_u64(&r, &n) || s_get_u32(&r, &ncls) || s_get_u64(&r, &hash) ||
        s_get_str(&r, &str, &l)) {
        eq_err_set(err, EQ_ERR_CORRUPT, "%s: truncated header", path);
        goto fail;
    }
    /* every sample takes at least 16 bytes: bound n before allocating */
    if (n == 0 || n > (uint64_t)(r.end - r.p) / 16 || ncls == 0 || ncls > n) {
        eq_err_set(err, EQ_ERR_CORRUPT, "%s: %llu samples / %u classes do not fit the file", path,
                   (unsigned long long)n, ncls);
        goto fail;
    }
    char root[4096];
    memcpy(root, str, l);
    root[l] = '\0';
    if (!(ds = s_ds_alloc(EQ_DS_IMAGEFOLDER, root, err))) goto fail;
    ds->class_names = calloc(ncls, sizeof(char *));
    ds->labels = malloc(n * sizeof *ds->labels);
    ds->path_off = malloc(n * sizeof *ds->path_off);
    ds->sizes = malloc(n * sizeof *ds->sizes);
    ds->arena = malloc(len);
    if (!ds->class_names || !ds->labels || !ds->path_off || !ds->sizes || !ds->arena) {
        eq_err_set(err, EQ_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    ds->nclasses = ncls;
    for (uint32_t c = 0; c < ncls; c++) {
        if (s_get_str(&r, &str, &l) || !(ds->class_names[c] = strndup(str, l))) {
            eq_err_set(err, EQ_ERR_CORRUPT, "%s: class %u: bad name", path, c);
            goto fail;
        }
    }
    ds->n = n;
    eq_hash64 h;
    eq_hash64_init(&h);
    eq_hash64_u64(&h, EQ_DS_IMAGEFOLDER);
    eq_hash64_u64(&h, n);
    size_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t y;
        if (s_get_u32(&r, &y) || s_get_u64(&r, &ds->sizes[i]) || s_get_str(&r, &str, &l) ||
            y >= ncls || l == 0 || pos + l + 1 > len) {
            eq_err_set(err, EQ_ERR_CORRUPT, "%s: sample %zu: truncated or out of range", path, i);
            goto fail;
        }
        memcpy(ds->arena + pos, str, l);
        ds->arena[pos + l] = '\0';
        ds->path_off[i] = pos;
        ds->labels[i] = (int32_t)y;
        eq_hash64_u64(&h, y);
        eq_hash64_bytes(&h, ds->arena + pos, (size_t)l + 1);
        eq_hash64_u64(&h, ds->sizes[i]);
        pos += l + 1;
    }
    ds->fp.count = n;
    ds->fp.hash = eq_hash64_final(&h);
    if (r.p != r.end || ds->fp.hash != hash) {
        eq_err_set(err, EQ_ERR_CORRUPT, "%s: %s", path,
                   r.p != r.end ? "trailing bytes" : "content does not match its fingerprint");
        goto fail;
    }
    free(buf);
    return ds;
fail:
    free(buf);
    eq_dataset_destroy(&ds);
    return NULL;
}

/* ---------------------------------------------------------------- COCO -- */

static int s_isfile(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int s_isdir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

eq_dataset *eq_dataset_open_coco(const char *root, const char *split, eq_err *err)
{
    char ann[4096], img[4096], cache[4200];
    if (!root || !split || !*split || strchr(split, '/') || strstr(split, "..")) {
        eq_err_set(err, EQ_ERR_INVALID, "coco: a root and a split name are required");
        return NULL;
    }
    snprintf(ann, sizeof ann, "%s/annotations/instances_%s2017.json", root, split);
    if (!s_isfile(ann)) snprintf(ann, sizeof ann, "%s/annotations/instances_%s.json", root, split);
    if (!s_isfile(ann)) {
        eq_err_set(err, EQ_ERR_NOTFOUND, "coco %s: no annotations/instances_%s2017.json or instances_%s.json", root,
                   split, split);
        return NULL;
    }
    snprintf(img, sizeof img, "%s/%s2017", root, split);
    if (!s_isdir(img)) snprintf(img, sizeof img, "%s/%s", root, split);
    if (!s_isdir(img)) {
        eq_err_set(err, EQ_ERR_NOTFOUND, "coco %s: no image folder %s2017 or %s", root, split, split);
        return NULL;
    }
    snprintf(cache, sizeof cache, "%s.eqidx", ann);
    eq_cocoidx *x = eq_cocoidx_open(ann, cache, NULL, err);
    if (!x) return NULL;
    eq_dataset *ds = s_ds_alloc(EQ_DS_COCO, img, err);
    if (!ds) {
        eq_cocoidx_destroy(&x);
        return NULL;
    }
    ds->coco = x;
    ds->n = x->n_img;
    ds->nclasses = x->n_cat;
    if (!(ds->labels = eq_malloc_array(ds->n + 1, sizeof *ds->labels)) ||
        !(ds->class_names = calloc(x->n_cat + 1, sizeof(char *)))) {
        eq_err_set(err, EQ_ERR_NOMEM, "coco %s: out of memory", root);
        eq_dataset_destroy(&ds);
        return NULL;
    }
    for (uint32_t i = 0; i < x->n_img; i++)
        ds->labels[i] = x->img[i].id >= 0 && x->img[i].id <= INT32_MAX ? (int32_t)x->img[i].id : -1;
    for (uint32_t k = 0; k < x->n_cat; k++)
        if (!(ds->class_names[k] = strdup(eq_cocoidx_cat_name(x, k)))) {
            eq_err_set(err, EQ_ERR_NOMEM, "coco %s: out of memory", root);
            eq_dataset_destroy(&ds);
            return NULL;
        }
    ds->fp.count = x->n_img;
    ds->fp.hash = x->hash;
    return ds;
}

const struct eq_cocoidx *eq_dataset_coco(const eq_dataset *ds) { return ds ? ds->coco : NULL; }

/* ----------------------------------------------------------- accessors -- */

eq_ds_kind eq_dataset_kind(const eq_dataset *ds) { return ds->kind; }
size_t eq_dataset_size(const eq_dataset *ds) { return ds ? ds->n : 0; }
uint32_t eq_dataset_num_classes(const eq_dataset *ds) { return ds->nclasses; }
const char *eq_dataset_root(const eq_dataset *ds) { return ds->root; }
eq_ds_fingerprint eq_dataset_fingerprint(const eq_dataset *ds) { return ds->fp; }

const char *eq_dataset_class_name(const eq_dataset *ds, uint32_t cls)
{
    return cls < ds->nclasses ? ds->class_names[cls] : NULL;
}

int32_t eq_dataset_label(const eq_dataset *ds, size_t i)
{
    return i < ds->n ? ds->labels[i] : -1;
}

const char *eq_dataset_relpath(const eq_dataset *ds, size_t i, uint64_t *size)
{
    if (ds->kind != EQ_DS_IMAGEFOLDER || i >= ds->n) return NULL;
    if (size) *size = ds->sizes[i];
    return ds->arena + ds->path_off[i];
}

eq_status eq_dataset_pixels(const eq_dataset *ds, size_t i, const uint8_t **pix, uint32_t *h,
                            uint32_t *w, uint32_t *c, eq_err *err)
{
    if (!ds->pix) return eq_err_set(err, EQ_ERR_INVALID, "%s: not an in-memory dataset", ds->root);
    if (i >= ds->n)
        return eq_err_set(err, EQ_ERR_INVALID, "%s: index %zu out of range [0, %zu)", ds->root, i,
                          ds->n);
    size_t per = (size_t)ds->h * ds->w * ds->c;
    *pix = ds->pix + i * per;
    *h = ds->h;
    *w = ds->w;
    *c = ds->c;
    return EQ_OK;
}
