/*
 * loader/eq_loader_main.c -- the eq-loader daemon: flags and config, CURVE
 * keys, signals, then eq_loader_server (loader/server.h) does the work.
 * doc/eq-loader.md is the user's reference.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/config.h"
#include "core/file.h"
#include "core/log.h"
#include "loader/server.h"
#include "proto/proto_zmq.h"

#define S_MAX_SETS 64
#define S_MAX_KEYS 256

static eq_loader_server *s_server; /* for the signal handler only */

static void s_on_signal(int sig)
{
    (void)sig;
    eq_loader_server_stop(s_server);
}

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: eq-loader [options]\n"
            "Serve decoded, augmented batches of the declared datasets over ZeroMQ.\n"
            "\n"
            "  --bind ENDPOINT         data socket (default tcp://127.0.0.1:5555)\n"
            "  --control ENDPOINT      control socket (default tcp://127.0.0.1:5556; \"\" for none)\n"
            "  --dataset NAME=PATH     serve the IDX, CIFAR, ImageFolder or COCO directory PATH as NAME;\n"
            "                          repeatable (default fashion-mnist=%s)\n"
            "  --threads N             decode workers (default: one per CPU)\n"
            "  --max-inflight-mb N     budget of batches being made or sent (default 1024)\n"
            "  --curve-secret FILE     CURVE secret key (eqctl keygen) ...\n"
            "  --curve-allow DIR|FILE  ... and the client public keys allowed (*.pub in DIR)\n"
            "  --insecure              allow a non-loopback bind without CURVE\n"
            "  --config FILE           read [loader] (and check [data]) from a config file, e.g. the\n"
            "                          whole experiment file: other sections are skipped (flags win)\n"
            "  --set SECTION.KEY=VALUE override a config key (repeatable)\n"
            "  --log-level LEVEL       debug, info, warn, error (default info)\n"
            "  --log-json              log JSON lines\n"
            "  --version, --help\n",
            EQ_FASHION_MNIST_DIR);
}

/* An experiment config holds sections for every program; eq-loader reads
 * [loader] and [data] (checked strictly: unknown keys are errors) and
 * blanks the lines of every other section, so line numbers in messages
 * stay those of the file.  A section header is a line whose first
 * non-blank character is '['; a malformed one is kept for the parser to
 * report. */
static void s_keep_sections(char *text, size_t len)
{
    int keep = 1;
    size_t i = 0;
    while (i < len) {
        size_t e = i;
        while (e < len && text[e] != '\n') e++;
        size_t p = i;
        while (p < e && (text[p] == ' ' || text[p] == '\t')) p++;
        if (p < e && text[p] == '[') {
            size_t q = p + 1;
            while (q < e && text[q] != ']') q++;
            if (q < e) {
                size_t a = p + 1, b = q;
                while (a < b && (text[a] == ' ' || text[a] == '\t')) a++;
                while (b > a && (text[b - 1] == ' ' || text[b - 1] == '\t')) b--;
                keep = (b - a == 6 && !memcmp(text + a, "loader", 6)) || (b - a == 4 && !memcmp(text + a, "data", 4));
            } else {
                keep = 1;
            }
        }
        if (!keep)
            for (size_t k = i; k < e; k++)
                if (text[k] != '\r') text[k] = ' ';
        i = e + 1;
    }
}

static int s_has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int s_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The allow-list: one key file, or every *.pub file of a directory. */
static eq_status s_load_allow(const char *path, char (*keys)[EQ_PROTO_KEY_Z85], size_t *n, eq_err *err)
{
    struct stat st;
    *n = 0;
    if (stat(path, &st) != 0) return eq_err_set(err, EQ_ERR_NOTFOUND, "--curve-allow %s: %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode)) {
        *n = 1;
        return eq_proto_curve_load(path, false, keys[0], err);
    }
    DIR *d = opendir(path);
    if (!d) return eq_err_set(err, EQ_ERR_IO, "--curve-allow %s: %s", path, strerror(errno));
    char *names[S_MAX_KEYS];
    size_t nn = 0;
    struct dirent *de;
    eq_status ret = EQ_OK;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || !s_has_suffix(de->d_name, ".pub")) continue;
        if (nn == S_MAX_KEYS) {
            ret = eq_err_set(err, EQ_ERR_LIMIT, "--curve-allow %s: more than %d keys", path, S_MAX_KEYS);
            break;
        }
        names[nn++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, nn, sizeof names[0], s_cmp);
    for (size_t i = 0; i < nn && ret == EQ_OK; i++) {
        char p[2048];
        snprintf(p, sizeof p, "%s/%s", path, names[i] ? names[i] : "");
        ret = eq_proto_curve_load(p, false, keys[*n], err);
        if (ret == EQ_OK) (*n)++;
    }
    for (size_t i = 0; i < nn; i++) free(names[i]);
    if (ret == EQ_OK && *n == 0)
        ret = eq_err_set(err, EQ_ERR_NOTFOUND, "--curve-allow %s: no *.pub key files", path);
    return ret;
}

int main(int argc, char **argv)
{
    enum {
        O_BIND = 256, O_CONTROL, O_DATASET, O_THREADS, O_INFLIGHT, O_SECRET, O_ALLOW, O_INSECURE, O_CONFIG,
        O_SET, O_LEVEL, O_JSON, O_VERSION, O_HELP
    };
    static const struct option opts[] = {
        {"bind", required_argument, 0, O_BIND},
        {"control", required_argument, 0, O_CONTROL},
        {"ctl", required_argument, 0, O_CONTROL},
        {"dataset", required_argument, 0, O_DATASET},
        {"threads", required_argument, 0, O_THREADS},
        {"max-inflight-mb", required_argument, 0, O_INFLIGHT},
        {"curve-secret", required_argument, 0, O_SECRET},
        {"curve-allow", required_argument, 0, O_ALLOW},
        {"insecure", no_argument, 0, O_INSECURE},
        {"config", required_argument, 0, O_CONFIG},
        {"set", required_argument, 0, O_SET},
        {"log-level", required_argument, 0, O_LEVEL},
        {"log-json", no_argument, 0, O_JSON},
        {"version", no_argument, 0, O_VERSION},
        {"help", no_argument, 0, O_HELP},
        {0, 0, 0, 0},
    };
    const char *bind = NULL, *control = NULL, *threads = NULL, *inflight = NULL, *secret = NULL, *allow = NULL,
               *config = NULL;
    const char *datasets[EQ_LOADER_MAX_DATASETS];
    const char *sets[S_MAX_SETS];
    size_t ndatasets = 0, nsets = 0;
    int insecure = 0, c;
    eq_log_set_role("loader", -1);
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_BIND: bind = optarg; break;
        case O_CONTROL: control = optarg; break;
        case O_DATASET:
            if (ndatasets == EQ_LOADER_MAX_DATASETS) {
                fprintf(stderr, "eq-loader: at most %d --dataset\n", EQ_LOADER_MAX_DATASETS);
                return 2;
            }
            datasets[ndatasets++] = optarg;
            break;
        case O_THREADS: threads = optarg; break;
        case O_INFLIGHT: inflight = optarg; break;
        case O_SECRET: secret = optarg; break;
        case O_ALLOW: allow = optarg; break;
        case O_INSECURE: insecure = 1; break;
        case O_CONFIG: config = optarg; break;
        case O_SET:
            if (nsets == S_MAX_SETS) {
                fprintf(stderr, "eq-loader: at most %d --set\n", S_MAX_SETS);
                return 2;
            }
            sets[nsets++] = optarg;
            break;
        case O_LEVEL: {
            eq_log_level lv;
            if (eq_log_level_parse(optarg, &lv) != 0) {
                fprintf(stderr, "eq-loader: --log-level '%s' unknown (debug, info, warn, error, off)\n", optarg);
                return 2;
            }
            eq_log_set_level(lv);
            break;
        }
        case O_JSON: eq_log_set_json(1); break;
        case O_VERSION: printf("eq-loader (eq) %s\n", PACKAGE_VERSION); return 0;
        case O_HELP: s_usage(stdout); return 0;
        default: s_usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "eq-loader: unexpected argument '%s'\n", argv[optind]);
        s_usage(stderr);
        return 2;
    }

    /* Defaults, then the config file, then --set, then the flags. */
    static eq_loader_cfg lc;
    eq_config_section secs[2];
    eq_loader_config_sections(&lc, NULL, secs);
    eq_err e = {0};
    eq_status st;
    if (config) {
        char *text = NULL;
        size_t len = 0;
        st = eq_file_read(config, EQ_CONFIG_MAX_FILE, &text, &len, &e);
        if (!st) {
            s_keep_sections(text, len);
            st = eq_config_parse_buffer(secs, 2, config, text, len, sets, nsets, &e);
        }
        free(text);
    } else {
        st = eq_config_parse_buffer(secs, 2, "(defaults)", "", 0, sets, nsets, &e);
    }
    /* Flags are applied as --set overrides so they get the same checks. */
    char fl[4][EQ_LOADER_PATH_CAP + 32];
    const char *fname[4];
    size_t nfl = 0;
    if (bind) fname[nfl] = "--bind", snprintf(fl[nfl++], sizeof fl[0], "loader.bind=%s", bind);
    if (control) fname[nfl] = "--control", snprintf(fl[nfl++], sizeof fl[0], "loader.control=%s", control);
    if (threads) fname[nfl] = "--threads", snprintf(fl[nfl++], sizeof fl[0], "loader.threads=%s", threads);
    if (inflight)
        fname[nfl] = "--max-inflight-mb", snprintf(fl[nfl++], sizeof fl[0], "loader.max_inflight_mb=%s", inflight);
    if (st) {
        fprintf(stderr, "eq-loader: %s\n", e.msg);
        return 2;
    }
    for (size_t i = 0; i < nfl; i++)
        if (eq_config_set(secs, 2, fl[i], &e) != EQ_OK) {
            /* Name the flag, not the --set it became. */
            const char *why = strstr(e.msg, "]");
            fprintf(stderr, "eq-loader: %s: %s\n", fname[i], why && why[1] ? why + 2 : e.msg);
            return 2;
        }
    if (secret) snprintf(lc.curve_secret, sizeof lc.curve_secret, "%s", secret);
    if (allow) snprintf(lc.curve_allow, sizeof lc.curve_allow, "%s", allow);
    if (insecure) lc.insecure = true;
    const char *decl[EQ_LOADER_MAX_DATASETS];
    size_t ndecl = ndatasets;
    for (size_t i = 0; i < ndatasets; i++) decl[i] = datasets[i];
    if (!ndatasets) {
        ndecl = lc.ndatasets;
        for (size_t i = 0; i < ndecl; i++) decl[i] = lc.datasets[i];
    }
    if (!!lc.curve_secret[0] != !!lc.curve_allow[0]) {
        fprintf(stderr, "eq-loader: --curve-secret and --curve-allow go together\n");
        return 2;
    }

    void *ctx = zmq_ctx_new();
    if (!ctx) {
        fprintf(stderr, "eq-loader: zmq_ctx_new: %s\n", zmq_strerror(zmq_errno()));
        return 1;
    }
    int rc = 1;
    eq_proto_zap *zap = NULL;
    char sec_key[EQ_PROTO_KEY_Z85];
    static char keys[S_MAX_KEYS][EQ_PROTO_KEY_Z85];
    size_t nkeys = 0;
    if (lc.curve_secret[0]) {
        if (eq_proto_curve_load(lc.curve_secret, true, sec_key, &e) ||
            s_load_allow(lc.curve_allow, keys, &nkeys, &e) || !(zap = eq_proto_zap_new(ctx, keys, nkeys, &e))) {
            eq_error("eq-loader: %s", e.msg);
            goto out;
        }
        eq_info("loader: CURVE on, %zu client keys allowed", nkeys);
    }
    eq_loader_server_cfg cfg = {
        .bind = lc.bind,
        .control = lc.control,
        .datasets = decl,
        .ndatasets = ndecl,
        .threads = (int)lc.threads,
        .max_inflight_bytes = (uint64_t)lc.max_inflight_mb << 20,
        .max_jobs = (uint32_t)lc.max_jobs,
        .curve_secret = zap ? sec_key : NULL,
        .zap = zap,
        .insecure = lc.insecure,
    };
    if (!(s_server = eq_loader_server_new(ctx, &cfg, &e))) {
        int dflt = !ndatasets && ndecl == 1 && !strcmp(decl[0], "fashion-mnist=" EQ_FASHION_MNIST_DIR);
        eq_error("eq-loader: %s%s", e.msg,
                 dflt && e.code == EQ_ERR_NOTFOUND
                     ? " (the default dataset: install Debian's dataset-fashion-mnist, or give --dataset NAME=PATH)"
                     : "");
        goto out;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (eq_loader_server_run(s_server, &e) != EQ_OK)
        eq_error("eq-loader: %s", e.msg);
    else
        rc = 0;
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
out:
    eq_loader_server_destroy(&s_server);
    eq_proto_zap_destroy(&zap);
    zmq_ctx_term(ctx);
    return rc;
}
