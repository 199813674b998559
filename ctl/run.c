/*
 * ctl/run.c -- `eqctl run` (ctl/run.h): start loaders, evaluator and
 * trainer locally, follow their METRICS, stop them, summarise.
 */
#include "config.h"

#include "ctl/run.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/json.h"
#include "core/log.h"
#include "proto/proto_zmq.h"
#include "trainer/checkpoint.h"
#include "trainer/policy.h"
#include "trainer/train.h"

#define S_MAX_LOADERS 16
#define S_MAX_RANKS 16
#define S_MAX_SETS 128
#define S_MAX_ARGS (2 * S_MAX_SETS + 64)
#define S_MAX_POINTS 100000

typedef struct s_child {
    const char *what; /* "eq-loader 0", "eq-eval", "eq-trainer" */
    char label[32];
    pid_t pid;
    int status; /* waitpid status once exited */
    bool exited;
    bool reported; /* a loader's death was reported (others go on) */
    char log[1300];   /* its log file (stdout and stderr) */
} s_child;

typedef struct s_run {
    s_child ch[S_MAX_LOADERS + S_MAX_RANKS + 1];
    int nch;
    int trainer, evaluator; /* indices in ch (trainer: rank 0) */
    int tr[S_MAX_RANKS], ntr; /* every trainer rank */
    char sock_dir[64];
    char log_dir[1200];
    /* what we learnt */
    double *loss_x, *loss_y; /* global step, loss */
    size_t npoints;
    double top1[1024], top5[1024];
    bool have_eval[1024];
    uint64_t last_epoch_eval;
    bool any_eval, eval_failed;
    double last_loss, last_img_s, last_wait;
    uint64_t epoch, step, steps;
    bool trainer_done;
    uint32_t trainer_status;
    char eval_path[1300]; /* eq-eval's JSONL ("" while unknown) */
    long eval_off;        /* where its lines not yet read start (its size before this run's eq-eval started) */
} s_run;

static volatile sig_atomic_t s_interrupted;

static void s_on_sigint(int sig)
{
    (void)sig;
    s_interrupted = 1;
}

/* The directory this eqctl lives in (the other programs are beside it). */
static int s_bindir(char *out, size_t cap)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return -1;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (!slash) return -1;
    *slash = 0;
    snprintf(out, cap, "%s", exe);
    return 0;
}

/* block_stop: start the program with SIGINT and SIGTERM blocked (the mask
 * survives exec), for eq-trainer, which unblocks them once its handler is
 * in place: a stop sent while it starts (Ctrl-C right after eqctl run)
 * then stops it cleanly instead of killing it. */
static pid_t s_spawn(const char *prog, char *const argv[], const char *log, bool block_stop, char *errbuf,
                     size_t cap)
{
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(errbuf, cap, "%s: %s", log, strerror(errno));
        return -1;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(errbuf, cap, "fork: %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (pid == 0) {
        /* Own process group: a terminal's Ctrl-C reaches eqctl only, which
         * then stops the parts in order. */
        setpgid(0, 0);
        /* eqctl killed (SIGKILL, a crash): every part gets the SIGTERM that
         * eqctl would have sent (the trainer checkpoints), rather than a
         * trainer training on for hours and daemons serving nobody.  The
         * signal is armed after the fork: a parent that died in between is
         * caught by the getppid test. */
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent) _exit(127);
        dup2(fd, 1);
        dup2(fd, 2);
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0) dup2(nul, 0);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        if (block_stop) {
            sigset_t ss;
            sigemptyset(&ss);
            sigaddset(&ss, SIGINT);
            sigaddset(&ss, SIGTERM);
            sigprocmask(SIG_BLOCK, &ss, NULL);
        }
        execv(prog, argv);
        fprintf(stderr, "eqctl run: cannot run %s: %s\n", prog, strerror(errno));
        _exit(127);
    }
    close(fd);
    return pid;
}

static void s_reap(s_run *r)
{
    for (int i = 0; i < r->nch; i++) {
        s_child *c = &r->ch[i];
        if (c->exited || c->pid <= 0) continue;
        int st;
        pid_t p = waitpid(c->pid, &st, WNOHANG);
        if (p == c->pid) {
            c->exited = true;
            c->status = st;
        }
    }
}

/* The last error a part wrote to its log (a line at level ERROR, or a
 * program's "eq-xxx: ..." usage/config error), into out; "" if none.  So the
 * summary says why a part failed, not only which. */
static void s_last_error(const char *log, char *out, size_t cap)
{
    out[0] = 0;
    FILE *f = fopen(log, "r");
    if (!f) return;
    char buf[65536];
    long size = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (size > (long)sizeof buf - 1) fseek(f, size - (long)sizeof buf + 1, SEEK_SET);
    else fseek(f, 0, SEEK_SET);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    for (char *save = NULL, *l = strtok_r(buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        const char *m = NULL, *e = strstr(l, " ERROR ");
        if (e) {
            m = e + 7;
            const char *sp = strchr(m, ' '); /* " trainer[0] msg": skip the role */
            if (sp && sp > m && sp[-1] == ']') m = sp + 1;
        } else if (!strncmp(l, "eq-", 3)) {
            const char *sp = strchr(l, ' ');
            if (sp && sp[-1] == ':') m = l;
        }
        if (m) snprintf(out, cap, "%s", m);
    }
}

static const char *s_status_str(int st, char *buf, size_t cap)
{
    if (WIFEXITED(st))
        snprintf(buf, cap, "exit %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(buf, cap, "killed by signal %d", WTERMSIG(st));
    else
        snprintf(buf, cap, "status %d", st);
    return buf;
}

/* "eq-trainer exit 1: <its last logged error>" for the summary. */
static const char *s_fail_msg(const s_child *c, char *buf, size_t cap)
{
    char st[64], why[400];
    s_status_str(c->status, st, sizeof st);
    s_last_error(c->log, why, sizeof why);
    const char *nan = WIFEXITED(c->status) && WEXITSTATUS(c->status) == 4 && !strncmp(c->what, "eq-trainer", 10)
                          ? " (training diverged: a non-finite loss, or the loss scale fell too low)"
                          : "";
    snprintf(buf, cap, "%s %s%s%s%s", c->what, st, nan, why[0] ? ": " : "", why);
    return buf;
}

/* SIGTERM the child and wait at most `ms`, then SIGKILL. */
static void s_stop_child(s_run *r, int i, uint64_t ms)
{
    s_child *c = &r->ch[i];
    if (c->pid <= 0) return;
    s_reap(r);
    if (c->exited) return;
    kill(c->pid, SIGTERM);
    uint64_t t0 = eq_clock_ms();
    while (!c->exited && eq_clock_ms() - t0 < ms) {
        eq_sleep_ms(20);
        s_reap(r);
    }
    if (!c->exited) {
        kill(c->pid, SIGKILL);
        int st;
        waitpid(c->pid, &st, 0);
        c->exited = true;
        c->status = st;
    }
}

static bool s_is_trainer(const s_run *r, int i)
{
    for (int k = 0; k < r->ntr; k++)
        if (r->tr[k] == i) return true;
    return false;
}

static void s_signal_trainers(s_run *r, int sig)
{
    for (int k = 0; k < r->ntr; k++)
        if (!r->ch[r->tr[k]].exited && r->ch[r->tr[k]].pid > 0) kill(r->ch[r->tr[k]].pid, sig);
}

static void s_on_metrics(s_run *r, const eq_msg_metrics *m, bool tty, bool json)
{
    if (!strcmp(m->source, "trainer")) {
        r->epoch = m->epoch;
        r->step = m->step;
        if (m->steps) r->steps = m->steps;
        if (!strcmp(m->kind, "train")) {
            r->last_loss = m->loss;
            r->last_img_s = m->img_s;
            r->last_wait = m->wait_pct;
            if (r->npoints < S_MAX_POINTS) {
                r->loss_x[r->npoints] = (double)(m->epoch * r->steps + m->step);
                r->loss_y[r->npoints] = m->loss;
                r->npoints++;
            }
            if (tty && !json) {
                char eta[32];
                eq_clock_fmt_eta(m->eta_s, eta, sizeof eta);
                fprintf(stderr, "\r\033[Kepoch %" PRIu64 " step %" PRIu64 "/%" PRIu64 " loss %.4f lr %.4g %.0f img/s wait %.1f%% ETA %s",
                        m->epoch, m->step, m->steps, m->loss, m->lr, m->img_s, m->wait_pct, eta);
            }
        } else if (!strcmp(m->kind, "epoch")) {
            if (!json)
                fprintf(tty ? stderr : stdout, "%sepoch %" PRIu64 ": %" PRIu64 " steps, mean loss %.4f, %.0f s%s\n",
                        tty ? "\r\033[K" : "", m->epoch, m->step, m->loss, m->elapsed_s, "");
        } else if (!strcmp(m->kind, "done")) {
            r->trainer_done = true;
            r->trainer_status = m->status;
        }
    } else if (!strcmp(m->source, "eval") && !strcmp(m->kind, "eval")) {
        if (m->epoch < 1024 && r->have_eval[m->epoch]) return; /* also read from eval.jsonl */
        if (m->status) {
            r->eval_failed = true;
            if (!json)
                fprintf(stderr, "%seq-eval: epoch %" PRIu64 ": %s (see the eval log)\n", tty ? "\r\033[K" : "",
                        m->epoch, eq_status_str((eq_status)m->status));
            return;
        }
        if (m->epoch < 1024) {
            r->top1[m->epoch] = m->top1;
            r->top5[m->epoch] = m->top5;
            r->have_eval[m->epoch] = true;
        }
        r->any_eval = true;
        r->last_epoch_eval = m->epoch;
        if (!json)
            fprintf(tty ? stderr : stdout, "%sepoch %" PRIu64 ": val Top-1 %.2f%%  Top-5 %.2f%%  (%" PRIu64 " samples, eq-eval)\n",
                    tty ? "\r\033[K" : "", m->epoch, m->top1, m->top5, m->samples);
    }
    fflush(stdout);
}

/* eq-eval's PUB messages can be lost: a SUB joins a PUB a little after the
 * publisher binds, and a short run (--evaluate) can finish before that.
 * eq-eval also appends each result to its JSONL file, so read what it
 * appended during this run and take the results the PUB did not deliver. */
static void s_eval_from_file(s_run *r, bool tty, bool json)
{
    if (!r->eval_path[0]) return;
    FILE *f = fopen(r->eval_path, "r");
    if (!f) return;
    if (fseek(f, r->eval_off, SEEK_SET)) {
        fclose(f);
        return;
    }
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        size_t len = strlen(line);
        if (!len || line[len - 1] != '\n') break; /* a line still being written */
        r->eval_off += (long)len;                   /* read each complete line once */
        eq_json_doc *d = eq_json_parse(line, len, NULL, NULL);
        if (!d) continue;
        const eq_json *o = eq_json_root(d), *ep = eq_json_get(o, "epoch"), *t1 = eq_json_get(o, "top1"),
                      *t5 = eq_json_get(o, "top5"), *ns = eq_json_get(o, "samples"), *er = eq_json_get(o, "error");
        if (ep && eq_json_typeof(ep) == EQ_JSON_NUMBER && eq_json_num(ep) >= 0) {
            eq_msg_metrics m;
            memset(&m, 0, sizeof m);
            snprintf(m.source, sizeof m.source, "eval");
            snprintf(m.kind, sizeof m.kind, "eval");
            m.epoch = (uint64_t)eq_json_num(ep);
            if (er) m.status = EQ_ERR_INVALID;
            if (t1) m.top1 = eq_json_num(t1);
            if (t5) m.top5 = eq_json_num(t5);
            if (ns) m.samples = (uint64_t)eq_json_num(ns);
            bool seen = m.epoch < 1024 ? r->have_eval[m.epoch] : r->any_eval;
            if (!seen && (er || (t1 && t5))) s_on_metrics(r, &m, tty, json);
        }
        eq_json_doc_destroy(&d);
    }
    fclose(f);
}

/* OUT_DIR/metrics.svg: train loss per step (left axis) and val Top-1 per
 * epoch (right axis, 0..100). */
static void s_plot(const s_run *r, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) return;
    const double W = 720, H = 400, L = 60, R = 60, T = 30, B = 50;
    double xmax = 1, ymax = 0;
    for (size_t i = 0; i < r->npoints; i++) {
        if (r->loss_x[i] > xmax) xmax = r->loss_x[i];
        if (r->loss_y[i] > ymax) ymax = r->loss_y[i];
    }
    if (r->steps && xmax < (double)r->steps) xmax = (double)r->steps;
    if (ymax <= 0) ymax = 1;
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
            "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            W, H);
    fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#888\"/>\n", L, T,
            W - L - R, H - T - B);
    fprintf(f, "<text x=\"%.0f\" y=\"20\">train loss (blue, left) and val Top-1 %% (red, right) by step</text>\n", L);
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\">0</text><text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\">%.0f</text>\n", L,
            H - B + 15, W - R, H - B + 15, xmax);
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\">%.2f</text>\n", L - 4, T + 10, ymax);
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\">100</text>\n", W - R + 4, T + 10);
    fprintf(f, "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"");
    for (size_t i = 0; i < r->npoints; i++)
        fprintf(f, "%.1f,%.1f ", L + (W - L - R) * r->loss_x[i] / xmax, H - B - (H - T - B) * r->loss_y[i] / ymax);
    fprintf(f, "\"/>\n");
    for (int e = 0; e < 1024; e++) {
        if (!r->have_eval[e]) continue;
        double x = L + (W - L - R) * (double)((uint64_t)(e + 1) * r->steps) / xmax;
        double y = H - B - (H - T - B) * r->top1[e] / 100.0;
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"#d62728\"/><text x=\"%.1f\" y=\"%.1f\" "
                   "text-anchor=\"end\" fill=\"#d62728\">%.2f%%</text>\n",
                x, y, x - 6, y - 6, r->top1[e]);
    }
    fprintf(f, "</svg>\n");
    fclose(f);
}

static void *s_sub(void *ctx, const char *ep, eq_err *e)
{
    eq_proto_sockopts so;
    eq_proto_sockopts_default(&so, NULL);
    void *s = eq_proto_socket(ctx, ZMQ_SUB, &so, e);
    if (!s) return NULL;
    zmq_setsockopt(s, ZMQ_SUBSCRIBE, "", 0);
    if (eq_proto_connect(s, ep, e) != EQ_OK) eq_proto_socket_close(&s);
    return s;
}

int eq_ctl_run_main(int argc, char **argv)
{
    static const struct option o[] = { { "loaders", required_argument, 0, 'n' },
                                       { "ranks", required_argument, 0, 'R' },
                                       { "pretrained", required_argument, 0, 'P' },
                                       { "evaluate", no_argument, 0, 'e' },
                                       { "set", required_argument, 0, 's' },
                                       { "resume", required_argument, 0, 'r' },
                                       { "json", no_argument, 0, 'j' },
                                       { "policy", required_argument, 0, 'O' },
                                       { 0, 0, 0, 0 } };
    const char *sets[S_MAX_SETS + 2], *resume = NULL, *pretrained = NULL, *policy = NULL;
    size_t nsets = 0;
    long nloaders = 1, nranks = 0;
    int json = 0, evaluate = 0, c;
    while ((c = getopt_long(argc, argv, "", o, NULL)) != -1) {
        switch (c) {
        case 'n': {
            char *end;
            errno = 0;
            nloaders = strtol(optarg, &end, 10);
            if (errno || *end || nloaders < 1 || nloaders > S_MAX_LOADERS) {
                fprintf(stderr, "eqctl run: --loaders '%s': expected 1..%d\n", optarg, S_MAX_LOADERS);
                return 2;
            }
            break;
        }
        case 'R': {
            char *end;
            errno = 0;
            nranks = strtol(optarg, &end, 10);
            if (errno || *end || nranks < 1 || nranks > S_MAX_RANKS) {
                fprintf(stderr, "eqctl run: --ranks '%s': expected 1..%d\n", optarg, S_MAX_RANKS);
                return 2;
            }
            break;
        }
        case 'P': pretrained = optarg; break;
        case 'e': evaluate = 1; break;
        case 's':
            if (nsets == S_MAX_SETS) {
                fprintf(stderr, "eqctl run: more than %d --set\n", S_MAX_SETS);
                return 2;
            }
            sets[nsets++] = optarg;
            break;
        case 'r': resume = optarg; break;
        case 'j': json = 1; break;
        case 'O':
            if (policy && strcmp(policy, optarg)) {
                fprintf(stderr, "eqctl run: --policy given twice ('%s', '%s')\n", policy, optarg);
                return 2;
            }
            policy = optarg;
            break;
        default: fprintf(stderr, "usage: eqctl run %s\n", EQ_CTL_RUN_USAGE); return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "usage: eqctl run %s\n", EQ_CTL_RUN_USAGE);
        return 2;
    }
    const char *config = argv[optind];
    /* --policy FILE is --set train.policy=FILE (eq-trainer's flag too). */
    char policy_set[1100];
    if (policy) {
        for (size_t i = 0; i < nsets; i++)
            if (!strncmp(sets[i], "train.policy=", 13) && strcmp(sets[i] + 13, policy)) {
                fprintf(stderr, "eqctl run: --policy '%s' and --set %s disagree\n", policy, sets[i]);
                return 2;
            }
        if ((size_t)snprintf(policy_set, sizeof policy_set, "train.policy=%s", policy) >= sizeof policy_set) {
            fprintf(stderr, "eqctl run: --policy: path too long\n");
            return 2;
        }
        sets[nsets++] = policy_set;
    }
    eq_experiment x;
    eq_err e = { 0 };
    if (eq_experiment_load(&x, config, sets, nsets, NULL, &e) != EQ_OK) {
        fprintf(stderr, "eqctl run: %s\n", e.msg);
        return 2;
    }
    if (!nranks) nranks = x.train.ranks;
    if (nranks > S_MAX_RANKS) {
        fprintf(stderr, "eqctl run: [train] ranks = %ld: at most %d on one machine\n", nranks, S_MAX_RANKS);
        return 2;
    }
    if (x.data.global_batch % nranks) {
        fprintf(stderr, "eqctl run: [data] global_batch = %lld is not a multiple of %ld ranks\n",
                (long long)x.data.global_batch, nranks);
        return 2;
    }
    if (evaluate && !resume && !pretrained) {
        fprintf(stderr, "eqctl run: --evaluate needs the weights: --resume CKPT or --pretrained FILE\n");
        return 2;
    }
    /* Refuse what the trainer would refuse only after every part started:
     * a checkpoint that is not one, or has nothing left to train, and a
     * policy file that does not parse. */
    if (resume) {
        eq_ckpt_run cr;
        if (eq_checkpoint_peek(resume, &cr, &e) != EQ_OK) {
            fprintf(stderr, "eqctl run: --resume: %s\n", e.msg);
            return 2;
        }
        if (!evaluate && cr.epoch >= x.sched.epochs) {
            fprintf(stderr,
                    "eqctl run: --resume %s: the checkpoint is at epoch %" PRId64 " step %" PRId64
                    " and [schedule] epochs = %" PRId64 ": nothing left to train (raise schedule.epochs, or "
                    "--evaluate to evaluate it)\n",
                    resume, cr.epoch, cr.step, (int64_t)x.sched.epochs);
            return 2;
        }
    }
    if (x.train.policy[0]) {
        eq_policy *pol = eq_policy_load(x.train.policy, &e);
        if (!pol) {
            fprintf(stderr, "eqctl run: [train] policy: %s\n", e.msg);
            return 2;
        }
        int64_t lt = eq_policy_last_trigger(pol);
        if (lt >= x.sched.epochs)
            fprintf(stderr,
                    "eqctl run: warning: %s: trigger epoch %" PRId64 " is past the last epoch (%" PRId64
                    " of [schedule] epochs = %" PRId64 ", counted from 0): its rules never run in this run\n",
                    x.train.policy, lt, (int64_t)x.sched.epochs - 1, (int64_t)x.sched.epochs);
        eq_policy_destroy(&pol);
    }
    /* Ranks share the CPUs: split "one thread per CPU" between them. */
    char threads_set[64] = "";
    if (nranks > 1 && x.train.threads == 0) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        snprintf(threads_set, sizeof threads_set, "train.threads=%ld", ncpu / nranks > 0 ? ncpu / nranks : 1);
        sets[nsets++] = threads_set;
    }
    char bindir[PATH_MAX], prog[3][PATH_MAX + 16];
    if (s_bindir(bindir, sizeof bindir)) {
        fprintf(stderr, "eqctl run: cannot find my own directory (/proc/self/exe)\n");
        return 1;
    }
    static const char *const names[3] = { "eq-loader", "eq-eval", "eq-trainer" };
    for (int i = 0; i < 3; i++) {
        snprintf(prog[i], sizeof prog[i], "%s/%s", bindir, names[i]);
        if (access(prog[i], X_OK)) {
            fprintf(stderr, "eqctl run: %s: %s (eq-loader, eq-eval and eq-trainer must be beside eqctl)\n", prog[i],
                    strerror(errno));
            return 1;
        }
    }
    s_run *r = calloc(1, sizeof *r);
    if (!r || !(r->loss_x = malloc(S_MAX_POINTS * sizeof(double))) ||
        !(r->loss_y = malloc(S_MAX_POINTS * sizeof(double)))) {
        fprintf(stderr, "eqctl run: out of memory\n");
        if (r) free(r->loss_x);
        free(r);
        return 1;
    }
    int rc = 1, lock_fd = -1;
    void *ctx = zmq_ctx_new();
    void *sub_t = NULL, *sub_e = NULL;
    char errbuf[600] = "";
    double t0 = eq_clock_sec();
    bool tty = isatty(2);
    const char *failed = NULL; /* which part failed, for the summary */
    char failed_buf[640];

    /* Outputs and the socket directory. */
    snprintf(r->log_dir, sizeof r->log_dir, "%s/logs", x.train.out_dir);
    {
        char cmd[1400];
        snprintf(cmd, sizeof cmd, "%s", x.train.out_dir);
        for (char *p = cmd + 1; *p; p++)
            if (*p == '/') {
                *p = 0;
                mkdir(cmd, 0777);
                *p = '/';
            }
        if (mkdir(cmd, 0777) != 0 && errno != EEXIST) {
            fprintf(stderr, "eqctl run: [train] out_dir = %s: cannot create it: %s\n", x.train.out_dir,
                    strerror(errno));
            rc = 2;
            goto out;
        }
        /* One run per output directory: a second would truncate the
         * first's logs and interleave checkpoints and metrics.  A POSIX
         * lock dies with its process, however it ends. */
        char lockp[1300];
        snprintf(lockp, sizeof lockp, "%s/.eqctl-run.lock", x.train.out_dir);
        lock_fd = open(lockp, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (lock_fd < 0) {
            fprintf(stderr, "eqctl run: [train] out_dir: %s: %s\n", lockp, strerror(errno));
            rc = 2;
            goto out;
        }
        struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
        if (fcntl(lock_fd, F_SETLK, &fl) != 0) {
            int le = errno;
            struct flock who = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
            if ((le == EAGAIN || le == EACCES) && fcntl(lock_fd, F_GETLK, &who) == 0 && who.l_type != F_UNLCK)
                fprintf(stderr, "eqctl run: [train] out_dir %s is in use by another eqctl run (pid %ld); "
                        "wait for it, stop it, or set another train.out_dir\n", x.train.out_dir, (long)who.l_pid);
            else
                fprintf(stderr, "eqctl run: [train] out_dir: lock %s: %s\n", lockp, strerror(le));
            close(lock_fd);
            lock_fd = -1;
            rc = 2;
            goto out;
        }
        if (mkdir(r->log_dir, 0777) && errno != EEXIST) {
            fprintf(stderr, "eqctl run: mkdir %s: %s\n", r->log_dir, strerror(errno));
            goto out;
        }
    }
    snprintf(r->sock_dir, sizeof r->sock_dir, "/tmp/eqctl-run-XXXXXX");
    if (!mkdtemp(r->sock_dir)) {
        fprintf(stderr, "eqctl run: mkdtemp: %s\n", strerror(errno));
        goto out;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_sigint;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    char ep_eval[128], ep_eval_pub[128], ep_eval_ctl[128], ep_tr_pub[128], ep_tr_ctl[128];
    char ep_ld[S_MAX_LOADERS][128], ep_ld_ctl[S_MAX_LOADERS][128];
    snprintf(ep_eval, sizeof ep_eval, "ipc://%s/eval", r->sock_dir);
    snprintf(ep_eval_pub, sizeof ep_eval_pub, "ipc://%s/eval.pub", r->sock_dir);
    snprintf(ep_eval_ctl, sizeof ep_eval_ctl, "ipc://%s/eval.ctl", r->sock_dir);
    snprintf(ep_tr_pub, sizeof ep_tr_pub, "ipc://%s/trainer.pub", r->sock_dir);
    snprintf(ep_tr_ctl, sizeof ep_tr_ctl, "ipc://%s/trainer.ctl", r->sock_dir);
    if (!(sub_t = s_sub(ctx, ep_tr_pub, &e)) || !(sub_e = s_sub(ctx, ep_eval_pub, &e))) {
        fprintf(stderr, "eqctl run: %s\n", e.msg);
        goto out;
    }

    /* Loaders. */
    char threads[32], logp[1300], loaders_arg[S_MAX_LOADERS * 130] = "";
    long lt = x.loader.threads;
    if (lt == 0) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        lt = ncpu > 0 ? ncpu : 1;
        if (nloaders > 1) lt = lt / nloaders > 0 ? lt / nloaders : 1;
    }
    snprintf(threads, sizeof threads, "%ld", lt);
    for (long i = 0; i < nloaders; i++) {
        snprintf(ep_ld[i], sizeof ep_ld[i], "ipc://%s/loader%ld", r->sock_dir, i);
        snprintf(ep_ld_ctl[i], sizeof ep_ld_ctl[i], "ipc://%s/loader%ld.ctl", r->sock_dir, i);
        char *av[S_MAX_ARGS];
        int n = 0;
        av[n++] = (char *)names[0];
        av[n++] = "--bind";
        av[n++] = ep_ld[i];
        av[n++] = "--control";
        av[n++] = ep_ld_ctl[i];
        av[n++] = "--threads";
        av[n++] = threads;
        for (size_t d = 0; d < x.loader.ndatasets && n < S_MAX_ARGS - 2; d++) {
            av[n++] = "--dataset";
            av[n++] = x.loader.datasets[d];
        }
        av[n] = NULL;
        snprintf(logp, sizeof logp, "%s/loader%ld.log", r->log_dir, i);
        s_child *ch = &r->ch[r->nch];
        snprintf(ch->label, sizeof ch->label, "eq-loader %ld", i);
        ch->what = ch->label;
        snprintf(ch->log, sizeof ch->log, "%s", logp);
        if ((ch->pid = s_spawn(prog[0], av, logp, false, errbuf, sizeof errbuf)) < 0) goto spawn_fail;
        r->nch++;
        snprintf(loaders_arg + strlen(loaders_arg), sizeof loaders_arg - strlen(loaders_arg), "%s%s", i ? "," : "",
                 ep_ld[i]);
    }
    /* Evaluator. */
    {
        char metrics[1300];
        snprintf(metrics, sizeof metrics, "%s/eval.jsonl", x.train.out_dir);
        struct stat est;
        snprintf(r->eval_path, sizeof r->eval_path, "%s", metrics);
        r->eval_off = stat(metrics, &est) == 0 ? (long)est.st_size : 0;
        char *av[] = { (char *)names[1], "serve", "--pull", ep_eval, "--pub", ep_eval_pub, "--control", ep_eval_ctl,
                       "--metrics", metrics, NULL };
        snprintf(logp, sizeof logp, "%s/eval.log", r->log_dir);
        s_child *ch = &r->ch[r->nch];
        snprintf(ch->label, sizeof ch->label, "eq-eval");
        ch->what = ch->label;
        snprintf(ch->log, sizeof ch->log, "%s", logp);
        if ((ch->pid = s_spawn(prog[1], av, logp, false, errbuf, sizeof errbuf)) < 0) goto spawn_fail;
        r->evaluator = r->nch++;
    }
    /* Trainer ranks: rank 0 binds the control socket (where the others
     * join) and publishes the METRICS; each rank has its ring endpoint. */
    for (long rk = 0; rk < nranks; rk++) {
        char *av[S_MAX_ARGS], rs[16], ws[16], ring[160];
        int n = 0;
        snprintf(rs, sizeof rs, "%ld", rk);
        snprintf(ws, sizeof ws, "%ld", nranks);
        snprintf(ring, sizeof ring, "ipc://%s/ring%ld", r->sock_dir, rk);
        av[n++] = (char *)names[2];
        av[n++] = "--config";
        av[n++] = (char *)config;
        for (size_t i = 0; i < nsets; i++) {
            av[n++] = "--set";
            av[n++] = (char *)sets[i];
        }
        av[n++] = "--loaders";
        av[n++] = loaders_arg;
        av[n++] = "--eval";
        av[n++] = ep_eval;
        if (rk == 0) {
            av[n++] = "--pub";
            av[n++] = ep_tr_pub;
            av[n++] = "--control";
            av[n++] = ep_tr_ctl;
        } else {
            av[n++] = "--rendezvous";
            av[n++] = ep_tr_ctl;
        }
        if (nranks > 1) {
            av[n++] = "--rank";
            av[n++] = rs;
            av[n++] = "--world";
            av[n++] = ws;
            av[n++] = "--dist-bind";
            av[n++] = ring;
        }
        if (resume) {
            av[n++] = "--resume";
            av[n++] = (char *)resume;
        }
        if (pretrained) {
            av[n++] = "--pretrained";
            av[n++] = (char *)pretrained;
        }
        if (evaluate) av[n++] = "--evaluate";
        av[n] = NULL;
        if (rk == 0)
            snprintf(logp, sizeof logp, "%s/trainer.log", r->log_dir);
        else
            snprintf(logp, sizeof logp, "%s/trainer%ld.log", r->log_dir, rk);
        s_child *ch = &r->ch[r->nch];
        if (nranks > 1)
            snprintf(ch->label, sizeof ch->label, "eq-trainer rank %ld", rk);
        else
            snprintf(ch->label, sizeof ch->label, "eq-trainer");
        ch->what = ch->label;
        snprintf(ch->log, sizeof ch->log, "%s", logp);
        if ((ch->pid = s_spawn(prog[2], av, logp, true, errbuf, sizeof errbuf)) < 0) goto spawn_fail;
        if (rk == 0) r->trainer = r->nch;
        r->tr[r->ntr++] = r->nch++;
    }
    if (!json)
        fprintf(stderr, "eqctl run: %s: %ld loader(s), eq-eval, %ld eq-trainer rank(s) started; logs in %s\n", config,
                nloaders, nranks, r->log_dir);

    /* Follow until the trainer exits (or a part fails, or Ctrl-C). */
    bool stopping = false;
    uint64_t kill_at = 0; /* after a stop: ranks still alive then are killed (waiting for a dead peer or loader) */
    for (;;) {
        zmq_pollitem_t it[2] = { { sub_t, 0, ZMQ_POLLIN, 0 }, { sub_e, 0, ZMQ_POLLIN, 0 } };
        int np = zmq_poll(it, 2, 200);
        eq_proto_recvd rv;
        eq_proto_recvd_init(&rv);
        for (int k = 0; np > 0 && k < 2; k++) {
            if (!(it[k].revents & ZMQ_POLLIN)) continue;
            while (eq_proto_recv(it[k].socket, &rv, NULL, ZMQ_DONTWAIT, NULL) != EQ_ERR_TIMEOUT) {
                if (rv.msg.type == EQ_MSG_METRICS) s_on_metrics(r, &rv.msg.u.metrics, tty, json);
                eq_proto_recvd_close(&rv);
            }
        }
        eq_proto_recvd_close(&rv);
        s_reap(r);
        int alive_tr = 0;
        for (int k = 0; k < r->ntr; k++) alive_tr += !r->ch[r->tr[k]].exited;
        if (!alive_tr) break;
        if (s_interrupted && !stopping) {
            stopping = true;
            if (!json) fprintf(stderr, "%seqctl run: stopping (the trainer writes a checkpoint)\n", tty ? "\r\033[K" : "");
            s_signal_trainers(r, SIGTERM);
            /* A rank waiting for data or for a dead peer cannot stop at a
             * step boundary: give them a minute, then kill. */
            kill_at = eq_clock_ms() + 60000;
        }
        /* A rank that failed while others run: they would wait for it. */
        for (int k = 0; k < r->ntr && !stopping && alive_tr < r->ntr; k++) {
            s_child *tc = &r->ch[r->tr[k]];
            if (!tc->exited || (WIFEXITED(tc->status) && WEXITSTATUS(tc->status) == 0)) continue;
            failed = s_fail_msg(tc, failed_buf, sizeof failed_buf);
            if (!json) fprintf(stderr, "%seqctl run: %s; stopping the other ranks\n", tty ? "\r\033[K" : "", failed);
            stopping = true;
            s_signal_trainers(r, SIGTERM);
            kill_at = eq_clock_ms() + 10000;
        }
        if (kill_at && eq_clock_ms() > kill_at) {
            s_signal_trainers(r, SIGKILL);
            kill_at = 0;
        }
        int loaders_alive = 0;
        for (int i = 0; i < r->nch; i++) loaders_alive += !s_is_trainer(r, i) && i != r->evaluator && !r->ch[i].exited;
        for (int i = 0; i < r->nch && !stopping; i++) {
            if (s_is_trainer(r, i) || !r->ch[i].exited) continue;
            s_fail_msg(&r->ch[i], failed_buf, sizeof failed_buf);
            if (i != r->evaluator && loaders_alive > 0) {
                /* The trainer re-issues its requests to the other loaders. */
                if (!r->ch[i].reported && !json)
                    fprintf(stderr, "%seqctl run: %s; going on with %d loader(s)\n", tty ? "\r\033[K" : "", failed_buf,
                            loaders_alive);
                r->ch[i].reported = true;
                continue;
            }
            failed = failed_buf;
            if (!json) fprintf(stderr, "%seqctl run: %s; stopping the trainer\n", tty ? "\r\033[K" : "", failed);
            stopping = true;
            s_signal_trainers(r, SIGTERM);
            kill_at = eq_clock_ms() + 60000;
        }
    }
    int tk = r->trainer; /* rank 0, or the first rank that failed when rank 0 did not */
    int tst = r->ch[tk].status;
    bool trained = true;
    for (int k = 0; k < r->ntr; k++) {
        int rs = r->ch[r->tr[k]].status;
        if (WIFEXITED(rs) && WEXITSTATUS(rs) == 0) continue;
        if (trained && WIFEXITED(tst) && WEXITSTATUS(tst) == 0) tk = r->tr[k], tst = rs;
        trained = false;
    }
    /* Wait (bounded) for eq-eval's result of the last epoch (--evaluate: of
     * the evaluated one). */
    if (trained && (x.train.eval_every > 0 || evaluate)) {
        uint64_t last = (uint64_t)x.sched.epochs - 1, t1 = eq_clock_ms();
        while (!(r->any_eval && (evaluate || r->last_epoch_eval == last)) && !r->eval_failed && !s_interrupted &&
               eq_clock_ms() - t1 < 120000) {
            zmq_pollitem_t it[1] = { { sub_e, 0, ZMQ_POLLIN, 0 } };
            if (zmq_poll(it, 1, 200) > 0) {
                eq_proto_recvd rv;
                eq_proto_recvd_init(&rv);
                while (eq_proto_recv(sub_e, &rv, NULL, ZMQ_DONTWAIT, NULL) != EQ_ERR_TIMEOUT) {
                    if (rv.msg.type == EQ_MSG_METRICS) s_on_metrics(r, &rv.msg.u.metrics, tty, json);
                    eq_proto_recvd_close(&rv);
                }
                eq_proto_recvd_close(&rv);
            }
            s_reap(r);
            if (!(r->any_eval && (evaluate || r->last_epoch_eval == last)) && eq_clock_ms() - t1 > 500)
                s_eval_from_file(r, tty, json);
            if (r->ch[r->evaluator].exited) {
                s_eval_from_file(r, tty, json);
                break;
            }
        }
        if (!(r->any_eval && (evaluate || r->last_epoch_eval == last)) && !failed) {
            snprintf(failed_buf, sizeof failed_buf, "eq-eval %s",
                     r->eval_failed ? "reported an accounting error" : "gave no result for the last epoch");
            failed = failed_buf;
        }
    }
    /* Stop the evaluator and the loaders. */
    for (int i = 0; i < r->nch; i++)
        if (!s_is_trainer(r, i)) s_stop_child(r, i, 10000);
    if (!failed && !trained) {
        failed = s_fail_msg(&r->ch[tk], failed_buf, sizeof failed_buf);
    }
    bool interrupted = WIFEXITED(tst) && WEXITSTATUS(tst) == 3;
    rc = interrupted && s_interrupted ? 3 : failed ? 1 : 0;
    char svg[1300];
    snprintf(svg, sizeof svg, "%s/metrics.svg", x.train.out_dir);
    s_plot(r, svg);
    double elapsed = eq_clock_sec() - t0;
    uint64_t le = r->last_epoch_eval;
    if (json) {
        printf("{\"ok\":%s,\"exit\":%d,\"config\":\"%s\",\"elapsed_s\":%.1f,\"epoch\":%" PRIu64 ",\"step\":%" PRIu64
               ",\"loss\":%.6g,\"img_s\":%.1f",
               rc == 0 ? "true" : "false", rc, config, elapsed, r->epoch, r->step, r->last_loss, r->last_img_s);
        if (r->any_eval) printf(",\"top1\":%.4f,\"top5\":%.4f,\"eval_epoch\":%" PRIu64, r->top1[le < 1024 ? le : 0], r->top5[le < 1024 ? le : 0], le);
        printf(",\"out_dir\":\"%s\",\"checkpoint\":\"%s/last.safetensors\",\"plot\":\"%s\"", x.train.out_dir,
               x.train.out_dir, svg);
        if (failed) {
            printf(",\"failed\":\"");
            for (const char *p = failed; *p; p++) {
                if (*p == '"' || *p == '\\') putchar('\\');
                if ((unsigned char)*p >= 0x20) putchar(*p);
            }
            printf("\"");
        }
        printf("}\n");
    } else {
        if (rc == 0)
            printf("done in %.0f s: %" PRIu64 " epoch(s), last loss %.4f, %.0f img/s", elapsed, (uint64_t)x.sched.epochs,
                   r->last_loss, r->last_img_s);
        else if (rc == 3)
            printf("interrupted after %.0f s at epoch %" PRIu64 " step %" PRIu64 " (resume with --resume %s/last.safetensors)",
                   elapsed, r->epoch, r->step, x.train.out_dir);
        else
            printf("FAILED after %.0f s: %s (logs in %s)", elapsed, failed, r->log_dir);
        if (r->any_eval && le < 1024) printf("; val Top-1 %.2f%% Top-5 %.2f%% (epoch %" PRIu64 ")", r->top1[le], r->top5[le], le);
        char ck[1300];
        snprintf(ck, sizeof ck, "%s/last.safetensors", x.train.out_dir);
        printf("\n%s %s, metrics %s/metrics.jsonl and eval.jsonl, plot %s\n",
               access(ck, F_OK) == 0 ? "checkpoint" : "no checkpoint; would be", ck, x.train.out_dir, svg);
    }
    goto out;
spawn_fail:
    fprintf(stderr, "eqctl run: %s\n", errbuf);
    for (int i = 0; i < r->nch; i++) s_stop_child(r, i, 5000);
    rc = 1;
out:
    if (lock_fd >= 0) close(lock_fd);
    eq_proto_socket_close(&sub_t);
    eq_proto_socket_close(&sub_e);
    zmq_ctx_term(ctx);
    if (r->sock_dir[0]) {
        char cmd[200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", r->sock_dir);
        if (system(cmd) != 0) eq_debug("could not remove %s", r->sock_dir);
    }
    free(r->loss_x);
    free(r->loss_y);
    free(r);
    return rc;
}
