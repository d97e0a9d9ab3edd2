/* Packed, blocked SGEMM (contract in fastnn.h).
 *
 * Each thread computes one rectangle of C with the serial blocked algorithm:
 *
 *   for jc in N step NC:          B block KC x NC, packed (L2/L3)
 *     for pc in K step kc:
 *       pack B[pc.., jc..]
 *       for ic in M step MC:      A block MC x kc, packed
 *         pack A[ic.., pc..]
 *         for ir in MC step MR:   A micro-panel MR x kc, lives in L1
 *           for jr in NC step NR: micro-kernel: C tile MR x NR
 *
 * Packing absorbs the transposes, so all four cases run the same
 * micro-kernel.  Packed operands are "k-major": for each k, MR consecutive
 * rows of op(A) (NR consecutive columns of op(B)).  A stored transposed and B
 * stored plain already have that layout (with a stride), and plain A can be
 * read in place by a row-pointer variant of the kernel; when packing would
 * cost more than it saves (few columns or rows reuse it), those operands are
 * read in place and only their ragged edge strips are packed.  A C of at
 * most 16 columns with A stored transposed (a weight gradient of a small
 * layer) runs a kernel whose vectors go down the columns of C instead.
 *
 * Threads: C is cut into a tm x tn grid of rectangles, one per thread, with
 * the grid chosen for the shape; each thread packs what its rectangle needs
 * into its own buffers, so there is no synchronisation inside a call.  Small
 * products run on the calling thread alone.  alpha == 0 or K == 0 only
 * scales C (A and B are not read), as in BLAS.
 *
 * Epilogue (fnn_sgemm_bias_act): bias + an elementwise activation applied to
 * each C tile by the thread that owns it, right after the tile's last K
 * block, so the dense layer's forward needs no second pass over its output.
 *
 * Mostly-zero op(A) (an input layer's pixels): when at most a quarter of
 * its entries are nonzero and B is not transposed, gemm_sparse.c computes
 * the product from lists of the nonzeros instead, with the same bits.
 *
 * Determinism: every element of C is an FMA chain over k in increasing order
 * within fixed K blocks (their size depends on K only), stored as
 * alpha * acc + beta * C with beta = 1 after the first block.  Every kernel
 * variant, tile position and operand layout computes an element the same way,
 * and threads split only M and N, so results do not depend on the thread
 * count.  (The portable, AVX2 and AVX-512 kernels may differ from each other
 * in the last bit.)
 */
#define _POSIX_C_SOURCE 200809L
#include "fastnn.h"
#include "gemm_sparse.h"

#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#define FNN_X86 1
#include <immintrin.h>
#else
#define FNN_X86 0
#endif

/* ---- blocking ------------------------------------------------------------ */

/* Overridable with -D, to try other blockings without editing this file. */
#ifndef KC
#define KC 384          /* longest K block                                     */
#endif
#ifndef MC
#define MC 144          /* rows of A packed at once (multiple of every MR)     */
#endif
#ifndef NC
#define NC 2048         /* columns of B packed at once (multiple of every NR)  */
#endif
#define MR_MAX 16
#define NR_MAX 32

/* Micro-kernel: C[0:mr, 0:nr] (leading dim ldc) = alpha * acc + beta * C where
 * acc[i][j] = sum over k < kc of A(i, k) * b[k*sb + j].  A(i, k) is
 * a[k*sa + i] ("k-major") or, for the row variant, a[i*sa + k].  The kernel
 * reads its full tile of A and B (callers pad ragged edges) and writes only
 * the mr x nr corner; beta == 0 never reads C. */
typedef void (*ukr_fn)(int64_t kc, const float *a, int64_t sa,
                       const float *b, int64_t sb, float *c, int64_t ldc,
                       int mr, int nr, float alpha, float beta);

/* Packers.  Source X holds n "lanes" (rows of op(A) or columns of op(B)) over
 * kc steps of k; dst receives them in P-lane micro-panels, k-major
 * (dst[p*P*kc + k*P + l]), lanes past n zero-filled.
 *   copy: lane l of step k is at X[k*ld + l]  (A transposed, B plain)
 *   tp:   lane l of step k is at X[l*ld + k]  (A plain, B transposed) */
typedef void (*pack_fn)(const float *X, int64_t ld, int64_t kc, int64_t n,
                        int P, float *dst);

/* Narrow-C kernel: C[0:rows, 0:ncol] = alpha * A B + beta * C with
 * A(i, k) = a[k*lda + i] and B packed kc x NCOL (ncol <= NCOL, padded). */
typedef void (*narrow_fn)(int64_t kc, const float *a, int64_t lda,
                          int64_t rows, const float *b, float *c, int64_t ldc,
                          int ncol, float alpha, float beta);

typedef struct {
    int mr, nr;           /* full tile                                        */
    int qm, qn;           /* thread rectangles start at multiples of these    */
    int mr_var[3];        /* row counts of the kernel variants, ascending     */
    ukr_fn ukr[3][2];     /* [row variant][nr <= nr/2 ? 0 : 1], k-major A     */
    ukr_fn ukr_row[2];    /* full-height tile, A row-major in place, or NULL  */
    pack_fn pack_copy, pack_tp;
    narrow_fn narrow[8];  /* C of 2, 4, ..., 16 columns, A transposed; or NULL */
} kernel_desc;

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* ---- portable micro-kernel ----------------------------------------------- */

#define GEN_MR 4
#define GEN_NR 16

static void ukr_generic(int64_t kc, const float *a, int64_t sa,
                        const float *b, int64_t sb, float *c, int64_t ldc,
                        int mr, int nr, float alpha, float beta)
{
    float acc[GEN_MR][GEN_NR];
    for (int i = 0; i < GEN_MR; i++)
        for (int j = 0; j < GEN_NR; j++)
            acc[i][j] = 0.0f;
    for (int64_t k = 0; k < kc; k++) {
        const float *ak = a + k * sa;
        const float *bk = b + k * sb;
        for (int i = 0; i < GEN_MR; i++) {
            const float ai = ak[i];
            for (int j = 0; j < GEN_NR; j++)
                acc[i][j] += ai * bk[j];
        }
    }
    for (int i = 0; i < mr; i++) {
        float *ci = c + i * ldc;
        if (beta == 0.0f) {
            for (int j = 0; j < nr; j++)
                ci[j] = alpha * acc[i][j];
        } else {
            for (int j = 0; j < nr; j++)
                ci[j] = alpha * acc[i][j] + beta * ci[j];
        }
    }
}

/* ---- portable packing --------------------------------------------------- */

static void pack_copy_generic(const float *X, int64_t ld, int64_t kc,
                              int64_t n, int P, float *dst)
{
    for (int64_t k = 0; k < kc; k++) {
        const float *xk = X + k * ld;
        for (int64_t lp = 0; lp < n; lp += P) {
            const int w = (int)(n - lp < P ? n - lp : P);
            float *d = dst + lp * kc + k * P;
            int l = 0;
            for (; l < w; l++)
                d[l] = xk[lp + l];
            for (; l < P; l++)
                d[l] = 0.0f;
        }
    }
}

static void pack_tp_generic(const float *X, int64_t ld, int64_t kc,
                            int64_t n, int P, float *dst)
{
    for (int64_t lp = 0; lp < n; lp += P) {
        const int w = (int)(n - lp < P ? n - lp : P);
        float *d = dst + lp * kc;
        int l = 0;
        for (; l < w; l++) {
            const float *x = X + (lp + l) * ld;
            for (int64_t k = 0; k < kc; k++)
                d[k * P + l] = x[k];
        }
        for (; l < P; l++)
            for (int64_t k = 0; k < kc; k++)
                d[k * P + l] = 0.0f;
    }
}

/* ---- x86 SIMD micro-kernels ---------------------------------------------- */

#if FNN_X86

#define TGT_AVX2 __attribute__((target("avx2,fma")))
#define TGT_AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define ALWAYS_INLINE inline __attribute__((always_inline))

/* AVX2/FMA: 6 x 16 (12 accumulators). */
#define A2_MR 6
#define A2_NR 16

static TGT_AVX2 void ukr_avx2(int64_t kc, const float *a, int64_t sa,
                              const float *b, int64_t sb, float *c,
                              int64_t ldc, int mr, int nr, float alpha,
                              float beta)
{
    __m256 acc[A2_MR][2];
#pragma GCC unroll 16
    for (int i = 0; i < A2_MR; i++) {
        acc[i][0] = _mm256_setzero_ps();
        acc[i][1] = _mm256_setzero_ps();
    }
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; k++) {
        const __m256 b0 = _mm256_loadu_ps(b);
        const __m256 b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 16
        for (int i = 0; i < A2_MR; i++) {
            const __m256 ai = _mm256_broadcast_ss(a + i);
            acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
        }
        a += sa;
        b += sb;
    }
    const __m256 va = _mm256_set1_ps(alpha);
    const __m256 vb = _mm256_set1_ps(beta);
    if (mr == A2_MR && nr == A2_NR) {
#pragma GCC unroll 16
        for (int i = 0; i < A2_MR; i++) {
            float *ci = c + i * ldc;
            __m256 r0, r1;
            if (beta == 0.0f) {
                r0 = _mm256_mul_ps(acc[i][0], va);
                r1 = _mm256_mul_ps(acc[i][1], va);
            } else {
                r0 = _mm256_fmadd_ps(acc[i][0], va,
                                     _mm256_mul_ps(vb, _mm256_loadu_ps(ci)));
                r1 = _mm256_fmadd_ps(acc[i][1], va,
                                     _mm256_mul_ps(vb, _mm256_loadu_ps(ci + 8)));
            }
            _mm256_storeu_ps(ci, r0);
            _mm256_storeu_ps(ci + 8, r1);
        }
    } else {
        /* Edge tile: same arithmetic, one element at a time. */
        float t[A2_MR][A2_NR];
#pragma GCC unroll 16
        for (int i = 0; i < A2_MR; i++) {
            _mm256_storeu_ps(t[i], acc[i][0]);
            _mm256_storeu_ps(t[i] + 8, acc[i][1]);
        }
        const __m128 sa1 = _mm_set_ss(alpha), sb1 = _mm_set_ss(beta);
        for (int i = 0; i < mr; i++) {
            float *ci = c + i * ldc;
            for (int j = 0; j < nr; j++) {
                const __m128 x = _mm_set_ss(t[i][j]);
                __m128 r;
                if (beta == 0.0f)
                    r = _mm_mul_ss(x, sa1);
                else
                    r = _mm_fmadd_ss(x, sa1, _mm_mul_ss(sb1, _mm_set_ss(ci[j])));
                ci[j] = _mm_cvtss_f32(r);
            }
        }
    }
}

/* AVX-512: 12 x 32 tile (24 zmm accumulators), with 8- and 4-row and
 * 16-column variants for ragged edges, and a variant that reads A row-major
 * in place.  Every variant runs the same per-element FMA chain. */
#define A5_MR 12
#define A5_NR 32

static TGT_AVX512 ALWAYS_INLINE void
k512_body(const int MR, const int NV, const int AROW, int64_t kc,
          const float *a, int64_t sa, const float *b, int64_t sb, float *c,
          int64_t ldc, int mr, int nr, float alpha, float beta)
{
    __m512 acc[A5_MR][2];
    /* The C tile is needed only after the K loop: start fetching it now. */
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        if (NV == 2)
            _mm_prefetch((const char *)(c + i * ldc + 16), _MM_HINT_T0);
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++)
            acc[i][v] = _mm512_setzero_ps();

    if (AROW) {
        /* Row i of A at base[i / 4] + off[i % 4]: six registers, not MR. */
        const float *base[3] = {a, a + 4 * sa, a + 8 * sa};
        const int64_t off[4] = {0, sa, 2 * sa, 3 * sa};
#pragma GCC unroll 4
        for (int64_t k = 0; k < kc; k++) {
            __m512 bv[2];
#pragma GCC unroll 2
            for (int v = 0; v < NV; v++)
                bv[v] = _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 16
            for (int i = 0; i < MR; i++) {
                const __m512 ai = _mm512_set1_ps(base[i >> 2][off[i & 3] + k]);
#pragma GCC unroll 2
                for (int v = 0; v < NV; v++)
                    acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
            }
            b += sb;
        }
    } else {
        /* Unrolling the K loop measured ~10% faster on Zen 4 (fewer taken
         * branches per FMA); same arithmetic. */
#pragma GCC unroll 4
        for (int64_t k = 0; k < kc; k++) {
            __m512 bv[2];
#pragma GCC unroll 2
            for (int v = 0; v < NV; v++)
                bv[v] = _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 16
            for (int i = 0; i < MR; i++) {
                const __m512 ai = _mm512_set1_ps(a[i]);
#pragma GCC unroll 2
                for (int v = 0; v < NV; v++)
                    acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
            }
            a += sa;
            b += sb;
        }
    }

    const __m512 va = _mm512_set1_ps(alpha);
    const __m512 vb = _mm512_set1_ps(beta);
    __mmask16 m[2];
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) {
        const int w = nr - 16 * v;
        m[v] = (__mmask16)(w >= 16 ? 0xFFFFu : w <= 0 ? 0u : (1u << w) - 1u);
    }
    if (nr == 16 * NV) {
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
            if (i < mr) {
                float *ci = c + i * ldc;
#pragma GCC unroll 2
                for (int v = 0; v < NV; v++) {
                    __m512 r = _mm512_mul_ps(acc[i][v], va);
                    if (beta == 1.0f)
                        r = _mm512_fmadd_ps(acc[i][v], va,
                                            _mm512_loadu_ps(ci + 16 * v));
                    else if (beta != 0.0f)
                        r = _mm512_fmadd_ps(acc[i][v], va,
                                _mm512_mul_ps(vb, _mm512_loadu_ps(ci + 16 * v)));
                    _mm512_storeu_ps(ci + 16 * v, r);
                }
            }
        }
    } else {
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
            if (i < mr) {
                float *ci = c + i * ldc;
#pragma GCC unroll 2
                for (int v = 0; v < NV; v++) {
                    __m512 r = _mm512_mul_ps(acc[i][v], va);
                    if (beta != 0.0f)
                        r = _mm512_fmadd_ps(acc[i][v], va, _mm512_mul_ps(vb,
                                _mm512_maskz_loadu_ps(m[v], ci + 16 * v)));
                    _mm512_mask_storeu_ps(ci + 16 * v, m[v], r);
                }
            }
        }
    }
}

#define K512(NAME, MR, NV, AROW)                                              \
    static TGT_AVX512 void NAME(int64_t kc, const float *a, int64_t sa,       \
                                const float *b, int64_t sb, float *c,         \
                                int64_t ldc, int mr, int nr, float alpha,     \
                                float beta)                                   \
    {                                                                         \
        k512_body(MR, NV, AROW, kc, a, sa, b, sb, c, ldc, mr, nr, alpha,      \
                  beta);                                                      \
    }
K512(ukr512_12x32, 12, 2, 0)
K512(ukr512_12x16, 12, 1, 0)
K512(ukr512_8x32, 8, 2, 0)
K512(ukr512_8x16, 8, 1, 0)
K512(ukr512_4x32, 4, 2, 0)
K512(ukr512_4x16, 4, 1, 0)
K512(ukr512_row_12x32, 12, 2, 1)
K512(ukr512_row_12x16, 12, 1, 1)

/* Narrow C (at most 16 columns) with A stored transposed: a 12 x 32 tile
 * would waste most of its lanes, so here vectors run down the columns of C
 * instead (16 * RV rows at a time, one accumulator per column) and the
 * result is transposed on the way out.  A(i, k) = a[k*lda + i]; b holds
 * NCOL columns per k (b[k*NCOL + j]), padded.  Same per-element FMA chain
 * and store arithmetic as the tile kernels. */
static TGT_AVX512 ALWAYS_INLINE void
narrow512_body(const int NCOL, const int RV, int64_t kc, const float *a,
               int64_t lda, int64_t rows, const float *b, float *c,
               int64_t ldc, int ncol, float alpha, float beta)
{
    for (int64_t i0 = 0; i0 < rows; i0 += 16 * RV) {
        const int64_t h = rows - i0 < 16 * RV ? rows - i0 : 16 * RV;
        __mmask16 m[2];
        __m512 acc[2][16];
#pragma GCC unroll 2
        for (int r = 0; r < RV; r++) {
            const int64_t w = h - 16 * r;
            m[r] = (__mmask16)(w >= 16 ? 0xFFFFu : w <= 0 ? 0u
                                                          : (1u << w) - 1u);
#pragma GCC unroll 16
            for (int j = 0; j < NCOL; j++)
                acc[r][j] = _mm512_setzero_ps();
        }
        const float *ak = a + i0;
        const float *bk = b;
#pragma GCC unroll 4
        for (int64_t k = 0; k < kc; k++) {
            __m512 av[2];
#pragma GCC unroll 2
            for (int r = 0; r < RV; r++)
                av[r] = _mm512_maskz_loadu_ps(m[r], ak + 16 * r);
#pragma GCC unroll 16
            for (int j = 0; j < NCOL; j++) {
                const __m512 bj = _mm512_set1_ps(bk[j]);
#pragma GCC unroll 2
                for (int r = 0; r < RV; r++)
                    acc[r][j] = _mm512_fmadd_ps(av[r], bj, acc[r][j]);
            }
            ak += lda;
            bk += NCOL;
        }
        float t[16][32];
#pragma GCC unroll 16
        for (int j = 0; j < NCOL; j++)
#pragma GCC unroll 2
            for (int r = 0; r < RV; r++)
                _mm512_storeu_ps(&t[j][16 * r], acc[r][j]);
        const __m128 va = _mm_set_ss(alpha), vb = _mm_set_ss(beta);
        for (int64_t i = 0; i < h; i++) {
            float *ci = c + (i0 + i) * ldc;
            for (int j = 0; j < ncol; j++) {
                const __m128 x = _mm_set_ss(t[j][i]);
                const __m128 r = beta == 0.0f
                    ? _mm_mul_ss(x, va)
                    : _mm_fmadd_ss(x, va, _mm_mul_ss(vb, _mm_set_ss(ci[j])));
                ci[j] = _mm_cvtss_f32(r);
            }
        }
    }
}

#define N512(NCOL, RV)                                                        \
    static TGT_AVX512 void narrow512_##NCOL(int64_t kc, const float *a,       \
                                            int64_t lda, int64_t rows,        \
                                            const float *b, float *c,         \
                                            int64_t ldc, int ncol,            \
                                            float alpha, float beta)          \
    {                                                                         \
        narrow512_body(NCOL, RV, kc, a, lda, rows, b, c, ldc, ncol, alpha,    \
                       beta);                                                 \
    }
N512(2, 2)
N512(4, 2)
N512(6, 2)
N512(8, 2)
N512(10, 2)
N512(12, 2)
N512(14, 2)
N512(16, 1)


/* ---- x86 packing (AVX2; also used by the AVX-512 kernel) ---------------- */

/* d[0:w] = x[0:w], d[w:P] = 0. */
static TGT_AVX2 ALWAYS_INLINE void copy_pad(const float *x, int w, float *d,
                                            int P)
{
    int l = 0;
    for (; l + 8 <= w; l += 8)
        _mm256_storeu_ps(d + l, _mm256_loadu_ps(x + l));
    for (; l < w; l++)
        d[l] = x[l];
    for (; l < P; l++)
        d[l] = 0.0f;
}

static TGT_AVX2 void pack_copy_avx2(const float *X, int64_t ld, int64_t kc,
                                    int64_t n, int P, float *dst)
{
    for (int64_t k = 0; k < kc; k++) {
        const float *xk = X + k * ld;
        for (int64_t lp = 0; lp < n; lp += P) {
            const int w = (int)(n - lp < P ? n - lp : P);
            copy_pad(xk + lp, w, dst + lp * kc + k * P, P);
        }
    }
}

/* d[c*ldd + r] = x[r*ldx + c] for r, c < 8. */
static TGT_AVX2 ALWAYS_INLINE void tp8x8(const float *x, int64_t ldx,
                                         float *d, int64_t ldd)
{
    const __m256 r0 = _mm256_loadu_ps(x), r1 = _mm256_loadu_ps(x + ldx);
    const __m256 r2 = _mm256_loadu_ps(x + 2 * ldx);
    const __m256 r3 = _mm256_loadu_ps(x + 3 * ldx);
    const __m256 r4 = _mm256_loadu_ps(x + 4 * ldx);
    const __m256 r5 = _mm256_loadu_ps(x + 5 * ldx);
    const __m256 r6 = _mm256_loadu_ps(x + 6 * ldx);
    const __m256 r7 = _mm256_loadu_ps(x + 7 * ldx);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(d + ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
}

/* d[c*ldd + r] = x[r*ldx + c] for r < 4, c < 8. */
static TGT_AVX2 ALWAYS_INLINE void tp4x8(const float *x, int64_t ldx,
                                         float *d, int64_t ldd)
{
    for (int h = 0; h < 8; h += 4) {
        __m128 r0 = _mm_loadu_ps(x + h), r1 = _mm_loadu_ps(x + ldx + h);
        __m128 r2 = _mm_loadu_ps(x + 2 * ldx + h);
        __m128 r3 = _mm_loadu_ps(x + 3 * ldx + h);
        _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
        _mm_storeu_ps(d + h * ldd, r0);
        _mm_storeu_ps(d + (h + 1) * ldd, r1);
        _mm_storeu_ps(d + (h + 2) * ldd, r2);
        _mm_storeu_ps(d + (h + 3) * ldd, r3);
    }
}

static TGT_AVX2 void pack_tp_avx2(const float *X, int64_t ld, int64_t kc,
                                  int64_t n, int P, float *dst)
{
    const int64_t kc8 = kc & ~(int64_t)7;
    for (int64_t lp = 0; lp < n; lp += P) {
        const int w = (int)(n - lp < P ? n - lp : P);
        float *d = dst + lp * kc;
        const float *x = X + lp * ld;
        int l = 0;
        for (; l + 8 <= w; l += 8)
            for (int64_t k = 0; k < kc8; k += 8)
                tp8x8(x + l * ld + k, ld, d + k * P + l, P);
        for (; l + 4 <= w; l += 4)
            for (int64_t k = 0; k < kc8; k += 8)
                tp4x8(x + l * ld + k, ld, d + k * P + l, P);
        for (; l < w; l++)
            for (int64_t k = 0; k < kc8; k++)
                d[k * P + l] = x[l * ld + k];
        for (; l < P; l++)
            for (int64_t k = 0; k < kc8; k++)
                d[k * P + l] = 0.0f;
        for (int64_t k = kc8; k < kc; k++) {
            for (l = 0; l < w; l++)
                d[k * P + l] = x[l * ld + k];
            for (; l < P; l++)
                d[k * P + l] = 0.0f;
        }
    }
}

#endif /* FNN_X86 */

/* ---- kernel selection ---------------------------------------------------- */

enum { KSEL_AUTO = 0, KSEL_GENERIC = 1, KSEL_AVX2 = 2, KSEL_AVX512 = 3 };

static const kernel_desc kd_generic = {
    GEN_MR, GEN_NR, GEN_MR, GEN_NR, {GEN_MR, GEN_MR, GEN_MR},
    {{ukr_generic, ukr_generic}, {ukr_generic, ukr_generic},
     {ukr_generic, ukr_generic}},
    {NULL, NULL}, pack_copy_generic, pack_tp_generic,
    {NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL}};

#if FNN_X86
static const kernel_desc kd_avx2 = {
    A2_MR, A2_NR, A2_MR, A2_NR, {A2_MR, A2_MR, A2_MR},
    {{ukr_avx2, ukr_avx2}, {ukr_avx2, ukr_avx2}, {ukr_avx2, ukr_avx2}},
    {NULL, NULL}, pack_copy_avx2, pack_tp_avx2,
    {NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL}};

static const kernel_desc kd_avx512 = {
    A5_MR, A5_NR, 4, 16, {4, 8, 12},
    {{ukr512_4x16, ukr512_4x32}, {ukr512_8x16, ukr512_8x32},
     {ukr512_12x16, ukr512_12x32}},
    {ukr512_row_12x16, ukr512_row_12x32}, pack_copy_avx2, pack_tp_avx2,
    {narrow512_2, narrow512_4, narrow512_6, narrow512_8, narrow512_10,
     narrow512_12, narrow512_14, narrow512_16}};
#endif

static int cpu_has(int ksel)
{
#if FNN_X86
    if (ksel == KSEL_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (ksel == KSEL_AVX512)
        return __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return ksel == KSEL_GENERIC;
}

static int best_kernel(void)
{
    if (cpu_has(KSEL_AVX512))
        return KSEL_AVX512;
    if (cpu_has(KSEL_AVX2))
        return KSEL_AVX2;
    return KSEL_GENERIC;
}

static const kernel_desc *kernel_for(int ksel)
{
#if FNN_X86
    if (ksel == KSEL_AVX512)
        return &kd_avx512;
    if (ksel == KSEL_AVX2)
        return &kd_avx2;
#endif
    (void)ksel;
    return &kd_generic;
}

/* Set only by the testing hook below; read once per fnn_sgemm call. */
static int forced_kernel = KSEL_AUTO;

int fnn_sgemm_set_kernel(int kind)
{
    if (kind != KSEL_AUTO && !cpu_has(kind))
        return -1;
    forced_kernel = kind;
    return 0;
}

int fnn_sgemm_get_kernel(void)
{
    const int f = forced_kernel;
    return f != KSEL_AUTO ? f : best_kernel();
}

/* ---- per-thread scratch ------------------------------------------------- */

/* Each OS thread (OpenMP workers and any caller thread) owns its scratch,
 * allocated on first use and freed by a thread-exit destructor: the dense
 * path's packing buffers, sized for every kernel, and the sparse path's
 * lists. */
#define BUF_A ((int64_t)MC * KC)
#define BUF_B ((int64_t)NC * KC)
#define BUF_EDGE_A ((int64_t)MR_MAX * KC)
#define BUF_EDGE_B ((int64_t)KC * NR_MAX)
#define BUF_FLOATS (BUF_A + BUF_B + BUF_EDGE_A + BUF_EDGE_B)

enum { SCRATCH_PACKING, SCRATCH_SPARSE, SCRATCH_KINDS };

static pthread_key_t scratch_key[SCRATCH_KINDS];
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_keys_ok = 0;
static __thread void *tl_scratch[SCRATCH_KINDS];

static void scratch_free(void *p) { free(p); }

static void scratch_keys_init(void)
{
    scratch_keys_ok = 1;
    for (int i = 0; i < SCRATCH_KINDS; i++)
        if (pthread_key_create(&scratch_key[i], scratch_free) != 0)
            scratch_keys_ok = 0;
}

/* This thread's scratch of one kind (always asked for with the same size),
 * 64-byte aligned, or NULL if it cannot be allocated. */
static void *thread_scratch(int kind, size_t bytes)
{
    if (tl_scratch[kind] == NULL) {
        void *p = NULL;
        (void)pthread_once(&scratch_once, scratch_keys_init);
        if (!scratch_keys_ok)
            return NULL;
        if (posix_memalign(&p, 64, bytes) != 0)
            return NULL;
        if (pthread_setspecific(scratch_key[kind], p) != 0) {
            free(p);
            return NULL;
        }
        tl_scratch[kind] = p;
    }
    return tl_scratch[kind];
}

static float *thread_buffer(void)
{
    return (float *)thread_scratch(SCRATCH_PACKING,
                                   (size_t)BUF_FLOATS * sizeof(float));
}

/* ---- serial blocked GEMM on one rectangle of C -------------------------- */

static inline int has_epilogue(const gemm_args *g)
{
    return g->bias != NULL || g->act != FNN_ACT_LINEAR;
}

/* The epilogue on C[i0:i0+rows, j0:j0+cols], called right after the last K
 * block of that tile is stored, while it is still in L1. */
static inline void epilogue(const gemm_args *g, int64_t i0, int64_t j0,
                            int64_t rows, int64_t cols)
{
    if (has_epilogue(g))
        fnn_bias_act_tile(g->act, rows, cols, g->bias == NULL ? NULL : g->bias + j0,
                          g->C + i0 * g->ldc + j0, g->ldc);
}

/* Address of op(A)[i, k] and of op(B)[k, j]. */
static inline const float *a_at(const gemm_args *g, int64_t i, int64_t k)
{
    return g->ta ? g->A + k * g->lda + i : g->A + i * g->lda + k;
}

static inline const float *b_at(const gemm_args *g, int64_t k, int64_t j)
{
    return g->tb ? g->B + j * g->ldb + k : g->B + k * g->ldb + j;
}

/* K block length: equal blocks (multiples of 8) instead of a short tail.
 * Depends on K only, never on the thread split. */
static int64_t k_block(int64_t K)
{
    const int64_t kb = ceil_div(K, ceil_div(K, KC));
    return (kb + 7) & ~(int64_t)7;
}

/* Packing A costs about as much as a few FMAs per element and pays off only
 * when many column tiles reuse it; with few columns A is read in place.  Same
 * for B with few rows, as long as its K x NC block stays in L2 from one
 * micro-panel of A to the next: a block read in place keeps B's row stride,
 * and with a long power-of-two stride (a 1024-wide weight) its rows crowd a
 * few cache sets and it is fetched again from memory for every micro-panel
 * (the wide MLP's forward ran 10-12 % slower per training step that way).
 * Row-major A needs the row-pointer kernel variant. */
#ifndef DIRECT_A_MAX_N
#define DIRECT_A_MAX_N 256
#endif
#ifndef DIRECT_B_MAX_M
#define DIRECT_B_MAX_M 128
#endif
#ifndef DIRECT_B_MAX_BYTES
#define DIRECT_B_MAX_BYTES (256 * 1024)
#endif

/* Whether this thread's rectangle reads op(B) from a packed copy. */
static int packs_b(const kernel_desc *kd, const gemm_args *g, int64_t rows,
                   int64_t cols)
{
    if (g->tb || rows > DIRECT_B_MAX_M)
        return 1;
    const int64_t block_bytes =
        k_block(g->K) * (cols < NC ? cols : NC) * (int64_t)sizeof(float);
    return rows > 2 * kd->mr && block_bytes > DIRECT_B_MAX_BYTES;
}

/* The narrow kernels take op(A) down the rows of C, 16 or 32 rows of one k
 * per vector load: A stored transposed already has that layout; plain A is
 * first transposed into panels of NARROW_PANEL rows, NARROW_BLOCK rows at a
 * time (a block of MC x KC floats at most: bufa). */
#define NARROW_PANEL 32
#define NARROW_BLOCK 128
typedef char narrow_block_fits_bufa[NARROW_BLOCK <= MC ? 1 : -1];
/* Narrow kernels for plain A up to this many columns of C: their time grows
 * with the columns and a 16-wide tile's does not.  1 thread, against the
 * tiles: 128 x N from K = 1024, 1.38-2.21x faster for N <= 8, 1.26x at 10,
 * 1.11x at 12; 1000 x N from K = 128, 1.09-1.93x for N <= 8 but 0.93x at 10
 * and 0.84x at 12. */
#ifndef NARROW_PLAIN_MAX_N
#define NARROW_PLAIN_MAX_N 8
#endif
#ifndef NARROW_PLAIN_MIN_M
#define NARROW_PLAIN_MIN_M 32
#endif

/* Whether a rectangle of C runs the narrow kernels: at most 16 columns with A
 * stored transposed; with plain A only where a 16-wide tile would leave a
 * quarter of its lanes idle and there are rows enough to fill the panels. */
static int takes_narrow(const kernel_desc *kd, const gemm_args *g, int64_t rows,
                        int64_t cols)
{
    if (kd->narrow[0] == NULL || cols > 16)
        return 0;
    return g->ta || (cols <= NARROW_PLAIN_MAX_N && rows >= NARROW_PLAIN_MIN_M);
}

/* C[m0:m1, n0:n1] (at most 16 columns) by the narrow kernels; op(B) is packed
 * into edge_b, NCOL columns per k. */
static void gemm_narrow(const kernel_desc *kd, const gemm_args *g, int64_t m0,
                        int64_t m1, int64_t n0, int64_t n1, float *bufa,
                        float *edge_b)
{
    const int ncol = (int)(n1 - n0), slot = (ncol - 1) / 2;
    const int P = 2 * (slot + 1);
    for (int64_t pc = 0; pc < g->K; pc += g->kcb) {
        const int64_t kc = g->K - pc < g->kcb ? g->K - pc : g->kcb;
        const float beta = pc == 0 ? g->beta : 1.0f;
        if (g->tb)
            kd->pack_tp(b_at(g, pc, n0), g->ldb, kc, ncol, P, edge_b);
        else
            kd->pack_copy(b_at(g, pc, n0), g->ldb, kc, ncol, P, edge_b);
        if (g->ta) {
            kd->narrow[slot](kc, a_at(g, m0, pc), g->lda, m1 - m0, edge_b,
                             g->C + m0 * g->ldc + n0, g->ldc, ncol, g->alpha, beta);
            continue;
        }
        for (int64_t ic = m0; ic < m1; ic += NARROW_BLOCK) {
            const int64_t mc = m1 - ic < NARROW_BLOCK ? m1 - ic : NARROW_BLOCK;
            kd->pack_tp(a_at(g, ic, pc), g->lda, kc, mc, NARROW_PANEL, bufa);
            for (int64_t ir = 0; ir < mc; ir += NARROW_PANEL)
                kd->narrow[slot](kc, bufa + ir * kc, NARROW_PANEL,
                                 mc - ir < NARROW_PANEL ? mc - ir : NARROW_PANEL,
                                 edge_b, g->C + (ic + ir) * g->ldc + n0, g->ldc,
                                 ncol, g->alpha, beta);
        }
    }
    epilogue(g, m0, n0, m1 - m0, ncol);
}

static void gemm_rect(const kernel_desc *kd, const gemm_args *g, int64_t m0,
                      int64_t m1, int64_t n0, int64_t n1, float *buf)
{
    const int MR = kd->mr, NR = kd->nr;
    const int64_t K = g->K, kcb = g->kcb;
    const int pack_a =
        n1 - n0 > DIRECT_A_MAX_N || (!g->ta && kd->ukr_row[1] == NULL);
    const int pack_b = packs_b(kd, g, m1 - m0, n1 - n0);
    float *bufa = buf;
    float *bufb = bufa + BUF_A;
    float *edge_a = bufb + BUF_B;
    float *edge_b = edge_a + BUF_EDGE_A;

    if (takes_narrow(kd, g, m1 - m0, n1 - n0)) {
        gemm_narrow(kd, g, m0, m1, n0, n1, bufa, edge_b);
        return;
    }

    for (int64_t jc = n0; jc < n1; jc += NC) {
        const int64_t nc = n1 - jc < NC ? n1 - jc : NC;
        const int64_t nfull = pack_b ? nc : nc / NR * NR;
        for (int64_t pc = 0; pc < K; pc += kcb) {
            const int64_t kc = K - pc < kcb ? K - pc : kcb;
            const float beta = pc == 0 ? g->beta : 1.0f;
            const int last_k = pc + kc == K;
            if (pack_b) {
                if (g->tb)
                    kd->pack_tp(b_at(g, pc, jc), g->ldb, kc, nc, NR, bufb);
                else
                    kd->pack_copy(b_at(g, pc, jc), g->ldb, kc, nc, NR, bufb);
            } else if (nfull < nc) {
                kd->pack_copy(b_at(g, pc, jc + nfull), g->ldb, kc, nc - nfull,
                              NR, edge_b);
            }
            for (int64_t ic = m0; ic < m1; ic += MC) {
                const int64_t mc = m1 - ic < MC ? m1 - ic : MC;
                const int64_t mfull = pack_a ? mc : mc / MR * MR;
                if (pack_a || mfull < mc) {
                    float *dst = pack_a ? bufa : edge_a;
                    const float *src = a_at(g, ic + (pack_a ? 0 : mfull), pc);
                    const int64_t rows = pack_a ? mc : mc - mfull;
                    if (g->ta)
                        kd->pack_copy(src, g->lda, kc, rows, MR, dst);
                    else
                        kd->pack_tp(src, g->lda, kc, rows, MR, dst);
                }
                for (int64_t ir = 0; ir < mc; ir += MR) {
                    const int mr = (int)(mc - ir < MR ? mc - ir : MR);
                    const float *ap;
                    int64_t sa;
                    int row = 0;
                    if (pack_a) {
                        ap = bufa + ir * kc;
                        sa = MR;
                    } else if (ir < mfull) {
                        ap = a_at(g, ic + ir, pc);
                        sa = g->lda;
                        row = !g->ta;
                    } else {
                        ap = edge_a;
                        sa = MR;
                    }
                    int v = 0;
                    while (kd->mr_var[v] < mr)
                        v++;
                    float *crow = g->C + (ic + ir) * g->ldc;
                    for (int64_t jr = 0; jr < nc; jr += NR) {
                        const int nr = (int)(nc - jr < NR ? nc - jr : NR);
                        const int wide = 2 * nr > NR;
                        const float *bp;
                        int64_t sb;
                        if (pack_b) {
                            bp = bufb + jr * kc;
                            sb = NR;
                        } else if (jr < nfull) {
                            bp = b_at(g, pc, jc + jr);
                            sb = g->ldb;
                        } else {
                            bp = edge_b;
                            sb = NR;
                        }
                        const ukr_fn f = row ? kd->ukr_row[wide] : kd->ukr[v][wide];
                        f(kc, ap, sa, bp, sb, crow + jc + jr, g->ldc, mr, nr,
                          g->alpha, beta);
                        if (last_k)
                            epilogue(g, ic + ir, jc + jr, mr, nr);
                    }
                }
            }
        }
    }
}

/* ---- special cases ------------------------------------------------------- */

/* C = beta * C (C not read when beta == 0). */
static void scale_c(int64_t M, int64_t N, float beta, float *C, int64_t ldc)
{
    for (int64_t i = 0; i < M; i++) {
        float *ci = C + i * ldc;
        if (beta == 0.0f)
            memset(ci, 0, (size_t)N * sizeof(float));
        else if (beta != 1.0f)
            for (int64_t j = 0; j < N; j++)
                ci[j] *= beta;
    }
}

/* Unblocked GEMM, used only if a packing buffer cannot be allocated. */
static void gemm_naive(const gemm_args *g, int64_t m0, int64_t m1, int64_t n0,
                       int64_t n1)
{
    for (int64_t i = m0; i < m1; i++) {
        for (int64_t j = n0; j < n1; j++) {
            float acc = 0.0f;
            for (int64_t k = 0; k < g->K; k++)
                acc += *a_at(g, i, k) * *b_at(g, k, j);
            float *c = g->C + i * g->ldc + j;
            *c = g->beta == 0.0f ? g->alpha * acc
                                 : g->alpha * acc + g->beta * *c;
        }
    }
    epilogue(g, m0, n0, m1 - m0, n1 - n0);
}

static void run_rect(const kernel_desc *kd, const gemm_args *g, int64_t m0,
                     int64_t m1, int64_t n0, int64_t n1)
{
    float *buf = thread_buffer();
    if (buf != NULL)
        gemm_rect(kd, g, m0, m1, n0, n1, buf);
    else
        gemm_naive(g, m0, m1, n0, n1);
}

/* ---- threading ----------------------------------------------------------- */

/* Splits n into t parts starting at multiples of q; returns the part size. */
static int64_t part_size(int64_t n, int t, int q)
{
    return ceil_div(ceil_div(n, q), t) * q;
}

/* What a C element costs a thread that writes only part of each row of C,
 * in multiply-adds (k steps) per element: with threads writing the two
 * halves of every row, products with short K ran 1.2-2.5x slower than split
 * by rows (2 threads, 128 x 1024 from K = 10, 16, 32, 64: 56-62, 54-56,
 * 76-80, 107-108 us against 25-26, 31-32, 52-53, 90-91; 128 x 512 x 10 took
 * 24-28 us against 11, and 9 on one thread). */
#define PARTIAL_ROW_COST 8.0

/* Picks a tm x tn grid of threads (tm * tn == nt) minimising the estimated
 * time of the slowest thread: multiply-adds on its rectangle (rows rounded
 * to a quarter tile, columns to a vector), packing its share of A and B, and
 * for a split of the columns, writing partial rows of C.  Any split gives
 * the same results; this only balances the work. */
static void pick_grid(const kernel_desc *kd, int nt, int64_t M, int64_t N,
                      int64_t K, int *tm_out, int *tn_out)
{
    double best = -1.0;
    int btm = 1, btn = 1;
    for (int tm = 1; tm <= nt; tm++) {
        if (nt % tm)
            continue;
        const int tn = nt / tm;
        int64_t rows = part_size(M, tm, kd->qm);
        int64_t cols = part_size(N, tn, kd->qn);
        if ((tm - 1) * rows >= M || (tn - 1) * cols >= N)
            continue;                      /* some thread would be idle */
        rows = rows < M ? rows : M;
        cols = cols < N ? cols : N;
        const double tile_elems =
            (double)(ceil_div(rows, 4) * 4) * (double)(ceil_div(cols, 16) * 16);
        double cost = tile_elems * (double)K / 16.0 + (double)(rows + cols) * (double)K / 4.0;
        if (tn > 1)
            cost += tile_elems * PARTIAL_ROW_COST / 16.0;
        /* A tie goes to more row parts: each thread then writes whole rows
         * of C, not half of every row (1024 x 1024 x 128 weight gradient,
         * 2 threads: 1218-1223 against 1274-1294 us; 1024^3 and 2048^3
         * 1-6 % faster in two alternating runs). */
        if (best < 0.0 || cost <= best) {
            best = cost;
            btm = tm;
            btn = tn;
        }
    }
    *tm_out = btm;
    *tn_out = btn;
}

/* Below this many multiply-adds a parallel region costs more than it saves. */
#define PAR_MIN_WORK ((int64_t)80 * 80 * 80)

/* ---- the sparse-A path (gemm_sparse.c) ----------------------------------- */

/* The largest fraction of nonzeros in op(A) for which the path that skips
 * zeros is taken; 0 turns it off.  Set only by the hook below. */
static double sparse_max_density = SPARSE_DEFAULT_MAX_DENSITY;

double fnn_sgemm_set_sparse_density(double max_density)
{
    const double old = sparse_max_density;
    sparse_max_density = max_density;
    return old;
}

/* Rows [m0, m1) of C on the sparse path; on the dense path if its scratch
 * could not be had (same bits). */
static void sparse_rows_or_dense(const kernel_desc *kd, const gemm_args *g,
                                 int64_t m0, int64_t m1, int avx512)
{
    const size_t bytes = sparse_work_bytes();
    void *work = bytes > 0 ? thread_scratch(SCRATCH_SPARSE, bytes) : NULL;
    if (bytes == 0 || work != NULL)
        sparse_gemm_rows(g, m0, m1, avx512, work);
    else
        run_rect(kd, g, m0, m1, 0, g->N);
}

/* Whether the product takes the sparse-A path: B not transposed, a kernel
 * family the path has, at least SPARSE_MIN_N columns (so each nonzero feeds
 * whole vectors), and few enough nonzeros in op(A).  The choice never
 * changes the result (see gemm_sparse.h), only the time. */
static int takes_sparse_path(int ksel, const gemm_args *g)
{
    const double density = sparse_max_density;
    if (g->tb || density <= 0.0 || g->N < SPARSE_MIN_N ||
        (ksel != KSEL_AVX512 && ksel != KSEL_GENERIC) ||
        g->kcb > SPARSE_KCB_MAX || g->K > INT32_MAX ||  /* lists hold int32 k */
        g->M * g->N * g->K < PAR_MIN_WORK)
        return 0;
    return sparse_density(g, ksel == KSEL_AVX512) <= density;
}

/* A product cut into a tm x tn grid of rectangles of mblk x nblk, one per
 * thread; each runs the dense blocked GEMM or, if sparse, the sparse path
 * on its rows (tn == 1 then). */
typedef struct {
    const kernel_desc *kd;
    const gemm_args *g;
    int tn;
    int64_t mblk, nblk;
    int sparse, avx512;
} gemm_split;

static void run_part(const gemm_split *s, int r)
{
    const gemm_args *g = s->g;
    const int64_t m0 = (r / s->tn) * s->mblk, n0 = (r % s->tn) * s->nblk;
    const int64_t m1 = m0 + s->mblk < g->M ? m0 + s->mblk : g->M;
    const int64_t n1 = n0 + s->nblk < g->N ? n0 + s->nblk : g->N;
    if (m0 >= m1 || n0 >= n1)
        return;
    if (s->sparse)
        sparse_rows_or_dense(s->kd, g, m0, m1, s->avx512);
    else
        run_rect(s->kd, g, m0, m1, n0, n1);
}

static void run_split(const gemm_split *s, int parts)
{
    if (parts == 1) {
        run_part(s, 0);
        return;
    }
#pragma omp parallel num_threads(parts)
    {
#ifdef _OPENMP
        const int t = omp_get_thread_num(), step = omp_get_num_threads();
#else
        const int t = 0, step = 1;
#endif
        /* A loop in case the runtime granted fewer threads than asked. */
        for (int r = t; r < parts; r += step)
            run_part(s, r);
    }
}

void fnn_sgemm_bias_act(int trans_a, int trans_b, int64_t M, int64_t N,
                        int64_t K, float alpha, const float *A, int64_t lda,
                        const float *B, int64_t ldb, float beta, float *C,
                        int64_t ldc, const float *bias, int act)
{
    if (M <= 0 || N <= 0)
        return;
    const gemm_args g = {.ta = trans_a != 0, .tb = trans_b != 0, .M = M, .N = N,
                         .K = K, .kcb = K > 0 ? k_block(K) : 0, .alpha = alpha,
                         .beta = beta, .A = A, .lda = lda, .B = B, .ldb = ldb,
                         .C = C, .ldc = ldc, .bias = bias, .act = act};
    if (K <= 0 || alpha == 0.0f) {
        scale_c(M, N, beta, C, ldc);
        epilogue(&g, 0, 0, M, N);
        return;
    }
    const int ksel = fnn_sgemm_get_kernel();
    const kernel_desc *kd = kernel_for(ksel);

    int nt = fnn_get_num_threads();
#ifdef _OPENMP
    if (omp_in_parallel())
        nt = 1;
#endif
    if (M * N * K < PAR_MIN_WORK)
        nt = 1;
    gemm_split split = {kd, &g, 1, M, N, 0, ksel == KSEL_AVX512};
    if (takes_sparse_path(ksel, &g)) {
        split.sparse = 1;
        split.mblk = part_size(M, nt, SPARSE_ROW_QUANTUM);
        run_split(&split, (int)ceil_div(M, split.mblk));
        return;
    }
    int tm = 1, tn = 1;
    if (nt > 1)
        pick_grid(kd, nt, M, N, K, &tm, &tn);
    split.tn = tn;
    split.mblk = part_size(M, tm, kd->qm);
    split.nblk = part_size(N, tn, kd->qn);
    run_split(&split, tm * tn);
}

void fnn_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
               float alpha, const float *A, int64_t lda,
               const float *B, int64_t ldb,
               float beta, float *C, int64_t ldc)
{
    fnn_sgemm_bias_act(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta,
                       C, ldc, NULL, FNN_ACT_LINEAR);
}
