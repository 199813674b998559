/*
 * trainer/eq_trainer_main.c -- the eq-trainer daemon: flags, the
 * experiment config, signals; trainer/train.h does the work.
 * doc/eq-trainer.md is the user's reference.
 *
 * Exit status: 0 trained to the end (or evaluated); 1 failed (the log names
 * why); 2 bad usage or config; 3 stopped by a signal or the control socket
 * (a checkpoint to resume from was written); 4 the loss became NaN or
 * infinite (no checkpoint of that step was written).
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "trainer/checkpoint.h"
#include "trainer/dist.h"
#include "trainer/feeder.h"
#include "trainer/train.h"

#define S_MAX_SETS 128

static eq_train *s_train; /* for the signal handler only */

static volatile sig_atomic_t s_stop_early; /* a signal before s_train existed */

static void s_on_signal(int sig)
{
    (void)sig;
    if (s_train)
        eq_train_stop(s_train);
    else
        s_stop_early = 1;
}

/* Whether --set `arg` sets [train] policy (the key as core/config.c reads
 * it: surrounding blanks ignored); *val, *vn: its value, trimmed. */
static bool s_sets_policy(const char *arg, const char **val, size_t *vn)
{
    const char *eq = strchr(arg, '=');
    if (!eq) return false;
    const char *k = arg, *ke = eq;
    while (k < ke && isspace((unsigned char)*k))
        k++;
    while (ke > k && isspace((unsigned char)ke[-1]))
        ke--;
    if ((size_t)(ke - k) != strlen("train.policy") || memcmp(k, "train.policy", (size_t)(ke - k))) return false;
    const char *v = eq + 1;
    size_t n = strlen(v);
    while (n && isspace((unsigned char)*v))
        v++, n--;
    while (n && isspace((unsigned char)v[n - 1]))
        n--;
    *val = v;
    *vn = n;
    return true;
}

static void s_usage(FILE *f)
{
    fprintf(f, "usage: eq-trainer --config FILE --loaders EP[,EP...] [options]\n"
               "Train the experiment of FILE on batches from eq-loaders; val predictions go to eq-eval.\n"
               "\n"
               "  --config FILE          experiment config ([loader] [data] [model] [quant.wt] [quant.fm]\n"
               "                         [optim] [schedule] [train]; `eqctl config doc` lists every key)\n"
               "  --set SECTION.KEY=VAL  override a config key (repeatable)\n"
               "  --policy FILE          policy file: quantizer changes at start-up and at given epochs\n"
               "                         (the same as --set train.policy=FILE; doc/config.md \"Policy files\")\n"
               "  --loaders EP[,EP...]   data endpoints of the eq-loaders\n"
               "  --eval EP              eq-eval's PRED endpoint (default: no evaluation)\n"
               "  --pub EP               bind a METRICS publisher here (e.g. tcp://127.0.0.1:*)\n"
               "  --control EP           bind the control socket here (status, stop)\n"
               "  --resume CKPT          continue from a checkpoint (same config)\n"
               "  --pretrained FILE      start from these weights (safetensors, matched by name)\n"
               "  -e, --evaluate         only evaluate (the weights of --resume or --pretrained)\n"
               "  --rank R --world W     data-parallel rank R of W (default 0 of 1)\n"
               "  --rendezvous EP        ranks > 0: rank 0's control endpoint\n"
               "  --dist-bind EP         this rank's collective endpoint (default tcp://127.0.0.1:*)\n"
               "  --log-level LEVEL      debug, info, warn, error (default info)\n"
               "  --log-json             log JSON lines\n"
               "  --help\n"
               "Exit status: 0 done, 1 failed, 2 bad usage or config, 3 stopped (checkpoint written),\n"
               "4 training diverged (the loss became NaN or infinite, or the fp16 loss scale fell below\n"
               "  2^-126).\n");
}

int main(int argc, char **argv)
{
    static const struct option o[] = { { "config", required_argument, 0, 'c' },
                                       { "set", required_argument, 0, 's' },
                                       { "policy", required_argument, 0, 'O' },
                                       { "loaders", required_argument, 0, 'L' },
                                       { "eval", required_argument, 0, 'v' },
                                       { "pub", required_argument, 0, 'p' },
                                       { "control", required_argument, 0, 'C' },
                                       { "resume", required_argument, 0, 'r' },
                                       { "pretrained", required_argument, 0, 'P' },
                                       { "evaluate", no_argument, 0, 'E' },
                                       { "rank", required_argument, 0, 'R' },
                                       { "world", required_argument, 0, 'W' },
                                       { "rendezvous", required_argument, 0, 'Z' },
                                       { "dist-bind", required_argument, 0, 'D' },
                                       { "log-level", required_argument, 0, 'l' },
                                       { "log-json", no_argument, 0, 'j' },
                                       { "help", no_argument, 0, 'h' },
                                       { 0, 0, 0, 0 } };
    const char *config = NULL, *sets[S_MAX_SETS + 1], *policy = NULL;
    size_t nsets = 0;
    char *loaders_arg = NULL;
    eq_train_opts to = { 0 };
    int c;
    /* SIGINT/SIGTERM stop cleanly (exit 3) from the start, also while the
     * config is read and the model built (eqctl run's Ctrl-C at start-up
     * used to kill the trainer: "killed by signal 15"). */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* eqctl run starts the trainer with both blocked, so that one sent
     * before this point waits for the handler instead of killing it. */
    sigset_t stopsigs;
    sigemptyset(&stopsigs);
    sigaddset(&stopsigs, SIGINT);
    sigaddset(&stopsigs, SIGTERM);
    sigprocmask(SIG_UNBLOCK, &stopsigs, NULL);
    eq_log_set_role("trainer", 0);
    long rank = 0, world = 1;
    while ((c = getopt_long(argc, argv, "e", o, NULL)) != -1) {
        switch (c) {
        case 'c': config = optarg; break;
        case 's':
            if (nsets == S_MAX_SETS) {
                fprintf(stderr, "eq-trainer: more than %d --set\n", S_MAX_SETS);
                return 2;
            }
            sets[nsets++] = optarg;
            break;
        case 'O':
            if (policy && strcmp(policy, optarg)) {
                fprintf(stderr, "eq-trainer: --policy given twice ('%s' and '%s')\n", policy, optarg);
                return 2;
            }
            policy = optarg;
            break;
        case 'L': loaders_arg = optarg; break;
        case 'v': to.eval = optarg; break;
        case 'p': to.pub = optarg; break;
        case 'C': to.control = optarg; break;
        case 'r': to.resume = optarg; break;
        case 'P': to.pretrained = optarg; break;
        case 'e':
        case 'E': to.evaluate = true; break;
        case 'R':
        case 'W': {
            char *end;
            errno = 0;
            long v = strtol(optarg, &end, 10);
            if (errno || end == optarg || *end || v < (c == 'R' ? 0 : 1) || v > EQ_DIST_MAX_WORLD - (c == 'R')) {
                fprintf(stderr, "eq-trainer: --%s '%s': expected %d..%d\n", c == 'R' ? "rank" : "world", optarg,
                        c == 'R' ? 0 : 1, EQ_DIST_MAX_WORLD - (c == 'R'));
                return 2;
            }
            if (c == 'R')
                rank = v;
            else
                world = v;
            break;
        }
        case 'Z': to.rendezvous = optarg; break;
        case 'D': to.dist_bind = optarg; break;
        case 'l': {
            eq_log_level lv;
            if (eq_log_level_parse(optarg, &lv)) {
                fprintf(stderr, "eq-trainer: --log-level '%s': expected debug, info, warn or error\n", optarg);
                return 2;
            }
            eq_log_set_level(lv);
            break;
        }
        case 'j': eq_log_set_json(1); break;
        case 'h': s_usage(stdout); return 0;
        default: s_usage(stderr); return 2;
        }
    }
    if (optind != argc || !config || !loaders_arg) {
        if (optind == argc) fprintf(stderr, "eq-trainer: --config and --loaders are required\n");
        s_usage(stderr);
        return 2;
    }
    /* --loaders a,b,c */
    const char *eps[EQ_FEEDER_MAX_LOADERS];
    size_t neps = 0;
    char *save = NULL;
    for (char *tok = strtok_r(loaders_arg, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (neps == EQ_FEEDER_MAX_LOADERS) {
            fprintf(stderr, "eq-trainer: more than %d loaders\n", EQ_FEEDER_MAX_LOADERS);
            return 2;
        }
        eps[neps++] = tok;
    }
    if (!neps) {
        fprintf(stderr, "eq-trainer: --loaders: no endpoint\n");
        return 2;
    }
    if (rank >= world) {
        fprintf(stderr, "eq-trainer: --rank %ld is not below --world %ld\n", rank, world);
        return 2;
    }
    if (to.evaluate && !to.resume && !to.pretrained) {
        fprintf(stderr, "eq-trainer: --evaluate needs the weights: --resume CKPT or --pretrained FILE\n");
        return 2;
    }
    /* --policy FILE is --set train.policy=FILE; a --set naming another file
     * is a contradiction, not an override. */
    char policy_set[sizeof "train.policy=" + 1023];
    if (policy) {
        for (size_t i = 0; i < nsets; i++) {
            const char *v;
            size_t vn;
            if (s_sets_policy(sets[i], &v, &vn) && (vn != strlen(policy) || memcmp(v, policy, vn))) {
                fprintf(stderr, "eq-trainer: --policy '%s' and --set '%s' name different policy files\n", policy,
                        sets[i]);
                return 2;
            }
        }
        if (!*policy || strlen(policy) > 1023) { /* [train] policy's limit */
            fprintf(stderr, "eq-trainer: --policy '%s': expected a file name of 1..1023 bytes\n", policy);
            return 2;
        }
        snprintf(policy_set, sizeof policy_set, "train.policy=%s", policy);
        sets[nsets++] = policy_set;
    }
    to.rank = (int)rank;
    to.world = (int)world;
    eq_log_set_role("trainer", (int)rank);
    to.loaders = eps;
    to.nloaders = neps;
    eq_experiment x;
    eq_err e = { 0 };
    char *text = NULL;
    if (eq_experiment_load(&x, config, sets, nsets, &text, &e) != EQ_OK) {
        fprintf(stderr, "eq-trainer: %s\n", e.msg);
        return 2;
    }
    to.config_text = text;
    /* A checkpoint that cannot be resumed is refused now, not after the
     * loaders answered (a corrupt file, or nothing left to train). */
    if (to.resume) {
        eq_ckpt_run cr;
        if (eq_checkpoint_peek(to.resume, &cr, &e) != EQ_OK) {
            fprintf(stderr, "eq-trainer: --resume: %s\n", e.msg);
            free(text);
            return 1;
        }
        if (!to.evaluate && cr.epoch >= x.sched.epochs) {
            fprintf(stderr,
                    "eq-trainer: --resume %s: the checkpoint is at epoch %" PRId64 " step %" PRId64
                    " and [schedule] epochs = %" PRId64 ": nothing left to train (raise schedule.epochs, or "
                    "--evaluate to evaluate it)\n",
                    to.resume, cr.epoch, cr.step, (int64_t)x.sched.epochs);
            free(text);
            return 2;
        }
    }
    s_train = eq_train_new(&x, &to, &e);
    free(text);
    if (!s_train) {
        eq_error("%s", e.msg);
        return 1;
    }
    if (s_stop_early) eq_train_stop(s_train); /* stops at the first chance (exit 3) */
    eq_info("started (pid %ld): %zu loader(s), eval %s, pub on %s, control on %s", (long)getpid(), neps,
            to.eval ? to.eval : "-", *eq_train_pub_endpoint(s_train) ? eq_train_pub_endpoint(s_train) : "-",
            *eq_train_control_endpoint(s_train) ? eq_train_control_endpoint(s_train) : "-");
    eq_status st = eq_train_run(s_train, &e);
    int rc = 0;
    if (st == EQ_ERR_INTERRUPTED) {
        eq_warn("%s", e.msg);
        rc = 3;
    } else if (st != EQ_OK && eq_train_diverged(s_train)) {
        eq_error("%s", e.msg);
        rc = 4;
    } else if (st != EQ_OK) {
        eq_error("%s", e.msg);
        rc = 1;
    }
    eq_train *t = s_train;
    s_train = NULL;
    eq_train_destroy(&t);
    return rc;
}
