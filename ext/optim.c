/* Fused optimiser steps over the flat parameter buffer (Keras 3 update
 * rules, float32 arithmetic per element). One pass reads each gradient once:
 * scale, clip, decoupled weight decay and the update happen together.
 *
 * Each step splits the buffer into fixed blocks shared out over the threads;
 * a block's loop is compiled per instruction set (simd_clones.h), since the
 * divisions and square roots of Adam and RMSprop make a step compute-bound
 * while the buffers sit in cache (models up to a few MB). Every element is
 * updated independently, so results do not depend on the thread count. */
#include <math.h>
#include <stddef.h>

#include "fastnn.h"
#include "simd_clones.h"

/* Elements per block: large enough to amortise a call, small enough to share
 * a small model's buffer out over the threads. */
#define BLOCK 4096
/* Below this many elements a parallel region costs more than it saves. */
#define PAR_MIN_WORK 32768

/* One optimiser step: the flat buffers (state ones NULL when unused) and the
 * scalars, shared read-only by every block. */
typedef struct {
    float *p;
    const float *g;
    float *s1, *s2, *s3; /* SGD: velocity; Adam: m, v; RMSprop: vel, mom, avg */
    float lr, momentum, beta_1, beta_2, epsilon, rho;
    float lr_t;       /* Adam's step size with the bias correction folded in */
    float wd_lr;      /* decoupled weight decay times the learning rate, or 0 */
    float grad_scale, clip_value;
    int nesterov;
} step_args;

/* The update of elements [off, off + n) of one step. */
typedef void (*block_fn)(int64_t off, int64_t n, const step_args *a);

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

SIMD_CLONES
static void sgd_block(int64_t off, int64_t n, const step_args *a)
{
    float *p = a->p + off, *vel = a->s1 ? a->s1 + off : NULL;
    const float *g = a->g + off;
    const float lr = a->lr, mom = a->momentum, wd_lr = a->wd_lr;
    const float scale = a->grad_scale, clip = a->clip_value;
    const int nesterov = a->nesterov;
    if (vel == NULL) {
        for (int64_t i = 0; i < n; i++)
            p[i] = decay(p[i], wd_lr) - lr * prep_grad(g[i], scale, clip);
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        const float gi = prep_grad(g[i], scale, clip);
        const float v = mom * vel[i] - lr * gi;
        vel[i] = v;
        const float pi = decay(p[i], wd_lr);
        p[i] = nesterov ? pi + (mom * v - lr * gi) : pi + v;
    }
}

SIMD_CLONES
static void adam_block(int64_t off, int64_t n, const step_args *a)
{
    float *p = a->p + off, *m = a->s1 + off, *v = a->s2 + off;
    const float *g = a->g + off;
    const float one_b1 = 1.0f - a->beta_1, one_b2 = 1.0f - a->beta_2;
    const float lr_t = a->lr_t, eps = a->epsilon, wd_lr = a->wd_lr;
    const float scale = a->grad_scale, clip = a->clip_value;
    for (int64_t i = 0; i < n; i++) {
        const float gi = prep_grad(g[i], scale, clip);
        const float mi = m[i] + (gi - m[i]) * one_b1;
        const float vi = v[i] + (gi * gi - v[i]) * one_b2;
        m[i] = mi;
        v[i] = vi;
        p[i] = decay(p[i], wd_lr) - lr_t * mi / (sqrtf(vi) + eps);
    }
}

SIMD_CLONES
static void rmsprop_block(int64_t off, int64_t n, const step_args *a)
{
    float *p = a->p + off, *vel = a->s1 + off;
    float *mom = a->s2 ? a->s2 + off : NULL, *avg = a->s3 ? a->s3 + off : NULL;
    const float *g = a->g + off;
    const float rho = a->rho, one_rho = 1.0f - a->rho, lr = a->lr;
    const float eps = a->epsilon, momentum = a->momentum, wd_lr = a->wd_lr;
    const float scale = a->grad_scale, clip = a->clip_value;
    for (int64_t i = 0; i < n; i++) {
        const float gi = prep_grad(g[i], scale, clip);
        const float ve = rho * vel[i] + one_rho * gi * gi;
        vel[i] = ve;
        float den;
        if (avg != NULL) {
            const float av = rho * avg[i] + one_rho * gi;
            avg[i] = av;
            den = ve - av * av + eps;
        } else {
            den = ve + eps;
        }
        const float inc = lr * gi / sqrtf(den);
        const float pi = decay(p[i], wd_lr);
        if (mom != NULL) {
            const float mo = momentum * mom[i] + inc;
            mom[i] = mo;
            p[i] = pi - mo;
        } else {
            p[i] = pi - inc;
        }
    }
}

static inline float wd_times_lr(float weight_decay, float lr)
{
    return weight_decay > 0.0f ? weight_decay * lr : 0.0f;
}

/* Runs fn over [0, n) in BLOCK-element blocks, shared out over the threads. */
static void run_blocks(int64_t n, block_fn fn, const step_args *a)
{
    const int nt = fnn_get_num_threads();
    const int par = nt > 1 && n > PAR_MIN_WORK;
    const int64_t nblocks = (n + BLOCK - 1) / BLOCK;
    (void)par; /* unused when built without OpenMP */
    #pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t b = 0; b < nblocks; b++) {
        const int64_t off = b * BLOCK;
        fn(off, n - off < BLOCK ? n - off : BLOCK, a);
    }
}

void fnn_sgd_step(int64_t n, float *p, const float *g, float *velocity,
                  float lr, float momentum, int nesterov, float weight_decay,
                  float grad_scale, float clip_value)
{
    const step_args a = {.p = p, .g = g, .s1 = velocity, .lr = lr, .momentum = momentum,
                         .nesterov = nesterov, .wd_lr = wd_times_lr(weight_decay, lr),
                         .grad_scale = grad_scale, .clip_value = clip_value};
    run_blocks(n, sgd_block, &a);
}

void fnn_adam_step(int64_t n, float *p, const float *g, float *m, float *v,
                   float lr, float beta_1, float beta_2, float epsilon,
                   int64_t step, float weight_decay, float grad_scale,
                   float clip_value)
{
    /* Bias correction folded into the step size, computed once in double. */
    const double t = (double)step;
    const double b1p = pow((double)beta_1, t), b2p = pow((double)beta_2, t);
    const step_args a = {.p = p, .g = g, .s1 = m, .s2 = v, .beta_1 = beta_1,
                         .beta_2 = beta_2, .epsilon = epsilon,
                         .lr_t = (float)((double)lr * sqrt(1.0 - b2p) / (1.0 - b1p)),
                         .wd_lr = wd_times_lr(weight_decay, lr),
                         .grad_scale = grad_scale, .clip_value = clip_value};
    run_blocks(n, adam_block, &a);
}

void fnn_rmsprop_step(int64_t n, float *p, const float *g, float *vel,
                      float *mom, float *avg, float lr, float rho,
                      float momentum, float epsilon, float weight_decay,
                      float grad_scale, float clip_value)
{
    /* Keras applies momentum only when it is positive. */
    const step_args a = {.p = p, .g = g, .s1 = vel, .s2 = momentum > 0.0f ? mom : NULL,
                         .s3 = avg, .lr = lr, .rho = rho, .momentum = momentum,
                         .epsilon = epsilon, .wd_lr = wd_times_lr(weight_decay, lr),
                         .grad_scale = grad_scale, .clip_value = clip_value};
    run_blocks(n, rmsprop_block, &a);
}
