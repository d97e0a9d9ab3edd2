/* fastnn kernels: the single header.
 *
 * Conventions for every kernel below:
 *   - float32 data, int64_t sizes and indices, row-major (C-contiguous) matrices
 *     unless a leading dimension (ld*) is given.
 *   - The caller (Cython, fastnn/_C.pyx) has already checked shapes, dtypes,
 *     contiguity and aliasing; C trusts its inputs.
 *   - Every reduction runs in a fixed order that does not depend on the number
 *     of OpenMP threads, so results are bit-identical for any OMP_NUM_THREADS.
 *   - "rows x cols" arguments describe a matrix of `rows` samples with `cols`
 *     features; losses and metrics treat each row as one sample.
 */
#ifndef FASTNN_H
#define FASTNN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- threads (threads.c) ---------------------------------------------- */
/* 1 if compiled with OpenMP, else 0. */
int fnn_has_openmp(void);
/* Sets the OpenMP thread count used by every kernel (n >= 1). */
void fnn_set_num_threads(int n);
/* The thread count kernels will use. */
int fnn_get_num_threads(void);
/* Makes every later kernel run on the calling thread only (after fork). */
void fnn_force_serial(int on);

/* ---- GEMM (gemm.c) ---------------------------------------------------- */
/* C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C; op(A)=A (lda>=K) or
 * A^T with A stored (K,M) (lda>=M); likewise B; beta==0 never reads C. */
void fnn_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
               float alpha, const float *A, int64_t lda,
               const float *B, int64_t ldb,
               float beta, float *C, int64_t ldc);

/* ---- activations (activation.c) --------------------------------------- */
enum fnn_activation {
    FNN_ACT_LINEAR = 0,
    FNN_ACT_RELU = 1,
    FNN_ACT_SIGMOID = 2,
    FNN_ACT_TANH = 3,
    FNN_ACT_SOFTMAX = 4 /* over each row, max-subtracted */
};
/* y[r,c] = act(x[r,c] + bias[c]); bias may be NULL; y may alias x. */
void fnn_bias_act_fwd(int act, int64_t rows, int64_t cols, const float *x,
                      const float *bias, float *y);
/* dx = dy * act'(.) expressed through the forward OUTPUT y; dx may alias dy. */
void fnn_act_bwd(int act, int64_t rows, int64_t cols, const float *y,
                 const float *dy, float *dx);
/* y = act(x @ w + bias): x (M,K), w (K,N), bias (N) or NULL, y (M,N). */
void fnn_dense_fwd(int act, int64_t M, int64_t N, int64_t K, const float *x,
                   const float *w, const float *bias, float *y);
/* db[c] = sum over r (in row order) of dz[r,c]. */
void fnn_bias_grad(int64_t rows, int64_t cols, const float *dz, float *db);

/* ---- losses (loss.c) --------------------------------------------------- */
/* Each returns the mean over rows of the per-sample loss (Keras's
 * sum_over_batch_size) and writes d(mean loss)/d(input) into grad.
 * "_logits" kernels also write the activated predictions into probs. */
double fnn_softmax_cce_logits(int64_t rows, int64_t cols, const float *logits,
                              const float *target, float *probs, float *grad);
double fnn_softmax_sparse_cce_logits(int64_t rows, int64_t cols,
                                     const float *logits, const int32_t *labels,
                                     float *probs, float *grad);
/* Keras from-probabilities CCE: p normalised by its row sum, clipped to
 * [1e-7, 1-1e-7]. */
double fnn_cce_probs(int64_t rows, int64_t cols, const float *probs,
                     const float *target, float *grad);
double fnn_sparse_cce_probs(int64_t rows, int64_t cols, const float *probs,
                            const int32_t *labels, float *grad);
/* Per sample: mean over cols of the element loss. */
double fnn_sigmoid_bce_logits(int64_t rows, int64_t cols, const float *logits,
                              const float *target, float *probs, float *grad);
double fnn_bce_probs(int64_t rows, int64_t cols, const float *probs,
                     const float *target, float *grad);
double fnn_mse(int64_t rows, int64_t cols, const float *pred,
               const float *target, float *grad);
double fnn_mae(int64_t rows, int64_t cols, const float *pred,
               const float *target, float *grad);

/* ---- metrics (metrics.c) ---------------------------------------------- */
/* Each returns the SUM over rows of the per-sample metric. */
double fnn_categorical_accuracy_sum(int64_t rows, int64_t cols,
                                    const float *pred, const float *target);
double fnn_sparse_categorical_accuracy_sum(int64_t rows, int64_t cols,
                                           const float *pred,
                                           const int32_t *labels);
/* Per sample: mean over cols of (pred > threshold) == (target > 0.5). */
double fnn_binary_accuracy_sum(int64_t rows, int64_t cols, const float *pred,
                               const float *target, float threshold);
/* Per sample: mean over cols of squared / absolute error. */
double fnn_mse_sum(int64_t rows, int64_t cols, const float *pred,
                   const float *target);
double fnn_mae_sum(int64_t rows, int64_t cols, const float *pred,
                   const float *target);

/* ---- reductions (reduce.c) --------------------------------------------- */
/* sum of x[i]^2 in float64, in fixed-size chunks combined in order. */
double fnn_sumsq(int64_t n, const float *x);
/* x *= s. */
void fnn_scale(int64_t n, float *x, float s);

/* ---- optimisers (optim.c) ---------------------------------------------- */
/* In every step the gradient used is g' = g * grad_scale, then clipped to
 * [-clip_value, clip_value] when clip_value > 0. weight_decay > 0 applies
 * Keras's decoupled decay p -= p * weight_decay * lr before the update. */
/* SGD (Keras): v = momentum*v - lr*g'; p += nesterov ? momentum*v - lr*g' : v;
 * velocity may be NULL when momentum == 0 (then p -= lr*g'). */
void fnn_sgd_step(int64_t n, float *p, const float *g, float *velocity,
                  float lr, float momentum, int nesterov, float weight_decay,
                  float grad_scale, float clip_value);
/* Adam/AdamW (Keras): step is 1-based; lr_t = lr*sqrt(1-b2^t)/(1-b1^t);
 * m += (g'-m)(1-b1); v += (g'^2-v)(1-b2); p -= lr_t*m/(sqrt(v)+eps). */
void fnn_adam_step(int64_t n, float *p, const float *g, float *m, float *v,
                   float lr, float beta_1, float beta_2, float epsilon,
                   int64_t step, float weight_decay, float grad_scale,
                   float clip_value);
/* RMSprop (Keras): vel = rho*vel + (1-rho)g'^2; centred: avg = rho*avg +
 * (1-rho)g', den = vel - avg^2 + eps, else den = vel + eps; inc = lr*g'/sqrt(den);
 * momentum > 0: mom = momentum*mom + inc, p -= mom; else p -= inc.
 * mom may be NULL iff momentum == 0; avg may be NULL iff not centred. */
void fnn_rmsprop_step(int64_t n, float *p, const float *g, float *vel,
                      float *mom, float *avg, float lr, float rho,
                      float momentum, float epsilon, float weight_decay,
                      float grad_scale, float clip_value);

/* ---- data movement (data.c) -------------------------------------------- */
/* dst[i, :] = src[idx[i], :] for i < n_idx; src is (n_src, row_len). */
void fnn_gather_rows_f32(int64_t n_src, int64_t row_len, const float *src,
                         int64_t n_idx, const int64_t *idx, float *dst);
void fnn_gather_rows_i32(int64_t n_src, int64_t row_len, const int32_t *src,
                         int64_t n_idx, const int64_t *idx, int32_t *dst);
/* Inverted dropout: mask[i] = u[i] >= rate ? 1/(1-rate) : 0; y = x * mask. */
void fnn_dropout_fwd(int64_t n, const float *x, const float *u, float rate,
                     float *mask, float *y);
/* out = a * b elementwise; out may alias a or b. */
void fnn_mul(int64_t n, const float *a, const float *b, float *out);
/* out = a + b elementwise; out may alias a or b. */
void fnn_add(int64_t n, const float *a, const float *b, float *out);

#ifdef __cplusplus
}
#endif

#endif /* FASTNN_H */
