/*
 * bench/train_step.c -- images/s of one training step (forward in training
 * mode, softmax cross-entropy, backward, SGD with momentum 0.9, nesterov,
 * weight decay 1e-4) of a whole network on eq's CPU backend and on
 * PyTorch's CPU, same batch, same input and same thread count, in one run.
 *
 *   bench/train_step [--model resnet20|resnet18] [--batch N] [--size S]
 *                    [--threads T] [--iters N] [--no-quant] [--no-torch]
 *                    [--precision fp32|bf16|fp16] [--python PATH] [--script PATH]
 *
 * resnet20: the original's CIFAR ResNet-20 (width_alpha 0.25 = 16/32/64
 * channels; origin, cbsa, fix_pooling, singleconv, fix, real_skip, which is
 * torchvision's BasicBlock ResNet with a 3x3 stem), default 32x32 batch
 * 128, 10 classes.  resnet18: torchvision's resnet18, default 224x224
 * batch 16, 1000 classes.  eq also runs the network with 2-bit LSQ weights
 * and activations (every block conv) to show the fake-quantization
 * overhead (PyTorch has no equivalent module, so no ratio there).
 *
 * --precision bf16|fp16 adds eq's mixed-precision step (doc/precision.md;
 * on the CPU backend an emulation: activations and gradients rounded, the
 * arithmetic fp32, so it costs time instead of saving it) with its overhead
 * over the fp32 step, and for bf16 PyTorch's CPU autocast step
 * (torch.autocast("cpu", dtype=torch.bfloat16), real bf16 kernels) in each
 * memory format as its peer; PyTorch 1.13's CPU autocast has no fp16.
 *
 * Times are the best of --iters steps after one warm-up step (the least
 * disturbed on a shared machine), for both sides; eq also prints cpu_ms,
 * the least CPU time (all threads, user + system) of one step, which a
 * busy machine disturbs less than the wall time (PyTorch's cpu_ms includes
 * its OpenMP threads' spin-waiting).  "ratio" is eq's images/s
 * over PyTorch's in its faster memory format (> 1: eq is faster).  Peak RSS
 * is each process's maximum resident set: eq's is taken after the full
 * precision run, before the quantized model exists.  PyTorch runs in a
 * child process (bench/train_step.py via /usr/bin/python3) that reads the
 * same batch from a temporary file.
 */
#include "core/clock.h"
#include "trainer/model.h"
#include "trainer/optim.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#ifndef EQ_BENCH_DIR
#define EQ_BENCH_DIR "bench"
#endif

static double s_peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* KiB on Linux */
}

/* CPU seconds (user + system) this process has used so far. */
static double s_cpu_sec(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

/* Best step time in seconds, or a negative value on error (printed);
 * *cpu_best: the least CPU time (all threads) one step used, which a busy
 * machine disturbs less than the wall time. */
static double s_run(const char *arch, const char *kw, double alpha, int64_t classes, int quant,
                    int prec, int threads, int64_t n, int64_t s, int iters, const float *x,
                    const int32_t *y, double *cpu_best)
{
    *cpu_best = -1;
    eq_err err = {0};
    eq_backend *be = eq_backend_cpu_new(threads, &err);
    eq_model_cfg mc;
    eq_model_quant_cfg wt, fm;
    eq_optim_cfg oc;
    eq_config_section ms[EQ_MODEL_CONFIG_NSECTIONS], os[EQ_OPTIM_CONFIG_NSECTIONS];
    eq_model_config_sections(&mc, &wt, &fm, ms);
    eq_optim_config_sections(&oc, NULL, os);
    eq_model *m = NULL;
    eq_optim *o = NULL;
    double best = -1;
    if (!be || eq_config_defaults(ms, EQ_MODEL_CONFIG_NSECTIONS, &err) != EQ_OK ||
        eq_config_defaults(os, 1, &err) != EQ_OK)
        goto out;
    snprintf(mc.arch, sizeof mc.arch, "%s", arch);
    mc.nkeyword = 0;
    for (const char *k = kw; *k;) {
        const char *e = strchr(k, ',');
        size_t len = e ? (size_t)(e - k) : strlen(k);
        snprintf(mc.keyword[mc.nkeyword++], sizeof mc.keyword[0], "%.*s", (int)len, k);
        k = e ? e + 1 : k + len;
    }
    mc.width_alpha = alpha;
    mc.num_classes = classes;
    mc.precision = prec; /* after eq_model_config_sections, which resets it */
    if (quant) {
        wt.enable = fm.enable = true;
        snprintf(wt.method, sizeof wt.method, "lsq");
        snprintf(fm.method, sizeof fm.method, "lsq");
        wt.bit = fm.bit = 2;
    }
    oc.lr = 0.01, oc.momentum = 0.9, oc.nesterov = true, oc.weight_decay = 1e-4;
    if (!(m = eq_model_new(be, &mc, &wt, &fm, n, s, s, &err))) goto out;
    if (!(o = eq_optim_new(m, &oc, &err))) goto out;
    for (int it = 0; it <= iters; it++) {
        double t0 = eq_clock_sec(), c0 = s_cpu_sec();
        float loss;
        if (eq_model_forward(m, x, true, &err) != EQ_OK ||
            eq_model_loss(m, y, NULL, NULL, 0.0f, &loss, &err) != EQ_OK ||
            eq_model_backward(m, NULL, &err) != EQ_OK || eq_optim_step(o, oc.lr, &err) != EQ_OK) {
            best = -1;
            goto out;
        }
        double dt = eq_clock_sec() - t0, dc = s_cpu_sec() - c0;
        if (it > 0 && (best < 0 || dt < best)) best = dt; /* step 0 warms up */
        if (it > 0 && (*cpu_best < 0 || dc < *cpu_best)) *cpu_best = dc;
    }
out:
    if (best < 0)
        fprintf(stderr, "train_step: %s%s %s: %s\n", arch, quant ? " (lsq)" : "",
                eq_precision_name((eq_precision)prec), err.msg);
    eq_optim_destroy(&o);
    eq_model_destroy(&m);
    eq_backend_destroy(&be);
    return best;
}

static void s_usage(FILE *f)
{
    fprintf(f, "usage: bench/train_step [--model resnet20|resnet18] [--batch N] [--size S]\n"
               "                        [--threads T] [--iters N] [--no-quant] [--no-torch]\n"
               "                        [--precision fp32|bf16|fp16] [--python PATH] [--script PATH]\n");
}

int main(int argc, char **argv)
{
    const char *model = "resnet20", *python = "/usr/bin/python3";
    const char *script = EQ_BENCH_DIR "/train_step.py";
    int threads = 2, iters = 3, torch = 1, quant = 1, prec = EQ_PREC_FP32;
    int64_t batch = 0, size = 0;
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},  {"batch", required_argument, 0, 'b'},
        {"size", required_argument, 0, 's'},   {"threads", required_argument, 0, 't'},
        {"iters", required_argument, 0, 'i'},  {"no-quant", no_argument, 0, 'Q'},
        {"no-torch", no_argument, 0, 'T'},     {"python", required_argument, 0, 'p'},
        {"script", required_argument, 0, 'S'}, {"help", no_argument, 0, 'h'},
        {"precision", required_argument, 0, 'P'},
        {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'b': batch = atoll(optarg); break;
        case 's': size = atoll(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 'i': iters = atoi(optarg); break;
        case 'Q': quant = 0; break;
        case 'T': torch = 0; break;
        case 'p': python = optarg; break;
        case 'S': script = optarg; break;
        case 'P':
            if ((prec = eq_precision_parse(optarg)) < 0) {
                fprintf(stderr, "train_step: --precision %s: expected fp32, bf16 or fp16\n", optarg);
                return 2;
            }
            break;
        case 'h': s_usage(stdout); return 0;
        default: s_usage(stderr); return 2;
        }
    }
    const char *arch, *kw;
    double alpha;
    int64_t classes;
    if (!strcmp(model, "resnet20")) {
        arch = "resnet20", kw = "origin,cbsa,fix_pooling,singleconv,fix,real_skip";
        alpha = 0.25, classes = 10;
        if (!batch) batch = 128;
        if (!size) size = 32;
    } else if (!strcmp(model, "resnet18")) {
        arch = "torch-resnet18", kw = "", alpha = 1.0, classes = 1000;
        if (!batch) batch = 16;
        if (!size) size = 224;
    } else {
        fprintf(stderr, "train_step: --model %s: expected resnet20 or resnet18\n", model);
        return 2;
    }
    if (batch < 2 || size < 8 || threads < 1 || iters < 1) {
        fprintf(stderr, "train_step: --batch >= 2, --size >= 8, --threads >= 1, --iters >= 1\n");
        return 2;
    }
    size_t nx = (size_t)(batch * size * size * 3);
    float *x = malloc(nx * sizeof *x);
    int32_t *y = malloc((size_t)batch * sizeof *y);
    if (!x || !y) return 1;
    uint64_t st = 0x2545F4914F6CDD1Dull;
    for (size_t i = 0; i < nx; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((double)(st >> 40) / 8388608.0 - 1.0); /* U(-1, 1), NHWC */
    }
    for (int64_t i = 0; i < batch; i++) y[i] = (int32_t)((i * 7) % classes);
    printf("model %s %lldx%lld batch %lld threads %d (best of %d steps: forward, loss, backward, "
           "SGD)\n", model, (long long)size, (long long)size, (long long)batch, threads, iters);
    double c_fp, c_q;
    double t_fp = s_run(arch, kw, alpha, classes, 0, EQ_PREC_FP32, threads, batch, size, iters, x, y, &c_fp);
    double rss = s_peak_rss_mb();
    if (t_fp < 0) return 1;
    double ips = (double)batch / t_fp;
    printf("%-22s step_ms=%9.1f images/s=%8.1f peak_rss_mb=%.0f cpu_ms=%.1f\n", "eq fp32",
           t_fp * 1e3, ips, rss, c_fp * 1e3);
    double ips_p = 0;
    if (prec != EQ_PREC_FP32) {
        double c_p, t_p = s_run(arch, kw, alpha, classes, 0, prec, threads, batch, size, iters, x, y, &c_p);
        if (t_p < 0) return 1;
        char label[32];
        snprintf(label, sizeof label, "eq %s (emulated)", eq_precision_name((eq_precision)prec));
        ips_p = (double)batch / t_p;
        printf("%-22s step_ms=%9.1f images/s=%8.1f rounding overhead %+.1f%% of the fp32 step "
               "cpu_ms=%.1f (%+.1f%%)\n",
               label, t_p * 1e3, ips_p, 100.0 * (t_p - t_fp) / t_fp, c_p * 1e3,
               100.0 * (c_p - c_fp) / c_fp);
    }
    if (quant) {
        double t_q = s_run(arch, kw, alpha, classes, 1, EQ_PREC_FP32, threads, batch, size, iters, x, y, &c_q);
        if (t_q < 0) return 1;
        printf("%-22s step_ms=%9.1f images/s=%8.1f fake-quant overhead %+.1f%% of the step "
               "cpu_ms=%.1f (%+.1f%%)\n",
               "eq lsq 2-bit", t_q * 1e3, (double)batch / t_q, 100.0 * (t_q - t_fp) / t_q,
               c_q * 1e3, 100.0 * (c_q - c_fp) / c_q);
    }
    if (!torch) goto done;
    char path[] = "/tmp/eq-train-step-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        perror("mkstemp");
        return 1;
    }
    FILE *f = fdopen(fd, "wb");
    if (!f || fwrite(x, sizeof *x, nx, f) != nx || fwrite(y, sizeof *y, (size_t)batch, f) != (size_t)batch ||
        fclose(f) != 0) {
        perror(path);
        unlink(path);
        return 1;
    }
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' '%s' --model %s --batch %lld --size %lld --threads %d --iters %d --precision %s --input '%s' 2>&1",
             python, script, model, (long long)batch, (long long)size, threads, iters,
             eq_precision_name((eq_precision)prec), path);
    FILE *p = popen(cmd, "r");
    if (!p) {
        perror("popen");
        unlink(path);
        return 1;
    }
    char line[512];
    double best_torch = 0, best_torch_p = 0; /* fp32; autocast (format "<fmt>+bf16") */
    while (fgets(line, sizeof line, p)) {
        char fmt[32];
        double ms, tips, trss, tcpu = -1;
        if (sscanf(line, "torch %31s step_ms=%lf images/s=%lf peak_rss_mb=%lf cpu_ms=%lf", fmt, &ms,
                   &tips, &trss, &tcpu) >= 4) {
            char label[64];
            snprintf(label, sizeof label, "torch %s", fmt);
            printf("%-22s step_ms=%9.1f images/s=%8.1f peak_rss_mb=%.0f cpu_ms=%.1f\n", label, ms,
                   tips, trss, tcpu);
            if (strchr(fmt, '+')) {
                if (tips > best_torch_p) best_torch_p = tips;
            } else if (tips > best_torch) {
                best_torch = tips;
            }
        } else {
            fputs(line, stdout);
        }
    }
    int rc = pclose(p);
    unlink(path);
    if (best_torch > 0)
        printf("ratio eq/torch (images/s, vs torch's faster format): %.2f\n", ips / best_torch);
    if (best_torch_p > 0 && ips_p > 0)
        printf("ratio eq %s/torch autocast (images/s, vs its faster format): %.2f\n",
               eq_precision_name((eq_precision)prec), ips_p / best_torch_p);
    else
        printf("torch: not available (exit %d; is python3-torch installed?)\n", rc);
done:
    free(x);
    free(y);
    return 0;
}
