/* SGEMM that skips the zero entries of op(A) (contract in gemm_sparse.h).
 *
 * A dense layer's input is often mostly zeros (MNIST's pixels: 81 %), and
 * its forward (x @ W) and weight gradient (x^T @ dz) are the two products
 * that read it as op(A).  Here each row of C is accumulated in registers,
 * 128 columns at a time, over a list of the k with op(A)[i,k] != 0, one K
 * block at a time:
 *
 *   op(A) = A (forward): row i's list comes from a vector compare of 16
 *   entries at a time, compressed into k indices (no branch per entry).
 *
 *   op(A) = A^T (weight gradient): row i of C is column i of A, strided.  A
 *   block of 16 such rows is read once per K block, one vector per k, into a
 *   16-bit mask per k; testing bit l of 16 masks at once gives the next 16
 *   entries of row l's list.
 *
 * Each list entry adds a[i,k] * B[k, jb : jb+128] to 8 vector accumulators.
 * The entry's 512 bytes of B are all the data its 8 FMAs use, so where they
 * come from sets the speed: a group of 128 rows walks its K block in chunks
 * of K_CHUNK, every row of the group taking its entries of the chunk in turn
 * (accumulators parked in between), so a chunk of B is fetched from L2 once
 * per group rather than once per row.  Where B's row stride would pile the
 * chunk's rows into a few L1 sets (a 1024-wide B: rows 4 KiB apart), the
 * rows the group uses are first copied side by side.  On MNIST's batches
 * (19 % nonzero) the forward and weight gradient of a 784 -> 128 layer take
 * about half the dense path's time; from about 30-40 % nonzeros the dense
 * path is faster.
 *
 * Same bits as the dense path: every element is an FMA chain over k in
 * increasing order within the same K blocks, stored with the same
 * alpha/beta arithmetic, and a skipped term a*b with a == 0 and b finite adds
 * a zero that leaves the chain unchanged.  Only the portable and AVX-512
 * families exist: an AVX2 machine keeps the dense path.
 */
#include "gemm_sparse.h"
#include "fastnn.h"

#if defined(__x86_64__) || defined(__i386__)
#define FNN_X86 1
#include <immintrin.h>
#else
#define FNN_X86 0
#endif

/* Widest slice of C's columns accumulated at once: 8 AVX-512 vectors. */
#define MAX_WIDTH 128

/* K steps per chunk (a multiple of 16).  On the seed MLP's forward alone
 * (1 thread) chunks of 16, 32, 48, 64 and 96 and none took 143, 115, 108,
 * 104, 100 and 117 us; 64 kept, which in fit beat no chunks by 3-5 %. */
#ifndef K_CHUNK
#define K_CHUNK 64
#endif

/* A list: the k of one row's nonzeros in one K block, ascending, with room
 * for a full vector stored past the last one. */
typedef int32_t k_list[SPARSE_KCB_MAX + 16];

/* ---- shared -------------------------------------------------------------- */

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* The dense path's epilogue, on one row segment of C once it is final. */
static void epilogue_row(const gemm_args *g, int64_t i, int64_t j0,
                         int64_t cols)
{
    if (g->bias != NULL || g->act != FNN_ACT_LINEAR)
        fnn_bias_act_tile(g->act, 1, cols, g->bias == NULL ? NULL : g->bias + j0,
                          g->C + i * g->ldc + j0, g->ldc);
}

/* ---- portable ------------------------------------------------------------ */

/* c = alpha * acc + beta * c, as gemm.c's portable kernel stores a tile. */
static void store_plain(float *c, const float *acc, int64_t n, float alpha,
                        float beta)
{
    if (beta == 0.0f) {
        for (int64_t j = 0; j < n; j++)
            c[j] = alpha * acc[j];
    } else {
        for (int64_t j = 0; j < n; j++)
            c[j] = alpha * acc[j] + beta * c[j];
    }
}

/* c[i, jb:jb+nb] from row i's list; a[k * sa] is op(A)[i, k].  Separate
 * multiply and add like the portable kernel (ISO C mode keeps the compiler
 * from contracting them into an FMA). */
static void row_plain(const gemm_args *g, int32_t n, const int32_t *ks,
                      const float *a, int64_t sa, int64_t i, int64_t jb,
                      int64_t nb, float beta)
{
    float acc[MAX_WIDTH];
    for (int64_t j = 0; j < nb; j++)
        acc[j] = 0.0f;
    for (int32_t e = 0; e < n; e++) {
        const float x = a[ks[e] * sa];
        const float *b = g->B + ks[e] * g->ldb + jb;
        for (int64_t j = 0; j < nb; j++)
            acc[j] += x * b[j];
    }
    store_plain(g->C + i * g->ldc + jb, acc, nb, g->alpha, beta);
}

/* The list of k in [k0, k1) with a[k * sa] != 0 (true for NaN, which must
 * propagate); returns its length. */
static int32_t list_plain(const float *a, int64_t sa, int64_t k0, int64_t k1,
                          int32_t *ks)
{
    int32_t n = 0;
    for (int64_t k = k0; k < k1; k++)
        if (a[k * sa] != 0.0f)
            ks[n++] = (int32_t)k;
    return n;
}

/* Rows [m0, m1) of C; row i of op(A) is a[k * sa], a at its first entry. */
static void rows_plain(const gemm_args *g, int64_t m0, int64_t m1)
{
    k_list ks;
    const int64_t sa = g->ta ? g->lda : 1;
    for (int64_t i = m0; i < m1; i++) {
        const float *a = g->ta ? g->A + i : g->A + i * g->lda;
        for (int64_t pc = 0; pc < g->K; pc += g->kcb) {
            const int64_t kend = min64(pc + g->kcb, g->K);
            const int32_t n = list_plain(a, sa, pc, kend, ks);
            for (int64_t jb = 0; jb < g->N; jb += MAX_WIDTH) {
                const int64_t nb = min64(MAX_WIDTH, g->N - jb);
                row_plain(g, n, ks, a, sa, i, jb, nb, pc == 0 ? g->beta : 1.0f);
                if (kend == g->K)
                    epilogue_row(g, i, jb, nb);
            }
        }
    }
}

/* Every stride-th stored row of A: rows of op(A) (forward) or of samples
 * (op(A) = A^T), enough of them to estimate the fraction of nonzeros. */
#define SAMPLED_ROWS 64
static int64_t sample_stride(const gemm_args *g)
{
    const int64_t rows = g->ta ? g->K : g->M;
    return (rows + SAMPLED_ROWS - 1) / SAMPLED_ROWS;
}

static double density_plain(const gemm_args *g)
{
    int64_t n = 0, seen = 0;
    const int64_t rows = g->ta ? g->K : g->M, cols = g->ta ? g->M : g->K;
    const int64_t stride = sample_stride(g);
    for (int64_t r = 0; r < rows; r += stride, seen += cols) {
        const float *a = g->A + r * g->lda;
        for (int64_t c = 0; c < cols; c++)
            n += a[c] != 0.0f;
    }
    return (double)n / (double)seen;
}

/* ---- AVX-512 ------------------------------------------------------------- */

#if FNN_X86
#define TGT_AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define ALWAYS_INLINE inline __attribute__((always_inline))

static TGT_AVX512 ALWAYS_INLINE __mmask16 lanes(int64_t w)
{
    return (__mmask16)(w >= 16 ? 0xFFFFu : w <= 0 ? 0u : (1u << w) - 1u);
}

/* Lanes of v that are nonzero or NaN (NEQ_UQ: NaN must propagate). */
static TGT_AVX512 ALWAYS_INLINE __mmask16 nonzero(__mmask16 m, __m512 v)
{
    return _mm512_mask_cmp_ps_mask(m, v, _mm512_setzero_ps(), _CMP_NEQ_UQ);
}

/* Appends to ks[n...] the k0 + lane of each set lane of m (a whole vector
 * is stored); returns the new length. */
static TGT_AVX512 ALWAYS_INLINE int32_t append512(int32_t *ks, int32_t n,
                                                  __mmask16 m, int64_t k0)
{
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6,
                                          5, 4, 3, 2, 1, 0);
    const __m512i k = _mm512_add_epi32(lane, _mm512_set1_epi32((int32_t)k0));
    _mm512_storeu_si512((void *)(ks + n), _mm512_maskz_compress_epi32(m, k));
    return n + __builtin_popcount(m);
}

/* Rows of C per group (a multiple of 16).  A group shares each chunk of B,
 * so larger groups fetch (and, where it is packed, copy) B fewer times: the
 * seed MLP's epoch in fit took 5-8 % less time at 32 to 128 rows than at 16
 * (alternating builds, 1 thread; such differences also came and went with
 * where the scratch was placed, so treat them as rough), and a batch of 128
 * against a 784 x 1024 weight 3-8 % less at 128 rows than at 64 (the weight
 * packed once instead of twice at 1 thread). */
#ifndef GROUP_ROWS
#define GROUP_ROWS 128
#endif

/* Work of one group of rows of C in one K block: each row's list, where
 * each K chunk starts in it, the accumulators parked between chunks, which k
 * any row uses, and the packed chunk of B.  About 310 KB, in the caller's
 * per-thread scratch. */
typedef struct {
    int32_t h;                              /* rows in the group */
    int pack_b;                             /* chunks of B are copied first */
    const float *a[GROUP_ROWS];             /* op(A)[i, k] = a[i][k * sa] */
    int64_t sa;
    k_list ks[GROUP_ROWS];
    int32_t start[GROUP_ROWS][SPARSE_KCB_MAX / K_CHUNK + 2];
    float parked[GROUP_ROWS][MAX_WIDTH];
    uint16_t used[SPARSE_KCB_MAX / 16 + 1]; /* k any row of the group needs */
    float packed[K_CHUNK][MAX_WIDTH] __attribute__((aligned(64)));
} row_group;

/* One chunk of one row: acc (from zero, or from where the previous chunk
 * parked it) += a[k] * B[k, jb : jb+nb] over the row's entries [e0, e1);
 * then parked again, or, after the K block's last chunk, stored as
 * alpha * acc + beta * C with the AVX-512 tile kernel's arithmetic (its
 * beta == 1 case multiplies C by 1: exact).  16 (NV-1) < nb <= 16 NV. */
static TGT_AVX512 ALWAYS_INLINE void chunk512(const int NV,
                                              const gemm_args *g,
                                              const float *bb, int64_t kb,
                                              int64_t ldb,
                                              row_group *w, int r, int32_t e0,
                                              int32_t e1, int64_t i, int64_t jb,
                                              int64_t nb, int first, int last_chunk,
                                              float beta)
{
    const __mmask16 last = lanes(nb - 16 * (NV - 1));
    const float *a = w->a[r];
    const int32_t *ks = w->ks[r];
    float *park = w->parked[r];
    __m512 acc[8];
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++)
        acc[v] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(park + 16 * v);
    for (int32_t e = e0; e < e1; e++) {
        const int64_t k = ks[e];
        const __m512 x = _mm512_set1_ps(a[k * w->sa]);
        const float *b = bb + (k - kb) * ldb;
#pragma GCC unroll 8
        for (int v = 0; v < NV - 1; v++)
            acc[v] = _mm512_fmadd_ps(x, _mm512_loadu_ps(b + 16 * v), acc[v]);
        acc[NV - 1] = _mm512_fmadd_ps(
            x, _mm512_maskz_loadu_ps(last, b + 16 * (NV - 1)), acc[NV - 1]);
    }
    if (!last_chunk) {
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++)
            _mm512_storeu_ps(park + 16 * v, acc[v]);
        return;
    }
    float *c = g->C + i * g->ldc + jb;
    const __m512 va = _mm512_set1_ps(g->alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) {
        const __mmask16 m = v == NV - 1 ? last : (__mmask16)0xFFFFu;
        __m512 res = _mm512_mul_ps(acc[v], va);
        if (beta != 0.0f)
            res = _mm512_fmadd_ps(acc[v], va,
                                  _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m, c + 16 * v)));
        _mm512_mask_storeu_ps(c + 16 * v, m, res);
    }
}

/* L1 data caches of current x86 cores have 64 sets of 64-byte lines, 8-12
 * ways each. */
#define L1_SETS 64
#ifndef PACK_ABOVE
#define PACK_ABOVE 12
#endif

/* Whether a chunk of B read in place, K_CHUNK rows of `width` floats one
 * row stride (ldb floats) apart, would put more than PACK_ABOVE of its lines
 * into one L1 set: with a stride near a multiple of 4 KiB (a 1024-wide
 * layer) its rows crowd a few sets and are fetched from L2 for every entry
 * instead of once per chunk.  Copying them side by side first took a batch
 * of MNIST's 128 against a 784 x 1024 weight from 930 to 700 us (forward)
 * and 940 to 700 us (weight gradient) on one core.  Depends on the shape
 * only, never on the threads. */
static int crowds_l1(int64_t ldb, int64_t width)
{
    int count[L1_SETS] = {0}, worst = 0;
    for (int64_t q = 0; q < K_CHUNK; q++) {
        const int64_t start = q * ldb * (int64_t)sizeof(float);
        const int64_t lines = (start % 64 + width * (int64_t)sizeof(float) + 63) / 64;
        for (int64_t l = 0; l < lines; l++) {
            const int set = (int)((start / 64 + l) % L1_SETS);
            worst = ++count[set] > worst ? count[set] : worst;
        }
    }
    return worst > PACK_ABOVE;
}

/* Copies the rows k0 + q < k1 of B[:, jb : jb+nb] that some row of the group
 * uses into w->packed[q], side by side (for strides that crowds_l1 flags). */
static TGT_AVX512 void pack_chunk512(const gemm_args *g, row_group *w,
                                     int64_t pc, int64_t k0, int64_t k1,
                                     int64_t jb, int64_t nb)
{
    const int nv = (int)((nb + 15) / 16);
    const __mmask16 last = lanes(nb - 16 * (nv - 1));
    for (int64_t k = k0; k < k1; k++) {
        if (!((w->used[(k - pc) / 16] >> ((k - pc) % 16)) & 1u))
            continue;
        const float *src = g->B + k * g->ldb + jb;
        float *dst = w->packed[k - k0];
        for (int v = 0; v < nv - 1; v++)
            _mm512_store_ps(dst + 16 * v, _mm512_loadu_ps(src + 16 * v));
        _mm512_store_ps(dst + 16 * (nv - 1),
                        _mm512_maskz_loadu_ps(last, src + 16 * (nv - 1)));
    }
}

/* The group's rows m0 + r of C over the K block [pc, kend), whose lists are
 * built: slice by slice of C's columns, then chunk by chunk of K, so each
 * chunk's block of B is fetched once for the group and reused, from cache,
 * by all its rows. */
static TGT_AVX512 void group512(const gemm_args *g, row_group *w,
                                int64_t m0, int64_t pc, int64_t kend)
{
    const int32_t chunks = (int32_t)((kend - pc + K_CHUNK - 1) / K_CHUNK);
    const float beta = pc == 0 ? g->beta : 1.0f;
    for (int64_t jb = 0; jb < g->N; jb += MAX_WIDTH) {
        const int64_t nb = min64(MAX_WIDTH, g->N - jb);
        const int nv = (int)((nb + 15) / 16);
        const int pack = w->pack_b;
        for (int32_t c = 0; c < chunks; c++) {
            const int first = c == 0, last_chunk = c == chunks - 1;
            const int64_t k0 = pc + (int64_t)c * K_CHUNK;
            const float *bb = g->B + jb;
            int64_t kb = 0, ldb = g->ldb;
            if (pack) {
                pack_chunk512(g, w, pc, k0, min64(k0 + K_CHUNK, kend), jb, nb);
                bb = w->packed[0];
                kb = k0;
                ldb = MAX_WIDTH;
            }
            for (int r = 0; r < w->h; r++) {
                const int32_t e0 = w->start[r][c], e1 = w->start[r][c + 1];
#define CHUNK(NV) chunk512(NV, g, bb, kb, ldb, w, r, e0, e1, m0 + r, jb, nb, first, last_chunk, beta)
                switch (nv) {
                case 1: CHUNK(1); break;
                case 2: CHUNK(2); break;
                case 3: CHUNK(3); break;
                case 4: CHUNK(4); break;
                case 5: CHUNK(5); break;
                case 6: CHUNK(6); break;
                case 7: CHUNK(7); break;
                default: CHUNK(8); break;
                }
#undef CHUNK
                if (last_chunk && kend == g->K)
                    epilogue_row(g, m0 + r, jb, nb);
            }
        }
    }
}

/* op(A) = A: row r's list from a vector compare of 16 k at a time. */
static TGT_AVX512 void lists_rows512(row_group *w, int64_t pc, int64_t kend)
{
    for (int64_t q = 0; q <= (kend - pc) / 16; q++)
        w->used[q] = 0;
    for (int r = 0; r < w->h; r++) {
        const float *a = w->a[r];
        int32_t n = 0, c = 0;
        for (int64_t k0 = pc; k0 < kend; k0 += 16) {
            if ((k0 - pc) % K_CHUNK == 0)
                w->start[r][c++] = n;
            const __mmask16 lm = lanes(kend - k0);
            const __mmask16 nz = nonzero(lm, _mm512_maskz_loadu_ps(lm, a + k0));
            w->used[(k0 - pc) / 16] |= nz;
            n = append512(w->ks[r], n, nz, k0);
        }
        w->start[r][c] = n;
    }
}

/* op(A) = A^T: rows mb + r are columns of A; one vector of A per k gives a
 * 16-bit mask of the rows it feeds, and testing bit r of 16 masks at once
 * gives row r's next 16 entries. */
static TGT_AVX512 void lists_cols512(const gemm_args *g, row_group *w,
                                     int64_t mb, int64_t pc, int64_t kend)
{
    int32_t masks[SPARSE_KCB_MAX + 16];
    const int64_t kc = kend - pc;
    for (int64_t q = 0; q <= kc / 16; q++)
        w->used[q] = 0;
    for (int r0 = 0; r0 < w->h; r0 += 16) {
        const int h = w->h - r0 < 16 ? w->h - r0 : 16;
        const __mmask16 hm = lanes(h);
        const float *ab = g->A + pc * g->lda + mb + r0;
        for (int64_t k = 0; k < kc; k++) {
            masks[k] = nonzero(hm, _mm512_maskz_loadu_ps(hm, ab + k * g->lda));
            w->used[k / 16] |= (uint16_t)((masks[k] != 0) << (k % 16));
        }
        for (int64_t k = kc; k < kc + 16; k++)
            masks[k] = 0;
        for (int r = r0; r < r0 + h; r++) {
            const __m512i bit = _mm512_set1_epi32(1 << (r - r0));
            int32_t n = 0, c = 0;
            for (int64_t k0 = 0; k0 < kc; k0 += 16) {
                if (k0 % K_CHUNK == 0)
                    w->start[r][c++] = n;
                const __m512i m = _mm512_loadu_si512((const void *)(masks + k0));
                n = append512(w->ks[r], n, _mm512_test_epi32_mask(m, bit), pc + k0);
            }
            w->start[r][c] = n;
        }
    }
}

static TGT_AVX512 void gemm512(const gemm_args *g, int64_t m0, int64_t m1,
                               int pack_b, row_group *w)
{
    w->sa = g->ta ? g->lda : 1;
    w->pack_b = pack_b;
    for (int64_t mb = m0; mb < m1; mb += GROUP_ROWS) {
        w->h = (int32_t)min64(GROUP_ROWS, m1 - mb);
        for (int r = 0; r < w->h; r++)
            w->a[r] = g->ta ? g->A + mb + r : g->A + (mb + r) * g->lda;
        for (int64_t pc = 0; pc < g->K; pc += g->kcb) {
            const int64_t kend = min64(pc + g->kcb, g->K);
            if (g->ta)
                lists_cols512(g, w, mb, pc, kend);
            else
                lists_rows512(w, pc, kend);
            group512(g, w, mb, pc, kend);
        }
    }
}

static TGT_AVX512 double density512(const gemm_args *g)
{
    int64_t n = 0, seen = 0;
    const int64_t rows = g->ta ? g->K : g->M, cols = g->ta ? g->M : g->K;
    const int64_t stride = sample_stride(g);
    for (int64_t r = 0; r < rows; r += stride, seen += cols) {
        const float *a = g->A + r * g->lda;
        for (int64_t c = 0; c < cols; c += 16) {
            const __mmask16 m = lanes(cols - c);
            n += __builtin_popcount(nonzero(m, _mm512_maskz_loadu_ps(m, a + c)));
        }
    }
    return (double)n / (double)seen;
}
#endif /* FNN_X86 */

/* ---- entry points -------------------------------------------------------- */

double sparse_density(const gemm_args *g, int avx512)
{
#if FNN_X86
    if (avx512)
        return density512(g);
#endif
    (void)avx512;
    return density_plain(g);
}

size_t sparse_work_bytes(void)
{
#if FNN_X86
    return sizeof(row_group);
#else
    return 0;
#endif
}

void sparse_gemm_rows(const gemm_args *g, int64_t m0, int64_t m1,
                      int avx512, void *work)
{
#if FNN_X86
    if (avx512) {
        /* crowds_l1 is called here, outside the AVX-512 code: inlined there,
         * its zeroed array on the stack was written with 64-byte aligned
         * stores, which the sanitizer's relocated stack frames fault on. */
        gemm512(g, m0, m1, crowds_l1(g->ldb, min64(g->N, MAX_WIDTH)),
                (row_group *)work);
        return;
    }
#endif
    (void)avx512;
    (void)work;
    rows_plain(g, m0, m1);
}
