/* Activations: bias + activation forward, activation backward, the dense
 * forward (GEMM then bias + activation) and the bias gradient. */
#include <math.h>
#include <stddef.h>

#include "fastnn.h"

/* Below this many element-operations a parallel region costs more than it
 * saves. Transcendental activations weigh more per element. */
#define PAR_MIN_WORK 32768
#define EXP_COST 8
/* Columns summed together by one thread in fnn_bias_grad: wide enough to
 * stream whole cache lines, narrow enough for the accumulators to stay hot. */
#define BIAS_GRAD_BLOCK 64

static inline float sigmoid_f(float z)
{
    /* Never exponentiate a large positive number: exp(-|z|) <= 1. */
    if (z >= 0.0f) {
        return 1.0f / (1.0f + expf(-z));
    }
    const float e = expf(z);
    return e / (1.0f + e);
}

static inline int64_t act_cost(int act)
{
    return (act == FNN_ACT_SIGMOID || act == FNN_ACT_TANH || act == FNN_ACT_SOFTMAX)
               ? EXP_COST : 1;
}

static inline int use_parallel(int nt, int64_t rows, int64_t work)
{
    return nt > 1 && rows > 1 && work > PAR_MIN_WORK;
}

/* One row of y = act(x + bias). x and y may be the same row. */
static inline void bias_act_row(int act, int64_t cols, const float *x,
                                const float *bias, float *y)
{
    if (bias != NULL) {
        for (int64_t c = 0; c < cols; c++)
            y[c] = x[c] + bias[c];
    } else if (y != x) {
        for (int64_t c = 0; c < cols; c++)
            y[c] = x[c];
    }
    switch (act) {
    case FNN_ACT_RELU:
        /* "z < 0" rather than "z > 0" so that NaN propagates. */
        for (int64_t c = 0; c < cols; c++)
            y[c] = y[c] < 0.0f ? 0.0f : y[c];
        break;
    case FNN_ACT_SIGMOID:
        for (int64_t c = 0; c < cols; c++)
            y[c] = sigmoid_f(y[c]);
        break;
    case FNN_ACT_TANH:
        for (int64_t c = 0; c < cols; c++)
            y[c] = tanhf(y[c]);
        break;
    case FNN_ACT_SOFTMAX: {
        if (cols <= 0)
            break;
        float m = y[0];
        for (int64_t c = 1; c < cols; c++)
            m = y[c] > m ? y[c] : m;
        double s = 0.0;
        for (int64_t c = 0; c < cols; c++) {
            y[c] = expf(y[c] - m);
            s += y[c];
        }
        const float inv = (float)(1.0 / s);
        for (int64_t c = 0; c < cols; c++)
            y[c] *= inv;
        break;
    }
    default: /* FNN_ACT_LINEAR */
        break;
    }
}

void fnn_bias_act_fwd(int act, int64_t rows, int64_t cols, const float *x,
                      const float *bias, float *y)
{
    const int nt = fnn_get_num_threads();
    const int par = use_parallel(nt, rows, rows * cols * act_cost(act));
    (void)par; /* unused when built without OpenMP */
    #pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t r = 0; r < rows; r++)
        bias_act_row(act, cols, x + r * cols, bias, y + r * cols);
}

/* One row of dx = dy * act'(.), written through the forward output y. */
static inline void act_bwd_row(int act, int64_t cols, const float *y,
                               const float *dy, float *dx)
{
    switch (act) {
    case FNN_ACT_RELU:
        for (int64_t c = 0; c < cols; c++)
            dx[c] = y[c] > 0.0f ? dy[c] : 0.0f;
        break;
    case FNN_ACT_SIGMOID:
        for (int64_t c = 0; c < cols; c++)
            dx[c] = dy[c] * y[c] * (1.0f - y[c]);
        break;
    case FNN_ACT_TANH:
        for (int64_t c = 0; c < cols; c++)
            dx[c] = dy[c] * (1.0f - y[c] * y[c]);
        break;
    case FNN_ACT_SOFTMAX: {
        /* Jacobian-vector product: dx_j = y_j * (dy_j - sum_k dy_k y_k).
         * The dot is finished before dx is written, so dx may alias dy. */
        double dot = 0.0;
        for (int64_t c = 0; c < cols; c++)
            dot += (double)dy[c] * (double)y[c];
        const float d = (float)dot;
        for (int64_t c = 0; c < cols; c++)
            dx[c] = y[c] * (dy[c] - d);
        break;
    }
    default: /* FNN_ACT_LINEAR */
        if (dx != dy) {
            for (int64_t c = 0; c < cols; c++)
                dx[c] = dy[c];
        }
        break;
    }
}

void fnn_act_bwd(int act, int64_t rows, int64_t cols, const float *y,
                 const float *dy, float *dx)
{
    const int nt = fnn_get_num_threads();
    const int par = use_parallel(nt, rows, rows * cols);
    (void)par; /* unused when built without OpenMP */
    #pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t r = 0; r < rows; r++)
        act_bwd_row(act, cols, y + r * cols, dy + r * cols, dx + r * cols);
}

void fnn_dense_fwd(int act, int64_t M, int64_t N, int64_t K, const float *x,
                   const float *w, const float *bias, float *y)
{
    fnn_sgemm(0, 0, M, N, K, 1.0f, x, K > 0 ? K : 1, w, N > 0 ? N : 1,
              0.0f, y, N > 0 ? N : 1);
    fnn_bias_act_fwd(act, M, N, y, bias, y);
}

void fnn_bias_grad(int64_t rows, int64_t cols, const float *dz, float *db)
{
    const int nt = fnn_get_num_threads();
    const int64_t nblocks = (cols + BIAS_GRAD_BLOCK - 1) / BIAS_GRAD_BLOCK;
    const int par = nt > 1 && nblocks > 1 && rows * cols > PAR_MIN_WORK;
    (void)par; /* unused when built without OpenMP */
    /* Each column is summed by one thread, top row to bottom row, in double:
     * the result does not depend on how blocks are shared out. */
    #pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t b = 0; b < nblocks; b++) {
        const int64_t c0 = b * BIAS_GRAD_BLOCK;
        const int64_t w = cols - c0 < BIAS_GRAD_BLOCK ? cols - c0 : BIAS_GRAD_BLOCK;
        double acc[BIAS_GRAD_BLOCK];
        for (int64_t c = 0; c < w; c++)
            acc[c] = 0.0;
        for (int64_t r = 0; r < rows; r++) {
            const float *row = dz + r * cols + c0;
            for (int64_t c = 0; c < w; c++)
                acc[c] += (double)row[c];
        }
        for (int64_t c = 0; c < w; c++)
            db[c0 + c] = (float)acc[c];
    }
}
