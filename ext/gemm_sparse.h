/* Internal to the SGEMM (gemm.c, gemm_sparse.c), not part of the public
 * kernel API in fastnn.h: the description of one product that both paths
 * share, and the path that skips the zero entries of op(A), for inputs that
 * are mostly zeros (MNIST's pixels are 81 % zeros). */
#ifndef FASTNN_GEMM_SPARSE_H
#define FASTNN_GEMM_SPARSE_H

#include <stddef.h>
#include <stdint.h>

/* One product C[M,N] = act(alpha * op(A)[M,K] @ op(B)[K,N] + beta * C + bias)
 * as both paths see it; K is done in blocks of kcb (a function of K alone). */
typedef struct {
    int ta, tb;         /* op(A)[i,k] = A[k*lda + i] if ta, else A[i*lda + k] */
    int64_t M, N, K, kcb;
    float alpha, beta;
    const float *A;
    int64_t lda;
    const float *B;
    int64_t ldb;
    float *C;
    int64_t ldc;
    const float *bias;  /* epilogue: C = act(C + bias[col]) once a tile is final */
    int act;            /* FNN_ACT_LINEAR with bias NULL: no epilogue           */
} gemm_args;

/* The fraction of nonzero (or NaN) entries of op(A), estimated from at most
 * 64 evenly spaced stored rows of A (the choice it informs never changes
 * the result).  avx512: use AVX-512 instructions (the caller checked the
 * CPU). */
double sparse_density(const gemm_args *g, int avx512);

/* Rows [m0, m1) of C, on the calling thread, skipping zero entries of op(A).
 * Bit-identical to gemm.c's dense path with the same kernel family (avx512:
 * its FMA kernels; else its portable C kernel), except where that path would
 * multiply a zero of op(A) by an infinity or NaN of B (BLAS's reference SGEMM
 * skips those products too) and in the sign of an exact-zero result. */
void sparse_gemm_rows(const gemm_args *g, int64_t m0, int64_t m1,
                      int avx512, void *work);

/* Bytes of 64-byte-aligned scratch `work` sparse_gemm_rows needs (0: none,
 * work may be NULL); the caller's thread owns it for the call. */
size_t sparse_work_bytes(void);

/* Rows of C one thread's part starts at a multiple of (a feature block). */
#define SPARSE_ROW_QUANTUM 16
/* The path's defaults: the largest fraction of nonzeros in op(A) (changed
 * by fnn_sgemm_set_sparse_density) and the fewest columns of C.  It broke
 * even with the dense path at 30 % (128x1024 @ 1024x1024) to 40 % (128x784
 * @ 784x128) nonzeros here, so below 25 % it should always win. */
#define SPARSE_DEFAULT_MAX_DENSITY 0.25
#define SPARSE_MIN_N 32
/* Longest K block the path takes (its per-thread lists hold one). */
#define SPARSE_KCB_MAX 384

#endif
