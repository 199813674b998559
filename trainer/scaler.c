/*
 * trainer/scaler.c -- loss scaling (scaler.h).
 */
#include "trainer/scaler.h"

#include <float.h>
#include <math.h>
#include <string.h>

eq_status eq_scaler_init(eq_scaler *s, bool dynamic, double init, double growth_factor,
                         double backoff_factor, int64_t growth_interval, eq_err *err)
{
    if (!s) return eq_err_set(err, EQ_ERR_INVALID, "loss scaler: NULL argument");
    memset(s, 0, sizeof *s);
    float f = (float)init;
    /* below FLT_MIN the unscale factor (float)(1/scale) can be inf, which
     * would turn every zero gradient into NaN */
    if (!(init > 0) || !isfinite(f) || !(f >= FLT_MIN))
        return eq_err_set(err, EQ_ERR_INVALID,
                          "loss scale %g must be finite and >= %g (fp32's smallest normal value) as a float", init,
                          (double)FLT_MIN);
    if (dynamic) {
        if (!(growth_factor > 1.0) || !isfinite(growth_factor))
            return eq_err_set(err, EQ_ERR_INVALID, "loss scale growth_factor %g must be finite and > 1",
                              growth_factor);
        if (!(backoff_factor > 0.0 && backoff_factor < 1.0))
            return eq_err_set(err, EQ_ERR_INVALID, "loss scale backoff_factor %g must be in (0, 1)",
                              backoff_factor);
        if (growth_interval < 1)
            return eq_err_set(err, EQ_ERR_INVALID, "loss scale growth_interval %lld must be >= 1",
                              (long long)growth_interval);
    }
    s->scale = f;
    s->dynamic = dynamic;
    s->growth_factor = growth_factor;
    s->backoff_factor = backoff_factor;
    s->growth_interval = growth_interval;
    return EQ_OK;
}

float eq_scaler_inv_scale(const eq_scaler *s)
{
    return (float)(1.0 / (double)s->scale);
}

void eq_scaler_update(eq_scaler *s, bool found_inf)
{
    s->updates++;
    if (found_inf) s->skipped++;
    if (!s->dynamic) return;
    /* torch's _amp_update_scale_: float state, double factors */
    if (found_inf) {
        s->scale = (float)((double)s->scale * s->backoff_factor);
        s->growth_tracker = 0;
        s->backoffs++;
        return;
    }
    int64_t successful = s->growth_tracker + 1;
    if (successful == s->growth_interval) {
        float grown = (float)((double)s->scale * s->growth_factor);
        if (isfinite(grown)) { /* never past fp32's range to inf */
            s->scale = grown;
            s->grown++;
        }
        s->growth_tracker = 0;
    } else {
        s->growth_tracker = successful;
    }
}

/* Is tensor t's gradient host memory (quant/ on a device-memory backend)? */
static bool s_host_grad(eq_backend *be, const eq_model_tensor *t)
{
    return eq_backend_host_memory(be) || t->quant;
}

eq_status eq_scaler_nonfinite(eq_model *m, int64_t *count, eq_err *err)
{
    if (!m || !count) return eq_err_set(err, EQ_ERR_INVALID, "loss scaler: NULL argument");
    /* one backend call over the layer graph's gradient block (one host
     * wait, where a call per tensor waited per tensor) */
    eq_status st = eq_model_grads_nonfinite(m, count, err);
    return st ? eq_err_prefix(err, "loss scaler: ") : EQ_OK;
}

eq_status eq_scaler_unscale(const eq_scaler *s, eq_model *m, float **dev_inv, eq_err *err)
{
    if (!s || !m || !dev_inv) return eq_err_set(err, EQ_ERR_INVALID, "loss scaler: NULL argument");
    float inv = eq_scaler_inv_scale(s);
    if (inv == 1.0f) return EQ_OK;
    eq_backend *be = eq_model_backend(m);
    bool uploaded = false;
    for (size_t i = 0; i < eq_model_tensor_count(m); i++) {
        const eq_model_tensor *t = eq_model_tensor_at(m, i);
        if (!t->grad || !t->numel) continue;
        if (s_host_grad(be, t)) {
            for (size_t k = 0; k < t->numel; k++) t->grad[k] *= inv;
            continue;
        }
        eq_status st = EQ_OK;
        if (!*dev_inv && !(*dev_inv = eq_backend_alloc(be, sizeof(float), err))) st = err ? err->code : EQ_ERR_NOMEM;
        if (st == EQ_OK && !uploaded) st = eq_backend_upload(be, *dev_inv, &inv, sizeof inv, err);
        uploaded = true;
        if (st == EQ_OK) st = eq_backend_scalar_affine_fwd(be, t->numel, t->grad, *dev_inv, NULL, t->grad, err);
        if (st) return eq_err_prefix(err, "loss scaler: unscale %s: ", t->name);
    }
    return EQ_OK;
}
