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
/* fnn_sgemm, then C = act(C + bias[col]) (bias may be NULL) applied to each
 * tile of C as soon as it is final; act elementwise only (not softmax). */
void fnn_sgemm_bias_act(int trans_a, int trans_b, int64_t M, int64_t N,
                        int64_t K, float alpha, const float *A, int64_t lda,
                        const float *B, int64_t ldb, float beta, float *C,
                        int64_t ldc, const float *bias, int act);
/* Testing only: force the SGEMM micro-kernel (0 auto, 1 portable C, 2 AVX2,
 * 3 AVX-512); returns 0, or -1 (no change) if this CPU lacks it. */
int fnn_sgemm_set_kernel(int kind);
/* Testing only: the micro-kernel fnn_sgemm uses now (1, 2 or 3). */
int fnn_sgemm_get_kernel(void);
/* Products whose op(A) has at most this fraction of nonzero entries skip
 * its zeros (same results, less work; B not transposed, AVX-512 or portable
 * kernels); 0 turns that off.  Returns the previous fraction. */
double fnn_sgemm_set_sparse_density(double max_density);

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
/* In place on the strided block c[rows, cols] (leading dim ldc), one thread:
 * c = act(c + bias[col]); bias may be NULL; act elementwise (not softmax). */
void fnn_bias_act_tile(int act, int64_t rows, int64_t cols, const float *bias,
                       float *c, int64_t ldc);
/* dz = dy * act'(.) through the forward output y (dz may alias dy) and, in
 * the same pass, db = column sums of dz (db may be NULL), in fnn_bias_grad's
 * fixed order. */
void fnn_act_bias_bwd(int act, int64_t rows, int64_t cols, const float *y,
                      const float *dy, float *dz, float *db);
/* y[i] = exp(x[i]) within 1.3 ulp (saturates near FLT_MAX for x > 88.72),
 * vectorised, single-threaded (a building block); y may alias x. */
void fnn_vexpf(int64_t n, const float *x, float *y);
/* y[i] = tanh(x[i]) within 2.4 ulp, sigmoid(x[i]) within 2.9 ulp; vectorised,
 * single-threaded; y may alias x. */
void fnn_vtanhf(int64_t n, const float *x, float *y);
void fnn_vsigmoidf(int64_t n, const float *x, float *y);
/* p[r] = softmax(z[r]) for each of rows rows of cols floats, max-shifted (p
 * may be z), and lse[r] = log(sum(exp(z[r]))) unless lse is NULL.
 * Single-threaded. */
void fnn_softmax_rows(int64_t rows, int64_t cols, const float *z, float *p,
                      double *lse);

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
/* Index of the first NaN or infinity in x[0:n], or -1 if all are finite. */
int64_t fnn_first_nonfinite(int64_t n, const float *x);

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

/* ---- convolution (conv.c, pool.c, batchnorm.c) ---- */
/* Images are NHWC (B, H, W, C) float32; kernels (kh, kw, C, F); padding is
 * explicit zero padding (top pt, bottom pb, left pl, right pr); Ho, Wo are
 * (H + pt + pb - dh*(kh-1) - 1) / sh + 1 and likewise for W. */
typedef struct {
    int64_t B, H, W, C;     /* input */
    int64_t F, kh, kw;      /* filters, kernel size */
    int64_t sh, sw, dh, dw; /* strides, dilation */
    int64_t pt, pb, pl, pr; /* zero padding */
    int64_t Ho, Wo;         /* output (B, Ho, Wo, F) */
} fnn_conv2d_geom;
/* Every kernel in this section runs on at most nthreads (>= 1) threads; the
 * caller passes the project's thread setting explicitly (each Python
 * extension module links its own copy of threads.c). */
/* Bytes of scratch the conv kernels need with nthreads threads; given a
 * smaller work buffer they use as many threads as it fits. */
int64_t fnn_conv2d_workspace_bytes(const fnn_conv2d_geom *g, int nthreads);
/* out = act(conv(x, w) + bias); x (B,H,W,C), w (kh,kw,C,F), bias (F) or NULL,
 * out (B,Ho,Wo,F); softmax is over F for each pixel. */
void fnn_conv2d_fwd(const fnn_conv2d_geom *g, int act, const float *x,
                    const float *w, const float *bias, float *out,
                    void *work, int64_t work_bytes, int nthreads);
/* From dz (B,Ho,Wo,F), the gradient w.r.t. the pre-activation output:
 * overwrites dw (kh,kw,C,F), db (F), dx (B,H,W,C); any may be NULL. */
void fnn_conv2d_bwd(const fnn_conv2d_geom *g, const float *x, const float *w,
                    const float *dz, float *dw, float *db, float *dx,
                    void *work, int64_t work_bytes, int nthreads);
/* 1 when the conv kernels run their AVX2+FMA path; on != 0 forces the
 * plain C path (for tests). */
int fnn_conv_simd_path(void);
void fnn_conv_force_generic(int on);

/* Pooling windows (ph, pw) with strides and padding as above; padded
 * positions never count (max ignores them, average divides by the number
 * of in-image elements). Every pad must be smaller than its window. */
typedef struct {
    int64_t B, H, W, C;
    int64_t ph, pw, sh, sw;
    int64_t pt, pb, pl, pr;
    int64_t Ho, Wo;
} fnn_pool2d_geom;
/* out (B,Ho,Wo,C) = window max; argmax (same shape; exactly one of arg32 /
 * arg64 non-NULL) = index (h*W + w)*C + c of the max inside its image
 * (first max wins; NaN wins). */
void fnn_maxpool2d_fwd(const fnn_pool2d_geom *g, const float *x, float *out,
                       int32_t *arg32, int64_t *arg64, int nthreads);
/* dx (B, n_in) = 0, then dx[b, argmax[b, j]] += dy[b, j] for j < n_out, in
 * j order per image; serves 2-D and global max pooling. */
void fnn_maxpool_bwd(int64_t B, int64_t n_out, int64_t n_in, const float *dy,
                     const int32_t *arg32, const int64_t *arg64, float *dx,
                     int nthreads);
/* out (B,Ho,Wo,C) = mean of the window's in-image elements. */
void fnn_avgpool2d_fwd(const fnn_pool2d_geom *g, const float *x, float *out,
                       int nthreads);
/* dx (B,H,W,C) = 0, then each window's in-image elements += dy / count. */
void fnn_avgpool2d_bwd(const fnn_pool2d_geom *g, const float *dy, float *dx,
                       int nthreads);
/* out (B,C) = mean over the HW pixels of x (B,HW,C), summed in pixel order. */
void fnn_global_avgpool_fwd(int64_t B, int64_t HW, int64_t C, const float *x,
                            float *out, int nthreads);
/* dx (B,HW,C) = dy[b,c] / HW. */
void fnn_global_avgpool_bwd(int64_t B, int64_t HW, int64_t C, const float *dy,
                            float *dx, int nthreads);
/* out (B,C) = max over pixels; argmax (B,C) = pixel*C + c (first max wins). */
void fnn_global_maxpool_fwd(int64_t B, int64_t HW, int64_t C, const float *x,
                            float *out, int32_t *arg32, int64_t *arg64,
                            int nthreads);
/* out (B, H+pt+pb, W+pl+pr, C) = x zero-padded. */
void fnn_zeropad2d_fwd(int64_t B, int64_t H, int64_t W, int64_t C, int64_t pt,
                       int64_t pb, int64_t pl, int64_t pr, const float *x,
                       float *out, int nthreads);
/* dx (B,H,W,C) = the interior of dy (B, H+pt+pb, W+pl+pr, C). */
void fnn_zeropad2d_bwd(int64_t B, int64_t H, int64_t W, int64_t C, int64_t pt,
                       int64_t pb, int64_t pl, int64_t pr, const float *dy,
                       float *dx, int nthreads);

/* Batch normalisation over x (rows, C): per-channel statistics over rows,
 * summed in float64 over fixed row chunks combined in chunk order. gamma /
 * beta may be NULL (1 / 0); dgamma / dbeta may be NULL. */
/* Bytes of scratch the batchnorm kernels need. */
int64_t fnn_batchnorm_workspace_bytes(int64_t rows, int64_t C);
/* Batch mean m and biased variance v; out = (x-m)/sqrt(v+eps)*gamma + beta;
 * save_mean = m, save_invstd = 1/sqrt(v+eps); moving = moving*momentum +
 * batch*(1-momentum) for the mean and the (biased) variance. */
void fnn_batchnorm_fwd_train(int64_t rows, int64_t C, const float *x, float *out,
                             const float *gamma, const float *beta,
                             float *moving_mean, float *moving_var,
                             float *save_mean, float *save_invstd,
                             float momentum, float epsilon, void *work,
                             int nthreads);
/* out = (x - moving_mean)/sqrt(moving_var + eps)*gamma + beta. */
void fnn_batchnorm_fwd_infer(int64_t rows, int64_t C, const float *x, float *out,
                             const float *gamma, const float *beta,
                             const float *moving_mean, const float *moving_var,
                             float epsilon, int nthreads);
/* Gradients of the training forward: dbeta = sum dy, dgamma = sum dy*xhat,
 * dx = gamma*invstd*(dy - dbeta/rows - xhat*dgamma/rows); two passes. */
void fnn_batchnorm_bwd(int64_t rows, int64_t C, const float *x, const float *dy,
                       const float *gamma, const float *save_mean,
                       const float *save_invstd, float *dx, float *dgamma,
                       float *dbeta, void *work, int nthreads);
/* ---- end convolution ---- */

#ifdef __cplusplus
}
#endif

#endif /* FASTNN_H */
