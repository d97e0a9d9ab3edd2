/* Data movement and elementwise ops: batch gathering, dropout, mul, add. */
#include <stddef.h>
#include <string.h>

#include "fastnn.h"

#define PAR_MIN_WORK 65536

void fnn_gather_rows_f32(int64_t n_src, int64_t row_len, const float *src,
                         int64_t n_idx, const int64_t *idx, float *dst)
{
    (void)n_src; /* indices were range-checked by the caller */
    const int nt = fnn_get_num_threads();
    const int par = nt > 1 && n_idx > 1 && n_idx * row_len > PAR_MIN_WORK;
    (void)par; /* unused when built without OpenMP */
    const size_t bytes = (size_t)row_len * sizeof(float);
    #pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t i = 0; i < n_idx; i++)
        memcpy(dst + i * row_len, src + idx[i] * row_len, bytes);
}

void fnn_gather_rows_i32(int64_t n_src, int64_t row_len, const int32_t *src,
                         int64_t n_idx, const int64_t *idx, int32_t *dst)
{
    (void)n_src;
    const int nt = fnn_get_num_threads();
    const int par = nt > 1 && n_idx > 1 && n_idx * row_len > PAR_MIN_WORK;
    (void)par; /* unused when built without OpenMP */
    const size_t bytes = (size_t)row_len * sizeof(int32_t);
    #pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t i = 0; i < n_idx; i++)
        memcpy(dst + i * row_len, src + idx[i] * row_len, bytes);
}

void fnn_dropout_fwd(int64_t n, const float *x, const float *u, float rate,
                     float *mask, float *y)
{
    /* u < 1 always, so rate == 1 drops everything without dividing by 0. */
    const float keep = rate < 1.0f ? 1.0f / (1.0f - rate) : 0.0f;
    const int nt = fnn_get_num_threads();
    const int par = nt > 1 && n > PAR_MIN_WORK;
    (void)par; /* unused when built without OpenMP */
    #pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t i = 0; i < n; i++) {
        const float mk = u[i] >= rate ? keep : 0.0f;
        mask[i] = mk;
        y[i] = x[i] * mk;
    }
}

void fnn_mul(int64_t n, const float *a, const float *b, float *out)
{
    const int nt = fnn_get_num_threads();
    const int par = nt > 1 && n > PAR_MIN_WORK;
    (void)par; /* unused when built without OpenMP */
    #pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t i = 0; i < n; i++)
        out[i] = a[i] * b[i];
}

void fnn_add(int64_t n, const float *a, const float *b, float *out)
{
    const int nt = fnn_get_num_threads();
    const int par = nt > 1 && n > PAR_MIN_WORK;
    (void)par; /* unused when built without OpenMP */
    #pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}
