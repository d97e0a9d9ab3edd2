/* Batch normalisation over the rows of an (rows, C) array: NHWC activations
 * flattened, so every row is one pixel and channels are contiguous.
 *
 * Statistics are float64 sums over fixed chunks of BN_CHUNK rows (the
 * chunking depends on rows only), each chunk summed by one thread, then the
 * chunk partials are added in chunk order: bit-identical for any thread
 * count. The training forward reads x twice (statistics, then normalise);
 * the backward reads x and dy twice (two sums, then dx).
 */
#include "fastnn.h"

#include <math.h>

#define BN_CHUNK 256

static int64_t bn_chunks(int64_t rows) { return (rows + BN_CHUNK - 1) / BN_CHUNK; }

int64_t fnn_batchnorm_workspace_bytes(int64_t rows, int64_t C)
{
    /* 2*C doubles per chunk, then 3*C floats of per-channel coefficients */
    return 2 * C * bn_chunks(rows) * (int64_t)sizeof(double)
           + 3 * C * (int64_t)sizeof(float) + 64;
}

/* Per chunk: part[0:C] = sum of (a - shift), part[C:2C] = sum of
 * (a - shift) * (b - shift) when b == a, else sum of a * (b - shift). The
 * forward passes b == a (shifted moments, to limit cancellation); the
 * backward passes a = dy, b = x, shift = mean. */
static void chunk_sums(int64_t rows, int64_t C, const float *a, const float *b,
                       const float *shift, double *part, int nthreads)
{
    const int64_t nch = bn_chunks(rows);
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t k = 0; k < nch; k++) {
        double *s = part + 2 * C * k, *q = s + C;
        const int64_t r0 = k * BN_CHUNK;
        const int64_t r1 = r0 + BN_CHUNK < rows ? r0 + BN_CHUNK : rows;
        for (int64_t c = 0; c < C; c++) s[c] = q[c] = 0.0;
        if (a == b) {
            for (int64_t r = r0; r < r1; r++) {
                const float *ar = a + r * C;
                for (int64_t c = 0; c < C; c++) {
                    const double v = (double)ar[c] - (double)shift[c];
                    s[c] += v;
                    q[c] += v * v;
                }
            }
        } else {
            for (int64_t r = r0; r < r1; r++) {
                const float *ar = a + r * C, *br = b + r * C;
                for (int64_t c = 0; c < C; c++) {
                    s[c] += (double)ar[c];
                    q[c] += (double)ar[c] * ((double)br[c] - (double)shift[c]);
                }
            }
        }
    }
    /* fold the chunks into chunk 0, in chunk order */
    for (int64_t k = 1; k < nch; k++) {
        const double *s = part + 2 * C * k;
        for (int64_t c = 0; c < 2 * C; c++) part[c] += s[c];
    }
}

/* out[r, c] = (x[r, c] - m[c]) * s[c] + t[c] */
static void affine_rows(int64_t rows, int64_t C, const float *x, const float *m,
                        const float *s, const float *t, float *out,
                        int nthreads)
{
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * C;
        float *o = out + r * C;
        for (int64_t c = 0; c < C; c++) o[c] = (xr[c] - m[c]) * s[c] + t[c];
    }
}

void fnn_batchnorm_fwd_train(int64_t rows, int64_t C, const float *x, float *out,
                             const float *gamma, const float *beta,
                             float *moving_mean, float *moving_var,
                             float *save_mean, float *save_invstd,
                             float momentum, float epsilon, void *work,
                             int nthreads)
{
    double *part = (double *)work;
    float *coef = (float *)(part + 2 * C * bn_chunks(rows));
    float *shift = coef, *scale = coef + C, *bias = coef + 2 * C;
    /* shift by the first row: the sums then see values near the mean */
    for (int64_t c = 0; c < C; c++) shift[c] = x[c];
    chunk_sums(rows, C, x, x, shift, part, nthreads);
    const double n = (double)rows;
    for (int64_t c = 0; c < C; c++) {
        const double d = part[c] / n;
        double var = part[C + c] / n - d * d;
        if (var < 0.0) var = 0.0;
        const double mean = (double)shift[c] + d;
        const double invstd = 1.0 / sqrt(var + (double)epsilon);
        save_mean[c] = (float)mean;
        save_invstd[c] = (float)invstd;
        scale[c] = (float)(invstd * (gamma ? (double)gamma[c] : 1.0));
        bias[c] = beta ? beta[c] : 0.0f;
        moving_mean[c] = moving_mean[c] * momentum + (float)mean * (1.0f - momentum);
        moving_var[c] = moving_var[c] * momentum + (float)var * (1.0f - momentum);
    }
    affine_rows(rows, C, x, save_mean, scale, bias, out, nthreads);
}

void fnn_batchnorm_fwd_infer(int64_t rows, int64_t C, const float *x, float *out,
                             const float *gamma, const float *beta,
                             const float *moving_mean, const float *moving_var,
                             float epsilon, int nthreads)
{
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * C;
        float *o = out + r * C;
        for (int64_t c = 0; c < C; c++) {
            const float s = (gamma ? gamma[c] : 1.0f) / sqrtf(moving_var[c] + epsilon);
            o[c] = (xr[c] - moving_mean[c]) * s + (beta ? beta[c] : 0.0f);
        }
    }
}

void fnn_batchnorm_bwd(int64_t rows, int64_t C, const float *x, const float *dy,
                       const float *gamma, const float *save_mean,
                       const float *save_invstd, float *dx, float *dgamma,
                       float *dbeta, void *work, int nthreads)
{
    double *part = (double *)work;
    float *coef = (float *)(part + 2 * C * bn_chunks(rows));
    float *a = coef, *bco = coef + C, *k = coef + 2 * C;
    /* part[c] = sum dy, part[C+c] = sum dy * (x - mean) */
    chunk_sums(rows, C, dy, x, save_mean, part, nthreads);
    const double n = (double)rows;
    for (int64_t c = 0; c < C; c++) {
        const double is = (double)save_invstd[c];
        const double db = part[c], dg = part[C + c] * is;
        const double ac = (gamma ? (double)gamma[c] : 1.0) * is;
        if (dbeta) dbeta[c] = (float)db;
        if (dgamma) dgamma[c] = (float)dg;
        /* dx = ac*(dy - db/n - xhat*dg/n) = ac*dy + bco*(x - mean) + k */
        a[c] = (float)ac;
        bco[c] = (float)(-ac * is * dg / n);
        k[c] = (float)(-ac * db / n);
    }
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * C, *d = dy + r * C;
        float *o = dx + r * C;
        for (int64_t c = 0; c < C; c++)
            o[c] = a[c] * d[c] + bco[c] * (xr[c] - save_mean[c]) + k[c];
    }
}
