/* 2-D convolution over NHWC images with (kh, kw, C, F) kernels.
 *
 * All three products are implicit GEMMs over a (zero-padded) input image:
 *   forward      out[p, f]  = sum_k A[p, k] * w[k, f]
 *   grad filter  dw[k, f]   = sum_b sum_p A_b[p, k] * dz_b[p, f]
 *   grad data    dcol[p, k] = sum_f dz[p, f] * w[k, f], scattered back (col2im)
 * where k = (ki, kj, c) and A[p, k] is the input pixel that kernel tap
 * (ki, kj) sees from output pixel p. A is never materialised: a tile of
 * output pixels along one output row reads the padded image at a fixed
 * stride, so the micro-kernels broadcast straight from it.
 *
 * Threads: forward splits (image, output row) pairs; grad-data splits
 * images (the col2im scatter of one image stays on one thread, so its
 * additions run in a fixed order); grad-filter splits (k tile, filter
 * block) pairs, and each thread sums every image in batch order into its
 * own dw entries. No result depends on the thread count.
 *
 * Two code paths: AVX2+FMA micro-kernels picked at run time on x86-64, and
 * a plain C path everywhere else (also selectable for tests).
 */
#include "fastnn.h"

#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__GNUC__) && defined(__x86_64__)
#define CONV_X86 1
#include <immintrin.h>
#define TGT_AVX2 __attribute__((target("avx2,fma")))
#define INLINE_ALWAYS inline __attribute__((always_inline))
#endif

/* ---- shared helpers --------------------------------------------------- */

static int conv_force_generic = 0;

void fnn_conv_force_generic(int on) { conv_force_generic = on ? 1 : 0; }

int fnn_conv_simd_path(void)
{
#ifdef CONV_X86
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return conv_force_generic ? 0 : cached;
#else
    return 0;
#endif
}

static int conv_thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static int conv_team_size(void)
{
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

static int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

/* Workspace layout, in bytes, every region 64-byte aligned:
 *   shared:     wpack (floats), koff (int64, kh*kw), tiles (int64, 3*K)
 *   per thread: xpad (floats), dxpad (floats), dcol (floats, 6 x Kp) */
typedef struct {
    int64_t Hp, Wp, K, P, Fp, Kp;
    int padded;
    int64_t img_in, img_pad;
    int64_t off_koff, off_tiles, off_dbpart, off_dwpart, shared_bytes;
    int64_t off_xpad, off_dxpad, off_dcol, off_xchunk, thread_bytes;
    int64_t nchunks;
} conv_dims;

/* The filter gradient sums fixed chunks of DW_CHUNK images separately (one
 * thread per chunk and k tile) and adds the chunk partials in chunk order:
 * more parallel work than k tiles alone, same result for any thread count. */
#define DW_CHUNK 8

#define DCOL_ROWS 6

static int64_t align64(int64_t n) { return round_up(n, 64); }

static void conv_dims_init(const fnn_conv2d_geom *g, conv_dims *d)
{
    d->Hp = g->H + g->pt + g->pb;
    d->Wp = g->W + g->pl + g->pr;
    d->K = g->kh * g->kw * g->C;
    d->P = g->Ho * g->Wo;
    d->Fp = g->F <= 8 ? 8 : round_up(g->F, 16);
    d->Kp = round_up(d->K, 16);
    d->padded = (g->pt | g->pb | g->pl | g->pr) != 0;
    d->img_in = g->H * g->W * g->C;
    d->img_pad = d->Hp * d->Wp * g->C;
    int64_t wfloats = d->K * d->Fp;
    if (g->F * d->Kp > wfloats) wfloats = g->F * d->Kp;
    const int64_t fs = (int64_t)sizeof(float);
    d->off_koff = align64(wfloats * fs);
    d->off_tiles = d->off_koff + align64(g->kh * g->kw * (int64_t)sizeof(int64_t));
    d->off_dbpart = d->off_tiles + align64(3 * d->K * (int64_t)sizeof(int64_t));
    d->nchunks = (g->B + DW_CHUNK - 1) / DW_CHUNK;
    d->off_dwpart = d->off_dbpart + align64(g->B * g->F * fs);
    d->shared_bytes = d->off_dwpart + align64(d->nchunks * d->K * g->F * fs);
    int64_t pad_bytes = d->padded ? align64(d->img_pad * fs) : 0;
    d->off_xpad = 0;
    d->off_dxpad = pad_bytes;
    d->off_dcol = 2 * pad_bytes;
    d->off_xchunk = d->off_dcol + align64(DCOL_ROWS * d->Kp * fs);
    d->thread_bytes = d->off_xchunk + (d->padded ? align64(DW_CHUNK * d->img_pad * fs) : 0);
}

int64_t fnn_conv2d_workspace_bytes(const fnn_conv2d_geom *g, int nthreads)
{
    conv_dims d;
    conv_dims_init(g, &d);
    if (nthreads < 1) nthreads = 1;
    return d.shared_bytes + (int64_t)nthreads * d.thread_bytes + 64;
}

/* Threads that fit the caller's workspace, at most nthreads. */
static int conv_threads_for(const conv_dims *d, int64_t work_bytes, int nthreads)
{
    int64_t fit = (work_bytes - 64 - d->shared_bytes) / d->thread_bytes;
    int n = nthreads;
    if (fit < n) n = (int)fit;
    return n < 1 ? 1 : n;
}

static char *align_ptr(void *p)
{
    uintptr_t u = (uintptr_t)p;
    return (char *)((u + 63) & ~(uintptr_t)63);
}

/* Copies one NHWC image into the centre of a zeroed (Hp, Wp, C) buffer. */
static void pad_image(const fnn_conv2d_geom *g, const conv_dims *d,
                      const float *src, float *dst)
{
    const int64_t C = g->C, rowp = d->Wp * C;
    memset(dst, 0, (size_t)(g->pt * rowp) * sizeof(float));
    for (int64_t h = 0; h < g->H; h++) {
        float *row = dst + (h + g->pt) * rowp;
        memset(row, 0, (size_t)(g->pl * C) * sizeof(float));
        memcpy(row + g->pl * C, src + h * g->W * C, (size_t)(g->W * C) * sizeof(float));
        memset(row + (g->pl + g->W) * C, 0, (size_t)(g->pr * C) * sizeof(float));
    }
    memset(dst + (g->pt + g->H) * rowp, 0, (size_t)(g->pb * rowp) * sizeof(float));
}

/* Offsets (in floats, inside a padded image) of each kernel tap (ki, kj). */
static void fill_koff(const fnn_conv2d_geom *g, const conv_dims *d, int64_t *koff)
{
    for (int64_t ki = 0; ki < g->kh; ki++)
        for (int64_t kj = 0; kj < g->kw; kj++)
            koff[ki * g->kw + kj] = (ki * g->dh * d->Wp + kj * g->dw) * g->C;
}

/* Activations that the forward epilogue cannot fuse: applied per output
 * pixel over its F values (softmax over the last axis). */
static void act_pixels(int act, int64_t n, int64_t F, float *o)
{
    if (act == FNN_ACT_SIGMOID) {
        fnn_vsigmoidf(n * F, o, o);
    } else if (act == FNN_ACT_TANH) {
        fnn_vtanhf(n * F, o, o);
    } else if (act == FNN_ACT_SOFTMAX) {
        fnn_softmax_rows(n, F, o, o, NULL);
    }
}

/* Splits n items into `parts` near-equal runs; run i is [lo, hi). */
static void split_range(int64_t n, int parts, int i, int64_t *lo, int64_t *hi)
{
    int64_t base = n / parts, extra = n % parts;
    *lo = i * base + (i < extra ? i : extra);
    *hi = *lo + base + (i < extra ? 1 : 0);
}

/* Tiles of the k axis (rows of dw) whose A offsets are consecutive:
 * with dw == 1 one kernel row's kw*C taps are contiguous in the padded
 * image, else one tap's C channels are. Each tile: k0, rows, offset. */
static int64_t build_k_tiles(const fnn_conv2d_geom *g, const conv_dims *d,
                             const int64_t *koff, int64_t maxrows, int64_t *tiles)
{
    const int64_t seg = g->dw == 1 ? g->kw * g->C : g->C;
    const int64_t nseg = d->K / seg;
    int64_t nt = 0;
    for (int64_t s = 0; s < nseg; s++) {
        int64_t k0 = s * seg;
        int64_t off0 = koff[k0 / g->C] + k0 % g->C;
        int64_t parts = (seg + maxrows - 1) / maxrows;
        for (int64_t t = 0; t < parts; t++) {
            int64_t lo, hi;
            split_range(seg, (int)parts, (int)t, &lo, &hi);
            tiles[3 * nt] = k0 + lo;
            tiles[3 * nt + 1] = hi - lo;
            tiles[3 * nt + 2] = off0 + lo;
            nt++;
        }
    }
    return nt;
}

/* ---- plain C path ----------------------------------------------------- */

static void fwd_generic(const fnn_conv2d_geom *g, int act, const float *x,
                        const float *w, const float *bias, float *out, int nth)
{
    const int64_t C = g->C, F = g->F;
    #pragma omp parallel for schedule(static) num_threads(nth)
    for (int64_t item = 0; item < g->B * g->Ho; item++) {
        const int64_t b = item / g->Ho, oh = item % g->Ho;
        const float *xb = x + b * g->H * g->W * C;
        float *orow = out + item * g->Wo * F;
        for (int64_t ow = 0; ow < g->Wo; ow++) {
            float *o = orow + ow * F;
            for (int64_t f = 0; f < F; f++) o[f] = 0.0f;
            for (int64_t ki = 0; ki < g->kh; ki++) {
                int64_t ih = oh * g->sh - g->pt + ki * g->dh;
                if (ih < 0 || ih >= g->H) continue;
                for (int64_t kj = 0; kj < g->kw; kj++) {
                    int64_t iw = ow * g->sw - g->pl + kj * g->dw;
                    if (iw < 0 || iw >= g->W) continue;
                    const float *xp = xb + (ih * g->W + iw) * C;
                    const float *wp = w + (ki * g->kw + kj) * C * F;
                    for (int64_t c = 0; c < C; c++)
                        for (int64_t f = 0; f < F; f++) o[f] += xp[c] * wp[c * F + f];
                }
            }
            for (int64_t f = 0; f < F; f++) {
                float v = o[f] + (bias ? bias[f] : 0.0f);
                o[f] = act == FNN_ACT_RELU ? (v > 0.0f ? v : 0.0f) : v;
            }
        }
        act_pixels(act, g->Wo, F, orow);
    }
}

static void dw_generic(const fnn_conv2d_geom *g, const float *x, const float *dz,
                       float *dw, int nth)
{
    const int64_t C = g->C, F = g->F, K = g->kh * g->kw * C;
    #pragma omp parallel for schedule(static) num_threads(nth)
    for (int64_t k = 0; k < K; k++) {
        const int64_t ki = k / (g->kw * C), kj = (k / C) % g->kw, c = k % C;
        float *row = dw + k * F;
        for (int64_t b = 0; b < g->B; b++) {
            const float *xb = x + b * g->H * g->W * C;
            const float *dzb = dz + b * g->Ho * g->Wo * F;
            for (int64_t f = 0; f < F; f++) {
                float s = 0.0f;
                for (int64_t oh = 0; oh < g->Ho; oh++) {
                    int64_t ih = oh * g->sh - g->pt + ki * g->dh;
                    if (ih < 0 || ih >= g->H) continue;
                    for (int64_t ow = 0; ow < g->Wo; ow++) {
                        int64_t iw = ow * g->sw - g->pl + kj * g->dw;
                        if (iw < 0 || iw >= g->W) continue;
                        s += xb[(ih * g->W + iw) * C + c] * dzb[(oh * g->Wo + ow) * F + f];
                    }
                }
                row[f] = b == 0 ? s : row[f] + s;
            }
        }
    }
}

static void dx_generic(const fnn_conv2d_geom *g, const float *w, const float *dz,
                       float *dx, int nth)
{
    const int64_t C = g->C, F = g->F;
    #pragma omp parallel for schedule(static) num_threads(nth)
    for (int64_t b = 0; b < g->B; b++) {
        float *dxb = dx + b * g->H * g->W * C;
        const float *dzb = dz + b * g->Ho * g->Wo * F;
        memset(dxb, 0, (size_t)(g->H * g->W * C) * sizeof(float));
        for (int64_t oh = 0; oh < g->Ho; oh++)
            for (int64_t ow = 0; ow < g->Wo; ow++) {
                const float *d = dzb + (oh * g->Wo + ow) * F;
                for (int64_t ki = 0; ki < g->kh; ki++) {
                    int64_t ih = oh * g->sh - g->pt + ki * g->dh;
                    if (ih < 0 || ih >= g->H) continue;
                    for (int64_t kj = 0; kj < g->kw; kj++) {
                        int64_t iw = ow * g->sw - g->pl + kj * g->dw;
                        if (iw < 0 || iw >= g->W) continue;
                        float *xo = dxb + (ih * g->W + iw) * C;
                        const float *wp = w + (ki * g->kw + kj) * C * F;
                        for (int64_t c = 0; c < C; c++) {
                            float s = 0.0f;
                            for (int64_t f = 0; f < F; f++) s += d[f] * wp[c * F + f];
                            xo[c] += s;
                        }
                    }
                }
            }
    }
}

/* ---- AVX2 + FMA path -------------------------------------------------- */
#ifdef CONV_X86

TGT_AVX2 static INLINE_ALWAYS __m256i lane_mask(int64_t n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n > 8 ? 8 : n)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* Named accumulators (GCC keeps a large array of vectors in memory, so the
 * micro-kernels spell out one variable per register and let constant MR /
 * NV drop the unused ones). */
#define REP6(M) M(0) M(1) M(2) M(3) M(4) M(5)
#define REP12(M) REP6(M) M(6) M(7) M(8) M(9) M(10) M(11)
#define ACC_DECL(i) __m256 c##i = _mm256_setzero_ps(), h##i = _mm256_setzero_ps(); \
    (void)c##i; (void)h##i;

/* dst[0:n] = v[0:n] without a masked store (slow on some CPUs). */
TGT_AVX2 static INLINE_ALWAYS void store_part(float *dst, __m256 v, int64_t n)
{
    float tmp[8];
    _mm256_storeu_ps(tmp, v);
    for (int64_t j = 0; j < n; j++) dst[j] = tmp[j];
}

/* One forward tile: MR output pixels of one row (input rows RS floats
 * apart) times NV*8 filters; adds bias, applies relu, stores ncols.
 * A row's last vector may be stored full width past ncols when that stays
 * within the first `limit` floats from o: those belong to later pixels of
 * this row, stored afterwards by this thread. */
TGT_AVX2 static INLINE_ALWAYS void fwd_tile(
    const int MR, const int NV, const int64_t RS, const float *a,
    const int64_t *koff, int64_t npos, int64_t C, const float *wp, int64_t ldw,
    const float *bias, int relu, float *o, int64_t ldo, int64_t ncols, int64_t limit)
{
    REP12(ACC_DECL)
    for (int64_t pos = 0; pos < npos; pos++) {
        const float *ap = a + koff[pos];
        const float *bp = wp + pos * C * ldw;
        for (int64_t c = 0; c < C; c++) {
            const __m256 b0 = _mm256_loadu_ps(bp + c * ldw);
            const __m256 b1 = NV > 1 ? _mm256_loadu_ps(bp + c * ldw + 8) : b0;
#define FWD_FMA(i) \
            if (i < MR) { \
                const __m256 av = _mm256_broadcast_ss(ap + i * RS + c); \
                c##i = _mm256_fmadd_ps(av, b0, c##i); \
                if (NV > 1) h##i = _mm256_fmadd_ps(av, b1, h##i); \
            }
            REP12(FWD_FMA)
#undef FWD_FMA
        }
    }
    const int64_t nlast = ncols - 8 * (NV - 1);
    const __m256i m = lane_mask(nlast);
    (void)m;
    __m256 bv0 = _mm256_setzero_ps(), bv1 = _mm256_setzero_ps();
    if (bias) {
        if (NV > 1) {
            bv0 = _mm256_loadu_ps(bias);
            bv1 = _mm256_maskload_ps(bias + 8, m);
        } else {
            bv0 = _mm256_maskload_ps(bias, m);
        }
    }
    const __m256 zero = _mm256_setzero_ps();
#define FWD_STORE(i) \
    if (i < MR) { \
        __m256 v0 = _mm256_add_ps(c##i, bv0); \
        if (relu) v0 = _mm256_max_ps(v0, zero); \
        __m256 vl = v0; \
        if (NV > 1) { \
            vl = _mm256_add_ps(h##i, bv1); \
            if (relu) vl = _mm256_max_ps(vl, zero); \
            _mm256_storeu_ps(o + i * ldo, v0); \
        } \
        float *dl = o + i * ldo + 8 * (NV - 1); \
        if (nlast == 8 || i * ldo + 8 * NV <= limit) \
            _mm256_storeu_ps(dl, vl); \
        else \
            store_part(dl, vl, nlast); \
    }
    REP12(FWD_STORE)
#undef FWD_STORE
}

#define FWD_CASE(mr, nv, rs) \
    case mr: fwd_tile(mr, nv, rs, a, koff, npos, C, wp, ldw, bias, relu, o, ldo, ncols, limit); \
        break;

TGT_AVX2 static void fwd_tile_nv1_rs1(int mr, const float *a, const int64_t *koff,
                                      int64_t npos, int64_t C, const float *wp,
                                      int64_t ldw, const float *bias, int relu, float *o,
                                      int64_t ldo, int64_t ncols, int64_t limit)
{
    switch (mr) {
        FWD_CASE(1, 1, 1) FWD_CASE(2, 1, 1) FWD_CASE(3, 1, 1) FWD_CASE(4, 1, 1)
        FWD_CASE(5, 1, 1) FWD_CASE(6, 1, 1) FWD_CASE(7, 1, 1) FWD_CASE(8, 1, 1)
        FWD_CASE(9, 1, 1) FWD_CASE(10, 1, 1) FWD_CASE(11, 1, 1) FWD_CASE(12, 1, 1)
    }
}

TGT_AVX2 static void fwd_tile_nv1(int mr, int64_t rs, const float *a, const int64_t *koff,
                                  int64_t npos, int64_t C, const float *wp, int64_t ldw,
                                  const float *bias, int relu, float *o, int64_t ldo,
                                  int64_t ncols, int64_t limit)
{
    switch (mr) {
        FWD_CASE(1, 1, rs) FWD_CASE(2, 1, rs) FWD_CASE(3, 1, rs) FWD_CASE(4, 1, rs)
        FWD_CASE(5, 1, rs) FWD_CASE(6, 1, rs) FWD_CASE(7, 1, rs) FWD_CASE(8, 1, rs)
    }
}

TGT_AVX2 static void fwd_tile_nv2(int mr, int64_t rs, const float *a, const int64_t *koff,
                                  int64_t npos, int64_t C, const float *wp, int64_t ldw,
                                  const float *bias, int relu, float *o, int64_t ldo,
                                  int64_t ncols, int64_t limit)
{
    switch (mr) {
        FWD_CASE(1, 2, rs) FWD_CASE(2, 2, rs) FWD_CASE(3, 2, rs)
        FWD_CASE(4, 2, rs) FWD_CASE(5, 2, rs) FWD_CASE(6, 2, rs)
    }
}

/* One output row (Wo pixels, all F filters) of one image. */
TGT_AVX2 static void fwd_row_avx2(const fnn_conv2d_geom *g, const conv_dims *d,
                                  int act, const float *xp, int64_t oh,
                                  const int64_t *koff, const float *wp,
                                  const float *bias, float *orow)
{
    const int64_t C = g->C, F = g->F, npos = g->kh * g->kw;
    const int64_t rs = g->sw * C;
    const int relu = act == FNN_ACT_RELU;
    const float *arow = xp + oh * g->sh * d->Wp * C;
    for (int64_t f0 = 0; f0 < F; f0 += 16) {
        const int64_t ncols = F - f0 < 16 ? F - f0 : 16;
        const int nv = ncols > 8 ? 2 : 1;
        const int64_t mrmax = nv == 2 ? 6 : (rs == 1 ? 12 : 8);
        const int64_t ntile = (g->Wo + mrmax - 1) / mrmax;
        const float *bb = bias ? bias + f0 : NULL;
        for (int64_t t = 0; t < ntile; t++) {
            int64_t lo, hi;
            split_range(g->Wo, (int)ntile, (int)t, &lo, &hi);
            const int mr = (int)(hi - lo);
            const float *a = arow + lo * rs;
            float *o = orow + lo * F + f0;
            /* spilling past a pixel's last filter lands on later pixels of
             * this row, stored afterwards: only with a single F block */
            const int64_t limit = F > 16 ? 0 : (g->Wo - lo) * F;
            if (nv == 2)
                fwd_tile_nv2(mr, rs, a, koff, npos, C, wp + f0, d->Fp, bb, relu, o, F, ncols,
                             limit);
            else if (rs == 1)
                fwd_tile_nv1_rs1(mr, a, koff, npos, C, wp + f0, d->Fp, bb, relu, o, F, ncols,
                                 limit);
            else
                fwd_tile_nv1(mr, rs, a, koff, npos, C, wp + f0, d->Fp, bb, relu, o, F, ncols,
                             limit);
        }
    }
    if (act != FNN_ACT_LINEAR && act != FNN_ACT_RELU) act_pixels(act, g->Wo, F, orow);
}

/* ---- single-channel input (C == 1, sw == 1, F <= 8) ----
 * With one input channel the filters are too few to fill a vector, but the
 * input row is contiguous: vectorise over 8 output pixels instead and
 * transpose the (filter x pixel) tile at the end. */

TGT_AVX2 static INLINE_ALWAYS void transpose8(__m256 *r)
{
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

#define REP8(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)

/* Output pixels [ow0, ow0 + 8*NP) of one row (n valid), all F filters:
 * acc(f, v) over 8 pixels; x rows start at xr (stride-1 pixels). */
TGT_AVX2 static INLINE_ALWAYS void c1_tile(
    const int NP, const int F, const float *xr, int64_t rowstep, int64_t dw,
    int64_t kh, int64_t kw, const float *w, int64_t n, const float *bias, int relu,
    float *o, int64_t limit)
{
    REP8(ACC_DECL)
    const __m256i m0 = lane_mask(n), m1 = lane_mask(n - 8);
    const int full0 = n >= 8, full1 = n >= 16;
    for (int64_t ki = 0; ki < kh; ki++) {
        const float *xa = xr + ki * rowstep;
        const float *wk = w + ki * kw * F;
        for (int64_t kj = 0; kj < kw; kj++) {
            const float *xp = xa + kj * dw;
            const __m256 x0 = full0 ? _mm256_loadu_ps(xp) : _mm256_maskload_ps(xp, m0);
            __m256 x1 = x0;
            if (NP > 1) x1 = full1 ? _mm256_loadu_ps(xp + 8) : _mm256_maskload_ps(xp + 8, m1);
            const float *wf = wk + kj * F;
#define C1_FMA(f) \
            if (f < F) { \
                const __m256 wv = _mm256_broadcast_ss(wf + f); \
                c##f = _mm256_fmadd_ps(wv, x0, c##f); \
                if (NP > 1) h##f = _mm256_fmadd_ps(wv, x1, h##f); \
            }
            REP8(C1_FMA)
#undef C1_FMA
        }
    }
    const __m256i mf = lane_mask(F);
    const __m256 bv = bias ? _mm256_maskload_ps(bias, mf) : _mm256_setzero_ps();
    const __m256 zero = _mm256_setzero_ps();
    for (int v = 0; v < NP; v++) {
        __m256 r[8];
#define C1_GATHER(f) r[f] = f < F ? (v == 0 ? c##f : h##f) : zero;
        REP8(C1_GATHER)
#undef C1_GATHER
        transpose8(r);
        for (int p = 0; p < 8; p++) {
            const int64_t px = 8 * v + p;
            if (px >= n) break;
            __m256 y = _mm256_add_ps(r[p], bv);
            if (relu) y = _mm256_max_ps(y, zero);
            float *dst = o + px * F;
            if (px * F + 8 <= limit)
                _mm256_storeu_ps(dst, y);
            else
                store_part(dst, y, F);
        }
    }
}

#define C1_CASE(f) \
    case f: \
        if (np == 2) c1_tile(2, f, xr, rowstep, dw, kh, kw, w, n, bias, relu, o, limit); \
        else c1_tile(1, f, xr, rowstep, dw, kh, kw, w, n, bias, relu, o, limit); \
        break;

TGT_AVX2 static void c1_tile_dispatch(int np, int64_t F, const float *xr, int64_t rowstep,
                                      int64_t dw, int64_t kh, int64_t kw, const float *w,
                                      int64_t n, const float *bias, int relu, float *o,
                                      int64_t limit)
{
    switch (F) {
        C1_CASE(1) C1_CASE(2) C1_CASE(3) C1_CASE(4) C1_CASE(5) C1_CASE(6) C1_CASE(7)
        C1_CASE(8)
    }
}

/* One output row for C == 1, sw == 1, F <= 8. */
TGT_AVX2 static void fwd_row_c1(const fnn_conv2d_geom *g, const conv_dims *d, int act,
                                const float *xp, int64_t oh, const float *w,
                                const float *bias, float *orow)
{
    const int64_t F = g->F, Wo = g->Wo;
    const int relu = act == FNN_ACT_RELU;
    const int np = F <= 6 ? 2 : 1; /* accumulators: F * np <= 12 */
    const float *xr = xp + oh * g->sh * d->Wp;
    const int64_t rowstep = g->dh * d->Wp;
    for (int64_t ow0 = 0; ow0 < Wo; ow0 += 8 * np) {
        const int64_t n = Wo - ow0 < 8 * np ? Wo - ow0 : 8 * np;
        c1_tile_dispatch(np, F, xr + ow0, rowstep, g->dw, g->kh, g->kw, w, n, bias, relu,
                         orow + ow0 * F, (Wo - ow0) * F);
    }
    if (act != FNN_ACT_LINEAR && act != FNN_ACT_RELU) act_pixels(act, Wo, F, orow);
}

static int use_c1_path(const fnn_conv2d_geom *g)
{
    return g->C == 1 && g->sw == 1 && g->F <= 8;
}

/* dw tile: MR consecutive k rows (A offsets consecutive) times NV*8
 * filters, summed over one image's pixels. U = 2 keeps two accumulator
 * sets (even / odd output columns) to hide FMA latency when MR*NV is
 * small; they are added in a fixed order at the end. */
#define ACC2_DECL(i) __m256 e##i = _mm256_setzero_ps(), q##i = _mm256_setzero_ps(); \
    (void)e##i; (void)q##i;
TGT_AVX2 static INLINE_ALWAYS void dw_tile(
    const int MR, const int NV, const int U, const float *xk, int64_t Ho, int64_t Wo,
    int64_t rstep, int64_t cstep, const float *dzb, int64_t F, int64_t ncols,
    float *dwt, int first)
{
    REP6(ACC_DECL)
    REP6(ACC2_DECL)
    const __m256i m = lane_mask(ncols - 8 * (NV - 1));
#define DZ_LOAD(d0, d1, da) \
    if (NV > 1) { d0 = _mm256_loadu_ps(da); d1 = _mm256_maskload_ps((da) + 8, m); } \
    else { d0 = _mm256_maskload_ps(da, m); d1 = d0; }
#define DW_FMA0(i) \
    if (i < MR) { \
        const __m256 av = _mm256_broadcast_ss(xa + i); \
        c##i = _mm256_fmadd_ps(av, d0, c##i); \
        if (NV > 1) h##i = _mm256_fmadd_ps(av, d1, h##i); \
    }
#define DW_FMA1(i) \
    if (i < MR) { \
        const __m256 av = _mm256_broadcast_ss(xb + i); \
        e##i = _mm256_fmadd_ps(av, g0, e##i); \
        if (NV > 1) q##i = _mm256_fmadd_ps(av, g1, q##i); \
    }
    for (int64_t oh = 0; oh < Ho; oh++) {
        const float *xr = xk + oh * rstep;
        const float *dr = dzb + oh * Wo * F;
        int64_t ow = 0;
        if (U == 2) {
            for (; ow + 1 < Wo; ow += 2) {
                const float *xa = xr + ow * cstep, *xb = xa + cstep;
                __m256 d0, d1, g0, g1;
                DZ_LOAD(d0, d1, dr + ow * F)
                DZ_LOAD(g0, g1, dr + (ow + 1) * F)
                REP6(DW_FMA0)
                REP6(DW_FMA1)
            }
        }
        for (; ow < Wo; ow++) {
            const float *xa = xr + ow * cstep;
            __m256 d0, d1;
            DZ_LOAD(d0, d1, dr + ow * F)
            REP6(DW_FMA0)
        }
    }
#undef DW_FMA0
#undef DW_FMA1
#undef DZ_LOAD
    const __m256i all = _mm256_set1_epi32(-1);
    const __m256i m0 = NV > 1 ? all : m;
#define DW_STORE(i) \
    if (i < MR) { \
        __m256 s0 = c##i, s1 = h##i; \
        if (U == 2) { s0 = _mm256_add_ps(s0, e##i); s1 = _mm256_add_ps(s1, q##i); } \
        float *dst = dwt + i * F; \
        if (!first) s0 = _mm256_add_ps(s0, _mm256_maskload_ps(dst, m0)); \
        _mm256_maskstore_ps(dst, m0, s0); \
        if (NV > 1) { \
            if (!first) s1 = _mm256_add_ps(s1, _mm256_maskload_ps(dst + 8, m)); \
            _mm256_maskstore_ps(dst + 8, m, s1); \
        } \
    }
    REP6(DW_STORE)
#undef DW_STORE
}

#define DW_CASE(mr, nv, u) \
    case mr: dw_tile(mr, nv, u, xk, Ho, Wo, rstep, cstep, dzb, F, ncols, dwt, first); break;

TGT_AVX2 static void dw_tile_dispatch(int mr, int nv, const float *xk, int64_t Ho,
                                      int64_t Wo, int64_t rstep, int64_t cstep,
                                      const float *dzb, int64_t F, int64_t ncols,
                                      float *dwt, int first)
{
    if (nv == 2) {
        switch (mr) {
            DW_CASE(1, 2, 2) DW_CASE(2, 2, 2) DW_CASE(3, 2, 2)
            DW_CASE(4, 2, 1) DW_CASE(5, 2, 1) DW_CASE(6, 2, 1)
        }
    } else {
        switch (mr) {
            DW_CASE(1, 1, 2) DW_CASE(2, 1, 2) DW_CASE(3, 1, 2)
            DW_CASE(4, 1, 2) DW_CASE(5, 1, 2) DW_CASE(6, 1, 2)
        }
    }
}

/* dcol tile: MR pixels (dz rows F apart) times all Kp taps of W^T. */
TGT_AVX2 static INLINE_ALWAYS void dcol_tile(const int MR, const float *dzr, int64_t F,
                                             const float *wt, int64_t Kp, float *dcol)
{
    for (int64_t kb = 0; kb < Kp; kb += 16) {
        REP6(ACC_DECL)
        for (int64_t f = 0; f < F; f++) {
            const __m256 b0 = _mm256_loadu_ps(wt + f * Kp + kb);
            const __m256 b1 = _mm256_loadu_ps(wt + f * Kp + kb + 8);
#define DC_FMA(i) \
            if (i < MR) { \
                const __m256 av = _mm256_broadcast_ss(dzr + i * F + f); \
                c##i = _mm256_fmadd_ps(av, b0, c##i); \
                h##i = _mm256_fmadd_ps(av, b1, h##i); \
            }
            REP6(DC_FMA)
#undef DC_FMA
        }
#define DC_STORE(i) \
        if (i < MR) { \
            _mm256_storeu_ps(dcol + i * Kp + kb, c##i); \
            _mm256_storeu_ps(dcol + i * Kp + kb + 8, h##i); \
        }
        REP6(DC_STORE)
#undef DC_STORE
    }
}

#define DCOL_CASE(mr) case mr: dcol_tile(mr, dzr, F, wt, Kp, dcol); break;

TGT_AVX2 static void dcol_dispatch(int mr, const float *dzr, int64_t F, const float *wt,
                                   int64_t Kp, float *dcol)
{
    switch (mr) {
        DCOL_CASE(1) DCOL_CASE(2) DCOL_CASE(3) DCOL_CASE(4) DCOL_CASE(5) DCOL_CASE(6)
    }
}

/* dst[0:n] += src[0:n] */
TGT_AVX2 static INLINE_ALWAYS void add_into(float *dst, const float *src, int64_t n)
{
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(dst + j, _mm256_add_ps(_mm256_loadu_ps(dst + j),
                                                _mm256_loadu_ps(src + j)));
    for (; j < n; j++) dst[j] += src[j];
}

TGT_AVX2 static void fwd_avx2(const fnn_conv2d_geom *g, const conv_dims *d, int act,
                              const float *x, const float *w, const float *bias,
                              float *out, char *ws, int nth)
{
    float *wp = (float *)ws;
    int64_t *koff = (int64_t *)(ws + d->off_koff);
    const float *wuse = w;
    if (d->Fp != g->F) {
        for (int64_t k = 0; k < d->K; k++) {
            memcpy(wp + k * d->Fp, w + k * g->F, (size_t)g->F * sizeof(float));
            memset(wp + k * d->Fp + g->F, 0, (size_t)(d->Fp - g->F) * sizeof(float));
        }
        wuse = wp;
    }
    fill_koff(g, d, koff);
    const int c1 = use_c1_path(g);
    char *tbase = ws + d->shared_bytes;
    #pragma omp parallel num_threads(nth)
    {
        float *xpad = (float *)(tbase + conv_thread_id() * d->thread_bytes + d->off_xpad);
        int64_t last_b = -1;
        const float *xp = NULL;
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < g->B * g->Ho; item++) {
            const int64_t b = item / g->Ho, oh = item % g->Ho;
            if (b != last_b) {
                if (d->padded) {
                    pad_image(g, d, x + b * d->img_in, xpad);
                    xp = xpad;
                } else {
                    xp = x + b * d->img_in;
                }
                last_b = b;
            }
            if (c1)
                fwd_row_c1(g, d, act, xp, oh, w, bias, out + item * g->Wo * g->F);
            else
                fwd_row_avx2(g, d, act, xp, oh, koff, wuse, bias, out + item * g->Wo * g->F);
        }
    }
}

TGT_AVX2 static void dw_avx2(const fnn_conv2d_geom *g, const conv_dims *d,
                             const float *x, const float *dz, float *dw, char *ws, int nth)
{
    int64_t *koff = (int64_t *)(ws + d->off_koff);
    int64_t *tiles = (int64_t *)(ws + d->off_tiles);
    float *part = (float *)(ws + d->off_dwpart);
    fill_koff(g, d, koff);
    const int64_t ntiles = build_k_tiles(g, d, koff, 6, tiles);
    const int64_t F = g->F, K = d->K, nfb = (F + 15) / 16;
    const int64_t per_chunk = ntiles * nfb, items = d->nchunks * per_chunk;
    const int64_t rstep = g->sh * d->Wp * g->C, cstep = g->sw * g->C;
    char *tbase = ws + d->shared_bytes;
    #pragma omp parallel num_threads(nth)
    {
        float *xch = (float *)(tbase + conv_thread_id() * d->thread_bytes + d->off_xchunk);
        int64_t lo, hi, have = -1;
        split_range(items, conv_team_size(), conv_thread_id(), &lo, &hi);
        for (int64_t it = lo; it < hi; it++) {
            const int64_t ch = it / per_chunk, r = it % per_chunk;
            const int64_t t = r / nfb, f0 = (r % nfb) * 16;
            const int64_t b0 = ch * DW_CHUNK;
            const int64_t nimg = g->B - b0 < DW_CHUNK ? g->B - b0 : DW_CHUNK;
            if (d->padded && ch != have) {
                for (int64_t i = 0; i < nimg; i++)
                    pad_image(g, d, x + (b0 + i) * d->img_in, xch + i * d->img_pad);
                have = ch;
            }
            const int64_t ncols = F - f0 < 16 ? F - f0 : 16;
            const int64_t k0 = tiles[3 * t], mr = tiles[3 * t + 1], off = tiles[3 * t + 2];
            float *dst = part + ch * K * F + k0 * F + f0;
            for (int64_t i = 0; i < nimg; i++) {
                const float *xp = d->padded ? xch + i * d->img_pad : x + (b0 + i) * d->img_in;
                dw_tile_dispatch((int)mr, ncols > 8 ? 2 : 1, xp + off, g->Ho, g->Wo, rstep,
                                 cstep, dz + (b0 + i) * d->P * F + f0, F, ncols, dst, i == 0);
            }
        }
    }
    /* chunk partials, added in chunk order */
    #pragma omp parallel for schedule(static) num_threads(nth)
    for (int64_t e = 0; e < K * F; e++) {
        float s = part[e];
        for (int64_t ch = 1; ch < d->nchunks; ch++) s += part[ch * K * F + e];
        dw[e] = s;
    }
}

TGT_AVX2 static void dx_avx2(const fnn_conv2d_geom *g, const conv_dims *d,
                             const float *w, const float *dz, float *dx, char *ws, int nth)
{
    const int64_t F = g->F, C = g->C, K = d->K, Kp = d->Kp;
    float *wt = (float *)ws;
    int64_t *koff = (int64_t *)(ws + d->off_koff);
    fill_koff(g, d, koff);
    for (int64_t f = 0; f < F; f++) {
        for (int64_t k = 0; k < K; k++) wt[f * Kp + k] = w[k * F + f];
        for (int64_t k = K; k < Kp; k++) wt[f * Kp + k] = 0.0f;
    }
    /* scatter segments: contiguous runs of dcol columns in the padded image */
    const int64_t seg = g->dw == 1 ? g->kw * C : C;
    const int64_t nseg = K / seg;
    const int64_t segstep = g->dw == 1 ? g->kw : 1; /* taps per segment */
    char *tbase = ws + d->shared_bytes;
    #pragma omp parallel num_threads(nth)
    {
        char *tw = tbase + conv_thread_id() * d->thread_bytes;
        float *dxpad = (float *)(tw + d->off_dxpad);
        float *dcol = (float *)(tw + d->off_dcol);
        #pragma omp for schedule(static)
        for (int64_t b = 0; b < g->B; b++) {
            float *dxb = dx + b * d->img_in;
            float *dst = d->padded ? dxpad : dxb;
            memset(dst, 0, (size_t)d->img_pad * sizeof(float));
            const float *dzb = dz + b * d->P * F;
            const int64_t ntile = (g->Wo + DCOL_ROWS - 1) / DCOL_ROWS;
            for (int64_t oh = 0; oh < g->Ho; oh++) {
                for (int64_t t = 0; t < ntile; t++) {
                    int64_t lo, hi;
                    split_range(g->Wo, (int)ntile, (int)t, &lo, &hi);
                    const int mr = (int)(hi - lo);
                    dcol_dispatch(mr, dzb + (oh * g->Wo + lo) * F, F, wt, Kp, dcol);
                    for (int i = 0; i < mr; i++) {
                        float *base = dst + (oh * g->sh * d->Wp + (lo + i) * g->sw) * C;
                        const float *src = dcol + i * Kp;
                        for (int64_t s = 0; s < nseg; s++)
                            add_into(base + koff[s * segstep], src + s * seg, seg);
                    }
                }
            }
            if (d->padded) {
                for (int64_t h = 0; h < g->H; h++)
                    memcpy(dxb + h * g->W * C, dxpad + ((h + g->pt) * d->Wp + g->pl) * C,
                           (size_t)(g->W * C) * sizeof(float));
            }
        }
    }
}

#endif /* CONV_X86 */

/* ---- entry points ------------------------------------------------------ */

void fnn_conv2d_fwd(const fnn_conv2d_geom *g, int act, const float *x, const float *w,
                    const float *bias, float *out, void *work, int64_t work_bytes,
                    int nthreads)
{
    conv_dims d;
    conv_dims_init(g, &d);
    const int nth = conv_threads_for(&d, work_bytes, nthreads);
#ifdef CONV_X86
    if (fnn_conv_simd_path()) {
        fwd_avx2(g, &d, act, x, w, bias, out, align_ptr(work), nth);
        return;
    }
#endif
    (void)work;
    fwd_generic(g, act, x, w, bias, out, nth);
}

/* db: each image's dz (P*F contiguous floats) is summed as a flat array
 * with period L = lcm(F, 8) (a whole number of pixels, so lane e always
 * holds filter e % F), folded to F values, and the images' partials are
 * added in image order. */
#define DB_MAX_PERIOD 512
static void bias_grad_images(const fnn_conv2d_geom *g, const float *dz, float *db,
                             float *part, int nth)
{
    const int64_t F = g->F, n = g->Ho * g->Wo * F;
    int64_t L = F;
    while (L % 8) L += F;
    if (L > DB_MAX_PERIOD) L = F <= DB_MAX_PERIOD ? F : 0;
    #pragma omp parallel for schedule(static) num_threads(nth)
    for (int64_t b = 0; b < g->B; b++) {
        const float *dzb = dz + b * n;
        float *pb = part + b * F;
        if (L == 0) { /* very wide layers: plain column sums */
            for (int64_t f = 0; f < F; f++) pb[f] = 0.0f;
            for (int64_t i = 0; i < n; i += F)
                for (int64_t f = 0; f < F; f++) pb[f] += dzb[i + f];
            continue;
        }
        float acc[DB_MAX_PERIOD];
        for (int64_t e = 0; e < DB_MAX_PERIOD; e++) acc[e] = 0.0f;
        const int64_t m = n / L * L;
        for (int64_t i = 0; i < m; i += L)
            for (int64_t e = 0; e < L; e++) acc[e] += dzb[i + e];
        for (int64_t e = 0; e < n - m; e++) acc[e] += dzb[m + e];
        for (int64_t f = 0; f < F; f++) {
            float s = acc[f];
            for (int64_t e = f + F; e < L; e += F) s += acc[e];
            pb[f] = s;
        }
    }
    for (int64_t f = 0; f < F; f++) db[f] = 0.0f;
    for (int64_t b = 0; b < g->B; b++)
        for (int64_t f = 0; f < F; f++) db[f] += part[b * F + f];
}

void fnn_conv2d_bwd(const fnn_conv2d_geom *g, const float *x, const float *w,
                    const float *dz, float *dw, float *db, float *dx, void *work,
                    int64_t work_bytes, int nthreads)
{
    conv_dims d;
    conv_dims_init(g, &d);
    const int nth = conv_threads_for(&d, work_bytes, nthreads);
    char *ws = align_ptr(work);
    if (db) bias_grad_images(g, dz, db, (float *)(ws + d.off_dbpart), nth);
#ifdef CONV_X86
    if (fnn_conv_simd_path()) {
        if (dw) dw_avx2(g, &d, x, dz, dw, ws, nth);
        if (dx) dx_avx2(g, &d, w, dz, dx, ws, nth);
        return;
    }
#endif
    if (dw) dw_generic(g, x, dz, dw, nth);
    if (dx) dx_generic(g, w, dz, dx, nth);
}
