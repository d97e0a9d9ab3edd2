/* Fused optimiser steps over the flat parameter buffer (Keras 3 update
 * rules, float32 arithmetic per element). One pass reads each gradient once:
 * scale, clip, decoupled weight decay and the update happen together. */
#include <math.h>
#include <stddef.h>

#include "fastnn.h"

#define PAR_MIN_WORK 32768

/* g' = g * scale, clipped to [-clip, clip] when clip > 0. Written with
 * comparisons rather than fminf/fmaxf so that a NaN gradient stays NaN and
 * divergence remains visible. */
static inline float prep_grad(float g, float scale, float clip)
{
    float x = g * scale;
    if (clip > 0.0f)
        x = x > clip ? clip : (x < -clip ? -clip : x);
    return x;
}

/* Keras's decoupled decay: p - p * weight_decay * lr. */
static inline float decay(float p, float wd_lr)
{
    return wd_lr != 0.0f ? p - p * wd_lr : p;
}

void fnn_sgd_step(int64_t n, float *p, const float *g, float *velocity,
                  float lr, float momentum, int nesterov, float weight_decay,
                  float grad_scale, float clip_value)
{
    const int nt = fnn_get_num_threads();
    const int par = nt > 1 && n > PAR_MIN_WORK;
    (void)par; /* unused when built without OpenMP */
    const float wd_lr = weight_decay > 0.0f ? weight_decay * lr : 0.0f;
    if (velocity == NULL) {
        #pragma omp parallel for schedule(static) if (par) num_threads(nt)
        for (int64_t i = 0; i < n; i++) {
            const float gi = prep_grad(g[i], grad_scale, clip_value);
            p[i] = decay(p[i], wd_lr) - lr * gi;
        }
        return;
    }
    #pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t i = 0; i < n; i++) {
        const float gi = prep_grad(g[i], grad_scale, clip_value);
        const float v = momentum * velocity[i] - lr * gi;
        velocity[i] = v;
        const float pi = decay(p[i], wd_lr);
        p[i] = nesterov ? pi + (momentum * v - lr * gi) : pi + v;
    }
}

void fnn_adam_step(int64_t n, float *p, const float *g, float *m, float *v,
                   float lr, float beta_1, float beta_2, float epsilon,
                   int64_t step, float weight_decay, float grad_scale,
                   float clip_value)
{
    const int nt = fnn_get_num_threads();
    const int par = nt > 1 && n > PAR_MIN_WORK;
    (void)par; /* unused when built without OpenMP */
    const float wd_lr = weight_decay > 0.0f ? weight_decay * lr : 0.0f;
    /* Bias correction folded into the step size, computed once in double. */
    const double t = (double)step;
    const double b1p = pow((double)beta_1, t), b2p = pow((double)beta_2, t);
    const float lr_t = (float)((double)lr * sqrt(1.0 - b2p) / (1.0 - b1p));
    const float one_b1 = 1.0f - beta_1, one_b2 = 1.0f - beta_2;
    #pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t i = 0; i < n; i++) {
        const float gi = prep_grad(g[i], grad_scale, clip_value);
        const float mi = m[i] + (gi - m[i]) * one_b1;
        const float vi = v[i] + (gi * gi - v[i]) * one_b2;
        m[i] = mi;
        v[i] = vi;
        p[i] = decay(p[i], wd_lr) - lr_t * mi / (sqrtf(vi) + epsilon);
    }
}

void fnn_rmsprop_step(int64_t n, float *p, const float *g, float *vel,
                      float *mom, float *avg, float lr, float rho,
                      float momentum, float epsilon, float weight_decay,
                      float grad_scale, float clip_value)
{
    const int nt = fnn_get_num_threads();
    const int par = nt > 1 && n > PAR_MIN_WORK;
    (void)par; /* unused when built without OpenMP */
    const float wd_lr = weight_decay > 0.0f ? weight_decay * lr : 0.0f;
    const float one_rho = 1.0f - rho;
    const int centred = avg != NULL;
    const int use_mom = momentum > 0.0f;
    #pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t i = 0; i < n; i++) {
        const float gi = prep_grad(g[i], grad_scale, clip_value);
        const float ve = rho * vel[i] + one_rho * gi * gi;
        vel[i] = ve;
        float den;
        if (centred) {
            const float a = rho * avg[i] + one_rho * gi;
            avg[i] = a;
            den = ve - a * a + epsilon;
        } else {
            den = ve + epsilon;
        }
        const float inc = lr * gi / sqrtf(den);
        const float pi = decay(p[i], wd_lr);
        if (use_mom) {
            const float mo = momentum * mom[i] + inc;
            mom[i] = mo;
            p[i] = pi - mo;
        } else {
            p[i] = pi - inc;
        }
    }
}
