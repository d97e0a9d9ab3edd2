/* Placeholder SGEMM: correct, OpenMP over rows of C, K summed in order.
 * Replaced by the packed, blocked kernel (see fastnn.h for the contract). */
#include "fastnn.h"

static inline float load_a(int trans_a, const float *A, int64_t lda, int64_t i, int64_t k)
{
    return trans_a ? A[k * lda + i] : A[i * lda + k];
}

static inline float load_b(int trans_b, const float *B, int64_t ldb, int64_t k, int64_t j)
{
    return trans_b ? B[j * ldb + k] : B[k * ldb + j];
}

void fnn_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
               float alpha, const float *A, int64_t lda,
               const float *B, int64_t ldb,
               float beta, float *C, int64_t ldc)
{
    #pragma omp parallel for schedule(static) if (M * N * K > 32768)
    for (int64_t i = 0; i < M; i++) {
        for (int64_t j = 0; j < N; j++) {
            float acc = 0.0f;
            for (int64_t k = 0; k < K; k++)
                acc += load_a(trans_a, A, lda, i, k) * load_b(trans_b, B, ldb, k, j);
            float prev = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
            C[i * ldc + j] = alpha * acc + prev;
        }
    }
}
