/* Pooling and zero padding over NHWC images.
 *
 * Forward kernels split (image, output row) pairs across threads: each
 * output is computed by one thread. Backward kernels scatter into dx and
 * windows may overlap, so they split whole images: one image's additions
 * run on one thread in a fixed order, whatever the thread count.
 * Inner loops run over channels, which are contiguous in NHWC.
 */
#include "fastnn.h"

#include <string.h>

/* Channels are handled in blocks of POOL_CB with the running max / sum in
 * local arrays (they cannot alias the input, so the channel loops
 * vectorise). */
#define POOL_CB 64

/* In-image extent [s, e) of a window along one axis. */
static void window(int64_t o, int64_t stride, int64_t pad, int64_t k, int64_t n,
                   int64_t *s, int64_t *e)
{
    const int64_t a = o * stride - pad;
    *s = a < 0 ? 0 : a;
    *e = a + k > n ? n : a + k;
}

/* One output row of max pooling: first (row-major) maximum of each channel
 * over the window's in-image part; a NaN replaces a non-NaN maximum so it
 * propagates. The hot loop tracks the pixel index h*W + w as int32. */
static void maxpool_row(const fnn_pool2d_geom *g, const float *restrict xb, int64_t oh,
                        float *restrict orow, int32_t *restrict a32, int64_t *restrict a64)
{
    const int64_t C = g->C, W = g->W;
    int64_t hs, he;
    window(oh, g->sh, g->pt, g->ph, g->H, &hs, &he);
    for (int64_t ow = 0; ow < g->Wo; ow++) {
        int64_t ws, we;
        window(ow, g->sw, g->pl, g->pw, W, &ws, &we);
        for (int64_t c0 = 0; c0 < C; c0 += POOL_CB) {
            const int64_t n = C - c0 < POOL_CB ? C - c0 : POOL_CB;
            float best[POOL_CB];
            int32_t pos[POOL_CB];
            const float *x0 = xb + (hs * W + ws) * C + c0;
            for (int64_t c = 0; c < n; c++) {
                best[c] = x0[c];
                pos[c] = (int32_t)(hs * W + ws);
            }
            for (int64_t h = hs; h < he; h++) {
                for (int64_t w = ws; w < we; w++) {
                    if (h == hs && w == ws) continue;
                    const int32_t k = (int32_t)(h * W + w);
                    const float *xr = xb + (h * W + w) * C + c0;
                    for (int64_t c = 0; c < n; c++) {
                        const float v = xr[c], m = best[c];
                        const int take = (v > m) | ((v != v) & (m == m));
                        best[c] = take ? v : m;
                        pos[c] = take ? k : pos[c];
                    }
                }
            }
            const int64_t j = ow * C + c0;
            for (int64_t c = 0; c < n; c++) {
                orow[j + c] = best[c];
                const int64_t idx = (int64_t)pos[c] * C + c0 + c;
                if (a32)
                    a32[j + c] = (int32_t)idx;
                else
                    a64[j + c] = idx;
            }
        }
    }
}

void fnn_maxpool2d_fwd(const fnn_pool2d_geom *g, const float *x, float *out,
                       int32_t *arg32, int64_t *arg64, int nthreads)
{
    const int64_t C = g->C;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t item = 0; item < g->B * g->Ho; item++) {
        const int64_t b = item / g->Ho, oh = item % g->Ho;
        const int64_t j = item * g->Wo * C;
        maxpool_row(g, x + b * g->H * g->W * C, oh, out + j, arg32 ? arg32 + j : NULL,
                    arg64 ? arg64 + j : NULL);
    }
}

void fnn_maxpool_bwd(int64_t B, int64_t n_out, int64_t n_in, const float *dy,
                     const int32_t *arg32, const int64_t *arg64, float *dx, int nthreads)
{
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < B; b++) {
        float *dxb = dx + b * n_in;
        const float *dyb = dy + b * n_out;
        memset(dxb, 0, (size_t)n_in * sizeof(float));
        if (arg32) {
            const int32_t *ab = arg32 + b * n_out;
            for (int64_t j = 0; j < n_out; j++) dxb[ab[j]] += dyb[j];
        } else {
            const int64_t *ab = arg64 + b * n_out;
            for (int64_t j = 0; j < n_out; j++) dxb[ab[j]] += dyb[j];
        }
    }
}

void fnn_avgpool2d_fwd(const fnn_pool2d_geom *g, const float *x, float *out,
                       int nthreads)
{
    const int64_t C = g->C;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t item = 0; item < g->B * g->Ho; item++) {
        const int64_t b = item / g->Ho, oh = item % g->Ho;
        const float *restrict xb = x + b * g->H * g->W * C;
        int64_t hs, he;
        window(oh, g->sh, g->pt, g->ph, g->H, &hs, &he);
        for (int64_t ow = 0; ow < g->Wo; ow++) {
            int64_t ws, we;
            window(ow, g->sw, g->pl, g->pw, g->W, &ws, &we);
            float *restrict o = out + (item * g->Wo + ow) * C;
            const float inv = 1.0f / (float)((he - hs) * (we - ws));
            for (int64_t c0 = 0; c0 < C; c0 += POOL_CB) {
                const int64_t n = C - c0 < POOL_CB ? C - c0 : POOL_CB;
                float acc[POOL_CB];
                for (int64_t c = 0; c < n; c++) acc[c] = 0.0f;
                for (int64_t h = hs; h < he; h++)
                    for (int64_t w = ws; w < we; w++) {
                        const float *xr = xb + (h * g->W + w) * C + c0;
                        for (int64_t c = 0; c < n; c++) acc[c] += xr[c];
                    }
                for (int64_t c = 0; c < n; c++) o[c0 + c] = acc[c] * inv;
            }
        }
    }
}

void fnn_avgpool2d_bwd(const fnn_pool2d_geom *g, const float *dy, float *dx,
                       int nthreads)
{
    const int64_t C = g->C;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < g->B; b++) {
        float *dxb = dx + b * g->H * g->W * C;
        memset(dxb, 0, (size_t)(g->H * g->W * C) * sizeof(float));
        for (int64_t oh = 0; oh < g->Ho; oh++) {
            int64_t hs, he;
            window(oh, g->sh, g->pt, g->ph, g->H, &hs, &he);
            for (int64_t ow = 0; ow < g->Wo; ow++) {
                int64_t ws, we;
                window(ow, g->sw, g->pl, g->pw, g->W, &ws, &we);
                const float *d = dy + ((b * g->Ho + oh) * g->Wo + ow) * C;
                const float inv = 1.0f / (float)((he - hs) * (we - ws));
                for (int64_t h = hs; h < he; h++)
                    for (int64_t w = ws; w < we; w++) {
                        float *xr = dxb + (h * g->W + w) * C;
                        for (int64_t c = 0; c < C; c++) xr[c] += d[c] * inv;
                    }
            }
        }
    }
}

void fnn_global_avgpool_fwd(int64_t B, int64_t HW, int64_t C, const float *x,
                            float *out, int nthreads)
{
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < B; b++) {
        float *o = out + b * C;
        const float *xb = x + b * HW * C;
        for (int64_t c = 0; c < C; c++) o[c] = 0.0f;
        for (int64_t p = 0; p < HW; p++)
            for (int64_t c = 0; c < C; c++) o[c] += xb[p * C + c];
        const float inv = 1.0f / (float)HW;
        for (int64_t c = 0; c < C; c++) o[c] *= inv;
    }
}

void fnn_global_avgpool_bwd(int64_t B, int64_t HW, int64_t C, const float *dy,
                            float *dx, int nthreads)
{
    const float inv = 1.0f / (float)HW;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < B; b++) {
        const float *d = dy + b * C;
        float *xb = dx + b * HW * C;
        for (int64_t p = 0; p < HW; p++)
            for (int64_t c = 0; c < C; c++) xb[p * C + c] = d[c] * inv;
    }
}

void fnn_global_maxpool_fwd(int64_t B, int64_t HW, int64_t C, const float *x,
                            float *out, int32_t *arg32, int64_t *arg64,
                            int nthreads)
{
    /* the same as a 2-D max pool whose single window is the whole image */
    fnn_pool2d_geom g = {B, HW, 1, C, HW, 1, 1, 1, 0, 0, 0, 0, 1, 1};
    fnn_maxpool2d_fwd(&g, x, out, arg32, arg64, nthreads);
}

void fnn_zeropad2d_fwd(int64_t B, int64_t H, int64_t W, int64_t C, int64_t pt,
                       int64_t pb, int64_t pl, int64_t pr, const float *x,
                       float *out, int nthreads)
{
    const int64_t Wp = W + pl + pr, Hp = H + pt + pb;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t item = 0; item < B * Hp; item++) {
        const int64_t b = item / Hp, h = item % Hp - pt;
        float *row = out + item * Wp * C;
        if (h < 0 || h >= H) {
            memset(row, 0, (size_t)(Wp * C) * sizeof(float));
            continue;
        }
        memset(row, 0, (size_t)(pl * C) * sizeof(float));
        memcpy(row + pl * C, x + (b * H + h) * W * C, (size_t)(W * C) * sizeof(float));
        memset(row + (pl + W) * C, 0, (size_t)(pr * C) * sizeof(float));
    }
}

void fnn_zeropad2d_bwd(int64_t B, int64_t H, int64_t W, int64_t C, int64_t pt,
                       int64_t pb, int64_t pl, int64_t pr, const float *dy,
                       float *dx, int nthreads)
{
    const int64_t Wp = W + pl + pr, Hp = H + pt + pb;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t item = 0; item < B * H; item++) {
        const int64_t b = item / H, h = item % H;
        memcpy(dx + item * W * C, dy + ((b * Hp + h + pt) * Wp + pl) * C,
               (size_t)(W * C) * sizeof(float));
    }
}
