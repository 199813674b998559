/*
 * trainer/optim.c -- SGD / Adam over a model's tensors, lr policies.
 */
#include "trainer/optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const s_method_choices[] = {"sgd", "adam", NULL};
static const char *const s_policy_choices[] = {"decay", "fix", "fix_step", "custom_step",
                                               "poly",  "cos", "sgdr",     NULL};

static const eq_config_key s_optim_keys[] = {
    EQ_CONFIG_ENUM_KEY(eq_optim_cfg, method, "sgd", s_method_choices, "optimiser"),
    EQ_CONFIG_FLOAT_KEY(eq_optim_cfg, lr, "0.01", 0.0, 100.0, "base learning rate"),
    EQ_CONFIG_FLOAT_KEY(eq_optim_cfg, momentum, "0.9", 0.0, 0.999999, "SGD momentum"),
    EQ_CONFIG_FLOAT_KEY(eq_optim_cfg, dampening, "0", 0.0, 1.0, "SGD dampening"),
    EQ_CONFIG_BOOL_KEY(eq_optim_cfg, nesterov, "false", "Nesterov momentum (needs momentum > 0, dampening 0)"),
    EQ_CONFIG_FLOAT_KEY(eq_optim_cfg, weight_decay, "1e-4", 0.0, 1.0, "L2 weight decay"),
    EQ_CONFIG_BOOL_KEY(eq_optim_cfg, decay_small, "false",
                       "decay 1-D tensors (BN, biases, clip values) and depthwise weights too"),
    EQ_CONFIG_STRING_LIST_KEY(eq_optim_cfg, custom_decay_list, ncustom_decay_list, "", 0,
                              "tensors whose name contains one of these get custom_decay"),
    EQ_CONFIG_FLOAT_KEY(eq_optim_cfg, custom_decay, "0.02", 0.0, 1.0, "decay of custom_decay_list tensors"),
    EQ_CONFIG_STRING_LIST_KEY(eq_optim_cfg, custom_lr_list, ncustom_lr_list, "", 0,
                              "tensors whose name contains one of these start at custom_lr (quant_weight: "
                              "quantized layers' FP weights at a constant custom_lr)"),
    EQ_CONFIG_FLOAT_KEY(eq_optim_cfg, custom_lr, "1e-5", 0.0, 100.0, "initial lr of custom_lr_list tensors"),
    EQ_CONFIG_FLOAT_KEY(eq_optim_cfg, beta1, "0.9", 0.0, 0.999999, "Adam beta1"),
    EQ_CONFIG_FLOAT_KEY(eq_optim_cfg, beta2, "0.999", 0.0, 0.999999, "Adam beta2"),
    EQ_CONFIG_FLOAT_KEY(eq_optim_cfg, eps, "1e-8", 1e-30, 1.0, "Adam epsilon"),
};

static const eq_config_key s_sched_keys[] = {
    EQ_CONFIG_ENUM_KEY(eq_schedule_cfg, policy, "decay", s_policy_choices, "lr policy (doc/models.md)"),
    EQ_CONFIG_FLOAT_KEY(eq_schedule_cfg, lr_decay, "0.98", 0.0, 100.0, "decay factor d (poly: the power)"),
    EQ_CONFIG_INT_LIST_KEY(eq_schedule_cfg, lr_custom_step, nlr_custom_step, "20,30,40", 0, 1, 1000000,
                           "epochs m_1 < m_2 < ... where custom_step decays / poly, cos, sgdr restart"),
    EQ_CONFIG_INT_KEY(eq_schedule_cfg, lr_fix_step, "30", 1, 1000000, "fix_step period in epochs"),
    EQ_CONFIG_FLOAT_KEY(eq_schedule_cfg, eta_min, "0", 0.0, 100.0, "lowest lr of poly, cos, sgdr"),
    EQ_CONFIG_INT_KEY(eq_schedule_cfg, epochs, "40", 1, 1000000, "training epochs E"),
    EQ_CONFIG_FLOAT_KEY(eq_schedule_cfg, warmup_epochs, "0", 0.0, 1000.0,
                        "linear warm-up: iteration t of the first W epochs uses lr * (t+1)/(W*iters)"),
};

void eq_optim_config_sections(eq_optim_cfg *o, eq_schedule_cfg *s,
                              eq_config_section secs[EQ_OPTIM_CONFIG_NSECTIONS])
{
    secs[0] = (eq_config_section){"optim", "optimiser (doc/models.md)", s_optim_keys,
                                  EQ_CONFIG_NKEYS(s_optim_keys), o};
    secs[1] = (eq_config_section){"schedule", "learning-rate policy (doc/models.md)", s_sched_keys,
                                  EQ_CONFIG_NKEYS(s_sched_keys), s};
}

/* ---- schedule -------------------------------------------------------------- */

eq_status eq_schedule_lr(const eq_schedule_cfg *s, double lr0, int64_t epoch, int64_t iter,
                         int64_t iters, double *lr, eq_err *err)
{
    if (!s || !lr) return eq_err_set(err, EQ_ERR_INVALID, "schedule: NULL argument");
    if (iters < 1 || epoch < 0 || iter < 0 || iter >= iters)
        return eq_err_set(err, EQ_ERR_INVALID, "schedule: epoch %lld, iteration %lld of %lld is out of range",
                          (long long)epoch, (long long)iter, (long long)iters);
    size_t K = s->nlr_custom_step;
    const int64_t *m = s->lr_custom_step;
    for (size_t k = 0; k < K; k++)
        if ((k > 0 && m[k] <= m[k - 1]) || m[k] >= s->epochs)
            return eq_err_set(err, EQ_ERR_INVALID,
                              "[schedule] lr_custom_step: item %zu (%lld) must increase and stay below epochs (%lld)",
                              k + 1, (long long)m[k], (long long)s->epochs);
    double e = (double)epoch, d = s->lr_decay, eta = s->eta_min, v = lr0;
    /* extra epochs keep the last epoch's lr */
    int64_t ec = epoch < s->epochs ? epoch : s->epochs - 1;
    size_t k = 0;
    while (k < K && m[k] <= ec) k++;
    /* current cycle [start, end) for poly / cos / sgdr */
    int64_t start = k == 0 ? 0 : m[k - 1], end = k < K ? m[k] : s->epochs;
    switch ((eq_lr_policy)s->policy) {
    case EQ_LR_DECAY: v = lr0 * pow(d, (double)ec); break;
    case EQ_LR_FIX: v = lr0; break;
    case EQ_LR_FIX_STEP: v = lr0 * pow(d, (double)(ec / s->lr_fix_step)); break;
    case EQ_LR_CUSTOM_STEP: v = lr0 * pow(d, (double)k); break;
    case EQ_LR_POLY: {
        double T = (double)(end - start), t = (double)(ec - start);
        v = eta + (lr0 - eta) * pow(1.0 - t / T, d);
        break;
    }
    case EQ_LR_COS: {
        double T = (double)(end - start), t = (double)(ec - start);
        v = eta + (lr0 - eta) * (1.0 + cos(M_PI * t / T)) / 2.0;
        break;
    }
    case EQ_LR_SGDR: {
        double T = (double)(end - start) * (double)iters;
        double t = (double)(ec - start) * (double)iters + (double)(epoch < s->epochs ? iter : iters - 1);
        v = eta + (lr0 - eta) * (1.0 + cos(M_PI * t / T)) / 2.0;
        break;
    }
    default: return eq_err_set(err, EQ_ERR_INVALID, "[schedule] policy: bad value %d", s->policy);
    }
    (void)e;
    double wi = s->warmup_epochs * (double)iters;
    double gi = (double)epoch * (double)iters + (double)iter;
    if (wi > 0 && gi < wi) v *= (gi + 1.0) / wi;
    *lr = v;
    return EQ_OK;
}

/* ---- optimiser ------------------------------------------------------------- */

typedef struct s_slot {
    const eq_model_tensor *p;
    float wd;
    double lr_scale; /* lr = lr_t * lr_scale, or lr_const when >= 0 */
    double lr_const;
    int st0, st1; /* state tensor indices (-1: none) */
    int staged;   /* host-memory parameter on a device backend: stepped in qstage */
    size_t qoff;  /* its device copy at qstage + qoff, the gradient's after it */
} s_slot;

struct eq_optim {
    eq_model *m;
    eq_optim_cfg cfg;
    s_slot *slots;
    size_t nslots;
    eq_model_tensor *state;
    size_t nstate;
    float *block;
    float *qstage; /* device copies of the staged parameters and gradients */
    int64_t steps;
};

static double s_decay(const eq_optim_cfg *c, const eq_model_tensor *t)
{
    for (size_t i = 0; i < c->ncustom_decay_list; i++)
        if (c->custom_decay_list[i][0] && strstr(t->name, c->custom_decay_list[i])) return c->custom_decay;
    if (!c->decay_small && (t->ndim <= 1 || (t->ndim == 4 && t->shape[1] == 1))) return 0.0;
    return c->weight_decay;
}

static int s_in_list(const char (*list)[64], size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (list[i][0] && strstr(name, list[i])) return 1;
    return 0;
}

/* "X.weight" of a layer that has a weight quantizer ("X.quant_weight.*"). */
static int s_owns_wq(const eq_model *m, const char *name)
{
    size_t len = strlen(name);
    if (len < 8 || strcmp(name + len - 7, ".weight")) return 0;
    size_t pl = len - 6; /* "X." */
    for (size_t i = 0; i < eq_model_tensor_count(m); i++) {
        const char *n = eq_model_tensor_at(m, i)->name;
        if (!strncmp(n, name, pl) && !strncmp(n + pl, "quant_weight.", 13)) return 1;
    }
    return 0;
}

void eq_optim_destroy(eq_optim **o_p)
{
    if (!o_p || !*o_p) return;
    eq_optim *o = *o_p;
    for (size_t i = 0; i < o->nstate; i++) free((char *)o->state[i].name);
    if (o->block) eq_backend_release(eq_model_backend(o->m), o->block);
    if (o->qstage) eq_backend_release(eq_model_backend(o->m), o->qstage);
    free(o->state);
    free(o->slots);
    free(o);
    *o_p = NULL;
}

eq_optim *eq_optim_new(eq_model *m, const eq_optim_cfg *cfg, eq_err *err)
{
    if (!m || !cfg) {
        eq_err_set(err, EQ_ERR_INVALID, "optim: model and config are required");
        return NULL;
    }
    if (cfg->method == 0 && cfg->nesterov && (cfg->momentum <= 0 || cfg->dampening != 0)) {
        eq_err_set(err, EQ_ERR_INVALID, "[optim] nesterov: needs momentum > 0 and dampening 0");
        return NULL;
    }
    eq_optim *o = calloc(1, sizeof *o);
    size_t nt = eq_model_tensor_count(m);
    if (!o || !(o->slots = calloc(nt ? nt : 1, sizeof *o->slots)) ||
        !(o->state = calloc(2 * (nt ? nt : 1), sizeof *o->state))) {
        eq_err_set(err, EQ_ERR_NOMEM, "optim: out of memory");
        if (o) free(o->slots);
        free(o);
        return NULL;
    }
    o->m = m;
    o->cfg = *cfg;
    int nbuf = cfg->method == 1 ? 2 : cfg->momentum > 0 ? 1 : 0;
    static const char *const sgd_names[] = {"momentum_buffer"};
    static const char *const adam_names[] = {"exp_avg", "exp_avg_sq"};
    const char *const *names = cfg->method == 1 ? adam_names : sgd_names;
    size_t total = 0;
    for (size_t i = 0; i < nt; i++) {
        const eq_model_tensor *t = eq_model_tensor_at(m, i);
        if (t->kind != EQ_MT_PARAM) continue;
        s_slot *sl = &o->slots[o->nslots++];
        sl->p = t;
        sl->wd = (float)s_decay(cfg, t);
        sl->lr_scale = 1.0, sl->lr_const = -1.0;
        if (cfg->ncustom_lr_list) {
            int qw = 0;
            for (size_t k = 0; k < cfg->ncustom_lr_list; k++) qw |= !strcmp(cfg->custom_lr_list[k], "quant_weight");
            if (qw && s_owns_wq(m, t->name))
                sl->lr_const = cfg->custom_lr;
            else if (s_in_list(cfg->custom_lr_list, cfg->ncustom_lr_list, t->name))
                sl->lr_scale = cfg->lr > 0 ? cfg->custom_lr / cfg->lr : 0.0;
        }
        sl->st0 = sl->st1 = -1;
        for (int b = 0; b < nbuf; b++) {
            eq_model_tensor *st = &o->state[o->nstate];
            size_t len = strlen(t->name) + strlen(names[b]) + 2;
            char *nm = malloc(len);
            if (!nm) {
                eq_err_set(err, EQ_ERR_NOMEM, "optim: out of memory");
                eq_optim_destroy(&o);
                return NULL;
            }
            snprintf(nm, len, "%s.%s", t->name, names[b]);
            *st = *t;
            st->name = nm;
            st->kind = EQ_MT_BUFFER;
            st->grad = NULL;
            st->quant = false;
            st->data = (void *)(uintptr_t)total; /* offset until the block exists */
            total += (t->numel + 15) / 16 * 16;
            if (b == 0) sl->st0 = (int)o->nstate;
            else sl->st1 = (int)o->nstate;
            o->nstate++;
        }
    }
    if (total) {
        eq_backend *be = eq_model_backend(m);
        if (!(o->block = eq_backend_alloc(be, total * sizeof(float), err)) ||
            eq_backend_zero(be, o->block, total * sizeof(float), err) != EQ_OK) {
            eq_err_prefix(err, "optim: ");
            eq_optim_destroy(&o);
            return NULL;
        }
        for (size_t i = 0; i < o->nstate; i++) o->state[i].data = o->block + (uintptr_t)o->state[i].data;
    }
    /* Quantizer parameters live in host memory (quant/); on a backend whose
     * memory is not host memory they are stepped in device copies (their
     * optimiser state is device memory like every other's). */
    size_t qtotal = 0;
    for (size_t i = 0; i < o->nslots && !eq_backend_host_memory(eq_model_backend(m)); i++) {
        s_slot *sl = &o->slots[i];
        if (!sl->p->quant) continue;
        sl->staged = 1;
        sl->qoff = qtotal;
        qtotal += 2 * ((sl->p->numel + 15) / 16 * 16);
    }
    if (qtotal && !(o->qstage = eq_backend_alloc(eq_model_backend(m), qtotal * sizeof(float), err))) {
        eq_err_prefix(err, "optim: ");
        eq_optim_destroy(&o);
        return NULL;
    }
    return o;
}

eq_status eq_optim_step(eq_optim *o, double lr, eq_err *err)
{
    if (!o) return eq_err_set(err, EQ_ERR_INVALID, "optim step: NULL optimiser");
    eq_backend *be = eq_model_backend(o->m);
    const eq_optim_cfg *c = &o->cfg;
    for (size_t i = 0; i < o->nslots; i++) { /* staged parameters and gradients to the device */
        const s_slot *sl = &o->slots[i];
        size_t nb = sl->p->numel * sizeof(float), r = (sl->p->numel + 15) / 16 * 16;
        eq_status st = EQ_OK;
        if (sl->staged && (st = eq_backend_upload(be, o->qstage + sl->qoff, sl->p->data, nb, err)) == EQ_OK)
            st = eq_backend_upload(be, o->qstage + sl->qoff + r, sl->p->grad, nb, err);
        if (st != EQ_OK) return eq_err_prefix(err, "optim step: %s: ", sl->p->name);
    }
    for (size_t i = 0; i < o->nslots; i++) {
        const s_slot *sl = &o->slots[i];
        float *param = sl->staged ? o->qstage + sl->qoff : sl->p->data;
        const float *grad = sl->staged ? o->qstage + sl->qoff + (sl->p->numel + 15) / 16 * 16 : sl->p->grad;
        double slr = sl->lr_const >= 0 ? sl->lr_const : lr * sl->lr_scale;
        eq_status st;
        if (c->method == 1) {
            eq_adam_params hp = {.lr = (float)slr, .beta1 = (float)c->beta1, .beta2 = (float)c->beta2,
                                 .eps = (float)c->eps, .weight_decay = sl->wd, .step = o->steps + 1};
            st = eq_backend_adam_step(be, sl->p->numel, &hp, param, grad,
                                      o->state[sl->st0].data, o->state[sl->st1].data, err);
        } else {
            eq_sgd_params hp = {.lr = (float)slr, .momentum = (float)c->momentum,
                                .dampening = (float)c->dampening, .weight_decay = sl->wd,
                                .nesterov = c->nesterov, .first = o->steps == 0};
            st = eq_backend_sgd_step(be, sl->p->numel, &hp, param, grad,
                                     sl->st0 >= 0 ? o->state[sl->st0].data : NULL, err);
        }
        if (st != EQ_OK) return eq_err_prefix(err, "optim step: %s: ", sl->p->name);
    }
    for (size_t i = 0; i < o->nslots; i++) { /* and the stepped parameters back */
        const s_slot *sl = &o->slots[i];
        if (sl->staged && eq_backend_download(be, sl->p->data, o->qstage + sl->qoff,
                                              sl->p->numel * sizeof(float), err) != EQ_OK)
            return eq_err_prefix(err, "optim step: %s: ", sl->p->name);
    }
    o->steps++;
    return EQ_OK;
}

int64_t eq_optim_steps(const eq_optim *o)
{
    return o ? o->steps : 0;
}

void eq_optim_set_steps(eq_optim *o, int64_t steps)
{
    if (o) o->steps = steps;
}

size_t eq_optim_state_count(const eq_optim *o)
{
    return o ? o->nstate : 0;
}

const eq_model_tensor *eq_optim_state_at(const eq_optim *o, size_t i)
{
    return o && i < o->nstate ? &o->state[i] : NULL;
}

double eq_optim_decay_of(const eq_optim *o, const char *name)
{
    if (!o || !name) return -1.0;
    for (size_t i = 0; i < o->nslots; i++)
        if (!strcmp(o->slots[i].p->name, name)) return o->slots[i].wd;
    return -1.0;
}

double eq_optim_lr_of(const eq_optim *o, const char *name, double lr)
{
    if (!o || !name) return -1.0;
    for (size_t i = 0; i < o->nslots; i++)
        if (!strcmp(o->slots[i].p->name, name))
            return o->slots[i].lr_const >= 0 ? o->slots[i].lr_const : lr * o->slots[i].lr_scale;
    return -1.0;
}
