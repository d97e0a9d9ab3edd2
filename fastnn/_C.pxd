# Declarations of the C kernels in ext/fastnn.h, shared by every Cython
# module that calls them (``from fastnn._C cimport fnn_sgemm``). The contracts
# are in the header; this file only mirrors the signatures.
from libc.stdint cimport int32_t, int64_t

cdef extern from "fastnn.h" nogil:
    int fnn_has_openmp()
    void fnn_set_num_threads(int n)
    int fnn_get_num_threads()
    void fnn_force_serial(int on)

    void fnn_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                   float alpha, const float *A, int64_t lda,
                   const float *B, int64_t ldb,
                   float beta, float *C, int64_t ldc)
    void fnn_sgemm_bias_act(int trans_a, int trans_b, int64_t M, int64_t N,
                            int64_t K, float alpha, const float *A, int64_t lda,
                            const float *B, int64_t ldb, float beta, float *C,
                            int64_t ldc, const float *bias, int act)
    int fnn_sgemm_set_kernel(int kind)
    int fnn_sgemm_get_kernel()
    double fnn_sgemm_set_sparse_density(double max_density)

    enum fnn_activation:
        FNN_ACT_LINEAR
        FNN_ACT_RELU
        FNN_ACT_SIGMOID
        FNN_ACT_TANH
        FNN_ACT_SOFTMAX

    void fnn_bias_act_fwd(int act, int64_t rows, int64_t cols, const float *x,
                          const float *bias, float *y)
    void fnn_act_bwd(int act, int64_t rows, int64_t cols, const float *y,
                     const float *dy, float *dx)
    void fnn_dense_fwd(int act, int64_t M, int64_t N, int64_t K, const float *x,
                       const float *w, const float *bias, float *y)
    void fnn_bias_grad(int64_t rows, int64_t cols, const float *dz, float *db)
    void fnn_act_bias_bwd(int act, int64_t rows, int64_t cols, const float *y,
                          const float *dy, float *dz, float *db)
    void fnn_vexpf(int64_t n, const float *x, float *y)

    double fnn_softmax_cce_logits(int64_t rows, int64_t cols, const float *logits,
                                  const float *target, float *probs, float *grad)
    double fnn_softmax_sparse_cce_logits(int64_t rows, int64_t cols,
                                         const float *logits, const int32_t *labels,
                                         float *probs, float *grad)
    double fnn_cce_probs(int64_t rows, int64_t cols, const float *probs,
                         const float *target, float *grad)
    double fnn_sparse_cce_probs(int64_t rows, int64_t cols, const float *probs,
                                const int32_t *labels, float *grad)
    double fnn_sigmoid_bce_logits(int64_t rows, int64_t cols, const float *logits,
                                  const float *target, float *probs, float *grad)
    double fnn_bce_probs(int64_t rows, int64_t cols, const float *probs,
                         const float *target, float *grad)
    double fnn_mse(int64_t rows, int64_t cols, const float *pred,
                   const float *target, float *grad)
    double fnn_mae(int64_t rows, int64_t cols, const float *pred,
                   const float *target, float *grad)

    double fnn_categorical_accuracy_sum(int64_t rows, int64_t cols,
                                        const float *pred, const float *target)
    double fnn_sparse_categorical_accuracy_sum(int64_t rows, int64_t cols,
                                               const float *pred,
                                               const int32_t *labels)
    double fnn_binary_accuracy_sum(int64_t rows, int64_t cols, const float *pred,
                                   const float *target, float threshold)
    double fnn_mse_sum(int64_t rows, int64_t cols, const float *pred,
                       const float *target)
    double fnn_mae_sum(int64_t rows, int64_t cols, const float *pred,
                       const float *target)

    double fnn_sumsq(int64_t n, const float *x)
    void fnn_scale(int64_t n, float *x, float s)
    int64_t fnn_first_nonfinite(int64_t n, const float *x)

    void fnn_sgd_step(int64_t n, float *p, const float *g, float *velocity,
                      float lr, float momentum, int nesterov, float weight_decay,
                      float grad_scale, float clip_value)
    void fnn_adam_step(int64_t n, float *p, const float *g, float *m, float *v,
                       float lr, float beta_1, float beta_2, float epsilon,
                       int64_t step, float weight_decay, float grad_scale,
                       float clip_value)
    void fnn_rmsprop_step(int64_t n, float *p, const float *g, float *vel,
                          float *mom, float *avg, float lr, float rho,
                          float momentum, float epsilon, float weight_decay,
                          float grad_scale, float clip_value)

    void fnn_gather_rows_f32(int64_t n_src, int64_t row_len, const float *src,
                             int64_t n_idx, const int64_t *idx, float *dst)
    void fnn_gather_rows_i32(int64_t n_src, int64_t row_len, const int32_t *src,
                             int64_t n_idx, const int64_t *idx, int32_t *dst)
    void fnn_dropout_fwd(int64_t n, const float *x, const float *u, float rate,
                         float *mask, float *y)
    void fnn_mul(int64_t n, const float *a, const float *b, float *out)
    void fnn_add(int64_t n, const float *a, const float *b, float *out)
